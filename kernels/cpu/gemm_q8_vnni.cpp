// Q8_0 / Q4_0 weights at large M (prefill) on AVX-512 VNNI integer dot products.
//
//   Y[M,N] = X[M,K] * W[N,K]^T (+ bias), M > kSmallM, QuantActivations::Q8 (llama.cpp numerics)
//
// X is rounded to q8_0 once per call (qx_quantize_row_avx2: the rounding of the small-M path and
// of ggml's quantize_row_q8_0), so every output is a sum over 32-element blocks b of
//   d_w[n,b] * d_x[m,b] * sum_{k in b} w_q[n,k] * x_q[m,k]
// where the block sum is an exact int32 (vpdpbusd) and only the scaling and the sum over blocks
// round (f32). Layout, as in the f32 packed GEMM (gemm_avx512.cpp), cache-blocked:
//   X panels (MR rows, packed once per call; gemm_q8_xpanel.h, shared with gemm_repacked): per
//     block, 8 "quads" x MR dwords (the 4 int8 values
//     x_q[m, 4q..4q+3] of row m), then MR int32 corrections, then MR f32 scales d_x.
//   W panels (NR = 16*NV weight rows, packed per KCB blocks x NC rows into L2): per block,
//     8 quads x NV zmm (16 rows x 4 unsigned bytes: one int32 lane per weight row), then NV zmm of
//     f32 scales d_w. Weights are made unsigned for vpdpbusd (unsigned x signed bytes):
//       q4_0: the nibble n in 0..15 (value n - 8),      correction off = 8
//       q8_0: w ^ 0x80 = w + 128 (w in -128..127),      correction off = 128
//     so sum (w + off) x - off * sum x = sum w x, and off * sum x depends on the X row and block
//     only: the int32 accumulators start from -off * sum_{k in b} x_q[m,k] (the X panel's
//     correction) instead of zero. |lane| <= 32 * 255 * 127 + 128 * 32 * 127: exact in int32.
// Microkernel (MR x NR): per block 8 x MR x NV vpdpbusd (broadcast 4 bytes of X, 16 weight rows),
// then per accumulator one int32 -> f32 conversion and one FMA with d_w * d_x into the f32
// accumulators; each KCB-block's sums go to Y (stored, or added to what the previous k block left).
#include "../../base/error.h"
#include "gemm_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cstring>

#include "gemm_q8_xpanel.h"
#include "gemm_tile_store_avx512.h"
#include "gemm_transpose_avx512.h"
#include "gemm_vnni_packed_driver.h"
#include "gemm_vnni_quads_avx512.h"
#include "gemm_x86_common.h"

namespace emollm {
namespace gemm_detail {
namespace {

#define EMO_TV EMOLLM_TARGET_AVX512_VNNI

constexpr int MR = 6;                 // X rows per microkernel
constexpr int NV = 2;                 // zmm columns (16 weight rows each) per microkernel
constexpr int NR = 16 * NV;           // weight rows per panel
constexpr int64_t KCB = 32;           // k blocks (of 32) per L2 block: 1024 elements
constexpr int64_t NC = 512;           // weight rows per L2 block: 512 x 1024 B + scales = 576 KiB
using XPanels = Q8XPanels<MR>;        // X panels (gemm_q8_xpanel.h)
constexpr int64_t XBLK = XPanels::kBlockDwords;
constexpr int64_t WBLK = 8 * NV * 16 + NV * 16;  // dwords per W panel block: quads, then scales

// The 32 unsigned weight bytes of one or two blocks (elements 0..31 in order) of one row:
// lanes 0-7 = block b (dwords = quads 0..7), lanes 8-15 = block b+1 (zero when !two).
template <DType DT>
EMO_TV inline __m512i load_w_pair(const uint8_t* p, bool two) {
  if constexpr (DT == DType::Q4_0) {
    constexpr size_t BS = sizeof(BlockQ4_0);
    const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2));
    const __m128i q1 = two ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 + BS)) : _mm_setzero_si128();
    // 128-bit lanes [q0, q0, q1, q1], lanes 1 and 3 shifted right by 4: the nibbles in element order
    const __m512i v = _mm512_mask_broadcast_i32x4(_mm512_broadcast_i32x4(q0), __mmask16(0xFF00), q1);
    return _mm512_and_si512(_mm512_mask_srli_epi16(v, __mmask32(0xFF00FF00u), v, 4), _mm512_set1_epi8(0x0F));
  } else {
    constexpr size_t BS = sizeof(BlockQ8_0);
    const __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2)));
    const __m512i m80 = _mm512_set1_epi8(char(0x80));
    if (!two) return _mm512_maskz_xor_epi32(__mmask16(0x00FF), v, m80);
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 + BS));
    return _mm512_xor_si512(_mm512_inserti64x4(v, b1, 1), m80);
  }
}

// Packs W rows [n0, n0+nv) x blocks [b0, b0+kb) into panels of NR rows:
// out[(pnl*kb + b) * WBLK + (q*NV + g)*16 + j] = bytes 4q..4q+3 of row n0 + pnl*NR + 16g + j,
// block b0+b (unsigned, see the header); then [.. + 8*NV*16 + g*16 + j] = its f32 scale.
// Rows past nv are zero (weights and scales).
template <DType DT>
EMO_TV void pack_w_q8(const uint8_t* W, size_t rb, int64_t n0, int64_t nv, int64_t b0, int64_t kb, int32_t* out) {
  constexpr size_t BS = DT == DType::Q8_0 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
  alignas(64) uint16_t h[2][16];
  for (int64_t pnl = 0; pnl * NR < nv; ++pnl) {
    int32_t* op = out + pnl * kb * WBLK;
    for (int g = 0; g < NV; ++g) {
      const int64_t r0 = pnl * NR + 16 * g;
      for (int64_t b = 0; b < kb; b += 2) {
        const bool two = b + 1 < kb;
        __m512 v[16];
#pragma GCC unroll 16
        for (int t = 0; t < 16; ++t) {
          if (r0 + t < nv) {
            const uint8_t* p = W + size_t(n0 + r0 + t) * rb + size_t(b0 + b) * BS;
            v[t] = _mm512_castsi512_ps(load_w_pair<DT>(p, two));
            h[0][t] = rd16(p);
            h[1][t] = two ? rd16(p + BS) : uint16_t(0);
          } else {
            v[t] = _mm512_setzero_ps();
            h[0][t] = h[1][t] = 0;
          }
        }
        transpose16_ps(v);  // v[q] lane j: dword q of row j (q < 8: block b, else block b+1)
        int32_t* ob = op + b * WBLK;
#pragma GCC unroll 8
        for (int q = 0; q < 8; ++q) _mm512_store_ps(reinterpret_cast<float*>(ob + (q * NV + g) * 16), v[q]);
        _mm512_store_ps(reinterpret_cast<float*>(ob + 8 * NV * 16 + g * 16),
                        _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(h[0]))));
        if (two) {
          ob += WBLK;
#pragma GCC unroll 8
          for (int q = 0; q < 8; ++q)
            _mm512_store_ps(reinterpret_cast<float*>(ob + (q * NV + g) * 16), v[8 + q]);
          _mm512_store_ps(reinterpret_cast<float*>(ob + 8 * NV * 16 + g * 16),
                          _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(h[1]))));
        }
      }
    }
  }
}

// MR x NR microkernel over kb blocks: Y[i, 0:nr] (=|+=) sum_b d_w d_x (int32 block dot), i < mr.
EMO_TV void kern_q8(int64_t kb, const int32_t* xp, const int32_t* wp, float* y, int64_t ldy, int mr, int64_t nr,
                    const float* bias, bool first) {
  __m512 f[MR][NV];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) f[i][j] = _mm512_setzero_ps();
  for (int64_t b = 0; b < kb; ++b) {
    const int32_t* xb = xp + b * XBLK;
    const int32_t* wb = wp + b * WBLK;
    __m512i acc[MR][NV];  // from the X panel's correction -off * sum x (header)
    vnni_block_dots<MR, NV>(acc, xb, wb, 0, 8, xb + 8 * MR);
    __m512 dw[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) dw[j] = _mm512_load_ps(reinterpret_cast<const float*>(wb + 8 * NV * 16 + j * 16));
    const float* dx = reinterpret_cast<const float*>(xb + 9 * MR);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m512 d = _mm512_set1_ps(dx[i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j)
        f[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][j]), _mm512_mul_ps(dw[j], d), f[i][j]);
    }
  }
  store_tile_f32<MR, NV>(f, y, ldy, mr, nr, bias, first);
}

// The driver's kernel (gemm_vnni_packed_driver.h).
template <DType DT>
struct Q8Kernel {
  static constexpr int kMR = MR;
  static constexpr int64_t kNR = NR, kKCB = KCB, kNC = NC, kWBlk = WBLK;
  using XPanels = gemm_detail::XPanels;
  static void pack_w(const uint8_t* W, size_t rb, int64_t n0, int64_t nv, int64_t b0, int64_t kb, int32_t* out) {
    pack_w_q8<DT>(W, rb, n0, nv, b0, kb, out);
  }
  static void kern(int64_t kb, const int32_t* xp, const int32_t* wp, float* y, int64_t ldy, int mr, int64_t nr,
                   const float* bias, bool first) {
    kern_q8(kb, xp, wp, y, ldy, mr, nr, bias, first);
  }
};

}  // namespace

void gemm_q8_packed_vnni(const Args& a) {
  switch (a.wtype) {
    case DType::Q8_0: return vnni_packed_gemm<Q8Kernel<DType::Q8_0>>(a, 128);
    case DType::Q4_0: return vnni_packed_gemm<Q8Kernel<DType::Q4_0>>(a, 8);
    default: break;
  }
  throw Error(ErrorCode::Internal, std::string("gemm_q8_packed_vnni: no kernel for weight type ") + dtype_name(a.wtype));
}

}  // namespace gemm_detail
}  // namespace emollm

#endif  // __x86_64__
