// RMSNorm and LayerNorm over rows (kernels.h).
//
// Accuracy: sums are taken in f32 FMA accumulators over chunks of at most 512 (AVX-512) /
// 256 (AVX2) elements and then flushed into f64 accumulators, so a row of any length is summed
// with ~1e-7 relative error at no measurable cost (the rows are memory-bound).
// LayerNorm is two-pass: the mean m (rounded to f32), then s1 = sum(x-m) and s2 = sum((x-m)^2)
// (x - m is exact for x near m), var = (s2 - s1^2/n)/n, and the output is
// (x - m) * rstd - (s1/n) * rstd, which corrects for m's rounding: rows with a large mean
// (e.g. 1e4 + N(0,1)) keep full f32 accuracy instead of losing ulp(mean) * rstd.
// In place (y == x, ldy == ldx) is allowed: each element is read before it is written.
// LayerNorm and add_layernorm run on row blocks by default (norm_rows.inc layernorm_blocks, written
// once over simd_vec.h: the same arithmetic per row, so the same bits; set_layernorm_row_blocks(false)
// for the row-by-row per-ISA path below, and add() then layernorm() for add_layernorm).
#include "simd_math.h"  // first: see the note on GCC 12 warnings there

#include <atomic>
#include <cmath>
#include <cstring>

#include "elementwise_ref.h"
#include "norm_internal.h"
#include "row_parallel.h"
#include "simd_vec.h"

#include "../../base/error.h"

namespace emollm {

namespace {
void check_rows(int64_t ldx, int64_t ldy, int64_t rows, int64_t n) {
  EMOLLM_CHECK_ARG(rows >= 0 && n >= 0, "norm: rows and n must be >= 0");
  EMOLLM_CHECK_ARG(rows <= 1 || (ldx >= n && ldy >= n), "norm: leading dimension smaller than n");
}
}  // namespace

// ------------------------------------------------------------------ scalar references
namespace ref {

void rmsnorm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy,
             int64_t rows, int64_t n, float eps) {
  check_rows(ldx, ldy, rows, n);
  if (n == 0) return;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float* yr = y + r * ldy;
    double ss = 0;
    for (int64_t j = 0; j < n; ++j) ss += double(xr[j]) * double(xr[j]);
    const float inv = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
    for (int64_t j = 0; j < n; ++j) {
      float v = xr[j] * inv;
      yr[j] = w ? v * w[j] : v;
    }
  }
}

void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy,
               int64_t rows, int64_t n, float eps) {
  check_rows(ldx, ldy, rows, n);
  if (n == 0) return;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float* yr = y + r * ldy;
    double s = 0;
    for (int64_t j = 0; j < n; ++j) s += xr[j];
    const float meanf = float(s / double(n));
    double s1 = 0, s2 = 0;
    for (int64_t j = 0; j < n; ++j) {
      double d = double(xr[j]) - double(meanf);
      s1 += d;
      s2 += d * d;
    }
    double var = (s2 - s1 * s1 / double(n)) / double(n);
    if (var < 0) var = 0;
    const double rstd_d = 1.0 / std::sqrt(var + double(eps));
    const float rstd = float(rstd_d);
    // x - mean = (x - meanf) - (mean - meanf), mean - meanf = s1 / n.
    const float corr = float(-(s1 / double(n)) * rstd_d);
    for (int64_t j = 0; j < n; ++j) {
      float v = (xr[j] - meanf) * rstd + corr;
      if (w) v *= w[j];
      if (b) v += b[j];
      yr[j] = v;
    }
  }
}

}  // namespace ref

// ------------------------------------------------------------------ AVX-512
#if defined(__x86_64__)
namespace {

// Returns sum(x) (mode 0) or sum(x^2) (mode 1) or, for mode 2, sum(x-c) into *s1 and
// sum((x-c)^2) into the return value.
template <int kMode>
EMOLLM_TARGET_AVX512 double row_sums_avx512(const float* x, int64_t n, float cf, double* s1_out) {
  const __m512 c = _mm512_set1_ps(cf);
  __m512d q0 = _mm512_setzero_pd(), q1 = _mm512_setzero_pd();  // main sum (f64)
  __m512d l0 = _mm512_setzero_pd(), l1 = _mm512_setzero_pd();  // linear sum for mode 2
  int64_t j = 0;
  while (j < n) {
    const int64_t chunk_end = (n - j > 512) ? j + 512 : n;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(),
           a3 = _mm512_setzero_ps();
    __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
    for (; j + 64 <= chunk_end; j += 64) {
      __m512 v0 = _mm512_loadu_ps(x + j), v1 = _mm512_loadu_ps(x + j + 16);
      __m512 v2 = _mm512_loadu_ps(x + j + 32), v3 = _mm512_loadu_ps(x + j + 48);
      if (kMode == 0) {
        a0 = _mm512_add_ps(a0, v0); a1 = _mm512_add_ps(a1, v1);
        a2 = _mm512_add_ps(a2, v2); a3 = _mm512_add_ps(a3, v3);
      } else {
        if (kMode == 2) {
          v0 = _mm512_sub_ps(v0, c); v1 = _mm512_sub_ps(v1, c);
          v2 = _mm512_sub_ps(v2, c); v3 = _mm512_sub_ps(v3, c);
          b0 = _mm512_add_ps(b0, _mm512_add_ps(v0, v1));
          b1 = _mm512_add_ps(b1, _mm512_add_ps(v2, v3));
        }
        a0 = _mm512_fmadd_ps(v0, v0, a0); a1 = _mm512_fmadd_ps(v1, v1, a1);
        a2 = _mm512_fmadd_ps(v2, v2, a2); a3 = _mm512_fmadd_ps(v3, v3, a3);
      }
    }
    for (; j < chunk_end; j += 16) {
      __mmask16 m = simd::tail_mask16(chunk_end - j);
      __m512 v = _mm512_maskz_loadu_ps(m, x + j);
      if (kMode == 0) {
        a0 = _mm512_add_ps(a0, v);
      } else {
        if (kMode == 2) {
          v = _mm512_maskz_sub_ps(m, v, c);
          b0 = _mm512_add_ps(b0, v);
        }
        a0 = _mm512_fmadd_ps(v, v, a0);
      }
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    q0 = _mm512_add_pd(q0, _mm512_cvtps_pd(_mm512_castps512_ps256(s)));
    q1 = _mm512_add_pd(q1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1))));
    if (kMode == 2) {
      __m512 t = _mm512_add_ps(b0, b1);
      l0 = _mm512_add_pd(l0, _mm512_cvtps_pd(_mm512_castps512_ps256(t)));
      l1 = _mm512_add_pd(l1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(t), 1))));
    }
  }
  if (kMode == 2) *s1_out = _mm512_reduce_add_pd(_mm512_add_pd(l0, l1));
  return _mm512_reduce_add_pd(_mm512_add_pd(q0, q1));
}

// y = ((x - m) * s + c) * w + b, w/b optional.
EMOLLM_TARGET_AVX512 void scale_row_avx512(const float* x, float* y, int64_t n, float mf, float sf, float cf,
                                           const float* w, const float* b) {
  const __m512 m = _mm512_set1_ps(mf), s = _mm512_set1_ps(sf), c = _mm512_set1_ps(cf);
  for (int64_t j = 0; j < n; j += 16) {
    __mmask16 k = simd::tail_mask16(n - j);
    __m512 v = _mm512_maskz_loadu_ps(k, x + j);
    v = _mm512_fmadd_ps(_mm512_sub_ps(v, m), s, c);
    if (w && b) {  // the FMA GCC made of the multiply and add (-ffp-contract=fast), written out
      v = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(k, w + j), _mm512_maskz_loadu_ps(k, b + j));
    } else {
      if (w) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, w + j));
      if (b) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, b + j));
    }
    _mm512_mask_storeu_ps(y + j, k, v);
  }
}

EMOLLM_TARGET_AVX512 void rms_scale_row_avx512(const float* x, float* y, int64_t n, float sf, const float* w) {
  const __m512 s = _mm512_set1_ps(sf);
  int64_t j = 0;
  if (w) {
    for (; j + 32 <= n; j += 32) {
      __m512 v0 = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + j), s), _mm512_loadu_ps(w + j));
      __m512 v1 = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + j + 16), s), _mm512_loadu_ps(w + j + 16));
      _mm512_storeu_ps(y + j, v0);
      _mm512_storeu_ps(y + j + 16, v1);
    }
    for (; j < n; j += 16) {
      __mmask16 k = simd::tail_mask16(n - j);
      __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + j), s), _mm512_maskz_loadu_ps(k, w + j));
      _mm512_mask_storeu_ps(y + j, k, v);
    }
  } else {
    for (; j < n; j += 16) {
      __mmask16 k = simd::tail_mask16(n - j);
      _mm512_mask_storeu_ps(y + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + j), s));
    }
  }
}

// ------------------------------------------------------------------ AVX2

EMOLLM_TARGET_AVX2 inline double hsum_pd(__m256d v) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

template <int kMode>
EMOLLM_TARGET_AVX2 double row_sums_avx2(const float* x, int64_t n, float cf, double* s1_out) {
  const __m256 c = _mm256_set1_ps(cf);
  __m256d q0 = _mm256_setzero_pd(), q1 = _mm256_setzero_pd();
  __m256d l0 = _mm256_setzero_pd(), l1 = _mm256_setzero_pd();
  int64_t j = 0;
  while (j < n) {
    const int64_t chunk_end = (n - j > 256) ? j + 256 : n;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
           a3 = _mm256_setzero_ps();
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    for (; j + 32 <= chunk_end; j += 32) {
      __m256 v0 = _mm256_loadu_ps(x + j), v1 = _mm256_loadu_ps(x + j + 8);
      __m256 v2 = _mm256_loadu_ps(x + j + 16), v3 = _mm256_loadu_ps(x + j + 24);
      if (kMode == 0) {
        a0 = _mm256_add_ps(a0, v0); a1 = _mm256_add_ps(a1, v1);
        a2 = _mm256_add_ps(a2, v2); a3 = _mm256_add_ps(a3, v3);
      } else {
        if (kMode == 2) {
          v0 = _mm256_sub_ps(v0, c); v1 = _mm256_sub_ps(v1, c);
          v2 = _mm256_sub_ps(v2, c); v3 = _mm256_sub_ps(v3, c);
          b0 = _mm256_add_ps(b0, _mm256_add_ps(v0, v1));
          b1 = _mm256_add_ps(b1, _mm256_add_ps(v2, v3));
        }
        a0 = _mm256_fmadd_ps(v0, v0, a0); a1 = _mm256_fmadd_ps(v1, v1, a1);
        a2 = _mm256_fmadd_ps(v2, v2, a2); a3 = _mm256_fmadd_ps(v3, v3, a3);
      }
    }
    for (; j < chunk_end; j += 8) {
      __m256i m = simd::tail_mask8(chunk_end - j);
      __m256 v = _mm256_maskload_ps(x + j, m);
      if (kMode == 0) {
        a0 = _mm256_add_ps(a0, v);
      } else {
        if (kMode == 2) {
          v = _mm256_and_ps(_mm256_sub_ps(v, c), _mm256_castsi256_ps(m));
          b0 = _mm256_add_ps(b0, v);
        }
        a0 = _mm256_fmadd_ps(v, v, a0);
      }
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    q0 = _mm256_add_pd(q0, _mm256_cvtps_pd(_mm256_castps256_ps128(s)));
    q1 = _mm256_add_pd(q1, _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1)));
    if (kMode == 2) {
      __m256 t = _mm256_add_ps(b0, b1);
      l0 = _mm256_add_pd(l0, _mm256_cvtps_pd(_mm256_castps256_ps128(t)));
      l1 = _mm256_add_pd(l1, _mm256_cvtps_pd(_mm256_extractf128_ps(t, 1)));
    }
  }
  if (kMode == 2) *s1_out = hsum_pd(_mm256_add_pd(l0, l1));
  return hsum_pd(_mm256_add_pd(q0, q1));
}

EMOLLM_TARGET_AVX2 void scale_row_avx2(const float* x, float* y, int64_t n, float mf, float sf, float cf,
                                       const float* w, const float* b) {
  const __m256 m = _mm256_set1_ps(mf), s = _mm256_set1_ps(sf), c = _mm256_set1_ps(cf);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 v = _mm256_fmadd_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), m), s, c);
    if (w && b) {  // the FMA GCC made of the multiply and add (-ffp-contract=fast), written out
      v = _mm256_fmadd_ps(v, _mm256_loadu_ps(w + j), _mm256_loadu_ps(b + j));
    } else {
      if (w) v = _mm256_mul_ps(v, _mm256_loadu_ps(w + j));
      if (b) v = _mm256_add_ps(v, _mm256_loadu_ps(b + j));
    }
    _mm256_storeu_ps(y + j, v);
  }
  if (j < n) {
    __m256i k = simd::tail_mask8(n - j);
    __m256 v = _mm256_fmadd_ps(_mm256_sub_ps(_mm256_maskload_ps(x + j, k), m), s, c);
    if (w) v = _mm256_mul_ps(v, _mm256_maskload_ps(w + j, k));
    if (b) v = _mm256_add_ps(v, _mm256_maskload_ps(b + j, k));
    _mm256_maskstore_ps(y + j, k, v);
  }
}

EMOLLM_TARGET_AVX2 void rms_scale_row_avx2(const float* x, float* y, int64_t n, float sf, const float* w) {
  const __m256 s = _mm256_set1_ps(sf);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + j), s);
    if (w) v = _mm256_mul_ps(v, _mm256_loadu_ps(w + j));
    _mm256_storeu_ps(y + j, v);
  }
  if (j < n) {
    __m256i k = simd::tail_mask8(n - j);
    __m256 v = _mm256_mul_ps(_mm256_maskload_ps(x + j, k), s);
    if (w) v = _mm256_mul_ps(v, _mm256_maskload_ps(w + j, k));
    _mm256_maskstore_ps(y + j, k, v);
  }
}

// ------------------------------------------------------------------ written once over the vector type
#define EMO_NR_TARGET EMOLLM_TARGET_AVX512
#define EMO_NR_V simd::F32x16
#define EMO_NR_NS nr_avx512
#include "norm_rows.inc"
#undef EMO_NR_TARGET
#undef EMO_NR_V
#undef EMO_NR_NS
#define EMO_NR_TARGET EMOLLM_TARGET_AVX2
#define EMO_NR_V simd::F32x8
#define EMO_NR_NS nr_avx2
#include "norm_rows.inc"
#undef EMO_NR_TARGET
#undef EMO_NR_V
#undef EMO_NR_NS

}  // namespace
#endif  // __x86_64__

// ------------------------------------------------------------------ dispatch

namespace {

void rmsnorm_rows(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy,
                  int64_t rows, int64_t n, float eps) {
  const detail::EltPath path = detail::elt_path();
  if (path == detail::EltPath::Scalar) return ref::rmsnorm(x, ldx, w, y, ldy, rows, n, eps);
#if defined(__x86_64__)
  check_rows(ldx, ldy, rows, n);
  if (n == 0) return;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float* yr = y + r * ldy;
    const double ss = path == detail::EltPath::Avx512 ? row_sums_avx512<1>(xr, n, 0.0f, nullptr)
                                                      : row_sums_avx2<1>(xr, n, 0.0f, nullptr);
    const float inv = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
    if (path == detail::EltPath::Avx512) rms_scale_row_avx512(xr, yr, n, inv, w);
    else rms_scale_row_avx2(xr, yr, n, inv, w);
  }
#endif
}

void add_rmsnorm_rows(float* x, int64_t ldx, const float* d, int64_t ldd, const float* w, float* y, int64_t ldy,
                      int64_t rows, int64_t n, float eps) {
  const detail::EltPath path = detail::elt_path();
  if (path == detail::EltPath::Scalar) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < n; ++j) x[r * ldx + j] += d[r * ldd + j];
    return ref::rmsnorm(x, ldx, w, y, ldy, rows, n, eps);
  }
#if defined(__x86_64__)
  if (n == 0) return;
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * ldx;
    float* yr = y + r * ldy;
    const double ss = path == detail::EltPath::Avx512 ? nr_avx512::add_row_sumsq(xr, d + r * ldd, n)
                                                      : nr_avx2::add_row_sumsq(xr, d + r * ldd, n);
    const float inv = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
    if (path == detail::EltPath::Avx512) rms_scale_row_avx512(xr, yr, n, inv, w);
    else rms_scale_row_avx2(xr, yr, n, inv, w);
  }
#endif
}

void layernorm_rows(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy,
                    int64_t rows, int64_t n, float eps) {
  const detail::EltPath path = detail::elt_path();
  if (path == detail::EltPath::Scalar) return ref::layernorm(x, ldx, w, b, y, ldy, rows, n, eps);
#if defined(__x86_64__)
  check_rows(ldx, ldy, rows, n);
  if (n == 0) return;
  const bool v512 = path == detail::EltPath::Avx512;
  if (layernorm_row_blocks()) {
    if (v512) nr_avx512::layernorm_blocks<false>(nullptr, x, ldx, nullptr, 0, w, b, y, ldy, rows, n, eps);
    else nr_avx2::layernorm_blocks<false>(nullptr, x, ldx, nullptr, 0, w, b, y, ldy, rows, n, eps);
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float* yr = y + r * ldy;
    const double s = v512 ? row_sums_avx512<0>(xr, n, 0.0f, nullptr) : row_sums_avx2<0>(xr, n, 0.0f, nullptr);
    const float meanf = float(s / double(n));
    double s1 = 0;
    const double s2 = v512 ? row_sums_avx512<2>(xr, n, meanf, &s1) : row_sums_avx2<2>(xr, n, meanf, &s1);
    double var = (s2 - s1 * s1 / double(n)) / double(n);
    if (var < 0) var = 0;
    const double rstd_d = 1.0 / std::sqrt(var + double(eps));
    const float rstd = float(rstd_d), corr = float(-(s1 / double(n)) * rstd_d);
    if (v512) scale_row_avx512(xr, yr, n, meanf, rstd, corr, w, b);
    else scale_row_avx2(xr, yr, n, meanf, rstd, corr, w, b);
  }
#endif
}

// The fused add on the blocked path (layernorm_row_blocks); callers take add() + layernorm()
// otherwise.
void add_layernorm_rows(float* x, int64_t ldx, const float* d, int64_t ldd, const float* w, const float* b, float* y,
                        int64_t ldy, int64_t rows, int64_t n, float eps) {
#if defined(__x86_64__)
  if (n == 0) return;
  if (detail::elt_path() == detail::EltPath::Avx512)
    nr_avx512::layernorm_blocks<true>(x, x, ldx, d, ldd, w, b, y, ldy, rows, n, eps);
  else
    nr_avx2::layernorm_blocks<true>(x, x, ldx, d, ldd, w, b, y, ldy, rows, n, eps);
#else
  (void)x, (void)ldx, (void)d, (void)ldd, (void)w, (void)b, (void)y, (void)ldy, (void)rows, (void)n, (void)eps;
#endif
}

}  // namespace

// On at start; off only for the tests' reference (the row-by-row path, which the scalar level
// also runs). No environment variable: EMOLLM_LAYERNORM_ROW_BLOCKS went in session 22 (tower
// 1.05x best, 1.00x median, bench/README 2026-12-05 16:03).
static std::atomic<bool> g_layernorm_row_blocks{true};
bool layernorm_row_blocks() { return g_layernorm_row_blocks.load(std::memory_order_relaxed); }
void set_layernorm_row_blocks(bool on) { g_layernorm_row_blocks.store(on, std::memory_order_relaxed); }

void rmsnorm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy,
             int64_t rows, int64_t n, float eps, ThreadPool* pool) {
  check_rows(ldx, ldy, rows, n);
  detail::for_rows(pool, rows, n, [&](int64_t r0, int64_t r1) {
    rmsnorm_rows(x + r0 * ldx, ldx, w, y + r0 * ldy, ldy, r1 - r0, n, eps);
  });
}

void add_rmsnorm(float* x, int64_t ldx, const float* d, int64_t ldd, const float* w, float* y, int64_t ldy,
                 int64_t rows, int64_t n, float eps, ThreadPool* pool) {
  check_rows(ldx, ldy, rows, n);
  EMOLLM_CHECK_ARG(rows <= 1 || ldd >= n, "add_rmsnorm: leading dimension of d smaller than n");
  detail::for_rows(pool, rows, n, [&](int64_t r0, int64_t r1) {
    add_rmsnorm_rows(x + r0 * ldx, ldx, d + r0 * ldd, ldd, w, y + r0 * ldy, ldy, r1 - r0, n, eps);
  });
}

void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy,
               int64_t rows, int64_t n, float eps, ThreadPool* pool) {
  check_rows(ldx, ldy, rows, n);
  detail::for_rows(pool, rows, n, [&](int64_t r0, int64_t r1) {
    layernorm_rows(x + r0 * ldx, ldx, w, b, y + r0 * ldy, ldy, r1 - r0, n, eps);
  });
}

void add_layernorm(float* x, int64_t ldx, const float* d, int64_t ldd, const float* w, const float* b, float* y,
                   int64_t ldy, int64_t rows, int64_t n, float eps, ThreadPool* pool) {
  check_rows(ldx, ldy, rows, n);
  EMOLLM_CHECK_ARG(rows <= 1 || ldd >= n, "add_layernorm: leading dimension of d smaller than n");
  if (detail::elt_path() == detail::EltPath::Scalar || !layernorm_row_blocks()) {
    // the separate ops (one add over dense rows, as a caller's add() then layernorm(); row by row
    // where a leading dimension exceeds n, so that the padding is kept)
    if ((ldx == n && ldd == n) || rows <= 1) {
      add(x, d, x, rows * n, pool);
    } else {
      detail::for_rows(pool, rows, n, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) add(x + r * ldx, d + r * ldd, x + r * ldx, n, nullptr);
      });
    }
    return layernorm(x, ldx, w, b, y, ldy, rows, n, eps, pool);
  }
  detail::for_rows(pool, rows, n, [&](int64_t r0, int64_t r1) {
    add_layernorm_rows(x + r0 * ldx, ldx, d + r0 * ldd, ldd, w, b, y + r0 * ldy, ldy, r1 - r0, n, eps);
  });
}

}  // namespace emollm
