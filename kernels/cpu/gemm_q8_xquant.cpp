// X rows rounded to q8_0 straight into the VNNI GEMMs' X panels (gemm_q8_xpanel.h) on AVX-512:
// the same bits as qx_quantize_row_avx2 followed by Q8XPanels' scalar packing, without the row
// buffer, the per-byte sums and the dword copies (those were ~40% of a 512 x 11008 X's rounding).
//
// Same bits: per block the scale is d = amax / 127 with amax the largest |x| of its 32 values; a
// maximum does not depend on the order it is taken in unless a value is NaN (max_ps returns its
// second operand then), so a group of blocks holding a NaN is rounded by qx_quantize_row_avx2
// itself. id = 1 / d (0 when d = 0), d_x = fp16(d), q = round-half-away(x * id) and the int8
// saturation are the same IEEE operations on 16 lanes instead of 8 (int32 -> int8 saturation in
// one step equals the two saturating packs). The block sums are taken of the saturated bytes.
#include "gemm_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "simd_vec.h"

namespace emollm {
namespace gemm_detail {
namespace {

#define EMO_T5 EMOLLM_TARGET_AVX512

// Where row i's 8 quads of a block go: dword q*MR + i of the block, i.e. zmm z (dwords 16z ..
// 16z + 15) takes lane l = q*MR + i - 16z from quad q.
struct QuadPlace {
  alignas(64) int32_t idx[8][16];
  __mmask16 mask[8];
  int nz;
};

void quad_place(int mr, int i, QuadPlace* p) {
  *p = QuadPlace{};
  p->nz = (8 * mr + 15) / 16;
  for (int z = 0; z < p->nz; ++z) {
    unsigned m = 0;
    for (int q = 0; q < 8; ++q) {
      const int l = q * mr + i - 16 * z;
      if (l >= 0 && l < 16) p->idx[z][l] = q, m |= 1u << l;
    }
    p->mask[z] = __mmask16(m);
  }
}

// The 32 int8 values of 16 + 16 int32 lanes (saturated), in element order.
EMO_T5 inline __m256i narrow(__m512i a, __m512i b) {
  return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtsepi32_epi8(a)), _mm512_cvtsepi32_epi8(b), 1);
}

// On at start; off (the row rounding, then the scalar packing: what CPUs below AVX-512 run) for
// qx_pack_fused_same_bits. No environment variable: EMOLLM_QX_PACK_FUSED went in session 22.
std::atomic<bool> g_fused{true};

}  // namespace

void set_qx_pack_fused(bool on) { g_fused.store(on, std::memory_order_relaxed); }
bool qx_pack_fused() { return g_fused.load(std::memory_order_relaxed); }

namespace {
// Rounds blocks [b0, b0 + n) (n <= 4) of the row at x: q[j] its 32 int8 values in element order,
// dx[j] its d_x (fp16-rounded scale as f32).
EMO_T5 inline void round_group(const float* x, int64_t b0, int n, __m256i* q, float* dx) {
  const __m512 sb = _mm512_set1_ps(-0.0f);
  __m512 v[4][2];
  __mmask16 nan = 0;
  for (int j = 0; j < 4; ++j)
    for (int h = 0; h < 2; ++h) {
      v[j][h] = j < n ? _mm512_loadu_ps(x + (b0 + j) * kQK + 16 * h) : _mm512_setzero_ps();
      nan |= _mm512_cmp_ps_mask(v[j][h], v[j][h], _CMP_UNORD_Q);
    }
  if (nan) {  // the order of max_ps matters with a NaN: the AVX2 rounding itself
    alignas(32) int8_t qs[kQK];
    alignas(32) float dxe[8];
    for (int j = 0; j < n; ++j) {
      qx_quantize_row_avx2(x + (b0 + j) * kQK, kQK, qs, dxe, nullptr, 0);
      q[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(qs));
      dx[j] = dxe[0];
    }
    return;
  }
  // the 4 blocks' amax side by side: lanes 0..3 of am
  __m512 a[4];
  for (int j = 0; j < 4; ++j) a[j] = _mm512_max_ps(_mm512_andnot_ps(sb, v[j][0]), _mm512_andnot_ps(sb, v[j][1]));
  const __m512 t0 = _mm512_max_ps(_mm512_unpacklo_ps(a[0], a[1]), _mm512_unpackhi_ps(a[0], a[1]));
  const __m512 t1 = _mm512_max_ps(_mm512_unpacklo_ps(a[2], a[3]), _mm512_unpackhi_ps(a[2], a[3]));
  __m512 u = _mm512_max_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
  u = _mm512_max_ps(u, _mm512_shuffle_f32x4(u, u, _MM_SHUFFLE(1, 0, 3, 2)));
  u = _mm512_max_ps(u, _mm512_shuffle_f32x4(u, u, _MM_SHUFFLE(2, 3, 0, 1)));
  const __m128 am = _mm512_castps512_ps128(u);
  const __m128 d = _mm_div_ps(am, _mm_set1_ps(127.0f));
  const __m128 id = _mm_maskz_div_ps(_mm_cmp_ps_mask(d, _mm_setzero_ps(), _CMP_NEQ_UQ), _mm_set1_ps(1.0f), d);
  _mm_storeu_ps(dx, _mm_cvtph_ps(_mm_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT)));
  const __m512 idz = _mm512_castps128_ps512(id);
  for (int j = 0; j < n; ++j) {
    const __m512 vid = _mm512_permutexvar_ps(_mm512_set1_epi32(j), idz);
    const __m512i q0 = _mm512_cvtps_epi32(simd::F32x16::round_away(_mm512_mul_ps(v[j][0], vid)));
    const __m512i q1 = _mm512_cvtps_epi32(simd::F32x16::round_away(_mm512_mul_ps(v[j][1], vid)));
    q[j] = narrow(q0, q1);
  }
}

// Row i's tail dwords of one block (its quads already stored): the corrections and d_x (and for
// PerHalf d_x times the block sum), from the block's int8 values q.
EMO_T5 inline void put_tail(int32_t* ob, __m256i q, float dx, int mr, int i, int tail, int off) {
  // sums of the signed bytes: |sad of (q + 128)| - 128 per byte, 8 bytes a 64-bit lane
  const __m256i s = _mm256_sad_epu8(_mm256_xor_si256(q, _mm256_set1_epi8(char(0x80))), _mm256_setzero_si256());
  const int32_t s0 = int32_t(_mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1)) - 16 * 128;
  const int32_t s1 = int32_t(_mm256_extract_epi64(s, 2) + _mm256_extract_epi64(s, 3)) - 16 * 128;
  if (tail == 2) {
    ob[8 * mr + i] = -off * (s0 + s1);
    std::memcpy(&ob[9 * mr + i], &dx, 4);
  } else {
    ob[8 * mr + i] = -off * s0;
    ob[9 * mr + i] = -off * s1;
    const float dxs = dx * float(s0 + s1);
    std::memcpy(&ob[10 * mr + i], &dx, 4);
    std::memcpy(&ob[11 * mr + i], &dxs, 4);
  }
}

// One block of row i: q (the 32 int8 values in element order), d_x.
EMO_T5 inline void put_block(int32_t* ob, __m256i q, float dx, int mr, int i, int tail, int off, const QuadPlace& pl) {
  const __m512i qz = _mm512_castsi256_si512(q);
  for (int z = 0; z < pl.nz; ++z)
    _mm512_mask_storeu_epi32(ob + 16 * z, pl.mask[z], _mm512_permutexvar_epi32(_mm512_load_si512(pl.idx[z]), qz));
  put_tail(ob, q, dx, mr, i, tail, off);
}

// On at start; off: each of a 4-row panel's rows by qx_pack_row_avx512 (qx_pack_panel4_same_bits).
std::atomic<bool> g_panel4{true};
}  // namespace

void set_qx_pack_panel4(bool on) { g_panel4.store(on, std::memory_order_relaxed); }
bool qx_pack_panel4() { return g_panel4.load(std::memory_order_relaxed); }

EMO_T5 void qx_pack_row_avx512(const float* x, int64_t K, int mr, int i, int tail, int off, int32_t* out) {
  const int64_t nb = K / kQK, bd = int64_t(8 + tail) * mr;
  QuadPlace pl;
  quad_place(mr, i, &pl);
  for (int64_t b0 = 0; b0 < nb; b0 += 4) {
    const int n = int(std::min<int64_t>(4, nb - b0));
    __m256i q[4];
    alignas(16) float dx[4];
    round_group(x, b0, n, q, dx);
    for (int j = 0; j < n; ++j) put_block(out + (b0 + j) * bd, q[j], dx[j], mr, i, tail, off, pl);
  }
}

// The 4 rows of a whole panel at once: each row's blocks rounded as qx_pack_row_avx512 rounds them
// (round_group: the same operations), then per block the 4 rows' 8 quads interleaved in registers
// (dword q * 4 + i = row i's quad q: two vpermt2d) and stored whole: 2 full 64-byte stores a block
// instead of 8 masked ones, the same dwords.
EMO_T5 void qx_pack_panel4_avx512(const float* x, int64_t ldx, int64_t K, int tail, int off, int32_t* out) {
  constexpr int mr = 4;
  const int64_t nb = K / kQK, bd = int64_t(8 + tail) * mr;
  // lane l = q * 4 + i of the quads' first (q < 4) / second (q >= 4) zmm takes row i's dword q from
  // A = [row 0 | row 1] (indices 0-15) or B = [row 2 | row 3] (16-31)
  alignas(64) int32_t lo[16], hi[16];
  for (int l = 0; l < 16; ++l) {
    const int q = l / 4, i = l % 4;
    lo[l] = 16 * (i / 2) + 8 * (i % 2) + q;
    hi[l] = lo[l] + 4;
  }
  const __m512i ilo = _mm512_load_si512(lo), ihi = _mm512_load_si512(hi);
  for (int64_t b0 = 0; b0 < nb; b0 += 4) {
    const int n = int(std::min<int64_t>(4, nb - b0));
    __m256i q[4][4];
    alignas(16) float dx[4][4];
    for (int i = 0; i < mr; ++i) round_group(x + i * ldx, b0, n, q[i], dx[i]);
    for (int j = 0; j < n; ++j) {
      int32_t* ob = out + (b0 + j) * bd;
      const __m512i a = _mm512_inserti64x4(_mm512_castsi256_si512(q[0][j]), q[1][j], 1);
      const __m512i b = _mm512_inserti64x4(_mm512_castsi256_si512(q[2][j]), q[3][j], 1);
      _mm512_storeu_si512(ob, _mm512_permutex2var_epi32(a, ilo, b));
      _mm512_storeu_si512(ob + 16, _mm512_permutex2var_epi32(a, ihi, b));
      for (int i = 0; i < mr; ++i) put_tail(ob, q[i][j], dx[i][j], mr, i, tail, off);
    }
  }
}

}  // namespace gemm_detail
}  // namespace emollm

#endif  // __x86_64__
