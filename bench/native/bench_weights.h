// The random problem the quantised-GEMM A/B tools share (small_m_ab, q8_panels_ab): N x K weights
// 0.02 * N(0, 1) quantised row by row to `t` (the row layout quant_repack takes), and M x K
// activations N(0, 1), drawn in that order from the caller's generator (so a tool that draws
// several shapes from one generator keeps its sequence of draws).
#pragma once
#include <cstdint>
#include <random>
#include <vector>

#include "base/dtype.h"

namespace bench {
struct QuantizedProblem {
  std::vector<float> x;    // M x K activations
  std::vector<uint8_t> w;  // N rows of dtype_row_bytes(t, K) bytes
};

inline QuantizedProblem random_quantized(emollm::DType t, int64_t M, int64_t N, int64_t K, std::mt19937& rng,
                                         std::normal_distribution<float>& nd) {
  std::vector<float> W(size_t(N * K));
  QuantizedProblem p;
  p.x.resize(size_t(M * K));
  for (float& v : W) v = 0.02f * nd(rng);
  for (float& v : p.x) v = nd(rng);
  const size_t rb = emollm::dtype_row_bytes(t, K);
  p.w.resize(rb * size_t(N));
  for (int64_t n = 0; n < N; ++n) emollm::quantize_row(t, W.data() + n * K, p.w.data() + size_t(n) * rb, K);
  return p;
}
}  // namespace bench
