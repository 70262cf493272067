// Element types of weights and activations, and the GGUF block-quantised formats.
// Layouts are bit-exact with ggml so GGUF tensors are used in place from the mmap.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace emollm {

enum class DType : uint8_t {
  F32 = 0, F16 = 1, BF16 = 2, Q8_0 = 3, Q4_0 = 4,
  // Further GGUF formats (block structs and conversions in quant_formats.h).
  Q4_1 = 5, Q5_0 = 6, Q5_1 = 7, Q4_K = 8, Q5_K = 9, Q6_K = 10,
};

constexpr int kQK = 32;  // elements per q8_0 / q4_0 block (ggml QK8_0 == QK4_0 == 32)

// ggml block_q8_0: one fp16 scale, 32 signed bytes; value = d * qs[i].
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQK];
};
// ggml block_q4_0: one fp16 scale, 32 nibbles; element i < 16 is the low nibble of qs[i],
// element i >= 16 the high nibble of qs[i-16]; value = d * (nibble - 8).
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ8_0) == 34, "q8_0 block must match ggml");
static_assert(sizeof(BlockQ4_0) == 18, "q4_0 block must match ggml");

const char* dtype_name(DType t);
// Parses "f32", "F16", "bf16", "q8_0", "Q4_0" ...; returns false when unknown.
bool dtype_from_name(const char* name, DType* out);
bool dtype_is_quantized(DType t);
// Elements per storage block (1 for plain types, 32 for q8_0/q4_0/q4_1/q5_0/q5_1, 256 for k-quants).
int64_t dtype_block_elems(DType t);
// Bytes per storage block.
size_t dtype_block_bytes(DType t);
// Bytes of a row of n elements; n must be a multiple of dtype_block_elems(t).
size_t dtype_row_bytes(DType t, int64_t n);

// ---- scalar conversions (IEEE binary16 and bfloat16 <-> binary32) ----
inline float fp32_from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t fp32_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float bf16_to_f32(uint16_t h) { return fp32_from_bits(uint32_t(h) << 16); }
// Round to nearest even, NaN stays NaN (as torch and ggml do).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = fp32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// ---- rows ----
// Converts n elements of type t at src into f32 at dst (n a multiple of the block size).
void dequantize_row(DType t, const void* src, float* dst, int64_t n);
// Converts n f32 values to type t (round to nearest; q8_0/q4_0 as ggml's reference quantizers).
void quantize_row(DType t, const float* src, void* dst, int64_t n);

}  // namespace emollm
