// The f32 FMA peak probe the native benchmarks share (bench_kernels' fma probe, attn_decode_threads'
// FMA floor): 16 independent accumulator chains of register-only zmm FMAs. x86-64 only.
#pragma once
#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>

#include "bench_clock.h"

#ifndef EMOLLM_REP16
#define EMOLLM_REP16(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#endif

namespace bench {
// iters steps of 16 chains of one zmm FMA each; returns their sum (so the work cannot be dropped).
__attribute__((target("avx512f"))) inline float fma_avx512(int64_t iters) {
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
#define EMOLLM_FMA_DECL(i) __m512 c##i = _mm512_set1_ps(float(i) * 1e-3f);
  EMOLLM_REP16(EMOLLM_FMA_DECL)
#undef EMOLLM_FMA_DECL
  for (int64_t it = 0; it < iters; it++) {
#define EMOLLM_FMA_STEP(i) c##i = _mm512_fmadd_ps(c##i, a, b);
    EMOLLM_REP16(EMOLLM_FMA_STEP)
#undef EMOLLM_FMA_STEP
    __asm__ volatile("" ::: "memory");
  }
  __m512 s = _mm512_setzero_ps();
#define EMOLLM_FMA_SUM(i) s = _mm512_add_ps(s, c##i);
  EMOLLM_REP16(EMOLLM_FMA_SUM)
#undef EMOLLM_FMA_SUM
  alignas(64) float t[16];  // through memory: _mm512_reduce_add_ps trips a GCC 12 -Wuninitialized false positive
  _mm512_store_ps(t, s);
  float r = 0;
  for (float x : t) r += x;
  return r;
}
constexpr double kFmaAvx512FlopsPerIter = 16 * 16 * 2;

// One thread's f32 FMA peak in GFLOP/s by the calling thread's CPU time (readable on a loaded
// machine): the best of `reps` runs of ~2.3 ms each.
inline double fma_peak_1t_gflops(int reps = 50) {
  constexpr int64_t kIters = 1 << 16;  // 16 x 33.5 MFLOP a run: ~2.3 ms at 236 GFLOP/s
  volatile float sink = 0;
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const double c0 = thread_cpu();
    float s = 0;
    for (int k = 0; k < 16; ++k) s += fma_avx512(kIters);
    const double dt = thread_cpu() - c0;
    sink = sink + s;
    const double g = dt > 0 ? 16.0 * double(kIters) * kFmaAvx512FlopsPerIter / dt * 1e-9 : 0;
    if (g > best) best = g;
  }
  return best;
}
}  // namespace bench
#endif
