// Per-op profile of what a model asks its backend to do: a decorator Backend that forwards every
// call to the real one and times the compute calls (wall time of the call, which for the CPU
// backend includes waking the thread pool and waiting for its slowest worker). No model code
// changes: the Runtime wraps the backends it makes when profiling is on.
//
// On when the environment has EMOLLM_PROFILE=1 at the first backend request (or after
// profile_set_enabled(true)). Ops are grouped by kind, weight dtype and shape, and by phase:
// "decode" for one-row calls (M = 1, one query, one token), "prefill" otherwise. With
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
// The table as JSON: {"ops":[{"phase","op","key","calls","total_ms","mean_us"}...],"decode_steps":N}
// sorted by phase then total time. decode_steps = one-token embedding lookups (decode steps).
std::string profile_json();
// Adds `seconds` of work outside the backend ops (sampling) to the table as (phase, op, key);
// nothing unless profiling is on. Thread-pool hand-offs inside ops are rows of op "handoff",
// keyed by the op they happened in (already part of that op's time); their thread-pool jobs are
// rows of op "dispatch" (calls = jobs, no time), keyed likewise.
void profile_add(bool decode, const char* op, const std::string& key, double seconds);

// Wraps `inner` (kept alive by the wrapper) in the timing decorator.
std::shared_ptr<Backend> make_profiling_backend(std::shared_ptr<Backend> inner);

}  // namespace emollm
