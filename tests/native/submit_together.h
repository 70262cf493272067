// Requests submitted to a Scheduler so that they are admitted together: the first request's first
// token holds the scheduler thread until every request is queued. Shared by the scheduler tests
// that compare batched (and preempted) requests with the same requests alone.
#pragma once
#include <atomic>
#include <chrono>
#include <future>
#include <thread>
#include <vector>

#include "model/scheduler.h"

namespace emollm_test {

struct TogetherRun {
  std::vector<emollm::SeqOutcome> got;         // each request's outcome, in submission order
  std::vector<std::vector<int32_t>> streamed;  // each request's on_token calls, in order
};

// Sets each request's on_token / on_done, submits them all, waits for every outcome.
inline TogetherRun submit_together(emollm::Scheduler& sched, std::vector<emollm::SeqRequest> requests) {
  const size_t N = requests.size();
  TogetherRun run;
  run.streamed.resize(N);
  std::vector<std::promise<emollm::SeqOutcome>> done(N);
  std::atomic<bool> gate{false};
  for (size_t i = 0; i < N; ++i) {
    requests[i].on_token = [&run, &gate, i](int32_t tok) {
      run.streamed[i].push_back(tok);
      if (i == 0)
        while (!gate.load()) std::this_thread::sleep_for(std::chrono::microseconds(100));
    };
    requests[i].on_done = [&done, i](emollm::SeqOutcome&& o) { done[i].set_value(std::move(o)); };
    sched.submit(std::move(requests[i]));
  }
  gate.store(true);
  for (auto& d : done) run.got.push_back(d.get_future().get());
  return run;
}

}  // namespace emollm_test
