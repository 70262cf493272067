#include "model/session.h"

#include <algorithm>

#include "base/error.h"

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

GenerateResult Session::generate(const std::vector<int32_t>& prompt, const float* embd, const GenerateParams& p,
                                 const std::atomic<bool>* abort, const TokenSink& on_token, const int32_t* pos3) {
  EMOLLM_CHECK_ARG(p.max_tokens >= 0, "generate: max_tokens must be >= 0");
  GenerateResult r;
  const LlamaModel& m = ctx_.model();
  Sampler sampler(p.sampler, ctx_.n_vocab());
  const float* logits = prefill(prompt, embd, abort, pos3);
  if (!logits) {
    r.reason = StopReason::Aborted;
    return r;
  }
  // The repetition penalty sees the prompt (image pseudo-ids included: they are out of vocab
  // range and ignored by the sampler) and everything generated.
  std::vector<int32_t> history(prompt);
  const size_t most = size_t(std::min<int64_t>(p.max_tokens, ctx_.n_ctx())) + 1;
  history.reserve(prompt.size() + most);
  r.tokens.reserve(most);
  auto aborted = [&] { return abort && abort->load(); };
  for (;;) {
    if (aborted()) { r.reason = StopReason::Aborted; return r; }
    if (int64_t(r.tokens.size()) >= p.max_tokens) { r.reason = StopReason::MaxTokens; return r; }
    const int32_t t = sampler.sample(logits, history.data(), int64_t(history.size()));
    if (m.is_eos(t)) { r.reason = StopReason::Eos; return r; }
    if (std::find(p.stop_tokens.begin(), p.stop_tokens.end(), t) != p.stop_tokens.end()) {
      r.reason = StopReason::StopToken;
      return r;
    }
    r.tokens.push_back(t);
    history.push_back(t);
    if (on_token) on_token(t);
    if (int64_t(r.tokens.size()) >= p.max_tokens) { r.reason = StopReason::MaxTokens; return r; }
    if (ctx_.n_past() >= ctx_.n_ctx()) { r.reason = StopReason::ContextFull; return r; }
    logits = ctx_.eval(&t, 1, nullptr, abort);
    mirror();
    if (!logits) { r.reason = StopReason::Aborted; return r; }
  }
}

}  // namespace emollm
