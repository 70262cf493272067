// Packing of f32 rows into the bf16-pair operands of the 6x64 vdpbf16ps microkernel
// (kern_bf16_6x64, gemm_kern_bf16_avx512.h), shared by the attention kernels that run their
// products on it: the bidirectional forward (attention_bidir_bf16.cpp) and the attention
// backward (backward_attention_bf16.cpp).
//
// A word holds two bf16 values (round to nearest even), the first in the low half. Two panel
// layouts of a matrix x (rows `ld` floats apart):
//   pack_row_panels       the reduction runs along each row: block b of 64 rows,
//                         out[(b * np + q) * 64 + j] = (x[64 b + j][2q], x[64 b + j][2q + 1])
//                         (S = Q K^T: the key rows of K)
//   pack_row_pair_panels  the reduction runs down the columns: 64-column block c,
//                         out[(c * n_pairs + t) * 64 + j] = (x[2t][64 c + j], x[2t + 1][64 c + j])
//                         (O = P V: V's rows in pairs; the backward's P and dS tiles)
// Entries past the matrix are zero, so padded lanes add nothing. Include only from x86-64
// translation units (after <immintrin.h>).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "gemm_kern_bf16_avx512.h"
#include "gemm_transpose_avx512.h"
#include "simd_math.h"

namespace emollm {
namespace attention_bf16 {

#define EMOLLM_TARGET_BF16_PACK __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))

// Words written by row_to_pairs for n elements: whole 16-word vectors.
constexpr int64_t pair_words_padded(int64_t n) { return (n + 31) / 32 * 16; }

// dst[0 : pair_words_padded(n)] = x[0:n] as bf16 pairs (word q = (x[2q], x[2q + 1])), zero past n.
EMOLLM_TARGET_BF16_PACK inline void row_to_pairs(const float* x, int64_t n, uint32_t* dst) {
  for (int64_t k = 0; k < n; k += 32) {
    const __m512 lo = _mm512_maskz_loadu_ps(simd::tail_mask16(n - k), x + k);
    const __m512 hi = _mm512_maskz_loadu_ps(simd::tail_mask16(n - k - 16), x + k + 16);
    _mm512_storeu_si512(dst + k / 2, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
}

// Prefetches the lines of n floats at x: an attention head's K / V rows are a head's slice of a
// token's row, one row stride (all heads) apart, which the hardware prefetchers do not follow.
EMOLLM_TARGET_BF16_PACK inline void prefetch_row(const float* x, int64_t n) {
  for (int64_t e = 0; e < n; e += 16) _mm_prefetch(reinterpret_cast<const char*>(x + e), _MM_HINT_T0);
}

// Blocks b < n_blocks of 64 rows of x [n_rows, n_cols] (stride ld): out[(b * np + q) * 64 + j] =
// pair q of row 64 b + j, np = ceil(n_cols / 2); rows past n_rows are zero. Per 16 rows and 16
// pairs the rows are converted in registers and transposed (16 x 16 words); rows 32 ahead are
// prefetched. out 64-byte aligned (the microkernel's aligned loads).
EMOLLM_TARGET_BF16_PACK inline void pack_row_panels(const float* x, int64_t ld, int64_t n_rows, int64_t n_cols,
                                                    int64_t n_blocks, uint32_t* out) {
  constexpr int64_t NR = gemm_detail::kBf16NR;
  constexpr int64_t kAhead = 32;  // rows
  const int64_t np = (n_cols + 1) / 2;
  for (int64_t j0 = 0; j0 < n_blocks * NR; j0 += 16) {
    for (int64_t row = j0 + kAhead; row < std::min(j0 + kAhead + 16, n_rows); ++row) prefetch_row(x + row * ld, n_cols);
    uint32_t* col = out + (j0 / NR) * np * NR + j0 % NR;
    for (int64_t q0 = 0; q0 < np; q0 += 16) {
      const int64_t e0 = 2 * q0;  // first element of this chunk of pairs
      const __mmask16 m0 = simd::tail_mask16(n_cols - e0), m1 = simd::tail_mask16(n_cols - e0 - 16);
      __m512 r[16];
#pragma GCC unroll 16
      for (int t = 0; t < 16; ++t) {
        if (j0 + t < n_rows) {
          const float* xr = x + (j0 + t) * ld + e0;
          r[t] = (__m512)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, xr + 16), _mm512_maskz_loadu_ps(m0, xr));
        } else {
          r[t] = _mm512_setzero_ps();
        }
      }
      gemm_detail::transpose16_ps(r);  // r[t] = pair q0 + t of the 16 rows
      const int64_t nq = std::min<int64_t>(16, np - q0);
      for (int64_t t = 0; t < nq; ++t) _mm512_store_ps(reinterpret_cast<float*>(col + (q0 + t) * NR), r[t]);
    }
  }
}

// 64-column blocks c < ceil(n_cols / 64) of x [n_rows, n_cols] (stride ld) in row pairs t <
// n_pairs: out[(c * n_pairs + t) * 64 + j] = (x[2t][64 c + j], x[2t + 1][64 c + j]); zero past
// n_rows and n_cols. out 64-byte aligned.
EMOLLM_TARGET_BF16_PACK inline void pack_row_pair_panels(const float* x, int64_t ld, int64_t n_rows, int64_t n_cols,
                                                         int64_t n_pairs, uint32_t* out) {
  constexpr int64_t NR = gemm_detail::kBf16NR;
  const int64_t ncb = (n_cols + NR - 1) / NR;
  constexpr int64_t kAhead = 16;  // rows
  // word 2j of a pair panel's 16 words is row a's column j, word 2j + 1 row b's: one vpermw of
  // the two rows converted side by side (cvtne2ps: a in words 0-15, b in 16-31) instead of
  // widening each half to 32 bits, shifting and or-ing (same roundings, same words)
  alignas(64) static constexpr int16_t kPairIlv[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                       8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i ilv = _mm512_load_si512(kPairIlv);
  for (int64_t t = 0; t < n_pairs; ++t) {
    for (int64_t row = 2 * t + kAhead; row < std::min(2 * t + kAhead + 2, n_rows); ++row) prefetch_row(x + row * ld, n_cols);
    const bool has_a = 2 * t < n_rows, has_b = 2 * t + 1 < n_rows;
    const float* a = x + (has_a ? 2 * t : 0) * ld;
    const float* b = has_b ? a + ld : a;
    for (int64_t c = 0; c < ncb; ++c) {
      uint32_t* o = out + (c * n_pairs + t) * NR;
#pragma GCC unroll 4
      for (int64_t j0 = 0; j0 < NR; j0 += 16) {
        const int64_t col = c * NR + j0;
        const __mmask16 m = simd::tail_mask16(n_cols - col);
        const __m512 va = _mm512_maskz_loadu_ps(has_a ? m : __mmask16(0), a + col);
        const __m512 vb = _mm512_maskz_loadu_ps(has_b ? m : __mmask16(0), b + col);
        _mm512_store_si512(o + j0, _mm512_permutexvar_epi16(ilv, (__m512i)_mm512_cvtne2ps_pbh(vb, va)));
      }
    }
  }
}

}  // namespace attention_bf16
}  // namespace emollm
