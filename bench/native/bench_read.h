// Plain reads the native read-pattern benchmarks share (q40_read_patterns, kq_streams_ab): a copy
// in 2 MiB pages, and S streams of loads over a buffer, the reference a GEMV's read rate is
// compared with. x86-64 only (the loads are AVX-512).
#pragma once
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace bench {
// n bytes (rounded up to 2 MiB) aligned to 2 MiB, advised into transparent huge pages; aborts when
// the allocation fails (a benchmark tool has nothing to fall back to).
inline uint8_t* huge_alloc(size_t n) {
  const size_t h = size_t(2) << 20, a = (n + h - 1) / h * h;
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(h, a));
  if (!p) std::abort();
#if defined(MADV_HUGEPAGE)
  (void)madvise(p, a, MADV_HUGEPAGE);
#endif
  return p;
}

#if defined(__x86_64__)
#define BENCH_READ_AVX512 __attribute__((target("avx512f")))
// A few lanes of v folded into one word, so the loads that produced it cannot be dropped.
BENCH_READ_AVX512 inline uint64_t fold(__m512i v) {
  alignas(64) uint64_t u[8];
  _mm512_store_si512(u, v);
  return u[0] ^ u[3] ^ u[7];
}
// S streams over `bytes` at p (S contiguous parts), `step` bytes a stream a step, each stream
// software-prefetched pf bytes ahead (0: none); the loaded bytes folded into the result.
template <int S>
BENCH_READ_AVX512 uint64_t read_streams(const uint8_t* p, size_t bytes, size_t step, size_t pf) {
  const size_t per = bytes / S / step * step;
  __m512i a[S];
  for (int k = 0; k < S; ++k) a[k] = _mm512_setzero_si512();
  for (size_t o = 0; o < per; o += step)
#pragma GCC unroll 4
    for (int k = 0; k < S; ++k) {
      const uint8_t* q = p + k * per + o;
      if (pf)
        for (size_t l = 0; l < step; l += 64) _mm_prefetch(reinterpret_cast<const char*>(q + pf + l), _MM_HINT_T0);
      for (size_t l = 0; l < step; l += 64) a[k] = _mm512_xor_si512(a[k], _mm512_loadu_si512(q + l));
    }
  uint64_t r = 0;
  for (int k = 0; k < S; ++k) r ^= fold(a[k]);
  return r;
}
#endif
}  // namespace bench
