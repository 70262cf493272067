// The f32 microkernel of the packed GEMMs, written once over the vector type V (simd_vec.h):
// gemm_avx2.cpp runs it as 6 x 16 (simd::F32x8, 2 vectors a row), gemm_avx512.cpp as 6 x 64
// (simd::F32x16, 4 vectors a row).
//
// GCC and clang compile a function for its own target attribute only, and V's always-inline
// operations inline only into code of their target. So the includer names its target before
// including this header, once per translation unit (the definitions are internal to it; not
// `#pragma GCC target`, which clang ignores):
//   #define EMOLLM_F32_TILE_TARGET EMOLLM_TARGET_AVX2   // the file's own target attribute
//   #include "gemm_f32_tile.h"
#pragma once
#include <cstdint>

#include "simd_vec.h"

#if defined(__x86_64__)
#ifndef EMOLLM_F32_TILE_TARGET
#error "gemm_f32_tile.h: define EMOLLM_F32_TILE_TARGET (the includer's target attribute) first"
#endif
namespace emollm {
namespace gemm_detail {
namespace {

#define EMO_TILE_AI inline __attribute__((always_inline))

// Where the tile reads X: row i, element k.
struct XRowPointers {  // MR row pointers (rows past the tile point at zeros)
  const float* const* xr;
  EMO_TILE_AI const float* operator()(int i, int64_t k) const { return xr[i] + k; }
};
template <int MR>
struct XPackedPanel {  // a packed micro-panel, xp[k * MR + i]
  const float* xp;
  EMO_TILE_AI const float* operator()(int i, int64_t k) const { return xp + k * MR + i; }
};

// One k: c[i][j] += x(i, k) * w[k][j-th vector] for every row i and vector j.
template <class V, int MR, int NV, class XAt>
EMOLLM_F32_TILE_TARGET EMO_TILE_AI void f32_tile_step(int64_t k, const XAt& x_at, const float* wp, typename V::Vec (&c)[MR][NV]) {
  constexpr int L = V::kLanes, NR = NV * L;
  typename V::Vec w[NV];
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) w[j] = V::load(wp + k * NR + L * j);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const typename V::Vec a = V::broadcast(x_at(i, k));
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) c[i][j] = V::fmadd(a, w[j], c[i][j]);
  }
}

// Y[i, 0:nr] (=, or += unless first) sum_{k < kc} x(i, k) * wp[k * NR + 0:NR] (+ bias[0:nr] when
// first) for i < mr; NR = NV * V::kLanes, nr <= NR (masked tail), wp NR-wide rows, aligned. Each k
// block is summed from zero (or the bias) and then added to Y: blocked summation, whose rounding
// error grows with sqrt(K * KC) rather than K. KU: the unroll of the k loop (2 or 4).
template <class V, int MR, int NV, int KU, class XAt>
EMOLLM_F32_TILE_TARGET EMO_TILE_AI void f32_tile(int64_t kc, const XAt& x_at, const float* wp, float* y, int64_t ldy, int mr, int64_t nr,
                          const float* bias, bool first) {
  static_assert(KU == 2 || KU == 4, "k unroll");
  constexpr int L = V::kLanes;
  typename V::Mask mk[NV];
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) mk[j] = V::mask(nr - L * j);
  typename V::Vec c[MR][NV];
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) {
    const typename V::Vec b = (first && bias) ? V::maskz_load(mk[j], bias + L * j) : V::zero();
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) c[i][j] = b;
  }
  if constexpr (KU == 4) {
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) f32_tile_step<V, MR, NV>(k, x_at, wp, c);
  } else {
#pragma GCC unroll 2
    for (int64_t k = 0; k < kc; ++k) f32_tile_step<V, MR, NV>(k, x_at, wp, c);
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
    if (i < mr) {
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        typename V::Vec v = c[i][j];
        if (!first) v = V::add(v, V::maskz_load(mk[j], y + i * ldy + L * j));
        V::mask_store(y + i * ldy + L * j, mk[j], v);
      }
    }
}

#undef EMO_TILE_AI

}  // namespace
}  // namespace gemm_detail
}  // namespace emollm
#endif  // __x86_64__
