// Tiled shared-memory GEMM (f32 SIMT, f32 accumulation; F32 or BF16 weights) with fused
// epilogues, and the fused EmoLLM multi-perspective projection built on it.
//
// One kernel covers both uses:
//   C[m, n] = epi( sum_{s < n_seg} gate_s[n] * ( sum_k A[m, s*a_seg + k] * W_s[n, k] + bias_s[n] ) )
// with W_s = W + s*w_seg (elements), bias_s = bias + s*bias_seg, gate_s = gate + s*gate_seg
// (gate == null: weight 1), epi = GELU(erf) or identity. n_seg = 1 is a plain GEMM (+ bias, + GELU);
// n_seg = H over the heads' second layers is the gated head sum, accumulated in registers, so
// per-head outputs never reach device memory.
//
// Tiles: 128 x 128 outputs per block of 256 threads (8 x 8 per thread), K in steps of 8,
// double-buffered shared memory with register prefetch of the next K step.
#include "cuda_common.cuh"
#include "cuda_kernels.h"

namespace emollm {
namespace cuda {
namespace {

constexpr int BM = 128, BN = 128, BK = 8, NT = 256;

struct GemmArgs {
  const float* A;
  int64_t lda, a_seg;
  const void* W;
  int64_t ldw, w_seg;
  const float* bias;
  int64_t bias_seg;
  const float* gate;
  int64_t gate_seg;
  float* C;
  int64_t ldc;
  int M, N, K, n_seg;
  bool vec_a, vec_w, vec_c;  // 16-byte A loads, 16/8-byte W loads, 16-byte C stores are safe
};

__device__ __forceinline__ float gelu_erf_f(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// Loads 4 consecutive K elements of row `row` starting at k (zero outside [0,rows) x [0,K)).
__device__ __forceinline__ void load4(const float* base, int64_t ld, int row, int rows, int k, int K, bool vec,
                                      float v[4]) {
  if (row < rows && vec && k + 3 < K) {
    const float4 t = __ldg(reinterpret_cast<const float4*>(base + int64_t(row) * ld + k));
    v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
    return;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e)
    v[e] = (row < rows && k + e < K) ? __ldg(base + int64_t(row) * ld + k + e) : 0.0f;
}
__device__ __forceinline__ void load4(const uint16_t* base, int64_t ld, int row, int rows, int k, int K, bool vec,
                                      float v[4]) {
  if (row < rows && vec && k + 3 < K) {
    const uint2 t = __ldg(reinterpret_cast<const uint2*>(base + int64_t(row) * ld + k));
    v[0] = detail::bf16_bits_to_f32(t.x & 0xffffu); v[1] = detail::bf16_bits_to_f32(t.x >> 16);
    v[2] = detail::bf16_bits_to_f32(t.y & 0xffffu); v[3] = detail::bf16_bits_to_f32(t.y >> 16);
    return;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e)
    v[e] = (row < rows && k + e < K) ? detail::load_f32(base + int64_t(row) * ld + k + e) : 0.0f;
}

template <typename WT, bool GELU>
__global__ void __launch_bounds__(NT) gemm_seg_kernel(GemmArgs a) {
  __shared__ __align__(16) float As[2][BK][BM + 4];
  __shared__ __align__(16) float Ws[2][BK][BN + 4];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int lrow = tid / 2, lk = (tid % 2) * 4;  // loader: one row, 4 consecutive k
  const WT* W = static_cast<const WT*>(a.W);

  float out[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) out[i][j] = 0.0f;

  const int nk = (a.K + BK - 1) / BK;
  for (int s = 0; s < a.n_seg; ++s) {
    const float* As_g = a.A + int64_t(s) * a.a_seg;
    const WT* Ws_g = W + int64_t(s) * a.w_seg;
    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    float ra[4], rw[4];
    load4(As_g, a.lda, m0 + lrow, a.M, lk, a.K, a.vec_a, ra);
    load4(Ws_g, a.ldw, n0 + lrow, a.N, lk, a.K, a.vec_w, rw);
#pragma unroll
    for (int e = 0; e < 4; ++e) { As[0][lk + e][lrow] = ra[e]; Ws[0][lk + e][lrow] = rw[e]; }
    __syncthreads();

    for (int kt = 0; kt < nk; ++kt) {
      const int cur = kt & 1;
      if (kt + 1 < nk) {
        const int k = (kt + 1) * BK + lk;
        load4(As_g, a.lda, m0 + lrow, a.M, k, a.K, a.vec_a, ra);
        load4(Ws_g, a.ldw, n0 + lrow, a.N, k, a.K, a.vec_w, rw);
      }
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        const float4 a0 = *reinterpret_cast<const float4*>(&As[cur][kk][ty * 4]);
        const float4 a1 = *reinterpret_cast<const float4*>(&As[cur][kk][ty * 4 + 64]);
        const float4 b0 = *reinterpret_cast<const float4*>(&Ws[cur][kk][tx * 4]);
        const float4 b1 = *reinterpret_cast<const float4*>(&Ws[cur][kk][tx * 4 + 64]);
        const float av[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        const float bv[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
      if (kt + 1 < nk) {
#pragma unroll
        for (int e = 0; e < 4; ++e) { As[cur ^ 1][lk + e][lrow] = ra[e]; Ws[cur ^ 1][lk + e][lrow] = rw[e]; }
      }
      __syncthreads();
    }

    // Fold this segment into the output: out += gate_s * (acc + bias_s).
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int n = n0 + (j < 4 ? tx * 4 + j : 64 + tx * 4 + j - 4);
      float b = 0.0f, g = 1.0f;
      if (n < a.N) {
        if (a.bias) b = __ldg(a.bias + int64_t(s) * a.bias_seg + n);
        if (a.gate) g = __ldg(a.gate + int64_t(s) * a.gate_seg + n);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) out[i][j] = fmaf(g, acc[i][j] + b, out[i][j]);
    }
  }

  // Store (rows ty*4+i and 64+ty*4+i; columns tx*4+j and 64+tx*4+j).
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int m = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
    if (m >= a.M) continue;
    float* crow = a.C + int64_t(m) * a.ldc;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int n = n0 + half * 64 + tx * 4;
      float v[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) v[e] = GELU ? gelu_erf_f(out[i][half * 4 + e]) : out[i][half * 4 + e];
      if (a.vec_c && n + 3 < a.N) {
        *reinterpret_cast<float4*>(crow + n) = make_float4(v[0], v[1], v[2], v[3]);
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (n + e < a.N) crow[n + e] = v[e];
      }
    }
  }
}

void launch_gemm_seg(const GemmArgs& a0, DType wtype, bool gelu, Stream stream, const char* what) {
  if (a0.M == 0 || a0.N == 0) return;
  GemmArgs a = a0;
  const size_t wbytes = wtype == DType::BF16 ? 2 : 4;
  a.vec_a = detail::aligned(a.A, 16) && a.lda % 4 == 0 && a.a_seg % 4 == 0 && a.K % 4 == 0;
  a.vec_w = detail::aligned(a.W, 4 * wbytes) && a.ldw % 4 == 0 && a.w_seg % 4 == 0 && a.K % 4 == 0;
  a.vec_c = detail::aligned(a.C, 16) && a.ldc % 4 == 0;
  const dim3 grid(unsigned((a.N + BN - 1) / BN), unsigned((a.M + BM - 1) / BM));
  EMOLLM_CHECK_ARG((a.M + BM - 1) / BM <= 65535, "cuda gemm: too many rows");
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  if (wtype == DType::F32) {
    if (gelu) gemm_seg_kernel<float, true><<<grid, NT, 0, st>>>(a);
    else gemm_seg_kernel<float, false><<<grid, NT, 0, st>>>(a);
  } else {
    if (gelu) gemm_seg_kernel<uint16_t, true><<<grid, NT, 0, st>>>(a);
    else gemm_seg_kernel<uint16_t, false><<<grid, NT, 0, st>>>(a);
  }
  detail::check_launch(what);
}

void check_wtype(DType t, const char* what) {
  if (t != DType::F32 && t != DType::BF16)
    throw Error(ErrorCode::Unsupported, std::string(what) + ": weights must be f32 or bf16 on CUDA");
}

}  // namespace

void gemm(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
          int64_t M, int64_t N, int64_t K, Stream stream) {
  check_wtype(wtype, "cuda gemm");
  EMOLLM_CHECK_ARG(M >= 0 && N >= 0 && K > 0 && M < (int64_t(1) << 31) && N < (int64_t(1) << 31) &&
                       K < (int64_t(1) << 31),
                   "cuda gemm: bad shape");
  EMOLLM_CHECK_ARG(ldx >= K && ldy >= N, "cuda gemm: leading dimension smaller than the row");
  GemmArgs a{};
  a.A = X; a.lda = ldx; a.a_seg = 0;
  a.W = W; a.ldw = K; a.w_seg = 0;
  a.bias = bias; a.bias_seg = 0;
  a.gate = nullptr; a.gate_seg = 0;
  a.C = Y; a.ldc = ldy;
  a.M = int(M); a.N = int(N); a.K = int(K); a.n_seg = 1;
  launch_gemm_seg(a, wtype, false, stream, "cuda gemm");
}

size_t mvp_projection_workspace_bytes(const MvpProjectionParams& p) {
  return size_t(p.tokens > 0 ? p.tokens : 0) * size_t(p.n_heads > 0 ? p.n_heads : 0) *
         size_t(p.d_hid > 0 ? p.d_hid : 0) * sizeof(float);
}

void mvp_projection(const float* X, const void* W1, const float* b1, const void* W2, const float* b2,
                    const float* G, DType wtype, float* Y, const MvpProjectionParams& p, void* workspace,
                    size_t workspace_bytes, Stream stream) {
  check_wtype(wtype, "cuda mvp_projection");
  EMOLLM_CHECK_ARG(p.tokens >= 0 && p.d_in > 0 && p.d_hid > 0 && p.d_out > 0 && p.n_heads > 0,
                   "mvp_projection: d_in, d_hid, d_out and n_heads must be positive");
  const int64_t ldx = p.ldx ? p.ldx : p.d_in, ldy = p.ldy ? p.ldy : p.d_out;
  EMOLLM_CHECK_ARG(ldx >= p.d_in && ldy >= p.d_out, "mvp_projection: ldx/ldy smaller than the row");
  const int64_t hid_w = p.n_heads * p.d_hid;
  EMOLLM_CHECK_ARG(p.tokens < (int64_t(1) << 31) && hid_w < (int64_t(1) << 31) && p.d_in < (int64_t(1) << 31) &&
                       p.d_out < (int64_t(1) << 31),
                   "mvp_projection: shape too large");
  if (p.tokens == 0) return;
  EMOLLM_CHECK_ARG(X && W1 && W2 && G && Y, "mvp_projection: null pointer");
  EMOLLM_CHECK_ARG(workspace && workspace_bytes >= mvp_projection_workspace_bytes(p),
                   "mvp_projection: workspace smaller than mvp_projection_workspace_bytes()");
  float* hidden = static_cast<float*>(workspace);

  // 1. hidden = gelu(X W1^T + b1), all heads' first layers in one GEMM.
  GemmArgs a{};
  a.A = X; a.lda = ldx; a.a_seg = 0;
  a.W = W1; a.ldw = p.d_in; a.w_seg = 0;
  a.bias = b1; a.bias_seg = 0;
  a.gate = nullptr; a.gate_seg = 0;
  a.C = hidden; a.ldc = hid_w;
  a.M = int(p.tokens); a.N = int(hid_w); a.K = int(p.d_in); a.n_seg = 1;
  launch_gemm_seg(a, wtype, true, stream, "cuda mvp_projection (first layers)");

  // 2. Y = sum_h G_h * (hidden_h W2_h^T + b2_h): the heads are the K segments of one kernel.
  GemmArgs c{};
  c.A = hidden; c.lda = hid_w; c.a_seg = p.d_hid;
  c.W = W2; c.ldw = p.d_hid; c.w_seg = p.d_out * p.d_hid;
  c.bias = b2; c.bias_seg = p.d_out;
  c.gate = G; c.gate_seg = p.d_out;
  c.C = Y; c.ldc = ldy;
  c.M = int(p.tokens); c.N = int(p.d_out); c.K = int(p.d_hid); c.n_seg = int(p.n_heads);
  launch_gemm_seg(c, wtype, false, stream, "cuda mvp_projection (gated heads)");
}

}  // namespace cuda
}  // namespace emollm
