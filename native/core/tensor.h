// A non-owning view of an n-dimensional tensor: pointer, dtype, shape and strides.
// Shapes are outermost-first (row-major, like PyTorch); strides are in elements for plain
// dtypes and only the outermost dims may be strided for block-quantised ones.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "base/dtype.h"

namespace emollm {

constexpr int kMaxDims = 4;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F32;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> stride{};  // in elements; row stride of quantized rows = row elems

  static TensorView contiguous(void* data, DType dtype, std::initializer_list<int64_t> dims) {
    TensorView t;
    t.data = data;
    t.dtype = dtype;
    t.ndim = int(dims.size());
    int i = 0;
    for (int64_t d : dims) t.shape[i++] = d;
    int64_t s = 1;
    for (int k = t.ndim - 1; k >= 0; --k) {
      t.stride[k] = s;
      s *= t.shape[k];
    }
    return t;
  }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  bool is_contiguous() const {
    int64_t s = 1;
    for (int k = ndim - 1; k >= 0; --k) {
      if (shape[k] != 1 && stride[k] != s) return false;
      s *= shape[k];
    }
    return true;
  }
  // Rows of the innermost dimension, for row-wise kernels.
  int64_t rows() const { return ndim == 0 ? 1 : numel() / shape[ndim - 1]; }
  int64_t cols() const { return ndim == 0 ? 1 : shape[ndim - 1]; }
  template <typename T> T* as() const { return static_cast<T*>(data); }
  std::string shape_string() const;
};

// "[2, 3, 4]": shapes in error messages.
inline std::string format_shape(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace emollm
