// The CudaBackend (native/core/cuda_backend.h) through the Backend interface, op by op, against
// the CPU on odd shapes; plus the device-free errors, which run on any machine of a CUDA build.
//
// Tolerances (|got - want| <= atol + rtol |want|):
//   gemm, GEMV path (M <= 8), any weight dtype: f32 products against a double reference over the
//     dequantised weights: atol 2e-4, rtol 2e-4.
//   gemm, tensor-core path (M > 8, f16/bf16/q8_0/q4_0 weights): the reference rounds X and the
//     dequantised weights to the operand type first (bf16 for BF16 weights, f16 otherwise), as the
//     kernel's contract says, then sums in double; what is left is f32 accumulation: 2e-4, 2e-4.
//   f32 weights (SIMT path): against double, 1e-4 sqrt(K) + 1e-4 rel.
//   norms, softmax, activations, adds, RoPE: against the CPU kernels, 1e-5 + 1e-5 rel (f32
//     block reductions vs the CPU's double sums).
//   embedding: exact (the same f32 conversion of each element).
//   attention: against the CPU kernel, 2e-4 + 2e-4 rel.
//   mvp_projection: f32 / bf16 weights (fused kernel) 2e-4 + 2e-4 rel against the CPU fused kernel;
//     q8_0 weights (composed, tensor cores, f16 operands) 2e-2 + 2e-2 rel against the CPU with the
//     dequantised weights in f32 (the f16 rounding of the hidden activations is the difference).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../../../base/dtype.h"
#include "../../../base/error.h"
#include "../../../base/thread_pool.h"
#include "../../../kernels/cpu/kernels.h"
#include "../../../kernels/cuda/cuda_kernels.h"
#include "../../../native/core/backend.h"
#include "../../../native/core/cuda_backend.h"
#include "../../../native/core/runtime.h"
#include "../testing.h"
#include "cuda_test_buffers.h"
#include "gpu_test.h"

using namespace emollm;
using emollm_test::cuda_buffers::CuRng;

namespace {

// this file's sequences: CuRng with salt 7
struct Rng : CuRng {
  explicit Rng(uint64_t seed) : CuRng(seed, 7) {}
};
std::vector<float> rnd(size_t n, Rng& r, float lo = -1.f, float hi = 1.f) {
  std::vector<float> v(n);
  for (auto& x : v) x = r.uniform(lo, hi);
  return v;
}

Backend& gpu() {
  static std::unique_ptr<Backend> b = make_cuda_backend(0);
  return *b;
}
Backend& cpu() {
  static std::unique_ptr<Backend> b = make_cpu_backend(std::make_shared<ThreadPool>(1));
  return *b;
}

// Device memory of the GPU backend holding a copy of a host vector.
struct Dev {
  void* p = nullptr;
  size_t n = 0;
  explicit Dev(size_t bytes) : n(bytes) { p = bytes ? gpu().alloc(bytes) : nullptr; }
  template <typename T>
  explicit Dev(const std::vector<T>& h) : Dev(h.size() * sizeof(T)) {
    if (n) gpu().upload(p, h.data(), n);
  }
  ~Dev() { if (p) gpu().free(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  float* f() const { return static_cast<float*>(p); }
  template <typename T = float>
  std::vector<T> get() const {
    std::vector<T> h(n / sizeof(T));
    if (n) gpu().download(h.data(), p, n);
    return h;
  }
};

uint16_t f16_round_bits(float x) {
  if (x == x) x = std::fmin(std::fmax(x, -65504.0f), 65504.0f);
  return f32_to_f16(x);
}
float op_round(float x, bool bf16) { return bf16 ? bf16_to_f32(f32_to_bf16(x)) : f16_to_f32(f16_round_bits(x)); }

// ------------------------------------------------------------------ gemm
void run_gemm(DType wt, int64_t M, int64_t N, int64_t K, bool bias, int64_t pad) {
  Rng r(uint64_t(M * 131 + N * 7 + K + int(wt)));
  const int64_t ldx = K + pad, ldy = N + 2 * pad;
  std::vector<float> x = rnd(size_t(M * ldx), r), w = rnd(size_t(N * K), r), b = rnd(size_t(N), r);
  const size_t row_bytes = dtype_row_bytes(wt, K);
  std::vector<uint8_t> wq(size_t(N) * row_bytes);
  for (int64_t n = 0; n < N; ++n) quantize_row(wt, w.data() + n * K, wq.data() + size_t(n) * row_bytes, K);
  std::vector<float> wd(size_t(N * K));  // what the stored weights are
  for (int64_t n = 0; n < N; ++n) dequantize_row(wt, wq.data() + size_t(n) * row_bytes, wd.data() + n * K, K);

  const bool tc = M > cuda::kGemvMaxRows && wt != DType::F32;
  const bool bf = wt == DType::BF16;
  std::vector<float> want(size_t(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double a = bias ? b[size_t(n)] : 0.0;
      for (int64_t k = 0; k < K; ++k) {
        float xv = x[size_t(m * ldx + k)], wv = wd[size_t(n * K + k)];
        if (tc) { xv = op_round(xv, bf); wv = op_round(wv, bf); }
        a += double(xv) * double(wv);
      }
      want[size_t(m * N + n)] = float(a);
    }
  Dev dx(x), dw(wq), db(b);
  std::vector<float> init(size_t(M * ldy), -555.0f);
  Dev dy(init);
  gpu().gemm(dx.f(), ldx, dw.p, wt, bias ? db.f() : nullptr, dy.f(), ldy, M, N, K);
  std::vector<float> got = dy.get(), g2;
  bool pad_ok = true;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) g2.push_back(got[size_t(m * ldy + n)]);
    for (int64_t n = N; n < ldy && m + 1 < M; ++n) pad_ok = pad_ok && got[size_t(m * ldy + n)] == -555.0f;
  }
  const double atol = wt == DType::F32 ? 1e-4 * std::sqrt(double(K)) : 2e-4;
  const std::string what = std::string("gemm ") + dtype_name(wt) + " M=" + std::to_string(M) + " N=" +
                           std::to_string(N) + " K=" + std::to_string(K) + (tc ? " (tensor cores)" : "");
  EXPECT_ALL_CLOSE(g2.data(), want.data(), want.size(), atol, 2e-4, what);
  if (!pad_ok) emollm_test::report_failure(__FILE__, __LINE__, what + ": wrote into the row padding");
}

}  // namespace

TEST(cuda_backend_errors_without_device) {
  // parse_device: the names every entry point accepts.
  EXPECT(parse_device("cuda:3").kind == DeviceKind::Cuda && parse_device("cuda:3").index == 3);
  EXPECT(parse_device("cuda").index == 0 && parse_device("cpu").kind == DeviceKind::Cpu);
  EXPECT_THROWS(parse_device("cuda:"), ErrorCode::InvalidArgument);
  EXPECT_THROWS(parse_device("cuda:01"), ErrorCode::InvalidArgument);
  EXPECT_THROWS(parse_device("cuda:x"), ErrorCode::InvalidArgument);
  EXPECT_THROWS(parse_device("cuda:256"), ErrorCode::InvalidArgument);
  EXPECT(cuda_built());
  if (!emollm_test::gpu_unavailable_reason().empty()) {
    // No driver or no device: a typed Unsupported that says which, from every way in.
    bool thrown = false;
    try {
      require_device(DeviceKind::Cuda);
    } catch (const Error& e) {
      thrown = true;
      EXPECT(e.code() == ErrorCode::Unsupported);
      const std::string m = e.what();
      EXPECT(m.find("driver") != std::string::npos || m.find("no CUDA device") != std::string::npos);
      std::printf("  no device here, as expected: %s\n", m.c_str());
    }
    EXPECT(thrown);
    EXPECT_THROWS(make_cuda_backend(0), ErrorCode::Unsupported);
    RuntimeOptions o;
    o.device = DeviceKind::Cuda;
    o.device_set = true;
    EXPECT_THROWS(Runtime::instance().backend(o), ErrorCode::Unsupported);
    return;
  }
  EXPECT_THROWS(make_cuda_backend(4096), ErrorCode::InvalidArgument);
  EXPECT_THROWS(require_device(DeviceKind::Cuda, 4096), ErrorCode::InvalidArgument);
}

TEST(cuda_backend_runtime_shares_one_backend_per_device) {
  SKIP_WITHOUT_GPU();
  RuntimeOptions o;
  o.device = DeviceKind::Cuda;
  o.device_set = true;
  o.threads = 2;
  auto a = Runtime::instance().backend(o);
  o.threads = 3;
  auto b = Runtime::instance().backend(o);
  EXPECT(a == b);
  EXPECT(a->device() == DeviceKind::Cuda);
  EXPECT(!a->uses_host_memory());
  EXPECT(a->describe().rfind("cuda:0 (", 0) == 0);
  std::printf("  %s\n", a->describe().c_str());
}

TEST(cuda_backend_memory) {
  SKIP_WITHOUT_GPU();
  std::vector<float> h(1000);
  for (size_t i = 0; i < h.size(); ++i) h[i] = float(i) * 0.5f;
  Dev a(h);
  EXPECT(a.get() == h);
  Dev b(h.size() * 4);
  gpu().copy(b.p, a.p, h.size() * 4);
  EXPECT(b.get() == h);
  // A freed block is cached and handed out again for the same size.
  void* p = gpu().alloc(12345);
  gpu().free(p);
  cudaDeviceSynchronize();
  void* q = gpu().alloc(12345);
  EXPECT(p == q);
  gpu().free(q);
  // Out of memory is typed and names the needed and the free bytes.
  bool thrown = false;
  try {
    gpu().alloc(size_t(1) << 52);
  } catch (const Error& e) {
    thrown = true;
    EXPECT(e.code() == ErrorCode::OutOfMemory);
    const std::string m = e.what();
    EXPECT(m.find("needed") != std::string::npos && m.find("free") != std::string::npos);
    std::printf("  %s\n", m.c_str());
  }
  EXPECT(thrown);
  // and the device still works afterwards
  EXPECT(a.get() == h);
}

TEST(cuda_backend_gemm_every_dtype) {
  SKIP_WITHOUT_GPU();
  for (DType wt : {DType::F32, DType::F16, DType::BF16}) {
    run_gemm(wt, 1, 67, 45, true, 0);
    run_gemm(wt, 3, 131, 45, false, 3);
    run_gemm(wt, 8, 67, 256, true, 0);
    run_gemm(wt, 9, 67, 45, true, 1);
    run_gemm(wt, 77, 131, 45, true, 3);
    run_gemm(wt, 130, 200, 264, false, 0);
  }
  for (DType wt : {DType::Q8_0, DType::Q4_0}) {
    run_gemm(wt, 1, 67, 64, true, 0);
    run_gemm(wt, 5, 131, 96, false, 2);
    run_gemm(wt, 8, 33, 512, true, 0);
    run_gemm(wt, 9, 67, 96, true, 1);
    run_gemm(wt, 77, 131, 160, true, 3);
    run_gemm(wt, 130, 200, 256, false, 0);
  }
  // GEMV's 16-byte path (K % 8 == 0, aligned rows) against its scalar tail: same answers. K of
  // 4096 and 4104 also run its unrolled loop (4 loads per lane in flight) and the loop after it.
  run_gemm(DType::BF16, 2, 65, 4096, true, 0);
  run_gemm(DType::F16, 2, 65, 4104, true, 0);
  run_gemm(DType::BF16, 1, 97, 1288, false, 0);
  // q8_0 / q4_0 GEMV: 65 blocks (q8_0: two unrolled groups of 32 blocks; q4_0: one of 64; then
  // one block), 128 blocks; the 1-, 2-, 4- and 8-row kernels.
  for (DType wt : {DType::Q8_0, DType::Q4_0}) {
    run_gemm(wt, 3, 67, 65 * 32, true, 0);
    run_gemm(wt, 2, 67, 65 * 32, false, 1);  // the 2-row kernel, unaligned X rows (scalar X loads)
    run_gemm(wt, 1, 129, 4096, false, 0);
  }
}

TEST(cuda_backend_gemm_bad_args) {
  SKIP_WITHOUT_GPU();
  Dev b(4096);
  EXPECT_THROWS(gpu().gemm(b.f(), 40, b.p, DType::Q8_0, nullptr, b.f(), 4, 1, 4, 40), ErrorCode::InvalidArgument);
  EXPECT_THROWS(gpu().gemm(b.f(), 256, b.p, DType::Q6_K, nullptr, b.f(), 4, 1, 4, 256), ErrorCode::Unsupported);
  EXPECT_THROWS(cuda::gemm_tc(b.f(), 16, b.p, DType::F32, nullptr, b.f(), 4, 16, 4, 16, nullptr), ErrorCode::Unsupported);
}

TEST(cuda_backend_row_ops_match_cpu) {
  SKIP_WITHOUT_GPU();
  Rng r(5);
  const int64_t rows = 7, n = 1000, ld = 1003;
  std::vector<float> x = rnd(size_t(rows * ld), r, -3, 3), w = rnd(size_t(n), r), bb = rnd(size_t(n), r);
  Dev dx(x), dw(w), db(bb), dy(size_t(rows * ld) * 4);
  auto rows_of = [&](const std::vector<float>& v) {
    std::vector<float> o;
    for (int64_t i = 0; i < rows; ++i) o.insert(o.end(), v.begin() + i * ld, v.begin() + i * ld + n);
    return o;
  };
  {
    std::vector<float> want(x.size());
    cpu().rmsnorm(x.data(), ld, w.data(), want.data(), ld, rows, n, 1e-5f);
    gpu().rmsnorm(dx.f(), ld, dw.f(), dy.f(), ld, rows, n, 1e-5f);
    auto g = rows_of(dy.get()), e = rows_of(want);
    EXPECT_ALL_CLOSE(g.data(), e.data(), e.size(), 1e-5, 1e-5, "rmsnorm");
  }
  for (bool affine : {true, false}) {
    std::vector<float> want(x.size());
    cpu().layernorm(x.data(), ld, affine ? w.data() : nullptr, affine ? bb.data() : nullptr, want.data(), ld, rows, n, 1e-5f);
    gpu().layernorm(dx.f(), ld, affine ? dw.f() : nullptr, affine ? db.f() : nullptr, dy.f(), ld, rows, n, 1e-5f);
    auto g = rows_of(dy.get()), e = rows_of(want);
    EXPECT_ALL_CLOSE(g.data(), e.data(), e.size(), 1e-5, 1e-5, affine ? "layernorm" : "layernorm (no affine)");
  }
  {
    std::vector<float> xs = x;
    xs[3] = -INFINITY;
    xs[size_t(ld) + 10] = -INFINITY;
    Dev dxs(xs);
    std::vector<float> want(x.size());
    cpu().softmax(xs.data(), ld, want.data(), ld, rows, n);
    gpu().softmax(dxs.f(), ld, dy.f(), ld, rows, n);
    auto g = rows_of(dy.get()), e = rows_of(want);
    EXPECT_ALL_CLOSE(g.data(), e.data(), e.size(), 1e-6, 1e-5, "softmax");
    // an all -inf row gives NaN, as torch
    std::vector<float> ninf(16, -INFINITY);
    Dev dn(ninf), dn_out(16 * 4);
    gpu().softmax(dn.f(), 16, dn_out.f(), 16, 1, 16);
    EXPECT(std::isnan(dn_out.get()[0]));
  }
  const int64_t total = rows * ld;
  std::vector<float> y2 = rnd(size_t(total), r, -3, 3);
  Dev dx2(y2);
  struct Un { const char* name; void (Backend::*fn)(const float*, float*, int64_t); };
  for (Un u : {Un{"silu", &Backend::silu}, Un{"gelu_erf", &Backend::gelu_erf}, Un{"quick_gelu", &Backend::quick_gelu}}) {
    std::vector<float> want(static_cast<size_t>(total));
    (cpu().*u.fn)(x.data(), want.data(), total);
    (gpu().*u.fn)(dx.f(), dy.f(), total);
    auto g = dy.get();
    EXPECT_ALL_CLOSE(g.data(), want.data(), want.size(), 1e-5, 1e-5, u.name);
  }
  {
    std::vector<float> want(static_cast<size_t>(total));
    cpu().swiglu(x.data(), y2.data(), want.data(), total);
    gpu().swiglu(dx.f(), dx2.f(), dy.f(), total);
    auto g = dy.get();
    EXPECT_ALL_CLOSE(g.data(), want.data(), want.size(), 1e-5, 1e-5, "swiglu");
    cpu().add(x.data(), y2.data(), want.data(), total);
    gpu().add(dx.f(), dx2.f(), dy.f(), total);
    g = dy.get();
    EXPECT_ALL_CLOSE(g.data(), want.data(), want.size(), 0.0, 0.0, "add");
  }
}

TEST(cuda_backend_rope_both_layouts) {
  SKIP_WITHOUT_GPU();
  Rng r(9);
  const int64_t T = 13, H = 3, D = 24, ld = H * D + 5;
  std::vector<int32_t> pos(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) pos[size_t(t)] = int32_t(7 + 3 * t);
  std::vector<float> invf(8);
  for (size_t i = 0; i < invf.size(); ++i) invf[i] = 1.0f / float(1 + i * i);
  for (RopeLayout layout : {RopeLayout::RotateHalf, RopeLayout::Interleaved})
    for (int64_t rot : {int64_t(0), int64_t(16)})
      for (bool use_invf : {false, true}) {
        if (use_invf && rot != 16) continue;
        RopeParams p;
        p.head_dim = D;
        p.rot_dim = rot;
        p.theta = 500.0f;
        p.freq_scale = 0.5f;
        p.layout = layout;
        p.inv_freq = use_invf ? invf.data() : nullptr;
        std::vector<float> x = rnd(size_t(T * ld), r), want = x;
        cpu().rope(want.data(), ld, T, H, pos.data(), p);
        Dev dx(x);
        gpu().rope(dx.f(), ld, T, H, pos.data(), p);  // host positions: staged in one upload
        auto got = dx.get();
        EXPECT_ALL_CLOSE(got.data(), want.data(), want.size(), 1e-5, 1e-5,
                         std::string("rope ") + (layout == RopeLayout::Interleaved ? "interleaved" : "rotate-half") +
                             " rot=" + std::to_string(rot) + (use_invf ? " inv_freq" : ""));
        // device positions (what the model code passes) give the same; a second call finds the
        // configuration's frequency table already on the device
        Dev dpos(pos), dx2(x);
        gpu().rope(dx2.f(), ld, T, H, static_cast<const int32_t*>(dpos.p), p);
        auto got2 = dx2.get();
        EXPECT(got2 == got);
      }
}

TEST(cuda_backend_embedding_every_dtype) {
  SKIP_WITHOUT_GPU();
  Rng r(11);
  const int64_t V = 37, dim = 96, ld = 100;
  std::vector<float> table = rnd(size_t(V * dim), r);
  std::vector<int32_t> ids = {0, 36, 5, 5, 17};
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
    const size_t rb = dtype_row_bytes(t, dim);
    std::vector<uint8_t> q(size_t(V) * rb);
    for (int64_t v = 0; v < V; ++v) quantize_row(t, table.data() + v * dim, q.data() + size_t(v) * rb, dim);
    std::vector<float> want(ids.size() * size_t(ld), 0.0f);
    cpu().embedding_lookup(q.data(), t, V, dim, ids.data(), int64_t(ids.size()), want.data(), ld);
    Dev dq(q);
    Dev out(std::vector<float>(want.size(), 0.0f));
    gpu().embedding_lookup(dq.p, t, V, dim, ids.data(), int64_t(ids.size()), out.f(), ld);
    auto got = out.get();
    EXPECT_ALL_CLOSE(got.data(), want.data(), want.size(), 0.0, 0.0, std::string("embedding ") + dtype_name(t));
    // device ids (the model code's): used in place, the same rows
    Dev dids(ids), out2(std::vector<float>(want.size(), 0.0f));
    gpu().embedding_lookup(dq.p, t, V, dim, static_cast<const int32_t*>(dids.p), int64_t(ids.size()), out2.f(), ld);
    EXPECT(out2.get() == got);
  }
  std::vector<int32_t> bad = {3, 37};
  Dev dq(table), out(size_t(2 * dim) * 4);
  EXPECT_THROWS(gpu().embedding_lookup(dq.p, DType::F32, V, dim, bad.data(), 2, out.f(), dim), ErrorCode::InvalidArgument);
  // a bad id in device memory cannot throw from the kernel: its row is NaN, the good one is the table's
  Dev dbad(bad);
  gpu().embedding_lookup(dq.p, DType::F32, V, dim, static_cast<const int32_t*>(dbad.p), 2, out.f(), dim);
  const std::vector<float> rows = out.get();
  EXPECT(std::equal(rows.begin(), rows.begin() + dim, table.begin() + 3 * dim));
  EXPECT(std::all_of(rows.begin() + dim, rows.begin() + 2 * dim, [](float v) { return std::isnan(v); }));
}

TEST(cuda_backend_attention_matches_cpu) {
  SKIP_WITHOUT_GPU();
  struct Case { int64_t nq, nkv, H, Hkv, D; bool causal; int64_t pos0; };
  for (Case c : {Case{37, 37, 4, 2, 64, true, 0}, Case{19, 50, 6, 2, 80, true, 31}, Case{50, 50, 4, 4, 128, false, 0},
                 Case{1, 1000, 8, 2, 128, true, 999}, Case{1, 300, 32, 8, 128, true, 299}, Case{7, 20, 2, 1, 40, true, 13}}) {
    AttentionParams p;
    p.n_q = c.nq; p.n_kv = c.nkv; p.n_heads = c.H; p.n_kv_heads = c.Hkv; p.head_dim = c.D;
    p.ldq = p.ldo = c.H * c.D; p.ldk = p.ldv = c.Hkv * c.D;
    p.causal = c.causal; p.q_pos0 = c.pos0;
    Rng r(uint64_t(c.nq * 3 + c.nkv + c.D));
    std::vector<float> q = rnd(size_t(c.nq * p.ldq), r), k = rnd(size_t(c.nkv * p.ldk), r), v = rnd(size_t(c.nkv * p.ldv), r);
    std::vector<float> want(size_t(c.nq * p.ldo));
    cpu().attention(q.data(), k.data(), v.data(), want.data(), p);
    Dev dq(q), dk(k), dv(v), dout(want.size() * 4);
    gpu().attention(dq.f(), dk.f(), dv.f(), dout.f(), p);
    auto got = dout.get();
    EXPECT_ALL_CLOSE(got.data(), want.data(), want.size(), 2e-4, 2e-4,
                     "attention nq=" + std::to_string(c.nq) + " nkv=" + std::to_string(c.nkv) + " D=" + std::to_string(c.D));
  }
}

TEST(cuda_backend_mvp_projection) {
  SKIP_WITHOUT_GPU();
  MvpProjectionParams p;
  p.tokens = 37; p.d_in = 64; p.d_hid = 96; p.d_out = 51; p.n_heads = 3;
  Rng r(13);
  std::vector<float> x = rnd(size_t(p.tokens * p.d_in), r, -2, 2);
  std::vector<float> w1 = rnd(size_t(p.n_heads * p.d_hid * p.d_in), r, -0.125f, 0.125f);
  std::vector<float> w2 = rnd(size_t(p.n_heads * p.d_out * p.d_hid), r, -0.1f, 0.1f);
  std::vector<float> b1 = rnd(size_t(p.n_heads * p.d_hid), r), b2 = rnd(size_t(p.n_heads * p.d_out), r);
  std::vector<float> g = rnd(size_t(p.n_heads * p.d_out), r, 0, 1);
  for (DType t : {DType::F32, DType::BF16, DType::Q8_0}) {
    auto store = [&](const std::vector<float>& w, int64_t K, std::vector<float>& deq) {
      const int64_t rows = int64_t(w.size()) / K;
      const size_t rb = dtype_row_bytes(t, K);
      std::vector<uint8_t> q(size_t(rows) * rb);
      deq.resize(w.size());
      for (int64_t i = 0; i < rows; ++i) {
        quantize_row(t, w.data() + i * K, q.data() + size_t(i) * rb, K);
        dequantize_row(t, q.data() + size_t(i) * rb, deq.data() + i * K, K);
      }
      return q;
    };
    std::vector<float> w1d, w2d;
    std::vector<uint8_t> q1 = store(w1, p.d_in, w1d), q2 = store(w2, p.d_hid, w2d);
    std::vector<float> want(size_t(p.tokens * p.d_out));
    cpu().mvp_projection(x.data(), w1d.data(), b1.data(), w2d.data(), b2.data(), g.data(), DType::F32, want.data(), p);
    Dev dx(x), d1(q1), d2(q2), db1(b1), db2(b2), dg(g), dy(want.size() * 4);
    gpu().mvp_projection(dx.f(), d1.p, db1.f(), d2.p, db2.f(), dg.f(), t, dy.f(), p);
    auto got = dy.get();
    const double tol = t == DType::Q8_0 ? 2e-2 : 2e-4;
    EXPECT_ALL_CLOSE(got.data(), want.data(), want.size(), tol, tol, std::string("mvp_projection ") + dtype_name(t));
  }
}

TEST(cuda_sampling_on_device) {
  SKIP_WITHOUT_GPU();
  // Greedy: argmax, lowest index on ties, NaN never wins.
  std::vector<float> l = {0.5f, 2.0f, NAN, 2.0f, -1.0f, 1.5f, -INFINITY, 0.0f};
  Dev dl(l), dt(sizeof(int32_t));
  auto sample = [&](const Dev& logits, int64_t n, cuda::SampleParams sp) {
    cudaDeviceSynchronize();  // the backend's uploads ran on its own stream
    cuda::sample(logits.f(), n, sp, static_cast<int32_t*>(dt.p), nullptr);
    cudaDeviceSynchronize();
    return dt.get<int32_t>()[0];
  };
  cuda::SampleParams greedy;
  EXPECT(sample(dl, 8, greedy) == 1);
  cuda::SampleParams k1;
  k1.temperature = 1.0f; k1.top_k = 1; k1.u = 0.7f;
  EXPECT(sample(dl, 8, k1) == 1);
  // Inverse CDF over a softmax at temperature 1: quantiles u = (i + 0.5) / S land in each token
  // in proportion to its probability (deterministic: within one quantile step per boundary).
  std::vector<float> lg = {1.0f, 0.0f, 2.0f, -1.0f, 0.5f, 1.5f, -0.5f, 0.25f};
  Dev dlg(lg);
  std::vector<double> pr(lg.size());
  double z = 0;
  for (size_t i = 0; i < lg.size(); ++i) z += (pr[i] = std::exp(double(lg[i])));
  const int S = 400;
  std::vector<int> counts(lg.size(), 0);
  for (int i = 0; i < S; ++i) {
    cuda::SampleParams sp;
    sp.temperature = 1.0f; sp.u = float((i + 0.5) / S);
    const int32_t t = sample(dlg, int64_t(lg.size()), sp);
    EXPECT(t >= 0 && t < int32_t(lg.size()));
    if (t >= 0 && t < int32_t(lg.size())) counts[size_t(t)]++;
  }
  for (size_t i = 0; i < lg.size(); ++i) EXPECT_NEAR(counts[i], pr[i] / z * S, 1.01);
  // top-k 3: only the three largest (indices 2, 5, 0) ever come out; u = 0 gives the first in index order.
  for (int i = 0; i < 50; ++i) {
    cuda::SampleParams sp;
    sp.temperature = 0.8f; sp.top_k = 3; sp.u = float(i) / 50.0f;
    const int32_t t = sample(dlg, int64_t(lg.size()), sp);
    EXPECT(t == 2 || t == 5 || t == 0);
    if (i == 0) EXPECT(t == 0);
  }
  // top-p 0.3: the smallest head holding >= 30% of the mass is token 2 alone (p ~ 0.38).
  for (int i = 0; i < 20; ++i) {
    cuda::SampleParams sp;
    sp.temperature = 1.0f; sp.top_p = 0.3f; sp.u = float(i) / 20.0f;
    EXPECT(sample(dlg, int64_t(lg.size()), sp) == 2);
  }
  // A vocabulary-sized row: greedy finds the planted maximum.
  Rng r(3);
  std::vector<float> big = rnd(32000, r, -5, 5);
  big[31999] = 9.0f;
  Dev db(big);
  EXPECT(sample(db, 32000, greedy) == 31999);
}

// The Backend interface additions (streams per context, KV dtype, data movement and row ops).
TEST(cuda_backend_contexts_and_row_ops) {
  SKIP_WITHOUT_GPU();
  Backend& g = gpu();
  EXPECT(g.supports_kv_dtype(DType::F32) && g.supports_kv_dtype(DType::BF16) && !g.supports_kv_dtype(DType::Q8_0));
  EXPECT_THROWS(g.require_kv_dtype(DType::Q8_0), ErrorCode::Unsupported);
  Rng r(17);
  const int64_t rows = 9, n = 300, ldx = 301, ldy = 305;
  std::vector<float> x = rnd(size_t(rows * ldx), r), v = rnd(size_t(n), r), y0 = rnd(size_t(rows * ldy), r);
  // Issued on a context's own stream (ContextScope), then read back.
  BackendContext ctx(g);
  ContextScope scope(ctx);
  EXPECT(g.current_stream() == &ctx.stream() && ctx.stream().native_handle() != nullptr);
  Dev dx(x), dv(v);
  struct Op { const char* name; int kind; bool acc; };
  for (Op op : {Op{"add_row", 0, false}, Op{"mul_row", 1, false}, Op{"mul_row_add", 2, false}, Op{"mul_row_add acc", 2, true}}) {
    std::vector<float> want = y0;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t c = 0; c < n; ++c) {
        const float a = x[size_t(i * ldx + c)], b = v[size_t(c)];
        float& w = want[size_t(i * ldy + c)];
        w = op.kind == 0 ? a + b : op.kind == 1 ? a * b : (op.acc ? w + a * b : a * b);
      }
    Dev dy(y0);
    if (op.kind == 0) g.add_row(dx.f(), ldx, dv.f(), dy.f(), ldy, rows, n);
    else if (op.kind == 1) g.mul_row(dx.f(), ldx, dv.f(), dy.f(), ldy, rows, n);
    else g.mul_row_add(dx.f(), ldx, dv.f(), dy.f(), ldy, rows, n, op.acc);
    ctx.synchronize();
    auto got = dy.get();
    EXPECT_ALL_CLOSE(got.data(), want.data(), want.size(), 1e-6, 1e-6, op.name);  // padding included: untouched
  }
  {
    Dev dy(size_t(rows * ldx) * 4);
    g.scale(dx.f(), -0.5f, dy.f(), rows * ldx);
    auto got = dy.get();
    std::vector<float> want(x.size());
    for (size_t i = 0; i < x.size(); ++i) want[i] = -0.5f * x[i];
    EXPECT_ALL_CLOSE(got.data(), want.data(), want.size(), 0.0, 0.0, "scale");
  }
  {
    // copy_2d: a 9 x 300-float block out of rows of 301 into rows of 305.
    Dev dy(y0);
    g.copy_2d(dy.p, size_t(ldy) * 4, dx.p, size_t(ldx) * 4, rows, size_t(n) * 4);
    auto got = dy.get();
    std::vector<float> want = y0;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t c = 0; c < n; ++c) want[size_t(i * ldy + c)] = x[size_t(i * ldx + c)];
    EXPECT(got == want);
  }
  {
    // convert f32 -> bf16 -> f32 and f32 -> f16: the host conversions bit for bit.
    const int64_t cnt = rows * ldx;
    Dev d16(size_t(cnt) * 2), dback(size_t(cnt) * 4);
    g.convert(dx.p, DType::F32, d16.p, DType::BF16, cnt);
    auto bits = d16.get<uint16_t>();
    bool same = true;
    for (int64_t i = 0; i < cnt; ++i) same = same && bits[size_t(i)] == f32_to_bf16(x[size_t(i)]);
    EXPECT(same);
    g.convert(d16.p, DType::BF16, dback.p, DType::F32, cnt);
    auto back = dback.get();
    same = true;
    for (int64_t i = 0; i < cnt; ++i) same = same && back[size_t(i)] == bf16_to_f32(bits[size_t(i)]);
    EXPECT(same);
    g.convert(dx.p, DType::F32, d16.p, DType::F16, cnt);
    bits = d16.get<uint16_t>();
    same = true;
    for (int64_t i = 0; i < cnt; ++i) same = same && bits[size_t(i)] == f32_to_f16(x[size_t(i)]);
    EXPECT(same);
    EXPECT_THROWS(g.convert(dx.p, DType::F32, d16.p, DType::Q8_0, 32), ErrorCode::Unsupported);
  }
  {
    // bf16 KV through the backend (AttentionParams::kv_dtype) against the CPU on the rounded K/V.
    AttentionParams p;
    p.n_q = 5; p.n_kv = 300; p.n_heads = 8; p.n_kv_heads = 2; p.head_dim = 128;
    p.ldq = p.ldo = 8 * 128; p.ldk = p.ldv = 2 * 128;
    p.causal = true; p.q_pos0 = 295;
    std::vector<float> q = rnd(size_t(p.n_q * p.ldq), r), k = rnd(size_t(p.n_kv * p.ldk), r), vv = rnd(size_t(p.n_kv * p.ldv), r);
    std::vector<uint16_t> kb(k.size()), vb(vv.size());
    for (size_t i = 0; i < k.size(); ++i) { kb[i] = f32_to_bf16(k[i]); k[i] = bf16_to_f32(kb[i]); }
    for (size_t i = 0; i < vv.size(); ++i) { vb[i] = f32_to_bf16(vv[i]); vv[i] = bf16_to_f32(vb[i]); }
    std::vector<float> want(size_t(p.n_q * p.ldo));
    cpu().attention(q.data(), k.data(), vv.data(), want.data(), p);
    Dev dq(q), dk(kb), dvv(vb), dout(want.size() * 4);
    p.kv_dtype = DType::BF16;
    g.attention(dq.f(), static_cast<const float*>(dk.p), static_cast<const float*>(dvv.p), dout.f(), p);
    auto got = dout.get();
    EXPECT_ALL_CLOSE(got.data(), want.data(), want.size(), 2e-4, 2e-4, "attention bf16 KV (kv_dtype)");
  }
}

TEST(cuda_backend_extract_patches_matches_cpu) {
  SKIP_WITHOUT_GPU();
  PatchParams p;
  p.batch = 2; p.channels = 3; p.height = 42; p.width = 28; p.patch = 14;
  Rng r(23);
  std::vector<float> img = rnd(size_t(p.batch * p.channels * p.height * p.width), r);
  const int64_t rows = p.batch * p.patches_h() * p.patches_w(), ld = p.row_elems() + 3;
  std::vector<float> want(size_t(rows * ld), -7.0f);
  cpu().extract_patches(img.data(), want.data(), ld, p);
  Dev di(img), dc(std::vector<float>(want.size(), -7.0f));
  gpu().extract_patches(di.f(), dc.f(), ld, p);
  EXPECT(dc.get() == want);  // a gather: bit-exact, padding untouched
}
