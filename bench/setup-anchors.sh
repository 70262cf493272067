#!/bin/sh
# Installs the optional anchor libraries of `npm run bench:kernels` (Debian / Ubuntu):
#   OpenBLAS (cblas_sgemm / cblas_sgemv, f32) and oneDNN (bf16 matmul).
# Needs root or sudo; does nothing else. Rerun the benchmark afterwards: bench/kernels.mjs
# reconfigures build/bench when an anchor was missing.
set -eu

PKGS="libopenblas-dev libdnnl-dev"

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup-anchors: no apt-get here. Install OpenBLAS and oneDNN with your package manager" >&2
  echo "  (e.g. Fedora: dnf install openblas-devel onednn-devel; macOS: brew install openblas onednn)." >&2
  exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "setup-anchors: needs root or sudo to run: apt-get install -y $PKGS" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
# shellcheck disable=SC2086
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y $PKGS
echo "setup-anchors: installed $PKGS; now run: npm run bench:kernels"
