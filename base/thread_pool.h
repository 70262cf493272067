// A fixed pool of compute threads for data-parallel kernels.
// The calling thread takes part as worker 0, so a pool of n threads starts n-1 OS threads;
// that matters on 2-core machines where an idle extra thread would steal a core.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace emollm {

class ThreadPool {
 public:
  // n_threads <= 0 means "physical cores" (cpu_features().physical_cores).
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(thread_index, n_threads) once for every index and returns when all are done.
  // Calls from different threads are serialised; a nested call from inside fn runs inline.
  // Index i > 0 runs on worker i, unless that worker has not picked the job up by the time the
  // caller's own fn(0, n) returns: then the caller runs it (after fn(0), one index at a time), so
  // a worker that another process keeps off its core is not waited for unless it has started.
  // fn must therefore not wait for another index of the same call (no barriers inside).
  void run(const std::function<void(int ith, int nth)>& fn);

  // Runs fn() on the calling thread and on every worker that picks the job up before the caller's
  // own fn() returns; workers that arrive later skip it, so the call does not wait for a worker
  // that another process keeps off its core. For self-scheduling work (fn takes chunks from a
  // shared counter until none is left): every chunk is done by whoever is there.
  void run_dynamic(const std::function<void()>& fn);

  // Splits [0, n) into contiguous chunks of at least `grain` items (multiples of grain, but for
  // the last), one range per call, each item exactly once. By default the chunks are claimed
  // (parallel_ranges: one contiguous range per thread, walked from its front in shrinking chunks,
  // a late thread's range taken from the back by the others), so a thread kept off its core
  // delays the call by about its lateness / threads rather than all of it; callers' results must
  // not depend on which thread runs a chunk or how [0, n) is cut at multiples of grain (they
  // already must not depend on the thread count). pool_dynamic_split(false) (tests, A/B tools):
  // the previous static split, one range per pool index.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn);

 private:
  // The hand-off: the caller publishes a job with atomics in one cache line that it alone writes
  // (Publish), each worker claims and completes its run() index on its own line (Slot), and the
  // condition variables are touched only for a thread that sleeps after its spin (Sleep).
  void worker_loop(int ith);
  uint64_t publish(const std::function<void(int, int)>* job, const std::function<void()>* dyn, bool stop);
  void notify_caller();
  void set_error(std::exception_ptr e);
  void rethrow_error();
  static bool claim(std::atomic<uint64_t>& slot, uint64_t gen);

  // One cache line per writer, so that a hand-off moves as few lines between the cores as it can
  // (on this project's 2-vCPU VMs the two cores have separate L3s: every line that moves costs a
  // cross-die transfer on the job's critical path).
  struct alignas(64) Publish {
    // Written by the caller only (a seqlock): seq is 2 * the job's generation, odd while the
    // caller rewrites the fields, so a worker reads a consistent job or sees that it changed.
    std::atomic<uint64_t> seq{0};
    std::atomic<const std::function<void(int, int)>*> job{nullptr};
    std::atomic<const std::function<void()>*> dyn{nullptr};
    std::atomic<uint64_t> open{0};  // run_dynamic: the generation while workers may join, 0 once closed
    std::atomic<bool> stop{false};
  };
  // Worker i's run() claims and completions: claimed holds the generation of the last run() job
  // whose index i was claimed (by worker i or by the caller, which writes it only when it takes
  // index i itself); a claim for generation g succeeds once, and never for a job already over.
  struct alignas(64) Slot {
    std::atomic<uint64_t> claimed{0};
    std::atomic<uint64_t> done{0};
  };
  struct alignas(64) Sleep {  // rarely written: who sleeps on a condition variable
    std::atomic<int> workers{0};      // workers inside (or entering) wake_.wait
    std::atomic<bool> caller{false};  // the caller inside (or entering) done_.wait
  };
  struct alignas(64) Active {  // run_dynamic: workers inside (or about to check) the open job
    std::atomic<int> n{0};
  };
  struct Shared {
    Publish pub;
    Sleep sleep;
    Active active;
  };
  std::unique_ptr<Shared> shared_;
  std::unique_ptr<Slot[]> slots_;

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // one run() at a time
  std::mutex mutex_;      // the condition variables' and error_'s
  std::condition_variable wake_;
  std::condition_variable done_;
  std::exception_ptr error_;  // first exception thrown by any index (under mutex_)
};

// Guided self-scheduling of [0, n) over the pool (run_dynamic): each claim takes
// ceil(remaining / (4 * pool size)) items, at most max_chunk, rounded up to a multiple of `step`
// (>= 1), so the threads end on short chunks and finish within about one `step` of each other
// (equal chunks left one thread waiting for about half of the other's last chunk). Never longer
// than max_chunk: run_dynamic waits for a worker that claimed a chunk, and one that another
// process keeps off its core holds at most that much. fn(begin, end) runs once per chunk, on
// whichever thread claimed it. Without a pool, with one thread or n <= step: fn(0, n).
void parallel_guided(ThreadPool* pool, int64_t n, int64_t step, int64_t max_chunk,
                     const std::function<void(int64_t, int64_t)>& fn);

// Contiguous ranges with stealing over the pool (run_dynamic): [0, n) in multiples of `step` cut
// into one range per thread; each thread that joins takes the next range of its own (in order of
// arrival) and walks it from the front, then takes chunks from the back of the other ranges
// (threads that arrive when every range is taken only do that). Each claim takes a quarter of
// what is left in its range (rounded up to `step`, at most max_chunk, at least `step`), so a
// range's owner and a thief meet within about one `step`. Against parallel_guided (one shared
// counter: the threads' chunks alternate along [0, n)) every thread reads one long run of
// consecutive items, as a streaming GEMV wants (one stream per core for the hardware
// prefetchers and DRAM pages; no chunk edge every few KiB), while a thread that never arrives
// (kept off its core by another process) is still covered: its range is taken from the back.
// Chunks never exceed max_chunk, for the same reason as parallel_guided's (but an owner's first
// claim with owner_keep >= 0, below). fn(begin, end) runs
// once per chunk, on whichever thread claimed it. Without a pool, with one thread or n <= step:
// fn(0, n).
// owner: which thread walks range r from the front. Arrival (the default): the r-th thread to join
// the job, so the part of [0, n) a given thread reads changes from call to call. Thread: the pool's
// thread r (the caller is 0, worker i is i: pool_thread_index()), so a thread knows before the
// call which part it will read first (parallel_ranges_own), and reads the same part of a matrix
// every call (its next-matrix and side prefetches, which used that, were measured neutral or
// slower and removed in session 20). Stealing is the same either way: a range
// whose thread has not joined is taken from the back by the others. The chunks' boundaries are
// the same (only who runs them changes).
enum class RangeOwner { Arrival, Thread };
// owner_keep >= 0: a thread's first claim on the range it walks from the front takes all of what
// is left there but the last owner_keep steps (at least one step; max_chunk does not bound it),
// and its later claims and every thief's are as above: one long run for a kernel that reads its
// claim as a few long streams (gemv_repacked's two-stream pass restarts its streams at every
// claim, as do the K-quant records' pass and the bf16 / f16 / f32 stream kernels: decode_tuning.h
// gemv_owner_keep, kquant_owner_keep, stream_owner_keep), the range's last steps left to a thread
// that finishes early. A thread kept off its core
// before its first claim is still covered (its range is taken from the back); one kept off after
// it delays the call by as long. -1 (the default): every claim as above.
void parallel_ranges(ThreadPool* pool, int64_t n, int64_t step, int64_t max_chunk,
                     const std::function<void(int64_t, int64_t)>& fn, RangeOwner owner = RangeOwner::Arrival,
                     int64_t owner_keep = -1);

// The range [*begin, *end) of [0, n) that parallel_ranges(pool of nth threads, n, step, ...,
// RangeOwner::Thread) gives thread ith to walk from the front (empty when ith owns none: fewer
// steps than threads). With nth <= 1 or n <= step: all of [0, n) for thread 0.
void parallel_ranges_own(int64_t n, int64_t step, int nth, int ith, int64_t* begin, int64_t* end);

// The calling thread's index in the pool whose job it runs: worker i returns i; any other thread
// (a pool's caller, which runs index 0) returns 0.
int pool_thread_index();

// parallel_for's split (and the GEMM drivers' X packing, gemm_internal.h parallel_pieces): claimed
// chunks (on at start) or the previous static one range per thread (off; tests and A/B tools).
void pool_dynamic_split(bool on);
bool pool_dynamic_split();

// Late-thread injection, for tests and benchmarks of a thread that another process keeps off its
// core: pool worker `worker` (1 .. size-1; -1: the last one) busy-waits `us` microseconds in each
// job it takes. LateAt::Hold: the first time it reaches pool_late_point() (run(): right after it
// claims its index; the claiming helpers, parallel_chunks / parallel_guided / parallel_ranges:
// right after its first chunk is claimed, so it holds that chunk while it waits: preempted
// mid-job). LateAt::Arrival: as it picks the job up, before it claims anything (woken late).
// Process-wide, every pool; us = 0 turns it off. EMOLLM_POOL_LATE_US=us (EMOLLM_POOL_LATE_WORKER=w,
// EMOLLM_POOL_LATE_AT=arrival) set it at start-up.
enum class LateAt { Hold, Arrival };
void pool_set_late_worker(int us, int worker = -1, LateAt at = LateAt::Hold);
int pool_late_us();
// The injection point (nothing unless this thread is the late worker of a job not yet delayed).
void pool_late_point();
// Delays injected so far in this process (tests: the hook reaches the jobs it is meant to).
uint64_t pool_late_delays();

// Slow-thread injection, for tests and benchmarks of two vCPUs that run at unequal speed (the VM):
// pool worker `worker` (-1: the last one) busy-waits `pct` percent of the time each of its chunks
// took, after the chunk: at pool_late_point, which the claiming helpers reach just after their next
// claim (so the slowed worker holds that claim while it waits: a guided claim is sized a little
// earlier than a uniformly slower thread would size it), or as it leaves the job (run() indices and
// claiming helpers alike). It does pct% more wall per unit of work than the others.
// Process-wide; pct = 0 turns it off. Tests and A/B tools only (no environment variable).
void pool_set_slow_worker(int pct, int worker = -1);
// Chunk ends the slow worker has waited after so far in this process (tests: the hook is reached).
uint64_t pool_slow_waits();

// Static split of [0, n) for worker ith of nth: begin/end rounded to multiples of `align`.
inline void split_range(int64_t n, int ith, int nth, int64_t align, int64_t* begin, int64_t* end) {
  int64_t blocks = (n + align - 1) / align;
  int64_t per = blocks / nth, rem = blocks % nth;
  int64_t b0 = ith * per + (ith < rem ? ith : rem);
  int64_t b1 = b0 + per + (ith < rem ? 1 : 0);
  *begin = b0 * align < n ? b0 * align : n;
  *end = b1 * align < n ? b1 * align : n;
}

}  // namespace emollm
