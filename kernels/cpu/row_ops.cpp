// Data movement and row-broadcast kernels (row_ops.h). Plain loops the compiler vectorises: they
// move or touch each element once, so they are bound by memory, not arithmetic.
#include "row_ops.h"

#include <cstring>

#include "half_rows.h"
#include "row_parallel.h"
#include "../../base/error.h"

namespace emollm {

void copy_2d(void* dst, size_t ld_dst, const void* src, size_t ld_src, int64_t rows, size_t row_bytes,
             ThreadPool* pool) {
  if (rows <= 0 || row_bytes == 0) return;
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
  if (ld_dst == row_bytes && ld_src == row_bytes) {  // one contiguous block
    std::memcpy(d, s, size_t(rows) * row_bytes);
    return;
  }
  detail::for_rows(pool, rows, int64_t(row_bytes / sizeof(float)), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) std::memcpy(d + size_t(r) * ld_dst, s + size_t(r) * ld_src, row_bytes);
  });
}

void extract_patches(const float* images, float* cols, int64_t ld_cols, const PatchParams& p, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(p.batch >= 0 && p.channels > 0 && p.patch > 0 && p.height >= p.patch && p.width >= p.patch &&
                       p.height % p.patch == 0 && p.width % p.patch == 0,
                   "extract_patches: height and width must be positive multiples of the patch size");
  const int64_t C = p.channels, H = p.height, W = p.width, ps = p.patch, ph = p.patches_h(), pw = p.patches_w();
  const int64_t K = p.row_elems(), ld = ld_cols ? ld_cols : K;
  EMOLLM_CHECK_ARG(ld >= K, "extract_patches: ld_cols is smaller than a patch row");
  // One work item per (image, patch row): rows of patches are independent.
  detail::for_rows(pool, p.batch * ph, pw * K, [&](int64_t b0, int64_t e0) {
    for (int64_t bp = b0; bp < e0; ++bp) {
      const int64_t b = bp / ph, py = bp % ph;
      for (int64_t px = 0; px < pw; ++px) {
        float* row = cols + ((b * ph + py) * pw + px) * ld;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t ky = 0; ky < ps; ++ky)
            std::memcpy(row + (c * ps + ky) * ps, images + ((b * C + c) * H + py * ps + ky) * W + px * ps,
                        size_t(ps) * sizeof(float));
      }
    }
  });
}

namespace {
template <class Op>
void row_broadcast(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n,
                   ThreadPool* pool, const Op& op) {
  detail::for_rows(pool, rows, n, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* xr = x + r * ldx;
      float* yr = y + r * ldy;
      for (int64_t c = 0; c < n; ++c) yr[c] = op(xr[c], v[c], yr[c]);
    }
  });
}
}  // namespace

void add_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n,
             ThreadPool* pool) {
  row_broadcast(x, ldx, v, y, ldy, rows, n, pool, [](float a, float b, float) { return a + b; });
}
void mul_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n,
             ThreadPool* pool) {
  row_broadcast(x, ldx, v, y, ldy, rows, n, pool, [](float a, float b, float) { return a * b; });
}
void mul_row_add(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n,
                 bool accumulate, ThreadPool* pool) {
  if (accumulate) row_broadcast(x, ldx, v, y, ldy, rows, n, pool, [](float a, float b, float acc) { return acc + a * b; });
  else row_broadcast(x, ldx, v, y, ldy, rows, n, pool, [](float a, float b, float) { return a * b; });
}

void scale(const float* x, float s, float* y, int64_t n, ThreadPool* pool) {
  detail::for_elements(pool, n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) y[i] = s * x[i];
  });
}

void convert(const void* src, DType st, void* dst, DType dt, int64_t n, ThreadPool* pool) {
  auto half = [](DType t) { return t == DType::F16 || t == DType::BF16; };
  if (st == dt && !dtype_is_quantized(st)) {
    copy_2d(dst, 0, src, 0, 1, dtype_row_bytes(st, n), pool);
    return;
  }
  if (!((st == DType::F32 && half(dt)) || (half(st) && dt == DType::F32)))
    throw Error(ErrorCode::Unsupported, std::string("convert: ") + dtype_name(st) + " -> " + dtype_name(dt) +
                                            " is not supported (f32 <-> f16 / bf16 only)");
  const size_t sb = dtype_row_bytes(st, 1), db = dtype_row_bytes(dt, 1);
  // vector conversions (half_rows.h): the same bits as quantize_row / dequantize_row
  const half_rows::NarrowFn narrow = st == DType::F32 ? half_rows::narrow_fn(dt) : nullptr;
  const half_rows::WidenFn widen = st == DType::F32 ? nullptr : half_rows::widen_fn(st);
  detail::for_elements(pool, n, [&](int64_t b, int64_t e) {
    const void* s = static_cast<const uint8_t*>(src) + size_t(b) * sb;
    void* d = static_cast<uint8_t*>(dst) + size_t(b) * db;
    if (narrow) narrow(static_cast<const float*>(s), d, e - b);
    else widen(s, static_cast<float*>(d), e - b);
  });
}

}  // namespace emollm
