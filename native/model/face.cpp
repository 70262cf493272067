// face-api's TinyFaceDetector and FaceExpressionNet (see face.h for the architectures).
#include "face.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "../../kernels/cpu/kernels.h"
#include "base/error.h"
#include "../core/tensor.h"

namespace emollm::face {

const char* const kExpressionLabels[kNumExpressions] = {"neutral", "happy",     "sad",      "angry",
                                                        "fearful", "disgusted", "surprised"};

namespace {

constexpr float kLeakyAlpha = 0.1f;  // face-api's leaky(): 0.10000000149011612
// TinyFaceDetector (face-api src/tinyFaceDetector/const.ts)
constexpr float kDetectorMean[3] = {117.001f, 114.697f, 97.404f};
constexpr double kAnchors[5][2] = {
    {1.603231, 2.094468}, {6.041143, 7.080126}, {2.882459, 3.518061}, {4.266906, 5.178857}, {9.041765, 10.66308}};
constexpr int kNumAnchors = 5;
// FaceFeatureExtractor (face-api src/faceFeatureExtractor/FaceFeatureExtractor.ts)
constexpr float kExpressionMean[3] = {122.782f, 117.001f, 104.298f};

double js_round(double v) { return std::floor(v + 0.5); }  // Math.round

// Per-thread activation buffers, reused across calls (uninitialised; fresh zeroed vectors of
// tens of MB per call cost more in page faults than the convolutions themselves).
struct Scratch {
  std::unique_ptr<float[]> p;
  size_t cap = 0;
  float* get(size_t n) {
    if (n > cap) {
      p.reset(new float[n]);
      cap = n;
    }
    return p.get();
  }
  // Frees buffers over `limit` floats, so one call at a huge input size does not pin its memory
  // to the thread for the life of the process.
  void trim(size_t limit) {
    if (cap > limit) {
      p.reset();
      cap = 0;
    }
  }
};
constexpr size_t kKeepScratch = size_t(1) << 24;  // floats (64 MiB) kept per buffer between calls


const Tensor& get(const WeightMap& w, const std::string& name, const std::vector<int64_t>& shape) {
  auto it = w.find(name);
  if (it == w.end()) throw Error(ErrorCode::InvalidArgument, "face weights: missing tensor \"" + name + "\"");
  const Tensor& t = it->second;
  if (t.shape != shape)
    throw Error(ErrorCode::InvalidArgument, "face weights: \"" + name + "\" has shape " + format_shape(t.shape) +
                                                ", expected " + format_shape(shape));
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (int64_t(t.data.size()) != n)
    throw Error(ErrorCode::InvalidArgument, "face weights: \"" + name + "\" has " + std::to_string(t.data.size()) +
                                                " values, expected " + std::to_string(n));
  return t;
}

// Channel count of a tensor's dimension `dim` (shape validated later by get()).
int64_t dim_of(const WeightMap& w, const std::string& name, size_t dim) {
  auto it = w.find(name);
  if (it == w.end()) throw Error(ErrorCode::InvalidArgument, "face weights: missing tensor \"" + name + "\"");
  if (it->second.shape.size() <= dim)
    throw Error(ErrorCode::InvalidArgument, "face weights: \"" + name + "\" has shape " + format_shape(it->second.shape));
  return it->second.shape[dim];
}

// [1, 1, c, oc] (or [c, oc]) -> [oc, c]
std::vector<float> transpose_to_rows(const std::vector<float>& w, int64_t c, int64_t oc) {
  std::vector<float> r(size_t(c * oc));
  for (int64_t i = 0; i < c; ++i)
    for (int64_t o = 0; o < oc; ++o) r[size_t(o * c + i)] = w[size_t(i * oc + o)];
  return r;
}

template <class Sep>
void load_sep(const WeightMap& w, const std::string& prefix, int64_t c, Sep* s) {
  const int64_t oc = dim_of(w, prefix + "/pointwise_filter", 3);
  s->c = c;
  s->oc = oc;
  s->dw = get(w, prefix + "/depthwise_filter", {3, 3, c, 1}).data;
  s->pw = transpose_to_rows(get(w, prefix + "/pointwise_filter", {1, 1, c, oc}).data, c, oc);
  s->bias = get(w, prefix + "/bias", {oc}).data;
}

// Depthwise 3x3 ('same', stride 1 or 2) then pointwise + bias + activation. Returns the output
// size in *oh / *ow.
template <class Sep>
void sep_conv(const Sep& s, const float* x, int64_t h, int64_t w, int64_t stride, float* tmp, float* y,
              ConvActivation act, ThreadPool* pool, int64_t* oh, int64_t* ow) {
  Conv2dParams p;
  p.in_h = h;
  p.in_w = w;
  p.in_c = p.out_c = s.c;
  p.k_h = p.k_w = 3;
  p.stride_h = p.stride_w = stride;
  conv_geometry(h, 3, stride, true, &p.out_h, &p.pad_top);
  conv_geometry(w, 3, stride, true, &p.out_w, &p.pad_left);
  depthwise_conv2d_nhwc(x, s.dw.data(), nullptr, tmp, p, pool);
  pointwise_conv_nhwc(tmp, p.out_h * p.out_w, s.c, s.pw.data(), s.bias.data(), y, s.oc, act, kLeakyAlpha, pool);
  *oh = p.out_h;
  *ow = p.out_w;
}

// 2x2 max pool, 'same' padding.
void max_pool_2x2(const float* x, int64_t h, int64_t w, int64_t c, int64_t stride, float* y, ThreadPool* pool,
                  int64_t* oh, int64_t* ow) {
  Conv2dParams p;
  p.in_h = h;
  p.in_w = w;
  p.in_c = p.out_c = c;
  p.k_h = p.k_w = 2;
  p.stride_h = p.stride_w = stride;
  conv_geometry(h, 2, stride, true, &p.out_h, &p.pad_top);
  conv_geometry(w, 2, stride, true, &p.out_w, &p.pad_left);
  max_pool2d_nhwc(x, y, p, pool);
  *oh = p.out_h;
  *ow = p.out_w;
}

void normalize(const float* in, int64_t pixels, const float mean[3], float* out) {
  for (int64_t i = 0; i < pixels; ++i)
    for (int c = 0; c < 3; ++c) out[i * 3 + c] = (in[i * 3 + c] - mean[c]) / 255.0f;  // tf.sub then tf.div(255)
}

}  // namespace

// ------------------------------------------------------------------ preprocessing
void pad_to_square_resize(const uint8_t* rgb, int64_t stride, int64_t width, int64_t height, int64_t size,
                          bool center, float* out) {
  EMOLLM_CHECK_ARG(width > 0 && height > 0 && size > 0, "pad_to_square_resize: sizes must be positive");
  EMOLLM_CHECK_ARG(stride >= width * 3, "pad_to_square_resize: stride smaller than a row");
  const int64_t side = std::max(width, height);
  const int64_t diff = std::abs(height - width);
  const int64_t after = int64_t(js_round(double(diff) * (center ? 0.5 : 1.0)));
  const int64_t before = center ? diff - after : 0;
  // Offset of the image inside the padded square.
  const int64_t off_y = height < width ? before : 0;
  const int64_t off_x = width < height ? before : 0;
  auto px = [&](int64_t sy, int64_t sx, int c) -> double {
    const int64_t iy = sy - off_y, ix = sx - off_x;
    if (iy < 0 || iy >= height || ix < 0 || ix >= width) return 0.0;
    return double(rgb[iy * stride + ix * 3 + c]);
  };
  if (side == size) {
    for (int64_t y = 0; y < size; ++y)
      for (int64_t x = 0; x < size; ++x)
        for (int c = 0; c < 3; ++c) out[(y * size + x) * 3 + c] = float(px(y, x, c));
    return;
  }
  // tfjs-backend-cpu ResizeBilinear, alignCorners = false, halfPixelCenters = false (in double).
  const double ratio = double(side) / double(size);
  std::vector<int64_t> c0(static_cast<size_t>(size)), c1(static_cast<size_t>(size));
  std::vector<double> cf(static_cast<size_t>(size));
  for (int64_t x = 0; x < size; ++x) {
    const double src = ratio * double(x);
    c0[size_t(x)] = std::max<int64_t>(0, int64_t(std::floor(src)));
    cf[size_t(x)] = src - double(c0[size_t(x)]);
    c1[size_t(x)] = std::min<int64_t>(side - 1, int64_t(std::ceil(src)));
  }
  for (int64_t y = 0; y < size; ++y) {
    const double src = ratio * double(y);
    const int64_t r0 = std::max<int64_t>(0, int64_t(std::floor(src)));
    const double rf = src - double(r0);
    const int64_t r1 = std::min<int64_t>(side - 1, int64_t(std::ceil(src)));
    for (int64_t x = 0; x < size; ++x) {
      const int64_t x0 = c0[size_t(x)], x1 = c1[size_t(x)];
      const double f = cf[size_t(x)];
      for (int c = 0; c < 3; ++c) {
        const double tl = px(r0, x0, c), tr = px(r0, x1, c), bl = px(r1, x0, c), br = px(r1, x1, c);
        const double top = tl + (tr - tl) * f;
        const double bottom = bl + (br - bl) * f;
        out[(y * size + x) * 3 + c] = float(top + (bottom - top) * rf);
      }
    }
  }
}

bool extract_face_crop(const uint8_t* rgb, int64_t width, int64_t height, const FaceBox& box, float* out) {
  EMOLLM_CHECK_ARG(width > 0 && height > 0, "extract_face_crop: image sizes must be positive");
  // Box.clipAtImageBorders(width, height) then floor()
  const double cx = std::max(box.x, 0.0), cy = std::max(box.y, 0.0);
  const double right = box.x + box.width, bottom = box.y + box.height;
  const double cw = std::min(right - cx, double(width) - cx), ch = std::min(bottom - cy, double(height) - cy);
  const double fx = std::floor(cx), fy = std::floor(cy), fw = std::floor(cw), fh = std::floor(ch);
  if (!(fw > 0 && fh > 0) || !std::isfinite(fx) || !std::isfinite(fy)) return false;
  const int64_t x0 = int64_t(fx), y0 = int64_t(fy);
  const int64_t w = std::min<int64_t>(int64_t(fw), width - x0), h = std::min<int64_t>(int64_t(fh), height - y0);
  if (w <= 0 || h <= 0 || x0 >= width || y0 >= height) return false;
  pad_to_square_resize(rgb + (y0 * width + x0) * 3, width * 3, w, h, kExpressionInputSize, true, out);
  return true;
}

// ------------------------------------------------------------------ TinyFaceDetector
TinyFaceDetector::TinyFaceDetector(const WeightMap& w) {
  conv0_oc_ = dim_of(w, "conv0/filters", 3);
  conv0_w_ = get(w, "conv0/filters", {3, 3, 3, conv0_oc_}).data;
  conv0_b_ = get(w, "conv0/bias", {conv0_oc_}).data;
  int64_t c = conv0_oc_;
  for (int i = 0; i < 5; ++i) {
    load_sep(w, "conv" + std::to_string(i + 1), c, &sep_[i]);
    c = sep_[i].oc;
  }
  head_c_ = c;
  const int64_t out = kNumAnchors * 5;
  conv8_w_ = transpose_to_rows(get(w, "conv8/filters", {1, 1, c, out}).data, c, out);
  conv8_b_ = get(w, "conv8/bias", {out}).data;
}

std::vector<float> TinyFaceDetector::forward(const float* input, int64_t size, ThreadPool* pool, int64_t* grid) const {
  EMOLLM_CHECK_ARG(size >= 64 && size % 32 == 0, "TinyFaceDetector: input size must be a multiple of 32, >= 64");
  // Largest activation: conv0's output, (size - 2)^2 x 16; separable layers at most that too.
  size_t cap = size_t(size * size * 3);
  {
    int64_t h = size - 2;
    cap = std::max(cap, size_t(h * h * conv0_oc_));
    h = (h + 1) / 2;
    for (int i = 0; i < 5; ++i) {
      cap = std::max(cap, size_t(h * h * sep_[i].oc));
      if (i < 4) h = (h + 1) / 2;
    }
  }
  thread_local Scratch bufs[3];
  float* a = bufs[0].get(cap);
  float* b = bufs[1].get(cap);
  float* t = bufs[2].get(cap);
  normalize(input, size * size, kDetectorMean, a);

  // conv0: 3x3 'valid' + bias + leaky
  Conv2dParams p;
  p.in_h = p.in_w = size;
  p.in_c = 3;
  p.out_c = conv0_oc_;
  p.k_h = p.k_w = 3;
  p.out_h = p.out_w = size - 2;
  p.act = ConvActivation::LeakyRelu;
  p.alpha = kLeakyAlpha;
  conv2d_nhwc(a, conv0_w_.data(), conv0_b_.data(), b, p, pool);
  int64_t h = size - 2, w = size - 2, c = conv0_oc_;
  max_pool_2x2(b, h, w, c, 2, a, pool, &h, &w);
  for (int i = 0; i < 5; ++i) {
    sep_conv(sep_[i], a, h, w, 1, t, b, ConvActivation::LeakyRelu, pool, &h, &w);
    c = sep_[i].oc;
    max_pool_2x2(b, h, w, c, i < 4 ? 2 : 1, a, pool, &h, &w);
  }
  const int64_t out_c = kNumAnchors * 5;
  std::vector<float> out(size_t(h * w * out_c));
  pointwise_conv_nhwc(a, h * w, c, conv8_w_.data(), conv8_b_.data(), out.data(), out_c, ConvActivation::None,
                      0.0f, pool);
  *grid = h;
  for (Scratch& s : bufs) s.trim(kKeepScratch);
  return out;
}

std::vector<FaceBox> TinyFaceDetector::decode(const float* out, int64_t grid, int64_t width, int64_t height,
                                              const DetectOptions& opt) {
  EMOLLM_CHECK_ARG(width > 0 && height > 0 && grid > 0, "TinyFaceDetector::decode: sizes must be positive");
  auto sigmoid = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  const double input_size = double(opt.input_size);
  // computeReshapedDimensions: the image's size inside the (unpadded part of the) input square
  const double scale = input_size / double(std::max(width, height));
  const double rw = js_round(double(width) * scale), rh = js_round(double(height) * scale);
  const double side = std::max(rw, rh);
  const double corr_x = side / rw, corr_y = side / rh;
  struct Cand {
    double left, top, right, bottom, score;
  };
  std::vector<Cand> cands;
  const double n = double(grid);
  for (int64_t row = 0; row < grid; ++row)
    for (int64_t col = 0; col < grid; ++col)
      for (int a = 0; a < kNumAnchors; ++a) {
        const float* v = out + ((row * grid + col) * kNumAnchors + a) * 5;
        const double score = sigmoid(double(v[4]));
        if (opt.score_threshold > 0 && !(score > opt.score_threshold)) continue;
        const double ctx = ((double(col) + sigmoid(double(v[0]))) / n) * corr_x;
        const double cty = ((double(row) + sigmoid(double(v[1]))) / n) * corr_y;
        const double wl = ((std::exp(double(v[2])) * kAnchors[a][0]) / n) * corr_x;
        const double hl = ((std::exp(double(v[3])) * kAnchors[a][1]) / n) * corr_y;
        const double x = ctx - wl / 2, y = cty - hl / 2;
        cands.push_back({x, y, x + wl, y + hl, score});
      }
  // face-api's nonMaxSuppression: ascending stable sort by score, repeatedly take the last.
  std::vector<size_t> order(cands.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t i, size_t j) { return cands[i].score < cands[j].score; });
  auto iou = [&](const Cand& p, const Cand& q) {
    // boxes rescaled by inputSize as face-api does (IoU is scale-invariant up to rounding)
    const double pl = p.left * input_size, pt = p.top * input_size, pr = p.right * input_size, pb = p.bottom * input_size;
    const double ql = q.left * input_size, qt = q.top * input_size, qr = q.right * input_size, qb = q.bottom * input_size;
    const double iw = std::max(0.0, std::min(pr, qr) - std::max(pl, ql));
    const double ih = std::max(0.0, std::min(pb, qb) - std::max(pt, qt));
    const double inter = iw * ih;
    return inter / ((pr - pl) * (pb - pt) + (qr - ql) * (qb - qt) - inter);
  };
  std::vector<FaceBox> result;
  while (!order.empty()) {
    const size_t cur = order.back();
    order.pop_back();
    const Cand& c = cands[cur];
    FaceBox fb;
    fb.x = c.left * double(width);
    fb.y = c.top * double(height);
    fb.width = (c.right - c.left) * double(width);
    fb.height = (c.bottom - c.top) * double(height);
    fb.score = c.score;
    result.push_back(fb);
    std::vector<size_t> keep;
    keep.reserve(order.size());
    for (size_t idx : order)
      if (iou(c, cands[idx]) <= opt.iou_threshold) keep.push_back(idx);
    order.swap(keep);
  }
  return result;
}

std::vector<FaceBox> TinyFaceDetector::detect(const uint8_t* rgb, int64_t width, int64_t height,
                                              const DetectOptions& opt, ThreadPool* pool) const {
  EMOLLM_CHECK_ARG(width > 0 && height > 0, "detect: image sizes must be positive");
  EMOLLM_CHECK_ARG(opt.input_size >= 64 && opt.input_size % 32 == 0 && opt.input_size <= 2048,
                   "detect: inputSize must be a multiple of 32 in [64, 2048]");
  EMOLLM_CHECK_ARG(opt.score_threshold >= 0 && opt.score_threshold < 1, "detect: scoreThreshold must be in [0, 1)");
  EMOLLM_CHECK_ARG(opt.iou_threshold >= 0 && opt.iou_threshold <= 1, "detect: iouThreshold must be in [0, 1]");
  std::vector<float> input(size_t(opt.input_size * opt.input_size * 3));
  pad_to_square_resize(rgb, width * 3, width, height, opt.input_size, false, input.data());
  int64_t grid = 0;
  std::vector<float> out = forward(input.data(), opt.input_size, pool, &grid);
  return decode(out.data(), grid, width, height, opt);
}

// ------------------------------------------------------------------ FaceExpressionNet
FaceExpressionNet::FaceExpressionNet(const WeightMap& w) {
  int64_t c = 3;
  for (int d = 0; d < 4; ++d) {
    Dense& D = dense_[d];
    const std::string pre = "dense" + std::to_string(d);
    D.c = c;
    if (d == 0) {
      D.oc = dim_of(w, pre + "/conv0/filters", 3);
      D.conv0_w = get(w, pre + "/conv0/filters", {3, 3, c, D.oc}).data;
      D.conv0_b = get(w, pre + "/conv0/bias", {D.oc}).data;
    } else {
      load_sep(w, pre + "/conv0", c, &D.conv0);
      D.oc = D.conv0.oc;
    }
    for (int j = 0; j < 3; ++j) {
      load_sep(w, pre + "/conv" + std::to_string(j + 1), D.oc, &D.conv[j]);
      if (D.conv[j].oc != D.oc)
        throw Error(ErrorCode::InvalidArgument, "face weights: " + pre + "/conv" + std::to_string(j + 1) +
                                                    " must keep " + std::to_string(D.oc) + " channels");
    }
    c = D.oc;
  }
  fc_w_ = transpose_to_rows(get(w, "fc/weights", {c, kNumExpressions}).data, c, kNumExpressions);
  fc_b_ = get(w, "fc/bias", {kNumExpressions}).data;
}

void FaceExpressionNet::forward(const float* crops, int64_t n, float* probs, ThreadPool* pool) const {
  EMOLLM_CHECK_ARG(n >= 0, "FaceExpressionNet: n must be >= 0");
  const int64_t S = kExpressionInputSize;
  if (n == 1 || !pool || pool->size() <= 1) {
    // One face: parallel inside the layers.
    for (int64_t f = 0; f < n; ++f) forward_one(crops + f * S * S * 3, probs + f * kNumExpressions, pool);
    return;
  }
  // Several faces: one face per worker (coarse grain; the layers at 7x7..56x56 are small).
  pool->parallel_for(n, 1, [&](int64_t b, int64_t e) {
    for (int64_t f = b; f < e; ++f) forward_one(crops + f * S * S * 3, probs + f * kNumExpressions, nullptr);
  });
}

void FaceExpressionNet::forward_one(const float* crop, float* pr, ThreadPool* pool) const {
  const int64_t S = kExpressionInputSize;
  size_t cap = size_t(S * S * 3);  // largest map: the input or a block's input / output
  for (int64_t d = 0, h = S; d < 4; ++d) {
    cap = std::max(cap, size_t(h * h * dense_[d].c));
    h = (h + 1) / 2;
    cap = std::max(cap, size_t(h * h * dense_[d].oc));
  }
  thread_local Scratch bufs[7];
  float* x = bufs[0].get(cap);
  float* o1 = bufs[1].get(cap);
  float* o2 = bufs[2].get(cap);
  float* o3 = bufs[3].get(cap);
  float* o4 = bufs[4].get(cap);
  float* in = bufs[5].get(cap);
  float* tmp = bufs[6].get(cap);
  const int64_t feat_c = dense_[3].oc;
  float* feat = bufs[6].get(cap);  // tmp is free once the blocks are done
  {
    normalize(crop, S * S, kExpressionMean, x);
    int64_t h = S, w = S, c = 3;
    for (int d = 0; d < 4; ++d) {
      const Dense& D = dense_[d];
      int64_t oh, ow;
      if (d == 0) {
        Conv2dParams p;
        p.in_h = h;
        p.in_w = w;
        p.in_c = c;
        p.out_c = D.oc;
        p.k_h = p.k_w = 3;
        p.stride_h = p.stride_w = 2;
        conv_geometry(h, 3, 2, true, &p.out_h, &p.pad_top);
        conv_geometry(w, 3, 2, true, &p.out_w, &p.pad_left);
        p.act = ConvActivation::Relu;
        conv2d_nhwc(x, D.conv0_w.data(), D.conv0_b.data(), o1, p, pool);
        oh = p.out_h;
        ow = p.out_w;
      } else {
        sep_conv(D.conv0, x, h, w, 2, tmp, o1, ConvActivation::Relu, pool, &oh, &ow);
      }
      h = oh;
      w = ow;
      c = D.oc;
      const int64_t m = h * w * c;
      int64_t th, tw;
      // face-api's denseBlock4: sums as tf.add(out1, tf.add(out2, tf.add(out3, out4)))
      sep_conv(D.conv[0], o1, h, w, 1, tmp, o2, ConvActivation::None, pool, &th, &tw);
      for (int64_t i = 0; i < m; ++i) in[i] = std::max(o1[i] + o2[i], 0.0f);
      sep_conv(D.conv[1], in, h, w, 1, tmp, o3, ConvActivation::None, pool, &th, &tw);
      for (int64_t i = 0; i < m; ++i) in[i] = std::max(o1[i] + (o2[i] + o3[i]), 0.0f);
      sep_conv(D.conv[2], in, h, w, 1, tmp, o4, ConvActivation::None, pool, &th, &tw);
      for (int64_t i = 0; i < m; ++i) x[i] = std::max(o1[i] + (o2[i] + (o3[i] + o4[i])), 0.0f);
    }
    // avgPool 7x7, stride 2, 'valid' -> 1x1 (the feature map is 7x7 for 112 inputs)
    Conv2dParams p;
    p.in_h = h;
    p.in_w = w;
    p.in_c = p.out_c = c;
    p.k_h = p.k_w = 7;
    p.stride_h = p.stride_w = 2;
    conv_geometry(h, 7, 2, false, &p.out_h, &p.pad_top);
    conv_geometry(w, 7, 2, false, &p.out_w, &p.pad_left);
    EMOLLM_CHECK_ARG(p.out_h == 1 && p.out_w == 1, "FaceExpressionNet: unexpected feature map size");
    avg_pool2d_nhwc(x, feat, p, nullptr);
  }
  float logits[kNumExpressions];
  for (int k = 0; k < kNumExpressions; ++k) {
    float acc = 0.0f;
    const float* wr = fc_w_.data() + k * feat_c;
    for (int64_t i = 0; i < feat_c; ++i) acc += feat[i] * wr[i];
    logits[k] = acc + fc_b_[size_t(k)];
  }
  float mx = logits[0];
  for (int k = 1; k < kNumExpressions; ++k) mx = std::max(mx, logits[k]);
  float sum = 0.0f;
  for (int k = 0; k < kNumExpressions; ++k) {
    pr[k] = std::exp(logits[k] - mx);
    sum += pr[k];
  }
  for (int k = 0; k < kNumExpressions; ++k) pr[k] /= sum;
}

}  // namespace emollm::face
