// Requests submitted to a Scheduler at a known point of another's decoding, whatever the machine's
// load: a request's on_token holds the scheduler thread (which runs every request of a Scheduler)
// at its k-th token until the test has queued what it wanted (TokenGate). submit_together: the
// first request's first token holds it until every request is queued, so all are admitted
// together (the scheduler tests that compare batched and preempted requests with the same
// requests alone).
#pragma once
#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <thread>
#include <vector>

#include "model/scheduler.h"

namespace emollm_test {

// Holds the scheduler thread in a request's on_token at its `at`-th token until open(). Neither side
// waits past kDeadline: wait_held() returns false when the request ended (end(), from its on_done)
// or failed before its at-th token, or the deadline passed (the test EXPECTs it, then opens the
// gate and goes on: it fails instead of hanging), and a gate never opened lets the scheduler
// thread go on after the deadline.
class TokenGate {
 public:
  static constexpr std::chrono::seconds kDeadline{30};
  explicit TokenGate(int at = 1) : at_(at) {}
  // From on_token (scheduler thread): counts the token; at the at-th, waits for open().
  void on_token() {
    if (++seen_ != at_) return;
    const auto until = std::chrono::steady_clock::now() + kDeadline;
    while (!open_.load() && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  // Test thread: waits until the request has reached its at-th token (and is held there): true;
  // false if it ended first (end()) or kDeadline passed.
  bool wait_held() const {
    const auto until = std::chrono::steady_clock::now() + kDeadline;
    while (seen_.load() < at_) {
      if (ended_.load() || std::chrono::steady_clock::now() >= until) return seen_.load() >= at_;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    return true;
  }
  // From the request's on_done: no more tokens come (wait_held stops waiting).
  void end() { ended_.store(true); }
  void open() { open_.store(true); }
  bool is_open() const { return open_.load(); }

 private:
  const int at_;
  std::atomic<int> seen_{0};
  std::atomic<bool> open_{false};
  std::atomic<bool> ended_{false};
};

struct TogetherRun {
  std::vector<emollm::SeqOutcome> got;         // each request's outcome, in submission order
  std::vector<std::vector<int32_t>> streamed;  // each request's on_token calls, in order
};

// Sets each request's on_done, submits them all in order, waits for every outcome. A request's own
// on_token (if any) still runs, after its token is recorded (and, for the first request, after the
// gate opens). submitted(i, id), when given, sees each request's id right after its submission,
// before the first request is let go (for on_token callbacks that abort a request by id).
inline TogetherRun submit_together(emollm::Scheduler& sched, std::vector<emollm::SeqRequest> requests,
                                   const std::function<void(size_t, uint64_t)>& submitted = {}) {
  const size_t N = requests.size();
  TogetherRun run;
  run.streamed.resize(N);
  std::vector<std::promise<emollm::SeqOutcome>> done(N);
  TokenGate gate;
  for (size_t i = 0; i < N; ++i) {
    requests[i].on_token = [&run, &gate, i, own = std::move(requests[i].on_token)](int32_t tok) {
      run.streamed[i].push_back(tok);
      if (i == 0) gate.on_token();
      if (own) own(tok);
    };
    requests[i].on_done = [&done, i](emollm::SeqOutcome&& o) { done[i].set_value(std::move(o)); };
    const uint64_t id = sched.submit(std::move(requests[i]));
    if (submitted) submitted(i, id);
  }
  gate.open();
  for (auto& d : done) run.got.push_back(d.get_future().get());
  return run;
}

}  // namespace emollm_test
