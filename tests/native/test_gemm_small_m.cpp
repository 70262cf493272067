// Tests of the batched-decode GEMM path (kernels/cpu/gemm_small_m.cpp): BF16 / F16 weights with
// kSmallMMin <= M <= kSmallMMax rows, through the public emollm::gemm.
//
// References and tolerances, per output y[m,n] with S = sum_k |x[m,k] w[n,k]| + |bias[n]|:
//   - f32-FMA kernels (F16 at every M of the range, BF16 at M < bf16_dot_min_m() (8 by default) or
//     with the small-M path off, BF16 without AVX512-BF16):
//     weights widen exactly to f32, products and sums in f32, so against ref::gemm (double
//     accumulation) |y - ref| <= 1e-5 * S / sqrt(K) + 1e-6 (the f32 tolerance of test_gemm.cpp).
//   - vdpbf16ps kernels (BF16, M >= bf16_dot_min_m(), AVX512-BF16): X is rounded to bf16 (nearest even), the
//     products of bf16 values are exact in f32, so against ref::gemm on X pre-rounded to bf16 the
//     same f32 tolerance holds; against the f32 X, 2^-8 * S more (bf16 rounding, 2^-9 per element).
//   - The previous paths (set_small_m_enabled(false)) meet the same bounds on the same problems.
//   - A row's result does not depend on the other rows of the batch: row m of an M-row call equals
//     (bitwise) the same row computed in a call with other rows beside it, for every M the path
//     takes (kSmallMMin..kSmallMMax = 9..64). This keeps a sequence's logits independent of the
//     batch it is decoded in, within that range.
//   - The range edges: M = 2..8 and 65+ run the previous kernels (bounds above still hold).
// X row padding holds NaN (a read past K would show), Y padding a sentinel that must survive.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../../base/arena.h"
#include "../../kernels/cpu/gemm_internal.h"
#include "../../kernels/cpu/kernels.h"
#include "testing.h"

using namespace emollm;

namespace {

constexpr float kSentinel = -12345.0f;

std::vector<float> rand_vec(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

struct SmallMScope {
  explicit SmallMScope(bool on) : prev_(gemm_detail::small_m_enabled()) { gemm_detail::set_small_m_enabled(on); }
  ~SmallMScope() { gemm_detail::set_small_m_enabled(prev_); }
  bool prev_;
};

struct Case {
  DType t;
  int64_t M, N, K, ldx, ldy;
  std::vector<uint8_t> W;
  std::vector<float> Wd;    // dequantised
  std::vector<float> X;     // M x ldx, padding NaN
  std::vector<float> Xr;    // X rounded to bf16 (padding NaN)
  std::vector<float> bias;
};

Case make_case(DType t, int64_t M, int64_t N, int64_t K, int64_t xpad, int64_t ypad, uint32_t seed) {
  Case c{t, M, N, K, K + xpad, N + ypad, {}, {}, {}, {}, rand_vec(size_t(N), seed + 5)};
  const size_t rb = dtype_row_bytes(t, K);
  const std::vector<float> w = rand_vec(size_t(N * K), seed);
  c.W.assign(rb * size_t(N), 0);
  c.Wd.resize(size_t(N * K));
  for (int64_t n = 0; n < N; ++n) {
    quantize_row(t, w.data() + n * K, c.W.data() + n * rb, K);
    dequantize_row(t, c.W.data() + n * rb, c.Wd.data() + n * K, K);
  }
  const std::vector<float> x = rand_vec(size_t(M * K), seed + 3);
  c.X.assign(size_t(M * c.ldx), NAN);
  c.Xr = c.X;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k) {
      c.X[m * c.ldx + k] = x[m * K + k];
      c.Xr[m * c.ldx + k] = bf16_to_f32(f32_to_bf16(x[m * K + k]));
    }
  return c;
}

// (M <= 8: from bf16_dot_min_m() up, with the small-M path on)
bool uses_bf16_dot(const Case& c, bool small_m_on) {
  const bool rounded = c.M > gemm_detail::kSmallM || (small_m_on && c.M >= gemm_detail::bf16_dot_min_m());
  return c.t == DType::BF16 && rounded && cpu_features().avx512bf16 && isa_active() >= Isa::Avx512;
}

struct Bf16DotMinScope {
  explicit Bf16DotMinScope(int m) : prev_(gemm_detail::bf16_dot_min_m()) { gemm_detail::set_bf16_dot_min_m(m); }
  ~Bf16DotMinScope() { gemm_detail::set_bf16_dot_min_m(prev_); }
  int prev_;
};

// |Y - R| <= 1e-5 * S / sqrt(K) + 1e-6 + rel * S; Y padding untouched.
bool check(const std::vector<float>& Y, const std::vector<float>& R, const Case& c, const std::vector<float>& X,
           const float* bias, double rel, const std::string& what) {
  for (int64_t m = 0; m < c.M; ++m)
    for (int64_t n = 0; n < c.ldy; ++n) {
      const float y = Y[m * c.ldy + n];
      if (n >= c.N) {
        if (!(y == kSentinel)) {
          emollm_test::report_failure(__FILE__, __LINE__, what + ": Y padding overwritten");
          return false;
        }
        continue;
      }
      double S = bias ? std::fabs(double(bias[n])) : 0.0;
      for (int64_t k = 0; k < c.K; ++k) S += std::fabs(double(X[m * c.ldx + k]) * c.Wd[n * c.K + k]);
      const double tol = 1e-5 * S / std::sqrt(double(c.K)) + 1e-6 + rel * S;
      const double d = std::fabs(double(y) - double(R[m * c.ldy + n]));
      if (!(d <= tol)) {
        char buf[320];
        std::snprintf(buf, sizeof buf, "%s: m=%lld n=%lld got %.8g want %.8g |diff| %.3g > tol %.3g", what.c_str(),
                      (long long)m, (long long)n, double(y), double(R[m * c.ldy + n]), d, tol);
        emollm_test::report_failure(__FILE__, __LINE__, buf);
        return false;
      }
    }
  return true;
}

void run(const Case& c, ThreadPool* pool) {
  for (int use_bias = 0; use_bias < 2; ++use_bias) {
    const float* bias = use_bias ? c.bias.data() : nullptr;
    std::vector<float> R(size_t(c.M * c.ldy), kSentinel), Rr(size_t(c.M * c.ldy), kSentinel);
    ref::gemm(c.X.data(), c.ldx, c.W.data(), c.t, bias, R.data(), c.ldy, c.M, c.N, c.K);
    ref::gemm(c.Xr.data(), c.ldx, c.W.data(), c.t, bias, Rr.data(), c.ldy, c.M, c.N, c.K);
    for (int enabled = 0; enabled < 2; ++enabled) {
      SmallMScope sm(enabled != 0);
      for (int use_pool = 0; use_pool < 2; ++use_pool) {
        std::vector<float> Y(size_t(c.M * c.ldy), kSentinel);
        gemm(c.X.data(), c.ldx, c.W.data(), c.t, bias, Y.data(), c.ldy, c.M, c.N, c.K, use_pool ? pool : nullptr);
        const std::string what = std::string(dtype_name(c.t)) + " small_m=" + std::to_string(enabled) +
                                 " M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" +
                                 std::to_string(c.K) + " ldx=" + std::to_string(c.ldx) + " ldy=" + std::to_string(c.ldy) +
                                 " bias=" + std::to_string(use_bias) + " pool=" + std::to_string(use_pool);
        if (uses_bf16_dot(c, enabled != 0)) {  // both paths use bf16 hardware at M > 8 (see gemm_avx512.cpp)
          check(Y, Rr, c, c.Xr, bias, 0.0, what + " [vs rounded-x ref]");
          check(Y, R, c, c.X, bias, 1.0 / 256, what + " [vs f32 ref]");
        } else {
          check(Y, R, c, c.X, bias, 0.0, what);
        }
      }
    }
  }
}

}  // namespace

TEST(gemm_small_m_shapes) {
  ThreadPool pool(2);
  uint32_t seed = 1;
  for (DType t : {DType::BF16, DType::F16})
    for (int64_t M : {2, 5, 8, 9, 10, 12, 13, 16, 44, 64, 65})
      for (int64_t K : {1, 15, 32, 33, 100})
        for (int64_t N : {1, 3, 4, 9}) run(make_case(t, M, N, K, (M + K) % 3, N % 2, seed++), &pool);
}

TEST(gemm_small_m_long_rows_many_columns) {
  ThreadPool pool(2);
  for (DType t : {DType::BF16, DType::F16})
    for (int64_t M : {11, 44}) run(make_case(t, M, 203, 1031, 1, 3, uint32_t(M * 7 + int(t))), &pool);
  // K = 3001: a block of 6 rows of X no longer fits the kernel's L1 budget (kXBlockBytes), so
  // F16 takes the weight-group-outer loop order (K = 1031 above: the X-block-outer one) and BF16
  // splits K into two blocks (2048 + 953, the partial sums of the first kept between them); all
  // must meet the bounds
  for (DType t : {DType::BF16, DType::F16})
    for (int64_t M : {9, 13}) run(make_case(t, M, 41, 3001, 2, 1, uint32_t(M * 5 + int(t))), &pool);
}

// BF16 with K over several of the kernel's K blocks (kBf16KBlock = 2048 columns; K = 4129: three
// blocks, the last 33 columns, one of them masked), odd N (groups of 4 plus single rows), bias,
// with and without the pool, at every ISA level the dispatch has below the detected one (the
// levels below AVX-512 run the previous kernels, which meet the same bounds: uses_bf16_dot).
TEST(gemm_small_m_bf16_k_blocks_every_isa) {
  ThreadPool pool(2);
  for (Isa cap : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (cap > isa_detected()) {
      std::printf("  skip gemm_small_m_bf16_k_blocks_every_isa at %s: not detected on this CPU\n", isa_name(cap));
      continue;
    }
    IsaCapScope scope(cap);
    for (int64_t M : {9, 16, 23, 64}) run(make_case(DType::BF16, M, 19, 4129, 1, 1, uint32_t(M * 3 + int(cap))), &pool);
  }
}

// A row's result is independent of the rest of the batch (bitwise, for every M the path takes).
TEST(gemm_small_m_rows_independent_of_batch) {
  if (isa_detected() < Isa::Avx512) {
    std::printf("  skip gemm_small_m_rows_independent_of_batch: no AVX-512 (the small-M kernels need it)\n");
    return;
  }
  ThreadPool pool(2);
  const int64_t N = 37, Mmax = 64;
  // K = 333: one K block; K = 2085: BF16 splits K in two (kBf16KBlock), F16 the group-outer order
  for (int64_t K : {333, 2085})
  for (DType t : {DType::BF16, DType::F16}) {
    const Case c = make_case(t, Mmax, N, K, 0, 0, 77 + uint32_t(t) + uint32_t(K));
    std::vector<float> full(size_t(Mmax * N));
    gemm(c.X.data(), K, c.W.data(), t, c.bias.data(), full.data(), N, Mmax, N, K, &pool);
    for (int64_t M : {9, 10, 16, 17, 44, 63, 64}) {
      for (int64_t m0 : {int64_t(0), int64_t(1), Mmax - M}) {
        if (m0 + M > Mmax) continue;
        std::vector<float> y(size_t(M * N));
        gemm(c.X.data() + m0 * K, K, c.W.data(), t, c.bias.data(), y.data(), N, M, N, K, &pool);
        const bool same = std::memcmp(y.data(), full.data() + m0 * N, y.size() * 4) == 0;
        if (!same)
          emollm_test::report_failure(__FILE__, __LINE__,
                                      std::string(dtype_name(t)) + " K=" + std::to_string(K) + ": rows " +
                                          std::to_string(m0) + ".." +
                                          std::to_string(m0 + M - 1) + " computed with M=" + std::to_string(M) +
                                          " differ from the same rows in the batch of 64");
      }
    }
  }
}

// The path turns off (previous kernels) and back on; types it does not take are unaffected.
TEST(gemm_small_m_switch_and_other_types) {
  // on from the start (no environment variable turns it off)
  EXPECT(gemm_detail::small_m_enabled());
  {
    SmallMScope flip(false);
    EXPECT(!gemm_detail::small_m_enabled());
  }
  EXPECT(gemm_detail::small_m_enabled());
  ThreadPool pool(2);
  // F32 and quantised weights are not taken by the small-M path: the usual checks still hold.
  // Quantised weights at M > 8 otherwise quantise X to q8_0 on VNNI CPUs (gemm_q8_vnni.cpp, its own
  // tolerances in test_gemm.cpp); f32 activations keep this check exact against the f32 reference.
  QuantActivationsScope f32act(QuantActivations::F32);
  for (DType t : {DType::F32, DType::Q8_0}) {
    Case c = make_case(t, 16, 21, 64, 0, 0, 5);
    std::vector<float> R(size_t(c.M * c.ldy)), Y(size_t(c.M * c.ldy));
    ref::gemm(c.X.data(), c.ldx, c.W.data(), t, nullptr, R.data(), c.ldy, c.M, c.N, c.K);
    gemm(c.X.data(), c.ldx, c.W.data(), t, nullptr, Y.data(), c.ldy, c.M, c.N, c.K, &pool);
    check(Y, R, c, c.X, nullptr, 0.0, std::string(dtype_name(t)) + " M=16 (not a small-M type)");
  }
}

// ---------------------------------------------------------------- BF16 on pre-packed panels
// gemm_bf16_panels at M <= kSmallMMax (gemm_bf16_panels_small_m: the panels streamed in K chunks
// of 256 pairs, every 6-row panel of X over each chunk). References and tolerance as the vdpbf16ps
// kernel above: against ref::gemm (double accumulation) on X pre-rounded to bf16, the f32 bound;
// against the f32 X, 2^-8 * S more. Every M of the range (1..64: full and short row panels), N
// edges (1, a panel less / plus one row, two panels cut), K edges (1, a half pair, one chunk
// exactly, one pair past it, several chunks with an odd tail), Y row padding kept. Bitwise: a row
// alone (M = 1) equals that row in every batch, with and without the pool; the multi-output call
// equals the single ones; the switch back to the packed GEMM's blocking meets the same bounds.
namespace {
struct PanelsSmallMScope {
  explicit PanelsSmallMScope(bool on) : prev_(gemm_detail::small_m_panels_enabled()) {
    gemm_detail::set_small_m_panels_enabled(on);
  }
  ~PanelsSmallMScope() { gemm_detail::set_small_m_panels_enabled(prev_); }
  bool prev_;
};

AlignedPtr<uint8_t> panels_of(const Case& c, ThreadPool* pool) {
  AlignedPtr<uint8_t> pan = make_aligned<uint8_t>(bf16_panels_bytes(c.N, c.K));
  bf16_pack_panels(c.W.data(), c.N, c.K, pan.get(), pool);
  return pan;
}

void run_panels(const Case& c, ThreadPool* pool, const std::string& tag) {
  const AlignedPtr<uint8_t> pan = panels_of(c, pool);
  for (int use_bias = 0; use_bias < 2; ++use_bias) {
    const float* bias = use_bias ? c.bias.data() : nullptr;
    std::vector<float> R(size_t(c.M * c.ldy), kSentinel), Rr(size_t(c.M * c.ldy), kSentinel);
    ref::gemm(c.X.data(), c.ldx, c.W.data(), c.t, bias, R.data(), c.ldy, c.M, c.N, c.K);
    ref::gemm(c.Xr.data(), c.ldx, c.W.data(), c.t, bias, Rr.data(), c.ldy, c.M, c.N, c.K);
    for (int chunked = 0; chunked < 2; ++chunked) {
      PanelsSmallMScope sw(chunked != 0);
      std::vector<float> Y(size_t(c.M * c.ldy), kSentinel);
      gemm_bf16_panels(c.X.data(), c.ldx, pan.get(), bias, Y.data(), c.ldy, c.M, c.N, c.K, pool);
      const std::string what = tag + " panels chunked=" + std::to_string(chunked) + " M=" + std::to_string(c.M) +
                               " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K) +
                               " bias=" + std::to_string(use_bias);
      check(Y, Rr, c, c.Xr, bias, 0.0, what + " [vs rounded-x ref]");
      check(Y, R, c, c.X, bias, 1.0 / 256, what + " [vs f32 ref]");
    }
  }
}
}  // namespace

TEST(gemm_bf16_panels_small_m_vs_f64_ref) {
  if (!bf16_panels_usable()) {
    std::printf("  skip gemm_bf16_panels_small_m_vs_f64_ref: no AVX512-BF16 at the AVX-512 ISA level\n");
    return;
  }
  ThreadPool pool(2);
  uint32_t seed = 300;
  // every M of the range; K = 515: 258 pairs, one chunk and 2 pairs, the last a half pair
  for (int64_t M = 1; M <= gemm_detail::kSmallMMax; ++M)
    run_panels(make_case(DType::BF16, M, 130, 515, M % 3, (M + 1) % 2, seed++), M % 2 ? &pool : nullptr, "every M");
  for (int64_t M : {1, 7, 16})
    for (int64_t N : {1, 63, 64, 65})
      for (int64_t K : {1, 2, 5, 512, 514, 1031})
        run_panels(make_case(DType::BF16, M, N, K, 1, 2, seed++), &pool, "edges");
}

TEST(gemm_bf16_panels_small_m_rows_independent) {
  if (!bf16_panels_usable()) {
    std::printf("  skip gemm_bf16_panels_small_m_rows_independent: no AVX512-BF16 at the AVX-512 ISA level\n");
    return;
  }
  ThreadPool pool(2);
  const int64_t Mmax = gemm_detail::kSmallMMax;
  for (int64_t K : {333, 1201}) {
    const int64_t N = 150;
    const Case c = make_case(DType::BF16, Mmax, N, K, 0, 0, 91 + uint32_t(K));
    const AlignedPtr<uint8_t> pan = panels_of(c, &pool);
    std::vector<float> full(size_t(Mmax * N));
    gemm_bf16_panels(c.X.data(), K, pan.get(), c.bias.data(), full.data(), N, Mmax, N, K, &pool);
    for (int64_t M : {1, 2, 6, 9, 16, 17, 44, 64})
      for (int64_t m0 : {int64_t(0), int64_t(5), Mmax - M}) {
        if (m0 + M > Mmax) continue;
        for (ThreadPool* pl : {static_cast<ThreadPool*>(nullptr), &pool}) {
          std::vector<float> y(size_t(M * N));
          gemm_bf16_panels(c.X.data() + m0 * K, K, pan.get(), c.bias.data(), y.data(), N, M, N, K, pl);
          if (std::memcmp(y.data(), full.data() + m0 * N, y.size() * 4) != 0)
            emollm_test::report_failure(__FILE__, __LINE__,
                                        "panels K=" + std::to_string(K) + ": rows " + std::to_string(m0) + ".." +
                                            std::to_string(m0 + M - 1) + " with M=" + std::to_string(M) +
                                            (pl ? " (pool)" : " (no pool)") + " differ from the batch of 64");
        }
      }
  }
  // multi-output (q/k/v, gate/up on panels): each output the bits of its single call
  const int64_t M = 16, K = 600;
  const int64_t Ns[3] = {65, 1, 130};
  std::vector<Case> cs;
  std::vector<AlignedPtr<uint8_t>> pans;
  for (int j = 0; j < 3; ++j) {
    cs.push_back(make_case(DType::BF16, M, Ns[j], K, 0, 3, 500 + uint32_t(j)));
    pans.push_back(panels_of(cs.back(), &pool));
  }
  std::vector<std::vector<float>> Ym(3), Ys(3);
  PanelOutput po[3];
  for (int j = 0; j < 3; ++j) {
    Ym[j].assign(size_t(M * cs[j].ldy), kSentinel);
    Ys[j] = Ym[j];
    po[j] = PanelOutput{pans[j].get(), j == 1 ? nullptr : cs[j].bias.data(), Ym[j].data(), cs[j].ldy, Ns[j]};
    gemm_bf16_panels(cs[0].X.data(), K, pans[j].get(), po[j].bias, Ys[j].data(), cs[j].ldy, M, Ns[j], K, &pool);
  }
  gemm_bf16_panels_multi(cs[0].X.data(), K, po, 3, M, K, &pool);
  for (int j = 0; j < 3; ++j)
    EXPECT(std::memcmp(Ym[j].data(), Ys[j].data(), Ym[j].size() * 4) == 0);
}

// M = 1 on panels: 4 panels walked side by side (panels_m1_streams) against the same x as both rows
// of an M = 2 call (one panel at a time, panel_chunk<2>: row m's result is the same bits at any M)
// and within the bound of the f64 reference: the same bits, whatever the panel count (1..10 panels: none,
// some or all in stream groups of 4, the last one short), K (1, a half pair, one chunk of 256 pairs
// exactly, one pair past it, several chunks with an odd tail), bias, pool (none, 2, 3 threads:
// groups split between threads), and for multi-output calls whose outputs' panels share a group.
TEST(gemm_bf16_panels_m1_streams_bit_equal) {
  if (!bf16_panels_usable()) {
    std::printf("  skip gemm_bf16_panels_m1_streams_bit_equal: no AVX512-BF16 at the AVX-512 ISA level\n");
    return;
  }
  ThreadPool pool2(2), pool3(3);
  ThreadPool* pools[] = {nullptr, &pool2, &pool3};
  uint32_t seed = 7100;
  // run(Y, M, X, ld): M rows of X (ldx K) into Y with row stride ld; M = 1 against both rows of M = 2
  auto both = [&](const std::function<void(std::vector<float>&, int64_t, const float*, int64_t)>& run, const float* x,
                  int64_t K, size_t n, const std::string& what) {
    std::vector<float> Ys(n, kSentinel), Y2(2 * n, kSentinel), X2(size_t(2 * K));
    std::memcpy(X2.data(), x, size_t(K) * 4);
    std::memcpy(X2.data() + K, x, size_t(K) * 4);
    run(Ys, 1, x, int64_t(n));
    run(Y2, 2, X2.data(), int64_t(n));
    if (std::memcmp(Ys.data(), Y2.data(), n * 4) != 0 || std::memcmp(Ys.data(), Y2.data() + n, n * 4) != 0)
      emollm_test::report_failure(__FILE__, __LINE__, what + ": M = 1's streams differ from the rows of M = 2");
  };
  for (int64_t N : {1, 64, 65, 200, 256, 257, 520, 640})
    for (int64_t K : {1, 2, 511, 512, 513, 1100}) {
      const Case c = make_case(DType::BF16, 1, N, K, 0, 1, seed++);
      const AlignedPtr<uint8_t> pan = panels_of(c, &pool2);
      for (int use_bias = 0; use_bias < 2; ++use_bias)
        for (ThreadPool* pl : pools) {
          const float* bias = use_bias ? c.bias.data() : nullptr;
          const std::string what = "M=1 N=" + std::to_string(N) + " K=" + std::to_string(K) + " bias=" +
                                   std::to_string(use_bias) + " threads=" + std::to_string(pl ? pl->size() : 1);
          both([&](std::vector<float>& Y, int64_t M, const float* X, int64_t ld) {
            gemm_bf16_panels(X, K, pan.get(), bias, Y.data(), ld, M, N, K, pl);
          }, c.X.data(), K, size_t(c.ldy), what);
          // and within the bounds of the f64 reference on bf16-rounded x (the streams path is the default)
          std::vector<float> Y(size_t(c.ldy), kSentinel), Rr(size_t(c.ldy), kSentinel);
          gemm_bf16_panels(c.X.data(), c.ldx, pan.get(), bias, Y.data(), c.ldy, 1, N, K, pl);
          ref::gemm(c.Xr.data(), c.ldx, c.W.data(), c.t, bias, Rr.data(), c.ldy, 1, N, K);
          check(Y, Rr, c, c.Xr, bias, 0.0, what + " [vs rounded-x ref]");
        }
    }
  // multi-output at M = 1: 65 / 1 / 130 / 300 rows = 2 + 1 + 3 + 5 panels, groups across outputs
  const int64_t K = 777;
  const int64_t Ns[4] = {65, 1, 130, 300};
  std::vector<Case> cs;
  std::vector<AlignedPtr<uint8_t>> pans;
  for (int j = 0; j < 4; ++j) {
    cs.push_back(make_case(DType::BF16, 1, Ns[j], K, 0, 0, 7300 + uint32_t(j)));
    pans.push_back(panels_of(cs.back(), &pool2));
  }
  size_t total = 0, off[5] = {0};
  for (int j = 0; j < 4; ++j) off[j + 1] = total += size_t(Ns[j]);
  for (ThreadPool* pl : pools)
    both([&](std::vector<float>& Y, int64_t M, const float* X, int64_t ld) {
      PanelOutput po[4];
      for (int j = 0; j < 4; ++j)
        po[j] = PanelOutput{pans[size_t(j)].get(), j == 1 ? nullptr : cs[size_t(j)].bias.data(), Y.data() + off[j], ld, Ns[j]};
      gemm_bf16_panels_multi(X, K, po, 4, M, K, pl);
    }, cs[0].X.data(), K, total, "M=1 multi-output threads=" + std::to_string(pl ? pl->size() : 1));
}

namespace {
struct OnePassScope {
  explicit OnePassScope(bool on) : prev_(gemm_detail::small_m_onepass()) { gemm_detail::set_small_m_onepass(on); }
  ~OnePassScope() { gemm_detail::set_small_m_onepass(prev_); }
  bool prev_;
};
bool bf16_dot_usable() { return cpu_features().avx512bf16 && isa_active() >= Isa::Avx512; }
// ---------------------------------------------------------------- switch sweeps
// A switch of the batched paths that must not change the bits (set / get, the name in failures).
struct Switch {
  void (*set)(bool);
  bool (*get)();
  const char* name;
};

// The reference a sweep checks against (ref::gemm, f64 sums): the exact X (f32-FMA kernels), X
// rounded to bf16 (vdpbf16ps kernels), or the rounded X only where the vdpbf16ps kernels run under
// the ISA cap (bf16_dot_usable()); each within the f32 bound (check, rel = 0).
enum class Ref { Exact, Rounded, RoundedWhereBf16Dot };

// What one sweep runs of a case: each (bias, ISA cap, pool) its filters keep is one comparison.
// Null filters keep everything; a null isa_ok runs the active ISA without a cap; a null via_gemm
// calls gemm_huge_pages (else gemm() where it says so).
struct SweepPlan {
  Ref ref = Ref::Exact;
  bool check_off = false;  // also the switched-off result against the reference
  std::function<bool(const Case&, bool bias)> bias_ok;
  std::function<bool(const Case&, Isa)> isa_ok;
  std::function<bool(const Case&, bool bias, const ThreadPool*)> pool_ok;
  std::function<bool(const Case&)> via_gemm;
  bool off_via_gemm = false;  // the "off" call is plain gemm() (4 KiB pages), whatever via_gemm says
};

// One case with the switch on and off (in that order, then left as found): the same bits both
// ways, and within the bound of the plan's reference. Returns the number of comparisons.
int expect_switch_same_bits(const Case& c, const Switch& sw, const SweepPlan& plan, ThreadPool* const* pools,
                            int n_pools) {
  std::vector<Isa> isas;
  if (plan.isa_ok)
    for (int i = 0; i <= int(isa_detected()); ++i)
      if (plan.isa_ok(c, Isa(i))) isas.push_back(Isa(i));
  const bool prev = sw.get();
  int compared = 0;
  for (int use_bias = 0; use_bias < 2; ++use_bias) {
    if (plan.bias_ok && !plan.bias_ok(c, use_bias != 0)) continue;
    const float* bias = use_bias ? c.bias.data() : nullptr;
    std::vector<float> R(size_t(c.M * c.ldy), kSentinel);
    const bool rounded = plan.ref != Ref::Exact;
    ref::gemm(rounded ? c.Xr.data() : c.X.data(), c.ldx, c.W.data(), c.t, bias, R.data(), c.ldy, c.M, c.N, c.K);
    const bool via_gemm = plan.via_gemm && plan.via_gemm(c);
    auto run_isa = [&](const char* isa) {
      for (int i = 0; i < n_pools; ++i) {
        ThreadPool* pl = pools[i];
        if (plan.pool_ok && !plan.pool_ok(c, use_bias != 0, pl)) continue;
        const std::string what = std::string(dtype_name(c.t)) + " M=" + std::to_string(c.M) + " N=" +
                                 std::to_string(c.N) + " K=" + std::to_string(c.K) + " bias=" +
                                 std::to_string(use_bias) + " isa=" + isa + " threads=" +
                                 std::to_string(pl ? pl->size() : 1) + (via_gemm ? " gemm()" : " huge pages");
        std::vector<float> Y(size_t(c.M * c.ldy), kSentinel), Y0(size_t(c.M * c.ldy), kSentinel);
        auto call = [&](float* y, bool on) {
          if (via_gemm || (!on && plan.off_via_gemm))
            gemm(c.X.data(), c.ldx, c.W.data(), c.t, bias, y, c.ldy, c.M, c.N, c.K, pl);
          else
            gemm_huge_pages(c.X.data(), c.ldx, c.W.data(), c.t, bias, y, c.ldy, c.M, c.N, c.K, pl);
        };
        sw.set(true);
        call(Y.data(), true);
        sw.set(false);
        call(Y0.data(), false);
        sw.set(prev);
        if (std::memcmp(Y.data(), Y0.data(), Y.size() * sizeof(float)) != 0)
          emollm_test::report_failure(__FILE__, __LINE__, what + ": " + sw.name + " changed the bits");
        const char* ref_name = rounded ? " [vs rounded-x ref]" : " [vs f64 ref]";
        if (plan.ref != Ref::RoundedWhereBf16Dot || bf16_dot_usable()) check(Y, R, c, rounded ? c.Xr : c.X, bias, 0.0, what + ref_name);
        if (plan.check_off) check(Y0, R, c, rounded ? c.Xr : c.X, bias, 0.0, what + " [previous]" + ref_name);
        ++compared;
      }
    };
    if (!plan.isa_ok) {
      run_isa(isa_name(isa_active()));
      continue;
    }
    for (Isa isa : isas) {
      IsaCapScope cap(isa);
      run_isa(isa_name(isa));
    }
  }
  return compared;
}

// A blocking switch (where K blocks end, partial sums kept exactly between them): with the bias,
// on the active ISA, against the rounded-X reference.
SweepPlan blocking_plan() {
  SweepPlan plan;
  plan.ref = Ref::Rounded;
  plan.bias_ok = [](const Case&, bool bias) { return bias; };
  return plan;
}
}  // namespace

// Batched decode on huge pages (gemm_huge_pages, 2 <= M <= kSmallM, BF16 / F16): the multi-stream
// dot kernels (gemm_avx512.cpp dot_streams) keep each output's accumulators, k order, tail and
// reduction of the plain dot kernels, so they must give the bits of plain gemm() on the same
// weights (4 KiB pages: the plain dot kernels), and stay within the f32 bound of the f64 reference: every M of the
// range (both arithmetic forms: 32-element steps at M <= 4, with 2 accumulators at M <= 2; 16-element
// steps at M 5..8, 3 streams at M 7..8), N below / at / past multiples of the stream count (rows
// left over) and a long split (N = 1001), K over every tail of both step sizes, padded X / Y rows,
// with and without bias, without a pool and on 2 and 3 threads, at every ISA cap (below AVX-512 both
// calls take the same kernels).
TEST(gemm_huge_pages_small_m_streams_bit_equal) {
  Bf16DotMinScope exact(int(gemm_detail::kSmallMMin));  // BF16 at M <= 8 on the exact-X dot kernels
  ThreadPool pool2(2), pool3(3);
  ThreadPool* pools[] = {nullptr, &pool2, &pool3};
  SweepPlan plan;  // exact X; short rows: the top ISA and AVX2 only, 3 threads with a bias only
  plan.isa_ok = [](const Case& c, Isa isa) { return c.K >= 2000 || isa == isa_detected() || isa == Isa::Avx2; };
  plan.pool_ok = [&](const Case& c, bool bias, const ThreadPool* pl) { return bias || pl != &pool3 || c.K >= 2000; };
  plan.off_via_gemm = true;  // "off": plain gemm(), the plain dot kernels
  const Switch sw{[](bool) {}, [] { return true; }, "huge pages' streams (vs gemm() on 4 KiB pages)"};
  uint32_t seed = 8100;
  int compared = 0;
  for (DType t : {DType::BF16, DType::F16})
    for (int64_t M = 2; M <= gemm_detail::kSmallM; ++M)
      for (int64_t K : {1, 15, 17, 31, 33, 64, 100, 2061})
        for (int64_t N : {1, 3, 5, 12, 13, 70})
          compared += expect_switch_same_bits(make_case(t, M, K == 2061 && N == 70 ? 1001 : N, K, 3, 2, seed++), sw, plan,
                                              pools, 3);
  EXPECT(compared == 7392);  // the count of the sweep this replaced
}

// ---------------------------------------------------------------- BF16 one pass (9 <= M <= 16)

// The one-pass vdpbf16ps kernel (gemm_small_m.cpp onepass_bf16, default at 9 <= M <= 16) keeps
// bf16_block's register blocks, accumulators, k order, K % 32 tail and reduction (reduce4 over
// aligned groups of 4 weight rows, the rest one by one, then the bias), only the loop order and
// the K blocks (p.kblock = 16 KiB of X: 512 columns at M = 16, 896 at M = 9, partial sums kept
// exactly between blocks) differ: it must give run_range_bf16's bits (set_small_m_onepass(false)).
// Every M of its range, N with single rows left over (1, 3, 5, 37) and a long split (203), K
// tails (1, 31, 33), one to five K blocks (768 and 769: two at M = 16; 1400: two at M = 9; 2085:
// five at M = 16), padded X / Y, bias or not, 1-3 threads, every ISA cap (below AVX-512 neither
// path runs: the switch must change nothing); and the bound of the rounded-X reference.
TEST(gemm_small_m_onepass_bit_equal) {
  ThreadPool pool2(2), pool3(3);
  ThreadPool* pools[] = {nullptr, &pool2, &pool3};
  SweepPlan plan;  // the rounded-X bound where vdpbf16ps runs; AVX2 at K = 769 only; 3 threads at K 33 / 2085 with a bias
  plan.ref = Ref::RoundedWhereBf16Dot;
  plan.isa_ok = [](const Case& c, Isa isa) { return isa == isa_detected() || (isa == Isa::Avx2 && c.K == 769); };
  plan.pool_ok = [&](const Case& c, bool bias, const ThreadPool* pl) {
    return pl != &pool3 || (bias && (c.K == 33 || c.K == 2085));
  };
  const Switch sw{gemm_detail::set_small_m_onepass, gemm_detail::small_m_onepass, "one pass"};
  uint32_t seed = 9100;
  int compared = 0;
  for (int64_t M = gemm_detail::kSmallMMin; M <= 16; ++M)
    for (int64_t K : {1, 31, 33, 100, 768, 769, 1400, 2085})
      for (int64_t N : {1, 3, 5, 37, 203}) {
        if (N == 203 && K > 800) continue;
        compared += expect_switch_same_bits(make_case(DType::BF16, M, N, K, (M + K) % 3, N % 3, seed++), sw, plan, pools, 3);
      }
  EXPECT(compared == 1448);  // the count of the sweep this replaced
}

// Rounded X below M = 9 (set_bf16_dot_min_m / EMOLLM_BF16_DOT_MIN_M; 8 by default): BF16 at
// min <= M <= 8 takes streams_bf16 (vdpbf16ps). Stated bound, per output with
// S = sum_k |x w| + |bias|: against ref::gemm (f64 sums) on X pre-rounded to bf16 (nearest even),
// the f32 bound 1e-5 S / sqrt(K) + 1e-6 (bf16 x bf16 products are exact in f32); against the f32
// X, 2^-8 S more (each x rounds by <= 2^-9 relative). The rows must really take the new path (some
// outputs differ from the exact-X kernels' bits), M below the threshold must keep the exact
// kernels' bits, and a row's result must not depend on the rows beside it for min <= M <= 64 (so a
// sequence's logits are the same in any batch of that range). EMOLLM_BF16_DOT_MIN_M=0: 9 (exact).
TEST(gemm_small_m_bf16_dot_min_m_within_bound) {
  if (std::getenv("EMOLLM_BF16_DOT_MIN_M") == nullptr) EXPECT(gemm_detail::bf16_dot_min_m() == 8);
  {
    Bf16DotMinScope bad(1);  // out of range: 9
    EXPECT(gemm_detail::bf16_dot_min_m() == gemm_detail::kSmallMMin);
  }
  if (!bf16_dot_usable()) {
    std::printf("  skip gemm_small_m_bf16_dot_min_m_within_bound: no AVX512-BF16\n");
    return;
  }
  ThreadPool pool2(2), pool3(3);
  ThreadPool* pools[] = {nullptr, &pool2, &pool3};
  uint32_t seed = 9500;
  int differ = 0, compared = 0;
  for (int min_m : {2, 5, 8})
    for (int64_t M = 2; M <= gemm_detail::kSmallM; ++M)
      for (int64_t K : {1, 33, 100, 2085})
        for (int64_t N : {3, 37}) {
          const Case c = make_case(DType::BF16, M, N, K, 1, 2, seed++);
          const float* bias = (M + K) % 2 ? c.bias.data() : nullptr;
          std::vector<float> R(size_t(c.M * c.ldy), kSentinel), Rr(size_t(c.M * c.ldy), kSentinel);
          ref::gemm(c.X.data(), c.ldx, c.W.data(), c.t, bias, R.data(), c.ldy, c.M, c.N, c.K);
          ref::gemm(c.Xr.data(), c.ldx, c.W.data(), c.t, bias, Rr.data(), c.ldy, c.M, c.N, c.K);
          std::vector<float> Ye(size_t(c.M * c.ldy), kSentinel);
          {
            Bf16DotMinScope exact(int(gemm_detail::kSmallMMin));
            gemm_huge_pages(c.X.data(), c.ldx, c.W.data(), DType::BF16, bias, Ye.data(), c.ldy, c.M, c.N, c.K, &pool2);
          }
          for (ThreadPool* pl : pools) {
            const std::string what = "min_m=" + std::to_string(min_m) + " M=" + std::to_string(M) + " N=" +
                                     std::to_string(N) + " K=" + std::to_string(K) +
                                     " threads=" + std::to_string(pl ? pl->size() : 1);
            std::vector<float> Y(size_t(c.M * c.ldy), kSentinel);
            {
              Bf16DotMinScope on(min_m);
              gemm_huge_pages(c.X.data(), c.ldx, c.W.data(), DType::BF16, bias, Y.data(), c.ldy, c.M, c.N, c.K, pl);
            }
            ++compared;
            if (M < min_m) {
              if (std::memcmp(Y.data(), Ye.data(), Y.size() * sizeof(float)) != 0)
                emollm_test::report_failure(__FILE__, __LINE__, what + ": below the threshold, not the exact kernels' bits");
              continue;
            }
            check(Y, Rr, c, c.Xr, bias, 0.0, what + " [vs rounded-x ref]");
            check(Y, R, c, c.X, bias, 1.0 / 256, what + " [vs f32 ref]");
            if (std::memcmp(Y.data(), Ye.data(), Y.size() * sizeof(float)) != 0) ++differ;
          }
        }
  EXPECT(compared > 400);
  EXPECT(differ > 100);  // the rounded-X path really ran
  // rows independent of the batch, min_m = 2: every M of 2..64 against the batch of 64
  Bf16DotMinScope on(2);
  const int64_t N = 37, Mmax = 64;
  for (int64_t K : {333, 2085}) {
    const Case c = make_case(DType::BF16, Mmax, N, K, 0, 0, 9900 + uint32_t(K));
    std::vector<float> full(size_t(Mmax * N));
    gemm_huge_pages(c.X.data(), K, c.W.data(), DType::BF16, c.bias.data(), full.data(), N, Mmax, N, K, &pool2);
    for (int64_t M : {2, 3, 5, 8, 9, 16, 17, 63}) {
      for (int64_t m0 : {int64_t(0), int64_t(1), Mmax - M}) {
        std::vector<float> y(size_t(M * N));
        gemm_huge_pages(c.X.data() + m0 * K, K, c.W.data(), DType::BF16, c.bias.data(), y.data(), N, M, N, K, &pool3);
        if (std::memcmp(y.data(), full.data() + m0 * N, y.size() * 4) != 0)
          emollm_test::report_failure(__FILE__, __LINE__,
                                      "K=" + std::to_string(K) + ": rows " + std::to_string(m0) + ".." +
                                          std::to_string(m0 + M - 1) + " with M=" + std::to_string(M) +
                                          " differ from the same rows in the batch of 64");
      }
    }
  }
}

// streams_bf16 (BF16 on vdpbf16ps at bf16_dot_min_m() <= M <= 8, rounded X) over whole rows, X's
// K block up to 256 KiB in L2 (default), against its previous K blocks of 32 KiB of X
// (set_small_m_streams_whole_k(false)): K blocks only change when a row's partial sums wait in
// memory (stored exactly), so the same bits; both within the rounded-X bound of ref::gemm. Shapes
// where the old limit splits K and the new one does not (M = 8: K > 2048; M = 3: K > 5461), where
// both split (M = 8, K = 17000: two blocks of 256 KiB), K tails, ragged N, bias, 1-3 threads, M 2..8
// (below 8 by set_bf16_dot_min_m(2)).
TEST(gemm_small_m_streams_whole_k_bit_equal) {
  if (!bf16_dot_usable()) {
    std::printf("  skip gemm_small_m_streams_whole_k_bit_equal: no AVX512-BF16\n");
    return;
  }
  const int prev_min = gemm_detail::bf16_dot_min_m();
  gemm_detail::set_bf16_dot_min_m(2);
  ThreadPool pool2(2), pool3(3);
  ThreadPool* pools[] = {nullptr, &pool2, &pool3};
  uint32_t seed = 9800;
  int compared = 0;
  for (int64_t M : {2, 3, 5, 8})
    for (int64_t K : {2085, 5632, 6001, 17000})
      for (int64_t N : {37, 130}) {
        if (K == 17000 && (M != 8 || N != 37)) continue;
        const Case c = make_case(DType::BF16, M, N, K, K % 3, N % 3, seed++);
        compared += expect_switch_same_bits(
            c, {gemm_detail::set_small_m_streams_whole_k, gemm_detail::small_m_streams_whole_k, "whole-K streams"},
            blocking_plan(), pools, 3);
      }
  gemm_detail::set_bf16_dot_min_m(prev_min);
  EXPECT(compared == (4 * 3 * 2 + 1) * 3);
}

// ---------------------------------------------------------------- F16 groups, next prefetched (9 <= M <= 16)
// groups_f16 (default for F16 at 9 <= M <= 64 on AVX-512) runs run_range<KF16>'s group order and
// fma_block with prefetches of the next group added: it must give run_range<KF16>'s bits
// (set_small_m_f16_groups(false)) whatever the shape, the split or the order of the x_outer /
// group loops the previous path picks (K <= 1365 at M 9..16: x_outer), and both must be within the
// f32 bound of ref::gemm (f16 -> f32 is exact, X exact). Every M of 8..17 (and 24, 33, 64: 4, 6 and
// 11 row blocks, a pass prefetching 1 row or none), N with single rows
// left over (1, 3, 5, 37) and a long split (203), K tails (1, 15, 17, 33), K on both sides of the
// loop-order limit (1400, 2085, 5632), padded X (NaN there) / Y (a sentinel that must survive),
// bias or not, 1-3 threads, gemm and gemm_huge_pages, every ISA cap (below AVX-512 neither path
// runs: the switch must change nothing). M = 8 and 65 must not take it (their bits do not move
// with the switch; checked against the bound).
TEST(gemm_small_m_f16_groups_bit_equal) {
  ThreadPool pool2(2), pool3(3);
  ThreadPool* pools[] = {nullptr, &pool2, &pool3};
  SweepPlan plan;  // exact X, both paths checked; AVX2 at K = 257 only; 3 threads at K 33 / 2085 with a bias
  plan.check_off = true;
  plan.isa_ok = [](const Case& c, Isa isa) { return isa == isa_detected() || (isa == Isa::Avx2 && c.K == 257); };
  plan.pool_ok = [&](const Case& c, bool bias, const ThreadPool* pl) {
    return pl != &pool3 || (bias && (c.K == 33 || c.K == 2085));
  };
  plan.via_gemm = [](const Case& c) { return (c.K + c.N) % 2 != 0; };  // else gemm_huge_pages
  const Switch sw{gemm_detail::set_small_m_f16_groups, gemm_detail::small_m_f16_groups, "groups_f16"};
  uint32_t seed = 10100;
  int compared = 0;
  for (int64_t M : {8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 24, 33, 64, 65})
    for (int64_t K : {1, 15, 17, 33, 100, 256, 257, 1400, 2085, 5632})
      for (int64_t N : {1, 3, 5, 37, 203}) {
        if (N == 203 && K > 300) continue;
        if (K == 5632 && N != 37) continue;
        if ((M == 8 || M > 17) && N != 37) continue;
        compared += expect_switch_same_bits(make_case(DType::F16, M, N, K, (M + K) % 3, N % 3, seed++), sw, plan, pools, 3);
      }
  EXPECT(compared == 2075);  // the count of the sweep this replaced
}
