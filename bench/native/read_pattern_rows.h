// What the native read-pattern tools share (q40_read_patterns, q8_read_patterns, f32_read_patterns,
// half_read_patterns, kq_streams_ab): their command line ([threads] [rounds] [N] [K] [copies],
// RP_COPIES, RP_CPU), the weight copies in 2 MiB pages that the rows rotate through (cold reads;
// random q4_0 / q8_0 ones repacked), the RP_ROWS filter, the same-bits check of the GEMV rows, the
// interleaved timing loop and the plain table. Each tool keeps its own rows (its variants); q40_read_patterns and
// kq_streams_ab keep their own tables (a mean column; per-round ratios).
#pragma once
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "base/thread_pool.h"
#include "cpu/kernels.h"  // quant_repack
#include "bench_clock.h"
#include "bench_read.h"

namespace bench {

// What a tool's main returns where it cannot run (its kernels and read loops are x86-64 code): a
// reason on stderr and a failing status, so that a script running it never reads the absence of a
// table as a measurement.
inline int x86_64_only(const char* tool) {
  std::fprintf(stderr, "%s: x86-64 only (its kernels and read loops are x86-64 code): nothing measured\n", tool);
  return 2;
}

// What the load-only rows fold their loads into, so that the compiler keeps the loads (a tool's
// main returns 1 only if it ends at 42).
inline std::atomic<uint64_t> g_sink{0};

// `copies` buffers of `bytes` in 2 MiB pages: fill writes the first, the others are copies of it.
inline std::vector<uint8_t*> huge_copies(size_t bytes, int copies, const std::function<void(uint8_t*)>& fill) {
  std::vector<uint8_t*> cp(static_cast<size_t>(copies));
  cp[0] = huge_alloc(bytes);
  fill(cp[0]);
  for (size_t c = 1; c < cp.size(); ++c) cp[c] = huge_alloc(bytes), std::memcpy(cp[c], cp[0], bytes);
  return cp;
}

// A row: its name, what one call runs on a copy's bytes, its calls' times (seconds). A tool whose
// rows carry more (q40_read_patterns: which copies) declares its own with these three members.
struct PatternRow {
  std::string name;
  std::function<void(const uint8_t*)> run;
  std::vector<double> t;
};

// Random q4_0 / q8_0 weights (N x K, every byte from rng, then each block's fp16 scale set to
// 2^-7), repacked (quant_repack) into `copies` copies of `bytes` (quant_repack_bytes).
inline std::vector<uint8_t*> repacked_copies(emollm::DType t, int64_t N, int64_t K, size_t bytes, int copies,
                                             emollm::ThreadPool* pool, std::mt19937& rng) {
  std::vector<uint8_t> w(emollm::dtype_row_bytes(t, K) * size_t(N));
  for (auto& b : w) b = uint8_t(rng());
  const size_t block = emollm::dtype_block_bytes(t);  // 18 (q4_0) / 34 (q8_0) bytes, the scale first
  for (size_t i = 0; i < w.size(); i += block) w[i] = 0, w[i + 1] = 0x20;
  return huge_copies(bytes, copies, [&](uint8_t* first) { emollm::quant_repack(w.data(), t, N, K, first, pool); });
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


// A count from the environment (RP_COPIES, RP_M): its value, at least 1; `absent` where it is not set.
inline int env_count(const char* name, int absent) {
  const char* v = std::getenv(name);
  return v ? std::max(1, std::atoi(v)) : absent;
}

// The command line the tools share, from argv[first] on (kq_streams_ab's dtype comes before it):
// [threads 1] [rounds R] [N 5632] [K 2048] [copies], and the clock RP_CPU names (RP_CPU=process
// only where the tool allows it). The copies' count is argv's fifth word there (CopiesFrom::Argv),
// or RP_COPIES=n (CopiesFrom::Env: kq_streams_ab); at least 1 where given.
enum class CopiesFrom { Argv, Env };
struct PatternArgs {
  int threads = 1, rounds = 0;
  int64_t N = 5632, K = 2048;
  int copies_given = 0;  // 0: not given
  PatternClock clock = PatternClock::Wall;
  // How many copies of `bytes` the rows rotate through: as given, else enough to pass `cover_mib`
  // MiB (beyond L3), at least 3.
  int copies(size_t bytes, size_t cover_mib) const {
    return copies_given ? copies_given : int(std::max<size_t>(3, (cover_mib << 20) / bytes + 1));
  }
};
inline PatternArgs pattern_args(int argc, char** argv, int first, int default_rounds, bool process_clock,
                                CopiesFrom copies_from = CopiesFrom::Argv) {
  auto arg = [&](int i) -> const char* { return argc > first + i ? argv[first + i] : nullptr; };
  PatternArgs a;
  if (arg(0)) a.threads = std::atoi(arg(0));
  a.rounds = arg(1) ? std::atoi(arg(1)) : default_rounds;
  if (arg(2)) a.N = std::atoll(arg(2));
  if (arg(3)) a.K = std::atoll(arg(3));
  if (copies_from == CopiesFrom::Env)
    a.copies_given = env_count("RP_COPIES", 0);
  else if (arg(4))
    a.copies_given = std::max(1, std::atoi(arg(4)));
  a.clock = pattern_clock(a.threads, process_clock);
  return a;
}

// Whether every row `checked(row)` selects leaves ref's output in y, bit for bit, on the bytes at W
// (y filled with -1 before each row); else "<tool>: <row> differs from <ref_name>" on stderr.
template <class Row, class Checked>
bool same_bits(const char* tool, const char* ref_name, std::vector<Row>& rows, std::vector<float>& y, const uint8_t* W,
               const std::function<void(const uint8_t*)>& ref, Checked checked) {
  ref(W);
  const std::vector<float> want = y;
  for (auto& row : rows) {
    if (!checked(row)) continue;
    std::fill(y.begin(), y.end(), -1.f);
    row.run(W);
    if (std::memcmp(y.data(), want.data(), y.size() * sizeof(float)) != 0) {
      std::fprintf(stderr, "%s: %s differs from %s\n", tool, std::string(row.name).c_str(), ref_name);
      return false;
    }
  }
  return true;
}

// a.rounds rounds of every row once, in an order rng shuffles each round (rows interleaved call by
// call), the c-th call on copy(row, c), timed by a.clock into row.t; after_round() after each round.
template <class Row, class Copy, class AfterRound>
void time_rows(std::vector<Row>& rows, const PatternArgs& a, std::mt19937& rng, Copy copy, AfterRound after_round) {
  std::vector<size_t> order(rows.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  int c = 0;
  for (int r = 0; r < a.rounds; ++r) {
    std::shuffle(order.begin(), order.end(), rng);
    for (size_t i : order) {
      const uint8_t* W = copy(rows[i], c++);
      rows[i].t.push_back(timed_call(a.clock, a.threads, [&] { rows[i].run(W); }));
    }
    after_round();
  }
}
// The same, every row on the copies cp in turn.
template <class Row>
void time_rows(std::vector<Row>& rows, const PatternArgs& a, std::mt19937& rng, const std::vector<uint8_t*>& cp) {
  time_rows(rows, a, rng, [&](const Row&, int c) { return cp[size_t(c) % cp.size()]; }, [] {});
}

// The plain table (f32_read_patterns, q8_read_patterns): per row best / median us and GB/s of
// `bytes`, and the first row's time over the row's (ratio > 1: faster than the first row); names
// in a column `name_width` wide.
template <class Row>
void print_ratio_table(const std::vector<Row>& rows, size_t bytes, int name_width) {
  std::printf("%-*s %9s %9s %9s %9s %8s %8s\n", name_width, "row", "best us", "med us", "best GB/s", "med GB/s", "r(best)", "r(med)");
  double gb = 0, gm = 0;
  for (auto& row : rows) {
    const double b = best(row.t), m = median(row.t);
    if (gb == 0) gb = b, gm = m;
    std::printf("%-*s %9.1f %9.1f %9.1f %9.1f %8.3f %8.3f\n", name_width, std::string(row.name).c_str(), b * 1e6, m * 1e6,
                double(bytes) / b * 1e-9, double(bytes) / m * 1e-9, gb / b, gm / m);
  }
}

}  // namespace bench
