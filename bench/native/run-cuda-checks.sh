#!/usr/bin/env bash
# One device check, sized for a short GPU session (about 8 minutes on an H200 with 16 cores):
# builds the CUDA tests and bench_cuda for one architecture, runs test_cuda_kernels twice
# (default: matmul's cuBLASLt path; EMOLLM_CUBLASLT=0: the gemm_tc fallback), bench_cuda, the
# PyTorch same-run anchor (bench_cuda_torch.py, ratios against bench_cuda's JSON) and
# compute-sanitizer memcheck over the kernel tests while time is left.
#
#   OUT=/some/dir EMOLLM_SHARED_DIR=/path/to/shared bash bench/native/run-cuda-checks.sh
#
# Env: OUT (required: logs, bench_cuda.json, torch_anchor.json go there), EMOLLM_SHARED_DIR
#      (default ../shared; the end-to-end tests read stories260K and llava-tiny-hf from it),
#      CUDA_ARCH (default 90a), BUILD_DIR (default /tmp/emollm-cuda-checks), JOBS (default nproc),
#      BUDGET_S (default 500: memcheck runs only while this many seconds are not used up).
# Exits non-zero when the build, either test run, bench_cuda or the anchor fails, or when the
# default run did not use cuBLASLt (then the GEMM figures are gemm_tc's, not the new path's).
set -uo pipefail
cd "$(dirname "$0")/../.."
[ "$#" -eq 0 ] || { echo "run-cuda-checks: no arguments expected (got '$*'); configure through the environment" >&2; exit 2; }
[ -n "${OUT:-}" ] || { echo "run-cuda-checks: set OUT to a folder for the logs" >&2; exit 2; }
mkdir -p "$OUT"
S=$SECONDS
B=${BUILD_DIR:-/tmp/emollm-cuda-checks}
ARCH=${CUDA_ARCH:-90a}
BUDGET=${BUDGET_S:-500}
export EMOLLM_SHARED_DIR=${EMOLLM_SHARED_DIR:-$PWD/../shared}
failed=()
stamp() { echo "[$((SECONDS - S)) s] $*"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
{ g++ --version | head -1; nvcc --version | tail -2; cmake --version | head -1; nproc; } | tee -a "$OUT/gpu.txt"
for d in stories260K llava-tiny-hf; do
  [ -e "$EMOLLM_SHARED_DIR/models/$d" ] || [ -e "$EMOLLM_SHARED_DIR/$d" ] ||
    echo "run-cuda-checks: note: $d not found under EMOLLM_SHARED_DIR=$EMOLLM_SHARED_DIR (its tests will say so)"
done

cmake -S . -B "$B" $(command -v ninja >/dev/null && echo -G Ninja) -DEMOLLM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
  -DEMOLLM_BUILD_BENCH=OFF -DEMOLLM_BUILD_CUDA_BENCH=ON > "$OUT/build.log" 2>&1 &&
  cmake --build "$B" -j "${JOBS:-$(nproc)}" --target test_cuda_kernels bench_cuda >> "$OUT/build.log" 2>&1
rc=$?; stamp "build rc=$rc"
if [ $rc != 0 ]; then tail -40 "$OUT/build.log"; exit 1; fi

timeout 150 "$B/test_cuda_kernels" > "$OUT/test.log" 2>&1
rc=$?; tail -6 "$OUT/test.log"; stamp "tests (default) rc=$rc"; [ $rc = 0 ] || failed+=("tests (default)")
grep -m1 "matmul GEMM path" "$OUT/test.log"
if ! grep -q "matmul GEMM path: cublaslt" "$OUT/test.log"; then
  echo "run-cuda-checks: the default run did not use cuBLASLt (see 'matmul GEMM path' in test.log)"
  failed+=("cuBLASLt not loaded")
fi

EMOLLM_CUBLASLT=0 timeout 150 "$B/test_cuda_kernels" > "$OUT/test-fallback.log" 2>&1
rc=$?; tail -3 "$OUT/test-fallback.log"; stamp "tests (EMOLLM_CUBLASLT=0) rc=$rc"; [ $rc = 0 ] || failed+=("tests (EMOLLM_CUBLASLT=0)")

OUT="$OUT" timeout 120 "$B/bench_cuda" 3 > "$OUT/bench.log" 2>&1
rc=$?; grep -E "^(device|matmul GEMM path|gemm )" "$OUT/bench.log"; stamp "bench rc=$rc"; [ $rc = 0 ] || failed+=("bench_cuda")

OUT="$OUT" timeout 90 python3 bench/native/bench_cuda_torch.py --bench-json "$OUT/bench_cuda.json" > "$OUT/torch.log" 2>&1
rc=$?; grep -E "^gemm" "$OUT/torch.log"; stamp "torch anchor rc=$rc"; [ $rc = 0 ] || failed+=("torch anchor")

left=$((BUDGET - (SECONDS - S)))
if [ $left -gt 60 ]; then
  timeout $left compute-sanitizer --tool memcheck --print-limit 20 "$B/test_cuda_kernels" cuda_ > "$OUT/memcheck.log" 2>&1
  rc=$?; stamp "memcheck rc=$rc (limit $left s)"
  grep -E "ERROR SUMMARY|Invalid|out of bounds" "$OUT/memcheck.log" | head -20
  [ $rc = 0 ] || [ $rc = 124 ] || failed+=("memcheck")
  [ $rc != 124 ] || echo "run-cuda-checks: memcheck ran out of time (not a failure; partial log in memcheck.log)"
else
  stamp "memcheck skipped: only $left s of BUDGET_S left"
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "run-cuda-checks: FAILED: ${failed[*]}"
  exit 1
fi
stamp "all checks passed"
