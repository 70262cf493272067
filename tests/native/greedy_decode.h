// The greedy continuation the decoder tests compare with a reference's greedy tokens
// (transformers' greedy_new_tokens): shared by the LLaVA, LLaVA-NeXT, Qwen2-VL and
// emulated-device tests.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "model/llama.h"

namespace emollm_test {

// n argmax tokens after a prompt already evaluated in `ctx`, whose last-position logits are
// `logits`: each chosen token is fed back through ctx.eval for the next one.
inline std::vector<int32_t> argmax_continuation(emollm::LlamaContext& ctx, const float* logits, int64_t n) {
  const int64_t V = ctx.n_vocab();
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t best = int32_t(std::max_element(logits, logits + V) - logits);
    out.push_back(best);
    if (i + 1 < n) logits = ctx.eval(&best, 1);
  }
  return out;
}

}  // namespace emollm_test
