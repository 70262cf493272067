// Backward (training) kernels on the GPU (cuda_kernels.h, "backward"): the adjoints of
// kernels/cpu/backward.h with the same contracts, for a CUDA trainer of the MVP. Written for
// correctness first: the products are f32 SIMT tiles and the attention backward recomputes the
// scores per kernel (three kernels, no n_q x n_kv matrix); tensor-core versions are to come.
// Every output element is reduced in one fixed order for a given shape, so results do not
// depend on timing.
#include <cuda_fp16.h>

#include <cmath>
#include <string>

#include "cuda_common.cuh"
#include "cuda_kernels.h"

namespace emollm {
namespace cuda {
namespace {

using detail::block_max;
using detail::block_sum;
using detail::f16_bits_to_f32;
using detail::grid_for;
using detail::warp_sum;

constexpr int NT = 256;

cudaStream_t st(Stream s) { return reinterpret_cast<cudaStream_t>(s); }

// ---------------------------------------------------------------- products
// C[R, Cn] (=|+=) sum_t A(r, t) B(t, c): A f32 at a[r * a_r + t * a_t]; B at b[t * b_t + c] of
// f32 (WT 0), bf16 bits (1) or f16 bits (2). 64 x 64 output tiles, 256 threads, each thread
// rows ty + 16 i and columns tx + 16 j (i, j < 4: conflict-free shared reads, coalesced
// stores); t ascending in steps of 16, so each output's sum runs in index order.
constexpr int TILE = 64, TK = 16;

template <int WT>
__device__ __forceinline__ float load_b(const void* b, int64_t i) {
  if constexpr (WT == 0) return __ldg(static_cast<const float*>(b) + i);
  else if constexpr (WT == 1) return detail::load_f32(static_cast<const uint16_t*>(b) + i);
  else return f16_bits_to_f32(__ldg(reinterpret_cast<const unsigned short*>(b) + i));
}

template <int WT>
__global__ void __launch_bounds__(NT) product_kernel(const float* a, int64_t a_r, int64_t a_t, const void* b,
                                                     int64_t b_t, float* c, int64_t ldc, int R, int Cn, int T,
                                                     bool accumulate) {
  __shared__ float As[TK][TILE];  // [t][r]
  __shared__ float Bs[TK][TILE];  // [t][c]
  const int r0 = blockIdx.y * TILE, c0 = blockIdx.x * TILE;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const bool a_t_contiguous = a_t == 1;  // load A along t (dY rows) or along r (dY columns)
  float acc[4][4] = {};
  for (int t0 = 0; t0 < T; t0 += TK) {
    for (int e = tid; e < TILE * TK; e += NT) {
      const int rr = a_t_contiguous ? e / TK : e % TILE, tt = a_t_contiguous ? e % TK : e / TILE;
      const int r = r0 + rr, t = t0 + tt;
      As[tt][rr] = (r < R && t < T) ? __ldg(a + int64_t(r) * a_r + int64_t(t) * a_t) : 0.0f;
    }
    for (int e = tid; e < TK * TILE; e += NT) {
      const int tt = e / TILE, cc = e % TILE;
      const int t = t0 + tt, col = c0 + cc;
      Bs[tt][cc] = (t < T && col < Cn) ? load_b<WT>(b, int64_t(t) * b_t + col) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int tt = 0; tt < TK; ++tt) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[tt][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) bv[j] = Bs[tt][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = r0 + ty + 16 * i;
    if (r >= R) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = c0 + tx + 16 * j;
      if (col >= Cn) continue;
      float* out = c + int64_t(r) * ldc + col;
      *out = accumulate ? *out + acc[i][j] : acc[i][j];
    }
  }
}

void launch_product(int wt, const float* a, int64_t a_r, int64_t a_t, const void* b, int64_t b_t, float* c,
                    int64_t ldc, int64_t R, int64_t Cn, int64_t T, bool accumulate, Stream s) {
  const dim3 grid(unsigned((Cn + TILE - 1) / TILE), unsigned((R + TILE - 1) / TILE));
  switch (wt) {
    case 0: product_kernel<0><<<grid, NT, 0, st(s)>>>(a, a_r, a_t, b, b_t, c, ldc, int(R), int(Cn), int(T), accumulate); break;
    case 1: product_kernel<1><<<grid, NT, 0, st(s)>>>(a, a_r, a_t, b, b_t, c, ldc, int(R), int(Cn), int(T), accumulate); break;
    default: product_kernel<2><<<grid, NT, 0, st(s)>>>(a, a_r, a_t, b, b_t, c, ldc, int(R), int(Cn), int(T), accumulate); break;
  }
}

// The CPU contracts' shape rules (M >= 0 rows of dY, N > 0, K > 0) and the grid's limits: the
// product's output has `out_rows` rows (M for dX, N for dW), 64 to a block row.
void check_product_shape(const char* what, int64_t M, int64_t N, int64_t K, int64_t out_rows) {
  EMOLLM_CHECK_ARG(M >= 0 && N > 0 && K > 0, std::string(what) + ": bad shape");
  EMOLLM_CHECK_ARG(M < (int64_t(1) << 31) && N < (int64_t(1) << 31) && K < (int64_t(1) << 31),
                   std::string(what) + ": shape too large");
  EMOLLM_CHECK_ARG((out_rows + TILE - 1) / TILE < 65536, std::string(what) + ": too many rows");
}

// dB[n] += sum_m dY[m, n], in double, m ascending.
__global__ void column_sum_kernel(const float* dy, int64_t lddy, float* db, int M, int N) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  double s = 0.0;
  for (int m = 0; m < M; ++m) s += double(__ldg(dy + int64_t(m) * lddy + n));
  db[n] += float(s);
}

// ---------------------------------------------------------------- rows and elementwise
__global__ void rmsnorm_backward_kernel(const float* x, int64_t ldx, const float* w, const float* dy, int64_t lddy,
                                        float* dx, int64_t lddx, int n, float eps, bool accumulate) {
  __shared__ float scratch[33];
  const float* xr = x + int64_t(blockIdx.x) * ldx;
  const float* dyr = dy + int64_t(blockIdx.x) * lddy;
  float* dxr = dx + int64_t(blockIdx.x) * lddx;
  float ss = 0.0f, dot = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float xv = xr[i], g = w ? __ldg(w + i) * dyr[i] : dyr[i];
    ss = fmaf(xv, xv, ss);
    dot = fmaf(xv, g, dot);
  }
  ss = block_sum(ss, scratch);
  dot = block_sum(dot, scratch);
  const float r = rsqrtf(ss / float(n) + eps);
  const float a = r, b = r * r * r * dot / float(n);
  // each element's dy is read before its dx is written, by the same thread (dx may alias dy)
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float g = w ? __ldg(w + i) * dyr[i] : dyr[i];
    const float d = a * g - b * xr[i];
    dxr[i] = accumulate ? dxr[i] + d : d;
  }
}

__global__ void gelu_erf_backward_kernel(const float* x, const float* dy, float* dx, int64_t n) {
  constexpr double kInvSqrt2 = 0.70710678118654752440, kInvSqrt2Pi = 0.39894228040143267794;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double v = x[i];
    const double cdf = 0.5 * (1.0 + erf(v * kInvSqrt2));
    const double pdf = kInvSqrt2Pi * exp(-0.5 * v * v);
    dx[i] = float(double(dy[i]) * (cdf + v * pdf));
  }
}

__global__ void silu_backward_kernel(const float* x, const float* dy, float* dx, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i], s = 1.0f / (1.0f + expf(-v));
    dx[i] = dy[i] * s * (1.0f + v * (1.0f - s));
  }
}

__global__ void swiglu_backward_kernel(const float* gate, const float* up, const float* dy, float* dgate, float* dup,
                                       int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float gv = gate[i], uv = up[i], d = dy[i];  // read before either output is written
    const float s = 1.0f / (1.0f + expf(-gv));
    dgate[i] = d * uv * s * (1.0f + gv * (1.0f - s));
    dup[i] = d * gv * s;
  }
}

// ---------------------------------------------------------------- attention
// Kernels over (row, head) blocks of ATT_NT threads = ATT_WARPS warps; a warp handles one score
// at a time (lanes over head_dim, up to ATT_MAXD / 32 elements a lane).
constexpr int ATT_WARPS = 4, ATT_NT = 32 * ATT_WARPS, ATT_MAXD = 256, ATT_PER_LANE = ATT_MAXD / 32;

struct AttnArgs {
  const float* q;
  const float* k;
  const float* v;
  const float* out;
  const float* dout;
  int64_t ldq, ldk, ldv, ldo;
  int n_q, n_kv, n_heads, n_kv_heads, D, group;
  float scale;
  bool causal;
  int64_t q_pos0;
};

// kv tokens [0, end) are visible to query i
__device__ __forceinline__ int visible_end(const AttnArgs& a, int i) {
  if (!a.causal) return a.n_kv;
  const int64_t e = a.q_pos0 + i + 1;
  return int(e < a.n_kv ? (e > 0 ? e : 0) : a.n_kv);
}

__device__ __forceinline__ float warp_dot(const float* x, const float* y, int D) {
  float s = 0.0f;
  for (int c = threadIdx.x % 32; c < D; c += 32) s = fmaf(x[c], y[c], s);
  return warp_sum(s);
}

// Per (query i, head h): D_i = dO_i . O_i and, when need_lse, the row's log-sum-exp (online
// max / sum per warp over its keys, then merged across warps in warp order).
__global__ void __launch_bounds__(ATT_NT) attention_stats_kernel(AttnArgs a, bool need_lse, float* lse, float* Dsum) {
  __shared__ float scratch[33];
  __shared__ float wm[ATT_WARPS], wl[ATT_WARPS];
  const int i = blockIdx.x, h = blockIdx.y, hk = h / a.group;
  const float* qi = a.q + int64_t(i) * a.ldq + int64_t(h) * a.D;
  const float* oi = a.out + int64_t(i) * a.ldo + int64_t(h) * a.D;
  const float* doi = a.dout + int64_t(i) * a.ldo + int64_t(h) * a.D;
  float d = 0.0f;
  for (int c = threadIdx.x; c < a.D; c += blockDim.x) d = fmaf(doi[c], oi[c], d);
  d = block_sum(d, scratch);
  if (threadIdx.x == 0) Dsum[int64_t(i) * a.n_heads + h] = d;
  if (!need_lse) return;
  const int warp = threadIdx.x / 32, end = visible_end(a, i);
  float m = -INFINITY, l = 0.0f;
  for (int j = warp; j < end; j += ATT_WARPS) {
    const float s = warp_dot(qi, a.k + int64_t(j) * a.ldk + int64_t(hk) * a.D, a.D) * a.scale;
    const float mn = fmaxf(m, s);
    l = l * expf(m - mn) + expf(s - mn);  // m = -inf at first: exp(-inf) = 0
    m = mn;
  }
  if (threadIdx.x % 32 == 0) { wm[warp] = m; wl[warp] = l; }
  __syncthreads();
  if (threadIdx.x == 0) {
    float M = -INFINITY;
    for (int w = 0; w < ATT_WARPS; ++w) M = fmaxf(M, wm[w]);
    float L = 0.0f;
    for (int w = 0; w < ATT_WARPS; ++w)
      if (wm[w] != -INFINITY) L += wl[w] * expf(wm[w] - M);
    lse[int64_t(i) * a.n_heads + h] = end > 0 ? M + logf(L) : -INFINITY;
  }
}

// Per (query i, head h): dq_i = scale sum_j P_ij (dO_i . v_j - D_i) k_j (overwritten).
__global__ void __launch_bounds__(ATT_NT) attention_dq_kernel(AttnArgs a, const float* lse, const float* Dsum, float* dq) {
  __shared__ float part[ATT_WARPS][ATT_MAXD];
  const int i = blockIdx.x, h = blockIdx.y, hk = h / a.group, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* qi = a.q + int64_t(i) * a.ldq + int64_t(h) * a.D;
  const float* doi = a.dout + int64_t(i) * a.ldo + int64_t(h) * a.D;
  const float l = lse[int64_t(i) * a.n_heads + h], Di = Dsum[int64_t(i) * a.n_heads + h];
  float acc[ATT_PER_LANE] = {};
  const int end = visible_end(a, i);
  for (int j = warp; j < end; j += ATT_WARPS) {
    const float* kj = a.k + int64_t(j) * a.ldk + int64_t(hk) * a.D;
    const float* vj = a.v + int64_t(j) * a.ldv + int64_t(hk) * a.D;
    const float p = expf(warp_dot(qi, kj, a.D) * a.scale - l);
    const float ds = p * (warp_dot(doi, vj, a.D) - Di) * a.scale;
#pragma unroll
    for (int u = 0; u < ATT_PER_LANE; ++u) {
      const int c = lane + 32 * u;
      if (c < a.D) acc[u] = fmaf(ds, kj[c], acc[u]);
    }
  }
#pragma unroll
  for (int u = 0; u < ATT_PER_LANE; ++u) {
    const int c = lane + 32 * u;
    if (c < a.D) part[warp][c] = acc[u];
  }
  __syncthreads();
  float* dqi = dq + int64_t(i) * a.ldq + int64_t(h) * a.D;
  for (int c = threadIdx.x; c < a.D; c += blockDim.x) {
    float s = 0.0f;
    for (int w = 0; w < ATT_WARPS; ++w) s += part[w][c];
    dqi[c] = s;
  }
}

// Per (kv token j, kv head hk): dv_j = sum P_ij dO_i and dk_j = scale sum dS_ij q_i over the
// group's heads and the queries that see j (overwritten).
__global__ void __launch_bounds__(ATT_NT) attention_dkdv_kernel(AttnArgs a, const float* lse, const float* Dsum,
                                                                float* dk, float* dv) {
  __shared__ float part_k[ATT_WARPS][ATT_MAXD];
  __shared__ float part_v[ATT_WARPS][ATT_MAXD];
  const int j = blockIdx.x, hk = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* kj = a.k + int64_t(j) * a.ldk + int64_t(hk) * a.D;
  const float* vj = a.v + int64_t(j) * a.ldv + int64_t(hk) * a.D;
  // queries that see j: all, or (causal) those with q_pos0 + i >= j
  int64_t first = a.causal ? int64_t(j) - a.q_pos0 : 0;
  if (first < 0) first = 0;
  const int64_t nvis = first < a.n_q ? a.n_q - first : 0;
  float acc_k[ATT_PER_LANE] = {}, acc_v[ATT_PER_LANE] = {};
  for (int64_t item = warp; item < nvis * a.group; item += ATT_WARPS) {
    const int g = int(item / nvis), i = int(first + item % nvis), h = hk * a.group + g;
    const float* qi = a.q + int64_t(i) * a.ldq + int64_t(h) * a.D;
    const float* doi = a.dout + int64_t(i) * a.ldo + int64_t(h) * a.D;
    const float p = expf(warp_dot(qi, kj, a.D) * a.scale - lse[int64_t(i) * a.n_heads + h]);
    const float ds = p * (warp_dot(doi, vj, a.D) - Dsum[int64_t(i) * a.n_heads + h]) * a.scale;
#pragma unroll
    for (int u = 0; u < ATT_PER_LANE; ++u) {
      const int c = lane + 32 * u;
      if (c < a.D) {
        acc_v[u] = fmaf(p, doi[c], acc_v[u]);
        acc_k[u] = fmaf(ds, qi[c], acc_k[u]);
      }
    }
  }
#pragma unroll
  for (int u = 0; u < ATT_PER_LANE; ++u) {
    const int c = lane + 32 * u;
    if (c < a.D) { part_k[warp][c] = acc_k[u]; part_v[warp][c] = acc_v[u]; }
  }
  __syncthreads();
  float* dkj = dk + int64_t(j) * a.ldk + int64_t(hk) * a.D;
  float* dvj = dv + int64_t(j) * a.ldv + int64_t(hk) * a.D;
  for (int c = threadIdx.x; c < a.D; c += blockDim.x) {
    float sk = 0.0f, sv = 0.0f;
    for (int w = 0; w < ATT_WARPS; ++w) { sk += part_k[w][c]; sv += part_v[w][c]; }
    dkj[c] = sk;
    dvj[c] = sv;
  }
}

// ---------------------------------------------------------------- loss, optimizer, norms
__global__ void cross_entropy_kernel(const float* logits, int64_t ld, const int32_t* targets, int V, float scale,
                                     float* dlogits, double* row_loss) {
  __shared__ float fscratch[33];
  __shared__ double dscratch[32];
  const int64_t r = blockIdx.x;
  const float* x = logits + r * ld;
  float mx = -INFINITY;
  for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, x[i]);
  mx = block_max(mx, fscratch);
  double z = 0.0;
  for (int i = threadIdx.x; i < V; i += blockDim.x) z += exp(double(x[i] - mx));
  z = block_sum(z, dscratch);
  const double lz = log(z) + double(mx);
  const int t = __ldg(targets + r);
  const bool valid = t >= 0 && t < V;
  if (threadIdx.x == 0) row_loss[r] = valid ? lz - double(x[t]) : nan("");
  if (!dlogits) return;
  float* d = dlogits + r * ld;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    float g = float(exp(double(x[i]) - lz)) * scale;
    if (i == t) g -= scale;
    d[i] = g;
  }
}

__global__ void adamw_kernel(float* value, const float* grad, float* m, float* v, int64_t n, AdamWStep s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = float(double(grad[i]) * s.clip);
    const float mi = s.b1 * m[i] + (1.0f - s.b1) * g;
    const float vi = s.b2 * v[i] + (1.0f - s.b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const double mh = double(mi) / s.bc1, vh = double(vi) / s.bc2;
    float x = value[i];
    x -= s.decay * x;
    x -= float(s.lr * mh / (sqrt(vh) + s.eps));
    value[i] = x;
  }
}

constexpr int SUMSQ_NT = 1024;
__global__ void __launch_bounds__(SUMSQ_NT) sum_squares_kernel(const float* x, int64_t n, double* out) {
  __shared__ double scratch[32];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += SUMSQ_NT) s += double(x[i]) * double(x[i]);
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) *out = s;
}

}  // namespace

// ---------------------------------------------------------------- public
void gemm_backward_x(const float* dY, int64_t lddy, const void* W, DType wtype, float* dX, int64_t lddx, int64_t M,
                     int64_t N, int64_t K, bool accumulate, Stream stream) {
  check_product_shape("cuda gemm_backward_x", M, N, K, M);
  EMOLLM_CHECK_ARG(M <= 1 || (lddy >= N && lddx >= K), "cuda gemm_backward_x: leading dimension too small");
  int wt = 0;
  switch (wtype) {
    case DType::F32: wt = 0; break;
    case DType::BF16: wt = 1; break;
    case DType::F16: wt = 2; break;
    default:
      throw Error(ErrorCode::Unsupported, std::string("cuda gemm_backward_x: weight dtype ") + dtype_name(wtype) +
                                              " (the GPU backward takes f32, f16 and bf16 weights)");
  }
  if (M == 0) return;
  EMOLLM_CHECK_ARG(dY && W && dX, "cuda gemm_backward_x: null pointer");
  launch_product(wt, dY, lddy, 1, W, K, dX, lddx, M, K, N, accumulate, stream);
  detail::check_launch("cuda gemm_backward_x");
}

void gemm_backward_w(const float* dY, int64_t lddy, const float* X, int64_t ldx, float* dW, float* dB, int64_t M,
                     int64_t N, int64_t K, Stream stream) {
  check_product_shape("cuda gemm_backward_w", M, N, K, N);
  EMOLLM_CHECK_ARG(M <= 1 || (lddy >= N && ldx >= K), "cuda gemm_backward_w: leading dimension too small");
  if (M == 0) return;
  EMOLLM_CHECK_ARG(dY && X && dW, "cuda gemm_backward_w: null pointer");
  if (dB) column_sum_kernel<<<unsigned((N + NT - 1) / NT), NT, 0, st(stream)>>>(dY, lddy, dB, int(M), int(N));
  launch_product(0, dY, 1, lddy, X, ldx, dW, K, N, K, M, true, stream);
  detail::check_launch("cuda gemm_backward_w");
}

void rmsnorm_backward(const float* x, int64_t ldx, const float* w, const float* dy, int64_t lddy, float* dx,
                      int64_t lddx, int64_t rows, int64_t n, float eps, bool accumulate, Stream stream) {
  EMOLLM_CHECK_ARG(rows >= 0 && n > 0 && rows < (int64_t(1) << 31) && n < (int64_t(1) << 31),
                   "cuda rmsnorm_backward: bad shape");
  EMOLLM_CHECK_ARG(rows <= 1 || (ldx >= n && lddy >= n && lddx >= n),
                   "cuda rmsnorm_backward: leading dimension smaller than n");
  if (rows == 0) return;
  EMOLLM_CHECK_ARG(x && dy && dx, "cuda rmsnorm_backward: null pointer");
  rmsnorm_backward_kernel<<<unsigned(rows), NT, 0, st(stream)>>>(x, ldx, w, dy, lddy, dx, lddx, int(n), eps,
                                                                 accumulate);
  detail::check_launch("cuda rmsnorm_backward");
}

void gelu_erf_backward(const float* x, const float* dy, float* dx, int64_t n, Stream stream) {
  EMOLLM_CHECK_ARG(n >= 0, "cuda gelu_erf_backward: negative n");
  if (n == 0) return;
  gelu_erf_backward_kernel<<<grid_for(n, NT), NT, 0, st(stream)>>>(x, dy, dx, n);
  detail::check_launch("cuda gelu_erf_backward");
}

void silu_backward(const float* x, const float* dy, float* dx, int64_t n, Stream stream) {
  EMOLLM_CHECK_ARG(n >= 0, "cuda silu_backward: negative n");
  if (n == 0) return;
  silu_backward_kernel<<<grid_for(n, NT), NT, 0, st(stream)>>>(x, dy, dx, n);
  detail::check_launch("cuda silu_backward");
}

void swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup, int64_t n,
                     Stream stream) {
  EMOLLM_CHECK_ARG(n >= 0, "cuda swiglu_backward: negative n");
  if (n == 0) return;
  swiglu_backward_kernel<<<grid_for(n, NT), NT, 0, st(stream)>>>(gate, up, dy, dgate, dup, n);
  detail::check_launch("cuda swiglu_backward");
}

size_t attention_backward_workspace_bytes(const AttentionParams& p) {
  return p.n_q > 0 && p.n_heads > 0 ? size_t(2 * p.n_q * p.n_heads) * sizeof(float) : 0;
}

void attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                        const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p, void* workspace,
                        size_t workspace_bytes, Stream stream) {
  const char* what = "cuda attention_backward";
  EMOLLM_CHECK_ARG(p.n_q >= 0 && p.n_kv > 0 && p.n_heads > 0 && p.n_kv_heads > 0 && p.head_dim > 0,
                   std::string(what) + ": bad shape");
  EMOLLM_CHECK_ARG(p.n_heads % p.n_kv_heads == 0, std::string(what) + ": n_heads not a multiple of n_kv_heads");
  EMOLLM_CHECK_ARG(p.n_q < 65536 && p.n_kv < (int64_t(1) << 31) && p.n_heads < 65536,
                   std::string(what) + ": shape too large");
  EMOLLM_CHECK_ARG(p.n_q <= 1 || p.ldq >= p.n_heads * p.head_dim, std::string(what) + ": ldq too small");
  EMOLLM_CHECK_ARG(p.n_q <= 1 || p.ldo >= p.n_heads * p.head_dim, std::string(what) + ": ldo too small");
  EMOLLM_CHECK_ARG(p.n_kv <= 1 || (p.ldk >= p.n_kv_heads * p.head_dim && p.ldv >= p.n_kv_heads * p.head_dim),
                   std::string(what) + ": ldk / ldv too small");
  if (p.head_dim > ATT_MAXD)
    throw Error(ErrorCode::Unsupported, std::string(what) + ": head_dim " + std::to_string(p.head_dim) + " > " +
                                            std::to_string(ATT_MAXD));
  if (p.kv_block_size > 0 || p.kv_dtype != DType::F32)
    throw Error(ErrorCode::Unsupported, std::string(what) + ": paged or 16-bit K/V (training keeps f32 K/V)");
  EMOLLM_CHECK_ARG(q && k && v && out && dout && dq && dk && dv, std::string(what) + ": null pointer");
  EMOLLM_CHECK_ARG(p.n_q == 0 || (workspace && workspace_bytes >= attention_backward_workspace_bytes(p)),
                   std::string(what) + ": workspace smaller than attention_backward_workspace_bytes");
  AttnArgs a{q, k, v, out, dout, p.ldq, p.ldk, p.ldv, p.ldo, int(p.n_q), int(p.n_kv), int(p.n_heads),
             int(p.n_kv_heads), int(p.head_dim), int(p.n_heads / p.n_kv_heads),
             p.scale != 0.0f ? p.scale : 1.0f / std::sqrt(float(p.head_dim)), p.causal, p.q_pos0};
  float* ws_lse = static_cast<float*>(workspace);
  float* ws_d = ws_lse + p.n_q * p.n_heads;
  if (p.n_q > 0) {
    const dim3 rows(unsigned(p.n_q), unsigned(p.n_heads));
    attention_stats_kernel<<<rows, ATT_NT, 0, st(stream)>>>(a, lse == nullptr, ws_lse, ws_d);
    const float* l = lse ? lse : ws_lse;
    attention_dq_kernel<<<rows, ATT_NT, 0, st(stream)>>>(a, l, ws_d, dq);
    attention_dkdv_kernel<<<dim3(unsigned(p.n_kv), unsigned(p.n_kv_heads)), ATT_NT, 0, st(stream)>>>(a, l, ws_d, dk,
                                                                                                      dv);
  } else {
    attention_dkdv_kernel<<<dim3(unsigned(p.n_kv), unsigned(p.n_kv_heads)), ATT_NT, 0, st(stream)>>>(a, ws_lse, ws_d,
                                                                                                      dk, dv);
  }
  detail::check_launch(what);
}

void cross_entropy(const float* logits, int64_t ld, const int32_t* targets, int64_t rows, int64_t V, float scale,
                   float* dlogits, double* row_loss, Stream stream) {
  EMOLLM_CHECK_ARG(rows >= 0 && V > 0 && rows < (int64_t(1) << 31) && V < (int64_t(1) << 31),
                   "cuda cross_entropy: bad shape");
  EMOLLM_CHECK_ARG(rows <= 1 || ld >= V, "cuda cross_entropy: ld smaller than V");
  if (rows == 0) return;
  EMOLLM_CHECK_ARG(logits && targets && row_loss, "cuda cross_entropy: null pointer");
  cross_entropy_kernel<<<unsigned(rows), NT, 0, st(stream)>>>(logits, ld, targets, int(V), scale, dlogits, row_loss);
  detail::check_launch("cuda cross_entropy");
}

void adamw_update(float* value, const float* grad, float* m, float* v, int64_t n, const AdamWStep& s, Stream stream) {
  EMOLLM_CHECK_ARG(n >= 0, "cuda adamw_update: negative n");
  if (n == 0) return;
  EMOLLM_CHECK_ARG(value && grad && m && v, "cuda adamw_update: null pointer");
  adamw_kernel<<<grid_for(n, NT), NT, 0, st(stream)>>>(value, grad, m, v, n, s);
  detail::check_launch("cuda adamw_update");
}

void sum_squares(const float* x, int64_t n, double* out, Stream stream) {
  EMOLLM_CHECK_ARG(n >= 0, "cuda sum_squares: negative n");
  EMOLLM_CHECK_ARG(out && (n == 0 || x), "cuda sum_squares: null pointer");
  sum_squares_kernel<<<1, SUMSQ_NT, 0, st(stream)>>>(x, n, out);
  detail::check_launch("cuda sum_squares");
}

}  // namespace cuda
}  // namespace emollm
