// The core generation loop (native/model/session.h) on the real stories260K model: greedy
// decoding through Session::generate equals llama2.c's run.c tokens; each stop condition (max
// tokens, stop token, EOS, context full, abort) ends it as documented; delivered tokens equal the
// returned ones; n_past is mirrored. This is the loop the addon's generate() runs.
#include <sys/stat.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "model/llama.h"
#include "model/session.h"
#include "stories_helpers.h"
#include "testing.h"

using namespace emollm;

namespace {

using emollm_test::greedy;
using emollm_test::oracle_greedy;
using emollm_test::stories_dir;

std::shared_ptr<LlamaModel> model() { return emollm_test::stories_model(); }

LlamaContextOptions ctx_opts(int64_t n_ctx) {
  LlamaContextOptions o;
  o.n_ctx = n_ctx;
  return o;
}

}  // namespace

TEST(session_greedy_matches_runc_and_delivers_every_token) {
  if (stories_dir().empty()) return;
  const std::vector<int32_t> want = oracle_greedy();
  EXPECT(want.size() == 201);
  LlamaContext ctx(model(), ctx_opts(512));
  std::atomic<int64_t> n_past{-1};
  Session s(ctx, &n_past);
  std::vector<int32_t> delivered;
  GenerateResult r = s.generate({1}, nullptr, greedy(200), nullptr, [&](int32_t t) { delivered.push_back(t); });
  EXPECT(delivered == r.tokens);
  // run.c samples 200 tokens regardless of EOS; the session stops at EOS (not returned).
  const size_t n = r.tokens.size();
  EXPECT(n >= 1 && n <= 200);
  EXPECT(std::vector<int32_t>(want.begin() + 1, want.begin() + 1 + long(n)) == r.tokens);
  if (r.reason == StopReason::Eos) EXPECT(model()->is_eos(want[n + 1]));
  else EXPECT(r.reason == StopReason::MaxTokens && n == 200);
  EXPECT(n_past.load() == ctx.n_past());
  std::printf("  session greedy: %zu tokens, stop %s\n", n, stop_reason_name(r.reason));
}

TEST(session_stop_conditions) {
  if (stories_dir().empty()) return;
  const std::vector<int32_t> want = oracle_greedy();
  {  // max_tokens 0: nothing sampled
    LlamaContext ctx(model(), ctx_opts(64));
    GenerateResult r = Session(ctx).generate({1}, nullptr, greedy(0), nullptr);
    EXPECT(r.tokens.empty() && r.reason == StopReason::MaxTokens);
    EXPECT(ctx.n_past() == 1);  // the prompt was evaluated
  }
  {  // a stop token: the first oracle token (after the 3rd) that did not occur before it
    size_t k = 4;
    while (k < want.size() && std::find(want.begin() + 1, want.begin() + long(k), want[k]) != want.begin() + long(k)) ++k;
    EXPECT(k < want.size());
    LlamaContext ctx(model(), ctx_opts(256));
    GenerateParams p = greedy(100);
    p.stop_tokens = {want[k]};
    GenerateResult r = Session(ctx).generate({1}, nullptr, p, nullptr);
    EXPECT(r.reason == StopReason::StopToken);
    EXPECT(std::vector<int32_t>(want.begin() + 1, want.begin() + long(k)) == r.tokens);
  }
  {  // context full: n_ctx 16 holds the prompt and 15 decoded tokens; the 16th is returned unevaluated
    LlamaContext ctx(model(), ctx_opts(16));
    GenerateResult r = Session(ctx).generate({1}, nullptr, greedy(100), nullptr);
    EXPECT(r.reason == StopReason::ContextFull);
    EXPECT(r.tokens.size() == 16);
    EXPECT(std::vector<int32_t>(want.begin() + 1, want.begin() + 17) == r.tokens);
    EXPECT(ctx.n_past() == 16);
  }
  {  // abort from the token sink after 3 tokens
    LlamaContext ctx(model(), ctx_opts(256));
    std::atomic<bool> abort{false};
    int seen = 0;
    GenerateResult r = Session(ctx).generate({1}, nullptr, greedy(100), &abort, [&](int32_t) {
      if (++seen == 3) abort.store(true);
    });
    EXPECT(r.reason == StopReason::Aborted);
    EXPECT(r.tokens.size() == 3);
  }
  {  // aborted before the prefill: the cache is unchanged
    LlamaContext ctx(model(), ctx_opts(64));
    std::atomic<bool> abort{true};
    GenerateResult r = Session(ctx).generate({1, 2, 3}, nullptr, greedy(5), &abort);
    EXPECT(r.reason == StopReason::Aborted && r.tokens.empty());
    EXPECT(ctx.n_past() == 0);
  }
  {  // bad arguments are typed errors
    LlamaContext ctx(model(), ctx_opts(64));
    EXPECT_THROWS(Session(ctx).generate({1}, nullptr, greedy(-1), nullptr), ErrorCode::InvalidArgument);
  }
}

TEST(session_seeded_sampling_is_reproducible_and_prefix_reused) {
  if (stories_dir().empty()) return;
  GenerateParams p;
  p.sampler.temperature = 1.0f;
  p.sampler.top_p = 0.9f;
  p.sampler.top_k = 0;
  p.sampler.seed = 42;
  p.max_tokens = 40;
  LlamaContext a(model(), ctx_opts(256)), b(model(), ctx_opts(256));
  GenerateResult ra = Session(a).generate({1}, nullptr, p, nullptr);
  GenerateResult rb = Session(b).generate({1}, nullptr, p, nullptr);
  EXPECT(ra.tokens == rb.tokens);
  p.sampler.seed = 43;
  // The same context again: the prompt prefix {1} is reused (eval_prompt), the draws differ.
  GenerateResult rc = Session(a).generate({1}, nullptr, p, nullptr);
  EXPECT(rc.tokens != ra.tokens);
  p.sampler.seed = 42;
  GenerateResult rd = Session(a).generate({1}, nullptr, p, nullptr);
  EXPECT(rd.tokens == ra.tokens);
}
