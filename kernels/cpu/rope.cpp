// Rotary position embedding (kernels.h), in place.
//
// For pair index i < rot_dim/2 the angle is  position * freq_scale * inv_freq[i]  with
// inv_freq[i] = theta^(-2i/rot_dim) (or p.inv_freq[i] when given). Angles, cos and sin are
// computed in double once per token and shared by all heads, then rounded to f32 (the vector
// paths use a vectorised double sincos from simd_math.h: ~1 ns per pair instead of ~25 ns).
//   RotateHalf  (Hugging Face rotate_half): pairs (i, i + rot_dim/2)
//   Interleaved (GGUF / llama.cpp NORM, Meta): pairs (2i, 2i + 1)
// For each pair (a, b): a' = a cos - b sin, b' = b cos + a sin. Dims >= rot_dim are untouched.
#include "simd_math.h"  // first: see the note on GCC 12 warnings there

#include <cmath>
#include <vector>

#include "elementwise_ref.h"
#include "row_parallel.h"

#include "../../base/error.h"

namespace emollm {

namespace detail {

int64_t rope_rot_dim(const RopeParams& p) {
  EMOLLM_CHECK_ARG(p.head_dim > 0, "rope: head_dim must be > 0");
  const int64_t rot = p.rot_dim == 0 ? p.head_dim : p.rot_dim;
  EMOLLM_CHECK_ARG(rot > 0 && rot <= p.head_dim && rot % 2 == 0,
                   "rope: rot_dim must be even and in (0, head_dim], got " + std::to_string(rot));
  return rot;
}

void rope_inv_freq(const RopeParams& p, int64_t rot_dim, double* inv_freq_d) {
  const int64_t half = rot_dim / 2;
  for (int64_t i = 0; i < half; ++i)
    inv_freq_d[i] = p.inv_freq ? double(p.inv_freq[i])
                               : std::pow(double(p.theta), -double(2 * i) / double(rot_dim));
}

void rope_cos_sin(int32_t position, float freq_scale, const double* inv_freq_d, int64_t half,
                  float* cos_out, float* sin_out) {
  const double pos = double(position) * double(freq_scale);
  for (int64_t i = 0; i < half; ++i) {
    const double a = pos * inv_freq_d[i];
    cos_out[i] = float(std::cos(a));
    sin_out[i] = float(std::sin(a));
  }
}

}  // namespace detail

namespace {
void check_rope(int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions, const RopeParams& p) {
  EMOLLM_CHECK_ARG(n_tokens >= 0 && n_heads >= 0, "rope: n_tokens and n_heads must be >= 0");
  EMOLLM_CHECK_ARG(n_tokens <= 1 || ld >= n_heads * p.head_dim, "rope: ld smaller than n_heads * head_dim");
  EMOLLM_CHECK_ARG(n_tokens == 0 || positions != nullptr, "rope: positions is null");
  EMOLLM_CHECK_ARG(p.theta > 0 || p.inv_freq != nullptr, "rope: theta must be > 0");
}
}  // namespace

namespace ref {

void rope(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
          const RopeParams& p) {
  const int64_t rot = detail::rope_rot_dim(p);
  check_rope(ld, n_tokens, n_heads, positions, p);
  const int64_t half = rot / 2;
  std::vector<double> invf(half);
  std::vector<float> cs(2 * half);
  float* cosv = cs.data();
  float* sinv = cs.data() + half;
  detail::rope_inv_freq(p, rot, invf.data());
  for (int64_t t = 0; t < n_tokens; ++t) {
    detail::rope_cos_sin(positions[t], p.freq_scale, invf.data(), half, cosv, sinv);
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + t * ld + h * p.head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const int64_t ia = p.layout == RopeLayout::RotateHalf ? i : 2 * i;
        const int64_t ib = p.layout == RopeLayout::RotateHalf ? i + half : 2 * i + 1;
        const float a = v[ia], b = v[ib], c = cosv[i], s = sinv[i];
        v[ia] = a * c - b * s;
        v[ib] = b * c + a * s;
      }
    }
  }
}

}  // namespace ref

#if defined(__x86_64__)
namespace {

// RotateHalf: c, s hold half values. Interleaved: c, s hold rot values, c = (c0,c0,c1,c1..),
// s = (-s0,+s0,-s1,+s1..), so v' = v * c + swap_pairs(v) * s.
// cos/sin of pos * inv_freq[i] for i < half; inv_freq, cos_out, sin_out padded to a multiple of 8.
EMOLLM_TARGET_AVX512 void cos_sin_avx512(double pos, const double* invf, int64_t half, float* cos_out, float* sin_out) {
  const __m512d p = _mm512_set1_pd(pos);
  for (int64_t i = 0; i < half; i += 8) {
    __m512d s, c;
    simd::sincos512_pd(_mm512_mul_pd(p, _mm512_loadu_pd(invf + i)), &s, &c);
    _mm256_storeu_ps(cos_out + i, _mm512_cvtpd_ps(c));
    _mm256_storeu_ps(sin_out + i, _mm512_cvtpd_ps(s));
  }
}
EMOLLM_TARGET_AVX2 void cos_sin_avx2(double pos, const double* invf, int64_t half, float* cos_out, float* sin_out) {
  const __m256d p = _mm256_set1_pd(pos);
  for (int64_t i = 0; i < half; i += 4) {
    __m256d s, c;
    simd::sincos256_pd(_mm256_mul_pd(p, _mm256_loadu_pd(invf + i)), &s, &c);
    _mm_storeu_ps(cos_out + i, _mm256_cvtpd_ps(c));
    _mm_storeu_ps(sin_out + i, _mm256_cvtpd_ps(s));
  }
}

EMOLLM_TARGET_AVX512 void rope_head_avx512(float* v, const float* c, const float* s, int64_t half, bool interleaved) {
  if (interleaved) {
    const int64_t rot = 2 * half;
    for (int64_t j = 0; j < rot; j += 16) {
      __mmask16 k = simd::tail_mask16(rot - j);
      __m512 a = _mm512_maskz_loadu_ps(k, v + j);
      __m512 sw = _mm512_permute_ps(a, 0xB1);
      __m512 r = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(k, c + j), _mm512_mul_ps(sw, _mm512_maskz_loadu_ps(k, s + j)));
      _mm512_mask_storeu_ps(v + j, k, r);
    }
  } else {
    for (int64_t j = 0; j < half; j += 16) {
      __mmask16 k = simd::tail_mask16(half - j);
      __m512 a = _mm512_maskz_loadu_ps(k, v + j);
      __m512 b = _mm512_maskz_loadu_ps(k, v + half + j);
      __m512 cc = _mm512_maskz_loadu_ps(k, c + j), ss = _mm512_maskz_loadu_ps(k, s + j);
      _mm512_mask_storeu_ps(v + j, k, _mm512_fmsub_ps(a, cc, _mm512_mul_ps(b, ss)));
      _mm512_mask_storeu_ps(v + half + j, k, _mm512_fmadd_ps(b, cc, _mm512_mul_ps(a, ss)));
    }
  }
}

// AVX2: full vectors with plain loads/stores (VMASKMOVPS stores are microcoded and slow on AMD);
// masks only for the last partial vector.
EMOLLM_TARGET_AVX2 void rope_head_avx2(float* v, const float* c, const float* s, int64_t half, bool interleaved) {
  if (interleaved) {
    const int64_t rot = 2 * half;
    int64_t j = 0;
    for (; j + 8 <= rot; j += 8) {
      __m256 a = _mm256_loadu_ps(v + j);
      __m256 sw = _mm256_permute_ps(a, 0xB1);
      _mm256_storeu_ps(v + j, _mm256_fmadd_ps(a, _mm256_loadu_ps(c + j), _mm256_mul_ps(sw, _mm256_loadu_ps(s + j))));
    }
    if (j < rot) {
      __m256i k = simd::tail_mask8(rot - j);
      __m256 a = _mm256_maskload_ps(v + j, k);
      __m256 sw = _mm256_permute_ps(a, 0xB1);
      __m256 r = _mm256_fmadd_ps(a, _mm256_maskload_ps(c + j, k), _mm256_mul_ps(sw, _mm256_maskload_ps(s + j, k)));
      _mm256_maskstore_ps(v + j, k, r);
    }
  } else {
    int64_t j = 0;
    for (; j + 8 <= half; j += 8) {
      __m256 a = _mm256_loadu_ps(v + j), b = _mm256_loadu_ps(v + half + j);
      __m256 cc = _mm256_loadu_ps(c + j), ss = _mm256_loadu_ps(s + j);
      _mm256_storeu_ps(v + j, _mm256_fmsub_ps(a, cc, _mm256_mul_ps(b, ss)));
      _mm256_storeu_ps(v + half + j, _mm256_fmadd_ps(b, cc, _mm256_mul_ps(a, ss)));
    }
    if (j < half) {
      __m256i k = simd::tail_mask8(half - j);
      __m256 a = _mm256_maskload_ps(v + j, k);
      __m256 b = _mm256_maskload_ps(v + half + j, k);
      __m256 cc = _mm256_maskload_ps(c + j, k), ss = _mm256_maskload_ps(s + j, k);
      _mm256_maskstore_ps(v + j, k, _mm256_fmsub_ps(a, cc, _mm256_mul_ps(b, ss)));
      _mm256_maskstore_ps(v + half + j, k, _mm256_fmadd_ps(b, cc, _mm256_mul_ps(a, ss)));
    }
  }
}

}  // namespace
#endif

namespace {
// One tensor rope() rotates: n_heads heads of head_dim per token row, rows ld apart.
struct RopeTarget {
  float* x;
  int64_t ld;
  int64_t n_heads;
};

// Rotates each of the n_targets tensors' rows [0, n_tokens) (positions[t] for row t of every
// one); a token's cos / sin are computed once for all of them.
void rope_tokens(const RopeTarget* targets, int n_targets, int64_t n_tokens, const int32_t* positions,
                 const RopeParams& p) {
  const detail::EltPath path = detail::elt_path();
  if (path == detail::EltPath::Scalar) {
    for (int i = 0; i < n_targets; ++i)
      ref::rope(targets[i].x, targets[i].ld, n_tokens, targets[i].n_heads, positions, p);
    return;
  }
#if defined(__x86_64__)
  const int64_t rot = detail::rope_rot_dim(p);
  const int64_t half = rot / 2;
  const bool interleaved = p.layout == RopeLayout::Interleaved;
  const int64_t half_pad = (half + 7) / 8 * 8;
  // inv_freq from theta alone is the same every call (a decoder ropes twice a layer): kept per
  // thread for the last (theta, rot_dim), so the pow()s run once, not every call.
  thread_local std::vector<double> cached;
  thread_local float cached_theta = 0;
  thread_local int64_t cached_rot = 0;
  std::vector<double> own;
  std::vector<double>* invf_v = &own;
  if (!p.inv_freq) {
    invf_v = &cached;
    if (cached_theta != p.theta || cached_rot != rot || int64_t(cached.size()) != half_pad) {
      cached.assign(size_t(half_pad), 0.0);
      detail::rope_inv_freq(p, rot, cached.data());
      cached_theta = p.theta;
      cached_rot = rot;
    }
  } else {
    own.assign(size_t(half_pad), 0.0);
    detail::rope_inv_freq(p, rot, own.data());
  }
  const std::vector<double>& invf = *invf_v;
  // cos/sin for one token (vectorised sincos in double, the same values as the reference's
  // std::cos/std::sin to ~1e-16 before rounding to f32), then (interleaved) expanded to rot
  // entries with signs baked in.
  std::vector<float> buf(2 * half_pad + 2 * rot);
  float* c = buf.data();
  float* s = c + half_pad;
  float* ce = s + half_pad;
  float* se = ce + rot;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const double pos = double(positions[t]) * double(p.freq_scale);
    if (path == detail::EltPath::Avx512) cos_sin_avx512(pos, invf.data(), half, c, s);
    else cos_sin_avx2(pos, invf.data(), half, c, s);
    const float* cu = c;
    const float* su = s;
    if (interleaved) {
      for (int64_t i = 0; i < half; ++i) {
        ce[2 * i] = ce[2 * i + 1] = c[i];
        se[2 * i] = -s[i];
        se[2 * i + 1] = s[i];
      }
      cu = ce;
      su = se;
    }
    for (int i = 0; i < n_targets; ++i)
      for (int64_t h = 0; h < targets[i].n_heads; ++h) {
        float* v = targets[i].x + t * targets[i].ld + h * p.head_dim;
        if (path == detail::EltPath::Avx512) rope_head_avx512(v, cu, su, half, interleaved);
        else rope_head_avx2(v, cu, su, half, interleaved);
      }
  }
#endif
}

}  // namespace

void rope(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
          const RopeParams& p, ThreadPool* pool) {
  detail::rope_rot_dim(p);  // argument checks before any split
  check_rope(ld, n_tokens, n_heads, positions, p);
  detail::for_rows(pool, n_tokens, n_heads * p.head_dim, [&](int64_t t0, int64_t t1) {
    const RopeTarget target{x + t0 * ld, ld, n_heads};
    rope_tokens(&target, 1, t1 - t0, positions + t0, p);
  });
}

void rope_pair(float* a, int64_t lda, int64_t heads_a, float* b, int64_t ldb, int64_t heads_b, int64_t n_tokens,
               const int32_t* positions, const RopeParams& p, ThreadPool* pool) {
  detail::rope_rot_dim(p);
  check_rope(lda, n_tokens, heads_a, positions, p);
  check_rope(ldb, n_tokens, heads_b, positions, p);
  detail::for_rows(pool, n_tokens, (heads_a + heads_b) * p.head_dim, [&](int64_t t0, int64_t t1) {
    const RopeTarget targets[2] = {{a + t0 * lda, lda, heads_a}, {b + t0 * ldb, ldb, heads_b}};
    rope_tokens(targets, 2, t1 - t0, positions + t0, p);
  });
}

}  // namespace emollm
