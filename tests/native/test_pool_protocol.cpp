// Stress of ThreadPool's hand-off (base/thread_pool.h: jobs published with atomics, sleeping
// threads woken through condition variables): many thousands of tiny jobs of every kind, from
// several caller threads at once, with exceptions, pools destroyed idle, right after they start
// or after their workers went to sleep, 1-4 threads; every item done exactly once. And the
// shared integer env helper (base/env_switch.h env_int).
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <thread>
#include <vector>

#include "base/env_switch.h"
#include "base/thread_pool.h"
#include "testing.h"

using namespace emollm;

namespace {
void busy_us(int us) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  while (std::chrono::steady_clock::now() < until) {
  }
}

// One round of every job kind on `pool`, each item counted in hits[base, base + items): run (one
// item per index), run_dynamic (a shared counter over 64 items), parallel_for (n items, grain 1 and
// 3), parallel_guided and parallel_ranges. Returns the items the round covers.
int64_t mixed_round(ThreadPool& pool, std::vector<std::atomic<int>>& hits, int64_t base, int r) {
  int64_t at = base;
  const int nth = pool.size();
  // every other round the caller's own index takes a few us, so the workers claim theirs first
  // (otherwise the caller often takes them all before a worker has looked)
  const bool slow0 = r % 2 == 0;
  pool.run([&](int ith, int n) {
    if (n != nth) hits[size_t(at)].fetch_add(100);  // a wrong count shows as a wrong tally
    if (ith == 0 && slow0) busy_us(3);
    hits[size_t(at + ith)].fetch_add(1);
  });
  at += nth;
  // run_dynamic returns only when every thread that joined is out of fn: all 64 items finished
  std::atomic<int64_t> next{0};
  std::atomic<int> finished{0};
  pool.run_dynamic([&] {
    for (int64_t i; (i = next.fetch_add(1)) < 64;) {
      if (i % 16 == 15) busy_us(1);
      hits[size_t(at + i)].fetch_add(1);
      finished.fetch_add(1);
    }
  });
  if (finished.load() != 64) hits[size_t(at)].fetch_add(100);
  at += 64;
  const int64_t n = 1 + r % 37;
  pool.parallel_for(n, 1 + r % 3, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[size_t(at + i)].fetch_add(1);
  });
  at += n;
  parallel_guided(&pool, 50, 2, 8, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[size_t(at + i)].fetch_add(1);
  });
  at += 50;
  parallel_ranges(&pool, 70, 3, 9, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[size_t(at + i)].fetch_add(1);
  });
  at += 70;
  return at - base;
}
constexpr int64_t kRoundItems = 4 + 64 + 37 + 50 + 70;  // at most, at 4 threads

bool all_once(const std::vector<std::atomic<int>>& hits, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (hits[size_t(i)].load() != 1) return false;
  return true;
}
}  // namespace

// Thousands of back-to-back tiny jobs of every kind on one caller, 1-4 threads.
TEST(pool_protocol_tiny_jobs_each_item_once) {
  for (int threads = 1; threads <= 4; ++threads) {
    ThreadPool pool(threads);
    const int rounds = 1500;
    std::vector<std::atomic<int>> hits(size_t(rounds * kRoundItems));
    int64_t at = 0;
    for (int r = 0; r < rounds; ++r) at += mixed_round(pool, hits, at, r);
    EXPECT(all_once(hits, at));
  }
}

// Several caller threads share one pool (calls serialised by the pool) while each also runs
// nested calls from inside its jobs (inline); one of them sleeps now and then between its jobs,
// so that the workers go to sleep and are woken by the next job.
TEST(pool_protocol_several_callers_each_item_once) {
  for (int threads = 2; threads <= 4; ++threads) {
    ThreadPool pool(threads);
    const int callers = 3, rounds = 300;
    std::vector<std::vector<std::atomic<int>>> hits(callers);
    std::vector<std::atomic<int>> nested(size_t(callers * rounds));
    std::vector<int64_t> covered(callers, 0);
    std::vector<std::thread> ts;
    for (int c = 0; c < callers; ++c) {
      hits[size_t(c)] = std::vector<std::atomic<int>>(size_t(rounds * kRoundItems));
      ts.emplace_back([&, c] {
        int64_t at = 0;
        for (int r = 0; r < rounds; ++r) {
          if (c == 0 && r % 50 == 25) std::this_thread::sleep_for(std::chrono::milliseconds(2));
          at += mixed_round(pool, hits[size_t(c)], at, r + c);
          pool.run([&](int ith, int) {
            if (ith == 0) pool.parallel_for(1, 1, [&](int64_t, int64_t) { nested[size_t(c * rounds + r)]++; });
          });
        }
        covered[size_t(c)] = at;
      });
    }
    for (auto& t : ts) t.join();
    for (int c = 0; c < callers; ++c) EXPECT(all_once(hits[size_t(c)], covered[size_t(c)]));
    EXPECT(all_once(nested, callers * rounds));
  }
}

// Exceptions from any index of run() and from any thread of run_dynamic() reach the caller, the
// first one only; the pool keeps working after each, and every other index still ran once.
TEST(pool_protocol_exceptions_propagate) {
  for (int threads = 2; threads <= 4; ++threads) {
    ThreadPool pool(threads);
    int caught = 0;
    for (int r = 0; r < 400; ++r) {
      const int bad = r % threads;
      std::vector<std::atomic<int>> hits(static_cast<size_t>(threads));
      try {
        pool.run([&](int ith, int) {
          hits[size_t(ith)]++;
          if (ith == bad) throw std::runtime_error("run boom");
        });
      } catch (const std::runtime_error&) {
        caught++;
      }
      for (int i = 0; i < threads; ++i) EXPECT(hits[size_t(i)].load() == 1);
      std::atomic<int> next{0};
      try {
        pool.run_dynamic([&] {
          if (next.fetch_add(1) == r % 2) throw std::runtime_error("dyn boom");
        });
      } catch (const std::runtime_error&) {
        caught++;
      }
      std::vector<std::atomic<int>> once(static_cast<size_t>(kRoundItems));
      const int64_t n = mixed_round(pool, once, 0, r);
      EXPECT(all_once(once, n));
    }
    // run(): every round throws; run_dynamic: index r % 2 is reached in every round with r % 2 == 0
    // (the caller's own call) and whenever a worker joins with r % 2 == 1
    EXPECT(caught >= 400 + 200);
  }
}

// Pools created and destroyed idle (workers asleep or spinning), right after construction (the
// stop published before the workers first look), and right after a job; 1-4 threads.
TEST(pool_protocol_destruction_idle_and_immediate) {
  for (int threads = 1; threads <= 4; ++threads) {
    for (int k = 0; k < 50; ++k) {
      ThreadPool pool(threads);
      if (k % 3 == 1) {
        std::atomic<int> n{0};
        pool.run([&](int, int) { n++; });
        EXPECT(n.load() == threads);
      }
    }
    ThreadPool sleeper(threads);
    std::atomic<int> n{0};
    sleeper.run([&](int, int) { n++; });
    // long enough for the workers to pass their spin and sleep on the condition variable
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    sleeper.run([&](int, int) { n++; });
    sleeper.run_dynamic([&] { n += 0; });
    EXPECT(n.load() == 2 * threads);
  }
}

// A late worker (the test hook): run() indices still once, the caller taking
// the late worker's index; parallel_for items once.
TEST(pool_protocol_late_worker_items_once) {
  for (LateAt at : {LateAt::Hold, LateAt::Arrival}) {
    ThreadPool pool(3);
    pool_set_late_worker(3000, -1, at);
    for (int r = 0; r < 10; ++r) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(kRoundItems));
      const int64_t n = mixed_round(pool, hits, 0, r);
      EXPECT(all_once(hits, n));
    }
    pool_set_late_worker(0);
  }
}

// A slow worker (the test hook pool_set_slow_worker: 25% and 200% more wall per chunk): every
// item of every job kind still once; the hook's waits reach the worker's chunks (none without it).
TEST(pool_protocol_slow_worker_items_once) {
  for (int pct : {25, 200}) {
    ThreadPool pool(3);
    const uint64_t w0 = pool_slow_waits();
    pool_set_slow_worker(pct);
    for (int r = 0; r < 10; ++r) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(kRoundItems));
      const int64_t n = mixed_round(pool, hits, 0, r);
      EXPECT(all_once(hits, n));
    }
    // tiny jobs often end before the last worker joins: chunks of 200 us until it has taken one
    for (int k = 0; k < 400 && pool_slow_waits() == w0; ++k)
      parallel_guided(&pool, 64, 1, 8, [&](int64_t, int64_t) { busy_us(200); });
    pool_set_slow_worker(0);
    EXPECT(pool_slow_waits() > w0);
    const uint64_t w1 = pool_slow_waits();
    std::vector<std::atomic<int>> hits(static_cast<size_t>(kRoundItems));
    EXPECT(all_once(hits, mixed_round(pool, hits, 0, 0)));
    EXPECT(pool_slow_waits() == w1);
  }
}

// env_int: unset or empty reads as the default; otherwise as std::atoll (sign, leading blanks,
// digits up to the first other character, 0 when none).
TEST(env_int_parses_like_atoll) {
  const char* name = "EMOLLM_TEST_ENV_INT";
  unsetenv(name);
  EXPECT(env_int(name, 7) == 7);
  EXPECT(env_int(name, -1) == -1);
  const struct {
    const char* v;
    long long want;
  } cases[] = {{"", 7}, {"0", 0}, {"42", 42}, {"-3", -3}, {"  12", 12}, {"+5", 5}, {"16k", 16},
               {"x", 0}, {"8589934592", 8589934592LL}};
  for (const auto& c : cases) {
    setenv(name, c.v, 1);
    EXPECT(env_int(name, 7) == c.want);
    if (*c.v) EXPECT(env_int(name, 7) == std::atoll(c.v));
  }
  unsetenv(name);
}
