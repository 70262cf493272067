// Batched greedy parity of the continuous-batching Scheduler on any device, shared by the
// emulated-device test (test_emulated_device.cpp, runs in CI) and the CUDA end-to-end test
// (cuda/test_cuda_e2e.cpp, runs on a GPU), so both devices are held to the same checks:
// stories260K (../shared/models/stories260K) loaded on the device; requests whose prompts are
// llama2.c run.c's own first k tokens generate greedily through the scheduler's batched steps
// (several sequences per pass, chunked prefill) and must give
//   - the tokens and stop reason of the same request alone (Session::generate on a context of
//     its own, same device), and the tokens streamed equal the tokens returned;
//   - run.c's continuation (greedy is deterministic: from want[0..k) it must give want[k..k+n));
// first with every sequence's context in the KV pool (4 requests, 3 slots: one waits), then
// with a pool of 8 blocks of 16 that the 4 requests outgrow together (optimistic admission,
// preemption of the newest sequence and its recomputation), where the same must hold.
#pragma once
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "model/llama.h"
#include "model/scheduler.h"
#include "model/session.h"
#include "stories_helpers.h"
#include "submit_together.h"
#include "testing.h"

namespace emollm_test {

struct BatchedParityRun {
  emollm::SchedulerStats st;
};

// Runs `prompts` (greedy, max_tokens each) through one Scheduler on m with `so`, all submitted
// while the first request's first token holds the scheduler thread (so they are admitted
// together), and checks each against the request alone and the oracle (`k[i]`: prompt i is
// oracle[0..k[i]]).
inline BatchedParityRun expect_batched_equals_alone(const std::shared_ptr<emollm::LlamaModel>& m,
                                                    const emollm::SchedulerOptions& so, const std::vector<size_t>& k,
                                                    int64_t max_tokens, const std::string& label) {
  using namespace emollm;
  const std::vector<int32_t> want = oracle_greedy();
  const size_t N = k.size();
  std::vector<GenerateResult> alone;
  for (size_t i = 0; i < N; ++i) {
    LlamaContext ctx(m, LlamaContextOptions{so.n_ctx, 0, 1});
    alone.push_back(Session(ctx).generate(std::vector<int32_t>(want.begin(), want.begin() + long(k[i])), nullptr,
                                          greedy(max_tokens), nullptr));
  }
  Scheduler sched(m, so);
  std::vector<SeqRequest> requests(N);
  for (size_t i = 0; i < N; ++i) {
    requests[i].prompt.assign(want.begin(), want.begin() + long(k[i]));
    requests[i].params = greedy(max_tokens);
  }
  const TogetherRun together = submit_together(sched, std::move(requests));
  for (size_t i = 0; i < N; ++i) {
    const SeqOutcome& o = together.got[i];
    const std::string what = label + ": request " + std::to_string(i) + " (prompt of " + std::to_string(k[i]) + ")";
    if (o.error) {
      report_failure(__FILE__, __LINE__, what + " failed");
      continue;
    }
    const std::vector<int32_t>& got = o.generated.tokens;
    if (got != alone[i].tokens || o.generated.reason != alone[i].reason)
      report_failure(__FILE__, __LINE__, what + ": batched tokens differ from the request alone");
    if (together.streamed[i] != got) report_failure(__FILE__, __LINE__, what + ": streamed tokens differ from the result");
    const size_t n = got.size();
    if (n == 0 || k[i] + n > want.size() ||
        std::vector<int32_t>(want.begin() + long(k[i]), want.begin() + long(k[i] + n)) != got)
      report_failure(__FILE__, __LINE__, what + ": tokens differ from llama2.c's continuation");
  }
  BatchedParityRun run;
  run.st = sched.stats();
  std::printf("  %s: %lld steps, %lld batched, max batch %lld, %lld preemptions (%lld positions recomputed)\n",
              label.c_str(), (long long)run.st.steps, (long long)run.st.batched_steps, (long long)run.st.max_batch,
              (long long)run.st.kv_preemptions, (long long)run.st.kv_recomputed_tokens);
  EXPECT(run.st.active == 0 && run.st.queued == 0 && run.st.prefilling == 0);
  return run;
}

// Both configurations on m (a model of stories260K on the device under test).
inline void expect_batched_greedy_parity(const std::shared_ptr<emollm::LlamaModel>& m, const std::string& device) {
  emollm::SchedulerOptions so;
  so.n_ctx = 256;
  so.n_seq = 3;  // 4 requests: one waits for a slot
  BatchedParityRun a = expect_batched_equals_alone(m, so, {1, 4, 9, 15}, 40, device + " scheduler, full pool");
  EXPECT(a.st.batched_steps > 0 && a.st.max_batch >= 2);
  // 4 x (8..14 + 40) positions in 8 blocks of 16: the pool holds the prompts, half the ends
  emollm::SchedulerOptions small;
  small.n_ctx = 128;
  small.n_seq = 4;
  small.kv_block_size = 16;
  small.kv_positions = 128;
  BatchedParityRun b = expect_batched_equals_alone(m, small, {8, 10, 12, 14}, 40, device + " scheduler, 8 KV blocks of 16");
  EXPECT(b.st.batched_steps > 0 && b.st.max_batch >= 2);
  EXPECT(b.st.kv_preemptions > 0);
  EXPECT(b.st.kv_blocks_used == b.st.kv_blocks_cached);  // every block left is an idle cached prefix
}

}  // namespace emollm_test
