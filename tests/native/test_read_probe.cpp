// Tests for the read-bandwidth probe's loop (kernels/cpu/read_probe.h): at every ISA level, stream
// count, prefetch distance and thread count it loads every byte exactly once (its XOR of the 8-byte
// words equals the scalar one; a byte changed anywhere, in a tail line too, changes the result), and
// bad arguments are Error(InvalidArgument).
#include <cstdint>
#include <cstring>
#include <vector>

#include "../../base/arena.h"
#include "../../base/cpu_features.h"
#include "../../base/error.h"
#include "../../base/thread_pool.h"
#include "../../kernels/cpu/read_probe.h"
#include "testing.h"

using namespace emollm;

namespace {

std::vector<Isa> read_levels() {
  std::vector<Isa> v{Isa::Scalar};
  if (isa_detected() >= Isa::Avx2) v.push_back(Isa::Avx2);
  if (isa_detected() >= Isa::Avx512) v.push_back(Isa::Avx512);
  return v;
}

uint64_t ref_xor(const uint8_t* p, size_t bytes) {
  uint64_t r = 0;
  for (size_t o = 0; o < bytes; o += 8) {
    uint64_t w;
    std::memcpy(&w, p + o, 8);
    r ^= w;
  }
  return r;
}

}  // namespace

TEST(read_lines_reads_every_byte_once) {
  // sizes with tails at every level: not a multiple of 128 x streams x threads
  const size_t cap = (size_t(1) << 20) + 64 * 37;
  AlignedPtr<uint8_t> buf = make_aligned<uint8_t>(cap);
  uint64_t s = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < cap; i++) {
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    buf[i] = uint8_t(s >> 24);
  }
  ThreadPool pool3(3);
  for (Isa isa : read_levels()) {
    IsaCapScope c(isa);
    for (size_t bytes : {size_t(0), size_t(64), size_t(64 * 7), size_t(4096 + 64 * 5), cap})
      for (int streams : {1, 2, 4, 8})
        for (size_t pf : {size_t(0), size_t(1024)})
          for (ThreadPool* pool : {static_cast<ThreadPool*>(nullptr), &pool3}) {
            const uint64_t want = ref_xor(buf.get(), bytes);
            EXPECT(read_lines(buf.get(), bytes, streams, pf, pool) == want);
            if (bytes) {
              // one flipped bit in the last line (a tail) and one in the middle: both change the result
              buf[bytes - 3] ^= 0x10;
              EXPECT(read_lines(buf.get(), bytes, streams, pf, pool) == (want ^ (uint64_t(0x10) << (8 * ((bytes - 3) % 8)))));
              buf[bytes - 3] ^= 0x10;
              buf[bytes / 2] ^= 0x01;
              EXPECT(read_lines(buf.get(), bytes, streams, pf, pool) != want);
              buf[bytes / 2] ^= 0x01;
            }
          }
  }
}

TEST(read_lines_refuses_bad_arguments) {
  AlignedPtr<uint8_t> buf = make_aligned<uint8_t>(4096);
  std::memset(buf.get(), 1, 4096);
  EXPECT_THROWS(read_lines(buf.get() + 8, 1024, 4, 0, nullptr), ErrorCode::InvalidArgument);   // unaligned
  EXPECT_THROWS(read_lines(buf.get(), 1000, 4, 0, nullptr), ErrorCode::InvalidArgument);       // not whole lines
  EXPECT_THROWS(read_lines(buf.get(), 1024, 3, 0, nullptr), ErrorCode::InvalidArgument);       // streams
  EXPECT_THROWS(read_lines(buf.get(), 1024, 0, 0, nullptr), ErrorCode::InvalidArgument);
  EXPECT_THROWS(read_lines(buf.get(), 1024, 4, 100, nullptr), ErrorCode::InvalidArgument);     // prefetch not whole lines
  EXPECT_THROWS(read_lines(buf.get(), 1024, 4, size_t(128) << 10, nullptr), ErrorCode::InvalidArgument);
  EXPECT(read_lines(buf.get(), 4096, 4, 1024, nullptr) == 0);  // 512 equal words: XOR 0
}
