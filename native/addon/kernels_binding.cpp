// Kernel entry points for JavaScript: used by the JS tests and by users who microbenchmark or
// compose kernels from Node. Inputs are copied into native memory before the work is queued,
// so a caller may reuse or transfer its buffers while the promise is pending.
#include <memory>
#include <mutex>
#include <vector>

#include "base/cpu_features.h"
#include "base/dtype.h"
#include "base/thread_pool.h"
#include "bindings.h"
#include "cpu/kernels.h"
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
    const uint8_t* p = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
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

Napi::Float32Array to_float32_array(Napi::Env env, const std::vector<float>& v) {
  auto out = Napi::Float32Array::New(env, v.size());
  std::copy(v.begin(), v.end(), out.Data());
  return out;
}

class GemmWorker final : public PromiseWorker {
 public:
  GemmWorker(Napi::Env env, std::vector<float> x, std::vector<uint8_t> w, DType wtype, std::vector<float> bias,
             int64_t M, int64_t N, int64_t K)
      : PromiseWorker(env), x_(std::move(x)), w_(std::move(w)), bias_(std::move(bias)), wtype_(wtype), M_(M), N_(N), K_(K) {}

 protected:
  void Run() override {
    y_.resize(size_t(M_ * N_));
    gemm(x_.data(), K_, w_.data(), wtype_, bias_.empty() ? nullptr : bias_.data(), y_.data(), N_, M_, N_, K_,
         shared_pool().get());
  }
  Napi::Value Resolve(Napi::Env env) override { return to_float32_array(env, y_); }

 private:
  std::vector<float> x_;
  std::vector<uint8_t> w_;
  std::vector<float> bias_, y_;
  DType wtype_;
  int64_t M_, N_, K_;
};

// gemm(x: Float32Array [M*K], w: bytes [N rows of K in wtype], wtype, bias: Float32Array|null, M, N, K)
//   -> Promise<Float32Array [M*N]>   (Y = X W^T + bias)
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
  auto* worker = new GemmWorker(env, std::move(x), std::move(w), wtype, std::move(bias), M, N, K);
  Napi::Promise p = worker->promise();
  worker->Queue();
  return p;
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

// dequantize(bytes, dtype, n) -> Float32Array
Napi::Value Dequantize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto bytes = arg_bytes(info, 0, "bytes");
  DType t = arg_dtype(info, 1);
  const int64_t n = arg_int(info, 2, "n");
  if (n < 0 || n % dtype_block_elems(t) != 0) throw_invalid(env, "n must be a non-negative multiple of the block size");
  if (bytes.size() != dtype_row_bytes(t, n)) throw_invalid(env, "byte length does not match n elements of " + std::string(dtype_name(t)));
  std::vector<float> out(static_cast<size_t>(n));
  dequantize_row(t, bytes.data(), out.data(), n);
  return to_float32_array(env, out);
}

// configure({ device?, threads?, isa?: 'scalar'|'avx2'|'avx512'|'amx', quantActivations?: 'q8'|'f32' }):
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
  o.Set("physicalCores", f.physical_cores);
  o.Set("logicalCpus", f.logical_cpus);
  o.Set("isaDetected", isa_name(isa_detected()));
  o.Set("isaActive", isa_name(isa_active()));
  const Runtime::Info rt = Runtime::instance().info();
  o.Set("threads", rt.threads);
  o.Set("device", device_name(rt.device));
  o.Set("quantActivations", quant_activations() == QuantActivations::Q8 ? "q8" : "f32");
  auto feats = Napi::Object::New(env);
  feats.Set("avx2", f.avx2); feats.Set("fma", f.fma); feats.Set("f16c", f.f16c);
  feats.Set("avx512f", f.avx512f); feats.Set("avx512bw", f.avx512bw); feats.Set("avx512vl", f.avx512vl);
  feats.Set("avx512dq", f.avx512dq); feats.Set("avx512bf16", f.avx512bf16); feats.Set("avx512vnni", f.avx512vnni);
  feats.Set("avx512fp16", f.avx512fp16); feats.Set("amxTile", f.amx_tile); feats.Set("amxBf16", f.amx_bf16);
  feats.Set("amxInt8", f.amx_int8); feats.Set("amxUsable", f.amx_usable);
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
    require_device(device_from_name(name));
  } catch (const emollm::Error& e) {
    throw make_js_error(env, e);
  }
  return env.Undefined();
}

}  // namespace

void register_kernels(Napi::Env env, Napi::Object exports) {
  exports.Set("gemm", Napi::Function::New(env, Gemm, "gemm"));
  exports.Set("quantize", Napi::Function::New(env, Quantize, "quantize"));
  exports.Set("dequantize", Napi::Function::New(env, Dequantize, "dequantize"));
  exports.Set("configure", Napi::Function::New(env, Configure, "configure"));
  exports.Set("cpuInfo", Napi::Function::New(env, CpuInfo, "cpuInfo"));
  exports.Set("runtimeInfo", Napi::Function::New(env, RuntimeInfo, "runtimeInfo"));
  exports.Set("requireDevice", Napi::Function::New(env, RequireDevice, "requireDevice"));
}

}  // namespace emollm::addon
