// EmoLLM multi-perspective projection (kernels/cpu/mvp_projection.cpp) against an unfused naive
// double-precision composition, head by head, on odd shapes and strides.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../../kernels/cpu/kernels.h"
#include "../../base/error.h"
#include "testing.h"

using namespace emollm;

namespace {

struct MvpRng {
  uint64_t s;
  explicit MvpRng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 7) {}
  float uniform(float lo, float hi) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    return lo + (hi - lo) * float((s >> 11) * (1.0 / 9007199254740992.0));
  }
};

struct MvpCase {
  MvpProjectionParams p;
  std::vector<float> x, w1, b1, w2, b2, g;
};

MvpCase make_case(int64_t T, int64_t din, int64_t dhid, int64_t dout, int64_t H, int64_t ldx, int64_t ldy,
                  uint64_t seed) {
  MvpCase c;
  c.p.tokens = T; c.p.d_in = din; c.p.d_hid = dhid; c.p.d_out = dout; c.p.n_heads = H;
  c.p.ldx = ldx; c.p.ldy = ldy;
  MvpRng r(seed);
  const int64_t lx = ldx ? ldx : din;
  c.x.resize(size_t(T * lx));
  for (auto& v : c.x) v = r.uniform(-2.f, 2.f);
  c.w1.resize(size_t(H * dhid * din));
  for (auto& v : c.w1) v = r.uniform(-1.f, 1.f) / std::sqrt(float(din));
  c.b1.resize(size_t(H * dhid));
  for (auto& v : c.b1) v = r.uniform(-0.5f, 0.5f);
  c.w2.resize(size_t(H * dout * dhid));
  for (auto& v : c.w2) v = r.uniform(-1.f, 1.f) / std::sqrt(float(dhid));
  c.b2.resize(size_t(H * dout));
  for (auto& v : c.b2) v = r.uniform(-0.5f, 0.5f);
  c.g.resize(size_t(H * dout));
  for (auto& v : c.g) v = r.uniform(0.f, 1.f);
  return c;
}

// Unfused, head by head, in double. Weights are read as given (already rounded when testing bf16).
std::vector<float> naive(const MvpCase& c, bool with_bias) {
  const auto& p = c.p;
  const int64_t lx = p.ldx ? p.ldx : p.d_in;
  std::vector<double> y(size_t(p.tokens * p.d_out), 0.0), hid(size_t(p.d_hid));
  for (int64_t h = 0; h < p.n_heads; ++h) {
    for (int64_t t = 0; t < p.tokens; ++t) {
      for (int64_t j = 0; j < p.d_hid; ++j) {
        double a = with_bias ? c.b1[size_t(h * p.d_hid + j)] : 0.0;
        const float* w = &c.w1[size_t((h * p.d_hid + j) * p.d_in)];
        for (int64_t k = 0; k < p.d_in; ++k) a += double(c.x[size_t(t * lx + k)]) * w[k];
        hid[size_t(j)] = 0.5 * a * (1.0 + std::erf(a / std::sqrt(2.0)));
      }
      for (int64_t o = 0; o < p.d_out; ++o) {
        double a = with_bias ? c.b2[size_t(h * p.d_out + o)] : 0.0;
        const float* w = &c.w2[size_t((h * p.d_out + o) * p.d_hid)];
        for (int64_t j = 0; j < p.d_hid; ++j) a += hid[size_t(j)] * w[j];
        y[size_t(t * p.d_out + o)] += double(c.g[size_t(h * p.d_out + o)]) * a;
      }
    }
  }
  return std::vector<float>(y.begin(), y.end());
}

std::vector<uint16_t> to_bf16(std::vector<float>& w) {  // rounds w in place, returns the bf16 bits
  std::vector<uint16_t> b(w.size());
  for (size_t i = 0; i < w.size(); ++i) { b[i] = f32_to_bf16(w[i]); w[i] = bf16_to_f32(b[i]); }
  return b;
}

void run_f32(int64_t T, int64_t din, int64_t dhid, int64_t dout, int64_t H, int64_t ldx, int64_t ldy,
             bool with_bias, uint64_t seed) {
  MvpCase c = make_case(T, din, dhid, dout, H, ldx, ldy, seed);
  const int64_t ly = ldy ? ldy : dout;
  std::vector<float> y(size_t(T * ly), -777.f);
  mvp_projection(c.x.data(), c.w1.data(), with_bias ? c.b1.data() : nullptr, c.w2.data(),
                 with_bias ? c.b2.data() : nullptr, c.g.data(), DType::F32, y.data(), c.p, nullptr);
  const std::vector<float> want = naive(c, with_bias);
  std::vector<float> got(size_t(T * dout));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < dout; ++o) got[size_t(t * dout + o)] = y[size_t(t * ly + o)];
  const std::string what = "mvp f32 T=" + std::to_string(T) + " din=" + std::to_string(din) +
                           " dhid=" + std::to_string(dhid) + " dout=" + std::to_string(dout) +
                           " H=" + std::to_string(H);
  EXPECT_ALL_CLOSE(got.data(), want.data(), got.size(), 2e-4, 2e-4, what);
  // Padding between rows is left alone.
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = dout; o < ly; ++o) EXPECT(y[size_t(t * ly + o)] == -777.f);
}

}  // namespace

TEST(mvp_projection_matches_naive_odd_shapes) {
  run_f32(7, 33, 19, 23, 3, 0, 0, true, 1);
  run_f32(5, 33, 19, 23, 3, 41, 29, true, 2);
  run_f32(1, 17, 9, 5, 1, 0, 0, true, 3);
  run_f32(13, 64, 40, 31, 4, 70, 0, false, 4);
  run_f32(9, 128, 96, 64, 2, 0, 64, true, 5);  // vector-friendly shapes
}

TEST(mvp_projection_bf16_weights) {
  const int64_t T = 6, din = 48, dhid = 37, dout = 21, H = 3;
  MvpCase c = make_case(T, din, dhid, dout, H, 0, 0, 11);
  const std::vector<uint16_t> w1 = to_bf16(c.w1), w2 = to_bf16(c.w2);
  std::vector<float> y(size_t(T * dout));
  mvp_projection(c.x.data(), w1.data(), c.b1.data(), w2.data(), c.b2.data(), c.g.data(), DType::BF16, y.data(),
                 c.p, nullptr);
  const std::vector<float> want = naive(c, true);
  // BF16 weights may run on bf16 dot-product hardware, which rounds the activations to bf16 too.
  EXPECT_ALL_CLOSE(y.data(), want.data(), y.size(), 3e-2, 3e-2, "mvp bf16 weights");
}

TEST(mvp_projection_zero_tokens_and_bad_args) {
  MvpCase c = make_case(0, 8, 4, 4, 2, 0, 0, 21);
  float y = 1.f;
  mvp_projection(c.x.data(), c.w1.data(), nullptr, c.w2.data(), nullptr, c.g.data(), DType::F32, &y, c.p, nullptr);
  EXPECT(y == 1.f);
  MvpProjectionParams bad = c.p;
  bad.tokens = 1;
  bad.ldx = 3;  // < d_in
  EXPECT_THROWS(mvp_projection(c.x.data(), c.w1.data(), nullptr, c.w2.data(), nullptr, c.g.data(), DType::F32, &y,
                               bad, nullptr),
                ErrorCode::InvalidArgument);
  bad = c.p;
  bad.n_heads = 0;
  EXPECT_THROWS(mvp_projection(c.x.data(), c.w1.data(), nullptr, c.w2.data(), nullptr, c.g.data(), DType::F32, &y,
                               bad, nullptr),
                ErrorCode::InvalidArgument);
}
