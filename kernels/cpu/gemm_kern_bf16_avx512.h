// The 6x64 bf16-pair microkernel (vdpbf16ps) of the packed bf16 GEMMs, shared by the forward
// GEMM (gemm_avx512.cpp: X rows times W panels) and the backward input-gradient GEMM
// (backward_avx512.cpp: dY rows times panels of W row pairs). Both pack the same layouts:
//   xp[q*kBf16MR + i]  row i's bf16 pair q (32-bit word: element 2q low, 2q+1 high)
//   wp[q*kBf16NR + j]  output column j's bf16 pair q, 64-byte aligned
// Include only from x86-64 translation units (after <immintrin.h>).
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "simd_math.h"

namespace emollm {
namespace gemm_detail {

constexpr int kBf16MR = 6;   // rows per microkernel (6 x 4 = 24 zmm accumulators)
constexpr int kBf16NR = 64;  // output columns per panel (4 zmm)

// Y[i, 0:nr] (= if first, else +=) bias[0:nr] (first only, when not null) + sum_q xp[q*MR + i] .
// wp[q*NR + 0:64], for i < mr. Each k block is summed from zero and then added to Y (blocked
// summation: the rounding error grows with sqrt(K * KC) rather than K).
// kRowsX: X as 6 rows of pairs ldxr words apart instead (row i's pair q at xp[i*ldxr + q]; all 6
// rows readable), for X written row by row (attention's softmax weights).
template <bool kRowsX = false>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c"))) inline void kern_bf16_6x64(
    int64_t kcp, const uint32_t* xp, const uint32_t* wp, float* y, int64_t ldy, int mr, int64_t nr,
    const float* bias, bool first, int64_t ldxr = 0) {
  constexpr int MR = kBf16MR, NR = kBf16NR;
  __mmask16 mk[4];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) mk[j] = simd::tail_mask16(nr - 16 * j);
  __m512 c[MR][4];
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const __m512 b = (first && bias) ? _mm512_maskz_loadu_ps(mk[j], bias + 16 * j) : _mm512_setzero_ps();
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) c[i][j] = b;
  }
#pragma GCC unroll 2
  for (int64_t q = 0; q < kcp; ++q) {
    const uint32_t* w = wp + q * NR;
    const uint32_t* x = kRowsX ? xp + q : xp + q * MR;
    const int64_t xi = kRowsX ? ldxr : 1;
    const __m512bh b0 = (__m512bh)_mm512_load_si512(w), b1 = (__m512bh)_mm512_load_si512(w + 16),
                   b2 = (__m512bh)_mm512_load_si512(w + 32), b3 = (__m512bh)_mm512_load_si512(w + 48);
    __m512bh a;
#define EMO_ROW(i)                                      \
  a = (__m512bh)_mm512_set1_epi32(int(x[i * xi]));      \
  c[i][0] = _mm512_dpbf16_ps(c[i][0], a, b0);           \
  c[i][1] = _mm512_dpbf16_ps(c[i][1], a, b1);           \
  c[i][2] = _mm512_dpbf16_ps(c[i][2], a, b2);           \
  c[i][3] = _mm512_dpbf16_ps(c[i][3], a, b3);
    EMO_ROW(0) EMO_ROW(1) EMO_ROW(2) EMO_ROW(3) EMO_ROW(4) EMO_ROW(5)
#undef EMO_ROW
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
    if (i < mr) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        __m512 v = c[i][j];
        if (!first) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk[j], y + i * ldy + 16 * j));
        _mm512_mask_storeu_ps(y + i * ldy + 16 * j, mk[j], v);
      }
    }
}

}  // namespace gemm_detail
}  // namespace emollm
