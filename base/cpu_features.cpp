#include "cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define EMOLLM_X86 1
#endif
#if defined(__linux__)
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace emollm {
namespace {

#if EMOLLM_X86
uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}

// Linux keeps AMX tile data disabled until a process asks for it (kernel 5.16+).
bool request_amx_permission() {
#if defined(__linux__)
  constexpr long kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023;
  constexpr int kXfeatureXtiledata = 18;
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
  unsigned long bitmask = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &bitmask) != 0) return false;
  return (bitmask & (1ul << kXfeatureXtiledata)) != 0;
#else
  return false;
#endif
}
#endif

// Physical cores in this process's affinity mask: distinct (package, core) pairs from sysfs.
std::pair<int, int> count_cores() {
  int logical = int(std::thread::hardware_concurrency());
  if (logical <= 0) logical = 1;
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    std::set<std::pair<int, int>> cores;
    int n_allowed = 0;
    bool topology_ok = true;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (!CPU_ISSET(cpu, &set)) continue;
      ++n_allowed;
      const std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
      std::ifstream fc(base + "core_id"), fp(base + "physical_package_id");
      int core = -1, pkg = -1;
      if (!(fc >> core) || !(fp >> pkg)) { topology_ok = false; continue; }
      cores.insert({pkg, core});
    }
    if (n_allowed > 0) {
      const int physical = topology_ok && !cores.empty() ? int(cores.size()) : n_allowed;
      return {physical, n_allowed};
    }
  }
#endif
  return {logical, logical};
}

CpuFeatures detect() {
  CpuFeatures f;
  auto [phys, logical] = count_cores();
  f.physical_cores = phys;
  f.logical_cpus = logical;
#if EMOLLM_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  const unsigned max_leaf = a;
  char vendor[13] = {0};
  std::memcpy(vendor, &b, 4); std::memcpy(vendor + 4, &d, 4); std::memcpy(vendor + 8, &c, 4);
  f.brand = vendor;
  f.amd = std::strcmp(vendor, "AuthenticAMD") == 0;
  unsigned ext = 0;
  if (__get_cpuid(0x80000000, &ext, &b, &c, &d) && ext >= 0x80000004) {
    char brand[49] = {0};
    for (unsigned i = 0; i < 3; ++i) {
      __get_cpuid(0x80000002 + i, &a, &b, &c, &d);
      std::memcpy(brand + 16 * i, &a, 4); std::memcpy(brand + 16 * i + 4, &b, 4);
      std::memcpy(brand + 16 * i + 8, &c, 4); std::memcpy(brand + 16 * i + 12, &d, 4);
    }
    f.brand = brand;
    while (!f.brand.empty() && f.brand.back() == ' ') f.brand.pop_back();
  }
  __get_cpuid(1, &a, &b, &c, &d);
  {
    const int base_family = int((a >> 8) & 0xF), base_model = int((a >> 4) & 0xF);
    f.family = base_family == 0xF ? base_family + int((a >> 20) & 0xFF) : base_family;
    f.model = base_family == 0xF || base_family == 0x6 ? (int((a >> 16) & 0xF) << 4) + base_model : base_model;
  }
  const bool osxsave = c & (1u << 27);
  const bool fma = c & (1u << 12), f16c = c & (1u << 29), avx = c & (1u << 28);
  const uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  const bool os_avx = (xcr0 & 0x6) == 0x6;
  const bool os_avx512 = (xcr0 & 0xe6) == 0xe6;
  const bool os_amx = (xcr0 & (3ull << 17)) == (3ull << 17);
  if (max_leaf >= 7) {
    __get_cpuid_count(7, 0, &a, &b, &c, &d);
    f.avx2 = os_avx && avx && (b & (1u << 5));
    f.fma = os_avx && fma;
    f.f16c = os_avx && f16c;
    f.avx512f = os_avx512 && (b & (1u << 16));
    f.avx512dq = os_avx512 && (b & (1u << 17));
    f.avx512bw = os_avx512 && (b & (1u << 30));
    f.avx512vl = os_avx512 && (b & (1u << 31));
    f.avx512vnni = os_avx512 && (c & (1u << 11));
    f.avx512fp16 = os_avx512 && (d & (1u << 23));
    f.amx_bf16 = os_amx && (d & (1u << 22));
    f.amx_tile = os_amx && (d & (1u << 24));
    f.amx_int8 = os_amx && (d & (1u << 25));
    __get_cpuid_count(7, 1, &a, &b, &c, &d);
    f.avx512bf16 = os_avx512 && (a & (1u << 5));
    if (f.amx_tile && f.amx_bf16) f.amx_usable = request_amx_permission();
  }
  f.avx512_double_pumped = avx512_double_pumped_cpu(f.amd, f.family, f.avx512f);
#endif
  return f;
}

Isa best_isa(const CpuFeatures& f) {
  const bool avx512 = f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.fma && f.f16c;
  if (avx512 && f.amx_usable && f.amx_bf16) return Isa::Amx;
  if (avx512) return Isa::Avx512;
  if (f.avx2 && f.fma && f.f16c) return Isa::Avx2;
  return Isa::Scalar;
}

Isa initial_cap() {
  const char* env = std::getenv("EMOLLM_ISA");
  Isa cap = Isa::Amx;
  if (env && *env && !isa_from_name(env, &cap)) cap = Isa::Amx;
  return cap;
}

std::atomic<int>& cap_storage() {
  static std::atomic<int> cap{int(initial_cap())};
  return cap;
}

}  // namespace

bool avx512_double_pumped_cpu(bool amd, int family, bool avx512f) { return amd && family == 25 && avx512f; }

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Amx: return "amx";
  }
  return "?";
}

bool isa_from_name(const std::string& name, Isa* out) {
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Amx})
    if (name == isa_name(i)) { *out = i; return true; }
  return false;
}

Isa isa_detected() {
  static const Isa best = best_isa(cpu_features());
  return best;
}

Isa isa_cap() { return Isa(cap_storage().load(std::memory_order_relaxed)); }
void isa_set_cap(Isa cap) { cap_storage().store(int(cap), std::memory_order_relaxed); }

Isa isa_active() {
  const Isa d = isa_detected(), c = isa_cap();
  return int(c) < int(d) ? c : d;
}

}  // namespace emollm
