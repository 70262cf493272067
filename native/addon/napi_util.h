// Helpers shared by the addon's binding files: typed errors, argument checks, result arrays (the
// caller's `out` arrays and their claims included) and the promise worker base.
#pragma once
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif
#include <napi.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "base/arena.h"
#include "base/error.h"
#include "core/runtime.h"

namespace emollm::addon {

// Per-environment state: the JavaScript EmollmError class registered by lib/native.ts, so errors
// thrown here are real EmollmError instances (instanceof works) with .code and .file.
struct AddonData {
  Napi::FunctionReference error_class;
  // Test hooks (testing_binding.cpp), per environment so that test files running in parallel
  // worker threads do not see each other's: the next new_worker call fails as an allocation
  // would (kBefore: before the worker is made; kAfter: the worker made, then deleted, then the
  // same failure: a claim made in a worker's constructor would stay behind); fresh results the
  // worker writes whole are zeroed first anyway (today's V8 calloc'd arrays: the A/B of
  // new_result_array's ResultFill).
  enum class FailWorker { kNo, kBefore, kAfter };
  FailWorker fail_next_worker = FailWorker::kNo;
  bool zero_written_results = false;
  // fresh results the worker writes whole start as quiet NaNs (the test that every float is
  // written: malloc's memory is often zero, which would hide a kernel that adds into it)
  bool poison_written_results = false;
};

inline Napi::Error make_js_error(Napi::Env env, const std::string& code, const std::string& message,
                                 const std::string& file = {}) {
  AddonData* data = env.GetInstanceData<AddonData>();
  Napi::Object err;
  if (data && !data->error_class.IsEmpty()) {
    Napi::Object opts = Napi::Object::New(env);
    if (!file.empty()) opts.Set("file", file);
    err = data->error_class.New({Napi::String::New(env, code), Napi::String::New(env, message), opts});
  } else {
    err = Napi::Error::New(env, message).Value();
    err.Set("code", code);
    if (!file.empty()) err.Set("file", file);
  }
  return Napi::Error(env, err);
}

inline Napi::Error make_js_error(Napi::Env env, const emollm::Error& e) {
  return make_js_error(env, error_code_name(e.code()), e.what(), e.file());
}

// Converts any C++ exception escaping native work into a typed JavaScript error.
inline Napi::Error make_js_error(Napi::Env env, const std::exception_ptr& ep) {
  try {
    std::rethrow_exception(ep);
  } catch (const emollm::Error& e) {
    return make_js_error(env, e);
  } catch (const std::bad_alloc&) {
    return make_js_error(env, "ERR_OUT_OF_MEMORY", "out of memory");
  } catch (const std::exception& e) {
    return make_js_error(env, "ERR_INTERNAL", e.what());
  } catch (...) {
    return make_js_error(env, "ERR_INTERNAL", "unknown native error");
  }
}

[[noreturn]] inline void throw_invalid(Napi::Env env, const std::string& message) {
  throw make_js_error(env, "ERR_INVALID_ARGUMENT", message);
}

inline std::string arg_string(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsString()) throw_invalid(info.Env(), std::string(what) + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

inline int64_t arg_int(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber()) throw_invalid(info.Env(), std::string(what) + " must be a number");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (d != double(int64_t(d))) throw_invalid(info.Env(), std::string(what) + " must be an integer");
  return int64_t(d);
}

// ---- the options reader: every binding reads its options object with these.
// An optional options object at argument i (undefined / null: an empty one).
inline Napi::Object opt_object(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return Napi::Object::New(info.Env());
  if (!info[i].IsObject()) throw_invalid(info.Env(), std::string(what) + " must be an object");
  return info[i].As<Napi::Object>();
}
// Whether `key` is set (undefined and null mean unset).
inline bool has_opt(const Napi::Object& o, const char* key) {
  return o.Has(key) && !o.Get(key).IsUndefined() && !o.Get(key).IsNull();
}
inline double opt_number(Napi::Env env, const Napi::Object& o, const char* key, double def) {
  if (!has_opt(o, key)) return def;
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw_invalid(env, std::string(key) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (std::isnan(d)) throw_invalid(env, std::string(key) + " must not be NaN");
  return d;
}
// The KV cache element type option ('f32' | 'f16' | 'bf16'); anything else: ERR_INVALID_ARGUMENT.
inline emollm::DType opt_kv_type(Napi::Env env, const Napi::Object& o, const char* key, emollm::DType def) {
  if (!has_opt(o, key)) return def;
  const Napi::Value v = o.Get(key);
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
  if (s == "f32") return emollm::DType::F32;
  if (s == "f16") return emollm::DType::F16;
  if (s == "bf16") return emollm::DType::BF16;
  throw_invalid(env, std::string(key) + " must be 'f32', 'f16' or 'bf16'");
  return def;
}
// A boolean option; anything but true / false (when set): ERR_INVALID_ARGUMENT.
inline bool opt_bool(Napi::Env env, const Napi::Object& o, const char* key, bool def) {
  if (!has_opt(o, key)) return def;
  const Napi::Value v = o.Get(key);
  if (!v.IsBoolean()) throw_invalid(env, std::string(key) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}
inline int64_t opt_int(Napi::Env env, const Napi::Object& o, const char* key, int64_t def, int64_t lo, int64_t hi) {
  double d = opt_number(env, o, key, double(def));
  if (d != std::floor(d) || d < double(lo) || d > double(hi))
    throw_invalid(env, std::string(key) + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return int64_t(d);
}

// The one reader of the runtime configuration `{ device?, threads? }` (lib/runtime.ts) from any
// options object: loadModel, createFaceModels, configure. Unset fields stay unset (the runtime's
// defaults apply); errors are typed (unknown device: ERR_INVALID_ARGUMENT; 'cuda' in a build that
// cannot run it: ERR_UNSUPPORTED, from require_device).
inline RuntimeOptions read_runtime_options(Napi::Env env, const Napi::Object& o) {
  RuntimeOptions r;
  try {
    if (has_opt(o, "device")) {
      if (!o.Get("device").IsString()) throw_invalid(env, "device must be a string ('cpu', 'cuda' or 'cuda:N')");
      const DeviceSpec d = parse_device(o.Get("device").As<Napi::String>().Utf8Value());
      r.device = d.kind;
      r.device_index = d.index;
      r.device_set = true;
      require_device(r.device, r.device_index);
    }
  } catch (const emollm::Error& e) {
    throw make_js_error(env, e);
  }
  r.threads = int(opt_int(env, o, "threads", 0, 0, 1024));
  return r;
}

// The one guard of a Float32Array that a call keeps and reads or writes in place off the event loop
// until it settles (a prompt's image features, encodeImages' `out`): a Float32Array, attached, over
// a fixed-length buffer (a resizable ArrayBuffer or a growable SharedArrayBuffer could shrink under
// the worker thread, which would then touch freed pages). Each failure is ERR_INVALID_ARGUMENT.
inline void check_fixed_float32_array(Napi::Env env, const Napi::Value& v, const std::string& what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw_invalid(env, what + " must be a Float32Array");
  Napi::ArrayBuffer buf = v.As<Napi::TypedArray>().ArrayBuffer();
  if (buf.IsDetached()) throw_invalid(env, what + " is detached (its ArrayBuffer was transferred)");
  const Napi::Boolean yes = Napi::Boolean::New(env, true);
  if (buf.Get("resizable").StrictEquals(yes) || buf.Get("growable").StrictEquals(yes))
    throw_invalid(env, what + " must be over a fixed-length buffer (not a resizable ArrayBuffer or a growable SharedArrayBuffer)");
}

// How a fresh result array's memory starts. kZeroed: zero-filled (V8's ArrayBuffer allocator:
// calloc), for arrays a call may hand out with floats it did not write. kWrittenWhole: the
// worker writes every float before the array is handed out (a call that fails rejects, and its
// array is never seen), so the memory is not zeroed first (napi_create_buffer's allocation:
// malloc). Still an ordinary V8-owned ArrayBuffer: transferable, detachable, cloned like any
// other (tests/js/result_array_ownership.test.ts), unlike an addon-owned external buffer, which
// Node marks untransferable (Node 20 copies it where a transfer list names it, Node 22 throws, and
// its ArrayBuffer.prototype.transfer() lets the memory leave for another thread, which reads it
// after the addon freed it once the maker's environment exits: why results are not handed out from
// a pool of the addon's huge-page blocks). What zeroing cost:
// calloc clears memory the allocator reuses (after a GC freed an earlier result) on the JavaScript
// thread, ~1.4 ms of event loop a 9 MiB result (bench/result_faults.mjs, Zen 4: the call's
// synchronous part 1.59 -> 0.21 ms by median, 30 rounds alternated). Page faults are the same
// either way (a LLaVA-1.5 encode, 16 rounds with GCs between: median 4 both, ~260-950 where
// glibc maps the 9 MiB anew, its 2 MiB pages partly outside the block; calloc touched <= 4 pages).
enum class ResultFill { kZeroed, kWrittenWhole };

// A result array of `count` floats. Made on the JavaScript thread before the worker that writes it
// exists: a worker made first, then abandoned when the allocation throws, would never be queued
// (its handle counted in flight, its promise pending, forever). Larger than the machine's memory
// or than V8 allows: ERR_OUT_OF_MEMORY. (V8 ends the process when an ArrayBuffer it agreed to
// make cannot be allocated, so the size is checked against physical memory first.)
inline Napi::Float32Array new_result_array(Napi::Env env, size_t count, ResultFill fill = ResultFill::kZeroed) {
#if defined(__unix__) || defined(__APPLE__)
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0 && count > size_t(pages) / sizeof(float) * size_t(page))
    throw make_js_error(env, "ERR_OUT_OF_MEMORY",
                        "a result of " + std::to_string(count) + " floats is larger than this machine's memory");
#endif
  const AddonData* data = env.GetInstanceData<AddonData>();
  if (data && data->zero_written_results) fill = ResultFill::kZeroed;
  Napi::Float32Array a;
  try {
    if (fill == ResultFill::kZeroed) {
      a = Napi::Float32Array::New(env, count);
    } else {
      const Napi::Buffer<uint8_t> bytes = Napi::Buffer<uint8_t>::New(env, count * sizeof(float));
      a = Napi::Float32Array::New(env, count, bytes.ArrayBuffer(), 0);
    }
  } catch (const Napi::Error&) {
    throw make_js_error(env, "ERR_OUT_OF_MEMORY", "cannot allocate a result of " + std::to_string(count) + " floats");
  }
  if (data && data->poison_written_results && fill == ResultFill::kWrittenWhole)
    std::fill_n(a.Data(), count, std::numeric_limits<float>::quiet_NaN());
  // Its whole 2 MiB pages asked to be transparent huge pages (advise_huge_pages: only the paging
  // policy of memory nothing has touched yet; the allocator's mapping keeps its owner). A large
  // ArrayBuffer is a fresh mapping (glibc mmaps blocks above its threshold), untouched until the
  // worker writes it: page by page that is one first-touch fault per 4 KiB inside the timed work
  // (2304 for a LLaVA-1.5 image's 9 MiB; ~12 us each in this project's Zen 5 VM), on huge pages
  // one per 2 MiB. Memory the allocator reuses is already backed: the advice changes nothing.
  // Quiet A/B (session 24, a LLaVA-1.5 encode at 2 threads, fresh results alternated in one
  // process): minor faults 3788 -> 374 by median, system time 36 -> 3 ms, wall best 0.598 -> 0.573 s.
  advise_huge_pages(a.Data(), count * sizeof(float));
  return a;
}

// The caller's `out` arrays that calls in flight (encodeImages, the kernel bindings) are writing
// into right now, as byte ranges (every environment of the process: a SharedArrayBuffer's memory
// can be passed from two worker threads). A second call given memory that overlaps one in flight
// is refused up front: two workers would write the same floats at once.
class OutRanges {
 public:
  bool claim(const void* p, size_t bytes) {
    const auto b = reinterpret_cast<uintptr_t>(p), e = b + bytes;
    std::lock_guard<std::mutex> lk(mu_);
    for (const auto& r : busy_)
      if (b < r.second && r.first < e) return false;
    busy_.emplace_back(b, e);
    return true;
  }
  void release(const void* p) {
    std::lock_guard<std::mutex> lk(mu_);
    for (size_t i = 0; i < busy_.size(); ++i)
      if (busy_[i].first == reinterpret_cast<uintptr_t>(p)) {
        busy_.erase(busy_.begin() + std::ptrdiff_t(i));
        return;
      }
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<uintptr_t, uintptr_t>> busy_;
};
inline OutRanges& out_ranges() {
  static OutRanges r;
  return r;
}

// One claimed range of out_ranges(), owned: released when destroyed unless moved on. A call claims
// its `out` before its worker exists and moves the claim into the worker (JsResultArray), so a
// failure in between (the worker's `new` throwing) releases it instead of leaving it claimed.
// An empty range (a zero-length out) overlaps nothing and is not recorded.
class OutClaim {
 public:
  OutClaim() = default;
  OutClaim(const OutClaim&) = delete;
  OutClaim& operator=(const OutClaim&) = delete;
  OutClaim(OutClaim&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  OutClaim& operator=(OutClaim&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
    }
    return *this;
  }
  ~OutClaim() { release(); }
  bool claim(const void* p, size_t bytes) {
    release();
    if (bytes == 0) return true;
    if (!out_ranges().claim(p, bytes)) return false;
    p_ = p;
    return true;
  }
  void release() {
    if (p_) out_ranges().release(p_);
    p_ = nullptr;
  }

 private:
  const void* p_ = nullptr;
};

// The first byte of a TypedArray / Buffer's elements, over an ArrayBuffer or a SharedArrayBuffer
// alike: napi_get_typedarray_info's data pointer (already past the byte offset).
// ta.ArrayBuffer().Data() would refuse a SharedArrayBuffer (napi_get_arraybuffer_info takes
// ArrayBuffers only) with an untyped "Invalid argument".
inline const uint8_t* typed_array_data(const Napi::TypedArray& ta) {
  napi_typedarray_type type;
  size_t length = 0, offset = 0;
  void* data = nullptr;
  napi_value buffer;
  NAPI_THROW_IF_FAILED(ta.Env(), napi_get_typedarray_info(ta.Env(), ta, &type, &length, &data, &buffer, &offset), nullptr);
  return static_cast<const uint8_t*>(data);
}

// The bytes of a TypedArray / Buffer or ArrayBuffer argument, as [begin, end); {0, 0} for anything
// else (a SharedArrayBuffer passed bare included: the kernel bindings copy such inputs first).
inline std::pair<uintptr_t, uintptr_t> byte_range(const Napi::Value& v) {
  if (v.IsTypedArray()) {
    auto ta = v.As<Napi::TypedArray>();
    const auto b = reinterpret_cast<uintptr_t>(typed_array_data(ta));
    return {b, b + ta.ByteLength()};
  }
  if (v.IsArrayBuffer()) {
    auto ab = v.As<Napi::ArrayBuffer>();
    const auto b = reinterpret_cast<uintptr_t>(ab.Data());
    return {b, b + ab.ByteLength()};
  }
  return {0, 0};
}

// `opts.out` of a call that writes its result into a caller's array (encodeImages, gemm,
// attention, mvpProjection, dequantize), checked on the JavaScript thread before any work: a
// Float32Array (check_fixed_float32_array: attached, over a fixed-length buffer) of exactly
// `count` floats (`sizes` says how that count is made), sharing no byte with the call's input
// arrays `inputs`, and not the memory of an `out` that a call in flight writes (claimed into
// `claim` until the call settles). Each failure is ERR_INVALID_ARGUMENT. Unset: an empty array.
inline Napi::Float32Array caller_out(Napi::Env env, const Napi::Object& opts, size_t count, const std::string& what,
                                     std::initializer_list<std::pair<const char*, Napi::Value>> inputs, OutClaim& claim,
                                     const std::string& sizes = {}) {
  if (!has_opt(opts, "out")) return Napi::Float32Array();
  const Napi::Value o = opts.Get("out");
  check_fixed_float32_array(env, o, what + ": out");
  Napi::Float32Array out = o.As<Napi::Float32Array>();
  if (out.ElementLength() != count)
    throw_invalid(env, what + ": out has " + std::to_string(out.ElementLength()) + " floats, expected " +
                           (sizes.empty() ? std::string() : sizes + " = ") + std::to_string(count));
  const auto r = byte_range(out);
  for (const auto& in : inputs) {
    const auto q = byte_range(in.second);
    if (r.first < r.second && q.first < q.second && r.first < q.second && q.first < r.second)
      throw_invalid(env, what + ": out shares memory with " + in.first);
  }
  if (!claim.claim(out.Data(), count * sizeof(float)))
    throw_invalid(env, what + ": out overlaps the out array of a call still running");
  return out;
}

// A worker's result array that the worker thread writes straight into (no vector filled, then
// copied into a fresh array on the event loop): created, or taken from the caller (its claim moved
// in), on the JavaScript thread before the worker runs. The reference keeps it alive while the
// worker writes; its backing store does not move. data is null until one is set.
struct JsResultArray {
  Napi::Reference<Napi::Float32Array> ref;
  float* data = nullptr;
  size_t n = 0;  // floats
  bool caller = false;  // the caller's `out` (its range held in claim until settle())
  OutClaim claim;
  void create(Napi::Env env, size_t count, ResultFill fill = ResultFill::kZeroed) { adopt(new_result_array(env, count, fill)); }
  void adopt(Napi::Float32Array a) {
    ref = Napi::Persistent(a);
    data = a.Data();
    n = a.ElementLength();
  }
  void adopt_caller(Napi::Float32Array a, OutClaim c) {
    claim = std::move(c);
    adopt(a);
    caller = true;
  }
  // The caller's `out` when caller_out returned one (its claim moved in), else a fresh array of
  // `count` floats (`fill`: new_result_array). JavaScript thread, before the worker runs: a failed
  // allocation throws out of the worker's constructor (no worker left unqueued), and a claim not
  // yet moved in is released by its owner's destructor.
  void set(Napi::Env env, size_t count, Napi::Float32Array out, OutClaim& c, ResultFill fill = ResultFill::kZeroed) {
    if (out.IsEmpty()) create(env, count, fill);
    else adopt_caller(out, std::move(c));
  }
  // JavaScript thread, once the worker is done: whether the caller detached (transferred) the
  // array while the worker wrote into it.
  bool detached() const { return !ref.IsEmpty() && ref.Value().ArrayBuffer().IsDetached(); }
  // JavaScript thread, in the worker's Finish: a caller's `out` detached meanwhile sets `error`
  // (ERR_INVALID_ARGUMENT, unless an error is set already or the work itself failed: that error is
  // the one to report); its range released.
  void settle(Napi::Env env, Napi::ObjectReference& error, const std::string& what, bool run_failed) {
    if (caller && !run_failed && detached() && error.IsEmpty())
      error = Napi::Persistent(make_js_error(env, "ERR_INVALID_ARGUMENT", what + ": out was detached while the call wrote it").Value());
    claim.release();
  }
};

// The one worker base of the addon: a Promise-returning AsyncWorker. Run() executes on a libuv
// worker thread (no N-API calls there) and any exception it throws rejects the promise with a
// typed error; Resolve() builds the result on the main thread; Finish() (optional) runs on the
// main thread before the promise settles, whether the work failed or not (handles use it to
// release busy flags, finish pending close() calls and drop references to input arrays read in
// place); js_error_, when set (also by Finish), rejects instead of the result (an error thrown by
// a JavaScript callback during the work).
class PromiseWorker : public Napi::AsyncWorker {
 public:
  explicit PromiseWorker(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

  // A binding's last step, after everything that can fail (the worker's allocation in new_worker,
  // its members, the result array, the arguments' getters): claim() marks what the call holds (a
  // context busy, the model's calls in flight, a trainer busy; Finish() releases it), then the
  // worker is queued. A worker's constructor claims nothing: a failure between it and this step
  // would leave the claim behind (model.close() waiting forever, a context or trainer busy). The
  // claim cannot move after Queue(): the worker thread may start at once and read what claim()
  // set (a context's abort flag reset). claim() throwing (its typed error: what it holds was
  // taken meanwhile, e.g. by a getter that closed the context) claims nothing; Queue() throwing
  // gives the claim back (unclaim()). Either way the worker, never queued, is deleted here (with
  // it what it owns: an `out` claim, references to input arrays) and the error goes on. Returns
  // the call's promise. Every binding queues its worker here (one that claims nothing too: its
  // worker is then deleted if Queue() fails, with the `out` claim it holds).
  Napi::Promise claim_and_queue() {
    Napi::Promise p = promise();
    try {
      claim();
    } catch (...) {
      delete this;
      throw;
    }
    try {
      Queue();
    } catch (...) {
      unclaim();
      delete this;
      throw;
    }
    return p;
  }

 protected:
  virtual void claim() {}    // main thread, in claim_and_queue; may throw a Napi::Error
  virtual void unclaim() {}  // main thread: undoes claim() (Queue() failed); must not throw
  virtual void Run() = 0;                           // worker thread
  virtual Napi::Value Resolve(Napi::Env env) = 0;   // main thread
  virtual void Finish(Napi::Env env) {}             // main thread, before settling
  // Whether Run() threw (main thread, in Finish).
  bool run_failed() const { return static_cast<bool>(error_); }
  Napi::ObjectReference js_error_;

 private:
  void Execute() final {
    try {
      Run();
    } catch (...) {
      error_ = std::current_exception();
    }
  }
  void OnOK() final {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    Napi::Value result;
    Napi::Value rejection;
    if (error_) {
      rejection = make_js_error(env, error_).Value();
    } else {
      try {
        result = Resolve(env);
      } catch (const Napi::Error& e) {
        rejection = e.Value();
      } catch (...) {
        rejection = make_js_error(env, std::current_exception()).Value();
      }
    }
    Finish(env);  // may set js_error_ (e.g. input read in place was detached meanwhile)
    if (!js_error_.IsEmpty()) rejection = js_error_.Value();
    if (!rejection.IsEmpty()) deferred_.Reject(rejection);
    else deferred_.Resolve(result);
  }
  void OnError(const Napi::Error& e) final {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    Finish(env);
    deferred_.Reject(e.Value());
  }

  Napi::Promise::Deferred deferred_;
  std::exception_ptr error_;
};

// `new W(args...)`: a binding's worker, made on the JavaScript thread. Its allocation failing
// (std::bad_alloc) is ERR_OUT_OF_MEMORY: node-addon-api turns only a Napi::Error into a
// JavaScript exception, and any other C++ exception leaving a binding ends the process
// (std::terminate). What the binding owns until the worker takes it (an OutClaim: its `out`)
// is released by its destructor as the error unwinds; what the call counts or marks (a context
// busy, a model's calls in flight, a trainer busy) is claimed by the binding's last step,
// PromiseWorker::claim_and_queue, never by a worker's constructor. Every binding that makes a
// worker makes it here. Test hook (testFailNextWorker, testing_binding.cpp): the environment's
// next call fails here as that allocation would, before the worker is made or ('after') with
// the worker made, then deleted (a claim made in its constructor would stay behind).
template <class W, class... A>
W* new_worker(Napi::Env env, const std::string& what, A&&... args) {
  try {
    AddonData* data = env.GetInstanceData<AddonData>();
    const AddonData::FailWorker fail = data ? std::exchange(data->fail_next_worker, AddonData::FailWorker::kNo)
                                            : AddonData::FailWorker::kNo;
    if (fail == AddonData::FailWorker::kBefore) throw std::bad_alloc();
    W* w = new W(std::forward<A>(args)...);
    if (fail == AddonData::FailWorker::kAfter) {
      delete w;  // never queued: the AsyncWorker's destructor deletes its napi_async_work
      throw std::bad_alloc();
    }
    return w;
  } catch (const std::bad_alloc&) {
    throw make_js_error(env, "ERR_OUT_OF_MEMORY", what + ": out of memory (its worker could not be allocated)");
  }
}

}  // namespace emollm::addon
