// Rows of half-precision values (f16 / bf16) <-> f32: the KV cache's element conversions
// (AttentionParams::kv_dtype). Widening is exact; narrowing rounds to nearest even, bit for bit
// the scalar f32_to_f16 / f32_to_bf16 of base/dtype.h on finite values and infinities (NaN stays
// NaN). Vector code over simd_vec.h's F32x16 / F32x8 (half_rows.inc, written once), chosen by
// isa_active(); scalar below AVX2. Internal to kernels/cpu (attention.cpp, row_ops.cpp convert).
#pragma once
#include <cstdint>

#include "../../base/dtype.h"

namespace emollm {
namespace half_rows {

// dst[i] = src[i] widened, i < n; src holds n values of type t.
using WidenFn = void (*)(const void* src, float* dst, int64_t n);
// dst[i] = src[i] rounded to type t, i < n.
using NarrowFn = void (*)(const float* src, void* dst, int64_t n);

// The converters for t (F16 or BF16; F32: a copy) at the active ISA. Resolve once per call of a
// kernel, then call per row.
WidenFn widen_fn(DType t);
NarrowFn narrow_fn(DType t);

}  // namespace half_rows
}  // namespace emollm
