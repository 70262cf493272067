// A tensor that knows its backend: a TensorView over memory the tensor owns (a BackendBuffer),
// plus the Backend it lives in. Model code allocates its activations as these, moves data in and
// out only through upload / download, and hands data pointers to Backend ops, so the same forward
// pass runs wherever the backend's memory is. Weights stay TensorViews into the mmap on the CPU.
#pragma once
#include <initializer_list>

#include "base/error.h"
#include "core/backend.h"
#include "core/tensor.h"

namespace emollm {

class DeviceTensor {
 public:
  DeviceTensor() = default;
  // Uninitialised memory of the given shape (outermost first) on `be`.
  DeviceTensor(Backend& be, DType dtype, std::initializer_list<int64_t> dims)
      : be_(&be), view_(TensorView::contiguous(nullptr, dtype, dims)) {
    EMOLLM_CHECK_ARG(!dtype_is_quantized(dtype), "DeviceTensor: activations are plain types");
    buf_.allocate(be, bytes());
    view_.data = buf_.data();
  }
  // f32 [rows, cols] copied from host memory.
  static DeviceTensor from_host(Backend& be, const float* src, int64_t rows, int64_t cols) {
    DeviceTensor t(be, DType::F32, {rows, cols});
    if (t.bytes()) be.upload(t.data(), src, t.bytes());
    return t;
  }
  // f32 [rows, cols] over host memory `p`, neither owned nor copied. Only for a backend that
  // computes on host memory (uses_host_memory()); the tensor must not outlive `p`.
  static DeviceTensor wrap_host(Backend& be, float* p, int64_t rows, int64_t cols) {
    EMOLLM_CHECK_ARG(be.uses_host_memory(), "DeviceTensor::wrap_host: " + be.describe() + " cannot use host memory");
    DeviceTensor t;
    t.be_ = &be;
    t.view_ = TensorView::contiguous(p, DType::F32, {rows, cols});
    return t;
  }
  // A read-only input from host memory: that memory itself where the backend computes on host
  // memory (no copy on the CPU), else an uploaded copy.
  static DeviceTensor input(Backend& be, const float* src, int64_t rows, int64_t cols) {
    return be.uses_host_memory() ? wrap_host(be, const_cast<float*>(src), rows, cols) : from_host(be, src, rows, cols);
  }
  // Where to compute a result headed for host memory `dst`: dst itself where the backend computes
  // on host memory, else a tensor of its own; finish with to_host(dst), which then copies only
  // when they differ.
  static DeviceTensor output(Backend& be, float* dst, int64_t rows, int64_t cols) {
    return be.uses_host_memory() ? wrap_host(be, dst, rows, cols) : DeviceTensor(be, DType::F32, {rows, cols});
  }
  DeviceTensor(DeviceTensor&& o) noexcept : be_(o.be_), buf_(std::move(o.buf_)), view_(o.view_) { o.view_ = TensorView{}; }
  DeviceTensor& operator=(DeviceTensor&& o) noexcept {
    if (this != &o) {
      be_ = o.be_;
      buf_ = std::move(o.buf_);
      view_ = o.view_;
      o.view_ = TensorView{};
    }
    return *this;
  }

  // All of it to host memory (bytes() bytes at dst); nothing to do when dst is its own memory.
  void to_host(void* dst) const {
    if (bytes() && dst != view_.data) be_->download(dst, view_.data, bytes());
  }
  // Frees the memory now (activations a pass no longer needs).
  void reset() {
    buf_.release();
    view_ = TensorView{};
  }

  Backend& backend() const { return *be_; }
  const TensorView& view() const { return view_; }
  // Backend memory: pass to Backend ops; read on the host only when backend().uses_host_memory().
  float* data() const { return static_cast<float*>(view_.data); }
  // Row r of the tensor seen as [rows(), cols()] (f32).
  float* row(int64_t r) const { return data() + r * view_.cols(); }
  // 0 for an empty (default or reset) tensor.
  int64_t rows() const { return view_.ndim ? view_.rows() : 0; }
  int64_t cols() const { return view_.ndim ? view_.cols() : 0; }
  int64_t numel() const { return view_.ndim ? view_.numel() : 0; }
  size_t bytes() const { return view_.ndim ? dtype_row_bytes(view_.dtype, numel()) : 0; }

 private:
  Backend* be_ = nullptr;
  BackendBuffer buf_;
  TensorView view_;
};

}  // namespace emollm
