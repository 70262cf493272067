// CudaBackend: core/cuda_backend.h. Host code only (the C++ compiler builds it against the CUDA
// runtime API); every kernel lives in kernels/cuda.
#include "core/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/error.h"
#include "kernels/cuda/cuda_kernels.h"

namespace emollm {
namespace {

std::string cuda_str(cudaError_t e) { return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e); }

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  if (e == cudaErrorMemoryAllocation)
    throw Error(ErrorCode::OutOfMemory, std::string("cuda: ") + what + ": out of device memory");
  throw Error(ErrorCode::Internal, std::string("cuda: ") + what + ": " + cuda_str(e));
}

std::string gib(size_t bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f GiB", double(bytes) / double(size_t(1) << 30));
  return buf;
}

// The device count, or the typed reason there is none.
int device_count_or_throw() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaErrorInsufficientDriver || e == cudaErrorStubLibrary || e == cudaErrorSharedObjectInitFailed) {
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    int rt = 0;
    cudaRuntimeGetVersion(&rt);
    throw Error(ErrorCode::Unsupported,
                "device 'cuda': no usable NVIDIA driver (" + cuda_str(e) + "). This build uses CUDA runtime " +
                    std::to_string(rt / 1000) + "." + std::to_string((rt % 1000) / 10) +
                    "; install an NVIDIA driver that supports it (nvidia-smi shows the driver's CUDA version), "
                    "or use device 'cpu'");
  }
  if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0)) {
    cudaGetLastError();
    throw Error(ErrorCode::Unsupported,
                "device 'cuda': the NVIDIA driver is present but sees no CUDA device (check nvidia-smi and "
                "CUDA_VISIBLE_DEVICES), or use device 'cpu'");
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error(ErrorCode::Unsupported, "device 'cuda': the CUDA runtime failed to start: " + cuda_str(e));
  }
  return n;
}

// Makes `dev` current on the calling thread for the scope (Node workers and contexts call from
// any thread; kernels launch on the thread's current device).
struct DeviceGuard {
  explicit DeviceGuard(int dev) {
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess || cur != dev) check(cudaSetDevice(dev), "cudaSetDevice");
  }
};

// Device memory cache. A freed block goes to a size-keyed free list with an event recorded on
// the stream it was freed on; alloc() reuses a block only once its event has completed, so a
// block is never handed to new work while a kernel issued before the free may still touch it
// (whatever stream the new work runs on).
class CachingAllocator {
 public:
  explicit CachingAllocator(int dev) : dev_(dev) {}
  ~CachingAllocator() { release_cache(); }

  void* alloc(size_t bytes) {
    const size_t size = round_size(bytes);
    std::lock_guard<std::mutex> lk(mu_);
    // Smallest cached block that fits and wastes at most half of itself.
    for (auto it = free_.lower_bound(size); it != free_.end() && it->first <= 2 * size; ++it) {
      Block b = it->second;
      if (b.ev) {
        const cudaError_t q = cudaEventQuery(b.ev);
        cudaGetLastError();  // NotReady is an answer, not an error for a later launch check to find
        if (q != cudaSuccess) continue;
      }
      free_.erase(it);
      if (b.ev) cudaEventDestroy(b.ev);
      live_[b.ptr] = b.size;
      live_bytes_ += b.size;
      cached_bytes_ -= b.size;
      return b.ptr;
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cache_locked();  // give the cache back to the driver and try once more
      e = cudaMalloc(&p, size);
    }
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t fr = 0, total = 0;
      cudaMemGetInfo(&fr, &total);
      throw Error(ErrorCode::OutOfMemory, "cuda:" + std::to_string(dev_) + ": out of device memory: needed " +
                                              std::to_string(size) + " bytes (" + gib(size) + "), free " +
                                              std::to_string(fr) + " bytes (" + gib(fr) + ") of " + gib(total) +
                                              "; in use by emollm on this device: " + gib(live_bytes_));
    }
    check(e, "cudaMalloc");
    live_[p] = size;
    live_bytes_ += size;
    return p;
  }

  // Never throws: it runs in destructors (BackendBuffer).
  void free(void* p, cudaStream_t last_stream) noexcept {
    if (!p) return;
    std::lock_guard<std::mutex> lk(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) {  // not ours (a caller's bug): hand it to the driver rather than cache it
      cudaFree(p);
      cudaGetLastError();
      return;
    }
    Block b{p, it->second, nullptr};
    live_.erase(it);
    live_bytes_ -= b.size;
    if (cudaEventCreateWithFlags(&b.ev, cudaEventDisableTiming) == cudaSuccess) {
      if (cudaEventRecord(b.ev, last_stream) != cudaSuccess) {
        cudaEventDestroy(b.ev);
        b.ev = nullptr;
        cudaDeviceSynchronize();  // could not fence: wait instead
      }
    } else {
      b.ev = nullptr;
      cudaDeviceSynchronize();
    }
    cudaGetLastError();
    free_.emplace(b.size, b);
    cached_bytes_ += b.size;
  }

  void release_cache() {
    std::lock_guard<std::mutex> lk(mu_);
    release_cache_locked();
  }
  size_t live_bytes() const { std::lock_guard<std::mutex> lk(mu_); return live_bytes_; }
  size_t cached_bytes() const { std::lock_guard<std::mutex> lk(mu_); return cached_bytes_; }

 private:
  struct Block {
    void* ptr;
    size_t size;
    cudaEvent_t ev;
  };
  static size_t round_size(size_t bytes) {
    if (bytes == 0) bytes = 1;
    const size_t q = bytes < (size_t(1) << 20) ? 512 : (size_t(1) << 20);  // small: 512 B steps; large: 1 MiB
    return (bytes + q - 1) / q * q;
  }
  void release_cache_locked() {
    for (auto& kv : free_) {
      if (kv.second.ev) {
        cudaEventSynchronize(kv.second.ev);
        cudaEventDestroy(kv.second.ev);
      }
      cudaFree(kv.second.ptr);
    }
    cached_bytes_ = 0;
    free_.clear();
    cudaGetLastError();
  }

  int dev_;
  mutable std::mutex mu_;
  std::multimap<size_t, Block> free_;
  std::unordered_map<void*, size_t> live_;
  size_t live_bytes_ = 0;    // bytes of blocks handed out
  size_t cached_bytes_ = 0;  // bytes in the free lists (still held from the driver)
};

// Device scratch for one call, returned to the cache (fenced by the stream) when it goes.
class Scratch {
 public:
  Scratch(CachingAllocator& a, cudaStream_t st, size_t bytes) : a_(a), st_(st), p_(bytes ? a.alloc(bytes) : nullptr) {}
  ~Scratch() {
    if (p_) a_.free(p_, st_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* get() const { return p_; }
  float* f() const { return static_cast<float*>(p_); }

 private:
  CachingAllocator& a_;
  cudaStream_t st_;
  void* p_;
};

bool is_device_pointer(const void* p) {
  cudaPointerAttributes at{};
  const cudaError_t e = cudaPointerGetAttributes(&at, p);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return at.type == cudaMemoryTypeDevice || at.type == cudaMemoryTypeManaged;
}

// A context's stream (BackendContext): its own non-blocking CUDA stream on the backend's device.
class CudaStream final : public BackendStream {
 public:
  explicit CudaStream(int dev) : dev_(dev) {
    DeviceGuard g(dev_);
    check(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  ~CudaStream() override {
    cudaSetDevice(dev_);
    cudaStreamSynchronize(s_);
    cudaStreamDestroy(s_);
    cudaGetLastError();
  }
  void synchronize() override {
    DeviceGuard g(dev_);
    check(cudaStreamSynchronize(s_), "stream synchronize (a kernel issued on it failed)");
  }
  void* native_handle() const override { return s_; }
  // The backend default stream's work generation this stream has been ordered after.
  uint64_t seen_default_gen = 0;

 private:
  int dev_;
  cudaStream_t s_ = nullptr;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaDeviceInfo& info) : info_(info), alloc_(info.index) {
    DeviceGuard g(info_.index);
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  ~CudaBackend() override {
    cudaSetDevice(info_.index);
    for (auto& kv : rope_freqs_) alloc_.free(const_cast<double*>(kv.second), stream_);
    if (stream_) {
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
    cudaGetLastError();
  }

  DeviceKind device() const override { return DeviceKind::Cuda; }
  std::string describe() const override {
    return "cuda:" + std::to_string(info_.index) + " (" + info_.name + ", sm_" + std::to_string(info_.major) +
           std::to_string(info_.minor) + ", " + gib(info_.total_bytes) +
           // which prefill GEMM matmul runs (cuda_kernels.h: matmul_gemm_path() has the details)
           (cuda::cublaslt_available() ? ", GEMM cuBLASLt" : ", GEMM gemm_tc") + ")";
  }

  // ---- memory
  void* alloc(size_t bytes) override {
    DeviceGuard g(info_.index);
    return alloc_.alloc(bytes);
  }
  void free(void* p) override {  // called from destructors: must not throw
    if (!p) return;
    cudaSetDevice(info_.index);
    cudaStream_t s = stream_;
    try {
      s = st();
    } catch (...) {
    }
    alloc_.free(p, s);
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    if (!bytes) return;
    DeviceGuard g(info_.index);
    // From pageable memory the runtime stages the source before returning, so `src` may go away
    // right after; the transfer itself is ordered on the stream before any later kernel. Without a
    // context (weights at load time) the copy is waited for: the upload is then complete for
    // every stream, whatever the caller does next with the buffer.
    const bool in_context = current_stream() != nullptr;
    const cudaStream_t s = st();
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s), "upload");
    if (!in_context) check(cudaStreamSynchronize(s), "upload");
  }
  void download(void* dst, const void* src, size_t bytes) override {
    if (!bytes) return;
    DeviceGuard g(info_.index);
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st()), "download");
    check(cudaStreamSynchronize(st()), "download (a kernel issued before it failed)");
  }
  bool uses_host_memory() const override { return false; }

  // ---- streams and contexts
  std::unique_ptr<BackendStream> create_stream() override { return std::make_unique<CudaStream>(info_.index); }
  void synchronize() override {
    DeviceGuard g(info_.index);
    check(cudaDeviceSynchronize(), "synchronize (a kernel issued earlier failed)");
  }
  // f32, and bf16 (half the cache; the attention kernel converts on load).
  bool supports_kv_dtype(DType t) const override { return t == DType::F32 || t == DType::BF16; }

  // ---- compute
  void gemm(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
            int64_t M, int64_t N, int64_t K) override {
    DeviceGuard g(info_.index);
    cuda::matmul(X, ldx, W, wtype, bias, Y, ldy, M, N, K, s());
  }
  void rmsnorm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int64_t rows, int64_t n,
               float eps) override {
    DeviceGuard g(info_.index);
    cuda::rmsnorm(x, ldx, w, y, ldy, rows, n, eps, s());
  }
  void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy, int64_t rows,
                 int64_t n, float eps) override {
    DeviceGuard g(info_.index);
    cuda::layernorm(x, ldx, w, b, y, ldy, rows, n, eps, s());
  }
  void silu(const float* x, float* y, int64_t n) override { unary(cuda::Unary::Silu, x, y, n); }
  void gelu_erf(const float* x, float* y, int64_t n) override { unary(cuda::Unary::GeluErf, x, y, n); }
  void quick_gelu(const float* x, float* y, int64_t n) override { unary(cuda::Unary::QuickGelu, x, y, n); }
  void swiglu(const float* gate, const float* up, float* y, int64_t n) override {
    DeviceGuard g(info_.index);
    cuda::swiglu(gate, up, y, n, s());
  }
  void add(const float* a, const float* b, float* y, int64_t n) override {
    DeviceGuard g(info_.index);
    cuda::add(a, b, y, n, s());
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (!bytes || dst == src) return;
    DeviceGuard g(info_.index);
    check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st()), "copy");
  }
  void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    DeviceGuard g(info_.index);
    cuda::softmax(x, ldx, y, ldy, rows, n, s());
  }

  void rope(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
            const RopeParams& p) override {
    rope_either("rope", x, ld, n_tokens, n_heads, positions, p, cuda::rope);
  }
  // rope and rope_backward: the same argument checks and position staging, different kernels.
  template <typename Kernel>
  void rope_either(const char* op, float* x, int64_t ld, int64_t n_tokens, int64_t n_heads,
                   const int32_t* positions, const RopeParams& p, Kernel kernel) {
    const std::string o = op;
    EMOLLM_CHECK_ARG(p.head_dim > 0, o + ": head_dim must be > 0");
    const int64_t rot = p.rot_dim == 0 ? p.head_dim : p.rot_dim;
    EMOLLM_CHECK_ARG(rot > 0 && rot <= p.head_dim && rot % 2 == 0,
                     o + ": rot_dim must be even and in (0, head_dim], got " + std::to_string(rot));
    EMOLLM_CHECK_ARG(n_tokens >= 0 && n_heads >= 0, o + ": n_tokens and n_heads must be >= 0");
    EMOLLM_CHECK_ARG(n_tokens == 0 || positions != nullptr, o + ": positions is null");
    EMOLLM_CHECK_ARG(p.theta > 0 || p.inv_freq != nullptr, o + ": theta must be > 0");
    if (n_tokens == 0 || n_heads == 0) return;
    DeviceGuard g(info_.index);
    const double* invf = rope_frequencies(p, rot);
    // Device positions (the model code's) are used where they are; host ones are staged once.
    Scratch staged(alloc_, st(), is_device_pointer(positions) ? 0 : size_t(n_tokens) * sizeof(int32_t));
    if (staged.get()) upload(staged.get(), positions, size_t(n_tokens) * sizeof(int32_t));
    const int32_t* pos = staged.get() ? static_cast<const int32_t*>(staged.get()) : positions;
    kernel(x, ld, n_tokens, n_heads, p.head_dim, rot, p.layout, pos, invf, p.freq_scale, s());
  }

  void embedding_lookup(const void* table, DType dtype, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n,
                        float* out, int64_t ld_out) override {
    EMOLLM_CHECK_ARG(n >= 0 && dim >= 0 && vocab >= 0, "embedding_lookup: negative shape");
    if (n == 0) return;
    EMOLLM_CHECK_ARG(ids != nullptr, "embedding_lookup: ids is null");
    DeviceGuard g(info_.index);
    if (is_device_pointer(ids)) {  // the model code's uploaded ids: no round trip (the kernel guards the range)
      cuda::embedding(table, dtype, vocab, dim, ids, n, out, ld_out, s());
      return;
    }
    for (int64_t i = 0; i < n; ++i)
      EMOLLM_CHECK_ARG(ids[i] >= 0 && ids[i] < vocab, "embedding_lookup: token id " + std::to_string(ids[i]) +
                                                          " outside [0, " + std::to_string(vocab) + ")");
    Scratch dev(alloc_, st(), size_t(n) * sizeof(int32_t));
    upload(dev.get(), ids, size_t(n) * sizeof(int32_t));
    cuda::embedding(table, dtype, vocab, dim, static_cast<const int32_t*>(dev.get()), n, out, ld_out, s());
  }

  void attention(const float* q, const float* k, const float* v, float* out, const AttentionParams& p) override {
    if (p.kv_block_size != 0)  // supports_paged_kv() is false: callers gather the blocks first
      throw Error(ErrorCode::Internal, "cuda attention: a paged KV cache is not supported on this backend");
    DeviceGuard g(info_.index);
    const DType kt = kv_dtype(p);
    // A bf16 KV cache is the caller's choice of 16-bit attention operands: prefill then runs on
    // tensor cores. f32 caches, decode (few query rows) and other head sizes keep the f32 kernel.
    if (kt == DType::BF16 && p.n_q >= 16 && cuda::attention_tc_supported(p, kt)) {
      cuda::attention_tc(q, k, v, kt, out, p, s());
      return;
    }
    const size_t ws = cuda::attention_workspace_bytes(p);
    Scratch w(alloc_, st(), ws);
    cuda::attention(q, k, v, kt, out, p, w.get(), ws, s());
  }

  void mvp_projection(const float* X, const void* W1, const float* b1, const void* W2, const float* b2, const float* G,
                      DType wtype, float* Y, const MvpProjectionParams& p) override {
    EMOLLM_CHECK_ARG(p.tokens >= 0 && p.d_in > 0 && p.d_hid > 0 && p.d_out > 0 && p.n_heads > 0,
                     "mvp_projection: d_in, d_hid, d_out and n_heads must be positive");
    if (p.tokens == 0) return;
    DeviceGuard g(info_.index);
    if (wtype == DType::F32 || wtype == DType::BF16) {  // the fused kernel
      const size_t ws = cuda::mvp_projection_workspace_bytes(p);
      Scratch w(alloc_, st(), ws);
      cuda::mvp_projection(X, W1, b1, W2, b2, G, wtype, Y, p, w.get(), ws, s());
      return;
    }
    // Other weight types: composed from matmul (tensor cores / GEMV), GELU and the gated sum.
    const int64_t ldx = p.ldx ? p.ldx : p.d_in, ldy = p.ldy ? p.ldy : p.d_out;
    const int64_t T = p.tokens, H = p.n_heads, Dh = p.d_hid, Do = p.d_out;
    Scratch hidden(alloc_, st(), size_t(T * H * Dh) * sizeof(float));
    Scratch tmp(alloc_, st(), size_t(T * Do) * sizeof(float));
    cuda::matmul(X, ldx, W1, wtype, b1, hidden.f(), H * Dh, T, H * Dh, p.d_in, s());
    cuda::unary(cuda::Unary::GeluErf, hidden.f(), hidden.f(), T * H * Dh, s());
    const size_t w2_head_bytes = size_t(Do) * dtype_row_bytes(wtype, Dh);
    for (int64_t h = 0; h < H; ++h) {
      cuda::matmul(hidden.f() + h * Dh, H * Dh, static_cast<const uint8_t*>(W2) + size_t(h) * w2_head_bytes, wtype,
                   b2 ? b2 + h * Do : nullptr, tmp.f(), Do, T, Do, Dh, s());
      for (int64_t t0 = 0; t0 < T; t0 += 65535)
        cuda::gated_accumulate(Y + t0 * ldy, ldy, tmp.f() + t0 * Do, Do, G + h * Do, std::min<int64_t>(65535, T - t0),
                               Do, h == 0, s());
    }
  }

  // ---- data movement and row ops
  void copy_2d(void* dst, size_t ld_dst, const void* src, size_t ld_src, int64_t rows, size_t row_bytes) override {
    EMOLLM_CHECK_ARG(rows >= 0, "copy_2d: negative rows");
    if (rows == 0 || row_bytes == 0) return;
    EMOLLM_CHECK_ARG(rows == 1 || (ld_dst >= row_bytes && ld_src >= row_bytes), "copy_2d: stride smaller than a row");
    DeviceGuard g(info_.index);
    const size_t ldd = rows == 1 ? row_bytes : ld_dst, lds = rows == 1 ? row_bytes : ld_src;
    check(cudaMemcpy2DAsync(dst, ldd, src, lds, row_bytes, size_t(rows), cudaMemcpyDeviceToDevice, st()), "copy_2d");
  }
  void extract_patches(const float* images, float* cols, int64_t ld_cols, const PatchParams& p) override {
    DeviceGuard g(info_.index);
    cuda::extract_patches(images, cols, ld_cols, p, s());
  }
  void convert(const void* src, DType src_type, void* dst, DType dst_type, int64_t n) override {
    DeviceGuard g(info_.index);
    cuda::convert(src, src_type, dst, dst_type, n, s());
  }
  void add_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    row_op(cuda::RowOp::AddRow, x, ldx, v, y, ldy, rows, n, false);
  }
  void mul_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    row_op(cuda::RowOp::MulRow, x, ldx, v, y, ldy, rows, n, false);
  }
  void mul_row_add(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n,
                   bool accumulate) override {
    row_op(cuda::RowOp::MulRowAdd, x, ldx, v, y, ldy, rows, n, accumulate);
  }
  void scale(const float* x, float sc, float* y, int64_t n) override {
    DeviceGuard g(info_.index);
    cuda::scale(x, sc, y, n, s());
  }

  // ---- training: kernels/cuda/backward.cu (the MVP trainer's decoder backward)
  void gemm_backward_x(const float* dY, int64_t lddy, const void* W, DType wtype, float* dX, int64_t lddx, int64_t M,
                       int64_t N, int64_t K, bool accumulate) override {
    DeviceGuard g(info_.index);
    cuda::gemm_backward_x(dY, lddy, W, wtype, dX, lddx, M, N, K, accumulate, s());
  }
  void rmsnorm_backward(const float* x, int64_t ldx, const float* w, const float* dy, int64_t lddy, float* dx,
                        int64_t lddx, int64_t rows, int64_t n, float eps, bool accumulate) override {
    DeviceGuard g(info_.index);
    cuda::rmsnorm_backward(x, ldx, w, dy, lddy, dx, lddx, rows, n, eps, accumulate, s());
  }
  void swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup,
                       int64_t n) override {
    DeviceGuard g(info_.index);
    cuda::swiglu_backward(gate, up, dy, dgate, dup, n, s());
  }
  void rope_backward(float* dx, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
                     const RopeParams& p) override {
    rope_either("rope_backward", dx, ld, n_tokens, n_heads, positions, p, cuda::rope_backward);
  }
  void attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                          const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p) override {
    if (p.kv_block_size != 0 || p.kv_dtype != DType::F32)
      throw Error(ErrorCode::Unsupported, "cuda attention_backward: f32 contiguous K/V only");
    DeviceGuard g(info_.index);
    const size_t ws = cuda::attention_backward_workspace_bytes(p);
    Scratch w(alloc_, st(), ws);
    cuda::attention_backward(q, k, v, out, dout, lse, dq, dk, dv, p, w.get(), ws, s());
  }
  double cross_entropy(const float* logits, int64_t ld, const int32_t* targets, int64_t rows, int64_t V, float scale,
                       float* dlogits) override {
    EMOLLM_CHECK_ARG(rows >= 0 && V > 0, "cross_entropy: rows >= 0 and V > 0 are required");
    if (rows == 0) return 0.0;
    EMOLLM_CHECK_ARG(targets != nullptr, "cross_entropy: targets is null");
    DeviceGuard g(info_.index);
    // host targets (checked here) are staged; device ones are the caller's to have checked
    Scratch staged(alloc_, st(), is_device_pointer(targets) ? 0 : size_t(rows) * sizeof(int32_t));
    if (staged.get()) {
      for (int64_t r = 0; r < rows; ++r)
        EMOLLM_CHECK_ARG(targets[r] >= 0 && targets[r] < V, "cross_entropy: target " + std::to_string(targets[r]) +
                                                                " outside [0, " + std::to_string(V) + ")");
      upload(staged.get(), targets, size_t(rows) * sizeof(int32_t));
    }
    const int32_t* tg = staged.get() ? static_cast<const int32_t*>(staged.get()) : targets;
    Scratch row_loss(alloc_, st(), size_t(rows) * sizeof(double));
    cuda::cross_entropy(logits, ld, tg, rows, V, scale, dlogits, static_cast<double*>(row_loss.get()), s());
    std::vector<double> host(static_cast<size_t>(rows));
    download(host.data(), row_loss.get(), host.size() * sizeof(double));
    double sum = 0.0;  // in row order, as the CPU kernel adds them
    for (double l : host) sum += l;
    return sum;
  }

 private:
  void row_op(cuda::RowOp op, const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows,
              int64_t n, bool acc) {
    EMOLLM_CHECK_ARG(rows >= 0 && n >= 0, "row op: negative shape");
    DeviceGuard g(info_.index);
    for (int64_t r0 = 0; r0 < rows; r0 += 65535) {  // grid.y holds at most 65535 rows per launch
      const int64_t nr = std::min<int64_t>(65535, rows - r0);
      cuda::row_broadcast(op, x + r0 * ldx, ldx, v, y + r0 * ldy, ldy, nr, n, acc, s());
    }
  }

  DType kv_dtype(const AttentionParams& p) const {
    require_kv_dtype(p.kv_dtype);
    return p.kv_dtype;
  }

  void unary(cuda::Unary op, const float* x, float* y, int64_t n) {
    DeviceGuard g(info_.index);
    cuda::unary(op, x, y, n, s());
  }
  // The stream this thread's calls go to: the bound context's (ContextScope), else the backend's
  // own. Ordering across them: a context stream waits (an event, recorded only when something new
  // was issued on the default stream since it last looked) for the work issued on the default
  // stream before it, so what was computed or copied there (weights, a shared encode) is complete
  // before a context reads it. The reverse needs no fence: download() and synchronize() wait.
  cudaStream_t st() const {
    if (BackendStream* bs = current_stream()) {
      auto* cs = static_cast<CudaStream*>(bs);  // current_stream() only returns streams of this backend
      const uint64_t gen = default_gen_.load(std::memory_order_acquire);
      if (cs->seen_default_gen != gen) {
        cudaEvent_t ev;
        check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
        check(cudaEventRecord(ev, stream_), "cudaEventRecord");
        check(cudaStreamWaitEvent(static_cast<cudaStream_t>(cs->native_handle()), ev, 0), "cudaStreamWaitEvent");
        cudaEventDestroy(ev);  // released once the wait has been satisfied
        cs->seen_default_gen = gen;
      }
      return static_cast<cudaStream_t>(cs->native_handle());
    }
    default_gen_.fetch_add(1, std::memory_order_acq_rel);
    return stream_;
  }
  cuda::Stream s() const { return reinterpret_cast<cuda::Stream>(st()); }

  // The rot/2 inverse frequencies of a RoPE configuration, in double on the device: computed as
  // kernels/cpu/rope.cpp does (theta^(-2i/rot), or RopeParams::inv_freq, a host parameter) and
  // uploaded on its first use, then found again by every later call with the same configuration
  // (a model has a handful: its rope_dim and scaling, the M-RoPE sections, a vision tower's 2-D
  // halves). Keyed by content, not by pointer, so a freed and reused host array cannot alias.
  const double* rope_frequencies(const RopeParams& p, int64_t rot) {
    const int64_t half = rot / 2;
    std::string key(reinterpret_cast<const char*>(&rot), sizeof rot);
    if (p.inv_freq) {
      key.push_back('f');
      key.append(reinterpret_cast<const char*>(p.inv_freq), size_t(half) * sizeof(float));
    } else {
      key.push_back('t');
      key.append(reinterpret_cast<const char*>(&p.theta), sizeof p.theta);
    }
    std::lock_guard<std::mutex> lk(rope_mu_);
    auto it = rope_freqs_.find(key);
    if (it != rope_freqs_.end()) return it->second;
    std::vector<double> invf(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i)
      invf[size_t(i)] = p.inv_freq ? double(p.inv_freq[i]) : std::pow(double(p.theta), -double(2 * i) / double(rot));
    auto* d = static_cast<double*>(alloc_.alloc(invf.size() * sizeof(double)));
    // Waited for here (once per configuration): the table must be complete for every stream.
    const cudaStream_t stream = st();
    check(cudaMemcpyAsync(d, invf.data(), invf.size() * sizeof(double), cudaMemcpyHostToDevice, stream), "rope frequencies");
    check(cudaStreamSynchronize(stream), "rope frequencies");
    rope_freqs_.emplace(std::move(key), d);
    return d;
  }

  CudaDeviceInfo info_;
  CachingAllocator alloc_;
  cudaStream_t stream_ = nullptr;
  mutable std::atomic<uint64_t> default_gen_{1};
  std::mutex rope_mu_;
  std::map<std::string, const double*> rope_freqs_;  // rope_frequencies(): configuration -> device table
};

}  // namespace

int cuda_device_count() { return device_count_or_throw(); }

std::vector<CudaDeviceInfo> cuda_devices() {
  const int n = device_count_or_throw();
  std::vector<CudaDeviceInfo> out;
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, i), "cudaGetDeviceProperties");
    CudaDeviceInfo d;
    d.index = i;
    d.name = prop.name;
    d.major = prop.major;
    d.minor = prop.minor;
    d.total_bytes = prop.totalGlobalMem;
    d.multiprocessors = prop.multiProcessorCount;
    out.push_back(d);
  }
  return out;
}

std::unique_ptr<Backend> make_cuda_backend(int index) {
  const std::vector<CudaDeviceInfo> devs = cuda_devices();
  EMOLLM_CHECK_ARG(index >= 0 && index < int(devs.size()),
                   "device 'cuda:" + std::to_string(index) + "': this machine has " + std::to_string(devs.size()) +
                       " CUDA device(s) (cuda:0 .. cuda:" + std::to_string(int(devs.size()) - 1) + ")");
  const CudaDeviceInfo& d = devs[size_t(index)];
  if (d.major < 8)
    throw Error(ErrorCode::Unsupported, "device 'cuda:" + std::to_string(index) + "' (" + d.name + ", sm_" +
                                            std::to_string(d.major) + std::to_string(d.minor) +
                                            ") is older than sm_80; emollm's CUDA kernels need Ampere or newer");
  return std::make_unique<CudaBackend>(d);
}

}  // namespace emollm
