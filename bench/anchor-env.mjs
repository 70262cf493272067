// The environment the benchmarks give the anchor libraries they run beside emollm: thread counts,
// and how long those libraries' idle threads may spin on the cores after a call. In one place so
// that every benchmark runs its anchors the same way, and a test holds it
// (tests/js/bench_anchor_env.test.ts). bench/README.md ("Anchor environments") has the measurements.
//
// Why the spin settings matter on a 2-core machine: a library whose idle threads keep spinning
// after a call holds the cores the next measured call needs (emollm's, or another anchor's).
// - oneDNN (Debian's build runs on libgomp's OpenMP): libgomp spins GOMP_SPINCOUNT pause loops
//   (default 300000: several ms here) before sleeping. bench_kernels interleaves oneDNN with emollm
//   call by call with a 3 ms gap: the row after a oneDNN call ran 20-40% slow (session 17).
//   GOMP_SPINCOUNT=10000 still covers back-to-back calls (oneDNN's own rows within 1-3% of the
//   default) and frees the cores within ~0.2 ms. libgomp lets GOMP_SPINCOUNT override
//   OMP_WAIT_POLICY, so a caller's own OMP_WAIT_POLICY (an A/B of the policy) leaves it unset.
// - OpenBLAS (pthreads): its idle threads spin (sched_yield) for OPENBLAS_THREAD_TIMEOUT's 2^N TSC
//   cycles (default 2^28: 128 ms at a 2.1 GHz TSC). bench_kernels measures its rows alone and
//   sleeps until the process is idle before the next row (settle()), so its default stays.
// - PyTorch (bench:vision's anchor; Debian's build: ATen on libgomp, F.linear on OpenBLAS's
//   pthreads): its own process, measured after every emollm row, so its spinning slows nothing of
//   ours; it keeps its defaults (what a PyTorch user gets), only the thread counts set.

// bench_kernels: emollm, oneDNN and OpenBLAS in one process on `threads` threads each.
export function kernelsEnv(threads, env = process.env) {
  const out = { ...env, OMP_NUM_THREADS: String(threads), OPENBLAS_NUM_THREADS: String(threads) };
  if (env.GOMP_SPINCOUNT === undefined && env.OMP_WAIT_POLICY === undefined) out.GOMP_SPINCOUNT = '10000';
  return out;
}

// bench:vision's PyTorch anchor: ATen's OpenMP, MKL where a build has it, and the BLAS it calls.
export function torchEnv(threads, env = process.env) {
  const n = String(threads);
  return { ...env, OMP_NUM_THREADS: n, MKL_NUM_THREADS: n, OPENBLAS_NUM_THREADS: n };
}
