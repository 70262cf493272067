// The 6x64 bf16-pair microkernel (vdpbf16ps) of the packed bf16 GEMMs, shared by the forward
// GEMM (gemm_avx512.cpp: X rows times W panels) and the backward input-gradient GEMM
// (backward_avx512.cpp: dY rows times panels of W row pairs). Both pack the same layouts:
//   xp[q*kBf16MR + i]  row i's bf16 pair q (32-bit word: element 2q low, 2q+1 high)
//   wp[q*kBf16NR + j]  output column j's bf16 pair q, 64-byte aligned
// Include only from x86-64 translation units (after <immintrin.h>).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "simd_math.h"

namespace emollm {
namespace gemm_detail {

constexpr int kBf16MR = 6;   // rows per microkernel (6 x 4 = 24 zmm accumulators)
constexpr int kBf16NR = 64;  // output columns per panel (4 zmm)

// One bf16 pair of kern_bf16_6x64 on packed X: c[i][j] += x[i] (broadcast) . w[16j : 16j+16].
template <int MR, int NJ>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c"), always_inline)) inline void
bf16_pair_step(__m512 (&c)[MR][NJ], const uint32_t* w, const uint32_t* x) {
  __m512bh b[NJ];
#pragma GCC unroll 4
  for (int j = 0; j < NJ; ++j) b[j] = (__m512bh)_mm512_load_si512(w + 16 * j);
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    const __m512bh a = (__m512bh)_mm512_set1_epi32(int(x[i]));
#pragma GCC unroll 4
    for (int j = 0; j < NJ; ++j) c[i][j] = _mm512_dpbf16_ps(c[i][j], a, b[j]);
  }
}

// Y[i, 0:nr] (= if first, else +=) bias[0:nr] (first only, when not null) + sum_q xp[q*MR + i] .
// wp[q*NR + 0:64], for i < mr. Each k block is summed from zero and then added to Y (blocked
// summation: the rounding error grows with sqrt(K * KC) rather than K).
// kRowsX: X as 6 rows of pairs ldxr words apart instead (row i's pair q at xp[i*ldxr + q]; all 6
// rows readable), for X written row by row (attention's softmax weights).
// NJ: the 16-column groups of the panel computed (nr <= 16 * NJ): a narrow tail (CLIP's 577th
// key, a block of 1) costs NJ/4 of a full panel's work instead of all of it.
// rs (optional): row i's result (bias included) is multiplied by rs[i] before it is stored or
// added (attention's softmax normalisation, applied in registers).
// MRC: the rows computed (mr <= MRC <= MR; X keeps its 6-row layout): a short last row panel (M = 16
// runs 6, 6, 4) or a single row (M = 1 on panels) does only its own rows' multiply-adds. A row's
// sums do not depend on MRC (each row has its own accumulators, summed in the same order).
// kRowMax: rmax[i * 16 + 0:16] = max(itself, row i's results in the columns < nr), lane-wise, for
// i < mr (attention's softmax takes each score row's maximum from it instead of a pass over the
// row; a maximum does not depend on the order it is taken in). Only with first, no bias, no rs.
// kPfX (packed X only): prefetcht0 of the X micro-panel pf_x words ahead of the pair being read,
// one line per two pairs (a pair of 6 rows is 24 bytes), for a micro-panel that is not in L1 (the
// long-K driver streams X tile after tile): its lines otherwise came late (1.02-1.035x on the down
// projections at K 5632 / 11008; gemm_avx512.cpp says where it is on). Which lines are fetched
// early is all that changes: same bits. (Prefetching the W panel 4 or 8 pairs ahead as oneDNN's
// brgemm does, one prefetcht0 a line: 0.94-0.99x, not kept.)
template <bool kRowsX = false, int NJ = 4, int MRC = kBf16MR, bool kRowMax = false, bool kPfX = false>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c"))) inline void kern_bf16_6x64(
    int64_t kcp, const uint32_t* xp, const uint32_t* wp, float* y, int64_t ldy, int mr, int64_t nr,
    const float* bias, bool first, int64_t ldxr = 0, const float* rs = nullptr, float* rmax = nullptr,
    int64_t pf_x = 0) {
  static_assert(NJ >= 1 && NJ <= 4, "a panel has 4 groups of 16 columns");
  static_assert(MRC >= 1 && MRC <= kBf16MR, "at most kBf16MR rows");
  constexpr int MR = MRC, NR = kBf16NR;
  __mmask16 mk[NJ];
#pragma GCC unroll 4
  for (int j = 0; j < NJ; ++j) mk[j] = simd::tail_mask16(nr - 16 * j);
  __m512 c[MR][NJ];
#pragma GCC unroll 4
  for (int j = 0; j < NJ; ++j) {
    const __m512 b = (first && bias) ? _mm512_maskz_loadu_ps(mk[j], bias + 16 * j) : _mm512_setzero_ps();
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) c[i][j] = b;
  }
  if constexpr (kPfX) {
    static_assert(!kRowsX, "the X prefetch is for packed X");
    int64_t q0 = 0;
    for (; q0 + 2 <= kcp; q0 += 2) {
      _mm_prefetch(reinterpret_cast<const char*>(xp + pf_x + q0 * kBf16MR), _MM_HINT_T0);
      bf16_pair_step<MR, NJ>(c, wp + q0 * NR, xp + q0 * kBf16MR);
      bf16_pair_step<MR, NJ>(c, wp + (q0 + 1) * NR, xp + (q0 + 1) * kBf16MR);
    }
    if (q0 < kcp) bf16_pair_step<MR, NJ>(c, wp + q0 * NR, xp + q0 * kBf16MR);
  } else {
#pragma GCC unroll 2
    for (int64_t q = 0; q < kcp; ++q) {
      const uint32_t* w = wp + q * NR;
      const uint32_t* x = kRowsX ? xp + q : xp + q * kBf16MR;
      const int64_t xi = kRowsX ? ldxr : 1;
      __m512bh b[NJ];
#pragma GCC unroll 4
      for (int j = 0; j < NJ; ++j) b[j] = (__m512bh)_mm512_load_si512(w + 16 * j);
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32(int(x[i * xi]));
#pragma GCC unroll 4
        for (int j = 0; j < NJ; ++j) c[i][j] = _mm512_dpbf16_ps(c[i][j], a, b[j]);
      }
    }
  }
  if constexpr (kRowMax) {
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i)
      if (i < mr) {
        __m512 m = _mm512_load_ps(rmax + 16 * i);
#pragma GCC unroll 4
        for (int j = 0; j < NJ; ++j) m = _mm512_mask_max_ps(m, mk[j], m, c[i][j]);
        _mm512_store_ps(rmax + 16 * i, m);
      }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
    if (i < mr) {
#pragma GCC unroll 4
      for (int j = 0; j < NJ; ++j) {
        __m512 v = c[i][j];
        if (rs) v = _mm512_mul_ps(v, _mm512_set1_ps(rs[i]));
        if (!first) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk[j], y + i * ldy + 16 * j));
        _mm512_mask_storeu_ps(y + i * ldy + 16 * j, mk[j], v);
      }
    }
}

// One X panel of the microkernel from f32 rows: xp[q*kBf16MR + i] = row i's bf16 pair q
// (elements 2q low, 2q+1 high, round to nearest even as vcvtne2ps2bf16), q < ceil(K/2); zero past
// K and for rows i >= rows. Row i at x + i*ldx; rows in [1, kBf16MR]. Per 32 elements the six
// rows are converted in registers and interleaved by two rounds of vpermt2d, so there is no
// scalar scatter (and no store-to-load forwarding stall from a vector store read back as words).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c"))) inline void pack_x6_bf16pairs(
    const float* x, int64_t ldx, int rows, int64_t K, uint32_t* xp) {
  static_assert(kBf16MR == 6, "the interleave tables are for 6 rows");
  // Rows (0,1), (2,3), (4,5) interleaved by pair: A = [r0[q], r1[q]] for q in one half of 8.
  alignas(64) static constexpr int32_t kIlv[2][16] = {{0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23},
                                                      {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31}};
  // Output word w = 16*v + l of a half (v < 3) is pair q = w/6 of row s*2+t (s = w%6/2, t = w%2),
  // i.e. word 2q+t of A, B or C: first A and B by kAB (C's words left as don't-care), then C by kC.
  alignas(64) static constexpr int32_t kAB[3][16] = {
      {0, 1, 16, 17, 0, 0, 2, 3, 18, 19, 0, 0, 4, 5, 20, 21}, {0, 0, 6, 7, 22, 23, 0, 0, 8, 9, 24, 25, 0, 0, 10, 11},
      {26, 27, 0, 0, 12, 13, 28, 29, 0, 0, 14, 15, 30, 31, 0, 0}};
  alignas(64) static constexpr int32_t kC[3][16] = {
      {0, 1, 2, 3, 16, 17, 6, 7, 8, 9, 18, 19, 12, 13, 14, 15}, {20, 21, 2, 3, 4, 5, 22, 23, 8, 9, 10, 11, 24, 25, 14, 15},
      {0, 1, 26, 27, 4, 5, 6, 7, 28, 29, 10, 11, 12, 13, 30, 31}};
  const int64_t kp = (K + 1) / 2;
  for (int64_t k = 0; k < K; k += 32) {
    __m512i r[kBf16MR];
#pragma GCC unroll 6
    for (int i = 0; i < kBf16MR; ++i) {
      if (i < rows) {
        const float* s = x + i * ldx + k;
        const __m512 lo = _mm512_maskz_loadu_ps(simd::tail_mask16(K - k), s);
        const __m512 hi = _mm512_maskz_loadu_ps(simd::tail_mask16(K - k - 16), s + 16);
        r[i] = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
      } else {
        r[i] = _mm512_setzero_si512();
      }
    }
    const int64_t words = 6 * std::min<int64_t>(16, kp - k / 2);  // output words of this step
    uint32_t* o = xp + (k / 2) * kBf16MR;
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m512i il = _mm512_load_si512(kIlv[h]);
      const __m512i A = _mm512_permutex2var_epi32(r[0], il, r[1]), B = _mm512_permutex2var_epi32(r[2], il, r[3]),
                    C = _mm512_permutex2var_epi32(r[4], il, r[5]);
#pragma GCC unroll 3
      for (int v = 0; v < 3; ++v) {
        const __m512i ab = _mm512_permutex2var_epi32(A, _mm512_load_si512(kAB[v]), B);
        const __m512i w = _mm512_permutex2var_epi32(ab, _mm512_load_si512(kC[v]), C);
        const int64_t w0 = h * 48 + v * 16;
        _mm512_mask_storeu_epi32(o + w0, simd::tail_mask16(words - w0), w);
      }
    }
  }
}

}  // namespace gemm_detail
}  // namespace emollm
