// The runtime (native/core/runtime.h): device names, the CUDA error of a CPU build, defaults
// (configure), shared pools and backends.
#include <string>

#include "base/error.h"
#include "core/runtime.h"
#include "testing.h"

using namespace emollm;

namespace {
// Restores the process defaults after a test changes them.
struct DefaultsScope {
  RuntimeOptions saved = Runtime::instance().defaults();
  ~DefaultsScope() {
    RuntimeOptions r = saved;
    r.device_set = true;
    Runtime::instance().set_defaults(r);
  }
};
}  // namespace

TEST(runtime_device_names) {
  EXPECT(device_from_name("cpu") == DeviceKind::Cpu);
  EXPECT(device_from_name("cuda") == DeviceKind::Cuda);
  EXPECT_THROWS(device_from_name("tpu"), ErrorCode::InvalidArgument);
  EXPECT(std::string(device_name(DeviceKind::Cuda)) == "cuda");
  require_device(DeviceKind::Cpu);  // never throws
  // 'cuda:N' names a GPU by index; anything malformed is InvalidArgument in every build.
  EXPECT(parse_device("cuda:2").kind == DeviceKind::Cuda && parse_device("cuda:2").index == 2);
  EXPECT(parse_device("cuda").index == 0 && device_from_name("cuda:0") == DeviceKind::Cuda);
  for (const char* bad : {"cuda:", "cuda:01", "cuda:-1", "cuda:256", "cuda:1x", "gpu:0"})
    EXPECT_THROWS(parse_device(bad), ErrorCode::InvalidArgument);
}

TEST(runtime_cuda_unsupported_says_how_to_build) {
  if (cuda_built()) {
    std::printf("  skipped: this build has CUDA kernels (the no-CUDA message does not apply)\n");
    return;
  }
  bool thrown = false;
  try {
    require_device(DeviceKind::Cuda);
  } catch (const Error& e) {
    thrown = true;
    EXPECT(e.code() == ErrorCode::Unsupported);
    EXPECT(std::string(e.what()).find("npm run build:cmake") != std::string::npos);
    EXPECT(std::string(e.what()).find("nvcc") != std::string::npos);
  }
  EXPECT(thrown);
  RuntimeOptions o;
  o.device = DeviceKind::Cuda;
  o.device_set = true;
  EXPECT_THROWS(Runtime::instance().backend(o), ErrorCode::Unsupported);
  EXPECT_THROWS(Runtime::instance().set_defaults(o), ErrorCode::Unsupported);
  BackendOptions bo;
  bo.device = DeviceKind::Cuda;
  EXPECT_THROWS(make_backend(bo), ErrorCode::Unsupported);
}

TEST(runtime_defaults_and_resolve) {
  DefaultsScope restore;
  Runtime& rt = Runtime::instance();
  RuntimeOptions d;
  d.threads = 3;
  rt.set_defaults(d);
  EXPECT(rt.resolve({}).threads == 3);
  EXPECT(rt.resolve({}).device == DeviceKind::Cpu);
  RuntimeOptions two;
  two.threads = 2;
  EXPECT(rt.resolve(two).threads == 2);
  EXPECT(rt.pool()->size() == 3);
  EXPECT(rt.info().threads == 3);
  RuntimeOptions bad;
  bad.threads = -1;
  EXPECT_THROWS(rt.set_defaults(bad), ErrorCode::InvalidArgument);
  bad.threads = 5000;
  EXPECT_THROWS(rt.resolve(bad), ErrorCode::InvalidArgument);
  d.threads = 0;  // back to physical cores
  rt.set_defaults(d);
  EXPECT(rt.resolve({}).threads >= 1);
}

TEST(runtime_shares_pools_and_backends) {
  Runtime& rt = Runtime::instance();
  auto p1 = rt.pool(2), p2 = rt.pool(2), p3 = rt.pool(1);
  EXPECT(p1.get() == p2.get());
  EXPECT(p1.get() != p3.get());
  EXPECT(p1->size() == 2 && p3->size() == 1);
  RuntimeOptions o;
  o.threads = 2;
  auto b1 = rt.backend(o), b2 = rt.backend(o);
  EXPECT(b1.get() == b2.get());
  EXPECT(b1->device() == DeviceKind::Cpu);
  EXPECT(b1->describe().find("2 threads") != std::string::npos);
  o.threads = 1;
  auto b3 = rt.backend(o);
  EXPECT(b3.get() != b1.get());
  bool listed = false;
  for (const auto& pool : rt.info().pools)
    if (pool.first == 2 && pool.second >= 2) listed = true;  // p1/p2 (one shared_ptr each) and b1's
  EXPECT(listed);
  // A backend computes on the runtime's pool: the same object the pool() call returns.
  float x[4] = {1, 2, 3, 4}, y[4];
  b1->rmsnorm(x, 4, nullptr, y, 4, 1, 4, 0.0f);
  EXPECT_NEAR(y[3], 4.0 / std::sqrt(7.5), 1e-6);
}
