#include "arena.h"

#include <cstdint>
#include <cstdlib>
#include <string>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "error.h"

namespace emollm {

void* aligned_alloc_bytes(size_t bytes, size_t align) {
  if (bytes == 0) bytes = 1;
  void* p = nullptr;
  if (posix_memalign(&p, align < sizeof(void*) ? sizeof(void*) : align, bytes) != 0 || !p)
    throw Error(ErrorCode::OutOfMemory, "could not allocate " + std::to_string(bytes) + " bytes");
  return p;
}

void aligned_free(void* p) { std::free(p); }

void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + kHugePage2M - 1) & ~(kHugePage2M - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHugePage2M - 1);
  if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

void* aligned_alloc_huge(size_t bytes) {
  void* p = aligned_alloc_bytes(bytes, kHugePage2M);
  advise_huge_pages(p, bytes);
  return p;
}

Arena::~Arena() {
  for (auto& b : blocks_) aligned_free(b.data);
}

// Aligns the address, not the offset: blocks are only kAlign-aligned, and callers may ask for more.
static size_t aligned_offset(const uint8_t* base, size_t offset, size_t align) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(base) + offset;
  return offset + ((align - addr % align) % align);
}

void* Arena::alloc(size_t bytes, size_t align) {
  if (bytes == 0) bytes = 1;
  if (align == 0 || (align & (align - 1)) != 0)
    throw Error(ErrorCode::InvalidArgument, "arena alignment must be a power of two");
  for (auto& b : blocks_) {
    const size_t off = aligned_offset(b.data, b.offset, align);
    if (off + bytes <= b.size) {
      used_ += off + bytes - b.offset;
      b.offset = off + bytes;
      return b.data + off;
    }
  }
  const size_t size = bytes + align > block_bytes_ ? bytes + align : block_bytes_;
  blocks_.push_back(Block{static_cast<uint8_t*>(aligned_alloc_bytes(size, kAlign)), size, 0});
  reserved_ += size;
  Block& b = blocks_.back();
  const size_t off = aligned_offset(b.data, 0, align);
  b.offset = off + bytes;
  used_ += b.offset;
  return b.data + off;
}

void Arena::reset() {
  if (blocks_.size() > 1) {
    // Keep one block as large as everything used, so the next round fits without growing.
    size_t total = 0;
    for (auto& b : blocks_) { total += b.size; aligned_free(b.data); }
    blocks_.clear();
    blocks_.push_back(Block{static_cast<uint8_t*>(aligned_alloc_bytes(total, kAlign)), total, 0});
    reserved_ = total;
  } else if (!blocks_.empty()) {
    blocks_[0].offset = 0;
  }
  used_ = 0;
}

}  // namespace emollm
