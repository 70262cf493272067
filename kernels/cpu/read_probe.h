// A plain read of memory the way the best streaming kernels read it: the reference a decode's
// bytes per second is held to (bench:decode's in-process probe beside its decode chunks, through
// lib/kernels.ts readBandwidth). A plain function over a pointer and a size, like kernels.h.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../../base/thread_pool.h"

namespace emollm {

// Loads every 64-byte line of [p, p + bytes) exactly once. The pool's threads each take a
// contiguous slice (whole lines; null pool: the calling thread alone); each slice is walked as
// `streams` contiguous parts side by side, 128 bytes a part a step (several misses in flight per
// thread, as a GEMV walking several weight rows), each part software-prefetched `prefetch_bytes`
// ahead (0: none); the lines a slice's parts leave over are read after. bench_kernels' read probe
// loop (read_streams_avx512: 4 streams + 1 KiB prefetch is its best variant on the Zen 4 / Zen 5
// VMs) with XOR in place of float adds. AVX-512 where isa_active() allows, else AVX2, else scalar.
// Returns the XOR of every 8-byte word read: the same for any streams, threads and ISA (so the
// loads cannot be dropped, and a test can check each byte was read once).
// Requires p 64-byte aligned, bytes a multiple of 64, streams 1, 2, 4 or 8, prefetch_bytes a
// multiple of 64 up to 64 KiB; otherwise Error(InvalidArgument).
uint64_t read_lines(const void* p, size_t bytes, int streams, size_t prefetch_bytes, ThreadPool* pool);

}  // namespace emollm
