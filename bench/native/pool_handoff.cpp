// What one ThreadPool hand-off costs (base/thread_pool.h: the job published with atomics, the
// condition variables only for a thread that sleeps). Session 18 measured this protocol against
// the previous locked one here (bench/README.md) before the locked one was removed.
//
//   build-bench/pool_handoff [threads=2] [rounds=15] [calls=2000]
//
// Jobs: run / run_dynamic / parallel_for (n = threads, grain 1) with empty bodies, and run with a
// tiny body (about 2 us of arithmetic an index). Per round and protocol, `calls` back-to-back calls
// of each job: the wall time and the calling thread's CPU time a call; printed per job, the best
// and the median round. Also
// the time of the pool's spin before a waiting thread sleeps (pool_spin_polls pauses).
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "../../base/pool_stats.h"
#include "../../base/thread_pool.h"
#include "bench_clock.h"

using namespace emollm;
using bench::best;
using bench::median;
using bench::now;
using bench::thread_cpu;

namespace {
volatile double g_sink = 0;
// About 2 us of dependent arithmetic on the Zen 5 VM (no memory traffic).
void tiny_work(int salt) {
  double x = 1.0 + salt;
  for (int i = 0; i < 1000; ++i) x = x * 0.9999999 + 1e-7;
  g_sink = x;
}
int positional(int argc, char** argv, int i, int dflt) {
  if (argc <= i) return dflt;
  char* end = nullptr;
  const long v = std::strtol(argv[i], &end, 10);
  if (*argv[i] == '\0' || *end != '\0' || v < 1) {
    std::fprintf(stderr, "pool_handoff [threads=2] [rounds=15] [calls=2000]: positive integers only\n");
    std::exit(2);
  }
  return int(v);
}
}  // namespace

int main(int argc, char** argv) {
  const int threads = positional(argc, argv, 1, 2), rounds = positional(argc, argv, 2, 15),
            calls = positional(argc, argv, 3, 2000);
  ThreadPool pool(threads);
  struct Job {
    const char* name;
    std::function<void()> call;
  };
  const std::vector<Job> jobs = {
      {"run empty", [&] { pool.run([](int, int) {}); }},
      {"run_dynamic empty", [&] { pool.run_dynamic([] {}); }},
      {"parallel_for empty", [&] { pool.parallel_for(threads, 1, [](int64_t, int64_t) {}); }},
      {"run tiny (~2 us)", [&] { pool.run([](int ith, int) { tiny_work(ith); }); }},
  };
  {
    tiny_work(0);
    const double c0 = thread_cpu(), t0 = now();
    for (int i = 0; i < 1000; ++i) tiny_work(i);
    std::printf("tiny body alone: %.2f us wall, %.2f us cpu (mean of 1000)\n", 1e3 * (now() - t0), 1e3 * (thread_cpu() - c0));
    auto spin = [] {
      for (int i = 0; i < pool_spin_polls(); ++i) __builtin_ia32_pause();
    };
    spin();
    std::vector<double> s;
    for (int k = 0; k < 9; ++k) {
      const double t = now();
      spin();
      s.push_back(now() - t);
    }
    std::printf("spin before sleeping: %d pauses = %.0f us (median of 9)\n", pool_spin_polls(), 1e6 * median(s));
  }
  // wall[j], cpu[j]: one value a round, in us a call
  std::vector<std::vector<double>> wall(jobs.size()), cpu(jobs.size());
  for (int r = 0; r < rounds; ++r)
    for (size_t j = 0; j < jobs.size(); ++j) {
      for (int i = 0; i < calls / 10; ++i) jobs[j].call();  // warm
      const double c0 = thread_cpu(), t0 = now();
      for (int i = 0; i < calls; ++i) jobs[j].call();
      const double t = now() - t0, c = thread_cpu() - c0;
      wall[j].push_back(1e6 * t / calls);
      cpu[j].push_back(1e6 * c / calls);
    }
  std::printf("%d threads, %d rounds x %d calls; us a call: best / median round\n", threads, rounds, calls);
  std::printf("%-20s %21s %21s\n", "job", "wall", "cpu (caller)");
  for (size_t j = 0; j < jobs.size(); ++j)
    std::printf("%-20s %10.3f / %8.3f %10.3f / %8.3f\n", jobs[j].name, best(wall[j]), median(wall[j]), best(cpu[j]),
                median(cpu[j]));
}
