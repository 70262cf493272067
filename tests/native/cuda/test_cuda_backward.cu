// The CUDA backward kernels (kernels/cuda/backward.cu) against independent references on odd
// shapes: float64 loops written here for the products, the CPU kernels of kernels/cpu/backward.h
// (whose own tests check them against finite differences and PyTorch) for the rest, and the
// scalar reference ref::attention_backward for the attention. Each GPU case skips with its
// reason without a device; the argument errors are checked before any launch, so those cases
// run everywhere.
// Tolerances (stated per check): products |diff| <= 1e-4 + 1e-4 |ref| (f32 sums of <= 300
// products of values in [-1, 1]); row and elementwise kernels 1e-5 + 1e-5 |ref| (f32 against
// the CPU's double sums); attention 2e-4 + 2e-4 |ref| (as the forward's test); AdamW 1e-6
// relative (the same f32 / f64 formula).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../../../base/error.h"
#include "../../../kernels/cpu/backward.h"
#include "../../../kernels/cpu/kernels.h"
#include "../../../kernels/cuda/cuda_kernels.h"
#include "../testing.h"
#include "cuda_test_buffers.h"
#include "gpu_test.h"

using namespace emollm;
using namespace emollm_test::cuda_buffers;

namespace {

std::string shape(int64_t a, int64_t b, int64_t c) {
  return std::to_string(a) + "x" + std::to_string(b) + "x" + std::to_string(c);
}

// dX (+)= dY W for W of f32 / bf16 / f16, with padded leading dimensions, against float64.
void run_backward_x(int64_t M, int64_t N, int64_t K, DType wt, bool accumulate) {
  CuRng r{uint64_t(M * 977 + N * 31 + K)};
  const int64_t lddy = N + 3, lddx = K + 5;
  std::vector<float> dy = rand_vec(size_t(M * lddy), r, -1.f, 1.f);
  std::vector<float> w = rand_vec(size_t(N * K), r, -1.f, 1.f);
  std::vector<uint16_t> w16(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    if (wt == DType::BF16) { w16[i] = f32_to_bf16(w[i]); w[i] = bf16_to_f32(w16[i]); }
    if (wt == DType::F16) { w16[i] = f32_to_f16(w[i]); w[i] = f16_to_f32(w16[i]); }
  }
  std::vector<float> dx0 = rand_vec(size_t(M * lddx), r, -1.f, 1.f);
  std::vector<float> want = dx0;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t c = 0; c < K; ++c) {
      double s = accumulate ? double(dx0[size_t(m * lddx + c)]) : 0.0;
      for (int64_t n = 0; n < N; ++n) s += double(dy[size_t(m * lddy + n)]) * double(w[size_t(n * K + c)]);
      want[size_t(m * lddx + c)] = float(s);
    }
  DevBuf ddy(dy), dw32(wt == DType::F32 ? w : std::vector<float>{}),
      dw16(wt == DType::F32 ? std::vector<uint16_t>{} : w16), ddx(dx0);
  cuda::gemm_backward_x(ddy.f(), lddy, wt == DType::F32 ? dw32.p : dw16.p, wt, ddx.f(), lddx, M, N, K, accumulate,
                        nullptr);
  std::vector<float> got = ddx.get<float>(dx0.size());
  EXPECT_ALL_CLOSE(got.data(), want.data(), got.size(), 1e-4, 1e-4,
                   std::string("gemm_backward_x ") + dtype_name(wt) + " " + shape(M, N, K) +
                       (accumulate ? " +=" : " ="));
}

// dW += dY^T X, dB += column sums, against float64.
void run_backward_w(int64_t M, int64_t N, int64_t K, bool with_bias) {
  CuRng r{uint64_t(M * 131 + N * 17 + K * 3)};
  const int64_t lddy = N + 2, ldx = K + 7;
  std::vector<float> dy = rand_vec(size_t(M * lddy), r, -1.f, 1.f);
  std::vector<float> x = rand_vec(size_t(M * ldx), r, -1.f, 1.f);
  std::vector<float> dw0 = rand_vec(size_t(N * K), r, -1.f, 1.f), db0 = rand_vec(size_t(N), r, -1.f, 1.f);
  std::vector<float> want_w = dw0, want_b = db0;
  for (int64_t n = 0; n < N; ++n) {
    double b = db0[size_t(n)];
    for (int64_t m = 0; m < M; ++m) b += double(dy[size_t(m * lddy + n)]);
    want_b[size_t(n)] = float(b);
    for (int64_t c = 0; c < K; ++c) {
      double s = dw0[size_t(n * K + c)];
      for (int64_t m = 0; m < M; ++m) s += double(dy[size_t(m * lddy + n)]) * double(x[size_t(m * ldx + c)]);
      want_w[size_t(n * K + c)] = float(s);
    }
  }
  DevBuf ddy(dy), dx(x), ddw(dw0), ddb(db0);
  cuda::gemm_backward_w(ddy.f(), lddy, dx.f(), ldx, ddw.f(), with_bias ? ddb.f() : nullptr, M, N, K, nullptr);
  std::vector<float> gw = ddw.get<float>(dw0.size()), gb = ddb.get<float>(db0.size());
  EXPECT_ALL_CLOSE(gw.data(), want_w.data(), gw.size(), 1e-4, 1e-4, "gemm_backward_w dW " + shape(M, N, K));
  if (with_bias) EXPECT_ALL_CLOSE(gb.data(), want_b.data(), gb.size(), 1e-4, 1e-4, "gemm_backward_w dB " + shape(M, N, K));
  else EXPECT_ALL_CLOSE(gb.data(), db0.data(), gb.size(), 0.0, 0.0, "gemm_backward_w: dB untouched without bias");
}

}  // namespace

TEST(cuda_gemm_backward_x_every_dtype) {
  SKIP_WITHOUT_GPU();
  const int64_t shapes[][3] = {{1, 7, 5}, {3, 64, 64}, {17, 65, 130}, {70, 129, 67}, {128, 300, 96}};
  for (const auto& s : shapes)
    for (DType wt : {DType::F32, DType::BF16, DType::F16})
      for (bool acc : {false, true}) run_backward_x(s[0], s[1], s[2], wt, acc);
}

TEST(cuda_gemm_backward_w_with_and_without_bias) {
  SKIP_WITHOUT_GPU();
  const int64_t shapes[][3] = {{1, 5, 7}, {16, 64, 64}, {33, 70, 129}, {200, 65, 31}};
  for (const auto& s : shapes)
    for (bool bias : {false, true}) run_backward_w(s[0], s[1], s[2], bias);
}

TEST(cuda_backward_products_bad_args) {
  // checked before any launch: these run without a device too
  float x = 0;
  EXPECT_THROWS(cuda::gemm_backward_x(&x, 1, &x, DType::Q4_0, &x, 32, 1, 1, 32, false, nullptr),
                ErrorCode::Unsupported);
  EXPECT_THROWS(cuda::gemm_backward_x(&x, 1, &x, DType::F32, &x, 1, 2, 4, 4, false, nullptr),
                ErrorCode::InvalidArgument);  // lddy < N
  EXPECT_THROWS(cuda::gemm_backward_w(&x, 4, &x, 4, &x, nullptr, -1, 4, 4, nullptr), ErrorCode::InvalidArgument);
  EXPECT_THROWS(cuda::gemm_backward_w(nullptr, 4, &x, 4, &x, nullptr, 2, 4, 4, nullptr), ErrorCode::InvalidArgument);
  // no rows: nothing to do, as on the CPU (no launch, so no device needed)
  cuda::gemm_backward_w(nullptr, 4, nullptr, 4, nullptr, nullptr, 0, 4, 4, nullptr);
  cuda::gemm_backward_x(nullptr, 4, nullptr, DType::BF16, nullptr, 4, 0, 4, 4, false, nullptr);
}

TEST(cuda_rmsnorm_backward_matches_cpu) {
  SKIP_WITHOUT_GPU();
  for (int64_t n : {1, 31, 256, 1000})
    for (bool with_w : {false, true})
      for (bool acc : {false, true}) {
        const int64_t rows = 5, ld = n + 3;
        CuRng r{uint64_t(n * 7 + (with_w ? 1 : 0))};
        std::vector<float> x = rand_vec(size_t(rows * ld), r, -2.f, 2.f), w = rand_vec(size_t(n), r, 0.5f, 1.5f);
        std::vector<float> dy = rand_vec(size_t(rows * ld), r, -1.f, 1.f), dx0 = rand_vec(size_t(rows * ld), r, -1.f, 1.f);
        std::vector<float> want = dx0;
        rmsnorm_backward(x.data(), ld, with_w ? w.data() : nullptr, dy.data(), ld, want.data(), ld, rows, n, 1e-5f, acc,
                         nullptr);
        DevBuf dxin(x), dw(w), ddy(dy), ddx(dx0);
        cuda::rmsnorm_backward(dxin.f(), ld, with_w ? dw.f() : nullptr, ddy.f(), ld, ddx.f(), ld, rows, n, 1e-5f, acc,
                               nullptr);
        std::vector<float> got = ddx.get<float>(dx0.size());
        EXPECT_ALL_CLOSE(got.data(), want.data(), got.size(), 1e-5, 1e-5,
                         "rmsnorm_backward n=" + std::to_string(n) + (with_w ? " w" : "") + (acc ? " +=" : ""));
      }
  // dx aliasing dy, as the trainer calls it
  const int64_t rows = 3, n = 77;
  CuRng r(5);
  std::vector<float> x = rand_vec(size_t(rows * n), r, -2.f, 2.f), dy = rand_vec(size_t(rows * n), r, -1.f, 1.f);
  std::vector<float> want(dy.size());
  rmsnorm_backward(x.data(), n, nullptr, dy.data(), n, want.data(), n, rows, n, 1e-6f, false, nullptr);
  DevBuf dxin(x), ddy(dy);
  cuda::rmsnorm_backward(dxin.f(), n, nullptr, ddy.f(), n, ddy.f(), n, rows, n, 1e-6f, false, nullptr);
  std::vector<float> got = ddy.get<float>(dy.size());
  EXPECT_ALL_CLOSE(got.data(), want.data(), got.size(), 1e-5, 1e-5, "rmsnorm_backward in place");
}

TEST(cuda_activation_backwards_match_cpu) {
  SKIP_WITHOUT_GPU();
  for (int64_t n : {1, 1000, 70001}) {
    CuRng r{uint64_t(n)};
    std::vector<float> x = rand_vec(size_t(n), r, -6.f, 6.f), u = rand_vec(size_t(n), r, -2.f, 2.f);
    std::vector<float> dy = rand_vec(size_t(n), r, -1.f, 1.f);
    const size_t un = static_cast<size_t>(n);
    std::vector<float> w_gelu(un), w_silu(un), w_dg(un), w_du(un);
    gelu_erf_backward(x.data(), dy.data(), w_gelu.data(), n, nullptr);
    silu_backward(x.data(), dy.data(), w_silu.data(), n, nullptr);
    swiglu_backward(x.data(), u.data(), dy.data(), w_dg.data(), w_du.data(), n, nullptr);
    DevBuf dx(x), du(u), ddy(dy), o1(size_t(n) * 4), o2(size_t(n) * 4), o3(size_t(n) * 4), o4(size_t(n) * 4);
    cuda::gelu_erf_backward(dx.f(), ddy.f(), o1.f(), n, nullptr);
    cuda::silu_backward(dx.f(), ddy.f(), o2.f(), n, nullptr);
    cuda::swiglu_backward(dx.f(), du.f(), ddy.f(), o3.f(), o4.f(), n, nullptr);
    const std::string tag = " n=" + std::to_string(n);
    std::vector<float> g1 = o1.get<float>(static_cast<size_t>(n)), g2 = o2.get<float>(static_cast<size_t>(n));
    std::vector<float> g3 = o3.get<float>(static_cast<size_t>(n)), g4 = o4.get<float>(static_cast<size_t>(n));
    EXPECT_ALL_CLOSE(g1.data(), w_gelu.data(), size_t(n), 1e-6, 1e-6, "gelu_erf_backward" + tag);
    EXPECT_ALL_CLOSE(g2.data(), w_silu.data(), size_t(n), 1e-5, 1e-5, "silu_backward" + tag);
    EXPECT_ALL_CLOSE(g3.data(), w_dg.data(), size_t(n), 1e-5, 1e-5, "swiglu_backward dgate" + tag);
    EXPECT_ALL_CLOSE(g4.data(), w_du.data(), size_t(n), 1e-5, 1e-5, "swiglu_backward dup" + tag);
    // in place (dgate over gate, dup over up), as the trainer calls it
    DevBuf dg(x), dup(u);
    cuda::swiglu_backward(dg.f(), dup.f(), ddy.f(), dg.f(), dup.f(), n, nullptr);
    std::vector<float> g5 = dg.get<float>(static_cast<size_t>(n)), g6 = dup.get<float>(static_cast<size_t>(n));
    EXPECT_ALL_CLOSE(g5.data(), w_dg.data(), size_t(n), 1e-5, 1e-5, "swiglu_backward in place dgate" + tag);
    EXPECT_ALL_CLOSE(g6.data(), w_du.data(), size_t(n), 1e-5, 1e-5, "swiglu_backward in place dup" + tag);
  }
}

TEST(cuda_rope_backward_inverts_rope_and_matches_cpu) {
  SKIP_WITHOUT_GPU();
  for (RopeLayout layout : {RopeLayout::RotateHalf, RopeLayout::Interleaved}) {
    const int64_t T = 9, H = 3, D = 64, rot = 48, ld = H * D + 4;
    RopeParams p;
    p.head_dim = D; p.rot_dim = rot; p.theta = 10000.0f; p.freq_scale = 0.5f; p.layout = layout;
    CuRng r(11);
    std::vector<float> x = rand_vec(size_t(T * ld), r, -1.f, 1.f);
    std::vector<int32_t> pos(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) pos[size_t(t)] = int32_t(3 * t + 1000 * (t % 2));
    std::vector<double> invf(static_cast<size_t>(rot / 2));
    for (int64_t i = 0; i < rot / 2; ++i) invf[size_t(i)] = std::pow(10000.0, -double(2 * i) / double(rot));
    std::vector<float> want = x;
    rope_backward(want.data(), ld, T, H, pos.data(), p, nullptr);
    DevBuf dx(x), dpos(pos), dinv(invf);
    cuda::rope_backward(dx.f(), ld, T, H, D, rot, layout, static_cast<const int32_t*>(dpos.p),
                        static_cast<const double*>(dinv.p), p.freq_scale, nullptr);
    std::vector<float> got = dx.get<float>(x.size());
    const std::string tag = layout == RopeLayout::Interleaved ? " interleaved" : " rotate-half";
    EXPECT_ALL_CLOSE(got.data(), want.data(), got.size(), 1e-5, 1e-5, "rope_backward vs cpu" + tag);
    cuda::rope(dx.f(), ld, T, H, D, rot, layout, static_cast<const int32_t*>(dpos.p),
               static_cast<const double*>(dinv.p), p.freq_scale, nullptr);
    std::vector<float> back = dx.get<float>(x.size());
    EXPECT_ALL_CLOSE(back.data(), x.data(), back.size(), 1e-5, 1e-5, "rope(rope_backward(x)) == x" + tag);
  }
}

namespace {
struct AttnBwdCase {
  int64_t n_q, n_kv, heads, kv_heads, D;
  bool causal;
  int64_t q_pos0;
};

void run_attention_backward(const AttnBwdCase& c, bool pass_lse) {
  AttentionParams p;
  p.n_q = c.n_q; p.n_kv = c.n_kv; p.n_heads = c.heads; p.n_kv_heads = c.kv_heads; p.head_dim = c.D;
  p.ldq = c.heads * c.D + 2; p.ldo = c.heads * c.D + 1; p.ldk = c.kv_heads * c.D + 3; p.ldv = c.kv_heads * c.D;
  p.causal = c.causal; p.q_pos0 = c.q_pos0;
  CuRng r{uint64_t(c.n_q * 31 + c.n_kv * 7 + c.D + (c.causal ? 1 : 0))};
  std::vector<float> q = rand_vec(size_t(p.n_q * p.ldq), r, -1.f, 1.f);
  std::vector<float> k = rand_vec(size_t(p.n_kv * p.ldk), r, -1.f, 1.f);
  std::vector<float> v = rand_vec(size_t(p.n_kv * p.ldv), r, -1.f, 1.f);
  std::vector<float> dout = rand_vec(size_t(p.n_q * p.ldo), r, -1.f, 1.f);
  std::vector<float> out(size_t(p.n_q * p.ldo), 0.0f), lse(size_t(p.n_q * p.n_heads), 0.0f);
  attention(q.data(), k.data(), v.data(), out.data(), p, nullptr, lse.data());
  std::vector<float> wq(q.size(), 0.0f), wk(k.size(), 0.0f), wv(v.size(), 0.0f);
  ref::attention_backward(q.data(), k.data(), v.data(), out.data(), dout.data(), wq.data(), wk.data(), wv.data(), p);

  DevBuf dq_in(q), dk_in(k), dv_in(v), dout_d(dout), out_d(out), lse_d(lse);
  DevBuf gq(q.size() * 4), gk(k.size() * 4), gv(v.size() * 4);
  cu_check(cudaMemset(gq.p, 0, gq.n), "memset");
  cu_check(cudaMemset(gk.p, 0, gk.n), "memset");
  cu_check(cudaMemset(gv.p, 0, gv.n), "memset");
  const size_t ws_bytes = cuda::attention_backward_workspace_bytes(p);
  DevBuf ws(ws_bytes);
  cuda::attention_backward(dq_in.f(), dk_in.f(), dv_in.f(), out_d.f(), dout_d.f(), pass_lse ? lse_d.f() : nullptr,
                           gq.f(), gk.f(), gv.f(), p, ws.p, ws_bytes, nullptr);
  std::vector<float> hq = gq.get<float>(q.size()), hk = gk.get<float>(k.size()), hv = gv.get<float>(v.size());
  const std::string tag = std::string(c.causal ? " causal" : " bidir") + " nq=" + std::to_string(c.n_q) +
                          " nkv=" + std::to_string(c.n_kv) + " h=" + std::to_string(c.heads) + "/" +
                          std::to_string(c.kv_heads) + " D=" + std::to_string(c.D) + (pass_lse ? " lse" : "");
  // compare the rows' payload only (the padding is untouched by both)
  auto payload = [](const std::vector<float>& a, int64_t rows, int64_t ld, int64_t n) {
    std::vector<float> o;
    for (int64_t i = 0; i < rows; ++i) o.insert(o.end(), a.begin() + i * ld, a.begin() + i * ld + n);
    return o;
  };
  const auto aq = payload(hq, p.n_q, p.ldq, p.n_heads * p.head_dim), eq = payload(wq, p.n_q, p.ldq, p.n_heads * p.head_dim);
  const auto ak = payload(hk, p.n_kv, p.ldk, p.n_kv_heads * p.head_dim), ek = payload(wk, p.n_kv, p.ldk, p.n_kv_heads * p.head_dim);
  const auto av = payload(hv, p.n_kv, p.ldv, p.n_kv_heads * p.head_dim), ev = payload(wv, p.n_kv, p.ldv, p.n_kv_heads * p.head_dim);
  EXPECT_ALL_CLOSE(aq.data(), eq.data(), aq.size(), 2e-4, 2e-4, "attention_backward dq" + tag);
  EXPECT_ALL_CLOSE(ak.data(), ek.data(), ak.size(), 2e-4, 2e-4, "attention_backward dk" + tag);
  EXPECT_ALL_CLOSE(av.data(), ev.data(), av.size(), 2e-4, 2e-4, "attention_backward dv" + tag);
}
}  // namespace

TEST(cuda_attention_backward_matches_reference) {
  SKIP_WITHOUT_GPU();
  const AttnBwdCase cases[] = {
      {1, 1, 1, 1, 8, true, 0},      {7, 7, 4, 2, 64, true, 0},     {5, 12, 4, 4, 80, true, 7},
      {33, 33, 6, 2, 128, false, 0}, {20, 45, 2, 1, 256, true, 25}, {9, 9, 3, 3, 17, true, 0},
      {70, 70, 2, 1, 64, true, 0},
  };
  for (const auto& c : cases)
    for (bool lse : {false, true}) run_attention_backward(c, lse);
}

TEST(cuda_attention_backward_bad_args) {
  AttentionParams p;
  p.n_q = 2; p.n_kv = 2; p.n_heads = 2; p.n_kv_heads = 2; p.head_dim = 300;
  p.ldq = p.ldk = p.ldv = p.ldo = 600;
  float x = 0;
  EXPECT_THROWS(cuda::attention_backward(&x, &x, &x, &x, &x, nullptr, &x, &x, &x, p, &x, 1 << 20, nullptr),
                ErrorCode::Unsupported);  // head_dim > 256
  p.head_dim = 64; p.ldq = p.ldk = p.ldv = p.ldo = 128;
  EXPECT_THROWS(cuda::attention_backward(&x, &x, &x, &x, &x, nullptr, &x, &x, &x, p, nullptr, 0, nullptr),
                ErrorCode::InvalidArgument);  // no workspace
  p.n_kv_heads = 3;
  EXPECT_THROWS(cuda::attention_backward(&x, &x, &x, &x, &x, nullptr, &x, &x, &x, p, &x, 1 << 20, nullptr),
                ErrorCode::InvalidArgument);  // heads not a multiple
}

TEST(cuda_cross_entropy_matches_cpu) {
  SKIP_WITHOUT_GPU();
  for (int64_t V : {1, 100, 32000}) {
    const int64_t rows = 4, ld = V + 1;
    CuRng r{uint64_t(V)};
    std::vector<float> logits = rand_vec(size_t(rows * ld), r, -8.f, 8.f);
    std::vector<int32_t> t(static_cast<size_t>(rows));
    for (int64_t i = 0; i < rows; ++i) t[size_t(i)] = int32_t((i * 7919) % V);
    std::vector<float> want(logits.size(), 0.0f);
    const double loss = cross_entropy(logits.data(), ld, t.data(), rows, V, 0.25f, want.data(), nullptr);
    DevBuf dl(logits), dt(t), dd(logits.size() * 4), dloss(size_t(rows) * 8);
    cu_check(cudaMemset(dd.p, 0, dd.n), "memset");
    cuda::cross_entropy(dl.f(), ld, static_cast<const int32_t*>(dt.p), rows, V, 0.25f, dd.f(),
                        static_cast<double*>(dloss.p), nullptr);
    std::vector<float> got = dd.get<float>(logits.size());
    std::vector<double> rl = dloss.get<double>(size_t(rows));
    double sum = 0.0;
    for (double l : rl) sum += l;
    // per-row payload (the padding column stays 0 on the GPU; the CPU leaves it 0 too)
    EXPECT_ALL_CLOSE(got.data(), want.data(), got.size(), 1e-6, 1e-5, "cross_entropy dlogits V=" + std::to_string(V));
    if (!(std::fabs(sum - loss) <= 1e-9 * (1.0 + std::fabs(loss))))
      emollm_test::report_failure(__FILE__, __LINE__, "cross_entropy loss V=" + std::to_string(V) + ": " +
                                                          std::to_string(sum) + " vs " + std::to_string(loss));
  }
  // a target outside [0, V) gives NaN, not a read outside the row
  std::vector<float> logits = {1.f, 2.f, 3.f};
  std::vector<int32_t> t = {5};
  DevBuf dl(logits), dt(t), dloss(8);
  cuda::cross_entropy(dl.f(), 3, static_cast<const int32_t*>(dt.p), 1, 3, 1.0f, nullptr, static_cast<double*>(dloss.p),
                      nullptr);
  EXPECT(std::isnan(dloss.get<double>(1)[0]));
}

TEST(cuda_adamw_and_sum_squares_match_cpu) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 100003;
  CuRng r(3);
  std::vector<float> value = rand_vec(size_t(n), r, -1.f, 1.f), grad = rand_vec(size_t(n), r, -3.f, 3.f);
  std::vector<float> m = rand_vec(size_t(n), r, -0.1f, 0.1f), v = rand_vec(size_t(n), r, 0.f, 0.01f);
  AdamWStep s;
  s.lr = 1e-3; s.clip = 0.7; s.b1 = 0.9f; s.b2 = 0.999f; s.bc1 = 1 - std::pow(0.9, 3); s.bc2 = 1 - std::pow(0.999, 3);
  s.eps = 1e-8; s.decay = float(1e-3 * 0.01);
  DevBuf dval(value), dgrad(grad), dm(m), dv(v), dss(8);
  std::vector<float> wv = value, wm = m, wvv = v;
  adamw_update(wv.data(), grad.data(), wm.data(), wvv.data(), n, s, nullptr);
  cuda::adamw_update(dval.f(), dgrad.f(), dm.f(), dv.f(), n, s, nullptr);
  const size_t un = static_cast<size_t>(n);
  std::vector<float> gv = dval.get<float>(un), gm = dm.get<float>(un), gvv = dv.get<float>(un);
  EXPECT_ALL_CLOSE(gv.data(), wv.data(), size_t(n), 1e-7, 1e-6, "adamw value");
  EXPECT_ALL_CLOSE(gm.data(), wm.data(), size_t(n), 1e-7, 1e-6, "adamw m");
  EXPECT_ALL_CLOSE(gvv.data(), wvv.data(), size_t(n), 1e-9, 1e-6, "adamw v");
  cuda::sum_squares(dgrad.f(), n, static_cast<double*>(dss.p), nullptr);
  const double got = dss.get<double>(1)[0], want = sum_squares(grad.data(), n);
  if (!(std::fabs(got - want) <= 1e-12 * want))
    emollm_test::report_failure(__FILE__, __LINE__, "sum_squares " + std::to_string(got) + " vs " + std::to_string(want));
}
