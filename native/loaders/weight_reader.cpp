// See weight_reader.h: the one place that decides which error a bad checkpoint tensor raises.
#include "loaders/weight_reader.h"

#include <cstring>

#include "core/tensor.h"

namespace emollm {

void WeightReader::wrong_shape(const std::string& name, const std::vector<int64_t>& got, const std::vector<int64_t>& want) const {
  throw Error(ErrorCode::MalformedFile,
              "tensor " + name + " has shape " + format_shape(got) + ", expected " + format_shape(want) + " from " + expected_from_,
              store_.source());
}

void WeightReader::check_whole_blocks(const std::string& name, DType dtype, int64_t row_length) const {
  const int64_t block = dtype_block_elems(dtype);
  if (row_length % block != 0)
    throw Error(ErrorCode::MalformedFile,
                "tensor " + name + ": row length " + std::to_string(row_length) + " is not a multiple of the " + dtype_name(dtype) +
                    " block size (" + std::to_string(block) + ")",
                store_.source());
}

const TensorInfo& WeightReader::tensor(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorInfo& t = store_.get(name);  // MalformedFile "checkpoint has no tensor named ..."
  if (t.shape != shape) wrong_shape(name, t.shape, shape);
  t.require_supported(store_.source());
  return t;
}

const TensorInfo& WeightReader::matrix(const std::string& name, int64_t rows, int64_t cols, std::vector<int64_t> shape) const {
  if (shape.empty()) shape = {rows, cols};
  const TensorInfo& t = tensor(name, shape);
  check_whole_blocks(name, t.dtype, cols);
  return t;
}

const float* WeightReader::floats(const std::string& name, const std::vector<int64_t>& shape,
                                  std::vector<std::vector<float>>& converted) const {
  const TensorInfo& t = tensor(name, shape);
  const int64_t n = t.numel();
  if (t.dtype == DType::F32) {
    if (reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0) return reinterpret_cast<const float*>(t.data);
    converted.emplace_back(size_t(n));  // safetensors data may start at any byte: copy
    std::memcpy(converted.back().data(), t.data, size_t(n) * sizeof(float));
    return converted.back().data();
  }
  check_whole_blocks(name, t.dtype, n);
  converted.emplace_back(size_t(n));
  dequantize_row(t.dtype, t.data, converted.back().data(), n);
  return converted.back().data();
}

}  // namespace emollm
