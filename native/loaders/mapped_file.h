// A read-only view of a whole file's bytes: memory-mapped where the OS allows (POSIX mmap),
// otherwise read into memory. Owned through std::shared_ptr so every tensor that points into
// the bytes can keep its file alive (TensorInfo::file).
//
// Also the parse-from-memory entry point of every loader: MappedFile::from_bytes copies a
// buffer into an exact-size heap block, so the parsers run unchanged on in-memory data (tests,
// the fuzzer) and AddressSanitizer sees any read past the end.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace emollm {

class MappedFile {
 public:
  // Maps `path` read-only. Throws Error(FileNotFound) naming the path when it does not exist or
  // cannot be opened, Error(NotRegularFile) for a directory, FIFO, socket or device (checked on
  // the descriptor, opened non-blocking, so a FIFO never blocks), and
  // Error(OutOfMemory) when the mapping fails. An empty file gives size() == 0. A file already
  // mapped by a live MappedFile (same device, inode, size and change times) gets that object:
  // its path() is then the path it was first opened by.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  // Copies `size` bytes into an exactly sized heap block; `name` stands in for the path in errors.
  static std::shared_ptr<MappedFile> from_bytes(const void* data, size_t size, std::string name);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // Never null (points at a static empty byte when size() == 0); valid while this object lives.
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  bool is_mapped() const { return mapped_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
  bool mapped_ = false;     // data_ is an mmap of size_ bytes
  uint8_t* owned_ = nullptr;  // data_ is a new[] block
};

// Maps the pages of [p, p + bytes) into this process's page tables now, reading them from the file
// where they are not in the page cache (madvise MADV_POPULATE_READ, Linux >= 5.14), so that reads
// of rows scattered over the range later take no page fault: a decode step's embedding row, one
// new 4 KiB page a token, cost 56-119 us of CPU in a fault on the Zen 5 VM (a C loop over random
// pages). Nothing where the kernel lacks it (EINVAL), off Linux, or for memory that is not a
// mapping (already resident). Returns whether the kernel populated the range.
bool populate_read(const void* p, size_t bytes);

}  // namespace emollm
