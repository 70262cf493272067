// Elementwise activations (kernels.h): SiLU, exact (erf) GELU, quick GELU, SwiGLU.
// In place allowed (y may equal x, gate or up). Vector paths use simd_math.h; see the accuracy
// notes there. Special values follow torch's formulas: silu(-inf) = NaN (x / (1 + e^-x) with
// -inf / inf), silu(+inf) = +inf, gelu(-inf) = NaN, gelu(+inf) = +inf, NaN in -> NaN out.
#include "simd_math.h"  // first: see the note on GCC 12 warnings there

#include <cmath>

#include "elementwise_ref.h"
#include "row_parallel.h"

#include "../../base/error.h"

namespace emollm {

// ------------------------------------------------------------------ scalar references
namespace ref {

void silu(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-x[i]));
}

void gelu_erf(const float* x, float* y, int64_t n) {
  // x * Phi(x) with Phi(x) = 0.5 erfc(-x / sqrt2), which equals 0.5 (1 + erf(x / sqrt2)) but
  // keeps its relative accuracy in the negative tail. Evaluated in double.
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    y[i] = float(v * 0.5 * std::erfc(-v * 0.70710678118654752440));
  }
}

void quick_gelu(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] / (1.0f + std::exp(-1.702f * x[i]));
}

void swiglu(const float* gate, const float* up, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    y[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

}  // namespace ref

// ------------------------------------------------------------------ vector paths
#if defined(__x86_64__)
namespace {

struct SiluOp {
  EMOLLM_TARGET_AVX512 static __m512 f512(__m512 x) { return simd::silu512_ps(x); }
  EMOLLM_TARGET_AVX2 static __m256 f256(__m256 x) { return simd::silu256_ps(x); }
};
struct GeluOp {
  EMOLLM_TARGET_AVX512 static __m512 f512(__m512 x) { return simd::gelu_erf512_ps(x); }
  EMOLLM_TARGET_AVX2 static __m256 f256(__m256 x) { return simd::gelu_erf256_ps(x); }
};
struct QuickGeluOp {
  EMOLLM_TARGET_AVX512 static __m512 f512(__m512 x) {
    __m512 e = simd::exp512_ps(_mm512_mul_ps(x, _mm512_set1_ps(-1.702f)));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
  }
  EMOLLM_TARGET_AVX2 static __m256 f256(__m256 x) {
    __m256 e = simd::exp256_ps(_mm256_mul_ps(x, _mm256_set1_ps(-1.702f)));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
  }
};

template <class Op>
EMOLLM_TARGET_AVX512 void unary_avx512(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
    _mm512_storeu_ps(y + i, Op::f512(a));
    _mm512_storeu_ps(y + i + 16, Op::f512(b));
  }
  for (; i < n; i += 16) {
    __mmask16 m = simd::tail_mask16(n - i);
    _mm512_mask_storeu_ps(y + i, m, Op::f512(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

template <class Op>
EMOLLM_TARGET_AVX2 void unary_avx2(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
    _mm256_storeu_ps(y + i, Op::f256(a));
    _mm256_storeu_ps(y + i + 8, Op::f256(b));
  }
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, Op::f256(_mm256_loadu_ps(x + i)));
  if (i < n) {  // VMASKMOVPS stores are slow on AMD: only for the last partial vector
    __m256i m = simd::tail_mask8(n - i);
    _mm256_maskstore_ps(y + i, m, Op::f256(_mm256_maskload_ps(x + i, m)));
  }
}

EMOLLM_TARGET_AVX512 void swiglu_avx512(const float* g, const float* u, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, _mm512_mul_ps(simd::silu512_ps(_mm512_loadu_ps(g + i)), _mm512_loadu_ps(u + i)));
  if (i < n) {
    __mmask16 m = simd::tail_mask16(n - i);
    __m512 v = _mm512_mul_ps(simd::silu512_ps(_mm512_maskz_loadu_ps(m, g + i)), _mm512_maskz_loadu_ps(m, u + i));
    _mm512_mask_storeu_ps(y + i, m, v);
  }
}

EMOLLM_TARGET_AVX2 void swiglu_avx2(const float* g, const float* u, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_mul_ps(simd::silu256_ps(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(u + i)));
  if (i < n) {
    __m256i m = simd::tail_mask8(n - i);
    __m256 v = _mm256_mul_ps(simd::silu256_ps(_mm256_maskload_ps(g + i, m)), _mm256_maskload_ps(u + i, m));
    _mm256_maskstore_ps(y + i, m, v);
  }
}

template <class Op>
void unary_dispatch(const float* x, float* y, int64_t n, void (*scalar)(const float*, float*, int64_t)) {
  EMOLLM_CHECK_ARG(n >= 0, "activation: n must be >= 0");
  switch (detail::elt_path()) {
    case detail::EltPath::Avx512: return unary_avx512<Op>(x, y, n);
    case detail::EltPath::Avx2: return unary_avx2<Op>(x, y, n);
    default: return scalar(x, y, n);
  }
}

void silu_serial(const float* x, float* y, int64_t n) { unary_dispatch<SiluOp>(x, y, n, ref::silu); }
void gelu_erf_serial(const float* x, float* y, int64_t n) { unary_dispatch<GeluOp>(x, y, n, ref::gelu_erf); }
void quick_gelu_serial(const float* x, float* y, int64_t n) { unary_dispatch<QuickGeluOp>(x, y, n, ref::quick_gelu); }
void swiglu_serial(const float* gate, const float* up, float* y, int64_t n) {
  switch (detail::elt_path()) {
    case detail::EltPath::Avx512: return swiglu_avx512(gate, up, y, n);
    case detail::EltPath::Avx2: return swiglu_avx2(gate, up, y, n);
    default: return ref::swiglu(gate, up, y, n);
  }
}

}  // namespace

#else  // not x86-64: scalar only

namespace {
void silu_serial(const float* x, float* y, int64_t n) { ref::silu(x, y, n); }
void gelu_erf_serial(const float* x, float* y, int64_t n) { ref::gelu_erf(x, y, n); }
void quick_gelu_serial(const float* x, float* y, int64_t n) { ref::quick_gelu(x, y, n); }
void swiglu_serial(const float* gate, const float* up, float* y, int64_t n) { ref::swiglu(gate, up, y, n); }
}  // namespace

#endif

// Elementwise: chunks start at multiples of detail::kEltAlign, so each element takes the same
// vector lane (and the same masked tail) as in one single-threaded call.
void silu(const float* x, float* y, int64_t n, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(n >= 0, "activation: n must be >= 0");
  detail::for_elements(pool, n, [&](int64_t b, int64_t e) { silu_serial(x + b, y + b, e - b); });
}
void gelu_erf(const float* x, float* y, int64_t n, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(n >= 0, "activation: n must be >= 0");
  detail::for_elements(pool, n, [&](int64_t b, int64_t e) { gelu_erf_serial(x + b, y + b, e - b); });
}
void quick_gelu(const float* x, float* y, int64_t n, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(n >= 0, "activation: n must be >= 0");
  detail::for_elements(pool, n, [&](int64_t b, int64_t e) { quick_gelu_serial(x + b, y + b, e - b); });
}
void add(const float* a, const float* b, float* y, int64_t n, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(n >= 0, "add: n must be >= 0");
  detail::for_elements(pool, n, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) y[i] = a[i] + b[i];
  });
}
void swiglu(const float* gate, const float* up, float* y, int64_t n, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(n >= 0, "swiglu: n must be >= 0");
  detail::for_elements(pool, n, [&](int64_t b, int64_t e) { swiglu_serial(gate + b, up + b, y + b, e - b); });
}

}  // namespace emollm
