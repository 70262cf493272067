// Tests of emollm::gemm / gemv / ref::gemm (kernels/cpu/gemm*.cpp).
//
// Every weight dtype x every ISA level this CPU supports (capped with IsaCapScope) is compared
// with ref::gemm, which itself is checked against a naive double loop over weights decoded by
// dequantize_row (dtype.cpp), an implementation independent of ref::gemm's own decoding.
//
// Tolerances, per output y[m,n] with S = sum_k |x[m,k] * w[n,k]| + |bias[n]| (w dequantised):
//   f32 arithmetic paths (all dtypes: weights are dequantised exactly to f32, f32 accumulation):
//       |y - ref| <= 1e-5 * S / sqrt(K) + 1e-6        (i.e. 1e-5 * sqrt(K) * mean |x w|)
//   BF16 weights on BF16 dot-product hardware (AVX512-BF16 vdpbf16ps at M > 8, AMX at M >= 16):
//       X is rounded to bf16 (relative error <= 2^-9 per element), products are exact and
//       accumulated in f32, so |y - ref| <= 2^-8 * S + the f32 tolerance above; and, tighter,
//       the result must match ref::gemm on X pre-rounded to bf16 within the f32 tolerance.
//   ref::gemm vs the naive double loop: both accumulate in double: |diff| <= 1e-6 * (|y| + 1e-3).
//   Q8_0/Q4_0 weights in QuantActivations::Q8 mode (the default; llama.cpp numerics) at M <= 8, and
//   at M > 8 on CPUs with AVX512-VNNI (the q8 packed GEMM; without VNNI M > 8 runs the f32 path):
//     - tight: against a double reference on X rounded to q8_0 (quantize_row + dequantize_row),
//       with the f32 tolerance above on Sq = sum |xq w| + |bias| (the int32 block dot products
//       are exact; only the f32 scaling and accumulation round);
//     - loose: against ref::gemm on the f32 X, |y - ref| <= sum over blocks b of
//       0.57 * d_b * sum_{k in b} |w_k| + the f32 tolerance, d_b = amax_b / 127: each activation
//       moves by at most d_b / 2 (rounding) + 127 * 2^-11 * d_b (the fp16 scale) < 0.57 d_b.
//   Tests of the old f32-activation numerics run inside QuantActivationsScope(F32).
// Inputs are uniform in [-1, 1]; X row padding (ldx > K) holds NaN so any read past K fails,
// and Y padding (ldy > N) holds a sentinel that must survive.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../../kernels/cpu/gemm_internal.h"
#if defined(__x86_64__)
#include "../../kernels/cpu/gemm_q8_xpanel.h"
#endif
#include "../../kernels/cpu/kernels.h"
#include "../../base/arena.h"
#include "../../base/error.h"
#include "pool_claims.h"
#include "testing.h"

using namespace emollm;

namespace {

const DType kAllTypes[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0};

std::vector<Isa> isa_levels() {
  std::vector<Isa> v;
  for (int i = 0; i <= int(isa_detected()); ++i) v.push_back(Isa(i));
  return v;
}

std::vector<float> rand_vec(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

struct Weights {
  DType t;
  int64_t N, K;
  size_t rb;
  std::vector<uint8_t> bytes;  // N rows of rb bytes
  std::vector<float> deq;      // N x K, dequantised by dequantize_row
};

Weights make_weights(DType t, int64_t N, int64_t K, uint32_t seed) {
  Weights w{t, N, K, dtype_row_bytes(t, K), {}, {}};
  std::vector<float> src = rand_vec(size_t(N * K), seed);
  w.bytes.assign(w.rb * size_t(N), 0);
  w.deq.resize(size_t(N * K));
  for (int64_t n = 0; n < N; ++n) {
    quantize_row(t, src.data() + n * K, w.bytes.data() + n * w.rb, K);
    dequantize_row(t, w.bytes.data() + n * w.rb, w.deq.data() + n * K, K);
  }
  return w;
}

struct Problem {
  int64_t M, N, K, ldx, ldy;
  std::vector<float> X;     // M x ldx, padding NaN
  std::vector<float> bias;  // N
};

Problem make_problem(int64_t M, int64_t N, int64_t K, int64_t xpad, int64_t ypad, uint32_t seed) {
  Problem p{M, N, K, K + xpad, N + ypad, {}, rand_vec(size_t(N), seed + 7)};
  p.X.assign(size_t(M * p.ldx), NAN);
  std::vector<float> x = rand_vec(size_t(M * K), seed + 3);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) p.X[m * p.ldx + k] = x[m * K + k];
  return p;
}

constexpr float kSentinel = -12345.0f;

// S[m,n] = sum |x w| + |bias|
std::vector<double> abs_scale(const Problem& p, const Weights& w, const float* bias) {
  std::vector<double> s(size_t(p.M * p.N));
  for (int64_t m = 0; m < p.M; ++m)
    for (int64_t n = 0; n < p.N; ++n) {
      double a = bias ? std::fabs(double(bias[n])) : 0.0;
      for (int64_t k = 0; k < p.K; ++k) a += std::fabs(double(p.X[m * p.ldx + k]) * w.deq[n * p.K + k]);
      s[m * p.N + n] = a;
    }
  return s;
}

double f32_tol(double S, int64_t K) { return 1e-5 * S / std::sqrt(double(K)) + 1e-6; }

// Compares Y (M x ldy) with ref (M x ldy); tol_fn(S) gives the tolerance; checks padding.
bool check_result(const std::vector<float>& Y, const std::vector<float>& R, const Problem& p,
                  const std::vector<double>& S, double bf16_rel, const std::string& what) {
  for (int64_t m = 0; m < p.M; ++m) {
    for (int64_t n = 0; n < p.ldy; ++n) {
      const float y = Y[m * p.ldy + n];
      if (n >= p.N) {
        if (!(y == kSentinel)) {
          char buf[256];
          std::snprintf(buf, sizeof buf, "%s: Y padding overwritten at m=%lld n=%lld", what.c_str(), (long long)m,
                        (long long)n);
          emollm_test::report_failure(__FILE__, __LINE__, buf);
          return false;
        }
        continue;
      }
      const float r = R[m * p.ldy + n];
      const double s = S[m * p.N + n];
      const double tol = f32_tol(s, p.K) + bf16_rel * s;
      const double d = std::fabs(double(y) - double(r));
      if (!(d <= tol)) {
        char buf[320];
        std::snprintf(buf, sizeof buf, "%s: m=%lld n=%lld got %.8g want %.8g |diff| %.3g > tol %.3g", what.c_str(),
                      (long long)m, (long long)n, double(y), double(r), d, tol);
        emollm_test::report_failure(__FILE__, __LINE__, buf);
        return false;
      }
    }
  }
  return true;
}

// The BF16 dot-product hardware is used for BF16 weights at M > 8 (see gemm_internal.h kSmallM) and,
// with the small-M path on, from bf16_dot_min_m() up (8 by default), when the level allows it:
// AVX512-BF16 at Avx512+, AMX at Amx above the small-M range (M > 64).
bool uses_bf16_hw(Isa isa, DType t, int64_t M) {
  if (t != DType::BF16 || isa < Isa::Avx512) return false;
  if (M <= 8 && (M < gemm_detail::bf16_dot_min_m() || !gemm_detail::small_m_enabled())) return false;
  const CpuFeatures& f = cpu_features();
  if (isa >= Isa::Amx && f.amx_usable && f.amx_bf16 && M > 64) return true;
  return f.avx512bf16;
}

const char* yesno(bool b) { return b ? "1" : "0"; }

// Turns the AVX-512 VNNI q8 kernels off (the Avx512 level then runs the AVX2 ones) for a scope.
struct VnniScope {
  explicit VnniScope(bool on) : prev_(gemm_detail::vnni_allowed()) { gemm_detail::set_vnni_allowed(on); }
  ~VnniScope() { gemm_detail::set_vnni_allowed(prev_); }
  bool prev_;
};

// The Q8 variants to run at one ISA level: with VNNI (when the CPU has it) and without.
std::vector<bool> vnni_variants(Isa isa) {
  if (isa >= Isa::Avx512 && cpu_features().avx512vnni) return {true, false};
  return {true};
}

// Selects the previous M = 1 VNNI kernel (gemm_internal.h set_q8_gemv_legacy) for a scope.
struct Q8GemvLegacyScope {
  explicit Q8GemvLegacyScope(bool on) : prev_(gemm_detail::q8_gemv_legacy()) { gemm_detail::set_q8_gemv_legacy(on); }
  ~Q8GemvLegacyScope() { gemm_detail::set_q8_gemv_legacy(prev_); }
  bool prev_;
};

// Whether Q8 mode uses q8_0 activations at this level: always at M <= 8; at M > 8 only on the
// AVX512-VNNI packed GEMM (gemm_q8_vnni.cpp), else the f32 packed GEMM runs (f32 numerics).
bool q8_numerics(Isa isa, bool vnni, int64_t M) {
  return M <= 8 || (isa >= Isa::Avx512 && cpu_features().avx512vnni && vnni);
}

// With VNNI at M = 1 both the current and the previous (legacy) kernel run; else one pass.
std::vector<bool> legacy_variants(bool vnni, int64_t M) {
  if (vnni && M == 1 && cpu_features().avx512vnni) return {false, true};
  return {false};
}

// X rounded to q8_0 as the Q8 mode does: xq (same layout as p.X, padding NaN) and, per row and
// block, the loose-tolerance bound's d_b = amax_b / 127.
struct QuantX {
  std::vector<float> xq;
  std::vector<double> d;  // M x K/32
};

QuantX quantize_x(const Problem& p) {
  QuantX q{p.X, std::vector<double>(size_t(p.M * (p.K / kQK)))};
  std::vector<uint8_t> blk(dtype_row_bytes(DType::Q8_0, p.K));
  for (int64_t m = 0; m < p.M; ++m) {
    quantize_row(DType::Q8_0, p.X.data() + m * p.ldx, blk.data(), p.K);
    dequantize_row(DType::Q8_0, blk.data(), q.xq.data() + m * p.ldx, p.K);
    for (int64_t b = 0; b < p.K / kQK; ++b) {
      double amax = 0.0;
      for (int i = 0; i < kQK; ++i) amax = std::max(amax, std::fabs(double(p.X[m * p.ldx + b * kQK + i])));
      q.d[m * (p.K / kQK) + b] = amax / 127.0;
    }
  }
  return q;
}

// Checks a Q8-mode result: tight against the reference on the q8_0-rounded X (Rq, Sq), loose
// against the f32 reference R (see the header).
bool check_q8(const std::vector<float>& Y, const std::vector<float>& Rq, const std::vector<double>& Sq,
              const std::vector<float>& R, const std::vector<double>& S, const QuantX& q, const Problem& p,
              const Weights& w, const std::string& what) {
  if (!check_result(Y, Rq, p, Sq, 0.0, what + " [q8 vs rounded-x ref]")) return false;
  const int64_t nb = p.K / kQK;
  for (int64_t m = 0; m < p.M; ++m)
    for (int64_t n = 0; n < p.N; ++n) {
      double bound = f32_tol(S[m * p.N + n], p.K);
      for (int64_t b = 0; b < nb; ++b) {
        double aw = 0.0;
        for (int i = 0; i < kQK; ++i) aw += std::fabs(double(w.deq[n * p.K + b * kQK + i]));
        bound += 0.57 * q.d[m * nb + b] * aw;
      }
      const double d = std::fabs(double(Y[m * p.ldy + n]) - double(R[m * p.ldy + n]));
      if (!(d <= bound)) {
        char buf[320];
        std::snprintf(buf, sizeof buf, "%s [q8 vs f32 ref]: m=%lld n=%lld got %.8g want %.8g |diff| %.3g > %.3g",
                      what.c_str(), (long long)m, (long long)n, double(Y[m * p.ldy + n]), double(R[m * p.ldy + n]), d,
                      bound);
        emollm_test::report_failure(__FILE__, __LINE__, buf);
        return false;
      }
    }
  return true;
}

// Runs the Q8 (default) mode of a quantised-weight shape through every ISA level, with/without
// VNNI, pool and bias; at M > 8 the levels without the VNNI GEMM are held to the f32 tolerance.
void run_case_q8(const Weights& w, const Problem& p, ThreadPool* pool) {
  const DType t = w.t;
  const int64_t M = p.M, N = p.N, K = p.K;
  const QuantX q = quantize_x(p);
  Problem pq = p;
  pq.X = q.xq;
  for (int use_bias = 0; use_bias < 2; ++use_bias) {
    const float* bias = use_bias ? p.bias.data() : nullptr;
    std::vector<float> R(size_t(M * p.ldy), kSentinel), Rq(size_t(M * p.ldy), kSentinel);
    ref::gemm(p.X.data(), p.ldx, w.bytes.data(), t, bias, R.data(), p.ldy, M, N, K);
    ref::gemm(pq.X.data(), p.ldx, w.bytes.data(), t, bias, Rq.data(), p.ldy, M, N, K);
    const std::vector<double> S = abs_scale(p, w, bias), Sq = abs_scale(pq, w, bias);
    for (Isa isa : isa_levels()) {
      IsaCapScope cap(isa);
      for (bool vnni : vnni_variants(isa))
      for (bool legacy : legacy_variants(vnni && isa >= Isa::Avx512, M)) {
        VnniScope vs(vnni);
        Q8GemvLegacyScope ls(legacy);
        for (int use_pool = 0; use_pool < 2; ++use_pool) {
          ThreadPool* pl = use_pool ? pool : nullptr;
          std::vector<float> Y(size_t(M * p.ldy), kSentinel);
          gemm(p.X.data(), p.ldx, w.bytes.data(), t, bias, Y.data(), p.ldy, M, N, K, pl);
          const std::string what = std::string("q8act ") + dtype_name(t) + " isa=" + isa_name(isa) +
                                   " vnni=" + yesno(vnni) + " legacy=" + yesno(legacy) + " M=" + std::to_string(M) +
                                   " N=" + std::to_string(N) +
                                   " K=" + std::to_string(K) + " ldx=" + std::to_string(p.ldx) +
                                   " ldy=" + std::to_string(p.ldy) + " bias=" + yesno(use_bias) +
                                   " pool=" + yesno(use_pool);
          if (q8_numerics(isa, vnni, M))
            check_q8(Y, Rq, Sq, R, S, q, p, w, what);
          else
            check_result(Y, R, p, S, 0.0, what + " [f32 packed path]");
          if (M == 1 && p.ldx == K && p.ldy == N) {
            std::vector<float> y(size_t(N), kSentinel);
            gemv(p.X.data(), w.bytes.data(), t, bias, y.data(), N, K, pl);
            EXPECT_ALL_CLOSE(y.data(), Y.data(), N, 0.0, 0.0, "gemv == gemm(M=1) " + what);
          }
        }
      }
    }
  }
}

// Runs one shape for one dtype through every ISA level, with/without pool and bias.
void run_case(DType t, int64_t M, int64_t N, int64_t K, int64_t xpad, int64_t ypad, ThreadPool* pool,
              uint32_t seed) {
  Weights w = make_weights(t, N, K, seed);
  Problem p = make_problem(M, N, K, xpad, ypad, seed + 11);
  // Quantised weights: the default Q8 mode, then the f32-exact mode below.
  if (dtype_is_quantized(t)) run_case_q8(w, p, pool);
  QuantActivationsScope f32act(QuantActivations::F32);
  for (int use_bias = 0; use_bias < 2; ++use_bias) {
    const float* bias = use_bias ? p.bias.data() : nullptr;
    std::vector<float> R(size_t(M * p.ldy), kSentinel);
    ref::gemm(p.X.data(), p.ldx, w.bytes.data(), t, bias, R.data(), p.ldy, M, N, K);
    const std::vector<double> S = abs_scale(p, w, bias);
    for (Isa isa : isa_levels()) {
      IsaCapScope cap(isa);
      for (int use_pool = 0; use_pool < 2; ++use_pool) {
        ThreadPool* pl = use_pool ? pool : nullptr;
        std::vector<float> Y(size_t(M * p.ldy), kSentinel);
        gemm(p.X.data(), p.ldx, w.bytes.data(), t, bias, Y.data(), p.ldy, M, N, K, pl);
        const bool hw = uses_bf16_hw(isa, t, M);
        std::string what = std::string(dtype_name(t)) + " isa=" + isa_name(isa) + " M=" + std::to_string(M) +
                           " N=" + std::to_string(N) + " K=" + std::to_string(K) + " ldx=" + std::to_string(p.ldx) +
                           " ldy=" + std::to_string(p.ldy) + " bias=" + yesno(use_bias) + " pool=" + yesno(use_pool);
        check_result(Y, R, p, S, hw ? 1.0 / 256 : 0.0, what);
        if (M == 1 && p.ldx == K && p.ldy == N) {
          std::vector<float> y(size_t(N), kSentinel);
          gemv(p.X.data(), w.bytes.data(), t, bias, y.data(), N, K, pl);
          EXPECT_ALL_CLOSE(y.data(), Y.data(), N, 0.0, 0.0, "gemv == gemm(M=1) " + what);
        }
      }
    }
  }
}

// Reports a failure named `what` unless a and b hold the same floats bit for bit.
void same(const float* a, const float* b, size_t n, const std::string& what) {
  if (std::memcmp(a, b, n * sizeof(float)) != 0) emollm_test::report_failure(__FILE__, __LINE__, what.c_str());
}
void same(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  if (a.size() != b.size()) emollm_test::report_failure(__FILE__, __LINE__, (what + ": sizes differ").c_str());
  else same(a.data(), b.data(), a.size(), what);
}

}  // namespace

// ---------------------------------------------------------------- the reference itself

TEST(gemm_ref_matches_naive_dequantize_row) {
  for (DType t : kAllTypes) {
    const bool q = dtype_is_quantized(t);
    const int64_t Ks[] = {q ? 32 : 1, q ? 64 : 3, q ? 96 : 31, q ? 256 : 100};
    for (int64_t K : Ks)
      for (int64_t M : {1, 3})
        for (int64_t N : {1, 5, 33}) {
          Weights w = make_weights(t, N, K, uint32_t(K * 31 + N));
          Problem p = make_problem(M, N, K, 3, 2, uint32_t(M + K));
          for (int use_bias = 0; use_bias < 2; ++use_bias) {
            const float* bias = use_bias ? p.bias.data() : nullptr;
            std::vector<float> R(size_t(M * p.ldy), kSentinel), E(size_t(M * p.ldy), kSentinel);
            ref::gemm(p.X.data(), p.ldx, w.bytes.data(), t, bias, R.data(), p.ldy, M, N, K);
            for (int64_t m = 0; m < M; ++m)
              for (int64_t n = 0; n < N; ++n) {
                double s = bias ? double(bias[n]) : 0.0;
                for (int64_t k = 0; k < K; ++k) s += double(p.X[m * p.ldx + k]) * double(w.deq[n * K + k]);
                E[m * p.ldy + n] = float(s);
              }
            EXPECT_ALL_CLOSE(R.data(), E.data(), M * p.ldy, 1e-9, 1e-6,
                             std::string("ref vs naive ") + dtype_name(t) + " K=" + std::to_string(K));
          }
        }
  }
}

// Hand-built blocks pin the ggml layouts: q4_0 element i < 16 is the low nibble of qs[i],
// element i >= 16 the high nibble of qs[i-16], value d * (nibble - 8); q8_0 value d * qs[i].
TEST(gemm_block_layouts_by_hand) {
  BlockQ4_0 b4;
  b4.d = 0x3C00;  // 1.0 in binary16
  for (int i = 0; i < 16; ++i) b4.qs[i] = uint8_t(i | ((15 - i) << 4));
  BlockQ8_0 b8;
  b8.d = 0x3800;  // 0.5
  for (int i = 0; i < 32; ++i) b8.qs[i] = int8_t(i * 7 - 100);
  // M = 32: X = identity, row j of Y picks element j (packed GEMM); M = 1: x = e_j (dot kernels).
  std::vector<float> I(32 * 32, 0.0f);
  for (int i = 0; i < 32; ++i) I[i * 32 + i] = 1.0f;
  QuantActivationsScope f32act(QuantActivations::F32);  // exact products (see gemm_q8act_by_hand)
  for (Isa isa : isa_levels()) {
    IsaCapScope cap(isa);
    for (int64_t M : {1, 32}) {
      for (int variant = 0; variant < 2; ++variant) {
        const DType t = variant ? DType::Q8_0 : DType::Q4_0;
        const void* W = variant ? static_cast<const void*>(&b8) : static_cast<const void*>(&b4);
        for (int ref_path = 0; ref_path < 2; ++ref_path) {
          for (int j = 0; j < 32; ++j) {
            std::vector<float> x(32, 0.0f);
            const float* X = M == 1 ? x.data() : I.data();
            if (M == 1) x[j] = 1.0f;
            std::vector<float> y(size_t(M), 0.0f);
            if (ref_path)
              ref::gemm(X, 32, W, t, nullptr, y.data(), 1, M, 1, 32);
            else
              gemm(X, 32, W, t, nullptr, y.data(), 1, M, 1, 32, nullptr);
            const int row = M == 1 ? 0 : j;
            float want;
            if (variant)
              want = 0.5f * float(j * 7 - 100);
            else
              want = j < 16 ? float(j - 8) : float(15 - (j - 16) - 8);
            if (!(y[row] == want)) {
              char buf[200];
              std::snprintf(buf, sizeof buf, "%s %s isa=%s M=%lld element %d: got %g want %g", dtype_name(t),
                            ref_path ? "ref" : "gemm", isa_name(isa), (long long)M, j, double(y[row]), double(want));
              emollm_test::report_failure(__FILE__, __LINE__, buf);
            }
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------- every path vs the reference

TEST(gemm_plain_types_odd_shapes) {
  ThreadPool pool(2);
  uint32_t seed = 1;
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (int64_t M : {1, 2, 3, 7, 17, 64})
      for (int64_t N : {1, 5, 33, 100})
        for (int64_t K : {1, 3, 31, 100}) {
          const int64_t pad = (seed % 3 == 0) ? 5 : 0;
          run_case(t, M, N, K, pad, pad ? 3 : 0, &pool, seed++);
        }
}

TEST(gemm_quantized_odd_shapes) {
  ThreadPool pool(2);
  uint32_t seed = 1000;
  for (DType t : {DType::Q8_0, DType::Q4_0})
    for (int64_t M : {1, 2, 3, 7, 17, 64})
      for (int64_t N : {1, 5, 33, 100})
        for (int64_t K : {32, 64, 96, 4096}) {
          if (K == 4096 && M == 64 && N == 100) continue;  // covered by the long-row test's cost budget
          const int64_t pad = (seed % 3 == 0) ? 7 : 0;
          run_case(t, M, N, K, pad, pad ? 2 : 0, &pool, seed++);
        }
}

TEST(gemm_plain_types_k4096) {
  ThreadPool pool(2);
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (int64_t M : {1, 4, 6, 8, 9})
      for (int64_t N : {5, 70}) run_case(t, M, N, 4096, 1, 1, &pool, uint32_t(M * 100 + N));
}

TEST(gemm_long_rows_k11008) {
  ThreadPool pool(2);
  for (DType t : kAllTypes)
    for (int64_t M : {1, 3, 5, 12}) run_case(t, M, 9, 11008, M == 3 ? 16 : 0, 0, &pool, uint32_t(M + 77));
}

// gemm_huge_pages (weights the caller keeps in 2 MiB pages): at M = 1 the BF16 / F16 single-stream
// GEMV (one row at a time: 64-element steps, then 32 (bf16) / 16 (f16) with a masked tail; the
// multi-row kernels plain gemm() runs at M = 1 are covered by run_case's shapes); at M > 1 gemm()'s
// kernels. Against ref::gemm (double accumulation) within the f32 tolerance, every ISA level,
// with / without pool and bias; K covers every tail of both step sizes; N = 1001 walks the split
// (chunks of N / 16 shrinking to 8 rows, odd tail). The single stream on the pool also under the
// other schedule (set_gemv_ranges: contiguous ranges per thread or guided chunks) and on 3
// threads: the same bits.
TEST(gemm_huge_pages_single_stream_gemv) {
  ThreadPool pool(2), pool3(3);
  uint32_t seed = 9100;
  for (DType t : {DType::F16, DType::BF16, DType::F32})
    for (int64_t K : {1, 15, 16, 31, 32, 33, 63, 64, 65, 100, 128, 2048, 2061})
      for (int64_t M : {1, 3}) {
        const int64_t N = K == 2048 && M == 1 ? 1001 : K >= 2048 ? 70 : 37;  // 1001: guided chunks shrink to 8 rows
        Weights w = make_weights(t, N, K, seed);
        Problem p = make_problem(M, N, K, 0, 0, seed + 11);
        seed += 17;
        for (int use_bias = 0; use_bias < 2; ++use_bias) {
          const float* bias = use_bias ? p.bias.data() : nullptr;
          std::vector<float> R(size_t(M * p.ldy), kSentinel);
          ref::gemm(p.X.data(), p.ldx, w.bytes.data(), t, bias, R.data(), p.ldy, M, N, K);
          const std::vector<double> S = abs_scale(p, w, bias);
          for (Isa isa : isa_levels()) {
            IsaCapScope cap(isa);
            for (int use_pool = 0; use_pool < 2; ++use_pool) {
              std::vector<float> Y(size_t(M * p.ldy), kSentinel);
              gemm_huge_pages(p.X.data(), p.ldx, w.bytes.data(), t, bias, Y.data(), p.ldy, M, N, K,
                              use_pool ? &pool : nullptr);
              const std::string what = std::string("gemm_huge_pages ") + dtype_name(t) + " isa=" + isa_name(isa) +
                                       " M=" + std::to_string(M) + " K=" + std::to_string(K) +
                                       " bias=" + yesno(use_bias) + " pool=" + yesno(use_pool);
              check_result(Y, R, p, S, uses_bf16_hw(isa, t, M) ? 1.0 / 256 : 0.0, what);
              if (use_pool && M == 1) {
                const bool ranges = gemm_detail::gemv_ranges();
                std::vector<float> Y2(size_t(M * p.ldy), kSentinel), Y3(size_t(M * p.ldy), kSentinel);
                gemm_detail::set_gemv_ranges(!ranges);
                gemm_huge_pages(p.X.data(), p.ldx, w.bytes.data(), t, bias, Y2.data(), p.ldy, M, N, K, &pool);
                gemm_detail::set_gemv_ranges(true);
                gemm_huge_pages(p.X.data(), p.ldx, w.bytes.data(), t, bias, Y3.data(), p.ldy, M, N, K, &pool3);
                gemm_detail::set_gemv_ranges(ranges);
                EXPECT(std::memcmp(Y2.data(), Y.data(), Y.size() * sizeof(float)) == 0);
                EXPECT(std::memcmp(Y3.data(), Y.data(), Y.size() * sizeof(float)) == 0);
              }
            }
          }
        }
      }
}

// F16 at M = 1 (the stream kernels on huge pages, the dot kernels on plain memory) widen every f16
// class as vcvtph2ps does: an infinite or NaN weight makes its row's output non-finite (an integer
// shift-and-scale widening of normals alone would turn it into 65536-131008), and rows of only
// subnormal weights are not flushed (x large so that their products are normal f32s): each within
// the f32 tolerance of ref::gemm. N past multiples of 4, K with tails. What a cheaper widening on
// Zen 4 must keep (session 26 measured one: bench/README, h-f16).
TEST(gemm_f16_gemv_special_values) {
  ThreadPool pool2(2);
  ThreadPool* pools[] = {nullptr, &pool2};
  for (int64_t K : {64, 100, 2061})
    for (int64_t N : {6, 13}) {
      std::vector<uint16_t> h(size_t(N * K));
      uint32_t r = 12345u + uint32_t(K * 7 + N);
      auto next = [&] { r = r * 1664525u + 1013904223u; return r >> 8; };
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
          const uint32_t v = next();
          uint16_t b = uint16_t(0x3000 + v % 0x1000);  // normals around 0.125..1
          if (n % 3 == 1) b = uint16_t(1 + v % 0x3FF);  // subnormals only
          if (v & 1) b |= 0x8000;
          h[size_t(n * K + k)] = b;
        }
      // row 0: one +inf, row 2: one NaN, row 3: a -inf late in the row (the tail when K has one)
      h[size_t(0 * K + K / 3)] = 0x7C00;
      h[size_t(2 * K + 1)] = 0x7E01;
      h[size_t(3 * K + K - 1)] = 0xFC00;
      std::vector<float> x(static_cast<size_t>(K));
      for (int64_t k = 0; k < K; ++k) x[size_t(k)] = float(int(next() % 2001) - 1000) * 65.0f;  // |x| up to 65000
      std::vector<float> R(size_t(N), kSentinel);
      ref::gemm(x.data(), K, h.data(), DType::F16, nullptr, R.data(), N, 1, N, K);
      for (ThreadPool* pool : pools)
        for (int huge = 0; huge < 2; ++huge) {
          const std::string what = std::string(huge ? "gemm_huge_pages" : "gemm") + " f16 special values N=" +
                                   std::to_string(N) + " K=" + std::to_string(K) +
                                   " threads=" + std::to_string(pool ? pool->size() : 1);
          std::vector<float> Y(size_t(N), kSentinel);
          if (huge)
            gemm_huge_pages(x.data(), K, h.data(), DType::F16, nullptr, Y.data(), N, 1, N, K, pool);
          else
            gemm(x.data(), K, h.data(), DType::F16, nullptr, Y.data(), N, 1, N, K, pool);
          for (int64_t n = 0; n < N; ++n) {
            const float y = Y[size_t(n)], ref_y = R[size_t(n)];
            if (n == 0 || n == 2 || n == 3) {
              if (std::isfinite(y))
                emollm_test::report_failure(__FILE__, __LINE__, what + ": row " + std::to_string(n) +
                                                                    " holds an inf / NaN weight but gave " + std::to_string(y));
              continue;
            }
            double scale = 0;
            for (int64_t k = 0; k < K; ++k)
              scale += std::fabs(double(x[size_t(k)]) * double(f16_to_f32(h[size_t(n * K + k)])));
            const double tol = 1e-5 * scale / std::sqrt(double(K)) + 1e-30;
            if (!(std::fabs(double(y) - double(ref_y)) <= tol) || (n % 3 == 1 && y == 0.0f && scale > 0))
              emollm_test::report_failure(__FILE__, __LINE__, what + ": row " + std::to_string(n) + " gave " +
                                                                  std::to_string(y) + ", reference " + std::to_string(ref_y));
          }
        }
    }
}

// BF16 at M = 1 on plain memory (4 KiB pages): the 8-row block kernel (gemm_avx512.cpp
// bf16_gemv_block; rows past a multiple of 8 one at a time) with each software prefetch hint, T0,
// non-temporal or none (set_gemv_block_prefetch, decode_tuning.h block_prefetch): the same bits as
// T0 (the hint only adds or drops prefetch instructions), within the f32 tolerance of ref::gemm;
// N below, at and past multiples of 8, K over the 32-element step's tails, with and without a pool.
TEST(gemm_bf16_gemv_block_prefetch_same_bits) {
  if (isa_active() < Isa::Avx512) {
    std::printf("  skip gemm_bf16_gemv_block_prefetch_same_bits: the block kernel needs AVX-512 (active ISA: %s)\n",
                isa_name(isa_active()));
    return;
  }
  using gemm_detail::GemvPrefetch;
  ThreadPool pool2(2);
  ThreadPool* pools[] = {nullptr, &pool2};
  uint32_t seed = 9300;
  const GemvPrefetch prev = gemm_detail::gemv_block_prefetch();
  for (int64_t K : {1, 31, 32, 95, 1024, 2061})
    for (int64_t N : {1, 7, 8, 9, 70, 515}) {
      Weights w = make_weights(DType::BF16, N, K, seed);
      Problem p = make_problem(1, N, K, 0, 0, seed + 11);
      seed += 17;
      std::vector<float> R(size_t(p.ldy), kSentinel);
      ref::gemm(p.X.data(), p.ldx, w.bytes.data(), DType::BF16, p.bias.data(), R.data(), p.ldy, 1, N, K);
      const std::vector<double> S = abs_scale(p, w, p.bias.data());
      for (ThreadPool* pool : pools) {
        const std::string what = "bf16 block GEMV N=" + std::to_string(N) + " K=" + std::to_string(K) +
                                 " threads=" + std::to_string(pool ? pool->size() : 1);
        std::vector<float> Y0(size_t(p.ldy), kSentinel);
        gemm_detail::set_gemv_block_prefetch(GemvPrefetch::T0);
        gemm(p.X.data(), p.ldx, w.bytes.data(), DType::BF16, p.bias.data(), Y0.data(), p.ldy, 1, N, K, pool);
        check_result(Y0, R, p, S, 0.0, what);
        for (GemvPrefetch pf : {GemvPrefetch::Nta, GemvPrefetch::None}) {
          std::vector<float> Yp(size_t(p.ldy), kSentinel);
          gemm_detail::set_gemv_block_prefetch(pf);
          gemm(p.X.data(), p.ldx, w.bytes.data(), DType::BF16, p.bias.data(), Yp.data(), p.ldy, 1, N, K, pool);
          if (std::memcmp(Y0.data(), Yp.data(), Yp.size() * sizeof(float)) != 0)
            emollm_test::report_failure(__FILE__, __LINE__,
                                        what + (pf == GemvPrefetch::Nta ? ": prefetchnta" : ": no prefetch") +
                                            " changed the bits");
        }
      }
    }
  gemm_detail::set_gemv_block_prefetch(prev);
}

// gemm_huge_pages' M = 1 GEMV with several streams per thread (gemm_avx512.cpp gemv_streams: rows
// from 4 parts of a thread's range side by side; the default) against ref::gemm (float64
// accumulation) within the f32 tolerance (f32_tol: 1e-5 * sum|x w| / sqrt(K) + 1e-6), and the same
// bits as each row computed alone (an N = 1 call: the one-stream kernel gemv_stream, which runs the
// rows left over after the streams; each row's sums are that kernel's) and as the stream kernel
// with each software prefetch hint, T0, non-temporal or none (set_gemv_streams_prefetch):
// N below, at and past multiples of 4 (rows left over after the streams), K over every tail of the
// 64-element step, without a pool, on 2 and 3 threads, with and without bias. AVX-512 only (the
// only ISA that runs these kernels).
TEST(gemm_huge_pages_multi_stream_gemv) {
  if (isa_active() < Isa::Avx512) {
    std::printf("  skip gemm_huge_pages_multi_stream_gemv: the stream kernels need AVX-512 (active ISA: %s)\n",
                isa_name(isa_active()));
    return;
  }
  ThreadPool pool2(2), pool3(3);
  ThreadPool* pools[] = {nullptr, &pool2, &pool3};
  uint32_t seed = 9700;
  for (DType t : {DType::BF16, DType::F16})
    for (int64_t K : {1, 33, 64, 100, 2048, 2061})
      for (int64_t N : {1, 3, 4, 5, 7, 70, 1001}) {
        if (K >= 2048 && N == 1001 && t == DType::F16) continue;  // the bf16 case walks the long split already
        Weights w = make_weights(t, N, K, seed);
        Problem p = make_problem(1, N, K, 0, 0, seed + 11);
        seed += 17;
        for (int use_bias = 0; use_bias < 2; ++use_bias) {
          const float* bias = use_bias ? p.bias.data() : nullptr;
          std::vector<float> R(size_t(p.ldy), kSentinel);
          ref::gemm(p.X.data(), p.ldx, w.bytes.data(), t, bias, R.data(), p.ldy, 1, N, K);
          const std::vector<double> S = abs_scale(p, w, bias);
          for (ThreadPool* pool : pools) {
            const std::string what = std::string("multi-stream GEMV ") + dtype_name(t) + " N=" + std::to_string(N) +
                                     " K=" + std::to_string(K) + " bias=" + yesno(use_bias) +
                                     " threads=" + std::to_string(pool ? pool->size() : 1);
            std::vector<float> Y(size_t(p.ldy), kSentinel), Y1(size_t(p.ldy), kSentinel);
            gemm_huge_pages(p.X.data(), p.ldx, w.bytes.data(), t, bias, Y.data(), p.ldy, 1, N, K, pool);
            const size_t row_bytes = size_t(K) * 2;  // bf16 / f16
            for (int64_t n = 0; n < N; ++n)  // each row alone: one stream (gemv_stream)
              gemm_huge_pages(p.X.data(), p.ldx, w.bytes.data() + size_t(n) * row_bytes, t, bias ? bias + n : nullptr,
                              Y1.data() + n, 1, 1, 1, K, pool);
            check_result(Y, R, p, S, 0.0, what);
            if (std::memcmp(Y.data(), Y1.data(), size_t(N) * sizeof(float)) != 0)
              emollm_test::report_failure(__FILE__, __LINE__, what + ": not the one-stream kernel's bits (rows alone)");
            // the other software prefetch hints (set_gemv_streams_prefetch): only the prefetch
            // instructions differ, so the same bits again
            for (gemm_detail::GemvPrefetch pf :
                 {gemm_detail::GemvPrefetch::T0, gemm_detail::GemvPrefetch::Nta, gemm_detail::GemvPrefetch::None}) {
              std::vector<float> Yp(size_t(p.ldy), kSentinel);
              const gemm_detail::GemvPrefetch prev = gemm_detail::gemv_streams_prefetch();
              gemm_detail::set_gemv_streams_prefetch(pf);
              gemm_huge_pages(p.X.data(), p.ldx, w.bytes.data(), t, bias, Yp.data(), p.ldy, 1, N, K, pool);
              gemm_detail::set_gemv_streams_prefetch(prev);
              if (std::memcmp(Y.data(), Yp.data(), Y.size() * sizeof(float)) != 0)
                emollm_test::report_failure(__FILE__, __LINE__,
                                            what + (pf == gemm_detail::GemvPrefetch::Nta  ? ": prefetchnta"
                                                    : pf == gemm_detail::GemvPrefetch::T0 ? ": prefetcht0"
                                                                                          : ": no prefetch") +
                                                " changed the bits");
            }
          }
        }
      }
}

// The bf16 / f16 stream kernels' rows of K >= 4096 on 6 streams a thread (set_gemv_half_long_streams,
// gemm_avx512.cpp kHalfLongK), with and without the two-step runs (set_gemv_half_long_runs 2, or 1:
// F16 rows only, bf16 the one-step walk; no stream prefetch), against 4 streams and against each row alone (the one-stream kernel
// gemv_stream): the same bits; and within the f32 tolerance of ref::gemm. N below, at and past
// multiples of 6 and 4 (rows left over after the streams), K at the threshold and past it with a
// tail (4133: 37 columns; 4165: one 64-column step after the last run and 5 columns; 4480), 1-3
// threads, with bias. AVX-512 only. (Session 32: x's two steps swapped in the runs failed 240 checks.)
TEST(gemm_huge_pages_half_long_streams_same_bits) {
  if (isa_active() < Isa::Avx512) {
    std::printf("  skip gemm_huge_pages_half_long_streams_same_bits: the stream kernels need AVX-512 (active ISA: %s)\n",
                isa_name(isa_active()));
    return;
  }
  ThreadPool pool2(2), pool3(3);
  ThreadPool* pools[] = {nullptr, &pool2, &pool3};
  const int prev = gemm_detail::gemv_half_long_streams(), prev_runs = gemm_detail::gemv_half_long_runs();
  const gemm_detail::GemvPrefetch prev_pf = gemm_detail::gemv_streams_prefetch();
  uint32_t seed = 9900;
  for (DType t : {DType::BF16, DType::F16})
    for (int64_t K : {4096, 4133, 4165, 4480})
      for (int64_t N : {5, 6, 7, 13, 24, 61}) {
        Weights w = make_weights(t, N, K, seed);
        Problem p = make_problem(1, N, K, 0, 0, seed + 11);
        seed += 17;
        const float* bias = p.bias.data();
        std::vector<float> R(size_t(p.ldy), kSentinel);
        ref::gemm(p.X.data(), p.ldx, w.bytes.data(), t, bias, R.data(), p.ldy, 1, N, K);
        const std::vector<double> S = abs_scale(p, w, bias);
        std::vector<float> Y1(size_t(p.ldy), kSentinel);
        const size_t row_bytes = size_t(K) * 2;  // bf16 / f16
        for (int64_t n = 0; n < N; ++n)  // each row alone: one stream (gemv_stream)
          gemm_huge_pages(p.X.data(), p.ldx, w.bytes.data() + size_t(n) * row_bytes, t, bias + n, Y1.data() + n, 1, 1, 1,
                          K, nullptr);
        for (ThreadPool* pool : pools)
          for (int streams : {4, 6})
            for (int runs : {0, 1, 2}) {  // set_gemv_half_long_runs: one step of each stream in turn / F16 rows / all
            const std::string what = std::string("half long-row GEMV ") + dtype_name(t) + " N=" + std::to_string(N) +
                                     " K=" + std::to_string(K) + " streams=" + std::to_string(streams) +
                                     " runs=" + std::to_string(runs) + " threads=" + std::to_string(pool ? pool->size() : 1);
            std::vector<float> Y(size_t(p.ldy), kSentinel);
            gemm_detail::set_gemv_half_long_streams(streams);
            gemm_detail::set_gemv_half_long_runs(runs);
            if (runs) gemm_detail::set_gemv_streams_prefetch(gemm_detail::GemvPrefetch::None);  // the runs' condition
            gemm_huge_pages(p.X.data(), p.ldx, w.bytes.data(), t, bias, Y.data(), p.ldy, 1, N, K, pool);
            gemm_detail::set_gemv_half_long_streams(prev);
            gemm_detail::set_gemv_half_long_runs(prev_runs);
            gemm_detail::set_gemv_streams_prefetch(prev_pf);
            check_result(Y, R, p, S, 0.0, what);
            if (std::memcmp(Y.data(), Y1.data(), size_t(N) * sizeof(float)) != 0)
              emollm_test::report_failure(__FILE__, __LINE__, what + ": not the one-stream kernel's bits (rows alone)");
          }
      }
}

// The stream kernels' M = 1 rows (gemm_huge_pages at M = 1 for bf16 / f16 / f32, and fused over
// several outputs by gemv_huge_pages_multi) with each thread's first claim all of its range but 0 /
// 1 / 3 steps of 8 rows (set_gemv_streams_owner_keep; -1: claims of at most 1/8 of a range) give
// the bits of one thread, on 2 and 3 threads, called 10 times each: odd row counts (1001, 2561,
// 11263: claims and ranges ending off the 8-row steps and the 4 streams), K with a tail of the
// 64-element step (100, 2061) and long rows (4133) on 4 and 6 streams; the fused 1.1B q / k / v
// (2048 + 256 + 256) and odd outputs (1001 + 37 + 300). And the setter's floor: below -1 reads -1.
TEST(gemm_huge_pages_stream_claims_same_bits) {
  if (isa_active() < Isa::Avx512) {
    std::printf("  skip gemm_huge_pages_stream_claims_same_bits: the stream kernels need AVX-512 (active ISA: %s)\n",
                isa_name(isa_active()));
    return;
  }
  struct KeepScope {
    explicit KeepScope(int k) : prev_(gemm_detail::gemv_streams_owner_keep()) { gemm_detail::set_gemv_streams_owner_keep(k); }
    ~KeepScope() { gemm_detail::set_gemv_streams_owner_keep(prev_); }
    int prev_;
  };
  struct StreamsScope {
    explicit StreamsScope(int s) : prev_(gemm_detail::gemv_half_long_streams()) { gemm_detail::set_gemv_half_long_streams(s); }
    ~StreamsScope() { gemm_detail::set_gemv_half_long_streams(prev_); }
    int prev_;
  };
  {
    KeepScope ks(-7);
    EXPECT(gemm_detail::gemv_streams_owner_keep() == -1);
  }
  ThreadPool pool2(2), pool3(3);
  struct Shape {
    int64_t N, K;
  };
  const Shape shapes[] = {{1001, 100}, {2561, 100}, {11263, 100}, {1001, 2061}, {1001, 4133}};
  uint32_t seed = 9950;
  int compared = 0;
  for (DType t : {DType::BF16, DType::F16, DType::F32}) {
    for (const Shape& sh : shapes) {
      const int64_t N = sh.N, K = sh.K;
      Weights w = make_weights(t, N, K, seed);
      Problem p = make_problem(1, N, K, 0, 0, seed + 11);
      seed += 17;
      const float* bias = p.bias.data();
      for (int streams : {4, 6}) {
        if (streams == 6 && (K < 4096 || t == DType::F32)) continue;  // 6 streams: bf16 / f16 rows of K >= 4096
        StreamsScope ss(streams);
        std::vector<float> ref(static_cast<size_t>(N), kSentinel), y(static_cast<size_t>(N));
        gemm_huge_pages(p.X.data(), p.ldx, w.bytes.data(), t, bias, ref.data(), N, 1, N, K, nullptr);
        for (ThreadPool* pool : {&pool2, &pool3})
          for (int keep : {-1, 0, 1, 3}) {
            KeepScope ks(keep);
            bool same = true;
            for (int rep = 0; rep < 10; ++rep) {
              std::fill(y.begin(), y.end(), kSentinel);
              gemm_huge_pages(p.X.data(), p.ldx, w.bytes.data(), t, bias, y.data(), N, 1, N, K, pool);
              same = same && std::memcmp(y.data(), ref.data(), size_t(N) * sizeof(float)) == 0;
            }
            if (!same)
              emollm_test::report_failure(__FILE__, __LINE__,
                                          std::string(dtype_name(t)) + " N=" + std::to_string(N) + " K=" +
                                              std::to_string(K) + " streams " + std::to_string(streams) + " threads " +
                                              std::to_string(pool->size()) + " owner_keep " + std::to_string(keep) +
                                              ": not one thread's bits");
            ++compared;
          }
      }
    }
    for (const std::vector<int64_t>& ns : {std::vector<int64_t>{2048, 256, 256}, std::vector<int64_t>{1001, 37, 300}}) {
      const int64_t K = 100;
      const std::vector<float> x = rand_vec(size_t(K), seed++);
      std::vector<Weights> ws;
      std::vector<std::vector<float>> refs, ys;
      GemvOutput outs[3];
      for (size_t j = 0; j < ns.size(); ++j) {
        ws.push_back(make_weights(t, ns[j], K, seed++));
        refs.emplace_back(size_t(ns[j]));
        ys.emplace_back(size_t(ns[j]));
        gemm_huge_pages(x.data(), K, ws[j].bytes.data(), t, nullptr, refs[j].data(), ns[j], 1, ns[j], K, nullptr);
      }
      for (size_t j = 0; j < ns.size(); ++j) outs[j] = GemvOutput{ws[j].bytes.data(), nullptr, ys[j].data(), ns[j]};
      for (ThreadPool* pool : {&pool2, &pool3})
        for (int keep : {-1, 0, 1, 3}) {
          KeepScope ks(keep);
          for (int rep = 0; rep < 10; ++rep) {
            for (auto& v : ys) std::fill(v.begin(), v.end(), kSentinel);
            gemv_huge_pages_multi(x.data(), t, outs, int(ns.size()), K, pool);
            for (size_t j = 0; j < ns.size(); ++j)
              EXPECT(std::memcmp(ys[j].data(), refs[j].data(), size_t(ns[j]) * sizeof(float)) == 0);
          }
          ++compared;
        }
    }
  }
  // pools x owner_keep x (3 types x (5 shapes + 2 fused) + 2 six-stream runs: bf16 / f16 at K = 4133)
  EXPECT(compared == 2 * 4 * (3 * 7 + 2));
}

// The stream kernels' dispatch takes set_gemv_streams_owner_keep (the test above shows only that
// every setting keeps the bits, which a dispatch that dropped it would too): at 2 threads on the
// 1.1B's gate+up rows (11264, 1408 steps of 8 rows) each thread's first claim all of its range but
// 0 / 1 steps makes fewer chunks (about 1-2 a range) than claims of shrinking quarters (-1: ~25 a
// range), counted by base/pool_stats.h pool_range_chunks_this_thread, the fewest of 5 calls (a
// call whose worker joined in time). K = 256: the claims do not depend on K.
TEST(gemm_huge_pages_stream_owner_keep_taken) {
  if (isa_active() < Isa::Avx512) {
    std::printf("  skip gemm_huge_pages_stream_owner_keep_taken: the stream kernels need AVX-512 (active ISA: %s)\n",
                isa_name(isa_active()));
    return;
  }
  struct Restore {
    int keep = gemm_detail::gemv_streams_owner_keep();
    bool ranges = gemm_detail::gemv_ranges();
    ~Restore() { gemm_detail::set_gemv_streams_owner_keep(keep), gemm_detail::set_gemv_ranges(ranges); }
  } restore;
  gemm_detail::set_gemv_ranges(true);
  ThreadPool pool(2);
  const int64_t N = 11264, K = 256;
  uint32_t seed = 9990;
  for (DType t : {DType::BF16, DType::F16, DType::F32}) {
    Weights w = make_weights(t, N, K, seed++);
    Problem p = make_problem(1, N, K, 0, 0, seed++);
    std::vector<float> y(static_cast<size_t>(N));
    auto chunks = [&](int keep) {
      gemm_detail::set_gemv_streams_owner_keep(keep);
      return emollm_test::fewest_range_chunks(pool, 5, [&] {
        gemm_huge_pages(p.X.data(), p.ldx, w.bytes.data(), t, nullptr, y.data(), N, 1, N, K, &pool);
      });
    };
    const uint64_t quarters = chunks(-1), whole = chunks(0), one = chunks(1);
    if (!(whole < quarters && one < quarters))
      emollm_test::report_failure(__FILE__, __LINE__,
                                  std::string(dtype_name(t)) + ": chunks owner_keep -1 / 0 / 1 " +
                                      std::to_string(quarters) + " / " + std::to_string(whole) + " / " +
                                      std::to_string(one) + ": the dispatch does not take owner_keep");
  }
}

// Shapes that cross every blocking boundary of the packed GEMM (KC = 256 / 512 k, NC = 512 rows,
// panels of 64 and 16, 6-row microkernels) with tails everywhere.
TEST(gemm_blocked_large) {
  ThreadPool pool(2);
  for (DType t : kAllTypes) {
    const int64_t K = dtype_is_quantized(t) ? 1056 : 1031;
    run_case(t, 67, 601, K, 3, 5, &pool, 4242);
  }
  run_case(DType::F32, 130, 7, 300, 0, 0, &pool, 99);  // few columns: split over M
}

// The AVX-512 f32 packed GEMM's driver (X packed per k block, next tiles prefetched) on shapes whose
// M, N and K are not multiples of the 6 x 64 tile or of the 256-wide k block (1, 5, 7, 63, 65, 577;
// M > 8, the small-M path off), plus row-chunked ones (X packed in chunks of at most 24 MiB):
// K = 11008, 600 rows in two; K = 4099 / 2816 at 577 / 784 rows in one. F32 and F16 weights, bias,
// padded rows, with and without a pool: within the f32 tolerance of ref::gemm (double
// accumulation), and the same bits with and without the pool (every output's sum is fixed by K).
// (It was compared bit for bit with the previous driver, removed with EMOLLM_F32_GEMM_BLOCKED.)
TEST(gemm_f32_packed_drivers) {
#if defined(__x86_64__)
  if (isa_detected() < Isa::Avx512) {
    std::printf("  skip gemm_f32_packed_drivers: no AVX-512 on this CPU\n");
    return;
  }
  IsaCapScope cap(Isa::Avx512);
  ThreadPool pool(2);
  struct Shape { int64_t M, N, K; };
  std::vector<Shape> shapes;
  for (int64_t M : {9, 65, 577})
    for (int64_t N : {1, 5, 7, 63, 65, 577})
      for (int64_t K : {1, 5, 7, 63, 65, 577}) shapes.push_back({M, N, K});
  shapes.push_back({577, 7, 4099});
  shapes.push_back({784, 5, 2816});
  shapes.push_back({600, 3, 11008});
  uint32_t seed = 500;
  for (DType t : {DType::F32, DType::F16})
    for (const Shape sh : shapes) {
      ++seed;
      Weights w = make_weights(t, sh.N, sh.K, seed);
      Problem p = make_problem(sh.M, sh.N, sh.K, seed % 2 ? 3 : 0, seed % 3 ? 0 : 2, seed + 7);
      const float* bias = seed % 2 ? p.bias.data() : nullptr;
      std::vector<float> R(size_t(sh.M * p.ldy), kSentinel);
      ref::gemm(p.X.data(), p.ldx, w.bytes.data(), t, bias, R.data(), p.ldy, sh.M, sh.N, sh.K);
      const std::vector<double> S = abs_scale(p, w, bias);
      std::vector<float> Y[2];
      for (int use_pool = 0; use_pool < 2; ++use_pool) {
        Y[use_pool].assign(size_t(sh.M * p.ldy), kSentinel);
        gemm_detail::set_small_m_enabled(false);
        gemm(p.X.data(), p.ldx, w.bytes.data(), t, bias, Y[use_pool].data(), p.ldy, sh.M, sh.N, sh.K,
             use_pool ? &pool : nullptr);
        gemm_detail::set_small_m_enabled(true);
        check_result(Y[use_pool], R, p, S, 0.0,
                     std::string("f32 packed driver ") + dtype_name(t) + " M=" + std::to_string(sh.M) +
                         " N=" + std::to_string(sh.N) + " K=" + std::to_string(sh.K) + " pool=" + yesno(use_pool));
      }
      if (std::memcmp(Y[0].data(), Y[1].data(), Y[0].size() * sizeof(float)) != 0)
        emollm_test::report_failure(__FILE__, __LINE__,
                                    std::string("f32 packed driver: the pool changed the bits: ") + dtype_name(t) +
                                        " M=" + std::to_string(sh.M) + " N=" + std::to_string(sh.N) +
                                        " K=" + std::to_string(sh.K));
    }
#else
  std::printf("  skip gemm_f32_packed_drivers: the AVX-512 driver is x86-64 only\n");
#endif
}

// The BF16 dot-product paths must equal f32 arithmetic on X rounded to bf16.
TEST(gemm_bf16_hardware_matches_rounded_x) {
  const CpuFeatures& f = cpu_features();
  const bool amx = f.amx_usable && f.amx_bf16 && isa_detected() >= Isa::Amx;
  if (!f.avx512bf16 && !amx) {
    std::printf("  skip gemm_bf16_hardware_matches_rounded_x: no AVX512-BF16 / AMX on this CPU\n");
    return;
  }
  ThreadPool pool(2);
  for (int64_t M : {9, 16, 33, 100})
    for (int64_t K : {1, 31, 64, 1031}) {
      const int64_t N = 77;
      Weights w = make_weights(DType::BF16, N, K, uint32_t(K + M));
      Problem p = make_problem(M, N, K, 2, 1, uint32_t(3 * K + M));
      Problem pr = p;
      for (auto& v : pr.X)
        if (!std::isnan(v)) v = bf16_to_f32(f32_to_bf16(v));
      std::vector<float> R(size_t(M * p.ldy), kSentinel);
      ref::gemm(pr.X.data(), p.ldx, w.bytes.data(), DType::BF16, p.bias.data(), R.data(), p.ldy, M, N, K);
      const std::vector<double> S = abs_scale(pr, w, p.bias.data());
      for (Isa isa : {Isa::Avx512, Isa::Amx}) {
        if (isa > isa_detected() || !uses_bf16_hw(isa, DType::BF16, M)) continue;
        IsaCapScope cap(isa);
        std::vector<float> Y(size_t(M * p.ldy), kSentinel);
        gemm(p.X.data(), p.ldx, w.bytes.data(), DType::BF16, p.bias.data(), Y.data(), p.ldy, M, N, K, &pool);
        check_result(Y, R, p, S, 0.0,
                     std::string("bf16 hw vs rounded-x ref isa=") + isa_name(isa) + " M=" + std::to_string(M) +
                         " K=" + std::to_string(K));
      }
    }
}

// The vdpbf16ps packed GEMM with both blockings (gemm_internal.h set_bf16_gemm_legacy_blocking):
// the default one takes K <= 4096 whole with W blocks of 512 KiB / (2 K) rows (448, 192, 512 and
// 64 rows for the shapes below) and K > 4096 as the legacy one, in 256-pair k blocks and 512-row
// W blocks; the shapes cross those blocks and the 64 / 16-column panels with tails (odd K: a
// half pair), and M <= 64 with the small-M path off reaches the packed GEMM at a small M.
// Reference: ref::gemm (double accumulation) on X pre-rounded to bf16, f32 tolerance.
TEST(gemm_bf16_packed_blockings) {
  if (!cpu_features().avx512bf16 || isa_detected() < Isa::Avx512) {
    std::printf("  skip gemm_bf16_packed_blockings: no AVX512-BF16 on this CPU\n");
    return;
  }
  IsaCapScope cap(Isa::Avx512);  // not AMX: the vdpbf16ps kernels
  ThreadPool pool(2);
  struct Shape { int64_t M, N, K; };
  for (const Shape sh : {Shape{775, 530, 515}, Shape{70, 77, 1031}, Shape{13, 600, 257}, Shape{130, 9, 300},
                          Shape{14, 130, 4096}, Shape{20, 70, 4099}}) {
    Weights w = make_weights(DType::BF16, sh.N, sh.K, uint32_t(sh.K + sh.N));
    Problem p = make_problem(sh.M, sh.N, sh.K, 3, 2, uint32_t(sh.M + 5 * sh.K));
    Problem pr = p;
    for (auto& v : pr.X)
      if (!std::isnan(v)) v = bf16_to_f32(f32_to_bf16(v));
    std::vector<float> R(size_t(sh.M * p.ldy), kSentinel);
    ref::gemm(pr.X.data(), p.ldx, w.bytes.data(), DType::BF16, p.bias.data(), R.data(), p.ldy, sh.M, sh.N, sh.K);
    const std::vector<double> S = abs_scale(pr, w, p.bias.data());
    for (bool legacy : {false, true}) {
      gemm_detail::set_bf16_gemm_legacy_blocking(legacy);
      gemm_detail::set_small_m_enabled(false);
      std::vector<float> Y(size_t(sh.M * p.ldy), kSentinel);
      gemm(p.X.data(), p.ldx, w.bytes.data(), DType::BF16, p.bias.data(), Y.data(), p.ldy, sh.M, sh.N, sh.K, &pool);
      gemm_detail::set_small_m_enabled(true);
      gemm_detail::set_bf16_gemm_legacy_blocking(false);
      check_result(Y, R, p, S, 0.0,
                   std::string("bf16 packed ") + (legacy ? "legacy" : "default") + " blocking M=" +
                       std::to_string(sh.M) + " N=" + std::to_string(sh.N) + " K=" + std::to_string(sh.K));
    }
  }
}

// bf16 matrices packed once into the vdpbf16ps GEMM's panels (kernels.h bf16_pack_panels):
// the layout by hand; gemm_bf16_panels equal bit for bit to gemm() on the original W wherever
// gemm() runs the packed vdpbf16ps GEMM (M > 64, both blockings, with and without a pool; the
// shapes of gemm_bf16_packed_blockings: N and K tails, odd K, K > 4096), and at small M (where
// gemm() takes other kernels) within the f32 tolerance of ref::gemm on X pre-rounded to bf16.
TEST(gemm_bf16_panels_match_packed_gemm) {
  if (!bf16_panels_usable()) {
    std::printf("  skip gemm_bf16_panels_match_packed_gemm: no AVX512-BF16 on this CPU\n");
    EXPECT_THROWS(bf16_pack_panels(nullptr, 1, 1, nullptr, nullptr), ErrorCode::InvalidArgument);
    return;
  }
  IsaCapScope cap(Isa::Avx512);
  ThreadPool pool(2);
  {  // layout: N = 67 (two panels, the second with 3 rows), K = 5 (a half pair)
    const int64_t N = 67, K = 5, kp = 3;
    Weights w = make_weights(DType::BF16, N, K, 99);
    EXPECT(bf16_panels_bytes(N, K) == size_t(2 * 64 * kp * 4));
    AlignedPtr<uint32_t> pan = make_aligned<uint32_t>(bf16_panels_bytes(N, K) / 4);
    std::memset(pan.get(), 0xAB, bf16_panels_bytes(N, K));
    bf16_pack_panels(w.bytes.data(), N, K, pan.get(), &pool);
    bool ok = true;
    for (int64_t p = 0; p < 2; ++p)
      for (int64_t q = 0; q < kp; ++q)
        for (int64_t j = 0; j < 64; ++j) {
          const int64_t n = p * 64 + j;
          auto elem = [&](int64_t k) -> uint32_t {
            if (n >= N || k >= K) return 0;
            uint16_t h;
            std::memcpy(&h, w.bytes.data() + n * w.rb + 2 * k, 2);
            return h;
          };
          ok = ok && pan[size_t((p * kp + q) * 64 + j)] == (elem(2 * q) | elem(2 * q + 1) << 16);
        }
    EXPECT(ok);
  }
  struct Shape { int64_t M, N, K; };
  for (const Shape sh : {Shape{775, 530, 515}, Shape{70, 77, 1031}, Shape{130, 9, 300}, Shape{65, 130, 4096},
                          Shape{80, 70, 4099}, Shape{1, 70, 33}, Shape{9, 600, 257}, Shape{64, 65, 64}}) {
    Weights w = make_weights(DType::BF16, sh.N, sh.K, uint32_t(sh.K + sh.N));
    Problem p = make_problem(sh.M, sh.N, sh.K, 3, 2, uint32_t(sh.M + 5 * sh.K));
    AlignedPtr<uint8_t> pan = make_aligned<uint8_t>(bf16_panels_bytes(sh.N, sh.K));
    bf16_pack_panels(w.bytes.data(), sh.N, sh.K, pan.get(), nullptr);
    const std::string shape = " M=" + std::to_string(sh.M) + " N=" + std::to_string(sh.N) + " K=" + std::to_string(sh.K);
    if (sh.M > gemm_detail::kSmallMMax) {
      for (bool legacy : {false, true})
        for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool}) {
          gemm_detail::set_bf16_gemm_legacy_blocking(legacy);
          std::vector<float> Y(size_t(sh.M * p.ldy), kSentinel), Yp(size_t(sh.M * p.ldy), kSentinel);
          gemm(p.X.data(), p.ldx, w.bytes.data(), DType::BF16, p.bias.data(), Y.data(), p.ldy, sh.M, sh.N, sh.K, pl);
          gemm_bf16_panels(p.X.data(), p.ldx, pan.get(), p.bias.data(), Yp.data(), p.ldy, sh.M, sh.N, sh.K, pl);
          gemm_detail::set_bf16_gemm_legacy_blocking(false);
          EXPECT_ALL_CLOSE(Yp.data(), Y.data(), Y.size(), 0.0, 0.0,
                           std::string("panels == gemm ") + (legacy ? "legacy" : "default") + " blocking" + shape +
                               " pool=" + yesno(pl != nullptr));
        }
    } else {
      Problem pr = p;
      for (auto& v : pr.X)
        if (!std::isnan(v)) v = bf16_to_f32(f32_to_bf16(v));
      std::vector<float> R(size_t(sh.M * p.ldy), kSentinel), Yp(size_t(sh.M * p.ldy), kSentinel);
      ref::gemm(pr.X.data(), p.ldx, w.bytes.data(), DType::BF16, nullptr, R.data(), p.ldy, sh.M, sh.N, sh.K);
      gemm_bf16_panels(p.X.data(), p.ldx, pan.get(), nullptr, Yp.data(), p.ldy, sh.M, sh.N, sh.K, &pool);
      check_result(Yp, R, p, abs_scale(pr, w, nullptr), 0.0, "panels vs rounded-x ref" + shape);
    }
  }
  // a misaligned panel pointer is refused (the kernel's aligned loads would fault)
  AlignedPtr<uint8_t> pan = make_aligned<uint8_t>(bf16_panels_bytes(64, 64) + 64);
  std::vector<float> x(64 * 64, 0.5f), y(64 * 64);
  EXPECT_THROWS(gemm_bf16_panels(x.data(), 64, pan.get() + 4, nullptr, y.data(), 64, 64, 64, 64, nullptr),
                ErrorCode::InvalidArgument);
  EXPECT_THROWS(bf16_pack_panels(x.data(), 64, 64, pan.get() + 4, nullptr), ErrorCode::InvalidArgument);
}

// gemm_bf16_panels_multi (a vision layer's q/k/v on panels): every output equal bit for bit to
// gemm_bf16_panels on its own (X packed once, one split over the outputs' panels: N tails that
// cut panels, odd K, K > 4096, M below / above the row chunking, both blockings, with and
// without a pool, row strides wider than N, outputs without a bias); bad arguments refused.
TEST(gemm_bf16_panels_multi_equals_single) {
  if (!bf16_panels_usable()) {
    std::printf("  skip gemm_bf16_panels_multi_equals_single: no AVX512-BF16 on this CPU\n");
    return;
  }
  IsaCapScope cap(Isa::Avx512);
  ThreadPool pool(2);
  struct Case { int64_t M, K; std::vector<int64_t> Ns; };
  for (const Case& c : {Case{577, 128, {64, 64, 64}}, Case{130, 515, {70, 9, 200}}, Case{9, 257, {600, 65}},
                        Case{70, 4099, {77, 64}}, Case{200, 33, {1, 130, 64, 3}}, Case{66, 64, {128}}}) {
    const int n = int(c.Ns.size());
    std::vector<Weights> ws;
    std::vector<AlignedPtr<uint8_t>> pans;
    std::vector<std::vector<float>> bias;
    int64_t ldx = c.K + 3;
    std::vector<float> X(size_t(c.M * ldx));
    uint32_t seed = uint32_t(c.M * 7 + c.K);
    for (auto& v : X) v = float(int32_t((seed = seed * 1664525u + 1013904223u) >> 8) % 2001 - 1000) / 997.0f;
    for (int j = 0; j < n; ++j) {
      ws.push_back(make_weights(DType::BF16, c.Ns[size_t(j)], c.K, uint32_t(31 * j + c.K)));
      pans.push_back(make_aligned<uint8_t>(bf16_panels_bytes(c.Ns[size_t(j)], c.K)));
      bf16_pack_panels(ws.back().bytes.data(), c.Ns[size_t(j)], c.K, pans.back().get(), nullptr);
      bias.emplace_back(size_t(c.Ns[size_t(j)]), 0.25f * float(j + 1));
    }
    for (bool legacy : {false, true})
      for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool}) {
        gemm_detail::set_bf16_gemm_legacy_blocking(legacy);
        std::vector<std::vector<float>> want(static_cast<size_t>(n)), got(static_cast<size_t>(n));
        PanelOutput po[kMaxPanelOutputs];
        for (int j = 0; j < n; ++j) {
          const int64_t N = c.Ns[size_t(j)], ldy = N + 5;
          const float* b = j == 1 ? nullptr : bias[size_t(j)].data();  // one output without a bias
          want[size_t(j)].assign(size_t(c.M * ldy), kSentinel);
          got[size_t(j)].assign(size_t(c.M * ldy), kSentinel);
          gemm_bf16_panels(X.data(), ldx, pans[size_t(j)].get(), b, want[size_t(j)].data(), ldy, c.M, N, c.K, pl);
          po[j] = PanelOutput{pans[size_t(j)].get(), b, got[size_t(j)].data(), ldy, N};
        }
        gemm_bf16_panels_multi(X.data(), ldx, po, n, c.M, c.K, pl);
        gemm_detail::set_bf16_gemm_legacy_blocking(false);
        for (int j = 0; j < n; ++j)
          EXPECT(std::memcmp(got[size_t(j)].data(), want[size_t(j)].data(), got[size_t(j)].size() * sizeof(float)) == 0);
      }
  }
  AlignedPtr<uint8_t> pan = make_aligned<uint8_t>(bf16_panels_bytes(64, 64) + 64);
  std::vector<float> x(64 * 64, 0.5f), y(64 * 64);
  PanelOutput ok{pan.get(), nullptr, y.data(), 64, 64}, bad = ok;
  bad.Wp = pan.get() + 4;
  EXPECT_THROWS(gemm_bf16_panels_multi(x.data(), 64, &bad, 1, 64, 64, nullptr), ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemm_bf16_panels_multi(x.data(), 64, &ok, 0, 64, 64, nullptr), ErrorCode::InvalidArgument);
  PanelOutput many[kMaxPanelOutputs + 1];
  for (auto& m : many) m = ok;
  EXPECT_THROWS(gemm_bf16_panels_multi(x.data(), 64, many, kMaxPanelOutputs + 1, 64, 64, nullptr), ErrorCode::InvalidArgument);
  bad = ok;
  bad.ldy = 10;  // narrower than N
  EXPECT_THROWS(gemm_bf16_panels_multi(x.data(), 64, &bad, 1, 64, 64, nullptr), ErrorCode::InvalidArgument);
}

// The vdpbf16ps packed GEMM's long-K driver (K in several blocks, K > 4096 or the legacy
// blocking: X micro-panels prefetched and X packed in row chunks of up to 24 MiB) and its short
// last row panels (a panel of M % 6 rows computed for its rows only): gemm() on the row-major
// matrix, gemm_bf16_panels and gemm_bf16_panels_multi within the f32 tolerance of ref::gemm on X
// pre-rounded to bf16, panels and panels_multi bit for bit gemm(), and each bit for bit the same
// without a pool and with pools of 2 and 3 threads (the switches that kept the previous driver,
// EMOLLM_BF16_GEMM_LONG_K / _SHORT_TILES, went in session 22; they gave these bits too).
// M, N, K not multiples of the 6 x 64 tile or of the 256-pair k block (K odd: a half pair; K =
// 11008 in 22 blocks of 256 pairs with a 128-pair tail), M = 400 at K = 11008 (one row chunk of
// 24 MiB); every ISA cap this CPU has up to Avx512. M = 9, 65, 400, 130, 577, 13, 515 leave 3, 5,
// 4, 4, 1, 1, 5 rows in the last row panel; K = 1030 in one block among the shapes.
TEST(gemm_bf16_long_k_short_tiles_bits) {
  ThreadPool pool2(2), pool3(3);
  struct Shape { int64_t M, N, K; bool legacy; };
  for (const Shape sh : {Shape{9, 65, 4099, false}, Shape{65, 130, 8193, false}, Shape{400, 70, 11008, false},
                          Shape{130, 63, 515, true}, Shape{577, 129, 1031, true}, Shape{13, 1, 600, true},
                          Shape{515, 77, 1030, false}})
    for (Isa isa : isa_levels()) {
      if (isa > Isa::Avx512) continue;  // AMX tiles do not run this driver
      IsaCapScope cap(isa);
      Weights w = make_weights(DType::BF16, sh.N, sh.K, uint32_t(sh.K + 3 * sh.N));
      Problem p = make_problem(sh.M, sh.N, sh.K, 3, 2, uint32_t(sh.M + 7 * sh.K));
      const bool hw = cpu_features().avx512bf16 && isa >= Isa::Avx512;
      Problem pr = p;
      if (hw)
        for (auto& v : pr.X)
          if (!std::isnan(v)) v = bf16_to_f32(f32_to_bf16(v));
      std::vector<float> R(size_t(sh.M * p.ldy), kSentinel);
      ref::gemm(pr.X.data(), p.ldx, w.bytes.data(), DType::BF16, p.bias.data(), R.data(), p.ldy, sh.M, sh.N, sh.K);
      const std::vector<double> S = abs_scale(pr, w, p.bias.data());
      AlignedPtr<uint8_t> pan;
      if (hw && bf16_panels_usable()) {
        pan = make_aligned<uint8_t>(bf16_panels_bytes(sh.N, sh.K));
        bf16_pack_panels(w.bytes.data(), sh.N, sh.K, pan.get(), nullptr);
      }
      const std::string shape = std::string(" isa=") + isa_name(isa) + " M=" + std::to_string(sh.M) +
                                " N=" + std::to_string(sh.N) + " K=" + std::to_string(sh.K);
      std::vector<float> Y0, Yp0;  // without a pool
      for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
        std::vector<float> Y, Yp, Ym;
        gemm_detail::set_bf16_gemm_legacy_blocking(sh.legacy);
        gemm_detail::set_small_m_enabled(false);
        Y.assign(size_t(sh.M * p.ldy), kSentinel);
        gemm(p.X.data(), p.ldx, w.bytes.data(), DType::BF16, p.bias.data(), Y.data(), p.ldy, sh.M, sh.N, sh.K, pl);
        gemm_detail::set_small_m_enabled(true);
        if (pan && sh.M > gemm_detail::kSmallMMax) {
          Yp.assign(size_t(sh.M * p.ldy), kSentinel);
          Ym.assign(size_t(sh.M * p.ldy), kSentinel);
          gemm_bf16_panels(p.X.data(), p.ldx, pan.get(), p.bias.data(), Yp.data(), p.ldy, sh.M, sh.N, sh.K, pl);
          const PanelOutput po{pan.get(), p.bias.data(), Ym.data(), p.ldy, sh.N};
          gemm_bf16_panels_multi(p.X.data(), p.ldx, &po, 1, sh.M, sh.K, pl);
        }
        gemm_detail::set_bf16_gemm_legacy_blocking(false);
        const std::string what = shape + " threads=" + std::to_string(pl ? pl->size() : 1);
        check_result(Y, R, p, S, 0.0, "gemm" + what);
        if (!Yp.empty()) {
          check_result(Yp, R, p, S, 0.0, "panels" + what);
          same(Ym, Yp, "panels multi vs panels" + what);
          same(Yp, Y, "panels vs gemm" + what);  // gemm() runs the packed GEMM here
        }
        if (!pl) {
          Y0 = Y, Yp0 = Yp;
        } else {
          same(Y, Y0, "gemm pool vs none" + what);
          if (!Yp.empty()) same(Yp, Yp0, "panels pool vs none" + what);
        }
      }
    }
}

TEST(gemm_amx_path) {
  const CpuFeatures& f = cpu_features();
  if (!(f.amx_usable && f.amx_bf16 && isa_detected() >= Isa::Amx)) {
    std::printf("  skip gemm_amx_path: AMX-BF16 not available or not granted by the OS\n");
    return;
  }
  ThreadPool pool(2);
  IsaCapScope cap(Isa::Amx);
  // M <= 64 takes the small-M kernel first (gemm.cpp), so the tiles are reached above it.
  for (int64_t M : {16, 33, 64, 65, 100, 128})
    for (int64_t N : {1, 16, 31, 33, 100})
      for (int64_t K : {1, 31, 32, 33, 100, 1000})
        for (int use_pool = 0; use_pool < 2; ++use_pool) {
          Weights w = make_weights(DType::BF16, N, K, uint32_t(K + N));
          Problem p = make_problem(M, N, K, 3, 2, uint32_t(M * 7 + K));
          std::vector<float> R(size_t(M * p.ldy), kSentinel), Y(size_t(M * p.ldy), kSentinel);
          ref::gemm(p.X.data(), p.ldx, w.bytes.data(), DType::BF16, p.bias.data(), R.data(), p.ldy, M, N, K);
          gemm(p.X.data(), p.ldx, w.bytes.data(), DType::BF16, p.bias.data(), Y.data(), p.ldy, M, N, K,
               use_pool ? &pool : nullptr);
          check_result(Y, R, p, abs_scale(p, w, p.bias.data()), 1.0 / 256,
                       "amx M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
        }
}

// ---------------------------------------------------------------- arguments and edge cases

TEST(gemm_argument_checks) {
  std::vector<float> X(64 * 64, 1.0f), Y(64 * 64, 0.0f);
  std::vector<uint8_t> W(64 * 64 * 4, 0);
  EXPECT_THROWS(gemm(X.data(), 48, W.data(), DType::Q8_0, nullptr, Y.data(), 4, 2, 4, 48, nullptr),
                ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemm(X.data(), 33, W.data(), DType::Q4_0, nullptr, Y.data(), 4, 2, 4, 33, nullptr),
                ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemv(X.data(), W.data(), DType::Q4_0, nullptr, Y.data(), 4, 40, nullptr), ErrorCode::InvalidArgument);
  EXPECT_THROWS(ref::gemm(X.data(), 48, W.data(), DType::Q8_0, nullptr, Y.data(), 4, 2, 4, 48),
                ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemm(nullptr, 8, W.data(), DType::F32, nullptr, Y.data(), 4, 2, 4, 8, nullptr),
                ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemm(X.data(), 8, nullptr, DType::F32, nullptr, Y.data(), 4, 2, 4, 8, nullptr),
                ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemm(X.data(), 8, W.data(), DType::F32, nullptr, nullptr, 4, 2, 4, 8, nullptr),
                ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemm(X.data(), 8, W.data(), DType::F32, nullptr, Y.data(), 4, -1, 4, 8, nullptr),
                ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemm(X.data(), 8, W.data(), DType::F32, nullptr, Y.data(), 4, 2, -4, 8, nullptr),
                ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemm(X.data(), 8, W.data(), DType::F32, nullptr, Y.data(), 4, 2, 4, -8, nullptr),
                ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemm(X.data(), 7, W.data(), DType::F32, nullptr, Y.data(), 4, 2, 4, 8, nullptr),
                ErrorCode::InvalidArgument);  // ldx < K
  EXPECT_THROWS(gemm(X.data(), 8, W.data(), DType::F32, nullptr, Y.data(), 3, 2, 4, 8, nullptr),
                ErrorCode::InvalidArgument);  // ldy < N
  EXPECT_THROWS(gemm(X.data(), 8, W.data(), DType(9), nullptr, Y.data(), 4, 2, 4, 8, nullptr),
                ErrorCode::InvalidArgument);
  // empty products are fine and write nothing / only bias
  gemm(X.data(), 8, W.data(), DType::F32, nullptr, Y.data(), 4, 0, 4, 8, nullptr);
  gemm(X.data(), 8, W.data(), DType::F32, nullptr, Y.data(), 4, 2, 0, 8, nullptr);
  const float bias[3] = {1.5f, -2.0f, 0.25f};
  std::vector<float> Z(6, 7.0f);
  gemm(nullptr, 0, nullptr, DType::F32, bias, Z.data(), 3, 2, 3, 0, nullptr);
  for (int i = 0; i < 6; ++i) EXPECT(Z[i] == bias[i % 3]);
  gemm(nullptr, 0, nullptr, DType::Q4_0, nullptr, Z.data(), 3, 2, 3, 0, nullptr);
  for (int i = 0; i < 6; ++i) EXPECT(Z[i] == 0.0f);
}

// A ThreadPool must not change results (same split of k inside each output).
TEST(gemm_pool_is_deterministic) {
  ThreadPool pool(2);
  for (DType t : kAllTypes)
    for (int64_t M : {1, 5, 40}) {
      const int64_t K = 320, N = 203;
      Weights w = make_weights(t, N, K, 5);
      Problem p = make_problem(M, N, K, 0, 0, 6);
      std::vector<float> A(size_t(M * N)), B(size_t(M * N));
      gemm(p.X.data(), K, w.bytes.data(), t, p.bias.data(), A.data(), N, M, N, K, nullptr);
      gemm(p.X.data(), K, w.bytes.data(), t, p.bias.data(), B.data(), N, M, N, K, &pool);
      EXPECT_ALL_CLOSE(A.data(), B.data(), M * N, 0.0, 0.0, std::string("pool vs serial ") + dtype_name(t));
    }
}

// ---------------------------------------------------------------- q8_0 activations (Q8 mode)

// M = 4..8 (the wider kernels), odd N, K with odd block counts, ldx > K; M = 1..3 and 7 run in
// gemm_quantized_odd_shapes, K = 11008 in gemm_long_rows_k11008.
TEST(gemm_q8act_shapes) {
  ThreadPool pool(2);
  uint32_t seed = 5000;
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    for (int64_t M : {4, 5, 6, 8})
      for (int64_t N : {3, 37})
        for (int64_t K : {32, 64, 160, 4096}) {
          const int64_t xpad = (seed % 2) ? 13 : 0;
          Weights w = make_weights(t, N, K, seed);
          Problem p = make_problem(M, N, K, xpad, xpad ? 1 : 0, seed + 1);
          run_case_q8(w, p, &pool);
          ++seed;
        }
    Weights w = make_weights(t, 7, 11008, 77);
    run_case_q8(w, make_problem(8, 7, 11008, 32, 0, 78), &pool);
  }
}

// The VNNI packed GEMM (gemm_q8_vnni.cpp) across its blocking: 6-row x 32-column microkernels,
// KCB = 32 k blocks (K = 2080: 65 blocks, a k-block tail of 1 block), NC = 512 weight rows
// (N = 601: gemm_blocked_large, 67 x 601 x 1056), the split over M (N = 7), odd block counts
// (K = 96, 160), ldx/ldy padding; Q8 numerics against the float64 references of run_case_q8 (levels without VNNI: f32 tolerance).
TEST(gemm_q8act_large_m) {
  ThreadPool pool(2);
  uint32_t seed = 7000;
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    struct S { int64_t M, N, K, xpad, ypad; };
    for (const S& s : {S{9, 33, 96, 0, 0}, S{13, 64, 160, 5, 3}, S{130, 7, 160, 0, 0}, S{24, 100, 2080, 0, 1}}) {
      Weights w = make_weights(t, s.N, s.K, seed);
      run_case_q8(w, make_problem(s.M, s.N, s.K, s.xpad, s.ypad, seed + 1), &pool);
      seed += 2;
    }
  }
}

// Exact expectations: X blocks whose amax is 127 have d = 1 (exact in fp16, 1/d = 1), so the
// quantised x are round-half-away-from-zero of x itself (ggml's roundf: 2.5 -> 3, -3.5 -> -4,
// unlike round-to-even), and with weight scale 1 every product is an exact small integer.
TEST(gemm_q8act_by_hand) {
  const int64_t K = 96, N = 3;  // 3 blocks: one VNNI pair plus the odd-block tail
  const int64_t MX = 14;        // even rows: the pattern; odd rows: zero. M = 2 (dot kernels), 14 (packed GEMM)
  std::vector<float> X(MX * K);
  for (int64_t k = 0; k < K; ++k) {
    const float v = (k % 32 == 0) ? 127.0f : (k % 32 == 1) ? -127.0f : float(int(k % 29) - 14) + ((k & 1) ? 0.5f : -0.5f);
    for (int64_t r = 0; r < MX; ++r) X[r * K + k] = (r % 2) ? 0.0f : v;  // zero rows: d = 0, every product 0
  }
  auto rnd = [](float v) { return std::roundf(v); };
  std::vector<BlockQ8_0> w8(size_t(N * K / 32));
  std::vector<BlockQ4_0> w4(size_t(N * K / 32));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < K / 32; ++b) {
      BlockQ8_0& q8 = w8[n * (K / 32) + b];
      BlockQ4_0& q4 = w4[n * (K / 32) + b];
      q8.d = q4.d = 0x3C00;  // 1.0
      for (int i = 0; i < 32; ++i) q8.qs[i] = int8_t((i * 37 + n * 11 + b * 5) % 255 - 127);  // covers +-127
      for (int i = 0; i < 16; ++i) q4.qs[i] = uint8_t(((i + n + b) % 16) | (((i * 7 + n) % 16) << 4));
    }
  const float bias[N] = {0.25f, -1.0f, 3.0f};
  for (int variant = 0; variant < 2; ++variant) {
    const DType t = variant ? DType::Q4_0 : DType::Q8_0;
    const void* W = variant ? static_cast<const void*>(w4.data()) : static_cast<const void*>(w8.data());
    std::vector<float> want(MX * N);
    for (int64_t n = 0; n < N; ++n) {
      double s = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t b = k / 32, i = k % 32;
        double wv;
        if (variant) {
          const uint8_t byte = w4[n * (K / 32) + b].qs[i % 16];
          wv = double(int(i < 16 ? (byte & 15) : (byte >> 4)) - 8);
        } else {
          wv = double(w8[n * (K / 32) + b].qs[i]);
        }
        s += double(rnd(X[k])) * wv;
      }
      for (int64_t r = 0; r < MX; ++r) want[r * N + n] = (r % 2) ? bias[n] : float(s + bias[n]);
    }
    for (Isa isa : isa_levels()) {
      IsaCapScope cap(isa);
      for (bool vnni : vnni_variants(isa))
        for (int64_t M : {int64_t(2), MX}) {
          if (!q8_numerics(isa, vnni, M)) continue;  // the f32 path does not round x: not these values
          VnniScope vs(vnni);
          std::vector<float> Y(size_t(M * N), kSentinel);
          gemm(X.data(), K, W, t, bias, Y.data(), N, M, N, K, nullptr);
          for (int64_t i = 0; i < M * N; ++i)
            if (!(Y[i] == want[i])) {
              char buf[200];
              std::snprintf(buf, sizeof buf, "%s isa=%s vnni=%d M=%lld y[%lld] = %.9g want %.9g", dtype_name(t),
                            isa_name(isa), int(vnni), (long long)M, (long long)i, double(Y[i]), double(want[i]));
              emollm_test::report_failure(__FILE__, __LINE__, buf);
            }
        }
    }
  }
}

// The M = 1 VNNI kernel (q8v_row_m1: four blocks a step, scales gathered by a word permute, then
// the nb % 4 tail) and the previous one, at block counts 4, 5, 7, 131 (steps + every tail length
// but 2, which K = 64 in gemm_quantized_odd_shapes covers) against the references of run_case_q8.
TEST(gemm_q8act_m1_block_counts) {
  ThreadPool pool(2);
  uint32_t seed = 9000;
  for (DType t : {DType::Q8_0, DType::Q4_0})
    for (int64_t K : {128, 160, 224, 4192})
      for (int64_t N : {1, 13}) {
        Weights w = make_weights(t, N, K, seed);
        run_case_q8(w, make_problem(1, N, K, seed % 2 ? 5 : 0, 0, seed + 1), &pool);
        ++seed;
      }
}

// Exact M = 1 results with a different power-of-two weight scale in every block (a scale applied
// to the wrong block, or a block's quants read from another row or offset, changes the sum):
// 9 blocks = two four-block steps and a one-block tail; 21 rows = a full 16-row group of the
// repacked layout and a partial one. X blocks have amax 127 (d = 1), so every product and
// partial sum is an exact multiple of 1/4 below 2^22 and f32 holds it exactly. Checks gemv
// (current and previous kernel) and gemv_repacked on quant_repack's output.
TEST(gemm_q8act_m1_by_hand_block_scales) {
  const int64_t K = 288, N = 21, nb = K / 32;
  std::vector<float> X(static_cast<size_t>(K));
  for (int64_t k = 0; k < K; ++k)
    X[k] = (k % 32 == 0) ? 127.0f : (k % 32 == 7) ? -127.0f : float(int((k * 13) % 29) - 14);
  const uint16_t scales[4] = {0x3800, 0x3C00, 0x4000, 0x4400};  // 0.5, 1, 2, 4
  const double scale_v[4] = {0.5, 1.0, 2.0, 4.0};
  std::vector<BlockQ8_0> w8(size_t(N * nb));
  std::vector<BlockQ4_0> w4(size_t(N * nb));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t b = 0; b < nb; ++b) {
      BlockQ8_0& q8 = w8[n * nb + b];
      BlockQ4_0& q4 = w4[n * nb + b];
      q8.d = q4.d = scales[(b * 3 + n) % 4];
      for (int i = 0; i < 32; ++i) q8.qs[i] = int8_t((i * 41 + n * 17 + b * 29) % 255 - 127);
      for (int i = 0; i < 16; ++i) q4.qs[i] = uint8_t(((i * 3 + n + 5 * b) % 16) | (((i * 7 + 2 * n + b) % 16) << 4));
    }
  float bias[N];
  for (int64_t n = 0; n < N; ++n) bias[n] = float(int(n * 7 % 11) - 5) * 0.25f;
  for (int variant = 0; variant < 2; ++variant) {
    const DType t = variant ? DType::Q4_0 : DType::Q8_0;
    const void* W = variant ? static_cast<const void*>(w4.data()) : static_cast<const void*>(w8.data());
    std::vector<float> want(N);
    for (int64_t n = 0; n < N; ++n) {
      double s = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t b = k / 32, i = k % 32;
        double wv;
        if (variant) {
          const uint8_t byte = w4[n * nb + b].qs[i % 16];
          wv = double(int(i < 16 ? (byte & 15) : (byte >> 4)) - 8);
        } else {
          wv = double(w8[n * nb + b].qs[i]);
        }
        s += double(X[k]) * wv * scale_v[(b * 3 + n) % 4];
      }
      want[n] = float(s + bias[n]);
    }
    ThreadPool pool(2);
    std::vector<uint8_t> packed(quant_repack_bytes(t, N, K));
    quant_repack(W, t, N, K, packed.data(), &pool);
    for (Isa isa : isa_levels()) {
      IsaCapScope cap(isa);
      for (bool vnni : vnni_variants(isa)) {
        for (int use_pool = 0; use_pool < 2; ++use_pool) {
          VnniScope vs(vnni);
          std::vector<float> y(N, kSentinel);
          gemv_repacked(X.data(), packed.data(), t, bias, y.data(), N, K, use_pool ? &pool : nullptr);
          for (int64_t i = 0; i < N; ++i)
            if (!(y[i] == want[i])) {
              char buf[220];
              std::snprintf(buf, sizeof buf, "repacked %s isa=%s vnni=%d pool=%d y[%lld] = %.9g want %.9g",
                            dtype_name(t), isa_name(isa), int(vnni), use_pool, (long long)i, double(y[i]),
                            double(want[i]));
              emollm_test::report_failure(__FILE__, __LINE__, buf);
            }
        }
        for (bool legacy : legacy_variants(vnni && isa >= Isa::Avx512, 1))
          for (int use_pool = 0; use_pool < 2; ++use_pool) {
            VnniScope vs(vnni);
            Q8GemvLegacyScope ls(legacy);
            std::vector<float> y(N, kSentinel);
            gemv(X.data(), W, t, bias, y.data(), N, K, use_pool ? &pool : nullptr);
            for (int64_t i = 0; i < N; ++i)
              if (!(y[i] == want[i])) {
                char buf[220];
                std::snprintf(buf, sizeof buf, "%s isa=%s vnni=%d legacy=%d pool=%d y[%lld] = %.9g want %.9g",
                              dtype_name(t), isa_name(isa), int(vnni), int(legacy), use_pool, (long long)i,
                              double(y[i]), double(want[i]));
                emollm_test::report_failure(__FILE__, __LINE__, buf);
              }
          }
      }
    }
  }
}

// gemv_repacked against the references of run_case_q8 (tight: f32 tolerance against the double
// product on X rounded to q8_0; loose: the q8 bound against the f32 X), every ISA level, with and
// without VNNI and pool: row counts around the 16-row group (1, 15, 16, 17, 37) and the VNNI
// kernel's passes of 4 groups (61: one pass with a partial last group; 100: 4 + 2 + 1 groups;
// 2100: chunks of several passes on the pool), K of 1, 3 and 128 blocks, under each schedule:
// contiguous ranges per thread (the default) and guided chunks (set_gemv_ranges(false)), the
// ranges also on 3 threads (more threads than groups for N <= 37): the same bits every way; and
// quant_repack's argument checks.
TEST(gemv_repacked_matches_reference) {
  ThreadPool pool(2), pool3(3);
  uint32_t seed = 7000;
  // the contiguous ranges (on) or the guided chunks (off)
  struct RangesScope {
    explicit RangesScope(bool on) : prev_ranges_(gemm_detail::gemv_ranges()) { gemm_detail::set_gemv_ranges(on); }
    ~RangesScope() { gemm_detail::set_gemv_ranges(prev_ranges_); }
    bool prev_ranges_;
  };
  for (DType t : {DType::Q8_0, DType::Q4_0})
    for (int64_t N : {1, 15, 16, 17, 37, 61, 100, 2100})
      for (int64_t K : {32, 96, 4096}) {
        if (N == 2100 && K != 96) continue;  // the chunking does not depend on K; keeps the test short
        Weights w = make_weights(t, N, K, seed);
        Problem p = make_problem(1, N, K, 0, 0, seed + 1);
        const QuantX q = quantize_x(p);
        Problem pq = p;
        pq.X = q.xq;
        std::vector<uint8_t> packed(quant_repack_bytes(t, N, K));
        // q4_0: 64-row records (4 groups; rows past N zero); q8_0: 16
        const int64_t rows = t == DType::Q4_0 ? 64 : 16;
        EXPECT(packed.size() == size_t((N + rows - 1) / rows * rows) * dtype_row_bytes(t, K));
        quant_repack(w.bytes.data(), t, N, K, packed.data(), seed % 2 ? &pool : nullptr);
        for (int use_bias = 0; use_bias < 2; ++use_bias) {
          const float* bias = use_bias ? p.bias.data() : nullptr;
          std::vector<float> R(static_cast<size_t>(N)), Rq(static_cast<size_t>(N));
          ref::gemm(p.X.data(), K, w.bytes.data(), t, bias, R.data(), N, 1, N, K);
          ref::gemm(pq.X.data(), K, w.bytes.data(), t, bias, Rq.data(), N, 1, N, K);
          const std::vector<double> S = abs_scale(p, w, bias), Sq = abs_scale(pq, w, bias);
          for (Isa isa : isa_levels()) {
            IsaCapScope cap(isa);
            for (bool vnni : vnni_variants(isa))
              for (int use_pool = 0; use_pool < 2; ++use_pool) {
                VnniScope vs(vnni);
                std::vector<float> y(size_t(N), kSentinel), y_edges(size_t(N), kSentinel);
                {
                  RangesScope rs(false);
                  gemv_repacked(p.X.data(), packed.data(), t, bias, y.data(), N, K, use_pool ? &pool : nullptr);
                }
                {
                  RangesScope rs(true);
                  gemv_repacked(p.X.data(), packed.data(), t, bias, y_edges.data(), N, K, use_pool ? &pool : nullptr);
                }
                if (use_pool) {
                  std::vector<float> y_three(size_t(N), kSentinel);
                  RangesScope rs(true);
                  gemv_repacked(p.X.data(), packed.data(), t, bias, y_three.data(), N, K, &pool3);
                  EXPECT(std::memcmp(y_three.data(), y_edges.data(), size_t(N) * sizeof(float)) == 0);
                }
                const std::string what = std::string("repacked ") + dtype_name(t) + " isa=" + isa_name(isa) +
                                         " vnni=" + yesno(vnni) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
                                         " bias=" + yesno(use_bias) + " pool=" + yesno(use_pool);
                check_q8(y_edges, Rq, Sq, R, S, q, p, w, what);
                EXPECT(std::memcmp(y.data(), y_edges.data(), size_t(N) * sizeof(float)) == 0);
              }
          }
        }
        ++seed;
      }
  std::vector<uint8_t> buf(4096);
  EXPECT_THROWS(quant_repack_bytes(DType::F16, 4, 32), ErrorCode::InvalidArgument);
  EXPECT_THROWS(quant_repack_bytes(DType::Q4_0, 4, 48), ErrorCode::InvalidArgument);
  EXPECT_THROWS(quant_repack(buf.data(), DType::BF16, 4, 32, buf.data(), nullptr), ErrorCode::InvalidArgument);
  float x[32] = {}, y[4];
  EXPECT_THROWS(gemv_repacked(x, buf.data(), DType::Q8_0, nullptr, y, 4, 33, nullptr), ErrorCode::InvalidArgument);
}

// gemv_repacked's q4_0 M = 1 dispatch takes set_gemv_owner_keep (the test below shows only that
// every setting keeps the bits): at 2 threads on the 1.1B's gate+up rows (11264: 704 groups) each
// thread's first claim all of its range but 0 / 1 passes makes fewer chunks than claims of
// shrinking quarters (-1), counted by base/pool_stats.h pool_range_chunks_this_thread, the fewest
// of 5 calls (a call whose worker joined in time). K = 256: the claims do not depend on K.
TEST(gemv_repacked_owner_keep_taken) {
  struct Restore {
    int keep = gemm_detail::gemv_owner_keep();
    bool ranges = gemm_detail::gemv_ranges();
    ~Restore() { gemm_detail::set_gemv_owner_keep(keep), gemm_detail::set_gemv_ranges(ranges); }
  } restore;
  gemm_detail::set_gemv_ranges(true);
  ThreadPool pool(2);
  const int64_t N = 11264, K = 256;
  Weights w = make_weights(DType::Q4_0, N, K, 7690);
  std::vector<uint8_t> W(quant_repack_bytes(DType::Q4_0, N, K));
  quant_repack(w.bytes.data(), DType::Q4_0, N, K, W.data(), nullptr);
  const std::vector<float> x = rand_vec(size_t(K), 7691);
  std::vector<float> y(static_cast<size_t>(N));
  auto chunks = [&](int keep) {
    gemm_detail::set_gemv_owner_keep(keep);
    return emollm_test::fewest_range_chunks(
        pool, 5, [&] { gemv_repacked(x.data(), W.data(), DType::Q4_0, nullptr, y.data(), N, K, &pool); });
  };
  const uint64_t quarters = chunks(-1), whole = chunks(0), one = chunks(1);
  if (!(whole < quarters && one < quarters))
    emollm_test::report_failure(__FILE__, __LINE__,
                                "q4_0 chunks owner_keep -1 / 0 / 1 " + std::to_string(quarters) + " / " +
                                    std::to_string(whole) + " / " + std::to_string(one) +
                                    ": the dispatch does not take owner_keep");
}

// q4_0's M = 1 dispatch with claims of whole super-group pairs (set_gemv_even_claims) and with each
// thread's first claim all of its range but 0 / 1 / 3 passes (set_gemv_owner_keep, Zen 4's default
// 1; -1 elsewhere) gives the bits of one thread, on 2 and 3 threads, called 30 times each (both
// threads claiming, stealing across the pairs); q8_0 with each owner_keep too: the decoder's shapes' row counts (2560 = q+k+v, 11264 = gate+up: claims of 3
// and 11 super-groups by default), 15 whole super-groups and a partial one (1000 rows: 63
// groups), and gemv_repacked_multi with an output of an odd count of super-groups first (320 rows:
// the next output's groups start off a pair, so the claims fall back to single passes) and with
// the 1.1B's q / k / v (2048 + 256 + 256). K = 256 keeps it short (the chunking does not depend on K).
TEST(gemv_repacked_claims_same_bits) {
  ThreadPool pool2(2), pool3(3);
  const int64_t K = 256;
  const std::vector<float> x = rand_vec(size_t(K), 7600);
  struct EvenScope {
    explicit EvenScope(bool on) : prev_(gemm_detail::gemv_even_claims()) { gemm_detail::set_gemv_even_claims(on); }
    ~EvenScope() { gemm_detail::set_gemv_even_claims(prev_); }
    bool prev_;
  };
  struct KeepScope {
    explicit KeepScope(int k) : prev_(gemm_detail::gemv_owner_keep()) { gemm_detail::set_gemv_owner_keep(k); }
    ~KeepScope() { gemm_detail::set_gemv_owner_keep(prev_); }
    int prev_;
  };
  {
    KeepScope ks(-7);  // below -1 reads -1 (today's claims)
    EXPECT(gemm_detail::gemv_owner_keep() == -1);
  }
  uint32_t seed = 7610;
  auto packed_q40 = [&](int64_t N) {
    Weights w = make_weights(DType::Q4_0, N, K, seed++);
    std::vector<uint8_t> r(quant_repack_bytes(DType::Q4_0, N, K));
    quant_repack(w.bytes.data(), DType::Q4_0, N, K, r.data(), nullptr);
    return r;
  };
  for (int64_t N : {2560, 11264, 1000}) {
    const std::vector<uint8_t> W = packed_q40(N);
    std::vector<float> ref(static_cast<size_t>(N)), y(static_cast<size_t>(N));
    gemv_repacked(x.data(), W.data(), DType::Q4_0, nullptr, ref.data(), N, K, nullptr);
    for (ThreadPool* pool : {&pool2, &pool3})
      for (int keep : {-1, 0, 1, 3})
        for (int on = 0; on < 2; ++on) {
          EvenScope es(on != 0);
          KeepScope ks(keep);
          for (int rep = 0; rep < 30; ++rep) {
            std::fill(y.begin(), y.end(), kSentinel);
            gemv_repacked(x.data(), W.data(), DType::Q4_0, nullptr, y.data(), N, K, pool);
            EXPECT(std::memcmp(y.data(), ref.data(), size_t(N) * sizeof(float)) == 0);
          }
        }
  }
  for (int64_t N : {2560, 1000}) {  // q8_0: 16-row groups, the parts pass
    Weights w = make_weights(DType::Q8_0, N, K, seed++);
    std::vector<uint8_t> W(quant_repack_bytes(DType::Q8_0, N, K));
    quant_repack(w.bytes.data(), DType::Q8_0, N, K, W.data(), nullptr);
    std::vector<float> ref(static_cast<size_t>(N)), y(static_cast<size_t>(N));
    gemv_repacked(x.data(), W.data(), DType::Q8_0, nullptr, ref.data(), N, K, nullptr);
    for (ThreadPool* pool : {&pool2, &pool3})
      for (int keep : {-1, 0, 1, 3}) {
        KeepScope ks(keep);
        for (int rep = 0; rep < 30; ++rep) {
          std::fill(y.begin(), y.end(), kSentinel);
          gemv_repacked(x.data(), W.data(), DType::Q8_0, nullptr, y.data(), N, K, pool);
          EXPECT(std::memcmp(y.data(), ref.data(), size_t(N) * sizeof(float)) == 0);
        }
      }
  }
  for (const std::vector<int64_t>& ns : {std::vector<int64_t>{320, 2048, 256}, std::vector<int64_t>{2048, 256, 256}}) {
    std::vector<std::vector<uint8_t>> Ws;
    std::vector<std::vector<float>> refs, ys;
    GemvOutput outs[3];
    for (size_t j = 0; j < ns.size(); ++j) {
      Ws.push_back(packed_q40(ns[j]));
      refs.emplace_back(size_t(ns[j]));
      ys.emplace_back(size_t(ns[j]));
      gemv_repacked(x.data(), Ws[j].data(), DType::Q4_0, nullptr, refs[j].data(), ns[j], K, nullptr);
    }
    for (size_t j = 0; j < ns.size(); ++j) outs[j] = GemvOutput{Ws[j].data(), nullptr, ys[j].data(), ns[j]};
    for (ThreadPool* pool : {&pool2, &pool3})
      for (int on = 0; on < 2; ++on) {
        EvenScope es(on != 0);
        KeepScope ks(on != 0 ? 1 : -1);
        for (int rep = 0; rep < 30; ++rep) {
          for (auto& v : ys) std::fill(v.begin(), v.end(), kSentinel);
          gemv_repacked_multi(x.data(), DType::Q4_0, outs, int(ns.size()), K, pool);
          for (size_t j = 0; j < ns.size(); ++j)
            EXPECT(std::memcmp(ys[j].data(), refs[j].data(), size_t(ns[j]) * sizeof(float)) == 0);
        }
      }
  }
}

// quant_repack's records (q4_0: 64 rows, 4 groups; q8_0: 16 rows) read by gemv_repacked (M = 1),
// gemm_repacked's 4-row tiles (M = 3) and its X-panel kernel (M = 9, 20 > kSmallM) and
// gemv_repacked_multi, with N not a multiple of 16 or 64 (partial groups, padded super-groups,
// passes of 4 groups that start inside a record in the multi-output numbering), K of 1, 3, 9 and
// 128 blocks, every ISA level, with and without VNNI, on 1, 2 and 3 threads: within the q8 bounds
// of the references (check_q8: the double product on X rounded to q8_0, and the f32 product), and
// gemv_repacked_multi's outputs the bits of one gemv_repacked per output. Sizes: N rounded up to 64
// rows (q4_0) / 16 (q8_0). (It compared the 64-row records with the previous 16-row ones bit for bit
// until that layout's switch, EMOLLM_REPACK_SUPERGROUPS, was removed.)
TEST(repack_records_match_reference) {
  ThreadPool pool2(2), pool3(3);
  ThreadPool* pools[3] = {nullptr, &pool2, &pool3};
  std::vector<float> bias2(37);
  for (int i = 0; i < 37; ++i) bias2[size_t(i)] = float(i % 7 - 3) * 0.125f;
  uint32_t seed = 7300;
  for (DType t : {DType::Q8_0, DType::Q4_0})
    for (int64_t N : {1, 17, 61, 100, 129, 300})
      for (int64_t K : {32, 96, 288, 4096}) {
        if (K == 4096 && N > 100) continue;  // keeps the test short; the chunking does not depend on K
        Weights w = make_weights(t, N, K, seed);
        std::vector<uint8_t> cur(quant_repack_bytes(t, N, K));
        const int64_t rows = t == DType::Q4_0 ? 64 : 16;
        EXPECT(cur.size() == size_t((N + rows - 1) / rows * rows) * dtype_row_bytes(t, K));
        quant_repack(w.bytes.data(), t, N, K, cur.data(), seed % 2 ? &pool2 : nullptr);
        // a second output of 37 rows for gemv_repacked_multi (its groups numbered after this one's)
        Weights w2 = make_weights(t, 37, K, seed + 5);
        std::vector<uint8_t> cur2(quant_repack_bytes(t, 37, K));
        quant_repack(w2.bytes.data(), t, 37, K, cur2.data(), nullptr);
        for (int64_t M : {1, 3, 9, 20}) {
          Problem p = make_problem(M, N, K, 0, 0, seed + 1);
          const QuantX q = quantize_x(p);
          Problem pq = p;
          pq.X = q.xq;
          std::vector<float> R(size_t(M * N)), Rq(size_t(M * N));
          ref::gemm(p.X.data(), K, w.bytes.data(), t, p.bias.data(), R.data(), N, M, N, K);
          ref::gemm(pq.X.data(), K, w.bytes.data(), t, p.bias.data(), Rq.data(), N, M, N, K);
          const std::vector<double> S = abs_scale(p, w, p.bias.data()), Sq = abs_scale(pq, w, p.bias.data());
          for (Isa isa : isa_levels()) {
            IsaCapScope cap(isa);
            for (bool vnni : vnni_variants(isa))
              for (ThreadPool* pool : pools) {
                VnniScope vs(vnni);
                const std::string what = std::string(dtype_name(t)) + " isa=" + isa_name(isa) + " vnni=" + yesno(vnni) +
                                         " threads=" + std::to_string(pool ? pool->size() : 1) + " M=" +
                                         std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K);
                std::vector<float> y_cur(size_t(M * N), kSentinel);
                gemm_repacked(p.X.data(), K, cur.data(), t, p.bias.data(), y_cur.data(), N, M, N, K, pool);
                check_q8(y_cur, Rq, Sq, R, S, q, p, w, what);
                if (M != 1) continue;
                // two outputs in one call: the bits of one call per output
                std::vector<float> a_cur(size_t(N), kSentinel), a_one(size_t(N), kSentinel), b_cur(37, kSentinel),
                    b_one(37, kSentinel);
                GemvOutput oc[2] = {{cur.data(), nullptr, a_cur.data(), N}, {cur2.data(), bias2.data(), b_cur.data(), 37}};
                gemv_repacked_multi(p.X.data(), t, oc, 2, K, pool);
                gemv_repacked(p.X.data(), cur.data(), t, nullptr, a_one.data(), N, K, pool);
                gemv_repacked(p.X.data(), cur2.data(), t, bias2.data(), b_one.data(), 37, K, pool);
                same(a_cur.data(), a_one.data(), size_t(N), what + " multi[0]");
                same(b_cur.data(), b_one.data(), 37, what + " multi[1]");
                for (float v : a_cur) EXPECT(v != kSentinel);
              }
          }
        }
        ++seed;
      }
}

// GEMV ranges owned by pool thread index (the default) against guided chunks (set_gemv_ranges off;
// the arrival-order ranges' switch went in session 21): the split changes which thread computes a
// row, never its arithmetic: gemv_repacked,
// gemv_repacked_multi and the bf16 / f16 huge-page GEMV bit-equal, 1-3 threads. And
// gemv_repacked_own_part: the threads' parts partition the repacked bytes in thread order (one
// thread: all of them; below the parallel threshold thread 0 has all).
TEST(gemv_owned_ranges_bit_equal_guided) {
  struct OwnedScope {
    explicit OwnedScope(bool on) : prev_(gemm_detail::gemv_ranges()) { gemm_detail::set_gemv_ranges(on); }
    ~OwnedScope() { gemm_detail::set_gemv_ranges(prev_); }
    bool prev_;
  };
  ThreadPool pool2(2), pool3(3);
  ThreadPool* pools[3] = {nullptr, &pool2, &pool3};
  uint32_t seed = 9100;
  for (DType t : {DType::Q8_0, DType::Q4_0})
    for (int64_t K : {32, 544, 2048})
      for (int64_t N : {1, 61, 300, 1000}) {
        Weights w = make_weights(t, N, K, seed), w2 = make_weights(t, 37, K, seed + 3);
        std::vector<uint8_t> r(quant_repack_bytes(t, N, K)), r2(quant_repack_bytes(t, 37, K));
        quant_repack(w.bytes.data(), t, N, K, r.data(), nullptr);
        quant_repack(w2.bytes.data(), t, 37, K, r2.data(), nullptr);
        Problem p = make_problem(1, N, K, 0, 0, seed + 1);
        for (int nth = 1; nth <= 3; ++nth) {
          size_t at = 0;
          for (int i = 0; i < nth; ++i) {
            const uint8_t* b = nullptr;
            size_t bytes = 0;
            gemv_repacked_own_part(r.data(), t, N, K, i, nth, &b, &bytes);
            if (bytes == 0) continue;
            EXPECT(b == r.data() + at);
            at += bytes;
          }
          EXPECT(at == r.size());
        }
        for (ThreadPool* pool : pools) {
          const std::string what = std::string(dtype_name(t)) + " threads=" + std::to_string(pool ? pool->size() : 1) +
                                   " N=" + std::to_string(N) + " K=" + std::to_string(K);
          std::vector<float> y[2], a[2], b[2];
          for (int owned = 0; owned < 2; ++owned) {
            OwnedScope o(owned == 1);
            y[owned].assign(size_t(N), kSentinel);
            a[owned].assign(size_t(N), kSentinel);
            b[owned].assign(37, kSentinel);
            gemv_repacked(p.X.data(), r.data(), t, p.bias.data(), y[owned].data(), N, K, pool);
            GemvOutput g[2] = {{r.data(), nullptr, a[owned].data(), N}, {r2.data(), nullptr, b[owned].data(), 37}};
            gemv_repacked_multi(p.X.data(), t, g, 2, K, pool);
          }
          same(y[1], y[0], what);
          same(a[1], a[0], what + " multi[0]");
          same(b[1], b[0], what + " multi[1]");
          for (float v : y[1]) EXPECT(v != kSentinel);
        }
      }
  for (DType t : {DType::BF16, DType::F16})
    for (int64_t N : {61, 1000})
      for (ThreadPool* pool : pools) {
        const int64_t K = 2048;
        Weights w = make_weights(t, N, K, seed + 7);
        Problem p = make_problem(1, N, K, 0, 0, seed + 8);
        std::vector<float> y[2];
        for (int owned = 0; owned < 2; ++owned) {
          OwnedScope o(owned == 1);
          y[owned].assign(size_t(N), kSentinel);
          gemm_huge_pages(p.X.data(), K, w.bytes.data(), t, p.bias.data(), y[owned].data(), N, 1, N, K, pool);
        }
        same(y[1], y[0], std::string(dtype_name(t)) + " huge pages N=" + std::to_string(N));
        for (float v : y[1]) EXPECT(v != kSentinel);
      }
}


// gemm_repacked (any M, row strides): every row is bit-identical to gemv_repacked of that row
// (same integer block sums, same f32 accumulation order), so a row gives the same logits in a
// batch as alone; gemv_repacked itself is checked against the references above. M of 2..9 covers
// the one-tile rows (M <= 6: the scoring passes' M = 5), the 4-row tiles and every remainder;
// every ISA level, with and without VNNI and pool.
TEST(gemm_repacked_rows_equal_gemv_repacked) {
  ThreadPool pool(2);
  uint32_t seed = 7100;
  for (DType t : {DType::Q8_0, DType::Q4_0})
    for (int64_t N : {17, 64})
      for (int64_t K : {64, 1024}) {
        Weights w = make_weights(t, N, K, seed);
        std::vector<uint8_t> packed(quant_repack_bytes(t, N, K));
        quant_repack(w.bytes.data(), t, N, K, packed.data(), &pool);
        for (int64_t M : {2, 3, 4, 5, 6, 7, 9}) {
          const int64_t ldx = K + 32, ldy = N + 3;
          Problem p = make_problem(M, N, K, 0, 0, seed + 1);
          std::vector<float> X(size_t(M * ldx), 1e30f);
          for (int64_t m = 0; m < M; ++m) std::copy(p.X.begin() + m * K, p.X.begin() + (m + 1) * K, X.begin() + m * ldx);
          for (int use_bias = 0; use_bias < 2; ++use_bias) {
            const float* bias = use_bias ? p.bias.data() : nullptr;
            for (Isa isa : isa_levels()) {
              IsaCapScope cap(isa);
              for (bool vnni : vnni_variants(isa))
                for (int use_pool = 0; use_pool < 2; ++use_pool) {
                  VnniScope vs(vnni);
                  std::vector<float> Y(size_t(M * ldy), kSentinel);
                  gemm_repacked(X.data(), ldx, packed.data(), t, bias, Y.data(), ldy, M, N, K, use_pool ? &pool : nullptr);
                  for (int64_t m = 0; m < M; ++m) {
                    std::vector<float> y(size_t(N), kSentinel);
                    gemv_repacked(X.data() + m * ldx, packed.data(), t, bias, y.data(), N, K, nullptr);
                    for (int64_t n = 0; n < N; ++n)
                      if (!(Y[size_t(m * ldy + n)] == y[size_t(n)])) {
                        char buf[240];
                        std::snprintf(buf, sizeof buf, "gemm_repacked %s isa=%s vnni=%d pool=%d M=%lld N=%lld K=%lld Y[%lld][%lld] = %.9g, gemv_repacked %.9g",
                                      dtype_name(t), isa_name(isa), int(vnni), use_pool, (long long)M, (long long)N,
                                      (long long)K, (long long)m, (long long)n, double(Y[size_t(m * ldy + n)]), double(y[size_t(n)]));
                        emollm_test::report_failure(__FILE__, __LINE__, buf);
                        return;
                      }
                    // the padding between rows is not written
                    for (int64_t n = N; n < ldy && m + 1 < M; ++n) EXPECT(Y[size_t(m * ldy + n)] == kSentinel);
                  }
                }
            }
          }
        }
        ++seed;
      }
  std::vector<uint8_t> buf(4096);
  float x[64] = {}, y[8];
  EXPECT_THROWS(gemm_repacked(x, 32, buf.data(), DType::Q8_0, nullptr, y, 4, 2, 4, 33, nullptr), ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemm_repacked(x, 16, buf.data(), DType::Q8_0, nullptr, y, 4, 2, 4, 32, nullptr), ErrorCode::InvalidArgument);
}

// gemm_repacked's few-row path (M <= 8) each way (set_repacked_few_rows_path: Previous, each
// super-group prefetched 4 blocks ahead by its first tile; Spread, the next super-group spread
// over the current one's tiles, contiguous ranges a thread; SpreadPanel, Spread with X in one
// panel), with no pool and 1-3 threads, on matrices of several super-groups (N = 327: 21 groups,
// the last super-group partial and the last group 7 rows; N = 1040: 65 groups, 17 chunks at 2
// threads), M in one tile (2-6) and in 4-row tiles (8): every row bit-identical to gemv_repacked of
// that row, the padding between rows unwritten. An explicit path applies to q8_0 at M <= 3 too.
TEST(gemm_repacked_few_rows_paths_same_bits) {
  uint32_t seed = 7300;
  ThreadPool pool1(1), pool2(2), pool3(3);
  ThreadPool* pools[] = {nullptr, &pool1, &pool2, &pool3};
  for (DType t : {DType::Q4_0, DType::Q8_0})
    for (int64_t N : {327, 1040})
      for (int64_t K : {64, 1024}) {
        Weights w = make_weights(t, N, K, seed);
        std::vector<uint8_t> packed(quant_repack_bytes(t, N, K));
        quant_repack(w.bytes.data(), t, N, K, packed.data(), nullptr);
        for (int64_t M : {2, 3, 4, 5, 6, 8}) {
          const int64_t ldx = K + 32, ldy = N + 3;
          Problem p = make_problem(M, N, K, 0, 0, seed + 1);
          std::vector<float> X(size_t(M * ldx), 1e30f);
          for (int64_t m = 0; m < M; ++m) std::copy(p.X.begin() + m * K, p.X.begin() + (m + 1) * K, X.begin() + m * ldx);
          std::vector<float> ref(size_t(M * N));
          for (int64_t m = 0; m < M; ++m) gemv_repacked(X.data() + m * ldx, packed.data(), t, p.bias.data(), ref.data() + m * N, N, K, nullptr);
          for (int path = 0; path < 3; ++path)
            for (ThreadPool* pool : pools) {
              gemm_detail::set_repacked_few_rows_path(gemm_detail::FewRowsPath(path));
              std::vector<float> Y(size_t(M * ldy), kSentinel);
              gemm_repacked(X.data(), ldx, packed.data(), t, p.bias.data(), Y.data(), ldy, M, N, K, pool);
              gemm_detail::set_repacked_few_rows_path(gemm_detail::FewRowsPath::Default);
              for (int64_t m = 0; m < M; ++m) {
                for (int64_t n = 0; n < N; ++n)
                  if (!(Y[size_t(m * ldy + n)] == ref[size_t(m * N + n)])) {
                    char buf[240];
                    std::snprintf(buf, sizeof buf, "gemm_repacked %s path %d threads %d M=%lld N=%lld K=%lld Y[%lld][%lld] = %.9g, gemv_repacked %.9g",
                                  dtype_name(t), path, pool ? pool->size() : 0, (long long)M, (long long)N, (long long)K,
                                  (long long)m, (long long)n, double(Y[size_t(m * ldy + n)]), double(ref[size_t(m * N + n)]));
                    emollm_test::report_failure(__FILE__, __LINE__, buf);
                    return;
                  }
                for (int64_t n = N; n < ldy && m + 1 < M; ++n) EXPECT(Y[size_t(m * ldy + n)] == kSentinel);
              }
            }
        }
        ++seed;
      }
}

// gemm_repacked at M > 8 (prefill; on VNNI the X-panel kernel over the 16-row groups): against
// the float64 references of run_case_q8 (tight on the q8_0-rounded X, loose against the f32 X),
// every row bit-identical to gemv_repacked of that row (so also to the previous 4-row tiles), and
// within the f32 tolerance of gemm() on the standard layout (gemm_q8_vnni.cpp: the same integer
// block sums in another f32 order). M around the 6-row X panels (9, 11, 12, 13, 18, 47), N around
// the 16-row groups (1, 17, 32, 33), K of 1, 3 and 32 blocks, ldx / ldy padding; every ISA level,
// with and without VNNI, pool and bias. One product of 613 rows at K = 11008 spans two X chunks.
TEST(gemm_repacked_large_m_matches_reference) {
  ThreadPool pool(2);
  const bool vnni_cpu = isa_active() >= Isa::Avx512 && cpu_features().avx512vnni;
  if (!vnni_cpu) std::printf("  note: no AVX512-VNNI here: only the portable path of gemm_repacked is checked\n");
  struct Shape {
    int64_t M, N, K, xpad, ypad;
    bool all_levels;
  };
  std::vector<Shape> shapes;
  for (int64_t M : {9, 11, 12, 13, 18, 47})
    for (int64_t N : {1, 17, 32, 33})
      for (int64_t K : {32, 96, 1024}) shapes.push_back({M, N, K, M % 2 ? 32 : 0, N % 2 ? 3 : 0, true});
  shapes.push_back({613, 20, 11008, 0, 0, false});
  uint32_t seed = 7300;
  for (DType t : {DType::Q8_0, DType::Q4_0})
    for (const Shape& sh : shapes) {
      const int64_t M = sh.M, N = sh.N, K = sh.K;
      Weights w = make_weights(t, N, K, seed);
      Problem p = make_problem(M, N, K, sh.xpad, sh.ypad, seed + 1);
      ++seed;
      std::vector<uint8_t> packed(quant_repack_bytes(t, N, K));
      quant_repack(w.bytes.data(), t, N, K, packed.data(), &pool);
      const QuantX q = quantize_x(p);
      Problem pq = p;
      pq.X = q.xq;
      for (int use_bias = 0; use_bias < 2; ++use_bias) {
        const float* bias = use_bias ? p.bias.data() : nullptr;
        std::vector<float> R(size_t(M * p.ldy), kSentinel), Rq(size_t(M * p.ldy), kSentinel);
        ref::gemm(p.X.data(), p.ldx, w.bytes.data(), t, bias, R.data(), p.ldy, M, N, K);
        ref::gemm(pq.X.data(), p.ldx, w.bytes.data(), t, bias, Rq.data(), p.ldy, M, N, K);
        const std::vector<double> S = abs_scale(p, w, bias), Sq = abs_scale(pq, w, bias);
        const std::vector<Isa> levels = sh.all_levels ? isa_levels() : std::vector<Isa>{isa_active()};
        for (Isa isa : levels) {
          IsaCapScope cap(isa);
          for (bool vnni : vnni_variants(isa))
            for (int use_pool = 0; use_pool < 2; ++use_pool) {
              VnniScope vs(vnni);
              ThreadPool* pl = use_pool ? &pool : nullptr;
              // gemv_repacked of each row at this level: the bits every M must give
              std::vector<float> G(size_t(M * N), kSentinel);
              for (int64_t m = 0; m < M; ++m)
                gemv_repacked(p.X.data() + m * p.ldx, packed.data(), t, bias, G.data() + m * N, N, K, nullptr);
              const std::string what = std::string("gemm_repacked ") + dtype_name(t) + " isa=" + isa_name(isa) +
                                       " vnni=" + yesno(vnni) + " M=" + std::to_string(M) + " N=" + std::to_string(N) +
                                       " K=" + std::to_string(K) + " ldx=" + std::to_string(p.ldx) +
                                       " ldy=" + std::to_string(p.ldy) + " bias=" + yesno(use_bias) +
                                       " pool=" + yesno(use_pool);
              std::vector<float> Y(size_t(M * p.ldy), kSentinel);
              gemm_repacked(p.X.data(), p.ldx, packed.data(), t, bias, Y.data(), p.ldy, M, N, K, pl);
              if (!check_q8(Y, Rq, Sq, R, S, q, p, w, what)) return;
              for (int64_t m = 0; m < M; ++m)
                for (int64_t n = 0; n < N; ++n)
                  if (!(Y[size_t(m * p.ldy + n)] == G[size_t(m * N + n)])) {
                    char buf[320];
                    std::snprintf(buf, sizeof buf, "%s: Y[%lld][%lld] = %.9g, gemv_repacked %.9g", what.c_str(),
                                  (long long)m, (long long)n, double(Y[size_t(m * p.ldy + n)]),
                                  double(G[size_t(m * N + n)]));
                    emollm_test::report_failure(__FILE__, __LINE__, buf);
                    return;
                  }
              if (vnni && isa >= Isa::Avx512 && vnni_cpu) {
                // the standard layout's VNNI GEMM on the same q8_0 X: the same block sums, another
                // f32 order: each within the f32 tolerance of Rq, so within twice it of each other
                std::vector<float> U(size_t(M * p.ldy), kSentinel);
                gemm(p.X.data(), p.ldx, w.bytes.data(), t, bias, U.data(), p.ldy, M, N, K, pl);
                std::vector<double> S2 = Sq;
                for (double& v : S2) v *= 2.0;
                if (!check_result(Y, U, p, S2, 0.0, what + " [packed vs standard layout]")) return;
              }
            }
        }
      }
    }
}

#if defined(__x86_64__)
// The fused X rounding (gemm_q8_xquant.cpp: each row rounded to q8_0 straight into the X panels
// of the VNNI GEMMs) against the row rounding (qx_quantize_row_avx2) followed by the scalar
// packing: every panel dword the same, for the 4- and 6-row panels with per-block and per-half
// tails. Blocks of random values at several scales, zeros, signed zeros, denormals, ties at .5
// (d = 1 and d = 0.5), huge values and FLT_MAX, infinities, NaN at several places (the fused
// path's fallback: max_ps's order matters then), K of 1, 3, 5, 7, 131 and 344 blocks (groups of 4
// blocks and their remainders), rows past the panels' last. The 4-row panels also whole panel at a
// time (qx_pack_panel4: the 4 rows' quads interleaved in registers, full stores), byte for byte
// against both (M of 1, 5, 8 and 13: no whole panel, whole ones and a partial last, whole only).
template <class Panels>
bool qx_panels_same(const std::vector<float>& X, int64_t rows, int64_t K, int off, const char* what) {
  const int64_t nb = K / kQK, npm = (rows + Panels::kMR - 1) / Panels::kMR;
  const size_t n = size_t(npm * nb * Panels::kBlockDwords);
  std::vector<int32_t> a(n, 0x5a5a5a5a), b(n, 0x5a5a5a5a), c(n, 0x5a5a5a5a);
  std::vector<int8_t> qtmp(size_t(K) + 64);
  std::vector<float> dtmp(size_t(K / 4) + 16);
  // 0: the row rounding and the scalar packing; 1: fused row by row; 2: fused, 4-row panels whole
  const int ways = Panels::kMR == 4 ? 3 : 2;
  for (int way = 0; way < ways; ++way) {
    gemm_detail::set_qx_pack_fused(way != 0);
    gemm_detail::set_qx_pack_panel4(way == 2);
    Panels::pack(X.data(), K, rows, K, 0, npm, off, qtmp.data(), dtmp.data(), way == 0 ? b.data() : way == 1 ? a.data() : c.data());
  }
  gemm_detail::set_qx_pack_panel4(true);
  for (int way = 1; way < ways; ++way) {
    const std::vector<int32_t>& x = way == 1 ? a : c;
    for (size_t j = 0; j < n; ++j)
      if (x[j] != b[j]) {
        char buf[240];
        std::snprintf(buf, sizeof buf, "%s rows=%lld K=%lld off=%d: dword %zu %s 0x%08x, row rounding 0x%08x", what,
                      (long long)rows, (long long)K, off, j, way == 1 ? "fused" : "fused 4-row panel", unsigned(x[j]),
                      unsigned(b[j]));
        emollm_test::report_failure(__FILE__, __LINE__, buf);
        return false;
      }
  }
  return true;
}

TEST(qx_pack_fused_same_bits) {
  if (isa_active() < Isa::Avx512) {
    std::printf("  note: no AVX-512 here: the fused X rounding does not run\n");
    return;
  }
  struct Restore {
    ~Restore() {
      gemm_detail::set_qx_pack_fused(true);
      gemm_detail::set_qx_pack_panel4(true);
    }
  } restore;
  std::mt19937 rng(8100);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> ui(-126, 126);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  int checked = 0;
  for (int64_t K : {32, 96, 160, 224, 4192, 11008})
    for (int64_t rows : {1, 5, 8, 13}) {
      std::vector<float> X(size_t(rows * K));
      for (int64_t blk = 0; blk < rows * K / kQK; ++blk) {
        float* x = X.data() + blk * kQK;
        const int kind = int((blk * 7 + rows) % 12), at = int((blk * 13) % kQK);
        for (int j = 0; j < kQK; ++j) x[j] = nd(rng);
        switch (kind) {
          case 0: for (int j = 0; j < kQK; ++j) x[j] *= 1e-3f; break;
          case 1: for (int j = 0; j < kQK; ++j) x[j] *= 1e3f; break;
          case 2: for (int j = 0; j < kQK; ++j) x[j] = (j % 3) ? 0.0f : -0.0f; break;  // d = 0
          case 3: for (int j = 0; j < kQK; ++j) x[j] *= 1e-40f; break;                 // denormals
          case 4:  // ties at .5 with d = 1 (amax 127)
            for (int j = 0; j < kQK; ++j) x[j] = float(ui(rng)) + (j % 2 ? 0.5f : -0.5f);
            x[at] = (at % 2) ? 127.0f : -127.0f;
            break;
          case 5:  // ties with d = 0.5 (amax 63.5, id = 2): x = k / 2 + 1 / 4
            for (int j = 0; j < kQK; ++j) x[j] = float(ui(rng) / 2) * 0.5f + (j % 2 ? 0.25f : -0.25f);
            x[at] = -63.5f;
            break;
          case 6: for (int j = 0; j < kQK; ++j) x[j] *= 1e37f; x[at] = -std::numeric_limits<float>::max(); break;
          case 7: x[at] = (at % 2) ? inf : -inf; break;
          case 8: x[at] = nan; break;
          case 9: x[0] = nan; x[kQK - 1] = -nan; x[17] = 1e30f; break;
          case 10: x[at] = 1e30f; break;  // the rest rounds to 0
          default: break;
        }
      }
      for (int off : {8, 128}) {
        if (!qx_panels_same<gemm_detail::Q8XPanels<4>>(X, rows, K, off, "Q8XPanels<4>")) return;
        if (!qx_panels_same<gemm_detail::Q8XPanels<6>>(X, rows, K, off, "Q8XPanels<6>")) return;
      }
      if (!qx_panels_same<gemm_detail::Q8XPanels<6, gemm_detail::Q8XTail::PerHalf>>(X, rows, K, 32, "Q8XPanels<6, PerHalf>"))
        return;
      ++checked;
    }
  EXPECT(checked == 24);
}
#endif

namespace {
// One product for the X-panel kernel's same-bits tests: q8_0 / q4_0 weights repacked whole and their
// last 17 rows on their own (the second output of gemm_repacked_multi), and the reference G:
// gemv_repacked of each row.
struct RepackedCase {
  DType t;
  int64_t M, N, K;
  Weights w;
  Problem p;
  std::vector<uint8_t> packed, packed2;
  std::vector<float> G;
  RepackedCase(DType t_, int64_t M_, int64_t N_, int64_t K_, uint32_t seed, ThreadPool* pool)
      : t(t_), M(M_), N(N_), K(K_), w(make_weights(t_, N_, K_, seed)), p(make_problem(M_, N_, K_, 8, 3, seed + 1)),
        packed(quant_repack_bytes(t_, N_, K_)), packed2(quant_repack_bytes(t_, 17, K_)), G(size_t(M_ * N_)) {
    quant_repack(w.bytes.data(), t, N, K, packed.data(), pool);
    quant_repack(w.bytes.data() + size_t(N - 17) * w.rb, t, 17, K, packed2.data(), nullptr);
    for (int64_t m = 0; m < M; ++m)
      gemv_repacked(p.X.data() + m * p.ldx, packed.data(), t, p.bias.data(), G.data() + m * N, N, K, nullptr);
  }
};

// gemm_repacked and gemm_repacked_multi (the whole matrix and its last 17 rows as two outputs) on pl
// under the current settings: every value bit for bit G, the row padding unwritten. Reports the
// first difference with `what` (the settings) and returns false; counts the values compared.
bool repacked_agree(const RepackedCase& c, ThreadPool* pl, const std::string& what, int64_t* compared) {
  const Problem& p = c.p;
  const int64_t M = c.M, N = c.N;
  std::vector<float> Y(size_t(M * p.ldy), kSentinel);
  gemm_repacked(p.X.data(), p.ldx, c.packed.data(), c.t, p.bias.data(), Y.data(), p.ldy, M, N, c.K, pl);
  std::vector<float> Y1(size_t(M * p.ldy), kSentinel), Y2(size_t(M * 17), kSentinel);
  const RepackedOutput outs[2] = {{c.packed.data(), p.bias.data(), Y1.data(), p.ldy, N},
                                  {c.packed2.data(), p.bias.data() + (N - 17), Y2.data(), 17, 17}};
  gemm_repacked_multi(p.X.data(), p.ldx, c.t, outs, 2, M, c.K, pl);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      const float g = c.G[size_t(m * N + n)], y = Y[size_t(m * p.ldy + n)], y1 = Y1[size_t(m * p.ldy + n)];
      const float y2 = n >= N - 17 ? Y2[size_t(m * 17 + n - (N - 17))] : g;
      if (!(y == g && y1 == g && y2 == g)) {
        char buf[320];
        std::snprintf(buf, sizeof buf, "%s M=%lld N=%lld K=%lld %s threads=%d: Y[%lld][%lld] = %.9g, multi %.9g / %.9g, gemv_repacked %.9g",
                      dtype_name(c.t), (long long)M, (long long)N, (long long)c.K, what.c_str(), pl ? pl->size() : 0,
                      (long long)m, (long long)n, double(y), double(y1), double(y2), double(g));
        emollm_test::report_failure(__FILE__, __LINE__, buf);
        return false;
      }
      ++*compared;
    }
    for (int64_t n = N; n < p.ldy && m + 1 < M; ++n) EXPECT(Y[size_t(m * p.ldy + n)] == kSentinel);
  }
  return true;
}

// The X-panel same-bits tests' loop: a RepackedCase of q8_0 and then of q4_0 at each shape (seeds
// from `seed` up by 2, repacked on `pool`), each handed to check(case, shape); false as soon as a
// check returns false (it has reported the difference).
struct RepackedShape {
  int64_t M, N, K;
  int kgroup = -1;  // set_repacked_kgroup, for the tests that vary it by shape (-1: the default)
};
template <class Check>
bool each_repacked_case(std::initializer_list<RepackedShape> shapes, uint32_t seed, ThreadPool* pool, Check check) {
  for (DType t : {DType::Q8_0, DType::Q4_0})
    for (const RepackedShape& sh : shapes) {
      const RepackedCase c(t, sh.M, sh.N, sh.K, seed, pool);
      seed += 2;
      if (!check(c, sh)) return false;
    }
  return true;
}

// Whether gemm_repacked runs its X-panel kernel here (AVX-512 VNNI); says so when not.
bool xpanel_kernel_runs() {
  if (isa_active() >= Isa::Avx512 && cpu_features().avx512vnni) return true;
  std::printf("  note: no AVX512-VNNI here: the X-panel kernel does not run\n");
  return false;
}

// The X-panel kernel's settings back to their defaults when a test that changes them ends.
struct RepackedSettingsRestore {
  ~RepackedSettingsRestore() {
    gemm_detail::set_repacked_double_pumped(-1);
    gemm_detail::set_repacked_few_rows_path(gemm_detail::FewRowsPath::Default);
    gemm_detail::set_repacked_x_prefetch(true);
    gemm_detail::set_repacked_kslice(-1);
    gemm_detail::set_repacked_kgroup(-1);
    gemm_detail::set_repacked_pass_kib(-1);
  }
};
}  // namespace

// gemm_repacked's X-panel kernel in k slices (set_repacked_kslice: each weight panel's slice of
// kc blocks against a pass of X panels, the two sets of f32 sums kept per panel between slices):
// every row bit-identical to gemv_repacked of that row at every slice length and pass size, so the
// sums go on in the order of one call over the whole K. K of 11008 and 4096 (the 7B shapes) and odd
// block counts (101, 35, 3: the last slice shorter, an odd last block), M across the X chunks (613
// at K = 11008), passes of one panel to the default; 1-3 threads; gemm_repacked_multi too.
// Dropping a slice's sums or giving a slice an odd start (even and odd blocks swapped) fails it.
TEST(gemm_repacked_kslice_same_bits) {
  if (!xpanel_kernel_runs()) return;
  RepackedSettingsRestore restore;
  gemm_detail::set_repacked_double_pumped(0);  // -1 below: the full-width defaults (k slices from K = 8192) on any CPU
  ThreadPool pool2(2), pool3(3);
  // k slice (blocks), weight panels a group, KiB of X a pass; -1: the default (sliced at K 11008)
  struct Blocking {
    int kslice, kgroup, pass_kib;
  };
  const Blocking blockings[] = {{0, 1, 1536}, {2, 1, 1},  {2, 3, 64},    {4, 8, 1536}, {6, 1, 64},  {32, 8, 3072},
                                {32, 3, 1},   {64, 2, 64}, {100, 8, 1536}, {32, 1, 1536}, {-1, -1, -1}};
  int64_t compared = 0;
  const bool agree = each_repacked_case(
      {{613, 40, 11008}, {130, 64, 4096}, {47, 33, 3232}, {21, 17, 1120}, {13, 96, 96}}, 7700, &pool2,
      [&](const RepackedCase& c, const RepackedShape&) {
        for (const Blocking& bl : blockings)
          for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
            gemm_detail::set_repacked_kslice(bl.kslice);
            gemm_detail::set_repacked_kgroup(bl.kgroup);
            gemm_detail::set_repacked_pass_kib(bl.pass_kib);
            const std::string what = "kslice=" + std::to_string(bl.kslice) + " kgroup=" + std::to_string(bl.kgroup) +
                                     " pass=" + std::to_string(bl.pass_kib) + " KiB";
            if (!repacked_agree(c, pl, what, &compared)) return false;
          }
        return true;
      });
  if (!agree) return;
  EXPECT(compared == int64_t(2 * 11 * 3 * (613 * 40 + 130 * 64 + 47 * 33 + 21 * 17 + 13 * 96)));
}

// gemm_repacked's X-panel kernel with and without its X prefetch (set_repacked_x_prefetch: the
// unsliced calls prefetch the X panel 8 blocks ahead, past a panel's end into the next one and
// past the last panel's end): every row bit-identical to gemv_repacked of that row either way, on
// q4_0 and q8_0, K of 4096 / 11008 unsliced (set_repacked_kslice(0)) and the default slicing,
// odd block counts (101, 35: an odd last block, a last pair shorter than the prefetch distance),
// M across partial panels (629, 130, 13), passes of one panel and the default, 0-3 threads,
// gemm_repacked_multi too. A prefetching instance that drops or repeats a block fails it.
TEST(gemm_repacked_x_prefetch_same_bits) {
  if (!xpanel_kernel_runs()) return;
  RepackedSettingsRestore restore;
  gemm_detail::set_repacked_double_pumped(0);  // -1 below: the full-width defaults (k slices from K = 8192) on any CPU
  EXPECT(gemm_detail::repacked_x_prefetch());  // on by default
  ThreadPool pool2(2), pool3(3);
  int64_t compared = 0;
  const bool agree = each_repacked_case(
      {{629, 48, 4096}, {130, 40, 11008}, {47, 33, 3232}, {13, 96, 1120}}, 7900, &pool2,
      [&](const RepackedCase& c, const RepackedShape&) {
        for (bool xpf : {true, false})
          for (int kc : {0, -1})
            for (int pass : {1, -1})
              for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
                gemm_detail::set_repacked_x_prefetch(xpf);
                gemm_detail::set_repacked_kslice(kc);
                gemm_detail::set_repacked_pass_kib(pass);
                const std::string what = "x_prefetch=" + std::to_string(int(xpf)) + " kslice=" + std::to_string(kc) +
                                         " pass=" + std::to_string(pass);
                if (!repacked_agree(c, pl, what, &compared)) return false;
              }
        return true;
      });
  if (!agree) return;
  EXPECT(compared == int64_t(2 * 2 * 2 * 2 * 3 * (629 * 48 + 130 * 40 + 47 * 33 + 13 * 96)));
}

// gemm_repacked's X-panel kernel with its weight panels shared out by guided claims (the default,
// set_repacked_guided: 1 / (4 * threads) of what is left, down to one panel) and by equal chunks
// (off): every row bit-identical to gemv_repacked of that row either way, unsliced (K = 4096,
// set_repacked_kslice(0) too) and k-sliced (K = 11008, M across the X chunks: 613 rows, 7 panels:
// claims of one panel; K = 8192 with groups of 3 panels: 33 panels, claims of whole groups at 2
// threads and of one panel at 3, the last group cut short), with panels enough for the claims to
// shrink to one (N = 1040: 33 panels; 1057 with gemm_repacked_multi's 17-row output), 0-3 threads,
// undisturbed, with the last worker 25% slower (pool_set_slow_worker) and with it holding its first
// claim 700 us (pool_set_late_worker): the split moves, the bits do not. A claim that skips a panel
// leaves its outputs unwritten (the sentinel) and fails it; a panel done twice writes the same values
// again and is invisible here: parallel_guided's each-item-once tests (test_core, test_pool_protocol)
// hold that.
TEST(gemm_repacked_guided_same_bits) {
  if (!xpanel_kernel_runs()) return;
  RepackedSettingsRestore restore;
  gemm_detail::set_repacked_double_pumped(0);  // -1 below: the full-width defaults (k slices from K = 8192) on any CPU
  struct PoolScope {
    ~PoolScope() {
      pool_set_slow_worker(0);
      pool_set_late_worker(0);
      gemm_detail::set_repacked_guided(true);
    }
  } pool_scope;
  EXPECT(gemm_detail::repacked_guided());  // on by default
  ThreadPool pool2(2), pool3(3);
  enum class Disturb { None, Slow, Late };
  int64_t compared = 0;
  const bool agree = each_repacked_case(
      {{130, 1040, 4096}, {613, 200, 11008}, {47, 520, 1120}, {70, 1040, 8192, 3}}, 8100, &pool2,
      [&](const RepackedCase& c, const RepackedShape& sh) {
        for (bool guided : {true, false})
          for (int kc : {-1, 0})
            for (Disturb d : {Disturb::None, Disturb::Slow, Disturb::Late})
              for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
                gemm_detail::set_repacked_guided(guided);
                gemm_detail::set_repacked_kslice(kc);
                gemm_detail::set_repacked_kgroup(sh.kgroup);
                pool_set_slow_worker(d == Disturb::Slow ? 25 : 0);
                pool_set_late_worker(d == Disturb::Late ? 700 : 0);
                const std::string what = "guided=" + std::to_string(int(guided)) + " kslice=" + std::to_string(kc) +
                                         " disturb=" + std::to_string(int(d));
                const bool ok = repacked_agree(c, pl, what, &compared);
                pool_set_slow_worker(0);
                pool_set_late_worker(0);
                if (!ok) return false;
              }
        return true;
      });
  if (!agree) return;
  EXPECT(compared == int64_t(2 * 2 * 2 * 3 * 3 * (130 * 1040 + 613 * 200 + 47 * 520 + 70 * 1040)));
}

// The X-panel kernel's built-in blocking is chosen by the CPU trait (base/cpu_features.h
// avx512_double_pumped, injected here by set_repacked_double_pumped): k slices of 32 blocks from
// K = 8192 on with full-width AVX-512, none on q8_0 when 512-bit ops are double-pumped (Zen 4); the CPU's own
// trait when not injected; an explicit set_repacked_kslice wins under either. The detection rule:
// AMD family 25 with AVX-512 only. And the bits do not depend on the trait: every row of the 7B's
// down projection shape (K = 11008, M across the X chunks), K = 8192 and K = 4096 bit-identical to
// gemv_repacked of that row under both, 0-3 threads, gemm_repacked_multi too. A table row that
// ignores the trait, or a double-pumped path that drops a block, fails it.
TEST(gemm_repacked_defaults_follow_cpu_trait) {
  // (the trait's rule itself: test_decode_tuning.cpp decode_tuning_double_pumped_trait)
  const CpuFeatures& f = cpu_features();
  std::printf("  note: this CPU: %s family %d model %d, 512-bit ops %s\n", f.amd ? "AMD" : "not AMD", f.family, f.model,
              f.avx512_double_pumped ? "double-pumped" : "not double-pumped");
  if (!xpanel_kernel_runs()) return;
  RepackedSettingsRestore restore;
  const DType q4 = DType::Q4_0, q8 = DType::Q8_0;
  // not injected: the CPU's own row
  EXPECT(gemm_detail::repacked_kslice_for(q8, 344) == (f.avx512_double_pumped ? 0 : 32));
  EXPECT(gemm_detail::repacked_kslice_for(q4, 344) == (f.avx512_double_pumped ? 0 : 32));
  using FewRows = gemm_detail::FewRowsPath;
  EXPECT(gemm_detail::repacked_few_rows_path_for(q4, 5) == FewRows::SpreadPanel);
  EXPECT(gemm_detail::repacked_few_rows_path_for(q8, 3) == (f.avx512_double_pumped ? FewRows::Previous : FewRows::SpreadPanel));
  gemm_detail::set_repacked_double_pumped(0);
  // the few-row path: SpreadPanel on both rows; q8_0 below 4 rows Previous on the double-pumped row only
  EXPECT(gemm_detail::repacked_few_rows_path_for(q4, 5) == FewRows::SpreadPanel);
  EXPECT(gemm_detail::repacked_few_rows_path_for(q4, 2) == FewRows::SpreadPanel);
  EXPECT(gemm_detail::repacked_few_rows_path_for(q8, 6) == FewRows::SpreadPanel);
  EXPECT(gemm_detail::repacked_few_rows_path_for(q8, 2) == FewRows::SpreadPanel);
  gemm_detail::set_repacked_double_pumped(1);
  EXPECT(gemm_detail::repacked_few_rows_path_for(q4, 2) == FewRows::SpreadPanel);
  EXPECT(gemm_detail::repacked_few_rows_path_for(q8, 6) == FewRows::SpreadPanel);
  EXPECT(gemm_detail::repacked_few_rows_path_for(q8, 4) == FewRows::SpreadPanel);
  EXPECT(gemm_detail::repacked_few_rows_path_for(q8, 3) == FewRows::Previous);
  gemm_detail::set_repacked_few_rows_path(FewRows::Spread);  // an explicit path wins, q8_0 below 4 rows too
  EXPECT(gemm_detail::repacked_few_rows_path_for(q4, 5) == FewRows::Spread);
  EXPECT(gemm_detail::repacked_few_rows_path_for(q8, 3) == FewRows::Spread);
  gemm_detail::set_repacked_double_pumped(0);
  EXPECT(gemm_detail::repacked_few_rows_path_for(q4, 5) == FewRows::Spread);
  gemm_detail::set_repacked_few_rows_path(FewRows::Previous);
  EXPECT(gemm_detail::repacked_few_rows_path_for(q8, 6) == FewRows::Previous);
  gemm_detail::set_repacked_few_rows_path(FewRows::Default);
  gemm_detail::set_repacked_double_pumped(0);
  for (DType t : {q4, q8}) {
    EXPECT(gemm_detail::repacked_kslice_for(t, 344) == 32);  // K = 11008
    EXPECT(gemm_detail::repacked_kslice_for(t, 256) == 32);  // K = 8192
    EXPECT(gemm_detail::repacked_kslice_for(t, 128) == 0);   // K = 4096
  }
  gemm_detail::set_repacked_double_pumped(1);
  EXPECT(gemm_detail::repacked_kslice_for(q8, 344) == 0);
  EXPECT(gemm_detail::repacked_kslice_for(q8, 256) == 0);
  EXPECT(gemm_detail::repacked_kslice_for(q4, 344) == 0);
  EXPECT(gemm_detail::repacked_kslice_for(q4, 256) == 0);
  gemm_detail::set_repacked_kslice(16);  // an explicit slice wins under either trait
  EXPECT(gemm_detail::repacked_kslice_for(q8, 344) == 16);
  gemm_detail::set_repacked_double_pumped(0);
  EXPECT(gemm_detail::repacked_kslice_for(q8, 344) == 16);
  gemm_detail::set_repacked_kslice(-1);
  gemm_detail::set_repacked_double_pumped(-1);
  EXPECT(gemm_detail::repacked_kslice_for(q8, 344) == (f.avx512_double_pumped ? 0 : 32));
  ThreadPool pool2(2), pool3(3);
  int64_t compared = 0;
  const bool agree = each_repacked_case(
      {{613, 40, 11008}, {70, 520, 8192}, {130, 64, 4096}}, 8300, &pool2, [&](const RepackedCase& c, const RepackedShape&) {
        for (int dp : {0, 1})
          for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
            gemm_detail::set_repacked_double_pumped(dp);
            if (!repacked_agree(c, pl, "double_pumped=" + std::to_string(dp), &compared)) return false;
          }
        return true;
      });
  if (!agree) return;
  EXPECT(compared == int64_t(2 * 2 * 3 * (613 * 40 + 70 * 520 + 130 * 64)));
}

// gemm_repacked_multi (a layer's q/k/v or gate/up of one X): each output bit-identical to
// gemv_repacked of each row (what gemm_repacked of that output alone gives; the tests above hold it
// to the float64 references; at M > 8 on VNNI the fused path: X packed once, one dispatch over all
// outputs' panels); outputs of different N (groups of 16 and panels of 32 rows cut across) with their own bias,
// row stride and padding, which stays unwritten. M of 1..130 covers the GEMV, the 4-row tiles and
// the X-panel kernel; every ISA level, with and without VNNI and pool.
TEST(gemm_repacked_multi_equals_per_output) {
  ThreadPool pool(2);
  uint32_t seed = 7500;
  for (DType t : {DType::Q8_0, DType::Q4_0})
    for (int64_t K : {64, 1024}) {
      const int64_t Ns[3] = {40, 17, 96}, pads[3] = {3, 0, 8};
      std::vector<Weights> w;
      std::vector<std::vector<uint8_t>> packed;
      for (int j = 0; j < 3; ++j) {
        w.push_back(make_weights(t, Ns[j], K, seed++));
        packed.emplace_back(quant_repack_bytes(t, Ns[j], K));
        quant_repack(w[size_t(j)].bytes.data(), t, Ns[j], K, packed[size_t(j)].data(), &pool);
      }
      std::vector<float> bias1(static_cast<size_t>(Ns[1]));
      for (int64_t n = 0; n < Ns[1]; ++n) bias1[size_t(n)] = 0.25f * float(n % 7) - 0.5f;
      for (int64_t M : {1, 5, 9, 47, 130}) {
        const int64_t ldx = K + 16;
        Problem p = make_problem(M, 1, K, 0, 0, seed++);
        std::vector<float> X(size_t(M * ldx), 1e30f);
        for (int64_t m = 0; m < M; ++m) std::copy(p.X.begin() + m * K, p.X.begin() + (m + 1) * K, X.begin() + m * ldx);
        for (Isa isa : isa_levels()) {
          IsaCapScope cap(isa);
          for (bool vnni : vnni_variants(isa))
            for (int use_pool = 0; use_pool < 2; ++use_pool) {
                VnniScope vs(vnni);
                ThreadPool* pl = use_pool ? &pool : nullptr;
                std::vector<std::vector<float>> Y(3), A(3);
                RepackedOutput outs[3];
                for (int j = 0; j < 3; ++j) {
                  const int64_t ldy = Ns[j] + pads[j];
                  Y[size_t(j)].assign(size_t(M * ldy), kSentinel);
                  A[size_t(j)].assign(size_t(M * ldy), kSentinel);
                  outs[j] = RepackedOutput{packed[size_t(j)].data(), j == 1 ? bias1.data() : nullptr, Y[size_t(j)].data(), ldy, Ns[j]};
                  for (int64_t m = 0; m < M; ++m)  // gemv_repacked of each row: the bits gemm_repacked gives at any M
                    gemv_repacked(X.data() + m * ldx, packed[size_t(j)].data(), t, outs[j].bias,
                                  A[size_t(j)].data() + m * ldy, Ns[j], K, nullptr);
                }
                gemm_repacked_multi(X.data(), ldx, t, outs, 3, M, K, pl);
                for (int j = 0; j < 3; ++j)
                  for (size_t i = 0; i < Y[size_t(j)].size(); ++i)
                    if (!(Y[size_t(j)][i] == A[size_t(j)][i])) {  // bits (the padding: the sentinel in both)
                      char buf[260];
                      std::snprintf(buf, sizeof buf, "gemm_repacked_multi %s isa=%s vnni=%d pool=%d M=%lld K=%lld output %d [%zu] = %.9g, gemv_repacked %.9g",
                                    dtype_name(t), isa_name(isa), int(vnni), use_pool, (long long)M, (long long)K, j, i,
                                    double(Y[size_t(j)][i]), double(A[size_t(j)][i]));
                      emollm_test::report_failure(__FILE__, __LINE__, buf);
                      return;
                    }
              }
        }
      }
    }
  std::vector<uint8_t> buf(4096);
  float x[64] = {}, y[8];
  RepackedOutput o{buf.data(), nullptr, y, 4, 4};
  EXPECT_THROWS(gemm_repacked_multi(x, 32, DType::Q8_0, &o, 0, 2, 32, nullptr), ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemm_repacked_multi(x, 32, DType::Q8_0, &o, 1, 2, 33, nullptr), ErrorCode::InvalidArgument);  // K % 32
  EXPECT_THROWS(gemm_repacked_multi(x, 16, DType::Q8_0, &o, 1, 2, 32, nullptr), ErrorCode::InvalidArgument);  // ldx < K
  EXPECT_THROWS(gemm_repacked_multi(x, 32, DType::F32, &o, 1, 2, 32, nullptr), ErrorCode::InvalidArgument);
  RepackedOutput bad{buf.data(), nullptr, y, 3, 4};  // ldy < N
  EXPECT_THROWS(gemm_repacked_multi(x, 32, DType::Q8_0, &bad, 1, 2, 32, nullptr), ErrorCode::InvalidArgument);
}

// The switch: Q8 is the default (unless EMOLLM_QUANT_ACT says otherwise), F32 gives the f32-exact
// numerics; the two differ at M <= 8 and, on CPUs with AVX512-VNNI (the q8 packed GEMM), at M > 8;
// without VNNI, M > 8 (prefill) is the same in both modes.
TEST(gemm_quant_activations_switch) {
  const char* env = std::getenv("EMOLLM_QUANT_ACT");
  if (!env) EXPECT(quant_activations() == QuantActivations::Q8);
  ThreadPool pool(2);
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    const int64_t N = 21, K = 1024;
    Weights w = make_weights(t, N, K, 31);
    for (int64_t M : {1, 8, 9}) {
      Problem p = make_problem(M, N, K, 0, 0, 32);
      std::vector<float> Yq(size_t(M * N)), Yf(size_t(M * N)), R(size_t(M * N));
      {
        QuantActivationsScope s(QuantActivations::Q8);
        EXPECT(quant_activations() == QuantActivations::Q8);
        gemm(p.X.data(), K, w.bytes.data(), t, p.bias.data(), Yq.data(), N, M, N, K, &pool);
      }
      {
        QuantActivationsScope s(QuantActivations::F32);
        EXPECT(quant_activations() == QuantActivations::F32);
        gemm(p.X.data(), K, w.bytes.data(), t, p.bias.data(), Yf.data(), N, M, N, K, &pool);
      }
      ref::gemm(p.X.data(), K, w.bytes.data(), t, p.bias.data(), R.data(), N, M, N, K);
      check_result(Yf, R, p, abs_scale(p, w, p.bias.data()), 0.0,
                   std::string("F32 mode vs f32 ref ") + dtype_name(t) + " M=" + std::to_string(M));
      bool differ = false;
      for (int64_t i = 0; i < M * N; ++i) differ |= Yq[i] != Yf[i];
      if (q8_numerics(isa_active(), gemm_detail::vnni_allowed(), M))
        EXPECT(differ);
      else
        EXPECT_ALL_CLOSE(Yq.data(), Yf.data(), M * N, 0.0, 0.0, std::string("prefill ignores the mode ") + dtype_name(t));
    }
  }
}

// gemv_repacked's two-stream q4_0 pass (set_q40_ms) for one scope, restored after.
struct Q40MsScope {
  explicit Q40MsScope(bool on) : prev_(gemm_detail::q40_ms()) { gemm_detail::set_q40_ms(on); }
  ~Q40MsScope() { gemm_detail::set_q40_ms(prev_); }
  bool prev_;
};

// The M = 1 same-bits loop of the repacked GEMV's path switches: for weights t of N x K, every
// VNNI variant, 1-3 threads and bias off / on, gemv_repacked and gemv_repacked_multi (a 37-row
// output first, so the second's groups start mid super-group in the shared numbering) with the
// reference path (`reference()` sets it), then with each of `variants` paths (`variant(v)` sets it
// and names it): every output bit for bit the reference's. Returns the comparisons made.
int m1_paths_same_bits(DType t, int64_t N, int64_t K, uint32_t seed, const std::function<void()>& reference,
                       int variants, const std::function<std::string(int)>& variant) {
  int compared = 0;
  ThreadPool pool2(2), pool3(3);
  ThreadPool* pools[3] = {nullptr, &pool2, &pool3};
  std::vector<float> bias(static_cast<size_t>(N)), bias37(37);
  for (size_t i = 0; i < bias.size(); ++i) bias[i] = float(int(i % 7) - 3) * 0.125f;
  for (size_t i = 0; i < bias37.size(); ++i) bias37[i] = float(int(i % 5) - 2) * 0.25f;
  Weights w = make_weights(t, N, K, seed), w37 = make_weights(t, 37, K, seed + 5);
  std::vector<uint8_t> r(quant_repack_bytes(t, N, K)), r37(quant_repack_bytes(t, 37, K));
  quant_repack(w.bytes.data(), t, N, K, r.data(), nullptr);
  quant_repack(w37.bytes.data(), t, 37, K, r37.data(), nullptr);
  Problem p = make_problem(1, N, K, 0, 0, seed + 1);
  auto run = [&](const float* b, ThreadPool* pool, std::vector<float>& y, std::vector<float>& ma, std::vector<float>& mb) {
    gemv_repacked(p.X.data(), r.data(), t, b, y.data(), N, K, pool);
    GemvOutput o[2] = {{r37.data(), bias37.data(), ma.data(), 37}, {r.data(), b, mb.data(), N}};
    gemv_repacked_multi(p.X.data(), t, o, 2, K, pool);
  };
  for (bool vnni : vnni_variants(isa_active()))
    for (ThreadPool* pool : pools)
      for (int use_bias = 0; use_bias < 2; ++use_bias) {
        VnniScope vs(vnni);
        const float* b = use_bias ? bias.data() : nullptr;
        std::vector<float> y1(size_t(N), kSentinel), m1a(37, kSentinel), m1b(size_t(N), kSentinel);
        reference();
        run(b, pool, y1, m1a, m1b);
        for (float v : y1) EXPECT(v != kSentinel);
        for (int v = 0; v < variants; ++v) {
          const std::string what = std::string(dtype_name(t)) + " " + variant(v) + " vnni=" + yesno(vnni) +
                                   " threads=" + std::to_string(pool ? pool->size() : 1) + " bias=" + yesno(use_bias) +
                                   " N=" + std::to_string(N) + " K=" + std::to_string(K);
          std::vector<float> y(size_t(N), kSentinel), ma(37, kSentinel), mb(size_t(N), kSentinel);
          run(b, pool, y, ma, mb);
          same(y, y1, what);
          same(ma, m1a, what + " multi[0]");
          same(mb, m1b, what + " multi[1]");
          ++compared;
        }
      }
  return compared;
}

// gemv_repacked's q4_0 pass on two streams (gemm_detail::set_q40_ms, default on:
// each thread's super-groups cut into two contiguous parts read side by side, a left-over one as
// one part, the groups of a partial last super-group by the one-stream passes) gives the bits of
// the one-stream pass (off): each group keeps its blocks' order and its even / odd accumulators.
// N around multiples of 64 and 128 (whole and padded last super-groups, an odd count of them) and
// N = 4096 (parts of several super-groups at 1-3 threads), K of 1, 3 and 64 blocks (an odd block
// count leaves one block after the pairs), with and without bias, the pass-edge prefetch on and
// off, the two-stream pass's prefetch T0 / NTA / T1 / none 4 KiB ahead and T0 1 KiB, NTA 512 B,
// T1 2 KiB ahead (set_q40_ms_ahead), a record's loads t-major and in address order
// (set_q40_ms_addr_order) without prefetch and with T0 1 / 2 KiB, T1 4 KiB, NTA 2 KiB, 1-3
// threads, and gemv_repacked_multi with a first output of 37 rows (the second's groups
// start mid super-group in the shared numbering). q8_0 ignores the setting (checked too). Fails if
// a stream's outputs, bias or cols are taken at the wrong part's offsets, or a part's super-group
// is skipped or read twice.
TEST(gemv_q40_ms_bit_equal_one_stream) {
  {
    Q40MsScope s(false);
    EXPECT(!gemm_detail::q40_ms());
  }
  struct Restore {
    bool ms = gemm_detail::q40_ms(), addr = gemm_detail::q40_ms_addr_order();
    gemm_detail::GemvPrefetch p = gemm_detail::q40_ms_prefetch();
    int a = gemm_detail::q40_ms_ahead();
    ~Restore() {
      gemm_detail::set_q40_ms(ms), gemm_detail::set_q40_ms_prefetch(p), gemm_detail::set_q40_ms_ahead(a);
      gemm_detail::set_q40_ms_addr_order(addr);
    }
  } restore;
  // every software prefetch of the two-stream pass (decode_tuning.h: T0 on Zen 5, none on
  // double-pumped AVX-512) and some distances: prefetches only, the same bits; a record's loads in
  // t-major and in address order (set_q40_ms_addr_order: record_block_q40_addr, the same operations
  // in another order) without prefetch and with each hint (Zen 5: T0 2 KiB, address order). Equal bits
  // cannot show which order ran: the dispatch runs the form gemm_detail::gemv_m1_form names
  // (record_block_q40_addr with or without a prefetch loop before each record),
  // whose choice per setting and per CPU row test_decode_tuning.cpp decode_tuning_gemv_m1_forms
  // checks; q40_read_patterns' rows gemv-addr / gemv-tmajor time the two orders
  using P = gemm_detail::GemvPrefetch;
  const struct {
    P p;
    int ahead;
    bool addr;
  } forms[] = {{P::T0, 4096, false}, {P::Nta, 4096, false}, {P::None, 4096, false}, {P::None, 4096, true},
               {P::T1, 4096, false}, {P::T0, 1024, true},  {P::Nta, 512, false},  {P::T1, 2048, false},
               {P::T0, 2048, true},  {P::T1, 4096, true},  {P::Nta, 2048, true}};
  const int nforms = int(sizeof forms / sizeof forms[0]);
  int compared = 0;
  uint32_t seed = 8100;
  for (DType t : {DType::Q4_0, DType::Q8_0})
    for (int64_t K : {32, 96, 2048})
      for (int64_t N : {64, 100, 128, 192, 250, 256, 320, 448, 1000, 1088, 4096}) {
        if (N == 4096 && K == 32) continue;
        if (t == DType::Q8_0 && N > 256) continue;  // q8_0: only that the setting changes nothing
        compared += m1_paths_same_bits(
            t, N, K, seed, [] { gemm_detail::set_q40_ms(false); }, nforms,
            [&](int v) {
              gemm_detail::set_q40_ms(true);
              gemm_detail::set_q40_ms_prefetch(forms[v].p), gemm_detail::set_q40_ms_ahead(forms[v].ahead);
              gemm_detail::set_q40_ms_addr_order(forms[v].addr);
              EXPECT(gemm_detail::q40_ms_ahead() == forms[v].ahead);
              EXPECT(gemm_detail::q40_ms_addr_order() == forms[v].addr);
              return "two streams prefetch=" + std::to_string(int(forms[v].p)) + " ahead=" +
                     std::to_string(forms[v].ahead) + " addr_order=" + std::to_string(int(forms[v].addr));
            });
        ++seed;
      }
  EXPECT(compared > 0);
}

// gemv_repacked's q8_0 M = 1 pass in S contiguous parts a thread (gemm_detail::set_q80_streams,
// S = 1-4: one group of each part a pass, parts_q80_avx512; the groups left over by the 4-group
// passes) with every software prefetch along its streams, 1 KiB and 4 KiB ahead (set_q80_ahead:
// where the prefetches and a cold start's point), with and without the 17th prefetch a block
// pair (set_q80_line17), gives the bits of the four-adjacent-groups
// pass (S = 0): each group keeps its blocks' order and its even / odd accumulators. N of 1-65
// groups (part sizes with and without left-over groups, a partial last group), K of 1, 3 and 64
// blocks (an odd block count leaves one block after the pairs), with and without bias, 1-3
// threads, and gemv_repacked_multi with a first output of 37 rows (the second's groups start at
// an odd group of the shared numbering). Fails if a part's outputs, bias or cols are taken at the
// wrong offset, or a group is skipped or read twice.
TEST(gemv_q80_parts_bit_equal_four_group_pass) {
  struct Restore {
    int s = gemm_detail::q80_streams();
    gemm_detail::GemvPrefetch p = gemm_detail::q80_prefetch();
    int a = gemm_detail::q80_ahead();
    bool l = gemm_detail::q80_line17();
    ~Restore() {
      gemm_detail::set_q80_streams(s), gemm_detail::set_q80_prefetch(p), gemm_detail::set_q80_ahead(a);
      gemm_detail::set_q80_line17(l);
    }
  } restore;
  const gemm_detail::GemvPrefetch pfs[4] = {gemm_detail::GemvPrefetch::None, gemm_detail::GemvPrefetch::T0,
                                            gemm_detail::GemvPrefetch::T1, gemm_detail::GemvPrefetch::Nta};
  int compared = 0;
  uint32_t seed = 8300;
  for (int64_t K : {32, 96, 2048})
    for (int64_t N : {16, 40, 48, 100, 112, 208, 250, 1040}) {
      // variant v: w = v % 32: S = 1 + w / 8 parts, prefetch pfs[w % 4], (w / 4) % 2 ? 4 KiB : 1 KiB
      // ahead; the 17th prefetch from v = 32 on
      compared += m1_paths_same_bits(
          DType::Q8_0, N, K, seed, [] { gemm_detail::set_q80_streams(0); }, 64,
          [&](int v) {
            const int w = v % 32, S = 1 + w / 8, ahead = (w / 4) % 2 ? 4096 : 1024;
            const bool line17 = v >= 32;
            gemm_detail::set_q80_streams(S);
            gemm_detail::set_q80_prefetch(pfs[w % 4]);
            gemm_detail::set_q80_ahead(ahead);
            gemm_detail::set_q80_line17(line17);
            EXPECT(gemm_detail::q80_streams() == S && gemm_detail::q80_ahead() == ahead);
            EXPECT(gemm_detail::q80_line17() == line17);
            return "parts=" + std::to_string(S) + " prefetch=" + std::to_string(int(pfs[w % 4])) + " ahead=" +
                   std::to_string(ahead) + " line17=" + (line17 ? "on" : "off");
          });
      ++seed;
    }
  EXPECT(compared > 0);
}

// One shape of the bf16 same-bits / blocking tests below: its weights and problem, the reference (ref::gemm,
// double accumulation) on X rounded to bf16, the tolerance scale S and the weights' panels.
struct Bf16BlockingCase {
  Weights w;
  Problem p;
  std::vector<float> R;
  std::vector<double> S;
  AlignedPtr<uint8_t> pan;
  std::string shape;
  const float* bias = nullptr;  // p.bias, or none (with_bias false)
  Bf16BlockingCase(int64_t M, int64_t N, int64_t K, uint32_t wseed, uint32_t pseed, bool with_bias = true)
      : w(make_weights(DType::BF16, N, K, wseed)), p(make_problem(M, N, K, 3, 2, pseed)) {
    if (with_bias) bias = p.bias.data();
    Problem pr = p;
    for (auto& v : pr.X)
      if (!std::isnan(v)) v = bf16_to_f32(f32_to_bf16(v));
    R.assign(size_t(M * p.ldy), kSentinel);
    ref::gemm(pr.X.data(), p.ldx, w.bytes.data(), DType::BF16, bias, R.data(), p.ldy, M, N, K);
    S = abs_scale(pr, w, bias);
    pan = make_aligned<uint8_t>(bf16_panels_bytes(N, K));
    bf16_pack_panels(w.bytes.data(), N, K, pan.get(), nullptr);
    shape = " M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) +
            (with_bias ? "" : " no bias");
  }
};

// The bf16 packed GEMM's paths on one case: gemm() on the row-major matrix (with the legacy blocking
// when asked) and, at M > kSmallMMax, gemm_bf16_panels and gemm_bf16_panels_multi on the case's
// panels, each within the f32 tolerance of ref::gemm on X rounded to bf16, panels and multi bit for
// bit gemm(), and gemm() and panels each bit for bit the same without a pool and with pools of 2
// and 3 threads; gemm() also bit for bit itself with W packed a block at a time
// (set_bf16_gemm_wbcast(false): where the W-broadcast driver applies, K > 4096 or the legacy
// blocking, K even, no bias, the other driver). Returns the pools compared (3). `what` names the
// test in failures.
int expect_bf16_paths_agree(const Bf16BlockingCase& c, int64_t M, int64_t N, int64_t K, bool legacy,
                            const std::string& what) {
  ThreadPool pool2(2), pool3(3);
  const Problem& p = c.p;
  std::vector<float> Y0, Yp0;  // without a pool
  int compared = 0;
  for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
    std::vector<float> Y, Yw, Yp, Ym;
    gemm_detail::set_bf16_gemm_legacy_blocking(legacy);
    gemm_detail::set_small_m_enabled(false);
    Y.assign(size_t(M * p.ldy), kSentinel);
    gemm(p.X.data(), p.ldx, c.w.bytes.data(), DType::BF16, c.bias, Y.data(), p.ldy, M, N, K, pl);
    Yw.assign(size_t(M * p.ldy), kSentinel);
    gemm_detail::set_bf16_gemm_wbcast(false);
    gemm(p.X.data(), p.ldx, c.w.bytes.data(), DType::BF16, c.bias, Yw.data(), p.ldy, M, N, K, pl);
    gemm_detail::set_bf16_gemm_wbcast(true);
    if (M > gemm_detail::kSmallMMax) {
      Yp.assign(size_t(M * p.ldy), kSentinel);
      gemm_bf16_panels(p.X.data(), p.ldx, c.pan.get(), c.bias, Yp.data(), p.ldy, M, N, K, pl);
      Ym.assign(size_t(M * p.ldy), kSentinel);
      const PanelOutput o{c.pan.get(), c.bias, Ym.data(), p.ldy, N};
      gemm_bf16_panels_multi(p.X.data(), p.ldx, &o, 1, M, K, pl);
    }
    gemm_detail::set_small_m_enabled(true);
    gemm_detail::set_bf16_gemm_legacy_blocking(false);
    const std::string at = what + c.shape + " threads=" + std::to_string(pl ? pl->size() : 1);
    check_result(Y, c.R, p, c.S, 0.0, "gemm " + at);
    same(Yw, Y, "gemm W packed vs W broadcast " + at);
    if (!Yp.empty()) {
      check_result(Yp, c.R, p, c.S, 0.0, "panels " + at);
      check_result(Ym, c.R, p, c.S, 0.0, "panels multi " + at);
      same(Yp, Y, "panels vs gemm " + at);
      same(Ym, Y, "panels multi vs gemm " + at);
    }
    if (!pl) {
      Y0 = Y, Yp0 = Yp;
    } else {
      same(Y, Y0, "gemm pool vs none " + at);
      if (!Yp.empty()) same(Yp, Yp0, "panels pool vs none " + at);
    }
    ++compared;
  }
  return compared;
}

// The vdpbf16ps GEMM with K in several k blocks runs X packed k block by k block, each W panel's
// tiles down the row panels (the previous order, whole-K X panels with row panels outer, and its
// switch EMOLLM_BF16_GEMM_X_KBLOCKS went in session 22: the same k blocks, the same bits): gemm()
// on the row-major matrix and gemm_bf16_panels within the f32 tolerance of ref::gemm on X rounded
// to bf16, panels (and panels_multi) bit for bit gemm(), and each bit for bit the same at 1-3
// threads (expect_bf16_paths_agree). Shapes: K = 11008 (22 blocks of 256 pairs, a 128-pair tail), K odd (a half pair) and K not a
// multiple of 512 in several blocks, the legacy blocking (256-pair blocks at short K), M with a
// short last row panel (M % 6 = 1..5) and M = 1300 at K = 11008 (two row chunks), N not a multiple
// of 64. Fails if the order's X offsets, tile order or k blocks change a sum (or read a wrong
// micro-panel).
TEST(gemm_bf16_x_kblocks_bits) {
  if (!cpu_features().avx512bf16 || isa_active() < Isa::Avx512) return;
  struct Shape { int64_t M, N, K; bool legacy; };
  int compared = 0;
  for (const Shape sh : {Shape{97, 130, 11008, false}, Shape{1300, 65, 11008, false}, Shape{65, 70, 8193, false},
                          Shape{16, 200, 4099, false}, Shape{130, 63, 515, true}, Shape{20, 129, 1031, true},
                          Shape{71, 64, 9000, false}}) {
    const Bf16BlockingCase c(sh.M, sh.N, sh.K, uint32_t(5 * sh.K + sh.N), uint32_t(sh.M + 11 * sh.K));
    compared += expect_bf16_paths_agree(c, sh.M, sh.N, sh.K, sh.legacy, "x k blocks");
  }
  EXPECT(compared == 21);
}

// gemm() on a row-major bf16 W with K in several k blocks, K even and no bias (a decoder's down
// projection) runs the W-broadcast driver (X packed transposed, W's pairs broadcast from its rows,
// Y^T in a scratch transposed into Y per W block): bit for bit the packed-W driver
// (set_bf16_gemm_wbcast(false)) and the panels, within the f32 tolerance of ref::gemm, the same at
// 1-3 threads (expect_bf16_paths_agree). Shapes: K = 11008 (a 128-pair last k block), 5632 and
// 4098 (a 1-pair one), the legacy blocking at K = 1030; M = 400 (a last X^T panel of 16 rows), 65
// (one row past a panel), 1300 at K = 11008 (two X chunks, 704 and 596 rows) and N = 1 / 7 / 20 /
// 63 / 130 / 509 (W tiles of 1-6 rows; a block of 504 rows and a 5-row rest); ldx / ldy padded. Fails if a tile reads a wrong W row or pair, a block is added to the
// wrong Y^T rows, or the transpose into Y drops or moves an element.
TEST(gemm_bf16_wbcast_bits) {
  if (!cpu_features().avx512bf16 || isa_active() < Isa::Avx512 || !bf16_panels_usable()) return;
  struct Shape { int64_t M, N, K; bool legacy; };
  int compared = 0;
  for (const Shape sh : {Shape{400, 130, 11008, false}, Shape{65, 509, 5632, false}, Shape{97, 7, 4098, false},
                          Shape{130, 1, 11008, false}, Shape{70, 63, 1030, true}, Shape{1300, 20, 11008, false}}) {
    const Bf16BlockingCase c(sh.M, sh.N, sh.K, uint32_t(3 * sh.K + sh.N), uint32_t(sh.M + 17 * sh.K), false);
    compared += expect_bf16_paths_agree(c, sh.M, sh.N, sh.K, sh.legacy, "w broadcast");
  }
  EXPECT(compared == 18);
}

// The vdpbf16ps microkernel's X prefetch (on in the long-K k-block order, K > 4096; off with K in
// one block, K = 3001 / 4095 / 1024 here; its switch EMOLLM_BF16_GEMM_X_PREFETCH went in session
// 22) runs the pairs two at a time with a tail pair for an odd k block. Within the f32 tolerance
// of ref::gemm on X rounded to bf16, and bit for bit the same across gemm() on the row-major
// matrix, gemm_bf16_panels and gemm_bf16_panels_multi (whose whole-K X panels run without it) and
// at 1-3 threads: K = 11008 (22 blocks of 256 pairs, a 128-pair tail), K = 5633 and 4097 (a last k
// block of one pair), one block of 1501 pairs (odd: the tail pair) and of 2048, K = 1024, M with a
// short last row panel, N not a multiple of 64. Fails if the paired loop drops or repeats a pair
// (e.g. without its tail).
TEST(gemm_bf16_x_prefetch_bits) {
  if (!cpu_features().avx512bf16 || isa_active() < Isa::Avx512 || !bf16_panels_usable()) return;
  struct Shape { int64_t M, N, K; };
  int compared = 0;
  for (const Shape sh : {Shape{97, 130, 11008}, Shape{70, 70, 5633}, Shape{65, 129, 4097}, Shape{83, 64, 3001},
                          Shape{131, 100, 4095}, Shape{100, 65, 1024}}) {
    const Bf16BlockingCase c(sh.M, sh.N, sh.K, uint32_t(7 * sh.K + sh.N), uint32_t(sh.M + 13 * sh.K));
    compared += expect_bf16_paths_agree(c, sh.M, sh.N, sh.K, false, "x prefetch");
  }
  EXPECT(compared == 18);
}

// bf16_pack_panels (pack_w_bf16pairs, each group of 16 rows over its whole k range; the previous
// order and its switch EMOLLM_BF16_PACK_ROW_GROUPS went in session 22) against the layout written
// out word by word: panel p, pair q, column j holds W[p*64+j]'s elements 2q (low half) and 2q+1
// (high half), zero past K or past N. N not a multiple of 64 or 16, K odd, K not a multiple of 32,
// one pool and none. (gemm(), which packs W block by block with the same function, is held to
// ref::gemm by the tests above.)
TEST(gemm_bf16_pack_panels_layout) {
  if (!cpu_features().avx512bf16 || isa_active() < Isa::Avx512 || !bf16_panels_usable()) return;
  ThreadPool pool2(2);
  struct Shape { int64_t N, K; };
  int compared = 0;
  for (const Shape sh : {Shape{130, 11008}, Shape{77, 1031}, Shape{64, 4096}, Shape{9, 530}, Shape{200, 37}}) {
    Weights w = make_weights(DType::BF16, sh.N, sh.K, uint32_t(3 * sh.K + 7 * sh.N));
    const int64_t kp = (sh.K + 1) / 2, npan = (sh.N + 63) / 64;
    const size_t pb = bf16_panels_bytes(sh.N, sh.K);
    EXPECT(pb >= size_t(npan * kp * 64) * 4);
    const uint16_t* W = reinterpret_cast<const uint16_t*>(w.bytes.data());
    for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2}) {
      AlignedPtr<uint8_t> pk = make_aligned<uint8_t>(pb);
      bf16_pack_panels(w.bytes.data(), sh.N, sh.K, pk.get(), pl);
      const uint32_t* o = reinterpret_cast<const uint32_t*>(pk.get());
      int64_t bad = 0;
      for (int64_t p = 0; p < npan; ++p)
        for (int64_t q = 0; q < kp; ++q)
          for (int64_t j = 0; j < 64; ++j) {
            const int64_t n = p * 64 + j;
            auto elem = [&](int64_t k) -> uint32_t { return n < sh.N && k < sh.K ? W[size_t(n * sh.K + k)] : 0u; };
            const uint32_t want = elem(2 * q) | elem(2 * q + 1) << 16;
            bad += o[size_t((p * kp + q) * 64 + j)] != want;
          }
      EXPECT(bad == 0);
      ++compared;
    }
  }
  EXPECT(compared == 10);
}

// The vdpbf16ps GEMM's thread split with a balanced chunk (its switch
// EMOLLM_BF16_GEMM_BALANCED_SPLIT went in session 22): TinyLlama-1.1B's gate / up (N = 5632, 88
// panels) split in 11 chunks of 8 panels left one of 2 threads 48 panels and the other 40; the
// balanced chunk leaves each 44. Only which thread computes which rows changes: gemm(),
// gemm_bf16_panels and gemm_bf16_panels_multi (two outputs) give the same bits with 2 and 3
// threads as without a pool (one chunk, split_packed_gemm), and the same bits as each other
// (whole-K and 256-pair k blocks, N a multiple of 64 or not, the split by row panels at N = 256,
// M = 512), and every output is written (sentinels).
TEST(gemm_bf16_balanced_split_bits) {
  // the chunk itself: the busiest of nth threads takes ceil(chunks / nth) chunks
  auto busiest = [](int64_t npn, int nth, int64_t c) { return ((npn + c - 1) / c + nth - 1) / nth * c; };
  EXPECT(gemm_detail::balanced_panel_chunk(88, 2, 8) == 11);  // 8 chunks of 11: 44 panels each
  EXPECT(busiest(88, 2, gemm_detail::balanced_panel_chunk(88, 2, 8)) == 44);
  EXPECT(busiest(88, 2, 8) == 48);
  EXPECT(gemm_detail::balanced_panel_chunk(86, 2, 10) == 11);  // M = 512 row panels: 44 / 42, not 50 / 36
  EXPECT(busiest(86, 2, 10) == 50);
  EXPECT(gemm_detail::balanced_panel_chunk(64, 2, 8) == 8);  // already even: unchanged
  EXPECT(gemm_detail::balanced_panel_chunk(32, 2, 4) == 4);
  for (int64_t npn : {1, 5, 17, 88, 172, 176})
    for (int nth : {2, 3})
      for (int64_t c0 : {1, 2, 4, 8}) {
        const int64_t c = gemm_detail::balanced_panel_chunk(npn, nth, c0);
        EXPECT(c >= std::max<int64_t>(1, (c0 + 1) / 2) && c <= c0 + c0 / 2);
        EXPECT(busiest(npn, nth, c) <= busiest(npn, nth, c0));
      }
  if (!cpu_features().avx512bf16 || isa_active() < Isa::Avx512 || !bf16_panels_usable()) return;
  ThreadPool pool2(2), pool3(3);
  struct Shape { int64_t M, N, K; };
  int compared = 0;
  for (const Shape sh : {Shape{70, 5632, 256}, Shape{66, 2048, 4200}, Shape{80, 1000, 96}, Shape{67, 130, 300},
                         Shape{512, 256, 200}}) {  // the last: split by row panels (a 1.1B k / v)
    Weights w = make_weights(DType::BF16, sh.N, sh.K, uint32_t(5 * sh.K + 3 * sh.N));
    Problem p = make_problem(sh.M, sh.N, sh.K, 1, 3, uint32_t(sh.M + 11 * sh.K));
    const std::string shape = " M=" + std::to_string(sh.M) + " N=" + std::to_string(sh.N) + " K=" + std::to_string(sh.K);
    AlignedPtr<uint8_t> pan = make_aligned<uint8_t>(bf16_panels_bytes(sh.N, sh.K));
    bf16_pack_panels(w.bytes.data(), sh.N, sh.K, pan.get(), nullptr);
    std::vector<float> Y[3][4];  // [no pool, 2, 3 threads][gemm, panels, multi 0, multi 1]
    for (int t = 0; t < 3; ++t) {
      ThreadPool* pl = t == 0 ? nullptr : t == 1 ? &pool2 : &pool3;
      for (auto& y : Y[t]) y.assign(size_t(sh.M * p.ldy), kSentinel);
      gemm(p.X.data(), p.ldx, w.bytes.data(), DType::BF16, p.bias.data(), Y[t][0].data(), p.ldy, sh.M, sh.N, sh.K, pl);
      gemm_bf16_panels(p.X.data(), p.ldx, pan.get(), p.bias.data(), Y[t][1].data(), p.ldy, sh.M, sh.N, sh.K, pl);
      // two outputs on the same panels (one without a bias): the split runs over both's panels
      const PanelOutput po[2] = {{pan.get(), p.bias.data(), Y[t][2].data(), p.ldy, sh.N},
                                 {pan.get(), nullptr, Y[t][3].data(), p.ldy, sh.N}};
      gemm_bf16_panels_multi(p.X.data(), p.ldx, po, 2, sh.M, sh.K, pl);
      same(Y[t][1], Y[t][0], "bf16 split panels vs gemm" + shape + " t" + std::to_string(t));
      same(Y[t][2], Y[t][0], "bf16 split multi vs gemm" + shape + " t" + std::to_string(t));
      for (int k = 0; k < 4; ++k) {
        if (t > 0) same(Y[t][k], Y[0][k], "bf16 balanced split vs no pool" + shape + " path " + std::to_string(k));
        bool written = true;
        for (int64_t m = 0; m < sh.M; ++m)
          for (int64_t n = 0; n < sh.N; ++n) written = written && Y[t][k][size_t(m * p.ldy + n)] != kSentinel;
        EXPECT(written);
        if (t > 0) ++compared;
      }
    }
  }
  EXPECT(compared == 40);
}

// gemm_bf16_rows_multi (a bf16 decoder's prefill q / k / v, gate / up on their row-major copies):
// each output bit for bit what gemm() gives it, with X packed once and one split over all the
// outputs' panels (K in one k block, M > 64), or gemm() itself for each (M <= 64, K > 4096, the
// legacy blocking): q / k / v-shaped outputs (N 2048 / 256 / 256, one without a bias), N not a
// multiple of 64, odd K, 1-3 threads; sentinels past N in each row stay.
TEST(gemm_bf16_rows_multi_equals_gemm) {
  ThreadPool pool2(2), pool3(3);
  struct Case { int64_t M, K; std::vector<int64_t> Ns; bool legacy; };
  int compared = 0;
  for (const Case& c : {Case{512, 2048, {2048, 256, 256}, false}, Case{100, 301, {700, 70}, false},
                        Case{70, 9000, {130, 64}, false}, Case{40, 512, {200, 100, 64}, false},
                        Case{90, 700, {300, 128}, true}}) {
    const int n = int(c.Ns.size());
    Problem p = make_problem(c.M, 8, c.K, 1, 3, uint32_t(c.M + 13 * c.K));
    std::vector<Weights> ws;
    std::vector<std::vector<float>> bias;
    for (int j = 0; j < n; ++j) {
      ws.push_back(make_weights(DType::BF16, c.Ns[size_t(j)], c.K, uint32_t(17 * j + c.K)));
      bias.emplace_back(size_t(c.Ns[size_t(j)]), 0.5f * float(j + 1));
    }
    for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
      gemm_detail::set_bf16_gemm_legacy_blocking(c.legacy);
      std::vector<std::vector<float>> want(static_cast<size_t>(n)), got(static_cast<size_t>(n));
      PanelOutput po[kMaxPanelOutputs];
      for (int j = 0; j < n; ++j) {
        const int64_t N = c.Ns[size_t(j)], ldy = N + 3;
        const float* b = j == 1 ? nullptr : bias[size_t(j)].data();
        want[size_t(j)].assign(size_t(c.M * ldy), kSentinel);
        got[size_t(j)].assign(size_t(c.M * ldy), kSentinel);
        gemm(p.X.data(), p.ldx, ws[size_t(j)].bytes.data(), DType::BF16, b, want[size_t(j)].data(), ldy, c.M, N, c.K, pl);
        po[j] = PanelOutput{ws[size_t(j)].bytes.data(), b, got[size_t(j)].data(), ldy, N};
      }
      gemm_bf16_rows_multi(p.X.data(), p.ldx, po, n, c.M, c.K, pl);
      gemm_detail::set_bf16_gemm_legacy_blocking(false);
      for (int j = 0; j < n; ++j) {
        same(got[size_t(j)], want[size_t(j)], "gemm_bf16_rows_multi vs gemm() M=" + std::to_string(c.M) + " K=" +
                                                  std::to_string(c.K) + " output " + std::to_string(j));
        bool written = true;  // every output element written (not the sentinel)
        const int64_t N = c.Ns[size_t(j)], ldy = N + 3;
        for (int64_t m = 0; m < c.M; ++m)
          for (int64_t x = 0; x < N; ++x) written = written && got[size_t(j)][size_t(m * ldy + x)] != kSentinel;
        EXPECT(written);
        ++compared;
      }
    }
  }
  EXPECT(compared == 36);
  PanelOutput none{nullptr, nullptr, nullptr, 8, 8};
  std::vector<float> x(64);
  EXPECT_THROWS(gemm_bf16_rows_multi(x.data(), 8, &none, 0, 8, 8, nullptr), ErrorCode::InvalidArgument);
}

// The vdpbf16ps GEMM on a row-major W (gemm(), gemm_bf16_rows_multi: each W block packed before
// its tiles) against ref::gemm (double accumulation) on X rounded to bf16 within the f32
// tolerance of this file (1e-5 S / sqrt(K) + 1e-6), and bit for bit against gemm_bf16_panels on
// pre-packed panels (the same k blocks), without a pool and with 2 and 3 threads, in the default
// and the legacy blocking. Shapes that take every way to the next W block: the next k block (K
// 5632 and 11008 in 256-pair blocks, odd K 5631 with a half pair), the next W rows at one k block
// (K 1001: 256-row W blocks, N 600 in three of them, the last of 88 rows), N not a multiple of 64
// (a panel's rows past N packed as zeros), M with a short last row panel and M = 515. The second
// output of gemm_bf16_rows_multi (W's first rows again, its own panel chunks) must equal those
// columns of the first. (Replaces session 17's tests of the one-block and even-k-block opt-ins,
// removed in session 18 with the opt-ins.)
TEST(gemm_bf16_long_k_same_bits_f64_tolerance) {
  if (!cpu_features().avx512bf16 || isa_active() < Isa::Avx512 || !bf16_panels_usable()) return;
  ThreadPool pool2(2), pool3(3);
  struct Shape { int64_t M, N, K; };
  int compared = 0;
  for (const Shape sh : {Shape{70, 130, 5632}, Shape{515, 64, 5631}, Shape{97, 600, 1001}, Shape{70, 65, 11008},
                         Shape{67, 190, 4100}}) {
    const Bf16BlockingCase c(sh.M, sh.N, sh.K, uint32_t(7 * sh.K + sh.N), uint32_t(sh.M + 13 * sh.K));
    const Problem& p = c.p;
    const uint8_t* W = c.w.bytes.data();
    const int64_t N2 = std::min<int64_t>(70, sh.N);  // rows_multi's second output: W's first N2 rows
    for (bool legacy : {false, true})
      for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
        gemm_detail::set_bf16_gemm_legacy_blocking(legacy);
        std::vector<float> Y(size_t(sh.M * p.ldy), kSentinel), Yp = Y, Yr = Y, Y2(size_t(sh.M * N2), kSentinel);
        gemm_bf16_panels(p.X.data(), p.ldx, c.pan.get(), p.bias.data(), Yp.data(), p.ldy, sh.M, sh.N, sh.K, pl);
        gemm(p.X.data(), p.ldx, W, DType::BF16, p.bias.data(), Y.data(), p.ldy, sh.M, sh.N, sh.K, pl);
        const PanelOutput po[2] = {{W, p.bias.data(), Yr.data(), p.ldy, sh.N}, {W, p.bias.data(), Y2.data(), N2, N2}};
        gemm_bf16_rows_multi(p.X.data(), p.ldx, po, 2, sh.M, sh.K, pl);
        gemm_detail::set_bf16_gemm_legacy_blocking(false);
        const std::string what =
            " legacy=" + std::to_string(legacy) + c.shape + " threads=" + std::to_string(pl ? pl->size() : 1);
        EXPECT(check_result(Y, c.R, p, c.S, 0.0, "gemm" + what));
        same(Y, Yp, "gemm vs panels" + what);
        same(Y, Yr, "gemm vs rows_multi" + what);
        for (int64_t m = 0; m < sh.M; ++m)
          same(&Y2[size_t(m * N2)], &Y[size_t(m * p.ldy)], size_t(N2), "rows_multi's second output vs gemm" + what);
        ++compared;
      }
  }
  EXPECT(compared == 30);
}
