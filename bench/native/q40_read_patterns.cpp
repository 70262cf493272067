// Where the repacked q4_0 M = 1 GEMV's time goes against the read probe: the GEMV and load-only
// walks of the same cold bytes, interleaved call by call (shuffled order each round), so that the
// rows differ only in how they read. Rows (ratio = the gemv row's time / this row's; > 1: faster):
//   gemv            gemv_repacked, the default pass (two streams a thread: two contiguous parts of its
//                   super-groups side by side, with this CPU's q40_ahead and address order)
//   gemv-addr / gemv-tmajor  the two-stream pass with a record's loads in address order / t-major
//                   (set_q40_ms_addr_order on / off) and this CPU's prefetch and distance
//                   (decode_tuning.h q40_addr_order); bits checked as gemv-one's
//   gemv-aa         the gemv row again (an A/A: the method's noise)
//   gemv-addr-<pf>[-<a>] / gemv-tmajor-<pf>[-<a>]  the two-stream pass whole: a record's loads in
//                   address order / t-major with prefetch pf (t0 / t1 / nta / nopf: a loop of the
//                   record's 18 prefetches before it) `a` bytes ahead (default 4 KiB); bits checked
//                   as gemv-one's
//   gemv-one        set_q40_ms(false): the one-stream pass (8 records prefetched ahead, a loop of
//                   36 prefetches every two records); bits checked against gemv before timing
//   gemv-t0 / -nta / -nopf / -t1  the two-stream pass with that software prefetch (set_q40_ms_prefetch:
//                   a loop of a record's 18 prefetches before it, 4 KiB ahead; t1: prefetcht1, into L2);
//                   gemv-t0-1k: T0 1 KiB ahead (set_q40_ms_ahead). The gemv row runs this CPU's default,
//                   decode_tuning.h. Bits checked as gemv-one's. (Session 30's gemv-spread* / gemv-mt-*
//                   rows went with the spread form and the >= 2-thread entries in session 31.)
//   loads-kernel    the one-stream pass's loads alone, in its order (per record the 2 scale lines, then quant
//                   line t of groups 0..3 for t = 0..3, two records a step) with its prefetch (8
//                   records ahead, T0, a loop of 36 prefetches every two records): no arithmetic
//   loads-burst     the same with the 36 prefetches unrolled into straight-line code
//   read-1          one sequential stream, 128 bytes a step, prefetch 1 KiB ahead (T0)
//   read-4          four streams (the thread's part cut in 4), 128 bytes a step each, prefetch 1 KiB
//                   ahead: bench_kernels' read probe loop
//   read-2 / read-3 read-4's loop on 2 / 3 streams; read-2-2k / read-4-2k: prefetch 2 KiB ahead
//   read-2-4k       the two-stream pass's read pattern without its arithmetic: two streams (the thread's
//                   part cut in 2), a record (18 lines) a step each, each prefetched 4 KiB ahead from a loop
//   read-4-nopf     four streams, two records (36 lines) a step each, no software prefetch
//   split<C>x<M>-<a> a record layout the pass could read (read_split, no arithmetic): C compute
//                   streams (the pass's accumulators allow 2), each record's 18 lines stored in M
//                   arrays (M = 1: today's records; 2: groups 0-1 and 2-3 apart, so each compute
//                   stream is fed by two memory streams), a prefetch loop a record a memory stream
//                   `a` / M bytes on, the lines loaded round-robin over the M arrays; split1x1: one
//                   memory stream for the thread (the pattern of two compute streams' records
//                   interleaved in one array: fewer memory streams, not more)
//                   (split2x1-<a>: the two-stream pass's records at other distances; split3x1 /
//                   split4x1: 3 / 4 compute streams of today's records)
//   spread<C>x<M>-<a> the same with each line's prefetch issued just before its load (an asm
//                   statement with a memory clobber keeps it there): read-4's spread form
//   gemv-alt        gemv on a second set of copies placed as RP_ALT says (only with RP_ALT: model = as
//                   core/backend.cpp alloc_packed places a packed matrix, its whole 2 MiB pages huge and
//                   its tail in 4 KiB pages; small = every page 4 KiB): what the pages cost the pass
//   read-4-alt      read-4 on those copies
//   gemv-even / -single  gemv with the dispatch's claims whole pairs of super-groups / single passes
//                   (set_gemv_even_claims; at 2+ threads an odd claim ends on a one-stream super-group;
//                   the gemv row runs this CPU's default, decode_tuning.h); bits checked as gemv's
//   gemv-slices<S>  gemv on consecutive slices of S super-groups, one call each (a 2-thread dispatch's
//                   claims: an odd S runs its last super-group on one stream); bits checked as gemv's
// Each thread reads its contiguous share of the super-groups (the GEMV: its own dispatch).
// Copies: 2 MiB pages, rotated over >= 512 MiB (beyond L3 on both cores); with `copies` given, that
// many (1: the same bytes every call, hot in L2 / L3 when they fit: N 512 K 2048 = 576 KiB is in
// L2, N 5632 K 2048 = 6.2 MiB in L3), to tell the kernel's arithmetic from its reads.
// Columns: best, median and mean time a call (the mean is what the model's profiler reports a call:
// EMOLLM_PROFILE_CPU's cpu_ms / calls, so the two compare like for like) and those as GB/s.
// Usage (repository root): [RP_CPU=1] ./build-bench/q40_read_patterns [threads 1] [rounds 60] [N 5632] [K 2048] [copies]
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "base/thread_pool.h"
#include "cpu/gemm_internal.h"  // set_q40_ms
#include "cpu/kernels.h"
#include "bench_read.h"
#include "read_pattern_rows.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

using namespace emollm;

namespace {
constexpr size_t kRec = 1152;  // one q4_0 64-row record (4 groups x (32 B scales + 256 B quants))

#if defined(__x86_64__)
using bench::fold;

// The GEMV's loads alone over nrec records. Burst: the 36 prefetches of two records unrolled into
// straight-line code at constant offsets (else a loop, as GCC leaves it and as the GEMV issues them).
template <bool Burst>
BENCH_READ_AVX512 uint64_t loads_kernel(const uint8_t* p, size_t nrec) {
  __m512i a = _mm512_setzero_si512();
  const size_t ahead = 8 * kRec;
  for (size_t r = 0; r + 1 < nrec; r += 2) {
    const uint8_t* q = p + r * kRec;
    if constexpr (Burst) {
#pragma GCC unroll 36
      for (size_t o = 0; o < 2 * kRec; o += 64) _mm_prefetch(reinterpret_cast<const char*>(q + ahead + o), _MM_HINT_T0);
    } else {
#pragma GCC unroll 1
      for (size_t o = 0; o < 2 * kRec; o += 64) _mm_prefetch(reinterpret_cast<const char*>(q + ahead + o), _MM_HINT_T0);
    }
    for (int h = 0; h < 2; ++h) {
      const uint8_t* rr = q + h * kRec;
      a = _mm512_xor_si512(a, _mm512_loadu_si512(rr));
      a = _mm512_xor_si512(a, _mm512_loadu_si512(rr + 64));
#pragma GCC unroll 4
      for (int t = 0; t < 4; ++t)
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) a = _mm512_xor_si512(a, _mm512_loadu_si512(rr + 128 + 256 * j + 64 * t));
    }
  }
  return fold(a);
}

// A split record layout's read pattern as the pass would issue it (rows split<C>x<M>-<ahead>): C compute
// streams (contiguous parts of the share), each record's 18 lines stored in M arrays (18 / M lines of
// it in each: M = 1 today's records, 2 groups 0-1 / 2-3 apart, 3 six lines each), so a compute stream
// reads M memory streams: per record, a loop prefetching each memory stream's piece `ahead` * 1 / M
// bytes on (the same records ahead), then its lines loaded round-robin over the M arrays, one line
// each in turn (the kernel's t-major order: lines of groups 0-1, then 2-3, ...). Compile-time shapes,
// the kernel's instruction density, no arithmetic.
// Spread: each line's prefetch issued just before its load's turn (an asm statement with a memory
// clobber, so GCC cannot bunch them), instead of one loop a piece before the record.
template <int C, int M, bool Spread = false>
BENCH_READ_AVX512 uint64_t read_split(const uint8_t* p, size_t bytes, size_t ahead) {
  constexpr int L = 18 / M;
  const size_t recs = bytes / (size_t(C) * kRec), part = recs * L * 64, pf = ahead / M / 64 * 64;
  const uint8_t* base[C][M];
  for (int m = 0; m < M; ++m)
    for (int k = 0; k < C; ++k) base[k][m] = p + size_t(m) * part * C + size_t(k) * part;
  __m512i a[C];
  for (int k = 0; k < C; ++k) a[k] = _mm512_setzero_si512();
  for (size_t r = 0; r < recs; ++r)
#pragma GCC unroll 4
    for (int k = 0; k < C; ++k) {
      if constexpr (!Spread) {
#pragma GCC unroll 3
        for (int m = 0; m < M; ++m) {
#pragma GCC unroll 1
          for (int l = 0; l < L; ++l) _mm_prefetch(reinterpret_cast<const char*>(base[k][m] + r * L * 64 + pf + 64 * l), _MM_HINT_T0);
        }
      }
#pragma GCC unroll 18
      for (int l = 0; l < L; ++l)
#pragma GCC unroll 3
        for (int m = 0; m < M; ++m) {
          if constexpr (Spread)
            __asm__ volatile("prefetcht0 %0" : : "m"(*(base[k][m] + r * L * 64 + pf + 64 * l)) : "memory");
          a[k] = _mm512_xor_si512(a[k], _mm512_loadu_si512(base[k][m] + r * L * 64 + 64 * l));
        }
    }
  uint64_t h = 0;
  for (int k = 0; k < C; ++k) h ^= fold(a[k]);
  return h;
}
#endif
}  // namespace

int main(int argc, char** argv) {
#if !defined(__x86_64__)
  return bench::x86_64_only("q40_read_patterns");
#else
  const bench::PatternArgs a = bench::pattern_args(argc, argv, 1, 60, false);  // RP_CPU=1
  const int64_t N = a.N, K = a.K;
  if (N % 64 != 0 || K % 64 != 0) {
    std::fprintf(stderr, "q40_read_patterns: needs 64-row q4_0 records, N and K multiples of 64\n");
    return 2;
  }
  ThreadPool pool(a.threads);
  const size_t bytes = quant_repack_bytes(DType::Q4_0, N, K);
  const int64_t nsg = N / 64, nb = K / 32;
  const int copies = a.copies(bytes, 512);
  std::mt19937 rng(7);
  const std::vector<uint8_t*> cp = bench::repacked_copies(DType::Q4_0, N, K, bytes, copies, &pool, rng);
  // RP_ALT=model: a second set of copies placed as the model places a packed matrix (core/backend.cpp
  // alloc_packed: 2 MiB-aligned, only its whole 2 MiB pages asked to be huge, the tail in 4 KiB
  // pages); RP_ALT=small: every page 4 KiB. Rows named *-alt read those copies.
  const char* alt_env = std::getenv("RP_ALT");
  const int alt = !alt_env ? 0 : std::strcmp(alt_env, "model") == 0 ? 1 : std::strcmp(alt_env, "small") == 0 ? 2 : 0;
  std::vector<uint8_t*> cp2;
  if (alt) {
    const size_t h = size_t(2) << 20;
    for (int c = 0; c < copies; ++c) {
      auto* p = static_cast<uint8_t*>(std::aligned_alloc(h, (bytes + h - 1) / h * h));
      if (!p) std::abort();
      (void)madvise(p, alt == 1 ? bytes / h * h : (bytes + h - 1) / h * h, alt == 1 ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
      std::memcpy(p, cp[0], bytes);
      cp2.push_back(p);
    }
  }
  std::vector<float> x(static_cast<size_t>(K)), y(static_cast<size_t>(N));
  for (auto& v : x) v = float(int(rng() % 2001) - 1000) / 1000.f;
  // each thread's share: whole super-groups
  auto share = [&](const std::function<uint64_t(const uint8_t*, size_t)>& f, const uint8_t* W) {
    pool.run([&](int ith, int nth) {
      const int64_t s0 = nsg * ith / nth, s1 = nsg * (ith + 1) / nth;
      bench::g_sink.fetch_xor(f(W + size_t(s0 * nb) * kRec, size_t((s1 - s0) * nb) * kRec), std::memory_order_relaxed);
    });
  };
  // the GEMV with one process-wide boolean setting (get / set) at `on` for the call, restored after
  auto gemv_with = [&](bool (*get)(), void (*set)(bool), bool on) {
    return [&, get, set, on](const uint8_t* W) {
      const bool prev = get();
      set(on);
      gemv_repacked(x.data(), W, DType::Q4_0, nullptr, y.data(), N, K, &pool);
      set(prev);
    };
  };
  auto gemv = [&](bool ms) { return gemv_with(gemm_detail::q40_ms, gemm_detail::set_q40_ms, ms); };
  // the two-stream pass with another software prefetch (set_q40_ms_prefetch) and distance
  // (set_q40_ms_ahead). Same bits
  auto gemv_pf = [&](gemm_detail::GemvPrefetch pf, int ahead = 4096) {
    return [&, pf, ahead](const uint8_t* W) {
      const gemm_detail::GemvPrefetch prev = gemm_detail::q40_ms_prefetch();
      const int prev_a = gemm_detail::q40_ms_ahead();
      gemm_detail::set_q40_ms_prefetch(pf), gemm_detail::set_q40_ms_ahead(ahead);
      gemv_repacked(x.data(), W, DType::Q4_0, nullptr, y.data(), N, K, &pool);
      gemm_detail::set_q40_ms_prefetch(prev), gemm_detail::set_q40_ms_ahead(prev_a);
    };
  };
  // the pass called on consecutive slices of `sgs` super-groups (each a repacked matrix of its own):
  // what a 2-thread dispatch's claims give the kernel (thread_pool.h parallel_ranges: claims of at most
  // gemv_chunk's groups, a quarter of the range left, down to one super-group), where a slice of an
  // odd number of super-groups runs its last one on one stream (ms_q40_avx512<1>). Same bits.
  auto gemv_slices = [&](int64_t sgs) {
    return [&, sgs](const uint8_t* W) {
      for (int64_t s0 = 0; s0 < nsg; s0 += sgs) {
        const int64_t n = std::min(sgs, nsg - s0);
        gemv_repacked(x.data(), W + size_t(s0 * nb) * kRec, DType::Q4_0, nullptr, y.data() + s0 * 64, n * 64, K, &pool);
      }
    };
  };
  // the pass with the 2+ thread dispatch's claims in whole super-group pairs (on) or single passes
  // (off), whatever the process-wide setting (gemm_internal.h set_gemv_even_claims: off by default)
  auto gemv_claims = [&](bool even) {
    return gemv_with(gemm_detail::gemv_even_claims, gemm_detail::set_gemv_even_claims, even);
  };
  // the two-stream pass with a record's loads in address order (on) or t-major (off), this CPU's
  // prefetch (set_q40_ms_addr_order). Same bits
  auto gemv_addr = [&](bool on) {
    return gemv_with(gemm_detail::q40_ms_addr_order, gemm_detail::set_q40_ms_addr_order, on);
  };
  // the two-stream pass in one whole form: its prefetch, distance and a record's loads in address
  // order or t-major (set_q40_ms_prefetch / _ahead / _addr_order). Same bits
  auto gemv_form = [&](gemm_detail::GemvPrefetch pf, int ahead, bool addr) {
    return [&, pf, ahead, addr](const uint8_t* W) {
      const gemm_detail::GemvPrefetch prev = gemm_detail::q40_ms_prefetch();
      const int prev_a = gemm_detail::q40_ms_ahead();
      const bool prev_o = gemm_detail::q40_ms_addr_order();
      gemm_detail::set_q40_ms_prefetch(pf), gemm_detail::set_q40_ms_ahead(ahead), gemm_detail::set_q40_ms_addr_order(addr);
      gemv_repacked(x.data(), W, DType::Q4_0, nullptr, y.data(), N, K, &pool);
      gemm_detail::set_q40_ms_prefetch(prev), gemm_detail::set_q40_ms_ahead(prev_a), gemm_detail::set_q40_ms_addr_order(prev_o);
    };
  };
  using P = gemm_detail::GemvPrefetch;
  struct Row {
    const char* name;
    std::function<void(const uint8_t*)> run;
    std::vector<double> t;
    bool alt = false;  // reads the RP_ALT copies
  };
  std::vector<Row> rows = {
      {"gemv", gemv(true), {}},
      {"gemv-aa", gemv(true), {}},
      {"gemv-one", gemv(false), {}},
      {"gemv-addr", gemv_addr(true), {}},
      {"gemv-tmajor", gemv_addr(false), {}},
      {"gemv-t0", gemv_pf(gemm_detail::GemvPrefetch::T0), {}},
      {"gemv-nta", gemv_pf(gemm_detail::GemvPrefetch::Nta), {}},
      {"gemv-nopf", gemv_pf(gemm_detail::GemvPrefetch::None), {}},
      {"gemv-t1", gemv_pf(gemm_detail::GemvPrefetch::T1), {}},
      {"gemv-t0-1k", gemv_pf(gemm_detail::GemvPrefetch::T0, 1024), {}},
      {"gemv-tmajor-t0", gemv_form(P::T0, 4096, false), {}},
      {"gemv-addr-nopf", gemv_form(P::None, 4096, true), {}},
      {"gemv-addr-t0", gemv_form(P::T0, 4096, true), {}},
      {"gemv-addr-t0-2k", gemv_form(P::T0, 2048, true), {}},
      {"gemv-addr-t0-1k", gemv_form(P::T0, 1024, true), {}},
      {"gemv-addr-t0-3k", gemv_form(P::T0, 3072, true), {}},
      {"gemv-addr-t0-1.5k", gemv_form(P::T0, 1536, true), {}},
      {"gemv-addr-nta-2k", gemv_form(P::Nta, 2048, true), {}},
      {"gemv-tmajor-t0-2k", gemv_form(P::T0, 2048, false), {}},
      {"gemv-addr-t1", gemv_form(P::T1, 4096, true), {}},
      {"gemv-addr-nta", gemv_form(P::Nta, 4096, true), {}},
      {"loads-kernel", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return loads_kernel<false>(p, n / kRec); }, W); }, {}},
      {"loads-burst", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return loads_kernel<true>(p, n / kRec); }, W); }, {}},
      {"read-1", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<1>(p, n, 128, 1024); }, W); }, {}},
      {"read-4", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<4>(p, n, 128, 1024); }, W); }, {}},
      {"read-2", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<2>(p, n, 128, 1024); }, W); }, {}},
      {"read-2-2k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<2>(p, n, 128, 2048); }, W); }, {}},
      {"read-4-2k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<4>(p, n, 128, 2048); }, W); }, {}},
      {"read-3", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<3>(p, n, 128, 1024); }, W); }, {}},
      {"read-2-4k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<2>(p, n, 1152, 4096); }, W); }, {}},
      {"gemv-alt", gemv(true), {}, true},
      {"read-4-alt", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<4>(p, n, 128, 1024); }, W); }, {}, true},
      {"split1x1-8k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<1, 1>(p, n, 8192); }, W); }, {}},
      {"split2x1-4k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 1>(p, n, 4096); }, W); }, {}},
      {"split2x1-2k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 1>(p, n, 2048); }, W); }, {}},
      {"split2x1-1k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 1>(p, n, 1024); }, W); }, {}},
      {"split3x1-4k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<3, 1>(p, n, 4096); }, W); }, {}},
      {"split3x1-2k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<3, 1>(p, n, 2048); }, W); }, {}},
      {"split4x1-2k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<4, 1>(p, n, 2048); }, W); }, {}},
      {"spread3x1-1k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<3, 1, true>(p, n, 1024); }, W); }, {}},
      {"spread3x1-2k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<3, 1, true>(p, n, 2048); }, W); }, {}},
      {"spread4x1-1k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<4, 1, true>(p, n, 1024); }, W); }, {}},
      {"spread4x1-2k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<4, 1, true>(p, n, 2048); }, W); }, {}},
      {"spread2x1-2k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 1, true>(p, n, 2048); }, W); }, {}},
      {"split2x2-4k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 2>(p, n, 4096); }, W); }, {}},
      {"split2x2-2k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 2>(p, n, 2048); }, W); }, {}},
      {"split2x3-4k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 3>(p, n, 4096); }, W); }, {}},
      {"split4x1-4k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<4, 1>(p, n, 4096); }, W); }, {}},
      {"spread2x1-4k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 1, true>(p, n, 4096); }, W); }, {}},
      {"spread2x1-512", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 1, true>(p, n, 512); }, W); }, {}},
      {"spread2x1-1k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 1, true>(p, n, 1024); }, W); }, {}},
      {"spread2x2-2k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 2, true>(p, n, 2048); }, W); }, {}},
      {"spread2x2-4k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 2, true>(p, n, 4096); }, W); }, {}},
      {"gemv-even", gemv_claims(true), {}},
      {"gemv-single", gemv_claims(false), {}},
      {"gemv-slices1", gemv_slices(1), {}},
      {"gemv-slices2", gemv_slices(2), {}},
      {"gemv-slices3", gemv_slices(3), {}},
      {"gemv-slices10", gemv_slices(10), {}},
      {"gemv-slices11", gemv_slices(11), {}},
      {"gemv-slices12", gemv_slices(12), {}},
      {"read-4-nopf", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<4>(p, n, 2 * kRec, 0); }, W); }, {}},
  };
  bench::keep_named_rows(rows);  // RP_ROWS
  if (!alt) rows.erase(std::remove_if(rows.begin(), rows.end(), [](const Row& r) { return r.alt; }), rows.end());
  // every gemv row gives the default pass's bits (rows named gemv*)
  if (!bench::same_bits("q40_read_patterns", "the default pass", rows, y, cp[0], rows[0].run,
                        [](const Row& row) { return std::strncmp(row.name, "gemv", 4) == 0; }))
    return 3;
  bench::time_rows(
      rows, a, rng, [&](const Row& row, int c) { return (row.alt ? cp2 : cp)[size_t(c % copies)]; }, [] {});
  std::printf("q4_0 repacked N=%lld K=%lld (%.2f MiB), %d thread(s), %d rounds, %d copies in 2 MiB pages, %s; ratio = gemv time / row time\n",
              (long long)N, (long long)K, double(bytes) / (1 << 20), a.threads, a.rounds, copies, bench::pattern_clock_name(a.clock));
  std::printf("%-14s %9s %9s %9s %9s %9s %9s %8s %8s\n", "row", "best us", "med us", "mean us", "best GB/s", "med GB/s",
              "mean GB/s", "r(best)", "r(med)");
  double gb = 0, gm = 0;
  for (auto& row : rows) {
    std::sort(row.t.begin(), row.t.end());
    const double b = row.t.front(), m = row.t[row.t.size() / 2];
    double mean = 0;  // the mean: what the model's profiler reports a call (total / calls)
    for (double t : row.t) mean += t / double(row.t.size());
    if (gb == 0) gb = b, gm = m;
    std::printf("%-14s %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %8.3f %8.3f\n", row.name, b * 1e6, m * 1e6, mean * 1e6,
                double(bytes) / b * 1e-9, double(bytes) / m * 1e-9, double(bytes) / mean * 1e-9, gb / b, gm / m);
  }
  return bench::g_sink.load() == 42 ? 1 : 0;
#endif
}
