// Shared by the CUDA tests: whether a usable CUDA device is here (asked once; the reason is
// printed when not), so every GPU test skips with a printed reason on a machine without one
// while the tests of the no-device errors still run.
#pragma once
#include <cstdio>
#include <string>

#include "../../../native/core/cuda_backend.h"
#include "../../../base/error.h"

namespace emollm_test {

// "" when a CUDA device (sm_80+) can be used, else why not.
inline const std::string& gpu_unavailable_reason() {
  static const std::string reason = [] {
    try {
      const auto devs = emollm::cuda_devices();
      for (const auto& d : devs)
        if (d.major >= 8) return std::string();
      return std::string("no CUDA device of sm_80 or newer");
    } catch (const emollm::Error& e) {
      return std::string(e.what());
    }
  }();
  return reason;
}

}  // namespace emollm_test

// First statement of a GPU test: returns (after printing why) when there is no usable device.
#define SKIP_WITHOUT_GPU()                                                                             \
  do {                                                                                                 \
    if (!::emollm_test::gpu_unavailable_reason().empty()) {                                            \
      std::printf("  [skip] no usable CUDA device: %s\n", ::emollm_test::gpu_unavailable_reason().c_str()); \
      return;                                                                                          \
    }                                                                                                  \
  } while (0)
