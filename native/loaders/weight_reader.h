// Reading the tensors a model expects from a WeightStore, with one error per kind of failure, so
// that every model (LLaMA, CLIP, the Qwen2-VL vision tower) reports a bad checkpoint the same way:
//   missing tensor      -> MalformedFile "checkpoint has no tensor named NAME"
//   wrong shape         -> MalformedFile "tensor NAME has shape [..], expected [..] from WHAT"
//   unsupported dtype   -> Unsupported   "tensor NAME has type T, which emollm cannot compute with"
//   misaligned rows     -> MalformedFile "tensor NAME: row length N is not a multiple of the D block size (B)"
// (a block-quantised row that does not fill whole blocks cannot be written by a correct converter:
// GGUF requires it, safetensors has no block types). Each error names the checkpoint.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "loaders/weight_store.h"

namespace emollm {

class WeightReader {
 public:
  // `expected_from` ends the shape error ("the model's hyperparameters").
  explicit WeightReader(const WeightStore& store, std::string expected_from = "the model's hyperparameters")
      : store_(store), expected_from_(std::move(expected_from)) {}

  const WeightStore& store() const { return store_; }

  // The tensor `name` of exactly `shape` in a dtype emollm computes with (any number of dims: a
  // 5-D Conv3d kernel is read as one matrix).
  const TensorInfo& tensor(const std::string& name, const std::vector<int64_t>& shape) const;
  // tensor(name, shape) read as a rows x cols matrix: its rows must fill whole blocks of its dtype.
  // `shape` defaults to {rows, cols}.
  const TensorInfo& matrix(const std::string& name, int64_t rows, int64_t cols, std::vector<int64_t> shape = {}) const;
  // The f32 values of tensor(name, shape): a view into the checkpoint when it is f32 and aligned
  // for float, else a copy (dequantised, or copied out of a misaligned mapping) appended to
  // `converted`, which must outlive the returned pointer's use.
  const float* floats(const std::string& name, const std::vector<int64_t>& shape,
                      std::vector<std::vector<float>>& converted) const;

  // The errors, for checks a model makes itself (e.g. a shape it can only tell after looking).
  [[noreturn]] void wrong_shape(const std::string& name, const std::vector<int64_t>& got, const std::vector<int64_t>& want) const;

 private:
  // MalformedFile when rows of `row_length` elements do not fill whole blocks of `dtype`.
  void check_whole_blocks(const std::string& name, DType dtype, int64_t row_length) const;

  const WeightStore& store_;
  std::string expected_from_;
};

}  // namespace emollm
