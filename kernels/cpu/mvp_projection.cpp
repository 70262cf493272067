// EmoLLM multi-perspective visual projection, CPU path: one GEMM over the stacked first-layer
// weights (+ bias), GELU(erf) in place, then per head a GEMM into a scratch row block and the
// gate-weighted accumulation into Y. See kernels.h for the contract.
#include <algorithm>
#include <vector>

#include "../../base/error.h"
#include "kernels.h"

namespace emollm {

void mvp_projection(const float* X, const void* W1, const float* b1, const void* W2, const float* b2,
                    const float* G, DType wtype, float* Y, const MvpProjectionParams& p, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(p.tokens >= 0 && p.d_in > 0 && p.d_hid > 0 && p.d_out > 0 && p.n_heads > 0,
                   "mvp_projection: d_in, d_hid, d_out and n_heads must be positive");
  const int64_t ldx = p.ldx ? p.ldx : p.d_in, ldy = p.ldy ? p.ldy : p.d_out;
  EMOLLM_CHECK_ARG(ldx >= p.d_in && ldy >= p.d_out, "mvp_projection: ldx/ldy smaller than the row");
  if (p.tokens == 0) return;
  EMOLLM_CHECK_ARG(X && W1 && W2 && G && Y, "mvp_projection: null pointer");
  const int64_t T = p.tokens, H = p.n_heads, Dh = p.d_hid, Do = p.d_out;
  const int64_t hid_w = H * Dh;

  // 1. hidden[T, H*Dh] = gelu(X W1^T + b1): the stacked first layers in one GEMM.
  std::vector<float> hidden(static_cast<size_t>(T * hid_w));
  gemm(X, ldx, W1, wtype, b1, hidden.data(), hid_w, T, hid_w, p.d_in, pool);
  gelu_erf(hidden.data(), hidden.data(), T * hid_w);

  // 2. per head: tmp = hidden_h W2_h^T + b2_h; Y (+)= G_h * tmp.
  const size_t w2_head_bytes = size_t(Do) * dtype_row_bytes(wtype, Dh);
  std::vector<float> tmp(static_cast<size_t>(T * Do));
  for (int64_t h = 0; h < H; ++h) {
    const void* w2h = static_cast<const uint8_t*>(W2) + size_t(h) * w2_head_bytes;
    gemm(hidden.data() + h * Dh, hid_w, w2h, wtype, b2 ? b2 + h * Do : nullptr, tmp.data(), Do, T, Do, Dh, pool);
    const float* g = G + h * Do;
    for (int64_t t = 0; t < T; ++t) {
      float* y = Y + t * ldy;
      const float* r = tmp.data() + t * Do;
      if (h == 0)
        for (int64_t c = 0; c < Do; ++c) y[c] = g[c] * r[c];
      else
        for (int64_t c = 0; c < Do; ++c) y[c] += g[c] * r[c];
    }
  }
}

}  // namespace emollm
