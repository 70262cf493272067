#!/usr/bin/env bash
# The GPU checks in one script, for a machine with an NVIDIA GPU and the CUDA toolkit: builds the
# CUDA part with CMake + nvcc for this GPU and runs the steps asked for, in this order:
#
#   --tests     test_cuda_kernels twice: as shipped (prefill GEMMs through cuBLASLt, which must be
#               the path in use) and with EMOLLM_CUBLASLT=0 (gemm_tc everywhere); a GPU test that
#               skips for want of a device is a failure here
#   --bench     bench_cuda (BENCH_REPS launches per row, default bench_cuda's), then the PyTorch
#               same-run anchor bench/native/bench_cuda_torch.py when python3 can import torch
#   --node      the Node addon built with CUDA (cmake-js into build/, replacing a node-gyp build
#               there), dist/ compiled (tsc), then scripts/cuda-node-check.mjs (needs npm ci)
#   --native    the native tests (emollm_tests) of the CUDA build
#   --memcheck  compute-sanitizer memcheck over the cuda_ tests with whatever budget is left (running
#               out of time there is reported, not a failure)
# No step named: --tests --bench --native --memcheck.  npm run test:gpu = --tests --native,
# npm run bench:cuda = --bench.
#
#   bash scripts/gpu-suite.sh [--tests] [--bench] [--node] [--native] [--memcheck]
#                             [--budget SECONDS] [--arch ARCH] [--help]
#
# --budget (or BUDGET_S): seconds for the whole run, build included; each step runs under the
#   time left and a step that cannot start in it fails (memcheck: skipped). Default: no limit.
# --arch (or CUDA_ARCH; EMOLLM_CUDA_ARCHS also read): CMake CUDA architectures; default this GPU's
#   compute capability from nvidia-smi (9.0 -> 90a, Hopper's arch-specific target, as CMake's own
#   default list).
# Env: OUT (logs, bench_cuda.json, torch_anchor.json; default BUILD_DIR/logs), BUILD_DIR (default
#   build-gpu), JOBS (default nproc), EMOLLM_SHARED_DIR (default ../shared: the end-to-end tests
#   and the Node check read stories260K and llava-tiny-hf there), BENCH_REPS.
# Exit: 0 every step asked for ran and passed; 1 a build or check failed (or ran out of budget);
#   2 cannot run here (no NVIDIA GPU, no nvcc, no node for --node) or a bad argument.
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die_usage() { echo "gpu-suite: $*" >&2; echo "usage: bash scripts/gpu-suite.sh [--tests] [--bench] [--node] [--native] [--memcheck] [--budget SECONDS] [--arch ARCH] [--help]" >&2; exit 2; }

want_tests=0 want_bench=0 want_node=0 want_native=0 want_memcheck=0
budget="${BUDGET_S:-0}"
arch="${CUDA_ARCH:-${EMOLLM_CUDA_ARCHS:-}}"
while [ "$#" -gt 0 ]; do
  case "$1" in
    --tests) want_tests=1 ;;
    --bench) want_bench=1 ;;
    --node) want_node=1 ;;
    --native) want_native=1 ;;
    --memcheck) want_memcheck=1 ;;
    --budget) [ "$#" -ge 2 ] || die_usage "--budget needs a number of seconds"; budget="$2"; shift ;;
    --budget=*) budget="${1#--budget=}" ;;
    --arch) [ "$#" -ge 2 ] || die_usage "--arch needs an architecture (e.g. 90a)"; arch="$2"; shift ;;
    --arch=*) arch="${1#--arch=}" ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
  shift
done
case "$budget" in '' | *[!0-9]*) die_usage "the budget must be a whole number of seconds (got '$budget')" ;; esac
if [ $((want_tests + want_bench + want_node + want_native + want_memcheck)) -eq 0 ]; then
  want_tests=1 want_bench=1 want_native=1 want_memcheck=1
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# ---- can this machine run it at all
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-suite: no NVIDIA GPU here (nvidia-smi missing or lists none): nothing checked" >&2
  exit 2
fi
if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do [ -x "$d/nvcc" ] && export PATH="$d:$PATH" && break; done
fi
command -v nvcc >/dev/null 2>&1 || { echo "gpu-suite: nvcc not found (install the CUDA toolkit or put it on PATH): nothing checked" >&2; exit 2; }
if [ "$want_node" = 1 ] && ! command -v node >/dev/null 2>&1; then
  echo "gpu-suite: --node needs node on PATH: nothing checked" >&2
  exit 2
fi

build="${BUILD_DIR:-$root/build-gpu}"
out="${OUT:-$build/logs}"
mkdir -p "$out"
jobs="${JOBS:-$(nproc)}"
export EMOLLM_SHARED_DIR="${EMOLLM_SHARED_DIR:-$root/../shared}"
if [ -z "$arch" ]; then
  arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')"
  [ "$arch" = 90 ] && arch=90a
fi
start=$SECONDS
failed=()
stamp() { echo "[$((SECONDS - start)) s] gpu-suite: $*"; }
# Seconds a step may run: its own cap, within the budget's remainder (0: it cannot start).
allowance() {
  local cap=$1 need=$2
  [ "$budget" -gt 0 ] || { echo "$cap"; return; }
  local left=$((budget - (SECONDS - start)))
  if [ "$left" -lt "$need" ]; then echo 0; elif [ "$left" -lt "$cap" ]; then echo "$left"; else echo "$cap"; fi
}
# run_step NAME CAP LOG CMD...: runs CMD under `timeout`, its output in LOG; records a failure.
run_step() {
  local name=$1 cap=$2 log=$3
  shift 3
  local t
  t=$(allowance "$cap" 30)
  if [ "$t" -eq 0 ]; then
    stamp "$name: NOT RUN, the budget (${budget} s) is spent"
    failed+=("$name (budget)")
    return 1
  fi
  timeout "$t" "$@" >"$log" 2>&1
  local rc=$?
  if [ "$rc" -eq 124 ]; then
    stamp "$name: TIMED OUT after $t s (log: $log)"
    failed+=("$name (timeout)")
  elif [ "$rc" -ne 0 ]; then
    tail -n 20 "$log"
    stamp "$name: FAILED, exit $rc (log: $log)"
    failed+=("$name")
  else
    stamp "$name: ok"
  fi
  return "$rc"
}

{
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
  nvcc --version | tail -2
  cmake --version | head -1
  echo "cores: $(nproc); architectures: $arch; budget: ${budget} s (0 = none); logs: $out"
} 2>&1 | tee "$out/device.txt"
for d in stories260K llava-tiny-hf; do
  [ -e "$EMOLLM_SHARED_DIR/models/$d" ] ||
    echo "gpu-suite: note: $EMOLLM_SHARED_DIR/models/$d not found (the tests that need it will say so)"
done

# ---- build what the steps need (the Node addon is cmake-js's, in --node)
targets=()
[ "$want_tests" = 1 ] || [ "$want_memcheck" = 1 ] && targets+=(test_cuda_kernels)
[ "$want_native" = 1 ] && targets+=(emollm_tests)
[ "$want_bench" = 1 ] && targets+=(bench_cuda)
if [ "${#targets[@]}" -gt 0 ]; then
  configure() {
    cmake -S . -B "$build" $(command -v ninja >/dev/null 2>&1 && [ ! -f "$build/Makefile" ] && echo -G Ninja) \
      -DCMAKE_BUILD_TYPE=Release -DEMOLLM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
      -DEMOLLM_BUILD_TESTS=ON -DEMOLLM_BUILD_BENCH=OFF -DEMOLLM_BUILD_CUDA_BENCH=ON "$@"
  }
  t=$(allowance 3600 60)
  [ "$t" -gt 0 ] || { stamp "the budget (${budget} s) does not cover a build"; exit 1; }
  { configure && timeout "$t" cmake --build "$build" -j "$jobs" --target "${targets[@]}"; } >"$out/build.log" 2>&1
  rc=$?
  if [ "$rc" -ne 0 ] && [ "$want_bench" = 1 ] && [ "$rc" -ne 124 ]; then
    # bench_cuda links cuBLASLt as its GEMM anchor when the toolkit has it; without it the GEMM
    # rows say "n/a" instead of a ratio.
    stamp "build failed; retrying without bench_cuda's cuBLASLt anchor"
    t=$(allowance 3600 60)
    { configure -DEMOLLM_BENCH_CUBLASLT=OFF && timeout "$t" cmake --build "$build" -j "$jobs" --target "${targets[@]}"; } \
      >>"$out/build.log" 2>&1
    rc=$?
  fi
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$out/build.log"
    stamp "build FAILED (exit $rc; log: $out/build.log)"
    exit 1
  fi
  stamp "build ok (${targets[*]})"
fi

# ---- steps
if [ "$want_tests" = 1 ]; then
  if run_step "CUDA tests" 300 "$out/test.log" "$build/test_cuda_kernels"; then :; fi
  tail -n 3 "$out/test.log"
  if grep -q "no usable CUDA device" "$out/test.log"; then
    stamp "CUDA tests: GPU tests skipped for want of a device although nvidia-smi lists one: FAILED"
    failed+=("CUDA tests (no device)")
  fi
  grep -m1 "matmul GEMM path" "$out/test.log"
  if [ "${EMOLLM_CUBLASLT:-}" = 0 ]; then
    stamp "CUDA tests: EMOLLM_CUBLASLT=0 is set in the environment, so both runs took gemm_tc"
  elif ! grep -q "matmul GEMM path: cublaslt" "$out/test.log"; then
    stamp "CUDA tests: the default run did not use cuBLASLt (see 'matmul GEMM path' in test.log): FAILED"
    failed+=("cuBLASLt not in use")
  fi
  run_step "CUDA tests with EMOLLM_CUBLASLT=0" 300 "$out/test-fallback.log" env EMOLLM_CUBLASLT=0 "$build/test_cuda_kernels"
  tail -n 3 "$out/test-fallback.log"
fi

if [ "$want_bench" = 1 ]; then
  run_step "bench_cuda" 300 "$out/bench.log" env OUT="$out" "$build/bench_cuda" ${BENCH_REPS:-}
  grep -E "^(device|copy probe|tensor-core probe|matmul GEMM path|gemm |gemv )" "$out/bench.log"
  if [ -f "$out/bench_cuda.json" ] && python3 -c "import torch" >/dev/null 2>&1; then
    run_step "PyTorch anchor" 180 "$out/torch.log" env OUT="$out" python3 bench/native/bench_cuda_torch.py --bench-json "$out/bench_cuda.json"
    grep -E "^gemm|^gemv|^attention" "$out/torch.log"
  else
    stamp "PyTorch anchor: not run ($( [ -f "$out/bench_cuda.json" ] && echo "python3 cannot import torch" || echo "no bench_cuda.json")); the rows have no same-run PyTorch ratio"
  fi
fi

if [ "$want_node" = 1 ]; then
  if [ ! -d node_modules/cmake-js ]; then
    stamp "Node check: node_modules/cmake-js missing (run npm ci first): FAILED"
    failed+=("Node check (no node_modules)")
  elif run_step "Node addon (cmake-js, CUDA)" 1800 "$out/node-build.log" \
      npx cmake-js compile --CDEMOLLM_CUDA=ON --CDCMAKE_CUDA_ARCHITECTURES="$arch" --parallel "$jobs" &&
    run_step "dist (tsc)" 300 "$out/tsc.log" npx tsc -p tsconfig.json; then
    run_step "Node check (cuda-node-check.mjs)" 600 "$out/node-check.log" node scripts/cuda-node-check.mjs --shared "$EMOLLM_SHARED_DIR"
    tail -n 12 "$out/node-check.log"
  fi
fi

if [ "$want_native" = 1 ]; then
  run_step "native tests (CUDA build)" 900 "$out/test-native.log" "$build/emollm_tests"
  grep -E "FAIL|passed" "$out/test-native.log" | tail -n 25
fi

if [ "$want_memcheck" = 1 ]; then
  t=$(allowance 1800 60)
  if ! command -v compute-sanitizer >/dev/null 2>&1; then
    stamp "memcheck: compute-sanitizer not found (it comes with the CUDA toolkit): FAILED"
    failed+=("memcheck (no compute-sanitizer)")
  elif [ "$t" -eq 0 ]; then
    stamp "memcheck: skipped, under a minute of the budget (${budget} s) left"
  else
    timeout "$t" compute-sanitizer --tool memcheck --print-limit 20 "$build/test_cuda_kernels" cuda_ >"$out/memcheck.log" 2>&1
    rc=$?
    grep -E "ERROR SUMMARY|Invalid|out of bounds" "$out/memcheck.log" | head -n 20
    if [ "$rc" -eq 124 ]; then
      stamp "memcheck: ran out of its $t s (not a failure; partial log in $out/memcheck.log)"
    elif [ "$rc" -ne 0 ]; then
      stamp "memcheck: FAILED, exit $rc (log: $out/memcheck.log)"
      failed+=("memcheck")
    else
      stamp "memcheck: ok"
    fi
  fi
fi

if [ "${#failed[@]}" -gt 0 ]; then
  stamp "FAILED: $(printf '%s; ' "${failed[@]}")logs: $out"
  exit 1
fi
stamp "all steps asked for passed (logs: $out)"
