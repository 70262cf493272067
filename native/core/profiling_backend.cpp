#include "core/profiling_backend.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <tuple>
#include <vector>

#include <sys/resource.h>

#include "base/env_switch.h"  // env_int
#include "base/pool_stats.h"
#include "base/thread_clock.h"  // thread_cpu_seconds

namespace emollm {
namespace {

// Per-call times of a row on a log scale (kHistPerOctave bins an octave from kHistMin seconds):
// quantiles of a row's calls, so a profile taken on a shared machine can be read by its typical
// call (the median, p10) where the mean carries every call another process preempted. A bin is
// 2^(1/16) wide: a quantile is within ~2.2% of a call's time (the bin's geometric centre).
constexpr int kHistPerOctave = 16, kHistBins = 30 * kHistPerOctave;  // 0.1 us .. ~107 s: calls under
                                                                     // 0.1 us read 0.1 us, over ~107 s as ~107 s
constexpr double kHistMin = 1e-7;
int hist_bin(double seconds) {
  if (!(seconds > kHistMin)) return 0;
  const int b = int(std::log2(seconds / kHistMin) * kHistPerOctave);
  return std::min(b, kHistBins - 1);
}
// The q-quantile (0..1) of the counts in h (kHistBins of them or none), in seconds; 0 when empty.
double hist_quantile(const std::vector<uint32_t>& h, double q) {
  uint64_t n = 0;
  for (uint32_t c : h) n += c;
  if (n == 0) return 0;
  const uint64_t rank = std::min<uint64_t>(n - 1, uint64_t(q * double(n)));
  uint64_t seen = 0;
  for (size_t b = 0; b < h.size(); ++b) {
    seen += h[b];
    if (seen > rank) return kHistMin * std::exp2((double(b) + 0.5) / kHistPerOctave);
  }
  return 0;
}

struct Stat {
  int64_t calls = 0;
  double seconds = 0;
  std::vector<uint32_t> hist;  // one entry per single-call record (hist_bin), sized on first use
  int64_t faults = 0;  // page faults (minor + major) of the thread inside the rows' calls
  double cpu_seconds = 0;  // thread CPU time (the "loop" row only; else 0)
  double bytes = 0;        // bytes the calls read beyond their weights (attention: the K and V rows), or 0
};

// Page faults the calling thread has taken so far (getrusage RUSAGE_THREAD; 0 where missing).
int64_t thread_faults() {
#ifdef RUSAGE_THREAD
  struct rusage ru;
  if (getrusage(RUSAGE_THREAD, &ru) == 0) return int64_t(ru.ru_minflt) + int64_t(ru.ru_majflt);
#endif
  return 0;
}

// phase, op, key -> Stat. One mutex: a profiled run is already a diagnostic run, and the lock is
// taken once per op (tens of ops per token), not per element.
struct Table {
  std::mutex mu;
  std::map<std::tuple<std::string, std::string, std::string>, Stat> ops;
  int64_t decode_steps = 0;
  int64_t decode_tokens = 0;
  int64_t decode_faults = 0;  // the stepping thread's page faults inside decode steps, ops included
  std::vector<uint32_t> decode_step_hist;  // each decode step's wall time (ProfileStep), hist_bin
};

// Page faults per op (two getrusage calls around each op) only with EMOLLM_PROFILE_FAULTS=1: in a
// VM a syscall costs a few us, ~500 a decode step. Per step (two calls a step) always.
bool faults_per_op() {
  static const bool on = [] {
    const char* e = std::getenv("EMOLLM_PROFILE_FAULTS");
    return e && *e && std::string(e) != "0";
  }();
  return on;
}

// Thread CPU time per op (CLOCK_THREAD_CPUTIME_ID around each op, the row's cpu_ms) only with
// EMOLLM_PROFILE_CPU=1: a syscall each side in a VM. What makes a profile readable on a shared
// machine: with one thread (the pool runs the op on the calling thread) an op's CPU time is its
// own running time, without the time other processes held the core (wall time counts both).
std::atomic<bool>& cpu_per_op_flag() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("EMOLLM_PROFILE_CPU");
    return e && *e && std::string(e) != "0";
  }()};
  return on;
}
bool cpu_per_op() { return cpu_per_op_flag().load(std::memory_order_relaxed); }
// profile_set_attn_replay: starts as EMOLLM_PROFILE_ATTN_REPLAY (MiB; unset / 0: off).
std::atomic<int64_t>& attn_replay_flag() {
  static std::atomic<int64_t> m{std::max<int64_t>(0, env_int("EMOLLM_PROFILE_ATTN_REPLAY", 0))};
  return m;
}
int64_t attn_replay_mib() { return attn_replay_flag().load(std::memory_order_relaxed); }

enum Phase : int { kOther = 0, kPrefill = 1, kDecode = 2 };
const char* phase_name(int p) { return p == kDecode ? "decode" : p == kPrefill ? "prefill" : "other"; }

// What the thread that runs forward passes is in (ProfileStep): the phase its ops get, the timed
// op seconds of the current step, and the decode loop's bookkeeping between two decode steps.
struct ThreadState {
  int phase = kOther;
  bool in_step = false;
  double ops_s = 0;        // timed backend ops inside the current step
  double self_s = 0;       // the profiler's own bookkeeping inside the current step
  double added_s = 0;      // profile_add seconds since the last decode step ended (sampling)
  bool after_decode = false;
  int64_t f0 = 0;          // the thread's page faults at the step's start
  int64_t ops_f = 0;       // page faults inside the step's timed ops
  double cpu_end = 0;      // thread CPU time at the last decode step's end
  std::chrono::steady_clock::time_point t0, decode_end;
};
thread_local ThreadState tls;

Table& table() {
  static Table* t = new Table();  // never destroyed: the exit hook below may still read it
  return *t;
}

std::atomic<int>& enabled_flag() {
  static std::atomic<int> f{[] {
    const char* e = std::getenv("EMOLLM_PROFILE");
    return (e && *e && std::string(e) != "0") ? 1 : 0;
  }()};
  return f;
}

void write_at_exit() {
  const char* path = std::getenv("EMOLLM_PROFILE_OUT");
  if (!path || !*path) return;
  const std::string j = profile_json();
  if (FILE* f = std::fopen(path, "w")) {
    std::fwrite(j.data(), 1, j.size(), f);
    std::fclose(f);
  }
}

void register_exit_hook() {
  static bool once = [] {
    std::atexit(write_at_exit);
    return true;
  }();
  (void)once;
}

// The K and V rows one attention call reads once: n_kv tokens x n_kv_heads x head_dim elements of
// the cache's type, each (what a decode step's attention must stream; a prefill chunk reads them
// once per query tile, so this is its floor).
double kv_read_bytes(const AttentionParams& p) {
  return 2.0 * double(p.n_kv) * double(p.n_kv_heads) * double(p.head_dim) * double(dtype_row_bytes(p.kv_dtype, 1));
}

std::string shape_key(DType t, int64_t N, int64_t K) {
  return std::string(dtype_name(t)) + " N=" + std::to_string(N) + " K=" + std::to_string(K);
}

// timed: seconds is one call's time (its histogram counts it); false for rows that add counts
// without a time of their own (dispatch: median and p10 read 0 there, "none").
void record_row(int phase, const std::string& op, const std::string& key, double seconds, int64_t calls = 1,
                int64_t faults = 0, double cpu_seconds = 0, double bytes = 0, bool timed = true) {
  Table& t = table();
  std::lock_guard<std::mutex> lk(t.mu);
  Stat& st = t.ops[std::make_tuple(std::string(phase_name(phase)), op, key)];
  st.calls += calls;
  st.seconds += seconds;
  if (timed && calls == 1) {  // one call's time (rows that add many calls at once keep no quantiles)
    if (st.hist.empty()) st.hist.assign(kHistBins, 0);
    ++st.hist[size_t(hist_bin(seconds))];
  }
  st.faults += faults;
  st.cpu_seconds += cpu_seconds;
  st.bytes += bytes;
}

// Times one op, in the phase of the step its thread is in (ProfileStep); the thread-pool
// hand-offs inside it (base/pool_stats.h) also go to a "handoff" row keyed by the op (part of the
// op's time, not in addition to it), and its thread-pool jobs to a "dispatch" row keyed by the op
// (calls = jobs, no time).
// When the call began, before its row's key was built: the key (shape strings, the packed-set
// lookup) is the profiler's bookkeeping, not the forward pass's time between ops. Taken as the
// first clause of a braced Timer{Enter(), op, key...} (evaluated left to right, before the key) or
// as a statement before a key built over several.
struct Enter {
  std::chrono::steady_clock::time_point t = std::chrono::steady_clock::now();
};
class Timer {
 public:
  // bytes: what the call reads besides weights (the row's "bytes": attention's K and V rows), or 0
  Timer(Enter enter, const char* op, std::string key, double bytes = 0)
      : op_(op), bytes_(bytes), phase_(tls.phase), key_(std::move(key)), enter_(enter.t),
        h0_(pool_handoff_seconds_this_thread()), d0_(pool_dispatches_this_thread()), f0_(faults_per_op() ? thread_faults() : 0),
        c0_(cpu_per_op() ? thread_cpu_seconds() : 0), t0_(std::chrono::steady_clock::now()) {}
  ~Timer() {
    const auto t1 = std::chrono::steady_clock::now();
    const double s = std::chrono::duration<double>(t1 - t0_).count();
    const int64_t f = faults_per_op() ? thread_faults() - f0_ : 0;
    const double c = cpu_per_op() ? thread_cpu_seconds() - c0_ : 0;
    const double h = pool_handoff_seconds_this_thread() - h0_;
    const uint64_t d = pool_dispatches_this_thread() - d0_;
    record_row(phase_, op_, key_, s, 1, f, c, bytes_);
    if (h > 0) record_row(phase_, "handoff", op_, h);
    if (d > 0) record_row(phase_, "dispatch", op_, 0.0, int64_t(d), 0, 0, 0, /*timed=*/false);
    // the bookkeeping around the timed call, so the step's "forward" row does not carry it
    if (tls.in_step) {
      tls.ops_s += s;
      tls.ops_f += f;
      tls.self_s += std::chrono::duration<double>(t0_ - enter_).count() +
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    }
  }

 private:
  const char* op_;
  double bytes_;
  int phase_;
  std::string key_;
  std::chrono::steady_clock::time_point enter_;
  double h0_;
  uint64_t d0_;
  int64_t f0_;
  double c0_;
  std::chrono::steady_clock::time_point t0_;
};

// Weights the inner backend packed (Backend::pack_gemm_weight): their gemm rows say "repacked".
struct PackedSet {
  std::mutex mu;
  std::set<const void*> ws;
};
PackedSet& packed_set() {
  static PackedSet* p = new PackedSet();
  return *p;
}
class ProfiledPacked final : public PackedGemmWeight {
 public:
  ProfiledPacked(std::unique_ptr<PackedGemmWeight> in, const void* W) : in_(std::move(in)), W_(W) {
    std::lock_guard<std::mutex> lk(packed_set().mu);
    packed_set().ws.insert(W_);
  }
  ~ProfiledPacked() override {
    std::lock_guard<std::mutex> lk(packed_set().mu);
    packed_set().ws.erase(W_);
  }
  size_t bytes() const override { return in_->bytes(); }

 private:
  std::unique_ptr<PackedGemmWeight> in_;
  const void* W_;
};
bool is_packed(const void* W) {
  std::lock_guard<std::mutex> lk(packed_set().mu);
  return packed_set().ws.count(W) != 0;
}

class ProfilingBackend final : public Backend {
 public:
  explicit ProfilingBackend(std::shared_ptr<Backend> inner) : in_(std::move(inner)) {
    register_exit_hook();
    pool_handoff_timing(true);
  }

  DeviceKind device() const override { return in_->device(); }
  std::string describe() const override { return in_->describe() + " [profiled]"; }
  void* alloc(size_t bytes) override { return in_->alloc(bytes); }
  void free(void* p) override { in_->free(p); }
  void prefault(void* p, size_t bytes) override { in_->prefault(p, bytes); }
  void upload(void* dst, const void* src, size_t bytes) override { in_->upload(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { in_->download(dst, src, bytes); }
  bool uses_host_memory() const override { return in_->uses_host_memory(); }
  const void* gemm_weight_bytes(const void* W, DType wtype, int64_t N, int64_t K) const override {
    return in_->gemm_weight_bytes(W, wtype, N, K);
  }
  std::unique_ptr<PackedGemmWeight> pack_gemm_weight(const void* W, DType wtype, int64_t N, int64_t K,
                                                     GemmRows rows = GemmRows::Any) override {
    auto p = in_->pack_gemm_weight(W, wtype, N, K, rows);
    if (!p) return p;
    return std::make_unique<ProfiledPacked>(std::move(p), W);
  }

  void prefetch(const void* p, size_t bytes) override { in_->prefetch(p, bytes); }
  void gemm(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
            int64_t M, int64_t N, int64_t K) override {
    Timer t{Enter(), "gemm", shape_key(wtype, N, K) + (is_packed(W) ? " repacked" : "")};
    in_->gemm(X, ldx, W, wtype, bias, Y, ldy, M, N, K);
  }
  // One row, keyed by the outputs' shapes together ("q4_0 N=2048+256+256 K=2048"): the inner
  // backend may run them as one dispatch, so they are timed as one op.
  void gemm_multi(const float* X, int64_t ldx, const GemmOutput* outs, int n, int64_t M, int64_t K) override {
    const Enter enter;
    std::string key = n > 0 ? std::string(dtype_name(outs[0].wtype)) + " N=" : std::string("N=");
    bool packed = n > 0;
    for (int j = 0; j < n; ++j) {
      if (j) key += "+";
      if (j && outs[j].wtype != outs[0].wtype) key += std::string(dtype_name(outs[j].wtype)) + ":";
      key += std::to_string(outs[j].N);
      packed = packed && is_packed(outs[j].W);
    }
    Timer t{enter, "gemm", key + " K=" + std::to_string(K) + (packed ? " repacked" : "")};
    in_->gemm_multi(X, ldx, outs, n, M, K);
  }
  void rmsnorm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int64_t rows, int64_t n,
               float eps) override {
    Timer t{Enter(), "rmsnorm", "n=" + std::to_string(n)};
    in_->rmsnorm(x, ldx, w, y, ldy, rows, n, eps);
  }
  void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy, int64_t rows,
                 int64_t n, float eps) override {
    Timer t{Enter(), "layernorm", "n=" + std::to_string(n)};
    in_->layernorm(x, ldx, w, b, y, ldy, rows, n, eps);
  }
  void silu(const float* x, float* y, int64_t n) override {
    Timer t{Enter(), "silu", ""};
    in_->silu(x, y, n);
  }
  void gelu_erf(const float* x, float* y, int64_t n) override {
    Timer t{Enter(), "gelu_erf", ""};
    in_->gelu_erf(x, y, n);
  }
  void quick_gelu(const float* x, float* y, int64_t n) override {
    Timer t{Enter(), "quick_gelu", ""};
    in_->quick_gelu(x, y, n);
  }
  void swiglu(const float* gate, const float* up, float* y, int64_t n) override {
    Timer t{Enter(), "swiglu", ""};
    in_->swiglu(gate, up, y, n);
  }
  void add(const float* a, const float* b, float* y, int64_t n) override {
    Timer t{Enter(), "add", "n=" + std::to_string(n)};  // n: a text layer's residual add tells itself from a tower's
    in_->add(a, b, y, n);
  }
  void add_rmsnorm(float* x, int64_t ldx, const float* d, int64_t ldd, const float* w, float* y, int64_t ldy,
                   int64_t rows, int64_t n, float eps) override {
    Timer t{Enter(), "add_rmsnorm", "n=" + std::to_string(n)};
    in_->add_rmsnorm(x, ldx, d, ldd, w, y, ldy, rows, n, eps);
  }
  void add_layernorm(float* x, int64_t ldx, const float* d, int64_t ldd, const float* w, const float* b, float* y,
                     int64_t ldy, int64_t rows, int64_t n, float eps) override {
    Timer t{Enter(), "add_layernorm", "n=" + std::to_string(n)};
    in_->add_layernorm(x, ldx, d, ldd, w, b, y, ldy, rows, n, eps);
  }
  void rope_pair(float* a, int64_t lda, int64_t heads_a, float* b, int64_t ldb, int64_t heads_b, int64_t n_tokens,
                 const int32_t* positions, const RopeParams& p) override {
    Timer t{Enter(), "rope_pair", "heads=" + std::to_string(heads_a) + "+" + std::to_string(heads_b)};
    in_->rope_pair(a, lda, heads_a, b, ldb, heads_b, n_tokens, positions, p);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    Timer t{Enter(), "copy", ""};
    in_->copy(dst, src, bytes);
  }
  void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    Timer t{Enter(), "softmax", "n=" + std::to_string(n)};
    in_->softmax(x, ldx, y, ldy, rows, n);
  }
  void rope(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
            const RopeParams& p) override {
    Timer t{Enter(), "rope", "heads=" + std::to_string(n_heads)};
    in_->rope(x, ld, n_tokens, n_heads, positions, p);
  }
  void embedding_lookup(const void* table_, DType dtype, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n,
                        float* out, int64_t ld_out) override {
    Timer t{Enter(), "embedding", dtype_name(dtype)};
    in_->embedding_lookup(table_, dtype, vocab, dim, ids, n, out, ld_out);
  }
  void attention(const float* q, const float* k, const float* v, float* out, const AttentionParams& p) override {
    // kv length in buckets of 256 so a decode run's rows stay few
    Timer t{Enter(), "attention",
            "heads=" + std::to_string(p.n_heads) + "/" + std::to_string(p.n_kv_heads) + " d=" +
                std::to_string(p.head_dim) + " kv<=" + std::to_string((p.n_kv + 255) / 256 * 256),
            kv_read_bytes(p)};
    in_->attention(q, k, v, out, p);
  }
  void attention_batch(const AttentionBatchItem* items, int64_t n) override {
    if (n == 0) return;
    const Enter enter;
    int64_t n_kv = 0;
    double bytes = 0;
    for (int64_t i = 0; i < n; ++i) {
      n_kv = std::max(n_kv, items[i].p.n_kv);
      bytes += kv_read_bytes(items[i].p);
    }
    const AttentionParams& p = items[0].p;
    const std::string key = std::to_string(n) + " x heads=" + std::to_string(p.n_heads) + "/" +
                            std::to_string(p.n_kv_heads) + " d=" + std::to_string(p.head_dim) +
                            " kv<=" + std::to_string((n_kv + 255) / 256 * 256);
    {
      Timer t{enter, "attention_batch", key, bytes};
      in_->attention_batch(items, n);
    }
    if (tls.phase == kDecode && attn_replay_mib() > 0) attention_replays(items, n, key, bytes);
  }
  // profile_set_attn_replay (a diagnostic, decode steps only): every decode attention_batch
  // call is run twice more with the same items (same pointers, shapes, pool; each writes the same
  // outputs again): once right away (row "attention_batch replay-warm": the K / V rows as the call
  // left them in the caches) and once after this thread read `MiB` mebibytes of its own buffer (row
  // "attention_batch evict", then "attention_batch replay-cold"). Against the "attention_batch" row
  // (the call as the model makes it, after its q / k / v GEMV): what the step's state costs the
  // call beside the K / V reads themselves. The replays and the eviction add to each step's time.
  void attention_replays(const AttentionBatchItem* items, int64_t n, const std::string& key, double bytes) {
    {
      Timer t{Enter(), "attention_batch replay-warm", key, bytes};
      in_->attention_batch(items, n);
    }
    {
      Timer t{Enter(), "attention_batch evict", std::to_string(attn_replay_mib()) + " MiB"};
      thread_local std::vector<unsigned char> buf;
      if (buf.size() != size_t(attn_replay_mib()) << 20) buf.assign(size_t(attn_replay_mib()) << 20, 1);
      unsigned x = 0;
      for (size_t i = 0; i < buf.size(); i += 64) x += buf[i];
      evict_sink_.fetch_add(x, std::memory_order_relaxed);
    }
    Timer t{Enter(), "attention_batch replay-cold", key, bytes};
    in_->attention_batch(items, n);
  }
  void mvp_projection(const float* X, const void* W1, const float* b1, const void* W2, const float* b2,
                      const float* G, DType wtype, float* Y, const MvpProjectionParams& p) override {
    Timer t{Enter(), "mvp_projection", dtype_name(wtype)};
    in_->mvp_projection(X, W1, b1, W2, b2, G, wtype, Y, p);
  }

  // The ops with defaults in Backend: forwarded so the inner backend's own versions run (and are timed).
  void synchronize() override { in_->synchronize(); }
  bool supports_kv_dtype(DType t) const override { return in_->supports_kv_dtype(t); }
  bool supports_paged_kv() const override { return in_->supports_paged_kv(); }
  void copy_2d(void* dst, size_t ld_dst, const void* src, size_t ld_src, int64_t rows, size_t row_bytes) override {
    Timer t{Enter(), "copy_2d", ""};
    in_->copy_2d(dst, ld_dst, src, ld_src, rows, row_bytes);
  }
  void extract_patches(const float* images, float* cols, int64_t ld_cols, const PatchParams& p) override {
    Timer t{Enter(), "extract_patches", ""};
    in_->extract_patches(images, cols, ld_cols, p);
  }
  void convert(const void* src, DType src_type, void* dst, DType dst_type, int64_t n) override {
    Timer t{Enter(), "convert", std::string(dtype_name(src_type)) + "->" + dtype_name(dst_type)};
    in_->convert(src, src_type, dst, dst_type, n);
  }
  void add_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    Timer t{Enter(), "add_row", "n=" + std::to_string(n)};
    in_->add_row(x, ldx, v, y, ldy, rows, n);
  }
  void mul_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    Timer t{Enter(), "mul_row", "n=" + std::to_string(n)};
    in_->mul_row(x, ldx, v, y, ldy, rows, n);
  }
  void mul_row_add(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n,
                   bool accumulate) override {
    Timer t{Enter(), "mul_row_add", "n=" + std::to_string(n)};
    in_->mul_row_add(x, ldx, v, y, ldy, rows, n, accumulate);
  }
  void scale(const float* x, float s, float* y, int64_t n) override {
    Timer t{Enter(), "scale", ""};
    in_->scale(x, s, y, n);
  }

  // ---- training (the trainer's backward ops)
  void gemm_backward_x(const float* dY, int64_t lddy, const void* W, DType wtype, float* dX, int64_t lddx, int64_t M,
                       int64_t N, int64_t K, bool accumulate) override {
    Timer t{Enter(), "gemm_backward_x", std::string(dtype_name(wtype)) + " " + std::to_string(N) + "x" + std::to_string(K)};
    in_->gemm_backward_x(dY, lddy, W, wtype, dX, lddx, M, N, K, accumulate);
  }
  void rmsnorm_backward(const float* x, int64_t ldx, const float* w, const float* dy, int64_t lddy, float* dx,
                        int64_t lddx, int64_t rows, int64_t n, float eps, bool accumulate) override {
    Timer t{Enter(), "rmsnorm_backward", "n=" + std::to_string(n)};
    in_->rmsnorm_backward(x, ldx, w, dy, lddy, dx, lddx, rows, n, eps, accumulate);
  }
  void swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup,
                       int64_t n) override {
    Timer t{Enter(), "swiglu_backward", ""};
    in_->swiglu_backward(gate, up, dy, dgate, dup, n);
  }
  void rope_backward(float* dx, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
                     const RopeParams& p) override {
    Timer t{Enter(), "rope_backward", ""};
    in_->rope_backward(dx, ld, n_tokens, n_heads, positions, p);
  }
  void attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                          const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p) override {
    Timer t{Enter(), "attention_backward", ""};
    in_->attention_backward(q, k, v, out, dout, lse, dq, dk, dv, p);
  }
  double cross_entropy(const float* logits, int64_t ld, const int32_t* targets, int64_t rows, int64_t V, float scale,
                       float* dlogits) override {
    Timer t{Enter(), "cross_entropy", "V=" + std::to_string(V)};
    return in_->cross_entropy(logits, ld, targets, rows, V, scale, dlogits);
  }

 private:
  std::shared_ptr<Backend> in_;
  std::atomic<unsigned> evict_sink_{0};  // keeps attention_replays' eviction reads
};

void json_str(std::string& s, const std::string& v) {
  s += '"';
  for (char c : v) {
    if (c == '"' || c == '\\') s += '\\';
    s += c;
  }
  s += '"';
}

}  // namespace

void profile_add(bool decode, const char* op, const std::string& key, double seconds) {
  if (!profile_enabled()) return;
  tls.added_s += seconds;
  record_row(decode ? kDecode : tls.phase, op, key, seconds);
}

ProfileStep::ProfileStep(bool decode, int64_t tokens) : on_(profile_enabled() && !tls.in_step) {
  if (!on_) return;
  const auto now = std::chrono::steady_clock::now();
  const double cpu = thread_cpu_seconds();
  if (decode && tls.after_decode)
    record_row(kDecode, "loop", "between steps",
               std::max(0.0, std::chrono::duration<double>(now - tls.decode_end).count() - tls.added_s), 1, 0,
               std::max(0.0, cpu - tls.cpu_end - tls.added_s));
  tls.after_decode = false;
  tls.in_step = true;
  tls.phase = decode ? kDecode : kPrefill;
  tls.ops_s = 0;
  tls.self_s = 0;
  tls.ops_f = 0;
  tls.f0 = thread_faults();
  tls.t0 = now;
  if (decode) {
    Table& t = table();
    std::lock_guard<std::mutex> lk(t.mu);
    t.decode_steps += 1;
    t.decode_tokens += tokens;
  }
}

ProfileStep::~ProfileStep() {
  if (!on_) return;
  const auto now = std::chrono::steady_clock::now();
  const double wall = std::chrono::duration<double>(now - tls.t0).count();
  const int64_t faults = thread_faults() - tls.f0;
  record_row(tls.phase, "forward", "between ops", std::max(0.0, wall - tls.ops_s - tls.self_s), 1,
             faults_per_op() ? faults - tls.ops_f : 0);
  if (tls.phase == kDecode) {
    Table& t = table();
    std::lock_guard<std::mutex> lk(t.mu);
    t.decode_faults += faults;
    if (t.decode_step_hist.empty()) t.decode_step_hist.assign(kHistBins, 0);
    ++t.decode_step_hist[size_t(hist_bin(wall))];
  }
  record_row(tls.phase, "profiler", "bookkeeping", tls.self_s, 1);
  tls.after_decode = tls.phase == kDecode;
  tls.decode_end = std::chrono::steady_clock::now();
  tls.cpu_end = thread_cpu_seconds();
  tls.added_s = 0;
  tls.in_step = false;
  tls.phase = kOther;
}

bool profile_enabled() { return enabled_flag().load(std::memory_order_relaxed) != 0; }
void profile_set_enabled(bool on) { enabled_flag().store(on ? 1 : 0, std::memory_order_relaxed); }

void profile_reset() {
  Table& t = table();
  std::lock_guard<std::mutex> lk(t.mu);
  t.ops.clear();
  t.decode_steps = 0;
  t.decode_tokens = 0;
  t.decode_faults = 0;
  t.decode_step_hist.clear();
}

void profile_set_attn_replay(int64_t mib) { attn_replay_flag().store(std::max<int64_t>(0, mib), std::memory_order_relaxed); }
void profile_set_cpu_per_op(bool on) { cpu_per_op_flag().store(on, std::memory_order_relaxed); }

std::string profile_json() {
  Table& t = table();
  std::vector<std::pair<std::tuple<std::string, std::string, std::string>, Stat>> rows;
  int64_t steps, tokens, faults;
  std::vector<uint32_t> step_hist;
  {
    std::lock_guard<std::mutex> lk(t.mu);
    rows.assign(t.ops.begin(), t.ops.end());
    steps = t.decode_steps;
    tokens = t.decode_tokens;
    faults = t.decode_faults;
    step_hist = t.decode_step_hist;
  }
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
    if (std::get<0>(a.first) != std::get<0>(b.first)) return std::get<0>(a.first) < std::get<0>(b.first);
    return a.second.seconds > b.second.seconds;
  });
  std::string s = "{\"decode_steps\":" + std::to_string(steps) + ",\"decode_tokens\":" + std::to_string(tokens) +
                  ",\"decode_faults\":" + std::to_string(faults);
  char buf[256];
  std::snprintf(buf, sizeof buf, ",\"decode_step_p10_us\":%.3f,\"decode_step_median_us\":%.3f,\"ops\":[",
                hist_quantile(step_hist, 0.1) * 1e6, hist_quantile(step_hist, 0.5) * 1e6);
  s += buf;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i) s += ',';
    s += "{\"phase\":";
    json_str(s, std::get<0>(rows[i].first));
    s += ",\"op\":";
    json_str(s, std::get<1>(rows[i].first));
    s += ",\"key\":";
    json_str(s, std::get<2>(rows[i].first));
    const Stat& st = rows[i].second;
    std::snprintf(buf, sizeof buf,
                  ",\"calls\":%lld,\"total_ms\":%.4f,\"mean_us\":%.3f,\"p10_us\":%.3f,\"median_us\":%.3f,"
                  "\"faults\":%lld,\"cpu_ms\":%.4f,\"bytes\":%.0f}",
                  (long long)st.calls, st.seconds * 1e3, st.calls ? st.seconds * 1e6 / double(st.calls) : 0.0,
                  hist_quantile(st.hist, 0.1) * 1e6, hist_quantile(st.hist, 0.5) * 1e6, (long long)st.faults,
                  st.cpu_seconds * 1e3, st.bytes);
    s += buf;
  }
  s += "]}";
  return s;
}

std::shared_ptr<Backend> make_profiling_backend(std::shared_ptr<Backend> inner) {
  return std::make_shared<ProfilingBackend>(std::move(inner));
}

}  // namespace emollm
