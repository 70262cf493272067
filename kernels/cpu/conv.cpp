// Convolution and pooling kernels, NHWC f32 (kernels.h, "convolution and pooling").
//
// Paths: scalar references (ref::*, also what Isa::Scalar runs), AVX2 and AVX-512. The vector
// paths vectorise over channels (the contiguous NHWC axis): a dense conv keeps up to 4 vectors
// of output channels in registers and broadcasts one input value per FMA; depthwise conv and
// pooling load a vector of channels per tap. Tails use masks. Work is split over output rows.
// The dense conv pixels, the pooling rows and the activation pass are written once over the
// vector width (conv_rows.inc, compiled here for AVX-512 and AVX2, each ISA's own instructions for
// tails, activation and max in ConvOps512 / ConvOps256); depthwise conv keeps a kernel per ISA
// (AVX-512 walks interior pixels 4 at a time, AVX2 one at a time).
// The 1x1 (pointwise) convolution is a GEMM (kernels/cpu/gemm*.cpp) plus an activation pass.
//
// Summation order: bias first, then taps in (ky, kx, ic) order, as the reference does, so the
// vector paths differ from the reference only by FMA rounding (one rounding per tap instead of
// two). Pooling is bit-exact across paths.
#include "simd_math.h"  // first: see the note on GCC 12 warnings there
#include "simd_vec.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels.h"

#include "../../base/error.h"

namespace emollm {

void conv_geometry(int64_t in, int64_t k, int64_t stride, bool same, int64_t* out, int64_t* pad_before) {
  EMOLLM_CHECK_ARG(in > 0 && k > 0 && stride > 0, "conv_geometry: sizes must be positive");
  if (same) {
    const int64_t o = (in + stride - 1) / stride;
    const int64_t total = std::max<int64_t>((o - 1) * stride + k - in, 0);
    *out = o;
    *pad_before = total / 2;
  } else {
    EMOLLM_CHECK_ARG(in >= k, "conv_geometry: 'valid' needs in >= k");
    *out = (in - k) / stride + 1;
    *pad_before = 0;
  }
}

namespace {

void check_params(const Conv2dParams& p, const char* what, bool same_channels) {
  EMOLLM_CHECK_ARG(p.batch > 0 && p.in_h > 0 && p.in_w > 0 && p.in_c > 0 && p.out_h > 0 && p.out_w > 0 && p.out_c > 0,
                   std::string(what) + ": sizes must be positive");
  EMOLLM_CHECK_ARG(p.k_h > 0 && p.k_w > 0 && p.stride_h > 0 && p.stride_w > 0,
                   std::string(what) + ": kernel and stride must be positive");
  EMOLLM_CHECK_ARG(p.pad_top >= 0 && p.pad_left >= 0 && p.pad_top < p.k_h && p.pad_left < p.k_w,
                   std::string(what) + ": padding must be in [0, k)");
  // Every output window must touch the image (otherwise pooling has no taps).
  EMOLLM_CHECK_ARG((p.out_h - 1) * p.stride_h - p.pad_top < p.in_h && (p.out_w - 1) * p.stride_w - p.pad_left < p.in_w,
                   std::string(what) + ": output larger than the padded input");
  if (same_channels) EMOLLM_CHECK_ARG(p.out_c == p.in_c, std::string(what) + ": out_c must equal in_c");
}

// Valid tap range [k0, k1) of a window starting at input coordinate `start`.
inline void tap_range(int64_t start, int64_t k, int64_t in, int64_t* k0, int64_t* k1) {
  *k0 = start < 0 ? -start : 0;
  *k1 = std::min<int64_t>(k, in - start);
}

inline float act_scalar(float v, ConvActivation act, float alpha) {
  switch (act) {
    case ConvActivation::Relu: return v > 0.0f ? v : 0.0f;
    case ConvActivation::LeakyRelu: return v > 0.0f ? v : alpha * v;
    default: return v;
  }
}

// Runs fn(row_begin, row_end) over batch * out_h output rows.
template <class Fn>
void for_rows(const Conv2dParams& p, ThreadPool* pool, int64_t row_cost, Fn&& fn) {
  const int64_t rows = p.batch * p.out_h;
  // ~64k multiply-adds per chunk at least, so tiny layers stay on one thread.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, row_cost));
  if (!pool || pool->size() <= 1 || rows <= grain) {
    fn(int64_t(0), rows);
    return;
  }
  pool->parallel_for(rows, grain, [&](int64_t b, int64_t e) { fn(b, e); });
}

}  // namespace

// ------------------------------------------------------------------ scalar references
namespace ref {

void conv_activation(const float* x, float* y, int64_t n, ConvActivation act, float alpha) {
  for (int64_t i = 0; i < n; ++i) y[i] = act_scalar(x[i], act, alpha);
}

void conv2d_nhwc(const float* x, const float* w, const float* bias, float* y, const Conv2dParams& p) {
  check_params(p, "conv2d_nhwc", false);
  const int64_t C = p.in_c, OC = p.out_c;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t oy = 0; oy < p.out_h; ++oy)
      for (int64_t ox = 0; ox < p.out_w; ++ox) {
        float* yp = y + ((b * p.out_h + oy) * p.out_w + ox) * OC;
        const int64_t iy0 = oy * p.stride_h - p.pad_top, ix0 = ox * p.stride_w - p.pad_left;
        int64_t ky0, ky1, kx0, kx1;
        tap_range(iy0, p.k_h, p.in_h, &ky0, &ky1);
        tap_range(ix0, p.k_w, p.in_w, &kx0, &kx1);
        for (int64_t oc = 0; oc < OC; ++oc) {
          float acc = bias ? bias[oc] : 0.0f;
          for (int64_t ky = ky0; ky < ky1; ++ky)
            for (int64_t kx = kx0; kx < kx1; ++kx) {
              const float* xp = x + ((b * p.in_h + iy0 + ky) * p.in_w + ix0 + kx) * C;
              const float* wp = w + (ky * p.k_w + kx) * C * OC + oc;
              for (int64_t ic = 0; ic < C; ++ic) acc += xp[ic] * wp[ic * OC];
            }
          yp[oc] = act_scalar(acc, p.act, p.alpha);
        }
      }
}

void depthwise_conv2d_nhwc(const float* x, const float* w, const float* bias, float* y, const Conv2dParams& p) {
  check_params(p, "depthwise_conv2d_nhwc", true);
  const int64_t C = p.in_c;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t oy = 0; oy < p.out_h; ++oy)
      for (int64_t ox = 0; ox < p.out_w; ++ox) {
        float* yp = y + ((b * p.out_h + oy) * p.out_w + ox) * C;
        const int64_t iy0 = oy * p.stride_h - p.pad_top, ix0 = ox * p.stride_w - p.pad_left;
        int64_t ky0, ky1, kx0, kx1;
        tap_range(iy0, p.k_h, p.in_h, &ky0, &ky1);
        tap_range(ix0, p.k_w, p.in_w, &kx0, &kx1);
        for (int64_t c = 0; c < C; ++c) {
          float acc = bias ? bias[c] : 0.0f;
          for (int64_t ky = ky0; ky < ky1; ++ky)
            for (int64_t kx = kx0; kx < kx1; ++kx)
              acc += x[((b * p.in_h + iy0 + ky) * p.in_w + ix0 + kx) * C + c] * w[(ky * p.k_w + kx) * C + c];
          yp[c] = act_scalar(acc, p.act, p.alpha);
        }
      }
}

namespace {
template <bool kMax>
void pool_ref(const float* x, float* y, const Conv2dParams& p) {
  check_params(p, kMax ? "max_pool2d_nhwc" : "avg_pool2d_nhwc", true);
  const int64_t C = p.in_c;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t oy = 0; oy < p.out_h; ++oy)
      for (int64_t ox = 0; ox < p.out_w; ++ox) {
        float* yp = y + ((b * p.out_h + oy) * p.out_w + ox) * C;
        const int64_t iy0 = oy * p.stride_h - p.pad_top, ix0 = ox * p.stride_w - p.pad_left;
        int64_t ky0, ky1, kx0, kx1;
        tap_range(iy0, p.k_h, p.in_h, &ky0, &ky1);
        tap_range(ix0, p.k_w, p.in_w, &kx0, &kx1);
        const float count = float((ky1 - ky0) * (kx1 - kx0));
        for (int64_t c = 0; c < C; ++c) {
          float acc = kMax ? -std::numeric_limits<float>::infinity() : 0.0f;
          for (int64_t ky = ky0; ky < ky1; ++ky)
            for (int64_t kx = kx0; kx < kx1; ++kx) {
              const float v = x[((b * p.in_h + iy0 + ky) * p.in_w + ix0 + kx) * C + c];
              if (kMax) acc = (v > acc || std::isnan(v)) ? v : acc;
              else acc += v;
            }
          yp[c] = kMax ? acc : acc / count;
        }
      }
}
}  // namespace

void max_pool2d_nhwc(const float* x, float* y, const Conv2dParams& p) { pool_ref<true>(x, y, p); }
void avg_pool2d_nhwc(const float* x, float* y, const Conv2dParams& p) { pool_ref<false>(x, y, p); }

}  // namespace ref

// ------------------------------------------------------------------ vector paths
#if defined(__x86_64__)
namespace {

// The operations of the vector paths whose instructions differ by ISA (conv_rows.inc):
//   Tail / tail(n)  the lanes [0, n) of a vector of channels (n clamped to the lanes): AVX-512 a
//                   mask register; AVX2 a lane mask, used only when n < 8 (whole vectors take
//                   plain loads and stores)
//   load / store    under a Tail;  act  the activation;  div  a / b
//   max_nan(acc, v) v if v > acc or v is NaN (NaN propagates, as the reference), else acc
struct ConvOps512 {
  struct Tail {
    int64_t n;
    __mmask16 m;
  };
  EMOLLM_SIMD_INLINE_512 Tail tail(int64_t n) {
    const int64_t c = std::min<int64_t>(16, n);
    return Tail{c, simd::tail_mask16(c)};
  }
  EMOLLM_SIMD_INLINE_512 __m512 load(const float* p, const Tail& t) { return _mm512_maskz_loadu_ps(t.m, p); }
  EMOLLM_SIMD_INLINE_512 void store(float* p, __m512 v, const Tail& t) { _mm512_mask_storeu_ps(p, t.m, v); }
  EMOLLM_SIMD_INLINE_512 __m512 act(__m512 v, ConvActivation a, float alpha) {
    if (a == ConvActivation::Relu) return _mm512_max_ps(v, _mm512_setzero_ps());
    if (a == ConvActivation::LeakyRelu) {
      __mmask16 pos = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ);
      return _mm512_mask_blend_ps(pos, _mm512_mul_ps(v, _mm512_set1_ps(alpha)), v);
    }
    return v;
  }
  EMOLLM_SIMD_INLINE_512 __m512 max_nan(__m512 acc, __m512 v) {
    const __mmask16 take = _mm512_cmp_ps_mask(v, acc, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    return _mm512_mask_mov_ps(acc, take, v);
  }
  EMOLLM_SIMD_INLINE_512 __m512 div(__m512 a, __m512 b) { return _mm512_div_ps(a, b); }
};

struct ConvOps256 {
  struct Tail {
    int64_t n;
    __m256i m;
  };
  EMOLLM_SIMD_INLINE_256 Tail tail(int64_t n) {
    const int64_t c = std::min<int64_t>(8, n);
    return Tail{c, simd::tail_mask8(c)};
  }
  EMOLLM_SIMD_INLINE_256 __m256 load(const float* p, const Tail& t) {
    return t.n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, t.m);
  }
  EMOLLM_SIMD_INLINE_256 void store(float* p, __m256 v, const Tail& t) {
    if (t.n >= 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, t.m, v);
  }
  EMOLLM_SIMD_INLINE_256 __m256 act(__m256 v, ConvActivation a, float alpha) {
    if (a == ConvActivation::Relu) return _mm256_max_ps(v, _mm256_setzero_ps());
    if (a == ConvActivation::LeakyRelu) {
      const __m256 pos = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ);
      return _mm256_blendv_ps(_mm256_mul_ps(v, _mm256_set1_ps(alpha)), v, pos);
    }
    return v;
  }
  EMOLLM_SIMD_INLINE_256 __m256 max_nan(__m256 acc, __m256 v) {
    return _mm256_blendv_ps(acc, v, _mm256_or_ps(_mm256_cmp_ps(v, acc, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  }
  EMOLLM_SIMD_INLINE_256 __m256 div(__m256 a, __m256 b) { return _mm256_div_ps(a, b); }
};

// The dense conv pixels, pooling rows and activation pass, once per ISA (conv_rows.inc).
#define EMO_CV_TARGET EMOLLM_TARGET_AVX512
#define EMO_CV_V simd::F32x16
#define EMO_CV_OPS ConvOps512
#define EMO_CV_NS avx512
#include "conv_rows.inc"
#undef EMO_CV_TARGET
#undef EMO_CV_V
#undef EMO_CV_OPS
#undef EMO_CV_NS
#define EMO_CV_TARGET EMOLLM_TARGET_AVX2
#define EMO_CV_V simd::F32x8
#define EMO_CV_OPS ConvOps256
#define EMO_CV_NS avx2
#include "conv_rows.inc"
#undef EMO_CV_TARGET
#undef EMO_CV_V
#undef EMO_CV_OPS
#undef EMO_CV_NS

// ---- AVX-512 depthwise
// Output columns whose window lies inside the image in x: [*lo, *hi).
inline void interior_cols(const Conv2dParams& p, int64_t* lo, int64_t* hi) {
  int64_t a = (p.pad_left + p.stride_w - 1) / p.stride_w;  // first ox with ix0 >= 0
  int64_t last = p.in_w + p.pad_left - p.k_w;              // ix0 + k_w <= in_w  <=>  ox * s <= last
  int64_t b = last < 0 ? 0 : last / p.stride_w + 1;
  a = std::min(a, p.out_w);
  b = std::max(a, std::min(b, p.out_w));
  *lo = a;
  *hi = b;
}

// PX output pixels of one row at a time (independent FMA chains; a 3x3 tap chain per pixel is
// latency-bound), all with the same x tap range.
template <int PX>
EMOLLM_TARGET_AVX512 void depthwise_px_avx512(const float* x, const float* w, const float* bias, float* y,
                                              const Conv2dParams& p, int64_t b, int64_t oy, int64_t ox0, int64_t ox1) {
  const int64_t C = p.in_c;
  const int64_t iy0 = oy * p.stride_h - p.pad_top;
  int64_t ky0, ky1;
  tap_range(iy0, p.k_h, p.in_h, &ky0, &ky1);
  const int64_t xstep = p.stride_w * C;
  for (int64_t ox = ox0; ox + PX <= ox1; ox += PX) {
    const int64_t ix0 = ox * p.stride_w - p.pad_left;
    int64_t kx0, kx1;
    tap_range(ix0, p.k_w, p.in_w, &kx0, &kx1);
    float* yp = y + ((b * p.out_h + oy) * p.out_w + ox) * C;
    for (int64_t c = 0; c < C; c += 16) {
      const __mmask16 m = simd::tail_mask16(std::min<int64_t>(16, C - c));
      __m512 acc[PX];
      for (int q = 0; q < PX; ++q) acc[q] = bias ? _mm512_maskz_loadu_ps(m, bias + c) : _mm512_setzero_ps();
      for (int64_t ky = ky0; ky < ky1; ++ky) {
        const float* xrow = x + ((b * p.in_h + iy0 + ky) * p.in_w + ix0) * C + c;
        const float* wrow = w + ky * p.k_w * C + c;
        for (int64_t kx = kx0; kx < kx1; ++kx) {
          const __m512 wv = _mm512_maskz_loadu_ps(m, wrow + kx * C);
          for (int q = 0; q < PX; ++q)
            acc[q] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, xrow + q * xstep + kx * C), wv, acc[q]);
        }
      }
      for (int q = 0; q < PX; ++q) _mm512_mask_storeu_ps(yp + q * C + c, m, ConvOps512::act(acc[q], p.act, p.alpha));
    }
  }
}

EMOLLM_TARGET_AVX512 void depthwise_rows_avx512(const float* x, const float* w, const float* bias, float* y,
                                                const Conv2dParams& p, int64_t r0, int64_t r1) {
  constexpr int PX = 4;
  int64_t lo, hi;
  interior_cols(p, &lo, &hi);
  const int64_t mid = lo + (hi - lo) / PX * PX;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / p.out_h, oy = r % p.out_h;
    depthwise_px_avx512<1>(x, w, bias, y, p, b, oy, 0, lo);
    depthwise_px_avx512<PX>(x, w, bias, y, p, b, oy, lo, mid);
    depthwise_px_avx512<1>(x, w, bias, y, p, b, oy, mid, p.out_w);
  }
}

// ---- AVX2
// The vector paths' parameter of conv2d_rows: kLanes floats a vector (16: AVX-512, 8: AVX2).
template <int kLanesPerVector>
struct ConvIsa {
  static constexpr int kLanes = kLanesPerVector;
  // Interior pixels a step: at most 16 accumulators of 32 zmm registers, or 8 of 16 ymm.
  static constexpr int px_for(int nch) {
    return kLanes == 16 ? (nch == 1 ? 8 : (nch == 2 ? 6 : 4)) : (nch == 1 ? 4 : (nch == 2 ? 3 : 2));
  }
  template <int NCH, int PX>
  static void px(const float* x, const float* w, const float* bias, float* y, const Conv2dParams& p, int64_t b,
                 int64_t oy, int64_t oc0, int64_t ox0, int64_t ox1) {
    if constexpr (kLanes == 16) avx512::conv2d_px<NCH, PX>(x, w, bias, y, p, b, oy, oc0, ox0, ox1);
    else avx2::conv2d_px<NCH, PX>(x, w, bias, y, p, b, oy, oc0, ox0, ox1);
  }
};

// The dense conv's row loop, shared by the vector paths. Path (a ConvIsa) supplies kLanes,
// px_for(NCH) (interior pixels a step: accumulators within its register file) and px<NCH, PX>(),
// its conv2d_px kernel. Output channels go in blocks of up to 4 vectors; in each
// row the border columns (clipped windows) go one pixel at a time, the interior PX at a time.
template <class Path, int NCH>
void conv2d_row(const float* x, const float* w, const float* bias, float* y, const Conv2dParams& p, int64_t b,
                int64_t oy, int64_t oc0) {
  constexpr int PX = Path::px_for(NCH);
  int64_t lo, hi;
  interior_cols(p, &lo, &hi);
  const int64_t mid = lo + (hi - lo) / PX * PX;
  Path::template px<NCH, 1>(x, w, bias, y, p, b, oy, oc0, 0, lo);
  Path::template px<NCH, PX>(x, w, bias, y, p, b, oy, oc0, lo, mid);
  Path::template px<NCH, 1>(x, w, bias, y, p, b, oy, oc0, mid, p.out_w);
}

template <class Path>
void conv2d_rows(const float* x, const float* w, const float* bias, float* y, const Conv2dParams& p, int64_t r0,
                 int64_t r1) {
  constexpr int L = Path::kLanes;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / p.out_h, oy = r % p.out_h;
    for (int64_t oc0 = 0; oc0 < p.out_c; oc0 += 4 * L) {
      const int64_t nch = std::min<int64_t>(4, (p.out_c - oc0 + L - 1) / L);
      switch (nch) {
        case 1: conv2d_row<Path, 1>(x, w, bias, y, p, b, oy, oc0); break;
        case 2: conv2d_row<Path, 2>(x, w, bias, y, p, b, oy, oc0); break;
        case 3: conv2d_row<Path, 3>(x, w, bias, y, p, b, oy, oc0); break;
        default: conv2d_row<Path, 4>(x, w, bias, y, p, b, oy, oc0); break;
      }
    }
  }
}

EMOLLM_TARGET_AVX2 void depthwise_rows_avx2(const float* x, const float* w, const float* bias, float* y,
                                            const Conv2dParams& p, int64_t r0, int64_t r1) {
  const int64_t C = p.in_c;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / p.out_h, oy = r % p.out_h;
    const int64_t iy0 = oy * p.stride_h - p.pad_top;
    int64_t ky0, ky1;
    tap_range(iy0, p.k_h, p.in_h, &ky0, &ky1);
    for (int64_t ox = 0; ox < p.out_w; ++ox) {
      const int64_t ix0 = ox * p.stride_w - p.pad_left;
      int64_t kx0, kx1;
      tap_range(ix0, p.k_w, p.in_w, &kx0, &kx1);
      float* yp = y + ((b * p.out_h + oy) * p.out_w + ox) * C;
      for (int64_t c = 0; c < C; c += 8) {
        const ConvOps256::Tail m = ConvOps256::tail(C - c);
        __m256 acc = bias ? ConvOps256::load(bias + c, m) : _mm256_setzero_ps();
        for (int64_t ky = ky0; ky < ky1; ++ky) {
          const float* xrow = x + ((b * p.in_h + iy0 + ky) * p.in_w + ix0) * C + c;
          const float* wrow = w + ky * p.k_w * C + c;
          for (int64_t kx = kx0; kx < kx1; ++kx)
            acc = _mm256_fmadd_ps(ConvOps256::load(xrow + kx * C, m), ConvOps256::load(wrow + kx * C, m), acc);
        }
        ConvOps256::store(yp + c, ConvOps256::act(acc, p.act, p.alpha), m);
      }
    }
  }
}

}  // namespace
#endif  // __x86_64__

// ------------------------------------------------------------------ dispatchers
void conv_activation(const float* x, float* y, int64_t n, ConvActivation act, float alpha) {
  EMOLLM_CHECK_ARG(n >= 0, "conv_activation: n must be >= 0");
  if (act == ConvActivation::None) {
    if (x != y) std::copy(x, x + n, y);
    return;
  }
#if defined(__x86_64__)
  const Isa isa = isa_active();
  if (isa >= Isa::Avx512) return avx512::act_rows(x, y, n, act, alpha);
  if (isa >= Isa::Avx2) return avx2::act_rows(x, y, n, act, alpha);
#endif
  ref::conv_activation(x, y, n, act, alpha);
}

void conv2d_nhwc(const float* x, const float* w, const float* bias, float* y, const Conv2dParams& p, ThreadPool* pool) {
  check_params(p, "conv2d_nhwc", false);
#if defined(__x86_64__)
  const Isa isa = isa_active();
  const int64_t row_cost = p.out_w * p.out_c * p.k_h * p.k_w * p.in_c;
  if (isa >= Isa::Avx512)
    return for_rows(p, pool, row_cost, [&](int64_t r0, int64_t r1) { conv2d_rows<ConvIsa<16>>(x, w, bias, y, p, r0, r1); });
  if (isa >= Isa::Avx2)
    return for_rows(p, pool, row_cost, [&](int64_t r0, int64_t r1) { conv2d_rows<ConvIsa<8>>(x, w, bias, y, p, r0, r1); });
#endif
  (void)pool;
  ref::conv2d_nhwc(x, w, bias, y, p);
}

void depthwise_conv2d_nhwc(const float* x, const float* w, const float* bias, float* y, const Conv2dParams& p,
                           ThreadPool* pool) {
  check_params(p, "depthwise_conv2d_nhwc", true);
#if defined(__x86_64__)
  const Isa isa = isa_active();
  const int64_t row_cost = p.out_w * p.in_c * p.k_h * p.k_w;
  if (isa >= Isa::Avx512)
    return for_rows(p, pool, row_cost, [&](int64_t r0, int64_t r1) { depthwise_rows_avx512(x, w, bias, y, p, r0, r1); });
  if (isa >= Isa::Avx2)
    return for_rows(p, pool, row_cost, [&](int64_t r0, int64_t r1) { depthwise_rows_avx2(x, w, bias, y, p, r0, r1); });
#endif
  (void)pool;
  ref::depthwise_conv2d_nhwc(x, w, bias, y, p);
}

void pointwise_conv_nhwc(const float* x, int64_t pixels, int64_t in_c, const float* w, const float* bias, float* y,
                         int64_t out_c, ConvActivation act, float alpha, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(pixels > 0 && in_c > 0 && out_c > 0, "pointwise_conv_nhwc: sizes must be positive");
  gemm(x, in_c, w, DType::F32, bias, y, out_c, pixels, out_c, in_c, pool);
  if (act != ConvActivation::None) conv_activation(y, y, pixels * out_c, act, alpha);
}

namespace {
template <bool kMax>
void pool2d_nhwc(const float* x, float* y, const Conv2dParams& p, ThreadPool* pool) {
  check_params(p, kMax ? "max_pool2d_nhwc" : "avg_pool2d_nhwc", true);
#if defined(__x86_64__)
  const Isa isa = isa_active();
  const int64_t row_cost = p.out_w * p.in_c * p.k_h * p.k_w;
  if (isa >= Isa::Avx512)
    return for_rows(p, pool, row_cost, [&](int64_t r0, int64_t r1) { avx512::pool_rows<kMax>(x, y, p, r0, r1); });
  if (isa >= Isa::Avx2)
    return for_rows(p, pool, row_cost, [&](int64_t r0, int64_t r1) { avx2::pool_rows<kMax>(x, y, p, r0, r1); });
#endif
  (void)pool;
  if constexpr (kMax) ref::max_pool2d_nhwc(x, y, p);
  else ref::avg_pool2d_nhwc(x, y, p);
}
}  // namespace

void max_pool2d_nhwc(const float* x, float* y, const Conv2dParams& p, ThreadPool* pool) { pool2d_nhwc<true>(x, y, p, pool); }
void avg_pool2d_nhwc(const float* x, float* y, const Conv2dParams& p, ThreadPool* pool) { pool2d_nhwc<false>(x, y, p, pool); }

}  // namespace emollm
