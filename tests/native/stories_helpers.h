// What the session, emulated-device, scheduler and KV-paging tests share about stories260K
// (../shared/models/stories260K): its GGUF, one model loaded once per test binary, llama2.c's
// greedy tokens, greedy generation parameters, and the logit comparison they state their
// tolerances with.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/llama.h"
#include "model/session.h"
#include "shared_data.h"

namespace emollm_test {

// Largest |a - b| over n floats, and whether both have the same argmax.
inline float max_diff(const float* a, const float* b, int64_t n, bool* same_argmax) {
  float m = 0;
  int64_t ia = 0, ib = 0;
  for (int64_t i = 0; i < n; ++i) {
    m = std::max(m, std::fabs(a[i] - b[i]));
    if (a[i] > a[ia]) ia = i;
    if (b[i] > b[ib]) ib = i;
  }
  *same_argmax = ia == ib;
  return m;
}

// ../shared/models/stories260K/gguf/stories260K.gguf, or "" (after a printed skip) when absent.
inline std::string stories_gguf() {
  const std::string& d = stories_dir();
  return d.empty() ? d : d + "/gguf/stories260K.gguf";
}

inline std::shared_ptr<emollm::LlamaModel> stories_model() {
  static std::shared_ptr<emollm::LlamaModel> m = emollm::LlamaModel::load(stories_gguf());
  return m;
}

// llama2.c run.c's greedy decode without a prompt: BOS, then 200 tokens.
inline std::vector<int32_t> oracle_greedy() {
  return read_ints(stories_dir() + "/oracle/greedy_n200_noprompt.tokens.txt");
}

// Argmax decoding: temperature 0 and no repetition penalty (stated, not left to the defaults,
// since the oracle's tokens are plain argmax).
inline emollm::GenerateParams greedy(int64_t max_tokens) {
  emollm::GenerateParams p;
  p.sampler.temperature = 0;
  p.sampler.repetition_penalty = 1.0f;
  p.max_tokens = max_tokens;
  return p;
}

}  // namespace emollm_test
