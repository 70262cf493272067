// Test hooks of the addon (tests/js only; no user calls them):
// - testExternalArrayBuffer(bytes, tag = 0) -> ArrayBuffer: an addon-owned external ArrayBuffer (a
//   2 MiB-aligned huge-page block with a finalizer that frees it), byte i holding i * 7 mod 256. The
//   design question it answers (tests/js/result_array_ownership.test.ts): what such a buffer, as a
//   result array, would do to users (transfer, structuredClone, workers, Buffer.from) against
//   today's V8-owned results.
// - testExternalFinalized(tag = 0) -> number: how many of them made with that tag (0-7) the process
//   has freed so far. A test that counts one worker's frees gives its buffers a tag of its own: the
//   main thread's GC may finalize another test's untagged buffers at any moment in between.
// - testFailNextWorker(on = true): the environment's next new_worker call (napi_util.h) fails as if its
//   allocation had (every binding that makes a worker: its `out` claim must be released, its
//   context / model / trainer left free; tests/js/result_arrays.test.ts, worker_allocation.test.ts).
//   testFailNextWorker('after'): the worker is made, then deleted, then the same failure: what a
//   worker's constructor claims (it must claim nothing: claim_and_queue) would stay behind.
// - testZeroWrittenResults(on): fresh results the worker writes whole are zeroed first (today's
//   kZeroed arrays) while on: the A/B of new_result_array's ResultFill (bench/result_faults.mjs).
// - testPoisonWrittenResults(on): those results start as quiet NaNs while on, so a test sees any
//   float a call leaves unwritten (tests/js/result_arrays_written_whole.test.ts).
// - testReadProbeHeldBytes() -> number: the bytes readBandwidth's probe buffer holds now (0 once a
//   call without keep: true has finished; tests/js/kernels.test.ts).
#include <napi.h>

#include <atomic>
#include <cstdint>

#include "base/arena.h"
#include "bindings.h"
#include "napi_util.h"

namespace emollm::addon {
namespace {

constexpr int kExternalTags = 8;
std::atomic<int64_t> g_external_finalized[kExternalTags];

// info[index] as a tag in [0, kExternalTags); 0 where absent.
int external_tag(const Napi::CallbackInfo& info, size_t index) {
  if (info.Length() <= index || info[index].IsUndefined()) return 0;
  const int64_t tag = arg_int(info, index, "tag");
  if (tag < 0 || tag >= kExternalTags) throw_invalid(info.Env(), "tag must be in [0, 7]");
  return int(tag);
}

Napi::Value TestExternalArrayBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t bytes = arg_int(info, 0, "bytes");
  if (bytes <= 0 || bytes > (int64_t(1) << 30)) throw_invalid(env, "bytes must be in [1, 2^30]");
  std::atomic<int64_t>* finalized = &g_external_finalized[external_tag(info, 1)];
  const size_t rounded = (size_t(bytes) + kHugePage2M - 1) & ~(kHugePage2M - 1);
  uint8_t* p = nullptr;
  try {
    p = static_cast<uint8_t*>(aligned_alloc_huge(rounded));
  } catch (const emollm::Error& e) {
    throw make_js_error(env, e);
  }
  for (size_t i = 0; i < size_t(bytes); ++i) p[i] = uint8_t(i * 7);
  return Napi::ArrayBuffer::New(
      env, p, size_t(bytes),
      [](Napi::Env, void* data, std::atomic<int64_t>* count) {
        aligned_free(data);
        count->fetch_add(1);
      },
      finalized);
}

AddonData& addon_data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

// exports[name](on: boolean): sets one of the environment's boolean test switches.
void set_flag_hook(Napi::Env env, Napi::Object exports, const char* name, bool AddonData::*flag) {
  exports.Set(name, Napi::Function::New(
                        env,
                        [name, flag](const Napi::CallbackInfo& info) -> Napi::Value {
                          if (info.Length() < 1 || !info[0].IsBoolean())
                            throw_invalid(info.Env(), std::string(name) + " expects a boolean");
                          addon_data(info.Env()).*flag = info[0].As<Napi::Boolean>().Value();
                          return info.Env().Undefined();
                        },
                        name));
}

}  // namespace

void register_testing(Napi::Env env, Napi::Object exports) {
  exports.Set("testExternalArrayBuffer", Napi::Function::New(env, TestExternalArrayBuffer, "testExternalArrayBuffer"));
  exports.Set("testExternalFinalized", Napi::Function::New(
                                           env, [](const Napi::CallbackInfo& info) -> Napi::Value {
                                             return Napi::Number::New(info.Env(), double(g_external_finalized[external_tag(info, 0)].load()));
                                           },
                                           "testExternalFinalized"));
  exports.Set("testFailNextWorker", Napi::Function::New(
                                        env, [](const Napi::CallbackInfo& info) -> Napi::Value {
                                          // (false): disarms it (a test whose call made no worker)
                                          using F = AddonData::FailWorker;
                                          F mode = F::kBefore;
                                          if (info.Length() >= 1 && info[0].IsString()) {
                                            if (info[0].As<Napi::String>().Utf8Value() != "after")
                                              throw_invalid(info.Env(), "testFailNextWorker expects a boolean or 'after'");
                                            mode = F::kAfter;
                                          } else if (info.Length() >= 1 && !info[0].ToBoolean()) {
                                            mode = F::kNo;
                                          }
                                          addon_data(info.Env()).fail_next_worker = mode;
                                          return info.Env().Undefined();
                                        },
                                        "testFailNextWorker"));
  exports.Set("testReadProbeHeldBytes", Napi::Function::New(
                                            env, [](const Napi::CallbackInfo& info) -> Napi::Value {
                                              return Napi::Number::New(info.Env(), double(read_probe_held_bytes()));
                                            },
                                            "testReadProbeHeldBytes"));
  set_flag_hook(env, exports, "testZeroWrittenResults", &AddonData::zero_written_results);
  set_flag_hook(env, exports, "testPoisonWrittenResults", &AddonData::poison_written_results);
}

}  // namespace emollm::addon
