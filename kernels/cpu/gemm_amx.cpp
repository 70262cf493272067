// AMX-BF16 matrix product (Isa::Amx) for BF16 weights and prefill (M >= 16).
// Used only when cpu_features().amx_usable (the OS granted the tile state; see cpu_features.cpp).
//
// Tiles (palette 1, every tile 16 rows x 64 bytes):
//   tmm0..3 : C, a 2x2 block of 16x16 f32 (32 rows of X x 32 rows of W)
//   tmm4..5 : A, 16 rows of X x 32 bf16 (k), row-major bf16 copy of X, stride kpad*2 bytes
//   tmm6..7 : B, 16 k-pairs x 16 columns of (k, k+1) bf16 pairs (VNNI layout), stride 128 bytes
// tdpbf16ps multiplies bf16 exactly and accumulates in f32, so the result is that of X rounded
// to bf16 (round to nearest even) with f32 accumulation, like the AVX512-BF16 path.
#include "gemm_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

// GCC 12 reports its own _mm512_undefined_*() helpers (inlined from immintrin.h) as uninitialised.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cstring>

#include "gemm_transpose_avx512.h"

namespace emollm {
namespace gemm_detail {
namespace {

#define EMO_TAMX \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define EMO_AI inline __attribute__((always_inline))

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "AMX tile config is 64 bytes");

constexpr int64_t kMB = 32;  // rows of X per C block
constexpr int64_t kNB = 32;  // rows of W per C block
constexpr int64_t kKT = 32;  // k per tile step (16 pairs)

EMO_TAMX EMO_AI __mmask16 mask16(int64_t c) {
  return c >= 16 ? __mmask16(0xFFFF) : c <= 0 ? __mmask16(0) : __mmask16((1u << c) - 1);
}

// f32 -> bf16, round to nearest even, NaN stays NaN: bit-exact with f32_to_bf16 (dtype.h).
EMO_TAMX EMO_AI __m256i cvt_bf16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
  return _mm512_cvtepi32_epi16(r);
}

// X rows [0, rows) -> out[r*kpad + k] bf16, zero for k >= K; rows..rows_pad-1 all zero.
EMO_TAMX void pack_x(const float* X, int64_t ldx, int64_t rows, int64_t rows_pad, int64_t K, int64_t kpad,
                     uint16_t* out) {
  for (int64_t r = 0; r < rows_pad; ++r) {
    uint16_t* o = out + r * kpad;
    if (r >= rows) {
      std::memset(o, 0, size_t(kpad) * 2);
      continue;
    }
    const float* x = X + r * ldx;
    for (int64_t k = 0; k < kpad; k += 16) {
      const __m512 v = _mm512_maskz_loadu_ps(mask16(K - k), x + k);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + k), cvt_bf16(v));
    }
  }
}


// W rows [n0, n0+nv) (nv <= 32) -> VNNI pairs: out[q*32 + j] = W[n0+j] elements (2q, 2q+1),
// zero past K and for j >= nv; q in [0, kpad/2).
EMO_TAMX void pack_b(const uint8_t* W, size_t rb, int64_t n0, int64_t nv, int64_t K, int64_t kpad, uint32_t* out) {
  for (int64_t q0 = 0; q0 < kpad / 2; q0 += 16) {
    const int64_t e0 = 2 * q0;
    const int64_t ce = std::min<int64_t>(32, K - e0);
    const __mmask32 em = ce >= 32 ? __mmask32(0xFFFFFFFFu) : ce <= 0 ? __mmask32(0) : __mmask32((1u << ce) - 1);
    for (int g = 0; g < 2; ++g) {
      __m512 v[16];
      for (int t = 0; t < 16; ++t) {
        const int64_t j = g * 16 + t;
        v[t] = j < nv ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(em, W + size_t(n0 + j) * rb + 2 * e0))
                      : _mm512_setzero_ps();
      }
      transpose16_ps(v);  // gemm_transpose_avx512.h
      for (int t = 0; t < 16; ++t) _mm512_storeu_ps(reinterpret_cast<float*>(out + (q0 + t) * kNB + g * 16), v[t]);
    }
  }
}

// GCC 12's _tile_loadconfig() declares only a pointer-sized memory operand, so the compiler may
// drop the stores that fill the rest of the config (then every tile op raises #UD / SIGILL), and
// _tile_loadd/_tile_stored declare no memory operands at all. Own asm with the whole config as
// the operand, and compiler memory barriers around the tile loads and stores.
EMO_TAMX void amx_configure() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  __asm__ volatile("ldtilecfg %0" ::"m"(cfg) : "memory");
}
#define EMO_MEM_BARRIER() __asm__ volatile("" ::: "memory")

EMO_TAMX void amx_release() { _tile_release(); }

// C[32 x 32] = Xa[m0:m0+32, :] * B^T over kpad; writes rows < mv, cols < nv of Y (+ bias).
EMO_TAMX void amx_block(const uint16_t* xa, int64_t kpad, const uint32_t* bp, int64_t mv, int64_t nv,
                        const float* bias, float* y, int64_t ldy, float* ctmp) {
  EMO_MEM_BARRIER();  // packed A/B are written before the tile loads read them
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t a_stride = kpad * 2;  // bytes
  const int64_t b_stride = kNB * 4;   // bytes
  for (int64_t k = 0; k < kpad; k += kKT) {
    const uint16_t* a0 = xa + k;
    const uint16_t* a1 = xa + 16 * kpad + k;
    const uint32_t* b0 = bp + (k / 2) * kNB;
    const uint32_t* b1 = b0 + 16;
    _tile_loadd(4, a0, a_stride);
    _tile_loadd(5, a1, a_stride);
    _tile_loadd(6, b0, b_stride);
    _tile_loadd(7, b1, b_stride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  // ctmp: 32 x 32 f32, row stride 128 bytes
  _tile_stored(0, ctmp, 128);
  _tile_stored(1, ctmp + 16, 128);
  _tile_stored(2, ctmp + 16 * 32, 128);
  _tile_stored(3, ctmp + 16 * 32 + 16, 128);
  EMO_MEM_BARRIER();  // ctmp is read below
  const __mmask16 m0 = mask16(nv), m1 = mask16(nv - 16);
  const __m512 bias0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
  const __m512 bias1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
  for (int64_t i = 0; i < mv; ++i) {
    _mm512_mask_storeu_ps(y + i * ldy, m0, _mm512_add_ps(_mm512_loadu_ps(ctmp + i * 32), bias0));
    _mm512_mask_storeu_ps(y + i * ldy + 16, m1, _mm512_add_ps(_mm512_loadu_ps(ctmp + i * 32 + 16), bias1));
  }
}

void amx_range(const Args& a, const uint16_t* xa, int64_t kpad, int64_t mcur, float* Y, int64_t n_begin,
               int64_t n_end) {
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  uint32_t* bp = static_cast<uint32_t*>(scratch(0, size_t(kpad / 2) * kNB * 4));
  float* ctmp = static_cast<float*>(scratch(1, 32 * 32 * 4));
  amx_configure();
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kNB) {
    const int64_t nv = std::min(kNB, n_end - n0);
    pack_b(W, a.row_bytes, n0, nv, a.K, kpad, bp);
    for (int64_t m0 = 0; m0 < mcur; m0 += kMB) {
      const int64_t mv = std::min(kMB, mcur - m0);
      amx_block(xa + m0 * kpad, kpad, bp, mv, nv, a.bias ? a.bias + n0 : nullptr, Y + m0 * a.ldy + n0, a.ldy,
                ctmp);
    }
  }
  amx_release();
}

}  // namespace

bool gemm_amx(const Args& a) {
  if (a.wtype != DType::BF16 || a.M < 16) return false;
  const int64_t kpad = (a.K + kKT - 1) / kKT * kKT;
  // X chunk: rows (padded to 32) x kpad bf16, at most ~8 MiB.
  int64_t mc = std::max<int64_t>(kMB, ((int64_t(8) << 20) / (kpad * 2)) / kMB * kMB);
  for (int64_t m0 = 0; m0 < a.M; m0 += mc) {
    const int64_t mcur = std::min(mc, a.M - m0);
    const int64_t mpad = (mcur + kMB - 1) / kMB * kMB;
    uint16_t* xa = static_cast<uint16_t*>(scratch(2, size_t(mpad) * kpad * 2));
    run_parallel(a.pool, mcur * a.K >= (1 << 14), [&](int ith, int nth) {
      int64_t r0, r1;
      split_range(mpad, ith, nth, kMB, &r0, &r1);
      if (r1 > r0)
        pack_x(a.X + (m0 + r0) * a.ldx, a.ldx, std::max<int64_t>(0, std::min(mcur, r1) - r0), r1 - r0, a.K, kpad,
               xa + r0 * kpad);
    });
    float* Y = a.Y + m0 * a.ldy;
    run_parallel(a.pool, true, [&](int ith, int nth) {
      int64_t n0, n1;
      split_range(a.N, ith, nth, kNB, &n0, &n1);
      if (n1 > n0) amx_range(a, xa, kpad, mcur, Y, n0, n1);
    });
  }
  return true;
}

}  // namespace gemm_detail
}  // namespace emollm

#endif  // __x86_64__
