// Clocks and summaries the native benchmark tools share: wall time, the calling thread's CPU time
// (readable on a loaded machine: preemption excluded), and the median / best of a run's samples.
#pragma once
#include <time.h>

#include <algorithm>
#include <chrono>
#include <vector>

namespace bench {
// Seconds on the steady (monotonic) clock.
inline double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
// Seconds of CPU time the calling thread has used.
inline double thread_cpu() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}
// The upper median (the middle sample, the higher of the two middle ones); 0 for no samples.
inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
// The smallest sample; 0 for no samples.
inline double best(const std::vector<double>& v) { return v.empty() ? 0 : *std::min_element(v.begin(), v.end()); }
}  // namespace bench
