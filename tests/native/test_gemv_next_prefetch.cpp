// The next-matrix prefetch at the end of a decode GEMV (backend.h set_gemv_next_prefetch,
// ThreadPool::set_next_prefetch, parallel_ranges' tail walk): prefetches only, so
//  - parallel_ranges still runs every item exactly once, the prefetched memory (a canary) is left
//    as it was, and the spans are really issued (the process-wide issued-bytes counter moves);
//  - a random-weight q4_0 / q8_0 LLaMA decodes with the same bits (every logit of the prompt and
//    of each greedy step) with the switch on and off, and as a reference run with it off before
//    any prefetch ran (a write through a span would change the shared weights), at 1, 2 and 3
//    threads, while the hint really reaches the GEMVs (the counter moves with it on only).
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <unistd.h>

#include "base/cpu_features.h"
#include "base/dtype.h"
#include "base/thread_pool.h"
#include "core/backend.h"
#include "greedy_decode.h"
#include "model/llama.h"
#include "random_llama.h"
#include "testing.h"

using namespace emollm;

namespace {
bool same_bits(const float* a, const float* b, size_t n, const std::string& what) {
  for (size_t i = 0; i < n; ++i)
    if (std::memcmp(a + i, b + i, sizeof(float)) != 0) {
      emollm_test::report_failure(__FILE__, __LINE__,
                                  what + ": [" + std::to_string(i) + "] on " + std::to_string(a[i]) + ", off " +
                                      std::to_string(b[i]));
      return false;
    }
  return true;
}
}  // namespace

TEST(parallel_ranges_next_prefetch_covers_once_and_writes_nothing) {
  // the canary: the bytes the spans point at; a write through a span would change them
  std::vector<uint8_t> canary(size_t(3) << 16);
  for (size_t i = 0; i < canary.size(); ++i) canary[i] = uint8_t(i * 131 + 7);
  const std::vector<uint8_t> before = canary;
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (int64_t n : {3, 64, 1001})
      for (int units : {1, 2, 4}) {
        const int64_t step = 4;
        size_t set = 0;
        for (int i = 0; i < threads; ++i) {
          const size_t bytes = size_t(16384 - 64 * i);
          pool.set_next_prefetch(i, canary.data() + size_t(i) * 65536, bytes, units);
          set += bytes;
        }
        EXPECT(pool.next_prefetch_pending());
        const uint64_t issued0 = next_prefetch_bytes_issued();
        std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
        std::mutex mu;
        std::vector<std::pair<int64_t, int64_t>> caller_chunks;
        parallel_ranges(
            &pool, n, step, int64_t(1) << 40,
            [&](int64_t b, int64_t e) {
              for (int64_t i = b; i < e; ++i) seen[size_t(i)]++;
              if (pool_thread_index() == 0) {
                std::lock_guard<std::mutex> lk(mu);
                caller_chunks.emplace_back(b, e);
              }
            },
            RangeOwner::Thread);
        int bad = 0;
        for (auto& s : seen) bad += s.load() != 1;
        EXPECT(bad == 0);
        const uint64_t issued = next_prefetch_bytes_issued() - issued0;
        // the caller (thread 0) always runs and issues its whole span (ranged or not); a worker
        // kept off its core issues nothing: at most every span, at least thread 0's
        EXPECT(issued >= 16384 && issued <= set);
        if (threads == 1) {
          EXPECT(issued == 16384);
          // one thread: the part before the tail at once, then the tail one step at a time
          const int64_t steps = (n + step - 1) / step;
          if (steps > 1) {
            const int64_t tail = std::min<int64_t>(units, steps);
            EXPECT(int64_t(caller_chunks.size()) == tail + (steps > tail ? 1 : 0));
            EXPECT(caller_chunks.back().second == n && caller_chunks.back().first == (steps - 1) * step);
          }
        }
        EXPECT(std::memcmp(canary.data(), before.data(), canary.size()) == 0);
        pool.clear_next_prefetch();
        EXPECT(!pool.next_prefetch_pending());
        // cleared: nothing issued, and RangeOwner::Arrival never issues
        const uint64_t issued1 = next_prefetch_bytes_issued();
        parallel_ranges(&pool, n, step, 8, [&](int64_t, int64_t) {}, RangeOwner::Thread);
        pool.set_next_prefetch(0, canary.data(), 4096, units);
        parallel_ranges(&pool, n, step, 8, [&](int64_t, int64_t) {}, RangeOwner::Arrival);
        pool.clear_next_prefetch();
        EXPECT(next_prefetch_bytes_issued() == issued1);
      }
  }
}

namespace {
struct NextPrefetchSwitch {
  explicit NextPrefetchSwitch(bool on) : prev(gemv_next_prefetch()) { set_gemv_next_prefetch(on); }
  ~NextPrefetchSwitch() { set_gemv_next_prefetch(prev); }
  bool prev;
};
}  // namespace

TEST(decode_next_prefetch_bit_equal_on_and_off) {
  char tmpl[] = "/tmp/emollm_nextpf_XXXXXX";
  const char* dir = mkdtemp(tmpl);
  EXPECT(dir != nullptr);
  if (!dir) return;
  // the repacked layout (and so the hint) needs the VNNI kernel; elsewhere only the bits are compared
  const bool repacked = cpu_features().avx512vnni && isa_active() >= Isa::Avx512;
  for (DType t : {DType::Q4_0, DType::Q8_0}) {
    const std::string path = std::string(dir) + "/random-" + dtype_name(t) + ".gguf";
    emollm_test::RandomLlamaShape shape;
    // large enough that every decode GEMV is parallel (N K >= 2^16) with several 64-row steps a thread
    shape.n_embd = 512;
    shape.n_head = 8;
    shape.n_head_kv = 4;
    shape.head_dim = 64;
    shape.n_ff = 1024;
    shape.n_layer = 3;
    shape.weights = t;
    emollm_test::write_random_llama(path, shape);
    for (int threads : {1, 2, 3}) {
      LlamaLoadOptions lo;
      lo.threads = threads;
      auto m = LlamaModel::load(path, lo);
      EXPECT(m->layers[0].wo.dtype == t);
      LlamaContextOptions o;
      o.n_ctx = 64;
      const std::vector<int32_t> prompt = {1, 17, 40, 3, 99, 12, 5};
      const std::string label = std::string(dtype_name(t)) + " " + std::to_string(threads) + " threads";
      // the reference: the whole script with the switch off before any prefetch ran (the contexts
      // share the weights, so a write through a span would reach both contexts below alike)
      std::vector<std::vector<float>> ref;
      {
        NextPrefetchSwitch s(false);
        LlamaContext r(m, o);
        const int64_t V = r.n_vocab();
        const float* l = r.eval(prompt.data(), int64_t(prompt.size()));
        ref.emplace_back(l, l + V);
        for (int step = 0; step < 10; ++step) {
          const int32_t tok = emollm_test::argmax(ref.back().data(), V);
          l = r.eval(&tok, 1);
          ref.emplace_back(l, l + V);
        }
      }
      LlamaContext on(m, o), off(m, o);
      const int64_t V = on.n_vocab();
      std::vector<float> la(static_cast<size_t>(V)), lb(la.size());
      {
        NextPrefetchSwitch s(true);
        std::memcpy(la.data(), on.eval(prompt.data(), int64_t(prompt.size())), size_t(V) * sizeof(float));
      }
      {
        NextPrefetchSwitch s(false);
        std::memcpy(lb.data(), off.eval(prompt.data(), int64_t(prompt.size())), size_t(V) * sizeof(float));
      }
      EXPECT(same_bits(la.data(), lb.data(), la.size(), label + " prompt"));
      EXPECT(same_bits(la.data(), ref[0].data(), la.size(), label + " prompt vs reference"));
      uint64_t issued_on = 0, issued_off = 0;
      int32_t tok = emollm_test::argmax(la.data(), V);
      for (int step = 0; step < 10; ++step) {
        uint64_t c0 = next_prefetch_bytes_issued();
        {
          NextPrefetchSwitch s(true);
          std::memcpy(la.data(), on.eval(&tok, 1), size_t(V) * sizeof(float));
        }
        issued_on += next_prefetch_bytes_issued() - c0;
        c0 = next_prefetch_bytes_issued();
        {
          NextPrefetchSwitch s(false);
          std::memcpy(lb.data(), off.eval(&tok, 1), size_t(V) * sizeof(float));
        }
        issued_off += next_prefetch_bytes_issued() - c0;
        EXPECT(same_bits(la.data(), lb.data(), la.size(), label + " decode step " + std::to_string(step)));
        EXPECT(same_bits(la.data(), ref[size_t(step) + 1].data(), la.size(), label + " vs reference step " + std::to_string(step)));
        EXPECT(emollm_test::argmax(la.data(), V) == emollm_test::argmax(lb.data(), V));
        tok = emollm_test::argmax(la.data(), V);
      }
      EXPECT(issued_off == 0);
      // o, gate / up and down (but the last layer's) each carry a hint: 8 a step at 3 layers
      if (repacked) {
        if (issued_on < 10 * 8 * 64) std::fprintf(stderr, "  %s: issued %llu bytes\n", label.c_str(), (unsigned long long)issued_on);
        EXPECT(issued_on >= 10 * 8 * 64);
      }
    }
    std::remove(path.c_str());
  }
  ::rmdir(dir);
}
