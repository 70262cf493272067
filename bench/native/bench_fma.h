// The f32 FMA peak probe the native benchmarks share (bench_kernels' fma probe, attn_decode_threads'
// FMA floor): independent accumulator chains of register-only FMAs, one loop (fma_chains) over
// the vector type: 16 zmm chains (AVX-512), 12 ymm chains (AVX2 + FMA). x86-64 only.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>

#include "bench_clock.h"

namespace bench {
// The vector types the probe runs on: the vector, its independent accumulator chains (enough to
// cover the FMA latency times the FMAs a cycle, within the 16 / 32 registers), and its three
// operations, each compiled for its own instruction set (fma_chains is inlined into a caller of
// that target: fma_avx512 / fma_avx2 below, `flatten`).
struct FmaZmm {
  using V = __m512;
  static constexpr int kChains = 16;
  __attribute__((target("avx512f"))) static inline void set1(V& v, float x) { v = _mm512_set1_ps(x); }
  __attribute__((target("avx512f"))) static inline void fma(V& c, const V& a, const V& b) { c = _mm512_fmadd_ps(c, a, b); }
  __attribute__((target("avx512f"))) static inline void add(V& s, const V& c) { s = _mm512_add_ps(s, c); }
};
struct FmaYmm {
  using V = __m256;
  static constexpr int kChains = 12;
  __attribute__((target("avx2,fma"))) static inline void set1(V& v, float x) { v = _mm256_set1_ps(x); }
  __attribute__((target("avx2,fma"))) static inline void fma(V& c, const V& a, const V& b) { c = _mm256_fmadd_ps(c, a, b); }
  __attribute__((target("avx2,fma"))) static inline void add(V& s, const V& c) { s = _mm256_add_ps(s, c); }
};
// iters steps of T::kChains chains of one register-only FMA each; returns their sum (so the work
// cannot be dropped). The chains stay in registers (fully unrolled: objdump shows kChains FMAs a
// step and no stack traffic).
template <class T>
inline float fma_chains(int64_t iters) {
  typename T::V a, b, c[T::kChains];
  T::set1(a, 0.999999f);
  T::set1(b, 1e-7f);
#pragma GCC unroll 16
  for (int i = 0; i < T::kChains; ++i) T::set1(c[i], float(i) * 1e-3f);
  for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 16
    for (int i = 0; i < T::kChains; ++i) T::fma(c[i], a, b);
    __asm__ volatile("" ::: "memory");
  }
  typename T::V s;
  T::set1(s, 0.f);
#pragma GCC unroll 16
  for (int i = 0; i < T::kChains; ++i) T::add(s, c[i]);
  alignas(64) float t[sizeof(s) / sizeof(float)];  // through memory: _mm512_reduce_add_ps trips a GCC 12 -Wuninitialized false positive
  std::memcpy(t, &s, sizeof t);
  float r = 0;
  for (float x : t) r += x;
  return r;
}
template <class T>
constexpr double kFmaFlopsPerIter = double(T::kChains) * double(sizeof(typename T::V) / sizeof(float)) * 2;

// 16 zmm chains (bench_kernels' fma probe, fma_peak_1t_gflops) and 12 ymm chains (bench_kernels'
// probe on CPUs without AVX-512).
__attribute__((target("avx512f"), flatten)) inline float fma_avx512(int64_t iters) { return fma_chains<FmaZmm>(iters); }
__attribute__((target("avx2,fma"), flatten)) inline float fma_avx2(int64_t iters) { return fma_chains<FmaYmm>(iters); }
constexpr double kFmaAvx512FlopsPerIter = kFmaFlopsPerIter<FmaZmm>;  // 16 x 16 x 2
constexpr double kFmaAvx2FlopsPerIter = kFmaFlopsPerIter<FmaYmm>;    // 12 x 8 x 2

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
