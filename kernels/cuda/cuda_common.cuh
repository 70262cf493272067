// Internal helpers shared by the CUDA kernels (not a public header).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "../../base/dtype.h"
#include "../../base/error.h"

namespace emollm {
namespace cuda {
namespace detail {

// Throws Error(Internal) when the last launch (or an earlier asynchronous error) failed.
inline void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw Error(ErrorCode::Internal, std::string(what) + ": CUDA error: " + cudaGetErrorString(e));
}
inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw Error(ErrorCode::Internal, std::string(what) + ": CUDA error: " + cudaGetErrorString(e));
}

inline int sm_count() {
  int dev = 0, n = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  return n > 0 ? n : 1;
}

// Element loads converting to f32: float, or bfloat16 bits in a uint16_t.
__device__ __forceinline__ float load_f32(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_f32(const uint16_t* p) {
  return __uint_as_float(uint32_t(__ldg(reinterpret_cast<const unsigned short*>(p))) << 16);
}
__device__ __forceinline__ float bf16_bits_to_f32(uint32_t bits16) { return __uint_as_float(bits16 << 16); }
__device__ __forceinline__ float f16_bits_to_f32(uint16_t b) { return __half2float(__ushort_as_half(b)); }

// Sum / maximum over the 32 lanes of a warp (butterfly: every lane gets the result).
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024) of float, double or integer values;
// every thread gets the result. scratch: >= 32 elements of T in shared memory.
template <typename T>
__device__ __forceinline__ T block_sum(T x, T* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  T t = lane < nw ? scratch[lane] : T(0);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
  return t;
}
// fmaxf ignores NaN; the callers deal with NaN through the sums.
__device__ __forceinline__ float block_max(float x, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  x = warp_max(x);
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  float t = lane < nw ? scratch[lane] : -INFINITY;
  return warp_max(t);
}

// Blocks for a grid-stride loop over n elements with nt threads a block (capped: the loop covers
// the rest).
inline unsigned grid_for(int64_t n, int nt) {
  const int64_t b = (n + nt - 1) / nt;
  return unsigned(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

inline bool aligned(const void* p, unsigned bytes) { return (reinterpret_cast<uintptr_t>(p) % bytes) == 0; }

// The argument checks of the CUDA matrix products Y[M,N] = X[M,K] W[N,K]^T (gemm_tc.cu's gemv /
// gemm_tc / matmul, gemm_cublaslt.cu), in this order: shape, leading dimensions, weight dtype,
// null pointers. InvalidArgument for a bad value, K % 32 != 0 for q8_0 / q4_0 included;
// Unsupported for F32 weights unless f32_ok, and for dtypes other than f16 / bf16 / q8_0 / q4_0,
// as "<what>: weight dtype <name> <no_path>".
inline void check_matmul_args(const char* what, const float* X, int64_t ldx, const void* W, DType wtype, float* Y,
                              int64_t ldy, int64_t M, int64_t N, int64_t K, bool f32_ok, const char* no_path) {
  EMOLLM_CHECK_ARG(M >= 0 && N >= 0 && K >= 0, std::string(what) + ": negative shape");
  EMOLLM_CHECK_ARG(M < (int64_t(1) << 31) && N < (int64_t(1) << 31) && K < (int64_t(1) << 31),
                   std::string(what) + ": shape too large");
  EMOLLM_CHECK_ARG(M <= 1 || ldx >= K, std::string(what) + ": ldx smaller than K");
  EMOLLM_CHECK_ARG(M <= 1 || ldy >= N, std::string(what) + ": ldy smaller than N");
  switch (wtype) {
    case DType::F16: case DType::BF16: break;
    case DType::Q8_0: case DType::Q4_0:
      EMOLLM_CHECK_ARG(K % 32 == 0, std::string(what) + ": q8_0/q4_0 weights need K % 32 == 0");
      break;
    default:
      if (wtype == DType::F32 && f32_ok) break;
      throw Error(ErrorCode::Unsupported, std::string(what) + ": weight dtype " + dtype_name(wtype) + " " + no_path);
  }
  if (M > 0 && N > 0) EMOLLM_CHECK_ARG(X && W && Y, std::string(what) + ": null pointer");
}

}  // namespace detail
}  // namespace cuda
}  // namespace emollm
