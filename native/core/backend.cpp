#include "backend.h"

#include <cstring>

#include "arena.h"
#include "error.h"
#include "thread_pool.h"

namespace emollm {
namespace {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : pool_(threads) {}

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
    emollm::rmsnorm(x, ldx, w, y, ldy, rows, n, eps);
  }
  void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy, int64_t rows,
                 int64_t n, float eps) override {
    emollm::layernorm(x, ldx, w, b, y, ldy, rows, n, eps);
  }
  void silu(const float* x, float* y, int64_t n) override { emollm::silu(x, y, n); }
  void gelu_erf(const float* x, float* y, int64_t n) override { emollm::gelu_erf(x, y, n); }
  void quick_gelu(const float* x, float* y, int64_t n) override { emollm::quick_gelu(x, y, n); }
  void swiglu(const float* gate, const float* up, float* y, int64_t n) override { emollm::swiglu(gate, up, y, n); }
  void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    emollm::softmax(x, ldx, y, ldy, rows, n);
  }
  void rope(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
            const RopeParams& p) override {
    emollm::rope(x, ld, n_tokens, n_heads, positions, p);
  }
  void embedding_lookup(const void* table, DType dtype, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n,
                        float* out, int64_t ld_out) override {
    emollm::embedding_lookup(table, dtype, vocab, dim, ids, n, out, ld_out);
  }
  void attention(const float* q, const float* k, const float* v, float* out, const AttentionParams& p) override {
    emollm::attention(q, k, v, out, p, &pool_);
  }

 private:
  ThreadPool pool_;
};

}  // namespace

std::unique_ptr<Backend> make_backend(const BackendOptions& options) {
  switch (options.device) {
    case DeviceKind::Cpu: return std::make_unique<CpuBackend>(options.threads);
    case DeviceKind::Cuda:
      throw Error(ErrorCode::Unsupported, "this build of emollm has no CUDA backend (rebuild with nvcc: npm run build:cmake)");
  }
  throw Error(ErrorCode::InvalidArgument, "unknown device");
}

}  // namespace emollm
