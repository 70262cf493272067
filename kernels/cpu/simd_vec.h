// f32 vectors as types: the same operations on 8 (AVX2) or 16 (AVX-512) floats, so that a
// kernel can be written once over the vector width (gemm_f32_tile.h) instead of once per ISA.
// The operations are simd_math.h's kind (always-inline, with their ISA's target attribute); a
// template using them must itself be compiled for that target: gemm_f32_tile.h says how.
//   mask(c)  lanes [0, c), c clamped to [0, kLanes]
//   load     an aligned vector (32 / 64 bytes); maskz_load / mask_store: unaligned, masked
//   maskz(m, v)  v with the lanes outside m set to +0
//   round_away   roundf on every lane (half away from zero), exactly: truncate, then step one away
//            from zero where the (exact) remainder is at least one half; NaN stays NaN. The q8_0
//            rounding of X (qx_quantize_row_avx2, gemm_q8_xquant.cpp's panels) at either width
//   load_f16 / load_bf16   kLanes half values (unaligned) widened to f32 (exact)
//   store_f16 / store_bf16 kLanes f32 rounded to nearest even, stored as halves (unaligned):
//            f16 by vcvtps2ph; bf16 by integer rounding as f32_to_bf16 (base/dtype.h), NaN kept
//   F64      kLanes / 2 doubles: widen_lo / widen_hi (the low / high half of an f32 vector, exact),
//            add_f64, reduce_add_f64 (halves added pairwise down to one: the order of
//            _mm512_reduce_add_pd, and of the AVX2 128-bit halves then the pair) for sums that
//            flush f32 partial sums into f64 (norm_rows.inc)
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
  EMOLLM_SIMD_INLINE_256 Vec sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
  EMOLLM_SIMD_INLINE_256 Vec mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
  EMOLLM_SIMD_INLINE_256 Vec set1(float v) { return _mm256_set1_ps(v); }
  EMOLLM_SIMD_INLINE_256 Vec maskz(Mask m, Vec v) { return _mm256_and_ps(v, _mm256_castsi256_ps(m)); }
  EMOLLM_SIMD_INLINE_256 Vec round_away(Vec v) {
    const __m256 sb = _mm256_set1_ps(-0.0f);
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 f = _mm256_andnot_ps(sb, _mm256_sub_ps(v, t));
    const __m256 up = _mm256_cmp_ps(f, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm256_add_ps(t, _mm256_and_ps(up, _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, sb))));
  }
  EMOLLM_SIMD_INLINE_256 Vec loadu(const float* p) { return _mm256_loadu_ps(p); }
  EMOLLM_SIMD_INLINE_256 void storeu(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  EMOLLM_SIMD_INLINE_256 Vec load_f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  EMOLLM_SIMD_INLINE_256 Vec load_bf16(const uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  EMOLLM_SIMD_INLINE_256 void store_f16(uint16_t* p, Vec v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  EMOLLM_SIMD_INLINE_256 void store_bf16(uint16_t* p, Vec v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd)), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40)), nan);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);  // 16-bit lanes 0-7
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }

  using F64 = __m256d;
  EMOLLM_SIMD_INLINE_256 F64 zero_f64() { return _mm256_setzero_pd(); }
  EMOLLM_SIMD_INLINE_256 F64 add_f64(F64 a, F64 b) { return _mm256_add_pd(a, b); }
  EMOLLM_SIMD_INLINE_256 F64 widen_lo(Vec v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
  EMOLLM_SIMD_INLINE_256 F64 widen_hi(Vec v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }
  EMOLLM_SIMD_INLINE_256 double reduce_add_f64(F64 v) {
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
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
  EMOLLM_SIMD_INLINE_512 Vec sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
  EMOLLM_SIMD_INLINE_512 Vec mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
  EMOLLM_SIMD_INLINE_512 Vec set1(float v) { return _mm512_set1_ps(v); }
  EMOLLM_SIMD_INLINE_512 Vec maskz(Mask m, Vec v) { return _mm512_maskz_mov_ps(m, v); }
  EMOLLM_SIMD_INLINE_512 Vec round_away(Vec v) {
    const __m512 sb = _mm512_set1_ps(-0.0f);
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_andnot_ps(sb, _mm512_sub_ps(v, t));
    const __mmask16 up = _mm512_cmp_ps_mask(f, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm512_add_ps(t, _mm512_maskz_mov_ps(up, _mm512_or_ps(_mm512_set1_ps(1.0f), _mm512_and_ps(v, sb))));
  }
  EMOLLM_SIMD_INLINE_512 Vec loadu(const float* p) { return _mm512_loadu_ps(p); }
  EMOLLM_SIMD_INLINE_512 void storeu(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  EMOLLM_SIMD_INLINE_512 Vec load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  EMOLLM_SIMD_INLINE_512 Vec load_bf16(const uint16_t* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  EMOLLM_SIMD_INLINE_512 void store_f16(uint16_t* p, Vec v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  EMOLLM_SIMD_INLINE_512 void store_bf16(uint16_t* p, Vec v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd)), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  }

  using F64 = __m512d;
  EMOLLM_SIMD_INLINE_512 F64 zero_f64() { return _mm512_setzero_pd(); }
  EMOLLM_SIMD_INLINE_512 F64 add_f64(F64 a, F64 b) { return _mm512_add_pd(a, b); }
  EMOLLM_SIMD_INLINE_512 F64 widen_lo(Vec v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
  EMOLLM_SIMD_INLINE_512 F64 widen_hi(Vec v) {
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  }
  EMOLLM_SIMD_INLINE_512 double reduce_add_f64(F64 v) { return _mm512_reduce_add_pd(v); }
};


}  // namespace simd
}  // namespace emollm
#endif  // __x86_64__
