// Tests for emollm::attention (tiled, online softmax, AVX-512/AVX2) and emollm::ref::attention.
//
// Tolerances (outputs are convex combinations of V rows, |v| <= 1, so absolute tolerances):
//   ref::attention vs naive double (scores materialised here) : atol 1e-6  (ref accumulates in
//       double; the only error is rounding the output to float, <= 6e-8)
//   vector paths (each ISA level) vs ref::attention           : atol 1e-5  (f32 dot products,
//       f32 online-softmax accumulation, vector exp ~1e-7 relative)
//   large logits (exact integer logits ~1e3, see below)       : atol 1e-5 vs naive double
//   bf16 bidirectional path (AttentionParams::bf16_products) vs ref::attention on q, k, v rounded
//   to bf16 beforehand                                         : atol 2^-8 * 1.01 * max|v| + 2e-5
//       (the softmax weights are rounded to bf16, relative 2^-9, and renormalised by their sum,
//       so each weight is off by at most ~2^-8 relative and the output, a convex combination of
//       v, by 2^-8 max|v|; 2e-5 covers the f32 sums of the scores and of P V)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "../../base/arena.h"
#include "../../base/dtype.h"
#include "../../kernels/cpu/attention_internal.h"
#if defined(__x86_64__)
#include "../../kernels/cpu/attention_bf16_pack.h"
#endif
#include "../../kernels/cpu/kernels.h"
#include "../../base/error.h"
#include "../../base/thread_pool.h"
#include "testing.h"

using namespace emollm;

namespace {

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint32_t next() {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    return uint32_t(s >> 32);
  }
  float uniform(float a) { return a * (float(next()) * (2.0f / 4294967296.0f) - 1.0f); }  // [-a, a)
};

struct Case {
  int64_t n_q, n_kv, n_heads, n_kv_heads, D;
  bool causal;
  int64_t q_pos0;
  int64_t pad = 0;     // extra elements per token row of q, k, v and out (strided layout)
  bool fused = false;  // q, k, v interleaved in one [n, (H + 2 Hkv) D + pad] buffer (n_q == n_kv)
  float scale = 0.0f;
};

std::string describe(const Case& c) {
  char b[256];
  std::snprintf(b, sizeof b, "n_q=%lld n_kv=%lld H=%lld Hkv=%lld D=%lld %s q_pos0=%lld pad=%lld%s",
                (long long)c.n_q, (long long)c.n_kv, (long long)c.n_heads, (long long)c.n_kv_heads,
                (long long)c.D, c.causal ? "causal" : "bidir", (long long)c.q_pos0, (long long)c.pad,
                c.fused ? " fused-qkv" : "");
  return b;
}

const float kNaN = std::nanf("");
const float kSentinel = 12345.0f;

// Inputs laid out per the case. Padding of q/k/v rows is NaN: reading it would poison the result.
struct Data {
  std::vector<float> qb, kb, vb;
  const float *q = nullptr, *k = nullptr, *v = nullptr;
  AttentionParams p;
};

Data make_data(const Case& c, uint64_t seed, float q_amp = 6.0f) {
  Data d;
  AttentionParams& p = d.p;
  p.n_q = c.n_q; p.n_kv = c.n_kv; p.n_heads = c.n_heads; p.n_kv_heads = c.n_kv_heads; p.head_dim = c.D;
  p.causal = c.causal; p.q_pos0 = c.q_pos0; p.scale = c.scale;
  const int64_t qw = c.n_heads * c.D, kw = c.n_kv_heads * c.D;
  Rng rng(seed);
  if (c.fused) {
    const int64_t ld = qw + 2 * kw + c.pad;
    d.qb.assign(size_t(c.n_kv * ld), kNaN);
    for (int64_t t = 0; t < c.n_kv; ++t) {
      float* row = d.qb.data() + t * ld;
      for (int64_t e = 0; e < qw; ++e) row[e] = rng.uniform(q_amp);
      for (int64_t e = 0; e < 2 * kw; ++e) row[qw + e] = rng.uniform(1.0f);
    }
    d.q = d.qb.data(); d.k = d.q + qw; d.v = d.k + kw;
    p.ldq = p.ldk = p.ldv = ld;
  } else {
    p.ldq = qw + c.pad; p.ldk = kw + c.pad; p.ldv = kw + c.pad;
    d.qb.assign(size_t(c.n_q * p.ldq), kNaN);
    d.kb.assign(size_t(c.n_kv * p.ldk), kNaN);
    d.vb.assign(size_t(c.n_kv * p.ldv), kNaN);
    for (int64_t t = 0; t < c.n_q; ++t)
      for (int64_t e = 0; e < qw; ++e) d.qb[size_t(t * p.ldq + e)] = rng.uniform(q_amp);
    for (int64_t t = 0; t < c.n_kv; ++t)
      for (int64_t e = 0; e < kw; ++e) {
        d.kb[size_t(t * p.ldk + e)] = rng.uniform(1.0f);
        d.vb[size_t(t * p.ldv + e)] = rng.uniform(1.0f);
      }
    d.q = d.qb.data(); d.k = d.kb.data(); d.v = d.vb.data();
  }
  p.ldo = qw + c.pad;
  return d;
}

// Independent naive implementation: materialises the [heads, n_q, n_kv] score matrix in double,
// masks with -inf, row softmax (max subtracted), then P V. Returns dense [n_q, n_heads, D].
std::vector<float> naive_attention(const float* q, const float* k, const float* v, const AttentionParams& p) {
  const int64_t H = p.n_heads, D = p.head_dim, nq = p.n_q, nkv = p.n_kv;
  const double scale = p.scale != 0.0f ? double(p.scale) : 1.0 / std::sqrt(double(D));
  std::vector<double> S(size_t(H * nq * nkv));
  for (int64_t h = 0; h < H; ++h) {
    const int64_t g = h / (H / p.n_kv_heads);
    for (int64_t i = 0; i < nq; ++i)
      for (int64_t j = 0; j < nkv; ++j) {
        double& s = S[size_t((h * nq + i) * nkv + j)];
        if (p.causal && j > p.q_pos0 + i) { s = -INFINITY; continue; }
        double dot = 0;
        for (int64_t t = 0; t < D; ++t) dot += double(q[i * p.ldq + h * D + t]) * double(k[j * p.ldk + g * D + t]);
        s = dot * scale;
      }
  }
  for (int64_t row = 0; row < H * nq; ++row) {
    double* s = S.data() + row * nkv;
    double mx = -INFINITY;
    for (int64_t j = 0; j < nkv; ++j) mx = std::max(mx, s[j]);
    double sum = 0;
    for (int64_t j = 0; j < nkv; ++j) { s[j] = std::exp(s[j] - mx); sum += s[j]; }
    for (int64_t j = 0; j < nkv; ++j) s[j] /= sum;
  }
  std::vector<float> out(size_t(nq * H * D));
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / p.n_kv_heads);
      for (int64_t t = 0; t < D; ++t) {
        double acc = 0;
        for (int64_t j = 0; j < nkv; ++j) acc += S[size_t((h * nq + i) * nkv + j)] * double(v[j * p.ldv + g * D + t]);
        out[size_t((i * H + h) * D + t)] = float(acc);
      }
    }
  return out;
}

// Runs fn(out) on a NaN-filled output buffer with sentinel padding; returns the dense result and
// checks the padding was not written.
template <typename Fn>
std::vector<float> run_out(const AttentionParams& p, const std::string& what, Fn fn) {
  const int64_t qw = p.n_heads * p.head_dim;
  std::vector<float> ob(size_t(p.n_q * p.ldo), kSentinel);
  for (int64_t i = 0; i < p.n_q; ++i)
    for (int64_t e = 0; e < qw; ++e) ob[size_t(i * p.ldo + e)] = kNaN;  // unwritten output fails
  fn(ob.data());
  std::vector<float> dense(size_t(p.n_q * qw));
  bool pad_ok = true;
  for (int64_t i = 0; i < p.n_q; ++i) {
    for (int64_t e = 0; e < qw; ++e) dense[size_t(i * qw + e)] = ob[size_t(i * p.ldo + e)];
    for (int64_t e = qw; e < p.ldo; ++e) pad_ok = pad_ok && ob[size_t(i * p.ldo + e)] == kSentinel;
  }
  if (!pad_ok) ::emollm_test::report_failure(__FILE__, __LINE__, "output padding written: " + what);
  return dense;
}

std::vector<Isa> vector_levels() {
  std::vector<Isa> v;
  const Isa det = isa_detected();
  if (det >= Isa::Avx2) v.push_back(Isa::Avx2);
  if (det >= Isa::Avx512) v.push_back(Isa::Avx512);  // Isa::Amx runs the Avx512 attention path
  return v;
}

// The case matrix shared by the ref-vs-naive and vector-vs-ref tests (small enough for naive).
std::vector<Case> small_cases() {
  std::vector<Case> cs;
  const int64_t dims[] = {8, 20, 64, 80, 128};
  const int64_t ratios[] = {1, 2, 4, 8};
  int salt = 0;
  for (int64_t D : dims)
    for (int64_t ratio : ratios) {
      const int64_t hkv = ratio == 8 ? 1 : 2;  // ratio 8 with one kv head: MQA
      const int64_t H = hkv * ratio;
      const int64_t nkv = 70 + 17 * (salt++ % 5);  // not a multiple of the block size
      cs.push_back({1, nkv, H, hkv, D, true, nkv - 1});                  // decode
      cs.push_back({nkv, nkv, H, hkv, D, true, 0});                      // prefill
      cs.push_back({23, nkv, H, hkv, D, true, nkv - 23 - 5});            // chunked prefill over a cache
      cs.push_back({19, nkv, H, hkv, D, false, 0, D == 20 ? 3 : 0});     // bidirectional
    }
  // strided layouts
  cs.push_back({40, 40, 8, 2, 64, true, 0, 0, true});     // fused QKV buffer, GQA
  cs.push_back({33, 33, 4, 4, 20, false, 0, 5, true});    // fused QKV, odd D, padded
  cs.push_back({17, 150, 8, 2, 80, true, 100, 13});       // padded rows, chunked
  cs.push_back({1, 129, 4, 1, 128, true, 128, 16});       // padded decode, MQA
  // edges: single kv token, exactly one block, block + 1, tiny head dim, huge group (> 64 rows)
  cs.push_back({1, 1, 2, 1, 8, true, 0});
  cs.push_back({64, 64, 2, 2, 16, true, 0});
  cs.push_back({65, 65, 3, 1, 24, true, 0});
  cs.push_back({3, 97, 80, 1, 8, true, 90});              // group of 80 query heads
  cs.push_back({5, 40, 4, 2, 32, false, 0, 0, false, 0.37f});  // explicit scale
  return cs;
}

void check_vector_vs_ref(const Case& c, uint64_t seed, ThreadPool* pool2) {
  Data d = make_data(c, seed);
  const std::string what = describe(c);
  std::vector<float> ref = run_out(d.p, what, [&](float* o) { ref::attention(d.q, d.k, d.v, o, d.p); });
  for (Isa isa : vector_levels()) {
    IsaCapScope cap(isa);
    for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), pool2}) {
      const std::string w = what + " isa=" + isa_name(isa) + (pool ? " pool=2" : " pool=null");
      std::vector<float> got = run_out(d.p, w, [&](float* o) { attention(d.q, d.k, d.v, o, d.p, pool); });
      EXPECT_ALL_CLOSE(got.data(), ref.data(), got.size(), 1e-5, 0.0, w);
    }
  }
}

}  // namespace

TEST(attention_ref_matches_naive_double) {
  uint64_t seed = 1;
  for (const Case& c : small_cases()) {
    Data d = make_data(c, seed++);
    const std::string what = describe(c);
    std::vector<float> want = naive_attention(d.q, d.k, d.v, d.p);
    std::vector<float> got = run_out(d.p, what, [&](float* o) { ref::attention(d.q, d.k, d.v, o, d.p); });
    EXPECT_ALL_CLOSE(got.data(), want.data(), got.size(), 1e-6, 0.0, "ref " + what);
  }
}

TEST(attention_scalar_dispatch_is_ref) {
  Case c{9, 50, 4, 2, 20, true, 41};
  Data d = make_data(c, 7);
  std::vector<float> ref = run_out(d.p, "ref", [&](float* o) { ref::attention(d.q, d.k, d.v, o, d.p); });
  IsaCapScope cap(Isa::Scalar);
  std::vector<float> got = run_out(d.p, "scalar", [&](float* o) { attention(d.q, d.k, d.v, o, d.p, nullptr); });
  EXPECT(got == ref);  // bit-identical: the Scalar level runs ref::attention
}

TEST(attention_vector_paths_match_ref_small) {
  EXPECT(!vector_levels().empty() || isa_detected() == Isa::Scalar);
  ThreadPool pool(2);
  uint64_t seed = 100;
  for (const Case& c : small_cases()) check_vector_vs_ref(c, seed++, &pool);
}

TEST(attention_vector_paths_match_ref_long_kv) {
  ThreadPool pool(2);
  const int64_t n = 3000;
  std::vector<Case> cs = {
      {1, n, 8, 2, 128, true, n - 1},        // decode, GQA 4
      {1, n, 8, 1, 64, true, n - 1},         // decode, MQA: split-KV across threads
      {1, n, 4, 4, 80, true, n - 1},         // decode, MHA
      {1, n, 8, 8, 20, false, 0},            // decode-like bidirectional
      {37, n, 8, 2, 128, true, n - 37},      // chunked prefill at the end of a long cache
      {40, n, 4, 1, 64, true, 1500},         // chunked prefill mid-cache (keys past the end unseen)
      {3, n, 2, 1, 8, false, 0, 7},          // bidirectional, padded
  };
  uint64_t seed = 500;
  for (const Case& c : cs) check_vector_vs_ref(c, seed++, &pool);
}

// Split-KV merging (taken with a pool when there are few work units) where some rows see no key
// of a later piece (q_pos0 not block aligned), and prefill with many tiles.
TEST(attention_vector_paths_match_ref_splits_and_tiles) {
  ThreadPool pool(2);
  std::vector<Case> cs = {
      {246, 256, 1, 1, 64, true, 10},
      {256, 256, 1, 1, 32, true, 0},
      {128, 528, 1, 1, 48, true, 400},
      {300, 300, 4, 2, 64, true, 0},
      {200, 200, 16, 2, 16, true, 0},
  };
  uint64_t seed = 900;
  for (const Case& c : cs) check_vector_vs_ref(c, seed++, &pool);
}

// ref::attention on the case's q, k, v rounded to bf16 beforehand (NaN padding stays NaN): what
// the bf16 bidirectional path is held to, within kBidirBf16Tol (|v| <= 1; the header's tolerance).
const double kBidirBf16Tol = std::ldexp(1.0, -8) * 1.01 * 1.0 + 2e-5;
std::vector<float> bf16_rounded_ref(const Case& c, const Data& d, const std::string& what) {
  auto rounded = [](const std::vector<float>& b) {
    std::vector<float> r(b);
    for (float& x : r)
      if (!std::isnan(x)) x = bf16_to_f32(f32_to_bf16(x));
    return r;
  };
  Data r = d;
  r.qb = rounded(d.qb); r.kb = rounded(d.kb); r.vb = rounded(d.vb);
  r.q = r.qb.data() + (d.q - d.qb.data());
  r.k = c.fused ? r.qb.data() + (d.k - d.qb.data()) : r.kb.data();
  r.v = c.fused ? r.qb.data() + (d.v - d.qb.data()) : r.vb.data();
  return run_out(r.p, what + " rounded ref", [&](float* o) { ref::attention(r.q, r.k, r.v, o, r.p); });
}

// The AVX512-BF16 path of long bidirectional attention (attention_bidir_bf16.cpp): against the
// double reference on bf16-rounded inputs (tolerance in the header), through the dispatcher with
// and without a pool (bit-identical to the direct call: every row is computed alone, whatever the
// tiling), over CLIP's length (577 = 9 key blocks + 1), GQA, head dims that need a second 64-wide
// output panel (80, 128) or a half pair (25), padded and fused layouts, one key, an explicit scale,
// a negative scale (the softmax's row min).
TEST(attention_bidir_bf16_matches_rounded_ref) {
  {  // which calls the path takes
    AttentionParams p;
    p.n_q = p.n_kv = 100; p.n_heads = p.n_kv_heads = 2; p.head_dim = 64; p.causal = false;
    p.bf16_products = true;
    const bool hw = cpu_features().avx512bf16 && isa_active() >= Isa::Avx512;
    EXPECT(attention_detail::bidir_bf16_applies(p) == hw);
    AttentionParams c = p; c.causal = true;
    AttentionParams f = p; f.bf16_products = false;
    AttentionParams s = p; s.n_q = attention_detail::kBidirBf16MinRows - 1;
    AttentionParams g = p; g.kv_block_size = 16;
    for (const AttentionParams& x : {c, f, s, g}) EXPECT(!attention_detail::bidir_bf16_applies(x));
  }
  if (!cpu_features().avx512bf16 || isa_detected() < Isa::Avx512) {
    std::printf("  skip attention_bidir_bf16_matches_rounded_ref: no AVX512-BF16 on this CPU\n");
    return;
  }
  IsaCapScope cap(Isa::Avx512);
  ThreadPool pool(2);
  std::vector<Case> cs = {
      {577, 577, 4, 4, 64, false, 0},                   // CLIP ViT-L/14-336 length, d = 64
      {100, 130, 4, 2, 80, false, 0, 3},                // GQA, d = 80 (Qwen2-VL), padded rows
      {40, 51, 2, 1, 25, false, 0},                     // odd head dim, odd n_kv
      {48, 48, 4, 4, 20, false, 0, 5, true},            // fused QKV buffer, padded
      {16, 1, 2, 2, 8, false, 0},                       // a single key
      {70, 200, 3, 1, 128, false, 0, 0, false, 0.37f},  // explicit scale, d = 128
      {60, 90, 2, 2, 64, false, 0, 0, false, -0.3f},    // negative scale: the softmax's row min
  };
  for (size_t ci = 0; ci < cs.size(); ++ci) {
    const Case& c = cs[ci];
    Data d = make_data(c, 1200 + ci);
    d.p.bf16_products = true;
    const std::string what = describe(c) + " bf16";
    std::vector<float> want = bf16_rounded_ref(c, d, what);
    const float scale = d.p.scale != 0.0f ? d.p.scale : float(1.0 / std::sqrt(double(c.D)));
    std::vector<float> direct = run_out(d.p, what + " direct", [&](float* o) {
      attention_detail::attention_bidir_bf16(d.q, d.k, d.v, o, d.p, scale, c.n_heads / c.n_kv_heads, nullptr);
    });
    EXPECT_ALL_CLOSE(direct.data(), want.data(), direct.size(), kBidirBf16Tol, 0.0, what + " vs rounded ref");
    for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool}) {
      std::vector<float> got = run_out(d.p, what, [&](float* o) { attention(d.q, d.k, d.v, o, d.p, pl); });
      EXPECT(got == direct);
    }
  }
}

// The bf16 bidirectional path's softmax steps (whole 32-score steps unmasked, the tail masked),
// its row maxima taken in the Q K^T kernel (positive scale) and its per-thread buffers kept
// between calls: against the rounded reference (kBidirBf16Tol), and bit for bit across tilings
// and buffers: the result of a fresh thread (its buffers made for this call alone, no pool) equals
// the calls without a pool, with 2 and 3 threads (other query ranges per unit) on threads whose
// kept buffers a larger call left behind (the second pass; stale contents), through calls whose
// sizes grow and shrink, n_kv around the 32-score steps (31, 32, 33, 63, 64, 65, 577), head dims
// 20 / 25 / 64 / 80 / 128, padded and fused rows, a negative scale (row min, no fused max). The
// last cases are built so that a wrong row maximum does not cancel out of the softmax: every score
// negative with a large scale (a padded key lane's 0 taken for the maximum underflows every weight
// to 0), and query rows of very different norms (another row's maximum under- or overflows the
// weights). Fails if the unmasked loop drops or double-counts a step or reads past n_kv, a kept
// buffer is too small, or the fused max lets a padded key lane or another row in.
TEST(attention_bidir_bf16_softmax_steps_and_buffers) {
  if (!cpu_features().avx512bf16 || isa_detected() < Isa::Avx512) {
    std::printf("  skip attention_bidir_bf16_softmax_steps_and_buffers: no AVX512-BF16 on this CPU\n");
    return;
  }
  IsaCapScope cap(Isa::Avx512);
  ThreadPool pool2(2), pool3(3);
  enum Kind { kPlain, kNegative, kSpread };
  struct K { Case c; Kind kind; };
  const std::vector<K> cs = {
      {{64, 31, 2, 2, 64, false, 0}, kPlain},   {{40, 32, 2, 1, 64, false, 0, 3}, kPlain},
      {{33, 33, 2, 2, 25, false, 0}, kPlain},   {{577, 577, 4, 4, 64, false, 0}, kPlain},
      {{70, 63, 3, 3, 80, false, 0}, kPlain},   {{65, 64, 2, 2, 128, false, 0, 0, false, -0.3f}, kPlain},
      {{48, 65, 4, 4, 20, false, 0, 5, true}, kPlain}, {{130, 300, 2, 2, 64, false, 0}, kPlain},
      {{20, 577, 2, 1, 64, false, 0}, kPlain},
      {{40, 33, 2, 2, 64, false, 0, 0, false, 24.0f}, kNegative}, {{70, 577, 2, 2, 64, false, 0, 0, false, 24.0f}, kNegative},
      {{50, 95, 2, 2, 64, false, 0, 0, false, 8.0f}, kSpread},   {{64, 577, 2, 1, 64, false, 0, 0, false, 8.0f}, kSpread},
  };
  for (int pass = 0; pass < 2; ++pass)  // the second pass meets buffers a larger call left behind
    for (size_t ci = 0; ci < cs.size(); ++ci) {
      const Case& c = cs[ci].c;
      const Kind kind = cs[ci].kind;
      Data d = make_data(c, 2400 + ci, kind == kPlain ? 6.0f : 1.0f);
      d.p.bf16_products = true;
      const int64_t qw = c.n_heads * c.D;
      if (kind == kNegative) {  // q >= 0, k <= -0.01: every score below 0
        for (float& x : d.qb) if (!std::isnan(x)) x = std::fabs(x);
        for (float& x : d.kb) if (!std::isnan(x)) x = -std::fabs(x) - 0.01f;
      } else if (kind == kSpread) {  // query rows of norms 1x, 8x, 15x
        for (int64_t t = 0; t < c.n_q; ++t)
          for (int64_t e = 0; e < qw; ++e) d.qb[size_t(t * d.p.ldq + e)] *= float(1 + 7 * (t % 3));
      }
      const std::string what = describe(c) + " bf16 pass " + std::to_string(pass) +
                               (kind == kNegative ? " negative scores" : kind == kSpread ? " spread rows" : "");
      std::vector<float> fresh;
      std::thread th([&] { fresh = run_out(d.p, what + " fresh thread", [&](float* o) { attention(d.q, d.k, d.v, o, d.p, nullptr); }); });
      th.join();
      if (pass == 0) {
        std::vector<float> want = bf16_rounded_ref(c, d, what);
        EXPECT_ALL_CLOSE(fresh.data(), want.data(), fresh.size(), kBidirBf16Tol, 0.0, what + " vs rounded ref");
      }
      for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
        std::vector<float> got = run_out(d.p, what, [&](float* o) { attention(d.q, d.k, d.v, o, d.p, pl); });
        const bool same = got.size() == fresh.size() && std::memcmp(got.data(), fresh.data(), got.size() * sizeof(float)) == 0;
        if (!same) std::printf("  differs: %s threads %d\n", what.c_str(), pl ? pl->size() : 1);
        EXPECT(same);
      }
    }
}

#if defined(__x86_64__)
// The bf16 attention packers (attention_bf16_pack.h) against their layouts written out in scalar
// code (f32_to_bf16: round to nearest even, as vcvtne2ps2bf16 for finite values), every word,
// including the zeros past the rows / columns: K's 64-row panels and V's row-pair panels, odd and
// even rows / columns around 16 / 32 / 64, a row stride longer than the row. Fails with any pair's
// halves swapped or a row, column or rounding off.
TEST(attention_bf16_packers_match_layout) {
  if (!cpu_features().avx512bf16 || isa_detected() < Isa::Avx512) {
    std::printf("  skip attention_bf16_packers_match_layout: no AVX512-BF16 on this CPU\n");
    return;
  }
  Rng rng(77);
  for (int64_t n_rows : {1, 2, 15, 33, 64, 65, 130})
    for (int64_t n_cols : {1, 7, 16, 25, 64, 80, 129}) {
      const int64_t ld = n_cols + 3;
      std::vector<float> x(size_t(n_rows * ld));
      for (float& v : x) v = rng.uniform(4.0f);
      auto word = [&](int64_t r, int64_t c) -> uint32_t {  // bf16 of x[r][c], 0 outside
        return r < n_rows && c < n_cols ? f32_to_bf16(x[size_t(r * ld + c)]) : 0u;
      };
      // V: 64-column blocks of row pairs, one pair more than the rows need (zeros)
      const int64_t n_pairs = (n_rows + 1) / 2 + 1, ncb = (n_cols + 63) / 64;
      AlignedPtr<uint32_t> vp = make_aligned<uint32_t>(size_t(ncb * n_pairs * 64));
      std::fill(vp.get(), vp.get() + ncb * n_pairs * 64, 0xDEADBEEFu);
      attention_bf16::pack_row_pair_panels(x.data(), ld, n_rows, n_cols, n_pairs, vp.get());
      int64_t bad = 0;
      for (int64_t c = 0; c < ncb; ++c)
        for (int64_t t = 0; t < n_pairs; ++t)
          for (int64_t j = 0; j < 64; ++j)
            bad += vp.get()[size_t((c * n_pairs + t) * 64 + j)] != (word(2 * t, 64 * c + j) | word(2 * t + 1, 64 * c + j) << 16);
      // K: 64-row blocks of column pairs
      const int64_t np = (n_cols + 1) / 2, nb = (n_rows + 63) / 64;
      AlignedPtr<uint32_t> kp = make_aligned<uint32_t>(size_t(nb * np * 64));
      std::fill(kp.get(), kp.get() + nb * np * 64, 0xDEADBEEFu);
      attention_bf16::pack_row_panels(x.data(), ld, n_rows, n_cols, nb, kp.get());
      for (int64_t b = 0; b < nb; ++b)
        for (int64_t q = 0; q < np; ++q)
          for (int64_t j = 0; j < 64; ++j)
            bad += kp.get()[size_t((b * np + q) * 64 + j)] != (word(64 * b + j, 2 * q) | word(64 * b + j, 2 * q + 1) << 16);
      if (bad) std::printf("  packers: %lld words differ at rows %lld cols %lld\n", (long long)bad, (long long)n_rows, (long long)n_cols);
      EXPECT(bad == 0);
    }
}
#endif

// Logits around 1e3: exp(1000) overflows even in double, so a softmax without the running max
// would give inf/NaN. q = e_0 and k_j[0] = integer logit with scale 1 make every logit exact in
// f32, so the comparison with the naive double reference is tight.
TEST(attention_large_logits_online_softmax) {
  ThreadPool pool(2);
  const int64_t D = 8, H = 2, n = 300;
  enum Pattern { Noisy, Increasing, Decreasing };
  for (Pattern pat : {Noisy, Increasing, Decreasing})
    for (bool causal : {true, false}) {
      AttentionParams p;
      p.n_q = n; p.n_kv = n; p.n_heads = H; p.n_kv_heads = 1; p.head_dim = D;
      p.ldq = H * D; p.ldk = D; p.ldv = D; p.ldo = H * D;
      p.scale = 1.0f; p.causal = causal; p.q_pos0 = 0;
      std::vector<float> q(size_t(n * H * D), 0.0f), k(size_t(n * D), 0.0f), v(size_t(n * D));
      Rng rng(42 + int(pat));
      for (int64_t i = 0; i < n; ++i) {
        q[size_t(i * H * D)] = 1.0f;                  // head 0: logit = k[j][0]
        q[size_t(i * H * D + D + 1)] = -1.0f;         // head 1: logit = -k[j][1]
      }
      for (int64_t j = 0; j < n; ++j) {
        float logit = pat == Noisy ? 990.0f + float(rng.next() % 21)
                      : pat == Increasing ? float(10 * j)
                                          : float(3000 - 10 * j);
        k[size_t(j * D)] = logit;
        k[size_t(j * D + 1)] = -(logit - 5.0f);
        for (int64_t t = 0; t < D; ++t) v[size_t(j * D + t)] = rng.uniform(1.0f);
      }
      const std::string what = std::string("large logits pattern ") + std::to_string(int(pat)) +
                               (causal ? " causal" : " bidir");
      std::vector<float> want = naive_attention(q.data(), k.data(), v.data(), p);
      std::vector<float> got_ref = run_out(p, what, [&](float* o) { ref::attention(q.data(), k.data(), v.data(), o, p); });
      EXPECT_ALL_CLOSE(got_ref.data(), want.data(), want.size(), 1e-6, 0.0, "ref " + what);
      for (Isa isa : vector_levels()) {
        IsaCapScope cap(isa);
        for (ThreadPool* tp : {static_cast<ThreadPool*>(nullptr), &pool}) {
          const std::string w = what + " isa=" + isa_name(isa) + (tp ? " pool=2" : "");
          std::vector<float> got = run_out(p, w, [&](float* o) { attention(q.data(), k.data(), v.data(), o, p, tp); });
          bool finite = true;
          for (float x : got) finite = finite && std::isfinite(x);
          EXPECT(finite);
          EXPECT_ALL_CLOSE(got.data(), want.data(), want.size(), 1e-5, 0.0, w);
        }
      }
      if (pat == Increasing) {
        // Gaps of 10 between logits: row i attends to (almost only) its newest visible key.
        const int64_t i = 150, last = causal ? i : n - 1;
        EXPECT_NEAR(want[size_t(i * H * D + 3)], v[size_t(last * D + 3)], 1e-3);
      }
    }
}

#if defined(__linux__)
// n floats ending exactly at a PROT_NONE page: any access past the end faults. Masked vector
// loads are not instrumented by AddressSanitizer and heap slack hides small over-reads, so this
// is what catches a wrong tail mask in the head_dim loops.
struct GuardedFloats {
  void* base = nullptr;
  size_t bytes = 0;
  float* data = nullptr;
  explicit GuardedFloats(size_t n) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    const size_t need = (n * sizeof(float) + page - 1) / page * page;
    bytes = need + page;
    base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) { base = nullptr; return; }
    mprotect(static_cast<char*>(base) + need, page, PROT_NONE);
    data = reinterpret_cast<float*>(static_cast<char*>(base) + need) - n;
  }
  ~GuardedFloats() { if (base) munmap(base, bytes); }
};

TEST(attention_no_access_past_buffer_end) {
  ThreadPool pool(2);
  const Case cases[] = {
      {5, 77, 4, 2, 20, true, 72}, {1, 77, 4, 1, 8, true, 76}, {9, 70, 2, 2, 36, false, 0},
      {3, 130, 8, 1, 12, true, 127},
  };
  for (const Case& c : cases) {
    Data d = make_data(c, 77);
    const AttentionParams& p = d.p;
    const size_t nq = size_t(p.n_q * p.ldq), nk = size_t(p.n_kv * p.ldk), no = size_t(p.n_q * p.ldo);
    GuardedFloats q(nq), k(nk), v(nk), o(no);
    EXPECT(q.data && k.data && v.data && o.data);
    if (!(q.data && k.data && v.data && o.data)) return;
    std::copy(d.q, d.q + nq, q.data);
    std::copy(d.k, d.k + nk, k.data);
    std::copy(d.v, d.v + nk, v.data);
    std::vector<float> ref = run_out(p, describe(c), [&](float* out) { ref::attention(d.q, d.k, d.v, out, p); });
    for (Isa isa : vector_levels()) {
      IsaCapScope cap(isa);
      for (ThreadPool* tp : {static_cast<ThreadPool*>(nullptr), &pool}) {
        std::fill(o.data, o.data + no, kNaN);
        attention(q.data, k.data, v.data, o.data, p, tp);  // a stray access would SIGSEGV here
        const std::string w = describe(c) + " guarded isa=" + isa_name(isa);
        EXPECT_ALL_CLOSE(o.data, ref.data(), no, 1e-5, 0.0, w);  // pad == 0: dense
      }
    }
  }
}
#endif

TEST(attention_invalid_arguments_throw) {
  std::vector<float> buf(4096, 0.5f), out(4096);
  const float* b = buf.data();
  AttentionParams good;
  good.n_q = 4; good.n_kv = 8; good.n_heads = 4; good.n_kv_heads = 2; good.head_dim = 16;
  good.ldq = 64; good.ldk = 32; good.ldv = 32; good.ldo = 64; good.causal = true; good.q_pos0 = 4;
  auto mod = [&](auto f) { AttentionParams p = good; f(p); return p; };
  std::vector<AttentionParams> bad = {
      mod([](AttentionParams& p) { p.n_kv_heads = 3; }),   // 4 % 3 != 0
      mod([](AttentionParams& p) { p.n_heads = 3; p.ldq = p.ldo = 48; }),  // 3 % 2 != 0
      mod([](AttentionParams& p) { p.n_q = 0; }),
      mod([](AttentionParams& p) { p.n_kv = 0; }),
      mod([](AttentionParams& p) { p.n_heads = 0; }),
      mod([](AttentionParams& p) { p.n_kv_heads = 0; }),
      mod([](AttentionParams& p) { p.head_dim = 0; }),
      mod([](AttentionParams& p) { p.head_dim = -16; }),
      mod([](AttentionParams& p) { p.n_q = -1; }),
      mod([](AttentionParams& p) { p.ldq = 63; }),
      mod([](AttentionParams& p) { p.ldk = 31; }),
      mod([](AttentionParams& p) { p.ldv = 31; }),
      mod([](AttentionParams& p) { p.ldo = 63; }),
      mod([](AttentionParams& p) { p.ldq = 0; }),
      mod([](AttentionParams& p) { p.q_pos0 = 5; }),        // causal: 5 + 4 > 8
      mod([](AttentionParams& p) { p.q_pos0 = -1; }),
      mod([](AttentionParams& p) { p.scale = std::nanf(""); }),
      mod([](AttentionParams& p) { p.scale = INFINITY; }),
  };
  for (Isa isa : {Isa::Scalar, isa_detected()}) {
    IsaCapScope cap(isa);
    // The unmodified parameters are accepted (so each throw below is caused by its one change).
    attention(b, b, b, out.data(), good, nullptr);
    ref::attention(b, b, b, out.data(), good);
    EXPECT(std::isfinite(out[0]));
    for (const AttentionParams& p : bad) {
      EXPECT_THROWS(attention(b, b, b, out.data(), p, nullptr), ErrorCode::InvalidArgument);
      EXPECT_THROWS(ref::attention(b, b, b, out.data(), p), ErrorCode::InvalidArgument);
    }
    EXPECT_THROWS(attention(nullptr, b, b, out.data(), good, nullptr), ErrorCode::InvalidArgument);
    EXPECT_THROWS(attention(b, b, nullptr, out.data(), good, nullptr), ErrorCode::InvalidArgument);
    EXPECT_THROWS(ref::attention(b, b, b, nullptr, good), ErrorCode::InvalidArgument);
    // Bidirectional attention does not need the cache to cover q_pos0 + n_q.
    AttentionParams bi = mod([](AttentionParams& p) { p.causal = false; p.q_pos0 = 100; });
    attention(b, b, b, out.data(), bi, nullptr);
    EXPECT(std::fabs(out[0] - 0.5f) < 1e-6f);  // all values 0.5: any softmax gives 0.5
  }
}

// Paged KV cache: the cache rows of a case scattered into pages of kv_block_size tokens, in a
// shuffled page order with NaN gaps between pages (reading outside a page poisons the output).
// ref::attention through the block table is bit-identical to the contiguous ref (same order of
// operations); the vector paths are within the vector-vs-ref tolerance (atol 1e-5).
TEST(attention_paged_kv_matches_contiguous) {
  ThreadPool pool(2);
  const std::vector<Case> cs = {
      {1, 150, 8, 2, 64, true, 149},   // decode, GQA
      {1, 200, 4, 1, 80, true, 199},   // decode, MQA (split-KV with the pool)
      {70, 70, 4, 2, 64, true, 0},     // prefill (transposed K path when pages are multiples of 64)
      {23, 133, 8, 2, 32, true, 105},  // chunk over a cache
      {19, 90, 4, 4, 20, false, 0, 3}, // bidirectional, padded rows
  };
  uint64_t seed = 1300;
  for (int64_t bs : {16, 32, 48, 64, 128}) {
    for (const Case& c : cs) {
      Data d = make_data(c, seed++);
      const std::string what = describe(c) + " block=" + std::to_string(bs);
      const int64_t n_pages = (c.n_kv + bs - 1) / bs;
      // pages at shuffled slots of a pool with one NaN page between used ones
      std::vector<int64_t> slot(static_cast<size_t>(n_pages));
      for (int64_t i = 0; i < n_pages; ++i) slot[size_t(i)] = i;
      Rng rng(seed);
      for (int64_t i = n_pages - 1; i > 0; --i) std::swap(slot[size_t(i)], slot[size_t(rng.next() % uint32_t(i + 1))]);
      std::vector<float> kpool(size_t(2 * n_pages * bs * d.p.ldk), kNaN), vpool(size_t(2 * n_pages * bs * d.p.ldv), kNaN);
      std::vector<const float*> kb(static_cast<size_t>(n_pages)), vb(static_cast<size_t>(n_pages));
      for (int64_t i = 0; i < n_pages; ++i) {
        kb[size_t(i)] = kpool.data() + 2 * slot[size_t(i)] * bs * d.p.ldk;
        vb[size_t(i)] = vpool.data() + 2 * slot[size_t(i)] * bs * d.p.ldv;
      }
      for (int64_t j = 0; j < c.n_kv; ++j) {
        std::copy(d.k + j * d.p.ldk, d.k + (j + 1) * d.p.ldk, const_cast<float*>(kb[size_t(j / bs)]) + (j % bs) * d.p.ldk);
        std::copy(d.v + j * d.p.ldv, d.v + (j + 1) * d.p.ldv, const_cast<float*>(vb[size_t(j / bs)]) + (j % bs) * d.p.ldv);
      }
      AttentionParams pp = d.p;
      pp.k_blocks = kb.data();
      pp.v_blocks = vb.data();
      pp.kv_block_size = bs;
      std::vector<float> ref = run_out(d.p, what, [&](float* o) { ref::attention(d.q, d.k, d.v, o, d.p); });
      std::vector<float> ref_paged = run_out(pp, what, [&](float* o) { ref::attention(d.q, nullptr, nullptr, o, pp); });
      EXPECT(ref_paged == ref);
      for (Isa isa : vector_levels()) {
        IsaCapScope cap(isa);
        for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool}) {
          const std::string w = what + " isa=" + isa_name(isa) + (pl ? " pool=2" : " pool=null");
          std::vector<float> got = run_out(pp, w, [&](float* o) { attention(d.q, nullptr, nullptr, o, pp, pl); });
          EXPECT_ALL_CLOSE(got.data(), ref.data(), got.size(), 1e-5, 0.0, w);
        }
      }
    }
  }
  // a page size that is not a multiple of 16, and a paged call without its tables, are refused
  Data d = make_data({1, 20, 2, 1, 8, true, 19}, 5);
  std::vector<float> out(64);
  const float* tbl[2] = {d.k, d.k + 16 * d.p.ldk};
  AttentionParams bad = d.p;
  bad.k_blocks = tbl; bad.v_blocks = tbl; bad.kv_block_size = 24;
  EXPECT_THROWS(attention(d.q, nullptr, nullptr, out.data(), bad, nullptr), ErrorCode::InvalidArgument);
  bad.kv_block_size = 16; bad.v_blocks = nullptr;
  EXPECT_THROWS(attention(d.q, nullptr, nullptr, out.data(), bad, nullptr), ErrorCode::InvalidArgument);
}

// attention_batch runs the items' units in one pool dispatch: each output must be what
// attention() gives for that item alone, bit for bit (a batched decode step's greedy tokens then
// equal the sequences' run one by one), over mixed shapes: decode rows over short and long caches
// (the long ones split the kv range), prompt chunks, prefill, bidirectional, several head sizes
// in one batch (the scratch is laid out for the largest), strided rows and paged caches.
TEST(attention_batch_equals_calls_one_by_one) {
  ThreadPool pool(2);
  const std::vector<Case> cs = {
      {1, 37, 32, 4, 64, true, 36},     // decode over a short cache (kv heads spread over threads)
      {1, 600, 32, 4, 64, true, 599},   // decode over a long cache (split-KV)
      {1, 150, 8, 2, 80, true, 149},    // another head size
      {23, 133, 8, 2, 32, true, 105},   // a prompt chunk over a cache
      {70, 70, 4, 2, 64, true, 0},      // prefill (transposed K)
      {19, 90, 4, 4, 20, false, 0, 3},  // bidirectional, padded rows
      {1, 129, 4, 1, 128, true, 128, 16},
      {3, 97, 80, 1, 8, true, 90},      // group of 80 query heads
  };
  std::vector<Data> ds;
  uint64_t seed = 4200;
  for (const Case& c : cs) ds.push_back(make_data(c, seed++));
  // items 0 and 3 read a paged copy of their cache (pages of 16 and 64 at shuffled slots)
  std::vector<std::vector<float>> pools;
  std::vector<std::vector<const float*>> tables;
  auto page = [&](Data& d, int64_t bs) {
    const int64_t n_pages = (d.p.n_kv + bs - 1) / bs;
    pools.emplace_back(size_t(2 * n_pages * bs * d.p.ldk), kNaN);
    pools.emplace_back(size_t(2 * n_pages * bs * d.p.ldv), kNaN);
    std::vector<float>& kp = pools[pools.size() - 2];
    std::vector<float>& vp = pools.back();
    tables.emplace_back();
    tables.emplace_back();
    std::vector<const float*>& kt = tables[tables.size() - 2];
    std::vector<const float*>& vt = tables.back();
    for (int64_t i = 0; i < n_pages; ++i) {
      const int64_t s = n_pages - 1 - i;  // reversed slots
      kt.push_back(kp.data() + 2 * s * bs * d.p.ldk);
      vt.push_back(vp.data() + 2 * s * bs * d.p.ldv);
    }
    for (int64_t j = 0; j < d.p.n_kv; ++j) {
      std::copy(d.k + j * d.p.ldk, d.k + (j + 1) * d.p.ldk, const_cast<float*>(kt[size_t(j / bs)]) + (j % bs) * d.p.ldk);
      std::copy(d.v + j * d.p.ldv, d.v + (j + 1) * d.p.ldv, const_cast<float*>(vt[size_t(j / bs)]) + (j % bs) * d.p.ldv);
    }
    d.p.k_blocks = kt.data();
    d.p.v_blocks = vt.data();
    d.p.kv_block_size = bs;
    d.k = d.v = nullptr;
  };
  tables.reserve(8);
  pools.reserve(8);
  page(ds[0], 16);
  page(ds[3], 64);
  for (Isa isa : vector_levels()) {
    IsaCapScope cap(isa);
    for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool}) {
      const std::string w = std::string(" isa=") + isa_name(isa) + (pl ? " pool=2" : " pool=null");
      // every subset size from the front, and the whole list reversed
      for (size_t n : {size_t(1), size_t(2), size_t(4), cs.size()}) {
        for (bool reversed : {false, true}) {
          std::vector<size_t> idx;
          for (size_t i = 0; i < n; ++i) idx.push_back(reversed ? cs.size() - 1 - i : i);
          std::vector<std::vector<float>> outs, alone;
          std::vector<AttentionBatchItem> items;
          for (size_t i : idx) {
            const Data& d = ds[i];
            alone.push_back(run_out(d.p, describe(cs[i]) + w, [&](float* o) { attention(d.q, d.k, d.v, o, d.p, pl); }));
            outs.emplace_back(size_t(d.p.n_q * d.p.ldo), kNaN);
            items.push_back(AttentionBatchItem{d.q, d.k, d.v, outs.back().data(), d.p});
          }
          attention_batch(items.data(), int64_t(items.size()), pl);
          for (size_t m = 0; m < idx.size(); ++m) {
            const Data& d = ds[idx[m]];
            const int64_t qw = d.p.n_heads * d.p.head_dim;
            std::vector<float> dense(size_t(d.p.n_q * qw));
            for (int64_t i = 0; i < d.p.n_q; ++i)
              std::copy(outs[m].data() + i * d.p.ldo, outs[m].data() + i * d.p.ldo + qw, dense.data() + i * qw);
            const std::string what = describe(cs[idx[m]]) + w + " batch of " + std::to_string(n);
            if (dense != alone[m]) ::emollm_test::report_failure(__FILE__, __LINE__, "batch differs from alone: " + what);
          }
        }
      }
    }
  }
  attention_batch(nullptr, 0, &pool);  // nothing to do
  // a bad item is refused with the item's error
  Data d = make_data({1, 20, 2, 1, 8, true, 19}, 5);
  std::vector<float> out(64);
  AttentionParams bad = d.p;
  bad.ldq = 1;  // shorter than a query row
  AttentionBatchItem it{d.q, d.k, d.v, out.data(), bad};
  EXPECT_THROWS(attention_batch(&it, 1, &pool), ErrorCode::InvalidArgument);
}

namespace {

// A paged copy of a case's cache: pages of bs tokens at shuffled slots of a pool with a NaN page
// between used ones (reading outside a page poisons the output). params() reads through it.
struct PagedCopy {
  std::vector<float> kpool, vpool;
  std::vector<const float*> kt, vt;
  AttentionParams p;
  PagedCopy(const Data& d, int64_t bs, uint64_t seed) : p(d.p) {
    const int64_t n_pages = (d.p.n_kv + bs - 1) / bs;
    std::vector<int64_t> slot(static_cast<size_t>(n_pages));
    for (int64_t i = 0; i < n_pages; ++i) slot[size_t(i)] = i;
    Rng rng(seed);
    for (int64_t i = n_pages - 1; i > 0; --i) std::swap(slot[size_t(i)], slot[size_t(rng.next() % uint32_t(i + 1))]);
    kpool.assign(size_t(2 * n_pages * bs * d.p.ldk), kNaN);
    vpool.assign(size_t(2 * n_pages * bs * d.p.ldv), kNaN);
    for (int64_t i = 0; i < n_pages; ++i) {
      kt.push_back(kpool.data() + 2 * slot[size_t(i)] * bs * d.p.ldk);
      vt.push_back(vpool.data() + 2 * slot[size_t(i)] * bs * d.p.ldv);
    }
    for (int64_t j = 0; j < d.p.n_kv; ++j) {
      std::copy(d.k + j * d.p.ldk, d.k + (j + 1) * d.p.ldk, const_cast<float*>(kt[size_t(j / bs)]) + (j % bs) * d.p.ldk);
      std::copy(d.v + j * d.p.ldv, d.v + (j + 1) * d.p.ldv, const_cast<float*>(vt[size_t(j / bs)]) + (j % bs) * d.p.ldv);
    }
    p.k_blocks = kt.data();
    p.v_blocks = vt.data();
    p.kv_block_size = bs;
  }
};

// Restores the decode split switch at scope exit.
struct DecodeSplitScope {
  bool was = attention_detail::decode_split_enabled();
  explicit DecodeSplitScope(bool on) { attention_detail::set_decode_split(on); }
  ~DecodeSplitScope() { attention_detail::set_decode_split(was); }
};

// Sets the K tile prototype (attention_detail::decode_k_tiles) and restores it at scope exit, a
// throw included: never left on for the later tests.
struct DecodeKTilesScope {
  bool was = attention_detail::decode_k_tiles();
  explicit DecodeKTilesScope(bool on) { attention_detail::set_decode_k_tiles(on); }
  ~DecodeKTilesScope() { attention_detail::set_decode_k_tiles(was); }
};

// Sets the lean narrow piece (attention_detail::decode_lean) and restores it at scope exit.
struct DecodeLeanScope {
  bool was = attention_detail::decode_lean();
  explicit DecodeLeanScope(bool on) { attention_detail::set_decode_lean(on); }
  ~DecodeLeanScope() { attention_detail::set_decode_lean(was); }
};

}  // namespace

// The decode driver (one query; pieces of <= kDecodePieceMax kv tokens, a multiple of the thread
// count, merged by log-sum-exp) and the tiled path it replaced (set_decode_split(false)) against
// ref::attention (atol 1e-5, the vector-vs-ref tolerance; the log-sum-exp likewise): lengths
// around 16 / 64 / 256 (sub-block, page, piece) and not multiples of them, kv = 1, GQA 8:1, MQA,
// MHA 1:1, a tail head size, padded rows, contiguous and paged caches (pages of 16 and 64 at
// shuffled slots), no pool and pools of 2 and 3 threads (piece counts rounded to each).
TEST(attention_decode_split_matches_ref) {
  ThreadPool pool2(2), pool3(3);
  struct Shape { int64_t H, Hkv, D, pad; };
  const Shape shapes[] = {{32, 4, 64, 0}, {4, 4, 128, 0}, {8, 1, 80, 0}, {6, 2, 20, 3}};
  const int64_t lengths[] = {1, 15, 16, 17, 63, 65, 255, 256, 257, 513, 769, 1000};
  uint64_t seed = 7000;
  for (const Shape& sh : shapes)
    for (int64_t n : lengths) {
      const Case c{1, n, sh.H, sh.Hkv, sh.D, true, n - 1, sh.pad};
      Data d = make_data(c, seed++);
      const std::string what = describe(c);
      std::vector<float> ref_lse(size_t(sh.H));
      std::vector<float> ref = run_out(d.p, what, [&](float* o) { ref::attention(d.q, d.k, d.v, o, d.p, ref_lse.data()); });
      PagedCopy pg16(d, 16, seed), pg64(d, 64, seed + 1);
      for (const AttentionParams* pp : {&d.p, &pg16.p, &pg64.p})
        for (bool split : {true, false}) {
          DecodeSplitScope sw(split);
          for (Isa isa : vector_levels()) {
            IsaCapScope cap(isa);
            for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
              const std::string w = what + " block=" + std::to_string(pp->kv_block_size) + " isa=" + isa_name(isa) +
                                    " pool=" + std::to_string(pl ? pl->size() : 0) + (split ? " split" : " tiled");
              const float* k = pp->kv_block_size ? nullptr : d.k;
              const float* v = pp->kv_block_size ? nullptr : d.v;
              std::vector<float> lse(size_t(sh.H), kNaN);
              std::vector<float> got = run_out(*pp, w, [&](float* o) { attention(d.q, k, v, o, *pp, pl, lse.data()); });
              EXPECT_ALL_CLOSE(got.data(), ref.data(), got.size(), 1e-5, 0.0, w);
              EXPECT_ALL_CLOSE(lse.data(), ref_lse.data(), lse.size(), 1e-5, 0.0, w + " lse");
            }
          }
        }
    }
}

// Several decode sequences of different lengths (paged and contiguous, GQA 8:1) in one
// attention_batch: each output within 1e-5 of ref::attention and bit for bit the call alone.
TEST(attention_decode_split_batch_of_sequences) {
  ThreadPool pool2(2), pool3(3);
  const int64_t lengths[] = {1, 37, 256, 300, 769, 64};
  std::vector<Data> ds;
  std::vector<std::unique_ptr<PagedCopy>> pages;
  std::vector<std::vector<float>> refs;
  uint64_t seed = 7700;
  for (int64_t n : lengths) {
    ds.push_back(make_data({1, n, 32, 4, 64, true, n - 1}, seed++));
    refs.push_back(run_out(ds.back().p, "ref", [&](float* o) { ref::attention(ds.back().q, ds.back().k, ds.back().v, o, ds.back().p); }));
    pages.push_back(std::make_unique<PagedCopy>(ds.back(), 64, seed));
  }
  for (Isa isa : vector_levels()) {
    IsaCapScope cap(isa);
    for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
      std::vector<AttentionBatchItem> items;
      std::vector<std::vector<float>> outs(ds.size()), alone;
      for (size_t i = 0; i < ds.size(); ++i) {
        const bool paged = i % 2 == 0;
        const AttentionParams& p = paged ? pages[i]->p : ds[i].p;
        const float* k = paged ? nullptr : ds[i].k;
        const float* v = paged ? nullptr : ds[i].v;
        outs[i].assign(size_t(p.ldo), kNaN);
        items.push_back(AttentionBatchItem{ds[i].q, k, v, outs[i].data(), p});
        alone.push_back(run_out(p, "alone", [&](float* o) { attention(ds[i].q, k, v, o, p, pl); }));
      }
      attention_batch(items.data(), int64_t(items.size()), pl);
      for (size_t i = 0; i < ds.size(); ++i) {
        const std::string w = "kv=" + std::to_string(lengths[i]) + " isa=" + isa_name(isa) +
                              " pool=" + std::to_string(pl ? pl->size() : 0);
        EXPECT_ALL_CLOSE(outs[i].data(), refs[i].data(), refs[i].size(), 1e-5, 0.0, w);
        EXPECT(outs[i] == alone[i]);
      }
    }
  }
}

// ---------------------------------------------------------------- half-precision KV cache
// AttentionParams::kv_dtype f16 / bf16: the kernels widen the cache's rows to f32 exactly as they
// read them, so against ref::attention on K/V rounded the same way beforehand the only difference
// is the f32 kernels' own: atol 1e-5, the vector-vs-ref tolerance. Against the unrounded f32 K/V
// the difference is the rounding's, bounded (first order, |k|, |v| <= 1 as make_data draws them)
// per case by
//   d  = max over query rows and heads of scale * sum_t |q_t| * (u + 2^-25)   (score error)
//   tol = (e^(2d) - 1) + u + 2^-25 + 1e-5
// with u = 2^-11 (f16) or 2^-8 (bf16) the unit roundoff of round-to-nearest and 2^-25 the f16
// subnormal half-spacing: each softmax weight moves by at most a factor e^(+-2d), and the output,
// a convex combination of the V rows, by that plus the V rows' own rounding.
namespace {

uint16_t round_half(DType t, float x) { return t == DType::F16 ? f32_to_f16(x) : f32_to_bf16(x); }
float widen_half(DType t, uint16_t h) { return t == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h); }

// A (non-fused) case's K/V rounded to t by base/dtype.h's scalar conversions (independent of the
// kernels' vector ones), in the case's layout (NaN padding stays NaN): a contiguous half cache,
// a paged one (PagedCopy's layout: pages of bs tokens at shuffled slots, a NaN page between used
// ones), and the rounded values widened back to f32 (the references' K/V).
struct HalfCopy {
  std::vector<uint16_t> kh, vh, kpool, vpool;
  std::vector<float> kr, vr;
  std::vector<const float*> kt, vt;
  AttentionParams p, paged;
  HalfCopy(const Data& d, DType t, int64_t bs, uint64_t seed) : p(d.p), paged(d.p) {
    const size_t nk = size_t(d.p.n_kv * d.p.ldk), nv = size_t(d.p.n_kv * d.p.ldv);
    kh.resize(nk); vh.resize(nv); kr.resize(nk); vr.resize(nv);
    for (size_t i = 0; i < nk; ++i) { kh[i] = round_half(t, d.k[i]); kr[i] = widen_half(t, kh[i]); }
    for (size_t i = 0; i < nv; ++i) { vh[i] = round_half(t, d.v[i]); vr[i] = widen_half(t, vh[i]); }
    p.kv_dtype = paged.kv_dtype = t;
    const int64_t n_pages = (d.p.n_kv + bs - 1) / bs;
    std::vector<int64_t> slot(static_cast<size_t>(n_pages));
    for (int64_t i = 0; i < n_pages; ++i) slot[size_t(i)] = i;
    Rng rng(seed);
    for (int64_t i = n_pages - 1; i > 0; --i) std::swap(slot[size_t(i)], slot[size_t(rng.next() % uint32_t(i + 1))]);
    const uint16_t nan_h = round_half(t, kNaN);
    kpool.assign(size_t(2 * n_pages * bs * d.p.ldk), nan_h);
    vpool.assign(size_t(2 * n_pages * bs * d.p.ldv), nan_h);
    for (int64_t i = 0; i < n_pages; ++i) {
      kt.push_back(reinterpret_cast<const float*>(kpool.data() + 2 * slot[size_t(i)] * bs * d.p.ldk));
      vt.push_back(reinterpret_cast<const float*>(vpool.data() + 2 * slot[size_t(i)] * bs * d.p.ldv));
    }
    for (int64_t j = 0; j < d.p.n_kv; ++j) {
      auto* kdst = const_cast<uint16_t*>(reinterpret_cast<const uint16_t*>(kt[size_t(j / bs)])) + (j % bs) * d.p.ldk;
      auto* vdst = const_cast<uint16_t*>(reinterpret_cast<const uint16_t*>(vt[size_t(j / bs)])) + (j % bs) * d.p.ldv;
      std::copy(kh.begin() + j * d.p.ldk, kh.begin() + (j + 1) * d.p.ldk, kdst);
      std::copy(vh.begin() + j * d.p.ldv, vh.begin() + (j + 1) * d.p.ldv, vdst);
    }
    paged.k_blocks = kt.data();
    paged.v_blocks = vt.data();
    paged.kv_block_size = bs;
  }
  const float* k() const { return reinterpret_cast<const float*>(kh.data()); }
  const float* v() const { return reinterpret_cast<const float*>(vh.data()); }
};

// Decode shapes (GQA 8:1 head 64 as TinyLlama, MHA head 128, MQA head 80, a tail head size with
// padded rows) at lengths around the 16-token sub-block, the 64-token page and the pieces, and
// the tiled path's cases (prefill, a chunk over a cache, bidirectional with padding, a group of
// 80 heads).
std::vector<Case> half_kv_cases() {
  std::vector<Case> cs;
  struct Shape { int64_t H, Hkv, D, pad; };
  const Shape shapes[] = {{32, 4, 64, 0}, {4, 4, 128, 0}, {8, 1, 80, 0}, {6, 2, 20, 3}};
  for (const Shape& sh : shapes)
    for (int64_t n : {1, 16, 17, 63, 64, 65, 257, 1000}) cs.push_back({1, n, sh.H, sh.Hkv, sh.D, true, n - 1, sh.pad});
  cs.push_back({70, 70, 4, 2, 64, true, 0});
  cs.push_back({23, 133, 8, 2, 32, true, 105});
  cs.push_back({19, 90, 4, 4, 20, false, 0, 3});
  cs.push_back({3, 97, 80, 1, 8, true, 90});
  return cs;
}

// The layouts a decode bit-equality test runs a case in, with ref::attention on the cache's values
// (outputs and log-sum-exps): an f32 case in its contiguous cache and a PagedCopy per page size in
// f32_pages (seeds seed, seed + 1, ...); a half type (f16 / bf16) in a HalfCopy per page size in
// half_pages (same seeds): the first one's contiguous layout, then each one's pages. k(pp) / v(pp):
// the contiguous cache for a contiguous layout, null for a paged one.
struct DecodeLayouts {
  std::unique_ptr<PagedCopy> pg[2];
  std::unique_ptr<HalfCopy> hc[2];
  std::vector<const AttentionParams*> ps;
  std::vector<float> ref, ref_lse;
  const float* kc = nullptr;
  const float* vc = nullptr;
  DecodeLayouts(const Data& d, DType t, uint64_t seed, std::initializer_list<int64_t> f32_pages,
                std::initializer_list<int64_t> half_pages, const std::string& what)
      : ref_lse(size_t(d.p.n_q * d.p.n_heads)) {
    const float* kr = d.k;
    const float* vr = d.v;
    int i = 0;
    if (t == DType::F32) {
      kc = d.k;
      vc = d.v;
      ps.push_back(&d.p);
      for (int64_t bs : f32_pages) {
        pg[i] = std::make_unique<PagedCopy>(d, bs, seed + uint64_t(i));
        ps.push_back(&pg[i]->p);
        ++i;
      }
    } else {
      for (int64_t bs : half_pages) {
        hc[i] = std::make_unique<HalfCopy>(d, t, bs, seed + uint64_t(i));
        if (i == 0) ps.push_back(&hc[0]->p);
        ps.push_back(&hc[i]->paged);
        ++i;
      }
      kc = hc[0]->k();
      vc = hc[0]->v();
      kr = hc[0]->kr.data();
      vr = hc[0]->vr.data();
    }
    ref = run_out(d.p, what, [&](float* o) { ref::attention(d.q, kr, vr, o, d.p, ref_lse.data()); });
  }
  const float* k(const AttentionParams* pp) const { return pp->kv_block_size ? nullptr : kc; }
  const float* v(const AttentionParams* pp) const { return pp->kv_block_size ? nullptr : vc; }
};

}  // namespace

TEST(attention_half_kv_matches_ref_on_rounded_kv) {
  ThreadPool pool2(2);
  uint64_t seed = 9100;
  for (DType t : {DType::F16, DType::BF16})
    for (const Case& c : half_kv_cases()) {
      Data d = make_data(c, seed++);
      const std::string what = describe(c) + " kv=" + dtype_name(t);
      HalfCopy h16(d, t, 16, seed), h64(d, t, 64, seed + 1);
      std::vector<float> ref = run_out(d.p, what, [&](float* o) { ref::attention(d.q, h16.kr.data(), h16.vr.data(), o, d.p); });
      // the reference reads a half cache itself: the same values, the same double sums, the same bits
      std::vector<float> ref_half = run_out(h16.p, what, [&](float* o) { ref::attention(d.q, h16.k(), h16.v(), o, h16.p); });
      EXPECT(ref_half == ref);
      std::vector<float> ref_paged = run_out(h64.paged, what, [&](float* o) { ref::attention(d.q, nullptr, nullptr, o, h64.paged); });
      EXPECT(ref_paged == ref);
      for (const AttentionParams* pp : {&h16.p, &h16.paged, &h64.paged})
        for (bool split : {true, false}) {
          if (!split && c.n_q != 1) continue;  // the switch only concerns decode
          DecodeSplitScope sw(split);
          for (Isa isa : vector_levels()) {
            IsaCapScope cap(isa);
            for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2}) {
              const std::string w = what + " block=" + std::to_string(pp->kv_block_size) + " isa=" + isa_name(isa) +
                                    " pool=" + std::to_string(pl ? pl->size() : 0) + (split ? " split" : " tiled");
              const float* k = pp->kv_block_size ? nullptr : h16.k();
              const float* v = pp->kv_block_size ? nullptr : h16.v();
              std::vector<float> got = run_out(*pp, w, [&](float* o) { attention(d.q, k, v, o, *pp, pl); });
              EXPECT_ALL_CLOSE(got.data(), ref.data(), got.size(), 1e-5, 0.0, w);
            }
          }
        }
    }
}

TEST(attention_half_kv_within_rounding_bound_of_f32) {
  ThreadPool pool2(2);
  uint64_t seed = 9300;
  for (DType t : {DType::F16, DType::BF16}) {
    const double u = t == DType::F16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8), sub = std::ldexp(1.0, -25);
    for (const Case& c : half_kv_cases()) {
      Data d = make_data(c, seed++);
      const std::string what = describe(c) + " kv=" + dtype_name(t);
      HalfCopy h(d, t, 64, seed);
      const double scale = c.scale != 0.0f ? c.scale : 1.0 / std::sqrt(double(c.D));
      double dmax = 0;
      for (int64_t i = 0; i < c.n_q; ++i)
        for (int64_t hh = 0; hh < c.n_heads; ++hh) {
          double s = 0;
          for (int64_t e = 0; e < c.D; ++e) s += std::fabs(double(d.q[i * d.p.ldq + hh * c.D + e]));
          dmax = std::max(dmax, scale * s * (u + sub));
        }
      const double tol = std::expm1(2 * dmax) + u + sub + 1e-5;
      std::vector<float> ref = run_out(d.p, what, [&](float* o) { ref::attention(d.q, d.k, d.v, o, d.p); });
      std::vector<float> got = run_out(h.paged, what, [&](float* o) { attention(d.q, nullptr, nullptr, o, h.paged, &pool2); });
      EXPECT_ALL_CLOSE(got.data(), ref.data(), got.size(), tol, 0.0, what + " tol=" + std::to_string(tol));
      // and the rounding is not a no-op: the half cache's output differs from the f32 one somewhere
      EXPECT(got != ref);
    }
  }
}

// Wide token rows (LLaMA-7B: 32 kv heads x 128; GQA 4:1 with 8 kv heads x 128, the transposed-K
// kernel; padded rows) on the decode split path, where a half cache is widened one kv head's slice
// at a time: bit for bit the f32 path on the same values widened beforehand (widening is exact
// and the kernels see the same floats), contiguous and paged (pages of 16 and 64 at shuffled
// slots), at lengths crossing the 16-row sub-block and the 64-token block, no pool and 2 threads;
// and within 1e-5 of ref::attention on the rounded K/V.
TEST(attention_half_kv_wide_rows_split_equals_f32) {
  ThreadPool pool2(2);
  DecodeSplitScope sw(true);
  struct Shape { int64_t H, Hkv, D, pad; };
  const Shape shapes[] = {{32, 32, 128, 0}, {32, 8, 128, 0}, {8, 4, 128, 5}};
  uint64_t seed = 9400;
  for (DType t : {DType::F16, DType::BF16})
    for (const Shape& sh : shapes)
      for (int64_t n : {1, 15, 16, 17, 63, 64, 65, 80, 129, 300}) {
        const Case c{1, n, sh.H, sh.Hkv, sh.D, true, n - 1, sh.pad};
        Data d = make_data(c, seed++);
        const std::string what = describe(c) + " kv=" + dtype_name(t);
        const DecodeLayouts L(d, t, seed, {}, {16, 64}, what);
        const HalfCopy& h16 = *L.hc[0];
        const std::vector<float>& ref = L.ref;
        for (Isa isa : vector_levels()) {
          IsaCapScope cap(isa);
          for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2}) {
            const std::string w = what + " isa=" + isa_name(isa) + " pool=" + std::to_string(pl ? pl->size() : 0);
            std::vector<float> f32 = run_out(d.p, w, [&](float* o) { attention(d.q, h16.kr.data(), h16.vr.data(), o, d.p, pl); });
            EXPECT_ALL_CLOSE(f32.data(), ref.data(), f32.size(), 1e-5, 0.0, w + " f32");
            for (const AttentionParams* pp : L.ps) {
              const float* k = L.k(pp);
              const float* v = L.v(pp);
              std::vector<float> got = run_out(*pp, w, [&](float* o) { attention(d.q, k, v, o, *pp, pl); });
              if (got != f32)
                ::emollm_test::report_failure(__FILE__, __LINE__,
                                              "half differs from f32 on widened values: " + w + " block=" +
                                                  std::to_string(pp->kv_block_size));
            }
          }
        }
      }
}

// A batch mixing f32, f16 and bf16 caches (decode and chunks, paged and contiguous): each output
// bit for bit the call alone.
TEST(attention_half_kv_batch_equals_calls_one_by_one) {
  ThreadPool pool2(2);
  const Case cs[] = {{1, 300, 32, 4, 64, true, 299}, {1, 37, 32, 4, 64, true, 36}, {9, 140, 32, 4, 64, true, 131},
                     {1, 129, 8, 1, 80, true, 128}};
  const DType types[] = {DType::F16, DType::BF16, DType::F32, DType::F16};
  std::vector<Data> ds;
  std::vector<std::unique_ptr<HalfCopy>> hs;
  uint64_t seed = 9500;
  for (const Case& c : cs) {
    ds.push_back(make_data(c, seed++));
    hs.push_back(std::make_unique<HalfCopy>(ds.back(), DType::F16, 64, seed));
  }
  for (int round = 0; round < 2; ++round) {
    std::vector<std::unique_ptr<HalfCopy>> typed;
    std::vector<AttentionBatchItem> items;
    std::vector<std::vector<float>> outs(ds.size()), alone;
    for (size_t i = 0; i < ds.size(); ++i) {
      const DType t = types[(i + size_t(round)) % 4];
      const bool paged = (i + size_t(round)) % 2 == 0;
      AttentionParams p = ds[i].p;
      const float *k = ds[i].k, *v = ds[i].v;
      if (t != DType::F32) {
        typed.push_back(std::make_unique<HalfCopy>(ds[i], t, 64, seed + i));
        p = paged ? typed.back()->paged : typed.back()->p;
        k = paged ? nullptr : typed.back()->k();
        v = paged ? nullptr : typed.back()->v();
      }
      outs[i].assign(size_t(p.n_q * p.ldo), kNaN);
      items.push_back(AttentionBatchItem{ds[i].q, k, v, outs[i].data(), p});
      alone.push_back(run_out(p, "alone", [&](float* o) { attention(ds[i].q, k, v, o, p, &pool2); }));
    }
    attention_batch(items.data(), int64_t(items.size()), &pool2);
    for (size_t i = 0; i < ds.size(); ++i) {
      std::vector<float> dense(alone[i].size());
      const int64_t qw = ds[i].p.n_heads * ds[i].p.head_dim;
      for (int64_t r = 0; r < ds[i].p.n_q; ++r)
        std::copy(outs[i].begin() + r * ds[i].p.ldo, outs[i].begin() + r * ds[i].p.ldo + qw, dense.begin() + r * qw);
      EXPECT(dense == alone[i]);
    }
  }
}

// ---------------------------------------------------------------- decode rows read in place
namespace {
// Restores the in-place switch at scope exit.
struct DecodeInplaceScope {
  bool was = attention_detail::decode_inplace_enabled();
  explicit DecodeInplaceScope(bool on) { attention_detail::set_decode_inplace(on); }
  ~DecodeInplaceScope() { attention_detail::set_decode_inplace(was); }
};

}  // namespace

// The decode driver reading K/V rows in place (f32, or f16 / bf16 widened by the kernels' loads;
// the AVX-512 default) against the same driver packing / widening rows into scratch first
// (set_decode_inplace(false)): the kernels do the same arithmetic on the same floats, so the
// outputs and log-sum-exps are bit for bit equal; and both within 1e-5 of ref::attention on the
// cache's values. GQA 8:1 head 64 (TinyLlama), MHA head 128 (7B: wide rows), GQA 4:1 head 128,
// MQA head 80, a tail head size with padded rows; lengths across the 16-row sub-block, the
// 64-token block / page and the pieces; contiguous and paged (pages of 16 and 64 at shuffled
// slots); no pool and pools of 2 and 3 threads; every ISA.
TEST(attention_decode_inplace_equals_packed) {
  ThreadPool pool2(2), pool3(3);
  DecodeSplitScope sw(true);
  struct Shape { int64_t H, Hkv, D, pad; };
  const Shape shapes[] = {{32, 4, 64, 0}, {32, 32, 128, 0}, {32, 8, 128, 0}, {8, 1, 80, 0}, {6, 2, 20, 3}};
  const int64_t lengths[] = {1, 15, 16, 17, 63, 64, 65, 129, 257, 513, 1000};
  uint64_t seed = 9900;
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (const Shape& sh : shapes)
      for (int64_t n : lengths) {
        if (sh.Hkv == 32 && n > 300) continue;  // wide rows: the short lengths cover the edges
        const Case c{1, n, sh.H, sh.Hkv, sh.D, true, n - 1, sh.pad};
        Data d = make_data(c, seed++);
        const std::string what = describe(c) + " kv=" + dtype_name(t);
        const DecodeLayouts L(d, t, seed, {16, 64}, {16}, what);
        const std::vector<float>& ref = L.ref;
        const std::vector<float>& ref_lse = L.ref_lse;
        for (const AttentionParams* pp : L.ps) {
          const float* k = L.k(pp);
          const float* v = L.v(pp);
          for (Isa isa : vector_levels()) {
            IsaCapScope cap(isa);
            for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
              const std::string w = what + " block=" + std::to_string(pp->kv_block_size) + " isa=" + isa_name(isa) +
                                    " pool=" + std::to_string(pl ? pl->size() : 0);
              std::vector<float> lse_in(size_t(sh.H), kNaN), lse_pk(size_t(sh.H), kNaN), in, pk;
              {
                DecodeInplaceScope ip(true);
                in = run_out(*pp, w, [&](float* o) { attention(d.q, k, v, o, *pp, pl, lse_in.data()); });
              }
              {
                DecodeInplaceScope ip(false);
                pk = run_out(*pp, w, [&](float* o) { attention(d.q, k, v, o, *pp, pl, lse_pk.data()); });
              }
              EXPECT_ALL_CLOSE(in.data(), ref.data(), in.size(), 1e-5, 0.0, w + " in place");
              EXPECT_ALL_CLOSE(lse_in.data(), ref_lse.data(), lse_in.size(), 1e-5, 0.0, w + " in place lse");
              if (in != pk || lse_in != lse_pk)
                ::emollm_test::report_failure(__FILE__, __LINE__, "in place differs from packed: " + w);
            }
          }
        }
      }
}

// ---------------------------------------------------------------- decode on bf16 products
namespace {
struct DecodeBf16DpScope {
  attention_detail::DecodeBf16Dp was = attention_detail::decode_bf16dp_mode();
  explicit DecodeBf16DpScope(attention_detail::DecodeBf16Dp m) { attention_detail::set_decode_bf16dp_mode(m); }
  ~DecodeBf16DpScope() { attention_detail::set_decode_bf16dp_mode(was); }
};
}  // namespace

// The opt-in vdpbf16ps decode on a bf16 cache (attention_internal.h, DecodeBf16Dp) against the
// f64 reference on the cache's values. Stated bound, per head h (A = max_j sum_d |q_d k_jd|, maxv =
// max |v|, n = visible tokens, rq = 2^-9: q rounded to bf16; kv heads serving < 4 query heads take
// the exact path, rq = 0, and must equal it bit for bit):
//   score error  Delta = scale * A * (rq + D * 2^-23)   (q's rounding; f32 sums, generous)
//   weight error delta = e^Delta * (1 + 2^-8) - 1        (P's bf16 rounding 2^-9, exp's ulps)
//   |out - ref| <= 2 maxv * delta / (1 - delta) + n * 2^-22 * maxv + 1e-6
//   |lse - ref| <= Delta + 2^-8 + 1e-5 * max(1, |ref|)
// and, with q rounded to bf16 in the reference too where it is rounded (rq = 0 in Delta), the same
// bound with the P rounding alone (a wrong pairing of tokens / dims or a dropped pair fails it).
// Shapes and edges as attention_decode_inplace_equals_packed (GQA 8:1 x 64, MHA 32 x 128, GQA 4:1 x
// 128, MQA x 80, head 20 with padded rows; kv 1..1000; contiguous and pages of 16 / 64; no pool,
// 2, 3 threads). Also: Always and WhenAsked with bf16_products give the same bits; WhenAsked
// without bf16_products, Never, AVX2 and f16 caches give the exact path's bits; the products are
// taken (some output differs from the exact path).
TEST(attention_decode_bf16dp_within_bound) {
  using attention_detail::DecodeBf16Dp;
  if (!cpu_features().avx512bf16 || isa_detected() < Isa::Avx512) {
    std::printf("  skip attention_decode_bf16dp_within_bound: no AVX512-BF16 on this CPU\n");
    return;
  }
  ThreadPool pool2(2), pool3(3);
  DecodeSplitScope sw(true);
  DecodeInplaceScope ip(true);
  struct Shape { int64_t H, Hkv, D, pad; };
  const Shape shapes[] = {{32, 4, 64, 0}, {32, 32, 128, 0}, {32, 8, 128, 0}, {8, 1, 80, 0}, {6, 2, 20, 3}, {8, 1, 37, 0}};
  const int64_t lengths[] = {1, 2, 15, 16, 17, 63, 64, 65, 129, 257, 513, 1000};
  uint64_t seed = 12100;
  int differs = 0, runs = 0;
  for (const Shape& sh : shapes)
    for (int64_t n : lengths) {
      if (sh.Hkv == 32 && n > 300) continue;
      const Case c{1, n, sh.H, sh.Hkv, sh.D, true, n - 1, sh.pad};
      Data d = make_data(c, seed++);
      const std::string what = describe(c);
      HalfCopy h16(d, DType::BF16, 16, seed), h64(d, DType::BF16, 64, seed + 1);
      const int64_t G = sh.H / sh.Hkv, D = sh.D;
      const bool qround = G >= 4;
      const double scale = 1.0 / std::sqrt(double(D));
      // q rounded to bf16 where the kernel rounds it
      std::vector<float> qr(d.qb);
      if (qround)
        for (int64_t e = 0; e < sh.H * D; ++e) qr[size_t(e)] = widen_half(DType::BF16, round_half(DType::BF16, d.q[e]));
      std::vector<float> lse_full(size_t(sh.H)), lse_rq(size_t(sh.H));
      const std::vector<float> ref_full =
          run_out(d.p, what, [&](float* o) { ref::attention(d.q, h16.kr.data(), h16.vr.data(), o, d.p, lse_full.data()); });
      const std::vector<float> ref_rq =
          run_out(d.p, what, [&](float* o) { ref::attention(qr.data(), h16.kr.data(), h16.vr.data(), o, d.p, lse_rq.data()); });
      std::vector<double> tol_full(size_t(sh.H)), tol_rq(size_t(sh.H)), dl_full(size_t(sh.H)), dl_rq(size_t(sh.H));
      double maxv = 0;
      for (int64_t j = 0; j < n; ++j)
        for (int64_t e = 0; e < sh.Hkv * D; ++e) maxv = std::max(maxv, std::fabs(double(h16.vr[size_t(j * d.p.ldv + e)])));
      for (int64_t h = 0; h < sh.H; ++h) {
        double A = 0;
        for (int64_t j = 0; j < n; ++j) {
          double s = 0;
          for (int64_t e = 0; e < D; ++e)
            s += std::fabs(double(d.q[h * D + e]) * double(h16.kr[size_t(j * d.p.ldk + (h / G) * D + e)]));
          A = std::max(A, s);
        }
        for (int pass = 0; pass < 2; ++pass) {
          const double Delta = scale * A * ((pass == 0 && qround ? std::ldexp(1.0, -9) : 0.0) + double(D) * std::ldexp(1.0, -23));
          const double delta = std::exp(Delta) * (1.0 + std::ldexp(1.0, -8)) - 1.0;
          const double tol = 2.0 * maxv * delta / (1.0 - delta) + double(n) * std::ldexp(1.0, -22) * maxv + 1e-6;
          (pass == 0 ? tol_full : tol_rq)[size_t(h)] = tol;
          (pass == 0 ? dl_full : dl_rq)[size_t(h)] = Delta + std::ldexp(1.0, -8);
        }
      }
      for (const AttentionParams* pp0 : {&h16.p, &h16.paged, &h64.paged}) {
        const float* k = pp0->kv_block_size ? nullptr : h16.k();
        const float* v = pp0->kv_block_size ? nullptr : h16.v();
        AttentionParams asked = *pp0;
        asked.bf16_products = true;
        for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
          const std::string w = what + " block=" + std::to_string(pp0->kv_block_size) + " pool=" +
                                std::to_string(pl ? pl->size() : 0);
          auto go = [&](const AttentionParams& p, DecodeBf16Dp m, Isa isa, std::vector<float>* lse) {
            DecodeBf16DpScope ms(m);
            IsaCapScope cap(isa);
            lse->assign(size_t(sh.H), kNaN);
            return run_out(p, w, [&](float* o) { attention(d.q, k, v, o, p, pl, lse->data()); });
          };
          std::vector<float> l_dp, l_asked, l_exact, l_notasked, l_avx2, l_avx2x;
          const std::vector<float> dp = go(*pp0, DecodeBf16Dp::Always, Isa::Avx512, &l_dp);
          const std::vector<float> dp_asked = go(asked, DecodeBf16Dp::WhenAsked, Isa::Avx512, &l_asked);
          const std::vector<float> exact = go(*pp0, DecodeBf16Dp::Never, Isa::Avx512, &l_exact);
          const std::vector<float> not_asked = go(*pp0, DecodeBf16Dp::WhenAsked, Isa::Avx512, &l_notasked);
          const std::vector<float> avx2 = go(*pp0, DecodeBf16Dp::Always, Isa::Avx2, &l_avx2);
          const std::vector<float> avx2x = go(*pp0, DecodeBf16Dp::Never, Isa::Avx2, &l_avx2x);
          ++runs;
          if (dp != exact) ++differs;
          if (!qround && (dp != exact || l_dp != l_exact))  // < 4 query heads per kv head: the exact path
            ::emollm_test::report_failure(__FILE__, __LINE__, "bf16 products taken below 4 heads per kv head: " + w);
          if (dp != dp_asked || l_dp != l_asked)
            ::emollm_test::report_failure(__FILE__, __LINE__, "Always differs from WhenAsked + bf16_products: " + w);
          if (not_asked != exact || l_notasked != l_exact)
            ::emollm_test::report_failure(__FILE__, __LINE__, "WhenAsked without bf16_products is not exact: " + w);
          if (avx2 != avx2x || l_avx2 != l_avx2x)
            ::emollm_test::report_failure(__FILE__, __LINE__, "AVX2 took the bf16 products: " + w);
          for (int64_t h = 0; h < sh.H; ++h) {
            const std::string wh = w + " head=" + std::to_string(h);
            EXPECT_ALL_CLOSE(dp.data() + h * D, ref_full.data() + h * D, size_t(D), tol_full[size_t(h)], 0.0, wh + " vs f64");
            EXPECT_ALL_CLOSE(dp.data() + h * D, ref_rq.data() + h * D, size_t(D), tol_rq[size_t(h)], 0.0, wh + " vs f64 on rounded q");
            const double lt = dl_full[size_t(h)] + 1e-5 * std::max(1.0, std::fabs(double(lse_full[size_t(h)])));
            const double lr = dl_rq[size_t(h)] + 1e-5 * std::max(1.0, std::fabs(double(lse_rq[size_t(h)])));
            EXPECT_ALL_CLOSE(l_dp.data() + h, lse_full.data() + h, 1, lt, 0.0, wh + " lse vs f64");
            EXPECT_ALL_CLOSE(l_dp.data() + h, lse_rq.data() + h, 1, lr, 0.0, wh + " lse vs f64 on rounded q");
          }
        }
      }
    }
  std::printf("  bf16 products differ from the exact path in %d of %d runs\n", differs, runs);
  EXPECT(differs > runs / 2);
  // an f16 cache never takes them
  const Case c{1, 100, 32, 4, 64, true, 99};
  Data d = make_data(c, 12999);
  HalfCopy hf(d, DType::F16, 16, 13000);
  std::vector<float> a, b;
  {
    DecodeBf16DpScope ms(DecodeBf16Dp::Always);
    a = run_out(hf.p, "f16", [&](float* o) { attention(d.q, hf.k(), hf.v(), o, hf.p, &pool2); });
  }
  {
    DecodeBf16DpScope ms(DecodeBf16Dp::Never);
    b = run_out(hf.p, "f16", [&](float* o) { attention(d.q, hf.k(), hf.v(), o, hf.p, &pool2); });
  }
  EXPECT(a == b);
}

// P V in one register tile for one or two query rows per kv head with head_dim 65-128
// (attention_detail::decode_pv_wide: MHA decode, 7B's 32 x 128) sums every output element over
// its tokens in the order of the previous two passes of 4 chunks: outputs and log-sum-exps bit for
// bit equal with it off, f32 / f16 / bf16 caches, head_dim 80 / 100 (a tail chunk) / 128 / 64 (not
// taken), 1 and 2 rows per kv head (and 4: not taken), decode and 3-query chunks (the tiled path's
// units), contiguous and paged (64), no pool and 2 / 3 threads; within 1e-5 of ref::attention.
TEST(attention_decode_pv_wide_same_bits) {
  ThreadPool pool2(2), pool3(3);
  DecodeSplitScope sw(true);
  DecodeInplaceScope ip(true);
  struct Shape { int64_t H, Hkv, D, pad; };
  const Shape shapes[] = {{32, 32, 128, 0}, {8, 8, 80, 0}, {6, 3, 100, 3}, {4, 4, 64, 0}, {8, 2, 128, 0}};
  const int64_t lengths[] = {1, 17, 64, 129, 300};
  uint64_t seed = 12700;
  int runs = 0;
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (const Shape& sh : shapes)
      for (int64_t nq : {int64_t(1), int64_t(3)})
        for (int64_t n : lengths) {
          if (nq > n) continue;
          const Case c{nq, n, sh.H, sh.Hkv, sh.D, true, n - nq, sh.pad};
          Data d = make_data(c, seed++);
          const std::string what = describe(c) + " kv=" + dtype_name(t);
          const DecodeLayouts L(d, t, seed, {64}, {64}, what);
          const std::vector<float>& ref = L.ref;
          for (const AttentionParams* pp : L.ps) {
            const float* k = L.k(pp);
            const float* v = L.v(pp);
            for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
              const std::string w = what + " block=" + std::to_string(pp->kv_block_size) + " pool=" +
                                    std::to_string(pl ? pl->size() : 0);
              std::vector<float> la(size_t(nq * sh.H), kNaN), lb(size_t(nq * sh.H), kNaN), a, b;
              const bool was = attention_detail::decode_pv_wide();
              attention_detail::set_decode_pv_wide(true);
              a = run_out(*pp, w, [&](float* o) { attention(d.q, k, v, o, *pp, pl, la.data()); });
              attention_detail::set_decode_pv_wide(false);
              b = run_out(*pp, w, [&](float* o) { attention(d.q, k, v, o, *pp, pl, lb.data()); });
              attention_detail::set_decode_pv_wide(was);
              ++runs;
              EXPECT_ALL_CLOSE(a.data(), ref.data(), a.size(), 1e-5, 0.0, w + " pv wide");
              if (a != b || la != lb)
                ::emollm_test::report_failure(__FILE__, __LINE__, "the one-tile P V changed the result: " + w);
            }
          }
        }
  EXPECT(runs > 0);
}

// One decode-path switch's bit-equality sweep (qk16, P V pairs): f32 / f16 / bf16 caches, each shape
// at lengths with and without a partial last sub-block and across the 64-token block, contiguous
// and paged (16 / 64), no pool and 2 / 3 threads; with the switch on the outputs and log-sum-exps
// are within 1e-5 of ref::attention, and bit for bit those with it off; `applies` holds exactly for
// the shapes marked `taken` (on AVX-512; asked of the f32 contiguous call, and where `half` is 0 / 1
// of the f16 / bf16 contiguous calls too: whether they take it) and never with the switch off, and the path
// ran in more than runs / taken_divisor of the runs, so the comparison is not vacuous.
struct DecodeSwitch {
  const char* label;
  bool (*applies)(const AttentionParams&);
  bool (*get)();
  void (*set)(bool);
  int64_t min_taken_length;  // the path runs only from this kv length on
  int taken_divisor;
};
struct DecodeSweepShape {
  int64_t H, Hkv, D, pad;
  bool taken;     // the f32 call
  int half = -1;  // the f16 / bf16 calls: 1 taken, 0 not, -1 not asked
};
void expect_decode_switch_same_bits(const DecodeSwitch& sw, std::initializer_list<DecodeSweepShape> shapes, uint64_t seed) {
  ThreadPool pool2(2), pool3(3);
  DecodeSplitScope split(true);
  DecodeInplaceScope ip(true);
  const int64_t lengths[] = {1, 16, 17, 64, 129, 300};
  const bool avx512 = isa_active() >= Isa::Avx512;
  int runs = 0, taken = 0;
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (const DecodeSweepShape& sh : shapes)
      for (int64_t n : lengths) {
        const Case c{1, n, sh.H, sh.Hkv, sh.D, true, n - 1, sh.pad};
        Data d = make_data(c, seed++);
        const std::string what = describe(c) + " kv=" + dtype_name(t);
        EXPECT(sw.applies(d.p) == (avx512 && sh.taken));
        const DecodeLayouts L(d, t, seed, {16, 64}, {16, 64}, what);
        if (t != DType::F32 && sh.half >= 0) EXPECT(sw.applies(*L.ps[0]) == (avx512 && sh.half == 1));
        for (const AttentionParams* pp : L.ps) {
          for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
            const std::string w = what + " block=" + std::to_string(pp->kv_block_size) + " pool=" +
                                  std::to_string(pl ? pl->size() : 0);
            std::vector<float> la(size_t(sh.H), kNaN), lb(size_t(sh.H), kNaN), a, b;
            const bool was = sw.get();
            sw.set(true);
            taken += sw.applies(*pp) && n >= sw.min_taken_length ? 1 : 0;
            a = run_out(*pp, w, [&](float* o) { attention(d.q, L.k(pp), L.v(pp), o, *pp, pl, la.data()); });
            sw.set(false);
            EXPECT(!sw.applies(*pp));
            b = run_out(*pp, w, [&](float* o) { attention(d.q, L.k(pp), L.v(pp), o, *pp, pl, lb.data()); });
            sw.set(was);
            ++runs;
            EXPECT_ALL_CLOSE(a.data(), L.ref.data(), a.size(), 1e-5, 0.0, w + " " + sw.label);
            EXPECT_ALL_CLOSE(la.data(), L.ref_lse.data(), la.size(), 1e-5, 0.0, w + " " + sw.label + " lse");
            if (a != b || la != lb)
              ::emollm_test::report_failure(__FILE__, __LINE__, std::string(sw.label) + " changed the result: " + w);
          }
        }
      }
  std::printf("  %s taken in %d of %d runs\n", sw.label, taken, runs);
  EXPECT(runs > 0);
  EXPECT(!avx512 || taken > runs / sw.taken_divisor);
}

// Q K^T of full 16-token sub-blocks through qk16 (attention_detail::decode_qk_wide: one or two
// query rows per kv head, head_dim 65-128, wide token rows read in place: MHA decode, 7B's 32 x
// 128) keeps each score's chunk FMAs and reduction tree: outputs and log-sum-exps bit for bit
// equal with it off, f32 / f16 / bf16 caches, head_dim 80 / 100 (a tail chunk) / 128 (and 64, 4
// query rows per kv head, narrow rows: not taken), lengths with and without a partial last
// sub-block (the generic kernel there, the new one on the full ones), contiguous and paged (16 /
// 64), no pool and 2 / 3 threads; within 1e-5 of ref::attention. decode_qk16_applies must hold
// for the shapes meant to take it (on AVX-512), so the comparison is not vacuous.
TEST(attention_decode_qk_wide_same_bits) {
  const DecodeSwitch sw{"qk16", attention_detail::decode_qk16_applies, attention_detail::decode_qk_wide,
                        attention_detail::set_decode_qk_wide, 16, 4};
  expect_decode_switch_same_bits(sw,
                                 {{32, 32, 128, 0, true},
                                  {8, 8, 80, 0, true},
                                  {6, 3, 100, 3, true},
                                  {16, 8, 128, 0, true},
                                  {4, 4, 64, 0, false},
                                  {8, 2, 128, 0, false},
                                  {4, 2, 72, 0, false}},
                                 15700);
}

// P V of two adjacent kv heads a call (attention_detail::decode_pv_pairs: MHA decode with head_dim
// 65-128 and wide rows read in place, 7B's 32 x 128) sums every output element over its tokens in
// the order of one head a call: outputs and log-sum-exps bit for bit equal with it off, f32 / f16 /
// bf16 caches, head_dim 80 / 100 (a tail chunk, padded rows) / 128, an odd kv head count (the last
// head alone), and shapes that must not take it (2 query rows per kv head, head_dim 64); lengths
// with and without a partial last sub-block and across the 64-token block, contiguous and paged
// (16 / 64), no pool and 2 / 3 threads; within 1e-5 of ref::attention. decode_pv2_applies must hold
// for the shapes meant to take it (on AVX-512), so the comparison is not vacuous.
TEST(attention_decode_pv_pairs_same_bits) {
  const DecodeSwitch sw{"P V in pairs", attention_detail::decode_pv2_applies, attention_detail::decode_pv_pairs,
                        attention_detail::set_decode_pv_pairs, 1, 3};
  expect_decode_switch_same_bits(sw,
                                 {{32, 32, 128, 0, true},
                                  {8, 8, 80, 0, true},
                                  {6, 6, 100, 3, true},
                                  {5, 5, 128, 0, true},
                                  {16, 8, 128, 0, false},
                                  {8, 8, 64, 0, false}},
                                 16900);
}

// P V pairs a 16-float chunk at a time across the sub-block's token rows (attention_detail::
// decode_pv_chunks: MHA decode with head_dim 65-128 and wide rows read in place, 7B's 32 x 128;
// the Zen 4 default) keep every output element's operations in the row-at-a-time tile's order:
// outputs and log-sum-exps bit for bit equal with it off, f32 / f16 / bf16 caches, head_dim 80 /
// 100 (a tail chunk, padded rows) / 128, an odd kv head count (the last head alone, not paired),
// and shapes that do not take the pairs (2 query rows per kv head, head_dim 64); lengths with and
// without a partial last sub-block (the tile's run-time token count) and across the 64-token
// block, contiguous and paged (16 / 64), no pool and 2 / 3 threads; within 1e-5 of ref::attention.
// The pairs must run (decode_pv2_applies on AVX-512) for the shapes marked taken.
TEST(attention_decode_pv_chunks_same_bits) {
  const DecodeSwitch sw{"P V pairs by chunks",
                        [](const AttentionParams& p) {
                          return attention_detail::decode_pv2_applies(p) && attention_detail::decode_pv_chunks();
                        },
                        attention_detail::decode_pv_chunks, attention_detail::set_decode_pv_chunks, 1, 3};
  const bool was = attention_detail::decode_pv_chunks();  // this CPU's default (on on Zen 4)
  attention_detail::set_decode_pv_chunks(true);
  expect_decode_switch_same_bits(sw,
                                 {{32, 32, 128, 0, true},
                                  {8, 8, 80, 0, true},
                                  {6, 6, 100, 3, true},
                                  {5, 5, 128, 0, true},
                                  {16, 8, 128, 0, false},
                                  {8, 8, 64, 0, false}},
                                 18300);
  attention_detail::set_decode_pv_chunks(was);
}

// The 7B's wide-row sub-blocks read 8 token rows at a time with the next sub-block prefetched into L2
// (attention_detail::decode_wide_pf: qk16's keys 0-7 every chunk, then 8-15; P V pairs by chunks on tokens 0-7,
// then 8-15, all accumulators in registers) keep every score's and every output element's operations in order:
// outputs and log-sum-exps bit for bit equal with it off, f32 / f16 / bf16 caches, head_dim 80 / 100 (a tail chunk,
// padded rows) / 128, an odd kv head count (the last head's P V alone), the P V pairs by chunks (this CPU's default
// or not: set on here) and by rows; f32 caches take it only on rows back to back with head_dim 113-128 (x 80 / 100
// there: the 16 rows); not taken: 2 query heads a kv head (qk16's two-row tile), head_dim 64 (no qk16); lengths with and without a partial last sub-block (a next sub-block short of 16 rows: no prefetch), across
// the 64-token block and the pieces, contiguous and paged (16 / 64: the next sub-block in another page), no pool
// and 2 / 3 threads; within 1e-5 of ref::attention.
TEST(attention_decode_wide_pf_same_bits) {
  const DecodeSwitch sw{"wide rows 8 at a time, next prefetched", attention_detail::decode_wide_pf_applies,
                        attention_detail::decode_wide_pf, attention_detail::set_decode_wide_pf, 16, 3};
  const bool was = attention_detail::decode_pv_chunks();
  const attention_detail::DecodeWide was_pf = attention_detail::decode_wide_pf_mode();  // this CPU's default
  attention_detail::set_decode_wide_pf(true);  // the sweep checks applies with the switch as it finds it
  for (bool chunks : {true, false}) {
    attention_detail::set_decode_pv_chunks(chunks);
    expect_decode_switch_same_bits(sw,
                                   {{32, 32, 128, 0, true, 1},
                                    {8, 8, 80, 0, false, 1},
                                    {6, 6, 100, 3, false, 1},
                                    {5, 5, 128, 0, true, 1},
                                    {16, 8, 128, 0, false, 0},
                                    {8, 8, 64, 0, false, 0}},
                                   chunks ? 19700 : 20900);
  }
  attention_detail::set_decode_pv_chunks(was);
  attention_detail::set_decode_wide_pf_mode(was_pf);
}

// Those sub-blocks cut in two of 8 token rows (attention_detail::decode_wide8: every kv head's Q K^T of rows 0-7
// through qk8, qk16's accumulator and reduction lane for each key, then rows 8-15; P V pairs on 8 tokens at a time,
// the accumulators stored between) and with the next 8 rows prefetched too (decode_wide_pf on): the same bits as
// with it off, the shapes, caches, lengths, layouts and pools of attention_decode_wide_pf_same_bits (an odd kv head
// count does not take it: P V pairs only; f32 x 80 / 100 neither); within 1e-5 of ref::attention.
TEST(attention_decode_wide8_same_bits) {
  const DecodeSwitch sw{"wide rows as two sub-blocks of 8", attention_detail::decode_wide8_applies,
                        attention_detail::decode_wide8, attention_detail::set_decode_wide8, 16, 4};
  const bool was = attention_detail::decode_pv_chunks();
  const attention_detail::DecodeWide was_pf = attention_detail::decode_wide_pf_mode(),
                                     was8 = attention_detail::decode_wide8_mode();
  attention_detail::set_decode_wide8(true);  // the sweep checks applies with the switch as it finds it
  for (int mode = 0; mode < 3; ++mode) {  // chunks / chunks + prefetch / rows + prefetch
    attention_detail::set_decode_pv_chunks(mode < 2);
    attention_detail::set_decode_wide_pf(mode > 0);
    expect_decode_switch_same_bits(sw,
                                   {{32, 32, 128, 0, true, 1},
                                    {8, 8, 80, 0, false, 1},
                                    {6, 6, 100, 3, false, 1},
                                    {5, 5, 128, 0, false, 0},
                                    {16, 8, 128, 0, false, 0},
                                    {8, 8, 64, 0, false, 0}},
                                   21700 + 1000 * uint64_t(mode));
  }
  attention_detail::set_decode_pv_chunks(was);
  attention_detail::set_decode_wide_pf_mode(was_pf);
  attention_detail::set_decode_wide8_mode(was8);
}

// decode_wide_pf's prefetch in address order (attention_detail::decode_wide_lin: f32 rows back to back, head_dim
// 113-128, each Q K^T / P V pair call the next sub-block's or 8-row half's lines front to back, every N-th) is
// prefetches only: outputs and log-sum-exps bit for bit equal with it off, on the 16-row sub-blocks and on
// decode_wide8's halves (both DecodeWide::All here), N 1 / 8 / 32; taken on f32 x 128 (MHA 32 / 5 kv heads: an
// odd count's last P V alone, 16 rows even with decode_wide8) and 8 x 120 (a tail chunk), not on x 100 (7 chunks),
// padded rows (a gap between them; x 100 and these run the 16 rows on f32), 2 query heads a kv head; f16 / bf16 run
// with it on and must match too (their prefetch keeps the loads' order; never taken); lengths, layouts (contiguous,
// 16 / 64-token pages) and pools of expect_decode_switch_same_bits. attention_decode_wide_path_choice: which form ran.
namespace wide_lin_test {
int every = 8;  // the N the switch sets
bool on() { return attention_detail::decode_wide_lin() != 0; }
void set(bool v) { attention_detail::set_decode_wide_lin(v ? every : 0); }
}  // namespace wide_lin_test
TEST(attention_decode_wide_lin_same_bits) {
  const DecodeSwitch sw{"wide rows' prefetch in address order", attention_detail::decode_wide_lin_applies,
                        wide_lin_test::on, wide_lin_test::set, 16, 8};
  const attention_detail::DecodeWide was_pf = attention_detail::decode_wide_pf_mode(),
                                     was8 = attention_detail::decode_wide8_mode();
  const int was_lin = attention_detail::decode_wide_lin();
  const bool was_chunks = attention_detail::decode_pv_chunks();
  attention_detail::set_decode_pv_chunks(true);
  attention_detail::set_decode_wide_pf(true);
  uint64_t seed = 24100;
  for (bool w8 : {false, true})
    for (int n : {1, 8, 32}) {
      attention_detail::set_decode_wide8(w8);
      wide_lin_test::every = n;
      wide_lin_test::set(true);  // the sweep checks applies with the switch as it finds it
      expect_decode_switch_same_bits(sw,
                                     {{32, 32, 128, 0, true, 0},
                                      {8, 8, 120, 0, true, 0},
                                      {5, 5, 128, 0, true, 0},
                                      {8, 8, 100, 0, false, 0},
                                      {8, 8, 128, 3, false, 0},
                                      {16, 8, 128, 0, false, 0}},
                                     seed);
      seed += 1000;
    }
  attention_detail::set_decode_pv_chunks(was_chunks);
  attention_detail::set_decode_wide_pf_mode(was_pf);
  attention_detail::set_decode_wide8_mode(was8);
  attention_detail::set_decode_wide_lin(was_lin);
}

// Which form the 7B's wide-row sub-blocks take (attention_detail::AttentionWork decode_wide_pieces /
// decode_wide_lin_pieces), with decode_wide_pf and decode_wide8 DecodeWide::All (Zen 4's) or Half and
// decode_wide_lin 8 or 0: f16 / bf16 caches the 8-row halves at every wide MHA shape (x 128 / 120 / 80 / 100,
// padded rows), their prefetch in the loads' order; f32 ones only with All and where decode_wide_lin's shape holds
// (rows back to back, head_dim 113-128: x 128 / 120), in address order with decode_wide_lin on; other f32 shapes
// (x 80 / 100, padded rows) the 16 rows; 2 query heads a kv head never (0 below AVX-512). decode_wide_pf_applies /
// decode_wide_lin_applies say the same. Every run's outputs and log-sum-exps bit for bit those with both modes Off
// (the 16 rows) and within 1e-5 of ref::attention; 64 / 300 tokens, contiguous and 64-token pages, no pool and 2
// threads.
TEST(attention_decode_wide_path_choice) {
  using attention_detail::DecodeWide;
  ThreadPool pool2(2);
  DecodeSplitScope split(true);
  DecodeInplaceScope ip(true);
  const bool avx512 = isa_active() >= Isa::Avx512;
  const DecodeWide was_pf = attention_detail::decode_wide_pf_mode(), was8 = attention_detail::decode_wide8_mode();
  const int was_lin = attention_detail::decode_wide_lin();
  const bool was_chunks = attention_detail::decode_pv_chunks();
  attention_detail::set_decode_pv_chunks(true);
  struct Shape {
    int64_t H, Hkv, D, pad;
    bool lin_shape;  // rows back to back, head_dim 113-128
    bool wide;       // one query head per kv head, head_dim 65-128, wide rows
  };
  const Shape shapes[] = {{32, 32, 128, 0, true, true}, {8, 8, 120, 0, true, true},  {8, 8, 80, 0, false, true},
                          {8, 8, 100, 0, false, true},  {8, 8, 128, 3, false, true}, {16, 8, 128, 0, false, false}};
  struct Mode {
    DecodeWide m;
    int lin;
  };
  const Mode modes[] = {{DecodeWide::All, 8}, {DecodeWide::All, 0}, {DecodeWide::Half, 8}};
  uint64_t seed = 31100;
  int wide_runs = 0, lin_runs = 0;
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (const Shape& sh : shapes)
      for (int64_t n : {int64_t(64), int64_t(300)}) {
        const Case c{1, n, sh.H, sh.Hkv, sh.D, true, n - 1, sh.pad};
        Data d = make_data(c, seed++);
        const std::string what = describe(c) + " kv=" + dtype_name(t);
        const DecodeLayouts L(d, t, seed, {64}, {64}, what);
        for (const AttentionParams* pp : L.ps)
          for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2}) {
            const std::string wb = what + " block=" + std::to_string(pp->kv_block_size) + " pool=" +
                                   std::to_string(pl ? pl->size() : 0);
            std::vector<float> lb(size_t(sh.H), kNaN);
            attention_detail::set_decode_wide_pf_mode(DecodeWide::Off);
            attention_detail::set_decode_wide8_mode(DecodeWide::Off);
            const std::vector<float> b =
                run_out(*pp, wb, [&](float* o) { attention(d.q, L.k(pp), L.v(pp), o, *pp, pl, lb.data()); });
            for (const Mode& md : modes) {
              const std::string w = wb + " mode=" + std::to_string(int(md.m)) + " lin=" + std::to_string(md.lin);
              attention_detail::set_decode_wide_pf_mode(md.m);
              attention_detail::set_decode_wide8_mode(md.m);
              attention_detail::set_decode_wide_lin(md.lin);
              const bool takes = avx512 && sh.wide && (t != DType::F32 || (md.m == DecodeWide::All && sh.lin_shape));
              const bool lin = takes && t == DType::F32 && md.lin != 0;
              EXPECT(attention_detail::decode_wide_pf_applies(*pp) == takes);
              EXPECT(attention_detail::decode_wide_lin_applies(*pp) == lin);
              std::vector<float> la(size_t(sh.H), kNaN);
              const attention_detail::AttentionWork w0 = attention_detail::attention_work();
              const std::vector<float> a =
                  run_out(*pp, w, [&](float* o) { attention(d.q, L.k(pp), L.v(pp), o, *pp, pl, la.data()); });
              const attention_detail::AttentionWork w1 = attention_detail::attention_work();
              const uint64_t wide_pieces = w1.decode_wide_pieces - w0.decode_wide_pieces;
              const uint64_t lin_pieces = w1.decode_wide_lin_pieces - w0.decode_wide_lin_pieces;
              if ((wide_pieces > 0) != (takes && !lin) || (lin_pieces > 0) != lin)
                ::emollm_test::report_failure(__FILE__, __LINE__,
                                              "wide pieces " + std::to_string(wide_pieces) + ", in address order " +
                                                  std::to_string(lin_pieces) + ": not the form expected: " + w);
              wide_runs += wide_pieces > 0 ? 1 : 0;
              lin_runs += lin_pieces > 0 ? 1 : 0;
              EXPECT_ALL_CLOSE(a.data(), L.ref.data(), a.size(), 1e-5, 0.0, w);
              EXPECT_ALL_CLOSE(la.data(), L.ref_lse.data(), la.size(), 1e-5, 0.0, w + " lse");
              if (a != b || la != lb)
                ::emollm_test::report_failure(__FILE__, __LINE__, "the wide forms changed the result: " + w);
            }
          }
      }
  std::printf("  wide forms in %d runs, in address order in %d\n", wide_runs, lin_runs);
  EXPECT(!avx512 || (wide_runs > 0 && lin_runs > 0));
  attention_detail::set_decode_pv_chunks(was_chunks);
  attention_detail::set_decode_wide_pf_mode(was_pf);
  attention_detail::set_decode_wide8_mode(was8);
  attention_detail::set_decode_wide_lin(was_lin);
}

// set_decode_wide_lin stores 0, 1, 2, 4, 8, 16 and 32 and rejects any other value (InvalidArgument, the setting
// unchanged): a negative one ran as 32 before.
TEST(attention_decode_wide_lin_values) {
  const int was = attention_detail::decode_wide_lin();
  for (int v : {0, 1, 2, 4, 8, 16, 32}) {
    attention_detail::set_decode_wide_lin(v);
    EXPECT(attention_detail::decode_wide_lin() == v);
  }
  attention_detail::set_decode_wide_lin(4);
  for (int v : {-1, -8, -32, 3, 6, 12, 24, 33, 64, -2147483647 - 1}) {
    EXPECT_THROWS(attention_detail::set_decode_wide_lin(v), ErrorCode::InvalidArgument);
    EXPECT(attention_detail::decode_wide_lin() == 4);
  }
  attention_detail::set_decode_wide_lin(was);
}

// The next sub-block prefetched from inside the kernels' loops (attention_detail::decode_pipeline:
// narrow rows swept in place, >= 4 query heads per kv head: the 1.1B's 32 / 4 x 64) is prefetches
// only: outputs and log-sum-exps bit for bit equal with it off (each sub-block swept before its
// compute), f32 / f16 / bf16 caches, GQA 8 x 64, GQA 8 x 64 on two kv heads, MQA x 80 (a tail
// chunk), 12 query heads a kv head x 20 with padded rows (two qk_decode calls, a tail); not taken:
// MHA x 128 (wide), 2 query heads a kv head, wide GQA rows; lengths with and without a partial last
// sub-block, across the 64-token block and the pieces, contiguous and paged (16 / 64), no pool and
// 2 / 3 threads; within 1e-5 of ref::attention. decode_pipeline_applies must hold for the shapes
// meant to take it (on AVX-512), so the comparison is not vacuous.
TEST(attention_decode_pipeline_same_bits) {
  const DecodeSwitch sw{"pipelined prefetch", attention_detail::decode_pipeline_applies,
                        attention_detail::decode_pipeline, attention_detail::set_decode_pipeline, 17, 3};
  expect_decode_switch_same_bits(sw,
                                 {{32, 4, 64, 0, true},
                                  {16, 2, 64, 0, true},
                                  {8, 1, 80, 0, true},
                                  {12, 1, 20, 3, true},
                                  {32, 32, 128, 0, false},
                                  {8, 4, 64, 0, false},
                                  {32, 8, 64, 0, false}},
                                 17300);
}

// The pipelined prefetch into L2 (prefetcht2) or L1 (prefetcht0; attention_detail::decode_pipeline_l2,
// the per-CPU default of decode_tuning.h) is prefetches only: outputs and log-sum-exps bit for bit
// equal either way, on the shapes and layouts of attention_decode_pipeline_same_bits (the shapes
// that take the pipeline, and some that do not).
TEST(attention_decode_pipeline_l2_same_bits) {
  const DecodeSwitch sw{"pipelined prefetch into L2",
                        [](const AttentionParams& p) {
                          return attention_detail::decode_pipeline_applies(p) && attention_detail::decode_pipeline_l2();
                        },
                        attention_detail::decode_pipeline_l2, attention_detail::set_decode_pipeline_l2, 17, 3};
  const bool was = attention_detail::decode_pipeline_l2();  // the CPU's default: on where the sweep starts
  attention_detail::set_decode_pipeline_l2(true);
  expect_decode_switch_same_bits(sw, {{32, 4, 64, 0, true}, {12, 1, 20, 3, true}, {32, 32, 128, 0, false}}, 17700);
  attention_detail::set_decode_pipeline_l2(was);
}

// What the pipelined prefetch reads: (1) the cursor visits every 64-byte line of each row's span
// once, rows in order, whatever the rows' alignment, row stride (padded, or closer than a line) and
// lines a step; (2) the sub-block it prefetches during each sub-block of a piece is the one the
// driver computes next (K sub-blocks of a block, then its V sub-blocks, then the next block's K),
// none after the piece's last; pieces of 1-200 tokens from 0 and from 128.
TEST(attention_decode_pipeline_reads_next_sub_block) {
  alignas(64) static char buf[64 * 1024];
  for (int64_t off : {0, 4, 60, 100})
    for (int64_t rb : {1024, 1028, 200, 40})
      for (int64_t span : {int64_t(1024), int64_t(80), int64_t(256), int64_t(40), int64_t(1)})
        for (int ns : {1, 5, 16})
          for (int per : {1, 3, 8, 1000}) {
            if (span > rb) continue;
            const char* row = buf + off;
            std::vector<uintptr_t> want;
            for (int t = 0; t < ns; ++t) {
              const uintptr_t a = reinterpret_cast<uintptr_t>(row + t * rb);
              for (uintptr_t l = a >> 6; l <= (a + uintptr_t(span) - 1) >> 6; ++l) want.push_back(l << 6);
            }
            const std::vector<uintptr_t> got = attention_detail::decode_pipeline_lines(row, rb, span, ns, per);
            if (got != want)
              ::emollm_test::report_failure(__FILE__, __LINE__,
                                            "prefetched lines: off " + std::to_string(off) + " row_bytes " +
                                                std::to_string(rb) + " span " + std::to_string(span) + " rows " +
                                                std::to_string(ns) + " per step " + std::to_string(per));
          }
  int checked = 0;
  for (int64_t j0 : {0, 128})
    for (int64_t len : {1, 15, 16, 17, 63, 64, 65, 100, 128, 129, 200}) {
      const int64_t j1 = j0 + len;
      struct Sub { int64_t b0, b1, s; int ns; bool v; };
      std::vector<Sub> order;  // the driver's compute order
      for (int64_t b0 = j0; b0 < j1; b0 += 64) {
        const int64_t b1 = std::min(j1, b0 + 64);
        for (int v = 0; v < 2; ++v)
          for (int64_t s = b0; s < b1; s += 16) order.push_back({b0, b1, s, int(std::min<int64_t>(16, b1 - s)), v == 1});
      }
      for (size_t i = 0; i < order.size(); ++i) {
        const Sub& c = order[i];
        const attention_detail::DecodeSubBlock nx = attention_detail::decode_pipeline_next(j1, c.b0, c.b1, c.s, c.v);
        const std::string w = "piece [" + std::to_string(j0) + ", " + std::to_string(j1) + ") sub-block " +
                              std::to_string(i) + (c.v ? " V" : " K");
        if (i + 1 == order.size()) {
          if (nx.ns != 0) ::emollm_test::report_failure(__FILE__, __LINE__, w + ": prefetches past the piece");
          continue;
        }
        const Sub& n = order[i + 1];
        ++checked;
        if (nx.s != n.s || nx.ns != n.ns || nx.v != n.v)
          ::emollm_test::report_failure(__FILE__, __LINE__, w + ": prefetches another sub-block than the next");
      }
    }
  EXPECT(checked > 100);
}

// Which rows a 1-thread decode call reads before each sub-block's compute, in order
// (attention_detail::decode_reads): every K / V sub-block of every piece once, in the order the
// driver computes them (per piece, per 64-token block, K sub-blocks then V sub-blocks), each by its
// first row's address and row count; with decode_pipeline swept right before its compute only for
// each piece's first sub-block (the others prefetched from inside the previous sub-block's
// kernels), every sub-block swept with it off; and the lean piece's (decode_lean) order: its Q K^T
// prefetching the block's V (and in a piece's first block the next K) sub-blocks, its P V the next
// block's K sub-blocks. GQA 8 x 64 (f32, contiguous with padded rows, and
// pages of 64 tokens), lengths of one to six pieces, ends inside a sub-block and a block.
TEST(attention_decode_pipeline_reads_every_sub_block) {
  if (isa_active() < Isa::Avx512) return;
  DecodeSplitScope split(true);
  DecodeInplaceScope ip(true);
  const bool was_pipe = attention_detail::decode_pipeline();
  int checked = 0;
  for (int64_t n : {17, 128, 129, 300, 544, 700})
    for (int64_t pad : {0, 8})
      for (int64_t page : {0, 64}) {
        const Case c{1, n, 32, 4, 64, true, n - 1, pad};
        Data d = make_data(c, 18700 + uint64_t(n + pad + page));
        AttentionParams p = d.p;
        std::vector<const float*> kb, vb;
        if (page) {  // the same rows seen through page tables
          for (int64_t s = 0; s < n; s += page) {
            kb.push_back(d.k + s * p.ldk);
            vb.push_back(d.v + s * p.ldv);
          }
          p.k_blocks = kb.data();
          p.v_blocks = vb.data();
          p.kv_block_size = page;
        }
        // the driver's pieces at 1 thread (make_decode_item)
        const int64_t n_sub = (n + 15) / 16, pieces = std::min((n + 127) / 128, n_sub);
        const int64_t plen = (n_sub + pieces - 1) / pieces * 16;
        for (int mode = 0; mode < 4; ++mode) {  // pipeline on, off; the lean piece (decode_lean) off, on
          attention_detail::set_decode_pipeline(mode % 2 == 0);
          DecodeLeanScope lean(mode >= 2);
          std::vector<attention_detail::DecodeRead> want;
          auto sub = [&](int v, int64_t s, int64_t end, bool swept) {
            const float* row = (v ? d.v + s * p.ldv : d.k + s * p.ldk);
            want.push_back({reinterpret_cast<uintptr_t>(row), int(std::min<int64_t>(16, end - s)), swept});
          };
          for (int64_t j0 = 0; j0 < n; j0 += plen) {
            const int64_t j1 = std::min(n, j0 + plen);
            for (int64_t b0 = j0; b0 < j1; b0 += 64) {
              const int64_t b1 = std::min(j1, b0 + 64);
              if (mode < 2) {
                for (int v = 0; v < 2; ++v)
                  for (int64_t s = b0; s < b1; s += 16) sub(v, s, b1, mode == 1 || (s == j0 && v == 0));
                continue;
              }
              // lean: each K sub-block (swept: the piece's first, or all without the pipeline), then
              // what its Q K^T prefetches (the piece's first block: the next K sub-block; the V
              // sub-block of the same index); after the softmax the V sub-blocks swept (no
              // pipeline) or the next block's K sub-blocks prefetched during P V
              for (int64_t s = b0; s < b1; s += 16) {
                if (mode == 3 || s == j0) sub(0, s, b1, true);
                if (mode == 3) continue;
                if (b0 == j0 && s + 16 < b1) sub(0, s + 16, b1, false);
                sub(1, s, b1, false);
              }
              if (mode == 3)
                for (int64_t s = b0; s < b1; s += 16) sub(1, s, b1, true);
              else
                for (int64_t s = b1; s < std::min(j1, b1 + 64); s += 16) sub(0, s, std::min(j1, b1 + 64), false);
            }
          }
          std::vector<float> out(size_t(p.n_heads * p.head_dim));
          const std::vector<attention_detail::DecodeRead> got =
              attention_detail::decode_reads(d.q, d.k, d.v, out.data(), p);
          ++checked;
          const std::string w = describe(c) + " page " + std::to_string(page) + " mode " + std::to_string(mode);
          if (got.size() != want.size()) {
            ::emollm_test::report_failure(__FILE__, __LINE__, w + ": " + std::to_string(got.size()) + " reads, want " +
                                                                 std::to_string(want.size()));
            continue;
          }
          for (size_t i = 0; i < want.size(); ++i)
            if (!(got[i] == want[i])) {
              ::emollm_test::report_failure(__FILE__, __LINE__, w + ": read " + std::to_string(i) + (got[i].swept ? " swept" : " prefetched") +
                                                                   " differs");
              break;
            }
        }
      }
  attention_detail::set_decode_pipeline(was_pipe);
  EXPECT(checked == 96);
}

// The attention drivers' scheduling (attention_internal.h: the decode pieces, the tiled units and
// split-KV merges taken from a shared counter inside one pool->run job) with a late worker against
// the same calls without one (the reference): outputs and log-sum-exps bit for bit equal with the
// last worker holding its first claim 20 ms (base/thread_pool.h pool_set_late_worker,
// LateAt::Hold: preempted with a piece in hand) and picking every job up 20 ms late
// (LateAt::Arrival), at 1 / 2 / 3 threads; decode calls across 16- / 64-token
// sub-blocks and blocks and several query heads per kv head (8:1, 4:1 with padded rows, MHA with
// wide rows), contiguous and paged (64), tiled calls (a causal prefill of 70 queries; 5 queries
// over a 600-token cache: split-KV and merges), and one attention_batch of decode and tiled items.
// Every piece, unit and merge runs exactly once (attention_detail::attention_work: the counts the
// call's plan gives, attention_planned_work; fails if one is skipped or run twice), and the late
// worker runs at most one piece or unit of a call (the others take the rest while it is held).
namespace {
struct LateWorkerScope {
  ~LateWorkerScope() { pool_set_late_worker(0); }
};
struct WorkDelta {
  attention_detail::AttentionWork a = attention_detail::attention_work();
  attention_detail::AttentionWork since() const {
    attention_detail::AttentionWork b = attention_detail::attention_work(), d;
    d.decode_pieces = b.decode_pieces - a.decode_pieces;
    d.decode_merges = b.decode_merges - a.decode_merges;
    d.tiled_units = b.tiled_units - a.tiled_units;
    d.tiled_merges = b.tiled_merges - a.tiled_merges;
    for (int i = 0; i < attention_detail::kWorkThreads; ++i) d.by_thread[i] = b.by_thread[i] - a.by_thread[i];
    return d;
  }
};
bool same_counts(const attention_detail::AttentionWork& a, const attention_detail::AttentionWork& b) {
  return a.decode_pieces == b.decode_pieces && a.decode_merges == b.decode_merges && a.tiled_units == b.tiled_units &&
         a.tiled_merges == b.tiled_merges;
}
}  // namespace

// Scheduling checks (the late worker claims nothing more) get this many extra attempts: on a loaded
// machine the other workers can be descheduled for the whole 20 ms hold. The bits never get one.
constexpr int kLateAttempts = 4;

TEST(attention_late_worker_same_bits) {
  LateWorkerScope scope;
  ThreadPool pool1(1), pool2(2), pool3(3);
  struct Mode { int late_us; LateAt at; const char* name; };
  const Mode modes[] = {{0, LateAt::Hold, "again"}, {20000, LateAt::Hold, "late hold"}, {20000, LateAt::Arrival, "late arrival"}};
  const Case cases[] = {{1, 17, 32, 4, 64, true, 16},       {1, 64, 32, 4, 64, true, 63},
                        {1, 65, 32, 4, 64, true, 64},       {1, 300, 32, 4, 64, true, 299},
                        {1, 769, 32, 4, 64, true, 768},     {1, 513, 8, 2, 80, true, 512, 3},
                        {1, 257, 16, 16, 128, true, 256},   {70, 70, 8, 4, 64, true, 0},
                        {5, 600, 8, 2, 64, true, 595}};
  uint64_t seed = 18100;
  int runs = 0, late_runs = 0;
  for (const Case& c : cases) {
    Data d = make_data(c, seed++);
    PagedCopy pg(d, 64, seed++);
    for (const AttentionParams* pp : {&d.p, &pg.p})
      for (ThreadPool* pl : {&pool1, &pool2, &pool3}) {
        const std::string what = describe(c) + " block=" + std::to_string(pp->kv_block_size) +
                                 " threads=" + std::to_string(pl->size());
        const float* k = pp->kv_block_size ? nullptr : d.k;
        const float* v = pp->kv_block_size ? nullptr : d.v;
        const size_t n_lse = size_t(c.n_q * c.n_heads);
        auto call = [&](std::vector<float>* lse) {
          lse->assign(n_lse, kNaN);
          return run_out(*pp, what, [&](float* o) { attention(d.q, k, v, o, *pp, pl, lse->data()); });
        };
        std::vector<float> ref_lse, lse;
        const WorkDelta w_ref;
        const std::vector<float> ref = call(&ref_lse);
        const attention_detail::AttentionWork ref_work = w_ref.since();
        // the counts the call's plan gives (not the scheduling): every mode, the reference too
        const attention_detail::AttentionWork plan = attention_detail::attention_planned_work(*pp, pl->size());
        EXPECT(plan.decode_pieces + plan.tiled_units >= 1);
        if (!same_counts(ref_work, plan)) ::emollm_test::report_failure(__FILE__, __LINE__, "work counts differ: " + what + " pool->run");
        for (const Mode& md : modes)
          for (int attempt = 0;; ++attempt) {
            pool_set_late_worker(md.late_us, -1, md.at);
            const WorkDelta w;
            const std::vector<float> got = call(&lse);
            const attention_detail::AttentionWork work = w.since();
            pool_set_late_worker(0);
            ++runs;
            const std::string wm = what + " " + md.name;
            if (got != ref || lse != ref_lse) ::emollm_test::report_failure(__FILE__, __LINE__, "bits differ: " + wm);
            if (!same_counts(work, plan)) ::emollm_test::report_failure(__FILE__, __LINE__, "work counts differ: " + wm);
            uint64_t by_thread = 0;
            for (uint64_t n : work.by_thread) by_thread += n;
            EXPECT(by_thread == work.decode_pieces + work.tiled_units);
            if (md.late_us > 0 && pl->size() > 1) {
              ++late_runs;
              if (work.by_thread[pl->size() - 1] > 1) {
                // The other workers can be descheduled for the whole hold on a loaded machine: a
                // scheduling check, so it gets more attempts (each one still checked bit for bit).
                if (attempt < kLateAttempts) continue;
                ::emollm_test::report_failure(__FILE__, __LINE__, "the late worker ran " +
                                              std::to_string(work.by_thread[pl->size() - 1]) + " pieces: " + wm);
              }
            }
            break;
          }
      }
  }
  // A batch of decode items (GQA, MHA) and tiled items: the item boundaries inside the shared counters.
  std::vector<Data> ds;
  for (const Case& c : {Case{1, 300, 32, 4, 64, true, 299}, Case{1, 65, 16, 16, 128, true, 64},
                        Case{1, 129, 8, 2, 80, true, 128, 3}, Case{5, 600, 8, 2, 64, true, 595},
                        Case{70, 70, 8, 4, 64, true, 0}})
    ds.push_back(make_data(c, seed++));
  for (ThreadPool* pl : {&pool1, &pool2, &pool3}) {
    std::vector<std::vector<float>> ref;
    for (const Mode* md : {static_cast<const Mode*>(nullptr), &modes[0], &modes[1], &modes[2]})
     for (int attempt = 0;; ++attempt) {
      pool_set_late_worker(md ? md->late_us : 0, -1, md ? md->at : LateAt::Hold);
      std::vector<std::vector<float>> outs(ds.size());
      std::vector<AttentionBatchItem> items;
      for (size_t i = 0; i < ds.size(); ++i) {
        outs[i].assign(size_t(ds[i].p.n_q * ds[i].p.ldo), kNaN);
        items.push_back(AttentionBatchItem{ds[i].q, ds[i].k, ds[i].v, outs[i].data(), ds[i].p});
      }
      const WorkDelta w;
      attention_batch(items.data(), int64_t(items.size()), pl);
      const attention_detail::AttentionWork work = w.since();
      pool_set_late_worker(0);
      attention_detail::AttentionWork plan;  // the items' plans added up
      for (const Data& dd : ds) {
        const attention_detail::AttentionWork pw = attention_detail::attention_planned_work(dd.p, pl->size());
        plan.decode_pieces += pw.decode_pieces;
        plan.decode_merges += pw.decode_merges;
        plan.tiled_units += pw.tiled_units;
        plan.tiled_merges += pw.tiled_merges;
      }
      const std::string wm = std::string("batch threads=") + std::to_string(pl->size()) + " " + (md ? md->name : "pool->run");
      if (!same_counts(work, plan)) ::emollm_test::report_failure(__FILE__, __LINE__, "work counts differ: " + wm);
      if (!md) {
        ref = outs;
        EXPECT(plan.decode_merges >= 1 && plan.tiled_merges >= (pl->size() > 1 ? 1u : 0u));  // not vacuous
        break;  // the reference: no attempts
      }
      for (size_t i = 0; i < ds.size(); ++i)  // bytes: the padding stays NaN on both sides
        if (std::memcmp(outs[i].data(), ref[i].data(), sizeof(float) * ref[i].size()) != 0)
          ::emollm_test::report_failure(__FILE__, __LINE__, "bits differ: " + wm + " item " + std::to_string(i));
      if (md->late_us > 0 && pl->size() > 1 && work.by_thread[pl->size() - 1] > 2) {  // one of each job
        if (attempt < kLateAttempts) continue;  // descheduled others (see above)
        ::emollm_test::report_failure(__FILE__, __LINE__, "the late worker ran more than its claims: " + wm);
      }
      break;
    }
  }
  // The late worker must really hold a piece at least once (above, a short call is often over
  // before the worker arrives): a 7B-shaped decode call (32 x 128 heads, 769 tokens, 6 pieces at
  // 2 threads) until the hook fires, each run bit for bit the reference, the pieces once each.
  {
    Data d = make_data({1, 769, 32, 32, 128, true, 768}, seed++);
    std::vector<float> ref_lse, lse;
    const WorkDelta w_ref;
    ref_lse.assign(32, kNaN);
    const std::vector<float> ref = run_out(d.p, "7B ref", [&](float* o) { attention(d.q, d.k, d.v, o, d.p, &pool2, ref_lse.data()); });
    const attention_detail::AttentionWork ref_work = w_ref.since();
    EXPECT(ref_work.decode_pieces == attention_detail::attention_planned_work(d.p, 2).decode_pieces);
    EXPECT(ref_work.decode_pieces > 2);
    int tries = 0, held = 0, overran = 0;
    for (; tries < 300 && held == 0; ++tries) {
      const uint64_t d0 = pool_late_delays();
      pool_set_late_worker(20000, -1, LateAt::Hold);
      const WorkDelta w;
      lse.assign(32, kNaN);
      const std::vector<float> got = run_out(d.p, "7B late", [&](float* o) { attention(d.q, d.k, d.v, o, d.p, &pool2, lse.data()); });
      const attention_detail::AttentionWork work = w.since();
      pool_set_late_worker(0);
      EXPECT(got == ref && lse == ref_lse);
      EXPECT(same_counts(work, ref_work) && work.decode_merges == 1);
      if (pool_late_delays() == d0) continue;  // over before the worker arrived
      if (work.by_thread[1] <= 1) ++held;
      else ++overran;  // the other worker descheduled for the whole hold (a loaded machine): again
    }
    std::printf("  %d runs, %d with a late worker; the 7B-shaped call held a piece after %d tries (%d overran)\n", runs,
                late_runs, tries, overran);
    EXPECT(held == 1 && overran <= kLateAttempts);
  }
  EXPECT(runs > 0 && late_runs > 0);
}


// Prefill tile groups (attention_detail::prefill_fast, run_tile_group): consecutive query tiles of
// one kv head in one unit, each K block transposed and each V block packed once for the group.
// Bit for bit equal to the one-tile units (set_prefill_fast(false)), output and log-sum-exp, on
// MHA and GQA prefills and chunks over a cache (7B-like 128-wide heads, D 80 padded to 96, a last
// tile under 16 and under 8 rows, a head chunk of fewer heads, a bidirectional call), contiguous and paged (64 / 128 /
// 16-token pages: 16 never groups), 1-3 threads; each within 1e-5 of the naive double attention; the plans
// group where expected (fewer planned units than one tile a unit) and every unit runs once.
TEST(attention_prefill_tile_groups_same_bits) {
  if (isa_detected() < Isa::Avx512) return;
  struct Restore {
    bool on = attention_detail::prefill_fast();
    ~Restore() { attention_detail::set_prefill_fast(on); }
  } restore;
  ThreadPool pool1(1), pool2(2), pool3(3);
  const Case cases[] = {{300, 300, 4, 4, 128, true, 0},    // MHA prefill, last tile 44 rows
                        {116, 628, 4, 4, 128, true, 512},  // the sample's second chunk (52 + 64 rows)
                        {263, 263, 2, 2, 64, true, 0},     // last tile of 7 rows: untransposed Q K^T
                        {140, 180, 3, 3, 80, true, 40},    // D 80 (padded to 96), last tile 12 rows
                        {200, 200, 8, 2, 64, true, 0},     // GQA 4 heads a kv head: tiles of 16 queries
                        {90, 150, 12, 1, 64, true, 60},    // MQA 12 heads: head chunks, tiles of 5 queries
                        {100, 100, 4, 4, 64, true, 0, 3},  // strided rows
                        {150, 170, 4, 4, 64, false, 0}};   // bidirectional (an f32 vision tower)
  uint64_t seed = 20600;
  int grouped = 0;
  for (const Case& c : cases) {
    Data d = make_data(c, seed++);
    PagedCopy pg64(d, 64, seed++), pg128(d, 128, seed++), pg16(d, 16, seed++);
    const std::vector<float> naive = naive_attention(d.q, d.k, d.v, d.p);
    for (const AttentionParams* pp : {&d.p, &pg64.p, &pg128.p, &pg16.p})
      for (ThreadPool* pl : {&pool1, &pool2, &pool3}) {
        const std::string what = describe(c) + " block=" + std::to_string(pp->kv_block_size) +
                                 " threads=" + std::to_string(pl->size());
        const float* k = pp->kv_block_size ? nullptr : d.k;
        const float* v = pp->kv_block_size ? nullptr : d.v;
        const size_t n_lse = size_t(c.n_q * c.n_heads);
        std::vector<float> lse_on(n_lse, kNaN), lse_off(n_lse, kNaN);
        attention_detail::set_prefill_fast(false);
        const uint64_t units_off = attention_detail::attention_planned_work(*pp, pl->size()).tiled_units;
        const std::vector<float> off =
            run_out(*pp, what, [&](float* o) { attention(d.q, k, v, o, *pp, pl, lse_off.data()); });
        attention_detail::set_prefill_fast(true);
        const uint64_t units_on = attention_detail::attention_planned_work(*pp, pl->size()).tiled_units;
        const WorkDelta w;
        const std::vector<float> on = run_out(*pp, what, [&](float* o) { attention(d.q, k, v, o, *pp, pl, lse_on.data()); });
        if (w.since().tiled_units != units_on) ::emollm_test::report_failure(__FILE__, __LINE__, "units run != planned: " + what);
        if (units_on < units_off) ++grouped;
        if (pp->kv_block_size == 16 && units_on != units_off)
          ::emollm_test::report_failure(__FILE__, __LINE__, "16-token pages grouped: " + what);
        if (std::memcmp(on.data(), off.data(), sizeof(float) * on.size()) != 0 ||
            std::memcmp(lse_on.data(), lse_off.data(), sizeof(float) * n_lse) != 0)
          ::emollm_test::report_failure(__FILE__, __LINE__, "bits differ from one tile a unit: " + what);
        float err = 0;
        for (size_t i = 0; i < on.size(); ++i) err = std::max(err, std::fabs(on[i] - naive[i]));
        if (!(err <= 1e-5f)) ::emollm_test::report_failure(__FILE__, __LINE__, "vs naive " + std::to_string(err) + ": " + what);
      }
  }
  // contiguous + 64 + 128 at 1 thread group every case; at 2 / 3 threads some more
  EXPECT(grouped >= 8 * 3);
}

// The tile groups' causal diagonal blocks without their fully masked parts
// (attention_detail::prefill_causal_skip: Q K^T over the 16-key columns a 6-row group sees, P V over
// the keys a 4-row group sees) against the whole blocks (off): outputs and log-sum-exps bit for
// bit, on the sample's two chunks (512 at 0 in 8 tiles of 64 rows, 116 at 512: 64 + 52 rows), a
// last tile of 44 rows, tiles under 16 rows (12 and 7: the untransposed Q K^T on the cache's
// rows), D 72 (k_transpose's 8 dims past its 16 x 16 blocks; pv's last 16-float chunk masked, the
// rows padded to 80), GQA tiles of 16 queries x 4 heads (a P V row group is one query's heads),
// MQA with 12 query heads (one head chunk: tiles of 5 queries x 12 heads), pages of 64 / 128
// tokens, 1-3 threads; every causal call planned in tile groups runs diagonal blocks so
// (attention_work's causal_skip_blocks > 0; 0 with it off, in one tile a unit (run_unit, unchanged)
// and on a bidirectional call). MQA with 72 query heads (two head chunks, 64 + 8 heads: more than
// 32 heads a chunk leave a tile one query, whose blocks end at its own last key) is planned in tile
// groups with nothing to skip: the switch changes nothing there (causal_skip_blocks 0, the same
// bits). A key a row sees left out, or a row group's columns cut short, changes output bits (and
// the error against the naive double attention, held within 1e-5).
TEST(attention_prefill_causal_skip_same_bits) {
  if (isa_detected() < Isa::Avx512) return;
  struct Restore {
    bool fast = attention_detail::prefill_fast(), skip = attention_detail::prefill_causal_skip();
    ~Restore() {
      attention_detail::set_prefill_fast(fast);
      attention_detail::set_prefill_causal_skip(skip);
    }
  } restore;
  attention_detail::set_prefill_fast(true);
  ThreadPool pool1(1), pool2(2), pool3(3);
  const Case cases[] = {{512, 512, 2, 2, 128, true, 0},    // the sample's first chunk
                        {116, 628, 2, 2, 128, true, 512},  // its second (52 + 64 rows)
                        {300, 300, 3, 3, 128, true, 0},    // last tile 44 rows
                        {140, 180, 3, 3, 72, true, 40},    // D 72 (tail dims), last tile 12 rows
                        {263, 263, 2, 2, 64, true, 0},     // last tile of 7 rows
                        {200, 200, 8, 2, 64, true, 0},     // GQA 4 heads a kv head
                        {90, 150, 12, 1, 64, true, 60},    // MQA 12 heads: one head chunk
                        {40, 100, 72, 1, 64, true, 60},    // MQA 72 heads: two head chunks, nothing to skip
                        {150, 170, 4, 4, 64, false, 0}};   // bidirectional: nothing skipped
  uint64_t seed = 20900;
  int grouped = 0;
  for (const Case& c : cases) {
    Data d = make_data(c, seed++);
    PagedCopy pg64(d, 64, seed++), pg128(d, 128, seed++);
    const std::vector<float> naive = naive_attention(d.q, d.k, d.v, d.p);
    for (const AttentionParams* pp : {&d.p, &pg64.p, &pg128.p})
      for (ThreadPool* pl : {&pool1, &pool2, &pool3}) {
        const std::string what = describe(c) + " block=" + std::to_string(pp->kv_block_size) +
                                 " threads=" + std::to_string(pl->size());
        const float* k = pp->kv_block_size ? nullptr : d.k;
        const float* v = pp->kv_block_size ? nullptr : d.v;
        const size_t n_lse = size_t(c.n_q * c.n_heads);
        std::vector<float> lse_on(n_lse, kNaN), lse_off(n_lse, kNaN);
        // tile groups planned (fewer units than one tile a unit): only they skip
        attention_detail::set_prefill_fast(false);
        const uint64_t units_tiles = attention_detail::attention_planned_work(*pp, pl->size()).tiled_units;
        attention_detail::set_prefill_fast(true);
        const bool groups = attention_detail::attention_planned_work(*pp, pl->size()).tiled_units < units_tiles;
        grouped += groups && c.causal;
        // tiles of one query (more than 32 query heads a kv head: 64 rows a tile) have no masked keys
        const bool skips = groups && c.causal && c.n_heads / c.n_kv_heads <= 32;
        attention_detail::set_prefill_causal_skip(false);
        uint64_t before = attention_detail::attention_work().causal_skip_blocks;
        const std::vector<float> off =
            run_out(*pp, what, [&](float* o) { attention(d.q, k, v, o, *pp, pl, lse_off.data()); });
        if (attention_detail::attention_work().causal_skip_blocks != before)
          ::emollm_test::report_failure(__FILE__, __LINE__, "skipped with the switch off: " + what);
        attention_detail::set_prefill_causal_skip(true);
        before = attention_detail::attention_work().causal_skip_blocks;
        const std::vector<float> on = run_out(*pp, what, [&](float* o) { attention(d.q, k, v, o, *pp, pl, lse_on.data()); });
        const uint64_t skipped = attention_detail::attention_work().causal_skip_blocks - before;
        if (skips ? skipped == 0 : skipped != 0)
          ::emollm_test::report_failure(__FILE__, __LINE__, "diagonal blocks skipped: " + std::to_string(skipped) + ": " + what);
        if (std::memcmp(on.data(), off.data(), sizeof(float) * on.size()) != 0 ||
            std::memcmp(lse_on.data(), lse_off.data(), sizeof(float) * n_lse) != 0)
          ::emollm_test::report_failure(__FILE__, __LINE__, "bits differ from whole diagonal blocks: " + what);
        float err = 0;
        for (size_t i = 0; i < on.size(); ++i) err = std::max(err, std::fabs(on[i] - naive[i]));
        if (!(err <= 1e-5f)) ::emollm_test::report_failure(__FILE__, __LINE__, "vs naive " + std::to_string(err) + ": " + what);
      }
  }
  // every causal case groups at 1 thread (contiguous, 64 and 128-token pages), some at 2 / 3
  EXPECT(grouped >= 8 * 3);
}

// The lean narrow piece (attention_detail::decode_lean: all kv heads' Q K^T a sub-block in one call,
// P V a whole 64-token block a kv head, q read in place, the vector merge) against run_decode_piece
// (lean off): outputs and log-sum-exps bit for bit, f32 / f16 / bf16 caches, GQA 8 x 64 (the 1.1B),
// 8 x 64 on two kv heads, 4 x 64 with padded rows, MQA x 72 (q padded to 80, a tail chunk) and 12 x 20,
// lengths inside a sub-block, a block and a piece and across them (300: 112-token pieces, blocks
// crossing 64-token pages: P V a sub-block at a time there), contiguous and paged (16 / 64 tokens),
// no pool and 2 / 3 threads (merges), the pipelined prefetch on and off; every run with it on takes
// the lean piece (attention_work's decode_lean_pieces > 0; 0 with it off). A wrong weight, a rescale
// applied to a later sub-block or a token read twice changes some output bit, which the tolerance
// of attention_decode_split_matches_ref would let through.
TEST(attention_decode_lean_same_bits) {
  if (isa_active() < Isa::Avx512) return;  // the lean piece is the AVX-512 decode driver's
  ThreadPool pool2(2), pool3(3);
  DecodeSplitScope split(true);
  DecodeInplaceScope ip(true);
  struct Shape { int64_t H, Hkv, D, pad; };
  const Shape shapes[] = {{32, 4, 64, 0}, {16, 2, 64, 0}, {16, 4, 64, 8}, {8, 1, 72, 0}, {12, 1, 20, 0}};
  uint32_t x = 5151;
  auto rnd = [&]() {
    x = x * 1664525u + 1013904223u;
    return float(int32_t(x >> 8) - (1 << 23)) / float(1 << 23);
  };
  int runs = 0, differing = 0;
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (const Shape& sh : shapes)
      for (int64_t n : {int64_t(1), int64_t(15), int64_t(17), int64_t(64), int64_t(65), int64_t(129), int64_t(300),
                        int64_t(700)}) {
        const int64_t ld = sh.Hkv * sh.D + sh.pad, rows = (n + 63) / 64 * 64;
        const size_t esz = t == DType::F32 ? 4 : 2;
        std::vector<uint8_t> kr(size_t(rows * ld) * esz), vr(kr.size());
        auto put = [&](std::vector<uint8_t>& b, int64_t i, float f) {
          if (t == DType::F32) std::memcpy(&b[size_t(i) * 4], &f, 4);
          else {
            const uint16_t h = t == DType::F16 ? f32_to_f16(f) : f32_to_bf16(f);
            std::memcpy(&b[size_t(i) * 2], &h, 2);
          }
        };
        for (int64_t j = 0; j < rows; ++j)
          for (int64_t e = 0; e < ld; ++e) {
            put(kr, j * ld + e, j < n && e < sh.Hkv * sh.D ? 2.0f * rnd() : kNaN);
            put(vr, j * ld + e, j < n && e < sh.Hkv * sh.D ? rnd() : kNaN);
          }
        std::vector<float> q(size_t(sh.H * sh.D));
        for (float& f : q) f = 3.0f * rnd();
        AttentionParams p;
        p.n_q = 1; p.n_kv = n; p.n_heads = sh.H; p.n_kv_heads = sh.Hkv; p.head_dim = sh.D;
        p.ldq = p.ldo = sh.H * sh.D;
        p.ldk = p.ldv = ld;
        p.q_pos0 = n - 1;
        p.kv_dtype = t;
        const std::string what = "H=" + std::to_string(sh.H) + " Hkv=" + std::to_string(sh.Hkv) + " D=" +
                                 std::to_string(sh.D) + " pad=" + std::to_string(sh.pad) + " n=" + std::to_string(n) +
                                 " kv=" + dtype_name(t);
        for (int64_t bs : {int64_t(0), int64_t(16), int64_t(64)}) {
          std::vector<std::vector<uint8_t>> pages;
          std::vector<const float*> tk, tv;
          if (bs)
            for (int64_t j = 0; j < rows; j += bs)
              for (auto* pr : {&kr, &vr}) {
                const size_t off = size_t(j * ld) * esz, len = size_t(bs * ld) * esz;
                pages.emplace_back(pr->begin() + std::ptrdiff_t(off), pr->begin() + std::ptrdiff_t(off + len));
                (pr == &kr ? tk : tv).push_back(reinterpret_cast<const float*>(pages.back().data()));
              }
          AttentionParams pp = p;
          pp.kv_block_size = bs;
          if (bs) {
            pp.k_blocks = tk.data();
            pp.v_blocks = tv.data();
          }
          const float* k = bs ? nullptr : reinterpret_cast<const float*>(kr.data());
          const float* v = bs ? nullptr : reinterpret_cast<const float*>(vr.data());
          for (bool pipe : {true, false})
            for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
              const std::string w = what + " block=" + std::to_string(bs) + " pipe=" + std::to_string(pipe) +
                                    " pool=" + std::to_string(pl ? pl->size() : 0);
              const bool was_pipe = attention_detail::decode_pipeline();
              attention_detail::set_decode_pipeline(pipe);
              std::vector<float> la(size_t(sh.H), kNaN), lb(size_t(sh.H), kNaN);
              // the pieces that ran the lean piece (attention_work's decode_lean_pieces): none with it
              // off, every taken run some, so the comparison is not of run_decode_piece with itself
              auto call = [&](bool lean, std::vector<float>& lse) {
                DecodeLeanScope ls(lean);
                const uint64_t n0 = attention_detail::attention_work().decode_lean_pieces;
                std::vector<float> out = run_out(pp, w, [&](float* o) { attention(q.data(), k, v, o, pp, pl, lse.data()); });
                const uint64_t lean_pieces = attention_detail::attention_work().decode_lean_pieces - n0;
                if (lean ? lean_pieces == 0 : lean_pieces != 0)
                  ::emollm_test::report_failure(__FILE__, __LINE__, std::string(lean ? "lean piece not taken: " : "lean piece taken while off: ") + w);
                return out;
              };
              const std::vector<float> a = call(false, la), b = call(true, lb);
              attention_detail::set_decode_pipeline(was_pipe);
              ++runs;
              for (float f : a) EXPECT(std::isfinite(f));
              for (float f : la) EXPECT(std::isfinite(f));
              if (a != b || la != lb) {
                ++differing;
                ::emollm_test::report_failure(__FILE__, __LINE__, "the lean piece changed the result: " + w);
              }
            }
        }
      }
  EXPECT(runs == 3 * 5 * 8 * 3 * 2 * 3);
  EXPECT(differing == 0);
}

// The lean piece's partials past the bound of run_decode's reused scratch (attention.cpp
// kDecodePartScratchMax, 1 MiB a calling thread; a call needing more takes a vector of its own):
// 16-token pieces at 32 / 4 heads x 64, n_kv 2100 (132 pieces x 32 heads x 66 floats, 1.06 MiB: the
// vector) and 1000 (63 pieces: the scratch), twice in turn (the scratch used again after a larger
// call): bit for bit the same call with lean off, and within 1e-5 of ref::attention.
TEST(attention_decode_lean_large_partials_same_bits) {
  if (isa_active() < Isa::Avx512) return;  // the lean piece is the AVX-512 decode driver's
  DecodeSplitScope split(true);
  DecodeInplaceScope ip(true);
  const int64_t piece_was = attention_detail::decode_piece_max();
  attention_detail::set_decode_piece_max(16);
  uint64_t seed = 19300;
  int runs = 0;
  for (int rep = 0; rep < 2; ++rep)
    for (int64_t n : {int64_t(2100), int64_t(1000)}) {
      const Case c{1, n, 32, 4, 64, true, n - 1};
      Data d = make_data(c, seed++);
      const std::string what = describe(c) + " pieces of 16, round " + std::to_string(rep);
      std::vector<float> la(32, kNaN), lb(32, kNaN), a, b;
      {
        DecodeLeanScope ls(true);
        a = run_out(d.p, what, [&](float* o) { attention(d.q, d.k, d.v, o, d.p, nullptr, la.data()); });
      }
      {
        DecodeLeanScope ls(false);
        b = run_out(d.p, what, [&](float* o) { attention(d.q, d.k, d.v, o, d.p, nullptr, lb.data()); });
      }
      const std::vector<float> ref = run_out(d.p, what, [&](float* o) { ref::attention(d.q, d.k, d.v, o, d.p); });
      EXPECT_ALL_CLOSE(a.data(), ref.data(), a.size(), 1e-5, 0.0, what);
      if (a != b || la != lb)
        ::emollm_test::report_failure(__FILE__, __LINE__, "the lean piece changed the result: " + what);
      ++runs;
    }
  attention_detail::set_decode_piece_max(piece_was);
  EXPECT(runs == 4);
}

// The K tile prototype (attention_detail::decode_k_tiles: K held in 16-token transposed tiles, the
// decode Q K^T without register transposes) keeps each score's FMAs and their order: outputs and
// log-sum-exps bit for bit those of the same call on K as token rows, f32 / f16 / bf16 caches,
// GQA 8 x 64 (the 1.1B's 32 / 4), 8 x 64 on two kv heads, MQA x 80 (a tail chunk) and 12 query heads
// a kv head x 20 (two Q K^T calls, a tail), lengths with and without a partial last tile (its lanes
// past the tokens hold NaN here: never read into a result), contiguous and paged (16 / 64
// tokens), no pool and 2 / 3 threads, the pipelined prefetch on and off. A call the prototype does
// not take (MHA, padded K rows) and the scalar reference throw instead of reading tiles as rows; so
// does n_kv_heads = 0 (the shape checks run before decode_k_tiles_applies divides by it).
TEST(attention_decode_k_tiles_same_bits) {
  if (isa_active() < Isa::Avx512) return;  // the prototype is the AVX-512 decode driver's
  ThreadPool pool2(2), pool3(3);
  DecodeSplitScope split(true);
  DecodeInplaceScope ip(true);
  struct Shape { int64_t H, Hkv, D; };
  const Shape shapes[] = {{32, 4, 64}, {16, 2, 64}, {8, 1, 80}, {12, 1, 20}};
  uint32_t x = 4242;
  auto rnd = [&]() {
    x = x * 1664525u + 1013904223u;
    return float(int32_t(x >> 8) - (1 << 23)) / float(1 << 23);
  };
  int runs = 0;
  for (DType t : {DType::F32, DType::F16, DType::BF16})
    for (const Shape& sh : shapes)
      for (int64_t n : {int64_t(1), int64_t(16), int64_t(17), int64_t(64), int64_t(129), int64_t(300)}) {
        const int64_t ld = sh.Hkv * sh.D, rows = (n + 63) / 64 * 64;  // whole tiles and 64-token pages
        const size_t esz = t == DType::F32 ? 4 : 2;
        std::vector<uint8_t> kr(size_t(rows * ld) * esz), kt(kr.size()), vr(kr.size());
        auto put = [&](std::vector<uint8_t>& b, int64_t i, float f) {
          if (t == DType::F32) std::memcpy(&b[size_t(i) * 4], &f, 4);
          else {
            const uint16_t h = t == DType::F16 ? f32_to_f16(f) : f32_to_bf16(f);
            std::memcpy(&b[size_t(i) * 2], &h, 2);
          }
        };
        for (int64_t j = 0; j < rows; ++j)
          for (int64_t e = 0; e < ld; ++e) {  // e = g * D + d
            const float kf = j < n ? rnd() : kNaN;
            put(kr, j * ld + e, kf);
            put(kt, j / 16 * 16 * ld + e * 16 + j % 16, kf);
            put(vr, j * ld + e, j < n ? rnd() : kNaN);
          }
        std::vector<float> q(size_t(sh.H * sh.D));
        for (float& f : q) f = rnd();
        AttentionParams p;
        p.n_q = 1; p.n_kv = n; p.n_heads = sh.H; p.n_kv_heads = sh.Hkv; p.head_dim = sh.D;
        p.ldq = p.ldo = sh.H * sh.D;
        p.ldk = p.ldv = ld;
        p.q_pos0 = n - 1;
        p.kv_dtype = t;
        const std::string what = "H=" + std::to_string(sh.H) + " Hkv=" + std::to_string(sh.Hkv) + " D=" +
                                 std::to_string(sh.D) + " n=" + std::to_string(n) + " kv=" + dtype_name(t);
        EXPECT(attention_detail::decode_k_tiles_applies(p));
        for (int64_t bs : {int64_t(0), int64_t(16), int64_t(64)}) {
          // pages: each its own copy of bs rows (or tiles) of the contiguous buffers
          std::vector<std::vector<uint8_t>> pages;
          std::vector<const float*> tk, tt, tv;
          if (bs)
            for (int64_t j = 0; j < rows; j += bs)
              for (auto* pr : {&kr, &kt, &vr}) {
                const size_t off = size_t(j * ld) * esz, len = size_t(bs * ld) * esz;
                pages.emplace_back(pr->begin() + std::ptrdiff_t(off), pr->begin() + std::ptrdiff_t(off + len));
                (pr == &kr ? tk : pr == &kt ? tt : tv).push_back(reinterpret_cast<const float*>(pages.back().data()));
              }
          for (bool pipe : {true, false})
            for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
              const std::string w = what + " block=" + std::to_string(bs) + " pipe=" + std::to_string(pipe) +
                                    " pool=" + std::to_string(pl ? pl->size() : 0);
              AttentionParams pa = p, pb = p;
              pa.kv_block_size = pb.kv_block_size = bs;
              if (bs) {
                pa.k_blocks = tk.data();
                pb.k_blocks = tt.data();
                pa.v_blocks = pb.v_blocks = tv.data();
              }
              const float* v = bs ? nullptr : reinterpret_cast<const float*>(vr.data());
              const bool was_pipe = attention_detail::decode_pipeline();
              attention_detail::set_decode_pipeline(pipe);
              std::vector<float> la(size_t(sh.H), kNaN), lb(size_t(sh.H), kNaN);
              DecodeLeanScope rows_lean(false);  // the reference: K rows on run_decode_piece
              const std::vector<float> a = run_out(pa, w, [&](float* o) {
                attention(q.data(), bs ? nullptr : reinterpret_cast<const float*>(kr.data()), v, o, pa, pl, la.data());
              });
              for (bool lean : {false, true}) {  // the tiles on the lean piece (decode_lean) too
                const std::vector<float> b = [&] {
                  DecodeKTilesScope tiles(true);
                  DecodeLeanScope ls(lean);
                  return run_out(pb, w, [&](float* o) {
                    attention(q.data(), bs ? nullptr : reinterpret_cast<const float*>(kt.data()), v, o, pb, pl, lb.data());
                  });
                }();
                ++runs;
                for (float f : a) EXPECT(std::isfinite(f));
                if (a != b || la != lb)
                  ::emollm_test::report_failure(__FILE__, __LINE__, "K in tiles changed the result: " + w + " lean=" + std::to_string(lean));
              }
              attention_detail::set_decode_pipeline(was_pipe);
            }
        }
      }
  EXPECT(runs == 3 * 4 * 6 * 3 * 2 * 3 * 2);
  // calls it does not take: MHA (one query head a kv head), padded K rows; and the reference
  std::vector<float> buf(size_t(64 * 256), 0.5f), out(256);
  AttentionParams m;
  m.n_q = 1; m.n_kv = 16; m.n_heads = 4; m.n_kv_heads = 4; m.head_dim = 64;
  m.ldq = m.ldo = m.ldk = m.ldv = 256;
  m.q_pos0 = 15;
  AttentionParams padded = m;
  padded.n_kv_heads = 1;
  padded.ldk = padded.ldv = 128;
  AttentionParams gqa = m;
  gqa.n_kv_heads = 1;
  gqa.ldk = gqa.ldv = 64;
  {
    DecodeKTilesScope tiles(true);
    EXPECT(!attention_detail::decode_k_tiles_applies(m) && !attention_detail::decode_k_tiles_applies(padded));
    EXPECT_THROWS(attention(buf.data(), buf.data(), buf.data(), out.data(), m, nullptr), ErrorCode::InvalidArgument);
    EXPECT_THROWS(attention(buf.data(), buf.data(), buf.data(), out.data(), padded, nullptr), ErrorCode::InvalidArgument);
    EXPECT_THROWS(ref::attention(buf.data(), buf.data(), buf.data(), out.data(), gqa), ErrorCode::InvalidArgument);
    attention(buf.data(), buf.data(), buf.data(), out.data(), gqa, nullptr);  // taken: no throw
    // The shape checks come first: n_kv_heads = 0 (ldk = 0) throws, not divides by zero in
    // decode_k_tiles_applies (n_heads / n_kv_heads).
    AttentionParams zero_kv = gqa;
    zero_kv.n_kv_heads = 0;
    zero_kv.ldk = zero_kv.ldv = 0;
    EXPECT_THROWS(attention(buf.data(), buf.data(), buf.data(), out.data(), zero_kv, nullptr), ErrorCode::InvalidArgument);
  }
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(out[size_t(i)], 0.5f, 1e-6);
}
