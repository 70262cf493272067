// Tests for the elementwise / row-wise CPU kernels: rmsnorm, layernorm, silu, gelu_erf,
// quick_gelu, swiglu, softmax, rope, embedding_lookup, and the SIMD math helpers
// (kernels/cpu/simd_math.h).
//
// Two kinds of checks, on odd sizes (1, 3, 15, 17, 31, 33, 100, 4097, 11008), single and many
// rows, ld > n (padding must stay untouched), in place, and special values:
//   1. every ISA level this CPU supports (Scalar, Avx2, Avx512; via IsaCapScope) against the
//      scalar reference emollm::ref::*;
//   2. the scalar reference against an independent double-precision formula written here.
// Tolerances (|got - want| <= atol + rtol * |want|):
//   exp helper            <= 2 ulp over [-87.3, 88.7]; special values exact
//   sincos helper (f64)   <= 1e-14 absolute vs libm, angles up to 1e9
//   sigmoid / silu / quick_gelu / swiglu   vector vs ref: rtol 1e-6; ref vs double: rtol 5e-7
//   erf helper            |err| <= 3e-7 absolute vs double erf
//   gelu_erf              vector vs ref: atol 1e-6, rtol 1e-6; ref vs torch's double formula
//                         0.5 x (1 + erf(x/sqrt2)): atol 1e-6, rtol 1e-6
//   softmax               vector vs ref: rtol 2e-6; ref vs double: rtol 4e-6 (atol 1e-37): f32
//                         x - max loses |x - max| * 6e-8 relative, as in torch
//   rmsnorm / layernorm   vector vs ref: rtol 2e-6 + atol 2e-6 * max|y|; ref vs double: same
//   rope                  vector vs ref: atol 2e-6; ref vs double: atol 2e-6 (inputs ~N(0,1));
//                         hand-computed cases: 1e-6
//   embedding_lookup      bit-exact (vector vs ref, and ref vs a decoder written here)
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../kernels/cpu/simd_math.h"  // first: see the note on GCC 12 warnings there
#include "../../kernels/cpu/elementwise_ref.h"
#include "../../kernels/cpu/kernels.h"
#include "../../kernels/cpu/row_parallel.h"
#include "../../base/cpu_features.h"
#include "../../base/error.h"
#include "testing.h"

using namespace emollm;

namespace {

const float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const int64_t kSizes[] = {1, 3, 15, 17, 31, 33, 100, 4097, 11008};

// Every level the dispatchers distinguish that this CPU runs (Amx runs the Avx512 path).
std::vector<Isa> isa_levels() {
  std::vector<Isa> v{Isa::Scalar};
  if (int(isa_detected()) >= int(Isa::Avx2)) v.push_back(Isa::Avx2);
  if (int(isa_detected()) >= int(Isa::Avx512)) v.push_back(Isa::Avx512);
  return v;
}

std::string tag(const char* what, Isa isa, int64_t n, int64_t rows = 1) {
  return std::string(what) + " isa=" + isa_name(isa) + " n=" + std::to_string(n) + " rows=" + std::to_string(rows);
}

std::vector<float> randn(size_t n, float scale, uint32_t seed, float mean = 0.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(mean, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Compares with NaN == NaN (same positions) and a tolerance elsewhere.
bool close_nan(const float* a, const float* b, long n, double atol, double rtol, const char* file, int line,
               const std::string& what) {
  for (long i = 0; i < n; ++i) {
    bool an = std::isnan(a[i]), bn = std::isnan(b[i]);
    if (an != bn) {
      emollm_test::report_failure(file, line, what + ": NaN mismatch at " + std::to_string(i) + " (" +
                                                  std::to_string(a[i]) + " vs " + std::to_string(b[i]) + ")");
      return false;
    }
    if (an) continue;
    if (std::isinf(a[i]) || std::isinf(b[i])) {
      if (a[i] != b[i]) {
        emollm_test::report_failure(file, line, what + ": inf mismatch at " + std::to_string(i));
        return false;
      }
      continue;
    }
    double d = std::fabs(double(a[i]) - double(b[i]));
    if (!(d <= atol + rtol * std::fabs(double(b[i])))) {
      return emollm_test::all_close(a, b, n, atol, rtol, file, line, what);
    }
  }
  return true;
}
#define EXPECT_CLOSE_NAN(a, b, n, atol, rtol, what) close_nan((a), (b), (long)(n), (atol), (rtol), __FILE__, __LINE__, (what))

// Used by the x86 vector-math checks only (unused, and warned about, on aarch64).
[[maybe_unused]] double ulp_of(double v) {
  v = std::fabs(v);
  if (v < 1.1754943508222875e-38) return 1.401298464324817e-45;
  int e;
  std::frexp(v, &e);             // v = m 2^e, m in [0.5, 1)
  return std::ldexp(1.0, e - 24);  // float ulp at that binade
}

// Values exercising the activations: N(0, 4) plus edge magnitudes and specials.
std::vector<float> activation_inputs(int64_t n, uint32_t seed) {
  std::vector<float> x = randn(size_t(n), 4.0f, seed);
  const float edge[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-7f, 0.999f, 1.0f, 1.414f, -1.414f, 1.415f, -1.415f,
                        5.0f, -5.0f, 9.9f, -9.9f, 20.0f, -20.0f, 60.0f, -60.0f, 88.0f, -88.0f, 100.0f, -100.0f,
                        1e10f, -1e10f, 3e38f, -3e38f};
  for (size_t i = 0; i < sizeof(edge) / sizeof(edge[0]) && i * 3 < size_t(n); ++i) x[i * 3] = edge[i];
  return x;
}

// ------------------------------------------------------------------ SIMD helpers used by tests
#if defined(__x86_64__)
EMOLLM_TARGET_AVX512 void apply512(int which, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 k = simd::tail_mask16(n - i);
    __m512 v = _mm512_maskz_loadu_ps(k, x + i);
    __m512 r = which == 0 ? simd::exp512_ps(v) : which == 1 ? simd::erf512_ps(v) : simd::sigmoid512_ps(v);
    _mm512_mask_storeu_ps(y + i, k, r);
  }
}
EMOLLM_TARGET_AVX2 void apply256(int which, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += 8) {
    __m256i k = simd::tail_mask8(n - i);
    __m256 v = _mm256_maskload_ps(x + i, k);
    __m256 r = which == 0 ? simd::exp256_ps(v) : which == 1 ? simd::erf256_ps(v) : simd::sigmoid256_ps(v);
    _mm256_maskstore_ps(y + i, k, r);
  }
}
EMOLLM_TARGET_AVX512 void sincos_512(const double* a, double* s, double* c, int64_t n) {  // n % 8 == 0
  for (int64_t i = 0; i < n; i += 8) {
    __m512d vs, vc;
    simd::sincos512_pd(_mm512_loadu_pd(a + i), &vs, &vc);
    _mm512_storeu_pd(s + i, vs);
    _mm512_storeu_pd(c + i, vc);
  }
}
EMOLLM_TARGET_AVX2 void sincos_256(const double* a, double* s, double* c, int64_t n) {  // n % 4 == 0
  for (int64_t i = 0; i < n; i += 4) {
    __m256d vs, vc;
    simd::sincos256_pd(_mm256_loadu_pd(a + i), &vs, &vc);
    _mm256_storeu_pd(s + i, vs);
    _mm256_storeu_pd(c + i, vc);
  }
}
void apply_simd(Isa isa, int which, const float* x, float* y, int64_t n) {
  if (isa == Isa::Avx512) apply512(which, x, y, n);
  else apply256(which, x, y, n);
}
#endif

}  // namespace

// ================================================================== simd_math.h
#if defined(__x86_64__)
TEST(simd_exp_ulp_and_specials) {
  std::vector<float> x;
  for (double v = -87.3; v <= 88.7; v += 0.00731) x.push_back(float(v));
  for (float v : {0.0f, -0.0f, 1e-8f, -1e-8f, 0.34657359f, -0.34657359f, 88.72f, -87.33f}) x.push_back(v);
  std::vector<float> y(x.size());
  for (Isa isa : isa_levels()) {
    if (isa == Isa::Scalar) continue;
    apply_simd(isa, 0, x.data(), y.data(), int64_t(x.size()));
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      double want = std::exp(double(x[i]));
      double u = std::fabs(double(y[i]) - want) / ulp_of(want);
      if (u > worst) worst = u;
    }
    EXPECT(worst <= 2.0);
    std::printf("    exp max error %.3f ulp on %s\n", worst, isa_name(isa));
    // specials and the over/underflow boundaries
    const float sx[] = {-kInf, kInf, kNaN, 89.0f, 1000.0f, -104.0f, -1000.0f, -100.0f, -95.0f, 88.5f};
    float sy[10];
    apply_simd(isa, 0, sx, sy, 10);
    EXPECT(sy[0] == 0.0f);
    EXPECT(sy[1] == kInf);
    EXPECT(std::isnan(sy[2]));
    EXPECT(sy[3] == kInf);
    EXPECT(sy[4] == kInf);
    EXPECT(sy[5] == 0.0f);
    EXPECT(sy[6] == 0.0f);
    // subnormal results: within one subnormal step (1.4e-45) of the true value, relative 1e-3
    EXPECT_NEAR(sy[7], std::exp(-100.0), 2e-45);
    EXPECT_NEAR(sy[8] / std::exp(-95.0), 1.0, 1e-3);
    EXPECT_NEAR(sy[9] / std::exp(88.5), 1.0, 3e-7);
  }
}

TEST(simd_erf_and_sigmoid_accuracy) {
  std::vector<float> x;
  for (double v = -7.0; v <= 7.0; v += 0.000731) x.push_back(float(v));
  for (float v : {0.0f, -0.0f, 1e-20f, 0.99999f, 1.0f, 1.00001f, 4.0f, 10.0f, 1e30f, kInf, -kInf, kNaN}) x.push_back(v);
  std::vector<float> y(x.size());
  for (Isa isa : isa_levels()) {
    if (isa == Isa::Scalar) continue;
    apply_simd(isa, 1, x.data(), y.data(), int64_t(x.size()));
    double worst = 0;
    bool specials_ok = true;
    for (size_t i = 0; i < x.size(); ++i) {
      if (std::isnan(x[i])) { specials_ok &= std::isnan(y[i]); continue; }
      double d = std::fabs(double(y[i]) - std::erf(double(x[i])));
      if (d > worst) worst = d;
    }
    EXPECT(specials_ok);
    EXPECT(worst <= 3e-7);
    std::printf("    erf max abs err %.3g on %s\n", worst, isa_name(isa));
    // erf is odd and keeps relative accuracy near 0
    float tiny[2] = {1e-20f, -1e-20f}, et[2];
    apply_simd(isa, 1, tiny, et, 2);
    EXPECT_NEAR(et[0] / 1.1283791670955126e-20, 1.0, 1e-6);
    EXPECT(et[1] == -et[0]);

    apply_simd(isa, 2, x.data(), y.data(), int64_t(x.size()));
    double worst_rel = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      if (std::isnan(x[i])) { EXPECT(std::isnan(y[i])); continue; }
      double want = 1.0 / (1.0 + std::exp(-double(x[i])));
      double r = std::fabs(double(y[i]) - want) / want;
      if (r > worst_rel) worst_rel = r;
    }
    EXPECT(worst_rel <= 5e-7);
    float sx[3] = {-kInf, kInf, -200.0f}, sy[3];
    apply_simd(isa, 2, sx, sy, 3);
    EXPECT(sy[0] == 0.0f && sy[1] == 1.0f && sy[2] == 0.0f);
  }
}

TEST(simd_sincos_accuracy) {
  // rope angles: position * inv_freq, up to ~1e6 rad in practice; also quadrant boundaries.
  std::vector<double> a;
  for (double v = -20.0; v <= 20.0; v += 0.001173) a.push_back(v);
  for (int k = -8; k <= 8; ++k)
    for (double e : {-1e-12, 0.0, 1e-12}) a.push_back(k * 1.5707963267948966 + e);
  for (double v : {1e3, 12345.678, 1e5, 131071.5, 1e6, 3.3e7, 1e9, -1e9}) a.push_back(v);
  while (a.size() % 8) a.push_back(0.5);
  std::vector<double> s(a.size()), c(a.size());
  for (Isa isa : isa_levels()) {
    if (isa == Isa::Scalar) continue;
    if (isa == Isa::Avx512) sincos_512(a.data(), s.data(), c.data(), int64_t(a.size()));
    else sincos_256(a.data(), s.data(), c.data(), int64_t(a.size()));
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      worst = std::max(worst, std::fabs(s[i] - std::sin(a[i])));
      worst = std::max(worst, std::fabs(c[i] - std::cos(a[i])));
    }
    EXPECT(worst <= 1e-14);  // f32 outputs need 3e-8
    std::printf("    sincos max abs err %.3g on %s\n", worst, isa_name(isa));
  }
}
#endif

// ================================================================== activations
namespace {
using UnaryFn = void (*)(const float*, float*, int64_t);

// Checks kernel (every ISA) vs ref, ref vs want(x) in double, in place, and a guard after n.
void check_unary(const char* name, UnaryFn kernel, UnaryFn reference, double (*want)(double), double vec_atol,
                 double vec_rtol, double ref_atol, double ref_rtol, uint32_t seed) {
  for (int64_t n : kSizes) {
    std::vector<float> x = activation_inputs(n, seed + uint32_t(n));
    std::vector<float> r(n);
    reference(x.data(), r.data(), n);
    std::vector<float> d(n);
    for (int64_t i = 0; i < n; ++i) d[i] = float(want(double(x[i])));
    EXPECT_CLOSE_NAN(r.data(), d.data(), n, ref_atol, ref_rtol, tag(name, Isa::Scalar, n) + " ref vs double");
    for (Isa isa : isa_levels()) {
      IsaCapScope cap(isa);
      std::vector<float> y(n + 1, 12345.0f);
      kernel(x.data(), y.data(), n);
      EXPECT(y[n] == 12345.0f);  // nothing written past n
      EXPECT_CLOSE_NAN(y.data(), r.data(), n, vec_atol, vec_rtol, tag(name, isa, n) + " vs ref");
      std::vector<float> inplace = x;
      kernel(inplace.data(), inplace.data(), n);
      EXPECT(std::memcmp(inplace.data(), y.data(), size_t(n) * 4) == 0);
    }
  }
}
double silu_d(double x) { return x / (1.0 + std::exp(-x)); }
double gelu_torch_d(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }
double quick_gelu_d(double x) { return x / (1.0 + std::exp(-1.702 * x)); }
}  // namespace

TEST(silu_all_isas) { check_unary("silu", silu, ref::silu, silu_d, 1e-37, 1e-6, 1e-37, 5e-7, 100); }
TEST(gelu_erf_all_isas) { check_unary("gelu_erf", gelu_erf, ref::gelu_erf, gelu_torch_d, 1e-6, 1e-6, 1e-6, 1e-6, 200); }
TEST(quick_gelu_all_isas) {
  // the scalar reference multiplies 1.702 in float: compare with the double formula at rtol 1e-6
  check_unary("quick_gelu", quick_gelu, ref::quick_gelu, quick_gelu_d, 1e-37, 1e-6, 1e-37, 2e-6, 300);
}

TEST(activation_special_values) {
  const float x[] = {-kInf, kInf, kNaN, 0.0f, -0.0f, -200.0f, 200.0f};
  for (Isa isa : isa_levels()) {
    IsaCapScope cap(isa);
    float y[7];
    silu(x, y, 7);
    EXPECT(std::isnan(y[0]));  // -inf / (1 + inf), as torch
    EXPECT(y[1] == kInf);
    EXPECT(std::isnan(y[2]));
    EXPECT(y[3] == 0.0f && y[4] == 0.0f);
    EXPECT(y[5] == 0.0f && y[6] == 200.0f);
    gelu_erf(x, y, 7);
    EXPECT(std::isnan(y[0]));  // -inf * 0, as torch
    EXPECT(y[1] == kInf);
    EXPECT(std::isnan(y[2]));
    EXPECT(y[3] == 0.0f && y[5] == 0.0f && y[6] == 200.0f);
    // negative tail keeps relative accuracy: gelu(-8) = -8 Phi(-8) = -4.9e-15
    float m8 = -8.0f, g8;
    gelu_erf(&m8, &g8, 1);
    EXPECT_NEAR(g8 / (-8.0 * 0.5 * std::erfc(8.0 / std::sqrt(2.0))), 1.0, 1e-5);
    quick_gelu(x, y, 7);
    EXPECT(std::isnan(y[0]) && y[1] == kInf && std::isnan(y[2]) && y[6] == 200.0f);
  }
}

TEST(swiglu_all_isas) {
  for (int64_t n : kSizes) {
    std::vector<float> g = activation_inputs(n, 400 + uint32_t(n));
    std::vector<float> u = randn(size_t(n), 2.0f, 500 + uint32_t(n));
    std::vector<float> r(n), d(n);
    ref::swiglu(g.data(), u.data(), r.data(), n);
    for (int64_t i = 0; i < n; ++i) d[i] = float(silu_d(g[i]) * double(u[i]));
    EXPECT_CLOSE_NAN(r.data(), d.data(), n, 1e-37, 5e-7, tag("swiglu", Isa::Scalar, n) + " ref vs double");
    for (Isa isa : isa_levels()) {
      IsaCapScope cap(isa);
      std::vector<float> y(n + 1, 7.0f);
      swiglu(g.data(), u.data(), y.data(), n);
      EXPECT(y[n] == 7.0f);
      EXPECT_CLOSE_NAN(y.data(), r.data(), n, 1e-37, 1e-6, tag("swiglu", isa, n) + " vs ref");
      std::vector<float> g2 = g, u2 = u;
      swiglu(g2.data(), u.data(), g2.data(), n);  // in place over gate
      swiglu(g.data(), u2.data(), u2.data(), n);  // in place over up
      EXPECT(std::memcmp(g2.data(), y.data(), size_t(n) * 4) == 0);
      EXPECT(std::memcmp(u2.data(), y.data(), size_t(n) * 4) == 0);
    }
  }
}

// ================================================================== softmax
namespace {
void softmax_double(const float* x, float* y, int64_t n) {
  double mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, double(x[j]));
  double s = 0;
  for (int64_t j = 0; j < n; ++j) s += std::exp(double(x[j]) - mx);
  for (int64_t j = 0; j < n; ++j) y[j] = float(std::exp(double(x[j]) - mx) / s);
}
}  // namespace

TEST(softmax_all_isas) {
  for (int64_t n : kSizes) {
    for (int64_t rows : {int64_t(1), int64_t(5)}) {
      const int64_t ld = n + 3;
      std::vector<float> x = randn(size_t(rows * ld), 5.0f, 600 + uint32_t(n + rows));
      // a few -inf entries (masked attention) in every row but keep one finite
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 1; j < n; j += 7) x[r * ld + j] = -kInf;
      std::vector<float> ref_y(rows * ld, -1.0f), dbl(n);
      ref::softmax(x.data(), ld, ref_y.data(), ld, rows, n);
      for (int64_t r = 0; r < rows; ++r) {
        softmax_double(x.data() + r * ld, dbl.data(), n);
        // f32 x - max rounds by up to ulp(|x - max|)/2, a relative error of up to
        // |x - max| * 6e-8 in exp(): with |x - max| < 45 here, rtol 4e-6.
        EXPECT_CLOSE_NAN(ref_y.data() + r * ld, dbl.data(), n, 1e-37, 4e-6, tag("softmax", Isa::Scalar, n, rows) + " ref vs double");
      }
      for (Isa isa : isa_levels()) {
        IsaCapScope cap(isa);
        std::vector<float> y(rows * ld, -1.0f);
        softmax(x.data(), ld, y.data(), ld, rows, n);
        bool pad_ok = true;
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t j = n; j < ld; ++j) pad_ok &= y[r * ld + j] == -1.0f;
          EXPECT_CLOSE_NAN(y.data() + r * ld, ref_y.data() + r * ld, n, 1e-37, 2e-6, tag("softmax", isa, n, rows) + " vs ref");
          double s = 0;
          for (int64_t j = 0; j < n; ++j) s += y[r * ld + j];
          EXPECT_NEAR(s, 1.0, 1e-5);
        }
        EXPECT(pad_ok);
        // in place, different ld for input and output rows
        std::vector<float> z = x;
        softmax(z.data(), ld, z.data(), ld, rows, n);
        bool same = true;
        for (int64_t r = 0; r < rows; ++r) same &= std::memcmp(z.data() + r * ld, y.data() + r * ld, size_t(n) * 4) == 0;
        EXPECT(same);
      }
    }
  }
}

TEST(softmax_special_rows) {
  // rows of 19 (crosses a vector width and a tail on every path)
  const int64_t n = 19;
  std::vector<float> x(5 * n);
  for (int64_t j = 0; j < n; ++j) {
    x[0 * n + j] = -kInf;                                   // all -inf -> all NaN (torch)
    x[1 * n + j] = j == 4 ? kInf : 1.0f;                    // +inf -> all NaN (torch)
    x[2 * n + j] = j == 0 || j == 18 ? 0.0f : -kInf;        // two finite -> 0.5, 0.5, zeros
    x[3 * n + j] = (j % 2) ? 1e30f : -1e30f;                // huge magnitudes
    x[4 * n + j] = j == 7 ? kNaN : 0.0f;                    // NaN -> all NaN (torch)
  }
  for (Isa isa : isa_levels()) {
    IsaCapScope cap(isa);
    std::vector<float> y(5 * n);
    softmax(x.data(), n, y.data(), n, 5, n);
    bool r0 = true, r1 = true, r2 = true, r3 = true, r4 = true;
    for (int64_t j = 0; j < n; ++j) {
      r0 &= std::isnan(y[j]);
      r1 &= std::isnan(y[n + j]);
      r2 &= (j == 0 || j == 18) ? y[2 * n + j] == 0.5f : y[2 * n + j] == 0.0f;
      r3 &= (j % 2) ? std::fabs(y[3 * n + j] - 1.0f / 9.0f) < 1e-7f : y[3 * n + j] == 0.0f;
      r4 &= std::isnan(y[4 * n + j]);
    }
    EXPECT(r0);
    EXPECT(r1);
    EXPECT(r2);
    EXPECT(r3);
    EXPECT(r4);
  }
}

// ================================================================== rmsnorm / layernorm
namespace {
void rmsnorm_double(const float* x, const float* w, float* y, int64_t n, float eps) {
  double ss = 0;
  for (int64_t j = 0; j < n; ++j) ss += double(x[j]) * x[j];
  double inv = 1.0 / std::sqrt(ss / n + eps);
  for (int64_t j = 0; j < n; ++j) y[j] = float(x[j] * inv * (w ? w[j] : 1.0));
}
void layernorm_double(const float* x, const float* w, const float* b, float* y, int64_t n, float eps) {
  double m = 0;
  for (int64_t j = 0; j < n; ++j) m += x[j];
  m /= n;
  double v = 0;
  for (int64_t j = 0; j < n; ++j) v += (x[j] - m) * (x[j] - m);
  v /= n;
  double rs = 1.0 / std::sqrt(v + eps);
  for (int64_t j = 0; j < n; ++j) y[j] = float((x[j] - m) * rs * (w ? w[j] : 1.0) + (b ? b[j] : 0.0));
}
double max_abs(const float* y, int64_t n) {
  double m = 0;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, double(std::fabs(y[j])));
  return m;
}

struct NormCase {
  float scale, mean;
  bool weights;
};
}  // namespace

TEST(rmsnorm_all_isas) {
  const NormCase cases[] = {{1.0f, 0.0f, true}, {1.0f, 0.0f, false}, {1e15f, 0.0f, true}, {1e-12f, 0.0f, true},
                            {1.0f, 100.0f, true}};
  const float eps = 1e-6f;
  for (const NormCase& c : cases) {
    for (int64_t n : kSizes) {
      for (int64_t rows : {int64_t(1), int64_t(3)}) {
        const int64_t ld = n + 5;
        std::vector<float> x = randn(size_t(rows * ld), c.scale, 700 + uint32_t(n), c.mean);
        std::vector<float> w = randn(size_t(n), 0.5f, 800 + uint32_t(n), 1.0f);
        const float* wp = c.weights ? w.data() : nullptr;
        std::vector<float> r(rows * ld, -3.0f), d(n);
        ref::rmsnorm(x.data(), ld, wp, r.data(), ld, rows, n, eps);
        for (int64_t row = 0; row < rows; ++row) {
          rmsnorm_double(x.data() + row * ld, wp, d.data(), n, eps);
          EXPECT_ALL_CLOSE(r.data() + row * ld, d.data(), n, 2e-6 * max_abs(d.data(), n), 2e-6,
                           tag("rmsnorm", Isa::Scalar, n, rows) + " ref vs double");
        }
        for (Isa isa : isa_levels()) {
          IsaCapScope cap(isa);
          std::vector<float> y(rows * ld, -3.0f);
          rmsnorm(x.data(), ld, wp, y.data(), ld, rows, n, eps);
          bool pad_ok = true;
          for (int64_t row = 0; row < rows; ++row) {
            for (int64_t j = n; j < ld; ++j) pad_ok &= y[row * ld + j] == -3.0f;
            EXPECT_ALL_CLOSE(y.data() + row * ld, r.data() + row * ld, n, 2e-6 * max_abs(r.data() + row * ld, n),
                             2e-6, tag("rmsnorm", isa, n, rows) + " vs ref");
          }
          EXPECT(pad_ok);
          std::vector<float> z = x;  // in place
          rmsnorm(z.data(), ld, wp, z.data(), ld, rows, n, eps);
          bool same = true;
          for (int64_t row = 0; row < rows; ++row)
            same &= std::memcmp(z.data() + row * ld, y.data() + row * ld, size_t(n) * 4) == 0;
          EXPECT(same);
        }
      }
    }
  }
}

TEST(layernorm_all_isas) {
  // includes rows with a large mean (1e4 + N(0,1), 3e5 + N(0, 2)): the f32 mean's rounding
  // must not leak into the output.
  const NormCase cases[] = {{1.0f, 0.0f, true}, {1.0f, 0.0f, false}, {1.0f, 1e4f, true}, {2.0f, 3e5f, false},
                            {1e15f, 0.0f, true}, {1e-12f, 1e-11f, true}};
  const float eps = 1e-5f;
  for (const NormCase& c : cases) {
    for (int64_t n : kSizes) {
      if (n == 1) continue;  // variance 0: covered below
      for (int64_t rows : {int64_t(1), int64_t(3)}) {
        const int64_t ld = n + 2;
        std::vector<float> x = randn(size_t(rows * ld), c.scale, 900 + uint32_t(n), c.mean);
        std::vector<float> w = randn(size_t(n), 0.5f, 1000 + uint32_t(n), 1.0f);
        std::vector<float> b = randn(size_t(n), 0.5f, 1100 + uint32_t(n));
        const float* wp = c.weights ? w.data() : nullptr;
        const float* bp = c.weights ? b.data() : nullptr;
        std::vector<float> r(rows * ld, -3.0f), d(n);
        ref::layernorm(x.data(), ld, wp, bp, r.data(), ld, rows, n, eps);
        for (int64_t row = 0; row < rows; ++row) {
          layernorm_double(x.data() + row * ld, wp, bp, d.data(), n, eps);
          EXPECT_ALL_CLOSE(r.data() + row * ld, d.data(), n, 2e-6 * max_abs(d.data(), n), 2e-6,
                           tag("layernorm", Isa::Scalar, n, rows) + " ref vs double mean=" + std::to_string(c.mean));
        }
        for (Isa isa : isa_levels()) {
          IsaCapScope cap(isa);
          std::vector<float> y(rows * ld, -3.0f);
          layernorm(x.data(), ld, wp, bp, y.data(), ld, rows, n, eps);
          bool pad_ok = true;
          for (int64_t row = 0; row < rows; ++row) {
            for (int64_t j = n; j < ld; ++j) pad_ok &= y[row * ld + j] == -3.0f;
            EXPECT_ALL_CLOSE(y.data() + row * ld, r.data() + row * ld, n, 2e-6 * max_abs(r.data() + row * ld, n),
                             2e-6, tag("layernorm", isa, n, rows) + " vs ref mean=" + std::to_string(c.mean));
          }
          EXPECT(pad_ok);
          std::vector<float> z = x;
          layernorm(z.data(), ld, wp, bp, z.data(), ld, rows, n, eps);
          bool same = true;
          for (int64_t row = 0; row < rows; ++row)
            same &= std::memcmp(z.data() + row * ld, y.data() + row * ld, size_t(n) * 4) == 0;
          EXPECT(same);
        }
      }
    }
  }
}

TEST(norm_edge_cases) {
  for (Isa isa : isa_levels()) {
    IsaCapScope cap(isa);
    // constant row: layernorm gives b (here 0) exactly-ish, rmsnorm gives sign(x) / sqrt(1 + eps/x^2)
    std::vector<float> x(33, 7.5f), y(33);
    layernorm(x.data(), 33, nullptr, nullptr, y.data(), 33, 1, 33, 1e-5f);
    EXPECT(max_abs(y.data(), 33) <= 1e-6);
    rmsnorm(x.data(), 33, nullptr, y.data(), 33, 1, 33, 0.0f);
    EXPECT_NEAR(y[0], 1.0, 1e-6);
    EXPECT_NEAR(y[32], 1.0, 1e-6);
    // n == 1 layernorm: output is b
    float one = 3.0f, bias = 0.25f, out = 0;
    layernorm(&one, 1, nullptr, &bias, &out, 1, 1, 1, 1e-5f);
    EXPECT(out == 0.25f);
    // zero rows / zero n write nothing
    float guard = 9.0f;
    rmsnorm(&one, 1, nullptr, &guard, 1, 0, 1, 1e-5f);
    layernorm(&one, 1, nullptr, nullptr, &guard, 1, 1, 0, 1e-5f);
    EXPECT(guard == 9.0f);
    EXPECT_THROWS(rmsnorm(x.data(), 3, nullptr, y.data(), 33, 2, 33, 1e-5f), ErrorCode::InvalidArgument);
  }
}

// ================================================================== rope
namespace {
// Independent double-precision rope for one head vector.
void rope_head_double(const float* in, float* out, int64_t head_dim, int64_t rot, double pos, double theta,
                      const float* inv_freq, bool interleaved) {
  for (int64_t j = 0; j < head_dim; ++j) out[j] = in[j];
  for (int64_t i = 0; i < rot / 2; ++i) {
    double f = inv_freq ? double(inv_freq[i]) : std::pow(theta, -2.0 * double(i) / double(rot));
    double a = pos * f;
    int64_t ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + rot / 2;
    out[ia] = float(in[ia] * std::cos(a) - in[ib] * std::sin(a));
    out[ib] = float(in[ib] * std::cos(a) + in[ia] * std::sin(a));
  }
}
}  // namespace

TEST(rope_hand_computed) {
  // head_dim 4, theta 10000: inv_freq = {1, 0.01}. x = (1, 2, 3, 4).
  //   RotateHalf pairs (0,2) with freq 1 and (1,3) with freq 0.01;
  //   Interleaved pairs (0,1) with freq 1 and (2,3) with freq 0.01.
  // a' = a cos - b sin, b' = b cos + a sin; e.g. RotateHalf pos 1, pair (0,2):
  //   cos 1 - 3 sin 1 = 0.540302 - 2.524413 = -1.984111.
  const float want_rh[2][4] = {{-1.984110649f, 1.959900667f, 2.462377902f, 4.019799668f},
                               {-1.413352521f, 1.879118067f, -2.828857482f, 4.058191135f}};
  const float want_il[2][4] = {{-1.142639664f, 1.922075597f, 2.959850668f, 4.029799502f},
                               {-1.272232513f, -1.838864985f, 2.878668100f, 4.088186636f}};
  const int32_t pos[2] = {1, 3};
  for (Isa isa : isa_levels()) {
    IsaCapScope cap(isa);
    for (int layout = 0; layout < 2; ++layout) {
      RopeParams p;
      p.head_dim = 4;
      p.theta = 10000.0f;
      p.layout = layout ? RopeLayout::Interleaved : RopeLayout::RotateHalf;
      float x[8] = {1, 2, 3, 4, 1, 2, 3, 4};  // two tokens, one head
      rope(x, 4, 2, 1, pos, p);
      for (int t = 0; t < 2; ++t)
        for (int j = 0; j < 4; ++j) EXPECT_NEAR(x[t * 4 + j], layout ? want_il[t][j] : want_rh[t][j], 1e-6);
    }
  }
}

TEST(rope_all_isas_vs_ref_and_double) {
  struct Case { int64_t head_dim, rot_dim; float theta, freq_scale; bool use_inv_freq; };
  const Case cases[] = {{128, 0, 10000.0f, 1.0f, false}, {64, 0, 500000.0f, 1.0f, false}, {6, 0, 10000.0f, 1.0f, false},
                        {34, 0, 10000.0f, 0.25f, false}, {66, 66, 1e6f, 1.0f, false},   {80, 32, 10000.0f, 1.0f, false},
                        {10, 6, 10000.0f, 1.0f, false},  {128, 0, 10000.0f, 1.0f, true}, {96, 64, 10000.0f, 0.5f, true}};
  const int32_t positions[] = {0, 1, 2, 17, 511, 4095, 32767, 100000};
  const int64_t n_tokens = 8, n_heads = 3;
  for (const Case& c : cases) {
    const int64_t rot = c.rot_dim ? c.rot_dim : c.head_dim;
    std::vector<float> inv_freq(rot / 2);
    for (int64_t i = 0; i < rot / 2; ++i)  // an arbitrary llama3-like spectrum, not theta-derived
      inv_freq[i] = float(std::pow(10000.0, -2.0 * i / rot) * (i % 3 == 0 ? 0.125 : 1.0));
    for (int layout = 0; layout < 2; ++layout) {
      RopeParams p;
      p.head_dim = c.head_dim;
      p.rot_dim = c.rot_dim;
      p.theta = c.theta;
      p.freq_scale = c.freq_scale;
      p.inv_freq = c.use_inv_freq ? inv_freq.data() : nullptr;
      p.layout = layout ? RopeLayout::Interleaved : RopeLayout::RotateHalf;
      const int64_t ld = n_heads * c.head_dim + 7;
      std::vector<float> x = randn(size_t(n_tokens * ld), 1.0f, 1200 + uint32_t(c.head_dim + layout));
      std::vector<float> r = x;
      ref::rope(r.data(), ld, n_tokens, n_heads, positions, p);
      std::string what = "rope hd=" + std::to_string(c.head_dim) + " rot=" + std::to_string(rot) +
                         (layout ? " interleaved" : " rotate_half");
      std::vector<float> d(c.head_dim);
      for (int64_t t = 0; t < n_tokens; ++t) {
        for (int64_t h = 0; h < n_heads; ++h) {
          const float* in = x.data() + t * ld + h * c.head_dim;
          rope_head_double(in, d.data(), c.head_dim, rot, double(positions[t]) * c.freq_scale, c.theta,
                           p.inv_freq, layout == 1);
          EXPECT_ALL_CLOSE(r.data() + t * ld + h * c.head_dim, d.data(), c.head_dim, 2e-6, 0.0,
                           what + " ref vs double, token " + std::to_string(t));
          // dims >= rot untouched (bitwise)
          EXPECT(std::memcmp(r.data() + t * ld + h * c.head_dim + rot, in + rot, size_t(c.head_dim - rot) * 4) == 0);
        }
        EXPECT(std::memcmp(r.data() + t * ld + n_heads * c.head_dim, x.data() + t * ld + n_heads * c.head_dim, 7 * 4) == 0);
      }
      for (Isa isa : isa_levels()) {
        IsaCapScope cap(isa);
        std::vector<float> y = x;
        rope(y.data(), ld, n_tokens, n_heads, positions, p);
        EXPECT_ALL_CLOSE(y.data(), r.data(), n_tokens * ld, 2e-6, 0.0, what + " " + isa_name(isa) + " vs ref");
        bool pad = true;
        for (int64_t t = 0; t < n_tokens; ++t)
          pad &= std::memcmp(y.data() + t * ld + n_heads * c.head_dim, x.data() + t * ld + n_heads * c.head_dim, 7 * 4) == 0;
        EXPECT(pad);
      }
    }
  }
}

TEST(rope_interleaved_equals_permuted_rotate_half) {
  // HF converts Meta/GGUF q,k weights with w.view(h, d/2, 2, in).transpose(1, 2): the HF row
  // i (< d/2) is the original row 2i and HF row d/2 + i is original row 2i+1. So for a head
  // vector v and P v = (v0, v2, v4, ..., v1, v3, ...):
  //   rope_rotate_half(P v) == P rope_interleaved(v).
  const int64_t hd = 64, n_heads = 2, n_tokens = 3;
  const int32_t positions[] = {5, 77, 1234};
  std::vector<float> x = randn(size_t(n_tokens * n_heads * hd), 1.0f, 1300);
  std::vector<float> px(x.size());
  for (int64_t t = 0; t < n_tokens * n_heads; ++t)
    for (int64_t i = 0; i < hd / 2; ++i) {
      px[t * hd + i] = x[t * hd + 2 * i];
      px[t * hd + hd / 2 + i] = x[t * hd + 2 * i + 1];
    }
  for (Isa isa : isa_levels()) {
    IsaCapScope cap(isa);
    RopeParams p;
    p.head_dim = hd;
    p.theta = 10000.0f;
    p.layout = RopeLayout::Interleaved;
    std::vector<float> a = x;
    rope(a.data(), n_heads * hd, n_tokens, n_heads, positions, p);
    p.layout = RopeLayout::RotateHalf;
    std::vector<float> b = px;
    rope(b.data(), n_heads * hd, n_tokens, n_heads, positions, p);
    std::vector<float> pa(a.size());
    for (int64_t t = 0; t < n_tokens * n_heads; ++t)
      for (int64_t i = 0; i < hd / 2; ++i) {
        pa[t * hd + i] = a[t * hd + 2 * i];
        pa[t * hd + hd / 2 + i] = a[t * hd + 2 * i + 1];
      }
    EXPECT_ALL_CLOSE(b.data(), pa.data(), b.size(), 1e-6, 0.0, std::string("permutation ") + isa_name(isa));
    // and the relation is not vacuous: the two layouts differ on the unpermuted vector
    std::vector<float> c = x;
    rope(c.data(), n_heads * hd, n_tokens, n_heads, positions, p);
    EXPECT(emollm_test::max_abs_diff(c.data(), a.data(), long(c.size())) > 1e-2);
  }
}

TEST(rope_freq_scale_and_args) {
  for (Isa isa : isa_levels()) {
    IsaCapScope cap(isa);
    RopeParams p;
    p.head_dim = 32;
    std::vector<float> x = randn(32, 1.0f, 1400), a = x, b = x;
    const int32_t p8 = 8, p2 = 2;
    p.freq_scale = 0.25f;
    rope(a.data(), 32, 1, 1, &p8, p);  // 8 * 0.25 == 2 exactly
    p.freq_scale = 1.0f;
    rope(b.data(), 32, 1, 1, &p2, p);
    EXPECT(std::memcmp(a.data(), b.data(), 32 * 4) == 0);
    // position 0 is the identity
    std::vector<float> z = x;
    const int32_t p0 = 0;
    rope(z.data(), 32, 1, 1, &p0, p);
    EXPECT(std::memcmp(z.data(), x.data(), 32 * 4) == 0);
    p.rot_dim = 7;
    EXPECT_THROWS(rope(z.data(), 32, 1, 1, &p0, p), ErrorCode::InvalidArgument);
    p.rot_dim = 34;
    EXPECT_THROWS(rope(z.data(), 32, 1, 1, &p0, p), ErrorCode::InvalidArgument);
  }
}

// ================================================================== embedding
namespace {
// Independent decoders (not dtype.cpp's).
float dec_f16(uint16_t h) {
  int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? std::ldexp(double(m), -24) : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(1.0 + m / 1024.0, e - 15);
  return float(s ? -v : v);
}
void decode_row(DType t, const uint8_t* src, float* dst, int64_t dim) {
  for (int64_t j = 0; j < dim; ++j) {
    switch (t) {
      case DType::F32: std::memcpy(&dst[j], src + 4 * j, 4); break;
      case DType::F16: { uint16_t h; std::memcpy(&h, src + 2 * j, 2); dst[j] = dec_f16(h); break; }
      case DType::BF16: { uint16_t h; std::memcpy(&h, src + 2 * j, 2); uint32_t u = uint32_t(h) << 16; std::memcpy(&dst[j], &u, 4); break; }
      case DType::Q8_0: {
        const uint8_t* blk = src + (j / 32) * 34;
        uint16_t d; std::memcpy(&d, blk, 2);
        dst[j] = dec_f16(d) * float(int8_t(blk[2 + j % 32]));
        break;
      }
      case DType::Q4_0: {
        const uint8_t* blk = src + (j / 32) * 18;
        uint16_t d; std::memcpy(&d, blk, 2);
        int e = int(j % 32);
        int q = e < 16 ? (blk[2 + e] & 15) : (blk[2 + e - 16] >> 4);
        dst[j] = dec_f16(d) * float(q - 8);
        break;
      }
      default:  // an independent decoder exists for the formats the embedding test covers only
        throw std::runtime_error(std::string("decode_row: no reference decoder for ") + dtype_name(t));
    }
  }
}
}  // namespace

TEST(embedding_all_dtypes_all_isas) {
  const DType types[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0};
  const int64_t vocab = 37;
  const int32_t ids[] = {0, 36, 5, 5, 17, 1, 36};
  const int64_t n = 7;
  for (DType t : types) {
    std::vector<int64_t> dims = dtype_is_quantized(t) ? std::vector<int64_t>{32, 96, 4096}
                                                      : std::vector<int64_t>{1, 3, 17, 33, 100, 4097};
    for (int64_t dim : dims) {
      std::vector<float> src = randn(size_t(vocab * dim), 1.5f, 1500 + uint32_t(dim));
      const size_t rb = dtype_row_bytes(t, dim);
      std::vector<uint8_t> table(rb * vocab);
      for (int64_t v = 0; v < vocab; ++v) quantize_row(t, src.data() + v * dim, table.data() + v * rb, dim);
      const int64_t ld = dim + 3;
      std::vector<float> r(n * ld, -5.0f), d(dim);
      ref::embedding_lookup(table.data(), t, vocab, dim, ids, n, r.data(), ld);
      std::string what = std::string("embedding ") + dtype_name(t) + " dim=" + std::to_string(dim);
      bool ref_ok = true;
      for (int64_t i = 0; i < n; ++i) {
        decode_row(t, table.data() + size_t(ids[i]) * rb, d.data(), dim);
        ref_ok &= std::memcmp(r.data() + i * ld, d.data(), size_t(dim) * 4) == 0;
      }
      EXPECT(ref_ok);
      if (!ref_ok) std::printf("    %s: ref differs from the test's decoder\n", what.c_str());
      // sanity: decoded values are near the originals (f32 exact, q4_0 coarsest)
      const double tol = t == DType::F32 ? 0.0 : t == DType::Q4_0 ? 1.5 : t == DType::Q8_0 ? 0.1 : 0.05;
      EXPECT(emollm_test::max_abs_diff(r.data(), src.data() + size_t(ids[0]) * dim, long(dim)) <= tol);
      for (Isa isa : isa_levels()) {
        IsaCapScope cap(isa);
        std::vector<float> y(n * ld, -5.0f);
        embedding_lookup(table.data(), t, vocab, dim, ids, n, y.data(), ld);
        bool same = true;
        for (int64_t i = 0; i < n; ++i) same &= std::memcmp(y.data() + i * ld, r.data() + i * ld, size_t(dim) * 4) == 0;
        EXPECT(same);
        if (!same) std::printf("    %s isa=%s differs from ref\n", what.c_str(), isa_name(isa));
        bool pad = true;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = dim; j < ld; ++j) pad &= y[i * ld + j] == -5.0f;
        EXPECT(pad);
      }
    }
  }
}

TEST(embedding_bad_ids) {
  std::vector<float> table(10 * 4, 1.0f);
  for (Isa isa : isa_levels()) {
    IsaCapScope cap(isa);
    std::vector<float> out(3 * 4, -1.0f);
    const int32_t bad_hi[] = {0, 10, 1};
    const int32_t bad_lo[] = {-1};
    EXPECT_THROWS(embedding_lookup(table.data(), DType::F32, 10, 4, bad_hi, 3, out.data(), 4), ErrorCode::InvalidArgument);
    EXPECT_THROWS(embedding_lookup(table.data(), DType::F32, 10, 4, bad_lo, 1, out.data(), 4), ErrorCode::InvalidArgument);
    bool untouched = true;
    for (float v : out) untouched &= v == -1.0f;
    EXPECT(untouched);  // validated before writing
    try {
      embedding_lookup(table.data(), DType::F32, 10, 4, bad_hi, 3, out.data(), 4);
    } catch (const Error& e) {
      EXPECT(std::string(e.what()).find("10") != std::string::npos);
      EXPECT(std::string(e.what()).find("id") != std::string::npos);
    }
    // q8_0 rows need dim % 32 == 0
    const int32_t ok[] = {0};
    std::vector<uint8_t> qt(34 * 2);
    EXPECT_THROWS(embedding_lookup(qt.data(), DType::Q8_0, 1, 48, ok, 1, out.data(), 48), ErrorCode::InvalidArgument);
  }
}

// ------------------------------------------------------------------ row kernels on a thread pool
// Every row kernel split across a pool gives exactly (bit for bit) the single-threaded result,
// at every ISA level. The sizes are above detail::kRowParallelMinWork so the split really runs.
TEST(row_kernels_thread_pool_bit_identical) {
  const int64_t min_work = 2 * detail::kRowParallelMinWork;
  auto same = [](const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
    const bool eq = a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    if (!eq) ::emollm_test::report_failure(__FILE__, __LINE__, what + ": pool result differs from single-threaded");
  };
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    for (Isa isa : isa_levels()) {
      IsaCapScope cap(isa);
      const std::string t = std::string(" isa=") + isa_name(isa) + " threads=" + std::to_string(threads);
      {  // norms: rows of n with a leading dimension > n
        const int64_t rows = 37, n = 4099, ld = 4111;
        EXPECT(rows * n >= min_work);
        std::vector<float> x = randn(size_t(rows * ld), 1.5f, 7, 0.3f), w = randn(size_t(n), 1.0f, 8),
                           b = randn(size_t(n), 1.0f, 9);
        std::vector<float> y1(size_t(rows * ld), 0.0f), y2 = y1;
        rmsnorm(x.data(), ld, w.data(), y1.data(), ld, rows, n, 1e-6f);
        rmsnorm(x.data(), ld, w.data(), y2.data(), ld, rows, n, 1e-6f, &pool);
        same(y1, y2, "rmsnorm" + t);
        layernorm(x.data(), ld, w.data(), b.data(), y1.data(), ld, rows, n, 1e-5f);
        layernorm(x.data(), ld, w.data(), b.data(), y2.data(), ld, rows, n, 1e-5f, &pool);
        same(y1, y2, "layernorm" + t);
      }
      {  // softmax
        const int64_t rows = 40, n = 2053;
        EXPECT(rows * n >= min_work);
        std::vector<float> x = randn(size_t(rows * n), 4.0f, 11), y1(x.size()), y2(x.size());
        softmax(x.data(), n, y1.data(), n, rows, n);
        softmax(x.data(), n, y2.data(), n, rows, n, &pool);
        same(y1, y2, "softmax" + t);
      }
      {  // activations: an odd length, so the last chunk ends in a masked tail
        const int64_t n = 300001;
        EXPECT(n >= min_work);
        std::vector<float> x = randn(size_t(n), 3.0f, 12), u = randn(size_t(n), 1.0f, 13), y1(static_cast<size_t>(n)), y2(static_cast<size_t>(n));
        silu(x.data(), y1.data(), n);
        silu(x.data(), y2.data(), n, &pool);
        same(y1, y2, "silu" + t);
        gelu_erf(x.data(), y1.data(), n);
        gelu_erf(x.data(), y2.data(), n, &pool);
        same(y1, y2, "gelu_erf" + t);
        quick_gelu(x.data(), y1.data(), n);
        quick_gelu(x.data(), y2.data(), n, &pool);
        same(y1, y2, "quick_gelu" + t);
        swiglu(x.data(), u.data(), y1.data(), n);
        swiglu(x.data(), u.data(), y2.data(), n, &pool);
        same(y1, y2, "swiglu" + t);
        add(x.data(), u.data(), y1.data(), n);
        add(x.data(), u.data(), y2.data(), n, &pool);
        same(y1, y2, "add" + t);
        bool sums = true;
        for (int64_t i = 0; i < n; ++i) sums = sums && y1[size_t(i)] == x[size_t(i)] + u[size_t(i)];
        EXPECT(sums);
      }
      for (RopeLayout layout : {RopeLayout::RotateHalf, RopeLayout::Interleaved}) {  // RoPE over tokens
        const int64_t tokens = 67, heads = 8, head_dim = 128, ld = heads * head_dim + 16;
        EXPECT(tokens * heads * head_dim >= min_work);
        RopeParams p;
        p.head_dim = head_dim;
        p.rot_dim = 96;
        p.layout = layout;
        std::vector<int32_t> pos(static_cast<size_t>(tokens));
        for (int64_t i = 0; i < tokens; ++i) pos[size_t(i)] = int32_t((i * 37) % 1000);
        std::vector<float> y1 = randn(size_t(tokens * ld), 1.0f, 14), y2 = y1;
        rope(y1.data(), ld, tokens, heads, pos.data(), p);
        rope(y2.data(), ld, tokens, heads, pos.data(), p, &pool);
        same(y1, y2, std::string("rope") + (layout == RopeLayout::Interleaved ? " interleaved" : "") + t);
      }
      for (DType dt : {DType::F32, DType::F16, DType::Q8_0}) {  // embedding rows
        const int64_t vocab = 300, dim = 512, n = 211, ld = dim + 8;
        EXPECT(n * dim >= min_work);
        std::vector<float> tf = randn(size_t(vocab * dim), 1.0f, 15);
        std::vector<uint8_t> table(dtype_row_bytes(dt, dim) * size_t(vocab));
        for (int64_t r = 0; r < vocab; ++r)
          quantize_row(dt, tf.data() + r * dim, table.data() + size_t(r) * dtype_row_bytes(dt, dim), dim);
        std::vector<int32_t> ids(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) ids[size_t(i)] = int32_t((i * 131 + 7) % vocab);
        std::vector<float> y1(size_t(n * ld), 0.0f), y2 = y1;
        embedding_lookup(table.data(), dt, vocab, dim, ids.data(), n, y1.data(), ld);
        embedding_lookup(table.data(), dt, vocab, dim, ids.data(), n, y2.data(), ld, &pool);
        same(y1, y2, std::string("embedding ") + dtype_name(dt) + t);
      }
      // Argument errors are still raised before any split.
      std::vector<int32_t> bad{0, 5000};
      std::vector<float> out(2 * 64);
      std::vector<float> tab(64 * 10);
      EXPECT_THROWS(embedding_lookup(tab.data(), DType::F32, 10, 64, bad.data(), 2, out.data(), 64, &pool),
                    ErrorCode::InvalidArgument);
    }
  }
}
