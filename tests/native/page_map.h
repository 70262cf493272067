// Which pages of a range are mapped into this process's page tables now, from /proc/self/pagemap's
// present bit (bit 63, readable without privileges): the mapping, not the page cache, which
// mincore would report. For the tests of what a load faults in or leaves out (test_kquant_pack_rss,
// test_decode_overheads).
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace emollm_test {

// The pages [p, p + bytes) touches.
inline size_t pages_spanned(const void* p, size_t bytes) {
  const size_t ps = size_t(sysconf(_SC_PAGESIZE));
  return (reinterpret_cast<uintptr_t>(p) + bytes + ps - 1) / ps - reinterpret_cast<uintptr_t>(p) / ps;
}

// Of those pages, the ones present; size_t(-1) where pagemap cannot be read.
inline size_t mapped_pages(const void* p, size_t bytes) {
  const size_t ps = size_t(sysconf(_SC_PAGESIZE));
  const uintptr_t lo = reinterpret_cast<uintptr_t>(p) / ps;
  const int fd = open("/proc/self/pagemap", O_RDONLY);
  if (fd < 0) return size_t(-1);
  std::vector<uint64_t> e(pages_spanned(p, bytes));
  const ssize_t got = pread(fd, e.data(), e.size() * 8, off_t(lo * 8));
  close(fd);
  if (got != ssize_t(e.size() * 8)) return size_t(-1);
  size_t n = 0;
  for (uint64_t v : e) n += (v >> 63) & 1;
  return n;
}

}  // namespace emollm_test
