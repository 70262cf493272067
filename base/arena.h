// Aligned memory: a bump arena for per-call scratch (activations, packed tiles) and an
// owning aligned buffer. The arena never frees individual allocations; reset() reuses it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace emollm {

constexpr size_t kAlign = 64;  // cache line and AVX-512 vector

void* aligned_alloc_bytes(size_t bytes, size_t align = kAlign);  // throws Error(OutOfMemory)
void aligned_free(void* p);

constexpr size_t kHugePage2M = size_t(2) << 20;
// Asks for transparent huge pages (MADV_HUGEPAGE, Linux) on the whole 2 MiB pages inside
// [p, p + bytes): a paging hint for memory nothing has touched yet, one first-touch fault per
// 2 MiB instead of per 4 KiB. Elsewhere, or where the kernel refuses, nothing happens.
void advise_huge_pages(void* p, size_t bytes);
// aligned_alloc_bytes(bytes, 2 MiB) with its whole 2 MiB pages advised as huge pages (free with
// aligned_free). Callers that want no 4 KiB tail round `bytes` up to a multiple of kHugePage2M.
void* aligned_alloc_huge(size_t bytes);

struct AlignedDeleter {
  void operator()(void* p) const { aligned_free(p); }
};
template <typename T>
using AlignedPtr = std::unique_ptr<T[], AlignedDeleter>;

template <typename T>
AlignedPtr<T> make_aligned(size_t count) {
  return AlignedPtr<T>(static_cast<T*>(aligned_alloc_bytes(count * sizeof(T) + (count == 0))));
}

class Arena {
 public:
  explicit Arena(size_t block_bytes = size_t(1) << 20) : block_bytes_(block_bytes) {}
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  void* alloc(size_t bytes, size_t align = kAlign);
  template <typename T>
  T* alloc_array(size_t count) { return static_cast<T*>(alloc(count * sizeof(T), alignof(T) > kAlign ? alignof(T) : kAlign)); }
  // Frees nothing; makes all memory reusable. Keeps the largest block to avoid re-allocating.
  void reset();
  size_t bytes_reserved() const { return reserved_; }
  size_t bytes_used() const { return used_; }

 private:
  struct Block { uint8_t* data; size_t size; size_t offset; };
  std::vector<Block> blocks_;
  size_t block_bytes_;
  size_t reserved_ = 0;
  size_t used_ = 0;
};

}  // namespace emollm
