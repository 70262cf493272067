// Internal interface between gemm_quant_ext.cpp (dispatch, super-block decoders) and
// gemm_kquant_vnni.cpp (the int8 VNNI prefill GEMM for q4_K / q5_K / q6_K weights).
#pragma once

#include <cstdint>

#include "gemm_internal.h"

namespace emollm {
namespace gemm_detail {

// One 256-element K-quant super-block decoded (gemm_quant_ext.cpp's decode_avx2, which the
// tests compare with the scalar decoder through the GEMM results):
//   u[e]  unsigned code of element e (q4_K 0..15, q5_K 0..31, q6_K 0..63)
//   A[h]  scale of 16-element half h (q4_K / q5_K: d * sc_j, j = h / 2; q6_K: d * scales[h])
//   B[h]  min of half h (q4_K / q5_K: -(dmin * m_j); q6_K: 0, its offset is the code's -32)
// so that element e is A[e / 16] * u[e] + B[e / 16] (q4_K, q5_K) or A[e / 16] * (u[e] - 32) (q6_K).
struct KquantDecoded {
  alignas(64) uint8_t u[256];
  float A[16];
  float B[16];
};

#if defined(__x86_64__)
// Decodes one super-block of type t (Q4_K, Q5_K or Q6_K). Needs AVX2 + F16C.
void kquant_decode_avx2(DType t, const uint8_t* blk, KquantDecoded* out);

// Q4_K / Q5_K / Q6_K weights at M > kSmallM in QuantActivations::Q8 mode (gemm_kquant_vnni.cpp):
// X quantised to q8_0 once, packed cache-blocked GEMM on vpdpbusd. Requires AVX-512 VNNI.
void gemm_kquant_packed_vnni(const Args& a);
// The same for q4_K / q6_K weights in kquant_repack's 16-row records (a.W), a.row_bytes = the
// bytes of one 16-row group (K / 256 records): the W panels are made from the records, bit for
// bit those of the GGUF layout, so the results are gemm_kquant_packed_vnni's bit for bit.
void gemm_kquant_packed_vnni_records(const Args& a);
#endif

// gemm_quant_ext takes gemm_kquant_packed_vnni for every q4_K / q5_K / q6_K product at M > kSmallM
// with q8_0 activations on AVX-512 VNNI. The dequantise-to-f32 path (gemm_quant_ext.cpp) stays for
// CPUs without VNNI and for QuantActivations::F32; tests reach it here with set_vnni_allowed(false)
// or an ISA cap. (The A/B switch EMOLLM_KQUANT_VNNI=0 is gone: the kernel 2.1-3.2x, bench/README
// 2026-12-04 16:14.)

}  // namespace gemm_detail
}  // namespace emollm
