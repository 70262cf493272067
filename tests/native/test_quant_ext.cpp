// q4_1, q5_0, q5_1, q4_K, q5_K, q6_K: parity with ggml and the GEMM/GEMV kernels.
//  - tests/fixtures/ggml_quants (made by ggml's own ggml-quants.c, see its README): our
//    quantize_row equals ggml's quantize_row_*_ref byte for byte, and dequantize_row equals
//    ggml's dequantize_row_* bit for bit, on ggml-quantised inputs and on random block bytes.
//  - Blocks built by hand from the documented layouts, decoded with the formulas written out here.
//  - gemm at every ISA level this CPU has (VNNI on and off), q8 and f32 activations, against
//    ref::gemm with the dequantised weights (and, for q8, the q8_0-rounded activations).
//  - The q4_K / q5_K / q6_K prefill GEMM on VNNI (gemm_kquant_vnni.cpp) against a float64 sum
//    with its documented per-block error bound, at odd shapes, with and without pool and bias.
#include <cmath>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "../../kernels/cpu/gemm_internal.h"
#include "../../kernels/cpu/gemm_kquant_vnni.h"
#include "../../kernels/cpu/kernels.h"
#include "../../base/error.h"
#include "../../base/quant_formats.h"
#include "kquant_test_weights.h"
#include "testing.h"

using namespace emollm;

namespace {

const DType kExtTypes[] = {DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4_K, DType::Q5_K, DType::Q6_K};
bool is_kquant(DType t) { return t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K; }

std::string fixture_dir() {
  std::string f = __FILE__;
  size_t slash = f.find_last_of('/');
  std::string d = (slash == std::string::npos ? std::string(".") : f.substr(0, slash)) + "/../fixtures/ggml_quants";
  if (!std::ifstream(d + "/README.md")) d = "tests/fixtures/ggml_quants";
  return d;
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
std::vector<float> read_f32(const std::string& path) {
  std::vector<uint8_t> b = read_bytes(path);
  std::vector<float> v(b.size() / 4);
  if (!v.empty()) std::memcpy(v.data(), b.data(), v.size() * 4);
  return v;
}

// Bit-exact comparison (NaN-free inputs); reports the first mismatch.
void expect_same_bits(const float* a, const float* b, size_t n, const std::string& what) {
  for (size_t i = 0; i < n; ++i)
    if (std::memcmp(&a[i], &b[i], 4) != 0) {
      emollm_test::report_failure(__FILE__, __LINE__,
                                  what + ": element " + std::to_string(i) + ": " + std::to_string(a[i]) + " vs " +
                                      std::to_string(b[i]));
      return;
    }
}

using emollm_test::normal_floats;

}  // namespace

TEST(quant_ext_ggml_fixture_parity) {
  const std::string dir = fixture_dir();
  const std::vector<float> x = read_f32(dir + "/input.f32");
  EXPECT(x.size() == 2048);  // the fixture is committed: missing means a broken checkout
  if (x.size() != 2048) return;
  for (DType t : kExtTypes) {
    const std::string name = dtype_name(t);
    const int64_t n = int64_t(x.size());
    // quantisation: byte-exact with quantize_row_*_ref
    const std::vector<uint8_t> gq = read_bytes(dir + "/" + name + ".quant.bin");
    EXPECT(gq.size() == dtype_row_bytes(t, n));
    std::vector<uint8_t> q(dtype_row_bytes(t, n));
    quantize_row(t, x.data(), q.data(), n);
    size_t first = q.size();
    for (size_t i = 0; i < q.size() && i < gq.size(); ++i)
      if (q[i] != gq[i]) { first = i; break; }
    if (first != q.size())
      emollm_test::report_failure(__FILE__, __LINE__, name + ": quantize_row differs from ggml at byte " +
                                                          std::to_string(first) + " (block " +
                                                          std::to_string(first / dtype_block_bytes(t)) + ")");
    // dequantisation of ggml's bytes and of random blocks: bit-exact with dequantize_row_*
    for (const char* kind : {"quant", "random"}) {
      const std::vector<uint8_t> b = read_bytes(dir + "/" + name + "." + kind + ".bin");
      const std::vector<float> ref = read_f32(dir + "/" + name + "." + kind + ".deq.f32");
      EXPECT(b.size() == dtype_row_bytes(t, n) && ref.size() == size_t(n));
      if (ref.size() != size_t(n)) continue;
      std::vector<float> y(static_cast<size_t>(n));
      dequantize_row(t, b.data(), y.data(), n);
      expect_same_bits(y.data(), ref.data(), size_t(n), name + " " + kind + " dequantize_row vs ggml");
#if defined(__x86_64__)
      if (isa_detected() >= Isa::Avx2) {  // the f32 GEMM path's vector dequantiser
        std::fill(y.begin(), y.end(), NAN);
        gemm_detail::dequantize_row_ext_avx2(t, b.data(), y.data(), n);
        expect_same_bits(y.data(), ref.data(), size_t(n), name + " " + kind + " dequantize_row_ext_avx2 vs ggml");
      }
#endif
    }
  }
}

// Blocks assembled byte by byte from the layouts in quant_formats.h; expected values from the
// format definitions, written independently of quant_formats.cpp.
TEST(quant_ext_blocks_by_hand) {
  const uint16_t one = 0x3C00, half = 0x3800, quarter = 0x3400;  // fp16 1.0, 0.5, 0.25
  std::vector<float> y(256);
  {  // q4_1: d = 0.5, m = -1; codes 0..15, 15..0
    uint8_t b[20] = {};
    std::memcpy(b, &half, 2);
    const uint16_t m1 = 0xBC00;  // -1.0
    std::memcpy(b + 2, &m1, 2);
    for (int j = 0; j < 16; ++j) b[4 + j] = uint8_t(j | ((15 - j) << 4));
    dequantize_row(DType::Q4_1, b, y.data(), 32);
    for (int j = 0; j < 16; ++j) {
      EXPECT_NEAR(y[j], 0.5 * j - 1.0, 0);
      EXPECT_NEAR(y[16 + j], 0.5 * (15 - j) - 1.0, 0);
    }
  }
  {  // q5_0: d = 0.25; element i has code i (bit 4 from qh bit i): value 0.25 * (i - 16)
    uint8_t b[22] = {};
    std::memcpy(b, &quarter, 2);
    uint32_t qh = 0;
    for (int i = 0; i < 32; ++i) if (i & 16) qh |= 1u << i;
    std::memcpy(b + 2, &qh, 4);
    for (int j = 0; j < 16; ++j) b[6 + j] = uint8_t((j & 15) | (((j + 16) & 15) << 4));
    dequantize_row(DType::Q5_0, b, y.data(), 32);
    for (int i = 0; i < 32; ++i) EXPECT_NEAR(y[i], 0.25 * (i - 16), 0);
  }
  {  // q5_1: d = 1, m = 0.5; element i has code 31 - i
    uint8_t b[24] = {};
    std::memcpy(b, &one, 2);
    std::memcpy(b + 2, &half, 2);
    uint32_t qh = 0;
    for (int i = 0; i < 32; ++i) if ((31 - i) & 16) qh |= 1u << i;
    std::memcpy(b + 4, &qh, 4);
    for (int j = 0; j < 16; ++j) b[8 + j] = uint8_t(((31 - j) & 15) | (((31 - (j + 16)) & 15) << 4));
    dequantize_row(DType::Q5_1, b, y.data(), 32);
    for (int i = 0; i < 32; ++i) EXPECT_NEAR(y[i], (31 - i) + 0.5, 0);
  }
  // q4_K / q5_K: d = 1, dmin = 0.5; sub-block j: scale j + 1 (6 bits; j >= 4 uses the high
  // bits), min 2 * j + 3; element e of sub-block j has code (e + j) % 16 (+16 for q5_K when e odd).
  for (bool five : {false, true}) {
    std::vector<uint8_t> b(five ? 176 : 144, 0);
    std::memcpy(b.data(), &one, 2);
    std::memcpy(b.data() + 2, &half, 2);
    uint8_t* sc = b.data() + 4;
    for (int j = 0; j < 8; ++j) {
      const int s = j + 1 + (j >= 4 ? 40 : 0), m = 2 * j + 3 + (j >= 4 ? 32 : 0);  // some scales > 15 need 6 bits
      if (j < 4) {
        sc[j] = uint8_t(s);
        sc[j + 4] = uint8_t(m);
      } else {
        sc[j + 4] = uint8_t((s & 0xF) | ((m & 0xF) << 4));
        sc[j - 4] = uint8_t(sc[j - 4] | ((s >> 4) << 6));
        sc[j] = uint8_t(sc[j] | ((m >> 4) << 6));
      }
    }
    uint8_t* qh = b.data() + 16;
    uint8_t* qs = b.data() + (five ? 48 : 16);
    for (int j = 0; j < 8; ++j)
      for (int e = 0; e < 32; ++e) {
        const int code = (e + j) % 16 + (five && (e & 1) ? 16 : 0);
        const int c = j / 2;  // 64-element chunk; even j: low nibbles, odd j: high nibbles
        if (j % 2 == 0) qs[32 * c + e] = uint8_t(qs[32 * c + e] | (code & 15));
        else qs[32 * c + e] = uint8_t(qs[32 * c + e] | ((code & 15) << 4));
        if (five && code >= 16) qh[e] = uint8_t(qh[e] | (1 << j));
      }
    const DType t = five ? DType::Q5_K : DType::Q4_K;
    dequantize_row(t, b.data(), y.data(), 256);
    for (int j = 0; j < 8; ++j) {
      const int s = j + 1 + (j >= 4 ? 40 : 0), m = 2 * j + 3 + (j >= 4 ? 32 : 0);
      for (int e = 0; e < 32; ++e) {
        const int code = (e + j) % 16 + (five && (e & 1) ? 16 : 0);
        EXPECT_NEAR(y[32 * j + e], double(s) * code - 0.5 * m, 1e-6);
      }
    }
  }
  {  // q6_K: d = 0.25, scales[h] = 3 * h - 20; element e has code (7 * e) % 64
    std::vector<uint8_t> b(210, 0);
    for (int h = 0; h < 16; ++h) b[192 + h] = uint8_t(int8_t(3 * h - 20));
    std::memcpy(b.data() + 208, &quarter, 2);
    uint8_t* ql = b.data();
    uint8_t* qh = b.data() + 128;
    for (int e = 0; e < 256; ++e) {
      const int code = (7 * e) % 64;
      const int n = e / 128, r = e % 128, l = r % 32, part = r / 32;  // part 0..3
      // part 0: ql[l] low, 1: ql[l+32] low, 2: ql[l] high, 3: ql[l+32] high; qh[l] bits 2*part
      uint8_t& L = ql[64 * n + l + (part & 1) * 32];
      L = uint8_t(L | ((code & 15) << (part >= 2 ? 4 : 0)));
      qh[32 * n + l] = uint8_t(qh[32 * n + l] | ((code >> 4) << (2 * part)));
    }
    dequantize_row(DType::Q6_K, b.data(), y.data(), 256);
    for (int e = 0; e < 256; ++e) EXPECT_NEAR(y[e], 0.25 * (3 * (e / 16) - 20) * ((7 * e) % 64 - 32), 1e-6);
  }
}

TEST(quant_ext_gemm_all_paths) {
  ThreadPool pool(3);
  for (DType t : kExtTypes) {
    const int64_t be = dtype_block_elems(t);
    for (int64_t K : {be * 2, be * 3, int64_t(512), int64_t(1024) + be}) {  // odd block counts: the vector tails
      const int64_t N = 37;
      std::vector<float> wf = normal_floats(size_t(N * K), 11u + uint32_t(K), 0.05f);
      for (int64_t i = 0; i < K; ++i) wf[size_t(3 * K + i)] = 0.0f;  // an all-zero row
      std::vector<uint8_t> w(size_t(N) * dtype_row_bytes(t, K));
      for (int64_t n = 0; n < N; ++n)
        quantize_row(t, wf.data() + n * K, w.data() + size_t(n) * dtype_row_bytes(t, K), K);
      const std::vector<float> bias = normal_floats(size_t(N), 5u, 0.1f);
      for (int64_t M : {1, 2, 3, 5, 8, 9, 20, 67}) {
        std::vector<float> X = normal_floats(size_t(M * K), 7u + uint32_t(M), 1.0f);
        // q8 reference input: X rounded to q8_0 (what the Q8 mode computes with)
        std::vector<float> Xq(X.size());
        std::vector<uint8_t> tmp(dtype_row_bytes(DType::Q8_0, K));
        for (int64_t m = 0; m < M; ++m) {
          quantize_row(DType::Q8_0, X.data() + m * K, tmp.data(), K);
          dequantize_row(DType::Q8_0, tmp.data(), Xq.data() + m * K, K);
        }
        std::vector<float> ref_f(size_t(M * N)), ref_q(size_t(M * N)), y(size_t(M * N));
        ref::gemm(X.data(), K, w.data(), t, bias.data(), ref_f.data(), N, M, N, K);
        ref::gemm(Xq.data(), K, w.data(), t, bias.data(), ref_q.data(), N, M, N, K);
        // tolerance: f32 accumulation of K products of size ~|x||w|
        const double atol = 2e-5 * std::sqrt(double(K));
        for (int lvl = 0; lvl <= int(isa_detected()); ++lvl) {
          IsaCapScope cap{Isa(lvl)};
          for (bool vnni : {true, false}) {
            gemm_detail::set_vnni_allowed(vnni);
            for (QuantActivations mode : {QuantActivations::Q8, QuantActivations::F32}) {
              QuantActivationsScope qa(mode);
              for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
                std::fill(y.begin(), y.end(), NAN);
                gemm(X.data(), K, w.data(), t, bias.data(), y.data(), N, M, N, K, p);
                // M > 8: q4_K / q5_K / q6_K on VNNI take the int8 prefill GEMM (q8 activations)
                const bool kvnni = is_kquant(t) && M > 8 && Isa(lvl) >= Isa::Avx512 && vnni &&
                                   cpu_features().avx512vnni;
                const bool q8 = mode == QuantActivations::Q8 && (M <= 8 || kvnni);
                const std::string what = std::string(dtype_name(t)) + " K=" + std::to_string(K) + " M=" +
                                         std::to_string(M) + " isa=" + isa_name(Isa(lvl)) + (vnni ? " vnni" : "") +
                                         (q8 ? " q8" : " f32") + (p ? " pool" : "");
                EXPECT_ALL_CLOSE(y.data(), (q8 ? ref_q : ref_f).data(), M * N, atol, 1e-5, what);
              }
            }
          }
          gemm_detail::set_vnni_allowed(true);
        }
      }
    }
  }
}

// The int8 prefill GEMM for q4_K / q5_K / q6_K (gemm_kquant_vnni.cpp) against the float64 sum of
// the same products: X rounded to q8_0 (quantize_row + dequantize_row, exact f32 values) times the
// dequantised weights. Bound per output (gemm_kquant_vnni.cpp's header): the integer block dot
// products are exact, each block contributes at most two f32 terms, so
//   |y - y64| <= (2 * K / 32 + 8) * 2^-24 * (sum_k |xq_k| (|w_k| + 2 |M_j(k)|) + |bias|)
// (the +8 covers the scale products, the weights' own f32 rounding and the bias). Every ISA level
// the dispatch can choose, VNNI and the kernel on and off: where the kernel is not taken, the f32
// path is checked against the f32 reference (and would fail this bound, which is far below the
// q8_0 rounding of X).
TEST(quant_ext_kquant_vnni_per_block_bound) {
#if defined(__x86_64__)
  if (!(isa_detected() >= Isa::Avx512 && cpu_features().avx512vnni))
    std::printf("  skip (partly): this CPU has no AVX-512 VNNI, so gemm_kquant_packed_vnni is not reachable; "
                "the f32 paths are still checked\n");
#endif
  ThreadPool pool(3);
  struct Shape { int64_t M, N, K; };
  // odd M (not a multiple of the 6-row panels), N not a multiple of 32 and above the 512-row L2
  // block, K with 1, 3, 5 (two 4-super-block k blocks) and 9 super-blocks
  const Shape shapes[] = {{9, 37, 256}, {13, 70, 768}, {67, 37, 1280}, {20, 600, 512}, {31, 45, 2304}};
  int checked_vnni = 0;
  for (DType t : {DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    for (const Shape& sh : shapes) {
      const int64_t M = sh.M, N = sh.N, K = sh.K;
      for (bool random_bytes : {false, true}) {
        const std::vector<uint8_t> w = emollm_test::kquant_weights(t, N, K, random_bytes, 100u + uint32_t(K + N));
        std::vector<float> X = normal_floats(size_t(M * K), 9u + uint32_t(M), 1.0f);
        for (int64_t k = 0; k < K; ++k) X[size_t(2 * K + k)] = 0.0f;             // an all-zero row
        for (int64_t k = 0; k < K; ++k) X[size_t(3 * K + k)] *= (k % 64 < 32) ? 300.0f : 1e-3f;  // mixed scales
        const std::vector<float> bias = normal_floats(size_t(N), 3u, 0.5f);
        // float64 reference and bound
        const size_t rb = dtype_row_bytes(t, K);
        std::vector<float> wd(size_t(N * K)), xq(size_t(M * K));
        for (int64_t n = 0; n < N; ++n) dequantize_row(t, w.data() + size_t(n) * rb, wd.data() + n * K, K);
        std::vector<uint8_t> tmp(dtype_row_bytes(DType::Q8_0, K));
        for (int64_t m = 0; m < M; ++m) {
          quantize_row(DType::Q8_0, X.data() + m * K, tmp.data(), K);
          dequantize_row(DType::Q8_0, tmp.data(), xq.data() + m * K, K);
        }
        std::vector<double> y64(size_t(M * N)), bound(size_t(M * N)), bound_f(size_t(M * N));
        const double gamma = double(2 * K / 32 + 8) * std::ldexp(1.0, -24);
        for (int64_t n = 0; n < N; ++n) {
          std::vector<double> mins(size_t(K / 32));
          for (int64_t j = 0; j < K / 32; ++j)
            mins[size_t(j)] = emollm_test::kquant_min_magnitude(t, w.data() + size_t(n) * rb + size_t(j / 8) * dtype_block_bytes(t), int(j % 8));
          for (int64_t m = 0; m < M; ++m) {
            double s = 0, T = 0, Tf = 0;
            for (int64_t k = 0; k < K; ++k) {
              const double x = xq[size_t(m * K + k)], wk = wd[size_t(n * K + k)];
              s += x * wk;
              T += std::fabs(x) * (std::fabs(wk) + 2 * mins[size_t(k / 32)]);
              Tf += std::fabs(double(X[size_t(m * K + k)]) * wk);
            }
            y64[size_t(m * N + n)] = s;
            bound[size_t(m * N + n)] = gamma * (T + std::fabs(double(bias[size_t(n)])));
            // the f32 paths (unrounded X): f32 sums of K products
            bound_f[size_t(m * N + n)] = double(K + 8) * std::ldexp(1.0, -24) * (Tf + std::fabs(double(bias[size_t(n)])));
          }
        }
        std::vector<float> ref_f(size_t(M * N)), y(size_t(M * N));
        for (bool with_bias : {true, false}) {
          const float* b = with_bias ? bias.data() : nullptr;
          ref::gemm(X.data(), K, w.data(), t, b, ref_f.data(), N, M, N, K);
          for (int lvl = 0; lvl <= int(isa_detected()); ++lvl) {
            IsaCapScope cap{Isa(lvl)};
            for (bool vnni : {true, false}) {  // false: the dequantise-to-f32 path (CPUs without VNNI)
                gemm_detail::set_vnni_allowed(vnni);
                for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
                  std::fill(y.begin(), y.end(), NAN);
                  gemm(X.data(), K, w.data(), t, b, y.data(), N, M, N, K, p);
                  const bool kernel = Isa(lvl) >= Isa::Avx512 && vnni && cpu_features().avx512vnni;
                  const std::string what = std::string(dtype_name(t)) + " M=" + std::to_string(M) + " N=" +
                                           std::to_string(N) + " K=" + std::to_string(K) +
                                           (random_bytes ? " random-bytes" : " quantised") + " isa=" +
                                           isa_name(Isa(lvl)) + (vnni ? " vnni" : "") + (p ? " pool" : "") +
                                           (with_bias ? " bias" : "");
                  if (kernel) ++checked_vnni;
                  int bad = 0;
                  for (int64_t i = 0; i < M * N && bad < 3; ++i) {
                    // the kernel: the float64 q8 sum and its bound; else the f32 product (ref::gemm, double)
                    const double want =
                        kernel ? y64[size_t(i)] + (with_bias ? double(bias[size_t(i % N)]) : 0.0) : double(ref_f[size_t(i)]);
                    const double err = std::fabs(double(y[size_t(i)]) - want);
                    if (!(err <= (kernel ? bound : bound_f)[size_t(i)])) {  // NaN fails too
                      ++bad;
                      emollm_test::report_failure(__FILE__, __LINE__,
                                                  what + (kernel ? "" : " (f32 path)") + ": element " + std::to_string(i) + ": " +
                                                      std::to_string(y[size_t(i)]) + " vs float64 " + std::to_string(want) +
                                                      ", error " + std::to_string(err) + " > bound " +
                                                      std::to_string(bound[size_t(i)]));
                    }
                  }
                }
              }
          }
          gemm_detail::set_vnni_allowed(true);
        }
      }
    }
  }
#if defined(__x86_64__)
  if (isa_detected() >= Isa::Avx512 && cpu_features().avx512vnni) EXPECT(checked_vnni > 0);
#endif
}

TEST(quant_ext_gemm_rejects_partial_superblocks) {
  std::vector<float> x(128, 1.0f), y(1);
  std::vector<uint8_t> w(4096);
  EXPECT_THROWS(gemm(x.data(), 128, w.data(), DType::Q4_K, nullptr, y.data(), 1, 1, 1, 128, nullptr),
                ErrorCode::InvalidArgument);
  std::vector<uint8_t> q(1000);
  EXPECT_THROWS(quantize_row(DType::Q6_K, x.data(), q.data(), 128), ErrorCode::InvalidArgument);
}

TEST(quant_ext_names_and_sizes) {
  const struct { DType t; const char* name; int64_t be; size_t bb; } rows[] = {
      {DType::Q4_1, "q4_1", 32, 20},  {DType::Q5_0, "q5_0", 32, 22},  {DType::Q5_1, "q5_1", 32, 24},
      {DType::Q4_K, "q4_K", 256, 144}, {DType::Q5_K, "q5_K", 256, 176}, {DType::Q6_K, "q6_K", 256, 210}};
  for (const auto& r : rows) {
    EXPECT(std::string(dtype_name(r.t)) == r.name);
    DType back;
    EXPECT(dtype_from_name(r.name, &back) && back == r.t);
    EXPECT(dtype_block_elems(r.t) == r.be);
    EXPECT(dtype_block_bytes(r.t) == r.bb);
    EXPECT(dtype_is_quantized(r.t));
  }
}
