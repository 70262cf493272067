// One block of host memory a model keeps between calls for its per-call scratch (the CLIP tower's
// activations, LLaVA's projector rows): a fresh allocation per call is faulted in again on every
// call, thousands of first-touch faults a vision pass. One call at a time uses the block; a
// concurrent call, a request above the cap, or a backend whose memory is not the host's gets null
// and allocates its own.
#pragma once

#include <atomic>
#include <cstddef>

#include "base/arena.h"
#include "core/backend.h"

namespace emollm {

class KeptBlock {
 public:
  // The block grows in 2 MiB steps, aligned to them, so transparent huge pages can back it.
  static constexpr size_t kHugePage = kHugePage2M;

  // A call's hold on the block; destroying it (however the call ends) frees the block for the next.
  class Claim {
   public:
    Claim() = default;
    Claim(const Claim&) = delete;
    Claim& operator=(const Claim&) = delete;
    ~Claim() { release(); }
    void release() {
      if (busy_) busy_->store(false, std::memory_order_release);
      busy_ = nullptr;
    }

   private:
    friend class KeptBlock;
    std::atomic<bool>* busy_ = nullptr;
  };

  // Requests above `max_bytes` are not kept (the memory would stay resident between calls).
  explicit KeptBlock(size_t max_bytes) : max_bytes_(max_bytes) {}
  KeptBlock(const KeptBlock&) = delete;
  KeptBlock& operator=(const KeptBlock&) = delete;
  ~KeptBlock() { aligned_free(data_); }

  // The block, at least `bytes` long, held by `*claim` until it is destroyed; or null when `be`
  // does not compute on host memory, `bytes` is above the cap, or another call holds the block.
  // Growing replaces the block (its old contents are gone) and prefaults the new one on `be`.
  // A hold `*claim` had already ends first (a Claim holds one block at a time).
  void* claim(Backend& be, size_t bytes, Claim* claim) {
    claim->release();
    if (!be.uses_host_memory() || bytes > max_bytes_) return nullptr;
    // An atomic flag, not std::mutex::try_lock: that needs pthread_mutex_trylock@GLIBC_2.34,
    // above the prebuilt binary's glibc 2.33 floor.
    bool idle = false;
    if (!busy_.compare_exchange_strong(idle, true, std::memory_order_acquire)) return nullptr;
    claim->busy_ = &busy_;
    if (bytes_ < bytes) {
      aligned_free(data_);
      data_ = nullptr;
      bytes_ = 0;
      const size_t n = (bytes + kHugePage - 1) / kHugePage * kHugePage;
      data_ = aligned_alloc_huge(n);
      bytes_ = n;
      be.prefault(data_, n);
    }
    return data_;
  }

  // Bytes of the block (0: none yet), for tests.
  size_t bytes() const { return bytes_; }
  size_t max_bytes() const { return max_bytes_; }

 private:
  std::atomic<bool> busy_{false};
  void* data_ = nullptr;
  size_t bytes_ = 0;
  const size_t max_bytes_;
};

}  // namespace emollm
