// Module entry point of the emollm Node addon. The native surface is deliberately small:
// lib/*.ts builds the public, typed API on top of these functions.
#include <napi.h>

#include "bindings.h"
#include "napi_util.h"

namespace emollm::addon {
namespace {

// setErrorClass(EmollmError): lets native code throw instances of the JavaScript error class.
Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsFunction()) throw_invalid(env, "setErrorClass expects a constructor");
  AddonData* data = env.GetInstanceData<AddonData>();
  data->error_class = Napi::Persistent(info[0].As<Napi::Function>());
  return env.Undefined();
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  exports.Set("abiVersion", Napi::Number::New(env, 1));
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass, "setErrorClass"));
  register_kernels(env, exports);
  register_loaders(env, exports);
  register_model(env, exports);
  register_face(env, exports);
  register_train(env, exports);
  register_testing(env, exports);
  return exports;
}

}  // namespace emollm::addon

// NODE_API_MODULE needs an unqualified name.
static Napi::Object EmollmInit(Napi::Env env, Napi::Object exports) { return emollm::addon::Init(env, exports); }
NODE_API_MODULE(emollm, EmollmInit)
