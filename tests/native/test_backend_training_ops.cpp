// Backend's training ops (core/backend.h: gemm_backward_x, rmsnorm_backward, swiglu_backward,
// rope_backward, attention_backward, cross_entropy), the MVP trainer's decoder backward on a device:
//  - the CPU backend equals the kernels of kernels/cpu/backward.h (bit for bit: the same kernels),
//    and gemm_backward_x against the scalar reference (ref::gemm_backward_x, 1e-5 relative);
//  - the strict emulated device (core/emulated_device_backend.h) equals the CPU backend bit for
//    bit on device buffers, and refuses a host pointer in each argument of each op, naming the op
//    and the argument (InvalidArgument);
//  - a backend with device memory that does not override an op refuses it (Unsupported) instead
//    of running the host kernel on device pointers.
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../../base/error.h"
#include "../../base/thread_pool.h"
#include "../../kernels/cpu/backward.h"
#include "../../native/core/backend.h"
#include "../../native/core/emulated_device_backend.h"
#include "testing.h"

using namespace emollm;

using emollm_test::normal_floats;

namespace {

// Device copies of host arrays on `be`, downloaded back on demand.
struct Dev {
  Backend& be;
  std::vector<BackendBuffer> bufs;
  template <typename T>
  T* up(const std::vector<T>& h) {
    bufs.emplace_back(be, std::max<size_t>(1, h.size() * sizeof(T)));
    be.upload(bufs.back().data(), h.data(), h.size() * sizeof(T));
    return static_cast<T*>(bufs.back().data());
  }
  template <typename T>
  std::vector<T> down(const T* p, size_t n) {
    std::vector<T> h(n);
    be.download(h.data(), p, n * sizeof(T));
    return h;
  }
};

template <typename F>
std::string error_of(F&& f, ErrorCode code) {
  try {
    f();
  } catch (const Error& e) {
    return e.code() == code ? std::string(e.what()) : std::string("wrong code: ") + e.what();
  }
  return std::string();
}
bool names(const std::string& e, const char* op, const char* arg) {
  return e.find(op) != std::string::npos && e.find(std::string("argument ") + arg) != std::string::npos;
}

struct Fixture {
  std::shared_ptr<ThreadPool> pool = std::make_shared<ThreadPool>(2);
  std::unique_ptr<Backend> cpu = make_cpu_backend(pool);
  std::unique_ptr<Backend> emu = make_emulated_device_backend(pool);
};

// A backend with device memory and none of the training ops: the defaults must refuse.
class DeviceWithoutTrainingOps final : public Backend {
 public:
  DeviceKind device() const override { return DeviceKind::Emulated; }
  std::string describe() const override { return "test device without training ops"; }
  void* alloc(size_t) override { return nullptr; }
  void free(void*) override {}
  void upload(void*, const void*, size_t) override {}
  void download(void*, const void*, size_t) override {}
  bool uses_host_memory() const override { return false; }
  void gemm(const float*, int64_t, const void*, DType, const float*, float*, int64_t, int64_t, int64_t, int64_t) override {}
  void rmsnorm(const float*, int64_t, const float*, float*, int64_t, int64_t, int64_t, float) override {}
  void layernorm(const float*, int64_t, const float*, const float*, float*, int64_t, int64_t, int64_t, float) override {}
  void silu(const float*, float*, int64_t) override {}
  void gelu_erf(const float*, float*, int64_t) override {}
  void quick_gelu(const float*, float*, int64_t) override {}
  void swiglu(const float*, const float*, float*, int64_t) override {}
  void add(const float*, const float*, float*, int64_t) override {}
  void copy(void*, const void*, size_t) override {}
  void softmax(const float*, int64_t, float*, int64_t, int64_t, int64_t) override {}
  void rope(float*, int64_t, int64_t, int64_t, const int32_t*, const RopeParams&) override {}
  void embedding_lookup(const void*, DType, int64_t, int64_t, const int32_t*, int64_t, float*, int64_t) override {}
  void attention(const float*, const float*, const float*, float*, const AttentionParams&) override {}
};

}  // namespace

TEST(backend_training_gemm_backward_x_cpu_emulated) {
  Fixture f;
  const int64_t M = 19, N = 24, K = 40;  // 19 rows: the GEMM path (>= 16) with a ragged tail
  const auto dY = normal_floats(size_t(M * N), 1), W = normal_floats(size_t(N * K), 2), dX0 = normal_floats(size_t(M * K), 3);
  std::vector<float> want(size_t(M * K)), cpu = dX0;
  gemm_backward_x(dY.data(), N, W.data(), DType::F32, want.data(), K, M, N, K, false, nullptr);
  f.cpu->gemm_backward_x(dY.data(), N, W.data(), DType::F32, cpu.data(), K, M, N, K, false);
  EXPECT(cpu == want);
  std::vector<float> ref(size_t(M * K));
  ref::gemm_backward_x(dY.data(), W.data(), ref.data(), M, N, K);
  EXPECT_ALL_CLOSE(cpu.data(), ref.data(), ref.size(), 1e-5, 1e-5, "gemm_backward_x vs scalar reference");
  for (bool acc : {false, true}) {
    Dev d{*f.emu, {}};
    float *ddY = d.up(dY), *dW = d.up(W), *ddX = d.up(dX0);
    f.emu->gemm_backward_x(ddY, N, dW, DType::F32, ddX, K, M, N, K, acc);
    std::vector<float> c = dX0;
    f.cpu->gemm_backward_x(dY.data(), N, W.data(), DType::F32, c.data(), K, M, N, K, acc);
    EXPECT(d.down(ddX, c.size()) == c);
    EXPECT(names(error_of([&] { f.emu->gemm_backward_x(dY.data(), N, dW, DType::F32, ddX, K, M, N, K, acc); },
                          ErrorCode::InvalidArgument), "gemm_backward_x", "dY"));
    EXPECT(names(error_of([&] { f.emu->gemm_backward_x(ddY, N, W.data(), DType::F32, ddX, K, M, N, K, acc); },
                          ErrorCode::InvalidArgument), "gemm_backward_x", "W"));
    std::vector<float> host(size_t(M * K));
    EXPECT(names(error_of([&] { f.emu->gemm_backward_x(ddY, N, dW, DType::F32, host.data(), K, M, N, K, acc); },
                          ErrorCode::InvalidArgument), "gemm_backward_x", "dX"));
    // an overrun: dX read with a row stride past its block
    EXPECT(names(error_of([&] { f.emu->gemm_backward_x(ddY, N, dW, DType::F32, ddX, 2 * K, M, N, K, acc); },
                          ErrorCode::InvalidArgument), "gemm_backward_x", "dX"));
  }
}

TEST(backend_training_rmsnorm_swiglu_backward_cpu_emulated) {
  Fixture f;
  const int64_t rows = 7, n = 48;
  const auto x = normal_floats(size_t(rows * n), 4), w = normal_floats(size_t(n), 5), dy = normal_floats(size_t(rows * n), 6),
             dx0 = normal_floats(size_t(rows * n), 7);
  for (bool acc : {false, true}) {
    std::vector<float> want = dx0, cpu = dx0;
    rmsnorm_backward(x.data(), n, w.data(), dy.data(), n, want.data(), n, rows, n, 1e-5f, acc, nullptr);
    f.cpu->rmsnorm_backward(x.data(), n, w.data(), dy.data(), n, cpu.data(), n, rows, n, 1e-5f, acc);
    EXPECT(cpu == want);
    Dev d{*f.emu, {}};
    float *dX = d.up(x), *dW = d.up(w), *dDy = d.up(dy), *dDx = d.up(dx0);
    f.emu->rmsnorm_backward(dX, n, dW, dDy, n, dDx, n, rows, n, 1e-5f, acc);
    EXPECT(d.down(dDx, cpu.size()) == cpu);
    EXPECT(names(error_of([&] { f.emu->rmsnorm_backward(x.data(), n, dW, dDy, n, dDx, n, rows, n, 1e-5f, acc); },
                          ErrorCode::InvalidArgument), "rmsnorm_backward", "x"));
    EXPECT(names(error_of([&] { f.emu->rmsnorm_backward(dX, n, w.data(), dDy, n, dDx, n, rows, n, 1e-5f, acc); },
                          ErrorCode::InvalidArgument), "rmsnorm_backward", "w"));
    EXPECT(names(error_of([&] { f.emu->rmsnorm_backward(dX, n, dW, dy.data(), n, dDx, n, rows, n, 1e-5f, acc); },
                          ErrorCode::InvalidArgument), "rmsnorm_backward", "dy"));
  }
  const int64_t m = 333;
  const auto g = normal_floats(size_t(m), 8), u = normal_floats(size_t(m), 9), dyy = normal_floats(size_t(m), 10);
  std::vector<float> wg(static_cast<size_t>(m)), wu(wg), cg(wg), cu(wg);
  swiglu_backward(g.data(), u.data(), dyy.data(), wg.data(), wu.data(), m, nullptr);
  f.cpu->swiglu_backward(g.data(), u.data(), dyy.data(), cg.data(), cu.data(), m);
  EXPECT(cg == wg && cu == wu);
  Dev d{*f.emu, {}};
  float *dg = d.up(g), *du = d.up(u), *ddy = d.up(dyy), *odg = d.up(wg), *odu = d.up(wu);
  f.emu->swiglu_backward(dg, du, ddy, odg, odu, m);
  EXPECT(d.down(odg, size_t(m)) == cg && d.down(odu, size_t(m)) == cu);
  EXPECT(names(error_of([&] { f.emu->swiglu_backward(dg, u.data(), ddy, odg, odu, m); }, ErrorCode::InvalidArgument),
               "swiglu_backward", "up"));
  EXPECT(names(error_of([&] { f.emu->swiglu_backward(dg, du, ddy, cg.data(), odu, m); }, ErrorCode::InvalidArgument),
               "swiglu_backward", "dgate"));
}

TEST(backend_training_rope_attention_backward_cpu_emulated) {
  Fixture f;
  // GQA (4 query heads on 2 kv heads), causal over 13 positions, head_dim 16
  const int64_t nq = 13, H = 4, Hkv = 2, hd = 16, qd = H * hd, kvd = Hkv * hd;
  AttentionParams p;
  p.n_q = p.n_kv = nq;
  p.n_heads = H;
  p.n_kv_heads = Hkv;
  p.head_dim = hd;
  p.ldq = p.ldo = qd;
  p.ldk = p.ldv = kvd;
  p.causal = true;
  const auto q = normal_floats(size_t(nq * qd), 11), k = normal_floats(size_t(nq * kvd), 12), v = normal_floats(size_t(nq * kvd), 13),
             dout = normal_floats(size_t(nq * qd), 14);
  std::vector<float> out(size_t(nq * qd));
  f.cpu->attention(q.data(), k.data(), v.data(), out.data(), p);
  std::vector<float> wq(q.size()), wk(k.size()), wv(v.size()), cq(q.size()), ck(k.size()), cv(v.size());
  attention_backward(q.data(), k.data(), v.data(), out.data(), dout.data(), nullptr, wq.data(), wk.data(), wv.data(), p,
                     nullptr);
  f.cpu->attention_backward(q.data(), k.data(), v.data(), out.data(), dout.data(), nullptr, cq.data(), ck.data(),
                            cv.data(), p);
  EXPECT(cq == wq && ck == wk && cv == wv);
  {
    Dev d{*f.emu, {}};
    float *dq_ = d.up(q), *dk_ = d.up(k), *dv_ = d.up(v), *dout_ = d.up(out), *ddo = d.up(dout), *gq = d.up(wq),
          *gk = d.up(wk), *gv = d.up(wv);
    f.emu->attention_backward(dq_, dk_, dv_, dout_, ddo, nullptr, gq, gk, gv, p);
    EXPECT(d.down(gq, cq.size()) == cq && d.down(gk, ck.size()) == ck && d.down(gv, cv.size()) == cv);
    std::vector<float> lse(size_t(nq * H));
    EXPECT(names(error_of([&] { f.emu->attention_backward(dq_, dk_, dv_, dout_, ddo, lse.data(), gq, gk, gv, p); },
                          ErrorCode::InvalidArgument), "attention_backward", "lse"));
    EXPECT(names(error_of([&] { f.emu->attention_backward(dq_, k.data(), dv_, dout_, ddo, nullptr, gq, gk, gv, p); },
                          ErrorCode::InvalidArgument), "attention_backward", "k"));
    EXPECT(names(error_of([&] { f.emu->attention_backward(dq_, dk_, dv_, dout_, dout.data(), nullptr, gq, gk, gv, p); },
                          ErrorCode::InvalidArgument), "attention_backward", "dout"));
    EXPECT(names(error_of([&] { f.emu->attention_backward(dq_, dk_, dv_, dout_, ddo, nullptr, gq, gk, cv.data(), p); },
                          ErrorCode::InvalidArgument), "attention_backward", "dv"));
  }
  // rope: the backward undoes the forward (up to rounding) and the emulated device equals the CPU
  RopeParams rp;
  rp.head_dim = hd;
  rp.theta = 10000.0f;
  std::vector<int32_t> pos(static_cast<size_t>(nq));
  for (int64_t t = 0; t < nq; ++t) pos[size_t(t)] = int32_t(3 + 2 * t);
  std::vector<float> cr = q, wr = q;
  rope_backward(wr.data(), qd, nq, H, pos.data(), rp, nullptr);
  f.cpu->rope_backward(cr.data(), qd, nq, H, pos.data(), rp);
  EXPECT(cr == wr);
  std::vector<float> back = cr;
  f.cpu->rope(back.data(), qd, nq, H, pos.data(), rp);
  EXPECT_ALL_CLOSE(back.data(), q.data(), q.size(), 1e-5, 1e-5, "rope(rope_backward(x)) = x");
  Dev d{*f.emu, {}};
  float* dx = d.up(q);
  int32_t* dpos = d.up(pos);
  f.emu->rope_backward(dx, qd, nq, H, dpos, rp);
  EXPECT(d.down(dx, q.size()) == cr);
  EXPECT(names(error_of([&] { f.emu->rope_backward(dx, qd, nq, H, pos.data(), rp); }, ErrorCode::InvalidArgument),
               "rope_backward", "positions"));
  EXPECT(names(error_of([&] { f.emu->rope_backward(cr.data(), qd, nq, H, dpos, rp); }, ErrorCode::InvalidArgument),
               "rope_backward", "dx"));
}

TEST(backend_training_cross_entropy_cpu_emulated) {
  Fixture f;
  const int64_t rows = 5, V = 301;
  const auto logits = normal_floats(size_t(rows * V), 15, 3.0f);
  const std::vector<int32_t> tg = {0, 300, 17, 150, 17};
  std::vector<float> wd(logits.size()), cd(logits.size());
  const double want = cross_entropy(logits.data(), V, tg.data(), rows, V, 0.25f, wd.data(), nullptr);
  const double cpu = f.cpu->cross_entropy(logits.data(), V, tg.data(), rows, V, 0.25f, cd.data());
  EXPECT(cpu == want && cd == wd);
  // against the definition, in double
  double def = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double mx = -1e300, z = 0;
    for (int64_t i = 0; i < V; ++i) mx = std::max(mx, double(logits[size_t(r * V + i)]));
    for (int64_t i = 0; i < V; ++i) z += std::exp(double(logits[size_t(r * V + i)]) - mx);
    def += std::log(z) + mx - double(logits[size_t(r * V + tg[size_t(r)])]);
  }
  EXPECT_NEAR(cpu, def, 1e-9 * std::fabs(def));
  Dev d{*f.emu, {}};
  float *dl = d.up(logits), *dd = d.up(wd);
  int32_t* dt = d.up(tg);
  EXPECT(f.emu->cross_entropy(dl, V, dt, rows, V, 0.25f, dd) == cpu);
  EXPECT(d.down(dd, cd.size()) == cd);
  EXPECT(f.emu->cross_entropy(dl, V, dt, rows, V, 0.25f, nullptr) == cpu);  // loss only
  // in place (the trainer's use: the gradient overwrites the logits)
  EXPECT(f.emu->cross_entropy(dl, V, dt, rows, V, 0.25f, dl) == cpu);
  EXPECT(d.down(dl, cd.size()) == cd);
  EXPECT(names(error_of([&] { f.emu->cross_entropy(dd, V, tg.data(), rows, V, 0.25f, nullptr); },
                        ErrorCode::InvalidArgument), "cross_entropy", "targets"));
  EXPECT(names(error_of([&] { f.emu->cross_entropy(logits.data(), V, dt, rows, V, 0.25f, nullptr); },
                        ErrorCode::InvalidArgument), "cross_entropy", "logits"));
  EXPECT(names(error_of([&] { f.emu->cross_entropy(dd, V, dt, rows, V, 0.25f, wd.data()); },
                        ErrorCode::InvalidArgument), "cross_entropy", "dlogits"));
}

TEST(backend_training_ops_default_refuses_device_memory) {
  DeviceWithoutTrainingOps be;
  float a = 0, b = 0;
  int32_t t = 0;
  AttentionParams p;
  RopeParams rp;
  EXPECT_THROWS(be.gemm_backward_x(&a, 1, &b, DType::F32, &a, 1, 1, 1, 1, false), ErrorCode::Unsupported);
  EXPECT_THROWS(be.rmsnorm_backward(&a, 1, &b, &a, 1, &a, 1, 1, 1, 1e-5f, false), ErrorCode::Unsupported);
  EXPECT_THROWS(be.swiglu_backward(&a, &b, &a, &a, &b, 1), ErrorCode::Unsupported);
  EXPECT_THROWS(be.rope_backward(&a, 1, 1, 1, &t, rp), ErrorCode::Unsupported);
  EXPECT_THROWS(be.attention_backward(&a, &a, &a, &a, &a, nullptr, &a, &a, &a, p), ErrorCode::Unsupported);
  EXPECT_THROWS(be.cross_entropy(&a, 1, &t, 1, 1, 1.0f, nullptr), ErrorCode::Unsupported);
}
