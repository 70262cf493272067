// The generation loop, in the core: prefill, sampling, stop conditions, abort and token delivery
// for one sequence (a LlamaContext). The Node addon only moves arguments in and tokens out
// (native/addon/model_binding.cpp); the native tests drive this same loop.
//
//   Session s(ctx);
//   GenerateParams p;  p.max_tokens = 64;  p.sampler.temperature = 0;
//   GenerateResult r = s.generate(prompt, nullptr, p, &abort, [](int32_t t) { ... });
//
// Order of the checks after each prefill/decode step (the contract lib/model.ts documents):
// abort -> max_tokens -> sample -> EOS -> stop token -> deliver -> max_tokens -> context full ->
// decode the token. EOS and stop tokens are not delivered nor returned.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <vector>

#include "model/llama.h"
#include "model/sampler.h"

namespace emollm {

enum class StopReason { MaxTokens, Eos, StopToken, ContextFull, Aborted };
// "max-tokens", "eos", "stop-token", "context-full", "aborted" (the names lib/model.ts uses).
const char* stop_reason_name(StopReason r);

struct GenerateParams {
  SamplerParams sampler;
  int64_t max_tokens = 128;          // tokens to generate at most (>= 0)
  std::vector<int32_t> stop_tokens;  // ids that end generation (besides the model's EOS)
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated, in order (without EOS / stop token)
  StopReason reason = StopReason::MaxTokens;
};

// Called on the generating thread with each token as soon as it is sampled.
using TokenSink = std::function<void(int32_t token)>;

// The per-token decisions of one generating sequence, shared by Session::generate (one
// sequence, its own forward passes) and the batch Scheduler (many sequences, one forward pass
// per step), so both follow the same contract. Feed it the logits after each forward pass:
// step() either ends the generation (done(), result()) or returns the token to evaluate next.
class SequenceGenerator {
 public:
  // `prompt`: the evaluated prompt (the repetition penalty's history starts with it).
  SequenceGenerator(const LlamaModel& model, int64_t n_vocab, int64_t n_ctx, const std::vector<int32_t>& prompt,
                    const GenerateParams& p);
  // Logits after the last forward pass (null: the pass was aborted); `aborted`: the caller's flag;
  // `n_past`: the sequence's cached positions. Returns the token to evaluate next, or -1 when the
  // generation ended (then result() holds the tokens and the reason).
  int32_t step(const float* logits, bool aborted, int64_t n_past, const TokenSink& on_token);
  bool done() const { return done_; }
  const GenerateResult& result() const { return r_; }
  GenerateResult take_result() { return std::move(r_); }
  // Ends the generation as aborted (a sequence dropped before its next step).
  void abort() { finish(StopReason::Aborted); }

 private:
  int32_t finish(StopReason reason) {
    r_.reason = reason;
    done_ = true;
    return -1;
  }
  const LlamaModel& m_;
  int64_t n_ctx_;
  GenerateParams p_;
  Sampler sampler_;
  std::vector<int32_t> history_;
  GenerateResult r_;
  bool done_ = false;
};

class Session {
 public:
  // `ctx` must outlive the session. `n_past_mirror` (optional) receives ctx.n_past() after every
  // forward pass, for readers on other threads (the addon's nPast()).
  explicit Session(LlamaContext& ctx, std::atomic<int64_t>* n_past_mirror = nullptr)
      : ctx_(ctx), n_past_mirror_(n_past_mirror) {}

  LlamaContext& context() { return ctx_; }

  // Evaluates `prompt` after the longest prefix the cache already holds (LlamaContext::
  // eval_prompt). `embd` gives the input embeddings of image pseudo-ids (LLaVA), or null;
  // `pos3` the prompt's M-RoPE positions ([n][3], Qwen2-VL), or null.
  // Returns the last position's logits, or null when aborted (the cache is then unchanged).
  const float* prefill(const std::vector<int32_t>& prompt, const float* embd, const std::atomic<bool>* abort,
                       const int32_t* pos3 = nullptr);

  // Prefill, then sample / deliver / decode until a stop condition. `abort` may be null.
  // Generated tokens of an M-RoPE model continue one past the largest cached position.
  GenerateResult generate(const std::vector<int32_t>& prompt, const float* embd, const GenerateParams& p,
                          const std::atomic<bool>* abort, const TokenSink& on_token = {},
                          const int32_t* pos3 = nullptr);

 private:
  void mirror();
  LlamaContext& ctx_;
  std::atomic<int64_t>* n_past_mirror_;
};

}  // namespace emollm
