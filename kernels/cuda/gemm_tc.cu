// Matrix products for every weight dtype (cuda_kernels.h: gemv, gemm_tc, matmul).
//
// gemv (decode, M <= 8): one warp per output column n; the warp streams W's row n once and
// keeps the M partial sums in registers, so each weight byte is read once per call whatever M
// is. Weights are dequantised in registers: f16/bf16 as 8 elements per 16-byte load when the
// rows allow it, q8_0 as 8 lanes per 32-element block (4 elements per lane), q4_0 as 4 lanes per
// block (8 elements per lane). Each lane issues several loads before it uses any (memory-level
// parallelism), X is read as float4 where aligned, and the kernel is specialised on the row
// count (1, 2, 4, 8). Measured on an H200 by bench_cuda beside PyTorch's F.linear.
//
// gemm_tc (prefill / vision): tensor cores through nvcuda::wmma (mma.sync m16n8k16 on sm_80+).
// A block of 4 warps owns a 64x64 output tile; per K step of 32 it stages X (rounded to the
// 16-bit operand type) and W (dequantised to it) in shared memory, and each warp runs 2x2x2
// 16x16x16 fragment products into f32 accumulators. The epilogue goes through shared memory
// so the bias and the M/N edges are handled with plain index arithmetic. No cp.async pipeline
// yet: the simple form first, measured against cuBLAS by bench_cuda.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include "cuda_common.cuh"
#include "cuda_kernels.h"
#include "operand16.cuh"

namespace emollm {
namespace cuda {
namespace {

using detail::f16_bits_to_f32;
using detail::warp_sum;

// ------------------------------------------------------------------ gemv
constexpr int GV_WARPS = 8, GV_NT = GV_WARPS * 32;

// The arguments of both kernels (GEMV and tensor-core GEMM), passed by value: Y[M,N] = X[M,K] *
// W[N,K]^T (+ bias), W rows of w_row_bytes bytes of the kernel's weight dtype.
struct MatArgs {
  const float* X;
  int64_t ldx;
  const uint8_t* W;
  int64_t w_row_bytes;
  const float* bias;
  float* Y;
  int64_t ldy;
  int M, N, K;
  bool vec;   // GEMV only: 16-byte weight loads are aligned (f16/bf16: K % 8 == 0 and W, row bytes 16-aligned)
  bool xvec;  // GEMV only: X is read as float4 (X 16-byte aligned, ldx % 4 == 0)
};

MatArgs mat_args(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
                 int64_t M, int64_t N, int64_t K) {
  MatArgs a{};
  a.X = X, a.ldx = ldx, a.W = static_cast<const uint8_t*>(W), a.w_row_bytes = int64_t(dtype_row_bytes(wtype, K));
  a.bias = bias, a.Y = Y, a.ldy = ldy, a.M = int(M), a.N = int(N), a.K = int(K);
  return a;
}

// acc[r] += w[j] * X[r, k + j] for j < CNT. With a.xvec (and CNT a multiple of 4) X is read as
// float4: scalar loads of X, 4 bytes per lane spread over a warp's 1 KB, took as many load
// instructions as weights and held the bf16 GEMV at 1.6 TB/s on an H200.
// MR is the kernel's row capacity (1, 2, 4 or 8; rows r >= a.M are skipped).
template <int MR, int CNT>
__device__ __forceinline__ void fma_rows(const MatArgs& a, int64_t k, const float (&w)[CNT], float (&acc)[MR]) {
#pragma unroll
  for (int r = 0; r < MR; ++r) {
    if (MR == 1 || r < a.M) {
      const float* x = a.X + int64_t(r) * a.ldx + k;
      if (CNT % 4 == 0 && a.xvec) {
#pragma unroll
        for (int j = 0; j < CNT; j += 4) {
          const float4 v = __ldg(reinterpret_cast<const float4*>(x + j));
          acc[r] = fmaf(w[j], v.x, acc[r]);
          acc[r] = fmaf(w[j + 1], v.y, acc[r]);
          acc[r] = fmaf(w[j + 2], v.z, acc[r]);
          acc[r] = fmaf(w[j + 3], v.w, acc[r]);
        }
      } else {
#pragma unroll
        for (int j = 0; j < CNT; ++j) acc[r] = fmaf(w[j], __ldg(x + j), acc[r]);
      }
    }
  }
}

// Loads each lane issues before using them (memory-level parallelism; see gemv_kernel): chunks
// of 16 bytes for f16/bf16, blocks (three 2-byte loads) for q8_0/q4_0.
constexpr int GV_UNROLL = 4, GV_UNROLL_Q = 8;

// 8 f16/bf16 weights from one 16-byte load, as f32.
template <DType WT>
__device__ __forceinline__ void unpack8(const uint4& t, float (&wv)[8]) {
  const uint32_t words[4] = {t.x, t.y, t.z, t.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint16_t lo = uint16_t(words[j] & 0xffffu), hi = uint16_t(words[j] >> 16);
    wv[2 * j] = WT == DType::F16 ? f16_bits_to_f32(lo) : detail::bf16_bits_to_f32(lo);
    wv[2 * j + 1] = WT == DType::F16 ? f16_bits_to_f32(hi) : detail::bf16_bits_to_f32(hi);
  }
}

// 4 q8_0 weights: d's bits and two 2-byte words of quants.
__device__ __forceinline__ void dequant_q8_4(uint32_t d_bits, uint32_t q01, uint32_t q23, float (&wv)[4]) {
  const float d = f16_bits_to_f32(uint16_t(d_bits));
  wv[0] = d * float(int8_t(q01 & 0xff));
  wv[1] = d * float(int8_t(q01 >> 8));
  wv[2] = d * float(int8_t(q23 & 0xff));
  wv[3] = d * float(int8_t(q23 >> 8));
}

// 4 quant bytes of a q4_0 block at element k (< 16 in the block): their low nibbles are elements
// k .. k+3, their high nibbles k+16 .. k+19.
template <int MR>
__device__ __forceinline__ void q4_0_fma(const MatArgs& a, int64_t k, uint32_t d_bits, uint32_t q01, uint32_t q23,
                                         float (&acc)[MR]) {
  const float d = f16_bits_to_f32(uint16_t(d_bits));
  const uint32_t bytes[4] = {q01 & 0xff, q01 >> 8, q23 & 0xff, q23 >> 8};
  float lo[4], hi[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    lo[j] = d * float(int(bytes[j] & 15) - 8);
    hi[j] = d * float(int(bytes[j] >> 4) - 8);
  }
  fma_rows<MR, 4>(a, k, lo, acc);
  fma_rows<MR, 4>(a, k + 16, hi, acc);
}

// One q4_0 / q8_0 block's share of a lane: d's bits and two 2-byte words of quants at element
// k of the row, multiplied into the row accumulators.
template <DType WT, int MR>
__device__ __forceinline__ void quant_block_fma(const MatArgs& a, int64_t k, uint32_t d_bits, uint32_t q01, uint32_t q23,
                                                float (&acc)[MR]) {
  if constexpr (WT == DType::Q4_0) {
    q4_0_fma<MR>(a, k, d_bits, q01, q23, acc);
  } else {
    float wv[4];
    dequant_q8_4(d_bits, q01, q23, wv);
    fma_rows<MR, 4>(a, k, wv, acc);
  }
}

// A warp's pass over one q4_0 / q8_0 weight row: kLanes lanes per block, lane part p reading
// quant bytes 4p .. 4p+3 of its block. q4_0: 4 lanes per block, each using both nibbles of its
// bytes, elements 4p .. 4p+3 (low) and 16+4p .. 16+4p+3 (high); 8 blocks per warp step (with 8
// lanes per block, pairs of lanes loaded the same bytes for the two halves). q8_0: 8 lanes per
// block, part p holds elements 4p .. 4p+3; 4 blocks per warp step. Each lane issues the loads of
// GV_UNROLL_Q blocks before it uses any (see gemv_kernel).
template <DType WT, int MR>
__device__ __forceinline__ void gemv_quant_row(const MatArgs& a, const uint8_t* row, int lane, float (&acc)[MR]) {
  constexpr int kLaneShift = WT == DType::Q4_0 ? 2 : 3;          // log2 of the lanes per block
  constexpr int kBlocksPerStep = 32 >> kLaneShift;                 // blocks a warp covers per step
  constexpr int64_t kBlockBytes = WT == DType::Q4_0 ? 18 : 34;
  const int sub = lane >> kLaneShift, part = lane & ((1 << kLaneShift) - 1), nb = a.K / 32;
  // qs starts at byte 2 of a block at an even offset (blocks are 18 / 34 bytes), so 2-byte loads are aligned.
  const int qoff = 2 + part * 4;
  int b = sub;
  for (; b + kBlocksPerStep * (GV_UNROLL_Q - 1) < nb; b += kBlocksPerStep * GV_UNROLL_Q) {
    uint32_t dq[GV_UNROLL_Q], q01[GV_UNROLL_Q], q23[GV_UNROLL_Q];
#pragma unroll
    for (int u = 0; u < GV_UNROLL_Q; ++u) {
      const uint8_t* blk = row + int64_t(b + kBlocksPerStep * u) * kBlockBytes;
      const unsigned short* q = reinterpret_cast<const unsigned short*>(blk + qoff);
      dq[u] = __ldg(reinterpret_cast<const unsigned short*>(blk));
      q01[u] = __ldg(q);
      q23[u] = __ldg(q + 1);
    }
#pragma unroll
    for (int u = 0; u < GV_UNROLL_Q; ++u)
      quant_block_fma<WT, MR>(a, int64_t(b + kBlocksPerStep * u) * 32 + part * 4, dq[u], q01[u], q23[u], acc);
  }
  for (; b < nb; b += kBlocksPerStep) {
    const uint8_t* blk = row + int64_t(b) * kBlockBytes;
    const unsigned short* q = reinterpret_cast<const unsigned short*>(blk + qoff);
    quant_block_fma<WT, MR>(a, int64_t(b) * 32 + part * 4, __ldg(reinterpret_cast<const unsigned short*>(blk)),
                            __ldg(q), __ldg(q + 1), acc);
  }
}

// MR: the number of rows the accumulators hold, M rounded up to 1, 2, 4 or 8 (registers limit
// the blocks an SM holds: an 8-row kernel for one row ran at 37% occupancy on an H200).
template <DType WT, int MR>
__global__ void __launch_bounds__(GV_NT) gemv_kernel(MatArgs a) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int n = blockIdx.x * GV_WARPS + warp;
  if (n >= a.N) return;  // no block-level synchronisation below
  const uint8_t* row = a.W + int64_t(n) * a.w_row_bytes;
  float acc[MR];
#pragma unroll
  for (int r = 0; r < MR; ++r) acc[r] = 0.0f;

  if constexpr (WT == DType::F32) {
    const float* w = reinterpret_cast<const float*>(row);
    for (int k = lane; k < a.K; k += 32) {
      const float wv[1] = {__ldg(w + k)};
      fma_rows<MR, 1>(a, k, wv, acc);
    }
  } else if constexpr (WT == DType::F16 || WT == DType::BF16) {
    const uint16_t* w = reinterpret_cast<const uint16_t*>(row);
    int k0 = 0;
    if (a.vec) {
      // Chunks of 8 weights (16 bytes); each lane issues GV_UNROLL chunk loads before using any,
      // so enough bytes are in flight to cover memory latency (one load per lane per iteration
      // read about 1.6 TB/s on an H200, whose copy probe reads 4.3).
      const uint4* w16 = reinterpret_cast<const uint4*>(w);
      const int chunks = a.K / 8;
      int c = lane;
      for (; c + 32 * (GV_UNROLL - 1) < chunks; c += 32 * GV_UNROLL) {
        uint4 t[GV_UNROLL];
#pragma unroll
        for (int u = 0; u < GV_UNROLL; ++u) t[u] = __ldg(w16 + c + 32 * u);
#pragma unroll
        for (int u = 0; u < GV_UNROLL; ++u) {
          float wv[8];
          unpack8<WT>(t[u], wv);
          fma_rows<MR, 8>(a, int64_t(c + 32 * u) * 8, wv, acc);
        }
      }
      for (; c < chunks; c += 32) {
        float wv[8];
        unpack8<WT>(__ldg(w16 + c), wv);
        fma_rows<MR, 8>(a, int64_t(c) * 8, wv, acc);
      }
      k0 = chunks * 8;  // the vector loops covered [0, K rounded down to 8)
    }
    for (int k = k0 + lane; k < a.K; k += 32) {
      const uint16_t b = __ldg(reinterpret_cast<const unsigned short*>(w + k));
      const float wv[1] = {WT == DType::F16 ? f16_bits_to_f32(b) : detail::bf16_bits_to_f32(b)};
      fma_rows<MR, 1>(a, k, wv, acc);
    }
  } else {  // Q4_0 / Q8_0
    gemv_quant_row<WT, MR>(a, row, lane, acc);
  }
#pragma unroll
  for (int r = 0; r < MR; ++r) {
    if (r < a.M) {
      const float s = warp_sum(acc[r]);
      if (lane == 0) a.Y[int64_t(r) * a.ldy + n] = s + (a.bias ? __ldg(a.bias + n) : 0.0f);
    }
  }
}

// ------------------------------------------------------------------ gemm_tc
constexpr int TC_BM = 64, TC_BN = 64, TC_BK = 32, TC_LD = TC_BK + 8, TC_NT = 128;

using detail::load_w16;
using detail::to_operand;

template <typename MT, DType WT>
__global__ void __launch_bounds__(TC_NT) gemm_tc_kernel(MatArgs a) {
  using namespace nvcuda;
  __shared__ __align__(32) MT As[TC_BM * TC_LD];
  __shared__ __align__(32) MT Bs[TC_BN * TC_LD];
  __shared__ __align__(32) float Cs[TC_BM * TC_BN];
  const int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
  // Loader mapping: thread t stages 16 consecutive K elements of tile row t / 2.
  const int lr = threadIdx.x / 2, lk = (threadIdx.x % 2) * 16;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  const int m = m0 + lr, n = n0 + lr;
  const float* xrow = a.X + int64_t(m < a.M ? m : 0) * a.ldx;
  const uint8_t* wrow = a.W + int64_t(n < a.N ? n : 0) * a.w_row_bytes;

  for (int k0 = 0; k0 < a.K; k0 += TC_BK) {
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int k = k0 + lk + i;
      As[lr * TC_LD + lk + i] = to_operand<MT>(m < a.M && k < a.K ? __ldg(xrow + k) : 0.0f);
    }
    float w[16];
    if (n < a.N && k0 + lk < a.K) {
      load_w16<WT>(wrow, k0 + lk, a.K, w);
    } else {
#pragma unroll
      for (int i = 0; i < 16; ++i) w[i] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) Bs[lr * TC_LD + lk + i] = to_operand<MT>(w[i]);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TC_BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, MT, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, MT, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], As + (wm * 32 + i * 16) * TC_LD + kk, TC_LD);
      // Bs holds W rows (n-major): as the K x N operand that is column-major with ld TC_LD.
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], Bs + (wn * 32 + j * 16) * TC_LD + kk, TC_LD);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();  // the tiles are consumed before the next K step overwrites them
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * TC_BN + wn * 32 + j * 16, acc[i][j], TC_BN,
                              wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < TC_BM * TC_BN; e += TC_NT) {
    const int r = e / TC_BN, c = e % TC_BN, mm = m0 + r, nn = n0 + c;
    if (mm < a.M && nn < a.N) a.Y[int64_t(mm) * a.ldy + nn] = Cs[e] + (a.bias ? __ldg(a.bias + nn) : 0.0f);
  }
}

void check_common(const char* what, const float* X, int64_t ldx, const void* W, DType wtype, float* Y, int64_t ldy,
                  int64_t M, int64_t N, int64_t K) {
  detail::check_matmul_args(what, X, ldx, W, wtype, Y, ldy, M, N, K, true,
                            "has no CUDA kernel (f32, f16, bf16, q8_0, q4_0)");
}

template <DType WT>
void launch_gemv(const MatArgs& a, cudaStream_t st) {
  const unsigned grid = unsigned((a.N + GV_WARPS - 1) / GV_WARPS);
  if (a.M == 1) gemv_kernel<WT, 1><<<grid, GV_NT, 0, st>>>(a);
  else if (a.M == 2) gemv_kernel<WT, 2><<<grid, GV_NT, 0, st>>>(a);
  else if (a.M <= 4) gemv_kernel<WT, 4><<<grid, GV_NT, 0, st>>>(a);
  else gemv_kernel<WT, kGemvMaxRows><<<grid, GV_NT, 0, st>>>(a);
}

template <typename MT, DType WT>
void launch_tc(const MatArgs& a, cudaStream_t st) {
  const dim3 grid(unsigned((a.N + TC_BN - 1) / TC_BN), unsigned((a.M + TC_BM - 1) / TC_BM));
  gemm_tc_kernel<MT, WT><<<grid, TC_NT, 0, st>>>(a);
}

}  // namespace

void gemv(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
          int64_t M, int64_t N, int64_t K, Stream stream) {
  check_common("cuda gemv", X, ldx, W, wtype, Y, ldy, M, N, K);
  EMOLLM_CHECK_ARG(M <= kGemvMaxRows, "cuda gemv: M must be <= 8 (use matmul)");
  if (M == 0 || N == 0) return;
  EMOLLM_CHECK_ARG((N + GV_WARPS - 1) / GV_WARPS <= int64_t(0x7fffffff), "cuda gemv: N too large");
  MatArgs a = mat_args(X, ldx, W, wtype, bias, Y, ldy, M, N, K);
  a.vec = K % 8 == 0 && detail::aligned(W, 16) && a.w_row_bytes % 16 == 0;
  // every X offset a float4 load reads is r * ldx + k with k % 4 == 0 (k = 8c, 32b + 4p)
  a.xvec = detail::aligned(X, 16) && ldx % 4 == 0;
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  // K == 0 is valid: the K loops are empty and Y = bias (or 0), as on the CPU.
  switch (wtype) {
    case DType::F32: launch_gemv<DType::F32>(a, st); break;
    case DType::F16: launch_gemv<DType::F16>(a, st); break;
    case DType::BF16: launch_gemv<DType::BF16>(a, st); break;
    case DType::Q8_0: launch_gemv<DType::Q8_0>(a, st); break;
    case DType::Q4_0: launch_gemv<DType::Q4_0>(a, st); break;
    default: break;  // refused by check_common
  }
  detail::check_launch("cuda gemv");
}

void gemm_tc(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
             int64_t M, int64_t N, int64_t K, Stream stream) {
  check_common("cuda gemm_tc", X, ldx, W, wtype, Y, ldy, M, N, K);
  if (wtype == DType::F32)
    throw Error(ErrorCode::Unsupported, "cuda gemm_tc: f32 weights do not run on tensor cores here (use gemm)");
  if (M == 0 || N == 0) return;
  EMOLLM_CHECK_ARG((M + TC_BM - 1) / TC_BM <= 65535, "cuda gemm_tc: M too large");
  const MatArgs a = mat_args(X, ldx, W, wtype, bias, Y, ldy, M, N, K);
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  switch (wtype) {
    case DType::BF16: launch_tc<__nv_bfloat16, DType::BF16>(a, st); break;
    case DType::F16: launch_tc<__half, DType::F16>(a, st); break;
    case DType::Q8_0: launch_tc<__half, DType::Q8_0>(a, st); break;
    case DType::Q4_0: launch_tc<__half, DType::Q4_0>(a, st); break;
    default: break;
  }
  detail::check_launch("cuda gemm_tc");
}

void matmul(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
            int64_t M, int64_t N, int64_t K, Stream stream) {
  if (M <= kGemvMaxRows) return gemv(X, ldx, W, wtype, bias, Y, ldy, M, N, K, stream);
  if (wtype == DType::F32) return gemm(X, ldx, W, wtype, bias, Y, ldy, M, N, K, stream);
  // cuBLASLt when it is loaded and has an algorithm (quantised weights: from where dequantising pays).
  const bool quant = wtype == DType::Q8_0 || wtype == DType::Q4_0;
  if ((!quant || M >= kCublasLtQuantMinRows) && gemm_cublaslt(X, ldx, W, wtype, bias, Y, ldy, M, N, K, stream)) return;
  gemm_tc(X, ldx, W, wtype, bias, Y, ldy, M, N, K, stream);
}

}  // namespace cuda
}  // namespace emollm
