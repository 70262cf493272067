// Token sampling from logits: greedy, temperature, top-k, top-p, repetition penalty, seeded.
//
// Order (Hugging Face / llama2.c): repetition penalty -> temperature -> top-k -> top-p -> draw.
//   - repetition_penalty (HF/llama.cpp): for each distinct token among the last repeat_last_n
//     tokens of the history, a positive logit is divided by the penalty, a negative one multiplied.
//     1.0 disables it; repeat_last_n 0 disables it, -1 means the whole history.
//   - temperature <= 0: greedy (argmax after the penalty; lowest id wins ties).
//   - top_k <= 0 or >= n_vocab: no top-k. top_p >= 1 (or <= 0): no top-p.
//   - The draw uses a xorshift64* generator seeded with `seed` (llama2.c's random_f32), so the
//     same seed gives the same tokens on every platform. Without top-k/top-p it walks the CDF in
//     token-id order, as llama2.c's sample_mult; with them it walks candidates sorted by
//     descending probability, as llama2.c's sample_topp. With temperature 1, top_p p and no
//     top-k/penalty the draws equal llama2.c run.c's for the same seed.
// All scratch is allocated in the constructor: sample() does not allocate.
#pragma once
#include <cstdint>
#include <vector>

namespace emollm {

struct SamplerParams {
  float temperature = 0.8f;
  int32_t top_k = 40;
  float top_p = 0.95f;
  float repetition_penalty = 1.0f;
  int32_t repeat_last_n = 64;
  uint64_t seed = 0;
};

class Sampler {
 public:
  Sampler(const SamplerParams& p, int64_t n_vocab);
  // Picks the next token from n_vocab logits. `history` holds the tokens so far (prompt and
  // generated), oldest first, for the repetition penalty. `logits` is not modified.
  int32_t sample(const float* logits, const int32_t* history, int64_t n_history);
  const SamplerParams& params() const { return p_; }
  // The generator: uniform float in [0, 1) (24 random bits).
  float next_uniform();

 private:
  SamplerParams p_;
  int64_t n_vocab_;
  uint64_t state_;
  std::vector<float> work_;         // penalised / tempered logits, then probabilities
  std::vector<int32_t> cand_;       // candidate ids
  std::vector<uint8_t> seen_;       // repetition-penalty dedup, one flag per token
};

}  // namespace emollm
