// The prefill GEMM through cuBLASLt (cuda_kernels.h: gemm_cublaslt), opened at run time.
//
// Why: gemm_tc (wmma, no pipelining) reaches ~20 TFLOP/s at LLaMA-7B prefill shapes on an H200
// where cuBLASLt reaches 680-760 (bench_cuda, same run). cuBLASLt is NVIDIA's; the addon must
// still start where it is absent, so it is dlopen'ed and only the functions used are resolved
// (their types are declared below from cublasLt.h, which not every toolkit install has).
//
// Layout: cuBLASLt is column-major. Our row-major X[M,K] (ld ldx) is a column-major K x M
// matrix, W[N,K] a column-major K x N one and Y[M,N] (ld ldy) a column-major N x M one, so
// Y^T = W X^T is D(N x M) = op_T(A = W, K x N) * op_N(B = Xh, K x M): the "TN" GEMM, with the
// bias (length N = D's rows) in the epilogue.
//
// Operands: X is f32; cuBLASLt multiplies 16-bit floats, so X is rounded into a scratch buffer
// first with gemm_tc's own rounding (operand16.cuh), and q8_0/q4_0 weights are dequantised to
// f16 with gemm_tc's own dequantisation: both paths multiply the same operand bits and differ
// only in f32 summation order. Scratch and the cuBLASLt workspace are stream-ordered
// (cudaMallocAsync / cudaFreeAsync on the caller's stream), so concurrent calls on different
// streams never share a buffer and nothing is freed while a kernel still reads it.
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cuda_common.cuh"
#include "cuda_kernels.h"
#include "operand16.cuh"

namespace emollm {
namespace cuda {
namespace {

// ------------------------------------------------------------------ the cuBLASLt ABI used here
// From cublasLt.h / cublas_api.h / library_types.h (stable across cuBLAS 11-13).
using LtStatus = int;  // cublasStatus_t; 0 = CUBLAS_STATUS_SUCCESS
using LtHandle = void*;
using LtDesc = void*;
using LtLayout = void*;
using LtPref = void*;
struct LtAlgo {
  uint64_t data[8];
};
struct LtHeuristic {  // cublasLtMatmulHeuristicResult_t
  LtAlgo algo;
  size_t workspaceSize;
  LtStatus state;
  float wavesCount;
  int reserved[4];
};
static_assert(sizeof(LtHeuristic) == 96, "cublasLtMatmulHeuristicResult_t is 96 bytes");

constexpr int kCudaR32F = 0, kCudaR16F = 2, kCudaR16BF = 14;  // cudaDataType_t
constexpr int kComputeF32 = 68;                               // CUBLAS_COMPUTE_32F
constexpr int kOpN = 0, kOpT = 1;                              // cublasOperation_t
constexpr int kDescTransA = 3, kDescTransB = 4, kDescEpilogue = 7, kDescBiasPointer = 8;  // cublasLtMatmulDescAttributes_t
constexpr uint32_t kEpilogueDefault = 1, kEpilogueBias = 4;                                // cublasLtEpilogue_t
constexpr int kPrefMaxWorkspace = 1, kPrefAlignA = 5, kPrefAlignB = 6, kPrefAlignC = 7, kPrefAlignD = 8;

constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // the most any algorithm may ask for

struct LtApi {
  LtStatus (*create)(LtHandle*);
  size_t (*get_version)();
  LtStatus (*desc_create)(LtDesc*, int compute, int scale);
  LtStatus (*desc_destroy)(LtDesc);
  LtStatus (*desc_set)(LtDesc, int attr, const void* buf, size_t bytes);
  LtStatus (*layout_create)(LtLayout*, int type, uint64_t rows, uint64_t cols, int64_t ld);
  LtStatus (*layout_destroy)(LtLayout);
  LtStatus (*pref_create)(LtPref*);
  LtStatus (*pref_destroy)(LtPref);
  LtStatus (*pref_set)(LtPref, int attr, const void* buf, size_t bytes);
  LtStatus (*heuristic)(LtHandle, LtDesc, LtLayout, LtLayout, LtLayout, LtLayout, LtPref, int, LtHeuristic*, int*);
  LtStatus (*matmul)(LtHandle, LtDesc, const void* alpha, const void* A, LtLayout, const void* B, LtLayout,
                     const void* beta, const void* C, LtLayout, void* D, LtLayout, const LtAlgo*, void* ws,
                     size_t ws_bytes, cudaStream_t);
};

// Opens `name` and resolves every function of LtApi; on failure closes it and says why.
bool open_library(const std::string& name, void** lib, LtApi* api, std::string* why) {
  void* h = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* e = dlerror();  // usually names the file already
    const std::string msg = e ? e : "dlopen failed";
    *why = msg.find(name) != std::string::npos ? msg : name + ": " + msg;
    return false;
  }
  bool ok = true;
  auto sym = [&](auto& fn, const char* symbol) {
    void* p = dlsym(h, symbol);
    if (!p) {
      if (ok) *why = name + ": no symbol " + symbol;
      ok = false;
    }
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(p);
  };
  sym(api->create, "cublasLtCreate");
  sym(api->get_version, "cublasLtGetVersion");
  sym(api->desc_create, "cublasLtMatmulDescCreate");
  sym(api->desc_destroy, "cublasLtMatmulDescDestroy");
  sym(api->desc_set, "cublasLtMatmulDescSetAttribute");
  sym(api->layout_create, "cublasLtMatrixLayoutCreate");
  sym(api->layout_destroy, "cublasLtMatrixLayoutDestroy");
  sym(api->pref_create, "cublasLtMatmulPreferenceCreate");
  sym(api->pref_destroy, "cublasLtMatmulPreferenceDestroy");
  sym(api->pref_set, "cublasLtMatmulPreferenceSetAttribute");
  sym(api->heuristic, "cublasLtMatmulAlgoGetHeuristic");
  sym(api->matmul, "cublasLtMatmul");
  if (!ok) {
    dlclose(h);
    return false;
  }
  *lib = h;
  return true;
}

std::vector<std::string> default_candidates() {
  std::vector<std::string> c = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"};
#ifdef EMOLLM_CUDA_TOOLKIT_LIBDIR
  // The toolkit this was built with, when its directory is not on the loader's path.
  for (const char* v : {"libcublasLt.so.13", "libcublasLt.so.12"})
    c.push_back(std::string(EMOLLM_CUDA_TOOLKIT_LIBDIR) + "/" + v);
#endif
  return c;
}

// One cached product configuration: layouts and the heuristic's algorithm (or "none").
struct Plan {
  const LtApi* api = nullptr;
  LtLayout a = nullptr, b = nullptr, d = nullptr;
  std::atomic<bool> ok{false};  // an algorithm exists (cleared if cuBLASLt refuses it at run time)
  bool bias_epilogue = false;  // the bias rides in cuBLASLt's epilogue (else a row_broadcast after)
  LtAlgo algo{};
  size_t workspace = 0;
  ~Plan() {
    if (a) api->layout_destroy(a);
    if (b) api->layout_destroy(b);
    if (d) api->layout_destroy(d);
  }
};
// device, operand type, M, N, K, ld of W, ld of Xh, ld of Y, alignment of W / Y / bias (0: none)
using PlanKey = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, unsigned, unsigned, unsigned>;

// The process-wide cuBLASLt state: the library (opened once), a handle per device, the plans.
class CublasLt {
 public:
  static CublasLt& get() {
    static CublasLt* lt = new CublasLt();  // never destroyed: plans may be in use at exit
    return *lt;
  }
  bool loaded() const { return lib_ != nullptr; }
  const std::string& detail() const { return detail_; }
  const LtApi& api() const { return api_; }

  LtHandle handle(int dev) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = handles_.find(dev);
    if (it != handles_.end()) return it->second;
    LtHandle h = nullptr;
    const LtStatus s = api_.create(&h);
    if (s != 0 || !h) throw Error(ErrorCode::Internal, "cuBLASLt: cublasLtCreate failed (status " + std::to_string(s) + ")");
    // Stream-ordered scratch: keep up to 256 MiB of freed blocks in the device's pool instead of
    // returning them to the driver at every synchronisation (one cudaMallocAsync per GEMM; a
    // LLaMA-7B prefill needs X's copy + the workspace, or + an 11008 x 4096 f16 dequantised W),
    // bounded so that the pool does not keep memory the backend's allocator may need.
    cudaMemPool_t pool = nullptr;
    if (cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess && pool) {
      uint64_t keep = uint64_t(256) << 20;
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
    }
    handles_[dev] = h;
    return h;
  }

  std::shared_ptr<Plan> plan(const PlanKey& key, LtHandle h, const float* bias_for_alignment) {
    {
      std::lock_guard<std::mutex> g(mu_);
      auto it = plans_.find(key);
      if (it != plans_.end()) return it->second;
    }
    auto p = make_plan(key, h, bias_for_alignment);
    std::lock_guard<std::mutex> g(mu_);
    if (plans_.size() >= 1024) plans_.clear();  // prompt lengths vary: bound the cache (plans in use stay alive)
    return plans_.emplace(key, p).first->second;
  }

 private:
  CublasLt() {
    const char* env = std::getenv("EMOLLM_CUBLASLT");
    if (env && std::strcmp(env, "0") == 0) {
      detail_ = "disabled by EMOLLM_CUBLASLT=0";
      return;
    }
    std::string why;
    for (const auto& name : default_candidates()) {
      std::string w;
      if (open_library(name, &lib_, &api_, &w)) {
        detail_ = name + ", version " + std::to_string(api_.get_version());
        return;
      }
      why += (why.empty() ? "" : "; ") + w;
    }
    detail_ = "cuBLASLt not loaded (" + why + ")";
  }

  std::shared_ptr<Plan> make_plan(const PlanKey& key, LtHandle h, const float* bias) {
    const auto [dev, type16, M, N, K, ldw, ldxh, ldy, align_w, align_y, align_bias] = key;
    (void)dev;
    auto p = std::make_shared<Plan>();
    p->api = &api_;
    if (api_.layout_create(&p->a, type16, uint64_t(K), uint64_t(N), ldw) != 0 ||
        api_.layout_create(&p->b, type16, uint64_t(K), uint64_t(M), ldxh) != 0 ||
        api_.layout_create(&p->d, kCudaR32F, uint64_t(N), uint64_t(M), ldy) != 0)
      return p;  // ok = false: gemm_tc runs this shape
    LtPref pref = nullptr;
    if (api_.pref_create(&pref) != 0) return p;
    const uint64_t ws = kWorkspaceBytes;
    const uint32_t aw = align_w, ab = 256, ay = align_y;
    api_.pref_set(pref, kPrefMaxWorkspace, &ws, sizeof(ws));
    api_.pref_set(pref, kPrefAlignA, &aw, sizeof(aw));
    api_.pref_set(pref, kPrefAlignB, &ab, sizeof(ab));
    api_.pref_set(pref, kPrefAlignC, &ay, sizeof(ay));
    api_.pref_set(pref, kPrefAlignD, &ay, sizeof(ay));
    // First with the bias in the epilogue (when there is one), else the plain product.
    for (const bool with_bias : {align_bias != 0, false}) {
      LtDesc desc = make_desc(with_bias ? bias : nullptr);
      if (!desc) continue;
      LtHeuristic r{};
      int found = 0;
      const LtStatus s = api_.heuristic(h, desc, p->a, p->b, p->d, p->d, pref, 1, &r, &found);
      api_.desc_destroy(desc);
      if (s == 0 && found > 0 && r.state == 0 && r.workspaceSize <= kWorkspaceBytes) {
        p->ok.store(true), p->bias_epilogue = with_bias, p->algo = r.algo, p->workspace = r.workspaceSize;
        break;
      }
      if (!with_bias) break;
    }
    api_.pref_destroy(pref);
    return p;
  }

 public:
  // A matmul descriptor (f32 compute and scale, A transposed), with the bias epilogue when
  // bias != nullptr. nullptr when cuBLASLt refuses. Made per call: the bias pointer is per call.
  LtDesc make_desc(const float* bias) const {
    LtDesc desc = nullptr;
    if (api_.desc_create(&desc, kComputeF32, kCudaR32F) != 0 || !desc) return nullptr;
    const int32_t ta = kOpT, tb = kOpN;
    const uint32_t epi = bias ? kEpilogueBias : kEpilogueDefault;
    bool ok = api_.desc_set(desc, kDescTransA, &ta, sizeof(ta)) == 0 &&
              api_.desc_set(desc, kDescTransB, &tb, sizeof(tb)) == 0 &&
              api_.desc_set(desc, kDescEpilogue, &epi, sizeof(epi)) == 0;
    if (ok && bias) ok = api_.desc_set(desc, kDescBiasPointer, &bias, sizeof(bias)) == 0;
    if (!ok) {
      api_.desc_destroy(desc);
      return nullptr;
    }
    return desc;
  }

 private:
  void* lib_ = nullptr;
  LtApi api_{};
  std::string detail_;
  std::mutex mu_;
  std::map<int, LtHandle> handles_;
  std::map<PlanKey, std::shared_ptr<Plan>> plans_;
};

unsigned alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  unsigned al = 256;
  while (al > 1 && a % al != 0) al >>= 1;
  return al;
}

// ------------------------------------------------------------------ operand kernels
constexpr int kConvThreads = 256;

// Xh[m, k] = X[m, k] as the operand type (gemm_tc's rounding), rows of ldh elements.
template <typename MT>
__global__ void __launch_bounds__(kConvThreads) round_rows_kernel(const float* X, int64_t ldx, MT* Xh, int64_t ldh,
                                                                  int M, int K) {
  for (int m = blockIdx.y; m < M; m += gridDim.y) {
    const float* x = X + int64_t(m) * ldx;
    MT* y = Xh + int64_t(m) * ldh;
    for (int k = blockIdx.x * kConvThreads + threadIdx.x; k < K; k += gridDim.x * kConvThreads)
      y[k] = detail::to_operand<MT>(__ldg(x + k));
  }
}

// Wh[n, k] = W[n, k] dequantised to f16 (gemm_tc's dequantisation), 16 elements per thread.
template <DType WT>
__global__ void __launch_bounds__(kConvThreads) dequant_rows_kernel(const uint8_t* W, int64_t w_row_bytes, __half* Wh,
                                                                    int N, int K) {
  const int chunks = K / 16;
  for (int n = blockIdx.y; n < N; n += gridDim.y) {
    const uint8_t* row = W + int64_t(n) * w_row_bytes;
    __half* out = Wh + int64_t(n) * K;
    for (int c = blockIdx.x * kConvThreads + threadIdx.x; c < chunks; c += gridDim.x * kConvThreads) {
      float w[16];
      detail::load_w16<WT>(row, c * 16, K, w);
      // Two 16-byte stores: Wh is 256-aligned and its rows (K % 32 == 0) 64-byte multiples.
      union {
        unsigned short h[16];
        uint4 v[2];
      } u;
#pragma unroll
      for (int i = 0; i < 16; ++i) u.h[i] = __half_as_ushort(detail::to_operand<__half>(w[i]));
      uint4* dst = reinterpret_cast<uint4*>(out + int64_t(c) * 16);
      dst[0] = u.v[0];
      dst[1] = u.v[1];
    }
  }
}

dim3 rows_grid(int64_t rows, int64_t cols) {
  const int64_t x = (cols + kConvThreads - 1) / kConvThreads;
  return dim3(unsigned(x < 1024 ? (x > 0 ? x : 1) : 1024), unsigned(rows < 65535 ? rows : 65535));
}

size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

}  // namespace

std::string cublaslt_probe_library(const std::vector<std::string>& candidates, std::string* opened) {
  std::string why;
  for (const auto& name : candidates) {
    void* lib = nullptr;
    LtApi api{};
    std::string w;
    if (open_library(name, &lib, &api, &w)) {
      if (opened) *opened = name;
      dlclose(lib);
      return "";
    }
    why += (why.empty() ? "" : "; ") + w;
  }
  return why.empty() ? std::string("no candidate library names") : why;
}

bool cublaslt_available(std::string* detail) {
  CublasLt& lt = CublasLt::get();
  if (detail) *detail = lt.detail();
  return lt.loaded();
}

std::string matmul_gemm_path() {
  std::string d;
  if (cublaslt_available(&d)) return "cublaslt (" + d + ")";
  return "gemm_tc (" + d + ")";
}

bool gemm_cublaslt(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
                   int64_t M, int64_t N, int64_t K, Stream stream) {
  detail::check_matmul_args("cuda gemm_cublaslt", X, ldx, W, wtype, Y, ldy, M, N, K, false,
                            "has no cuBLASLt path (f16, bf16, q8_0, q4_0)");
  CublasLt& lt = CublasLt::get();
  if (!lt.loaded()) return false;
  // K == 0 would be Y = bias: gemm_tc does that without a library call.
  if (M == 0 || N == 0) return true;
  if (K == 0) return false;

  int dev = 0;
  detail::check(cudaGetDevice(&dev), "cuda gemm_cublaslt: cudaGetDevice");
  const LtHandle h = lt.handle(dev);
  const bool quant = wtype == DType::Q8_0 || wtype == DType::Q4_0;
  const int type16 = wtype == DType::BF16 ? kCudaR16BF : kCudaR16F;
  const int64_t ldh = int64_t(round_up(size_t(K), 8));  // 16-byte rows for the converted X
  // W as cuBLASLt reads it: the caller's rows (f16/bf16, ld K) or the dequantised copy (256-aligned).
  const unsigned align_w = quant ? 256u : alignment(W);
  const unsigned align_bias = bias ? alignment(bias) : 0u;
  const int64_t ldy_eff = M <= 1 && ldy < N ? N : ldy;
  const PlanKey key{dev, type16, M, N, K, K, ldh, ldy_eff, align_w, alignment(Y), align_bias};
  const std::shared_ptr<Plan> plan = lt.plan(key, h, bias);
  if (!plan->ok.load()) return false;

  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const size_t x_bytes = round_up(size_t(M) * size_t(ldh) * 2, 256);
  const size_t w_bytes = quant ? round_up(size_t(N) * size_t(K) * 2, 256) : 0;
  const size_t total = x_bytes + w_bytes + plan->workspace;
  void* scratch = nullptr;
  detail::check(cudaMallocAsync(&scratch, total, st), "cuda gemm_cublaslt: cudaMallocAsync");
  uint8_t* base = static_cast<uint8_t*>(scratch);
  void* xh = base;
  void* wh = quant ? base + x_bytes : const_cast<void*>(W);
  void* ws = plan->workspace ? base + x_bytes + w_bytes : nullptr;

  bool launched = false;
  try {
    const dim3 gx = rows_grid(M, K);
    if (wtype == DType::BF16)
      round_rows_kernel<__nv_bfloat16><<<gx, kConvThreads, 0, st>>>(X, ldx, static_cast<__nv_bfloat16*>(xh), ldh, int(M), int(K));
    else
      round_rows_kernel<__half><<<gx, kConvThreads, 0, st>>>(X, ldx, static_cast<__half*>(xh), ldh, int(M), int(K));
    detail::check_launch("cuda gemm_cublaslt: round X");
    if (quant) {
      const dim3 gw = rows_grid(N, K / 16);
      const auto* wq = static_cast<const uint8_t*>(W);
      const int64_t rb = int64_t(dtype_row_bytes(wtype, K));
      if (wtype == DType::Q8_0)
        dequant_rows_kernel<DType::Q8_0><<<gw, kConvThreads, 0, st>>>(wq, rb, static_cast<__half*>(wh), int(N), int(K));
      else
        dequant_rows_kernel<DType::Q4_0><<<gw, kConvThreads, 0, st>>>(wq, rb, static_cast<__half*>(wh), int(N), int(K));
      detail::check_launch("cuda gemm_cublaslt: dequantise W");
    }
    LtDesc desc = lt.make_desc(plan->bias_epilogue ? bias : nullptr);
    if (!desc) throw Error(ErrorCode::Internal, "cuda gemm_cublaslt: cublasLtMatmulDescCreate failed");
    const float alpha = 1.0f, beta = 0.0f;
    const LtStatus s = lt.api().matmul(h, desc, &alpha, wh, plan->a, xh, plan->b, &beta, Y, plan->d, Y, plan->d,
                                       &plan->algo, ws, plan->workspace, st);
    lt.api().desc_destroy(desc);
    // NOT_SUPPORTED (15), INVALID_VALUE (7), ARCH_MISMATCH (8): the configuration, not the
    // device, failed; nothing was written to Y, so gemm_tc runs this shape from now on.
    if (s == 15 || s == 7 || s == 8) {
      plan->ok.store(false);
    } else if (s != 0) {
      throw Error(ErrorCode::Internal, "cuda gemm_cublaslt: cublasLtMatmul failed (status " + std::to_string(s) + ")");
    } else {
      launched = true;
    }
    if (launched && bias && !plan->bias_epilogue) row_broadcast(RowOp::AddRow, Y, ldy_eff, bias, Y, ldy_eff, M, N, false, stream);
  } catch (...) {
    cudaFreeAsync(scratch, st);
    throw;
  }
  detail::check(cudaFreeAsync(scratch, st), "cuda gemm_cublaslt: cudaFreeAsync");
  return launched;
}

}  // namespace cuda
}  // namespace emollm
