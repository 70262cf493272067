// Tests for the backward kernels (kernels/cpu/backward.h), on small odd shapes.
//
// Each gradient is checked two ways:
//   1. against central finite differences of the FORWARD kernel (kernels.h) on the scalar loss
//      L = sum(w * f(x)) with random w (computed in double from the f32 outputs), step h = 1e-2
//      (h = 1e-3 for the linear ops); tolerance |analytic - fd| <= 2e-3 + 2e-3 * |fd| (the f32
//      rounding of the forward outputs divided by h dominates);
//   2. against a scalar reference where one exists (attention: a double-precision reference;
//      gemm_backward_x: a double loop over the dequantised weights), rtol 1e-4 + atol 1e-5.
// The vector paths (backward_avx512.cpp) run wherever the CPU has them, and are also checked on
// larger shapes (several blocks, every tail) against the scalar references and against the
// portable loops (EMOLLM_ISA capped to avx2). BF16 weights with AVX512-BF16: gemm_backward_x rounds
// dY to bf16 (as the forward gemm rounds its activations), so its reference takes the rounded dY
// and keeps the tight tolerance; against the unrounded f32 product it is within 1e-2 relative of
// the largest element.
// RoPE's backward is checked as the adjoint: <rope_backward(dy), x> == <dy, rope(x)> within 1e-5
// relative, for both layouts, a partial rot_dim and linear scaling.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../../base/cpu_features.h"
#include "../../base/dtype.h"
#include "../../base/error.h"
#include "../../base/thread_pool.h"
#include "../../kernels/cpu/backward.h"
#include "../../kernels/cpu/backward_internal.h"
#include "../../kernels/cpu/kernels.h"
#include "testing.h"

using namespace emollm;

using emollm_test::normal_floats;

namespace {

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

// bf16 round to nearest even (vcvtne2ps2bf16 on finite values), back to f32.
float round_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  u &= 0xFFFF0000u;
  std::memcpy(&x, &u, 4);
  return x;
}

// Whether gemm_backward_x takes the bf16 dot-product path for BF16 weights now.
bool bf16_backward_path() { return cpu_features().avx512bf16 && isa_active() >= Isa::Avx512; }

}  // namespace

TEST(backward_gemm_x_and_w) {
  ThreadPool pool(2);
  const int64_t N = 7, K = 64;  // K: a multiple of the q8_0 block (32)
  for (int64_t M : {int64_t(5), int64_t(37)})  // the blocked loop, and the gemm() path (M >= 16)
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::Q8_0}) {
    auto wf = normal_floats(size_t(N * K), 1);
    std::vector<uint8_t> wq(dtype_row_bytes(dt, K) * size_t(N));
    std::vector<float> wdeq(wf.size());
    for (int64_t n = 0; n < N; ++n) {
      quantize_row(dt, wf.data() + n * K, wq.data() + size_t(n) * dtype_row_bytes(dt, K), K);
      dequantize_row(dt, wq.data() + size_t(n) * dtype_row_bytes(dt, K), wdeq.data() + n * K, K);
    }
    auto x = normal_floats(size_t(M * K), 2), w = normal_floats(size_t(M * N), 3);
    std::vector<float> y(size_t(M * N)), dx(size_t(M * K)), want(size_t(M * K));
    gemm_backward_x(w.data(), N, wq.data(), dt, dx.data(), K, M, N, K, false, &pool);
    auto wr = w;  // dY as the kernel multiplies it
    auto wk = wdeq;  // and W as it multiplies it (F16 rounded to bf16 on the bf16 path)
    if ((dt == DType::BF16 || dt == DType::F16) && bf16_backward_path()) {
      for (auto& e : wr) e = round_bf16(e);
      for (auto& e : wk) e = round_bf16(e);
    }
    ref::gemm_backward_x(wr.data(), wk.data(), want.data(), M, N, K);
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

// The BF16 (and F16, rounded to bf16 while packed) NN product on shapes that cross its blocks
// and every tail (odd N, K not a multiple of 16 / 64, M not a multiple of 6), with strides, both
// thread counts, overwrite and accumulate: N = 1031 / 1100, all 516 / 550 row pairs in one block
// of 192 columns, so K = 1030 crosses column blocks; N = 4101: 2051 pairs, more than one deep block
// holds, in 256-pair blocks (the 256-pair x 512-column blocking at every N and its switch
// EMOLLM_BACKWARD_GEMM_DEEP went in session 22); then the portable path (ISA capped) on one shape.
TEST(backward_gemm_x_bf16_blocks) {
  ThreadPool pool(2);
  struct Case {
    int64_t M, N, K;
  };
  for (DType dt : {DType::BF16, DType::F16})
  for (const Case& c : {Case{1, 3, 5}, Case{7, 1031, 70}, Case{37, 130, 600}, Case{13, 1100, 1030}, Case{9, 4101, 150}}) {
    const int64_t lddy = c.N + 3, lddx = c.K + 5;
    auto wf = normal_floats(size_t(c.N * c.K), 21);
    // wb: the stored weight (bf16 or f16 bits); wdeq: its value; wdeq rounded to bf16 is what the
    // bf16 path multiplies (the same for BF16)
    std::vector<uint16_t> wb(wf.size());
    std::vector<float> wdeq(wf.size()), wk(wf.size());
    quantize_row(dt, wf.data(), wb.data(), int64_t(wf.size()));
    dequantize_row(dt, wb.data(), wdeq.data(), int64_t(wf.size()));
    for (size_t i = 0; i < wf.size(); ++i) wk[i] = bf16_backward_path() ? round_bf16(wdeq[i]) : wdeq[i];
    auto dy = normal_floats(size_t(c.M * lddy), 22);
    std::vector<float> dyp(size_t(c.M * c.N)), dyr(dyp.size());
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t n = 0; n < c.N; ++n) {
        dyp[size_t(m * c.N + n)] = dy[size_t(m * lddy + n)];
        dyr[size_t(m * c.N + n)] = bf16_backward_path() ? round_bf16(dy[size_t(m * lddy + n)]) : dy[size_t(m * lddy + n)];
      }
    std::vector<float> want(size_t(c.M * c.K)), exact(want.size());
    ref::gemm_backward_x(dyr.data(), wk.data(), want.data(), c.M, c.N, c.K);
    ref::gemm_backward_x(dyp.data(), wdeq.data(), exact.data(), c.M, c.N, c.K);
    double emax = 0;
    for (float e : exact) emax = std::max(emax, double(std::fabs(e)));
    const std::string what = std::string(dt == DType::F16 ? "f16" : "bf16") + " dX M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K);
    for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool})
      for (bool acc : {false, true}) {
        std::vector<float> dx(size_t(c.M * lddx), 0.5f), got(want.size());
        gemm_backward_x(dy.data(), lddy, wb.data(), dt, dx.data(), lddx, c.M, c.N, c.K, acc, pl);
        for (int64_t m = 0; m < c.M; ++m) {
          for (int64_t k = 0; k < c.K; ++k) got[size_t(m * c.K + k)] = dx[size_t(m * lddx + k)] - (acc ? 0.5f : 0.0f);
          EXPECT(dx[size_t(m * lddx + c.K)] == 0.5f);  // the stride gap is untouched
        }
        EXPECT_ALL_CLOSE(got.data(), want.data(), got.size(), 1e-5 * std::max(1.0, emax), 2e-5, what + " vs reference");
        EXPECT_ALL_CLOSE(got.data(), exact.data(), got.size(), 1e-2 * emax, 0.0, what + " vs the f32 product");
      }
    if (c.M == 37) {  // the portable path: the f32 product, tight
      IsaCapScope cap(Isa::Avx2);
      std::vector<float> dx(size_t(c.M * lddx)), got(want.size());
      gemm_backward_x(dy.data(), lddy, wb.data(), dt, dx.data(), lddx, c.M, c.N, c.K, false, &pool);
      for (int64_t m = 0; m < c.M; ++m)
        for (int64_t k = 0; k < c.K; ++k) got[size_t(m * c.K + k)] = dx[size_t(m * lddx + k)];
      EXPECT_ALL_CLOSE(got.data(), exact.data(), got.size(), 1e-5, 1e-4, what + " portable path");
      // EMOLLM_BACKWARD_AVX512=0 (the switch off) at the full ISA: the portable path's f32
      // product too (the bf16 path's rounding of dY would miss this tolerance)
      {
        IsaCapScope full(isa_detected());
        backward_detail::set_vector_paths_enabled(false);
        gemm_backward_x(dy.data(), lddy, wb.data(), dt, dx.data(), lddx, c.M, c.N, c.K, false, &pool);
        backward_detail::set_vector_paths_enabled(true);
      }
      for (int64_t m = 0; m < c.M; ++m)
        for (int64_t k = 0; k < c.K; ++k) got[size_t(m * c.K + k)] = dx[size_t(m * lddx + k)];
      EXPECT_ALL_CLOSE(got.data(), exact.data(), got.size(), 1e-5, 1e-4, what + " EMOLLM_BACKWARD_AVX512 off");
    }
  }
}

TEST(backward_rmsnorm) {
  const int64_t rows = 3, n = 17;
  auto x = normal_floats(size_t(rows * n), 4), nw = normal_floats(size_t(n), 5), w = normal_floats(size_t(rows * n), 6);
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
  auto x = normal_floats(size_t(n), 7, 2.0f), u = normal_floats(size_t(n), 8), w = normal_floats(size_t(n), 9);
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
      auto x = normal_floats(size_t(T * H * D), 10), dy = normal_floats(size_t(T * H * D), 11);
      std::vector<float> y = x, dx = dy;
      rope(y.data(), H * D, T, H, pos.data(), p);
      rope_backward(dx.data(), H * D, T, H, pos.data(), p, nullptr);
      const double a = dot(dx, x), b = dot(dy, y);
      EXPECT_NEAR(a, b, 1e-5 * (std::fabs(b) + 1.0));
    }
}

// One attention backward test case: shape, packed-row AttentionParams and random Q, K, V and
// upstream gradient W (seeds seed..seed+3), shared by the attention backward tests below.
namespace {
struct AttentionCase {
  int64_t nq, nkv, H, Hkv, D, pos0;
  bool causal;
};
struct AttentionInputs {
  AttentionParams p;
  std::vector<float> q, k, v, w;
};
AttentionInputs attention_inputs(const AttentionCase& c, uint32_t seed) {
  AttentionInputs in;
  AttentionParams& p = in.p;
  p.n_q = c.nq;
  p.n_kv = c.nkv;
  p.n_heads = c.H;
  p.n_kv_heads = c.Hkv;
  p.head_dim = c.D;
  p.ldq = p.ldo = c.H * c.D;
  p.ldk = p.ldv = c.Hkv * c.D;
  p.causal = c.causal;
  p.q_pos0 = c.pos0;
  in.q = normal_floats(size_t(c.nq * c.H * c.D), seed);
  in.k = normal_floats(size_t(c.nkv * c.Hkv * c.D), seed + 1);
  in.v = normal_floats(size_t(c.nkv * c.Hkv * c.D), seed + 2);
  in.w = normal_floats(size_t(c.nq * c.H * c.D), seed + 3);
  return in;
}
}  // namespace

TEST(backward_attention) {
  ThreadPool pool(2);
  for (const AttentionCase& c : {AttentionCase{5, 7, 4, 2, 6, 2, true}, AttentionCase{3, 3, 2, 2, 5, 0, true},
                                 AttentionCase{4, 9, 3, 1, 7, 0, false}}) {
    AttentionInputs in = attention_inputs(c, 12);  // mutable: the finite differences nudge q, k, v
    const AttentionParams& p = in.p;
    std::vector<float>&q = in.q, &k = in.k, &v = in.v, &w = in.w;
    std::vector<float> o(q.size()), dq(q.size()), dk(k.size()), dv(v.size()), rq(q.size()), rk(k.size()), rv(v.size());
    attention(q.data(), k.data(), v.data(), o.data(), p, nullptr);
    attention_backward(q.data(), k.data(), v.data(), o.data(), w.data(), nullptr, dq.data(), dk.data(), dv.data(), p,
                       &pool);
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

// The tiled attention backward on shapes with several query blocks (16) and key tiles (64), key
// counts off the vector width, head_dim over one 64-float chunk, GQA, a causal offset and a
// non-causal case: against the double reference (|d - ref| <= 1e-5 + 1e-4 |ref|), with the
// forward's log-sum-exp and without it (the backward's own pass), and the portable loop (ISA
// capped) against the same.
TEST(backward_attention_tiled_shapes) {
  ThreadPool pool(2);
  for (const AttentionCase& c : {AttentionCase{37, 45, 4, 2, 64, 8, true}, AttentionCase{33, 33, 2, 1, 80, 0, true},
                                 AttentionCase{20, 33, 3, 3, 24, 0, false}, AttentionCase{17, 17, 8, 1, 16, 0, true},
                                 AttentionCase{150, 150, 4, 2, 64, 0, true}, AttentionCase{70, 200, 2, 2, 32, 0, false},
                                 AttentionCase{40, 170, 2, 1, 64, 130, true}}) {
    const AttentionInputs in = attention_inputs(c, 31);
    const AttentionParams& p = in.p;
    const std::vector<float>&q = in.q, &k = in.k, &v = in.v, &w = in.w;
    std::vector<float> o(q.size()), rq(q.size()), rk(k.size()), rv(v.size()), lse(size_t(c.nq * c.H));
    attention(q.data(), k.data(), v.data(), o.data(), p, nullptr, lse.data());
    ref::attention_backward(q.data(), k.data(), v.data(), o.data(), w.data(), rq.data(), rk.data(), rv.data(), p);
    const std::string what = "attention backward nq=" + std::to_string(c.nq) + " nkv=" + std::to_string(c.nkv) +
                             " D=" + std::to_string(c.D);
    for (Isa cap : {Isa::Amx, Isa::Avx2})
      for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool})
        for (const float* l : {static_cast<const float*>(nullptr), static_cast<const float*>(lse.data())}) {
          IsaCapScope sc(cap);
          std::vector<float> dq(q.size(), 7.0f), dk(k.size(), 7.0f), dv(v.size(), 7.0f);
          attention_backward(q.data(), k.data(), v.data(), o.data(), w.data(), l, dq.data(), dk.data(), dv.data(), p,
                             pl);
          const std::string wh = what + (cap == Isa::Avx2 ? " portable" : " best isa") + (l ? " lse" : " no lse");
          EXPECT_ALL_CLOSE(dq.data(), rq.data(), dq.size(), 1e-5, 1e-4, wh + " dq");
          EXPECT_ALL_CLOSE(dk.data(), rk.data(), dk.size(), 1e-5, 1e-4, wh + " dk");
          EXPECT_ALL_CLOSE(dv.data(), rv.data(), dv.size(), 1e-5, 1e-4, wh + " dv");
        }
  }
}

// The bf16 attention backward (backward_attention_bf16.cpp, AttentionParams::bf16_products on
// AVX512-BF16) against the double reference, on every shape the two tests above cover, with the
// forward's log-sum-exp and without it, at 1 and 2 threads (bit-identical: one task per kv head).
// Tolerance per element, derived from bf16 rounding (u = 2^-8: 8 significant bits, round to nearest even):
//   |x - ref| <= 1.01 * bound + 1e-5 + 1e-4 |ref|   (the second part: the f32 path's own tolerance)
// with, in double from the inputs (ui: the inputs' own rounding, 0 when they are bf16 already):
//   eS_rj = scale (2 ui + ui^2) sum_d |q_rd k_jd|     score error (q, k rounded; exact products)
//   eP_rj = (2 ui + ui^2) sum_d |dO_rd v_jd|          dP error (dO, v rounded)
//   P~ = P e^(+-eS), so |P~ - P| <= P (e^eS - 1) (without the forward's log-sum-exp the backward
//   normalises by its own sum: eS_rj + max_j eS_rj in place of eS_rj); dS~ = P~ (dP~ - D) scale, so
//   EdS_rj = scale (P (e^eS - 1) |dP - D| + P e^eS eP)
//   dV_jd: sum_r P_rj |dO_rd| (e^eS (1 + u)(1 + ui) - 1)          (P rounded to bf16, dO by ui)
//   dK_jd: sum_r |q_rd| (EdS (1 + u)(1 + ui) + |dS_rj| ((1 + u)(1 + ui) - 1))
//   dQ_rd: sum_j |k_jd| (EdS (1 + u)(1 + ui) + |dS_rj| ((1 + u)(1 + ui) - 1))
// Two input sets: rounded to bf16 beforehand (ui = 0: S and dP are exact f32 sums, only P and dS
// carry a rounding, the bound is 2^-8 sum |terms|), and as drawn (ui = 2^-8, the trainer's case).
// The dispatcher takes the path only with the flag, AVX512-BF16 and the ISA cap at avx512 or above;
// capped to avx2 the same call runs the portable f32 loop (the f32 tolerance).
namespace {
// The bound above for each element of dq, dk, dv (layouts of attention_backward).
void attention_bf16_bounds(const AttentionInputs& in, double ui, bool own_lse, std::vector<double>& bq,
                           std::vector<double>& bk, std::vector<double>& bv) {
  const AttentionParams& p = in.p;
  const int64_t D = p.head_dim, G = p.n_heads / p.n_kv_heads;
  const double u = std::ldexp(1.0, -8), ei = 2 * ui + ui * ui, scale = 1.0 / std::sqrt(double(D));
  const double f = (1 + u) * (1 + ui);
  bq.assign(in.q.size(), 0.0);
  bk.assign(in.k.size(), 0.0);
  bv.assign(in.v.size(), 0.0);
  for (int64_t h = 0; h < p.n_heads; ++h)
    for (int64_t i = 0; i < p.n_q; ++i) {
      const int64_t hk = h / G, end = p.causal ? std::min(p.n_kv, p.q_pos0 + i + 1) : p.n_kv;
      const float* q = in.q.data() + i * p.ldq + h * D;
      const float* w = in.w.data() + i * p.ldo + h * D;
      const size_t ne = static_cast<size_t>(end);
      std::vector<double> s(ne), dp(ne), es(ne), ep(ne);
      double mx = -INFINITY, z = 0, di = 0, es_max = 0;
      for (int64_t j = 0; j < end; ++j) {
        const float* k = in.k.data() + j * p.ldk + hk * D;
        const float* v = in.v.data() + j * p.ldv + hk * D;
        double a = 0, aa = 0, b = 0, ba = 0;
        for (int64_t d = 0; d < D; ++d) {
          a += double(q[d]) * k[d];
          aa += std::fabs(double(q[d]) * k[d]);
          b += double(w[d]) * v[d];
          ba += std::fabs(double(w[d]) * v[d]);
        }
        s[size_t(j)] = a * scale;
        es[size_t(j)] = scale * ei * aa;
        dp[size_t(j)] = b;
        ep[size_t(j)] = ei * ba;
        mx = std::max(mx, s[size_t(j)]);
        es_max = std::max(es_max, es[size_t(j)]);
      }
      for (int64_t j = 0; j < end; ++j) z += std::exp(s[size_t(j)] - mx);
      for (int64_t j = 0; j < end; ++j) di += std::exp(s[size_t(j)] - mx) / z * dp[size_t(j)];
      for (int64_t j = 0; j < end; ++j) {
        const double P = std::exp(s[size_t(j)] - mx) / z, e = std::exp(es[size_t(j)] + (own_lse ? es_max : 0.0));
        const double dS = P * (dp[size_t(j)] - di) * scale;
        const double edS = scale * (P * (e - 1) * std::fabs(dp[size_t(j)] - di) + P * e * ep[size_t(j)]);
        const double gS = edS * f + std::fabs(dS) * (f - 1);
        const float* k = in.k.data() + j * p.ldk + hk * D;
        for (int64_t d = 0; d < D; ++d) {
          bv[size_t(j * p.ldv + hk * D + d)] += P * std::fabs(double(w[d])) * (e * f - 1);
          bk[size_t(j * p.ldk + hk * D + d)] += std::fabs(double(q[d])) * gS;
          bq[size_t(i * p.ldq + h * D + d)] += std::fabs(double(k[d])) * gS;
        }
      }
    }
}

// Elements of x outside 1.01 * bound + 1e-5 + 1e-4 |ref| (reports the first); the largest
// |x - ref| / (1.01 * bound) seen goes to *worst.
void expect_within_bound(const std::vector<float>& x, const std::vector<float>& ref, const std::vector<double>& bound,
                         const std::string& what, double* worst) {
  size_t bad = 0;
  for (size_t e = 0; e < x.size(); ++e) {
    const double err = std::fabs(double(x[e]) - ref[e]), tol = 1.01 * bound[e] + 1e-5 + 1e-4 * std::fabs(ref[e]);
    if (bound[e] > 0) *worst = std::max(*worst, err / (1.01 * bound[e]));
    if (!(err <= tol) && bad++ == 0)
      emollm_test::report_failure(__FILE__, __LINE__,
                                  what + ": element " + std::to_string(e) + " = " + std::to_string(x[e]) + ", ref " +
                                      std::to_string(ref[e]) + ", tolerance " + std::to_string(tol));
  }
  if (bad > 1) emollm_test::report_failure(__FILE__, __LINE__, what + ": " + std::to_string(bad) + " elements outside");
}
}  // namespace

TEST(backward_attention_bf16_vs_double) {
  using backward_detail::attention_backward_bf16;
  using backward_detail::attention_backward_bf16_applies;
  {  // which calls the dispatcher sends to the bf16 path
    AttentionParams p;
    p.n_q = p.n_kv = 40;
    p.n_heads = p.n_kv_heads = 2;
    p.head_dim = 16;
    p.bf16_products = true;
    const bool hw = cpu_features().avx512bf16 && isa_active() >= Isa::Avx512 &&
                    backward_detail::vector_paths_enabled();
    EXPECT(attention_backward_bf16_applies(p) == hw);
    AttentionParams f = p;
    f.bf16_products = false;
    AttentionParams g = p;
    g.kv_block_size = 16;
    EXPECT(!attention_backward_bf16_applies(f));
    EXPECT(!attention_backward_bf16_applies(g));
    IsaCapScope cap(Isa::Avx2);
    EXPECT(!attention_backward_bf16_applies(p));
  }
  if (!cpu_features().avx512bf16 || isa_detected() < Isa::Avx512) {
    std::printf("  skip backward_attention_bf16_vs_double: no AVX512-BF16 on this CPU\n");
    return;
  }
  IsaCapScope top(Isa::Avx512);  // whatever EMOLLM_ISA says: the path exists on this CPU
  ThreadPool pool(2);
  const std::vector<AttentionCase> cases = {
      {5, 7, 4, 2, 6, 2, true},       {3, 3, 2, 2, 5, 0, true},       {4, 9, 3, 1, 7, 0, false},
      {37, 45, 4, 2, 64, 8, true},    {33, 33, 2, 1, 80, 0, true},    {20, 33, 3, 3, 24, 0, false},
      {17, 17, 8, 1, 16, 0, true},    {150, 150, 4, 2, 64, 0, true},  {70, 200, 2, 2, 32, 0, false},
      {40, 170, 2, 1, 64, 130, true}};
  double worst_rounded = 0, worst_raw = 0;
  for (const AttentionCase& c : cases)
    for (int rounded = 1; rounded >= 0; --rounded) {
      AttentionInputs in = attention_inputs(c, 71);
      if (rounded)
        for (std::vector<float>* x : {&in.q, &in.k, &in.v, &in.w})
          for (float& e : *x) e = round_bf16(e);
      const AttentionParams& p = in.p;  // the forward without the flag: the f32 tiles
      std::vector<float> o(in.q.size()), lse(size_t(c.nq * c.H)), rq(in.q.size()), rk(in.k.size()), rv(in.v.size());
      attention(in.q.data(), in.k.data(), in.v.data(), o.data(), p, nullptr, lse.data());
      ref::attention_backward(in.q.data(), in.k.data(), in.v.data(), o.data(), in.w.data(), rq.data(), rk.data(),
                              rv.data(), p);
      std::vector<double> bounds[2][3];  // [own lse][dq, dk, dv]
      for (int own = 0; own < 2; ++own)
        attention_bf16_bounds(in, rounded ? 0.0 : std::ldexp(1.0, -8), own == 1, bounds[own][0], bounds[own][1],
                              bounds[own][2]);
      AttentionParams pb = p;
      pb.bf16_products = true;
      const std::string what = "bf16 attention backward nq=" + std::to_string(c.nq) + " nkv=" + std::to_string(c.nkv) +
                               " D=" + std::to_string(c.D) + (rounded ? " bf16 inputs" : " f32 inputs");
      std::vector<float> first_q, first_k, first_v;
      for (const float* l : {static_cast<const float*>(lse.data()), static_cast<const float*>(nullptr)})
        for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool}) {
          std::vector<float> dq(in.q.size(), 7.0f), dk(in.k.size(), 7.0f), dv(in.v.size(), 7.0f);
          EXPECT(attention_backward_bf16(in.q.data(), in.k.data(), in.v.data(), o.data(), in.w.data(), l, dq.data(),
                                         dk.data(), dv.data(), pb, pl));
          const std::string wh = what + (l ? " lse" : " no lse") + (pl ? " 2 threads" : " 1 thread");
          double* worst = rounded ? &worst_rounded : &worst_raw;
          const std::vector<double>* b = bounds[l ? 0 : 1];
          expect_within_bound(dq, rq, b[0], wh + " dq", worst);
          expect_within_bound(dk, rk, b[1], wh + " dk", worst);
          expect_within_bound(dv, rv, b[2], wh + " dv", worst);
          if (l && !pl) {
            first_q = dq, first_k = dk, first_v = dv;
          } else if (l) {  // the thread count changes nothing
            EXPECT(dq == first_q && dk == first_k && dv == first_v);
          }
        }
      {  // through the dispatcher: the flag takes the bf16 path, bit for bit
        std::vector<float> dq(in.q.size()), dk(in.k.size()), dv(in.v.size());
        attention_backward(in.q.data(), in.k.data(), in.v.data(), o.data(), in.w.data(), lse.data(), dq.data(), dk.data(),
                           dv.data(), pb, nullptr);
        if (attention_backward_bf16_applies(pb)) EXPECT(dq == first_q && dk == first_k && dv == first_v);
        IsaCapScope cap(Isa::Avx2);  // the portable f32 loop despite the flag
        attention_backward(in.q.data(), in.k.data(), in.v.data(), o.data(), in.w.data(), lse.data(), dq.data(), dk.data(),
                           dv.data(), pb, &pool);
        EXPECT_ALL_CLOSE(dq.data(), rq.data(), dq.size(), 1e-5, 1e-4, what + " portable dq");
        EXPECT_ALL_CLOSE(dk.data(), rk.data(), dk.size(), 1e-5, 1e-4, what + " portable dk");
        EXPECT_ALL_CLOSE(dv.data(), rv.data(), dv.size(), 1e-5, 1e-4, what + " portable dv");
      }
    }
  std::printf("  bf16 attention backward: largest |error| / bound %.3f (bf16 inputs), %.3f (f32 inputs)\n",
              worst_rounded, worst_raw);
}

// attention()'s log-sum-exp output against log sum_j exp(scale q.k_j) in double, for the tiled
// kernel (one piece per row, and split-KV: one query over a long cache, pieces merged) and the
// scalar reference: |lse - ref| <= 1e-5 (1 + |ref|).
TEST(attention_log_sum_exp_vs_double) {
  ThreadPool pool(2);
  for (const AttentionCase& c : {AttentionCase{37, 45, 4, 2, 64, 8, true}, AttentionCase{1, 900, 4, 1, 64, 899, true},
                                 AttentionCase{20, 33, 3, 3, 24, 0, false}}) {
    const AttentionInputs in = attention_inputs(c, 57);
    const AttentionParams& p = in.p;
    std::vector<double> want(size_t(c.nq * c.H));
    const double scale = 1.0 / std::sqrt(double(c.D));
    for (int64_t i = 0; i < c.nq; ++i)
      for (int64_t h = 0; h < c.H; ++h) {
        const int64_t end = c.causal ? c.pos0 + i + 1 : c.nkv, hk = h / (c.H / c.Hkv);
        std::vector<double> s(static_cast<size_t>(end));
        double mx = -INFINITY, z = 0;
        for (int64_t j = 0; j < end; ++j) {
          double a = 0;
          for (int64_t d = 0; d < c.D; ++d) a += double(in.q[size_t(i * p.ldq + h * c.D + d)]) * in.k[size_t(j * p.ldk + hk * c.D + d)];
          s[size_t(j)] = a * scale;
          mx = std::max(mx, s[size_t(j)]);
        }
        for (double x : s) z += std::exp(x - mx);
        want[size_t(i * c.H + h)] = mx + std::log(z);
      }
    for (int path = 0; path < 3; ++path) {
      std::vector<float> o(in.q.size()), lse(want.size(), 7.0f);
      if (path == 2) ref::attention(in.q.data(), in.k.data(), in.v.data(), o.data(), p, lse.data());
      else attention(in.q.data(), in.k.data(), in.v.data(), o.data(), p, path ? &pool : nullptr, lse.data());
      for (size_t x = 0; x < want.size(); ++x)
        EXPECT_NEAR(double(lse[x]), want[x], 1e-5 * (1.0 + std::fabs(want[x])));
    }
  }
}

// SwiGLU backward (vector exp) against the formula in double, with a tail and both thread counts.
TEST(backward_swiglu_vector) {
  ThreadPool pool(2);
  const int64_t n = 70001;
  auto g = normal_floats(size_t(n), 41, 4.0f), u = normal_floats(size_t(n), 42), d = normal_floats(size_t(n), 43);
  g[0] = 95.0f;
  g[1] = -95.0f;  // past the exp clamp on both sides
  std::vector<float> wg(static_cast<size_t>(n)), wu(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const double x = g[size_t(i)], s = 1.0 / (1.0 + std::exp(-x));
    wg[size_t(i)] = float(double(d[size_t(i)]) * double(u[size_t(i)]) * s * (1.0 + x * (1.0 - s)));
    wu[size_t(i)] = float(double(d[size_t(i)]) * x * s);
  }
  for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool}) {
    std::vector<float> dg(static_cast<size_t>(n)), du(static_cast<size_t>(n));
    swiglu_backward(g.data(), u.data(), d.data(), dg.data(), du.data(), n, pl);
    EXPECT_ALL_CLOSE(dg.data(), wg.data(), size_t(n), 1e-6, 1e-5, "swiglu_backward d gate vs double");
    EXPECT_ALL_CLOSE(du.data(), wu.data(), size_t(n), 1e-6, 1e-5, "swiglu_backward d up vs double");
  }
}

TEST(backward_cross_entropy) {
  const int64_t rows = 3, V = 11;
  auto x = normal_floats(size_t(rows * V), 16, 3.0f);
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
