// The further GGUF block-quantised formats: q4_1, q5_0, q5_1 (32-element blocks) and the
// k-quants q4_K, q5_K, q6_K (256-element super-blocks). Layouts are bit-exact with ggml's
// ggml-common.h so GGUF tensors are used in place from the mmap; dequantisation repeats ggml's
// float operations (same products in the same order) so the values are identical to llama.cpp's,
// and quantisation is ggml's *_ref reference quantisers (what llama-quantize writes without an
// importance matrix). dtype.cpp dispatches here for these types.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace emollm {

constexpr int kQKK = 256;  // elements per k-quant super-block (ggml QK_K)

// q4_1: value = d * q + m, q in 0..15; element i < 16 is the low nibble of qs[i], i >= 16 the
// high nibble of qs[i-16].
struct BlockQ4_1 {
  uint16_t d, m;
  uint8_t qs[16];
};
// q5_0: value = d * (q - 16), q in 0..31; low 4 bits as q4_0, bit 4 of element i is bit i of qh.
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[16];
};
// q5_1: value = d * q + m, q in 0..31; bits as q5_0.
struct BlockQ5_1 {
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[16];
};
// q4_K: 8 sub-blocks of 32; sub-block j: value = d * sc_j * q - dmin * m_j, q in 0..15, the
// 6-bit sc_j / m_j packed in scales[12] (ggml get_scale_min_k4). Elements 64c..64c+31 are the low
// nibbles of qs[32c..32c+31], 64c+32..64c+63 the high nibbles.
struct BlockQ4_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qs[128];
};
// q5_K: q4_K plus a fifth bit: element 64c+l has bit 2c of qh[l], 64c+32+l bit 2c+1.
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};
// q6_K: 16 sub-blocks of 16; value = d * scales[j] * (q - 32), q in 0..63 (4 low bits in ql,
// 2 high bits in qh; see dequantize_row_q6_K in ggml-quants.c for the interleave).
struct BlockQ6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};
static_assert(sizeof(BlockQ4_1) == 20, "q4_1 block must match ggml");
static_assert(sizeof(BlockQ5_0) == 22, "q5_0 block must match ggml");
static_assert(sizeof(BlockQ5_1) == 24, "q5_1 block must match ggml");
static_assert(sizeof(BlockQ4_K) == 144, "q4_K block must match ggml");
static_assert(sizeof(BlockQ5_K) == 176, "q5_K block must match ggml");
static_assert(sizeof(BlockQ6_K) == 210, "q6_K block must match ggml");

// True for the types this file handles.
bool dtype_is_ext_quant(DType t);
// The 6-bit scale and min of sub-block j (0..7) of a q4_K / q5_K block (ggml get_scale_min_k4).
inline void kquant_scale_min(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}
// n must be a multiple of the type's block size (checked by the dtype.cpp callers).
void dequantize_row_ext(DType t, const void* src, float* dst, int64_t n);
void quantize_row_ext(DType t, const float* src, void* dst, int64_t n);

}  // namespace emollm
