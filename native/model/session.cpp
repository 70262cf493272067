#include "model/session.h"

#include <algorithm>
#include <chrono>

#include "base/error.h"
#include "core/profiling_backend.h"

namespace emollm {

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::MaxTokens: return "max-tokens";
    case StopReason::Eos: return "eos";
    case StopReason::StopToken: return "stop-token";
    case StopReason::ContextFull: return "context-full";
    case StopReason::Aborted: return "aborted";
  }
  return "unknown";
}

void Session::mirror() {
  if (n_past_mirror_) n_past_mirror_->store(ctx_.n_past());
}

const float* Session::prefill(const std::vector<int32_t>& prompt, const float* embd, const std::atomic<bool>* abort,
                             const int32_t* pos3) {
  const float* logits = ctx_.eval_prompt(prompt.data(), int64_t(prompt.size()), abort, embd, pos3);
  mirror();
  return logits;
}

SequenceGenerator::SequenceGenerator(const LlamaModel& model, int64_t n_vocab, int64_t n_ctx,
                                     const std::vector<int32_t>& prompt, const GenerateParams& p)
    : m_(model), n_ctx_(n_ctx), p_(p), sampler_(p.sampler, n_vocab), history_(prompt) {
  EMOLLM_CHECK_ARG(p.max_tokens >= 0, "generate: max_tokens must be >= 0");
  // The repetition penalty sees the prompt (image pseudo-ids included: they are out of vocab
  // range and ignored by the sampler) and everything generated.
  const size_t most = size_t(std::min<int64_t>(p.max_tokens, n_ctx)) + 1;
  history_.reserve(prompt.size() + most);
  r_.tokens.reserve(most);
}

int32_t SequenceGenerator::step(const float* logits, bool aborted, int64_t n_past, const TokenSink& on_token) {
  if (done_) return -1;
  if (!logits || aborted) return finish(StopReason::Aborted);
  if (int64_t(r_.tokens.size()) >= p_.max_tokens) return finish(StopReason::MaxTokens);
  // sampling in the per-op profile (core/profiling_backend.h; a flag test when it is off)
  const bool prof = profile_enabled();
  const auto t0 = prof ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
  const int32_t t = sampler_.sample(logits, history_.data(), int64_t(history_.size()));
  if (prof) profile_add(true, "sample", "", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  if (m_.is_eos(t)) return finish(StopReason::Eos);
  if (std::find(p_.stop_tokens.begin(), p_.stop_tokens.end(), t) != p_.stop_tokens.end())
    return finish(StopReason::StopToken);
  r_.tokens.push_back(t);
  history_.push_back(t);
  if (on_token) on_token(t);
  if (int64_t(r_.tokens.size()) >= p_.max_tokens) return finish(StopReason::MaxTokens);
  if (n_past >= n_ctx_) return finish(StopReason::ContextFull);
  return t;
}

GenerateResult Session::generate(const std::vector<int32_t>& prompt, const float* embd, const GenerateParams& p,
                                 const std::atomic<bool>* abort, const TokenSink& on_token, const int32_t* pos3) {
  SequenceGenerator gen(ctx_.model(), ctx_.n_vocab(), ctx_.n_ctx(), prompt, p);
  auto aborted = [&] { return abort && abort->load(); };
  const float* logits = prefill(prompt, embd, abort, pos3);
  for (;;) {
    const int32_t t = gen.step(logits, aborted(), ctx_.n_past(), on_token);
    if (t < 0) return gen.take_result();
    logits = ctx_.eval(&t, 1, nullptr, abort);
    mirror();
  }
}

}  // namespace emollm
