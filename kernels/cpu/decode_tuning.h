// Per-CPU defaults of the decode (M = 1) GEMVs' read patterns: one table keyed on a CPU trait
// detected once (base/cpu_features.h avx512_double_pumped), read when each setting's process-wide
// value is first used. The settings keep their setters (gemm_internal.h set_gemv_streams_prefetch,
// set_q40_ms_prefetch; gemv_kquant_vnni.h set_kquant_streams) for the tests and A/B tools. Every
// entry changes only how the weights are read (software prefetch, streams a thread), never the
// arithmetic or its order: the same bits on every CPU. The prefill / few-row kernels' per-CPU
// choices by the same trait sit with their kernel (gemv_repacked.cpp kPanelDefaults, injected by
// gemm_internal.h set_repacked_double_pumped): they are blockings of one kernel, read per call.
#pragma once

namespace emollm {
struct CpuFeatures;
namespace gemm_detail {

// A streaming GEMV's software prefetch along its streams: into L1 (T0), non-temporal (NTA:
// weights are read once a token) or none along the streams (the hardware prefetchers alone; the
// q4_0 pass still prefetches each stream's first 4 KiB at a cold start). Same bits.
enum class GemvPrefetch { T0 = 0, Nta = 1, None = 2 };

struct DecodeTuning {
  GemvPrefetch stream_prefetch;  // f32 / f16 / bf16 M = 1 stream kernels (gemm_avx512.cpp gemv_streams), 1 KiB ahead
  GemvPrefetch q40_prefetch;     // the q4_0 two-stream pass (gemv_repacked.cpp ms_q40_avx512), a record 4 KiB ahead
  int kquant_streams;            // q4_K / q6_K lean pass: streams a thread (gemv_kquant_vnni.cpp kq_records_sg_lean)
  bool q40_even_claims;          // the q4_0 pass's 2+ thread claims in whole super-group pairs (gemv_repacked.cpp gemv_dispatch)
};

// The table. Zen 5 (full-width AVX-512; every default before session 25, measured there): T0,
// T0, 2 streams. Double-pumped AVX-512 (Zen 4; session 25, 1 thread, cold 2 MiB pages, thread CPU
// time, interleaved, bench/README): without software prefetch the stream kernels decode
// 1.08-1.30x (f32 / bf16 / f16 1.1B) and the q4_0 pass reads 1.49-1.63x (0.93-1.00x a plain
// 4-stream read, against 0.60-0.67x with T0; T1 1.05-1.31x, NTA 1.0x); the K-quant lean pass on
// one stream (its 8 KiB prefetch kept) 1.5x (q4_K) / 1.12x (q6_K) two streams. Session 26 (h-step, Zen 4,
// 2 threads, bench_decode_sequence --ab even-claims, interleaved per layer, load 10-14): claims of
// whole super-group pairs read the 1.1B's q+k+v (3-super-group claims before, the last on one
// stream) 1.07-1.14x by median, the matrices whose claims were already even 0.99-1.02x; Zen 5 keeps
// single-pass claims (not measured there).
DecodeTuning decode_tuning_for(const CpuFeatures& f);
// decode_tuning_for(cpu_features()), computed once.
const DecodeTuning& decode_tuning();

}  // namespace gemm_detail
}  // namespace emollm
