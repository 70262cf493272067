#include "arena.h"

#include <cstdlib>
#include <string>

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

Arena::~Arena() {
  for (auto& b : blocks_) aligned_free(b.data);
}

void* Arena::alloc(size_t bytes, size_t align) {
  if (bytes == 0) bytes = 1;
  for (auto& b : blocks_) {
    size_t off = (b.offset + align - 1) & ~(align - 1);
    if (off + bytes <= b.size) {
      used_ += off + bytes - b.offset;
      b.offset = off + bytes;
      return b.data + off;
    }
  }
  const size_t size = bytes + align > block_bytes_ ? bytes + align : block_bytes_;
  Block nb{static_cast<uint8_t*>(aligned_alloc_bytes(size, kAlign)), size, 0};
  blocks_.push_back(nb);
  reserved_ += size;
  Block& b = blocks_.back();
  size_t off = (reinterpret_cast<uintptr_t>(b.data) % align) ? align - reinterpret_cast<uintptr_t>(b.data) % align : 0;
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
