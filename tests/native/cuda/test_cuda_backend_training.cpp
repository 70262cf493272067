// The CudaBackend's training ops (core/backend.h: gemm_backward_x, rmsnorm_backward,
// swiglu_backward, rope_backward, attention_backward, cross_entropy; the MVP trainer's decoder
// backward on a GPU) through the Backend interface against the CPU backend, on the shapes the
// trainer gives them (GQA causal attention, strided activations, accumulate on and off). Each
// test skips with the reason printed when no usable CUDA device is here.
//
// Tolerances (|got - want| <= atol + rtol |want|), from kernels/cuda/backward.cu's contracts:
//   gemm_backward_x, f32 weights: f32 SIMT sums against the CPU's: 1e-4 sqrt(N) + 1e-4 rel;
//     bf16 weights: the CPU rounds dY to bf16 (AVX512-BF16) and the GPU does not: 2e-2 + 2e-2 rel.
//   rmsnorm / swiglu / rope backward: 1e-5 + 1e-5 rel (f32 block reductions vs double sums).
//   attention_backward: 2e-4 + 2e-4 rel (the CUDA attention tests' bound).
//   cross_entropy: the loss 1e-6 relative (f32 logits, double sums), dlogits 1e-6 + 1e-5 rel.
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../../../base/dtype.h"
#include "../../../base/error.h"
#include "../../../base/thread_pool.h"
#include "../../../kernels/cpu/kernels.h"
#include "../../../native/core/backend.h"
#include "../../../native/core/cuda_backend.h"
#include "../testing.h"
#include "gpu_test.h"

using namespace emollm;

using emollm_test::normal_floats;

namespace {

Backend& gpu() {
  static std::unique_ptr<Backend> b = make_cuda_backend(0);
  return *b;
}
Backend& cpu() {
  static std::unique_ptr<Backend> b = make_cpu_backend(std::make_shared<ThreadPool>(2));
  return *b;
}

// Device copies of host arrays, downloaded on demand.
struct Dev {
  std::vector<BackendBuffer> bufs;
  template <typename T>
  T* up(const std::vector<T>& h) {
    bufs.emplace_back(gpu(), std::max<size_t>(1, h.size() * sizeof(T)));
    gpu().upload(bufs.back().data(), h.data(), h.size() * sizeof(T));
    return static_cast<T*>(bufs.back().data());
  }
  template <typename T>
  std::vector<T> down(const T* p, size_t n) {
    std::vector<T> h(n);
    gpu().download(h.data(), p, n * sizeof(T));
    return h;
  }
};

}  // namespace

TEST(cuda_backend_training_gemm_backward_x) {
  SKIP_WITHOUT_GPU();
  const int64_t M = 37, N = 96, K = 72;
  for (DType wt : {DType::F32, DType::BF16})
    for (bool acc : {false, true}) {
      const auto dY = normal_floats(size_t(M * N), 1), w = normal_floats(size_t(N * K), 2, 0.1f), dX0 = normal_floats(size_t(M * K), 3);
      const size_t rb = dtype_row_bytes(wt, K);
      std::vector<uint8_t> wq(size_t(N) * rb);
      for (int64_t n = 0; n < N; ++n) quantize_row(wt, w.data() + n * K, wq.data() + size_t(n) * rb, K);
      std::vector<float> want = dX0;
      cpu().gemm_backward_x(dY.data(), N, wq.data(), wt, want.data(), K, M, N, K, acc);
      Dev d;
      float* gx = d.up(dX0);
      gpu().gemm_backward_x(d.up(dY), N, d.up(wq), wt, gx, K, M, N, K, acc);
      const auto got = d.down(gx, want.size());
      const bool f32 = wt == DType::F32;
      EXPECT_ALL_CLOSE(got.data(), want.data(), want.size(), f32 ? 1e-4 * std::sqrt(double(N)) : 2e-2,
                       f32 ? 1e-4 : 2e-2, std::string("gemm_backward_x ") + dtype_name(wt));
    }
}

TEST(cuda_backend_training_norm_swiglu_rope) {
  SKIP_WITHOUT_GPU();
  const int64_t rows = 9, n = 200, ld = 208;
  const auto x = normal_floats(size_t(rows * ld), 4), w = normal_floats(size_t(n), 5), dy = normal_floats(size_t(rows * ld), 6),
             dx0 = normal_floats(size_t(rows * ld), 7);
  for (bool acc : {false, true}) {
    std::vector<float> want = dx0;
    cpu().rmsnorm_backward(x.data(), ld, w.data(), dy.data(), ld, want.data(), ld, rows, n, 1e-5f, acc);
    Dev d;
    float* gx = d.up(dx0);
    gpu().rmsnorm_backward(d.up(x), ld, d.up(w), d.up(dy), ld, gx, ld, rows, n, 1e-5f, acc);
    const auto got = d.down(gx, want.size());
    EXPECT_ALL_CLOSE(got.data(), want.data(), want.size(), 1e-5, 1e-5, "rmsnorm_backward");
  }
  const int64_t m = 1001;
  const auto g = normal_floats(size_t(m), 8), u = normal_floats(size_t(m), 9), d2 = normal_floats(size_t(m), 10);
  std::vector<float> wg(g.size()), wu(g.size());
  cpu().swiglu_backward(g.data(), u.data(), d2.data(), wg.data(), wu.data(), m);
  {
    Dev d;
    float *gg = d.up(wg), *gu = d.up(wu);
    gpu().swiglu_backward(d.up(g), d.up(u), d.up(d2), gg, gu, m);
    const auto a = d.down(gg, wg.size()), b = d.down(gu, wu.size());
    EXPECT_ALL_CLOSE(a.data(), wg.data(), wg.size(), 1e-5, 1e-5, "swiglu_backward dgate");
    EXPECT_ALL_CLOSE(b.data(), wu.data(), wu.size(), 1e-5, 1e-5, "swiglu_backward dup");
  }
  // rope_backward with device positions (the trainer's) and with host ones (staged)
  const int64_t nt = 11, H = 3, hd = 32, qd = H * hd;
  RopeParams rp;
  rp.head_dim = hd;
  rp.theta = 10000.0f;
  std::vector<int32_t> pos(static_cast<size_t>(nt));
  for (int64_t t = 0; t < nt; ++t) pos[size_t(t)] = int32_t(5 + 3 * t);
  const auto q = normal_floats(size_t(nt * qd), 11);
  std::vector<float> want = q;
  cpu().rope_backward(want.data(), qd, nt, H, pos.data(), rp);
  for (bool device_pos : {true, false}) {
    Dev d;
    float* gq = d.up(q);
    gpu().rope_backward(gq, qd, nt, H, device_pos ? d.up(pos) : pos.data(), rp);
    const auto got = d.down(gq, q.size());
    EXPECT_ALL_CLOSE(got.data(), want.data(), want.size(), 1e-5, 1e-5, "rope_backward");
  }
}

TEST(cuda_backend_training_attention_backward_and_cross_entropy) {
  SKIP_WITHOUT_GPU();
  const int64_t nq = 70, H = 8, Hkv = 2, hd = 64, qd = H * hd, kvd = Hkv * hd;  // 70: past one 64-key tile
  AttentionParams p;
  p.n_q = p.n_kv = nq;
  p.n_heads = H;
  p.n_kv_heads = Hkv;
  p.head_dim = hd;
  p.ldq = p.ldo = qd;
  p.ldk = p.ldv = kvd;
  p.causal = true;
  const auto q = normal_floats(size_t(nq * qd), 12), k = normal_floats(size_t(nq * kvd), 13), v = normal_floats(size_t(nq * kvd), 14),
             dout = normal_floats(size_t(nq * qd), 15);
  std::vector<float> out(q.size()), wq(q.size()), wk(k.size()), wv(v.size());
  cpu().attention(q.data(), k.data(), v.data(), out.data(), p);
  cpu().attention_backward(q.data(), k.data(), v.data(), out.data(), dout.data(), nullptr, wq.data(), wk.data(),
                           wv.data(), p);
  {
    Dev d;
    float *gq = d.up(wq), *gk = d.up(wk), *gv = d.up(wv);
    gpu().attention_backward(d.up(q), d.up(k), d.up(v), d.up(out), d.up(dout), nullptr, gq, gk, gv, p);
    const auto a = d.down(gq, wq.size()), b = d.down(gk, wk.size()), c = d.down(gv, wv.size());
    EXPECT_ALL_CLOSE(a.data(), wq.data(), wq.size(), 2e-4, 2e-4, "attention_backward dq");
    EXPECT_ALL_CLOSE(b.data(), wk.data(), wk.size(), 2e-4, 2e-4, "attention_backward dk");
    EXPECT_ALL_CLOSE(c.data(), wv.data(), wv.size(), 2e-4, 2e-4, "attention_backward dv");
    AttentionParams paged = p;
    paged.kv_block_size = 16;
    EXPECT_THROWS(gpu().attention_backward(gq, gk, gv, gq, gq, nullptr, gq, gk, gv, paged), ErrorCode::Unsupported);
  }
  const int64_t rows = 6, V = 5003;
  const auto logits = normal_floats(size_t(rows * V), 16, 4.0f);
  const std::vector<int32_t> tg = {0, 5002, 17, 2500, 17, 1};
  std::vector<float> wd(logits.size());
  const double want = cpu().cross_entropy(logits.data(), V, tg.data(), rows, V, 0.5f, wd.data());
  for (bool device_targets : {true, false}) {
    Dev d;
    float* gl = d.up(logits);
    const double got = gpu().cross_entropy(gl, V, device_targets ? d.up(tg) : tg.data(), rows, V, 0.5f, gl);
    EXPECT_NEAR(got, want, 1e-6 * std::fabs(want));
    const auto g = d.down(gl, wd.size());
    EXPECT_ALL_CLOSE(g.data(), wd.data(), wd.size(), 1e-6, 1e-5, "cross_entropy dlogits (in place)");
  }
  const std::vector<int32_t> bad = {0, int32_t(V), 1, 1, 1, 1};  // host targets are checked
  Dev d;
  EXPECT_THROWS(gpu().cross_entropy(d.up(logits), V, bad.data(), rows, V, 0.5f, nullptr), ErrorCode::InvalidArgument);
}
