// What the native read-pattern tools share (q40_read_patterns, q8_read_patterns, f32_read_patterns,
// kq_streams_ab): the weight copies in 2 MiB pages that the rows rotate through (cold reads), the
// RP_ROWS filter and the clock RP_CPU names. Each tool keeps its own rows, loop and table: they
// differ (alternative copies, per-round ratios, a mean column).
#pragma once
#include <time.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench_clock.h"
#include "bench_read.h"

namespace bench {

// `copies` buffers of `bytes` in 2 MiB pages: fill writes the first, the others are copies of it.
inline std::vector<uint8_t*> huge_copies(size_t bytes, int copies, const std::function<void(uint8_t*)>& fill) {
  std::vector<uint8_t*> cp(static_cast<size_t>(copies));
  cp[0] = huge_alloc(bytes);
  fill(cp[0]);
  for (size_t c = 1; c < cp.size(); ++c) cp[c] = huge_alloc(bytes), std::memcpy(cp[c], cp[0], bytes);
  return cp;
}

// RP_ROWS=a,b,...: only the rows named (the first row, the tool's reference, always kept).
template <class Row>
void keep_named_rows(std::vector<Row>& rows) {
  const char* keep = std::getenv("RP_ROWS");
  if (!keep) return;
  const std::string list = std::string(",") + keep + ",";
  std::vector<Row> kept;
  for (auto& row : rows)
    if (kept.empty() || list.find("," + std::string(row.name) + ",") != std::string::npos) kept.push_back(row);
  rows = kept;
}

// RP_CPU=1 at 1 thread: the calling thread's CPU time (preemption excluded on a loaded machine; a
// pool of one runs the calls on the caller); RP_CPU=process (where the tool allows it): the
// process's CPU time over the threads (every thread's, the pool's waits included); else wall time.
enum class PatternClock { Wall, Thread, Process };
inline PatternClock pattern_clock(int threads, bool process_allowed) {
  const char* v = std::getenv("RP_CPU");
  if (v && std::strcmp(v, "1") == 0 && threads == 1) return PatternClock::Thread;
  if (v && std::strcmp(v, "process") == 0 && process_allowed) return PatternClock::Process;
  return PatternClock::Wall;
}
inline const char* pattern_clock_name(PatternClock c) {
  return c == PatternClock::Thread ? "thread CPU time" : c == PatternClock::Process ? "process CPU time / threads" : "wall";
}
inline double process_cpu() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}
// run() timed by clock c, in seconds.
inline double timed_call(PatternClock c, int threads, const std::function<void()>& run) {
  const double c0 = thread_cpu(), p0 = process_cpu(), t0 = now();
  run();
  if (c == PatternClock::Thread) return thread_cpu() - c0;
  if (c == PatternClock::Process) return (process_cpu() - p0) / threads;
  return now() - t0;
}

}  // namespace bench
