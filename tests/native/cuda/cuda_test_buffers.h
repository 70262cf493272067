// Test helpers of the CUDA kernel tests: a seeded generator, device buffers that upload and
// download host vectors, and bf16 rounding of a host vector. Only for tests/native/cuda.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../../../base/dtype.h"
#include "../../../base/error.h"

namespace emollm_test {
namespace cuda_buffers {

// xorshift64; `salt` keeps each test file's historical sequences (3, 7, 11).
struct CuRng {
  uint64_t s;
  explicit CuRng(uint64_t seed, uint64_t salt = 3) : s(seed * 0x9E3779B97F4A7C15ull + salt) {}
  float uniform(float lo, float hi) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    return lo + (hi - lo) * float((s >> 11) * (1.0 / 9007199254740992.0));
  }
};

inline void cu_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw emollm::Error(emollm::ErrorCode::Internal, std::string(what) + ": " + cudaGetErrorString(e));
}

struct DevBuf {
  void* p = nullptr;
  size_t n = 0;
  DevBuf() = default;
  explicit DevBuf(size_t bytes) : n(bytes) { if (bytes) cu_check(cudaMalloc(&p, bytes), "cudaMalloc"); }
  template <typename T>
  explicit DevBuf(const std::vector<T>& h) : DevBuf(h.size() * sizeof(T)) {
    if (n) cu_check(cudaMemcpy(p, h.data(), n, cudaMemcpyHostToDevice), "upload");
  }
  ~DevBuf() { if (p) cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  float* f() const { return static_cast<float*>(p); }
  template <typename T>
  std::vector<T> get(size_t count) const {
    std::vector<T> h(count);
    cu_check(cudaDeviceSynchronize(), "sync");
    cu_check(cudaMemcpy(h.data(), p, count * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return h;
  }
};

inline std::vector<float> rand_vec(size_t n, CuRng& r, float lo, float hi) {
  std::vector<float> v(n);
  for (auto& x : v) x = r.uniform(lo, hi);
  return v;
}
inline std::vector<uint16_t> round_bf16(std::vector<float>& w) {
  std::vector<uint16_t> b(w.size());
  for (size_t i = 0; i < w.size(); ++i) { b[i] = emollm::f32_to_bf16(w[i]); w[i] = emollm::bf16_to_f32(b[i]); }
  return b;
}

}  // namespace cuda_buffers
}  // namespace emollm_test
