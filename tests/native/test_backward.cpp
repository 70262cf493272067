// Tests for the backward kernels (kernels/cpu/backward.h), on small odd shapes.
//
// Each gradient is checked two ways:
//   1. against central finite differences of the FORWARD kernel (kernels.h) on the scalar loss
//      L = sum(w * f(x)) with random w (computed in double from the f32 outputs), step h = 1e-2
//      (h = 1e-3 for the linear ops); tolerance |analytic - fd| <= 2e-3 + 2e-3 * |fd| (the f32
//      rounding of the forward outputs divided by h dominates);
//   2. against a scalar reference where one exists (attention: a double-precision reference;
//      gemm_backward_x: a double loop over the dequantised weights), rtol 1e-4 + atol 1e-5.
// RoPE's backward is checked as the adjoint: <rope_backward(dy), x> == <dy, rope(x)> within 1e-5
// relative, for both layouts, a partial rot_dim and linear scaling.
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "../../base/dtype.h"
#include "../../base/error.h"
#include "../../base/thread_pool.h"
#include "../../kernels/cpu/backward.h"
#include "../../kernels/cpu/kernels.h"
#include "testing.h"

using namespace emollm;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * double(b[i]);
  return s;
}

// Central differences of L(x) = dot(w, f(x)) for every element of x (in place perturbation).
std::vector<float> finite_diff(std::vector<float>& x, const std::function<double()>& L, float h) {
  std::vector<float> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const float x0 = x[i];
    x[i] = x0 + h;
    const double lp = L();
    x[i] = x0 - h;
    const double lm = L();
    x[i] = x0;
    g[i] = float((lp - lm) / (2.0 * double(h)));
  }
  return g;
}

}  // namespace

TEST(backward_gemm_x_and_w) {
  ThreadPool pool(2);
  const int64_t N = 7, K = 64;  // K: a multiple of the q8_0 block (32)
  for (int64_t M : {int64_t(5), int64_t(37)})  // the blocked loop, and the gemm() path (M >= 16)
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::Q8_0}) {
    auto wf = randn(size_t(N * K), 1);
    std::vector<uint8_t> wq(dtype_row_bytes(dt, K) * size_t(N));
    std::vector<float> wdeq(wf.size());
    for (int64_t n = 0; n < N; ++n) {
      quantize_row(dt, wf.data() + n * K, wq.data() + size_t(n) * dtype_row_bytes(dt, K), K);
      dequantize_row(dt, wq.data() + size_t(n) * dtype_row_bytes(dt, K), wdeq.data() + n * K, K);
    }
    auto x = randn(size_t(M * K), 2), w = randn(size_t(M * N), 3);
    std::vector<float> y(size_t(M * N)), dx(size_t(M * K)), want(size_t(M * K));
    gemm_backward_x(w.data(), N, wq.data(), dt, dx.data(), K, M, N, K, false, &pool);
    ref::gemm_backward_x(w.data(), wdeq.data(), want.data(), M, N, K);
    EXPECT_ALL_CLOSE(dx.data(), want.data(), dx.size(), 1e-5, 1e-4, "gemm_backward_x vs double reference");
    // accumulate adds
    std::vector<float> acc(dx.size(), 1.0f);
    gemm_backward_x(w.data(), N, wq.data(), dt, acc.data(), K, M, N, K, true, nullptr);
    for (auto& v : want) v += 1.0f;
    EXPECT_ALL_CLOSE(acc.data(), want.data(), acc.size(), 1e-5, 1e-4, "gemm_backward_x accumulate");
    if (dt != DType::F32) continue;
    // finite differences through the forward gemm (f32 weights: exact forward)
    auto L = [&]() {
      ref::gemm(x.data(), K, wf.data(), DType::F32, nullptr, y.data(), N, M, N, K);
      return dot(w, y);
    };
    auto fd = finite_diff(x, L, 1e-2f);
    EXPECT_ALL_CLOSE(dx.data(), fd.data(), dx.size(), 2e-3, 2e-3, "gemm_backward_x vs finite differences");
    std::vector<float> dWref(wf.size(), 0.0f);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < K; ++c) {
        double a = 0;
        for (int64_t m = 0; m < M; ++m) a += double(w[size_t(m * N + n)]) * double(x[size_t(m * K + c)]);
        dWref[size_t(n * K + c)] = float(a);
      }
    std::vector<float> dW(wf.size(), 0.0f), dB(size_t(N), 0.0f);
    gemm_backward_w(w.data(), N, x.data(), K, dW.data(), dB.data(), M, N, K, &pool);
    EXPECT_ALL_CLOSE(dW.data(), dWref.data(), dW.size(), 1e-5, 1e-4, "gemm_backward_w vs double reference");
    auto fdw = finite_diff(wf, L, 1e-2f);
    EXPECT_ALL_CLOSE(dW.data(), fdw.data(), dW.size(), 2e-3, 2e-3, "gemm_backward_w vs finite differences");
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t m = 0; m < M; ++m) s += w[size_t(m * N + n)];
      EXPECT_NEAR(dB[size_t(n)], s, 1e-5);
    }
  }
}

TEST(backward_rmsnorm) {
  const int64_t rows = 3, n = 17;
  auto x = randn(size_t(rows * n), 4), nw = randn(size_t(n), 5), w = randn(size_t(rows * n), 6);
  std::vector<float> y(x.size()), dx(x.size());
  rmsnorm_backward(x.data(), n, nw.data(), w.data(), n, dx.data(), n, rows, n, 1e-5f, false, nullptr);
  auto fd = finite_diff(x, [&]() {
    rmsnorm(x.data(), n, nw.data(), y.data(), n, rows, n, 1e-5f);
    return dot(w, y);
  }, 1e-2f);
  EXPECT_ALL_CLOSE(dx.data(), fd.data(), dx.size(), 2e-3, 2e-3, "rmsnorm_backward vs finite differences");
}

TEST(backward_activations) {
  const int64_t n = 37;
  auto x = randn(size_t(n), 7, 2.0f), u = randn(size_t(n), 8), w = randn(size_t(n), 9);
  std::vector<float> y(static_cast<size_t>(n)), dx(static_cast<size_t>(n)), du(static_cast<size_t>(n));
  gelu_erf_backward(x.data(), w.data(), dx.data(), n, nullptr);
  auto fd = finite_diff(x, [&]() { gelu_erf(x.data(), y.data(), n); return dot(w, y); }, 1e-2f);
  EXPECT_ALL_CLOSE(dx.data(), fd.data(), size_t(n), 2e-3, 2e-3, "gelu_erf_backward vs finite differences");
  silu_backward(x.data(), w.data(), dx.data(), n, nullptr);
  fd = finite_diff(x, [&]() { silu(x.data(), y.data(), n); return dot(w, y); }, 1e-2f);
  EXPECT_ALL_CLOSE(dx.data(), fd.data(), size_t(n), 2e-3, 2e-3, "silu_backward vs finite differences");
  swiglu_backward(x.data(), u.data(), w.data(), dx.data(), du.data(), n, nullptr);
  auto Ls = [&]() { swiglu(x.data(), u.data(), y.data(), n); return dot(w, y); };
  fd = finite_diff(x, Ls, 1e-2f);
  EXPECT_ALL_CLOSE(dx.data(), fd.data(), size_t(n), 2e-3, 2e-3, "swiglu_backward d gate vs finite differences");
  fd = finite_diff(u, Ls, 1e-2f);
  EXPECT_ALL_CLOSE(du.data(), fd.data(), size_t(n), 2e-3, 2e-3, "swiglu_backward d up vs finite differences");
}

TEST(backward_rope_is_the_adjoint) {
  const int64_t T = 5, H = 3, D = 10;
  std::vector<int32_t> pos{0, 3, 7, 11, 250};
  for (RopeLayout layout : {RopeLayout::RotateHalf, RopeLayout::Interleaved})
    for (int64_t rot : {int64_t(0), int64_t(6)}) {
      RopeParams p;
      p.head_dim = D;
      p.rot_dim = rot;
      p.freq_scale = 0.5f;
      p.layout = layout;
      auto x = randn(size_t(T * H * D), 10), dy = randn(size_t(T * H * D), 11);
      std::vector<float> y = x, dx = dy;
      rope(y.data(), H * D, T, H, pos.data(), p);
      rope_backward(dx.data(), H * D, T, H, pos.data(), p, nullptr);
      const double a = dot(dx, x), b = dot(dy, y);
      EXPECT_NEAR(a, b, 1e-5 * (std::fabs(b) + 1.0));
    }
}

TEST(backward_attention) {
  ThreadPool pool(2);
  struct Case {
    int64_t nq, nkv, H, Hkv, D, pos0;
    bool causal;
  };
  for (const Case& c : {Case{5, 7, 4, 2, 6, 2, true}, Case{3, 3, 2, 2, 5, 0, true}, Case{4, 9, 3, 1, 7, 0, false}}) {
    AttentionParams p;
    p.n_q = c.nq;
    p.n_kv = c.nkv;
    p.n_heads = c.H;
    p.n_kv_heads = c.Hkv;
    p.head_dim = c.D;
    p.ldq = p.ldo = c.H * c.D;
    p.ldk = p.ldv = c.Hkv * c.D;
    p.causal = c.causal;
    p.q_pos0 = c.pos0;
    auto q = randn(size_t(c.nq * c.H * c.D), 12), k = randn(size_t(c.nkv * c.Hkv * c.D), 13),
         v = randn(size_t(c.nkv * c.Hkv * c.D), 14), w = randn(size_t(c.nq * c.H * c.D), 15);
    std::vector<float> o(q.size()), dq(q.size()), dk(k.size()), dv(v.size()), rq(q.size()), rk(k.size()), rv(v.size());
    attention(q.data(), k.data(), v.data(), o.data(), p, nullptr);
    attention_backward(q.data(), k.data(), v.data(), o.data(), w.data(), dq.data(), dk.data(), dv.data(), p, &pool);
    ref::attention_backward(q.data(), k.data(), v.data(), o.data(), w.data(), rq.data(), rk.data(), rv.data(), p);
    EXPECT_ALL_CLOSE(dq.data(), rq.data(), dq.size(), 1e-5, 1e-4, "attention dq vs double reference");
    EXPECT_ALL_CLOSE(dk.data(), rk.data(), dk.size(), 1e-5, 1e-4, "attention dk vs double reference");
    EXPECT_ALL_CLOSE(dv.data(), rv.data(), dv.size(), 1e-5, 1e-4, "attention dv vs double reference");
    auto L = [&]() {
      attention(q.data(), k.data(), v.data(), o.data(), p, nullptr);
      return dot(w, o);
    };
    auto fq = finite_diff(q, L, 1e-2f), fk = finite_diff(k, L, 1e-2f), fv = finite_diff(v, L, 1e-2f);
    EXPECT_ALL_CLOSE(dq.data(), fq.data(), dq.size(), 2e-3, 2e-3, "attention dq vs finite differences");
    EXPECT_ALL_CLOSE(dk.data(), fk.data(), dk.size(), 2e-3, 2e-3, "attention dk vs finite differences");
    EXPECT_ALL_CLOSE(dv.data(), fv.data(), dv.size(), 2e-3, 2e-3, "attention dv vs finite differences");
  }
}

TEST(backward_cross_entropy) {
  const int64_t rows = 3, V = 11;
  auto x = randn(size_t(rows * V), 16, 3.0f);
  std::vector<int32_t> t{0, 5, 10};
  std::vector<float> d(x.size());
  const double l = cross_entropy(x.data(), V, t.data(), rows, V, 0.5f, d.data(), nullptr);
  double want = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double z = 0;
    for (int64_t i = 0; i < V; ++i) z += std::exp(double(x[size_t(r * V + i)]));
    want += std::log(z) - x[size_t(r * V + t[size_t(r)])];
  }
  EXPECT_NEAR(l, want, 1e-9 * std::fabs(want) + 1e-12);
  auto fd = finite_diff(x, [&]() { return 0.5 * cross_entropy(x.data(), V, t.data(), rows, V, 0, nullptr, nullptr); },
                        1e-3f);
  EXPECT_ALL_CLOSE(d.data(), fd.data(), d.size(), 2e-4, 2e-3, "cross_entropy gradient vs finite differences");
  EXPECT_THROWS(cross_entropy(x.data(), V, std::vector<int32_t>{0, 11, 1}.data(), rows, V, 1, nullptr, nullptr),
                ErrorCode::InvalidArgument);
}
