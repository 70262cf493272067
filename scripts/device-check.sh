#!/usr/bin/env bash
# The one prepared check for a GPU machine (no Node needed): builds the CUDA kernels, their
# tests, the CUDA benchmark and the normal native tests, runs them, and tees every log into
# $OUT (or ./device-out when OUT is unset).
#   scripts/device-check.sh            # from the repository root
# Environment: CUDA_ARCH (default 90), BUILD_DIR (default /tmp/emollm-build-cuda), JOBS (16),
#              SANITIZE=1 also runs compute-sanitizer (memcheck, racecheck) on a test subset.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/device-out}"
mkdir -p "$OUT"
BUILD_DIR="${BUILD_DIR:-/tmp/emollm-build-cuda}"
JOBS="${JOBS:-16}"
CUDA_ARCH="${CUDA_ARCH:-90}"
status=0
step() { echo "=== $* ($(date +%T))"; }

{
  step "device"
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
  nvcc --version | tail -2
  cmake --version | head -1
} 2>&1 | tee "$OUT/device.log"

step "configure + build" | tee "$OUT/build.log"
( cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DEMOLLM_CUDA=ON -DEMOLLM_BUILD_TESTS=ON \
    -DEMOLLM_BUILD_BENCH=ON -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" &&
  cmake --build "$BUILD_DIR" -j "$JOBS" --target test_cuda_kernels bench_cuda emollm_tests ) \
  >>"$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; tail -40 "$OUT/build.log"; exit 1; }
grep -iE "warning|error" "$OUT/build.log" | head -20
echo "build ok"

step "CUDA kernel tests" | tee "$OUT/test_cuda.log"
timeout 120 "$BUILD_DIR/test_cuda_kernels" 2>&1 | tee -a "$OUT/test_cuda.log" || status=1

step "CUDA benchmark" | tee "$OUT/bench_cuda.log"
timeout 120 "$BUILD_DIR/bench_cuda" 2>&1 | tee -a "$OUT/bench_cuda.log" || status=1

step "native tests (CPU, same build)" | tee "$OUT/test_native.log"
EMOLLM_SHARED_DIR="$PWD/../shared" timeout 150 "$BUILD_DIR/emollm_tests" >>"$OUT/test_native.log" 2>&1 || status=1
grep -E "FAIL|passed" "$OUT/test_native.log" | tail -25

if [ "${SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  step "compute-sanitizer" | tee "$OUT/sanitizer.log"
  for tool in memcheck racecheck; do
    echo "--- $tool" | tee -a "$OUT/sanitizer.log"
    timeout 60 compute-sanitizer --tool "$tool" --error-exitcode 3 "$BUILD_DIR/test_cuda_kernels" \
      2>&1 | tail -8 | tee -a "$OUT/sanitizer.log"
  done
fi
step "done, status $status"
exit $status
