// AVX-512 paths of the backward kernels (backward_internal.h). Vector code uses GCC target
// attributes (no per-file flags); every entry point checks the CPU and the EMOLLM_ISA cap itself.
//
// gemm_backward_x_bf16: dX = dY W for W stored as nn.Linear [N, K] rows is a GEMM whose
// reduction runs over W's rows. The forward's vdpbf16ps microkernel multiplies (k, k+1) pairs,
// so here the pairs are (row 2q, row 2q+1) of one column of W: a block of W (up to 2048 rows,
// all of them, x 128 columns; or 512 rows x 512 columns, see KCP_DEEP) is packed as 32-bit words
// W[2q][c] | W[2q+1][c] << 16 into 64-column panels,
// dY is packed as bf16 pairs along its row (the forward's X packing), and the 6x64 microkernel
// is the forward's (kern_bf16_6x64, gemm_kern_bf16_avx512.h). Packing reads W once per call, as
// the forward does.
#include "backward_internal.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../../base/cpu_features.h"
#include "../../base/env_switch.h"
#include "gemm_internal.h"

#if defined(__x86_64__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "gemm_kern_bf16_avx512.h"
#endif

namespace emollm {
namespace backward_detail {

// EMOLLM_BACKWARD_AVX512=0 keeps the portable loops (interleaved A/B benchmarks of this file
// against them in one binary; bench/train.mjs reports which ran).
EnvSwitch& vector_paths_flag() {
  static EnvSwitch s("EMOLLM_BACKWARD_AVX512");
  return s;
}
bool vector_paths_enabled() { return vector_paths_flag().on(); }
void set_vector_paths_enabled(bool on) { vector_paths_flag().set(on); }


#if defined(__x86_64__)
namespace {

#define EMO_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define EMO_T512BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))
#define EMO_AI inline __attribute__((always_inline))

bool avx512_ok() { return isa_active() >= Isa::Avx512 && vector_paths_enabled(); }

EMO_T512 EMO_AI __mmask16 mask16(int64_t c) {
  return c >= 16 ? __mmask16(0xFFFF) : c <= 0 ? __mmask16(0) : __mmask16((1u << c) - 1);
}

// ------------------------------------------------------------------ dX = dY W (bf16 W)
constexpr int MR = 6;         // dY rows per microkernel
constexpr int NR = 64;        // dX columns per panel (4 zmm)
constexpr int64_t KCP = 256;  // W row pairs per block
constexpr int64_t NC = 512;   // dX columns per L2 block: KCP * NC * 4 = 512 KiB

// dY rows [0, rows), panels [p0, p1) of MR rows -> out[(p*np + q)*MR + i] = bf16 pair of row
// p*MR+i at elements 2q, 2q+1 (zero past N and for rows past `rows`): the forward's X packing.
EMO_T512BF void pack_dy(const float* dY, int64_t lddy, int64_t rows, int64_t N, int64_t p0, int64_t p1,
                        uint32_t* out) {
  const int64_t np = (N + 1) / 2;
  for (int64_t p = p0; p < p1; ++p)
    gemm_detail::pack_x6_bf16pairs(dY + p * MR * lddy, lddy, int(std::min<int64_t>(MR, rows - p * MR)), N,
                                   out + p * np * MR);
}

// W rows 2(q0+q), 2(q0+q)+1 (q < kcp), columns [c0, c0+nc) -> panels of NR columns:
// out[p*kcp*NR + q*NR + j] = W[2(q0+q)][c0+p*NR+j] | W[2(q0+q)+1][c0+p*NR+j] << 16, zero past N
// rows or past nc columns. F16: W holds IEEE halves, rounded to bf16 (nearest even) while packed
// (every f16 value is in bf16's range; 3 mantissa bits go, as the activations' bits go in the
// forward), so f16 models share the bf16 dot products for the price of a convert per packed element.
template <bool F16>
EMO_T512BF void pack_w_rowpairs(const uint16_t* W, int64_t K, int64_t N, int64_t c0, int64_t nc, int64_t q0,
                                int64_t kcp, uint32_t* out) {
  for (int64_t p = 0; p * NR < nc; ++p) {
    uint32_t* op = out + p * kcp * NR;
    for (int64_t q = 0; q < kcp; ++q) {
      const int64_t n0 = 2 * (q0 + q);
      const uint16_t* r0 = n0 < N ? W + n0 * K + c0 + p * NR : nullptr;
      const uint16_t* r1 = n0 + 1 < N ? W + (n0 + 1) * K + c0 + p * NR : nullptr;
#pragma GCC unroll 4
      for (int g = 0; g < NR / 16; ++g) {
        const __mmask16 m = mask16(nc - p * NR - g * 16);
        __m256i a = r0 ? _mm256_maskz_loadu_epi16(m, r0 + g * 16) : _mm256_setzero_si256();
        __m256i b = r1 ? _mm256_maskz_loadu_epi16(m, r1 + g * 16) : _mm256_setzero_si256();
        if constexpr (F16) {  // halves -> f32 (exact) -> bf16; zero stays zero
          a = (__m256i)_mm512_cvtneps_pbh(_mm512_cvtph_ps(a));
          b = (__m256i)_mm512_cvtneps_pbh(_mm512_cvtph_ps(b));
        }
        const __m512i w =
            _mm512_or_si512(_mm512_cvtepu16_epi32(a), _mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
        _mm512_store_si512(op + q * NR + g * 16, w);
      }
    }
  }
}

// The 6x64 microkernel is the forward's (gemm_kern_bf16_avx512.h), without bias.
static_assert(MR == gemm_detail::kBf16MR && NR == gemm_detail::kBf16NR,
              "the panels are packed for kern_bf16_6x64");

// Deep blocking, as the forward GEMM's (gemm_avx512.cpp, KCP_DEEP):
// a reduction of up to KCP_DEEP row pairs is one block, so each 6x64 tile of dX is written once
// from registers instead of being reloaded and stored once per 256 pairs, and the weight block is
// narrowed to stay in L2 (ncb = WBLOCK_BYTES / (4 kcb) columns: 128 for TinyLlama's 2048-row
// matrices). Longer reductions (TinyLlama's gate / up: 2816 pairs) keep KCP x NC: there blocks of
// 470-1408 pairs measured 1.01-1.25x its time (one thread, thread CPU time, Zen 5), and so did
// prefetching the next weight block into L2 (1.04-1.1x, at every blocking). Packed dY: up to
// X_BUDGET_DEEP bytes per chunk of rows, the rows split evenly: 784 rows of 2816 pairs in one
// chunk (8.8 MB) instead of 744 + 40 at 8 MiB, which packed all of W again for the 40 rows.
// (The previous blocking, 256 pairs x 512 columns at every N and 8 MiB chunks, and its switch
// EMOLLM_BACKWARD_GEMM_DEEP went in session 22: the backward GEMMs 1.035x the forward's, 1.12x
// with it, docs/training.md.)
constexpr int64_t KCP_DEEP = 1024;
constexpr int64_t WBLOCK_BYTES = 512 << 10;
constexpr int64_t X_BUDGET_DEEP = int64_t(16) << 20;

// dX columns [c_begin, c_end) of the rows packed in xp (mcur rows from row 0 of Y); blocks of kcb
// W row pairs x ncb dX columns (ncb a multiple of NR).
template <bool F16>
void nn_range(const uint32_t* xp, const uint16_t* W, float* Y, int64_t ldy, int64_t mcur, int64_t N, int64_t K,
              bool accumulate, int64_t c_begin, int64_t c_end, int64_t kcb, int64_t ncb) {
  const int64_t np = (N + 1) / 2;
  auto* wpack = static_cast<uint32_t*>(gemm_detail::scratch(0, size_t(kcb) * ncb * 4));
  for (int64_t jc = c_begin; jc < c_end; jc += ncb) {
    const int64_t nc = std::min(ncb, c_end - jc);
    for (int64_t pc = 0; pc < np; pc += kcb) {
      const int64_t kc = std::min(kcb, np - pc);
      pack_w_rowpairs<F16>(W, K, N, jc, nc, pc, kc, wpack);
      const bool first = pc == 0 && !accumulate;
      for (int64_t m0 = 0; m0 < mcur; m0 += MR) {
        const int mr = int(std::min<int64_t>(MR, mcur - m0));
        const uint32_t* xpanel = xp + ((m0 / MR) * np + pc) * MR;
        for (int64_t jp = 0; jp * NR < nc; ++jp)
          gemm_detail::kern_bf16_6x64(kc, xpanel, wpack + jp * kc * NR, Y + m0 * ldy + jc + jp * NR, ldy, mr,
                                      nc - jp * NR, nullptr, first);
      }
    }
  }
}

template <bool F16>
bool gemm_backward_x_nn(const float* dY, int64_t lddy, const uint16_t* W, float* dX, int64_t lddx, int64_t M,
                        int64_t N, int64_t K, bool accumulate, ThreadPool* pool) {
  if (!avx512_ok() || !cpu_features().avx512bf16) return false;
  const int64_t np = (N + 1) / 2;
  const int nth = pool ? pool->size() : 1;
  int64_t kcb = KCP, ncb = NC;
  if (np <= KCP_DEEP) {
    kcb = np;
    ncb = std::clamp<int64_t>((WBLOCK_BYTES / (kcb * 4)) / NR * NR, NR, NC);
  }
  const int64_t row_bytes = np * MR * 4;  // packed dY bytes per MR rows
  const int64_t panels = (M + MR - 1) / MR;
  const int64_t chunks = std::max<int64_t>(1, (panels * row_bytes + X_BUDGET_DEEP - 1) / X_BUDGET_DEEP);
  const int64_t mc = ((panels + chunks - 1) / chunks) * MR;
  for (int64_t m0 = 0; m0 < M; m0 += mc) {
    const int64_t mcur = std::min(mc, M - m0);
    const int64_t npm = (mcur + MR - 1) / MR;
    auto* xp = static_cast<uint32_t*>(gemm_detail::scratch(2, size_t(npm) * MR * np * 4));
    const float* dy = dY + m0 * lddy;
    gemm_detail::run_parallel(pool, mcur * N >= (1 << 15), [&](int ith, int nt) {
      int64_t p0, p1;
      split_range(npm, ith, nt, 1, &p0, &p1);
      if (p1 > p0) pack_dy(dy, lddy, mcur, N, p0, p1, xp);
    });
    // columns of dX split between threads (each packs only its columns of W)
    const int64_t npn = (K + NR - 1) / NR;
    const int64_t chunk = (K >= 4 * NC * nth) ? NC : std::max<int64_t>(NR, (npn / (4 * nth)) * NR);
    float* y = dX + m0 * lddx;
    gemm_detail::parallel_chunks(pool, mcur * N * K >= gemm_detail::kParallelMinMacs, K, chunk,
                                 [&](int64_t c0, int64_t c1) {
                                   nn_range<F16>(xp, W, y, lddx, mcur, N, K, accumulate, c0, c1, kcb, ncb);
                                 });
  }
  return true;
}
}  // namespace

bool gemm_backward_x_bf16(const float* dY, int64_t lddy, const uint16_t* W, float* dX, int64_t lddx, int64_t M,
                          int64_t N, int64_t K, bool accumulate, ThreadPool* pool) {
  return gemm_backward_x_nn<false>(dY, lddy, W, dX, lddx, M, N, K, accumulate, pool);
}

bool gemm_backward_x_f16(const float* dY, int64_t lddy, const uint16_t* W, float* dX, int64_t lddx, int64_t M,
                         int64_t N, int64_t K, bool accumulate, ThreadPool* pool) {
  return gemm_backward_x_nn<true>(dY, lddy, W, dX, lddx, M, N, K, accumulate, pool);
}

// ------------------------------------------------------------------ elementwise
namespace {
// Cephes-style expf (the forward attention's constants): x clamped to [-87.34, 88], below
// flushed to 0.
EMO_T512 EMO_AI __m512 exp512(__m512 x) {
  const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654475f), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.33654475f)), _mm512_set1_ps(88.0f));
  const __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(fx), _mm512_set1_epi32(127)), 23);
  y = _mm512_mul_ps(y, _mm512_castsi512_ps(e));
  return _mm512_maskz_mov_ps(__mmask16(~under), y);
}

EMO_T512 void swiglu_bwd_range(const float* gate, const float* up, const float* dy, float* dgate, float* dup,
                               int64_t b, int64_t e) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = b; i < e; i += 16) {
    const __mmask16 m = mask16(e - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i),
                 d = _mm512_maskz_loadu_ps(m, dy + i);
    const __m512 s = _mm512_div_ps(one, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    const __m512 silu = _mm512_mul_ps(g, s);
    // dgate = d * u * s * (1 + g (1 - s)); dup = d * silu(g)
    const __m512 dg = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(d, u), s), _mm512_fmadd_ps(g, _mm512_sub_ps(one, s), one));
    _mm512_mask_storeu_ps(dgate + i, m, dg);
    _mm512_mask_storeu_ps(dup + i, m, _mm512_mul_ps(d, silu));
  }
}
}  // namespace

bool swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup, int64_t n,
                     ThreadPool* pool) {
  if (!avx512_ok()) return false;
  // split at multiples of 256 elements (row_parallel.h's for_elements granularity)
  constexpr int64_t kAlign = 256;
  const int64_t blocks = (n + kAlign - 1) / kAlign;
  auto run = [&](int64_t b0, int64_t b1) {
    swiglu_bwd_range(gate, up, dy, dgate, dup, b0 * kAlign, std::min(n, b1 * kAlign));
  };
  if (pool && pool->size() > 1 && n >= 64 * 1024) pool->parallel_for(blocks, 64, run);
  else run(0, blocks);
  return true;
}

// ------------------------------------------------------------------ attention
// Flash-attention-2 style: per kv head, blocks of kBr queries against tiles of kBc keys. A tile's
// probabilities come from its scores and the row's log-sum-exp (P = exp(S - lse): the forward's,
// or one pass over the row's tiles when none is given), so nothing larger than a kBr x kBc tile
// of S / dP exists and no row maximum or sum is taken in the backward itself. The block's q, dO
// and dq rows are packed contiguous first (the model's rows are n_heads * head_dim floats apart,
// often a multiple of 4 KiB: 16 of them map to one L1 set).
namespace {
constexpr int kBr = 16;  // queries per block
constexpr int kBc = 64;  // keys per tile

inline int64_t visible_kv(const AttentionParams& p, int64_t i) {
  return p.causal ? std::min(p.n_kv, p.q_pos0 + i + 1) : p.n_kv;
}

EMO_T512 EMO_AI float hmax(__m512 v) { return _mm512_reduce_max_ps(v); }
EMO_T512 EMO_AI float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// S[r][16 t + c] = scale * Qb_r . k_(j0 + 16 t + c) and, with DP, dP[r][..] = dOb_r . v_(..), for
// the kBr packed rows (Qb, dOb: [kBr][D]) and CNT vectors of keys from j0 (Kt / Vt: [D][ldt],
// zero past n_kv); two rows at a time, so each Kt / Vt vector is loaded once for both. S / dP
// rows are kBc floats apart.
template <int CNT, bool DP>
EMO_T512 void tile_scores(const float* Qb, const float* dOb, int64_t D, const float* kt, const float* vt,
                          int64_t ldt, int64_t j0, float* S, float* dP, __m512 vscale) {
  for (int r = 0; r < kBr; r += 2) {
    const float *q0 = Qb + r * D, *q1 = q0 + D, *o0 = dOb + r * D, *o1 = o0 + D;
    __m512 s0[CNT], s1[CNT], p0[CNT], p1[CNT];
#pragma GCC unroll 4
    for (int t = 0; t < CNT; ++t) s0[t] = s1[t] = p0[t] = p1[t] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const __m512 a0 = _mm512_set1_ps(q0[d]), a1 = _mm512_set1_ps(q1[d]);
      const float* kd = kt + d * ldt + j0;
#pragma GCC unroll 4
      for (int t = 0; t < CNT; ++t) {
        const __m512 kx = _mm512_loadu_ps(kd + 16 * t);
        s0[t] = _mm512_fmadd_ps(a0, kx, s0[t]);
        s1[t] = _mm512_fmadd_ps(a1, kx, s1[t]);
      }
      if (DP) {
        const __m512 b0 = _mm512_set1_ps(o0[d]), b1 = _mm512_set1_ps(o1[d]);
        const float* vd = vt + d * ldt + j0;
#pragma GCC unroll 4
        for (int t = 0; t < CNT; ++t) {
          const __m512 vx = _mm512_loadu_ps(vd + 16 * t);
          p0[t] = _mm512_fmadd_ps(b0, vx, p0[t]);
          p1[t] = _mm512_fmadd_ps(b1, vx, p1[t]);
        }
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < CNT; ++t) {
      _mm512_storeu_ps(S + r * kBc + 16 * t, _mm512_mul_ps(s0[t], vscale));
      _mm512_storeu_ps(S + (r + 1) * kBc + 16 * t, _mm512_mul_ps(s1[t], vscale));
      if (DP) {
        _mm512_storeu_ps(dP + r * kBc + 16 * t, p0[t]);
        _mm512_storeu_ps(dP + (r + 1) * kBc + 16 * t, p1[t]);
      }
    }
  }
}

template <bool DP>
EMO_T512 void tile_scores_n(int nv, const float* Qb, const float* dOb, int64_t D, const float* kt, const float* vt,
                            int64_t ldt, int64_t j0, float* S, float* dP, __m512 vscale) {
  switch (nv) {
    case 4: tile_scores<4, DP>(Qb, dOb, D, kt, vt, ldt, j0, S, dP, vscale); break;
    case 3: tile_scores<3, DP>(Qb, dOb, D, kt, vt, ldt, j0, S, dP, vscale); break;
    case 2: tile_scores<2, DP>(Qb, dOb, D, kt, vt, ldt, j0, S, dP, vscale); break;
    default: tile_scores<1, DP>(Qb, dOb, D, kt, vt, ldt, j0, S, dP, vscale); break;
  }
}

// For the tile's nb keys from j0 and head_dim columns [d0, d0 + 16 CNT): dV_j += sum_r P[r, j] dO_r
// and dK_j += sum_r dS[r, j] q_r over the block's R rows (two keys at a time: each row's dO / q
// loaded once for both), then dQb_r += sum_j dS[r, j] k_j (four rows at a time: each key row loaded
// once for all of them). Entries of P / dS past a row's visible keys are zero. CNT is a
// compile-time count so the accumulators stay in registers.
template <int CNT>
EMO_T512 void tile_grads(const AttentionParams& p, const float* Qb, const float* dOb, float* dQb, const float* k,
                         float* dk, float* dv, const float* P, const float* dS, int64_t i0, int R, int64_t j0, int nb,
                         int64_t hk, int64_t d0) {
  const int64_t D = p.head_dim;
  __mmask16 dm[CNT];
#pragma GCC unroll 4
  for (int t = 0; t < CNT; ++t) dm[t] = mask16(D - d0 - 16 * t);
  for (int jl = 0; jl < nb; jl += 2) {
    const bool two = jl + 1 < nb;
    const int64_t j = j0 + jl;
    float* dv0 = dv + j * p.ldv + hk * D + d0;
    float* dk0 = dk + j * p.ldk + hk * D + d0;
    float* dv1 = two ? dv0 + p.ldv : dv0;
    float* dk1 = two ? dk0 + p.ldk : dk0;
    __m512 av0[CNT], ak0[CNT], av1[CNT], ak1[CNT];
#pragma GCC unroll 4
    for (int t = 0; t < CNT; ++t) {
      av0[t] = _mm512_maskz_loadu_ps(dm[t], dv0 + 16 * t);
      ak0[t] = _mm512_maskz_loadu_ps(dm[t], dk0 + 16 * t);
      av1[t] = two ? _mm512_maskz_loadu_ps(dm[t], dv1 + 16 * t) : _mm512_setzero_ps();
      ak1[t] = two ? _mm512_maskz_loadu_ps(dm[t], dk1 + 16 * t) : _mm512_setzero_ps();
    }
    int r0 = 0;  // rows that see key j: a suffix of the block (causal)
    while (r0 < R && visible_kv(p, i0 + r0) <= j) ++r0;
    for (int r = r0; r < R; ++r) {
      const float* pr = P + r * kBc + jl;
      const float* sr = dS + r * kBc + jl;
      const __m512 pa = _mm512_set1_ps(pr[0]), sa = _mm512_set1_ps(sr[0]);
      const __m512 pb = _mm512_set1_ps(two ? pr[1] : 0.0f), sb = _mm512_set1_ps(two ? sr[1] : 0.0f);
      const float* orow = dOb + r * D + d0;
      const float* qrow = Qb + r * D + d0;
#pragma GCC unroll 4
      for (int t = 0; t < CNT; ++t) {
        const __m512 o = _mm512_maskz_loadu_ps(dm[t], orow + 16 * t), x = _mm512_maskz_loadu_ps(dm[t], qrow + 16 * t);
        av0[t] = _mm512_fmadd_ps(pa, o, av0[t]);
        ak0[t] = _mm512_fmadd_ps(sa, x, ak0[t]);
        av1[t] = _mm512_fmadd_ps(pb, o, av1[t]);
        ak1[t] = _mm512_fmadd_ps(sb, x, ak1[t]);
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < CNT; ++t) {
      _mm512_mask_storeu_ps(dv0 + 16 * t, dm[t], av0[t]);
      _mm512_mask_storeu_ps(dk0 + 16 * t, dm[t], ak0[t]);
      if (two) {
        _mm512_mask_storeu_ps(dv1 + 16 * t, dm[t], av1[t]);
        _mm512_mask_storeu_ps(dk1 + 16 * t, dm[t], ak1[t]);
      }
    }
  }
  constexpr int RB = 4;  // dQ rows at a time (kBr is a multiple): padded rows have dS = 0
  static_assert(kBr % RB == 0, "kBr must be a multiple of RB");
  for (int r = 0; r < R; r += RB) {
    const int64_t last = std::min<int64_t>(i0 + r + RB - 1, i0 + R - 1);
    const int end = int(std::min<int64_t>(nb, visible_kv(p, last) - j0));  // the last row sees the most keys
    __m512 a[RB][CNT];
#pragma GCC unroll 4
    for (int u = 0; u < RB; ++u)
#pragma GCC unroll 4
      for (int t = 0; t < CNT; ++t) a[u][t] = _mm512_maskz_loadu_ps(dm[t], dQb + (r + u) * D + d0 + 16 * t);
    for (int jl = 0; jl < end; ++jl) {
      const float* kj = k + (j0 + jl) * p.ldk + hk * D + d0;
      __m512 x[CNT];
#pragma GCC unroll 4
      for (int t = 0; t < CNT; ++t) x[t] = _mm512_maskz_loadu_ps(dm[t], kj + 16 * t);
#pragma GCC unroll 4
      for (int u = 0; u < RB; ++u) {
        const __m512 su = _mm512_set1_ps(dS[(r + u) * kBc + jl]);
#pragma GCC unroll 4
        for (int t = 0; t < CNT; ++t) a[u][t] = _mm512_fmadd_ps(su, x[t], a[u][t]);
      }
    }
#pragma GCC unroll 4
    for (int u = 0; u < RB; ++u)
#pragma GCC unroll 4
      for (int t = 0; t < CNT; ++t) _mm512_mask_storeu_ps(dQb + (r + u) * D + d0 + 16 * t, dm[t], a[u][t]);
  }
}

// Per-thread scratch of attn_bwd_kv_head.
struct AttnBwdScratch {
  float *kt, *vt;       // [D][L]: K and V of the kv head, transposed, zero past n_kv
  float *qb, *dob, *dqb;  // [kBr][D]: the block's q, dO rows and its dq accumulator
  float *S, *dP;        // [kBr][kBc]: scores / probabilities and dP / dS of one tile
  float lse[kBr], di[kBr];
};

// Everything of kv head hk: dk / dv rows of hk (zeroed by the caller) and dq of its query heads.
EMO_T512 void attn_bwd_kv_head(const float* q, const float* k, const float* v, const float* out, const float* dout,
                               const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p, float scale,
                               int64_t hk, AttnBwdScratch& sc) {
  const int64_t D = p.head_dim, G = p.n_heads / p.n_kv_heads, nq = p.n_q, nkv = p.n_kv;
  const int64_t L = (nkv + 15) / 16 * 16;
  for (int64_t d = 0; d < D; ++d) {
    float* ktd = sc.kt + d * L;
    float* vtd = sc.vt + d * L;
    for (int64_t j = 0; j < nkv; ++j) {
      ktd[j] = k[j * p.ldk + hk * D + d];
      vtd[j] = v[j * p.ldv + hk * D + d];
    }
    for (int64_t j = nkv; j < L; ++j) ktd[j] = vtd[j] = 0.0f;
  }
  const __m512 vscale = _mm512_set1_ps(scale);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t h = hk * G + g;
    for (int64_t i0 = 0; i0 < nq; i0 += kBr) {
      const int R = int(std::min<int64_t>(kBr, nq - i0));
      const int64_t jend = visible_kv(p, i0 + R - 1);  // visible keys of the block's last row (the most)
      // pack the block's rows (zero past R); D_r = dO_r . O_r
      for (int r = 0; r < kBr; ++r) {
        float* qr = sc.qb + r * D;
        float* dr = sc.dob + r * D;
        std::fill_n(sc.dqb + r * D, D, 0.0f);
        if (r >= R) {
          std::fill_n(qr, D, 0.0f);
          std::fill_n(dr, D, 0.0f);
          sc.lse[r] = INFINITY;  // P = 0
          sc.di[r] = 0.0f;
          continue;
        }
        const int64_t i = i0 + r;
        std::memcpy(qr, q + i * p.ldq + h * D, size_t(D) * sizeof(float));
        std::memcpy(dr, dout + i * p.ldo + h * D, size_t(D) * sizeof(float));
        const float* orow = out + i * p.ldo + h * D;
        __m512 vdi = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 16) {
          const __mmask16 m = mask16(D - d);
          vdi = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, dr + d), _mm512_maskz_loadu_ps(m, orow + d), vdi);
        }
        sc.di[r] = hsum(vdi);
        if (lse) sc.lse[r] = lse[i * p.n_heads + h];
      }
      if (!lse) {  // the rows' log-sum-exp: one pass over the tiles (online max and sum)
        float m[kBr], l[kBr];
        std::fill_n(m, kBr, -INFINITY);
        std::fill_n(l, kBr, 0.0f);
        for (int64_t j0 = 0; j0 < jend; j0 += kBc) {
          const int nb = int(std::min<int64_t>(kBc, jend - j0));
          const int nv = (nb + 15) / 16;
          tile_scores_n<false>(nv, sc.qb, sc.dob, D, sc.kt, sc.vt, L, j0, sc.S, sc.dP, vscale);
          for (int r = 0; r < R; ++r) {
            const int64_t vis = std::min<int64_t>(visible_kv(p, i0 + r) - j0, nb);
            if (vis <= 0) continue;
            const float* sr = sc.S + r * kBc;
            __m512 vmx = _mm512_set1_ps(-INFINITY);
            for (int64_t j = 0; j < vis; j += 16) vmx = _mm512_mask_max_ps(vmx, mask16(vis - j), vmx, _mm512_loadu_ps(sr + j));
            const float mn = std::max(m[r], hmax(vmx));
            const __m512 vm = _mm512_set1_ps(mn);
            __m512 vz = _mm512_setzero_ps();
            for (int64_t j = 0; j < vis; j += 16)
              vz = _mm512_add_ps(vz, _mm512_maskz_mov_ps(mask16(vis - j), exp512(_mm512_sub_ps(_mm512_loadu_ps(sr + j), vm))));
            l[r] = l[r] * (m[r] == -INFINITY ? 0.0f : std::exp(m[r] - mn)) + hsum(vz);
            m[r] = mn;
          }
        }
        for (int r = 0; r < R; ++r) sc.lse[r] = m[r] + std::log(l[r]);
      }
      for (int64_t j0 = 0; j0 < jend; j0 += kBc) {
        const int nb = int(std::min<int64_t>(kBc, jend - j0));
        const int nv = (nb + 15) / 16;
        tile_scores_n<true>(nv, sc.qb, sc.dob, D, sc.kt, sc.vt, L, j0, sc.S, sc.dP, vscale);
        // P = exp(S - lse) over each row's visible keys (zero past them); dS = P (dP - D_r) scale
        for (int r = 0; r < kBr; ++r) {
          const int64_t vis = r < R ? visible_kv(p, i0 + r) - j0 : 0;
          const __m512 vl = _mm512_set1_ps(sc.lse[r]), vd = _mm512_set1_ps(sc.di[r]);
          float* sr = sc.S + r * kBc;
          float* pr = sc.dP + r * kBc;
          for (int t = 0; t < nv; ++t) {
            const __m512 P = _mm512_maskz_mov_ps(mask16(vis - 16 * t), exp512(_mm512_sub_ps(_mm512_loadu_ps(sr + 16 * t), vl)));
            _mm512_storeu_ps(sr + 16 * t, P);
            _mm512_storeu_ps(pr + 16 * t, _mm512_mul_ps(_mm512_mul_ps(P, _mm512_sub_ps(_mm512_loadu_ps(pr + 16 * t), vd)), vscale));
          }
        }
        for (int64_t d0 = 0; d0 < D; d0 += 64) {
          switch (std::min<int64_t>(4, (D - d0 + 15) / 16)) {
            case 4: tile_grads<4>(p, sc.qb, sc.dob, sc.dqb, k, dk, dv, sc.S, sc.dP, i0, R, j0, nb, hk, d0); break;
            case 3: tile_grads<3>(p, sc.qb, sc.dob, sc.dqb, k, dk, dv, sc.S, sc.dP, i0, R, j0, nb, hk, d0); break;
            case 2: tile_grads<2>(p, sc.qb, sc.dob, sc.dqb, k, dk, dv, sc.S, sc.dP, i0, R, j0, nb, hk, d0); break;
            default: tile_grads<1>(p, sc.qb, sc.dob, sc.dqb, k, dk, dv, sc.S, sc.dP, i0, R, j0, nb, hk, d0); break;
          }
        }
      }
      for (int r = 0; r < R; ++r) std::memcpy(dq + (i0 + r) * p.ldq + h * D, sc.dqb + r * D, size_t(D) * sizeof(float));
    }
  }
}
}  // namespace

bool attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                        const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p, ThreadPool* pool) {
  if (!avx512_ok()) return false;
  const int64_t D = p.head_dim, nkv = p.n_kv;
  const float scale = p.scale != 0.0f ? p.scale : 1.0f / std::sqrt(float(D));
  const int64_t L = (nkv + 15) / 16 * 16;
  for (int64_t j = 0; j < nkv; ++j) {
    std::fill_n(dk + j * p.ldk, p.n_kv_heads * D, 0.0f);
    std::fill_n(dv + j * p.ldv, p.n_kv_heads * D, 0.0f);
  }
  auto per_kv_head = [&](int64_t h0, int64_t h1) {
    std::vector<float> buf(size_t(2 * D * L + 3 * kBr * D + 2 * kBr * kBc));
    AttnBwdScratch sc;
    sc.kt = buf.data();
    sc.vt = sc.kt + D * L;
    sc.qb = sc.vt + D * L;
    sc.dob = sc.qb + kBr * D;
    sc.dqb = sc.dob + kBr * D;
    sc.S = sc.dqb + kBr * D;
    sc.dP = sc.S + kBr * kBc;
    for (int64_t hk = h0; hk < h1; ++hk) attn_bwd_kv_head(q, k, v, out, dout, lse, dq, dk, dv, p, scale, hk, sc);
  };
  const int64_t G = p.n_heads / p.n_kv_heads;
  if (pool && pool->size() > 1 && p.n_kv_heads > 1 && p.n_q * nkv * D * G > 16384)
    pool->parallel_for(p.n_kv_heads, 1, per_kv_head);
  else
    per_kv_head(0, p.n_kv_heads);
  return true;
}

#else  // not x86-64: the portable loops run
bool gemm_backward_x_bf16(const float*, int64_t, const uint16_t*, float*, int64_t, int64_t, int64_t, int64_t, bool,
                          ThreadPool*) {
  return false;
}
bool gemm_backward_x_f16(const float*, int64_t, const uint16_t*, float*, int64_t, int64_t, int64_t, int64_t, bool,
                         ThreadPool*) {
  return false;
}
bool attention_backward(const float*, const float*, const float*, const float*, const float*, const float*, float*,
                        float*, float*, const AttentionParams&, ThreadPool*) {
  return false;
}
bool swiglu_backward(const float*, const float*, const float*, float*, float*, int64_t, ThreadPool*) { return false; }
#endif

}  // namespace backward_detail
}  // namespace emollm

#if defined(__x86_64__)
#pragma GCC diagnostic pop
#endif
