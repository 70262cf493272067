// F32 weights at M = 1 in huge pages (gemm_huge_pages, gemv_huge_pages_multi: what the CPU backend
// runs on its 2 MiB-page copies of f32 decoder matrices) take the stream kernels (gemm_avx512.cpp
// gemv_stream / gemv_streams with f32_stream_step; default on, gemm_internal.h set_gemv_stream_f32).
// Their f32 rows are meant to be dot_block<F32, R, 1>'s FMAs in its order (two accumulators: the
// first / second 16 of every 32 weights, one masked step at the end, s0 + s1 reduced, + bias), so
// every output must equal, bit for bit, what plain gemm() gives (4 KiB pages: always dot_block) and
// what gemm_huge_pages gives with the switch off, whatever the rows left over after the streams, prefetch hint, schedule,
// thread count or fusion. Also within the worst-case f32 summation bound of a double-precision
// reference (K * 2^-24 * sum |x w| per output, plus the bias's rounding), which holds for any
// summation order: it catches a dropped or doubled chunk that would still be deterministic.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "base/cpu_features.h"
#include "base/dtype.h"
#include "base/thread_pool.h"
#include "../../kernels/cpu/gemm_internal.h"
#include "../../kernels/cpu/kernels.h"
#include "testing.h"

using namespace emollm;

namespace {

constexpr float kSentinel = -12345.0f;

// Uniform values in [-1, 1) scaled by 2^e for e in [-6, 6] per element: a wide spread of
// magnitudes, so that another summation order changes low bits in most outputs.
std::vector<float> spread(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::uniform_int_distribution<int> e(-6, 6);
  std::vector<float> v(n);
  for (auto& x : v) x = std::ldexp(d(g), e(g));
  return v;
}

struct SwitchScope {  // set_gemv_stream_f32(on) for a scope, the previous value restored
  explicit SwitchScope(bool on) : prev_(gemm_detail::gemv_stream_f32()) { gemm_detail::set_gemv_stream_f32(on); }
  ~SwitchScope() { gemm_detail::set_gemv_stream_f32(prev_); }
  bool prev_;
};

// Bits of got against want (first difference reported); |got - ref| within the f32 bound.
int compare(const std::vector<float>& got, const std::vector<float>& want, const float* x, const float* W,
            const float* bias, int64_t N, int64_t K, const std::string& what) {
  int bad = 0;
  for (int64_t n = 0; n < N; ++n) {
    if (std::memcmp(&got[size_t(n)], &want[size_t(n)], sizeof(float)) != 0) {
      if (bad++ == 0)
        emollm_test::report_failure(__FILE__, __LINE__,
                                    what + ": y[" + std::to_string(n) + "] = " + std::to_string(got[size_t(n)]) +
                                        ", previous path " + std::to_string(want[size_t(n)]));
    }
    double s = 0, a = 0;
    for (int64_t k = 0; k < K; ++k) {
      const double p = double(x[k]) * double(W[n * K + k]);
      s += p;
      a += std::fabs(p);
    }
    const double b = bias ? double(bias[n]) : 0.0;
    const double bound = double(K + 1) * std::ldexp(1.0, -24) * (a + std::fabs(b)) + 1e-30;
    if (!(std::fabs(double(got[size_t(n)]) - (s + b)) <= bound)) {
      if (bad++ == 0)
        emollm_test::report_failure(__FILE__, __LINE__,
                                    what + ": y[" + std::to_string(n) + "] off the double reference by more than " +
                                        std::to_string(bound));
    }
  }
  return bad;
}

}  // namespace

// gemm_huge_pages at M = 1 on F32: the stream kernels (4 streams, rows left over one at a time; T0 / NTA / no
// prefetch; no pool, 2 and 3 threads, both schedules) give plain gemm()'s bits and those of the
// switch off, with and without bias; K over every tail of the 32-weight step (1..65, 100) and the
// model shapes (2048, 2061, 5632); N below, at and past multiples of the 4 streams and a 1001-row
// split. Asserts the comparisons ran (a skipped loop would pass silently otherwise).
TEST(gemv_f32_stream_same_bits_as_dot_block) {
  if (isa_active() < Isa::Avx512) {
    std::printf("  skip gemv_f32_stream_same_bits_as_dot_block: the stream kernels need AVX-512 (active ISA: %s)\n",
                isa_name(isa_active()));
    return;
  }
  ThreadPool pool2(2), pool3(3);
  ThreadPool* pools[] = {nullptr, &pool2, &pool3};
  const gemm_detail::GemvPrefetch pfs[] = {gemm_detail::GemvPrefetch::T0, gemm_detail::GemvPrefetch::Nta,
                                           gemm_detail::GemvPrefetch::None};
  uint32_t seed = 15100;
  int compared = 0, bad = 0;
  for (int64_t K : {1, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100, 2048, 2061, 5632})
    for (int64_t N : {1, 3, 4, 5, 7, 70, 1001}) {
      if (N == 1001 && K != 2048 && K != 2061) continue;  // the long split at two K; keeps the test short
      const std::vector<float> W = spread(size_t(N * K), seed++), x = spread(size_t(K), seed++),
                               bias = spread(size_t(N), seed++);
      for (int use_bias = 0; use_bias < 2; ++use_bias) {
        const float* b = use_bias ? bias.data() : nullptr;
        for (ThreadPool* pool : pools) {
          const std::string shape = " N=" + std::to_string(N) + " K=" + std::to_string(K) + " bias=" +
                                    std::to_string(use_bias) + " threads=" + std::to_string(pool ? pool->size() : 1);
          std::vector<float> plain(size_t(N), kSentinel), off(size_t(N), kSentinel);
          gemm(x.data(), K, W.data(), DType::F32, b, plain.data(), N, 1, N, K, pool);  // dot_block
          {
            SwitchScope s(false);
            gemm_huge_pages(x.data(), K, W.data(), DType::F32, b, off.data(), N, 1, N, K, pool);
          }
          bad += compare(off, plain, x.data(), W.data(), b, N, K, "switch off vs gemm()" + shape);
          for (gemm_detail::GemvPrefetch pf : pfs)
            for (int ranges = 0; ranges < 2; ++ranges) {
              if (!pool && ranges) continue;  // no schedule without a pool
              SwitchScope s(true);
              const bool prev_ranges = gemm_detail::gemv_ranges();
              const gemm_detail::GemvPrefetch prev_pf = gemm_detail::gemv_streams_prefetch();
              gemm_detail::set_gemv_streams_prefetch(pf);
              gemm_detail::set_gemv_ranges(ranges == 0);
              std::vector<float> y(size_t(N), kSentinel);
              gemm_huge_pages(x.data(), K, W.data(), DType::F32, b, y.data(), N, 1, N, K, pool);
              gemm_detail::set_gemv_streams_prefetch(prev_pf);
              gemm_detail::set_gemv_ranges(prev_ranges);
              bad += compare(y, plain, x.data(), W.data(), b, N, K,
                             "f32 stream GEMV pf=" + std::to_string(int(pf)) + " ranges=" + std::to_string(1 - ranges) +
                                 shape);
              ++compared;
            }
        }
      }
    }
  EXPECT(bad == 0);
  EXPECT(compared == 2 * (15 * 6 + 2) * (3 + 2 * 6));  // (K, N) pairs x bias x (3 hints, x 2 schedules with a pool)
}

// gemv_huge_pages_multi on F32 (the backend's fused q/k/v and gate/up on its f32 copies): with the
// switch on one fused stream dispatch, off one gemm_huge_pages per output (the previous path): every
// output equals plain gemm()'s bits both ways, for q/k/v-like and gate/up-like sets (a thousand
// rows, so the guided split's grabs cross the outputs' edges), every tail K, 0 / 2 / 3 threads.
TEST(gemv_huge_pages_multi_f32_fused_same_bits) {
  if (isa_active() < Isa::Avx512) {
    std::printf("  skip gemv_huge_pages_multi_f32_fused_same_bits: AVX-512 only\n");
    return;
  }
  ThreadPool pool2(2), pool3(3);
  ThreadPool* pools[] = {nullptr, &pool2, &pool3};
  const std::vector<std::vector<int64_t>> shapes = {{256, 32, 32}, {1, 17}, {1000, 1000}, {16, 37, 5, 64}};
  uint32_t seed = 15300;
  int compared = 0, bad = 0;
  for (int64_t K : {15, 33, 64, 100, 2048})
    for (const auto& shape : shapes) {
      const int n = int(shape.size());
      std::vector<std::vector<float>> W(static_cast<size_t>(n)), bias(static_cast<size_t>(n));
      for (int j = 0; j < n; ++j) {
        W[size_t(j)] = spread(size_t(shape[size_t(j)] * K), seed++);
        bias[size_t(j)] = spread(size_t(shape[size_t(j)]), seed++);
      }
      const std::vector<float> x = spread(size_t(K), seed++);
      for (ThreadPool* pool : pools)
        for (int on = 0; on < 2; ++on) {
          SwitchScope s(on != 0);
          std::vector<std::vector<float>> y(static_cast<size_t>(n));
          GemvOutput outs[kMaxGemvOutputs];
          for (int j = 0; j < n; ++j) {
            y[size_t(j)].assign(size_t(shape[size_t(j)]), kSentinel);
            outs[j] = GemvOutput{W[size_t(j)].data(), j % 2 ? bias[size_t(j)].data() : nullptr, y[size_t(j)].data(),
                                 shape[size_t(j)]};
          }
          gemv_huge_pages_multi(x.data(), DType::F32, outs, n, K, pool);
          for (int j = 0; j < n; ++j) {
            const int64_t N = shape[size_t(j)];
            std::vector<float> plain(size_t(N), kSentinel);
            gemm(x.data(), K, W[size_t(j)].data(), DType::F32, outs[j].bias, plain.data(), N, 1, N, K, pool);
            bad += compare(y[size_t(j)], plain, x.data(), W[size_t(j)].data(), outs[j].bias, N, K,
                           "gemv_huge_pages_multi f32 output " + std::to_string(j) + " of " + std::to_string(n) +
                               " K=" + std::to_string(K) + " switch=" + std::to_string(on) +
                               " threads=" + std::to_string(pool ? pool->size() : 1));
            ++compared;
          }
        }
    }
  EXPECT(bad == 0);
  EXPECT(compared == 5 * 3 * 2 * (3 + 2 + 2 + 4));
}
