// AVX2 + FMA + F16C matrix products (Isa::Avx2), compiled with function target attributes only.
//
// M <= kSmallM: dot kernels streaming each weight row once, dequantised 8 elements at a time
//   in registers, shared by all M activation rows.
// M >  kSmallM: packed, cache-blocked GEMM with a 6x16 microkernel (12 ymm accumulators);
//   W blocks (KC x NC) are dequantised to f32 panels of 16 columns while packing.
#include "gemm_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

// GCC 12 reports its own _mm512_undefined_*() helpers (inlined from immintrin.h) as uninitialised.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cstring>

namespace emollm {
namespace gemm_detail {
namespace {

#define EMO_T2 __attribute__((target("avx2,fma,f16c")))
#define EMO_AI inline __attribute__((always_inline))

inline uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

EMO_T2 EMO_AI __m256 f16_scale(const uint8_t* p) { return _mm256_set1_ps(_cvtsh_ss(rd16(p))); }

// Lane mask for c valid lanes (c may be <= 0 or >= 8).
EMO_T2 EMO_AI __m256i lane_mask(int64_t c) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int cc = int(c < 0 ? 0 : c > 8 ? 8 : c);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(cc), idx);
}

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
      const __m256i lm = lane_mask(c);
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
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_movehdup_ps(h));
      float v = _mm_cvtss_f32(h);
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

template <DType DT>
DotRangeFn pick_dot(int64_t mb) {
  switch (mb) {
    case 1: return dot_range<DT, 1>;
    case 2: return dot_range<DT, 2>;
    case 3: return dot_range<DT, 3>;
    case 4: return dot_range<DT, 4>;
    case 5: return dot_range<DT, 5>;
    case 6: return dot_range<DT, 6>;
    case 7: return dot_range<DT, 7>;
    default: return dot_range<DT, 8>;
  }
}

DotRangeFn pick_dot(DType t, int64_t mb) {
  switch (t) {
    case DType::F32: return pick_dot<DType::F32>(mb);
    case DType::F16: return pick_dot<DType::F16>(mb);
    case DType::BF16: return pick_dot<DType::BF16>(mb);
    case DType::Q8_0: return pick_dot<DType::Q8_0>(mb);
    default: return pick_dot<DType::Q4_0>(mb);
  }
}

void small_m(const Args& a) {
  const DotRangeFn fn = pick_dot(a.wtype, a.M);
  run_parallel(a.pool, a.M * a.N * a.K >= kParallelMinMacs, [&](int ith, int nth) {
    int64_t n0, n1;
    split_range(a.N, ith, nth, 4, &n0, &n1);
    if (n1 > n0) fn(a, n0, n1);
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

EMO_T2 void kern(int64_t kc, const float* const* xr, const float* wp, float* y, int64_t ldy, int mr, int64_t nr,
                 const float* bias, bool first) {
  const __m256i m0 = lane_mask(nr), m1 = lane_mask(nr - 8);
  // Each k block is summed from zero and then added to Y (blocked summation).
  __m256 c[MR][2];
  {
    const __m256 b0 = (first && bias) ? _mm256_maskload_ps(bias, m0) : _mm256_setzero_ps();
    const __m256 b1 = (first && bias) ? _mm256_maskload_ps(bias + 8, m1) : _mm256_setzero_ps();
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      c[i][0] = b0;
      c[i][1] = b1;
    }
  }
  const float* x0 = xr[0];
  const float* x1 = xr[1];
  const float* x2 = xr[2];
  const float* x3 = xr[3];
  const float* x4 = xr[4];
  const float* x5 = xr[5];
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(wp + k * NR), b1 = _mm256_load_ps(wp + k * NR + 8);
    __m256 a;
#define EMO_ROW(i, xi)                         \
  a = _mm256_broadcast_ss(xi + k);             \
  c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);   \
  c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
    EMO_ROW(0, x0) EMO_ROW(1, x1) EMO_ROW(2, x2) EMO_ROW(3, x3) EMO_ROW(4, x4) EMO_ROW(5, x5)
#undef EMO_ROW
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
    if (i < mr) {
      if (!first) {
        c[i][0] = _mm256_add_ps(c[i][0], _mm256_maskload_ps(y + i * ldy, m0));
        c[i][1] = _mm256_add_ps(c[i][1], _mm256_maskload_ps(y + i * ldy + 8, m1));
      }
      _mm256_maskstore_ps(y + i * ldy, m0, c[i][0]);
      _mm256_maskstore_ps(y + i * ldy + 8, m1, c[i][1]);
    }
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

void gemm_avx2(const Args& a) {
  if (a.M <= kSmallM) return small_m(a);
  switch (a.wtype) {
    case DType::F32: return gemm_packed<DType::F32>(a);
    case DType::F16: return gemm_packed<DType::F16>(a);
    case DType::BF16: return gemm_packed<DType::BF16>(a);
    case DType::Q8_0: return gemm_packed<DType::Q8_0>(a);
    case DType::Q4_0: return gemm_packed<DType::Q4_0>(a);
  }
}

}  // namespace gemm_detail
}  // namespace emollm

#endif  // __x86_64__
