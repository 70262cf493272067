// A strict emulated device for tests: device-readiness checked without a GPU.
//
// It computes with the CPU kernels but behaves like a device with its own memory:
//  - uses_host_memory() is false, so model code must upload weights and inputs and download
//    results, as on CUDA;
//  - alloc() hands out addresses of a reserved, inaccessible range (PROT_NONE on POSIX) and keeps
//    the bytes in a separate host "shadow" block, so the host dereferencing device memory faults
//    at once (as reading a cudaMalloc pointer on the host would) instead of silently working;
//  - every compute op checks that each pointer argument (with the extent the op reads or writes)
//    lies inside one block it allocated, and throws Error(InvalidArgument) naming the op and the
//    argument otherwise (a host pointer passed to a compute op); upload / download / copy check
//    their device side likewise and refuse a device pointer on the host side.
// Parameter structs (RopeParams::inv_freq) stay host-side, as the CUDA backend reads them there.
//
// Not a user device: Runtime offers it as device "emulated" only when the environment variable
// EMOLLM_EMULATED_DEVICE is "1" (tests set it), see core/runtime.h.
#pragma once
#include <memory>

#include "core/backend.h"

namespace emollm {

class ThreadPool;

// The emulated device computing on `pool` (shared; kept alive by the backend).
std::unique_ptr<Backend> make_emulated_device_backend(std::shared_ptr<ThreadPool> pool);
// True when the environment enables device "emulated" (EMOLLM_EMULATED_DEVICE=1).
bool emulated_device_enabled();

}  // namespace emollm
