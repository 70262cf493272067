// Embedding lookup (kernels.h): out[i, :] = f32(table[ids[i], :]).
// Every id is validated before anything is written, so a bad id leaves `out` untouched.
// The scalar path converts rows with dequantize_row (dtype.h); the vector paths convert
// f16 (F16C), bf16, q8_0 and q4_0 directly and give bit-identical results (each element is a
// single exact conversion or one f32 product d * q, as in dequantize_row).
#include "simd_math.h"  // first: see the note on GCC 12 warnings there

#include <cstring>
#include <string>

#include "elementwise_ref.h"
#include "row_parallel.h"

#include "../../base/error.h"

namespace emollm {

namespace {

void check_embedding(const void* table, DType dtype, int64_t vocab, int64_t dim, const int32_t* ids,
                     int64_t n, int64_t ld_out) {
  EMOLLM_CHECK_ARG(vocab >= 0 && dim >= 0 && n >= 0, "embedding_lookup: negative size");
  EMOLLM_CHECK_ARG(n <= 1 || ld_out >= dim, "embedding_lookup: ld_out smaller than dim");
  EMOLLM_CHECK_ARG(dim % dtype_block_elems(dtype) == 0,
                   std::string("embedding_lookup: dim ") + std::to_string(dim) + " is not a multiple of the " +
                       dtype_name(dtype) + " block size");
  EMOLLM_CHECK_ARG(n == 0 || (ids != nullptr && table != nullptr), "embedding_lookup: null table or ids");
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= vocab)
      throw Error(ErrorCode::InvalidArgument, "embedding_lookup: token id " + std::to_string(ids[i]) +
                                                  " (at index " + std::to_string(i) + ") is outside [0, " +
                                                  std::to_string(vocab) + ")");
  }
}

}  // namespace

namespace ref {

void embedding_lookup(const void* table, DType dtype, int64_t vocab, int64_t dim,
                      const int32_t* ids, int64_t n, float* out, int64_t ld_out) {
  check_embedding(table, dtype, vocab, dim, ids, n, ld_out);
  if (dim == 0) return;
  const size_t row_bytes = dtype_row_bytes(dtype, dim);
  const uint8_t* base = static_cast<const uint8_t*>(table);
  for (int64_t i = 0; i < n; ++i)
    dequantize_row(dtype, base + size_t(ids[i]) * row_bytes, out + i * ld_out, dim);
}

}  // namespace ref

#if defined(__x86_64__)
namespace {

EMOLLM_TARGET_AVX512 void row_avx512(DType t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t j = 0; j < n; j += 16) {
        __mmask16 k = simd::tail_mask16(n - j);
        __m256i h = _mm256_maskz_loadu_epi16(k, s + j);
        _mm512_mask_storeu_ps(dst + j, k, _mm512_cvtph_ps(h));
      }
      return;
    }
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t j = 0; j < n; j += 16) {
        __mmask16 k = simd::tail_mask16(n - j);
        __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, s + j));
        _mm512_mask_storeu_ps(dst + j, k, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
      }
      return;
    }
    case DType::Q8_0: {
      const BlockQ8_0* b = static_cast<const BlockQ8_0*>(src);
      for (int64_t i = 0; i < n / kQK; ++i) {
        const __m512 d = _mm512_set1_ps(_cvtsh_ss(b[i].d));
        const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs));
        const __m128i q1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs + 16));
        _mm512_storeu_ps(dst + i * kQK, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0))));
        _mm512_storeu_ps(dst + i * kQK + 16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1))));
      }
      return;
    }
    case DType::Q4_0: {
      const BlockQ4_0* b = static_cast<const BlockQ4_0*>(src);
      const __m128i lo_mask = _mm_set1_epi8(0x0f);
      const __m512i eight = _mm512_set1_epi32(8);
      for (int64_t i = 0; i < n / kQK; ++i) {
        const __m512 d = _mm512_set1_ps(_cvtsh_ss(b[i].d));
        const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs));
        const __m128i lo = _mm_and_si128(q, lo_mask);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), lo_mask);
        __m512i l = _mm512_sub_epi32(_mm512_cvtepu8_epi32(lo), eight);
        __m512i h = _mm512_sub_epi32(_mm512_cvtepu8_epi32(hi), eight);
        _mm512_storeu_ps(dst + i * kQK, _mm512_mul_ps(d, _mm512_cvtepi32_ps(l)));
        _mm512_storeu_ps(dst + i * kQK + 16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(h)));
      }
      return;
    }
    case DType::F32:
    default:
      dequantize_row(t, src, dst, n);
      return;
  }
}

EMOLLM_TARGET_AVX2 void row_avx2(DType t, const void* src, float* dst, int64_t n) {
  switch (t) {
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      int64_t j = 0;
      for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + j))));
      for (; j < n; ++j) dst[j] = _cvtsh_ss(s[j]);
      return;
    }
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      int64_t j = 0;
      for (; j + 8 <= n; j += 8) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + j)));
        _mm256_storeu_ps(dst + j, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
      }
      for (; j < n; ++j) dst[j] = bf16_to_f32(s[j]);
      return;
    }
    case DType::Q8_0: {
      const BlockQ8_0* b = static_cast<const BlockQ8_0*>(src);
      for (int64_t i = 0; i < n / kQK; ++i) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[i].d));
        for (int k = 0; k < 4; ++k) {
          const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b[i].qs + 8 * k));
          _mm256_storeu_ps(dst + i * kQK + 8 * k, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
        }
      }
      return;
    }
    case DType::Q4_0: {
      const BlockQ4_0* b = static_cast<const BlockQ4_0*>(src);
      const __m128i lo_mask = _mm_set1_epi8(0x0f);
      const __m256i eight = _mm256_set1_epi32(8);
      for (int64_t i = 0; i < n / kQK; ++i) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[i].d));
        const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs));
        const __m128i lo = _mm_and_si128(q, lo_mask);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), lo_mask);
        const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        for (int k = 0; k < 4; ++k) {
          __m256i v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(parts[k]), eight);
          _mm256_storeu_ps(dst + i * kQK + 8 * k, _mm256_mul_ps(d, _mm256_cvtepi32_ps(v)));
        }
      }
      return;
    }
    case DType::F32:
    default:
      dequantize_row(t, src, dst, n);
      return;
  }
}

}  // namespace
#endif

namespace {
void embedding_rows(const void* table, DType dtype, int64_t vocab, int64_t dim,
                    const int32_t* ids, int64_t n, float* out, int64_t ld_out) {
  const detail::EltPath path = detail::elt_path();
  if (path == detail::EltPath::Scalar) return ref::embedding_lookup(table, dtype, vocab, dim, ids, n, out, ld_out);
#if defined(__x86_64__)
  check_embedding(table, dtype, vocab, dim, ids, n, ld_out);
  if (dim == 0) return;
  const size_t row_bytes = dtype_row_bytes(dtype, dim);
  const uint8_t* base = static_cast<const uint8_t*>(table);
  for (int64_t i = 0; i < n; ++i) {
    const void* src = base + size_t(ids[i]) * row_bytes;
    if (path == detail::EltPath::Avx512) row_avx512(dtype, src, out + i * ld_out, dim);
    else row_avx2(dtype, src, out + i * ld_out, dim);
  }
#endif
}

}  // namespace

void embedding_lookup(const void* table, DType dtype, int64_t vocab, int64_t dim,
                      const int32_t* ids, int64_t n, float* out, int64_t ld_out, ThreadPool* pool) {
  check_embedding(table, dtype, vocab, dim, ids, n, ld_out);
  detail::for_rows(pool, n, dim, [&](int64_t i0, int64_t i1) {
    embedding_rows(table, dtype, vocab, dim, ids + i0, i1 - i0, out + i0 * ld_out, ld_out);
  });
}

}  // namespace emollm
