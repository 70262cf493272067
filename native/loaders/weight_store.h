// The common view of a checkpoint's tensors, shared by the safetensors and GGUF loaders so a
// model loader can map either format onto the same internal model.
//
// Shapes are always outermost-first (row-major, like PyTorch): for safetensors that is the file's
// own order; for GGUF, whose ggml dims list ne[0] (the innermost, contiguous dim) first, the
// loader reverses them. A GGUF token embedding stored with ne = {64, 512} is shape {512, 64}, the
// same as the safetensors `model.embed_tokens.weight`.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/dtype.h"
#include "base/error.h"
#include "core/tensor.h"
#include "loaders/mapped_file.h"

namespace emollm {

struct TensorInfo {
  std::string name;
  // True when the stored type is one emollm computes with (F32/F16/BF16/Q8_0/Q4_0); then `dtype`
  // holds it. Otherwise the tensor is listed (type_name says what it is) but compute_view()
  // throws Unsupported.
  bool supported = false;
  DType dtype = DType::F32;
  std::string type_name;         // the format's own name: "F32", "I64" (safetensors); "f32", "q4_K" (GGUF)
  std::vector<int64_t> shape;    // outermost-first
  const uint8_t* data = nullptr; // points into file->data() (zero copy); valid while `file` lives
  size_t nbytes = 0;
  uint64_t offset = 0;           // absolute byte offset of the data in the file
  std::shared_ptr<MappedFile> file;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;  // overflow ruled out by the loaders
    return n;
  }
  const std::string& path() const { return file->path(); }
  // Throws Unsupported, naming `source`, unless the stored type is one emollm computes with.
  void require_supported(const std::string& source) const {
    if (!supported)
      throw Error(ErrorCode::Unsupported, "tensor " + name + " has type " + type_name + ", which emollm cannot compute with",
                  source);
  }
  // A contiguous TensorView of the data for compute. Throws Unsupported for a dtype emollm does
  // not compute with or more than kMaxDims dims.
  TensorView compute_view() const {
    require_supported(file ? file->path() : std::string());
    if (shape.size() > size_t(kMaxDims))
      throw Error(ErrorCode::Unsupported, "tensor " + name + " has " + std::to_string(shape.size()) + " dims (max " +
                                              std::to_string(kMaxDims) + ")",
                  file ? file->path() : std::string());
    TensorView t;
    t.data = const_cast<uint8_t*>(data);
    t.dtype = dtype;
    t.ndim = int(shape.size());
    int64_t s = 1;
    for (int k = t.ndim - 1; k >= 0; --k) {
      t.shape[size_t(k)] = shape[size_t(k)];
      t.stride[size_t(k)] = s;
      s *= shape[size_t(k)];
    }
    return t;
  }
};

class WeightStore {
 public:
  virtual ~WeightStore() = default;
  WeightStore() = default;
  WeightStore(WeightStore&&) = default;
  WeightStore& operator=(WeightStore&&) = default;

  // "safetensors" or "gguf".
  const std::string& format() const { return format_; }
  // The path that was opened (a file, or the index.json of a sharded checkpoint).
  const std::string& source() const { return source_; }
  // All tensors, in file order (for sharded safetensors: shard by shard).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  size_t size() const { return tensors_.size(); }
  // nullptr when absent.
  const TensorInfo* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }
  // Throws MalformedFile naming the tensor and the checkpoint when absent.
  const TensorInfo& get(const std::string& name) const {
    const TensorInfo* t = find(name);
    if (!t) throw Error(ErrorCode::MalformedFile, "checkpoint has no tensor named " + name, source_);
    return *t;
  }
  // get(name).compute_view().
  TensorView compute_view(const std::string& name) const { return get(name).compute_view(); }
  // Names in file order.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(tensors_.size());
    for (const auto& t : tensors_) out.push_back(t.name);
    return out;
  }

 protected:
  // Adds a tensor; the caller has checked the name is new (see has_tensor()).
  void add_tensor(TensorInfo t) {
    index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }
  bool has_tensor(const std::string& name) const { return index_.count(name) != 0; }

  std::string format_;
  std::string source_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace emollm
