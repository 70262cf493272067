// f32 vectors as types: the same operations on 8 (AVX2) or 16 (AVX-512) floats, so that a
// kernel can be written once over the vector width (gemm_f32_tile.h) instead of once per ISA.
// The operations are simd_math.h's kind (always-inline, with their ISA's target attribute); a
// template using them must itself be compiled for that target: gemm_f32_tile.h says how.
//   mask(c)  lanes [0, c), c clamped to [0, kLanes]
//   load     an aligned vector (32 / 64 bytes); maskz_load / mask_store: unaligned, masked
#pragma once
#include "simd_math.h"

#if defined(__x86_64__)
namespace emollm {
namespace simd {

struct F32x8 {
  using Vec = __m256;
  using Mask = __m256i;
  static constexpr int kLanes = 8;
  EMOLLM_SIMD_INLINE_256 Mask mask(int64_t c) {
    const int cc = int(c < 0 ? 0 : c > 8 ? 8 : c);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(cc), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  EMOLLM_SIMD_INLINE_256 Vec zero() { return _mm256_setzero_ps(); }
  EMOLLM_SIMD_INLINE_256 Vec load(const float* p) { return _mm256_load_ps(p); }
  EMOLLM_SIMD_INLINE_256 Vec maskz_load(Mask m, const float* p) { return _mm256_maskload_ps(p, m); }
  EMOLLM_SIMD_INLINE_256 void mask_store(float* p, Mask m, Vec v) { _mm256_maskstore_ps(p, m, v); }
  EMOLLM_SIMD_INLINE_256 Vec broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  EMOLLM_SIMD_INLINE_256 Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  EMOLLM_SIMD_INLINE_256 Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
};

struct F32x16 {
  using Vec = __m512;
  using Mask = __mmask16;
  static constexpr int kLanes = 16;
  EMOLLM_SIMD_INLINE_512 Mask mask(int64_t c) {
    return c >= 16 ? Mask(0xFFFF) : c <= 0 ? Mask(0) : Mask((1u << c) - 1);
  }
  EMOLLM_SIMD_INLINE_512 Vec zero() { return _mm512_setzero_ps(); }
  EMOLLM_SIMD_INLINE_512 Vec load(const float* p) { return _mm512_load_ps(p); }
  EMOLLM_SIMD_INLINE_512 Vec maskz_load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  EMOLLM_SIMD_INLINE_512 void mask_store(float* p, Mask m, Vec v) { _mm512_mask_storeu_ps(p, m, v); }
  EMOLLM_SIMD_INLINE_512 Vec broadcast(const float* p) { return _mm512_set1_ps(*p); }
  EMOLLM_SIMD_INLINE_512 Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  EMOLLM_SIMD_INLINE_512 Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
};


}  // namespace simd
}  // namespace emollm
#endif  // __x86_64__
