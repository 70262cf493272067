// Weights placed in a backend's memory once, at load. On a backend that computes on host memory
// (the CPU) place() returns the host pointer itself, so the mmap stays zero-copy and nothing is
// allocated. On a device (!uses_host_memory()) each distinct host range is uploaded once (a range
// placed twice, e.g. a tied matrix, gets one copy) and the copies live as long as this object.
// The LLaMA decoder, the vision towers, the LLaVA projector and the EmoLLM heads hold one each;
// the forward passes then hand only placed pointers to Backend ops.
//
// The backend must outlive this object (models keep it alive through their decoder, which owns a
// reference from the Runtime; declare this member after that one).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/dtype.h"
#include "base/error.h"
#include "core/backend.h"

namespace emollm {

class BackendWeights {
 public:
  BackendWeights() = default;
  BackendWeights(BackendWeights&&) = default;
  BackendWeights& operator=(BackendWeights&&) = default;
  BackendWeights(const BackendWeights&) = delete;
  BackendWeights& operator=(const BackendWeights&) = delete;

  // Starts placing on `be` (once: placing on a second backend is an Internal error).
  void begin(Backend& be) {
    if (be_ && be_ != &be) throw Error(ErrorCode::Internal, "BackendWeights: weights already placed on " + be_->describe());
    be_ = &be;
  }
  // The backend's pointer for `bytes` at `host`: `host` itself on a host-memory backend, else its
  // uploaded copy (made now, or the earlier one of the same range). Null stays null.
  const void* place(const void* host, size_t bytes) {
    if (!be_) throw Error(ErrorCode::Internal, "BackendWeights::place before begin()");
    if (!host || be_->uses_host_memory()) return host;
    auto it = copies_.find(host);
    if (it != copies_.end() && it->second.first >= bytes) return it->second.second;
    bufs_.emplace_back(*be_, bytes);
    be_->upload(bufs_.back().data(), host, bytes);
    copies_[host] = {bytes, bufs_.back().data()};
    bytes_ += bytes;
    return bufs_.back().data();
  }
  // n floats (biases, norm weights, embeddings, gates).
  const float* place(const float* host, int64_t n) {
    return static_cast<const float*>(place(static_cast<const void*>(host), size_t(n) * sizeof(float)));
  }
  // A weight matrix struct with data / host / dtype / rows / cols (model/llama.h's LlamaWeight):
  // `data` becomes the backend's pointer for the rows x cols matrix at `host` (taken from `data`
  // when unset, and kept there, so host readers still find the mmap).
  template <class Matrix>
  void place_matrix(Matrix& w) {
    if (!w.host) w.host = w.data;
    w.data = place(w.host, size_t(w.rows) * dtype_row_bytes(w.dtype, w.cols));
  }
  // place_matrix for a matrix that gemm() takes as W: the backend may also keep it in a layout of
  // its own (Backend::pack_gemm_weight: the CPU's 16-row repacked q4_0 / q8_0, which then replaces
  // the mapped bytes in memory), held as long as this object. `data` is unchanged by the packing:
  // gemm() on it finds the packed copy; host readers still read the original bytes.
  // `rows`: what the matrix meets (GemmRows::Many: only many activation rows per call, e.g. a
  // vision tower's, which the CPU keeps bf16 matrices in GEMM panels for).
  template <class Matrix>
  void place_gemm_matrix(Matrix& w, GemmRows rows = GemmRows::Any) {
    place_matrix(w);
    if (!w.data) return;
    if (auto p = be_->pack_gemm_weight(w.data, w.dtype, w.rows, w.cols, rows)) {
      packed_bytes_ += p->bytes();
      packed_.push_back(std::move(p));
    }
  }
  // Waits for the uploads (the host ranges may be released afterwards).
  void finish() {
    if (be_ && !be_->uses_host_memory()) be_->synchronize();
  }

  // The backend placed on, or null before begin().
  Backend* backend() const { return be_; }
  // Whether ops on `be` may use the placed pointers: the same backend, or, when nothing was
  // copied (never placed, or placed on host memory), any backend that computes on host memory.
  bool usable_on(const Backend& be) const {
    if (be_ == &be) return true;
    return be.uses_host_memory() && (!be_ || be_->uses_host_memory());
  }
  // Throws Error(InvalidArgument) naming `what` and both places when !usable_on(be).
  void require_usable_on(const Backend& be, const std::string& what) const {
    if (usable_on(be)) return;
    throw Error(ErrorCode::InvalidArgument, what + ": its weights are in " +
                                                (be_ ? be_->describe() : std::string("host memory (not placed on a backend)")) +
                                                ", not in " + be.describe() + "; run it on the backend of its model");
  }
  // Bytes copied to the device (0 on the CPU).
  size_t device_bytes() const { return bytes_; }
  // Bytes of the backend's packed copies (place_gemm_matrix; a matrix packed twice counts twice).
  size_t packed_bytes() const { return packed_bytes_; }

 private:
  Backend* be_ = nullptr;
  std::vector<BackendBuffer> bufs_;
  std::map<const void*, std::pair<size_t, void*>> copies_;  // host -> (bytes, device copy)
  size_t bytes_ = 0;
  std::vector<std::unique_ptr<PackedGemmWeight>> packed_;
  size_t packed_bytes_ = 0;
};

}  // namespace emollm
