// q4_1, q5_0, q5_1, q4_K, q5_K, q6_K: dequantisation and ggml's reference quantisers.
//
// Bit-exactness with llama.cpp: every float expression below has the operands, types and order
// of the corresponding line of ggml-quants.c (dequantize_row_* and quantize_row_*_ref), and this
// file is compiled without FMA contraction (the baseline x86-64 target has no FMA), as is a
// default ggml reference build. tests/fixtures/ggml_quants/ holds ggml's own outputs, made by
// scripts/fixtures/ggml_quants_ref.c, that the tests compare with byte for byte.
#include "quant_formats.h"

// No fused multiply-add contraction here: the quantisers must produce ggml's bytes exactly, and
// GCC's default -ffp-contract=fast (gnu++17) fuses a*b+c on targets with FMA in the baseline ISA
// (aarch64), which changed q5_K's scale search there (tests/native/test_quant_ext.cpp failed
// under qemu-aarch64 at byte 178; x86-64's baseline has no FMA, so it was not seen there).
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

namespace emollm {

namespace {

// ggml nearest_int: round to nearest (ties to even) through the float mantissa, |f| <= 2^22.
inline int nearest_int(float fval) {
  float val = fval + 12582912.f;
  int i;
  std::memcpy(&i, &val, sizeof(int));
  return (i & 0x007fffff) - 0x00400000;
}

inline float h2f(uint16_t h) { return f16_to_f32(h); }

constexpr float kGroupMaxEps = 1e-15f;  // ggml GROUP_MAX_EPS

// ggml make_qx_quants (rmse_type 1, no importance weights, as quantize_row_q6_K_ref calls it).
float make_qx_quants_rmse1(int n, int nmax, const float* x, int8_t* L) {
  float max = 0;
  float amax = 0;
  for (int i = 0; i < n; ++i) {
    float ax = std::fabs(x[i]);
    if (ax > amax) { amax = ax; max = x[i]; }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = -nmax / max;
  float sumlx = 0;
  float suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * x[i]);
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = int8_t(l + nmax);
    float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * x[i]);
      l = std::max(-nmax, std::min(nmax - 1, l));
      float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]);
        L[i] = int8_t(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// ggml make_qkx2_quants (use_mad false).
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep) {
  float min = x[0];
  float max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    int l = nearest_int(iscale * (x[i] - min));
    L[i] = uint8_t(std::max(0, std::min(nmax, l)));
    float diff = scale * L[i] + min - x[i];
    diff = diff * diff;
    float w = weights[i];
    best_error += w * diff;
  }
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearest_int(iscale * (x[i] - min));
      l = std::max(0, std::min(nmax, l));
      Laux[i] = uint8_t(l);
      float w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * Laux[i] + this_min - x[i];
        diff = diff * diff;
        float w = weights[i];
        cur_error += w * diff;
      }
      if (cur_error < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// ---------------------------------------------------------------- 32-element blocks

void quantize_q4_1(const float* x, BlockQ4_1* y, int64_t nb) {
  for (int64_t i = 0; i < nb; i++) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < 32; j++) {
      const float v = x[i * 32 + j];
      if (v < min) min = v;
      if (v > max) max = v;
    }
    const float d = (max - min) / ((1 << 4) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    y[i].m = f32_to_f16(min);
    for (int j = 0; j < 16; ++j) {
      const float x0 = (x[i * 32 + 0 + j] - min) * id;
      const float x1 = (x[i * 32 + 16 + j] - min) * id;
      const uint8_t xi0 = uint8_t(std::min(15, int(int8_t(x0 + 0.5f))));
      const uint8_t xi1 = uint8_t(std::min(15, int(int8_t(x1 + 0.5f))));
      y[i].qs[j] = uint8_t(xi0 | (xi1 << 4));
    }
  }
}

void quantize_q5_0(const float* x, BlockQ5_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; i++) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; j++) {
      const float v = x[i * 32 + j];
      if (amax < std::fabs(v)) { amax = std::fabs(v); max = v; }
    }
    const float d = max / -16;
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      const float x0 = x[i * 32 + 0 + j] * id;
      const float x1 = x[i * 32 + 16 + j] * id;
      const uint8_t xi0 = uint8_t(std::min(31, int(int8_t(x0 + 16.5f))));
      const uint8_t xi1 = uint8_t(std::min(31, int(int8_t(x1 + 16.5f))));
      y[i].qs[j] = uint8_t((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
      qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
      qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

void quantize_q5_1(const float* x, BlockQ5_1* y, int64_t nb) {
  for (int64_t i = 0; i < nb; i++) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < 32; j++) {
      const float v = x[i * 32 + j];
      if (v < min) min = v;
      if (v > max) max = v;
    }
    const float d = (max - min) / ((1 << 5) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = f32_to_f16(d);
    y[i].m = f32_to_f16(min);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      const float x0 = (x[i * 32 + 0 + j] - min) * id;
      const float x1 = (x[i * 32 + 16 + j] - min) * id;
      const uint8_t xi0 = uint8_t(x0 + 0.5f);
      const uint8_t xi1 = uint8_t(x1 + 0.5f);
      y[i].qs[j] = uint8_t((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
      qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
      qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}

// ---------------------------------------------------------------- k-quants

// Shared by q4_K (nmax 15, rmin -1, nstep 20) and q5_K (nmax 31, rmin -0.5, nstep 15): per
// sub-block scales/mins by make_qkx2_quants, packed to 6 bits, then the quants redone with the
// packed scales. Writes d, dmin, scales[12] and L[256].
void kquant_scales_mins(const float* x, int nmax, float rmin, int nstep, uint16_t* d_out, uint16_t* dmin_out,
                        uint8_t* sc_out, uint8_t* L) {
  uint8_t Laux[32];
  float weights[32];
  float mins[8];
  float scales[8];
  float max_scale = 0;
  float max_min = 0;
  for (int j = 0; j < 8; ++j) {
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
    float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
    scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  for (int j = 0; j < 8; ++j) {
    uint8_t ls = uint8_t(nearest_int(inv_scale * scales[j]));
    uint8_t lm = uint8_t(nearest_int(inv_min * mins[j]));
    ls = std::min<uint8_t>(63, ls);
    lm = std::min<uint8_t>(63, lm);
    if (j < 4) {
      sc_out[j] = ls;
      sc_out[j + 4] = lm;
    } else {
      sc_out[j + 4] = uint8_t((ls & 0xF) | ((lm & 0xF) << 4));
      sc_out[j - 4] |= uint8_t((ls >> 4) << 6);
      sc_out[j - 0] |= uint8_t((lm >> 4) << 6);
    }
  }
  *d_out = f32_to_f16(max_scale / 63.f);
  *dmin_out = f32_to_f16(max_min / 63.f);
  uint8_t sc, m;
  for (int j = 0; j < 8; ++j) {
    kquant_scale_min(j, sc_out, &sc, &m);
    const float d = h2f(*d_out) * sc;
    if (!d) continue;
    const float dm = h2f(*dmin_out) * m;
    for (int ii = 0; ii < 32; ++ii) {
      int l = nearest_int((x[32 * j + ii] + dm) / d);
      l = std::max(0, std::min(nmax, l));
      L[32 * j + ii] = uint8_t(l);
    }
  }
}

void quantize_q4_K(const float* x, BlockQ4_K* y, int64_t nb) {
  uint8_t L[kQKK];
  for (int64_t i = 0; i < nb; i++, x += kQKK) {
    std::memset(y[i].scales, 0, 12);
    kquant_scales_mins(x, 15, -1.f, 20, &y[i].d, &y[i].dmin, y[i].scales, L);
    uint8_t* q = y[i].qs;
    for (int j = 0; j < kQKK; j += 64) {
      for (int l = 0; l < 32; ++l) q[l] = uint8_t(L[j + l] | (L[j + l + 32] << 4));
      q += 32;
    }
  }
}

void quantize_q5_K(const float* x, BlockQ5_K* y, int64_t nb) {
  uint8_t L[kQKK];
  for (int64_t i = 0; i < nb; i++, x += kQKK) {
    std::memset(y[i].scales, 0, 12);
    kquant_scales_mins(x, 31, -0.5f, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
    uint8_t* qh = y[i].qh;
    uint8_t* ql = y[i].qs;
    std::memset(qh, 0, 32);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < kQKK; n += 64) {
      for (int j = 0; j < 32; ++j) {
        int l1 = L[n + j];
        if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
        int l2 = L[n + j + 32];
        if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
        ql[j] = uint8_t(l1 | (l2 << 4));
      }
      m1 = uint8_t(m1 << 2);
      m2 = uint8_t(m2 << 2);
      ql += 32;
    }
  }
}

void quantize_q6_K(const float* x, BlockQ6_K* y, int64_t nb) {
  int8_t L[kQKK];
  float scales[16];
  for (int64_t i = 0; i < nb; i++, x += kQKK) {
    float max_scale = 0;
    float max_abs_scale = 0;
    for (int ib = 0; ib < 16; ++ib) {
      const float scale = make_qx_quants_rmse1(16, 32, x + 16 * ib, L + 16 * ib);
      scales[ib] = scale;
      const float abs_scale = std::fabs(scale);
      if (abs_scale > max_abs_scale) { max_abs_scale = abs_scale; max_scale = scale; }
    }
    if (max_abs_scale < kGroupMaxEps) {
      std::memset(&y[i], 0, sizeof(BlockQ6_K));
      y[i].d = f32_to_f16(0.f);
      continue;
    }
    float iscale = -128.f / max_scale;
    y[i].d = f32_to_f16(1 / iscale);
    for (int ib = 0; ib < 16; ++ib) y[i].scales[ib] = int8_t(std::min(127, nearest_int(iscale * scales[ib])));
    for (int j = 0; j < 16; ++j) {
      float d = h2f(y[i].d) * y[i].scales[j];
      if (!d) continue;
      for (int ii = 0; ii < 16; ++ii) {
        int l = nearest_int(x[16 * j + ii] / d);
        l = std::max(-32, std::min(31, l));
        L[16 * j + ii] = int8_t(l + 32);
      }
    }
    uint8_t* ql = y[i].ql;
    uint8_t* qh = y[i].qh;
    for (int j = 0; j < kQKK; j += 128) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t q1 = L[j + l + 0] & 0xF;
        const uint8_t q2 = L[j + l + 32] & 0xF;
        const uint8_t q3 = L[j + l + 64] & 0xF;
        const uint8_t q4 = L[j + l + 96] & 0xF;
        ql[l + 0] = uint8_t(q1 | (q3 << 4));
        ql[l + 32] = uint8_t(q2 | (q4 << 4));
        qh[l] = uint8_t((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                        ((L[j + l + 96] >> 4) << 6));
      }
      ql += 64;
      qh += 32;
    }
  }
}

}  // namespace

bool dtype_is_ext_quant(DType t) {
  switch (t) {
    case DType::Q4_1: case DType::Q5_0: case DType::Q5_1:
    case DType::Q4_K: case DType::Q5_K: case DType::Q6_K: return true;
    default: return false;
  }
}

void dequantize_row_ext(DType t, const void* src, float* y, int64_t n) {
  switch (t) {
    case DType::Q4_1: {
      const BlockQ4_1* x = static_cast<const BlockQ4_1*>(src);
      for (int64_t i = 0; i < n / 32; i++) {
        const float d = h2f(x[i].d), m = h2f(x[i].m);
        for (int j = 0; j < 16; ++j) {
          const int x0 = x[i].qs[j] & 0x0F, x1 = x[i].qs[j] >> 4;
          y[i * 32 + j] = x0 * d + m;
          y[i * 32 + j + 16] = x1 * d + m;
        }
      }
      return;
    }
    case DType::Q5_0: {
      const BlockQ5_0* x = static_cast<const BlockQ5_0*>(src);
      for (int64_t i = 0; i < n / 32; i++) {
        const float d = h2f(x[i].d);
        uint32_t qh;
        std::memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < 16; ++j) {
          const uint8_t xh_0 = uint8_t(((qh >> (j + 0)) << 4) & 0x10);
          const uint8_t xh_1 = uint8_t(((qh >> (j + 12))) & 0x10);
          const int32_t x0 = ((x[i].qs[j] & 0x0F) | xh_0) - 16;
          const int32_t x1 = ((x[i].qs[j] >> 4) | xh_1) - 16;
          y[i * 32 + j] = x0 * d;
          y[i * 32 + j + 16] = x1 * d;
        }
      }
      return;
    }
    case DType::Q5_1: {
      const BlockQ5_1* x = static_cast<const BlockQ5_1*>(src);
      for (int64_t i = 0; i < n / 32; i++) {
        const float d = h2f(x[i].d), m = h2f(x[i].m);
        uint32_t qh;
        std::memcpy(&qh, x[i].qh, 4);
        for (int j = 0; j < 16; ++j) {
          const uint8_t xh_0 = uint8_t(((qh >> (j + 0)) << 4) & 0x10);
          const uint8_t xh_1 = uint8_t(((qh >> (j + 12))) & 0x10);
          const int x0 = (x[i].qs[j] & 0x0F) | xh_0;
          const int x1 = (x[i].qs[j] >> 4) | xh_1;
          y[i * 32 + j] = x0 * d + m;
          y[i * 32 + j + 16] = x1 * d + m;
        }
      }
      return;
    }
    case DType::Q4_K: {
      const BlockQ4_K* x = static_cast<const BlockQ4_K*>(src);
      for (int64_t i = 0; i < n / kQKK; i++) {
        const uint8_t* q = x[i].qs;
        const float d = h2f(x[i].d), min = h2f(x[i].dmin);
        int is = 0;
        uint8_t sc, m;
        for (int j = 0; j < kQKK; j += 64) {
          kquant_scale_min(is + 0, x[i].scales, &sc, &m);
          const float d1 = d * sc, m1 = min * m;
          kquant_scale_min(is + 1, x[i].scales, &sc, &m);
          const float d2 = d * sc, m2 = min * m;
          for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
          for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
          q += 32;
          is += 2;
        }
      }
      return;
    }
    case DType::Q5_K: {
      const BlockQ5_K* x = static_cast<const BlockQ5_K*>(src);
      for (int64_t i = 0; i < n / kQKK; i++) {
        const uint8_t* ql = x[i].qs;
        const uint8_t* qh = x[i].qh;
        const float d = h2f(x[i].d), min = h2f(x[i].dmin);
        int is = 0;
        uint8_t sc, m;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < kQKK; j += 64) {
          kquant_scale_min(is + 0, x[i].scales, &sc, &m);
          const float d1 = d * sc, m1 = min * m;
          kquant_scale_min(is + 1, x[i].scales, &sc, &m);
          const float d2 = d * sc, m2 = min * m;
          for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
          for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
          ql += 32;
          is += 2;
          u1 = uint8_t(u1 << 2);
          u2 = uint8_t(u2 << 2);
        }
      }
      return;
    }
    case DType::Q6_K: {
      const BlockQ6_K* x = static_cast<const BlockQ6_K*>(src);
      for (int64_t i = 0; i < n / kQKK; i++) {
        const float d = h2f(x[i].d);
        const uint8_t* ql = x[i].ql;
        const uint8_t* qh = x[i].qh;
        const int8_t* sc = x[i].scales;
        for (int k = 0; k < kQKK; k += 128) {
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int8_t q1 = int8_t(int8_t((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
            const int8_t q2 = int8_t(int8_t((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
            const int8_t q3 = int8_t(int8_t((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
            const int8_t q4 = int8_t(int8_t((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            y[l + 0] = d * sc[is + 0] * q1;
            y[l + 32] = d * sc[is + 2] * q2;
            y[l + 64] = d * sc[is + 4] * q3;
            y[l + 96] = d * sc[is + 6] * q4;
          }
          y += 128;
          ql += 64;
          qh += 32;
          sc += 8;
        }
      }
      return;
    }
    default:
      return;
  }
}

void quantize_row_ext(DType t, const float* src, void* dst, int64_t n) {
  switch (t) {
    case DType::Q4_1: return quantize_q4_1(src, static_cast<BlockQ4_1*>(dst), n / 32);
    case DType::Q5_0: return quantize_q5_0(src, static_cast<BlockQ5_0*>(dst), n / 32);
    case DType::Q5_1: return quantize_q5_1(src, static_cast<BlockQ5_1*>(dst), n / 32);
    case DType::Q4_K: return quantize_q4_K(src, static_cast<BlockQ4_K*>(dst), n / kQKK);
    case DType::Q5_K: return quantize_q5_K(src, static_cast<BlockQ5_K*>(dst), n / kQKK);
    case DType::Q6_K: return quantize_q6_K(src, static_cast<BlockQ6_K*>(dst), n / kQKK);
    default: return;
  }
}

}  // namespace emollm
