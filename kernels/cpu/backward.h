// Backward (gradient) kernels for training on the CPU: plain functions over pointers and shapes,
// the adjoints of the forward kernels in kernels.h. Used by the MVP trainer (native/train/).
//
// Conventions as kernels.h: activations f32 row-major with explicit leading dimensions; weights
// W stored as nn.Linear ([N rows of K], any gemm dtype for frozen weights). "d" prefixes are
// gradients of the loss. Kernels that ACCUMULATE say so (+=); the others overwrite.
// Every kernel splits independent rows over the pool (or none), so results do not depend on the
// thread count: each output element is reduced in one fixed order on one thread.
#pragma once
#include <cstdint>

#include "../../base/dtype.h"
#include "../../base/thread_pool.h"
#include "../op_params.h"

namespace emollm {

// ---------------------------------------------------------------- matrix products (Y = X W^T + b)
// dX[M,K] (+)= dY[M,N] * W[N,K]. W in any dtype gemm() takes. BF16 W on a CPU with AVX512-BF16
// (and EMOLLM_ISA not capped below avx512): the product runs against the stored rows with bf16
// dot products, dY rounded to bf16 as the forward gemm() rounds its activations
// (backward_avx512.cpp); F16 W the same, each weight rounded to bf16 as its panel is packed (the
// result then differs from the f16 product by about bf16's precision). Otherwise, from 16 rows on (and weights up to 16 Mi elements) through
// gemm() on the dequantised, transposed weight; below, a blocked loop. accumulate: add into dX
// instead of overwriting it.
void gemm_backward_x(const float* dY, int64_t lddy, const void* W, DType wtype, float* dX, int64_t lddx, int64_t M,
                     int64_t N, int64_t K, bool accumulate, ThreadPool* pool);
// dW[N,K] += dY[M,N]^T * X[M,K]; dB[N] += column sums of dY (dB may be null). f32 gradients of
// trainable f32 parameters (from 16 rows on through gemm() on transposed operands).
void gemm_backward_w(const float* dY, int64_t lddy, const float* X, int64_t ldx, float* dW, float* dB, int64_t M,
                     int64_t N, int64_t K, ThreadPool* pool);

// ---------------------------------------------------------------- normalisation
// y = x * r * w with r = 1 / sqrt(mean(x^2) + eps): dx = r * (w.dy) - x * r^3 / n * sum(x * w.dy).
// w may be null (no scale). dx may alias dy. accumulate: dx += instead of =.
void rmsnorm_backward(const float* x, int64_t ldx, const float* w, const float* dy, int64_t lddy, float* dx,
                      int64_t lddx, int64_t rows, int64_t n, float eps, bool accumulate, ThreadPool* pool);

// ---------------------------------------------------------------- activations (elementwise)
// GELU (erf): dx = dy * (Phi(x) + x phi(x)). dx may alias dy.
void gelu_erf_backward(const float* x, const float* dy, float* dx, int64_t n, ThreadPool* pool);
// SiLU: dx = dy * s (1 + x (1 - s)), s = sigmoid(x).
void silu_backward(const float* x, const float* dy, float* dx, int64_t n, ThreadPool* pool);
// y = silu(gate) * up: dgate = dy * up * silu'(gate), dup = dy * silu(gate). dgate / dup may
// alias gate / up (each element is read before it is written).
void swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup, int64_t n,
                     ThreadPool* pool);

// ---------------------------------------------------------------- rotary position embedding
// The adjoint of rope(): RoPE rotates each pair by an angle, so the gradient is the inverse
// rotation of the incoming gradient (in place, same layout as rope()).
void rope_backward(float* dx, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
                   const RopeParams& p, ThreadPool* pool);

// ---------------------------------------------------------------- attention
// Backward of attention() (same parameters and layouts; GQA, causal with q_pos0):
//   P = softmax(scale q k^T), O = P v,  D_i = dO_i . O_i
//   dv_j += sum_i P_ij dO_i,  dS_ij = P_ij (dO_i . v_j - D_i),  dq_i = scale sum_j dS_ij k_j,
//   dk_j += scale sum_i dS_ij q_i
// lse: the forward's log-sum-exp of each row (attention(..., lse), [n_q, n_heads]), from which
// the probabilities are recomputed tile by tile, P_ij = exp(scale q_i.k_j - lse_i); null: the
// backward finds each row's statistics itself (one more pass over the scores). No n_q x n_kv
// matrix is kept. AVX-512: flash-attention-2 style, blocks of 16 queries against tiles of 64
// keys (backward_avx512.cpp); else one query row at a time. p.bf16_products (a model with bf16 /
// f16 weights) on a CPU with AVX512-BF16: all five products on the vdpbf16ps unit, operands
// rounded to bf16 and f32 sums, 24-query blocks (backward_attention_bf16.cpp, its error bound
// there). `out` is the forward output O. dq is
// overwritten ([n_q, n_heads, head_dim], stride ldq); dk and dv ([n_kv, n_kv_heads, head_dim],
// strides ldk / ldv) are overwritten too.
void attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                        const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p,
                        ThreadPool* pool);

// ---------------------------------------------------------------- loss
// Mean cross-entropy over `rows` rows of logits [rows, V] (stride ld) with targets[r]:
// returns sum_r -log softmax(logits_r)[targets[r]] (in double) and, when dlogits is non-null,
// writes dlogits_r = (softmax(logits_r) - onehot(targets[r])) * scale (stride ld).
double cross_entropy(const float* logits, int64_t ld, const int32_t* targets, int64_t rows, int64_t V, float scale,
                     float* dlogits, ThreadPool* pool);

// ---------------------------------------------------------------- optimizer
// One AdamW step (AdamWStep in op_params.h) over n parameters: value, m and v updated in place
// from grad. Elementwise, so the result does not depend on the thread count.
void adamw_update(float* value, const float* grad, float* m, float* v, int64_t n, const AdamWStep& s,
                  ThreadPool* pool);
// sum_i x_i^2 in double, in index order (the gradient norm's square; one thread, so the order
// and the result are fixed).
double sum_squares(const float* x, int64_t n);

namespace ref {
// Scalar references (tests): the same contracts, the most direct loops.
void attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                        float* dq, float* dk, float* dv, const AttentionParams& p);
void gemm_backward_x(const float* dY, const float* W, float* dX, int64_t M, int64_t N, int64_t K);  // f32 W
}  // namespace ref

}  // namespace emollm
