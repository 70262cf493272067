// What a late pool thread costs each op kind, and the claimed splits against the static ones,
// interleaved in one process (base/thread_pool.h pool_set_late_worker, pool_dynamic_split).
//
//   build-bench/pool_late_ab [threads=2] [late_us=2000] [rounds=7] [op name part]
//
// Per op (the LLaVA-7B-shaped prefill's and decode's pool jobs at their shapes): the wall of one
// call, median over `rounds` rounds, in four modes run one after the other in every round:
// static split / claimed split, each undisturbed and with the pool's last worker starting its
// share of every job late_us late (busy-waiting: its core is taken, as by another process).
// Printed: the medians, claimed / static undisturbed (< 1: the claims cost nothing), and the
// late-thread cost (late - undisturbed) of each split against late_us * jobs a call: the static
// split pays it whole, a claimed split about 1 / threads of it.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../../base/dtype.h"
#include "../../base/pool_stats.h"
#include "../../base/thread_pool.h"
#include "../../kernels/cpu/kernels.h"
#include "bench_clock.h"

using namespace emollm;
using bench::median;
using bench::now;

namespace {
std::vector<float> randv(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}
std::vector<uint8_t> weights(DType t, int64_t N, int64_t K, uint32_t seed) {
  const size_t rb = dtype_row_bytes(t, K);
  std::vector<uint8_t> W(rb * size_t(N));
  std::vector<float> row;
  for (int64_t n = 0; n < N; ++n) {
    row = randv(size_t(K), seed + uint32_t(n));
    quantize_row(t, row.data(), W.data() + size_t(n) * rb, K);
  }
  return W;
}
struct Op {
  std::string name;
  std::function<void()> call;
};
}  // namespace

int main(int argc, char** argv) {
  // positional [threads 2] [late_us 2000] [rounds 7] [op]: anything else (a flag, a non-number)
  // is an error, not a run with 0 threads
  auto number = [&](int i, int dflt, int lo) {
    if (argc <= i) return dflt;
    char* end = nullptr;
    const long v = std::strtol(argv[i], &end, 10);
    if (end == argv[i] || *end || v < lo) {
      std::fprintf(stderr, "pool_late_ab [threads >= 1] [late_us >= 0] [rounds >= 1] [op substring]: bad argument '%s'\n", argv[i]);
      std::exit(2);
    }
    return int(v);
  };
  const int threads = number(1, 2, 1);
  const int late_us = number(2, 2000, 0);
  const int rounds = number(3, 7, 1);
  const std::string only = argc > 4 ? argv[4] : "";  // run only ops whose name contains this
  ThreadPool pool(threads);
  std::vector<Op> ops;
  // prefill GEMMs: the LLaMA-7B q / k / v / o (q4_0 VNNI packed driver), the CLIP tower's
  // fc1 (bf16 vdpbf16ps packed driver), the 1.1B-sized bf16 q
  struct G {
    const char* name;
    DType t;
    int64_t M, N, K;
  };
  static std::vector<std::vector<uint8_t>> Ws;
  static std::vector<std::vector<float>> Xs, Ys;
  for (const G g : {G{"gemm q4_0 M512 N4096 K4096", DType::Q4_0, 512, 4096, 4096},
                    G{"gemm bf16 M577 N4096 K1024", DType::BF16, 577, 4096, 1024},
                    G{"gemm bf16 M577 N1024 K1024", DType::BF16, 577, 1024, 1024},
                    G{"gemv q4_0 M1 N4096 K4096", DType::Q4_0, 1, 4096, 4096},
                    G{"gemv q4_0 M1 N11008 K4096", DType::Q4_0, 1, 11008, 4096}}) {
    Ws.push_back(weights(g.t, g.N, g.K, 11));
    Xs.push_back(randv(size_t(g.M * g.K), 12));
    Ys.push_back(std::vector<float>(size_t(g.M * g.N)));
    const size_t i = Ws.size() - 1;
    ops.push_back({g.name, [g, i, &pool] {
                     gemm(Xs[i].data(), g.K, Ws[i].data(), g.t, nullptr, Ys[i].data(), g.N, g.M, g.N, g.K, &pool);
                   }});
  }
  // the pool alone: parallel_for over 4096 items of fixed arithmetic (no memory traffic), about
  // 4 ms of one core: what the split does with a late worker, without the memory system's noise
  ops.push_back({"parallel_for compute 4096", [&pool] {
                   static std::atomic<uint64_t> sink{0};
                   pool.parallel_for(4096, 16, [&](int64_t b, int64_t e) {
                     uint64_t h = uint64_t(b);
                     for (int64_t i = b; i < e; ++i)
                       for (int k = 0; k < 2000; ++k) h = h * 6364136223846793005ull + 1442695040888963407ull;
                     sink.fetch_add(h, std::memory_order_relaxed);
                   });
                 }});
  // row ops of a 512-token 7B prefill / the 577-token tower
  const int64_t rows = 512, n = 4096;
  static std::vector<float> x = randv(size_t(rows * n), 1), d = randv(size_t(rows * n), 2), w = randv(size_t(n), 3),
                            y(size_t(rows * n)), big = randv(size_t(rows * 11008), 4), big_y(size_t(rows * 11008));
  static std::vector<int32_t> pos(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) pos[size_t(i)] = int32_t(i);
  ops.push_back({"rmsnorm 512x4096", [&] { rmsnorm(x.data(), n, w.data(), y.data(), n, rows, n, 1e-5f, &pool); }});
  ops.push_back({"add_rmsnorm 512x4096",
                 [&] { add_rmsnorm(y.data(), n, d.data(), n, w.data(), x.data(), n, rows, n, 1e-5f, &pool); }});
  ops.push_back({"rope 512x32x128", [&] {
                   RopeParams rp{};
                   rp.head_dim = 128;
                   rope(y.data(), n, rows, 32, pos.data(), rp, &pool);
                 }});
  ops.push_back({"silu 512x11008", [&] { silu(big.data(), big_y.data(), rows * 11008, &pool); }});

  struct Md {
    bool dyn;
    int late;  // 0 none, 1 holding its first claim, 2 arriving late
  };
  const Md modes[] = {{false, 0}, {true, 0}, {false, 1}, {true, 1}, {false, 2}, {true, 2}};
  constexpr int kModes = 6;
  std::printf("pool_late_ab: %d threads, late worker %d us a job, %d rounds (median of rounds x 3 calls)\n",
              threads, late_us, rounds);
  std::printf("  hold: the late worker waits holding its first claim; arrive: it picks the job up late\n");
  std::printf("  cost/L: (late wall - undisturbed wall) / (late_us x jobs a call); joined: share of jobs the late\n"
              "  worker was delayed in (st+hold cl+hold st+arr cl+arr): the others ran without it\n");
  std::printf("%-28s %4s %9s %9s %6s %9s %9s %8s %8s %9s %9s %8s %8s\n", "op", "jobs", "st ms", "cl ms", "cl/st",
              "st+hold", "cl+hold", "st c/L", "cl c/L", "st+arr", "cl+arr", "st c/L", "cl c/L");
  for (const Op& op : ops) {
    if (!only.empty() && op.name.find(only) == std::string::npos) continue;
    for (int wu = 0; wu < 3; ++wu) op.call();
    const uint64_t j0 = pool_dispatches_this_thread();
    op.call();
    const uint64_t jobs = pool_dispatches_this_thread() - j0;
    std::vector<double> t[kModes];
    double hit[kModes] = {0};  // delays a job (the late worker joined it), summed over rounds
    for (int r = 0; r < rounds; ++r)
      for (int m = 0; m < kModes; ++m) {
        pool_dynamic_split(modes[m].dyn);
        pool_set_late_worker(modes[m].late ? late_us : 0, -1, modes[m].late == 2 ? LateAt::Arrival : LateAt::Hold);
        const uint64_t d0 = pool_late_delays();
        for (int k = 0; k < 3; ++k) {
          const double t0 = now();
          op.call();
          t[m].push_back(now() - t0);
        }
        hit[m] += double(pool_late_delays() - d0) / double(3 * std::max<uint64_t>(1, jobs));
      }
    pool_set_late_worker(0);
    pool_dynamic_split(true);
    double md[kModes];
    for (int m = 0; m < kModes; ++m) md[m] = median(t[m]) * 1e3;
    const double L = late_us * 1e-3 * double(jobs);  // ms of lateness a call
    auto cost = [&](int m, int base) { return L > 0 ? (md[m] - md[base]) / L : 0.0; };
    std::printf("%-28s %4llu %9.3f %9.3f %6.3f %9.3f %9.3f %8.2f %8.2f %9.3f %9.3f %8.2f %8.2f  joined %.2f %.2f %.2f %.2f\n",
                op.name.c_str(), (unsigned long long)jobs, md[0], md[1], md[1] / md[0], md[2], md[3], cost(2, 0),
                cost(3, 1), md[4], md[5], cost(4, 0), cost(5, 1), hit[2] / rounds, hit[3] / rounds, hit[4] / rounds,
                hit[5] / rounds);
    std::fflush(stdout);
  }
  return 0;
}
