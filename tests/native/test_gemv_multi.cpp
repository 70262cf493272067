// GEMVs of one input in one dispatch (kernels.h gemv_repacked_multi / gemv_huge_pages_multi, and
// Backend::gemm_multi, which the LLaMA forward pass calls for q/k/v and gate/up): every output must
// equal, bit for bit, what one call per matrix gives (gemv_repacked, gemm_huge_pages at M = 1,
// Backend::gemm), whose numerics test_gemm.cpp checks against the references. Outputs of uneven
// sizes (a partial 16-row group, one row, a thousand rows so that the chunks cross the outputs'
// edges), with and without bias and pool, at every ISA level, VNNI on and off, the single-stream
// GEMV on and off, fusion on and off; and the argument checks.
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "base/cpu_features.h"
#include "base/dtype.h"
#include "base/error.h"
#include "base/thread_pool.h"
#include "../../kernels/cpu/gemm_internal.h"
#include "../../kernels/cpu/kernels.h"
#include "core/backend.h"
#include "testing.h"

using namespace emollm;

namespace {

constexpr float kSentinel = -12345.0f;

std::vector<float> randv(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

std::vector<uint8_t> make_matrix(DType t, int64_t N, int64_t K, uint32_t seed) {
  const std::vector<float> src = randv(size_t(N * K), seed);
  const size_t rb = dtype_row_bytes(t, K);
  std::vector<uint8_t> w(size_t(N) * rb);
  for (int64_t n = 0; n < N; ++n) quantize_row(t, src.data() + n * K, w.data() + size_t(n) * rb, K);
  return w;
}

std::vector<Isa> isa_levels() {
  std::vector<Isa> v;
  for (int i = 0; i <= int(isa_detected()); ++i) v.push_back(Isa(i));
  return v;
}

struct VnniScope {
  explicit VnniScope(bool on) : prev_(gemm_detail::vnni_allowed()) { gemm_detail::set_vnni_allowed(on); }
  ~VnniScope() { gemm_detail::set_vnni_allowed(prev_); }
  bool prev_;
};

struct F32StreamScope {  // f32 outputs on the stream kernels, fused (default), or one dot_block call each
  explicit F32StreamScope(bool on) : prev_(gemm_detail::gemv_stream_f32()) { gemm_detail::set_gemv_stream_f32(on); }
  ~F32StreamScope() { gemm_detail::set_gemv_stream_f32(prev_); }
  bool prev_;
};

struct FusionScope {
  explicit FusionScope(bool on) : prev_(gemv_fusion()) { set_gemv_fusion(on); }
  ~FusionScope() { set_gemv_fusion(prev_); }
  bool prev_;
};

void expect_bits(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  EXPECT(got.size() == want.size());
  for (size_t i = 0; i < got.size() && i < want.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      emollm_test::report_failure(__FILE__, __LINE__,
                                  what + ": y[" + std::to_string(i) + "] = " + std::to_string(got[i]) + ", one call per matrix gives " +
                                      std::to_string(want[i]));
      return;
    }
}

// Output sizes: q/k/v-like (a large one and two small ones, one with a partial group), one row,
// and a set whose total crosses many chunk edges.
const std::vector<std::vector<int64_t>> kShapes = {{40, 8, 8}, {1, 17}, {1000, 1000}, {16, 37, 5, 64}};

// For each bias on / off, ISA level, Toggle (a scope: VNNI, the f32 stream kernels) on / off and pool
// on / off: the outputs of multi(outs, n, pool), one call over the matrices W[j] of
// shape[j] rows, equal bit for bit those of single(W[j], bias, y, N, pool), one call per matrix.
template <typename Toggle, typename Single, typename Multi>
void expect_multi_equals_single(const std::string& name, const char* toggle, const std::vector<const void*>& W,
                                const std::vector<int64_t>& shape, const std::vector<std::vector<float>>& bias,
                                ThreadPool& pool, Single single, Multi multi) {
  const int n = int(shape.size());
  for (int use_bias = 0; use_bias < 2; ++use_bias)
    for (Isa isa : isa_levels()) {
      IsaCapScope cap(isa);
      for (int on = 0; on < 2; ++on)
        for (int use_pool = 0; use_pool < 2; ++use_pool) {
          Toggle scope(on != 0);
          ThreadPool* p = use_pool ? &pool : nullptr;
          std::vector<std::vector<float>> want(static_cast<size_t>(n)), got(static_cast<size_t>(n));
          GemvOutput outs[kMaxGemvOutputs];
          for (int j = 0; j < n; ++j) {
            const int64_t N = shape[size_t(j)];
            const float* b = use_bias ? bias[size_t(j)].data() : nullptr;
            want[size_t(j)].assign(size_t(N), kSentinel);
            got[size_t(j)].assign(size_t(N), kSentinel);
            single(W[size_t(j)], b, want[size_t(j)].data(), N, p);
            outs[j] = GemvOutput{W[size_t(j)], b, got[size_t(j)].data(), N};
          }
          multi(outs, n, p);
          for (int j = 0; j < n; ++j)
            expect_bits(got[size_t(j)], want[size_t(j)],
                        name + " output " + std::to_string(j) + " of " + std::to_string(n) + " isa=" + isa_name(isa) +
                            " " + toggle + "=" + std::to_string(on) + " pool=" + std::to_string(use_pool) +
                            " bias=" + std::to_string(use_bias));
        }
    }
}

}  // namespace

TEST(gemv_repacked_multi_equals_one_call_per_matrix) {
  ThreadPool pool(2);
  uint32_t seed = 8100;
  for (DType t : {DType::Q4_0, DType::Q8_0})
    for (int64_t K : {32, 96, 2048})
      for (const auto& shape : kShapes) {
        if (K == 2048 && shape[0] == 1000 && t == DType::Q8_0) continue;  // the q4_0 one covers it; keeps the test short
        const int n = int(shape.size());
        std::vector<std::vector<uint8_t>> packed(static_cast<size_t>(n));
        std::vector<std::vector<float>> bias(static_cast<size_t>(n));
        for (int j = 0; j < n; ++j) {
          const std::vector<uint8_t> w = make_matrix(t, shape[size_t(j)], K, seed++);
          packed[size_t(j)].resize(quant_repack_bytes(t, shape[size_t(j)], K));
          quant_repack(w.data(), t, shape[size_t(j)], K, packed[size_t(j)].data(), nullptr);
          bias[size_t(j)] = randv(size_t(shape[size_t(j)]), seed++);
        }
        const std::vector<float> x = randv(size_t(K), seed++);
        std::vector<const void*> W;
        for (const auto& m : packed) W.push_back(m.data());
        expect_multi_equals_single<VnniScope>(
            std::string("gemv_repacked_multi ") + dtype_name(t) + " K=" + std::to_string(K), "vnni", W, shape, bias,
            pool,
            [&](const void* w, const float* b, float* y, int64_t N, ThreadPool* p) {
              gemv_repacked(x.data(), w, t, b, y, N, K, p);
            },
            [&](const GemvOutput* outs, int count, ThreadPool* p) {
              gemv_repacked_multi(x.data(), t, outs, count, K, p);
            });
      }
  std::vector<uint8_t> buf(4096);
  float x[64] = {}, y[16];
  GemvOutput o[kMaxGemvOutputs + 1];
  for (auto& e : o) e = GemvOutput{buf.data(), nullptr, y, 16};
  EXPECT_THROWS(gemv_repacked_multi(x, DType::Q4_0, o, 0, 32, nullptr), ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemv_repacked_multi(x, DType::Q4_0, o, kMaxGemvOutputs + 1, 32, nullptr), ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemv_repacked_multi(x, DType::Q4_0, o, 2, 33, nullptr), ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemv_repacked_multi(x, DType::BF16, o, 2, 32, nullptr), ErrorCode::InvalidArgument);
  o[1].y = nullptr;
  EXPECT_THROWS(gemv_repacked_multi(x, DType::Q8_0, o, 2, 32, nullptr), ErrorCode::InvalidArgument);
}

TEST(gemv_huge_pages_multi_equals_one_call_per_matrix) {
  ThreadPool pool(2);
  uint32_t seed = 8300;
  for (DType t : {DType::BF16, DType::F16, DType::F32})
    for (int64_t K : {15, 64, 100, 2048})
      for (const auto& shape : kShapes) {
        const int n = int(shape.size());
        std::vector<std::vector<uint8_t>> w(static_cast<size_t>(n));
        std::vector<std::vector<float>> bias(static_cast<size_t>(n));
        for (int j = 0; j < n; ++j) {
          w[size_t(j)] = make_matrix(t, shape[size_t(j)], K, seed++);
          bias[size_t(j)] = randv(size_t(shape[size_t(j)]), seed++);
        }
        const std::vector<float> x = randv(size_t(K), seed++);
        std::vector<const void*> W;
        for (const auto& m : w) W.push_back(m.data());
        expect_multi_equals_single<F32StreamScope>(
            std::string("gemv_huge_pages_multi ") + dtype_name(t) + " K=" + std::to_string(K), "f32_stream", W, shape, bias,
            pool,
            [&](const void* wj, const float* b, float* y, int64_t N, ThreadPool* p) {
              gemm_huge_pages(x.data(), K, wj, t, b, y, N, 1, N, K, p);
            },
            [&](const GemvOutput* outs, int count, ThreadPool* p) {
              gemv_huge_pages_multi(x.data(), t, outs, count, K, p);
            });
      }
  float x[32] = {}, y[4];
  uint16_t wb[4 * 32] = {};
  GemvOutput o[2] = {{wb, nullptr, y, 4}, {nullptr, nullptr, y, 4}};
  EXPECT_THROWS(gemv_huge_pages_multi(x, DType::BF16, o, 0, 32, nullptr), ErrorCode::InvalidArgument);
  EXPECT_THROWS(gemv_huge_pages_multi(x, DType::BF16, o, 2, 32, nullptr), ErrorCode::InvalidArgument);  // null W
}

// The CPU backend's gemm_multi (what the model calls): with the weights packed as a model packs
// them (repacked q4_0 / q8_0; bf16 / f16 copies in huge pages, >= 2 MiB) and without, fusion on
// and off, M = 1 (the fused dispatch) and M = 3 (one gemm() each), mixed types (one gemm() each):
// the bits of one Backend::gemm per output.
TEST(cpu_backend_gemm_multi_equals_gemm_per_output) {
  auto be = make_cpu_backend(std::make_shared<ThreadPool>(2));
  const bool repack_was = weight_repacking();
  set_weight_repacking(true);
  uint32_t seed = 8500;
  const int64_t K = 2048;
  struct Case {
    std::vector<DType> types;
    std::vector<int64_t> N;
  };
  // 520 x 2048 2-byte weights = 2.03 MiB: the size from which bf16 / f16 get a huge-page copy
  const std::vector<Case> cases = {{{DType::Q4_0, DType::Q4_0, DType::Q4_0}, {64, 16, 24}},
                                   {{DType::Q8_0, DType::Q8_0}, {48, 40}},
                                   {{DType::BF16, DType::BF16, DType::BF16}, {520, 520, 600}},
                                   // TinyLlama's q / k / v: k and v of 1 MiB (copies from 256 KiB on)
                                   {{DType::BF16, DType::BF16, DType::BF16}, {520, 256, 256}},
                                   {{DType::F16, DType::F16, DType::F16}, {520, 256, 64}},
                                   {{DType::F16, DType::F16}, {520, 530}},
                                   {{DType::F32, DType::F32}, {24, 8}},
                                   {{DType::Q4_0, DType::Q8_0, DType::Q4_0}, {32, 16, 16}}};
  for (const Case& c : cases) {
    const int n = int(c.types.size());
    std::vector<std::vector<uint8_t>> w(static_cast<size_t>(n));
    std::vector<std::vector<float>> bias(static_cast<size_t>(n));
    for (int j = 0; j < n; ++j) {
      w[size_t(j)] = make_matrix(c.types[size_t(j)], c.N[size_t(j)], K, seed++);
      bias[size_t(j)] = randv(size_t(c.N[size_t(j)]), seed++);
    }
    for (int pack = 0; pack < 2; ++pack) {
      std::vector<std::unique_ptr<PackedGemmWeight>> handles;
      if (pack)
        for (int j = 0; j < n; ++j)
          handles.push_back(be->pack_gemm_weight(w[size_t(j)].data(), c.types[size_t(j)], c.N[size_t(j)], K));
      for (int64_t M : {1, 3}) {
        const std::vector<float> X = randv(size_t(M * K), seed++);
        for (int fuse = 0; fuse < 2; ++fuse) {
          FusionScope fs(fuse != 0);
          std::vector<std::vector<float>> want(static_cast<size_t>(n)), got(static_cast<size_t>(n));
          Backend::GemmOutput outs[kMaxGemvOutputs];
          for (int j = 0; j < n; ++j) {
            const int64_t N = c.N[size_t(j)], ldy = N + 3;
            want[size_t(j)].assign(size_t(M * ldy), kSentinel);
            got[size_t(j)].assign(size_t(M * ldy), kSentinel);
            be->gemm(X.data(), K, w[size_t(j)].data(), c.types[size_t(j)], bias[size_t(j)].data(),
                     want[size_t(j)].data(), ldy, M, N, K);
            outs[j] = Backend::GemmOutput{w[size_t(j)].data(), c.types[size_t(j)], bias[size_t(j)].data(),
                                          got[size_t(j)].data(), ldy, N};
          }
          be->gemm_multi(X.data(), K, outs, n, M, K);
          for (int j = 0; j < n; ++j)
            expect_bits(got[size_t(j)], want[size_t(j)],
                        std::string("gemm_multi ") + dtype_name(c.types[size_t(j)]) + " output " + std::to_string(j) +
                            " M=" + std::to_string(M) + " packed=" + std::to_string(pack) + " fuse=" + std::to_string(fuse));
        }
      }
    }
  }
  set_weight_repacking(repack_was);
}
