// The chunks parallel_ranges has run on a pool's threads so far (base/pool_stats.h
// pool_range_chunks_this_thread, summed over them): what the owner_keep tests compare before and
// after a kernel call, since equal bits cannot show how a dispatch claimed its range.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

#include "../../base/pool_stats.h"
#include "../../base/thread_pool.h"

namespace emollm_test {

// A job whose indices wait for each other before they read their thread's count, so that each of
// the pool's threads runs exactly one (run(): the caller index 0, worker i index i).
inline uint64_t pool_range_chunks(emollm::ThreadPool& pool) {
  std::atomic<uint64_t> sum{0};
  std::atomic<int> in{0};
  pool.run([&](int, int nth) {
    in.fetch_add(1);
    while (in.load() < nth) std::this_thread::yield();
    sum.fetch_add(emollm::pool_range_chunks_this_thread());
  });
  return sum.load();
}

// The fewest chunks parallel_ranges ran in any of `calls` calls of f on the pool: the claims of a
// call whose threads all joined in time (a thread kept off its core leaves its range to the
// others' shrinking claims from the back, more chunks).
template <class F>
uint64_t fewest_range_chunks(emollm::ThreadPool& pool, int calls, F&& f) {
  uint64_t fewest = UINT64_MAX;
  for (int c = 0; c < calls; ++c) {
    const uint64_t before = pool_range_chunks(pool);
    f();
    const uint64_t n = pool_range_chunks(pool) - before;
    if (n < fewest) fewest = n;
  }
  return fewest;
}

}  // namespace emollm_test
