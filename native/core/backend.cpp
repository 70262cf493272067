#include "backend.h"

#include <cstring>
#include <vector>

#include "base/arena.h"
#include "base/error.h"
#include "base/thread_pool.h"
#include "kernels/cpu/kernels.h"
#include "core/runtime.h"

namespace emollm {
namespace {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(std::shared_ptr<ThreadPool> pool) : owned_(std::move(pool)), pool_(*owned_) {}

  DeviceKind device() const override { return DeviceKind::Cpu; }
  std::string describe() const override {
    return std::string("cpu (") + isa_name(isa_active()) + ", " + std::to_string(pool_.size()) + " threads)";
  }

  void* alloc(size_t bytes) override { return aligned_alloc_bytes(bytes); }
  void free(void* p) override { aligned_free(p); }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  bool uses_host_memory() const override { return true; }

  void gemm(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
            int64_t M, int64_t N, int64_t K) override {
    emollm::gemm(X, ldx, W, wtype, bias, Y, ldy, M, N, K, &pool_);
  }
  void rmsnorm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int64_t rows, int64_t n,
               float eps) override {
    emollm::rmsnorm(x, ldx, w, y, ldy, rows, n, eps, &pool_);
  }
  void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy, int64_t rows,
                 int64_t n, float eps) override {
    emollm::layernorm(x, ldx, w, b, y, ldy, rows, n, eps, &pool_);
  }
  void silu(const float* x, float* y, int64_t n) override { emollm::silu(x, y, n, &pool_); }
  void gelu_erf(const float* x, float* y, int64_t n) override { emollm::gelu_erf(x, y, n, &pool_); }
  void quick_gelu(const float* x, float* y, int64_t n) override { emollm::quick_gelu(x, y, n, &pool_); }
  void swiglu(const float* gate, const float* up, float* y, int64_t n) override { emollm::swiglu(gate, up, y, n, &pool_); }
  void add(const float* a, const float* b, float* y, int64_t n) override { emollm::add(a, b, y, n, &pool_); }
  void copy(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    emollm::softmax(x, ldx, y, ldy, rows, n, &pool_);
  }
  void rope(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
            const RopeParams& p) override {
    emollm::rope(x, ld, n_tokens, n_heads, positions, p, &pool_);
  }
  void embedding_lookup(const void* table, DType dtype, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n,
                        float* out, int64_t ld_out) override {
    emollm::embedding_lookup(table, dtype, vocab, dim, ids, n, out, ld_out, &pool_);
  }
  void attention(const float* q, const float* k, const float* v, float* out, const AttentionParams& p) override {
    emollm::attention(q, k, v, out, p, &pool_);
  }
  void mvp_projection(const float* X, const void* W1, const float* b1, const void* W2, const float* b2, const float* G,
                      DType wtype, float* Y, const MvpProjectionParams& p) override {
    emollm::mvp_projection(X, W1, b1, W2, b2, G, wtype, Y, p, &pool_);
  }

 private:
  std::shared_ptr<ThreadPool> owned_;
  ThreadPool& pool_;
};

}  // namespace

void Backend::mvp_projection(const float* X, const void* W1, const float* b1, const void* W2, const float* b2,
                             const float* G, DType wtype, float* Y, const MvpProjectionParams& p) {
  EMOLLM_CHECK_ARG(p.tokens >= 0 && p.d_in > 0 && p.d_hid > 0 && p.d_out > 0 && p.n_heads > 0,
                   "mvp_projection: d_in, d_hid, d_out and n_heads must be positive");
  const int64_t ldx = p.ldx ? p.ldx : p.d_in, ldy = p.ldy ? p.ldy : p.d_out;
  const int64_t T = p.tokens, H = p.n_heads, Dh = p.d_hid, Do = p.d_out;
  if (T == 0) return;
  std::vector<float> hidden(size_t(T * H * Dh)), tmp(size_t(T * Do));
  gemm(X, ldx, W1, wtype, b1, hidden.data(), H * Dh, T, H * Dh, p.d_in);
  gelu_erf(hidden.data(), hidden.data(), T * H * Dh);
  const size_t w2_head_bytes = size_t(Do) * dtype_row_bytes(wtype, Dh);
  for (int64_t h = 0; h < H; ++h) {
    gemm(hidden.data() + h * Dh, H * Dh, static_cast<const uint8_t*>(W2) + size_t(h) * w2_head_bytes, wtype,
         b2 ? b2 + h * Do : nullptr, tmp.data(), Do, T, Do, Dh);
    const float* g = G + h * Do;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < Do; ++c) Y[t * ldy + c] = (h == 0 ? 0.0f : Y[t * ldy + c]) + g[c] * tmp[size_t(t * Do + c)];
  }
}

std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<ThreadPool> pool) {
  EMOLLM_CHECK_ARG(pool != nullptr, "make_cpu_backend: null pool");
  return std::make_unique<CpuBackend>(std::move(pool));
}

std::unique_ptr<Backend> make_backend(const BackendOptions& options) {
  switch (options.device) {
    case DeviceKind::Cpu: return std::make_unique<CpuBackend>(std::make_shared<ThreadPool>(options.threads));
    case DeviceKind::Cuda: require_device(DeviceKind::Cuda); break;
  }
  throw Error(ErrorCode::InvalidArgument, "unknown device");
}

}  // namespace emollm
