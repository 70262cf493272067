// In-process A/B of a decode-path switch in a real decode (AB_SWITCH, required: q40_ms: gemv_repacked's q4_0 pass on two streams (two contiguous
// parts of each thread's super-groups, each record prefetched q40_ahead on: set_q40_ms) against one;
// kq_ms: the K-quant lean M = 1 pass on two streams a thread (set_kquant_streams(2)) against one;
// kq_nopf: that pass without software prefetch (on) against T0 8 KiB ahead (set_kquant_stream_prefetch);
// kq_pf4k: that pass's two streams 4 KiB ahead for q4_K too (on) against the default 2 KiB (q6_K 4 KiB either way);
// q80_t0_1k: the q8_0 parts pass's per-line prefetch at 1 KiB (below);
// q40_addr: the q4_0 two-stream pass without software prefetch, a record's loads in address order (on) against
// t-major (off; decode_tuning.h q40_addr_order); q40_addr_t0: that pass with T0, a record's loads in address order
// 2 KiB ahead (on: Zen 5's row since session 33) against t-major 4 KiB ahead (off: its row before);
// q40_nopf / stream_nopf / block_nopf: the q4_0 two-stream pass's / the f32-f16-bf16 stream kernels' / the bf16
// 8-row block GEMV's (4 KiB pages) software prefetch none (on) against T0; half_long6: the bf16 / f16 stream
// kernels' rows of K >= 4096 on 6 streams a thread (on) against 4; half_runs: those 6-stream rows in runs of
// two steps a row with x in registers (bf16 and f16, on) against one step of each stream in turn; q80_parts / q80_parts1 / q80_parts3 /
// q80_parts4 / q80_default / q80_nopf / q80_t1 / q80_t0 / q80_line17: the q8_0 M = 1 pass (below);
// decode_tuning: kernels/cpu/decode_tuning.h's double-pumped AVX-512 row (on) against its Zen 5 row;
// qk_wide: the decode attention's qk16; attn_l2: its pipelined prefetch into L2 (on) against L1; attn_lean: its narrow rows' lean piece (set_decode_lean);
// gemv_stream_f32: f32 M = 1 on the stream kernels and fused, gemm_internal.h set_gemv_stream_f32;
// pv_pairs: the decode attention's P V two kv heads a call; kv_f16: an f16 KV cache against f32;
// attn_pv_chunks: those P V pairs a chunk at a time across the token rows (set_decode_pv_chunks) against a row at a time;
// attn_causal_skip: the prefill tile groups' causal diagonal blocks without their fully masked parts (set_prefill_causal_skip; with AB_PREFILL);
// attn_wide_pf: the 7B (MHA) decode sub-blocks 8 rows at a time, the next one prefetched into L2 (set_decode_wide_pf);
// attn_wide8: as two sub-blocks of 8 rows (set_decode_wide8); attn_wide8_pf: both;
// attn_f32_w8lin: both on every cache type with the next 8 rows' lines prefetched in address order, every 8th
// (set_decode_wide_lin(8)), against both on f16 / bf16 only and lin 0 (f32: 16 rows);
// other_model: the model file of the 5th argument (on) against the first (off), e.g. bf16 against f16;
// kv_direct / norm_prefetch / decode_overheads (both): model/llama.h set_kv_direct_write,
// set_norm_prefetch; pool_dynamic: base/thread_pool.h pool_dynamic_split; embd_populate: the token
// embedding table's pages mapped (model/llama.h set_embd_populate's effect) or their page table
// entries dropped before each block; kq_record_rows: K-quant records of 32 rows (on) against 64
// (set_kquant_record_rows, fixed when the weights are packed, so the model is loaded twice, off and
// on, and the blocks alternate between the two); small_half_copies: bf16 / f16 copies from 256 KiB (on)
// against 2 MiB (core/backend.h set_small_half_copies, read when weights are placed: loaded twice);
// packed_whole_huge: every packed copy in whole 2 MiB pages, tails included (set_packed_whole_huge_pages;
// loaded twice: give a copy of the model file as the 5th argument, or the reload shares the copies);
// packed_arena: the packed copies back to back in 64 MiB arenas of 2 MiB pages (on) against each copy
// its own memory (set_packed_arena; loaded twice, a copy of the file as the 5th argument too);
// arena_vs_whole: the arena (on) against whole 2 MiB pages a copy (off; the same); packed_arena_aa: both
// loads in the arena (an A/A); (ReloadedModel switches print Rss / AnonHugePages around each load);
// bf16_prefill_fuse: the prefill's bf16 q/k/v and gate/up as one call (set_bf16_prefill_fuse;
// with AB_PREFILL); gemv_fuse: q/k/v and gate/up at M = 1 in one dispatch (set_gemv_fusion);
// gemv_ranges: the decode GEMVs' contiguous ranges a thread against guided chunks (set_gemv_ranges);
// gemv_owner_keep: the q4_0 / q8_0 M = 1 dispatch's first claim on a thread's own range all of it but its last
// pass (set_gemv_owner_keep 1) against claims of at most gemv_chunk's groups (-1);
// kq_owner_keep / stream_owner_keep: the same first claim in the K-quant records' M = 1 dispatch (all but
// the last super-group: set_kquant_owner_keep 1) / the bf16 / f16 / f32 stream kernels' M = 1 rows (all but
// the last 8 rows: set_gemv_streams_owner_keep 1) against their claims of at most a quarter / an eighth of
// a thread's range (-1);
// gemv_even_claims: q4_0's decode GEMV claims in whole pairs of super-groups (set_gemv_even_claims);
// repacked_x_prefetch: the q4_0 / q8_0 prefill kernel's X prefetch (set_repacked_x_prefetch; with AB_PREFILL);
// qx_panel4: the prefill's X rounding a whole 4-row panel at once, full stores, against row by row (set_qx_pack_panel4; with AB_PREFILL);
// repacked_guided: that kernel's guided claims of weight panels against equal chunks (set_repacked_guided;
// with AB_PREFILL); repacked_double_pumped: that kernel's Zen 4 defaults (no k slices on q8_0) against
// full-width AVX-512's (set_repacked_double_pumped; with AB_PREFILL); repacked_unsliced: that
// kernel without k slices against this CPU's default (set_repacked_kslice; with AB_PREFILL);
// AB_THP=0: no transparent huge pages in the process;
// AB_KV=f16 / bf16: the KV cache of both modes in that type (default f32; kv_f16 switches it instead);
// none: nothing switched (A/A, or a profile); AB_PROMPT=n prompt tokens first, default 16.
// Other modes of a block (default: `block` decode tokens of one sequence): AB_PREFILL=n: `block`
// prefills of n tokens after the prompt (truncated back each time; rates in prompt tokens/s; with AB_FRESH=1
// each into a new context of the block's own model and options instead, all `block` made untimed before
// the block, as bench:decode's runs do);
// AB_SEQS=s: `block` decode steps of s sequences at once (eval_batch, one token each; rates in
// tokens/s of all sequences); AB_CREATE=n: `block` contexts of n positions created (prefaulted) and
// destroyed (rates in contexts/s)):
// blocks of `block` greedy-free tokens alternated off/on, on/off (ABBA, so slow drift hits both),
// tok/s per mode by wall time, or by the calling thread's CPU time with AB_CPU=1 (readable on a
// loaded machine at 1 thread: preemption excluded). AB_HANDOFF=1 first prints the pool hand-off
// (base/pool_stats.h: dispatches a token, us each) with the switch off, then on. AB_SCHED=1
// prints, over the timed rounds, every thread's CPU time, run-queue wait and time slices
// (/proc/self/task/*/schedstat) and the machine's steal (/proc/stat): whether a thread's wall
// beyond its CPU time is the guest scheduler's (another process on its core) or the VM's. Built with the benchmarks (EMOLLM_BUILD_BENCH,
// target decode_switch_ab); from the repository root:
//   ./build-bench/decode_switch_ab bench/models/tinyllama-1.1b-q4_0.gguf [threads 2] [rounds 8] [block 16]
#include <chrono>
#include <algorithm>
#include <memory>
#include <time.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include "core/backend.h"
#include "base/cpu_features.h"  // decode_tuning: a CpuFeatures with the trait set
#include "base/pool_stats.h"
#include "base/thread_pool.h"  // pool_dynamic_split
#include "cpu/attention_internal.h"  // set_decode_qk_wide
#include "cpu/gemm_internal.h"       // set_q40_ms
#include "cpu/gemv_kquant_vnni.h"    // set_kquant_streams
#include "cpu/kernels.h"             // set_kquant_record_rows, set_gemv_fusion
#include "loaders/mapped_file.h"  // populate_read
#include "model/llama.h"
#include "proc_rollup.h"
#include <sys/mman.h>
#include <dirent.h>
#include <unistd.h>
#include <sys/prctl.h>
using namespace emollm;
// AB_SCHED: each thread's (tid, CPU ns, run-queue wait ns, time slices) from
// /proc/self/task/*/schedstat, and the machine's steal ticks (/proc/stat's 8th cpu column).
struct TaskSched { long tid; double cpu_ns, wait_ns, slices; };
std::vector<TaskSched> read_sched() {
  std::vector<TaskSched> v;
  DIR* d = opendir("/proc/self/task");
  if (!d) return v;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const std::string path = std::string("/proc/self/task/") + e->d_name + "/schedstat";
    FILE* f = std::fopen(path.c_str(), "r");
    if (!f) continue;
    TaskSched t{std::atol(e->d_name), 0, 0, 0};
    if (std::fscanf(f, "%lf %lf %lf", &t.cpu_ns, &t.wait_ns, &t.slices) == 3) v.push_back(t);
    std::fclose(f);
  }
  closedir(d);
  return v;
}
double read_steal_ticks() {
  FILE* f = std::fopen("/proc/stat", "r");
  if (!f) return -1;
  double c[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int got = std::fscanf(f, "cpu %lf %lf %lf %lf %lf %lf %lf %lf", &c[0], &c[1], &c[2], &c[3], &c[4], &c[5], &c[6], &c[7]);
  std::fclose(f);
  return got == 8 ? c[7] : -1;
}
// Prints each thread that ran at least 1 ms of CPU between the two samples.
void print_sched(const std::vector<TaskSched>& a, const std::vector<TaskSched>& b, double steal0, double steal1, double wall) {
  const double tick = double(sysconf(_SC_CLK_TCK));
  std::printf("sched over %.3f s of rounds: machine steal %.3f s (/proc/stat)\n", wall, (steal1 - steal0) / tick);
  for (const TaskSched& y : b)
    for (const TaskSched& x : a)
      if (x.tid == y.tid && y.cpu_ns - x.cpu_ns >= 1e6)
        std::printf("  thread %ld: cpu %.3f s, run-queue wait %.3f s, %.0f slices, cpu + wait = %.1f%% of the wall\n", y.tid,
                    1e-9 * (y.cpu_ns - x.cpu_ns), 1e-9 * (y.wait_ns - x.wait_ns), y.slices - x.slices,
                    100 * 1e-9 * (y.cpu_ns - x.cpu_ns + y.wait_ns - x.wait_ns) / wall);
}
// Where the "on" blocks decode: the same context; a second context on the same model whose KV
// cache is f16 (kv_f16); a second model and context loaded with the switch on (a switch read when
// the weights are packed); another model file (other_model: the 5th argument, e.g. the same
// shapes in another weight type). The second context gets the same prompt first.
enum class OnContext { Same, KvF16, ReloadedModel, OtherModel };
// The process's huge-page coverage (/proc/self/smaps), printed after the A/B beside its ratio: over
// the mappings of at least 2 MiB (the weights' records, the mapped file, the KV cache), their
// size, Rss, AnonHugePages (2 MiB anonymous pages: kquant_repack's records) and FilePmdMapped
// (2 MiB pages of the file), MiB; the largest such mapping on its own.
void print_huge_coverage() {
  FILE* f = std::fopen("/proc/self/smaps", "r");
  if (!f) return;
  char line[512];
  double size = 0, rss = 0, anon = 0, pmd = 0, cur[4] = {0, 0, 0, 0}, big[4] = {0, 0, 0, 0};
  auto flush = [&] {
    if (cur[0] >= 2 * 1024) {
      size += cur[0], rss += cur[1], anon += cur[2], pmd += cur[3];
      if (cur[0] > big[0]) std::copy(cur, cur + 4, big);
    }
    std::fill(cur, cur + 4, 0.0);
  };
  while (std::fgets(line, sizeof line, f)) {
    double kb = 0;
    if (std::sscanf(line, "Size: %lf kB", &kb) == 1) flush(), cur[0] = kb;
    else if (std::sscanf(line, "Rss: %lf kB", &kb) == 1) cur[1] = kb;
    else if (std::sscanf(line, "AnonHugePages: %lf kB", &kb) == 1) cur[2] = kb;
    else if (std::sscanf(line, "FilePmdMapped: %lf kB", &kb) == 1) cur[3] = kb;
  }
  flush();
  std::fclose(f);
  std::printf("smaps (mappings >= 2 MiB): size %.0f rss %.0f AnonHugePages %.0f FilePmdMapped %.0f MiB; largest: size %.0f rss %.0f "
              "AnonHugePages %.0f FilePmdMapped %.0f MiB\n",
              size / 1024, rss / 1024, anon / 1024, pmd / 1024, big[0] / 1024, big[1] / 1024, big[2] / 1024, big[3] / 1024);
}
// The process's resident memory (/proc/self/smaps_rollup: Rss, Anonymous, AnonHugePages, MiB) at
// `what`: before and after each load of a ReloadedModel switch (a load's cost: after less before).
void print_rss(const char* what) {
  const bench::ProcRollup r = bench::proc_rollup();
  if (!r.ok) return;
  std::printf("rss %s: Rss %.1f Anonymous %.1f AnonHugePages %.1f MiB\n", what, r.rss_kb / 1024, r.anonymous_kb / 1024,
              r.anon_huge_kb / 1024);
}
// The model's token embedding table (set after the load) and what the embd_populate switch does to it.
const void* g_embd = nullptr;
size_t g_embd_bytes = 0;
void embd_pages(bool on) {
  if (!g_embd) return;
  if (on) {
    populate_read(g_embd, g_embd_bytes);
    return;
  }
  const uintptr_t a = reinterpret_cast<uintptr_t>(g_embd) / 4096 * 4096;
  madvise(reinterpret_cast<void*>(a), reinterpret_cast<uintptr_t>(g_embd) + g_embd_bytes - a, MADV_DONTNEED);
}
// The switches AB_SWITCH names: each sets the path off (false) or on (true).
struct AbSwitch {
  const char* name;
  void (*set)(bool);
  OnContext on_context = OnContext::Same;
};
const AbSwitch kSwitches[] = {
    // nothing switched: an A/A run (the noise of the method), or a per-op profile of the default
    // path (EMOLLM_PROFILE=1 EMOLLM_PROFILE_OUT=file, EMOLLM_PROFILE_CPU=1: native/core/profiling_backend.h)
    {"none", [](bool) {}},
    {"q40_ms", [](bool on) { gemm_detail::set_q40_ms(on); }},
    // the q4_0 two-stream pass's software prefetch: none (on) against T0 (off); decode_tuning.h
    {"q40_nopf", [](bool on) { gemm_detail::set_q40_ms_prefetch(on ? gemm_detail::GemvPrefetch::None : gemm_detail::GemvPrefetch::T0); }},
    // the q4_0 two-stream pass without software prefetch (on and off), a record's loads in address
    // order (on) against t-major (off): decode_tuning.h q40_addr_order
    {"q40_addr",
     [](bool on) {
       gemm_detail::set_q40_ms_prefetch(gemm_detail::GemvPrefetch::None);
       gemm_detail::set_q40_ms_addr_order(on);
     }},
    // the q4_0 two-stream pass with T0 prefetch, a record's loads in address order 2 KiB ahead (on:
    // Zen 5's row since session 33) against t-major 4 KiB ahead (off: its row before): decode_tuning.h
    // q40_addr_order / q40_ahead
    {"q40_addr_t0",
     [](bool on) {
       gemm_detail::set_q40_ms_prefetch(gemm_detail::GemvPrefetch::T0);
       gemm_detail::set_q40_ms_addr_order(on);
       gemm_detail::set_q40_ms_ahead(on ? 2048 : 4096);
     }},
    // the f32 / f16 / bf16 stream kernels' software prefetch: none (on) against T0 (off)
    {"stream_nopf", [](bool on) { gemm_detail::set_gemv_streams_prefetch(on ? gemm_detail::GemvPrefetch::None : gemm_detail::GemvPrefetch::T0); }},
    // decode_tuning.h's two rows: its double-pumped AVX-512 entry (on) against the Zen 5 one (off)
    {"decode_tuning",
     [](bool on) {
       CpuFeatures f;
       f.avx512_double_pumped = on;
       gemm_detail::apply_decode_tuning(gemm_detail::decode_tuning_for(f));
     }},
    // the K-quant lean pass without software prefetch (on) against T0 every line 8 KiB (two streams: q4_K 2, q6_K 4 KiB) ahead
    {"kq_nopf",
     [](bool on) { gemm_detail::set_kquant_prefetch(on ? gemm_detail::GemvPrefetch::None : gemm_detail::GemvPrefetch::T0); }},
    // the q8_0 M = 1 pass: each thread's groups in 2 (q80_parts; q80_parts1 / q80_parts3 /
    // q80_parts4: 1 / 3 / 4) contiguous parts side by side, with this CPU's prefetch along them
    // (on), against four adjacent groups a pass (off); q80_t1 / q80_t0: the 2-part pass with a
    // prefetch along its streams (on) against none (off): since session 27 that is one prefetch
    // beside each quant line's load at this CPU's q80_ahead (Zen 5 1 KiB, Zen 4 4 KiB), not the
    // 17-line loop before each block pair that session 26's Zen 4 rows measured under these names.
    // gemm_internal.h set_q80_streams / set_q80_prefetch / set_q80_ahead
    {"q80_parts", [](bool on) { gemm_detail::set_q80_streams(on ? 2 : 0); }},
    {"q80_parts1", [](bool on) { gemm_detail::set_q80_streams(on ? 1 : 0); }},
    {"q80_parts3", [](bool on) { gemm_detail::set_q80_streams(on ? 3 : 0); }},
    {"q80_parts4", [](bool on) { gemm_detail::set_q80_streams(on ? 4 : 0); }},
    // this CPU's q8_0 row of decode_tuning.h (on; Zen 5: 4 parts, T0 1 KiB ahead) against the
    // four-group pass (off)
    {"q80_default",
     [](bool on) {
       const gemm_detail::DecodeTuning& t = gemm_detail::decode_tuning();
       gemm_detail::set_q80_streams(on ? t.q80_streams : 0);
       gemm_detail::set_q80_prefetch(t.q80_prefetch);
       gemm_detail::set_q80_ahead(t.q80_ahead);
     }},
    // this CPU's q8_0 parts pass without its prefetch along the streams (on) against with it (off);
    // a Zen 5 switch: on Zen 4 the row has no prefetch, so both sides are the same (an A/A)
    {"q80_nopf",
     [](bool on) {
       const gemm_detail::DecodeTuning& t = gemm_detail::decode_tuning();
       gemm_detail::set_q80_streams(t.q80_streams > 0 ? t.q80_streams : 2);
       gemm_detail::set_q80_prefetch(on ? gemm_detail::GemvPrefetch::None : t.q80_prefetch);
       gemm_detail::set_q80_ahead(t.q80_ahead);
     }},
    // one part a thread (on) against two (off)
    {"q80_parts1v2", [](bool on) { gemm_detail::set_q80_streams(on ? 1 : 2); }},
    {"q80_t1", [](bool on) { gemm_detail::set_q80_streams(2), gemm_detail::set_q80_prefetch(on ? gemm_detail::GemvPrefetch::T1 : gemm_detail::GemvPrefetch::None); }},
    {"q80_t0", [](bool on) { gemm_detail::set_q80_streams(2), gemm_detail::set_q80_prefetch(on ? gemm_detail::GemvPrefetch::T0 : gemm_detail::GemvPrefetch::None); }},
    // the same at 1 KiB ahead (this CPU's parts; q80_t0 runs this CPU's q80_ahead: Zen 4 4 KiB)
    {"q80_t0_1k",
     [](bool on) {
       gemm_detail::set_q80_prefetch(on ? gemm_detail::GemvPrefetch::T0 : gemm_detail::decode_tuning().q80_prefetch);
       gemm_detail::set_q80_ahead(on ? 1024 : gemm_detail::decode_tuning().q80_ahead);
     }},
    // q80_line17: the q8_0 parts pass's 17th prefetch a block pair (on) against 16 (set_q80_line17), with
    // this CPU's parts, prefetch and distance (where the pass runs without prefetch, Zen 4, the
    // switch changes nothing: an A/A)
    {"q80_line17", [](bool on) { gemm_detail::set_q80_line17(on); }},
    // the bf16 8-row block GEMV's (4 KiB pages) software prefetch: none (on) against T0 (off)
    {"block_nopf", [](bool on) { gemm_detail::set_gemv_block_prefetch(on ? gemm_detail::GemvPrefetch::None : gemm_detail::GemvPrefetch::T0); }},
    // the bf16 / f16 stream kernels' rows of K >= 4096 on 6 streams a thread (on) against 4 (set_gemv_half_long_streams)
    {"half_long6", [](bool on) { gemm_detail::set_gemv_half_long_streams(on ? 6 : 4); }},
    // those 6-stream rows (6 streams on both sides) in runs of two steps a row, x's 128 columns in
    // registers, for bf16 and f16 (on: set_gemv_half_long_runs 2) against one step of each stream in
    // turn (0); no stream prefetch on both sides (the runs' condition)
    {"half_runs", [](bool on) {
       gemm_detail::set_gemv_half_long_streams(6);
       gemm_detail::set_gemv_streams_prefetch(gemm_detail::GemvPrefetch::None);
       gemm_detail::set_gemv_half_long_runs(on ? 2 : 0);
     }},
    // the q4_0 / q8_0 M = 1 dispatch's first claim on a thread's own range all of it but its last
    // pass (on: set_gemv_owner_keep 1) against claims of at most gemv_chunk's groups (off: -1)
    {"gemv_owner_keep", [](bool on) { gemm_detail::set_gemv_owner_keep(on ? 1 : -1); }},
    // the same first claim, all of the range but its last super-group (64 rows), in the K-quant
    // records' M = 1 dispatch (on: set_kquant_owner_keep 1) against claims of at most sg_chunk's (off: -1)
    {"kq_owner_keep", [](bool on) { gemm_detail::set_kquant_owner_keep(on ? 1 : -1); }},
    // and in the bf16 / f16 / f32 stream kernels' M = 1 rows, all but the last 8 rows (on:
    // set_gemv_streams_owner_keep 1) against claims of at most 1/8 of a thread's range (off: -1)
    {"stream_owner_keep", [](bool on) { gemm_detail::set_gemv_streams_owner_keep(on ? 1 : -1); }},
    // the K-quant lean pass on two streams a thread (two contiguous parts of its super-groups) against one
    {"kq_ms", [](bool on) { gemm_detail::set_kquant_streams(on ? 2 : 1); }},
    // that pass's prefetch 4 KiB ahead for both types (on: two streams' distance before session 27)
    // against the default (q4_K 2 KiB, q6_K 4 KiB with two streams; gemv_kquant_vnni.cpp kq_stream_prefetch).
    // A two-stream (Zen 5) switch: on Zen 4's row (one stream, no prefetch) "on" turns a 4 KiB prefetch on
    {"kq_pf4k", [](bool on) { gemm_detail::set_kquant_stream_prefetch(on ? 4096 : -1); }},
    {"qk_wide", [](bool on) { attention_detail::set_decode_qk_wide(on); }},
    {"gemv_stream_f32", [](bool on) { gemm_detail::set_gemv_stream_f32(on); }},
    {"pv_pairs", [](bool on) { attention_detail::set_decode_pv_pairs(on); }},
    // the decode attention's next sub-block prefetched from inside this one's kernels (set_decode_pipeline)
    {"attn_pipe", [](bool on) { attention_detail::set_decode_pipeline(on); }},
    // that prefetch into L2 (prefetcht2: on) against L1 (T0; set_decode_pipeline_l2)
    {"attn_l2", [](bool on) { attention_detail::set_decode_pipeline_l2(on); }},
    // the narrow rows' lean decode piece (set_decode_lean: one kernel call a sub-block for all kv heads)
    {"attn_lean", [](bool on) { attention_detail::set_decode_lean(on); }},
    // the decode attention's P V pairs (7B MHA) walked a 16-float chunk at a time across the
    // sub-block's token rows (on) against each token row's pair slice at a time (set_decode_pv_chunks)
    {"attn_pv_chunks", [](bool on) { attention_detail::set_decode_pv_chunks(on); }},
    // the prefill tile groups' causal diagonal blocks without their fully masked 16-key columns
    // (Q K^T) and keys (P V) of each row group (set_prefill_causal_skip; with AB_PREFILL)
    {"attn_causal_skip", [](bool on) { attention_detail::set_prefill_causal_skip(on); }},
    // those 7B sub-blocks (qk16, pv2 by chunks) 8 token rows at a time with the next sub-block prefetched
    // into L2 (on) against 16 rows at a time on the hardware prefetchers alone (set_decode_wide_pf)
    {"attn_wide_pf", [](bool on) { attention_detail::set_decode_wide_pf(on); }},
    // those sub-blocks as two of 8 rows (set_decode_wide8), and with the next 8 rows prefetched (both on)
    {"attn_wide8", [](bool on) { attention_detail::set_decode_wide8(on); }},
    {"attn_wide8_pf", [](bool on) { attention_detail::set_decode_wide8(on); attention_detail::set_decode_wide_pf(on); }},
    // session 32 (h-attnf32): on an f32 cache too, those sub-blocks as two of 8 rows with the next 8 rows' lines
    // prefetched in address order, every 8th (on: decode_wide8 / decode_wide_pf on every cache type,
    // set_decode_wide_lin(8)) against f32's 16 rows on the hardware prefetchers (off: both Half, lin 0)
    {"attn_f32_w8lin", [](bool on) {
       const auto m = on ? attention_detail::DecodeWide::All : attention_detail::DecodeWide::Half;
       attention_detail::set_decode_wide8_mode(m);
       attention_detail::set_decode_wide_pf_mode(m);
       attention_detail::set_decode_wide_lin(on ? 8 : 0);
     }},
    {"kv_f16", [](bool) {}, OnContext::KvF16},
    // the "on" blocks decode another model file (the 5th argument): e.g. the 1.1B in f16 (off)
    // against the same shapes in bf16 (on), interleaved in one process (session 26: is Zen 4's f16
    // decode slower than its bf16 decode, as one end-to-end run read?)
    {"other_model", [](bool) {}, OnContext::OtherModel},
    // the token embedding table's pages mapped (what set_embd_populate does at load) vs unmapped
    // (madvise MADV_DONTNEED: the page table entries dropped, the page cache kept, as a fresh
    // model's untouched rows): a page fault a token in the lookup. Before each block, untimed
    // (a reload would share the first model's mapping: MappedFile::open)
    {"embd_populate", [](bool on) { embd_pages(on); }},
    // the forward pass's per-token work outside the GEMVs (model/llama.h): k / v written into the
    // KV cache block in place, the norm prefetch, and both
    {"kv_direct", [](bool on) { set_kv_direct_write(on); }},
    {"norm_prefetch", [](bool on) { set_norm_prefetch(on); }},
    {"decode_overheads",
     [](bool on) {
       set_kv_direct_write(on);
       set_norm_prefetch(on);
     }},
    // the pool's parallel_for and the packed GEMMs' X packing in claimed pieces (vs one static
    // range a thread: base/thread_pool.h pool_dynamic_split)
    {"pool_dynamic", [](bool on) { pool_dynamic_split(on); }},
    {"kq_record_rows", [](bool on) { set_kquant_record_rows(on ? 32 : 64); }, OnContext::ReloadedModel},
    {"small_half_copies", [](bool on) { set_small_half_copies(on); }, OnContext::ReloadedModel},
    {"packed_whole_huge", [](bool on) { set_packed_whole_huge_pages(on); }, OnContext::ReloadedModel},
    {"packed_arena", [](bool on) { set_packed_arena(on); }, OnContext::ReloadedModel},
    // whole 2 MiB pages a copy (off) against the arena (on): the arena's share of packed_whole_huge's gain
    {"arena_vs_whole", [](bool on) { set_packed_arena(on); set_packed_whole_huge_pages(!on); }, OnContext::ReloadedModel},
    // both loads in the arena (an A/A of the reload with a copy of the file)
    {"packed_arena_aa", [](bool) { set_packed_arena(true); }, OnContext::ReloadedModel},
    {"bf16_prefill_fuse", [](bool on) { set_bf16_prefill_fuse(on); }},
    // a layer's q/k/v and gate/up at M = 1 as one dispatch (kernels.h set_gemv_fusion) against one a matrix
    {"gemv_fuse", [](bool on) { set_gemv_fusion(on); }},
    // the decode GEMVs' rows as one contiguous range a thread (set_gemv_ranges) against guided
    // chunks; with EMOLLM_POOL_LATE_US / _WORKER, what a thread kept off its core costs each
    {"gemv_ranges", [](bool on) { gemm_detail::set_gemv_ranges(on); }},
    // q4_0's decode GEMV claims whole pairs of super-groups (set_gemv_even_claims: no claim's last
    // super-group on one stream) against single passes; at 2+ threads (1 thread: one claim)
    {"gemv_even_claims", [](bool on) { gemm_detail::set_gemv_even_claims(on); }},
    // the q4_0 / q8_0 prefill's X-panel kernel prefetching its X panel on unsliced calls
    // (set_repacked_x_prefetch; with AB_PREFILL)
    {"repacked_x_prefetch", [](bool on) { gemm_detail::set_repacked_x_prefetch(on); }},
    // the q4_0 / q8_0 prefill's X rounding: a 4-row X panel's rows at once, full stores (on),
    // against row by row, masked stores (set_qx_pack_panel4; with AB_PREFILL)
    {"qx_panel4", [](bool on) { gemm_detail::set_qx_pack_panel4(on); }},
    // the X-panel kernel's guided claims of weight panels vs equal chunks (set_repacked_guided; with AB_PREFILL)
    {"repacked_guided", [](bool on) { gemm_detail::set_repacked_guided(on); }},
    // the X-panel kernel's built-in blocking of double-pumped AVX-512 (Zen 4: no k slices on q8_0) against
    // full-width's (k slices from K = 8192), whatever this CPU is (set_repacked_double_pumped; with AB_PREFILL)
    {"repacked_double_pumped", [](bool on) { gemm_detail::set_repacked_double_pumped(on ? 1 : 0); }},
    // the X-panel kernel unsliced (set_repacked_kslice(0)) against this CPU's default (-1): whether
    // q4_0 should join q8_0 in the double-pumped row (a q4_0 model; with AB_PREFILL)
    {"repacked_unsliced", [](bool on) { gemm_detail::set_repacked_kslice(on ? 0 : -1); }},
    // bf16 gemm() at K > 4096 without the per-call W pack (set_bf16_gemm_wbcast; with AB_PREFILL)
    {"bf16_wbcast", [](bool on) { gemm_detail::set_bf16_gemm_wbcast(on); }},
};
int main(int argc, char** argv) {
  if (argc < 2) { std::fprintf(stderr, "decode_ab model.gguf [threads] [rounds] [block] [other model (other_model) | a copy of the model (a reloading switch)]\n"); return 1; }
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2, rounds = argc > 3 ? std::atoi(argv[3]) : 8,
            block = argc > 4 ? std::atoi(argv[4]) : 16;
  const char* sw = std::getenv("AB_SWITCH") ? std::getenv("AB_SWITCH") : "";
  const AbSwitch* chosen = nullptr;
  for (const AbSwitch& k : kSwitches)
    if (!std::strcmp(sw, k.name)) chosen = &k;
  if (!chosen) {
    std::fprintf(stderr, "decode_switch_ab: %s AB_SWITCH '%s' (", *sw ? "unknown" : "no", sw);
    for (const AbSwitch& k : kSwitches) std::fprintf(stderr, "%s%s", &k == kSwitches ? "" : ", ", k.name);
    std::fprintf(stderr, ")\n");
    return 2;
  }
  std::printf("switch %s\n", sw);
  // AB_THP=0: transparent huge pages off for this process before the load (prctl
  // PR_SET_THP_DISABLE): the weights' records in 4 KiB pages, to see what coverage does to a ratio
  if (std::getenv("AB_THP") && std::strcmp(std::getenv("AB_THP"), "0") == 0) (void)prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
  void (*const set)(bool) = chosen->set;
  if (chosen->on_context == OnContext::ReloadedModel) set(false);
  LlamaLoadOptions lo; lo.threads = threads;
  if (chosen->on_context == OnContext::ReloadedModel) print_rss("before the off load");
  auto m = LlamaModel::load(argv[1], lo);
  if (chosen->on_context == OnContext::ReloadedModel) print_rss("after the off load");
  g_embd = m->tok_embd.data;
  g_embd_bytes = size_t(m->tok_embd.rows) * dtype_row_bytes(m->tok_embd.dtype, m->tok_embd.cols);
  // AB_PROMPT=n: n prompt tokens first (default 16), so the decode attention reads a longer cache
  const int n_prompt = std::getenv("AB_PROMPT") ? std::max(1, std::atoi(std::getenv("AB_PROMPT"))) : 16;
  auto env_n = [](const char* name) { return std::getenv(name) ? std::max(0, std::atoi(std::getenv(name))) : 0; };
  const int n_prefill = env_n("AB_PREFILL"), n_seqs = std::max(1, env_n("AB_SEQS")), n_create = env_n("AB_CREATE");
  LlamaContextOptions o; o.n_ctx = n_prompt + std::max(2 * rounds * block + 8 * block, n_prefill) + 64;
  o.n_seq = n_seqs;
  // AB_KV=f16 / bf16: both modes' KV cache in that type (the context option kvCacheType; default f32)
  if (const char* kv = std::getenv("AB_KV")) {
    if (std::strcmp(kv, "f16") == 0) o.kv_type = DType::F16;
    else if (std::strcmp(kv, "bf16") == 0) o.kv_type = DType::BF16;
    else if (std::strcmp(kv, "f32") != 0) { std::fprintf(stderr, "decode_switch_ab: AB_KV is f32, f16 or bf16\n"); return 2; }
  }
  if (n_prefill) o.n_batch = std::max(n_prefill, n_prompt);
  LlamaContext ctx(m, o);
  std::vector<int32_t> prompt(static_cast<size_t>(std::max(n_prompt, n_prefill)));
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = 300 + (37 * int(i)) % 20000;
  for (int q = 0; q < n_seqs; ++q) ctx.seq_eval(q, prompt.data(), n_prompt);
  decltype(m) m_on;
  std::unique_ptr<LlamaContext> ctx_on;
  LlamaContextOptions o_on = o;  // the on blocks' context options (kv_f16: an f16 cache)
  if (argc > 6 || (argc == 6 && chosen->on_context != OnContext::ReloadedModel && chosen->on_context != OnContext::OtherModel)) {
    std::fprintf(stderr, "decode_switch_ab: a 5th argument (a model file) only with other_model or a switch that reloads the model (%s does not); nothing after it\n",
                 chosen->name);
    return 2;
  }
  if (chosen->on_context == OnContext::KvF16) {
    o_on.kv_type = DType::F16;
    ctx_on = std::make_unique<LlamaContext>(m, o_on);
  } else if (chosen->on_context == OnContext::ReloadedModel) {
    print_rss("before the on load");
    set(true);
    // a 5th argument (a copy of the model file): the on model gets packed copies of its own (a
    // reload of the same file shares the off model's where the layout is the same)
    m_on = LlamaModel::load(argc >= 6 ? argv[5] : argv[1], lo);
    print_rss("after the on load");
    ctx_on = std::make_unique<LlamaContext>(m_on, o);
  } else if (chosen->on_context == OnContext::OtherModel) {
    if (argc < 6) { std::fprintf(stderr, "decode_switch_ab: other_model needs the other model file as the 5th argument\n"); return 2; }
    m_on = LlamaModel::load(argv[5], lo);
    ctx_on = std::make_unique<LlamaContext>(m_on, o);
  }
  if (ctx_on)
    for (int q = 0; q < n_seqs; ++q) ctx_on->seq_eval(q, prompt.data(), n_prompt);
  // a block's work in its mode (see the top), and the tokens (or contexts) it counts
  const double per_block = n_create ? 1.0 : n_prefill ? n_prefill : n_seqs;
  std::vector<LlamaBatchSegment> segs(static_cast<size_t>(n_seqs));
  std::vector<int32_t> seq_tok(static_cast<size_t>(n_seqs));
  std::vector<float> batch_out;
  int32_t tok = 1000;
  const bool use_cpu = std::getenv("AB_CPU") && std::strcmp(std::getenv("AB_CPU"), "1") == 0;
  // AB_FRESH=1 (with AB_PREFILL): each prefill into a new context of the block's own model and
  // options (the on model / an f16 cache where the switch runs its on blocks elsewhere), `block` of
  // them made before the clock starts (as bench:decode's runs each make one), not the first context
  // truncated back
  const bool fresh_asked = std::getenv("AB_FRESH") && std::strcmp(std::getenv("AB_FRESH"), "1") == 0;
  if (fresh_asked && !n_prefill) {  // it would change nothing: say so rather than run a plain decode A/B
    std::fprintf(stderr, "decode_switch_ab: AB_FRESH=1 applies to prefills only: set AB_PREFILL=n too\n");
    return 2;
  }
  const bool fresh = n_prefill && fresh_asked;
  std::vector<std::unique_ptr<LlamaContext>> ctx_fresh;
  auto run = [&](bool on) {
    set(on);
    if (fresh) {  // untimed: the last block's contexts freed, this block's made
      ctx_fresh.clear();
      const bool own = on && ctx_on;
      for (int i = 0; i < block; ++i)
        ctx_fresh.push_back(std::make_unique<LlamaContext>(own && m_on ? m_on : m, own ? o_on : o));
    }
    timespec c0, c1;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
    auto t0 = std::chrono::steady_clock::now();
    LlamaContext& c = on && ctx_on ? *ctx_on : ctx;
    if (n_create) {
      LlamaContextOptions oc;
      oc.n_ctx = n_create;
      for (int i = 0; i < block; ++i) LlamaContext fresh(m, oc);
    } else if (n_prefill) {
      for (int i = 0; i < block; ++i) {
        if (fresh) {
          ctx_fresh[size_t(i)]->eval(prompt.data(), n_prefill);
          continue;
        }
        c.truncate(n_prompt);
        c.eval(prompt.data(), n_prefill);
      }
    } else if (n_seqs > 1) {
      for (int i = 0; i < block; ++i) {
        for (int q = 0; q < n_seqs; ++q) {
          seq_tok[size_t(q)] = 300 + (tok + 101 * q) % 20000;
          segs[size_t(q)].seq = q;
          segs[size_t(q)].tokens = &seq_tok[size_t(q)];
          segs[size_t(q)].n = 1;
        }
        batch_out.resize(size_t(LlamaContext::batch_output_rows(segs.data(), n_seqs) * c.n_vocab()));
        c.eval_batch(segs.data(), n_seqs, batch_out.data());
        tok = 300 + (tok * 7 + 13) % 20000;
      }
    } else {
      for (int i = 0; i < block; ++i) { c.eval(&tok, 1); tok = 300 + (tok * 7 + 13) % 20000; }
    }
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double cpu = (c1.tv_sec - c0.tv_sec) + 1e-9 * (c1.tv_nsec - c0.tv_nsec);
    return use_cpu ? cpu : wall;
  };
  {  // warm (untimed in the totals; printed: a prefill's first call in the process pays its first-use costs)
    const double w = run(false);
    std::printf("warm (off): %.2f tok/s\n", block * per_block / w);
  }
  for (int on = 0; on < 2 && std::getenv("AB_HANDOFF"); ++on) {  // off, then on (same context: ctx)
    set(on != 0);
    ctx.eval(&tok, 1);  // untimed: a switch read at the next call takes effect here
    tok = 300 + (tok * 7 + 13) % 20000;
    pool_handoff_timing(true);
    const double h0 = pool_handoff_seconds_this_thread();
    const uint64_t d0 = pool_dispatches_this_thread();
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 4 * block; ++i) { ctx.eval(&tok, 1); tok = 300 + (tok * 7 + 13) % 20000; }
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double h = pool_handoff_seconds_this_thread() - h0;
    const double d = double(pool_dispatches_this_thread() - d0);
    std::printf("handoff (%s): %.1f dispatches a token, %.2f us each, %.3f ms a token = %.1f%% of the step (%.2f ms)\n",
                on ? "on" : "off", d / (4 * block), 1e6 * h / d, 1e3 * h / (4 * block), 100 * h / wall, 1e3 * wall / (4 * block));
    pool_handoff_timing(false);
  }
  double ta = 0, tb = 0;
  std::vector<double> ratios;
  const bool sched = std::getenv("AB_SCHED") && std::strcmp(std::getenv("AB_SCHED"), "1") == 0;
  const std::vector<TaskSched> s0 = sched ? read_sched() : std::vector<TaskSched>();
  const double steal0 = sched ? read_steal_ticks() : 0;
  const auto w0 = std::chrono::steady_clock::now();
  for (int r = 0; r < rounds; ++r) {
    double a, b;
    if (r % 2 == 0) { a = run(false); b = run(true); } else { b = run(true); a = run(false); }
    ta += a; tb += b; ratios.push_back(a / b);
    std::printf("round %d: off %.2f tok/s, on %.2f tok/s, on/off speed %.3f\n", r, block * per_block / a, block * per_block / b, a / b);
  }
  if (sched)
    print_sched(s0, read_sched(), steal0, read_steal_ticks(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count());
  std::sort(ratios.begin(), ratios.end());
  print_huge_coverage();
  std::printf("TOTAL off %.2f tok/s on %.2f tok/s speed on/off %.3f (median round %.3f, min %.3f max %.3f)\n",
              rounds * block * per_block / ta, rounds * block * per_block / tb, ta / tb, ratios[ratios.size() / 2], ratios.front(), ratios.back());
}
