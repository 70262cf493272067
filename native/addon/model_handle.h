// The addon's shared model state and argument readers (used by model_binding.cpp, which loads
// models and runs the per-context calls, and batch_binding.cpp, which runs concurrent sequences
// on the core's Scheduler).
#pragma once
#include <napi.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "model/emollm.h"
#include "model/emollm_qwen2_vl.h"
#include "model/llama.h"
#include "model/llava.h"
#include "model/llava_next.h"
#include "model/qwen2_vl.h"
#include "model/session.h"

namespace emollm::addon {

// ---------------------------------------------------------------- shared native state

struct ContextState;
struct BatchState;

// Main-thread state of one loaded model.
struct ModelHandle {
  std::shared_ptr<LlamaModel> model;  // null once closed
  std::shared_ptr<LlavaModel> llava;  // LLaVA models only (model == llava->text_model()); null once closed
  std::shared_ptr<EmollmModel> emollm;  // EmoLLM models only (llava == emollm->base()); null once closed
  std::shared_ptr<Qwen2VLModel> qwen;   // Qwen2-VL models only (model == qwen->text_model()); null once closed
  std::shared_ptr<EmollmQwen2VLModel> emollm_qwen;  // EmoLLM on Qwen2-VL (qwen == emollm_qwen->base())
  std::vector<std::weak_ptr<std::atomic<bool>>> encode_aborts;  // in-flight encodeImages calls
  int64_t default_n_ctx = 0;
  emollm::DType default_kv_type = emollm::DType::F32;  // loadModel's kvCacheType
  std::vector<std::weak_ptr<ContextState>> contexts;
  std::vector<std::weak_ptr<BatchState>> batches;  // batch_binding.cpp
  int inflight = 0;  // eval/generate calls running on this model
  std::vector<Napi::Promise::Deferred> close_waiters;
};

// One context. `ctx` is used by at most one worker at a time (busy); the other fields are
// main-thread only except the atomics.
struct ContextState {
  std::shared_ptr<ModelHandle> owner;
  std::shared_ptr<LlamaModel> model;
  std::shared_ptr<LlavaModel> llava;  // LLaVA models only
  std::shared_ptr<EmollmModel> emollm;  // EmoLLM models only
  std::shared_ptr<Qwen2VLModel> qwen;   // Qwen2-VL models only
  std::unique_ptr<LlamaContext> ctx;
  std::atomic<bool> abort{false};
  std::atomic<int64_t> n_past{0};
  int64_t n_ctx = 0;
  bool busy = false;
  bool closed = false;
  std::vector<Napi::Promise::Deferred> close_waiters;
};

void resolve_all(Napi::Env env, std::vector<Napi::Promise::Deferred>& waiters);
// Releases a context's native memory unless a call is still using it.
void release_context(Napi::Env env, ContextState& s);
void close_context(Napi::Env env, ContextState& s);
void maybe_finish_model_close(Napi::Env env, ModelHandle& h);
Napi::Error closed_error(Napi::Env env, const char* what);

std::vector<int32_t> int32_array(Napi::Env env, Napi::Value v, const char* what);
std::vector<float> float32_array(Napi::Env env, Napi::Value v, const char* what);

// Image features of a request, read in place from the caller's Float32Array: the request holds a
// reference to it (taken and dropped on the JavaScript thread) and the worker / scheduler thread
// reads `data` until the request settles. Nothing is copied on the event loop (a LLaVA-1.5 image
// is 9 MiB: the copy took 0.65-0.74 ms a call, 50-68 ms for each of the first three). The caller
// must not change, transfer or detach the array before the call settles (as fs.write's buffer);
// a detached array is ERR_INVALID_ARGUMENT, at submission or (detached meanwhile) at settlement.
struct FeatureArg {
  Napi::Reference<Napi::Float32Array> ref;  // JavaScript thread only
  const float* data = nullptr;
  size_t n = 0;
  FeatureArg() = default;
  FeatureArg(FeatureArg&&) = default;             // the moved-from reference is empty
  FeatureArg& operator=(FeatureArg&&) = default;  // only into an empty one
  ~FeatureArg();
  bool empty() const { return n == 0; }
  // JavaScript thread: drops the reference; true when the array was detached meanwhile.
  bool release();
};
// Feature arrays referenced by calls in flight (addon.liveFeatureRefs(): the tests' check that a
// request holds its caller's array until it settles, and not after).
int64_t live_feature_refs();

// Projected image features (argument i: Float32Array, null or undefined) for a context's model:
// returns the image count (0 when none) and fills *out (a reference, no copy). EmoLLM models: images have per-image
// token counts, read from the array's `tokenCounts` (Int32Array, as encodeImages sets it) or,
// when absent, nImageTokens (no faces) each; *counts receives them.
// LLaVA-NeXT and Qwen2-VL features always carry tokenCounts (their counts follow the image size);
// Qwen2-VL's also carry `grids` (Int32Array [3 * visuals]: t, h, w), read into *grids.
int64_t image_features_arg(const Napi::CallbackInfo& info, size_t i, const LlavaModel* llava, FeatureArg* out,
                           const EmollmModel* emollm = nullptr, std::vector<int64_t>* counts = nullptr,
                           const Qwen2VLModel* qwen = nullptr, std::vector<GridThw>* grids = nullptr);

// Image tokens -> pseudo-ids whose input embeddings are the image features (LLaVA: a fixed count
// per image; LLaVA-NeXT / EmoLLM: `counts`), and for Qwen2-VL the M-RoPE positions into *pos3.
// Runs off the event loop (it hashes the features).
std::vector<int32_t> splice_images(const LlavaModel* llava, const EmollmModel* emollm, const Qwen2VLModel* qwen,
                                   const std::vector<int32_t>& tokens, const float* images, int64_t n_images,
                                   const std::vector<int64_t>& counts, const std::vector<GridThw>& grids,
                                   std::vector<int32_t>* pos3);

// The length splice_images gives (computed on the JavaScript thread, without hashing the features):
// the core's rule (model/image_splice.h) for the same model's splice. -1 when the prompt's image
// tokens are neither one per image nor all expanded (splice_images then throws, naming the counts).
int64_t spliced_length(const LlavaModel* llava, const EmollmModel* emollm, const Qwen2VLModel* qwen,
                       const std::vector<int32_t>& tokens, int64_t n_images, const std::vector<int64_t>& counts,
                       const std::vector<GridThw>& grids);

// The generate options object (temperature, topK, topP, repetitionPenalty, repeatLastN, seed,
// maxTokens, stopTokens): one reader for every generation path.
GenerateParams read_generate_params(Napi::Env env, Napi::Object o);

// vision_binding.cpp: model.encodeImages / encodeAnyres / encodePatches.
Napi::Value encode_images(const Napi::CallbackInfo& info, const std::shared_ptr<ModelHandle>& h);
Napi::Value encode_anyres(const Napi::CallbackInfo& info, const std::shared_ptr<ModelHandle>& h);
Napi::Value encode_patches(const Napi::CallbackInfo& info, const std::shared_ptr<ModelHandle>& h);

// context_binding.cpp: model.createContext({ nCtx?, nBatch? }) -> Context.
Napi::Value create_context(const Napi::CallbackInfo& info, const std::shared_ptr<ModelHandle>& h);
void register_context(Napi::Env env);

// batch_binding.cpp: model.createBatch({ nCtx?, maxSequences? }) and closing a batch.
Napi::Value create_batch(const Napi::CallbackInfo& info, const std::shared_ptr<ModelHandle>& h);
void close_batch(Napi::Env env, BatchState& b);
void register_batch(Napi::Env env);

}  // namespace emollm::addon
