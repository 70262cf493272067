// CUDA kernel benchmarks (built when CUDA is enabled): the kernels of kernels/cuda against
// same-run anchors and the device's measured peaks.
//   bench_cuda [reps]        (JSON of every row to $OUT/bench_cuda.json when OUT is set)
// Peaks (measured in this run, not datasheet figures):
//   tensor-core bf16: a kernel of back-to-back wmma 16x16x16 bf16 mma on register fragments.
//   HBM copy: cudaMemcpy device to device of 2 GiB (read + write bytes).
// Rows: GEMM at LLaMA-7B and CLIP-L shapes (bf16 weights; q4_0 / q8_0 at the qkvo shape), each
// as gemm_tc (ours, tensor cores) and as matmul's cuBLASLt path (gemm_cublaslt, opened at run
// time), in TFLOP/s and as % of cuBLASLt called directly on bf16 operands (the anchor; bench_cuda
// links it when the toolkit has cuBLASLt, else "n/a"); GEMV (decode, M = 1) in GB/s of weight bytes and % of the copy
// probe for bf16 / q8_0 / q4_0;
// Anchors:
//   attention: naive, scores materialised: S = scale Q K^T (masked) in device memory, a row
//              softmax kernel, then O = S V; one thread per score / output element.
//   mvp      : unfused per head: gemm(W1_h) + bias -> GELU kernel -> gemm(W2_h) + bias -> a
//              gated-accumulate kernel (the same tiled GEMM as the fused path, so the ratio
//              isolates the fusion).
// Times are means over `reps` launches after warm-up, measured with CUDA events.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include <mma.h>
#include <cuda_bf16.h>

#include <string>

#include "../../kernels/cpu/kernels.h"
#include "../../kernels/cuda/cuda_kernels.h"
#if defined(EMOLLM_HAVE_CUBLASLT)
#include <cublasLt.h>
#endif

using namespace emollm;

#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

namespace {

int g_reps = 20;
std::vector<std::string> g_json;  // one object per row
double g_tc_peak = 0, g_hbm_peak = 0;  // TFLOP/s, GB/s: this run's probes

std::string jnum(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.6g", v);
  return std::isfinite(v) ? std::string(b) : std::string("null");
}

double time_ms(const std::function<void()>& fn, int reps) {
  for (int i = 0; i < 3; ++i) fn();
  CK(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  CK(cudaEventRecord(a));
  for (int i = 0; i < reps; ++i) fn();
  CK(cudaEventRecord(b));
  CK(cudaEventSynchronize(b));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  CK(cudaGetLastError());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return double(ms) / reps;
}

// Work per second from a mean time in ms: TFLOP/s of `flop`, GB/s of `bytes`.
double tflop_per_s(double flop, double ms) { return flop / (ms * 1e-3) / 1e12; }
double gb_per_s(double bytes, double ms) { return bytes / (ms * 1e-3) / 1e9; }

__global__ void fill_kernel(float* p, size_t n, uint32_t seed, float amp) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
    p[i] = amp * (float(h & 0xffffff) / 8388608.0f - 1.0f);
  }
}
__global__ void to_bf16_kernel(const float* x, uint16_t* y, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    y[i] = uint16_t(__float_as_uint(x[i]) >> 16);
}
float* dev_rand(size_t n, uint32_t seed, float amp) {
  float* p;
  CK(cudaMalloc(&p, n * sizeof(float)));
  fill_kernel<<<1024, 256>>>(p, n, seed, amp);
  CK(cudaGetLastError());
  return p;
}
uint16_t* dev_bf16(const float* x, size_t n) {
  uint16_t* p;
  CK(cudaMalloc(&p, n * sizeof(uint16_t)));
  to_bf16_kernel<<<1024, 256>>>(x, p, n);
  CK(cudaGetLastError());
  return p;
}

// ---------------------------------------------------------------- naive attention anchor
__global__ void naive_scores(const float* q, const float* k, float* S, int n_q, int n_kv, int H, int group, int D,
                             int64_t ldq, int64_t ldk, float scale, int causal, int64_t q_pos0) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t total = int64_t(H) * n_q * n_kv;
  if (idx >= total) return;
  const int j = int(idx % n_kv), i = int((idx / n_kv) % n_q), h = int(idx / (int64_t(n_kv) * n_q));
  float s = 0.0f;
  const float* qr = q + i * ldq + h * D;
  const float* kr = k + j * ldk + (h / group) * D;
  for (int d = 0; d < D; ++d) s += qr[d] * kr[d];
  S[idx] = (causal && j > q_pos0 + i) ? -INFINITY : s * scale;
}
__global__ void naive_softmax(float* S, int n_kv) {
  float* row = S + int64_t(blockIdx.x) * n_kv;
  __shared__ float red[256];
  float m = -INFINITY;
  for (int j = threadIdx.x; j < n_kv; j += blockDim.x) m = fmaxf(m, row[j]);
  red[threadIdx.x] = m;
  __syncthreads();
  for (int s = 128; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
    __syncthreads();
  }
  m = red[0];
  __syncthreads();
  float sum = 0.0f;
  for (int j = threadIdx.x; j < n_kv; j += blockDim.x) {
    const float e = expf(row[j] - m);
    row[j] = e;
    sum += e;
  }
  red[threadIdx.x] = sum;
  __syncthreads();
  for (int s = 128; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  const float inv = 1.0f / red[0];
  for (int j = threadIdx.x; j < n_kv; j += blockDim.x) row[j] *= inv;
}
__global__ void naive_pv(const float* S, const float* v, float* out, int n_q, int n_kv, int H, int group, int D,
                         int64_t ldv, int64_t ldo) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= int64_t(n_q) * H * D) return;
  const int d = int(idx % D), h = int((idx / D) % H), i = int(idx / (int64_t(D) * H));
  const float* srow = S + (int64_t(h) * n_q + i) * n_kv;
  float acc = 0.0f;
  for (int j = 0; j < n_kv; ++j) acc += srow[j] * v[j * ldv + (h / group) * D + d];
  out[i * ldo + h * D + d] = acc;
}
void naive_attention(const float* q, const float* k, const float* v, float* out, float* S, const AttentionParams& p) {
  const int64_t ns = p.n_heads * p.n_q * p.n_kv;
  const float scale = 1.0f / std::sqrt(float(p.head_dim));
  const int group = int(p.n_heads / p.n_kv_heads);
  naive_scores<<<unsigned((ns + 255) / 256), 256>>>(q, k, S, int(p.n_q), int(p.n_kv), int(p.n_heads), group,
                                                   int(p.head_dim), p.ldq, p.ldk, scale, p.causal, p.q_pos0);
  naive_softmax<<<unsigned(p.n_heads * p.n_q), 256>>>(S, int(p.n_kv));
  const int64_t no = p.n_q * p.n_heads * p.head_dim;
  naive_pv<<<unsigned((no + 255) / 256), 256>>>(S, v, out, int(p.n_q), int(p.n_kv), int(p.n_heads), group,
                                               int(p.head_dim), p.ldv, p.ldo);
}

__global__ void max_abs_diff_kernel(const float* a, const float* b, size_t n, float* res) {
  float m = 0.0f;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    m = fmaxf(m, fabsf(a[i] - b[i]));
  atomicMax(reinterpret_cast<int*>(res), __float_as_int(m));  // non-negative floats order as ints
}
float max_abs_diff(const float* a, const float* b, size_t n) {
  float* r;
  CK(cudaMalloc(&r, sizeof(float)));
  CK(cudaMemset(r, 0, sizeof(float)));
  max_abs_diff_kernel<<<512, 256>>>(a, b, n, r);
  float h = 0;
  CK(cudaMemcpy(&h, r, sizeof(float), cudaMemcpyDeviceToHost));
  cudaFree(r);
  return h;
}

// ---------------------------------------------------------------- unfused mvp anchor
__global__ void gelu_kernel(float* x, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}
__global__ void gated_acc_kernel(const float* t, const float* g, float* y, int64_t T, int64_t Do, int first) {
  const int64_t n = T * Do;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = g[i % Do] * t[i];
    y[i] = first ? v : y[i] + v;
  }
}

double bandwidth_probe() {
  const size_t bytes = size_t(2) << 30;
  void *a, *b;
  CK(cudaMalloc(&a, bytes));
  CK(cudaMalloc(&b, bytes));
  CK(cudaMemset(a, 1, bytes));
  const double ms = time_ms([&] { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 10);
  cudaFree(a);
  cudaFree(b);
  return gb_per_s(2.0 * double(bytes), ms);  // read + write
}


// ---------------------------------------------------------------- peak probes
// Tensor-core bf16 peak: each warp keeps 4 accumulators busy with independent mma chains.
__global__ void tc_peak_kernel(float* sink, int iters) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[4];
  wmma::fill_fragment(a, __float2bfloat16(0.001f * (threadIdx.x & 7)));
  wmma::fill_fragment(b, __float2bfloat16(0.002f));
  for (int j = 0; j < 4; ++j) wmma::fill_fragment(c[j], 0.0f);
  for (int i = 0; i < iters; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) wmma::mma_sync(c[j], a, b, c[j]);
  float s = 0;
  for (int j = 0; j < 4; ++j) s += c[j].x[0];
  if (s == 12345.678f) sink[threadIdx.x] = s;  // keeps the work alive, never true in practice
}
double tc_peak_probe(int sms) {
  float* sink;
  CK(cudaMalloc(&sink, 1024 * sizeof(float)));
  const int iters = 4096, blocks = sms * 8, threads = 256;
  const double ms = time_ms([&] { tc_peak_kernel<<<blocks, threads>>>(sink, iters); }, 5);
  cudaFree(sink);
  const double flop = double(blocks) * (threads / 32) * iters * 4 * 2.0 * 16 * 16 * 16;
  return tflop_per_s(flop, ms);
}

#if defined(EMOLLM_HAVE_CUBLASLT)
// cuBLASLt anchor: Y[M,N] (f32) = Xb[M,K] (bf16) Wb[N,K]^T (bf16), f32 compute; column-major
// view: Y^T (N x M) = W^T' ... i.e. op(A) = A^T with A = W as K x N, B = X as K x M.
double cublaslt_ms(const uint16_t* Xb, const uint16_t* Wb, float* Y, int64_t M, int64_t N, int64_t K) {
  cublasLtHandle_t h;
  if (cublasLtCreate(&h) != CUBLAS_STATUS_SUCCESS) return -1;
  cublasLtMatmulDesc_t desc;
  cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
  cublasLtMatrixLayout_t la, lb, lc;
  cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, uint64_t(K), uint64_t(N), int64_t(K));
  cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, uint64_t(K), uint64_t(M), int64_t(K));
  cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, uint64_t(N), uint64_t(M), int64_t(N));
  const size_t ws_bytes = size_t(32) << 20;
  void* ws;
  CK(cudaMalloc(&ws, ws_bytes));
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulPreferenceCreate(&pref);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof ws_bytes);
  cublasLtMatmulHeuristicResult_t heur{};
  int found = 0;
  cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, lc, lc, pref, 1, &heur, &found);
  double ms = -1;
  if (found > 0) {
    const float alpha = 1.0f, beta = 0.0f;
    ms = time_ms([&] {
      cublasLtMatmul(h, desc, &alpha, Wb, la, Xb, lb, &beta, Y, lc, Y, lc, &heur.algo, ws, ws_bytes, nullptr);
    }, g_reps);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(desc);
  cublasLtDestroy(h);
  cudaFree(ws);
  return ms;
}
#endif

// Device weights [N, K] (f32 at wf) quantised on the host by the reference quantisers (the bytes
// GGUF holds) and uploaded as dtype wt; *bytes (when not null) is their size.
void* dev_quantised(const float* wf, DType wt, int64_t N, int64_t K, size_t* bytes = nullptr) {
  std::vector<float> hw(size_t(N * K));
  CK(cudaMemcpy(hw.data(), wf, hw.size() * 4, cudaMemcpyDeviceToHost));
  const size_t rb = dtype_row_bytes(wt, K);
  std::vector<uint8_t> hq(size_t(N) * rb);
  for (int64_t n = 0; n < N; ++n) quantize_row(wt, hw.data() + n * K, hq.data() + size_t(n) * rb, K);
  void* w;
  CK(cudaMalloc(&w, hq.size()));
  CK(cudaMemcpy(w, hq.data(), hq.size(), cudaMemcpyHostToDevice));
  if (bytes) *bytes = hq.size();
  return w;
}

// Weights [N, K] of dtype wt on the device: bf16 converted on the device, q8_0 / q4_0 quantised
// on the host (dev_quantised).
void* dev_weights(const float* wf, DType wt, int64_t N, int64_t K) {
  if (wt == DType::BF16) return dev_bf16(wf, size_t(N * K));
  return dev_quantised(wf, wt, N, K);
}

// One GEMM shape, three ways in this run: gemm_tc (ours, wmma), the cuBLASLt path of matmul
// (gemm_cublaslt: X rounded, q8_0/q4_0 dequantised, then cublasLtMatmul through dlopen) and
// cuBLASLt called directly on bf16 X and W (the anchor; X already bf16, so no conversion).
// "ms" / "tflops" / "ratio_to_cublaslt" are what matmul runs: the path when it ran, else gemm_tc.
void bench_gemm(DType wt, const char* shape, int64_t M, int64_t N, int64_t K) {
  float* x = dev_rand(size_t(M * K), 21, 1.0f);
  float* wf = dev_rand(size_t(N * K), 22, 0.05f);
  void* w = dev_weights(wf, wt, N, K);
  float *y_tc, *y_lt;
  CK(cudaMalloc(&y_tc, size_t(M * N) * 4));
  CK(cudaMalloc(&y_lt, size_t(M * N) * 4));
  const double flop = 2.0 * double(M) * double(N) * double(K);
  auto tflops = [&](double ms) { return ms > 0 ? tflop_per_s(flop, ms) : -1.0; };
  const double t_tc = time_ms([&] { cuda::gemm_tc(x, K, w, wt, nullptr, y_tc, N, M, N, K, nullptr); }, g_reps);
  double t_lt = -1;
  if (cuda::gemm_cublaslt(x, K, w, wt, nullptr, y_lt, N, M, N, K, nullptr))
    t_lt = time_ms([&] { cuda::gemm_cublaslt(x, K, w, wt, nullptr, y_lt, N, M, N, K, nullptr); }, g_reps);
  double t_direct = -1, diff_direct = -1;
#if defined(EMOLLM_HAVE_CUBLASLT)
  uint16_t* xb = dev_bf16(x, size_t(M * K));
  uint16_t* wb = wt == DType::BF16 ? static_cast<uint16_t*>(w) : dev_bf16(wf, size_t(N * K));
  float* y2;
  CK(cudaMalloc(&y2, size_t(M * N) * 4));
  t_direct = cublaslt_ms(xb, wb, y2, M, N, K);
  if (t_direct > 0 && wt == DType::BF16) diff_direct = max_abs_diff(t_lt > 0 ? y_lt : y_tc, y2, size_t(M * N));
  cudaFree(xb);
  if (wb != w) cudaFree(wb);
  cudaFree(y2);
#endif
  const double diff_tc = t_lt > 0 ? double(max_abs_diff(y_lt, y_tc, size_t(M * N))) : -1.0;
  const double t = t_lt > 0 ? t_lt : t_tc;
  auto pct = [&](double ms) { return ms > 0 && t_direct > 0 ? jnum(100.0 * t_direct / ms) + "%" : std::string("n/a"); };
  std::printf("gemm %-5s %-22s M=%-5lld N=%-6lld K=%-5lld gemm_tc %8.3f ms %7.2f TFLOP/s | cublaslt path %s | "
              "vs cuBLASLt direct%s: gemm_tc %s, path %s\n",
              dtype_name(wt), shape, (long long)M, (long long)N, (long long)K, t_tc, tflops(t_tc),
              t_lt > 0 ? (jnum(t_lt) + " ms " + jnum(tflops(t_lt)) + " TFLOP/s (x" + jnum(t_tc / t_lt) + " vs gemm_tc)").c_str()
                       : "n/a (not loaded or no algorithm)",
              t_direct > 0 ? (" (bf16, " + jnum(t_direct) + " ms)").c_str() : " n/a (built without cuBLASLt)",
              pct(t_tc).c_str(), pct(t_lt).c_str());
  if (diff_tc >= 0 || diff_direct >= 0)
    std::printf("  max|path - gemm_tc| %.2e, max|ours - cuBLASLt direct| %s\n", diff_tc,
                diff_direct >= 0 ? jnum(diff_direct).c_str() : "n/a (other operands)");
  g_json.push_back("{\"op\":\"gemm\",\"dtype\":\"" + std::string(dtype_name(wt)) + "\",\"shape\":\"" +
                   std::string(shape) + "\",\"M\":" + std::to_string(M) + ",\"N\":" + std::to_string(N) +
                   ",\"K\":" + std::to_string(K) + ",\"ms\":" + jnum(t) + ",\"tflops\":" + jnum(tflops(t)) +
                   ",\"pct_tc_peak\":" + jnum(100.0 * tflops(t) / g_tc_peak) + ",\"ratio_to_cublaslt\":" +
                   (t_direct > 0 ? jnum(t_direct / t) : "null") + ",\"gemm_tc_ms\":" + jnum(t_tc) +
                   ",\"cublaslt_path_ms\":" + (t_lt > 0 ? jnum(t_lt) : "null") + ",\"cublaslt_direct_ms\":" +
                   (t_direct > 0 ? jnum(t_direct) : "null") + ",\"max_diff_path_vs_gemm_tc\":" +
                   (diff_tc >= 0 ? jnum(diff_tc) : "null") + "}");
  cudaFree(x); cudaFree(wf); cudaFree(w); cudaFree(y_tc); cudaFree(y_lt);
}

void bench_gemv(DType wt, int64_t N, int64_t K) {
  float* x = dev_rand(size_t(K), 31, 1.0f);
  float* wf = dev_rand(size_t(N * K), 32, 0.05f);
  // Every dtype (bf16 too) quantised on the host: the bytes are what GGUF holds.
  size_t w_bytes = 0;
  void* w = dev_quantised(wf, wt, N, K, &w_bytes);
  float* y;
  CK(cudaMalloc(&y, size_t(N) * 4));
  const double t = time_ms([&] { cuda::matmul(x, K, w, wt, nullptr, y, N, 1, N, K, nullptr); }, 10 * g_reps);
  const double gbs = gb_per_s(double(w_bytes), t);
  std::printf("gemv %-5s N=%-6lld K=%-5lld %8.4f ms %7.1f GB/s (weights) %5.1f%% of copy probe\n", dtype_name(wt),
              (long long)N, (long long)K, t, gbs, 100.0 * gbs / g_hbm_peak);
  g_json.push_back("{\"op\":\"gemv\",\"dtype\":\"" + std::string(dtype_name(wt)) + "\",\"N\":" + std::to_string(N) +
                   ",\"K\":" + std::to_string(K) + ",\"ms\":" + jnum(t) + ",\"gbps\":" + jnum(gbs) +
                   ",\"pct_copy_peak\":" + jnum(100.0 * gbs / g_hbm_peak) + "}");
  cudaFree(x); cudaFree(wf); cudaFree(w); cudaFree(y);
}

void bench_attention(int64_t n_q, int64_t n_kv, bool causal, bool bf16) {
  AttentionParams p;
  p.n_q = n_q; p.n_kv = n_kv; p.n_heads = 32; p.n_kv_heads = 32; p.head_dim = 128;
  p.ldq = p.ldo = p.ldk = p.ldv = 32 * 128;
  p.causal = causal; p.q_pos0 = causal ? n_kv - n_q : 0;
  float* q = dev_rand(size_t(n_q * p.ldq), 1, 1.0f);
  float* k = dev_rand(size_t(n_kv * p.ldk), 2, 1.0f);
  float* v = dev_rand(size_t(n_kv * p.ldv), 3, 1.0f);
  uint16_t* kb = bf16 ? dev_bf16(k, size_t(n_kv * p.ldk)) : nullptr;
  uint16_t* vb = bf16 ? dev_bf16(v, size_t(n_kv * p.ldv)) : nullptr;
  float *o, *o2, *S;
  CK(cudaMalloc(&o, size_t(n_q * p.ldo) * 4));
  CK(cudaMalloc(&o2, size_t(n_q * p.ldo) * 4));
  CK(cudaMalloc(&S, size_t(p.n_heads * n_q * n_kv) * 4));
  const size_t wsb = cuda::attention_workspace_bytes(p);
  void* ws = nullptr;
  if (wsb) CK(cudaMalloc(&ws, wsb));
  const DType kt = bf16 ? DType::BF16 : DType::F32;
  const void* kk = bf16 ? static_cast<const void*>(kb) : k;
  const void* vv = bf16 ? static_cast<const void*>(vb) : v;
  const int reps = n_q == 1 ? 10 * g_reps : g_reps;
  const double t_fused = time_ms([&] { cuda::attention(q, kk, vv, kt, o, p, ws, wsb, nullptr); }, reps);
  const double t_naive = time_ms([&] { naive_attention(q, k, v, o2, S, p); }, std::max(3, reps / 4));
  // Tensor-core flash attention (bf16 operands) on the same inputs, prefill shapes.
  double t_tc = -1;
  float diff_tc = -1.0f;
  if (n_q >= 16 && cuda::attention_tc_supported(p, kt)) {
    t_tc = time_ms([&] { cuda::attention_tc(q, kk, vv, kt, o2, p, nullptr); }, reps);
    diff_tc = max_abs_diff(o, o2, size_t(n_q * p.ldo));
  }
  const float diff = bf16 ? -1.0f : max_abs_diff(o, o2, size_t(n_q * p.ldo));
  // causal: query i sees q_pos0 + i + 1 keys
  double pairs = 0;
  for (int64_t i = 0; i < n_q; ++i) pairs += causal ? double(p.q_pos0 + i + 1) : double(n_kv);
  const double flop = 4.0 * pairs * double(p.head_dim) * double(p.n_heads);
  const double kv_bytes = 2.0 * double(n_kv) * double(p.ldk) * (bf16 ? 2 : 4);
  const double tf_fused = tflop_per_s(flop, t_fused), kv_gbps = gb_per_s(kv_bytes, t_fused);
  std::printf("attention n_q=%-5lld n_kv=%-5lld %s %s  fused %8.3f ms %7.2f TFLOP/s %7.1f GB/s(KV)  | naive %8.3f ms "
              "%6.2f TFLOP/s | fused/naive speed x%.1f | max|diff| %.2e%s\n",
              (long long)n_q, (long long)n_kv, causal ? "causal" : "bidir ", bf16 ? "bf16kv" : "f32kv ", t_fused,
              tf_fused, kv_gbps, t_naive, tflop_per_s(flop, t_naive), t_naive / t_fused, double(diff),
              wsb ? " (split-KV)" : "");
  if (t_tc > 0) {
    const double tf = tflop_per_s(flop, t_tc);
    std::printf("attention_tc (tensor cores, bf16 operands) %8.3f ms %7.2f TFLOP/s %5.1f%% of tc probe | x%.1f vs f32 "
                "flash | max|diff vs f32 flash| %.2e\n",
                t_tc, tf, 100.0 * tf / g_tc_peak, t_fused / t_tc, double(diff_tc));
    g_json.push_back("{\"op\":\"attention_tc\",\"n_q\":" + std::to_string(n_q) + ",\"n_kv\":" +
                     std::to_string(n_kv) + ",\"causal\":" + (causal ? "true" : "false") + ",\"ms\":" + jnum(t_tc) +
                     ",\"tflops\":" + jnum(tf) + ",\"pct_tc_peak\":" + jnum(100.0 * tf / g_tc_peak) + "}");
  }
  g_json.push_back("{\"op\":\"attention\",\"n_q\":" + std::to_string(n_q) + ",\"n_kv\":" + std::to_string(n_kv) +
                   ",\"causal\":" + (causal ? "true" : "false") + ",\"kv\":\"" + (bf16 ? "bf16" : "f32") +
                   "\",\"ms\":" + jnum(t_fused) + ",\"tflops\":" + jnum(tf_fused) + ",\"pct_tc_peak\":" +
                   jnum(100.0 * tf_fused / g_tc_peak) + ",\"kv_gbps\":" + jnum(kv_gbps) + ",\"naive_ms\":" +
                   jnum(t_naive) + "}");
  cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o); cudaFree(o2); cudaFree(S);
  if (kb) cudaFree(kb);
  if (vb) cudaFree(vb);
  if (ws) cudaFree(ws);
}

void bench_mvp(bool bf16) {
  const int64_t T = 576, Din = 1024, Dh = 4096, Do = 4096, H = 3;
  MvpProjectionParams p;
  p.tokens = T; p.d_in = Din; p.d_hid = Dh; p.d_out = Do; p.n_heads = H;
  float* x = dev_rand(size_t(T * Din), 11, 1.0f);
  float* w1 = dev_rand(size_t(H * Dh * Din), 12, 1.0f / 32.0f);
  float* b1 = dev_rand(size_t(H * Dh), 13, 0.1f);
  float* w2 = dev_rand(size_t(H * Do * Dh), 14, 1.0f / 64.0f);
  float* b2 = dev_rand(size_t(H * Do), 15, 0.1f);
  float* g = dev_rand(size_t(H * Do), 16, 1.0f);
  uint16_t* w1b = bf16 ? dev_bf16(w1, size_t(H * Dh * Din)) : nullptr;
  uint16_t* w2b = bf16 ? dev_bf16(w2, size_t(H * Do * Dh)) : nullptr;
  const DType wt = bf16 ? DType::BF16 : DType::F32;
  const void* W1 = bf16 ? static_cast<const void*>(w1b) : w1;
  const void* W2 = bf16 ? static_cast<const void*>(w2b) : w2;
  const size_t es = bf16 ? 2 : 4;
  float *y, *y2, *hid, *tmp;
  CK(cudaMalloc(&y, size_t(T * Do) * 4));
  CK(cudaMalloc(&y2, size_t(T * Do) * 4));
  CK(cudaMalloc(&hid, size_t(T * Dh) * 4));
  CK(cudaMalloc(&tmp, size_t(T * Do) * 4));
  const size_t wsb = cuda::mvp_projection_workspace_bytes(p);
  void* ws;
  CK(cudaMalloc(&ws, wsb));
  const double t_fused = time_ms([&] { cuda::mvp_projection(x, W1, b1, W2, b2, g, wt, y, p, ws, wsb, nullptr); },
                                 g_reps);
  auto unfused = [&] {
    for (int64_t h = 0; h < H; ++h) {
      cuda::gemm(x, Din, static_cast<const char*>(W1) + size_t(h * Dh * Din) * es, wt, b1 + h * Dh, hid, Dh, T, Dh,
                 Din, nullptr);
      gelu_kernel<<<1024, 256>>>(hid, size_t(T * Dh));
      cuda::gemm(hid, Dh, static_cast<const char*>(W2) + size_t(h * Do * Dh) * es, wt, b2 + h * Do, tmp, Do, T, Do,
                 Dh, nullptr);
      gated_acc_kernel<<<1024, 256>>>(tmp, g + h * Do, y2, T, Do, h == 0);
    }
  };
  const double t_unfused = time_ms(unfused, g_reps);
  const float diff = max_abs_diff(y, y2, size_t(T * Do));
  const double flop = 2.0 * double(T) * double(H) * (double(Dh) * Din + double(Do) * Dh);
  std::printf("mvp_projection T=%lld Din=%lld Dhid=%lld Dout=%lld H=%lld %s  fused %7.3f ms %6.2f TFLOP/s | unfused "
              "%7.3f ms %6.2f TFLOP/s | fused/unfused speed x%.2f | max|diff| %.2e\n",
              (long long)T, (long long)Din, (long long)Dh, (long long)Do, (long long)H, bf16 ? "bf16w" : "f32w ",
              t_fused, tflop_per_s(flop, t_fused), t_unfused, tflop_per_s(flop, t_unfused),
              t_unfused / t_fused, double(diff));
  g_json.push_back(std::string("{\"op\":\"mvp_projection\",\"w\":\"") + (bf16 ? "bf16" : "f32") + "\",\"ms\":" +
                   jnum(t_fused) + ",\"tflops\":" + jnum(tflop_per_s(flop, t_fused)) + ",\"unfused_ms\":" +
                   jnum(t_unfused) + "}");
  cudaFree(x); cudaFree(w1); cudaFree(b1); cudaFree(w2); cudaFree(b2); cudaFree(g);
  if (w1b) cudaFree(w1b);
  if (w2b) cudaFree(w2b);
  cudaFree(y); cudaFree(y2); cudaFree(hid); cudaFree(tmp); cudaFree(ws);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) g_reps = std::max(1, std::atoi(argv[1]));
  int dev = 0;
  CK(cudaGetDevice(&dev));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, dev));
  std::printf("device: %s, sm_%d%d, %d SMs, %.0f MiB, L2 %d MiB\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount, double(prop.totalGlobalMem) / (1 << 20), prop.l2CacheSize >> 20);
  try {
    g_hbm_peak = bandwidth_probe();
    g_tc_peak = tc_peak_probe(prop.multiProcessorCount);
    std::printf("copy probe (cudaMemcpy D2D, 2 GiB, read+write): %.0f GB/s\n", g_hbm_peak);
    std::printf("tensor-core probe (wmma bf16, register operands): %.1f TFLOP/s\n", g_tc_peak);
    // LLaMA-7B projections (d 4096, ffn 11008) at prefill M and CLIP-L/14-336 (577 tokens, d 1024, ffn 4096).
    std::printf("matmul GEMM path (M > 8): %s\n", cuda::matmul_gemm_path().c_str());
    bench_gemm(DType::BF16, "llama7b qkvo M=512", 512, 4096, 4096);
    bench_gemm(DType::BF16, "llama7b ffn-up M=512", 512, 11008, 4096);
    bench_gemm(DType::BF16, "llama7b ffn-down M=512", 512, 4096, 11008);
    bench_gemm(DType::BF16, "llama7b qkvo M=2048", 2048, 4096, 4096);
    bench_gemm(DType::BF16, "clip-l attn", 577, 1024, 1024);
    bench_gemm(DType::BF16, "clip-l mlp-up", 577, 4096, 1024);
    // Quantised weights: the path dequantises W to f16 per call; M=16 / 32 check where that pays
    // (matmul takes the path from kCublasLtQuantMinRows = 32 rows).
    bench_gemm(DType::Q4_0, "llama7b qkvo M=512", 512, 4096, 4096);
    bench_gemm(DType::Q8_0, "llama7b qkvo M=512", 512, 4096, 4096);
    bench_gemm(DType::Q4_0, "llama7b qkvo M=32", 32, 4096, 4096);
    bench_gemm(DType::Q4_0, "llama7b qkvo M=16", 16, 4096, 4096);
    for (DType wt : {DType::BF16, DType::Q8_0, DType::Q4_0}) {
      bench_gemv(wt, 4096, 4096);
      bench_gemv(wt, 11008, 4096);
      bench_gemv(wt, 32000, 4096);
    }
    bench_attention(512, 512, true, false);
    bench_attention(2048, 2048, true, false);
    bench_attention(2048, 2048, false, false);
    bench_attention(2048, 2048, true, true);
    bench_attention(1, 2048, true, false);
    bench_attention(1, 8192, true, false);
    bench_attention(1, 8192, true, true);
    bench_mvp(false);
    bench_mvp(true);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda: %s\n", e.what());
    return 1;
  }
  if (const char* out = std::getenv("OUT")) {
    const std::string path = std::string(out) + "/bench_cuda.json";
    FILE* f = std::fopen(path.c_str(), "w");
    if (!f) {
      std::fprintf(stderr, "bench_cuda: cannot write %s\n", path.c_str());
      return 1;
    }
    std::fprintf(f, "{\"device\":\"%s\",\"sm\":%d%d,\"copy_peak_gbps\":%s,\"tc_peak_tflops\":%s,\"rows\":[\n",
                 prop.name, prop.major, prop.minor, jnum(g_hbm_peak).c_str(), jnum(g_tc_peak).c_str());
    for (size_t i = 0; i < g_json.size(); ++i) std::fprintf(f, "%s%s\n", g_json[i].c_str(), i + 1 < g_json.size() ? "," : "");
    std::fprintf(f, "]}\n");
    std::fclose(f);
    std::printf("wrote %s\n", path.c_str());
  }
  return 0;
}
