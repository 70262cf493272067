// The int8 inner product of the VNNI packed GEMMs (gemm_q8_vnni.cpp, gemm_kquant_vnni.cpp): one
// 32-element block's exact int32 dot products for an MR x (16 * NV) tile, over the panels' "quads"
// (4 consecutive k of a block, one dword):
//   X panel block xb:  xb[q * MR + i]                 the 4 int8 values of X row i, quad q (gemm_q8_xpanel.h)
//   W panel block wb:  wb + (q * NV + j) * 16         one zmm: the 4 unsigned bytes of quad q of 16
//                                                     weight rows (zmm column j), one int32 lane a row
// Per quad: NV zmm loads of W, then per X row one dword broadcast and NV vpdpbusd (unsigned W bytes
// x signed X bytes, 4 products summed into each int32 lane). Include only from x86-64 translation
// units; callers compile with AVX-512 VNNI (EMOLLM_TARGET_AVX512_VNNI).
#pragma once
#include <cstdint>

#include "simd_math.h"

namespace emollm {
namespace gemm_detail {

// acc[i][j] = start[i] (0 when start is null) + sum over quads q in [q0, q0 + nq) of the block's
// int32 dot products of X row i and zmm column j of W (exact: the callers' bounds keep |lane| in
// int32). start: MR int32 the sums begin from (a correction of the X panel, e.g. -off * sum x).
template <int MR, int NV>
EMOLLM_TARGET_AVX512_VNNI __attribute__((always_inline)) static inline void vnni_block_dots(
    __m512i (&acc)[MR][NV], const int32_t* xb, const int32_t* wb, int q0, int nq, const int32_t* start) {
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    const __m512i c = start ? _mm512_set1_epi32(start[i]) : _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = c;
  }
#pragma GCC unroll 8
  for (int q = q0; q < q0 + nq; ++q) {
    __m512i w[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) w[j] = _mm512_load_si512(wb + (q * NV + j) * 16);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m512i x = _mm512_set1_epi32(xb[q * MR + i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], w[j], x);
    }
  }
}

}  // namespace gemm_detail
}  // namespace emollm
