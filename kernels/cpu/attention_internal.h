// Internal entry points of the CPU attention (attention.cpp dispatches; tests call them directly).
// Not part of the public API.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels.h"

namespace emollm {
namespace attention_detail {

// Whether attention_bidir_bf16 takes this call: p.bf16_products, bidirectional, contiguous f32
// K/V, at least kBidirBf16MinRows queries, AVX512-BF16 present and isa_active() >= Avx512.
constexpr int64_t kBidirBf16MinRows = 16;
bool bidir_bf16_applies(const AttentionParams& p);

// Decode attention (one query per call, f32 KV, contiguous or paged): every call's visible kv
// range is cut into pieces of at most kDecodePieceMax tokens (a multiple of 16, so a piece's
// 16-token sub-blocks never cross a page), the piece count rounded up to a multiple of the
// thread count; each piece reads its tokens' K and V rows once for all query heads (all kv heads
// of a token row are contiguous: one stream) and keeps its own (max, sum, P V) per head; the
// thread that finishes an item's last piece merges the pieces exactly (log-sum-exp). All pieces
// of a batch run in one thread-pool dispatch. set_decode_split(false) runs the previous tiled path
// (the tests' and bench_kernels' comparison; it still runs calls of more than kDecodeMaxHeads heads).
constexpr int64_t kDecodePieceMax = 128;
// The piece length cap in use (kDecodePieceMax unless set; a multiple of 16, >= 16): for
// benchmarks of the split (attn_decode_threads). Other caps change how a call is cut, so its
// outputs' rounding (within the 1e-5 of attention_decode_split_matches_ref), never which thread
// computes what.
int64_t decode_piece_max();
void set_decode_piece_max(int64_t tokens);
constexpr int64_t kDecodeMaxHeads = 256;  // more query heads: the tiled path (scratch bound)
bool decode_split_enabled();
void set_decode_split(bool on);
// On AVX-512 the decode driver reads K/V rows in place (f32, or f16 / bf16 widened by the kernels'
// loads; narrow rows swept by one load a line first, the access pattern of a copy without its
// stores); set_decode_inplace(false) (tests, bench_kernels' A/B rows) packs narrow rows
// (and widens half rows) into per-thread scratch first as before. The kernels' arithmetic is the
// same either way: outputs are bit for bit equal.
bool decode_inplace_enabled();
void set_decode_inplace(bool on);
// P V on AVX-512 for one or two query rows per kv head (MHA decode: 7B's 32 / 32 heads) with a
// head_dim of 65-128: the whole row (5-8 chunks of 16) in one register tile, one pass over the
// block's V rows with 8-16 independent FMA chains, instead of two passes of 4 chunks (4-8 chains:
// each token's FMAs waited on the previous token's). set_decode_pv_wide(false) (on at start, no
// environment variable): the two passes. Every output element sums its tokens in the same
// order either way: outputs are bit for bit equal.
bool decode_pv_wide();
void set_decode_pv_wide(bool on);
// Q K^T on AVX-512 for one or two query rows per kv head with a head_dim of 65-128 (MHA decode,
// wide token rows read in place): a full 16-token sub-block of one kv head through qk16 (the 16 key
// rows addressed as 4 bases plus row strides, every chunk unrolled) instead of the generic qk's 16
// row pointers that did not fit in the registers. Same FMAs in the same order and the same
// reduction tree: scores bit for bit equal. set_decode_qk_wide(false) (on at start, no
// environment variable): the generic kernel.
bool decode_qk_wide();
void set_decode_qk_wide(bool on);
// Whether a decode call's full sub-blocks take qk16 (the driver asks this too): AVX-512 with
// in-place rows (decode_inplace_enabled), wide token rows (n_kv_heads * head_dim > 256 elements),
// one or two query heads per kv head, 65 <= head_dim <= 128 and decode_qk_wide().
bool decode_qk16_applies(const AttentionParams& p);
// P V on AVX-512 for one query row per kv head (MHA decode, 7B's 32 x 128) with a head_dim of
// 65-128 and wide token rows read in place: two adjacent kv heads in one register tile (their
// slices lie side by side in each V row), 10-16 independent FMA chains and half the calls, instead
// of one head a call. Every output element sums its tokens in the same order: bit for bit equal.
// set_decode_pv_pairs(false) (on at start, no environment variable): one head a call.
bool decode_pv_pairs();
void set_decode_pv_pairs(bool on);
// Whether a decode call's P V takes two kv heads a call (the driver asks this too): one query head
// per kv head, at least two kv heads, decode_qk16_applies(p) and decode_pv_pairs().
bool decode_pv2_applies(const AttentionParams& p);
// Those P V pairs walked a 16-float chunk at a time: each (kv head, chunk) accumulator times alpha,
// then over the sub-block's tokens in order (the same operations in the same order for every
// output element: bit for bit equal), so V is read one 64-byte line of the pair's slice across the
// 16 token rows at a time, as qk16 reads K, instead of each token row's 1 KiB pair slice in turn
// (16 rows side by side 1 KiB each: the hardware prefetchers' worst order of the two). Default per
// CPU (decode_tuning.h attn_pv_chunks); set_decode_pv_chunks for tests and A/B tools.
bool decode_pv_chunks();
void set_decode_pv_chunks(bool on);
// Those 7B sub-blocks (qk16 with one query head per kv head; pv2 by chunks) read 8 token rows at a time
// (rows 0-7 of the kv head's slice, every 64-byte line, then rows 8-15: at most 8 lines of one L1 set in flight,
// the 16 rows lying a multiple of 4 KiB apart) with the next full sub-block's same slice prefetched into L2
// (prefetcht2) one line a load, in decode_pipeline_next's order (the next K sub-block, a block's first V after its
// last K, the next block's first K after its last V). Each key's and each output element's FMAs in the same order:
// bit for bit equal. Default per CPU and cache type (decode_tuning.h attn_wide_pf: which caches take it, DecodeWide);
// set_decode_wide_pf (on: All) / set_decode_wide_pf_mode for tests and A/B tools.
// The caches that take it: none; f16 / bf16; those and f32 where decode_wide_lin's shape holds (rows back to back,
// head_dim 113-128: other f32 shapes keep the 16 rows, session 30's f32 halves measured 0.95-0.96x at the 7B shape).
enum class DecodeWide { Off = 0, Half = 1, All = 2 };
DecodeWide decode_wide_pf_mode();
void set_decode_wide_pf_mode(DecodeWide m);
bool decode_wide_pf();  // mode != Off
void set_decode_wide_pf(bool on);  // All / Off
// Those 7B sub-blocks (one query head per kv head, an even kv head count, P V in pairs) cut in two of 8 token
// rows: every kv head's Q K^T of rows 0-7 (each score through qk16's accumulator and reduction tree), then of
// rows 8-15, and P V the same (its accumulators stored between the halves): 8 row streams at a time instead of
// 16. With decode_wide_pf the next 8 rows are prefetched into L2 during each half. The same operations in the
// same order: bit for bit equal. Default per CPU and cache type (decode_tuning.h attn_wide8, DecodeWide);
// set_decode_wide8 (on: All) / set_decode_wide8_mode for tests and A/B tools.
DecodeWide decode_wide8_mode();
void set_decode_wide8_mode(DecodeWide m);
bool decode_wide8();  // mode != Off
void set_decode_wide8(bool on);  // All / Off
// Whether a decode call takes them (tests): decode_wide_pf: decode_qk16_applies with one query head per kv head
// and its mode taking the call's cache type (qk16's scores; P V's when it runs in pairs by chunks); decode_wide8:
// decode_pv2_applies with an even kv head count and its mode taking the cache type.
bool decode_wide_pf_applies(const AttentionParams& p);
bool decode_wide8_applies(const AttentionParams& p);
// decode_wide_pf's prefetch on an f32 cache whose token rows lie back to back (ldk = ldv = n_kv_heads * head_dim,
// head_dim 113-128), on 16-row sub-blocks and on decode_wide8's halves: 0 its lines in the loads' order (the next
// rows' same slice, 16 KiB apart, every line); N = 1 / 2 / 4 / 8 / 16 / 32: in address order instead (kv head g's
// Q K^T call the next 16 / 8 rows' g-th 8 / 4 KiB, P V pair g0's call the g0-th; each call's lines front to back),
// every N-th line (the hardware's stream prefetcher the rest). Default per CPU (decode_tuning.h attn_wide_lin: Zen 4
// 8, with decode_wide_pf / decode_wide8 DecodeWide::All). Prefetches only: the same bits (session 32).
int decode_wide_lin();
void set_decode_wide_lin(int every);  // 0, 1, 2, 4, 8, 16 or 32; another value throws InvalidArgument (unchanged)
// Whether a decode call takes it (tests): decode_wide_pf_applies, an f32 cache, rows back to back, 8 chunks of 16
// (head_dim 113-128) and decode_wide_lin() != 0.
bool decode_wide_lin_applies(const AttentionParams& p);
// Decode on AVX-512 with narrow token rows swept in place and several query heads per kv head
// (the 1.1B's 32 / 4 heads x 64): the next 16-token sub-block's lines prefetched a few at a time
// from inside this sub-block's Q K^T and P V loops (default), instead of each sub-block's lines
// read in one sweep right before its compute (reads and FMAs one after the other).
// set_decode_pipeline(false) (tests, A/B tools): the sweep before each sub-block. Prefetches
// only: outputs are bit for bit equal.
bool decode_pipeline();
void set_decode_pipeline(bool on);
// Where the pipelined prefetch puts the next sub-block's lines: L2 (prefetcht2; on) or L1
// (prefetcht0; off). Default per CPU (decode_tuning.h attn_pipeline_l2: L2 on double-pumped AVX-512,
// L1 elsewhere). Prefetches only: outputs are bit for bit equal.
bool decode_pipeline_l2();
void set_decode_pipeline_l2(bool on);
// Whether a decode call's sub-blocks take it (the driver asks this too): AVX-512 with in-place rows
// (decode_inplace_enabled), narrow token rows (n_kv_heads * head_dim <= 256 elements: swept), at
// least 4 query heads per kv head (the transposed Q K^T), not on bf16 products, and decode_pipeline().
bool decode_pipeline_applies(const AttentionParams& p);
// Prototype (benchmarks and tests only; nothing stores K so yet): K held in 16-token transposed
// tiles. The 16 tokens from a multiple of 16, t0, occupy the 16 rows t0 .. t0 + 15 would (16 ldk
// elements from t0's row, in its page), element (kv head g, dim d, token t0 + t) at
// g * head_dim * 16 + d * 16 + t; a last partial tile is whole storage (lanes past the tokens
// unread by the results). The decode driver's Q K^T then loads dim d of 16 keys at once instead of
// transposing 16x16 blocks in registers: the same FMAs in the same order (the same bits). On
// (set_decode_k_tiles(true)) every call must be one decode_k_tiles_applies takes (else attention
// throws): AVX-512 in place, one query, narrow unpadded token rows (ldk = n_kv_heads * head_dim
// <= 256 elements), >= 4 query heads per kv head, not on bf16 products, the decode split on, a
// paged cache's blocks a multiple of 16 tokens. V and the other paths are untouched.
bool decode_k_tiles();
void set_decode_k_tiles(bool on);
bool decode_k_tiles_applies(const AttentionParams& p);
// The decode driver's piece on narrow token rows swept in place with >= 4 query heads per kv head
// (the 1.1B's GQA 8, AVX-512; K rows or K tiles), without the per-kv-head and per-head calls
// through the kernel table: one call a sub-block for all kv heads' Q K^T (16 row pointers from a
// base and a stride), one for their P V, two a block for the softmax's row maxima and exp sums
// (the scalar max / exp / sum updates stay in the driver), q read in place where head_dim is a
// multiple of 16 (no padded copy a piece), and run_decode's partials in reused scratch. The same
// kernels on the same operands in the same order: outputs bit for bit equal. P V runs a whole 64-token
// block a kv head (acc in registers across its sub-blocks; a sub-block at a time where the block's V
// rows cross a page), and the pipelined prefetch (decode_pipeline) follows it: each K sub-block's
// Q K^T prefetches the block's V sub-block of the same index (in a piece's first block after the next
// K sub-block), each block's P V the next block's K sub-blocks. Default per CPU (decode_tuning.h
// attn_decode_lean: on for Zen 4); set_decode_lean (tests, A/B tools: decode_switch_ab attn_lean,
// attn_decode_threads' "1t lean").
bool decode_lean();
void set_decode_lean(bool on);
// The sub-block prefetched during [s0, s0 + 16) of K (is_v false) or V of block [b0, b1) in a
// piece ending at j1: the next 16 rows of the same tensor, or after a block's last K rows its first
// V rows, or after its last V rows the next block's first K rows; ns = 0: none (the piece's end).
struct DecodeSubBlock {
  int64_t s = 0;  // first kv token
  int ns = 0;     // tokens (<= 16)
  bool v = false;
};
DecodeSubBlock decode_pipeline_next(int64_t j1, int64_t b0, int64_t b1, int64_t s0, bool is_v);
// The 64-byte lines (addresses rounded down) the prefetch cursor visits, in order, walking ns rows
// row_bytes apart (span_bytes each, from `row`) per_step lines a step: every line of each row's
// span once (for tests).
std::vector<uintptr_t> decode_pipeline_lines(const void* row, int64_t row_bytes, int64_t span_bytes, int ns,
                                             int per_step);
// How one decode call at 1 thread reads its K / V sub-blocks, in order (tests): each sub-block's
// first row (an address in the cache) and row count, swept right before its compute or prefetched
// from inside the previous sub-block's (swept false). Empty when the call does not take the decode
// driver.
struct DecodeRead {
  uintptr_t row = 0;
  int ns = 0;
  bool swept = false;
  bool operator==(const DecodeRead& o) const { return row == o.row && ns == o.ns && swept == o.swept; }
};
std::vector<DecodeRead> decode_reads(const float* q, const float* k, const float* v, float* out,
                                     const AttentionParams& p);
// The decode driver's pieces and the tiled driver's units and split-KV merges are taken from a
// shared counter inside one pool->run job (each thread, the caller included, takes the next item
// until none is left; a worker that has not claimed its index when the caller is done costs
// nothing, one preempted holding a piece costs the call at most that piece). Which thread runs a
// piece or unit never changes its arithmetic: outputs are bit for bit equal at a given thread
// count. (ThreadPool::run_dynamic's claimed work instead, opt-in EMOLLM_ATTN_CLAIMED in session
// 18: 1.04x the kernel alone, 0.975 / 0.966 in the quiet 7B decode: removed in session 19.)

// Work done by the attention drivers in this process (tests: every piece / unit once, the merges
// once per call; benchmarks: the split between threads). by_thread[i]: decode pieces plus tiled
// units run by pool thread index i (indices >= kWorkThreads counted in the last slot).
// decode_lean_pieces: the decode pieces that ran the lean narrow piece (decode_lean; also counted in
// decode_pieces; attention_planned_work leaves it 0). causal_skip_blocks: the tile groups' causal
// diagonal blocks run without their fully masked parts (prefill_causal_skip; planned: 0).
// decode_wide_pieces / decode_wide_lin_pieces: the decode pieces run with the wide forms chosen (their full sub-blocks take them)
// (decode_wide_pf / decode_wide8), each in one of the two: the second with decode_wide_lin's order (also counted
// in decode_pieces; planned: 0).
constexpr int kWorkThreads = 8;
struct AttentionWork {
  uint64_t decode_pieces = 0, decode_merges = 0, tiled_units = 0, tiled_merges = 0, decode_lean_pieces = 0;
  uint64_t causal_skip_blocks = 0, decode_wide_pieces = 0, decode_wide_lin_pieces = 0;
  uint64_t by_thread[kWorkThreads] = {};
};
AttentionWork attention_work();
// What one attention() call of p on a pool of nth threads plans (its pieces and merges, or its
// units and split-KV merges; by_thread empty): from the call's plan alone, never from the
// scheduling, so tests can hold the counts above against it. All zero off x86-64, below AVX2 and
// for calls the bf16 bidirectional kernel takes.
AttentionWork attention_planned_work(const AttentionParams& p, int nth);
// Decode on a bf16 cache with bf16 products (AVX512-BF16, opt-in), for calls whose kv heads serve
// >= 4 query heads each (fewer: the exact path): q rounded to bf16 (nearest even) for QK
// (vdpbf16ps over head-dim pairs), the softmax weights rounded to bf16 per block and each head normalised by the
// sum of its rounded weights, PV on vdpbf16ps over token pairs; sums in f32. Taken when the call
// asks (AttentionParams::bf16_products; the LLaMA context does not set it for decode yet) and the
// mode allows: EMOLLM_DECODE_ATTN_BF16DP unset = WhenAsked, "0" / "off" = Never, anything else =
// Always (every bf16-cache decode call, for A/B runs); needs the in-place kernels (AVX-512,
// decode_inplace_enabled()). Error: each score carries q's rounding (relative 2^-9 per product),
// each weight one more (relative 2^-9); the bound the test checks is stated there
// (attention_decode_bf16dp_within_bound).
enum class DecodeBf16Dp { Never = 0, WhenAsked = 1, Always = 2 };
DecodeBf16Dp decode_bf16dp_mode();
void set_decode_bf16dp_mode(DecodeBf16Dp m);
bool decode_bf16dp_applies(const AttentionParams& p);

// Causal prefill (attention_prefill.cpp): calls the tiled driver would run with many queries per
// kv head (MHA / GQA prefill chunks, f32 cache, contiguous or paged) on AVX-512.
// set_prefill_fast(false) (on at start, no environment variable): the tiled driver (A/B).
bool prefill_fast();
void set_prefill_fast(bool on);
// The tile groups' causal diagonal blocks (run_tile_group; on at start, no environment variable):
// Q K^T only over the 16-key columns some row of a 6-row group sees, P V only over the keys some
// row of a 4-row group sees. The same bits (attention.cpp run_tile_group says why; the test
// attention_prefill_causal_skip_same_bits); off: every block whole (A/B, the reference).
bool prefill_causal_skip();
void set_prefill_causal_skip(bool on);

// Bidirectional attention on vdpbf16ps (attention_bidir_bf16.cpp): q, k, v rounded to bf16
// (round to nearest even), S = Q K^T summed in f32, softmax in f32, the weights P rounded to bf16
// and normalised by the sum of the rounded weights, O = P V summed in f32. The arguments must be
// valid (attention() validates) and bidir_bf16_applies(p) true; scale is the resolved scale, group
// = n_heads / n_kv_heads.
void attention_bidir_bf16(const float* q, const float* k, const float* v, float* out, const AttentionParams& p,
                          float scale, int64_t group, ThreadPool* pool);

}  // namespace attention_detail
}  // namespace emollm
