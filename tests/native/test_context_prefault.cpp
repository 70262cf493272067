// Pre-faulting a context at creation (Backend::prefault, LlamaContextOptions::prefault):
//   - the CPU backend's prefault leaves a buffer's contents as they were and makes every page of
//     a fresh allocation resident (mincore), on 1 thread and on several, 4 KiB and 2 MiB pages;
//   - a context created with prefault is resident at creation (every page of its buffer, mincore;
//     without prefault the process's RSS does not grow by it) and computes the same logits, bit for bit,
//     as one created without it (the memory's state is the only difference);
//   - creating a context whose memory cannot be had is Error(OutOfMemory), not a crash.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>
#endif

#include "base/error.h"
#include "base/thread_pool.h"
#include "core/backend.h"
#include "model/llama.h"
#include "stories_helpers.h"
#include "testing.h"

using namespace emollm;

namespace {

using emollm_test::stories_gguf;
using emollm_test::stories_model;

#if defined(__linux__)
// Pages of [p, p + bytes) resident now (mincore over whole pages inside the range).
size_t resident_pages(const void* p, size_t bytes, size_t* total) {
  const size_t ps = size_t(sysconf(_SC_PAGESIZE));
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + ps - 1) / ps * ps;
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + bytes) / ps * ps;
  *total = hi > lo ? (hi - lo) / ps : 0;
  std::vector<unsigned char> v(*total);
  if (*total == 0 || mincore(reinterpret_cast<void*>(lo), hi - lo, v.data()) != 0) return 0;
  size_t n = 0;
  for (unsigned char c : v) n += c & 1;
  return n;
}

// The process's resident set in bytes (/proc/self/statm).
size_t rss_bytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long size = 0, res = 0;
  const int got = std::fscanf(f, "%lu %lu", &size, &res);
  std::fclose(f);
  return got == 2 ? size_t(res) * size_t(sysconf(_SC_PAGESIZE)) : 0;
}
#endif

std::vector<int32_t> prompt_ids(size_t n) {
  std::vector<int32_t> t{1};
  for (size_t i = 1; i < n; ++i) t.push_back(int32_t(3 + (i * 37) % 500));
  return t;
}

}  // namespace

TEST(prefault_cpu_backend_keeps_contents_and_makes_pages_resident) {
#if defined(__linux__)
  for (int threads : {1, 2, 3}) {
    auto be = make_cpu_backend(std::make_shared<ThreadPool>(threads));
    // 2 MiB-page buffers (>= 2 MiB: huge-page advice) and a small one, odd sizes
    for (size_t bytes : {size_t(9) << 20 | 12345, size_t(300000)}) {
      uint8_t* p = static_cast<uint8_t*>(be->alloc(bytes));
      // glibc may hand back heap memory that an earlier test made resident (its mmap threshold
      // grows after large frees): drop the buffer's whole pages first, so it starts non-resident
      // whatever the allocator reused, and the check below can fail if prefault does nothing
      const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
      const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
      const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + bytes) / page * page;
      if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
      size_t total = 0;
      const size_t before = resident_pages(p, bytes, &total);
      be->prefault(p, bytes);
      const size_t after = resident_pages(p, bytes, &total);
      EXPECT(total > 0 && after == total);
      if (bytes > (size_t(4) << 20)) EXPECT(before < total);  // the dropped pages were not resident before
      // contents survive a second prefault
      for (size_t i = 0; i < bytes; i += 4093) p[i] = uint8_t(i * 7 + 1);
      p[bytes - 1] = 0xA5;
      be->prefault(p, bytes);
      bool same = p[bytes - 1] == 0xA5;
      for (size_t i = 0; i < bytes; i += 4093) same = same && p[i] == uint8_t(i * 7 + 1);
      EXPECT(same);
      be->free(p);
    }
  }
#endif
}

TEST(prefault_context_is_resident_at_creation_and_computes_the_same_bits) {
  if (stories_gguf().empty()) return;
  auto model = stories_model();
  const std::vector<int32_t> t = prompt_ids(150);
  LlamaContextOptions on;
  on.n_ctx = 256;
  on.n_seq = 48;  // ~16 MiB of KV cache: a resident-set change well above the noise
  on.n_batch = 64;  // the prompt in 3 chunks
  LlamaContextOptions off = on;
  off.prefault = false;
#if defined(__linux__)
  const size_t r0 = rss_bytes();
  auto a = std::make_unique<LlamaContext>(model, on);
  const size_t r1 = rss_bytes();
  auto b = std::make_unique<LlamaContext>(model, off);
  const size_t r2 = rss_bytes();
  const double bytes = double(a->memory_bytes());
  std::printf("  context %.1f MiB: RSS +%.1f MiB with prefault, +%.1f MiB without\n", bytes / 1048576.0,
              double(r1 - r0) / 1048576.0, double(r2 - r1) / 1048576.0);
  // Resident at creation: the buffer's own pages (mincore), not the process's RSS growth, which
  // stays flat when the allocator hands the context memory an earlier test already touched (one
  // CI run: RSS +1.0 MiB for a prefaulted 15.3 MiB context, its pages resident all the same).
  size_t total = 0;
  const size_t resident = resident_pages(a->memory_buffer().data(), a->memory_buffer().bytes(), &total);
  std::printf("  prefaulted context buffer: %zu of %zu pages resident\n", resident, total);
  EXPECT(total > 0 && double(resident) >= 0.99 * double(total));
  EXPECT(double(r2 - r1) <= 0.25 * bytes);
#else
  auto a = std::make_unique<LlamaContext>(model, on);
  auto b = std::make_unique<LlamaContext>(model, off);
#endif
  const int64_t V = a->n_vocab();
  std::vector<float> la(size_t(t.size() * V)), lb(size_t(t.size() * V));
  a->seq_eval(5, t.data(), int64_t(t.size()), la.data());
  b->seq_eval(5, t.data(), int64_t(t.size()), lb.data());
  EXPECT(std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)) == 0);
  // a decode step after it too
  const int32_t next = 42;
  const float* da = a->seq_eval(5, &next, 1);
  const float* db = b->seq_eval(5, &next, 1);
  EXPECT(std::memcmp(da, db, size_t(V) * sizeof(float)) == 0);
}

TEST(prefault_context_without_memory_is_out_of_memory) {
#if defined(__linux__) && !defined(__SANITIZE_ADDRESS__)
  if (stories_gguf().empty()) return;
  auto model = stories_model();
  // an address-space limit 256 MiB above what the process maps now, and a context of ~2 GiB
  FILE* f = std::fopen("/proc/self/statm", "r");
  unsigned long pages = 0;
  if (!f) return;
  const int got = std::fscanf(f, "%lu", &pages);
  std::fclose(f);
  if (got != 1) return;
  rlimit old{};
  if (getrlimit(RLIMIT_AS, &old) != 0) return;
  rlimit lim = old;
  lim.rlim_cur = rlim_t(pages) * rlim_t(sysconf(_SC_PAGESIZE)) + (rlim_t(256) << 20);
  if (old.rlim_cur != RLIM_INFINITY && old.rlim_cur < lim.rlim_cur) return;
  LlamaContextOptions o;
  o.n_ctx = 256;
  o.n_seq = 1024;
  o.kv_positions = 256 * 1024 * 8;  // ~2.5 GiB of f32 K and V (stories260K: 5 layers, 32 K/V values a position)
  bool typed = false;
  if (setrlimit(RLIMIT_AS, &lim) != 0) return;
  try {
    LlamaContext ctx(model, o);
  } catch (const Error& e) {
    typed = e.code() == ErrorCode::OutOfMemory;
  } catch (...) {
  }
  setrlimit(RLIMIT_AS, &old);
  EXPECT(typed);
  // and the model still makes contexts afterwards
  LlamaContext ok(model, LlamaContextOptions{64, 0, 1});
  const int32_t bos = 1;
  EXPECT(ok.eval(&bos, 1) != nullptr);
#endif
}
