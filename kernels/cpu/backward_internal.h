// Vector paths of the backward kernels (backward.h), for backward.cpp's dispatch only. Each
// returns false when the CPU (or the EMOLLM_ISA cap) does not allow it; the caller then runs its
// portable loop. Same contracts as the backward.h functions they serve.
#pragma once
#include <cstdint>

#include "../../base/thread_pool.h"
#include "../op_params.h"

namespace emollm {
namespace backward_detail {

// dX[M,K] (=|+=) bf16(dY)[M,N] * W[N,K] for BF16 W (AVX512-BF16 dot products): the "NN" product
// against the stored weight, no dequantised or transposed copy of it. dY is rounded to bf16 pairs
// (round to nearest even), as the forward GEMM rounds its activations; sums in f32, blocked over
// 512 weight rows. Each dX element is reduced in one order whatever the thread count.
bool gemm_backward_x_bf16(const float* dY, int64_t lddy, const uint16_t* W, float* dX, int64_t lddx, int64_t M,
                          int64_t N, int64_t K, bool accumulate, ThreadPool* pool);
// The same for F16 W (IEEE halves): each packed weight panel is rounded to bf16 (nearest even)
// as it is packed, then the same bf16 dot products.
bool gemm_backward_x_f16(const float* dY, int64_t lddy, const uint16_t* W, float* dX, int64_t lddx, int64_t M,
                         int64_t N, int64_t K, bool accumulate, ThreadPool* pool);

// attention_backward (AVX-512), flash-attention-2 style: per kv head, blocks of 16 queries
// against tiles of 64 keys, P = exp(S - lse) per tile from the rows' log-sum-exp (lse: the
// forward's, [n_q, n_heads]; null: one pass over the tiles computes it), then dV += P^T dO,
// dK += dS^T Q, dQ += dS K. One task per kv head (fixed summation order).
bool attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                        const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p, ThreadPool* pool);

// attention_backward with its five products on the AVX512-BF16 dot-product unit
// (backward_attention_bf16.cpp: operands rounded to bf16, f32 sums), for calls with
// p.bf16_products. attention_backward_bf16_applies: whether the dispatcher takes it for p (the
// flag, the CPU, the EMOLLM_ISA cap, EMOLLM_BACKWARD_AVX512 != 0,
// contiguous f32 K / V). attention_backward_bf16 itself checks the CPU only (tests call it
// directly): false without AVX512-BF16.
bool attention_backward_bf16_applies(const AttentionParams& p);
bool attention_backward_bf16(const float* q, const float* k, const float* v, const float* out, const float* dout,
                             const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p,
                             ThreadPool* pool);

// The vector paths of this file's functions: on unless EMOLLM_BACKWARD_AVX512 is "0" / "off"
// (then the portable loops only: A/B runs against the vector paths); tests flip it at run time.
bool vector_paths_enabled();
void set_vector_paths_enabled(bool on);

// swiglu_backward with a vectorised exp (the forward's Cephes polynomial).
bool swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup, int64_t n,
                     ThreadPool* pool);

}  // namespace backward_detail
}  // namespace emollm
