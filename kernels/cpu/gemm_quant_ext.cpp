// Matrix products with q4_1, q5_0, q5_1, q4_K, q5_K and q6_K weights (gemm.cpp dispatches here).
//
// Decode-shaped products (M <= kSmallM, QuantActivations::Q8, the default) follow the q4_0 path:
// X rows are rounded to q8_0 blocks once per call (the shared QX buffers, ggml's
// quantize_row_q8_0 rounding), and each 32-element block contributes an exact integer dot product
// of the weights' unsigned codes u (0..63) with the int8 activations, per 16-element half h:
//     y += dx_b * ( A_h * (sum_h u*q  - off * sum_h q)  +  B_h * sum_h q )
//   q4_1 / q5_1 : A = d,            B = m,           off = 0
//   q5_0        : A = d,            B = 0,           off = 16
//   q4_K / q5_K : A = d * sc_j,     B = -dmin * m_j, off = 0   (sub-block j of 32)
//   q6_K        : A = d * scales_h, B = 0,           off = 32  (sub-blocks of 16)
// The offset is applied in int32 (QX's neg lanes) so it cancels exactly, and the min terms use
// per-half activation sums (dx_b * sum_h q) made once per call. Integer dot products: AVX-512
// VNNI vpdpbusd (512-bit: two blocks per instruction) at Isa::Avx512+ on CPUs with VNNI, else AVX2
// vpmaddubsw + vpmaddwd at Isa::Avx2+, else scalar. ggml instead rounds activations to q8_K for
// the k-quants (one f32 scale per 256); the q8_0 rounding here is finer (one per 32).
//
// q4_K / q5_K / q6_K at M <= kSmallM on CPUs with AVX-512 VNNI (Isa Avx512+): gemv_kquant_vnni.cpp
// (same q8_0 activations and integer sub-block products, the codes unpacked in registers and the
// scales with vector ops; the AVX2 range kernels here are its fallback without VNNI. The VNNI
// range kernels' K-quant form, the A/B switch EMOLLM_KQUANT_GEMV=0, is gone: the new kernel
// 1.83-2.84x, bench/README 2026-12-04 19:00).
// q4_K / q5_K / q6_K at M > kSmallM in QuantActivations::Q8 mode on CPUs with AVX-512 VNNI (Isa
// Avx512+): the packed int8 GEMM of gemm_kquant_vnni.cpp (same q8_0 activations, same per-block
// integer dot products, cache-blocked).
// Other products (M > kSmallM otherwise, or QuantActivations::F32) dequantise chunks of weight
// rows to f32 (dequantize_row, ggml's exact values) in per-thread scratch and run the f32 kernels
// of the active ISA on them: the result is the f32 product with the dequantised weights.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../../base/quant_formats.h"
#include "gemm_internal.h"
#include "gemm_kquant_vnni.h"
#include "gemv_kquant_vnni.h"

#if defined(__x86_64__)
#include <immintrin.h>
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace emollm {
namespace gemm_detail {

namespace {

// One storage group: a 32-element block or a 256-element super-block (codes u, per-half A, B).
using Decoded = KquantDecoded;
static_assert(sizeof(KquantDecoded::u) == kQKK, "a super-block of codes");

int group_elems(DType t) { return int(dtype_block_elems(t)); }
int code_offset(DType t) { return t == DType::Q5_0 ? 16 : t == DType::Q6_K ? 32 : 0; }
bool has_min(DType t) { return t == DType::Q4_1 || t == DType::Q5_1 || t == DType::Q4_K || t == DType::Q5_K; }

inline uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Scalar decoder (the reference for the vector ones): codes u and per-half A, B of one group.
void decode_scalar(DType t, const uint8_t* blk, Decoded* o) {
  switch (t) {
    case DType::Q4_1:
    case DType::Q5_0:
    case DType::Q5_1: {
      const bool five = t != DType::Q4_1;
      const bool min = t != DType::Q5_0;
      const float d = f16_to_f32(rd16(blk));
      const float m = min ? f16_to_f32(rd16(blk + 2)) : 0.0f;
      const uint8_t* qs = blk + (min ? 4 : 2) + (five ? 4 : 0);
      uint32_t qh = 0;
      if (five) std::memcpy(&qh, blk + (min ? 4 : 2), 4);
      for (int j = 0; j < 16; ++j) {
        o->u[j] = uint8_t((qs[j] & 0x0F) | (((qh >> j) & 1u) << 4));
        o->u[j + 16] = uint8_t((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
      }
      o->A[0] = o->A[1] = d;
      o->B[0] = o->B[1] = m;
      return;
    }
    case DType::Q4_K:
    case DType::Q5_K: {
      const bool five = t == DType::Q5_K;
      const float d = f16_to_f32(rd16(blk)), dmin = f16_to_f32(rd16(blk + 2));
      const uint8_t* sc = blk + 4;
      const uint8_t* qh = blk + 16;
      const uint8_t* qs = blk + (five ? 48 : 16);
      for (int c = 0; c < 4; ++c)
        for (int l = 0; l < 32; ++l) {
          const uint8_t b = qs[32 * c + l];
          const uint8_t h = five ? qh[l] : 0;
          o->u[64 * c + l] = uint8_t((b & 0x0F) | (((h >> (2 * c)) & 1) << 4));
          o->u[64 * c + 32 + l] = uint8_t((b >> 4) | (((h >> (2 * c + 1)) & 1) << 4));
        }
      for (int j = 0; j < 8; ++j) {
        uint8_t s, m;
        kquant_scale_min(j, sc, &s, &m);
        o->A[2 * j] = o->A[2 * j + 1] = d * s;
        o->B[2 * j] = o->B[2 * j + 1] = -(dmin * m);
      }
      return;
    }
    case DType::Q6_K: {
      const uint8_t* ql = blk;
      const uint8_t* qh = blk + 128;
      const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
      const float d = f16_to_f32(rd16(blk + 208));
      for (int n = 0; n < 2; ++n)
        for (int l = 0; l < 32; ++l) {
          const uint8_t* L = ql + 64 * n;
          const uint8_t H = qh[32 * n + l];
          o->u[128 * n + l] = uint8_t((L[l] & 0xF) | ((H & 3) << 4));
          o->u[128 * n + 32 + l] = uint8_t((L[l + 32] & 0xF) | (((H >> 2) & 3) << 4));
          o->u[128 * n + 64 + l] = uint8_t((L[l] >> 4) | (((H >> 4) & 3) << 4));
          o->u[128 * n + 96 + l] = uint8_t((L[l + 32] >> 4) | (((H >> 6) & 3) << 4));
        }
      for (int h = 0; h < 16; ++h) {
        o->A[h] = d * sc[h];
        o->B[h] = 0.0f;
      }
      return;
    }
    default:
      return;
  }
}

// Per-call activation data beyond QX: dx_b * (sum of q over each 16-element half), for the
// min terms. Filled by the calling thread before the workers start.
struct HalfSums {
  std::vector<float> v;  // [M][K / 16]
  int64_t ld = 0;
};

void half_sums(const QX& q, int64_t M, int64_t K, HalfSums* hs) {
  hs->ld = K / 16;
  hs->v.assign(size_t(M * hs->ld), 0.0f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t h = 0; h < K / 16; ++h) {
      int32_t s = 0;
      for (int i = 0; i < 16; ++i) s += q.qs[m * q.ldq + 16 * h + i];
      hs->v[size_t(m * hs->ld + h)] = float(s) * q.dxe[m * q.ldd + (h / 2) * 8];
    }
}

// ---------------------------------------------------------------- scalar q8 path

void q8_scalar(const Args& a, const QX& q, const HalfSums& hs) {
  const int G = group_elems(a.wtype), off = code_offset(a.wtype);
  const size_t gb = dtype_block_bytes(a.wtype);
  const int64_t ng = a.K / G;
  const bool mins = has_min(a.wtype);
  run_parallel(a.pool, a.M * a.N * a.K >= kParallelMinMacs, [&](int ith, int nth) {
    int64_t n0, n1;
    split_range(a.N, ith, nth, 1, &n0, &n1);
    Decoded dec;
    std::vector<double> acc(size_t(a.M));
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* row = static_cast<const uint8_t*>(a.W) + size_t(n) * a.row_bytes;
      for (int64_t m = 0; m < a.M; ++m) acc[size_t(m)] = a.bias ? double(a.bias[n]) : 0.0;
      for (int64_t g = 0; g < ng; ++g) {
        decode_scalar(a.wtype, row + size_t(g) * gb, &dec);
        for (int64_t m = 0; m < a.M; ++m) {
          const int8_t* xq = q.qs + m * q.ldq + g * G;
          double s = 0.0;
          for (int h = 0; h < G / 16; ++h) {
            int32_t isum = 0, qsum = 0;
            for (int i = 0; i < 16; ++i) {
              isum += int32_t(dec.u[16 * h + i]) * xq[16 * h + i];
              qsum += xq[16 * h + i];
            }
            const double dx = q.dxe[m * q.ldd + (g * G + 16 * h) / 32 * 8];
            s += double(isum - off * qsum) * (double(dec.A[h]) * dx);
            if (mins) s += double(dec.B[h]) * double(hs.v[size_t(m * hs.ld + (g * G) / 16 + h)]);
          }
          acc[size_t(m)] += s;
        }
      }
      for (int64_t m = 0; m < a.M; ++m) a.Y[m * a.ldy + n] = float(acc[size_t(m)]);
    }
  });
}

#if defined(__x86_64__)
#define EMO_T2 __attribute__((target("avx2,fma,f16c")))

// AVX2 decoder: same codes as decode_scalar (the tests compare the GEMM results of both).
// B goes to `B` (16 floats) when given, else to o->B.
EMO_T2 __attribute__((always_inline)) inline void decode_avx2(DType t, const uint8_t* blk, Decoded* o, float* B = nullptr) {
  if (!B) B = o->B;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  switch (t) {
    case DType::Q4_K:
    case DType::Q5_K: {
      const bool five = t == DType::Q5_K;
      const uint8_t* qs = blk + (five ? 48 : 16);
      const __m256i hbits = five ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16)) : _mm256_setzero_si256();
      const __m256i one = _mm256_set1_epi8(1);
      for (int c = 0; c < 4; ++c) {
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
        __m256i lo = _mm256_and_si256(b, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m4);
        if (five) {
          const __m256i h0 = _mm256_and_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * c)), one);
          const __m256i h1 = _mm256_and_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * c + 1)), one);
          lo = _mm256_or_si256(lo, _mm256_slli_epi16(h0, 4));
          hi = _mm256_or_si256(hi, _mm256_slli_epi16(h1, 4));
        }
        _mm256_store_si256(reinterpret_cast<__m256i*>(o->u + 64 * c), lo);
        _mm256_store_si256(reinterpret_cast<__m256i*>(o->u + 64 * c + 32), hi);
      }
      const float d = _cvtsh_ss(rd16(blk)), dmin = _cvtsh_ss(rd16(blk + 2));
      for (int j = 0; j < 8; ++j) {
        uint8_t s, m;
        kquant_scale_min(j, blk + 4, &s, &m);
        o->A[2 * j] = o->A[2 * j + 1] = d * s;
        B[2 * j] = B[2 * j + 1] = -(dmin * m);
      }
      return;
    }
    case DType::Q6_K: {
      const __m256i m2 = _mm256_set1_epi8(3);
      for (int n = 0; n < 2; ++n) {
        const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * n));
        const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * n + 32));
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * n));
        const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(h, m2), 4);
        const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), m2), 4);
        const __m256i h2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), m2), 4);
        const __m256i h3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), m2), 4);
        uint8_t* u = o->u + 128 * n;
        _mm256_store_si256(reinterpret_cast<__m256i*>(u), _mm256_or_si256(_mm256_and_si256(l0, m4), h0));
        _mm256_store_si256(reinterpret_cast<__m256i*>(u + 32), _mm256_or_si256(_mm256_and_si256(l1, m4), h1));
        _mm256_store_si256(reinterpret_cast<__m256i*>(u + 64),
                           _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), h2));
        _mm256_store_si256(reinterpret_cast<__m256i*>(u + 96),
                           _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), h3));
      }
      const float d = _cvtsh_ss(rd16(blk + 208));
      const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192);
      for (int h = 0; h < 16; ++h) {
        o->A[h] = d * sc[h];
        o->B[h] = 0.0f;
      }
      return;
    }
    default:
      return decode_scalar(t, blk, o);  // 32-element blocks: see decode32_avx2
  }
}

// Codes of one 32-element q4_1 / q5_0 / q5_1 block as 32 bytes (element i in byte i).
EMO_T2 __attribute__((always_inline)) inline __m256i decode32_avx2(DType t, const uint8_t* blk) {
  const bool five = t != DType::Q4_1;
  const bool min = t != DType::Q5_0;
  const __m128i qq = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + (min ? 4 : 2) + (five ? 4 : 0)));
  __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qq, 4), qq), _mm256_set1_epi8(0x0F));
  if (five) {
    // byte i gets bit i of qh: spread the 4 bytes of qh over 8 bytes each, test one bit per byte
    uint32_t qh;
    std::memcpy(&qh, blk + (min ? 4 : 2), 4);
    const __m256i shuf = _mm256_setr_epi64x(0x0000000000000000, 0x0101010101010101, 0x0202020202020202,
                                            0x0303030303030303);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(int(qh)), shuf);
    const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    u = _mm256_or_si256(u, _mm256_and_si256(v, _mm256_set1_epi8(0x10)));
  }
  return u;
}

EMO_T2 __attribute__((always_inline)) inline __m256i dot_maddubs(__m256i u, __m256i x) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
}

#define EMO_QX_TARGET EMO_T2
#define EMO_QX_NAME q8_range_avx2
#define EMO_QX_DOT dot_maddubs
#include "gemm_quant_ext_range.inc"
#undef EMO_QX_TARGET
#undef EMO_QX_NAME
#undef EMO_QX_DOT

}  // namespace

// Vector dequantisation, bit-identical to dequantize_row (ggml's operations: a product and, for
// the formats with a min, a separate add; no fused multiply-add).
EMO_T2 void dequantize_row_ext_avx2(DType t, const void* src, float* y, int64_t K) {
  const uint8_t* row = static_cast<const uint8_t*>(src);
  const int G = group_elems(t);
  const size_t gb = dtype_block_bytes(t);
  const int off = code_offset(t);
  const bool mins = has_min(t);
  const __m256i voff = _mm256_set1_epi32(off);
  Decoded dec;
  for (int64_t g = 0; g < K / G; ++g) {
    const uint8_t* blk = row + size_t(g) * gb;
    if (G == 32) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(dec.u), decode32_avx2(t, blk));
      dec.A[0] = dec.A[1] = _cvtsh_ss(rd16(blk));
      // q4_1 / q5_1: x * d + m (ggml), i.e. + B with B = m
      dec.B[0] = dec.B[1] = mins ? _cvtsh_ss(rd16(blk + 2)) : 0.0f;
    } else {
      decode_avx2(t, blk, &dec);  // q4_K / q5_K: B = -(dmin * m), and d1 * x + B == d1 * x - m1 exactly
    }
    float* out = y + g * G;
    for (int h = 0; h < G / 16; ++h) {
      const __m256 A = _mm256_set1_ps(dec.A[h]), B = _mm256_set1_ps(dec.B[h]);
      for (int k = 0; k < 2; ++k) {
        const __m128i u8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(dec.u + 16 * h + 8 * k));
        const __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(u8), voff));
        __m256 r = _mm256_mul_ps(v, A);
        if (mins) r = _mm256_add_ps(r, B);
        _mm256_storeu_ps(out + 16 * h + 8 * k, r);
      }
    }
  }
}

EMO_T2 void kquant_decode_avx2(DType t, const uint8_t* blk, KquantDecoded* out) { decode_avx2(t, blk, out); }

namespace {

#define EMO_T5 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni")))

// One 64-element step of q8_range_zmm: codes u, lane scales A, first 32-block index b.
template <int MB, bool neg>
EMO_T5 __attribute__((always_inline)) inline void zmm_step(__m512* acc, const QX& q, __m512i u, __m512 A, int64_t b) {
  for (int m = 0; m < MB; ++m) {
    const __m512i x = _mm512_loadu_si512(q.qs + m * q.ldq + b * 32);
    __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, x);
    if (neg) p = _mm512_add_epi32(p, _mm512_loadu_si512(q.neg + m * q.ldd + b * 8));
    acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(A, _mm512_loadu_ps(q.dxe + m * q.ldd + b * 8)), acc[m]);
  }
}

// AVX-512 VNNI, 512-bit: two 32-element blocks per vpdpbusd (q4_1 / q5_0 / q5_1; the K-quants
// take gemv_kquant_vnni.cpp on VNNI). A row's odd last 32-element block goes through the 256-bit form.
template <DType T, int MB>
EMO_T5 void q8_range_zmm(const Args& a, const QX& q, const HalfSums& hs, int64_t n0, int64_t n1) {
  static_assert(T == DType::Q4_1 || T == DType::Q5_0 || T == DType::Q5_1, "q8_range_zmm: 32-element blocks only");
  constexpr int G = 32;
  constexpr bool neg = T == DType::Q5_0;
  constexpr bool mins = !neg;
  const size_t gb = a.row_bytes / size_t(a.K / G);
  const int64_t ng = a.K / G;
  const int64_t nh = a.K / 16;
  thread_local std::vector<float> bcol_storage;
  if (mins && int64_t(bcol_storage.size()) < nh) bcol_storage.resize(size_t(nh));
  float* bcol = bcol_storage.data();
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = static_cast<const uint8_t*>(a.W) + size_t(n) * a.row_bytes;
    __m512 acc[MB];
    for (int m = 0; m < MB; ++m) acc[m] = _mm512_setzero_ps();
    int64_t g = 0;
    for (; g + 2 <= ng; g += 2) {
      const uint8_t* b0 = row + size_t(g) * gb;
      const uint8_t* b1 = b0 + gb;
      _mm_prefetch(reinterpret_cast<const char*>(b0 + 1024), _MM_HINT_T0);
      const __m512i u = _mm512_inserti64x4(_mm512_castsi256_si512(decode32_avx2(T, b0)), decode32_avx2(T, b1), 1);
      const __m512 A = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(_cvtsh_ss(rd16(b0)))),
                                          _mm256_set1_ps(_cvtsh_ss(rd16(b1))), 1);
      if (mins) {
        bcol[2 * g] = bcol[2 * g + 1] = _cvtsh_ss(rd16(b0 + 2));
        bcol[2 * g + 2] = bcol[2 * g + 3] = _cvtsh_ss(rd16(b1 + 2));
      }
      zmm_step<MB, neg>(acc, q, u, A, g);
    }
    if (g < ng) {  // odd tail block: 256-bit
      const uint8_t* b0 = row + size_t(g) * gb;
      const __m256i u = decode32_avx2(T, b0);
      const __m256 A = _mm256_set1_ps(_cvtsh_ss(rd16(b0)));
      if (mins) bcol[2 * g] = bcol[2 * g + 1] = _cvtsh_ss(rd16(b0 + 2));
      for (int m = 0; m < MB; ++m) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.qs + m * q.ldq + g * 32));
        __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x);
        if (neg) p = _mm256_add_epi32(p, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q.neg + m * q.ldd + g * 8)));
        const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(A, _mm256_loadu_ps(q.dxe + m * q.ldd + g * 8)));
        acc[m] = _mm512_add_ps(acc[m], _mm512_zextps256_ps512(f));
      }
    }
    for (int m = 0; m < MB; ++m) {
      float v = _mm512_reduce_add_ps(acc[m]);
      if (mins) {
        const float* s = hs.v.data() + m * hs.ld;
        __m512 b = _mm512_setzero_ps();
        int64_t i = 0;
        for (; i + 16 <= nh; i += 16) b = _mm512_fmadd_ps(_mm512_loadu_ps(bcol + i), _mm512_loadu_ps(s + i), b);
        float r = _mm512_reduce_add_ps(b);
        for (; i < nh; ++i) r += bcol[i] * s[i];
        v += r;
      }
      if (a.bias) v += a.bias[n];
      a.Y[m * a.ldy + n] = v;
    }
  }
}

using RangeFn = void (*)(const Args&, const QX&, const HalfSums&, int64_t, int64_t);
template <bool VNNI, DType T, int MB>
RangeFn range_fn() {
  if constexpr (VNNI) return &q8_range_zmm<T, MB>;
  else return &q8_range_avx2<T, MB>;
}
template <bool VNNI, DType T>
RangeFn pick_m(int64_t M) {
  switch (M) {
    case 1: return range_fn<VNNI, T, 1>();
    case 2: return range_fn<VNNI, T, 2>();
    case 3: return range_fn<VNNI, T, 3>();
    case 4: return range_fn<VNNI, T, 4>();
    case 5: return range_fn<VNNI, T, 5>();
    case 6: return range_fn<VNNI, T, 6>();
    case 7: return range_fn<VNNI, T, 7>();
    default: return range_fn<VNNI, T, 8>();
  }
}
template <bool VNNI>
RangeFn pick(DType t, int64_t M) {
  switch (t) {
    case DType::Q4_1: return pick_m<VNNI, DType::Q4_1>(M);
    case DType::Q5_0: return pick_m<VNNI, DType::Q5_0>(M);
    case DType::Q5_1: return pick_m<VNNI, DType::Q5_1>(M);
    default: break;
  }
  if constexpr (VNNI) {
    return nullptr;  // q4_K / q5_K / q6_K with VNNI: gemv_kquant_vnni (gemm_q8act_ext returned before)
  } else {
    switch (t) {
      case DType::Q4_K: return pick_m<false, DType::Q4_K>(M);
      case DType::Q5_K: return pick_m<false, DType::Q5_K>(M);
      default: return pick_m<false, DType::Q6_K>(M);
    }
  }
}
#endif  // __x86_64__

// ---------------------------------------------------------------- f32 path

void gemm_dequant_f32(const Args& a, Isa isa) {
  // Rows per chunk: about 128 KiB of f32 weights, a multiple of 16 (the packed GEMMs' panel).
  const int64_t rows = std::max<int64_t>(16, (int64_t(32768) / std::max<int64_t>(a.K, 1)) / 16 * 16);
  parallel_chunks(a.pool, a.M * a.N * a.K >= kParallelMinMacs, a.N, rows, [&](int64_t n0, int64_t n1) {
    thread_local std::vector<float> buf;
    buf.resize(size_t((n1 - n0) * a.K));
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* src = static_cast<const uint8_t*>(a.W) + size_t(n) * a.row_bytes;
#if defined(__x86_64__)
      if (isa >= Isa::Avx2) {
        dequantize_row_ext_avx2(a.wtype, src, buf.data() + (n - n0) * a.K, a.K);
        continue;
      }
#endif
      dequantize_row(a.wtype, src, buf.data() + (n - n0) * a.K, a.K);
    }
    Args s{a.X, a.ldx, buf.data(), DType::F32, a.bias ? a.bias + n0 : nullptr, a.Y + n0, a.ldy,
           a.M, n1 - n0, a.K, nullptr, size_t(a.K) * 4};
#if defined(__x86_64__)
    if (isa >= Isa::Avx512) return gemm_avx512(s, false);
    if (isa >= Isa::Avx2) return gemm_avx2(s);
#endif
    (void)isa;
    gemm_scalar(s);
  });
}

}  // namespace

void gemm_quant_ext(const Args& a, Isa isa, bool q8act) {
  if (!q8act) {
#if defined(__x86_64__)
    const bool kq = a.wtype == DType::Q4_K || a.wtype == DType::Q5_K || a.wtype == DType::Q6_K;
    if (kq && a.M > kSmallM && quant_activations() == QuantActivations::Q8 && isa >= Isa::Avx512 &&
        cpu_features().avx512vnni && vnni_allowed())
      return gemm_kquant_packed_vnni(a);
#endif
    return gemm_dequant_f32(a, isa);
  }
  const int off = code_offset(a.wtype);
  const QX q = qx_view(scratch(kQxSlot, qx_bytes(a.M, a.K)), a.M, a.K);
  for (int64_t m = 0; m < a.M; ++m) {
    int8_t* qs = const_cast<int8_t*>(q.qs + m * q.ldq);
    float* dxe = const_cast<float*>(q.dxe + m * q.ldd);
    int32_t* neg = off ? const_cast<int32_t*>(q.neg + m * q.ldd) : nullptr;
#if defined(__x86_64__)
    if (isa >= Isa::Avx2) {
      qx_quantize_row_avx2(a.X + m * a.ldx, a.K, qs, dxe, neg, off);
      continue;
    }
#endif
    qx_quantize_row_scalar(a.X + m * a.ldx, a.K, qs, dxe, neg, off);
  }
#if defined(__x86_64__)
  const bool kquant = a.wtype == DType::Q4_K || a.wtype == DType::Q5_K || a.wtype == DType::Q6_K;
  if (kquant && isa >= Isa::Avx512 && cpu_features().avx512vnni && vnni_allowed())
    return gemv_kquant_vnni(a, q);
#endif
  // Thread-local storage of the calling thread: the workers get it by reference (a lambda naming
  // a thread_local would read the worker's own copy).
  thread_local HalfSums hs_storage;
  const HalfSums& hs = hs_storage;
  if (has_min(a.wtype)) half_sums(q, a.M, a.K, &hs_storage);
#if defined(__x86_64__)
  if (isa >= Isa::Avx2) {
    const bool vnni = isa >= Isa::Avx512 && cpu_features().avx512vnni && vnni_allowed();
    const RangeFn fn = vnni ? pick<true>(a.wtype, a.M) : pick<false>(a.wtype, a.M);
    const int nth = a.pool ? a.pool->size() : 1;
    const int64_t chunk = std::max<int64_t>(4, (a.N / (8 * nth)) / 4 * 4);
    parallel_chunks(a.pool, a.M * a.N * a.K >= kParallelMinMacs, a.N, chunk,
                    [&](int64_t n0, int64_t n1) { fn(a, q, hs, n0, n1); });
    return;
  }
#endif
  q8_scalar(a, q, hs);
}

}  // namespace gemm_detail
}  // namespace emollm
