#include "core/profiling_backend.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <tuple>
#include <vector>

#include "base/pool_stats.h"

namespace emollm {
namespace {

struct Stat {
  int64_t calls = 0;
  double seconds = 0;
};

// phase, op, key -> Stat. One mutex: a profiled run is already a diagnostic run, and the lock is
// taken once per op (tens of ops per token), not per element.
struct Table {
  std::mutex mu;
  std::map<std::tuple<std::string, std::string, std::string>, Stat> ops;
  int64_t decode_steps = 0;
};

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

std::string shape_key(DType t, int64_t N, int64_t K) {
  return std::string(dtype_name(t)) + " N=" + std::to_string(N) + " K=" + std::to_string(K);
}

void record_row(bool decode, const std::string& op, const std::string& key, double seconds, int64_t calls = 1) {
  Table& t = table();
  std::lock_guard<std::mutex> lk(t.mu);
  Stat& st = t.ops[std::make_tuple(std::string(decode ? "decode" : "prefill"), op, key)];
  st.calls += calls;
  st.seconds += seconds;
}

// Times one op; the thread-pool hand-offs inside it (base/pool_stats.h) also go to a "handoff"
// row keyed by the op (part of the op's time, not in addition to it), and its thread-pool jobs
// to a "dispatch" row keyed by the op (calls = jobs, no time).
class Timer {
 public:
  Timer(const char* op, bool one_row, std::string key) : op_(op), decode_(one_row), key_(std::move(key)),
        h0_(pool_handoff_seconds_this_thread()), d0_(pool_dispatches_this_thread()),
        t0_(std::chrono::steady_clock::now()) {}
  ~Timer() {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const double h = pool_handoff_seconds_this_thread() - h0_;
    const uint64_t d = pool_dispatches_this_thread() - d0_;
    record_row(decode_, op_, key_, s);
    if (h > 0) record_row(decode_, "handoff", op_, h);
    if (d > 0) record_row(decode_, "dispatch", op_, 0.0, int64_t(d));
  }

 private:
  const char* op_;
  bool decode_;
  std::string key_;
  double h0_;
  uint64_t d0_;
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

  void gemm(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
            int64_t M, int64_t N, int64_t K) override {
    Timer t("gemm", M == 1, shape_key(wtype, N, K) + (is_packed(W) ? " repacked" : ""));
    in_->gemm(X, ldx, W, wtype, bias, Y, ldy, M, N, K);
  }
  // One row, keyed by the outputs' shapes together ("q4_0 N=2048+256+256 K=2048"): the inner
  // backend may run them as one dispatch, so they are timed as one op.
  void gemm_multi(const float* X, int64_t ldx, const GemmOutput* outs, int n, int64_t M, int64_t K) override {
    std::string key = n > 0 ? std::string(dtype_name(outs[0].wtype)) + " N=" : std::string("N=");
    bool packed = n > 0;
    for (int j = 0; j < n; ++j) {
      if (j) key += "+";
      if (j && outs[j].wtype != outs[0].wtype) key += std::string(dtype_name(outs[j].wtype)) + ":";
      key += std::to_string(outs[j].N);
      packed = packed && is_packed(outs[j].W);
    }
    Timer t("gemm", M == 1, key + " K=" + std::to_string(K) + (packed ? " repacked" : ""));
    in_->gemm_multi(X, ldx, outs, n, M, K);
  }
  void rmsnorm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int64_t rows, int64_t n,
               float eps) override {
    Timer t("rmsnorm", rows == 1, "n=" + std::to_string(n));
    in_->rmsnorm(x, ldx, w, y, ldy, rows, n, eps);
  }
  void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy, int64_t rows,
                 int64_t n, float eps) override {
    Timer t("layernorm", rows == 1, "n=" + std::to_string(n));
    in_->layernorm(x, ldx, w, b, y, ldy, rows, n, eps);
  }
  void silu(const float* x, float* y, int64_t n) override {
    Timer t("silu", false, "");
    in_->silu(x, y, n);
  }
  void gelu_erf(const float* x, float* y, int64_t n) override {
    Timer t("gelu_erf", false, "");
    in_->gelu_erf(x, y, n);
  }
  void quick_gelu(const float* x, float* y, int64_t n) override {
    Timer t("quick_gelu", false, "");
    in_->quick_gelu(x, y, n);
  }
  // Elementwise ops see only n: a call of at most one hidden row is counted as decode.
  void swiglu(const float* gate, const float* up, float* y, int64_t n) override {
    Timer t("swiglu", n <= 65536, "");
    in_->swiglu(gate, up, y, n);
  }
  void add(const float* a, const float* b, float* y, int64_t n) override {
    Timer t("add", n <= 16384, "n=" + std::to_string(n));  // n: a text layer's residual add tells itself from a tower's
    in_->add(a, b, y, n);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    Timer t("copy", bytes <= 65536, "");
    in_->copy(dst, src, bytes);
  }
  void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    Timer t("softmax", rows == 1, "n=" + std::to_string(n));
    in_->softmax(x, ldx, y, ldy, rows, n);
  }
  void rope(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
            const RopeParams& p) override {
    Timer t("rope", n_tokens == 1, "heads=" + std::to_string(n_heads));
    in_->rope(x, ld, n_tokens, n_heads, positions, p);
  }
  void embedding_lookup(const void* table_, DType dtype, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n,
                        float* out, int64_t ld_out) override {
    if (n == 1) {
      Table& t = table();
      std::lock_guard<std::mutex> lk(t.mu);
      t.decode_steps++;
    }
    Timer t("embedding", n == 1, dtype_name(dtype));
    in_->embedding_lookup(table_, dtype, vocab, dim, ids, n, out, ld_out);
  }
  void attention(const float* q, const float* k, const float* v, float* out, const AttentionParams& p) override {
    // kv length in buckets of 256 so a decode run's rows stay few
    Timer t("attention", p.n_q == 1, "heads=" + std::to_string(p.n_heads) + "/" + std::to_string(p.n_kv_heads) +
                                         " d=" + std::to_string(p.head_dim) + " kv<=" +
                                         std::to_string((p.n_kv + 255) / 256 * 256));
    in_->attention(q, k, v, out, p);
  }
  void attention_batch(const AttentionBatchItem* items, int64_t n) override {
    if (n == 0) return;
    int64_t n_kv = 0;
    bool decode = true;  // every item one query row (a decode step of each sequence)
    for (int64_t i = 0; i < n; ++i) n_kv = std::max(n_kv, items[i].p.n_kv), decode = decode && items[i].p.n_q == 1;
    const AttentionParams& p = items[0].p;
    Timer t("attention_batch", decode, std::to_string(n) + " x heads=" + std::to_string(p.n_heads) + "/" +
                                          std::to_string(p.n_kv_heads) + " d=" + std::to_string(p.head_dim) +
                                          " kv<=" + std::to_string((n_kv + 255) / 256 * 256));
    in_->attention_batch(items, n);
  }
  void mvp_projection(const float* X, const void* W1, const float* b1, const void* W2, const float* b2,
                      const float* G, DType wtype, float* Y, const MvpProjectionParams& p) override {
    Timer t("mvp_projection", p.tokens == 1, dtype_name(wtype));
    in_->mvp_projection(X, W1, b1, W2, b2, G, wtype, Y, p);
  }

  // The ops with defaults in Backend: forwarded so the inner backend's own versions run (and are timed).
  void synchronize() override { in_->synchronize(); }
  bool supports_kv_dtype(DType t) const override { return in_->supports_kv_dtype(t); }
  bool supports_paged_kv() const override { return in_->supports_paged_kv(); }
  void copy_2d(void* dst, size_t ld_dst, const void* src, size_t ld_src, int64_t rows, size_t row_bytes) override {
    Timer t("copy_2d", rows == 1, "");
    in_->copy_2d(dst, ld_dst, src, ld_src, rows, row_bytes);
  }
  void extract_patches(const float* images, float* cols, int64_t ld_cols, const PatchParams& p) override {
    Timer t("extract_patches", false, "");
    in_->extract_patches(images, cols, ld_cols, p);
  }
  void convert(const void* src, DType src_type, void* dst, DType dst_type, int64_t n) override {
    Timer t("convert", n <= 16384, std::string(dtype_name(src_type)) + "->" + dtype_name(dst_type));
    in_->convert(src, src_type, dst, dst_type, n);
  }
  void add_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    Timer t("add_row", rows == 1, "n=" + std::to_string(n));
    in_->add_row(x, ldx, v, y, ldy, rows, n);
  }
  void mul_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    Timer t("mul_row", rows == 1, "n=" + std::to_string(n));
    in_->mul_row(x, ldx, v, y, ldy, rows, n);
  }
  void mul_row_add(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n,
                   bool accumulate) override {
    Timer t("mul_row_add", rows == 1, "n=" + std::to_string(n));
    in_->mul_row_add(x, ldx, v, y, ldy, rows, n, accumulate);
  }
  void scale(const float* x, float s, float* y, int64_t n) override {
    Timer t("scale", n <= 16384, "");
    in_->scale(x, s, y, n);
  }

  // ---- training (the trainer's backward ops; "decode" never: no backward runs in a decode step)
  void gemm_backward_x(const float* dY, int64_t lddy, const void* W, DType wtype, float* dX, int64_t lddx, int64_t M,
                       int64_t N, int64_t K, bool accumulate) override {
    Timer t("gemm_backward_x", false, std::string(dtype_name(wtype)) + " " + std::to_string(N) + "x" + std::to_string(K));
    in_->gemm_backward_x(dY, lddy, W, wtype, dX, lddx, M, N, K, accumulate);
  }
  void rmsnorm_backward(const float* x, int64_t ldx, const float* w, const float* dy, int64_t lddy, float* dx,
                        int64_t lddx, int64_t rows, int64_t n, float eps, bool accumulate) override {
    Timer t("rmsnorm_backward", false, "n=" + std::to_string(n));
    in_->rmsnorm_backward(x, ldx, w, dy, lddy, dx, lddx, rows, n, eps, accumulate);
  }
  void swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup,
                       int64_t n) override {
    Timer t("swiglu_backward", false, "");
    in_->swiglu_backward(gate, up, dy, dgate, dup, n);
  }
  void rope_backward(float* dx, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
                     const RopeParams& p) override {
    Timer t("rope_backward", false, "");
    in_->rope_backward(dx, ld, n_tokens, n_heads, positions, p);
  }
  void attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                          const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p) override {
    Timer t("attention_backward", false, "");
    in_->attention_backward(q, k, v, out, dout, lse, dq, dk, dv, p);
  }
  double cross_entropy(const float* logits, int64_t ld, const int32_t* targets, int64_t rows, int64_t V, float scale,
                       float* dlogits) override {
    Timer t("cross_entropy", false, "V=" + std::to_string(V));
    return in_->cross_entropy(logits, ld, targets, rows, V, scale, dlogits);
  }

 private:
  std::shared_ptr<Backend> in_;
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
  if (profile_enabled()) record_row(decode, op, key, seconds);
}

bool profile_enabled() { return enabled_flag().load(std::memory_order_relaxed) != 0; }
void profile_set_enabled(bool on) { enabled_flag().store(on ? 1 : 0, std::memory_order_relaxed); }

void profile_reset() {
  Table& t = table();
  std::lock_guard<std::mutex> lk(t.mu);
  t.ops.clear();
  t.decode_steps = 0;
}

std::string profile_json() {
  Table& t = table();
  std::vector<std::pair<std::tuple<std::string, std::string, std::string>, Stat>> rows;
  int64_t steps;
  {
    std::lock_guard<std::mutex> lk(t.mu);
    rows.assign(t.ops.begin(), t.ops.end());
    steps = t.decode_steps;
  }
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) {
    if (std::get<0>(a.first) != std::get<0>(b.first)) return std::get<0>(a.first) < std::get<0>(b.first);
    return a.second.seconds > b.second.seconds;
  });
  std::string s = "{\"decode_steps\":" + std::to_string(steps) + ",\"ops\":[";
  char buf[96];
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i) s += ',';
    s += "{\"phase\":";
    json_str(s, std::get<0>(rows[i].first));
    s += ",\"op\":";
    json_str(s, std::get<1>(rows[i].first));
    s += ",\"key\":";
    json_str(s, std::get<2>(rows[i].first));
    const Stat& st = rows[i].second;
    std::snprintf(buf, sizeof buf, ",\"calls\":%lld,\"total_ms\":%.4f,\"mean_us\":%.3f}", (long long)st.calls,
                  st.seconds * 1e3, st.calls ? st.seconds * 1e6 / double(st.calls) : 0.0);
    s += buf;
  }
  s += "]}";
  return s;
}

std::shared_ptr<Backend> make_profiling_backend(std::shared_ptr<Backend> inner) {
  return std::make_shared<ProfilingBackend>(std::move(inner));
}

}  // namespace emollm
