// Where the bf16 / f16 M = 1 stream GEMV's time goes (gemm_avx512.cpp gemv_streams: each thread's
// rows in 4 parts read side by side, 128 bytes of each a step, the f32 products of the widened
// weights) against plain reads of the same cold bytes, interleaved call by call (shuffled order
// each round): f32_read_patterns' question for the half-precision weights, whose per-byte work is
// two (bf16: a shift or a mask a 16 weights) to four (f16: a vcvtph2ps a 16) times the f32 kernel's.
// Rows (ratio = the gemv row's time / this row's):
//   gemv             gemm_huge_pages at M = 1 (the model's bf16 / f16 decode path) with this CPU's
//                    stream prefetch (decode_tuning.h stream_prefetch)
//   gemv-t0 / -nta / -none  the same with set_gemv_streams_prefetch T0 / NTA / none (same bits: checked)
//   gemv-s4 / -s6    the same with set_gemv_half_long_streams 4 / 6 (streams a thread for K >= 4096;
//                    at shorter K both are the 4-stream kernel; same bits: checked)
//   block / block-none  bf16: gemm() at M = 1 with Args::huge_pages off, the 8-row block GEMV
//                    (bf16_gemv_block: the path of weights without a 2 MiB-page copy) with this CPU's
//                    block_prefetch / none, on the same copies (2 MiB pages: its TLB cost not included)
//   read-4           bench_kernels' read probe loop: 4 streams, 128 bytes a step, T0 1 KiB ahead
//   read-4-nopf      the same without prefetch: the kernel's read pattern without its arithmetic
//   part-int / part-fma / part-both  bf16: scratch parts of the kernel's loop (bf16_parts below):
//                    the shift / mask alone, the FMAs with x alone, both (the kernel's work)
// Each thread reads its contiguous share of the rows (the GEMV: its own dispatch). Copies: 2 MiB
// pages rotated over >= 384 MiB (beyond L3); with `copies` given, that many (1 and a small N: hot,
// the arithmetic's own rate).
// Usage (repository root): [RP_CPU=1] [RP_ROWS=a,b] ./build-bench/half_read_patterns bf16|f16 [threads 1] [rounds 40] [N 5632] [K 2048] [copies]
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "base/dtype.h"
#include "base/thread_pool.h"
#include "cpu/gemm_internal.h"  // set_gemv_streams_prefetch, set_gemv_block_prefetch
#include "cpu/kernels.h"
#include "bench_read.h"
#include "read_pattern_rows.h"

using namespace emollm;

// GCC 12 reports its own _mm512_undefined_*() helpers (inlined from immintrin.h) as uninitialised
// (as in kernels/cpu/gemm_avx512.cpp).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace {
#if defined(__x86_64__)
// Scratch parts of gemv_streams<BF16>'s loop (4 parts side by side, 128 bytes of each a step, T0
// 1 KiB ahead, each 64-byte line loaded once into a register), to see which part of its work costs
// against read-4: Int: the shift / mask of each line folded by xor (no x, no FMA); Fma: the raw
// lines as f32 into 4 FMAs a step with x (no shift / mask); Both: the kernel's work.
enum class Part { Int, Fma, Both };
template <Part P>
__attribute__((target("avx512f"))) uint64_t bf16_parts(const uint8_t* W, size_t bytes, const float* x, size_t rb) {
  constexpr int S = 4;
  const int64_t rows = int64_t(bytes / rb), len = rows / S, K = int64_t(rb / 2);
  const __m512i hi = _mm512_set1_epi32(int(0xFFFF0000u));
  __m512 acc = _mm512_setzero_ps();
  __m512i ai = _mm512_setzero_si512();
  for (int64_t i = 0; i < len; ++i) {
    const uint8_t* row[S];
    __m512 s[S][4];
    for (int q = 0; q < S; ++q) {
      row[q] = W + size_t(q * len + i) * rb;
      for (int j = 0; j < 4; ++j) s[q][j] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k + 64 <= K; k += 64) {
      const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
      const __m512 x2 = _mm512_loadu_ps(x + k + 32), x3 = _mm512_loadu_ps(x + k + 48);
#pragma GCC unroll 4
      for (int q = 0; q < S; ++q) {
        const uint8_t* p = row[q] + 2 * k;
        _mm_prefetch(reinterpret_cast<const char*>(p + 1024), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(p + 1088), _MM_HINT_T0);
        __m512i v0 = _mm512_loadu_si512(p), v1 = _mm512_loadu_si512(p + 64);
        asm("" : "+v"(v0), "+v"(v1));
        if constexpr (P == Part::Int) {
          ai = _mm512_xor_si512(ai, _mm512_xor_si512(_mm512_slli_epi32(v0, 16), _mm512_and_si512(v0, hi)));
          ai = _mm512_xor_si512(ai, _mm512_xor_si512(_mm512_slli_epi32(v1, 16), _mm512_and_si512(v1, hi)));
        } else if constexpr (P == Part::Fma) {
          s[q][0] = _mm512_fmadd_ps(_mm512_castsi512_ps(v0), x0, s[q][0]);
          s[q][1] = _mm512_fmadd_ps(_mm512_castsi512_ps(v0), x1, s[q][1]);
          s[q][2] = _mm512_fmadd_ps(_mm512_castsi512_ps(v1), x2, s[q][2]);
          s[q][3] = _mm512_fmadd_ps(_mm512_castsi512_ps(v1), x3, s[q][3]);
        } else {
          s[q][0] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), x0, s[q][0]);
          s[q][1] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v0, hi)), x1, s[q][1]);
          s[q][2] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)), x2, s[q][2]);
          s[q][3] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v1, hi)), x3, s[q][3]);
        }
      }
    }
    for (int q = 0; q < S; ++q)
      acc = _mm512_add_ps(acc, _mm512_add_ps(_mm512_add_ps(s[q][0], s[q][1]), _mm512_add_ps(s[q][2], s[q][3])));
  }
  return uint64_t(_mm512_reduce_add_ps(acc) != 0) ^ bench::fold(ai);
}
#endif
}  // namespace

int main(int argc, char** argv) {
#if !defined(__x86_64__)
  return bench::x86_64_only("half_read_patterns");
#else
  DType t = DType::BF16;
  if (argc < 2 || !dtype_from_name(argv[1], &t) || (t != DType::BF16 && t != DType::F16)) {
    std::fprintf(stderr, "usage: half_read_patterns bf16|f16 [threads 1] [rounds 40] [N 5632] [K 2048] [copies]\n");
    return 2;
  }
  const bench::PatternArgs a = bench::pattern_args(argc, argv, 2, 40, true);  // after the dtype; RP_CPU=1 | process
  const int64_t N = a.N, K = a.K;
  ThreadPool pool(a.threads);
  const size_t rb = dtype_row_bytes(t, K), bytes = size_t(N) * rb;
  const int copies = a.copies(bytes, 384);
  std::mt19937 rng(7);
  const std::vector<uint8_t*> cp = bench::huge_copies(bytes, copies, [&](uint8_t* first) {
    std::vector<float> w(static_cast<size_t>(K));
    for (int64_t n = 0; n < N; ++n) {
      for (auto& v : w) v = float(int(rng() % 2001) - 1000) / 4096.f;
      quantize_row(t, w.data(), first + size_t(n) * rb, K);
    }
  });
  std::vector<float> x(static_cast<size_t>(K)), y(static_cast<size_t>(N)), y_ref;
  for (auto& v : x) v = float(int(rng() % 2001) - 1000) / 1000.f;
  auto share = [&](const std::function<uint64_t(const uint8_t*, size_t)>& f, const uint8_t* W) {
    pool.run([&](int ith, int nth) {
      const int64_t r0 = N * ith / nth, r1 = N * (ith + 1) / nth;
      bench::g_sink.fetch_xor(f(W + size_t(r0) * rb, size_t(r1 - r0) * rb), std::memory_order_relaxed);
    });
  };
  using gemm_detail::GemvPrefetch;
  const GemvPrefetch p_def = gemm_detail::gemv_streams_prefetch(), b_def = gemm_detail::gemv_block_prefetch();
  int mismatches = 0;
  // every gemv row's outputs bit for bit the first gemv call's (the prefetch changes no bit), on
  // every timed call and so on every copy: a count in the header (not bench::same_bits' one call
  // per row on one copy before the timing)
  auto check = [&] {
    if (y_ref.empty()) y_ref = y;
    else if (std::memcmp(y.data(), y_ref.data(), y.size() * sizeof(float)) != 0) ++mismatches;
  };
  auto gemv = [&](GemvPrefetch pf) {
    return [&, pf](const uint8_t* W) {
      gemm_detail::set_gemv_streams_prefetch(pf);
      gemm_huge_pages(x.data(), K, W, t, nullptr, y.data(), N, 1, N, K, &pool);
      gemm_detail::set_gemv_streams_prefetch(p_def);
      check();
    };
  };
  const int s_def = gemm_detail::gemv_half_long_streams();
  auto gemv_streams = [&](int streams) {
    return [&, streams](const uint8_t* W) {
      gemm_detail::set_gemv_half_long_streams(streams);
      gemm_huge_pages(x.data(), K, W, t, nullptr, y.data(), N, 1, N, K, &pool);
      gemm_detail::set_gemv_half_long_streams(s_def);
      check();
    };
  };
  auto block = [&](GemvPrefetch pf) {
    return [&, pf](const uint8_t* W) {
      gemm_detail::set_gemv_block_prefetch(pf);
      gemm(x.data(), K, W, t, nullptr, y.data(), N, 1, N, K, &pool);
      gemm_detail::set_gemv_block_prefetch(b_def);
    };
  };
  std::vector<bench::PatternRow> rows = {
      {"gemv", gemv(p_def), {}},
      {"gemv-t0", gemv(GemvPrefetch::T0), {}},
      {"gemv-nta", gemv(GemvPrefetch::Nta), {}},
      {"gemv-none", gemv(GemvPrefetch::None), {}},
      {"gemv-s4", gemv_streams(4), {}},
      {"gemv-s6", gemv_streams(6), {}},
      {"read-4", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<4>(p, n, 128, 1024); }, W); }, {}},
      {"read-4-nopf", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<4>(p, n, 128, 0); }, W); }, {}},
  };
  if (t == DType::BF16) {
    rows.push_back({"part-int", [&](const uint8_t* W) { share([&](const uint8_t* p, size_t n) { return bf16_parts<Part::Int>(p, n, x.data(), rb); }, W); }, {}});
    rows.push_back({"part-fma", [&](const uint8_t* W) { share([&](const uint8_t* p, size_t n) { return bf16_parts<Part::Fma>(p, n, x.data(), rb); }, W); }, {}});
    rows.push_back({"part-both", [&](const uint8_t* W) { share([&](const uint8_t* p, size_t n) { return bf16_parts<Part::Both>(p, n, x.data(), rb); }, W); }, {}});
  }
  if (t == DType::BF16) {
    rows.push_back({"block", block(b_def), {}});
    rows.push_back({"block-none", block(GemvPrefetch::None), {}});
  }
  bench::keep_named_rows(rows);  // RP_ROWS
  bench::time_rows(rows, a, rng, cp);
  std::printf("%s N=%lld K=%lld (%.2f MiB), %d thread(s), %d rounds, %d copies in 2 MiB pages, %s; default stream / block prefetch %d / %d; "
              "ratio = gemv time / row time; gemv rows differing from the first gemv call: %d\n",
              dtype_name(t), (long long)N, (long long)K, double(bytes) / (1 << 20), a.threads, a.rounds, copies,
              bench::pattern_clock_name(a.clock), int(p_def), int(b_def), mismatches);
  bench::print_ratio_table(rows, bytes, 15);
  return mismatches != 0 || bench::g_sink.load() == 42 ? 1 : 0;
#endif
}
