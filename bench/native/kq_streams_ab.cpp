// The K-quant records' M = 1 GEMV (q4_K / q6_K, 64-row records) on one stream a thread (the lean
// pass before session 20) against two (Zen 5's default; one on double-pumped AVX-512, decode_tuning.h: gemv_kquant_vnni.cpp kq_lean_parts, the
// thread's super-groups cut into 2 contiguous parts read side by side, each prefetched `ahead` on
// along itself: the q4_0 two-stream pass's form), and a plain read of the same bytes, cold,
// interleaved call by call (shuffled order each round). Every gemv row's bits are checked against
// the first row's before timing. Rows (ratio = the one row's time / this row's; > 1: faster):
//   one               one stream (set_kquant_streams(1)), the CPU's default prefetch (decode_tuning.h: none on
//                     double-pumped AVX-512, else T0 8 KiB ahead; q6_K's prefetches spread over each step's groups)
//   ms2               two streams, the CPU's default prefetch (T0: q4_K 2 KiB, q6_K 4 KiB ahead; none on double-pumped)
//   ms2-<a>           two streams, `a` KiB ahead (1, 2, 3, 4, 8); q6_K spreads its prefetches as above
//   one-nopf / ms2-nopf  one / two streams without software prefetch; one-4 / one-8 / one-16: one stream 4 / 8 / 16 KiB ahead (T0)
//   read-kq / read-kq-pf  the lean pass's loads in its order on the previous record layout (before session 26:
//                     scales and mins at the front) without its arithmetic, no prefetch / 8 KiB ahead (T0); on
//                     the read-order records the pass reads front to back, as read-1-nopf
//   read-4            four streams of plain loads over the thread's share, 128 B a step, 1 KiB ahead
//   read-4-nopf / read-1-nopf  four streams 128 B a step / one stream 256 B a step, no software prefetch
// Copies: 2 MiB pages, rotated over >= 512 MiB (beyond L3 on both cores; RP_COPIES=1 with a small
// N x K: one copy, hot in L2).
// RP_CPU=process (more than 1 thread): the process's CPU time over the threads (the pool's waits included;
// preemption excluded), read as ratios of interleaved rows on a loaded machine.
// Usage (repository root): [RP_CPU=1|process] [RP_COPIES=n] [RP_M=m] ./build-bench/kq_streams_ab [q4_K|q6_K] [threads 1] [rounds 60] [N 5632] [K 2048]
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "base/thread_pool.h"
#include "cpu/gemv_kquant_vnni.h"  // set_kquant_streams, set_kquant_stream_prefetch
#include "cpu/kernels.h"
#include "bench_read.h"
#include "read_pattern_rows.h"
#include "proc_rollup.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

using namespace emollm;

namespace {
#if defined(__x86_64__)
// The loads of the lean pass (one stream) in its order, without its arithmetic (read_kq below).
__attribute__((target("avx512f"))) uint64_t kq_order_read(const uint8_t* p, size_t nrec, size_t rec, bool q6, size_t pf) {
  __m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512();
  const size_t lines = rec / 64, codes = q6 ? 24 : 16;
  for (size_t r = 0; r < nrec; ++r, p += rec) {
    for (size_t j = 0; j < 8; ++j) {
      if (pf)
        for (size_t l = lines * j / 8; l < lines * (j + 1) / 8; ++l) _mm_prefetch(reinterpret_cast<const char*>(p + pf + 64 * l), _MM_HINT_T0);
      if (q6)
        a = _mm512_xor_si512(a, _mm512_load_si512(p + 64 * (4 + 2 * j))), b = _mm512_xor_si512(b, _mm512_load_si512(p + 64 * (5 + 2 * j)));
      else
        a = _mm512_xor_si512(a, _mm512_load_si512(p + 64 * (4 + j)));
      for (size_t l = 0; l < codes; l += 2) {
        a = _mm512_xor_si512(a, _mm512_load_si512(p + 64 * (20 + codes * j + l)));
        b = _mm512_xor_si512(b, _mm512_load_si512(p + 64 * (21 + codes * j + l)));
      }
    }
    if (!q6)
      for (size_t l = 12; l < 20; ++l) a = _mm512_xor_si512(a, _mm512_load_si512(p + 64 * l));
    for (size_t l = 0; l < 4; ++l) b = _mm512_xor_si512(b, _mm512_load_si512(p + 64 * l));
  }
  return bench::fold(_mm512_xor_si512(a, b));
}
#endif
}  // namespace

int main(int argc, char** argv) {
#if !defined(__x86_64__)
  return bench::x86_64_only("kq_streams_ab");
#else
  const DType t = argc > 1 && std::strcmp(argv[1], "q6_K") == 0 ? DType::Q6_K : DType::Q4_K;
  // RP_COPIES=n: n copies (RP_COPIES=1 with a small N x K: the records hot in L2, the pass's
  // compute rate without the memory side)
  const bench::PatternArgs a = bench::pattern_args(argc, argv, 2, 60, true, bench::CopiesFrom::Env);  // RP_CPU=1 | process
  const int64_t N = a.N, K = a.K;
  if (!kquant_repacked_usable() || K % 256 != 0) {
    std::fprintf(stderr, "kq_streams_ab: needs AVX-512 VNNI and K a multiple of 256\n");
    return 2;
  }
  ThreadPool pool(a.threads);
  const size_t bytes = kquant_repack_bytes(t, N, K);
  const int copies = a.copies(bytes, 512);
  // random blocks with d (and q4_K's dmin) 2^-7: every code, scale and min pattern
  const size_t bb = t == DType::Q6_K ? 210 : 144, nblk = size_t(N) * size_t(K / 256);
  std::vector<uint8_t> w(bb * nblk);
  std::mt19937 rng(7);
  for (auto& b : w) b = uint8_t(rng());
  for (size_t i = 0; i < nblk; ++i) {
    uint8_t* b = w.data() + i * bb;
    if (t == DType::Q6_K)
      b[208] = 0, b[209] = 0x20;
    else
      b[0] = 0, b[1] = 0x20, b[2] = 0, b[3] = 0x20;
  }
  const std::vector<uint8_t*> cp = bench::huge_copies(bytes, copies, [&](uint8_t* first) {
    kquant_repack(w.data(), t, N, K, first, &pool);
  });
  // RP_M=m: m rows of X (the M = 2-8 passes, the prefill beyond) instead of the decode's one
  const int64_t M = bench::env_count("RP_M", 1);
  std::vector<float> x(static_cast<size_t>(M * K)), y(static_cast<size_t>(M * N));
  for (auto& v : x) v = float(int(rng() % 2001) - 1000) / 1000.f;
  auto gemv = [&](int streams, int64_t ahead) {
    return [&, streams, ahead](const uint8_t* W) {
      gemm_detail::set_kquant_streams(streams);
      gemm_detail::set_kquant_stream_prefetch(ahead);
      gemm_kquant_repacked(x.data(), K, W, t, nullptr, y.data(), N, M, N, K, &pool);
      gemm_detail::set_kquant_streams(gemm_detail::decode_tuning().kquant_streams);
      gemm_detail::set_kquant_stream_prefetch(-1);
    };
  };
  std::vector<bench::PatternRow> rows = {
      {"one", gemv(1, -1), {}}, {"ms2", gemv(2, -1), {}}, {"ms2-1", gemv(2, 1024), {}}, {"ms2-2", gemv(2, 2048), {}}, {"ms2-3", gemv(2, 3072), {}}, {"ms2-4", gemv(2, 4096), {}}, {"ms2-8", gemv(2, 8192), {}},
      {"one-nopf", gemv(1, 0), {}}, {"ms2-nopf", gemv(2, 0), {}}, {"one-4", gemv(1, 4096), {}}, {"one-8", gemv(1, 8192), {}}, {"one-16", gemv(1, 16384), {}}};
  const int64_t per_thread = (N + 63) / 64;
  // plain reads of the thread's share: S streams, 128 B a step, pf bytes ahead (0: no software prefetch)
  auto read = [&](auto streams, size_t step, size_t pf) {
    return [&, step, pf](const uint8_t* W) {
      pool.run([&](int ith, int nth) {
        const int64_t s0 = per_thread * ith / nth, s1 = per_thread * (ith + 1) / nth;
        const size_t sg = bytes / size_t(per_thread);
        bench::g_sink.fetch_xor(bench::read_streams<decltype(streams)::value>(W + size_t(s0) * sg, size_t(s1 - s0) * sg, step, pf),
                         std::memory_order_relaxed);
      });
    };
  };
  // the lean pass's order of lines over the thread's share, no arithmetic, pf bytes ahead (0: none):
  // per record and sub-block step j the step's scale line(s), then its code lines; then the min
  // and d lines (q4_K: sc line 4 + j, codes 20 + 16 j.., mins 12-19, d 0-3; q6_K: sc lines 4 + 2j,
  // 5 + 2j, codes 20 + 24 j.., d 0-3)
  const bool q6 = t == DType::Q6_K;
  const size_t rec = q6 ? 4 * 3392 : 4 * 2368;
  auto read_kq = [&](size_t pf) {
    return [&, pf](const uint8_t* W) {
      pool.run([&](int ith, int nth) {
        const int64_t s0 = per_thread * ith / nth, s1 = per_thread * (ith + 1) / nth;
        const size_t sg = bytes / size_t(per_thread);
        const uint8_t* p = W + size_t(s0) * sg;
        const size_t nrec = size_t(s1 - s0) * sg / rec;
        bench::g_sink.fetch_xor(kq_order_read(p, nrec, rec, q6, pf), std::memory_order_relaxed);
      });
    };
  };
  rows.push_back({"read-kq", read_kq(0), {}});
  rows.push_back({"read-kq-pf", read_kq(8192), {}});
  rows.push_back({"read-4", read(std::integral_constant<int, 4>{}, 128, 1024), {}});
  rows.push_back({"read-4-nopf", read(std::integral_constant<int, 4>{}, 128, 0), {}});
  rows.push_back({"read-1-nopf", read(std::integral_constant<int, 1>{}, 256, 0), {}});
  bench::keep_named_rows(rows);  // RP_ROWS
  if (!bench::same_bits("kq_streams_ab", "the one-stream pass", rows, y, cp[0], rows[0].run,
                        [](const bench::PatternRow& row) { return row.name.rfind("read", 0) != 0; }))
    return 3;
  std::vector<std::vector<double>> ratio(rows.size());  // per round: one / row
  bench::time_rows(
      rows, a, rng, [&](const bench::PatternRow&, int c) { return cp[size_t(c % copies)]; },
      [&] {
        for (size_t i = 0; i < rows.size(); ++i) ratio[i].push_back(rows[0].t.back() / rows[i].t.back());
      });
  // the copies' huge-page coverage (the process's AnonHugePages against the copies' bytes)
  const double anon_kb = bench::proc_rollup().anon_huge_kb;
  std::printf("%s records N=%lld K=%lld (%.2f MiB), %d thread(s), %d rounds, %d copies in 2 MiB pages (AnonHugePages %.0f of %.0f MiB), %s; ratio = one-stream time / row time\n",
              dtype_name(t), (long long)N, (long long)K, double(bytes) / (1 << 20), a.threads, a.rounds, copies, anon_kb / 1024,
              double(bytes) * copies / (1 << 20), bench::pattern_clock_name(a.clock));
  std::printf("%-14s %9s %9s %9s %9s %8s %8s %9s\n", "row", "best us", "med us", "best GB/s", "med GB/s", "r(best)",
              "r(med)", "med r/rnd");
  double gb = 0, gm = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    auto& row = rows[i];
    std::sort(row.t.begin(), row.t.end());
    std::sort(ratio[i].begin(), ratio[i].end());
    const double b = row.t.front(), m = row.t[row.t.size() / 2];
    if (gb == 0) gb = b, gm = m;
    std::printf("%-14s %9.1f %9.1f %9.1f %9.1f %8.3f %8.3f %9.3f\n", row.name.c_str(), b * 1e6, m * 1e6,
                double(bytes) / b * 1e-9, double(bytes) / m * 1e-9, gb / b, gm / m, ratio[i][ratio[i].size() / 2]);
  }
  return bench::g_sink.load() == 42 ? 1 : 0;
#endif
}
