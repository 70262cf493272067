// Decode GEMV over Q8_0 / Q4_0 weights repacked into 16-row groups (see kernels.h
// quant_repack): one fp16 scale per row per block side by side, and the rows' quants interleaved
// 4 bytes at a time, so that one 64-byte load holds 4 consecutive quants (q8_0) or 4 nibble pairs
// (q4_0) of 16 rows: one vpdpbusd with the 4 matching activation bytes broadcast then advances 16
// row sums at once, and the 16 results land in the 16 lanes of one register (no horizontal sums,
// no per-block scale shuffles). The layout ggml's CPU "REPACK" buffers use for the same reason.
//
// Records (q4_0; q8_0 keeps the previous one-group records, see repack_layout): the groups are
// stored kSuperGroup (4) at a time, 64 rows. Per block b (32 elements),
// one record holds the 4 groups' scales, then their quants:
//   4 x 16 x fp16 d[g][r]                                            (128 bytes)
//   per group g of the 4: q8_0: for t in 0..7: for r in 0..15: qs_r[4t .. 4t+3]    (512 bytes)
//                         q4_0: for t in 0..3: for r in 0..15: qs_r[4t .. 4t+3]    (256 bytes;
//         byte i holds element i in its low nibble and element i + 16 in its high nibble, as in
//         block_q4_0)
// and a super-group's records follow each other (nb records, then the next super-group's). So the
// decode pass over 4 groups (groups_avx512) reads one sequential stream instead of 4, and every
// 64-byte quant load is line-aligned (q4_0 records are 1152 bytes = 18 lines, q8_0 2176 = 34).
// Measured on Zen 5 (2 vCPUs, bench_kernels' repacked-16row rows, cold, interleaved): q4_0 GEMV
// quiet 1.05-1.32x the previous layout at 2 threads (median 1.19; loaded 0.94-1.28x), decode
// end to end 1.01-1.08x; q8_0 on 4-group records 0.76-0.85x quiet, so it keeps one-group ones.
// q8_0's layout: records of one group, 32 bytes of scales then its quants (544 bytes), each
// group's nb records in a row (q4_0 on it, the A/B switch EMOLLM_REPACK_SUPERGROUPS=0, is gone).
// Both are "super-groups of sg groups" (sg = 4 or 1), read through RepackLayout. Rows past N are zero (scale 0), and so are the groups that pad the last
// super-group, so every record is full.
//
// Numerics: those of the QuantActivations::Q8 gemv (X rounded to q8_0 blocks, exact int32 block
// dot products, f32 scaling by d_w * d_x and f32 accumulation); only the f32 summation order
// differs from gemm(). The layout does not change the arithmetic: both give the same bits.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>

#include "../../base/arena.h"
#include "../../base/env_switch.h"
#include "../../base/error.h"
#include "../../base/quant_formats.h"
#include "gemm_internal.h"
#include "gemm_q8_xpanel.h"
#include "gemm_x86_common.h"

#if defined(__x86_64__)
#include <immintrin.h>
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace emollm {

namespace {

constexpr int64_t kGroup = 16;
// Groups per pass of the M = 1 kernel (groups_avx512); the threads' chunks are multiples of it.
constexpr int kPassGroups = 4;

void check_repack_args(DType t, int64_t N, int64_t K) {
  EMOLLM_CHECK_ARG(t == DType::Q8_0 || t == DType::Q4_0, "quant_repack: Q8_0 or Q4_0 weights only");
  EMOLLM_CHECK_ARG(N > 0 && K > 0, "quant_repack: N and K must be positive");
  if (K % kQK != 0)
    throw Error(ErrorCode::InvalidArgument,
                std::string("quant_repack: K must be a multiple of 32, got ") + std::to_string(K));
}

// Bytes of one block of a 16-row group.
constexpr size_t group_block_bytes(bool q8) { return 2 * kGroup + (q8 ? 32 : 16) * kGroup; }

// Groups per record (layout above).
constexpr int kSuperGroup = 4;

// Where group g's block b lives in a repacked matrix of nb blocks a row: scales at
// scales(G, g) + b * rec, quants at quants(G, g) + b * rec.
struct RepackLayout {
  int sg;           // groups per record: kSuperGroup, or 1 (the previous layout)
  size_t qb;        // quant bytes of one group's block
  size_t rec;       // bytes of one record (sg groups' blocks)
  size_t sgstride;  // bytes of one super-group (nb records)
  const uint8_t* scales(const uint8_t* G, int64_t g) const {
    return G + size_t(g / sg) * sgstride + 2 * kGroup * size_t(g % sg);
  }
  const uint8_t* quants(const uint8_t* G, int64_t g) const {
    return G + size_t(g / sg) * sgstride + 2 * kGroup * size_t(sg) + qb * size_t(g % sg);
  }
};

// q4_0 on 4-group records; q8_0 stays on one-group records: on 4-group ones its GEMV measured
// 0.76-0.85x (quiet, 2 threads, every 1.1B / 7B shape, with or without a prefetch along the stream).
RepackLayout repack_layout(bool q8, int64_t nb) {
  const int sg = q8 ? 1 : kSuperGroup;
  const size_t gbb = group_block_bytes(q8);
  return RepackLayout{sg, gbb - 2 * kGroup, size_t(sg) * gbb, size_t(nb) * size_t(sg) * gbb};
}

// Per block b of x (already rounded to q8_0 in q): the scale d_x and -off * sum of the quants.
struct BlockSums {
  const float* dx;
  const int32_t* neg;
};

}  // namespace

namespace {
EnvSwitch& repacking_flag() {
  static EnvSwitch on("EMOLLM_REPACK");
  return on;
}
}  // namespace

void set_weight_repacking(bool on) { repacking_flag().set(on); }

namespace gemm_detail {
namespace {
// On at start; off (the one-stream pass, 8 records ahead: what a partial last super-group runs)
// for the tests' same-bits reference and the A/B tools. No environment variable: EMOLLM_Q40_MS
// went in session 22 (quiet ABBA 1.083 at 1.1B, 1.032 at 7B, bench/README 2026-12-06 07:30).
std::atomic<bool> g_q40_ms{true};
// Off at start on every CPU (gemm_internal.h set_q80_line17).
std::atomic<bool> g_q80_line17{false};
}  // namespace
void set_q40_ms_prefetch(GemvPrefetch p) { DecodeSetting<&DecodeTuning::q40_prefetch>::set(p); }
GemvPrefetch q40_ms_prefetch() { return DecodeSetting<&DecodeTuning::q40_prefetch>::get(); }
void set_q80_streams(int s) { DecodeSetting<&DecodeTuning::q80_streams>::set(std::clamp(s, 0, 4)); }
int q80_streams() { return DecodeSetting<&DecodeTuning::q80_streams>::get(); }
void set_q80_prefetch(GemvPrefetch p) { DecodeSetting<&DecodeTuning::q80_prefetch>::set(p); }
GemvPrefetch q80_prefetch() { return DecodeSetting<&DecodeTuning::q80_prefetch>::get(); }
void set_q80_ahead(int bytes) { DecodeSetting<&DecodeTuning::q80_ahead>::set(std::clamp(bytes / 64 * 64, 64, 16384)); }
int q80_ahead() { return DecodeSetting<&DecodeTuning::q80_ahead>::get(); }
void set_q40_ms_addr_order(bool on) { DecodeSetting<&DecodeTuning::q40_addr_order>::set(on); }
bool q40_ms_addr_order() { return DecodeSetting<&DecodeTuning::q40_addr_order>::get(); }
void set_gemv_owner_keep(int passes) { DecodeSetting<&DecodeTuning::gemv_owner_keep>::set(std::max(passes, -1)); }
int gemv_owner_keep() { return DecodeSetting<&DecodeTuning::gemv_owner_keep>::get(); }
void set_q40_ms_ahead(int bytes) { DecodeSetting<&DecodeTuning::q40_ahead>::set(std::clamp(bytes / 64 * 64, 64, 16384)); }
int q40_ms_ahead() { return DecodeSetting<&DecodeTuning::q40_ahead>::get(); }
void set_q80_line17(bool on) { g_q80_line17.store(on, std::memory_order_relaxed); }
bool q80_line17() { return g_q80_line17.load(std::memory_order_relaxed); }
void set_q40_ms(bool on) { g_q40_ms.store(on, std::memory_order_relaxed); }
bool q40_ms() { return g_q40_ms.load(std::memory_order_relaxed); }
GemvM1Form gemv_m1_form(bool q8, const GemvM1Settings& s) {
  GemvM1Form f;
  if (!q8 && s.q40_ms) {
    f.pass = GemvPass::Q40Streams, f.streams = 2, f.hint = s.q40_prefetch;
    f.addr_order = s.q40_addr_order;
  } else if (q8 && s.q80_streams > 0) {
    f.pass = GemvPass::Q80Parts, f.streams = std::min(s.q80_streams, 4), f.hint = s.q80_prefetch;
    f.line17 = s.q80_line17 && f.hint != GemvPrefetch::None;
  }
  return f;
}
GemvM1Settings gemv_m1_settings() {
  return GemvM1Settings{q40_ms(), q40_ms_prefetch(), q40_ms_addr_order(), q80_streams(), q80_prefetch(), q80_line17()};
}
GemvM1Settings gemv_m1_settings(const DecodeTuning& t) {
  return GemvM1Settings{true, t.q40_prefetch, t.q40_addr_order, t.q80_streams, t.q80_prefetch, false};
}
namespace {
EnvSwitch& ranges_flag() {
  static EnvSwitch on("EMOLLM_GEMV_RANGES");  // =0: guided chunks (whole-run A/B)
  return on;
}
}  // namespace
void set_gemv_ranges(bool on) { ranges_flag().set(on); }
bool gemv_ranges() { return ranges_flag().on(); }
namespace {
// Off on every CPU: session 26's quiet 1.1B q4_0 decode A/B at 2 threads on Zen 4 read 0.975-1.016
// against A/As of 0.988-1.064, and bench_decode_sequence's q+k+v 97.0 / 97.5 us (h-step's 1.05-1.14x
// was taken at load 10-14). Kept as a switch for the A/B tools.
std::atomic<bool> g_even_claims{false};
}  // namespace
void set_gemv_even_claims(bool on) { g_even_claims.store(on, std::memory_order_relaxed); }
bool gemv_even_claims() { return g_even_claims.load(std::memory_order_relaxed); }
}  // namespace gemm_detail
bool weight_repacking() { return repacking_flag().on(); }

size_t quant_repack_bytes(DType wtype, int64_t N, int64_t K) {
  check_repack_args(wtype, N, K);
  const RepackLayout L = repack_layout(wtype == DType::Q8_0, K / kQK);
  const int64_t supergroups = ((N + kGroup - 1) / kGroup + L.sg - 1) / L.sg;
  return size_t(supergroups) * L.sgstride;
}

void quant_repack(const void* W, DType wtype, int64_t N, int64_t K, void* out, ThreadPool* pool) {
  check_repack_args(wtype, N, K);
  EMOLLM_CHECK_ARG(W && out, "quant_repack: null pointer");
  const bool q8 = wtype == DType::Q8_0;
  const int64_t nb = K / kQK;
  const RepackLayout L = repack_layout(q8, nb);
  const int64_t groups = ((N + kGroup - 1) / kGroup + L.sg - 1) / L.sg * L.sg;  // padded: whole super-groups
  const size_t rb = dtype_row_bytes(wtype, K), bs = q8 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
  uint8_t* const O = static_cast<uint8_t*>(out);
  auto body = [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t b = 0; b < nb; ++b) {
        uint8_t* sd = const_cast<uint8_t*>(L.scales(O, g)) + size_t(b) * L.rec;
        uint8_t* qd = const_cast<uint8_t*>(L.quants(O, g)) + size_t(b) * L.rec;
        std::memset(sd, 0, 2 * kGroup);
        std::memset(qd, 0, L.qb);
        for (int64_t r = 0; r < kGroup; ++r) {
          const int64_t n = g * kGroup + r;
          if (n >= N) break;
          const uint8_t* blk = static_cast<const uint8_t*>(W) + size_t(n) * rb + size_t(b) * bs;
          std::memcpy(sd + 2 * r, blk, 2);
          for (size_t t = 0; t < L.qb / (4 * kGroup); ++t) std::memcpy(qd + (t * kGroup + size_t(r)) * 4, blk + 2 + 4 * t, 4);
        }
      }
  };
  if (pool && pool->size() > 1 && groups > 1)
    pool->parallel_for(groups, 4, body);
  else
    body(0, groups);
}

namespace {

// Portable path: the same integer block products, double accumulation.
void gemv_repacked_scalar(const int8_t* xq, const BlockSums& s, const uint8_t* Wr, const RepackLayout& L,
                          const float* bias, float* y, int64_t N, int64_t nb, int64_t g0, int64_t g1) {
  const bool q8 = L.qb == 32 * kGroup;
  for (int64_t g = g0; g < g1; ++g) {
    double acc[kGroup] = {};
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* sp = L.scales(Wr, g) + size_t(b) * L.rec;
      const uint8_t* qp = L.quants(Wr, g) + size_t(b) * L.rec;
      const int8_t* xb = xq + b * kQK;
      for (int64_t r = 0; r < kGroup; ++r) {
        uint16_t h;
        std::memcpy(&h, sp + 2 * r, 2);
        int32_t isum = 0;
        for (int t = 0; t < (q8 ? 8 : 4); ++t)
          for (int i = 0; i < 4; ++i) {
            const uint8_t v = qp[(size_t(t) * kGroup + size_t(r)) * 4 + size_t(i)];
            if (q8)
              isum += int32_t(int8_t(v)) * xb[4 * t + i];
            else
              isum += (int32_t(v & 0x0F) - 8) * xb[4 * t + i] + (int32_t(v >> 4) - 8) * xb[16 + 4 * t + i];
          }
        acc[r] += double(isum) * (double(f16_to_f32(h)) * double(s.dx[b]));
      }
    }
    for (int64_t r = 0; r < kGroup; ++r) {
      const int64_t n = g * kGroup + r;
      if (n < N) y[n] = float(acc[r] + (bias ? double(bias[n]) : 0.0));
    }
  }
}

#if defined(__x86_64__)
#define EMO_TRP __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))

inline int32_t ld32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The q4_0 step's two pieces, shared by block_step's q4_0 branch (t-major: line t of the NG
// groups, then t + 1) and record_block_q40_addr (address order: group by group), so the two orders
// run the same operations on each value by construction (the same bits). Session 32 (h-q4fold)
// folded them here; objdump of every ms_q40_avx512 / groups_avx512 / parts_q80_avx512 /
// group_tile_avx512 / panel_groups_avx512 instantiation: the same instructions in the same order
// as the two copies before, but groups_avx512<*, 1>'s two f32 accumulators in swapped registers.
// Two spellings that changed the code: the chains passed by reference (q40_line(a[j], c[j], ...):
// groups_avx512<false, 1> +8 instructions, its tail block spilling; scratch N = 16 rows, which run
// that pass alone, 0.964x / 0.975x the speed at K = 11008 / 4096: base / by-reference time by
// median, 1 thread thread CPU time; bench/README's h-q4fold row) and the scale product passed as
// a value computed before the sum (the scale loads move ahead of the sum in groups_avx512<false,
// 4 / 2> and the t-major ms_q40_avx512).
//
// One q4_0 quant line at p against x's quads xl (low nibbles) / xh (high ones): the line loaded
// once for both operands (left to itself GCC folds the load into both and reads twice), its low
// nibbles' dpbusd into chain a, its high nibbles (16 x the nibble, left in place) into chain c.
struct Q40Chains {
  __m512i a, c;
};
__attribute__((always_inline)) EMO_TRP inline Q40Chains q40_line(Q40Chains ch, const uint8_t* p, __m512i xl, __m512i xh,
                                                                 __m512i m0f) {
  __m512i v = _mm512_loadu_si512(p);
  __asm__("" : "+v"(v));
  return {_mm512_dpbusd_epi32(ch.a, _mm512_and_si512(v, m0f), xl), _mm512_dpbusd_epi32(ch.c, _mm512_andnot_si512(m0f, v), xh)};
}
// A group's close after its block: the exact int32 block sum (q4_0: a + (c >> 4), the high chain
// shifted back once; q8_0: a + c), cvt, times fp16(d_w) * d_x, FMA'd into f. sc: that product, or
// a callable that computes it after the sum (block_step: its scale loads stay after the sum).
template <bool Q8, class Scale>
__attribute__((always_inline)) EMO_TRP inline __m512 group_close(__m512i a, __m512i c, Scale sc, __m512 f) {
  const __m512i sum = _mm512_add_epi32(a, Q8 ? c : _mm512_srai_epi32(c, 4));
  if constexpr (std::is_invocable_v<Scale>) {
    const __m512 s = sc();
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), s, f);
  } else {
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), sc, f);
  }
}
// fp16(d_w) * d_x for the group's 16 scales at p.
__attribute__((always_inline)) EMO_TRP inline __m512 group_scale(const uint8_t* p, __m512 d) {
  return _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), d);
}

// One block of NG consecutive groups: per group the exact int32 block sum of its 16 rows, times
// fp16(d_w) * d_x, FMA'd into f[j]. x bytes 4t..4t+3 are broadcast to every lane and, with d_x and
// -off * sum(x_b), shared by the NG groups. The weights are made unsigned for vpdpbusd and the
// offset comes back as -off * sum(x_b), which starts a chain: q8_0 quants + 128 (two chains per
// group, even / odd quads: one chain of 8 would serialise on vpdpbusd's latency); q4_0 the raw
// nibble (q + 8): the low nibbles as v & 0x0F and the high ones left in place as v & 0xF0 = 16 x
// the nibble, one logic op per operand (no shift per 64 bytes), whose chain sum is an exact
// multiple of 16, shifted back once per block. So the int32 sum, and every bit after it, is what
// one chain over the plain nibbles would give.
//
// Where the block's bytes are is the caller's: quant(j, t) = group j's 64-byte quant line t,
// scale(j) = its 16 fp16 scales; q8_0 calls pf(j, t) just before loading quant(j, t) (the parts
// pass's prefetch along its streams; nothing by default). groups_block (a pass's groups through RepackLayout) and
// record_block_q40 (one 4-group q4_0 record from one base pointer, the two-stream pass)
// are this step with two addressings: the same operations in the same order, the same bits.
struct NoLinePrefetch {
  void operator()(int, int) const {}
};
template <bool Q8, int NG, class QuantAt, class ScaleAt, class LinePf = NoLinePrefetch>
__attribute__((always_inline)) EMO_TRP inline void block_step(const int8_t* xb, float dx, int32_t neg, QuantAt quant,
                                                              ScaleAt scale, __m512 (&f)[NG], LinePf pf = {}) {
  const __m512i m0f = _mm512_set1_epi8(0x0F), m80 = _mm512_set1_epi8(char(0x80));
  const __m512i n = _mm512_set1_epi32(neg);
  __m512i a[NG], c[NG];
#pragma GCC unroll 4
  for (int j = 0; j < NG; ++j) a[j] = n, c[j] = _mm512_setzero_si512();
  if constexpr (Q8) {
#pragma GCC unroll 8
    for (int t = 0; t < 8; ++t) {
      const __m512i x = _mm512_set1_epi32(ld32(xb + 4 * t));
#pragma GCC unroll 4
      for (int j = 0; j < NG; ++j) {
        pf(j, t);
        const __m512i w = _mm512_xor_si512(_mm512_loadu_si512(quant(j, t)), m80);
        if (t & 1)
          c[j] = _mm512_dpbusd_epi32(c[j], w, x);
        else
          a[j] = _mm512_dpbusd_epi32(a[j], w, x);
      }
    }
  } else {
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) {
      const __m512i xl = _mm512_set1_epi32(ld32(xb + 4 * t)), xh = _mm512_set1_epi32(ld32(xb + 16 + 4 * t));
#pragma GCC unroll 4
      for (int j = 0; j < NG; ++j) {
        const Q40Chains ch = q40_line({a[j], c[j]}, quant(j, t), xl, xh, m0f);  // by value (see q40_line)
        a[j] = ch.a, c[j] = ch.c;
      }
    }
  }
  const __m512 d = _mm512_set1_ps(dx);
#pragma GCC unroll 4
  for (int j = 0; j < NG; ++j)
    f[j] = group_close<Q8>(
        a[j], c[j], [&]() EMO_TRP __attribute__((always_inline)) { return group_scale(scale(j), d); }, f[j]);
}

// block_step on NG consecutive groups of a pass: gs[j] / gq[j]: group j's scales / quants of
// block 0 (RepackLayout), off: the block's record offset.
template <bool Q8, int NG, class LinePf = NoLinePrefetch>
__attribute__((always_inline)) EMO_TRP inline void groups_block(const int8_t* xb, float dx, int32_t neg,
                                                                const uint8_t* const* gs, const uint8_t* const* gq,
                                                                size_t off, __m512 (&f)[NG], LinePf pf = {}) {
  block_step<Q8, NG>(
      xb, dx, neg, [&](int j, int t) { return gq[j] + off + 64 * t; }, [&](int j) { return gs[j] + off; }, f, pf);
}

// NG consecutive groups (g0, g0 + 1, ... of the matrix at W, layout L; `cols` valid outputs from
// y) against x: per group even and odd blocks go to two f32 accumulators, then their sum, then the
// bias (the arithmetic group_tile_avx512 and the panel kernel keep per row), so the bits do not
// depend on NG or on the layout. Several groups a pass share the x broadcasts and scale math.
// Measured on Zen 5 (2 vCPUs, interleaved A/B in bench_kernels): one group a pass with the
// shift-and-mask unpack ran q4_0 at ~60 GB/s per thread with L3-resident weights (load-port bound:
// x broadcasts, duplicated weight loads, prefetches); four a pass ~80 GB/s, and from memory at 2
// threads 1.1-1.3x. On the previous one-group records a pass read NG streams side by side, q4_0
// prefetching 4 records (~1.1 KiB) ahead per stream and q8_0 on the hardware prefetcher alone; on
// 4-group records a pass of 4 reads one stream, prefetched ~9 KiB ahead (8 q4_0 / 4 q8_0 records).
//
// Pass edges: a stream is one super-group's nb records (72 KiB of q4_0 at K = 2048), so at 1.1B
// shapes a thread starts a new stream every few microseconds, and each start waited for
// memory (its first blocks were never prefetched, and the hardware prefetcher needs a few misses
// to lock on). With `has_next` (a pass after this one in the same thread's chunk, next_ng groups
// from g0 + NG) the prefetches that would run past the end of a stream go to the start of the
// next pass's matching stream instead (on 4-group records: the next super-group, which follows in
// memory anyway; q8_0 on one-group records, with no prefetch along its streams, issues just
// those), so that pass begins on lines already in flight; a pass that nothing prefetched (`cold`:
// a chunk's first) prefetches its own first `ahead` bytes before starting. Prefetches only: the
// arithmetic and the bits are unchanged.
template <bool Q8, int NG>
EMO_TRP void groups_avx512(const int8_t* xq, const BlockSums& s, const uint8_t* W, const RepackLayout& L, int64_t g0,
                           int64_t nb, const float* bias, float* y, int64_t cols, bool has_next = false,
                           int next_ng = 0, bool cold = false) {
  // prefetch along the streams: q4_0; q8_0 on 4-group records (on one-group records it ran best on
  // the hardware prefetcher alone)
  const bool kAlong = !Q8 || L.sg > 1;
  // Streams: the super-groups the pass touches (one for a pass of 4 groups on 4-group records,
  // NG on the previous one-group records), each nb records of `rec` bytes; the next pass's the same
  // from g0 + NG. How far ahead along a stream and across a pass edge: 4 one-group records (the
  // previous layout's measured best), 8 four-group ones (9 KiB of q4_0; measured 1.12-1.17x 4
  // ahead in the standalone copy, cold, one thread).
  const size_t rec = L.rec, stride = L.sgstride, ahead = (L.sg == 1 ? 4 : Q8 ? 4 : 8) * rec;
  const int ns = int((g0 + NG - 1) / L.sg - g0 / L.sg + 1);
  const int nns = has_next ? int((g0 + NG + next_ng - 1) / L.sg - (g0 + NG) / L.sg + 1) : 0;
  const uint8_t* st[NG];
  const uint8_t* nx[NG];
  for (int k = 0; k < ns; ++k) st[k] = W + size_t(g0 / L.sg + k) * stride;
  for (int k = 0; k < nns; ++k) nx[k] = W + size_t((g0 + NG) / L.sg + k) * stride;
  __m512 f0[NG], f1[NG];
  const uint8_t* gs[NG];
  const uint8_t* gq[NG];
#pragma GCC unroll 4
  for (int j = 0; j < NG; ++j) f0[j] = f1[j] = _mm512_setzero_ps(), gs[j] = L.scales(W, g0 + j), gq[j] = L.quants(W, g0 + j);
  if (cold)
    for (int k = 0; k < ns; ++k)
      for (size_t o = 0; o < ahead && o < stride; o += 64) _mm_prefetch(reinterpret_cast<const char*>(st[k] + o), _MM_HINT_T0);
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
    const size_t off = size_t(b) * rec;
    if (off + ahead + 2 * rec <= stride) {
      if (kAlong)
        for (int k = 0; k < ns; ++k)
          for (size_t o = 0; o < 2 * rec; o += 64)
            _mm_prefetch(reinterpret_cast<const char*>(st[k] + off + ahead + o), _MM_HINT_T0);
    } else if (has_next) {  // the pass's last blocks: past a stream's end is the next pass's start
      for (int k = 0; k < ns; ++k)
        for (size_t o = 0; o < 2 * rec; o += 64) {
          const size_t at = off + ahead + o;
          if (at >= stride) {
            if (k < nns) _mm_prefetch(reinterpret_cast<const char*>(nx[k] + (at - stride)), _MM_HINT_T0);
          } else if (kAlong) {
            _mm_prefetch(reinterpret_cast<const char*>(st[k] + at), _MM_HINT_T0);
          }
        }
    } else if (kAlong) {  // without a next pass: as along the stream (into what follows it)
      for (int k = 0; k < ns; ++k)
        for (size_t o = 0; o < 2 * rec; o += 64)
          _mm_prefetch(reinterpret_cast<const char*>(st[k] + off + ahead + o), _MM_HINT_T0);
    }
    groups_block<Q8, NG>(xq + b * kQK, s.dx[b], s.neg[b], gs, gq, off, f0);
    groups_block<Q8, NG>(xq + (b + 1) * kQK, s.dx[b + 1], s.neg[b + 1], gs, gq, off + rec, f1);
  }
  if (b < nb) groups_block<Q8, NG>(xq + b * kQK, s.dx[b], s.neg[b], gs, gq, size_t(b) * rec, f0);
#pragma GCC unroll 4
  for (int j = 0; j < NG; ++j) {
    const int64_t c = cols - kGroup * j;
    const __mmask16 m = c >= kGroup ? __mmask16(0xFFFF) : __mmask16((1u << c) - 1);
    __m512 r = _mm512_add_ps(f0[j], f1[j]);
    if (bias) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, bias + kGroup * j));
    _mm512_mask_storeu_ps(y + kGroup * j, m, r);
  }
}

// block_step<false, kSuperGroup> on one q4_0 4-group record at r (scales of group j at r + 32j,
// its quants at r + 128 + 256j: RepackLayout at sg = 4): groups_block's step (the same bits) from
// one base pointer instead of eight.
__attribute__((always_inline)) EMO_TRP inline void record_block_q40(const int8_t* xb, float dx, int32_t neg,
                                                                    const uint8_t* r, __m512 (&f)[kSuperGroup]) {
  constexpr int NG = kSuperGroup;
  block_step<false, NG>(
      xb, dx, neg, [&](int j, int t) { return r + 2 * kGroup * NG + 256 * j + 64 * t; },
      [&](int j) { return r + 2 * kGroup * j; }, f);
}

// record_block_q40 with the record's 18 lines loaded in address order (set_q40_ms_addr_order;
// decode_tuning.h q40_addr_order): the 4 groups' scale products dw * d first (lines 0-1), then
// group by group its 4 quant lines (t = 0..3) into its two int32 chains, and its sum into f[j];
// block_step's q4_0 order is t-major (line t of groups 0..3, then t + 1: strides of 256 bytes back
// and forth across the record, the scales last). The same operations on each value in the same
// order (the chains, the int32 sum, cvt, dw * d, the FMA; block_step's own pieces q40_line,
// group_close and group_scale): the same bits. x's 8 broadcasts are
// shared as before (GCC hoists them; objdump: 119 instructions a record, as the t-major form).
__attribute__((always_inline)) EMO_TRP inline void record_block_q40_addr(const int8_t* xb, float dx, int32_t neg,
                                                                         const uint8_t* r, __m512 (&f)[kSuperGroup]) {
  constexpr int NG = kSuperGroup;
  const __m512i m0f = _mm512_set1_epi8(0x0F);
  const __m512i n = _mm512_set1_epi32(neg);
  const __m512 d = _mm512_set1_ps(dx);
  __m512 sc[NG];
#pragma GCC unroll 4
  for (int j = 0; j < NG; ++j) sc[j] = group_scale(r + 2 * kGroup * j, d);
#pragma GCC unroll 4
  for (int j = 0; j < NG; ++j) {
    Q40Chains ch{n, _mm512_setzero_si512()};
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t)
      ch = q40_line(ch, r + 2 * kGroup * NG + 256 * j + 64 * t, _mm512_set1_epi32(ld32(xb + 4 * t)),
                    _mm512_set1_epi32(ld32(xb + 16 + 4 * t)), m0f);
    f[j] = group_close<false>(ch.a, ch.c, sc[j], f[j]);
  }
}

// record_block_q40 on the record at r after prefetching the 18 lines at p (the same stream's record
// `ahead` bytes on) from a loop: ms_q40_avx512's prefetch form (measured there).
// Hint: _MM_HINT_T0 (Zen 5's default) / _MM_HINT_NTA / _MM_HINT_T1 (into L2; session 30), or -1:
// no prefetch (double-pumped AVX-512's default, decode_tuning.h). Addr: record_block_q40_addr's
// order of the record's loads after the loop (decode_tuning.h q40_addr_order: both rows), else
// block_step's.
template <int Hint, bool Addr = false>
__attribute__((always_inline)) EMO_TRP inline void record_block_q40_pf(const int8_t* xb, float dx, int32_t neg,
                                                                       const uint8_t* r, __m512 (&f)[kSuperGroup],
                                                                       const uint8_t* p) {
  if constexpr (Hint >= 0) {
#pragma GCC unroll 1
    for (int l = 0; l < 18; ++l) _mm_prefetch(reinterpret_cast<const char*>(p + 64 * l), static_cast<decltype(_MM_HINT_T0)>(Hint));
  }
  if constexpr (Addr) record_block_q40_addr(xb, dx, neg, r, f);
  else record_block_q40(xb, dx, neg, r, f);
}

// The q4_0 M = 1 pass on 2 streams (set_q40_ms, default on; S = 2, and S = 1 for a
// left-over super-group). The read probe's 4-stream loop (bench/native/q40_read_patterns read-4:
// 1.0-1.4x the one-stream pass cold at 1 thread) reads S long streams side by side, prefetching
// each a short way ahead along itself with small loops among its loads. Here: the streams are S
// contiguous parts of the thread's super-groups, `part` groups apart (stream k reads the
// super-group of g0 + k * part), so each runs on through its part pass after pass and its
// prefetches run into its next super-group without an edge case; before each record of a stream,
// one loop prefetches that stream's record `ahead` bytes on (18 lines). Measured on Zen 5 (1 thread,
// cold 2 MiB pages, thread CPU time, loaded; session 19): 2 streams 4 KiB ahead 0.99-1.08x the
// default pass (best of 150 rounds), 1.05-1.09x in the 1.1B / 7B q4_0 decode; 2 KiB / 9 KiB
// ahead 0.96-1.02x; 4 streams 0.80-1.06x (32 f32 accumulators: spills); 3 streams (session 20)
// 0.94-0.98x by median on six 1.1B / 7B shapes (24 accumulators: GCC's S = 3 pass has 113 zmm
// stack accesses against 45 at S = 2); 4 streams with their accumulators in a stack array, loaded
// and stored once a record, 0.53-0.59x by median; the same prefetches as
// 4-5-line straight-line slices among the block's loads 0.65-0.89x (GCC bunches them into bursts,
// which act as no prefetch on this VM), as 4-5-line loops 0.8-1.1x. Session 22 (1 thread, cold,
// thread CPU time, loaded): the same loops with prefetcht1 (into L2) 0.70-0.78x by median, with
// prefetchnta 0.97-1.02x; the pass reads at 0.98-1.0x (median) the read probe's 4-stream loop over
// the same bytes and 1.09-1.15x its own read pattern without the arithmetic (read-2-4k), and in the
// model at the rate it reaches alone: its arithmetic is hidden behind the reads. 4 streams with
// streams 0-1's accumulators in registers and 2-3's in memory (loaded / stored around each record;
// same bits): 0.77-0.80x by median (GCC's loop: 125 stack accesses besides those). A record's
// quant lines loaded in address order (block_step's loops group-major, x's 8 broadcasts hoisted;
// same bits): 0.97-1.04x by median, neutral. Session 23 (1 thread, cold, thread CPU time, load 2-10;
// q40_read_patterns): each line's prefetch issued just before its load from an asm statement (GCC
// cannot bunch them; read-4's spread form) 0.87-0.97x by median with a memory clobber, 0.98-0.99x
// without; records split in two arrays (groups 0-1 / 2-3: two memory streams a compute stream; a
// scratch copy of this pass, same bits) 0.99-1.08x by best and 0.95-1.04x by median of the same copy
// on today's records, with spread prefetches 0.99-1.07x / 0.93-1.06x (0.90-0.97x of read-4 by best,
// against 0.86-0.93x), halves within each super-group 0.88-1.05x: not built.
// Session 25 on Zen 4 (double-pumped AVX-512, one shared L3; 1 thread, cold, thread CPU time, load
// 10-14, q40_read_patterns on 1.1B and 7B shapes): this pass with its T0 loops read at 0.60-0.67x a
// plain 4-stream read (the Zen 5 0.98-1.0x); without software prefetch 1.49-1.63x faster (0.93-1.00x
// the read), T1 1.05-1.31x, NTA 1.0x, 1 / 2 / 8 KiB ahead 1.02-1.10x, one stream without prefetch as
// two. So the prefetch is chosen per CPU (decode_tuning.h): none there, T0 elsewhere.
// Session 27 on Zen 5 again (1 thread, cold, thread CPU time, load 8-18, eight 1.1B / 7B shapes):
// none 0.44-0.67x T0, NTA 0.94-1.07x; the pass reads at 0.91-1.14x a plain 2-stream read of its
// bytes (read-2) and 0.78-0.91x the 4-stream probe (read-4), and every 2-stream read pattern (loop
// or spread prefetch, 1-4 KiB ahead) reads at read-2's rate: what it lacks is memory streams.
// 2-group records (4 memory streams a thread with the same 16 accumulators; side branch h-q40-sg2)
// read 0.91-0.99x these by median, a second prefetcht2 loop 8-32 KiB ahead 0.76-0.99x: not built.
// Arithmetic: record_block_q40's, or record_block_q40_addr's (the same bits) (every group's even /
// odd f32 accumulators, block order, final sum, bias): the default pass's bits. y, bias and cols
// are group g0's; stream k's groups are written at y + 16 * (k * part + j). cold: prefetch each
// stream's first `ahead` bytes first.
// Session 30 (h-q4pf) built a spread form (each line's prefetch beside the load of the line `ahead`
// bytes behind it, from an asm statement) and >= 2-thread twins of the read entries: Zen 4 at 1
// thread (thread CPU time, six 1.1B / 7B shapes) spread T0 512 B - 2 KiB 0.51-0.97x none's speed,
// NTA 1 KiB 0.73-0.79x, T1 1 KiB 0.97-1.05x (the records' walk with those T0 prefetches and no
// arithmetic, spread2x1-1k, 1.19-1.42x the pass); at 2 threads, quietly, no form won in both of
// the VM's bandwidth phases (spread T1 +2-6% in a low one, -2-20% in a high one; bench/README's
// Zen 4 rows of session 30). Both removed in session 31.
// Addr (session 31, h-q4code; decode_tuning.h q40_addr_order, Zen 4's row; then only where Hint is -1):
// each record's lines in address order (record_block_q40_addr: the scales' dw * d first, then group
// by group), not block_step's t-major order. Zen 4, 1 thread, thread CPU time, cold 2 MiB-page
// copies, interleaved call by call (q40_read_patterns' gemv-addr / gemv-tmajor and scratch rows),
// load 4.1-8.6, 3-6 processes x 50-200 rounds at 2560 x 2048, 2048 x 2048, 11264 x 2048, 2048 x
// 5632, 12288 x 4096, 4096 x 11008, median r(med) by shape against the t-major pass: address order
// 1.19-1.30x (the pass at 0.96-1.02x a plain 2-stream read of its bytes, read-2, where the t-major
// one reads at 0.79-0.85x / 0.74-0.85x in the 4 x 60 / 6 x 200 sweeps); the quant lines group by
// group with the scales last 1.16-1.22x; the scales first but t-major 1.10-1.13x. Instruction forms (scratch, same bits; objdump, per 1152-byte
// record: the t-major pass 119 instructions, 16 loads, 32 vpdpbusd, 32 vpandd / vpandnd, 7.5
// vmovdqa32 chain starts, 4.5 vpbroadcastd, 10 stack accesses per 4 records: 5 of its 16 f32
// accumulators spilled): x's quads as vpdpbusd's {1to16} memory operand (no broadcast registers,
// no spills, 114 instructions) 1.01-1.14x t-major, group by group 1.18-1.28x, as address order
// alone; the chains started from zero idioms with -off * sum(x_b) added after 1.02-1.05x; from a
// vpbroadcastd load and a zero idiom (no copies) 1.05-1.12x; each line loaded 2 lines before its
// use (asm volatile) 0.94-1.00x. The address-order pass is 119 instructions a record as t-major:
// the order is the gain, not the count. With the weights in L2 (512 x 2048, one copy) every form
// runs ~64-66 GB/s a thread, address order 0.97-0.98x t-major.
// Session 33 (h-z5q4) on Zen 5: the address order after the T0 loop, 2 KiB ahead (Zen 5's row since;
// decode_tuning.h q40_addr_order / q40_ahead), 1.03-1.10x the t-major T0 4 KiB pass by median at
// the six shapes above (1 thread, thread CPU time, load 10-13), t-major at 2 KiB 1.02-1.04x;
// without prefetch either order 0.64-0.80x. A spread form (each line's prefetch in an asm statement
// with the line's load pin, q40_line's, in address order) read 0.99-1.11x: no better, not kept.
template <int S, int Hint, bool Addr = false>
EMO_TRP void ms_q40_avx512(const int8_t* xq, const BlockSums& s, const uint8_t* W, const RepackLayout& L, int64_t g0,
                           int64_t nb, const float* bias, float* y, int64_t cols, bool cold, size_t ahead,
                           int64_t part) {
  constexpr int NG = kSuperGroup;
  constexpr size_t kRec = 2 * kGroup * NG + 256 * NG;  // 1152 bytes, 18 lines
  const size_t stride = L.sgstride;
  const uint8_t* st[S];
  __m512 f0[S][NG], f1[S][NG];
#pragma GCC unroll 4
  for (int k = 0; k < S; ++k) {
    st[k] = W + size_t((g0 + k * part) / NG) * stride;
#pragma GCC unroll 4
    for (int j = 0; j < NG; ++j) f0[k][j] = f1[k][j] = _mm512_setzero_ps();
  }
  if (cold)
    for (int k = 0; k < S; ++k)
#pragma GCC unroll 1
      for (size_t o = 0; o < ahead; o += 64) _mm_prefetch(reinterpret_cast<const char*>(st[k] + o), _MM_HINT_T0);
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
    const size_t off = size_t(b) * kRec;
#pragma GCC unroll 4
    for (int k = 0; k < S; ++k) record_block_q40_pf<Hint, Addr>(xq + b * kQK, s.dx[b], s.neg[b], st[k] + off, f0[k], st[k] + off + ahead);
#pragma GCC unroll 4
    for (int k = 0; k < S; ++k)
      record_block_q40_pf<Hint, Addr>(xq + (b + 1) * kQK, s.dx[b + 1], s.neg[b + 1], st[k] + off + kRec, f1[k], st[k] + off + kRec + ahead);
  }
  if (b < nb)
#pragma GCC unroll 4
    for (int k = 0; k < S; ++k)
      record_block_q40_pf<Hint, Addr>(xq + b * kQK, s.dx[b], s.neg[b], st[k] + size_t(b) * kRec, f0[k], st[k] + size_t(b) * kRec + ahead);
#pragma GCC unroll 4
  for (int k = 0; k < S; ++k)
#pragma GCC unroll 4
    for (int j = 0; j < NG; ++j) {
      const int64_t at = kGroup * (part * k + j);
      const int64_t c = cols - at;
      const __mmask16 m = c >= kGroup ? __mmask16(0xFFFF) : c <= 0 ? __mmask16(0) : __mmask16((1u << c) - 1);
      __m512 r = _mm512_add_ps(f0[k][j], f1[k][j]);
      if (bias) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, bias + at));
      _mm512_mask_storeu_ps(y + at, m, r);
    }
}

// The q8_0 M = 1 pass on S streams (set_q80_streams): the thread's groups cut into S contiguous
// parts, a pass one group of each part (g0 + k * part, k < S) against x, the S groups sharing x's
// broadcasts as groups_avx512's NG groups do. q8_0's records are one group's, and a group's nb
// records are followed by the next group's, so each part is one unbroken run of memory: stream k
// goes on from one group into the next with no edge, where groups_avx512 (4 adjacent groups a
// pass) reads 4 streams that end together every nb records and start again 4 * nb records on.
// Measured on Zen 4 (session 26; 1 thread, cold 2 MiB pages, thread CPU time, interleaved, load
// 8-11, bench/native/q8_read_patterns at 5632 x 2048, 2048 x 5632, 4096 x 11008, 11008 x 4096):
// the four-group pass reads at 0.85-1.02x (median) a plain 1-stream read of the same bytes and
// as fast as its own loads without the arithmetic (with the weights in L2 / L3 it runs at ~80
// GB/s a core, ~3x its cold rate: bound by how it reads, not by its ~3.4 instructions a line);
// without prefetch 2 parts 1.05-1.15x it (1.00-1.07x a plain 2-stream read), 1 part 1.04-1.17x,
// 3 1.04-1.20x, 4 0.97-1.11x; T0 along 2 parts 0.82-0.88x, T1 0.94-1.05x (1 part), 0.76x (2)
// (those prefetches: a block pair's 17 lines in a loop before each pair, 4 KiB ahead).
// The 1.1B q8_0 decode (1 thread CPU time) 2 parts 1.10x, 1 part 1.15x, 3 1.08x; 1 against 2
// parts 0.99x; 2 parts with T1 0.80x.
// Zen 4 again with this form (session 28; the same tool and clock, load 10-14, 3 processes a shape
// in each of two sweeps, 30 rounds, at the 1.1B / 7B shapes 2560 x 2048, 2048 x 2048, 11264 x
// 2048, 2048 x 5632, 12288 x 4096, 4096 x 4096, 22016 x 4096, 4096 x 11008): 2 parts without prefetch (Zen 4's default) read
// at 0.99-1.17x read-4 and 0.93-1.07x read-2-nopf by median, and every prefetching form reads
// slower: T0 0.79-0.88x (4 KiB ahead), 0.87-0.97x (1 KiB), 0.85-0.92x (2 KiB), 0.80-0.87x (512
// B); 3 / 4 parts T0 1 KiB 0.85-0.95x / 0.80-0.91x; 2 parts T1 0.74-0.84x, NTA 0.66-0.86x; the 17th
// prefetch 0.97-1.06x the same form without it. The 1.1B q8_0 decode: 2 parts T0 4 KiB 0.75-0.86x none.
// Measured on Zen 5 (session 27; the same tool and clock, load 8-22, at 5632 x 2048, 2048 x 2048,
// 256 x 2048, 32000 x 2048, 11008 x 4096, 4096 x 11008, 2048 x 5632): the four-group pass reads at
// 0.80-0.92x (median) the read probe's loop over the same bytes (read-4: 4 streams, 128 bytes a
// step, T0 1 KiB ahead); without prefetch 2 parts 1.01-1.09x it, 4 parts 1.01-1.07x (0.80-0.95x
// read-4); the 17-line loop before each pair 4 KiB ahead 0.86-0.96x the same parts without it (T0,
// 2 parts), T1 worse; that loop 1 KiB ahead 0.96-1.17x the four-group pass at 2 parts, 0.98-1.08x
// at 4. One prefetch before each quant line's load (this form), T0 1 KiB ahead: 4 parts
// 1.09-1.17x the four-group pass (0.93-0.99x read-4), 3 parts 1.07-1.23x, 2 parts 0.98-1.11x;
// at 4 parts 512 bytes ahead 0.89-0.96x 1 KiB, 2 KiB 0.93-0.98x, NTA as T0, no prefetch 0.90-0.97x;
// the same prefetches as _mm_prefetch (GCC moves a block pair's 32 to its front) 1.05-1.12x the
// four-group pass. The 1.1B q8_0 decode (1 thread CPU time, bench/README): 4 parts T0 1 KiB
// against the four-group pass 1.12-1.19x, against the same parts without prefetch 1.08-1.11x.
// Defaults per CPU (decode_tuning.h q80_streams / q80_prefetch / q80_ahead): Zen 4 2 parts
// without prefetch, Zen 5 (every CPU without the double-pumped trait) 4 parts, T0 1 KiB ahead.
// Session 30's >= 2-thread entries for this prefetch (q80_prefetch_mt / q80_ahead_mt; quietly at 2
// threads T1 1 KiB 0.98-1.00x none, T0 0.84-0.96x, the 1.1B q8_0 decode with T1 1 KiB 1.005) were
// never set on a row and went in session 31.
// Hint: a prefetch along each stream `ahead` bytes on, one before each quant line's load (the line
// `ahead` bytes past it), issued from an asm statement so that it stays beside its load
// (_MM_HINT_T0 / _MM_HINT_T1 / _MM_HINT_NTA), or -1: none (the hardware prefetchers alone). A
// q8_0 record is 544 bytes (not a multiple of 64), so a block pair's 16 prefetches cover 16 of the
// 17 lines its loads touch: one line a pair (the even record's last quant bytes and the odd
// record's scales) is left to the hardware prefetchers, or with Line17 (set_q80_line17; where Hint
// is not -1) prefetched too, beside the even record's last quant line's load (the first to touch it).
// Arithmetic: block_step's per group (even / odd f32 accumulators, block order, their sum, the
// bias): groups_avx512's bits. y, bias and cols are group g0's; part k's group is written at
// y + 16 * k * part. cold: prefetch each stream's first `ahead` bytes first.
// Load order (session 32, h-q8order; scratch forms in commit 6eab425, reverted). The main loop of
// parts_q80_avx512<2, -1> (objdump) is 118 instructions a block pair of the 2 streams (4 records,
// 34 lines; 29.5 a record): 32 quant loads (vpxord's memory operand, 8 a record), 4 scale loads
// (vcvtph2ps), 18 vpbroadcastd (x's 16 quads, shared by the streams, and the 2 chain offsets), 2
// vbroadcastss (d_x), 32 vpdpbusd, 6 vmovdqa32 chain starts, no stack access. The loads go line t
// of stream 0, line t of stream 1, then t + 1 (block_step), each record's scales after its quants,
// so per stream every line is first touched in address order already: the even record's quant
// line t (bytes 32 + 64t of the pair) straddles lines t and t + 1, so its first load touches its
// scales' line 0 and its last the shared line 8 (its last 32 quant bytes, the odd record's
// scales); the odd record's quant lines 9-16 are aligned. The same bits in other orders (the same
// chains and f32 operations a value), q8_read_patterns, Zen 4, 1 thread, thread CPU time, cold
// 2 MiB-page copies, interleaved call by call, 2560 x 2048, 11264 x 2048, 2048 x 5632, 12288 x
// 4096, 22016 x 4096, 4096 x 11008, load 2.5-7.2, median r(med) by shape against this order: each
// block's scales first 1.011-1.033x (27 processes x 150-200 rounds; 1.026 across the shapes) and
// the 1.1B q8_0 decode on / off 1.005-1.041 (decode_switch_ab, AB_CPU=1, 4 processes x 12 rounds
// x 16 tokens; A/As 0.972-1.020): below a 1.03x bar, not built; a block stream by stream (a
// record's 8 lines and scales, then the other stream's) 0.82-0.91x; a block pair stream by stream
// (17 lines a stream) 0.85-0.93x; runs of 2 / 4 lines a stream 0.88-0.91x / 0.86-0.90x; both
// blocks' scales at the pair's front (the odd record's scales, line 8, touched before lines 1-7)
// 0.88-0.90x. This pass reads at 0.98-1.06x a plain 2-stream read of its bytes in 1088-byte steps
// (read-2-nopf) and 0.96-1.02x one in 128-byte steps (read-2-nopf128). (The groups a thread's
// parts leave over, at most one, run groups_avx512<true, 1>: the same block_step order.)
template <int Hint>
__attribute__((always_inline)) inline void prefetch_here(const uint8_t* p) {
  // an asm statement, not _mm_prefetch: GCC schedules the builtin's prefetches of a block pair
  // together at its front (objdump), and then they read as a burst
  if constexpr (Hint == _MM_HINT_T0) __asm__ volatile("prefetcht0 %0" : : "m"(*p));
  else if constexpr (Hint == _MM_HINT_T1) __asm__ volatile("prefetcht1 %0" : : "m"(*p));
  else {
    static_assert(Hint == _MM_HINT_NTA, "prefetch_here: T0, T1 or NTA");
    __asm__ volatile("prefetchnta %0" : : "m"(*p));
  }
}
template <int S, int Hint, bool Line17 = false>
EMO_TRP void parts_q80_avx512(const int8_t* xq, const BlockSums& s, const uint8_t* W, const RepackLayout& L, int64_t g0,
                              int64_t nb, const float* bias, float* y, int64_t cols, bool cold, size_t ahead,
                              int64_t part) {
  const size_t rec = L.rec;
  __m512 f0[S], f1[S];
  const uint8_t* gs[S];
  const uint8_t* gq[S];
#pragma GCC unroll 4
  for (int k = 0; k < S; ++k)
    f0[k] = f1[k] = _mm512_setzero_ps(), gs[k] = L.scales(W, g0 + k * part), gq[k] = L.quants(W, g0 + k * part);
  if (cold)
    for (int k = 0; k < S; ++k)
#pragma GCC unroll 1
      for (size_t o = 0; o < ahead; o += 64) _mm_prefetch(reinterpret_cast<const char*>(gs[k] + o), _MM_HINT_T0);
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
    const size_t off = size_t(b) * rec;
    // the line `ahead` bytes past quant line t of group j's record at o (nothing when Hint is -1:
    // one spelling for every hint; objdump, session 28: the same instructions in all 16
    // instantiations as the with / without spellings before). always_inline: as an ordinary
    // lambda GCC finds it free of side effects and drops its calls before inlining (objdump: no
    // prefetch left in the loop)
    auto pf = [&](size_t o, int j, int t) __attribute__((always_inline)) {
      if constexpr (Hint >= 0) prefetch_here<Hint>(gq[j] + o + ahead + 64 * t);
    };
    auto pf0 = [&](int j, int t) __attribute__((always_inline)) {
      pf(off, j, t);
      if constexpr (Line17)
        if (t == 7) pf(off, j, 8);  // the pair's line 8: quants 480-511 of the even record, the odd one's scales
    };
    auto pf1 = [&](int j, int t) __attribute__((always_inline)) { pf(off + rec, j, t); };
    groups_block<true, S>(xq + b * kQK, s.dx[b], s.neg[b], gs, gq, off, f0, pf0);
    groups_block<true, S>(xq + (b + 1) * kQK, s.dx[b + 1], s.neg[b + 1], gs, gq, off + rec, f1, pf1);
  }
  if (b < nb) groups_block<true, S>(xq + b * kQK, s.dx[b], s.neg[b], gs, gq, size_t(b) * rec, f0);
#pragma GCC unroll 4
  for (int k = 0; k < S; ++k) {
    const int64_t at = kGroup * part * k;
    const int64_t c = cols - at;
    const __mmask16 m = c >= kGroup ? __mmask16(0xFFFF) : c <= 0 ? __mmask16(0) : __mmask16((1u << c) - 1);
    __m512 r = _mm512_add_ps(f0[k], f1[k]);
    if (bias) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, bias + at));
    _mm512_mask_storeu_ps(y + at, m, r);
  }
}

// MR rows of X (row i: xq + i*ldq, block sums s[i]) against one group: each weight block is loaded
// and unpacked once for the MR rows. Per row the arithmetic is groups_avx512's (exact int32 block
// sums; f32 accumulation of even and odd blocks apart, then their sum, then the bias), so a row
// gives the same bits in a batch as alone.
// GS / GQ: the group's scales / quants of block 0, rec: the record stride (RepackLayout). PF: the
// first record of the group's super-group when this tile is the first to read it (null otherwise):
// its whole records are prefetched 4 ahead, for this group and the ones after it that share them
// (alone, a group's 288 bytes of every 1152-byte q4_0 record are a strided pattern the hardware
// prefetchers follow badly: measured 0.78x the 16-row layout at M = 4 without it).
// Spread prefetch (SP, the next super-group's records spread over this one's tiles): NP the
// next super-group's first record (null: none), at = this tile's place (group within its
// super-group times nb), seg = rec / groups a record: per block b the bytes
// [(at + b) * seg, (at + b + 1) * seg) of the next super-group are prefetched, so the sg tiles of
// a super-group together read the next one's nb * rec bytes once, at an even rate.
// XI: X in a few-row panel (FewRowPanel: per block the rows' 32 quants, d_x and -off * sum side by
// side, one pointer for all rows; s unused): xq is the panel's block 0 at this tile's first row,
// ldq its block stride, xdo / xno the byte offsets from there to that row's d_x / sum. Measured
// on Zen 4 (1 thread, cache-resident weights): the 6-row tile 81 -> 64 cycles a block of a group,
// the 5-row one 57 -> 55 (GCC kept the per-row pointers of d_x and the sums in xmm registers
// and moved them back a block at a time).
template <bool Q8, int MR, bool SP, bool XI = false>
EMO_TRP void group_tile_avx512(const int8_t* xq, int64_t ldq, const BlockSums* s, const uint8_t* GS, const uint8_t* GQ,
                               size_t rec, const uint8_t* PF, int64_t nb, const float* bias, float* y, int64_t ldy,
                               int64_t rows, const uint8_t* NP = nullptr, int64_t at = 0, size_t seg = 0,
                               int64_t xdo = 0, int64_t xno = 0) {
  __m512 acc0[MR], acc1[MR];
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  const __m512i m0f = _mm512_set1_epi8(0x0F), m80 = _mm512_set1_epi8(char(0x80));
  for (int64_t b = 0; b < nb; ++b) {
    if (PF != nullptr && b + 4 < nb)
      for (size_t o = 0; o < rec; o += 64) _mm_prefetch(reinterpret_cast<const char*>(PF + size_t(b + 4) * rec + o), _MM_HINT_T0);
    if (SP && NP != nullptr) {
      const uintptr_t a0 = reinterpret_cast<uintptr_t>(NP) + size_t(at + b) * seg, a1 = a0 + seg;
      for (uintptr_t a = a0 & ~uintptr_t(63); a < a1; a += 64) _mm_prefetch(reinterpret_cast<const char*>(a), _MM_HINT_T1);
    }
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(GS + size_t(b) * rec)));
    const uint8_t* qp = GQ + size_t(b) * rec;
    // the block's 8 operand vectors: q8_0 quants made unsigned; q4_0 low nibbles (elements
    // 4t..4t+3) then high nibbles (16+4t..)
    __m512i w[8];
    if constexpr (Q8) {
      for (int t = 0; t < 8; ++t) w[t] = _mm512_xor_si512(_mm512_loadu_si512(qp + 64 * t), m80);
    } else {
      for (int t = 0; t < 4; ++t) {
        const __m512i v = _mm512_loadu_si512(qp + 64 * t);
        w[t] = _mm512_and_si512(v, m0f);
        w[4 + t] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m0f);
      }
    }
    const int8_t* xblk = XI ? xq + b * ldq : nullptr;
    for (int i = 0; i < MR; ++i) {
      const int8_t* xb = XI ? xblk + i * kQK : xq + i * ldq + b * kQK;
      int32_t ng;
      float dxv;
      if constexpr (XI) {
        std::memcpy(&ng, xblk + xno + 4 * i, 4);
        std::memcpy(&dxv, xblk + xdo + 4 * i, 4);
      } else {
        ng = s[i].neg[b], dxv = s[i].dx[b];
      }
      __m512i d0 = _mm512_set1_epi32(ng), d1 = _mm512_setzero_si512();
      for (int t = 0; t < 8; t += 2) {
        // q8_0: operand t pairs with x bytes 4t..; q4_0: t < 4 low nibbles with 4t.., t >= 4 high
        // nibbles with 16 + 4(t-4).. = 4t.. as well
        d0 = _mm512_dpbusd_epi32(d0, w[t], _mm512_set1_epi32(ld32(xb + 4 * t)));
        d1 = _mm512_dpbusd_epi32(d1, w[t + 1], _mm512_set1_epi32(ld32(xb + 4 * t + 4)));
      }
      const __m512 sc = _mm512_mul_ps(dw, _mm512_set1_ps(dxv));
      if (b & 1)
        acc1[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(d0, d1)), sc, acc1[i]);
      else
        acc0[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(d0, d1)), sc, acc0[i]);
    }
  }
  const __mmask16 m = rows >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << rows) - 1);
  const __m512 bv = bias ? _mm512_maskz_loadu_ps(m, bias) : _mm512_setzero_ps();
  for (int i = 0; i < MR; ++i) {
    __m512 r = _mm512_add_ps(acc0[i], acc1[i]);
    if (bias) r = _mm512_add_ps(r, bv);
    _mm512_mask_storeu_ps(y + i * ldy, m, r);
  }
}

// M > kSmallM: X quantised once into 4-row q8_0 panels (gemm_q8_xpanel.h, the panels of
// gemm_q8_vnni.cpp at another height) against NV = 2 groups at a time, read in place (no per-call
// weight packing): per block, each 64-byte weight load (16 rows x 4 bytes) feeds 4 vpdpbusd, one
// per panel row, with that row's 4 x bytes broadcast from the panel; each broadcast feeds 2. Per
// row and group the arithmetic is groups_avx512's (the exact int32 block sum, times fp16(d_w) * d_x
// rounded once, f32 FMA into the even- or odd-block accumulator, then their sum, then the bias),
// so every row keeps gemv_repacked's bits at any M. That takes two f32 accumulators per output:
// 4 x 2 tiles (8 int32 + 16 f32 zmm) fit the 32 registers; 6 x 1 measured ~10% slower at M = 512
// (more loads per vpdpbusd), 6 x 2 would spill.
// Budget per block of a 4 x 2 q4_0 tile: 64 vpdpbusd; the unpack, 8 weight loads into 8 ands and
// 8 shifts; the scale work 8 cvtdq2ps, 8 vmulps (fp16(d_w) * d_x),
// 8 FMAs; 36 dword broadcasts. Measured at M = 628, N = K = 4096, 1 thread (session 21, loaded):
// with the vmulps left out (wrong bits, a probe) 1.14x, with every scale op replaced by an int add
// 1.22x, with the high-nibble unpack left out 1.03x: the vmulps / FMAs appear to share the pipes
// of the vpdpbusd (64 + 16 of them a block), so the scale work, not the unpack or the loads, holds
// the kernel at ~68% of the vpdpbusd peak. Tried, same bits, no faster (bench/README): 8-row tiles
// (two X panels, the f32 sums in L1, 16 accumulator chains) 0.995-1.028x; int -> float by the
// 1.5 * 2^23 bias trick (an int add and an FADD instead of vcvtdq2ps) 0.98x; the X dwords as
// vpdpbusd's embedded {1to16} broadcast 0.95x; the high nibbles by one gf2p8affineqb (GFNI) instead
// of the shift and mask, quiet: 1.002-1.011x at 1 thread, 1.001-1.046x at 2 by best time, medians
// 0.99-1.01 (session 21: removed). Zen 5, session 33 (1 thread CPU time, loaded, in-process): each
// weight line loaded once into a register (GCC folds the load into both the and and the shift: 16
// loads a block for 8 lines) 1.001-1.010x by median; each int32 accumulator started by its own
// vpbroadcastd from memory instead of 4 register copies a block 0.998-1.006x: neither kept.
constexpr int kPanelRows = 4;
using XPanels = gemm_detail::Q8XPanels<kPanelRows>;
constexpr int kPanelGroups = 2;  // NV: groups (of 16 weight rows) per microkernel

// bs[j] / bq[j]: group j's scales / quants of this block.
template <bool Q8, int NV>
__attribute__((always_inline)) EMO_TRP inline void panel_block(const int32_t* xb, const uint8_t* const* bs,
                                                               const uint8_t* const* bq, __m512 (&f)[kPanelRows][NV]) {
  constexpr int MR = kPanelRows;
  const __m512i m0f = _mm512_set1_epi8(0x0F), m80 = _mm512_set1_epi8(char(0x80));
  __m512i acc[MR][NV];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    const __m512i c = _mm512_set1_epi32(xb[8 * MR + i]);
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = c;
  }
  if constexpr (Q8) {
#pragma GCC unroll 8
    for (int t = 0; t < 8; ++t) {
      __m512i w[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) w[j] = _mm512_xor_si512(_mm512_loadu_si512(bq[j] + 64 * t), m80);
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        const __m512i x = _mm512_set1_epi32(xb[t * MR + i]);
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], w[j], x);
      }
    }
  } else {
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) {
      __m512i lo[NV], hi[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        const __m512i v = _mm512_loadu_si512(bq[j] + 64 * t);
        lo[j] = _mm512_and_si512(v, m0f);                         // elements 4t..4t+3: quad t
        hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m0f);  // elements 16+4t..: quad 4+t
      }
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        const __m512i xl = _mm512_set1_epi32(xb[t * MR + i]), xh = _mm512_set1_epi32(xb[(4 + t) * MR + i]);
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) {
          acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], lo[j], xl);
          acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], hi[j], xh);
        }
      }
    }
  }
  __m512 dw[NV];
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) dw[j] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bs[j])));
  const float* dx = reinterpret_cast<const float*>(xb + 9 * MR);
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    const __m512 d = _mm512_set1_ps(dx[i]);
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) f[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][j]), _mm512_mul_ps(dw[j], d), f[i][j]);
  }
}

// One X panel (mr valid rows) against NV consecutive groups (W, L: the matrix; g0: the first;
// `cols` valid output columns from y; those from 16 * NV on are left alone), blocks [b0, b1) of
// the nb: Y[i, 0:cols] = the rows' products (+ bias) when b1 == nb. The even blocks go to one set
// of f32 sums and the odd ones to the other whatever b0 is (b0 even), so a product split into k
// slices [b0, b1) adds every block in the order one call over [0, nb) does: a slice that is not
// the last (b1 < nb, b1 - b0 even) stores its two sets to st (kPanelState floats) and the next
// slice (b0 > 0) starts from them, exact f32 values, the same bits. XPF: each block pair first
// prefetches the X panel's block pair kXPrefetchBlocks on into L1 (past the panel's end, the start
// of the next panel: the one the caller runs next when unsliced); see x_prefetch_on.
constexpr int64_t kPanelState = 2 * kPanelRows * kPanelGroups * 16;  // floats of one panel's sums
constexpr int64_t kXPrefetchBlocks = 8;
static_assert(2 * XPanels::kBlockDwords * 4 == 5 * 64, "a block pair of X panel is 5 lines");
template <bool Q8, int NV, bool XPF>
EMO_TRP void panel_groups_avx512(const int32_t* xp, const uint8_t* W, const RepackLayout& L, int64_t g0, int64_t nb,
                                 int64_t b0, int64_t b1, float* st, const float* bias, float* y, int64_t ldy, int mr,
                                 int64_t cols) {
  static_assert(2 * kPanelRows * NV * 16 <= kPanelState, "panel state too small");
  constexpr int MR = kPanelRows;
  const size_t rec = L.rec;
  constexpr int64_t XB = XPanels::kBlockDwords;
  __m512 f0[MR][NV], f1[MR][NV];
  if (b0 == 0) {
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) f0[i][j] = f1[i][j] = _mm512_setzero_ps();
  } else {
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        f0[i][j] = _mm512_loadu_ps(st + (i * NV + j) * 16);
        f1[i][j] = _mm512_loadu_ps(st + ((MR + i) * NV + j) * 16);
      }
  }
  // groups past the matrix's last (cols <= 16 * j) read the first one again: their lanes are masked
  const uint8_t* bs[NV];
  const uint8_t* bq[NV];
  for (int j = 0; j < NV; ++j) {
    const int64_t g = cols > 16 * j ? g0 + j : g0;
    bs[j] = L.scales(W, g) + size_t(b0) * rec, bq[j] = L.quants(W, g) + size_t(b0) * rec;
  }
  int64_t b = b0;
  for (; b + 1 < b1; b += 2) {
    if constexpr (XPF) {  // two blocks of X: 2 * XB dwords = 320 bytes, 5 lines (aligned when nb is even)
      // integer arithmetic: near the panel's end the address lies past it, where a pointer may not
      const char* a = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(xp) +
                                                    uintptr_t((b + kXPrefetchBlocks) * XB) * sizeof(*xp));
#pragma GCC unroll 5
      for (int l = 0; l < 5; ++l) _mm_prefetch(a + 64 * l, _MM_HINT_T0);
    }
    panel_block<Q8, NV>(xp + b * XB, bs, bq, f0);
    for (int j = 0; j < NV; ++j) bs[j] += rec, bq[j] += rec;
    panel_block<Q8, NV>(xp + (b + 1) * XB, bs, bq, f1);
    for (int j = 0; j < NV; ++j) bs[j] += rec, bq[j] += rec;
  }
  if (b < b1) panel_block<Q8, NV>(xp + b * XB, bs, bq, f0);
  if (b1 < nb) {
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        _mm512_storeu_ps(st + (i * NV + j) * 16, f0[i][j]);
        _mm512_storeu_ps(st + ((MR + i) * NV + j) * 16, f1[i][j]);
      }
    return;
  }
  __mmask16 mk[NV];
  __m512 bv[NV];
  for (int j = 0; j < NV; ++j) {
    const int64_t c = cols - 16 * j;
    mk[j] = c >= 16 ? __mmask16(0xFFFF) : c <= 0 ? __mmask16(0) : __mmask16((1u << c) - 1);
    bv[j] = bias ? _mm512_maskz_loadu_ps(mk[j], bias + 16 * j) : _mm512_setzero_ps();
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
    if (i < mr) {
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        __m512 r = _mm512_add_ps(f0[i][j], f1[i][j]);
        if (bias) r = _mm512_add_ps(r, bv[j]);
        _mm512_mask_storeu_ps(y + i * ldy + 16 * j, mk[j], r);
      }
    }
}
#endif

}  // namespace

namespace {

// X rows rounded to q8_0 once (ggml's rounding) into the calling thread's scratch; per row m the
// block values are then compacted to slot b: dxe[m*ldd + b] = d_x, neg[m*ldd + b] = -off * sum(q).
gemm_detail::QX quantize_rows(const float* X, int64_t ldx, int64_t M, int64_t K, int off) {
  using namespace gemm_detail;
  const QX q = qx_view(scratch(kQxSlot, qx_bytes(M, K)), M, K);
  const int64_t nb = K / kQK;
  for (int64_t m = 0; m < M; ++m) {
    int8_t* qs = const_cast<int8_t*>(q.qs) + m * q.ldq;
    float* dxe = const_cast<float*>(q.dxe) + m * q.ldd;
    int32_t* neg = const_cast<int32_t*>(q.neg) + m * q.ldd;
#if defined(__x86_64__)
    if (isa_active() >= Isa::Avx2)
      qx_quantize_row_avx2(X + m * ldx, K, qs, dxe, neg, off);
    else
#endif
      qx_quantize_row_scalar(X + m * ldx, K, qs, dxe, neg, off);
    for (int64_t b = 0; b < nb; ++b) {
      int32_t sum = 0;
      for (int j = 0; j < 8; ++j) sum += neg[b * 8 + j];
      const float d = dxe[b * 8];
      neg[b] = sum;  // b <= 8b: slot b is read (above) before any later block overwrites it
      dxe[b] = d;
    }
  }
  return q;
}

BlockSums row_sums(const gemm_detail::QX& q, int64_t m) { return BlockSums{q.dxe + m * q.ldd, q.neg + m * q.ldd}; }

bool vnni_kernel() {
#if defined(__x86_64__)
  return isa_active() >= Isa::Avx512 && cpu_features().avx512vnni && gemm_detail::vnni_allowed();
#else
  return false;
#endif
}

}  // namespace

namespace {
// The most groups a claim of the M = 1 dispatch takes: ~8 per thread's share (dynamic scheduling
// absorbs a preempted worker), whole passes of kPassGroups.
int64_t gemv_chunk(int64_t groups, int nth) {
  const int64_t c = groups / (8 * int64_t(nth));
  return std::max<int64_t>(kPassGroups, (c + kPassGroups - 1) / kPassGroups * kPassGroups);
}

// The M = 1 dispatch over `groups` groups: by default one contiguous range per thread with
// stealing (thread_pool.h parallel_ranges: each thread one long stream of passes); with
// set_gemv_ranges(false) guided chunks (thread_pool.h parallel_guided: at most gemv_chunk's size,
// then shorter down to one pass, so that the threads finish within about a pass of each other).
// The previous equal chunks (EMOLLM_GEMV_GUIDED=0) were removed in session 21: only reachable
// with the ranges off, so they could not matter to the default path. The bits do not depend on
// the chunking.
// even_sg: the claims whole pairs of super-groups (gemm_detail::set_gemv_even_claims; q4_0's
// two-stream pass only, whose records are 4-group super-groups: the form repacked_groups takes,
// gemv_m1_form).
// gemv_owner_keep (decode_tuning.h; Zen 4: 1): each thread's first claim on its own range is all
// of it but its last pass, so the two-stream pass reads the range as two long streams instead of
// restarting them every gemv_chunk's groups (~6-10 us a call at 2 threads in the VM's high phase).
bool even_claims(const gemm_detail::GemvM1Form& form, const RepackLayout& L) {
  return L.sg == kSuperGroup && gemm_detail::gemv_even_claims() && form.pass == gemm_detail::GemvPass::Q40Streams;
}
// The dispatch's claim unit in groups: a pass, or (even_sg) a pair of super-groups.
int64_t gemv_step(bool even_sg) { return even_sg ? 2 * kSuperGroup : kPassGroups; }
void gemv_dispatch(ThreadPool* pool, bool parallel, int64_t groups, const std::function<void(int64_t, int64_t)>& fn,
                   bool even_sg = false) {
  const int64_t step = gemv_step(even_sg);
  int64_t chunk = gemv_chunk(groups, pool ? pool->size() : 1);
  chunk = (chunk + step - 1) / step * step;
  if (parallel && gemm_detail::gemv_ranges())
    return parallel_ranges(pool, groups, step, chunk, fn, gemm_detail::gemv_range_owner(),
                           gemm_detail::gemv_owner_keep());
  if (parallel) return parallel_guided(pool, groups, step, chunk, fn);
  gemm_detail::parallel_chunks(pool, false, groups, chunk, fn);  // one call on the caller
}

}  // namespace

void gemv_repacked_own_part(const void* Wr, DType wtype, int64_t N, int64_t K, int ith, int nth,
                            const uint8_t** begin, size_t* bytes) {
  check_repack_args(wtype, N, K);
  const bool q8 = wtype == DType::Q8_0;
  const RepackLayout L = repack_layout(q8, K / kQK);
  const int64_t groups = (N + kGroup - 1) / kGroup;
  // gemv_dispatch's split: one thread below kParallelMinMacs, else parallel_ranges' own range
  const bool parallel = nth > 1 && N * K >= gemm_detail::kParallelMinMacs;
  int64_t g0, g1;
  parallel_ranges_own(groups, gemv_step(even_claims(gemm_detail::gemv_m1_form(q8, gemm_detail::gemv_m1_settings()), L)),
                      parallel ? nth : 1, ith, &g0, &g1);
  const uint8_t* G = static_cast<const uint8_t*>(Wr);
  const size_t total = quant_repack_bytes(wtype, N, K);
  const size_t b0 = std::min(total, size_t(g0 / L.sg) * L.sgstride);
  const size_t b1 = std::min(total, size_t((g1 + L.sg - 1) / L.sg) * L.sgstride);
  *begin = G + b0;
  *bytes = g1 > g0 ? b1 - b0 : 0;
}

namespace {
// Groups [g0, g1) of one repacked matrix (N rows, nb blocks, layout L) against x quantised in (qs, s).
// form: the call's M = 1 form (gemm_detail::gemv_m1_form, chosen once a call by the caller).
// cold_start: the chunk's first pass prefetches its own first records (false when the caller has).
void repacked_groups(const int8_t* qs, const BlockSums& s, const uint8_t* G, const RepackLayout& L, bool q8, bool vec,
                     const gemm_detail::GemvM1Form& form, const float* bias, float* y, int64_t N, int64_t nb,
                     int64_t g0, int64_t g1, bool cold_start = true) {
#if defined(__x86_64__)
  if (vec) {
    int64_t g = g0;
    // groups in the pass that follows one of NG starting at g: four a pass, then two, then one
    auto next_ng = [&](int64_t at) -> int {
      const int64_t left = g1 - at;
      return left >= kPassGroups ? kPassGroups : left >= 2 ? 2 : int(left);
    };
    // four groups a pass, then the rest two and one at a time
    auto passes = [&](auto ng) {
      constexpr int NG = decltype(ng)::value;
      for (; g + NG <= g1; g += NG) {
        const float* bg = bias ? bias + g * kGroup : nullptr;
        const int nn = next_ng(g + NG);
        if (q8)
          groups_avx512<true, NG>(qs, s, G, L, g, nb, bg, y + g * kGroup, N - g * kGroup, nn > 0, nn,
                                  cold_start && g == g0);
        else
          groups_avx512<false, NG>(qs, s, G, L, g, nb, bg, y + g * kGroup, N - g * kGroup, nn > 0, nn,
                                   cold_start && g == g0);
      }
    };
    // the pass's form from the settings, once a call (gemm_internal.h gemv_m1_form)
    // q4_0 on 4-group records (set_q40_ms, default on): the chunk's whole super-groups in 2
    // contiguous parts read side by side (ms_q40_avx512), one left over as one part, the last
    // groups of a partial super-group by the passes below
    if (form.pass == gemm_detail::GemvPass::Q40Streams && L.sg == kSuperGroup && g % kSuperGroup == 0) {
      const gemm_detail::GemvPrefetch pf = form.hint;
      const size_t ahead = size_t(gemm_detail::q40_ms_ahead());
      const bool addr = form.addr_order;
      auto mpasses = [&](auto sc) {
        constexpr int SS = decltype(sc)::value;
        const int64_t per = (g1 - g) / kSuperGroup / SS;  // super-groups a part
        if (per < 1) return;
        const int64_t part = per * kSuperGroup;
        for (int64_t i = 0; i < per; ++i) {
          const int64_t gi = g + i * kSuperGroup;
          gemm_detail::with_prefetch_hint</*WithT1=*/true>(pf, [&](auto hint) {
            constexpr int H = decltype(hint)::value;
            auto run = [&](auto addr_order) {
              ms_q40_avx512<SS, H, decltype(addr_order)::value>(qs, s, G, L, gi, nb,
                                                                bias ? bias + gi * kGroup : nullptr, y + gi * kGroup,
                                                                N - gi * kGroup, cold_start && gi == g0, ahead, part);
            };
            if (addr) return run(std::true_type());
            run(std::false_type());
          });
        }
        g += SS * part;
      };
      mpasses(std::integral_constant<int, 2>());
      mpasses(std::integral_constant<int, 1>());
    }
    // q8_0 on S streams (set_q80_streams > 0): the chunk's groups in S contiguous parts read side
    // by side (parts_q80_avx512), the groups left over by the passes below
    const int q80s = form.pass == gemm_detail::GemvPass::Q80Parts && L.sg == 1 ? form.streams : 0;
    if (q80s > 0) {
      const gemm_detail::GemvPrefetch pf = form.hint;
      const size_t ahead = size_t(gemm_detail::q80_ahead());
      const bool line17 = form.line17;
      auto ppasses = [&](auto sc) {
        constexpr int SS = decltype(sc)::value;
        const int64_t part = (g1 - g) / SS;  // groups a part
        for (int64_t i = 0; i < part; ++i) {
          const int64_t gi = g + i;
          gemm_detail::with_prefetch_hint</*WithT1=*/true>(pf, [&](auto hint) {
            constexpr int H = decltype(hint)::value;
            auto run = [&](auto l17) {
              parts_q80_avx512<SS, H, decltype(l17)::value>(qs, s, G, L, gi, nb, bias ? bias + gi * kGroup : nullptr,
                                                            y + gi * kGroup, N - gi * kGroup, cold_start && i == 0,
                                                            ahead, part);
            };
            if constexpr (H >= 0) {
              if (line17) return run(std::true_type());
            }
            run(std::false_type());
          });
        }
        if (part > 0) g += SS * part;
      };
      if (q80s >= 4) ppasses(std::integral_constant<int, 4>());
      else if (q80s == 3) ppasses(std::integral_constant<int, 3>());
      else if (q80s == 2) ppasses(std::integral_constant<int, 2>());
      else ppasses(std::integral_constant<int, 1>());
    }
    passes(std::integral_constant<int, kPassGroups>());
    passes(std::integral_constant<int, 2>());
    passes(std::integral_constant<int, 1>());
    return;
  }
#endif
  (void)vec;
  (void)q8;
  (void)form;
  gemv_repacked_scalar(qs, s, G, L, bias, y, N, nb, g0, g1);
}
}  // namespace

// (Session 21 removed the EMOLLM_GEMV_QX_INSIDE opt-in: x rounded to q8_0 inside the GEMV's
// dispatch, the threads sharing the pieces while their first records were prefetched. Quiet A/B
// with its prefetch emitted, on / off: 1 thread CPU time q4_0 0.996, q8_0 0.983; 2 threads 0.982 /
// 0.991 (bench/README): no gain, so x is rounded on the calling thread before the dispatch.)

void gemv_repacked(const float* x, const void* Wr, DType wtype, const float* bias, float* y, int64_t N, int64_t K,
                   ThreadPool* pool) {
  check_repack_args(wtype, N, K);
  EMOLLM_CHECK_ARG(x && Wr && y, "gemv_repacked: null pointer");
  using namespace gemm_detail;
  const bool q8 = wtype == DType::Q8_0;
  const int64_t nb = K / kQK, groups = (N + kGroup - 1) / kGroup;
  const uint8_t* G = static_cast<const uint8_t*>(Wr);
  const bool vec = vnni_kernel();
  const RepackLayout L = repack_layout(q8, nb);
  const QX q = quantize_rows(x, K, 1, K, q8 ? 128 : 8);
  const BlockSums s = row_sums(q, 0);
  const GemvM1Form form = gemv_m1_form(q8, gemv_m1_settings());
  gemv_dispatch(pool, N * K >= kParallelMinMacs, groups,
                [&](int64_t g0, int64_t g1) { repacked_groups(q.qs, s, G, L, q8, vec, form, bias, y, N, nb, g0, g1); },
                even_claims(form, L));
}

// The outputs' groups numbered one after another (output j's from first[j]); a chunk of that
// range is cut at the outputs' edges. Every group is computed as gemv_repacked computes it (the
// same x rounding, the same per-group kernel), so the bits do not depend on the chunking.
void gemv_repacked_multi(const float* x, DType wtype, const GemvOutput* outs, int n_outs, int64_t K, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(outs && n_outs >= 1 && n_outs <= kMaxGemvOutputs, "gemv_repacked_multi: 1 to 8 outputs");
  int64_t first[kMaxGemvOutputs + 1] = {0}, rows = 0;
  for (int j = 0; j < n_outs; ++j) {
    check_repack_args(wtype, outs[j].N, K);
    EMOLLM_CHECK_ARG(outs[j].W && outs[j].y, "gemv_repacked_multi: null pointer");
    first[j + 1] = first[j] + (outs[j].N + kGroup - 1) / kGroup;
    rows += outs[j].N;
  }
  EMOLLM_CHECK_ARG(x, "gemv_repacked_multi: null pointer");
  if (n_outs == 1) return gemv_repacked(x, outs[0].W, wtype, outs[0].bias, outs[0].y, outs[0].N, K, pool);
  using namespace gemm_detail;
  const bool q8 = wtype == DType::Q8_0;
  const int64_t nb = K / kQK, groups = first[n_outs];
  const bool vec = vnni_kernel();
  const RepackLayout L = repack_layout(q8, nb);
  const QX q = quantize_rows(x, K, 1, K, q8 ? 128 : 8);
  const BlockSums bs = row_sums(q, 0);
  // (even claims: every output's groups start on a super-group pair when each output has whole pairs)
  const GemvM1Form form = gemv_m1_form(q8, gemv_m1_settings());
  bool even = even_claims(form, L);
  for (int j = 0; j < n_outs; ++j) even = even && first[j] % (2 * kSuperGroup) == 0;
  gemv_dispatch(pool, rows * K >= kParallelMinMacs, groups, [&](int64_t g0, int64_t g1) {
    for (int j = 0; j < n_outs && g0 < g1; ++j) {
      if (g0 >= first[j + 1]) continue;
      const int64_t e = std::min(g1, first[j + 1]);
      const GemvOutput& o = outs[j];
      repacked_groups(q.qs, bs, static_cast<const uint8_t*>(o.W), L, q8, vec, form, o.bias, o.y, o.N, nb,
                      g0 - first[j], e - first[j]);
      g0 = e;
    }
  }, even);
}

namespace {
#if defined(__x86_64__)
// gemm_repacked below the X-panel kernel: M <= g_tile_rows (default kTileRowsMax) in one group
// tile, each weight block loaded and unpacked once for all M rows (4-row tiles then the rest did
// it twice at M = 5-6: a scoring pass's option rows, the LLaVA sample's M = 5). Measured (1 thread
// thread CPU time, load 11-13, q8_panels_ab, same bits): M = 5 at 4096 x 4096 / 22016 x 4096 /
// 4096 x 11008 1.21 / 1.14 / 1.28x by best, M = 6 at 22016 x 4096 1.12x; M = 7 0.82 / 1.19x and
// M = 8 0.97 / 1.20x (22016 x 4096 / 4096 x 11008: the 7- and 8-row tiles' 14-16 f32
// accumulators and 8 weight vectors crowd the 32 registers), so not taken there. The LLaVA
// sample's scoring pass (score_forks_ab AB_SWITCH=tile_rows, 7B, 1 thread): 1.09x by median.
// set_repacked_tile_rows(4): the 4-row tiles (A/B).
constexpr int kTileRowsMax = 6;
std::atomic<int> g_tile_rows{kTileRowsMax};
// How the few-row path reads its weights and X (gemm_detail::set_repacked_few_rows_path; default
// by CPU trait, kPanelDefaults: SpreadPanel on both rows, q8_0 at M <= 3 Previous on Zen 4 only). Why: at M = 2-8 a thread reads a super-group's records (147 KiB at K = 4096)
// four times, once per group tile. Previous prefetched them whole, 4 blocks ahead, during the
// first tile only: that tile waited on memory (the next 3 ran from L2), and the pass read its
// weights at 9-12 GB/s a thread against ~20-30 for a plain M = 1 pass. Spread asks for the next
// super-group's records into L2 (prefetcht1) a quarter a tile, at the rate the tiles use them.
// Measured on Zen 4 (2 vCPUs, small_m_ab, the 7B's q4_0 shapes with cold weights, 1 thread
// thread CPU time, interleaved, load 11-14; bench/README): M = 5 Spread / Previous 1.70-1.84x,
// SpreadPanel / Previous 1.80-1.96x (at the arithmetic bound: 40 vpdpbusd + 5 vmulps + 5 FMAs a
// group block share Zen 4's two 512-bit FP pipes, ~50 cycles; measured ~55 cache-warm, ~57 cold);
// M = 2-4 2.2-2.5x, M = 6 1.8x, M = 7-8 1.6-1.8x; into L1 (prefetcht0) instead 1.13-1.17x; an
// L1 prefetch of the tile's own lines besides 0.97x. q8_0 (one-group records, one sequential
// stream) 1.5-1.6x at M = 5-6, 1.0-1.3x at M = 4, 0.84-0.89x at M = 2-3: not used there.
// On Zen 5 (session 27, same tool, 1 thread thread CPU time, load 8-22; bench/README's Zen 5
// table) SpreadPanel / Previous q4_0 by best M = 2 1.06-1.24x (one run 0.88 at 4096 x 4096, median 1.01), M = 3 1.10-1.35x, M = 4 1.05-1.39x,
// M = 5 1.32-1.47x, M = 6 1.08-1.27x, M = 7 1.08-1.16x, M = 8 1.05-1.24x; q8_0 M = 2 1.06-1.20x,
// M = 3 1.12-1.32x, M = 5 1.45-1.61x, M = 8 1.15-1.40x: full width waited on memory too; the
// LLaVA sample's scoring (score_forks_ab few_rows:2, 7B, 1 thread) 0.84x the process CPU by median;
// at 2 threads (wall, load 1.2-2.3) q4_0 M = 2 / 5 / 8 1.24-1.28 / 1.30-1.42 / 1.11-1.16x, q8_0
// M = 3 / 5 1.39-1.59 / 1.75-2.00x.
std::atomic<gemm_detail::FewRowsPath> g_few_rows_path{gemm_detail::FewRowsPath::Default};
// X for the few-row tiles as one panel: per block b (pb bytes from the last), the M rows' 32 q8_0
// quants, then their M d_x (f32), then their M -off * sums (int32): every tile row's operands
// at fixed offsets from one pointer.
struct FewRowPanel {
  const int8_t* p = nullptr;
  int64_t pb = 0, M = 0;
};
FewRowPanel few_row_panel(const gemm_detail::QX& q, int64_t M, int64_t nb) {
  struct Buf {
    AlignedPtr<int8_t> p;
    size_t cap = 0;
  };
  thread_local Buf buf;
  const int64_t pb = M * (kQK + 8);
  const size_t bytes = size_t(pb * nb);
  if (bytes > buf.cap) buf.p = make_aligned<int8_t>(bytes), buf.cap = bytes;
  int8_t* o = buf.p.get();
  for (int64_t b = 0; b < nb; ++b, o += pb)
    for (int64_t m = 0; m < M; ++m) {
      std::memcpy(o + m * kQK, q.qs + m * q.ldq + b * kQK, kQK);
      std::memcpy(o + M * kQK + 4 * m, q.dxe + m * q.ldd + b, 4);
      std::memcpy(o + M * (kQK + 4) + 4 * m, q.neg + m * q.ldd + b, 4);
    }
  return FewRowPanel{buf.p.get(), pb, M};
}
// tile_rows with its prefetch (SP) and X layout (XI) fixed at compile time.
template <bool Q8, bool SP, bool XI>
void tile_rows_sp(const gemm_detail::QX& q, const FewRowPanel& xp, int64_t m0, int mr, const uint8_t* GS,
                  const uint8_t* GQ, size_t rec, const uint8_t* PF, int64_t nb, const float* bias, float* y,
                  int64_t ldy, int64_t rows, const uint8_t* NP, int64_t at, size_t seg) {
  BlockSums s[kTileRowsMax] = {};
  const int8_t* xq;
  int64_t ld, xdo = 0, xno = 0;
  if (XI) {
    // offsets from the tile's first row's quants to its d_x and sum (group_tile_avx512's XI)
    xq = xp.p + m0 * kQK, ld = xp.pb;
    xdo = (xp.M - m0) * kQK + 4 * m0, xno = xdo + 4 * xp.M;
  } else {
    for (int i = 0; i < kTileRowsMax; ++i) s[i] = row_sums(q, m0 + (i < mr ? i : 0));
    xq = q.qs + m0 * q.ldq, ld = q.ldq;
  }
  switch (mr) {
    case 6: group_tile_avx512<Q8, 6, SP, XI>(xq, ld, s, GS, GQ, rec, PF, nb, bias, y, ldy, rows, NP, at, seg, xdo, xno); break;
    case 5: group_tile_avx512<Q8, 5, SP, XI>(xq, ld, s, GS, GQ, rec, PF, nb, bias, y, ldy, rows, NP, at, seg, xdo, xno); break;
    case 4: group_tile_avx512<Q8, 4, SP, XI>(xq, ld, s, GS, GQ, rec, PF, nb, bias, y, ldy, rows, NP, at, seg, xdo, xno); break;
    case 3: group_tile_avx512<Q8, 3, SP, XI>(xq, ld, s, GS, GQ, rec, PF, nb, bias, y, ldy, rows, NP, at, seg, xdo, xno); break;
    case 2: group_tile_avx512<Q8, 2, SP, XI>(xq, ld, s, GS, GQ, rec, PF, nb, bias, y, ldy, rows, NP, at, seg, xdo, xno); break;
    default: group_tile_avx512<Q8, 1, SP, XI>(xq, ld, s, GS, GQ, rec, PF, nb, bias, y, ldy, rows, NP, at, seg, xdo, xno); break;
  }
}
// One tile of rows m0 .. m0 + mr - 1 against one group: X from the panel when xp has one, else
// per row from q; NP: spread prefetch of the next super-group (group_tile_avx512), or null.
template <bool Q8>
void tile_rows(const gemm_detail::QX& q, const FewRowPanel& xp, int64_t m0, int mr, const uint8_t* GS,
               const uint8_t* GQ, size_t rec, const uint8_t* PF, int64_t nb, const float* bias, float* y, int64_t ldy,
               int64_t rows, const uint8_t* NP, int64_t at, size_t seg) {
  if (xp.p != nullptr) {
    if (NP != nullptr)
      return tile_rows_sp<Q8, true, true>(q, xp, m0, mr, GS, GQ, rec, PF, nb, bias, y, ldy, rows, NP, at, seg);
    return tile_rows_sp<Q8, false, true>(q, xp, m0, mr, GS, GQ, rec, PF, nb, bias, y, ldy, rows, nullptr, 0, 0);
  }
  if (NP != nullptr)
    return tile_rows_sp<Q8, true, false>(q, xp, m0, mr, GS, GQ, rec, PF, nb, bias, y, ldy, rows, NP, at, seg);
  return tile_rows_sp<Q8, false, false>(q, xp, m0, mr, GS, GQ, rec, PF, nb, bias, y, ldy, rows, nullptr, 0, 0);
}
#endif
}  // namespace

namespace {
#if defined(__x86_64__)
std::atomic<bool> g_panels_enabled{true};
// The X-panel kernel's blocking (gemm_internal.h set_repacked_kslice / _kgroup / _pass_kib; -1: the
// defaults below). Process-wide setters only: q8_panels_ab and the same-bits tests set them per run.
std::atomic<int> g_kslice{-1}, g_pass_kib{-1}, g_kgroup{-1};

int pick(const std::atomic<int>& set, int dflt) {
  const int v = set.load(std::memory_order_relaxed);
  return v >= 0 ? v : dflt;
}

// The built-in blocking by CPU trait: row 0 full-width AVX-512 (Zen 5, where sessions 17-24 decided
// it), row 1 512-bit ops double-pumped (base/cpu_features.h avx512_double_pumped: Zen 4). The trait
// is read once (cpu_features); set_repacked_double_pumped injects it (tests, A/B tools). Every row
// gives the same bits (the blockings are same-bits alternatives: gemm_repacked_kslice_same_bits).
// Per row, measured (q8_panels_ab, M = 628, interleaved; bench/README session 25):
// - k slices: full-width from K = 8192 (nb >= 256) on for both weight types, see panel_kslice.
//   Double-pumped, never: the 7B down projection (4096 x 11008) unsliced / sliced, q8_0 1.05-1.09x
//   at 1 thread, 1.09-1.12x at 2 (Zen 4, load 2-15); q4_0 1.054 / 1.067 by best (medians 1.050 /
//   1.125) at 1 / 2 threads on the quiet machine (session 25, 03:14; under load it had read
//   0.97-1.07x). (Slices on K = 4096: 0.87-0.91x on Zen 4, 0.95-0.99 on Zen 5: never there.)
// - the rest (pass sizes, kg, X prefetch, fused rounding, guided claims) the same on both: on Zen 4
//   every alternative to them was 0.87-1.016x at 1 and 2 threads.
// - Zen 5 re-measured (session 33, M = 628, 1 thread CPU time, loaded 10-15, in-process, 3 processes):
//   X passes cut even (3 of 53 panels at K = 4096 instead of 76 / 76 / 5), 2 or 1 passes
//   0.978-1.047x the default's speed (A/A 0.969-1.019); down: 4 / 8 MiB passes 0.985-1.009 /
//   0.906-0.980, slices of 16 / 64 / 128 blocks 0.957-0.994 / 0.89-0.97 / 0.876-0.953, 4 / 16
//   panels a group 0.977-1.002 / 0.956-0.973, unsliced 0.982-1.024: the row 0 defaults stay.
// - the few-row path (M <= 8, g_few_rows_path above): SpreadPanel on both (Zen 4: 1.8-2.5x at
//   M = 2-8; Zen 5: 1.05-1.61x at M = 2-8, q4_0 and q8_0), except q8_0 at M <= 3 on Zen 4, where
//   its one sequential stream read 0.84-0.89x with the spread prefetch (Zen 5: 1.06-1.32x).
struct PanelDefaults {
  int64_t kslice_from_blocks_q4, kslice_from_blocks_q8;  // k slices from this many blocks of K on; 0: never
  gemm_detail::FewRowsPath few_rows;
  int64_t few_rows_q8_from;  // q8_0 takes few_rows from this M on, Previous below
};
constexpr PanelDefaults kPanelDefaults[2] = {{256, 256, gemm_detail::FewRowsPath::SpreadPanel, 2},
                                             {0, 0, gemm_detail::FewRowsPath::SpreadPanel, 4}};
std::atomic<int> g_double_pumped{-1};  // -1: cpu_features().avx512_double_pumped

const PanelDefaults& panel_defaults() {
  const int v = g_double_pumped.load(std::memory_order_relaxed);
  const bool dp = v >= 0 ? v != 0 : cpu_features().avx512_double_pumped;
  return kPanelDefaults[dp ? 1 : 0];
}

// Blocks per k slice (even), or 0: one kernel call over the whole K. Default (panel_defaults):
// slices of 32 blocks from K = 8192 on (double-pumped: none). Measured at the 7B shapes on
// Zen 5 (q4_0, M = 512, 1 thread CPU time, loaded, best of 8-10 interleaved): down (K = 11008)
// 1.025-1.047x with 8 panels a group and 3 MiB passes; gate / up and qkvo (K = 4096) 0.95-0.99x
// (their whole-K weight panels, 74 KiB, already sit in L2).
int64_t panel_kslice(int64_t nb, bool q8) {
  const int64_t from = q8 ? panel_defaults().kslice_from_blocks_q8 : panel_defaults().kslice_from_blocks_q4;
  const int64_t kc = pick(g_kslice, from > 0 && nb >= from ? 32 : 0) & ~1;
  return kc > 0 && kc < nb ? kc : 0;
}

// Weight panels that run slice by slice together (each X slice reused by them from L1 / L2) when
// k-sliced: default 8.
int64_t panel_kgroup() {
  return std::max(1, pick(g_kgroup, 8));
}

// KiB of X panels a pass: default 1.5 MiB, 3 MiB when k-sliced (a pass's X is read a slice at a
// time, so a longer pass only means fewer reads of the weights).
int64_t panel_pass_kib(bool sliced) {
  return std::max(1, pick(g_pass_kib, sliced ? 3072 : 1536));
}

// The X prefetch of the unsliced kernel calls (gemm_detail::set_repacked_x_prefetch; default on,
// set_repacked_x_prefetch(false): off for tests and A/B tools). Unsliced, each call streams a 20-55 KiB X
// panel that a 1.5 MiB pass keeps in L3 rather than L2 (the weight panel stays in L2); the
// hardware prefetchers alone leave ~3-4% of the time waiting on it (a copy of the kernel's loop:
// ~690 GOP/s with X in L1 / L2, 657-664 with a pass of X panels in L3). Measured at M = 628, 1
// thread CPU time, in-process ABBA, load 7-12 (q8_panels_ab; bench/README 2026-12-06 19:20):
// 4096 x 4096 1.004-1.035, qkv 12288 x 4096 1.025-1.027, gate+up 22016 x 4096 1.017-1.032 by
// best (medians 1.016-1.044), q8_0 4096 x 4096 1.010; 16 or 32 blocks ahead 1.007-1.023. Sliced
// (K >= 8192) each X slice is reused by kg weight panels from L1 / L2 and the prefetch measured
// 0.96-0.99, so it is not used there. Same bits (prefetches only).
// Quiet (session 23, lead): 1 thread 1.003-1.004x by best, 2 threads 1.002-1.026x (medians
// 1.009-1.032); a 1.1B q4_0 prefill 0.998 / 1.012x at 1 / 2 threads, the 7B 1.001x at 2: small,
// never below. On, no longer read from the environment.
std::atomic<bool> x_prefetch_on{true};

// How the X-panel kernel's weight panels are shared out (gemm_detail::set_repacked_guided): guided
// claims (on) or equal chunks (off, the previous split; tests and A/B tools). Equal chunks of
// npn / (4 * threads) panels (a 7B GEMM job's ~8 chunks of 2-6 ms each at 2 threads) end together
// only when the threads run at the same speed; when one runs 10-30% slower (the VM's vCPUs), the
// other finds nothing left while the slow one is inside its last chunk, and waits up to a whole
// chunk per job. Guided claims start at that chunk and take 1 / (4 * threads) of what is left
// (1/8 at 2 threads), down to one panel (k-sliced with enough panels: one group of kg panels), so
// the threads end within about one panel (1/128 to 1/688 of a 7B job; the k-sliced down
// projection: 8 of 128, half the old chunk) of each other.
// Each panel's sums are computed by one thread in one order whatever the cut: same bits.
std::atomic<bool> g_guided{true};

// M > kSmallM on VNNI: X in chunks of panel rows (gemm_q8_xpanel.h), then per thread a range of
// NV-group weight panels; the X panels are taken ~1.5 MiB at a time, and each of the thread's
// weight panels (16 * NV * K bytes, in L2) runs against those X panels before the next.
// Several outputs of one X (a layer's q/k/v, gate/up; gemm_repacked_multi): X rounded and packed
// once per chunk and the outputs' weight panels numbered one after another (output j's from
// first[j]) in one dispatch; every panel computes what it computes alone, so the bits are those
// of one call per output.
void gemm_repacked_panels(const float* X, int64_t ldx, bool q8, const RepackedOutput* outs, int n_outs, int64_t M,
                          int64_t K, ThreadPool* pool) {
  using namespace gemm_detail;
  constexpr int NV = kPanelGroups;
  const int64_t nb = K / kQK;
  const RepackLayout L = repack_layout(q8, nb);
  int64_t first[kMaxRepackedOutputs + 1] = {0}, rows = 0;
  for (int j = 0; j < n_outs; ++j) {
    const int64_t groups = (outs[j].N + kGroup - 1) / kGroup;
    first[j + 1] = first[j] + (groups + NV - 1) / NV;
    rows += outs[j].N;
  }
  const int64_t npn = first[n_outs];
  const int64_t mc = XPanels::chunk_rows(K);
  // X panels per pass: ~1.5 MiB of them (L2 + L3). Measured at LLaMA-7B down (K = 11008, q8_0,
  // M = 512): 384 KiB passes (L2-resident X, weights re-read from memory 18 times) 0.75x
  // gemm_q8_vnni, 768 KiB 0.95x, 1.5 MiB 1.04x, unchunked 0.98x.
  // k slices of kc blocks (0: none): per X pass and slice, a group of kg weight panels' slices
  // (16 * NV rows x kc blocks each) run against the pass's X slice (L1 / L2), the sums of every
  // (weight panel, X panel) pair kept in scratch between the slices (panel_groups_avx512)
  const int64_t kc = panel_kslice(nb, q8), kg = kc > 0 ? panel_kgroup() : 1;
  const int64_t pc = std::max<int64_t>(1, (panel_pass_kib(kc > 0) << 10) / (nb * XPanels::kBlockDwords * 4));
  const int nth = pool ? pool->size() : 1;
  const bool xpf = kc == 0 && x_prefetch_on.load(std::memory_order_relaxed);
  for (int64_t m0 = 0; m0 < M; m0 += mc) {
    const int64_t mcur = std::min(mc, M - m0);
    const int32_t* xp = XPanels::quantise_chunk(X + m0 * ldx, ldx, mcur, K, q8 ? 128 : 8, pool, 2, 1);
    const int64_t npm = (mcur + kPanelRows - 1) / kPanelRows;
    auto body = [&](int64_t p0, int64_t p1) {
      float* st = kc > 0 ? static_cast<float*>(scratch(0, size_t(kg * pc * kPanelState) * sizeof(float))) : nullptr;
      for (int64_t c0 = 0; c0 < npm; c0 += pc) {
        const int64_t c1 = std::min(npm, c0 + pc);
        for (int64_t q0 = p0; q0 < p1; q0 += kg) {
          const int64_t q1 = std::min(p1, q0 + kg);
          auto run = [&](int64_t p, int64_t pm, int64_t b0, int64_t b1) {
            int j = 0;  // the output of panel p
            while (p >= first[j + 1]) ++j;
            const RepackedOutput& o = outs[j];
            const int64_t lp = p - first[j], n0 = lp * NV * kGroup;
            const uint8_t* Wp = static_cast<const uint8_t*>(o.W);
            const float* bp = o.bias ? o.bias + n0 : nullptr;
            const int mr = int(std::min<int64_t>(kPanelRows, mcur - pm * kPanelRows));
            float* y = o.Y + (m0 + pm * kPanelRows) * o.ldy + n0;
            const int32_t* xpp = xp + pm * nb * XPanels::kBlockDwords;
            float* s = st ? st + ((p - q0) * pc + pm - c0) * kPanelState : nullptr;
            if (q8 && xpf)
              panel_groups_avx512<true, NV, true>(xpp, Wp, L, lp * NV, nb, b0, b1, s, bp, y, o.ldy, mr, o.N - n0);
            else if (q8)
              panel_groups_avx512<true, NV, false>(xpp, Wp, L, lp * NV, nb, b0, b1, s, bp, y, o.ldy, mr, o.N - n0);
            else if (xpf)
              panel_groups_avx512<false, NV, true>(xpp, Wp, L, lp * NV, nb, b0, b1, s, bp, y, o.ldy, mr, o.N - n0);
            else
              panel_groups_avx512<false, NV, false>(xpp, Wp, L, lp * NV, nb, b0, b1, s, bp, y, o.ldy, mr, o.N - n0);
          };
          if (kc == 0) {
            for (int64_t p = q0; p < q1; ++p)
              for (int64_t pm = c0; pm < c1; ++pm) run(p, pm, 0, nb);
          } else {
            for (int64_t b0 = 0; b0 < nb; b0 += kc)
              for (int64_t p = q0; p < q1; ++p)
                for (int64_t pm = c0; pm < c1; ++pm) run(p, pm, b0, std::min(nb, b0 + kc));
          }
        }
      }
    };
    const bool parallel = mcur * rows * K >= kParallelMinMacs;
    const int64_t chunk = std::max<int64_t>(1, npn / (4 * nth));
    // k-sliced: claims in whole groups of kg panels, so that no group is cut short by a claim's end
    // (each X slice is read once per group), where there are panels for 4 claims a thread of a
    // group each; otherwise (and unsliced) one panel: with fewer panels, group claims would leave
    // threads idle (at npn <= kg parallel_guided runs it all on the calling thread)
    const int64_t claim_step = kc > 0 && npn >= 4 * int64_t(nth) * kg ? kg : 1;
    if (parallel && g_guided.load(std::memory_order_relaxed))
      parallel_guided(pool, npn, claim_step, chunk, body);
    else
      parallel_chunks(pool, parallel, npn, chunk, body);
  }
}
#endif
}  // namespace

namespace gemm_detail {
void set_repacked_kslice(int blocks) {
#if defined(__x86_64__)
  g_kslice.store(blocks, std::memory_order_relaxed);
#endif
  (void)blocks;
}
int64_t repacked_kslice_for(DType wtype, int64_t nb) {
#if defined(__x86_64__)
  return panel_kslice(nb, wtype == DType::Q8_0);
#else
  (void)wtype, (void)nb;
  return 0;
#endif
}
FewRowsPath repacked_few_rows_path_for(DType wtype, int64_t M) {
#if defined(__x86_64__)
  const FewRowsPath p = g_few_rows_path.load(std::memory_order_relaxed);
  if (p != FewRowsPath::Default) return p;  // the setter's, for every type and M (A/B tools, tests)
  if (wtype == DType::Q8_0 && M < panel_defaults().few_rows_q8_from) return FewRowsPath::Previous;
  return panel_defaults().few_rows;
#else
  (void)wtype, (void)M;
  return FewRowsPath::Previous;
#endif
}
void set_repacked_double_pumped(int on) {
#if defined(__x86_64__)
  g_double_pumped.store(on < 0 ? -1 : on != 0, std::memory_order_relaxed);
#endif
  (void)on;
}
void set_repacked_kgroup(int panels) {
#if defined(__x86_64__)
  g_kgroup.store(panels, std::memory_order_relaxed);
#endif
  (void)panels;
}
void set_repacked_pass_kib(int kib) {
#if defined(__x86_64__)
  g_pass_kib.store(kib, std::memory_order_relaxed);
#endif
  (void)kib;
}
void set_repacked_x_prefetch(bool on) {
#if defined(__x86_64__)
  x_prefetch_on.store(on, std::memory_order_relaxed);
#endif
  (void)on;
}
bool repacked_x_prefetch() {
#if defined(__x86_64__)
  return x_prefetch_on.load(std::memory_order_relaxed);
#else
  return false;
#endif
}
void set_repacked_guided(bool on) {
#if defined(__x86_64__)
  g_guided.store(on, std::memory_order_relaxed);
#endif
  (void)on;
}
bool repacked_guided() {
#if defined(__x86_64__)
  return g_guided.load(std::memory_order_relaxed);
#else
  return false;
#endif
}
void set_repacked_panels_enabled(bool enabled) {
#if defined(__x86_64__)
  g_panels_enabled.store(enabled);
#endif
  (void)enabled;
}
void set_repacked_few_rows_path(FewRowsPath p) {
#if defined(__x86_64__)
  g_few_rows_path.store(p, std::memory_order_relaxed);
#endif
  (void)p;
}
void set_repacked_tile_rows(int rows) {
#if defined(__x86_64__)
  g_tile_rows.store(rows >= 4 && rows <= kTileRowsMax ? rows : 4, std::memory_order_relaxed);
#endif
  (void)rows;
}
bool repacked_panels_enabled() {
#if defined(__x86_64__)
  return g_panels_enabled.load();
#else
  return false;
#endif
}
}  // namespace gemm_detail

void gemm_repacked(const float* X, int64_t ldx, const void* Wr, DType wtype, const float* bias, float* Y, int64_t ldy,
                   int64_t M, int64_t N, int64_t K, ThreadPool* pool) {
  check_repack_args(wtype, N, K);
  EMOLLM_CHECK_ARG(M > 0, "gemm_repacked: M must be positive");
  EMOLLM_CHECK_ARG(X && Wr && Y, "gemm_repacked: null pointer");
  EMOLLM_CHECK_ARG(ldx >= K && ldy >= N, "gemm_repacked: ldx must be >= K and ldy >= N");
  if (M == 1) return gemv_repacked(X, Wr, wtype, bias, Y, N, K, pool);
  using namespace gemm_detail;
  const bool q8 = wtype == DType::Q8_0;
  const int64_t nb = K / kQK, groups = (N + kGroup - 1) / kGroup;
#if defined(__x86_64__)
  if (M > kSmallM && vnni_kernel() && repacked_panels_enabled()) {
    const RepackedOutput o{Wr, bias, Y, ldy, N};
    return gemm_repacked_panels(X, ldx, q8, &o, 1, M, K, pool);
  }
#endif
  const QX q = quantize_rows(X, ldx, M, K, q8 ? 128 : 8);
  const uint8_t* G = static_cast<const uint8_t*>(Wr);
  const RepackLayout L = repack_layout(q8, nb);
  const bool vec = vnni_kernel();
#if defined(__x86_64__)
  const int64_t tr = M <= g_tile_rows.load(std::memory_order_relaxed) ? M : 4;
  // q8_0 at M <= 3 on Zen 4: its one-group records are one sequential stream that the hardware
  // prefetchers follow, and the spread prefetch measured 0.84-0.89x there (1.0-1.6x from M = 4)
  const FewRowsPath path = repacked_few_rows_path_for(q8 ? DType::Q8_0 : DType::Q4_0, M);
  const bool spread = vec && path != FewRowsPath::Previous;
  const FewRowPanel xp = vec && path == FewRowsPath::SpreadPanel ? few_row_panel(q, M, nb) : FewRowPanel{};
#endif
  // Each task: a few groups, all M rows against each group, in one tile (M <= g_tile_rows) or 4
  // at a time (the group's weights stay in L2 while the quantised X rows stream past).
  auto body = [&](int64_t g0, int64_t g1) {
#if defined(__x86_64__)
    if (vec) {
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t rows = std::min<int64_t>(kGroup, N - g * kGroup);
        const float* bg = bias ? bias + g * kGroup : nullptr;
        // Previous: the task's first tile on each super-group of several groups prefetches its
        // records. Spread: the task's first super-group only; every tile on a super-group
        // prefetches its share of the next one (past the task's end too: with contiguous ranges
        // a thread's next task usually starts there)
        const uint8_t* pf = L.sg > 1 && (g == g0 || (!spread && g % L.sg == 0)) ? L.scales(G, g / L.sg * L.sg) : nullptr;
        const int64_t sgn = (g / L.sg + 1) * L.sg;  // the next super-group's first group
        const uint8_t* np = spread && sgn < groups ? L.scales(G, sgn) : nullptr;
        for (int64_t m0 = 0; m0 < M; m0 += tr) {
          const int mr = int(std::min<int64_t>(tr, M - m0));
          if (m0 > 0) pf = np = nullptr;
          if (q8)
            tile_rows<true>(q, xp, m0, mr, L.scales(G, g), L.quants(G, g), L.rec, pf, nb, bg, Y + m0 * ldy + g * kGroup,
                            ldy, rows, np, (g % L.sg) * nb, L.rec / size_t(L.sg));
          else
            tile_rows<false>(q, xp, m0, mr, L.scales(G, g), L.quants(G, g), L.rec, pf, nb, bg,
                             Y + m0 * ldy + g * kGroup, ldy, rows, np, (g % L.sg) * nb, L.rec / size_t(L.sg));
        }
      }
      return;
    }
#endif
    for (int64_t m = 0; m < M; ++m) gemv_repacked_scalar(q.qs + m * q.ldq, row_sums(q, m), G, L, bias, Y + m * ldy, N, nb, g0, g1);
  };
  const int nth = pool ? pool->size() : 1;
  // whole super-groups per task (their records are read once, by one thread)
  const int64_t chunk = (std::max<int64_t>(1, groups / (8 * nth)) + L.sg - 1) / L.sg * L.sg;
  const bool parallel = M * N * K >= kParallelMinMacs;
#if defined(__x86_64__)
  // Spread: a contiguous range a thread, walked from its front (stealing at the end), so that
  // the super-group after a task is usually the same thread's next
  if (spread && parallel) return parallel_ranges(pool, groups, L.sg, chunk, body, gemv_range_owner());
#endif
  parallel_chunks(pool, parallel, groups, chunk, body);
}

void gemm_repacked_multi(const float* X, int64_t ldx, DType wtype, const RepackedOutput* outs, int n_outs, int64_t M,
                         int64_t K, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(outs && n_outs >= 1 && n_outs <= kMaxRepackedOutputs, "gemm_repacked_multi: 1 to 8 outputs");
  EMOLLM_CHECK_ARG(M > 0, "gemm_repacked_multi: M must be positive");
  EMOLLM_CHECK_ARG(X != nullptr && ldx >= K, "gemm_repacked_multi: null X or ldx < K");
  for (int j = 0; j < n_outs; ++j) {
    check_repack_args(wtype, outs[j].N, K);
    EMOLLM_CHECK_ARG(outs[j].W && outs[j].Y, "gemm_repacked_multi: null pointer");
    EMOLLM_CHECK_ARG(outs[j].ldy >= outs[j].N, "gemm_repacked_multi: ldy must be >= N");
  }
  using namespace gemm_detail;
#if defined(__x86_64__)
  if (n_outs > 1 && M > kSmallM && vnni_kernel() && repacked_panels_enabled())
    return gemm_repacked_panels(X, ldx, wtype == DType::Q8_0, outs, n_outs, M, K, pool);
#endif
  for (int j = 0; j < n_outs; ++j)
    gemm_repacked(X, ldx, outs[j].W, wtype, outs[j].bias, outs[j].Y, outs[j].ldy, M, outs[j].N, K, pool);
}

}  // namespace emollm
