// KeptBlock (native/model/kept_block.h), the block the CLIP tower and the LLaVA projector keep
// between calls: one claim at a time, the same block again after a release, growth in 2 MiB
// pages, null above the cap or on a backend that does not compute on host memory.
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "base/thread_pool.h"
#include "core/backend.h"
#include "core/emulated_device_backend.h"
#include "model/kept_block.h"
#include "testing.h"

using namespace emollm;

TEST(kept_block_one_claim_at_a_time_and_reused) {
  auto pool = std::make_shared<ThreadPool>(1);
  std::unique_ptr<Backend> cpu = make_cpu_backend(pool);
  constexpr size_t kPage = KeptBlock::kHugePage;
  KeptBlock kb(3 * kPage);
  EXPECT(kb.bytes() == 0);
  void* first = nullptr;
  {
    KeptBlock::Claim c;
    first = kb.claim(*cpu, 1000, &c);
    EXPECT(first != nullptr);
    EXPECT(reinterpret_cast<uintptr_t>(first) % kPage == 0);  // huge-page aligned
    EXPECT(kb.bytes() == kPage);                               // rounded up to a whole 2 MiB page
    std::memset(first, 0x5a, 1000);
    // a second claim while the first holds the block: null, from this thread or another
    KeptBlock::Claim c2;
    EXPECT(kb.claim(*cpu, 1000, &c2) == nullptr);
    void* other = first;
    std::thread th([&] {
      KeptBlock::Claim c3;
      other = kb.claim(*cpu, 10, &c3);
    });
    th.join();
    EXPECT(other == nullptr);
    // a refused claim holds nothing: destroying c2 must not free the block for others
    c2.release();
    KeptBlock::Claim c4;
    EXPECT(kb.claim(*cpu, 1000, &c4) == nullptr);
  }
  {  // released: the next claim (no larger) gets the same block, contents as the last user left them
    KeptBlock::Claim c;
    void* again = kb.claim(*cpu, kPage, &c);
    EXPECT(again == first);
    EXPECT(kb.bytes() == kPage);
    EXPECT(static_cast<unsigned char*>(again)[999] == 0x5a);
    c.release();  // an explicit release frees it as well
    KeptBlock::Claim c2;
    EXPECT(kb.claim(*cpu, 16, &c2) == first);
  }
  {  // a larger claim grows the block to whole pages (its contents are not kept: callers rewrite)
    KeptBlock::Claim c;
    unsigned char* grown = static_cast<unsigned char*>(kb.claim(*cpu, kPage + 1, &c));
    EXPECT(grown != nullptr);
    EXPECT(kb.bytes() == 2 * kPage);
    EXPECT(reinterpret_cast<uintptr_t>(grown) % kPage == 0);
    std::memset(grown, 1, kb.bytes());  // all of it is usable
    EXPECT(grown[2 * kPage - 1] == 1);
  }
  {  // at the cap: kept; above it: null, the block unchanged and free for the next call
    KeptBlock::Claim c;
    EXPECT(kb.claim(*cpu, 3 * kPage + 1, &c) == nullptr);
    EXPECT(kb.bytes() == 2 * kPage);
    KeptBlock::Claim c2;
    EXPECT(kb.claim(*cpu, 3 * kPage, &c2) != nullptr);
    EXPECT(kb.bytes() == 3 * kPage);
  }
  {  // a Claim used again ends its earlier hold first: the block is not left busy
    KeptBlock::Claim c;
    EXPECT(kb.claim(*cpu, 16, &c) != nullptr);
    EXPECT(kb.claim(*cpu, 16, &c) != nullptr);
    c.release();
    KeptBlock::Claim c2;
    EXPECT(kb.claim(*cpu, 16, &c2) != nullptr);
  }
}

TEST(kept_block_null_off_host_memory) {
  auto pool = std::make_shared<ThreadPool>(1);
  std::unique_ptr<Backend> dev = make_emulated_device_backend(pool);
  EXPECT(!dev->uses_host_memory());
  KeptBlock kb(size_t(64) << 20);
  KeptBlock::Claim c;
  EXPECT(kb.claim(*dev, 1000, &c) == nullptr);
  EXPECT(kb.bytes() == 0);
  // the refused claim left the block free: a host backend gets it
  std::unique_ptr<Backend> cpu = make_cpu_backend(pool);
  KeptBlock::Claim c2;
  EXPECT(kb.claim(*cpu, 1000, &c2) != nullptr);
}
