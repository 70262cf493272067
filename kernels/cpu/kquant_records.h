// The repacked q4_K / q6_K layout (kquant_repack.cpp writes it; gemv_kquant_vnni.cpp's decode
// GEMV and gemm_kquant_vnni.cpp's prefill read it). Not public API.
//
// Rows go in groups of 16 (kKqRows) and groups in super-groups of G (2 or 4: 32 or 64
// rows; kquant_record_groups(), default 64; the last super-group padded
// with zero rows); super-group q is ns = K / 256 records, one per super-block, back to back: one
// sequential stream per super-group. A record holds its super-block of all 16 G rows, 64-byte
// aligned and a whole number of lines, with the scales unpacked to one byte per row per
// sub-block so that a vector load gives one per lane (row). It is laid out in the order the
// decode pass reads it (session 26): per 32-element sub-block j a step of the G groups' scales
// (q4_K: and mins), then their code lines; the d (and dmin) of the record last. So one stream a
// thread reads every record front to back, which Zen 4's hardware prefetchers keep fed without
// software prefetch: the previous layout (every sub-block's scales, then the mins, at the front,
// read back and forth) read 0.61-0.80x a plain one-stream read there (kq_streams_ab, read-kq: its
// loads alone 0.6x). On Zen 5 (session 27) the order lets q4_K's one stream read without software
// prefetch too (0.96-1.02x T0; the previous layout 0.56-0.63x), not q6_K's (0.45-0.75x): Zen 5
// keeps T0 on two streams (decode_tuning.h). Offsets (KqLayout; a group's 16 entries at 16 gi within each region of 16 G,
// its code lines the gi-th of G within a step):
//
//   q4_K (2368 G B = 37 G lines): step j at 288 G j:
//     [0, 16 G)         sc: byte 16 gi + r = 6-bit scale of sub-block j of row r of group gi
//     [16 G, 32 G)      m:  the same for the 6-bit mins
//     [32 G, 288 G)     codes: group gi's 4 lines at 32 G + 256 gi; line i, dword r (row r), byte k:
//                       low nibble = u[r][32 j + 4 i + k], high nibble = u[r][32 j + 16 + 4 i + k]
//     then at 2304 G: d of rows (fp16, 32 B a group), at 2336 G: dmin (fp16)
//   q6_K (3392 G B = 53 G lines): step j at 416 G j:
//     [0, 32 G)         scales: byte 16 G h + 16 gi + r = int8 scale of 16-element half 2 j + h
//     [32 G, 416 G)     codes: group gi's 6 lines at 32 G + 384 gi (one sub-block after the other: the
//                  record is read as one sequential stream; with the high bits in a region of
//                  their own it read as two, 0.7x as fast), the high bits packed so that few ops
//                  unpack them (14-18 a sub-block; kq6_codes):
//                  lines 0-3: byte = u[quad i] (bits 0-5) | (u[quad 4 + i] >> 4) << 6
//                  line 4: low nibble = u[quad 4] & 15, high nibble = u[quad 5] & 15
//                  line 5: low nibble = u[quad 6] & 15, high nibble = u[quad 7] & 15
//                  (quad q = elements 4q..4q+3 of the sub-block, byte k of dword r as above):
//                  quads 0-3 are one and-mask each, quads 4-7 their nibble or-ed with bits 6-7
//                  of line q - 4 moved to bits 4-5. Against the previous layout (4 lines of low
//                  nibbles as q4_K's codes, then 2 lines of the high 2 bits: 26 ops a sub-block)
//                  it measured (session 16, loaded, interleaved) 1.12-1.37x as fast with the
//                  records in L2, 0.97-1.07x cold, decode 1.02-1.03x; the previous layout and
//                  its switch EMOLLM_KQ6_PACKED went in session 23. A GFNI affine for the
//                  bits-6-7 move would save 4 more ops a sub-block (not tried: the cold pass is
//                  not ALU-bound).
//     then at 3328 G: d of rows (f32, exact from the fp16, 64 B a group)
// so the 4 code bytes of "quad" q (elements 4q..4q+3 of a sub-block) of a group's 16 rows are one
// zmm: a vpdpbusd against 4 activation bytes broadcast gives the 16 rows' sums (no horizontal
// sums). With G = 4 the decode GEMV at M = 1 reads a sub-block of 64 rows (its scale lines, then
// 16 code lines in a row)
// against one set of activation broadcasts, and a thread's range is one stream of 9-13 KiB
// records (the q4_0 records' design, gemv_repacked.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "../../base/dtype.h"
#include "simd_math.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace emollm {
namespace gemm_detail {

constexpr int kKqRows = 16;            // rows per group
constexpr size_t kQ4KRecord = 2368;    // bytes per q4_K record (16 rows x 256 elements)
constexpr size_t kQ6KRecord = 3392;    // bytes per q6_K record

inline size_t kquant_record_bytes(DType t) { return t == DType::Q6_K ? kQ6KRecord : kQ4KRecord; }

// Groups of 16 rows per record of kquant_repack's output: 4 (64-row records, the default) or 2
// (kernels.h set_kquant_record_rows: tests). The layout needs G even: with an odd G the code
// lines would sit 32 bytes off a cache line, and the kernels load them with aligned 64-byte loads.
int kquant_record_groups();

// Where a group's data lie in a matrix of records of G groups (ns super-blocks a row).
struct KqLayout {
  bool q6;
  int G;
  int64_t ns;
  size_t rec() const { return size_t(G) * (q6 ? kQ6KRecord : kQ4KRecord); }  // bytes of a record
  size_t sg_bytes() const { return size_t(ns) * rec(); }                       // of a super-group
  // record s of the super-group of group g; gi = g % G is the group's place in it
  const uint8_t* record(const uint8_t* W, int64_t g, int64_t s) const {
    return W + size_t(g / G) * sg_bytes() + size_t(s) * rec();
  }
  // offsets in a record, group gi: sub-block j's step (its scales, then its code lines) at
  // step(j), in the order the decode pass reads them, then the d (and dmin) of the record
  size_t step(int j) const { return size_t(q6 ? 416 : 288) * size_t(G) * size_t(j); }
  size_t d(int gi) const { return size_t(q6 ? 3328 : 2304) * size_t(G) + size_t(q6 ? 64 : 32) * size_t(gi); }  // 16 fp16 (q4_K) / f32 (q6_K)
  size_t dmin(int gi) const { return 2336 * size_t(G) + 32 * size_t(gi); }  // q4_K: 16 fp16
  size_t sc(int gi, int i) const {  // q4_K sub-block i; q6_K half i (sub-block i / 2)
    return q6 ? step(i / 2) + 16 * size_t(G) * size_t(i % 2) + 16 * size_t(gi) : step(i) + 16 * size_t(gi);
  }
  size_t mn(int gi, int j) const { return step(j) + 16 * size_t(G) + 16 * size_t(gi); }  // q4_K
  size_t codes(int gi, int j) const { return step(j) + 32 * size_t(G) + size_t(q6 ? 384 : 256) * size_t(gi); }
};

// The 256 codes of row r (0..16 G - 1) of one record of G groups (0..15 for q4_K, 0..63 for
// q6_K; u - 32 is the q6_K value), as gemm_quant_ext.cpp's decoders give them.
inline void kquant_record_codes(DType t, int G, const uint8_t* rec, int r, uint8_t* u) {
  const KqLayout L{t == DType::Q6_K, G, 1};
  const int gi = r / kKqRows, rr = r % kKqRows;
  for (int j = 0; j < 8; ++j)
    for (int i = 0; i < 4; ++i)
      for (int k = 0; k < 4; ++k) {
        const uint8_t* c = rec + L.codes(gi, j) + 4 * rr + k;  // byte k of row rr's dword in line 0
        const uint8_t b = c[64 * i];                            // line i
        uint8_t& lo = u[32 * j + 4 * i + k];                    // quad i
        uint8_t& hi = u[32 * j + 16 + 4 * i + k];               // quad 4 + i
        if (L.q6) {  // quad 4 + i: a nibble of line 4 + i / 2, bits 4-5 from line i's bits 6-7
          const uint8_t nib = c[64 * (4 + i / 2)];
          lo = b & 0x3F;
          hi = uint8_t(((i % 2 ? nib >> 4 : nib) & 0x0F) | ((b >> 6) << 4));
        } else {
          lo = b & 0x0F;
          hi = b >> 4;
        }
      }
}

#if defined(__x86_64__)
// q4_K: the 8 code vectors of a sub-block (lo = quads 0-3 = the low nibbles of its 4 lines v[0..3],
// hi = quads 4-7 = their high nibbles). X16: hi = v & 0xF0, 16 x the high nibbles in place (one
// logic op instead of a shift and a mask): a vpdpbusd chain over them sums to exactly 16 x the
// plain chain (|sum| <= 16 * 15 * 128 * 16 < 2^31), which the caller shifts back once a sub-block
// (the lean M = 1 pass; the q4_0 records' trick, gemv_repacked.cpp groups_block). Shared by the
// decode passes and the prefill's W panels, which must read the same codes.
template <bool X16 = false>
__attribute__((always_inline)) EMOLLM_TARGET_AVX512 inline void kq4_codes(const __m512i v[4], __m512i lo[4], __m512i hi[4]) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    lo[i] = _mm512_and_si512(v[i], m4);
    hi[i] = X16 ? _mm512_andnot_si512(m4, v[i]) : _mm512_and_si512(_mm512_srli_epi16(v[i], 4), m4);
  }
}

// q6_K: the 8 code vectors of a sub-block (lo = quads 0-3, hi = quads 4-7) from its 6 lines
// v[0..5] in the packed layout above. Shared by the decode passes and the prefill's W panels,
// which must read the same codes.
__attribute__((always_inline)) EMOLLM_TARGET_AVX512 inline void kq6_codes(const __m512i v[6], __m512i lo[4], __m512i hi[4]) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  const __m512i m3f = _mm512_set1_epi8(0x3F), m30 = _mm512_set1_epi8(0x30);
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    lo[i] = _mm512_and_si512(v[i], m3f);
    // bits 6-7 to 4-5 (the bits a 16-bit shift brings in from the next byte are masked off)
    const __m512i h = _mm512_and_si512(_mm512_srli_epi16(v[i], 2), m30);
    const __m512i n = i % 2 ? _mm512_srli_epi16(v[4 + i / 2], 4) : v[4 + i / 2];
    hi[i] = _mm512_ternarylogic_epi32(n, m4, h, 0xEA);  // (n & m4) | h
  }
}

// Either type's sub-block: the lines a sub-block of type Q6 has (kKqLines: 6 or 4) in v, its 8 code
// vectors out (kq4_codes or kq6_codes). What the decode passes and the prefill's W panels both
// call, so that one unpack serves every reader of the records.
template <bool Q6>
constexpr int kKqLines = Q6 ? 6 : 4;
template <bool Q6>
__attribute__((always_inline)) EMOLLM_TARGET_AVX512 inline void kq_codes(const __m512i v[6], __m512i lo[4], __m512i hi[4]) {
  if constexpr (Q6)
    kq6_codes(v, lo, hi);
  else
    kq4_codes(v, lo, hi);
}
#endif

}  // namespace gemm_detail
}  // namespace emollm
