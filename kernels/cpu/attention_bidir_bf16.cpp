// Long bidirectional attention (vision towers: CLIP's 577 tokens, Qwen2-VL's thousands) on the
// AVX512-BF16 dot-product unit, for calls that allow bf16 products (AttentionParams::bf16_products).
//
// Both products are GEMMs of the shape the packed bf16 GEMM runs, so they use its 6x64
// vdpbf16ps microkernel (gemm_kern_bf16_avx512.h) at twice the f32 FMA rate:
//   S = Q K^T : X = 6 query rows as bf16 pairs of head dims, W panels = 64 keys x head-dim pairs
//   O = P V   : X = 6 rows of softmax weights as bf16 pairs of tokens, W panels = 64 head dims x
//               token pairs (V transposed while packing)
// Per work unit (one query head, a range of its queries) K and V of the head's kv head are packed
// once into those panels (~80 KB each at 577 x 64: they stay in L2 for every query tile); per tile
// of up to 48 queries the whole score rows are computed (R x n_kv f32, no online rescaling since
// every key is visible; each row's maximum gathered by the Q K^T kernel as it stores the scores),
// the softmax runs in f32 (max subtracted, exp2_le0 below), its weights
// are rounded to bf16 row by row (the second product reads X as rows) and each row is normalised by the
// sum of the rounded weights (so the weights applied sum to one), in the kernel's registers.
// Q, K and V rows are a head's slice of each token's row (a row stride of all heads apart), so
// the packing converts and interleaves them in registers (no scalar scatter) and prefetches the
// rows ahead; the last key block, usually partial (577 = 9 x 64 + 1), runs only the 16-key groups
// it uses.
//
// Error against ref::attention on q, k, v rounded to bf16 beforehand: the scores are exact
// products summed in f32; the weights carry one bf16 rounding (relative 2^-9), so each output is
// a convex combination of v whose weights are off by at most ~2^-8 relative:
// |o - ref| <= ~2^-8 * max |v| (tests/native/test_attention.cpp states the tolerance it checks).
#include "attention_internal.h"

#include "../../base/error.h"

#if defined(__x86_64__)
// GCC 12 reports its own _mm512_undefined_*() helpers (inlined from immintrin.h) as uninitialised.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "../../base/arena.h"
#include "attention_bf16_pack.h"
#include "gemm_kern_bf16_avx512.h"
#include "simd_math.h"

namespace emollm {
namespace attention_detail {
namespace {

#define EMO_TBF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))

using gemm_detail::kBf16MR;
using gemm_detail::kBf16NR;
using gemm_detail::kern_bf16_6x64;
using gemm_detail::pack_x6_bf16pairs;
using attention_bf16::prefetch_row;
using simd::tail_mask16;

constexpr int kMaxTileRows = 8 * kBf16MR;        // queries per tile
constexpr int64_t kScoreBudget = 192 << 10;      // bytes of score rows per tile (L2)

// Sizes of one call, shared by the work units.
struct Geometry {
  int64_t D, Dq;    // head dim, its bf16 pairs
  int64_t nkb;      // 64-key blocks
  int64_t kvp;      // token pairs
  int64_t ldp;      // words per row of the weights' pairs (kvp rounded up to 16)
  int64_t ndp;      // 64-dim panels of the output
  int64_t ldS;      // score row stride (nkb * 64)
  int64_t R;        // queries per tile (multiple of kBf16MR)
  int64_t chunks;   // query ranges per head
  int64_t qchunk;   // queries per range
};

// Per-thread buffers (uint32 words / floats, each part 64-byte aligned).
struct Buffers {
  AlignedPtr<uint32_t> kpan, vpan, xq, px;
  AlignedPtr<float> S, inv_l;
  explicit Buffers(const Geometry& g)
      : kpan(make_aligned<uint32_t>(size_t(g.nkb * g.Dq * kBf16NR))),
        vpan(make_aligned<uint32_t>(size_t(g.ndp * g.kvp * kBf16NR))),
        xq(make_aligned<uint32_t>(size_t(g.R * g.Dq))),
        px(make_aligned<uint32_t>(size_t(g.R * g.ldp))),
        S(make_aligned<float>(size_t(g.R * g.ldS))),
        inv_l(make_aligned<float>(size_t(g.R))) {}
};

// A thread's Buffers kept between calls (the tower calls attention once a layer with the same
// sizes): ~340 KiB at CLIP's 577 x 64, allocated per call before (posix_memalign above the mmap
// threshold: fresh pages, faulted in every call). Grown when a call needs more of any part; the
// contents are scratch, written before they are read in every call.
struct KeptBuffers {
  Geometry cap{};  // the sizes the buffers were made for (0: none yet)
  std::unique_ptr<Buffers> b;
  Buffers& get(const Geometry& g) {
    const bool fits = b && g.nkb * g.Dq <= cap.nkb * cap.Dq && g.ndp * g.kvp <= cap.ndp * cap.kvp &&
                      g.R * g.Dq <= cap.R * cap.Dq && g.R * g.ldp <= cap.R * cap.ldp && g.R * g.ldS <= cap.R * cap.ldS &&
                      g.R <= cap.R;
    if (!fits) {
      Geometry m = g;  // the larger of each part
      if (b) {
        m.nkb = std::max(g.nkb, cap.nkb); m.Dq = std::max(g.Dq, cap.Dq); m.ndp = std::max(g.ndp, cap.ndp);
        m.kvp = std::max(g.kvp, cap.kvp); m.R = std::max(g.R, cap.R); m.ldp = std::max(g.ldp, cap.ldp);
        m.ldS = std::max(g.ldS, cap.ldS);
      }
      b.reset();
      b = std::make_unique<Buffers>(m);
      cap = m;
    }
    return *b;
  }
};

// 2^t for the softmax's t = c (s - m) <= 0 (rounding may leave it a few ulp above): t = n + f,
// |f| <= 1/2, 2^f by a degree-5 polynomial (relative error < 2e-7 in f32, far below the bf16
// rounding of the weights), then 2^n by vscalefps, which underflows gracefully to 0. t below
// -150 is clamped there (2^-150 rounds to 0 anyway); NaN stays NaN.
EMO_TBF inline __m512 exp2_le0(__m512 t) {
  t = _mm512_max_ps(_mm512_set1_ps(-150.0f), t);  // second operand returned when either is NaN
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 q = _mm512_set1_ps(1.3264726e-3f);
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(9.671513e-3f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(5.5507336e-2f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(0.24022242f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(0.693147f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(q, n);
}

// One tile: queries [i0, i0 + rows) of head h, with K / V of its kv head packed.
EMO_TBF void run_tile(const float* q, float* out, const AttentionParams& p, const Geometry& G, float scale, int64_t h,
                      int64_t i0, int64_t rows, Buffers& B) {
  constexpr int MR = kBf16MR;
  const int64_t npan = (rows + MR - 1) / MR;
  // Q rows as bf16 pairs in 6-row X panels: xq[(pi * Dq + q) * 6 + ii]
  for (int64_t pi = 0; pi < npan; ++pi) {
    for (int64_t r = (pi + 1) * MR; r < std::min<int64_t>((pi + 2) * MR, rows); ++r)  // the next panel's rows
      prefetch_row(q + (i0 + r) * p.ldq + h * G.D, G.D);
    pack_x6_bf16pairs(q + (i0 + pi * MR) * p.ldq + h * G.D, p.ldq, int(std::min<int64_t>(MR, rows - pi * MR)), G.D,
                      B.xq.get() + pi * G.Dq * MR);
  }
  // S = Q K^T (unscaled); for a positive scale (fused_max) each row's maximum gathered lane-wise
  // in the kernel's registers as the scores are stored (rmax, 16 lanes a row), not a pass over the
  // row (a maximum does not depend on its order: the same value); a negative scale needs the
  // row's min, a pass below
  float* S = B.S.get();
  const float c = scale * 1.4426950408889634f;
  const bool fused_max = c >= 0;
  alignas(64) float rmax[MR * 16];
  for (int64_t pi = 0; pi < npan; ++pi) {
    const int mr = int(std::min<int64_t>(MR, rows - pi * MR));
    if (fused_max)
      for (int i = 0; i < MR * 16; ++i) rmax[i] = -INFINITY;
    for (int64_t b = 0; b < G.nkb; ++b) {
      const uint32_t* xq = B.xq.get() + pi * G.Dq * MR;
      const uint32_t* kb = B.kpan.get() + b * G.Dq * kBf16NR;
      float* sb = S + pi * MR * G.ldS + b * kBf16NR;
      const int64_t nr = std::min<int64_t>(kBf16NR, p.n_kv - b * kBf16NR);
      // the last block may hold a few keys (577 = 9 x 64 + 1): only its 16-key groups in use
      if (fused_max) {
        if (nr > 48) kern_bf16_6x64<false, 4, MR, true>(G.Dq, xq, kb, sb, G.ldS, mr, nr, nullptr, true, 0, nullptr, rmax);
        else if (nr > 32) kern_bf16_6x64<false, 3, MR, true>(G.Dq, xq, kb, sb, G.ldS, mr, nr, nullptr, true, 0, nullptr, rmax);
        else if (nr > 16) kern_bf16_6x64<false, 2, MR, true>(G.Dq, xq, kb, sb, G.ldS, mr, nr, nullptr, true, 0, nullptr, rmax);
        else kern_bf16_6x64<false, 1, MR, true>(G.Dq, xq, kb, sb, G.ldS, mr, nr, nullptr, true, 0, nullptr, rmax);
      } else if (nr > 48) kern_bf16_6x64(G.Dq, xq, kb, sb, G.ldS, mr, nr, nullptr, true);
      else if (nr > 32) kern_bf16_6x64<false, 3>(G.Dq, xq, kb, sb, G.ldS, mr, nr, nullptr, true);
      else if (nr > 16) kern_bf16_6x64<false, 2>(G.Dq, xq, kb, sb, G.ldS, mr, nr, nullptr, true);
      else kern_bf16_6x64<false, 1>(G.Dq, xq, kb, sb, G.ldS, mr, nr, nullptr, true);
    }
    if (fused_max)
      for (int i = 0; i < mr; ++i) B.inv_l[size_t(pi * MR + i)] = _mm512_reduce_max_ps(_mm512_load_ps(rmax + 16 * i));
  }
  // the tile's output rows (a head's slice of each token's row, a row stride apart) are fetched
  // for writing while the softmax runs, not one miss at a time by the product's stores
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < G.D; d += 16) __builtin_prefetch(out + (i0 + r) * p.ldo + h * G.D + d, 1, 3);
  // softmax rows in f32: exp(scale (s - max)) = 2^(s c - m c) with c = scale log2(e) and m the
  // row's max (its min for a negative scale), one fused multiply-subtract per element; the
  // weights rounded to bf16 pairs, row by row (the X rows of P V): px[r * ldp + t] = (P[r][2t], P[r][2t+1])
  const int64_t n = p.n_kv;
  const __m512 vc = _mm512_set1_ps(c);
  const __m512i hi_mask = _mm512_set1_epi32(int(0xFFFF0000u));
  for (int64_t pi = 0; pi < npan; ++pi) {
    for (int ii = 0; ii < MR; ++ii) {
      const int64_t r = pi * MR + ii;
      uint32_t* prow = B.px.get() + r * G.ldp;
      if (r >= rows) {  // the last panel's missing rows: read by the kernel, never stored
        std::memset(prow, 0, sizeof(uint32_t) * size_t(G.ldp));
        continue;
      }
      const float* s = S + r * G.ldS;
      // the row's max (its min for c < 0: c flips the order): from the product for c >= 0, else a
      // pass over two accumulators so the loop is not one dependent min per 16 scores; lanes past
      // n see +inf, which never wins
      float ext;
      if (fused_max) {
        ext = B.inv_l[size_t(r)];  // the row's maximum from the product (inv_l is set below)
      } else {
        const __m512 hi = _mm512_set1_ps(INFINITY);
        __m512 a0 = hi, a1 = hi;
        for (int64_t j = 0; j < n; j += 32) {
          a0 = _mm512_min_ps(a0, _mm512_mask_loadu_ps(hi, tail_mask16(n - j), s + j));
          a1 = _mm512_min_ps(a1, _mm512_mask_loadu_ps(hi, tail_mask16(n - j - 16), s + j + 16));
        }
        ext = _mm512_reduce_min_ps(_mm512_min_ps(a0, a1));
      }
      const __m512 vmc = _mm512_set1_ps(ext * c);
      // the rounded weights summed in two accumulators (the even and the odd tokens' weights of
      // each pair) instead of one chain of two dependent adds per 32 scores
      __m512 sum = _mm512_setzero_ps(), sum_hi = _mm512_setzero_ps();
      // whole 32-score steps without masks (all lanes live: the masked loop's arithmetic with
      // all-ones masks, so the same weights and sums), two steps an iteration; the tail masked
      const int64_t nf = n / 32 * 32;
      int64_t j0 = 0;
#pragma GCC unroll 2
      for (; j0 < nf; j0 += 32) {
        const __m512 e0 = exp2_le0(_mm512_fmsub_ps(_mm512_loadu_ps(s + j0), vc, vmc));
        const __m512 e1 = exp2_le0(_mm512_fmsub_ps(_mm512_loadu_ps(s + j0 + 16), vc, vmc));
        const __m512i w = (__m512i)_mm512_cvtne2ps_pbh(e1, e0);
        sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
        sum_hi = _mm512_add_ps(sum_hi, _mm512_castsi512_ps(_mm512_and_si512(w, hi_mask)));
        _mm512_storeu_si512(prow + j0 / 2, w);
      }
      for (int64_t j = j0; j < n; j += 32) {
        const __mmask16 m0 = tail_mask16(n - j), m1 = tail_mask16(n - j - 16);
        const __m512 e0 = _mm512_maskz_mov_ps(m0, exp2_le0(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m0, s + j), vc, vmc)));
        const __m512 e1 = _mm512_maskz_mov_ps(m1, exp2_le0(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m1, s + j + 16), vc, vmc)));
        const __m512i w = (__m512i)_mm512_cvtne2ps_pbh(e1, e0);
        sum = _mm512_add_ps(sum, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
        sum_hi = _mm512_add_ps(sum_hi, _mm512_castsi512_ps(_mm512_and_si512(w, hi_mask)));
        _mm512_storeu_si512(prow + j / 2, w);  // j / 2 + 16 <= ldp
      }
      // the row's maximum contributes 2^0 = 1 (exact in bf16): the sum is >= 1
      B.inv_l[size_t(r)] = 1.0f / _mm512_reduce_add_ps(_mm512_add_ps(sum, sum_hi));
    }
  }
  // O = P V, each row divided by its weights' sum in the kernel's registers
  for (int64_t pi = 0; pi < npan; ++pi) {
    const int mr = int(std::min<int64_t>(MR, rows - pi * MR));
    float* y = out + (i0 + pi * MR) * p.ldo + h * G.D;
    for (int64_t pd = 0; pd < G.ndp; ++pd)
      kern_bf16_6x64<true>(G.kvp, B.px.get() + pi * MR * G.ldp, B.vpan.get() + pd * G.kvp * kBf16NR, y + pd * kBf16NR,
                           p.ldo, mr, std::min<int64_t>(kBf16NR, G.D - pd * kBf16NR), nullptr, true, G.ldp,
                           B.inv_l.get() + pi * MR);
  }
}

}  // namespace

// (The switch EMOLLM_ATTN_BF16=0, the f32 tiles for these calls too, is gone: the CLIP-L/336 tower
// 0.650 vs 0.770 s/image with the load-time panels, bench/README 2026-12-04 17:25. The f32 tiles stay:
// every call this path does not take, and CPUs without AVX512-BF16.)
bool bidir_bf16_applies(const AttentionParams& p) {
  return p.bf16_products && !p.causal && p.kv_block_size == 0 && p.kv_dtype == DType::F32 &&
         p.n_q >= kBidirBf16MinRows && isa_active() >= Isa::Avx512 && cpu_features().avx512bf16;
}

void attention_bidir_bf16(const float* q, const float* k, const float* v, float* out, const AttentionParams& p,
                          float scale, int64_t group, ThreadPool* pool) {
  const int nth = pool ? std::max(1, pool->size()) : 1;
  Geometry G;
  G.D = p.head_dim;
  G.Dq = (G.D + 1) / 2;
  G.nkb = (p.n_kv + kBf16NR - 1) / kBf16NR;
  G.kvp = (p.n_kv + 1) / 2;
  G.ldp = (G.kvp + 15) / 16 * 16;
  G.ndp = (G.D + kBf16NR - 1) / kBf16NR;
  G.ldS = G.nkb * kBf16NR;
  G.R = std::clamp<int64_t>(kScoreBudget / (G.ldS * 4) / kBf16MR * kBf16MR, kBf16MR, kMaxTileRows);
  // Enough units for every thread (each packs its head's K and V: n_kv x D, against the unit's
  // n_q / chunks x n_kv x D x 2 multiply-adds).
  const int64_t tiles = (p.n_q + G.R - 1) / G.R;
  G.chunks = std::clamp<int64_t>((4 * int64_t(nth) + p.n_heads - 1) / p.n_heads, 1, tiles);
  if (p.n_heads >= 2 * int64_t(nth)) G.chunks = 1;
  G.qchunk = (tiles + G.chunks - 1) / G.chunks * G.R;
  const int64_t units = p.n_heads * G.chunks;

  auto worker = [&](std::atomic<int64_t>& next) {
    static thread_local KeptBuffers kept;
    Buffers& B = kept.get(G);
    for (int64_t u; (u = next.fetch_add(1, std::memory_order_relaxed)) < units;) {
      const int64_t h = u / G.chunks, c = u % G.chunks;
      const int64_t q0 = c * G.qchunk, q1 = std::min(p.n_q, q0 + G.qchunk);
      if (q0 >= q1) continue;
      const int64_t g = h / group;
      attention_bf16::pack_row_panels(k + g * G.D, p.ldk, p.n_kv, G.D, G.nkb, B.kpan.get());  // K: 64-key panels
      attention_bf16::pack_row_pair_panels(v + g * G.D, p.ldv, p.n_kv, G.D, G.kvp, B.vpan.get());  // V: token pairs
      for (int64_t i0 = q0; i0 < q1; i0 += G.R) run_tile(q, out, p, G, scale, h, i0, std::min(G.R, q1 - i0), B);
    }
  };
  std::atomic<int64_t> next{0};
  if (nth == 1 || units == 1) return worker(next);
  pool->run([&](int, int) { worker(next); });
}

}  // namespace attention_detail
}  // namespace emollm

#else  // !__x86_64__

namespace emollm {
namespace attention_detail {
bool bidir_bf16_applies(const AttentionParams&) { return false; }
void attention_bidir_bf16(const float*, const float*, const float*, float*, const AttentionParams&, float, int64_t,
                          ThreadPool*) {
  throw Error(ErrorCode::Internal, "attention_bidir_bf16: x86-64 only");
}
}  // namespace attention_detail
}  // namespace emollm

#endif
