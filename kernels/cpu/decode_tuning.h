// Per-CPU defaults of the decode (M = 1) path: one table keyed on a CPU trait detected once
// (base/cpu_features.h avx512_double_pumped), each entry read when its process-wide setting is
// first used (DecodeSetting below). The settings keep their setters (gemm_internal.h
// set_gemv_streams_prefetch, set_q40_ms_prefetch, set_q80_streams, set_q80_prefetch, set_q80_ahead,
// set_q40_ms_ahead, set_q40_ms_addr_order, set_gemv_block_prefetch, set_gemv_half_long_streams,
// set_gemv_half_long_runs, set_gemv_owner_keep, set_gemv_streams_owner_keep; gemv_kquant_vnni.h
// set_kquant_streams, set_kquant_prefetch, set_kquant_owner_keep;
// attention_internal.h set_decode_pipeline_l2, set_decode_lean, set_decode_pv_chunks,
// set_decode_wide_pf_mode, set_decode_wide8_mode, set_decode_wide_lin) for the tests
// and A/B tools; apply_decode_tuning sets them all from one row. Every entry changes how memory is
// read (software prefetch, streams a thread, the cache level of the attention's KV prefetch, the
// order of the attention's loads) or how the same kernels are called (the attention's lean piece:
// one call a sub-block for all kv heads instead of one a kv head), never the arithmetic or its
// order per value (q40_addr_order reorders the operations across a record's groups, not those on
// one value): the same bits on every CPU. The prefill / few-row kernels' per-CPU choices by the
// same trait sit with their kernel (gemv_repacked.cpp kPanelDefaults, injected by gemm_internal.h
// set_repacked_double_pumped): they are blockings of one kernel, read per call.
#pragma once
#include <atomic>
#include <type_traits>
#include <utility>

namespace emollm {
struct CpuFeatures;
namespace gemm_detail {

// A streaming GEMV's software prefetch along its streams: into L1 (T0), non-temporal (NTA:
// weights are read once a token), none along the streams (the hardware prefetchers alone; the
// q4_0 pass and the q8_0 parts pass still prefetch each stream's first bytes at a cold start), or
// into L2 (T1: the q8_0 parts pass and, since session 30, the q4_0 two-stream pass; the other
// kernels read T1 as T0). Same bits.
enum class GemvPrefetch { T0 = 0, Nta = 1, None = 2, T1 = 3 };

// One row of the table. The member initializers are the full-width row (Zen 5, Intel, every CPU
// without the trait: the defaults measured on Zen 5 before session 25); the double-pumped row
// (Zen 4) lists only what differs (decode_tuning.cpp), so a new entry keeps Zen 5's behaviour by
// construction. Figures: bench/README.md, Zen 4 rows of sessions 25-26.
struct DecodeTuning {
  // f32 / f16 / bf16 M = 1 stream kernels (gemm_avx512.cpp gemv_streams), 1 KiB ahead. Zen 4:
  // None (session 25: the 1.1B decode 1.08-1.30x at 1 thread). Zen 5 re-measured (session 27, 1
  // thread, thread CPU time, interleaved, load 14-19): the kernel's speed with none over T0
  // 0.80-0.95x (bf16), 0.88-1.01x (f16), 0.94-0.98x (f32) at the 1.1B and 7B shapes
  // (half_read_patterns, f32_read_patterns; bench_kernels' huge-nopf rows 0.90-1.07x); 2 KiB or
  // 512 B ahead 0.84-0.96x; the 1.1B bf16 decode with none 0.867x (8 rounds, every round below
  // 0.93), f16 / f32 within the noise (1.06 / 0.98, rounds 0.82-1.32): T0 stays. Session 33 (the
  // same tools, 1 thread, thread CPU time, load 10.5-13.3, 3 processes x 20-30 rounds, median
  // r(med)): none bf16 0.91-0.94x / f16 0.95-0.99x at the five K >= 4096 shapes, f32 0.96-1.09x at
  // six 1.1B / 7B shapes (its A/A 0.93-1.02x); a scratch with one T0 prefetch a 128-byte step (the
  // step's first line only) bf16 0.86-0.92x / f16 0.69-0.94x (A/A 0.97-1.04x). The kernel reads at
  // 0.83-0.96x read-4 (bf16 / f16) and 0.94-0.98x (f32): at 1 thread the gap to a plain read of its
  // bytes is not its prefetch (nor, at K = 2048, x leaving L1: 8 KiB there).
  GemvPrefetch stream_prefetch = GemvPrefetch::T0;
  // The q4_0 two-stream pass (gemv_repacked.cpp ms_q40_avx512), a record q40_ahead ahead (below).
  // Zen 4: None (session 25: 1.49-1.63x, 0.93-1.00x a plain 4-stream read against 0.60-0.67x with
  // T0). Zen 5 keeps T0 (session 27, 1 thread, thread CPU time, load 8-18, eight 1.1B / 7B shapes:
  // None 0.44-0.67x T0's speed (256 x 2048: 0.82-0.91x), NTA 0.94-1.07x; the 1.1B / 7B q4_0 decode
  // without it 0.64-0.69x).
  GemvPrefetch q40_prefetch = GemvPrefetch::T0;
  // Session 30 (h-q4pf) built a spread form of that prefetch (one prefetch beside each quant /
  // scale line's load) and >= 2-thread twins of the q4_0 / q8_0 read entries (q40_spread,
  // q40_prefetch_mt / _spread_mt / _ahead_mt, q80_prefetch_mt / _ahead_mt). Zen 4 at 1 thread
  // (q40_read_patterns, thread CPU time, cold, six 1.1B / 7B shapes, median r(med) against none):
  // spread T0 512 B - 2 KiB 0.51-0.97x, NTA 1 KiB 0.73-0.79x, T1 1 KiB 0.97-1.05x; the 1.1B q4_0
  // decode with spread T1 1 KiB 0.94-1.00, the 7B 1.03-1.08. At 2 threads, quietly (the lead's
  // session 30 rows: wall, 233 short interleaved runs classed by bandwidth phase), no form won in
  // both phases (q4_0 spread T1 1-2 KiB 1.02-1.06x none in a low one, 0.80-0.98x in a high one, T0
  // 0.51-0.89x in both; q8_0 T1 1 KiB 0.98-1.00x; the 1.1B q4_0 decode with spread T1 2 KiB 1.047,
  // then 0.872): never set on a row, removed in session 31 (bench/README's Zen 4 rows keep them).
  // (q4_0's pass lags a plain 2-stream read at 2 threads, 1.09-1.44x, where no other pass does:
  // its arithmetic between the loads, not its prefetch.)
  // That pass's order of a record's loads, after its prefetch loop where it has one
  // (gemv_repacked.cpp record_block_q40_addr; before session 33 only without software prefetch):
  // true: the record's 18 lines in address order (the 4 groups' scales, then group by group its 4
  // quant lines), false: block_step's t-major order (line t of the 4 groups, then t + 1: 256-byte
  // strides back and forth across the record, the scales last). Same bits (the same operations on
  // each value in the same order). Zen 4: true (session 31, h-q4code; q40_read_patterns, 1 thread,
  // thread CPU time, cold 2 MiB-page copies, interleaved call by call, load 4.1-8.6, 4 processes x 60
  // rounds and 6 x 200 at 2560 x 2048, 2048 x 2048, 11264 x 2048, 2048 x 5632, 12288 x 4096, 4096 x
  // 11008, median r(med) by shape): 1.19-1.24x / 1.19-1.30x the t-major pass, at a plain 2-stream
  // read's rate (the pass 0.98-1.02x / 0.96-1.01x read-2's speed, t-major 0.79-0.85x / 0.74-0.85x);
  // with the weights in L2 0.97-0.98x (~64 GB/s a thread either way). The 1.1B q4_0 decode at 1
  // thread (decode_switch_ab AB_SWITCH=q40_addr, AB_CPU=1, 12 rounds x 16 tokens, load 4-8): on / off
  // 1.489 / 1.337 / 1.228 / 1.351 by total (median rounds 1.470 / 1.268 / 1.178 / 1.258, every round
  // but one >= 1.04; the t-major side 28-36 tok/s, erratic under the load, address order 41-48), A/As
  // 1.036 / 0.975; the 7B q4_0 decode (6 rounds x 4 tokens) 1.220 / 1.172 (median rounds 1.226 /
  // 1.193, 1.09-1.34). Quiet (the lead's session 31 row, load 0.1-0.9): at 2 threads (wall, 578 short
  // interleaved cycles, 11264 x 2048 / 4096 x 11008) 1.23-1.29x t-major, 0.97-1.02x read-2's speed
  // (t-major 0.76-0.83x); the 1.1B q4_0 decode 1.213 at 2 threads (A/A 1.099, the VM changing phase),
  // 1.202 at 1 thread CPU (A/A 0.990), the 7B 1.055 at 2 threads. Zen 5: true, with its T0 loop 2 KiB
  // ahead (q40_ahead; session 33, h-z5q4; session 22 there, the quant lines group by group with the
  // scales last, 0.97-1.04x). q40_read_patterns, 1 thread, thread CPU time, cold 2 MiB-page copies,
  // interleaved call by call, load 10-13 (NOT quiet), at 2560 x 2048, 2048 x 2048, 11264 x 2048, 2048
  // x 5632, 12288 x 4096, 4096 x 11008, median over 4 / 5 processes x 150 rounds of each one's
  // r(med), against the t-major T0 4 KiB pass (A/A 0.99-1.02): address order T0 2 KiB 1.037-1.101 /
  // 1.033-1.080 (the two sweeps); 4 KiB 1.01-1.04 / 0.99-1.04; 1 / 1.5 / 3 KiB 0.96-1.07 / 1.00-1.08
  // / 1.02-1.04; NTA 2 KiB 0.99-1.07; T1 4 KiB 0.91-1.04; t-major T0 2 KiB 1.02-1.04 (so the order
  // gives 1.00-1.06 of it, the distance the rest); without prefetch, address order 0.65-0.80 (t-major
  // 0.64-0.79): Zen 5 wants its prefetch. The t-major pass read at 0.96-1.11x read-2's speed (a plain
  // 2-stream read) and 0.75-0.89x read-4's; the address order 2 KiB by the same medians ~1.01-1.15x
  // read-2, 0.83-0.93x read-4 (the 4-stream read is what is left, as in session 27). A scratch spread
  // form (each line's prefetch beside its load, in address order) was no better: T0 2 KiB 0.99-1.11,
  // 3 KiB 1.00-1.09, NTA 2 KiB 0.97-1.09, weakest at the 2048-column shapes (0.99-1.00 at 2560 x
  // 2048): not kept. The 1.1B q4_0 decode at 1 thread (decode_switch_ab AB_SWITCH=q40_addr_t0,
  // AB_CPU=1, 10 x 16 tokens, load 13-15): on / off by total over 9 processes 0.994-1.102, median
  // 1.038 (median rounds 0.996-1.078), A/As 0.968-1.031 (median 0.985); the 7B (6 x 4 tokens) 1.015 /
  // 1.018 (median rounds 1.039 / 1.035), A/A 0.983: positive, not resolved from the noise at this
  // load. On the committed row (load 6.3, 3 processes x 100 rounds), the old pass 0.960 / 0.966 /
  // 0.984 the new one's speed at 2560 x 2048 / 11264 x 2048 / 4096 x 11008 (A/A 0.994-1.002), the new
  // one at 0.90-0.91x read-4's. 2 threads not measured (the lead, quietly: AB_SWITCH=q40_addr_t0).
  // Intel AVX-512 takes the full-width row (true, T0 2 KiB ahead), unmeasured (same bits).
  bool q40_addr_order = true;
  // How far ahead along each stream (bytes, a multiple of 64 in [64, 16384]; also what a cold
  // start prefetches of each stream). Zen 5: 2 KiB (session 33, with the address order above; the
  // t-major pass measured 4 KiB best in session 19). Zen 4: 4 KiB (its pass runs without prefetch:
  // only a cold start reads it; session 30 at 1 thread: T0 1 KiB 0.70-0.79x none, 4 KiB
  // 0.66-0.76x, T1 4 KiB 0.71-0.93x).
  int q40_ahead = 2048;
  // q4_K / q6_K lean pass (gemv_kquant_vnni.cpp kq_records_sg_lean): streams a thread. Zen 4: 1
  // (session 25: 1.5x two for q4_K, 1.12x for q6_K). Zen 5 keeps 2 on the read-order records
  // (session 27, kq_streams_ab, 1 thread, thread CPU, load 15-18: two streams 1.10-1.14x (q4_K) /
  // 1.06-1.11x (q6_K) one, both T0; the 1.1B decode at 1 thread, AB_SWITCH=kq_ms, 3 processes:
  // q4_k_m 1.09-1.15x, q6_k 1.12-1.19x).
  int kquant_streams = 2;
  // That pass's prefetch: T0 on every line 8 KiB (two streams: q4_K 2 KiB, q6_K 4 KiB) ahead, or
  // None (NTA reads as T0). Zen 4: None, with the records in read order (session 26, kquant_records.h: 1.23-1.29x
  // q4_K / 1.11-1.12x q6_K at 1 thread; the quiet 1.1B decode at 2 threads 1.27x q4_k_m, 1.06x q6_k).
  // Zen 5 keeps T0 (session 27, same tool, 1 thread): the read order lets q4_K's one stream go
  // without it (0.96-1.02x T0 8 KiB; the previous layout 0.56-0.63x), but not q6_K's (0.45-0.75x)
  // nor two streams (q4_K 0.86-0.93x, q6_K 0.46-0.63x of T0); the 1.1B decode at 1 thread,
  // AB_SWITCH=kq_nopf, 3 processes: none / T0 q4_k_m 0.71-0.82x, q6_k 0.52-0.69x.
  // Zen 4 re-measured (session 28, same tool, 1 thread, thread CPU time, load 10-14, 3 processes x
  // 100 rounds at the 1.1B and 7B shapes, med r/rnd against the row): one stream without prefetch
  // stays best, at 0.93-0.99x (q4_K) / 0.89-0.97x (q6_K) a plain one-stream read; two streams
  // 0.94-0.97x / 0.95-1.00x of it, T0 on one stream 4-16 KiB ahead 0.76-0.89x / 0.85-0.97x, two
  // streams 1-8 KiB ahead 0.54-0.86x / 0.73-0.91x (at 2 threads, process CPU time, T0 lost alike).
  GemvPrefetch kquant_prefetch = GemvPrefetch::T0;
  // The decode attention's pipelined prefetch of the next sub-block (attention.cpp PfCursor,
  // attention_internal.h decode_pipeline_l2): into L2 (prefetcht2, true) or L1. Zen 4: L2
  // (session 26: the 1.1B shape 1.10-1.44x at 1 thread cold; quiet 1.1B q4_0 decode at 1024
  // tokens of context, 2 threads, 1.07x). Zen 5 keeps T0 (session 22; session 27 measured L2 there:
  // the 1.1B shape at 1 thread cold 0.79-0.89x T0's speed by median at kv 512 / 2048, the 1.1B q4_0
  // decode at 1024 tokens of context 0.971 / 0.983 at 1 thread, thread CPU time).
  bool attn_pipeline_l2 = false;
  // The decode attention's lean narrow-row piece (attention_internal.h decode_lean: one kernel call a
  // sub-block for all kv heads, P V a whole 64-token block a kv head with its prefetch schedule; the
  // same kernels and bits). Zen 4: on (session 29, h-attn1; attn_decode_threads 1b 1t, the 1.1B shape,
  // 1 thread, thread CPU time, interleaved, load 1.7-5.2, f32 / f16: nolean -> lean 1.13-1.15x in
  // cache / L3-resident (kv 512 one copy, kv 2048 one copy), 1.08-1.14x over 8 copies (kv 512 / 1024),
  // 0.99-1.08x from DRAM (kv 2048, 16 / 32 copies); the 1.1B decode at 1024 tokens of context, 1
  // thread CPU time, AB_SWITCH=attn_lean, on / off by total: q4_0 1.023 / 0.999 / 1.020 (median
  // rounds 1.035 / 1.024 / 1.019), f16 1.014 / 0.997 (1.038 / 1.010): within the noise). Zen 5 measured
  // (session 33, h-z5attn): off. The same tool and shape, 1 thread, thread CPU time, interleaved, load 7-15 (NOT
  // quiet), cold copies (>= 128 MiB) in 2 MiB pages, 3 processes each: lean / the default (speed; > 1: lean faster)
  // by median f32 0.898 / 0.935 / 0.968 at kv 512 / 1024 / 2048, f16 0.955 / 0.966 / 0.988 (an A/A beside it
  // 0.99-1.03); but with lean the process's default (the tool's "lean": the form most of the interleaved calls run)
  // lean / nolean f32 1.009 / 1.078 (kv 512 / 2048), f16 1.222 (kv 512): on this shape the side most calls run wins
  // (the wide-row forms below lose from either side), so the kernel does not decide it. The 1.1B decode at 1024
  // tokens of context, AB_SWITCH=attn_lean (blocks of 16 tokens a form), 1 thread CPU time, on / off by total
  // (median rounds): q4_0 0.948 / 0.989 / 0.993 (0.978 / 0.986 / 1.003) against an A/A's 0.989 (0.994); f16 0.967 /
  // 0.987 (0.978 / 0.984) against an A/A's 1.000 (1.001): no gain.
  bool attn_decode_lean = false;
  // The decode attention's P V pairs (MHA, wide rows in place: the 7B's 32 x 128) a 16-float chunk at a time
  // across the sub-block's token rows (attention_internal.h decode_pv_chunks) instead of a token row at a
  // time. Same bits. Zen 4: on (session 29, h-attn7; 1 thread, thread CPU time, interleaved, load 2.6-6.9:
  // attn_decode_threads' 7B shape cold in 2 MiB pages, kv 512 / 2048, the call f32 1.29-1.36x, f16
  // 1.01-1.14x, in L3 (kv 128) 0.88x; the driver's loads alone in this order 1.16-1.17x; the 7B q4_0 decode
  // at 1024 tokens of context, AB_SWITCH=attn_pv_chunks, 1 thread CPU time, three processes: 1.017 / 1.084 /
  // 1.063 by total, the 26 rounds' median 1.06). Zen 5 measured (session 33, h-z5attn): off.
  // attn_decode_threads' 7B shape cold in 2 MiB pages, 1 thread, thread CPU time, interleaved, load 10-15
  // (NOT quiet), 4-8 processes at each of kv 512 / 1024 / 2048: chunks / rows (speed; > 1: chunks faster) by
  // median f32 0.954 / 0.969 / 0.957, f16 0.930 / 0.953 / 0.957, bf16 0.962 / 0.955 / 0.962 (an A/A beside
  // it 0.99-1.02); the row order's call reads at 0.92-0.98x a plain read of its bytes on f32 already.
  bool attn_pv_chunks = false;
  // The 7B's wide-row sub-blocks (MHA, 32 x 128) read with the next sub-block prefetched into L2 (attention_internal.h
  // decode_wide_pf) and cut in two of 8 token rows (decode_wide8); which KV caches take each: attention_detail::
  // DecodeWide (0 none, 1 f16 / bf16, 2 those and f32 on decode_wide_lin's shape). Same bits. Zen 4: both on f16 / bf16
  // caches (session 30, h-attn7b, bench/README's Zen 4 row of 17:07-17:50; attn_decode_threads' 7B shape cold in 2 MiB
  // pages, kv 512 / 2048, 1 thread, thread CPU time, interleaved call by call, load 0.04-0.4 then 3-6; against the
  // 16-row order without prefetch, by median): f16 both 1.35-1.50x (the call 0.70-0.75x a plain read of its bytes,
  // 0.48-0.55x before), bf16 both 1.48x (kv 512: 0.84x the read, 0.56x before); f16 the prefetch alone 1.12-1.35x, the 8
  // rows alone 1.24-1.28x; the 7B q4_0 decode at 1024 tokens of context with an f16 cache, AB_KV=f16
  // AB_SWITCH=attn_wide8_pf, 1 thread CPU time: 1.070 / 1.076 / 1.072 by total against an A/A's 1.031. f32 caches kept
  // 16 rows without it (until session 32, below): both 0.99-1.03x there, the prefetch alone 1.00-1.07x, the 8 rows alone
  // 0.79-0.90x (the f32 model: within its A/A's noise). Zen 5 measured (session 33, h-z5attn): 0 (Off) for both. The
  // same tool and shape, 1 thread, thread CPU time, interleaved, load 10-15 (NOT quiet), 4-8 processes at each of
  // kv 512 / 1024 / 2048, against Zen 5's 16 rows (P V by rows), speed by median (> 1: the form faster): w8 pf f32 0.835
  // / 0.850 / 0.828, f16 0.908 / 0.924 / 0.913, bf16 0.949 / 0.941 / 0.936; widepf 0.93-0.94 / 0.91-0.96 / 0.92-0.93;
  // wide8 0.87-0.88 / 0.89-0.90 / 0.89-0.93 (A/A 0.99-1.02); from the other side (w8 pf the process's default, 3
  // processes, kv 512 / 2048) w8 pf / the 16 rows f32 0.820 / 0.825, f16 0.934 / 0.892. With P V by chunks too (Zen 4's
  // combination; 3 processes): w8 pf f16 0.94-0.95, bf16 0.93-1.01 of Zen 5's path. The half caches' call reads at
  // 0.69-0.74x their plain read; from L3 (kv 512, the copy just read) it runs 1.29-1.42x faster but still at 0.95-0.98x
  // the cold plain read: its compute (the widening loads and FMAs), not the order of its reads, holds it there.
  int attn_wide_pf = 0;
  int attn_wide8 = 0;
  // Session 32 (h-attnf32): Zen 4 takes both on f32 caches too (attn_wide_pf / attn_wide8 = 2, DecodeWide::All),
  // where their rows lie back to back with head_dim 113-128 only (the shape measured; other f32 shapes keep the 16
  // rows: session 30's f32 halves, one prefetch a line, measured 0.95-0.96x below), their prefetch there in address
  // order, every attn_wide_lin-th line (attention_internal.h decode_wide_lin: each kv head's Q K^T call / P V
  // pair's call the next 8 rows' g-th 4 KiB front to back, the hardware's stream prefetcher the rest; 0: the loads'
  // order, every line). Same bits. attn_decode_threads' 7B shape (32 / 32 x 128,
  // f32) cold in 2 MiB pages, 1 thread, thread CPU time, interleaved call by call, load 2.5-7 (NOT quiet), 16
  // processes at each of kv 512 / 1024 / 2048 (bench/README's Zen 4 row of 23:19-23:50), against the 16-row order
  // by median: 1.051 / 1.058 / 1.055 (per process 0.87-1.11), 0.76-0.78x a plain read of the bytes (the 16 rows
  // 0.72-0.74x), short of issue 15's 0.85x; one prefetch a line (w8 pf) 0.95-0.96x, every 2nd 1.03-1.04x, every
  // 16th about every 8th; the 16-row widepf 1.03-1.04x, its prefetch in address order every line 0.89-0.91x,
  // every 2nd / 4th / 8th 0.98-1.03x. The 7B q4_0 decode at 1024 tokens of context (f32 cache),
  // AB_SWITCH=attn_f32_w8lin, 1 thread CPU time: 0.976 / 1.054 by total (median rounds 1.015 / 1.026; rounds
  // 0.78-1.23) against an A/A's 1.003 (1.011), then in a quieter window 1.018 (1.015; all 10 rounds 1.002-1.040)
  // against an A/A right after of 1.005 (1.014; 0.967-1.036): at most the ~1% that 5% of attention's share of a
  // step gives, not resolved from the noise. The 1.1B shape (GQA, narrow rows) does not take it. Zen 5 measured
  // (session 33, h-z5attn): 0. The same tool, f32, as attn_wide_pf's Zen 5 figures: w8 lin8 against the 16 rows
  // 0.977 / 1.001 / 0.988 at kv 512 / 1024 / 2048 (with P V by chunks too, Zen 4's path: 0.854 / 0.876 / 0.878 of
  // Zen 5's); the 16-row widepf's prefetch in address order every 8th line (attn_wide_pf All with lin 8, wide8 Off)
  // 1.031 / 1.024 / 1.019 (7 / 5 / 8 processes, 0.96-1.05 each; the A/A 0.99-1.02; with w8 pf the process's default
  // 1.007 / 1.011 at kv 512 / 2048): at the bar at kv 512 only, about
  // 0.3% of a 7B step, and f32 alone cannot take it (DecodeWide All takes the half caches too, where widepf is
  // 0.91-0.96x): left off.
  int attn_wide_lin = 0;
  // q8_0 M = 1 pass: 0 = four adjacent groups a pass, S = each thread's groups in S contiguous
  // parts side by side (gemv_repacked.cpp parts_q80_avx512). Zen 5: 4 parts with T0 1 KiB ahead
  // (session 27, 1 thread, cold, thread CPU time, load 8-22, seven 1.1B / 7B shapes: the kernel
  // 1.09-1.17x the four-group pass by median, 0.93-0.99x the read probe over the same bytes, against
  // 0.80-0.92x; 3 parts 1.07-1.23x, 2 parts 0.98-1.11x; the 1.1B q8_0 decode at 1 thread 1.12-1.19x).
  // Zen 4: 2 parts without prefetch (session 26: the kernel 1.05-1.15x at 1 thread; quiet 1.1B
  // q8_0 decode at 2 threads 1.03-1.09x in three runs; one part 0.99x two, a T1 prefetch along
  // the parts 0.80x). Session 28 (Zen 4, 1 thread, cold, thread CPU time, load 10-14, eight 1.1B
  // / 7B shapes, q8_read_patterns): that pass reads at 0.99-1.17x the read probe (read-4) by
  // median, 0.93-1.07x a plain 2-stream read; 3 / 4 parts without prefetch 0.85-1.02x /
  // 0.90-0.99x it.
  int q80_streams = 4;
  // That parts pass's prefetch along its streams (one line before each quant line's load). Zen 5:
  // T0 (NTA alike; without it 0.90-0.97x the kernel, 0.90-0.92x the 1.1B decode). Zen 4: None
  // (session 28, the same runs: with this per-line form at 2 parts T0 0.79-0.88x none (4 KiB
  // ahead), 0.85-0.97x (1-2 KiB), T1 0.74-0.84x, NTA 0.66-0.86x; Zen 5's 4 parts T0 1 KiB
  // 0.80-0.91x; the 1.1B q8_0 decode at 1 thread, AB_SWITCH=q80_t0, two processes: T0 4 KiB
  // 0.857x / 0.747x none). Session 30 (h-q4pf; the same tool, 1 thread, thread CPU time, load
  // 4-5, 3 processes x 40 rounds at 11264 x 2048, 2048 x 5632, 22016 x 4096, 4096 x 11008, median
  // r(med)): 2 parts T0 512 B 0.83-0.86x none, 1 KiB 0.82-0.91x, 2 KiB 0.86-0.92x, NTA 1 KiB
  // 0.84-0.91x, T1 512 B 0.92-0.95x, T1 1 KiB 0.95-0.99x; the 1.1B q8_0 decode at 1 thread
  // (AB_SWITCH=q80_t0_1k, 3 processes x 12 rounds) T0 1 KiB 0.87-0.90x none.
  GemvPrefetch q80_prefetch = GemvPrefetch::T0;
  // How far ahead along each stream (bytes; also what a cold start prefetches). Zen 5: 1 KiB (at 4
  // parts 512 bytes 0.89-0.96x, 2 KiB 0.93-0.98x). Zen 4: 4 KiB (where its T0 / T1 forms were
  // measured; it reads without them).
  int q80_ahead = 1024;
  // The bf16 8-row block GEMV on 4 KiB pages (gemm_avx512.cpp bf16_gemv_block: weights without a
  // 2 MiB-page copy), 1 KiB ahead. Zen 4: None (session 26: 1.11-1.37x at 1 thread; the quiet 7B
  // down projection at 2 threads: T0 1.15x, NTA 1.24x the time of none). Zen 5 (session 27,
  // bench_kernels 1 thread, CPU clock, interleaved): the time with none over T0 0.96x / 1.13x
  // (1.1B gate_up / down), 0.99x / 1.10x (7B gate_up / down): T0 stays.
  GemvPrefetch block_prefetch = GemvPrefetch::T0;
  // Streams a thread of the bf16 / f16 M = 1 stream kernels (gemv_streams) for rows of K >= 4096:
  // 4 (the kernel's usual count, each step's x loads serving 4 rows) or 6. Zen 4: 6 (session 28,
  // half_read_patterns, 1 thread, thread CPU time, cold 2 MiB-page copies, interleaved call by
  // call, load 6-15; bench/README's h-half row): with 4, x (f32, 16-44 KiB there) leaves L1
  // between a row group's reads (4 rows of weights, 32-88 KiB, pass through it) and comes from L2
  // at half the weights' bytes, and the kernel ran bf16 0.74-0.89x / f16 0.68-0.86x the 4-stream
  // read probe without prefetch (f32, a quarter of the bytes in x: 0.95-1.00x; at K = 2048 bf16 /
  // f16 0.94-1.28x); 6 streams: bf16 1.05-1.08x by best (medians 1.03-1.10x), f16 1.12-1.16x by
  // best (medians 1.06-1.15x) the 4-stream kernel's speed at 2048 x 5632, 4096 x 11008,
  // 12288 x 4096, 22016 x 4096; at 11264 x 2048 0.98-1.02x (so K >= 4096 only); 8 streams
  // (spills) 0.73-1.09x, 5 streams 0.94-1.12x; x prefetched T0 512 B / 1 KiB / 2 KiB ahead
  // 0.78-0.97x. Zen 5 keeps 4 (session 33, h-z5half: the same tool, 1 thread, thread CPU time,
  // interleaved call by call, load 10.5-13.3, 3 processes x 30 rounds at 12288 x 4096, 4096 x
  // 4096, 22016 x 4096, 2048 x 5632, 4096 x 11008, median r(med) against the default (4 streams,
  // T0 1 KiB ahead), A/A 0.99-1.01x): 6 streams with T0 bf16 0.80-0.89x / f16 0.83-0.87x, without
  // prefetch bf16 0.86-0.95x / f16 0.95-0.98x (4 streams without it 0.91-0.94x / 0.95-0.99x); a
  // plain 6-stream read without prefetch 0.58-0.94x the kernel, read-4 1.08-1.20x (the kernel
  // 0.83-0.92x a plain read of its bytes at K >= 4096, 0.88-0.96x at the 1.1B's K = 2048): on
  // Zen 5 more streams lose, in the kernel and in the plain read alike.
  int half_long_streams = 4;
  // Those 6-stream rows (K >= 4096) walked in runs of two 128-byte steps of a row (its 4 lines in
  // address order), x's 128 columns in 8 registers for the 6 rows (gemm_avx512.cpp
  // gemv_streams at R = 2; only without stream prefetch): 0 = never, 1 = f16 rows, 2 = bf16 and f16.
  // Same bits (each row's FMAs in the same order). Zen 4: 1 (session 32; h-half: half_read_patterns
  // rows gemv-runs / gemv-steps, 1 thread, thread CPU time, cold 2 MiB-page copies, interleaved
  // call by call, load 1.5-7.3, at 2048 x 5632, 12288 x 4096, 4096 x 4096, 22016 x 4096, 4096 x
  // 11008, median over the processes of each one's median ratio), the code as committed: f16
  // 1.07-1.11x the one-step walk (7 processes x 50-60 rounds), bf16 1.025-1.084x (11 processes,
  // every process >= 0.98; A/A 0.995-1.003x); the same loop built beside scratch forms, earlier:
  // f16 1.06-1.09x, bf16 0.98-1.02x (13 processes). Both still 1.09-1.19x behind a plain 6-stream
  // read without prefetch (read-6-nopf: the kernel's weight loads alone; read-2-nopf 1.03-1.13x,
  // read-4-nopf 0.96-1.16x): x (16-44 KiB of f32) read from L2 each row group is most of that (a
  // scratch of the one-step loop with x wrapped to 8 KiB, L1-resident, not the bits: 1.11-1.17x the
  // same loop with x whole; read-6-nopf 1.14-1.26x it). Other walks 0.74-1.06x (x reloaded a row,
  // runs of 4-8 steps, 3-5 streams). The 1.1B decode changes only its down projection (2048 x 5632,
  // a quarter of the bytes): at 1 thread (decode_switch_ab AB_SWITCH=half_runs, AB_CPU=1, 10 x 16
  // tokens) on / off by total f16 0.988 / 1.096 / 1.026 / 1.023 (A/As 0.977 / 0.996), bf16 0.974 /
  // 0.983 / 1.028 (A/A 1.007): within the noise. The lead, quietly (load ~1, 00:09-00:12 UTC, the
  // same tool and shapes, median of 6 / 4 processes of 60 / 40 rounds, one-step time / runs time,
  // > 1: runs faster): 1 thread CPU f16 1.065-1.085, bf16 0.997-1.051 (median over the shapes 1.018:
  // 12288 x 4096 0.997, 4096 x 4096 1.001, 22016 x 4096 1.018, 2048 x 5632 1.046, 4096 x 11008
  // 1.051); 2 threads wall f16 0.968-1.021 (12288 x 4096 0.968, the rest 1.005-1.021), bf16
  // 0.951-0.991 (slower at every shape). So Zen 4: 1 (f16 only). Zen 5: 0 (session 33, the runs
  // above (6 streams, no prefetch: half_read_patterns' gemv-s6-none-runs) bf16 0.77-0.87x / f16
  // 0.83-0.88x its default kernel, the one-step 6-stream walk 0.86-0.98x; a scratch of the runs
  // on 4 streams with the T0 prefetch (two lines a step, 16 accumulators + 8 x registers: no
  // spills) bf16 0.87-0.95x / f16 0.89-0.98x at K >= 4096, at every K 0.86-0.97x; load 10.5-13.3,
  // 3 processes x 30 rounds, the figures of half_long_streams' Zen 5 sentence).
  int half_long_runs = 0;
  // The q4_0 / q8_0 M = 1 dispatch's claims (gemv_repacked.cpp gemv_dispatch, base/thread_pool.h
  // parallel_ranges owner_keep): -1 = every claim at most gemv_chunk's groups (~1/8 of a thread's
  // range at 2 threads), shrinking to a quarter of what is left; k >= 0 = a thread's first claim on
  // its own range all of it but its last k passes, one long run for the pass's two streams (which
  // restart at every claim). Same bits (the results do not depend on the chunking). Zen 4: 1
  // (session 32, the lead, quiet, load 1.1-1.9, 2 threads, wall). The q4_0 pass against a plain
  // 2-stream read of its bytes (q40_read_patterns rows gemv / read-2, 663 short cycles over 7
  // minutes, 2560 x 2048, 2048 x 2048, 11264 x 2048, 2048 x 5632, classed by read-4's rate) read
  // 0.94-0.98x read-2 in the VM's low phase (~33 GB/s) but 0.82 / 0.87 / 0.94 / 0.95x in its high
  // one (~55 GB/s; 20-26 cycles): a near-constant 6-10 us a call behind, whatever the size. With
  // the first claim all but one pass (a scratch switch, 6 processes a form and shape, 30 rounds):
  // gemv / read-2 0.915 -> 0.972 (2048 x 2048), 0.950 -> 0.994 (2560 x 2048), 0.952 -> 0.999
  // (11264 x 2048); all but nothing (a late owner's range left to no one) the same by median with
  // 0.55-0.67x outliers; half the range first 0.96-1.00x. The 1.1B decode (decode_switch_ab
  // AB_SWITCH=gemv_owner_keep 2 10 16, on / off by total (median round)): q4_0 in the high phase
  // 1.081 (1.067), 1.038 (1.052), 1.086 (1.072) at 79-93 tok/s, in the low one 1.001 (1.000), 1.043
  // (1.014); its A/As 0.953 (0.967), 0.990 (0.990), 0.988 (0.993), 1.031 (1.009); q8_0 0.959 (1.020),
  // 0.982 (0.985), 1.050 (1.002), 1.000 (1.005): neutral. Zen 5 not measured: -1.
  int gemv_owner_keep = -1;
  // The same first claim (parallel_ranges owner_keep, -1 = off) in the two other M = 1 dispatches
  // that claim from parallel_ranges, each its own entry (their claim units and streams differ):
  // kquant_owner_keep: the K-quant records' pass (gemv_kquant_vnni.cpp sg_dispatch at M = 1: the
  // joint q+k+v / gate+up dispatch and single outputs), k = all but the last k super-groups (64
  // rows). Its claims today, with two streams (Zen 5), at most a quarter of a thread's range
  // (sg_chunk), then a quarter of what is left: at 2 threads the 1.1B's gate+up (176 super-groups,
  // 88 a thread) in claims of 22, 17, 13, 9, 7, 5, 4, 3, 2, 2, 1, 1, 1, 1 (its owner alone; the
  // other thread takes the last ones from the back), q+k+v (40) 5, 4, 3, 2, 2, 1, 1, 1, 1, each
  // restarting the pass's two streams and their prefetch 2-4 KiB ahead; with one stream (Zen 4) at
  // most 1/8 of the range (15 claims at gate+up).
  // stream_owner_keep: the bf16 / f16 / f32 stream kernels' rows (gemm_avx512.cpp guided_rows at
  // M = 1: gemv_rows and the fused gemv_stream_multi), k = all but the last k steps of 8 rows. Its
  // claims today at most 1/8 of a thread's range: the 1.1B's gate+up at 2 threads (5632 rows a
  // thread) 5 claims of 704 rows, then 528, 400, ... down to 8 (22 claims), q+k+v (1280 rows a
  // thread) 17, each cutting its rows into 4 (6) streams afresh (with 6, 2 or 4 rows of a claim
  // left to one stream). Same bits (rows and super-groups do not depend on the chunking). Both -1
  // on both rows until measured (a 2-thread effect, as gemv_owner_keep's; 1 thread runs fn(0, n)).
  // Zen 5, session 33, LOADED (9-15; decode_switch_ab AB_SWITCH=kq_owner_keep / stream_owner_keep,
  // 8 x 16 tokens, on / off by total): 1 thread by CPU time (no change expected) q4_k_m 1.006 /
  // 1.015 / 1.002, bf16 0.992 / 1.049 / 0.994; 2 threads wall at a quarter of the 1-thread rate,
  // unreadable: q4_k_m 1.048 / 1.042 (A/A 0.973), q6_k 1.010, bf16 1.081 / 0.952 (A/A 0.960), f16
  // 1.023, f32 1.107 (bench/README's h-keep row). The quiet 2-thread A/B decides.
  // Zen 5 quiet (the lead, session 33, 03:40-03:46, load 0.6-2.1: the A/B's own 2 threads; 2 threads
  // wall, decode_switch_ab on / off by total (median round); bench/README's lead row of 03:40):
  // kq_owner_keep q4_k_m 1.174 (1.121), 1.122 (1.057) at 8 x 16 tokens, 0.994 (1.016), 1.039
  // (1.048), 1.082 (1.065) at 16 x 16, against A/As (AB_SWITCH=none, q4_k_m, 16 x 16) 0.991
  // (0.992), 1.006 (1.026), 1.019 (1.014); q6_k 1.068 (1.047), 1.035 (1.048), 1.024 (1.029), 1.016
  // (1.024), 0.781 (0.975; rounds 0.47-1.43: the VM changing phase). So Zen 5 takes 1 for the
  // K-quants; Zen 4 (one stream, claims of 1/8 of a range) not measured: -1 there.
  // stream_owner_keep: bf16 0.998 (1.005), 1.036 (1.030), f16 1.011 (1.023), 0.946 (1.007), f32
  // 1.001 (1.008), 1.014 (1.018) at 6 x 16: within the noise, -1 on both rows.
  int kquant_owner_keep = 1;
  int stream_owner_keep = -1;
};

DecodeTuning decode_tuning_for(const CpuFeatures& f);
// decode_tuning_for(cpu_features()), computed once.
const DecodeTuning& decode_tuning();
// Every setting above set from one row (decode_switch_ab's decode_tuning switch, tests).
void apply_decode_tuning(const DecodeTuning& t);

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
