// The runtime: where every compute parameter of every entry point ends. `{ device, threads }`
// from loadModel, analyze / the face analyzer, configure, emollm eval and the CLI all become one
// RuntimeOptions, resolved here against the process defaults (configure()), and the process-wide
// Runtime owns what they select: the CPU compute pools (one per thread count, shared) and the
// backends (one per device and thread count, shared by every model that asks for the same).
//
// Lifetimes: a model or face analyzer keeps the shared_ptr it was given, so reconfiguring never
// pulls a pool out from under running work; the runtime itself keeps only the default pool and
// weak references to the rest.
#pragma once
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "base/thread_pool.h"
#include "core/backend.h"

namespace emollm {

struct RuntimeOptions {
  DeviceKind device = DeviceKind::Cpu;
  int device_index = 0;     // which GPU: 'cuda:N' (0 for 'cuda' and for the CPU)
  bool device_set = false;  // false: the process default (configure({ device }))
  int threads = 0;          // 0: the process default (configure({ threads })), else physical cores
};

// "cpu" / "cuda" / "cuda:N" -> DeviceKind; anything else throws Error(InvalidArgument) naming
// the choices. "emulated" (the strict test device, core/emulated_device_backend.h) is accepted
// only when EMOLLM_EMULATED_DEVICE=1, and is then a CPU-thread-keyed backend like the CPU's.
DeviceKind device_from_name(const std::string& name);
// The same, with the device index ("cuda:1" -> {Cuda, 1}; "cuda" -> {Cuda, 0}; N in [0, 255]).
struct DeviceSpec {
  DeviceKind kind = DeviceKind::Cpu;
  int index = 0;
};
DeviceSpec parse_device(const std::string& name);
const char* device_name(DeviceKind d);
// True when this binary was built with CUDA kernels (EMOLLM_WITH_CUDA).
bool cuda_built();
// Throws Error(Unsupported) when `d` cannot run in this build, saying how to get one that can;
// in a CUDA build, also when the machine has no NVIDIA driver or no device (saying which), and
// Error(InvalidArgument) when `index` is past the device count.
void require_device(DeviceKind d, int index = 0);

class Runtime {
 public:
  static Runtime& instance();

  // configure(): the defaults of options that leave device / threads unset. Validated here
  // (require_device); threads in [0, 1024], 0 = physical cores.
  void set_defaults(const RuntimeOptions& o);
  RuntimeOptions defaults() const;

  // Options with every default filled in: device set, threads >= 1.
  RuntimeOptions resolve(const RuntimeOptions& requested) const;

  // The shared CPU compute pool of `threads` threads (0 = the default thread count).
  std::shared_ptr<ThreadPool> pool(int threads = 0);
  // The shared backend for these options (resolved first; require_device applies).
  std::shared_ptr<Backend> backend(const RuntimeOptions& requested);

  struct Info {
    DeviceKind device;  // default device
    int threads;        // default thread count (resolved)
    bool cuda_built;
    std::vector<std::pair<int, int>> pools;  // live CPU pools: (threads, users outside the runtime)
    std::vector<std::string> backends;       // live backends, described
  };
  Info info() const;

 private:
  Runtime() = default;
  int default_threads_locked() const;

  mutable std::mutex mu_;
  RuntimeOptions defaults_;
  std::shared_ptr<ThreadPool> default_pool_;  // kept alive: standalone kernel calls use it per call
  std::vector<std::pair<int, std::weak_ptr<ThreadPool>>> pools_;
  std::mutex create_mu_;  // held (before mu_) while a backend is created
  struct BackendEntry {
    DeviceKind device;
    int threads;  // 0 for a GPU backend
    int device_index;
    std::weak_ptr<Backend> backend;
  };
  std::vector<BackendEntry> backends_;
};

}  // namespace emollm
