// CUDA kernel benchmarks (built when CUDA is enabled): the fused kernels of kernels/cuda against
// same-run unfused anchors, plus the device's copy bandwidth.
//   bench_cuda [reps]
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

#include "../../kernels/cpu/kernels.h"
#include "../../kernels/cuda/cuda_kernels.h"

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
  return 2.0 * double(bytes) / (ms * 1e-3) / 1e9;  // GB/s, read + write
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
  const float diff = bf16 ? -1.0f : max_abs_diff(o, o2, size_t(n_q * p.ldo));
  // causal: query i sees q_pos0 + i + 1 keys
  double pairs = 0;
  for (int64_t i = 0; i < n_q; ++i) pairs += causal ? double(p.q_pos0 + i + 1) : double(n_kv);
  const double flop = 4.0 * pairs * double(p.head_dim) * double(p.n_heads);
  const double kv_bytes = 2.0 * double(n_kv) * double(p.ldk) * (bf16 ? 2 : 4);
  std::printf("attention n_q=%-5lld n_kv=%-5lld %s %s  fused %8.3f ms %7.2f TFLOP/s %7.1f GB/s(KV)  | naive %8.3f ms "
              "%6.2f TFLOP/s | fused/naive speed x%.1f | max|diff| %.2e%s\n",
              (long long)n_q, (long long)n_kv, causal ? "causal" : "bidir ", bf16 ? "bf16kv" : "f32kv ", t_fused,
              flop / (t_fused * 1e-3) / 1e12, kv_bytes / (t_fused * 1e-3) / 1e9, t_naive,
              flop / (t_naive * 1e-3) / 1e12, t_naive / t_fused, double(diff),
              wsb ? " (split-KV)" : "");
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
              t_fused, flop / (t_fused * 1e-3) / 1e12, t_unfused, flop / (t_unfused * 1e-3) / 1e12,
              t_unfused / t_fused, double(diff));
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
    std::printf("copy probe (cudaMemcpy D2D, 2 GiB, read+write): %.0f GB/s\n", bandwidth_probe());
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
  return 0;
}
