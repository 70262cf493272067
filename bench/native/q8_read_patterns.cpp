// Where the repacked q8_0 M = 1 GEMV's time goes against the read probe (q40_read_patterns' method
// for q8_0's one-group records): GEMV variants and load-only walks of the same cold bytes,
// interleaved call by call (shuffled order each round), so that the rows differ only in how they
// read. Rows (ratio = the gemv row's time / this row's; > 1: faster):
//   gemv              gemv_repacked with this CPU's defaults (decode_tuning.h q80_streams / q80_prefetch)
//   gemv-prev         set_q80_streams(0): four adjacent groups a pass (4 streams that end together
//                     every nb records and restart 4 * nb records on; no prefetch along them)
//   gemv-p<S>-<pf>    set_q80_streams(S) with set_q80_prefetch(pf): the thread's groups in S
//                     contiguous parts read side by side (parts_q80_avx512); pf = t0 / t1 / nta / none,
//                     one line before each quant line's load, this CPU's q80_ahead on
//   gemv-p<S>-t0-<a>  the same with T0 `a` bytes ahead (set_q80_ahead; 512, 1k, 2k, 4k but the default)
//   gemv-p2-nta-<a> / gemv-p2-t1-<a>  2 parts with NTA / T1 `a` bytes ahead (512, 1k, 2k but the default)
//   gemv-p<S>-t0[-<a>]-l17  those T0 rows with a 17th prefetch a block pair (set_q80_line17: the
//                     line of a 544-byte record pair's 17 that the 16 per-line prefetches leave out)
//   loads-prev        gemv-prev's loads alone, in its order (per block pair 4 groups x 17 lines), no arithmetic
//   read-4            bench_kernels' read probe loop: 4 streams, 128 bytes a step, prefetch 1 KiB ahead (T0)
//   read-<S>-nopf     S streams (the thread's part cut in S), 1088 bytes (a q8_0 block pair) a step, no prefetch
//   read-<S>-nopf128  the same, 128 bytes a step (read-4's loop without its prefetch)
// Every gemv row's bits are checked against gemv-prev's before timing. Each thread reads its
// contiguous share of the groups (the GEMV: its own dispatch). Copies: 2 MiB pages, rotated over
// >= 512 MiB (beyond L3); with `copies` given, that many (1: the same bytes every call, hot in
// L2 / L3 when they fit: the kernel's arithmetic rate).
// Usage (repository root): [RP_CPU=1|process] [RP_ROWS=a,b] ./build-bench/q8_read_patterns [threads 1] [rounds 40] [N 5632] [K 2048] [copies]
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "cpu/gemm_internal.h"  // set_q80_streams, set_q80_prefetch
#include "cpu/kernels.h"
#include "bench_read.h"
#include "read_pattern_rows.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

using namespace emollm;

namespace {
constexpr size_t kRec = 544;  // one q8_0 16-row record (32 B scales + 512 B quants)

#if defined(__x86_64__)
using bench::fold;
// gemv-prev's loads over `groups` groups of nb records: 4 adjacent groups a pass, per block the
// 4 groups' 17 lines (the scales' line shared with the quants' first: records are 8.5 lines).
BENCH_READ_AVX512 uint64_t loads_prev(const uint8_t* p, int64_t groups, int64_t nb) {
  __m512i a = _mm512_setzero_si512();
  for (int64_t g = 0; g + 4 <= groups; g += 4)
    for (int64_t b = 0; b < nb; ++b)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        const uint8_t* r = p + (size_t(g + j) * size_t(nb) + size_t(b)) * kRec;
#pragma GCC unroll 8
        for (int t = 0; t < 8; ++t) a = _mm512_xor_si512(a, _mm512_loadu_si512(r + 32 + 64 * t));
      }
  return fold(a);
}
#endif
}  // namespace

int main(int argc, char** argv) {
#if !defined(__x86_64__)
  return bench::x86_64_only("q8_read_patterns");
#else
  const bench::PatternArgs a = bench::pattern_args(argc, argv, 1, 40, true);  // RP_CPU=1 | process
  const int64_t N = a.N, K = a.K;
  if (N % 64 != 0 || K % 32 != 0) {
    std::fprintf(stderr, "q8_read_patterns: N a multiple of 64, K of 32\n");
    return 2;
  }
  ThreadPool pool(a.threads);
  const size_t bytes = quant_repack_bytes(DType::Q8_0, N, K);
  const int64_t ng = N / 16, nb = K / 32;
  const int copies = a.copies(bytes, 512);
  std::mt19937 rng(7);
  const std::vector<uint8_t*> cp = bench::repacked_copies(DType::Q8_0, N, K, bytes, copies, &pool, rng);
  std::vector<float> x(static_cast<size_t>(K)), y(static_cast<size_t>(N));
  for (auto& v : x) v = float(int(rng() % 2001) - 1000) / 1000.f;
  // each thread's share: whole groups of 4
  auto share = [&](const std::function<uint64_t(const uint8_t*, int64_t)>& f, const uint8_t* W) {
    pool.run([&](int ith, int nth) {
      const int64_t q = ng / 4, s0 = q * ith / nth * 4, s1 = q * (ith + 1) / nth * 4;
      bench::g_sink.fetch_xor(f(W + size_t(s0 * nb) * kRec, s1 - s0), std::memory_order_relaxed);
    });
  };
  const int s_def = gemm_detail::q80_streams();
  const gemm_detail::GemvPrefetch p_def = gemm_detail::q80_prefetch();
  const int a_def = gemm_detail::q80_ahead();
  const bool l_def = gemm_detail::q80_line17();
  // a row's settings for the call
  auto gemv = [&](int streams, gemm_detail::GemvPrefetch pf, int ahead, bool line17 = false) {
    return [&, streams, pf, ahead, line17](const uint8_t* W) {
      gemm_detail::set_q80_streams(streams);
      gemm_detail::set_q80_prefetch(pf);
      gemm_detail::set_q80_ahead(ahead);
      gemm_detail::set_q80_line17(line17);
      gemv_repacked(x.data(), W, DType::Q8_0, nullptr, y.data(), N, K, &pool);
      gemm_detail::set_q80_streams(s_def);
      gemm_detail::set_q80_prefetch(p_def);
      gemm_detail::set_q80_ahead(a_def);
      gemm_detail::set_q80_line17(l_def);
    };
  };
  using P = gemm_detail::GemvPrefetch;
  std::vector<bench::PatternRow> rows = {
      // this CPU's defaults (decode_tuning.h)
      {"gemv", [&](const uint8_t* W) { gemv_repacked(x.data(), W, DType::Q8_0, nullptr, y.data(), N, K, &pool); }, {}},
      {"gemv-prev", gemv(0, P::None, a_def), {}},
  };
  const char* pfn[] = {"t0", "nta", "none", "t1"};
  for (int S : {1, 2, 3, 4})
    for (P pf : {P::None, P::T0, P::T1, P::Nta})
      rows.push_back({std::string("gemv-p") + std::to_string(S) + "-" + pfn[int(pf)], gemv(S, pf, a_def), {}});
  auto bytes_name = [](int ahead) { return ahead < 1024 ? std::to_string(ahead) : std::to_string(ahead / 1024) + "k"; };
  for (int S : {2, 3, 4})
    for (int ahead : {512, 1024, 2048, 4096})
      if (ahead != a_def)
        rows.push_back({std::string("gemv-p") + std::to_string(S) + "-t0-" + bytes_name(ahead), gemv(S, P::T0, ahead), {}});
  // NTA / T1 along 2 parts nearer than the default distance (the per-line form beside each load)
  for (int ahead : {512, 1024, 2048})
    if (ahead != a_def) {
      rows.push_back({std::string("gemv-p2-nta-") + bytes_name(ahead), gemv(2, P::Nta, ahead), {}});
      rows.push_back({std::string("gemv-p2-t1-") + bytes_name(ahead), gemv(2, P::T1, ahead), {}});
    }
  // the same T0 rows with the 17th prefetch a block pair (set_q80_line17)
  for (int S : {2, 3, 4})
    for (int ahead : {512, 1024, 2048, 4096})
      rows.push_back({std::string("gemv-p") + std::to_string(S) + "-t0" + (ahead == a_def ? "" : "-" + bytes_name(ahead)) + "-l17",
                      gemv(S, P::T0, ahead, true), {}});
  rows.push_back({"loads-prev", [&](const uint8_t* W) { share([&](const uint8_t* p, int64_t g) { return loads_prev(p, g, nb); }, W); }, {}});
  rows.push_back({"read-4", [&](const uint8_t* W) { share([&](const uint8_t* p, int64_t g) { return bench::read_streams<4>(p, size_t(g * nb) * kRec, 128, 1024); }, W); }, {}});
  rows.push_back({"read-1-nopf", [&](const uint8_t* W) { share([&](const uint8_t* p, int64_t g) { return bench::read_streams<1>(p, size_t(g * nb) * kRec, 2 * kRec, 0); }, W); }, {}});
  rows.push_back({"read-2-nopf", [&](const uint8_t* W) { share([&](const uint8_t* p, int64_t g) { return bench::read_streams<2>(p, size_t(g * nb) * kRec, 2 * kRec, 0); }, W); }, {}});
  rows.push_back({"read-4-nopf", [&](const uint8_t* W) { share([&](const uint8_t* p, int64_t g) { return bench::read_streams<4>(p, size_t(g * nb) * kRec, 2 * kRec, 0); }, W); }, {}});
  rows.push_back({"read-1-nopf128", [&](const uint8_t* W) { share([&](const uint8_t* p, int64_t g) { return bench::read_streams<1>(p, size_t(g * nb) * kRec, 128, 0); }, W); }, {}});
  rows.push_back({"read-2-nopf128", [&](const uint8_t* W) { share([&](const uint8_t* p, int64_t g) { return bench::read_streams<2>(p, size_t(g * nb) * kRec, 128, 0); }, W); }, {}});
  rows.push_back({"read-4-nopf128", [&](const uint8_t* W) { share([&](const uint8_t* p, int64_t g) { return bench::read_streams<4>(p, size_t(g * nb) * kRec, 128, 0); }, W); }, {}});
  bench::keep_named_rows(rows);  // RP_ROWS
  // every gemv row gives gemv-prev's bits
  if (!bench::same_bits("q8_read_patterns", "gemv-prev", rows, y, cp[0], gemv(0, P::None, a_def),
                        [](const bench::PatternRow& row) { return row.name.compare(0, 4, "gemv") == 0; }))
    return 3;
  bench::time_rows(rows, a, rng, cp);
  std::printf("q8_0 repacked N=%lld K=%lld (%.2f MiB), %d thread(s), %d rounds, %d copies in 2 MiB pages, %s; defaults streams=%d prefetch=%s ahead=%d; ratio = gemv time / row time\n",
              (long long)N, (long long)K, double(bytes) / (1 << 20), a.threads, a.rounds, copies, bench::pattern_clock_name(a.clock),
              s_def, pfn[int(p_def)], a_def);
  bench::print_ratio_table(rows, bytes, 14);
  return bench::g_sink.load() == 42 ? 1 : 0;
#endif
}
