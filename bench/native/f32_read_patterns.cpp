// Where the f32 M = 1 stream GEMV's time goes (gemm_avx512.cpp gemv_streams: each thread's rows in
// 4 parts read side by side, 128 bytes of each a step) against plain reads of the same cold bytes,
// interleaved call by call (shuffled order each round): whether the f32 decode's gap to the read
// probe is its read pattern or its per-call work. Rows (ratio = the gemv row's time / this row's):
//   gemv            gemm_huge_pages at M = 1 (the model's f32 decode path) with this CPU's stream prefetch
//   gemv-t0 / -none the same with set_gemv_streams_prefetch T0 / none (same bits)
//   copy / copy-x1  a scratch copy of the kernel's loop without prefetch, x loaded per stream (as
//                   the kernel) / once a step for the four streams (streams_f32)
//   read-4          bench_kernels' read probe loop: 4 streams, 128 bytes a step, prefetch 1 KiB ahead (T0)
//   read-<S>-nopf   S streams (the thread's rows cut in S parts), 128 bytes a step, no prefetch:
//                   read-4-nopf is the kernel's read pattern without its arithmetic
//   read-<S>-nopf-1k the same, 1 KiB a stream a step
// Each thread reads its contiguous share of the rows (the GEMV: its own dispatch). Copies: 2 MiB
// pages rotated over >= 384 MiB (beyond L3); with `copies` given, that many.
// Usage (repository root): [RP_CPU=1] [RP_ROWS=a,b] ./build-bench/f32_read_patterns [threads 1] [rounds 40] [N 5632] [K 2048] [copies]
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "cpu/gemm_internal.h"  // set_gemv_streams_prefetch
#include "cpu/kernels.h"
#include "bench_read.h"
#include "read_pattern_rows.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

using namespace emollm;

namespace {
#if defined(__x86_64__)
// A scratch copy of gemv_streams<F32>'s loop without prefetch (rows `copy` / `copy-x1`): S = 4
// parts of the rows side by side, 128 bytes of each a step, two FMAs per stream with x loaded
// per stream (as the kernel's f32_stream_step) or once a step for all four (XOnce: 2 x loads a
// step instead of 8). Each row's 4 accumulators folded into y[n] (not the kernel's reduction).
template <bool XOnce>
__attribute__((target("avx512f"))) uint64_t streams_f32(const uint8_t* W, size_t bytes, const float* x, int64_t K, float* y) {
  constexpr int S = 4;
  const size_t rb = size_t(K) * 4;
  const int64_t rows = int64_t(bytes / rb), len = rows / S;
  for (int64_t i = 0; i < len; ++i) {
    const float* row[S];
    __m512 s[S][2];
    for (int q = 0; q < S; ++q) {
      row[q] = reinterpret_cast<const float*>(W + size_t(q * len + i) * rb);
      s[q][0] = s[q][1] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k + 32 <= K; k += 32) {
      if constexpr (XOnce) {
        const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
#pragma GCC unroll 4
        for (int q = 0; q < S; ++q) {
          s[q][0] = _mm512_fmadd_ps(_mm512_loadu_ps(row[q] + k), x0, s[q][0]);
          s[q][1] = _mm512_fmadd_ps(_mm512_loadu_ps(row[q] + k + 16), x1, s[q][1]);
        }
      } else {
#pragma GCC unroll 4
        for (int q = 0; q < S; ++q) {
          s[q][0] = _mm512_fmadd_ps(_mm512_loadu_ps(row[q] + k), _mm512_loadu_ps(x + k), s[q][0]);
          s[q][1] = _mm512_fmadd_ps(_mm512_loadu_ps(row[q] + k + 16), _mm512_loadu_ps(x + k + 16), s[q][1]);
        }
      }
    }
    for (int q = 0; q < S; ++q) y[q * len + i] = _mm512_reduce_add_ps(_mm512_add_ps(s[q][0], s[q][1]));
  }
  return uint64_t(y[0] != 0);
}
#endif
}  // namespace

int main(int argc, char** argv) {
#if !defined(__x86_64__)
  return bench::x86_64_only("f32_read_patterns");
#else
  const bench::PatternArgs a = bench::pattern_args(argc, argv, 1, 40, false);  // RP_CPU=1
  const int64_t N = a.N, K = a.K;
  ThreadPool pool(a.threads);
  const size_t bytes = size_t(N) * size_t(K) * 4;
  const int copies = a.copies(bytes, 384);
  std::mt19937 rng(7);
  const std::vector<uint8_t*> cp = bench::huge_copies(bytes, copies, [&](uint8_t* first) {
    float* w0 = reinterpret_cast<float*>(first);
    for (size_t i = 0; i < size_t(N) * size_t(K); ++i) w0[i] = float(int(rng() % 2001) - 1000) / 4096.f;
  });
  std::vector<float> x(static_cast<size_t>(K)), y(static_cast<size_t>(N));
  for (auto& v : x) v = float(int(rng() % 2001) - 1000) / 1000.f;
  auto share = [&](const std::function<uint64_t(const uint8_t*, size_t)>& f, const uint8_t* W) {
    pool.run([&](int ith, int nth) {
      const int64_t r0 = N * ith / nth, r1 = N * (ith + 1) / nth;
      bench::g_sink.fetch_xor(f(W + size_t(r0) * size_t(K) * 4, size_t(r1 - r0) * size_t(K) * 4), std::memory_order_relaxed);
    });
  };
  const gemm_detail::GemvPrefetch p_def = gemm_detail::gemv_streams_prefetch();
  auto gemv = [&](gemm_detail::GemvPrefetch pf) {
    return [&, pf](const uint8_t* W) {
      gemm_detail::set_gemv_streams_prefetch(pf);
      gemm_huge_pages(x.data(), K, W, DType::F32, nullptr, y.data(), N, 1, N, K, &pool);
      gemm_detail::set_gemv_streams_prefetch(p_def);
    };
  };
  std::vector<bench::PatternRow> rows = {
      {"gemv", gemv(p_def), {}},
      {"gemv-t0", gemv(gemm_detail::GemvPrefetch::T0), {}},
      {"gemv-none", gemv(gemm_detail::GemvPrefetch::None), {}},
      {"copy", [&](const uint8_t* W) { share([&](const uint8_t* p, size_t n) { return streams_f32<false>(p, n, x.data(), K, y.data() + (p - W) / (4 * K)); }, W); }, {}},
      {"copy-x1", [&](const uint8_t* W) { share([&](const uint8_t* p, size_t n) { return streams_f32<true>(p, n, x.data(), K, y.data() + (p - W) / (4 * K)); }, W); }, {}},
      {"read-4", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<4>(p, n, 128, 1024); }, W); }, {}},
      {"read-1-nopf", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<1>(p, n, 128, 0); }, W); }, {}},
      {"read-2-nopf", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<2>(p, n, 128, 0); }, W); }, {}},
      {"read-4-nopf", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<4>(p, n, 128, 0); }, W); }, {}},
      {"read-8-nopf", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<8>(p, n, 128, 0); }, W); }, {}},
      {"read-2-nopf-1k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<2>(p, n, 1024, 0); }, W); }, {}},
      {"read-4-nopf-1k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<4>(p, n, 1024, 0); }, W); }, {}},
  };
  bench::keep_named_rows(rows);  // RP_ROWS
  bench::time_rows(rows, a, rng, cp);
  std::printf("f32 N=%lld K=%lld (%.2f MiB), %d thread(s), %d rounds, %d copies in 2 MiB pages, %s; default stream prefetch %d; ratio = gemv time / row time\n",
              (long long)N, (long long)K, double(bytes) / (1 << 20), a.threads, a.rounds, copies, bench::pattern_clock_name(a.clock), int(p_def));
  bench::print_ratio_table(rows, bytes, 15);
  return bench::g_sink.load() == 42 ? 1 : 0;
#endif
}
