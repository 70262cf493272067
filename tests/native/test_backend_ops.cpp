// The Backend's data-movement and row-broadcast ops (copy_2d, extract_patches, add_row, mul_row,
// mul_row_add, scale, convert), each against a plain scalar loop written here; the same ops through
// the Backend base-class defaults (what a new backend inherits before it overrides them); streams,
// contexts, workspaces and the KV-cache type.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "base/arena.h"
#include "base/error.h"
#include "base/thread_pool.h"
#include "core/backend.h"
#include "core/device_tensor.h"
#include "core/profiling_backend.h"
#include "kernels/cpu/kernels.h"
#include "testing.h"

using namespace emollm;

namespace {

std::vector<float> randv(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-2.0f, 2.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Forwards only the pure virtuals to a CPU backend, so every op with a default runs the default.
class DefaultsBackend final : public Backend {
 public:
  explicit DefaultsBackend(bool host) : cpu_(make_cpu_backend(std::make_shared<ThreadPool>(2))), host_(host) {}
  DeviceKind device() const override { return DeviceKind::Cpu; }
  std::string describe() const override { return host_ ? "test defaults (host)" : "test defaults (no host memory)"; }
  void* alloc(size_t b) override { ++allocs; return cpu_->alloc(b); }
  void free(void* p) override { cpu_->free(p); }
  void upload(void* d, const void* s, size_t b) override { cpu_->upload(d, s, b); }
  void download(void* d, const void* s, size_t b) override { cpu_->download(d, s, b); }
  bool uses_host_memory() const override { return host_; }
  void gemm(const float* X, int64_t ldx, const void* W, DType wt, const float* bias, float* Y, int64_t ldy, int64_t M,
            int64_t N, int64_t K) override {
    cpu_->gemm(X, ldx, W, wt, bias, Y, ldy, M, N, K);
  }
  void rmsnorm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int64_t r, int64_t n, float e) override {
    cpu_->rmsnorm(x, ldx, w, y, ldy, r, n, e);
  }
  void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy, int64_t r, int64_t n,
                 float e) override {
    cpu_->layernorm(x, ldx, w, b, y, ldy, r, n, e);
  }
  void silu(const float* x, float* y, int64_t n) override { cpu_->silu(x, y, n); }
  void gelu_erf(const float* x, float* y, int64_t n) override { cpu_->gelu_erf(x, y, n); }
  void quick_gelu(const float* x, float* y, int64_t n) override { cpu_->quick_gelu(x, y, n); }
  void swiglu(const float* g, const float* u, float* y, int64_t n) override { cpu_->swiglu(g, u, y, n); }
  void add(const float* a, const float* b, float* y, int64_t n) override { cpu_->add(a, b, y, n); }
  void copy(void* d, const void* s, size_t b) override { ++copies; cpu_->copy(d, s, b); }
  void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t r, int64_t n) override {
    cpu_->softmax(x, ldx, y, ldy, r, n);
  }
  void rope(float* x, int64_t ld, int64_t nt, int64_t nh, const int32_t* pos, const RopeParams& p) override {
    cpu_->rope(x, ld, nt, nh, pos, p);
  }
  void embedding_lookup(const void* t, DType dt, int64_t v, int64_t d, const int32_t* ids, int64_t n, float* o,
                        int64_t ld) override {
    cpu_->embedding_lookup(t, dt, v, d, ids, n, o, ld);
  }
  void attention(const float* q, const float* k, const float* v, float* o, const AttentionParams& p) override {
    cpu_->attention(q, k, v, o, p);
  }
  int allocs = 0, copies = 0;

 private:
  std::unique_ptr<Backend> cpu_;
  bool host_;
};

// Runs `check` on the CPU backend and on the defaults.
template <class Fn>
void on_both(const Fn& check) {
  auto cpu = make_cpu_backend(std::make_shared<ThreadPool>(2));
  check(*cpu, "cpu");
  DefaultsBackend def(true);
  check(def, "defaults");
}

}  // namespace

TEST(backend_copy_2d) {
  on_both([](Backend& be, const char* who) {
    const int64_t rows = 37, n = 19, lds = 25, ldd = 31;
    std::vector<float> src = randv(size_t(rows * lds), 1), dst(size_t(rows * ldd), -7.0f), want = dst;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < n; ++c) want[size_t(r * ldd + c)] = src[size_t(r * lds + c)];
    be.copy_2d(dst.data(), ldd * 4, src.data(), lds * 4, rows, n * 4);
    EXPECT(std::memcmp(dst.data(), want.data(), dst.size() * 4) == 0);
    if (std::memcmp(dst.data(), want.data(), dst.size() * 4) != 0) std::printf("  (%s)\n", who);
    // contiguous
    std::vector<float> d2(size_t(rows * n));
    be.copy_2d(d2.data(), n * 4, src.data(), n * 4, rows, n * 4);
    EXPECT(std::memcmp(d2.data(), src.data(), d2.size() * 4) == 0);
  });
}

TEST(backend_extract_patches) {
  on_both([](Backend& be, const char* who) {
    PatchParams p;
    p.batch = 2, p.channels = 3, p.height = 12, p.width = 8, p.patch = 4;
    const int64_t ph = 3, pw = 2, K = 3 * 16, ld = K + 5;
    std::vector<float> img = randv(size_t(2 * 3 * 12 * 8), 2), cols(size_t(2 * ph * pw * ld), -1.0f), want = cols;
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t py = 0; py < ph; ++py)
        for (int64_t px = 0; px < pw; ++px)
          for (int64_t c = 0; c < 3; ++c)
            for (int64_t ky = 0; ky < 4; ++ky)
              for (int64_t kx = 0; kx < 4; ++kx)
                want[size_t(((b * ph + py) * pw + px) * ld + (c * 4 + ky) * 4 + kx)] =
                    img[size_t(((b * 3 + c) * 12 + py * 4 + ky) * 8 + px * 4 + kx)];
    be.extract_patches(img.data(), cols.data(), ld, p);
    EXPECT(std::memcmp(cols.data(), want.data(), cols.size() * 4) == 0);
    if (std::memcmp(cols.data(), want.data(), cols.size() * 4) != 0) std::printf("  (%s)\n", who);
    PatchParams bad = p;
    bad.height = 13;
    EXPECT_THROWS(be.extract_patches(img.data(), cols.data(), 0, bad), ErrorCode::InvalidArgument);
  });
}

TEST(backend_row_broadcast_ops) {
  on_both([](Backend& be, const char*) {
    const int64_t rows = 300, n = 130, ldx = 140, ldy = 135;  // 39k elements: the pool splits rows
    std::vector<float> x = randv(size_t(rows * ldx), 3), v = randv(size_t(n), 4), y0 = randv(size_t(rows * ldy), 5);
    std::vector<float> y = y0, want = y0;
    for (int k = 0; k < 4; ++k) {
      y = y0, want = y0;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < n; ++c) {
          const float a = x[size_t(r * ldx + c)], b = v[size_t(c)];
          float& w = want[size_t(r * ldy + c)];
          w = k == 0 ? a + b : k == 1 ? a * b : k == 2 ? w + a * b : a * b;
        }
      if (k == 0) be.add_row(x.data(), ldx, v.data(), y.data(), ldy, rows, n);
      if (k == 1) be.mul_row(x.data(), ldx, v.data(), y.data(), ldy, rows, n);
      if (k == 2) be.mul_row_add(x.data(), ldx, v.data(), y.data(), ldy, rows, n, true);
      if (k == 3) be.mul_row_add(x.data(), ldx, v.data(), y.data(), ldy, rows, n, false);
      EXPECT_ALL_CLOSE(y.data(), want.data(), y.size(), 0.0, 0.0, "row op " + std::to_string(k));
    }
    std::vector<float> s(x.size()), ws(x.size());
    for (size_t i = 0; i < x.size(); ++i) ws[i] = 0.5f * x[i];
    be.scale(x.data(), 0.5f, s.data(), int64_t(x.size()));
    EXPECT_ALL_CLOSE(s.data(), ws.data(), s.size(), 0.0, 0.0, "scale");
    const float before = x[size_t(ldx + 3)];
    be.add_row(x.data(), ldx, v.data(), x.data(), ldx, rows, n);  // in place
    EXPECT(x[size_t(ldx + 3)] == before + v[3]);
  });
}

TEST(backend_convert_half_types) {
  auto cpu = make_cpu_backend(std::make_shared<ThreadPool>(2));
  const int64_t n = 1000;
  std::vector<float> x = randv(size_t(n), 6), back(static_cast<size_t>(n));
  std::vector<uint16_t> h(static_cast<size_t>(n));
  for (DType t : {DType::F16, DType::BF16}) {
    cpu->convert(x.data(), DType::F32, h.data(), t, n);
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t want = t == DType::F16 ? f32_to_f16(x[size_t(i)]) : f32_to_bf16(x[size_t(i)]);
      if (h[size_t(i)] != want) {
        EXPECT(h[size_t(i)] == want);
        break;
      }
    }
    cpu->convert(h.data(), t, back.data(), DType::F32, n);
    EXPECT_ALL_CLOSE(back.data(), x.data(), n, 0.0, t == DType::F16 ? 1e-3 : 8e-3, dtype_name(t));
  }
  EXPECT_THROWS(cpu->convert(x.data(), DType::F32, h.data(), DType::Q8_0, 64), ErrorCode::Unsupported);
  DefaultsBackend def(true);
  def.convert(x.data(), DType::F32, back.data(), DType::F32, n);  // same type: a copy
  EXPECT(std::memcmp(back.data(), x.data(), size_t(n) * 4) == 0);
  EXPECT_THROWS(def.convert(x.data(), DType::F32, h.data(), DType::F16, n), ErrorCode::Unsupported);
}

TEST(backend_defaults_refuse_device_memory) {
  // A backend whose memory the host cannot read must implement the row-broadcast ops itself: the
  // defaults say so instead of dereferencing device pointers.
  DefaultsBackend dev(false);
  float x[4] = {1, 2, 3, 4}, v[4] = {1, 1, 1, 1}, y[4];
  EXPECT_THROWS(dev.add_row(x, 4, v, y, 4, 1, 4), ErrorCode::Unsupported);
  EXPECT_THROWS(dev.mul_row(x, 4, v, y, 4, 1, 4), ErrorCode::Unsupported);
  EXPECT_THROWS(dev.scale(x, 2.0f, y, 4), ErrorCode::Unsupported);
  // copy_2d's default is composed of copy(): one per row when strided.
  float d[8] = {};
  dev.copy_2d(d, 16, x, 8, 2, 8);
  EXPECT(dev.copies == 2 && d[0] == 1 && d[1] == 2 && d[4] == 3 && d[5] == 4);
}

TEST(backend_kv_dtype) {
  // The CPU attention reads f32, f16 and bf16 caches (kernels/cpu/attention.cpp); a backend
  // without an override (the defaults) takes f32 only and says which types it supports.
  auto cpu = make_cpu_backend(std::make_shared<ThreadPool>(1));
  EXPECT(cpu->supports_kv_dtype(DType::F32) && cpu->supports_kv_dtype(DType::F16) && cpu->supports_kv_dtype(DType::BF16));
  EXPECT(!cpu->supports_kv_dtype(DType::Q8_0));
  cpu->require_kv_dtype(DType::F16);
  EXPECT_THROWS(cpu->require_kv_dtype(DType::Q8_0), ErrorCode::Unsupported);
  DefaultsBackend def(true);
  EXPECT(def.supports_kv_dtype(DType::F32) && !def.supports_kv_dtype(DType::F16));
  bool said = false;
  try {
    def.require_kv_dtype(DType::F16);
  } catch (const Error& e) {
    said = e.code() == ErrorCode::Unsupported && std::string(e.what()).find("supported: f32") != std::string::npos;
  }
  EXPECT(said);
  AttentionParams ap;
  ap.n_q = ap.n_kv = 1, ap.n_heads = ap.n_kv_heads = 1, ap.head_dim = 4;
  ap.ldq = ap.ldk = ap.ldv = ap.ldo = 4;
  ap.kv_dtype = DType::Q8_0;
  float q[4] = {}, k[4] = {}, v[4] = {}, o[4];
  EXPECT_THROWS(cpu->attention(q, k, v, o, ap), ErrorCode::Unsupported);
  // an f16 cache of one token: the output is that token's value row, widened
  const uint16_t kh[4] = {f32_to_f16(1.0f), 0, 0, 0}, vh[4] = {f32_to_f16(0.5f), f32_to_f16(-2.0f), 0, f32_to_f16(3.0f)};
  ap.kv_dtype = DType::F16;
  cpu->attention(q, reinterpret_cast<const float*>(kh), reinterpret_cast<const float*>(vh), o, ap);
  EXPECT(o[0] == 0.5f && o[1] == -2.0f && o[2] == 0.0f && o[3] == 3.0f);
}

TEST(backend_context_stream_and_workspace) {
  DefaultsBackend be(true);
  EXPECT(be.current_stream() == nullptr && be.current_workspace() == nullptr);
  {
    BackendContext ctx(be);
    EXPECT(ctx.stream().native_handle() == nullptr);
    ctx.synchronize();
    {
      ContextScope bind(ctx);
      EXPECT(current_context() == &ctx);
      EXPECT(be.current_stream() == &ctx.stream());
      EXPECT(be.current_workspace() == &ctx.workspace());
      DefaultsBackend other(true);  // a context binds only its own backend
      EXPECT(other.current_workspace() == nullptr);
      Workspace& ws = ctx.workspace();
      void* a;
      {
        Workspace::Frame f(ws);
        a = ws.take(100);
        void* b = ws.take(100);
        EXPECT(reinterpret_cast<uintptr_t>(a) % 64 == 0 && reinterpret_cast<uintptr_t>(b) % 64 == 0);
        EXPECT(b != a);
        std::memset(a, 1, 100);
        void* big = ws.take(size_t(3) << 20);  // a second chunk: `a` stays valid
        std::memset(big, 2, size_t(3) << 20);
        EXPECT(static_cast<uint8_t*>(a)[99] == 1);
      }
      // All given back: one chunk of the combined size, and the next frame reuses it.
      const size_t cap = ws.capacity();
      const int allocs = be.allocs;
      {
        Workspace::Frame f(ws);
        EXPECT(ws.take(size_t(3) << 20) != nullptr);
      }
      EXPECT(be.allocs == allocs && ws.capacity() == cap);
      // The composed mvp_projection takes its scratch from the bound workspace: no allocation.
      const int64_t T = 3, Din = 8, Dh = 4, Do = 5, H = 2;
      std::vector<float> X = randv(size_t(T * Din), 7), W1 = randv(size_t(H * Dh * Din), 8), W2 = randv(size_t(H * Do * Dh), 9),
                         G = randv(size_t(H * Do), 10), Y(size_t(T * Do)), Yc(size_t(T * Do));
      MvpProjectionParams mp;
      mp.tokens = T, mp.d_in = Din, mp.d_hid = Dh, mp.d_out = Do, mp.n_heads = H;
      be.mvp_projection(X.data(), W1.data(), nullptr, W2.data(), nullptr, G.data(), DType::F32, Y.data(), mp);
      EXPECT(be.allocs == allocs);
      auto cpu = make_cpu_backend(std::make_shared<ThreadPool>(1));
      cpu->mvp_projection(X.data(), W1.data(), nullptr, W2.data(), nullptr, G.data(), DType::F32, Yc.data(), mp);
      EXPECT_ALL_CLOSE(Y.data(), Yc.data(), Y.size(), 1e-5, 1e-5, "composed vs fused mvp_projection");
    }
    EXPECT(current_context() == nullptr);
  }
}

TEST(device_tensor_host_edges_and_moves) {
  std::vector<float> src = randv(12, 11), dst(12, 0.0f);
  // A host-memory backend: inputs and outputs are the caller's memory, no copies.
  auto cpu = make_cpu_backend(std::make_shared<ThreadPool>(1));
  DeviceTensor in = DeviceTensor::input(*cpu, src.data(), 3, 4);
  EXPECT(in.data() == src.data() && in.rows() == 3 && in.cols() == 4 && in.bytes() == 48);
  DeviceTensor out = DeviceTensor::output(*cpu, dst.data(), 3, 4);
  EXPECT(out.data() == dst.data());
  // A backend whose memory the host does not use: an uploaded copy, results downloaded.
  DefaultsBackend dev(false);
  DeviceTensor din = DeviceTensor::input(dev, src.data(), 3, 4);
  EXPECT(din.data() != src.data());
  EXPECT_THROWS(DeviceTensor::wrap_host(dev, dst.data(), 3, 4), ErrorCode::InvalidArgument);
  DeviceTensor dout = DeviceTensor::output(dev, dst.data(), 3, 4);
  EXPECT(dout.data() != dst.data());
  dev.copy(dout.data(), din.data(), din.bytes());
  dout.to_host(dst.data());
  EXPECT(dst == src);
  // Moves leave the source empty (no stale pointer to memory it no longer owns).
  DeviceTensor moved = std::move(dout);
  EXPECT(dout.data() == nullptr && dout.numel() == 0 && moved.numel() == 12);
  DeviceTensor empty;
  EXPECT(empty.numel() == 0 && empty.rows() == 0 && empty.bytes() == 0);
}

// The CPU backend's packing (Backend::pack_gemm_weight): with AVX512-VNNI and repacking on, a
// q4_0 / q8_0 matrix gets a packed copy that gemm() on the same W then uses for every M (the
// bits of gemm_repacked); f32 activations, an ISA cap below AVX-512, another shape, a dropped
// handle or repacking off give the standard layout's bits again. Other types are not packed.
TEST(cpu_backend_packs_q4_0_q8_0_weights) {
  auto be = make_cpu_backend(std::make_shared<ThreadPool>(2));
  const bool repack_was = weight_repacking();
  set_weight_repacking(true);
  const bool vnni = isa_active() >= Isa::Avx512 && cpu_features().avx512vnni;
  if (!vnni) std::printf("  skip: no AVX512-VNNI on this CPU: the CPU backend packs nothing (checked below)\n");
  uint32_t seed = 7200;
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    const int64_t N = 40, K = 256;
    std::vector<uint8_t> wbytes(size_t(N) * dtype_row_bytes(t, K));
    {
      const std::vector<float> src = randv(size_t(N * K), seed++);
      for (int64_t n = 0; n < N; ++n) quantize_row(t, src.data() + n * K, wbytes.data() + size_t(n) * dtype_row_bytes(t, K), K);
    }
    std::vector<uint8_t> packed(quant_repack_bytes(t, N, K));
    quant_repack(wbytes.data(), t, N, K, packed.data(), nullptr);
    for (int64_t M : {1, 6, 12}) {
      struct {
        std::vector<float> X, bias;
      } p{randv(size_t(M * K), seed), randv(size_t(N), seed + 1)};
      seed += 2;
      std::vector<float> want_std(size_t(M * N)), want_pack(size_t(M * N)), got(size_t(M * N));
      gemm(p.X.data(), K, wbytes.data(), t, p.bias.data(), want_std.data(), N, M, N, K, nullptr);
      gemm_repacked(p.X.data(), K, packed.data(), t, p.bias.data(), want_pack.data(), N, M, N, K, nullptr);
      {
        const size_t before = packed_gemm_weight_bytes();
        auto h = be->pack_gemm_weight(wbytes.data(), t, N, K);
        EXPECT((h != nullptr) == vnni);
        if (h) {
          EXPECT(h->bytes() == packed.size());
          EXPECT(packed_gemm_weight_bytes() == before + packed.size());
          auto h2 = be->pack_gemm_weight(wbytes.data(), t, N, K);  // a tied matrix: one copy
          EXPECT(h2 != nullptr && packed_gemm_weight_bytes() == before + packed.size());
          EXPECT(be->pack_gemm_weight(wbytes.data(), t, N / 2, K) == nullptr);  // another shape
        }
        be->gemm(p.X.data(), K, wbytes.data(), t, p.bias.data(), got.data(), N, M, N, K);
        EXPECT(got == (vnni ? want_pack : want_std));
        be->gemm(p.X.data(), K, wbytes.data(), t, p.bias.data(), got.data(), N, M, N / 2, K);  // 20 rows: standard
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N / 2; ++n) EXPECT(got[size_t(m * N + n)] == want_std[size_t(m * N + n)]);
        {
          // the ISA capped below the VNNI kernel after packing: the standard AVX2 kernels
          IsaCapScope cap(Isa::Avx2);
          std::vector<float> want_avx2(size_t(M * N));
          gemm(p.X.data(), K, wbytes.data(), t, p.bias.data(), want_avx2.data(), N, M, N, K, nullptr);
          be->gemm(p.X.data(), K, wbytes.data(), t, p.bias.data(), got.data(), N, M, N, K);
          EXPECT(got == want_avx2);
        }
        {
          QuantActivationsScope f32(QuantActivations::F32);
          std::vector<float> want_f32(size_t(M * N));
          gemm(p.X.data(), K, wbytes.data(), t, p.bias.data(), want_f32.data(), N, M, N, K, nullptr);
          be->gemm(p.X.data(), K, wbytes.data(), t, p.bias.data(), got.data(), N, M, N, K);
          EXPECT(got == want_f32);
        }
      }
      EXPECT(packed_gemm_weight_bytes() == 0);
      be->gemm(p.X.data(), K, wbytes.data(), t, p.bias.data(), got.data(), N, M, N, K);
      EXPECT(got == want_std);
    }
    set_weight_repacking(false);
    EXPECT(be->pack_gemm_weight(wbytes.data(), t, N, K) == nullptr);
    set_weight_repacking(true);
  }
  std::vector<uint16_t> f16(size_t(32 * 64));
  EXPECT(be->pack_gemm_weight(f16.data(), DType::F16, 32, 64) == nullptr);  // under 2 MiB: no huge-page copy
  set_weight_repacking(repack_was);
}

// BF16 / F16 matrices of 2 MiB or more: a same-layout copy in huge pages, which gemm() on the same
// W then runs through gemm_huge_pages (bitwise: the same kernels on the same bytes); under 2 MiB,
// with repacking off, or once the handle is dropped: plain gemm() on W.
TEST(cpu_backend_copies_bf16_f16_weights_to_huge_pages) {
  auto be = make_cpu_backend(std::make_shared<ThreadPool>(2));
  const bool repack_was = weight_repacking();
  set_weight_repacking(true);
  uint32_t seed = 7250;
  for (DType t : {DType::BF16, DType::F16}) {
    const int64_t N = 520, K = 2048;  // 2.03 MiB of 2-byte weights
    std::vector<uint8_t> wbytes(size_t(N) * dtype_row_bytes(t, K));
    {
      const std::vector<float> src = randv(size_t(N * K), seed++);
      for (int64_t n = 0; n < N; ++n) quantize_row(t, src.data() + n * K, wbytes.data() + size_t(n) * dtype_row_bytes(t, K), K);
    }
    for (int64_t M : {1, 3}) {
      const std::vector<float> X = randv(size_t(M * K), seed++), bias = randv(size_t(N), seed++);
      std::vector<float> want_huge(size_t(M * N)), want_std(size_t(M * N)), got(size_t(M * N));
      ThreadPool pool(2);
      gemm_huge_pages(X.data(), K, wbytes.data(), t, bias.data(), want_huge.data(), N, M, N, K, &pool);
      gemm(X.data(), K, wbytes.data(), t, bias.data(), want_std.data(), N, M, N, K, &pool);
      {
        const size_t before = packed_gemm_weight_bytes();
        auto h = be->pack_gemm_weight(wbytes.data(), t, N, K);
        EXPECT(h != nullptr);
        if (!h) continue;
        EXPECT(h->bytes() == wbytes.size());
        EXPECT(packed_gemm_weight_bytes() == before + wbytes.size());
        be->gemm(X.data(), K, wbytes.data(), t, bias.data(), got.data(), N, M, N, K);
        EXPECT(got == want_huge);
        EXPECT_ALL_CLOSE(got.data(), want_std.data(), size_t(M * N), 1e-4, 1e-4, "huge-page copy vs plain gemm");
        // gemm_weight_bytes: the copy (other memory, the same bytes) for host readers (the trainer)
        const void* view = be->gemm_weight_bytes(wbytes.data(), t, N, K);
        EXPECT(view != wbytes.data() && std::memcmp(view, wbytes.data(), wbytes.size()) == 0);
        EXPECT(be->gemm_weight_bytes(wbytes.data(), t, N / 2, K) == wbytes.data());  // another shape: W
      }
      EXPECT(packed_gemm_weight_bytes() == 0);
      EXPECT(be->gemm_weight_bytes(wbytes.data(), t, N, K) == wbytes.data());  // handle dropped: W
      be->gemm(X.data(), K, wbytes.data(), t, bias.data(), got.data(), N, M, N, K);
      EXPECT(got == want_std);
    }
    // 1 MiB (a GQA model's k / v): a copy from 256 KiB on (set_small_half_copies, default), none
    // under it, and none under 2 MiB with the switch off (the previous threshold)
    {
      auto h = be->pack_gemm_weight(wbytes.data(), t, 256, K);
      EXPECT(h != nullptr && h->bytes() == size_t(256) * dtype_row_bytes(t, K));
      if (h) {
        const std::vector<float> X = randv(size_t(K), seed++);
        std::vector<float> want(256), got(256);
        ThreadPool pool(2);
        gemm_huge_pages(X.data(), K, wbytes.data(), t, nullptr, want.data(), 256, 1, 256, K, &pool);
        be->gemm(X.data(), K, wbytes.data(), t, nullptr, got.data(), 256, 1, 256, K);
        EXPECT(got == want);  // the copy runs through gemm_huge_pages' kernels
      }
    }
    EXPECT(be->pack_gemm_weight(wbytes.data(), t, 63, K) == nullptr);  // 252 KiB: no copy
    set_small_half_copies(false);
    EXPECT(be->pack_gemm_weight(wbytes.data(), t, 256, K) == nullptr);  // 1 MiB: no copy
    set_small_half_copies(true);
    set_weight_repacking(false);
    EXPECT(be->pack_gemm_weight(wbytes.data(), t, N, K) == nullptr);
    set_weight_repacking(true);
  }
  set_weight_repacking(repack_was);
}

// BF16 matrices offered with GemmRows::Many (vision towers) on AVX512-BF16: the GEMM's panels
// (kernels.h bf16_pack_panels), which gemm() on the same W then reads for every M (the bits of
// gemm_bf16_panels; at M > 64 those of plain gemm()); an ISA cap below AVX-512, a dropped handle,
// weight repacking off or another type: plain gemm() on W. GemmRows::Many offers no other layout.
TEST(cpu_backend_packs_bf16_panels_for_many_rows) {
  auto be = make_cpu_backend(std::make_shared<ThreadPool>(2));
  const bool repack_was = weight_repacking();
  set_weight_repacking(true);
  const bool usable = bf16_panels_usable();
  if (!usable) std::printf("  skip: no AVX512-BF16 on this CPU: nothing is packed (checked below)\n");
  const int64_t N = 130, K = 200;
  std::vector<uint8_t> wbytes(size_t(N) * dtype_row_bytes(DType::BF16, K));
  {
    const std::vector<float> src = randv(size_t(N * K), 7300);
    for (int64_t n = 0; n < N; ++n)
      quantize_row(DType::BF16, src.data() + n * K, wbytes.data() + size_t(n) * dtype_row_bytes(DType::BF16, K), K);
  }
  ThreadPool pool(2);
  for (int64_t M : {3, 100}) {
    const std::vector<float> X = randv(size_t(M * K), 7301 + uint32_t(M)), bias = randv(size_t(N), 7302);
    std::vector<float> want_std(size_t(M * N)), want_pan(size_t(M * N)), got(size_t(M * N));
    gemm(X.data(), K, wbytes.data(), DType::BF16, bias.data(), want_std.data(), N, M, N, K, &pool);
    {
      auto h = be->pack_gemm_weight(wbytes.data(), DType::BF16, N, K, GemmRows::Many);
      EXPECT((h != nullptr) == usable);
      if (h) {
        EXPECT(h->bytes() == bf16_panels_bytes(N, K));
        AlignedPtr<uint8_t> pan = make_aligned<uint8_t>(bf16_panels_bytes(N, K));
        bf16_pack_panels(wbytes.data(), N, K, pan.get(), nullptr);
        gemm_bf16_panels(X.data(), K, pan.get(), bias.data(), want_pan.data(), N, M, N, K, &pool);
        EXPECT(be->pack_gemm_weight(wbytes.data(), DType::BF16, N, K) == nullptr);  // packed in another layout
        be->gemm(X.data(), K, wbytes.data(), DType::BF16, bias.data(), got.data(), N, M, N, K);
        EXPECT(got == want_pan);
        if (M > 64) EXPECT(got == want_std);
        {  // gemm_multi over panel copies (a vision layer's q/k/v): each output the bits of gemm()
          std::vector<float> y1(size_t(M * N), -1.0f), y2(size_t(M * (N + 3)), -1.0f);
          const Backend::GemmOutput outs[2] = {{wbytes.data(), DType::BF16, bias.data(), y1.data(), N, N},
                                               {wbytes.data(), DType::BF16, nullptr, y2.data(), N + 3, N}};
          be->gemm_multi(X.data(), K, outs, 2, M, K);
          EXPECT(y1 == want_pan);
          std::vector<float> nob(size_t(M * (N + 3)), -1.0f);
          be->gemm(X.data(), K, wbytes.data(), DType::BF16, nullptr, nob.data(), N + 3, M, N, K);
          EXPECT(y2 == nob);
        }
        IsaCapScope cap(Isa::Avx2);  // below the panels' kernel after the packing: the original bytes
        std::vector<float> want_avx2(size_t(M * N));
        gemm(X.data(), K, wbytes.data(), DType::BF16, bias.data(), want_avx2.data(), N, M, N, K, &pool);
        be->gemm(X.data(), K, wbytes.data(), DType::BF16, bias.data(), got.data(), N, M, N, K);
        EXPECT(got == want_avx2);
      }
    }
    EXPECT(packed_gemm_weight_bytes() == 0);
    be->gemm(X.data(), K, wbytes.data(), DType::BF16, bias.data(), got.data(), N, M, N, K);
    EXPECT(got == want_std);
  }
  set_weight_repacking(false);
  EXPECT(be->pack_gemm_weight(wbytes.data(), DType::BF16, N, K, GemmRows::Many) == nullptr);
  set_weight_repacking(true);
  std::vector<uint16_t> f16(size_t(520 * 2048));  // 2 MiB of f16: a huge-page copy for Any, nothing for Many
  EXPECT(be->pack_gemm_weight(f16.data(), DType::F16, 520, 2048, GemmRows::Many) == nullptr);
  set_weight_repacking(repack_was);
}

// Opt-in (set_bf16_decoder_panels): a decoder's bf16 matrix of 2 MiB or more (GemmRows::Any) is
// kept in the GEMM panels instead of the 2 MiB-page copy (one copy either way: the handle's bytes),
// and gemm() / gemm_multi() on W read them at every M, M = 1 included: the bits of
// gemm_bf16_panels on panels packed here, and a row's result the same alone (M = 1) as in a batch
// of 16 (a sequence's logits do not depend on the batch). Off (the default): the same-layout copy.
TEST(cpu_backend_bf16_decoder_panels_opt_in) {
  auto be = make_cpu_backend(std::make_shared<ThreadPool>(2));
  const bool repack_was = weight_repacking(), was = bf16_decoder_panels();
  set_weight_repacking(true);
  const int64_t N = 1030, K = 1024;  // 2 MiB + 12 rows; N not a multiple of the 64-row panels
  const size_t rb = dtype_row_bytes(DType::BF16, K);
  std::vector<uint8_t> wbytes(size_t(N) * rb);
  {
    const std::vector<float> src = randv(size_t(N * K), 7400);
    for (int64_t n = 0; n < N; ++n) quantize_row(DType::BF16, src.data() + n * K, wbytes.data() + size_t(n) * rb, K);
  }
  set_bf16_decoder_panels(false);
  {
    auto h = be->pack_gemm_weight(wbytes.data(), DType::BF16, N, K);
    EXPECT(h != nullptr && h->bytes() == size_t(N) * rb);  // the 2 MiB-page copy, W's layout
  }
  set_bf16_decoder_panels(true);
  if (!bf16_panels_usable()) {
    std::printf("  skip the panel checks: no AVX512-BF16 at the AVX-512 ISA level (the copy stays)\n");
    auto h = be->pack_gemm_weight(wbytes.data(), DType::BF16, N, K);
    EXPECT(h != nullptr && h->bytes() == size_t(N) * rb);
  } else {
    ThreadPool pool(2);
    AlignedPtr<uint8_t> pan = make_aligned<uint8_t>(bf16_panels_bytes(N, K));
    bf16_pack_panels(wbytes.data(), N, K, pan.get(), nullptr);
    auto h = be->pack_gemm_weight(wbytes.data(), DType::BF16, N, K);
    EXPECT(h != nullptr && h->bytes() == bf16_panels_bytes(N, K));
    EXPECT(be->gemm_weight_bytes(wbytes.data(), DType::BF16, N, K) == wbytes.data());  // panels: not W's layout
    const int64_t Mb = 16;
    const std::vector<float> X = randv(size_t(Mb * K), 7401), bias = randv(size_t(N), 7402);
    std::vector<float> batch(size_t(Mb * N)), want(size_t(Mb * N));
    gemm_bf16_panels(X.data(), K, pan.get(), bias.data(), want.data(), N, Mb, N, K, &pool);
    be->gemm(X.data(), K, wbytes.data(), DType::BF16, bias.data(), batch.data(), N, Mb, N, K);
    EXPECT(batch == want);
    bool alone_same = true;
    for (int64_t m = 0; m < Mb; ++m) {
      std::vector<float> y(static_cast<size_t>(N));
      be->gemm(X.data() + m * K, K, wbytes.data(), DType::BF16, bias.data(), y.data(), N, 1, N, K);
      alone_same = alone_same && std::memcmp(y.data(), batch.data() + m * N, size_t(N) * 4) == 0;
    }
    EXPECT(alone_same);
    // a decode step's fused projections (M = 1, two outputs on panels): each the bits of gemm()
    std::vector<float> y1(static_cast<size_t>(N), -1.0f), y2(static_cast<size_t>(N), -1.0f);
    const Backend::GemmOutput outs[2] = {{wbytes.data(), DType::BF16, bias.data(), y1.data(), N, N},
                                         {wbytes.data(), DType::BF16, nullptr, y2.data(), N, N}};
    be->gemm_multi(X.data(), K, outs, 2, 1, K);
    EXPECT(std::memcmp(y1.data(), batch.data(), size_t(N) * 4) == 0);
    std::vector<float> nob(static_cast<size_t>(N));
    be->gemm(X.data(), K, wbytes.data(), DType::BF16, nullptr, nob.data(), N, 1, N, K);
    EXPECT(y2 == nob);
  }
  set_bf16_decoder_panels(was);
  set_weight_repacking(repack_was);
}

// The per-op profile (core/profiling_backend.h): a gemm through the profiling decorator gets its
// row, keyed "repacked" when the inner backend packed its weights; the thread-pool hand-off
// inside it gets a "handoff" row and its jobs a "dispatch" row (2 threads, a product large enough
// to be split); profile_add (sampling) adds its row only while profiling is on. The phase is the
// one the core gives (ProfileStep), whatever the op's size: a one-query attention batch outside
// any step is "other", inside a decode step "decode", inside a prefill step "prefill"; each step
// adds its "forward" row (its time less its ops) and two decode steps on a thread the "loop" row
// between them, less the sampling recorded in between. Attention rows carry the K and V bytes
// their calls read ("bytes"; bench:decode's attention GB/s and its figure with the KV cache).
TEST(profiling_backend_rows) {
  const bool was = profile_enabled();
  profile_set_enabled(true);
  profile_reset();
  auto prof = make_profiling_backend(std::shared_ptr<Backend>(make_cpu_backend(std::make_shared<ThreadPool>(2))));
  const bool vnni = isa_active() >= Isa::Avx512 && cpu_features().avx512vnni && weight_repacking();
  const int64_t N = 256, K = 512;
  std::vector<uint8_t> wq(size_t(N) * dtype_row_bytes(DType::Q4_0, K));
  const std::vector<float> src = randv(size_t(N * K), 7300), x = randv(size_t(K), 7301);
  for (int64_t n = 0; n < N; ++n) quantize_row(DType::Q4_0, src.data() + n * K, wq.data() + size_t(n) * dtype_row_bytes(DType::Q4_0, K), K);
  std::vector<float> y(static_cast<size_t>(N));
  {
    auto h = prof->pack_gemm_weight(wq.data(), DType::Q4_0, N, K);
    EXPECT((h != nullptr) == vnni);
    prof->gemm(x.data(), K, wq.data(), DType::Q4_0, nullptr, y.data(), N, 1, N, K);
  }
  prof->gemm(x.data(), K, wq.data(), DType::Q4_0, nullptr, y.data(), N, 1, N, K);
  // a batch of one-query attentions outside a step, in a decode step, then in a prefill step
  {
    const int64_t H = 2, D = 16, T = 8;
    const std::vector<float> q = randv(size_t(2 * H * D), 7302), kv = randv(size_t(T * H * D), 7303);
    std::vector<float> o(size_t(2 * H * D));
    AttentionBatchItem it[2];
    for (int i = 0; i < 2; ++i) {
      it[i].q = q.data() + i * H * D, it[i].k = it[i].v = kv.data(), it[i].out = o.data() + i * H * D;
      it[i].p.n_q = 1, it[i].p.n_kv = T, it[i].p.n_heads = it[i].p.n_kv_heads = H, it[i].p.head_dim = D;
      it[i].p.ldq = it[i].p.ldk = it[i].p.ldv = it[i].p.ldo = H * D;
      it[i].p.q_pos0 = T - 1;
    }
    prof->attention_batch(it, 2);
    {
      const ProfileStep step(true, 2);
      prof->attention_batch(it, 2);
    }
    profile_add(true, "sample", "", 0.5);  // between the two decode steps: not part of the loop row
    {
      const ProfileStep step(true, 2);
      const ProfileStep nested(false, 5);  // a step inside a step changes nothing
      prof->attention_batch(it, 1);
    }
    {
      const ProfileStep step(false, 3);
      prof->attention_batch(it, 1);
    }
  }
  profile_set_enabled(false);
  profile_add(true, "sample", "", 1e-6);  // off: not recorded
  const std::string j = profile_json();
  auto count = [&](const std::string& needle) {
    size_t c = 0;
    for (size_t at = j.find(needle); at != std::string::npos; at = j.find(needle, at + 1)) ++c;
    return c;
  };
  EXPECT(count("\"key\":\"q4_0 N=256 K=512\"") == 1);
  EXPECT(count("\"key\":\"q4_0 N=256 K=512 repacked\"") == (vnni ? 1u : 0u));
  EXPECT(count("\"phase\":\"other\",\"op\":\"gemm\"") == (vnni ? 2u : 1u));  // M = 1, but outside any step
  EXPECT(count("\"op\":\"handoff\",\"key\":\"gemm\"") == 1);
  EXPECT(count("\"op\":\"dispatch\",\"key\":\"gemm\"") == 1);  // the pool jobs of those gemm calls, one row
  EXPECT(j.find("\"phase\":\"decode\",\"op\":\"sample\",\"key\":\"\",\"calls\":1,") != std::string::npos);
  EXPECT(j.find("{\"decode_steps\":2,\"decode_tokens\":4,") == 0);
  EXPECT(count("\"phase\":\"other\",\"op\":\"attention_batch\",\"key\":\"2 x heads=2/2") == 1);
  EXPECT(count("\"phase\":\"decode\",\"op\":\"attention_batch\",\"key\":\"2 x heads=2/2") == 1);
  EXPECT(count("\"phase\":\"decode\",\"op\":\"attention_batch\",\"key\":\"1 x heads=2/2") == 1);
  EXPECT(count("\"phase\":\"prefill\",\"op\":\"attention_batch\",\"key\":\"1 x heads=2/2") == 1);
  // each attention row's bytes: the K and V rows its calls read, 2 x n_kv x kv heads x head_dim x 4
  // (f32) an item: the decode row of two 2-item calls 4 items, the 1-item rows one; gemm rows none
  auto row_bytes = [&](const std::string& head) {
    const size_t at = j.find(head);
    if (at == std::string::npos) return -1.0;
    return std::atof(j.c_str() + j.find("\"bytes\":", at) + 8);
  };
  const double item_bytes = 2.0 * 8 * 2 * 16 * 4;
  EXPECT(row_bytes("\"phase\":\"other\",\"op\":\"attention_batch\",\"key\":\"2 x") == 2 * item_bytes);
  EXPECT(row_bytes("\"phase\":\"decode\",\"op\":\"attention_batch\",\"key\":\"2 x") == 2 * item_bytes);
  EXPECT(row_bytes("\"phase\":\"decode\",\"op\":\"attention_batch\",\"key\":\"1 x") == item_bytes);
  EXPECT(row_bytes("\"key\":\"q4_0 N=256 K=512\"") == 0.0);
  // without EMOLLM_PROFILE_CPU the op rows carry no CPU time
  const size_t g0 = j.find("\"key\":\"q4_0 N=256 K=512\"");
  if (g0 != std::string::npos) EXPECT(std::atof(j.c_str() + j.find("\"cpu_ms\":", g0) + 9) == 0.0);
  EXPECT(j.find("\"phase\":\"decode\",\"op\":\"forward\",\"key\":\"between ops\",\"calls\":2,") != std::string::npos);
  EXPECT(j.find("\"phase\":\"prefill\",\"op\":\"forward\",\"key\":\"between ops\",\"calls\":1,") != std::string::npos);
  // one loop between the two decode steps (none before the first, none after the prefill step),
  // its 0.5 s of sampling taken out: far below 0.5 s
  const size_t loop = j.find("\"phase\":\"decode\",\"op\":\"loop\",\"key\":\"between steps\",\"calls\":1,\"total_ms\":");
  EXPECT(loop != std::string::npos);
  if (loop != std::string::npos) EXPECT(std::atof(j.c_str() + j.find("total_ms", loop) + 10) < 100.0);
  profile_reset();
  profile_set_enabled(was);
}

// EMOLLM_PROFILE_CPU / profile_set_cpu_per_op: each op row also gets the calling thread's CPU time
// (one thread: the whole op ran there), > 0 for a gemm that computes for milliseconds and at most
// its wall time (plus the clocks' granularity).
TEST(profiling_backend_cpu_per_op) {
  const bool was = profile_enabled();
  profile_set_enabled(true);
  profile_set_cpu_per_op(true);
  profile_reset();
  auto prof = make_profiling_backend(std::shared_ptr<Backend>(make_cpu_backend(std::make_shared<ThreadPool>(1))));
  const int64_t M = 64, N = 256, K = 512;
  const std::vector<float> w = randv(size_t(N * K), 7310), x = randv(size_t(M * K), 7311);
  std::vector<float> y(size_t(M * N));
  for (int r = 0; r < 20; ++r) prof->gemm(x.data(), K, w.data(), DType::F32, nullptr, y.data(), N, M, N, K);
  profile_set_cpu_per_op(false);
  const std::string j = profile_json();
  const size_t at = j.find("\"key\":\"f32 N=256 K=512\"");
  EXPECT(at != std::string::npos);
  if (at != std::string::npos) {
    const double total = std::atof(j.c_str() + j.find("\"total_ms\":", at) + 11);
    const double cpu = std::atof(j.c_str() + j.find("\"cpu_ms\":", at) + 9);
    EXPECT(cpu > 0.0);
    EXPECT(cpu <= total + 1.0);
  }
  profile_reset();
  profile_set_enabled(was);
}

// Every row's per-call quantiles (p10_us, median_us: a log histogram, bins 2^(1/16) wide) and the
// decode steps' (decode_step_p10_us, decode_step_median_us): what a profile taken beside other work
// is read by, where a few preempted calls pull the mean far from the typical call. Ten calls of
// 1 / 2 / 200 ms (2 / 6 / 2 of them: mean 41.4 ms) give p10 ~1 ms and median ~2 ms, each within
// half a bin; decode steps that sleep >= 2 ms have a median of at least that.
TEST(profiling_backend_call_quantiles) {
  const bool was = profile_enabled();
  profile_set_enabled(true);
  profile_reset();
  const double secs[10] = {2e-3, 0.2, 1e-3, 2e-3, 2e-3, 1e-3, 0.2, 2e-3, 2e-3, 2e-3};
  for (double s : secs) profile_add(true, "sample", "quantiles", s);
  for (int i = 0; i < 3; ++i) {
    const ProfileStep step(true, 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  profile_set_enabled(false);
  const std::string j = profile_json();
  auto number_after = [&](const std::string& needle, size_t from) {
    const size_t at = j.find(needle, from);
    return at == std::string::npos ? -1.0 : std::atof(j.c_str() + at + needle.size());
  };
  const size_t row = j.find("\"key\":\"quantiles\"");
  EXPECT(row != std::string::npos);
  if (row != std::string::npos) {
    const double mean = number_after("\"mean_us\":", row), p10 = number_after("\"p10_us\":", row),
                 med = number_after("\"median_us\":", row);
    EXPECT(std::fabs(mean - 41400.0) < 1.0);
    EXPECT(std::fabs(p10 / 1000.0 - 1.0) < 0.025);
    EXPECT(std::fabs(med / 2000.0 - 1.0) < 0.025);
  }
  const double step_p10 = number_after("\"decode_step_p10_us\":", 0), step_med = number_after("\"decode_step_median_us\":", 0);
  EXPECT(step_med >= 2000.0 * 0.98);
  EXPECT(step_p10 > 0.0 && step_p10 <= step_med);
  profile_reset();
  profile_set_enabled(was);
}

// profile_set_attn_replay (EMOLLM_PROFILE_ATTN_REPLAY): a decode step's attention_batch call runs
// twice more, rows "attention_batch replay-warm", "attention_batch evict" (keyed by the MiB read)
// and "attention_batch replay-cold", one call each a call of the step, with the step's outputs
// bit for bit what the backend alone gives; calls outside a decode step (none, prefill) and calls
// after the switch is set to 0 are not replayed.
TEST(profiling_backend_attention_replays) {
  const bool was = profile_enabled();
  profile_set_enabled(true);
  profile_reset();
  profile_set_attn_replay(1);
  auto pool = std::make_shared<ThreadPool>(2);
  std::shared_ptr<Backend> inner(make_cpu_backend(pool));
  auto prof = make_profiling_backend(inner);
  const int64_t H = 4, D = 32, T = 40;
  const std::vector<float> q = randv(size_t(H * D), 7320), k = randv(size_t(T * H * D), 7321), v = randv(size_t(T * H * D), 7322);
  std::vector<float> o(size_t(H * D)), ref(size_t(H * D));
  AttentionBatchItem it;
  it.q = q.data(), it.k = k.data(), it.v = v.data(), it.out = ref.data();
  it.p.n_q = 1, it.p.n_kv = T, it.p.n_heads = it.p.n_kv_heads = H, it.p.head_dim = D;
  it.p.ldq = it.p.ldk = it.p.ldv = it.p.ldo = H * D;
  it.p.q_pos0 = T - 1;
  inner->attention_batch(&it, 1);
  it.out = o.data();
  {
    const ProfileStep step(true, 1);
    prof->attention_batch(&it, 1);
  }
  EXPECT(o == ref);
  prof->attention_batch(&it, 1);  // outside a step
  {
    const ProfileStep step(false, 1);
    prof->attention_batch(&it, 1);
  }
  profile_set_attn_replay(0);
  {
    const ProfileStep step(true, 1);
    prof->attention_batch(&it, 1);
  }
  EXPECT(o == ref);
  profile_set_enabled(false);
  const std::string j = profile_json();
  const std::string key = "\"key\":\"1 x heads=4/4 d=32 kv<=256\",";
  EXPECT(j.find("\"phase\":\"decode\",\"op\":\"attention_batch\"," + key + "\"calls\":2,") != std::string::npos);
  EXPECT(j.find("\"phase\":\"decode\",\"op\":\"attention_batch replay-warm\"," + key + "\"calls\":1,") != std::string::npos);
  EXPECT(j.find("\"phase\":\"decode\",\"op\":\"attention_batch replay-cold\"," + key + "\"calls\":1,") != std::string::npos);
  EXPECT(j.find("\"phase\":\"decode\",\"op\":\"attention_batch evict\",\"key\":\"1 MiB\",\"calls\":1,") != std::string::npos);
  size_t replays = 0;
  const std::string op = "\"op\":\"attention_batch replay-";  // (the hand-off / dispatch rows are keyed by it)
  for (size_t at = j.find(op); at != std::string::npos; at = j.find(op, at + 1)) ++replays;
  EXPECT(replays == 2);  // the two decode rows only: none in "other" or "prefill"
  profile_reset();
  profile_set_enabled(was);
}

// F32 decoder matrices get the 2 MiB-page copy when set_f32_huge_copies is on (the default):
// then gemm() at M = 1 and 3 and the fused multi-output GEMV read the copy (other memory, the same
// bytes) with the same kernels, so every output has the bits of plain gemm() on the file's bytes;
// under 256 KiB, with the switch off or with repacking off, no copy.
TEST(cpu_backend_copies_f32_weights_to_huge_pages_by_default) {
  EXPECT(std::getenv("EMOLLM_F32_HUGE_COPIES") != nullptr || f32_huge_copies());  // on unless the env says 0
  auto be = make_cpu_backend(std::make_shared<ThreadPool>(2));
  const bool repack_was = weight_repacking(), f32_was = f32_huge_copies();
  set_weight_repacking(true);
  const int64_t N = 520, K = 1024;  // 2.03 MiB of f32 weights
  const std::vector<float> w = randv(size_t(N * K), 7400);
  set_f32_huge_copies(false);
  EXPECT(be->pack_gemm_weight(w.data(), DType::F32, N, K) == nullptr);  // off: no copy
  set_f32_huge_copies(true);
  for (int64_t M : {1, 3}) {
    const std::vector<float> X = randv(size_t(M * K), 7401 + uint32_t(M)), bias = randv(size_t(N), 7405);
    std::vector<float> want(size_t(M * N)), got(size_t(M * N), -1.f);
    ThreadPool pool(2);
    gemm(X.data(), K, w.data(), DType::F32, bias.data(), want.data(), N, M, N, K, &pool);
    const size_t before = packed_gemm_weight_bytes();
    auto h = be->pack_gemm_weight(w.data(), DType::F32, N, K);
    EXPECT(h != nullptr);
    if (!h) continue;
    EXPECT(h->bytes() == w.size() * sizeof(float));
    EXPECT(packed_gemm_weight_bytes() == before + w.size() * sizeof(float));
    const void* view = be->gemm_weight_bytes(w.data(), DType::F32, N, K);
    EXPECT(view != static_cast<const void*>(w.data()) && std::memcmp(view, w.data(), w.size() * sizeof(float)) == 0);
    be->gemm(X.data(), K, w.data(), DType::F32, bias.data(), got.data(), N, M, N, K);
    EXPECT(got == want);
    if (M == 1) {  // q / k / v style: the same W twice through the fused dispatch
      std::vector<float> y0(size_t(N), -1.f), y1(size_t(N), -1.f);
      const Backend::GemmOutput outs[2] = {{w.data(), DType::F32, bias.data(), y0.data(), N, N},
                                           {w.data(), DType::F32, nullptr, y1.data(), N, N}};
      be->gemm_multi(X.data(), K, outs, 2, 1, K);
      std::vector<float> want1(static_cast<size_t>(N), 0.f);
      gemm(X.data(), K, w.data(), DType::F32, nullptr, want1.data(), N, 1, N, K, &pool);
      EXPECT(y0 == want);
      EXPECT(y1 == want1);
    }
  }
  EXPECT(packed_gemm_weight_bytes() == 0);
  EXPECT(be->pack_gemm_weight(w.data(), DType::F32, 63, K) == nullptr);  // 252 KiB: no copy
  set_weight_repacking(false);
  EXPECT(be->pack_gemm_weight(w.data(), DType::F32, N, K) == nullptr);
  set_weight_repacking(repack_was);
  set_f32_huge_copies(f32_was);
}

// set_packed_whole_huge_pages (A/B only, off by default): a packed copy of 256 KiB or more is
// placed in whole 2 MiB pages (2 MiB-aligned, its size rounded up): the same bytes, the same
// accounting of them, the same outputs.
TEST(cpu_backend_packed_whole_huge_pages_places_copies_on_2m_boundaries) {
  auto be = make_cpu_backend(std::make_shared<ThreadPool>(2));
  const bool repack_was = weight_repacking(), f32_was = f32_huge_copies();
  set_weight_repacking(true);
  set_f32_huge_copies(true);
  const int64_t N = 256, K = 1024;  // 1 MiB of f32: by default a copy in 4 KiB pages
  const std::vector<float> w = randv(size_t(N * K), 7420), X = randv(size_t(K), 7421);
  std::vector<float> want(static_cast<size_t>(N)), got(static_cast<size_t>(N), -1.f);
  ThreadPool pool(2);
  gemm(X.data(), K, w.data(), DType::F32, nullptr, want.data(), N, 1, N, K, &pool);
  set_packed_whole_huge_pages(true);
  {
    auto h = be->pack_gemm_weight(w.data(), DType::F32, N, K);
    EXPECT(h != nullptr);
    if (h) {
      EXPECT(h->bytes() == w.size() * sizeof(float));
      EXPECT(packed_gemm_weight_bytes() == w.size() * sizeof(float));
      const void* view = be->gemm_weight_bytes(w.data(), DType::F32, N, K);
      EXPECT(view != static_cast<const void*>(w.data()) && reinterpret_cast<uintptr_t>(view) % (size_t(2) << 20) == 0);
      EXPECT(std::memcmp(view, w.data(), w.size() * sizeof(float)) == 0);
      be->gemm(X.data(), K, w.data(), DType::F32, nullptr, got.data(), N, 1, N, K);
      EXPECT(got == want);
    }
  }
  set_packed_whole_huge_pages(false);
  EXPECT(packed_gemm_weight_bytes() == 0);
  set_weight_repacking(repack_was);
  set_f32_huge_copies(f32_was);
}

// set_packed_arena: packed copies back to back in chunks of 2 MiB pages. The placement's flags for
// a scope, then the previous ones.
namespace {
struct ArenaScope {
  bool repack, f32, arena;
  explicit ArenaScope(bool on) : repack(weight_repacking()), f32(f32_huge_copies()), arena(packed_arena()) {
    set_weight_repacking(true);
    set_f32_huge_copies(true);
    set_packed_whole_huge_pages(false);
    set_packed_arena(on);
  }
  ~ArenaScope() {
    set_packed_arena(arena);
    set_f32_huge_copies(f32);
    set_weight_repacking(repack);
  }
};
size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }
}  // namespace

// Copies in the arena: each at a 4 KiB boundary, the next right after the previous one's bytes
// rounded up to 4 KiB (one chunk for them all), the same bytes as the matrix, the same outputs as
// gemm() on the original bytes (f32 and bf16 copies, 256 KiB to 3 MiB + 4 KiB, M = 1 and 3), the
// same accounting; the chunk freed (count and bytes back) when the last copy goes.
TEST(cpu_backend_packed_arena_copies_back_to_back_same_bytes_and_outputs) {
  auto be = make_cpu_backend(std::make_shared<ThreadPool>(2));
  const ArenaScope scope(true);
  const size_t chunks0 = packed_arena_chunks(), chunk_bytes0 = packed_arena_chunk_bytes(), packed0 = packed_gemm_weight_bytes();
  const int64_t K = 1024;
  const int64_t Ns[] = {64, 257, 768, 129};  // f32 256 KiB, f32 1 MiB + 4 KiB, bf16 1.5 MiB, bf16 258 KiB
  const DType ts[] = {DType::F32, DType::F32, DType::BF16, DType::BF16};
  std::vector<std::vector<uint8_t>> w(4);
  std::vector<std::unique_ptr<PackedGemmWeight>> h;
  const uint8_t* prev_end = nullptr;
  size_t total = 0;
  for (int j = 0; j < 4; ++j) {
    const std::vector<float> f = randv(size_t(Ns[j] * K), 7500 + uint32_t(j));
    if (ts[j] == DType::F32) {
      w[size_t(j)].resize(f.size() * 4);
      std::memcpy(w[size_t(j)].data(), f.data(), w[size_t(j)].size());
    } else {
      w[size_t(j)].resize(f.size() * 2);
      for (size_t i = 0; i < f.size(); ++i) {
        const uint16_t b = f32_to_bf16(f[i]);
        std::memcpy(w[size_t(j)].data() + 2 * i, &b, 2);
      }
    }
    h.push_back(be->pack_gemm_weight(w[size_t(j)].data(), ts[j], Ns[j], K));
    EXPECT(h.back() != nullptr);
    if (!h.back()) return;
    EXPECT(h.back()->bytes() == w[size_t(j)].size());
    total += w[size_t(j)].size();
    EXPECT(packed_gemm_weight_bytes() == packed0 + total);
    const uint8_t* view = static_cast<const uint8_t*>(be->gemm_weight_bytes(w[size_t(j)].data(), ts[j], Ns[j], K));
    EXPECT(view != w[size_t(j)].data());
    EXPECT(reinterpret_cast<uintptr_t>(view) % 4096 == 0);
    if (prev_end) EXPECT(view == prev_end);
    prev_end = view + round_up(w[size_t(j)].size(), 4096);
    EXPECT(std::memcmp(view, w[size_t(j)].data(), w[size_t(j)].size()) == 0);
  }
  EXPECT(packed_arena_chunks() == chunks0 + 1);
  EXPECT(packed_arena_chunk_bytes() == chunk_bytes0 + (size_t(64) << 20));
  // the outputs of today's placement (each copy its own memory; another backend: its own table)
  // and of the f32 / bf16 kernels on the file's bytes (the same for f32)
  for (int j = 0; j < 4; ++j)
    for (int64_t M : {1, 3}) {
      const std::vector<float> X = randv(size_t(M * K), 7510 + uint32_t(j));
      std::vector<float> want(size_t(M * Ns[j]), -2.f), got(size_t(M * Ns[j]), -1.f);
      {
        set_packed_arena(false);
        auto ref = make_cpu_backend(std::make_shared<ThreadPool>(2));
        std::vector<uint8_t> wcopy = w[size_t(j)];  // another W: a copy of its own
        auto hr = ref->pack_gemm_weight(wcopy.data(), ts[j], Ns[j], K);
        set_packed_arena(true);
        EXPECT(hr != nullptr);
        EXPECT(packed_arena_chunks() == chunks0 + 1);
        ref->gemm(X.data(), K, wcopy.data(), ts[j], nullptr, want.data(), Ns[j], M, Ns[j], K);
      }
      be->gemm(X.data(), K, w[size_t(j)].data(), ts[j], nullptr, got.data(), Ns[j], M, Ns[j], K);
      EXPECT(got == want);
      if (ts[j] == DType::F32) {
        ThreadPool pool(2);
        gemm(X.data(), K, w[size_t(j)].data(), ts[j], nullptr, want.data(), Ns[j], M, Ns[j], K, &pool);
        EXPECT(got == want);
      }
    }
  h.clear();
  EXPECT(packed_gemm_weight_bytes() == packed0);
  EXPECT(packed_arena_chunks() == chunks0);
  EXPECT(packed_arena_chunk_bytes() == chunk_bytes0);
}

// The arena's lifetime: two "models" (two backends, as two loads) whose copies share a chunk; the
// first closed, the second's copies stay valid (bytes and outputs) and the chunk lives; a copy
// shared by two loads of one W (one mapping) is one copy (one address, counted once) that lives
// until its last handle goes; the chunk is freed with the last copy. A copy larger than a chunk gets
// a chunk of its own, its size rounded up to 2 MiB. With the arena off (today's placement), no chunk.
TEST(cpu_backend_packed_arena_lifetime_shared_copies_two_models) {
  const ArenaScope scope(true);
  const size_t chunks0 = packed_arena_chunks(), chunk_bytes0 = packed_arena_chunk_bytes();
  auto a = make_cpu_backend(std::make_shared<ThreadPool>(2));
  auto b = make_cpu_backend(std::make_shared<ThreadPool>(2));
  const int64_t N = 96, K = 1024;  // f32, 384 KiB
  const std::vector<float> wa = randv(size_t(N * K), 7600), wb = randv(size_t(N * K), 7601), X = randv(size_t(K), 7602);
  ThreadPool pool(2);
  std::vector<float> want_b(static_cast<size_t>(N)), got(static_cast<size_t>(N), -1.f);
  gemm(X.data(), K, wb.data(), DType::F32, nullptr, want_b.data(), N, 1, N, K, &pool);
  auto ha = a->pack_gemm_weight(wa.data(), DType::F32, N, K);
  auto hb = b->pack_gemm_weight(wb.data(), DType::F32, N, K);
  EXPECT(ha && hb);
  if (!ha || !hb) return;
  EXPECT(packed_arena_chunks() == chunks0 + 1);  // one chunk for both
  const void* vb = b->gemm_weight_bytes(wb.data(), DType::F32, N, K);
  ha.reset();  // the first model closed
  EXPECT(packed_arena_chunks() == chunks0 + 1);
  EXPECT(b->gemm_weight_bytes(wb.data(), DType::F32, N, K) == vb && std::memcmp(vb, wb.data(), wb.size() * 4) == 0);
  b->gemm(X.data(), K, wb.data(), DType::F32, nullptr, got.data(), N, 1, N, K);
  EXPECT(got == want_b);
  {  // the same W loaded again on b: shared, one address, counted once
    const size_t packed1 = packed_gemm_weight_bytes();
    auto hb2 = b->pack_gemm_weight(wb.data(), DType::F32, N, K);
    EXPECT(hb2 != nullptr);
    EXPECT(packed_gemm_weight_bytes() == packed1);
    EXPECT(b->gemm_weight_bytes(wb.data(), DType::F32, N, K) == vb);
    hb.reset();  // the first load of it closed: the second's copy stays
    EXPECT(packed_arena_chunks() == chunks0 + 1);
    EXPECT(std::memcmp(b->gemm_weight_bytes(wb.data(), DType::F32, N, K), wb.data(), wb.size() * 4) == 0);
    std::fill(got.begin(), got.end(), -1.f);
    b->gemm(X.data(), K, wb.data(), DType::F32, nullptr, got.data(), N, 1, N, K);
    EXPECT(got == want_b);
  }
  EXPECT(packed_arena_chunks() == chunks0);  // the last copy gone, the chunk with it
  EXPECT(packed_arena_chunk_bytes() == chunk_bytes0);
  EXPECT(b->gemm_weight_bytes(wb.data(), DType::F32, N, K) == static_cast<const void*>(wb.data()));
  {  // larger than a chunk: a chunk of its own, 2 MiB pages
    const int64_t Nl = 8448, Kl = 4096;  // bf16, 66 MiB
    std::vector<uint16_t> wl(size_t(Nl * Kl));
    for (size_t i = 0; i < wl.size(); ++i) wl[i] = uint16_t(0x3c00 + (i * 2654435761u >> 20) % 512);
    auto hl = a->pack_gemm_weight(wl.data(), DType::BF16, Nl, Kl);
    EXPECT(hl != nullptr);
    EXPECT(packed_arena_chunks() == chunks0 + 1);
    EXPECT(packed_arena_chunk_bytes() == chunk_bytes0 + round_up(wl.size() * 2, size_t(2) << 20));
    const void* vl = a->gemm_weight_bytes(wl.data(), DType::BF16, Nl, Kl);
    EXPECT(reinterpret_cast<uintptr_t>(vl) % (size_t(2) << 20) == 0 && std::memcmp(vl, wl.data(), wl.size() * 2) == 0);
  }
  EXPECT(packed_arena_chunks() == chunks0);
  {  // the arena off: each copy its own memory, no chunk
    set_packed_arena(false);
    auto h = a->pack_gemm_weight(wa.data(), DType::F32, N, K);
    EXPECT(h != nullptr);
    EXPECT(packed_arena_chunks() == chunks0);
    set_packed_arena(true);
  }
}

// A bf16 decoder's prefill q / k / v through the CPU backend's gemm_multi on their 2 MiB-page
// copies (set_bf16_prefill_fuse, default on: one gemm_bf16_rows_multi) gives each output what
// be->gemm() gives it, bit for bit, and the same as with the switch off (one gemm() each); at
// M = 1 (the fused GEMV) and M = 100 / 512 (the fused GEMM, N = 520 / 256 / 256, one output
// without a bias).
TEST(cpu_backend_bf16_prefill_fuse_same_bits) {
  auto be = make_cpu_backend(std::make_shared<ThreadPool>(2));
  const bool repack_was = weight_repacking();
  set_weight_repacking(true);
  const int64_t K = 2048;
  const int64_t Ns[3] = {520, 256, 256};
  uint32_t seed = 9100;
  std::vector<std::vector<uint8_t>> w(3);
  std::vector<std::vector<float>> bias(3);
  for (int j = 0; j < 3; ++j) {
    w[size_t(j)].resize(size_t(Ns[j]) * dtype_row_bytes(DType::BF16, K));
    const std::vector<float> src = randv(size_t(Ns[j] * K), seed++);
    for (int64_t n = 0; n < Ns[j]; ++n)
      quantize_row(DType::BF16, src.data() + n * K, w[size_t(j)].data() + size_t(n) * dtype_row_bytes(DType::BF16, K), K);
    bias[size_t(j)] = randv(size_t(Ns[j]), seed++);
  }
  std::vector<decltype(be->pack_gemm_weight(nullptr, DType::BF16, 1, 1))> handles;
  for (int j = 0; j < 3; ++j) handles.push_back(be->pack_gemm_weight(w[size_t(j)].data(), DType::BF16, Ns[j], K));
  for (auto& h : handles) EXPECT(h != nullptr);
  for (int64_t M : {1, 100, 512}) {
    const std::vector<float> X = randv(size_t(M * K), seed++);
    std::vector<float> want[3], got[2][3];
    for (int j = 0; j < 3; ++j) {
      const float* b = j == 1 ? nullptr : bias[size_t(j)].data();
      want[j].assign(size_t(M * Ns[j]), -7.0f);
      be->gemm(X.data(), K, w[size_t(j)].data(), DType::BF16, b, want[j].data(), Ns[j], M, Ns[j], K);
    }
    for (int on = 0; on < 2; ++on) {
      set_bf16_prefill_fuse(on == 1);
      Backend::GemmOutput outs[3];
      for (int j = 0; j < 3; ++j) {
        got[on][j].assign(size_t(M * Ns[j]), -7.0f);
        outs[j] = Backend::GemmOutput{w[size_t(j)].data(), DType::BF16, j == 1 ? nullptr : bias[size_t(j)].data(),
                                      got[on][j].data(), Ns[j], Ns[j]};
      }
      be->gemm_multi(X.data(), K, outs, 3, M, K);
      for (int j = 0; j < 3; ++j) EXPECT(got[on][j] == want[j]);
    }
  }
  set_bf16_prefill_fuse(true);
  EXPECT(bf16_prefill_fuse());
  handles.clear();
  set_weight_repacking(repack_was);
}
