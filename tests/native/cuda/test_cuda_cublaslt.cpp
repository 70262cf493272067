// The cuBLASLt GEMM path (kernels/cuda/gemm_cublaslt.cu) against a double reference and against
// gemm_tc, plus its loader's failures, which need no device.
//
// Tolerances (|got - want| <= atol + rtol |want|):
//   gemm_cublaslt vs a double reference over the operands the contract names (X and the
//     dequantised weights rounded to bf16 for BF16 weights, to f16 otherwise): what is left is
//     f32 accumulation in cuBLASLt's order: 2e-4, 2e-4 (as gemm_tc's test).
//   gemm_cublaslt vs gemm_tc on the same inputs: both within that of the reference, so 4e-4, 4e-4.
// Run the binary twice on a GPU machine (default, and EMOLLM_CUBLASLT=0) so that every matmul
// test also covers the fallback; cuda_cublaslt_matmul_path checks which path each run took.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../../base/dtype.h"
#include "../../../base/error.h"
#include "../../../kernels/cuda/cuda_kernels.h"
#include "../testing.h"
#include "cuda_test_buffers.h"
#include "gpu_test.h"

using namespace emollm;
using emollm_test::cuda_buffers::CuRng;

namespace {

// this file's sequences: CuRng with salt 11
struct LtRng : CuRng {
  explicit LtRng(uint64_t seed) : CuRng(seed, 11) {}
};

void lt_check(cudaError_t e, const char* what) { emollm_test::cuda_buffers::cu_check(e, what); }

// Device bytes; `offset` shifts the pointer handed out (to test unaligned operands).
struct LtBuf {
  uint8_t* base = nullptr;
  size_t offset = 0, n = 0;
  LtBuf(const void* host, size_t bytes, size_t off = 0) : offset(off), n(bytes) {
    lt_check(cudaMalloc(&base, bytes + off + 16), "cudaMalloc");
    if (host) lt_check(cudaMemcpy(base + off, host, bytes, cudaMemcpyHostToDevice), "upload");
  }
  ~LtBuf() { cudaFree(base); }
  LtBuf(const LtBuf&) = delete;
  LtBuf& operator=(const LtBuf&) = delete;
  void* p() const { return base + offset; }
  float* f() const { return reinterpret_cast<float*>(base + offset); }
  std::vector<float> get() const {
    std::vector<float> h(n / sizeof(float));
    lt_check(cudaDeviceSynchronize(), "sync");
    lt_check(cudaMemcpy(h.data(), base + offset, n, cudaMemcpyDeviceToHost), "download");
    return h;
  }
};

float op_round(float x, bool bf16) {
  if (bf16) return bf16_to_f32(f32_to_bf16(x));
  if (x == x) x = std::fmin(std::fmax(x, -65504.0f), 65504.0f);
  return f16_to_f32(f32_to_f16(x));
}

bool env_disables_cublaslt() {
  const char* e = std::getenv("EMOLLM_CUBLASLT");
  return e && std::strcmp(e, "0") == 0;
}

// One problem's host data: X (M rows of ldx), W (N x K, uniform in [-1, 1], then stored in wt),
// the bias and the double reference over the operands the contract names (X and the dequantised
// W rounded to bf16 for BF16 weights, to f16 otherwise), with the bias when `bias`.
struct LtProblem {
  std::vector<float> x, b, want;  // want: M x N
  std::vector<uint8_t> wq;        // N rows of dtype_row_bytes(wt, K)
};

LtProblem make_problem(DType wt, uint64_t seed, int64_t M, int64_t N, int64_t K, int64_t ldx, bool bias) {
  LtRng r(seed);
  LtProblem p;
  std::vector<float> w(size_t(N * K));
  p.x.resize(size_t(M * ldx));
  p.b.resize(static_cast<size_t>(N));
  for (auto& v : p.x) v = r.uniform(-1, 1);
  for (auto& v : w) v = r.uniform(-1, 1);
  for (auto& v : p.b) v = r.uniform(-1, 1);
  const size_t rb = dtype_row_bytes(wt, K);
  p.wq.resize(size_t(N) * rb);
  std::vector<float> wd(size_t(N * K));
  for (int64_t n = 0; n < N; ++n) {
    quantize_row(wt, w.data() + n * K, p.wq.data() + size_t(n) * rb, K);
    dequantize_row(wt, p.wq.data() + size_t(n) * rb, wd.data() + n * K, K);
  }
  const bool bf = wt == DType::BF16;
  p.want.resize(size_t(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double a = bias ? p.b[size_t(n)] : 0.0;
      for (int64_t k = 0; k < K; ++k)
        a += double(op_round(p.x[size_t(m * ldx + k)], bf)) * double(op_round(wd[size_t(n * K + k)], bf));
      p.want[size_t(m * N + n)] = float(a);
    }
  return p;
}

struct LtCase {
  int64_t M, N, K, pad;
  bool bias;
  size_t w_offset = 0;  // bytes: 2 makes W's rows only 2-byte aligned
};

// gemm_cublaslt and gemm_tc on the same inputs against the double reference. Where every
// operand row is 16-byte aligned (K % 8 == 0, ldy % 4 == 0, W not offset) cuBLASLt must have
// run it; elsewhere it may decline (then matmul runs gemm_tc, checked here too).
void run_case(DType wt, const LtCase& c) {
  const int64_t M = c.M, N = c.N, K = c.K, ldx = K + c.pad, ldy = N + 2 * c.pad;
  const bool must_run = K % 8 == 0 && ldy % 4 == 0 && c.w_offset == 0;
  const LtProblem pr =
      make_problem(wt, uint64_t(c.M * 131 + c.N * 7 + c.K + int(wt) * 1000 + c.w_offset), M, N, K, ldx, c.bias);
  const std::vector<float>& want = pr.want;
  LtBuf dx(pr.x.data(), pr.x.size() * 4), dw(pr.wq.data(), pr.wq.size(), c.w_offset), db(pr.b.data(), pr.b.size() * 4);
  const std::vector<float> init(size_t(M * ldy), -555.0f);
  LtBuf y_lt(init.data(), init.size() * 4), y_tc(init.data(), init.size() * 4);
  const float* bias = c.bias ? db.f() : nullptr;
  const bool ran = cuda::gemm_cublaslt(dx.f(), ldx, dw.p(), wt, bias, y_lt.f(), ldy, M, N, K, nullptr);
  cuda::gemm_tc(dx.f(), ldx, dw.p(), wt, bias, y_tc.f(), ldy, M, N, K, nullptr);
  const std::string what = std::string(dtype_name(wt)) + " M=" + std::to_string(M) + " N=" + std::to_string(N) +
                           " K=" + std::to_string(K) + " pad=" + std::to_string(c.pad) + (c.bias ? " bias" : "") +
                           (c.w_offset ? " W+" + std::to_string(c.w_offset) + "B" : "");
  if (must_run && !ran) emollm_test::report_failure(__FILE__, __LINE__, what + ": cuBLASLt found no algorithm");
  if (!ran) {
    std::printf("  %s: no cuBLASLt algorithm, gemm_tc runs it (checked there)\n", what.c_str());
  }
  const std::vector<float> got_lt = y_lt.get(), got_tc = y_tc.get();
  std::vector<float> lt, tc;
  bool pad_ok = true;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      lt.push_back(got_lt[size_t(m * ldy + n)]);
      tc.push_back(got_tc[size_t(m * ldy + n)]);
    }
    for (int64_t n = N; n < ldy && m + 1 < M; ++n) pad_ok = pad_ok && got_lt[size_t(m * ldy + n)] == -555.0f;
  }
  EXPECT_ALL_CLOSE(tc.data(), want.data(), want.size(), 2e-4, 2e-4, "gemm_tc " + what);
  if (ran) {
    EXPECT_ALL_CLOSE(lt.data(), want.data(), want.size(), 2e-4, 2e-4, "gemm_cublaslt " + what);
    EXPECT_ALL_CLOSE(lt.data(), tc.data(), tc.size(), 4e-4, 4e-4, "gemm_cublaslt vs gemm_tc " + what);
    if (!pad_ok) emollm_test::report_failure(__FILE__, __LINE__, what + ": cuBLASLt wrote into the row padding");
  }
}

}  // namespace

TEST(cuda_cublaslt_loader_fails_cleanly) {
  // A library that is not there: a reason per candidate naming it, no throw, nothing loaded.
  std::string opened = "untouched";
  const std::string why = cuda::cublaslt_probe_library({"libemollm-no-such-cublaslt.so.0", "/nonexistent/libcublasLt.so.13"}, &opened);
  EXPECT(why.find("libemollm-no-such-cublaslt.so.0") != std::string::npos);
  EXPECT(why.find("/nonexistent/libcublasLt.so.13") != std::string::npos);
  EXPECT(opened == "untouched");
  std::printf("  bogus names: %s\n", why.c_str());
  EXPECT(!cuda::cublaslt_probe_library({}).empty());
  // A library that opens but is not cuBLASLt (the C library): refused for a missing symbol.
  const std::string libc_why = cuda::cublaslt_probe_library({"libc.so.6"});
  EXPECT(libc_why.find("no symbol cublasLt") != std::string::npos);

  // The process-wide loader: never throws, says why it is (not) loaded, and the path report agrees.
  std::string detail;
  const bool avail = cuda::cublaslt_available(&detail);
  const std::string path = cuda::matmul_gemm_path();
  std::printf("  matmul GEMM path: %s\n", path.c_str());
  EXPECT(!detail.empty());
  EXPECT(path.rfind(avail ? "cublaslt (" : "gemm_tc (", 0) == 0);
  if (env_disables_cublaslt()) EXPECT(!avail && detail.find("EMOLLM_CUBLASLT=0") != std::string::npos);

  // Argument errors come first and need no device or library.
  float fake[4];
  EXPECT_THROWS(cuda::gemm_cublaslt(fake, 16, fake, DType::F32, nullptr, fake, 16, 16, 16, 16, nullptr), ErrorCode::Unsupported);
  EXPECT_THROWS(cuda::gemm_cublaslt(fake, 40, fake, DType::Q8_0, nullptr, fake, 16, 16, 16, 40, nullptr),
                ErrorCode::InvalidArgument);
  EXPECT_THROWS(cuda::gemm_cublaslt(fake, 8, fake, DType::BF16, nullptr, fake, 16, 16, 16, 16, nullptr),
                ErrorCode::InvalidArgument);  // ldx < K
  // Without the library the call declines (false) before touching the pointers or a device:
  // matmul then runs gemm_tc.
  if (!avail) EXPECT(!cuda::gemm_cublaslt(fake, 16, fake, DType::BF16, nullptr, fake, 16, 16, 16, 16, nullptr));
}

TEST(cuda_cublaslt_matches_reference) {
  SKIP_WITHOUT_GPU();
  std::string detail;
  if (!cuda::cublaslt_available(&detail)) {
    std::printf("  [skip] cuBLASLt not in use: %s\n", detail.c_str());
    return;
  }
  std::printf("  %s\n", detail.c_str());
  for (DType wt : {DType::BF16, DType::F16, DType::Q8_0, DType::Q4_0}) {
    run_case(wt, {33, 67, 64, 0, true});
    run_case(wt, {77, 131, 160, 3, true});
    run_case(wt, {130, 200, 256, 0, false});
    run_case(wt, {9, 40, 96, 1, true});
    run_case(wt, {257, 96, 512, 0, true});
    run_case(wt, {512, 256, 1024, 0, true});
  }
  for (DType wt : {DType::BF16, DType::F16}) {
    // Odd K (rows of W only 2-byte aligned) and a W 2 bytes off alignment: cuBLASLt may decline
    // (then gemm_tc is checked alone), and when it runs it must be right.
    run_case(wt, {45, 67, 45, 1, true});
    run_case(wt, {19, 33, 77, 2, false});
    run_case(wt, {64, 64, 128, 0, true, 2});
  }
}

TEST(cuda_cublaslt_matmul_path) {
  SKIP_WITHOUT_GPU();
  const std::string path = cuda::matmul_gemm_path();
  std::printf("  matmul GEMM path: %s\n", path.c_str());
  if (env_disables_cublaslt()) {
    EXPECT(path.rfind("gemm_tc (", 0) == 0);
    // Disabled: the direct call declines and matmul (below) runs gemm_tc.
    float fake[4];
    EXPECT(!cuda::gemm_cublaslt(fake, 16, fake, DType::BF16, nullptr, fake, 16, 16, 16, 16, nullptr));
  }
  // matmul itself at a prefill shape (M >= kCublasLtQuantMinRows) for each dtype, through
  // whichever path is active, against the reference.
  for (DType wt : {DType::BF16, DType::F16, DType::Q8_0, DType::Q4_0}) {
    const int64_t M = 70, N = 96, K = 128;
    const LtProblem pr = make_problem(wt, uint64_t(int(wt)) + 5, M, N, K, K, true);
    const std::vector<float>& want = pr.want;
    LtBuf dx(pr.x.data(), pr.x.size() * 4), dw(pr.wq.data(), pr.wq.size()), db(pr.b.data(), pr.b.size() * 4),
        dy(nullptr, want.size() * 4);
    cuda::matmul(dx.f(), K, dw.p(), wt, db.f(), dy.f(), N, M, N, K, nullptr);
    const std::vector<float> got = dy.get();
    EXPECT_ALL_CLOSE(got.data(), want.data(), want.size(), 2e-4, 2e-4, std::string("matmul ") + dtype_name(wt));
  }
}
