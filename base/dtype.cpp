#include "dtype.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>

#include "error.h"
#include "quant_formats.h"

namespace emollm {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::Q8_0: return "q8_0";
    case DType::Q4_0: return "q4_0";
    case DType::Q4_1: return "q4_1";
    case DType::Q5_0: return "q5_0";
    case DType::Q5_1: return "q5_1";
    case DType::Q4_K: return "q4_K";
    case DType::Q5_K: return "q5_K";
    case DType::Q6_K: return "q6_K";
  }
  return "?";
}

bool dtype_from_name(const char* name, DType* out) {
  std::string s(name ? name : "");
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  static const std::pair<const char*, DType> table[] = {
      {"f32", DType::F32},   {"float32", DType::F32}, {"f16", DType::F16},   {"float16", DType::F16},
      {"bf16", DType::BF16}, {"bfloat16", DType::BF16}, {"q8_0", DType::Q8_0}, {"q4_0", DType::Q4_0},
      {"q4_1", DType::Q4_1}, {"q5_0", DType::Q5_0}, {"q5_1", DType::Q5_1},     {"q4_k", DType::Q4_K},
      {"q5_k", DType::Q5_K}, {"q6_k", DType::Q6_K}};
  for (auto& [n, t] : table)
    if (s == n) { *out = t; return true; }
  return false;
}

bool dtype_is_quantized(DType t) { return t == DType::Q8_0 || t == DType::Q4_0 || dtype_is_ext_quant(t); }
int64_t dtype_block_elems(DType t) {
  if (t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K) return kQKK;
  return dtype_is_quantized(t) ? kQK : 1;
}

size_t dtype_block_bytes(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16:
    case DType::BF16: return 2;
    case DType::Q8_0: return sizeof(BlockQ8_0);
    case DType::Q4_0: return sizeof(BlockQ4_0);
    case DType::Q4_1: return sizeof(BlockQ4_1);
    case DType::Q5_0: return sizeof(BlockQ5_0);
    case DType::Q5_1: return sizeof(BlockQ5_1);
    case DType::Q4_K: return sizeof(BlockQ4_K);
    case DType::Q5_K: return sizeof(BlockQ5_K);
    case DType::Q6_K: return sizeof(BlockQ6_K);
  }
  return 0;
}

size_t dtype_row_bytes(DType t, int64_t n) {
  const int64_t be = dtype_block_elems(t);
  if (n < 0 || n % be != 0)
    throw Error(ErrorCode::InvalidArgument, std::string("row of ") + std::to_string(n) + " elements is not a multiple of the " +
                                                dtype_name(t) + " block size " + std::to_string(be));
  return size_t(n / be) * dtype_block_bytes(t);
}

// IEEE half <-> float without relying on F16C, exact for all inputs (denormals, inf, NaN).
float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return fp32_from_bits(sign);
    // subnormal: value = mant * 2^-24
    float f = float(mant) * 5.9604644775390625e-8f;
    return sign ? -f : f;
  }
  if (exp == 31) return fp32_from_bits(sign | 0x7f800000u | (mant << 13));
  return fp32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t f32_to_f16(float f) {
  const uint32_t u = fp32_to_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t au = u & 0x7fffffffu;
  if (au >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (au > 0x7f800000u ? 0x200u | ((au >> 13) & 0x3ffu) : 0u));
  if (au >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: overflow to inf
  if (au < 0x38800000u) {
    // result is subnormal or zero: round(|f| / 2^-24) to nearest even
    const float af = fp32_from_bits(au);
    const float scaled = af * 16777216.0f;  // 2^24, exact
    const float r = std::nearbyint(scaled);  // default rounding mode: nearest even
    return uint16_t(sign | uint16_t(r));
  }
  // normal: round mantissa from 23 to 10 bits, nearest even; carry may bump the exponent
  uint32_t v = au - 0x38000000u;  // rebias exponent 127 -> 15
  v += 0xfffu + ((v >> 13) & 1u);
  return uint16_t(sign | uint16_t(v >> 13));
}

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  if (dtype_is_ext_quant(t)) {
    (void)dtype_row_bytes(t, n);  // validates n
    return dequantize_row_ext(t, src, dst, n);
  }
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(s[i]);
      return;
    }
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::Q8_0: {
      (void)dtype_row_bytes(t, n);  // validates n
      const BlockQ8_0* b = static_cast<const BlockQ8_0*>(src);
      for (int64_t i = 0; i < n / kQK; ++i) {
        const float d = f16_to_f32(b[i].d);
        for (int j = 0; j < kQK; ++j) dst[i * kQK + j] = d * float(b[i].qs[j]);
      }
      return;
    }
    case DType::Q4_0: {
      (void)dtype_row_bytes(t, n);
      const BlockQ4_0* b = static_cast<const BlockQ4_0*>(src);
      for (int64_t i = 0; i < n / kQK; ++i) {
        const float d = f16_to_f32(b[i].d);
        for (int j = 0; j < kQK / 2; ++j) {
          dst[i * kQK + j] = d * float(int(b[i].qs[j] & 0x0f) - 8);
          dst[i * kQK + j + kQK / 2] = d * float(int(b[i].qs[j] >> 4) - 8);
        }
      }
      return;
    }    default:  // the further formats returned above
      return;
  }
}

// Same rounding as ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref, so GGUF files we write
// match llama.cpp's, and tests can round-trip against them.
void quantize_row(DType t, const float* src, void* dst, int64_t n) {
  if (dtype_is_ext_quant(t)) {
    (void)dtype_row_bytes(t, n);
    return quantize_row_ext(t, src, dst, n);
  }
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, size_t(n) * 4);
      return;
    case DType::F16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(src[i]);
      return;
    }
    case DType::BF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
      return;
    }
    case DType::Q8_0: {
      (void)dtype_row_bytes(t, n);
      BlockQ8_0* b = static_cast<BlockQ8_0*>(dst);
      for (int64_t i = 0; i < n / kQK; ++i) {
        const float* x = src + i * kQK;
        float amax = 0.0f;
        for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = f32_to_f16(d);
        for (int j = 0; j < kQK; ++j) b[i].qs[j] = int8_t(std::roundf(x[j] * id));
      }
      return;
    }
    case DType::Q4_0: {
      (void)dtype_row_bytes(t, n);
      BlockQ4_0* b = static_cast<BlockQ4_0*>(dst);
      for (int64_t i = 0; i < n / kQK; ++i) {
        const float* x = src + i * kQK;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < kQK; ++j) {
          if (amax < std::fabs(x[j])) { amax = std::fabs(x[j]); max = x[j]; }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = f32_to_f16(d);
        for (int j = 0; j < kQK / 2; ++j) {
          const int x0 = std::min(15, int(int8_t(x[j] * id + 8.5f)));
          const int x1 = std::min(15, int(int8_t(x[j + kQK / 2] * id + 8.5f)));
          b[i].qs[j] = uint8_t(x0 | (x1 << 4));
        }
      }
      return;
    }    default:
      return;
  }
}

}  // namespace emollm
