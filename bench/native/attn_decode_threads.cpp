// Where decode attention's two-thread time goes, in one process on the same data (7B shape: 32 / 32
// heads x 128, f32 cache in 64-token pages, copies rotated so every call reads from memory):
//
//   build-bench/attn_decode_threads [kv 512] [rounds 21] [copies 8] [1b] [2m] [1t] [f16|bf16|bf16dp] [kt] [lean] [pvc] [w8pf]
//
// Per round, in a shuffled order, each right after an empty job of the 2-thread pool: one call on a 1-thread pool ("1t"); on a 2-thread pool
// ("2t run": the pieces inside one pool->run job); and "2t halves": two threads (the 2-thread pool's, one run() job)
// each run the whole decode driver on its own half of the tokens without a pool, each timing its
// own half: the best a two-thread split of this kernel can do on this memory (no hand-off, no
// shared counter, no merge), and how unequal the two cores are on equal work. Printed: the median
// and best wall of each (us), GB/s (K + V bytes), 2t / 1t speed-ups, the halves' per-thread
// medians, each thread's CPU time a kv token alone (1t) and side by side (halves: the memory shared
// by two readers, preemption excluded), and the pieces each pool thread ran (attention_work); "2t pieces64" / "32": 2 threads with
// pieces of at most 64 / 32 tokens (attention_detail::set_decode_piece_max; the default 128); "1t sweep": 1 thread
// with each sub-block swept before its compute (set_decode_pipeline(false)), its thread CPU time against 1t's.
// "1b": the TinyLlama-1.1B shape (32 / 4 heads x 64). "2m": the K / V copies in 2 MiB transparent
// huge pages (madvise, as the model's KV cache is allocated) instead of the allocator's 4 KiB pages.
// "1t pf L1" / "pf L2" (and 2t): the
// pipelined prefetch into the other cache level than this CPU's default (set_decode_pipeline_l2).
// "1t read": a plain read of the same K and V bytes (one stream, the hardware prefetchers alone:
// the yardstick of a 1-thread call); "1t read4": the same bytes as 4 streams each prefetched
// (T0) 1 KiB ahead (the read-bandwidth probe's pattern: the ceiling's); "1t hot": the 1-thread call again on the copy it just read
// (K and V from the caches: its compute alone). "f16" / "bf16": the cache in that type (the
// model's kvCacheType; half the bytes, widened by the kernels' loads; GB/s in its own bytes);
// "bf16dp": the bf16 cache on bf16 products (DecodeBf16Dp::Always, the opt-in decodeBf16Products:
// not bit-equal; taken with >= 4 query heads per kv head, the 1.1B shape).
// "kt" (needs 1b, not with bf16dp: exit 2 otherwise): "1t ktiles", the 1-thread call on each copy's K laid out in 16-token transposed
// tiles (attention_detail::set_decode_k_tiles, the prototype: Q K^T without the register
// transposes), interleaved with the others; its output checked bit for bit against "1t"'s.
// "1t lean" (or, with "lean": every mode on attention_detail::set_decode_lean(true), "1t nolean"): the
// 1-thread call with the lean narrow piece switched the other way, its output checked bit for bit too.
// "pvc": every mode on attention_detail::set_decode_pv_chunks(true) (the 7B's P V pairs by chunks, as Zen 4's
// default; the wide rows' P V takes decode_wide_pf's prefetch only so): on a CPU whose default is the row order,
// the wide-row modes below measured as they would run with pv chunks on, and "1t pv rows" the default's P V.
// "w8pf": every mode on set_decode_wide8(true) / set_decode_wide_pf(true) (the 7B's sub-blocks as two of 8 rows with
// the next 8 prefetched, on every cache type): "1t 16 rows" then the other side, so that a form compared both ways
// shows whether being the process's default (the path most modes run, its branches and prefetchers trained) favours it.
// "1t rd drv": the decode driver's own loads on the same K / V pages without its arithmetic
// (read_decode_pattern: per 64-token block, K in 16-row sub-blocks a kv head's slice at a time,
// then V two kv heads a token row: the 7B's wide-row walk); "1t rd head": one kv head's slice of
// every token of a block, then the next head's (a head-by-head walk); "1t read hot" / "1t rd drv
// hot": the plain read / the driver's loads again on the copy they just read (warm: L3 when a copy
// fits). The load rows answer whether the 7B call's access pattern is what holds it (session 29:
// its loads alone 0.64-0.74x a plain read, the call 0.56-0.62x); a token-row walk of the same
// arithmetic (whole rows front to back, same bits) was no faster: 0.88-1.02x cold (bench/README,
// the experiment's commit 65db343). "1t pv rows" (or "1t pv chunks" where the CPU's default is the
// row order) and its "hot" twin: the call with the 7B's P V pairs in the other order than this
// CPU's default (attention_detail::set_decode_pv_chunks: a 16-float chunk across the 16 token rows
// at a time, the Zen 4 default, or a token row's pair slice at a time), output checked bit for bit.
// "1t 16 rows" / "1t widepf" / "1t wide8" / "1t w8 pf" and their "hot" twins: the call with the 7B's sub-blocks
// read each way on every cache type (f32: its rows back to back with head_dim 113-128 only, as the 7B's;
// attention_detail::set_decode_wide_pf / set_decode_wide8: 16 rows on the
// hardware prefetchers, the order before session 30; 8 rows at a time with the next sub-block prefetched into L2;
// two sub-blocks of 8 rows; both; each prefetch in the loads' order, set_decode_wide_lin(0): session 30's forms),
// outputs checked bit for bit against "1t" (this CPU's default for the type; Zen 4 f32 since session 32: "w8 lin8").
// "1t lin1" / "lin2" / "lin4" / "lin8": "widepf" with its prefetch in address order (attention_detail::
// set_decode_wide_lin(N): kv head g's call the next sub-block's g-th 8 KiB front to back, every N-th line; f32 only,
// else the same as widepf); "1t w8 lin2" / "lin8" / "lin16" / "lin32": "w8 pf" so (each call the next 8 rows' g-th
// 4 KiB); outputs checked bit for bit. "1t rd skew1" / "rd skew2": "rd drv"'s loads with row t of a sub-block at kv
// head (g + t) mod n (V: pair) / rows 8-15 half the heads on (the 16 rows' same-offset lines spread over the low
// address bits: session 32's probe of whether the rows' common offset is what reads slowly).
// "1t": only the 1-thread modes (a loaded machine,
// where 2-thread walls are unreadable). The last table: every 1-thread mode by thread CPU time
// (GB/s of K + V, its time over the read's, GFLOP/s of the call's Q K^T and P V FMAs and their
// share of the FMA peak measured first: bench_fma.h).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <time.h>
#include <vector>

#include "../../base/arena.h"
#include "../../base/dtype.h"
#include "../../base/thread_pool.h"
#include "../../kernels/cpu/attention_internal.h"
#include "../../kernels/cpu/kernels.h"
#include "bench_clock.h"
#include "bench_fma.h"
#include "bench_read.h"
#include "proc_rollup.h"

using namespace emollm;
using bench::best;
using bench::median;
using bench::now;
using bench::thread_cpu;

// The decode driver's loads on one call's K / V pages (kv tokens [0, n_kv), pages of `page` tokens,
// rows ld_bytes apart, Hkv kv heads of slice_bytes each), without its arithmetic, in its order:
// per 64-token block, K in 16-row sub-blocks, kv head by kv head, each head's slice a 64-byte line
// of the 16 rows at a time (qk16's loads: 16 row streams advancing one slice a kv head, crossing a
// 4 KiB page every 4096 / slice_bytes heads), then V the same sub-blocks two kv heads a token row
// at a time (pv2's loads), or with v_chunks (decode_pv_chunks, the Zen 4 default) a line of the two
// heads' slices across the 16 rows at a time (pv2 by chunks); head_major: one kv head's slice of every token of the block (K then V),
// then the next head (the walk a head-by-head driver would make: one 512-byte slice every row).
#if defined(__x86_64__)
BENCH_READ_AVX512 static uint64_t read_decode_pattern(const float* const* kp, const float* const* vp, int64_t n_kv,
                                                      int64_t page, int64_t ld_bytes, int64_t Hkv,
                                                      int64_t slice_bytes, bool head_major, bool v_chunks,
                                                      int skew = 0) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0;
  auto row = [&](const float* const* pages, int64_t j) {
    return reinterpret_cast<const uint8_t*>(pages[j / page]) + (j % page) * ld_bytes;
  };
  const int64_t lines = slice_bytes / 64;
  // skew 1: row t at kv head (g + t) mod Hkv (V: pair); 2: rows 8-15 at (g + Hkv / 2) mod Hkv (probe)
  auto sk = [&](int64_t g, int t, int64_t n) {
    return skew == 1 ? (g + t) % n : skew == 2 ? (g + (t >= 8 ? n / 2 : 0)) % n : g;
  };
  for (int64_t b0 = 0; b0 < n_kv; b0 += 64) {
    const int64_t b1 = std::min(n_kv, b0 + 64);
    if (head_major) {
      for (int kv = 0; kv < 2; ++kv)
        for (int64_t g = 0; g < Hkv; ++g)
          for (int64_t j = b0; j < b1; ++j) {
            const uint8_t* r = row(kv ? vp : kp, j) + g * slice_bytes;
            for (int64_t l = 0; l < lines; ++l) a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(r + 64 * l));
          }
      continue;
    }
    for (int64_t s0 = b0; s0 < b1; s0 += 16) {
      const int ns = int(std::min<int64_t>(16, b1 - s0));
      for (int64_t g = 0; g < Hkv; ++g)
        for (int64_t l = 0; l < lines; ++l)
          for (int t = 0; t < ns; ++t)
            a0 = _mm512_xor_si512(a0, _mm512_loadu_si512(row(kp, s0 + t) + sk(g, t, Hkv) * slice_bytes + 64 * l));
    }
    for (int64_t s0 = b0; s0 < b1; s0 += 16) {
      const int ns = int(std::min<int64_t>(16, b1 - s0));
      for (int64_t g = 0; g < Hkv; g += 2) {
        // the pair's lines (an odd kv head count: the last head alone, as the driver's P V)
        const int64_t pair_lines = (g + 1 < Hkv ? 2 : 1) * lines;
        if (v_chunks) {  // decode_pv_chunks: a line of the pair's slice across the rows at a time
          for (int64_t l = 0; l < pair_lines; ++l)
            for (int t = 0; t < ns; ++t)
              a1 = _mm512_xor_si512(a1, _mm512_loadu_si512(row(vp, s0 + t) + 2 * sk(g / 2, t, Hkv / 2) * slice_bytes + 64 * l));
          continue;
        }
        for (int t = 0; t < ns; ++t) {
          const uint8_t* r = row(vp, s0 + t) + g * slice_bytes;
          for (int64_t l = 0; l < pair_lines; ++l) a1 = _mm512_xor_si512(a1, _mm512_loadu_si512(r + 64 * l));
        }
      }
    }
  }
  return bench::fold(a0) ^ bench::fold(a1);
}
#endif

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (argv[i][0] == '-') {
      std::fprintf(stderr, "attn_decode_threads [kv 512] [rounds 21] [copies 8] [1b] [2m] [1t] [f16|bf16|bf16dp] [kt] [lean] [pvc] [w8pf]\n");
      return 2;
    }
  const int64_t n_kv = argc > 1 ? std::max(64L, std::atol(argv[1])) : 512;
  const int rounds = argc > 2 ? std::max(1, std::atoi(argv[2])) : 21;
  const int copies = argc > 3 ? std::max(1, std::atoi(argv[3])) : 8;
  bool small = false, huge = false, only_1t = false, ktiles = false;
  DType kv_type = DType::F32;
  for (int i = 4; i < argc; ++i) {
    small = small || std::strcmp(argv[i], "1b") == 0;
    huge = huge || std::strcmp(argv[i], "2m") == 0;
    only_1t = only_1t || std::strcmp(argv[i], "1t") == 0;
    ktiles = ktiles || std::strcmp(argv[i], "kt") == 0;
    if (std::strcmp(argv[i], "lean") == 0) attention_detail::set_decode_lean(true);
    if (std::strcmp(argv[i], "pvc") == 0) attention_detail::set_decode_pv_chunks(true);
    if (std::strcmp(argv[i], "w8pf") == 0) {
      attention_detail::set_decode_wide8(true);
      attention_detail::set_decode_wide_pf(true);
    }
    if (std::strcmp(argv[i], "f16") == 0) kv_type = DType::F16;
    if (std::strcmp(argv[i], "bf16") == 0) kv_type = DType::BF16;
    if (std::strcmp(argv[i], "bf16dp") == 0) {
      kv_type = DType::BF16;
      attention_detail::set_decode_bf16dp_mode(attention_detail::DecodeBf16Dp::Always);
    }
  }
  // an option that would do nothing (or that the prototype refuses) is an error, not a silent no-op
  if (ktiles && !small) {
    std::fprintf(stderr, "attn_decode_threads: kt needs 1b (the prototype takes >= 4 query heads a kv head: the 7B "
                         "shape's 32 / 32 adds no 1t ktiles row)\n");
    return 2;
  }
  if (ktiles && attention_detail::decode_bf16dp_mode() == attention_detail::DecodeBf16Dp::Always) {
    std::fprintf(stderr, "attn_decode_threads: kt does not take bf16dp (the prototype reads K as f32 / f16 / bf16 rows' "
                         "values, not bf16 products)\n");
    return 2;
  }
  const size_t esz = kv_type == DType::F32 ? 4 : 2;  // bytes a cache element
  constexpr int64_t kPage = 64;
  AttentionParams p;
  p.n_q = 1; p.n_kv = n_kv; p.n_heads = 32; p.n_kv_heads = small ? 4 : 32; p.head_dim = small ? 64 : 128;
  p.ldq = p.ldo = p.n_heads * p.head_dim;
  p.ldk = p.ldv = p.n_kv_heads * p.head_dim;
  p.causal = true;
  p.q_pos0 = n_kv - 1;
  p.kv_block_size = kPage;
  p.kv_dtype = kv_type;
  const int64_t n_pages = (n_kv + kPage - 1) / kPage;
  const size_t elems = size_t(n_pages * kPage * p.ldk);
  std::vector<AlignedPtr<float>> bufs;
  std::vector<std::vector<const float*>> kt(static_cast<size_t>(copies)), vt(static_cast<size_t>(copies));
  uint32_t x = 12345;
  for (int c = 0; c < copies; ++c)
    for (int kv = 0; kv < 2; ++kv) {
      // "2m": each copy in 2 MiB transparent huge pages (aligned_alloc_huge), as the model's KV
      // cache (the CPU backend's alloc), its size rounded up to whole 2 MiB pages (a smaller copy,
      // the 1.1B shape's at kv 512, got none before); default: the allocator's 4 KiB pages
      AlignedPtr<float> b(static_cast<float*>(
          huge ? aligned_alloc_huge((elems * esz + kHugePage2M - 1) / kHugePage2M * kHugePage2M)
               : aligned_alloc_bytes(elems * esz, kAlign)));
      auto* h = reinterpret_cast<uint16_t*>(b.get());  // the half cache's elements
      for (size_t i = 0; i < elems; ++i) {
        x = x * 1664525u + 1013904223u;
        const float f = float(int32_t(x >> 8) - (1 << 23)) / float(1 << 23);
        if (kv_type == DType::F32) b.get()[i] = f;
        else h[i] = kv_type == DType::F16 ? f32_to_f16(f) : f32_to_bf16(f);
      }
      // a page's first row (a half page's pointer typed float* only to travel through AttentionParams)
      for (int64_t pg = 0; pg < n_pages; ++pg)
        (kv ? vt : kt)[size_t(c)].push_back(kv_type == DType::F32 ? b.get() + pg * kPage * p.ldk
                                                                 : reinterpret_cast<const float*>(h + pg * kPage * p.ldk));
      bufs.push_back(std::move(b));
    }
  // kt: each copy's K again in 16-token tiles (tile of tokens 16 T .. 16 T + 15 where their rows
  // lie; element (kv head g, dim d, token t) at g * D * 16 + d * 16 + t within it)
  std::vector<AlignedPtr<float>> tbufs;
  std::vector<std::vector<const float*>> ktt(static_cast<size_t>(copies));
  if (ktiles && small)
    for (int c = 0; c < copies; ++c) {
      AlignedPtr<float> b(static_cast<float*>(
          huge ? aligned_alloc_huge((elems * esz + kHugePage2M - 1) / kHugePage2M * kHugePage2M)
               : aligned_alloc_bytes(elems * esz, kAlign)));
      const auto* src = reinterpret_cast<const uint8_t*>(bufs[size_t(2 * c)].get());
      auto* dst = reinterpret_cast<uint8_t*>(b.get());
      const int64_t ld = p.ldk;
      for (int64_t j = 0; j < n_pages * kPage; ++j)
        for (int64_t e = 0; e < ld; ++e)  // e = g * D + d
          std::memcpy(dst + size_t((j / 16 * 16 * ld + e * 16 + j % 16) * int64_t(esz)),
                      src + size_t((j * ld + e) * int64_t(esz)), esz);
      for (int64_t pg = 0; pg < n_pages; ++pg)
        ktt[size_t(c)].push_back(reinterpret_cast<const float*>(dst + size_t(pg * kPage * p.ldk) * esz));
      tbufs.push_back(std::move(b));
    }
  bool use_tiles = false;
  std::vector<float> q(size_t(p.ldq)), o(size_t(p.ldo));
  for (float& v : q) {
    x = x * 1664525u + 1013904223u;
    v = float(int32_t(x >> 8) - (1 << 23)) / float(1 << 23);
  }
  ThreadPool pool1(1), pool2(2);
  int call = 0;
  auto params = [&](int c, int64_t page0, int64_t len) {
    AttentionParams pi = p;
    pi.k_blocks = (use_tiles ? ktt : kt)[size_t(c)].data() + page0;
    pi.v_blocks = vt[size_t(c)].data() + page0;
    pi.n_kv = len;
    pi.q_pos0 = len - 1;
    return pi;
  };
  double cpu_1t = 0;  // the calling thread's CPU time of the last call
  // hot: the call once untimed on the same copy first (its K and V then in the caches)
  auto timed = [&](ThreadPool* pool, bool hot = false) {
    const AttentionParams pi = params(call++ % copies, 0, n_kv);
    const AttentionBatchItem it{q.data(), nullptr, nullptr, o.data(), pi};
    if (hot) attention_batch(&it, 1, pool);
    const double c0 = thread_cpu(), t0 = now();
    attention_batch(&it, 1, pool);
    const double dt = now() - t0;
    cpu_1t = thread_cpu() - c0;
    return dt;
  };
  // halves: pages [0, h) and [h, n_pages) on the 2-thread pool's two threads, each without a pool
  const int64_t h_pages = n_pages / 2;
  std::vector<float> o1(size_t(p.ldo));
  double half_t[2], half_cpu[2];
  auto halves = [&]() {
    const int c = call++ % copies;
    std::atomic<int> ready{0};
    const double t0 = now();
    pool2.run([&](int ith, int) {
      ready.fetch_add(1);
      while (ready.load() < 2) {}  // both start together (a late worker makes this wait: best-of)
      const double s = now(), c0 = thread_cpu();
      const AttentionParams pi =
          ith == 0 ? params(c, 0, h_pages * kPage) : params(c, h_pages, n_kv - h_pages * kPage);
      attention(q.data(), nullptr, nullptr, ith == 0 ? o.data() : o1.data(), pi, nullptr);
      half_t[ith] = now() - s;
      half_cpu[ith] = thread_cpu() - c0;
    });
    return now() - t0;
  };
  // 1 thread, a plain read of the next copy's K then V bytes (one stream, no software prefetch)
  const size_t kv_bytes = size_t(n_kv) * size_t(p.ldk) * esz;
  uint64_t read_sink = 0;
  // pattern 0: one stream, 1: four streams, 2: the driver's loads (read_decode_pattern), 3: one kv
  // head at a time; hot: the same read once untimed on the same copy first
  auto read_copy = [&](int pattern, bool hot = false) {
    const int c = call++ % copies;
    auto once = [&] {
      if (pattern >= 2) {
        read_sink ^= read_decode_pattern(kt[size_t(c)].data(), vt[size_t(c)].data(), n_kv, kPage,
                                         p.ldk * int64_t(esz), p.n_kv_heads, p.head_dim * int64_t(esz), pattern == 3,
                                         attention_detail::decode_pv_chunks(), pattern >= 4 ? pattern - 3 : 0);
        return;
      }
      for (int kv = 0; kv < 2; ++kv) {
        const auto* b = reinterpret_cast<const uint8_t*>(bufs[size_t(2 * c + kv)].get());
        read_sink ^= pattern == 1 ? bench::read_streams<4>(b, kv_bytes, 64, 1024)
                                  : bench::read_streams<1>(b, kv_bytes, 64, 0);
      }
    };
    if (hot) once();
    const double c0 = thread_cpu(), t0 = now();
    once();
    const double dt = now() - t0;
    cpu_1t = thread_cpu() - c0;
    return dt;
  };
  enum { k1t, kRun, kHalves, kPm64, kPm32, k1tSweep, k1tPf, k2tPf, k1tRead, k1tHot, k1tRead4, k1tKt, k1tLean, k1tRdDrv,
         k1tRdHead, k1tReadHot, k1tRdDrvHot, k1tPvc, k1tPvcHot, k1tW16, k1tW16Hot, k1tWpf, k1tWpfHot, k1tW8, k1tW8Hot, k1tW8Pf, k1tW8PfHot,
         k1tLin1, k1tLin2, k1tLin4, k1tLin8, k1tRdSkew1, k1tRdSkew2, k1tW8Lin2, k1tW8Lin8, k1tW8Lin16, k1tW8Lin32, kModes };
  auto one_thread = [=](int m) { return m != kRun && m != kHalves && m != kPm64 && m != kPm32 && m != k2tPf; };
  auto is_read = [=](int m) {
    return m == k1tRdSkew1 || m == k1tRdSkew2 || m == k1tRead || m == k1tRead4 || m == k1tRdDrv || m == k1tRdHead || m == k1tReadHot || m == k1tRdDrvHot;
  };
  const double fma_peak = bench::fma_peak_1t_gflops();
  // "pf L1" / "pf L2": the pipelined prefetch into the other level than this CPU's default (decode_pipeline_l2)
  const bool l2_default = attention_detail::decode_pipeline_l2();
  const bool lean_default = attention_detail::decode_lean();
  // "pv rows" / "pv chunks": the 7B's P V pairs in the other order than this CPU's default (decode_pv_chunks)
  const bool pvc_default = attention_detail::decode_pv_chunks();
  // the 7B's wide-row sub-blocks, each setting on every cache type whatever this CPU's default (DecodeWide per type):
  // "16 rows" (decode_wide_pf and decode_wide8 off: the order before session 30), "widepf" (8 rows at a time, the
  // next sub-block prefetched), "wide8" (two sub-blocks of 8 rows), "w8 pf" (both)
  const attention_detail::DecodeWide wpf_mode = attention_detail::decode_wide_pf_mode(),
                                     w8_mode = attention_detail::decode_wide8_mode();
  const int lin_default = attention_detail::decode_wide_lin();
  // lin: decode_wide_lin (0: the prefetch in the loads' order, every line: session 30's forms)
  auto set_wide = [](bool pf, bool w8, int lin = 0) {
    attention_detail::set_decode_wide_pf(pf);
    attention_detail::set_decode_wide8(w8);
    attention_detail::set_decode_wide_lin(lin);
  };
  // the address-order rows' settings: lin1-lin8 widepf's (16 rows), w8 lin2-lin32 w8 pf's
  auto set_lin_mode = [&](int m) {
    if (m <= k1tLin8) set_wide(true, false, 1 << (m - k1tLin1));
    else set_wide(true, true, m == k1tW8Lin2 ? 2 : 8 << (m - k1tW8Lin8));
  };
  auto restore_wide = [=] {
    attention_detail::set_decode_wide_pf_mode(wpf_mode);
    attention_detail::set_decode_wide8_mode(w8_mode);
    attention_detail::set_decode_wide_lin(lin_default);
  };
  const char* names[] = {"1t", "2t run", "2t halves", "2t pieces64", "2t pieces32", "1t sweep",
                               l2_default ? "1t pf L1" : "1t pf L2", l2_default ? "2t pf L1" : "2t pf L2",
                               "1t read", "1t hot", "1t read4", "1t ktiles", lean_default ? "1t nolean" : "1t lean",
                               "1t rd drv", "1t rd head", "1t read hot", "1t rd drv hot",
                               pvc_default ? "1t pv rows" : "1t pv chunks", pvc_default ? "1t pv rows hot" : "1t pv chunks hot",
                               "1t 16 rows", "1t 16 rows hot", "1t widepf", "1t widepf hot", "1t wide8", "1t wide8 hot",
                               "1t w8 pf", "1t w8 pf hot", "1t lin1", "1t lin2", "1t lin4", "1t lin8", "1t rd skew1", "1t rd skew2", "1t w8 lin2", "1t w8 lin8", "1t w8 lin16", "1t w8 lin32"};
  static_assert(sizeof(names) / sizeof(*names) == kModes, "attn_decode_threads: one name a mode");
  std::vector<double> t[kModes], ht[2], hcpu[2], cpu1, cpu1s, cpu1p, cpu_m[kModes];
  uint64_t pieces[kModes][2] = {};
  uint32_t order_rng = 99;
  for (int r = -1; r < rounds; ++r) {  // round -1 warms up
    int order[kModes];
    for (int k = 0; k < kModes; ++k) order[k] = k;
    for (int k = kModes - 1; k > 0; --k) {  // a new order every round (a fixed rotation put one mode after another)
      order_rng = order_rng * 1664525u + 1013904223u;
      std::swap(order[k], order[(order_rng >> 8) % uint32_t(k + 1)]);
    }
    for (int k = 0; k < kModes; ++k) {
      const int m = order[k];
      if (only_1t && !one_thread(m)) continue;
      if (m == k1tKt && tbufs.empty()) continue;
      // Every call comes right after an (empty) job of the 2-thread pool, as a decode step's
      // attention comes after its q / k / v GEMV: the worker is spinning, not asleep.
      pool2.run([](int, int) {});
      const attention_detail::AttentionWork w0 = attention_detail::attention_work();
      double dt;
      if (m == k1t) dt = timed(&pool1);
      else if (m == k1tSweep) {
        attention_detail::set_decode_pipeline(false);
        dt = timed(&pool1);
        attention_detail::set_decode_pipeline(true);
        if (r >= 0) cpu1s.push_back(cpu_1t);
      }
      else if (m == k1tPf || m == k2tPf) {
        attention_detail::set_decode_pipeline_l2(!l2_default);
        dt = timed(m == k1tPf ? &pool1 : &pool2);
        attention_detail::set_decode_pipeline_l2(l2_default);
        if (r >= 0 && m == k1tPf) cpu1p.push_back(cpu_1t);
      }
      else if (m == kHalves) dt = halves();
      else if (m == k1tRead || m == k1tRead4 || m == k1tReadHot)
        dt = read_copy(m == k1tRead4 ? 1 : 0, m == k1tReadHot);
      else if (m == k1tRdDrv || m == k1tRdDrvHot || m == k1tRdHead)
        dt = read_copy(m == k1tRdHead ? 3 : 2, m == k1tRdDrvHot);
      else if (m == k1tRdSkew1 || m == k1tRdSkew2) dt = read_copy(m == k1tRdSkew1 ? 4 : 5);
      else if (m == k1tHot) dt = timed(&pool1, true);
      else if (m == k1tPvc || m == k1tPvcHot) {
        attention_detail::set_decode_pv_chunks(!pvc_default);
        dt = timed(&pool1, m == k1tPvcHot);
        attention_detail::set_decode_pv_chunks(pvc_default);
      }
      else if (m >= k1tW16 && m <= k1tW8PfHot) {
        const int w = (m - k1tW16) / 2;  // 16 rows, widepf, wide8, w8 pf
        set_wide(w == 1 || w == 3, w >= 2);
        dt = timed(&pool1, (m - k1tW16) % 2 == 1);
        restore_wide();
      }
      else if (m >= k1tLin1 && m <= k1tLin8) {  // widepf with its prefetch in address order (decode_wide_lin)
        set_lin_mode(m);
        dt = timed(&pool1);
        restore_wide();
      }
      else if (m >= k1tW8Lin2 && m <= k1tW8Lin32) {  // w8 pf with its prefetch in address order
        set_lin_mode(m);
        dt = timed(&pool1);
        restore_wide();
      }
      else if (m == k1tKt) {
        use_tiles = true;
        attention_detail::set_decode_k_tiles(true);
        dt = timed(&pool1);
        attention_detail::set_decode_k_tiles(false);
        use_tiles = false;
      }
      else if (m == k1tLean) {
        attention_detail::set_decode_lean(!lean_default);
        dt = timed(&pool1);
        attention_detail::set_decode_lean(lean_default);
      }
      else if (m == kPm64 || m == kPm32) {
        attention_detail::set_decode_piece_max(m == kPm64 ? 64 : 32);
        dt = timed(&pool2);
        attention_detail::set_decode_piece_max(attention_detail::kDecodePieceMax);
      } else {
        dt = timed(&pool2);
      }
      if (r < 0) continue;
      t[m].push_back(dt);
      const attention_detail::AttentionWork w1 = attention_detail::attention_work();
      for (int i = 0; i < 2; ++i) pieces[m][i] += w1.by_thread[i] - w0.by_thread[i];
      if (m == kHalves)
        for (int i = 0; i < 2; ++i) {
          ht[i].push_back(half_t[i]);
          hcpu[i].push_back(half_cpu[i]);
        }
      if (m == k1t) cpu1.push_back(cpu_1t);
      if (one_thread(m)) cpu_m[m].push_back(cpu_1t);
    }
  }
  const double bytes = 2.0 * double(n_kv) * double(p.ldk) * double(esz);
  std::printf("decode attention %s shape, kv %lld, %s%s in %lld-token pages, %d copies (%.1f MiB each), %d rounds\n",
              small ? "1.1B" : "7B", (long long)n_kv, dtype_name(kv_type),
              attention_detail::decode_bf16dp_applies(p) ? " (bf16 products)" : "", (long long)kPage, copies,
              bytes / 1048576.0, rounds);
  for (int m = 0; m < kModes; ++m)
    if (!t[m].empty()) std::printf("  %-11s median %8.1f us  best %8.1f us  %6.1f GB/s (median)  x1t %.2f  pieces t0/t1 %llu/%llu\n",
                names[m], median(t[m]) * 1e6, best(t[m]) * 1e6, bytes / median(t[m]) / 1e9, median(t[k1t]) / median(t[m]),
                (unsigned long long)pieces[m][0], (unsigned long long)pieces[m][1]);
  if (!only_1t) std::printf("  halves per thread: t0 median %.1f us (pages %lld), t1 median %.1f us (pages %lld)\n", median(ht[0]) * 1e6,
              (long long)h_pages, median(ht[1]) * 1e6, (long long)(n_pages - h_pages));
  // thread CPU time a kv token (preemption excluded): one thread alone against two side by side
  const double tok0 = double(h_pages * kPage), tok1 = double(n_kv - h_pages * kPage);
  if (!only_1t) std::printf("  thread CPU ns a kv token (median): 1t alone %.1f (best %.1f); halves side by side t0 %.1f (best %.1f), t1 %.1f (best %.1f)\n",
              median(cpu1) / double(n_kv) * 1e9, best(cpu1) / double(n_kv) * 1e9, median(hcpu[0]) / tok0 * 1e9,
              best(hcpu[0]) / tok0 * 1e9, median(hcpu[1]) / tok1 * 1e9, best(hcpu[1]) / tok1 * 1e9);
  std::printf("  1t sweep (set_decode_pipeline(false)): thread CPU ns a kv token (median) %.1f (best %.1f); sweep / 1t: median %.3f, best %.3f\n",
              median(cpu1s) / double(n_kv) * 1e9, best(cpu1s) / double(n_kv) * 1e9, median(cpu1s) / median(cpu1),
              best(cpu1s) / best(cpu1));
  std::printf("  %s (set_decode_pipeline_l2(%d)): thread CPU ns a kv token (median) %.1f (best %.1f); it / 1t (the default, %s): median %.3f, best %.3f\n",
              names[k1tPf], int(!l2_default), median(cpu1p) / double(n_kv) * 1e9, best(cpu1p) / double(n_kv) * 1e9,
              l2_default ? "L2" : "L1", median(cpu1p) / median(cpu1), best(cpu1p) / best(cpu1));
  // 1 thread by thread CPU time: GB/s of K + V, over the plain read, and the FMAs' share of the peak
  const double flops = 4.0 * double(n_kv) * double(p.n_heads) * double(p.head_dim);  // Q K^T + P V
  std::printf("  1 thread, thread CPU time (FMA peak %.1f GFLOP/s a thread: the call's %.0f flops a kv token take %.1f ns there):\n",
              fma_peak, flops / double(n_kv), flops / double(n_kv) / fma_peak);
  for (int m = 0; m < kModes; ++m) {
    if (!one_thread(m) || cpu_m[m].empty()) continue;
    std::printf("    %-9s ns a kv token median %7.1f best %7.1f  GB/s %5.1f (best %5.1f)  read / it %.3f (best %.3f)",
                names[m], median(cpu_m[m]) / double(n_kv) * 1e9, best(cpu_m[m]) / double(n_kv) * 1e9,
                bytes / median(cpu_m[m]) / 1e9, bytes / best(cpu_m[m]) / 1e9, median(cpu_m[k1tRead]) / median(cpu_m[m]),
                best(cpu_m[k1tRead]) / best(cpu_m[m]));
    const double gflops = flops / median(cpu_m[m]) * 1e-9;  // the reads do no flops
    if (!is_read(m)) std::printf("  GFLOP/s %.0f (%.0f%% peak)", gflops, 100 * gflops / fma_peak);
    std::printf("\n");
  }
  if (!tbufs.empty()) {  // the tiles' output against the rows' on the same copy
    call = 0;
    timed(&pool1);
    const std::vector<float> o_rows = o;
    use_tiles = true;
    attention_detail::set_decode_k_tiles(true);
    call = 0;
    timed(&pool1);
    attention_detail::set_decode_k_tiles(false);
    use_tiles = false;
    std::printf("  1t ktiles output bit for bit that of 1t (K rows): %s\n",
                std::memcmp(o.data(), o_rows.data(), sizeof(float) * o.size()) == 0 ? "yes" : "NO");
  }
  // A switch's other setting's output against the default's on the same copy, bit for bit.
  auto other_setting_same_bits = [&](const char* name, void (*set)(bool), bool on_by_default) {
    call = 0;
    timed(&pool1);
    const std::vector<float> o_def = o;
    set(!on_by_default);
    call = 0;
    timed(&pool1);
    set(on_by_default);
    std::printf("  %s output bit for bit that of 1t: %s\n", name,
                std::memcmp(o.data(), o_def.data(), sizeof(float) * o.size()) == 0 ? "yes" : "NO");
  };
  other_setting_same_bits(names[k1tLean], attention_detail::set_decode_lean, lean_default);
  other_setting_same_bits(names[k1tPvc], attention_detail::set_decode_pv_chunks, pvc_default);
  for (int w = 0; w < 4; ++w) {  // each wide-row setting's output against the default's
    call = 0;
    timed(&pool1);
    const std::vector<float> o_def = o;
    set_wide(w == 1 || w == 3, w >= 2);
    call = 0;
    timed(&pool1);
    restore_wide();
    std::printf("  %s output bit for bit that of 1t: %s\n", names[k1tW16 + 2 * w],
                std::memcmp(o.data(), o_def.data(), sizeof(float) * o.size()) == 0 ? "yes" : "NO");
  }
  for (int li = 0; li < 8; ++li) {  // decode_wide_lin's output against the default's (16 rows, then wide8)
    const int m = li < 4 ? k1tLin1 + li : k1tW8Lin2 + li - 4;
    call = 0;
    timed(&pool1);
    const std::vector<float> o_def = o;
    set_lin_mode(m);
    call = 0;
    timed(&pool1);
    restore_wide();
    std::printf("  %s output bit for bit that of 1t: %s\n", names[m],
                std::memcmp(o.data(), o_def.data(), sizeof(float) * o.size()) == 0 ? "yes" : "NO");
  }
  if (read_sink == 1) std::printf(" ");
  if (const bench::ProcRollup r = bench::proc_rollup(); r.ok)  // whether "2m" got its huge pages
    std::printf("  process AnonHugePages: %.0f kB\n", r.anon_huge_kb);
  return 0;
}
