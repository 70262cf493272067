#include "model/sampler.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"

namespace emollm {

Sampler::Sampler(const SamplerParams& p, int64_t n_vocab)
    : p_(p), n_vocab_(n_vocab), state_(p.seed ? p.seed : 0x9E3779B97F4A7C15ull),
      work_(size_t(n_vocab)), cand_(size_t(n_vocab)), seen_(size_t(n_vocab), 0) {
  EMOLLM_CHECK_ARG(n_vocab > 0, "sampler: n_vocab must be > 0");
  EMOLLM_CHECK_ARG(std::isfinite(p.temperature), "sampler: temperature must be finite");
  EMOLLM_CHECK_ARG(p.repetition_penalty > 0 && std::isfinite(p.repetition_penalty),
                   "sampler: repetition_penalty must be > 0");
  EMOLLM_CHECK_ARG(p.repeat_last_n >= -1, "sampler: repeat_last_n must be >= -1");
  EMOLLM_CHECK_ARG(!std::isnan(p.top_p), "sampler: top_p is NaN");
}

namespace {

// The greedy pick: the lowest index of the largest value, NaN never winning past index 0, i.e.
// exactly `best = 0; for i: if (x[i] > x[best]) best = i`, but in 16 independent lanes (each
// the same loop over its own stride, started from x[0]) so the compares do not wait on each
// other: ~32000 logits in a few us instead of a chain of dependent loads and compares.
int64_t argmax_first(const float* x, int64_t n) {
  if (n <= 1 || std::isnan(x[0])) return 0;
  constexpr int kLanes = 16;
  float bv[kLanes];
  int64_t bi[kLanes];
  for (int l = 0; l < kLanes; ++l) bv[l] = x[0], bi[l] = 0;
  int64_t i = 1;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l)
      if (x[i + l] > bv[l]) bv[l] = x[i + l], bi[l] = i + l;
  for (int l = 0; i < n; ++i, ++l)
    if (x[i] > bv[l]) bv[l] = x[i], bi[l] = i;
  // each lane holds the first index of its own maximum (or 0 when none beat x[0]): the largest
  // value wins, the lowest index among equal ones
  float v = bv[0];
  int64_t best = bi[0];
  for (int l = 1; l < kLanes; ++l)
    if (bv[l] > v || (bv[l] == v && bi[l] < best)) v = bv[l], best = bi[l];
  return best;
}

}  // namespace

// xorshift64* as llama2.c: 24 random bits -> [0, 1).
float Sampler::next_uniform() {
  state_ ^= state_ >> 12;
  state_ ^= state_ << 25;
  state_ ^= state_ >> 27;
  const uint32_t r = uint32_t((state_ * 0x2545F4914F6CDD1Dull) >> 32);
  return float(r >> 8) / 16777216.0f;
}

int32_t Sampler::sample(const float* logits, const int32_t* history, int64_t n_history) {
  const int64_t V = n_vocab_;
  const bool penalty = p_.repetition_penalty != 1.0f && p_.repeat_last_n != 0 && history && n_history > 0;
  // greedy without a penalty reads the logits in place (no copy of the vocabulary)
  if (p_.temperature <= 0.0f && !penalty) return int32_t(argmax_first(logits, V));
  float* w = work_.data();
  std::copy(logits, logits + V, w);

  // ---- repetition penalty over the distinct tokens of the last repeat_last_n
  if (penalty) {
    const int64_t start = p_.repeat_last_n < 0 ? 0 : std::max<int64_t>(0, n_history - p_.repeat_last_n);
    for (int64_t i = start; i < n_history; ++i) {
      const int32_t id = history[i];
      if (id < 0 || id >= V || seen_[size_t(id)]) continue;
      seen_[size_t(id)] = 1;
      w[id] = w[id] > 0 ? w[id] / p_.repetition_penalty : w[id] * p_.repetition_penalty;
    }
    for (int64_t i = start; i < n_history; ++i)
      if (history[i] >= 0 && history[i] < V) seen_[size_t(history[i])] = 0;
  }

  // ---- greedy
  if (p_.temperature <= 0.0f) return int32_t(argmax_first(w, V));

  // ---- temperature
  for (int64_t i = 0; i < V; ++i) w[i] /= p_.temperature;

  const bool use_k = p_.top_k > 0 && p_.top_k < V;
  const bool use_p = p_.top_p > 0.0f && p_.top_p < 1.0f;
  int32_t* cand = cand_.data();
  auto by_value_desc = [w](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); };

  // ---- top-k: the k largest, sorted descending; softmax over them
  int64_t n = V;
  if (use_k) {
    for (int64_t i = 0; i < V; ++i) cand[i] = int32_t(i);
    n = p_.top_k;
    std::partial_sort(cand, cand + n, cand + V, by_value_desc);
    const float mx = w[cand[0]];
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) sum += (w[cand[i]] = std::exp(w[cand[i]] - mx));
    for (int64_t i = 0; i < n; ++i) w[cand[i]] /= sum;
  } else {
    // softmax over the whole vocabulary (llama2.c's softmax, in float)
    float mx = w[0];
    for (int64_t i = 1; i < V; ++i) mx = std::max(mx, w[i]);
    float sum = 0.0f;
    for (int64_t i = 0; i < V; ++i) sum += (w[i] = std::exp(w[i] - mx));
    for (int64_t i = 0; i < V; ++i) w[i] /= sum;
  }
  const float coin = next_uniform();

  if (!use_p) {
    float cdf = 0.0f;
    if (use_k) {  // sorted candidates, probabilities sum to 1
      for (int64_t i = 0; i < n; ++i) {
        cdf += w[cand[i]];
        if (coin < cdf) return cand[i];
      }
      return cand[n - 1];
    }
    for (int64_t i = 0; i < V; ++i) {  // llama2.c sample_mult
      cdf += w[i];
      if (coin < cdf) return int32_t(i);
    }
    return int32_t(V - 1);
  }

  // ---- top-p (nucleus), as llama2.c sample_topp
  if (!use_k) {
    // tokens below the cutoff cannot be in the nucleus: skip sorting them
    const float cutoff = (1.0f - p_.top_p) / float(V - 1);
    n = 0;
    for (int64_t i = 0; i < V; ++i)
      if (w[i] >= cutoff) cand[n++] = int32_t(i);
    std::sort(cand, cand + n, by_value_desc);
  }
  if (n == 0) return 0;  // unreachable: the max probability is >= 1/V >= cutoff
  float cum = 0.0f;
  int64_t last = n - 1;
  for (int64_t i = 0; i < n; ++i) {
    cum += w[cand[i]];
    if (cum > p_.top_p) { last = i; break; }
  }
  const float r = coin * cum;
  float cdf = 0.0f;
  for (int64_t i = 0; i <= last; ++i) {
    cdf += w[cand[i]];
    if (r < cdf) return cand[i];
  }
  return cand[last];
}

}  // namespace emollm
