// Per-CPU defaults of the decode (M = 1) GEMVs' read patterns: one table keyed on a CPU trait
// detected once (base/cpu_features.h avx512_double_pumped), read when each setting's process-wide
// value is first used. The settings keep their setters (gemm_internal.h set_gemv_streams_prefetch,
// set_q40_ms_prefetch, set_gemv_block_prefetch; gemv_kquant_vnni.h set_kquant_streams) for the
// tests and A/B tools. Every entry changes only how the weights are read (software prefetch,
// streams a thread), never the arithmetic or its order: the same bits on every CPU. The prefill / few-row kernels' per-CPU
// choices by the same trait sit with their kernel (gemv_repacked.cpp kPanelDefaults, injected by
// gemm_internal.h set_repacked_double_pumped): they are blockings of one kernel, read per call.
#pragma once
#include <atomic>
#include <type_traits>
#include <utility>

namespace emollm {
struct CpuFeatures;
namespace gemm_detail {

// A streaming GEMV's software prefetch along its streams: into L1 (T0), non-temporal (NTA:
// weights are read once a token) or none along the streams (the hardware prefetchers alone; the
// q4_0 pass still prefetches each stream's first 4 KiB at a cold start). Same bits.
enum class GemvPrefetch { T0 = 0, Nta = 1, None = 2, T1 = 3 };  // T1: into L2 (the q8_0 parts pass only)

struct DecodeTuning {
  GemvPrefetch stream_prefetch;  // f32 / f16 / bf16 M = 1 stream kernels (gemm_avx512.cpp gemv_streams), 1 KiB ahead
  GemvPrefetch q40_prefetch;     // the q4_0 two-stream pass (gemv_repacked.cpp ms_q40_avx512), a record 4 KiB ahead
  int kquant_streams;            // q4_K / q6_K lean pass: streams a thread (gemv_kquant_vnni.cpp kq_records_sg_lean)
  GemvPrefetch kquant_prefetch;  // q4_K / q6_K lean pass: T0 every line 8 KiB (two streams 4 KiB) ahead, or None (Nta: as T0)
  bool attn_pipeline_l2;         // decode attention's pipelined prefetch of the next sub-block (attention.cpp
                                 // PfCursor, attention_internal.h decode_pipeline_l2): into L2 (prefetcht2), not L1
  int q80_streams;               // q8_0 M = 1 pass: 0 = four adjacent groups a pass, S = S contiguous parts (gemv_repacked.cpp parts_q80_avx512)
  GemvPrefetch q80_prefetch;     // that parts pass's prefetch along its streams, 4 KiB ahead
  GemvPrefetch block_prefetch;   // bf16 8-row block GEMV on 4 KiB pages (gemm_avx512.cpp bf16_gemv_block), 1 KiB ahead
  bool q40_even_claims;          // the q4_0 pass's 2+ thread claims in whole super-group pairs (gemv_repacked.cpp gemv_dispatch)
};

// The table. Zen 5 (full-width AVX-512; every default before session 25, measured there): T0,
// T0, 2 streams. Double-pumped AVX-512 (Zen 4; session 25, 1 thread, cold 2 MiB pages, thread CPU
// time, interleaved, bench/README): without software prefetch the stream kernels decode
// 1.08-1.30x (f32 / bf16 / f16 1.1B) and the q4_0 pass reads 1.49-1.63x (0.93-1.00x a plain
// 4-stream read, against 0.60-0.67x with T0; T1 1.05-1.31x, NTA 1.0x); the K-quant lean pass on
// one stream (its 8 KiB prefetch kept) 1.5x (q4_K) / 1.12x (q6_K) two streams. Session 26 (Zen 4,
// records in read order, kquant_records.h): the lean pass without software prefetch 1.23-1.29x
// (q4_K) / 1.11-1.12x (q6_K) with T0, 0.95-0.99x a plain one-stream read (kq_streams_ab). The decode
// attention's pipelined prefetch (1.1B shape: narrow rows, 8 query heads a kv head) on Zen 4 into
// L2 (session 26, 1 thread cold, thread CPU time, interleaved): 1.10-1.44x prefetcht0 by median
// (T1 1.06-1.09x; the whole sub-block at once 0.96x, twice the lines a step early 1.04-1.07x); in
// L2-resident data 1.04x; the 1.1B q4_0 decode at 1 thread 1.048 (noisy). Zen 5 keeps T0
// (session 22's measurements). Session 26 (Zen 4,
// 1 thread, cold 2 MiB pages, thread CPU time, load 8-11, q8_read_patterns / decode_switch_ab):
// the q8_0 pass in 2 contiguous parts a thread without prefetch 1.05-1.15x (median) the
// four-adjacent-groups pass on the 1.1B / 7B shapes, the 1.1B q8_0 decode 1.06-1.10x (four
// runs); 1 / 3 parts alike (1.15x / 1.08x decode, 1 against 2 parts 0.99x), a T1 prefetch along
// the parts 0.80x. The 2-thread decode A/B was unreadable under load (the lead's quiet run decides:
// `AB_SWITCH=q80_parts decode_switch_ab tinyllama-1.1b-q8_0.gguf 2 12 16`). Zen 5 keeps the
// four-group pass (unmeasured there). The bf16 8-row
// block GEMV on 4 KiB pages (bf16_gemv_block: weights without a 2 MiB-page copy) without its T0
// prefetch too (session 26, bench_kernels block-nopf rows at the 1.1B / 7B gate_up and down
// shapes, interleaved: 1 thread CPU time 1.11-1.37x by best, 2 threads at load 11 1.15-1.29x). The q4_0 pass's claims (session 26, h-step, Zen 4,
// 2 threads, bench_decode_sequence --ab even-claims, interleaved per layer, load 10-14): claims of
// whole super-group pairs read the 1.1B's q+k+v (3-super-group claims before, the last on one
// stream) 1.07-1.14x by median, the matrices whose claims were already even 0.99-1.02x; Zen 5 keeps
// single-pass claims (not measured there).
DecodeTuning decode_tuning_for(const CpuFeatures& f);
// decode_tuning_for(cpu_features()), computed once.
const DecodeTuning& decode_tuning();

// One entry's process-wide setting: the table's value for this CPU at first use, then what its
// setter stores (tests, A/B tools; between calls, so relaxed). DecodeSetting<&DecodeTuning::q40_prefetch>.
template <auto Entry>
struct DecodeSetting {
  using Value = std::decay_t<decltype(std::declval<const DecodeTuning&>().*Entry)>;
  static Value get() { return Value(var().load(std::memory_order_relaxed)); }
  static void set(Value v) { var().store(int(v), std::memory_order_relaxed); }

 private:
  static std::atomic<int>& var() {
    static std::atomic<int> v{int(decode_tuning().*Entry)};
    return v;
  }
};

}  // namespace gemm_detail
}  // namespace emollm
