// The epilogue of the int8 VNNI packed GEMMs (gemm_q8_vnni.cpp, gemm_kquant_vnni.cpp): an
// MR x (16 * NV) tile of f32 sums, one k block's, written to Y. The first k block stores its sums
// (plus the bias when there is one); later ones add theirs to what Y holds, so each output is
// its k blocks' sums added in order and the bias is added once, first.
// Include only from x86-64 translation units.
#pragma once
#include <cstdint>

#include "simd_math.h"

namespace emollm {
namespace gemm_detail {

// Y[i, 0:nr] (= if first, else +=) f[i][*] (+ bias[0:nr] when first and bias is not null), for
// i < mr; columns from nr on are neither read nor written (nr may exceed 16 * NV).
template <int MR, int NV>
EMOLLM_SIMD_INLINE_512 void store_tile_f32(const __m512 (&f)[MR][NV], float* y, int64_t ldy, int mr, int64_t nr,
                                           const float* bias, bool first) {
  __mmask16 mk[NV];
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) mk[j] = simd::tail_mask16(nr - 16 * j);
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
    if (i < mr) {
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        __m512 v = f[i][j];
        if (!first)
          v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk[j], y + i * ldy + 16 * j));
        else if (bias)
          v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk[j], bias + 16 * j));
        _mm512_mask_storeu_ps(y + i * ldy + 16 * j, mk[j], v);
      }
    }
}

}  // namespace gemm_detail
}  // namespace emollm
