// AVX-512 matrix products (Isa::Avx512), compiled with function target attributes only.
//
// M <= kSmallM ("dot" kernels, decode): every weight row is streamed once from memory and
//   dequantised in registers (f16 via vcvtph2ps, bf16 by shifting, q8_0 by sign extension,
//   q4_0 through a 16-entry vpermps table d*(i-8)), multiplied with all M activation rows.
//   Rows of W are split across the pool, R weight rows at a time.
// M >  kSmallM (prefill): packed, cache-blocked GEMM. Blocks of W (KC x NC) are dequantised
//   and transposed into 64-column panels that live in L2; a 6x64 register-blocked microkernel
//   (24 zmm accumulators) broadcasts X and FMAs into 4 zmm columns.
//   BF16 weights on CPUs with AVX512-BF16 use vdpbf16ps instead: X is rounded to bf16 pairs,
//   W panels hold (k, k+1) bf16 pairs, doubling the multiply-add rate.
#include "../../base/error.h"
#include "gemm_internal.h"
#include "gemm_x86_common.h"

#if defined(__x86_64__)
#include <immintrin.h>

// GCC 12 reports its own _mm512_undefined_*() helpers (inlined from immintrin.h) as uninitialised.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "gemm_kern_bf16_avx512.h"
#include "gemm_transpose_avx512.h"
#include "simd_math.h"
#include "simd_vec.h"

// The packed GEMM's f32 microkernel template, compiled for this file's target (gemm_f32_tile.h).
#define EMOLLM_F32_TILE_TARGET EMOLLM_TARGET_AVX512
#include "gemm_f32_tile.h"

namespace emollm {
namespace gemm_detail {
namespace {

#define EMO_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define EMO_T512BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))
#define EMO_AI inline __attribute__((always_inline))

inline int rd32(const uint8_t* p) {
  int v;
  std::memcpy(&v, p, 4);
  return v;
}

EMO_T512 EMO_AI __m512 f16_scale(const uint8_t* p) { return _mm512_set1_ps(_cvtsh_ss(rd16(p))); }

// q4_0 lookup: lane i holds (i - 8); multiplied by the block scale it maps a nibble to its value.
EMO_T512 EMO_AI __m512 q4_table(const uint8_t* blk) {
  const __m512 base = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
  return _mm512_mul_ps(f16_scale(blk), base);
}

// Lanes [0, c) of a 16-lane mask (none for c <= 0): simd_math.h's, shared with the other kernels.
using simd::tail_mask16;

// ------------------------------------------------------------------ dequantising loads
// 32 elements of a weight row starting at element k (k % 32 == 0, all 32 in range).
template <DType DT>
EMO_T512 EMO_AI void load32(const uint8_t* row, int64_t k, __m512& w0, __m512& w1) {
  if constexpr (DT == DType::F32) {
    const float* p = reinterpret_cast<const float*>(row) + k;
    w0 = _mm512_loadu_ps(p);
    w1 = _mm512_loadu_ps(p + 16);
  } else if constexpr (DT == DType::F16) {
    const uint8_t* p = row + 2 * k;
    w0 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    w1 = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
  } else if constexpr (DT == DType::BF16) {
    const uint8_t* p = row + 2 * k;
    w0 = _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
    w1 = _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32))), 16));
  } else if constexpr (DT == DType::Q8_0) {
    const uint8_t* b = row + (k / kQK) * sizeof(BlockQ8_0);
    const __m512 d = f16_scale(b);
    w0 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2)))));
    w1 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 18)))));
  } else {  // Q4_0
    const uint8_t* b = row + (k / kQK) * sizeof(BlockQ4_0);
    const __m512 t = q4_table(b);
    const __m512i raw = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2)));
    w0 = _mm512_permutexvar_ps(raw, t);  // vpermps reads the low 4 bits: the low nibble
    w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(raw, 4), t);
  }
}

// Up to 32 elements of a plain-type (F32/F16/BF16) row at k, c in [1, 32] valid, rest zero.
template <DType DT>
EMO_T512 EMO_AI void load32_tail(const uint8_t* row, int64_t k, int64_t c, __m512& w0, __m512& w1) {
  const __mmask16 m0 = tail_mask16(c), m1 = tail_mask16(c - 16);
  if constexpr (DT == DType::F32) {
    const float* p = reinterpret_cast<const float*>(row) + k;
    w0 = _mm512_maskz_loadu_ps(m0, p);
    w1 = _mm512_maskz_loadu_ps(m1, p + 16);
  } else if constexpr (DT == DType::F16) {
    const uint8_t* p = row + 2 * k;
    w0 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m0, p));
    w1 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m1, p + 32));
  } else if constexpr (DT == DType::BF16) {
    const uint8_t* p = row + 2 * k;
    w0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m0, p)), 16));
    w1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m1, p + 32)), 16));
  } else {
    w0 = w1 = _mm512_setzero_ps();  // quantised types have K % 32 == 0: never reached
  }
}

// 16 elements at k (k % 16 == 0), c in [1, 16] valid (quantised types: always 16).
template <DType DT>
EMO_T512 EMO_AI __m512 load16(const uint8_t* row, int64_t k, int64_t c) {
  if constexpr (DT == DType::F32) {
    return _mm512_maskz_loadu_ps(tail_mask16(c), reinterpret_cast<const float*>(row) + k);
  } else if constexpr (DT == DType::F16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail_mask16(c), row + 2 * k));
  } else if constexpr (DT == DType::BF16) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(tail_mask16(c), row + 2 * k)), 16));
  } else if constexpr (DT == DType::Q8_0) {
    const uint8_t* b = row + (k / kQK) * sizeof(BlockQ8_0);
    return _mm512_mul_ps(f16_scale(b), _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                           _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 + (k & 16))))));
  } else {
    const uint8_t* b = row + (k / kQK) * sizeof(BlockQ4_0);
    __m512i raw = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2)));
    if (k & 16) raw = _mm512_srli_epi32(raw, 4);
    return _mm512_permutexvar_ps(raw, q4_table(b));
  }
}

// ------------------------------------------------------------------ dot kernels (M <= 8)
// Y[m, n0+r] = W[n0+r,:] . X[m,:] for r < R, m < MB.
template <DType DT, int R, int MB>
EMO_T512 void dot_block(const float* X, int64_t ldx, const uint8_t* W, size_t rb, const float* bias,
                        float* Y, int64_t ldy, int64_t n0, int64_t K) {
  constexpr int NA = (R * MB <= 8) ? 2 : 1;  // independent accumulators per (row, m)
  const uint8_t* wr[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) wr[r] = W + size_t(n0 + r) * rb;
  __m512 acc[R][MB][NA];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m)
#pragma GCC unroll 2
      for (int a = 0; a < NA; ++a) acc[r][m][a] = _mm512_setzero_ps();

  int64_t k = 0;
  if constexpr (DT == DType::Q8_0 && MB == 1) {
    // decode: scale the block's partial dot product once instead of both halves of the weights
    for (; k + 32 <= K; k += 32) {
      const __m512 x0 = _mm512_loadu_ps(X + k);
      const __m512 x1 = _mm512_loadu_ps(X + k + 16);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const uint8_t* b = wr[r] + (k / kQK) * sizeof(BlockQ8_0);
        const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2))));
        const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 18))));
        const __m512 t = _mm512_fmadd_ps(q1, x1, _mm512_mul_ps(q0, x0));
        acc[r][0][0] = _mm512_fmadd_ps(f16_scale(b), t, acc[r][0][0]);
      }
    }
  }
  for (; k + 32 <= K; k += 32) {
    __m512 w[R][2];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) load32<DT>(wr[r], k, w[r][0], w[r][1]);
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      const __m512 x0 = _mm512_loadu_ps(X + m * ldx + k);
      const __m512 x1 = _mm512_loadu_ps(X + m * ldx + k + 16);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        acc[r][m][0] = _mm512_fmadd_ps(w[r][0], x0, acc[r][m][0]);
        acc[r][m][NA - 1] = _mm512_fmadd_ps(w[r][1], x1, acc[r][m][NA - 1]);
      }
    }
  }
  if constexpr (DT == DType::F32 || DT == DType::F16 || DT == DType::BF16) {
    if (k < K) {
      const int64_t c = K - k;
      __m512 w[R][2];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) load32_tail<DT>(wr[r], k, c, w[r][0], w[r][1]);
      const __mmask16 m0 = tail_mask16(c), m1 = tail_mask16(c - 16);
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) {
        const __m512 x0 = _mm512_maskz_loadu_ps(m0, X + m * ldx + k);
        const __m512 x1 = _mm512_maskz_loadu_ps(m1, X + m * ldx + k + 16);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          acc[r][m][0] = _mm512_fmadd_ps(w[r][0], x0, acc[r][m][0]);
          acc[r][m][NA - 1] = _mm512_fmadd_ps(w[r][1], x1, acc[r][m][NA - 1]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      __m512 s = acc[r][m][0];
      if (NA == 2) s = _mm512_add_ps(s, acc[r][m][NA - 1]);
      float v = _mm512_reduce_add_ps(s);
      if (bias) v += bias[n0 + r];
      Y[m * ldy + n0 + r] = v;
    }
}

// M in 5..8: 16 elements at a time so that R = 3 weight rows share every X load
// (3*8 accumulators + 3 weights + 1 x = 28 zmm); X (M x K) is read from L2 once per 3 rows.
template <DType DT, int R, int MB>
EMO_T512 void dot_block_wide(const float* X, int64_t ldx, const uint8_t* W, size_t rb, const float* bias,
                             float* Y, int64_t ldy, int64_t n0, int64_t K) {
  const uint8_t* wr[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) wr[r] = W + size_t(n0 + r) * rb;
  __m512 acc[R][MB];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const int64_t c = K - k;  // >= 16 except in a plain-type tail
    const __mmask16 mk = tail_mask16(c);
    __m512 w[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) w[r] = load16<DT>(wr[r], k, c);
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      const __m512 x = _mm512_maskz_loadu_ps(mk, X + m * ldx + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][m] = _mm512_fmadd_ps(w[r], x, acc[r][m]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      float v = _mm512_reduce_add_ps(acc[r][m]);
      if (bias) v += bias[n0 + r];
      Y[m * ldy + n0 + r] = v;
    }
}

template <DType DT, int MB>
EMO_T512 void dot_range(const Args& a, const float* X, float* Y, int64_t n0, int64_t n1) {
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  int64_t n = n0;
  if constexpr (MB <= 4) {
    constexpr int R = 4;
    for (; n + R <= n1; n += R) dot_block<DT, R, MB>(X, a.ldx, W, a.row_bytes, a.bias, Y, a.ldy, n, a.K);
    for (; n < n1; ++n) dot_block<DT, 1, MB>(X, a.ldx, W, a.row_bytes, a.bias, Y, a.ldy, n, a.K);
  } else {
    constexpr int R = 3;
    for (; n + R <= n1; n += R) dot_block_wide<DT, R, MB>(X, a.ldx, W, a.row_bytes, a.bias, Y, a.ldy, n, a.K);
    for (; n < n1; ++n) dot_block_wide<DT, 1, MB>(X, a.ldx, W, a.row_bytes, a.bias, Y, a.ldy, n, a.K);
  }
}

using DotRangeFn = void (*)(const Args&, const float*, float*, int64_t, int64_t);

DotRangeFn pick_dot(DType t, int64_t mb) {
  return with_base_dtype(t, [mb](auto dt) {
    return with_small_m(mb, [](auto m) -> DotRangeFn { return dot_range<decltype(dt)::value, decltype(m)::value>; });
  });
}

// ------------------------------------------------------------------ multi-stream dot kernels (2 <= M <= 8, BF16 / F16)
// Batched decode on weights in huge pages: dot_block's / dot_block_wide's rows, S at a time from
// S parts of [n0, n1) walked side by side (gemv_streams' structure at M = 1, generalised), each
// with a software prefetch kDotStreamsPrefetchBytes ahead; dot_block instead takes R adjacent
// rows with no prefetch, so a thread reads its chunk as R streams 2K bytes apart that the
// hardware prefetchers have to find on their own, line by line. Every output keeps the
// accumulators, the k order, the tail and the reduction of dot_block (MB <= 4: 32 elements a step,
// 2 accumulators at MB <= 2) or dot_block_wide (MB 5..8: 16 elements a step): the same bits as the
// plain dot kernels (what weights on 4 KiB pages take), whatever the split. Rows
// left over when [n0, n1) is not a multiple of S: dot_range's.
constexpr int kDotStreamsPrefetchBytes = 1024;

template <DType DT, int MB, int S>
EMO_T512 void dot_streams(const Args& a, int64_t n0, int64_t n1) {
  static_assert(DT == DType::BF16 || DT == DType::F16, "dot_streams: BF16 or F16 weights");
  constexpr bool kWide = MB > 4;                      // dot_block_wide's arithmetic
  constexpr int NA = (!kWide && 4 * MB <= 8) ? 2 : 1;  // dot_block's accumulators per (row, m) at R = 4
  const int64_t len = (n1 - n0) / S;
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  const int64_t K = a.K, ldx = a.ldx;
  const float* X = a.X;
  for (int64_t i = 0; i < len; ++i) {
    const uint8_t* row[S];
    __m512 acc[S][MB][NA];
#pragma GCC unroll 4
    for (int q = 0; q < S; ++q) {
      row[q] = W + size_t(n0 + q * len + i) * a.row_bytes;
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m)
#pragma GCC unroll 2
        for (int n = 0; n < NA; ++n) acc[q][m][n] = _mm512_setzero_ps();
    }
    if constexpr (!kWide) {
      int64_t k = 0;
      for (; k + 32 <= K; k += 32) {
#pragma GCC unroll 4
        for (int q = 0; q < S; ++q) {
          _mm_prefetch(reinterpret_cast<const char*>(row[q] + 2 * k + kDotStreamsPrefetchBytes), _MM_HINT_T0);
          __m512 w0, w1;
          load32<DT>(row[q], k, w0, w1);
#pragma GCC unroll 8
          for (int m = 0; m < MB; ++m) {
            acc[q][m][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(X + m * ldx + k), acc[q][m][0]);
            acc[q][m][NA - 1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(X + m * ldx + k + 16), acc[q][m][NA - 1]);
          }
        }
      }
      if (k < K) {
        const int64_t c = K - k;
        const __mmask16 m0 = tail_mask16(c), m1 = tail_mask16(c - 16);
#pragma GCC unroll 4
        for (int q = 0; q < S; ++q) {
          __m512 w0, w1;
          load32_tail<DT>(row[q], k, c, w0, w1);
#pragma GCC unroll 8
          for (int m = 0; m < MB; ++m) {
            acc[q][m][0] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m0, X + m * ldx + k), acc[q][m][0]);
            acc[q][m][NA - 1] = _mm512_fmadd_ps(w1, _mm512_maskz_loadu_ps(m1, X + m * ldx + k + 16), acc[q][m][NA - 1]);
          }
        }
      }
    } else {
      for (int64_t k = 0; k < K; k += 16) {
        const int64_t c = K - k;
        const __mmask16 mk = tail_mask16(c);
#pragma GCC unroll 4
        for (int q = 0; q < S; ++q) {
          if ((k & 31) == 0)
            _mm_prefetch(reinterpret_cast<const char*>(row[q] + 2 * k + kDotStreamsPrefetchBytes), _MM_HINT_T0);
          const __m512 w = load16<DT>(row[q], k, c);
#pragma GCC unroll 8
          for (int m = 0; m < MB; ++m)
            acc[q][m][0] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(mk, X + m * ldx + k), acc[q][m][0]);
        }
      }
    }
#pragma GCC unroll 4
    for (int q = 0; q < S; ++q) {
      const int64_t n = n0 + q * len + i;
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) {
        __m512 s = acc[q][m][0];
        if (NA == 2) s = _mm512_add_ps(s, acc[q][m][NA - 1]);
        float v = _mm512_reduce_add_ps(s);
        if (a.bias) v += a.bias[n];
        a.Y[m * a.ldy + n] = v;
      }
    }
  }
  dot_range<DT, MB>(a, a.X, a.Y, n0 + S * len, n1);
}

// Streams per thread: 4 as at M = 1 while the accumulators fit (S x MB x NA <= 24 zmm), 3 at MB 7..8.
constexpr int dot_streams_count(int mb) { return mb <= 6 ? 4 : 3; }

DotRangeFn pick_dot_streams(DType t, int64_t mb) {
  return with_small_m(mb, [t](auto m) -> DotRangeFn {
    constexpr int MB = decltype(m)::value;
    constexpr int S = dot_streams_count(MB);
    if (t == DType::F16)
      return [](const Args& a, const float*, float*, int64_t n0, int64_t n1) { dot_streams<DType::F16, MB, S>(a, n0, n1); };
    return [](const Args& a, const float*, float*, int64_t n0, int64_t n1) { dot_streams<DType::BF16, MB, S>(a, n0, n1); };
  });
}

// ------------------------------------------------------------------ BF16 GEMV (M = 1)
// A bf16 weight is the high half of an f32, so one 64-byte load of 32 weights gives the 16
// even-indexed ones as f32 by a 16-bit left shift of each dword and the 16 odd-indexed ones by
// masking the low half: 1 load + 2 integer ops per 32 weights instead of 2 loads + 2 widening
// shuffles + 2 shifts. X is reordered once per call to match (xeo: per 32 elements the 16
// even, then the 16 odd ones; zero past K), so the products are the same f32 products as the
// general kernel's, summed in another order. Several rows at a time with two accumulators per
// row and a software prefetch ahead of each row keep the weight streams in flight (EMOLLM_GEMV_ROWS,
// EMOLLM_GEMV_PF: compile-time knobs for tuning on other machines).
#ifndef EMOLLM_GEMV_PF
#define EMOLLM_GEMV_PF 1024
#endif
constexpr int kGemvPrefetchBytes = EMOLLM_GEMV_PF;

EMO_T512 void bf16_reorder_x(const float* x, int64_t K, float* xeo) {
  const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int64_t k = 0; k < K; k += 32) {
    const int64_t c = K - k;
    const __m512 lo = _mm512_maskz_loadu_ps(tail_mask16(c), x + k);
    const __m512 hi = _mm512_maskz_loadu_ps(tail_mask16(c - 16), x + k + 16);
    _mm512_store_ps(xeo + k, _mm512_permutex2var_ps(lo, ev, hi));
    _mm512_store_ps(xeo + k + 16, _mm512_permutex2var_ps(lo, od, hi));
  }
}

// Hint: the software prefetch kGemvPrefetchBytes ahead of each row (_MM_HINT_T0 / _NTA), or -1 for
// none (set_gemv_block_prefetch, decode_tuning.h block_prefetch). Same bits.
template <int R, int Hint = _MM_HINT_T0>
EMO_T512 void bf16_gemv_block(const float* xeo, const uint8_t* W, size_t rb, const float* bias, float* Y,
                              int64_t n0, int64_t K) {
  const uint8_t* wr[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) wr[r] = W + size_t(n0 + r) * rb;
  __m512 ae[R], ao[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) ae[r] = ao[r] = _mm512_setzero_ps();
  const __m512i hi_mask = _mm512_set1_epi32(int(0xFFFF0000u));
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    const __m512 xe = _mm512_load_ps(xeo + k), xo = _mm512_load_ps(xeo + k + 16);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = wr[r] + 2 * k;
      if constexpr (Hint >= 0)
        _mm_prefetch(reinterpret_cast<const char*>(p + kGemvPrefetchBytes), static_cast<decltype(_MM_HINT_T0)>(Hint));
      const __m512i v = _mm512_loadu_si512(p);
      ae[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), xe, ae[r]);
      ao[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, hi_mask)), xo, ao[r]);
    }
  }
  if (k < K) {  // K % 32 elements: masked weight load, xeo is zero there
    const __mmask32 m = __mmask32((1ull << (K - k)) - 1);
    const __m512 xe = _mm512_load_ps(xeo + k), xo = _mm512_load_ps(xeo + k + 16);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512i v = _mm512_maskz_loadu_epi16(m, wr[r] + 2 * k);
      ae[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), xe, ae[r]);
      ao[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v, hi_mask)), xo, ao[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float v = _mm512_reduce_add_ps(_mm512_add_ps(ae[r], ao[r]));
    if (bias) v += bias[n0 + r];
    Y[n0 + r] = v;
  }
}

template <int Hint>
EMO_T512 void bf16_gemv_range_hint(const Args& a, const float* xeo, int64_t n0, int64_t n1) {
#ifndef EMOLLM_GEMV_ROWS
#define EMOLLM_GEMV_ROWS 8  // 8 rows x 2 accumulators: 0.93-1.05x oneDNN vs 0.87-1.01x with 4 (Zen 5, noisy machine)
#endif
  constexpr int R = EMOLLM_GEMV_ROWS;
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  int64_t n = n0;
  for (; n + R <= n1; n += R) bf16_gemv_block<R, Hint>(xeo, W, a.row_bytes, a.bias, a.Y, n, a.K);
  for (; n < n1; ++n) bf16_gemv_block<1, Hint>(xeo, W, a.row_bytes, a.bias, a.Y, n, a.K);
}

// The 8-row block GEMV (weights on 4 KiB pages) with the software prefetch of
// set_gemv_block_prefetch (the same bits).
EMO_T512 void bf16_gemv_range(const Args& a, const float* xeo, int64_t n0, int64_t n1) {
  with_prefetch_hint(gemv_block_prefetch(), [&](auto hint) { bf16_gemv_range_hint<decltype(hint)::value>(a, xeo, n0, n1); });
}

// ------------------------------------------------------------------ single-stream GEMV (M = 1, BF16 / F16 / F32)
// One weight row at a time: the rows of a chunk are contiguous in memory, so the thread reads
// its chunk as ONE sequential stream (the software prefetch runs straight on into the next row)
// instead of R interleaved streams 2K bytes apart. Only for weights in 2 MiB pages (Args::
// huge_pages, gemm_huge_pages): there TinyLlama-1.1B bf16 decode ran ~8% faster than with the
// 8-row kernel (Zen 5, 2 threads, quiet), but on 4 KiB pages ~25% slower: a single stream meets
// its TLB misses one after another, eight streams overlap them. 128 bytes of weights per
// iteration into 4 accumulators. Same f32 products as the other kernels, summed in another order.
#ifndef EMOLLM_GEMV_STREAM_PF
#define EMOLLM_GEMV_STREAM_PF 4096  // 1-8 KiB measured within noise end to end (Zen 5); 2 KiB was worst
#endif
constexpr int kStreamPrefetchBytes = EMOLLM_GEMV_STREAM_PF;

EMO_T512 EMO_AI void prefetch_line(const uint8_t* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p + kStreamPrefetchBytes), _MM_HINT_T0);
}

// BF16: the 32 weights of one 64-byte load as two f32 vectors, in the order their x operand has
// (x as bf16_reorder_x leaves it: per 32 elements the 16 even, then the 16 odd ones): a bf16 is
// the high half of an f32, so the even ones are each dword shifted left by 16, the odd ones the
// dword with its low half masked.
template <DType DT>
EMO_T512 EMO_AI __m512 stream_lo(__m512i v) {
  static_assert(DT == DType::BF16, "F16 rows are widened by f16x16_at");
  return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}
template <DType DT>
EMO_T512 EMO_AI __m512 stream_hi(__m512i v) {
  static_assert(DT == DType::BF16, "F16 rows are widened by f16x16_at");
  return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int(0xFFFF0000u))));
}
// F16 (x as is): 16 f16 at p widened exactly to f32 by vcvtph2ps with its memory operand.
EMO_T512 EMO_AI __m512 f16x16_at(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// BF16: the two 64-byte lines of a 128-byte step at p, each loaded once into a register. Left to
// itself GCC folds each load into both of its users (vpslld $16, m512 and vpandd m512), so every
// weight line was loaded twice: 16 loads a 4-stream step instead of 8. The empty asm keeps the
// values in registers (same values, same bits). Zen 5, 1 thread, thread CPU time, cold 2 MiB-page
// copies, interleaved call by call with the folded form (half_read_patterns, 80-200 rounds, load
// 16-19) at the 1.1B and 7B shapes: 0.99-1.07x by best (13 runs: 8 at 1.02-1.07x, 5 at
// 0.99-1.01x), 1.00-1.16x by median (every run >= 1.00). Small: what is left is the FMAs. Every
// CPU takes it (same bits; not measured on Zen 4). The 8-row block GEMV kept its folded loads: the
// same change there read 0.97-0.98x (half_read_patterns' block rows, same runs).
EMO_T512 EMO_AI void bf16_step_lines(const uint8_t* p, __m512i (&v)[2]) {
  v[0] = _mm512_loadu_si512(p);
  v[1] = _mm512_loadu_si512(p + 64);
  asm("" : "+v"(v[0]), "+v"(v[1]));
}

// The 16 weights of 32-byte quarter j (0..3) of a 128-byte step at p as f32, in the order of their
// x operand (x + 16 j): F16 widened by vcvtph2ps from memory; BF16 from the 64-byte load v[j / 2]
// (lo: the even elements, hi: the odd ones, as bf16_reorder_x orders x).
template <DType DT>
EMO_T512 EMO_AI __m512 stream_w(const uint8_t* p, const __m512i (&v)[2], int j) {
  if constexpr (DT == DType::F16) {
    (void)v;
    return f16x16_at(p + 32 * j);
  } else {
    (void)p;
    return j % 2 == 0 ? stream_lo<DT>(v[j / 2]) : stream_hi<DT>(v[j / 2]);
  }
}

// F32: one 128-byte step (32 weights at p, x at x) into the two accumulators dot_block<F32, R, 1>
// (the previous f32 M = 1 kernel) uses: s[0] the first 16 of each 32, s[1] the second 16, in k
// order. So an f32 row through the stream kernels is the same FMAs in the same order: the same bits.
EMO_T512 EMO_AI void f32_stream_step(const uint8_t* p, const float* x, __m512 (&s)[4]) {
  s[0] = _mm512_fmadd_ps(_mm512_loadu_ps(reinterpret_cast<const float*>(p)), _mm512_loadu_ps(x), s[0]);
  s[1] = _mm512_fmadd_ps(_mm512_loadu_ps(reinterpret_cast<const float*>(p + 64)), _mm512_loadu_ps(x + 16), s[1]);
}

// One row's end, from column k (the 128-byte steps done: a multiple of 64, F32 32) with the 4 accumulators
// s: the tail (BF16: 32 at a time, the last one masked, xeo zero past K; F16: 16 at a time,
// masked), the reduction and the bias. One function for the single- and multi-stream kernels, so
// their rows are the same bits.
template <DType DT>
EMO_T512 EMO_AI float stream_row_end(const Args& a, const float* x, const uint8_t* row, int64_t k, __m512 (&s)[4],
                                     int64_t n) {
  const int64_t K = a.K;
  if constexpr (DT == DType::F32) {
    // dot_block<F32, R, 1>'s end (the callers ran its 32-wide steps: fewer than 32 columns are
    // left; one masked step on both accumulators), its reduction (s[0] + s[1], reduce, + bias):
    // the bits of the previous f32 M = 1 kernel
    if (k < K) {
      const __mmask16 m0 = tail_mask16(K - k), m1 = tail_mask16(K - k - 16);
      const float* p = reinterpret_cast<const float*>(row) + k;
      s[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, p), _mm512_maskz_loadu_ps(m0, x + k), s[0]);
      s[1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, p + 16), _mm512_maskz_loadu_ps(m1, x + k + 16), s[1]);
    }
    float y = _mm512_reduce_add_ps(_mm512_add_ps(s[0], s[1]));
    if (a.bias) y += a.bias[n];
    return y;
  }
  if constexpr (DT == DType::BF16) {
    for (; k < K; k += 32) {
      const int64_t c = std::min<int64_t>(32, K - k);
      const __m512i v = _mm512_maskz_loadu_epi16(__mmask32(c >= 32 ? ~0u : (1u << c) - 1), row + 2 * k);
      s[0] = _mm512_fmadd_ps(stream_lo<DT>(v), _mm512_loadu_ps(x + k), s[0]);
      s[1] = _mm512_fmadd_ps(stream_hi<DT>(v), _mm512_loadu_ps(x + k + 16), s[1]);
    }
  } else {
    for (; k < K; k += 16) {
      const __mmask16 m = tail_mask16(K - k);
      s[0] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, row + 2 * k)), _mm512_maskz_loadu_ps(m, x + k), s[0]);
    }
  }
  float y = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3])));
  if (a.bias) y += a.bias[n];
  return y;
}

// Rows [n0, n1) of a BF16 (x = xeo, bf16_reorder_x's order, zero past K), F16 or F32 (x = a.X)
// matrix, one row at a time, 128 bytes of weights per step into 4 accumulators (F32: 2, dot_block's).
template <DType DT>
EMO_T512 void gemv_stream(const Args& a, const float* x, int64_t n0, int64_t n1) {
  static_assert(DT == DType::BF16 || DT == DType::F16 || DT == DType::F32, "gemv_stream: BF16, F16 or F32 weights");
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  const int64_t K = a.K;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = W + size_t(n) * a.row_bytes;
    __m512 s[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t k = 0;
    if constexpr (DT == DType::F32) {  // 128 bytes = 32 weights a step, dot_block's two accumulators
      for (; k + 32 <= K; k += 32) {
        const uint8_t* p = row + 4 * k;
        prefetch_line(p);
        prefetch_line(p + 64);
        f32_stream_step(p, x + k, s);
      }
    }
    if constexpr (DT != DType::F32)
    for (; k + 64 <= K; k += 64) {
      const uint8_t* p = row + 2 * k;
      prefetch_line(p);
      prefetch_line(p + 64);
      // F16: vcvtph2ps straight from memory, 16 weights each: no vextracti64x4 for the high halves,
      // fewer uops per byte, so more iterations (and loads) in flight. Same products, same sums:
      // the bits of the 64-byte-load form. Zen 5, one thread, cold weights in 2 MiB pages, old
      // and new core interleaved in one process: 1.01-1.07x at the 1.1B shapes (bf16 control
      // 0.98-1.03x), i.e. small; the loop alone on 4 KiB pages 1.1-1.3x.
      __m512i v[2];
      if constexpr (DT == DType::BF16) bf16_step_lines(p, v);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) s[j] = _mm512_fmadd_ps(stream_w<DT>(p, v, j), _mm512_loadu_ps(x + k + 16 * j), s[j]);
    }
    a.Y[n] = stream_row_end<DT>(a, x, row, k, s, n);
  }
}

// ------------------------------------------------------------------ multi-stream GEMV (M = 1, BF16 / F16 / F32)
// gemv_stream's rows, kStreams at a time from as many parts of [n0, n1) walked side by side: each
// 128-byte step reads one step of each part's current row, i.e. kStreams sequential streams per
// thread (each with the software prefetch kStreamsPrefetchBytes ahead), and one x load serves
// them all. A single stream leaves the memory system too few misses in flight: Zen 5 (2 vCPUs,
// AVX-512, load 4-6, cold weights in 2 MiB pages, interleaved in one process with oneDNN's
// brgemm bf16 GEMV), 2 threads: the single stream 37-62 GB/s = 0.79-1.19x oneDNN, 4 streams with
// a 1 KiB prefetch 59-87 GB/s = 1.28-1.56x oneDNN at the 1.1B and 7B shapes (2 / 3 / 6 / 8
// streams, a 512 B / 2 KiB prefetch or an L2 hint measured lower or within noise). Each row's
// arithmetic is gemv_stream's (the same accumulators, order and tail): the same bits, whatever
// the split. Rows left over when [n0, n1) is not a multiple of kStreams: gemv_stream.
// The prefetches stay among the loads, two a 128-byte step: the q4_0 pass's form (gemv_repacked.cpp
// ms_q40_avx512: one loop of prefetches a record, 4 KiB ahead, two streams) lost here (Zen 5,
// 1 thread, cold, interleaved, session 20): 2 streams with one 16-line loop a KiB 4 KiB ahead
// 1.12-1.48x this kernel's time (the 1.1B bf16 decode 0.83x), 3-4 streams 1.12-1.21x, the same
// loops with no prefetch at all about the no-prefetch rate: on these light rows a burst of 16-32
// prefetches costs more than it brings. One prefetch a 128-byte step (the read probe's) 1.09-1.22x.
constexpr int kStreams = 4;
#ifndef EMOLLM_GEMV_STREAMS_PF
#define EMOLLM_GEMV_STREAMS_PF 1024
#endif
constexpr int kStreamsPrefetchBytes = EMOLLM_GEMV_STREAMS_PF;

// Long BF16 / F16 rows (K >= kHalfLongK) on decode_tuning.h half_long_streams streams instead:
// each step's 4 x loads serve S rows, and past 2048 columns x (16-44 KiB of f32) no longer stays in
// L1 among the streaming weight lines (the reason, gemv_half_long_streams in gemm_internal.h).
constexpr int64_t kHalfLongK = 4096;

// R > 1: BF16 / F16 rows without software prefetch walked in runs first (the runs' comment below,
// after this function), then the columns past the last whole run one step of each stream in turn.
template <DType DT, int Hint = _MM_HINT_T0, int S = kStreams, int R = 1>
EMO_T512 void gemv_streams(const Args& a, const float* x, int64_t n0, int64_t n1) {
  static_assert(DT == DType::BF16 || DT == DType::F16 || DT == DType::F32, "gemv_streams: BF16, F16 or F32 weights");
  static_assert(S >= 1 && S <= 8, "gemv_streams: 1-8 streams (each 4 accumulators, 32 zmm registers)");
  static_assert(R == 1 || (DT != DType::F32 && Hint < 0), "gemv_streams: runs for BF16 / F16 rows without prefetch");
  const int64_t len = (n1 - n0) / S;  // rows per stream
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  const int64_t K = a.K;
  for (int64_t i = 0; i < len; ++i) {
    const uint8_t* row[S];
    __m512 s[S][4];
#pragma GCC unroll 8
    for (int q = 0; q < S; ++q) {
      row[q] = W + size_t(n0 + q * len + i) * a.row_bytes;
      for (int j = 0; j < 4; ++j) s[q][j] = _mm512_setzero_ps();
    }
    int64_t k = 0;
    if constexpr (DT == DType::F32) {  // 128 bytes = 32 weights of each stream a step (f32_stream_step)
      for (; k + 32 <= K; k += 32) {
#pragma GCC unroll 8
        for (int q = 0; q < S; ++q) {
          const uint8_t* p = row[q] + 4 * k;
          if constexpr (Hint >= 0) {
            _mm_prefetch(reinterpret_cast<const char*>(p + kStreamsPrefetchBytes), static_cast<decltype(_MM_HINT_T0)>(Hint));
            _mm_prefetch(reinterpret_cast<const char*>(p + kStreamsPrefetchBytes + 64), static_cast<decltype(_MM_HINT_T0)>(Hint));
          }
          f32_stream_step(p, x + k, s[q]);
        }
      }
    }
    if constexpr (R > 1) {
      constexpr int64_t C = 64 * R;
      for (; k + C <= K; k += C) {
        __m512 xr[4 * R];
#pragma GCC unroll 16
        for (int j = 0; j < 4 * R; ++j) xr[j] = _mm512_loadu_ps(x + k + 16 * j);
#pragma GCC unroll 8
        for (int q = 0; q < S; ++q) {
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            const uint8_t* p = row[q] + 2 * (k + 64 * r);
            __m512i v[2];
            if constexpr (DT == DType::BF16) bf16_step_lines(p, v);
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j)
              s[q][j] = _mm512_fmadd_ps(stream_w<DT>(p, v, j), xr[4 * r + j], s[q][j]);
          }
        }
      }
    }
    if constexpr (DT != DType::F32)
    for (; k + 64 <= K; k += 64) {
      const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
      const __m512 x2 = _mm512_loadu_ps(x + k + 32), x3 = _mm512_loadu_ps(x + k + 48);
#pragma GCC unroll 8
      for (int q = 0; q < S; ++q) {
        const uint8_t* p = row[q] + 2 * k;
        if constexpr (Hint >= 0) {
          _mm_prefetch(reinterpret_cast<const char*>(p + kStreamsPrefetchBytes), static_cast<decltype(_MM_HINT_T0)>(Hint));
          _mm_prefetch(reinterpret_cast<const char*>(p + kStreamsPrefetchBytes + 64), static_cast<decltype(_MM_HINT_T0)>(Hint));
        }
        __m512i v[2];
        if constexpr (DT == DType::BF16) bf16_step_lines(p, v);
        s[q][0] = _mm512_fmadd_ps(stream_w<DT>(p, v, 0), x0, s[q][0]);
        s[q][1] = _mm512_fmadd_ps(stream_w<DT>(p, v, 1), x1, s[q][1]);
        s[q][2] = _mm512_fmadd_ps(stream_w<DT>(p, v, 2), x2, s[q][2]);
        s[q][3] = _mm512_fmadd_ps(stream_w<DT>(p, v, 3), x3, s[q][3]);
      }
    }
#pragma GCC unroll 8
    for (int q = 0; q < S; ++q) {
      const int64_t n = n0 + q * len + i;
      a.Y[n] = stream_row_end<DT>(a, x, row[q], k, s[q], n);
    }
  }
  gemv_stream<DT>(a, x, n0 + S * len, n1);
}

// The runs (gemv_streams with R > 1): its rows and sums (the same FMAs on each row's 4
// accumulators in the same order: the same bits) walked in runs: R 128-byte steps (R * 64 columns) of one row's stream in address
// order before the next stream's, instead of one step of each stream in turn; x's R * 64 columns
// loaded once a run into 4 R registers for the S rows (S = 6, R = 2: 24 accumulators + 8 x
// registers, so GCC keeps 2 accumulators on the stack: a 48-FMA iteration (24 lines) has 118
// instructions for F16 (48 vcvtph2ps from memory, 8 x loads, 8 stack accesses; gemv_streams<6>: 55
// for 12 lines, no stack access), 139 for BF16 (24 loads, 12 stack accesses; 67 for 12 lines). No
// software prefetch. Columns past the last whole run: the one-step loop; rows left over:
// gemv_stream. Zen 4 (session 32, h-half; half_read_patterns, 1 thread, thread CPU time, cold
// 2 MiB-page copies, interleaved call by call; median over the processes of each one's median
// ratio at 2048 x 5632, 12288 x 4096, 4096 x 4096, 22016 x 4096, 4096 x 11008) against
// gemv_streams<6>: S = 6, R = 2 f16 1.07-1.11x, bf16 1.025-1.084x (1.06-1.09x / 0.98-1.02x built
// beside scratch forms); x reloaded for each row (FMA memory operands, no spills) at R = 2 / 4 / 8
// bf16 0.74-1.01x, f16 0.76-1.06x; R = 4 (more spills) bf16 0.81-0.88x; S = 5 / 4 / 3 with x in
// registers 0.81-1.04x. At 2 threads (the lead, quiet, wall) f16 0.97-1.02x, bf16 0.95-0.99x: the
// default on Zen 4 for f16 only (decode_tuning.h half_long_runs 1).

// The M = 1 stream kernel for rows [n0, n1): several streams a thread, with the software prefetch
// hint of set_gemv_streams_prefetch (the same bits).
// BF16 / F16 rows of K >= kHalfLongK: gemv_half_long_streams() streams (6, or else 4); on 6
// streams without software prefetch, gemv_half_long_runs() picks the two-step runs.
template <DType DT>
EMO_T512 void gemv_rows(const Args& a, const float* x, int64_t n0, int64_t n1) {
  const bool six = DT != DType::F32 && a.K >= kHalfLongK && gemv_half_long_streams() == 6;
  with_prefetch_hint(gemv_streams_prefetch(), [&](auto hint) {
    if constexpr (DT != DType::F32) {  // no 6-stream f32 instance
      if (six) {
        // 6 streams in runs of two steps a row (gemv_half_long_runs, without software prefetch)
        if constexpr (decltype(hint)::value < 0) {
          const int runs = gemv_half_long_runs();
          if (runs == 2 || (runs == 1 && DT == DType::F16)) {
            gemv_streams<DT, -1, 6, 2>(a, x, n0, n1);
            return;
          }
        }
        gemv_streams<DT, decltype(hint)::value, 6>(a, x, n0, n1);
        return;
      }
    }
    gemv_streams<DT, decltype(hint)::value>(a, x, n0, n1);
  });
}

// The single-stream GEMV's rows over the pool in guided chunks (base/thread_pool.h
// parallel_guided: remaining / (4 nth) rows a grab, at most the fixed chunk of the other kernels
// and rounded up to kGuidedMinRows), so the threads finish within a few rows of each other (fixed
// chunks left one thread waiting for about half of the other's last chunk: part of the "handoff
// gemm" rows of the decode profile); by default (gemv_ranges(), gemm_internal.h) one contiguous
// range of rows per thread with stealing instead (parallel_ranges: one stream per core). Rows are
// independent: the split changes no output bit. owner_keep: parallel_ranges' (the M = 1 rows:
// gemv_streams_owner_keep(), decode_tuning.h stream_owner_keep: a thread's first claim all of its
// range but that many steps of kGuidedMinRows, so its streams run the range's length once; -1,
// the batched rows' (M >= 2), claims of at most max_rows).
constexpr int64_t kGuidedMinRows = 8;
void guided_rows(ThreadPool* pool, bool parallel, int64_t n, int64_t max_rows,
                 const std::function<void(int64_t, int64_t)>& fn, int64_t owner_keep = -1) {
  if (!parallel) return fn(0, n);
  if (gemv_ranges())  // one run per thread
    return parallel_ranges(pool, n, kGuidedMinRows, max_rows, fn, gemv_range_owner(), owner_keep);
  parallel_guided(pool, n, kGuidedMinRows, max_rows, fn);
}

void small_m(const Args& a) {
  const int64_t chunk = small_m_chunk(a);
  const bool stream = a.huge_pages;  // huge pages: the stream kernels (4 KiB pages: the multi-row ones)
  if (a.wtype == DType::BF16 && a.M == 1) {
    float* xeo = static_cast<float*>(scratch(2, size_t((a.K + 31) / 32 * 32) * 4));
    bf16_reorder_x(a.X, a.K, xeo);
    if (stream)
      guided_rows(a.pool, a.N * a.K >= kParallelMinMacs, a.N, chunk,
                  [&](int64_t n0, int64_t n1) { gemv_rows<DType::BF16>(a, xeo, n0, n1); }, gemv_streams_owner_keep());
    else
      parallel_chunks(a.pool, a.N * a.K >= kParallelMinMacs, a.N, chunk,
                      [&](int64_t n0, int64_t n1) { bf16_gemv_range(a, xeo, n0, n1); });
    return;
  }
  if (a.wtype == DType::F16 && a.M == 1 && stream) {
    guided_rows(a.pool, a.N * a.K >= kParallelMinMacs, a.N, chunk,
                [&](int64_t n0, int64_t n1) { gemv_rows<DType::F16>(a, a.X, n0, n1); }, gemv_streams_owner_keep());
    return;
  }
  // F32 at M = 1 on huge pages: the same stream kernels, dot_block's sums (same bits as below);
  // set_gemv_stream_f32(false): dot_block's 4-row kernel as before
  if (a.wtype == DType::F32 && a.M == 1 && stream && gemv_stream_f32()) {
    guided_rows(a.pool, a.N * a.K >= kParallelMinMacs, a.N, chunk,
                [&](int64_t n0, int64_t n1) { gemv_rows<DType::F32>(a, a.X, n0, n1); }, gemv_streams_owner_keep());
    return;
  }
  // 2 <= M <= 8 on huge pages (batched decode): the multi-stream dot kernels over one run of rows
  // per thread, as the M = 1 GEMV (same bits as the plain dot kernels below)
  if (a.M >= 2 && a.huge_pages && (a.wtype == DType::BF16 || a.wtype == DType::F16)) {
    const DotRangeFn fn = pick_dot_streams(a.wtype, a.M);
    guided_rows(a.pool, a.M * a.N * a.K >= kParallelMinMacs, a.N, chunk,
                [&](int64_t n0, int64_t n1) { fn(a, a.X, a.Y, n0, n1); });
    return;
  }
  const DotRangeFn fn = pick_dot(a.wtype, a.M);
  parallel_chunks(a.pool, a.M * a.N * a.K >= kParallelMinMacs, a.N, chunk,
                  [&](int64_t n0, int64_t n1) { fn(a, a.X, a.Y, n0, n1); });
}

// ------------------------------------------------------------------ q8_0 activations, VNNI (M <= 8)
// X rounded to q8_0 (QX, gemm_internal.h). Two weight blocks per zmm; vpdpbusd multiplies
// unsigned weight bytes with signed activation bytes into 16 int32 lanes (4 products each),
// starting from the precomputed correction lanes neg = -off * sum(x of the lane):
//   q8_0: unsigned w ^ 0x80 = w + 128, off = 128: sum (w+128) x - 128 x = sum w x
//   q4_0: nibbles 0..15 unsigned,       off = 8:  sum n x - 8 x = sum (n-8) x
// Exact in int32 (|lane| <= 4*255*127). Lanes 0-7 belong to the first block, 8-15 to the second;
// they are converted and scaled by d_w * d_x (per block) in f32 with one FMA.
#define EMO_T512V __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))

// Software prefetch distance along each weight row. With it, and one row at a time for M = 1
// (a single sequential stream rather than R interleaved short ones), gemv reaches ~90-95% of
// the single-core streaming read rate on Zen 4 (R = 4 without prefetch: ~50-60%).
constexpr int kQ8PrefetchBytes = 2048;

template <DType DT, int R, int MB>
EMO_T512V void q8v_block(const QX& q, const uint8_t* W, size_t rb, const float* bias, float* Y, int64_t ldy,
                         int64_t n0, int64_t nb) {
  constexpr size_t BS = DT == DType::Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
  const uint8_t* wr[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) wr[r] = W + size_t(n0 + r) * rb;
  __m512 acc[R][MB];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_setzero_ps();
  const __m512i pidx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    __m512i w[R];
    __m512 dw[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = wr[r] + size_t(b) * BS;
      _mm_prefetch(reinterpret_cast<const char*>(p + kQ8PrefetchBytes), _MM_HINT_T0);
      if constexpr (DT == DType::Q8_0) {
        const __m512i v = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2))),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 + BS)), 1);
        w[r] = _mm512_xor_si512(v, _mm512_set1_epi8(char(0x80)));
      } else {
        // 128-bit lanes [q0, q0, q1, q1], lanes 1 and 3 shifted: [lo0, hi0, lo1, hi1], i.e. the
        // nibbles of elements 0-31 of each block in order
        const __m512i v = _mm512_mask_broadcast_i32x4(
            _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2))), __mmask16(0xFF00),
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 + BS)));
        w[r] = _mm512_and_si512(_mm512_mask_srli_epi16(v, __mmask32(0xFF00FF00u), v, 4), _mm512_set1_epi8(0x0F));
      }
      // both fp16 scales into words 0, 1 with vector loads (no detour through a GPR)
      const __m128i h = _mm_unpacklo_epi16(_mm_cvtsi32_si128(rd32(p)), _mm_cvtsi32_si128(rd32(p + BS)));
      dw[r] = _mm512_permutexvar_ps(pidx, _mm512_castps128_ps512(_mm_cvtph_ps(h)));
    }
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      const __m512i x = _mm512_loadu_si512(q.qs + m * q.ldq + b * kQK);
      const __m512i ng = _mm512_loadu_si512(q.neg + m * q.ldd + b * 8);
      const __m512 dx = _mm512_loadu_ps(q.dxe + m * q.ldd + b * 8);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
        acc[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(ng, w[r], x)), _mm512_mul_ps(dw[r], dx),
                                    acc[r][m]);
    }
  }
  if (b < nb) {  // odd block count: the last block on 256-bit lanes
    __m256i w[R];
    __m256 dw[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = wr[r] + size_t(b) * BS;
      if constexpr (DT == DType::Q8_0) {
        w[r] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2)),
                                _mm256_set1_epi8(char(0x80)));
      } else {
        const __m128i qq = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2));
        w[r] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qq, 4), qq), _mm256_set1_epi8(0x0F));
      }
      dw[r] = _mm256_set1_ps(_cvtsh_ss(rd16(p)));
    }
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.qs + m * q.ldq + b * kQK));
      const __m256i ng = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.neg + m * q.ldd + b * 8));
      const __m256 dx = _mm256_loadu_ps(q.dxe + m * q.ldd + b * 8);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_dpbusd_epi32(ng, w[r], x)), _mm256_mul_ps(dw[r], dx));
        acc[r][m] = _mm512_add_ps(acc[r][m], _mm512_insertf32x8(_mm512_setzero_ps(), t, 0));
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      float v = _mm512_reduce_add_ps(acc[r][m]);
      if (bias) v += bias[n0 + r];
      Y[m * ldy + n0 + r] = v;
    }
}

template <DType DT, int MB>
EMO_T512V void q8v_range(const Args& a, const QX& q, int64_t n0, int64_t n1) {
  constexpr int R = MB == 1 ? 1 : MB <= 4 ? 4 : 2;  // M = 1: memory-bound; M > 1: share x loads
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  const int64_t nb = a.K / kQK;
  int64_t n = n0;
  for (; n + R <= n1; n += R) q8v_block<DT, R, MB>(q, W, a.row_bytes, a.bias, a.Y, a.ldy, n, nb);
  for (; n < n1; ++n) q8v_block<DT, 1, MB>(q, W, a.row_bytes, a.bias, a.Y, a.ldy, n, nb);
}

// ------------------------------------------------------------------ Q4_0, M = 1, four blocks a step
// The decode GEMV over standard-layout q4_0 rows (one activation row; the repacked layout of
// gemv_repacked.cpp is faster where the weights can be repacked at load): one weight row at a time
// (a sequential stream with a software prefetch), four blocks (72 bytes) per step on two
// independent accumulators, so neither the fp32 add chain (one accumulator and two blocks a step
// stalled at ~35-60% of the read bandwidth) nor the instruction count bounds the stream. The four
// fp16 block scales come from one vector load and a word permute that repeats each 8 times (one
// per int32 lane of its 32-byte block dot product). Same products and per-block f32 scaling as
// q8v_block; only the f32 summation order differs. Q8_0 at M = 1 runs q8v_block (sharing the
// activation loads between 2 or 4 rows, or a Q8_0 variant of this kernel, measured no faster).
EMO_T512V EMO_AI void q4v_m1_step(const uint8_t* p, const __m512i sidx, __m512i* w01, __m512i* w23, __m512* dw01,
                                  __m512* dw23) {
  constexpr size_t BS = sizeof(BlockQ4_0);
  _mm_prefetch(reinterpret_cast<const char*>(p + kQ8PrefetchBytes), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(p + kQ8PrefetchBytes + 64), _MM_HINT_T0);
  // scales at bytes 0, 18, 36, 54: one load
  const __m512i hs = _mm512_permutexvar_epi16(sidx, _mm512_loadu_si512(p));
  *dw01 = _mm512_cvtph_ps(_mm512_castsi512_si256(hs));
  *dw23 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(hs, 1));
  // 128-bit lanes [q0, q0, q1, q1], lanes 1 and 3 shifted: the nibbles of elements 0-31 in order
  const __m512i m0f = _mm512_set1_epi8(0x0F);
  const __m512i v01 = _mm512_mask_broadcast_i32x4(
      _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2))), __mmask16(0xFF00),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 + BS)));
  const __m512i v23 = _mm512_mask_broadcast_i32x4(
      _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 + 2 * BS))), __mmask16(0xFF00),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 + 3 * BS)));
  *w01 = _mm512_and_si512(_mm512_mask_srli_epi16(v01, __mmask32(0xFF00FF00u), v01, 4), m0f);
  *w23 = _mm512_and_si512(_mm512_mask_srli_epi16(v23, __mmask32(0xFF00FF00u), v23, 4), m0f);
}

// y[0] = row W . x (+ bias[0]).
EMO_T512V void q4v_row_m1(const QX& q, const uint8_t* W, int64_t nb, const float* bias, float* y) {
  constexpr size_t BS = sizeof(BlockQ4_0);
  // word index of each lane's scale: block j's fp16 scale is the word at byte j * BS (BS even)
  constexpr int W1 = int(BS / 2), W2 = int(2 * BS / 2), W3 = int(3 * BS / 2);
  const __m512i sidx = _mm512_setr_epi32(0, 0, 0, 0, (W1 << 16) | W1, (W1 << 16) | W1, (W1 << 16) | W1,
                                         (W1 << 16) | W1, (W2 << 16) | W2, (W2 << 16) | W2, (W2 << 16) | W2,
                                         (W2 << 16) | W2, (W3 << 16) | W3, (W3 << 16) | W3, (W3 << 16) | W3,
                                         (W3 << 16) | W3);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) {
    const __m512i x01 = _mm512_loadu_si512(q.qs + b * kQK), x23 = _mm512_loadu_si512(q.qs + b * kQK + 64);
    const __m512i n01 = _mm512_loadu_si512(q.neg + b * 8), n23 = _mm512_loadu_si512(q.neg + b * 8 + 16);
    const __m512 d01 = _mm512_loadu_ps(q.dxe + b * 8), d23 = _mm512_loadu_ps(q.dxe + b * 8 + 16);
    __m512i w01, w23;
    __m512 dw01, dw23;
    q4v_m1_step(W + size_t(b) * BS, sidx, &w01, &w23, &dw01, &dw23);
    acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(n01, w01, x01)), _mm512_mul_ps(dw01, d01), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(n23, w23, x23)), _mm512_mul_ps(dw23, d23), acc1);
  }
  __m256 tail = _mm256_setzero_ps();
  for (; b < nb; ++b) {  // the last nb % 4 blocks, one at a time on 256-bit lanes
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.qs + b * kQK));
    const __m256i ng = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.neg + b * 8));
    const __m256 dx = _mm256_loadu_ps(q.dxe + b * 8);
    const uint8_t* p = W + size_t(b) * BS;
    const __m128i qq = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2));
    const __m256i w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qq, 4), qq), _mm256_set1_epi8(0x0F));
    const __m256 s = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(rd16(p))), dx);
    tail = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_dpbusd_epi32(ng, w, x)), s, tail);
  }
  float v = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_insertf32x8(_mm512_setzero_ps(), tail, 0)));
  if (bias) v += bias[0];
  y[0] = v;
}

EMO_T512V void q4v_range_m1(const Args& a, const QX& q, int64_t n0, int64_t n1) {
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  const int64_t nb = a.K / kQK;
  for (int64_t n = n0; n < n1; ++n) q4v_row_m1(q, W + size_t(n) * a.row_bytes, nb, a.bias ? a.bias + n : nullptr, a.Y + n);
}

using Q8RangeFn = void (*)(const Args&, const QX&, int64_t, int64_t);

Q8RangeFn pick_q8v(bool q8, int64_t mb) {
  return with_small_m(mb, [q8](auto m) -> Q8RangeFn {
    return q8 ? q8v_range<DType::Q8_0, decltype(m)::value> : q8v_range<DType::Q4_0, decltype(m)::value>;
  });
}

// ------------------------------------------------------------------ packed GEMM (M > 8)
constexpr int MR = 6;        // rows of X per microkernel
constexpr int NR = 64;       // weight rows (output columns) per panel: 4 zmm
constexpr int64_t KC = 256;  // k per block (multiple of 32) - f32 path
constexpr int64_t NC = 512;  // weight rows per L2 block (multiple of NR): KC*NC*4 = 512 KiB
constexpr int64_t KCP = 256; // k pairs per block - bf16 dot path (512 elements), legacy blocking
// BF16 dot path, default blocking: when K <= 2 * KCP_DEEP the whole of K is one block, so each
// 6x64 tile of Y is written once from registers instead of being reloaded and stored again per k
// block (1.06-1.13x the KCP x NC blocking at K = 1024 and 4096, one thread, Zen 5), and
// the W block is narrowed to WBLOCK_BYTES (ncb = WBLOCK_BYTES / (4 kc) rows, >= NR) to stay in
// L2. Longer K keeps KCP x NC: at K = 11008, 2048-pair blocks and whole-K blocks (64 rows) were
// no faster (0.89x / 1.02x, best of 5 with ~10% noise). A k block of up to 2048 pairs sums in f32
// from zero (the f32 tolerance of test_gemm at K = 4096 holds).
// Measured and removed (session 17, bench/README): K 5632 in one block (its 64-row W panel, 720
// KiB, fills L2: 1.00-1.10x the time of 256-pair blocks) and K 4096 in two even blocks of 1024
// pairs (neutral once oneDNN's spinning OpenMP threads no longer disturbed the row after them).
// Refuted in session 18: packing the next W block during the current block's tiles (into a second
// buffer, a few 16 x 16 groups before each tile, same words) to hide gemm()'s W packing (~5% of
// the down projection's time at 1 thread against pre-packed panels): 0.92-0.99x at K 5632 and
// 11008 and CLIP's K 1024 (1 thread, process CPU time; prefetch into L1 or L2, full or halved W
// blocks): the pack's loads and transposes slowed the tiles more than they saved.
constexpr int64_t KCP_DEEP = 2048;
constexpr int64_t WBLOCK_BYTES = 512 << 10;

// Packs W rows [n0, n0+nv) x elements [k0, k0+kc) as f32 panels of NR columns:
// out[p*kc*NR + k*NR + j] = W[n0 + p*NR + j][k0 + k] (zero for j >= nv).
template <DType DT>
EMO_T512 void pack_w_f32(const uint8_t* W, size_t rb, int64_t n0, int64_t nv, int64_t k0, int64_t kc,
                         float* out) {
  for (int64_t p = 0; p * NR < nv; ++p) {
    float* op = out + p * kc * NR;
    for (int64_t kk = 0; kk < kc; kk += 16) {
      const int64_t c = std::min<int64_t>(16, kc - kk);
      for (int g = 0; g < NR / 16; ++g) {
        const int64_t r0 = p * NR + g * 16;
        __m512 v[16];
        if (r0 >= nv) {
          for (int64_t t = 0; t < c; ++t) _mm512_store_ps(op + (kk + t) * NR + g * 16, _mm512_setzero_ps());
          continue;
        }
        const int64_t kpf = k0 + kk + 64;  // prefetch these rows 64 elements ahead
        const size_t pf = DT == DType::F32 ? size_t(kpf) * 4
                          : DT == DType::Q8_0 ? size_t(kpf / kQK) * sizeof(BlockQ8_0)
                          : DT == DType::Q4_0 ? size_t(kpf / kQK) * sizeof(BlockQ4_0)
                                              : size_t(kpf) * 2;
        const bool do_pf = kpf < k0 + kc;
#pragma GCC unroll 16
        for (int t = 0; t < 16; ++t) {
          if (r0 + t < nv) {
            const uint8_t* row = W + size_t(n0 + r0 + t) * rb;
            if (do_pf) _mm_prefetch(reinterpret_cast<const char*>(row + pf), _MM_HINT_T0);
            v[t] = load16<DT>(row, k0 + kk, c);
          } else {
            v[t] = _mm512_setzero_ps();
          }
        }
        transpose16_ps(v);
        if (c == 16) {
#pragma GCC unroll 16
          for (int t = 0; t < 16; ++t) _mm512_store_ps(op + (kk + t) * NR + g * 16, v[t]);
        } else {
          for (int64_t t = 0; t < c; ++t) _mm512_store_ps(op + (kk + t) * NR + g * 16, v[t]);
        }
      }
    }
  }
}

// pack_w_bf16pairs's loop order: each group of 16 rows walks all of its k range before the next
// group (default), instead of all 64 rows of a panel 16 pairs at a time. The old order read 64
// rows (K * 2 bytes apart: 8 KiB at K = 4096, the same L1 set) a line at a time; 16 row streams
// at a time are what the hardware prefetchers follow. Packing was ~20% of the kernel's samples in
// gemm() at M = 512, N = K = 4096; gemm() 1.03-1.06x at the LLaMA-7B and CLIP shapes (one thread,
// interleaved, loaded Zen 5). The packed words are the same.

// Rows p*NR + g*16 .. +15, pairs qq .. qq+15 (fewer past kcp) of pack_w_bf16pairs' panel p.
EMO_T512 EMO_AI void pack_w_bf16pairs_group(const uint8_t* W, size_t rb, int64_t n0, int64_t nv, int64_t q0,
                                            int64_t kcp, int64_t K, uint32_t* out, int64_t p, int g, int64_t qq) {
  uint32_t* op = out + p * kcp * NR;
  const int64_t c = std::min<int64_t>(16, kcp - qq);
  const int64_t e0 = 2 * (q0 + qq);  // first element
  const int64_t ce = std::min<int64_t>(32, K - e0);
  const __mmask32 em = ce >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << ce) - 1);
  const int64_t r0 = p * NR + g * 16;
  __m512 v[16];
#pragma GCC unroll 16
  for (int t = 0; t < 16; ++t)
    v[t] = (r0 + t < nv) ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(em, W + size_t(n0 + r0 + t) * rb + 2 * e0))
                         : _mm512_setzero_ps();
  transpose16_ps(v);
  for (int64_t t = 0; t < c; ++t) _mm512_store_ps(reinterpret_cast<float*>(op + (qq + t) * NR + g * 16), v[t]);
}

// BF16 weights as (k, k+1) pairs: out[p*kcp*NR + q*NR + j] = 32-bit word of W[n0+p*NR+j] at
// elements 2*(q0+q), 2*(q0+q)+1 (zero past K or past nv rows).
EMO_T512 void pack_w_bf16pairs(const uint8_t* W, size_t rb, int64_t n0, int64_t nv, int64_t q0, int64_t kcp,
                               int64_t K, uint32_t* out) {
  for (int64_t p = 0; p * NR < nv; ++p)
    for (int g = 0; g < NR / 16; ++g)
      for (int64_t qq = 0; qq < kcp; qq += 16) pack_w_bf16pairs_group(W, rb, n0, nv, q0, kcp, K, out, p, g, qq);
}

// 6x64 f32 microkernel (four zmm a row): Y[i, 0:nr] (=|+=) sum_k xp[k][i] * wp[k][0:64], i < mr.
// xp: the X micro-panel interleaved, xp[k*MR + i] (rows >= mr are zero).
EMO_T512 void kern_f32(int64_t kc, const float* xp, const float* wp, float* y, int64_t ldy, int mr,
                       int64_t nr, const float* bias, bool first) {
  f32_tile<simd::F32x16, MR, NR / 16, 2>(kc, XPackedPanel<MR>{xp}, wp, y, ldy, mr, nr, bias, first);
}

// 6x64 bf16-pair microkernel (vdpbf16ps): kern_bf16_6x64 in gemm_kern_bf16_avx512.h, shared
// with the backward input-gradient GEMM.
static_assert(MR == kBf16MR && NR == kBf16NR, "the bf16 panels are packed for kern_bf16_6x64");

// Same for BF16 pairs: out[(p*kp + q)*MR + i] = bf16(x[2q]) | bf16(x[2q+1]) << 16.
EMO_T512BF void pack_x_bf16(const float* X, int64_t ldx, int64_t rows, int64_t K, int64_t p0, int64_t p1,
                            uint32_t* out) {
  const int64_t kp = (K + 1) / 2;
  for (int64_t p = p0; p < p1; ++p)
    pack_x6_bf16pairs(X + p * MR * ldx, ldx, int(std::min<int64_t>(MR, rows - p * MR)), K, out + p * kp * MR);
}

// BF16 pairs k block by k block (kcb pairs a block): block pc (a multiple of kcb, kc = min(kcb,
// kp - pc)) at out + pc * npm * MR, its panel p at + p * kc * MR (pack_x_bf16's words of those
// pairs): the micro-panels of one k block follow one another.
EMO_T512BF void pack_x_bf16_kblocks(const float* X, int64_t ldx, int64_t rows, int64_t K, int64_t kcb, int64_t npm,
                                    int64_t p0, int64_t p1, uint32_t* out) {
  const int64_t kp = (K + 1) / 2;
  for (int64_t p = p0; p < p1; ++p)
    for (int64_t pc = 0; pc < kp; pc += kcb) {
      const int64_t kc = std::min(kcb, kp - pc);
      pack_x6_bf16pairs(X + p * MR * ldx + 2 * pc, ldx, int(std::min<int64_t>(MR, rows - p * MR)),
                        std::min(2 * kc, K - 2 * pc), out + pc * npm * MR + p * kc * MR);
    }
}

// Byte offset of element k (a block boundary for quantised types) within a weight row.
inline size_t elem_offset(DType t, int64_t k) {
  switch (t) {
    case DType::F32: return size_t(k) * 4;
    case DType::F16:
    case DType::BF16: return size_t(k) * 2;
    case DType::Q8_0: return size_t(k / kQK) * sizeof(BlockQ8_0);
    default: return size_t(k / kQK) * sizeof(BlockQ4_0);
  }
}

// The next W block is prefetched into L2 in slices while the current one is multiplied, so
// reading W from memory overlaps the arithmetic instead of stalling the packing.
struct BlockPrefetcher {
  const uint8_t* base = nullptr;  // first byte of the block's first row
  size_t rb = 0, span = 0;        // row stride, bytes per row in the block
  int64_t rows = 0, lines_per_row = 0, total = 0, done = 0;
  int64_t r_ = 0, l_ = 0;         // line `done`: row r_, line l_ of it
  void start(const uint8_t* W, size_t row_bytes, DType t, int64_t n0, int64_t nrows, int64_t k0, int64_t k1) {
    const size_t b0 = elem_offset(t, k0), b1 = elem_offset(t, k1);
    base = W + size_t(n0) * row_bytes + b0;
    rb = row_bytes;
    span = b1 - b0;
    rows = nrows;
    lines_per_row = int64_t((span + 63) / 64);
    total = rows * lines_per_row;
    done = 0;
    r_ = l_ = 0;
  }
  // A block of pre-packed panels: `rows` spans of `span` bytes, `stride` bytes apart.
  void start_spans(const uint8_t* first, size_t stride, size_t span_bytes, int64_t nrows) {
    base = first;
    rb = stride;
    span = span_bytes;
    rows = nrows;
    lines_per_row = int64_t((span + 63) / 64);
    total = rows * lines_per_row;
    done = 0;
    r_ = l_ = 0;
  }
  // Issues the next ~total/slices line prefetches. The row and line of each come from counters:
  // with a 64-bit division per line, compute_range (the loop issuing them) took 2.6-3.7% of the
  // samples of a bf16 GEMM on panels (M = 577, N = 4096, K = 1024, one thread, Zen 5), 1.6% now.
  void step(int64_t slices) {
    if (done >= total) return;
    const int64_t n = std::min(total - done, (total + slices - 1) / slices);
    for (int64_t i = 0; i < n; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(base + size_t(r_) * rb + size_t(l_) * 64), _MM_HINT_T1);
      if (++l_ == lines_per_row) l_ = 0, ++r_;
    }
    done += n;
  }
};

// A row-major W (gemm(), gemm_huge_pages) with K in several k blocks has its next block prefetched
// into L2 (T1) during this block's tiles. Packing it straight from memory instead (session 22:
// `perf record` put ~5% of gemm()'s samples on those prefetches, 1.1B down, M = 512) read 1.02-1.04x
// only at load 10-16; at load 3-4 (one thread, process CPU time, interleaved) 1.1B down 1.017 /
// 0.994 (gemm() / 2 MiB pages) and LLaMA-7B down 0.995 / 0.998 by median round, within the rows'
// own spread: removed (bench/README).

// The vdpbf16ps GEMM's long-K driver (K in several blocks: K > 2 * KCP_DEEP, e.g. LLaMA-7B's
// down projection, K = 11008 in 22 blocks of 256 pairs; or the legacy blocking):
// - the X micro-panel of a row panel is kc * MR words (6 KiB) taken from a different place for
//   each row panel (whole-K panels, kunits * MR words apart), and its first lines came from L3 or
//   memory at each row panel's first tile: compute_range prefetches the next row panel's
//   micro-panel into L1, a share of its lines before each tile of the current one (1.04-1.06x on
//   panels at M = 512, N = 4096, K = 11008: one thread, process CPU time, 40 alternated calls,
//   Zen 5 under load ~11; no change at K = 1024, where X stays in L2). With K in one block the
//   micro-panels follow one another in memory (the hardware prefetchers' stream) and are larger
//   than is useful in L1: not done there (-4% at K = 4096 when prefetched whole);
// - gemm_packed packs X in chunks of up to 24 MiB (as the f32 driver), see there.
// Same bits as the previous driver (its switch EMOLLM_BF16_GEMM_LONG_K is gone).

// A last row panel of mr < MR rows (M = 577: 96 panels of 6 and one of 1; M = 512: one of 2)
// runs kern_bf16_6x64 computing only its mr rows (MRC = mr): the 6-row tile did 6 rows' work for
// it, ~0.9% of a CLIP M = 577 product. Each row's sums are the same whatever MRC (its own
// accumulators, the same order): same bits.

// Prefetches (into L1) the rows of a tile of Y: rows x cols floats from y, ldy apart.
EMO_AI void prefetch_tile(const float* y, int64_t ldy, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* r = y + i * ldy;
    for (int64_t c = 0; c < cols; c += 16) _mm_prefetch(reinterpret_cast<const char*>(r + c), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(r + cols - 1), _MM_HINT_T0);  // an unaligned row's last line
  }
}

// The vdpbf16ps GEMM with K in several blocks (K > 2 * KCP_DEEP: LLaMA-7B's down projection,
// K = 11008 in 22 blocks of 256 pairs; or the legacy blocking), X packed k block by k block
// (pack_x_bf16_kblocks) and each W panel's tiles run down the row panels (jp outer, m0 inner)
// instead of each row panel across the W block's panels: a k block's X micro-panels are one
// contiguous stream (M x kc x 4 bytes, 512 KiB at M = 512) that the hardware prefetchers follow
// from L2, a W panel (kc x 64 pairs, 64 KiB) is reused by all the row panels back to back, and
// the next tile's partial sums in Y (swept once a k block, from L3) are prefetched. The X
// micro-panel prefetch of the long-K driver is not needed there (it stays for
// gemm_bf16_panels_multi, whose X is whole-K panels). The k blocks, and so every output's sum,
// are those of the previous order (whole-K X panels, m0 outer): same bits, 7B down 1.03-1.05x.

// The microkernel's X prefetch (kern_bf16_6x64's kPfX, measured there): X_PF_PAIRS pairs (768
// bytes) ahead in the long-K driver's k-block order, where each tile reads a different micro-panel
// (down at K 5632 / 11008: 1.02-1.035x at load 3). One whole-K block (K <= 4096) keeps it off: CLIP
// fc2 and 7B gate at K 4096 0.99-1.01x at load 3 (1.03-1.14x only under load), CLIP K 1024 0.97-1.00x.
// Same bits.
constexpr int64_t X_PF_PAIRS = 32;

// pf_x: kern_bf16_6x64's X prefetch distance in words (0: none); full 6-row tiles only.
EMO_T512BF void bf16_tile(int rows, int64_t kc, const uint32_t* xp, const uint32_t* wp, float* y, int64_t ldy,
                                  int mr, int64_t nr, const float* bias, bool first, int64_t pf_x = 0) {
  if (pf_x && rows == MR)
    return kern_bf16_6x64<false, 4, MR, false, true>(kc, xp, wp, y, ldy, mr, nr, bias, first, 0, nullptr, nullptr,
                                                      pf_x);
  switch (rows) {
    case 1: return kern_bf16_6x64<false, 4, 1>(kc, xp, wp, y, ldy, mr, nr, bias, first);
    case 2: return kern_bf16_6x64<false, 4, 2>(kc, xp, wp, y, ldy, mr, nr, bias, first);
    case 3: return kern_bf16_6x64<false, 4, 3>(kc, xp, wp, y, ldy, mr, nr, bias, first);
    case 4: return kern_bf16_6x64<false, 4, 4>(kc, xp, wp, y, ldy, mr, nr, bias, first);
    case 5: return kern_bf16_6x64<false, 4, 5>(kc, xp, wp, y, ldy, mr, nr, bias, first);
    default: return kern_bf16_6x64(kc, xp, wp, y, ldy, mr, nr, bias, first);
  }
}

// xp: the packed X chunk (panel-major, see pack_x_*); m_begin is a multiple of MR.
// kcb: k units (f32 elements or bf16 pairs) per block; ncb: weight rows per block (multiple of NR).
// prepacked (BF only): a.W holds bf16_pack_panels' panels (word (p * kunits + q) * NR + j), read
// in place instead of packing each block into scratch; n_begin is then a multiple of NR.
// The vdpbf16ps GEMM only (BF): f32 weights take compute_range_f32 below.
template <DType DT, bool BF>
void compute_range(const Args& a, const void* xp, int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end,
                   int64_t kcb, int64_t ncb, bool prepacked, int64_t xnpm = 0) {
  static_assert(BF, "compute_range: the bf16-pair GEMM (f32 products: compute_range_f32)");
  using XT = typename std::conditional<BF, uint32_t, float>::type;
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  const int64_t K = a.K;
  const int64_t kunits = BF ? (K + 1) / 2 : K;
  void* wpack = prepacked ? nullptr : scratch(0, size_t(kcb) * ncb * 4);
  const XT* X = static_cast<const XT*>(xp);
  const uint32_t* panels = static_cast<const uint32_t*>(a.W);
  const size_t panel_bytes = size_t(kunits) * NR * 4;  // prepacked: one panel, all of K
  const bool x_prefetch = BF && kcb < kunits && xnpm == 0;
  for (int64_t jc = n_begin; jc < n_end; jc += ncb) {
    const int64_t nc = std::min(ncb, n_end - jc);
    for (int64_t pc = 0; pc < kunits; pc += kcb) {
      const int64_t kc = std::min(kcb, kunits - pc);
      const uint32_t* wblk = nullptr;  // BF: panel jp of this block at wblk + jp * pstride
      int64_t pstride = kc * NR;
      if constexpr (BF) {
        if (prepacked) {
          wblk = panels + ((jc / NR) * kunits + pc) * NR;
          pstride = kunits * NR;
        } else {
          pack_w_bf16pairs(W, a.row_bytes, jc, nc, pc, kc, K, static_cast<uint32_t*>(wpack));
          wblk = static_cast<const uint32_t*>(wpack);
        }
      }
      const bool first = pc == 0;
      // the block after this one: next k block of these rows, else first k block of the next rows
      BlockPrefetcher pf;
      const int64_t elem_per_unit = BF ? 2 : 1;
      if (prepacked) {
        auto span_of = [&](int64_t j0, int64_t rows, int64_t p0, int64_t units) {
          pf.start_spans(W + (size_t(j0 / NR) * kunits + p0) * NR * 4, panel_bytes, size_t(units) * NR * 4,
                         (rows + NR - 1) / NR);
        };
        if (pc + kc < kunits)
          span_of(jc, nc, pc + kc, std::min(kcb, kunits - pc - kc));
        else if (jc + ncb < n_end)
          span_of(jc + ncb, std::min(ncb, n_end - jc - ncb), 0, std::min(kcb, kunits));
      } else if (pc + kc < kunits) {
        pf.start(W, a.row_bytes, a.wtype, jc, nc, (pc + kc) * elem_per_unit,
                 std::min(K, (pc + kc + kcb) * elem_per_unit));
      } else if (jc + ncb < n_end) {
        pf.start(W, a.row_bytes, a.wtype, jc + ncb, std::min(ncb, n_end - jc - ncb), 0, std::min(K, kcb * elem_per_unit));
      }
      const int64_t slices = (m_end - m_begin + MR - 1) / MR;
      const int64_t npn = (nc + NR - 1) / NR;
      const int64_t x_lines = (kc * MR * 4 + 63) / 64, x_per_tile = (x_lines + npn - 1) / npn;
      if constexpr (BF) {
        if (xnpm) {  // X in k blocks: a W panel's tiles down the row panels
          const int64_t pf_x = X_PF_PAIRS * MR;  // each tile reads another micro-panel
          for (int64_t jp = 0; jp * NR < nc; ++jp) {
            const int64_t ncols = std::min<int64_t>(NR, nc - jp * NR);
            const XT* xblk = X + pc * xnpm * MR;
            for (int64_t m0 = m_begin; m0 < m_end; m0 += MR) {
              const int mr = int(std::min<int64_t>(MR, m_end - m0));
              pf.step(slices * npn);
              if (!first && m0 + MR < m_end)  // the next tile's partial sums, from L3 or memory
                prefetch_tile(a.Y + (m0 + MR) * a.ldy + jc + jp * NR, a.ldy, std::min<int64_t>(MR, m_end - m0 - MR),
                              ncols);
              bf16_tile(mr, kc, xblk + (m0 / MR) * kc * MR, wblk + jp * pstride,
                        a.Y + m0 * a.ldy + jc + jp * NR, a.ldy, mr, ncols, a.bias ? a.bias + jc + jp * NR : nullptr,
                        first, pf_x);
            }
          }
          continue;
        }
      }
      for (int64_t m0 = m_begin; m0 < m_end; m0 += MR) {
        const int mr = int(std::min<int64_t>(MR, m_end - m0));
        const XT* xpanel = X + ((m0 / MR) * kunits + pc) * MR;
        pf.step(slices);
        for (int64_t jp = 0; jp * NR < nc; ++jp) {
          if (x_prefetch && m0 + MR < m_end) {  // the next row panel's micro-panel, this tile's share
            const char* xn = reinterpret_cast<const char*>(xpanel + kunits * MR);
            for (int64_t l = jp * x_per_tile; l < std::min(x_lines, (jp + 1) * x_per_tile); ++l)
              _mm_prefetch(xn + 64 * l, _MM_HINT_T0);
          }
          float* y = a.Y + m0 * a.ldy + jc + jp * NR;
          const float* bias = a.bias ? a.bias + jc + jp * NR : nullptr;
          bf16_tile(mr, kc, xpanel, wblk + jp * pstride, y, a.ldy, mr, nc - jp * NR,
                    bias, first);
        }
      }
    }
  }
}

// ---- the f32 packed GEMM's driver (wtype F32 / F16 / BF16 without vdpbf16ps / Q8_0 / Q4_0)
// Same 6x64 tiles, KC x NC blocks and summation order as compute_range<DT, false>, so the same
// bits; what differs is where X lies and what is fetched ahead. On Zen 5 the tile runs at ~99% of
// the FMA peak with its operands in L1 but the GEMM ran at 65-69%: a tile's first X lines and the
// Y rows it adds its partial sums to (after a pass over the whole block, in L3 or memory) arrived
// late. (The previous driver, X packed over the whole of K and compute_range's f32 tiles, and
// its switch EMOLLM_F32_GEMM_BLOCKED=0 are gone: this one 1.02-1.17x on 18 shapes, bench/README
// 2026-12-05 01:45.)

// X rows [0, rows) packed k block by k block: block k0 (a multiple of kcb, kc = min(kcb, K - k0))
// at out + k0 * npm * MR, its panel p at + p * kc * MR, out[... + k * MR + i] = row p*MR+i,
// element k0+k (zero rows past `rows`). The tiles of one k block read one contiguous stream, which
// the hardware prefetchers follow (whole-K panels put K * MR floats between tiles).
void pack_x_f32_kblocks(const float* X, int64_t ldx, int64_t rows, int64_t K, int64_t kcb, int64_t npm, int64_t p0,
                        int64_t p1, float* out) {
  for (int64_t p = p0; p < p1; ++p)
    for (int i = 0; i < MR; ++i) {
      const float* s = p * MR + i < rows ? X + (p * MR + i) * ldx : nullptr;
      for (int64_t k0 = 0; k0 < K; k0 += kcb) {
        const int64_t kc = std::min(kcb, K - k0);
        float* o = out + k0 * npm * MR + p * kc * MR + i;
        if (s) {
          for (int64_t k = 0; k < kc; ++k) o[k * MR] = s[k0 + k];
        } else {
          for (int64_t k = 0; k < kc; ++k) o[k * MR] = 0.0f;
        }
      }
    }
}

// compute_range<DT, false> over pack_x_f32_kblocks' X (npm: panels in the chunk; m_begin a
// multiple of MR). Before each tile it prefetches the next tile's Y rows (when they hold a partial
// sum) and, before a row panel's first tile, the next panel's first X lines.
template <DType DT>
void compute_range_f32(const Args& a, const float* xp, int64_t npm, int64_t m_begin, int64_t m_end, int64_t n_begin,
                       int64_t n_end) {
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  const int64_t K = a.K;
  float* wpack = static_cast<float*>(scratch(0, size_t(KC) * NC * 4));
  for (int64_t jc = n_begin; jc < n_end; jc += NC) {
    const int64_t nc = std::min(NC, n_end - jc), npn = (nc + NR - 1) / NR;
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc);
      pack_w_f32<DT>(W, a.row_bytes, jc, nc, pc, kc, wpack);
      const bool first = pc == 0;
      BlockPrefetcher pf;  // the next W block into L2, as compute_range
      if (pc + kc < K)
        pf.start(W, a.row_bytes, a.wtype, jc, nc, pc + kc, std::min(K, pc + kc + KC));
      else if (jc + NC < n_end)
        pf.start(W, a.row_bytes, a.wtype, jc + NC, std::min(NC, n_end - jc - NC), 0, std::min(K, KC));
      const float* xblk = xp + pc * npm * MR;
      const int64_t slices = (m_end - m_begin + MR - 1) / MR;
      for (int64_t m0 = m_begin; m0 < m_end; m0 += MR) {
        const int mr = int(std::min<int64_t>(MR, m_end - m0));
        const float* xpanel = xblk + (m0 / MR) * kc * MR;
        pf.step(slices);
        for (int64_t jp = 0; jp < npn; ++jp) {
          int64_t nm = m0, nj = jp + 1;  // the next tile
          if (nj == npn) nj = 0, nm = m0 + MR;
          if (nm < m_end) {
            if (!first)
              prefetch_tile(a.Y + nm * a.ldy + jc + nj * NR, a.ldy, std::min<int64_t>(MR, m_end - nm),
                            std::min<int64_t>(NR, nc - nj * NR));
            if (nj == 0) {
              const float* xn = xblk + (nm / MR) * kc * MR;
              for (int64_t l = 0; l < std::min<int64_t>(8, kc * MR / 16); ++l)
                _mm_prefetch(reinterpret_cast<const char*>(xn + 16 * l), _MM_HINT_T0);
            }
          }
          float* y = a.Y + m0 * a.ldy + jc + jp * NR;
          const float* bias = a.bias ? a.bias + jc + jp * NR : nullptr;
          kern_f32(kc, xpanel, wpack + jp * kc * NR, y, a.ldy, mr, nc - jp * NR, bias, first);
        }
      }
    }
  }
}

// set_bf16_gemm_legacy_blocking (gemm_internal.h)
std::atomic<bool> g_bf16_legacy_blocking{false};

// The vdpbf16ps GEMM's blocks for K = 2 * kunits (gemm_packed and bf16_multi take the same, so
// the same sums): kcb pairs a k block, ncb weight rows a W block. K up to KCP_DEEP pairs: the
// whole of K in one block, a W block of WBLOCK_BYTES; longer K (or the legacy blocking): KCP x NC.
void bf16_blocking(int64_t kunits, int64_t* kcb, int64_t* ncb) {
  *kcb = KCP, *ncb = NC;
  if (g_bf16_legacy_blocking.load(std::memory_order_relaxed) || kunits > KCP_DEEP) return;
  *kcb = kunits;
  *ncb = std::clamp<int64_t>((WBLOCK_BYTES / (*kcb * 4)) / NR * NR, NR, NC);
}

// The vdpbf16ps GEMM's split of the weight panels between threads: split_packed_gemm's chunk
// (NC = 512 rows when N >= 4 * NC * threads) left TinyLlama-1.1B's gate / up (N = 5632: 11
// chunks of 512) at 6 chunks for one thread and 5 for the other, 0.92x of an even split at 2
// threads. balanced_panel_chunk picks, between half and 1.5x that chunk, the one whose dynamic
// schedule leaves the busiest thread the fewest panels (the largest on a tie: each chunk's first W
// block comes without the next-block prefetch). The split by row panels of X (few weight panels)
// gets the same choice: a 1.1B layer's k / v (N = 256) at M = 512 ran 9 chunks of 10 row panels,
// 5 for one thread and 4 for the other (and each chunk packs all of W). A chunk only says
// which thread computes which rows: every output's sum is the same, same bits.

}  // namespace

// Panels per chunk for npn panels over nth threads, around c0 panels a chunk (see above).
int64_t balanced_panel_chunk(int64_t npn, int nth, int64_t c0) {
  int64_t best = c0, best_load = INT64_MAX;
  for (int64_t c = std::max<int64_t>(1, (c0 + 1) / 2); c <= c0 + c0 / 2; ++c) {
    const int64_t chunks = (npn + c - 1) / c;
    const int64_t load = (chunks + nth - 1) / nth * c;  // the busiest thread's panels, at most
    if (load <= best_load) best = c, best_load = load;
  }
  return best;
}

namespace {

// split_packed_gemm for the vdpbf16ps GEMM: its split by weight panels with a balanced chunk
// (one thread: split_packed_gemm itself).
template <typename Fn>
void split_bf16_gemm(ThreadPool* pool, int64_t mcur, int64_t N, int64_t K, Fn&& fn) {
  const int64_t npn = (N + NR - 1) / NR, npm = (mcur + MR - 1) / MR;
  const int nth = pool ? pool->size() : 1;
  if (nth <= 1) return split_packed_gemm(pool, mcur, N, K, MR, NR, NC, fn);
  const bool par = mcur * N * K >= kParallelMinMacs;
  if (npn >= 4 * nth || npn >= npm) {
    const int64_t c0 = (N >= 4 * NC * nth) ? NC / NR : std::max<int64_t>(1, npn / (4 * nth));
    const int64_t chunk = balanced_panel_chunk(npn, nth, c0) * NR;
    parallel_chunks(pool, par, N, chunk, [&](int64_t n0, int64_t n1) { fn(int64_t(0), mcur, n0, n1); });
  } else {  // by row panels of X (few weight panels: a 1.1B layer's k / v, N = 256): the same choice
    const int64_t chunk = balanced_panel_chunk(npm, nth, std::max<int64_t>(1, npm / (4 * nth))) * MR;
    parallel_chunks(pool, par, mcur, chunk, [&](int64_t r0, int64_t r1) { fn(r0, r1, int64_t(0), N); });
  }
}

// ---- gemm() on a row-major BF16 W with K in several k blocks, W read in place (no W pack)
// The long-K driver above packs each W block into pairs before its tiles: on the down
// projections (K 5632 / 11008, M = 512) that pack was the whole gap to oneDNN (gemm() 0.96-0.98x,
// the same tiles on pre-packed panels 1.02-1.04x). Here the operands swap roles: X is packed
// once, transposed into W's panel layout (X^T panels of 64 rows: pack_w_bf16pairs on X rounded
// to bf16 as pack_x6_bf16pairs rounds it), and each 6 x 64 tile broadcasts the pairs of 6 W rows
// straight from the row-major matrix (kern_bf16_6x64's kRowsX: row i's pair q at xp[i*ldxr + q])
// against an X^T panel, accumulating Y^T (W rows x X rows) in a scratch that is transposed into Y
// after each W block's last k block. Every output's sum is the same: the same k blocks (KCP
// pairs, the first from zero, each added to the previous sum), the same pairs in the same order,
// and vdpbf16ps's lane op (c + a.lo * b.lo + a.hi * b.hi) does not depend on which operand is
// broadcast: same bits as the packed driver. Taken for K even (4-byte W pairs), no bias (the
// packed driver starts the first block from the bias; a decoder's down projection has none).
constexpr int64_t WB_ROWS = 6;        // W rows a tile (kern_bf16_6x64's MR)
constexpr int64_t WB_NCB = 84 * 6;    // W rows a block (504 x 256 pairs x 4 = 504 KiB, in L2)

// On since session 23 (quiet: packed W / this 1.01-1.04x on the down projections at 1 and 2
// threads, bench_kernels longk; a 1.1B bf16 prefill 0.995 / 1.009x); off (set_bf16_gemm_wbcast,
// tests and A/B tools) packs W a block at a time, the same bits.
std::atomic<bool> bf16_wbcast_on{true};

// X rows [0, rows) rounded to bf16 (row-major, ldb elements a row) and then packed as
// pack_w_bf16pairs packs W: panel p (64 rows) of k block pc at out + pc * mp + p * kc * 64.
EMO_T512BF void pack_xt_bf16(const float* X, int64_t ldx, int64_t rows, int64_t K, int64_t mp, int64_t p0,
                             int64_t p1, uint32_t* out) {
  const int64_t kp = K / 2;
  uint16_t* xb = static_cast<uint16_t*>(scratch(1, size_t(NR) * K * 2));  // one panel's rows, this thread's
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t r0 = p * NR, nv = std::min<int64_t>(NR, rows - r0);
    for (int64_t r = r0; r < r0 + nv; ++r)
      for (int64_t k = 0; k < K; k += 32) {
        const float* s = X + r * ldx + k;
        const __m512 lo = _mm512_maskz_loadu_ps(simd::tail_mask16(K - k), s);
        const __m512 hi = _mm512_maskz_loadu_ps(simd::tail_mask16(K - k - 16), s + 16);
        const __mmask32 m = K - k >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << (K - k)) - 1);
        _mm512_mask_storeu_epi16(xb + (r - r0) * K + k, m, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      }
    const uint8_t* xr = reinterpret_cast<const uint8_t*>(xb);
    for (int64_t pc = 0; pc < kp; pc += KCP) {
      const int64_t kc = std::min(KCP, kp - pc);
      pack_w_bf16pairs(xr, size_t(K) * 2, 0, nv, pc, kc, K, out + pc * mp + p * kc * NR);
    }
  }
}

EMO_T512BF void wb_tile(int64_t rows, int64_t kc, const uint32_t* w, int64_t ldw, const uint32_t* xt, float* yt,
                        int64_t ldyt, int64_t nr, bool first) {
  switch (rows) {
    case 1: return kern_bf16_6x64<true, 4, 1>(kc, w, xt, yt, ldyt, 1, nr, nullptr, first, ldw);
    case 2: return kern_bf16_6x64<true, 4, 2>(kc, w, xt, yt, ldyt, 2, nr, nullptr, first, ldw);
    case 3: return kern_bf16_6x64<true, 4, 3>(kc, w, xt, yt, ldyt, 3, nr, nullptr, first, ldw);
    case 4: return kern_bf16_6x64<true, 4, 4>(kc, w, xt, yt, ldyt, 4, nr, nullptr, first, ldw);
    case 5: return kern_bf16_6x64<true, 4, 5>(kc, w, xt, yt, ldyt, 5, nr, nullptr, first, ldw);
    default: return kern_bf16_6x64<true, 4, 6>(kc, w, xt, yt, ldyt, 6, nr, nullptr, first, ldw);
  }
}

// Y[0:M, n0:n1) of a.Y from the packed X^T (mp words a pair: M rounded up to 64). Per W block
// (WB_NCB rows, KCP pairs: in L2, the next one prefetched into L2 as the packed driver does) the
// X^T panels are the outer loop and the block's 6-row tiles the inner one, so a 64 KiB X^T panel
// is reused by every tile back to back. (W tiles outer, each tile's 6 W rows across all X^T panels,
// with or without the next tile's rows prefetched, W blocks of 96 or 504 rows: 0.93-1.03x the
// packed driver at 1 thread, load 8-10; this order 1.003-1.036.)
EMO_T512BF void wbcast_range(const Args& a, const uint32_t* xt, int64_t mp, int64_t n0, int64_t n1) {
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  const int64_t kp = a.K / 2, M = a.M, ldw = int64_t(a.row_bytes / 4);
  const int64_t ldyt = mp, npm = mp / NR;
  float* yt = static_cast<float*>(scratch(0, size_t(WB_NCB) * mp * 4));
  for (int64_t jc = n0; jc < n1; jc += WB_NCB) {
    const int64_t nc = std::min(WB_NCB, n1 - jc);
    const int64_t tiles = (nc + WB_ROWS - 1) / WB_ROWS;
    for (int64_t pc = 0; pc < kp; pc += KCP) {
      const int64_t kc = std::min(KCP, kp - pc);
      const bool first = pc == 0;
      BlockPrefetcher pf;  // the next W block into L2
      if (pc + kc < kp)
        pf.start(W, a.row_bytes, DType::BF16, jc, nc, 2 * (pc + kc), std::min(a.K, 2 * (pc + kc + KCP)));
      else if (jc + WB_NCB < n1)
        pf.start(W, a.row_bytes, DType::BF16, jc + WB_NCB, std::min(WB_NCB, n1 - jc - WB_NCB), 0,
                 std::min(a.K, 2 * KCP));
      const uint32_t* xblk = xt + pc * mp;
      for (int64_t p = 0; p < npm; ++p) {
        pf.step(npm);
        for (int64_t t = 0; t < tiles; ++t) {
          const int64_t r0 = t * WB_ROWS, rows = std::min<int64_t>(WB_ROWS, nc - r0);
          const uint32_t* w = reinterpret_cast<const uint32_t*>(W + size_t(jc + r0) * a.row_bytes) + pc;
          float* y = yt + r0 * ldyt + p * NR;
          if (!first) prefetch_tile(y, ldyt, rows, NR);
          wb_tile(rows, kc, w, ldw, xblk + p * kc * NR, y, ldyt, std::min<int64_t>(NR, M - p * NR), first);
        }
      }
    }
    // Y^T block -> Y[:, jc : jc + nc), 16 x 16 at a time
    for (int64_t m0 = 0; m0 < M; m0 += 16)
      for (int64_t r0 = 0; r0 < nc; r0 += 16) {
        const int64_t rr = std::min<int64_t>(16, nc - r0), mm = std::min<int64_t>(16, M - m0);
        __m512 v[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i)
          v[i] = i < rr ? _mm512_load_ps(yt + (r0 + i) * ldyt + m0) : _mm512_setzero_ps();
        transpose16_ps(v);
        const __mmask16 mk = simd::tail_mask16(rr);
        for (int64_t j = 0; j < mm; ++j) _mm512_mask_storeu_ps(a.Y + (m0 + j) * a.ldy + jc + r0, mk, v[j]);
      }
  }
}

void gemm_bf16_wbcast(const Args& a) {
  // X in chunks of at most ~24 MiB packed (as the packed driver), a multiple of NR rows
  const int64_t mc_max = std::max<int64_t>(NR, ((int64_t(24) << 20) / (a.K * 2)) / NR * NR);
  const int64_t chunks = (a.M + mc_max - 1) / mc_max;
  const int64_t mc = ((a.M + chunks - 1) / chunks + NR - 1) / NR * NR;
  const int nth = a.pool ? a.pool->size() : 1;
  const int64_t tiles = (a.N + WB_ROWS - 1) / WB_ROWS;
  const int64_t c0 = std::max<int64_t>(1, std::min<int64_t>(WB_NCB / WB_ROWS, tiles / (4 * nth)));
  const int64_t chunk = balanced_panel_chunk(tiles, nth, c0) * WB_ROWS;
  for (int64_t m0 = 0; m0 < a.M; m0 += mc) {
    Args s = a;
    s.M = std::min(mc, a.M - m0);
    s.X = a.X + m0 * a.ldx;
    s.Y = a.Y + m0 * a.ldy;
    const int64_t mp = (s.M + NR - 1) / NR * NR, npm = mp / NR;
    uint32_t* xt = static_cast<uint32_t*>(scratch(2, size_t(mp) * (a.K / 2) * 4));
    parallel_pieces(a.pool, s.M * a.K >= (1 << 15), npm,
                    [&](int64_t p0, int64_t p1) { pack_xt_bf16(s.X, a.ldx, s.M, a.K, mp, p0, p1, xt); });
    parallel_chunks(a.pool, s.M * a.N * a.K >= kParallelMinMacs, a.N, chunk,
                    [&](int64_t n0, int64_t n1) { wbcast_range(s, xt, mp, n0, n1); });
  }
}

// Packs X in chunks of rows (at most ~8 MiB each), then splits the M x N work between threads:
// by weight-row panels when there are enough of them (each thread packs only its own part of
// W), else by row panels of X.
template <DType DT, bool BF>
void gemm_packed(const Args& a, bool prepacked = false) {
  const int64_t kunits = BF ? (a.K + 1) / 2 : a.K;
  constexpr bool f32_blocked = !BF;  // the f32 driver: X one k block at a time (compute_range_f32)
  // Chunks of at most x_budget bytes of packed X, of even size: each chunk packs all of W again,
  // so M = 784 at mc_max = 744 runs two chunks of 396 / 388 rows, not 744 and a 40-row tail.
  // Every Y element's sum is the same whichever chunk its row is in. The f32 driver reads X one k
  // block (M x KC) at a time, so its chunk need not stay in cache: 24 MiB keeps a 512-row prompt
  // in one chunk up to K = 12288 (LLaMA-7B's down projection, K = 11008, packed W once, not 3x).
  // The vdpbf16ps GEMM with K in several blocks (its long-K driver) reads X one
  // k block at a time too: 24 MiB also keeps M = 512 at K = 11008 in one chunk, so W is packed
  // once, not twice (gemm() on the row-major matrix 1.05-1.06x; panels, which pack nothing, 1.00x).
  const bool bf_long_k = BF && (kunits > KCP_DEEP || g_bf16_legacy_blocking.load(std::memory_order_relaxed));
  if (BF && !prepacked && bf16_gemm_wbcast_applies(a.K, a.bias != nullptr)) return gemm_bf16_wbcast(a);
  const int64_t x_budget = int64_t(f32_blocked || bf_long_k ? 24 : 8) << 20;
  int64_t kcb = BF ? KCP : KC, ncb = NC;
  if (BF) bf16_blocking(kunits, &kcb, &ncb);
  const bool x_kblocks = BF && kcb < kunits;
  const int64_t mc_max = std::max<int64_t>(MR, (x_budget / (kunits * 4)) / MR * MR);
  const int64_t chunks = (a.M + mc_max - 1) / mc_max;
  const int64_t mc = ((a.M + chunks - 1) / chunks + MR - 1) / MR * MR;
  for (int64_t m0 = 0; m0 < a.M; m0 += mc) {
    const int64_t mcur = std::min(mc, a.M - m0);
    const int64_t npm = (mcur + MR - 1) / MR;
    void* xp = scratch(2, size_t(npm) * MR * kunits * 4);
    const float* X = a.X + m0 * a.ldx;
    parallel_pieces(a.pool, mcur * a.K >= (1 << 15), npm, [&](int64_t p0, int64_t p1) {
      if constexpr (BF) {
        if (x_kblocks)
          pack_x_bf16_kblocks(X, a.ldx, mcur, a.K, kcb, npm, p0, p1, static_cast<uint32_t*>(xp));
        else
          pack_x_bf16(X, a.ldx, mcur, a.K, p0, p1, static_cast<uint32_t*>(xp));
      }
      else
        pack_x_f32_kblocks(X, a.ldx, mcur, a.K, KC, npm, p0, p1, static_cast<float*>(xp));
    });
    Args sub = a;
    sub.Y = a.Y + m0 * a.ldy;
    if constexpr (!BF) {
      split_packed_gemm(a.pool, mcur, a.N, a.K, MR, NR, NC, [&](int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
        compute_range_f32<DT>(sub, static_cast<const float*>(xp), npm, r0, r1, n0, n1);
      });
    } else {
      const int64_t xnpm = x_kblocks ? npm : 0;
      auto range = [kcb, ncb, prepacked, xnpm](const Args& s, const void* x, int64_t m_begin, int64_t m_end,
                                               int64_t n_begin, int64_t n_end) {
        compute_range<DT, BF>(s, x, m_begin, m_end, n_begin, n_end, kcb, ncb, prepacked, xnpm);
      };
      auto part = [&](int64_t r0, int64_t r1, int64_t n0, int64_t n1) { range(sub, xp, r0, r1, n0, n1); };
      split_bf16_gemm(a.pool, mcur, a.N, a.K, part);
    }
  }
}

}  // namespace

void gemm_q8act_avx512vnni(const Args& a) {
  const bool q8 = a.wtype == DType::Q8_0;
  const QX q = quantize_activations(a, true, q8 ? 128 : 8);
  Q8RangeFn fn = pick_q8v(q8, a.M);
  // M = 1: q4_0 on the four-blocks-a-step kernel (1.05-1.14x the two-block one on hot weights,
  // one thread, Zen 5); q8_0 stays on q8v_block, which measured the same or up to 5% faster there
  // (its 34-byte blocks give the two-block loop enough work per step).
  if (a.M == 1 && !q8 && !q8_gemv_legacy()) fn = q4v_range_m1;
  parallel_chunks(a.pool, a.M * a.N * a.K >= kParallelMinMacs, a.N, small_m_chunk(a),
                  [&](int64_t n0, int64_t n1) { fn(a, q, n0, n1); });
}

// gemv_huge_pages_multi's fused case: the outputs' rows numbered one after another, one guided
// split over all of them (a grab is cut at the outputs' edges); each row is gemv_stream's, as in
// small_m, so the bits are those of one call per output. x reordered once for BF16. F32 too
// (the f32 stream rows, dot_block's bits) while gemv_stream_f32() is on.
void gemv_stream_multi(const float* x, DType wtype, const GemvOutput* outs, int n_outs, int64_t K, ThreadPool* pool) {
  Args args[kMaxGemvOutputs];
  int64_t first[kMaxGemvOutputs + 1] = {0};
  for (int j = 0; j < n_outs; ++j) {
    args[j] = Args{x, K, outs[j].W, wtype, outs[j].bias, outs[j].y, outs[j].N, 1, outs[j].N, K, pool,
                   dtype_row_bytes(wtype, K), true};
    first[j + 1] = first[j] + outs[j].N;
  }
  const int64_t rows = first[n_outs];
  const float* xs = x;
  if (wtype == DType::BF16) {
    float* xeo = static_cast<float*>(scratch(2, size_t((K + 31) / 32 * 32) * 4));
    bf16_reorder_x(x, K, xeo);
    xs = xeo;
  }
  const int nth = pool ? pool->size() : 1;
  const int64_t chunk = std::max<int64_t>(4, (rows / (8 * nth)) / 4 * 4);
  guided_rows(pool, rows * K >= kParallelMinMacs, rows, chunk, [&](int64_t b, int64_t e) {
    for (int j = 0; j < n_outs && b < e; ++j) {
      if (b >= first[j + 1]) continue;
      const int64_t end = std::min(e, first[j + 1]);
      if (wtype == DType::BF16)
        gemv_rows<DType::BF16>(args[j], xs, b - first[j], end - first[j]);
      else if (wtype == DType::F32)
        gemv_rows<DType::F32>(args[j], xs, b - first[j], end - first[j]);
      else
        gemv_rows<DType::F16>(args[j], xs, b - first[j], end - first[j]);
      b = end;
    }
  }, gemv_streams_owner_keep());
}

void set_bf16_gemm_wbcast(bool on) { bf16_wbcast_on.store(on, std::memory_order_relaxed); }
bool bf16_gemm_wbcast() { return bf16_wbcast_on.load(std::memory_order_relaxed); }
// A row-major BF16 W's rows are dtype_row_bytes(BF16, K) = 2K bytes (every Args gemm() and the
// multi-output drivers build), so K even is what makes its pairs 4-byte aligned.
bool bf16_gemm_wbcast_applies(int64_t K, bool has_bias) {
  return bf16_wbcast_on.load(std::memory_order_relaxed) && !has_bias && K % 2 == 0 &&
         ((K + 1) / 2 > KCP_DEEP || g_bf16_legacy_blocking.load(std::memory_order_relaxed));
}
void set_bf16_gemm_legacy_blocking(bool legacy) { g_bf16_legacy_blocking.store(legacy, std::memory_order_relaxed); }
bool bf16_gemm_legacy_blocking() { return g_bf16_legacy_blocking.load(std::memory_order_relaxed); }

// ------------------------------------------------------------------ bf16 GEMM panels (kernels.h)
void bf16_pack_panels_avx512(const void* W, int64_t N, int64_t K, void* out, ThreadPool* pool) {
  const int64_t kp = (K + 1) / 2, npan = (N + NR - 1) / NR;
  const size_t rb = size_t(K) * 2;
  auto pack = [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      pack_w_bf16pairs(static_cast<const uint8_t*>(W), rb, p * NR, std::min<int64_t>(NR, N - p * NR), 0, kp, K,
                       static_cast<uint32_t*>(out) + p * kp * NR);
  };
  if (pool) pool->parallel_for(npan, 1, pack);
  else pack(0, npan);
}

// M <= kSmallMMax: gemm_bf16_panels_small_m (gemm_small_m.cpp), the panels streamed in K chunks.
void gemm_bf16_panels_avx512(const Args& a) {
  if (a.M <= kSmallMMax && small_m_panels_enabled()) return gemm_bf16_panels_small_m(&a, 1);
  gemm_packed<DType::BF16, true>(a, true);
}

// As gemm_packed<BF16, true>(a, prepacked) for each output, with the same blocks (so the same
// sums, bit for bit), but X packed once per row chunk and one split over all outputs' panels:
// chunks of panels numbered across the outputs, cut at the outputs' edges.
namespace {
// gemm_bf16_panels_multi_avx512 (prepacked: every W is bf16_pack_panels' panels) and
// gemm_bf16_rows_multi_avx512 (row-major W, packed a W block at a time as gemm() does).
void bf16_multi(const Args* outs, int n, bool prepacked) {
  const Args& a = outs[0];
  const int64_t kunits = (a.K + 1) / 2;
  const int64_t x_budget = int64_t(8) << 20;
  const int64_t mc = std::max<int64_t>(MR, (x_budget / (kunits * 4)) / MR * MR);
  int64_t first[kMaxPanelOutputs + 1] = {0};  // first global panel of each output
  for (int j = 0; j < n; ++j) first[j + 1] = first[j] + (outs[j].N + NR - 1) / NR;
  const int64_t panels = first[n];
  int64_t kcb = KCP, ncb = NC;
  bf16_blocking(kunits, &kcb, &ncb);
  const int nth = a.pool ? a.pool->size() : 1;
  for (int64_t m0 = 0; m0 < a.M; m0 += mc) {
    const int64_t mcur = std::min(mc, a.M - m0);
    const int64_t npm = (mcur + MR - 1) / MR;
    void* xp = scratch(2, size_t(npm) * MR * kunits * 4);
    const float* X = a.X + m0 * a.ldx;
    parallel_pieces(a.pool, mcur * a.K >= (1 << 15), npm, [&](int64_t p0, int64_t p1) {
      pack_x_bf16(X, a.ldx, mcur, a.K, p0, p1, static_cast<uint32_t*>(xp));
    });
    // split_packed_gemm's split by weight panels, over the panels of every output
    int64_t chunk = panels * NR >= 4 * NC * nth ? NC / NR : std::max<int64_t>(1, panels / (4 * int64_t(nth)));
    if (nth > 1) chunk = balanced_panel_chunk(panels, nth, chunk);
    int64_t macs = 0;
    for (int j = 0; j < n; ++j) macs += mcur * outs[j].N * a.K;
    parallel_chunks(a.pool, macs >= kParallelMinMacs, panels, chunk, [&](int64_t g0, int64_t g1) {
      for (int j = 0; j < n; ++j) {
        const int64_t lo = std::max(g0, first[j]), hi = std::min(g1, first[j + 1]);
        if (lo >= hi) continue;
        Args sub = outs[j];
        sub.Y = outs[j].Y + m0 * outs[j].ldy;
        compute_range<DType::BF16, true>(sub, xp, 0, mcur, (lo - first[j]) * NR, std::min(outs[j].N, (hi - first[j]) * NR),
                                         kcb, ncb, prepacked);
      }
    });
  }
}
}  // namespace

void gemm_bf16_panels_multi_avx512(const Args* outs, int n) {
  if (outs[0].M <= kSmallMMax && small_m_panels_enabled()) return gemm_bf16_panels_small_m(outs, n);
  bf16_multi(outs, n, true);
}

// K in one k block (kunits <= KCP_DEEP, not the legacy blocking): the same blocks as gemm()'s
// gemm_packed<BF16, true> for each output (kcb, ncb, X chunks of <= 8 MiB: the same sums), X
// packed once, one split over every output's panels. Longer K: gemm_packed for each output.
void gemm_bf16_rows_multi_avx512(const Args* outs, int n) {
  if ((outs[0].K + 1) / 2 > KCP_DEEP || g_bf16_legacy_blocking.load(std::memory_order_relaxed)) {
    for (int j = 0; j < n; ++j) gemm_packed<DType::BF16, true>(outs[j]);
    return;
  }
  bf16_multi(outs, n, false);
}

void gemm_avx512(const Args& a, bool bf16_dot) {
  if (a.M <= kSmallM) return small_m(a);
  switch (a.wtype) {
    case DType::F32: return gemm_packed<DType::F32, false>(a);
    case DType::F16: return gemm_packed<DType::F16, false>(a);
    case DType::BF16:
      if (bf16_dot) return gemm_packed<DType::BF16, true>(a);
      return gemm_packed<DType::BF16, false>(a);
    case DType::Q8_0: return gemm_packed<DType::Q8_0, false>(a);
    case DType::Q4_0: return gemm_packed<DType::Q4_0, false>(a);
     default: break;  // the other block formats go to gemm_quant_ext.cpp (gemm.cpp dispatches)
  }
  throw Error(ErrorCode::Internal, std::string("gemm_avx512: no kernel for weight type ") + dtype_name(a.wtype));
}

}  // namespace gemm_detail
}  // namespace emollm

#endif  // __x86_64__
