// CUDA compute kernels: plain functions over device pointers and shapes (ggml style), with the
// same contracts as their CPU counterparts in kernels/cpu/kernels.h, so that a CUDA Backend
// (native/core/backend.h) can forward to them. Every pointer is device memory; every call is
// asynchronous on `stream` (nullptr = the legacy default stream). Argument errors throw
// emollm::Error(InvalidArgument) before anything is launched; a failed launch throws
// emollm::Error(Internal) with the CUDA error string.
//
// This header needs no CUDA headers: streams are passed as the opaque cudaStream_t pointer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "../../base/dtype.h"
#include "../op_params.h"

struct CUstream_st;

namespace emollm {
namespace cuda {

using Stream = CUstream_st*;  // == cudaStream_t

// Element type of the K/V cache (and of weights below). Only F32 and BF16 are implemented.
//   F32: float; BF16: uint16_t bfloat16 bits (converted to f32 on load, f32 arithmetic).

// ---------------------------------------------------------------- attention
// Flash-attention forward, same semantics as emollm::attention (AttentionParams in kernels/op_params.h):
// q/out f32 [n_q, n_heads, head_dim]; k/v [n_kv, n_kv_heads, head_dim] of kv_type (F32 or BF16),
// token row strides in elements; GQA; causal with q_pos0 or bidirectional. Online softmax over
// K/V tiles staged in shared memory; no n_q x n_kv score matrix exists anywhere.
// head_dim 64 / 80 / 128 have specialised kernels; any other head_dim <= 256 takes the generic
// kernel; larger head_dim throws Error(Unsupported).
// When few (query tile, head) blocks exist (decode: n_q = 1), the KV range is split across
// blocks and the partial softmax states are merged by a second kernel; that needs `workspace`
// of attention_workspace_bytes(p) bytes (device memory). With workspace == nullptr (or too
// small) the split is not used and the result is the same up to rounding.
size_t attention_workspace_bytes(const AttentionParams& p);
void attention(const float* q, const void* k, const void* v, DType kv_type, float* out, const AttentionParams& p,
               void* workspace, size_t workspace_bytes, Stream stream);

// Flash attention on tensor cores (FlashAttention-2 style, bf16 mma.sync m16n8k16, f32
// accumulation and softmax state): same semantics and arguments as attention(), for head_dim 64
// or 128 and K/V f32 or bf16 (attention_tc_supported). Q (pre-scaled), K, V and the softmax
// weights P enter the tensor cores as bf16, so results differ from the f32 kernel by bf16
// rounding (about 1e-3 relative for unit-scale inputs). Prefill-shaped: 64 query rows per block,
// no split-KV (decode keeps attention()).
bool attention_tc_supported(const AttentionParams& p, DType kv_type);
void attention_tc(const float* q, const void* k, const void* v, DType kv_type, float* out, const AttentionParams& p,
                  Stream stream);

// ---------------------------------------------------------------- matrix product
// Y[M,N] = X[M,K] * W[N,K]^T (+ bias[N]); X/Y f32, W of wtype F32 or BF16, f32 accumulation.
// Tiled shared-memory GEMM (the building block of the projection below; exposed for the
// Backend and for the benchmarks' unfused anchors).
void gemm(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
          int64_t M, int64_t N, int64_t K, Stream stream);

// ---------------------------------------------------------------- multi-perspective projection
// emollm::mvp_projection (kernels.h) on the GPU, fused: one GEMM over the stacked first-layer
// weights with bias + GELU(erf) in its epilogue into a hidden buffer [tokens, n_heads*d_hid],
// then one kernel whose K loop runs over the heads' second layers and folds each head into the
// output tile as G_h * (acc + b2_h), so per-head outputs never reach device memory.
// W1/W2 of wtype F32 or BF16. `workspace` (device memory) holds the hidden activations:
// mvp_projection_workspace_bytes(p) bytes.
size_t mvp_projection_workspace_bytes(const MvpProjectionParams& p);
void mvp_projection(const float* X, const void* W1, const float* b1, const void* W2, const float* b2,
                    const float* G, DType wtype, float* Y, const MvpProjectionParams& p, void* workspace,
                    size_t workspace_bytes, Stream stream);

// ---------------------------------------------------------------- matrix products for every weight dtype
// Y[M,N] = X[M,K] * W[N,K]^T (+ bias[N]) with W of any of F32, F16, BF16, Q8_0, Q4_0 (ggml
// block layouts, rows of dtype_row_bytes(wtype, K) bytes; q8_0/q4_0 need K % 32 == 0). X and Y
// f32 with leading dims ldx / ldy (elements). These are what a CUDA Backend's gemm() runs:
//
//   gemv    (M <= 8, decode): one warp per output column, every weight byte read once, the
//           weights dequantised in registers, f32 products and accumulation. Memory bound.
//   gemm_tc (tensor cores, sm_80+): 64x64 output tiles, 4 warps of 32x32, mma.sync m16n8k16
//           through nvcuda::wmma 16x16x16 fragments, f32 accumulation. The operands enter the
//           tensor cores as 16-bit floats: BF16 weights with X rounded to bf16; F16, Q8_0 and
//           Q4_0 weights (dequantised in registers on their way to shared memory) with X
//           rounded to f16 (clamped to +-65504). F32 weights are refused (Unsupported): use gemm().
//   gemm_cublaslt (prefill, below): the same operand contract as gemm_tc, through cuBLASLt.
//   matmul  the dispatcher: M <= 8 -> gemv; F32 weights -> gemm (f32 SIMT, above); else
//           gemm_cublaslt when cuBLASLt is loaded and has an algorithm for the shape (q8_0/q4_0
//           from kCublasLtQuantMinRows rows), else gemm_tc.
constexpr int64_t kGemvMaxRows = 8;
void gemv(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
          int64_t M, int64_t N, int64_t K, Stream stream);
void gemm_tc(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
             int64_t M, int64_t N, int64_t K, Stream stream);
void matmul(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
            int64_t M, int64_t N, int64_t K, Stream stream);

// ---------------------------------------------------------------- cuBLASLt GEMM (prefill)
// gemm_cublaslt: Y = X * W^T (+ bias) as gemm_tc computes it (the same operands: X rounded to
// bf16 for BF16 weights, to f16 clamped to +-65504 otherwise; q8_0/q4_0 weights dequantised to
// f16; f32 accumulation and output) through NVIDIA's cuBLASLt: X is converted into a
// stream-ordered scratch buffer (cudaMallocAsync), q8_0/q4_0 weights are dequantised to f16
// there too, then one cublasLtMatmul (the TN product Y^T = W * X^T in cuBLASLt's column-major
// terms, bias in its epilogue). libcublasLt is opened at run time (dlopen of libcublasLt.so.13,
// .so.12, .so, then the build's toolkit directory), so nothing links cuBLAS and a machine
// without it runs gemm_tc. One cuBLASLt handle per device; the layouts and the heuristic's
// algorithm are cached per shape, leading dims, alignments and dtype.
// Returns false, writing nothing to Y, when cuBLASLt cannot run this product (not loaded,
// disabled by EMOLLM_CUBLASLT=0, no algorithm for the shape / alignment, or the algorithm
// refused at run time as unsupported, which is remembered for the shape): the caller runs gemm_tc.
// Argument errors throw InvalidArgument / Unsupported as gemm_tc's do (F32 weights: Unsupported).
bool gemm_cublaslt(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
                   int64_t M, int64_t N, int64_t K, Stream stream);
// From this many rows matmul dequantises q8_0/q4_0 weights for cuBLASLt (N*K f16 written and
// read once per call); below it gemm_tc dequantises in registers. At M = 32 the product is
// 64*N*K flops, which cuBLASLt runs faster than gemm_tc's ~20 TFLOP/s (H200) by more than the
// dequantisation's 6*N*K bytes cost at ~3 TB/s.
constexpr int64_t kCublasLtQuantMinRows = 32;
// Whether cuBLASLt is loaded (opening it on the first call; EMOLLM_CUBLASLT=0 keeps it closed).
// `detail` (optional) gets the library and its version, or why it is not loaded.
bool cublaslt_available(std::string* detail = nullptr);
// The GEMM matmul runs for M > 8 with 16-bit / quantised weights, for reports:
// "cublaslt (<library>, version <v>)" or "gemm_tc (<why cuBLASLt is not used>)".
std::string matmul_gemm_path();
// Test hook: tries to open each candidate library name in order and resolve every cuBLASLt
// function gemm_cublaslt uses, then closes it again. Returns "" on success (the library name in
// *opened), else the reasons, one per candidate. Touches no device.
std::string cublaslt_probe_library(const std::vector<std::string>& candidates, std::string* opened = nullptr);

// ---------------------------------------------------------------- row kernels (kernels/cpu/kernels.h contracts)
void rmsnorm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int64_t rows, int64_t n, float eps,
             Stream stream);
void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy, int64_t rows,
               int64_t n, float eps, Stream stream);
void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n, Stream stream);
enum class Unary { Silu, GeluErf, QuickGelu };
void unary(Unary op, const float* x, float* y, int64_t n, Stream stream);
void swiglu(const float* gate, const float* up, float* y, int64_t n, Stream stream);
void add(const float* a, const float* b, float* y, int64_t n, Stream stream);
// Y[t, c] = (first ? 0 : Y[t, c]) + g[c] * tmp[t * ld_tmp + c]  (the gated head sum of the
// unfused multi-perspective projection).
void gated_accumulate(float* Y, int64_t ldy, const float* tmp, int64_t ld_tmp, const float* g, int64_t rows,
                      int64_t n, bool first, Stream stream);

// Row-broadcast ops over `rows` rows of n floats (in place allowed):
//   AddRow: y = x + v[c];  MulRow: y = x * v[c];  MulRowAdd: y = (accumulate ? y : 0) + x * v[c].
enum class RowOp { AddRow, MulRow, MulRowAdd };
void row_broadcast(RowOp op, const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows,
                   int64_t n, bool accumulate, Stream stream);
// y = s * x over n floats.
void scale(const float* x, float s, float* y, int64_t n, Stream stream);
// n elements between f32 and f16 / bf16 (round to nearest even; same type: a plain copy).
void convert(const void* src, DType src_type, void* dst, DType dst_type, int64_t n, Stream stream);

// Patch extraction (PatchParams, op_params.h): images [batch, channels, height, width] f32 ->
// rows [batch * patches_h * patches_w, channels * patch * patch] with row stride ld_cols.
void extract_patches(const float* images, float* cols, int64_t ld_cols, const PatchParams& p, Stream stream);

// RoPE (RopeParams semantics) with everything on the device: positions [n_tokens] int32 and
// inv_freq [rot_dim / 2] doubles (the inverse frequencies, made once per configuration by the
// caller, e.g. the backend's cache). Each token's angles position * freq_scale * inv_freq[i] and
// their cos / sin are computed in double and rounded to f32, as kernels/cpu/rope.cpp does, so
// both devices rotate by the same f32 cos/sin (up to the last bit of the libraries' double
// sin/cos). Layouts as RopeParams::layout; x rotated in place. No host work per call.
void rope(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t rot_dim, RopeLayout layout,
          const int32_t* positions, const double* inv_freq, float freq_scale, Stream stream);

// out[i, :] = table[ids[i], :] in f32; table [vocab] rows of F32, F16, BF16, Q8_0 or Q4_0
// (dim % 32 == 0 for the quantised ones). ids are device memory; a device kernel cannot throw,
// so callers check them where they come from (the backend checks host ids; the LLaMA decoder
// checks its ids before uploading them), and an id outside [0, vocab) gets a row of NaN here
// instead of a read outside the table.
void embedding(const void* table, DType dtype, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n, float* out,
               int64_t ld_out, Stream stream);

// ---------------------------------------------------------------- sampling on the device
// One token from logits[n] (device), written to *out_token (device):
//   temperature <= 0 or top_k == 1: greedy (argmax, lowest index on ties; NaN never wins).
//   else: p = softmax(logits / temperature) restricted to the candidates, where a candidate has
//   logit >= the top_k-th largest (top_k <= 0: no limit; ties at the cut are all kept) and
//   logit >= the largest threshold t whose mass P(logit >= t) is still >= top_p (top_p >= 1: no
//   limit); then the token where the cumulative candidate mass, in index order, first exceeds
//   u * total (u in [0, 1) from the caller's RNG, so runs are reproducible).
struct SampleParams {
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float u = 0.0f;
};
void sample(const float* logits, int64_t n, const SampleParams& sp, int32_t* out_token, Stream stream);

// ---------------------------------------------------------------- backward (training; kernels/cpu/backward.h contracts)
// The adjoints the MVP trainer needs, on device pointers (backward.cu). Same formulas, layouts
// and overwrite / accumulate rules as their CPU counterparts; sums in f32 in a fixed order per
// output element (so a result does not depend on timing), except where noted.
//
// dX[M,K] (+)= dY[M,N] W[N,K] and dW[N,K] += dY[M,N]^T X[M,K] (dB[N] += column sums of dY in
// double, dB may be null): tiled f32 SIMT products (64 x 64 tiles, 4 x 4 outputs a thread).
// W of F32, F16 or BF16 (converted to f32 on load: the exact product of the stored weights, not
// the CPU's bf16-rounded dY); quantised weights throw Unsupported.
void gemm_backward_x(const float* dY, int64_t lddy, const void* W, DType wtype, float* dX, int64_t lddx, int64_t M,
                     int64_t N, int64_t K, bool accumulate, Stream stream);
void gemm_backward_w(const float* dY, int64_t lddy, const float* X, int64_t ldx, float* dW, float* dB, int64_t M,
                     int64_t N, int64_t K, Stream stream);
// One block per row; the row's sums (sum x^2, sum x w dy) in f32 block reductions.
void rmsnorm_backward(const float* x, int64_t ldx, const float* w, const float* dy, int64_t lddy, float* dx,
                      int64_t lddx, int64_t rows, int64_t n, float eps, bool accumulate, Stream stream);
void gelu_erf_backward(const float* x, const float* dy, float* dx, int64_t n, Stream stream);
void silu_backward(const float* x, const float* dy, float* dx, int64_t n, Stream stream);
void swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup, int64_t n,
                     Stream stream);
// The inverse rotation of rope() (same arguments): rope() with the angles negated, which in
// double gives the same cosines and the negated sines exactly.
void rope_backward(float* dx, int64_t ld, int64_t n_tokens, int64_t n_heads, int64_t head_dim, int64_t rot_dim,
                   RopeLayout layout, const int32_t* positions, const double* inv_freq, float freq_scale,
                   Stream stream);
// attention_backward (kernels/cpu/backward.h) for f32 contiguous K/V (no paged KV, GQA, causal
// with q_pos0 or bidirectional, head_dim <= 256). lse: the forward's log-sum-exp per (query,
// head) [n_q, n_heads] or null (then recomputed into the workspace). Three kernels: per (query,
// head) the row statistics and D_i = dO_i . O_i; per (query, head) dq; per (kv token, kv head)
// dk and dv, summing over the group's heads and the queries that see the token. Scores are
// recomputed in each (no n_q x n_kv matrix): correct first; the tensor-core version is to come.
// workspace: attention_backward_workspace_bytes(p) bytes of device memory.
size_t attention_backward_workspace_bytes(const AttentionParams& p);
void attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                        const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p, void* workspace,
                        size_t workspace_bytes, Stream stream);
// Cross-entropy per row (kernels/cpu/backward.h cross_entropy): row_loss[r] (device doubles)
// = logsumexp(logits_r) - logits_r[targets[r]] and, when dlogits is non-null, dlogits_r =
// (softmax(logits_r) - onehot) * scale. targets are device memory and cannot be checked on the
// device: a target outside [0, V) gives a NaN loss and no -scale term (callers check them on
// the host, where they come from).
void cross_entropy(const float* logits, int64_t ld, const int32_t* targets, int64_t rows, int64_t V, float scale,
                   float* dlogits, double* row_loss, Stream stream);
// AdamW step (AdamWStep, op_params.h) over n parameters, elementwise (as adamw_update on the CPU).
void adamw_update(float* value, const float* grad, float* m, float* v, int64_t n, const AdamWStep& s, Stream stream);
// *out (device double) = sum_i x_i^2 (the squared gradient norm): one block of 1024 threads,
// f64 partial sums in a fixed order (not the CPU's index order; equal up to f64 rounding).
void sum_squares(const float* x, int64_t n, double* out, Stream stream);

}  // namespace cuda
}  // namespace emollm
