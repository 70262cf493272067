// Where the repacked q4_0 M = 1 GEMV's time goes against the read probe: the GEMV and load-only
// walks of the same cold bytes, interleaved call by call (shuffled order each round), so that the
// rows differ only in how they read. Rows (ratio = the gemv row's time / this row's; > 1: faster):
//   gemv            gemv_repacked, the default pass (two streams a thread: two contiguous parts of its
//                   super-groups side by side, each record prefetched 4 KiB on along its part)
//   gemv-one        set_q40_ms(false): the one-stream pass (8 records prefetched ahead, a loop of
//                   36 prefetches every two records); bits checked against gemv before timing
//   loads-kernel    the one-stream pass's loads alone, in its order (per record the 2 scale lines, then quant
//                   line t of groups 0..3 for t = 0..3, two records a step) with its prefetch (8
//                   records ahead, T0, a loop of 36 prefetches every two records): no arithmetic
//   loads-burst     the same with the 36 prefetches unrolled into straight-line code
//   read-1          one sequential stream, 128 bytes a step, prefetch 1 KiB ahead (T0)
//   read-4          four streams (the thread's part cut in 4), 128 bytes a step each, prefetch 1 KiB
//                   ahead: bench_kernels' read probe loop
//   read-2-4k       the two-stream pass's read pattern without its arithmetic: two streams (the thread's
//                   part cut in 2), a record (18 lines) a step each, each prefetched 4 KiB ahead from a loop
//   read-4-nopf     four streams, two records (36 lines) a step each, no software prefetch
//   split<C>x<M>-<a> a record layout the pass could read (read_split, no arithmetic): C compute
//                   streams (the pass's accumulators allow 2), each record's 18 lines stored in M
//                   arrays (M = 1: today's records; 2: groups 0-1 and 2-3 apart, so each compute
//                   stream is fed by two memory streams), a prefetch loop a record a memory stream
//                   `a` / M bytes on, the lines loaded round-robin over the M arrays
//   spread<C>x<M>-<a> the same with each line's prefetch issued just before its load (an asm
//                   statement with a memory clobber keeps it there): read-4's spread form
//   gemv-alt        gemv on a second set of copies placed as RP_ALT says (only with RP_ALT: model = as
//                   core/backend.cpp alloc_packed places a packed matrix, its whole 2 MiB pages huge and
//                   its tail in 4 KiB pages; small = every page 4 KiB): what the pages cost the pass
//   read-4-alt      read-4 on those copies
// Each thread reads its contiguous share of the super-groups (the GEMV: its own dispatch).
// Copies: 2 MiB pages, rotated over >= 512 MiB (beyond L3 on both cores); with `copies` given, that
// many (1: the same bytes every call, hot in L2 / L3 when they fit: N 512 K 2048 = 576 KiB is in
// L2, N 5632 K 2048 = 6.2 MiB in L3), to tell the kernel's arithmetic from its reads.
// Columns: best, median and mean time a call (the mean is what the model's profiler reports a call:
// EMOLLM_PROFILE_CPU's cpu_ms / calls, so the two compare like for like) and those as GB/s.
// Usage (repository root): [RP_CPU=1] ./build-bench/q40_read_patterns [threads 1] [rounds 60] [N 5632] [K 2048] [copies]
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "cpu/gemm_internal.h"  // set_q40_ms
#include "cpu/kernels.h"
#include "bench_clock.h"
#include "bench_read.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

using namespace emollm;

namespace {
constexpr size_t kRec = 1152;  // one q4_0 64-row record (4 groups x (32 B scales + 256 B quants))
std::atomic<uint64_t> g_sink{0};

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


// Prototype kernels (rows proto-*): a copy of gemv_repacked.cpp's two-stream q4_0 pass (block_step's
// q4_0 arithmetic, record_block_q40, ms_q40_avx512's streams) over either today's records (Split =
// false: the control, which must run as the gemv row does) or a layout with each record's groups
// 0-1 (their 2 x 32 bytes of scales, then 2 x 256 of quants: 576 bytes) in array A and groups 2-3 in
// array B (at A + bytes / 2), record i at A + 576 i / B + 576 i, so that each compute stream reads two
// memory streams. Spread: each line prefetched just before its load (asm, memory clobber) instead of
// one loop a piece before the record. Same operations in the same order: the gemv's bits (checked).
#define PROTO_TRP __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))
inline __attribute__((always_inline)) void pf_asm(const uint8_t* p) { __asm__ volatile("prefetcht0 %0" : : "m"(*p) : "memory"); }
inline int32_t ld32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
template <bool Split, bool Spread>
__attribute__((always_inline)) PROTO_TRP inline void proto_record(const int8_t* xb, float dx, int32_t neg, const uint8_t* A,
                                                                 const uint8_t* B, const uint8_t* PA, const uint8_t* PB,
                                                                 __m512 (&f)[4]) {
  auto quant = [&](int j, int t) -> const uint8_t* {
    if constexpr (Split) return (j < 2 ? A + 256 * j : B + 256 * (j - 2)) + 64 + 64 * t;
    return A + 128 + 256 * j + 64 * t;
  };
  auto scale = [&](int j) -> const uint8_t* {
    if constexpr (Split) return j < 2 ? A + 32 * j : B + 32 * (j - 2);
    return A + 32 * j;
  };
  if constexpr (!Spread) {
    if constexpr (Split) {
#pragma GCC unroll 1
      for (int l = 0; l < 9; ++l) _mm_prefetch(reinterpret_cast<const char*>(PA + 64 * l), _MM_HINT_T0);
#pragma GCC unroll 1
      for (int l = 0; l < 9; ++l) _mm_prefetch(reinterpret_cast<const char*>(PB + 64 * l), _MM_HINT_T0);
    } else {
#pragma GCC unroll 1
      for (int l = 0; l < 18; ++l) _mm_prefetch(reinterpret_cast<const char*>(PA + 64 * l), _MM_HINT_T0);
    }
  }
  constexpr int NG = 4;
  const __m512i m0f = _mm512_set1_epi8(0x0F);
  const __m512i n = _mm512_set1_epi32(neg);
  __m512i a[NG], c[NG];
#pragma GCC unroll 4
  for (int j = 0; j < NG; ++j) a[j] = n, c[j] = _mm512_setzero_si512();
#pragma GCC unroll 4
  for (int t = 0; t < 4; ++t) {
    const __m512i xl = _mm512_set1_epi32(ld32(xb + 4 * t)), xh = _mm512_set1_epi32(ld32(xb + 16 + 4 * t));
#pragma GCC unroll 4
    for (int j = 0; j < NG; ++j) {
      if constexpr (Spread) {
        if (t == 0 && j == 0) pf_asm(PA), pf_asm(Split ? PB : PA + 64);
        pf_asm(quant(j, t) - (j < 2 || !Split ? A : B) + (j < 2 || !Split ? PA : PB));
      }
      __m512i v = _mm512_loadu_si512(quant(j, t));
      __asm__("" : "+v"(v));
      a[j] = _mm512_dpbusd_epi32(a[j], _mm512_and_si512(v, m0f), xl);
      c[j] = _mm512_dpbusd_epi32(c[j], _mm512_andnot_si512(m0f, v), xh);
    }
  }
  const __m512 d = _mm512_set1_ps(dx);
#pragma GCC unroll 4
  for (int j = 0; j < NG; ++j) {
    const __m512i sum = _mm512_add_epi32(a[j], _mm512_srai_epi32(c[j], 4));
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scale(j))));
    f[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, d), f[j]);
  }
}
// S streams: stream k reads super-group sg0 + k * part (part super-groups apart), nb records each.
// Mode 0: today's records (W + 1152 i); 1: split, record i's pieces at W + 576 i and W + half + 576 i
// (half: the matrix's); 2: split within each super-group (its nb A pieces, then its nb B pieces: no
// N-wide offset), where a stream's prefetch past its A pieces skips the B ones.
template <int S, int Mode, bool Spread>
PROTO_TRP void proto_pass(const int8_t* xq, const float* dx, const int32_t* neg, const uint8_t* W, size_t half, int64_t sg0,
                          int64_t nb, float* y, int64_t part, size_t ahead) {
  constexpr bool Split = Mode != 0;
  constexpr size_t P = Split ? 576 : 1152;
  const size_t pfa = Split ? ahead / 2 : ahead;
  if constexpr (Mode == 2) half = size_t(nb) * 576;
  const uint8_t* st[S];
  __m512 f0[S][4], f1[S][4];
#pragma GCC unroll 4
  for (int k = 0; k < S; ++k) {
    st[k] = W + size_t((sg0 + k * part) * nb) * (Mode == 2 ? 1152 : P);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) f0[k][j] = f1[k][j] = _mm512_setzero_ps();
  }
  // the prefetch target of piece `off` (+ half for B): pfa on; in mode 2 past this super-group's A
  // pieces (B pieces) is the next super-group's A (B): one super-group (2 half) on
  auto pf = [&](const uint8_t* s, size_t off) __attribute__((always_inline)) -> const uint8_t* {
    const size_t at = off + pfa;
    if constexpr (Mode == 2) return s + at + (at >= half ? half : 0);
    return s + at;
  };
  auto rec = [&](int k, int64_t bb, __m512(&f)[4]) __attribute__((always_inline)) PROTO_TRP {
    const size_t off = size_t(bb) * P;
    proto_record<Split, Spread>(xq + bb * 32, dx[bb], neg[bb], st[k] + off, st[k] + off + half, pf(st[k], off),
                                pf(st[k] + half, off), f);
  };
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
#pragma GCC unroll 4
    for (int k = 0; k < S; ++k) rec(k, b, f0[k]);
#pragma GCC unroll 4
    for (int k = 0; k < S; ++k) rec(k, b + 1, f1[k]);
  }
  if (b < nb)
#pragma GCC unroll 4
    for (int k = 0; k < S; ++k) rec(k, b, f0[k]);
#pragma GCC unroll 4
  for (int k = 0; k < S; ++k)
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(y + 64 * (sg0 + k * part) + 16 * j, _mm512_add_ps(f0[k][j], f1[k][j]));
}
// A thread's super-groups [s0, s1): in 2 contiguous parts side by side, one left over alone (the
// library's dispatch: ms_q40_avx512<2>, then <1>).
template <int Mode, bool Spread>
void proto_share(const int8_t* xq, const float* dx, const int32_t* neg, const uint8_t* W, size_t half, int64_t s0,
                 int64_t s1, int64_t nb, float* y, size_t ahead) {
  const int64_t per = (s1 - s0) / 2;
  for (int64_t i = 0; i < per; ++i) proto_pass<2, Mode, Spread>(xq, dx, neg, W, half, s0 + i, nb, y, per, ahead);
  for (int64_t sg = s0 + 2 * per; sg < s1; ++sg) proto_pass<1, Mode, Spread>(xq, dx, neg, W, half, sg, nb, y, 0, ahead);
}
#endif
}  // namespace

int main(int argc, char** argv) {
#if !defined(__x86_64__)
  std::printf("q40_read_patterns: x86-64 only\n");
  return 0;
#else
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1, rounds = argc > 2 ? std::atoi(argv[2]) : 60;
  const int64_t N = argc > 3 ? std::atoll(argv[3]) : 5632, K = argc > 4 ? std::atoll(argv[4]) : 2048;
  if (N % 64 != 0 || K % 64 != 0) {
    std::fprintf(stderr, "q40_read_patterns: needs 64-row q4_0 records, N and K multiples of 64\n");
    return 2;
  }
  ThreadPool pool(threads);
  const size_t bytes = quant_repack_bytes(DType::Q4_0, N, K);
  const int64_t nsg = N / 64, nb = K / 32;
  const int copies = argc > 5 ? std::max(1, std::atoi(argv[5])) : int(std::max<size_t>(3, (size_t(512) << 20) / bytes + 1));
  std::vector<uint8_t> w(dtype_row_bytes(DType::Q4_0, K) * size_t(N));
  std::mt19937 rng(7);
  for (auto& b : w) b = uint8_t(rng());
  for (size_t i = 0; i < w.size(); i += 18) w[i] = 0, w[i + 1] = 0x20;  // fp16 scales 2^-7
  std::vector<uint8_t*> cp(static_cast<size_t>(copies));
  cp[0] = bench::huge_alloc(bytes);
  quant_repack(w.data(), DType::Q4_0, N, K, cp[0], &pool);
  for (int c = 1; c < copies; ++c) cp[size_t(c)] = bench::huge_alloc(bytes), std::memcpy(cp[size_t(c)], cp[0], bytes);
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
  // the prototype rows' x: rounded as gemv_repacked rounds it (qx_quantize_row_scalar, then a
  // block's scale and -8 * sum of its quants), and the split copies (RP_PROTO=1)
  const bool proto = std::getenv("RP_PROTO") && std::strcmp(std::getenv("RP_PROTO"), "1") == 0;
  std::vector<int8_t> xq(size_t(K) + 64);
  std::vector<float> dxe(size_t(K) / 4 + 8);
  std::vector<int32_t> xneg(size_t(K) / 4 + 8);
  gemm_detail::qx_quantize_row_scalar(x.data(), K, xq.data(), dxe.data(), xneg.data(), 8);
  for (int64_t b = 0; b < nb; ++b) {
    int32_t sum = 0;
    for (int j = 0; j < 8; ++j) sum += xneg[size_t(b * 8 + j)];
    const float d = dxe[size_t(b * 8)];
    xneg[size_t(b)] = sum, dxe[size_t(b)] = d;
  }
  std::vector<uint8_t*> cps, cpt;
  const size_t half = bytes / 2;
  if (proto) {
    uint8_t* s0 = bench::huge_alloc(bytes);
    for (size_t i = 0; i < bytes / kRec; ++i) {
      const uint8_t* r = cp[0] + i * kRec;
      uint8_t* A = s0 + i * 576;
      uint8_t* B = s0 + half + i * 576;
      std::memcpy(A, r, 64), std::memcpy(A + 64, r + 128, 512);
      std::memcpy(B, r + 64, 64), std::memcpy(B + 64, r + 128 + 512, 512);
    }
    cps.push_back(s0);
    for (int c = 1; c < copies; ++c) cps.push_back(bench::huge_alloc(bytes)), std::memcpy(cps.back(), s0, bytes);
    uint8_t* t0 = bench::huge_alloc(bytes);  // mode 2: split within each super-group
    const size_t sgb = size_t(nb) * kRec, hb = sgb / 2;
    for (size_t i = 0; i < bytes / kRec; ++i) {
      const uint8_t* r = cp[0] + i * kRec;
      const size_t sg = i / size_t(nb), b = i % size_t(nb);
      uint8_t* A = t0 + sg * sgb + b * 576;
      uint8_t* B = A + hb;
      std::memcpy(A, r, 64), std::memcpy(A + 64, r + 128, 512);
      std::memcpy(B, r + 64, 64), std::memcpy(B + 64, r + 128 + 512, 512);
    }
    cpt.push_back(t0);
    for (int c = 1; c < copies; ++c) cpt.push_back(bench::huge_alloc(bytes)), std::memcpy(cpt.back(), t0, bytes);
  }
  // each thread's share: whole super-groups
  auto share = [&](const std::function<uint64_t(const uint8_t*, size_t)>& f, const uint8_t* W) {
    pool.run([&](int ith, int nth) {
      const int64_t s0 = nsg * ith / nth, s1 = nsg * (ith + 1) / nth;
      g_sink.fetch_xor(f(W + size_t(s0 * nb) * kRec, size_t((s1 - s0) * nb) * kRec), std::memory_order_relaxed);
    });
  };
  auto gemv = [&](bool ms) {
    return [&, ms](const uint8_t* W) {
      const bool prev = gemm_detail::q40_ms();
      gemm_detail::set_q40_ms(ms);
      gemv_repacked(x.data(), W, DType::Q4_0, nullptr, y.data(), N, K, &pool);
      gemm_detail::set_q40_ms(prev);
    };
  };
  auto proto_row = [&](int mode, bool spread, size_t ahead) {
    return [&, mode, spread, ahead](const uint8_t* W) {
      pool.run([&](int ith, int nth) {
        const int64_t s0 = nsg * ith / nth, s1 = nsg * (ith + 1) / nth;
        auto f = mode == 0 ? (spread ? proto_share<0, true> : proto_share<0, false>)
                 : mode == 1 ? (spread ? proto_share<1, true> : proto_share<1, false>)
                             : (spread ? proto_share<2, true> : proto_share<2, false>);
        f(xq.data(), dxe.data(), xneg.data(), W, half, s0, s1, nb, y.data(), ahead);
      });
    };
  };
  struct Row {
    const char* name;
    std::function<void(const uint8_t*)> run;
    std::vector<double> t;
    bool alt = false;  // reads the RP_ALT copies
    int split = 0;  // reads the split copies (RP_PROTO=1): 1 matrix-wide halves, 2 per super-group
  };
  std::vector<Row> rows = {
      {"gemv", gemv(true), {}},
      {"gemv-one", gemv(false), {}},
      {"loads-kernel", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return loads_kernel<false>(p, n / kRec); }, W); }, {}},
      {"loads-burst", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return loads_kernel<true>(p, n / kRec); }, W); }, {}},
      {"read-1", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<1>(p, n, 128, 1024); }, W); }, {}},
      {"read-4", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<4>(p, n, 128, 1024); }, W); }, {}},
      {"read-2-4k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<2>(p, n, 1152, 4096); }, W); }, {}},
      {"gemv-alt", gemv(true), {}, true},
      {"read-4-alt", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<4>(p, n, 128, 1024); }, W); }, {}, true},
      {"split2x1-4k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 1>(p, n, 4096); }, W); }, {}},
      {"split2x2-4k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 2>(p, n, 4096); }, W); }, {}},
      {"split2x2-2k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 2>(p, n, 2048); }, W); }, {}},
      {"split2x3-4k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 3>(p, n, 4096); }, W); }, {}},
      {"split4x1-4k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<4, 1>(p, n, 4096); }, W); }, {}},
      {"spread2x1-4k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 1, true>(p, n, 4096); }, W); }, {}},
      {"spread2x1-1k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 1, true>(p, n, 1024); }, W); }, {}},
      {"spread2x2-2k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 2, true>(p, n, 2048); }, W); }, {}},
      {"spread2x2-4k", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return read_split<2, 2, true>(p, n, 4096); }, W); }, {}},
      {"gemv-proto", proto_row(0, false, 4096), {}},
      {"gemv-proto-spread", proto_row(0, true, 4096), {}},
      {"gemv-split", proto_row(1, false, 4096), {}, false, 1},
      {"gemv-split-2k", proto_row(1, false, 2048), {}, false, 1},
      {"gemv-split-spread", proto_row(1, true, 4096), {}, false, 1},
      {"gemv-split-spread2k", proto_row(1, true, 2048), {}, false, 1},
      {"gemv-sgsplit-2k", proto_row(2, false, 2048), {}, false, 2},
      {"gemv-sgsplit-spread2k", proto_row(2, true, 2048), {}, false, 2},
      {"read-4-nopf", [&](const uint8_t* W) { share([](const uint8_t* p, size_t n) { return bench::read_streams<4>(p, n, 2 * kRec, 0); }, W); }, {}},
  };
  // RP_ROWS=a,b,...: only the rows named (the first row, gemv, always)
  if (const char* keep = std::getenv("RP_ROWS")) {
    const std::string list = std::string(",") + keep + ",";
    std::vector<Row> kept;
    for (auto& row : rows)
      if (kept.empty() || list.find(std::string(",") + row.name + ",") != std::string::npos) kept.push_back(row);
    rows = kept;
  }
  if (!alt) rows.erase(std::remove_if(rows.begin(), rows.end(), [](const Row& r) { return r.alt; }), rows.end());
  if (!proto)
    rows.erase(std::remove_if(rows.begin(), rows.end(), [](const Row& r) { return std::strncmp(r.name, "gemv-proto", 10) == 0 || r.split; }),
               rows.end());
  // every gemv row gives the default pass's bits (rows named gemv*)
  rows[0].run(cp[0]);
  const std::vector<float> ref = y;
  for (auto& row : rows) {
    if (std::strncmp(row.name, "gemv", 4) != 0) continue;
    std::fill(y.begin(), y.end(), -1.f);
    row.run(row.split == 1 ? cps[0] : row.split == 2 ? cpt[0] : cp[0]);
    if (std::memcmp(y.data(), ref.data(), y.size() * sizeof(float)) != 0) {
      std::fprintf(stderr, "q40_read_patterns: %s differs from the default pass\n", row.name);
      return 3;
    }
  }
  std::vector<size_t> order(rows.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  // RP_CPU=1 at 1 thread: the calling thread's CPU time instead of wall time (preemption excluded on
  // a loaded machine; the pool of one thread runs the calls on the caller)
  const bool cpu = threads == 1 && std::getenv("RP_CPU") && std::strcmp(std::getenv("RP_CPU"), "1") == 0;
  int c = 0;
  for (int r = 0; r < rounds; ++r) {
    std::shuffle(order.begin(), order.end(), rng);
    for (size_t i : order) {
      const uint8_t* W = (rows[i].alt ? cp2 : rows[i].split == 1 ? cps : rows[i].split == 2 ? cpt : cp)[size_t(c++ % copies)];
      const double c0 = bench::thread_cpu(), t0 = bench::now();
      rows[i].run(W);
      const double wall = bench::now() - t0, cpu_s = bench::thread_cpu() - c0;
      rows[i].t.push_back(cpu ? cpu_s : wall);
    }
  }
  std::printf("q4_0 repacked N=%lld K=%lld (%.2f MiB), %d thread(s), %d rounds, %d copies in 2 MiB pages, %s; ratio = gemv time / row time\n",
              (long long)N, (long long)K, double(bytes) / (1 << 20), threads, rounds, copies, cpu ? "thread CPU time" : "wall");
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
  return g_sink.load() == 42 ? 1 : 0;
#endif
}
