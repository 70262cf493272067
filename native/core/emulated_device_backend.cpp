// The strict emulated device (see emulated_device_backend.h): device addresses that fault on the
// host, a shadow block per allocation that the CPU kernels compute on, and a bounds check of every
// pointer argument of every op before it is translated to its shadow.
#include "core/emulated_device_backend.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#define EMOLLM_EMULATED_RESERVE 1
#endif

#include "base/arena.h"
#include "base/error.h"
#include "base/thread_pool.h"

namespace emollm {

bool emulated_device_enabled() {
  const char* v = std::getenv("EMOLLM_EMULATED_DEVICE");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

namespace {

// Bytes of `rows` rows of `n` elements of `elem` bytes with a row stride of `ld` elements.
size_t span(int64_t rows, int64_t ld, int64_t n, size_t elem) {
  if (rows <= 0 || n <= 0) return 0;
  return size_t((rows - 1) * ld + n) * elem;
}
size_t elem_bytes(DType t) { return dtype_block_bytes(t) / size_t(dtype_block_elems(t)); }

class EmulatedDeviceBackend final : public Backend {
 public:
  explicit EmulatedDeviceBackend(std::shared_ptr<ThreadPool> pool) : cpu_(make_cpu_backend(std::move(pool))) {}
  ~EmulatedDeviceBackend() override {
    for (auto& b : blocks_) release(b.first, b.second);
  }

  DeviceKind device() const override { return DeviceKind::Emulated; }
  std::string describe() const override { return "emulated device (strict, for tests; " + cpu_->describe() + ")"; }
  bool uses_host_memory() const override { return false; }

  // ---- memory
  void* alloc(size_t bytes) override {
    const size_t n = bytes ? bytes : 1;
    Block b;
    b.bytes = n;
    b.shadow = aligned_alloc_bytes(n);
#if defined(EMOLLM_EMULATED_RESERVE)
    void* addr = mmap(nullptr, n, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (addr == MAP_FAILED) {
      aligned_free(b.shadow);
      throw Error(ErrorCode::OutOfMemory, "emulated device: cannot reserve " + std::to_string(n) + " bytes of addresses");
    }
#else
    void* addr = aligned_alloc_bytes(n);  // no inaccessible reservation here: host reads go unnoticed
#endif
    std::lock_guard<std::mutex> lk(mu_);
    blocks_[uintptr_t(addr)] = b;
    return addr;
  }
  void free(void* p) override {
    if (!p) return;
    Block b;
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto it = blocks_.find(uintptr_t(p));
      if (it == blocks_.end())
        throw Error(ErrorCode::Internal, "emulated device: free of a pointer that is not the start of a block");
      b = it->second;
      blocks_.erase(it);
    }
    release(uintptr_t(p), b);
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    void* d = dev(dst, bytes, "upload", "dst");
    host(src, "upload", "src");
    std::memcpy(d, src, bytes);
  }
  void download(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    const void* s = dev(src, bytes, "download", "src");
    host(dst, "download", "dst");
    std::memcpy(dst, s, bytes);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    cpu_->copy(dev(dst, bytes, "copy", "dst"), dev(src, bytes, "copy", "src"), bytes);
  }

  // ---- compute: check and translate every pointer, then the CPU kernel
  void gemm(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
            int64_t M, int64_t N, int64_t K) override {
    const char* op = "gemm";
    cpu_->gemm(dev(X, span(M, ldx, K, 4), op, "X"), ldx, dev(W, size_t(N) * dtype_row_bytes(wtype, K), op, "W"), wtype,
               opt(bias, size_t(N) * 4, op, "bias"), dev(Y, span(M, ldy, N, 4), op, "Y"), ldy, M, N, K);
  }
  void rmsnorm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int64_t rows, int64_t n,
               float eps) override {
    const char* op = "rmsnorm";
    cpu_->rmsnorm(dev(x, span(rows, ldx, n, 4), op, "x"), ldx, dev(w, size_t(n) * 4, op, "w"),
                  dev(y, span(rows, ldy, n, 4), op, "y"), ldy, rows, n, eps);
  }
  void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy, int64_t rows,
                 int64_t n, float eps) override {
    const char* op = "layernorm";
    cpu_->layernorm(dev(x, span(rows, ldx, n, 4), op, "x"), ldx, opt(w, size_t(n) * 4, op, "w"),
                    opt(b, size_t(n) * 4, op, "b"), dev(y, span(rows, ldy, n, 4), op, "y"), ldy, rows, n, eps);
  }
  void silu(const float* x, float* y, int64_t n) override { cpu_->silu(dev(x, n * 4, "silu", "x"), dev(y, n * 4, "silu", "y"), n); }
  void gelu_erf(const float* x, float* y, int64_t n) override {
    cpu_->gelu_erf(dev(x, n * 4, "gelu_erf", "x"), dev(y, n * 4, "gelu_erf", "y"), n);
  }
  void quick_gelu(const float* x, float* y, int64_t n) override {
    cpu_->quick_gelu(dev(x, n * 4, "quick_gelu", "x"), dev(y, n * 4, "quick_gelu", "y"), n);
  }
  void swiglu(const float* gate, const float* up, float* y, int64_t n) override {
    cpu_->swiglu(dev(gate, n * 4, "swiglu", "gate"), dev(up, n * 4, "swiglu", "up"), dev(y, n * 4, "swiglu", "y"), n);
  }
  void add(const float* a, const float* b, float* y, int64_t n) override {
    cpu_->add(dev(a, n * 4, "add", "a"), dev(b, n * 4, "add", "b"), dev(y, n * 4, "add", "y"), n);
  }
  void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    cpu_->softmax(dev(x, span(rows, ldx, n, 4), "softmax", "x"), ldx, dev(y, span(rows, ldy, n, 4), "softmax", "y"), ldy,
                  rows, n);
  }
  void rope(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
            const RopeParams& p) override {
    // p.inv_freq is a parameter, read on the host (as the CUDA backend does): not checked.
    cpu_->rope(dev(x, span(n_tokens, ld, n_heads * p.head_dim, 4), "rope", "x"), ld, n_tokens, n_heads,
               dev(positions, size_t(n_tokens) * 4, "rope", "positions"), p);
  }
  void embedding_lookup(const void* table, DType dtype, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n,
                        float* out, int64_t ld_out) override {
    const char* op = "embedding_lookup";
    cpu_->embedding_lookup(dev(table, size_t(vocab) * dtype_row_bytes(dtype, dim), op, "table"), dtype, vocab, dim,
                           dev(ids, size_t(n) * 4, op, "ids"), n, dev(out, span(n, ld_out, dim, 4), op, "out"), ld_out);
  }
  void attention(const float* q, const float* k, const float* v, float* out, const AttentionParams& p) override {
    const char* op = "attention";
    if (p.kv_block_size != 0)  // supports_paged_kv() is false: callers gather the blocks first
      throw Error(ErrorCode::Internal, "emulated device attention: a paged KV cache is not supported");
    const size_t kv = elem_bytes(p.kv_dtype);
    cpu_->attention(dev(q, span(p.n_q, p.ldq, p.n_heads * p.head_dim, 4), op, "q"),
                    dev(k, span(p.n_kv, p.ldk, p.n_kv_heads * p.head_dim, kv), op, "k"),
                    dev(v, span(p.n_kv, p.ldv, p.n_kv_heads * p.head_dim, kv), op, "v"),
                    dev(out, span(p.n_q, p.ldo, p.n_heads * p.head_dim, 4), op, "out"), p);
  }
  void mvp_projection(const float* X, const void* W1, const float* b1, const void* W2, const float* b2, const float* G,
                      DType wtype, float* Y, const MvpProjectionParams& p) override {
    const char* op = "mvp_projection";
    const int64_t H = p.n_heads;
    cpu_->mvp_projection(dev(X, span(p.tokens, p.ldx, p.d_in, 4), op, "X"),
                         dev(W1, size_t(H * p.d_hid) * dtype_row_bytes(wtype, p.d_in), op, "W1"),
                         opt(b1, size_t(H * p.d_hid) * 4, op, "b1"),
                         dev(W2, size_t(H * p.d_out) * dtype_row_bytes(wtype, p.d_hid), op, "W2"),
                         opt(b2, size_t(H * p.d_out) * 4, op, "b2"), dev(G, size_t(H * p.d_out) * 4, op, "G"), wtype,
                         dev(Y, span(p.tokens, p.ldy, p.d_out, 4), op, "Y"), p);
  }
  void copy_2d(void* dst, size_t ld_dst, const void* src, size_t ld_src, int64_t rows, size_t row_bytes) override {
    cpu_->copy_2d(dev(dst, span(rows, int64_t(ld_dst), int64_t(row_bytes), 1), "copy_2d", "dst"), ld_dst,
                  dev(src, span(rows, int64_t(ld_src), int64_t(row_bytes), 1), "copy_2d", "src"), ld_src, rows, row_bytes);
  }
  void extract_patches(const float* images, float* cols, int64_t ld_cols, const PatchParams& p) override {
    const int64_t rows = p.batch * p.patches_h() * p.patches_w();
    cpu_->extract_patches(dev(images, size_t(p.batch * p.channels * p.height * p.width) * 4, "extract_patches", "images"),
                          dev(cols, span(rows, ld_cols ? ld_cols : p.row_elems(), p.row_elems(), 4), "extract_patches", "cols"),
                          ld_cols, p);
  }
  void convert(const void* src, DType src_type, void* dst, DType dst_type, int64_t n) override {
    cpu_->convert(dev(src, size_t(n) * elem_bytes(src_type), "convert", "src"), src_type,
                  dev(dst, size_t(n) * elem_bytes(dst_type), "convert", "dst"), dst_type, n);
  }
  void add_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    cpu_->add_row(dev(x, span(rows, ldx, n, 4), "add_row", "x"), ldx, dev(v, size_t(n) * 4, "add_row", "v"),
                  dev(y, span(rows, ldy, n, 4), "add_row", "y"), ldy, rows, n);
  }
  void mul_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    cpu_->mul_row(dev(x, span(rows, ldx, n, 4), "mul_row", "x"), ldx, dev(v, size_t(n) * 4, "mul_row", "v"),
                  dev(y, span(rows, ldy, n, 4), "mul_row", "y"), ldy, rows, n);
  }
  void mul_row_add(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n,
                   bool accumulate) override {
    cpu_->mul_row_add(dev(x, span(rows, ldx, n, 4), "mul_row_add", "x"), ldx, dev(v, size_t(n) * 4, "mul_row_add", "v"),
                      dev(y, span(rows, ldy, n, 4), "mul_row_add", "y"), ldy, rows, n, accumulate);
  }
  void scale(const float* x, float s, float* y, int64_t n) override {
    cpu_->scale(dev(x, n * 4, "scale", "x"), s, dev(y, n * 4, "scale", "y"), n);
  }

  // ---- training: the CPU backend's backward ops on the shadows, every pointer checked
  void gemm_backward_x(const float* dY, int64_t lddy, const void* W, DType wtype, float* dX, int64_t lddx, int64_t M,
                       int64_t N, int64_t K, bool accumulate) override {
    const char* op = "gemm_backward_x";
    cpu_->gemm_backward_x(dev(dY, span(M, lddy, N, 4), op, "dY"), lddy,
                          dev(W, size_t(N) * dtype_row_bytes(wtype, K), op, "W"), wtype,
                          dev(dX, span(M, lddx, K, 4), op, "dX"), lddx, M, N, K, accumulate);
  }
  void rmsnorm_backward(const float* x, int64_t ldx, const float* w, const float* dy, int64_t lddy, float* dx,
                        int64_t lddx, int64_t rows, int64_t n, float eps, bool accumulate) override {
    const char* op = "rmsnorm_backward";
    cpu_->rmsnorm_backward(dev(x, span(rows, ldx, n, 4), op, "x"), ldx, opt(w, size_t(n) * 4, op, "w"),
                           dev(dy, span(rows, lddy, n, 4), op, "dy"), lddy, dev(dx, span(rows, lddx, n, 4), op, "dx"),
                           lddx, rows, n, eps, accumulate);
  }
  void swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup,
                       int64_t n) override {
    const char* op = "swiglu_backward";
    cpu_->swiglu_backward(dev(gate, n * 4, op, "gate"), dev(up, n * 4, op, "up"), dev(dy, n * 4, op, "dy"),
                          dev(dgate, n * 4, op, "dgate"), dev(dup, n * 4, op, "dup"), n);
  }
  void rope_backward(float* dx, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
                     const RopeParams& p) override {
    cpu_->rope_backward(dev(dx, span(n_tokens, ld, n_heads * p.head_dim, 4), "rope_backward", "dx"), ld, n_tokens,
                        n_heads, dev(positions, size_t(n_tokens) * 4, "rope_backward", "positions"), p);
  }
  void attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                          const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p) override {
    const char* op = "attention_backward";
    if (p.kv_block_size != 0 || p.kv_dtype != DType::F32)
      throw Error(ErrorCode::Unsupported, "emulated device attention_backward: f32 contiguous K/V only");
    const int64_t qw = p.n_heads * p.head_dim, kw = p.n_kv_heads * p.head_dim;
    cpu_->attention_backward(dev(q, span(p.n_q, p.ldq, qw, 4), op, "q"), dev(k, span(p.n_kv, p.ldk, kw, 4), op, "k"),
                             dev(v, span(p.n_kv, p.ldv, kw, 4), op, "v"), dev(out, span(p.n_q, p.ldo, qw, 4), op, "out"),
                             dev(dout, span(p.n_q, p.ldo, qw, 4), op, "dout"),
                             opt(lse, size_t(p.n_q * p.n_heads) * 4, op, "lse"),
                             dev(dq, span(p.n_q, p.ldq, qw, 4), op, "dq"), dev(dk, span(p.n_kv, p.ldk, kw, 4), op, "dk"),
                             dev(dv, span(p.n_kv, p.ldv, kw, 4), op, "dv"), p);
  }
  double cross_entropy(const float* logits, int64_t ld, const int32_t* targets, int64_t rows, int64_t V, float scale,
                       float* dlogits) override {
    const char* op = "cross_entropy";
    return cpu_->cross_entropy(dev(logits, span(rows, ld, V, 4), op, "logits"), ld,
                               dev(targets, size_t(rows) * 4, op, "targets"), rows, V, scale,
                               opt(dlogits, span(rows, ld, V, 4), op, "dlogits"));
  }

 private:
  struct Block {
    size_t bytes = 0;
    void* shadow = nullptr;
  };
  static void release(uintptr_t addr, const Block& b) {
#if defined(EMOLLM_EMULATED_RESERVE)
    munmap(reinterpret_cast<void*>(addr), b.bytes);
#else
    aligned_free(reinterpret_cast<void*>(addr));
#endif
    aligned_free(b.shadow);
  }
  // The block holding [p, p + bytes), or null.
  const Block* find(uintptr_t p, size_t bytes, uintptr_t* base) const {
    auto it = blocks_.upper_bound(p);
    if (it == blocks_.begin()) return nullptr;
    --it;
    if (p - it->first + (bytes ? bytes : 1) > it->second.bytes) return nullptr;
    *base = it->first;
    return &it->second;
  }
  [[noreturn]] static void refuse(const char* op, const char* arg, const void* p, size_t bytes, const char* why) {
    char addr[32];
    std::snprintf(addr, sizeof addr, "%p", p);
    throw Error(ErrorCode::InvalidArgument, std::string("emulated device: ") + op + ": argument " + arg + " (" + addr +
                                                ", " + std::to_string(bytes) + " bytes) " + why);
  }
  // The shadow of device range [p, p + bytes); throws naming op and arg when it is not one.
  template <typename T>
  T* dev(T* p, size_t bytes, const char* op, const char* arg) const {
    if (bytes == 0) return p ? shadow_of(p) : nullptr;
    if (!p) refuse(op, arg, p, bytes, "is null");
    return shadow_of(p, bytes, op, arg);
  }
  template <typename T>
  T* dev(T* p, int64_t bytes, const char* op, const char* arg) const { return dev(p, size_t(bytes > 0 ? bytes : 0), op, arg); }
  template <typename T>
  T* opt(T* p, size_t bytes, const char* op, const char* arg) const { return p ? dev(p, bytes, op, arg) : nullptr; }
  template <typename T>
  T* shadow_of(T* p, size_t bytes = 0, const char* op = "", const char* arg = "") const {
    std::lock_guard<std::mutex> lk(mu_);
    uintptr_t base = 0;
    const Block* b = find(uintptr_t(p), bytes, &base);
    if (!b) {
      if (bytes == 0) return p;  // an empty range: nothing is read or written
      refuse(op, arg, p, bytes,
             "is not inside a block of this device's memory (a host pointer, or past the end of an allocation)");
    }
    using Byte = typename std::conditional<std::is_const<T>::value, const uint8_t, uint8_t>::type;
    return reinterpret_cast<T*>(static_cast<Byte*>(b->shadow) + (uintptr_t(p) - base));
  }
  // The host side of a transfer must not be device memory.
  void host(const void* p, const char* op, const char* arg) const {
    std::lock_guard<std::mutex> lk(mu_);
    uintptr_t base = 0;
    if (find(uintptr_t(p), 1, &base)) refuse(op, arg, p, 1, "is device memory where host memory is expected");
  }

  std::unique_ptr<Backend> cpu_;
  mutable std::mutex mu_;
  std::map<uintptr_t, Block> blocks_;
};

}  // namespace

std::unique_ptr<Backend> make_emulated_device_backend(std::shared_ptr<ThreadPool> pool) {
  return std::make_unique<EmulatedDeviceBackend>(std::move(pool));
}

}  // namespace emollm
