// The X rounding to q8_0 into the VNNI GEMMs' 4-row X panels (Q8XPanels<4>::pack, what the q4_0 /
// q8_0 prefill GEMMs on repacked weights run before their kernel; gemm_q8_xquant.cpp) alone: each
// 4-row panel rounded row by row (qx_pack_row_avx512: 8 masked stores a block) against its 4 rows at
// once (qx_pack_panel4_avx512: 2 full stores a block; switched by
// gemm_detail::set_qx_pack_panel4), interleaved call by call in ABBA order, timed by the calling
// thread's CPU time (1 thread: Q8XPanels::pack on the caller). Prints each path's median / best
// and the ratio row / panel (> 1: the panel path faster), and whether the two wrote the same bytes.
//   ./build-bench/qx_pack_ab [M 628] [K 4096] [rounds 200]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "base/dtype.h"
#include "cpu/gemm_q8_xpanel.h"
#include "cpu/kernels.h"
#include "bench_clock.h"
using namespace emollm;

int main(int argc, char** argv) {
#if defined(__x86_64__)
  const int64_t M = argc > 1 ? std::max(1L, std::atol(argv[1])) : 628;
  const int64_t K = argc > 2 ? std::max(32L, std::atol(argv[2])) / 32 * 32 : 4096;
  const int rounds = argc > 3 ? std::max(1, std::atoi(argv[3])) : 200;
  if (isa_active() < Isa::Avx512) {
    std::printf("qx_pack_ab: no AVX-512: the fused rounding does not run\n");
    return 0;
  }
  using Panels = gemm_detail::Q8XPanels<4>;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> X(size_t(M * K));
  for (float& x : X) x = nd(rng);
  const int64_t npm = (M + 3) / 4;
  const size_t n = size_t(npm * (K / 32) * Panels::kBlockDwords);
  std::vector<int32_t> out[2] = {std::vector<int32_t>(n, 1), std::vector<int32_t>(n, 2)};
  std::vector<int8_t> qtmp(size_t(K) + 64);
  std::vector<float> dtmp(size_t(K / 4) + 16);
  auto run = [&](int panel) {
    gemm_detail::set_qx_pack_panel4(panel != 0);
    const double c0 = bench::thread_cpu();
    Panels::pack(X.data(), K, M, K, 0, npm, 8, qtmp.data(), dtmp.data(), out[panel].data());
    return bench::thread_cpu() - c0;
  };
  std::vector<double> t[2];
  for (int r = 0; r < rounds; ++r)
    for (int k = 0; k < 2; ++k) {
      const int panel = (r % 2 == 0) ? k : 1 - k;
      t[panel].push_back(run(panel));
    }
  gemm_detail::set_qx_pack_panel4(true);
  const bool same = std::memcmp(out[0].data(), out[1].data(), n * 4) == 0;
  std::printf("X rounding into 4-row panels, M %lld K %lld, %d rounds, thread CPU time; same bytes: %s\n", (long long)M,
              (long long)K, rounds, same ? "yes" : "NO");
  std::printf("  row by row : median %.1f us best %.1f us\n", 1e6 * bench::median(t[0]), 1e6 * bench::best(t[0]));
  std::printf("  4-row panel: median %.1f us best %.1f us\n", 1e6 * bench::median(t[1]), 1e6 * bench::best(t[1]));
  std::printf("  row / panel: median %.3f best %.3f\n", bench::median(t[0]) / bench::median(t[1]),
              bench::best(t[0]) / bench::best(t[1]));
  return same ? 0 : 1;
#else
  (void)argc, (void)argv;
  std::printf("qx_pack_ab: x86-64 only\n");
  return 0;
#endif
}
