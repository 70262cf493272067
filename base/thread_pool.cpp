#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>

#include "cpu_features.h"
#include "env_switch.h"
#include "pool_stats.h"

namespace emollm {
namespace {
// Set while a thread executes pool work, so nested run() calls execute inline instead of
// deadlocking on run_mutex_.
thread_local bool t_in_pool = false;
// The pool index of this thread: i on worker i, 0 on every other thread (pool_thread_index()).
thread_local int t_pool_index = 0;

// Workers spin this many polls before sleeping (and a caller waiting for them before it sleeps):
// kernels are called back to back (one GEMV per layer during decode), and a futex wake costs tens
// of microseconds. 20000 pauses are 0.40-0.42 ms on the Zen 5 VM (build-bench/pool_handoff), so
// an idle pool's workers give their cores back within half a millisecond.
constexpr int kSpinPolls = 20000;

std::atomic<bool> g_handoff_timing{false};
thread_local double t_handoff_s = 0;
thread_local uint64_t t_dispatches = 0;
thread_local uint64_t t_range_chunks = 0;  // pool_range_chunks_this_thread

// Times a job's hand-off on the thread that runs it when pool_handoff_timing is on: from the
// start until the caller's own share begins, and from its end until the workers are done.
class HandoffClock {
 public:
  HandoffClock() : on_(g_handoff_timing.load(std::memory_order_relaxed)) {
    if (on_) t_ = std::chrono::steady_clock::now();
  }
  void own_share_begins() { lap(); }
  void own_share_ends() {
    if (on_) t_ = std::chrono::steady_clock::now();
  }
  void done() { lap(); }

 private:
  void lap() {
    if (!on_) return;
    t_handoff_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t_).count();
  }
  bool on_;
  std::chrono::steady_clock::time_point t_{};
};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// parallel_for's claimed chunks: on at start; pool_dynamic_split(false), the static split, for
// test_pool_late, pool_late_ab and decode_switch_ab. No environment variable:
// EMOLLM_POOL_DYNAMIC_SPLIT went in session 22 (a 4 ms late worker cost static / claimed 0.35 /
// 0.05 of its lateness, bench/README 2026-12-06 00:24).
std::atomic<bool> g_dynamic_split{true};

// Late-thread injection (pool_set_late_worker): microseconds and worker index (-1: the last).
std::atomic<int> g_late_us{int(env_int("EMOLLM_POOL_LATE_US", 0))};
std::atomic<int> g_late_worker{int(env_int("EMOLLM_POOL_LATE_WORKER", -1))};
std::atomic<bool> g_late_arrival{[] {
  const char* v = std::getenv("EMOLLM_POOL_LATE_AT");
  return v && std::strcmp(v, "arrival") == 0;
}()};
// Busy-waits (the core taken, as by another process's thread on it), or with
// EMOLLM_POOL_LATE_SLEEP=1 sleeps (the thread descheduled, its core free for others: on a
// machine loaded beyond its cores a busy-wait also spends the process's share of CPU time).
void late_wait() {
  static const bool sleep = env_opted_in("EMOLLM_POOL_LATE_SLEEP");
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(g_late_us.load());
  if (sleep) return std::this_thread::sleep_until(until);
  while (std::chrono::steady_clock::now() < until) cpu_relax();
}
// Armed on the late worker at the start of each job it takes; pool_late_point() disarms it.
thread_local bool t_late_armed = false;
std::atomic<uint64_t> g_late_delays{0};
void arm_late(int ith, int nth) {
  const int us = g_late_us.load(std::memory_order_relaxed);
  if (us <= 0) return;
  const int w = g_late_worker.load(std::memory_order_relaxed);
  t_late_armed = ith == (w < 0 ? nth - 1 : w);
}

// Slow-thread injection (pool_set_slow_worker): percent and worker index (-1: the last).
std::atomic<int> g_slow_pct{0};
std::atomic<int> g_slow_worker{-1};
std::atomic<uint64_t> g_slow_waits{0};
// On the slow worker during a job: when its current chunk began (slow_open: one is running).
thread_local bool t_slow = false;
thread_local bool t_slow_open = false;
thread_local std::chrono::steady_clock::time_point t_slow_since{};
void arm_slow(int ith, int nth) {
  const int pct = g_slow_pct.load(std::memory_order_relaxed);
  const int w = g_slow_worker.load(std::memory_order_relaxed);
  t_slow = pct > 0 && ith == (w < 0 ? nth - 1 : w);
  t_slow_open = false;
}
// The end of the slow worker's chunk (if one is running): busy-wait pct% of its duration.
void slow_chunk_ends() {
  if (!t_slow || !t_slow_open) return;
  t_slow_open = false;
  g_slow_waits.fetch_add(1, std::memory_order_relaxed);
  const auto now = std::chrono::steady_clock::now();
  const auto until = now + (now - t_slow_since) * g_slow_pct.load(std::memory_order_relaxed) / 100;
  while (std::chrono::steady_clock::now() < until) cpu_relax();
}
// A chunk begins on the slow worker (after the previous one's wait).
void slow_chunk_begins() {
  if (!t_slow) return;
  slow_chunk_ends();
  t_slow_open = true;
  t_slow_since = std::chrono::steady_clock::now();
}
}  // namespace

void pool_dynamic_split(bool on) { g_dynamic_split.store(on, std::memory_order_relaxed); }
bool pool_dynamic_split() { return g_dynamic_split.load(std::memory_order_relaxed); }
int pool_spin_polls() { return kSpinPolls; }
void pool_set_late_worker(int us, int worker, LateAt at) {
  g_late_worker.store(worker, std::memory_order_relaxed);
  g_late_arrival.store(at == LateAt::Arrival, std::memory_order_relaxed);
  g_late_us.store(us, std::memory_order_relaxed);
}
uint64_t pool_late_delays() { return g_late_delays.load(std::memory_order_relaxed); }
int pool_late_us() { return g_late_us.load(std::memory_order_relaxed); }
void pool_set_slow_worker(int pct, int worker) {
  g_slow_worker.store(worker, std::memory_order_relaxed);
  g_slow_pct.store(std::max(0, pct), std::memory_order_relaxed);
}
uint64_t pool_slow_waits() { return g_slow_waits.load(std::memory_order_relaxed); }
void pool_late_point() {
  slow_chunk_begins();
  if (!t_late_armed) return;
  t_late_armed = false;
  g_late_delays.fetch_add(1, std::memory_order_relaxed);
  late_wait();
}

void pool_handoff_timing(bool on) { g_handoff_timing.store(on, std::memory_order_relaxed); }
double pool_handoff_seconds_this_thread() { return t_handoff_s; }
uint64_t pool_dispatches_this_thread() { return t_dispatches; }
uint64_t pool_range_chunks_this_thread() { return t_range_chunks; }
int pool_thread_index() { return t_pool_index; }

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = cpu_features().physical_cores;
  if (n_threads <= 0) n_threads = 1;
  n_threads_ = n_threads;
  shared_.reset(new Shared);
  slots_.reset(new Slot[size_t(n_threads_)]);
  workers_.reserve(size_t(n_threads_ - 1));
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  publish(nullptr, nullptr, true);
  for (auto& t : workers_) t.join();
}

bool ThreadPool::claim(std::atomic<uint64_t>& slot, uint64_t gen) {
  uint64_t cur = slot.load(std::memory_order_acquire);  // a load first: no write when it is taken
  while (cur < gen)
    if (slot.compare_exchange_weak(cur, gen, std::memory_order_acq_rel)) return true;
  return false;
}

void ThreadPool::set_error(std::exception_ptr e) {
  std::lock_guard<std::mutex> lk(mutex_);
  if (!error_) error_ = e;
}

// Sleeping and waking without a lost wake-up: a thread about to sleep announces it (Sleep, seq_cst)
// and then re-checks its condition under mutex_; the other side writes its state, fences
// (seq_cst) and reads the announcement: either it sees the sleeper and notifies under mutex_, or
// the sleeper's re-check sees the new state.

// Publishes a job (or the stop) and wakes sleeping workers; returns its generation.
uint64_t ThreadPool::publish(const std::function<void(int, int)>* job, const std::function<void()>* dyn,
                             bool stop) {
  Publish& p = shared_->pub;
  const uint64_t s = p.seq.load(std::memory_order_relaxed);  // even: only this thread writes it
  const uint64_t gen = s / 2 + 1;
  p.seq.store(s + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  p.job.store(job, std::memory_order_relaxed);
  p.dyn.store(dyn, std::memory_order_relaxed);
  p.open.store(dyn ? gen : 0, std::memory_order_relaxed);
  p.stop.store(stop, std::memory_order_relaxed);
  p.seq.store(s + 2, std::memory_order_release);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (stop || shared_->sleep.workers.load(std::memory_order_relaxed) > 0) {
    { std::lock_guard<std::mutex> lk(mutex_); }
    wake_.notify_all();
  }
  return gen;
}

// A worker's completion, after its done / active store: wakes the caller if it sleeps.
void ThreadPool::notify_caller() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (shared_->sleep.caller.load(std::memory_order_relaxed)) {
    { std::lock_guard<std::mutex> lk(mutex_); }
    done_.notify_all();
  }
}

void ThreadPool::run(const std::function<void(int, int)>& fn) {
  if (n_threads_ == 1 || t_in_pool) {
    fn(0, 1);
    return;
  }
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  ++t_dispatches;
  HandoffClock clock;
  const uint64_t gen = publish(&fn, nullptr, false);

  clock.own_share_begins();
  t_in_pool = true;
  auto run_index = [&](int i) {
    try {
      fn(i, n_threads_);
    } catch (...) {
      set_error(std::current_exception());
    }
  };
  run_index(0);
  // The indices no worker has claimed yet: run them here rather than wait for their workers (and
  // mark them done: the claim's write already brought the slot's line here).
  for (int i = 1; i < n_threads_; ++i)
    if (claim(slots_[i].claimed, gen)) {
      run_index(i);
      slots_[i].done.store(gen, std::memory_order_relaxed);
    }
  t_in_pool = false;
  clock.own_share_ends();

  // Wait for the workers that claimed theirs: spin first, then sleep.
  auto all_done = [&] {
    for (int i = 1; i < n_threads_; ++i)
      if (slots_[i].done.load(std::memory_order_acquire) != gen) return false;
    return true;
  };
  for (int i = 0; i < kSpinPolls && !all_done(); ++i) cpu_relax();
  if (!all_done()) {
    std::unique_lock<std::mutex> lk(mutex_);
    shared_->sleep.caller.store(true, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    done_.wait(lk, all_done);
    shared_->sleep.caller.store(false, std::memory_order_relaxed);
  }
  clock.done();
  rethrow_error();
}

void ThreadPool::run_dynamic(const std::function<void()>& fn) {
  if (n_threads_ == 1 || t_in_pool) {
    fn();
    return;
  }
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  ++t_dispatches;
  HandoffClock clock;
  publish(nullptr, &fn, false);

  clock.own_share_begins();
  t_in_pool = true;
  try {
    fn();
  } catch (...) {
    set_error(std::current_exception());
  }
  t_in_pool = false;
  clock.own_share_ends();

  // Close the job: a worker that has not registered in active yet will see it closed and skip
  // (seq_cst both sides: either this thread sees it in active and waits, or it sees the job closed).
  std::atomic<int>& active = shared_->active.n;
  shared_->pub.open.store(0, std::memory_order_seq_cst);
  for (int i = 0; i < kSpinPolls && active.load(std::memory_order_seq_cst) != 0; ++i) cpu_relax();
  if (active.load(std::memory_order_seq_cst) != 0) {
    std::unique_lock<std::mutex> lk(mutex_);
    shared_->sleep.caller.store(true, std::memory_order_seq_cst);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    done_.wait(lk, [&] { return active.load(std::memory_order_seq_cst) == 0; });
    shared_->sleep.caller.store(false, std::memory_order_relaxed);
  }
  clock.done();
  rethrow_error();
}

// The first exception of the job that just ended, if any (written under mutex_ before the done /
// active store that the caller acquired).
void ThreadPool::rethrow_error() {
  if (!error_) return;
  std::exception_ptr e = error_;
  error_ = nullptr;
  std::rethrow_exception(e);
}

void ThreadPool::worker_loop(int ith) {
  uint64_t seen = 0;  // the sequence of the last job (or stop) this worker read: none yet
  t_in_pool = true;
  t_pool_index = ith;
  Publish& p = shared_->pub;
  Slot& slot = slots_[ith];
  for (;;) {
    uint64_t s = p.seq.load(std::memory_order_acquire);
    for (int i = 0; i < kSpinPolls && s == seen; ++i) {
      cpu_relax();
      s = p.seq.load(std::memory_order_acquire);
    }
    if (s == seen) {
      std::unique_lock<std::mutex> lk(mutex_);
      shared_->sleep.workers.fetch_add(1, std::memory_order_seq_cst);
      wake_.wait(lk, [&] { return p.seq.load(std::memory_order_seq_cst) != seen; });
      shared_->sleep.workers.fetch_sub(1, std::memory_order_relaxed);
      continue;
    }
    if (s & 1) {  // the caller is rewriting the job: read it again
      cpu_relax();
      continue;
    }
    const std::function<void(int, int)>* job = p.job.load(std::memory_order_relaxed);
    const std::function<void()>* dyn = p.dyn.load(std::memory_order_relaxed);
    const bool stop = p.stop.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (p.seq.load(std::memory_order_relaxed) != s) continue;  // a later job meanwhile: take that one
    seen = s;
    if (stop) return;
    const uint64_t gen = s / 2;
    arm_late(ith, n_threads_);
    arm_slow(ith, n_threads_);
    if (t_late_armed && g_late_arrival.load(std::memory_order_relaxed)) {  // woken late: before any claim
      t_late_armed = false;
      g_late_delays.fetch_add(1, std::memory_order_relaxed);
      late_wait();
    }
    if (dyn) {
      std::atomic<int>& active = shared_->active.n;
      active.fetch_add(1, std::memory_order_seq_cst);
      if (p.open.load(std::memory_order_seq_cst) == gen) {  // fn is alive while the job is open
        try {
          (*dyn)();
        } catch (...) {
          set_error(std::current_exception());
        }
      }
      slow_chunk_ends();
      t_late_armed = false;  // a job without claims (a kernel's own counter) is not delayed
      active.fetch_sub(1, std::memory_order_seq_cst);
      notify_caller();
      continue;
    }
    if (!job || !claim(slot.claimed, gen)) {  // the caller ran this index already (fn may be gone)
      t_late_armed = false;
      continue;
    }
    pool_late_point();
    try {
      (*job)(ith, n_threads_);
    } catch (...) {
      set_error(std::current_exception());
    }
    slow_chunk_ends();
    slot.done.store(gen, std::memory_order_release);
    notify_caller();
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  int64_t chunks = (n + grain - 1) / grain;
  if (chunks <= 1 || n_threads_ == 1 || t_in_pool) {
    fn(0, n);
    return;
  }
  if (g_dynamic_split.load(std::memory_order_relaxed)) return parallel_ranges(this, n, grain, n, fn);
  run([&](int ith, int nth) {
    int64_t b, e;
    split_range(n, ith, nth, grain, &b, &e);
    if (b < e) fn(b, e);
  });
}

void parallel_guided(ThreadPool* pool, int64_t n, int64_t step, int64_t max_chunk,
                     const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (step < 1) step = 1;
  if (!pool || pool->size() <= 1 || n <= step) {
    fn(0, n);
    return;
  }
  const int64_t parts = 4 * int64_t(pool->size());
  std::atomic<int64_t> next{0};
  pool->run_dynamic([&] {
    for (;;) {
      int64_t b = next.load(std::memory_order_relaxed), e;
      do {
        if (b >= n) return;
        const int64_t want = std::min(max_chunk, (n - b + parts - 1) / parts);
        e = std::min(n, b + std::max<int64_t>(1, (want + step - 1) / step) * step);
      } while (!next.compare_exchange_weak(b, e, std::memory_order_relaxed));
      pool_late_point();
      fn(b, e);
    }
  });
}

namespace {
constexpr int kMaxRanges = 64;
// parallel_ranges' cut: the number of ranges and range r's [b, e) in units of `step`.
int ranges_count(int64_t units, int nth) { return int(std::min<int64_t>({int64_t(nth), units, int64_t(kMaxRanges)})); }
}  // namespace

void parallel_ranges_own(int64_t n, int64_t step, int nth, int ith, int64_t* begin, int64_t* end) {
  if (step < 1) step = 1;
  *begin = *end = 0;
  if (n <= 0) return;
  if (nth <= 1 || n <= step) {
    if (ith == 0) *end = n;
    return;
  }
  const int64_t units = (n + step - 1) / step;
  const int nr = ranges_count(units, nth);
  if (ith < 0 || ith >= nr) return;
  int64_t b, e;
  split_range(units, ith, nr, 1, &b, &e);
  *begin = std::min(n, b * step);
  *end = std::min(n, e * step);
}

void parallel_ranges(ThreadPool* pool, int64_t n, int64_t step, int64_t max_chunk,
                     const std::function<void(int64_t, int64_t)>& fn, RangeOwner owner, int64_t owner_keep) {
  if (n <= 0) return;
  if (step < 1) step = 1;
  if (!pool || pool->size() <= 1 || n <= step) {
    ++t_range_chunks;
    fn(0, n);
    return;
  }
  // Ranges in units of `step`; each range's state is one word, front (low half) and back (high
  // half), so an owner's claim from the front and a thief's from the back never overlap.
  const int64_t units = (n + step - 1) / step;
  if (units >= (int64_t(1) << 31)) return parallel_guided(pool, n, step, max_chunk, fn);
  const int nr = ranges_count(units, pool->size());
  const int64_t max_units = std::max<int64_t>(1, max_chunk / step);
  auto pack = [](int64_t front, int64_t back) { return uint64_t(front) | (uint64_t(back) << 32); };
  std::atomic<uint64_t> ranges[kMaxRanges];
  for (int r = 0; r < nr; ++r) {
    int64_t b, e;
    split_range(units, r, nr, 1, &b, &e);
    ranges[r].store(pack(b, e), std::memory_order_relaxed);
  }
  std::atomic<int> arrivals{0};
  // One chunk of range r from its front (owner) or back (thief), in units; false once it is empty.
  // first: the owner's first claim (owner_keep >= 0: all but owner_keep units of what is left).
  auto take = [&](int r, bool front, int64_t* b, int64_t* e, bool first = false) {
    uint64_t s = ranges[r].load(std::memory_order_relaxed);
    for (;;) {
      const int64_t f = int64_t(s & 0xFFFFFFFFu), k = int64_t(s >> 32);
      if (f >= k) return false;
      const int64_t c = first && owner_keep >= 0 ? std::max<int64_t>(1, k - f - owner_keep)
                                                 : std::min(max_units, (k - f + 3) / 4);
      if (ranges[r].compare_exchange_weak(s, front ? pack(f + c, k) : pack(f, k - c), std::memory_order_relaxed)) {
        *b = front ? f : k - c;
        *e = front ? f + c : k;
        return true;
      }
    }
  };
  auto run = [&](int64_t b, int64_t e) {
    ++t_range_chunks;
    pool_late_point();
    fn(b * step, std::min(n, e * step));
  };
  pool->run_dynamic([&] {
    // The range this thread walks from the front: its arrival's, or its pool index's (a nested
    // call runs inline on one thread, which then owns that thread's range and steals the rest).
    const int me = owner == RangeOwner::Thread ? std::min(pool_thread_index(), pool->size() - 1)
                                               : arrivals.fetch_add(1, std::memory_order_relaxed);
    int64_t b, e;
    if (me < nr)
      for (bool first = true; take(me, true, &b, &e, first); first = false) run(b, e);
    for (int i = 1; i <= nr; ++i) {
      const int r = (me + i) % nr;
      while (take(r, false, &b, &e)) run(b, e);
    }
  });
}

}  // namespace emollm
