// Data movement and row-broadcast kernels: the glue between the big ops of a forward pass
// (strided copies for gathers, concatenations and token splices; ViT patch extraction; per-channel
// bias, gate and scale). Plain functions over pointers and shapes like kernels.h; the pool splits
// rows (kernels/cpu/row_parallel.h) and results do not depend on it.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../../base/dtype.h"
#include "../../base/thread_pool.h"
#include "../op_params.h"

namespace emollm {

// rows rows of row_bytes, row r from src + r*ld_src to dst + r*ld_dst (byte strides). The
// regions must not overlap.
void copy_2d(void* dst, size_t ld_dst, const void* src, size_t ld_src, int64_t rows, size_t row_bytes,
             ThreadPool* pool);
// PatchParams (op_params.h): images -> cols with row stride ld_cols floats (0 = p.row_elems()).
// Throws Error(InvalidArgument) when height / width are not multiples of patch.
void extract_patches(const float* images, float* cols, int64_t ld_cols, const PatchParams& p, ThreadPool* pool);
// y[r][c] = x[r][c] + v[c]
void add_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n,
             ThreadPool* pool);
// y[r][c] = x[r][c] * v[c]
void mul_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n,
             ThreadPool* pool);
// y[r][c] = (accumulate ? y[r][c] : 0) + x[r][c] * v[c]
void mul_row_add(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n,
                 bool accumulate, ThreadPool* pool);
// y[i] = s * x[i]
void scale(const float* x, float s, float* y, int64_t n, ThreadPool* pool);
// n elements src (src_type) -> dst (dst_type) for f32 <-> f16 / bf16 and same-type copies;
// throws Error(Unsupported) for other pairs (quantised caches are not a thing here).
void convert(const void* src, DType src_type, void* dst, DType dst_type, int64_t n, ThreadPool* pool);

}  // namespace emollm
