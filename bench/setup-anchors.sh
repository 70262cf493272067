#!/bin/sh
# Optional anchors of emollm's benchmarks. Offline once the npm packages are installed.
#
#   sh bench/setup-anchors.sh                 # all of the below
#   sh bench/setup-anchors.sh libs            # OpenBLAS + oneDNN (bench:kernels; Debian/Ubuntu, root/sudo)
#   sh bench/setup-anchors.sh llama-bench     # llama.cpp's own llama-bench (bench:decode), built from the
#                                             # llama.cpp source that node-llama-cpp pins
#   sh bench/setup-anchors.sh npm             # node-llama-cpp (bench:decode) into bench/anchors/ only
#
# llama-bench: node-llama-cpp ships the exact llama.cpp source it binds as a git bundle
# (node_modules/node-llama-cpp/llama/gitRelease.bundle). It is cloned into
# bench/anchors/llama.cpp (git-ignored) and only the `llama-bench` target is built, CPU only
# (GGML_NATIVE: this machine's ISA, as llama.cpp's own default), no CURL / OpenSSL, with
# EMOLLM_BUILD_JOBS (default 2) jobs: bench/anchors/llama.cpp/build/bin/llama-bench.
# node-llama-cpp comes from bench/anchors/node_modules (`npm ci --prefix bench/anchors
# --ignore-scripts`, what bench:decode runs on first use) or from emollm's own node_modules.
# Exit status: 0 when every requested anchor is ready, else 1 with the reason.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
what=${1:-all}
case "$what" in
  all | libs | llama-bench | npm) ;;
  -h | --help)
    sed -n '2,17p' "$0"
    exit 0
    ;;
  *)
    echo "setup-anchors: unknown argument '$what' (all, libs, llama-bench, npm)" >&2
    exit 1
    ;;
esac
status=0

setup_libs() {
  PKGS="libopenblas-dev libdnnl-dev"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-anchors: no apt-get here. Install OpenBLAS and oneDNN with your package manager" >&2
    echo "  (e.g. Fedora: dnf install openblas-devel onednn-devel; macOS: brew install openblas onednn)." >&2
    return 1
  fi
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
  elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "setup-anchors: needs root or sudo to run: apt-get install -y $PKGS" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update
  # shellcheck disable=SC2086
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y $PKGS
  echo "setup-anchors: installed $PKGS (bench:kernels reconfigures build-bench to pick them up)"
}

nlc_dir() {
  for d in "$here/anchors/node_modules/node-llama-cpp" "$here/../node_modules/node-llama-cpp"; do
    if [ -f "$d/llama/gitRelease.bundle" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

setup_npm() {
  if nlc_dir >/dev/null; then
    echo "setup-anchors: node-llama-cpp present: $(nlc_dir)"
    return 0
  fi
  echo "setup-anchors: npm ci --prefix bench/anchors --ignore-scripts (node-llama-cpp@3.21.1, ~730 MB)"
  npm ci --prefix "$here/anchors" --ignore-scripts --no-audit --no-fund
}

setup_llama_bench() {
  if ! nlc=$(nlc_dir); then
    echo "setup-anchors: node-llama-cpp's llama/gitRelease.bundle not found; run: sh bench/setup-anchors.sh npm" >&2
    return 1
  fi
  for tool in git cmake c++; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "setup-anchors: llama-bench needs $tool (Debian: apt-get install git cmake g++)" >&2
      return 1
    fi
  done
  src="$here/anchors/llama.cpp"
  bundle="$nlc/llama/gitRelease.bundle"
  # the bundle's one commit is the pin; a clone of another commit is replaced
  want=$(git bundle list-heads "$bundle" | awk 'NR == 1 { print $1 }')
  have=""
  [ -d "$src/.git" ] && have=$(git -C "$src" rev-parse HEAD 2>/dev/null || true)
  if [ "$have" != "$want" ]; then
    rm -rf "$src"
    git -c advice.detachedHead=false clone --quiet "$bundle" "$src"
    git -C "$src" -c advice.detachedHead=false checkout --quiet "$want"
  fi
  jobs=${EMOLLM_BUILD_JOBS:-2}
  gen=""
  command -v ninja >/dev/null 2>&1 && gen="-G Ninja"
  # shellcheck disable=SC2086
  cmake -S "$src" -B "$src/build" $gen -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON >/dev/null
  cmake --build "$src/build" --target llama-bench -j "$jobs"
  bin="$src/build/bin/llama-bench"
  if [ ! -x "$bin" ]; then
    echo "setup-anchors: build finished but $bin is missing" >&2
    return 1
  fi
  printf '%s\n' "$want" >"$src/build/PINNED_COMMIT"
  echo "setup-anchors: llama-bench built from node-llama-cpp's pinned llama.cpp ($want): $bin"
}

run_step() {
  if ! "$@"; then
    echo "setup-anchors: step '$1' failed" >&2
    status=1
  fi
}

case "$what" in
  libs) run_step setup_libs ;;
  npm) run_step setup_npm ;;
  llama-bench) run_step setup_llama_bench ;;
  all)
    run_step setup_libs
    run_step setup_npm
    run_step setup_llama_bench
    ;;
esac
exit $status
