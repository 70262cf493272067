// Scaled dot-product attention over a KV cache (see kernels.h, AttentionParams).
//
// ref::attention: scalar reference. One query row at a time: scores for the visible keys in a
// row buffer (O(n_kv) doubles), softmax with the max subtracted, weighted sum of V; double
// accumulation throughout so it is the most accurate path, not just the simplest.
//
// attention (AVX-512 / AVX2): flash-attention style tiling with an online softmax.
//   Work unit = (kv heads [g0, g0+ng), tile of queries, chunk of each group's query heads
//   [, kv split]); at most kMaxRows rows (query x head). The rows of one kv head read each K/V
//   block once for all of them (GQA/MQA). For every block of kBk kv tokens:
//     S[r, j]   = scale * q_r . k_j                        (qk / qk_t kernels)
//     m_new     = max(m_r, max_j S[r, j])                  (per row, masked causally)
//     P[r, j]   = exp(S[r, j] - m_new),  alpha = exp(m_r - m_new)
//     l_r       = alpha * l_r + sum_j P[r, j]
//     acc[r, :] = alpha * acc[r, :] + sum_j P[r, j] v_j    (pv kernel, rescale fused)
//   and at the end out_r = acc_r / l_r. Scratch per thread is O(kMaxRows * (kBk + head_dim)),
//   allocated once per call. Nothing of size n_q x n_kv exists.
//   Prefill: one kv head per unit, up to 64 rows; K block transposed in registers (AVX-512) so
//   S is a broadcast-FMA product without horizontal sums; V block copied contiguous. On AVX-512
//   up to 8 consecutive query tiles of a kv head form one unit (run_tile_group: each block's K
//   transposed and V copied once for all of them; the same kernels per tile, the same bits).
//   Decode / short chunks: many kv heads per unit, walked in 16-token sub-blocks across heads so
//   the token-major cache is read a row at a time (see run_unit).
//   Split-KV: when there are too few units to keep every thread busy (decode), each unit's kv
//   range is cut into pieces whose partial (m, l, acc) are merged afterwards.
//
// Decode (one query per call, n_q == 1): its own driver (run_decode, see attention_internal.h):
// pieces of <= 128 kv tokens over all heads (online softmax over 64-token blocks inside a piece,
// K and V of a block read close together), with several query heads per kv head the K sub-block
// transposed in registers (qk_decode: no horizontal sums), narrow token rows copied to contiguous
// scratch per 16 tokens; the pieces merged by whichever thread finishes an item's last one, so a
// layer's decode attention is one pool dispatch instead of a dispatch for the units and one for
// the merges (set_decode_split(false) keeps decode in the tiled driver: tests, A/B rows). On AVX-512 the
// rows are read in place (narrow ones swept a sub-block at a time, or with several query heads per kv
// head each sub-block's lines prefetched during the previous one's compute; with one or two query heads per kv head, the 7B's MHA, a full sub-block's Q K^T goes
// through qk16, the same arithmetic with its 16 key rows addressed from registers); a bf16 cache
// may opt into bf16 products (vdpbf16ps for QK and PV: q and P rounded,
// DecodeBf16Dp in attention_internal.h). Per-CPU defaults (decode_tuning.h; on for Zen 4) change
// how the same kernels are called or read, never the bits:
// - the lean narrow piece (decode_tuning attn_decode_lean, attention_internal.h decode_lean;
//   run_decode_piece_lean): for narrow rows swept in place with >= 4 query heads per kv head (the
//   1.1B's GQA 8), one kernel call a 16-token sub-block for all kv heads' Q K^T (16 row pointers
//   from a base and a stride) instead of one a kv head through the kernel table, two a block for
//   the softmax's row maxima and exp sums, P V a whole 64-token block a kv head (its accumulators
//   in registers across the sub-blocks; a sub-block at a time where the block's V rows cross a
//   page) with the pipelined prefetch rescheduled to fit (each K sub-block's Q K^T prefetches the
//   block's V sub-block of the same index, each block's P V the next block's K), q read in place
//   where head_dim is a multiple of 16, the pieces merged with a vector merge (merge_decode_lean:
//   each product and sum rounded as the scalar merge's) and run_decode's partials in reused scratch;
// - the 7B's P V pairs by chunks (decode_tuning attn_pv_chunks, decode_pv_chunks): pv2 walks a
//   16-float chunk of the pair's V slice across the sub-block's 16 token rows at a time (V read in
//   the order qk16 reads K) instead of each token row's 1 KiB pair slice in turn.
// - the 7B's wide-row sub-blocks (decode_tuning attn_wide_pf / attn_wide8, DecodeWide::All; decode_wide_pf,
//   decode_wide8): each 16-row sub-block as two of 8 rows (qk8: qk16's accumulators and reduction lanes for 8 keys;
//   pv2 by chunks on 8 tokens) with the next 8 rows prefetched into L2, on f16 / bf16 caches one line a load (session
//   30), on f32 caches (session 32) only where their rows lie back to back with head_dim 113-128 (wide_lin_shape),
//   their prefetch there in address order, every 8th line (attn_wide_lin, decode_wide_lin: each call the next 8
//   rows' g-th 4 KiB, the hardware's streamer the rest); other f32 shapes keep the 16 rows.
//
// Bidirectional calls that allow bf16 products (AttentionParams::bf16_products: vision towers with
// bf16 weights) with at least 16 queries run on AVX512-BF16 in attention_bidir_bf16.cpp instead.
//
// Vector code uses GCC target attributes (no per-file flags); dispatch on isa_active().
#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "../../base/arena.h"
#include "../../base/error.h"
#include "../../base/thread_pool.h"
#include "attention_internal.h"
#include "decode_tuning.h"
#include "half_rows.h"
#include "kernels.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized on their own _mm512_undefined_*()
// (GCC bug 105593, fixed in 13); silence it for this translation unit's intrinsics only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include "gemm_transpose_avx512.h"
#endif

namespace emollm {

namespace {

constexpr int kBk = 64;       // kv tokens per block (multiple of 16)
constexpr int kMaxRows = 64;  // rows (query x head) per work unit
constexpr int64_t kPrefillTilesMax = 8;  // query tiles per prefill tile group (run_tile_group)

struct Resolved {
  int64_t group;  // query heads per kv head
  float scale;
};

Resolved validate(const float* q, const float* k, const float* v, const float* out, const AttentionParams& p) {
  const bool paged = p.kv_block_size > 0;
  EMOLLM_CHECK_ARG(q && out && (paged ? p.k_blocks && p.v_blocks : k && v), "attention: null pointer");
  EMOLLM_CHECK_ARG(p.kv_block_size >= 0 && p.kv_block_size % 16 == 0,
                   "attention: kv_block_size must be 0 (contiguous) or a positive multiple of 16");
  EMOLLM_CHECK_ARG(p.n_q > 0 && p.n_kv > 0, "attention: n_q and n_kv must be positive");
  EMOLLM_CHECK_ARG(p.n_heads > 0 && p.n_kv_heads > 0 && p.head_dim > 0,
                   "attention: n_heads, n_kv_heads and head_dim must be positive");
  EMOLLM_CHECK_ARG(p.n_heads % p.n_kv_heads == 0, "attention: n_heads must be a multiple of n_kv_heads");
  EMOLLM_CHECK_ARG(p.head_dim <= (int64_t(1) << 20) && p.n_heads <= (int64_t(1) << 20),
                   "attention: head_dim / n_heads out of range");
  const int64_t qw = p.n_heads * p.head_dim, kw = p.n_kv_heads * p.head_dim;
  EMOLLM_CHECK_ARG(p.ldq >= qw, "attention: ldq must be >= n_heads * head_dim");
  EMOLLM_CHECK_ARG(p.ldo >= qw, "attention: ldo must be >= n_heads * head_dim");
  EMOLLM_CHECK_ARG(p.ldk >= kw, "attention: ldk must be >= n_kv_heads * head_dim");
  EMOLLM_CHECK_ARG(p.ldv >= kw, "attention: ldv must be >= n_kv_heads * head_dim");
  EMOLLM_CHECK_ARG(p.q_pos0 >= 0, "attention: q_pos0 must be >= 0");
  EMOLLM_CHECK_ARG(!p.causal || p.n_kv >= p.q_pos0 + p.n_q,
                   "attention: causal attention needs n_kv >= q_pos0 + n_q");
  EMOLLM_CHECK_ARG(std::isfinite(p.scale), "attention: scale must be finite");
  if (p.kv_dtype != DType::F32 && p.kv_dtype != DType::F16 && p.kv_dtype != DType::BF16)
    throw Error(ErrorCode::Unsupported, std::string("attention: KV type ") + dtype_name(p.kv_dtype) +
                                            " is not supported (f32, f16, bf16)");
  // After the shape checks: decode_k_tiles_applies divides by n_kv_heads and multiplies sizes.
  EMOLLM_CHECK_ARG(!attention_detail::decode_k_tiles() || attention_detail::decode_k_tiles_applies(p),
                   "attention: decode_k_tiles (K in 16-token tiles) on a call the prototype does not take");
  Resolved r;
  r.group = p.n_heads / p.n_kv_heads;
  r.scale = p.scale != 0.0f ? p.scale : float(1.0 / std::sqrt(double(p.head_dim)));
  return r;
}

// Bytes of one K/V element: 4 (f32) or 2 (f16 / bf16 cache).
inline size_t kv_elem_bytes(const AttentionParams& p) { return p.kv_dtype == DType::F32 ? 4 : 2; }

// `elems` K/V elements past `row` (f32 or half elements per p.kv_dtype; a half row's pointer is
// typed float* only to travel through the f32 signatures, and is reinterpreted where it is read).
inline const float* kv_at(const float* row, int64_t elems, const AttentionParams& p) {
  return reinterpret_cast<const float*>(reinterpret_cast<const char*>(row) + size_t(elems) * kv_elem_bytes(p));
}

// Row of kv token j: in the contiguous cache `base`, or through the block table of a paged one
// (ld in elements of p.kv_dtype).
inline const float* kv_row(const float* base, const float* const* blocks, const AttentionParams& p, int64_t j,
                           int64_t ld) {
  if (p.kv_block_size == 0) return kv_at(base, j * ld, p);
  return kv_at(blocks[j / p.kv_block_size], (j % p.kv_block_size) * ld, p);
}

// Element i of a K/V row of type t (scalar reference).
inline double kv_value(DType t, const float* row, int64_t i) {
  if (t == DType::F32) return double(row[i]);
  const uint16_t h = reinterpret_cast<const uint16_t*>(row)[i];
  return double(t == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h));
}

// Number of kv tokens query i sees.
inline int64_t kv_visible(const AttentionParams& p, int64_t i) {
  return p.causal ? p.q_pos0 + i + 1 : p.n_kv;
}

}  // namespace

// ============================================================================ scalar reference
namespace ref {
void attention(const float* q, const float* k, const float* v, float* out, const AttentionParams& p) {
  attention(q, k, v, out, p, static_cast<float*>(nullptr));
}
void attention(const float* q, const float* k, const float* v, float* out, const AttentionParams& p, float* lse) {
  const Resolved rs = validate(q, k, v, out, p);
  EMOLLM_CHECK_ARG(!attention_detail::decode_k_tiles(), "attention: the reference reads K as rows, not tiles");
  const int64_t D = p.head_dim;
  std::vector<double> s(static_cast<size_t>(p.n_kv));
  std::vector<double> o(static_cast<size_t>(D));
  for (int64_t i = 0; i < p.n_q; ++i) {
    const int64_t nvis = kv_visible(p, i);
    assert(nvis >= 1 && nvis <= p.n_kv);  // causal: the query always sees itself
    for (int64_t h = 0; h < p.n_heads; ++h) {
      const int64_t g = h / rs.group;
      const float* qr = q + i * p.ldq + h * D;
      double mx = -INFINITY;
      for (int64_t j = 0; j < nvis; ++j) {
        const float* kr = kv_at(kv_row(k, p.k_blocks, p, j, p.ldk), g * D, p);
        double d = 0;
        for (int64_t t = 0; t < D; ++t) d += double(qr[t]) * kv_value(p.kv_dtype, kr, t);
        s[size_t(j)] = d * double(rs.scale);
        mx = std::max(mx, s[size_t(j)]);
      }
      double sum = 0;
      std::fill(o.begin(), o.end(), 0.0);
      for (int64_t j = 0; j < nvis; ++j) {
        const double e = std::exp(s[size_t(j)] - mx);
        sum += e;
        const float* vr = kv_at(kv_row(v, p.v_blocks, p, j, p.ldv), g * D, p);
        for (int64_t t = 0; t < D; ++t) o[size_t(t)] += e * kv_value(p.kv_dtype, vr, t);
      }
      float* orow = out + i * p.ldo + h * D;
      for (int64_t t = 0; t < D; ++t) orow[t] = float(o[size_t(t)] / sum);
      if (lse) lse[i * p.n_heads + h] = float(mx + std::log(sum));
    }
  }
}
}  // namespace ref

namespace attention_detail {
namespace {
// On at start, no environment variable (default since 2026-12-05 01:26); off: decode in the tiled
// driver, for the tests and bench_kernels' interleaved prev row.
std::atomic<bool> decode_split_on{true};
}  // namespace
bool decode_split_enabled() { return decode_split_on.load(std::memory_order_relaxed); }
void set_decode_split(bool on) { decode_split_on.store(on, std::memory_order_relaxed); }
namespace {
// The four switches below are on at start, without an environment variable (their
// EMOLLM_ATTN_PREFILL_FAST / EMOLLM_DECODE_ATTN_PV_WIDE / _QK_WIDE / _PV_PAIRS went in session 22:
// defaults since 2026-12-05, same bits); off: the previous kernels, which stay because the
// generic ones run at head_dim <= 64 and the tests and A/B tools take them as the same-bits
// reference. Prefill in the tiled driver when off.
std::atomic<bool> prefill_fast_on{true};
}  // namespace
bool prefill_fast() { return prefill_fast_on.load(std::memory_order_relaxed); }
void set_prefill_fast(bool on) { prefill_fast_on.store(on, std::memory_order_relaxed); }
namespace {
std::atomic<bool> prefill_causal_skip_on{true};
}  // namespace
bool prefill_causal_skip() { return prefill_causal_skip_on.load(std::memory_order_relaxed); }
void set_prefill_causal_skip(bool on) { prefill_causal_skip_on.store(on, std::memory_order_relaxed); }
namespace {
// On at start, no environment variable (default since 2026-12-05 09:44); off: rows packed /
// widened into scratch on AVX-512 too (what CPUs below AVX-512 run), for the bit-equality test
// and bench_kernels' interleaved packed rows.
std::atomic<bool> decode_inplace_on{true};
}  // namespace
bool decode_inplace_enabled() { return decode_inplace_on.load(std::memory_order_relaxed); }
void set_decode_inplace(bool on) { decode_inplace_on.store(on, std::memory_order_relaxed); }
namespace {
std::atomic<bool> decode_pv_wide_on{true}, decode_qk_wide_on{true}, decode_pv_pairs_on{true};
}  // namespace
bool decode_pv_wide() { return decode_pv_wide_on.load(std::memory_order_relaxed); }
void set_decode_pv_wide(bool on) { decode_pv_wide_on.store(on, std::memory_order_relaxed); }
bool decode_qk_wide() { return decode_qk_wide_on.load(std::memory_order_relaxed); }
void set_decode_qk_wide(bool on) { decode_qk_wide_on.store(on, std::memory_order_relaxed); }
bool decode_pv_pairs() { return decode_pv_pairs_on.load(std::memory_order_relaxed); }
void set_decode_pv_pairs(bool on) { decode_pv_pairs_on.store(on, std::memory_order_relaxed); }
namespace {
// On since session 22 (the 1.1B decode 1.036x at 1 thread, 1.044x at 2 in the model; cold alone
// 1.15-1.28x in session 23), no longer read from the environment. Off stays for the tests (the
// same-bits reference) and decode_switch_ab's attn_pipe.
std::atomic<bool> decode_pipeline_on{true};
}  // namespace
bool decode_pipeline() { return decode_pipeline_on.load(std::memory_order_relaxed); }
namespace {
std::atomic<bool> decode_k_tiles_on{false};  // the K tile prototype: off unless a benchmark or test sets it
}  // namespace
bool decode_k_tiles() { return decode_k_tiles_on.load(std::memory_order_relaxed); }
// The CPU's default at first use, then the setter's (decode_tuning.h attn_decode_lean; session 29).
using DecodeLean = gemm_detail::DecodeSetting<&gemm_detail::DecodeTuning::attn_decode_lean>;
bool decode_lean() { return DecodeLean::get(); }
void set_decode_lean(bool on) { DecodeLean::set(on); }
void set_decode_k_tiles(bool on) { decode_k_tiles_on.store(on, std::memory_order_relaxed); }
void set_decode_pipeline(bool on) { decode_pipeline_on.store(on, std::memory_order_relaxed); }
// The CPU's default at first use, then the setter's (decode_tuning.h attn_pv_chunks; session 29).
using DecodePvChunks = gemm_detail::DecodeSetting<&gemm_detail::DecodeTuning::attn_pv_chunks>;
bool decode_pv_chunks() { return DecodePvChunks::get(); }
void set_decode_pv_chunks(bool on) { DecodePvChunks::set(on); }
// The CPU's default at first use, then the setter's (decode_tuning.h attn_wide_pf; session 30).
using DecodeWidePf = gemm_detail::DecodeSetting<&gemm_detail::DecodeTuning::attn_wide_pf>;
DecodeWide decode_wide_pf_mode() { return DecodeWide(DecodeWidePf::get()); }
void set_decode_wide_pf_mode(DecodeWide m) { DecodeWidePf::set(int(m)); }
bool decode_wide_pf() { return decode_wide_pf_mode() != DecodeWide::Off; }
void set_decode_wide_pf(bool on) { set_decode_wide_pf_mode(on ? DecodeWide::All : DecodeWide::Off); }
// The CPU's default at first use, then the setter's (decode_tuning.h attn_wide8; session 30).
using DecodeWide8 = gemm_detail::DecodeSetting<&gemm_detail::DecodeTuning::attn_wide8>;
DecodeWide decode_wide8_mode() { return DecodeWide(DecodeWide8::get()); }
void set_decode_wide8_mode(DecodeWide m) { DecodeWide8::set(int(m)); }
bool decode_wide8() { return decode_wide8_mode() != DecodeWide::Off; }
void set_decode_wide8(bool on) { set_decode_wide8_mode(on ? DecodeWide::All : DecodeWide::Off); }
// The CPU's default at first use, then the setter's (decode_tuning.h attn_wide_lin; session 32).
using DecodeWideLin = gemm_detail::DecodeSetting<&gemm_detail::DecodeTuning::attn_wide_lin>;
int decode_wide_lin() { return DecodeWideLin::get(); }
void set_decode_wide_lin(int every) {
  EMOLLM_CHECK_ARG(every == 0 || (every > 0 && every <= 32 && (every & (every - 1)) == 0),
                   "attention: decode_wide_lin takes 0, 1, 2, 4, 8, 16 or 32");
  DecodeWideLin::set(every);
}
namespace {
// decode_wide_lin's shape: an f32 cache whose token rows lie back to back (ldk = ldv = n_kv_heads * head_dim) with
// 8 chunks of 16 (head_dim 113-128, Dp 128), the only one its kernels' forms take. The driver and
// decode_wide_lin_applies both ask this.
bool wide_lin_shape(const AttentionParams& p) {
  const int64_t span = p.n_kv_heads * p.head_dim;
  return p.kv_dtype == DType::F32 && p.ldk == span && p.ldv == span && (p.head_dim + 15) / 16 == 8;
}
// Whether mode m takes call p's cache (decode_wide_pf / decode_wide8): Half and All f16 / bf16; All f32 only on
// wide_lin_shape (session 32's measured form; elsewhere session 30's halves with a prefetch a line, 0.95-0.96x at
// the 7B shape and never measured on other f32 shapes: those keep the 16 rows).
bool wide_takes(DecodeWide m, const AttentionParams& p) {
  if (p.kv_dtype != DType::F32) return m != DecodeWide::Off;
  return m == DecodeWide::All && wide_lin_shape(p);
}
}  // namespace
// The CPU's default at first use, then the setter's (decode_tuning.h attn_pipeline_l2; session 26).
using DecodePipelineL2 = gemm_detail::DecodeSetting<&gemm_detail::DecodeTuning::attn_pipeline_l2>;
bool decode_pipeline_l2() { return DecodePipelineL2::get(); }
void set_decode_pipeline_l2(bool on) { DecodePipelineL2::set(on); }
namespace {
// AttentionWork's counters, one cache line per pool thread index (no sharing between the threads
// that count; relaxed adds: a handful a call).
struct alignas(64) WorkSlot {
  std::atomic<uint64_t> decode_pieces{0}, decode_merges{0}, tiled_units{0}, tiled_merges{0}, decode_lean_pieces{0};
  std::atomic<uint64_t> causal_skip_blocks{0}, decode_wide_pieces{0}, decode_wide_lin_pieces{0};
};
WorkSlot g_work[kWorkThreads];
// The calling thread's counters.
WorkSlot& work_slot() { return g_work[std::min(pool_thread_index(), kWorkThreads - 1)]; }
inline void count_work(std::atomic<uint64_t> WorkSlot::*c) { (work_slot().*c).fetch_add(1, std::memory_order_relaxed); }
}  // namespace
namespace {
std::atomic<int64_t> g_piece_max{kDecodePieceMax};
}  // namespace
int64_t decode_piece_max() { return g_piece_max.load(std::memory_order_relaxed); }
void set_decode_piece_max(int64_t tokens) {
  g_piece_max.store(std::max<int64_t>(16, tokens / 16 * 16), std::memory_order_relaxed);
}
AttentionWork attention_work() {
  AttentionWork w;
  for (int i = 0; i < kWorkThreads; ++i) {
    const WorkSlot& s = g_work[i];
    const uint64_t dp = s.decode_pieces.load(std::memory_order_relaxed), tu = s.tiled_units.load(std::memory_order_relaxed);
    w.decode_pieces += dp;
    w.tiled_units += tu;
    w.decode_merges += s.decode_merges.load(std::memory_order_relaxed);
    w.tiled_merges += s.tiled_merges.load(std::memory_order_relaxed);
    w.decode_lean_pieces += s.decode_lean_pieces.load(std::memory_order_relaxed);
    w.causal_skip_blocks += s.causal_skip_blocks.load(std::memory_order_relaxed);
    w.decode_wide_pieces += s.decode_wide_pieces.load(std::memory_order_relaxed);
    w.decode_wide_lin_pieces += s.decode_wide_lin_pieces.load(std::memory_order_relaxed);
    w.by_thread[i] = dp + tu;
  }
  return w;
}
namespace {
std::atomic<int>& decode_bf16dp_mode_ref() {
  static std::atomic<int> mode([] {
    const char* v = std::getenv("EMOLLM_DECODE_ATTN_BF16DP");
    if (!v || !*v) return int(DecodeBf16Dp::WhenAsked);
    if (std::strcmp(v, "0") == 0 || std::strcmp(v, "off") == 0) return int(DecodeBf16Dp::Never);
    return int(DecodeBf16Dp::Always);
  }());
  return mode;
}
}  // namespace
DecodeBf16Dp decode_bf16dp_mode() { return DecodeBf16Dp(decode_bf16dp_mode_ref().load(std::memory_order_relaxed)); }
void set_decode_bf16dp_mode(DecodeBf16Dp m) { decode_bf16dp_mode_ref().store(int(m), std::memory_order_relaxed); }
bool decode_bf16dp_applies(const AttentionParams& p) {
  const DecodeBf16Dp m = decode_bf16dp_mode();
  // >= 4 query heads per kv head: with fewer, each V pair interleave feeds too few products (7B MHA
  // kv 512, cold, 2 threads: 0.57x the exact path, loaded)
  return p.kv_dtype == DType::BF16 && p.n_heads >= 4 * p.n_kv_heads && (m == DecodeBf16Dp::Always || (m == DecodeBf16Dp::WhenAsked && p.bf16_products)) &&
         isa_active() >= Isa::Avx512 && cpu_features().avx512bf16 && decode_inplace_enabled();
}
}  // namespace attention_detail

// ============================================================================ vector kernels
#if defined(__x86_64__)
namespace {

#define EMO_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define EMO_T256 __attribute__((target("avx2,fma,f16c")))

// The decode driver's next sub-block of narrow token rows (attention_detail::decode_pipeline),
// prefetched a few lines per step of the kernels' inner loops, so its reads are in flight while
// this sub-block's FMAs run. Why inside the loops: a demand load that misses holds up retirement
// (loads of the next sub-block between the kernel calls: 0.79-0.81x), and a burst of prefetches
// fills the core's miss buffers and stalls the same way (a quarter of the next sub-block before
// each kv head's call: 0.96-1.05x, t0 or t1); one or two lines per step keep a few misses in flight
// all the time instead. The driver passes it to qk_decode / pv (null: every other call, the tiled
// driver's included: the kernels prefetch nothing). Into L1 (prefetcht0) or, by the CPU's default
// (attention_detail::decode_pipeline_l2: Zen 4), into L2 (prefetcht2): 1.10-1.44x T0 cold at 1
// thread there (session 26, bench/README; why is not measured, no counters on the VM: T0's fills
// may hold the L1 miss buffers the kernels' own loads need). With it the 1.1B shape's cold call
// runs at about its L2-resident speed: compute-bound.
// Kern::qk16's knext / pv2's vnext when decode_wide_pf is on and there is no next full sub-block: the 8-row
// halves without prefetch (null: decode_wide_pf off, the 16-row order).
alignas(64) const float wide_pf_none_storage[16] = {};
const float* const wide_pf_none = wide_pf_none_storage;
// fn(std::integral_constant<int, L>{}) for decode_wide_lin's every-L-th line, L = lin (1, 2, 4, 8, 16 or 32:
// set_decode_wide_lin's values other than 0): the kernels compiled once per L, as gemm_detail::with_prefetch_hint
// does per hint. fn: a lambda marked EMO_T512 (the kernels' target, so that the tile inlines into it) and forced
// inline, as with_lin is: the kernel's body is what it was with the tile called in each case of a switch.
template <class Fn>
EMO_T512 __attribute__((always_inline)) inline void with_lin(int lin, Fn&& fn) {
  switch (lin) {
    case 1: return fn(std::integral_constant<int, 1>{});
    case 2: return fn(std::integral_constant<int, 2>{});
    case 4: return fn(std::integral_constant<int, 4>{});
    case 8: return fn(std::integral_constant<int, 8>{});
    case 16: return fn(std::integral_constant<int, 16>{});
    default: return fn(std::integral_constant<int, 32>{});
  }
}
struct PfCursor {
  const char* line = nullptr;  // the next line to prefetch (an address in it)
  const char* last = nullptr;  // the last byte of the current row's span
  int64_t row_bytes = 0, span_bytes = 0;
  int rows_left = 0;           // rows not finished, the current one included
  int per_qk = 0, per_pv = 0;  // lines per step of qk_decode_rows (two a 16-dim chunk) / pv_tile (one a token)
  bool l2 = false;             // prefetcht2 (into L2) instead of prefetcht0 (attention_detail::decode_pipeline_l2)
  // Further runs of rows (span_bytes each) the cursor goes on with, in order, after this one
  // (decode_lean: a block's V sub-blocks during its Q K^T, the next block's K sub-blocks during its P V).
  struct Run {
    const char* row;
    int64_t row_bytes;
    int ns;
  };
  Run then[4];
  int n_then = 0, i_then = 0;
  void start(const char* row, int64_t rb, int64_t sb, int ns) {
    line = row;
    last = row + sb - 1;
    row_bytes = rb;
    span_bytes = sb;
    rows_left = ns;
    n_then = i_then = 0;
  }
};
// The cursor's next n lines (every line of each row's span, the last one included when a row does
// not start on a line).
// Log: decode_pipeline_lines (tests) records each line in `log` too.
template <bool Log = false>
__attribute__((always_inline)) inline void pf_step(PfCursor* c, int n, std::vector<uintptr_t>* log = nullptr) {
  const char* line = c->line;
  const char* last = c->last;
  int left = c->rows_left;
  for (int i = 0; i < n && left > 0; ++i) {
    if (c->l2)
      _mm_prefetch(line, _MM_HINT_T2);
    else
      _mm_prefetch(line, _MM_HINT_T0);
    if constexpr (Log) log->push_back(reinterpret_cast<uintptr_t>(line) >> 6 << 6);
    line += 64;
    if (reinterpret_cast<uintptr_t>(line) >> 6 > reinterpret_cast<uintptr_t>(last) >> 6) {
      line = last + 1 - c->span_bytes + c->row_bytes;
      last += c->row_bytes;
      if (--left == 0 && c->i_then < c->n_then) {  // the next run
        const PfCursor::Run& r = c->then[c->i_then++];
        line = r.row;
        last = line + c->span_bytes - 1;
        c->row_bytes = r.row_bytes;
        left = r.ns;
      }
    }
  }
  c->line = line;
  c->last = last;
  c->rows_left = left;
}
// Per-ISA inner kernels; the tiling driver below is shared.
struct Kern {
  // S[r * ldS + j] = scale * dot(qrows[r], k + j*ldk) for r < R, j < nb (entries up to
  // round_up(nb, 16) may be written with junk).
  void (*qk)(const float* const* qrows, int R, const float* k, int64_t ldk, int nb, int D, float scale,
             float* S, int ldS);
  float (*row_max)(const float* s, int n);
  // s[j] = exp(s[j] - m) for j < n; returns the sum.
  float (*exp_sum)(float* s, int n, float m);
  // acc[r, :D] = alpha[r] * acc[r, :D] + sum_{j<nb} P[r, j] * v[j, :D]
  // pf: the decode pipeline's cursor, stepped once a token (null: no prefetch).
  void (*pv)(float* acc, int ldacc, const float* alpha, int R, const float* P, int ldP, const float* v,
             int64_t ldv, int nb, int D, PfCursor* pf);
  // Optional (null: use qk): kt[d * kBk + j] = k[j * ldk + d] for j < nb, d < D (columns j >= nb
  // get finite junk), then the same S as qk from kt; no horizontal sums. Used for many rows.
  void (*k_transpose)(const float* k, int64_t ldk, int nb, int D, float* kt);
  void (*qk_t)(const float* const* qrows, int R, const float* kt, int D, float scale, float* S, int ldS);
  // Optional (null: use qk), for decode with several query heads per kv head: S[r * ldS + j] =
  // scale * dot(q + r * ldq, kr[j]) for r < R, j < 16 (all 16 written; the caller repeats its last
  // row past the tokens it has); q rows zero-padded to Dp = round_up(D, 16) floats.
  // pf: the decode pipeline's cursor, stepped twice a 16-dim chunk (null: no prefetch).
  void (*qk_decode)(const float* q, int64_t ldq, int R, const float* const* kr, int D, float scale, float* S,
                    int64_t ldS, PfCursor* pf);
  // Optional (null: use qk), for decode with one or two query heads per kv head (MHA) and
  // 65 <= D <= 128: qk's S for R <= 2 rows and exactly 16 keys ldk apart, with the same bits.
  // knext (decode_wide_pf, DecodeItem::wide_pf; null: off): the 16 rows of the next sub-block's same slice (ldk
  // apart, or nullptr where there is none); non-null, the 16 rows are read 8 at a time (rows 0-7 every chunk, then
  // rows 8-15: the same FMAs on each key's accumulator in the same order) and knext's lines prefetched into L2 as
  // they go (wide_pf_none: the halves without prefetch).
  // lin (decode_wide_lin; knext set): 0, or knext is the first of this call's 128 lines of the next sub-block in
  // address order (8 KiB from its first row: kv head g's call the g-th 8 KiB), every lin-th line prefetched.
  void (*qk16)(const float* const* qrows, int R, const float* k, int64_t ldk, int D, float scale, float* S, int ldS,
               const float* knext, int lin);
  // Optional (null: none), decode_wide8: qk16's scores of keys 8 * half .. 8 * half + 7 alone for one query row (R 1),
  // k: the 16-row sub-block's first row, written to S[8 * half ..] (8 floats), the same bits as qk16's; knext
  // non-null (not wide_pf_none): the next 8-row sub-block's same slice (8 rows ldk apart) prefetched into L2.
  void (*qk8)(const float* q, const float* k, int64_t ldk, int D, float scale, float* S, int half, const float* knext,
              int lin);
  // Optional (null: pv per head), for MHA decode with 65 <= D <= 128: pv for two rows r = 0, 1
  // whose V rows differ, row r reading v + r * D (two adjacent kv heads' slices of the same token
  // rows), with the same bits as two pv calls. chunks: V walked a 16-float chunk at a time across the
  // nb token rows (DecodeItem::pv_chunks), else a token row at a time; the same bits either way.
  // vnext: as qk16's knext (a full chunked sub-block only: nb 16, chunks): 8 token rows at a time across both
  // heads' chunks, every output element's FMAs in the same order, vnext's lines prefetched into L2.
  // lin: as qk16's (the pair's call g0 the g0-th 8 KiB of the next sub-block, 256 lines).
  void (*pv2)(float* acc, int ldacc, const float* alpha, const float* P, int ldP, const float* v, int64_t ldv, int nb,
              int D, bool chunks, const float* vnext, int lin);
  // Optional (null: none), the prototype of K kept in 16-token tiles (attention_detail::decode_k_tiles):
  // qk_decode's S from one kv head's tile kt (kt[d * 16 + t] = dim d of key t, t < 16; D x 16
  // elements), the same FMAs in the same order without the transposes: the same bits.
  void (*qk_tiles)(const float* q, int64_t ldq, int R, const float* kt, int D, float scale, float* S, int64_t ldS,
                   PfCursor* pf) = nullptr;
  // Optional (null: qk_t), qk_t on a causal diagonal block: row r needs only columns j < nv[r]
  // (nv non-decreasing in r); the columns a row group needs are qk_t's (each S element is one FMA
  // chain over d whatever the grouping: the same bits), those past them are left unwritten.
  void (*qk_t_tri)(const float* const* qrows, int R, const float* kt, int D, float scale, float* S, int ldS,
                   const int* nv) = nullptr;
};

// Cephes-style expf constants (range reduction x = n ln2 + r, degree-5 polynomial for e^r).
constexpr float kExpHi = 88.0f;
constexpr float kExpLo = -87.33654475f;  // below: result is flushed to 0 (true value < 1.2e-38)
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f,
                kP3 = 4.1665795894e-2f, kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;

// ---------------------------------------------------------------------------- AVX-512
EMO_T512 static inline __m512 exp512(__m512 x) {
  const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpLo), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(kExpLo)), _mm512_set1_ps(kExpHi));
  const __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(kLn2Hi), x);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(kLn2Lo), x);
  __m512 y = _mm512_set1_ps(kP0);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(kP1));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(kP2));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(kP3));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(kP4));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(kP5));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
  y = _mm512_mul_ps(y, _mm512_castsi512_ps(e));
  return _mm512_maskz_mov_ps(__mmask16(~under), y);
}

// out lane i = horizontal sum of a[i], i < 16.
EMO_T512 static inline __m512 reduce16_512(const __m512* a) {
  __m512 w[8], x[4];
  #pragma GCC unroll 8
  for (int t = 0; t < 8; ++t)
    w[t] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * t], a[2 * t + 1]), _mm512_unpackhi_ps(a[2 * t], a[2 * t + 1]));
  #pragma GCC unroll 4
  for (int t = 0; t < 4; ++t)
    x[t] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * t], w[2 * t + 1], 0x44),
                         _mm512_shuffle_ps(w[2 * t], w[2 * t + 1], 0xEE));
  const __m512 y0 = _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], 0x88), _mm512_shuffle_f32x4(x[0], x[1], 0xDD));
  const __m512 y1 = _mm512_add_ps(_mm512_shuffle_f32x4(x[2], x[3], 0x88), _mm512_shuffle_f32x4(x[2], x[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(y0, y1, 0x88), _mm512_shuffle_f32x4(y0, y1, 0xDD));
}

// K/V element loads of the AVX-512 kernels: 16 elements of the cache's type widened to f32
// (exact) as they are read, so a half cache (f16 / bf16) needs no widening pass into scratch and
// the kernels see the same floats either way. T: the element type behind the float* rows.
struct KvF32 {
  using T = float;
  EMO_T512 static inline __m512 load(const T* p) { return _mm512_loadu_ps(p); }
  EMO_T512 static inline __m512 maskz_load(__mmask16 m, const T* p) { return _mm512_maskz_loadu_ps(m, p); }
};
struct KvF16 {
  using T = uint16_t;
  EMO_T512 static inline __m512 load(const T* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  EMO_T512 static inline __m512 maskz_load(__mmask16 m, const T* p) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
};
struct KvBF16 {
  using T = uint16_t;
  EMO_T512 static inline __m512 load(const T* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  }
  EMO_T512 static inline __m512 maskz_load(__mmask16 m, const T* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
  }
};

template <class E>
EMO_T512 static void qk_avx512_t(const float* const* qrows, int R, const float* kf, int64_t ldk, int nb, int D,
                                 float scale, float* S, int ldS) {
  using T = typename E::T;
  const T* k = reinterpret_cast<const T*>(kf);
  const int nfull = D / 16, tail = D % 16;
  const __mmask16 tm = __mmask16((1u << tail) - 1);
  const __m512 vs = _mm512_set1_ps(scale);
  for (int j0 = 0; j0 < nb; j0 += 16) {
    const T* kp[16];
    #pragma GCC unroll 16
    for (int t = 0; t < 16; ++t) kp[t] = k + int64_t(std::min(j0 + t, nb - 1)) * ldk;  // clamp: no reads past the cache
    int r = 0;
    for (; r + 1 < R; r += 2) {  // 2 rows x 8 keys per reduction: lanes 0-7 row r, 8-15 row r+1
      const float* q0 = qrows[r];
      const float* q1 = qrows[r + 1];
      for (int half = 0; half < 2 && j0 + 8 * half < nb; ++half) {
        const T* const* kh = kp + 8 * half;
        __m512 acc[16];
        #pragma GCC unroll 16
        for (int t = 0; t < 16; ++t) acc[t] = _mm512_setzero_ps();
        int c = 0;
        for (; c < nfull * 16; c += 16) {
          const __m512 a0 = _mm512_loadu_ps(q0 + c), a1 = _mm512_loadu_ps(q1 + c);
          #pragma GCC unroll 8
          for (int t = 0; t < 8; ++t) {
            const __m512 kv = E::load(kh[t] + c);
            acc[t] = _mm512_fmadd_ps(a0, kv, acc[t]);
            acc[8 + t] = _mm512_fmadd_ps(a1, kv, acc[8 + t]);
          }
        }
        if (tail) {
          const __m512 a0 = _mm512_maskz_loadu_ps(tm, q0 + c), a1 = _mm512_maskz_loadu_ps(tm, q1 + c);
          #pragma GCC unroll 8
          for (int t = 0; t < 8; ++t) {
            const __m512 kv = E::maskz_load(tm, kh[t] + c);
            acc[t] = _mm512_fmadd_ps(a0, kv, acc[t]);
            acc[8 + t] = _mm512_fmadd_ps(a1, kv, acc[8 + t]);
          }
        }
        const __m512 z = _mm512_mul_ps(reduce16_512(acc), vs);
        _mm256_storeu_ps(S + int64_t(r) * ldS + j0 + 8 * half, _mm512_castps512_ps256(z));
        _mm256_storeu_ps(S + int64_t(r + 1) * ldS + j0 + 8 * half, _mm512_extractf32x8_ps(z, 1));
      }
    }
    if (r < R) {  // last odd row: 1 row x 16 keys
      const float* q0 = qrows[r];
      __m512 acc[16];
      #pragma GCC unroll 16
      for (int t = 0; t < 16; ++t) acc[t] = _mm512_setzero_ps();
      int c = 0;
      for (; c < nfull * 16; c += 16) {
        const __m512 a0 = _mm512_loadu_ps(q0 + c);
        #pragma GCC unroll 16
        for (int t = 0; t < 16; ++t) acc[t] = _mm512_fmadd_ps(a0, E::load(kp[t] + c), acc[t]);
      }
      if (tail) {
        const __m512 a0 = _mm512_maskz_loadu_ps(tm, q0 + c);
        #pragma GCC unroll 16
        for (int t = 0; t < 16; ++t) acc[t] = _mm512_fmadd_ps(a0, E::maskz_load(tm, kp[t] + c), acc[t]);
      }
      _mm512_storeu_ps(S + int64_t(r) * ldS + j0, _mm512_mul_ps(reduce16_512(acc), vs));
    }
  }
}

EMO_T512 static void qk_avx512(const float* const* qrows, int R, const float* k, int64_t ldk, int nb, int D,
                               float scale, float* S, int ldS) {
  qk_avx512_t<KvF32>(qrows, R, k, ldk, nb, D, scale, S, ldS);
}

EMO_T512 static float row_max_avx512(const float* s, int n) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  int i = 0;
  for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(s + i));
  if (i < n) {
    const __mmask16 tm = __mmask16((1u << (n - i)) - 1);
    m = _mm512_mask_max_ps(m, tm, m, _mm512_maskz_loadu_ps(tm, s + i));
  }
  return _mm512_reduce_max_ps(m);
}

EMO_T512 static float exp_sum_avx512(float* s, int n, float mx) {
  const __m512 vm = _mm512_set1_ps(mx);
  __m512 sum = _mm512_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + i), vm));
    _mm512_storeu_ps(s + i, e);
    sum = _mm512_add_ps(sum, e);
  }
  if (i < n) {
    const __mmask16 tm = __mmask16((1u << (n - i)) - 1);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tm, s + i), vm));
    _mm512_mask_storeu_ps(s + i, tm, e);
    sum = _mm512_mask_add_ps(sum, tm, sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

// NR rows x NC 16-float chunks of acc kept in registers over the whole kv block. RowV: row r reads
// its own V at v + r * vstep (adjacent kv heads of MHA decode, pv2_avx512) instead of all rows
// sharing one V row loaded once; each output element's FMAs are in the same order either way.
template <class E, int NR, int NC, bool RowV = false>
EMO_T512 static inline void pv_tile_avx512(float* acc, int ldacc, const float* alpha, const float* P, int ldP,
                                           const typename E::T* v, int64_t ldv, int nb, __mmask16 lastmask,
                                           PfCursor* pf, int64_t vstep = 0) {
  __m512 a[NR][NC];
  #pragma GCC unroll 4
  for (int r = 0; r < NR; ++r) {
    const __m512 al = _mm512_set1_ps(alpha[r]);
    #pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) a[r][c] = _mm512_mul_ps(_mm512_load_ps(acc + r * ldacc + 16 * c), al);
  }
  for (int j = 0; j < nb; ++j) {
    if (pf) pf_step(pf, pf->per_pv);
    const typename E::T* vj = v + int64_t(j) * ldv;
    if constexpr (RowV) {
      #pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) {
        const typename E::T* vr = vj + r * vstep;
        const __m512 pr = _mm512_set1_ps(P[r * ldP + j]);
        #pragma GCC unroll 8
        for (int c = 0; c < NC; ++c)
          a[r][c] = _mm512_fmadd_ps(pr, c == NC - 1 ? E::maskz_load(lastmask, vr + 16 * c) : E::load(vr + 16 * c),
                                    a[r][c]);
      }
    } else {
      __m512 vv[NC];
      #pragma GCC unroll 8
      for (int c = 0; c < NC; ++c)
        vv[c] = c == NC - 1 ? E::maskz_load(lastmask, vj + 16 * c) : E::load(vj + 16 * c);
      #pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) {
        const __m512 pr = _mm512_set1_ps(P[r * ldP + j]);
        #pragma GCC unroll 8
        for (int c = 0; c < NC; ++c) a[r][c] = _mm512_fmadd_ps(pr, vv[c], a[r][c]);
      }
    }
  }
  #pragma GCC unroll 4
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) _mm512_store_ps(acc + r * ldacc + 16 * c, a[r][c]);
}

template <class E, int NR>
EMO_T512 static inline void pv_rows_avx512(float* acc, int ldacc, const float* alpha, const float* P, int ldP,
                                           const typename E::T* v, int64_t ldv, int nb, int nc, __mmask16 lastmask,
                                           PfCursor* pf) {
  switch (nc) {
    case 1: pv_tile_avx512<E, NR, 1>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lastmask, pf); break;
    case 2: pv_tile_avx512<E, NR, 2>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lastmask, pf); break;
    case 3: pv_tile_avx512<E, NR, 3>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lastmask, pf); break;
    default: pv_tile_avx512<E, NR, 4>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lastmask, pf); break;
  }
}

// One or two rows with 5-8 chunks (head_dim 65-128) in one tile: 8-16 independent FMA chains
// instead of two passes of 4-8 over the block (attention_detail::decode_pv_wide).
template <class E, int NR, bool RowV = false>
EMO_T512 static inline void pv_rows_wide_avx512(float* acc, int ldacc, const float* alpha, const float* P, int ldP,
                                                const typename E::T* v, int64_t ldv, int nb, int nc, __mmask16 lastmask,
                                                PfCursor* pf, int64_t vstep = 0) {
  switch (nc) {
    case 5: pv_tile_avx512<E, NR, 5, RowV>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lastmask, pf, vstep); break;
    case 6: pv_tile_avx512<E, NR, 6, RowV>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lastmask, pf, vstep); break;
    case 7: pv_tile_avx512<E, NR, 7, RowV>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lastmask, pf, vstep); break;
    default: pv_tile_avx512<E, NR, 8, RowV>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lastmask, pf, vstep); break;
  }
}

// Kern::pv2: two rows, row r reading the V slice of kv head g0 + r (at v + r * D of each token
// row): pv_tile's RowV tile, each output element's FMAs in pv's order (the same bits as two pv calls).
// pv2 walked chunk by chunk (attention_detail::decode_pv_chunks; DecodeItem::pv_chunks): for each row r (kv head g0 + r)
// and 16-float chunk c, its accumulator times alpha, then over the nb tokens in order (every output
// element's operations in pv_tile's order: the same bits), so the V loads go one 64-byte line of
// the head's slice across the sub-block's 16 token rows at a time (the order of qk16's K loads)
// instead of each token row's whole 1 KiB pair slice in turn. Why it reads faster from memory:
// bench/README (session 29, h-attn7): the driver's loads alone 1.16-1.17x with V in this order.
template <class E, int NC, int NB, int LIN = 0>  // NB: 16 (a full sub-block), 8 (decode_wide8's) or 0 (nb at run time)
EMO_T512 static inline void pv2_chunks_avx512(float* acc, int ldacc, const float* alpha, const float* P, int ldP,
                                              const typename E::T* v, int64_t ldv, int nb_rt, __mmask16 lm,
                                              int64_t vstep, const typename E::T* vn = nullptr) {
  const int nb = NB ? NB : nb_rt;
  #pragma GCC unroll 2
  for (int r = 0; r < 2; ++r) {
    const __m512 al = _mm512_set1_ps(alpha[r]);
    const float* pr = P + r * ldP;
    const typename E::T* vr = v + r * vstep;
    #pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) {
      __m512 a = _mm512_mul_ps(_mm512_load_ps(acc + r * ldacc + 16 * c), al);
      #pragma GCC unroll 16
      for (int j = 0; j < nb; ++j) {
        a = _mm512_fmadd_ps(_mm512_set1_ps(pr[j]),
                            c == NC - 1 ? E::maskz_load(lm, vr + j * ldv + 16 * c) : E::load(vr + j * ldv + 16 * c), a);
        if (LIN) {  // decode_wide_lin: the call's lines in address order, every LIN-th
          if (vn && ((r * NC + c) * 8 + j) % LIN == 0)
            _mm_prefetch(reinterpret_cast<const char*>(vn) + 64 * ((r * NC + c) * 8 + j), _MM_HINT_T2);
        } else if (NB == 8 && vn && (sizeof(typename E::T) == 4 || (c & 1) == 0))  // decode_wide8 with decode_wide_pf
          _mm_prefetch(reinterpret_cast<const char*>(vn + r * vstep + j * ldv + 16 * c), _MM_HINT_T2);
      }
      _mm512_store_ps(acc + r * ldacc + 16 * c, a);
    }
  }
}
// pv2 by chunks on a full sub-block read 8 token rows at a time (attention_detail::decode_wide_pf): all 2 x NC
// accumulators in registers, tokens 0-7 of every (row, chunk), then tokens 8-15 (each output element's FMAs in
// token order, as pv2_chunks_avx512: the same bits); the next sub-block's lines (vn: its same pair slice, null:
// none) prefetched into L2 one a load as the same line of this one is read.
template <class E, int NC, int LIN = 0>
EMO_T512 static inline void pv2_chunks_h8(float* acc, int ldacc, const float* alpha, const float* P, int ldP,
                                          const typename E::T* v, int64_t ldv, __mmask16 lm, int64_t vstep,
                                          const typename E::T* vn) {
  __m512 a[2][NC];
  #pragma GCC unroll 2
  for (int r = 0; r < 2; ++r) {
    const __m512 al = _mm512_set1_ps(alpha[r]);
    #pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) a[r][c] = _mm512_mul_ps(_mm512_load_ps(acc + r * ldacc + 16 * c), al);
  }
  #pragma GCC unroll 1
  for (int half = 0; half < 2; ++half) {
    #pragma GCC unroll 2
    for (int r = 0; r < 2; ++r) {
      const float* pr = P + r * ldP + 8 * half;
      const typename E::T* vr = v + r * vstep + 8 * half * ldv;
      const typename E::T* nr = vn ? vn + r * vstep + 8 * half * ldv : nullptr;
      #pragma GCC unroll 8
      for (int c = 0; c < NC; ++c) {
        #pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) {
          a[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(pr[j]),
                                    c == NC - 1 ? E::maskz_load(lm, vr + j * ldv + 16 * c) : E::load(vr + j * ldv + 16 * c),
                                    a[r][c]);
          if (LIN) {  // decode_wide_lin: the call's lines in address order, every LIN-th
            if (vn && ((r * NC + c) * 8 + j) % LIN == 0)  // 2 * half * NC * 8: a multiple of 128
              _mm_prefetch(reinterpret_cast<const char*>(vn) + 64 * (((2 * half + r) * NC + c) * 8 + j), _MM_HINT_T2);
          } else if (nr && (sizeof(typename E::T) == 4 || (c & 1) == 0))
            _mm_prefetch(reinterpret_cast<const char*>(nr + j * ldv + 16 * c), _MM_HINT_T2);
        }
      }
    }
  }
  #pragma GCC unroll 2
  for (int r = 0; r < 2; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) _mm512_store_ps(acc + r * ldacc + 16 * c, a[r][c]);
}
template <class E, int NC>
EMO_T512 static inline void pv2_chunks_nb(float* acc, int ldacc, const float* alpha, const float* P, int ldP,
                                          const typename E::T* v, int64_t ldv, int nb, __mmask16 lm, int64_t vstep,
                                          const float* vnext, int lin) {
  // decode_wide_lin (the driver: f32 rows back to back, head_dim 113-128): built for f32 x 8 chunks only
  constexpr bool kLin = sizeof(typename E::T) == 4 && NC == 8;
  if (nb == 16 && vnext) {
    const typename E::T* vn = vnext == wide_pf_none ? nullptr : reinterpret_cast<const typename E::T*>(vnext);
    if constexpr (kLin) {
      if (vn && lin)
        return with_lin(lin, [=](auto L) EMO_T512 __attribute__((always_inline)) {
          pv2_chunks_h8<E, NC, decltype(L)::value>(acc, ldacc, alpha, P, ldP, v, ldv, lm, vstep, vn);
        });
    }
    return pv2_chunks_h8<E, NC>(acc, ldacc, alpha, P, ldP, v, ldv, lm, vstep, vn);
  }
  if (nb == 8 && vnext) {  // decode_wide8's sub-block (vnext wide_pf_none: no prefetch)
    const typename E::T* vn = vnext == wide_pf_none ? nullptr : reinterpret_cast<const typename E::T*>(vnext);
    if constexpr (kLin) {
      if (vn && lin)
        return with_lin(lin, [=](auto L) EMO_T512 __attribute__((always_inline)) {
          pv2_chunks_avx512<E, NC, 8, decltype(L)::value>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lm, vstep, vn);
        });
    }
    return pv2_chunks_avx512<E, NC, 8>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lm, vstep, vn);
  }
  if (nb == 16) pv2_chunks_avx512<E, NC, 16>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lm, vstep);
  else pv2_chunks_avx512<E, NC, 0>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lm, vstep);
}
template <class E>
EMO_T512 static void pv2_avx512(float* acc, int ldacc, const float* alpha, const float* P, int ldP, const float* vf,
                                int64_t ldv, int nb, int D, bool chunks, const float* vnext, int lin) {
  const typename E::T* v = reinterpret_cast<const typename E::T*>(vf);
  const int nc = (D + 15) / 16, tail = D % 16;
  const __mmask16 lm = tail ? __mmask16((1u << tail) - 1) : __mmask16(0xFFFF);
  if (chunks) {  // decode_pv_chunks, read once a call (make_decode_item)
    switch (nc) {
      case 5: return pv2_chunks_nb<E, 5>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lm, D, vnext, lin);
      case 6: return pv2_chunks_nb<E, 6>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lm, D, vnext, lin);
      case 7: return pv2_chunks_nb<E, 7>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lm, D, vnext, lin);
      default: return pv2_chunks_nb<E, 8>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lm, D, vnext, lin);
    }
  }
  // two adjacent kv heads: row r's V slice at v + r * D in each token row
  pv_rows_wide_avx512<E, 2, true>(acc, ldacc, alpha, P, ldP, v, ldv, nb, nc, lm, nullptr, D);
}

template <class E>
EMO_T512 static void pv_avx512_t(float* acc, int ldacc, const float* alpha, int R, const float* P, int ldP,
                                 const float* vf, int64_t ldv, int nb, int D, PfCursor* pf) {
  const typename E::T* v = reinterpret_cast<const typename E::T*>(vf);
  const int nchunks = (D + 15) / 16, tail = D % 16;
  // Each output element's sum runs over the tokens in the same order either way: same bits.
  if (R <= 2 && nchunks > 4 && nchunks <= 8 && attention_detail::decode_pv_wide()) {
    const __mmask16 lm = tail ? __mmask16((1u << tail) - 1) : __mmask16(0xFFFF);
    if (R == 1)
      pv_rows_wide_avx512<E, 1>(acc, ldacc, alpha, P, ldP, v, ldv, nb, nchunks, lm, pf);
    else
      pv_rows_wide_avx512<E, 2>(acc, ldacc, alpha, P, ldP, v, ldv, nb, nchunks, lm, pf);
    return;
  }
  for (int c0 = 0; c0 < nchunks; c0 += 4) {
    const int nc = std::min(4, nchunks - c0);
    const __mmask16 lm = (c0 + nc == nchunks && tail) ? __mmask16((1u << tail) - 1) : __mmask16(0xFFFF);
    float* ac = acc + 16 * c0;
    const typename E::T* vc = v + 16 * c0;
    int r = 0;
    for (; r + 4 <= R; r += 4)
      pv_rows_avx512<E, 4>(ac + r * ldacc, ldacc, alpha + r, P + r * ldP, ldP, vc, ldv, nb, nc, lm, pf);
    switch (R - r) {
      case 3: pv_rows_avx512<E, 3>(ac + r * ldacc, ldacc, alpha + r, P + r * ldP, ldP, vc, ldv, nb, nc, lm, pf); break;
      case 2: pv_rows_avx512<E, 2>(ac + r * ldacc, ldacc, alpha + r, P + r * ldP, ldP, vc, ldv, nb, nc, lm, pf); break;
      case 1: pv_rows_avx512<E, 1>(ac + r * ldacc, ldacc, alpha + r, P + r * ldP, ldP, vc, ldv, nb, nc, lm, pf); break;
      default: break;
    }
  }
}
EMO_T512 static void pv_avx512(float* acc, int ldacc, const float* alpha, int R, const float* P, int ldP,
                               const float* v, int64_t ldv, int nb, int D, PfCursor* pf) {
  pv_avx512_t<KvF32>(acc, ldacc, alpha, R, P, ldP, v, ldv, nb, D, pf);
}

// kt[d][j] = k[j][d]: 16x16 tiles transposed in registers; rows past nb repeat row nb-1.
EMO_T512 static void k_transpose_avx512(const float* k, int64_t ldk, int nb, int D, float* kt) {
  const int D16 = D / 16 * 16;
  for (int j0 = 0; j0 < kBk; j0 += 16) {
    if (j0 >= nb) break;  // columns >= nb keep junk (finite: zero-initialised or earlier blocks)
    const float* kr[16];
    #pragma GCC unroll 16
    for (int t = 0; t < 16; ++t) kr[t] = k + int64_t(std::min(j0 + t, nb - 1)) * ldk;
    for (int d0 = 0; d0 < D16; d0 += 16) {
      __m512 r[16];
      #pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(kr[i] + d0);
      gemm_detail::transpose16_ps(r);  // r[m] = column d0 + m of the 16 rows
      #pragma GCC unroll 16
      for (int m = 0; m < 16; ++m) _mm512_store_ps(kt + int64_t(d0 + m) * kBk + j0, r[m]);
    }
    for (int d = D16; d < D; ++d)
      for (int t = 0; t < 16; ++t) kt[int64_t(d) * kBk + j0 + t] = kr[t][d];
  }
}

// NR rows x 16 * NC keys in registers (NC = 4: the whole 64-key block); q broadcast per (row, d).
template <int NR, int NC = 4>
EMO_T512 static inline void qk_t_rows_avx512(const float* const* qrows, const float* kt, int D, __m512 vs,
                                             float* S, int ldS) {
  __m512 acc[NR][NC];
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int d = 0; d < D; ++d) {
    const float* kd = kt + int64_t(d) * kBk;
    __m512 kc[NC];
    #pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) kc[c] = _mm512_load_ps(kd + 16 * c);
    #pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const __m512 qb = _mm512_set1_ps(qrows[r][d]);
      #pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_fmadd_ps(qb, kc[c], acc[r][c]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) _mm512_storeu_ps(S + int64_t(r) * ldS + 16 * c, _mm512_mul_ps(acc[r][c], vs));
}
template <int NR>
EMO_T512 static inline void qk_t_rows_nc_avx512(const float* const* qrows, const float* kt, int D, __m512 vs,
                                                float* S, int ldS, int nc) {
  switch (nc) {
    case 1: qk_t_rows_avx512<NR, 1>(qrows, kt, D, vs, S, ldS); break;
    case 2: qk_t_rows_avx512<NR, 2>(qrows, kt, D, vs, S, ldS); break;
    case 3: qk_t_rows_avx512<NR, 3>(qrows, kt, D, vs, S, ldS); break;
    default: qk_t_rows_avx512<NR, 4>(qrows, kt, D, vs, S, ldS); break;
  }
}

EMO_T512 static void qk_t_avx512(const float* const* qrows, int R, const float* kt, int D, float scale, float* S,
                                 int ldS) {
  const __m512 vs = _mm512_set1_ps(scale);
  int r = 0;
  for (; r + 6 <= R; r += 6) qk_t_rows_avx512<6>(qrows + r, kt, D, vs, S + int64_t(r) * ldS, ldS);
  switch (R - r) {
    case 5: qk_t_rows_avx512<5>(qrows + r, kt, D, vs, S + int64_t(r) * ldS, ldS); break;
    case 4: qk_t_rows_avx512<4>(qrows + r, kt, D, vs, S + int64_t(r) * ldS, ldS); break;
    case 3: qk_t_rows_avx512<3>(qrows + r, kt, D, vs, S + int64_t(r) * ldS, ldS); break;
    case 2: qk_t_rows_avx512<2>(qrows + r, kt, D, vs, S + int64_t(r) * ldS, ldS); break;
    case 1: qk_t_rows_avx512<1>(qrows + r, kt, D, vs, S + int64_t(r) * ldS, ldS); break;
    default: break;
  }
}

// Kern::qk_t_tri: qk_t's row groups, each over the 16-key columns its last row needs (nv
// non-decreasing: the group's largest); a group whose rows need none is skipped.
EMO_T512 static void qk_t_tri_avx512(const float* const* qrows, int R, const float* kt, int D, float scale, float* S,
                                     int ldS, const int* nv) {
  const __m512 vs = _mm512_set1_ps(scale);
  auto cols = [&](int r, int n) { return std::min(4, (nv[r + n - 1] + 15) / 16); };
  int r = 0;
  for (; r + 6 <= R; r += 6) {
    const int nc = cols(r, 6);
    if (nc > 0) qk_t_rows_nc_avx512<6>(qrows + r, kt, D, vs, S + int64_t(r) * ldS, ldS, nc);
  }
  if (r == R) return;
  const int nc = cols(r, R - r);
  if (nc == 0) return;
  switch (R - r) {
    case 5: qk_t_rows_nc_avx512<5>(qrows + r, kt, D, vs, S + int64_t(r) * ldS, ldS, nc); break;
    case 4: qk_t_rows_nc_avx512<4>(qrows + r, kt, D, vs, S + int64_t(r) * ldS, ldS, nc); break;
    case 3: qk_t_rows_nc_avx512<3>(qrows + r, kt, D, vs, S + int64_t(r) * ldS, ldS, nc); break;
    case 2: qk_t_rows_nc_avx512<2>(qrows + r, kt, D, vs, S + int64_t(r) * ldS, ldS, nc); break;
    default: qk_t_rows_nc_avx512<1>(qrows + r, kt, D, vs, S + int64_t(r) * ldS, ldS, nc); break;
  }
}

// Up to 8 query rows x 16 keys: each 16-dim chunk of the 16 key rows transposed in registers, then
// 16 broadcast FMAs per row (no horizontal sums; the K rows are loaded once for all rows).
template <class E, int NR>
EMO_T512 static inline void qk_decode_rows_avx512(const float* q, int64_t ldq, const float* const* krf, int D,
                                                  __m512 vs, float* S, int64_t ldS, PfCursor* pf) {
  const typename E::T* const* kr = reinterpret_cast<const typename E::T* const*>(krf);
  __m512 acc[NR];
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
  for (int d0 = 0; d0 < D; d0 += 16) {
    const int w = std::min(16, D - d0);
    const __mmask16 m = __mmask16(w == 16 ? 0xFFFFu : (1u << w) - 1);
    __m512 t[16];
    if (pf) pf_step(pf, pf->per_qk);
    if (w == 16) {
      #pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) t[i] = E::load(kr[i] + d0);
    } else {
      #pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) t[i] = E::maskz_load(m, kr[i] + d0);
    }
    gemm_detail::transpose16_ps(t);  // t[e] = dim d0 + e of the 16 keys (zero past D)
    if (pf) pf_step(pf, pf->per_qk);
    #pragma GCC unroll 16
    for (int e = 0; e < 16; ++e)
      #pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * ldq + d0 + e]), t[e], acc[r]);
  }
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) _mm512_storeu_ps(S + r * ldS, _mm512_mul_ps(acc[r], vs));
}

template <class E>
EMO_T512 static void qk_decode_avx512(const float* q, int64_t ldq, int R, const float* const* kr, int D, float scale,
                                      float* S, int64_t ldS, PfCursor* pf) {
  const __m512 vs = _mm512_set1_ps(scale);
  int r = 0;
  for (; r + 8 <= R; r += 8) qk_decode_rows_avx512<E, 8>(q + r * ldq, ldq, kr, D, vs, S + r * ldS, ldS, pf);
  switch (R - r) {
    case 7: qk_decode_rows_avx512<E, 7>(q + r * ldq, ldq, kr, D, vs, S + r * ldS, ldS, pf); break;
    case 6: qk_decode_rows_avx512<E, 6>(q + r * ldq, ldq, kr, D, vs, S + r * ldS, ldS, pf); break;
    case 5: qk_decode_rows_avx512<E, 5>(q + r * ldq, ldq, kr, D, vs, S + r * ldS, ldS, pf); break;
    case 4: qk_decode_rows_avx512<E, 4>(q + r * ldq, ldq, kr, D, vs, S + r * ldS, ldS, pf); break;
    case 3: qk_decode_rows_avx512<E, 3>(q + r * ldq, ldq, kr, D, vs, S + r * ldS, ldS, pf); break;
    case 2: qk_decode_rows_avx512<E, 2>(q + r * ldq, ldq, kr, D, vs, S + r * ldS, ldS, pf); break;
    case 1: qk_decode_rows_avx512<E, 1>(q + r * ldq, ldq, kr, D, vs, S + r * ldS, ldS, pf); break;
    default: break;
  }
}

// qk_decode_rows_avx512 on a stored transpose (attention_detail::decode_k_tiles): dim d of the 16
// keys is one load (kt + 16 d) instead of a lane of a 16x16 register transpose; each row's FMAs run
// over d = 0 .. D-1 in the same order into the same accumulator, and the zero-padded dims past D
// (q +0 times K +0: each adds +0, which turns a -0 sum, an FMA's exact result underflowing to -0,
// into +0 and leaves any other unchanged) are one add of +0: the same bits, S's signs included.
template <class E, int NR>
EMO_T512 static inline void qk_tiles_rows_avx512(const float* q, int64_t ldq, const typename E::T* kt, int D,
                                                 __m512 vs, float* S, int64_t ldS, PfCursor* pf) {
  __m512 acc[NR];
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
  for (int d0 = 0; d0 < D; d0 += 16) {
    const int w = std::min(16, D - d0);
    if (pf) pf_step(pf, pf->per_qk);
    if (w == 16) {
      #pragma GCC unroll 16
      for (int e = 0; e < 16; ++e) {
        const __m512 t = E::load(kt + (d0 + e) * 16);
        #pragma GCC unroll 8
        for (int r = 0; r < NR; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * ldq + d0 + e]), t, acc[r]);
      }
    } else {
      for (int e = 0; e < w; ++e) {
        const __m512 t = E::load(kt + (d0 + e) * 16);
        #pragma GCC unroll 8
        for (int r = 0; r < NR; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * ldq + d0 + e]), t, acc[r]);
      }
      // the rows path's 16 - w FMAs of +0 * +0 (x + 0 twice is x + 0 once)
      const __m512 zero = _mm512_setzero_ps();
      #pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) acc[r] = _mm512_add_ps(acc[r], zero);
    }
    if (pf) pf_step(pf, pf->per_qk);
  }
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) _mm512_storeu_ps(S + r * ldS, _mm512_mul_ps(acc[r], vs));
}

template <class E>
EMO_T512 static void qk_tiles_avx512(const float* q, int64_t ldq, int R, const float* ktf, int D, float scale,
                                     float* S, int64_t ldS, PfCursor* pf) {
  const typename E::T* kt = reinterpret_cast<const typename E::T*>(ktf);
  const __m512 vs = _mm512_set1_ps(scale);
  int r = 0;
  for (; r + 8 <= R; r += 8) qk_tiles_rows_avx512<E, 8>(q + r * ldq, ldq, kt, D, vs, S + r * ldS, ldS, pf);
  switch (R - r) {
    case 7: qk_tiles_rows_avx512<E, 7>(q + r * ldq, ldq, kt, D, vs, S + r * ldS, ldS, pf); break;
    case 6: qk_tiles_rows_avx512<E, 6>(q + r * ldq, ldq, kt, D, vs, S + r * ldS, ldS, pf); break;
    case 5: qk_tiles_rows_avx512<E, 5>(q + r * ldq, ldq, kt, D, vs, S + r * ldS, ldS, pf); break;
    case 4: qk_tiles_rows_avx512<E, 4>(q + r * ldq, ldq, kt, D, vs, S + r * ldS, ldS, pf); break;
    case 3: qk_tiles_rows_avx512<E, 3>(q + r * ldq, ldq, kt, D, vs, S + r * ldS, ldS, pf); break;
    case 2: qk_tiles_rows_avx512<E, 2>(q + r * ldq, ldq, kt, D, vs, S + r * ldS, ldS, pf); break;
    case 1: qk_tiles_rows_avx512<E, 1>(q + r * ldq, ldq, kt, D, vs, S + r * ldS, ldS, pf); break;
    default: break;
  }
}

// One query row against 8 keys of a 16-row sub-block (decode_wide_pf / decode_wide8: qk16_strided_tile's H8 form,
// qk8_tile): key t's row at key(t), its dot product into acc[at + t], one FMA a chunk in chunk order (qk16's NR 1
// arithmetic); where kn is set, the line of row pf_at + t of kn (the next sub-block, ldk apart) at the same offset
// prefetched into L2 beside each load (f16 / bf16: every other chunk, one line for two loads).
template <class E, int NC, int LIN = 0, class KeyAt>
EMO_T512 __attribute__((always_inline)) static inline void qk8_accumulate(const float* q0, __mmask16 lm, KeyAt key,
                                                                          int at, const typename E::T* kn, int pf_at,
                                                                          int64_t ldk, __m512 (&acc)[16]) {
  using T = typename E::T;
  #pragma GCC unroll 8
  for (int c = 0; c < NC; ++c) {
    const bool last = c == NC - 1;
    const __m512 a0 = last ? _mm512_maskz_loadu_ps(lm, q0 + 16 * c) : _mm512_loadu_ps(q0 + 16 * c);
    #pragma GCC unroll 8
    for (int t = 0; t < 8; ++t) {
      acc[at + t] = _mm512_fmadd_ps(a0, last ? E::maskz_load(lm, key(t) + 16 * c) : E::load(key(t) + 16 * c), acc[at + t]);
      if (LIN) {  // decode_wide_lin: the call's lines in address order, every LIN-th
        if (kn && (8 * c + t) % LIN == 0)  // pf_at * NC: a multiple of 64
          _mm_prefetch(reinterpret_cast<const char*>(kn) + 64 * (pf_at * NC + 8 * c + t), _MM_HINT_T2);
      } else if (kn && (sizeof(T) == 4 || (c & 1) == 0))
        _mm_prefetch(reinterpret_cast<const char*>(kn + (pf_at + t) * ldk + 16 * c), _MM_HINT_T2);
    }
  }
}

// Q K^T of one or two query rows against 16 key rows ldk apart (a full sub-block of one kv head,
// in place) for head_dim 65-128 (NC = 5-8 chunks of 16, the last one masked by lm): MHA decode
// (7B's 32 / 32 heads). The arithmetic of qk_avx512_t's step for step (each key's 8 chunk FMAs
// into its own accumulator in chunk order, reduce16_512's tree, then * scale), so the scores are
// bit for bit equal; what differs is the addressing: the 16 rows are 4 base pointers plus 0 / 1 /
// 2 / 3 row strides (base + index * scale operands, all in registers) with every chunk unrolled,
// where the generic kernel's 16 row pointers did not fit in the registers (a reload from the stack
// or a vmovq before most loads). attention_detail::decode_qk_wide.
template <class E, int NR, int NC, bool H8 = false, int LIN = 0>
EMO_T512 static inline void qk16_strided_tile(const float* q0, const float* q1, const typename E::T* k, int64_t ldk,
                                              __mmask16 lm, __m512 vs, float* S0, float* S1,
                                              const typename E::T* kn = nullptr) {
  using T = typename E::T;
  const int64_t l1 = ldk, l3 = 3 * ldk;
  const T* kb[4] = {k, k + 4 * ldk, k + 8 * ldk, k + 12 * ldk};
  auto row = [&](int t) -> const T* {
    const T* b = kb[t >> 2];
    switch (t & 3) {
      case 0: return b;
      case 1: return b + l1;
      case 2: return b + 2 * l1;
      default: return b + l3;
    }
  };
  if (NR == 1 && H8) {  // decode_wide_pf: keys 0-7 every chunk, then keys 8-15 (each key's FMAs in chunk order)
    __m512 acc[16];
    #pragma GCC unroll 16
    for (int t = 0; t < 16; ++t) acc[t] = _mm512_setzero_ps();
    #pragma GCC unroll 1
    for (int half = 0; half < 2; ++half)
      qk8_accumulate<E, NC, LIN>(q0, lm, [&](int t) { return row(8 * half + t); }, 8 * half, kn, 8 * half, ldk, acc);
    _mm512_storeu_ps(S0, _mm512_mul_ps(reduce16_512(acc), vs));
    return;
  }
  if (NR == 1) {  // 1 row x 16 keys (qk_avx512_t's last odd row)
    __m512 acc[16];
    #pragma GCC unroll 16
    for (int t = 0; t < 16; ++t) acc[t] = _mm512_setzero_ps();
    #pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) {
      const bool last = c == NC - 1;
      const __m512 a0 = last ? _mm512_maskz_loadu_ps(lm, q0 + 16 * c) : _mm512_loadu_ps(q0 + 16 * c);
      #pragma GCC unroll 16
      for (int t = 0; t < 16; ++t)
        acc[t] = _mm512_fmadd_ps(a0, last ? E::maskz_load(lm, row(t) + 16 * c) : E::load(row(t) + 16 * c), acc[t]);
    }
    _mm512_storeu_ps(S0, _mm512_mul_ps(reduce16_512(acc), vs));
    return;
  }
  // 2 rows x 8 keys per reduction (qk_avx512_t's row pairs): lanes 0-7 row 0, 8-15 row 1
  #pragma GCC unroll 2
  for (int half = 0; half < 2; ++half) {
    __m512 acc[16];
    #pragma GCC unroll 16
    for (int t = 0; t < 16; ++t) acc[t] = _mm512_setzero_ps();
    #pragma GCC unroll 8
    for (int c = 0; c < NC; ++c) {
      const bool last = c == NC - 1;
      const __m512 a0 = last ? _mm512_maskz_loadu_ps(lm, q0 + 16 * c) : _mm512_loadu_ps(q0 + 16 * c);
      const __m512 a1 = last ? _mm512_maskz_loadu_ps(lm, q1 + 16 * c) : _mm512_loadu_ps(q1 + 16 * c);
      #pragma GCC unroll 8
      for (int t = 0; t < 8; ++t) {
        const T* kr = row(8 * half + t) + 16 * c;
        const __m512 kv = last ? E::maskz_load(lm, kr) : E::load(kr);
        acc[t] = _mm512_fmadd_ps(a0, kv, acc[t]);
        acc[8 + t] = _mm512_fmadd_ps(a1, kv, acc[8 + t]);
      }
    }
    const __m512 z = _mm512_mul_ps(reduce16_512(acc), vs);
    _mm256_storeu_ps(S0 + 8 * half, _mm512_castps512_ps256(z));
    _mm256_storeu_ps(S1 + 8 * half, _mm512_extractf32x8_ps(z, 1));
  }
}

// S[r * ldS + j] = scale * dot(qrows[r], k + j * ldk) for r < R <= 2, j < 16, 65 <= D <= 128.
template <class E>
EMO_T512 static void qk16_strided_avx512(const float* const* qrows, int R, const float* kf, int64_t ldk, int D,
                                         float scale, float* S, int ldS, const float* knext, int lin) {
  const typename E::T* k = reinterpret_cast<const typename E::T*>(kf);
  const int nc = (D + 15) / 16, tail = D % 16;
  const __mmask16 lm = tail ? __mmask16((1u << tail) - 1) : __mmask16(0xFFFF);
  const __m512 vs = _mm512_set1_ps(scale);
  const float* q1 = R > 1 ? qrows[1] : qrows[0];
  float* S1 = S + (R > 1 ? ldS : 0);
#define EMO_QK16(NR, NC) qk16_strided_tile<E, NR, NC>(qrows[0], q1, k, ldk, lm, vs, S, S1)
  if (R == 1 && knext) {  // decode_wide_pf
    const typename E::T* kn = knext == wide_pf_none ? nullptr : reinterpret_cast<const typename E::T*>(knext);
    if constexpr (sizeof(typename E::T) == 4) {  // decode_wide_lin (the driver: f32, D 113-128): f32 only
      if (nc == 8 && kn && lin)
        return with_lin(lin, [=](auto L) EMO_T512 __attribute__((always_inline)) {
          qk16_strided_tile<E, 1, 8, true, decltype(L)::value>(qrows[0], q1, k, ldk, lm, vs, S, S1, kn);
        });
    }
#define EMO_QK16H(NC) qk16_strided_tile<E, 1, NC, true>(qrows[0], q1, k, ldk, lm, vs, S, S1, kn)
    switch (nc) {
      case 5: EMO_QK16H(5); break;
      case 6: EMO_QK16H(6); break;
      case 7: EMO_QK16H(7); break;
      default: EMO_QK16H(8); break;
    }
#undef EMO_QK16H
    return;
  }
  if (R == 1) {
    switch (nc) {
      case 5: EMO_QK16(1, 5); break;
      case 6: EMO_QK16(1, 6); break;
      case 7: EMO_QK16(1, 7); break;
      default: EMO_QK16(1, 8); break;
    }
  } else {
    switch (nc) {
      case 5: EMO_QK16(2, 5); break;
      case 6: EMO_QK16(2, 6); break;
      case 7: EMO_QK16(2, 7); break;
      default: EMO_QK16(2, 8); break;
    }
  }
#undef EMO_QK16
}

// Kern::qk8 (decode_wide8): keys 8 * HALF .. + 7 of a 16-row sub-block, each in qk16_strided_tile's NR 1 accumulator
// of the same index (the others zero: reduce16_512's lane i is a sum of a[i]'s lanes alone, the same tree for every
// i), so each score is bit for bit qk16's; its 8 lanes stored.
template <class E, int NC, int HALF, int LIN = 0>
EMO_T512 static inline void qk8_tile(const float* q0, const typename E::T* k, int64_t ldk, __mmask16 lm, __m512 vs,
                                     float* S, const typename E::T* kn) {
  using T = typename E::T;
  __m512 acc[16];
  #pragma GCC unroll 16
  for (int t = 0; t < 16; ++t) acc[t] = _mm512_setzero_ps();
  const T* kh = k + 8 * HALF * ldk;
  qk8_accumulate<E, NC, LIN>(q0, lm, [&](int t) { return kh + t * ldk; }, 8 * HALF, kn, 0, ldk, acc);
  _mm512_mask_storeu_ps(S - 8 * HALF, __mmask16(0xFFu << (8 * HALF)), _mm512_mul_ps(reduce16_512(acc), vs));
}
template <class E>
EMO_T512 static void qk8_avx512(const float* q, const float* kf, int64_t ldk, int D, float scale, float* S, int half,
                                const float* knext, int lin) {
  const typename E::T* k = reinterpret_cast<const typename E::T*>(kf);
  const typename E::T* kn = knext == wide_pf_none ? nullptr : reinterpret_cast<const typename E::T*>(knext);
  const int nc = (D + 15) / 16, tail = D % 16;
  const __mmask16 lm = tail ? __mmask16((1u << tail) - 1) : __mmask16(0xFFFF);
  const __m512 vs = _mm512_set1_ps(scale);
  if constexpr (sizeof(typename E::T) == 4) {  // decode_wide_lin (the driver: f32, D 113-128): f32 only
    if (nc == 8 && kn && lin)
      return with_lin(lin, [=](auto L) EMO_T512 __attribute__((always_inline)) {
        constexpr int LIN = decltype(L)::value;
        half ? qk8_tile<E, 8, 1, LIN>(q, k, ldk, lm, vs, S, kn) : qk8_tile<E, 8, 0, LIN>(q, k, ldk, lm, vs, S, kn);
      });
  }
#define EMO_QK8(NC) \
  (half ? qk8_tile<E, NC, 1>(q, k, ldk, lm, vs, S, kn) : qk8_tile<E, NC, 0>(q, k, ldk, lm, vs, S, kn))
  switch (nc) {
    case 5: EMO_QK8(5); break;
    case 6: EMO_QK8(6); break;
    case 7: EMO_QK8(7); break;
    default: EMO_QK8(8); break;
  }
#undef EMO_QK8
}

const Kern kKernAvx512 = {qk_avx512, row_max_avx512, exp_sum_avx512, pv_avx512, k_transpose_avx512, qk_t_avx512,
                          qk_decode_avx512<KvF32>, qk16_strided_avx512<KvF32>, qk8_avx512<KvF32>,
                          pv2_avx512<KvF32>, qk_tiles_avx512<KvF32>, qk_t_tri_avx512};
// The decode driver's kernels reading a half cache in place (rows of 16-bit elements behind the
// float* rows; ld in elements): qk, qk_decode and pv widen as they load; the rest is f32 work on
// scratch. k_transpose / qk_t (the tiled path's, on f32 rows) are not used on half rows.
const Kern kKernAvx512F16 = {qk_avx512_t<KvF16>, row_max_avx512, exp_sum_avx512, pv_avx512_t<KvF16>, nullptr, nullptr,
                             qk_decode_avx512<KvF16>, qk16_strided_avx512<KvF16>, qk8_avx512<KvF16>,
                             pv2_avx512<KvF16>, qk_tiles_avx512<KvF16>};
const Kern kKernAvx512BF16 = {qk_avx512_t<KvBF16>, row_max_avx512, exp_sum_avx512, pv_avx512_t<KvBF16>, nullptr,
                              nullptr, qk_decode_avx512<KvBF16>, qk16_strided_avx512<KvBF16>,
                              qk8_avx512<KvBF16>, pv2_avx512<KvBF16>, qk_tiles_avx512<KvBF16>};

// ---------------------------------------------------------------------------- AVX512-BF16 decode
// Opt-in decode kernels on vdpbf16ps for a bf16 cache (attention_internal.h, decode_bf16dp): the
// cache's K / V are bf16 already (exact), q is rounded to bf16 (nearest even) once per piece and the
// softmax weights P once per block; each vdpbf16ps does two products per lane, so the FMA work
// of QK and PV halves, and QK's 16x16 transposes cover 32 head dims instead of 16 (a bf16 pair is
// one 32-bit element).
#define EMO_TBF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))

// qp[i] (i < ceil(D / 2)) = bf16 pair (q[2i], q[2i + 1]) rounded to nearest even, a missing odd
// last element 0; then zeros up to npairs.
EMO_TBF static void q_to_bf16_pairs(const float* q, int D, uint32_t* qp, int npairs) {
  uint16_t* w = reinterpret_cast<uint16_t*>(qp);
  int d = 0;
  for (; d < D; d += 16) {
    const int n = std::min(16, D - d);
    const __m512 x = _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), q + d);
    _mm256_mask_storeu_epi16(w + d, __mmask16((1u << n) - 1), (__m256i)_mm512_cvtneps_pbh(x));
  }
  for (d = D; d < 2 * npairs; ++d) w[d] = 0;
}

// NR query rows x 16 keys: each 32-dim chunk of the 16 bf16 key rows is a 16x16 transpose of
// 32-bit pairs, then one vdpbf16ps per (row, pair) with the row's q pair broadcast.
template <int NR>
EMO_TBF static inline void qk_decode_bf16dp_rows(const uint32_t* qp, int64_t ldqp, const uint16_t* const* kr, int D,
                                                 __m512 vs, float* S, int64_t ldS) {
  __m512 acc[NR], acc2[NR];  // two chains per row: vdpbf16ps' latency (order free: q is rounded anyway)
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) acc[r] = acc2[r] = _mm512_setzero_ps();
  for (int d0 = 0; d0 < D; d0 += 32) {
    const int w = std::min(32, D - d0);
    __m512 t[16];
    if (w == 32) {
      #pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) t[i] = _mm512_castsi512_ps(_mm512_loadu_si512(kr[i] + d0));
    } else {
      const __mmask32 m = __mmask32((uint64_t(1) << w) - 1);
      #pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) t[i] = _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(m, kr[i] + d0));
    }
    gemm_detail::transpose16_ps(t);  // t[e] = the pair of dims d0 + 2e, d0 + 2e + 1 of the 16 keys
    const uint32_t* qd = qp + d0 / 2;
    if (w == 32) {
      #pragma GCC unroll 8
      for (int e = 0; e < 16; e += 2) {
        #pragma GCC unroll 8
        for (int r = 0; r < NR; ++r)
          acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32(int(qd[r * ldqp + e])), (__m512bh)t[e]);
        #pragma GCC unroll 8
        for (int r = 0; r < NR; ++r)
          acc2[r] = _mm512_dpbf16_ps(acc2[r], (__m512bh)_mm512_set1_epi32(int(qd[r * ldqp + e + 1])), (__m512bh)t[e + 1]);
      }
    } else {
      for (int e = 0; e < (w + 1) / 2; ++e)
        #pragma GCC unroll 8
        for (int r = 0; r < NR; ++r)
          acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32(int(qd[r * ldqp + e])), (__m512bh)t[e]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) _mm512_storeu_ps(S + r * ldS, _mm512_mul_ps(_mm512_add_ps(acc[r], acc2[r]), vs));
}

// S[r * ldS + j] = scale * dot(bf16 q pairs of row r, key j) for r < R, j < 16 (kr: 16 bf16 rows;
// the caller repeats its last row past the tokens it has).
EMO_TBF static void qk_decode_bf16dp(const uint32_t* qp, int64_t ldqp, int R, const float* const* krf, int D,
                                     float scale, float* S, int64_t ldS) {
  const uint16_t* const* kr = reinterpret_cast<const uint16_t* const*>(krf);
  const __m512 vs = _mm512_set1_ps(scale);
  int r = 0;
  for (; r + 8 <= R; r += 8) qk_decode_bf16dp_rows<8>(qp + r * ldqp, ldqp, kr, D, vs, S + r * ldS, ldS);
  switch (R - r) {
    case 7: qk_decode_bf16dp_rows<7>(qp + r * ldqp, ldqp, kr, D, vs, S + r * ldS, ldS); break;
    case 6: qk_decode_bf16dp_rows<6>(qp + r * ldqp, ldqp, kr, D, vs, S + r * ldS, ldS); break;
    case 5: qk_decode_bf16dp_rows<5>(qp + r * ldqp, ldqp, kr, D, vs, S + r * ldS, ldS); break;
    case 4: qk_decode_bf16dp_rows<4>(qp + r * ldqp, ldqp, kr, D, vs, S + r * ldS, ldS); break;
    case 3: qk_decode_bf16dp_rows<3>(qp + r * ldqp, ldqp, kr, D, vs, S + r * ldS, ldS); break;
    case 2: qk_decode_bf16dp_rows<2>(qp + r * ldqp, ldqp, kr, D, vs, S + r * ldS, ldS); break;
    case 1: qk_decode_bf16dp_rows<1>(qp + r * ldqp, ldqp, kr, D, vs, S + r * ldS, ldS); break;
    default: break;
  }
}

// s[j] = exp(s[j] - m) for j < n rounded to bf16 (nearest even), written as a bf16 row over the
// start of s (the weights PV reads; zeros from n up to round_up(n, 32)); returns the sum of the
// rounded weights (each output is normalised by the weights it was summed with).
EMO_TBF static float exp_round_bf16(float* s, int n, float mx) {
  const __m512 vm = _mm512_set1_ps(mx);
  __m512 sum = _mm512_setzero_ps();
  uint16_t* w = reinterpret_cast<uint16_t*>(s);
  for (int i = 0; i < n; i += 16) {  // bf16 i is written at byte 2i, behind the float read at byte 4i
    const __mmask16 tm = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    const __m512 e = _mm512_maskz_mov_ps(tm, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tm, s + i), vm)));
    const __m256i b = (__m256i)_mm512_cvtneps_pbh(e);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w + i), b);  // lanes past n: 0
    sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16)));
  }
  for (int i = (n + 15) / 16 * 16; i < (n + 31) / 32 * 32; ++i) w[i] = 0;
  return _mm512_reduce_add_ps(sum);
}

// NR rows x NC 16-dim chunks of acc in registers; tokens in pairs: V rows j and j + 1 interleaved
// element by element (vpermt2w) so lane d holds the pair (v[j][d], v[j+1][d]), P's bf16 pair
// (P[j], P[j+1]) broadcast; an odd last token pairs with a zero row (and P's zero).
template <int NR, int NC>
EMO_TBF static inline void pv_bf16dp_tile(float* acc, int ldacc, const float* alpha, const uint16_t* P, int ldP,
                                          const uint16_t* v, int64_t ldv, int nb, __mmask16 lastmask) {
  const __m512i idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                       37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  __m512 a[NR][NC];
  #pragma GCC unroll 4
  for (int r = 0; r < NR; ++r) {
    const __m512 al = _mm512_set1_ps(alpha[r]);
    #pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) a[r][c] = _mm512_mul_ps(_mm512_load_ps(acc + r * ldacc + 16 * c), al);
  }
  for (int j = 0; j < nb; j += 2) {
    const uint16_t* v0 = v + int64_t(j) * ldv;
    const uint16_t* v1 = v0 + ldv;
    const bool pair = j + 1 < nb;
    __m512i vv[NC];
    #pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) {
      const __mmask16 m = c == NC - 1 ? lastmask : __mmask16(0xFFFF);
      const __m256i lo = _mm256_maskz_loadu_epi16(m, v0 + 16 * c);
      const __m256i hi = _mm256_maskz_loadu_epi16(pair ? m : __mmask16(0), v1 + 16 * c);
      vv[c] = _mm512_permutex2var_epi16(_mm512_castsi256_si512(lo), idx, _mm512_castsi256_si512(hi));
    }
    #pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      uint32_t pw;
      std::memcpy(&pw, P + int64_t(r) * ldP + j, 4);
      const __m512bh pr = (__m512bh)_mm512_set1_epi32(int(pw));
      #pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) a[r][c] = _mm512_dpbf16_ps(a[r][c], pr, (__m512bh)vv[c]);
    }
  }
  #pragma GCC unroll 4
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) _mm512_store_ps(acc + r * ldacc + 16 * c, a[r][c]);
}

template <int NR>
EMO_TBF static inline void pv_bf16dp_rows(float* acc, int ldacc, const float* alpha, const uint16_t* P, int ldP,
                                          const uint16_t* v, int64_t ldv, int nb, int nc, __mmask16 lastmask) {
  switch (nc) {
    case 1: pv_bf16dp_tile<NR, 1>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lastmask); break;
    case 2: pv_bf16dp_tile<NR, 2>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lastmask); break;
    case 3: pv_bf16dp_tile<NR, 3>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lastmask); break;
    default: pv_bf16dp_tile<NR, 4>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lastmask); break;
  }
}

// acc[r, :D] = alpha[r] * acc[r, :D] + sum_{j<nb} P[r, j] * v[j, :D] with P a bf16 row (ldP in
// bf16 elements, even j at a 4-byte step; zero at nb when nb is odd) and v bf16 rows (ld in elements).
EMO_TBF static void pv_bf16dp(float* acc, int ldacc, const float* alpha, int R, const uint16_t* P, int ldP,
                              const float* vf, int64_t ldv, int nb, int D) {
  const uint16_t* v = reinterpret_cast<const uint16_t*>(vf);
  const int nchunks = (D + 15) / 16, tail = D % 16;
  for (int c0 = 0; c0 < nchunks; c0 += 4) {
    const int nc = std::min(4, nchunks - c0);
    const __mmask16 lm = (c0 + nc == nchunks && tail) ? __mmask16((1u << tail) - 1) : __mmask16(0xFFFF);
    float* ac = acc + 16 * c0;
    const uint16_t* vc = v + 16 * c0;
    int r = 0;
    for (; r + 4 <= R; r += 4)
      pv_bf16dp_rows<4>(ac + r * ldacc, ldacc, alpha + r, P + r * ldP, ldP, vc, ldv, nb, nc, lm);
    switch (R - r) {
      case 3: pv_bf16dp_rows<3>(ac + r * ldacc, ldacc, alpha + r, P + r * ldP, ldP, vc, ldv, nb, nc, lm); break;
      case 2: pv_bf16dp_rows<2>(ac + r * ldacc, ldacc, alpha + r, P + r * ldP, ldP, vc, ldv, nb, nc, lm); break;
      case 1: pv_bf16dp_rows<1>(ac + r * ldacc, ldacc, alpha + r, P + r * ldP, ldP, vc, ldv, nb, nc, lm); break;
      default: break;
    }
  }
}

// ---------------------------------------------------------------------------- AVX2
alignas(32) const int32_t kMask8[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
EMO_T256 static inline __m256i tail_mask256(int n) {  // lanes < n set, 0 <= n <= 8
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask8 + 8 - n));
}

EMO_T256 static inline __m256 exp256(__m256 x) {
  const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(kExpLo), _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kExpLo)), _mm256_set1_ps(kExpHi));
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(kLn2Hi), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(kLn2Lo), x);
  __m256 y = _mm256_set1_ps(kP0);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(kP1));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(kP2));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(kP3));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(kP4));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(kP5));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(under, y);
}

// out lane i = horizontal sum of a[i], i < 8.
EMO_T256 static inline __m256 reduce8_256(const __m256* a) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

EMO_T256 static void qk_avx2(const float* const* qrows, int R, const float* k, int64_t ldk, int nb, int D,
                             float scale, float* S, int ldS) {
  const int nfull = D / 8, tail = D % 8;
  const __m256i tm = tail_mask256(tail);
  const __m256 vs = _mm256_set1_ps(scale);
  for (int j0 = 0; j0 < nb; j0 += 8) {
    const float* kp[8];
    #pragma GCC unroll 16
    for (int t = 0; t < 8; ++t) kp[t] = k + int64_t(std::min(j0 + t, nb - 1)) * ldk;
    int r = 0;
    for (; r + 1 < R; r += 2) {  // 2 rows x 4 keys per reduction
      const float* q0 = qrows[r];
      const float* q1 = qrows[r + 1];
      for (int half = 0; half < 2 && j0 + 4 * half < nb; ++half) {
        const float* const* kh = kp + 4 * half;
        __m256 acc[8];
        #pragma GCC unroll 16
        for (int t = 0; t < 8; ++t) acc[t] = _mm256_setzero_ps();
        int c = 0;
        for (; c < nfull * 8; c += 8) {
          const __m256 a0 = _mm256_loadu_ps(q0 + c), a1 = _mm256_loadu_ps(q1 + c);
          #pragma GCC unroll 4
          for (int t = 0; t < 4; ++t) {
            const __m256 kv = _mm256_loadu_ps(kh[t] + c);
            acc[t] = _mm256_fmadd_ps(a0, kv, acc[t]);
            acc[4 + t] = _mm256_fmadd_ps(a1, kv, acc[4 + t]);
          }
        }
        if (tail) {
          const __m256 a0 = _mm256_maskload_ps(q0 + c, tm), a1 = _mm256_maskload_ps(q1 + c, tm);
          #pragma GCC unroll 4
          for (int t = 0; t < 4; ++t) {
            const __m256 kv = _mm256_maskload_ps(kh[t] + c, tm);
            acc[t] = _mm256_fmadd_ps(a0, kv, acc[t]);
            acc[4 + t] = _mm256_fmadd_ps(a1, kv, acc[4 + t]);
          }
        }
        const __m256 z = _mm256_mul_ps(reduce8_256(acc), vs);
        _mm_storeu_ps(S + int64_t(r) * ldS + j0 + 4 * half, _mm256_castps256_ps128(z));
        _mm_storeu_ps(S + int64_t(r + 1) * ldS + j0 + 4 * half, _mm256_extractf128_ps(z, 1));
      }
    }
    if (r < R) {
      const float* q0 = qrows[r];
      __m256 acc[8];
      #pragma GCC unroll 16
      for (int t = 0; t < 8; ++t) acc[t] = _mm256_setzero_ps();
      int c = 0;
      for (; c < nfull * 8; c += 8) {
        const __m256 a0 = _mm256_loadu_ps(q0 + c);
        #pragma GCC unroll 8
        for (int t = 0; t < 8; ++t) acc[t] = _mm256_fmadd_ps(a0, _mm256_loadu_ps(kp[t] + c), acc[t]);
      }
      if (tail) {
        const __m256 a0 = _mm256_maskload_ps(q0 + c, tm);
        #pragma GCC unroll 8
        for (int t = 0; t < 8; ++t) acc[t] = _mm256_fmadd_ps(a0, _mm256_maskload_ps(kp[t] + c, tm), acc[t]);
      }
      _mm256_storeu_ps(S + int64_t(r) * ldS + j0, _mm256_mul_ps(reduce8_256(acc), vs));
    }
  }
}

EMO_T256 static float hmax256(__m256 m) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}
EMO_T256 static float hsum256(__m256 m) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}

EMO_T256 static float row_max_avx2(const float* s, int n) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  int i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(s + i));
  float r = hmax256(m);
  for (; i < n; ++i) r = std::max(r, s[i]);
  return r;
}

EMO_T256 static float exp_sum_avx2(float* s, int n, float mx) {
  const __m256 vm = _mm256_set1_ps(mx);
  __m256 sum = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + i), vm));
    _mm256_storeu_ps(s + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  if (i < n) {
    const __m256i tm = tail_mask256(n - i);
    const __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_maskload_ps(s + i, tm), vm)), _mm256_castsi256_ps(tm));
    _mm256_maskstore_ps(s + i, tm, e);
    sum = _mm256_add_ps(sum, e);
  }
  return hsum256(sum);
}

template <int NR, int NC>
EMO_T256 static inline void pv_tile_avx2(float* acc, int ldacc, const float* alpha, const float* P, int ldP,
                                         const float* v, int64_t ldv, int nb, __m256i lastmask) {
  __m256 a[NR][NC];
  #pragma GCC unroll 4
  for (int r = 0; r < NR; ++r) {
    const __m256 al = _mm256_set1_ps(alpha[r]);
    #pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) a[r][c] = _mm256_mul_ps(_mm256_load_ps(acc + r * ldacc + 8 * c), al);
  }
  for (int j = 0; j < nb; ++j) {
    const float* vj = v + int64_t(j) * ldv;
    __m256 vv[NC];
    #pragma GCC unroll 4
    for (int c = 0; c < NC; ++c)
      vv[c] = c == NC - 1 ? _mm256_maskload_ps(vj + 8 * c, lastmask) : _mm256_loadu_ps(vj + 8 * c);
    #pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      const __m256 pr = _mm256_broadcast_ss(P + r * ldP + j);
      #pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) a[r][c] = _mm256_fmadd_ps(pr, vv[c], a[r][c]);
    }
  }
  #pragma GCC unroll 4
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) _mm256_store_ps(acc + r * ldacc + 8 * c, a[r][c]);
}

template <int NR>
EMO_T256 static inline void pv_rows_avx2(float* acc, int ldacc, const float* alpha, const float* P, int ldP,
                                         const float* v, int64_t ldv, int nb, int nc, __m256i lastmask) {
  if (nc == 1)
    pv_tile_avx2<NR, 1>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lastmask);
  else
    pv_tile_avx2<NR, 2>(acc, ldacc, alpha, P, ldP, v, ldv, nb, lastmask);
}

EMO_T256 static void pv_avx2(float* acc, int ldacc, const float* alpha, int R, const float* P, int ldP,
                             const float* v, int64_t ldv, int nb, int D, PfCursor*) {
  const int nchunks = (D + 7) / 8, tail = D % 8;
  for (int c0 = 0; c0 < nchunks; c0 += 2) {
    const int nc = std::min(2, nchunks - c0);
    const __m256i lm = tail_mask256((c0 + nc == nchunks && tail) ? tail : 8);
    float* ac = acc + 8 * c0;
    const float* vc = v + 8 * c0;
    int r = 0;
    for (; r + 4 <= R; r += 4)
      pv_rows_avx2<4>(ac + r * ldacc, ldacc, alpha + r, P + r * ldP, ldP, vc, ldv, nb, nc, lm);
    switch (R - r) {
      case 3: pv_rows_avx2<3>(ac + r * ldacc, ldacc, alpha + r, P + r * ldP, ldP, vc, ldv, nb, nc, lm); break;
      case 2: pv_rows_avx2<2>(ac + r * ldacc, ldacc, alpha + r, P + r * ldP, ldP, vc, ldv, nb, nc, lm); break;
      case 1: pv_rows_avx2<1>(ac + r * ldacc, ldacc, alpha + r, P + r * ldP, ldP, vc, ldv, nb, nc, lm); break;
      default: break;
    }
  }
}

const Kern kKernAvx2 = {qk_avx2, row_max_avx2, exp_sum_avx2, pv_avx2, nullptr, nullptr, nullptr, nullptr};

// ---------------------------------------------------------------------------- tiled driver
// A work unit covers kv heads [g0, g0 + ng), queries [i0, i1) and, within each kv head's group,
// the query heads of chunk hch (only when a group has more than kMaxRows heads). Its rows are
// ordered (kv head, query, head): the rows of one kv head are contiguous, so the per-block inner
// kernels run once per kv head over a contiguous row range. Prefill uses one kv head per unit;
// decode and short chunks take many kv heads per unit and loop over them inside the kv-block loop,
// so the cache (token-major: [token][kv head][dim]) is read a whole token row at a time instead
// of one head-slice per page per head.
struct Plan {
  const AttentionParams* p;
  const float *q, *k, *v;
  float* out;
  float* lse;  // null, or [n_q, n_heads]: each row's log-sum-exp (training)
  float scale;
  int64_t group;       // query heads per kv head
  int64_t hc;          // query heads per kv head per unit (<= group)
  int64_t n_hchunks;   // group / hc rounded up
  int64_t tq;          // queries per unit
  int64_t n_qtiles;
  int64_t kvh;         // kv heads per unit
  int64_t n_gunits;    // n_kv_heads / kvh rounded up
  int64_t nsplit;      // kv pieces per unit (1 = no split)
  int D, Dp;           // head_dim, padded to 16
  int64_t n_base;      // units without the split
  float* part;         // nsplit > 1: per (base unit, split) partial results
  int64_t part_stride; // floats per partial: kMaxRows * (Dp + 2)
  half_rows::WidenFn widen;  // half KV cache: its rows widened to f32 scratch as read; null for f32
  // Prefill tile groups (attention_detail::prefill_fast): tpu > 1 runs tpu consecutive query tiles
  // of one (kv head, head chunk) as one unit (run_tile_group); tpu == 1: one tile a unit (run_unit).
  int64_t tpu = 1;
  int64_t n_tgroups = 0;  // n_qtiles / tpu rounded up
  int64_t n_units = 0;    // units of the call: groups, or n_base * nsplit
};

struct Unit {
  int64_t g0, ng, i0, i1, hoff, nh;  // kv heads, queries, head offset in group and count
  int rg;                             // rows per kv head: (i1 - i0) * nh
  int R;                              // rows: ng * rg
};

// The unit of kv-head unit gu, head chunk hch and query tile `tile`.
inline Unit tile_unit(const Plan& pl, int64_t gu, int64_t hch, int64_t tile) {
  const AttentionParams& p = *pl.p;
  Unit u;
  u.g0 = gu * pl.kvh;
  u.ng = std::min(pl.kvh, p.n_kv_heads - u.g0);
  u.i0 = tile * pl.tq;
  u.i1 = std::min(p.n_q, u.i0 + pl.tq);
  u.hoff = hch * pl.hc;
  u.nh = std::min(pl.hc, pl.group - u.hoff);
  u.rg = int((u.i1 - u.i0) * u.nh);
  u.R = int(u.ng) * u.rg;
  return u;
}

// Decodes base unit index b (heaviest causal tiles first).
inline Unit decode_unit(const Plan& pl, int64_t b) {
  const int64_t hch = b % pl.n_hchunks;
  b /= pl.n_hchunks;
  return tile_unit(pl, b % pl.n_gunits, hch, pl.n_qtiles - 1 - b / pl.n_gunits);
}

// Query index and head of row r of unit u.
inline void row_of(const Plan& pl, const Unit& u, int r, int64_t* i, int64_t* h) {
  const int gl = r / u.rg, rr = r % u.rg;
  *i = u.i0 + rr / u.nh;
  *h = (u.g0 + gl) * pl.group + u.hoff + rr % u.nh;
}

alignas(64) const float kOnes[kMaxRows] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

struct Scratch {
  float* S;      // kMaxRows * kBk
  float* acc;    // kMaxRows * Dp
  float* m;      // kMaxRows
  float* l;      // kMaxRows
  float* alpha;  // kMaxRows
  float* kp;     // kBk * Dp: packed K block
  float* vp;     // kBk * Dp: packed V block
};

// The online softmax of one kv block [j0, j0 + nb) over the R rows of S (kBk apart; row r sees
// lim[r] kv tokens): S becomes the block's weights P (zero where masked), m / l the rows' running
// max and weight sum, alpha the factor the rows' earlier P V sums take.
void online_softmax(const Kern& kern, float* S, int R, const int64_t* lim, int64_t j0, int nb, float* m, float* l,
                    float* alpha) {
  for (int r = 0; r < R; ++r) {
    float* s = S + r * kBk;
    const int nv = int(std::max<int64_t>(0, std::min<int64_t>(nb, lim[r] - j0)));
    if (nv == 0) {  // causally masked for this whole block
      alpha[r] = 1.0f;
      std::memset(s, 0, sizeof(float) * size_t(nb));
      continue;
    }
    const float bm = kern.row_max(s, nv);
    const float m_new = std::max(m[r], bm);
    const float a = m[r] == -INFINITY ? 0.0f : std::exp(m[r] - m_new);
    const float sum = kern.exp_sum(s, nv, m_new);
    if (nv < nb) std::memset(s + nv, 0, sizeof(float) * size_t(nb - nv));
    l[r] = l[r] * a + sum;
    m[r] = m_new;
    alpha[r] = a;
  }
}

// out (and lse) of the R rows of unit u from their P V sums acc (Dp apart), max m and sum l.
void write_rows(const Plan& pl, const Unit& u, const float* acc, const float* m, const float* l) {
  const AttentionParams& p = *pl.p;
  for (int r = 0; r < u.R; ++r) {
    // Every row saw at least its own position (causal) or all keys: l >= 1.
    assert(l[r] >= 1.0f);
    int64_t i, h;
    row_of(pl, u, r, &i, &h);
    float* o = pl.out + i * p.ldo + h * pl.D;
    const float inv = 1.0f / l[r];
    const float* a = acc + int64_t(r) * pl.Dp;
    for (int d = 0; d < pl.D; ++d) o[d] = a[d] * inv;
    if (pl.lse) pl.lse[i * p.n_heads + h] = m[r] + std::log(l[r]);
  }
}

void run_unit(const Plan& pl, const Kern& kern, const Scratch& sc, int64_t b, int64_t split) {
  const AttentionParams& p = *pl.p;
  const Unit u = decode_unit(pl, b);
  const int R = u.R, rg = u.rg;
  assert(R >= 1 && R <= kMaxRows);
  const float* qrows[kMaxRows];
  int64_t lim[kMaxRows];  // kv tokens row r sees
  for (int r = 0; r < R; ++r) {
    int64_t i, h;
    row_of(pl, u, r, &i, &h);
    qrows[r] = pl.q + i * p.ldq + h * pl.D;
    lim[r] = kv_visible(p, i);
  }
  // kv range of this unit: the tile's visible range, cut into nsplit block-aligned pieces.
  const int64_t kv_end_tile = kv_visible(p, u.i1 - 1);
  const int64_t nblocks = (kv_end_tile + kBk - 1) / kBk;
  const int64_t bps = (nblocks + pl.nsplit - 1) / pl.nsplit;
  const int64_t kv0 = std::min(kv_end_tile, split * bps * kBk);
  const int64_t kv1 = std::min(kv_end_tile, (split + 1) * bps * kBk);

  const int Dp = pl.Dp, D = pl.D;
  std::memset(sc.acc, 0, sizeof(float) * size_t(R) * size_t(Dp));
  for (int r = 0; r < R; ++r) { sc.m[r] = -INFINITY; sc.l[r] = 0.0f; }
  // Cache rows are ldk apart (often a multiple of 4 KiB: all map to one L1 set), and a block is
  // re-read by every row pair; with enough rows, copy it to contiguous scratch first.
  const bool pack = rg >= 8;
  // Several kv heads per unit (decode): walk each block in sub-blocks of 16 tokens across all
  // heads, so every token row (ng * D contiguous floats) is consumed within a short window; a
  // whole 64-token block per head would visit 64 rows a slice at a time, which measured ~2x
  // slower from DRAM on Zen 4. The softmax statistics stay per 64-token block.
  // Paged cache: a sub-block must lie inside one page (pages are multiples of 16 tokens and
  // blocks start at multiples of kBk), so pages shorter than kBk walk in sub-blocks of 16.
  const int sub = u.ng > 1 || (p.kv_block_size > 0 && p.kv_block_size % kBk != 0) ? 16 : kBk;
  // Many rows per kv head (prefill): transpose the K block once and skip the horizontal sums.
  const bool transposed = kern.qk_t != nullptr && rg >= 16 && sub == kBk;
  // ns rows of a K or V slice from `rows` (stride ld elements of the cache type) into `dst`
  // (stride Dp floats): copied, or widened from a half cache (exact).
  auto pack_rows = [&](const float* rows, int64_t ld, int ns, float* dst) {
    for (int j = 0; j < ns; ++j) {
      const float* r = kv_at(rows, j * ld, p);
      if (pl.widen) pl.widen(r, dst + int64_t(j) * Dp, D);
      else std::memcpy(dst + int64_t(j) * Dp, r, sizeof(float) * size_t(D));
    }
  };
  for (int64_t j0 = kv0; j0 < kv1; j0 += kBk) {
    const int nb = int(std::min<int64_t>(kBk, kv1 - j0));
    // S = scale * Q K^T for the block
    for (int s0 = 0; s0 < nb; s0 += sub) {
      const int ns = std::min(sub, nb - s0);
      for (int64_t gl = 0; gl < u.ng; ++gl) {
        const int r0 = int(gl) * rg;
        const float* kb = kv_at(kv_row(pl.k, p.k_blocks, p, j0 + s0, p.ldk), (u.g0 + gl) * D, p);
        int64_t ldkb = p.ldk;
        if (transposed) {  // sub == kBk here: one whole block
          if (pl.widen) {  // half cache: widened into the V scratch (free until this block's P V)
            pack_rows(kb, p.ldk, ns, sc.vp);
            kb = sc.vp;
            ldkb = Dp;
          }
          kern.k_transpose(kb, ldkb, ns, D, sc.kp);
          kern.qk_t(qrows + r0, rg, sc.kp, D, pl.scale, sc.S + r0 * kBk, kBk);
          continue;
        }
        if (pack || pl.widen) {
          pack_rows(kb, p.ldk, ns, sc.kp);
          kb = sc.kp;
          ldkb = Dp;
        }
        kern.qk(qrows + r0, rg, kb, ldkb, ns, D, pl.scale, sc.S + r0 * kBk + s0, kBk);
      }
    }
    online_softmax(kern, sc.S, R, lim, j0, nb, sc.m, sc.l, sc.alpha);
    // acc = alpha * acc + P V (the rescale rides on the first sub-block)
    for (int s0 = 0; s0 < nb; s0 += sub) {
      const int ns = std::min(sub, nb - s0);
      for (int64_t gl = 0; gl < u.ng; ++gl) {
        const int r0 = int(gl) * rg;
        const float* vb = kv_at(kv_row(pl.v, p.v_blocks, p, j0 + s0, p.ldv), (u.g0 + gl) * D, p);
        int64_t ldvb = p.ldv;
        if (pack || pl.widen) {
          pack_rows(vb, p.ldv, ns, sc.vp);
          vb = sc.vp;
          ldvb = Dp;
        }
        kern.pv(sc.acc + r0 * Dp, Dp, s0 == 0 ? sc.alpha + r0 : kOnes, rg, sc.S + r0 * kBk + s0, kBk, vb,
                ldvb, ns, D, nullptr);
      }
    }
  }

  if (pl.nsplit == 1) {
    write_rows(pl, u, sc.acc, sc.m, sc.l);
  } else {
    float* part = pl.part + (b * pl.nsplit + split) * pl.part_stride;
    std::memcpy(part, sc.m, sizeof(float) * size_t(R));
    std::memcpy(part + kMaxRows, sc.l, sizeof(float) * size_t(R));
    std::memcpy(part + 2 * kMaxRows, sc.acc, sizeof(float) * size_t(R) * size_t(Dp));
  }
}

// Per-thread scratch of run_tile_group, kept across calls (a prefill calls it once a layer and
// chunk) and zeroed when grown: the transposed K's columns past a block's tokens then hold zeros
// or earlier blocks' keys (finite; their scores are never read).
// A thread's grow-only scratch of floats, kept across calls (the pool's threads and a model's
// calling thread live long): one buffer per Tag, so scratches in use at once never share one;
// Zero: zero-filled when grown.
template <class Tag, bool Zero = false>
float* thread_scratch(size_t floats) {
  thread_local AlignedPtr<float> buf;
  thread_local size_t cap = 0;
  if (cap < floats) {
    buf = make_aligned<float>(floats);
    if constexpr (Zero) std::memset(buf.get(), 0, sizeof(float) * floats);
    cap = floats;
  }
  return buf.get();
}
float* tile_group_scratch(size_t floats) { return thread_scratch<struct TileGroupScratch, true>(floats); }
size_t tile_group_floats(int64_t tpu, int Dp) {  // a multiple of 16 floats: every part 64-byte aligned
  return size_t(kMaxRows) * kBk + 2 * size_t(kBk) * size_t(Dp) + size_t(tpu) * size_t(kMaxRows) * (size_t(Dp) + 16);
}

// Group unit b of a plan with tpu > 1 (make_plan): query tiles [t0, t1) of one kv head (ng == 1,
// f32 cache, no kv split, 64-token blocks), heaviest groups first. Each kv block's K is transposed
// and its V packed once for all the group's tiles (run_unit does both once per tile); every tile
// then runs run_unit's kernels on its own rows with the same arguments (the tile's own block
// length), so each output row has run_unit's bits.
void run_tile_group(const Plan& pl, const Kern& kern, int64_t b) {
  const AttentionParams& p = *pl.p;
  const int64_t hch = b % pl.n_hchunks;
  b /= pl.n_hchunks;
  const int64_t gu = b % pl.n_gunits;
  const int64_t grp = pl.n_tgroups - 1 - b / pl.n_gunits;
  const int64_t t0 = grp * pl.tpu, t1 = std::min(pl.n_qtiles, t0 + pl.tpu);
  const int nt = int(t1 - t0), Dp = pl.Dp, D = pl.D;
  float* const base = tile_group_scratch(tile_group_floats(pl.tpu, Dp));
  float* const S = base;
  float* const kp = S + kMaxRows * kBk;
  float* const vp = kp + int64_t(kBk) * Dp;
  float* const tiles = vp + int64_t(kBk) * Dp;
  const int64_t tile_floats = int64_t(kMaxRows) * (Dp + 16);
  struct Tile {
    Unit u;
    int64_t kv_end;  // kv tokens its last row sees
    float *acc, *m, *l, *alpha;
    const float* qrows[kMaxRows];
    int64_t lim[kMaxRows];
  };
  Tile tl[kPrefillTilesMax];
  int64_t kv_end = 0;
  for (int t = 0; t < nt; ++t) {
    Tile& T = tl[t];
    T.u = tile_unit(pl, gu, hch, t0 + t);
    assert(T.u.ng == 1 && T.u.R <= kMaxRows);
    T.acc = tiles + t * tile_floats;
    T.m = T.acc + int64_t(kMaxRows) * Dp;
    T.l = T.m + kMaxRows;
    T.alpha = T.l + kMaxRows;
    for (int r = 0; r < T.u.R; ++r) {
      int64_t i, h;
      row_of(pl, T.u, r, &i, &h);
      T.qrows[r] = pl.q + i * p.ldq + h * D;
      T.lim[r] = kv_visible(p, i);
      T.m[r] = -INFINITY;
      T.l[r] = 0.0f;
    }
    std::memset(T.acc, 0, sizeof(float) * size_t(T.u.R) * size_t(Dp));
    T.kv_end = kv_visible(p, T.u.i1 - 1);
    kv_end = std::max(kv_end, T.kv_end);
  }
  const int64_t g0 = tl[0].u.g0;
  // Causal diagonal blocks (attention_detail::prefill_causal_skip): row r of a tile sees
  // nv[r] = clamp(lim[r] - j0, 0, nb) of the block's keys (non-decreasing in r: rows run by query).
  // Q K^T: qk_t_tri computes only the 16-key columns a 6-row group's last row sees; the scores it
  // leaves out are at j >= nv[r], which online_softmax never reads (row_max / exp_sum take s[0, nv),
  // then s[nv, nb) is set to 0). P V: each 4-row group (pv's own tile; its rows' sums are pv's
  // element for element: every acc element is alpha * acc, then one FMA a key in key order, which
  // no row grouping changes) runs over the keys j < nbg = its last row's nv only. What is left out
  // is, for every row of the group, the tail j >= nbg of its FMA chain, where P[r][j] = +0 (set by
  // online_softmax); the FMAs kept are the same operations in the same order. fma(+0, v, a) = a for
  // finite v unless a = -0 (then +0 where v >= 0): a running sum is -0 only when every product so
  // far rounded to zero and the last nonzero one was negative and under 2^-150, which a row's own
  // max key (weight exactly 1) rules out unless its V row is zero or tiny. So the same bits for
  // finite V except the sign of a zero (a V entry of inf / NaN under the mask gave NaN before, and
  // nothing now).
  const bool tri = attention_detail::prefill_causal_skip() && kern.qk_t_tri != nullptr && p.causal;
  // one tile's block: S, its softmax, acc += P V (the tile's own block length nb, as run_unit's)
  auto tile_block = [&](Tile& T, int64_t j0, bool transposed, const float* kb) {
    const int nb = int(std::min<int64_t>(kBk, T.kv_end - j0)), rg = T.u.rg;
    // diagonal: its first row sees fewer than nb keys
    if (tri && T.lim[0] - j0 < nb) {
      int nv[kMaxRows];
      for (int r = 0; r < rg; ++r) nv[r] = int(std::max<int64_t>(0, std::min<int64_t>(nb, T.lim[r] - j0)));
      if (transposed) kern.qk_t_tri(T.qrows, rg, kp, D, pl.scale, S, kBk, nv);
      else kern.qk(T.qrows, rg, kb, p.ldk, nb, D, pl.scale, S, kBk);
      online_softmax(kern, S, rg, T.lim, j0, nb, T.m, T.l, T.alpha);
      for (int r = 0; r < rg; r += 4) {
        const int n = std::min(4, rg - r);
        kern.pv(T.acc + int64_t(r) * Dp, Dp, T.alpha + r, n, S + int64_t(r) * kBk, kBk, vp, Dp, nv[r + n - 1], D,
                nullptr);
      }
      attention_detail::count_work(&attention_detail::WorkSlot::causal_skip_blocks);
      return;
    }
    if (transposed) kern.qk_t(T.qrows, rg, kp, D, pl.scale, S, kBk);
    else kern.qk(T.qrows, rg, kb, p.ldk, nb, D, pl.scale, S, kBk);
    online_softmax(kern, S, rg, T.lim, j0, nb, T.m, T.l, T.alpha);
    kern.pv(T.acc, Dp, T.alpha, rg, S, kBk, vp, Dp, nb, D, nullptr);
  };
  for (int64_t j0 = 0; j0 < kv_end; j0 += kBk) {
    const int nb = int(std::min<int64_t>(kBk, kv_end - j0));
    const float* kb = kv_row(pl.k, p.k_blocks, p, j0, p.ldk) + g0 * D;
    const float* vb = kv_row(pl.v, p.v_blocks, p, j0, p.ldv) + g0 * D;
    for (int j = 0; j < nb; ++j) std::memcpy(vp + int64_t(j) * Dp, vb + j * p.ldv, sizeof(float) * size_t(D));
    // tiles of fewer than 16 rows take run_unit's untransposed Q K^T (on the cache's rows: the
    // same arithmetic as on packed ones), before kp holds this block's transpose
    bool any_wide = false;
    for (int t = 0; t < nt; ++t) {
      if (tl[t].kv_end <= j0) continue;
      if (tl[t].u.rg >= 16) any_wide = true;
      else tile_block(tl[t], j0, false, kb);
    }
    if (!any_wide) continue;
    kern.k_transpose(kb, p.ldk, nb, D, kp);
    for (int t = 0; t < nt; ++t)
      if (tl[t].kv_end > j0 && tl[t].u.rg >= 16) tile_block(tl[t], j0, true, kb);
  }
  for (int t = 0; t < nt; ++t) write_rows(pl, tl[t].u, tl[t].acc, tl[t].m, tl[t].l);
}

// Combines the nsplit partials of base unit b into out.
void merge_unit(const Plan& pl, int64_t b) {
  const AttentionParams& p = *pl.p;
  const Unit u = decode_unit(pl, b);
  const float* base = pl.part + b * pl.nsplit * pl.part_stride;
  for (int r = 0; r < u.R; ++r) {
    float M = -INFINITY;
    for (int64_t s = 0; s < pl.nsplit; ++s) M = std::max(M, base[s * pl.part_stride + r]);
    assert(M > -INFINITY);  // split 0 always holds kv token 0, which every row sees
    int64_t i, h;
    row_of(pl, u, r, &i, &h);
    float* o = pl.out + i * p.ldo + h * pl.D;
    float L = 0;
    for (int d = 0; d < pl.D; ++d) o[d] = 0.0f;
    for (int64_t s = 0; s < pl.nsplit; ++s) {
      const float* ps = base + s * pl.part_stride;
      const float ms = ps[r];
      if (ms == -INFINITY) continue;  // this piece lies entirely after the row's position
      const float w = std::exp(ms - M);
      L += w * ps[kMaxRows + r];
      const float* a = ps + 2 * kMaxRows + int64_t(r) * pl.Dp;
      for (int d = 0; d < pl.D; ++d) o[d] += w * a[d];
    }
    assert(L >= 1.0f);
    const float inv = 1.0f / L;
    for (int d = 0; d < pl.D; ++d) o[d] *= inv;
    if (pl.lse) pl.lse[i * p.n_heads + h] = M + std::log(L);
  }
}

// The plan of one call (how its rows are cut into units) for a pool of nth threads; `part`
// (split-KV partials) is left to the caller.
Plan make_plan(const float* q, const float* k, const float* v, float* out, float* lse, const AttentionParams& p,
               const Resolved& rs, int nth) {
  Plan pl;
  pl.p = &p;
  pl.q = q; pl.k = k; pl.v = v; pl.out = out; pl.lse = lse;
  pl.scale = rs.scale;
  pl.group = rs.group;
  pl.hc = std::min<int64_t>(rs.group, kMaxRows);
  pl.n_hchunks = (rs.group + pl.hc - 1) / pl.hc;
  pl.tq = std::min<int64_t>(p.n_q, std::max<int64_t>(1, kMaxRows / pl.hc));
  pl.n_qtiles = (p.n_q + pl.tq - 1) / pl.tq;
  pl.kvh = std::max<int64_t>(1, std::min<int64_t>(p.n_kv_heads, kMaxRows / (pl.tq * pl.hc)));
  const int64_t max_blocks = (kv_visible(p, p.n_q - 1) + kBk - 1) / kBk;
  if (nth > 1 && max_blocks < 4) {  // too short to split the kv range: spread kv heads instead
    const int64_t per = (p.n_kv_heads + nth - 1) / nth;
    pl.kvh = std::max<int64_t>(1, std::min(pl.kvh, per));
  }
  pl.n_gunits = (p.n_kv_heads + pl.kvh - 1) / pl.kvh;
  pl.D = int(p.head_dim);
  pl.Dp = int((p.head_dim + 15) / 16 * 16);
  pl.n_base = pl.n_gunits * pl.n_qtiles * pl.n_hchunks;

  // Split-KV when the units cannot keep the threads busy (decode, chunks over a long cache).
  pl.nsplit = 1;
  const int64_t want = 4 * int64_t(nth);
  if (nth > 1 && pl.n_base < want && max_blocks >= 4)
    pl.nsplit = std::max<int64_t>(1, std::min<int64_t>((want + pl.n_base - 1) / pl.n_base, max_blocks / 2));
  pl.part_stride = int64_t(kMaxRows) * (pl.Dp + 2);
  pl.part = nullptr;
  pl.widen = p.kv_dtype == DType::F32 ? nullptr : half_rows::widen_fn(p.kv_dtype);
  // Prefill: consecutive query tiles of one kv head grouped into a unit (run_tile_group) where
  // run_unit would transpose every K block (AVX-512, one kv head a unit, whole 64-token blocks, f32
  // cache, no kv split), as many as leave at least 4 units a thread.
  pl.tpu = 1;
  if (attention_detail::prefill_fast() && isa_active() >= Isa::Avx512 && pl.nsplit == 1 && pl.kvh == 1 &&
      !pl.widen && (p.kv_block_size == 0 || p.kv_block_size % kBk == 0) && pl.n_qtiles > 1 && pl.tq * pl.hc >= 16) {
    const int64_t per_tile = pl.n_gunits * pl.n_hchunks;
    pl.tpu = std::max<int64_t>(1, std::min({pl.n_qtiles, kPrefillTilesMax, pl.n_qtiles * per_tile / (4 * int64_t(nth))}));
  }
  pl.n_tgroups = (pl.n_qtiles + pl.tpu - 1) / pl.tpu;
  pl.n_units = pl.tpu > 1 ? pl.n_gunits * pl.n_hchunks * pl.n_tgroups : pl.n_base * pl.nsplit;
  return pl;
}

// Per-thread scratch of calls whose head_dim pads to at most max_Dp floats.
size_t scratch_floats(int max_Dp) {  // a multiple of 16 floats: every part stays 64-byte aligned
  return size_t(kMaxRows) * (kBk + size_t(max_Dp) + 3) + 2 * size_t(kBk) * size_t(max_Dp);
}
Scratch scratch_at(float* base, int Dp) {
  Scratch sc;
  sc.S = base;
  sc.acc = sc.S + kMaxRows * kBk;
  sc.m = sc.acc + size_t(kMaxRows) * size_t(Dp);
  sc.l = sc.m + kMaxRows;
  sc.alpha = sc.l + kMaxRows;
  sc.kp = sc.alpha + kMaxRows;
  sc.vp = sc.kp + size_t(kBk) * size_t(Dp);
  return sc;
}

// Runs the units of several plans (one call, or a batch of independent calls) in one thread-pool
// dispatch (and one more for the split-KV merges): each unit computes exactly what it computes
// when its plan runs alone, so a batch is bit for bit the calls one by one.
void run_plans(const Kern& kern, Plan* plans, int64_t n_plans, ThreadPool* pool) {
  const int nth = pool ? std::max(1, pool->size()) : 1;
  int max_Dp = 16;
  int64_t part_floats = 0;
  std::vector<int64_t> first_unit(size_t(n_plans) + 1, 0), first_merge(size_t(n_plans) + 1, 0);
  for (int64_t i = 0; i < n_plans; ++i) {
    const Plan& pl = plans[i];
    max_Dp = std::max(max_Dp, pl.Dp);
    if (pl.nsplit > 1) part_floats += pl.n_base * pl.nsplit * pl.part_stride;
    first_unit[size_t(i) + 1] = first_unit[size_t(i)] + pl.n_units;
    first_merge[size_t(i) + 1] = first_merge[size_t(i)] + (pl.nsplit > 1 ? pl.n_base : 0);
  }
  AlignedPtr<float> part;
  if (part_floats > 0) {
    part = make_aligned<float>(size_t(part_floats));
    float* at = part.get();
    for (int64_t i = 0; i < n_plans; ++i)
      if (plans[i].nsplit > 1) {
        plans[i].part = at;
        at += plans[i].n_base * plans[i].nsplit * plans[i].part_stride;
      }
  }
  // Per-thread scratch, allocated once for the call; the packed-K area zeroed once (transposed K:
  // the junk beyond a block's tokens stays finite).
  // (plans of different head sizes place it differently: then all of the scratch). Only tile
  // groups: none (run_tile_group keeps its own per thread).
  const bool any_tile_units = std::any_of(plans, plans + n_plans, [](const Plan& pl) { return pl.tpu == 1; });
  const size_t per_thread = any_tile_units ? scratch_floats(max_Dp) : 0;
  AlignedPtr<float> scratch = any_tile_units ? make_aligned<float>(per_thread * size_t(nth)) : AlignedPtr<float>();
  const bool one_Dp = std::all_of(plans, plans + n_plans, [&](const Plan& pl) { return pl.Dp == max_Dp; });
  for (int t = 0; t < nth && any_tile_units; ++t) {
    float* base = scratch.get() + per_thread * size_t(t);
    if (one_Dp) std::memset(scratch_at(base, max_Dp).kp, 0, sizeof(float) * size_t(kBk) * size_t(max_Dp));
    else std::memset(base, 0, sizeof(float) * per_thread);
  }
  // the plan of global unit u (first_unit is ascending)
  auto plan_of = [&](const std::vector<int64_t>& first, int64_t u) {
    return int64_t(std::upper_bound(first.begin(), first.end(), u) - first.begin()) - 1;
  };
  const int64_t n_units = first_unit[size_t(n_plans)], n_merges = first_merge[size_t(n_plans)];
  if (nth == 1 || n_units == 1) {
    float* base = scratch.get();
    for (int64_t i = 0; i < n_plans; ++i) {
      const Plan& pl = plans[i];
      const Scratch sc = base ? scratch_at(base, pl.Dp) : Scratch{};
      for (int64_t u = 0; u < pl.n_units; ++u) {
        if (pl.tpu > 1) run_tile_group(pl, kern, u);
        else run_unit(pl, kern, sc, u / pl.nsplit, u % pl.nsplit);
        attention_detail::count_work(&attention_detail::WorkSlot::tiled_units);
      }
    }
  } else {
    std::atomic<int64_t> next{0};
    auto units = [&](int ith) {
      float* base = any_tile_units ? scratch.get() + per_thread * size_t(ith) : nullptr;
      int64_t i = 0;  // the plan of the previous unit: units are taken in ascending order
      for (int64_t u; (u = next.fetch_add(1, std::memory_order_relaxed)) < n_units;) {
        pool_late_point();  // tests: a worker preempted holding its unit
        if (u >= first_unit[size_t(i) + 1]) i = plan_of(first_unit, u);
        const Plan& pl = plans[i];
        const int64_t lu = u - first_unit[size_t(i)];
        if (pl.tpu > 1) run_tile_group(pl, kern, lu);
        else run_unit(pl, kern, scratch_at(base, pl.Dp), lu / pl.nsplit, lu % pl.nsplit);
        attention_detail::count_work(&attention_detail::WorkSlot::tiled_units);
      }
    };
    // pool->run jobs, not run_dynamic's claimed work: removed after two quiet 7B decode A/Bs
    // (session 18) at 0.975 / 0.966 (see run_decode)
    pool->run([&](int ith, int) { units(ith); });
  }
  if (n_merges == 0) return;
  auto merge = [&](int64_t g) {
    const int64_t i = plan_of(first_merge, g);
    merge_unit(plans[i], g - first_merge[size_t(i)]);
    attention_detail::count_work(&attention_detail::WorkSlot::tiled_merges);
  };
  if (nth == 1) {
    for (int64_t g = 0; g < n_merges; ++g) merge(g);
    return;
  }
  std::atomic<int64_t> nb{0};
  auto merges = [&] {
    for (int64_t g; (g = nb.fetch_add(1, std::memory_order_relaxed)) < n_merges;) {
      pool_late_point();
      merge(g);
    }
  };
  pool->run([&](int, int) { merges(); });
}

// ---------------------------------------------------------------------------- decode driver
// One decode call (n_q == 1) cut into pieces of kv tokens (attention_internal.h).
constexpr int64_t kDecodePackSpan = 256;  // floats of a token row (all kv heads) packed whole per sub-block
struct DecodeItem {
  const AttentionParams* p;
  const float* q;
  const float* k;
  const float* v;
  float* out;
  float* lse;
  float scale;
  int64_t group;
  int D, Dp;
  int64_t nvis;       // visible kv tokens
  int64_t piece_len;  // tokens per piece (multiple of 16; the last piece may be shorter)
  int64_t n_pieces;
  float* part;        // n_pieces > 1: per piece, n_heads x (2 + Dp): m, l, then acc rows
  std::atomic<int64_t>* done;  // pieces finished (the last one merges)
  half_rows::WidenFn widen;    // half KV cache: rows (wide: per kv head slice) widened to scratch; null: f32
  const Kern* inplace;         // non-null: the kernels reading the cache's rows in place (its type)
  bool bf16dp;                 // bf16 cache on vdpbf16ps: q and P rounded to bf16 (decode_bf16dp)
  bool ktiles;                 // K in 16-token tiles (decode_k_tiles): read once here, for every piece
  bool lean;                   // the narrow rows' lean piece (decode_lean): read once here, for every piece
  bool pv_chunks;              // pv2 by 16-float chunks across the token rows (decode_pv_chunks): read once here
  bool wide_pf;                // qk16 / pv2 8 rows at a time, the next sub-block prefetched (decode_wide_pf): read once here
  bool wide8;                  // the wide rows' sub-blocks of 8 rows (decode_wide8): read once here
  int wide_lin;                // decode_wide_pf's lines in address order, every wide_lin-th (decode_wide_lin): read once here
};


// Floats per token the decode driver's scratch holds: a whole token row up to kDecodePackSpan
// floats (copied or widened), or one kv head's slice (Dp floats) of a wide half row.
int64_t decode_pack_span(const DecodeItem& it) {
  return it.inplace ? 0 : std::max<int64_t>(kDecodePackSpan, it.widen ? it.Dp : 0);
}

// The kernels that read K/V rows in place (AVX-512: f32, f16, bf16 caches), or null: AVX2 and
// set_decode_inplace(false), where narrow rows are packed (half rows widened) into scratch.
// Measured (TinyLlama shape kv=512, one thread, in place / packed interleaved in one process,
// load 11-19): narrow rows read in place straight by the kernels were slower from memory than
// packed (f32 101-115 us against 92-95; software prefetch 0-64 rows ahead, t0 or t1, changed
// nothing), the copy's sequential stream keeping more misses in flight than the kernels' strided
// loads; with a load sweep of each 16-row sub-block first (sweep_rows: the copy's access pattern
// without its stores) f32 in place takes 73 us against 94-95 cold and 47.7 against 51.7 hot,
// bf16 66 against 83. Wide rows (7B) are read in place on the hardware prefetchers (a sweep there
// was slower; so was an emitted software prefetch of the next rows); a half one
// is now widened by the kernels' loads instead of one kv
// head's slice at a time into scratch.
const Kern* decode_inplace_kern(Isa isa, DType t) {
  if (isa < Isa::Avx512 || !attention_detail::decode_inplace_enabled()) return nullptr;
  return t == DType::F16 ? &kKernAvx512F16 : t == DType::BF16 ? &kKernAvx512BF16 : &kKernAvx512;
}

}  // namespace
namespace attention_detail {
bool decode_qk16_applies(const AttentionParams& p) {
  const int64_t G = p.n_heads / p.n_kv_heads;
  return isa_active() >= Isa::Avx512 && decode_inplace_enabled() && p.n_kv_heads * p.head_dim > kDecodePackSpan &&
         G <= 2 && p.head_dim > 64 && p.head_dim <= 128 && decode_qk_wide();
}
bool decode_pv2_applies(const AttentionParams& p) {
  return p.n_heads == p.n_kv_heads && p.n_kv_heads >= 2 && decode_qk16_applies(p) && decode_pv_pairs();
}
bool decode_wide_pf_applies(const AttentionParams& p) {
  return decode_qk16_applies(p) && p.n_heads == p.n_kv_heads && wide_takes(decode_wide_pf_mode(), p);
}
bool decode_wide8_applies(const AttentionParams& p) {
  return decode_pv2_applies(p) && p.n_kv_heads % 2 == 0 && wide_takes(decode_wide8_mode(), p);
}
bool decode_wide_lin_applies(const AttentionParams& p) {
  return decode_wide_pf_applies(p) && wide_lin_shape(p) && decode_wide_lin() != 0;
}
bool decode_pipeline_applies(const AttentionParams& p) {
  return isa_active() >= Isa::Avx512 && decode_inplace_enabled() && p.n_kv_heads * p.head_dim <= kDecodePackSpan &&
         p.n_heads / p.n_kv_heads >= 4 && !decode_bf16dp_applies(p) && decode_pipeline();
}
bool decode_k_tiles_applies(const AttentionParams& p) {
  return isa_active() >= Isa::Avx512 && decode_inplace_enabled() && p.n_q == 1 && p.n_heads <= kDecodeMaxHeads &&
         p.n_kv_heads * p.head_dim <= kDecodePackSpan && p.ldk == p.n_kv_heads * p.head_dim &&
         p.n_heads / p.n_kv_heads >= 4 && !decode_bf16dp_applies(p) && decode_split_enabled();
}
DecodeSubBlock decode_pipeline_next(int64_t j1, int64_t b0, int64_t b1, int64_t s0, bool is_v) {
  DecodeSubBlock nx;
  if (s0 + 16 < b1) {  // the next 16 rows of the same block and tensor
    nx.s = s0 + 16;
    nx.ns = int(std::min<int64_t>(16, b1 - nx.s));
    nx.v = is_v;
  } else if (!is_v) {  // after the block's last K rows, its first V rows
    nx.s = b0;
    nx.ns = int(std::min<int64_t>(16, b1 - b0));
    nx.v = true;
  } else if (b1 < j1) {  // after its last V rows, the next block's first K rows
    nx.s = b1;
    nx.ns = int(std::min<int64_t>(16, j1 - b1));
    nx.v = false;
  }
  return nx;
}
std::vector<uintptr_t> decode_pipeline_lines(const void* row, int64_t row_bytes, int64_t span_bytes, int ns,
                                             int per_step) {
  std::vector<uintptr_t> out;
  PfCursor c;
  c.start(static_cast<const char*>(row), row_bytes, span_bytes, ns);
  while (c.rows_left > 0) pf_step<true>(&c, per_step, &out);
  return out;
}
}  // namespace attention_detail
namespace {

bool decode_applies(const AttentionParams& p) {
  return p.n_q == 1 && p.n_heads <= attention_detail::kDecodeMaxHeads && attention_detail::decode_split_enabled();
}

// The piece plan depends only on the call and the thread count, never on the rest of a batch: a
// batch's outputs are bit for bit the calls' alone.
DecodeItem make_decode_item(const float* q, const float* k, const float* v, float* out, float* lse,
                            const AttentionParams& p, const Resolved& rs, int nth, Isa isa) {
  DecodeItem it{};
  it.p = &p;
  it.q = q; it.k = k; it.v = v; it.out = out; it.lse = lse;
  it.scale = rs.scale;
  it.group = rs.group;
  it.D = int(p.head_dim);
  it.Dp = int((p.head_dim + 15) / 16 * 16);
  it.nvis = kv_visible(p, 0);
  const int64_t n_sub = (it.nvis + 15) / 16;
  const int64_t piece_max = attention_detail::decode_piece_max();
  int64_t pieces = (it.nvis + piece_max - 1) / piece_max;
  pieces = (pieces + nth - 1) / nth * nth;  // whole rounds of the threads
  pieces = std::min(pieces, n_sub);
  it.piece_len = (n_sub + pieces - 1) / pieces * 16;
  it.n_pieces = (it.nvis + it.piece_len - 1) / it.piece_len;
  it.widen = p.kv_dtype == DType::F32 ? nullptr : half_rows::widen_fn(p.kv_dtype);
  it.inplace = decode_inplace_kern(isa, p.kv_dtype);
  it.bf16dp = it.inplace != nullptr && p.kv_dtype == DType::BF16 && attention_detail::decode_bf16dp_applies(p);
  // Read once on the caller (the pieces on the pool threads read it.ktiles, never the switch: a
  // setter between validate() and the pieces would otherwise tear the call) and checked here again.
  it.ktiles = attention_detail::decode_k_tiles();
  it.lean = attention_detail::decode_lean();
  it.pv_chunks = attention_detail::decode_pv_chunks();
  it.wide_pf = attention_detail::wide_takes(attention_detail::decode_wide_pf_mode(), p);
  it.wide8 = attention_detail::wide_takes(attention_detail::decode_wide8_mode(), p);
  it.wide_lin = attention_detail::decode_wide_lin();
  EMOLLM_CHECK_ARG(!it.ktiles || attention_detail::decode_k_tiles_applies(p),
                   "attention: decode_k_tiles (K in 16-token tiles) on a call the prototype does not take");
  return it;
}

int64_t decode_part_floats(const DecodeItem& it) {
  return it.n_pieces > 1 ? it.n_pieces * it.p->n_heads * (2 + it.Dp) : 0;
}

// out (and lse) of item `it` from its pieces' partials, pieces in order.
void merge_decode(const DecodeItem& it) {
  const AttentionParams& p = *it.p;
  const int64_t H = p.n_heads, stride = H * (2 + it.Dp);
  for (int64_t h = 0; h < H; ++h) {
    float M = -INFINITY;
    for (int64_t s = 0; s < it.n_pieces; ++s) M = std::max(M, it.part[s * stride + h]);
    float* o = it.out + h * it.D;
    for (int d = 0; d < it.D; ++d) o[d] = 0.0f;
    float L = 0;
    for (int64_t s = 0; s < it.n_pieces; ++s) {
      const float* ps = it.part + s * stride;
      const float w = std::exp(ps[h] - M);  // every piece holds visible tokens: ps[h] is finite
      L += w * ps[H + h];
      const float* a = ps + 2 * H + h * it.Dp;
      for (int d = 0; d < it.D; ++d) o[d] += w * a[d];
    }
    assert(L >= 1.0f);
    const float inv = 1.0f / L;
    for (int d = 0; d < it.D; ++d) o[d] *= inv;
    if (it.lse) it.lse[h] = M + std::log(L);
  }
}

// One load from every 64-byte line of ns rows (row_bytes apart, span_bytes each), in order: the
// rows come in as one sequential stream (the hardware prefetchers follow it, many misses in flight)
// before the kernels read them, across kv heads, with strided loads. What the packing copy did for
// the access pattern, without its stores (see decode_inplace_kern).
thread_local unsigned char sweep_sink;  // keeps the loads
inline void sweep_rows(const float* rows, int64_t row_bytes, int ns, int64_t span_bytes) {
  unsigned char x = 0;
  const unsigned char* r = reinterpret_cast<const unsigned char*>(rows);
  for (int t = 0; t < ns; ++t, r += row_bytes) {
    for (int64_t b = 0; b < span_bytes; b += 64) x ^= r[b];
    x ^= r[span_bytes - 1];  // the last line of a row that does not start on a line
  }
  sweep_sink ^= x;
}

// Element type f32 for kv_at on rows that are f32 whatever the cache's type (packed / widened scratch).
const AttentionParams kF32Rows{};

// merge_decode's vector part for one head (decode_lean, D a multiple of 16): o = (((0 + w0 a0) + w1 a1) ...) * inv,
// each product and sum rounded on its own as the scalar loop's (the _round forms: GCC cannot contract them into FMAs).
EMO_T512 static void merge_head_avx512(float* o, const float* a0, int64_t stride, int64_t n, const float* w, float inv,
                                       int D) {
  for (int d = 0; d < D; d += 16) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t s = 0; s < n; ++s)
      acc = _mm512_add_round_ps(acc, _mm512_mul_round_ps(_mm512_set1_ps(w[s]), _mm512_loadu_ps(a0 + s * stride + d),
                                                         _MM_FROUND_CUR_DIRECTION),
                                _MM_FROUND_CUR_DIRECTION);
    _mm512_storeu_ps(o + d, _mm512_mul_round_ps(acc, _mm512_set1_ps(inv), _MM_FROUND_CUR_DIRECTION));
  }
}
// merge_decode with merge_head_avx512 (decode_lean): the same weights, sums and products in the same order.
void merge_decode_lean(const DecodeItem& it) {
  const AttentionParams& p = *it.p;
  const int64_t H = p.n_heads, stride = H * (2 + it.Dp);
  float w[64];
  for (int64_t h = 0; h < H; ++h) {
    float M = -INFINITY;
    for (int64_t s = 0; s < it.n_pieces; ++s) M = std::max(M, it.part[s * stride + h]);
    float L = 0;
    for (int64_t s = 0; s < it.n_pieces; ++s) {
      const float* ps = it.part + s * stride;
      w[s] = std::exp(ps[h] - M);
      L += w[s] * ps[H + h];
    }
    assert(L >= 1.0f);
    merge_head_avx512(it.out + h * it.D, it.part + 2 * H + h * it.Dp, stride, it.n_pieces, w, 1.0f / L, it.D);
    if (it.lse) it.lse[h] = M + std::log(L);
  }
}

// The end of piece `piece` of item `it` (acc: its heads' P V sums, Dp apart; m / l: maxima and
// sums, l right after m): out (and lse) when it is the only piece, else its partial, and the last
// piece to finish merges.
void finish_piece(const DecodeItem& it, int64_t piece, const float* acc, const float* m, const float* l) {
  const int64_t H = it.p->n_heads;
  const int D = it.D, Dp = it.Dp;
  if (it.n_pieces == 1) {
    for (int64_t h = 0; h < H; ++h) {
      float* o = it.out + h * D;
      const float inv = 1.0f / l[h];
      const float* a = acc + h * Dp;
      for (int d = 0; d < D; ++d) o[d] = a[d] * inv;
      if (it.lse) it.lse[h] = m[h] + std::log(l[h]);
    }
    return;
  }
  float* part = it.part + piece * H * (2 + Dp);
  std::memcpy(part, m, sizeof(float) * size_t(2 * H));
  std::memcpy(part + 2 * H, acc, sizeof(float) * size_t(H) * size_t(Dp));
  // the last piece to finish (acq_rel: it sees the others' partials) merges
  if (it.done->fetch_add(1, std::memory_order_acq_rel) == it.n_pieces - 1) {
    if (it.lean && it.D % 16 == 0 && it.n_pieces <= 64 && isa_active() >= Isa::Avx512) merge_decode_lean(it);
    else merge_decode(it);
    attention_detail::count_work(&attention_detail::WorkSlot::decode_merges);
  }
}

// The kernel steps the pipelined prefetch spreads a sub-block's lines over (PfCursor per_qk /
// per_pv): a 16-token sub-block's Q K^T (qk_decode_rows: 8 query rows at a time, two steps a 16-dim
// chunk) and P V's, a token (pv_tile: 4 rows x 4 chunks at a time), over all kv heads.
struct DecodeSteps {
  int64_t qk_subblock, pv_token;
};
inline DecodeSteps decode_steps(int64_t Hkv, int64_t G, int D) {
  const int64_t nch = (D + 15) / 16;
  return {Hkv * ((G + 7) / 8) * nch * 2, Hkv * ((G + 3) / 4) * ((nch + 3) / 4)};
}

// ---------------------------------------------------------------------------- the lean narrow piece
// attention_detail::decode_lean: narrow token rows swept in place with >= 4 query heads per kv head
// (AVX-512). The calls run_decode_piece makes a kv head (or a head) at a time through the kernel
// table, here one a sub-block (all kv heads) or two a block (the softmax's vector parts): the same
// kernel templates on the same operands in the same order, so the same bits. No scalar float
// arithmetic inside these target functions (GCC would contract a multiply and add into an FMA):
// the softmax's max / exp / sum updates stay in the driver's code, as in run_decode_piece.
// Q K^T of the ns token rows from kr (ld elements apart) for every kv head: qk_decode on 16 row
// pointers (the last row repeated past ns), or qk_tiles on each kv head's tile (ktiles).
template <class E>
EMO_T512 static void qk_decode_all_heads(const float* q, int64_t ldq, int G, int64_t Hkv, const float* krf, int64_t ld,
                                         int ns, int D, float scale, float* S, int64_t ldS, bool ktiles, PfCursor* pf) {
  const typename E::T* kr = reinterpret_cast<const typename E::T*>(krf);
  for (int64_t g = 0; g < Hkv; ++g) {
    const typename E::T* kg = kr + g * D;
    if (ktiles) {  // kv head g's tile of the 16 tokens (kr: their first row)
      qk_tiles_avx512<E>(q + g * G * ldq, ldq, G, reinterpret_cast<const float*>(kr + g * D * 16), D, scale,
                         S + g * G * ldS, ldS, pf);
      continue;
    }
    const float* rows[16];
    #pragma GCC unroll 16
    for (int t = 0; t < 16; ++t) rows[t] = reinterpret_cast<const float*>(kg + int64_t(std::min(t, ns - 1)) * ld);
    qk_decode_avx512<E>(q + g * G * ldq, ldq, G, rows, D, scale, S + g * G * ldS, ldS, pf);
  }
}
// P V of the ns token rows from vr (ld elements apart) for every kv head: acc rows Dp apart,
// alpha (per head) or kOnes, P in S (ldS apart, already at the sub-block's column).
template <class E>
EMO_T512 static void pv_all_heads(float* acc, int Dp, const float* alpha, int64_t G, int64_t Hkv, const float* S, int ldS,
                                  const float* vrf, int64_t ld, int ns, int D, PfCursor* pf) {
  const typename E::T* vr = reinterpret_cast<const typename E::T*>(vrf);
  for (int64_t g = 0; g < Hkv; ++g)
    for (int64_t h0 = 0; h0 < G; h0 += kMaxRows) {
      const int R = int(std::min<int64_t>(kMaxRows, G - h0));
      const int64_t r0 = g * G + h0;
      pv_avx512_t<E>(acc + r0 * Dp, Dp, alpha ? alpha + r0 : kOnes, R, S + r0 * ldS, ldS,
                     reinterpret_cast<const float*>(vr + g * D), ld, ns, D, pf);
    }
}
// out[h] = the max of S's row h over nb columns; exp_sum: S's row h exponentiated against mx[h], out[h] its sum.
EMO_T512 static void rows_max_avx512(const float* S, int ldS, int64_t H, int nb, float* out) {
  for (int64_t h = 0; h < H; ++h) out[h] = row_max_avx512(S + h * ldS, nb);
}
EMO_T512 static void rows_exp_sum_avx512(float* S, int ldS, int64_t H, int nb, const float* mx, float* out) {
  for (int64_t h = 0; h < H; ++h) out[h] = exp_sum_avx512(S + h * ldS, nb, mx[h]);
}
struct LeanKern {
  void (*qk)(const float* q, int64_t ldq, int G, int64_t Hkv, const float* kr, int64_t ld, int ns, int D, float scale,
             float* S, int64_t ldS, bool ktiles, PfCursor* pf);
  void (*pv)(float* acc, int Dp, const float* alpha, int64_t G, int64_t Hkv, const float* S, int ldS, const float* vr,
             int64_t ld, int ns, int D, PfCursor* pf);
};
const LeanKern kLeanF32 = {qk_decode_all_heads<KvF32>, pv_all_heads<KvF32>};
const LeanKern kLeanF16 = {qk_decode_all_heads<KvF16>, pv_all_heads<KvF16>};
const LeanKern kLeanBF16 = {qk_decode_all_heads<KvBF16>, pv_all_heads<KvBF16>};

// run_decode_piece's path for the calls decode_lean takes (it.lean, in place, narrow rows swept,
// >= 4 query heads per kv head, not bf16 products): the same reads, prefetches, kernels and
// softmax, in the same order, with the calls above. pipe: decode_pipeline_applies.
void run_decode_piece_lean(const DecodeItem& it, const LeanKern& lk, int64_t piece, float* S,
                           float* acc, float* qpad, bool pipe, std::vector<attention_detail::DecodeRead>* trace) {
  const AttentionParams& p = *it.p;
  const int64_t H = p.n_heads, G = it.group, Hkv = p.n_kv_heads;
  const int D = it.D, Dp = it.Dp;
  const int64_t j0 = piece * it.piece_len, j1 = std::min(it.nvis, j0 + it.piece_len);
  const int64_t esz = int64_t(kv_elem_bytes(p));
  const int64_t span_bytes = Hkv * D * esz;
  // q in place where its rows need no padding (the kernels read Dp = D dims of each)
  const float* qt = it.q;
  if (D != Dp) {
    for (int64_t h = 0; h < H; ++h) {
      std::memcpy(qpad + h * Dp, it.q + h * D, sizeof(float) * size_t(D));
      std::memset(qpad + h * Dp + D, 0, sizeof(float) * size_t(Dp - D));
    }
    qt = qpad;
  }
  PfCursor cursor;
  PfCursor* pf = nullptr;
  // The cursor over up to 5 sub-blocks (runs of <= 16 rows: each inside one page), its lines spread
  // over `steps` kernel steps (per_qk for Q K^T's, per_pv for P V's).
  PfCursor::Run runs[5];
  int n_runs = 0;
  auto add_run = [&](const float* base, const float* const* blocks, int64_t ld, int64_t s, int ns) {
    if (ns <= 0) return;
    runs[n_runs++] = {reinterpret_cast<const char*>(kv_row(base, blocks, p, s, ld)), ld * esz, ns};
  };
  auto pipe_start = [&](int64_t steps, bool qk) {
    if (n_runs == 0) return;
    cursor.start(runs[0].row, runs[0].row_bytes, span_bytes, runs[0].ns);
    int64_t rows = 0;
    for (int i = 0; i < n_runs; ++i) {
      if (i > 0) cursor.then[cursor.n_then++] = runs[i];
      rows += runs[i].ns;
      if (trace) trace->push_back({reinterpret_cast<uintptr_t>(runs[i].row), runs[i].ns, false});
    }
    cursor.l2 = attention_detail::decode_pipeline_l2();
    const int per = int((rows * ((span_bytes + 63) / 64 + 1) + steps - 1) / steps);
    cursor.per_qk = qk ? per : 0;
    cursor.per_pv = qk ? 0 : per;
    pf = &cursor;
    n_runs = 0;
  };
  auto pipe_done = [&] {
    if (pf) pf_step(pf, 1 << 30);
    pf = nullptr;
  };
  // every K sub-block swept right before its compute without the pipeline; with it only the piece's first
  auto sweep_at = [&](const float* base, const float* const* blocks, int64_t ld, int64_t s0, int ns) {
    const float* r = kv_row(base, blocks, p, s0, ld);
    sweep_rows(r, ld * esz, ns, span_bytes);
    if (trace) trace->push_back({reinterpret_cast<uintptr_t>(r), ns, true});
    return r;
  };
  const DecodeSteps steps = decode_steps(Hkv, G, D);
  float* m = acc + H * Dp;
  float* l = m + H;
  float* alpha = l + H;
  float bm[attention_detail::kDecodeMaxHeads], sums[attention_detail::kDecodeMaxHeads];
  for (int64_t h = 0; h < H; ++h) { m[h] = -INFINITY; l[h] = 0.0f; }
  std::memset(acc, 0, sizeof(float) * size_t(H) * size_t(Dp));
  // With the pipeline: the piece's first K sub-block swept; during each K sub-block's Q K^T the
  // block's V sub-block of the same index prefetched (in the piece's first block after the next K
  // sub-block); during a block's P V the next block's K sub-blocks.
  for (int64_t b0 = j0; b0 < j1; b0 += kBk) {
    const int64_t b1 = std::min(j1, b0 + kBk);
    const int nb = int(b1 - b0);
    for (int64_t s0 = b0; s0 < b1; s0 += 16) {
      const int ns = int(std::min<int64_t>(16, b1 - s0));
      const float* kr = !pipe || s0 == j0 ? sweep_at(it.k, p.k_blocks, p.ldk, s0, ns) : kv_row(it.k, p.k_blocks, p, s0, p.ldk);
      if (pipe) {
        if (b0 == j0) add_run(it.k, p.k_blocks, p.ldk, s0 + 16, int(std::min<int64_t>(16, b1 - s0 - 16)));
        add_run(it.v, p.v_blocks, p.ldv, s0, ns);
        pipe_start(steps.qk_subblock, true);
      }
      lk.qk(qt, qt == it.q ? D : Dp, int(G), Hkv, kr, p.ldk, ns, D, it.scale, S + (s0 - b0), kBk, it.ktiles, pf);
      if (pipe) pipe_done();
    }
    rows_max_avx512(S, kBk, H, nb, bm);
    for (int64_t h = 0; h < H; ++h) {
      const float m_new = std::max(m[h], bm[h]);
      alpha[h] = m[h] == -INFINITY ? 0.0f : std::exp(m[h] - m_new);
      m[h] = m_new;
    }
    rows_exp_sum_avx512(S, kBk, H, nb, m, sums);
    for (int64_t h = 0; h < H; ++h) l[h] = l[h] * alpha[h] + sums[h];
    if (!pipe)
      for (int64_t s0 = b0; s0 < b1; s0 += 16) sweep_at(it.v, p.v_blocks, p.ldv, s0, int(std::min<int64_t>(16, b1 - s0)));
    else {
      const int64_t n1 = std::min(j1, b1 + kBk);
      for (int64_t s0 = b1; s0 < n1; s0 += 16) add_run(it.k, p.k_blocks, p.ldk, s0, int(std::min<int64_t>(16, n1 - s0)));
      pipe_start(steps.pv_token * nb, false);
    }
    // P V over the whole block a kv head at a time where its V rows lie in one page (acc in
    // registers across the sub-blocks: each output element's FMAs over the block's tokens in the
    // same order, the same bits), else a sub-block at a time as run_decode_piece.
    const float* vr = kv_row(it.v, p.v_blocks, p, b0, p.ldv);
    if (p.kv_block_size == 0 || b0 / p.kv_block_size == (b1 - 1) / p.kv_block_size)
      lk.pv(acc, Dp, alpha, G, Hkv, S, kBk, vr, p.ldv, nb, D, pf);
    else
      for (int64_t s0 = b0; s0 < b1; s0 += 16)
        lk.pv(acc, Dp, s0 == b0 ? alpha : nullptr, G, Hkv, S + (s0 - b0), kBk, kv_row(it.v, p.v_blocks, p, s0, p.ldv),
              p.ldv, int(std::min<int64_t>(16, b1 - s0)), D, pf);
    if (pipe) pipe_done();
  }
  finish_piece(it, piece, acc, m, l);
}

// Software prefetches of the kv rows: only the narrow rows' next sub-block from inside the kernels'
// loops (PfCursor, attention_detail::decode_pipeline; session 22). Until session 20 this file held
// three others (the narrow rows' next sub-block, the wide rows' next 16 rows, the tiled driver's
// next paged sub-block), but each sat in a function or lambda holding nothing but prefetches, which
// GCC 12's IPA finds "const" (__builtin_prefetch counts as no side effect) and deletes the calls
// to: the object held no prefetch instruction, and every A/B of them measured nothing. Emitted
// (forced inline), the wide rows' burst made the 7B call 1.24-1.34x slower cold, the narrow rows'
// prefetch ahead the 1.1B q4_0 decode 0.975 / 0.984x at 2 threads and 0.952x at 1 (quiet, session
// 20): all removed. Wide rows (7B) prefetched from inside qk16 / pv2 as the narrow ones are (the
// slice of the kv head 1, 2 or 4 calls ahead, or of the next sub-block: session 22) ran 0.66-0.85x
// cold: the 7B's hardware prefetchers are better left alone.

// Piece `piece` of item `it`. Scratch: S (n_heads x kBk floats), acc (n_heads x (Dp + 3) floats,
// 64-byte aligned), qpad (n_heads x Dp floats) and kbuf (16 x decode_pack_span(it) floats, 64-byte
// aligned).
// trace (tests, attention_detail::decode_reads): each sub-block's read, in order (null: none).
void run_decode_piece(const DecodeItem& it, const Kern& kern, int64_t piece, float* S, float* acc, float* qpad,
                      float* kbuf, std::vector<attention_detail::DecodeRead>* trace) {
  const AttentionParams& p = *it.p;
  const int64_t H = p.n_heads, G = it.group, Hkv = p.n_kv_heads;
  const int D = it.D, Dp = it.Dp;
  const int64_t j0 = piece * it.piece_len, j1 = std::min(it.nvis, j0 + it.piece_len);
  const int64_t span = Hkv * D;  // floats of a token row read
  // Narrow token rows (<= kDecodePackSpan floats): each 16-row sub-block is first copied to
  // contiguous scratch, one sequential read that keeps many cache misses in flight, instead of
  // the kernels' strided loads (a kv head's slice of 16 rows); the copy needs no software
  // prefetch (measured faster without). Wide rows (7B: 16 KB a token in f32) are read in place,
  // on the hardware prefetchers alone. Their software prefetch of the next 16 rows a sub-block
  // (4096 lines in one burst at 7B) was in the source from the start but never emitted (see the
  // note above: "Software prefetches of the kv rows"); emitted it made the call 1.24-1.34x slower
  // cold and 1.23-1.36x in cache (session 20), so it went. Reading the rows instead as
  // whole token rows (every kv head of 1 / 2 / 4 / 8 positions side by side, front to back, P V's
  // accumulators in scratch, each row prefetched 1-16 KiB ahead from a small loop per kv head, or
  // not at all; same bits) was slower too: 0.72-0.95x cold, 0.75-0.88x in cache (bench/README).
  // So was a thread reading two pieces side by side (two adjacent position ranges, each kv head's
  // 16-row tile of the first piece, then of the second, each piece its own max / sum / P V: same
  // bits; session 21): 1 thread cold 0.90-0.98x (7B), 0.89-1.01x (1.1B shape) by median; in the
  // model (1 thread CPU time, prompt 512) 0.988 (1.1B q4_0) and 0.989 (7B) (bench/README). Each
  // 16-row tile already keeps 16 row streams in flight: a second range adds none that was missing.
  // Swept narrow rows with >= 4 query heads per kv head prefetch the next sub-block from inside this
  // one's kernels instead (decode_pipeline, below): a sub-block's sweep and its compute otherwise
  // run one after the other (1.1B cold: ~75 ns of reads then ~70 of compute a kv token).
  // A half cache is widened as it is packed (narrow rows: one pass that both converts and packs).
  // Wide half rows are widened one kv head's slice at a time (16 x Dp floats, 8 KB for D = 128),
  // right before the kernel reads it: the slice stays in L1, where widening whole rows (256 KB for
  // 16 rows of 7B) went through L2 and was slower than reading f32 rows in place. The kernels
  // see the same f32 values either way (widening is exact), so the results are bit for bit equal.
  // In place (it.inplace, AVX-512): no copy and no widening pass; every row is read where it lies
  // (a half one widened by the kernels' loads), narrow rows swept first (see decode_inplace_kern).
  const bool inplace = it.inplace != nullptr;
  const Kern& kk = inplace ? *it.inplace : kern;
  const bool pack = !inplace && span <= kDecodePackSpan;
  const bool sweep = inplace && span <= kDecodePackSpan;
  const bool widen_heads = !inplace && !pack && it.widen;
  const int64_t span_bytes = span * int64_t(kv_elem_bytes(p));
  // Wide rows read in place (7B): one or two query heads per kv head take qk16 on full sub-blocks
  // (attention_detail::decode_qk_wide).
  const bool use_qk16 = inplace && !sweep && kk.qk16 != nullptr && attention_detail::decode_qk16_applies(p);
  // ... and P V two adjacent kv heads a call (attention_detail::decode_pv_pairs; MHA, one query row per kv head).
  const bool use_pv2 = use_qk16 && !it.bf16dp && kk.pv2 != nullptr && attention_detail::decode_pv2_applies(p);
  // decode_wide_pf (it.wide_pf): qk16 / pv2 read a full sub-block 8 rows at a time and prefetch into L2 the next
  // full sub-block's same slice (decode_pipeline_next's order: the next K sub-block, after a block's last its first
  // V one, after its last V one the next block's first K; wide_pf_none where the next is short or none): the
  // first row of that sub-block, or wide_pf_none / null (off).
  const bool wide_pf = use_qk16 && it.wide_pf;
  // decode_wide_lin: wide_pf's prefetch (16-row sub-blocks and decode_wide8's halves) in address order, every
  // wide_lin-th line (0: off); f32 rows back to back with 8 chunks of 16 (head_dim 113-128) only, the one shape
  // an f32 cache takes wide_pf on (attention_detail::wide_lin_shape; decode_wide_lin_applies)
  const int wide_lin = wide_pf && attention_detail::wide_lin_shape(p) ? it.wide_lin : 0;
  // Token row s of V (is_v) or K.
  auto kv_token = [&](bool is_v, int64_t s) -> const float* {
    return is_v ? kv_row(it.v, p.v_blocks, p, s, p.ldv) : kv_row(it.k, p.k_blocks, p, s, p.ldk);
  };
  // The first row of the sub-block decode_pipeline_next names after (b0, b1, s0, is_v) if it has at
  // least `rows` token rows, else wide_pf_none.
  auto next_rows = [&](int64_t b0, int64_t b1, int64_t s0, bool is_v, int rows) -> const float* {
    const attention_detail::DecodeSubBlock nx = attention_detail::decode_pipeline_next(j1, b0, b1, s0, is_v);
    return nx.ns >= rows ? kv_token(nx.v, nx.s) : wide_pf_none;
  };
  auto wide_next = [&](int64_t b0, int64_t b1, int64_t s0, bool is_v) -> const float* {
    return wide_pf ? next_rows(b0, b1, s0, is_v, 16) : nullptr;
  };
  // A kernel's knext / vnext for kv head slice `off` (elements) of wide_next's / wide_next8's row:
  // null and wide_pf_none pass through.
  auto head_next = [&](const float* row, int64_t off) -> const float* {
    return row == nullptr || row == wide_pf_none ? row : kv_at(row, off, p);
  };
  // ... for kv head g's Q K^T call or pair g's P V call: with wide_lin the g-th 16 x D elements from the row
  auto head_next16 = [&](const float* row, int64_t g) -> const float* {
    return head_next(row, wide_lin ? g * 16 * D : g * D);
  };
  // ... decode_wide8's halves: the g-th 8 x D elements
  auto head_next8 = [&](const float* row, int64_t g) -> const float* {
    return head_next(row, wide_lin ? g * 8 * D : g * D);
  };
  // decode_wide8 (it.wide8; one query head per kv head, an even kv head count): a full 16-row sub-block as two
  // sub-blocks of 8 rows, every kv head's Q K^T (qk8) or P V pair (pv2 on 8 tokens) of rows 0-7, then of rows
  // 8-15: 8 row streams at a time instead of 16. With decode_wide_pf the next 8 rows prefetched into L2 (rows
  // 8-15 during rows 0-7, then the first 8 rows of the sub-block wide_next names), else wide_pf_none.
  const bool wide8 = use_pv2 && it.wide8 && kk.qk8 != nullptr && Hkv % 2 == 0;
  auto wide_next8 = [&](int64_t b0, int64_t b1, int64_t s0, bool is_v, int half) -> const float* {
    if (!wide_pf) return wide_pf_none;
    return half == 0 ? kv_token(is_v, s0 + 8) : next_rows(b0, b1, s0, is_v, 8);
  };
  // The ns token rows from s0 of K or V: in place (row stride ld, elements of the cache type), or
  // copied / widened into kbuf (stride span).
  const float* qrows[kMaxRows];
  // Several query heads per kv head: the transposed-K kernel on q rows zero-padded to Dp.
  const bool transposed = kk.qk_decode != nullptr && G >= 4;
  // bf16 products (it.bf16dp, G >= 4): qpad holds each head's q as bf16 pairs (Dp / 2 per head) for the
  // vdpbf16ps QK, P is rounded to
  // bf16 in place in S (a bf16 row of 2 * kBk elements per head) and PV runs on token pairs.
  const bool dp = it.bf16dp;
  // Swept narrow rows on the transposed kernels (the 1.1B's GQA 8): the next sub-block's lines
  // (the next K sub-block; after a block's last K sub-block its first V one; after its last V one
  // the next block's first K) are prefetched from inside this sub-block's qk_decode / pv loops
  // (PfCursor, attention_detail::decode_pipeline); only a piece's first sub-block is swept before
  // its compute. The kernels' arithmetic is untouched: the same bits.
  // Only a piece's first sub-block is swept: prefetching it during the previous piece's last
  // sub-block (the next piece a thread runs, claimed one ahead) measured 0.97-1.05x cold and
  // 0.986x in the model (1.1B q4_0, 1 thread; session 23, bench/README): the hardware
  // prefetchers already follow the rows across a piece's end.
  const bool pipe = sweep && transposed && !dp && attention_detail::decode_pipeline_applies(p);
  // K in 16-token transposed tiles (attention_detail::decode_k_tiles, a prototype: the caller's K
  // is laid out so); only the calls decode_k_tiles_applies takes, never silently as rows.
  const bool ktiles = it.ktiles;  // make_decode_item read the switch once and checked decode_k_tiles_applies
  assert(!ktiles || (sweep && transposed && !dp && kk.qk_tiles != nullptr));
  if (it.lean && sweep && transposed && !dp) {
    const LeanKern& lk = p.kv_dtype == DType::F16 ? kLeanF16 : p.kv_dtype == DType::BF16 ? kLeanBF16 : kLeanF32;
    run_decode_piece_lean(it, lk, piece, S, acc, qpad, pipe, trace);
    attention_detail::count_work(&attention_detail::WorkSlot::decode_lean_pieces);
    return;
  }
  // (tests) a piece whose full sub-blocks take the wide forms (decode_wide_pf / decode_wide8; one query head per kv
  // head: qk16's two-row tile ignores knext), counted once, with or without decode_wide_lin's order
  if ((wide_pf || wide8) && G == 1)
    attention_detail::count_work(wide_lin ? &attention_detail::WorkSlot::decode_wide_lin_pieces
                                          : &attention_detail::WorkSlot::decode_wide_pieces);
  bool swept = false;  // the current sub-block's lines were prefetched during the previous one's compute
  PfCursor cursor;
  PfCursor* pf = nullptr;  // the kernels' cursor while a sub-block is prefetched
  // Points pf at ns rows from `row` (rb bytes apart, sb bytes each), spread evenly over this
  // sub-block's steps (front-loaded, twice or four times the lines a step: 1.06x instead of
  // 1.16-1.19x cold).
  auto pipe_start = [&](const char* row, int64_t rb, int64_t sb, int ns) {
    cursor.start(row, rb, sb, ns);
    cursor.l2 = attention_detail::decode_pipeline_l2();
    const int64_t lines = int64_t(ns) * ((sb + 63) / 64 + 1);
    const DecodeSteps st = decode_steps(Hkv, G, D);
    const int64_t qk_steps = st.qk_subblock, pv_steps = st.pv_token * 16;
    cursor.per_qk = int((lines + qk_steps - 1) / qk_steps);
    cursor.per_pv = int((lines + pv_steps - 1) / pv_steps);
    pf = &cursor;
    if (trace) trace->push_back({reinterpret_cast<uintptr_t>(row), ns, false});
  };
  // The sub-block after [s0, s0 + 16) of K (is_v false) or V in block [b0, b1).
  auto pipe_next = [&](int64_t b0, int64_t b1, int64_t s0, bool is_v) {
    const attention_detail::DecodeSubBlock nx = attention_detail::decode_pipeline_next(j1, b0, b1, s0, is_v);
    if (nx.ns == 0) return;
    const int64_t ld = nx.v ? p.ldv : p.ldk;
    pipe_start(reinterpret_cast<const char*>(nx.v ? kv_row(it.v, p.v_blocks, p, nx.s, ld)
                                                  : kv_row(it.k, p.k_blocks, p, nx.s, ld)),
               ld * int64_t(kv_elem_bytes(p)), span_bytes, nx.ns);
  };
  // What the kernels left of it (a short sub-block's fewer steps), then nothing.
  auto pipe_done = [&] {
    if (pf) pf_step(pf, 1 << 30);
    pf = nullptr;
  };
  auto token_rows = [&](const float* base, const float* const* blocks, int64_t ld, int64_t s0, int ns,
                        int64_t* rows_ld) -> const float* {
    const float* r = kv_row(base, blocks, p, s0, ld);
    *rows_ld = ld;
    if (sweep) {
      if (!swept) {
        sweep_rows(r, ld * int64_t(kv_elem_bytes(p)), ns, span_bytes);
        if (trace) trace->push_back({reinterpret_cast<uintptr_t>(r), ns, true});
      }
      swept = pipe;
      return r;
    }
    if (!pack) return r;
    if (it.widen)
      for (int t = 0; t < ns; ++t) it.widen(kv_at(r, t * ld, p), kbuf + t * span, span);
    else
      for (int t = 0; t < ns; ++t) std::memcpy(kbuf + t * span, r + t * ld, sizeof(float) * size_t(span));
    *rows_ld = span;
    return kbuf;
  };
  // Kv head g's slice of ns rows from token_rows (stride ld): in place, or for wide half rows
  // widened into kbuf (stride Dp).
  auto head_rows = [&](const float* rows, int64_t ld, int64_t g, int ns, int64_t* slice_ld) -> const float* {
    *slice_ld = ld;
    if (inplace) return kv_at(rows, g * D, p);
    if (!widen_heads) return rows + g * D;
    for (int t = 0; t < ns; ++t) it.widen(kv_at(rows, t * ld + g * D, p), kbuf + int64_t(t) * Dp, D);
    *slice_ld = Dp;
    return kbuf;
  };
  const int64_t ldqp = Dp / 2;
  if (dp && transposed)
    for (int64_t h = 0; h < H; ++h)
      q_to_bf16_pairs(it.q + h * D, D, reinterpret_cast<uint32_t*>(qpad) + h * ldqp, int(ldqp));
  else if (transposed)
    for (int64_t h = 0; h < H; ++h) {
      std::memcpy(qpad + h * Dp, it.q + h * D, sizeof(float) * size_t(D));
      std::memset(qpad + h * Dp + D, 0, sizeof(float) * size_t(Dp - D));
    }
  float* m = acc + H * Dp;  // n_heads running maxima, sums, and rescales of the block
  float* l = m + H;
  float* alpha = l + H;
  for (int64_t h = 0; h < H; ++h) { m[h] = -INFINITY; l[h] = 0.0f; }
  std::memset(acc, 0, sizeof(float) * size_t(H) * size_t(Dp));
  // Blocks of kBk tokens, online softmax across them: K and V of a block are read close together.
  // Within a block, 16 tokens at a time across all kv heads (a token row of Hkv * D contiguous
  // floats consumed within a short window).
  for (int64_t b0 = j0; b0 < j1; b0 += kBk) {
    const int64_t b1 = std::min(j1, b0 + kBk);
    const int nb = int(b1 - b0);
    for (int64_t s0 = b0; s0 < b1; s0 += 16) {
      const int ns = int(std::min<int64_t>(16, b1 - s0));
      int64_t ldkr;
      const float* kr = token_rows(it.k, p.k_blocks, p.ldk, s0, ns, &ldkr);
      if (pipe) pipe_next(b0, b1, s0, false);
      if (transposed) {
        const float* rows[16];
        for (int64_t g = 0; g < Hkv; ++g) {
          int64_t ldg;
          const float* kg = head_rows(kr, ldkr, g, ns, &ldg);
          for (int t = 0; t < 16; ++t) rows[t] = kv_at(kg, int64_t(std::min(t, ns - 1)) * ldg, inplace ? p : kF32Rows);
          if (ktiles)  // kv head g's tile of the 16 tokens from s0 (kr: their first row)
            kk.qk_tiles(qpad + g * G * Dp, Dp, int(G), kv_at(kr, g * D * 16, p), D, it.scale,
                        S + g * G * kBk + (s0 - b0), kBk, pf);
          else if (dp)
            qk_decode_bf16dp(reinterpret_cast<const uint32_t*>(qpad) + g * G * ldqp, ldqp, int(G), rows, D, it.scale,
                             S + g * G * kBk + (s0 - b0), kBk);
          else
            kk.qk_decode(qpad + g * G * Dp, Dp, int(G), rows, D, it.scale, S + g * G * kBk + (s0 - b0), kBk, pf);
        }
        if (pipe) pipe_done();
        continue;
      }
      if (wide8 && ns == 16) {
        for (int half = 0; half < 2; ++half) {
          const float* kn8 = wide_next8(b0, b1, s0, false, half);
          for (int64_t g = 0; g < Hkv; ++g)
            kk.qk8(it.q + g * D, kv_at(kr, g * D, p), ldkr, D, it.scale, S + g * kBk + (s0 - b0) + 8 * half, half,
                   head_next8(kn8, g), wide_lin);
        }
        continue;
      }
      const float* knx = wide_next(b0, b1, s0, false);
      for (int64_t g = 0; g < Hkv; ++g) {
        int64_t ldg;
        const float* kg = head_rows(kr, ldkr, g, ns, &ldg);
        if (use_qk16 && ns == 16) {
          for (int r = 0; r < G; ++r) qrows[r] = it.q + (g * G + r) * D;
          kk.qk16(qrows, int(G), kg, ldg, D, it.scale, S + g * G * kBk + (s0 - b0), kBk, head_next16(knx, g), wide_lin);
          continue;
        }
        for (int64_t h0 = 0; h0 < G; h0 += kMaxRows) {
          const int R = int(std::min<int64_t>(kMaxRows, G - h0));
          for (int r = 0; r < R; ++r) qrows[r] = it.q + (g * G + h0 + r) * D;
          kk.qk(qrows, R, kg, ldg, ns, D, it.scale, S + (g * G + h0) * kBk + (s0 - b0), kBk);
        }
      }
    }
    for (int64_t h = 0; h < H; ++h) {
      float* sr = S + h * kBk;
      const float m_new = std::max(m[h], kk.row_max(sr, nb));
      alpha[h] = m[h] == -INFINITY ? 0.0f : std::exp(m[h] - m_new);
      l[h] = l[h] * alpha[h] + (dp ? exp_round_bf16(sr, nb, m_new) : kk.exp_sum(sr, nb, m_new));
      m[h] = m_new;
    }
    for (int64_t s0 = b0; s0 < b1; s0 += 16) {
      const int ns = int(std::min<int64_t>(16, b1 - s0));
      int64_t ldvr;
      const float* vr = token_rows(it.v, p.v_blocks, p.ldv, s0, ns, &ldvr);
      if (pipe) pipe_next(b0, b1, s0, true);
      int64_t g0 = 0;
      if (wide8 && ns == 16) {
        for (int half = 0; half < 2; ++half) {
          const float* vn8 = wide_next8(b0, b1, s0, true, half);
          for (int64_t g = 0; g < Hkv; g += 2)
            kk.pv2(acc + g * Dp, Dp, s0 == b0 && half == 0 ? alpha + g : kOnes, S + g * kBk + (s0 - b0) + 8 * half,
                   kBk, kv_at(vr, 8 * half * ldvr + g * D, p), ldvr, 8, D, it.pv_chunks, head_next8(vn8, g), wide_lin);
        }
        continue;
      }
      const float* vnx = wide_next(b0, b1, s0, true);
      if (use_pv2)
        for (; g0 + 2 <= Hkv; g0 += 2)
          kk.pv2(acc + g0 * Dp, Dp, s0 == b0 ? alpha + g0 : kOnes, S + g0 * kBk + (s0 - b0), kBk,
                 kv_at(vr, g0 * D, p), ldvr, ns, D, it.pv_chunks, head_next16(vnx, g0), wide_lin);
      for (int64_t g = g0; g < Hkv; ++g) {
        int64_t ldg;
        const float* vg = head_rows(vr, ldvr, g, ns, &ldg);
        for (int64_t h0 = 0; h0 < G; h0 += kMaxRows) {
          const int R = int(std::min<int64_t>(kMaxRows, G - h0));
          const int64_t r0 = g * G + h0;
          if (dp) {
            pv_bf16dp(acc + r0 * Dp, Dp, s0 == b0 ? alpha + r0 : kOnes, R,
                      reinterpret_cast<const uint16_t*>(S + r0 * kBk) + (s0 - b0), 2 * kBk, vg, ldg, ns, D);
            continue;
          }
          kk.pv(acc + r0 * Dp, Dp, s0 == b0 ? alpha + r0 : kOnes, R, S + r0 * kBk + (s0 - b0), kBk, vg, ldg, ns,
                  D, pf);
        }
      }
      if (pipe) pipe_done();
    }
  }
  finish_piece(it, piece, acc, m, l);
}

// Per-thread scratch of the decode driver, kept across calls (pool threads live long; a decode
// step calls this once a layer).
float* decode_scratch(size_t floats) { return thread_scratch<struct DecodeScratch>(floats); }

// The caller's scratch for run_decode's partials (decode_lean), kept across calls: at most
// kDecodePartScratchMax floats a calling thread (1 MiB: the 1.1B's 32 heads x 66 floats a piece at
// 2048 tokens of context, 16 pieces, take 132 KiB); a call needing more takes a vector of its own.
constexpr size_t kDecodePartScratchMax = size_t(1) << 18;
float* decode_part_scratch(size_t floats) {
  assert(floats <= kDecodePartScratchMax);
  return thread_scratch<struct DecodePartScratch>(floats);
}

// Runs every piece of the items in one pool dispatch (pieces taken in order from a shared
// counter; each item's last piece merges it). trace: attention_detail::decode_reads (1 thread).
void run_decode(const Kern& kern, DecodeItem* items, int64_t n_items, ThreadPool* pool,
                std::vector<attention_detail::DecodeRead>* trace = nullptr) {
  const int nth = pool ? std::max(1, pool->size()) : 1;
  int64_t accf = 0, part_floats = 0, n_pieces = 0, S_floats = 0, pack_span = kDecodePackSpan;
  std::vector<int64_t> first(size_t(n_items) + 1, 0);
  for (int64_t i = 0; i < n_items; ++i) {
    const DecodeItem& it = items[i];
    part_floats += decode_part_floats(it);
    n_pieces += it.n_pieces;
    first[size_t(i) + 1] = n_pieces;
    S_floats = std::max(S_floats, it.p->n_heads * kBk);
    accf = std::max(accf, it.p->n_heads * (it.Dp + 3));
    pack_span = std::max(pack_span, decode_pack_span(it));
  }
  accf = (accf + 15) / 16 * 16;
  // decode_lean: the partials in the caller's reused scratch (every float written before it is read)
  // instead of a zeroed vector a call, up to its bound (larger: the vector, as without lean)
  const bool reuse = n_items > 0 && items[0].lean && size_t(part_floats) <= kDecodePartScratchMax;
  std::vector<float> part(reuse ? 0 : static_cast<size_t>(part_floats));
  std::unique_ptr<std::atomic<int64_t>[]> done(new std::atomic<int64_t>[size_t(n_items)]);
  float* at = reuse ? decode_part_scratch(size_t(part_floats)) : part.data();
  for (int64_t i = 0; i < n_items; ++i) {
    done[size_t(i)].store(0, std::memory_order_relaxed);
    items[i].done = &done[size_t(i)];
    items[i].part = at;
    at += decode_part_floats(items[i]);
  }
  auto piece = [&](int64_t u, int64_t* i) {
    while (u >= first[size_t(*i) + 1]) ++*i;
    float* S = decode_scratch(size_t(S_floats + 2 * accf + 16 * pack_span));
    run_decode_piece(items[*i], kern, u - first[size_t(*i)], S, S + S_floats, S + S_floats + accf,
                     S + S_floats + 2 * accf, trace);
    attention_detail::count_work(&attention_detail::WorkSlot::decode_pieces);
  };
  if (nth == 1 || n_pieces == 1) {
    int64_t i = 0;
    for (int64_t u = 0; u < n_pieces; ++u) piece(u, &i);
    return;
  }
  std::atomic<int64_t> next{0};
  auto pieces = [&] {
    int64_t i = 0;  // pieces are taken in ascending order
    for (int64_t u; (u = next.fetch_add(1, std::memory_order_relaxed)) < n_pieces;) {
      pool_late_point();  // tests: a worker preempted holding its piece
      piece(u, &i);
    }
  };
  // One pool->run job: a worker that has not claimed its index when the caller's pieces are done
  // costs nothing (the caller runs its empty index); one holding a piece is waited for. The pieces
  // on ThreadPool::run_dynamic's claimed work instead (the opt-in EMOLLM_ATTN_CLAIMED of session
  // 18) ran the kernel alone 1.04x but the 7B decode 0.975 / 0.966 (quiet, prompt 512, 2 threads):
  // removed (bench/README.md).
  pool->run([&](int, int) { pieces(); });
}

void attention_tiled(const Kern& kern, const float* q, const float* k, const float* v, float* out, float* lse,
                     const AttentionParams& p, const Resolved& rs, ThreadPool* pool) {
  Plan pl = make_plan(q, k, v, out, lse, p, rs, pool ? std::max(1, pool->size()) : 1);
  run_plans(kern, &pl, 1, pool);
}

}  // namespace
namespace attention_detail {
AttentionWork attention_planned_work(const AttentionParams& p, int nth) {
  AttentionWork w;
  if (isa_active() < Isa::Avx2 || bidir_bf16_applies(p)) return w;
  static const float z = 0.0f;  // validate wants non-null data: the plan reads none
  const Resolved rs = validate(&z, &z, &z, &z, p);
  nth = std::max(1, nth);
  if (decode_applies(p)) {
    const DecodeItem it = make_decode_item(nullptr, nullptr, nullptr, nullptr, nullptr, p, rs, nth, isa_active());
    w.decode_pieces = uint64_t(it.n_pieces);
    w.decode_merges = it.n_pieces > 1 ? 1 : 0;
    return w;
  }
  const Plan pl = make_plan(nullptr, nullptr, nullptr, nullptr, nullptr, p, rs, nth);
  w.tiled_units = uint64_t(pl.n_units);
  w.tiled_merges = pl.nsplit > 1 ? uint64_t(pl.n_base) : 0;
  return w;
}
std::vector<DecodeRead> decode_reads(const float* q, const float* k, const float* v, float* out,
                                     const AttentionParams& p) {
  std::vector<DecodeRead> trace;
  const Isa isa = isa_active();
  if (isa < Isa::Avx2 || !decode_applies(p)) return trace;
  const Resolved rs = validate(q, k, v, out, p);
  DecodeItem it = make_decode_item(q, k, v, out, nullptr, p, rs, 1, isa);
  run_decode(isa >= Isa::Avx512 ? kKernAvx512 : kKernAvx2, &it, 1, nullptr, &trace);
  return trace;
}
}  // namespace attention_detail
#pragma GCC diagnostic pop
#else
namespace attention_detail {
// Without the x86-64 decode driver no call takes the K-tile prototype (validate() asks this
// everywhere: an arm64 build that lacked it failed to load, found by the musl prebuild check).
bool decode_k_tiles_applies(const AttentionParams&) { return false; }
AttentionWork attention_planned_work(const AttentionParams&, int) { return AttentionWork{}; }
std::vector<DecodeRead> decode_reads(const float*, const float*, const float*, float*, const AttentionParams&) {
  return {};
}
}  // namespace attention_detail
#endif  // __x86_64__

// ============================================================================ dispatcher
void attention(const float* q, const float* k, const float* v, float* out, const AttentionParams& p,
               ThreadPool* pool) {
  attention(q, k, v, out, p, pool, nullptr);
}
void attention(const float* q, const float* k, const float* v, float* out, const AttentionParams& p,
               ThreadPool* pool, float* lse) {
#if defined(__x86_64__)
  const Isa isa = isa_active();
  if (isa >= Isa::Avx2) {
    const Resolved rs = validate(q, k, v, out, p);
    // the bf16 bidirectional path keeps no log-sum-exp: a caller that wants it gets the tiled path
    if (!lse && attention_detail::bidir_bf16_applies(p))
      return attention_detail::attention_bidir_bf16(q, k, v, out, p, rs.scale, rs.group, pool);
    const Kern& kern = isa >= Isa::Avx512 ? kKernAvx512 : kKernAvx2;
    if (decode_applies(p)) {
      DecodeItem it = make_decode_item(q, k, v, out, lse, p, rs, pool ? std::max(1, pool->size()) : 1, isa);
      return run_decode(kern, &it, 1, pool);
    }
    attention_tiled(kern, q, k, v, out, lse, p, rs, pool);
    return;
  }
#endif
  (void)pool;
  ref::attention(q, k, v, out, p, lse);  // throws with decode_k_tiles on
}

void attention_batch(const AttentionBatchItem* items, int64_t n, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(n >= 0 && (n == 0 || items != nullptr), "attention_batch: no items");
#if defined(__x86_64__)
  const Isa isa = isa_active();
  if (isa >= Isa::Avx2) {
    const int nth = pool ? std::max(1, pool->size()) : 1;
    std::vector<Plan> plans;
    std::vector<DecodeItem> decode;
    plans.reserve(size_t(n));
    for (int64_t i = 0; i < n; ++i) {
      const AttentionBatchItem& it = items[i];
      const Resolved rs = validate(it.q, it.k, it.v, it.out, it.p);
      if (attention_detail::bidir_bf16_applies(it.p))  // its own kernel, as attention() runs it
        attention_detail::attention_bidir_bf16(it.q, it.k, it.v, it.out, it.p, rs.scale, rs.group, pool);
      else if (decode_applies(it.p))
        decode.push_back(make_decode_item(it.q, it.k, it.v, it.out, nullptr, it.p, rs, nth, isa));
      else
        plans.push_back(make_plan(it.q, it.k, it.v, it.out, nullptr, it.p, rs, nth));
    }
    const Kern& kern = isa >= Isa::Avx512 ? kKernAvx512 : kKernAvx2;
    if (!decode.empty()) run_decode(kern, decode.data(), int64_t(decode.size()), pool);
    if (!plans.empty()) run_plans(kern, plans.data(), int64_t(plans.size()), pool);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) attention(items[i].q, items[i].k, items[i].v, items[i].out, items[i].p, pool);
}

}  // namespace emollm
