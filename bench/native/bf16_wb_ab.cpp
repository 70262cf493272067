// scratch: in-process ABBA of gemm() bf16 driver variants (set_bf16_wb_variant; -1 = packed driver)
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "base/dtype.h"
#include "base/thread_pool.h"
#include "cpu/gemm_internal.h"
#include "cpu/kernels.h"
#include "bench_clock.h"
using namespace emollm;
namespace emollm { namespace gemm_detail { void set_bf16_wb_variant(int); } }

int main(int argc, char** argv) {
  const int64_t M = std::atoll(argv[1]), N = std::atoll(argv[2]), K = std::atoll(argv[3]);
  const int th = std::atoi(argv[4]), rounds = std::atoi(argv[5]);
  std::vector<int> vs;
  for (int i = 6; i < argc; ++i) vs.push_back(std::atoi(argv[i]));
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> X(size_t(M * K));
  std::vector<uint16_t> W(size_t(N * K));
  for (auto& v : W) { float f = 0.02f * nd(rng); uint32_t u; std::memcpy(&u, &f, 4); v = uint16_t(u >> 16); }
  for (float& v : X) v = nd(rng);
  ThreadPool pool(th);
  std::vector<std::vector<float>> Y(vs.size(), std::vector<float>(size_t(M * N)));
  std::vector<std::vector<double>> ts(vs.size());
  const bool cpu = th == 1;
  auto run = [&](size_t c) {
    gemm_detail::set_bf16_gemm_wbcast(vs[c] >= 0);
    gemm_detail::set_bf16_wb_variant(vs[c] < 0 ? 0 : vs[c]);
    const double t0 = cpu ? bench::thread_cpu() : bench::now();
    gemm(X.data(), K, W.data(), DType::BF16, nullptr, Y[c].data(), N, M, N, K, &pool);
    return (cpu ? bench::thread_cpu() : bench::now()) - t0;
  };
  for (size_t c = 0; c < vs.size(); ++c) run(c);
  for (int r = 0; r < rounds; ++r)
    for (size_t k = 0; k < vs.size(); ++k) {
      const size_t c = r % 2 ? vs.size() - 1 - k : k;
      ts[c].push_back(run(c));
    }
  std::printf("bf16_wb_ab M=%lld N=%lld K=%lld threads=%d rounds=%d\n", (long long)M, (long long)N, (long long)K, th, rounds);
  double b0 = 0, m0 = 0;
  for (size_t c = 0; c < vs.size(); ++c) {
    const double b = bench::best(ts[c]), med = bench::median(ts[c]);
    if (c == 0) b0 = b, m0 = med;
    double maxd = 0;
    for (size_t i = 0; i < Y[0].size(); ++i) maxd = std::max(maxd, double(std::fabs(Y[c][i] - Y[0][i])));
    std::printf("  v%3d best %8.2f med %8.2f  x%.3f (med x%.3f)  %s maxdiff %.3g\n", vs[c], b * 1e3, med * 1e3, b0 / b, m0 / med,
                std::memcmp(Y[c].data(), Y[0].data(), Y[0].size() * 4) == 0 ? "same" : "DIFF", maxd);
  }
  return 0;
}
