// read_lines (read_probe.h): the read-bandwidth probe's loop over a caller's buffer.
#include "read_probe.h"

#include <cstring>
#include <string>
#include <vector>

#include "../../base/cpu_features.h"
#include "../../base/error.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace emollm {
namespace {

constexpr size_t kLine = 64;
constexpr size_t kStep = 128;  // bytes a stream a step (two lines), as bench_kernels' loop

// The scalar reference and every path's leftover lines: XOR of the 8-byte words.
uint64_t xor_words(const uint8_t* p, size_t bytes) {
  uint64_t r = 0;
  for (size_t o = 0; o < bytes; o += 8) {
    uint64_t w;
    std::memcpy(&w, p + o, 8);
    r ^= w;
  }
  return r;
}

#if defined(__x86_64__)
template <int S>
__attribute__((target("avx512f"))) uint64_t read_avx512(const uint8_t* p, size_t bytes, size_t pf) {
  const size_t per = bytes / S / kStep * kStep;
  __m512i a[S][2];
  for (int j = 0; j < S; j++) a[j][0] = a[j][1] = _mm512_setzero_si512();
  for (size_t o = 0; o < per; o += kStep) {
#pragma GCC unroll 8
    for (int j = 0; j < S; j++) {
      const uint8_t* q = p + size_t(j) * per + o;
      if (pf) _mm_prefetch(reinterpret_cast<const char*>(q + pf), _MM_HINT_T0);
      a[j][0] = _mm512_xor_si512(a[j][0], _mm512_load_si512(q));
      a[j][1] = _mm512_xor_si512(a[j][1], _mm512_load_si512(q + 64));
    }
  }
  __m512i t = _mm512_setzero_si512();
  for (int j = 0; j < S; j++) t = _mm512_xor_si512(t, _mm512_xor_si512(a[j][0], a[j][1]));
  alignas(64) uint64_t u[8];
  _mm512_store_si512(u, t);
  uint64_t r = 0;
  for (uint64_t w : u) r ^= w;
  return r ^ xor_words(p + S * per, bytes - S * per);
}

template <int S>
__attribute__((target("avx2"))) uint64_t read_avx2(const uint8_t* p, size_t bytes, size_t pf) {
  const size_t per = bytes / S / kStep * kStep;
  __m256i a[S][2];
  for (int j = 0; j < S; j++) a[j][0] = a[j][1] = _mm256_setzero_si256();
  for (size_t o = 0; o < per; o += kStep) {
#pragma GCC unroll 8
    for (int j = 0; j < S; j++) {
      const uint8_t* q = p + size_t(j) * per + o;
      if (pf) _mm_prefetch(reinterpret_cast<const char*>(q + pf), _MM_HINT_T0);
      for (size_t l = 0; l < kStep; l += 64) {
        a[j][0] = _mm256_xor_si256(a[j][0], _mm256_load_si256(reinterpret_cast<const __m256i*>(q + l)));
        a[j][1] = _mm256_xor_si256(a[j][1], _mm256_load_si256(reinterpret_cast<const __m256i*>(q + l + 32)));
      }
    }
  }
  __m256i t = _mm256_setzero_si256();
  for (int j = 0; j < S; j++) t = _mm256_xor_si256(t, _mm256_xor_si256(a[j][0], a[j][1]));
  alignas(32) uint64_t u[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(u), t);
  return u[0] ^ u[1] ^ u[2] ^ u[3] ^ xor_words(p + S * per, bytes - S * per);
}

using ReadFn = uint64_t (*)(const uint8_t*, size_t, size_t);
ReadFn pick(Isa isa, int streams) {
  if (isa >= Isa::Avx512) {
    switch (streams) {
      case 1: return read_avx512<1>;
      case 2: return read_avx512<2>;
      case 4: return read_avx512<4>;
      default: return read_avx512<8>;
    }
  }
  if (isa >= Isa::Avx2) {
    switch (streams) {
      case 1: return read_avx2<1>;
      case 2: return read_avx2<2>;
      case 4: return read_avx2<4>;
      default: return read_avx2<8>;
    }
  }
  return nullptr;
}
#endif

}  // namespace

uint64_t read_lines(const void* p, size_t bytes, int streams, size_t prefetch_bytes, ThreadPool* pool) {
  if (reinterpret_cast<uintptr_t>(p) % kLine != 0) throw Error(ErrorCode::InvalidArgument, "read_lines: the buffer must be 64-byte aligned");
  if (bytes % kLine != 0) throw Error(ErrorCode::InvalidArgument, "read_lines: bytes must be a multiple of 64, got " + std::to_string(bytes));
  if (streams != 1 && streams != 2 && streams != 4 && streams != 8)
    throw Error(ErrorCode::InvalidArgument, "read_lines: streams must be 1, 2, 4 or 8, got " + std::to_string(streams));
  if (prefetch_bytes % kLine != 0 || prefetch_bytes > (size_t(64) << 10))
    throw Error(ErrorCode::InvalidArgument, "read_lines: prefetch_bytes must be a multiple of 64 up to 65536, got " + std::to_string(prefetch_bytes));
  const uint8_t* b = static_cast<const uint8_t*>(p);
  auto slice = [&](size_t off, size_t n) -> uint64_t {
#if defined(__x86_64__)
    if (ReadFn fn = pick(isa_active(), streams)) return fn(b + off, n, prefetch_bytes);
#endif
    return xor_words(b + off, n);
  };
  const int nth = pool ? pool->size() : 1;
  if (nth <= 1 || bytes < kLine * size_t(nth)) return slice(0, bytes);
  const size_t lines = bytes / kLine;
  std::vector<uint64_t> part(size_t(nth), 0);
  pool->run([&](int ith, int n) {
    const size_t l0 = lines * size_t(ith) / size_t(n), l1 = lines * size_t(ith + 1) / size_t(n);
    part[size_t(ith)] = slice(l0 * kLine, (l1 - l0) * kLine);
  });
  uint64_t r = 0;
  for (uint64_t x : part) r ^= x;
  return r;
}

}  // namespace emollm
