// Run-time CPU feature detection and the instruction-set level kernels dispatch on.
// Kernels are compiled for every level with function target attributes (no per-file flags),
// and each call picks the best level the CPU supports, capped by a user/test setting.
#pragma once
#include <string>

namespace emollm {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512bf16 = false, avx512vnni = false, avx512fp16 = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;
  bool amx_usable = false;  // the OS granted AMX tile state to this process (Linux arch_prctl)
  int physical_cores = 1;
  int logical_cpus = 1;
  std::string brand;
  // x86: AMD's vendor string; the display family and model (cpuid leaf 1, extended fields added)
  bool amd = false;
  int family = 0, model = 0;
  // 512-bit operations run as two 256-bit halves (AMD Zen 4, family 25): a zmm vpdpbusd / FMA
  // takes the issue slots of two ymm ones, so a kernel's arithmetic is half as fast against the
  // same memory and caches as on full-width units (Zen 5, Intel). Defaults that depend on that
  // balance are chosen by it (gemv_repacked.cpp's X-panel kernel: kPanelDefaults; the
  // decode GEMVs' prefetch and streams: kernels/cpu/decode_tuning.h).
  bool avx512_double_pumped = false;
};

// The double-pumped rule from the vendor, family and AVX-512 (detect() applies it; tests too):
// AMD family 25 (Zen 4) with AVX-512. Server / desktop Zen 5 (family 26) has full-width units
// (mobile Zen 5 parts split 512-bit ops too, but keep Zen 5's defaults under this rule: not
// measured); earlier AMD families have no AVX-512.
bool avx512_double_pumped_cpu(bool amd, int family, bool avx512f);

// Ordered levels: a kernel for level L may use everything below it too.
//   Avx2   : AVX2 + FMA + F16C
//   Avx512 : AVX-512 F/BW/VL/DQ (+ BF16 dot products where avx512bf16 is present)
//   Amx    : Avx512 plus AMX-BF16 tiles (Intel Sapphire Rapids and later)
enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2, Amx = 3 };

const CpuFeatures& cpu_features();
const char* isa_name(Isa isa);
bool isa_from_name(const std::string& name, Isa* out);

// Highest level this CPU supports.
Isa isa_detected();
// Level kernels use now: min(detected, cap). The cap starts from the EMOLLM_ISA environment
// variable ("scalar", "avx2", "avx512", "amx"), else no cap. Tests set it to compare paths.
Isa isa_active();
void isa_set_cap(Isa cap);
Isa isa_cap();

// RAII helper for tests and benchmarks.
struct IsaCapScope {
  explicit IsaCapScope(Isa cap) : prev_(isa_cap()) { isa_set_cap(cap); }
  ~IsaCapScope() { isa_set_cap(prev_); }
  Isa prev_;
};

}  // namespace emollm
