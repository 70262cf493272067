// The paged KV cache (native/model/llama.h, scheduler.h) on the real stories260K model:
//   - logits of sequences in a context of small blocks (16 positions, prefixes shared by reference
//     and copied on write) equal the same tokens in a context of one block per sequence (the old
//     slot layout: each sequence's keys contiguous) within 1e-5 with the same argmax (the
//     attention kernel walks 16-token pages instead of 64-token tiles; the sums are the same
//     terms, so in practice the difference is 0 or last-bit);
//   - a shared prefix costs its blocks once (reference counts, pool occupancy);
//   - an exhausted pool is Error(OutOfMemory) and changes nothing; an aborted pass and a
//     truncation give their blocks back;
//   - the scheduler with a small pool admits on the prompts (optimistic admission), preempts the
//     newest sequence when blocks run out and recomputes it later: greedy and seeded outputs and
//     the streamed tokens equal each request alone; it fails one that can never fit, frees an
//     aborted request's blocks (running or preempted), resumes a preempted scoring at its next
//     option, and leaves no block but idle cached prefixes.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <future>
#include <string>
#include <vector>

#include "base/error.h"
#include "model/llama.h"
#include "model/scheduler.h"
#include "model/session.h"
#include "shared_data.h"
#include "stories_helpers.h"
#include "submit_together.h"
#include "testing.h"

using namespace emollm;

namespace {

using emollm_test::greedy;
using emollm_test::max_diff;
using emollm_test::stories_gguf;
using emollm_test::stories_model;

// BOS and a greedy story: n valid ids.
std::vector<int32_t> story(size_t n) {
  LlamaContext ctx(stories_model(), LlamaContextOptions{256, 0, 1});
  GenerateResult g = Session(ctx).generate({1}, nullptr, greedy(int64_t(n)), nullptr);
  std::vector<int32_t> t{1};
  t.insert(t.end(), g.tokens.begin(), g.tokens.end());
  t.resize(n, 5);  // a story that ended early is padded with a valid id
  return t;
}

LlamaContextOptions paged(int64_t n_ctx, int64_t n_seq, int64_t block, int64_t positions = 0) {
  LlamaContextOptions o;
  o.n_ctx = n_ctx;
  o.n_seq = n_seq;
  o.kv_block_size = block;
  o.kv_positions = positions;
  return o;
}

}  // namespace

TEST(kv_paging_shared_prefix_equals_contiguous_alone) {
  if (stories_gguf().empty()) return;
  const std::vector<int32_t> t = story(70);
  const int64_t n_prefix = 40;  // 2 full blocks of 16 + a partial one (8 positions)
  LlamaContext ctx(stories_model(), paged(128, 3, 16));
  const int64_t V = ctx.n_vocab();
  ctx.seq_eval(0, t.data(), n_prefix);
  EXPECT(ctx.seq_blocks(0).size() == 3);
  EXPECT(ctx.kv_stats().blocks_used == 3);
  // two more sequences take the prefix by reference: no block is allocated or copied
  ctx.seq_copy_prefix(0, 1, n_prefix);
  ctx.seq_copy_prefix(0, 2, n_prefix);
  KvCacheStats st = ctx.kv_stats();
  EXPECT(st.blocks_used == 3 && st.blocks_shared == 3 && st.block_refs == 9);
  for (int32_t b : ctx.seq_blocks(0)) EXPECT(ctx.kv_block_refs(b) == 3);
  EXPECT(ctx.seq_blocks(1) == ctx.seq_blocks(0) && ctx.seq_blocks(2) == ctx.seq_blocks(0));

  // each continues differently in ONE batched pass: the shared partial block is copied for the
  // writers (copy-on-write), the two full blocks stay shared
  const int32_t next[3] = {t[size_t(n_prefix)], 17, 300};
  LlamaBatchRow rows[3] = {{0, next[0]}, {1, next[1]}, {2, next[2]}};
  std::vector<float> out(size_t(3 * V));
  EXPECT(ctx.decode(rows, 3, out.data()));
  st = ctx.kv_stats();
  EXPECT(st.blocks_shared == 2);
  EXPECT(st.blocks_used == 2 + 3);  // the old partial block went to one writer, two got copies
  EXPECT(ctx.seq_blocks(1)[0] == ctx.seq_blocks(0)[0] && ctx.seq_blocks(2)[1] == ctx.seq_blocks(0)[1]);
  EXPECT(ctx.seq_blocks(1)[2] != ctx.seq_blocks(0)[2] && ctx.seq_blocks(2)[2] != ctx.seq_blocks(1)[2]);
  // then a longer chunk on sequence 2 crosses into new blocks (8 + 1 + 30 positions)
  const int64_t more = 30;
  const float* chunk_last = ctx.seq_eval(2, t.data() + n_prefix, more);
  EXPECT(chunk_last != nullptr);
  std::vector<float> paged_chunk(chunk_last, chunk_last + V);

  // the same tokens, each sequence alone in a context of one block per sequence (contiguous)
  for (int s = 0; s < 3; ++s) {
    LlamaContext alone(stories_model(), paged(128, 1, 128));
    EXPECT(alone.seq_blocks(0).empty());
    alone.eval(t.data(), n_prefix);
    EXPECT(alone.seq_blocks(0).size() == 1);
    const float* want = alone.eval(&next[s], 1);
    bool argmax = false;
    const float d = max_diff(want, out.data() + s * V, V, &argmax);
    std::printf("  paged (16) vs contiguous, seq %d after a shared prefix: max |diff| %.3g\n", s, double(d));
    EXPECT(d <= 1e-5f && argmax);
    if (s == 2) {
      const float* w2 = alone.eval(t.data() + n_prefix, more);
      const float d2 = max_diff(w2, paged_chunk.data(), V, &argmax);
      std::printf("  paged (16) vs contiguous, a 30-token chunk across pages: max |diff| %.3g\n", double(d2));
      EXPECT(d2 <= 1e-5f && argmax);
    }
  }
  // truncation gives blocks back; a block still referenced elsewhere stays
  const int64_t used = ctx.kv_stats().blocks_used;
  ctx.seq_truncate(2, 0);
  EXPECT(ctx.seq_blocks(2).empty());
  EXPECT(ctx.kv_stats().blocks_used == used - 3);  // the partial block it kept + 2 new ones; the 2 shared stay
  EXPECT(ctx.kv_block_refs(ctx.seq_blocks(0)[0]) == 2);
  ctx.seq_truncate(1, 16);
  EXPECT(ctx.seq_blocks(1).size() == 1);
}

// 16 sequences sharing a 64-token prefix (a system / image prompt), each then decoding 16 tokens:
// blocks used vs what the slot layout held (n_seq x n_ctx), printed for docs/serving.md.
TEST(kv_paging_memory_of_16_sequences_sharing_a_64_token_prefix) {
  if (stories_gguf().empty()) return;
  const std::vector<int32_t> t = story(64);
  const int64_t n_ctx = 256, S = 16, bs = 16;
  LlamaContext ctx(stories_model(), paged(n_ctx, S, bs));
  ctx.seq_eval(0, t.data(), 64);
  for (int s = 1; s < S; ++s) ctx.seq_copy_prefix(0, s, 64);
  EXPECT(ctx.kv_stats().blocks_used == 4);
  std::vector<LlamaBatchRow> rows(static_cast<size_t>(S));
  std::vector<float> out(size_t(S * ctx.n_vocab()));
  for (int step = 0; step < 16; ++step) {
    for (int s = 0; s < S; ++s) rows[size_t(s)] = {s, int32_t(10 + s + step)};
    EXPECT(ctx.decode(rows.data(), S, out.data()));
  }
  const KvCacheStats st = ctx.kv_stats();
  // 4 shared prefix blocks + one own block per sequence for its 16 new positions
  EXPECT(st.blocks_used == 4 + S);
  EXPECT(st.blocks_shared == 4);
  const double slot_bytes = double(S * n_ctx / bs) * double(st.bytes_per_block);
  std::printf("  16 sequences, 64-token shared prefix + 16 tokens each: %lld blocks used (%.1f KiB) of %lld; "
              "the slot layout holds %.1f KiB; without sharing %lld blocks\n",
              (long long)st.blocks_used, double(st.blocks_used * st.bytes_per_block) / 1024.0,
              (long long)st.blocks_total, slot_bytes / 1024.0, (long long)(S * 5));
}

TEST(kv_paging_pool_exhaustion_is_typed_and_changes_nothing) {
  if (stories_gguf().empty()) return;
  const std::vector<int32_t> t = story(40);
  LlamaContext ctx(stories_model(), paged(64, 2, 16, 32));  // 2 blocks for 2 sequences
  EXPECT(ctx.kv_stats().blocks_total == 2);
  ctx.seq_eval(0, t.data(), 20);  // both blocks
  EXPECT(ctx.kv_blocks_free() == 0);
  EXPECT_THROWS(ctx.seq_eval(1, t.data(), 5), ErrorCode::OutOfMemory);
  EXPECT(ctx.seq_n_past(1) == 0 && ctx.seq_blocks(1).empty());
  // a batched step where one segment fits (it writes inside its last block) and one does not:
  // nothing changes
  std::vector<float> out(size_t(2 * ctx.n_vocab()));
  LlamaBatchRow rows[2] = {{0, 7}, {1, 8}};
  EXPECT_THROWS(ctx.decode(rows, 2, out.data()), ErrorCode::OutOfMemory);
  EXPECT(ctx.seq_n_past(0) == 20 && ctx.seq_n_past(1) == 0);
  // a shared partial block needs a block for its copy: refused while the pool is full
  ctx.seq_truncate(0, 10);  // one block back
  ctx.seq_copy_prefix(0, 1, 10);
  EXPECT(ctx.kv_stats().blocks_shared == 1);
  ctx.seq_eval(1, &t[10], 1);  // copy-on-write takes the free block
  EXPECT(ctx.kv_blocks_free() == 0);
  EXPECT_THROWS(ctx.seq_eval(0, &t[10], 7), ErrorCode::OutOfMemory);  // needs a second block
  EXPECT(ctx.seq_n_past(0) == 10);
  ctx.seq_truncate(1, 0);
  EXPECT(ctx.seq_eval(0, &t[10], 7) != nullptr);
  // an aborted pass gives its new blocks back
  ctx.seq_truncate(0, 0);
  std::atomic<bool> stop{true};
  EXPECT(ctx.seq_eval(1, t.data(), 30, nullptr, &stop) == nullptr);
  EXPECT(ctx.seq_n_past(1) == 0 && ctx.kv_blocks_free() == 2);
  // bad options are typed errors
  EXPECT_THROWS(LlamaContext(stories_model(), paged(64, 1, 24)), ErrorCode::InvalidArgument);
  EXPECT_THROWS(LlamaContext(stories_model(), paged(64, 1, 16, -1)), ErrorCode::InvalidArgument);
}

TEST(kv_paging_scheduler_small_pool_queues_rejects_and_frees) {
  if (stories_gguf().empty()) return;
  const std::vector<int32_t> t = story(12);
  // 5 blocks of 16; each request below needs up to 12 + 20 = 32 positions = 2 blocks, 4 slots:
  // not all can run to their end at once
  SchedulerOptions so;
  so.n_ctx = 128;
  so.n_seq = 4;
  so.kv_block_size = 16;
  so.kv_positions = 80;
  Scheduler sched(stories_model(), so);
  const int N = 4;
  std::vector<GenerateResult> want;
  for (int i = 0; i < N; ++i) {
    LlamaContext alone(stories_model(), LlamaContextOptions{128, 0, 1});
    want.push_back(Session(alone).generate(std::vector<int32_t>(t.begin(), t.begin() + 6 + i), nullptr, greedy(20), nullptr));
  }
  std::vector<SeqRequest> requests(N + 2);
  for (int i = 0; i < N; ++i) {
    requests[size_t(i)].prompt.assign(t.begin(), t.begin() + 6 + i);
    requests[size_t(i)].params = greedy(20);
  }
  // one whose worst case exceeds the whole pool (12 + 100 positions > 80): a typed error
  requests[size_t(N)].prompt = t;
  requests[size_t(N)].params = greedy(100);
  // one aborted while it runs: its blocks go back to the pool
  std::atomic<int> seen{0};
  std::atomic<uint64_t> ab_id{0};
  SeqRequest& ab = requests[size_t(N + 1)];
  ab.prompt = {1, 2, 3};
  ab.params = greedy(20);
  ab.on_token = [&](int32_t) {
    if (++seen == 3) sched.abort(ab_id.load());
  };
  // the first request holds the scheduler thread at its first token until all are submitted
  const std::vector<SeqOutcome> got =
      emollm_test::submit_together(sched, std::move(requests), [&](size_t i, uint64_t id) {
        if (i == size_t(N + 1)) ab_id.store(id);
      }).got;
  for (int i = 0; i < N; ++i) {
    EXPECT(!got[size_t(i)].error);
    EXPECT(got[size_t(i)].generated.tokens == want[size_t(i)].tokens);
  }
  bool typed = false;
  try {
    if (got[size_t(N)].error) std::rethrow_exception(got[size_t(N)].error);
  } catch (const Error& e) {
    typed = e.code() == ErrorCode::OutOfMemory;
  }
  EXPECT(typed);
  EXPECT(got[size_t(N + 1)].generated.reason == StopReason::Aborted);
  const SchedulerStats st = sched.stats();
  std::printf("  small pool: %lld waits for KV blocks, %lld preemptions (%lld positions recomputed), %lld steps, "
              "max batch %lld, blocks used after %lld of %lld (%lld cached prefixes)\n",
              (long long)st.kv_waits, (long long)st.kv_preemptions, (long long)st.kv_recomputed_tokens,
              (long long)st.steps, (long long)st.max_batch, (long long)st.kv_blocks_used, (long long)st.kv_blocks_total,
              (long long)st.kv_blocks_cached);
  // optimistic admission: more ran at once than their worst cases allow (2 x 2 blocks of 5)
  EXPECT(st.max_batch >= 3);
  EXPECT(st.kv_waits + st.kv_preemptions >= 1);
  EXPECT(st.active == 0 && st.queued == 0 && st.prefilling == 0);
  EXPECT(st.kv_blocks_total == 5 && st.kv_block_size == 16);
  // what stays is the finished requests' cached prompts (prefix reuse) and nothing else
  EXPECT(st.kv_blocks_used <= st.kv_blocks_total);
  EXPECT(st.kv_blocks_used == st.kv_blocks_cached);
}

namespace {

// Requests that outgrow a small pool (scheduler.h: optimistic admission, preemption): each is
// submitted while the first one holds the scheduler thread, so all are admitted together.
struct PreemptRun {
  std::vector<SeqOutcome> got;
  std::vector<std::vector<int32_t>> streamed;  // on_token, in order
  SchedulerStats st;
};

PreemptRun run_preempting(const SchedulerOptions& so, const std::vector<std::vector<int32_t>>& prompts,
                          const std::vector<GenerateParams>& params) {
  Scheduler sched(stories_model(), so);
  std::vector<SeqRequest> requests(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    requests[i].prompt = prompts[i];
    requests[i].params = params[i];
  }
  emollm_test::TogetherRun together = emollm_test::submit_together(sched, std::move(requests));
  PreemptRun run;
  run.got = std::move(together.got);
  run.streamed = std::move(together.streamed);
  run.st = sched.stats();
  // nothing leaked: a request as long as the whole pool still runs (the idle caches give way)
  SeqRequest whole;
  whole.prompt = prompts[0];
  whole.params = greedy(so.kv_positions - int64_t(prompts[0].size()));
  std::promise<SeqOutcome> wd;
  whole.on_done = [&](SeqOutcome&& o) { wd.set_value(std::move(o)); };
  sched.submit(std::move(whole));
  SeqOutcome w = wd.get_future().get();
  EXPECT(!w.error && !w.generated.tokens.empty());
  return run;
}

// Four prompts of 8 to 14 tokens from different places of a story (1 block of 16 each), 40
// tokens each (up to 54 positions, 4 blocks): a pool of 8 blocks holds every prompt, half of the
// sequences' ends.
std::vector<std::vector<int32_t>> preempt_prompts() {
  const std::vector<int32_t> t = story(80);
  std::vector<std::vector<int32_t>> p;
  for (size_t i = 0; i < 4; ++i) {
    std::vector<int32_t> q{1};
    const size_t start = 1 + 15 * i, len = 7 + 2 * i;
    q.insert(q.end(), t.begin() + int64_t(start), t.begin() + int64_t(start + len));
    p.push_back(q);
  }
  return p;
}

SchedulerOptions preempt_pool() {
  SchedulerOptions so;
  so.n_ctx = 128;
  so.n_seq = 4;
  so.kv_block_size = 16;
  so.kv_positions = 128;  // 8 blocks
  return so;
}

// Each request on a context of its own: what the preempted run must give.
std::vector<GenerateResult> generate_each_alone(const std::vector<std::vector<int32_t>>& prompts,
                                                const std::vector<GenerateParams>& params) {
  std::vector<GenerateResult> want;
  for (size_t i = 0; i < prompts.size(); ++i) {
    LlamaContext alone(stories_model(), LlamaContextOptions{128, 0, 1});
    want.push_back(Session(alone).generate(prompts[i], nullptr, params[i], nullptr));
  }
  return want;
}

// Every request of the run ended without error, with the tokens and stop reason it has alone,
// and streamed those tokens once each (a recomputed sequence delivers nothing twice).
void expect_each_equals_alone(const PreemptRun& run, const std::vector<GenerateResult>& want) {
  EXPECT(run.got.size() == want.size());
  for (size_t i = 0; i < want.size() && i < run.got.size(); ++i) {
    EXPECT(!run.got[i].error);
    EXPECT(run.got[i].generated.tokens == want[i].tokens);
    EXPECT(run.got[i].generated.reason == want[i].reason);
    EXPECT(run.streamed[i] == want[i].tokens);
  }
}

}  // namespace

TEST(kv_paging_preemption_greedy_equals_alone) {
  if (stories_gguf().empty()) return;
  const auto prompts = preempt_prompts();
  std::vector<GenerateParams> params(prompts.size(), greedy(40));
  const std::vector<GenerateResult> want = generate_each_alone(prompts, params);
  const PreemptRun run = run_preempting(preempt_pool(), prompts, params);
  expect_each_equals_alone(run, want);
  const SchedulerStats& st = run.st;
  std::printf("  greedy, 4 x (prompt + 40) in 8 blocks of 16: %lld preemptions, %lld positions recomputed, %lld waits, "
              "max batch %lld, %lld steps\n",
              (long long)st.kv_preemptions, (long long)st.kv_recomputed_tokens, (long long)st.kv_waits,
              (long long)st.max_batch, (long long)st.steps);
  EXPECT(st.kv_preemptions > 0);
  EXPECT(st.kv_recomputed_tokens > 0);
  EXPECT(st.max_batch == 4);  // optimistic admission: all four prompts ran together
  EXPECT(st.active == 0 && st.queued == 0 && st.prefilling == 0);
  EXPECT(st.kv_blocks_used == st.kv_blocks_cached);  // every block left is an idle cached prefix
}

TEST(kv_paging_preemption_seeded_sampling_equals_alone) {
  if (stories_gguf().empty()) return;
  const auto prompts = preempt_prompts();
  std::vector<GenerateParams> params;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateParams p;
    p.max_tokens = 40;
    p.sampler.temperature = 0.9f;
    p.sampler.top_k = 20;
    p.sampler.top_p = 0.95f;
    p.sampler.repetition_penalty = 1.1f;  // its history (prompt + tokens) must survive the preemption
    p.sampler.seed = 1234 + i;
    params.push_back(p);
  }
  const std::vector<GenerateResult> want = generate_each_alone(prompts, params);
  const PreemptRun run = run_preempting(preempt_pool(), prompts, params);
  expect_each_equals_alone(run, want);
  std::printf("  seeded sampling: %lld preemptions, %lld positions recomputed\n", (long long)run.st.kv_preemptions,
              (long long)run.st.kv_recomputed_tokens);
  EXPECT(run.st.kv_preemptions > 0);
  EXPECT(run.st.kv_blocks_used == run.st.kv_blocks_cached);
}

// A: 8 + 50 positions, B: 8 + 50, in 4 blocks of 16. When A needs its third block B (newer) is
// preempted; B (8 + ~24 positions = 2 blocks + the watermark) cannot come back before A ends, so
// A's next token sees it queued and aborts it: B ends aborted with the tokens it had (a prefix of
// B alone), its blocks are gone, and A equals A alone.
TEST(kv_paging_abort_of_a_preempted_request) {
  if (stories_gguf().empty()) return;
  const auto prompts = preempt_prompts();
  const std::vector<int32_t> pa(prompts[0].begin(), prompts[0].begin() + 8), pb(prompts[1].begin(), prompts[1].begin() + 8);
  GenerateResult want_a, want_b;
  {
    LlamaContext alone(stories_model(), LlamaContextOptions{128, 0, 1});
    want_a = Session(alone).generate(pa, nullptr, greedy(50), nullptr);
    want_b = Session(alone).generate(pb, nullptr, greedy(50), nullptr);
  }
  EXPECT(want_a.tokens.size() == 50 && want_b.tokens.size() == 50);  // no early EOS: A outgrows 2 blocks
  SchedulerOptions so;
  so.n_ctx = 128;
  so.n_seq = 2;
  so.kv_block_size = 16;
  so.kv_positions = 64;
  Scheduler sched(stories_model(), so);
  std::atomic<uint64_t> b_id{0};
  std::atomic<bool> aborted_while_queued{false};
  std::vector<SeqRequest> requests(2);
  requests[0].prompt = pa;
  requests[0].params = greedy(50);
  requests[0].on_token = [&](int32_t) {
    const SchedulerStats s = sched.stats();
    if (!aborted_while_queued.load() && s.kv_preemptions >= 1 && s.queued == 1) {
      aborted_while_queued.store(true);
      sched.abort(b_id.load());
    }
  };
  requests[1].prompt = pb;
  requests[1].params = greedy(50);
  // A holds the scheduler thread at its first token until B is queued
  const emollm_test::TogetherRun run = emollm_test::submit_together(
      sched, std::move(requests), [&](size_t i, uint64_t id) {
        if (i == 1) b_id.store(id);
      });
  const SeqOutcome &oa = run.got[0], &ob = run.got[1];
  const std::vector<int32_t>& b_streamed = run.streamed[1];
  EXPECT(aborted_while_queued.load());
  EXPECT(!oa.error && oa.generated.tokens == want_a.tokens);
  EXPECT(!ob.error && ob.generated.reason == StopReason::Aborted);
  const auto& bt = ob.generated.tokens;
  EXPECT(!bt.empty() && bt.size() < want_b.tokens.size());
  EXPECT(std::equal(bt.begin(), bt.end(), want_b.tokens.begin()));
  EXPECT(b_streamed == bt);
  const SchedulerStats st = sched.stats();
  std::printf("  abort while preempted: B had %zu tokens; %lld preemptions\n", bt.size(), (long long)st.kv_preemptions);
  EXPECT(st.kv_preemptions == 1 && st.active == 0 && st.queued == 0);
  EXPECT(st.kv_blocks_used == st.kv_blocks_cached);
}

// Two requests with the same 64-token prompt: the second shares the first's prefix blocks by
// reference (observed in the stats while both run) and both equal the request alone.
TEST(kv_paging_scheduler_shares_a_common_prompt_by_reference) {
  if (stories_gguf().empty()) return;
  const std::vector<int32_t> t = story(64);
  LlamaContext alone(stories_model(), LlamaContextOptions{256, 0, 1});
  const GenerateResult want = Session(alone).generate(t, nullptr, greedy(10), nullptr);
  SchedulerOptions so;
  so.n_ctx = 256;
  so.n_seq = 2;
  so.kv_block_size = 16;
  Scheduler sched(stories_model(), so);
  std::atomic<int64_t> max_shared{0};
  std::vector<SeqRequest> requests(2);
  for (SeqRequest& r : requests) {
    r.prompt = t;
    r.params = greedy(10);
    r.on_token = [&](int32_t) {
      const int64_t s = sched.stats().kv_blocks_shared;
      int64_t m = max_shared.load();
      while (s > m && !max_shared.compare_exchange_weak(m, s)) {
      }
    };
  }
  // the first holds the scheduler thread at its first token until the second is submitted (else,
  // on a loaded machine, it could finish first and the second would reuse its idle cache instead)
  for (const SeqOutcome& o : emollm_test::submit_together(sched, std::move(requests)).got)
    EXPECT(!o.error && o.generated.tokens == want.tokens);
  const SchedulerStats st = sched.stats();
  std::printf("  shared prompt: %lld prefix copies (by reference), most shared blocks %lld\n",
              (long long)st.prefix_copies, (long long)max_shared.load());
  EXPECT(st.prefix_copies >= 1);
  EXPECT(max_shared.load() >= 3);  // 63 shared positions: 3 full blocks at least
}

// A scoring request preempted while it scores its options: A (8 + 60 positions) and S (a prefix
// of 20 and 64 options of 20 tokens, one per step: up to 3 blocks) in 6 blocks of 16. When A
// needs its fourth block (about 40 steps in), S (newer) gives its blocks back; it comes back after
// A, recomputes its prefix and scores the options it had not scored yet. Every option token's
// log-probability equals score_continuations alone within 1e-4 and an option's sum within 1e-3
// (random, improbable tokens: an option's sum differed from alone by 4.6e-5 in a run where
// nothing was preempted; 2.2e-5 per token and 4.6e-5 per option measured with the preemption).
TEST(kv_paging_preempted_scoring_resumes_its_options) {
  if (stories_gguf().empty()) return;
  const std::vector<int32_t> t = story(80);
  const std::vector<int32_t> pa(t.begin(), t.begin() + 8), prefix(t.begin() + 30, t.begin() + 50);
  std::vector<std::vector<int32_t>> conts;
  for (int k = 0; k < 64; ++k) {
    std::vector<int32_t> c;
    for (int j = 0; j < 20; ++j) c.push_back(int32_t(10 + (k * 37 + j * 11) % 400));
    conts.push_back(c);
  }
  GenerateResult want_a;
  std::vector<LlamaContext::ContinuationScore> want_s;
  {
    LlamaContext alone(stories_model(), LlamaContextOptions{128, 0, 1});
    want_a = Session(alone).generate(pa, nullptr, greedy(60), nullptr);
    LlamaContext alone2(stories_model(), LlamaContextOptions{128, 0, 1});
    EXPECT(alone2.score_continuations(prefix.data(), int64_t(prefix.size()), conts, &want_s));
  }
  EXPECT(want_a.tokens.size() == 60);  // A grows to 4 blocks and more
  SchedulerOptions so;
  so.n_ctx = 128;
  so.n_seq = 2;
  so.kv_block_size = 16;
  so.kv_positions = 96;
  Scheduler sched(stories_model(), so);
  std::vector<SeqRequest> requests(2);
  requests[0].prompt = pa;
  requests[0].params = greedy(60);
  requests[1].kind = SeqRequest::Kind::Score;
  requests[1].prompt = prefix;
  requests[1].continuations = conts;
  // A holds the scheduler thread at its first token until S is queued
  const emollm_test::TogetherRun run = emollm_test::submit_together(sched, std::move(requests));
  const SeqOutcome &oa = run.got[0], &os = run.got[1];
  EXPECT(!oa.error && oa.generated.tokens == want_a.tokens);
  EXPECT(!os.error && !os.aborted && os.scores.size() == want_s.size());
  double worst = 0, worst_tok = 0;
  for (size_t i = 0; i < want_s.size() && i < os.scores.size(); ++i) {
    worst = std::max(worst, std::fabs(os.scores[i].logprob - want_s[i].logprob));
    EXPECT(os.scores[i].token_logprobs.size() == want_s[i].token_logprobs.size());
    for (size_t j = 0; j < want_s[i].token_logprobs.size() && j < os.scores[i].token_logprobs.size(); ++j)
      worst_tok = std::max(worst_tok, std::fabs(os.scores[i].token_logprobs[j] - want_s[i].token_logprobs[j]));
  }
  const SchedulerStats st = sched.stats();
  std::printf("  scoring preempted: %lld preemptions, %lld positions recomputed; max |logprob - alone| %.3g per token, "
              "%.3g per option\n",
              (long long)st.kv_preemptions, (long long)st.kv_recomputed_tokens, worst_tok, worst);
  EXPECT(worst_tok <= 1e-4 && worst <= 1e-3);
  EXPECT(st.kv_preemptions >= 1 && st.kv_recomputed_tokens >= 1);
  EXPECT(st.kv_blocks_used == st.kv_blocks_cached);
}

// Fork segments (LlamaBatchSegment::fork): options after a cached prefix side by side in one pass
// give, bit for bit, the rows of the same options evaluated on real sequences that share the
// prefix by reference (seq_copy_prefix) in one pass of the same rows; the prefix's sequence is
// unchanged afterwards (tokens, block table, reference counts, free blocks, its cache: the next
// token evaluated on it equals a fresh context's), both with the prefix ending inside a block
// (its last block copied per fork) and on a block boundary; and forks read only the prefix (the
// other forks' rows are invisible: each equals the same option forked alone, within 1e-4 with
// the same argmax since the pass's row count differs).
TEST(kv_paging_fork_segments_equal_copied_prefixes_and_leave_the_sequence) {
  if (stories_gguf().empty()) return;
  const int64_t V = stories_model()->hparams().n_vocab;
  const std::vector<int32_t> text = story(40);
  const std::vector<std::vector<int32_t>> opts = {{42, 7, 300}, {100, 101}, {9, 12, 13, 14, 15}};
  for (int64_t n_prefix : {21, 32}) {  // blocks of 16: a partial last block, then none
    const std::vector<int32_t> prefix(text.begin(), text.begin() + n_prefix);
    // forks of sequence 0 in one pass
    LlamaContext ctx(stories_model(), paged(128, 2, 16));
    EXPECT(ctx.seq_eval(0, prefix.data(), n_prefix) != nullptr);
    const std::vector<int32_t> blocks_before = ctx.seq_blocks(0);
    std::vector<int32_t> refs_before;
    for (int32_t b : blocks_before) refs_before.push_back(ctx.kv_block_refs(b));
    const int64_t free_before = ctx.kv_blocks_free();
    const std::vector<float> logits_before(ctx.logits(), ctx.logits() + V);
    std::vector<LlamaBatchSegment> fsegs;
    for (const auto& o : opts) fsegs.push_back(LlamaBatchSegment{0, o.data(), int64_t(o.size()), true, nullptr, nullptr, true});
    std::vector<float> got(size_t(LlamaContext::batch_output_rows(fsegs.data(), int64_t(fsegs.size())) * V));
    const uint64_t in_place0 = fork_in_place_writes();
    EXPECT(ctx.eval_batch(fsegs.data(), int64_t(fsegs.size()), got.data()));
    // the last fork writes the partial block in place (set_fork_in_place), the others copy it
    EXPECT(fork_in_place_writes() - in_place0 == (n_prefix % 16 != 0 ? 1u : 0u));
    {  // every fork copying: the same bits, the same blocks afterwards
      set_fork_in_place(false);
      std::vector<float> copied(got.size());
      const uint64_t w0 = fork_in_place_writes();
      EXPECT(ctx.eval_batch(fsegs.data(), int64_t(fsegs.size()), copied.data()));
      set_fork_in_place(true);
      EXPECT(fork_in_place_writes() == w0);
      EXPECT(copied == got);
      EXPECT(ctx.kv_blocks_free() == free_before);
    }
    EXPECT(ctx.seq_n_past(0) == n_prefix);
    EXPECT(ctx.seq_tokens(0) == prefix);
    EXPECT(ctx.seq_blocks(0) == blocks_before);
    for (size_t i = 0; i < blocks_before.size(); ++i) EXPECT(ctx.kv_block_refs(blocks_before[i]) == refs_before[i]);
    EXPECT(ctx.kv_blocks_free() == free_before);
    EXPECT(std::equal(logits_before.begin(), logits_before.end(), ctx.logits()));

    // the same rows on three real sequences sharing the prefix, one pass
    LlamaContext ref(stories_model(), paged(128, 3, 16));
    EXPECT(ref.seq_eval(0, prefix.data(), n_prefix) != nullptr);
    ref.seq_copy_prefix(0, 1, n_prefix);
    ref.seq_copy_prefix(0, 2, n_prefix);
    std::vector<LlamaBatchSegment> rsegs;
    for (size_t i = 0; i < opts.size(); ++i)
      rsegs.push_back(LlamaBatchSegment{int(i), opts[i].data(), int64_t(opts[i].size()), true});
    std::vector<float> want(got.size());
    EXPECT(ref.eval_batch(rsegs.data(), int64_t(rsegs.size()), want.data()));
    const bool bitwise = got == want;
    EXPECT(bitwise);

    // each option forked alone: the other forks' rows were not seen (seeing them moves logits by
    // 1e-2 or more; the pass of 2-5 rows instead of 10 rounds the GEMMs' last bits differently:
    // up to 1.3e-5 measured)
    int64_t row = 0;
    float worst = 0;
    for (const auto& o : opts) {
      LlamaBatchSegment one{0, o.data(), int64_t(o.size()), true, nullptr, nullptr, true};
      std::vector<float> alone(o.size() * size_t(V));
      EXPECT(ctx.eval_batch(&one, 1, alone.data()));
      for (size_t r = 0; r < o.size(); ++r) {
        bool same = false;
        const float d = max_diff(alone.data() + r * size_t(V), got.data() + (row + int64_t(r)) * V, V, &same);
        if (!(d <= 1e-4f)) std::printf("  prefix %lld option row %lld: max |alone - side by side| %.3g\n", (long long)n_prefix, (long long)(row + int64_t(r)), d);
        worst = std::max(worst, d);
        EXPECT(d <= 1e-4f);
        EXPECT(same);
      }
      row += int64_t(o.size());
    }
    EXPECT(ctx.kv_blocks_free() == free_before);
    std::printf("  prefix %lld: forks side by side %s copied prefixes bit for bit; max |alone - side by side| %.3g\n",
                (long long)n_prefix, bitwise ? "==" : "!=", worst);

    // the prefix's cache untouched: its next token's logits equal a fresh context's
    const int32_t next = text[size_t(n_prefix)];
    const float* after = ctx.seq_eval(0, &next, 1);
    LlamaContext fresh(stories_model(), paged(128, 1, 16));
    std::vector<int32_t> longer = prefix;
    longer.push_back(next);
    const float* fl = fresh.seq_eval(0, longer.data(), int64_t(longer.size()));
    EXPECT(after != nullptr && fl != nullptr);
    bool same = false;
    if (after && fl) EXPECT(max_diff(after, fl, V, &same) <= 1e-5f && same);
  }
}

// A fork writes its sequence's partial last block in place only when nobody else holds it: here
// sequence 0 holds 24 positions and sequence 1 shares its first 21 (the block of positions 16-31
// shared, rows 5-7 sequence 0's own). A fork of sequence 1 must copy that block: sequence 0's
// next token then equals a fresh context's bit for bit (written in place, the fork's keys would
// replace rows 5-7 of sequence 0), and the fork's rows equal those of sequence 1 evaluated itself.
TEST(kv_paging_fork_in_place_only_when_the_block_is_its_own) {
  if (stories_gguf().empty()) return;
  const int64_t V = stories_model()->hparams().n_vocab;
  const std::vector<int32_t> text = story(40);
  LlamaContext ctx(stories_model(), paged(128, 2, 16));
  EXPECT(ctx.seq_eval(0, text.data(), 24) != nullptr);
  ctx.seq_copy_prefix(0, 1, 21);
  const std::vector<int32_t> opt = {42, 7, 300};
  const uint64_t w0 = fork_in_place_writes();
  LlamaBatchSegment f{1, opt.data(), int64_t(opt.size()), true, nullptr, nullptr, true};
  std::vector<float> got(opt.size() * size_t(V));
  EXPECT(ctx.eval_batch(&f, 1, got.data()));
  EXPECT(fork_in_place_writes() == w0);  // three holders (sequences 0, 1, the fork): copied
  const float* after = ctx.seq_eval(0, &text[24], 1);
  LlamaContext fresh(stories_model(), paged(128, 1, 16));
  const float* fl = fresh.seq_eval(0, text.data(), 25);
  EXPECT(after != nullptr && fl != nullptr);
  bool same = false;
  if (after && fl) EXPECT(max_diff(after, fl, V, &same) <= 1e-5f && same);
  // sequence 0's token 24 copied the shared block on write: sequence 1 now holds its own, and a
  // fork of it writes there in place; both forks give the rows of sequence 1 itself evaluating
  // the option (the same passes on another context)
  std::vector<float> again(got.size());
  EXPECT(ctx.eval_batch(&f, 1, again.data()));
  EXPECT(fork_in_place_writes() == w0 + 1);
  EXPECT(ctx.seq_n_past(1) == 21);
  LlamaContext ref(stories_model(), paged(128, 2, 16));
  std::vector<float> rows(got.size());
  EXPECT(ref.seq_eval(0, text.data(), 24) != nullptr);
  ref.seq_copy_prefix(0, 1, 21);
  EXPECT(ref.seq_eval(1, opt.data(), int64_t(opt.size()), rows.data()) != nullptr);
  EXPECT(rows == got);
  EXPECT(again == got);
}
