// AVX-512 paths of the backward kernels (backward_internal.h). Vector code uses GCC target
// attributes (no per-file flags); every entry point checks the CPU and the EMOLLM_ISA cap itself.
//
// gemm_backward_x_bf16: dX = dY W for W stored as nn.Linear [N, K] rows is a GEMM whose
// reduction runs over W's rows. The forward's vdpbf16ps microkernel multiplies (k, k+1) pairs,
// so here the pairs are (row 2q, row 2q+1) of one column of W: a block of W (512 rows x up to
// 512 columns) is packed as 32-bit words W[2q][c] | W[2q+1][c] << 16 into 64-column panels,
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

#if defined(__x86_64__)
namespace {

#define EMO_T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define EMO_T512BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))
#define EMO_AI inline __attribute__((always_inline))

// EMOLLM_BACKWARD_LEGACY=1 keeps the portable loops (interleaved A/B benchmarks of this file
// against them in one binary; bench/train.mjs reports which ran).
bool legacy() {
  static const bool on = [] {
    const char* e = std::getenv("EMOLLM_BACKWARD_LEGACY");
    return e != nullptr && std::strcmp(e, "1") == 0;
  }();
  return on;
}
bool avx512_ok() { return isa_active() >= Isa::Avx512 && !legacy(); }

EMO_T512 EMO_AI __mmask16 mask16(int64_t c) {
  return c >= 16 ? __mmask16(0xFFFF) : c <= 0 ? __mmask16(0) : __mmask16((1u << c) - 1);
}

// ------------------------------------------------------------------ dX = dY W (bf16 W)
constexpr int MR = 6;         // dY rows per microkernel
constexpr int NR = 64;        // dX columns per panel (4 zmm)
constexpr int64_t KCP = 256;  // W row pairs per block
constexpr int64_t NC = 512;   // dX columns per L2 block: KCP * NC * 4 = 512 KiB

// dY rows [0, rows), panels [p0, p1) of MR rows -> out[(p*np + q)*MR + i] = bf16 pair of row
// p*MR+i at elements 2q, 2q+1 (zero past N and for rows past `rows`).
EMO_T512BF void pack_dy(const float* dY, int64_t lddy, int64_t rows, int64_t N, int64_t p0, int64_t p1,
                        uint32_t* out) {
  const int64_t np = (N + 1) / 2;
  alignas(64) uint32_t tmp[16];
  for (int64_t p = p0; p < p1; ++p) {
    uint32_t* o = out + p * np * MR;
    for (int i = 0; i < MR; ++i) {
      const int64_t r = p * MR + i;
      if (r >= rows) {
        for (int64_t q = 0; q < np; ++q) o[q * MR + i] = 0;
        continue;
      }
      const float* x = dY + r * lddy;
      for (int64_t n = 0; n < N; n += 32) {
        const int64_t c = N - n;
        const __m512 lo = _mm512_maskz_loadu_ps(mask16(c), x + n);
        const __m512 hi = _mm512_maskz_loadu_ps(mask16(c - 16), x + n + 16);
        _mm512_store_si512(tmp, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        const int64_t nq = std::min<int64_t>(16, np - n / 2);
        uint32_t* d = o + (n / 2) * MR + i;
        for (int64_t q = 0; q < nq; ++q) d[q * MR] = tmp[q];
      }
    }
  }
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

// dX columns [c_begin, c_end) of the rows packed in xp (mcur rows from row 0 of Y).
template <bool F16>
void nn_range(const uint32_t* xp, const uint16_t* W, float* Y, int64_t ldy, int64_t mcur, int64_t N, int64_t K,
              bool accumulate, int64_t c_begin, int64_t c_end) {
  const int64_t np = (N + 1) / 2;
  auto* wpack = static_cast<uint32_t*>(gemm_detail::scratch(0, size_t(KCP) * NC * 4));
  for (int64_t jc = c_begin; jc < c_end; jc += NC) {
    const int64_t nc = std::min(NC, c_end - jc);
    for (int64_t pc = 0; pc < np; pc += KCP) {
      const int64_t kc = std::min(KCP, np - pc);
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
  const int64_t x_budget = int64_t(8) << 20;  // bytes of packed dY per chunk of rows
  const int64_t mc = std::max<int64_t>(MR, (x_budget / (np * 4)) / MR * MR);
  const int nth = pool ? pool->size() : 1;
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
                                 [&](int64_t c0, int64_t c1) { nn_range<F16>(xp, W, y, lddx, mcur, N, K, accumulate, c0, c1); });
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
namespace {
constexpr int kBr = 16;  // queries per block

inline int64_t visible_kv(const AttentionParams& p, int64_t i) {
  return p.causal ? std::min(p.n_kv, p.q_pos0 + i + 1) : p.n_kv;
}

EMO_T512 EMO_AI float hmax(__m512 v) { return _mm512_reduce_max_ps(v); }
EMO_T512 EMO_AI float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// S[r, keys] = scale q_r . k and dP[r, keys] = dO_r . v for the keys of vectors [v0, v0 + CNT)
// (16 keys each) and the block's R rows, two rows at a time (each Kt / Vt vector loaded once for
// both). Kt / Vt: [D][L], zero past n_kv.
template <int CNT>
EMO_T512 void s_dp_rows(const AttentionParams& p, const float* q, const float* dout, const float* kt, const float* vt,
                        float* S, float* dP, int64_t L, int64_t i0, int64_t R, int64_t h, int64_t v0, __m512 vscale) {
  const int64_t D = p.head_dim;
  for (int64_t r = 0; r < R; r += 2) {
    const bool two = r + 1 < R;
    const float* q0 = q + (i0 + r) * p.ldq + h * D;
    const float* d0 = dout + (i0 + r) * p.ldo + h * D;
    const float* q1 = two ? q0 + p.ldq : q0;
    const float* d1 = two ? d0 + p.ldo : d0;
    __m512 s0[CNT], p0[CNT], s1[CNT], p1[CNT];
#pragma GCC unroll 4
    for (int t = 0; t < CNT; ++t) s0[t] = p0[t] = s1[t] = p1[t] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const __m512 a0 = _mm512_set1_ps(q0[d]), b0 = _mm512_set1_ps(d0[d]);
      const __m512 a1 = _mm512_set1_ps(q1[d]), b1 = _mm512_set1_ps(d1[d]);
      const float* kd = kt + d * L + v0 * 16;
      const float* vd = vt + d * L + v0 * 16;
#pragma GCC unroll 4
      for (int t = 0; t < CNT; ++t) {
        const __m512 kx = _mm512_loadu_ps(kd + 16 * t), vx = _mm512_loadu_ps(vd + 16 * t);
        s0[t] = _mm512_fmadd_ps(a0, kx, s0[t]);
        p0[t] = _mm512_fmadd_ps(b0, vx, p0[t]);
        s1[t] = _mm512_fmadd_ps(a1, kx, s1[t]);
        p1[t] = _mm512_fmadd_ps(b1, vx, p1[t]);
      }
    }
#pragma GCC unroll 4
    for (int t = 0; t < CNT; ++t) {
      _mm512_storeu_ps(S + r * L + (v0 + t) * 16, _mm512_mul_ps(s0[t], vscale));
      _mm512_storeu_ps(dP + r * L + (v0 + t) * 16, p0[t]);
      if (two) {
        _mm512_storeu_ps(S + (r + 1) * L + (v0 + t) * 16, _mm512_mul_ps(s1[t], vscale));
        _mm512_storeu_ps(dP + (r + 1) * L + (v0 + t) * 16, p1[t]);
      }
    }
  }
}

// For one block of R query rows of head h and head_dim columns [d0, d0 + 16 CNT): dV / dK rows
// of the visible keys (two keys at a time, each row's dO / q loaded once for both) and dQ of the
// rows (two rows at a time, each key row loaded once for both). Entries of S / dP past a row's
// visible keys are zero, so a pair may include a key or row that contributes nothing. CNT is a
// compile-time count so the accumulators stay in registers.
template <int CNT>
EMO_T512 void dkdv_dq(const AttentionParams& p, const float* q, const float* k, const float* dout, float* dq, float* dk,
                      float* dv, const float* S, const float* dP, int64_t L, int64_t i0, int64_t R, int64_t jend,
                      int64_t h, int64_t hk, int64_t d0) {
  const int64_t D = p.head_dim;
  __mmask16 dm[CNT];
#pragma GCC unroll 4
  for (int t = 0; t < CNT; ++t) dm[t] = mask16(D - d0 - 16 * t);
  for (int64_t j = 0; j < jend; j += 2) {
    const bool two = j + 1 < jend;
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
    // rows that see key j: a suffix of the block (causal)
    int64_t r0 = 0;
    while (r0 < R && visible_kv(p, i0 + r0) <= j) ++r0;
    for (int64_t r = r0; r < R; ++r) {
      const float* sr = S + r * L + j;
      const float* pr = dP + r * L + j;
      const __m512 p0 = _mm512_set1_ps(sr[0]), s0 = _mm512_set1_ps(pr[0]);
      const __m512 p1 = _mm512_set1_ps(two ? sr[1] : 0.0f), s1 = _mm512_set1_ps(two ? pr[1] : 0.0f);
      const float* dr = dout + (i0 + r) * p.ldo + h * D + d0;
      const float* qr = q + (i0 + r) * p.ldq + h * D + d0;
#pragma GCC unroll 4
      for (int t = 0; t < CNT; ++t) {
        const __m512 o = _mm512_maskz_loadu_ps(dm[t], dr + 16 * t), x = _mm512_maskz_loadu_ps(dm[t], qr + 16 * t);
        av0[t] = _mm512_fmadd_ps(p0, o, av0[t]);
        ak0[t] = _mm512_fmadd_ps(s0, x, ak0[t]);
        av1[t] = _mm512_fmadd_ps(p1, o, av1[t]);
        ak1[t] = _mm512_fmadd_ps(s1, x, ak1[t]);
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
  constexpr int RB = 4;  // dQ rows at a time: each key row k_j loaded once for all of them
  for (int64_t r = 0; r < R; r += RB) {
    const int nr = int(std::min<int64_t>(RB, R - r));
    const int64_t end = visible_kv(p, i0 + r + nr - 1);  // the last row sees the most keys
    const float* pr[RB];
#pragma GCC unroll 4
    for (int u = 0; u < RB; ++u) pr[u] = dP + (r + std::min(u, nr - 1)) * L;
    __m512 a[RB][CNT];
#pragma GCC unroll 4
    for (int u = 0; u < RB; ++u)
#pragma GCC unroll 4
      for (int t = 0; t < CNT; ++t) a[u][t] = _mm512_setzero_ps();
    for (int64_t j = 0; j < end; ++j) {
      const float* kj = k + j * p.ldk + hk * D + d0;
      __m512 x[CNT];
#pragma GCC unroll 4
      for (int t = 0; t < CNT; ++t) x[t] = _mm512_maskz_loadu_ps(dm[t], kj + 16 * t);
#pragma GCC unroll 4
      for (int u = 0; u < RB; ++u) {
        const __m512 su = _mm512_set1_ps(pr[u][j]);
#pragma GCC unroll 4
        for (int t = 0; t < CNT; ++t) a[u][t] = _mm512_fmadd_ps(su, x[t], a[u][t]);
      }
    }
    for (int u = 0; u < nr; ++u) {
      float* dqr = dq + (i0 + r + u) * p.ldq + h * D + d0;
#pragma GCC unroll 4
      for (int t = 0; t < CNT; ++t) _mm512_mask_storeu_ps(dqr + 16 * t, dm[t], a[u][t]);
    }
  }
}

// Everything of kv head hk: dk / dv rows of hk (zeroed by the caller) and dq of its query heads.
// kt, vt: [D][L] scratch; s, dp: [kBr][L] scratch (L = n_kv rounded up to 16).
EMO_T512 void attn_bwd_kv_head(const float* q, const float* k, const float* v, const float* out, const float* dout,
                               float* dq, float* dk, float* dv, const AttentionParams& p, float scale, int64_t hk,
                               float* kt, float* vt, float* S, float* dP) {
  const int64_t D = p.head_dim, G = p.n_heads / p.n_kv_heads, nq = p.n_q, nkv = p.n_kv;
  const int64_t L = (nkv + 15) / 16 * 16;
  for (int64_t d = 0; d < D; ++d) {
    float* ktd = kt + d * L;
    float* vtd = vt + d * L;
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
      const int64_t R = std::min<int64_t>(kBr, nq - i0);
      const int64_t jend = visible_kv(p, i0 + R - 1);  // visible keys of the block's last row (the most)
      if (jend <= 0) {
        for (int64_t r = 0; r < R; ++r) std::fill_n(dq + (i0 + r) * p.ldq + h * D, D, 0.0f);
        continue;
      }
      const int64_t nv = (jend + 15) / 16;
      // S = scale Q K^T and dP = dO V^T over the block's visible keys, 4 vectors of keys at a
      // time (that chunk of Kt / Vt, 2 x D x 64 floats, stays in L1 across the block's rows)
      for (int64_t v0 = 0; v0 < nv; v0 += 4) {
        switch (std::min<int64_t>(4, nv - v0)) {
          case 4: s_dp_rows<4>(p, q, dout, kt, vt, S, dP, L, i0, R, h, v0, vscale); break;
          case 3: s_dp_rows<3>(p, q, dout, kt, vt, S, dP, L, i0, R, h, v0, vscale); break;
          case 2: s_dp_rows<2>(p, q, dout, kt, vt, S, dP, L, i0, R, h, v0, vscale); break;
          default: s_dp_rows<1>(p, q, dout, kt, vt, S, dP, L, i0, R, h, v0, vscale); break;
        }
      }
      // P = softmax over each row's visible keys (zero past them); dS = P (dP - dO.O) scale
      for (int64_t r = 0; r < R; ++r) {
        const int64_t end = visible_kv(p, i0 + r);
        float* sr = S + r * L;
        float* pr = dP + r * L;
        if (end <= 0) {
          std::fill_n(sr, nv * 16, 0.0f);
          std::fill_n(pr, nv * 16, 0.0f);
          continue;
        }
        __m512 vmx = _mm512_set1_ps(-INFINITY);
        for (int64_t j = 0; j < end; j += 16) vmx = _mm512_mask_max_ps(vmx, mask16(end - j), vmx, _mm512_loadu_ps(sr + j));
        const __m512 mx = _mm512_set1_ps(hmax(vmx));
        __m512 vz = _mm512_setzero_ps();
        for (int64_t jv = 0; jv < nv; ++jv) {
          const __m512 e = _mm512_maskz_mov_ps(mask16(end - jv * 16), exp512(_mm512_sub_ps(_mm512_loadu_ps(sr + jv * 16), mx)));
          _mm512_storeu_ps(sr + jv * 16, e);
          vz = _mm512_add_ps(vz, e);
        }
        const __m512 iz = _mm512_set1_ps(1.0f / hsum(vz));
        const float* dr = dout + (i0 + r) * p.ldo + h * D;
        const float* orow = out + (i0 + r) * p.ldo + h * D;
        __m512 vdi = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 16) {
          const __mmask16 m = mask16(D - d);
          vdi = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, dr + d), _mm512_maskz_loadu_ps(m, orow + d), vdi);
        }
        const __m512 di = _mm512_set1_ps(hsum(vdi));
        for (int64_t jv = 0; jv < nv; ++jv) {
          const __m512 P = _mm512_mul_ps(_mm512_loadu_ps(sr + jv * 16), iz);
          _mm512_storeu_ps(sr + jv * 16, P);
          _mm512_storeu_ps(pr + jv * 16, _mm512_mul_ps(_mm512_mul_ps(P, _mm512_sub_ps(_mm512_loadu_ps(pr + jv * 16), di)), vscale));
        }
      }
      // dV_j += sum_r P[r, j] dO_r ; dK_j += sum_r dS[r, j] q_r (rows in ascending order), and
      // dQ_r = sum_j dS[r, j] k_j: head_dim in chunks of up to 64 floats
      for (int64_t d0 = 0; d0 < D; d0 += 64) {
        switch (std::min<int64_t>(4, (D - d0 + 15) / 16)) {
          case 4: dkdv_dq<4>(p, q, k, dout, dq, dk, dv, S, dP, L, i0, R, jend, h, hk, d0); break;
          case 3: dkdv_dq<3>(p, q, k, dout, dq, dk, dv, S, dP, L, i0, R, jend, h, hk, d0); break;
          case 2: dkdv_dq<2>(p, q, k, dout, dq, dk, dv, S, dP, L, i0, R, jend, h, hk, d0); break;
          default: dkdv_dq<1>(p, q, k, dout, dq, dk, dv, S, dP, L, i0, R, jend, h, hk, d0); break;
        }
      }
    }
  }
}
}  // namespace

bool attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                        float* dq, float* dk, float* dv, const AttentionParams& p, ThreadPool* pool) {
  if (!avx512_ok()) return false;
  const int64_t D = p.head_dim, nkv = p.n_kv;
  const float scale = p.scale != 0.0f ? p.scale : 1.0f / std::sqrt(float(D));
  const int64_t L = (nkv + 15) / 16 * 16;
  for (int64_t j = 0; j < nkv; ++j) {
    std::fill_n(dk + j * p.ldk, p.n_kv_heads * D, 0.0f);
    std::fill_n(dv + j * p.ldv, p.n_kv_heads * D, 0.0f);
  }
  auto per_kv_head = [&](int64_t h0, int64_t h1) {
    std::vector<float> buf(size_t(2 * D * L + 2 * kBr * L));
    float* kt = buf.data();
    float* vt = kt + D * L;
    float* S = vt + D * L;
    float* dP = S + kBr * L;
    for (int64_t hk = h0; hk < h1; ++hk) attn_bwd_kv_head(q, k, v, out, dout, dq, dk, dv, p, scale, hk, kt, vt, S, dP);
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
bool attention_backward(const float*, const float*, const float*, const float*, const float*, float*, float*, float*,
                        const AttentionParams&, ThreadPool*) {
  return false;
}
bool swiglu_backward(const float*, const float*, const float*, float*, float*, int64_t, ThreadPool*) { return false; }
#endif

}  // namespace backward_detail
}  // namespace emollm

#if defined(__x86_64__)
#pragma GCC diagnostic pop
#endif
