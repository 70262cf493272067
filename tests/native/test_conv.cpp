// Tests for the convolution / pooling kernels (kernels/cpu/conv.cpp): conv2d_nhwc,
// depthwise_conv2d_nhwc, pointwise_conv_nhwc, max_pool2d_nhwc, avg_pool2d_nhwc, conv_activation,
// conv_geometry.
//
// Two kinds of checks, on odd shapes (channels 1, 3, 5, 17, 33, 70; kernels 1, 2, 3, 5, 7;
// strides 1..3; TF 'same' and 'valid' geometry; batch 1 and 2):
//   1. the scalar reference emollm::ref::* against a naive double-precision loop written here
//      (independent index arithmetic: explicit zero padding of the input);
//   2. every ISA level this CPU supports (Scalar, Avx2, Avx512; via IsaCapScope), with and without
//      a thread pool, against the reference.
// Tolerances (|got - want| <= atol + rtol * |want|), inputs ~U(-1, 1):
//   convolutions   ref vs double: atol 1e-5 * sqrt(taps), rtol 1e-5; vector vs ref: same
//                  (FMA rounding vs two roundings per tap)
//   pooling        bit-exact (vector vs ref; ref vs naive max; avg atol 1e-6)
//   activations    bit-exact
// Plus the face model helpers built on them (native/model/face.h): pad-to-square + TF.js bilinear
// resize, YOLO box decoding + NMS, face crops, on hand-computed cases (the networks themselves are
// checked against face-api's JavaScript in tests/js/face.test.ts).
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../../kernels/cpu/kernels.h"
#include "../../base/cpu_features.h"
#include "../../base/error.h"
#include "../../base/thread_pool.h"
#include "../../native/model/face.h"
#include "testing.h"

using namespace emollm;

namespace {

std::vector<Isa> isa_levels() {
  std::vector<Isa> v{Isa::Scalar};
  if (int(isa_detected()) >= int(Isa::Avx2)) v.push_back(Isa::Avx2);
  if (int(isa_detected()) >= int(Isa::Avx512)) v.push_back(Isa::Avx512);
  return v;
}

std::vector<float> uniform(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

struct Case {
  int64_t batch, h, w, c, oc, k_h, k_w, stride;
  bool same;
};

Conv2dParams make_params(const Case& cs, bool depthwise) {
  Conv2dParams p;
  p.batch = cs.batch;
  p.in_h = cs.h;
  p.in_w = cs.w;
  p.in_c = cs.c;
  p.out_c = depthwise ? cs.c : cs.oc;
  p.k_h = cs.k_h;
  p.k_w = cs.k_w;
  p.stride_h = p.stride_w = cs.stride;
  conv_geometry(cs.h, cs.k_h, cs.stride, cs.same, &p.out_h, &p.pad_top);
  conv_geometry(cs.w, cs.k_w, cs.stride, cs.same, &p.out_w, &p.pad_left);
  return p;
}

std::string tag(const char* what, const Case& cs, Isa isa, bool pool, ConvActivation act) {
  return std::string(what) + " isa=" + isa_name(isa) + (pool ? " pool" : "") + " b=" + std::to_string(cs.batch) +
         " h=" + std::to_string(cs.h) + " w=" + std::to_string(cs.w) + " c=" + std::to_string(cs.c) +
         " oc=" + std::to_string(cs.oc) + " k=" + std::to_string(cs.k_h) + "x" + std::to_string(cs.k_w) +
         " s=" + std::to_string(cs.stride) + (cs.same ? " same" : " valid") + " act=" + std::to_string(int(act));
}

// Input value at (b, y, x, c) of the explicitly zero-padded image.
double padded(const std::vector<float>& x, const Conv2dParams& p, int64_t b, int64_t y, int64_t xx, int64_t c) {
  if (y < 0 || y >= p.in_h || xx < 0 || xx >= p.in_w) return 0.0;
  return x[size_t(((b * p.in_h + y) * p.in_w + xx) * p.in_c + c)];
}

double act_d(double v, ConvActivation a, double alpha) {
  if (a == ConvActivation::Relu) return v > 0 ? v : 0;
  if (a == ConvActivation::LeakyRelu) return v > 0 ? v : alpha * v;
  return v;
}

std::vector<float> naive_conv(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>* bias,
                              const Conv2dParams& p, bool depthwise) {
  std::vector<float> y(size_t(p.batch * p.out_h * p.out_w * p.out_c));
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t oy = 0; oy < p.out_h; ++oy)
      for (int64_t ox = 0; ox < p.out_w; ++ox)
        for (int64_t oc = 0; oc < p.out_c; ++oc) {
          double acc = bias ? (*bias)[size_t(oc)] : 0.0;
          for (int64_t ky = 0; ky < p.k_h; ++ky)
            for (int64_t kx = 0; kx < p.k_w; ++kx) {
              const int64_t iy = oy * p.stride_h - p.pad_top + ky, ix = ox * p.stride_w - p.pad_left + kx;
              if (depthwise) {
                acc += padded(x, p, b, iy, ix, oc) * w[size_t((ky * p.k_w + kx) * p.in_c + oc)];
              } else {
                for (int64_t ic = 0; ic < p.in_c; ++ic)
                  acc += padded(x, p, b, iy, ix, ic) * w[size_t(((ky * p.k_w + kx) * p.in_c + ic) * p.out_c + oc)];
              }
            }
          y[size_t(((b * p.out_h + oy) * p.out_w + ox) * p.out_c + oc)] = float(act_d(acc, p.act, p.alpha));
        }
  return y;
}

std::vector<float> naive_pool(const std::vector<float>& x, const Conv2dParams& p, bool is_max) {
  std::vector<float> y(size_t(p.batch * p.out_h * p.out_w * p.in_c));
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t oy = 0; oy < p.out_h; ++oy)
      for (int64_t ox = 0; ox < p.out_w; ++ox)
        for (int64_t c = 0; c < p.in_c; ++c) {
          double acc = is_max ? -INFINITY : 0.0;
          int n = 0;
          for (int64_t ky = 0; ky < p.k_h; ++ky)
            for (int64_t kx = 0; kx < p.k_w; ++kx) {
              const int64_t iy = oy * p.stride_h - p.pad_top + ky, ix = ox * p.stride_w - p.pad_left + kx;
              if (iy < 0 || iy >= p.in_h || ix < 0 || ix >= p.in_w) continue;
              const double v = x[size_t(((b * p.in_h + iy) * p.in_w + ix) * p.in_c + c)];
              acc = is_max ? std::max(acc, v) : acc + v;
              ++n;
            }
          y[size_t(((b * p.out_h + oy) * p.out_w + ox) * p.in_c + c)] = float(is_max ? acc : acc / n);
        }
  return y;
}

const Case kConvCases[] = {
    {1, 7, 9, 3, 16, 3, 3, 1, false},  {2, 7, 9, 3, 17, 3, 3, 2, true},  {1, 8, 8, 5, 33, 3, 3, 2, true},
    {1, 5, 11, 1, 1, 3, 3, 1, true},   {1, 6, 5, 17, 70, 1, 1, 1, true}, {2, 9, 7, 3, 5, 5, 5, 3, true},
    {1, 12, 12, 3, 32, 3, 3, 2, true}, {1, 3, 3, 2, 64, 3, 3, 1, true},  {1, 10, 4, 4, 48, 2, 3, 2, false},
    // wide rows: the multi-pixel blocks of the vector paths, with remainders
    {1, 4, 41, 3, 16, 3, 3, 1, false}, {1, 5, 37, 3, 40, 3, 3, 2, true}, {1, 3, 29, 5, 70, 3, 3, 1, true},
};

const Case kDwCases[] = {
    {1, 7, 9, 1, 0, 3, 3, 1, true},   {2, 7, 9, 16, 0, 3, 3, 2, true}, {1, 8, 8, 17, 0, 3, 3, 2, true},
    {1, 5, 11, 40, 0, 3, 3, 1, true}, {1, 9, 7, 7, 0, 5, 5, 3, true},  {1, 13, 13, 33, 0, 3, 3, 1, false},
    {1, 4, 6, 70, 0, 2, 3, 1, true},  {1, 6, 23, 17, 0, 3, 3, 2, true}, {2, 5, 30, 16, 0, 3, 3, 1, true},
};

const Case kPoolCases[] = {
    {1, 7, 9, 1, 0, 2, 2, 2, true},   {2, 207, 5, 16, 0, 2, 2, 2, true}, {1, 13, 13, 17, 0, 2, 2, 1, true},
    {1, 7, 7, 33, 0, 7, 7, 2, false}, {1, 9, 6, 7, 0, 3, 3, 2, true},    {1, 5, 5, 70, 0, 3, 3, 1, true},
};

}  // namespace

TEST(conv_geometry_matches_tensorflow) {
  int64_t o, pb;
  conv_geometry(207, 2, 2, true, &o, &pb);
  EXPECT(o == 104 && pb == 0);
  conv_geometry(13, 2, 1, true, &o, &pb);
  EXPECT(o == 13 && pb == 0);
  conv_geometry(112, 3, 2, true, &o, &pb);
  EXPECT(o == 56 && pb == 0);
  conv_geometry(5, 3, 1, true, &o, &pb);
  EXPECT(o == 5 && pb == 1);
  conv_geometry(9, 5, 3, true, &o, &pb);  // out 3, total pad (3-1)*3+5-9 = 2
  EXPECT(o == 3 && pb == 1);
  conv_geometry(7, 7, 2, false, &o, &pb);
  EXPECT(o == 1 && pb == 0);
  conv_geometry(416, 3, 1, false, &o, &pb);
  EXPECT(o == 414 && pb == 0);
  EXPECT_THROWS(conv_geometry(2, 3, 1, false, &o, &pb), ErrorCode::InvalidArgument);
  EXPECT_THROWS(conv_geometry(0, 3, 1, true, &o, &pb), ErrorCode::InvalidArgument);
}

TEST(conv2d_nhwc_all_isas) {
  ThreadPool pool(3);
  uint32_t seed = 1;
  for (const Case& cs : kConvCases)
    for (ConvActivation act : {ConvActivation::None, ConvActivation::Relu, ConvActivation::LeakyRelu})
      for (bool with_bias : {true, false}) {
        Conv2dParams p = make_params(cs, false);
        p.act = act;
        p.alpha = 0.1f;
        auto x = uniform(size_t(p.batch * p.in_h * p.in_w * p.in_c), seed++);
        auto w = uniform(size_t(p.k_h * p.k_w * p.in_c * p.out_c), seed++);
        auto bias = uniform(size_t(p.out_c), seed++);
        const std::vector<float>* bp = with_bias ? &bias : nullptr;
        const size_t ny = size_t(p.batch * p.out_h * p.out_w * p.out_c);
        const double atol = 1e-5 * std::sqrt(double(p.k_h * p.k_w * p.in_c));
        auto want = naive_conv(x, w, bp, p, false);
        std::vector<float> ref_y(ny, NAN);
        ref::conv2d_nhwc(x.data(), w.data(), bp ? bias.data() : nullptr, ref_y.data(), p);
        EXPECT_ALL_CLOSE(ref_y.data(), want.data(), ny, atol, 1e-5, tag("conv2d ref vs double", cs, Isa::Scalar, false, act));
        for (Isa isa : isa_levels())
          for (bool use_pool : {false, true}) {
            IsaCapScope cap(isa);
            std::vector<float> y(ny, NAN);
            conv2d_nhwc(x.data(), w.data(), bp ? bias.data() : nullptr, y.data(), p, use_pool ? &pool : nullptr);
            EXPECT_ALL_CLOSE(y.data(), ref_y.data(), ny, atol, 1e-5, tag("conv2d vs ref", cs, isa, use_pool, act));
          }
      }
}

TEST(depthwise_conv2d_nhwc_all_isas) {
  ThreadPool pool(3);
  uint32_t seed = 100;
  for (const Case& cs : kDwCases)
    for (ConvActivation act : {ConvActivation::None, ConvActivation::LeakyRelu})
      for (bool with_bias : {true, false}) {
        Conv2dParams p = make_params(cs, true);
        p.act = act;
        p.alpha = 0.25f;
        auto x = uniform(size_t(p.batch * p.in_h * p.in_w * p.in_c), seed++);
        auto w = uniform(size_t(p.k_h * p.k_w * p.in_c), seed++);
        auto bias = uniform(size_t(p.in_c), seed++);
        const std::vector<float>* bp = with_bias ? &bias : nullptr;
        const size_t ny = size_t(p.batch * p.out_h * p.out_w * p.out_c);
        const double atol = 1e-5 * std::sqrt(double(p.k_h * p.k_w));
        auto want = naive_conv(x, w, bp, p, true);
        std::vector<float> ref_y(ny, NAN);
        ref::depthwise_conv2d_nhwc(x.data(), w.data(), bp ? bias.data() : nullptr, ref_y.data(), p);
        EXPECT_ALL_CLOSE(ref_y.data(), want.data(), ny, atol, 1e-5, tag("depthwise ref vs double", cs, Isa::Scalar, false, act));
        for (Isa isa : isa_levels())
          for (bool use_pool : {false, true}) {
            IsaCapScope cap(isa);
            std::vector<float> y(ny, NAN);
            depthwise_conv2d_nhwc(x.data(), w.data(), bp ? bias.data() : nullptr, y.data(), p, use_pool ? &pool : nullptr);
            EXPECT_ALL_CLOSE(y.data(), ref_y.data(), ny, atol, 1e-5, tag("depthwise vs ref", cs, isa, use_pool, act));
          }
      }
}

TEST(pointwise_conv_nhwc_all_isas) {
  ThreadPool pool(3);
  const int64_t shapes[][3] = {{1, 1, 1}, {7, 3, 5}, {37, 16, 32}, {49, 17, 33}, {130, 64, 25}, {5, 256, 7}};
  uint32_t seed = 300;
  for (const auto& s : shapes)
    for (ConvActivation act : {ConvActivation::None, ConvActivation::Relu, ConvActivation::LeakyRelu}) {
      const int64_t px = s[0], c = s[1], oc = s[2];
      auto x = uniform(size_t(px * c), seed++);
      auto w = uniform(size_t(oc * c), seed++);  // [oc, c]
      auto bias = uniform(size_t(oc), seed++);
      std::vector<float> want(size_t(px * oc));
      for (int64_t i = 0; i < px; ++i)
        for (int64_t o = 0; o < oc; ++o) {
          double acc = bias[size_t(o)];
          for (int64_t k = 0; k < c; ++k) acc += double(x[size_t(i * c + k)]) * w[size_t(o * c + k)];
          want[size_t(i * oc + o)] = float(act_d(acc, act, 0.1));
        }
      for (Isa isa : isa_levels())
        for (bool use_pool : {false, true}) {
          IsaCapScope cap(isa);
          std::vector<float> y(size_t(px * oc), NAN);
          pointwise_conv_nhwc(x.data(), px, c, w.data(), bias.data(), y.data(), oc, act, 0.1f, use_pool ? &pool : nullptr);
          EXPECT_ALL_CLOSE(y.data(), want.data(), px * oc, 1e-5 * std::sqrt(double(c)), 1e-5,
                           std::string("pointwise isa=") + isa_name(isa) + " px=" + std::to_string(px) +
                               " c=" + std::to_string(c) + " oc=" + std::to_string(oc));
        }
    }
}

TEST(pooling_all_isas) {
  ThreadPool pool(3);
  uint32_t seed = 500;
  for (const Case& cs : kPoolCases)
    for (bool is_max : {true, false}) {
      Conv2dParams p = make_params(cs, true);
      auto x = uniform(size_t(p.batch * p.in_h * p.in_w * p.in_c), seed++);
      const size_t ny = size_t(p.batch * p.out_h * p.out_w * p.in_c);
      auto want = naive_pool(x, p, is_max);
      std::vector<float> ref_y(ny, NAN);
      if (is_max) ref::max_pool2d_nhwc(x.data(), ref_y.data(), p);
      else ref::avg_pool2d_nhwc(x.data(), ref_y.data(), p);
      const char* what = is_max ? "max_pool" : "avg_pool";
      EXPECT_ALL_CLOSE(ref_y.data(), want.data(), ny, is_max ? 0.0 : 1e-6, 0.0,
                       tag(what, cs, Isa::Scalar, false, ConvActivation::None));
      for (Isa isa : isa_levels())
        for (bool use_pool : {false, true}) {
          IsaCapScope cap(isa);
          std::vector<float> y(ny, NAN);
          if (is_max) max_pool2d_nhwc(x.data(), y.data(), p, use_pool ? &pool : nullptr);
          else avg_pool2d_nhwc(x.data(), y.data(), p, use_pool ? &pool : nullptr);
          EXPECT_ALL_CLOSE(y.data(), ref_y.data(), ny, 0.0, 0.0, tag(what, cs, isa, use_pool, ConvActivation::None));
        }
    }
}

TEST(max_pool_nan_propagates_on_every_isa) {
  Conv2dParams p;
  p.in_h = p.in_w = 2;
  p.in_c = p.out_c = 19;
  p.out_h = p.out_w = 1;
  p.k_h = p.k_w = 2;
  p.stride_h = p.stride_w = 2;
  std::vector<float> x = uniform(4 * 19, 7);
  x[0] = NAN;            // first tap, channel 0
  x[3 * 19 + 18] = NAN;  // last tap, channel 18
  for (Isa isa : isa_levels()) {
    IsaCapScope cap(isa);
    std::vector<float> y(19, 0.0f);
    max_pool2d_nhwc(x.data(), y.data(), p, nullptr);
    EXPECT(std::isnan(y[0]));
    EXPECT(std::isnan(y[18]));
    EXPECT(!std::isnan(y[1]));
  }
}

TEST(conv_activation_all_isas) {
  for (int64_t n : {1, 7, 8, 15, 16, 17, 100, 1001}) {
    auto x = uniform(size_t(n), uint32_t(n));
    for (ConvActivation act : {ConvActivation::None, ConvActivation::Relu, ConvActivation::LeakyRelu}) {
      std::vector<float> want(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) want[size_t(i)] = float(act_d(x[size_t(i)], act, double(0.1f)));
      // the float formula alpha * x, as the kernels compute it
      if (act == ConvActivation::LeakyRelu)
        for (int64_t i = 0; i < n; ++i) want[size_t(i)] = x[size_t(i)] > 0 ? x[size_t(i)] : 0.1f * x[size_t(i)];
      for (Isa isa : isa_levels()) {
        IsaCapScope cap(isa);
        std::vector<float> y(static_cast<size_t>(n), NAN);
        conv_activation(x.data(), y.data(), n, act, 0.1f);
        EXPECT_ALL_CLOSE(y.data(), want.data(), n, 0.0, 0.0, std::string("activation isa=") + isa_name(isa));
        std::vector<float> z = x;  // in place
        leaky_relu(z.data(), z.data(), n, 0.1f);
        for (int64_t i = 0; i < n; ++i) EXPECT(z[size_t(i)] == (x[size_t(i)] > 0 ? x[size_t(i)] : 0.1f * x[size_t(i)]));
      }
    }
  }
}

TEST(conv_rejects_bad_shapes) {
  std::vector<float> buf(1024, 0.0f);
  Conv2dParams p;
  p.in_h = p.in_w = 4;
  p.in_c = 3;
  p.out_c = 3;
  p.out_h = p.out_w = 4;
  p.k_h = p.k_w = 3;
  p.pad_top = p.pad_left = 3;  // padding >= kernel
  EXPECT_THROWS(conv2d_nhwc(buf.data(), buf.data(), nullptr, buf.data(), p, nullptr), ErrorCode::InvalidArgument);
  p.pad_top = p.pad_left = 1;
  p.out_c = 4;  // depthwise needs out_c == in_c
  EXPECT_THROWS(depthwise_conv2d_nhwc(buf.data(), buf.data(), nullptr, buf.data(), p, nullptr), ErrorCode::InvalidArgument);
  EXPECT_THROWS(max_pool2d_nhwc(buf.data(), buf.data(), p, nullptr), ErrorCode::InvalidArgument);
  p.out_c = 3;
  p.out_h = 9;  // windows past the image
  EXPECT_THROWS(avg_pool2d_nhwc(buf.data(), buf.data(), p, nullptr), ErrorCode::InvalidArgument);
  EXPECT_THROWS(pointwise_conv_nhwc(buf.data(), 0, 3, buf.data(), nullptr, buf.data(), 3, ConvActivation::None, 0.f, nullptr),
                ErrorCode::InvalidArgument);
}

// ---------------------------------------------------------------- face model helpers

TEST(face_pad_to_square_resize) {
  // 3 wide x 2 high, R = 10 * index, G = R + 1, B = R + 2
  std::vector<uint8_t> img(3 * 2 * 3);
  for (int i = 0; i < 6; ++i)
    for (int c = 0; c < 3; ++c) img[size_t(i * 3 + c)] = uint8_t(10 * i + c);
  // side 3 == size: a copy with a zero row at the bottom (not centred) ...
  std::vector<float> out(3 * 3 * 3, -1.0f);
  face::pad_to_square_resize(img.data(), 9, 3, 2, 3, false, out.data());
  for (int i = 0; i < 6; ++i) EXPECT(out[size_t(i * 3 + 1)] == float(10 * i + 1));
  for (int i = 6; i < 9; ++i) EXPECT(out[size_t(i * 3)] == 0.0f);
  // ... and centred: diff 1 -> Math.round(0.5) = 1 row after, 0 before (face-api's padToSquare)
  face::pad_to_square_resize(img.data(), 9, 3, 2, 3, true, out.data());
  EXPECT(out[0] == 0.0f && out[2] == 2.0f && out[6 * 3] == 0.0f);
  // 1 wide x 4 high, centred: diff 3 -> 2 columns after, 1 before
  std::vector<uint8_t> col = {50, 50, 50, 60, 60, 60, 70, 70, 70, 80, 80, 80};
  std::vector<float> sq(4 * 4 * 3, -1.0f);
  face::pad_to_square_resize(col.data(), 3, 1, 4, 4, true, sq.data());
  for (int y = 0; y < 4; ++y) {
    EXPECT(sq[size_t((y * 4 + 0) * 3)] == 0.0f);
    EXPECT(sq[size_t((y * 4 + 1) * 3)] == float(50 + 10 * y));
    EXPECT(sq[size_t((y * 4 + 2) * 3)] == 0.0f && sq[size_t((y * 4 + 3) * 3)] == 0.0f);
  }
  // resize 2x2 -> 4x4 (alignCorners = false, halfPixelCenters = false): src = dst * 0.5, the last
  // row / column clamps to the edge
  std::vector<uint8_t> q = {0, 0, 0, 100, 100, 100, 200, 200, 200, 40, 40, 40};  // [[0, 100], [200, 40]]
  std::vector<float> r(4 * 4 * 3);
  face::pad_to_square_resize(q.data(), 6, 2, 2, 4, false, r.data());
  auto at = [&](int y, int x) { return r[size_t((y * 4 + x) * 3)]; };
  EXPECT(at(0, 0) == 0.0f && at(0, 1) == 50.0f && at(0, 2) == 100.0f && at(0, 3) == 100.0f);
  EXPECT(at(1, 0) == 100.0f);                 // (0 + 200) / 2
  EXPECT(at(1, 1) == 85.0f);                  // (0 + 100 + 200 + 40) / 4
  EXPECT(at(3, 3) == 40.0f && at(2, 1) == 120.0f);
}

TEST(face_decode_and_nms) {
  // 2x2 grid, 5 anchors x (x, y, w, h, objectness); everything off but two boxes
  const int g = 2;
  std::vector<float> out(size_t(g * g * 5 * 5), -20.0f);
  auto cell = [&](int row, int col, int a) { return out.data() + ((row * g + col) * 5 + a) * 5; };
  float* b0 = cell(0, 1, 0);  // centre offsets sigmoid(0) = 0.5, size exp(0) * anchor 0
  b0[0] = b0[1] = b0[2] = b0[3] = 0.0f;
  b0[4] = 3.0f;
  float* b1 = cell(0, 1, 2);  // same cell, anchor 2 (larger), lower score: overlaps b0 strongly
  b1[0] = b1[1] = 0.0f;
  b1[2] = b1[3] = -0.5f;
  b1[4] = 2.0f;
  face::DetectOptions opt;
  opt.input_size = 64;
  opt.score_threshold = 0.5;
  opt.iou_threshold = 1.0;  // keep both
  auto boxes = face::TinyFaceDetector::decode(out.data(), g, 100, 100, opt);
  EXPECT(boxes.size() == 2);
  if (boxes.size() == 2) {
    const double aw = 1.603231 / 2 * 100, ah = 2.094468 / 2 * 100;
    EXPECT_NEAR(boxes[0].score, 1.0 / (1.0 + std::exp(-3.0)), 1e-12);
    EXPECT_NEAR(boxes[0].width, aw, 1e-9);
    EXPECT_NEAR(boxes[0].height, ah, 1e-9);
    EXPECT_NEAR(boxes[0].x, 75.0 - aw / 2, 1e-9);  // centre (col + 0.5) / g
    EXPECT_NEAR(boxes[0].y, 25.0 - ah / 2, 1e-9);
    EXPECT(boxes[1].score < boxes[0].score);
  }
  opt.iou_threshold = 0.4;
  boxes = face::TinyFaceDetector::decode(out.data(), g, 100, 100, opt);
  EXPECT(boxes.size() == 1);
  opt.score_threshold = 0.96;  // sigmoid(3) = 0.9526: nothing left
  EXPECT(face::TinyFaceDetector::decode(out.data(), g, 100, 100, opt).empty());
  // a non-square image: x is scaled by the image width, corrected for the padding
  opt.score_threshold = 0.5;
  boxes = face::TinyFaceDetector::decode(out.data(), g, 200, 100, opt);
  EXPECT(boxes.size() == 1);
  if (!boxes.empty()) EXPECT_NEAR(boxes[0].x + boxes[0].width / 2, 0.75 * 200, 1e-9);
  if (!boxes.empty()) EXPECT_NEAR(boxes[0].y + boxes[0].height / 2, 0.25 * 2 * 100, 1e-9);
}

TEST(face_crop_clips_and_skips_empty_boxes) {
  std::vector<uint8_t> img(20 * 10 * 3);
  for (size_t i = 0; i < img.size(); ++i) img[i] = uint8_t(i % 251);
  std::vector<float> crop(size_t(face::kExpressionInputSize * face::kExpressionInputSize * 3), -1.0f);
  face::FaceBox outside;
  outside.x = 30;
  outside.y = 2;
  outside.width = 5;
  outside.height = 5;
  EXPECT(!face::extract_face_crop(img.data(), 20, 10, outside, crop.data()));
  EXPECT(crop[0] == -1.0f);
  face::FaceBox partial;  // clipped to x in [0, 3.7) -> floor: 3 wide, y in [1.5, 10) -> 1, 8 high
  partial.x = -2.3;
  partial.y = 1.5;
  partial.width = 6.0;
  partial.height = 20.0;
  EXPECT(face::extract_face_crop(img.data(), 20, 10, partial, crop.data()));
  // 3 x 8 crop padded to 8 x 8 centred: Math.round(5 / 2) = 3 columns after, 2 before
  std::vector<float> want(8 * 8 * 3);
  face::pad_to_square_resize(img.data() + (1 * 20 + 0) * 3, 20 * 3, 3, 8, 8, true, want.data());
  // the crop is that clipped region padded and resized to 112
  std::vector<float> again(crop.size());
  face::pad_to_square_resize(img.data() + (1 * 20 + 0) * 3, 20 * 3, 3, 8, face::kExpressionInputSize, true, again.data());
  EXPECT_ALL_CLOSE(crop.data(), again.data(), long(crop.size()), 0.0, 0.0, "face crop");
  EXPECT(want[(0 * 8 + 2) * 3] == float(img[(1 * 20 + 0) * 3]));  // first image column lands at x = 2
}
