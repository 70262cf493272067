#include "core/runtime.h"

#include <algorithm>

#include "base/cpu_features.h"
#include "base/error.h"
#include "core/emulated_device_backend.h"
#if defined(EMOLLM_WITH_CUDA)
#include "core/cuda_backend.h"
#endif
#include "core/profiling_backend.h"

namespace emollm {

DeviceSpec parse_device(const std::string& name) {
  DeviceSpec d;
  if (name == "cpu") return d;
  if (name == "emulated" && emulated_device_enabled()) {  // the strict test device, never offered otherwise
    d.kind = DeviceKind::Emulated;
    return d;
  }
  d.kind = DeviceKind::Cuda;
  if (name == "cuda") return d;
  if (name.size() > 5 && name.size() <= 8 && name.compare(0, 5, "cuda:") == 0 &&
      name.find_first_not_of("0123456789", 5) == std::string::npos && !(name.size() > 6 && name[5] == '0')) {
    d.index = std::stoi(name.substr(5));
    if (d.index <= 255) return d;
  }
  throw Error(ErrorCode::InvalidArgument, "unknown device \"" + name + "\" (use 'cpu', 'cuda' or 'cuda:N')");
}

DeviceKind device_from_name(const std::string& name) { return parse_device(name).kind; }

const char* device_name(DeviceKind d) {
  return d == DeviceKind::Cuda ? "cuda" : d == DeviceKind::Emulated ? "emulated" : "cpu";
}

bool cuda_built() {
#if defined(EMOLLM_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

void require_device(DeviceKind d, int index) {
  if (d == DeviceKind::Cpu) return;
  if (d == DeviceKind::Emulated) {
    if (!emulated_device_enabled())
      throw Error(ErrorCode::InvalidArgument, "unknown device \"emulated\" (use 'cpu', 'cuda' or 'cuda:N')");
    return;
  }
  if (!cuda_built())
    throw Error(ErrorCode::Unsupported,
                "device 'cuda': this build of emollm has no CUDA support. Build one on a machine with the CUDA "
                "toolkit (nvcc on PATH): `npm run build:cmake` (cmake-js; EMOLLM_CUDA=AUTO finds nvcc, "
                "EMOLLM_CUDA=ON insists), then load with { device: 'cuda' }");
#if defined(EMOLLM_WITH_CUDA)
  const int n = cuda_device_count();  // typed: no driver / no device
  EMOLLM_CHECK_ARG(index >= 0 && index < n, "device 'cuda:" + std::to_string(index) + "': this machine has " +
                                                std::to_string(n) + " CUDA device(s)");
#else
  (void)index;
#endif
}

Runtime& Runtime::instance() {
  static Runtime* rt = new Runtime();  // never destroyed: pools may outlive static destruction order
  return *rt;
}

namespace {
void check_threads(int threads) {
  EMOLLM_CHECK_ARG(threads >= 0 && threads <= 1024, "threads must be between 0 (physical cores) and 1024, got " +
                                                        std::to_string(threads));
}
}  // namespace

void Runtime::set_defaults(const RuntimeOptions& o) {
  check_threads(o.threads);
  if (o.device_set) require_device(o.device, o.device_index);
  std::lock_guard<std::mutex> lk(mu_);
  if (o.device_set) {
    defaults_.device = o.device;
    defaults_.device_index = o.device_index;
    defaults_.device_set = true;
  }
  if (o.threads != defaults_.threads) {
    defaults_.threads = o.threads;
    default_pool_.reset();  // in-flight work keeps its shared_ptr; the next call gets the new size
  }
}

RuntimeOptions Runtime::defaults() const {
  std::lock_guard<std::mutex> lk(mu_);
  return defaults_;
}

int Runtime::default_threads_locked() const {
  if (defaults_.threads > 0) return defaults_.threads;
  const int cores = cpu_features().physical_cores;
  return cores > 0 ? cores : 1;
}

RuntimeOptions Runtime::resolve(const RuntimeOptions& requested) const {
  check_threads(requested.threads);
  std::lock_guard<std::mutex> lk(mu_);
  RuntimeOptions r;
  r.device = requested.device_set ? requested.device : defaults_.device;
  r.device_index = requested.device_set ? requested.device_index : defaults_.device_index;
  r.device_set = true;
  r.threads = requested.threads > 0 ? requested.threads : default_threads_locked();
  return r;
}

std::shared_ptr<ThreadPool> Runtime::pool(int threads) {
  check_threads(threads);
  std::lock_guard<std::mutex> lk(mu_);
  const int n = threads > 0 ? threads : default_threads_locked();
  if (threads == 0 && default_pool_ && default_pool_->size() == n) return default_pool_;
  pools_.erase(std::remove_if(pools_.begin(), pools_.end(), [](const auto& e) { return e.second.expired(); }),
               pools_.end());
  std::shared_ptr<ThreadPool> p;
  for (auto& e : pools_)
    if (e.first == n && (p = e.second.lock())) break;
  if (!p) {
    p = std::make_shared<ThreadPool>(n);
    pools_.emplace_back(n, p);
  }
  if (threads == 0) default_pool_ = p;
  return p;
}

std::shared_ptr<Backend> Runtime::backend(const RuntimeOptions& requested) {
  const RuntimeOptions r = resolve(requested);
  require_device(r.device, r.device_index);
  // A GPU backend is one per device whatever the CPU thread count (it owns device memory and
  // streams; two would split the caching allocator for nothing).
  const int threads_key = r.device == DeviceKind::Cuda ? 0 : r.threads;
  // Serialised creation: two threads asking for the same new CUDA backend must not both build one.
  std::lock_guard<std::mutex> create_lk(create_mu_);
  {
    std::lock_guard<std::mutex> lk(mu_);
    backends_.erase(std::remove_if(backends_.begin(), backends_.end(), [](const auto& e) { return e.backend.expired(); }),
                    backends_.end());
    for (auto& e : backends_)
      if (e.device == r.device && e.threads == threads_key && e.device_index == r.device_index)
        if (auto b = e.backend.lock()) return b;
  }
  std::shared_ptr<Backend> b;
#if defined(EMOLLM_WITH_CUDA)
  if (r.device == DeviceKind::Cuda) b = make_cuda_backend(r.device_index);
#endif
  if (r.device == DeviceKind::Emulated) b = make_emulated_device_backend(pool(r.threads));
  if (!b) b = make_cpu_backend(pool(r.threads));
  if (profile_enabled()) b = make_profiling_backend(std::move(b));  // EMOLLM_PROFILE=1: per-op timings
  std::lock_guard<std::mutex> lk(mu_);
  backends_.push_back({r.device, threads_key, r.device_index, b});
  return b;
}

Runtime::Info Runtime::info() const {
  std::lock_guard<std::mutex> lk(mu_);
  Info i;
  i.device = defaults_.device;
  i.threads = default_threads_locked();
  i.cuda_built = cuda_built();
  for (const auto& e : pools_) {
    const long users = e.second.use_count();
    if (users == 0) continue;
    const bool is_default = default_pool_ && !e.second.owner_before(default_pool_) && !default_pool_.owner_before(e.second);
    i.pools.emplace_back(e.first, int(users) - (is_default ? 1 : 0));
  }
  for (const auto& e : backends_)
    if (auto b = e.backend.lock()) i.backends.push_back(b->describe());
  return i;
}

}  // namespace emollm
