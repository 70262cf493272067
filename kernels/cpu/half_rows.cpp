// Half-precision rows <-> f32 (half_rows.h): the vector bodies are half_rows.inc, compiled here
// once for AVX-512 (F32x16) and once for AVX2 (F32x8).
#include "half_rows.h"

#include <cstring>

#include "../../base/cpu_features.h"
#include "../../base/error.h"
#include "simd_vec.h"

namespace emollm {
namespace half_rows {
namespace {

void copy_f32(const void* src, float* dst, int64_t n) { std::memcpy(dst, src, size_t(n) * sizeof(float)); }
void copy_f32_out(const float* src, void* dst, int64_t n) { std::memcpy(dst, src, size_t(n) * sizeof(float)); }
void widen_f16_scalar(const void* src, float* dst, int64_t n) {
  const auto* s = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
}
void widen_bf16_scalar(const void* src, float* dst, int64_t n) {
  const auto* s = static_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
}
void narrow_f16_scalar(const float* src, void* dst, int64_t n) {
  auto* d = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
}
void narrow_bf16_scalar(const float* src, void* dst, int64_t n) {
  auto* d = static_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
}

#if defined(__x86_64__)
#define EMO_HR_TARGET EMOLLM_TARGET_AVX512
#define EMO_HR_V simd::F32x16
#define EMO_HR_NS avx512
#include "half_rows.inc"
#undef EMO_HR_TARGET
#undef EMO_HR_V
#undef EMO_HR_NS
#define EMO_HR_TARGET EMOLLM_TARGET_AVX2
#define EMO_HR_V simd::F32x8
#define EMO_HR_NS avx2
#include "half_rows.inc"
#undef EMO_HR_TARGET
#undef EMO_HR_V
#undef EMO_HR_NS
#endif

void check_type(DType t, const char* what) {
  if (t != DType::F32 && t != DType::F16 && t != DType::BF16)
    throw Error(ErrorCode::Unsupported, std::string(what) + ": " + dtype_name(t) + " is not a half type (f32, f16, bf16)");
}

}  // namespace

WidenFn widen_fn(DType t) {
  check_type(t, "half_rows::widen_fn");
  if (t == DType::F32) return copy_f32;
#if defined(__x86_64__)
  const Isa isa = isa_active();
  if (isa >= Isa::Avx512) return t == DType::F16 ? avx512::widen_f16 : avx512::widen_bf16;
  if (isa >= Isa::Avx2) return t == DType::F16 ? avx2::widen_f16 : avx2::widen_bf16;
#endif
  return t == DType::F16 ? widen_f16_scalar : widen_bf16_scalar;
}

NarrowFn narrow_fn(DType t) {
  check_type(t, "half_rows::narrow_fn");
  if (t == DType::F32) return copy_f32_out;
#if defined(__x86_64__)
  const Isa isa = isa_active();
  if (isa >= Isa::Avx512) return t == DType::F16 ? avx512::narrow_f16 : avx512::narrow_bf16;
  if (isa >= Isa::Avx2) return t == DType::F16 ? avx2::narrow_f16 : avx2::narrow_bf16;
#endif
  return t == DType::F16 ? narrow_f16_scalar : narrow_bf16_scalar;
}

}  // namespace half_rows
}  // namespace emollm
