// Kernel entry points for JavaScript: used by the JS tests and by users who microbenchmark or
// compose kernels from Node. Inputs are copied into native memory before the work is queued,
// so a caller may reuse or transfer its buffers while the promise is pending. Results go into a
// Float32Array made on the JavaScript thread, or the caller's `options.out` (napi_util.h
// caller_out: checked, claimed until the call settles), written in place and returned.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <vector>

#include "base/arena.h"
#include "base/cpu_features.h"
#include "base/dtype.h"
#include "base/thread_clock.h"
#include "base/thread_pool.h"
#include "bindings.h"
#include "core/backend.h"
#include "cpu/kernels.h"
#include "cpu/read_probe.h"
#include "napi_util.h"

namespace emollm::addon {
namespace {

// Standalone kernel calls compute on the runtime's default pool (configure({ threads })).
std::shared_ptr<ThreadPool> shared_pool() { return Runtime::instance().pool(); }

DType arg_dtype(const Napi::CallbackInfo& info, size_t i) {
  std::string name = arg_string(info, i, "dtype");
  DType t;
  if (!dtype_from_name(name.c_str(), &t)) throw_invalid(info.Env(), "unknown dtype \"" + name + "\" (f32, f16, bf16, q8_0, q4_0)");
  return t;
}

// Bytes of any TypedArray / Buffer / ArrayBuffer argument.
std::vector<uint8_t> arg_bytes(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() > i && info[i].IsTypedArray()) {
    auto ta = info[i].As<Napi::TypedArray>();
    const uint8_t* p = typed_array_data(ta);
    return std::vector<uint8_t>(p, p + ta.ByteLength());
  }
  if (info.Length() > i && info[i].IsArrayBuffer()) {
    auto ab = info[i].As<Napi::ArrayBuffer>();
    const uint8_t* p = static_cast<const uint8_t*>(ab.Data());
    return std::vector<uint8_t>(p, p + ab.ByteLength());
  }
  throw_invalid(info.Env(), std::string(what) + " must be a TypedArray, Buffer or ArrayBuffer");
}

std::vector<float> arg_floats(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw_invalid(info.Env(), std::string(what) + " must be a Float32Array");
  auto ta = info[i].As<Napi::Float32Array>();
  return std::vector<float>(ta.Data(), ta.Data() + ta.ElementLength());
}

// Host arrays in, host arrays out, computed on any backend: on one with host memory the host
// pointers are used as they are; on a device the inputs are uploaded to buffers of a private
// context (its own stream) and the outputs downloaded when done. Used by the kernel bindings
// when a `device` is given, so the same call runs on the CPU or a GPU.
class Staging {
 public:
  explicit Staging(Backend& be) : be_(be) {
    if (!be_.uses_host_memory()) {
      ctx_ = std::make_unique<BackendContext>(be_);
      scope_ = std::make_unique<ContextScope>(*ctx_);
    }
  }
  ~Staging() {
    scope_.reset();  // unbind before the buffers (freed on this thread) and the context go
  }
  const float* in(const std::vector<float>& h) { return static_cast<const float*>(in_bytes(h.data(), h.size() * 4)); }
  const void* in_bytes(const void* host, size_t bytes) {
    if (!bytes) return nullptr;
    if (be_.uses_host_memory()) return host;
    bufs_.emplace_back(be_, bytes);
    be_.upload(bufs_.back().data(), host, bytes);
    return bufs_.back().data();
  }
  // `n` floats at `host` (the result array): written in place on a backend with host memory
  float* out(float* host, size_t n) {
    if (be_.uses_host_memory()) return host;
    bufs_.emplace_back(be_, n * 4);
    outs_.push_back({host, bufs_.back().data(), n * 4});
    return static_cast<float*>(bufs_.back().data());
  }
  // Copies the outputs back (download waits for the context's stream).
  void finish() {
    for (const auto& o : outs_) be_.download(o.host, o.dev, o.bytes);
  }

 private:
  struct Out {
    void* host;
    const void* dev;
    size_t bytes;
  };
  Backend& be_;
  std::unique_ptr<BackendContext> ctx_;
  std::unique_ptr<ContextScope> scope_;
  std::list<BackendBuffer> bufs_;
  std::vector<Out> outs_;
};

// The backend of an optional `{ device }` option at argument i; null when no device was named
// (the call then runs the CPU kernels on the runtime's default pool, as before).
std::shared_ptr<Backend> opt_backend(const Napi::CallbackInfo& info, size_t i) {
  Napi::Object o = opt_object(info, i, "options");
  if (!has_opt(o, "device")) return nullptr;
  RuntimeOptions ro = read_runtime_options(info.Env(), o);
  try {
    return Runtime::instance().backend(ro);
  } catch (const emollm::Error& e) {
    throw make_js_error(info.Env(), e);
  }
}

class GemmWorker final : public PromiseWorker {
 public:
  GemmWorker(Napi::Env env, std::vector<float> x, std::vector<uint8_t> w, DType wtype, std::vector<float> bias,
             int64_t M, int64_t N, int64_t K, std::shared_ptr<Backend> be, Napi::Float32Array out, OutClaim& claim)
      : PromiseWorker(env), x_(std::move(x)), w_(std::move(w)), bias_(std::move(bias)), wtype_(wtype), M_(M), N_(N), K_(K),
        be_(std::move(be)) {
    // Y, written by the worker in place (no vector filled, then copied into a fresh array on the
    // event loop), every float of it (a fresh Y is not zeroed first)
    y_.set(env, size_t(M_ * N_), out, claim, ResultFill::kWrittenWhole);
  }

 protected:
  void Run() override {
    if (!be_) {
      gemm(x_.data(), K_, w_.data(), wtype_, bias_.empty() ? nullptr : bias_.data(), y_.data, N_, M_, N_, K_,
           shared_pool().get());
      return;
    }
    Staging st(*be_);
    be_->gemm(st.in(x_), K_, st.in_bytes(w_.data(), w_.size()), wtype_, bias_.empty() ? nullptr : st.in(bias_),
              st.out(y_.data, y_.n), N_, M_, N_, K_);
    st.finish();
  }
  Napi::Value Resolve(Napi::Env env) override { return y_.ref.Value(); }
  void Finish(Napi::Env env) override { y_.settle(env, js_error_, "gemm", run_failed()); }

 private:
  std::vector<float> x_;
  std::vector<uint8_t> w_;
  std::vector<float> bias_;
  JsResultArray y_;
  DType wtype_;
  int64_t M_, N_, K_;
  std::shared_ptr<Backend> be_;
};

// gemm(x: Float32Array [M*K], w: bytes [N rows of K in wtype], wtype, bias: Float32Array|null, M, N, K,
//      options?: { device?: 'cpu' | 'cuda' | 'cuda:N', out?: Float32Array [M*N] })
//   -> Promise<Float32Array [M*N]>   (Y = X W^T + bias; on that device's backend when one is named;
//      into `out`, which is returned, when given)
Napi::Value Gemm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto x = arg_floats(info, 0, "x");
  auto w = arg_bytes(info, 1, "w");
  DType wtype = arg_dtype(info, 2);
  std::vector<float> bias;
  if (info.Length() > 3 && !info[3].IsNull() && !info[3].IsUndefined()) bias = arg_floats(info, 3, "bias");
  const int64_t M = arg_int(info, 4, "M"), N = arg_int(info, 5, "N"), K = arg_int(info, 6, "K");
  if (M <= 0 || N <= 0 || K <= 0) throw_invalid(env, "M, N and K must be positive");
  if (K % dtype_block_elems(wtype) != 0)
    throw_invalid(env, "K=" + std::to_string(K) + " is not a multiple of the " + dtype_name(wtype) + " block size");
  if (int64_t(x.size()) != M * K)
    throw_invalid(env, "x has " + std::to_string(x.size()) + " elements, expected M*K = " + std::to_string(M * K));
  const size_t w_expected = size_t(N) * dtype_row_bytes(wtype, K);
  if (w.size() != w_expected)
    throw_invalid(env, "w has " + std::to_string(w.size()) + " bytes, expected " + std::to_string(w_expected) +
                           " for " + std::to_string(N) + "x" + std::to_string(K) + " " + dtype_name(wtype));
  if (!bias.empty() && int64_t(bias.size()) != N)
    throw_invalid(env, "bias has " + std::to_string(bias.size()) + " elements, expected N = " + std::to_string(N));
  OutClaim claim;  // released here if anything below throws before the worker takes it
  const Napi::Float32Array out = caller_out(env, opt_object(info, 7, "options"), size_t(M * N), "gemm",
                                            {{"x", info[0]}, {"w", info[1]}, {"bias", info[3]}}, claim, "M * N");
  std::shared_ptr<Backend> be = opt_backend(info, 7);
  auto* worker = new_worker<GemmWorker>(env, "gemm", env, std::move(x), std::move(w), wtype, std::move(bias), M, N, K,
                                        std::move(be), out, claim);
  return worker->claim_and_queue();
}

// A Float32Array argument that may be null / undefined (empty vector then).
std::vector<float> arg_floats_opt(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || info[i].IsNull() || info[i].IsUndefined()) return {};
  return arg_floats(info, i, what);
}
int64_t param_int(Napi::Env env, const Napi::Object& o, const char* key, int64_t lo, int64_t hi) {
  if (!has_opt(o, key)) throw_invalid(env, std::string("params.") + key + " is required");
  return opt_int(env, o, key, 0, lo, hi);
}
void check_len(Napi::Env env, size_t got, int64_t want, const char* what) {
  if (int64_t(got) != want)
    throw_invalid(env, std::string(what) + " has " + std::to_string(got) + " elements, expected " + std::to_string(want));
}

// A backend op over staged host arrays, on a worker thread. Its result array (JsResultArray::set:
// the caller's `out` or one made here, on the JavaScript thread) is written by the op in place
// (Staging::out), every float of it (a fresh one is not zeroed first).
class BackendOpWorker final : public PromiseWorker {
 public:
  using Op = std::function<void(Backend&, Staging&, float* out, size_t n)>;
  BackendOpWorker(Napi::Env env, const char* what, std::shared_ptr<Backend> be, size_t out_elems, Napi::Float32Array out,
                  OutClaim& claim, Op op)
      : PromiseWorker(env), what_(what), be_(std::move(be)), op_(std::move(op)) {
    out_.set(env, out_elems, out, claim, ResultFill::kWrittenWhole);
  }

 protected:
  void Run() override {
    Staging st(*be_);
    op_(*be_, st, out_.data, out_.n);
    st.finish();
  }
  Napi::Value Resolve(Napi::Env env) override { return out_.ref.Value(); }
  void Finish(Napi::Env env) override { out_.settle(env, js_error_, what_, run_failed()); }

 private:
  const char* what_;
  std::shared_ptr<Backend> be_;
  JsResultArray out_;
  Op op_;
};

std::shared_ptr<Backend> backend_or_default(const Napi::CallbackInfo& info, size_t i) {
  std::shared_ptr<Backend> be = opt_backend(info, i);
  if (be) return be;
  try {
    return Runtime::instance().backend(RuntimeOptions{});
  } catch (const emollm::Error& e) {
    throw make_js_error(info.Env(), e);
  }
}

// attention(q, k, v: Float32Array, params: { nQ, nKv, nHeads, nKvHeads, headDim, causal?, qPos0?, scale? },
//           options?: { device?, out?: Float32Array }) -> Promise<Float32Array [nQ * nHeads * headDim]>
// Dense rows: q/out [nQ, nHeads*headDim], k/v [nKv, nKvHeads*headDim] (kernels.h attention()).
Napi::Value Attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto q = arg_floats(info, 0, "q");
  auto k = arg_floats(info, 1, "k");
  auto v = arg_floats(info, 2, "v");
  Napi::Object po = opt_object(info, 3, "params");
  AttentionParams p;
  p.n_q = param_int(env, po, "nQ", 1, int64_t(1) << 30);
  p.n_kv = param_int(env, po, "nKv", 1, int64_t(1) << 30);
  p.n_heads = param_int(env, po, "nHeads", 1, 65535);
  p.n_kv_heads = param_int(env, po, "nKvHeads", 1, 65535);
  p.head_dim = param_int(env, po, "headDim", 1, 4096);
  p.causal = has_opt(po, "causal") ? po.Get("causal").ToBoolean().Value() : true;
  p.q_pos0 = opt_int(env, po, "qPos0", 0, 0, int64_t(1) << 30);
  p.scale = float(opt_number(env, po, "scale", 0.0));
  if (p.n_heads % p.n_kv_heads != 0) throw_invalid(env, "params.nHeads must be a multiple of params.nKvHeads");
  if (p.causal && p.n_kv < p.q_pos0 + p.n_q) throw_invalid(env, "causal attention needs nKv >= qPos0 + nQ");
  p.ldq = p.ldo = p.n_heads * p.head_dim;
  p.ldk = p.ldv = p.n_kv_heads * p.head_dim;
  check_len(env, q.size(), p.n_q * p.ldq, "q");
  check_len(env, k.size(), p.n_kv * p.ldk, "k");
  check_len(env, v.size(), p.n_kv * p.ldv, "v");
  OutClaim claim;
  const Napi::Float32Array out = caller_out(env, opt_object(info, 4, "options"), size_t(p.n_q * p.ldo), "attention",
                                            {{"q", info[0]}, {"k", info[1]}, {"v", info[2]}}, claim, "nQ * nHeads * headDim");
  std::shared_ptr<Backend> be = backend_or_default(info, 4);
  auto* worker = new_worker<BackendOpWorker>(env, "attention", env, "attention", be, size_t(p.n_q * p.ldo), out, claim,
                                             [q = std::move(q), k = std::move(k), v = std::move(v), p](
                                                 Backend& b, Staging& st, float* out, size_t n) {
                                               b.attention(st.in(q), st.in(k), st.in(v), st.out(out, n), p);
                                             });
  return worker->claim_and_queue();
}

// mvpProjection(x: Float32Array [tokens*dIn], w1: bytes [nHeads*dHid rows of dIn], b1: Float32Array|null,
//               w2: bytes [nHeads*dOut rows of dHid], b2: Float32Array|null, g: Float32Array [nHeads*dOut],
//               wtype, params: { tokens, dIn, dHid, dOut, nHeads }, options?: { device?, out?: Float32Array })
//   -> Promise<Float32Array [tokens*dOut]>   (kernels.h mvp_projection)
Napi::Value MvpProjection(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto x = arg_floats(info, 0, "x");
  auto w1 = arg_bytes(info, 1, "w1");
  auto b1 = arg_floats_opt(info, 2, "b1");
  auto w2 = arg_bytes(info, 3, "w2");
  auto b2 = arg_floats_opt(info, 4, "b2");
  auto g = arg_floats(info, 5, "g");
  const DType wt = arg_dtype(info, 6);
  Napi::Object po = opt_object(info, 7, "params");
  MvpProjectionParams p;
  p.tokens = param_int(env, po, "tokens", 1, int64_t(1) << 30);
  p.d_in = param_int(env, po, "dIn", 1, int64_t(1) << 20);
  p.d_hid = param_int(env, po, "dHid", 1, int64_t(1) << 20);
  p.d_out = param_int(env, po, "dOut", 1, int64_t(1) << 20);
  p.n_heads = param_int(env, po, "nHeads", 1, 64);
  const int64_t be_in = dtype_block_elems(wt);
  if (p.d_in % be_in != 0 || p.d_hid % be_in != 0)
    throw_invalid(env, std::string("dIn and dHid must be multiples of the ") + dtype_name(wt) + " block size");
  check_len(env, x.size(), p.tokens * p.d_in, "x");
  const size_t w1_bytes = size_t(p.n_heads * p.d_hid) * dtype_row_bytes(wt, p.d_in);
  const size_t w2_bytes = size_t(p.n_heads * p.d_out) * dtype_row_bytes(wt, p.d_hid);
  if (w1.size() != w1_bytes) throw_invalid(env, "w1 has " + std::to_string(w1.size()) + " bytes, expected " + std::to_string(w1_bytes));
  if (w2.size() != w2_bytes) throw_invalid(env, "w2 has " + std::to_string(w2.size()) + " bytes, expected " + std::to_string(w2_bytes));
  if (!b1.empty()) check_len(env, b1.size(), p.n_heads * p.d_hid, "b1");
  if (!b2.empty()) check_len(env, b2.size(), p.n_heads * p.d_out, "b2");
  check_len(env, g.size(), p.n_heads * p.d_out, "g");
  OutClaim claim;
  const Napi::Float32Array out =
      caller_out(env, opt_object(info, 8, "options"), size_t(p.tokens * p.d_out), "mvpProjection",
                 {{"x", info[0]}, {"w1", info[1]}, {"b1", info[2]}, {"w2", info[3]}, {"b2", info[4]}, {"g", info[5]}}, claim,
                 "tokens * dOut");
  std::shared_ptr<Backend> be = backend_or_default(info, 8);
  auto* worker = new_worker<BackendOpWorker>(
      env, "mvpProjection", env, "mvpProjection", be, size_t(p.tokens * p.d_out), out, claim,
      [x = std::move(x), w1 = std::move(w1), b1 = std::move(b1), w2 = std::move(w2), b2 = std::move(b2),
       g = std::move(g), wt, p](Backend& b, Staging& st, float* out, size_t n) {
        b.mvp_projection(st.in(x), st.in_bytes(w1.data(), w1.size()), b1.empty() ? nullptr : st.in(b1),
                         st.in_bytes(w2.data(), w2.size()), b2.empty() ? nullptr : st.in(b2), st.in(g), wt,
                         st.out(out, n), p);
      });
  return worker->claim_and_queue();
}

// quantize(x: Float32Array, dtype) -> Uint8Array in that dtype's storage layout (ggml blocks).
Napi::Value Quantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto x = arg_floats(info, 0, "x");
  DType t = arg_dtype(info, 1);
  if (int64_t(x.size()) % dtype_block_elems(t) != 0)
    throw_invalid(env, std::to_string(x.size()) + " elements is not a multiple of the " + dtype_name(t) + " block size");
  auto out = Napi::Uint8Array::New(env, dtype_row_bytes(t, int64_t(x.size())));
  quantize_row(t, x.data(), out.Data(), int64_t(x.size()));
  return out;
}

// dequantize(bytes, dtype, n, options?: { out?: Float32Array [n] }) -> Float32Array (`out` when given)
// On the JavaScript thread: `out` is claimed only while this call writes it (a call in flight that
// writes the same memory refuses it, as it refuses another call's).
Napi::Value Dequantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto bytes = arg_bytes(info, 0, "bytes");
  DType t = arg_dtype(info, 1);
  const int64_t n = arg_int(info, 2, "n");
  if (n < 0 || n % dtype_block_elems(t) != 0) throw_invalid(env, "n must be a non-negative multiple of the block size");
  if (bytes.size() != dtype_row_bytes(t, n)) throw_invalid(env, "byte length does not match n elements of " + std::string(dtype_name(t)));
  OutClaim claim;
  Napi::Float32Array out = caller_out(env, opt_object(info, 3, "options"), size_t(n), "dequantize", {{"bytes", info[0]}}, claim, "n");
  if (out.IsEmpty()) out = new_result_array(env, size_t(n), ResultFill::kWrittenWhole);
  dequantize_row(t, bytes.data(), out.Data(), n);  // written in place
  return out;
}

// ---- readBandwidth: the read probe (kernels/cpu/read_probe.h) over the addon's probe buffer.
// One buffer for the process, in 2 MiB pages, allocated and written (first touch on the pool's
// threads) by a call that finds none as large as it needs (a smaller one is replaced) and freed at
// the call's end unless the call passed keep: true (a caller probing again and again: bench:decode's
// child), which leaves it for later calls of the same or a smaller size until a call without keep
// frees it; the mutex also keeps two probes from running at once (they would measure each other).
std::mutex g_probe_mu;
AlignedPtr<uint8_t> g_probe_buf;
size_t g_probe_cap = 0;
std::atomic<uint64_t> g_probe_sink{0};

class ReadBandwidthWorker final : public PromiseWorker {
 public:
  ReadBandwidthWorker(Napi::Env env, size_t bytes, int reps, int streams, size_t prefetch, bool keep,
                      std::shared_ptr<ThreadPool> pool)
      : PromiseWorker(env), bytes_(bytes), reps_(reps), streams_(streams), prefetch_(prefetch), keep_(keep),
        pool_(std::move(pool)) {}

 protected:
  void Run() override {
    std::lock_guard<std::mutex> lock(g_probe_mu);
    if (g_probe_cap < bytes_) {
      g_probe_buf.reset();
      g_probe_cap = 0;
      const size_t cap = (bytes_ + kHugePage2M - 1) / kHugePage2M * kHugePage2M;
      g_probe_buf.reset(static_cast<uint8_t*>(aligned_alloc_huge(cap)));
      uint8_t* b = g_probe_buf.get();
      pool_->parallel_for(int64_t(cap / 4096), 64, [&](int64_t p0, int64_t p1) {  // fault the pages in on their thread
        for (int64_t pg = p0; pg < p1; pg++) std::memset(b + size_t(pg) * 4096, int(1 + (pg & 127)), 4096);
      });
      g_probe_cap = cap;
    }
    // the loads' level: read_lines' loops are AVX-512 at most (an AMX machine reads with AVX-512)
    isa_ = isa_name(std::min(isa_active(), Isa::Avx512));
    using clock = std::chrono::steady_clock;
    for (int r = 0; r < reps_; r++) {
      const double c0 = thread_cpu_seconds();
      const auto t0 = clock::now();
      const uint64_t x = read_lines(g_probe_buf.get(), bytes_, streams_, prefetch_, pool_.get());
      const double s = std::chrono::duration<double>(clock::now() - t0).count();
      const double c = thread_cpu_seconds() - c0;
      g_probe_sink.fetch_xor(x, std::memory_order_relaxed);
      gbs_.push_back(double(bytes_) / std::max(s, 1e-9) * 1e-9);
      // one thread: the pass ran on this thread alone, so its CPU time is the pass's running time
      // (the time another process held the core left out)
      if (pool_->size() == 1 && c0 >= 0) cpu_gbs_.push_back(double(bytes_) / std::max(c, 1e-9) * 1e-9);
    }
    if (!keep_) {  // nothing held once the call is done (256 MiB by default, up to 16 GiB)
      g_probe_buf.reset();
      g_probe_cap = 0;
    }
  }
  Napi::Value Resolve(Napi::Env env) override {
    auto o = Napi::Object::New(env);
    std::vector<double> sorted = gbs_;
    std::sort(sorted.begin(), sorted.end());
    const size_t n = sorted.size();
    o.Set("gbs", sorted.back());
    o.Set("medianGbs", n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2);
    auto reps = Napi::Array::New(env, n);
    for (size_t i = 0; i < n; i++) reps.Set(uint32_t(i), gbs_[i]);
    o.Set("repGbs", reps);
    if (cpu_gbs_.empty()) {
      o.Set("cpuGbs", env.Null());
    } else {
      o.Set("cpuGbs", *std::max_element(cpu_gbs_.begin(), cpu_gbs_.end()));
    }
    o.Set("bytes", double(bytes_));
    o.Set("threads", pool_->size());
    o.Set("streams", streams_);
    o.Set("prefetch", double(prefetch_));
    o.Set("isa", isa_);
    return o;
  }

 private:
  size_t bytes_;
  int reps_, streams_;
  size_t prefetch_;
  bool keep_;
  std::shared_ptr<ThreadPool> pool_;
  std::vector<double> gbs_, cpu_gbs_;
  std::string isa_;
};

// readBandwidth(options?: { bytes?, reps?, streams?, prefetch?, threads?, keep? })
//   -> Promise<{ gbs, medianGbs, repGbs, cpuGbs, bytes, threads, streams, prefetch, isa }> (lib/kernels.ts)
Napi::Value ReadBandwidth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = opt_object(info, 0, "options");
  const int64_t bytes = opt_int(env, o, "bytes", int64_t(256) << 20, int64_t(1) << 20, int64_t(16) << 30);
  const int reps = int(opt_int(env, o, "reps", 3, 1, 1000));
  const int streams = int(opt_int(env, o, "streams", 4, 1, 8));
  if (streams != 1 && streams != 2 && streams != 4 && streams != 8) throw_invalid(env, "streams must be 1, 2, 4 or 8");
  const int64_t prefetch = opt_int(env, o, "prefetch", 1024, 0, 65536);
  if (prefetch % 64 != 0) throw_invalid(env, "prefetch must be a multiple of 64 (bytes)");
  const bool keep = opt_bool(env, o, "keep", false);
  const RuntimeOptions ro = read_runtime_options(env, o);
  if (ro.device_set && ro.device != DeviceKind::Cpu) throw_invalid(env, "readBandwidth measures the CPU's reads: device must be 'cpu'");
  std::shared_ptr<ThreadPool> pool = Runtime::instance().pool(ro.threads);
  auto* worker = new_worker<ReadBandwidthWorker>(env, "readBandwidth", env, size_t(bytes) / 64 * 64, reps, streams,
                                                 size_t(prefetch), keep, std::move(pool));
  return worker->claim_and_queue();
}

// configure({ device?, threads?, isa?: 'scalar'|'avx2'|'avx512'|'amx', quantActivations?: 'q8'|'f32',
//              repackWeights?: boolean }):
// device and threads are the runtime defaults (Runtime::set_defaults) of every later call.
Napi::Value Configure(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw_invalid(env, "configure expects an options object");
  auto opts = info[0].As<Napi::Object>();
  if (opts.Has("isa") && !opts.Get("isa").IsUndefined()) {
    if (!opts.Get("isa").IsString()) throw_invalid(env, "isa must be a string");
    Isa isa;
    std::string name = opts.Get("isa").As<Napi::String>().Utf8Value();
    if (!isa_from_name(name, &isa)) throw_invalid(env, "unknown isa \"" + name + "\" (scalar, avx2, avx512, amx)");
    isa_set_cap(isa);
  }
  if (opts.Has("quantActivations") && !opts.Get("quantActivations").IsUndefined()) {
    const Napi::Value v = opts.Get("quantActivations");
    const std::string mode = v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
    if (mode == "q8") set_quant_activations(QuantActivations::Q8);
    else if (mode == "f32") set_quant_activations(QuantActivations::F32);
    else throw_invalid(env, "quantActivations must be 'q8' or 'f32'");
  }
  if (opts.Has("repackWeights") && !opts.Get("repackWeights").IsUndefined()) {
    if (!opts.Get("repackWeights").IsBoolean()) throw_invalid(env, "repackWeights must be a boolean");
    set_weight_repacking(opts.Get("repackWeights").As<Napi::Boolean>().Value());
  }
  RuntimeOptions ro = read_runtime_options(env, opts);
  const bool threads_set = opts.Has("threads") && !opts.Get("threads").IsUndefined() && !opts.Get("threads").IsNull();
  if (!threads_set) ro.threads = Runtime::instance().defaults().threads;  // unset: keep the current default
  try {
    Runtime::instance().set_defaults(ro);
  } catch (const emollm::Error& e) {
    throw make_js_error(env, e);
  }
  return env.Undefined();
}

Napi::Value CpuInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CpuFeatures& f = cpu_features();
  auto o = Napi::Object::New(env);
  o.Set("brand", f.brand);
  o.Set("vendor", f.amd ? "amd" : f.brand.empty() ? "unknown" : "other");
  o.Set("family", f.family);
  o.Set("model", f.model);
  o.Set("physicalCores", f.physical_cores);
  o.Set("logicalCpus", f.logical_cpus);
  o.Set("isaDetected", isa_name(isa_detected()));
  o.Set("isaActive", isa_name(isa_active()));
  const Runtime::Info rt = Runtime::instance().info();
  o.Set("threads", rt.threads);
  o.Set("device", device_name(rt.device));
  o.Set("quantActivations", quant_activations() == QuantActivations::Q8 ? "q8" : "f32");
  o.Set("repackWeights", weight_repacking());
  o.Set("packedWeightBytes", double(packed_gemm_weight_bytes()));
  auto feats = Napi::Object::New(env);
  feats.Set("avx2", f.avx2); feats.Set("fma", f.fma); feats.Set("f16c", f.f16c);
  feats.Set("avx512f", f.avx512f); feats.Set("avx512bw", f.avx512bw); feats.Set("avx512vl", f.avx512vl);
  feats.Set("avx512dq", f.avx512dq); feats.Set("avx512bf16", f.avx512bf16); feats.Set("avx512vnni", f.avx512vnni);
  feats.Set("avx512fp16", f.avx512fp16); feats.Set("amxTile", f.amx_tile); feats.Set("amxBf16", f.amx_bf16);
  feats.Set("amxInt8", f.amx_int8); feats.Set("amxUsable", f.amx_usable);
  feats.Set("avx512DoublePumped", f.avx512_double_pumped);
  o.Set("features", feats);
  return o;
}

// runtimeInfo(): lib/runtime.ts RuntimeInfo.
Napi::Value RuntimeInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Runtime::Info rt = Runtime::instance().info();
  auto o = Napi::Object::New(env);
  o.Set("device", device_name(rt.device));
  o.Set("threads", rt.threads);
  auto devices = Napi::Array::New(env);
  devices.Set(uint32_t(0), "cpu");
  bool cuda_runs = true;
  try {
    require_device(DeviceKind::Cuda);
  } catch (const emollm::Error&) {
    cuda_runs = false;
  }
  if (cuda_runs) devices.Set(uint32_t(1), "cuda");
  o.Set("devices", devices);
  o.Set("cudaBuilt", rt.cuda_built);
  auto pools = Napi::Array::New(env);
  for (size_t i = 0; i < rt.pools.size(); ++i) {
    auto p = Napi::Object::New(env);
    p.Set("threads", rt.pools[i].first);
    p.Set("users", rt.pools[i].second);
    pools.Set(uint32_t(i), p);
  }
  o.Set("pools", pools);
  auto backends = Napi::Array::New(env);
  for (size_t i = 0; i < rt.backends.size(); ++i) backends.Set(uint32_t(i), rt.backends[i]);
  o.Set("backends", backends);
  return o;
}

// requireDevice(name): throws the typed error (ERR_INVALID_ARGUMENT / ERR_UNSUPPORTED) when this
// build cannot run `name`, so JavaScript entry points fail before doing any work.
Napi::Value RequireDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string name = arg_string(info, 0, "device");
  try {
    const DeviceSpec d = parse_device(name);
    require_device(d.kind, d.index);
  } catch (const emollm::Error& e) {
    throw make_js_error(env, e);
  }
  return env.Undefined();
}

}  // namespace

// The bytes the probe buffer holds now (0: none): testing_binding.cpp testReadProbeHeldBytes.
size_t read_probe_held_bytes() {
  std::lock_guard<std::mutex> lock(g_probe_mu);
  return g_probe_cap;
}

void register_kernels(Napi::Env env, Napi::Object exports) {
  exports.Set("gemm", Napi::Function::New(env, Gemm, "gemm"));
  exports.Set("attention", Napi::Function::New(env, Attention, "attention"));
  exports.Set("mvpProjection", Napi::Function::New(env, MvpProjection, "mvpProjection"));
  exports.Set("quantize", Napi::Function::New(env, Quantize, "quantize"));
  exports.Set("dequantize", Napi::Function::New(env, Dequantize, "dequantize"));
  exports.Set("readBandwidth", Napi::Function::New(env, ReadBandwidth, "readBandwidth"));
  exports.Set("configure", Napi::Function::New(env, Configure, "configure"));
  exports.Set("cpuInfo", Napi::Function::New(env, CpuInfo, "cpuInfo"));
  exports.Set("runtimeInfo", Napi::Function::New(env, RuntimeInfo, "runtimeInfo"));
  exports.Set("requireDevice", Napi::Function::New(env, RequireDevice, "requireDevice"));
}

}  // namespace emollm::addon
