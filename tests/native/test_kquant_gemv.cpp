// q4_K / q5_K / q6_K decode-shaped products (M <= 8, q8_0 activations): gemv_kquant_vnni.cpp and
// the paths it sits beside (the AVX2 range kernels, also reached with VNNI disallowed, and the
// scalar level), against the float64 sum of the same products with the documented bound.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../../base/error.h"
#include "../../base/quant_formats.h"
#include "../../kernels/cpu/gemm_internal.h"
#include "../../kernels/cpu/gemv_kquant_vnni.h"
#include "../../kernels/cpu/kernels.h"
#include "kquant_test_weights.h"
#include "testing.h"

using namespace emollm;

using emollm_test::normal_floats;

// Against the float64 sum of X rounded to q8_0 (quantize_row + dequantize_row: exact f32 values)
// times the dequantised weights. The integer sub-block products are exact; each 4-element lane
// contributes one f32 product-add (its scale A * dx rounded once), the mins one per 32 elements,
// summed K/64 + K/256 + 12 deep at most (gemv_kquant_vnni.cpp's header), so per output
//   |y - y64| <= (2 K / 32 + 8) 2^-24 (sum_k |xq_k| (|w_k| + 2 |M_j(k)|) + |bias|)
// where M_j is sub-block j's min (q4_K / q5_K). The same bound holds for the other q8 paths (the
// previous range kernels at AVX2 / AVX-512, the scalar double sums), checked alongside. Odd
// shapes: N from 1 to past the thread chunks, K of 1, 3, 9 and 43 super-blocks, every M up to 8,
// an all-zero X row, a row of mixed magnitudes; bias on and off; with and without the pool.
TEST(kquant_gemv_vnni_per_block_bound) {
#if defined(__x86_64__)
  const bool have_vnni = isa_detected() >= Isa::Avx512 && cpu_features().avx512vnni;
#else
  const bool have_vnni = false;
#endif
  if (!have_vnni)
    std::printf("  skip (partly): this CPU has no AVX-512 VNNI, so gemv_kquant_vnni is not reachable; "
                "the other q8 paths are still checked\n");
  ThreadPool pool(3);
  struct Shape {
    int64_t M, N, K;
  };
  const Shape shapes[] = {{1, 1, 256}, {1, 37, 768}, {1, 300, 2304}, {2, 45, 256}, {3, 70, 768},
                          {5, 19, 512}, {8, 33, 1280}, {1, 5, 11008}, {7, 129, 256}};
  int checked_kernel = 0;
  for (DType t : {DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    for (const Shape& sh : shapes) {
      const int64_t M = sh.M, N = sh.N, K = sh.K;
      for (bool random_bytes : {false, true}) {
        const std::vector<uint8_t> w = emollm_test::kquant_weights(t, N, K, random_bytes, 200u + uint32_t(K + 7 * N + M));
        std::vector<float> X = normal_floats(size_t(M * K), 31u + uint32_t(M + K), 1.0f);
        if (M >= 3) {
          for (int64_t k = 0; k < K; ++k) X[size_t(K + k)] = 0.0f;                                  // all-zero row
          for (int64_t k = 0; k < K; ++k) X[size_t(2 * K + k)] *= (k % 64 < 32) ? 300.0f : 1e-3f;  // mixed scales
        }
        const std::vector<float> bias = normal_floats(size_t(N), 3u, 0.5f);
        const size_t rb = dtype_row_bytes(t, K);
        std::vector<float> wd(size_t(N * K)), xq(size_t(M * K));
        for (int64_t n = 0; n < N; ++n) dequantize_row(t, w.data() + size_t(n) * rb, wd.data() + n * K, K);
        std::vector<uint8_t> tmp(dtype_row_bytes(DType::Q8_0, K));
        for (int64_t m = 0; m < M; ++m) {
          quantize_row(DType::Q8_0, X.data() + m * K, tmp.data(), K);
          dequantize_row(DType::Q8_0, tmp.data(), xq.data() + m * K, K);
        }
        std::vector<double> y64(size_t(M * N)), T(size_t(M * N));
        for (int64_t n = 0; n < N; ++n) {
          std::vector<double> mins(size_t(K / 32));
          for (int64_t j = 0; j < K / 32; ++j)
            mins[size_t(j)] = emollm_test::kquant_min_magnitude(t, w.data() + size_t(n) * rb + size_t(j / 8) * dtype_block_bytes(t), int(j % 8));
          for (int64_t m = 0; m < M; ++m) {
            double s = 0, a = 0;
            for (int64_t k = 0; k < K; ++k) {
              const double x = xq[size_t(m * K + k)], wk = wd[size_t(n * K + k)];
              s += x * wk;
              a += std::fabs(x) * (std::fabs(wk) + 2 * mins[size_t(k / 32)]);
            }
            y64[size_t(m * N + n)] = s;
            T[size_t(m * N + n)] = a;
          }
        }
        const double gamma = double(2 * K / 32 + 8) * std::ldexp(1.0, -24);
        std::vector<float> y(size_t(M * N));
        for (bool with_bias : {true, false}) {
          const float* b = with_bias ? bias.data() : nullptr;
          for (int lvl = 0; lvl <= int(isa_detected()); ++lvl) {
            IsaCapScope cap{Isa(lvl)};
            for (bool vnni : {true, false}) {
                gemm_detail::set_vnni_allowed(vnni);
                for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
                  std::fill(y.begin(), y.end(), NAN);
                  gemm(X.data(), K, w.data(), t, b, y.data(), N, M, N, K, p);
                  const bool kernel = have_vnni && Isa(lvl) >= Isa::Avx512 && vnni;
                  if (kernel) ++checked_kernel;
                  const std::string what = std::string(dtype_name(t)) + " M=" + std::to_string(M) + " N=" +
                                           std::to_string(N) + " K=" + std::to_string(K) +
                                           (random_bytes ? " random-bytes" : " quantised") + " isa=" +
                                           isa_name(Isa(lvl)) + (vnni ? " vnni" : "") + (p ? " pool" : "") +
                                           (with_bias ? " bias" : "") + (kernel ? " [gemv_kquant_vnni]" : "");
                  int bad = 0;
                  for (int64_t i = 0; i < M * N && bad < 3; ++i) {
                    const double bi = with_bias ? double(bias[size_t(i % N)]) : 0.0;
                    const double want = y64[size_t(i)] + bi;
                    const double bound = gamma * (T[size_t(i)] + std::fabs(bi));
                    const double err = std::fabs(double(y[size_t(i)]) - want);
                    if (!(err <= bound)) {  // NaN fails too
                      ++bad;
                      emollm_test::report_failure(__FILE__, __LINE__,
                                                  what + ": element " + std::to_string(i) + ": " +
                                                      std::to_string(y[size_t(i)]) + " vs float64 " +
                                                      std::to_string(want) + ", error " + std::to_string(err) +
                                                      " > bound " + std::to_string(bound));
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
  if (have_vnni) EXPECT(checked_kernel > 0);
}

// The bound above is tight enough to catch a wrong scale or code: one flipped code bit in one
// super-block moves the result by far more than the bound (a check that the test can fail).
TEST(kquant_gemv_vnni_detects_a_changed_code) {
  const int64_t N = 3, K = 512;
  for (DType t : {DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    std::vector<uint8_t> w = emollm_test::kquant_weights(t, N, K, false, 77u);
    const std::vector<float> x = normal_floats(size_t(K), 5u, 1.0f);
    std::vector<float> y0(static_cast<size_t>(N)), y1(static_cast<size_t>(N));
    gemm(x.data(), K, w.data(), t, nullptr, y0.data(), N, 1, N, K, nullptr);
    // a code byte of row 1, second super-block (q4_K: qs; q5_K: qs; q6_K: ql)
    const size_t off = dtype_row_bytes(t, K) + dtype_block_bytes(t) + (t == DType::Q6_K ? 5 : t == DType::Q5_K ? 53 : 21);
    w[off] ^= 0x04;
    gemm(x.data(), K, w.data(), t, nullptr, y1.data(), N, 1, N, K, nullptr);
    EXPECT(y0[0] == y1[0] && y0[2] == y1[2]);
    EXPECT(std::fabs(double(y0[1]) - double(y1[1])) > 1e-6);
  }
}
