// The compute backend interface: model code calls these and never a kernel directly, so a CUDA
// backend can plug in later without changing the model code. Pointers passed to a backend's
// compute calls live in that backend's memory (host memory for the CPU backend; buffers from
// alloc() in general, filled with upload()).
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "base/dtype.h"
#include "kernels/op_params.h"

namespace emollm {

class ThreadPool;

enum class DeviceKind { Cpu, Cuda };

struct BackendOptions {
  DeviceKind device = DeviceKind::Cpu;
  int threads = 0;  // CPU compute threads; 0 = physical cores
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceKind device() const = 0;
  virtual std::string describe() const = 0;

  // ---- memory
  virtual void* alloc(size_t bytes) = 0;
  virtual void free(void* p) = 0;
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  // True when host pointers (e.g. into an mmap'd weight file) can be used directly as weights.
  virtual bool uses_host_memory() const = 0;

  // ---- compute (same contracts as kernels/cpu/kernels.h)
  virtual void gemm(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y,
                    int64_t ldy, int64_t M, int64_t N, int64_t K) = 0;
  virtual void rmsnorm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int64_t rows,
                       int64_t n, float eps) = 0;
  virtual void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy,
                         int64_t rows, int64_t n, float eps) = 0;
  virtual void silu(const float* x, float* y, int64_t n) = 0;
  virtual void gelu_erf(const float* x, float* y, int64_t n) = 0;
  virtual void quick_gelu(const float* x, float* y, int64_t n) = 0;
  virtual void swiglu(const float* gate, const float* up, float* y, int64_t n) = 0;
  // y = a + b over n floats (residual adds; in place allowed).
  virtual void add(const float* a, const float* b, float* y, int64_t n) = 0;
  // Copies bytes within this backend's memory (dst and src both from this backend).
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  virtual void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n) = 0;
  virtual void rope(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
                    const RopeParams& p) = 0;
  virtual void embedding_lookup(const void* table, DType dtype, int64_t vocab, int64_t dim, const int32_t* ids,
                                int64_t n, float* out, int64_t ld_out) = 0;
  virtual void attention(const float* q, const float* k, const float* v, float* out, const AttentionParams& p) = 0;
  // EmoLLM's fused multi-head visual projection (kernels.h mvp_projection). The default composes
  // it from gemm and gelu_erf (any backend); the CPU backend runs the fused kernel.
  virtual void mvp_projection(const float* X, const void* W1, const float* b1, const void* W2, const float* b2,
                              const float* G, DType wtype, float* Y, const MvpProjectionParams& p);
};

// Memory from a backend's alloc(), freed with it (RAII). The backend must outlive the buffer.
class BackendBuffer {
 public:
  BackendBuffer() = default;
  BackendBuffer(Backend& be, size_t bytes) { allocate(be, bytes); }
  ~BackendBuffer() { release(); }
  // Frees what it holds, then allocates `bytes` from `be`.
  void allocate(Backend& be, size_t bytes) {
    release();
    data_ = bytes ? be.alloc(bytes) : nullptr;
    be_ = &be;
    bytes_ = bytes;
  }
  void release() {
    if (data_) be_->free(data_);
    data_ = nullptr;
    bytes_ = 0;
  }
  BackendBuffer(const BackendBuffer&) = delete;
  BackendBuffer& operator=(const BackendBuffer&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  Backend* be_ = nullptr;
  size_t bytes_ = 0;
  void* data_ = nullptr;
};

// Creates a backend with its own compute pool. DeviceKind::Cuda throws Error(Unsupported) when
// the build has no CUDA (see require_device in core/runtime.h). Models get theirs from the
// Runtime instead (shared pools); this stays for tests and tools that want a private one.
std::unique_ptr<Backend> make_backend(const BackendOptions& options);
// A CPU backend computing on `pool` (shared; kept alive by the backend).
std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<ThreadPool> pool);

}  // namespace emollm
