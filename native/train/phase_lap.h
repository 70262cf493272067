// A stopwatch over the trainer's phases (MvpPhaseTimes): each call adds the time since the
// previous one to a counter. Shared by the CPU and the device decoder paths of the MVP trainer.
#pragma once
#include <chrono>

namespace emollm {

struct PhaseLap {
  std::chrono::steady_clock::time_point t = std::chrono::steady_clock::now();
  void operator()(double& slot) {
    const auto now = std::chrono::steady_clock::now();
    slot += std::chrono::duration<double>(now - t).count();
    t = now;
  }
};

}  // namespace emollm
