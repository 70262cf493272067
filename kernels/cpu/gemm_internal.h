// Internal declarations shared by the GEMM/GEMV dispatcher (gemm.cpp) and its per-ISA
// implementations (gemm_avx2.cpp, gemm_avx512.cpp, gemm_amx.cpp). Not part of the public API.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>

#include "../../base/thread_pool.h"
#include "decode_tuning.h"  // GemvPrefetch, the per-CPU defaults
#include "kernels.h"

namespace emollm {
namespace gemm_detail {

// One validated call: Y[M,N] = X[M,K] * W[N,K]^T (+ bias). M, N, K > 0.
struct Args {
  const float* X;
  int64_t ldx;
  const void* W;
  DType wtype;
  const float* bias;
  float* Y;
  int64_t ldy;
  int64_t M, N, K;
  ThreadPool* pool;
  size_t row_bytes;  // bytes of one weight row
  bool huge_pages = false;  // W lies in 2 MiB pages (gemm_huge_pages): the single-stream GEMV may run
};

// Runs fn(ith, nth) on the pool (or inline when pool is null / has one thread, or when the
// work is too small to be worth waking the workers).
void run_parallel(ThreadPool* pool, bool parallel, const std::function<void(int, int)>& fn);
// Independent pieces [0, n) (X panels packed or quantised before a GEMM): fn(begin, end) over
// contiguous ranges through ThreadPool::parallel_for (grain 1): claimed by whichever thread is
// there, so a late thread's share is taken by the others; pool_dynamic_split(false): one static
// range per thread (split_range), as run_parallel's callers did. Inline when !parallel (too small
// to wake the pool). fn must not depend on the cut (a copy per piece).
void parallel_pieces(ThreadPool* pool, bool parallel, int64_t n, const std::function<void(int64_t, int64_t)>& fn);

// Dynamic scheduling: workers take chunks [i*chunk, min(n, (i+1)*chunk)) of [0, n) from a shared
// counter until none is left, so a worker delayed by another process does not hold everyone up.
void parallel_chunks(ThreadPool* pool, bool parallel, int64_t n, int64_t chunk,
                     const std::function<void(int64_t begin, int64_t end)>& fn);

// Rows with M <= kSmallM use the "dot" kernels that stream each weight row once for all M
// activation rows; larger M use the packed, cache-blocked GEMM.
constexpr int64_t kSmallM = 8;

// Batched decode (gemm_small_m.cpp): BF16/F16 weights with kSmallMMin <= M <= kSmallMMax on
// AVX-512 use unpacked, row-register-blocked kernels; gemm_small_m returns false for the calls it
// does not take. set_small_m_enabled(false) restores the previous paths (tests, A/B benchmarks).
// M <= kSmallM stays on the dot kernels above (at M = 4 they measured 1.1-1.3x the small-M
// f32-FMA kernel, interleaved A/B on Zen 5); M > 64 on the packed GEMM.
constexpr int64_t kSmallMMin = kSmallM + 1;
constexpr int64_t kSmallMMax = 64;
#if defined(__x86_64__)
bool gemm_small_m(const Args& a, Isa isa);
// The vdpbf16ps products of n outputs whose W (Args::W) are bf16_pack_panels' panels, for
// M <= kSmallMMax (batched decode, and M = 1 when a decoder's matrices are kept in panels):
// every output's panels are streamed once, in K chunks of kPanelKChunk pairs that every row
// panel of X passes over while the chunk is in L1/L2 (see gemm_small_m.cpp). The outputs share
// X, ldx, M, K and pool. Row m's result depends only on row m of X (not on M, the other rows,
// the outputs beside it or the threads). set_small_m_panels_enabled(false): the packed GEMM's
// blocking instead (compute_range), for A/B runs.
void gemm_bf16_panels_small_m(const Args* outs, int n);
#endif
void set_small_m_panels_enabled(bool enabled);
bool small_m_panels_enabled();
// gemm_bf16_panels_small_m at M = 1: 4 panels walked side by side (4 streams a thread), the
// panels left over one at a time; the same bits as row 0 of any M.
// BF16 / F16 at 2 <= M <= kSmallM on AVX-512 with weights in huge pages (gemm_huge_pages, batched
// decode) always take the dot kernels' rows several streams at a time per thread with a software
// prefetch, over one run of rows per thread (gemm_avx512.cpp dot_streams): the bits of the plain dot
// kernels that weights on 4 KiB pages take. (The A/B switch EMOLLM_SMALL_M_STREAMS=0, the plain dot
// kernels on huge pages too, is gone: 1.30-1.93x bf16, 1.17-2.05x f16, bench/README 2026-12-05 11:44.)
// BF16 on AVX512-BF16 at kSmallMMin <= M <= 16 (gemm_small_m.cpp): one pass over the weights, each
// line feeding every row of X (onepass_bf16; on at start, set_small_m_onepass(false): the
// row-block passes of run_range_bf16). Same bits. For tests and A/B; process-wide.
void set_small_m_onepass(bool on);
bool small_m_onepass();
// Off (tests, A/B rows): streams_bf16 (BF16, rounded X, M <= 8) splits K so that X's
// block is 32 KiB (L1) instead of 256 KiB (L2; see gemm_small_m.cpp). Same bits.
void set_small_m_streams_whole_k(bool on);
bool small_m_streams_whole_k();
// F16 at kSmallMMin <= M <= kSmallMMax on AVX-512 (gemm_small_m.cpp groups_f16): run_range's group order
// where the passes over a group of weight rows prefetch the next group (on at start;
// set_small_m_f16_groups(false): run_range<KF16>). Same bits. For tests and A/B; process-wide.
void set_small_m_f16_groups(bool on);
bool small_m_f16_groups();
// The smallest M at which BF16 weights (AVX512-BF16, AVX-512 level, small-M path on) take vdpbf16ps
// with X rounded to bf16 (gemm_small_m.cpp streams_bf16 below M = 9): 8 by default, so a row of a
// batch of 8..64 gets the same bits in all of them (M = 8 measured 1.2-1.5x the exact-X dot_streams,
// which is FMA-bound there). EMOLLM_BF16_DOT_MIN_M=0 (or 9): M <= 8 on the exact-X dot kernels (the
// previous numerics); =m (2..8): from m up. set_bf16_dot_min_m(m): m in 2..9, else 9.
void set_bf16_dot_min_m(int m);
int bf16_dot_min_m();
void set_small_m_enabled(bool enabled);
bool small_m_enabled();

// Minimum multiply-adds before a call is spread across threads.
constexpr int64_t kParallelMinMacs = int64_t(1) << 16;

// The threads' split of a packed GEMM's work over one chunk of mcur X rows (X panels of mr rows,
// weight panels of nr, L2 weight blocks of nc): by weight rows when there are enough of them
// (chunks of whole L2 blocks when there are enough of those, else of panels), else by X panels;
// each piece runs fn(m_begin, m_end, n_begin, n_end). Shared by the bf16/f32 packed GEMM
// (gemm_avx512.cpp) and the int8 ones (gemm_q8_vnni.cpp, gemm_kquant_vnni.cpp).
template <typename Fn>
void split_packed_gemm(ThreadPool* pool, int64_t mcur, int64_t N, int64_t K, int64_t mr, int64_t nr, int64_t nc,
                       Fn&& fn) {
  const int64_t npn = (N + nr - 1) / nr, npm = (mcur + mr - 1) / mr;
  const int nth_max = pool ? pool->size() : 1;
  const bool par = mcur * N * K >= kParallelMinMacs;
  if (npn >= 4 * nth_max || npn >= npm) {
    const int64_t chunk = (N >= 4 * nc * nth_max) ? nc : std::max<int64_t>(nr, (npn / (4 * nth_max)) * nr);
    parallel_chunks(pool, par, N, chunk, [&](int64_t n0, int64_t n1) { fn(int64_t(0), mcur, n0, n1); });
  } else {
    const int64_t chunk = std::max<int64_t>(1, npm / (4 * nth_max)) * mr;
    parallel_chunks(pool, par, mcur, chunk, [&](int64_t r0, int64_t r1) { fn(r0, r1, int64_t(0), N); });
  }
}

// Thread-local growable 64-byte-aligned scratch, reused across calls (no per-call malloc).
void* scratch(int slot, size_t bytes);

// ---- q8_0 activations (QuantActivations::Q8) for Q8_0/Q4_0 weights with M <= kSmallM
// X rows quantised once per call (ggml quantize_row_q8_0 rounding) into per-call scratch, in the
// calling thread's scratch slot kQxSlot; the workers only read it. Per row m:
//   qs  + m*ldq : K int8 values (ldq = K rounded up to 64)
//   dxe + m*ldd : the block scales fp16(d) as f32, each repeated 8 times (one per int32 lane of a
//                 32-byte block dot product), ldd = K / 4
//   neg + m*ldd : -off * (sum of qs[4j..4j+3]) per int32 lane j (off = 128 or 8, see below),
//                 only when off != 0. Lane layout of vpdpbusd / vpmaddubsw+vpmaddwd, so the
//                 correction of an unsigned-times-signed dot product is one add.
struct QX {
  const int8_t* qs;
  const float* dxe;
  const int32_t* neg;
  int64_t ldq, ldd;
};
constexpr int kQxSlot = 3;
// Bytes of scratch for M rows of K (K % 32 == 0), and the views into it.
size_t qx_bytes(int64_t M, int64_t K);
QX qx_view(void* buf, int64_t M, int64_t K);
// Scalar quantiser (the reference for the vector ones): row m of X into the QX buffers.
void qx_quantize_row_scalar(const float* x, int64_t K, int8_t* qs, float* dxe, int32_t* neg, int off);

// Uses AVX-512 VNNI for the q8_0-activation kernels when the CPU has it (tests turn it off to
// run the AVX2 kernels that the Avx512 level falls back to without VNNI).
void set_vnni_allowed(bool allowed);
bool vnni_allowed();

// Q4_0 at M = 1 with VNNI: the previous kernel (q8v_block, two blocks a step on one accumulator)
// instead of q4v_row_m1 (four blocks a step, two accumulators; Q8_0 always runs q8v_block). For
// tests (both must pass) and the A/B rows of bench_kernels; process-wide, default off.
void set_q8_gemv_legacy(bool legacy);
bool q8_gemv_legacy();

// BF16 / F16 at M = 1 on AVX-512 with weights in huge pages (gemm_huge_pages) always run the
// stream kernels (gemm_avx512.cpp gemv_rows; the multi-row kernels of plain gemm() are for weights
// on 4 KiB pages). The A/B switch that ran the multi-row kernels on huge pages too
// (EMOLLM_GEMV_STREAM=0) is gone: stream 1.08x (bf16) / 1.25x (f16) decode, bench/README 2026-12-04 12:43.
// F32 at M = 1 on AVX-512 with weights in huge pages: the stream kernels above too (default on;
// their f32 rows are dot_block<F32>'s FMAs in its order: the same bits) and gemv_huge_pages_multi
// fuses F32 outputs; off (set_gemv_stream_f32(false)): dot_block's 4-row kernel, one call per output.
// For tests and A/B runs; process-wide.
void set_gemv_stream_f32(bool on);
bool gemv_stream_f32();
// The stream kernels above read 4 rows' streams per thread side by side (gemm_avx512.cpp
// gemv_streams; one stream a thread, the A/B switch EMOLLM_GEMV_STREAMS=0, is gone: 4 streams
// 1.10-1.54x, bench/README 2026-12-05 04:29); rows left over run one at a time (gemv_stream).
// The stream kernels' software prefetch (1 KiB ahead of each stream, decode_tuning.h GemvPrefetch):
// default per CPU (decode_tuning(): T0, none on double-pumped AVX-512). Same bits. For the tests
// and A/B tools; process-wide.
void set_gemv_streams_prefetch(GemvPrefetch p);
GemvPrefetch gemv_streams_prefetch();
// Streams a thread of those kernels for BF16 / F16 rows of K >= 4096 (gemm_avx512.cpp kHalfLongK):
// 6 or 4 (any other value reads as 4); default per CPU (decode_tuning() half_long_streams: 4, 6 on
// double-pumped AVX-512). F32 and shorter rows: 4. Same bits (each row's sums are its own). For the
// tests and A/B tools; process-wide.
void set_gemv_half_long_streams(int streams);
int gemv_half_long_streams();
// Those 6-stream rows (K >= 4096, gemv_half_long_streams() 6) walked in runs of two 128-byte
// steps of a row, x's 128 columns held in registers (gemm_avx512.cpp gemv_streams at R = 2), where
// the stream prefetch is None: 0 = never (one step of each stream in turn), 1 = F16 rows, 2 = BF16
// and F16 rows. Same bits. Default per CPU (decode_tuning() half_long_runs: 0, 1 on double-pumped
// AVX-512). For the tests and A/B tools; process-wide.
void set_gemv_half_long_runs(int runs);
int gemv_half_long_runs();
// BF16 at M = 1 on AVX-512 with weights on 4 KiB pages: the 8-row block kernel (gemm_avx512.cpp
// bf16_gemv_block) and its software prefetch (1 KiB ahead of each row): default per CPU
// (decode_tuning() block_prefetch). Same bits. For the tests and A/B tools; process-wide.
void set_gemv_block_prefetch(GemvPrefetch p);
GemvPrefetch gemv_block_prefetch();
// gemm_repacked at M > kSmallM on VNNI: the X-panel kernel (gemv_repacked.cpp, default on) or,
// when off, the previous 4-row tiles; the bits are the same. For the A/B rows of bench_kernels.
void set_repacked_panels_enabled(bool enabled);
bool repacked_panels_enabled();
// Below that kernel (M <= kSmallM): M <= rows in one group tile (each weight block unpacked once
// for all M rows), else 4-row tiles; rows 4..6 (default 6, others: 4). Same bits. For
// q8_panels_ab / score_forks_ab (AB_SWITCH=tile_rows); process-wide.
void set_repacked_tile_rows(int rows);
// How that few-row path reads its weights and X. Previous (session 24): each super-group's
// records prefetched 4 blocks ahead by its first tile (the others read them from L2), X per row
// from the quantised rows. Spread: the next super-group's records prefetched into L2 spread evenly
// over the current one's tiles, the groups in a contiguous range a thread. SpreadPanel: Spread
// with X in one panel of the M rows (per block their quants, d_x and sums side by side). Default
// (the start): by CPU trait like the X-panel kernel's blocking below: SpreadPanel on Zen 4 and 5
// (measured), but q8_0 at M <= 3 Previous where avx512_double_pumped (Zen 4). An explicit path
// applies to every type and M. Same bits. For small_m_ab, score_forks_ab and the tests; process-wide.
enum class FewRowsPath { Default = -1, Previous = 0, Spread = 1, SpreadPanel = 2 };
void set_repacked_few_rows_path(FewRowsPath p);
// The path the few-row kernel takes now for wtype and M rows (the setter's, else the CPU's default).
FewRowsPath repacked_few_rows_path_for(DType wtype, int64_t M);
// That X-panel kernel's blocking: k slices of `blocks` 32-element blocks (rounded down to even;
// 0: none, the whole K per kernel call), X passes of `kib` KiB of panels and `panels` weight
// panels run slice by slice together; -1: the built-in default (no environment variable). Same
// bits at any setting. For tests, q8_panels_ab and the A/B rows of bench_kernels; process-wide.
void set_repacked_kslice(int blocks);
void set_repacked_pass_kib(int kib);
void set_repacked_kgroup(int panels);
// Those built-in defaults are chosen once per CPU by a trait, base/cpu_features.h
// avx512_double_pumped (Zen 4: no k slices, q8_0's few-row path Previous at M <= 3;
// gemv_repacked.cpp kPanelDefaults). 0 / 1 injects
// the trait, -1 (the start) reads the CPU's. Same bits either way. For tests and A/B tools; process-wide.
void set_repacked_double_pumped(int on);
// The k slice (blocks; 0: whole K) the kernel uses now for wtype (q4_0 / q8_0) and K = 32 * nb
// (the setter's, else the default).
int64_t repacked_kslice_for(DType wtype, int64_t nb);
// That kernel's software prefetch of the X panel it streams, 8 blocks ahead into L1, on calls
// over the whole K (not k-sliced): default on (off: tests and A/B tools).
// Same bits. For tests and q8_panels_ab; process-wide.
void set_repacked_x_prefetch(bool on);
bool repacked_x_prefetch();
// That kernel's split of its weight panels over the pool: guided claims (default on: 1 / (4 *
// threads) of what is left, at most npn / (4 * threads) panels, down to one panel, or one group of
// set_repacked_kgroup panels when k-sliced with >= 4 such groups a thread, so threads of unequal
// speed end within about a panel) or equal chunks of npn / (4 * threads) (off). Same bits. For
// tests and A/B tools; process-wide.
void set_repacked_guided(bool on);
bool repacked_guided();
// gemv_repacked on q4_0 4-group records: each thread's super-groups in two contiguous parts read
// side by side, each record prefetched q40_ahead bytes on along its part (Zen 5 2 KiB, Zen 4 4 KiB)
// as set_q40_ms_prefetch says (default on; off: one stream, 8 records ahead). Same bits.
// Process-wide, on at start (no environment variable).
void set_q40_ms(bool on);
bool q40_ms();
// That pass's software prefetch along its streams (a record q40_ahead bytes ahead, decode_tuning.h
// GemvPrefetch): default per CPU (decode_tuning(): T0, none on double-pumped AVX-512; none still
// prefetches each stream's first q40_ahead bytes at a cold start). Same bits. For the tests and A/B
// tools; process-wide.
void set_q40_ms_prefetch(GemvPrefetch p);
GemvPrefetch q40_ms_prefetch();
// That pass's order of a record's loads, with or without its software prefetch (decode_tuning.h
// q40_addr_order; gemv_repacked.cpp record_block_q40_addr): the record's lines in address order,
// group by group (true), or line t of the 4 groups at a time (false); read through gemv_m1_form
// below. Same bits. For the tests and A/B tools; process-wide.
void set_q40_ms_addr_order(bool on);
bool q40_ms_addr_order();
// How far ahead that prefetch reads along each stream (bytes, a multiple of 64 in [64, 16384];
// also what a cold start prefetches of each stream; decode_tuning.h q40_ahead). Same bits. For the
// tests and A/B tools; process-wide.
void set_q40_ms_ahead(int bytes);
int q40_ms_ahead();
// gemv_repacked's q8_0 M = 1 pass (one-group records): 0 = four adjacent groups a pass (four
// streams that end and restart together every nb records); S = 1-4: each thread's groups in S
// contiguous parts read side by side, one group of each a pass (S unbroken streams). Its software
// prefetch along those streams (T0 / T1 / NTA / none; one line before each quant line's load),
// and how far ahead (bytes, a multiple of 64 in [64, 16384]; also what a cold start prefetches of
// each stream). Defaults per CPU (decode_tuning.h: 2 parts without prefetch on double-pumped
// AVX-512, 4 parts with T0 1 KiB ahead elsewhere). Same bits. For the tests and A/B tools;
// process-wide.
void set_q80_streams(int s);
int q80_streams();
void set_q80_prefetch(GemvPrefetch p);
GemvPrefetch q80_prefetch();
void set_q80_ahead(int bytes);
int q80_ahead();
// That pass with a software prefetch: a 17th prefetch a block pair (the line its 16 leave to the
// hardware prefetchers: a q8_0 record is 544 bytes, 8.5 lines), on or off. Off at start on every
// CPU: on Zen 4 (session 28, 1 thread) 0.97-1.06x the same T0 forms without it, which Zen 4 does
// not use (its pass runs without prefetch); not measured on Zen 5. Same bits. For the tests and
// A/B tools; process-wide.
void set_q80_line17(bool on);
bool q80_line17();
// The form gemv_repacked's M = 1 pass takes (gemv_repacked.cpp repacked_groups), chosen once a
// call from the settings above by gemv_m1_form, a pure function: q4_0 on 4-group records the
// two-stream pass (ms_q40_avx512; its left-over super-group on one stream) when q40_ms, with
// q40_prefetch's hint along its streams and a record's loads in address order where q40_addr_order
// says (else t-major); q8_0 the parts pass (parts_q80_avx512) on q80_streams
// parts when > 0, q80_prefetch's hint, the 17th prefetch only with a hint and q80_line17; else
// groups_avx512's passes of 4 / 2 / 1 adjacent groups (what either leaves over runs on those too).
// Tests check that each CPU's decode_tuning row leads to the form its figures chose.
enum class GemvPass { Groups = 0, Q40Streams = 1, Q80Parts = 2 };
struct GemvM1Settings {
  bool q40_ms = true;
  GemvPrefetch q40_prefetch = GemvPrefetch::T0;
  bool q40_addr_order = false;
  int q80_streams = 0;
  GemvPrefetch q80_prefetch = GemvPrefetch::T0;
  bool q80_line17 = false;
};
struct GemvM1Form {
  GemvPass pass = GemvPass::Groups;
  int streams = 0;                         // Q40Streams 2; Q80Parts 1-4; Groups 0
  GemvPrefetch hint = GemvPrefetch::None;  // along the streams (Groups: its own, not this)
  bool addr_order = false;                 // Q40Streams: a record's loads in address order
  bool line17 = false;                     // Q80Parts with a hint: the 17th line a block pair
  bool operator==(const GemvM1Form& o) const {
    return pass == o.pass && streams == o.streams && hint == o.hint && addr_order == o.addr_order && line17 == o.line17;
  }
};
GemvM1Form gemv_m1_form(bool q8, const GemvM1Settings& s);
// The process-wide settings now (the setters above).
GemvM1Settings gemv_m1_settings();
// The settings a decode_tuning row starts (q40_ms on and q80_line17 off: their start values).
GemvM1Settings gemv_m1_settings(const DecodeTuning& t);
// The M = 1 GEMVs on a pool (gemv_repacked / gemv_repacked_multi, the bf16 / f16 single-stream
// GEMV of gemm_huge_pages): contiguous ranges with stealing (base/thread_pool.h parallel_ranges:
// one long run of rows per thread) when on (EMOLLM_GEMV_RANGES, default on), else guided chunks
// from one shared counter (base/thread_pool.h parallel_guided). Same bits. Process-wide.
void set_gemv_ranges(bool on);
bool gemv_ranges();
// q4_0's M = 1 dispatch (gemv_repacked / _multi with the two-stream pass, q40_ms()) claiming
// whole pairs of super-groups (8 groups) when on, instead of single passes (4 groups): a claim of
// an odd number of super-groups runs its last one on one stream (ms_q40_avx512<1>), which reads
// slower a byte than the two-stream part; the 1.1B's gate+up claims are 11 super-groups, its
// q+k+v 3. Same bits (the results do not depend on the chunking). Off on every CPU (no quiet win
// on Zen 4, session 26, gemv_repacked.cpp). Process-wide; for tests and A/B tools
// (decode_switch_ab gemv_even_claims).
void set_gemv_even_claims(bool on);
bool gemv_even_claims();
// The q4_0 / q8_0 M = 1 dispatch's first claim on a thread's own range: all of it but the last
// `passes` claim units (base/thread_pool.h parallel_ranges owner_keep), or -1: claims of at most
// gemv_chunk's groups as before. Same bits. decode_tuning.h gemv_owner_keep; values below -1 read -1.
void set_gemv_owner_keep(int passes);
int gemv_owner_keep();
// The same first claim for the bf16 / f16 / f32 stream kernels' M = 1 rows (gemm_avx512.cpp
// guided_rows: gemm_huge_pages at M = 1, gemv_huge_pages_multi): all of a thread's range but its
// last `steps` steps of 8 rows, or -1: claims of at most 1/8 of a thread's range as before. Same
// bits. decode_tuning.h stream_owner_keep; values below -1 read -1.
void set_gemv_streams_owner_keep(int steps);
int gemv_streams_owner_keep();
// Those ranges owned by pool thread index (RangeOwner::Thread: thread i walks range i; the same
// chunks, stealing and bits as by order of arrival). The switch to arrival order
// (EMOLLM_GEMV_OWNED_RANGES=0) went in session 21: quiet on / off 1.006 (q4_0) and 1.002 (q6_K) at
// 2 threads, and its reason (a thread prefetching its own part of the next GEMV) went in session 20.
inline RangeOwner gemv_range_owner() { return RangeOwner::Thread; }

void gemm_q8act_scalar(const Args& a);

void gemm_scalar(const Args& a);

// q4_1 / q5_0 / q5_1 / q4_K / q5_K / q6_K weights (gemm_quant_ext.cpp): q8_0 activations and
// integer block dot products when q8act, else weight rows dequantised to f32 for the f32 kernels
// of `isa`.
void gemm_quant_ext(const Args& a, Isa isa, bool q8act);
#if defined(__x86_64__)
// One X row rounded to q8_0 (qx_quantize_row_avx2's bits) straight into the VNNI GEMMs' X panels
// (gemm_q8_xpanel.h; gemm_q8_xquant.cpp): row i of a panel of mr rows (mr even) at out, `tail`
// dwords a row after each block's quads (2: Q8XTail::PerBlock, 4: PerHalf), correction factor off.
// AVX-512 only. Used by Q8XPanels::pack while qx_pack_fused() (on at start; set_qx_pack_fused(false):
// the row rounding, then the scalar packing; same bits).
void qx_pack_row_avx512(const float* x, int64_t K, int mr, int i, int tail, int off, int32_t* out);
void set_qx_pack_fused(bool on);
bool qx_pack_fused();
// A whole 4-row panel's rows at once (rows x, x + ldx, x + 2 ldx, x + 3 ldx): each row's blocks
// rounded as qx_pack_row_avx512 rounds them, the quads of the 4 rows interleaved in registers and
// stored with full stores (2 a block) instead of 8 masked ones; the same dwords. Used by
// Q8XPanels<4>::pack for its whole panels while qx_pack_fused() and qx_pack_panel4() (on at start;
// set_qx_pack_panel4(false): row by row).
void qx_pack_panel4_avx512(const float* x, int64_t ldx, int64_t K, int tail, int off, int32_t* out);
void set_qx_pack_panel4(bool on);
bool qx_pack_panel4();
#endif
#if defined(__x86_64__)
// AVX2 twin of dequantize_row for those formats (bit-identical; the f32 path's dequantiser).
void dequantize_row_ext_avx2(DType t, const void* src, float* dst, int64_t K);
#endif
#if defined(__x86_64__)
void gemm_avx2(const Args& a);
void gemm_q8act_avx2(const Args& a);
void qx_quantize_row_avx2(const float* x, int64_t K, int8_t* qs, float* dxe, int32_t* neg, int off);
// Requires cpu_features().avx512vnni.
void gemm_q8act_avx512vnni(const Args& a);
// Q8_0/Q4_0 weights at M > kSmallM in QuantActivations::Q8 mode (gemm_q8_vnni.cpp): X quantised
// to q8_0 once, packed cache-blocked GEMM on vpdpbusd. Requires cpu_features().avx512vnni.
void gemm_q8_packed_vnni(const Args& a);
// bf16_dot: use AVX512-BF16 vdpbf16ps for BF16 weights with M > kSmallM (X rounded to bf16).
void gemm_avx512(const Args& a, bool bf16_dot);
// The vdpbf16ps packed GEMM (M > kSmallM) with its previous blocking (k blocks of 256 pairs, W
// blocks of 512 rows) also at K <= 4096, where the default takes the whole of K in one block (Y
// written once) and narrower W blocks. Same products, other summation blocks. For tests (both
// must pass) and interleaved A/B benchmarks; process-wide, default off.
void set_bf16_gemm_legacy_blocking(bool legacy);
bool bf16_gemm_legacy_blocking();
// gemm() on a row-major BF16 W with K in several k blocks (no bias, K even): W read in place by
// broadcast, X packed transposed (gemm_avx512.cpp); false: W packed a block at a time. Same bits.
void set_bf16_gemm_wbcast(bool on);
bool bf16_gemm_wbcast();
// Whether the vdpbf16ps packed GEMM on a row-major BF16 W (gemm() / gemm_huge_pages at M > kSmallM
// on AVX512-BF16, bf16_panels_usable()) takes that driver for this K and bias: the switch on, no
// bias, K even and K in several k blocks (K > 4096: more than KCP_DEEP = 2048 pairs, or the legacy
// blocking). gemm_avx512.cpp's dispatch and bench_kernels' wpack-prev rows both ask this.
bool bf16_gemm_wbcast_applies(int64_t K, bool has_bias);
// The vdpbf16ps packed GEMM's (gemm() and the panels) split of the weight panels between threads
// uses a chunk that evens out the threads' shares: panels a chunk for npn weight panels over nth
// threads, chosen in [c0 / 2, 1.5 c0]
// (c0: split_packed_gemm's) so that the busiest thread's share, ceil(chunks / nth) * chunk, is the
// smallest (the largest chunk on a tie).
int64_t balanced_panel_chunk(int64_t npn, int nth, int64_t c0);
// kernels.h bf16_pack_panels / gemm_bf16_panels (a.W: the panels; wtype BF16). AVX512-BF16 only.
void bf16_pack_panels_avx512(const void* W, int64_t N, int64_t K, void* out, ThreadPool* pool);
void gemm_bf16_panels_avx512(const Args& a);
// kernels.h gemm_bf16_panels_multi: the outputs share X, ldx, M, K and pool (arguments checked).
void gemm_bf16_panels_multi_avx512(const Args* outs, int n);
// The same on row-major BF16 W (a.W, a.row_bytes): bit for bit gemm_packed<BF16, vdpbf16ps> (what
// gemm() runs at M > kSmallMMax on AVX512-BF16 without AMX) for each output, X packed once and one
// split over every output's panels when K fits one k block; else one gemm_packed each.
void gemm_bf16_rows_multi_avx512(const Args* outs, int n);
// gemv_huge_pages_multi on AVX-512 for BF16 / F16 with the single-stream GEMV on: one guided
// dispatch over all outputs' rows (arguments checked by the caller).
void gemv_stream_multi(const float* x, DType wtype, const GemvOutput* outs, int n_outs, int64_t K, ThreadPool* pool);
// AMX-BF16 tiles for BF16 weights; returns false when it does not handle the call.
bool gemm_amx(const Args& a);
#endif

}  // namespace gemm_detail
}  // namespace emollm
