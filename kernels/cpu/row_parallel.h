// Splitting row kernels (norms, RoPE, softmax, activations, embedding) over a ThreadPool.
//
// Rows are independent, so each worker runs the single-threaded kernel on a contiguous range of
// rows and the result is bit-identical to the single-threaded one. Elementwise kernels split
// their n elements at multiples of kEltAlign, so every vector block and the masked tail fall on
// the same elements as in one call. Small calls (decode: one row of a few thousand elements) stay
// on the calling thread: waking the pool costs more than the row.
#pragma once
#include <cstdint>

#include "../../base/thread_pool.h"

namespace emollm {
namespace detail {

// Below this many elements of work a call runs on the calling thread.
constexpr int64_t kRowParallelMinWork = 32 * 1024;
// Elementwise split granularity (elements): a multiple of every vector width and unroll.
constexpr int64_t kEltAlign = 256;

// Calls fn(begin, end) over [0, rows), on the pool when rows * work_per_row is worth it.
template <class Fn>
void for_rows(ThreadPool* pool, int64_t rows, int64_t work_per_row, const Fn& fn) {
  if (rows <= 0) return;
  const int64_t work = rows * (work_per_row > 0 ? work_per_row : 1);
  if (!pool || pool->size() <= 1 || rows < 2 || work < 2 * kRowParallelMinWork) return fn(int64_t(0), rows);
  int64_t grain = kRowParallelMinWork / (work_per_row > 0 ? work_per_row : 1);
  if (grain < 1) grain = 1;
  pool->parallel_for(rows, grain, [&](int64_t b, int64_t e) { fn(b, e); });
}

// Calls fn(begin, end) over [0, n) elements, split at multiples of kEltAlign.
template <class Fn>
void for_elements(ThreadPool* pool, int64_t n, const Fn& fn) {
  if (n <= 0) return;
  const int64_t blocks = (n + kEltAlign - 1) / kEltAlign;
  for_rows(pool, blocks, kEltAlign, [&](int64_t b, int64_t e) {
    const int64_t begin = b * kEltAlign, end = e * kEltAlign < n ? e * kEltAlign : n;
    fn(begin, end);
  });
}

}  // namespace detail
}  // namespace emollm
