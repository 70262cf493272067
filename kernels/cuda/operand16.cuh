// 16-bit tensor-core operands, shared by the GEMMs that feed f16/bf16 tensor cores (gemm_tc.cu,
// gemm_cublaslt.cu), so that every path rounds X and dequantises W to the same operand bits.
// Internal header (device code), not part of the kernels' interface.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../../base/dtype.h"
#include "cuda_common.cuh"

namespace emollm {
namespace cuda {
namespace detail {

// An f32 value as the 16-bit operand type MT (round to nearest even).
template <typename MT>
__device__ __forceinline__ MT to_operand(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 to_operand<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half to_operand<__half>(float x) {
  // f16 overflows at 65504; clamp finite activations there instead of making them inf (NaN stays NaN).
  if (x == x) x = fminf(fmaxf(x, -65504.0f), 65504.0f);
  return __float2half_rn(x);
}

// 16 consecutive weights W[n, k0 .. k0+15] as f32 (zero past K; quantised types have K % 32 == 0
// and k0 % 16 == 0, so the 16 never straddle a block).
template <DType WT>
__device__ __forceinline__ void load_w16(const uint8_t* row, int k0, int K, float (&w)[16]) {
  if constexpr (WT == DType::F16 || WT == DType::BF16) {
    const unsigned short* p = reinterpret_cast<const unsigned short*>(row);
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int k = k0 + i;
      const uint16_t b = k < K ? __ldg(p + k) : uint16_t(0);
      w[i] = WT == DType::F16 ? f16_bits_to_f32(b) : detail::bf16_bits_to_f32(b);
    }
  } else if constexpr (WT == DType::Q8_0) {
    const uint8_t* blk = row + int64_t(k0 / 32) * 34;
    const float d = f16_bits_to_f32(__ldg(reinterpret_cast<const unsigned short*>(blk)));
    const int8_t* qs = reinterpret_cast<const int8_t*>(blk + 2) + (k0 % 32);
#pragma unroll
    for (int i = 0; i < 16; ++i) w[i] = d * float(__ldg(qs + i));
  } else {  // Q4_0
    const uint8_t* blk = row + int64_t(k0 / 32) * 18;
    const float d = f16_bits_to_f32(__ldg(reinterpret_cast<const unsigned short*>(blk)));
    const uint8_t* qs = blk + 2;
    const bool high = (k0 % 32) != 0;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint8_t q = __ldg(qs + i);
      w[i] = d * float(int(high ? q >> 4 : q & 15) - 8);
    }
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace emollm
