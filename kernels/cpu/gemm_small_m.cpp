// Batched-decode matrix products: Y[M,N] = X[M,K] W[N,K]^T (+ bias) for a few rows of X
// (kSmallMMin <= M <= kSmallMMax: one decode row per sequence of a continuous-batching step, plus
// the odd short prompt chunk). Plain functions over pointers and shapes; no model.
//
// Why its own path: with M in this range the packed GEMM (gemm_avx512.cpp) spends much of its
// time dequantising and transposing W into panels that are then used by only a handful of rows,
// and the M <= 8 "dot" kernels run out of registers. Here W is never packed: each group of R = 4
// weight rows is read in its natural row-major layout, streamed from memory once (the first row
// block, with a software prefetch ahead), and then re-read from L1/L2 for the remaining row blocks
// of X. Every W load feeds MB = 6 rows of X, register-blocked as R x MB = 24 accumulators
// (+ 4 weight registers + 1 activation register = 29 zmm). The dot-product form leaves 16 partial
// sums per (row, column); the 4 columns of a group are reduced together (reduce4) into one
// 128-bit store of 4 adjacent outputs.
//
// Where the time goes (Zen 5, TinyLlama shapes, M = 16): the product is compute-bound there, not
// memory-bound: 16 rows x 2 flop per bf16 weight (2 bytes) = 16 flop/byte against a machine
// balance of ~10.5 (844 GFLOP/s vdpbf16ps / 80 GB/s, 2 cores). One thread, thread CPU time: a
// 2048 x 2048 call takes ~0.45 ms with the weights in cache (~71% of the 422 GFLOP/s one-core
// vdpbf16ps peak) and ~0.55-0.60 ms cold, i.e. the first row block's pass from memory overlaps the
// others' compute only in part (a software prefetch of the next chunk during the later passes,
// tried with T0 / T1 / T2 hints, made it slower: ~0.87x).
//
//   BF16 weights, AVX512-BF16: vdpbf16ps on (k, k+1) pairs, 32 multiply-adds per instruction;
//     X is rounded to bf16 once per call (round to nearest even, as the packed bf16 path does).
//     (M > kSmallM = 8 only, as the packed bf16 path it replaces there: M <= 8 stays on the
//     exact-X dot kernels of gemm_avx512.cpp, like the M = 1 decode path.)
//   F16 weights (no fp16 dot product on AVX-512 without AVX512-FP16) and BF16 without
//     AVX512-BF16: weights widened to f32 in registers (vcvtph2ps / shift), f32 FMAs, X exact.
// Other weight types (and ISAs below Avx512) return false: the caller keeps its previous path.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "gemm_internal.h"

#include "../../base/env_switch.h"

namespace emollm {
namespace gemm_detail {
namespace {
// Always on in a run (default since 2026-12-04 19:16: c16 chat 67.8 / 68.9 vs 41.5 / 34.7 tok/s);
// set_small_m_enabled(false) gives the previous paths (the dot kernels, the packed GEMM) for the
// tests and bench_kernels' interleaved "prev" rows. No environment variable.
std::atomic<bool> small_m_on{true};
}  // namespace
void set_small_m_enabled(bool enabled) { small_m_on.store(enabled, std::memory_order_relaxed); }
bool small_m_enabled() { return small_m_on.load(std::memory_order_relaxed); }
namespace {
// Always on in a run; the switched-off paths are live for other shapes (the packed GEMM's whole-K
// blocking above M = kSmallMMax, run_range_bf16 above M = 16 and below AVX512-BF16, run_range<KF16>
// below AVX-512), so the tests and bench_kernels' interleaved "prev" rows take them as the
// reference of the same bits. No environment variable (EMOLLM_SMALL_M_PANELS, EMOLLM_SMALL_M_ONEPASS,
// EMOLLM_SMALL_M_F16_GROUPS until session 22).
std::atomic<bool> small_m_panels_on{true}, small_m_onepass_on{true}, small_m_f16_groups_on{true};
}  // namespace
void set_small_m_panels_enabled(bool enabled) { small_m_panels_on.store(enabled, std::memory_order_relaxed); }
bool small_m_panels_enabled() { return small_m_panels_on.load(std::memory_order_relaxed); }
void set_small_m_onepass(bool on) { small_m_onepass_on.store(on, std::memory_order_relaxed); }
bool small_m_onepass() { return small_m_onepass_on.load(std::memory_order_relaxed); }
namespace {
// EMOLLM_BF16_DOT_MIN_M=m (2..9): BF16 weights at m <= M <= 8 take the vdpbf16ps kernel (X rounded
// to bf16, as at M >= 9) instead of the exact-X dot kernels. Default kBf16DotMinMDefault = 8;
// "0" / "off" / 9: 9 (M <= 8 exact, the previous path); other values: the default.
constexpr int kBf16DotMinMDefault = 8;
std::atomic<int>& bf16_dot_min_m_value() {
  static std::atomic<int> v([] {
    const char* e = std::getenv("EMOLLM_BF16_DOT_MIN_M");
    if (!e) return kBf16DotMinMDefault;
    if (std::strcmp(e, "0") == 0 || std::strcmp(e, "off") == 0) return int(kSmallMMin);
    const int m = std::atoi(e);
    return m >= 2 && m <= int(kSmallMMin) ? m : kBf16DotMinMDefault;
  }());
  return v;
}
}  // namespace
void set_bf16_dot_min_m(int m) {
  bf16_dot_min_m_value().store(m >= 2 && m <= int(kSmallMMin) ? m : int(kSmallMMin), std::memory_order_relaxed);
}
int bf16_dot_min_m() { return bf16_dot_min_m_value().load(std::memory_order_relaxed); }
namespace {
std::atomic<bool> small_m_streams_whole_k_on{true};  // off: K blocks of 32 KiB of X (tests, bench_kernels' xblock-l1)
}  // namespace
void set_small_m_streams_whole_k(bool on) { small_m_streams_whole_k_on.store(on, std::memory_order_relaxed); }
bool small_m_streams_whole_k() { return small_m_streams_whole_k_on.load(std::memory_order_relaxed); }
void set_small_m_f16_groups(bool on) { small_m_f16_groups_on.store(on, std::memory_order_relaxed); }
bool small_m_f16_groups() { return small_m_f16_groups_on.load(std::memory_order_relaxed); }
}  // namespace gemm_detail
}  // namespace emollm

#if defined(__x86_64__)
#include <immintrin.h>

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cstring>

#include "gemm_kern_bf16_avx512.h"

namespace emollm {
namespace gemm_detail {
namespace {

#define SM_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define SM_T512BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))
#define SM_AI inline __attribute__((always_inline))

constexpr int kR = 4;   // weight rows (output columns) per group
constexpr int kMB = 6;  // rows of X per register block
// Software prefetch distance along each weight row during the first row block (the one that
// brings W in from memory); the later blocks find the rows in L1/L2.
constexpr int kPrefetchBytes = 1024;
// Weight bytes per work chunk: with the row blocks' passes over it, it must stay in L2 (1 MiB on
// Zen 4/5, 2 MiB on recent Intel; half of it leaves room for X and the neighbours).
constexpr size_t kChunkBytes = size_t(256) << 10;

SM_T512 SM_AI __mmask16 mask16(int64_t c) {
  return c >= 16 ? __mmask16(0xFFFF) : c <= 0 ? __mmask16(0) : __mmask16((1u << c) - 1);
}

// Horizontal sums of four accumulators as one 128-bit vector [sum a0, sum a1, sum a2, sum a3].
SM_T512 SM_AI __m128 reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
  const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, 0x44), _mm512_shuffle_ps(t0, t1, 0xEE));
  const __m256 v = _mm256_add_ps(_mm512_castps512_ps256(u), _mm512_extractf32x8_ps(u, 1));
  return _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
}

// Writes acc[r][m] (+ bias) to Y[m0 + m, n0 + r].
template <int R, int MB>
SM_T512 SM_AI void store_block(__m512 (&acc)[R][MB], const float* bias, float* Y, int64_t ldy, int64_t n0) {
  if constexpr (R == kR) {
    const __m128 b = bias ? _mm_loadu_ps(bias + n0) : _mm_setzero_ps();
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m)
      _mm_storeu_ps(Y + m * ldy + n0, _mm_add_ps(reduce4(acc[0][m], acc[1][m], acc[2][m], acc[3][m]), b));
  } else {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) {
        float v = _mm512_reduce_add_ps(acc[r][m]);
        if (bias) v += bias[n0 + r];
        Y[m * ldy + n0 + r] = v;
      }
  }
}

// ------------------------------------------------------------------ BF16, vdpbf16ps
// One 32-column step of an R x MB register block, shared by bf16_block, pass_bf16 and
// streams_bf16 (they differ only in where X's rows lie and what they prefetch): R weight rows'
// 32 bf16 at byte offset 2 k (Tail: the first K - k of them, masked; X is zero there too), then
// acc[r][m] += X row m . weight row r by vdpbf16ps (each lane adds its pair of k in order), X row
// m's 32 bf16 at x + m * xstride (64-byte aligned).
template <int R, int MB, bool Tail = false>
SM_T512BF SM_AI void dot_step_bf16(__m512 (&acc)[R][MB], const uint8_t* const (&wr)[R], int64_t k, const uint16_t* x,
                                   int64_t xstride, __mmask32 mk = 0) {
  __m512bh w[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
    w[r] = Tail ? (__m512bh)_mm512_maskz_loadu_epi16(mk, wr[r] + 2 * k) : (__m512bh)_mm512_loadu_si512(wr[r] + 2 * k);
#pragma GCC unroll 8
  for (int m = 0; m < MB; ++m) {
    const __m512bh xv = (__m512bh)_mm512_load_si512(x + m * xstride);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], xv, w[r]);
  }
}

// xb: X rounded to bf16, row m at xb + m * ldb (ldb = K rounded up to 32, zero past K).
// Y rows m0..m0+MB-1 (already offset by the caller), weight rows n0..n0+R-1, k in [k0, k1).
// acc: where the partial sums of a K block that is not the first / last come from / go to (the
// R x MB accumulators, stored exactly: a product split into K blocks is the same bits as one
// that is not, each lane still adds its k in order).
template <int R, int MB, bool PF>
SM_T512BF void bf16_block(const uint16_t* xb, int64_t ldb, const uint8_t* W, size_t rb, int64_t K, int64_t k0,
                          int64_t k1, float* acc_io, const float* bias, float* Y, int64_t ldy, int64_t n0) {
  const uint8_t* wr[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) wr[r] = W + size_t(n0 + r) * rb;
  __m512 acc[R][MB];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) acc[r][m] = k0 == 0 ? _mm512_setzero_ps() : _mm512_load_ps(acc_io + (r * MB + m) * 16);
  int64_t k = k0;
  for (; k + 32 <= k1; k += 32) {
    if constexpr (PF) {
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
        _mm_prefetch(reinterpret_cast<const char*>(wr[r] + 2 * k + kPrefetchBytes), _MM_HINT_T0);
    }
    dot_step_bf16<R, MB>(acc, wr, k, xb + k, ldb);
  }
  if (k < k1)  // K % 32 weights, masked (X is zero there too); only in the last K block
    dot_step_bf16<R, MB, true>(acc, wr, k, xb + k, ldb, __mmask32((1ull << (K - k)) - 1));
  if (k1 < K) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) _mm512_store_ps(acc_io + (r * MB + m) * 16, acc[r][m]);
    return;
  }
  store_block<R, MB>(acc, bias, Y, ldy, n0);
}

// X rows [0, M) -> bf16 (round to nearest even), ldb elements per row, zero past K.
SM_T512BF void round_x_bf16(const float* X, int64_t ldx, int64_t M, int64_t K, int64_t ldb, uint16_t* xb) {
  for (int64_t m = 0; m < M; ++m) {
    const float* x = X + m * ldx;
    uint16_t* o = xb + m * ldb;
    for (int64_t k = 0; k < ldb; k += 32) {
      const int64_t c = K - k;
      const __m512 lo = _mm512_maskz_loadu_ps(mask16(c), x + k);
      const __m512 hi = _mm512_maskz_loadu_ps(mask16(c - 16), x + k + 16);
      _mm512_store_si512(o + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

// X rows [0, M) -> bf16 as round_x_bf16 (the same bits), step-major for onepass_bf16: the 32
// columns [32 s, 32 s + 32) of row m at xs + (s * M + m) * 32 (zero past K), so that one step's M
// vectors lie side by side (rows K apart would fall in the same L1 sets at K = 2048: 4 KiB apart).
SM_T512BF void round_x_bf16_steps(const float* X, int64_t ldx, int64_t M, int64_t K, uint16_t* xs) {
  for (int64_t k = 0, s = 0; k < K; k += 32, ++s)
    for (int64_t m = 0; m < M; ++m) {
      const float* x = X + m * ldx;
      const int64_t c = K - k;
      const __m512 lo = _mm512_maskz_loadu_ps(mask16(c), x + k);
      const __m512 hi = _mm512_maskz_loadu_ps(mask16(c - 16), x + k + 16);
      _mm512_store_si512(xs + (s * M + m) * 32, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
}

// ------------------------------------------------------------------ f32 FMAs (F16 / BF16 widened)
template <DType DT>
SM_T512 SM_AI __m512 load_w16(const uint8_t* row, int64_t k, __mmask16 mk) {
  if constexpr (DT == DType::F16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, row + 2 * k));
  } else {  // BF16: the high half of an f32
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, row + 2 * k)), 16));
  }
}

// PF: a software prefetch kPrefetchBytes ahead along the rows; NPF > 0 (groups_f16): instead, the
// lines of the NPF rows nxt[] (another group's, prefetched at the same column: one line per 32 k).
template <DType DT, int R, int MB, bool PF, int NPF = 0>
SM_T512 void fma_block(const float* X, int64_t ldx, const uint8_t* W, size_t rb, int64_t K, const float* bias,
                       float* Y, int64_t ldy, int64_t n0, const uint8_t* const* nxt = nullptr) {
  const uint8_t* wr[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) wr[r] = W + size_t(n0 + r) * rb;
  __m512 acc[R][MB];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 mk = mask16(K - k);
    __m512 w[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      if constexpr (PF)
        if ((k & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(wr[r] + 2 * k + kPrefetchBytes), _MM_HINT_T0);
      w[r] = load_w16<DT>(wr[r], k, mk);
    }
    if constexpr (NPF > 0) {
      if ((k & 31) == 0) {
#pragma GCC unroll 2
        for (int q = 0; q < NPF; ++q) _mm_prefetch(reinterpret_cast<const char*>(nxt[q] + 2 * k), _MM_HINT_T0);
      }
    }
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) {
      const __m512 x = _mm512_maskz_loadu_ps(mk, X + m * ldx + k);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r][m] = _mm512_fmadd_ps(w[r], x, acc[r][m]);
    }
  }
  store_block<R, MB>(acc, bias, Y, ldy, n0);
}

// ------------------------------------------------------------------ row blocking and dispatch
// One register block: rows [m0, m0 + mb) of X against weight rows [n0, n0 + R).
struct Plan {
  bool bf16dot;
  const float* X;
  int64_t ldx;
  const uint16_t* xb;
  int64_t ldb;
  int64_t kblock;  // bf16dot: columns of X per K block (see run_range_bf16)
};

// K block [k0, k1) of a register block; acc: its R x MB partial sums (K split in blocks)
template <int R, int MB, bool PF>
SM_T512BF void block_bf16(const Args& a, const Plan& p, int64_t m0, int64_t n0, int64_t k0, int64_t k1, float* acc) {
  bf16_block<R, MB, PF>(p.xb + m0 * p.ldb, p.ldb, static_cast<const uint8_t*>(a.W), a.row_bytes, a.K, k0, k1, acc,
                        a.bias, a.Y + m0 * a.ldy, a.ldy, n0);
}

template <DType DT, int R, int MB, bool PF>
SM_T512 void block_fma(const Args& a, const Plan& p, int64_t m0, int64_t n0) {
  fma_block<DT, R, MB, PF>(p.X + m0 * p.ldx, p.ldx, static_cast<const uint8_t*>(a.W), a.row_bytes, a.K, a.bias,
                           a.Y + m0 * a.ldy, a.ldy, n0);
}

using BlockFn = void (*)(const Args&, const Plan&, int64_t, int64_t);
using BlockKFn = void (*)(const Args&, const Plan&, int64_t, int64_t, int64_t, int64_t, float*);

// fns[pf][mb - 1] for one R.
template <int R, template <int, int, bool> class K, typename Fn = BlockFn>
struct Table {
  static constexpr Fn fns[2][kMB] = {
      {K<R, 1, false>::f, K<R, 2, false>::f, K<R, 3, false>::f, K<R, 4, false>::f, K<R, 5, false>::f,
       K<R, 6, false>::f},
      {K<R, 1, true>::f, K<R, 2, true>::f, K<R, 3, true>::f, K<R, 4, true>::f, K<R, 5, true>::f, K<R, 6, true>::f}};
};

template <int R, int MB, bool PF>
struct KBf16 {
  static constexpr BlockKFn f = block_bf16<R, MB, PF>;
};
template <int R, int MB, bool PF>
struct KF16 {
  static constexpr BlockFn f = block_fma<DType::F16, R, MB, PF>;
};
template <int R, int MB, bool PF>
struct KBf16Fma {
  static constexpr BlockFn f = block_fma<DType::BF16, R, MB, PF>;
};

// Weight rows [n0, n1) (a chunk of at most kChunkBytes of weights, so that it stays in L2) in
// groups of kR (then single rows) against every row block of X (MB rows, balanced: M = 16 runs
// 6, 5, 5, not 6, 6, 4). The f32-FMA kernels (F16, BF16 without AVX512-BF16) pick one of two loop
// orders; BF16 on vdpbf16ps always runs the first, with K split in blocks (run_range_bf16). Same
// arithmetic per output either way (bitwise):
//   x_outer: for every row block, every group: the block of X stays in L1 while the weight rows
//     stream past it (from memory for the first block, with a software prefetch; from L2 after).
//     Taken when a block of X fits in L1 beside the weights (kXBlockBytes); at K = 2048 bf16 it
//     measured ~1.1x the other order (single thread, Zen 5, hot weights), where the blocks of X
//     came from L2 every time.
//   else: for every group, every row block: the group's weight rows stay in L1/L2 across the
//     blocks; the better order when a block of X is too big for L1 anyway (K = 5632: ~1.15x).
constexpr size_t kXBlockBytes = size_t(32) << 10;
// BF16 K block: kMB rows of X x 2048 bf16 = 24 KiB, the x_outer block that fits (K = 2048: one
// block, the previous x_outer loop exactly).
constexpr int64_t kBf16KBlock = 2048;

template <template <int, int, bool> class K>
void run_range(const Args& a, const Plan& p, int64_t n0, int64_t n1) {
  const int64_t nblk = (a.M + kMB - 1) / kMB;
  const int64_t base = a.M / nblk, extra = a.M % nblk;  // the first `extra` blocks get base + 1 rows
  const size_t xrow = p.bf16dot ? size_t(p.ldb) * 2 : size_t(a.K) * 4;
  if (size_t(kMB) * xrow <= kXBlockBytes) {
    int64_t m0 = 0;
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t mb = base + (b < extra ? 1 : 0);
      const int pf = b == 0 ? 1 : 0;
      int64_t n = n0;
      for (; n + kR <= n1; n += kR) Table<kR, K>::fns[pf][mb - 1](a, p, m0, n);
      for (; n < n1; ++n) Table<1, K>::fns[0][mb - 1](a, p, m0, n);
      m0 += mb;
    }
    return;
  }
  auto group = [&](int64_t n, const BlockFn (&fns)[2][kMB]) {
    int64_t m0 = 0;
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t mb = base + (b < extra ? 1 : 0);
      fns[b == 0 ? 1 : 0][mb - 1](a, p, m0, n);
      m0 += mb;
    }
  };
  int64_t n = n0;
  for (; n + kR <= n1; n += kR) group(n, Table<kR, K>::fns);
  for (; n < n1; ++n) group(n, Table<1, K>::fns);
}

// BF16 (vdpbf16ps): always the x_outer order, K split into blocks of p.kblock columns so that a
// row block of X (MB rows x kblock bf16) stays in L1 at any K. Per K block, every row block of X
// passes over the weight rows' slices [k0, k1) (from memory for the first, from L2 after); the
// R x MB partial sums of the blocks before the last wait in acc (4 KiB per group of 4 weight rows
// and 16 rows of X). Before: K = 5632 (1.1B down_proj) and 4096 / 11008 (7B) took the group-outer
// order, where the X blocks came from L2 for every group and the weights no longer stayed in L1.
void run_range_bf16(const Args& a, const Plan& p, int64_t n0, int64_t n1) {
  const int64_t nblk = (a.M + kMB - 1) / kMB;
  const int64_t base = a.M / nblk, extra = a.M % nblk;
  float* acc = a.K > p.kblock ? static_cast<float*>(scratch(0, size_t(n1 - n0) * size_t(a.M) * 64)) : nullptr;
  for (int64_t k0 = 0; k0 < a.K; k0 += p.kblock) {
    const int64_t k1 = std::min(a.K, k0 + p.kblock);
    int64_t m0 = 0;
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t mb = base + (b < extra ? 1 : 0);
      const int pf = b == 0 ? 1 : 0;
      // a group's accumulators: R x M vectors at (n - n0) * M; its row block m0 at + m0 * R
      int64_t n = n0;
      for (; n + kR <= n1; n += kR)
        Table<kR, KBf16, BlockKFn>::fns[pf][mb - 1](a, p, m0, n, k0, k1,
                                                  acc ? acc + ((n - n0) * a.M + m0 * kR) * 16 : nullptr);
      for (; n < n1; ++n)
        Table<1, KBf16, BlockKFn>::fns[0][mb - 1](a, p, m0, n, k0, k1,
                                                 acc ? acc + ((n - n0) * a.M + m0) * 16 : nullptr);
      m0 += mb;
    }
  }
}

// ------------------------------------------------------------------ BF16, one pass (M <= 16)
// run_range_bf16 reads a chunk of weights (up to 256 KiB) from memory during the first row
// block's pass only and from L2 during the others (M = 16: rows 6, 5, 5), so memory idles for
// two thirds of a product that is compute-bound on the whole (16 rows x 2 flop per 2-byte weight)
// and the chunk's first pass runs at the memory's pace. Here the passes are over one group of 4
// weight rows at a time, within a K block of p.kblock columns: the first pass brings the group's
// slices in from memory, the others find them in L1, and every pass prefetches part of the next
// group's slices (kOnePassAhead = one group ahead), so the weights stream without pause while the
// products run. X is laid out step-major (round_x_bf16_steps) and its K block (M x kblock bf16
// <= kOnePassXBytes) stays in L1 for all the groups. The partial sums of a K block that is not the
// last wait in acc_io (exactly). Register blocks, accumulators and their k order, the K % 32 tail
// and the reduction (store_block: reduce4 over aligned groups of 4 rows, rows past N / 4 * 4 one
// by one, then the bias) are bf16_block's: the same bits as run_range_bf16
// (set_small_m_onepass(false)).
// (Refuted first: one weight row at a time with all M accumulators in registers, X as memory
// operands: 17 loads per 16 vdpbf16ps ran at ~55% of the dot peak hot, 0.66x run_range_bf16.)
constexpr int64_t kOnePassMaxM = 16;
constexpr int64_t kOnePassRows = 16;  // rows per sub-range: acc_io holds rows x M x 64 bytes
// X's K block: kOnePassXBytes (16 KiB: M = 16 512 columns). In L1 (48 KiB on Zen 5) beside X's
// block sit acc_io (16 rows x M x 64 B = 16 KiB at M = 16), the group's weight slices and the next
// group's prefetched ones (2 x 4 rows x 2 kblock B): 40 KiB at 16 KiB of X, 48 at 24. Against 24 KiB
// (the previous size; its switch EMOLLM_SMALL_M_ONEPASS_X16K=0 went in session 22), loaded (Zen 5,
// cold weights, a fresh copy a call, interleaved, 4 rounds): M = 16 o 0.99-1.09x, gate_up
// 1.01-1.08x, down 1.07-1.10x (1 and 2 threads); bench_kernels x24k / default 1.03-1.08x the time
// (bench/README 2026-12-05 17:20); 12 KiB 0.94-1.03x, 32 KiB 0.85-1.00x, whole K (X from L2)
// 0.72-0.94x. Same bits at any size (K blocks are exact).
constexpr size_t kOnePassXBytes = size_t(16) << 10;

// One register block: X rows [m0, m0 + MB) against weight rows [n, n + R), K block [k0, k1).
// pf[0..npf): lines to prefetch, one per step each (the next group's slices).
template <int R, int MB>
SM_T512BF void pass_bf16(const Args& a, const uint16_t* xs, int64_t m0, int64_t n, int64_t k0, int64_t k1, float* io,
                         const char* const* pf, int npf) {
  const int64_t K = a.K, M = a.M;
  const uint8_t* wr[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) wr[r] = static_cast<const uint8_t*>(a.W) + size_t(n + r) * a.row_bytes;
  __m512 acc[R][MB];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int m = 0; m < MB; ++m) acc[r][m] = k0 == 0 ? _mm512_setzero_ps() : _mm512_load_ps(io + (r * MB + m) * 16);
  const uint16_t* xp = xs + ((k0 / 32) * M + m0) * 32;
  int64_t k = k0;
  for (; k + 32 <= k1; k += 32, xp += M * 32) {
    for (int j = 0; j < npf; ++j) _mm_prefetch(pf[j] + 2 * (k - k0), _MM_HINT_T0);
    dot_step_bf16<R, MB>(acc, wr, k, xp, 32);
  }
  if (k < k1)  // K % 32 weights, masked (X is zero there too); only in the last K block
    dot_step_bf16<R, MB, true>(acc, wr, k, xp, 32, __mmask32((1ull << (K - k)) - 1));
  if (k1 < K) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int m = 0; m < MB; ++m) _mm512_store_ps(io + (r * MB + m) * 16, acc[r][m]);
    return;
  }
  store_block<R, MB>(acc, a.bias, a.Y + m0 * a.ldy, a.ldy, n);
}

using PassFn = void (*)(const Args&, const uint16_t*, int64_t, int64_t, int64_t, int64_t, float*, const char* const*,
                        int);
template <int R>
struct PassTable {
  static constexpr PassFn fns[kMB] = {pass_bf16<R, 1>, pass_bf16<R, 2>, pass_bf16<R, 3>,
                                      pass_bf16<R, 4>, pass_bf16<R, 5>, pass_bf16<R, 6>};
};

// Weight rows [n0, n0 + ...) with n0 % 4 == 0 (parallel_chunks' chunks are whole groups).
void onepass_bf16(const Args& a, const Plan& p, int64_t n0, int64_t n1) {
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  const int64_t K = a.K, M = a.M, kb = p.kblock, n4 = a.N / kR * kR;
  const int64_t nblk = (M + kMB - 1) / kMB, base = M / nblk, extra = M % nblk;
  float* acc_io = K > kb ? static_cast<float*>(scratch(0, size_t(kOnePassRows) * size_t(M) * 64)) : nullptr;
  for (int64_t s0 = n0; s0 < n1; s0 += kOnePassRows) {
    const int64_t s1 = std::min(n1, s0 + kOnePassRows);
    for (int64_t k0 = 0; k0 < K; k0 += kb) {
      const int64_t k1 = std::min(K, k0 + kb);
      for (int64_t n = s0; n < s1;) {
        const int R = n < n4 && n + kR <= s1 ? int(kR) : 1;
        // the next visit: the next rows of this K block, else this sub-range's first rows in the
        // next block, else the next sub-range's in the first (a prefetch past the range is harmless)
        int64_t tn = n + kR, tk = k0;
        if (tn >= s1) {
          tn = s0;
          tk = k0 + kb;
          if (tk >= K) {
            tn = s1;
            tk = 0;
          }
        }
        float* io = acc_io ? acc_io + (n - s0) * M * 16 : nullptr;
        int64_t m0 = 0;
        for (int64_t b = 0; b < nblk; ++b) {
          const int64_t mb = base + (b < extra ? 1 : 0);
          // this pass prefetches the next group's rows q with q % nblk == b
          const char* pf[kR];
          int npf = 0;
          for (int64_t q = b; q < R; q += nblk)
            pf[npf++] = reinterpret_cast<const char*>(W + size_t(tn + q) * a.row_bytes + 2 * tk);
          if (R == kR)
            PassTable<kR>::fns[mb - 1](a, p.xb, m0, n, k0, k1, io ? io + m0 * kR * 16 : nullptr, pf, npf);
          else
            PassTable<1>::fns[mb - 1](a, p.xb, m0, n, k0, k1, io ? io + m0 * 16 : nullptr, pf, npf);
          m0 += mb;
        }
        n += R;
      }
    }
  }
}

// ------------------------------------------------------------------ F16, groups with the next one prefetched
// F16 weights have no dot-product instruction here (no AVX512-FP16; oneDNN 2.6 has no f16 matmul on
// this CPU either): every weight is widened to f32 (vcvtph2ps, exact) and multiplied by the exact
// f32 X with FMAs; at M = 16 that is compute-bound (2 flop per 2-byte weight per row: 16 flop/byte
// against the f32 FMA balance of ~5.6, 450 GFLOP/s / 80 GB/s on 2 cores). run_range<KF16> (the
// previous path) takes a chunk of weight rows group by group (K = 2048, 5632: the group order),
// every row block of X (M = 16: 6, 5, 5) passing over the group's 4 rows (whole K, X rows from L2),
// the first pass with a prefetch 1 KiB ahead along the rows: that first pass runs at the memory's
// pace, and a cold call took ~1.2x its hot time. groups_f16: the same order and the same
// fma_block, but the passes over a group prefetch the next group's rows (its rows q with
// q % nblk == b in pass b, one line per 32 k at the column the pass is at), so every group is in
// L1 / L2 before its first pass and the reads run under the FMAs. Prefetches only: the same bits
// as run_range<KF16> (set_small_m_f16_groups(false)).
// Measured (Zen 5, 1 thread, thread CPU time, load 5-9, interleaved in one process): M = 16 cold
// 1.1B o 1.20-1.25x, gate_up 1.19-1.34x, down 1.08-1.11x the previous path (cold ~150 GFLOP/s, hot
// ~170, 1.06x; 1-core f32 FMA peak ~230); M = 9 / 12 1.15-1.53x; M = 24 / 32 / 64 at K = 2048
// 1.27 / 1.21 / 1.11x, at K = 5632 1.24 / 1.09 / 1.00x (M = 64 x K = 5632: X's rows, 1.4 MiB, no
// longer fit L2; both paths ~100 GFLOP/s).
// Refuted on the way: widening each group's slices once into an L1 buffer of f32 (software-
// pipelined under the previous group's passes, X step-major in 16 KiB K blocks, so that M = 16
// converts each weight once instead of 3 times): cold 1.03-1.13x the previous path but hot
// 0.80-0.92x (passes 16 steps long, their partial sums through L1); X blocks of 12-128 KiB no better.
// Converting is not what limits: vcvtph2ps does not take the FMA pipes' slots.
// (M >= kSmallMMin = 9: 2 or 3 row blocks, so a pass prefetches at most 2 rows: the tables below.)
// F16 at M = 8 through it (4 + 4 rows, instead of dot_streams' 3 rows x 8 accumulators) measured
// 0.92-0.99x on o and 1.40x once on gate_up (1 thread, cold): not taken.
constexpr int64_t kGroupsF16MaxM = kSmallMMax;
static_assert(kSmallMMin > kMB, "groups_f16 needs at least 2 row blocks (at most 2 prefetched rows a pass)");

SM_T512 void groups_f16(const Args& a, const Plan& p, int64_t n0, int64_t n1) {
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  const int64_t M = a.M, n4 = a.N / kR * kR;
  const int64_t nblk = (M + kMB - 1) / kMB, base = M / nblk, extra = M % nblk;
  using Fn = void (*)(const float*, int64_t, const uint8_t*, size_t, int64_t, const float*, float*, int64_t, int64_t,
                      const uint8_t* const*);
  // f4[rows of the next group prefetched][mb - 1]
  static constexpr Fn f4[3][kMB] = {
      {fma_block<DType::F16, kR, 1, false, 0>, fma_block<DType::F16, kR, 2, false, 0>,
       fma_block<DType::F16, kR, 3, false, 0>, fma_block<DType::F16, kR, 4, false, 0>,
       fma_block<DType::F16, kR, 5, false, 0>, fma_block<DType::F16, kR, 6, false, 0>},
      {fma_block<DType::F16, kR, 1, false, 1>, fma_block<DType::F16, kR, 2, false, 1>,
       fma_block<DType::F16, kR, 3, false, 1>, fma_block<DType::F16, kR, 4, false, 1>,
       fma_block<DType::F16, kR, 5, false, 1>, fma_block<DType::F16, kR, 6, false, 1>},
      {fma_block<DType::F16, kR, 1, false, 2>, fma_block<DType::F16, kR, 2, false, 2>,
       fma_block<DType::F16, kR, 3, false, 2>, fma_block<DType::F16, kR, 4, false, 2>,
       fma_block<DType::F16, kR, 5, false, 2>, fma_block<DType::F16, kR, 6, false, 2>}};
  int64_t n = n0;
  for (; n < n4 && n + kR <= n1; n += kR) {
    const int64_t nn = n + kR;  // the next group (a prefetch past the range is harmless)
    int64_t m0 = 0;
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t mb = base + (b < extra ? 1 : 0);
      const uint8_t* nxt[kR];
      int npf = 0;
      for (int64_t q = b; q < kR; q += nblk) nxt[npf++] = W + size_t(nn + q) * a.row_bytes;
      f4[npf][mb - 1](a.X + m0 * a.ldx, a.ldx, W, a.row_bytes, a.K, a.bias, a.Y + m0 * a.ldy, a.ldy, n, nxt);
      m0 += mb;
    }
  }
  // single rows (past N / 4 * 4): run_range's, the first pass prefetching along its own row
  for (; n < n1; ++n) {
    int64_t m0 = 0;
    for (int64_t b = 0; b < nblk; ++b) {
      const int64_t mb = base + (b < extra ? 1 : 0);
      Table<1, KF16>::fns[b == 0 ? 1 : 0][mb - 1](a, p, m0, n);
      m0 += mb;
    }
  }
}

// ------------------------------------------------------------------ BF16, rounded X, M <= 8 (opt-in)
// At M <= 8 the vdpbf16ps products need 8 instructions or fewer per 64-byte weight line: the call
// is memory-bound, so the weights are walked as dot_streams walks them at M = 1..8 (gemm_avx512.cpp):
// S parts of the rows side by side, each a long run with a software prefetch kStreamsPrefetchBytes
// ahead, every row over the whole K with its M accumulators in registers (S x M <= 24), X (step-major)
// shared by the S rows of a step. Per output the arithmetic is bf16_block's (the lanes add their k
// in order, 32 a step, the K % 32 tail masked), and so is the reduction: rows of a whole group of 4
// by reduce4 (each lane of reduce4 sums its own input by the same tree, so reduce4(a, a, a, a)'s
// lane 0 is a's sum as in its group), the rest by _mm512_reduce_add_ps, then the bias. A row's
// result is the one it gets at any M of 9..64: the same in every batch from bf16_dot_min_m up.
constexpr int kStreamsPrefetchBytes = 1024;
using RangeFn = void (*)(const Args&, const Plan&, int64_t, int64_t);

template <int MB>
SM_T512BF SM_AI void store_row_bf16(__m512 acc, const Args& a, int64_t m, int64_t n, int64_t n4) {
  float v;
  if (n < n4) {
    const __m128 b = _mm_set_ss(a.bias ? a.bias[n] : 0.0f);
    v = _mm_cvtss_f32(_mm_add_ps(reduce4(acc, acc, acc, acc), b));
  } else {
    v = _mm512_reduce_add_ps(acc);
    if (a.bias) v += a.bias[n];
  }
  a.Y[m * a.ldy + n] = v;
}

// K in blocks of kb columns when M x K bf16 of X exceeds kStreamsXBytes; a row's partial sums wait
// in io between blocks (exactly), and the prefetch then runs one row ahead in each stream (the next
// row's slice of the block) rather than along the row.
// The limit is kStreamsXBytesL2 (256 KiB: X from L2, M = 8 up to K = 16384 in one block) by default
// and was kStreamsXBytes (32 KiB: X in L1; 1.1B down at M = 8 in three blocks of 1888) before
// (set_small_m_streams_whole_k(false): tests, bench_kernels' xblock-l1 row). The call is memory-bound: with the
// K blocks each stream reads a row in slices a third of it long, 11 KiB apart, and the hardware
// prefetcher loses them; whole rows are long sequential runs, and X's 8 step-major loads a step come
// from L2 in order. Loaded (Zen 5, load 7-11, cold weights, a fresh copy a call, interleaved), M = 8
// down (N 2048, K 5632) against the 32 KiB blocks: 2 threads 0.96-1.22x (5 runs, mean 1.09x), 1
// thread 0.93-1.07x (mean 1.01x). Session 22 at load 1.8-3 (xblock-l1 / default, best): 1 thread o /
// gate_up / down 1.00 / 0.99 / 1.12, 2 threads 1.01 / 0.98 / 1.07: the env read went. Same bits
// (K blocks are exact).
constexpr size_t kStreamsXBytes = size_t(32) << 10;
constexpr size_t kStreamsXBytesL2 = size_t(256) << 10;

template <int MB, int S>
SM_T512BF void streams_bf16(const Args& a, const uint16_t* xs, int64_t kb, float* io, int64_t n0, int64_t n1) {
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  const int64_t K = a.K, n4 = a.N / kR * kR, len = (n1 - n0) / S;
  const __mmask32 mk = __mmask32((1ull << (K % 32)) - 1);
  const size_t pf_off = kb >= K ? size_t(kStreamsPrefetchBytes) : a.row_bytes;
  for (int64_t k0 = 0; k0 < K; k0 += kb) {
    const int64_t k1 = std::min(K, k0 + kb);
    for (int64_t i = 0; i < len; ++i) {
      const uint8_t* row[S];
      __m512 acc[S][MB];
#pragma GCC unroll 4
      for (int q = 0; q < S; ++q) {
        row[q] = W + size_t(n0 + q * len + i) * a.row_bytes;
#pragma GCC unroll 8
        for (int m = 0; m < MB; ++m)
          acc[q][m] = k0 == 0 ? _mm512_setzero_ps() : _mm512_load_ps(io + ((q * len + i) * MB + m) * 16);
      }
      const uint16_t* xp = xs + (k0 / 32) * MB * 32;
      int64_t k = k0;
      for (; k + 32 <= k1; k += 32, xp += MB * 32) {
#pragma GCC unroll 4
        for (int q = 0; q < S; ++q) _mm_prefetch(reinterpret_cast<const char*>(row[q] + pf_off + 2 * k), _MM_HINT_T0);
        dot_step_bf16<S, MB>(acc, row, k, xp, 32);
      }
      if (k < k1) dot_step_bf16<S, MB, true>(acc, row, k, xp, 32, mk);  // the K % 32 tail, only in the last block
#pragma GCC unroll 4
      for (int q = 0; q < S; ++q) {
        if (k1 < K) {
          float* dst = io + (q * len + i) * MB * 16;
#pragma GCC unroll 8
          for (int m = 0; m < MB; ++m) _mm512_store_ps(dst + m * 16, acc[q][m]);
        } else {
#pragma GCC unroll 8
          for (int m = 0; m < MB; ++m) store_row_bf16<MB>(acc[q][m], a, m, n0 + q * len + i, n4);
        }
      }
    }
  }
  if constexpr (S > 1) {
    if (n0 + S * len < n1) streams_bf16<MB, 1>(a, xs, kb, io ? io + S * len * MB * 16 : nullptr, n0 + S * len, n1);
  }
}

template <int MB>
void streams_range_bf16(const Args& a, const Plan& p, int64_t n0, int64_t n1) {
  float* io = p.kblock < a.K ? static_cast<float*>(scratch(0, size_t(n1 - n0) * MB * 64)) : nullptr;
  streams_bf16<MB, (MB <= 6 ? 4 : 3)>(a, p.xb, p.kblock, io, n0, n1);
}
constexpr RangeFn kStreamsBf16[kSmallM] = {streams_range_bf16<1>, streams_range_bf16<2>, streams_range_bf16<3>,
                                           streams_range_bf16<4>, streams_range_bf16<5>, streams_range_bf16<6>,
                                           streams_range_bf16<7>, streams_range_bf16<8>};

// ------------------------------------------------------------------ BF16 on pre-packed panels
// W in bf16_pack_panels' layout (64 weight rows per panel, pair-major: one contiguous stream per
// panel). A panel is taken in K chunks of kPanelKChunk pairs (64 KiB of weights); every 6-row
// panel of X passes over a chunk (kern_bf16_6x64, computing only its own rows: 16 rows run 6, 6
// and 4) before the next chunk, so the weights come from memory once, as one sequential stream the
// hardware prefetcher follows, and from L1/L2 for the other row panels. Partial sums go to Y
// between chunks (first chunk: bias + sum; then +=). Per output the summation order is fixed by K
// alone (chunk by chunk, pair by pair), so row m's result is the same bits at any M, pool or
// split: a sequence decoded alone (M = 1) and in a batch gives the same logits.
// Measured (Zen 5, one thread, thread CPU time, load 9-11, interleaved in one process, cold
// weights): 1.1B gate_up (N 5632, K 2048) M = 16 ~250 GFLOP/s against ~205 for the row-major
// small-M kernel (~1.2x) and ~175 for the packed GEMM's blocking on the same panels; chunks of 64 /
// 128 pairs measured 0.93-0.97x of 256.
constexpr int64_t kPanelKChunk = 256;

template <int MRC>
SM_T512BF void panel_chunk(int64_t kc, const uint32_t* xp, const uint32_t* wp, float* y, int64_t ldy, int mr,
                           int64_t nr, const float* bias, bool first) {
  kern_bf16_6x64<false, 4, MRC>(kc, xp, wp, y, ldy, mr, nr, bias, first);
}
using PanelChunkFn = void (*)(int64_t, const uint32_t*, const uint32_t*, float*, int64_t, int, int64_t, const float*,
                              bool);
constexpr PanelChunkFn kPanelChunk[kBf16MR] = {panel_chunk<1>, panel_chunk<2>, panel_chunk<3>,
                                               panel_chunk<4>, panel_chunk<5>, panel_chunk<6>};

// M = 1 on panels, kPanelStreams panels side by side: each panel is one contiguous stream (its
// kp pairs x 256 bytes), so walking several at once keeps several streams' misses in flight per
// thread, as gemv_streams does for the row-major huge-page copies (one panel at a time is one
// stream, what panel_chunk<1> gives, and oneDNN's brgemm too). Each panel's 4 accumulators take
// panel_chunk<1>'s operations in its order (per K chunk of kPanelKChunk pairs: bias or 0, one
// vdpbf16ps a pair and 16 columns, then stored or added to y): the same bits. (One panel at a time,
// the A/B switch EMOLLM_PANELS_M1_STREAMS=0, is gone: 4 panels 1.10-1.27x, bench/README
// 2026-12-05 08:34; the panels left over after the groups and M > 1 still run panel_chunk.)
constexpr int kPanelStreams = 4;
constexpr int kPanelStreamPrefetch = 1024;  // bytes ahead of each stream
struct PanelRef {
  const uint32_t* wp;  // the panel's pairs
  float* y;
  const float* bias;
  int64_t nr;
};
SM_T512BF void panels_m1_streams(const uint32_t* xp, const PanelRef* pr, int64_t kp) {
  constexpr int S = kPanelStreams, NR = kBf16NR;
  __mmask16 mk[S][4];
  for (int s = 0; s < S; ++s)
    for (int j = 0; j < 4; ++j) mk[s][j] = mask16(pr[s].nr - 16 * j);
  for (int64_t c0 = 0; c0 < kp; c0 += kPanelKChunk) {
    const int64_t kc = std::min(kPanelKChunk, kp - c0);
    const bool first = c0 == 0;
    __m512 c[S][4];
#pragma GCC unroll 4
    for (int s = 0; s < S; ++s)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j)
        c[s][j] = (first && pr[s].bias) ? _mm512_maskz_loadu_ps(mk[s][j], pr[s].bias + 16 * j) : _mm512_setzero_ps();
    for (int64_t q = c0; q < c0 + kc; ++q) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(int(xp[q * kBf16MR]));
#pragma GCC unroll 4
      for (int s = 0; s < S; ++s) {
        const uint32_t* w = pr[s].wp + q * NR;
        const char* pf = reinterpret_cast<const char*>(w) + kPanelStreamPrefetch;
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
          _mm_prefetch(pf + 64 * j, _MM_HINT_T0);
          c[s][j] = _mm512_dpbf16_ps(c[s][j], a, (__m512bh)_mm512_load_si512(w + 16 * j));
        }
      }
    }
#pragma GCC unroll 4
    for (int s = 0; s < S; ++s)
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        __m512 v = c[s][j];
        if (!first) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk[s][j], pr[s].y + 16 * j));
        _mm512_mask_storeu_ps(pr[s].y + 16 * j, mk[s][j], v);
      }
  }
}

}  // namespace

void gemm_bf16_panels_small_m(const Args* outs, int n) {
  const Args& a = outs[0];
  const int64_t kp = (a.K + 1) / 2, npm = (a.M + kBf16MR - 1) / kBf16MR;
  uint32_t* xp = static_cast<uint32_t*>(scratch(2, size_t(npm) * kBf16MR * size_t(kp) * 4));
  for (int64_t p = 0; p < npm; ++p)
    pack_x6_bf16pairs(a.X + p * kBf16MR * a.ldx, a.ldx, int(std::min<int64_t>(kBf16MR, a.M - p * kBf16MR)), a.K,
                      xp + p * kp * kBf16MR);
  int64_t first[kMaxPanelOutputs + 1] = {0};  // first global panel of each output
  int64_t macs = 0;
  for (int j = 0; j < n; ++j) {
    first[j + 1] = first[j] + (outs[j].N + kBf16NR - 1) / kBf16NR;
    macs += a.M * outs[j].N * a.K;
  }
  const int nth = a.pool ? a.pool->size() : 1;
  // ~8 chunks of panels per thread (parallel_chunks is dynamic: a thread slowed by another
  // process is covered by the others)
  const int64_t chunk = std::max<int64_t>(1, first[n] / (8 * int64_t(nth)));
  // M = 1: kPanelStreams panels at a time (panels_m1_streams), the rest one by one below
  const bool streams = a.M == 1;
  // chunks of whole stream groups at M = 1, so that each thread walks kPanelStreams streams
  const int64_t ch = streams ? (chunk + kPanelStreams - 1) / kPanelStreams * kPanelStreams : chunk;
  parallel_chunks(a.pool, macs >= kParallelMinMacs, first[n], ch, [&](int64_t g0, int64_t g1) {
    int j = 0;
    if (streams) {
      for (; g0 + kPanelStreams <= g1; g0 += kPanelStreams) {
        PanelRef pr[kPanelStreams];
        for (int s = 0; s < kPanelStreams; ++s) {
          const int64_t g = g0 + s;
          while (g >= first[j + 1]) ++j;
          const Args& o = outs[j];
          const int64_t p = g - first[j];
          pr[s] = PanelRef{static_cast<const uint32_t*>(o.W) + p * kp * kBf16NR, o.Y + p * kBf16NR,
                           o.bias ? o.bias + p * kBf16NR : nullptr, std::min<int64_t>(kBf16NR, o.N - p * kBf16NR)};
        }
        panels_m1_streams(xp, pr, kp);
      }
      j = 0;
    }
    for (int64_t g = g0; g < g1; ++g) {
      while (g >= first[j + 1]) ++j;
      const Args& o = outs[j];
      const int64_t p = g - first[j], nr = std::min<int64_t>(kBf16NR, o.N - p * kBf16NR);
      const uint32_t* wp = static_cast<const uint32_t*>(o.W) + p * kp * kBf16NR;
      const float* bias = o.bias ? o.bias + p * kBf16NR : nullptr;
      for (int64_t c0 = 0; c0 < kp; c0 += kPanelKChunk) {
        const int64_t kc = std::min(kPanelKChunk, kp - c0);
        for (int64_t mp = 0; mp < npm; ++mp) {
          const int mr = int(std::min<int64_t>(kBf16MR, a.M - mp * kBf16MR));
          kPanelChunk[mr - 1](kc, xp + (mp * kp + c0) * kBf16MR, wp + c0 * kBf16NR,
                              o.Y + mp * kBf16MR * o.ldy + p * kBf16NR, o.ldy, mr, nr, bias, c0 == 0);
        }
      }
    }
  });
}

bool gemm_small_m(const Args& a, Isa isa) {
  const CpuFeatures& f = cpu_features();
  // M below kSmallMMin: only BF16 from the opt-in rounded-X threshold (bf16_dot_min_m) up, by streams_bf16
  const bool bf16dot_low =
      a.M < kSmallMMin && a.M >= bf16_dot_min_m() && a.wtype == DType::BF16 && f.avx512bf16;
  if ((a.M < kSmallMMin && !bf16dot_low) || a.M > kSmallMMax || isa < Isa::Avx512 || !small_m_enabled()) return false;
  if (!f.avx512f || !f.avx512bw || !f.avx512vl || !f.avx512dq) return false;
  Plan p{false, a.X, a.ldx, nullptr, 0, 0};
  void (*range)(const Args&, const Plan&, int64_t, int64_t) = nullptr;
  if (a.wtype == DType::BF16 && f.avx512bf16 && a.M >= std::min<int64_t>(kSmallMMin, bf16_dot_min_m())) {
    p.bf16dot = true;
    p.ldb = (a.K + 31) / 32 * 32;
    uint16_t* xb = static_cast<uint16_t*>(scratch(2, size_t(a.M) * size_t(p.ldb) * 2));
    p.xb = xb;
    if (a.M <= kSmallM) {  // bf16dot_low: memory-bound, the streams kernel
      round_x_bf16_steps(a.X, a.ldx, a.M, a.K, xb);
      const int64_t sxb = int64_t(small_m_streams_whole_k() ? kStreamsXBytesL2 : kStreamsXBytes);
      const int64_t nkb = (int64_t(a.M) * p.ldb * 2 + sxb - 1) / sxb;
      p.kblock = ((p.ldb / 32 + nkb - 1) / nkb) * 32;  // balanced blocks of whole steps
      range = kStreamsBf16[a.M - 1];
    } else if (a.M <= kOnePassMaxM && small_m_onepass()) {
      round_x_bf16_steps(a.X, a.ldx, a.M, a.K, xb);
      // X's K block in L1: M rows x kblock bf16 <= 16 KiB (M = 16: 512 columns; see kOnePassXBytes)
      p.kblock = std::min<int64_t>(p.ldb, std::max<int64_t>(32, int64_t(kOnePassXBytes / (size_t(a.M) * 2)) / 32 * 32));
      range = onepass_bf16;
    } else {
      round_x_bf16(a.X, a.ldx, a.M, a.K, p.ldb, xb);
      p.kblock = std::min<int64_t>(p.ldb, kBf16KBlock);
      range = run_range_bf16;
    }
  } else if (a.wtype == DType::BF16) {
    range = run_range<KBf16Fma>;
  } else if (a.wtype == DType::F16 && a.M <= kGroupsF16MaxM && small_m_f16_groups()) {
    range = groups_f16;
  } else if (a.wtype == DType::F16) {
    range = run_range<KF16>;
  } else {
    return false;
  }
  // Chunks of whole groups: at most kChunkBytes of weights (they stay in L2 while every row block
  // of X passes over them), and ~8 per thread so that a thread slowed by another process is
  // covered by the others (parallel_chunks is dynamic).
  const int nth = a.pool ? a.pool->size() : 1;
  // (bf16: the rows' slices of one K block are what must stay in L2)
  const size_t slice = p.bf16dot ? std::min(a.row_bytes, size_t(p.kblock) * 2) : a.row_bytes;
  const int64_t by_bytes = int64_t(kChunkBytes / std::max<size_t>(slice, 1));
  // (one pass: nothing is read twice, so no L2 cap)
  // (groups_f16: each group's rows stay in L1 / L2 for its passes, the chunk needs no cap either)
  const bool onepass = (range != run_range_bf16 && p.bf16dot) || range == groups_f16;  // (or the streams kernel)
  const int64_t chunk = std::max<int64_t>(kR, std::min(onepass ? a.N : by_bytes, a.N / (8 * nth)) / kR * kR);
  // parallel_chunks runs the whole range at once without a pool (or when the call is small): the
  // row blocks' passes must still see at most `chunk` rows of weights at a time
  parallel_chunks(a.pool, a.M * a.N * a.K >= kParallelMinMacs, a.N, chunk, [&](int64_t n0, int64_t n1) {
    for (int64_t s = n0; s < n1; s += chunk) range(a, p, s, std::min(n1, s + chunk));
  });
  return true;
}

}  // namespace gemm_detail
}  // namespace emollm

#endif  // __x86_64__
