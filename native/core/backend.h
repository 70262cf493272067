// The compute backend interface: model code calls these and never a kernel directly, so a CUDA
// backend plugs in without changing the model code. Pointers passed to a backend's compute calls
// live in that backend's memory (host memory for the CPU backend; buffers from alloc() in
// general, filled with upload()). Offsetting such a pointer (row i of a buffer) is fine on every
// backend; dereferencing it on the host is only fine when uses_host_memory().
//
// Ordering: every call is issued on the calling thread's current stream (see BackendContext and
// ContextScope below) or, when none is bound, on the backend's default stream. Calls on one
// stream run in issue order; download() and synchronize() are the points where the host waits.
// The CPU backend runs every call to completion before returning, so its streams are trivial.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "kernels/op_params.h"

namespace emollm {

class ThreadPool;
class Backend;

// A weight matrix a backend keeps in a layout of its own for gemm() (the CPU's 16-row interleaved
// q4_0 / q8_0 layout, kernels.h quant_repack), from Backend::pack_gemm_weight. While it lives,
// gemm() with that exact W reads the packed copy; destroying it returns W to the standard layout.
// Owned by whoever placed the weights (core/backend_weights.h); the backend must outlive it.
class PackedGemmWeight {
 public:
  virtual ~PackedGemmWeight() = default;
  // Bytes of the packed copy.
  virtual size_t bytes() const = 0;
};

// What a weight matrix offered to Backend::pack_gemm_weight will meet: any number of activation
// rows (decoders: M = 1 decode and prefill), or only many (vision towers, projectors: hundreds of
// rows per call), for which the CPU keeps bf16 matrices in its GEMM's panels (kernels.h
// bf16_pack_panels) instead of the layout the decode GEMV reads.
enum class GemmRows { Any, Many };

// Opt-in (off by default; EMOLLM_BF16_DECODER_PANELS=1 or the setter, read when weights are
// placed): the CPU keeps a decoder's bf16 matrices of 2 MiB or more (GemmRows::Any) in the GEMM
// panels too, in place of the 2 MiB-page copy (not beside it: same memory), so that batched decode
// (M <= 64) streams them once per call as one sequential stream (kernels.h gemm_bf16_panels). Every
// M then rounds X to bf16 (the row-major layout keeps X exact at M <= 8, the decode GEMV): a row's
// logits are the same bits alone and in any batch, but M = 1 differs from the default layout's.
void set_bf16_decoder_panels(bool on);
bool bf16_decoder_panels();

// The smallest decoder BF16 / F16 matrix (GemmRows::Any) the CPU copies (same layout, or panels
// with bf16_decoder_panels()): 256 KiB when on (default; off, tests only: 2 MiB, the previous
// threshold), so that GQA models' small k / v matrices join the fused q / k / v decode dispatch.
// Read when weights are placed; process-wide.
void set_small_half_copies(bool on);
bool small_half_copies();
// A/B only (decode_switch_ab packed_whole_huge; off, the default): every packed copy of 256 KiB or
// more (K-quant / q4_0 / q8_0 records, bf16 / f16 / f32 copies) placed in whole 2 MiB pages, its
// size rounded up to them, where by default only the whole 2 MiB pages of a copy are huge pages
// and its tail (and any copy under 2 MiB: a GQA model's k / v) stays in 4 KiB pages, on which
// Zen 4's hardware prefetchers stop at every page edge. Costs up to 2 MiB of memory a matrix
// (the 1.1B q4_k_m: +249 MiB resident). Session 28 (Zen 4, 1 thread, thread CPU time, load 10-12):
// the 1.1B q4_k_m decode 1.063-1.077x, q6_k 1.044-1.089x (A/As with a copy of the file
// 0.969-1.007x), the fused q / k / v at ~0.8x the bytes a second of gate / up without it. Read
// when weights are placed; process-wide. Same bytes, same outputs.
void set_packed_whole_huge_pages(bool on);
// (set_packed_arena, the default since session 28, gives the same gain without the memory.)
// The packed copies' placement (decode_switch_ab packed_arena; default on; off = each copy its own
// memory, as before session 28, only its whole 2 MiB pages huge pages): a model's packed copies go back to back, each
// at a 4 KiB boundary, into arenas of 2 MiB pages (64 MiB chunks, or a larger copy's size rounded up
// to 2 MiB), so that tails and copies under 2 MiB are in huge pages too, at the cost of at most one
// partly used huge page a chunk instead of one a matrix (set_packed_whole_huge_pages, which wins
// when both are on). A chunk is freed with the last copy in it; a copy released while its chunk
// lives has its pages given back. Read when weights are placed; process-wide. Same bytes, same
// outputs. Zen 4, 1 thread: the 1.1B decode on / off 1.00-1.11x (q4_k_m 1.07-1.10x), as fast as
// whole pages a copy, at +0-6 MiB resident (whole pages a copy: +45-273 MiB); backend.cpp has the
// figures. packed_arena_chunks / _chunk_bytes: the chunks alive and their bytes (tests).
void set_packed_arena(bool on);
bool packed_arena();
size_t packed_arena_chunks();
size_t packed_arena_chunk_bytes();
// Decoder F32 matrices (GemmRows::Any, from half_copy_min_bytes) copied into 2 MiB pages as the
// BF16 / F16 ones are (same layout, the same kernels read it: same bits), the file's pages
// released. Default on (quiet A/B: decode 1.14-1.25x); EMOLLM_F32_HUGE_COPIES=0 or
// set_f32_huge_copies(false) before the weights are placed reads the file's pages. Process-wide.
void set_f32_huge_copies(bool on);
bool f32_huge_copies();
// The CPU backend's gemm_multi at M > 1 on bf16 matrices with 2 MiB-page copies (a bf16 decoder's
// prefill q / k / v, gate / up): one gemm_bf16_rows_multi (X packed once, one thread split; bit
// for bit one gemm() each), default on; off (tests: the reference): one gemm() each.
// Process-wide, read at each call.
void set_bf16_prefill_fuse(bool on);
bool bf16_prefill_fuse();


// Emulated: the strict test device of core/emulated_device_backend.h (only when enabled there).
enum class DeviceKind { Cpu, Cuda, Emulated };

struct BackendOptions {
  DeviceKind device = DeviceKind::Cpu;
  int threads = 0;  // CPU compute threads; 0 = physical cores
};

// An ordered queue of work on one backend (a cudaStream_t for CUDA). One per execution context,
// so that two contexts (two sessions, a vision encode beside a decode) can overlap on a device
// without one waiting for the other's kernels.
class BackendStream {
 public:
  virtual ~BackendStream() = default;
  // Blocks the calling thread until everything issued on this stream has finished.
  virtual void synchronize() = 0;
  // The device's own handle (cudaStream_t on CUDA); null where there is none (CPU).
  virtual void* native_handle() const { return nullptr; }
};

// Memory from a backend's alloc(), freed with it (RAII). The backend must outlive the buffer.
class BackendBuffer {
 public:
  BackendBuffer() = default;
  BackendBuffer(Backend& be, size_t bytes) { allocate(be, bytes); }
  ~BackendBuffer() { release(); }
  BackendBuffer(BackendBuffer&& o) noexcept : be_(o.be_), bytes_(o.bytes_), data_(o.data_) {
    o.data_ = nullptr;
    o.bytes_ = 0;
  }
  BackendBuffer& operator=(BackendBuffer&& o) noexcept;
  BackendBuffer(const BackendBuffer&) = delete;
  BackendBuffer& operator=(const BackendBuffer&) = delete;
  // Frees what it holds, then allocates `bytes` from `be`.
  void allocate(Backend& be, size_t bytes);
  void release();
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Backend* backend() const { return be_; }

 private:
  Backend* be_ = nullptr;
  size_t bytes_ = 0;
  void* data_ = nullptr;
};

// Scratch memory of one execution context: what a backend op needs for intermediates (the hidden
// activations of the composed mvp_projection, a dequantised weight tile, a split-K partial sum)
// without an alloc/free per call, which is costly on a device. A stack: take() hands out aligned
// blocks of the backend's memory, a Frame gives back everything taken since it opened. Blocks stay
// valid until their frame closes (the workspace grows in chunks; it never moves a live block).
class Workspace {
 public:
  explicit Workspace(Backend& be) : be_(be) {}
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  // `bytes` of the backend's memory, 64-byte aligned, valid until the enclosing Frame closes.
  void* take(size_t bytes);
  template <typename T> T* take_n(int64_t n) { return static_cast<T*>(take(size_t(n) * sizeof(T))); }
  // Bytes reserved in total (all chunks): what a context costs between calls.
  size_t capacity() const;
  Backend& backend() const { return be_; }

  class Frame {
   public:
    explicit Frame(Workspace& ws) : ws_(ws), mark_(ws.mark()) {}
    ~Frame() { ws_.rewind(mark_); }
    Frame(const Frame&) = delete;
    Frame& operator=(const Frame&) = delete;

   private:
    Workspace& ws_;
    std::pair<size_t, size_t> mark_;
  };

 private:
  std::pair<size_t, size_t> mark() const { return {chunks_.size(), used_}; }
  void rewind(std::pair<size_t, size_t> m);
  Backend& be_;
  std::vector<BackendBuffer> chunks_;  // the last one is the one being filled
  size_t used_ = 0;                    // bytes used in the last chunk
};

// One execution context on a backend: its stream and its workspace. A LLaMA context, a Session or
// one vision encode owns one; bind it with ContextScope around the calls it issues.
class BackendContext {
 public:
  explicit BackendContext(Backend& be);
  ~BackendContext();
  BackendContext(const BackendContext&) = delete;
  BackendContext& operator=(const BackendContext&) = delete;
  Backend& backend() const { return be_; }
  BackendStream& stream() const { return *stream_; }
  Workspace& workspace() { return workspace_; }
  void synchronize() { stream_->synchronize(); }

 private:
  Backend& be_;
  std::unique_ptr<BackendStream> stream_;
  Workspace workspace_;
};

// Binds a context to the calling thread for the scope's lifetime (restoring the previous one):
// the backend then issues this thread's calls on the context's stream and takes scratch from its
// workspace. A thread binding rather than a stream argument on every call (as PyTorch's current
// CUDA stream) keeps the op signatures and every call site in model code unchanged.
class ContextScope {
 public:
  explicit ContextScope(BackendContext& ctx);
  ~ContextScope();
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;

 private:
  BackendContext* previous_;
};
// The context bound to the calling thread, or null.
BackendContext* current_context();

class Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceKind device() const = 0;
  virtual std::string describe() const = 0;

  // ---- memory
  virtual void* alloc(size_t bytes) = 0;
  virtual void free(void* p) = 0;
  // Makes the pages of [p, p + bytes) (memory from this backend's alloc()) resident and writable
  // now, contents unchanged, so the first op that writes them pays no page fault: a context's KV
  // cache and activations at creation (LlamaContextOptions::prefault), as llama.cpp clears its
  // cache when it creates a context. Throws Error(OutOfMemory) when the kernel refuses the pages.
  // Default: nothing (a device's alloc() commits its memory).
  virtual void prefault(void* p, size_t bytes) {
    (void)p;
    (void)bytes;
  }
  // Host -> backend memory. May return before the copy has finished when `src` stays valid until
  // the stream is synchronised; the CPU and a synchronous device implementation simply copy.
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  // Backend memory -> host; returns when `dst` holds the bytes (waits for the current stream).
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  // True when host pointers (e.g. into an mmap'd weight file) can be used directly as weights.
  virtual bool uses_host_memory() const = 0;

  // ---- streams and contexts
  // A new stream for an execution context. Default: a stream on which every call has already
  // finished when it returns (synchronize() does nothing) — right for the CPU backend.
  virtual std::unique_ptr<BackendStream> create_stream();
  // Blocks until all work issued on every stream of this backend has finished.
  virtual void synchronize() {}
  // The stream this thread's calls go to: the bound context's (when it belongs to this backend),
  // else null, meaning the backend's default stream.
  BackendStream* current_stream() const;
  // The bound context's workspace when it belongs to this backend, else null (ops then allocate
  // their scratch per call; see ScratchBuffer in backend.cpp).
  Workspace* current_workspace() const;

  // ---- weight layouts
  // Offers a weight matrix (N rows of K, type wtype, at W in this backend's memory) that gemm()
  // will be called with as W: the backend may keep a copy in a faster layout, used by every
  // gemm() on that W (any M) while the returned handle lives, and may then release the original
  // bytes' pages (they stay readable: a file mapping pages back in on access). Null when it keeps
  // nothing (the default; the CPU for types it has no layout for, or with EMOLLM_REPACK=0).
  virtual std::unique_ptr<PackedGemmWeight> pack_gemm_weight(const void* W, DType wtype, int64_t N, int64_t K,
                                                             GemmRows rows = GemmRows::Any);

  // ---- KV cache element type
  // Whether attention() accepts K/V of this type (AttentionParams::kv_dtype) and convert() writes
  // it. f32 everywhere; f16 / bf16 where the backend has the kernels (halves the cache on a GPU).
  virtual bool supports_kv_dtype(DType t) const { return t == DType::F32; }
  // Throws Error(Unsupported) naming the backend and the types it supports when !supports_kv_dtype(t).
  void require_kv_dtype(DType t) const;
  // Whether attention() reads K/V through a block table (AttentionParams::k_blocks / v_blocks /
  // kv_block_size: a paged KV cache). Without it a caller gathers a sequence's blocks into a
  // contiguous buffer first (LlamaContext does; the device backends take that path for now).
  virtual bool supports_paged_kv() const { return false; }

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
  // K/V are f32 unless p.kv_dtype says otherwise (then they point at that type; reinterpret).
  // With p.kv_block_size > 0 (only when supports_paged_kv()) k and v are unused: the rows come
  // through p.k_blocks / p.v_blocks.
  virtual void attention(const float* q, const float* k, const float* v, float* out, const AttentionParams& p) = 0;
  // Independent attentions (a batched step's sequences: one per segment) in one call; item i's
  // output equals attention(item i)'s. Default: attention() for each. The CPU backend runs all of
  // them in one thread-pool dispatch (kernels.h attention_batch), bit for bit the same outputs.
  virtual void attention_batch(const AttentionBatchItem* items, int64_t n) {
    for (int64_t i = 0; i < n; ++i) attention(items[i].q, items[i].k, items[i].v, items[i].out, items[i].p);
  }

  // ---- ops with default implementations (a new backend compiles without them; override for speed)
  // A hint, no result changes: [p, p + bytes) of this backend's memory is read by the calling
  // thread soon, after the next call or two (a decode step's norm weights and residual row, which
  // the weight stream in between leaves in the last-level cache when they were fetched before it:
  // each layer's norm weights are otherwise read from DRAM once a token). The CPU backend issues
  // one prefetch a cache line. Default: nothing.
  virtual void prefetch(const void* p, size_t bytes) { (void)p, (void)bytes; }
  // Several products of one X: Y_j[M, N_j] = X W_j^T (+ bias_j) for each of the n outputs (a
  // layer's q/k/v or gate/up projections), each as gemm(X, ldx, W_j, wtype_j, bias_j, Y_j, ldy_j,
  // M, N_j, K) gives it, bit for bit. Default: one gemm() per output. The CPU backend runs a decode
  // step's (M = 1) as one thread-pool dispatch (kernels.h gemv_repacked_multi).
  struct GemmOutput {
    const void* W;
    DType wtype;
    const float* bias;
    float* Y;
    int64_t ldy;
    int64_t N;
  };
  virtual void gemm_multi(const float* X, int64_t ldx, const GemmOutput* outs, int n, int64_t M, int64_t K);
  // A residual add and the RMSNorm after it (a decoder's x += sublayer output, then the next norm):
  // x += d, then y = rmsnorm(x) * w, rows of n (row strides ldx, ldd, ldy; y may be x). Equal bit
  // for bit to add() then rmsnorm(), which is the default; the CPU backend does both in one pass
  // over x and one call (kernels.h add_rmsnorm).
  virtual void add_rmsnorm(float* x, int64_t ldx, const float* d, int64_t ldd, const float* w, float* y, int64_t ldy,
                           int64_t rows, int64_t n, float eps);
  // A residual add and the LayerNorm after it (a pre-norm encoder's x += sublayer output, then the
  // next norm): x += d, then y = layernorm(x) * w + b (y may be x or d). Equal bit for bit to add()
  // then layernorm(), which is the default; the CPU backend does both in one call, x read once
  // (kernels.h add_layernorm).
  virtual void add_layernorm(float* x, int64_t ldx, const float* d, int64_t ldd, const float* w, const float* b,
                             float* y, int64_t ldy, int64_t rows, int64_t n, float eps);
  // rope() of two tensors at the same positions (a layer's queries and keys): equal bit for bit to
  // rope(a, lda, n_tokens, heads_a, ...) then rope(b, ldb, n_tokens, heads_b, ...), the default;
  // the CPU backend computes each token's cos / sin once for both (kernels.h rope_pair).
  virtual void rope_pair(float* a, int64_t lda, int64_t heads_a, float* b, int64_t ldb, int64_t heads_b,
                         int64_t n_tokens, const int32_t* positions, const RopeParams& p);
  // EmoLLM's fused multi-head visual projection (kernels.h mvp_projection). The default composes
  // it from gemm, gelu_erf and mul_row_add with workspace scratch; the CPU backend runs the fused kernel.
  virtual void mvp_projection(const float* X, const void* W1, const float* b1, const void* W2, const float* b2,
                              const float* G, DType wtype, float* Y, const MvpProjectionParams& p);
  // Strided 2-D copy: `rows` rows of `row_bytes`, row r from src + r*ld_src to dst + r*ld_dst
  // (strides in bytes). Gathers, concatenations, layer taps and token splices are all this.
  // Default: one copy() per row.
  virtual void copy_2d(void* dst, size_t ld_dst, const void* src, size_t ld_src, int64_t rows, size_t row_bytes);
  // Patch extraction (PatchParams): images -> patch rows with row stride ld_cols floats (0 = row_elems).
  // Default: copy_2d per (image, patch row, channel, ky).
  virtual void extract_patches(const float* images, float* cols, int64_t ld_cols, const PatchParams& p);
  // n elements from `src` of type src_type to `dst` of type dst_type (f32 <-> f16 / bf16; same
  // type = copy): K/V rows into a half-precision cache. Default: same type only, else Unsupported.
  virtual void convert(const void* src, DType src_type, void* dst, DType dst_type, int64_t n);

  // Row-broadcast ops over `rows` rows of n floats (ldx / ldy row strides, in place allowed).
  // No default from the ops above exists, so a backend with device memory must implement them;
  // the defaults run on the host when uses_host_memory() and throw Error(Unsupported) otherwise.
  //   add_row:     y[r][c] = x[r][c] + v[c]          (bias and position-embedding adds)
  //   mul_row:     y[r][c] = x[r][c] * v[c]          (per-channel gates)
  //   mul_row_add: y[r][c] = acc ? y[r][c] + x[r][c] * v[c] : x[r][c] * v[c]   (gated sums)
  //   scale:       y[i] = s * x[i] over n floats
  virtual void add_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n);
  virtual void mul_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n);
  virtual void mul_row_add(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n,
                           bool accumulate);
  virtual void scale(const float* x, float s, float* y, int64_t n);

  // ---- training: the backward ops of the MVP trainer's frozen decoder (native/train), with the
  // contracts of kernels/cpu/backward.h (layouts, overwrite / accumulate rules), every pointer in
  // this backend's memory. As for the row ops, the defaults run the CPU kernels on the host when
  // uses_host_memory() and throw Error(Unsupported) otherwise.
  //   gemm_backward_x:    dX[M,K] (+)= dY[M,N] W[N,K], W as gemm() takes it (the same bytes:
  //                       the backend's copy of W where it keeps one, gemm_weight_bytes).
  //   rmsnorm_backward:   dx (+)= d rmsnorm(x; w) applied to dy (w may be null).
  //   swiglu_backward:    dgate, dup of y = silu(gate) * up.
  //   rope_backward:      the inverse rotation of rope() in place (positions in backend memory).
  //   attention_backward: dq, dk, dv of attention() (f32 contiguous K/V, no paged KV; dout and out
  //                       with stride ldo); lse [n_q, n_heads] from the forward, or null (then
  //                       each row's statistics are recomputed).
  //   cross_entropy:      returns sum_r -log softmax(logits_r)[targets[r]] in double (the host
  //                       waits for it: the loss crosses to the host), and when dlogits is
  //                       non-null writes (softmax - onehot) * scale there. targets in backend
  //                       memory, each in [0, V) (a device cannot check them: callers do).
  virtual void gemm_backward_x(const float* dY, int64_t lddy, const void* W, DType wtype, float* dX, int64_t lddx,
                               int64_t M, int64_t N, int64_t K, bool accumulate);
  virtual void rmsnorm_backward(const float* x, int64_t ldx, const float* w, const float* dy, int64_t lddy, float* dx,
                                int64_t lddx, int64_t rows, int64_t n, float eps, bool accumulate);
  virtual void swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup,
                               int64_t n);
  virtual void rope_backward(float* dx, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
                             const RopeParams& p);
  virtual void attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                                  const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p);
  virtual double cross_entropy(const float* logits, int64_t ld, const int32_t* targets, int64_t rows, int64_t V,
                               float scale, float* dlogits);

  // ---- weight layouts (continued)
  // The bytes in W's own (standard) layout that gemm() on W reads: the packed copy when the
  // backend keeps W in the same layout in other memory (the CPU's bf16 / f16 copies in 2 MiB
  // pages), else W itself. Host code that reads a weight's values next to gemm() (the trainer's
  // forward and backward, native/train) reads these, so the pages pack_gemm_weight released are
  // not faulted back in beside the copy. Valid while the pack_gemm_weight handle lives.
  virtual const void* gemm_weight_bytes(const void* W, DType wtype, int64_t N, int64_t K) const;
};

// Bytes of packed weight copies (Backend::pack_gemm_weight) alive in this process, all backends.
size_t packed_gemm_weight_bytes();

// Creates a backend with its own compute pool. DeviceKind::Cuda throws Error(Unsupported) when
// the build has no CUDA (see require_device in core/runtime.h). Models get theirs from the
// Runtime instead (shared pools); this stays for tests and tools that want a private one.
std::unique_ptr<Backend> make_backend(const BackendOptions& options);
// A CPU backend computing on `pool` (shared; kept alive by the backend).
std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<ThreadPool> pool);

}  // namespace emollm
