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
//   gemv-runs / -steps  the same with set_gemv_half_long_runs 2 / 0: the 6-stream rows (K >= 4096)
//                    in runs of two steps a row with x's 128 columns in registers, or one step of each
//                    stream in turn (Zen 4's default: runs for f16, steps for bf16; same bits: checked)
//   gemv-s6-none / gemv-s6-none-runs  6 streams without stream prefetch, one step of each stream in
//                    turn / in runs, all three settings for the call (the runs' conditions: on a row
//                    with 4 streams and T0, Zen 5's, gemv-runs alone is its default kernel; same bits: checked)
//   block / block-none  bf16: gemm() at M = 1 with Args::huge_pages off, the 8-row block GEMV
//                    (bf16_gemv_block: the path of weights without a 2 MiB-page copy) with this CPU's
//                    block_prefetch / none, on the same copies (2 MiB pages: its TLB cost not included)
//   rdC-R[-pL][-sS]  RP_CHUNKS=C:R[:L[:S]],...: the loads alone (6 or 4 streams, 128 bytes a step, no
//                    arithmetic) of the K-chunked walk: K in chunks of C columns across panels of R
//                    rows, L lines of each stream's next piece prefetched, S streams (default this
//                    CPU's half_long_streams). The kernel itself (gemv_streams_chunked,
//                    set_gemv_half_chunk: refuted on Zen 4, 0.57-0.89x today's) and its chC-R rows
//                    are in integration commit 2048875 only (bench/README, h-half's session 29 row)
//   cmC-R-sS / rmC-R-sS  RP_REPACK=C:R:S,... (1 thread): a scratch model of the chunked walk (the
//                    kernel's work a step, not its bits) over a copy of each copy laid out chunk-major
//                    (within each stream's panel of R / S rows, chunk c of every row next to each
//                    other: the walk reads each stream sequentially; cm) or over the rows as they are
//                    (rm); rm0-s4 / rm0-s6: the scratch in today's order (the control)
//   read-4           bench_kernels' read probe loop: 4 streams, 128 bytes a step, T0 1 KiB ahead
//   read-4-nopf      the same without prefetch: the kernel's read pattern without its arithmetic
//   read-2-nopf / read-6-nopf  2 / 6 streams, 128 bytes a step, no prefetch (read-6-nopf: the
//                    loads of the 6-stream kernel at K >= 4096 without x and arithmetic)
//   rm0-s6 / rm0-s6-x8k  (1 thread) the scratch below in today's 6-stream order, and the same with
//                    x's loads wrapped to its first 2048 columns (8 KiB, L1-resident; not the bits):
//                    what x's reads beyond L1 cost at K >= 4096
//   part-int / part-fma / part-both  bf16: scratch parts of the kernel's loop (bf16_parts below):
//                    the shift / mask alone, the FMAs with x alone, both (the kernel's work)
// Each thread reads its contiguous share of the rows (the GEMV: its own dispatch). Copies: 2 MiB
// pages rotated over >= 384 MiB (beyond L3); with `copies` given, that many (1 and a small N: hot,
// the arithmetic's own rate).
// Usage (repository root): [RP_CPU=1] [RP_ROWS=a,b] [RP_CHUNKS=2048:24,...] [RP_REPACK=2048:16:4,...] ./build-bench/half_read_patterns bf16|f16 [threads 1] [rounds 40] [N 5632] [K 2048] [copies]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
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

// The loads of the K-chunked walk's order (gemv_streams_chunked, in integration commit 2048875 only)
// without arithmetic: the rows in S parts side by side,
// cb bytes (a chunk of each row) of each part's rows of a panel of pr groups before the next chunk,
// 128 bytes a step; the loaded lines folded into the result.
template <int S>
__attribute__((target("avx512f"))) uint64_t read_chunked(const uint8_t* W, size_t bytes, size_t rb, size_t cb, int64_t pr,
                                                         int next_lines) {
  const int64_t rows = int64_t(bytes / rb), len = rows / S;
  const size_t steps = rb / 128 * 128;
  __m512i a[S];
  for (int q = 0; q < S; ++q) a[q] = _mm512_setzero_si512();
  for (int64_t i0 = 0; i0 < len; i0 += pr) {
    const int64_t i1 = std::min(i0 + pr, len);
    for (size_t c0 = 0; c0 < steps; c0 += cb) {
      const size_t c1 = std::min(c0 + cb, steps);
      for (int64_t i = i0; i < i1; ++i)
        for (size_t o = c0; o < c1; o += 128)
#pragma GCC unroll 6
          for (int q = 0; q < S; ++q) {
            const uint8_t* p = W + size_t(q * len + i) * rb + o;
            if (next_lines > 0 && o - c0 < size_t(next_lines) * 64 && i + 1 < i1)  // the next row's piece, spread
              _mm_prefetch(reinterpret_cast<const char*>(p + rb), _MM_HINT_T0), _mm_prefetch(reinterpret_cast<const char*>(p + rb + 64), _MM_HINT_T0);
            a[q] = _mm512_xor_si512(a[q], _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_loadu_si512(p + 64)));
          }
    }
  }
  uint64_t r = 0;
  for (int q = 0; q < S; ++q) r ^= bench::fold(a[q]);
  return r;
}

// A scratch model of the chunked walk over weights laid out for it (RP_REPACK rows): each stream's
// rows (the rows in S parts, as gemv_streams) with, within each panel of P rows, chunk c of every
// row of the panel next to each other (chunk-major: the walk reads each stream sequentially), or
// over the rows as they are (row-major: the K-chunked walk's order; with C >= K today's order).
// The kernel's work a 128-byte step: bf16 two loads, shift / mask, 4 FMAs; f16 4 vcvtph2ps from
// memory, 4 FMAs; accumulators kept in a buffer between chunks. Not the kernel's bits (x as given,
// not bf16_reorder_x's order; no tail: K a multiple of 64 here): a read-rate model only.
template <DType DT, int S, bool ChunkMajor>
__attribute__((target("avx512f,f16c"))) uint64_t scratch_chunked(const uint8_t* W, size_t bytes, size_t rb, const float* x,
                                                                 int64_t C, int64_t P, int64_t xmask = -1) {
  constexpr int kMaxPanel = 16;
  alignas(64) float buf[kMaxPanel][S][4][16];
  const int64_t rows = int64_t(bytes / rb), len = rows / S, K64 = int64_t(rb / 2) / 64 * 64;
  const __m512i hi = _mm512_set1_epi32(int(0xFFFF0000u));
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i0 = 0; i0 < len; i0 += P) {
    const int64_t i1 = std::min(i0 + P, len), pp = i1 - i0;
    for (int64_t c0 = 0; c0 < K64; c0 += C) {
      const int64_t c1 = std::min(c0 + C, K64);
      const bool first = c0 == 0, last = c1 == K64;
      for (int64_t i = i0; i < i1; ++i) {
        const uint8_t* row[S];
        __m512 s[S][4];
#pragma GCC unroll 8
        for (int q = 0; q < S; ++q) {
          const uint8_t* base = W + size_t(q * len) * rb;
          row[q] = ChunkMajor ? base + size_t(i0) * rb + size_t(pp) * 2 * c0 + size_t(i - i0) * 2 * (c1 - c0) - 2 * c0
                              : base + size_t(i) * rb;
          for (int j = 0; j < 4; ++j) s[q][j] = first ? _mm512_setzero_ps() : _mm512_load_ps(buf[i - i0][q][j]);
        }
        for (int64_t k = c0; k < c1; k += 64) {
          const float* xk = x + (k & xmask);
          const __m512 x0 = _mm512_loadu_ps(xk), x1 = _mm512_loadu_ps(xk + 16);
          const __m512 x2 = _mm512_loadu_ps(xk + 32), x3 = _mm512_loadu_ps(xk + 48);
#pragma GCC unroll 8
          for (int q = 0; q < S; ++q) {
            const uint8_t* p = row[q] + 2 * k;
            if constexpr (DT == DType::BF16) {
              const __m512i v0 = _mm512_loadu_si512(p), v1 = _mm512_loadu_si512(p + 64);
              s[q][0] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v0, 16)), x0, s[q][0]);
              s[q][1] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v0, hi)), x1, s[q][1]);
              s[q][2] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v1, 16)), x2, s[q][2]);
              s[q][3] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(v1, hi)), x3, s[q][3]);
            } else {
              s[q][0] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), x0, s[q][0]);
              s[q][1] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32))), x1, s[q][1]);
              s[q][2] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64))), x2, s[q][2]);
              s[q][3] = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 96))), x3, s[q][3]);
            }
          }
        }
#pragma GCC unroll 8
        for (int q = 0; q < S; ++q) {
          if (last) acc = _mm512_add_ps(acc, _mm512_add_ps(_mm512_add_ps(s[q][0], s[q][1]), _mm512_add_ps(s[q][2], s[q][3])));
          else
            for (int j = 0; j < 4; ++j) _mm512_store_ps(buf[i - i0][q][j], s[q][j]);
        }
      }
    }
  }
  return uint64_t(_mm512_reduce_add_ps(acc) != 0);
}
// src's rows (rb bytes) in S parts laid out chunk-major as scratch_chunked<..., true> reads them.
void repack_chunk_major(const uint8_t* src, uint8_t* dst, size_t bytes, size_t rb, int S, int64_t C, int64_t P) {
  std::memcpy(dst, src, bytes);
  const int64_t rows = int64_t(bytes / rb), len = rows / S, K64 = int64_t(rb / 2) / 64 * 64;
  for (int q = 0; q < S; ++q) {
    const size_t base = size_t(q * len) * rb;
    for (int64_t i0 = 0; i0 < len; i0 += P) {
      const int64_t i1 = std::min(i0 + P, len), pp = i1 - i0;
      for (int64_t c0 = 0; c0 < K64; c0 += C) {
        const int64_t c1 = std::min(c0 + C, K64);
        for (int64_t i = i0; i < i1; ++i)
          std::memcpy(dst + base + size_t(i0) * rb + size_t(pp) * 2 * c0 + size_t(i - i0) * 2 * (c1 - c0),
                      src + base + size_t(i) * rb + 2 * c0, size_t(c1 - c0) * 2);
      }
    }
  }
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
  // the stream GEMV with one process-wide setting at v for the call (set), then back at def; its
  // outputs checked
  auto gemv_with = [&](auto set, auto v, auto def) {
    return [&, set, v, def](const uint8_t* W) {
      set(v);
      gemm_huge_pages(x.data(), K, W, t, nullptr, y.data(), N, 1, N, K, &pool);
      set(def);
      check();
    };
  };
  auto gemv = [&](GemvPrefetch pf) { return gemv_with(gemm_detail::set_gemv_streams_prefetch, pf, p_def); };
  const int s_def = gemm_detail::gemv_half_long_streams();
  auto gemv_streams = [&](int streams) { return gemv_with(gemm_detail::set_gemv_half_long_streams, streams, s_def); };
  // the two-step runs of the 6-stream rows (set_gemv_half_long_runs: 2 = bf16 and f16, 0 = off)
  const int r_def = gemm_detail::gemv_half_long_runs();
  auto gemv_runs = [&](int runs) { return gemv_with(gemm_detail::set_gemv_half_long_runs, runs, r_def); };
  // 6 / 4 streams, a prefetch and runs set together for the call (the runs form needs 6 streams and
  // no stream prefetch: on a CPU whose row has neither, gemv-runs alone is its default kernel)
  auto gemv_set3 = [&](int streams, GemvPrefetch pf, int runs) {
    return [&, streams, pf, runs](const uint8_t* W) {
      gemm_detail::set_gemv_half_long_streams(streams);
      gemm_detail::set_gemv_streams_prefetch(pf);
      gemm_detail::set_gemv_half_long_runs(runs);
      gemm_huge_pages(x.data(), K, W, t, nullptr, y.data(), N, 1, N, K, &pool);
      gemm_detail::set_gemv_half_long_streams(s_def);
      gemm_detail::set_gemv_streams_prefetch(p_def);
      gemm_detail::set_gemv_half_long_runs(r_def);
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
      {"gemv-runs", gemv_runs(2), {}},
      {"gemv-steps", gemv_runs(0), {}},
      {"gemv-s6-none", gemv_set3(6, GemvPrefetch::None, 0), {}},
      {"gemv-s6-none-runs", gemv_set3(6, GemvPrefetch::None, 2), {}},
      {"read-2-nopf", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<2>(p, n, 128, 0); }, W); }, {}},
      {"read-6-nopf", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<6>(p, n, 128, 0); }, W); }, {}},
      {"read-4", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<4>(p, n, 128, 1024); }, W); }, {}},
      {"read-4-nopf", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<4>(p, n, 128, 0); }, W); }, {}},
  };
  // RP_CHUNKS=C:R[:L[:S]],...: rows rdC-R[-pL][-sS], the K-chunked walk's loads alone (C columns a
  // chunk across panels of R rows, L lines of each stream's next piece prefetched, S streams)
  if (const char* env = std::getenv("RP_CHUNKS")) {
    for (const char* p = env; *p;) {
      char* end = nullptr;
      const int cols = int(std::strtol(p, &end, 10));
      if (end == p) break;
      int crows = 0, nl = 0;
      if (*end == ':') crows = int(std::strtol(end + 1, &end, 10));
      if (*end == ':') nl = int(std::strtol(end + 1, &end, 10));
      int streams = s_def;
      if (*end == ':') streams = int(std::strtol(end + 1, &end, 10));
      std::string name = std::to_string(cols) + "-" + std::to_string(crows);
      if (nl) name += "-p" + std::to_string(nl);
      if (streams != s_def) name += "-s" + std::to_string(streams);
      const size_t cb = size_t(std::max(64, cols / 64 * 64)) * 2;
      const int64_t pr = std::max(1, crows / (streams == 6 ? 6 : 4));
      if (streams == 6)
        rows.push_back({"rd" + name, [&, cb, pr, nl](const uint8_t* W) {
                          share([&](const uint8_t* p, size_t n) { return read_chunked<6>(p, n, rb, cb, pr, nl); }, W);
                        }, {}});
      else
        rows.push_back({"rd" + name, [&, cb, pr, nl](const uint8_t* W) {
                          share([&](const uint8_t* p, size_t n) { return read_chunked<4>(p, n, rb, cb, pr, nl); }, W);
                        }, {}});
      if (*end != ',') break;
      p = end + 1;
    }
  }
  // RP_REPACK=C:R:S,...: rows cm<C>-<R>-s<S> (scratch_chunked over a chunk-major copy of each copy:
  // sequential streams, x's chunk in L1) and rm<C>-<R>-s<S> (the same scratch over the rows as they
  // are), and rm0-s<S> (the scratch in today's order: the control of both)
  std::vector<std::vector<uint8_t*>> repacked;
  repacked.reserve(16);
  auto copy_index = [&](const uint8_t* W) { return size_t(std::find(cp.begin(), cp.end(), W) - cp.begin()); };
  auto scratch = [&](int S, bool cm, int64_t C, int64_t P, const std::vector<uint8_t*>* rp) {
    return [&, S, cm, C, P, rp](const uint8_t* W) {
      const uint8_t* use = rp ? (*rp)[copy_index(W)] : W;
      share([&](const uint8_t* p, size_t n) {
        const size_t off = size_t(p - W);  // the thread's share
        const uint8_t* q = use + off;
        if (t == DType::BF16) {
          if (S == 6) return cm ? scratch_chunked<DType::BF16, 6, true>(q, n, rb, x.data(), C, P) : scratch_chunked<DType::BF16, 6, false>(q, n, rb, x.data(), C, P);
          return cm ? scratch_chunked<DType::BF16, 4, true>(q, n, rb, x.data(), C, P) : scratch_chunked<DType::BF16, 4, false>(q, n, rb, x.data(), C, P);
        }
        if (S == 6) return cm ? scratch_chunked<DType::F16, 6, true>(q, n, rb, x.data(), C, P) : scratch_chunked<DType::F16, 6, false>(q, n, rb, x.data(), C, P);
        return cm ? scratch_chunked<DType::F16, 4, true>(q, n, rb, x.data(), C, P) : scratch_chunked<DType::F16, 4, false>(q, n, rb, x.data(), C, P);
      }, W);
    };
  };
  // scratch: today's order (rm0-s6) with x's loads wrapped to its first 2048 columns (8 KiB: L1-resident;
  // not the bits): what x's reads from L2 cost at K >= 4096
  if (a.threads == 1) {
    rows.push_back({"rm0-s6", scratch(6, false, 1 << 30, 1, nullptr), {}});
    rows.push_back({"rm0-s6-x8k", [&](const uint8_t* W) {
                      share([&](const uint8_t* p, size_t n) {
                        return t == DType::BF16 ? scratch_chunked<DType::BF16, 6, false>(p, n, rb, x.data(), 1 << 30, 1, 2047)
                                                : scratch_chunked<DType::F16, 6, false>(p, n, rb, x.data(), 1 << 30, 1, 2047);
                      }, W);
                    }, {}});
  }
  if (const char* env = std::getenv("RP_REPACK")) {
    if (a.threads != 1) {
      std::fprintf(stderr, "RP_REPACK: 1 thread only (the chunk-major copy is laid out over all rows)\n");
      return 2;
    }
    rows.push_back({"rm0-s4", scratch(4, false, 1 << 30, 1, nullptr), {}});
    for (const char* p = env; *p;) {
      char* end = nullptr;
      const int64_t C = std::strtol(p, &end, 10) / 64 * 64;
      if (end == p || C <= 0) break;
      int R = 16, S = 4;
      if (*end == ':') R = int(std::strtol(end + 1, &end, 10));
      if (*end == ':') S = int(std::strtol(end + 1, &end, 10));
      S = S == 6 ? 6 : 4;
      const int64_t P = std::max(1, std::min(16, R / S));
      std::vector<uint8_t*> rp;
      for (uint8_t* c : cp) {
        rp.push_back(bench::huge_alloc(bytes));
        repack_chunk_major(c, rp.back(), bytes, rb, S, C, P);
      }
      repacked.push_back(std::move(rp));
      const std::string tag = std::to_string(C) + "-" + std::to_string(R) + "-s" + std::to_string(S);
      rows.push_back({"cm" + tag, scratch(S, true, C, P, &repacked.back()), {}});
      rows.push_back({"rm" + tag, scratch(S, false, C, P, nullptr), {}});
      if (*end != ',') break;
      p = end + 1;
    }
  }
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
