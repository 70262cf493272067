// AVX2 + FMA + F16C matrix products (Isa::Avx2), compiled with function target attributes only.
//
// M <= kSmallM: dot kernels streaming each weight row once, dequantised 8 elements at a time
//   in registers, shared by all M activation rows.
// M >  kSmallM: packed, cache-blocked GEMM with a 6x16 microkernel (12 ymm accumulators);
//   W blocks (KC x NC) are dequantised to f32 panels of 16 columns while packing.
#include "../../base/error.h"
#include "gemm_internal.h"
#include "gemm_x86_common.h"

#if defined(__x86_64__)
#include <immintrin.h>

// GCC 12 reports its own _mm512_undefined_*() helpers (inlined from immintrin.h) as uninitialised.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cstring>
#include <string>

#include "simd_math.h"
#include "simd_vec.h"

// The packed GEMM's f32 microkernel template, compiled for this file's target (gemm_f32_tile.h).
#define EMOLLM_F32_TILE_TARGET EMOLLM_TARGET_AVX2
#include "gemm_f32_tile.h"

namespace emollm {
namespace gemm_detail {
namespace {

#define EMO_T2 __attribute__((target("avx2,fma,f16c")))
#define EMO_AI inline __attribute__((always_inline))

EMO_T2 EMO_AI __m256 f16_scale(const uint8_t* p) { return _mm256_set1_ps(_cvtsh_ss(rd16(p))); }

// 8 elements at k (k % 8 == 0, all in range).
template <DType DT>
EMO_T2 EMO_AI __m256 load8(const uint8_t* row, int64_t k) {
  if constexpr (DT == DType::F32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + k);
  } else if constexpr (DT == DType::F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k)));
  } else if constexpr (DT == DType::BF16) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * k))), 16));
  } else if constexpr (DT == DType::Q8_0) {
    const uint8_t* b = row + (k / kQK) * sizeof(BlockQ8_0);
    const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + (k & 24)));
    return _mm256_mul_ps(f16_scale(b), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
  } else {
    const uint8_t* b = row + (k / kQK) * sizeof(BlockQ4_0);
    const int s = int(k & 31) / 8;  // 0,1: low nibbles of bytes 0-7, 8-15; 2,3: high nibbles
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + (s & 1) * 8)));
    if (s >= 2) v = _mm256_srli_epi32(v, 4);
    v = _mm256_sub_epi32(_mm256_and_si256(v, _mm256_set1_epi32(15)), _mm256_set1_epi32(8));
    return _mm256_mul_ps(f16_scale(b), _mm256_cvtepi32_ps(v));
  }
}

// Up to 8 plain-type (F32/F16/BF16) elements at k, c in [1, 8] valid, rest zero.
template <DType DT>
EMO_T2 EMO_AI __m256 load8_tail(const uint8_t* row, int64_t k, int64_t c) {
  alignas(32) float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < c; ++i) {
    if constexpr (DT == DType::F32) {
      std::memcpy(&t[i], row + 4 * (k + i), 4);
    } else if constexpr (DT == DType::F16) {
      t[i] = _cvtsh_ss(rd16(row + 2 * (k + i)));
    } else if constexpr (DT == DType::BF16) {
      t[i] = bf16_to_f32(rd16(row + 2 * (k + i)));
    }
  }
  return _mm256_load_ps(t);
}

// ------------------------------------------------------------------ dot kernels (M <= 8)
template <DType DT, int R, int MB>
EMO_T2 void dot_block(const float* X, int64_t ldx, const uint8_t* W, size_t rb, const float* bias, float* Y,
                      int64_t ldy, int64_t n0, int64_t K) {
  constexpr int NA = (R * MB <= 4) ? 2 : 1;
  const uint8_t* wr[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) wr[r] = W + size_t(n0 + r) * rb;
  __m256 acc[R][MB][NA];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m)
#pragma GCC unroll 2
      for (int a = 0; a < NA; ++a) acc[r][m][a] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
#pragma GCC unroll 4
    for (int s = 0; s < 4; ++s) {
      __m256 w[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) w[r] = load8<DT>(wr[r], k + 8 * s);
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) {
        const __m256 x = _mm256_loadu_ps(X + m * ldx + k + 8 * s);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r][m][s % NA] = _mm256_fmadd_ps(w[r], x, acc[r][m][s % NA]);
      }
    }
  }
  if constexpr (DT == DType::F32 || DT == DType::F16 || DT == DType::BF16) {
    for (; k < K; k += 8) {
      const int64_t c = std::min<int64_t>(8, K - k);
      __m256 w[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) w[r] = c == 8 ? load8<DT>(wr[r], k) : load8_tail<DT>(wr[r], k, c);
      const __m256i lm = simd::F32x8::mask(c);
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) {
        const __m256 x = _mm256_maskload_ps(X + m * ldx + k, lm);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) acc[r][m][0] = _mm256_fmadd_ps(w[r], x, acc[r][m][0]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      __m256 s = acc[r][m][0];
      if (NA == 2) s = _mm256_add_ps(s, acc[r][m][NA - 1]);
      float v = simd::hsum256_ps(s);
      if (bias) v += bias[n0 + r];
      Y[m * ldy + n0 + r] = v;
    }
}

template <DType DT, int MB>
EMO_T2 void dot_range(const Args& a, int64_t n0, int64_t n1) {
  constexpr int R = MB == 1 ? 4 : MB <= 4 ? 2 : 1;
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  int64_t n = n0;
  for (; n + R <= n1; n += R) dot_block<DT, R, MB>(a.X, a.ldx, W, a.row_bytes, a.bias, a.Y, a.ldy, n, a.K);
  for (; n < n1; ++n) dot_block<DT, 1, MB>(a.X, a.ldx, W, a.row_bytes, a.bias, a.Y, a.ldy, n, a.K);
}

using DotRangeFn = void (*)(const Args&, int64_t, int64_t);

DotRangeFn pick_dot(DType t, int64_t mb) {
  return with_base_dtype(t, [mb](auto dt) {
    return with_small_m(mb, [](auto m) -> DotRangeFn { return dot_range<decltype(dt)::value, decltype(m)::value>; });
  });
}

void small_m(const Args& a) {
  const DotRangeFn fn = pick_dot(a.wtype, a.M);
  run_parallel(a.pool, a.M * a.N * a.K >= kParallelMinMacs, [&](int ith, int nth) {
    int64_t n0, n1;
    split_range(a.N, ith, nth, 4, &n0, &n1);
    if (n1 > n0) fn(a, n0, n1);
  });
}

}  // namespace

// ------------------------------------------------------------------ q8_0 activations (M <= 8)
// X rows rounded to q8_0 (see QX in gemm_internal.h); per weight block an exact int32 dot
// product: q8_0 weights with ggml's sign trick (|w| unsigned x sign(w)*x signed; vpmaddubsw
// cannot saturate: |w| <= 128, |x| <= 127, 2*128*127 < 2^15),
// q4_0 nibbles (unsigned 0..15) x x then the precomputed -8*sum(x) per int32 lane. The int32
// lanes are converted and scaled by d_w * d_x in f32 (FMA), summed at the end.
// The rounding is simd_vec.h's round_away (roundf on 8 lanes, exactly).

// Vector twin of qx_quantize_row_scalar (bit-identical: same f32 operations, same rounding).
EMO_T2 void qx_quantize_row_avx2(const float* x, int64_t K, int8_t* qs, float* dxe, int32_t* neg, int off) {
  const __m256 sb = _mm256_set1_ps(-0.0f);
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < K / kQK; ++b) {
    const float* xb = x + b * kQK;
    __m256 v[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(xb + 8 * i);
    const __m256 am = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sb, v[0]), _mm256_andnot_ps(sb, v[1])),
                                    _mm256_max_ps(_mm256_andnot_ps(sb, v[2]), _mm256_andnot_ps(sb, v[3])));
    const float amax = simd::hmax256_ps(am);
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const float dx = _cvtsh_ss(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(simd::F32x8::round_away(_mm256_mul_ps(v[i], vid)));
    // packs interleave 128-bit lanes: bytes come out in 4-byte groups 0,2,4,6,1,3,5,7
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    p = _mm256_permutevar8x32_epi32(p, perm);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + b * kQK), p);
    _mm256_storeu_ps(dxe + b * 8, _mm256_set1_ps(dx));
    if (neg)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(neg + b * 8),
                          _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), p), _mm256_set1_epi16(int16_t(-off))));
  }
}

namespace {

template <DType DT, int R, int MB>
EMO_T2 void q8_block(const QX& q, const uint8_t* W, size_t rb, const float* bias, float* Y, int64_t ldy, int64_t n0,
                     int64_t nb) {
  constexpr size_t BS = DT == DType::Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
  const uint8_t* wr[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) wr[r] = W + size_t(n0 + r) * rb;
  __m256 acc[R][MB];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) acc[r][m] = _mm256_setzero_ps();
  const __m256i ones16 = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < nb; ++b) {
    __m256i w[R];
    __m256 dw[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const uint8_t* p = wr[r] + size_t(b) * BS;
      _mm_prefetch(reinterpret_cast<const char*>(p + 2048), _MM_HINT_T0);  // see gemm_avx512.cpp
      if constexpr (DT == DType::Q8_0) {
        w[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
      } else {
        const __m128i qq = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2));
        w[r] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qq, 4), qq), _mm256_set1_epi8(0x0F));
      }
      dw[r] = _mm256_cvtph_ps(_mm_set1_epi16(int16_t(rd16(p))));
    }
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.qs + m * q.ldq + b * kQK));
      const __m256 dx = _mm256_loadu_ps(q.dxe + m * q.ldd + b * 8);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        __m256i p;
        if constexpr (DT == DType::Q8_0) {
          p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w[r], w[r]), _mm256_sign_epi8(x, w[r])), ones16);
        } else {
          p = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(w[r], x), ones16),
                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.neg + m * q.ldd + b * 8)));
        }
        acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw[r], dx), acc[r][m]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      float v = simd::hsum256_ps(acc[r][m]);
      if (bias) v += bias[n0 + r];
      Y[m * ldy + n0 + r] = v;
    }
}

template <DType DT, int MB>
EMO_T2 void q8_range(const Args& a, const QX& q, int64_t n0, int64_t n1) {
  constexpr int R = MB == 1 ? 1 : MB <= 4 ? 2 : 1;  // M = 1: one sequential stream (memory-bound)
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  const int64_t nb = a.K / kQK;
  int64_t n = n0;
  for (; n + R <= n1; n += R) q8_block<DT, R, MB>(q, W, a.row_bytes, a.bias, a.Y, a.ldy, n, nb);
  for (; n < n1; ++n) q8_block<DT, 1, MB>(q, W, a.row_bytes, a.bias, a.Y, a.ldy, n, nb);
}

using Q8RangeFn = void (*)(const Args&, const QX&, int64_t, int64_t);

Q8RangeFn pick_q8(bool q8, int64_t mb) {
  return with_small_m(mb, [q8](auto m) -> Q8RangeFn {
    return q8 ? q8_range<DType::Q8_0, decltype(m)::value> : q8_range<DType::Q4_0, decltype(m)::value>;
  });
}

// ------------------------------------------------------------------ packed GEMM (M > 8)
constexpr int MR = 6;
constexpr int NR = 16;
constexpr int64_t KC = 256;
constexpr int64_t NC = 512;

// out[p*kc*NR + k*NR + j] = W[n0 + p*NR + j][k0 + k] as f32 (zero for j >= nv).
template <DType DT>
EMO_T2 void pack_w(const uint8_t* W, size_t rb, int64_t n0, int64_t nv, int64_t k0, int64_t kc, float* out) {
  const int64_t np = (nv + NR - 1) / NR;
  alignas(32) float t[8];
  for (int64_t p = 0; p < np; ++p) {
    float* op = out + p * kc * NR;
    for (int j = 0; j < NR; ++j) {
      const int64_t n = p * NR + j;
      if (n >= nv) {
        for (int64_t k = 0; k < kc; ++k) op[k * NR + j] = 0.0f;
        continue;
      }
      const uint8_t* row = W + size_t(n0 + n) * rb;
      for (int64_t k = 0; k < kc; k += 8) {
        const int64_t c = std::min<int64_t>(8, kc - k);
        __m256 v;
        if constexpr (DT == DType::F32 || DT == DType::F16 || DT == DType::BF16)
          v = c == 8 ? load8<DT>(row, k0 + k) : load8_tail<DT>(row, k0 + k, c);
        else
          v = load8<DT>(row, k0 + k);
        _mm256_store_ps(t, v);
        for (int64_t i = 0; i < c; ++i) op[(k + i) * NR + j] = t[i];
      }
    }
  }
}

// 6x16 f32 microkernel (two ymm a row), reading X through row pointers.
EMO_T2 void kern(int64_t kc, const float* const* xr, const float* wp, float* y, int64_t ldy, int mr, int64_t nr,
                 const float* bias, bool first) {
  f32_tile<simd::F32x8, MR, NR / 8, 4>(kc, XRowPointers{xr}, wp, y, ldy, mr, nr, bias, first);
}

template <DType DT>
void compute_range(const Args& a, int64_t m_begin, int64_t m_end, int64_t n_begin, int64_t n_end) {
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  const int64_t K = a.K;
  float* wpack = static_cast<float*>(scratch(0, size_t(KC) * NC * 4));
  float* zrow = static_cast<float*>(scratch(1, size_t(KC) * 4 + 64));
  std::memset(zrow, 0, size_t(KC) * 4 + 64);
  for (int64_t jc = n_begin; jc < n_end; jc += NC) {
    const int64_t nc = std::min(NC, n_end - jc);
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc);
      pack_w<DT>(W, a.row_bytes, jc, nc, pc, kc, wpack);
      for (int64_t m0 = m_begin; m0 < m_end; m0 += MR) {
        const int mr = int(std::min<int64_t>(MR, m_end - m0));
        const float* xr[MR];
        for (int i = 0; i < MR; ++i) xr[i] = i < mr ? a.X + (m0 + i) * a.ldx + pc : zrow;
        for (int64_t jp = 0; jp * NR < nc; ++jp)
          kern(kc, xr, wpack + jp * kc * NR, a.Y + m0 * a.ldy + jc + jp * NR, a.ldy, mr, nc - jp * NR,
               a.bias ? a.bias + jc + jp * NR : nullptr, pc == 0);
      }
    }
  }
}

template <DType DT>
void gemm_packed(const Args& a) {
  const int64_t npn = (a.N + NR - 1) / NR, npm = (a.M + MR - 1) / MR;
  const int nth_max = a.pool ? a.pool->size() : 1;
  const bool split_n = npn >= 4 * nth_max || npn >= npm;
  run_parallel(a.pool, a.M * a.N * a.K >= kParallelMinMacs, [&](int ith, int nth) {
    if (split_n) {
      int64_t n0, n1;
      split_range(a.N, ith, nth, NR, &n0, &n1);
      if (n1 > n0) compute_range<DT>(a, 0, a.M, n0, n1);
    } else {
      int64_t r0, r1;
      split_range(a.M, ith, nth, MR, &r0, &r1);
      if (r1 > r0) compute_range<DT>(a, r0, r1, 0, a.N);
    }
  });
}

}  // namespace

void gemm_q8act_avx2(const Args& a) {
  const bool q8 = a.wtype == DType::Q8_0;  // q8_0: sign trick, no correction lanes; q4_0: off = 8
  const QX q = quantize_activations(a, !q8, 8);
  const Q8RangeFn fn = pick_q8(q8, a.M);
  parallel_chunks(a.pool, a.M * a.N * a.K >= kParallelMinMacs, a.N, small_m_chunk(a),
                  [&](int64_t n0, int64_t n1) { fn(a, q, n0, n1); });
}

void gemm_avx2(const Args& a) {
  if (a.M <= kSmallM) return small_m(a);
  switch (a.wtype) {
    case DType::F32: return gemm_packed<DType::F32>(a);
    case DType::F16: return gemm_packed<DType::F16>(a);
    case DType::BF16: return gemm_packed<DType::BF16>(a);
    case DType::Q8_0: return gemm_packed<DType::Q8_0>(a);
    case DType::Q4_0: return gemm_packed<DType::Q4_0>(a);
     default: break;  // the other block formats go to gemm_quant_ext.cpp (gemm.cpp dispatches)
  }
  throw Error(ErrorCode::Internal, std::string("gemm_avx2: no kernel for weight type ") + dtype_name(a.wtype));
}

}  // namespace gemm_detail
}  // namespace emollm

#endif  // __x86_64__
