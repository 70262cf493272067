// In-process A/B of gemm_repacked's X-panel kernel blocking and X rounding (the q4_0 / q8_0
// prefill GEMM on repacked weights, M > kSmallM on VNNI; gemv_repacked.cpp, gemm_q8_xquant.cpp):
// one random N x K matrix and M x K X, the configurations run in turn call by call, in ABBA order
// (so slow drift hits all), timed by the calling thread's CPU time at 1 thread (preemption by a
// loaded machine's other processes excluded) or by wall time at more; each one's best and median,
// its ratio to the first configuration's best (>1: faster), and whether its output has the first
// one's bits. Built with the benchmarks (target q8_panels_ab); from the repository root:
//   ./build-bench/q8_panels_ab M N K q4_0|q8_0 threads rounds CONFIG...
//   CONFIG = kslice:pass_kib:kgroup:fused[:xpf[:guided[:tile]]]  (set_repacked_kslice / _pass_kib /
//            _kgroup blocks, KiB, panels, -1 = default; fused 0/1: set_qx_pack_fused; xpf 0/1:
//            set_repacked_x_prefetch, default 1; guided 0/1: set_repacked_guided, default 1; tile 4 / 6:
//            set_repacked_tile_rows, M <= kSmallM below the X-panel kernel, default 6)
//   CONFIG:rows (an 8th field, 1..M, default M): the product of X's first `rows` rows only, so that
//            row counts can be interleaved in one process (per-row times; bits compared on the rows
//            both configurations computed)
//   AB_WCOPIES=n: n repacked copies of the weights, each call on the next one (a model's layers: each
//            GEMM's weights cold, from memory, where one copy of a small matrix stays in L3); default 1
//   AB_CLOCK=process: every configuration timed by the process's CPU time (all threads; see now_s)
//   AB_SLOW=pct: the pool's last worker runs pct% slower (pool_set_slow_worker), every configuration
//   AB_SLOW_ALT=pct: every other call of each configuration with that slowdown, timed apart (the
//            undisturbed and the slowed walls of one run, interleaved)
//   ./build-bench/q8_panels_ab 628 4096 4096 q4_0 1 16 -1:-1:-1:1:0 -1:-1:-1:1:1   # X prefetch off / on
//   ./build-bench/q8_panels_ab 512 4096 11008 q4_0 1 10 0:1536:1:0 -1:-1:-1:1   # session 17 vs now
//   AB_SLOW_ALT=25 ./build-bench/q8_panels_ab 628 4096 4096 q4_0 2 16 -1:-1:-1:1:1:0 -1:-1:-1:1:1:1  # equal / guided
//   ./build-bench/q8_panels_ab 5 22016 4096 q4_0 1 10 -1:-1:-1:1:1:1:4 -1:-1:-1:1:1:1:6   # M = 5: 4-row tiles / one tile
//   ./build-bench/q8_panels_ab 640 4096 11008 q4_0 1 12 -1:-1:-1:1:1:1:6:608 -1:-1:-1:1:1:1:6:628 -1:-1:-1:1:1:1:6:640
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "base/arena.h"
#include "base/dtype.h"
#include "base/pool_stats.h"
#include "base/thread_pool.h"
#include "cpu/gemm_internal.h"
#include "cpu/kernels.h"
#include "bench_clock.h"
#include "bench_weights.h"
using namespace emollm;

namespace {
// The calling thread's CPU time at 1 thread, wall time at more; with AB_CLOCK=process the
// process's CPU time (all threads: readable at 2 threads on a loaded machine, preemption and the
// wait for a preempted worker excluded; a pool worker's end-of-job spin, <= ~0.4 ms, included).
double process_cpu() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}
bool g_process_clock = false;
double now_s(bool cpu) { return g_process_clock ? process_cpu() : cpu ? bench::thread_cpu() : bench::now(); }
struct Config {
  int kslice = -1, pass_kib = -1, kgroup = -1, fused = 1, xpf = 1, guided = 1, tile = 6, rows = 0;
};
}  // namespace

int main(int argc, char** argv) {
  if (argc < 8) {
    std::fprintf(stderr, "usage: q8_panels_ab M N K q4_0|q8_0 threads rounds kslice:pass_kib:kgroup:fused ...\n");
    return 2;
  }
  const int64_t M = std::atoll(argv[1]), N = std::atoll(argv[2]), K = std::atoll(argv[3]);
  const std::string ty = argv[4];
  const int th = std::atoi(argv[5]), rounds = std::atoi(argv[6]);
  if (M < 1 || N < 1 || K < 32 || K % 32 || (ty != "q4_0" && ty != "q8_0") || th < 1 || rounds < 1) {
    std::fprintf(stderr, "q8_panels_ab: M, N >= 1, K a multiple of 32, q4_0 or q8_0, threads and rounds >= 1\n");
    return 2;
  }
  const DType t = ty == "q8_0" ? DType::Q8_0 : DType::Q4_0;
  std::vector<Config> cfg;
  for (int i = 7; i < argc; ++i) {
    Config c;
    if (std::sscanf(argv[i], "%d:%d:%d:%d:%d:%d:%d:%d", &c.kslice, &c.pass_kib, &c.kgroup, &c.fused, &c.xpf, &c.guided,
                    &c.tile, &c.rows) < 4) {
      std::fprintf(stderr, "q8_panels_ab: a configuration is kslice:pass_kib:kgroup:fused[:xpf[:guided[:tile[:rows]]]], got %s\n", argv[i]);
      return 2;
    }
    if (c.rows <= 0 || c.rows > M) c.rows = int(M);
    cfg.push_back(c);
  }
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const bench::QuantizedProblem in = bench::random_quantized(t, M, N, K, rng, nd);
  ThreadPool pool(th);
  const char* wc_env = std::getenv("AB_WCOPIES");
  const int wcopies = std::max(1, wc_env ? std::atoi(wc_env) : 1);
  std::vector<AlignedPtr<uint8_t>> Wr;
  for (int i = 0; i < wcopies; ++i) {
    Wr.push_back(make_aligned<uint8_t>(quant_repack_bytes(t, N, K)));
    quant_repack(in.w.data(), t, N, K, Wr.back().get(), &pool);
  }
  size_t calls = 0;
  std::vector<std::vector<float>> Y(cfg.size(), std::vector<float>(size_t(M * N)));
  std::vector<std::vector<double>> ts(cfg.size()), ts_slow(cfg.size());
  // the caller's end-of-job waits (pool_stats.h hand-off seconds) per call, undisturbed and slowed
  std::vector<std::vector<double>> ho(cfg.size()), ho_slow(cfg.size());
  double last_ho = 0;
  pool_handoff_timing(true);
  const bool cpu = th == 1;
  g_process_clock = std::getenv("AB_CLOCK") && !std::strcmp(std::getenv("AB_CLOCK"), "process");
  const char* slow_env = std::getenv("AB_SLOW");
  const char* alt_env = std::getenv("AB_SLOW_ALT");
  const int slow = slow_env ? std::atoi(slow_env) : 0, alt = alt_env ? std::atoi(alt_env) : 0;
  pool_set_slow_worker(slow);
  auto run = [&](size_t c) {
    gemm_detail::set_repacked_kslice(cfg[c].kslice);
    gemm_detail::set_repacked_pass_kib(cfg[c].pass_kib);
    gemm_detail::set_repacked_kgroup(cfg[c].kgroup);
    gemm_detail::set_qx_pack_fused(cfg[c].fused != 0);
    gemm_detail::set_repacked_x_prefetch(cfg[c].xpf != 0);
    gemm_detail::set_repacked_guided(cfg[c].guided != 0);
    gemm_detail::set_repacked_tile_rows(cfg[c].tile);
    const double h0 = pool_handoff_seconds_this_thread();
    const double t0 = now_s(cpu);
    const uint8_t* W = Wr[calls++ % Wr.size()].get();
    gemm_repacked(in.x.data(), K, W, t, nullptr, Y[c].data(), N, cfg[c].rows, N, K, &pool);
    const double dt = now_s(cpu) - t0;
    last_ho = pool_handoff_seconds_this_thread() - h0;
    return dt;
  };
  for (size_t c = 0; c < cfg.size(); ++c) run(c);  // warm-up: scratch, page faults
  for (int r = 0; r < rounds; ++r)
    for (size_t k = 0; k < cfg.size(); ++k) {
      const size_t c = r % 2 ? cfg.size() - 1 - k : k;
      ts[c].push_back(run(c));
      ho[c].push_back(last_ho);
      if (alt > 0) {
        pool_set_slow_worker(alt);
        ts_slow[c].push_back(run(c));
        ho_slow[c].push_back(last_ho);
        pool_set_slow_worker(slow);
      }
    }
  std::printf("q8_panels_ab %s M=%lld N=%lld K=%lld threads=%d rounds=%d (%s time) slow %d%% alt %d%% weight copies %d\n",
              ty.c_str(), (long long)M, (long long)N, (long long)K, th, rounds,
              g_process_clock ? "process CPU" : cpu ? "thread CPU" : "wall", slow, alt, wcopies);
  double best0 = 0;
  for (size_t c = 0; c < cfg.size(); ++c) {
    const double b = bench::best(ts[c]), med = bench::median(ts[c]);
    if (c == 0) best0 = b;
    const int64_t rows = cfg[c].rows, common = std::min<int64_t>(rows, cfg[0].rows);
    const bool same = std::memcmp(Y[c].data(), Y[0].data(), size_t(common * N) * sizeof(float)) == 0;
    // per row when the row counts differ: x = config 0's time a row / this one's
    const double per_row = double(cfg[0].rows) / double(rows);
    std::printf("  kslice %4d pass %5d KiB kgroup %2d fused %d xpf %d guided %d tile %d rows %4lld: best %8.2f ms  median %8.2f ms  "
                "%6.0f GOP/s  x%.3f (a row)  %s  hand-off median %.2f ms\n",
                cfg[c].kslice, cfg[c].pass_kib, cfg[c].kgroup, cfg[c].fused, cfg[c].xpf, cfg[c].guided, cfg[c].tile,
                (long long)rows, b * 1e3, med * 1e3, 2.0 * double(rows) * double(N) * double(K) / b * 1e-9,
                best0 / b / per_row, same ? "same bits" : "BITS DIFFER", bench::median(ho[c]) * 1e3);
  }
  for (size_t c = 0; alt > 0 && c < cfg.size(); ++c) {
    const double b = bench::best(ts_slow[c]), med = bench::median(ts_slow[c]);
    std::printf("  slowed %d%%, config %zu: best %8.2f ms  median %8.2f ms  x%.3f of config 0 by best, x%.3f by median; "
                "slowed / undisturbed median %.3f; hand-off median %.2f ms\n",
                alt, c, b * 1e3, med * 1e3, bench::best(ts_slow[0]) / b, bench::median(ts_slow[0]) / med,
                med / bench::median(ts[c]), bench::median(ho_slow[c]) * 1e3);
  }
  pool_set_slow_worker(0);
  gemm_detail::set_repacked_guided(true);
  gemm_detail::set_repacked_kslice(-1);
  gemm_detail::set_repacked_pass_kib(-1);
  gemm_detail::set_repacked_kgroup(-1);
  gemm_detail::set_qx_pack_fused(true);
  gemm_detail::set_repacked_x_prefetch(true);
  gemm_detail::set_repacked_tile_rows(6);
  return 0;
}
