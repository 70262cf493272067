// A late or descheduled pool thread (base/thread_pool.h pool_set_late_worker): the claimed splits
// (parallel_for, the GEMM drivers' X packing, parallel_chunks) cover every item once and give
// the same bits as the previous static split, with and without a worker that starts its share
// late, at 1-3 threads. No timings here (bench_kernels' late/ section measures them).
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../../base/dtype.h"
#include "../../base/thread_pool.h"
#include "../../kernels/cpu/kernels.h"
#include "testing.h"

using namespace emollm;
using emollm_test::normal_floats;  // the tests' random inputs (testing.h)

namespace {

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Restores the default split and turns the injection off at scope exit (a failed EXPECT goes on).
struct LateScope {
  ~LateScope() {
    pool_set_late_worker(0);
    pool_dynamic_split(true);
  }
};

// The ways a pool job is run here: static split / claimed, each without a late worker, with the
// last worker holding its first claim 700 us, and with it picking each job up 700 us late.
struct Mode {
  bool dynamic;
  int late_us;
  LateAt at;
};
const Mode kModes[] = {{false, 0, LateAt::Hold},   {true, 0, LateAt::Hold},      {true, 700, LateAt::Hold},
                       {false, 700, LateAt::Hold}, {true, 700, LateAt::Arrival}, {false, 700, LateAt::Arrival}};
constexpr int kNModes = 6;

}  // namespace

// parallel_for: every item exactly once, chunks starting at multiples of grain and ending at one
// or at n, with the claimed split and the static one, a late worker or not; with a late worker
// the hook fires (in jobs that reach more than one thread). With a 30 ms late worker and trivial
// work, the claimed split lets the others take the late worker's range: it runs at most the one
// chunk it claimed before its delay.
TEST(parallel_for_claimed_split_covers_items_once_with_late_worker) {
  LateScope scope;
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (const Mode& md : kModes) {
      pool_dynamic_split(md.dynamic);
      pool_set_late_worker(md.late_us, -1, md.at);
      const uint64_t delays0 = pool_late_delays();
      int jobs_parallel = 0;
      for (int64_t n : {1, 2, 7, 64, 1001, 4096})
        for (int64_t grain : {1, 3, 16}) {
          std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
          std::atomic<int> bad{0};
          pool.parallel_for(n, grain, [&](int64_t b, int64_t e) {
            if (b % grain != 0 || e <= b || (e % grain != 0 && e != n) || e > n) bad++;
            for (int64_t i = b; i < e; ++i) seen[size_t(i)]++;
          });
          int wrong = 0;
          for (auto& s : seen) wrong += s.load() != 1;
          EXPECT(wrong == 0);
          EXPECT(bad.load() == 0);
          jobs_parallel += threads > 1 && (n + grain - 1) / grain > 1;
        }
      if (md.late_us == 0) EXPECT(pool_late_delays() == delays0);  // none without the injection
      // A job reaches the late worker unless the caller ran its index first (static: it claims an
      // index no worker took; claimed: the job closed before the worker joined): with 200 us of
      // work a chunk the worker joins some job within 400 of them (2+ s of a busy machine).
      if (md.late_us > 0 && jobs_parallel > 0) {
        const uint64_t d0 = pool_late_delays();
        for (int k = 0; k < 400 && pool_late_delays() == d0; ++k)
          pool.parallel_for(64, 1, [&](int64_t, int64_t) {
            const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
            while (std::chrono::steady_clock::now() < until) {
            }
          });
        EXPECT(pool_late_delays() > d0);
      }
    }
  }
  pool_dynamic_split(true);
  pool_set_late_worker(30000);
  ThreadPool pool(2);
  for (int rep = 0; rep < 3; ++rep) {
    std::atomic<int> late_chunks{0}, late_items{0};
    const int64_t n = 4096;
    pool.parallel_for(n, 1, [&](int64_t b, int64_t e) {
      if (pool_thread_index() == 1) late_chunks++, late_items += int(e - b);
    });
    EXPECT(late_chunks.load() <= 1);
    EXPECT(late_items.load() <= n / 8);  // its first claim: a quarter of its half
  }
}

// GEMMs (bf16 vdpbf16ps packed driver with its X packing, q4_0 / q8_0 VNNI packed driver with
// its X quantisation, f32) and the row ops the prefill runs (rmsnorm, add_rmsnorm, rope, silu):
// every mode of kModes gives the bits of the static split without a late worker, at 1-3 threads.
TEST(late_worker_claimed_splits_same_bits_as_static) {
  LateScope scope;
  ThreadPool pool1(1), pool2(2), pool3(3);
  ThreadPool* pools[] = {&pool1, &pool2, &pool3};
  struct Shape {
    int64_t M, N, K;
  };
  int compared = 0, differ = 0;
  for (DType t : {DType::BF16, DType::Q4_0, DType::Q8_0, DType::F32})
    for (const Shape sh : {Shape{100, 300, 256}, Shape{577, 1024, 1024}, Shape{70, 96, 4224}}) {
      const size_t rb = dtype_row_bytes(t, sh.K);
      std::vector<uint8_t> W(rb * size_t(sh.N));
      const std::vector<float> src = normal_floats(size_t(sh.N * sh.K), uint32_t(sh.N + 7 * sh.K));
      for (int64_t n = 0; n < sh.N; ++n) quantize_row(t, src.data() + n * sh.K, W.data() + n * rb, sh.K);
      const std::vector<float> X = normal_floats(size_t(sh.M * sh.K), uint32_t(sh.M * 3 + sh.K));
      const std::vector<float> bias = normal_floats(size_t(sh.N), 99);
      const std::vector<float> X2 = normal_floats(size_t(sh.M * sh.K), uint32_t(sh.M * 5 + sh.K));
      for (ThreadPool* pl : pools) {
        std::vector<float> ref;
        for (const Mode& md : kModes) {
          pool_dynamic_split(md.dynamic);
          pool_set_late_worker(md.late_us, -1, md.at);
          std::vector<float> Y(size_t(sh.M * sh.N), NAN);
          // another X first, so packed X left in the threads' scratch by the previous call cannot
          // stand in for pieces this call's split would miss
          gemm(X2.data(), sh.K, W.data(), t, nullptr, Y.data(), sh.N, sh.M, sh.N, sh.K, pl);
          gemm(X.data(), sh.K, W.data(), t, bias.data(), Y.data(), sh.N, sh.M, sh.N, sh.K, pl);
          if (ref.empty()) {
            ref = Y;
            continue;
          }
          ++compared;
          if (!same_bits(ref, Y)) {
            ++differ;
            std::fprintf(stderr, "  gemm %s M=%lld N=%lld K=%lld threads=%d dynamic=%d late=%d at=%d: bits differ\n",
                         dtype_name(t), (long long)sh.M, (long long)sh.N, (long long)sh.K, pl->size(), md.dynamic,
                         md.late_us, int(md.at));
          }
        }
      }
    }
  EXPECT(compared == 4 * 3 * 3 * (kNModes - 1));
  // row ops over a CLIP / LLaMA prefill's shape
  const int64_t rows = 577, n = 1024, heads = 16;
  const std::vector<float> x0 = normal_floats(size_t(rows * n), 5), d = normal_floats(size_t(rows * n), 6),
                           w = normal_floats(size_t(n), 7);
  std::vector<int32_t> pos(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) pos[size_t(i)] = int32_t(i);
  RopeParams rp{};
  rp.head_dim = n / heads;
  rp.rot_dim = n / heads;
  rp.theta = 10000.f;
  for (ThreadPool* pl : pools) {
    std::vector<float> ref[4];
    for (const Mode& md : kModes) {
      pool_dynamic_split(md.dynamic);
      pool_set_late_worker(md.late_us, -1, md.at);
      std::vector<float> y(size_t(rows * n)), x = x0, r = x0, s(size_t(rows * n));
      rmsnorm(x0.data(), n, w.data(), y.data(), n, rows, n, 1e-5f, pl);
      add_rmsnorm(x.data(), n, d.data(), n, w.data(), x.data(), n, rows, n, 1e-5f, pl);
      rope(r.data(), n, rows, heads, pos.data(), rp, pl);
      silu(x0.data(), s.data(), rows * n, pl);
      std::vector<float>* outs[4] = {&y, &x, &r, &s};
      for (int k = 0; k < 4; ++k) {
        if (ref[k].empty()) {
          ref[k] = *outs[k];
          continue;
        }
        ++compared;
        if (!same_bits(ref[k], *outs[k])) {
          ++differ;
          std::fprintf(stderr, "  row op %d threads=%d dynamic=%d late=%d: bits differ\n", k, pl->size(), md.dynamic,
                       md.late_us);
        }
      }
    }
  }
  EXPECT(compared == 4 * 3 * 3 * (kNModes - 1) + 3 * 4 * (kNModes - 1));
  EXPECT(differ == 0);
}
