// Per-op profile of what a model asks its backend to do: a decorator Backend that forwards every
// call to the real one and times the compute calls (wall time of the call, which for the CPU
// backend includes waking the thread pool and waiting for its slowest worker). No model code
// changes: the Runtime wraps the backends it makes when profiling is on.
//
// On when the environment has EMOLLM_PROFILE=1 at the first backend request (or after
// profile_set_enabled(true)). Ops are grouped by kind, weight dtype and shape, and by phase. The
// phase is what the core says, not a guess from the op's size: a forward pass opens a ProfileStep
// on its thread saying whether it is a decode step (one new token of each sequence) or not; ops
// inside are "decode" or "prefill", ops outside any step (vision towers, training) "other". With
// EMOLLM_PROFILE_OUT=FILE the table is written there as JSON when the process exits
// (bench:decode reads it; no addon call needed), else profile_json() returns it.
#pragma once
#include <memory>
#include <string>

#include "core/backend.h"

namespace emollm {

bool profile_enabled();
void profile_set_enabled(bool on);
// Clears the accumulated table.
void profile_reset();
// The table as JSON: {"decode_steps":N,"decode_tokens":T,"decode_faults":F,"ops":[{"phase","op",
// "key","calls","total_ms","mean_us","faults","cpu_ms","bytes"}...]} sorted by phase then total time.
// decode_steps = forward passes the core marked as decode steps, decode_tokens = their token rows
// (= steps for one sequence), decode_faults = page faults of the stepping thread inside them
// (getrusage RUSAGE_THREAD: not the pool workers'). A row's faults: the same inside its calls,
// counted only with EMOLLM_PROFILE_FAULTS=1 (two syscalls an op), else 0. cpu_ms: the thread's
// CPU time, in the "loop" row (its wall time less the time it waited for a core), and with
// EMOLLM_PROFILE_CPU=1 in every op's row (the calling thread's: the whole op with one thread).
// bytes: what the calls read besides weights (attention: K and V rows), else 0.
std::string profile_json();
// Every op row's cpu_ms (EMOLLM_PROFILE_CPU=1 at the first profiled op, or this); off: the "loop" row only.
void profile_set_cpu_per_op(bool on);
// Decode attention replays (a diagnostic; EMOLLM_PROFILE_ATTN_REPLAY=MiB at the first profiled op,
// or this; 0: off): every attention_batch call of a decode step runs twice more with the same
// items, once right away (row "attention_batch replay-warm") and once after the calling thread
// read `mib` MiB of its own buffer (rows "attention_batch evict", "attention_batch replay-cold"),
// so the step's own call (row "attention_batch") can be held against the same call with the K / V
// rows left in the caches and after an eviction pass. The outputs are written again with the same
// values; the replays add to each step's time. The eviction reads on the calling thread only: with
// pool threads on other cores (other L2 / L3), their share of the K / V rows may stay cached, so
// the replay-cold row means most at 1 thread.
void profile_set_attn_replay(int64_t mib);
// Adds `seconds` of work outside the backend ops (sampling) to the table as (phase, op, key);
// nothing unless profiling is on. Thread-pool hand-offs inside ops are rows of op "handoff",
// keyed by the op they happened in (already part of that op's time); their thread-pool jobs are
// rows of op "dispatch" (calls = jobs, no time), keyed likewise.
void profile_add(bool decode, const char* op, const std::string& key, double seconds);

// One forward pass, as the core sees it (RAII, on the thread that runs the pass; nothing when
// profiling is off). Besides giving the backend ops inside it their phase, it records:
//   (phase, "forward", "between ops")   the pass's wall time less its timed ops and the profiler's
//                                       bookkeeping: the model code around the ops (block
//                                       reservation, tables, the layer loop);
//   (phase, "profiler", "bookkeeping")  the profiler's own time around the ops (clock, getrusage,
//                                       the table) inside the pass: its overhead, shown, not hidden;
//   ("decode", "loop", "between steps") from the end of one decode step to the start of the next
//                                       on the same thread, less the profile_add time in between
//                                       (sampling): token delivery, scheduling, the generate loop.
// So a decode token's time = its ops + "forward" + "profiler" + "sample" + "loop", disjoint rows.
class ProfileStep {
 public:
  ProfileStep(bool decode, int64_t tokens);
  ~ProfileStep();
  ProfileStep(const ProfileStep&) = delete;
  ProfileStep& operator=(const ProfileStep&) = delete;

 private:
  bool on_;
};

// Wraps `inner` (kept alive by the wrapper) in the timing decorator.
std::shared_ptr<Backend> make_profiling_backend(std::shared_ptr<Backend> inner);

}  // namespace emollm
