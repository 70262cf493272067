// Private SIMD helpers for the CPU kernels: target attributes, tail masks, horizontal
// reductions and vectorised transcendental functions (exp, sigmoid, erf, GELU).
//
// Usage: call these only from functions compiled with the matching target attribute:
//   EMOLLM_TARGET_AVX512 void my_kernel_avx512(...) { __m512 e = simd::exp512_ps(x); }
//   EMOLLM_TARGET_AVX2   void my_kernel_avx2(...)   { __m256 e = simd::exp256_ps(x); }
// The helpers are always_inline: calling one from a function without the target attribute is a
// compile error ("target specific option mismatch") rather than a silent illegal instruction.
// A caller whose target is a superset (e.g. adding avx512bf16) may inline them too.
//
// Accuracy (measured against double-precision libm by tests/native/test_elementwise.cpp):
//   exp*_ps      Cephes-style: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, then 2^n.
//                <= 2 ulp over the normal range; overflows to +inf above ~88.72, underflows
//                gracefully through the subnormals to +0 below ~-103.9; exp(-inf) = 0,
//                exp(+inf) = +inf, exp(NaN) = NaN.
//   sigmoid*_ps  1 / (1 + exp(-x)): relative error a few ulp; sigmoid(-inf) = 0, sigmoid(+inf) = 1.
//   erf*_ps      |x| < 1: odd Taylor series to x^21 (truncation < 2e-9);
//                |x| >= 1: 1 - erfc(|x|), erfc from the Numerical Recipes Chebyshev fit
//                t exp(-x^2 + P(t)), t = 1/(1 + |x|/2), fractional error < 1.2e-7.
//                Absolute error < 3e-7 everywhere; erf(+-inf) = +-1, erf(NaN) = NaN.
//   sincos*_pd   double sin and cos (rope angles), |a| < 2^50, ~1e-16 absolute error.
//   gelu_erf*_ps x Phi(x) with Phi from the same pieces; for x < -sqrt(2) it uses
//                0.5 erfc(|x|/sqrt2) directly, so the negative tail keeps its relative accuracy
//                (better than torch's 0.5 x (1 + erf), which cancels to 0 there).
#pragma once

#if defined(__x86_64__)
// GCC 12's intrinsic headers trip -W(maybe-)uninitialized on their own _mm*_undefined_*()
// helpers (GCC PR105593, fixed in 12.3/13); the pragma must precede the header to apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif

#include <cstdint>

#ifndef EMOLLM_TARGET_AVX512
#define EMOLLM_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#endif
#ifndef EMOLLM_TARGET_AVX512_VNNI
#define EMOLLM_TARGET_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))
#endif
#ifndef EMOLLM_TARGET_AVX2
#define EMOLLM_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

#define EMOLLM_SIMD_INLINE_512 EMOLLM_TARGET_AVX512 __attribute__((always_inline)) static inline
#define EMOLLM_SIMD_INLINE_256 EMOLLM_TARGET_AVX2 __attribute__((always_inline)) static inline

namespace emollm {
namespace simd {

// Shared constants (Cephes expf).
namespace c {
constexpr float kExpHi = 89.0f;        // exp(89) > FLT_MAX: clamping here still gives +inf
constexpr float kExpLo = -104.0f;      // exp(-104) < FLT_TRUE_MIN/2: clamping here gives +0
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;          // 9 significant bits: n * kLn2Hi is exact
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f;
constexpr float kP1 = 1.3981999507e-3f;
constexpr float kP2 = 8.3334519073e-3f;
constexpr float kP3 = 4.1665795894e-2f;
constexpr float kP4 = 1.6666665459e-1f;
constexpr float kP5 = 5.0000001201e-1f;
// erf Taylor coefficients: 2/sqrt(pi) * (-1)^k / (k! (2k+1)), k = 0..10.
constexpr float kErfT[11] = {
    1.1283791670955126f,     -0.37612638903183754f,   0.11283791670955126f,
    -0.026866170645131252f,  0.0052239776254421878f,  -0.00085483270234508529f,
    0.00012055332981789664f, -1.4925650358406251e-05f, 1.6462114365889247e-06f,
    -1.6365844691234924e-07f, 1.4807192815879218e-08f};
// Numerical Recipes erfcc: erfc(z) = t exp(-z^2 + R(t)), t = 1 / (1 + z/2).
constexpr float kErfcR[10] = {-1.26551223f, 1.00002368f, 0.37409196f, 0.09678418f, -0.18628806f,
                              0.27886807f,  -1.13520398f, 1.48851587f, -0.82215223f, 0.17087277f};
// sincos (double): Cody-Waite reduction by pi/2 with FMA, Cephes sin.c/cos.c polynomials
// on [-pi/4, pi/4] (full double accuracy).
constexpr double kTwoOverPi = 0.63661977236758134308;
constexpr double kPio2Hi = 1.5707963267948966;       // double(pi/2)
constexpr double kPio2Lo = 6.123233995736766036e-17;  // pi/2 - kPio2Hi
constexpr double kSinC[6] = {1.58962301576546568060e-10, -2.50507477628578072866e-8, 2.75573136213857245213e-6,
                             -1.98412698295895385996e-4, 8.33333333332211858878e-3, -1.66666666666666307295e-1};
constexpr double kCosC[6] = {-1.13585365213876817300e-11, 2.08757008419747316778e-9, -2.75573141792967388112e-7,
                             2.48015872888517045348e-5,   -1.38888888888730564116e-3, 4.16666666666665929218e-2};
}  // namespace c

// ------------------------------------------------------------------ AVX-512

// Lanes [0, r) set: none for r <= 0, all for r >= 16 (the GEMMs pass the columns left, which
// may be either).
EMOLLM_SIMD_INLINE_512 __mmask16 tail_mask16(int64_t r) {
  return r >= 16 ? (__mmask16)0xFFFF : r <= 0 ? (__mmask16)0 : (__mmask16)((1u << r) - 1u);
}

EMOLLM_SIMD_INLINE_512 float hsum512_ps(__m512 v) { return _mm512_reduce_add_ps(v); }
EMOLLM_SIMD_INLINE_512 float hmax512_ps(__m512 v) { return _mm512_reduce_max_ps(v); }

// e^x, see the header comment for accuracy and special values.
EMOLLM_SIMD_INLINE_512 __m512 exp512_ps(__m512 x) {
  // Operand order keeps NaN: MIN/MAX return the second operand when either is NaN.
  x = _mm512_min_ps(_mm512_set1_ps(c::kExpHi), x);
  x = _mm512_max_ps(_mm512_set1_ps(c::kExpLo), x);
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(c::kLog2e)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(c::kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(c::kLn2Lo), r);
  __m512 p = _mm512_set1_ps(c::kP0);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c::kP1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c::kP2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c::kP3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c::kP4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c::kP5));
  __m512 r2 = _mm512_mul_ps(r, r);
  p = _mm512_fmadd_ps(p, r2, r);
  p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
  // p * 2^n with one rounding, correct overflow to inf and gradual underflow.
  return _mm512_scalef_ps(p, n);
}

// 1 / (1 + e^-x)
EMOLLM_SIMD_INLINE_512 __m512 sigmoid512_ps(__m512 x) {
  __m512 one = _mm512_set1_ps(1.0f);
  __m512 e = exp512_ps(_mm512_sub_ps(_mm512_setzero_ps(), x));
  return _mm512_div_ps(one, _mm512_add_ps(one, e));
}

// x * sigmoid(x) computed as x / (1 + e^-x) (as torch does).
EMOLLM_SIMD_INLINE_512 __m512 silu512_ps(__m512 x) {
  __m512 e = exp512_ps(_mm512_sub_ps(_mm512_setzero_ps(), x));
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

// erf(a) for a >= 0 and a < 1 (Taylor) -- internal.
EMOLLM_SIMD_INLINE_512 __m512 erf_small512_(__m512 a) {
  __m512 z = _mm512_mul_ps(a, a);
  __m512 p = _mm512_set1_ps(c::kErfT[10]);
  for (int k = 9; k >= 0; --k) p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(c::kErfT[k]));
  return _mm512_mul_ps(p, a);
}
// erfc(a) for a >= 0 (Numerical Recipes fit) -- internal. Accurate relatively for a >= ~0.5.
EMOLLM_SIMD_INLINE_512 __m512 erfc_pos512_(__m512 a) {
  __m512 one = _mm512_set1_ps(1.0f);
  __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(a, _mm512_set1_ps(0.5f), one));
  __m512 r = _mm512_set1_ps(c::kErfcR[9]);
  for (int k = 8; k >= 0; --k) r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(c::kErfcR[k]));
  // -a*a + r(t); fnmadd keeps a*a unrounded.
  __m512 arg = _mm512_fnmadd_ps(a, a, r);
  return _mm512_mul_ps(t, exp512_ps(arg));
}

EMOLLM_SIMD_INLINE_512 __m512 erf512_ps(__m512 x) {
  const __m512 sign_bit = _mm512_set1_ps(-0.0f);
  __m512 a = _mm512_andnot_ps(sign_bit, x);
  __m512 small = erf_small512_(_mm512_min_ps(a, _mm512_set1_ps(1.0f)));
  __m512 large = _mm512_sub_ps(_mm512_set1_ps(1.0f), erfc_pos512_(a));
  __mmask16 is_small = _mm512_cmp_ps_mask(a, _mm512_set1_ps(1.0f), _CMP_LT_OQ);
  __m512 e = _mm512_mask_blend_ps(is_small, large, small);
  return _mm512_or_ps(e, _mm512_and_ps(x, sign_bit));
}

// Exact GELU: x * Phi(x), Phi(x) = 0.5 (1 + erf(x / sqrt2)).
EMOLLM_SIMD_INLINE_512 __m512 gelu_erf512_ps(__m512 x) {
  const __m512 sign_bit = _mm512_set1_ps(-0.0f);
  const __m512 half = _mm512_set1_ps(0.5f);
  __m512 u = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f));
  __m512 a = _mm512_andnot_ps(sign_bit, u);
  // |u| < 1: Phi = 0.5 + 0.5 * erf(u)
  __m512 es = erf_small512_(_mm512_min_ps(a, _mm512_set1_ps(1.0f)));
  es = _mm512_or_ps(es, _mm512_and_ps(u, sign_bit));
  __m512 phi_small = _mm512_fmadd_ps(half, es, half);
  // |u| >= 1: Phi = 1 - 0.5 erfc(u) for u > 0, 0.5 erfc(|u|) for u < 0
  __m512 hc = _mm512_mul_ps(half, erfc_pos512_(a));
  __mmask16 neg = _mm512_cmp_ps_mask(u, _mm512_setzero_ps(), _CMP_LT_OQ);
  __m512 phi_large = _mm512_mask_blend_ps(neg, _mm512_sub_ps(_mm512_set1_ps(1.0f), hc), hc);
  __mmask16 is_small = _mm512_cmp_ps_mask(a, _mm512_set1_ps(1.0f), _CMP_LT_OQ);
  __m512 phi = _mm512_mask_blend_ps(is_small, phi_large, phi_small);
  return _mm512_mul_ps(x, phi);
}

// sin and cos of 8 double angles, |a| < 2^50 (rope angles: position * inv_freq). The reduction
// a - q pi/2 is exact to ~1e-16 absolute for any such a, so results are accurate to ~1e-16.
EMOLLM_SIMD_INLINE_512 void sincos512_pd(__m512d a, __m512d* sin_out, __m512d* cos_out) {
  const __m512d q = _mm512_roundscale_pd(_mm512_mul_pd(a, _mm512_set1_pd(c::kTwoOverPi)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512d r = _mm512_fnmadd_pd(q, _mm512_set1_pd(c::kPio2Hi), a);
  r = _mm512_fnmadd_pd(q, _mm512_set1_pd(c::kPio2Lo), r);
  const __m512d z = _mm512_mul_pd(r, r);
  __m512d ps = _mm512_set1_pd(c::kSinC[0]), pc = _mm512_set1_pd(c::kCosC[0]);
  for (int k = 1; k < 6; ++k) {
    ps = _mm512_fmadd_pd(ps, z, _mm512_set1_pd(c::kSinC[k]));
    pc = _mm512_fmadd_pd(pc, z, _mm512_set1_pd(c::kCosC[k]));
  }
  const __m512d sn = _mm512_fmadd_pd(_mm512_mul_pd(r, z), ps, r);
  const __m512d cs = _mm512_fmadd_pd(_mm512_mul_pd(z, z), pc, _mm512_fnmadd_pd(_mm512_set1_pd(0.5), z, _mm512_set1_pd(1.0)));
  // quadrant m = q mod 4: sin(r + m pi/2) = (s, c, -s, -c)[m], cos = (c, -s, -c, s)[m]
  const __m512d m = _mm512_sub_pd(q, _mm512_mul_pd(_mm512_set1_pd(4.0), _mm512_floor_pd(_mm512_mul_pd(q, _mm512_set1_pd(0.25)))));
  const __mmask8 odd = _mm512_cmp_pd_mask(m, _mm512_set1_pd(1.0), _CMP_EQ_OQ) | _mm512_cmp_pd_mask(m, _mm512_set1_pd(3.0), _CMP_EQ_OQ);
  const __mmask8 neg_s = _mm512_cmp_pd_mask(m, _mm512_set1_pd(2.0), _CMP_GE_OQ);
  const __mmask8 neg_c = _mm512_cmp_pd_mask(m, _mm512_set1_pd(1.0), _CMP_EQ_OQ) | _mm512_cmp_pd_mask(m, _mm512_set1_pd(2.0), _CMP_EQ_OQ);
  const __m512d sign = _mm512_set1_pd(-0.0);
  __m512d so = _mm512_mask_blend_pd(odd, sn, cs), co = _mm512_mask_blend_pd(odd, cs, sn);
  so = _mm512_mask_xor_pd(so, neg_s, so, sign);
  co = _mm512_mask_xor_pd(co, neg_c, co, sign);
  *sin_out = so;
  *cos_out = co;
}

// ------------------------------------------------------------------ AVX2

// Lanes [0, r) all-ones, r in [0, 8]; for _mm256_maskload_ps / _mm256_maskstore_ps.
EMOLLM_SIMD_INLINE_256 __m256i tail_mask8(int64_t r) {
  alignas(32) static const int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  if (r > 8) r = 8;
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + 8 - r));
}

EMOLLM_SIMD_INLINE_256 float hsum256_ps(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
EMOLLM_SIMD_INLINE_256 float hmax256_ps(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

EMOLLM_SIMD_INLINE_256 __m256 exp256_ps(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(c::kExpHi), x);
  x = _mm256_max_ps(_mm256_set1_ps(c::kExpLo), x);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(c::kLog2e)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(c::kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(c::kLn2Lo), r);
  __m256 p = _mm256_set1_ps(c::kP0);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c::kP1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c::kP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c::kP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c::kP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c::kP5));
  __m256 r2 = _mm256_mul_ps(r, r);
  p = _mm256_fmadd_ps(p, r2, r);
  p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
  // n in [-150, 128]: scale by 2^n1 * 2^n2 with n1 = n >> 1, both factors normal, so the
  // first product is exact and only the second rounds (gradual underflow, overflow to inf).
  // A NaN x gives an out-of-range n, but p is NaN then and stays NaN.
  __m256i ni = _mm256_cvtps_epi32(n);
  __m256i n1 = _mm256_srai_epi32(ni, 1);
  __m256i n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

EMOLLM_SIMD_INLINE_256 __m256 sigmoid256_ps(__m256 x) {
  __m256 one = _mm256_set1_ps(1.0f);
  __m256 e = exp256_ps(_mm256_sub_ps(_mm256_setzero_ps(), x));
  return _mm256_div_ps(one, _mm256_add_ps(one, e));
}

EMOLLM_SIMD_INLINE_256 __m256 silu256_ps(__m256 x) {
  __m256 e = exp256_ps(_mm256_sub_ps(_mm256_setzero_ps(), x));
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

EMOLLM_SIMD_INLINE_256 __m256 erf_small256_(__m256 a) {
  __m256 z = _mm256_mul_ps(a, a);
  __m256 p = _mm256_set1_ps(c::kErfT[10]);
  for (int k = 9; k >= 0; --k) p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(c::kErfT[k]));
  return _mm256_mul_ps(p, a);
}
EMOLLM_SIMD_INLINE_256 __m256 erfc_pos256_(__m256 a) {
  __m256 one = _mm256_set1_ps(1.0f);
  __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(a, _mm256_set1_ps(0.5f), one));
  __m256 r = _mm256_set1_ps(c::kErfcR[9]);
  for (int k = 8; k >= 0; --k) r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(c::kErfcR[k]));
  __m256 arg = _mm256_fnmadd_ps(a, a, r);
  return _mm256_mul_ps(t, exp256_ps(arg));
}

EMOLLM_SIMD_INLINE_256 __m256 erf256_ps(__m256 x) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 a = _mm256_andnot_ps(sign_bit, x);
  __m256 small = erf_small256_(_mm256_min_ps(a, one));
  __m256 large = _mm256_sub_ps(one, erfc_pos256_(a));
  __m256 is_small = _mm256_cmp_ps(a, one, _CMP_LT_OQ);
  __m256 e = _mm256_blendv_ps(large, small, is_small);
  return _mm256_or_ps(e, _mm256_and_ps(x, sign_bit));
}

EMOLLM_SIMD_INLINE_256 __m256 gelu_erf256_ps(__m256 x) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  const __m256 half = _mm256_set1_ps(0.5f);
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 u = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
  __m256 a = _mm256_andnot_ps(sign_bit, u);
  __m256 es = erf_small256_(_mm256_min_ps(a, one));
  es = _mm256_or_ps(es, _mm256_and_ps(u, sign_bit));
  __m256 phi_small = _mm256_fmadd_ps(half, es, half);
  __m256 hc = _mm256_mul_ps(half, erfc_pos256_(a));
  __m256 neg = _mm256_cmp_ps(u, _mm256_setzero_ps(), _CMP_LT_OQ);
  __m256 phi_large = _mm256_blendv_ps(_mm256_sub_ps(one, hc), hc, neg);
  __m256 is_small = _mm256_cmp_ps(a, one, _CMP_LT_OQ);
  __m256 phi = _mm256_blendv_ps(phi_large, phi_small, is_small);
  return _mm256_mul_ps(x, phi);
}

// sin and cos of 4 double angles; see sincos512_pd.
EMOLLM_SIMD_INLINE_256 void sincos256_pd(__m256d a, __m256d* sin_out, __m256d* cos_out) {
  const __m256d q = _mm256_round_pd(_mm256_mul_pd(a, _mm256_set1_pd(c::kTwoOverPi)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256d r = _mm256_fnmadd_pd(q, _mm256_set1_pd(c::kPio2Hi), a);
  r = _mm256_fnmadd_pd(q, _mm256_set1_pd(c::kPio2Lo), r);
  const __m256d z = _mm256_mul_pd(r, r);
  __m256d ps = _mm256_set1_pd(c::kSinC[0]), pc = _mm256_set1_pd(c::kCosC[0]);
  for (int k = 1; k < 6; ++k) {
    ps = _mm256_fmadd_pd(ps, z, _mm256_set1_pd(c::kSinC[k]));
    pc = _mm256_fmadd_pd(pc, z, _mm256_set1_pd(c::kCosC[k]));
  }
  const __m256d sn = _mm256_fmadd_pd(_mm256_mul_pd(r, z), ps, r);
  const __m256d cs = _mm256_fmadd_pd(_mm256_mul_pd(z, z), pc, _mm256_fnmadd_pd(_mm256_set1_pd(0.5), z, _mm256_set1_pd(1.0)));
  const __m256d m = _mm256_sub_pd(q, _mm256_mul_pd(_mm256_set1_pd(4.0), _mm256_floor_pd(_mm256_mul_pd(q, _mm256_set1_pd(0.25)))));
  const __m256d one = _mm256_set1_pd(1.0), two = _mm256_set1_pd(2.0), three = _mm256_set1_pd(3.0);
  const __m256d odd = _mm256_or_pd(_mm256_cmp_pd(m, one, _CMP_EQ_OQ), _mm256_cmp_pd(m, three, _CMP_EQ_OQ));
  const __m256d neg_s = _mm256_cmp_pd(m, two, _CMP_GE_OQ);
  const __m256d neg_c = _mm256_or_pd(_mm256_cmp_pd(m, one, _CMP_EQ_OQ), _mm256_cmp_pd(m, two, _CMP_EQ_OQ));
  const __m256d sign = _mm256_set1_pd(-0.0);
  __m256d so = _mm256_blendv_pd(sn, cs, odd), co = _mm256_blendv_pd(cs, sn, odd);
  *sin_out = _mm256_xor_pd(so, _mm256_and_pd(neg_s, sign));
  *cos_out = _mm256_xor_pd(co, _mm256_and_pd(neg_c, sign));
}

}  // namespace simd
}  // namespace emollm

#endif  // __x86_64__
