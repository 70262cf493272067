// Scalar reference implementations of the elementwise / row-wise kernels in kernels.h
// (norms, activations, softmax, rope, embedding). They are what the dispatchers run at
// Isa::Scalar and what the tests compare each vector path with. Same signatures and
// semantics as the public kernels; accumulations are in double.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace emollm {
namespace ref {

void rmsnorm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy,
             int64_t rows, int64_t n, float eps);
void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy,
               int64_t rows, int64_t n, float eps);

void silu(const float* x, float* y, int64_t n);
void gelu_erf(const float* x, float* y, int64_t n);
void quick_gelu(const float* x, float* y, int64_t n);
void swiglu(const float* gate, const float* up, float* y, int64_t n);

// Row-wise softmax. Semantics follow torch: a row whose max is -inf (all -inf) or +inf,
// or that contains a NaN, comes out all NaN; -inf entries in an otherwise finite row give 0.
void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n);

void rope(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
          const RopeParams& p);

void embedding_lookup(const void* table, DType dtype, int64_t vocab, int64_t dim,
                      const int32_t* ids, int64_t n, float* out, int64_t ld_out);

}  // namespace ref

namespace detail {
// The code path a dispatcher takes: isa_active() with Amx counted as Avx512; always Scalar
// off x86-64.
enum class EltPath { Scalar, Avx2, Avx512 };
inline EltPath elt_path() {
#if defined(__x86_64__)
  Isa a = isa_active();
  if (a >= Isa::Avx512) return EltPath::Avx512;
  if (a >= Isa::Avx2) return EltPath::Avx2;
#endif
  return EltPath::Scalar;
}

// Effective rotary dims and validation shared by the reference and the vector paths.
int64_t rope_rot_dim(const RopeParams& p);
// Fills cos/sin of angle position * freq_scale * inv_freq[i], i < rot_dim/2, computed in
// double. inv_freq_d holds rot_dim/2 frequencies (p.inv_freq, or theta^(-2i/rot_dim)).
void rope_inv_freq(const RopeParams& p, int64_t rot_dim, double* inv_freq_d);
void rope_cos_sin(int32_t position, float freq_scale, const double* inv_freq_d, int64_t half,
                  float* cos_out, float* sin_out);
}  // namespace detail

}  // namespace emollm
