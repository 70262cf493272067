// The CUDA backend: the Backend interface (core/backend.h) on an NVIDIA GPU, forwarding to
// kernels/cuda. Built only in a CUDA build (EMOLLM_WITH_CUDA; CMake EMOLLM_CUDA=AUTO/ON); this
// header needs no CUDA headers, so core/runtime.cpp can include it in any build.
//
// Memory: device memory from a caching allocator (freed blocks are kept per size and reused
// once the stream that last used them has passed the free; out of memory first returns the
// cache to the driver, then throws Error(OutOfMemory) naming the free and the needed bytes).
// Weights are uploaded once by the model code (alloc + upload) and stay on the device in their
// stored dtype: f32 / f16 / bf16 as stored, q8_0 / q4_0 still quantised (the GEMV and the
// tensor-core GEMM dequantise in registers).
//
// Index arrays: rope()'s positions and embedding_lookup()'s ids may be device memory (what the
// model code passes: it uploads them once per pass) or host memory. Device ones are used in place,
// with no transfer or host work per call; host ones are staged in one upload (and host ids are
// range-checked first; device ids were checked by whoever uploaded them, and the kernel writes a
// NaN row rather than read outside the table for a bad one). RopeParams::inv_freq is a host
// parameter (as on every backend): each RoPE configuration's frequency table is computed and
// uploaded once, on first use, and kept on the device for the backend's lifetime.
//
// Errors: a machine without the NVIDIA driver, or without a device, gets Error(Unsupported)
// saying which (the CUDA runtime is linked statically and loads the driver at run time, so the
// process never fails to start); 'cuda:N' past the device count is Error(InvalidArgument);
// a device older than sm_80 is Error(Unsupported); a failed kernel is Error(Internal) with the
// CUDA error string.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"

namespace emollm {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;  // compute capability
  size_t total_bytes = 0;
  int multiprocessors = 0;
};

// How many CUDA devices this process sees (cudaGetDeviceCount: creates no context); throws
// Error(Unsupported) when there is no driver or no device. Only in a CUDA build.
int cuda_device_count();

// The devices this process can use; throws Error(Unsupported) when there is no driver or no
// device (the message says which, and what to install). Only in a CUDA build.
std::vector<CudaDeviceInfo> cuda_devices();

// A backend on device `index` (0-based, 'cuda:N'). Throws as above; InvalidArgument when the
// index is past the device count.
std::unique_ptr<Backend> make_cuda_backend(int index);

}  // namespace emollm
