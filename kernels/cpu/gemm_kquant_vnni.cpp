// Q4_K / Q5_K / Q6_K weights at large M (prefill) on AVX-512 VNNI integer dot products.
//
//   Y[M,N] = X[M,K] * W[N,K]^T (+ bias), M > kSmallM, QuantActivations::Q8
//
// X is rounded to q8_0 once per call (qx_quantize_row_avx2: the rounding of the small-M path,
// of gemm_q8_vnni.cpp and of ggml's quantize_row_q8_0): x[m,k] = dx[m,b] * q[m,k] per 32-element
// block b. A K-quant super-block is 8 sub-blocks of 32 that line up with those blocks, so
//   q4_K / q5_K (w = A_j * u - M_j; A_j = d * sc_j, M_j = dmin * m_j, sub-block j = block b):
//     y += dx * A_j * P  +  B_j * (dx * S)                 P = sum_b u q,  S = sum_b q,  B_j = -M_j
//   q6_K (w = A_h * (u - 32) per 16-element half h; A_h = d * scales[h]):
//     y += dx * A_h0 * (P_h0 - 32 S_h0)  +  dx * A_h1 * (P_h1 - 32 S_h1)
// P and P - 32 S are exact int32 (vpdpbusd; |P| <= 32 * 63 * 127), dx * S is exact in f32
// (11-bit fp16 scale times |S| <= 4064), so the only roundings are f32 ones: the scale product
// A * dx, and one fused multiply-add per term into the f32 accumulators (summed over the k
// blocks in order, then added to Y once per KCB-block). Error against the float64 sum of the
// same terms, per output: <= (2 * K / 32 + 4) * 2^-24 * sum over terms of |term| (standard
// recursive-summation bound; test quant_ext_kquant_vnni_per_block_bound checks it).
// ggml instead rounds X to q8_K (one f32 scale per 256, bsums for the mins); q8_0's scale per
// 32 is finer and is what every other quantised path here uses, so q4_K and q4_0 prefill and
// decode all see the same X.
//
// Layout, as in gemm_q8_vnni.cpp (the driver, gemm_vnni_packed_driver.h, is shared with it):
//   X panels (MR rows, packed once per call; gemm_q8_xpanel.h, Q8XTail::PerHalf): per 32-element
//     block, 8 "quads" x MR dwords (the 4 int8 values x_q[m, 4q..4q+3]), then MR int32
//     -32 * S_h0, MR int32 -32 * S_h1, MR f32 dx, MR f32 dx * S (q6_K needs a correction per
//     16-element half, q4_K / q5_K the f32 dx * S).
//   W panels (NR = 16 * NV weight rows, packed per KCB blocks x NC rows into L2): per block,
//     8 quads x NV zmm (16 rows x 4 code bytes: one int32 lane per weight row), then NV zmm of
//     s0, NV zmm of s1: q4_K / q5_K: s0 = A_j, s1 = B_j; q6_K: s0 = A_h0, s1 = A_h1.
#include "gemm_kquant_vnni.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "../../base/error.h"
#include "../../base/quant_formats.h"

#if defined(__x86_64__)
#include <immintrin.h>

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>

#include "../../base/thread_pool.h"
#include "gemm_q8_xpanel.h"
#include "gemm_tile_store_avx512.h"
#include "gemm_transpose_avx512.h"
#include "gemm_vnni_packed_driver.h"
#include "gemm_vnni_quads_avx512.h"
#include "kquant_records.h"

namespace emollm {
namespace gemm_detail {
namespace {

#define EMO_TV EMOLLM_TARGET_AVX512_VNNI

constexpr int MR = 6;                     // X rows per microkernel
constexpr int NV = 2;                     // zmm columns (16 weight rows each) per microkernel
constexpr int NR = 16 * NV;               // weight rows per panel
constexpr int64_t KCB = 32;               // k blocks (of 32) per L2 block: 4 super-blocks
constexpr int64_t NC = 512;               // weight rows per L2 block: 512 x (1024 + 256) B
using XPanels = Q8XPanels<MR, Q8XTail::PerHalf>;  // X panels (gemm_q8_xpanel.h)
constexpr int64_t XBLK = XPanels::kBlockDwords;
constexpr int64_t WBLK = 10 * NV * 16;    // dwords per W panel block: 8 quads, s0, s1
static_assert(KCB % 8 == 0, "k blocks must hold whole super-blocks");

// ---------------------------------------------------------------- W panels

// Packs W rows [n0, n0+nv) x super-blocks [s0, s0+ns) into panels of NR rows (layout in the
// header comment; kb = 8 * ns blocks per panel). Rows past nv are zero (codes and scales).
// Row r (0..15) of group gi of a record of layout L (kquant_records.h) decoded as
// kquant_decode_avx2 decodes the GGUF super-block it came from: the same codes, and A / B from
// the same fp16 d / dmin and 6-bit (q4_K) or int8 (q6_K) scales by the same f32 products, so the
// panels are bit for bit the same.
template <DType DT>
EMO_TV void decode_record_row(const KqLayout& L, const uint8_t* rec, int gi, int r, KquantDecoded* o) {
  kquant_record_codes(DT, L.G, rec, kKqRows * gi + r, o->u);
  if constexpr (DT == DType::Q6_K) {
    float d;
    std::memcpy(&d, rec + L.d(gi) + 4 * r, 4);
    for (int h = 0; h < 16; ++h) {
      o->A[h] = d * int8_t(rec[L.sc(gi, h) + r]);
      o->B[h] = 0.0f;
    }
  } else {
    uint16_t dh, mh;
    std::memcpy(&dh, rec + L.d(gi) + 2 * r, 2);
    std::memcpy(&mh, rec + L.dmin(gi) + 2 * r, 2);
    const float d = _cvtsh_ss(dh), dmin = _cvtsh_ss(mh);
    for (int j = 0; j < 8; ++j) {
      const uint8_t s = rec[L.sc(gi, j) + r], m = rec[L.mn(gi, j) + r];
      o->A[2 * j] = o->A[2 * j + 1] = d * s;
      o->B[2 * j] = o->B[2 * j + 1] = -(dmin * m);
    }
  }
}

// Records: W = the records, rb = bytes of one super-group (KqLayout::sg_bytes, the layout of
// kquant_record_groups()); else the GGUF rows of rb bytes.
template <DType DT, bool Records = false>
EMO_TV void pack_w(const uint8_t* W, size_t rb, int64_t n0, int64_t nv, int64_t s0, int64_t ns, int32_t* out) {
  constexpr bool q6 = DT == DType::Q6_K;
  const size_t gb = dtype_block_bytes(DT);
  const int64_t kb = 8 * ns;
  KquantDecoded dec[16];
  const KqLayout L{q6, kquant_record_groups(), 0};
  for (int64_t pnl = 0; pnl * NR < nv; ++pnl) {
    int32_t* op = out + pnl * kb * WBLK;
    for (int g = 0; g < NV; ++g) {
      const int64_t r0 = pnl * NR + 16 * g;
      const int rows = int(std::max<int64_t>(0, std::min<int64_t>(16, nv - r0)));
      for (int64_t s = 0; s < ns; ++s) {
        for (int t = 0; t < rows; ++t) {
          const int64_t n = n0 + r0 + t;
          if constexpr (Records)
            decode_record_row<DT>(L, W + size_t(n / (kKqRows * L.G)) * rb + size_t(s0 + s) * L.rec(),
                                  int(n / kKqRows % L.G), int(n % kKqRows), &dec[t]);
          else
            kquant_decode_avx2(DT, W + size_t(n) * rb + size_t(s0 + s) * gb, &dec[t]);
        }
        for (int t = rows; t < 16; ++t) std::memset(&dec[t], 0, sizeof(KquantDecoded));
        // per block j of the super-block: the two scales of each of the 16 rows
        for (int j = 0; j < 8; ++j) {
          alignas(64) float sa[16], sb[16];
          for (int t = 0; t < 16; ++t) {
            sa[t] = dec[t].A[2 * j];
            sb[t] = q6 ? dec[t].A[2 * j + 1] : dec[t].B[2 * j];
          }
          int32_t* ob = op + (8 * s + j) * WBLK;
          _mm512_store_ps(reinterpret_cast<float*>(ob + 8 * NV * 16 + g * 16), _mm512_load_ps(sa));
          _mm512_store_ps(reinterpret_cast<float*>(ob + 9 * NV * 16 + g * 16), _mm512_load_ps(sb));
        }
        // codes: 64 bytes (blocks 2pr, 2pr+1) of each row, transposed to dword-per-row lanes
        for (int pr = 0; pr < 4; ++pr) {
          __m512 v[16];
#pragma GCC unroll 16
          for (int t = 0; t < 16; ++t) v[t] = _mm512_load_ps(reinterpret_cast<const float*>(dec[t].u + 64 * pr));
          transpose16_ps(v);  // v[q] lane t: dword q of row t (q < 8: block 2pr, else 2pr+1)
          int32_t* ob = op + (8 * s + 2 * pr) * WBLK;
#pragma GCC unroll 8
          for (int q = 0; q < 8; ++q) {
            _mm512_store_ps(reinterpret_cast<float*>(ob + (q * NV + g) * 16), v[q]);
            _mm512_store_ps(reinterpret_cast<float*>(ob + WBLK + (q * NV + g) * 16), v[8 + q]);
          }
        }
      }
    }
  }
}

// The records' rows [n0, n0 + nv), n0 a multiple of 16 (gstride: bytes of a super-group), into the same panels as pack_w: the
// records already hold a quad of 16 rows per zmm (kquant_records.h), so no decode, no transpose:
// per quad a mask (and a shift, and for q6_K an or of the high bits: kq_codes), per block the two scale
// vectors by the same f32 products as decode_record_row (d * sc, -(dmin * m); d * sc_h).
// Rows past nv in a group are zeroed, as pack_w's.
template <DType DT>
EMO_TV void pack_w_records(const uint8_t* W, size_t gstride, int64_t n0, int64_t nv, int64_t s0, int64_t ns,
                           int32_t* out) {
  constexpr bool q6 = DT == DType::Q6_K;
  const KqLayout L{q6, kquant_record_groups(), 0};
  const size_t rec = L.rec();
  const int64_t kb = 8 * ns;
  const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32(int(0x80000000u)));
  for (int64_t pnl = 0; pnl * NR < nv; ++pnl) {
    int32_t* op = out + pnl * kb * WBLK;
    for (int g = 0; g < NV; ++g) {
      const int64_t r0 = pnl * NR + 16 * g;
      const int rows = int(std::max<int64_t>(0, std::min<int64_t>(16, nv - r0)));
      const __mmask16 km = rows >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << rows) - 1);
      const int64_t grp = (n0 + r0) / kKqRows;
      const int gi = int(grp % L.G);
      const uint8_t* gp = rows > 0 ? W + size_t(grp / L.G) * gstride : nullptr;
      for (int64_t s = 0; s < ns; ++s) {
        const uint8_t* p = gp ? gp + size_t(s0 + s) * rec : nullptr;
        __m512 d = _mm512_setzero_ps(), dm = _mm512_setzero_ps();
        if (p) {
          if constexpr (q6) {
            d = _mm512_maskz_loadu_ps(km, p + L.d(gi));
          } else {
            d = _mm512_maskz_mov_ps(km, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + L.d(gi)))));
            dm = _mm512_maskz_mov_ps(km, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + L.dmin(gi)))));
          }
        }
        for (int j = 0; j < 8; ++j) {
          int32_t* ob = op + (8 * s + j) * WBLK;
          __m512 sa = _mm512_setzero_ps(), sb = _mm512_setzero_ps();
          __m512i lo[4], hi[4];
          if (p) {
            auto bytes16 = [&](size_t off) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + off)); };
            if constexpr (q6) {
              sa = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes16(L.sc(gi, 2 * j)))));
              sb = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes16(L.sc(gi, 2 * j + 1)))));
            } else {
              sa = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes16(L.sc(gi, j)))));
              sb = _mm512_xor_ps(_mm512_mul_ps(dm, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes16(L.mn(gi, j))))),
                                 sign);
            }
            // the sub-block's lines (rows past nv zeroed), unpacked as the decode passes do (kq_codes)
            const uint8_t* cl = p + L.codes(gi, j);
            __m512i v[6];
            for (int i = 0; i < kKqLines<q6>; ++i) v[i] = _mm512_maskz_mov_epi32(km, _mm512_loadu_si512(cl + 64 * i));
            kq_codes<q6>(v, lo, hi);
          } else {
            for (int i = 0; i < 4; ++i) lo[i] = hi[i] = _mm512_setzero_si512();
          }
          for (int i = 0; i < 4; ++i) {
            _mm512_store_si512(ob + (i * NV + g) * 16, lo[i]);
            _mm512_store_si512(ob + ((4 + i) * NV + g) * 16, hi[i]);
          }
          _mm512_store_ps(reinterpret_cast<float*>(ob + 8 * NV * 16 + g * 16), _mm512_maskz_mov_ps(km, sa));
          _mm512_store_ps(reinterpret_cast<float*>(ob + 9 * NV * 16 + g * 16), _mm512_maskz_mov_ps(km, sb));
        }
      }
    }
  }
}

// ---------------------------------------------------------------- microkernel

// MR x NR over kb blocks: Y[i, 0:nr] (=|+=) the sum of the block terms (header), i < mr.
template <bool Q6>
EMO_TV void kern_kq(int64_t kb, const int32_t* xp, const int32_t* wp, float* y, int64_t ldy, int mr, int64_t nr,
                    const float* bias, bool first) {
  __m512 f[MR][NV];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) f[i][j] = _mm512_setzero_ps();
  for (int64_t b = 0; b < kb; ++b) {
    const int32_t* xb = xp + b * XBLK;
    const int32_t* wb = wp + b * WBLK;
    const float* dx = reinterpret_cast<const float*>(xb + 10 * MR);
    const float* s0 = reinterpret_cast<const float*>(wb + 8 * NV * 16);
    const float* s1 = reinterpret_cast<const float*>(wb + 9 * NV * 16);
    if constexpr (Q6) {
      // two halves of 16: int32 sums start from -32 * S_h, then 4 quads each
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        __m512i acc[MR][NV];
        vnni_block_dots<MR, NV>(acc, xb, wb, 4 * h, 4, xb + (8 + h) * MR);
        const float* sh = h ? s1 : s0;
#pragma GCC unroll 6
        for (int i = 0; i < MR; ++i) {
          const __m512 d = _mm512_set1_ps(dx[i]);
#pragma GCC unroll 4
          for (int j = 0; j < NV; ++j)
            f[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][j]), _mm512_mul_ps(_mm512_load_ps(sh + 16 * j), d),
                                      f[i][j]);
        }
      }
    } else {
      __m512i acc[MR][NV];
      vnni_block_dots<MR, NV>(acc, xb, wb, 0, 8, nullptr);
      const float* dxs = reinterpret_cast<const float*>(xb + 11 * MR);
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        const __m512 d = _mm512_set1_ps(dx[i]), ds = _mm512_set1_ps(dxs[i]);
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) {
          f[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[i][j]), _mm512_mul_ps(_mm512_load_ps(s0 + 16 * j), d),
                                    f[i][j]);
          f[i][j] = _mm512_fmadd_ps(_mm512_load_ps(s1 + 16 * j), ds, f[i][j]);
        }
      }
    }
  }
  store_tile_f32<MR, NV>(f, y, ldy, mr, nr, bias, first);
}

// The driver's kernel (gemm_vnni_packed_driver.h). Its L2 blocks of KCB k blocks hold whole
// super-blocks (KCB % 8 == 0, K % 256 == 0): blocks [b0, b0 + kb) are super-blocks [b0 / 8, (b0 + kb) / 8).
template <DType DT, bool Records = false>
struct KquantKernel {
  static constexpr int kMR = MR;
  static constexpr int64_t kNR = NR, kKCB = KCB, kNC = NC, kWBlk = WBLK;
  using XPanels = gemm_detail::XPanels;
  static void pack_w(const uint8_t* W, size_t rb, int64_t n0, int64_t nv, int64_t b0, int64_t kb, int32_t* out) {
    if constexpr (Records) {
      if (n0 % kKqRows == 0) return gemm_detail::pack_w_records<DT>(W, rb, n0, nv, b0 / 8, kb / 8, out);
    }
    gemm_detail::pack_w<DT, Records>(W, rb, n0, nv, b0 / 8, kb / 8, out);
  }
  static void kern(int64_t kb, const int32_t* xp, const int32_t* wp, float* y, int64_t ldy, int mr, int64_t nr,
                   const float* bias, bool first) {
    kern_kq<DT == DType::Q6_K>(kb, xp, wp, y, ldy, mr, nr, bias, first);
  }
};

}  // namespace

void gemm_kquant_packed_vnni_records(const Args& a) {
  switch (a.wtype) {
    case DType::Q4_K: return vnni_packed_gemm<KquantKernel<DType::Q4_K, true>>(a, 32);
    case DType::Q6_K: return vnni_packed_gemm<KquantKernel<DType::Q6_K, true>>(a, 32);
    default: break;
  }
  throw Error(ErrorCode::Internal, std::string("gemm_kquant_packed_vnni_records: no kernel for weight type ") +
                                       dtype_name(a.wtype));
}

void gemm_kquant_packed_vnni(const Args& a) {
  switch (a.wtype) {
    case DType::Q4_K: return vnni_packed_gemm<KquantKernel<DType::Q4_K>>(a, 32);
    case DType::Q5_K: return vnni_packed_gemm<KquantKernel<DType::Q5_K>>(a, 32);
    case DType::Q6_K: return vnni_packed_gemm<KquantKernel<DType::Q6_K>>(a, 32);
    default: break;
  }
  throw Error(ErrorCode::Internal, std::string("gemm_kquant_packed_vnni: no kernel for weight type ") + dtype_name(a.wtype));
}

}  // namespace gemm_detail
}  // namespace emollm

#endif  // __x86_64__
