// LLaMA model entry points for JavaScript (lib/model.ts builds the public API on these):
//
//   loadModel(path, { threads?, nCtx?, kvCacheType?, mmproj?, imageTokenId? }) -> Promise<Model>
//       A LLaVA model is loaded from a Hugging Face folder whose config.json has model_type
//       "llava", or from a text GGUF with `mmproj` (llama.cpp's CLIP projector GGUF).
//   model.info() -> { format, arch, nVocab, nEmbd, nLayer, nHead, nHeadKv, nCtxTrain, ropeTheta, bosId?, eosId?,
//                     vision?: { imageSize, patchSize, nImageTokens, imageTokenId, mean?, std? } }
//   model.encodeImages(pixels: Float32Array [B,3,H,W], B, faces?, { out? }) -> Promise<Float32Array [B, nImageTokens, nEmbd]>
//       out (LLaVA): a Float32Array of exactly B * nImageTokens * nEmbd floats that the tower writes
//       into directly and the promise resolves to (no fresh result array: a reused one is already
//       faulted in); ERR_INVALID_ARGUMENT for another type or size, or memory that an encodeImages
//       call still running writes; ERR_UNSUPPORTED on EmoLLM models.
//       EmoLLM models (config.json with an `emollm` section, native/model/emollm.h): faces is an
//       optional array (one per image) of [{ x, y, width, height }] boxes in pixels of the tower
//       input; images then take different token counts, so the result carries `tokenCounts`
//       (Int32Array [B]), which eval/generate/score read back from the array they are given.
//       info().emollm = { fusion, nVisionTokens, perspectives: [{ name, type, gate, layers, ... }] }
//       (LLaVA only: vision tower + projector, all B images in one batch; model.abortEncodes()
//       or model.close() rejects in-flight calls with ERR_ABORTED)
//   model.encodeAnyres(pixels: Float32Array [tiles, 3, S, S], sizes: Int32Array [2 * images])
//       LLaVA-NeXT (config model_type "llava_next"): each image's tiles (base first, from the anyres
//       preprocessing) and its original (height, width) -> packed features with tokenCounts.
//   model.encodePatches(patches: Float32Array [N, C*Tp*P*P], grids: Int32Array [3 * visuals])
//       Qwen2-VL (model_type "qwen2_vl"): images' / videos' flattened patches and (t, h, w) grids ->
//       merged features with tokenCounts and grids; eval/generate/score then place them at the
//       <|image_pad|> / <|video_pad|> tokens with M-RoPE positions.
//   model.createContext({ nCtx?, nBatch?, kvCacheType? }) -> Context
//   model.close() -> Promise<void>
//   ctx.eval(tokens: Int32Array, { allLogits? }) -> Promise<Float32Array>
//   ctx.evalMultimodal(tokens: Int32Array, images: Float32Array | null, { allLogits? }) -> Promise<Float32Array>
//       `images` are projected features from encodeImages (B * nImageTokens * nEmbd floats). The
//       prompt holds the image token (info().vision.imageTokenId) once per image or already
//       expanded nImageTokens times per image; anything else is ERR_INVALID_ARGUMENT naming the
//       counts. allLogits rows are per expanded position. Prefix reuse tells images apart.
//   ctx.generate(prompt: Int32Array, opts, onTokens?: (ids: Int32Array) => void, images?: Float32Array | null)
//       -> Promise<{ tokens: Int32Array, stopReason: 'eos'|'stop-token'|'max-tokens'|'aborted'|'context-full' }>
//   ctx.score(prefix: Int32Array, images: Float32Array | null, continuations: Int32Array[])
//       -> Promise<{ logprobs: number[], tokenLogprobs: Float64Array[] }>
//       (log-probabilities of each continuation after the prefix: the prefix is evaluated once
//       (and reused from the cache), each continuation from it; log-softmax in double)
//   ctx.abort(), ctx.reset(), ctx.close() -> Promise<void>, ctx.nPast, ctx.nCtx
//   model.createBatch({ nCtx?, maxSequences? }) -> Batch: concurrent sequences on the core's
//       Scheduler (continuous batching); see batch_binding.cpp for its methods.
//
// Files, by concern: model_binding.cpp (this: loadModel, info, the Model object and its lifetime),
// model_handle.{h,cpp} (shared state, argument and options readers, image splicing),
// vision_binding.cpp (encode workers), context_binding.cpp (one-sequence contexts and their
// eval / score / generate workers), batch_binding.cpp (concurrent sequences).
//
// Threads. Loading and every eval/generate run off the event loop on a libuv worker thread (one
// per call: a generate's whole decode loop runs on that one thread, which drives the model's
// compute pool). Generated tokens reach JavaScript through a thread-safe function in batches:
// the decode thread appends to a queue and schedules at most one delivery at a time, and the
// delivery hands over everything queued since the last one, so a slow callback never slows
// decoding. Calls on one context are exclusive (a second eval/generate while one runs rejects
// with ERR_INVALID_ARGUMENT "context busy"); different contexts of one model may run at the same
// time: the model's compute pool serialises their kernel calls (ThreadPool::run), so they
// interleave kernel by kernel and share the cores.
//
// Lifetime. The model's native memory (mapped weights, backend) is reference-counted by the
// Model object, its open contexts and their in-flight calls. close() on a context or model
// makes later calls throw ERR_INVALID_ARGUMENT, aborts in-flight calls (they settle with
// stopReason 'aborted' / ERR_ABORTED at the next token or layer), and returns a promise that
// resolves once the native memory is released. Closing a model closes its contexts.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "bindings.h"
#include "model/llama.h"
#include "model/emollm.h"
#include "model/llava.h"
#include "model/llava_next.h"
#include "model/qwen2_vl.h"
#include "model/emollm_qwen2_vl.h"
#include "model/sampler.h"
#include "model/session.h"
#include "model_handle.h"
#include "napi_util.h"

namespace emollm::addon {
namespace {

// An EmoLLM model's perspectives as info() reports them (LLaVA / LLaVA-NeXT and Qwen2-VL alike).
Napi::Array perspectives_array(Napi::Env env, const std::vector<MvpPerspective>& perspectives) {
  Napi::Array ps = Napi::Array::New(env, perspectives.size());
  for (size_t i = 0; i < perspectives.size(); ++i) {
    const MvpPerspective& p = perspectives[i];
    Napi::Object po = Napi::Object::New(env);
    po.Set("name", p.name);
    po.Set("type", p.type_name());
    po.Set("gate", mvp_gate_name(p.gate));
    Napi::Array ls = Napi::Array::New(env, p.layers.size());
    for (size_t j = 0; j < p.layers.size(); ++j) ls.Set(uint32_t(j), double(p.layers[j]));
    po.Set("layers", ls);
    po.Set("inputSize", double(p.d_in));
    if (p.gate != MvpGate::Closed) po.Set("hiddenSize", double(p.d_hid));
    std::vector<std::pair<std::string, double>> fields;  // the kind's own (mvp_kind.h)
    if (p.kind && p.kind->info) p.kind->info(p, &fields);
    for (const auto& [key, value] : fields) po.Set(key, value);
    ps.Set(uint32_t(i), po);
  }
  return ps;
}

// ---------------------------------------------------------------- classes and per-env constructors

class ModelWrap;

struct Constructors {
  Napi::FunctionReference model;
};
std::mutex g_ctor_mutex;
std::unordered_map<napi_env, Constructors*> g_ctors;

Constructors& ctors(Napi::Env env) {
  std::lock_guard<std::mutex> lk(g_ctor_mutex);
  return *g_ctors.at(env);
}

// Handed from the factory to the constructor (JavaScript cannot construct these directly).
thread_local std::shared_ptr<ModelHandle>* tl_new_model = nullptr;

// Model and context workers use the addon's one worker base (napi_util.h), whose Finish()
// hook releases the handle before the promise settles.
using ModelWorker = PromiseWorker;

// ---------------------------------------------------------------- loadModel

class LoadWorker final : public ModelWorker {
 public:
  LoadWorker(Napi::Env env, std::string path, LlavaLoadOptions opts, int64_t n_ctx, DType kv_type)
      : ModelWorker(env), path_(std::move(path)), opts_(std::move(opts)), n_ctx_(n_ctx), kv_type_(kv_type) {}

 protected:
  void Run() override {
    if (!opts_.mmproj.empty() && Qwen2VLModel::is_qwen2vl_mmproj(opts_.mmproj)) {  // llama.cpp's Qwen2-VL pair
      LlamaLoadOptions lo;
      lo.threads = opts_.threads;
      lo.device = opts_.device;
      qwen_ = Qwen2VLModel::load_gguf(path_, opts_.mmproj, lo);
      model_ = qwen_->text_model();
    } else if (opts_.mmproj.empty() && Qwen2VLModel::is_qwen2_vl_folder(path_)) {
      LlamaLoadOptions lo;
      lo.threads = opts_.threads;
      lo.device = opts_.device;
      if (EmollmQwen2VLModel::is_emollm_qwen2_vl_folder(path_)) {
        emollm_qwen_ = EmollmQwen2VLModel::load(path_, lo);
        qwen_ = emollm_qwen_->base();
      } else {
        qwen_ = Qwen2VLModel::load(path_, lo);
      }
      model_ = qwen_->text_model();
    } else if (opts_.mmproj.empty() && EmollmModel::is_emollm_folder(path_)) {
      emollm_ = EmollmModel::load(path_, opts_);
      llava_ = emollm_->base();
      model_ = llava_->text_model();
    } else if (!opts_.mmproj.empty() || LlavaModel::is_llava_folder(path_)) {
      llava_ = LlavaModel::load(path_, opts_);
      model_ = llava_->text_model();
    } else {
      LlamaLoadOptions lo;
      lo.threads = opts_.threads;
      lo.device = opts_.device;
      model_ = LlamaModel::load(path_, lo);
    }
    // kvCacheType: refused at the load (ERR_UNSUPPORTED, naming the backend) where the backend
    // has no such cache, not at the first call
    model_->backend().require_kv_dtype(kv_type_);
  }
  Napi::Value Resolve(Napi::Env env) override {
    auto h = std::make_shared<ModelHandle>();
    h->model = std::move(model_);
    h->llava = std::move(llava_);
    h->emollm = std::move(emollm_);
    h->qwen = std::move(qwen_);
    h->emollm_qwen = std::move(emollm_qwen_);
    h->default_n_ctx = n_ctx_;
    h->default_kv_type = kv_type_;
    tl_new_model = &h;
    Napi::Object obj;
    try {
      obj = ctors(env).model.New({});
    } catch (...) {
      tl_new_model = nullptr;
      throw;
    }
    tl_new_model = nullptr;
    return obj;
  }

 private:
  std::string path_;
  LlavaLoadOptions opts_;
  int64_t n_ctx_;
  DType kv_type_;
  std::shared_ptr<LlamaModel> model_;
  std::shared_ptr<LlavaModel> llava_;
  std::shared_ptr<EmollmModel> emollm_;
  std::shared_ptr<Qwen2VLModel> qwen_;
  std::shared_ptr<EmollmQwen2VLModel> emollm_qwen_;
};

Napi::Value LoadModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = arg_string(info, 0, "path");
  Napi::Object o = opt_object(info, 1, "options");
  LlavaLoadOptions lo;
  const RuntimeOptions ro = read_runtime_options(env, o);
  lo.threads = ro.threads;
  if (ro.device_set) lo.device = ro.device;
  // The model load options carry the device kind only (not yet an index): refuse 'cuda:N' for
  // N > 0 rather than silently loading onto GPU 0.
  if (ro.device_set && ro.device_index != 0)
    throw make_js_error(env, "ERR_UNSUPPORTED",
                        "loadModel: device 'cuda:" + std::to_string(ro.device_index) +
                            "' is not supported yet for models; use device 'cuda' with CUDA_VISIBLE_DEVICES=" +
                            std::to_string(ro.device_index));
  const int64_t n_ctx = opt_int(env, o, "nCtx", 0, 0, int64_t(1) << 24);
  if (has_opt(o, "mmproj")) {
    if (!o.Get("mmproj").IsString()) throw_invalid(env, "mmproj must be a string");
    lo.mmproj = o.Get("mmproj").As<Napi::String>().Utf8Value();
  }
  lo.image_token_id = int32_t(opt_int(env, o, "imageTokenId", -1, -1, INT32_MAX));
  const DType kv_type = opt_kv_type(env, o, "kvCacheType", DType::F32);
  auto* w = new_worker<LoadWorker>(env, "loadModel", env, std::move(path), lo, n_ctx, kv_type);
  return w->claim_and_queue();
}

// ---------------------------------------------------------------- Model

class ModelWrap final : public Napi::ObjectWrap<ModelWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "LlamaModel",
                       {InstanceMethod<&ModelWrap::Info>("info"),
                        InstanceMethod<&ModelWrap::EncodeImages>("encodeImages"),
                        InstanceMethod<&ModelWrap::EncodeAnyres>("encodeAnyres"),
                        InstanceMethod<&ModelWrap::EncodePatches>("encodePatches"),
                        InstanceMethod<&ModelWrap::AbortEncodes>("abortEncodes"),
                        InstanceMethod<&ModelWrap::CreateContext>("createContext"),
                        InstanceMethod<&ModelWrap::CreateBatch>("createBatch"),
                        InstanceMethod<&ModelWrap::Close>("close")});
  }
  explicit ModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelWrap>(info) {
    if (!tl_new_model) throw_invalid(info.Env(), "use loadModel() to create a model");
    handle_ = *tl_new_model;
    tl_new_model = nullptr;
  }

 private:
  const LlamaModel& live(Napi::Env env) {
    if (!handle_->model) throw closed_error(env, "model");
    return *handle_->model;
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const LlamaModel& m = live(env);
    const LlamaHparams& h = m.hparams();
    Napi::Object o = Napi::Object::New(env);
    o.Set("format", m.format());
    o.Set("arch", m.arch());
    o.Set("nVocab", double(h.n_vocab));
    o.Set("nEmbd", double(h.n_embd));
    o.Set("nLayer", double(h.n_layer));
    o.Set("nHead", double(h.n_head));
    o.Set("nHeadKv", double(h.n_head_kv));
    o.Set("nCtxTrain", double(h.n_ctx_train));
    o.Set("ropeTheta", double(h.rope_theta));
    if (h.bos_id >= 0) o.Set("bosId", double(h.bos_id));
    if (!h.eos_ids.empty()) o.Set("eosId", double(h.eos_ids[0]));
    Napi::Array warnings = Napi::Array::New(env, m.warnings().size());
    for (size_t i = 0; i < m.warnings().size(); ++i) warnings.Set(uint32_t(i), m.warnings()[i]);
    o.Set("warnings", warnings);
    if (const Qwen2VLModel* qm = handle_->qwen.get()) {  // Qwen2-VL: dynamic resolution, images and videos
      const Qwen2VisionConfig& vc = qm->vision().config();
      Napi::Object v = Napi::Object::New(env);
      v.Set("family", "qwen2_vl");
      v.Set("patchSize", double(vc.patch_size));
      v.Set("mergeSize", double(vc.spatial_merge_size));
      v.Set("temporalPatchSize", double(vc.temporal_patch_size));
      v.Set("nChannels", double(vc.in_channels));
      v.Set("imageTokenId", double(qm->image_token_id()));
      v.Set("videoTokenId", double(qm->video_token_id()));
      v.Set("visionStartTokenId", double(qm->config().vision_start_token_id));
      v.Set("visionEndTokenId", double(qm->config().vision_end_token_id));
      o.Set("vision", v);
      if (const EmollmQwen2VLModel* eq = handle_->emollm_qwen.get()) {  // MVP around the patch merger
        Napi::Object e = Napi::Object::New(env);
        e.Set("fusion", eq->fusion());
        e.Set("perspectives", perspectives_array(env, eq->perspectives()));
        o.Set("emollm", e);
      }
    }
    if (const LlavaModel* lv = handle_->llava.get()) {
      const ClipHparams& vh = lv->vision().hparams();
      Napi::Object v = Napi::Object::New(env);
      v.Set("imageSize", double(vh.image_size));
      v.Set("patchSize", double(vh.patch_size));
      v.Set("nChannels", double(vh.n_channels));
      v.Set("nImageTokens", double(lv->n_image_tokens()));
      v.Set("imageTokenId", double(lv->image_token_id()));
      v.Set("family", lv->anyres() ? "llava_next" : "llava");
      if (lv->anyres()) {  // LLaVA-NeXT: [height, width] pinpoints
        Napi::Array pa = Napi::Array::New(env, lv->grid_pinpoints().size());
        for (size_t i = 0; i < lv->grid_pinpoints().size(); ++i) {
          Napi::Array pp = Napi::Array::New(env, 2);
          pp.Set(uint32_t(0), double(lv->grid_pinpoints()[i].first));
          pp.Set(uint32_t(1), double(lv->grid_pinpoints()[i].second));
          pa.Set(uint32_t(i), pp);
        }
        v.Set("gridPinpoints", pa);
      }
      auto arr = [&](const std::vector<float>& x) {
        Napi::Array a = Napi::Array::New(env, x.size());
        for (size_t i = 0; i < x.size(); ++i) a.Set(uint32_t(i), double(x[i]));
        return a;
      };
      if (lv->image_mean().size() == size_t(vh.n_channels)) v.Set("mean", arr(lv->image_mean()));
      if (lv->image_std().size() == size_t(vh.n_channels)) v.Set("std", arr(lv->image_std()));
      if (const EmollmModel* em = handle_->emollm.get()) {
        v.Set("nImageTokens", double(em->n_image_tokens(0)));
        Napi::Object e = Napi::Object::New(env);
        e.Set("fusion", em->fusion());
        e.Set("nVisionTokens", double(em->n_vision_tokens()));
        e.Set("perspectives", perspectives_array(env, em->perspectives()));
        o.Set("emollm", e);
      }
      o.Set("vision", v);
    }
    return o;
  }

  Napi::Value EncodeImages(const Napi::CallbackInfo& info) { return encode_images(info, handle_); }  // vision_binding.cpp
  Napi::Value EncodeAnyres(const Napi::CallbackInfo& info) { return encode_anyres(info, handle_); }
  Napi::Value EncodePatches(const Napi::CallbackInfo& info) { return encode_patches(info, handle_); }

  Napi::Value AbortEncodes(const Napi::CallbackInfo& info) {
    for (auto& w : handle_->encode_aborts)
      if (auto a = w.lock()) a->store(true);
    return info.Env().Undefined();
  }

  Napi::Value CreateContext(const Napi::CallbackInfo& info) { return create_context(info, handle_); }  // context_binding.cpp

  // createBatch({ nCtx?, maxSequences? }): concurrent sequences on the core's Scheduler (batch_binding.cpp).
  Napi::Value CreateBatch(const Napi::CallbackInfo& info) {
    live(info.Env());
    return create_batch(info, handle_);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto d = Napi::Promise::Deferred::New(env);
    for (auto& w : handle_->contexts)
      if (auto s = w.lock()) close_context(env, *s);
    handle_->contexts.clear();
    for (auto& w : handle_->batches)
      if (auto b = w.lock()) close_batch(env, *b);
    handle_->batches.clear();
    for (auto& w : handle_->encode_aborts)
      if (auto a = w.lock()) a->store(true);
    handle_->model.reset();
    handle_->llava.reset();
    handle_->emollm.reset();
    handle_->qwen.reset();
    handle_->emollm_qwen.reset();
    handle_->close_waiters.push_back(d);
    maybe_finish_model_close(env, *handle_);
    return d.Promise();
  }

  std::shared_ptr<ModelHandle> handle_;
};

}  // namespace

void register_model(Napi::Env env, Napi::Object exports) {
  auto* c = new Constructors();
  c->model = Napi::Persistent(ModelWrap::Define(env));
  register_context(env);
  register_batch(env);
  {
    std::lock_guard<std::mutex> lk(g_ctor_mutex);
    g_ctors[napi_env(env)] = c;
  }
  napi_env raw = env;
  env.AddCleanupHook([raw]() {
    std::lock_guard<std::mutex> lk(g_ctor_mutex);
    auto it = g_ctors.find(raw);
    if (it != g_ctors.end()) {
      delete it->second;
      g_ctors.erase(it);
    }
  });
  exports.Set("loadModel", Napi::Function::New(env, LoadModel, "loadModel"));
  exports.Set("liveFeatureRefs", Napi::Function::New(
                                     env, [](const Napi::CallbackInfo& info) -> Napi::Value {
                                       return Napi::Number::New(info.Env(), double(live_feature_refs()));
                                     },
                                     "liveFeatureRefs"));
}

}  // namespace emollm::addon
