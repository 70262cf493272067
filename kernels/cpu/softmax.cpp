// Row-wise softmax (kernels.h): y = exp(x - max) / sum(exp(x - max)).
// Three passes per row: max, exp written to y while summing, scale by 1/sum. Rows are usually
// cache-resident (attention scores, logits up to a few hundred KiB), so this stays cheap.
//
// Special values follow torch exactly:
//   - -inf entries in a row with a finite max give 0;
//   - a row that is all -inf (max = -inf, x - max = NaN) comes out all NaN;
//   - a row containing +inf or NaN comes out all NaN.
// In place (y == x, ldy == ldx) is allowed.
#include "simd_math.h"  // first: see the note on GCC 12 warnings there

#include <cmath>
#include <limits>

#include "elementwise_ref.h"
#include "row_parallel.h"

#include "../../base/error.h"

namespace emollm {

namespace {
void check_softmax(int64_t ldx, int64_t ldy, int64_t rows, int64_t n) {
  EMOLLM_CHECK_ARG(rows >= 0 && n >= 0, "softmax: rows and n must be >= 0");
  EMOLLM_CHECK_ARG(rows <= 1 || (ldx >= n && ldy >= n), "softmax: leading dimension smaller than n");
}
}  // namespace

namespace ref {

void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n) {
  check_softmax(ldx, ldy, rows, n);
  if (n == 0) return;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float* yr = y + r * ldy;
    float mx = -std::numeric_limits<float>::infinity();
    bool nan = false;
    for (int64_t j = 0; j < n; ++j) {
      if (std::isnan(xr[j])) nan = true;
      if (xr[j] > mx) mx = xr[j];
    }
    if (nan) mx = std::numeric_limits<float>::quiet_NaN();
    double sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      const float e = std::exp(xr[j] - mx);
      yr[j] = e;
      sum += e;
    }
    const float inv = float(1.0 / sum);
    for (int64_t j = 0; j < n; ++j) yr[j] *= inv;
  }
}

}  // namespace ref

#if defined(__x86_64__)
namespace {

EMOLLM_TARGET_AVX512 void softmax_row_avx512(const float* x, float* y, int64_t n) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  // max (NaN handling is irrelevant: a NaN entry makes its exp, hence the sum, NaN)
  __m512 m0 = ninf, m1 = ninf;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + j));
    m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + j + 16));
  }
  for (; j < n; j += 16) {
    __mmask16 k = simd::tail_mask16(n - j);
    m0 = _mm512_max_ps(m0, _mm512_mask_loadu_ps(ninf, k, x + j));
  }
  const __m512 mx = _mm512_set1_ps(simd::hmax512_ps(_mm512_max_ps(m0, m1)));
  // exp and sum
  // f32 partial sums over chunks of 1024, flushed into f64: long rows (vocabularies) keep ~1e-7.
  double sum = 0;
  j = 0;
  while (j < n) {
    const int64_t chunk_end = (n - j > 1024) ? j + 1024 : n;
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    for (; j + 32 <= chunk_end; j += 32) {
      __m512 e0 = simd::exp512_ps(_mm512_sub_ps(_mm512_loadu_ps(x + j), mx));
      __m512 e1 = simd::exp512_ps(_mm512_sub_ps(_mm512_loadu_ps(x + j + 16), mx));
      _mm512_storeu_ps(y + j, e0);
      _mm512_storeu_ps(y + j + 16, e1);
      s0 = _mm512_add_ps(s0, e0);
      s1 = _mm512_add_ps(s1, e1);
    }
    for (; j < chunk_end; j += 16) {
      __mmask16 k = simd::tail_mask16(chunk_end - j);
      __m512 e = simd::exp512_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), mx));
      e = _mm512_maskz_mov_ps(k, e);
      _mm512_mask_storeu_ps(y + j, k, e);
      s0 = _mm512_add_ps(s0, e);
    }
    sum += double(simd::hsum512_ps(_mm512_add_ps(s0, s1)));
  }
  const __m512 inv = _mm512_set1_ps(float(1.0 / sum));
  j = 0;
  for (; j + 32 <= n; j += 32) {
    _mm512_storeu_ps(y + j, _mm512_mul_ps(_mm512_loadu_ps(y + j), inv));
    _mm512_storeu_ps(y + j + 16, _mm512_mul_ps(_mm512_loadu_ps(y + j + 16), inv));
  }
  for (; j < n; j += 16) {
    __mmask16 k = simd::tail_mask16(n - j);
    _mm512_mask_storeu_ps(y + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, y + j), inv));
  }
}

EMOLLM_TARGET_AVX2 void softmax_row_avx2(const float* x, float* y, int64_t n) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 m0 = ninf, m1 = ninf;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + j));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + j + 8));
  }
  for (; j < n; j += 8) {
    __m256i k = simd::tail_mask8(n - j);
    __m256 v = _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + j, k), _mm256_castsi256_ps(k));
    m0 = _mm256_max_ps(m0, v);
  }
  const __m256 mx = _mm256_set1_ps(simd::hmax256_ps(_mm256_max_ps(m0, m1)));
  double sum = 0;
  j = 0;
  while (j < n) {
    const int64_t chunk_end = (n - j > 512) ? j + 512 : n;
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (; j + 16 <= chunk_end; j += 16) {
      __m256 e0 = simd::exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), mx));
      __m256 e1 = simd::exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), mx));
      _mm256_storeu_ps(y + j, e0);
      _mm256_storeu_ps(y + j + 8, e1);
      s0 = _mm256_add_ps(s0, e0);
      s1 = _mm256_add_ps(s1, e1);
    }
    for (; j < chunk_end; j += 8) {
      __m256i k = simd::tail_mask8(chunk_end - j);
      __m256 e = simd::exp256_ps(_mm256_sub_ps(_mm256_maskload_ps(x + j, k), mx));
      e = _mm256_and_ps(e, _mm256_castsi256_ps(k));
      _mm256_maskstore_ps(y + j, k, e);
      s0 = _mm256_add_ps(s0, e);
    }
    sum += double(simd::hsum256_ps(_mm256_add_ps(s0, s1)));
  }
  const __m256 inv = _mm256_set1_ps(float(1.0 / sum));
  j = 0;
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(y + j), inv));
  if (j < n) {
    __m256i k = simd::tail_mask8(n - j);
    _mm256_maskstore_ps(y + j, k, _mm256_mul_ps(_mm256_maskload_ps(y + j, k), inv));
  }
}

}  // namespace
#endif

namespace {
void softmax_rows(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n) {
  const detail::EltPath path = detail::elt_path();
  if (path == detail::EltPath::Scalar) return ref::softmax(x, ldx, y, ldy, rows, n);
#if defined(__x86_64__)
  check_softmax(ldx, ldy, rows, n);
  if (n == 0) return;
  for (int64_t r = 0; r < rows; ++r) {
    if (path == detail::EltPath::Avx512) softmax_row_avx512(x + r * ldx, y + r * ldy, n);
    else softmax_row_avx2(x + r * ldx, y + r * ldy, n);
  }
#endif
}

}  // namespace

void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n, ThreadPool* pool) {
  check_softmax(ldx, ldy, rows, n);
  detail::for_rows(pool, rows, n, [&](int64_t r0, int64_t r1) {
    softmax_rows(x + r0 * ldx, ldx, y + r0 * ldy, ldy, r1 - r0, n);
  });
}

}  // namespace emollm
