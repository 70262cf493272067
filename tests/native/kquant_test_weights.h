// q4_K / q5_K / q6_K weights for the bound tests of the K-quant GEMM (test_quant_ext.cpp) and
// GEMV (test_kquant_gemv.cpp), the min term those bounds need, and the N(0, scale) values both
// files draw their weights, activations and biases from.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "../../base/dtype.h"
#include "../../base/quant_formats.h"
#include "testing.h"

namespace emollm_test {


// N rows of K: quantize_row of N(0, 0.05) rows (normal_floats(N * K, seed, 0.05f); random_bytes
// false), or random block bytes (every code, scale and min bit pattern) with fp16 d / dmin from a
// sane set (~1e-3 .. 8e-3, one negative), so nothing overflows to inf.
inline std::vector<uint8_t> kquant_weights(emollm::DType t, int64_t N, int64_t K, bool random_bytes, uint32_t seed) {
  using namespace emollm;
  const size_t rb = dtype_row_bytes(t, K), bb = dtype_block_bytes(t);
  std::vector<uint8_t> w(size_t(N) * rb);
  if (!random_bytes) {
    const std::vector<float> wf = normal_floats(size_t(N * K), seed, 0.05f);
    for (int64_t n = 0; n < N; ++n) quantize_row(t, wf.data() + n * K, w.data() + size_t(n) * rb, K);
    return w;
  }
  std::mt19937 g(seed);
  for (auto& b : w) b = uint8_t(g());
  const uint16_t sane[] = {0x1400, 0x1C00, 0x9800, 0x2000, 0x1A66};
  for (size_t i = 0; i < w.size() / bb; ++i) {
    uint8_t* p = w.data() + i * bb;
    const uint16_t d = sane[g() % 5], dmin = sane[g() % 5];
    std::memcpy(p + (t == DType::Q6_K ? 208 : 0), &d, 2);
    if (t != DType::Q6_K) std::memcpy(p + 2, &dmin, 2);
  }
  return w;
}

// |M_j| = |dmin * m_j| of sub-block j (0..7) of a q4_K / q5_K super-block; 0 for q6_K (no min).
inline double kquant_min_magnitude(emollm::DType t, const uint8_t* blk, int j) {
  using namespace emollm;
  if (t == DType::Q6_K) return 0.0;
  uint8_t sc, m;
  kquant_scale_min(j, blk + 4, &sc, &m);
  uint16_t h;
  std::memcpy(&h, blk + 2, 2);
  return std::fabs(double(f16_to_f32(h))) * m;
}

}  // namespace emollm_test
