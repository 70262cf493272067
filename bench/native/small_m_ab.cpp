// In-process A/B of gemm_repacked's few-row path (M <= kSmallM below the X-panel kernel: the
// scoring pass's option rows, the LLaVA sample's M = 5) on the LLaMA-7B shapes, q4_0 or q8_0.
// Each shape has repacked copies of one random matrix (together > 3x the L3 by default), called
// in turn, so every call reads its weights from memory as the model's layers do; the paths
// (gemm_detail::set_repacked_few_rows_path: 0 Previous, 1 Spread, 2 SpreadPanel; any number of
// them, repeats allowed for an A/A control; q8_0 at M <= 3 too) run call by call in ABBA order, timed by
// the calling thread's CPU time at 1 thread (a loaded machine's preemption excluded) or by wall
// time at more; per path and shape its best and median, the ratio to the first one (>1: faster)
// and whether its outputs have the first one's bits. From the repository root:
//   ./build-bench/small_m_ab M threads rounds q4_0|q8_0 PATH...
//   ./build-bench/small_m_ab 5 1 12 q4_0 0 2            # the 7B shapes, Previous against SpreadPanel
//   SHAPES=4096x4096,11008x4096 ./build-bench/small_m_ab 5 2 12 q4_0 0 1 2
// SHAPES: N x K list (default 4096x4096, 11008x4096, 4096x11008, 32000x4096); AB_COPY_MIB: the
// bytes of weight copies a shape cycles through (default 100 MiB; 0: one copy, cache-warm).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "base/arena.h"
#include "base/dtype.h"
#include "base/thread_pool.h"
#include "bench_clock.h"
#include "bench_weights.h"
#include "cpu/gemm_internal.h"
#include "cpu/kernels.h"
using namespace emollm;

namespace {
struct Shape {
  int64_t N, K;
};
struct HugeFree {
  void operator()(void* p) const { aligned_free(p); }
};
}  // namespace

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: small_m_ab M threads rounds q4_0|q8_0 PATH...  (0 Previous, 1 Spread, 2 SpreadPanel)\n");
    return 2;
  }
  const int64_t M = std::atoll(argv[1]);
  const int th = std::atoi(argv[2]), rounds = std::atoi(argv[3]);
  const std::string ty = argv[4];
  if (M < 1 || M > gemm_detail::kSmallM || th < 1 || rounds < 1 || (ty != "q4_0" && ty != "q8_0")) {
    std::fprintf(stderr, "small_m_ab: 1 <= M <= %d, threads and rounds >= 1, q4_0 or q8_0\n", int(gemm_detail::kSmallM));
    return 2;
  }
  const DType t = ty == "q8_0" ? DType::Q8_0 : DType::Q4_0;
  std::vector<int> var;
  for (int i = 5; i < argc; ++i) {
    var.push_back(std::atoi(argv[i]));
    if (var.back() < 0 || var.back() > 2) {
      std::fprintf(stderr, "small_m_ab: a path is 0 (Previous), 1 (Spread) or 2 (SpreadPanel)\n");
      return 2;
    }
  }
  std::vector<Shape> shapes;
  const char* se = std::getenv("SHAPES");
  std::string ss = se ? se : "4096x4096,11008x4096,4096x11008,32000x4096";
  for (size_t p = 0; p < ss.size();) {
    size_t e = ss.find(',', p);
    if (e == std::string::npos) e = ss.size();
    long long n = 0, k = 0;
    if (std::sscanf(ss.substr(p, e - p).c_str(), "%lldx%lld", &n, &k) != 2 || n < 1 || k < 32 || k % 32) {
      std::fprintf(stderr, "small_m_ab: SHAPES is NxK[,NxK...] with K a multiple of 32\n");
      return 2;
    }
    shapes.push_back({n, k});
    p = e + 1;
  }
  const char* ce = std::getenv("AB_COPY_MIB");
  const size_t copy_bytes = size_t(ce ? std::atoll(ce) : 100) << 20;
  ThreadPool pool(th);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const bool cpu = th == 1;
  std::printf("small_m_ab %s M=%lld threads=%d rounds=%d (%s time), weights %s\n", ty.c_str(), (long long)M, th, rounds,
              cpu ? "thread CPU" : "wall", copy_bytes ? "cold (copies cycled)" : "one copy (cache-warm)");
  for (const Shape& sh : shapes) {
    const int64_t N = sh.N, K = sh.K;
    const bench::QuantizedProblem in = bench::random_quantized(t, M, N, K, rng, nd);
    const size_t bytes = quant_repack_bytes(t, N, K);
    const size_t ncopy = std::max<size_t>(1, copy_bytes / bytes + (copy_bytes ? 1 : 0));
    std::vector<std::unique_ptr<uint8_t, HugeFree>> Wr;
    for (size_t c = 0; c < ncopy; ++c) {
      Wr.emplace_back(static_cast<uint8_t*>(aligned_alloc_huge(bytes)));
      quant_repack(in.w.data(), t, N, K, Wr.back().get(), &pool);
    }
    std::vector<std::vector<float>> Y(var.size(), std::vector<float>(size_t(M * N)));
    std::vector<std::vector<double>> ts(var.size());
    size_t next = 0;
    auto run = [&](size_t v) {
      gemm_detail::set_repacked_few_rows_path(gemm_detail::FewRowsPath(var[v]));
      const uint8_t* w = Wr[next++ % ncopy].get();
      const double t0 = cpu ? bench::thread_cpu() : bench::now();
      gemm_repacked(in.x.data(), K, w, t, nullptr, Y[v].data(), N, M, N, K, &pool);
      return (cpu ? bench::thread_cpu() : bench::now()) - t0;
    };
    for (size_t c = 0; c < ncopy; ++c)
      for (size_t v = 0; v < var.size(); ++v) run(v);  // warm-up: scratch, page faults, every copy once
    for (int r = 0; r < rounds; ++r)
      for (size_t k = 0; k < var.size(); ++k) {
        const size_t v = r % 2 ? var.size() - 1 - k : k;
        ts[v].push_back(run(v));
      }
    double best0 = 0, med0 = 0;
    for (size_t v = 0; v < var.size(); ++v) {
      const double b = bench::best(ts[v]), med = bench::median(ts[v]);
      if (v == 0) best0 = b, med0 = med;
      const bool same = std::memcmp(Y[v].data(), Y[0].data(), Y[0].size() * sizeof(float)) == 0;
      std::printf("  %5lld x %5lld path %d: best %7.3f ms  median %7.3f ms  %5.1f GB/s  x%.3f best  x%.3f median  %s\n",
                  (long long)N, (long long)K, var[v], b * 1e3, med * 1e3, double(bytes) / b * 1e-9, best0 / b, med0 / med,
                  same ? "same bits" : "BITS DIFFER");
    }
  }
  gemm_detail::set_repacked_few_rows_path(gemm_detail::FewRowsPath::Default);
  return 0;
}
