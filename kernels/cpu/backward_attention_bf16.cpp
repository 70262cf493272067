// Attention backward on the AVX512-BF16 dot-product unit (backward_internal.h), for calls that
// allow bf16 products (AttentionParams::bf16_products: a model with bf16 / f16 weights, whose
// GEMMs already round their activations to bf16). Same contract as attention_backward().
//
// Flash-attention-2 order, one task per kv head: blocks of kBr = 24 queries (4 microkernel row
// panels) against tiles of 64 keys; per tile all five products run on the 6x64 vdpbf16ps
// microkernel of the packed bf16 GEMM (kern_bf16_6x64, twice the f32 FMA rate), with f32 sums:
//   S  = Q K^T      X: Q rows as pairs of head dims      W: K in 64-key panels (packed per kv head)
//   dP = dO V^T     X: dO rows likewise                  W: V likewise
//   dQ += dS K      X: dS rows as pairs of keys          W: K as key pairs x 64 head dims
//   dK^T += Q^T dS  X: Q^T (head dims x query pairs)     W: dS as query pairs x 64 keys
//   dV^T += dO^T P  X: dO^T likewise                     W: P likewise
// P = exp(scale S - lse) and dS = P (dP - D) scale in f32 (D_r = dO_r . O_r in f32); dK and dV
// are summed transposed ([head_dim][keys], the microkernel's 64-wide rows run along the keys)
// and written back once per kv head.
//
// Rounding: q, k, v and dO are rounded to bf16 (nearest even) where they enter the products, P
// and dS where they leave for the second ones; every product of two bf16 values is exact in f32
// and summed in f32. So on inputs that are bf16 already, S and dP are the f32 results and each
// gradient element carries one relative rounding of 2^-8 per term: |dV_jd - ref| <= 2^-8 sum_r
// P_rj |dO_rd|, |dK_jd - ref| <= 2^-8 sum_r |dS_rj q_rd|, |dQ_rd - ref| <= 2^-8 sum_j |dS_rj k_jd|,
// plus the f32 path's own error (tests/native/test_backward.cpp checks exactly this bound).
#include "backward_internal.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "../../base/env_switch.h"
#include "../../base/cpu_features.h"

#if defined(__x86_64__)
#pragma GCC diagnostic push
// GCC 12 reports its own _mm512_undefined_*() helpers (inlined from immintrin.h) as uninitialised.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "attention_bf16_pack.h"
#include "gemm_internal.h"
#include "gemm_kern_bf16_avx512.h"
#include "simd_math.h"
#endif

namespace emollm {
namespace backward_detail {

bool attention_backward_bf16_applies(const AttentionParams& p) {
#if defined(__x86_64__)
  return p.bf16_products && vector_paths_enabled() && p.kv_block_size == 0 &&
         p.kv_dtype == DType::F32 && isa_active() >= Isa::Avx512 && cpu_features().avx512bf16;
#else
  (void)p;
  return false;
#endif
}

#if defined(__x86_64__)
namespace {

#define EMO_TBF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))

using attention_bf16::pack_row_pair_panels;
using attention_bf16::pack_row_panels;
using attention_bf16::pair_words_padded;
using attention_bf16::row_to_pairs;
using gemm_detail::kBf16MR;
using gemm_detail::kBf16NR;
using gemm_detail::kern_bf16_6x64;
using simd::tail_mask16;

constexpr int kBr = 4 * kBf16MR;  // queries per block (whole microkernel row panels)
constexpr int kBp = kBr / 2;      // their pairs
constexpr int kBc = kBf16NR;      // keys per tile
constexpr int kTw = kBc / 2;      // words of a tile row's key pairs
static_assert(kBr % 2 == 0, "query pairs");

inline int64_t visible_kv(const AttentionParams& p, int64_t i) {
  return p.causal ? std::min(p.n_kv, p.q_pos0 + i + 1) : p.n_kv;
}

// Sizes of one call.
struct Geometry {
  int64_t D, Dq;  // head dim, its pairs
  int64_t ldr;    // words per packed q / dO row (pair_words_padded(D))
  int64_t nkb;    // 64-key blocks
  int64_t Lk;     // nkb * 64: row length of the transposed dK / dV sums
  int64_t kvp;    // key pairs
  int64_t ndp;    // 64-wide head-dim panels (dQ)
  int64_t n6;     // 6-row head-dim panels (dK^T, dV^T)
};

// One thread's buffers, carved from its gemm scratch slot (64-byte aligned parts).
struct Buffers {
  uint32_t *kS, *vS;    // [nkb][Dq][64]: K, V in 64-key panels of head-dim pairs
  uint32_t* kQ;         // [ndp][kvp][64]: K as key pairs x 64 head dims
  float *dKt, *dVt;     // [D][Lk]: sum of dK^T, dV^T of the kv head
  uint32_t *qr, *dor;   // [kBr][ldr]: the block's q, dO rows as pairs
  uint32_t *qT, *doT;   // [n6][kBp][6]: X panels of Q^T, dO^T (head dims x query pairs)
  uint32_t* rowpairs;   // [ndp][kBp][64]: staging of qT / doT
  uint32_t* dsr;        // [kBr][kTw]: dS rows as key pairs
  uint32_t *pw, *dsw;   // [kBp][64]: P, dS as query pairs x 64 keys
  float *S, *dP;        // [kBr][kBc]: scores -> P, dP -> dS of one tile
  float* dqb;           // [kBr][D]: the block's dq sums
  float *lse, *di;      // [kBr]

  Buffers(const Geometry& g) {
    size_t off = 0;
    auto take = [&](size_t bytes) {
      const size_t at = off;
      off += (bytes + 63) / 64 * 64;
      return at;
    };
    const size_t o_kS = take(size_t(g.nkb * g.Dq * kBf16NR) * 4), o_vS = take(size_t(g.nkb * g.Dq * kBf16NR) * 4),
                 o_kQ = take(size_t(g.ndp * g.kvp * kBf16NR) * 4), o_dKt = take(size_t(g.D * g.Lk) * 4),
                 o_dVt = take(size_t(g.D * g.Lk) * 4), o_qr = take(size_t(kBr * g.ldr) * 4),
                 o_dor = take(size_t(kBr * g.ldr) * 4), o_qT = take(size_t(g.n6 * kBp * kBf16MR) * 4),
                 o_doT = take(size_t(g.n6 * kBp * kBf16MR) * 4), o_rp = take(size_t(g.ndp * kBp * kBf16NR) * 4),
                 o_dsr = take(size_t(kBr * kTw) * 4), o_pw = take(size_t(kBp * kBf16NR) * 4),
                 o_dsw = take(size_t(kBp * kBf16NR) * 4), o_S = take(size_t(kBr * kBc) * 4),
                 o_dP = take(size_t(kBr * kBc) * 4), o_dqb = take(size_t(kBr * g.D) * 4), o_lse = take(kBr * 4),
                 o_di = take(kBr * 4);
    auto* base = static_cast<uint8_t*>(gemm_detail::scratch(1, off));
    kS = reinterpret_cast<uint32_t*>(base + o_kS);
    vS = reinterpret_cast<uint32_t*>(base + o_vS);
    kQ = reinterpret_cast<uint32_t*>(base + o_kQ);
    dKt = reinterpret_cast<float*>(base + o_dKt);
    dVt = reinterpret_cast<float*>(base + o_dVt);
    qr = reinterpret_cast<uint32_t*>(base + o_qr);
    dor = reinterpret_cast<uint32_t*>(base + o_dor);
    qT = reinterpret_cast<uint32_t*>(base + o_qT);
    doT = reinterpret_cast<uint32_t*>(base + o_doT);
    rowpairs = reinterpret_cast<uint32_t*>(base + o_rp);
    dsr = reinterpret_cast<uint32_t*>(base + o_dsr);
    pw = reinterpret_cast<uint32_t*>(base + o_pw);
    dsw = reinterpret_cast<uint32_t*>(base + o_dsw);
    S = reinterpret_cast<float*>(base + o_S);
    dP = reinterpret_cast<float*>(base + o_dP);
    dqb = reinterpret_cast<float*>(base + o_dqb);
    lse = reinterpret_cast<float*>(base + o_lse);
    di = reinterpret_cast<float*>(base + o_di);
  }
};

// X panels of the block's rows transposed: xT[(c * kBp + t) * 6 + i] = (x[2t][6c + i],
// x[2t + 1][6c + i]) for head dims 6c + i < D (zero past D and past `rows`), staged through the
// pair panels of the rows.
EMO_TBF void pack_transposed_panels(const float* x, int64_t ld, int64_t rows, const Geometry& G, uint32_t* stage,
                                    uint32_t* xT) {
  pack_row_pair_panels(x, ld, rows, G.D, kBp, stage);
  for (int64_t c = 0; c < G.n6; ++c)
    for (int64_t t = 0; t < kBp; ++t) {
      uint32_t* o = xT + (c * kBp + t) * kBf16MR;
      for (int i = 0; i < kBf16MR; ++i) {
        const int64_t d = c * kBf16MR + i;
        o[i] = d < G.D ? stage[((d / kBf16NR) * kBp + t) * kBf16NR + d % kBf16NR] : 0u;
      }
    }
}

// S[r][0:64] = q_r . k_(j0 + 0:64) (unscaled) for the block's kBr rows (X rows `xr`, ldr words
// apart) against the 64-key panel `w` (Dq pairs).
EMO_TBF void tile_product(const uint32_t* xr, const uint32_t* w, const Geometry& G, float* S) {
  for (int pi = 0; pi < kBr / kBf16MR; ++pi)
    kern_bf16_6x64<true>(G.Dq, xr + pi * kBf16MR * G.ldr, w, S + pi * kBf16MR * kBc, kBc, kBf16MR, kBc, nullptr, true,
                         G.ldr);
}

// Everything of kv head hk: its dk / dv rows and the dq rows of its query heads.
EMO_TBF void kv_head(const float* q, const float* k, const float* v, const float* out, const float* dout,
                     const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p, float scale,
                     int64_t hk, const Geometry& G, Buffers& B) {
  const int64_t D = G.D, H = p.n_heads, group = p.n_heads / p.n_kv_heads, nq = p.n_q, nkv = p.n_kv;
  pack_row_panels(k + hk * D, p.ldk, nkv, D, G.nkb, B.kS);
  pack_row_panels(v + hk * D, p.ldv, nkv, D, G.nkb, B.vS);
  pack_row_pair_panels(k + hk * D, p.ldk, nkv, D, G.kvp, B.kQ);
  std::fill_n(B.dKt, D * G.Lk, 0.0f);
  std::fill_n(B.dVt, D * G.Lk, 0.0f);
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t g = 0; g < group; ++g) {
    const int64_t h = hk * group + g;
    for (int64_t i0 = 0; i0 < nq; i0 += kBr) {
      const int R = int(std::min<int64_t>(kBr, nq - i0));
      const int64_t jend = visible_kv(p, i0 + R - 1);  // the block's last row sees the most keys
      // the block's rows as pairs (zero past R), D_r = dO_r . O_r, lse
      for (int r = 0; r < kBr; ++r) {
        uint32_t* qw = B.qr + r * G.ldr;
        uint32_t* ow = B.dor + r * G.ldr;
        if (r >= R) {
          std::fill_n(qw, G.ldr, 0u);
          std::fill_n(ow, G.ldr, 0u);
          B.lse[r] = INFINITY;  // P = 0
          B.di[r] = 0.0f;
          continue;
        }
        const int64_t i = i0 + r;
        const float* orow = dout + i * p.ldo + h * D;
        row_to_pairs(q + i * p.ldq + h * D, D, qw);
        row_to_pairs(orow, D, ow);
        const float* o = out + i * p.ldo + h * D;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 16) {
          const __mmask16 m = tail_mask16(D - d);
          acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, orow + d), _mm512_maskz_loadu_ps(m, o + d), acc);
        }
        B.di[r] = _mm512_reduce_add_ps(acc);
        if (lse) B.lse[r] = lse[i * H + h];
      }
      pack_transposed_panels(q + i0 * p.ldq + h * D, p.ldq, R, G, B.rowpairs, B.qT);
      pack_transposed_panels(dout + i0 * p.ldo + h * D, p.ldo, R, G, B.rowpairs, B.doT);
      std::fill_n(B.dqb, kBr * D, 0.0f);
      if (!lse) {  // each row's log-sum-exp from the same (bf16-product) scores: one pass over the tiles
        float m[kBr], l[kBr];
        std::fill_n(m, kBr, -INFINITY);
        std::fill_n(l, kBr, 0.0f);
        for (int64_t j0 = 0; j0 < jend; j0 += kBc) {
          tile_product(B.qr, B.kS + (j0 / kBc) * G.Dq * kBf16NR, G, B.S);
          for (int r = 0; r < R; ++r) {
            const int64_t vis = std::min<int64_t>(visible_kv(p, i0 + r) - j0, kBc);
            if (vis <= 0) continue;
            const float* sr = B.S + r * kBc;
            __m512 mx = _mm512_set1_ps(-INFINITY);
            for (int64_t j = 0; j < vis; j += 16)
              mx = _mm512_mask_max_ps(mx, tail_mask16(vis - j), mx, _mm512_mul_ps(_mm512_loadu_ps(sr + j), vscale));
            const float mn = std::max(m[r], _mm512_reduce_max_ps(mx));
            const __m512 vm = _mm512_set1_ps(mn);
            __m512 z = _mm512_setzero_ps();
            for (int64_t j = 0; j < vis; j += 16)
              z = _mm512_add_ps(z, _mm512_maskz_mov_ps(tail_mask16(vis - j),
                                                       simd::exp512_ps(_mm512_fmsub_ps(_mm512_loadu_ps(sr + j), vscale, vm))));
            l[r] = l[r] * (m[r] == -INFINITY ? 0.0f : std::exp(m[r] - mn)) + _mm512_reduce_add_ps(z);
            m[r] = mn;
          }
        }
        for (int r = 0; r < R; ++r) B.lse[r] = m[r] + std::log(l[r]);
      }
      for (int64_t j0 = 0; j0 < jend; j0 += kBc) {
        const int64_t b = j0 / kBc;
        const int nb = int(std::min<int64_t>(kBc, jend - j0));
        tile_product(B.qr, B.kS + b * G.Dq * kBf16NR, G, B.S);
        tile_product(B.dor, B.vS + b * G.Dq * kBf16NR, G, B.dP);
        // P = exp(scale S - lse) over each row's visible keys (zero past them), dS = P (dP - D_r) scale
        for (int r = 0; r < kBr; ++r) {
          const int64_t vis = r < R ? visible_kv(p, i0 + r) - j0 : 0;
          const __m512 vl = _mm512_set1_ps(B.lse[r]), vd = _mm512_set1_ps(B.di[r]);
          float* sr = B.S + r * kBc;
          float* pr = B.dP + r * kBc;
#pragma GCC unroll 4
          for (int t = 0; t < kBc / 16; ++t) {
            const __m512 P = _mm512_maskz_mov_ps(tail_mask16(vis - 16 * t),
                                                 simd::exp512_ps(_mm512_fmsub_ps(_mm512_loadu_ps(sr + 16 * t), vscale, vl)));
            _mm512_storeu_ps(sr + 16 * t, P);
            _mm512_storeu_ps(pr + 16 * t,
                             _mm512_mul_ps(_mm512_mul_ps(P, _mm512_sub_ps(_mm512_loadu_ps(pr + 16 * t), vd)), vscale));
          }
          row_to_pairs(pr, kBc, B.dsr + r * kTw);
        }
        pack_row_pair_panels(B.S, kBc, kBr, kBc, kBp, B.pw);
        pack_row_pair_panels(B.dP, kBc, kBr, kBc, kBp, B.dsw);
        // dV^T[d][j0 + 0:64] += sum_r dO[r][d] P[r][j], dK^T likewise with q and dS
        for (int64_t c = 0; c < G.n6; ++c) {
          const int mr = int(std::min<int64_t>(kBf16MR, D - c * kBf16MR));
          kern_bf16_6x64(kBp, B.doT + c * kBp * kBf16MR, B.pw, B.dVt + c * kBf16MR * G.Lk + j0, G.Lk, mr, kBc, nullptr,
                         false);
          kern_bf16_6x64(kBp, B.qT + c * kBp * kBf16MR, B.dsw, B.dKt + c * kBf16MR * G.Lk + j0, G.Lk, mr, kBc, nullptr,
                         false);
        }
        // dQ[r] += sum_j dS[r][j] k_j over the tile's key pairs (dS is zero past each row's keys)
        const int64_t kcp = (nb + 1) / 2;
        for (int pi = 0; pi * kBf16MR < R; ++pi)
          for (int64_t pd = 0; pd < G.ndp; ++pd)
            kern_bf16_6x64<true>(kcp, B.dsr + pi * kBf16MR * kTw, B.kQ + (pd * G.kvp + j0 / 2) * kBf16NR,
                                 B.dqb + pi * kBf16MR * D + pd * kBf16NR, D, kBf16MR,
                                 std::min<int64_t>(kBf16NR, D - pd * kBf16NR), nullptr, false, kTw);
      }
      for (int r = 0; r < R; ++r) std::memcpy(dq + (i0 + r) * p.ldq + h * D, B.dqb + r * D, size_t(D) * sizeof(float));
    }
  }
  // the transposed sums back into rows
  for (int64_t j = 0; j < nkv; ++j) {
    float* dkr = dk + j * p.ldk + hk * D;
    float* dvr = dv + j * p.ldv + hk * D;
    for (int64_t d = 0; d < D; ++d) {
      dkr[d] = B.dKt[d * G.Lk + j];
      dvr[d] = B.dVt[d * G.Lk + j];
    }
  }
}

}  // namespace

bool attention_backward_bf16(const float* q, const float* k, const float* v, const float* out, const float* dout,
                             const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p,
                             ThreadPool* pool) {
  if (isa_active() < Isa::Avx512 || !cpu_features().avx512bf16) return false;
  Geometry G;
  G.D = p.head_dim;
  G.Dq = (G.D + 1) / 2;
  G.ldr = pair_words_padded(G.D);
  G.nkb = (p.n_kv + kBc - 1) / kBc;
  G.Lk = G.nkb * kBc;
  G.kvp = (p.n_kv + 1) / 2;
  G.ndp = (G.D + kBf16NR - 1) / kBf16NR;
  G.n6 = (G.D + kBf16MR - 1) / kBf16MR;
  const float scale = p.scale != 0.0f ? p.scale : 1.0f / std::sqrt(float(G.D));
  auto per_kv_head = [&](int64_t h0, int64_t h1) {
    Buffers B(G);
    for (int64_t hk = h0; hk < h1; ++hk) kv_head(q, k, v, out, dout, lse, dq, dk, dv, p, scale, hk, G, B);
  };
  const int64_t group = p.n_heads / p.n_kv_heads;
  if (pool && pool->size() > 1 && p.n_kv_heads > 1 && p.n_q * p.n_kv * G.D * group > 16384)
    pool->parallel_for(p.n_kv_heads, 1, per_kv_head);
  else
    per_kv_head(0, p.n_kv_heads);
  return true;
}

#else  // not x86-64
bool attention_backward_bf16(const float*, const float*, const float*, const float*, const float*, const float*,
                             float*, float*, float*, const AttentionParams&, ThreadPool*) {
  return false;
}
#endif

}  // namespace backward_detail
}  // namespace emollm

#if defined(__x86_64__)
#pragma GCC diagnostic pop
#endif
