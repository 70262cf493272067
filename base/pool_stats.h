// Hand-off time of ThreadPool jobs, for the per-op profile (core/profiling_backend.h): the time a
// thread that starts a job spends waking the workers, and waiting for them after finishing its
// own share (worker wake-up latency and load imbalance: both on the critical path of a kernel,
// neither memory traffic). Off by default (it costs a few clock reads per job when on).
#pragma once
#include <cstdint>

namespace emollm {

void pool_handoff_timing(bool on);
// Seconds of hand-off accumulated by jobs that the calling thread started (monotone per thread).
double pool_handoff_seconds_this_thread();
// ThreadPool jobs (run / run_dynamic calls that reached the workers, not the inline ones) the
// calling thread started (monotone per thread; always counted).
uint64_t pool_dispatches_this_thread();
// The chunks parallel_ranges (thread_pool.h) has run on the calling thread: one a claim (and one
// for its inline fn(0, n)), monotone per thread, always counted (a thread-local increment a claim).
// Tests sum it over a pool's threads to see that a dispatch claims as its settings ask (a kernel's
// owner_keep: one long first claim per range instead of shrinking quarters), which the bits cannot.
uint64_t pool_range_chunks_this_thread();
// The polls (one pause instruction each) a pool thread spins while it waits, before it sleeps on
// a condition variable (workers between jobs, the caller waiting for them): benchmarks time it.
int pool_spin_polls();

}  // namespace emollm
