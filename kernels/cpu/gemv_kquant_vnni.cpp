// Decode-shaped products (M <= kSmallM) of q4_K / q5_K / q6_K weights on AVX-512 VNNI.
//
//   Y[M,N] = X[M,K] * W[N,K]^T (+ bias), W in its GGUF layout (256-element super-blocks)
//
// X comes rounded to q8_0 (gemm_quant_ext.cpp: qx_quantize_row_avx2, the rounding of every other
// quantised path, so prefill, decode and the q4_0 paths see the same X): x = dx_b * q per
// 32-element block b. Per super-block s of a weight row and 64-element chunk c (4 per super-block),
// the codes u are unpacked into one zmm in element order straight from the block's bytes (no
// stores: the previous kernel decoded each super-block into a byte buffer and 32 scale floats
// with scalar code, which cost more than the memory traffic), and one vpdpbusd against the 64
// activation bytes gives 16 exact int32 lane sums of 4 products:
//   q4_K / q5_K (w = A_j u - M_j; A_j = d sc_j, M_j = dmin m_j, sub-block j = lanes 8(j%2)..):
//     y += sum_lanes (A_j dx_b) * P_lane  -  sum_j M_j (dx_b S_b)        S_b = sum of block b's q
//   q6_K (w = A_h (u - 32); A_h = d scales[h], half h = lanes 4(h%4)..):
//     y += sum_lanes (A_h dx_b) * (P_lane - 32 S_lane)     (the -32 S_lane is q.neg, the
//                                                           accumulator vpdpbusd starts from)
// The 8 (16) scales of a super-block are unpacked with vector ops once, multiplied by the 8
// block scales dx_b (one f32 product each: d sc is exact, 11 x 8 bits) and spread over the lanes
// with one vpermps per chunk; the min terms use dx_b S_b (exact in f32: 11-bit scale times
// |S| <= 4064), made once per call, against the 8 M_j of the super-block (exact: 11 x 6 bits).
// Roundings: the scale products and one fused multiply-add per term into 16 f32 lanes (two
// accumulators at M = 1), then the lane sums; per output at most K/64 + K/256 + 12 roundings
// deep, inside the (2 K / 32 + 8) 2^-24 bound of gemm_kquant_vnni.cpp's header, which test
// kquant_gemv_vnni_per_block_bound checks against float64.
// ggml instead rounds X to q8_K (one f32 scale per 256) for these formats, which makes the
// scales integer multipliers; with q8_0's scale per 32 the per-32 f32 product stays, at one
// vpermps + vfmadd per 64 weights.
#include "gemv_kquant_vnni.h"

#include "../../base/env_switch.h"

#include <atomic>
#include <cstdlib>
#include <functional>
#include <cstring>
#include <string>

namespace emollm {
namespace gemm_detail {

// The M = 1 pass is the lean one (kq_records_sg_lean, below) for q4_K and q6_K; q6_K's with its
// prefetches spread over each sub-block step's groups (on since session 19; quiet model A/Bs
// against q6_K's previous pass, decode_switch_ab, 1.1B q6_K, separate processes: 1 thread (thread
// CPU time) 1.026 / 1.051 / 1.028, 2 threads 0.981 / 1.016 / 1.017 / 1.019 / 0.996). The spread
// belongs to this pass only: q4_K's lean pass spread was refuted (0.87-1.02x in the model,
// session 18). The previous M = 1 pass (kq_records_sg at MB = 1) and its switches
// EMOLLM_KQUANT_LEAN / EMOLLM_KQUANT_LEAN_Q6 went in session 22.
}  // namespace gemm_detail
}  // namespace emollm

#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "../../base/error.h"
#include "../../base/quant_formats.h"
#include "../../base/thread_pool.h"
#include "gemm_x86_common.h"
#include "kquant_records.h"
#include "simd_math.h"

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace emollm {
namespace gemm_detail {
namespace {

#define EMO_TK EMOLLM_TARGET_AVX512_VNNI

// Per-call data of the X rows beyond QX, per 32-element block b of row m (index m * ld + b):
// dx_b (the q8_0 scale as f32) and, for the formats with mins, dx_b * S_b.
struct XBlocks {
  const float* dx;
  const float* dxs;
  int64_t ld;
};

// q4_K / q5_K: the 8 scales and 8 mins of a super-block, times d and dmin:
// [d sc_0 .. d sc_7, dmin m_0 .. dmin m_7]. The 12 scale bytes hold sc_j, m_j (j < 4) in the low
// 6 bits of bytes j, j + 4; for j >= 4 their low 4 bits in byte j + 4 (low / high nibble) and
// their top 2 bits in the top bits of bytes j - 4 / j. Four bytes at a time as 32-bit words.
EMO_TK inline __m512 scales_mins_q45(const uint8_t* blk) {
  uint32_t w[3];
  std::memcpy(w, blk + 4, 12);
  const uint32_t s_lo = w[0] & 0x3F3F3F3Fu, m_lo = w[1] & 0x3F3F3F3Fu;
  const uint32_t s_hi = (w[2] & 0x0F0F0F0Fu) | (((w[0] >> 6) & 0x03030303u) << 4);
  const uint32_t m_hi = ((w[2] >> 4) & 0x0F0F0F0Fu) | (((w[1] >> 6) & 0x03030303u) << 4);
  const __m128i b = _mm_set_epi32(int(m_hi), int(m_lo), int(s_hi), int(s_lo));
  const __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
  const __m512 dd = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(_cvtsh_ss(rd16(blk)))),
                                       _mm256_set1_ps(_cvtsh_ss(rd16(blk + 2))), 1);
  return _mm512_mul_ps(v, dd);
}

// 256-bit halves: lo in the low half of a zmm, hi in the high half.
EMO_TK inline __m512i halves_epi16(short lo, short hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(lo)), _mm256_set1_epi16(hi), 1);
}
EMO_TK inline __m512i halves_epi8(char lo, char hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi8(lo)), _mm256_set1_epi8(hi), 1);
}

// Weight rows [n0, n1) against the MB rows of X.
template <DType T, int MB>
EMO_TK void kq_rows(const Args& a, const QX& q, const XBlocks& xb, int64_t n0, int64_t n1) {
  constexpr bool q6 = T == DType::Q6_K;
  constexpr bool q5 = T == DType::Q5_K;
  constexpr int NA = MB == 1 ? 2 : 1;  // accumulators per X row: two at M = 1 halve the add chain
  const size_t bb = dtype_block_bytes(T);
  const int64_t ns = a.K / kQKK;
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  // q4_K / q5_K: 32 code bytes broadcast to both halves; the high half takes the high nibbles
  const __m512i nibble_shift = halves_epi16(0, 4);
  // lane l of chunk c: sub-block 2c + l / 8 (q4_K / q5_K), half 4c + l / 4 (q6_K)
  const __m512i sub_of_lane = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i half_of_lane = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512i block_of_half = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  // q6_K: the 2 high bits of each code, moved to bits 4-5: from bits 0-1 / 2-3 (even chunks,
  // shifted left by 4 / 2) and bits 4-5 / 6-7 (odd chunks, right by 0 / 2) of the qh bytes
  const __m512i qh_shl_even = halves_epi16(4, 2), qh_shr_odd = halves_epi16(0, 2);
  const __m512i m30 = _mm512_set1_epi8(0x30);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = static_cast<const uint8_t*>(a.W) + size_t(n) * a.row_bytes;
    __m512 acc[MB][NA];
    __m256 accm[MB];
    for (int m = 0; m < MB; ++m) {
      for (int i = 0; i < NA; ++i) acc[m][i] = _mm512_setzero_ps();
      accm[m] = _mm256_setzero_ps();
    }
    for (int64_t s = 0; s < ns; ++s) {
      const uint8_t* blk = row + size_t(s) * bb;
      const int64_t b0 = 8 * s;  // first 32-element block of the super-block
      __m512 F[MB];              // per sub-block (q4_K / q5_K) or half (q6_K): A * dx
      if constexpr (!q6) {
        const __m512 sm = scales_mins_q45(blk);
        const __m256 A = _mm512_castps512_ps256(sm), Mn = _mm512_extractf32x8_ps(sm, 1);
        for (int m = 0; m < MB; ++m) {
          F[m] = _mm512_castps256_ps512(_mm256_mul_ps(A, _mm256_loadu_ps(xb.dx + m * xb.ld + b0)));
          accm[m] = _mm256_fmadd_ps(Mn, _mm256_loadu_ps(xb.dxs + m * xb.ld + b0), accm[m]);
        }
        const uint8_t* qs = blk + (q5 ? 48 : 16);
        __m512i qh = _mm512_setzero_si512();
        if constexpr (q5) qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16)));
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) {
          // bytes 0-31: low nibbles of qs[32c..] = elements 64c + l; bytes 32-63: high nibbles = 64c + 32 + l
          const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c)));
          __m512i u = _mm512_and_si512(_mm512_srlv_epi16(v, nibble_shift), m4);
          if constexpr (q5) {  // fifth bit: bit 2c (elements 64c + l) / 2c + 1 (64c + 32 + l) of qh[l]
            const __m512i sel = halves_epi8(char(1 << (2 * c)), char(1 << (2 * c + 1)));
            u = _mm512_mask_add_epi8(u, _mm512_test_epi8_mask(qh, sel), u, _mm512_set1_epi8(16));
          }
          const __m512i idx = _mm512_add_epi32(sub_of_lane, _mm512_set1_epi32(2 * c));
          for (int m = 0; m < MB; ++m) {
            const __m512i x = _mm512_loadu_si512(q.qs + m * q.ldq + 256 * s + 64 * c);
            const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, x);
            acc[m][c % NA] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(idx, F[m]), acc[m][c % NA]);
          }
        }
      } else {
        const __m512 A = _mm512_mul_ps(
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192)))),
            _mm512_set1_ps(_cvtsh_ss(rd16(blk + 208))));
        for (int m = 0; m < MB; ++m)
          F[m] = _mm512_mul_ps(A, _mm512_permutexvar_ps(block_of_half,
                                                        _mm512_castps256_ps512(_mm256_loadu_ps(xb.dx + m * xb.ld + b0))));
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
          // elements 128h + 0..63 (chunk 2h): low nibbles of ql[64h..64h+63], qh[32h + l] bits 0-1 / 2-3;
          // elements 128h + 64..127 (chunk 2h + 1): their high nibbles, qh bits 4-5 / 6-7
          const __m512i L = _mm512_loadu_si512(blk + 64 * h);
          const __m512i H = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h)));
#pragma GCC unroll 2
          for (int odd = 0; odd < 2; ++odd) {
            const int c = 2 * h + odd;
            const __m512i lo = odd ? _mm512_and_si512(_mm512_srli_epi16(L, 4), m4) : _mm512_and_si512(L, m4);
            const __m512i hb = odd ? _mm512_srlv_epi16(H, qh_shr_odd) : _mm512_sllv_epi16(H, qh_shl_even);
            const __m512i u = _mm512_or_si512(lo, _mm512_and_si512(hb, m30));
            const __m512i idx = _mm512_add_epi32(half_of_lane, _mm512_set1_epi32(4 * c));
            for (int m = 0; m < MB; ++m) {
              const __m512i x = _mm512_loadu_si512(q.qs + m * q.ldq + 256 * s + 64 * c);
              const __m512i neg = _mm512_loadu_si512(q.neg + m * q.ldd + 64 * s + 16 * c);
              const __m512i p = _mm512_dpbusd_epi32(neg, u, x);
              acc[m][c % NA] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(idx, F[m]), acc[m][c % NA]);
            }
          }
        }
      }
    }
    for (int m = 0; m < MB; ++m) {
      __m512 t = acc[m][0];
      if constexpr (NA > 1) t = _mm512_add_ps(t, acc[m][1]);
      float v = _mm512_reduce_add_ps(t);
      if constexpr (!q6) {
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(accm[m]), _mm256_extractf128_ps(accm[m], 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        v -= _mm_cvtss_f32(h);
      }
      if (a.bias) v += a.bias[n];
      a.Y[m * a.ldy + n] = v;
    }
  }
}

// Per-call data of the M rows of q, per 32-element block b, into `out`: dx_b (M nb floats, index
// m * nb + b), then per XSums nothing (the GGUF q6_K rows), dx_b * S_b (M nb floats, exact: 11-bit
// scale times |S| <= 4064; XBlocks / XRec's dxs of q4_K / q5_K) or -32 S_h per 16-element half h
// (2 M nb int32, index m * 2 nb + 2 b + h; XRec's neg of the q6_K records). S = the block's sum of q.
enum class XSums { None, DxS, Neg32Halves };
EMO_TK void x_blocks(const QX& q, int64_t M, int64_t K, XSums sums, float* out) {
  const int64_t nb = K / kQK;
  const __m512i ones16 = _mm512_set1_epi16(1);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < nb; ++b) {
      const float dx = q.dxe[m * q.ldd + 8 * b];
      out[m * nb + b] = dx;
      if (sums == XSums::None) continue;
      const __m512i w = _mm512_madd_epi16(
          _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.qs + m * q.ldq + 32 * b))), ones16);
      if (sums == XSums::Neg32Halves) {  // w: 16 dwords of pair sums; halves: dwords 0-7, 8-15
        int32_t* neg = reinterpret_cast<int32_t*>(out + M * nb) + m * 2 * nb + 2 * b;
        neg[0] = -32 * _mm512_mask_reduce_add_epi32(0x00FF, w);
        neg[1] = -32 * _mm512_mask_reduce_add_epi32(0xFF00, w);
      } else {
        out[M * nb + m * nb + b] = dx * float(_mm512_reduce_add_epi32(w));
      }
    }
}

using RowsFn = void (*)(const Args&, const QX&, const XBlocks&, int64_t, int64_t);
template <DType T>
RowsFn pick_m(int64_t M) {
  switch (M) {
    case 1: return &kq_rows<T, 1>;
    case 2: return &kq_rows<T, 2>;
    case 3: return &kq_rows<T, 3>;
    case 4: return &kq_rows<T, 4>;
    case 5: return &kq_rows<T, 5>;
    case 6: return &kq_rows<T, 6>;
    case 7: return &kq_rows<T, 7>;
    default: return &kq_rows<T, 8>;
  }
}

// ---------------------------------------------------------------- the records (kquant_records.h)
//
// Per group of 16 rows of a record (one super-block) and 32-element sub-block j, per X row: two int32 chains
// of 4 vpdpbusd (quads 0-3 from the low nibbles, 4-7 from the high ones; activation bytes
// broadcast from memory) give P_r, the exact sub-block sums of the 16 rows, one per lane; then
//   q4_K: aA += float(sc_j * P) * dx_j       aM += float(m_j) * (dx_j S_j)    (per lane = row)
//         and per super-block y += d * aA - dmin * aM
//   q6_K: P_h starts from -32 S_h (the code offset; one per 16-element half h = 2j, 2j + 1),
//         aA += float(sc_2j P_2j + sc_2j+1 P_2j+1) * dx_j, per super-block y += d * aA
// sc * P is exact in int32 and in the f32 conversion (q4_K |sc P| <= 63 * 32 * 15 * 127, q6_K
// |sc_2j P_2j + sc_2j+1 P_2j+1| <= 2 * 128 * 16 * 32 * 127 < 2^24), so the roundings are one
// per fused multiply-add: 8 (16 with the mins) per super-block into aA / aM, then 1-2 into y: per
// output at most K / 32 + 2 K / 256 + 1 deep, inside this file's (2 K / 32 + 8) 2^-24 bound.
// A different f32 order from kq_rows (lane sums per row there): not bit-equal to it.
// No horizontal sums, no permutes, scales one vpmovzx per 16 rows. (The 16-row records, G = 1,
// and their own kernel are gone: 64-row records were 1.1-1.6x faster on q4_K (session 15) and
// 0.92-1.33x, mostly >= 1.1x, on q6_K (session 16, bench_kernels).)

// Per-call X data for the records: per X row m and sub-block b (index m * nb + b) dx_b, and
// q4_K: dx_b * S_b (f32, exact) / q6_K: -32 S_h per half (int32, index m * 2 nb + h).
struct XRec {
  const int8_t* qs;
  int64_t ldq;
  const float* dx;
  const float* dxs;
  const int32_t* neg;
  int64_t nb;
};

EMO_TK inline __m512i bcast32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// ---------------------------------------------------------------- records of G = 2 or 4 groups (32 or 64 rows)
//
// Per group of 16 rows the arithmetic above, step for step (the same int32 chains, the same fused
// multiply-adds into aA / aM over the sub-blocks in order, the same update of y per super-block):
// every output is bit for bit the same for 32 and 64-row records (and the 16-row ones this
// replaced); only the order in which the groups' independent chains are interleaved differs. At M = 1 a sub-block is done for
// the G groups of a record together, against one set of activation broadcasts (the q4_0
// records' pass of 4 groups, gemv_repacked.cpp groups_avx512): 16 G code lines read in a row,
// 8 broadcasts per 4 G lines instead of per 4. At M > 1 (MB G accumulators would not fit the
// registers) the groups of a record go one after the other, their y kept in memory between
// super-blocks.

// One group's sub-block j of a record: the codes unpacked to lo (quads 0-3) / hi (4-7) and the
// scales.
template <bool Q6>
struct KqSub {
  __m512i lo[4], hi[4];
  __m512i sc0, sc1;  // q4_K: sc0 = the sub-block's scales; q6_K: halves 2j, 2j + 1
  __m512 mn;         // q4_K: the mins
};

template <bool Q6, int G>
__attribute__((always_inline)) EMO_TK inline void kq_load_sub(const uint8_t* p, int gi, int j, KqSub<Q6>& b) {
  const KqLayout L{Q6, G, 0};
  const uint8_t* cl = p + L.codes(gi, j);
  __m512i v[6];
#pragma GCC unroll 6
  for (int i = 0; i < kKqLines<Q6>; ++i) v[i] = _mm512_load_si512(cl + 64 * i);
  kq_codes<Q6>(v, b.lo, b.hi);
  auto bytes16 = [&](size_t off) { return _mm_load_si128(reinterpret_cast<const __m128i*>(p + off)); };
  if constexpr (Q6) {
    b.sc0 = _mm512_cvtepi8_epi32(bytes16(L.sc(gi, 2 * j)));
    b.sc1 = _mm512_cvtepi8_epi32(bytes16(L.sc(gi, 2 * j + 1)));
  } else {
    b.sc0 = _mm512_cvtepu8_epi32(bytes16(L.sc(gi, j)));
    b.mn = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes16(L.mn(gi, j))));
  }
}

// The 8 activation broadcasts of X row m's sub-block j of super-block s (x[0..3]: bytes 4i..,
// x[4..7]: 16 + 4i..).
__attribute__((always_inline)) EMO_TK inline void kq_load_x(const XRec& xr, int m, int64_t s, int j, __m512i (&x)[8]) {
  const int8_t* xp = xr.qs + m * xr.ldq + 256 * s + 32 * j;
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) x[i] = bcast32(xp + 4 * i), x[4 + i] = bcast32(xp + 16 + 4 * i);
}

// The per-group step (above) for one group's sub-block against X row m.
template <bool Q6>
__attribute__((always_inline)) EMO_TK inline void kq_dot_sub(const KqSub<Q6>& b, const __m512i (&x)[8], const XRec& xr,
                                                             int m, int64_t s, int j, __m512& aA, __m512& aM) {
  const int64_t bi = m * xr.nb + 8 * s + j;
  __m512i P0, P1;
  if constexpr (Q6) {
    const int32_t* ng = xr.neg + m * 2 * xr.nb + 16 * s + 2 * j;
    P0 = _mm512_set1_epi32(ng[0]), P1 = _mm512_set1_epi32(ng[1]);
  } else {
    P0 = P1 = _mm512_setzero_si512();
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    P0 = _mm512_dpbusd_epi32(P0, b.lo[i], x[i]);
    P1 = _mm512_dpbusd_epi32(P1, b.hi[i], x[4 + i]);
  }
  if constexpr (Q6) {
    const __m512i t = _mm512_add_epi32(_mm512_mullo_epi32(P0, b.sc0), _mm512_mullo_epi32(P1, b.sc1));
    aA = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_set1_ps(xr.dx[bi]), aA);
  } else {
    const __m512i t = _mm512_mullo_epi32(_mm512_add_epi32(P0, P1), b.sc0);
    aA = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_set1_ps(xr.dx[bi]), aA);
    aM = _mm512_fmadd_ps(b.mn, _mm512_set1_ps(xr.dxs[bi]), aM);
  }
}

// The update of y at the end of a super-block (above), group gi.
template <bool Q6, int G>
__attribute__((always_inline)) EMO_TK inline __m512 kq_y_update(const uint8_t* p, int gi, __m512 y, __m512 aA, __m512 aM) {
  const KqLayout L{Q6, G, 0};
  if constexpr (Q6) {
    return _mm512_fmadd_ps(_mm512_load_ps(reinterpret_cast<const float*>(p + L.d(gi))), aA, y);
  } else {
    const __m512 d = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(p + L.d(gi))));
    const __m512 dm = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(p + L.dmin(gi))));
    return _mm512_fnmadd_ps(dm, aM, _mm512_fmadd_ps(d, aA, y));
  }
}

// The MB X rows' outputs of the group of 16 rows from n0 (y[m]: row m's 16 sums), plus the bias,
// into Y (row m at Y + m * ldy); the rows past N are not written. False if the group starts at or
// past N (a padded super-group's last groups).
template <int MB>
__attribute__((always_inline)) EMO_TK inline bool kq_store_group(const __m512* y, const float* bias, float* Y, int64_t ldy,
                                                                  int64_t N, int64_t n0) {
  if (n0 >= N) return false;
  const __mmask16 k = n0 + kKqRows <= N ? __mmask16(0xFFFF) : __mmask16((1u << (N - n0)) - 1);
  const __m512 bv = bias ? _mm512_maskz_loadu_ps(k, bias + n0) : _mm512_setzero_ps();
  for (int m = 0; m < MB; ++m) _mm512_mask_storeu_ps(Y + m * ldy + n0, k, _mm512_add_ps(y[m], bv));
  return true;
}

// Bytes ahead along a super-group's stream that the G > 1 kernel prefetches: 8 KiB, about the
// q4_0 records' 9 KiB (4 and 16 KiB were not better, 2026-12-05 14:19; the tuning knob
// EMOLLM_KQ_SG_PREFETCH went in session 22).
constexpr int64_t sg_prefetch() { return 8192; }

// Part `part` of `parts` of sub-block step j's slice of a record's Lines lines, pf bytes ahead of
// the record at p: of the step's lines [l0, l1) = [Lines j / 8, Lines (j + 1) / 8), those from
// l0 + (l1 - l0) part / parts to l0 + (l1 - l0) (part + 1) / parts, issued from a loop (a
// straight-line burst of them acts as no prefetch on this Zen 5: q40_read_patterns). Part 0 of 1
// is the whole slice at the step's top (q4_K's lean pass; kq_records_sg keeps the same loop in its
// lambda, see there); parts 0..G-1 of G, each before group gi's loads, the spread form of q6_K's
// lean pass. A function, not a lambda: written
// as a lambda in kq_records_sg, GCC 12 emitted none of the spread form's prefetches (objdump; that
// build ran q6_K without software prefetch, 0.58-0.76x in bench_kernels, 0.74x in the model).
template <int Lines>
__attribute__((always_inline)) EMO_TK inline void kq_prefetch_step(const uint8_t* p, int64_t pf, int j, int part, int parts) {
  const char* a = reinterpret_cast<const char*>(p + pf);
  const int l0 = Lines * j / 8, l1 = Lines * (j + 1) / 8;
#pragma GCC unroll 1
  for (int l = l0 + (l1 - l0) * part / parts; l < l0 + (l1 - l0) * (part + 1) / parts; ++l)
    _mm_prefetch(a + 64 * l, _MM_HINT_T0);
}

// Super-groups [q0, q1) (G groups of 16 rows each) against the MB rows of X. The stream is
// prefetched pf bytes ahead, the record's lines spread over its 8 sub-block steps (every line,
// scales included: the 16-row kernel prefetched the code lines only); `cold`: the range's first
// pf bytes are prefetched before starting (nothing earlier did).
template <DType T, int MB, int G>
EMO_TK void kq_records_sg(const uint8_t* Wr, int64_t ns, const XRec& xr, const float* bias, float* Y, int64_t ldy,
                          int64_t N, int64_t q0, int64_t q1, bool cold) {
  static_assert(MB >= 2, "M = 1: kq_records_sg_lean");
  constexpr bool q6 = T == DType::Q6_K;
  constexpr size_t rec = size_t(G) * (q6 ? kQ6KRecord : kQ4KRecord);
  constexpr int lines = int(rec / 64);
  const int64_t pf = sg_prefetch();
  const size_t sgb = size_t(ns) * rec;
  if (cold && pf > 0)
    for (int64_t o = 0; o < pf; o += 64) _mm_prefetch(reinterpret_cast<const char*>(Wr + size_t(q0) * sgb + size_t(o)), _MM_HINT_T0);
  for (int64_t q = q0; q < q1; ++q) {
    const uint8_t* p = Wr + size_t(q) * sgb;
    __m512 y[G][MB];
#pragma GCC unroll 4
    for (int gi = 0; gi < G; ++gi)
      for (int m = 0; m < MB; ++m) y[gi][m] = _mm512_setzero_ps();
    for (int64_t s = 0; s < ns; ++s, p += rec) {
      // the step's slice at its top (kq_prefetch_step's part 0 of 1; as a lambda this pass compiles
      // to the instructions measured before the spread form existed, with the helper it did not)
      auto prefetch_step = [&](int j) {
        if (pf <= 0) return;
        const char* a = reinterpret_cast<const char*>(p + pf);
        for (int l = lines * j / 8; l < lines * (j + 1) / 8; ++l) _mm_prefetch(a + 64 * l, _MM_HINT_T0);
      };
      for (int gi = 0; gi < G; ++gi) {
        __m512 aA[MB], aM[MB];
        for (int m = 0; m < MB; ++m) aA[m] = aM[m] = _mm512_setzero_ps();
        for (int j = 0; j < 8; ++j) {
          if (gi == 0) prefetch_step(j);
          KqSub<q6> b;
          kq_load_sub<q6, G>(p, gi, j, b);
          for (int m = 0; m < MB; ++m) {
            __m512i x[8];
            kq_load_x(xr, m, s, j, x);
            kq_dot_sub<q6>(b, x, xr, m, s, j, aA[m], aM[m]);
          }
        }
        for (int m = 0; m < MB; ++m) y[gi][m] = kq_y_update<q6, G>(p, gi, y[gi][m], aA[m], aM[m]);
      }
    }
    for (int gi = 0; gi < G; ++gi)
      if (!kq_store_group<MB>(y[gi], bias, Y, ldy, N, (q * G + gi) * kKqRows)) break;
  }
}

// ---------------------------------------------------------------- the lean M = 1 pass (default)
//
// The previous M = 1 pass (kq_records_sg at MB = 1, gone with EMOLLM_KQUANT_LEAN in session 22)
// with less work per 64-byte line, the same integers and the same f32 operations in the same
// order (so the same bits; a row's bits are those of the M >= 2 passes, test_kquant_records). The previous pass, measured with the records in L2 at 1
// thread, ran ~3 cycles a line (~63 GB/s), close to the ~4.4 a line of memory at one core's
// ~44 GB/s, so compute and memory did not overlap enough. Per line it did 2 loads of the same
// 64 bytes (GCC folded the load into both the mask and the shift), and, mask, shift, mask, 2
// vpdpbusd, and a prefetch from a loop whose bounds were computed per sub-block. Now:
//  - q4_K: one load per code line (an empty asm keeps GCC from folding it into both users);
//  - q4_K: the high nibbles stay in place, v & 0xF0 = 16 x the nibble (one logic op, no shift),
//    their chain's int32 sum is then an exact multiple of 16 (|sum| <= 16 * 15 * 128 * 16 < 2^31)
//    and is shifted back once a sub-block: P0 + (P1' >> 4) is the previous P0 + P1 exactly (the
//    q4_0 records' trick, gemv_repacked.cpp groups_block); q6_K keeps the shift (its codes' bits
//    4-5 come from the high-bit lines);
//  - the prefetches as before (a slice of the record's lines a sub-block step, 8 KiB ahead): a
//    straight-line version (a fixed 27 lines a step) ran q6_K 0.87-0.90x cold, q4_K the same.
//  - the min terms (which do not depend on the codes) per group in sub-block order: the same
//    fused multiply-adds. Until session 26 after a record's codes (fewer registers live in the
//    code loop); since then, with one stream a thread, in each step after its group's codes, so
//    that the pass reads the records (laid out in read order, kquant_records.h) front to back.
// Measured (interleaved): q4_K cold 1.14-1.29x at 1 thread (thread CPU time, loaded), bench_kernels
// 1.02-1.29x at 1 and 2 threads, 1.07x on the model's q4_K GEMV CPU time; q6_K 0.92-1.00x, so
// q6_K stayed on the previous pass until session 19 (now lean with spread prefetches: above,
// the top of this file). (Session 16: q6_K's lines are
// now loaded once here too (the empty asm), and with the packed layout the lean pass read
// 1.04-1.09x the previous one cold in bench_kernels and 1.02-1.05x in decode_switch_ab, loaded:
// left opt-in for a quiet A/B.)
// Streams a thread's lean pass reads side by side (2, the default since session 20, or 1 through
// set_kquant_streams) and how far ahead along each it prefetches (bytes; with two streams 4 KiB
// until session 27, now q4_K 2 KiB (kq_stream_prefetch), sg_prefetch's 8 KiB with one; on the
// previous layout 2 KiB 0.93-1.12x, 8 KiB 0.97-1.09x of 4 KiB; the environment
// variables EMOLLM_KQ_STREAMS / EMOLLM_KQ_STREAM_PREFETCH went in session 22: h-kqreg found no
// q4_K regression to look for with them). Two streams are
// the q4_0 two-stream pass's form (gemv_repacked.cpp ms_q40_avx512): a range's super-groups cut
// into 2 contiguous parts read side by side (kq_lean_parts), each stream's prefetches running on
// into its next super-group. Measured (session 20, Zen 5, 1 thread, cold 2 MiB pages, thread CPU
// time, median of the per-round ratios over 60 interleaved rounds, load ~6; bench kq_streams_ab):
// q4_K 1.10-1.11x the one-stream pass at 4 KiB ahead (2 KiB 1.09-1.12x, 8 KiB 1.09x); q6_K
// 1.18-1.21x with one prefetch loop a stream at each step's top, 1.22-1.30x with the prefetches
// spread over the step's groups as its one-stream pass (so q6_K spreads them here too). Four
// streams: 0.97-1.02x (removed). Session 15's form walked 2 or 4 adjacent super-groups at a time,
// each batch starting cold: 0.80-0.92x the single stream. Session 25 on Zen 4 (double-pumped
// AVX-512, one shared L3; same method, load 10-14): one stream 1.5x two for q4_K (0.95-1.08x a
// plain 4-stream read, two streams 0.60-0.66x), 1.12x for q6_K; either without software prefetch
// 0.42-0.65x. So the stream count is chosen per CPU (decode_tuning.h): one there, two elsewhere.
using KqStreams = DecodeSetting<&DecodeTuning::kquant_streams>;  // 1 on double-pumped AVX-512 (decode_tuning.h)
int kq_streams() { return KqStreams::get(); }
// Session 26 (Zen 4, the same tool and method, load 8-10): the previous record layout (scales and
// mins at the front) was the cause: its loads alone, without arithmetic, read 0.6x a plain
// one-stream read (read-kq); with the records in read order (kquant_records.h) the one-stream
// pass without software prefetch reads 0.94-1.02x a plain one-stream read without it
// (read-1-nopf), 1.23-1.29x (q4_K) / 1.11-1.12x (q6_K) the same pass with T0 8 KiB ahead; on the
// previous layout T1, NTA and one prefetch a 128-byte pair read 0.45-1.0x T0 (those forms were
// not kept). So on Zen 4 no software prefetch (decode_tuning.h kquant_prefetch;
// set_kquant_stream_prefetch for A/Bs).
using KqPrefetch = DecodeSetting<&DecodeTuning::kquant_prefetch>;  // None on double-pumped AVX-512
std::atomic<int64_t>& kq_stream_prefetch_var() {  // -1: follow KqPrefetch
  static std::atomic<int64_t> v{-1};
  return v;
}
// Two streams' distance by type: q4_K 2 KiB, q6_K 4 KiB. Session 27 (Zen 5, the read-order
// records, kq_streams_ab, 1 thread, thread CPU time, 300-400 interleaved rounds, load 15-18; med
// r/rnd against the one-stream pass): q4_K 2 KiB 1.09-1.17x, 4 KiB 1.03-1.15x, ahead of 4 KiB in
// all 11 shape runs (by 0.3-6%, mean ~2.5%; 1 and 3 KiB as 2), 0.93-0.98x the 4-stream probe
// (read-4, T0 1 KiB) against 0.92-0.95x at 4 KiB; q6_K 4 KiB best (3 KiB the same, 2 KiB 0.92-1.01x
// of it, 1 KiB 0.81-0.91x: its lines take more arithmetic each, so a line must be asked for
// earlier). The quiet model A/B: decode_switch_ab AB_SWITCH=kq_pf4k.
int64_t kq_stream_prefetch(int streams, bool q6) {
  const int64_t v = kq_stream_prefetch_var().load(std::memory_order_relaxed);
  if (v >= 0) return v;
  if (KqPrefetch::get() == GemvPrefetch::None) return 0;  // NTA / T1 read as T0
  return streams > 1 ? int64_t(q6 ? 4096 : 2048) : sg_prefetch();
}
// S super-groups (the records at p[0..S-1], super-block s) side by side: sub-block j of group gi
// of each stream in turn, against one set of activation broadcasts; q4_K's min terms (which do
// not depend on the codes) per group in sub-block order as before: with one stream (Zen 4's
// default) after each group's codes in the step, so the record's bytes are read in order; with
// two (Zen 5's) after all the codes as before session 26 (in the step, the second stream's min
// accumulators spill to the stack: the reviewer read 4 stack FMAs and 4 stores a sub-block step in
// kq_lean_parts<Q4_K, 4, 2>, not measured on Zen 5). The same fused multiply-adds either way: the
// same bits. Into y[k][gi].
template <DType T, int G, int S>
__attribute__((always_inline)) EMO_TK inline void kq_lean_records(const uint8_t* const (&p)[S], int64_t s, const XRec& xr,
                                                                  int64_t pf, bool spread, __m512 (&y)[S][G]) {
  constexpr bool q6 = T == DType::Q6_K;
  constexpr size_t rec = size_t(G) * (q6 ? kQ6KRecord : kQ4KRecord);
  constexpr int lines = int(rec / 64);
  const KqLayout L{q6, G, 0};
  constexpr bool mins_in_step = !q6 && S == 1;
  __m512 aA[S][G], aM[S][G];
#pragma GCC unroll 16
  for (int k = 0; k < S; ++k)
    for (int gi = 0; gi < G; ++gi) aA[k][gi] = aM[k][gi] = _mm512_setzero_ps();
#pragma GCC unroll 1
  for (int j = 0; j < 8; ++j) {
    if (pf > 0 && !spread)  // the previous pass's slices of each stream's record (straight-line, 27 a step, ran q6_K 0.87-0.90x cold)
      for (int k = 0; k < S; ++k) kq_prefetch_step<lines>(p[k], pf, j, 0, 1);
    __m512i x[8];
    kq_load_x(xr, 0, s, j, x);
    const __m512 dx = _mm512_set1_ps(xr.dx[8 * s + j]);
    [[maybe_unused]] const __m512 dxs = _mm512_set1_ps(xr.dxs[8 * s + j]);
#pragma GCC unroll 4
    for (int gi = 0; gi < G; ++gi)
#pragma GCC unroll 4
      for (int k = 0; k < S; ++k) {
        if (pf > 0 && spread) kq_prefetch_step<lines>(p[k], pf, j, gi, G);  // part gi of stream k's slice
        const uint8_t* cl = p[k] + L.codes(gi, j);
        __m512i v[6];
#pragma GCC unroll 6
        for (int i = 0; i < kKqLines<q6>; ++i) {
          v[i] = _mm512_load_si512(cl + 64 * i);
          __asm__("" : "+v"(v[i]));
        }
        auto bytes16 = [&](size_t off) { return _mm_load_si128(reinterpret_cast<const __m128i*>(p[k] + off)); };
        __m512i lo[4], hi[4];
        if constexpr (q6)
          kq6_codes(v, lo, hi);
        else
          kq4_codes<true>(v, lo, hi);  // hi: 16 x the high nibbles, their chain's sum shifted back below
        __m512i P0 = _mm512_setzero_si512(), P1 = _mm512_setzero_si512();
        if constexpr (q6) {
          const int32_t* ng = xr.neg + 16 * s + 2 * j;
          P0 = _mm512_set1_epi32(ng[0]), P1 = _mm512_set1_epi32(ng[1]);
        }
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          P0 = _mm512_dpbusd_epi32(P0, lo[i], x[i]);
          P1 = _mm512_dpbusd_epi32(P1, hi[i], x[4 + i]);
        }
        __m512i t;
        if constexpr (q6)
          t = _mm512_add_epi32(_mm512_mullo_epi32(P0, _mm512_cvtepi8_epi32(bytes16(L.sc(gi, 2 * j)))),
                               _mm512_mullo_epi32(P1, _mm512_cvtepi8_epi32(bytes16(L.sc(gi, 2 * j + 1)))));
        else
          t = _mm512_mullo_epi32(_mm512_add_epi32(P0, _mm512_srai_epi32(P1, 4)), _mm512_cvtepu8_epi32(bytes16(L.sc(gi, j))));
        aA[k][gi] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), dx, aA[k][gi]);
        if constexpr (mins_in_step)  // the min terms: the same fused multiply-adds in sub-block order as the M >= 2 pass
          aM[k][gi] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes16(L.mn(gi, j)))), dxs, aM[k][gi]);
      }
  }
  if constexpr (!q6 && !mins_in_step)
#pragma GCC unroll 4
    for (int k = 0; k < S; ++k)
#pragma GCC unroll 4
      for (int gi = 0; gi < G; ++gi)
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j)
          aM[k][gi] = _mm512_fmadd_ps(
              _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(p[k] + L.mn(gi, j))))),
              _mm512_set1_ps(xr.dxs[8 * s + j]), aM[k][gi]);
#pragma GCC unroll 4
  for (int k = 0; k < S; ++k)
#pragma GCC unroll 4
    for (int gi = 0; gi < G; ++gi) y[k][gi] = kq_y_update<q6, G>(p[k], gi, y[k][gi], aA[k][gi], aM[k][gi]);
}

// S streams over super-groups [q0, q0 + S per): stream k reads the per super-groups from
// q0 + k per one after the other (one contiguous run of bytes), all S side by side record by
// record, each prefetched pf bytes ahead along itself, so that a stream's prefetches run on into
// its next super-group (`cold`: the first pf bytes of each first; nothing earlier did); spread:
// q6_K's prefetches spread over each step's groups (kq_lean_records). Each output's arithmetic is
// kq_records_sg<T, 1, G>'s.
template <DType T, int G, int S>
EMO_TK void kq_lean_parts(const uint8_t* Wr, int64_t ns, const XRec& xr, const float* bias, float* Y, int64_t N,
                          int64_t q0, int64_t per, int64_t pf, bool spread, bool cold) {
  constexpr bool q6 = T == DType::Q6_K;
  constexpr size_t rec = size_t(G) * (q6 ? kQ6KRecord : kQ4KRecord);
  const size_t sgb = size_t(ns) * rec;
  const uint8_t* p[S];
  for (int k = 0; k < S; ++k) p[k] = Wr + size_t(q0 + k * per) * sgb;
  if (cold && pf > 0)
    for (int k = 0; k < S; ++k)
#pragma GCC unroll 1
      for (int64_t o = 0; o < pf; o += 64) _mm_prefetch(reinterpret_cast<const char*>(p[k] + o), _MM_HINT_T0);
  for (int64_t i = 0; i < per; ++i) {
    __m512 y[S][G];
    for (int k = 0; k < S; ++k)
      for (int gi = 0; gi < G; ++gi) y[k][gi] = _mm512_setzero_ps();
    for (int64_t s = 0; s < ns; ++s) {
      kq_lean_records<T, G, S>(p, s, xr, pf, spread, y);
      for (int k = 0; k < S; ++k) p[k] += rec;  // the last record's next is the part's next super-group
    }
    for (int k = 0; k < S; ++k)
      for (int gi = 0; gi < G; ++gi)
        if (!kq_store_group<1>(&y[k][gi], bias, Y, 0, N, ((q0 + k * per + i) * G + gi) * kKqRows)) break;
  }
}

// Super-groups [q0, q1). kq_streams() = 2 (default): the range in 2 contiguous parts side by side
// (kq_lean_parts), an odd one left over as one part after them; 1: one after the other.
template <DType T, int G>
EMO_TK void kq_records_sg_lean(const uint8_t* Wr, int64_t ns, const XRec& xr, const float* bias, float* Y, int64_t,
                               int64_t N, int64_t q0, int64_t q1, bool cold) {
  const int S = kq_streams();
  const int64_t pf = kq_stream_prefetch(S, T == DType::Q6_K);
  const bool spread = T == DType::Q6_K;  // q6_K: spread (two streams 1.22-1.30x, one loop a step 1.18-1.21x)
  int64_t q = q0;
  if (S == 2 && q1 - q >= 2) {
    const int64_t per = (q1 - q) / 2;
    kq_lean_parts<T, G, 2>(Wr, ns, xr, bias, Y, N, q, per, pf, spread, cold);
    q += 2 * per;
  }
  if (q < q1) kq_lean_parts<T, G, 1>(Wr, ns, xr, bias, Y, N, q, q1 - q, pf, spread, cold);
}

using SgFn = void (*)(const uint8_t*, int64_t, const XRec&, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                      bool);
template <DType T, int G>
SgFn pick_sg_m(int64_t M) {
  switch (M) {
    case 1: return &kq_records_sg_lean<T, G>;
    case 2: return &kq_records_sg<T, 2, G>;
    case 3: return &kq_records_sg<T, 3, G>;
    case 4: return &kq_records_sg<T, 4, G>;
    case 5: return &kq_records_sg<T, 5, G>;
    case 6: return &kq_records_sg<T, 6, G>;
    case 7: return &kq_records_sg<T, 7, G>;
    default: return &kq_records_sg<T, 8, G>;
  }
}
template <int G>
SgFn pick_sg_g(bool q6, int64_t M) {
  return q6 ? pick_sg_m<DType::Q6_K, G>(M) : pick_sg_m<DType::Q4_K, G>(M);
}
SgFn pick_sg(bool q6, int G, int64_t M) { return G == 2 ? pick_sg_g<2>(q6, M) : pick_sg_g<4>(q6, M); }

// Super-groups per chunk of the dispatch: about 8 a thread; with the lean pass a multiple of its
// streams, so that a chunk walks them side by side (the outputs do not depend on it).
int64_t sg_chunk(int64_t groups, int nth) {
  if (kq_streams() == 1) return std::max<int64_t>(1, groups / (8 * nth));
  // two streams: claims of up to a quarter of a thread's range (parallel_ranges shrinks them
  // from there), so that the parts stay several super-groups long
  const int64_t c = std::max<int64_t>(2, groups / (4 * nth));
  return (c + 1) / 2 * 2;
}

// The super-groups of the G > 1 records over the pool: contiguous ranges with stealing, one long
// stream per thread (base/thread_pool.h parallel_ranges, as gemv_repacked's M = 1 dispatch) when
// gemv_ranges() (EMOLLM_GEMV_RANGES), else chunks from a shared counter. Same bits either way.
// owner_keep: parallel_ranges' (kquant_owner_keep at M = 1: a thread's first claim all of its
// range but that many super-groups, so its streams run the range's length once; -1 elsewhere).
void sg_dispatch(ThreadPool* pool, bool parallel, int64_t n, int64_t chunk,
                 const std::function<void(int64_t, int64_t)>& fn, int64_t owner_keep = -1) {
  if (parallel && gemv_ranges()) return parallel_ranges(pool, n, 1, chunk, fn, RangeOwner::Arrival, owner_keep);
  parallel_chunks(pool, parallel, n, chunk, fn);
}

}  // namespace

void set_kquant_streams(int streams) { KqStreams::set(streams >= 2 ? 2 : 1); }
int kquant_streams() { return kq_streams(); }
void set_kquant_prefetch(GemvPrefetch p) { KqPrefetch::set(p); }
GemvPrefetch kquant_prefetch() { return KqPrefetch::get(); }
void set_kquant_stream_prefetch(int64_t bytes) { kq_stream_prefetch_var().store(bytes); }
void set_kquant_owner_keep(int groups) { DecodeSetting<&DecodeTuning::kquant_owner_keep>::set(std::max(groups, -1)); }
int kquant_owner_keep() { return DecodeSetting<&DecodeTuning::kquant_owner_keep>::get(); }

void gemv_kquant_records_multi(const Args* outs, int n) {
  const Args& a = outs[0];
  const bool q6 = a.wtype == DType::Q6_K;
  if ((a.wtype != DType::Q4_K && !q6) || a.M != 1 || a.K % kQKK != 0 || n < 1 || n > kMaxGemvOutputs)
    throw Error(ErrorCode::Internal, "gemv_kquant_records_multi: q4_K / q6_K, M = 1, whole super-blocks");
  const QX q = quantize_activations(a, false, 0);
  const int64_t nb = a.K / kQK;
  thread_local std::vector<float> xstore;
  xstore.resize(size_t(3 * nb));
  x_blocks(q, 1, a.K, q6 ? XSums::Neg32Halves : XSums::DxS, xstore.data());
  const XRec xr{q.qs, q.ldq, xstore.data(), xstore.data() + nb, reinterpret_cast<const int32_t*>(xstore.data() + nb), nb};
  const int64_t ns = a.K / kQKK;
  const int G = kquant_record_groups();
  const int64_t R = int64_t(kKqRows) * G;  // rows per record
  int64_t first[kMaxGemvOutputs + 1] = {0};  // first super-group of each output in the joint range
  int64_t macs = 0;
  for (int j = 0; j < n; ++j) {
    first[j + 1] = first[j] + (outs[j].N + R - 1) / R;
    macs += outs[j].N * a.K;
  }
  const int nth = a.pool ? a.pool->size() : 1;
  const int64_t chunk = sg_chunk(first[n], nth);
  auto run = [&](auto&& fn) {
    return [&, fn](int64_t g0, int64_t g1) {
      for (int j = 0; j < n && g0 < g1; ++j) {
        const int64_t e = std::min(g1, first[j + 1]);
        if (g0 >= e) continue;
        const Args& o = outs[j];
        fn(o, g0 - first[j], e - first[j]);
        g0 = e;
      }
    };
  };
  const SgFn fn = pick_sg(q6, G, 1);
  sg_dispatch(a.pool, macs >= kParallelMinMacs, first[n], chunk, run([&](const Args& o, int64_t g0, int64_t g1) {
                fn(static_cast<const uint8_t*>(o.W), ns, xr, o.bias, o.Y, o.ldy, o.N, g0, g1, true);
              }),
              kquant_owner_keep());
}

void gemv_kquant_records(const Args& a) {
  const bool q6 = a.wtype == DType::Q6_K;
  if ((a.wtype != DType::Q4_K && !q6) || a.M < 1 || a.M > kSmallM || a.K % kQKK != 0)
    throw Error(ErrorCode::Internal, "gemv_kquant_records: q4_K / q6_K, 1 <= M <= 8, whole super-blocks");
  const QX q = quantize_activations(a, false, 0);
  const int64_t nb = a.K / kQK;
  thread_local std::vector<float> xstore;  // the workers read the caller's through xr
  xstore.resize(size_t((q6 ? 3 : 2) * a.M * nb));
  x_blocks(q, a.M, a.K, q6 ? XSums::Neg32Halves : XSums::DxS, xstore.data());
  const XRec xr{q.qs, q.ldq, xstore.data(), xstore.data() + a.M * nb,
                reinterpret_cast<const int32_t*>(xstore.data() + a.M * nb), nb};
  const uint8_t* Wr = static_cast<const uint8_t*>(a.W);
  const int64_t ns = a.K / kQKK;
  const int G = kquant_record_groups();
  const int64_t groups = (a.N + kKqRows * G - 1) / (kKqRows * G);  // super-groups
  const int nth = a.pool ? a.pool->size() : 1;
  const int64_t chunk = sg_chunk(groups, nth);
  const bool par = a.M * a.N * a.K >= kParallelMinMacs;
  const SgFn fn = pick_sg(q6, G, a.M);
  sg_dispatch(a.pool, par, groups, chunk,
              [&](int64_t g0, int64_t g1) { fn(Wr, ns, xr, a.bias, a.Y, a.ldy, a.N, g0, g1, true); },
              a.M == 1 ? kquant_owner_keep() : -1);
}

void gemv_kquant_vnni(const Args& a, const QX& q) {
  RowsFn fn = nullptr;
  switch (a.wtype) {
    case DType::Q4_K: fn = pick_m<DType::Q4_K>(a.M); break;
    case DType::Q5_K: fn = pick_m<DType::Q5_K>(a.M); break;
    case DType::Q6_K: fn = pick_m<DType::Q6_K>(a.M); break;
    default:
      throw Error(ErrorCode::Internal, std::string("gemv_kquant_vnni: no kernel for weight type ") + dtype_name(a.wtype));
  }
  if (a.M < 1 || a.M > kSmallM || a.K % kQKK != 0)
    throw Error(ErrorCode::Internal, "gemv_kquant_vnni: needs 1 <= M <= 8 and whole super-blocks");
  // Thread-local storage of the calling thread: the workers get it by reference.
  const int64_t nb = a.K / kQK;
  thread_local std::vector<float> xstore;
  xstore.resize(size_t(2 * a.M * nb));
  x_blocks(q, a.M, a.K, a.wtype == DType::Q6_K ? XSums::None : XSums::DxS, xstore.data());
  const XBlocks xb{xstore.data(), xstore.data() + a.M * nb, nb};
  const int nth = a.pool ? a.pool->size() : 1;
  const int64_t chunk = std::max<int64_t>(4, (a.N / (8 * nth)) / 4 * 4);
  parallel_chunks(a.pool, a.M * a.N * a.K >= kParallelMinMacs, a.N, chunk,
                  [&](int64_t n0, int64_t n1) { fn(a, q, xb, n0, n1); });
}

}  // namespace gemm_detail
}  // namespace emollm

#endif  // __x86_64__
