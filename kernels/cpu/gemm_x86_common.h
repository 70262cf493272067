// What the AVX2 and AVX-512 GEMM files (gemm_avx2.cpp, gemm_avx512.cpp, gemv_repacked.cpp) share
// outside their vector code: choosing the compiled instance of a kernel template for a weight
// type, a small M or a software prefetch setting, the row chunks their M <= kSmallM kernels take from the pool, rounding X to q8_0 for the
// q8_0-activation kernels, and reading a block's fp16 scale. Internal to kernels/cpu.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "gemm_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

namespace emollm {
namespace gemm_detail {

// An unaligned little-endian u16 (a block's fp16 scale).
inline uint16_t rd16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// fn(std::integral_constant<int, H>{}) for the compile-time prefetch hint of setting p (a decode
// GEMV's GemvPrefetch, decode_tuning.h): -1 for None (no software prefetch along the streams),
// _MM_HINT_NTA, _MM_HINT_T1 where WithT1 (the q8_0 parts pass and the q4_0 two-stream pass; the other
// kernels read T1 as T0),
// else _MM_HINT_T0. The kernels are compiled once per hint.
template <bool WithT1 = false, class Fn>
decltype(auto) with_prefetch_hint(GemvPrefetch p, Fn&& fn) {
  switch (p) {
    case GemvPrefetch::None: return fn(std::integral_constant<int, -1>{});
    case GemvPrefetch::Nta: return fn(std::integral_constant<int, _MM_HINT_NTA>{});
    case GemvPrefetch::T1:
      if constexpr (WithT1) return fn(std::integral_constant<int, _MM_HINT_T1>{});
      break;
    default: break;
  }
  return fn(std::integral_constant<int, _MM_HINT_T0>{});
}

// fn(std::integral_constant<int, MB>{}) for MB = mb in [1, kSmallM] (larger: kSmallM): the dot
// kernels are compiled once per activation row count.
template <class Fn>
decltype(auto) with_small_m(int64_t mb, Fn&& fn) {
  static_assert(kSmallM == 8, "one case per M <= kSmallM");
  switch (mb) {
    case 1: return fn(std::integral_constant<int, 1>{});
    case 2: return fn(std::integral_constant<int, 2>{});
    case 3: return fn(std::integral_constant<int, 3>{});
    case 4: return fn(std::integral_constant<int, 4>{});
    case 5: return fn(std::integral_constant<int, 5>{});
    case 6: return fn(std::integral_constant<int, 6>{});
    case 7: return fn(std::integral_constant<int, 7>{});
    default: return fn(std::integral_constant<int, 8>{});
  }
}

// fn(std::integral_constant<DType, T>{}) for the weight types these files compute with: F32,
// F16, BF16, Q8_0, and Q4_0 for any other (gemm.cpp sends them nothing else).
template <class Fn>
decltype(auto) with_base_dtype(DType t, Fn&& fn) {
  switch (t) {
    case DType::F32: return fn(std::integral_constant<DType, DType::F32>{});
    case DType::F16: return fn(std::integral_constant<DType, DType::F16>{});
    case DType::BF16: return fn(std::integral_constant<DType, DType::BF16>{});
    case DType::Q8_0: return fn(std::integral_constant<DType, DType::Q8_0>{});
    default: return fn(std::integral_constant<DType, DType::Q4_0>{});
  }
}

// Weight rows a worker takes at a time in the M <= kSmallM kernels: about an eighth of its share
// (so a worker that another process holds up delays the call by little), a multiple of 4, >= 4.
inline int64_t small_m_chunk(const Args& a) {
  const int nth = a.pool ? a.pool->size() : 1;
  return std::max<int64_t>(4, (a.N / (8 * nth)) / 4 * 4);
}

// Rounds the M rows of X to q8_0 (qx_quantize_row_avx2) into the calling thread's kQxSlot scratch
// and returns the view of it. with_neg: also the -off * sum(x) correction lanes (QX in
// gemm_internal.h).
inline QX quantize_activations(const Args& a, bool with_neg, int off) {
  const QX q = qx_view(scratch(kQxSlot, qx_bytes(a.M, a.K)), a.M, a.K);
  for (int64_t m = 0; m < a.M; ++m)
    qx_quantize_row_avx2(a.X + m * a.ldx, a.K, const_cast<int8_t*>(q.qs + m * q.ldq),
                         const_cast<float*>(q.dxe + m * q.ldd), with_neg ? const_cast<int32_t*>(q.neg + m * q.ldd) : nullptr,
                         off);
  return q;
}

}  // namespace gemm_detail
}  // namespace emollm
#endif  // __x86_64__
