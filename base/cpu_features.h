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
  // AVX-512 on 256-bit units, each 512-bit op issued as two halves (AMD Zen 4: family 25 with
  // AVX-512; Zen 5, family 26, has full-width units): half Zen 5's vdpbf16ps / FMA rate a cycle per
  // core, so kernels tuned on Zen 5 may want other choices here (see avx512_double_pumped_cpu).
  bool avx512_double_pumped = false;
  int physical_cores = 1;
  int logical_cpus = 1;
  std::string brand;
};

// Ordered levels: a kernel for level L may use everything below it too.
//   Avx2   : AVX2 + FMA + F16C
//   Avx512 : AVX-512 F/BW/VL/DQ (+ BF16 dot products where avx512bf16 is present)
//   Amx    : Avx512 plus AMX-BF16 tiles (Intel Sapphire Rapids and later)
enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2, Amx = 3 };

const CpuFeatures& cpu_features();
// The avx512_double_pumped rule, from CPUID's vendor string, display family (base + extended)
// and AVX-512 F: AMD family 25 (Zen 3 has no AVX-512, Zen 4 has it double-pumped).
bool avx512_double_pumped_cpu(const std::string& vendor, unsigned family, bool avx512f);
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
