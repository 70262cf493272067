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

}  // namespace cuda
}  // namespace emollm
