// Kernel microbenchmark: emollm CPU kernels at LLaMA-2-7B and CLIP ViT-L/14 layer shapes, beside
// machine probes (read bandwidth, FMA / bf16 / AMX peaks) and library anchors (OpenBLAS, oneDNN)
// measured in the same run, so every figure has a ceiling and a reference next to it.
//
//   build/bench/bench_kernels [--quick] [--filter a,b] [--threads N] [--budget S] [--isa LEVEL]
//                             [--json] [--json-out FILE] [--list] [--no-anchors]
//
// See bench/README.md. `npm run bench:kernels` builds and runs this through bench/kernels.mjs.
// No -march flags: like the kernels, the probes use function target attributes and run-time
// dispatch, so one binary runs everywhere.
#include <array>
#include <dlfcn.h>
#include <immintrin.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "base/arena.h"
#include "base/cpu_features.h"
#include "base/dtype.h"
#include "base/env_switch.h"
#include "base/error.h"
#include "base/thread_pool.h"
#include "cpu/attention_internal.h"  // set_decode_split: the A/B rows of decode attention
#include "cpu/gemm_internal.h"  // set_q8_gemv_legacy: the A/B rows of the q8_0 / q4_0 GEMV
#include "cpu/kernels.h"
#include "bench_fma.h"
#include "cpu/row_ops.h"  // convert: the f16 / bf16 caches of the half-KV decode attention rows

#ifdef EMOLLM_HAVE_OPENBLAS
#include <cblas.h>
#ifndef OPENBLAS_THREAD  // a cblas.h from another provider: declare OpenBLAS's extensions
extern "C" {
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
char* openblas_get_config(void);
char* openblas_get_corename(void);
}
#endif
#endif

#ifdef EMOLLM_HAVE_DNNL
#include <dnnl.hpp>
#endif

using namespace emollm;

namespace {

// ============================================================================ options
struct Options {
  int threads = 0;              // 0: physical cores
  bool quick = false;
  std::vector<std::string> filters;
  double budget = 0.0;          // seconds per measurement; 0: default for the mode
  bool json = false;            // JSON on stdout, table on stderr
  std::string json_out;         // also write JSON here
  bool list = false;
  bool anchors = true;
  bool cpu_clock = false;       // time calls by the process's CPU time (1 thread only)
  std::string isa;
};

[[noreturn]] void usage(int rc) {
  std::fprintf(rc ? stderr : stdout,
               "usage: bench_kernels [options]\n"
               "  --quick           ~30 s subset (fewer shapes, shorter time budget)\n"
               "  --filter A[,B]    run only cases whose name contains A or B (probes always run); the\n"
               "                    order/... cases (anchor / emollm order effects) run only when named\n"
               "  --threads N       threads for emollm and the anchors (default: physical cores)\n"
               "  --budget S        seconds per measurement (default 0.5, quick 0.12)\n"
               "  --isa LEVEL       cap emollm kernels: scalar, avx2, avx512, amx\n"
               "  --no-anchors      skip OpenBLAS / oneDNN\n"
               "  --cpu-clock       time each call by the process's CPU time instead of wall time (needs\n"
               "                    --threads 1): on a loaded machine the other processes then cost only\n"
               "                    their cache and memory traffic, not the time slices they take\n"
               "  --json            print JSON on stdout (the table goes to stderr)\n"
               "  --json-out FILE   also write the JSON to FILE\n"
               "  --list            list case names and exit\n");
  std::exit(rc);
}

Options parse_args(int argc, char** argv) {
  Options o;
  auto value = [&](int& i, const char* flag) -> std::string {
    std::string a = argv[i];
    size_t eq = a.find('=');
    if (eq != std::string::npos) return a.substr(eq + 1);
    if (i + 1 >= argc) { std::fprintf(stderr, "%s needs a value\n", flag); usage(2); }
    return argv[++i];
  };
  auto is = [](const std::string& a, const char* f) {
    return a == f || a.rfind(std::string(f) + "=", 0) == 0;
  };
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") usage(0);
    else if (a == "--quick") o.quick = true;
    else if (a == "--json") o.json = true;
    else if (a == "--list") o.list = true;
    else if (a == "--no-anchors") o.anchors = false;
    else if (a == "--cpu-clock") o.cpu_clock = true;
    else if (is(a, "--threads")) o.threads = std::atoi(value(i, "--threads").c_str());
    else if (is(a, "--budget")) o.budget = std::atof(value(i, "--budget").c_str());
    else if (is(a, "--isa")) o.isa = value(i, "--isa");
    else if (is(a, "--json-out")) o.json_out = value(i, "--json-out");
    else if (is(a, "--filter")) {
      std::string v = value(i, "--filter");
      size_t p = 0;
      while (p <= v.size()) {
        size_t c = v.find(',', p);
        if (c == std::string::npos) c = v.size();
        if (c > p) o.filters.push_back(v.substr(p, c - p));
        p = c + 1;
      }
    } else {
      std::fprintf(stderr, "unknown argument: %s\n", a.c_str());
      usage(2);
    }
  }
  if (o.budget <= 0) o.budget = o.quick ? 0.12 : 0.5;
  if (o.cpu_clock && o.threads != 1) {
    // Several threads' CPU time adds up (and spinning workers count): only one thread's is a time.
    std::fprintf(stderr, "--cpu-clock needs --threads 1\n");
    usage(2);
  }
  return o;
}

Options g_opt;
FILE* g_out = stdout;  // the human-readable table (stderr with --json)
// The table is printed at the end, once the probes have been measured again (see main), so that
// every percentage in it uses the same ceilings.
std::vector<std::function<void()>> g_deferred;
void later(std::function<void()> f) { g_deferred.push_back(std::move(f)); }

bool selected(const std::string& name) {
  if (g_opt.filters.empty()) return true;
  for (auto& f : g_opt.filters)
    if (name.find(f) != std::string::npos) return true;
  return false;
}

// ============================================================================ timing
using Clock = std::chrono::steady_clock;
double now_s() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

// What measure / measure_interleaved time calls by: wall time, or with --cpu-clock the process's
// CPU time (at 1 thread emollm's pool and oneDNN's OpenMP team run on the calling thread).
double call_clock_s() {
  if (!g_opt.cpu_clock) return now_s();
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

struct Stats {
  double best = 0, median = 0;
  int reps = 0;
};

// Warmup, then repetitions until the time budget is spent (at least min_reps, unless a single
// call is so slow that min_reps would take more than 4x the budget). fn(i) gets the call index
// so decode benchmarks can rotate weight copies.
Stats measure(const std::function<void(int)>& fn, double budget = -1, int min_reps = -1,
              int max_reps = 200) {
  if (budget < 0) budget = g_opt.budget;
  if (min_reps < 0) min_reps = g_opt.quick ? 2 : 3;
  int call = 0;
  double t0 = call_clock_s();
  fn(call++);  // warmup: page faults, thread wake-up, packing scratch
  double first = call_clock_s() - t0;
  std::vector<double> ts;
  if (first > 4 * budget) {
    ts.push_back(first);  // far over budget (a scalar fallback?): one call is all we take
  } else {
    while (call_clock_s() - t0 < std::min(0.05, budget * 0.25) && call < 20) fn(call++);
    double spent = 0;
    while ((int)ts.size() < max_reps) {
      double a = call_clock_s();
      fn(call++);
      double d = call_clock_s() - a;
      ts.push_back(d);
      spent += d;
      if ((int)ts.size() >= min_reps && spent >= budget) break;
      if (spent >= 4 * budget) break;  // slow calls: fewer than min_reps
    }
  }
  std::sort(ts.begin(), ts.end());
  Stats s;
  s.best = ts.front();
  s.median = ts.size() % 2 ? ts[ts.size() / 2] : 0.5 * (ts[ts.size() / 2 - 1] + ts[ts.size() / 2]);
  s.reps = (int)ts.size();
  return s;
}

// A/B(/C): the functions take turns call by call (after one warmup each) until n x the budget is
// spent, so a shared machine's busy and quiet moments fall on all of them; each one's best and
// median. fn(i) gets a call index that differs between every call (weight rotation).
// gap_s > 0: an untimed sleep before every call, so that no thread pool's spinning workers (ours
// or oneDNN's OpenMP team, ~0.3 ms / a few ms after a call) hold a core the next call needs: on a
// 2-core machine they otherwise slow whichever library runs next.
std::vector<Stats> measure_interleaved(const std::vector<std::function<void(int)>>& fns, double gap_s = 0) {
  const double budget = g_opt.budget * double(fns.size());
  int call = 0;
  for (const auto& f : fns) f(call++);
  std::vector<std::vector<double>> ts(fns.size());
  double spent = 0;
  while (ts[0].size() < 300) {
    for (size_t k = 0; k < fns.size(); ++k) {
      if (gap_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(gap_s));
      double t0 = call_clock_s();
      fns[k](call++);
      double d = call_clock_s() - t0;
      ts[k].push_back(d);
      spent += d;
    }
    if (ts[0].size() >= 5 && spent >= budget) break;
  }
  std::vector<Stats> out;
  for (auto& v : ts) {
    std::sort(v.begin(), v.end());
    Stats s;
    s.best = v.front();
    s.median = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
    s.reps = (int)v.size();
    out.push_back(s);
  }
  return out;
}

// ============================================================================ data
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s; }
  float uniform() { return float(int32_t(next() >> 32)) * (1.0f / 2147483648.0f); }  // [-1, 1)
};

template <typename T>
using Buf = AlignedPtr<T>;

void fill_random(float* p, int64_t n, uint64_t seed, ThreadPool* pool) {
  pool->parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
    Rng r(seed ^ uint64_t(b) * 0x2545F4914F6CDD1Dull);
    for (int64_t i = b; i < e; i++) p[i] = r.uniform();
  });
}

// L3 of one cache instance (what one core's misses fall through to). sysfs first: in some VMs
// sysconf's cpuid-based answer is the whole host's L3 (320 MiB on a 32 MiB-per-CCD EPYC).
// Used to size the decode weight rotation (3x L3) and the bandwidth buffer (8x L3).
size_t l3_bytes() {
  static size_t cached = [] {
    size_t v = 0;
    if (FILE* fp = std::fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r")) {
      unsigned long n = 0;
      char unit = 0;
      if (std::fscanf(fp, "%lu%c", &n, &unit) >= 1)
        v = size_t(n) * (unit == 'K' ? 1024u : unit == 'M' ? 1024u * 1024u : 1u);
      std::fclose(fp);
    }
    if (v == 0) {
      long sc = sysconf(_SC_LEVEL3_CACHE_SIZE);
      v = sc > 0 && size_t(sc) <= (size_t(256) << 20) ? size_t(sc) : 0;
    }
    if (v == 0) v = size_t(32) << 20;
    v = std::min(v, size_t(512) << 20);
    return v;
  }();
  return cached;
}

// ============================================================================ results
struct Result {
  std::string name;     // filter key, e.g. gemm/llama.qkvo/M512/bf16/onednn
  std::string section;  // gemm, attention, eltwise
  std::string label;    // table "case" column
  std::string dtype, impl;
  int64_t M = 0, N = 0, K = 0;
  Stats st;
  double flops = 0;     // per call
  double bytes = 0;     // per call: weight bytes (gemv), KV bytes (decode attention), traffic (eltwise)
  bool single_thread = false;
  bool bf16_math = false;
  bool int8_math = false;  // q8_0 / q4_0 on the VNNI int8 GEMMs: %dot against the vpdpbusd probe
  std::string ratio_vs;  // anchor impl this row is compared with
  double ratio = NAN;    // anchor best time / this best time (>1: emollm faster)
  std::string check;     // "ok", "BAD", "" (not checked)
  double err = NAN;
  std::string error;     // exception text
  std::string note;
};
std::vector<Result> g_results;
const char* const kAnchorHint = "anchor unavailable: install with bench/setup-anchors.sh";

struct Probes {
  double bw = 0, bw_1t = 0;       // GB/s
  std::string bw_variant;         // the read loop that reached bw
  std::vector<double> bw_by_threads;  // [t-1]: best GB/s with t threads reading (others idle)
  double anchor_gemv_bw = 0;      // best anchor GEMV GB/s of the run (oneDNN / OpenBLAS), 0: none
  double same_size_bw = 0;        // best probe-same-size row GB/s (the probe's loop on GEMV copies), 0: none
  double fma = 0, fma_1t = 0;     // GFLOP/s
  double bf16 = 0, amx = 0;       // GFLOP/s (0: not available)
  double int8 = 0;                // vpdpbusd, 2 ops per int8 product (0: no AVX512-VNNI)
  double int8_block = 0;          // the same with the q8_0 block scale work (int8_block_avx512)
  std::string bw_isa, fma_isa;
} g_probe, g_probe_start, g_probe_end;  // g_probe: the higher of start and end

double gflops(const Result& r) { return r.flops > 0 ? r.flops / r.st.best * 1e-9 : NAN; }
double gbs(const Result& r) { return r.bytes > 0 ? r.bytes / r.st.best * 1e-9 : NAN; }
double pct_fma(const Result& r) {
  double peak = r.single_thread ? g_probe.fma_1t : g_probe.fma;
  return r.flops > 0 && peak > 0 ? 100 * gflops(r) / peak : NAN;
}
double pct_bf16(const Result& r) {
  if (!r.bf16_math || r.flops <= 0) return NAN;
  double peak = g_probe.amx > 0 ? g_probe.amx : g_probe.bf16;
  return peak > 0 ? 100 * gflops(r) / peak : NAN;
}
double pct_int8(const Result& r) {
  return r.int8_math && r.flops > 0 && g_probe.int8 > 0 ? 100 * gflops(r) / g_probe.int8 : NAN;
}
// The %dot column: bf16 rows against the bf16 (or AMX) dot peak, int8 rows against the int8 one.
double pct_dot(const Result& r) { return r.int8_math ? pct_int8(r) : pct_bf16(r); }
// The bandwidth ceiling of the multi-threaded rows: max(probe, the probe's loop over a GEMV's own
// bytes (probe-same-size rows), best anchor GEMV of the run), so a kernel is held to what the best
// streaming code measured on this machine reached.
double bw_ceiling() { return std::max({g_probe.bw, g_probe.same_size_bw, g_probe.anchor_gemv_bw}); }
double pct_bw(const Result& r) {
  double peak = r.single_thread ? g_probe.bw_1t : bw_ceiling();
  return r.bytes > 0 && peak > 0 ? 100 * gbs(r) / peak : NAN;
}

// ============================================================================ table
std::string fmt(const char* f, double v) {
  if (!std::isfinite(v)) return "-";
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

void table_header(const char* title_c) {
  later([title = std::string(title_c)] {
  std::fprintf(g_out, "\n== %s\n", title.c_str());
  std::fprintf(g_out, "%-26s %-5s %-9s %9s %9s %8s %6s %6s %7s %6s  %-18s %s\n", "case", "dtype", "impl",
               "best ms", "med ms", "GFLOP/s", "%fma", "%dot", "GB/s", "%bw", "ratio(anchor/us)", "check");
  });
}

void print_row(const Result& r) {
  if (!r.error.empty()) {
    std::fprintf(g_out, "%-26s %-5s %-9s  %s%s\n", r.label.c_str(), r.dtype.c_str(), r.impl.c_str(),
                 r.error == kAnchorHint ? "" : "error: ", r.error.c_str());
    return;
  }
  std::string ratio = "";
  if (!r.ratio_vs.empty()) ratio = std::isfinite(r.ratio) ? fmt("%.2fx ", r.ratio) + r.ratio_vs : "n/a";
  std::string check = r.check;
  if (r.check == "BAD") check = "BAD err=" + fmt("%.2g", r.err);
  if (!r.note.empty()) check += (check.empty() ? "" : " ") + r.note;
  std::fprintf(g_out, "%-26s %-5s %-9s %9s %9s %8s %6s %6s %7s %6s  %-18s %s\n", r.label.c_str(),
               r.dtype.c_str(), r.impl.c_str(), fmt("%.3f", r.st.best * 1e3).c_str(),
               fmt("%.3f", r.st.median * 1e3).c_str(), fmt("%.1f", gflops(r)).c_str(),
               fmt("%.1f", pct_fma(r)).c_str(), fmt("%.1f", pct_dot(r)).c_str(), fmt("%.1f", gbs(r)).c_str(),
               fmt("%.1f", pct_bw(r)).c_str(), ratio.c_str(), check.c_str());
}
void table_row(const Result& r) {
  size_t i = size_t(&r - g_results.data());
  later([i] { print_row(g_results[i]); });
}

void progress(const std::string& name) {
  if (isatty(2)) {
    std::fprintf(stderr, "\r\033[K  running %s", name.c_str());
    std::fflush(stderr);
  }
}
void progress_done() {
  if (isatty(2)) { std::fprintf(stderr, "\r\033[K"); std::fflush(stderr); }
}

// Runs one case (when selected) and stores its result. body fills st (and may fill check/note).
Result* run_case(Result r, const std::function<void(Result&)>& body) {
  if (!selected(r.name)) return nullptr;
  if (g_opt.list) { std::printf("%s\n", r.name.c_str()); return nullptr; }
  progress(r.name);
  try {
    body(r);
  } catch (const std::exception& e) {
    r.error = e.what();
  }
  progress_done();
  g_results.push_back(r);
  return &g_results.back();
}

// A row measured beside `base` (interleaved with it, the same case): base's fields under the name
// base.name + "/" + suffix, with `impl`, its stats and note, and its ratio column against
// `ratio_vs` ("": none).
Result derived_row(const Result& base, const std::string& suffix, const std::string& impl, const Stats& st,
                   const std::string& ratio_vs, double ratio, const std::string& note) {
  Result d = base;
  d.name = base.name + "/" + suffix;
  d.impl = impl;
  d.st = st;
  d.ratio_vs = ratio_vs;
  d.ratio = ratio_vs.empty() ? NAN : ratio;
  d.note = note;
  return d;
}

// Appends `r` to the results and prints its table row.
void push_row(const Result& r) {
  g_results.push_back(r);
  table_row(g_results.back());
}

// ============================================================================ probes
// gemv_repacked's decode schedule (gemm_internal.h): contiguous ranges per thread (on, the
// default) or guided chunks, for the A/B rows.
void set_gemv_schedule(bool on) {
  gemm_detail::set_gemv_ranges(on);
}

// 2 MiB-aligned memory asked to be transparent huge pages, as the CPU backend's packed copies of a
// model's matrices (Copies' huge: gemm_huge_pages' rows; the read-bandwidth probe's second buffer).
Buf<uint8_t> alloc_huge(size_t bytes) {
  constexpr size_t kHuge = size_t(2) << 20;
  Buf<uint8_t> b(static_cast<uint8_t*>(aligned_alloc_bytes(bytes, kHuge)));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  (void)madvise(b.get(), bytes / kHuge * kHuge, MADV_HUGEPAGE);
#endif
  return b;
}

// Horizontal sum through memory (_mm512_reduce_add_ps trips a GCC 12 -Wuninitialized false positive).
__attribute__((target("avx512f"))) float hsum512(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  float s = 0;
  for (float x : t) s += x;
  return s;
}

// Read bandwidth: every thread streams its slice of a buffer much larger than L3.
__attribute__((target("avx512f"))) float read_avx512(const float* p, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  int64_t i = 0;
  for (; i + 128 <= n; i += 128) {
    a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
    a4 = _mm512_add_ps(a4, _mm512_load_ps(p + i + 64));
    a5 = _mm512_add_ps(a5, _mm512_load_ps(p + i + 80));
    a6 = _mm512_add_ps(a6, _mm512_load_ps(p + i + 96));
    a7 = _mm512_add_ps(a7, _mm512_load_ps(p + i + 112));
  }
  a0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                     _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
  float s = hsum512(a0);
  for (; i < n; i++) s += p[i];
  return s;
}
__attribute__((target("avx2"))) float read_avx2(const float* p, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
    a4 = _mm256_add_ps(a4, _mm256_load_ps(p + i + 32));
    a5 = _mm256_add_ps(a5, _mm256_load_ps(p + i + 40));
    a6 = _mm256_add_ps(a6, _mm256_load_ps(p + i + 48));
    a7 = _mm256_add_ps(a7, _mm256_load_ps(p + i + 56));
  }
  a0 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                     _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  float t[8];
  _mm256_storeu_ps(t, a0);
  float s = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
  for (; i < n; i++) s += p[i];
  return s;
}
// Read bandwidth, the way the best streaming kernels read: S independent streams per thread
// (the thread's slice cut into S parts, walked side by side: a GEMV walks several weight rows),
// 128 bytes per stream per step, with an optional software prefetch PF bytes ahead of each
// stream. The probe keeps the best variant (see read_variants), so it is a ceiling the kernels
// can be held to rather than one loop's rate.
std::atomic<uint64_t> g_sink_probe{0};  // keeps read_probe_call's sums alive
template <int S, int PF>
__attribute__((target("avx512f"))) float read_streams_avx512(const float* p, int64_t n) {
  const int64_t per = n / S / 32 * 32;  // floats per stream, whole 128-byte steps
  const float* s[S];
  for (int j = 0; j < S; j++) s[j] = p + j * per;
  __m512 a[S][2];
  for (int j = 0; j < S; j++) a[j][0] = a[j][1] = _mm512_setzero_ps();
  for (int64_t i = 0; i < per; i += 32) {
#pragma GCC unroll 8
    for (int j = 0; j < S; j++) {
      if (PF > 0) _mm_prefetch(reinterpret_cast<const char*>(s[j] + i) + PF, _MM_HINT_T0);
      a[j][0] = _mm512_add_ps(a[j][0], _mm512_load_ps(s[j] + i));
      a[j][1] = _mm512_add_ps(a[j][1], _mm512_load_ps(s[j] + i + 16));
    }
  }
  __m512 t = _mm512_setzero_ps();
  for (int j = 0; j < S; j++) t = _mm512_add_ps(t, _mm512_add_ps(a[j][0], a[j][1]));
  float r = hsum512(t);
  for (int64_t i = S * per; i < n; i++) r += p[i];
  return r;
}

// One call of the probe's best loop (4 streams + 1 KiB prefetch) over `bytes` at p, each thread
// of the pool a slice, as a GEMV call of that size: the M1 rows' same-size anchor.
void read_probe_call(ThreadPool& pool, const void* p, size_t bytes) {
  const int64_t n = int64_t(bytes / sizeof(float)) / 1024 * 1024;
  const float* f = static_cast<const float*>(p);
  std::atomic<uint32_t> acc{0};
  pool.run([&](int ith, int nth) {
    int64_t b, e;
    split_range(n, ith, nth, 1024, &b, &e);
    uint32_t u;
    const float v = read_streams_avx512<4, 1024>(f + b, e - b);
    std::memcpy(&u, &v, 4);
    acc.fetch_add(u, std::memory_order_relaxed);
  });
  g_sink_probe.fetch_add(acc.load(), std::memory_order_relaxed);
}

struct ReadVariant {
  const char* name;
  float (*fn)(const float*, int64_t);
};

float read_scalar(const float* p, int64_t n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) { s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3]; }
  for (; i < n; i++) s0 += p[i];
  return s0 + s1 + s2 + s3;
}

std::atomic<uint64_t> g_sink{0};
void sink(float v) { uint32_t u; std::memcpy(&u, &v, 4); g_sink.fetch_add(u, std::memory_order_relaxed); }

// FMA peak: bench_fma.h (16 zmm / 12 ymm independent accumulator chains of register-only FMAs per thread).
using bench::fma_avx512;
using bench::kFmaAvx512FlopsPerIter;
using bench::fma_avx2;
using bench::kFmaAvx2FlopsPerIter;

#define EMOLLM_REP16(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)

// bf16 dot products: vdpbf16ps does 16 lanes x 2 products x (mul + add) = 64 flops.
__attribute__((target("avx512f,avx512bf16"))) float bf16_avx512(int64_t iters) {
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
#define DECL(i) __m512 c##i = _mm512_set1_ps(float(i));
  EMOLLM_REP16(DECL)
#undef DECL
  for (int64_t it = 0; it < iters; it++) {
#define STEP(i) c##i = _mm512_dpbf16_ps(c##i, a, b);
    EMOLLM_REP16(STEP)
#undef STEP
    __asm__ volatile("" ::: "memory");
  }
  __m512 s = _mm512_setzero_ps();
#define SUM(i) s = _mm512_add_ps(s, c##i);
  EMOLLM_REP16(SUM)
#undef SUM
  return hsum512(s);
}
constexpr double kBf16FlopsPerIter = 16 * 64;

// int8 dot products: vpdpbusd does 16 lanes x 4 (unsigned x signed byte) products, each a
// multiply and an add: 128 integer ops, counted as "GFLOP/s" beside the float probes so that a
// q8_0 / q4_0 GEMM's 2*M*N*K over its time compares with it directly (the kernels' vpdpbusd carry
// all of their multiply-adds; the per-block scale work, cvt + mul + fma per 32 products of an
// output, is extra work this ceiling does not include).
__attribute__((target("avx512f,avx512bw,avx512vnni"))) float int8_avx512(int64_t iters) {
  const __m512i a = _mm512_set1_epi32(0x01020304), b = _mm512_set1_epi32(0x01FF01FF);
#define DECL(i) __m512i c##i = _mm512_set1_epi32(i);
  EMOLLM_REP16(DECL)
#undef DECL
  for (int64_t it = 0; it < iters; it++) {
#define STEP(i) c##i = _mm512_dpbusd_epi32(c##i, a, b);
    EMOLLM_REP16(STEP)
#undef STEP
    __asm__ volatile("" ::: "memory");
  }
  __m512i s = _mm512_setzero_si512();
#define SUM(i) s = _mm512_add_epi32(s, c##i);
  EMOLLM_REP16(SUM)
#undef SUM
  return float(_mm512_reduce_add_epi32(s));
}
constexpr double kInt8FlopsPerIter = 16 * 128;

// The q8_0 / q4_0 GEMMs' inner loop without its loads: a 4 x 2 tile of int32 accumulators (as
// gemm_repacked's X-panel kernel; 8 independent chains) restarted from a correction each 32-element
// block, 8 vpdpbusd each, then per accumulator the block's scale work: int32 -> f32, d_w * d_x,
// FMA into an f32 accumulator. Counted as the vpdpbusd work alone (64 x 128 ops an iteration), so
// it reads as the int8 peak those kernels can reach with their numerics (register-only: no weight
// or activation loads, no X rounding).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12: _mm512_cvtepi32_ps's undefined pass-through
__attribute__((target("avx512f,avx512bw,avx512vnni"))) float int8_block_avx512(int64_t iters) {
  __m512i w0 = _mm512_set1_epi32(0x01020304), w1 = _mm512_set1_epi32(0x01050304);
  __m512i x0 = _mm512_set1_epi32(0x01020304), x1 = _mm512_set1_epi32(0x02020202), x2 = _mm512_set1_epi32(0x03030303),
          x3 = _mm512_set1_epi32(0x01010101), corr = _mm512_set1_epi32(-5);
  __m512 dw0 = _mm512_set1_ps(1e-3f), dw1 = _mm512_set1_ps(2e-3f), d0 = _mm512_set1_ps(0.5f),
         d1 = _mm512_set1_ps(0.25f), d2 = _mm512_set1_ps(0.125f), d3 = _mm512_set1_ps(1.0f);
#define REP8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define DECL(i) __m512 f##i = _mm512_setzero_ps();
  REP8(DECL)
#undef DECL
  for (int64_t it = 0; it < iters; it++) {
    __m512i a0 = corr, a1 = corr, a2 = corr, a3 = corr, a4 = corr, a5 = corr, a6 = corr, a7 = corr;
#pragma GCC unroll 8
    for (int q = 0; q < 8; q++) {
      a0 = _mm512_dpbusd_epi32(a0, w0, x0); a1 = _mm512_dpbusd_epi32(a1, w1, x0);
      a2 = _mm512_dpbusd_epi32(a2, w0, x1); a3 = _mm512_dpbusd_epi32(a3, w1, x1);
      a4 = _mm512_dpbusd_epi32(a4, w0, x2); a5 = _mm512_dpbusd_epi32(a5, w1, x2);
      a6 = _mm512_dpbusd_epi32(a6, w0, x3); a7 = _mm512_dpbusd_epi32(a7, w1, x3);
    }
#define SCALE(i, A, DW, D) f##i = _mm512_fmadd_ps(_mm512_cvtepi32_ps(A), _mm512_mul_ps(DW, D), f##i);
    SCALE(0, a0, dw0, d0) SCALE(1, a1, dw1, d0) SCALE(2, a2, dw0, d1) SCALE(3, a3, dw1, d1)
    SCALE(4, a4, dw0, d2) SCALE(5, a5, dw1, d2) SCALE(6, a6, dw0, d3) SCALE(7, a7, dw1, d3)
#undef SCALE
    // the operands are opaque to the compiler each iteration (as loaded values would be); the
    // scales too: with them constant GCC hoisted d_w * d_x out of the loop, so this probe counted
    // 8 FMA per 64 vpdpbusd instead of the kernels' 8 multiplies + 8 FMA (which share the two
    // vpdpbusd pipes on Zen 5: a register-only loop measured 16 vpdpbusd + 8 vmulps or vfmadd231ps
    // at 12 cycles against 8 alone), and read 94% of the int8 peak where the kernels' numerics
    // allow ~80%
    __asm__ volatile("" : "+v"(w0), "+v"(w1), "+v"(x0), "+v"(x1), "+v"(x2), "+v"(x3), "+v"(corr));
    __asm__ volatile("" : "+v"(dw0), "+v"(dw1), "+v"(d0), "+v"(d1), "+v"(d2), "+v"(d3));
  }
  __m512 s = _mm512_setzero_ps();
#define SUM(i) s = _mm512_add_ps(s, f##i);
  REP8(SUM)
#undef SUM
#undef REP8
  return hsum512(s);
}
#pragma GCC diagnostic pop
constexpr double kInt8BlockFlopsPerIter = 64 * 128;

// AMX: 4 accumulator tiles fed by 2 A and 2 B tiles (all 16 rows x 64 bytes); each
// tdpbf16ps is 16x16 outputs x 32 products x 2 = 16384 flops. Register (tile) only.
struct alignas(64) AmxTileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
__attribute__((target("amx-tile,amx-bf16"))) float amx_bf16(int64_t iters) {
  AmxTileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int t = 0; t < 8; t++) { cfg.colsb[t] = 64; cfg.rows[t] = 16; }
  _tile_loadconfig(&cfg);
  _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
  _tile_zero(4); _tile_zero(5); _tile_zero(6); _tile_zero(7);
  for (int64_t it = 0; it < iters; it++) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float out[16 * 16];
  _tile_stored(0, out, 64);
  _tile_release();
  return out[0];
}
constexpr double kAmxFlopsPerIter = 4 * 16384;

// Runs a register-only kernel on all pool threads (or just the caller) and returns GFLOP/s,
// best of reps; iterations calibrated so one run takes ~target seconds.
double peak_probe(ThreadPool* pool, float (*kernel)(int64_t), double flops_per_iter, int reps, double target) {
  int64_t iters = 1 << 14;
  for (;;) {  // calibrate on one thread
    double t0 = now_s();
    sink(kernel(iters));
    double d = now_s() - t0;
    if (d > 0.01 || iters > (int64_t(1) << 40)) { iters = std::max<int64_t>(1024, int64_t(iters * target / d)); break; }
    iters *= 4;
  }
  int nth = pool ? pool->size() : 1;
  double best = 0;
  for (int r = 0; r < reps; r++) {
    double t0 = now_s();
    if (pool) pool->run([&](int, int) { sink(kernel(iters)); });
    else sink(kernel(iters));
    double d = now_s() - t0;
    best = std::max(best, double(iters) * flops_per_iter * nth / d * 1e-9);
  }
  return best;
}

size_t rotate_bytes();  // the decode rows' rotation, all threads (below, with decode_copies)

Probes run_probes(ThreadPool& pool) {
  Probes g_probe;  // shadows the global: this run's values
  const CpuFeatures& f = cpu_features();
  // Many short repetitions, best kept: on a shared machine a short window is more likely to catch
  // the cores free, as the (short) kernel calls measured against these ceilings do.
  int reps = g_opt.quick ? 12 : 24;
  // Read bandwidth: each repetition reads the next window (a quarter of max(256 MiB, 8x L3): >= 2x
  // L3) of the buffer, so no repetition finds the previous one's data in cache. The buffer holds
  // at least 4 windows and the decode rows' rotation, so a window comes back no sooner than a GEMV
  // copy does (the L3 keeps part of a cyclic walk a few times its size: see decode_copies).
  {
    const size_t window_bytes = std::max<size_t>(size_t(256) << 20, 8 * l3_bytes()) / 4;
    const int nwin = int(std::max<size_t>(4, (rotate_bytes() + window_bytes - 1) / window_bytes));
    size_t bytes = window_bytes * size_t(nwin);
    int64_t n = int64_t(bytes / sizeof(float));
    // Two buffers: 4 KiB pages (a mapped weight file) and 2 MiB transparent huge pages (the CPU
    // backend's packed / repacked weights, which decode streams): the hardware prefetchers stop at
    // page edges and a 4 KiB page costs a TLB miss, so the huge-page buffer can read faster, and
    // the ceiling is the better of the two.
    Buf<float> buf_small = make_aligned<float>(size_t(n));
    Buf<uint8_t> buf_huge = alloc_huge(size_t(n) * sizeof(float));
    const float* bufs[2] = {buf_small.get(), reinterpret_cast<const float*>(buf_huge.get())};
    for (const float* cb : bufs) {
      float* b0 = const_cast<float*>(cb);
      pool.parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {  // fault the pages in, on their thread
        for (int64_t i = b; i < e; i++) b0[i] = 1.0f / float(1 + (i & 1023));
      });
    }
    std::vector<ReadVariant> variants;
    if (f.avx512f) {
      g_probe.bw_isa = "avx512";
      variants = {{"1 stream x8 adds", read_avx512},
                  {"2 streams", read_streams_avx512<2, 0>},
                  {"4 streams", read_streams_avx512<4, 0>},
                  {"4 streams + prefetch 1 KiB", read_streams_avx512<4, 1024>},
                  {"8 streams + prefetch 512 B", read_streams_avx512<8, 512>}};
    } else if (f.avx2) {
      g_probe.bw_isa = "avx2";
      variants = {{"1 stream x8 adds", read_avx2}};
    } else {
      g_probe.bw_isa = "scalar";
      variants = {{"1 stream x4 adds", read_scalar}};
    }
    const int64_t nw = n / nwin / 128 * 128;  // window, floats
    const int nth_pool = pool.size();
    g_probe.bw_by_threads.assign(size_t(nth_pool), 0.0);
    // every variant at every thread count; reps tries each (best kept; was reps / 2: the GEMV rows
    // they are held to keep the best of hundreds of calls), rotating windows
    const int tries = std::max(3, reps);
    int window = 0;
    for (int page = 0; page < 2; page++)
    for (const ReadVariant& v : variants) {
      for (int t = 1; t <= nth_pool; t++) {
        double best = 0;
        for (int r = 0; r < tries; r++) {
          const float* p = bufs[page] + (window++ % nwin) * nw;
          double t0 = now_s();
          if (t == 1) {
            sink(v.fn(p, nw));
          } else {
            pool.run([&](int ith, int) {
              if (ith >= t) return;
              int64_t b, e;
              split_range(nw, ith, t, 1024, &b, &e);
              sink(v.fn(p + b, e - b));
            });
          }
          double d = now_s() - t0;
          best = std::max(best, double(nw) * sizeof(float) / d * 1e-9);
        }
        double& slot = g_probe.bw_by_threads[size_t(t - 1)];
        slot = std::max(slot, best);
        if (t == nth_pool && best > g_probe.bw) {
          g_probe.bw = best;
          g_probe.bw_variant = std::string(v.name) + (page ? ", 2 MiB pages" : ", 4 KiB pages");
        }
        if (t == 1) g_probe.bw_1t = std::max(g_probe.bw_1t, best);
      }
    }
  }
  // FMA peak
  const double target = 0.005;  // seconds per repetition
  if (f.avx512f) {
    g_probe.fma_isa = "avx512";
    g_probe.fma = peak_probe(&pool, fma_avx512, kFmaAvx512FlopsPerIter, reps, target);
    g_probe.fma_1t = peak_probe(nullptr, fma_avx512, kFmaAvx512FlopsPerIter, reps, target);
  } else if (f.avx2 && f.fma) {
    g_probe.fma_isa = "avx2";
    g_probe.fma = peak_probe(&pool, fma_avx2, kFmaAvx2FlopsPerIter, reps, target);
    g_probe.fma_1t = peak_probe(nullptr, fma_avx2, kFmaAvx2FlopsPerIter, reps, target);
  }
  if (f.avx512f && f.avx512bf16)
    g_probe.bf16 = peak_probe(&pool, bf16_avx512, kBf16FlopsPerIter, reps, target);
  if (f.amx_usable && f.amx_bf16)
    g_probe.amx = peak_probe(&pool, amx_bf16, kAmxFlopsPerIter, reps, target);
  if (f.avx512f && f.avx512bw && f.avx512vnni) {
    g_probe.int8 = peak_probe(&pool, int8_avx512, kInt8FlopsPerIter, reps, target);
    g_probe.int8_block = peak_probe(&pool, int8_block_avx512, kInt8BlockFlopsPerIter, reps, target);
  }
  return g_probe;
}

// ============================================================================ anchors
bool g_have_openblas = false, g_have_dnnl = false;
std::string g_openblas_info, g_dnnl_info;

double process_cpu_s() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

// OpenBLAS's pthreads and libgomp's threads spin after a call; let them go to sleep before timing
// something else so they do not steal the cores: sleeps at least 120 ms and then until no thread
// of this process used more than 0.5 ms of CPU in a 10 ms window (at most 1 s). OpenBLAS's idle
// threads spin (sched_yield) for 2^28 TSC cycles (OPENBLAS_THREAD_TIMEOUT): 128 ms at this VM's
// 2.1 GHz TSC, past the fixed 120 ms this used to sleep (the "order" rows measure it).
[[maybe_unused]] void settle() {
  const double t0 = now_s();
  std::this_thread::sleep_for(std::chrono::milliseconds(110));
  for (;;) {
    const double c0 = process_cpu_s();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (process_cpu_s() - c0 < 0.5e-3 || now_s() - t0 > 1.0) break;
  }
}

void setup_anchors(int threads) {
#ifdef EMOLLM_HAVE_OPENBLAS
  if (g_opt.anchors) {
    openblas_set_num_threads(threads);
    g_have_openblas = true;
    const char* cfg = openblas_get_config();
    const char* core = openblas_get_corename();
    g_openblas_info = std::string(cfg ? cfg : "?") + ", core " + (core ? core : "?") + ", threads " +
                      std::to_string(openblas_get_num_threads());
  }
#endif
#ifdef EMOLLM_HAVE_DNNL
  if (g_opt.anchors) {
    // Debian's oneDNN uses OpenMP; libgomp comes in with libdnnl, so find it at run time
    // (kernels.mjs also sets OMP_NUM_THREADS).
    if (auto set = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"))) set(threads);
    auto get = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "omp_get_max_threads"));
    const dnnl_version_t* v = dnnl_version();
    char b[160];
    std::snprintf(b, sizeof b, "v%d.%d.%d, cpu runtime %s, threads %d", v->major, v->minor, v->patch,
                  v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : v->cpu_runtime == DNNL_RUNTIME_SEQ ? "seq" : "other",
                  get ? get() : -1);
    g_dnnl_info = b;
    g_have_dnnl = true;
  }
#endif
}

#ifdef EMOLLM_HAVE_DNNL
struct DnnlCtx {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
};
DnnlCtx& dnnl_ctx() { static DnnlCtx c; return c; }

// bf16 x bf16 -> f32 matmul, Y = X W^T with W given as bf16 [N, K] rows. Weights are reordered
// once into oneDNN's preferred (blocked) layout, as an engine would at load time; each call
// converts X f32 -> bf16 (a reorder, timed: emollm's API takes f32 activations too).
struct DnnlGemm {
  dnnl::matmul mm;
  dnnl::reorder xr;
  dnnl::memory x_f32, x_bf16, y;
  std::vector<dnnl::memory> w;
  std::string impl;
  void init(int64_t M, int64_t N, int64_t K, float* X, float* Y, const uint16_t* Wbf16, int copies) {
    using namespace dnnl;
    using dt = memory::data_type;
    using tag = memory::format_tag;
    DnnlCtx& c = dnnl_ctx();
    memory::desc xf({M, K}, dt::f32, tag::ab), xb({M, K}, dt::bf16, tag::ab);
    memory::desc wany({K, N}, dt::bf16, tag::any), wuser({K, N}, dt::bf16, tag::ba);
    memory::desc yd({M, N}, dt::f32, tag::ab);
#if DNNL_VERSION_MAJOR >= 3
    matmul::primitive_desc pd(c.eng, xb, wany, yd);
#else
    matmul::primitive_desc pd(matmul::desc(xb, wany, yd), c.eng);
#endif
    impl = pd.impl_info_str();
    mm = matmul(pd);
    x_f32 = memory(xf, c.eng, X);
    x_bf16 = memory(xb, c.eng);
    y = memory(yd, c.eng, Y);
    xr = reorder(x_f32, x_bf16);
    memory wu(wuser, c.eng, const_cast<uint16_t*>(Wbf16));
    for (int i = 0; i < copies; i++) {
      memory wp(pd.weights_desc(), c.eng);
      reorder(wu, wp).execute(c.strm, wu, wp);
      w.push_back(wp);
    }
    c.strm.wait();
  }
  void run(int i) {
    DnnlCtx& c = dnnl_ctx();
    xr.execute(c.strm, x_f32, x_bf16);
    mm.execute(c.strm, {{DNNL_ARG_SRC, x_bf16}, {DNNL_ARG_WEIGHTS, w[size_t(i) % w.size()]}, {DNNL_ARG_DST, y}});
    c.strm.wait();
  }
};
#endif

// ============================================================================ GEMM
struct GemmShape {
  const char* model;
  const char* layer;
  int64_t N, K;
  std::vector<int64_t> Ms;
  bool quick;
};

const DType kDtypes[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0};

// Spot check: |Y - ref| over 64 sampled outputs, divided by the RMS of the reference values,
// where ref uses the dequantized weights in double precision. x_bf16 rounds X to bf16 first.
double gemm_check(const float* X, int64_t M, int64_t K, const void* W, DType wt, int64_t N, const float* Y,
                  bool x_bf16) {
  Rng r(1234);
  std::vector<float> w(size_t(K), 0.0f);
  size_t rb = dtype_row_bytes(wt, K);
  double max_diff = 0, sum_sq = 0;
  const int S = 64;
  for (int s = 0; s < S; s++) {
    int64_t m = s == 0 ? M - 1 : int64_t(r.next() % uint64_t(M));
    int64_t n = s == 1 ? N - 1 : int64_t(r.next() % uint64_t(N));
    dequantize_row(wt, static_cast<const uint8_t*>(W) + size_t(n) * rb, w.data(), K);
    double acc = 0;
    for (int64_t k = 0; k < K; k++) {
      float x = X[m * K + k];
      if (x_bf16) x = bf16_to_f32(f32_to_bf16(x));
      acc += double(x) * double(w[size_t(k)]);
    }
    max_diff = std::max(max_diff, std::fabs(double(Y[m * N + n]) - acc));
    if (!std::isfinite(Y[m * N + n])) max_diff = INFINITY;
    sum_sq += acc * acc;
  }
  return max_diff / std::max(1e-30, std::sqrt(sum_sq / S));
}
double gemm_tolerance(DType t, bool bf16_anchor) {
  if (bf16_anchor) return 3e-2;
  switch (t) {
    case DType::F32: case DType::F16: return 1e-4;
    case DType::BF16: return 3e-2;  // bf16 dot-product hardware rounds X to bf16
    default: return 5e-2;           // quantized paths may quantize X to 8 bits
  }
}
void set_check(Result& r, double err, double tol) {
  r.err = err;
  r.check = err <= tol ? "ok" : "BAD";
}

// fn() with a process-wide path switch (gemm_detail::set_*) at `on`, then back at !on: one call of
// the other path of an A/B pair.
template <class Fn>
void with_switch(void (*set)(bool), bool on, Fn&& fn) {
  set(on);
  fn();
  set(!on);
}

// gemv_streams' software prefetch hints other than this CPU's default (kernels/cpu/decode_tuning.h:
// T0, none on double-pumped AVX-512), for the bf16 / f16 M = 1 rows
using GemvPf = gemm_detail::GemvPrefetch;
const std::array<GemvPf, 2> kOtherPrefetch = [] {
  const GemvPf d = gemm_detail::decode_tuning().stream_prefetch;
  return d == GemvPf::T0 ? std::array<GemvPf, 2>{GemvPf::Nta, GemvPf::None}
         : d == GemvPf::Nta ? std::array<GemvPf, 2>{GemvPf::T0, GemvPf::None}
                            : std::array<GemvPf, 2>{GemvPf::T0, GemvPf::Nta};
}();
const char* prefetch_row_name(GemvPf pf) { return pf == GemvPf::T0 ? "huge-t0" : pf == GemvPf::Nta ? "huge-nta" : "huge-nopf"; }
// the bf16 8-row block GEMV's (4 KiB pages: the emollm row) hints other than this CPU's default
// (decode_tuning.h block_prefetch), as rows "block-t0" / "block-nta" / "block-nopf"
const std::array<GemvPf, 2> kOtherBlockPrefetch = [] {
  const GemvPf d = gemm_detail::decode_tuning().block_prefetch;
  return d == GemvPf::T0 ? std::array<GemvPf, 2>{GemvPf::Nta, GemvPf::None}
         : d == GemvPf::Nta ? std::array<GemvPf, 2>{GemvPf::T0, GemvPf::None}
                            : std::array<GemvPf, 2>{GemvPf::T0, GemvPf::Nta};
}();
const char* block_prefetch_row_name(GemvPf pf) {
  return pf == GemvPf::T0 ? "block-t0" : pf == GemvPf::Nta ? "block-nta" : "block-nopf";
}
template <class Fn>
void with_block_prefetch(GemvPf pf, Fn&& fn) {
  const GemvPf prev = gemm_detail::gemv_block_prefetch();
  gemm_detail::set_gemv_block_prefetch(pf);
  fn();
  gemm_detail::set_gemv_block_prefetch(prev);
}
template <class Fn>
void with_prefetch(GemvPf pf, Fn&& fn) {
  const GemvPf prev = gemm_detail::gemv_streams_prefetch();
  gemm_detail::set_gemv_streams_prefetch(pf);
  fn();
  gemm_detail::set_gemv_streams_prefetch(prev);
}

void quantize_matrix(DType t, const float* src, void* dst, int64_t N, int64_t K, ThreadPool* pool) {
  size_t rb = dtype_row_bytes(t, K);
  pool->parallel_for(N, 16, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; n++) quantize_row(t, src + n * K, static_cast<uint8_t*>(dst) + size_t(n) * rb, K);
  });
}

// An N x K matrix of fill_random(seed) weights quantized to t (dtype_row_bytes(t, K) x N bytes).
Buf<uint8_t> random_quantized_matrix(DType t, int64_t N, int64_t K, uint64_t seed, ThreadPool* pool) {
  Buf<float> w = make_aligned<float>(size_t(N * K));
  fill_random(w.get(), N * K, seed, pool);
  Buf<uint8_t> q = make_aligned<uint8_t>(dtype_row_bytes(t, K) * size_t(N));
  quantize_matrix(t, w.get(), q.get(), N, K, pool);
  return q;
}

// Weight copies for decode so that GEMV streams from memory, not from L3: enough copies of the
// matrix to total >= rotate_l3x() x L3 per thread (at least 2), used round-robin. Per thread because
// each thread's cores may have an L3 of their own, and each thread of a GEMV reads only its share of
// the rows: on the 2-vCPU Zen 5 VM the two vCPUs sit on different L3s (a 16 MiB buffer written on
// one vCPU reads at 45-54 GB/s on it, 28-34 GB/s (= cold) on the other), so the former 3x L3 in
// all (96 MiB) left 48 MiB a thread against a 32 MiB L3, and part of each call hit L3: one
// thread over 48 MiB of rotating copies read oneDNN's GEMV 1.4x (ours 1.15x) faster than over
// 384 MiB (llama1b.o, best of two rounds each), which is how oneDNN "alone" read above the
// read probe.
// 8x, not 3x (session 13): a rotation a few times the L3 still hits it. Likely cause: the L3's
// replacement is not LRU (a cyclic walk over more than its size keeps part of it resident rather
// than missing every line); a vCPU moved between CCDs by the hypervisor, finding lines in another
// L3, would add to it (not measured).
// Measured (one thread pinned, 2.25 MiB a call, blocks of calls per rotation size alternated in one
// process, load ~7): best GB/s over 48 / 64 / 96 / 192 / 384 / 768 MiB of copies 69.9 / 52.3 /
// 46.0 / 39.1 / 41.7 / 41.3: the figure stops moving from ~6x L3 (192 MiB); 3x (96 MiB) read
// 1.1-1.2x faster than cold, which is what bench_kernels' q4_0 rows showed against the
// decode-order tool (bench_decode_sequence) and how its probe-same-size row read above the read
// probe. EMOLLM_BENCH_ROTATE_L3X=x: x L3 per thread instead of 8 (3: the session 12 rotation), to
// check a figure against the rotation size; the header and the JSON print the rotation.
int g_rotate_threads = 1;  // the run's thread count (main)
double rotate_l3x() {
  static const double mult = [] {
    const char* e = std::getenv("EMOLLM_BENCH_ROTATE_L3X");
    return e && std::atof(e) > 0 ? std::atof(e) : 8.0;
  }();
  return mult;
}
// bytes of copies one decode row rotates over, all threads together
size_t rotate_bytes() { return size_t(rotate_l3x() * double(l3_bytes()) * double(std::max(1, g_rotate_threads))); }
int decode_copies(size_t bytes) {
  const size_t want = rotate_bytes();
  return int(std::max<size_t>(2, (want + bytes - 1) / bytes));
}

// huge: every copy (the source too) in alloc_huge memory, as the CPU backend's copies of a model's
// bf16 / f16 matrices (gemm_huge_pages' rows) and its repacked q8_0 / q4_0 ones.
struct Copies {
  std::vector<Buf<uint8_t>> bufs;
  std::vector<const void*> ptrs;
  Copies(const void* src, size_t bytes, int n, ThreadPool* pool, bool huge = false) {
    if (!huge) ptrs.push_back(src);
    for (int i = huge ? 0 : 1; i < n; i++) {
      bufs.push_back(huge ? alloc_huge(bytes) : make_aligned<uint8_t>(bytes));
      uint8_t* d = bufs.back().get();
      pool->parallel_for(int64_t(bytes), 1 << 20, [&](int64_t b, int64_t e) {
        std::memcpy(d + b, static_cast<const uint8_t*>(src) + b, size_t(e - b));
      });
      ptrs.push_back(d);
    }
  }
  const void* operator[](int i) const { return ptrs[size_t(i) % ptrs.size()]; }
};

std::string gemm_name(const GemmShape& s, int64_t M, const char* dtype, const char* impl) {
  std::string n = std::string("gemm/") + s.model + "." + s.layer + "/M" + std::to_string(M) + "/" + dtype;
  if (impl) n += std::string("/") + impl;
  return n;
}

bool any_selected(const GemmShape& s) {
  for (int64_t M : s.Ms) {
    for (DType t : kDtypes)
      if (selected(gemm_name(s, M, dtype_name(t), nullptr))) return true;
    if (selected(gemm_name(s, M, "f32", "openblas")) || selected(gemm_name(s, M, "bf16", "onednn"))) return true;
  }
  return false;
}

void bench_gemm_shape(const GemmShape& s, ThreadPool& pool) {
  if (!any_selected(s)) return;
  const int64_t N = s.N, K = s.K;
  const int64_t Mmax = *std::max_element(s.Ms.begin(), s.Ms.end());
  size_t first = g_results.size();
  Buf<float> W, X, Y;
  if (!g_opt.list) {
    progress(std::string("gemm/") + s.model + "." + s.layer + ": preparing weights");
    W = make_aligned<float>(size_t(N * K));
    X = make_aligned<float>(size_t(Mmax * K));
    Y = make_aligned<float>(size_t(Mmax * N));
    fill_random(W.get(), N * K, 11 + uint64_t(N) * 7 + uint64_t(K), &pool);
    fill_random(X.get(), Mmax * K, 17 + uint64_t(K), &pool);
  }
  char label[64];
  auto make_result = [&](int64_t M, const char* dtype, const char* impl) {
    Result r;
    r.section = "gemm";
    r.name = gemm_name(s, M, dtype, std::strcmp(impl, "emollm") == 0 ? nullptr : impl);
    std::snprintf(label, sizeof label, "%s.%s M=%" PRId64, s.model, s.layer, M);
    r.label = label;
    r.dtype = dtype;
    r.impl = impl;
    r.M = M; r.N = N; r.K = K;
    r.flops = 2.0 * double(M) * double(N) * double(K);
    return r;
  };
  // A probe-same-size row beside the M = 1 row `vs` (its best time vs_best): the read probe's loop
  // over that row's bytes (`over`), cold, the same pool, interleaved with it; no output to check.
  auto add_probe_same_size = [&](int64_t M, DType t, double bytes, const Stats& probe, const char* vs, double vs_best,
                                 const char* over) {
    Result p = make_result(M, dtype_name(t), "probe-same-size");
    p.bytes = bytes;
    p.st = probe;
    p.ratio_vs = vs;
    p.ratio = vs_best / probe.best;
    p.note = std::string("read probe (4 streams + 1 KiB prefetch) over ") + over +
             ", cold, same pool, interleaved; ratio = the " + vs +
             " row's time / its (> 1: the GEMV is slower than a plain read of the same bytes)";
    g_results.push_back(p);
  };

  // ---- emollm, every weight dtype
  for (DType t : kDtypes) {
    bool want = false;
    for (int64_t M : s.Ms) want = want || selected(gemm_name(s, M, dtype_name(t), nullptr));
    if (!want) continue;
    if (g_opt.list) {
      for (int64_t M : s.Ms) run_case(make_result(M, dtype_name(t), "emollm"), nullptr);
      continue;
    }
    size_t wbytes = dtype_row_bytes(t, K) * size_t(N);
    Buf<uint8_t> Wq;
    const void* Wt = W.get();
    if (t != DType::F32) {
      progress(std::string("gemm/") + s.model + "." + s.layer + ": quantizing to " + dtype_name(t));
      Wq = make_aligned<uint8_t>(wbytes);
      quantize_matrix(t, W.get(), Wq.get(), N, K, &pool);
      Wt = Wq.get();
    }
    for (int64_t M : s.Ms) {
      Result r = make_result(M, dtype_name(t), "emollm");
      r.bf16_math = t == DType::BF16;
      if (!selected(r.name)) continue;
      // M > 1 in Q8 activation mode on VNNI: every path of these rows (gemm_q8_vnni / gemm_repacked
      // at M > kSmallM, the small-M tiles below) multiplies with vpdpbusd
      r.int8_math = (t == DType::Q8_0 || t == DType::Q4_0) && M > 1 && cpu_features().avx512vnni &&
                    isa_active() >= Isa::Avx512 && quant_activations() == QuantActivations::Q8;
      std::unique_ptr<Copies> copies;
      if (M == 1) {
        progress(r.name + ": copying weights");
        copies.reset(new Copies(Wt, wbytes, decode_copies(wbytes), &pool));
        r.bytes = double(wbytes);
        r.note = "(" + std::to_string(copies->ptrs.size()) + " weight copies)";
      }
      // q8_0 / q4_0 GEMV on VNNI: the previous kernel (gemm_internal.h set_q8_gemv_legacy) and
      // gemv_repacked on quant_repack's layout, measured interleaved call by call with the current
      // one, as "prev" and "repacked" rows right below it.
      // M > 1: gemm_repacked (what models run on repacked weights) interleaved with gemm, hot weights;
      // at M > 8 also gemm_repacked's previous 4-row tiles (set_repacked_panels_enabled(false)) as
      // a "repacked-prev" row.
      const bool ab = (t == DType::Q8_0 || t == DType::Q4_0) && cpu_features().avx512vnni &&
                      isa_active() >= Isa::Avx512 && quant_activations() == QuantActivations::Q8;
      // BF16 / F16 with 2 <= M <= 64: the batched-decode path (gemm_small_m.cpp) against the
      // previous path (set_small_m_enabled(false)), interleaved, as a "prev" row below it.
      const bool small_ab = M >= gemm_detail::kSmallMMin && M <= gemm_detail::kSmallMMax &&
                            (t == DType::BF16 || t == DType::F16) && isa_active() >= Isa::Avx512;
      // BF16 / F16 GEMV (M = 1): what a model runs, gemm_huge_pages on copies in huge pages (the
      // CPU backend's copies; the single-stream kernel), interleaved call by call with the emollm
      // row (gemm on 4 KiB pages, as a mapped file: the multi-row kernel), as a "huge" row.
      // Also interleaved: oneDNN's bf16 GEMV on its own reordered copies (x rounded to
      // bf16; the same number of copies) as an "onednn-il" row, so that the ratios to oneDNN come
      // from the same moments of a shared machine (the separate onednn row below is measured alone).
      const bool stream_ab = M == 1 && (t == DType::BF16 || t == DType::F16);
      std::unique_ptr<Copies> hcopies;
      if (stream_ab) hcopies.reset(new Copies(Wt, wbytes, int(copies->ptrs.size()), &pool, true));
      auto run_huge = [&](const void* w) { gemm_huge_pages(X.get(), K, w, t, nullptr, Y.get(), N, 1, N, K, &pool); };
      Stats dnnl_il, pan1, huge_alone, other_pf[kOtherPrefetch.size()], other_block_pf[kOtherBlockPrefetch.size()];
      const bool block_ab = stream_ab && t == DType::BF16;  // the 4 KiB-page row's kernel with its other hints
      // BF16: gemm_bf16_panels at M = 1 on panel copies in 2 MiB pages (what a decoder runs with
      // EMOLLM_BF16_DECODER_PANELS=1; x rounded to bf16), interleaved too, as a "panels" row.
      const bool panels_m1 = stream_ab && t == DType::BF16 && bf16_panels_usable();
      std::unique_ptr<Copies> pcopies;
      if (panels_m1) {
        Buf<uint8_t> packed = make_aligned<uint8_t>(bf16_panels_bytes(N, K));
        bf16_pack_panels(Wt, N, K, packed.get(), &pool);
        pcopies.reset(new Copies(packed.get(), bf16_panels_bytes(N, K), int(copies->ptrs.size()), &pool, true));
      }
      auto run_panels_m1 = [&](const void* w) { gemm_bf16_panels(X.get(), K, w, nullptr, Y.get(), N, 1, N, K, &pool); };
#ifdef EMOLLM_HAVE_DNNL
      std::unique_ptr<DnnlGemm> dnnl;
      Buf<uint8_t> Wdnnl;
      if (stream_ab && g_have_dnnl) {
        Wdnnl = make_aligned<uint8_t>(size_t(N * K) * 2);
        quantize_matrix(DType::BF16, W.get(), Wdnnl.get(), N, K, &pool);
        dnnl.reset(new DnnlGemm);
        dnnl->init(1, N, K, X.get(), Y.get(), reinterpret_cast<const uint16_t*>(Wdnnl.get()), int(copies->ptrs.size()));
      }
#endif
      // BF16 at those M: gemm_bf16_panels on panels packed once (what a decoder runs with
      // EMOLLM_BF16_DECODER_PANELS=1), interleaved too, as a "panels" row.
      // (also at 2 <= M <= kSmallM, where the default runs gemm()'s exact-x dot kernels: "panels"
      // row interleaved with the emollm row alone)
      // BF16 at M > kSmallMMax: the same on panels packed at load time, what the vision towers run
      // (GemmRows::Many: the CPU backend keeps their matrices as panels), interleaved with the
      // emollm row (gemm on the plain matrix: W packed per call, as the oneDNN row's call does).
      const bool big_panels = t == DType::BF16 && M > gemm_detail::kSmallMMax && isa_active() >= Isa::Avx512 &&
                              bf16_panels_usable();
      const bool panels_ab = ((small_ab || (M >= 2 && M <= gemm_detail::kSmallM && isa_active() >= Isa::Avx512)) &&
                              t == DType::BF16 && bf16_panels_usable()) ||
                             big_panels;
      Buf<uint8_t> Wpan;
      if (panels_ab) {
        Wpan = make_aligned<uint8_t>(bf16_panels_bytes(N, K));
        bf16_pack_panels(Wt, N, K, Wpan.get(), &pool);
      }
      auto run_panels = [&] { gemm_bf16_panels(X.get(), K, Wpan.get(), nullptr, Y.get(), N, M, N, K, &pool); };
      Stats prev, rep, rep_prev, rep_whole_k, cur, pan, same_size;
      std::unique_ptr<Copies> rcopies;
      Buf<uint8_t> Wr;
      const bool avx512_reads = cpu_features().avx512f;
      size_t rbytes_m1 = 0;
      if (ab) {
        progress(r.name + ": repacking weights");
        const size_t rbytes = quant_repack_bytes(t, N, K);
        rbytes_m1 = rbytes;
        Wr = make_aligned<uint8_t>(rbytes);
        quant_repack(Wt, t, N, K, Wr.get(), &pool);
        if (M == 1) rcopies.reset(new Copies(Wr.get(), rbytes, int(copies->ptrs.size()), &pool, true));
      }
      // the products as the rows below run them (w: a weight copy, cold at M = 1)
      auto run_gemm = [&](const void* w) { gemm(X.get(), K, w, t, nullptr, Y.get(), N, M, N, K, &pool); };
      auto run_repacked = [&] { gemm_repacked(X.get(), K, Wr.get(), t, nullptr, Y.get(), N, M, N, K, &pool); };
      auto run_small_m_prev = [&] { with_switch(gemm_detail::set_small_m_enabled, false, [&] { run_gemm(Wt); }); };
      auto run_q8_gemv_prev = [&](const void* w) { with_switch(gemm_detail::set_q8_gemv_legacy, true, [&] { run_gemm(w); }); };
      auto run_repacked_prev = [&] { with_switch(gemm_detail::set_repacked_panels_enabled, false, run_repacked); };
      // gemm_repacked's X-panel kernel as in session 17: whole-K calls (no k slices) and X rounded
      // row by row then packed (set_repacked_kslice(0), set_qx_pack_fused(false)); same bits
      auto run_repacked_whole_k = [&] {
        gemm_detail::set_repacked_kslice(0);
        with_switch(gemm_detail::set_qx_pack_fused, false, run_repacked);
        gemm_detail::set_repacked_kslice(-1);
      };
      auto check = [&](Result& row) {
        set_check(row, gemm_check(X.get(), M, K, Wt, t, N, Y.get(), false), gemm_tolerance(t, false));
      };
      run_case(r, [&](Result& res) {
        if (ab && M > 1) {
          std::vector<std::function<void(int)>> fns = {[&](int) { run_gemm(Wt); }, [&](int) { run_repacked(); }};
          if (M > gemm_detail::kSmallM) fns.push_back([&](int) { run_repacked_prev(); });
          if (M > gemm_detail::kSmallM) fns.push_back([&](int) { run_repacked_whole_k(); });
          auto st = measure_interleaved(fns);
          res.st = cur = st[0];
          rep = st[1];
          if (st.size() > 2) rep_prev = st[2];
          if (st.size() > 3) rep_whole_k = st[3];
        } else if (ab) {
          std::vector<std::function<void(int)>> fns = {
              [&](int i) { run_gemm((*copies)[i]); },
              [&](int i) { gemv_repacked(X.get(), (*rcopies)[i], t, nullptr, Y.get(), N, K, &pool); },
          };
          if (t == DType::Q4_0)  // q8_0 has no previous kernel: it kept q8v_block
            fns.push_back([&](int i) { run_q8_gemv_prev((*copies)[i]); });
          // gemv_repacked on guided chunks (gemm_internal.h set_gemv_ranges)
          fns.push_back([&](int i) {
            with_switch(set_gemv_schedule, false, [&] { gemv_repacked(X.get(), (*rcopies)[i], t, nullptr, Y.get(), N, K, &pool); });
          });
          // the read probe's best loop over the same bytes, pages and thread count as the
          // repacked row (another cold copy of the repacked weights, each thread a slice, through
          // the same pool): what one call of this size can read, hand-off and ramp-up included
          if (avx512_reads) fns.push_back([&](int i) { read_probe_call(pool, (*rcopies)[i], rbytes_m1); });
          auto st = measure_interleaved(fns);
          if (avx512_reads) {
            same_size = st.back();
            st.pop_back();
          }
          res.st = cur = st[0];
          rep = st[1];
          if (st.size() > 3) {
            prev = st[2];
            res.ratio_vs = "prev";
            res.ratio = prev.best / res.st.best;
          }
          rep_prev = st.back();
        } else if (stream_ab) {
          bool dnnl_on = false;
#ifdef EMOLLM_HAVE_DNNL
          dnnl_on = dnnl != nullptr;
#endif
          std::vector<std::function<void(int)>> fns = {
              [&](int i) { run_gemm((*copies)[i]); },
              [&](int i) { run_huge((*hcopies)[i]); },
          };
          // the stream kernel with the other software prefetch hints (set_gemv_streams_prefetch)
          for (GemvPf pf : kOtherPrefetch)
            fns.push_back([&, pf](int i) { with_prefetch(pf, [&] { run_huge((*hcopies)[i]); }); });
          if (block_ab)
            for (GemvPf pf : kOtherBlockPrefetch)
              fns.push_back([&, pf](int i) { with_block_prefetch(pf, [&] { run_gemm((*copies)[i]); }); });
          if (panels_m1) fns.push_back([&](int i) { run_panels_m1((*pcopies)[i]); });
#ifdef EMOLLM_HAVE_DNNL
          if (dnnl) fns.push_back([&](int i) { dnnl->run(i); });
#endif
          // the read probe's best loop over the same bytes (the huge copies), as the q4_0 rows' one
          if (avx512_reads) fns.push_back([&](int i) { read_probe_call(pool, (*hcopies)[i], wbytes); });
          auto st = measure_interleaved(fns, dnnl_on ? 0.003 : 0.0);
          if (avx512_reads) {
            same_size = st.back();
            st.pop_back();
          }
          res.st = cur = st[0];
          prev = st[1];
          for (size_t j = 0; j < kOtherPrefetch.size(); ++j) other_pf[j] = st[2 + j];
          st.erase(st.begin() + 2, st.begin() + 2 + std::ptrdiff_t(kOtherPrefetch.size()));
          if (block_ab) {
            for (size_t j = 0; j < kOtherBlockPrefetch.size(); ++j) other_block_pf[j] = st[2 + j];
            st.erase(st.begin() + 2, st.begin() + 2 + std::ptrdiff_t(kOtherBlockPrefetch.size()));
          }
          if (panels_m1) {
            pan1 = st[2];
          }
          if (dnnl_on) dnnl_il = st.back();
          settle();
          huge_alone = measure([&](int i) { run_huge((*hcopies)[i]); });
          run_gemm(Wt);  // the checked output is gemm's
        } else if (M == 1) {
          res.st = measure([&](int i) { run_gemm((*copies)[i]); });
        } else if (small_ab) {  // batched decode: the small-M path and the previous one, interleaved
          std::vector<std::function<void(int)>> fns = {[&](int) { run_gemm(Wt); }, [&](int) { run_small_m_prev(); }};
          // the panels twice in a row, the first call's time unused: its weights are another copy
          // (Wt is warmed for the emollm row by the prev row's call before it), so each measured
          // call finds its weights as warm as the emollm row does
          if (panels_ab) {
            fns.push_back([&](int) { run_panels(); });
            fns.push_back([&](int) { run_panels(); });
          }
          auto st = measure_interleaved(fns);
          res.st = cur = st[0];
          prev = st[1];
          if (st.size() > 3) pan = st[3];
          run_gemm(Wt);  // the checked output is the current path's
        } else if (panels_ab) {  // M <= kSmallM or M > kSmallMMax: the emollm row and the panels (twice, as above)
          auto st = measure_interleaved({[&](int) { run_gemm(Wt); }, [&](int) { run_panels(); }, [&](int) { run_panels(); }});
          res.st = cur = st[0];
          pan = st[2];
          run_gemm(Wt);  // the checked output is gemm's
        } else {
          res.st = measure([&](int) { run_gemm(Wt); });
        }
        check(res);
      });
      // A row measured interleaved with the emollm row: its output computed once more by `run`, checked.
      auto add_row = [&](const char* impl, const Stats& st, const char* ratio_vs, double ratio, const char* note,
                         double bytes, const std::function<void()>& run) {
        Result p = make_result(M, dtype_name(t), impl);
        p.bf16_math = r.bf16_math;
        p.int8_math = r.int8_math;
        p.bytes = bytes;
        p.st = st;
        if (ratio_vs) {
          p.ratio_vs = ratio_vs;
          p.ratio = ratio;
        }
        p.note = note;
        run();
        check(p);
        g_results.push_back(p);
      };
      if (small_ab && prev.reps > 0)
        add_row("prev", prev, "prev/new", prev.best / cur.best,
                "previous path (small-M off), interleaved; ratio = its time / the emollm row's (>1: new faster)", 0,
                run_small_m_prev);
      if (panels_ab && pan.reps > 0)
        add_row("panels", pan, "emollm", cur.best / pan.best,
                big_panels ? "gemm_bf16_panels on load-time panels (what the vision towers run), interleaved; ratio = "
                             "the emollm row's time / its (>1: panels faster)"
                           : "gemm_bf16_panels on load-time panels (EMOLLM_BF16_DECODER_PANELS=1), interleaved; ratio = "
                             "the emollm row's time / its (>1: panels faster)",
                0, run_panels);
      if (stream_ab && prev.reps > 0)
        add_row("huge", prev, "emollm", cur.best / prev.best,
                "gemm_huge_pages on copies in 2 MiB pages (what models run), interleaved; ratio = emollm row's time / its",
                double(wbytes),
                [&] { gemm_huge_pages(X.get(), K, (*hcopies)[0], t, nullptr, Y.get(), N, 1, N, K, &pool); });
      if (stream_ab && huge_alone.reps > 0)
        add_row("huge-alone", huge_alone, "huge", huge_alone.best / prev.best,
                "the huge row's kernel measured alone (calls back to back, as the onednn row), after the interleaved rows",
                double(wbytes), [&] { gemm_huge_pages(X.get(), K, (*hcopies)[0], t, nullptr, Y.get(), N, 1, N, K, &pool); });
      if (stream_ab && same_size.reps > 0 && prev.reps > 0)
        add_probe_same_size(M, t, double(wbytes), same_size, "huge", prev.best, "the huge row's copies");
      for (size_t j = 0; stream_ab && j < kOtherPrefetch.size(); ++j)
        if (other_pf[j].reps > 0) {
          const GemvPf pf = kOtherPrefetch[j];
          add_row(prefetch_row_name(pf), other_pf[j], "huge", other_pf[j].best / prev.best,
                  pf == GemvPf::Nta  ? "the huge row's kernel with a non-temporal software prefetch (prefetchnta), "
                                       "interleaved; ratio = its time / the huge row's (>1: the default faster)"
                  : pf == GemvPf::T0 ? "the huge row's kernel with a software prefetch into L1 (prefetcht0, Zen 5's "
                                       "default), interleaved; ratio = its time / the huge row's (>1: the default faster)"
                                     : "the huge row's kernel without software prefetch (hardware prefetchers alone), "
                                       "interleaved; ratio = its time / the huge row's (>1: the default faster)",
                  double(wbytes), [&] { with_prefetch(pf, [&] { run_huge((*hcopies)[0]); }); });
        }
      for (size_t j = 0; block_ab && j < kOtherBlockPrefetch.size(); ++j)
        if (other_block_pf[j].reps > 0) {
          const GemvPf pf = kOtherBlockPrefetch[j];
          add_row(block_prefetch_row_name(pf), other_block_pf[j], "emollm", other_block_pf[j].best / cur.best,
                  "the emollm row's kernel (4 KiB pages: the 8-row bf16_gemv_block) with this software prefetch "
                  "hint instead of the CPU's default (decode_tuning.h block_prefetch), interleaved; ratio = its time / "
                  "the emollm row's (>1: the default faster)",
                  double(wbytes), [&] { with_block_prefetch(pf, [&] { run_gemm((*copies)[0]); }); });
        }
      if (panels_m1 && pan1.reps > 0) {
        Result p = make_result(M, dtype_name(t), "panels");
        p.bf16_math = true;
        p.bytes = double(wbytes);
        p.st = pan1;
        p.ratio_vs = "huge";
        p.ratio = prev.best / pan1.best;
        p.note = "gemm_bf16_panels at M=1 on panel copies in 2 MiB pages (EMOLLM_BF16_DECODER_PANELS=1; x rounded to "
                 "bf16), interleaved; ratio = the huge row's time / its (>1: panels faster)";
        run_panels_m1((*pcopies)[0]);
        set_check(p, gemm_check(X.get(), M, K, Wt, t, N, Y.get(), true), gemm_tolerance(t, true));
        g_results.push_back(p);
      }
#ifdef EMOLLM_HAVE_DNNL
      if (stream_ab && dnnl && dnnl_il.reps > 0) {
        Result p = make_result(M, dtype_name(t), "onednn-il");
        p.bf16_math = true;
        p.bytes = double(N * K) * 2;
        p.st = dnnl_il;
        p.ratio_vs = "onednn-il/huge";
        p.ratio = dnnl_il.best / prev.best;
        p.note = "oneDNN bf16 GEMV (" + dnnl->impl + ", x rounded to bf16) interleaved with the rows above; ratio = its "
                 "time / the huge row's (>1: emollm faster)";
        dnnl->run(0);
        set_check(p, gemm_check(X.get(), M, K, Wdnnl.get(), DType::BF16, N, Y.get(), true), gemm_tolerance(DType::BF16, true));
        g_results.push_back(p);
      }
#endif
      if (ab && prev.reps > 0)
        add_row("prev", prev, nullptr, 0, "previous kernel, interleaved with the emollm row", double(wbytes),
                [&] { run_q8_gemv_prev(Wt); });
      if (ab && rep.reps > 0)
        add_row("repacked", rep, "emollm", cur.best / rep.best,
                M == 1 ? "gemv_repacked (q4_0 64-row records, q8_0 16-row ones), interleaved with the emollm row"
                       : "gemm_repacked (q4_0 64-row records, q8 activations), interleaved with the emollm row",
                M == 1 ? double(wbytes) : 0, run_repacked);
      if (ab && same_size.reps > 0 && rep.reps > 0)
        add_probe_same_size(M, t, double(rbytes_m1), same_size, "repacked", rep.best, "the repacked row's bytes");
      if (ab && rep_prev.reps > 0) {
        if (M == 1)
          add_row("repacked-prev", rep_prev, "repacked", rep_prev.best / rep.best,
                  "gemv_repacked without the pass-edge prefetch and guided chunks, interleaved; ratio = its time / the "
                  "repacked row's (>1: new faster)",
                  double(wbytes), [&] { with_switch(set_gemv_schedule, false, run_repacked); });
        else
          add_row("repacked-prev", rep_prev, "repacked", rep_prev.best / rep.best,
                  "gemm_repacked's previous 4-row tiles, interleaved; ratio = its time / the repacked row's (>1: new faster)",
                  0, run_repacked_prev);
      }
      if (ab && rep_whole_k.reps > 0)
        add_row("repacked-wholek", rep_whole_k, "repacked", rep_whole_k.best / rep.best,
                "gemm_repacked without k slices and with X rounded row by row then packed (session 17's path: "
                "set_repacked_kslice(0), set_qx_pack_fused(false)), interleaved; ratio = its time / the repacked row's "
                "(>1: new faster)",
                0, run_repacked_whole_k);
    }
  }

  // ---- OpenBLAS sgemm / sgemv (f32)
  for (int64_t M : s.Ms) {
    Result r = make_result(M, "f32", "openblas");
    if (!selected(r.name)) continue;
    if (g_opt.list) { run_case(r, nullptr); continue; }
    if (!g_have_openblas) { r.error = kAnchorHint; g_results.push_back(r); continue; }
#ifdef EMOLLM_HAVE_OPENBLAS
    size_t wbytes = size_t(N * K) * sizeof(float);
    std::unique_ptr<Copies> copies;
    if (M == 1) {
      copies.reset(new Copies(W.get(), wbytes, decode_copies(wbytes), &pool));
      r.bytes = double(wbytes);
      r.note = "sgemv (" + std::to_string(copies->ptrs.size()) + " weight copies)";
    } else {
      r.note = "sgemm";
    }
    run_case(r, [&](Result& res) {
      if (M == 1) {
        res.st = measure([&](int i) {
          cblas_sgemv(CblasRowMajor, CblasNoTrans, int(N), int(K), 1.0f, static_cast<const float*>((*copies)[i]),
                      int(K), X.get(), 1, 0.0f, Y.get(), 1);
        });
      } else {
        res.st = measure([&](int) {
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.0f, X.get(), int(K),
                      W.get(), int(K), 0.0f, Y.get(), int(N));
        });
      }
      set_check(res, gemm_check(X.get(), M, K, W.get(), DType::F32, N, Y.get(), false), 1e-4);
    });
    settle();
#endif
  }

  // ---- oneDNN bf16 x bf16 -> f32
  for (int64_t M : s.Ms) {
    Result r = make_result(M, "bf16", "onednn");
    r.bf16_math = true;
    if (!selected(r.name)) continue;
    if (g_opt.list) { run_case(r, nullptr); continue; }
    if (!g_have_dnnl) { r.error = kAnchorHint; g_results.push_back(r); continue; }
#ifdef EMOLLM_HAVE_DNNL
    size_t wbytes = size_t(N * K) * sizeof(uint16_t);
    Buf<uint8_t> Wb = make_aligned<uint8_t>(wbytes);
    quantize_matrix(DType::BF16, W.get(), Wb.get(), N, K, &pool);
    int copies = M == 1 ? decode_copies(wbytes) : 1;
    if (M == 1) {
      r.bytes = double(wbytes);
    }
    run_case(r, [&](Result& res) {
      DnnlGemm g;
      g.init(M, N, K, X.get(), Y.get(), reinterpret_cast<const uint16_t*>(Wb.get()), copies);
      res.note = g.impl + (M == 1 ? " (" + std::to_string(copies) + " weight copies)" : "");
      res.st = measure([&](int i) { g.run(i); });
      set_check(res, gemm_check(X.get(), M, K, Wb.get(), DType::BF16, N, Y.get(), true), gemm_tolerance(DType::BF16, true));
    });
    settle();
#endif
  }

  // ---- ratios: anchor time / emollm time, same shape and M
  for (size_t i = first; i < g_results.size(); i++) {
    Result& r = g_results[i];
    if (r.impl != "emollm") continue;
    const char* anchor = r.dtype == "f32" ? "openblas" : r.dtype == "bf16" ? "onednn" : nullptr;
    if (!anchor) continue;
    r.ratio_vs = anchor;
    for (size_t j = first; j < g_results.size(); j++) {
      const Result& a = g_results[j];
      if (a.impl == anchor && a.M == r.M && a.dtype == r.dtype && a.error.empty() && r.error.empty())
        r.ratio = a.st.best / r.st.best;
    }
  }
  // rows: by M (prefill first), then dtype, anchors right under the dtype they anchor
  if (g_opt.list) return;
  for (int64_t M : s.Ms) {
    for (DType t : kDtypes) {
      for (size_t i = first; i < g_results.size(); i++)
        if (g_results[i].M == M && g_results[i].dtype == dtype_name(t) && g_results[i].impl == "emollm")
          table_row(g_results[i]);
      for (size_t i = first; i < g_results.size(); i++)
        if (g_results[i].M == M && g_results[i].dtype == dtype_name(t) && g_results[i].impl != "emollm")
          table_row(g_results[i]);
    }
  }
}

// ============================================================================ fused GEMVs
// A decode step's products of one x (TinyLlama-1.1B q/k/v and gate/up) as the model runs them:
// one dispatch over all outputs' rows (kernels.h gemv_repacked_multi on repacked q8_0 / q4_0,
// gemv_huge_pages_multi on bf16 / f16 copies in 2 MiB pages) interleaved call by call with one
// call per matrix ("separate" row; ratio = its time / the fused time, >1: fusing is faster).
// Cold weights (copies rotated as the M = 1 GEMM rows); GB/s = weight bytes of all outputs / time.
void bench_fused(ThreadPool& pool) {
  struct FusedShape {
    const char* name;
    std::vector<int64_t> Ns;
    int64_t K;
  };
  const FusedShape shapes[] = {{"llama1b.qkv", {2048, 256, 256}, 2048}, {"llama1b.gate_up", {5632, 5632}, 2048}};
  const DType types[] = {DType::Q4_0, DType::Q8_0, DType::BF16, DType::F16, DType::F32};  // F32: the 2 MiB-page copies
  bool header = false;
  for (const FusedShape& sh : shapes)
    for (DType t : types) {
      const std::string name = std::string("fused/") + sh.name + "/" + dtype_name(t);
      if (!selected(name)) continue;
      if (g_opt.list) { std::printf("%s\n", name.c_str()); continue; }
      const bool repacked = t == DType::Q4_0 || t == DType::Q8_0;
      if (repacked && !(cpu_features().avx512vnni && isa_active() >= Isa::Avx512)) continue;  // models keep the standard layout there
      if (!header) {
        table_header("Fused GEMVs of one x (one dispatch; ratio = one call per matrix / fused, >1: fused faster)");
        header = true;
      }
      progress(name + ": preparing weights");
      const int n = int(sh.Ns.size());
      const int64_t K = sh.K;
      size_t total = 0;
      for (int64_t N : sh.Ns) total += repacked ? quant_repack_bytes(t, N, K) : dtype_row_bytes(t, K) * size_t(N);
      const int ncopies = decode_copies(total);
      std::vector<std::unique_ptr<Copies>> copies;
      std::vector<Buf<float>> ys, ys2;
      for (int j = 0; j < n; ++j) {
        const int64_t N = sh.Ns[size_t(j)];
        const size_t wb = dtype_row_bytes(t, K) * size_t(N);
        Buf<uint8_t> q = random_quantized_matrix(t, N, K, 31 + uint64_t(j) * 7 + uint64_t(N), &pool);
        if (repacked) {
          const size_t rb = quant_repack_bytes(t, N, K);
          Buf<uint8_t> r = make_aligned<uint8_t>(rb);
          quant_repack(q.get(), t, N, K, r.get(), &pool);
          copies.emplace_back(new Copies(r.get(), rb, ncopies, &pool, true));
        } else {
          copies.emplace_back(new Copies(q.get(), wb, ncopies, &pool, true));
        }
        ys.push_back(make_aligned<float>(size_t(N)));
        ys2.push_back(make_aligned<float>(size_t(N)));
      }
      Buf<float> x = make_aligned<float>(size_t(K));
      fill_random(x.get(), K, 77, &pool);
      auto fused = [&](int i) {
        GemvOutput o[kMaxGemvOutputs];
        for (int j = 0; j < n; ++j) o[j] = GemvOutput{(*copies[size_t(j)])[i], nullptr, ys[size_t(j)].get(), sh.Ns[size_t(j)]};
        if (repacked)
          gemv_repacked_multi(x.get(), t, o, n, K, &pool);
        else
          gemv_huge_pages_multi(x.get(), t, o, n, K, &pool);
      };
      auto separate = [&](int i) {
        for (int j = 0; j < n; ++j) {
          const int64_t N = sh.Ns[size_t(j)];
          if (repacked)
            gemv_repacked(x.get(), (*copies[size_t(j)])[i], t, nullptr, ys2[size_t(j)].get(), N, K, &pool);
          else
            gemm_huge_pages(x.get(), K, (*copies[size_t(j)])[i], t, nullptr, ys2[size_t(j)].get(), N, 1, N, K, &pool);
        }
      };
      Result r;
      r.section = "gemm";
      r.name = name;
      r.label = std::string(sh.name) + " M=1";
      r.dtype = dtype_name(t);
      r.impl = "fused";
      r.M = 1;
      r.K = K;
      for (int64_t N : sh.Ns) r.N += N;
      r.flops = 2.0 * double(r.N) * double(K);
      r.bytes = double(total);
      const bool ranges = gemm_detail::gemv_ranges();  // EMOLLM_GEMV_RANGES
      // and, for every type, with the other of guided chunks / contiguous ranges per thread
      auto fused_other = [&](int i) {
        gemm_detail::set_gemv_ranges(!ranges);
        fused(i);
        gemm_detail::set_gemv_ranges(ranges);
      };
      // repacked on AVX-512: the read probe over as many bytes (the M = 1 rows' probe-same-size),
      // on copies of its own in 2 MiB pages, rotated as the weights
      const bool probe_ab = repacked && cpu_features().avx512f;
      std::unique_ptr<Copies> pcopies;
      if (probe_ab) {
        Buf<uint8_t> src = make_aligned<uint8_t>(total);
        std::memset(src.get(), 0, total);
        pcopies.reset(new Copies(src.get(), total, ncopies, &pool, true));
      }
      auto probe = [&](int i) { read_probe_call(pool, (*pcopies)[i], total); };
      Stats sep, other, same_size;
      Result* res = run_case(r, [&](Result& rr) {
        std::vector<std::function<void(int)>> fns = {fused, separate};
        fns.push_back(fused_other);
        if (probe_ab) fns.push_back(probe);
        auto st = measure_interleaved(fns);
        if (probe_ab) {
          same_size = st.back();
          st.pop_back();
        }
        rr.st = st[0];
        sep = st[1];
        other = st[2];
        rr.ratio_vs = "separate";
        rr.ratio = sep.best / rr.st.best;
        bool same = true;  // fused and separate outputs, bit for bit (same copy)
        fused(0);
        separate(0);
        for (int j = 0; j < n; ++j)
          same = same && std::memcmp(ys[size_t(j)].get(), ys2[size_t(j)].get(), size_t(sh.Ns[size_t(j)]) * 4) == 0;
        rr.check = same ? "ok" : "BAD";
        rr.note = "(" + std::to_string(ncopies) + " weight copies)";
      });
      if (!res) continue;
      table_row(*res);
      // res points into g_results, which the rows below grow (and may move): its time first
      const double fused_best = res->st.best;
      // a row beside the fused one: r's case under `impl`, its stats, ratio against "fused" (or none)
      auto add_variant = [&](const std::string& impl, const std::string& suffix, const Stats& st, double ratio,
                             const std::string& note) {
        g_results.push_back(derived_row(r, suffix, impl, st, ratio > 0 ? "fused" : "", ratio, note));
        return &g_results.back();
      };
      table_row(*add_variant("separate", "separate", sep, 0, "one call per matrix, interleaved"));
      if (other.reps > 0)
        table_row(*add_variant(ranges ? "guided" : "ranges", ranges ? "guided" : "ranges", other,
                               other.best / fused_best,
                               std::string("fused, ") +
                                   (ranges ? "guided chunks (EMOLLM_GEMV_RANGES=0)" : "contiguous ranges per thread") +
                                   ", interleaved; ratio = its time / the fused row's (>1: fused row faster)"));
      if (same_size.reps > 0) {
        Result* q = add_variant("probe-same-size", "probe-same-size", same_size, fused_best / same_size.best,
                                "read probe (4 streams + 1 KiB prefetch) over as many bytes, cold, same pool, interleaved; "
                                "ratio = the fused row's time / its (> 1: the fused GEMV is slower than a plain read of "
                                "the same bytes)");
        q->flops = 0;
        table_row(*q);
      }
    }
}

// ============================================================================ K-quant GEMV
// q4_K / q6_K decode GEMV (M = 1, gemm on the GGUF layout: gemv_kquant_vnni on VNNI) as an
// "emollm" row, interleaved call by call with the records rows below. Cold weights (copies
// rotated as the M = 1 GEMM rows). 1.1B and 7B layer shapes.
void bench_kquant_gemv(ThreadPool& pool) {
  struct Shape {
    const char* name;
    int64_t N, K;
  };
  const Shape shapes[] = {{"llama1b.qkvo", 2048, 2048}, {"llama1b.gate_up", 5632, 2048}, {"llama1b.down", 2048, 5632},
                          {"llama.qkvo", 4096, 4096},   {"llama.gate_up", 11008, 4096}, {"llama.down", 4096, 11008}};
  bool header = false;
  for (const Shape& sh : shapes)
    for (DType t : {DType::Q4_K, DType::Q6_K}) {
      const std::string name = std::string("gemv_kquant/") + sh.name + "/" + dtype_name(t);
      if (!selected(name)) continue;
      if (g_opt.list) { std::printf("%s\n", name.c_str()); continue; }
      if (!header) {
        table_header("K-quant GEMV M=1 (GGUF layout and records, interleaved; ratio: see each row's note)");
        header = true;
      }
      const int64_t N = sh.N, K = sh.K;
      progress(name + ": preparing weights");
      const size_t wb = dtype_row_bytes(t, K) * size_t(N);
      Buf<uint8_t> q = random_quantized_matrix(t, N, K, 41 + uint64_t(N) + uint64_t(K), &pool);
      Copies copies(q.get(), wb, decode_copies(wb), &pool);
      Buf<float> x = make_aligned<float>(size_t(K)), y = make_aligned<float>(size_t(N));
      fill_random(x.get(), K, 79, &pool);
      Result r;
      r.section = "gemm";
      r.name = name;
      r.label = std::string(sh.name) + " M=1";
      r.dtype = dtype_name(t);
      r.impl = "emollm";
      r.M = 1;
      r.N = N;
      r.K = K;
      r.flops = 2.0 * double(N) * double(K);
      r.bytes = double(wb);
      auto run = [&](const void* w) { gemm(x.get(), K, w, t, nullptr, y.get(), N, 1, N, K, &pool); };
      auto check = [&](Result& row) {
        set_check(row, gemm_check(x.get(), 1, K, q.get(), t, N, y.get(), false), gemm_tolerance(t, false));
      };
      // kquant_repack's records (what a loaded model decodes on, in 2 MiB pages) and the
      // read probe over as many bytes (its own cold copies), interleaved with the rows above
      const bool rec_ab = kquant_repacked_usable() && kquant_repack_supported(t);
      const size_t rbytes = rec_ab ? kquant_repack_bytes(t, N, K) : 0;
      std::unique_ptr<Copies> rcopies, pcopies;
      if (rec_ab) {
        Buf<uint8_t> rsrc = alloc_huge(rbytes);
        kquant_repack(q.get(), t, N, K, rsrc.get(), &pool);
        rcopies.reset(new Copies(rsrc.get(), rbytes, decode_copies(rbytes), &pool, true));
        pcopies.reset(new Copies(rsrc.get(), rbytes, decode_copies(rbytes), &pool, true));
      }
      auto run_rec = [&](const void* w) { gemm_kquant_repacked(x.get(), K, w, t, nullptr, y.get(), N, 1, N, K, &pool); };
      Stats rec, same_size;
      Result* res = run_case(r, [&](Result& rr) {
        std::vector<std::function<void(int)>> fns = {[&](int i) { run(copies[i]); }};
        if (rec_ab) {
          fns.push_back([&](int i) { run_rec((*rcopies)[i]); });
          fns.push_back([&](int i) { read_probe_call(pool, (*pcopies)[i], rbytes); });
        }
        auto st = measure_interleaved(fns);
        if (rec_ab) rec = st[1], same_size = st[2];
        rr.st = st[0];
        run(q.get());
        check(rr);
        rr.note = "(" + std::to_string(copies.ptrs.size()) + " weight copies)";
      });
      if (!res) continue;
      table_row(*res);
      const double cur_best = res->st.best;  // before the pushes below (res points into g_results)
      if (rec.reps > 0) {
        Result c = derived_row(r, "records", "records", rec, "emollm", cur_best / rec.best,
                               std::to_string(kquant_record_rows()) +
                                   "-row records (kquant_repack, 2 MiB pages), interleaved; ratio = the GGUF row's time / its (>1: records faster)");
        c.bytes = double(rbytes);
        run_rec((*rcopies)[0]);
        check(c);
        push_row(c);
        Result pr = derived_row(r, "probe-same-size", "probe-same-size", same_size, "records", rec.best / same_size.best,
                                "read probe over the records' bytes, cold, same pool, interleaved; ratio = the records row's time / its (> 1: slower than a plain read)");
        pr.bytes = double(rbytes);
        pr.flops = 0;
        push_row(pr);
      }
      settle();
    }
}

// Batched decode (2 <= M <= 16, BF16 / F16): gemm_huge_pages on cold copies in 2 MiB pages (what a
// decoder runs with several sequences a step), interleaved call by call with its previous path
// (where one is kept; "prev" row), oneDNN's bf16
// matmul at the same M on as many cold copies of its reordered weights (x rounded to bf16;
// "onednn-il" row) and the read probe's loop over the same bytes ("probe-same-size" row).
// GB/s = weight bytes / time: what "streams the weights once at the bandwidth" means here.
void bench_batched_decode(ThreadPool& pool) {
  struct Shape {
    const char* name;
    int64_t N, K;
  };
  const Shape shapes[] = {{"llama1b.o", 2048, 2048}, {"llama1b.gate_up", 5632, 2048}, {"llama1b.down", 2048, 5632}};
  const int64_t Ms[] = {2, 4, 8, 16};
  bool header = false;
  for (const Shape& sh : shapes)
    for (DType t : {DType::BF16, DType::F16})
      for (int64_t M : Ms) {
        const std::string name = std::string("gemm_batched/") + sh.name + "/M" + std::to_string(M) + "/" + dtype_name(t);
        if (!selected(name)) continue;
        if (g_opt.list) { std::printf("%s\n", name.c_str()); continue; }
        if (isa_active() < Isa::Avx512) continue;
        if (!header) {
          table_header("Batched decode M = 2..16, cold weights in 2 MiB pages (gemm_huge_pages; prev / onednn-il / "
                       "probe-same-size interleaved call by call; ratio = that row's time / emollm's, >1: emollm faster)");
          header = true;
        }
        const int64_t N = sh.N, K = sh.K;
        progress(name + ": preparing weights");
        Buf<float> w = make_aligned<float>(size_t(N * K));
        fill_random(w.get(), N * K, 11 + uint64_t(N) * 7 + uint64_t(K), &pool);
        const size_t wb = dtype_row_bytes(t, K) * size_t(N);
        Buf<uint8_t> q = make_aligned<uint8_t>(wb);
        quantize_matrix(t, w.get(), q.get(), N, K, &pool);
        const int ncopies = decode_copies(wb);
        Copies copies(q.get(), wb, ncopies, &pool, true);
        Buf<float> x = make_aligned<float>(size_t(M * K)), y = make_aligned<float>(size_t(M * N));
        fill_random(x.get(), M * K, 17 + uint64_t(K), &pool);
        Result r;
        r.section = "gemm";
        r.name = name;
        r.label = std::string(sh.name) + " M=" + std::to_string(M);
        r.dtype = dtype_name(t);
        r.impl = "emollm";
        r.M = M;
        r.N = N;
        r.K = K;
        r.flops = 2.0 * double(M) * double(N) * double(K);
        r.bytes = double(wb);
        auto run = [&](const void* wp) { gemm_huge_pages(x.get(), K, wp, t, nullptr, y.get(), N, M, N, K, &pool); };
        // 9 <= M <= 16 (bf16): the previous path is run_range_bf16's row-block passes (set_small_m_onepass(false))
        const bool onepass_prev = M > gemm_detail::kSmallM && t == DType::BF16 && cpu_features().avx512bf16;
        // 9 <= M <= 16 (f16): the previous path is run_range<KF16>'s passes (set_small_m_f16_groups(false))
        const bool f16_groups_prev = M > gemm_detail::kSmallM && M <= 16 && t == DType::F16;
        // bf16 at bf16_dot_min_m() <= M <= 8 (M = 8 by default): the previous path is the exact-X
        // dot_streams (EMOLLM_BF16_DOT_MIN_M=0)
        const bool exact_prev = M <= gemm_detail::kSmallM && M >= gemm_detail::bf16_dot_min_m() && t == DType::BF16 &&
                                cpu_features().avx512bf16 && isa_active() >= Isa::Avx512;
        auto run_prev = [&](const void* wp) {
          if (exact_prev) {
            const int prev_min = gemm_detail::bf16_dot_min_m();
            gemm_detail::set_bf16_dot_min_m(int(gemm_detail::kSmallMMin));
            run(wp);
            gemm_detail::set_bf16_dot_min_m(prev_min);
            return;
          }
          with_switch(onepass_prev ? gemm_detail::set_small_m_onepass : gemm_detail::set_small_m_f16_groups, false,
                      [&] { run(wp); });
        };
        auto check = [&](Result& row) {
          set_check(row, gemm_check(x.get(), M, K, q.get(), t, N, y.get(), false), gemm_tolerance(t, false));
        };
        const bool has_prev = exact_prev || onepass_prev || f16_groups_prev;
        const bool reads = cpu_features().avx512f;
        bool dnnl_on = false;
#ifdef EMOLLM_HAVE_DNNL
        std::unique_ptr<DnnlGemm> dnnl;
        Buf<uint8_t> wd;
        if (g_have_dnnl) {
          wd = make_aligned<uint8_t>(size_t(N * K) * 2);
          quantize_matrix(DType::BF16, w.get(), wd.get(), N, K, &pool);
          dnnl.reset(new DnnlGemm);
          dnnl->init(M, N, K, x.get(), y.get(), reinterpret_cast<const uint16_t*>(wd.get()), ncopies);
          dnnl_on = true;
        }
#endif
        // bf16 below bf16_dot_min_m() on AVX512-BF16: the rounded-X streams kernel (EMOLLM_BF16_DOT_MIN_M=2) as a
        // "rounded-x" row
        const bool rounded_x = M < gemm_detail::bf16_dot_min_m() && t == DType::BF16 && cpu_features().avx512bf16 &&
                               isa_active() >= Isa::Avx512;
        auto run_rounded_x = [&](const void* wp) {
          const int prev_min = gemm_detail::bf16_dot_min_m();
          gemm_detail::set_bf16_dot_min_m(2);
          run(wp);
          gemm_detail::set_bf16_dot_min_m(prev_min);
        };
        Stats rounded;
        // bf16 on streams_bf16 (bf16_dot_min_m() <= M <= 8): X's K blocks of 32 KiB (set_small_m_streams_whole_k(false)) as
        // an "xblock-l1" row
        const bool xblock_l1 = exact_prev;
        auto run_xblock_l1 = [&](const void* wp) {
          with_switch(gemm_detail::set_small_m_streams_whole_k, false, [&] { run(wp); });
        };
        Stats xbl1;
        Stats prev, dn, probe;
        Result* res = run_case(r, [&](Result& rr) {
          std::vector<std::function<void(int)>> fns = {[&](int i) { run(copies[i]); }};
          if (has_prev) fns.push_back([&](int i) { run_prev(copies[i]); });
#ifdef EMOLLM_HAVE_DNNL
          if (dnnl_on) fns.push_back([&](int i) { dnnl->run(i); });
#endif
          if (reads) fns.push_back([&](int i) { read_probe_call(pool, copies[i], wb); });
          if (rounded_x) fns.push_back([&](int i) { run_rounded_x(copies[i]); });
          if (xblock_l1) fns.push_back([&](int i) { run_xblock_l1(copies[i]); });
          auto st = measure_interleaved(fns, dnnl_on ? 0.003 : 0.0);
          if (xblock_l1) xbl1 = st.back();
          if (rounded_x) rounded = st[st.size() - 1 - (xblock_l1 ? 1 : 0)];
          rr.st = st[0];
          size_t j = 1;
          if (has_prev) prev = st[j++];
          if (dnnl_on) dn = st[j++];
          if (reads) probe = st[j++];
          if (dnnl_on) {
            rr.ratio_vs = "onednn-il";
            rr.ratio = dn.best / rr.st.best;
          }
          run(q.get());
          check(rr);
          rr.note = "(" + std::to_string(copies.ptrs.size()) + " weight copies)";
        });
        if (!res) continue;
        const double best = res->st.best;  // before the pushes below (res points into g_results)
        table_row(*res);
        auto add = [&](const char* impl, const Stats& st, const std::string& note, bool checked,
                       const std::function<void()>& again) {
          Result p = derived_row(r, impl, impl, st, impl, st.best / best, note);
          if (checked) {
            again();
            if (std::strcmp(impl, "onednn-il") == 0 || std::strcmp(impl, "rounded-x") == 0)  // x rounded to bf16
              set_check(p, gemm_check(x.get(), M, K, q.get(), t, N, y.get(), true), gemm_tolerance(t, true));
            else
              check(p);
          }
          push_row(p);
        };
        if (has_prev)
          add("prev", prev,
              onepass_prev ? "previous path (set_small_m_onepass(false): run_range_bf16's row-block passes), interleaved"
              : f16_groups_prev ? "previous path (set_small_m_f16_groups(false): run_range<KF16>, the next group not prefetched), interleaved"
                                : "previous path (EMOLLM_BF16_DOT_MIN_M=0: exact x, dot_streams), interleaved",
              true, [&] { run_prev(q.get()); });
#ifdef EMOLLM_HAVE_DNNL
        if (dnnl_on)
          add("onednn-il", dn, "oneDNN bf16 matmul (" + dnnl->impl + ", x rounded to bf16), interleaved", true,
              [&] { dnnl->run(0); });
#endif
        if (reads)
          add("probe-same-size", probe, "read probe (4 streams + 1 KiB prefetch) over the same copies, interleaved", false,
              [] {});
        if (rounded_x)
          add("rounded-x", rounded, "opt-in EMOLLM_BF16_DOT_MIN_M=2: x rounded to bf16, streams_bf16, interleaved",
              true, [&] { run_rounded_x(q.get()); });
        if (xblock_l1)
          add("xblock-l1", xbl1, "streams_bf16 in K blocks of 32 KiB of x (set_small_m_streams_whole_k(false)), interleaved",
              true, [&] { run_xblock_l1(q.get()); });
        settle();
      }
}

// ============================================================================ attention
struct AttnCase {
  const char* name;
  const char* label;
  int64_t n_q, n_kv, n_heads, n_kv_heads, head_dim;
  bool causal;
  bool decode;
};

void bench_attention(ThreadPool& pool) {
  const AttnCase cases[] = {
      {"attention/llama.prefill", "llama prefill n=512", 512, 512, 32, 32, 128, true, false},
      {"attention/llama.decode", "llama decode kv=2048", 1, 2048, 32, 32, 128, true, true},
      {"attention/clip", "clip n=577 bidir", 577, 577, 16, 16, 64, false, false},
  };
  bool header = false;
  for (const AttnCase& c : cases) {
    Result r;
    r.section = "attention";
    r.name = c.name;
    r.label = c.label;
    r.dtype = "f32";
    r.impl = "emollm";
    if (!selected(r.name)) continue;
    if (g_opt.list) { run_case(r, nullptr); continue; }
    AttentionParams p;
    p.n_q = c.n_q; p.n_kv = c.n_kv; p.n_heads = c.n_heads; p.n_kv_heads = c.n_kv_heads; p.head_dim = c.head_dim;
    p.ldq = p.ldo = c.n_heads * c.head_dim;
    p.ldk = p.ldv = c.n_kv_heads * c.head_dim;
    p.causal = c.causal;
    p.q_pos0 = c.causal ? c.n_kv - c.n_q : 0;
    double pairs = 0;
    for (int64_t i = 0; i < c.n_q; i++) pairs += c.causal ? double(std::min(c.n_kv, p.q_pos0 + i + 1)) : double(c.n_kv);
    r.flops = 4.0 * double(c.n_heads) * double(c.head_dim) * pairs;
    size_t kv_elems = size_t(c.n_kv * p.ldk);
    int copies = 1;
    if (c.decode) {  // KV cache read per token: rotate caches so it streams from memory
      r.bytes = 2.0 * double(kv_elems) * sizeof(float);
      copies = decode_copies(size_t(r.bytes));
      r.note = "(" + std::to_string(copies) + " KV copies)";
    }
    Buf<float> q = make_aligned<float>(size_t(c.n_q * p.ldq)), o = make_aligned<float>(size_t(c.n_q * p.ldo));
    std::vector<Buf<float>> ks, vs;
    fill_random(q.get(), c.n_q * p.ldq, 3, &pool);
    for (int i = 0; i < copies; i++) {
      ks.push_back(make_aligned<float>(kv_elems));
      vs.push_back(make_aligned<float>(kv_elems));
      fill_random(ks.back().get(), int64_t(kv_elems), 5, &pool);
      fill_random(vs.back().get(), int64_t(kv_elems), 7, &pool);
    }
    run_case(r, [&](Result& res) {
      res.st = measure([&](int i) { attention(q.get(), ks[size_t(i % copies)].get(), vs[size_t(i % copies)].get(), o.get(), p, &pool); });
      // check the first and last head against the scalar reference, one head at a time
      double max_diff = 0, sum_sq = 0, cnt = 0;
      for (int64_t h : {int64_t(0), c.n_heads - 1}) {
        AttentionParams p1 = p;
        p1.n_heads = p1.n_kv_heads = 1;
        p1.ldo = c.head_dim;
        int64_t kvh = h / (c.n_heads / c.n_kv_heads);
        std::vector<float> ref(size_t(c.n_q * c.head_dim));
        ref::attention(q.get() + h * c.head_dim, ks[0].get() + kvh * c.head_dim, vs[0].get() + kvh * c.head_dim,
                       ref.data(), p1);
        attention(q.get(), ks[0].get(), vs[0].get(), o.get(), p, &pool);
        for (int64_t i = 0; i < c.n_q; i++)
          for (int64_t d = 0; d < c.head_dim; d++) {
            double a = o[size_t(i * p.ldo + h * c.head_dim + d)], b = ref[size_t(i * c.head_dim + d)];
            max_diff = std::max(max_diff, std::isfinite(a) ? std::fabs(a - b) : INFINITY);
            sum_sq += b * b;
            cnt++;
          }
      }
      set_check(res, max_diff / std::max(1e-30, std::sqrt(sum_sq / cnt)), 1e-3);
    });
    if (!header) { table_header("attention (f32, flash-style; GFLOP/s = 4*heads*head_dim*pairs / t)"); header = true; }
    table_row(g_results.back());
  }
}

// The vision towers' attention on the AVX512-BF16 unit (AttentionParams::bf16_products: what a
// bf16 CLIP tower runs; attention_bidir_bf16.cpp), CLIP-L/14-336's 577 tokens x 16 heads x 64,
// checked against the f32 reference (bf16 products: the path's stated bound ~2^-8 max|v|, here
// relative to the outputs' rms). (Its "prev" row, the previous softmax loop, row-max pass and
// per-call buffers, went with their switches in session 23.)
void bench_attention_bf16(ThreadPool& pool) {
  Result r;
  r.section = "attention";
  r.name = "attention/clip/bf16";
  r.label = "clip n=577 bidir bf16";
  r.dtype = "bf16";
  r.impl = "emollm";
  r.bf16_math = true;
  if (!selected(r.name)) return;
  if (g_opt.list) { run_case(r, nullptr); return; }
  const int64_t T = 577, H = 16, D = 64;
  AttentionParams p;
  p.n_q = p.n_kv = T; p.n_heads = p.n_kv_heads = H; p.head_dim = D;
  p.ldq = p.ldk = p.ldv = p.ldo = H * D;
  p.causal = false; p.q_pos0 = 0; p.bf16_products = true;
  if (!attention_detail::bidir_bf16_applies(p)) return;  // no AVX512-BF16 here
  r.flops = 4.0 * double(H) * double(D) * double(T) * double(T);
  Buf<float> q = make_aligned<float>(size_t(T * H * D)), k = make_aligned<float>(size_t(T * H * D)),
             v = make_aligned<float>(size_t(T * H * D)), o = make_aligned<float>(size_t(T * H * D));
  fill_random(q.get(), T * H * D, 3, &pool);
  fill_random(k.get(), T * H * D, 5, &pool);
  fill_random(v.get(), T * H * D, 7, &pool);
  Result* res = run_case(r, [&](Result& rr) {
    rr.st = measure([&](int) { attention(q.get(), k.get(), v.get(), o.get(), p, &pool); });
    double max_diff = 0, sum_sq = 0, cnt = 0;
    for (int64_t h : {int64_t(0), H - 1}) {
      AttentionParams p1 = p;
      p1.n_heads = p1.n_kv_heads = 1;
      p1.ldo = D;
      p1.bf16_products = false;
      std::vector<float> ref(size_t(T * D));
      ref::attention(q.get() + h * D, k.get() + h * D, v.get() + h * D, ref.data(), p1);
      attention(q.get(), k.get(), v.get(), o.get(), p, &pool);
      for (int64_t i = 0; i < T; i++)
        for (int64_t d = 0; d < D; d++) {
          double a = o[size_t(i * p.ldo + h * D + d)], b = ref[size_t(i * D + d)];
          max_diff = std::max(max_diff, std::isfinite(a) ? std::fabs(a - b) : INFINITY);
          sum_sq += b * b;
          cnt++;
        }
    }
    set_check(rr, max_diff / std::max(1e-30, std::sqrt(sum_sq / cnt)), 0.2);
  });
  if (res) table_row(*res);
}

// The two decode attention benchmarks' shapes, and one query's parameters over a paged cache of
// n_kv tokens in `page`-token pages.
struct DecodeAttnShape {
  const char* name;
  int64_t heads, kv_heads, head_dim;
  std::vector<int64_t> kvs;
};
AttentionParams paged_decode_params(const DecodeAttnShape& sh, int64_t n_kv, int64_t page) {
  AttentionParams p;
  p.n_q = 1; p.n_kv = n_kv; p.n_heads = sh.heads; p.n_kv_heads = sh.kv_heads; p.head_dim = sh.head_dim;
  p.ldq = p.ldo = sh.heads * sh.head_dim;
  p.ldk = p.ldv = sh.kv_heads * sh.head_dim;
  p.causal = true;
  p.q_pos0 = n_kv - 1;
  p.kv_block_size = page;
  return p;
}

// Decode attention over a paged f32 KV cache (what a decode step's attention_batch runs): one
// query, 64-token pages, the 1.1B shape (32 q heads, 4 kv heads, head_dim 64) and the 7B shape
// (32 / 32 / 128) over several cache lengths. The split decode path (the default) interleaved call
// by call with the previous tiled path (set_decode_split(false)) as an "emollm" row and a "prev"
// row (ratio = prev time / emollm time, >1: the split path is faster). GB/s = K + V bytes read;
// the caches rotate over copies (> 3x L3) so they stream from memory as in a decode step.
void bench_attention_decode(ThreadPool& pool) {
  const DecodeAttnShape shapes[] = {{"llama1b", 32, 4, 64, {128, 256, 512, 768, 2048}}, {"llama", 32, 32, 128, {128, 512, 2048}}};
  constexpr int64_t kPage = 64;
  bool header = false;
  for (const DecodeAttnShape& sh : shapes)
    for (int64_t n_kv : sh.kvs) {
      const std::string name = std::string("attention/") + sh.name + ".decode.paged/kv" + std::to_string(n_kv);
      if (!selected(name)) continue;
      if (g_opt.list) { std::printf("%s\n", name.c_str()); continue; }
      if (!header) {
        table_header("decode attention, paged f32 KV (64-token pages; prev = the previous tiled path, interleaved; ratio = prev time / emollm time, >1: split path faster)");
        header = true;
      }
      AttentionParams p = paged_decode_params(sh, n_kv, kPage);
      const int64_t n_pages = (n_kv + kPage - 1) / kPage;
      const size_t elems = size_t(n_pages * kPage * p.ldk);
      const double bytes = 2.0 * double(n_kv) * double(p.ldk) * sizeof(float);
      const int copies = decode_copies(size_t(bytes));
      Buf<float> q = make_aligned<float>(size_t(p.ldq)), o = make_aligned<float>(size_t(p.ldo));
      fill_random(q.get(), p.ldq, 3, &pool);
      std::vector<Buf<float>> ks, vs;
      std::vector<std::vector<const float*>> kt(static_cast<size_t>(copies)), vt(static_cast<size_t>(copies));
      for (int c = 0; c < copies; c++) {
        ks.push_back(make_aligned<float>(elems));
        vs.push_back(make_aligned<float>(elems));
        fill_random(ks.back().get(), int64_t(elems), 5, &pool);
        fill_random(vs.back().get(), int64_t(elems), 7, &pool);
        for (int64_t b = 0; b < n_pages; b++) {
          kt[size_t(c)].push_back(ks.back().get() + b * kPage * p.ldk);
          vt[size_t(c)].push_back(vs.back().get() + b * kPage * p.ldv);
        }
      }
      auto params = [&](int i) {
        AttentionParams pi = p;
        pi.k_blocks = kt[size_t(i % copies)].data();
        pi.v_blocks = vt[size_t(i % copies)].data();
        return pi;
      };
      auto run = [&](int i) {
        const AttentionBatchItem it{q.get(), nullptr, nullptr, o.get(), params(i)};
        attention_batch(&it, 1, &pool);
      };
      auto run_prev = [&](int i) { with_switch(attention_detail::set_decode_split, false, [&] { run(i); }); };
      auto run_packed = [&](int i) { with_switch(attention_detail::set_decode_inplace, false, [&] { run(i); }); };
      auto check = [&](Result& row) {
        std::vector<float> ref(size_t(p.ldo));
        const AttentionParams p0 = params(0);
        ref::attention(q.get(), nullptr, nullptr, ref.data(), p0);
        double max_diff = 0, sum_sq = 0;
        for (int64_t d = 0; d < p.ldo; d++) {
          const double a = o[size_t(d)], b = ref[size_t(d)];
          max_diff = std::max(max_diff, std::isfinite(a) ? std::fabs(a - b) : INFINITY);
          sum_sq += b * b;
        }
        set_check(row, max_diff / std::max(1e-30, std::sqrt(sum_sq / double(p.ldo))), 1e-3);
      };
      Result r;
      r.section = "attention";
      r.name = name;
      r.label = std::string(sh.name) + " decode kv=" + std::to_string(n_kv);
      r.dtype = "f32";
      r.impl = "emollm";
      r.flops = 4.0 * double(sh.heads) * double(sh.head_dim) * double(n_kv);
      r.bytes = bytes;
      Stats prev, packed;
      Result* res = run_case(r, [&](Result& rr) {
        auto st = measure_interleaved({run, run_prev, run_packed});
        rr.st = st[0];
        prev = st[1];
        packed = st[2];
        rr.ratio_vs = "prev";
        rr.ratio = prev.best / rr.st.best;
        run(0);
        check(rr);
        rr.note = "(" + std::to_string(copies) + " KV copies)";
      });
      if (!res) continue;
      table_row(*res);
      const double inplace_best = res->st.best;  // res points into g_results, which grows below
      Result pr = derived_row(r, "prev", "prev", prev, "", 0, "previous tiled path (set_decode_split(false)), interleaved");
      run_prev(0);
      check(pr);
      push_row(pr);
      Result pk = derived_row(r, "packed", "packed", packed, "packed", packed.best / inplace_best,
                              "rows packed into scratch first (set_decode_inplace(false)), interleaved; ratio = this time / emollm's (>1: in place faster)");
      run_packed(0);
      check(pk);
      push_row(pk);
      settle();
    }
}

// Decode attention at the 7B shape (32 / 32 heads x 128: one query row per kv head) over paged
// f32 and f16 caches in 2 MiB pages (as a context keeps them): the default path interleaved call
// by call with the previous one (a switch of attention_internal.h set false), a derived row,
// ratio = its time / the default's (>1: the default faster). Hot too with EMOLLM_BENCH_ROTATE_L3X
// small (the K/V then come from L3). Three switches (bench_attention_decode_pv_wide / _qk_wide /
// _pv_pairs; pv_pairs is described at its function):
//  - pv_wide: P V's whole head row in one register tile vs two passes of 4 chunks ("pv2pass";
//    same bits, test attention_decode_pv_wide_same_bits);
//  - qk_wide: Q K^T of full sub-blocks through qk16 (the 16 key rows as 4 bases plus strides, all
//    in registers) vs the generic kernel ("qkprev"; same bits, test attention_decode_qk_wide_same_bits).
struct DecodeSwitchAb {
  const char* section;  // attention/llama.decode.<section>/...
  const char* header;
  void (*set)(bool);
  const char* row;
  const char* note;
};
void bench_attention_decode_7b_switch(ThreadPool& pool, const DecodeSwitchAb& ab) {
  const DecodeAttnShape sh{"llama", 32, 32, 128, {128, 544, 2048}};
  const DType types[] = {DType::F32, DType::F16};
  constexpr int64_t kPage = 64;
  bool header = false;
  for (int64_t n_kv : sh.kvs)
    for (DType t : types) {
      const std::string name = std::string("attention/") + sh.name + ".decode." + ab.section + "/" + dtype_name(t) + "/kv" + std::to_string(n_kv);
      if (!selected(name)) continue;
      if (g_opt.list) { std::printf("%s\n", name.c_str()); continue; }
      if (!header) {
        table_header(ab.header);
        header = true;
      }
      AttentionParams p = paged_decode_params(sh, n_kv, kPage);
      p.kv_dtype = t;
      const size_t esz = t == DType::F32 ? 4 : 2;
      const int64_t n_pages = (n_kv + kPage - 1) / kPage;
      const size_t elems = size_t(n_pages * kPage * p.ldk);
      const double bytes = 2.0 * double(n_kv) * double(p.ldk) * double(esz);
      const int copies = decode_copies(size_t(bytes));
      Buf<float> q = make_aligned<float>(size_t(p.ldq)), o = make_aligned<float>(size_t(p.ldo));
      fill_random(q.get(), p.ldq, 3, &pool);
      Buf<float> tmp = make_aligned<float>(elems);
      std::vector<Buf<uint8_t>> bufs;
      std::vector<std::vector<const float*>> kt(static_cast<size_t>(copies)), vt(static_cast<size_t>(copies));
      for (int c = 0; c < copies; c++) {
        const uint8_t* kv_base[2];
        for (int kv = 0; kv < 2; ++kv) {
          Buf<uint8_t> b = alloc_huge(elems * esz);
          fill_random(tmp.get(), int64_t(elems), kv ? 7 : 5, &pool);
          if (t == DType::F32)
            std::memcpy(b.get(), tmp.get(), elems * esz);
          else
            convert(tmp.get(), DType::F32, b.get(), t, int64_t(elems), &pool);
          kv_base[kv] = b.get();
          bufs.push_back(std::move(b));
        }
        for (int64_t bl = 0; bl < n_pages; bl++) {
          kt[size_t(c)].push_back(reinterpret_cast<const float*>(kv_base[0] + size_t(bl * kPage * p.ldk) * esz));
          vt[size_t(c)].push_back(reinterpret_cast<const float*>(kv_base[1] + size_t(bl * kPage * p.ldv) * esz));
        }
      }
      auto run = [&](int i) {
        AttentionParams pi = p;
        pi.k_blocks = kt[size_t(i % copies)].data();
        pi.v_blocks = vt[size_t(i % copies)].data();
        const AttentionBatchItem it{q.get(), nullptr, nullptr, o.get(), pi};
        attention_batch(&it, 1, &pool);
      };
      auto run_prev = [&](int i) { with_switch(ab.set, false, [&] { run(i); }); };
      Result r;
      r.section = "attention";
      r.name = name;
      r.label = std::string(sh.name) + " decode kv=" + std::to_string(n_kv) + " " + dtype_name(t) + " KV";
      r.dtype = dtype_name(t);
      r.impl = "emollm";
      r.flops = 4.0 * double(sh.heads) * double(sh.head_dim) * double(n_kv);
      r.bytes = bytes;
      Stats prev;
      Result* res = run_case(r, [&](Result& rr) {
        auto st = measure_interleaved({run, run_prev});
        rr.st = st[0];
        prev = st[1];
        rr.note = "(" + std::to_string(copies) + " KV copies, 2 MiB pages)";
      });
      if (!res) continue;
      table_row(*res);
      push_row(derived_row(*res, ab.row, ab.row, prev, "emollm", prev.best / res->st.best, ab.note));
      settle();
    }
}

void bench_attention_decode_pv_wide(ThreadPool& pool) {
  bench_attention_decode_7b_switch(
      pool, {"pv_wide",
             "decode attention, 7B shape (one query row per kv head): P V in one tile vs two passes (interleaved; ratio = two passes' time / the default's)",
             attention_detail::set_decode_pv_wide, "pv2pass",
             "P V in two passes of 4 chunks (set_decode_pv_wide(false)), interleaved; ratio = its time / the default's"});
}

// pv_pairs: P V of two adjacent kv heads a call vs one head a call ("pv1head"; same bits, test
// attention_decode_pv_pairs_same_bits).
void bench_attention_decode_pv_pairs(ThreadPool& pool) {
  bench_attention_decode_7b_switch(
      pool, {"pv_pairs",
             "decode attention, 7B shape (one query row per kv head): P V two kv heads a call vs one (interleaved; ratio = one head's time / the default's)",
             attention_detail::set_decode_pv_pairs, "pv1head",
             "P V one kv head a call (set_decode_pv_pairs(false)), interleaved; ratio = its time / the default's"});
}

void bench_attention_decode_qk_wide(ThreadPool& pool) {
  bench_attention_decode_7b_switch(
      pool, {"qk_wide",
             "decode attention, 7B shape (one query row per kv head): Q K^T through qk16 vs the generic kernel (interleaved; ratio = generic time / the default's)",
             attention_detail::set_decode_qk_wide, "qkprev",
             "Q K^T by the generic kernel (set_decode_qk_wide(false)), interleaved; ratio = its time / the default's"});
}

// The bf16 GEMM at the shapes where it was closest to oneDNN or below it (session 17): the down
// projections (TinyLlama-1.1B K = 5632, LLaMA-7B K = 11008) at M = 512, CLIP's q / k / v / o and
// fc2 at M = 577, LLaMA-7B's gate and o (and since session 22 the 1.1B q / k / v / o and gate / up and
// CLIP's fc1, the gemm section's other M >= 512 bf16 shapes): gemm() on the row-major matrix (W packed a block at a
// time) and gemm_bf16_panels (pre-packed W), each interleaved call by call with oneDNN's bf16
// matmul; ratio = oneDNN's time / ours. At K > 4096 without bias (the down projections) gemm() and
// huge take the W-broadcast driver (W read in place, X packed transposed; session 23) and the
// wpack-prev row is the packed-W driver. Impl huge: gemm_huge_pages on W in 2 MiB pages (what a
// decoder's prefill runs; gemm() here has W in 4 KiB pages). (The xpf-off row, without the
// microkernel's X prefetch, went with its switch in session 22, and the wpf-prev row with the
// unprefetched W pack it measured: neutral on a quiet machine.) At K > 4096 (the down projections)
// the gemm / huge rows are followed by wpack-prev: the same call with W packed a block at a time
// (set_bf16_gemm_wbcast(false)) instead of broadcast from its rows, interleaved; ratio = its time /
// ours, and whether the two gave the same bits.
// EMOLLM_BENCH_LONGK_CPU=1: process CPU time, EMOLLM_BENCH_LONGK_ROUNDS rounds (default 15; use at
// 1 thread on a loaded machine; oneDNN's note gives the median of the per-round ratios). Checked
// against a double reference (gemm_check: max |diff| / RMS over 64 samples). (Session 17's
// variants here, other one-block limits and even k blocks, were removed with those opt-ins in
// session 18.)
void bench_gemm_bf16_long_k(ThreadPool& pool) {
  struct Shape { const char* name; int64_t M, N, K; };
  const Shape shapes[] = {{"llama1b.down", 512, 2048, 5632}, {"llama.down", 512, 4096, 11008},
                          {"clip.qkvo", 577, 1024, 1024},    {"clip.fc2", 577, 1024, 4096},
                          {"llama.gate", 512, 11008, 4096},  {"llama.o", 512, 4096, 4096},
                          // the rest of the gemm section's M >= 512 bf16 shapes, so that one
                          // EMOLLM_BENCH_LONGK_CPU=1 run gives the whole table interleaved
                          {"llama1b.qkvo", 512, 2048, 2048}, {"llama1b.gate_up", 512, 5632, 2048},
                          {"clip.fc1", 577, 4096, 1024}};
  bool header = false;
  for (const Shape& sh : shapes)
    for (const char* impl : {"gemm", "huge", "panels"}) {
      const bool pan = std::strcmp(impl, "panels") == 0;
      const bool huge = std::strcmp(impl, "huge") == 0;  // W in 2 MiB pages: what a decoder's prefill runs
      const int64_t M = sh.M;
      const std::string name = std::string("gemm/") + sh.name + "/M" + std::to_string(M) + "/bf16/longk-" + impl;
      if (!selected(name)) continue;
      if (g_opt.list) { std::printf("%s\n", name.c_str()); continue; }
      if (pan && !(bf16_panels_usable() && isa_active() >= Isa::Avx512)) continue;
      if (!header) {
        table_header("bf16 GEMM at the long-K and CLIP shapes, gemm() and panels vs oneDNN (interleaved; ratio = oneDNN's time / ours)");
        header = true;
      }
      const int64_t N = sh.N, K = sh.K;
      Buf<float> X = make_aligned<float>(size_t(M * K)), Wf = make_aligned<float>(size_t(N * K));
      fill_random(X.get(), M * K, 11, &pool);
      fill_random(Wf.get(), N * K, 13, &pool);
      Buf<uint8_t> W = huge ? alloc_huge(size_t(N * K) * 2) : make_aligned<uint8_t>(size_t(N * K) * 2);
      convert(Wf.get(), DType::F32, W.get(), DType::BF16, N * K, &pool);
      Buf<uint8_t> P;
      if (pan) {
        P = make_aligned<uint8_t>(bf16_panels_bytes(N, K));
        bf16_pack_panels(W.get(), N, K, P.get(), &pool);
      }
      auto call = [&](float* y) {
        if (pan)
          gemm_bf16_panels(X.get(), K, P.get(), nullptr, y, N, M, N, K, &pool);
        else if (huge)
          gemm_huge_pages(X.get(), K, W.get(), DType::BF16, nullptr, y, N, M, N, K, &pool);
        else
          gemm(X.get(), K, W.get(), DType::BF16, nullptr, y, N, M, N, K, &pool);
      };
      Buf<float> Y = make_aligned<float>(size_t(M * N)), Yp = make_aligned<float>(size_t(M * N));
      std::vector<std::function<void(int)>> fns = {[&](int) { call(Y.get()); }};
      // gemm() / huge where they take the W-broadcast driver (the kernels' own condition; no bias
      // here): the packed-W driver (set_bf16_gemm_wbcast(false)) interleaved too
      const bool prev = !pan && bf16_panels_usable() && gemm_detail::bf16_gemm_wbcast_applies(K, false);
      if (prev)
        fns.push_back([&](int) {
          gemm_detail::set_bf16_gemm_wbcast(false);
          call(Yp.get());
          gemm_detail::set_bf16_gemm_wbcast(true);
        });
#ifdef EMOLLM_HAVE_DNNL
      std::unique_ptr<DnnlGemm> dnnl;
      Buf<float> Yd = make_aligned<float>(size_t(M * N));
      if (g_have_dnnl) {
        dnnl.reset(new DnnlGemm);
        dnnl->init(M, N, K, X.get(), Yd.get(), reinterpret_cast<const uint16_t*>(W.get()), 1);
        fns.push_back([&](int) { dnnl->run(0); });
      }
#endif
      fns[0](0);
      const double err = gemm_check(X.get(), M, K, W.get(), DType::BF16, N, Y.get(), true);
      bool same_bits = true;
      if (prev) {
        fns[1](0);
        same_bits = std::memcmp(Y.get(), Yp.get(), size_t(M * N) * 4) == 0;
      }
      double prev_round = NAN;
      Result r;
      r.section = "gemm";
      r.name = name;
      r.label = std::string(sh.name) + " M=" + std::to_string(M) + " " + impl;
      r.dtype = "bf16";
      r.impl = "emollm";
      r.M = M, r.N = N, r.K = K;
      r.flops = 2.0 * double(M) * double(N) * double(K);
      r.bf16_math = true;
      std::vector<Stats> st;
      double dn_round = NAN;  // CPU-time mode: median over rounds of (oneDNN's time / ours)
      Result* res = run_case(r, [&](Result& rr) {
        // EMOLLM_BENCH_LONGK_CPU=1: process CPU time a call (1 thread on a loaded machine: the
        // time the call ran, not the time it waited for a core), rounds of every variant in turn
        if (const char* c = std::getenv("EMOLLM_BENCH_LONGK_CPU"); c && std::strcmp(c, "1") == 0) {
          std::vector<std::vector<double>> ts(fns.size());
          const int rounds = int(std::max<long long>(3, env_int("EMOLLM_BENCH_LONGK_ROUNDS", 15)));
          for (int round = 0; round < rounds; ++round)
            for (size_t k = 0; k < fns.size(); ++k) {
              const double t0 = process_cpu_s();
              fns[k](0);
              ts[k].push_back(process_cpu_s() - t0);
            }
          st.clear();
          if (ts.size() > 1) {
            std::vector<double> rd;
            for (size_t i = 0; i < ts[0].size(); ++i) rd.push_back(ts.back()[i] / ts[0][i]);
            std::sort(rd.begin(), rd.end());
            dn_round = rd[rd.size() / 2];
            if (prev) {
              rd.clear();
              for (size_t i = 0; i < ts[0].size(); ++i) rd.push_back(ts[1][i] / ts[0][i]);
              std::sort(rd.begin(), rd.end());
              prev_round = rd[rd.size() / 2];
            }
          }
          for (auto& v : ts) {
            std::sort(v.begin(), v.end());
            Stats x;
            x.best = v.front(), x.median = v[v.size() / 2], x.reps = int(v.size());
            st.push_back(x);
          }
        } else {
          // with oneDNN among them, the untimed 3 ms before each call (as the gemm section): its
          // OpenMP team still spinning after its call slows the variant after it by 20-40% on 2
          // cores (session 17: whichever blocking came first looked 1.2-1.4x slower); with
          // libgomp's default spin 3 ms is not enough: bench:kernels sets GOMP_SPINCOUNT (kernels.mjs)
          st = measure_interleaved(fns, fns.size() > 1 ? 0.003 : 0.0);
        }
        rr.st = st[0];
        char b[160];
        std::snprintf(b, sizeof b, "%s; err/rms %.2e",
                      pan ? "pre-packed panels"
                          : huge ? (prev ? "row-major W in 2 MiB pages (gemm_huge_pages, a decoder's prefill), read in place (W broadcast)"
                                         : "row-major W in 2 MiB pages (gemm_huge_pages, a decoder's prefill), packed a block at a time")
                                 : (prev ? "row-major W in 4 KiB pages, read in place (W broadcast)"
                                         : "row-major W in 4 KiB pages, packed a block at a time"),
                      err);
        rr.note = b;
        rr.check = err < 2e-2 ? "ok" : "BAD";
      });
      if (!res) continue;
      table_row(*res);
      const Result base = *res;  // push_row may move the results
      if (prev) {
        char pnote[200];
        std::snprintf(pnote, sizeof pnote, "W packed a block at a time (set_bf16_gemm_wbcast(false)), interleaved; ratio = its time / ours%s; %s",
                      std::isnan(prev_round) ? "" : (" (median round " + std::to_string(prev_round).substr(0, 5) + ")").c_str(),
                      same_bits ? "same bits" : "BITS DIFFER");
        push_row(derived_row(base, "emollm", "wpack-prev", st[1], "emollm", st[1].best / base.st.best, pnote));
      }
      if (st.size() > (prev ? 2u : 1u)) {
        char dnote[160];
        std::snprintf(dnote, sizeof dnote, "oneDNN bf16 matmul, interleaved with the row above; ratio = its time / ours%s",
                      std::isnan(dn_round) ? "" : (" (median round " + std::to_string(dn_round).substr(0, 5) + ")").c_str());
        push_row(derived_row(base, "onednn", "onednn", st.back(), "emollm", st.back().best / base.st.best, dnote));
      }
      settle();
    }
}

// ============================================================================ anchor order
// Opt-in (a --filter naming order/...; not part of a full run): does an anchor library's idle
// threads slow the emollm call timed right after it, or emollm's pool the anchor call after it?
// Per anchor (oneDNN bf16, OpenBLAS f32) on LLaMA-7B's q/k/v/o shape at M = 1 (cold weights, the
// decode rows' rotation) and M = 512: (1) the CPU time the process burns while the caller sleeps
// S ms after one call (idle workers spinning: oneDNN's OpenMP team, OpenBLAS's pthreads, our
// pool), (2) emollm timed right after an anchor call vs after the same call and a 250 ms sleep,
// (3) the anchor right after an emollm call vs after the sleep; rounds of the four interleaved in
// one process. The spin settings are read when each library starts (GOMP_SPINCOUNT /
// OMP_WAIT_POLICY, OPENBLAS_THREAD_TIMEOUT): compare them across runs of this section.
void bench_anchor_order(ThreadPool& pool) {
  if (g_opt.filters.empty() && !g_opt.list) return;
  struct Case { const char* dtype; const char* anchor; int64_t M; };
  const Case cases[] = {{"bf16", "onednn", 1}, {"bf16", "onednn", 512}, {"f32", "openblas", 1}, {"f32", "openblas", 512}};
  const int64_t N = 4096, K = 4096;
  const double gap_s = 0.25;  // past OpenBLAS's default 2^28-cycle spin (128 ms at a 2.1 GHz TSC)
  int rounds = 10;
  if (const char* e = std::getenv("EMOLLM_BENCH_ORDER_ROUNDS")) rounds = std::max(1, std::atoi(e));
  bool header = false;
  for (const Case& c : cases) {
    const std::string name = std::string("order/llama.qkvo/M") + std::to_string(c.M) + "/" + c.dtype + "/" + c.anchor;
    if (!selected(name)) continue;
    if (g_opt.list) { std::printf("%s\n", name.c_str()); continue; }
    if (!header) {
      table_header("Anchor order: emollm right after an anchor call vs after a 250 ms sleep, and the anchor after emollm (rounds interleaved; ratio = after / after the sleep, >1: slowed by the other's idle threads)");
      header = true;
    }
    const bool bf16 = std::strcmp(c.dtype, "bf16") == 0;
    const int64_t M = c.M;
    Result r;
    r.section = "gemm";
    r.name = name;
    r.label = "llama.qkvo M=" + std::to_string(M) + " " + (M == 1 ? "gemv" : "gemm");
    r.dtype = c.dtype;
    r.impl = "emollm-gap";
    r.M = M, r.N = N, r.K = K;
    std::vector<Stats> st;
    std::string spin_note;
    Result* res = run_case(r, [&](Result& rr) {
      if (bf16 ? !g_have_dnnl : !g_have_openblas) throw std::runtime_error(kAnchorHint);
      Buf<float> Wf = make_aligned<float>(size_t(N * K)), X = make_aligned<float>(size_t(M * K)),
                 Y = make_aligned<float>(size_t(M * N)), Ya = make_aligned<float>(size_t(M * N));
      fill_random(Wf.get(), N * K, 21, &pool);
      fill_random(X.get(), M * K, 23, &pool);
      const size_t wbytes = size_t(N * K) * (bf16 ? 2 : 4);
      Buf<uint8_t> Wb;
      if (bf16) {
        Wb = make_aligned<uint8_t>(wbytes);
        convert(Wf.get(), DType::F32, Wb.get(), DType::BF16, N * K, &pool);
      }
      const void* W = bf16 ? static_cast<const void*>(Wb.get()) : static_cast<const void*>(Wf.get());
      const int ncopies = M == 1 ? decode_copies(wbytes) : 1;
      Copies ours(W, wbytes, ncopies, &pool);
      std::function<void(int)> emollm = [&](int i) {
        gemm(X.get(), K, ours[i], bf16 ? DType::BF16 : DType::F32, nullptr, Y.get(), N, M, N, K, &pool);
      };
      std::function<void(int)> anchor;
#ifdef EMOLLM_HAVE_DNNL
      std::unique_ptr<DnnlGemm> dn;
      if (bf16) {
        dn.reset(new DnnlGemm);
        dn->init(M, N, K, X.get(), Ya.get(), reinterpret_cast<const uint16_t*>(Wb.get()), ncopies);
        anchor = [&](int i) { dn->run(i); };
      }
#endif
#ifdef EMOLLM_HAVE_OPENBLAS
      std::unique_ptr<Copies> theirs;
      if (!bf16) {
        theirs.reset(new Copies(Wf.get(), wbytes, ncopies, &pool));
        anchor = [&](int i) {
          const float* w = static_cast<const float*>((*theirs)[i]);
          if (M == 1)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, int(N), int(K), 1.0f, w, int(K), X.get(), 1, 0.0f, Ya.get(), 1);
          else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(M), int(N), int(K), 1.0f, X.get(), int(K), w,
                        int(K), 0.0f, Ya.get(), int(N));
        };
      }
#endif
      if (!anchor) throw std::runtime_error(kAnchorHint);
      int call = 0;
      auto sleep = [](double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); };
      for (int w = 0; w < 3; ++w) { emollm(call++); anchor(call++); }
      // (1) CPU burned by idle threads while the caller sleeps S ms after one call (median of 3)
      auto idle_ms = [&](const std::function<void(int)>& f, double s) {
        std::vector<double> v;
        for (int k = 0; k < 3; ++k) {
          sleep(gap_s);
          f(call++);
          const double c0 = process_cpu_s();
          sleep(s);
          v.push_back(1e3 * (process_cpu_s() - c0));
        }
        std::sort(v.begin(), v.end());
        return v[1];
      };
      const double windows[] = {0.001, 0.003, 0.01, 0.03, 0.1, 0.15, 0.3};
      std::string a_idle, e_idle;
      for (double s : windows) {
        char b[48];
        std::snprintf(b, sizeof b, "%s%.1f", a_idle.empty() ? "" : "/", idle_ms(anchor, s));
        a_idle += b;
        std::snprintf(b, sizeof b, "%s%.1f", e_idle.empty() ? "" : "/", idle_ms(emollm, s));
        e_idle += b;
      }
      spin_note = std::string("idle CPU ms while the caller sleeps 1/3/10/30/100/150/300 ms after one call: ") + c.anchor + " " +
                  a_idle + ", emollm " + e_idle;
      // (2), (3): four sequences a round, each after a 250 ms sleep (every pool idle again)
      std::vector<std::vector<double>> ts(4);
      auto timed = [&](const std::function<void(int)>& f) {
        const double t0 = now_s();
        f(call++);
        return now_s() - t0;
      };
      for (int k = 0; k < rounds; ++k) {
        sleep(gap_s); anchor(call++); sleep(gap_s); ts[0].push_back(timed(emollm));   // emollm, anchor idle
        sleep(gap_s); anchor(call++); ts[1].push_back(timed(emollm));                  // emollm right after
        sleep(gap_s); emollm(call++); sleep(gap_s); ts[2].push_back(timed(anchor));    // anchor, emollm idle
        sleep(gap_s); emollm(call++); ts[3].push_back(timed(anchor));                  // anchor right after
      }
      for (auto& v : ts) {
        std::sort(v.begin(), v.end());
        Stats x;
        x.best = v.front(), x.median = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
        x.reps = int(v.size());
        st.push_back(x);
      }
      rr.st = st[0];
      rr.note = "emollm after the anchor's call and a 250 ms sleep; " + spin_note;
    });
    if (!res) continue;
    table_row(*res);
    if (!res->error.empty()) continue;
    const Result base = *res;
    char b[160];
    std::snprintf(b, sizeof b, "emollm right after the anchor's call; median ratio %.2fx", st[1].median / st[0].median);
    push_row(derived_row(base, "emollm-after", "emollm-aft", st[1], "emollm-gap", st[1].best / st[0].best, b));
    push_row(derived_row(base, "anchor-gap", std::string(c.anchor) + "-gap", st[2], "", NAN,
                         "the anchor after an emollm call and a 250 ms sleep"));
    std::snprintf(b, sizeof b, "the anchor right after emollm's call; median ratio %.2fx", st[3].median / st[2].median);
    push_row(derived_row(base, "anchor-after", std::string(c.anchor) + "-aft", st[3], std::string(c.anchor) + "-gap",
                         st[3].best / st[2].best, b));
  }
}

// Decode attention over a paged f16 / bf16 KV cache (AttentionParams::kv_dtype) beside the f32
// cache of the same values, interleaved call by call: the same shapes and pages as
// bench_attention_decode. GB/s = the K + V bytes of each cache type (half for f16 / bf16);
// ratio = f32 time / this time (>1: the half cache is faster). Checked against ref::attention
// reading the same half cache.
void bench_attention_decode_half_kv(ThreadPool& pool) {
  const DecodeAttnShape shapes[] = {{"llama1b", 32, 4, 64, {512, 2048}}, {"llama", 32, 32, 128, {512, 2048}}};
  constexpr int64_t kPage = 64;
  const DType types[] = {DType::F32, DType::F16, DType::BF16};
  bool header = false;
  for (const DecodeAttnShape& sh : shapes)
    for (int64_t n_kv : sh.kvs) {
      const std::string base = std::string("attention/") + sh.name + ".decode.paged.halfkv/kv" + std::to_string(n_kv);
      if (!selected(base)) continue;
      if (g_opt.list) {
        for (DType t : types) std::printf("%s/%s\n", base.c_str(), dtype_name(t));
        continue;
      }
      if (!header) {
        table_header("decode attention, paged f16 / bf16 KV beside f32 (64-token pages, interleaved; GB/s of each type's K + V bytes; ratio = f32 time / this time)");
        header = true;
      }
      AttentionParams p = paged_decode_params(sh, n_kv, kPage);
      const int64_t n_pages = (n_kv + kPage - 1) / kPage;
      const size_t elems = size_t(n_pages * kPage * p.ldk);
      const double bytes_f32 = 2.0 * double(n_kv) * double(p.ldk) * sizeof(float);
      const int copies = decode_copies(size_t(bytes_f32));
      Buf<float> q = make_aligned<float>(size_t(p.ldq)), o = make_aligned<float>(size_t(p.ldo));
      fill_random(q.get(), p.ldq, 3, &pool);
      // per type and copy: K and V pools (f32 filled at random, the half ones converted from them)
      struct Cache {
        std::vector<Buf<float>> k, v;
        std::vector<std::vector<const float*>> kt, vt;
      };
      std::vector<Cache> caches(3);
      for (int ti = 0; ti < 3; ++ti) {
        const size_t esz = dtype_row_bytes(types[ti], 1);
        Cache& c = caches[size_t(ti)];
        c.kt.resize(size_t(copies));
        c.vt.resize(size_t(copies));
        for (int cp = 0; cp < copies; cp++) {
          c.k.push_back(make_aligned<float>((elems * esz + 3) / 4));
          c.v.push_back(make_aligned<float>((elems * esz + 3) / 4));
          if (ti == 0) {
            fill_random(c.k.back().get(), int64_t(elems), 5, &pool);
            fill_random(c.v.back().get(), int64_t(elems), 7, &pool);
          } else {
            convert(caches[0].k[size_t(cp)].get(), DType::F32, c.k.back().get(), types[ti], int64_t(elems), &pool);
            convert(caches[0].v[size_t(cp)].get(), DType::F32, c.v.back().get(), types[ti], int64_t(elems), &pool);
          }
          for (int64_t b = 0; b < n_pages; b++) {
            c.kt[size_t(cp)].push_back(reinterpret_cast<const float*>(reinterpret_cast<const char*>(c.k.back().get()) + size_t(b * kPage * p.ldk) * esz));
            c.vt[size_t(cp)].push_back(reinterpret_cast<const float*>(reinterpret_cast<const char*>(c.v.back().get()) + size_t(b * kPage * p.ldv) * esz));
          }
        }
      }
      auto params = [&](int ti, int i) {
        AttentionParams pi = p;
        pi.kv_dtype = types[ti];
        pi.k_blocks = caches[size_t(ti)].kt[size_t(i % copies)].data();
        pi.v_blocks = caches[size_t(ti)].vt[size_t(i % copies)].data();
        return pi;
      };
      auto runner = [&](int ti) {
        return std::function<void(int)>([&, ti](int i) {
          const AttentionBatchItem it{q.get(), nullptr, nullptr, o.get(), params(ti, i)};
          attention_batch(&it, 1, &pool);
        });
      };
      auto check = [&](Result& row, int ti, double tol = 1e-3) {
        runner(ti)(0);
        std::vector<float> ref(size_t(p.ldo));
        const AttentionParams p0 = params(ti, 0);
        ref::attention(q.get(), nullptr, nullptr, ref.data(), p0);
        double max_diff = 0, sum_sq = 0;
        for (int64_t d = 0; d < p.ldo; d++) {
          const double a = o[size_t(d)], b = ref[size_t(d)];
          max_diff = std::max(max_diff, std::isfinite(a) ? std::fabs(a - b) : INFINITY);
          sum_sq += b * b;
        }
        set_check(row, max_diff / std::max(1e-30, std::sqrt(sum_sq / double(p.ldo))), tol);
      };
      auto packed_runner = [&](int ti) {
        return std::function<void(int)>([&, ti](int i) {
          with_switch(attention_detail::set_decode_inplace, false, [&] { runner(ti)(i); });
        });
      };
      // the bf16 cache on bf16 products (vdpbf16ps: q and P rounded; attention_internal.h DecodeBf16Dp)
      auto dp_runner = [&](int i) {
        const attention_detail::DecodeBf16Dp was = attention_detail::decode_bf16dp_mode();
        attention_detail::set_decode_bf16dp_mode(attention_detail::DecodeBf16Dp::Always);
        runner(2)(i);
        attention_detail::set_decode_bf16dp_mode(was);
      };
      const bool dp_hw = cpu_features().avx512bf16 && isa_active() >= Isa::Avx512;
      std::vector<Stats> st;
      for (int ti = 0; ti < 3; ++ti) {
        Result r;
        r.section = "attention";
        r.name = base + "/" + dtype_name(types[ti]);
        r.label = std::string(sh.name) + " decode kv=" + std::to_string(n_kv) + " " + dtype_name(types[ti]) + " KV";
        r.dtype = dtype_name(types[ti]);
        r.impl = "emollm";
        r.flops = 4.0 * double(sh.heads) * double(sh.head_dim) * double(n_kv);
        r.bytes = bytes_f32 * double(dtype_row_bytes(types[ti], 1)) / sizeof(float);
        Result* res = run_case(r, [&](Result& rr) {
          if (ti == 0) {
            std::vector<std::function<void(int)>> fns = {runner(0), runner(1), runner(2), packed_runner(1), packed_runner(2)};
            if (dp_hw) fns.push_back(dp_runner);
            st = measure_interleaved(fns);
          }
          if (st.size() < 5) throw std::runtime_error("the interleaved f32 / f16 / bf16 measurement did not run");
          rr.st = st[size_t(ti)];
          if (ti > 0) {
            rr.ratio_vs = "f32 KV";
            rr.ratio = st[0].best / rr.st.best;
          }
          check(rr, ti);
          rr.note = "(" + std::to_string(copies) + " KV copies" + (ti == 0 ? "; f16 / bf16 rows interleaved with it)" : ")");
        });
        if (!res) break;
        table_row(*res);
        if (ti == 0) continue;
        // the same half cache with its rows widened into scratch first (set_decode_inplace(false))
        const double in_place_best = res->st.best;  // res points into g_results: read before pushing
        Result pk = derived_row(r, "packed", "packed", st[size_t(ti + 2)], "in place", st[size_t(ti + 2)].best / in_place_best,
                                "rows widened into scratch first (set_decode_inplace(false)), interleaved; ratio = this time / in place (>1: in place faster)");
        pk.label = r.label + " packed";
        with_switch(attention_detail::set_decode_inplace, false, [&] { check(pk, ti); });
        push_row(pk);
        if (ti != 2 || st.size() < 6) continue;
        Result dp = derived_row(r, "bf16dp", "bf16dp", st[5], "in place", in_place_best / st[5].best,
                                "q and P rounded to bf16, vdpbf16ps (DecodeBf16Dp::Always), interleaved; ratio = in place time / this (>1: bf16 products faster)");
        dp.label = r.label + " bf16 products";
        {
          const attention_detail::DecodeBf16Dp was = attention_detail::decode_bf16dp_mode();
          attention_detail::set_decode_bf16dp_mode(attention_detail::DecodeBf16Dp::Always);
          check(dp, ti, 2e-2);  // q and P rounded to bf16 (2^-9 each): ~6e-3 of the rms measured
          attention_detail::set_decode_bf16dp_mode(was);
        }
        push_row(dp);
      }
      settle();
    }
}

// ============================================================================ rotation check
// Is the decode rows' rotation cold? The read probe's loop (read_probe_call, the probe-same-size
// rows' call) over 2.25 MiB a call (the 1.1B o matrix in q4_0: the smallest decode GEMV, so the
// most sensitive to a few cached lines), rotating over 1.5 / 3 / 6 x L3 a thread, the rows'
// rotation (rotate_l3x) and twice it. Blocks of calls per size, alternated over rounds, so a shared
// machine's busy moments fall on every size: each block walks its copies once untimed (the
// previous block used other copies' state), then twice timed. The copies are one set, a size
// uses its first n. Cold means the figure stops moving as the rotation grows: ratio = the
// largest rotation's time / this row's (> 1: this size reads faster, i.e. partly from cache).
void bench_rotation_check(ThreadPool& pool) {
  if (!cpu_features().avx512f) return;  // read_probe_call is the AVX-512 loop
  std::vector<double> xs = {1.5, 3, 6, rotate_l3x(), 2 * rotate_l3x()};
  std::sort(xs.begin(), xs.end());
  xs.erase(std::unique(xs.begin(), xs.end()), xs.end());
  auto suffix_of = [](double x) {
    char b[64];
    std::snprintf(b, sizeof b, "l3x%g", x);
    return std::string(b);
  };
  auto name_of = [&](double x) { return "rotation/" + suffix_of(x); };
  bool any = false;
  for (double x : xs) any = any || selected(name_of(x));
  if (!any) return;
  if (g_opt.list) {
    for (double x : xs) std::printf("%s\n", name_of(x).c_str());
    return;
  }
  const size_t bytes = size_t(2048) * 2048 / 32 * 18;  // 2.25 MiB
  const double per_x = double(l3_bytes()) * double(std::max(1, g_rotate_threads));
  auto copies_of = [&](double x) { return int(std::max<size_t>(2, (size_t(x * per_x) + bytes - 1) / bytes)); };
  const int nmax = copies_of(xs.back());
  progress("rotation: copies");
  std::vector<Buf<uint8_t>> bufs;
  for (int i = 0; i < nmax; i++) {
    bufs.push_back(alloc_huge(bytes));
    uint8_t* d = bufs.back().get();
    pool.parallel_for(int64_t(bytes), 1 << 20, [&](int64_t b, int64_t e) { std::memset(d + b, 1 + (i & 63), size_t(e - b)); });
  }
  std::vector<std::vector<double>> ts(xs.size());
  const int rounds = g_opt.quick ? 2 : 4;
  for (int r = 0; r < rounds; r++)
    for (size_t k = 0; k < xs.size(); k++) {
      progress(name_of(xs[k]));
      const int n = copies_of(xs[k]);
      for (int i = 0; i < n; i++) read_probe_call(pool, bufs[size_t(i)].get(), bytes);
      for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++) {
          const double t0 = now_s();
          read_probe_call(pool, bufs[size_t(i)].get(), bytes);
          ts[k].push_back(now_s() - t0);
        }
    }
  progress_done();
  std::vector<Stats> st;
  for (auto& v : ts) {
    std::sort(v.begin(), v.end());
    Stats s;
    s.best = v.front();
    s.median = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
    s.reps = int(v.size());
    st.push_back(s);
  }
  table_header("rotation check: the read probe's loop over 2.25 MiB a call, rotating over x L3 a thread (blocks "
               "alternated; ratio = the largest rotation's time / this row's, > 1: this size still reads from cache)");
  Result probe;  // the fields every rotation row shares
  probe.section = "rotation";
  probe.name = "rotation";
  probe.dtype = "-";
  probe.bytes = double(bytes);
  for (size_t k = 0; k < xs.size(); k++) {
    char note[160];
    std::snprintf(note, sizeof note, "%d copies = %.0f MiB; median ratio %.2fx", copies_of(xs[k]),
                  double(copies_of(xs[k])) * double(bytes) / 1048576.0, st.back().median / st[k].median);
    Result r = derived_row(probe, suffix_of(xs[k]), "probe", st[k], "largest", st.back().best / st[k].best, note);
    char label[64];
    std::snprintf(label, sizeof label, "rotate %g x L3 %s", xs[k], xs[k] == rotate_l3x() ? "(rows)" : "");
    r.label = label;
    push_row(r);
  }
}


// ============================================================================ f32 GEMV (M = 1)
#ifdef EMOLLM_HAVE_DNNL
// f32 x f32 -> f32 matmul (oneDNN's f32 GEMV at M = 1), Y = X W^T with W given as f32 [N, K] rows,
// reordered once per copy into oneDNN's preferred layout (as an engine would at load time).
struct DnnlGemmF32 {
  dnnl::matmul mm;
  dnnl::memory x, y;
  std::vector<dnnl::memory> w;
  std::string impl;
  void init(int64_t M, int64_t N, int64_t K, float* X, float* Y, const float* W, int copies) {
    using namespace dnnl;
    using dt = memory::data_type;
    using tag = memory::format_tag;
    DnnlCtx& c = dnnl_ctx();
    memory::desc xd({M, K}, dt::f32, tag::ab), yd({M, N}, dt::f32, tag::ab);
    memory::desc wany({K, N}, dt::f32, tag::any), wuser({K, N}, dt::f32, tag::ba);
#if DNNL_VERSION_MAJOR >= 3
    matmul::primitive_desc pd(c.eng, xd, wany, yd);
#else
    matmul::primitive_desc pd(matmul::desc(xd, wany, yd), c.eng);
#endif
    impl = pd.impl_info_str();
    mm = matmul(pd);
    x = memory(xd, c.eng, X);
    y = memory(yd, c.eng, Y);
    memory wu(wuser, c.eng, const_cast<float*>(W));
    for (int i = 0; i < copies; i++) {
      memory wp(pd.weights_desc(), c.eng);
      reorder(wu, wp).execute(c.strm, wu, wp);
      w.push_back(wp);
    }
    c.strm.wait();
  }
  void run(int i) {
    DnnlCtx& c = dnnl_ctx();
    mm.execute(c.strm, {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, w[size_t(i) % w.size()]}, {DNNL_ARG_DST, y}});
    c.strm.wait();
  }
};
#endif

// F32 decode GEMVs (M = 1) as a model runs them: gemm_huge_pages on cold copies in 2 MiB pages (the
// CPU backend's f32 copies), the stream kernels (default) interleaved call by call with the previous
// path (set_gemv_stream_f32(false): dot_block's 4-row kernel), the read probe's loop over the same copies and oneDNN's f32
// matmul on its own reordered copies (as many): ratios from the same moments of a shared machine.
// 1.1B o / gate / down and 7B qkvo / down (K 2048 / 5632 / 4096 / 11008).
void bench_f32_gemv(ThreadPool& pool) {
  struct Shape {
    const char* name;
    int64_t N, K;
  };
  const Shape shapes[] = {{"llama1b.o", 2048, 2048},   {"llama1b.gate", 5632, 2048}, {"llama1b.down", 2048, 5632},
                          {"llama.qkvo", 4096, 4096}, {"llama.down", 4096, 11008}};
  bool header = false;
  for (const Shape& sh : shapes) {
    const std::string name = std::string("f32gemv/") + sh.name;
    if (!selected(name)) continue;
    if (g_opt.list) { std::printf("%s\n", name.c_str()); continue; }
    if (isa_active() < Isa::Avx512 || !cpu_features().avx512f) continue;  // the stream kernels are AVX-512
    if (!header) {
      table_header("F32 GEMV M=1, cold copies in 2 MiB pages, interleaved (ratio: see each row's note)");
      header = true;
    }
    progress(name + ": preparing weights");
    const int64_t N = sh.N, K = sh.K;
    const size_t wbytes = size_t(N * K) * 4;
    Buf<float> W = make_aligned<float>(size_t(N * K)), X = make_aligned<float>(size_t(K)),
               Y = make_aligned<float>(size_t(N));
    fill_random(W.get(), N * K, 91 + uint64_t(N) * 7 + uint64_t(K), &pool);
    fill_random(X.get(), K, 93 + uint64_t(K), &pool);
    Copies hc(W.get(), wbytes, decode_copies(wbytes), &pool, true);
    auto run = [&](const void* w) { gemm_huge_pages(X.get(), K, w, DType::F32, nullptr, Y.get(), N, 1, N, K, &pool); };
    std::vector<std::function<void(int)>> fns = {
        [&](int i) { run(hc[i]); },
        [&](int i) { with_switch(gemm_detail::set_gemv_stream_f32, false, [&] { run(hc[i]); }); },
        [&](int i) { read_probe_call(pool, hc[i], wbytes); },
    };
    bool dnnl_on = false;
#ifdef EMOLLM_HAVE_DNNL
    std::unique_ptr<DnnlGemmF32> dnnl;
    Buf<float> Yd = make_aligned<float>(size_t(N));
    if (g_have_dnnl) {
      dnnl.reset(new DnnlGemmF32);
      dnnl->init(1, N, K, X.get(), Yd.get(), W.get(), int(hc.ptrs.size()));
      fns.push_back([&](int i) { dnnl->run(i); });
      dnnl_on = true;
    }
#endif
    progress(name);
    const std::vector<Stats> st = measure_interleaved(fns, dnnl_on ? 0.003 : 0.0);
    Result r;
    r.section = "gemm";
    r.name = name;
    r.label = std::string(sh.name) + " M=1";
    r.dtype = "f32";
    r.impl = "emollm";
    r.M = 1; r.N = N; r.K = K;
    r.flops = 2.0 * double(N) * double(K);
    r.bytes = double(wbytes);
    r.st = st[0];
    r.ratio_vs = "prev";
    r.ratio = st[1].best / st[0].best;
    r.note = "stream kernels (" + std::to_string(hc.ptrs.size()) + " copies); ratio = prev time / this (>1: new faster)";
    run(hc[0]);
    set_check(r, gemm_check(X.get(), 1, K, W.get(), DType::F32, N, Y.get(), false), gemm_tolerance(DType::F32, false));
    std::vector<float> y_new(Y.get(), Y.get() + N);
    push_row(r);
    auto checked = [&](Result d, const std::function<void()>& again) {
      again();
      d.check = std::memcmp(y_new.data(), Y.get(), size_t(N) * 4) == 0 ? "ok" : "BAD";  // same bits as the new path
      d.note += d.check == "ok" ? "; same bits" : "; bits differ";
      push_row(d);
    };
    checked(derived_row(r, "prev", "prev", st[1], "new/prev", st[1].best / st[0].best,
                        "set_gemv_stream_f32(false) (dot_block, 4 rows); ratio = its time / the new row's"),
            [&] { with_switch(gemm_detail::set_gemv_stream_f32, false, [&] { run(hc[0]); }); });
    Result p = derived_row(r, "probe", "probe-same-size", st[2], "new", st[0].best / st[2].best,
                           "read probe (4 streams + 1 KiB prefetch) over the same copies; ratio = the new row's time / "
                           "its (>1: the GEMV is slower than a plain read)");
    p.check = "";
    push_row(p);
#ifdef EMOLLM_HAVE_DNNL
    if (dnnl_on) {
      Result d = derived_row(r, "onednn", "onednn", st[3], "onednn", st[3].best / st[0].best,
                             "oneDNN f32 matmul (" + dnnl->impl + ") on its reordered copies; ratio = its time / the new row's (>1: emollm faster)");
      dnnl->run(0);
      set_check(d, gemm_check(X.get(), 1, K, W.get(), DType::F32, N, Yd.get(), false), gemm_tolerance(DType::F32, false));
      push_row(d);
    }
#endif
  }
}

// ============================================================================ elementwise / rows
void bench_eltwise(ThreadPool& pool) {
  bool header = false;
  auto one = [&](const char* name, const char* label, int64_t elems, double bytes_per_elem,
                 const std::function<void(float*, float*, float*)>& fn) {
    Result r;
    r.section = "eltwise";
    r.name = std::string("eltwise/") + name;
    r.label = label;
    r.dtype = "f32";
    r.impl = "emollm";
    r.single_thread = true;  // these kernels take no thread pool
    r.bytes = double(elems) * bytes_per_elem;
    if (!selected(r.name)) return;
    if (g_opt.list) { run_case(r, nullptr); return; }
    Buf<float> a = make_aligned<float>(size_t(elems)), b = make_aligned<float>(size_t(elems)),
               c = make_aligned<float>(size_t(elems));
    fill_random(a.get(), elems, 21, &pool);
    fill_random(b.get(), elems, 22, &pool);
    std::memset(c.get(), 0, size_t(elems) * sizeof(float));
    run_case(r, [&](Result& res) { res.st = measure([&](int) { fn(a.get(), b.get(), c.get()); }); });
    if (!header) {
      table_header("rows / elementwise (single-threaded API: %fma and %bw against 1-thread probes)");
      header = true;
    }
    table_row(g_results.back());
  };
  const int64_t T = 512, D = 4096, F = 11008;
  std::vector<float> w(static_cast<size_t>(D), 1.0f), bias(static_cast<size_t>(D), 0.0f);
  one("rmsnorm", "rmsnorm 512x4096", T * D, 8, [&](float* x, float*, float* y) {
    rmsnorm(x, D, w.data(), y, D, T, D, 1e-5f);
  });
  one("layernorm", "layernorm 512x4096", T * D, 8, [&](float* x, float*, float* y) {
    layernorm(x, D, w.data(), bias.data(), y, D, T, D, 1e-5f);
  });
  one("softmax", "softmax 16384x512", 32 * 512 * 512, 8, [&](float* x, float*, float* y) {
    softmax(x, 512, y, 512, 32 * 512, 512);
  });
  one("silu", "silu 512x11008", T * F, 8, [&](float* x, float*, float* y) { silu(x, y, T * F); });
  one("swiglu", "swiglu 512x11008", T * F, 12, [&](float* g, float* u, float* y) { swiglu(g, u, y, T * F); });
  one("gelu_erf", "gelu_erf 577x4096", 577 * 4096, 8, [&](float* x, float*, float* y) { gelu_erf(x, y, 577 * 4096); });
  one("quick_gelu", "quick_gelu 577x4096", 577 * 4096, 8,
      [&](float* x, float*, float* y) { quick_gelu(x, y, 577 * 4096); });
  std::vector<int32_t> pos(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; i++) pos[size_t(i)] = int32_t(i);
  one("rope", "rope 512x32x128 (q)", T * D, 8, [&](float* x, float*, float*) {
    RopeParams rp;
    rp.head_dim = 128;
    rope(x, D, T, 32, pos.data(), rp);
  });
}

// ============================================================================ JSON
struct Json {
  std::string s;
  bool need_comma = false;
  void sep() { if (need_comma) s += ","; need_comma = false; }
  void key(const char* k) { sep(); s += "\""; s += k; s += "\":"; }
  void str(const std::string& v) {
    s += "\"";
    for (char ch : v) {
      if (ch == '"' || ch == '\\') { s += '\\'; s += ch; }
      else if (uint8_t(ch) < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", ch); s += b; }
      else s += ch;
    }
    s += "\"";
    need_comma = true;
  }
  void num(double v) {
    if (!std::isfinite(v)) s += "null";
    else { char b[32]; std::snprintf(b, sizeof b, "%.10g", v); s += b; }
    need_comma = true;
  }
  void boolean(bool v) { s += v ? "true" : "false"; need_comma = true; }
  void kv(const char* k, const std::string& v) { key(k); str(v); }
  void kv(const char* k, const char* v) { key(k); str(v); }
  void kv(const char* k, double v) { key(k); num(v); }
  void kvb(const char* k, bool v) { key(k); boolean(v); }
  void open(char c) { sep(); s += c; need_comma = false; }
  void close(char c) { s += c; need_comma = true; }
};

std::string to_json(int threads, double wall, double rss_mib) {
  const CpuFeatures& f = cpu_features();
  Json j;
  j.open('{');
  j.key("machine"); j.open('{');
  j.kv("brand", f.brand);
  j.kv("physical_cores", double(f.physical_cores));
  j.kv("logical_cpus", double(f.logical_cpus));
  j.kv("threads", double(threads));
  j.kvb("cpu_clock", g_opt.cpu_clock);
  j.kv("isa_active", isa_name(isa_active()));
  j.kv("l3_bytes", double(l3_bytes()));
  // decode rows (GEMV, probe-same-size, anchors, decode attention) rotate over this many bytes of
  // copies (all threads; rotate_l3x x L3 per thread, EMOLLM_BENCH_ROTATE_L3X)
  j.kv("rotate_l3x", rotate_l3x());
  j.kv("rotate_bytes", double(rotate_bytes()));
  j.kvb("avx2", f.avx2); j.kvb("avx512f", f.avx512f); j.kvb("avx512bf16", f.avx512bf16);
  j.kvb("avx512vnni", f.avx512vnni); j.kvb("amx_usable", f.amx_usable);
  j.close('}');
  j.key("probes"); j.open('{');
  j.kv("read_bw_gbs", g_probe.bw); j.kv("read_bw_1t_gbs", g_probe.bw_1t); j.kv("read_bw_isa", g_probe.bw_isa);
  j.kv("read_bw_variant", g_probe.bw_variant);
  j.key("read_bw_by_threads_gbs"); j.open('[');
  for (double v : g_probe.bw_by_threads) { j.sep(); j.num(v); }
  j.close(']');
  j.kv("anchor_gemv_gbs", g_probe.anchor_gemv_bw > 0 ? g_probe.anchor_gemv_bw : NAN);
  j.kv("probe_same_size_gbs", g_probe.same_size_bw > 0 ? g_probe.same_size_bw : NAN);
  j.kv("bw_ceiling_gbs", bw_ceiling());
  j.kv("fma_gflops", g_probe.fma); j.kv("fma_1t_gflops", g_probe.fma_1t); j.kv("fma_isa", g_probe.fma_isa);
  j.kv("bf16_dot_gflops", g_probe.bf16 > 0 ? g_probe.bf16 : NAN);
  j.kv("amx_bf16_gflops", g_probe.amx > 0 ? g_probe.amx : NAN);
  j.kv("int8_dot_gops", g_probe.int8 > 0 ? g_probe.int8 : NAN);
  j.kv("int8_block_gops", g_probe.int8_block > 0 ? g_probe.int8_block : NAN);
  for (const Probes* pr : {&g_probe_start, &g_probe_end}) {
    j.key(pr == &g_probe_start ? "start" : "end");
    j.open('{');
    j.kv("read_bw_gbs", pr->bw); j.kv("read_bw_1t_gbs", pr->bw_1t);
    j.kv("fma_gflops", pr->fma); j.kv("fma_1t_gflops", pr->fma_1t);
    j.kv("bf16_dot_gflops", pr->bf16 > 0 ? pr->bf16 : NAN);
    j.kv("amx_bf16_gflops", pr->amx > 0 ? pr->amx : NAN);
    j.kv("int8_dot_gops", pr->int8 > 0 ? pr->int8 : NAN);
    j.kv("int8_block_gops", pr->int8_block > 0 ? pr->int8_block : NAN);
    j.close('}');
  }
  j.close('}');
  j.key("anchors"); j.open('{');
  j.kvb("openblas", g_have_openblas); j.kv("openblas_info", g_openblas_info);
  j.kvb("onednn", g_have_dnnl); j.kv("onednn_info", g_dnnl_info);
  j.close('}');
  j.key("results"); j.open('[');
  for (const Result& r : g_results) {
    j.open('{');
    j.kv("name", r.name); j.kv("section", r.section); j.kv("impl", r.impl); j.kv("dtype", r.dtype);
    if (r.section == "gemm") { j.kv("M", double(r.M)); j.kv("N", double(r.N)); j.kv("K", double(r.K)); }
    if (!r.error.empty()) {
      j.kv("error", r.error);
    } else {
      j.kv("best_ms", r.st.best * 1e3); j.kv("median_ms", r.st.median * 1e3); j.kv("reps", double(r.st.reps));
      j.kv("gflops", gflops(r)); j.kv("pct_fma", pct_fma(r)); j.kv("pct_bf16", pct_bf16(r)); j.kv("pct_int8", pct_int8(r));
      j.kv("gbs", gbs(r)); j.kv("pct_bw", pct_bw(r));
      j.kvb("single_thread", r.single_thread);
      if (!r.ratio_vs.empty()) { j.kv("anchor", r.ratio_vs); j.kv("ratio_vs_anchor", r.ratio); }
      if (!r.check.empty()) { j.kv("check", r.check); j.kv("check_err", r.err); }
      if (!r.note.empty()) j.kv("note", r.note);
    }
    j.close('}');
  }
  j.close(']');
  j.kv("peak_rss_mib", rss_mib);
  j.kv("wall_s", wall);
  j.kv("quick", g_opt.quick ? 1.0 : 0.0);
  j.close('}');
  return j.s + "\n";
}

}  // namespace

// ============================================================================ main
int main(int argc, char** argv) {
  g_opt = parse_args(argc, argv);
  if (g_opt.json) g_out = stderr;
  const double t_start = now_s();
  const CpuFeatures& f = cpu_features();
  if (!g_opt.isa.empty()) {
    Isa cap;
    if (!isa_from_name(g_opt.isa, &cap)) { std::fprintf(stderr, "unknown --isa %s\n", g_opt.isa.c_str()); return 2; }
    isa_set_cap(cap);
  }
  int threads = g_opt.threads > 0 ? g_opt.threads : std::max(1, f.physical_cores);
  g_rotate_threads = threads;

  const std::vector<GemmShape> shapes = {
      {"llama", "qkvo", 4096, 4096, {512, 1}, true},
      {"llama", "gate_up", 11008, 4096, {512, 1}, false},
      {"llama", "down", 4096, 11008, {512, 1}, false},
      // 1.1B (TinyLlama-shaped) decoder at batched-decode row counts (continuous batching: one row per
      // sequence, plus short prompt chunks), where the small-M path runs
      {"llama1b", "qkvo", 2048, 2048, {64, 44, 16, 4}, false},
      {"llama1b", "gate_up", 5632, 2048, {64, 44, 16, 4}, false},
      {"llama1b", "down", 2048, 5632, {64, 44, 16, 4}, false},
      // 1.1B decode GEMVs (M = 1) not fused with another (q/k/v and gate/up also run fused:
      // bench_fused): the attention output, gate / up alone, down and the output projection
      // (vocabulary 32000)
      {"llama1b", "o", 2048, 2048, {1}, false},
      {"llama1b", "gate_up", 5632, 2048, {1}, false},
      {"llama1b", "down", 2048, 5632, {1}, false},
      {"llama1b", "output", 32000, 2048, {1}, false},
      // the other prefill row counts of both (q4_0 / q8_0: the standard-layout and repacked VNNI
      // GEMMs, interleaved)
      {"llama", "qkvo", 4096, 4096, {64, 16}, false},
      {"llama", "gate_up", 11008, 4096, {64, 16}, false},
      {"llama", "down", 4096, 11008, {64, 16}, false},
      {"llama1b", "qkvo", 2048, 2048, {512}, false},
      {"llama1b", "gate_up", 5632, 2048, {512}, false},
      {"llama1b", "down", 2048, 5632, {512}, false},
      {"clip", "qkvo", 1024, 1024, {577}, true},
      {"clip", "fc1", 4096, 1024, {577}, false},
      {"clip", "fc2", 1024, 4096, {577}, false},
  };

  ThreadPool pool(threads);
  if (g_opt.list) {
    for (const GemmShape& s : shapes) bench_gemm_shape(s, pool);
    bench_fused(pool);
    bench_kquant_gemv(pool);
    bench_batched_decode(pool);
    bench_attention(pool);
    bench_attention_bf16(pool);
    bench_attention_decode(pool);
    bench_attention_decode_half_kv(pool);
    bench_attention_decode_pv_wide(pool);
    bench_attention_decode_qk_wide(pool);
    bench_attention_decode_pv_pairs(pool);
    bench_eltwise(pool);
    bench_rotation_check(pool);
    bench_f32_gemv(pool);
    bench_gemm_bf16_long_k(pool);
    bench_anchor_order(pool);
    return 0;
  }
  setup_anchors(threads);

  std::fprintf(g_out, "emollm kernel benchmark%s\n", g_opt.quick ? " (quick)" : "");
  std::fprintf(g_out, "cpu: %s | %d physical cores, %d logical | threads %d | isa %s (detected %s) | L3 %zu MiB\n",
               f.brand.c_str(), f.physical_cores, f.logical_cpus, threads, isa_name(isa_active()),
               isa_name(isa_detected()), l3_bytes() >> 20);
  std::fprintf(g_out, "decode rotation: %.0f MiB of copies per row (%g x L3 a thread, %d threads; EMOLLM_BENCH_ROTATE_L3X), "
               "read probe buffer as large\n",
               double(rotate_bytes()) / 1048576.0, rotate_l3x(), threads);
  std::fprintf(g_out, "features: avx2=%d fma=%d f16c=%d avx512f=%d avx512bw=%d avx512bf16=%d avx512vnni=%d amx_bf16=%d amx_usable=%d\n",
               f.avx2, f.fma, f.f16c, f.avx512f, f.avx512bw, f.avx512bf16, f.avx512vnni, f.amx_bf16, f.amx_usable);
  std::fprintf(g_out, "budget %.2f s per measurement; times are best/median of the repetitions%s\n", g_opt.budget,
               g_opt.cpu_clock ? " (process CPU time: --cpu-clock)" : "");
  if (FILE* la = std::fopen("/proc/loadavg", "r")) {
    double load = 0;
    if (std::fscanf(la, "%lf", &load) == 1 && load > 0.5 * f.logical_cpus)
      std::fprintf(g_out, "warning: load average %.2f on %d cpus: other work is running, timings will be disturbed\n",
                   load, f.logical_cpus);
    std::fclose(la);
  }

  std::fprintf(g_out, "running; the table comes at the end (probes are measured again then)\n");
  std::fflush(g_out);
  progress("probes");
  const Probes probe_start = g_probe_start = run_probes(pool);
  g_probe = probe_start;
  progress_done();

  bool gemm_header = false;
  for (const GemmShape& s : shapes) {
    if (g_opt.quick && !s.quick) continue;
    if (!any_selected(s)) continue;
    if (!gemm_header) {
      table_header("GEMM  Y[M,N] = X[M,K] W[N,K]^T   (GB/s at M=1: weight bytes streamed; ratio = anchor time / emollm time, >1 means emollm is faster)");
      gemm_header = true;
    }
    later([&s] { std::fprintf(g_out, "-- %s.%s  N=%" PRId64 " K=%" PRId64 "\n", s.model, s.layer, s.N, s.K); });
    bench_gemm_shape(s, pool);
  }
  bench_fused(pool);
  bench_kquant_gemv(pool);
  bench_batched_decode(pool);
  bench_attention(pool);
  bench_attention_bf16(pool);
  bench_attention_decode(pool);
  bench_attention_decode_half_kv(pool);
  bench_attention_decode_pv_wide(pool);
  bench_attention_decode_qk_wide(pool);
  bench_attention_decode_pv_pairs(pool);
  bench_eltwise(pool);
  bench_f32_gemv(pool);
  bench_rotation_check(pool);
  bench_gemm_bf16_long_k(pool);
  bench_anchor_order(pool);

  // Probes again: on a shared machine a probe can land in a busy moment; the ceilings are the
  // higher of the two, so a percentage above 100 means the machine really was faster than probed.
  progress("probes (again)");
  const Probes probe_end = g_probe_end = run_probes(pool);
  progress_done();
  g_probe.bw = std::max(probe_start.bw, probe_end.bw);
  g_probe.bw_1t = std::max(probe_start.bw_1t, probe_end.bw_1t);
  g_probe.fma = std::max(probe_start.fma, probe_end.fma);
  g_probe.fma_1t = std::max(probe_start.fma_1t, probe_end.fma_1t);
  g_probe.bf16 = std::max(probe_start.bf16, probe_end.bf16);
  g_probe.amx = std::max(probe_start.amx, probe_end.amx);
  g_probe.int8 = std::max(probe_start.int8, probe_end.int8);
  g_probe.int8_block = std::max(probe_start.int8_block, probe_end.int8_block);
  g_probe.bw_variant = probe_end.bw > probe_start.bw ? probe_end.bw_variant : probe_start.bw_variant;
  g_probe.bw_by_threads = probe_start.bw_by_threads;
  for (size_t i = 0; i < g_probe.bw_by_threads.size() && i < probe_end.bw_by_threads.size(); i++)
    g_probe.bw_by_threads[i] = std::max(g_probe.bw_by_threads[i], probe_end.bw_by_threads[i]);
  // the best anchor GEMV (cold weights) also bounds what memory delivers: %bw uses the higher
  for (const Result& r : g_results)
    if ((r.impl == "onednn" || r.impl == "openblas") && r.M == 1 && r.bytes > 0 && r.error.empty() &&
        r.check != "BAD" && r.st.best > 0)
      g_probe.anchor_gemv_bw = std::max(g_probe.anchor_gemv_bw, gbs(r));
  // so does the probe's own loop over a GEMV's copies (interleaved with the GEMVs: more tries, and
  // the moments the kernels had)
  for (const Result& r : g_results)
    if (r.impl == "probe-same-size" && r.bytes > 0 && r.error.empty() && r.st.best > 0)
      g_probe.same_size_bw = std::max(g_probe.same_size_bw, gbs(r));

  std::fprintf(g_out, "\n== machine probes (same run; the higher of start / end)\n");
  std::fprintf(g_out, "  read bandwidth   %8.1f GB/s    (%d threads, %s loads; start %.1f / end %.1f) | 1 thread %.1f\n",
               g_probe.bw, threads, g_probe.bw_isa.c_str(), probe_start.bw, probe_end.bw, g_probe.bw_1t);
  std::fprintf(g_out, "                   best loop: %s; by threads:", g_probe.bw_variant.c_str());
  for (size_t i = 0; i < g_probe.bw_by_threads.size(); i++)
    std::fprintf(g_out, " %zu: %.1f", i + 1, g_probe.bw_by_threads[i]);
  std::fprintf(g_out, " GB/s\n");
  if (g_probe.same_size_bw > 0)
    std::fprintf(g_out, "  probe same-size  %8.1f GB/s    (the best loop over GEMV copies, interleaved with them)\n",
                 g_probe.same_size_bw);
  // the same loop over fewer bytes a call (hand-offs, ramp-up) reading faster than over the probe's
  // large windows means the copies were partly cached: the ceiling and the GEMV rows are not cold.
  // 1.10, not 1.00: cold (a rotation from 6 to 16x L3 reading the same), the best of ~1000 short
  // calls still reads up to ~1.06x the best of the probe's 24 long windows at 1 thread, loaded
  if (g_probe.same_size_bw > 1.10 * g_probe.bw)
    std::fprintf(g_out, "  warning: probe same-size %.2fx the read probe: the decode rows' copies were partly in cache "
                 "(rotation %.0f MiB; see the rotation check rows, EMOLLM_BENCH_ROTATE_L3X)\n",
                 g_probe.same_size_bw / g_probe.bw, double(rotate_bytes()) / 1048576.0);
  if (g_probe.anchor_gemv_bw > 0 || g_probe.same_size_bw > 0)
    std::fprintf(g_out, "  best anchor GEMV %8.1f GB/s    (%%bw of the GEMV rows uses max(probes, this) = %.1f GB/s)\n",
                 g_probe.anchor_gemv_bw, bw_ceiling());
  std::fprintf(g_out, "  fp32 FMA peak    %8.1f GFLOP/s (%d threads, %s; start %.1f / end %.1f) | 1 thread %.1f\n",
               g_probe.fma, threads, g_probe.fma_isa.c_str(), probe_start.fma, probe_end.fma, g_probe.fma_1t);
  if (g_probe.bf16 > 0)
    std::fprintf(g_out, "  bf16 dot peak    %8.1f GFLOP/s (vdpbf16ps, %d threads; start %.1f / end %.1f)\n", g_probe.bf16,
                 threads, probe_start.bf16, probe_end.bf16);
  else std::fprintf(g_out, "  bf16 dot peak         n/a (no avx512bf16)\n");
  if (g_probe.amx > 0)
    std::fprintf(g_out, "  AMX bf16 peak    %8.1f GFLOP/s (tdpbf16ps, %d threads; start %.1f / end %.1f)\n", g_probe.amx,
                 threads, probe_start.amx, probe_end.amx);
  else std::fprintf(g_out, "  AMX bf16 peak         n/a (AMX not usable)\n");
  if (g_probe.int8 > 0)
    std::fprintf(g_out, "  int8 dot peak    %8.1f GOP/s   (vpdpbusd, 2 ops an int8 product, %d threads; start %.1f / end %.1f):\n"
                 "                   %%dot of the q8_0 / q4_0 rows at M > 1 on VNNI (no scale work counted: see bench/README.md)\n",
                 g_probe.int8, threads, probe_start.int8, probe_end.int8);
  if (g_probe.int8_block > 0)
    std::fprintf(g_out, "  int8 + q8_0 scale %7.1f GOP/s   (the same vpdpbusd work with each block's int32->f32, d_w*d_x and FMA, 8 chains,\n"
                 "                   register-only: what the q8_0 / q4_0 GEMMs' inner loop can reach; %.0f%% of the int8 dot peak%s)\n",
                 g_probe.int8_block, 100 * g_probe.int8_block / g_probe.int8,
                 g_probe.int8_block > g_probe.int8 ? ": above it, so a probe caught a busy moment" : "");
  else std::fprintf(g_out, "  int8 dot peak         n/a (no avx512vnni)\n");

  std::fprintf(g_out, "\n== anchors (same run, %d threads)\n", threads);
  if (!g_opt.anchors) std::fprintf(g_out, "  disabled (--no-anchors)\n");
  else {
    std::fprintf(g_out, "  openblas: %s\n", g_have_openblas ? g_openblas_info.c_str() : kAnchorHint);
    std::fprintf(g_out, "  onednn:   %s\n", g_have_dnnl ? g_dnnl_info.c_str() : kAnchorHint);
  }
  for (auto& fn : g_deferred) fn();
  // a --filter that matches no case measured the probes only (bench:vision asks for that on purpose)
  if (!g_opt.filters.empty() && g_results.empty())
    std::fprintf(stderr, "bench_kernels: no case matched --filter: only the probes ran (--list names the cases)\n");

  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double rss_mib = double(ru.ru_maxrss) / 1024.0;
  double wall = now_s() - t_start;
  int bad = 0, errors = 0;
  for (const Result& r : g_results) {
    bad += r.check == "BAD";
    errors += !r.error.empty() && r.error != kAnchorHint;
  }
  std::fprintf(g_out, "\npeak RSS %.0f MiB | wall %.1f s | %zu cases, %d failed checks, %d errors\n", rss_mib, wall,
               g_results.size(), bad, errors);
  std::string js;
  if (g_opt.json || !g_opt.json_out.empty()) js = to_json(threads, wall, rss_mib);
  if (g_opt.json) std::fputs(js.c_str(), stdout);
  if (!g_opt.json_out.empty()) {
    FILE* fo = std::fopen(g_opt.json_out.c_str(), "w");
    if (!fo) { std::fprintf(stderr, "cannot write %s\n", g_opt.json_out.c_str()); return 1; }
    std::fputs(js.c_str(), fo);
    std::fclose(fo);
  }
  return bad ? 1 : 0;
}
