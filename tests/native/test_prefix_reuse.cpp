// The scheduler's prompt cache across requests (native/model/scheduler.h) on stories260K: a
// Logits request leaves its prompt cached with its last position's logits, so a Score / Generate
// of exactly that prompt runs no pass for it (stats: prefill_tokens unchanged, reused_logits + 1)
// and gives the same bits as a scheduler with nothing cached (chunked and unchunked prefill);
// the kept logits are dropped when the slot's cache is cut below them, so a prompt cached and
// then replaced is evaluated again; a prefix or an extension of a cached prompt reuses its
// positions but not its logits; "images" (negative pseudo-ids from image_pseudo_ids with their
// embedding rows) match by content: another image's prompt reuses only the tokens before it.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <future>
#include <vector>

#include "model/llama.h"
#include "model/llava.h"
#include "model/scheduler.h"
#include "stories_helpers.h"
#include "testing.h"

using namespace emollm;

namespace {

using emollm_test::greedy;
using emollm_test::stories_gguf;
using emollm_test::stories_model;

SeqOutcome run(Scheduler& s, SeqRequest r) {
  std::promise<SeqOutcome> p;
  r.on_done = [&p](SeqOutcome&& o) { p.set_value(std::move(o)); };
  s.submit(std::move(r));
  return p.get_future().get();
}

SeqRequest logits_request(const std::vector<int32_t>& prompt, const std::vector<float>& embd = {}) {
  SeqRequest r;
  r.kind = SeqRequest::Kind::Logits;
  r.prompt = prompt;
  r.embd = embd;
  return r;
}

SeqRequest score_request(const std::vector<int32_t>& prompt, const std::vector<float>& embd = {}) {
  SeqRequest r;
  r.kind = SeqRequest::Kind::Score;
  r.prompt = prompt;
  r.embd = embd;
  r.continuations = {{42, 7, 300}, {9}, {100, 101}, {5, 6, 7, 8}};
  return r;
}

double max_score_diff(const SeqOutcome& a, const SeqOutcome& b) {
  double m = a.scores.size() == b.scores.size() ? 0 : 1e9;
  for (size_t i = 0; i < a.scores.size() && i < b.scores.size(); ++i) {
    if (a.scores[i].token_logprobs.size() != b.scores[i].token_logprobs.size()) return 1e9;
    for (size_t j = 0; j < a.scores[i].token_logprobs.size(); ++j)
      m = std::max(m, std::fabs(a.scores[i].token_logprobs[j] - b.scores[i].token_logprobs[j]));
  }
  return m;
}

// BOS then the first tokens of a greedy story (valid ids), `len` in all.
std::vector<int32_t> story_prompt(size_t len) {
  LlamaContext ctx(stories_model(), LlamaContextOptions{64, 0, 1});
  GenerateResult story = Session(ctx).generate({1}, nullptr, greedy(40), nullptr);
  std::vector<int32_t> p{1};
  for (size_t i = 0; p.size() < len && i < story.tokens.size(); ++i) p.push_back(story.tokens[i]);
  return p;
}

SchedulerOptions options(bool chunked, int n_seq = 2) {
  SchedulerOptions so;
  so.n_ctx = 128;
  so.n_seq = n_seq;
  so.chunked_prefill = chunked;
  return so;
}

}  // namespace

TEST(prefix_reuse_logits_then_score_runs_no_prompt_pass) {
  if (stories_gguf().empty()) return;
  const std::vector<int32_t> p = story_prompt(24);
  const int64_t n = int64_t(p.size());
  for (bool chunked : {true, false}) {
    Scheduler sched(stories_model(), options(chunked));
    SeqOutcome l = run(sched, logits_request(p));
    EXPECT(!l.error && !l.aborted && int64_t(l.logits.size()) == stories_model()->hparams().n_vocab);
    {  // the Logits request's logits are the prompt's last position's, as a plain context gives them
      LlamaContext ctx(stories_model(), LlamaContextOptions{128, 0, 1});
      const float* want = ctx.eval(p.data(), n);
      bool argmax = false;
      const float d = emollm_test::max_diff(want, l.logits.data(), int64_t(l.logits.size()), &argmax);
      std::printf("  chunked %d: Logits vs a context's eval, max |diff| %.3g\n", int(chunked), double(d));
      EXPECT(d <= 1e-5f && argmax);
    }
    const SchedulerStats s0 = sched.stats();
    SeqOutcome warm = run(sched, score_request(p));
    const SchedulerStats s1 = sched.stats();
    EXPECT(!warm.error && warm.scores.size() == 4);
    EXPECT(s1.prefill_tokens == s0.prefill_tokens);  // no prompt position evaluated, not even the last
    EXPECT(s1.reused_logits == s0.reused_logits + 1);
    EXPECT(s1.reused_tokens == s0.reused_tokens + n);
    Scheduler cold_sched(stories_model(), options(chunked));
    SeqOutcome cold = run(cold_sched, score_request(p));
    EXPECT(cold_sched.stats().reused_logits == 0 && cold_sched.stats().prefill_tokens == n);
    std::printf("  chunked %d: scores after Logits vs nothing cached, max |diff| %.3g (0 expected)\n", int(chunked),
                max_score_diff(warm, cold));
    EXPECT(max_score_diff(warm, cold) == 0.0);  // the same passes over the same rows: the same bits
    // a generation of the same prompt starts from the kept logits too: the same greedy tokens
    const SchedulerStats s2 = sched.stats();
    SeqRequest g;
    g.prompt = p;
    g.params = greedy(12);
    SeqOutcome go = run(sched, std::move(g));
    EXPECT(sched.stats().prefill_tokens == s2.prefill_tokens && sched.stats().reused_logits == s2.reused_logits + 1);
    LlamaContext alone(stories_model(), LlamaContextOptions{128, 0, 1});
    EXPECT(go.generated.tokens == Session(alone).generate(p, nullptr, greedy(12), nullptr).tokens);
  }
}

TEST(prefix_reuse_kept_logits_only_for_the_exact_cached_prompt) {
  if (stories_gguf().empty()) return;
  const std::vector<int32_t> p = story_prompt(24);
  const int64_t n = int64_t(p.size());
  Scheduler sched(stories_model(), options(true, 1));  // one slot: each prompt replaces the last
  Scheduler cold_sched(stories_model(), options(true, 1));
  EXPECT(!run(sched, logits_request(p)).error);
  // a prefix of the cached prompt: its positions are cached but not its logits (one pass of 1 row)
  std::vector<int32_t> head(p.begin(), p.begin() + 10);
  SchedulerStats s0 = sched.stats();
  SeqOutcome a = run(sched, score_request(head));
  SchedulerStats s1 = sched.stats();
  EXPECT(s1.reused_logits == s0.reused_logits && s1.prefill_tokens == s0.prefill_tokens + 1);
  EXPECT(max_score_diff(a, run(cold_sched, score_request(head))) <= 1e-5);
  // the slot now holds the 10-token prefix only: the whole prompt is evaluated from there again
  s0 = sched.stats();
  SeqOutcome b = run(sched, score_request(p));
  s1 = sched.stats();
  EXPECT(s1.reused_logits == s0.reused_logits && s1.prefill_tokens == s0.prefill_tokens + (n - 10));
  EXPECT(max_score_diff(b, run(cold_sched, score_request(p))) <= 1e-5);
  // an extension of the cached prompt reuses all of it and evaluates the new tokens only
  std::vector<int32_t> longer = p;
  longer.insert(longer.end(), {300, 301, 302});
  s0 = sched.stats();
  SeqOutcome c = run(sched, score_request(longer));
  s1 = sched.stats();
  EXPECT(s1.reused_logits == s0.reused_logits && s1.prefill_tokens == s0.prefill_tokens + 3);
  EXPECT(max_score_diff(c, run(cold_sched, score_request(longer))) <= 1e-5);
  // another prompt replaced it (both start with BOS: the cut keeps 1 position): p is recomputed
  std::vector<int32_t> other{1, 500, 501, 502, 503};
  EXPECT(!run(sched, logits_request(other)).error);
  s0 = sched.stats();
  SeqOutcome d = run(sched, score_request(p));
  s1 = sched.stats();
  EXPECT(s1.reused_logits == s0.reused_logits && s1.prefill_tokens == s0.prefill_tokens + (n - 1));
  EXPECT(max_score_diff(d, run(cold_sched, score_request(p))) <= 1e-5);
}

TEST(prefix_reuse_images_match_by_content) {
  if (stories_gguf().empty()) return;
  const int64_t E = stories_model()->hparams().n_embd, k = 6;
  std::vector<float> img_a(size_t(k * E)), img_b;
  for (size_t i = 0; i < img_a.size(); ++i) img_a[i] = 0.02f * float(int(i * 7919 % 101) - 50);
  img_b = img_a;
  img_b[5] += 0.25f;  // one feature differs
  auto prompt_with = [&](const std::vector<float>& img) {
    std::vector<int32_t> p{1, 403, 17};
    const std::vector<int32_t> ids = image_pseudo_ids(img.data(), k, E);
    p.insert(p.end(), ids.begin(), ids.end());
    p.insert(p.end(), {29, 88, 120, 6});
    return p;
  };
  const std::vector<int32_t> pa = prompt_with(img_a), pb = prompt_with(img_b);
  EXPECT(pa.size() == pb.size() && pa != pb);
  Scheduler sched(stories_model(), options(true, 2));
  Scheduler cold_sched(stories_model(), options(true, 2));
  EXPECT(!run(sched, logits_request(pa, img_a)).error);
  SeqOutcome wa = run(sched, score_request(pa, img_a));
  // the other slot caches a text prompt of the same length with its logits: it must not stand in
  std::vector<int32_t> text(pa.size());
  for (size_t i = 0; i < text.size(); ++i) text[i] = int32_t(200 + i);
  EXPECT(!run(sched, logits_request(text)).error);
  const SchedulerStats s0 = sched.stats();
  SeqOutcome wb = run(sched, score_request(pb, img_b));
  const SchedulerStats s1 = sched.stats();
  // image B shares the 3 text tokens before it with image A's cached prompt, nothing after
  EXPECT(s1.reused_logits == s0.reused_logits && s1.reused_tokens == s0.reused_tokens + 3);
  EXPECT(s1.prefill_tokens == s0.prefill_tokens + int64_t(pb.size()) - 3);
  EXPECT(max_score_diff(wb, run(cold_sched, score_request(pb, img_b))) <= 1e-5);
  EXPECT(max_score_diff(wa, wb) > 1e-6);  // the image changes the scores: a stale prefix would show
  Scheduler empty(stories_model(), options(true, 2));  // nothing cached: the same passes as the Logits' prefill
  EXPECT(max_score_diff(wa, run(empty, score_request(pa, img_a))) == 0.0);
}

// SeqRequest::embd_view (the addon's caller arrays, read in place instead of copied): the same rows
// as a view give the bits of the rows copied into embd (chunked and whole prefill, Score and
// Logits), and a view too short for the prompt's image positions is refused like a short embd.
TEST(prefix_reuse_embd_view_same_bits_as_embd) {
  if (stories_gguf().empty()) return;
  const int64_t E = stories_model()->hparams().n_embd, k = 5;
  std::vector<float> img(size_t(k * E));
  for (size_t i = 0; i < img.size(); ++i) img[i] = 0.03f * float(int(i * 104729 % 97) - 48);
  std::vector<int32_t> p{1, 403, 17};
  const std::vector<int32_t> ids = image_pseudo_ids(img.data(), k, E);
  p.insert(p.end(), ids.begin(), ids.end());
  p.insert(p.end(), {29, 88, 120});
  auto view = [&](SeqRequest r, int64_t floats) {
    r.embd_view = img.data();
    r.embd_view_n = floats;
    return r;
  };
  for (bool chunked : {true, false}) {
    Scheduler a(stories_model(), options(chunked, 2)), b(stories_model(), options(chunked, 2));
    const SeqOutcome sa = run(a, score_request(p, img)), sb = run(b, view(score_request(p), int64_t(img.size())));
    EXPECT(!sa.error && !sb.error && !sa.scores.empty());
    EXPECT(max_score_diff(sa, sb) == 0.0);
    Scheduler c(stories_model(), options(chunked, 2)), d(stories_model(), options(chunked, 2));
    const SeqOutcome la = run(c, logits_request(p, img)), lb = run(d, view(logits_request(p), int64_t(img.size())));
    EXPECT(!la.error && !lb.error && !la.logits.empty() && la.logits == lb.logits);
    const SeqOutcome shorter = run(d, view(score_request(p), (k - 1) * E));
    EXPECT(shorter.error != nullptr);
  }
}

// SeqRequest::logits_out (the addon's result array): the scheduler writes the Logits request's
// logits there, with the bits SeqOutcome::logits gets, whether its prompt runs a pass or its
// logits are reused from the cache, and leaves SeqOutcome::logits empty.
TEST(prefix_reuse_logits_out_same_bits_as_outcome) {
  if (stories_gguf().empty()) return;
  const std::vector<int32_t> p = story_prompt(24);
  const size_t V = size_t(stories_model()->hparams().n_vocab);
  for (bool chunked : {true, false}) {
    Scheduler ref_sched(stories_model(), options(chunked));
    const SeqOutcome ref = run(ref_sched, logits_request(p));
    EXPECT(!ref.error && ref.logits.size() == V);
    Scheduler sched(stories_model(), options(chunked));
    for (int pass = 0; pass < 2; ++pass) {  // 0: a prompt pass; 1: the cached prompt's kept logits
      const int64_t reused = sched.stats().reused_logits;
      std::vector<float> out(V, std::nanf(""));
      SeqRequest r = logits_request(p);
      r.logits_out = out.data();
      const SeqOutcome o = run(sched, std::move(r));
      EXPECT(!o.error && !o.aborted && o.logits.empty());
      EXPECT(sched.stats().reused_logits == reused + pass);
      EXPECT(std::memcmp(out.data(), ref.logits.data(), V * sizeof(float)) == 0);
    }
  }
}
