// Tests of the native core: dtype conversions, quantisation layouts, arena, thread pool, ISA cap.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "base/arena.h"
#include "core/backend.h"
#include "base/cpu_features.h"
#include "base/dtype.h"
#include "base/env_switch.h"
#include "base/error.h"
#include "core/tensor.h"
#include "base/thread_pool.h"
#include "testing.h"

using namespace emollm;

TEST(f16_round_trips_every_finite_half) {
  // Every finite half converts to f32 and back to the same bits; NaNs stay NaN.
  int bad = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    const bool is_nan = ((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff);
    if (is_nan) {
      if (!std::isnan(f) || !std::isnan(f16_to_f32(f32_to_f16(f)))) ++bad;
    } else if (f32_to_f16(f) != h) {
      ++bad;
    }
  }
  EXPECT(bad == 0);
}

TEST(f16_known_values_and_rounding) {
  EXPECT(f32_to_f16(1.0f) == 0x3c00);
  EXPECT(f32_to_f16(-2.0f) == 0xc000);
  EXPECT(f32_to_f16(65504.0f) == 0x7bff);
  EXPECT(f32_to_f16(65520.0f) == 0x7c00);  // ties to even overflow to inf
  EXPECT(f32_to_f16(65519.0f) == 0x7bff);
  EXPECT(f32_to_f16(5.9604645e-8f) == 0x0001);  // smallest subnormal
  EXPECT(f32_to_f16(2.9802322e-8f) == 0x0000);  // half of it ties to even (zero)
  EXPECT(f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00);  // tie: round to even mantissa
  EXPECT(f32_to_f16(1.0f + 3.0f / 2048) == 0x3c02);  // tie: round up to even
  EXPECT(f16_to_f32(0x3555) == 0.333251953125f);
  EXPECT(f16_to_f32(0x0400) == 6.103515625e-05f);
}

TEST(bf16_rounds_to_nearest_even) {
  EXPECT(f32_to_bf16(1.0f) == 0x3f80);
  EXPECT(f32_to_bf16(fp32_from_bits(0x3f808000u)) == 0x3f80);  // tie, even stays
  EXPECT(f32_to_bf16(fp32_from_bits(0x3f818000u)) == 0x3f82);  // tie, odd rounds up
  EXPECT(f32_to_bf16(fp32_from_bits(0x3f808001u)) == 0x3f81);
  EXPECT(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT(bf16_to_f32(0xc0490fdb >> 16) == -3.140625f);
}

TEST(dtype_sizes_match_ggml) {
  EXPECT(dtype_row_bytes(DType::F32, 10) == 40);
  EXPECT(dtype_row_bytes(DType::BF16, 10) == 20);
  EXPECT(dtype_row_bytes(DType::Q8_0, 64) == 68);
  EXPECT(dtype_row_bytes(DType::Q4_0, 4096) == 128 * 18);
  EXPECT_THROWS(dtype_row_bytes(DType::Q4_0, 33), ErrorCode::InvalidArgument);
  DType t;
  EXPECT(dtype_from_name("BF16", &t) && t == DType::BF16);
  EXPECT(dtype_from_name("q4_0", &t) && t == DType::Q4_0);
  EXPECT(!dtype_from_name("q2_K", &t));  // q5_1 and the q4_K..q6_K k-quants are known: test_quant_ext.cpp
}

TEST(q8_0_matches_ggml_reference_quantizer) {
  // Hand-computed block: amax 2.54 -> d = 0.02, values are exact multiples of d.
  float x[32];
  for (int i = 0; i < 32; ++i) x[i] = 0.02f * float(i * 4 - 64) * (i % 2 ? 1.0f : -1.0f);
  x[31] = 2.54f;  // amax -> q = 127
  BlockQ8_0 b;
  quantize_row(DType::Q8_0, x, &b, 32);
  EXPECT_NEAR(f16_to_f32(b.d), 0.02f, 1e-5);
  EXPECT(b.qs[31] == 127);
  EXPECT(b.qs[0] == 64);   // -0.02 * -64 / 0.02
  EXPECT(b.qs[1] == -60);  // 0.02 * (4-64)
  float y[32];
  dequantize_row(DType::Q8_0, &b, y, 32);
  for (int i = 0; i < 32; ++i) EXPECT_NEAR(y[i], x[i], 0.02 * 0.5 + 1e-3);
}

TEST(q4_0_matches_ggml_nibble_layout) {
  float x[32];
  for (int i = 0; i < 32; ++i) x[i] = float(i - 16) * 0.5f;  // the extreme value is -8 (i = 0)
  BlockQ4_0 b;
  quantize_row(DType::Q4_0, x, &b, 32);
  // max by magnitude is -8 -> d = -8 / -8 = 1, so q = round(x / 1 + 8) clipped to 15.
  EXPECT_NEAR(f16_to_f32(b.d), 1.0f, 0);
  EXPECT((b.qs[0] & 0x0f) == 0);        // x[0] = -8 -> 0
  EXPECT((b.qs[0] >> 4) == 8);          // x[16] = 0 -> 8 (high nibble holds element 16)
  EXPECT((b.qs[15] >> 4) == 15);        // x[31] = 7.5 -> int8(7.5 + 8.5) = 16 -> clipped 15
  float y[32];
  dequantize_row(DType::Q4_0, &b, y, 32);
  EXPECT_NEAR(y[0], -8.0f, 0);
  EXPECT_NEAR(y[16], 0.0f, 0);
  EXPECT_NEAR(y[31], 7.0f, 0);
  EXPECT_NEAR(y[3], -6.0f, 0);  // -6.5 + 8.5 = 2 -> (2-8) * 1
}

TEST(arena_aligns_addresses_beyond_the_block_alignment) {
  // Blocks are only kAlign (64) aligned; larger alignments must still hold for every allocation.
  Arena a(1 << 16);
  for (size_t align : {size_t(128), size_t(256), size_t(4096)})
    for (int i = 0; i < 5; ++i) {
      void* p = a.alloc(size_t(1 + i * 7), align);
      EXPECT(reinterpret_cast<uintptr_t>(p) % align == 0);
    }
  EXPECT_THROWS(a.alloc(8, 48), ErrorCode::InvalidArgument);
}

TEST(arena_alignment_and_reuse) {
  Arena a(1024);
  void* p1 = a.alloc(10);
  void* p2 = a.alloc(100, 128);
  void* p3 = a.alloc(5000);  // larger than a block
  EXPECT(reinterpret_cast<uintptr_t>(p1) % kAlign == 0);
  EXPECT(reinterpret_cast<uintptr_t>(p2) % 128 == 0);
  EXPECT(reinterpret_cast<uintptr_t>(p3) % kAlign == 0);
  std::memset(p3, 1, 5000);
  EXPECT(a.bytes_used() >= 5110);
  a.reset();
  EXPECT(a.bytes_used() == 0);
  const size_t reserved = a.bytes_reserved();
  a.alloc(10); a.alloc(100, 128); a.alloc(5000);
  EXPECT(a.bytes_reserved() == reserved);  // one reset round later, the same work needs no new memory
}

TEST(thread_pool_runs_every_worker_and_propagates_errors) {
  ThreadPool pool(3);
  EXPECT(pool.size() == 3);
  std::vector<std::atomic<int>> hits(3);
  for (int r = 0; r < 1000; ++r) pool.run([&](int ith, int nth) { EXPECT(nth == 3); hits[size_t(ith)]++; });
  for (auto& h : hits) EXPECT(h.load() == 1000);
  bool caught = false;
  try {
    pool.run([](int ith, int) { if (ith == 2) throw Error(ErrorCode::Internal, "boom"); });
  } catch (const Error& e) {
    caught = std::string(e.what()) == "boom";
  }
  EXPECT(caught);
  // the pool still works after an error, and nested runs execute inline
  std::atomic<int> total{0};
  pool.run([&](int, int) { pool.run([&](int, int nth) { EXPECT(nth == 1); total++; }); });
  EXPECT(total.load() == 3);
}

// run(): an index whose worker has not picked the job up when the caller's own share ends is run
// by the caller (a worker kept off its core is not waited for), each index still exactly once:
// after a pause the workers sleep, and a trivial fn(0) returns long before a futex wake-up, so
// within 50 such runs the caller takes a worker's index at least once (order-free: which ones
// and how many vary). Then back-to-back runs whose worker indices take varying time (late
// workers meet jobs that are over or taken): every index once per run, the job's own nth.
TEST(thread_pool_run_caller_takes_unclaimed_indices) {
  ThreadPool pool(3);
  const std::thread::id caller = std::this_thread::get_id();
  int on_caller = 0;
  for (int r = 0; r < 50; ++r) {
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    std::vector<std::atomic<int>> hits(3);
    std::atomic<int> taken{0};
    pool.run([&](int ith, int nth) {
      EXPECT(nth == 3);
      hits[size_t(ith)]++;
      if (ith > 0 && std::this_thread::get_id() == caller) taken++;
    });
    for (auto& h : hits) EXPECT(h.load() == 1);
    on_caller += taken.load();
  }
  EXPECT(on_caller > 0);
  for (int r = 0; r < 3000; ++r) {
    std::vector<std::atomic<int>> hits(3);
    pool.run([&](int ith, int) {
      if (ith > 0 && (r + ith) % 7 == 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
      hits[size_t(ith)]++;
    });
    int bad = 0;
    for (auto& h : hits) bad += h.load() != 1;
    EXPECT(bad == 0);
    if (r % 5 == 0) {
      std::atomic<int> d{0};
      pool.run_dynamic([&] { d++; });
      EXPECT(d.load() >= 1);
    }
  }
}

// run_dynamic: whoever joins takes chunks from a counter; every chunk exactly once, interleaved
// with static run() jobs (a worker that arrives after a dynamic job closed must skip it and
// still take part in the next static job), errors from any participant propagate.
TEST(thread_pool_run_dynamic_mixed_with_run) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> hits(3);
  for (int r = 0; r < 2000; ++r) {
    const int64_t n = 1 + r % 97;
    std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
    std::atomic<int64_t> next{0};
    pool.run_dynamic([&] {
      for (int64_t i; (i = next.fetch_add(1)) < n;) seen[size_t(i)]++;
    });
    int bad = 0;
    for (auto& x : seen) bad += x.load() != 1;
    EXPECT(bad == 0);
    if (r % 3 == 0) pool.run([&](int ith, int) { hits[size_t(ith)]++; });
  }
  for (auto& h : hits) EXPECT(h.load() == 667);
  bool caught = false;
  try {
    pool.run_dynamic([] { throw Error(ErrorCode::Internal, "dyn boom"); });
  } catch (const Error& e) {
    caught = std::string(e.what()) == "dyn boom";
  }
  EXPECT(caught);
  std::atomic<int> total{0};
  pool.run_dynamic([&] { total++; pool.run_dynamic([&] { total += 10; }); });  // nested: inline
  EXPECT(total.load() >= 11 && total.load() % 11 == 0);
}

TEST(parallel_for_covers_range_exactly_once) {
  ThreadPool pool(2);
  for (int64_t n : {1, 2, 7, 64, 1001}) {
    std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
    pool.parallel_for(n, 8, [&](int64_t b, int64_t e) { for (int64_t i = b; i < e; ++i) seen[size_t(i)]++; });
    int bad = 0;
    for (auto& s : seen) bad += s.load() != 1;
    EXPECT(bad == 0);
  }
  int64_t b, e;
  split_range(100, 1, 3, 16, &b, &e);
  EXPECT(b % 16 == 0 && e > b && e <= 100);
}

// parallel_guided: every item exactly once; chunks start at multiples of step, are never longer
// than max_chunk (a multiple of step here) nor ceil(n / (4 * threads)) rounded up to step, and
// never shorter than step but at the end; no pool and one thread: one call over everything.
TEST(parallel_guided_covers_range_in_shrinking_chunks) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (int64_t n : {1, 3, 4, 5, 64, 1001})
      for (int64_t step : {1, 4})
        for (int64_t max_chunk : {step, 8 * step, int64_t(1) << 40}) {
          std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
          std::atomic<int> calls{0}, bad_chunk{0};
          const int64_t first_max =
              std::min(max_chunk, std::max<int64_t>(1, ((n + 4 * threads - 1) / (4 * threads) + step - 1) / step) * step);
          parallel_guided(&pool, n, step, max_chunk, [&](int64_t b, int64_t e) {
            calls++;
            const bool whole = threads == 1 || n <= step;  // one call over everything
            if (whole ? (b != 0 || e != n) : (b % step != 0 || e <= b || e - b > first_max || (e - b < step && e != n)))
              bad_chunk++;
            for (int64_t i = b; i < e; ++i) seen[size_t(i)]++;
          });
          int bad = 0;
          for (auto& s : seen) bad += s.load() != 1;
          EXPECT(bad == 0);
          EXPECT(bad_chunk.load() == 0);
          if (threads == 1 || n <= step) EXPECT(calls.load() == 1);
        }
  }
  int64_t got_b = -1, got_e = -1;
  parallel_guided(nullptr, 10, 4, 4, [&](int64_t b, int64_t e) { got_b = b, got_e = e; });
  EXPECT(got_b == 0 && got_e == 10);
}

// parallel_ranges: every item exactly once, whatever the threads and their arrival; chunks start
// at multiples of step, are never longer than max_chunk rounded down to step (at least step) and
// never shorter than step but at the end of [0, n); a thread's claims from the front of a range
// are consecutive (it walks its range in order). Odd n, fewer steps than threads (n = 1, 3, 5
// with step 4 on 3 and 5 threads), no pool and one thread: one call over everything.
TEST(parallel_ranges_covers_range_in_contiguous_runs) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    for (int64_t n : {1, 3, 4, 5, 9, 64, 1001})
      for (int64_t step : {1, 4})
        for (int64_t max_chunk : {step, 8 * step + 1, int64_t(1) << 40})
          for (int64_t keep : {int64_t(-1), int64_t(0), int64_t(1), int64_t(3)})
          for (int rep = 0; rep < 3; ++rep) {
            std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
            std::atomic<int> calls{0}, bad_chunk{0};
            // an owner's first claim (keep >= 0) may be longer: up to its whole range
            const int64_t longest = keep >= 0 ? n : std::max<int64_t>(1, max_chunk / step) * step;
            parallel_ranges(&pool, n, step, max_chunk, [&](int64_t b, int64_t e) {
              calls++;
              const bool whole = threads == 1 || n <= step;  // one call over everything
              if (whole ? (b != 0 || e != n) : (b % step != 0 || e <= b || e - b > longest || (e - b < step && e != n)))
                bad_chunk++;
              for (int64_t i = b; i < e; ++i) seen[size_t(i)]++;
            }, RangeOwner::Arrival, keep);
            int bad = 0;
            for (auto& s : seen) bad += s.load() != 1;
            EXPECT(bad == 0);
            EXPECT(bad_chunk.load() == 0);
            if (threads == 1 || n <= step) EXPECT(calls.load() == 1);
          }
  }
  int64_t got_b = -1, got_e = -1;
  parallel_ranges(nullptr, 10, 4, 4, [&](int64_t b, int64_t e) { got_b = b, got_e = e; });
  EXPECT(got_b == 0 && got_e == 10);
  parallel_ranges(nullptr, 0, 4, 4, [&](int64_t, int64_t) { got_b = -2; });
  EXPECT(got_b == 0);  // nothing to do: fn not called
  // One thread alone (a nested call runs inline on the calling thread, as when the worker never
  // arrives): its own range (25 steps of 4: the first 13) from the front in order, then the other
  // range from the back, chunk by chunk down to where the first ended; no chunk over 8.
  ThreadPool two(2);
  std::vector<std::pair<int64_t, int64_t>> chunks;
  two.run([&](int ith, int) {
    if (ith == 0) parallel_ranges(&two, 100, 4, 8, [&](int64_t b, int64_t e) { chunks.emplace_back(b, e); });
  });
  size_t k = 0;
  int64_t at = 0;
  for (; k < chunks.size() && chunks[k].first == at && at < 52; ++k) at = chunks[k].second;
  EXPECT(at == 52);
  at = 100;
  for (; k < chunks.size() && chunks[k].second == at; ++k) at = chunks[k].first;
  EXPECT(at == 52 && k == chunks.size());
  for (const auto& c : chunks) EXPECT(c.second - c.first <= 8 && c.second > c.first);
  // owner_keep 1 (gemv_owner_keep): the same thread alone claims its own range (13 steps) as all
  // but its last step at once (48 items, over max_chunk 8), then that step, then the other range
  // from the back as before; owner_keep 0 its whole range in one claim
  for (int64_t keep : {int64_t(1), int64_t(0)}) {
    std::vector<std::pair<int64_t, int64_t>> kc;
    two.run([&](int ith, int) {
      if (ith == 0)
        parallel_ranges(&two, 100, 4, 8, [&](int64_t b, int64_t e) { kc.emplace_back(b, e); }, RangeOwner::Arrival,
                        keep);
    });
    size_t j = 0;
    if (keep == 1) {
      EXPECT(kc.size() >= 2 && kc[0] == std::make_pair(int64_t(0), int64_t(48)));
      EXPECT(kc.size() >= 2 && kc[1] == std::make_pair(int64_t(48), int64_t(52)));
      j = 2;
    } else {
      EXPECT(!kc.empty() && kc[0] == std::make_pair(int64_t(0), int64_t(52)));
      j = 1;
    }
    int64_t back = 100;
    for (; j < kc.size() && kc[j].second == back; ++j) {
      EXPECT(kc[j].second - kc[j].first <= 8);
      back = kc[j].first;
    }
    EXPECT(back == 52 && j == kc.size());
  }
}


// RangeOwner::Thread: pool thread i walks range i (parallel_ranges_own) from its front, whoever
// arrives first; every item still exactly once with chunks as in the test above. The parts of
// parallel_ranges_own partition [0, n) in thread order. One thread alone (a nested call, inline
// on worker 1): it starts at the front of range 1, not range 0 as the first arrival would.
TEST(parallel_ranges_thread_owner_walks_own_range) {
  for (int nth : {1, 2, 3, 5})
    for (int64_t n : {1, 3, 4, 5, 9, 64, 1001})
      for (int64_t step : {1, 4}) {
        int64_t at = 0;
        for (int i = 0; i < nth; ++i) {
          int64_t b = -1, e = -1;
          parallel_ranges_own(n, step, nth, i, &b, &e);
          if (b == e) continue;  // owns none (fewer steps than threads)
          EXPECT(b == at && e > b && (b % step == 0));
          at = e;
        }
        EXPECT(at == n);
      }
  for (int threads : {2, 3, 5}) {
    ThreadPool pool(threads);
    for (int64_t n : {5, 64, 1001})
      for (int64_t max_chunk : {int64_t(4), int64_t(33), int64_t(1) << 40})
        for (int rep = 0; rep < 3; ++rep) {
          const int64_t step = 4;
          std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
          std::mutex mu;
          std::vector<std::vector<std::pair<int64_t, int64_t>>> by_thread(static_cast<size_t>(threads));
          parallel_ranges(
              &pool, n, step, max_chunk,
              [&](int64_t b, int64_t e) {
                for (int64_t i = b; i < e; ++i) seen[size_t(i)]++;
                std::lock_guard<std::mutex> lk(mu);
                by_thread[size_t(pool_thread_index())].emplace_back(b, e);
              },
              RangeOwner::Thread);
          int bad = 0;
          for (auto& s : seen) bad += s.load() != 1;
          EXPECT(bad == 0);
          // each thread's chunks inside its own range: consecutive from the range's front
          for (int t = 0; t < threads; ++t) {
            int64_t ob, oe;
            parallel_ranges_own(n, step, threads, t, &ob, &oe);
            int64_t next = ob;
            for (const auto& c : by_thread[size_t(t)])
              if (c.first >= ob && c.second <= oe) {  // only the owner claims a range from its front
                EXPECT(c.first == next);
                next = c.second;
              }
          }
        }
  }
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    std::atomic<bool> nested_done{false};
    std::vector<std::pair<int64_t, int64_t>> arrival, owned;
    int idx = -1;
    pool.run([&](int ith, int) {
      if (ith == 0) {  // index 1 must run on worker 1 (the caller claims it only after this returns)
        while (!nested_done.load()) std::this_thread::yield();
        return;
      }
      if (ith != 1) return;
      idx = pool_thread_index();
      parallel_ranges(&pool, 100, 4, 8, [&](int64_t b, int64_t e) { owned.emplace_back(b, e); }, RangeOwner::Thread);
      parallel_ranges(&pool, 100, 4, 8, [&](int64_t b, int64_t e) { arrival.emplace_back(b, e); });
      nested_done.store(true);
    });
    EXPECT(idx == 1);
    int64_t ob, oe;
    parallel_ranges_own(100, 4, threads, 1, &ob, &oe);
    EXPECT(ob > 0 && !owned.empty() && owned.front().first == ob);
    EXPECT(!arrival.empty() && arrival.front().first == 0);  // the first arrival walks range 0
    int64_t sum = 0;
    for (const auto& c : owned) sum += c.second - c.first;
    EXPECT(sum == 100);
  }
}
TEST(isa_cap_limits_active_level) {
  const Isa detected = isa_detected();
  {
    IsaCapScope scalar(Isa::Scalar);
    EXPECT(isa_active() == Isa::Scalar);
  }
  EXPECT(isa_active() == detected || int(isa_cap()) < int(detected));
  Isa parsed;
  EXPECT(isa_from_name("avx512", &parsed) && parsed == Isa::Avx512);
  EXPECT(!isa_from_name("sse9", &parsed));
  const CpuFeatures& f = cpu_features();
  EXPECT(f.physical_cores >= 1 && f.logical_cpus >= f.physical_cores);
  if (detected >= Isa::Avx512) EXPECT(f.avx512f && f.avx2);
  std::printf("    cpu: %s, %d physical cores, isa %s, avx512bf16 %d, amx %d\n", f.brand.c_str(), f.physical_cores,
              isa_name(detected), int(f.avx512bf16), int(f.amx_usable));
}

TEST(tensor_view_shapes) {
  float buf[24];
  auto t = TensorView::contiguous(buf, DType::F32, {2, 3, 4});
  EXPECT(t.numel() == 24 && t.rows() == 6 && t.cols() == 4 && t.is_contiguous());
  EXPECT(t.stride[0] == 12 && t.stride[1] == 4 && t.stride[2] == 1);
  t.stride[0] = 20;
  EXPECT(!t.is_contiguous());
  EXPECT(t.shape_string() == "[2, 3, 4] f32");
}

TEST(backend_cpu_and_missing_cuda) {
  auto be = make_backend({DeviceKind::Cpu, 2});
  EXPECT(be->device() == DeviceKind::Cpu && be->uses_host_memory());
  EXPECT(be->describe().find("2 threads") != std::string::npos);
#if !defined(EMOLLM_WITH_CUDA)
  EXPECT_THROWS(make_backend({DeviceKind::Cuda, 0}), ErrorCode::Unsupported);
#endif
}

// EnvSwitch: a default-on switch is off only for "0" / "off", an opt-in one on only for "1" / "on";
// anything else (unset, empty, "yes", "2") leaves each at its default.
TEST(env_switch_defaults_on_and_opt_in) {
  const char* name = "EMOLLM_TEST_ENV_SWITCH_DEFAULTS";
  struct Case { const char* value; bool on_default; bool opt_in; };
  const Case cases[] = {{nullptr, true, false}, {"", true, false}, {"0", false, false}, {"off", false, false},
                        {"1", true, true},      {"on", true, true}, {"yes", true, false}, {"2", true, false}};
  for (const Case& c : cases) {
    if (c.value) ::setenv(name, c.value, 1); else ::unsetenv(name);
    EXPECT(EnvSwitch(name).on() == c.on_default);
    EXPECT(EnvSwitch(name, EnvDefault::Off).on() == c.opt_in);
    EXPECT(env_opted_in(name) == c.opt_in);
  }
  ::unsetenv(name);
  EnvSwitch s(name, EnvDefault::Off);
  s.set(true);
  EXPECT(s.on());  // the setter overrides the environment
}
