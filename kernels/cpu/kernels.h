// CPU compute kernels: plain functions over pointers and shapes (ggml style).
//
// Every kernel has a scalar reference and vectorised paths (AVX2, AVX-512, AMX where it helps),
// selected at run time from isa_active() (base/cpu_features.h). Forcing a lower level with
// isa_set_cap() runs the lower path, which is how tests compare each path with the scalar one.
//
// Conventions
// - Activations are f32, row-major, with an explicit leading dimension (elements between rows).
// - Weights W are stored as in Hugging Face nn.Linear and GGUF: N rows (out features) of K
//   elements (in features), rows contiguous, each row dtype_row_bytes(wtype, K) bytes.
// - A ThreadPool* may be null: the kernel then runs on the calling thread only. The row kernels
//   (norms, activations, softmax, RoPE, embedding) split rows (elements, for the activations)
//   across the pool when the call is large enough (row_parallel.h); their results are
//   bit-identical to the single-threaded ones.
// - The parameter structs (RopeParams, AttentionParams, ...) live in kernels/op_params.h, shared
//   with kernels/cuda and the Backend interface.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../../base/cpu_features.h"
#include "../../base/dtype.h"
#include "../../base/thread_pool.h"
#include "../op_params.h"

namespace emollm {

// ---------------------------------------------------------------- matrix products
// Y[M,N] = X[M,K] * W[N,K]^T (+ bias[N] when bias != null). Y is overwritten.
// f32 accumulation. Weight dtypes: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 (K % 32 == 0),
// Q4_K, Q5_K, Q6_K (K % 256 == 0).
// M == 1 dispatches to gemv. Q8_0/Q4_0 weights with M <= 8, and with any M on CPUs with
// AVX512-VNNI, round X to q8_0 by default (see QuantActivations below). BF16 weights may use BF16 dot-product hardware (AVX512-BF16, AMX),
// which rounds X to bf16: the tolerance of that path is that of bf16 activations.
void gemm(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias,
          float* Y, int64_t ldy, int64_t M, int64_t N, int64_t K, ThreadPool* pool);

// gemm() for a W that the caller keeps in 2 MiB (transparent huge) pages, as the CPU backend's
// copy of a model's bf16 / f16 matrices: at M = 1 the BF16 / F16 GEMV then reads each thread's
// rows as one sequential stream (TinyLlama-1.1B bf16 decode ~8% faster, Zen 5; on 4 KiB pages
// the single stream meets its TLB misses one at a time and is ~25% slower, so plain gemm() keeps
// the multi-row kernel); each thread walks 4 such streams side by side (rows from 4 parts of its
// range: 1.2-1.5x one stream, Zen 5, cold weights), each row summed as the single stream does.
// Same contract and tolerances as gemm(); other cases run gemm()'s kernels.
void gemm_huge_pages(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias,
                     float* Y, int64_t ldy, int64_t M, int64_t N, int64_t K, ThreadPool* pool);

// y[N] = W[N,K] * x[K] (+ bias). Memory-bound decode path: streams W once.
void gemv(const float* x, const void* W, DType wtype, const float* bias, float* y,
          int64_t N, int64_t K, ThreadPool* pool);

// Activations of quantised-weight products: Q8_0 / Q4_0 weights with M <= 8 (gemv, small
// batches) and, on CPUs with AVX512-VNNI, larger M too (prefill: the int8 packed GEMM of
// gemm_q8_vnni.cpp); without VNNI larger M uses f32 activations:
//   Q8  (default): as llama.cpp, each X row is rounded to q8_0 blocks once per call (ggml's
//        quantize_row_q8_0: per 32 elements d = fp16(amax / 127), q = round(x / d)), and the
//        products are exact int8 dot products per block scaled by d_w * d_x in f32 (AVX-512 VNNI
//        vpdpbusd, AVX2 vpmaddubsw). Memory-bound; the result is that of the q8_0-rounded X
//        (relative error of each activation up to 1/254 of its block's max).
//   F32: X stays f32 and weights are dequantised in registers (f32-exact products, slower).
// Process-wide; the initial value comes from the EMOLLM_QUANT_ACT environment variable ("f32",
// "q8"), else Q8. Safe to call from any thread; affects calls that start afterwards.
enum class QuantActivations { Q8, F32 };
void set_quant_activations(QuantActivations mode);
QuantActivations quant_activations();

// RAII helper for tests and benchmarks.
struct QuantActivationsScope {
  explicit QuantActivationsScope(QuantActivations mode) : prev_(quant_activations()) { set_quant_activations(mode); }
  ~QuantActivationsScope() { set_quant_activations(prev_); }
  QuantActivations prev_;
};

// ---------------------------------------------------------------- repacked quantised weights (decode GEMV)
// Q8_0 / Q4_0 weights rearranged once (e.g. at load) into groups of 16 rows whose block scales and
// quants are interleaved, q4_0 4 groups a record (layout: gemv_repacked.cpp), so the decode GEMV
// does one int8 dot-product instruction per 4 elements of 16 rows, needs no horizontal sums and
// reads q4_0 as one sequential stream per 64 rows. The copy costs the weights' bytes again (rounded
// up to 64 rows for q4_0, 16 for q8_0) in anonymous memory; the original (e.g. memory-mapped)
// matrix is not read by gemv_repacked and its pages can be dropped. K % 32 == 0.
size_t quant_repack_bytes(DType wtype, int64_t N, int64_t K);
void quant_repack(const void* W, DType wtype, int64_t N, int64_t K, void* out, ThreadPool* pool);
// y[N] = W x (+ bias) from quant_repack's output: QuantActivations::Q8 numerics (x rounded to
// q8_0 blocks, exact int32 block products; AVX512-VNNI, else a portable loop), whatever
// quant_activations() says.
void gemv_repacked(const float* x, const void* Wr, DType wtype, const float* bias, float* y, int64_t N, int64_t K,
                   ThreadPool* pool);
// The part of Wr that pool thread ith of nth reads first in gemv_repacked(..., N, K, pool of nth)
// (the GEMV ranges are owned by thread index: gemm_internal.h gemv_range_owner()): its own range
// of rows, *bytes bytes from *begin (contiguous in this layout; walked from the front unless
// another thread steals its end). *bytes = 0 when ith owns none. So a
// thread can prefetch the start of its part of the next matrix while it does something else.
void gemv_repacked_own_part(const void* Wr, DType wtype, int64_t N, int64_t K, int ith, int nth,
                            const uint8_t** begin, size_t* bytes);
// Whether backends keep Q8_0 / Q4_0 model weights in this layout (Backend::pack_gemm_weight, at
// load): process-wide, read when a model is loaded (models loaded earlier keep theirs). Initial
// value from the EMOLLM_REPACK environment variable ("0" off), else on. The CPU packs only where
// the VNNI kernel runs (AVX512-VNNI); elsewhere the standard layout stays.
void set_weight_repacking(bool on);
bool weight_repacking();
// Y[M,N] = X[M,K] W^T (+ bias) from quant_repack's output, any M (M == 1 is gemv_repacked): the
// same numerics for every M (each X row rounded to q8_0 blocks once, exact int32 block products),
// X rows taken 4 at a time against each loaded weight group. ldx / ldy: row strides.
void gemm_repacked(const float* X, int64_t ldx, const void* Wr, DType wtype, const float* bias, float* Y, int64_t ldy,
                   int64_t M, int64_t N, int64_t K, ThreadPool* pool);
// Several products of one X on quant_repack's copies (a layer's q/k/v, gate/up): each output
// bit for bit gemm_repacked(X, ldx, W_j, wtype, bias_j, Y_j, ldy_j, M, N_j, K), but at M > 8 on
// VNNI X is rounded and packed once and one dispatch covers every output's weight panels (else one
// gemm_repacked per output). n in 1..kMaxRepackedOutputs, every W_j of K columns and type wtype.
struct RepackedOutput {
  const void* W;  // quant_repack's output for an N x K matrix
  const float* bias;
  float* Y;
  int64_t ldy, N;
};
constexpr int kMaxRepackedOutputs = 8;
void gemm_repacked_multi(const float* X, int64_t ldx, DType wtype, const RepackedOutput* outs, int n_outs, int64_t M,
                         int64_t K, ThreadPool* pool);

// ---------------------------------------------------------------- repacked K-quant weights (decode GEMV)
// Q4_K / Q6_K weights rearranged once (at load) into records of 64 rows (16 or 32 with
// EMOLLM_KQUANT_RECORD_ROWS) x one 256-element super-block, scales unpacked to a byte per row
// (layout: kquant_records.h), so the decode GEMV reads each 64 rows as one sequential stream,
// with one int8 dot-product instruction per 4 elements of 16 rows and no horizontal sums. The
// copy costs the weights' bytes plus 2.8% (q4_K) / 1% (q6_K), N rounded up to kquant_record_rows();
// the original matrix is not read. K % 256 == 0. Q5_K: not. Rows [r0, r0 + n) of a matrix, r0 a
// multiple of kquant_record_rows(), repack on their own to the bytes from
// (r0 / kquant_record_rows()) * kquant_repack_bytes(wtype, 1, K) of the whole matrix's.
bool kquant_repack_supported(DType wtype);
int64_t kquant_record_rows();
size_t kquant_repack_bytes(DType wtype, int64_t N, int64_t K);
void kquant_repack(const void* W, DType wtype, int64_t N, int64_t K, void* out, ThreadPool* pool);
// Y[M,N] = X[M,K] W^T (+ bias) from kquant_repack's output, any M: X rows rounded to q8_0 blocks
// (QuantActivations::Q8 numerics), exact int32 products per 32-element block; M <= 8 on the
// records' GEMV, M > 8 on the packed VNNI GEMM (bit for bit gemm() on the original weights).
// Needs AVX-512 VNNI (kquant_repacked_usable()); callers fall back to gemm() on the original.
bool kquant_repacked_usable();
void gemm_kquant_repacked(const float* X, int64_t ldx, const void* Wr, DType wtype, const float* bias, float* Y,
                          int64_t ldy, int64_t M, int64_t N, int64_t K, ThreadPool* pool);
// Whether backends keep Q4_K / Q6_K model weights in this layout (read when a model is loaded).
// Off (for tests; EMOLLM_REPACK=0 gives the same): the GGUF layout and its kernels.
void set_kquant_repacking(bool on);
bool kquant_repacking();
// Rows per record of kquant_repack (32 or 64; default 64: faster than 16 and not slower than 32 on
// q4_K and q6_K; 32 stays a layout the tests pack and read). Read when packing and when computing: process-wide, set it before
// packing and keep it while the records are in use (tests, the bench's A/B rows).
void set_kquant_record_rows(int rows);

// ---------------------------------------------------------------- bf16 weights in GEMM panels (many-row products)
// BF16 matrices that only ever meet many activation rows (vision towers, projectors) rearranged
// once (at load) into the panels of the vdpbf16ps packed GEMM, so that a call no longer packs W:
// panels of 64 rows; panel p holds the kp = ceil(K / 2) bf16 pairs of its rows, pair-major:
//   word (p * kp + q) * 64 + j = W[p * 64 + j][2q] | W[p * 64 + j][2q + 1] << 16  (zero past N, K)
// bf16_panels_bytes(N, K) bytes (the matrix rounded up to 64 rows and an even K), 64-byte aligned.
// Needs AVX512-BF16 at isa_active() >= Avx512 (bf16_panels_usable()); the products are those of
// gemm() on the original W at M > 64 on that path (X rounded to bf16, f32 sums, same blocking),
// bit for bit; M <= 64 streams each panel once in K chunks (gemm_small_m.cpp; X rounded to bf16,
// within the f32 tolerance of the rounded-X product; a row's bits do not depend on M).
bool bf16_panels_usable();
size_t bf16_panels_bytes(int64_t N, int64_t K);
void bf16_pack_panels(const void* W, int64_t N, int64_t K, void* out, ThreadPool* pool);
void gemm_bf16_panels(const float* X, int64_t ldx, const void* Wp, const float* bias, float* Y, int64_t ldy,
                      int64_t M, int64_t N, int64_t K, ThreadPool* pool);
// Several products of one X on panels (a vision layer's q, k and v): Y_j = X Wp_j^T (+ bias_j),
// bit for bit what gemm_bf16_panels gives for each output, but X is rounded and packed once and
// one thread split covers every output's panels (one pool dispatch instead of one per matrix).
// n in 1..kMaxPanelOutputs, every Wp_j of K columns.
struct PanelOutput {
  const void* Wp;  // bf16_pack_panels' panels of the N x K matrix
  const float* bias;
  float* Y;
  int64_t ldy, N;
};
constexpr int kMaxPanelOutputs = 8;
void gemm_bf16_panels_multi(const float* X, int64_t ldx, const PanelOutput* outs, int n, int64_t M, int64_t K,
                            ThreadPool* pool);
// The same for row-major bf16 matrices (the weight file's layout or its 2 MiB-page copy; Wp = the
// N x K matrix): bit for bit gemm() for each output, with X rounded and packed once and one thread
// split over every output's weight panels where gemm() runs the vdpbf16ps packed GEMM (M > 64,
// AVX512-BF16 at the AVX-512 level, K <= 4096, no AMX); elsewhere it runs gemm() for each output.
// A prefill layer's q / k / v and gate / up (CPU backend, set_bf16_prefill_fuse(false): one gemm()
// each).
void gemm_bf16_rows_multi(const float* X, int64_t ldx, const PanelOutput* outs, int n, int64_t M, int64_t K,
                          ThreadPool* pool);
// Backends keep such matrices in panels (Backend::pack_gemm_weight with GemmRows::Many) whenever
// weight_repacking() is on and bf16_panels_usable(); with repacking off they stay in the file's
// layout and every GEMM packs W per call. (The switch of the panels alone, EMOLLM_BF16_PANELS=0,
// is gone: the CLIP-L/336 tower 0.650 vs 0.770 s/image, bench/README 2026-12-04 17:25.)

// ---------------------------------------------------------------- GEMVs of one input, one dispatch
// A decode step's projections of one x (q, k, v; gate, up): y_j = W_j x (+ bias_j) for every
// output j, bit for bit what one call per matrix gives, but as ONE thread-pool dispatch over the
// outputs' rows together: the pool is woken and its slowest worker waited for once instead of once
// per matrix, and x is rounded to q8_0 (or reordered for bf16) once. n_outs in 1..kMaxGemvOutputs,
// every W of type wtype with K columns.
struct GemvOutput {
  const void* W;      // N rows of K; quant_repack's layout for gemv_repacked_multi
  const float* bias;  // N values, or null
  float* y;           // N values, overwritten
  int64_t N;
};
constexpr int kMaxGemvOutputs = 8;
// Each output as gemv_repacked(x, W, wtype, bias, y, N, K, pool).
void gemv_repacked_multi(const float* x, DType wtype, const GemvOutput* outs, int n_outs, int64_t K, ThreadPool* pool);
// Each output as gemm_huge_pages(x, K, W, wtype, bias, y, N, 1, N, K, pool) (one dispatch for the
// BF16 / F16 single-stream GEMV on AVX-512; other cases one call per output).
void gemv_huge_pages_multi(const float* x, DType wtype, const GemvOutput* outs, int n_outs, int64_t K,
                           ThreadPool* pool);
// Each output as gemm_kquant_repacked(x, K, W, wtype, bias, y, N, 1, N, K, pool) bit for bit (W:
// kquant_repack's records, wtype Q4_K or Q6_K), x rounded once and one dispatch over every
// output's 16-row groups. Needs kquant_repacked_usable().
void gemv_kquant_repacked_multi(const float* x, DType wtype, const GemvOutput* outs, int n_outs, int64_t K,
                                ThreadPool* pool);
// Whether the CPU backend fuses such GEMVs (Backend::gemm_multi at M = 1). Process-wide, default on
// (off: one dispatch per matrix, for tests and decode_switch_ab's gemv_fuse).
void set_gemv_fusion(bool on);
bool gemv_fusion();

// ---------------------------------------------------------------- normalisation
// y = x / sqrt(mean(x^2) + eps) * w   (w may be null: no scale). rows of n, leading dims ldx/ldy.
// Both norms may run in place (y == x).
void rmsnorm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy,
             int64_t rows, int64_t n, float eps, ThreadPool* pool);
// x += d, then y = rmsnorm(x) * w: a residual add and the RMSNorm after it in one pass over x,
// bit for bit add(x, d, x) followed by rmsnorm(x, w, y). y may be x; d must not overlap y otherwise.
void add_rmsnorm(float* x, int64_t ldx, const float* d, int64_t ldd, const float* w, float* y, int64_t ldy,
                 int64_t rows, int64_t n, float eps, ThreadPool* pool);
// y = (x - mean) / sqrt(var + eps) * w + b   (w, b may be null). Biased variance, as torch.
void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy,
               int64_t rows, int64_t n, float eps, ThreadPool* pool);
// x += d, then y = layernorm(x) * w + b: a residual add and the LayerNorm after it (a pre-norm
// transformer's x += sublayer output, then the next norm) in one call, x read once from memory;
// bit for bit add(x, d, x) followed by layernorm(x, w, b, y). y may be x or d (then ldy == ldx or
// ldd); otherwise no two of x, d, y overlap.
void add_layernorm(float* x, int64_t ldx, const float* d, int64_t ldd, const float* w, const float* b, float* y,
                   int64_t ldy, int64_t rows, int64_t n, float eps, ThreadPool* pool);

// ---------------------------------------------------------------- activations (elementwise, in place allowed)
void silu(const float* x, float* y, int64_t n, ThreadPool* pool);        // x * sigmoid(x)
void gelu_erf(const float* x, float* y, int64_t n, ThreadPool* pool);    // 0.5 x (1 + erf(x / sqrt 2)), torch's exact GELU
void quick_gelu(const float* x, float* y, int64_t n, ThreadPool* pool);  // x * sigmoid(1.702 x), CLIP
// y = a + b (residual adds; in place allowed: y == a or y == b)
void add(const float* a, const float* b, float* y, int64_t n, ThreadPool* pool);
// y = silu(gate) * up  (the LLaMA SwiGLU MLP)
void swiglu(const float* gate, const float* up, float* y, int64_t n, ThreadPool* pool);

// ---------------------------------------------------------------- softmax
// Row-wise softmax over n columns, numerically stable (max subtracted). In place allowed.
// Special values follow torch: -inf entries give 0; a row that is all -inf, or holds +inf or
// NaN, gives all NaN.
void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n, ThreadPool* pool);

// ---------------------------------------------------------------- rotary position embedding
// Rotates x in place: n_tokens rows, each n_heads heads of head_dim, token row stride ld
// (elements). positions[t] is token t's absolute position.
void rope(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
          const RopeParams& p, ThreadPool* pool);
// Two tensors at the same positions (a layer's queries and keys) in one call: bit for bit
// rope(a, lda, n_tokens, heads_a, ...) and rope(b, ldb, n_tokens, heads_b, ...), with each token's
// cos / sin computed once for both.
void rope_pair(float* a, int64_t lda, int64_t heads_a, float* b, int64_t ldb, int64_t heads_b, int64_t n_tokens,
               const int32_t* positions, const RopeParams& p, ThreadPool* pool);

// ---------------------------------------------------------------- embedding
// out[i, :] = table[ids[i], :] converted to f32. table has vocab rows of dim elements of dtype.
// Throws Error(InvalidArgument) on an id outside [0, vocab).
void embedding_lookup(const void* table, DType dtype, int64_t vocab, int64_t dim,
                      const int32_t* ids, int64_t n, float* out, int64_t ld_out, ThreadPool* pool);

// The row kernels above on the calling thread only (overloads, so they stay usable as plain
// function pointers of their original types).
inline void rmsnorm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int64_t rows, int64_t n,
                    float eps) {
  rmsnorm(x, ldx, w, y, ldy, rows, n, eps, nullptr);
}
inline void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy,
                      int64_t rows, int64_t n, float eps) {
  layernorm(x, ldx, w, b, y, ldy, rows, n, eps, nullptr);
}
inline void silu(const float* x, float* y, int64_t n) { silu(x, y, n, nullptr); }
inline void gelu_erf(const float* x, float* y, int64_t n) { gelu_erf(x, y, n, nullptr); }
inline void quick_gelu(const float* x, float* y, int64_t n) { quick_gelu(x, y, n, nullptr); }
inline void swiglu(const float* gate, const float* up, float* y, int64_t n) { swiglu(gate, up, y, n, nullptr); }
inline void add(const float* a, const float* b, float* y, int64_t n) { add(a, b, y, n, nullptr); }
inline void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n) {
  softmax(x, ldx, y, ldy, rows, n, nullptr);
}
inline void rope(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
                 const RopeParams& p) {
  rope(x, ld, n_tokens, n_heads, positions, p, nullptr);
}
inline void embedding_lookup(const void* table, DType dtype, int64_t vocab, int64_t dim, const int32_t* ids,
                             int64_t n, float* out, int64_t ld_out) {
  embedding_lookup(table, dtype, vocab, dim, ids, n, out, ld_out, nullptr);
}

// ---------------------------------------------------------------- attention
// Scaled dot-product attention over a KV cache, tiled with an online softmax (flash-attention
// style): no n_q x n_kv score matrix is materialised.
//   q   : [n_q,  n_heads,    head_dim], token row stride ldq
//   k, v: [n_kv, n_kv_heads, head_dim], token row strides ldk / ldv (the cache)
//   out : [n_q,  n_heads,    head_dim], token row stride ldo
// Grouped-query: head h reads kv head h / (n_heads / n_kv_heads).
// Causal: query i (absolute position q_pos0 + i) sees kv tokens j <= q_pos0 + i; the cache
// holds positions 0..n_kv-1. Bidirectional (causal=false) sees all n_kv.
// lse (optional, [n_q, n_heads], row i * n_heads + h): each row's log-sum-exp of its scaled
// scores, log sum_j exp(scale q.k_j), which the training backward reads (backward.h
// attention_backward) instead of recomputing the softmax statistics.
void attention(const float* q, const float* k, const float* v, float* out,
               const AttentionParams& p, ThreadPool* pool);
void attention(const float* q, const float* k, const float* v, float* out,
               const AttentionParams& p, ThreadPool* pool, float* lse);
// Independent attentions (e.g. one per sequence of a batched decode step) in one thread-pool
// dispatch instead of one each: item i's output is attention(q, k, v, out, p, pool)'s, bit for
// bit (every item keeps the work split it has alone). Items must not write each other's inputs.
void attention_batch(const AttentionBatchItem* items, int64_t n, ThreadPool* pool);

// ---------------------------------------------------------------- reference paths
// Scalar references, always available, used by tests (and by the dispatchers at Isa::Scalar).
namespace ref {
void gemm(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias,
          float* Y, int64_t ldy, int64_t M, int64_t N, int64_t K);
void attention(const float* q, const float* k, const float* v, float* out, const AttentionParams& p);
void attention(const float* q, const float* k, const float* v, float* out, const AttentionParams& p, float* lse);
}  // namespace ref

// ---------------------------------------------------------------- multi-perspective visual projection
// EmoLLM's multi-head ("multi-perspective") projection of vision features into the LLM space:
//   Y[t, :] = sum_h G[h, :] * (W2_h * gelu_erf(W1_h * x_t + b1_h) + b2_h)      (Y overwritten)
//   X : [tokens, d_in], token row stride ldx (0 means d_in)
//   W1: [n_heads * d_hid, d_in], the heads' first-layer weights stacked (head h: rows h*d_hid..)
//   b1: [n_heads * d_hid] or null
//   W2: [n_heads, d_out, d_hid], head h's second layer at byte offset h * d_out * row_bytes(d_hid)
//   b2: [n_heads, d_out] or null
//   G : [n_heads, d_out], per-head per-channel gates, already activated
//   Y : [tokens, d_out], token row stride ldy (0 means d_out)
// W1 and W2 share the weight dtype wtype (any gemm dtype; the block rules of gemm apply to d_in
// and d_hid). The CPU path is one stacked GEMM for the first layers, then per-head GEMMs.
void mvp_projection(const float* X, const void* W1, const float* b1, const void* W2, const float* b2,
                    const float* G, DType wtype, float* Y, const MvpProjectionParams& p, ThreadPool* pool);

}  // namespace emollm

// ---------------------------------------------------------------- convolution and pooling (NHWC)
// Image kernels for the small vision CNNs (face detector / expression net, native/model/face.h).
// Layout: activations NHWC f32, contiguous: x[((b * in_h + y) * in_w + x) * in_c + c].
// Geometry follows TensorFlow: output size and the top/left padding are given explicitly
// (conv_geometry computes TF's 'same' / 'valid' values); the bottom/right padding is whatever
// the output size implies. Convolution padding is zeros; pooling ignores taps outside the image.
namespace emollm {

// Conv2dParams and ConvActivation: kernels/op_params.h.

// TensorFlow's output size and leading padding for one spatial axis:
//   same : out = ceil(in / stride), pad_before = max((out - 1) * stride + k - in, 0) / 2
//   valid: out = (in - k) / stride + 1, pad_before = 0
void conv_geometry(int64_t in, int64_t k, int64_t stride, bool same, int64_t* out, int64_t* pad_before);

// Dense convolution. w: [k_h, k_w, in_c, out_c] (TensorFlow HWIO), bias: [out_c] or null.
void conv2d_nhwc(const float* x, const float* w, const float* bias, float* y, const Conv2dParams& p,
                 ThreadPool* pool);
// Depthwise convolution, channel multiplier 1. w: [k_h, k_w, in_c] (TF [k_h, k_w, in_c, 1]).
void depthwise_conv2d_nhwc(const float* x, const float* w, const float* bias, float* y, const Conv2dParams& p,
                           ThreadPool* pool);
// 1x1 convolution over `pixels` pixels: y[pixels, out_c] = act(x[pixels, in_c] W^T + bias).
// w: [out_c, in_c] (the nn.Linear layout of gemm(); TF's [1, 1, in_c, out_c] transposed).
void pointwise_conv_nhwc(const float* x, int64_t pixels, int64_t in_c, const float* w, const float* bias,
                         float* y, int64_t out_c, ConvActivation act, float alpha, ThreadPool* pool);
// Max / average over the k_h x k_w window; taps outside the image are skipped (TF semantics:
// the average divides by the number of in-image taps).
void max_pool2d_nhwc(const float* x, float* y, const Conv2dParams& p, ThreadPool* pool);
void avg_pool2d_nhwc(const float* x, float* y, const Conv2dParams& p, ThreadPool* pool);
// Elementwise activation (in place allowed).
void conv_activation(const float* x, float* y, int64_t n, ConvActivation act, float alpha);
inline void leaky_relu(const float* x, float* y, int64_t n, float alpha) {
  conv_activation(x, y, n, ConvActivation::LeakyRelu, alpha);
}

namespace ref {
void conv2d_nhwc(const float* x, const float* w, const float* bias, float* y, const Conv2dParams& p);
void depthwise_conv2d_nhwc(const float* x, const float* w, const float* bias, float* y, const Conv2dParams& p);
void max_pool2d_nhwc(const float* x, float* y, const Conv2dParams& p);
void avg_pool2d_nhwc(const float* x, float* y, const Conv2dParams& p);
void conv_activation(const float* x, float* y, int64_t n, ConvActivation act, float alpha);
}  // namespace ref

}  // namespace emollm
