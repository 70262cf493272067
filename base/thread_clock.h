// The calling thread's CPU time: what a single-threaded part costs on a loaded machine, where its
// wall time also counts the time the thread waited for a core (the profiler's per-op CPU time,
// readBandwidth's cpuGbs).
#pragma once
#include <time.h>

namespace emollm {

// Seconds of CPU the calling thread has run (CLOCK_THREAD_CPUTIME_ID); -1 where the platform has
// no per-thread clock or the call fails (a difference of two such readings is then 0).
inline double thread_cpu_seconds() {
#if defined(CLOCK_THREAD_CPUTIME_ID)
  timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
#endif
  return -1;
}

}  // namespace emollm
