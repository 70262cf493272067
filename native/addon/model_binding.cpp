// LLaMA model entry points for JavaScript (lib/model.ts builds the public API on these):
//
//   loadModel(path, { threads?, nCtx?, mmproj?, imageTokenId? }) -> Promise<Model>
//       A LLaVA model is loaded from a Hugging Face folder whose config.json has model_type
//       "llava", or from a text GGUF with `mmproj` (llama.cpp's CLIP projector GGUF).
//   model.info() -> { format, arch, nVocab, nEmbd, nLayer, nHead, nHeadKv, nCtxTrain, ropeTheta, bosId?, eosId?,
//                     vision?: { imageSize, patchSize, nImageTokens, imageTokenId, mean?, std? } }
//   model.encodeImages(pixels: Float32Array [B,3,H,W], B, faces?) -> Promise<Float32Array [B, nImageTokens, nEmbd]>
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
//   model.createContext({ nCtx?, nBatch? }) -> Context
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

// ---------------------------------------------------------------- shared native state

struct ContextState;

// Main-thread state of one loaded model.
struct ModelHandle {
  std::shared_ptr<LlamaModel> model;  // null once closed
  std::shared_ptr<LlavaModel> llava;  // LLaVA models only (model == llava->text_model()); null once closed
  std::shared_ptr<EmollmModel> emollm;  // EmoLLM models only (llava == emollm->base()); null once closed
  std::shared_ptr<Qwen2VLModel> qwen;   // Qwen2-VL models only (model == qwen->text_model()); null once closed
  std::shared_ptr<EmollmQwen2VLModel> emollm_qwen;  // EmoLLM on Qwen2-VL (qwen == emollm_qwen->base())
  std::vector<std::weak_ptr<std::atomic<bool>>> encode_aborts;  // in-flight encodeImages calls
  int64_t default_n_ctx = 0;
  std::vector<std::weak_ptr<ContextState>> contexts;
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

void resolve_all(Napi::Env env, std::vector<Napi::Promise::Deferred>& waiters) {
  std::vector<Napi::Promise::Deferred> w;
  w.swap(waiters);
  for (auto& d : w) d.Resolve(env.Undefined());
}

// Releases a context's native memory unless a call is still using it.
void release_context(Napi::Env env, ContextState& s) {
  if (s.busy) return;
  s.ctx.reset();
  s.model.reset();
  s.llava.reset();
  s.emollm.reset();
  s.qwen.reset();
  resolve_all(env, s.close_waiters);
}

void close_context(Napi::Env env, ContextState& s) {
  if (!s.closed) {
    s.closed = true;
    s.abort.store(true);
  }
  release_context(env, s);
}

void maybe_finish_model_close(Napi::Env env, ModelHandle& h) {
  if (!h.model && h.inflight == 0) resolve_all(env, h.close_waiters);
}

Napi::Error closed_error(Napi::Env env, const char* what) {
  return make_js_error(env, "ERR_INVALID_ARGUMENT", std::string(what) + " is closed");
}

// ---------------------------------------------------------------- option helpers
// opt_object / has_opt / opt_number / opt_int / read_runtime_options: napi_util.h.

std::vector<int32_t> int32_array(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw_invalid(env, std::string(what) + " must be an Int32Array");
  auto a = v.As<Napi::Int32Array>();
  return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}

std::vector<float> float32_array(Napi::Env env, Napi::Value v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw_invalid(env, std::string(what) + " must be a Float32Array");
  auto a = v.As<Napi::Float32Array>();
  return std::vector<float>(a.Data(), a.Data() + a.ElementLength());
}

// Projected image features (argument i: Float32Array, null or undefined) for a context's model:
// returns the image count (0 when none) and fills *out. EmoLLM models: images have per-image
// token counts, read from the array's `tokenCounts` (Int32Array, as encodeImages sets it) or,
// when absent, nImageTokens (no faces) each; *counts receives them.
// LLaVA-NeXT and Qwen2-VL features always carry tokenCounts (their counts follow the image size);
// Qwen2-VL's also carry `grids` (Int32Array [3 * visuals]: t, h, w), read into *grids.
int64_t image_features_arg(const Napi::CallbackInfo& info, size_t i, const LlavaModel* llava, std::vector<float>* out,
                           const EmollmModel* emollm = nullptr, std::vector<int64_t>* counts = nullptr,
                           const Qwen2VLModel* qwen = nullptr, std::vector<GridThw>* grids = nullptr) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return 0;
  *out = float32_array(env, info[i], "images");
  if (out->empty()) return 0;
  if (!llava && !qwen) throw make_js_error(env, "ERR_UNSUPPORTED", "images were given but the model has no vision tower (not a multimodal model)");
  if ((qwen || llava->anyres()) && counts) {  // ---- variable token counts: tokenCounts required
    const int64_t E = qwen ? qwen->n_embd() : llava->n_embd();
    Napi::Object o = info[i].As<Napi::Object>();
    if (!o.Has("tokenCounts") || !o.Get("tokenCounts").IsTypedArray())
      throw_invalid(env, "images must carry tokenCounts (pass the features from encodeAnyres / encodePatches)");
    counts->clear();
    int64_t total = 0;
    for (int32_t x : int32_array(env, o.Get("tokenCounts"), "images.tokenCounts")) {
      if (x < 0) throw_invalid(env, "images.tokenCounts must not be negative");
      counts->push_back(x);
      total += x;
    }
    if (total * E != int64_t(out->size()))
      throw_invalid(env, "images has " + std::to_string(out->size()) + " floats, but its tokenCounts sum to " +
                             std::to_string(total) + " tokens of nEmbd = " + std::to_string(E));
    if (qwen && grids) {
      if (!o.Has("grids") || !o.Get("grids").IsTypedArray()) throw_invalid(env, "images must carry grids (from encodePatches)");
      std::vector<int32_t> g = int32_array(env, o.Get("grids"), "images.grids");
      if (g.size() != counts->size() * 3) throw_invalid(env, "images.grids must hold 3 numbers (t, h, w) per visual");
      grids->clear();
      for (size_t k = 0; k < counts->size(); ++k) {
        GridThw gt{g[k * 3], g[k * 3 + 1], g[k * 3 + 2]};
        if (gt.t <= 0 || gt.h <= 0 || gt.w <= 0 || qwen->n_tokens(gt) != (*counts)[k])
          throw_invalid(env, "images.grids[" + std::to_string(k) + "] does not match its tokenCounts");
        grids->push_back(gt);
      }
    }
    return int64_t(counts->size());
  }
  if (emollm && counts) {
    const int64_t E = emollm->n_embd();
    counts->clear();
    Napi::Object o = info[i].As<Napi::Object>();
    if (o.Has("tokenCounts") && o.Get("tokenCounts").IsTypedArray()) {
      std::vector<int32_t> c = int32_array(env, o.Get("tokenCounts"), "images.tokenCounts");
      int64_t total = 0;
      for (int32_t x : c) {
        if (x < 0) throw_invalid(env, "images.tokenCounts must not be negative");
        counts->push_back(x);
        total += x;
      }
      if (total * E != int64_t(out->size()))
        throw_invalid(env, "images has " + std::to_string(out->size()) + " floats, but its tokenCounts sum to " +
                               std::to_string(total) + " tokens of nEmbd = " + std::to_string(E));
      return int64_t(counts->size());
    }
    const int64_t per = emollm->n_image_tokens(0) * E;
    if (per == 0 || int64_t(out->size()) % per != 0)
      throw_invalid(env, "images has " + std::to_string(out->size()) + " floats, not a multiple of nImageTokens * nEmbd = " +
                             std::to_string(emollm->n_image_tokens(0)) + " * " + std::to_string(E) +
                             " (pass the features from encodeImages, with their tokenCounts)");
    counts->assign(size_t(int64_t(out->size()) / per), emollm->n_image_tokens(0));
    return int64_t(counts->size());
  }
  const int64_t per = llava->n_image_tokens() * llava->n_embd();
  if (int64_t(out->size()) % per != 0)
    throw_invalid(env, "images has " + std::to_string(out->size()) + " floats, not a multiple of nImageTokens * nEmbd = " +
                           std::to_string(llava->n_image_tokens()) + " * " + std::to_string(llava->n_embd()) +
                           " (pass the projected features from encodeImages)");
  return int64_t(out->size()) / per;
}

// ---------------------------------------------------------------- classes and per-env constructors

class ModelWrap;
class ContextWrap;

struct Constructors {
  Napi::FunctionReference model, context;
};
std::mutex g_ctor_mutex;
std::unordered_map<napi_env, Constructors*> g_ctors;

Constructors& ctors(Napi::Env env) {
  std::lock_guard<std::mutex> lk(g_ctor_mutex);
  return *g_ctors.at(env);
}

// Handed from the factory to the constructor (JavaScript cannot construct these directly).
thread_local std::shared_ptr<ModelHandle>* tl_new_model = nullptr;
thread_local std::shared_ptr<ContextState>* tl_new_context = nullptr;

// Model and context workers use the addon's one worker base (napi_util.h), whose Finish()
// hook releases the handle before the promise settles.
using ModelWorker = PromiseWorker;

// ---------------------------------------------------------------- loadModel

class LoadWorker final : public ModelWorker {
 public:
  LoadWorker(Napi::Env env, std::string path, LlavaLoadOptions opts, int64_t n_ctx)
      : ModelWorker(env), path_(std::move(path)), opts_(std::move(opts)), n_ctx_(n_ctx) {}

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
  }
  Napi::Value Resolve(Napi::Env env) override {
    auto h = std::make_shared<ModelHandle>();
    h->model = std::move(model_);
    h->llava = std::move(llava_);
    h->emollm = std::move(emollm_);
    h->qwen = std::move(qwen_);
    h->emollm_qwen = std::move(emollm_qwen_);
    h->default_n_ctx = n_ctx_;
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
  const int64_t n_ctx = opt_int(env, o, "nCtx", 0, 0, int64_t(1) << 24);
  if (has_opt(o, "mmproj")) {
    if (!o.Get("mmproj").IsString()) throw_invalid(env, "mmproj must be a string");
    lo.mmproj = o.Get("mmproj").As<Napi::String>().Utf8Value();
  }
  lo.image_token_id = int32_t(opt_int(env, o, "imageTokenId", -1, -1, INT32_MAX));
  auto* w = new LoadWorker(env, std::move(path), lo, n_ctx);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// ---------------------------------------------------------------- encodeImages

class EncodeWorker final : public ModelWorker {
 public:
  EncodeWorker(Napi::Env env, std::shared_ptr<ModelHandle> h, std::vector<float> pixels, int64_t B)
      : ModelWorker(env), h_(std::move(h)), llava_(h_->llava), pixels_(std::move(pixels)), B_(B),
        abort_(std::make_shared<std::atomic<bool>>(false)) {
    auto& a = h_->encode_aborts;
    a.erase(std::remove_if(a.begin(), a.end(), [](const std::weak_ptr<std::atomic<bool>>& w) { return w.expired(); }), a.end());
    a.push_back(abort_);
    h_->inflight++;
  }

 protected:
  void Run() override {
    if (emollm_) {
      aborted_ = !emollm_->encode_images(pixels_.data(), B_, faces_.empty() ? nullptr : &faces_, &out_, &counts_,
                                         abort_.get());
      return;
    }
    out_.resize(size_t(B_ * llava_->n_image_tokens() * llava_->n_embd()));
    aborted_ = !llava_->encode_images(pixels_.data(), B_, out_.data(), abort_.get());
  }
  Napi::Value Resolve(Napi::Env env) override {
    if (aborted_) throw make_js_error(env, "ERR_ABORTED", "encodeImages was aborted");
    auto a = Napi::Float32Array::New(env, out_.size());
    std::copy(out_.begin(), out_.end(), a.Data());
    if (emollm_) {  // EmoLLM: per-image token counts travel with the features
      auto c = Napi::Int32Array::New(env, counts_.size());
      for (size_t i = 0; i < counts_.size(); ++i) c[i] = int32_t(counts_[i]);
      a.Set("tokenCounts", c);
    }
    return a;
  }
  void Finish(Napi::Env env) override {
    llava_.reset();
    emollm_.reset();
    h_->inflight--;
    maybe_finish_model_close(env, *h_);
  }

 private:
  std::shared_ptr<ModelHandle> h_;
  std::shared_ptr<LlavaModel> llava_;
  std::vector<float> pixels_;
  int64_t B_;
  std::shared_ptr<std::atomic<bool>> abort_;
  bool aborted_ = false;
  std::vector<float> out_;

 public:
  std::shared_ptr<EmollmModel> emollm_;
  std::vector<std::vector<FaceBox>> faces_;  // EmoLLM: per image (empty: no faces anywhere)
  std::vector<int64_t> counts_;
};

// ---------------------------------------------------------------- encodeAnyres / encodePatches
// LLaVA-NeXT: each image's tiles (base first) -> packed features (llava_next.h). Qwen2-VL: each
// visual's flattened patches -> merged features (qwen2_vl.h). Both resolve a Float32Array with
// tokenCounts (Int32Array, one per visual); Qwen2-VL's also carries grids (Int32Array [3 * k]).

class VisualEncodeWorker final : public ModelWorker {
 public:
  VisualEncodeWorker(Napi::Env env, std::shared_ptr<ModelHandle> h, std::vector<float> pixels)
      : ModelWorker(env), h_(std::move(h)), llava_(h_->llava), qwen_(h_->qwen), emollm_(h_->emollm),
        emollm_qwen_(h_->emollm_qwen), pixels_(std::move(pixels)),
        abort_(std::make_shared<std::atomic<bool>>(false)) {
    auto& a = h_->encode_aborts;
    a.erase(std::remove_if(a.begin(), a.end(), [](const std::weak_ptr<std::atomic<bool>>& w) { return w.expired(); }), a.end());
    a.push_back(abort_);
    h_->inflight++;
  }
  std::vector<AnyresLayout> layouts;  // LLaVA-NeXT
  std::vector<GridThw> grids;         // Qwen2-VL
  void set_pixels(std::vector<float> px) { pixels_ = std::move(px); }

 protected:
  void Run() override {
    if (qwen_) {
      aborted_ = emollm_qwen_ ? !emollm_qwen_->encode(pixels_.data(), grids, &out_, abort_.get())
                              : !qwen_->encode(pixels_.data(), grids, &out_, abort_.get());
      for (const GridThw& g : grids) counts_.push_back(qwen_->n_tokens(g));
      return;
    }
    const ClipHparams& vh = llava_->vision().hparams();
    const int64_t per_tile = vh.n_channels * vh.image_size * vh.image_size;
    int64_t off = 0;
    std::vector<float> f;
    for (const AnyresLayout& L : layouts) {
      const float* px = pixels_.data() + off * per_tile;
      if (emollm_) {  // EmoLLM on LLaVA-NeXT: the MVP per tile, then the same packing
        std::vector<float> tiles;
        std::vector<int64_t> per;
        if (!emollm_->encode_images(px, L.n_tiles(), nullptr, &tiles, &per, abort_.get())) {
          aborted_ = true;
          return;
        }
        for (int64_t c : per)
          if (c != L.side * L.side)
            throw Error(ErrorCode::Unsupported,
                        "EmoLLM on LLaVA-NeXT tiles only perspectives that keep one token per patch (open mlp / "
                        "multi-layer-mlp heads, gated-sum fusion); this checkpoint gives " + std::to_string(c) +
                            " tokens per tile instead of " + std::to_string(L.side * L.side));
        f.assign(size_t(L.n_tokens() * llava_->n_embd()), 0.0f);
        anyres_pack(L, tiles.data(), llava_->n_embd(), llava_->image_newline(), f.data());
      } else if (!llava_next_encode_image(*llava_, px, L, &f, abort_.get())) {
        aborted_ = true;
        return;
      }
      out_.insert(out_.end(), f.begin(), f.end());
      counts_.push_back(L.n_tokens());
      off += L.n_tiles();
    }
  }
  Napi::Value Resolve(Napi::Env env) override {
    if (aborted_) throw make_js_error(env, "ERR_ABORTED", "encoding was aborted");
    auto a = Napi::Float32Array::New(env, out_.size());
    std::copy(out_.begin(), out_.end(), a.Data());
    auto c = Napi::Int32Array::New(env, counts_.size());
    for (size_t i = 0; i < counts_.size(); ++i) c[i] = int32_t(counts_[i]);
    a.Set("tokenCounts", c);
    if (qwen_) {
      auto g = Napi::Int32Array::New(env, grids.size() * 3);
      for (size_t i = 0; i < grids.size(); ++i) {
        g[i * 3] = int32_t(grids[i].t);
        g[i * 3 + 1] = int32_t(grids[i].h);
        g[i * 3 + 2] = int32_t(grids[i].w);
      }
      a.Set("grids", g);
    }
    return a;
  }
  void Finish(Napi::Env env) override {
    llava_.reset();
    qwen_.reset();
    emollm_.reset();
    emollm_qwen_.reset();
    h_->inflight--;
    maybe_finish_model_close(env, *h_);
  }

 private:
  std::shared_ptr<ModelHandle> h_;
  std::shared_ptr<LlavaModel> llava_;
  std::shared_ptr<Qwen2VLModel> qwen_;
  std::shared_ptr<EmollmModel> emollm_;
  std::shared_ptr<EmollmQwen2VLModel> emollm_qwen_;
  std::vector<float> pixels_;
  std::shared_ptr<std::atomic<bool>> abort_;
  bool aborted_ = false;
  std::vector<float> out_;
  std::vector<int64_t> counts_;
};

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

  Napi::Value EncodeImages(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    live(env);
    if (!handle_->llava) throw make_js_error(env, "ERR_UNSUPPORTED", "encodeImages: the model has no vision tower (not a LLaVA model)");
    const ClipHparams& vh = handle_->llava->vision().hparams();
    if (info.Length() < 1) throw_invalid(env, "encodeImages expects pixels (Float32Array [B, 3, H, W]) and B");
    std::vector<float> px = float32_array(env, info[0], "pixels");
    const int64_t per = vh.n_channels * vh.image_size * vh.image_size;
    int64_t B = info.Length() > 1 && !info[1].IsUndefined() ? arg_int(info, 1, "B") : int64_t(px.size()) / per;
    if (B <= 0 || B > 4096) throw_invalid(env, "encodeImages: B must be in [1, 4096]");
    if (int64_t(px.size()) != B * per)
      throw_invalid(env, "encodeImages: pixels has " + std::to_string(px.size()) + " floats, expected B * " +
                             std::to_string(vh.n_channels) + " * " + std::to_string(vh.image_size) + " * " +
                             std::to_string(vh.image_size) + " = " + std::to_string(B * per));
    std::vector<std::vector<FaceBox>> faces;
    if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) {
      // faces: one array of { x, y, width, height } (pixels of the tower input) per image
      if (!info[2].IsArray()) throw_invalid(env, "encodeImages: faces must be an array (one list of boxes per image)");
      Napi::Array fa = info[2].As<Napi::Array>();
      if (int64_t(fa.Length()) != B)
        throw_invalid(env, "encodeImages: faces has " + std::to_string(fa.Length()) + " lists for " + std::to_string(B) + " images");
      bool any = false;
      faces.resize(size_t(B));
      for (uint32_t b = 0; b < fa.Length(); ++b) {
        Napi::Value l = fa.Get(b);
        if (l.IsUndefined() || l.IsNull()) continue;
        if (!l.IsArray()) throw_invalid(env, "encodeImages: faces[" + std::to_string(b) + "] must be an array of boxes");
        Napi::Array la = l.As<Napi::Array>();
        for (uint32_t j = 0; j < la.Length(); ++j) {
          Napi::Value bv = la.Get(j);
          const std::string where = "faces[" + std::to_string(b) + "][" + std::to_string(j) + "]";
          if (!bv.IsObject()) throw_invalid(env, "encodeImages: " + where + " must be { x, y, width, height }");
          Napi::Object bo = bv.As<Napi::Object>();
          FaceBox fb;
          float* fields[4] = {&fb.x, &fb.y, &fb.width, &fb.height};
          const char* names[4] = {"x", "y", "width", "height"};
          for (int f = 0; f < 4; ++f) {
            Napi::Value x = bo.Get(names[f]);
            if (!x.IsNumber() || !std::isfinite(x.As<Napi::Number>().DoubleValue()))
              throw_invalid(env, "encodeImages: " + where + "." + names[f] + " must be a finite number");
            *fields[f] = float(x.As<Napi::Number>().DoubleValue());
          }
          faces[b].push_back(fb);
          any = true;
        }
      }
      if (!any) faces.clear();
    }
    auto* w = new EncodeWorker(env, handle_, std::move(px), B);
    w->emollm_ = handle_->emollm;
    w->faces_ = std::move(faces);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  }

  // encodeAnyres(pixels: Float32Array [tiles, 3, S, S] for all images, sizes: Int32Array [2 * images]
  // (original height, width)) -> Promise<Float32Array & { tokenCounts }> (LLaVA-NeXT)
  Napi::Value EncodeAnyres(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    live(env);
    const LlavaModel* lv = handle_->llava.get();
    if (!lv || !lv->anyres()) throw make_js_error(env, "ERR_UNSUPPORTED", "encodeAnyres: the model is not LLaVA-NeXT (no anyres tiling)");
    if (info.Length() < 2) throw_invalid(env, "encodeAnyres expects (pixels: Float32Array, sizes: Int32Array)");
    std::vector<float> px = float32_array(env, info[0], "pixels");
    std::vector<int32_t> sizes = int32_array(env, info[1], "sizes");
    if (sizes.empty() || sizes.size() % 2 != 0) throw_invalid(env, "encodeAnyres: sizes must hold (height, width) per image");
    const ClipHparams& vh = lv->vision().hparams();
    std::vector<AnyresLayout> layouts;
    int64_t tiles = 0;
    for (size_t k = 0; k < sizes.size(); k += 2) {
      if (sizes[k] <= 0 || sizes[k + 1] <= 0) throw_invalid(env, "encodeAnyres: image sizes must be positive");
      layouts.push_back(anyres_layout(sizes[k], sizes[k + 1], lv->grid_pinpoints(), vh.image_size, vh.n_side(),
                                      lv->image_newline() != nullptr));
      tiles += layouts.back().n_tiles();
    }
    const int64_t per = vh.n_channels * vh.image_size * vh.image_size;
    if (int64_t(px.size()) != tiles * per)
      throw_invalid(env, "encodeAnyres: pixels has " + std::to_string(px.size()) + " floats, the images' layouts need " +
                             std::to_string(tiles) + " tiles of " + std::to_string(per));
    // constructed only once the arguments are valid: the worker counts as in flight from here
    auto* w = new VisualEncodeWorker(env, handle_, {});
    w->layouts = std::move(layouts);
    w->set_pixels(std::move(px));
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  }

  // encodePatches(patches: Float32Array [N, C * Tp * P * P], grids: Int32Array [3 * visuals] (t, h, w))
  // -> Promise<Float32Array & { tokenCounts, grids }> (Qwen2-VL images and videos)
  Napi::Value EncodePatches(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    live(env);
    const Qwen2VLModel* qm = handle_->qwen.get();
    if (!qm) throw make_js_error(env, "ERR_UNSUPPORTED", "encodePatches: the model is not Qwen2-VL");
    if (info.Length() < 2) throw_invalid(env, "encodePatches expects (patches: Float32Array, grids: Int32Array)");
    std::vector<float> px = float32_array(env, info[0], "patches");
    std::vector<int32_t> g = int32_array(env, info[1], "grids");
    if (g.empty() || g.size() % 3 != 0) throw_invalid(env, "encodePatches: grids must hold (t, h, w) per visual");
    const int64_t ms = qm->vision().config().spatial_merge_size;
    std::vector<GridThw> grids;
    int64_t n = 0;
    for (size_t k = 0; k < g.size(); k += 3) {
      GridThw gt{g[k], g[k + 1], g[k + 2]};
      if (gt.t <= 0 || gt.h <= 0 || gt.w <= 0 || gt.h % ms != 0 || gt.w % ms != 0 || gt.n_patches() > (int64_t(1) << 24))
        throw_invalid(env, "encodePatches: grid " + std::to_string(k / 3) + " must be positive with h and w multiples of " +
                               std::to_string(ms));
      n += gt.n_patches();
      grids.push_back(gt);
    }
    if (int64_t(px.size()) != n * qm->vision().patch_dim())
      throw_invalid(env, "encodePatches: patches has " + std::to_string(px.size()) + " floats, the grids need " +
                             std::to_string(n) + " patches of " + std::to_string(qm->vision().patch_dim()));
    auto* w = new VisualEncodeWorker(env, handle_, std::move(px));
    w->grids = std::move(grids);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  }

  Napi::Value AbortEncodes(const Napi::CallbackInfo& info) {
    for (auto& w : handle_->encode_aborts)
      if (auto a = w.lock()) a->store(true);
    return info.Env().Undefined();
  }

  Napi::Value CreateContext(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    live(env);
    Napi::Object o = opt_object(info, 0, "options");
    LlamaContextOptions co;
    co.n_ctx = opt_int(env, o, "nCtx", handle_->default_n_ctx, 0, int64_t(1) << 24);
    co.n_batch = opt_int(env, o, "nBatch", 0, 0, int64_t(1) << 24);
    auto s = std::make_shared<ContextState>();
    s->owner = handle_;
    s->model = handle_->model;
    s->llava = handle_->llava;
    s->emollm = handle_->emollm;
    s->qwen = handle_->qwen;
    try {
      s->ctx = std::make_unique<LlamaContext>(s->model, co);
    } catch (const Error& e) {
      throw make_js_error(env, e);
    } catch (const std::bad_alloc&) {
      throw make_js_error(env, "ERR_OUT_OF_MEMORY", "out of memory allocating the context");
    }
    s->n_ctx = s->ctx->n_ctx();
    auto& cs = handle_->contexts;
    cs.erase(std::remove_if(cs.begin(), cs.end(), [](const std::weak_ptr<ContextState>& w) { return w.expired(); }),
             cs.end());
    cs.push_back(s);
    tl_new_context = &s;
    Napi::Object obj;
    try {
      obj = ctors(env).context.New({});
    } catch (...) {
      tl_new_context = nullptr;
      throw;
    }
    tl_new_context = nullptr;
    return obj;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto d = Napi::Promise::Deferred::New(env);
    for (auto& w : handle_->contexts)
      if (auto s = w.lock()) close_context(env, *s);
    handle_->contexts.clear();
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

// ---------------------------------------------------------------- workers on a context

// Marks the context busy for the worker's lifetime and releases it in Finish().
class ContextWorker : public ModelWorker {
 public:
  ContextWorker(Napi::Env env, std::shared_ptr<ContextState> s) : ModelWorker(env), s_(std::move(s)) {
    s_->busy = true;
    s_->abort.store(false);
    s_->owner->inflight++;
  }

 protected:
  void Finish(Napi::Env env) override {
    s_->busy = false;
    s_->n_past.store(s_->ctx ? s_->ctx->n_past() : 0);
    ModelHandle& h = *s_->owner;
    h.inflight--;
    if (s_->closed) release_context(env, *s_);
    maybe_finish_model_close(env, h);
  }
  // Image tokens -> pseudo-ids (LLaVA: fixed count per image; EmoLLM: image_counts).
  // Image tokens -> pseudo-ids (and, for Qwen2-VL, pos3_ <- the M-RoPE positions).
  std::vector<int32_t> splice(const std::vector<int32_t>& tokens, const std::vector<float>& images, int64_t n_images) {
    if (s_->qwen) {
      auto p = s_->qwen->prepare(tokens.data(), int64_t(tokens.size()), images.data(), image_grids);
      pos3_ = std::move(p.pos3);
      return std::move(p.tokens);
    }
    if (s_->llava && s_->llava->anyres())
      return splice_prompt_counts(s_->llava->image_token_id(), tokens.data(), int64_t(tokens.size()), images.data(),
                                  s_->llava->n_embd(), image_counts);
    if (s_->emollm)
      return splice_prompt_counts(s_->emollm->image_token_id(), tokens.data(), int64_t(tokens.size()), images.data(),
                                  s_->emollm->n_embd(), image_counts);
    return s_->llava->splice_prompt(tokens.data(), int64_t(tokens.size()), images.data(), n_images);
  }
  std::shared_ptr<ContextState> s_;
  std::vector<int32_t> pos3_;  // Qwen2-VL: M-RoPE positions of the spliced prompt
  const int32_t* pos3() const { return pos3_.empty() ? nullptr : pos3_.data(); }

 public:
  std::vector<int64_t> image_counts;  // EmoLLM, LLaVA-NeXT, Qwen2-VL: tokens per image
  std::vector<GridThw> image_grids;   // Qwen2-VL: each visual's grid
};

class EvalWorker final : public ContextWorker {
 public:
  EvalWorker(Napi::Env env, std::shared_ptr<ContextState> s, std::vector<int32_t> tokens, bool all_logits,
             std::vector<float> images = {}, int64_t n_images = 0)
      : ContextWorker(env, std::move(s)), tokens_(std::move(tokens)), all_(all_logits), images_(std::move(images)),
        n_images_(n_images) {}

 protected:
  void Run() override {
    LlamaContext& ctx = *s_->ctx;
    const float* embd = nullptr;
    if (s_->llava || s_->qwen) {  // image tokens -> pseudo-ids whose input embeddings are the image features
      tokens_ = splice(tokens_, images_, n_images_);
      if (n_images_ > 0) embd = images_.data();
    }
    const int64_t n = int64_t(tokens_.size()), V = ctx.n_vocab();
    if (all_) {
      // logits for every position: nothing can be reused
      out_.resize(size_t(n * V));
      ctx.reset();
      aborted_ = ctx.eval(tokens_.data(), n, out_.data(), &s_->abort, embd, pos3()) == nullptr;
    } else {
      const float* l = ctx.eval_prompt(tokens_.data(), n, &s_->abort, embd, pos3());
      aborted_ = l == nullptr;
      if (l) out_.assign(l, l + V);
    }
    s_->n_past.store(ctx.n_past());
  }
  Napi::Value Resolve(Napi::Env env) override {
    if (aborted_) throw make_js_error(env, "ERR_ABORTED", "eval was aborted");
    auto a = Napi::Float32Array::New(env, out_.size());
    std::copy(out_.begin(), out_.end(), a.Data());
    return a;
  }

 private:
  std::vector<int32_t> tokens_;
  bool all_;
  std::vector<float> images_;
  int64_t n_images_;
  bool aborted_ = false;
  std::vector<float> out_;
};

class ScoreWorker final : public ContextWorker {
 public:
  ScoreWorker(Napi::Env env, std::shared_ptr<ContextState> s, std::vector<int32_t> prefix, std::vector<float> images,
              int64_t n_images, std::vector<std::vector<int32_t>> conts)
      : ContextWorker(env, std::move(s)), prefix_(std::move(prefix)), images_(std::move(images)), n_images_(n_images),
        conts_(std::move(conts)) {}

 protected:
  void Run() override {
    LlamaContext& ctx = *s_->ctx;
    const float* embd = nullptr;
    if (s_->llava || s_->qwen) {
      prefix_ = splice(prefix_, images_, n_images_);
      if (n_images_ > 0) embd = images_.data();
    }
    aborted_ = !ctx.score_continuations(prefix_.data(), int64_t(prefix_.size()), conts_, &out_, &s_->abort, embd, pos3());
    s_->n_past.store(ctx.n_past());
  }
  Napi::Value Resolve(Napi::Env env) override {
    if (aborted_) throw make_js_error(env, "ERR_ABORTED", "score was aborted");
    Napi::Array lp = Napi::Array::New(env, out_.size());
    Napi::Array tl = Napi::Array::New(env, out_.size());
    for (size_t i = 0; i < out_.size(); ++i) {
      lp.Set(uint32_t(i), out_[i].logprob);
      auto a = Napi::Float64Array::New(env, out_[i].token_logprobs.size());
      std::copy(out_[i].token_logprobs.begin(), out_[i].token_logprobs.end(), a.Data());
      tl.Set(uint32_t(i), a);
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("logprobs", lp);
    o.Set("tokenLogprobs", tl);
    return o;
  }

 private:
  std::vector<int32_t> prefix_;
  std::vector<float> images_;
  int64_t n_images_;
  std::vector<std::vector<int32_t>> conts_;
  bool aborted_ = false;
  std::vector<LlamaContext::ContinuationScore> out_;
};

// Tokens on their way from the decode thread to JavaScript.
struct TokenQueue {
  std::mutex mu;
  std::vector<int32_t> pending;
  bool scheduled = false;               // a delivery is queued on the thread-safe function
  std::atomic<bool> js_failed{false};   // the callback threw: stop decoding
  Napi::ObjectReference js_error;
  std::shared_ptr<ContextState> state;  // to abort on a callback error

  // Takes everything queued (main thread).
  std::vector<int32_t> take() {
    std::lock_guard<std::mutex> lk(mu);
    scheduled = false;
    std::vector<int32_t> out;
    out.swap(pending);
    return out;
  }
  // Calls onTokens with `ids` (main thread); records a thrown error.
  void deliver(Napi::Env env, Napi::Function cb, const std::vector<int32_t>& ids) {
    if (ids.empty() || cb.IsEmpty() || js_failed.load()) return;
    auto arr = Napi::Int32Array::New(env, ids.size());
    std::copy(ids.begin(), ids.end(), arr.Data());
    try {
      cb.Call({arr});
    } catch (const Napi::Error& e) {
      js_error = Napi::Persistent(e.Value());
      js_failed.store(true);
      if (state) state->abort.store(true);
    }
  }
};
using TokenQueuePtr = std::shared_ptr<TokenQueue>;

void deliver_tokens(Napi::Env env, Napi::Function cb, TokenQueuePtr* q, void*) {
  if (env == nullptr || q == nullptr) return;
  Napi::HandleScope scope(env);
  (*q)->deliver(env, cb, (*q)->take());
}
using TokenTsfn = Napi::TypedThreadSafeFunction<TokenQueuePtr, void, deliver_tokens>;

class GenerateWorker final : public ContextWorker {
 public:
  void set_images(std::vector<float> images, int64_t n_images) {
    images_ = std::move(images);
    n_images_ = n_images;
  }
  GenerateWorker(Napi::Env env, std::shared_ptr<ContextState> s, std::vector<int32_t> prompt, SamplerParams sp,
                 int64_t max_tokens, std::vector<int32_t> stop, Napi::Function on_tokens)
      : ContextWorker(env, std::move(s)), prompt_(std::move(prompt)), sp_(sp), max_tokens_(max_tokens),
        stop_(std::move(stop)), queue_(std::make_shared<TokenQueue>()) {
    queue_->state = s_;
    if (!on_tokens.IsEmpty()) {
      on_tokens_ = Napi::Persistent(on_tokens);
      tsfn_ = TokenTsfn::New(env, on_tokens, "emollm.generate", 0, 1, new TokenQueuePtr(queue_),
                             [](Napi::Env, void*, TokenQueuePtr* q) { delete q; });
      has_tsfn_ = true;
    }
  }

 protected:
  void Run() override {
    try {
      decode();
    } catch (...) {
      release_tsfn();
      throw;
    }
    release_tsfn();
  }

  // The loop itself is the core's (model/session.h); this worker moves tokens to JavaScript.
  void decode() {
    const float* embd = nullptr;
    if (s_->llava || s_->qwen) {  // image tokens -> pseudo-ids (ignored by the repetition penalty)
      prompt_ = splice(prompt_, images_, n_images_);
      if (n_images_ > 0) embd = images_.data();
    }
    GenerateParams gp;
    gp.sampler = sp_;
    gp.max_tokens = max_tokens_;
    gp.stop_tokens = stop_;
    Session session(*s_->ctx, &s_->n_past);
    GenerateResult r = session.generate(prompt_, embd, gp, &s_->abort, [this](int32_t t) { push(t); }, pos3());
    out_ = std::move(r.tokens);
    reason_ = stop_reason_name(r.reason);
  }

  void push(int32_t t) {
    if (!has_tsfn_) return;
    bool schedule = false;
    {
      std::lock_guard<std::mutex> lk(queue_->mu);
      queue_->pending.push_back(t);
      if (!queue_->scheduled) schedule = queue_->scheduled = true;
    }
    if (schedule) tsfn_.NonBlockingCall();
  }
  void release_tsfn() {
    if (has_tsfn_ && !released_) {
      released_ = true;
      tsfn_.Release();
    }
  }

  Napi::Value Resolve(Napi::Env env) override {
    // Deliver whatever the thread-safe function has not delivered yet, in order, before settling.
    if (!on_tokens_.IsEmpty()) queue_->deliver(env, on_tokens_.Value(), queue_->take());
    if (queue_->js_failed.load()) throw Napi::Error(env, queue_->js_error.Value());
    auto tokens = Napi::Int32Array::New(env, out_.size());
    std::copy(out_.begin(), out_.end(), tokens.Data());
    Napi::Object o = Napi::Object::New(env);
    o.Set("tokens", tokens);
    o.Set("stopReason", reason_);
    return o;
  }
  void Finish(Napi::Env env) override {
    if (queue_->js_failed.load() && !queue_->js_error.IsEmpty() && js_error_.IsEmpty())
      js_error_ = Napi::Persistent(queue_->js_error.Value());
    queue_->state.reset();
    ContextWorker::Finish(env);
  }

 private:
  std::vector<int32_t> prompt_;
  SamplerParams sp_;
  int64_t max_tokens_;
  std::vector<int32_t> stop_;
  TokenQueuePtr queue_;
  Napi::FunctionReference on_tokens_;
  TokenTsfn tsfn_;
  bool has_tsfn_ = false, released_ = false;
  std::vector<int32_t> out_;
  std::string reason_ = "max-tokens";
  std::vector<float> images_;
  int64_t n_images_ = 0;
};

// ---------------------------------------------------------------- Context

class ContextWrap final : public Napi::ObjectWrap<ContextWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "LlamaContext",
                       {InstanceMethod<&ContextWrap::Eval>("eval"),
                        InstanceMethod<&ContextWrap::EvalMultimodal>("evalMultimodal"),
                        InstanceMethod<&ContextWrap::Score>("score"),
                        InstanceMethod<&ContextWrap::Generate>("generate"),
                        InstanceMethod<&ContextWrap::Abort>("abort"),
                        InstanceMethod<&ContextWrap::Reset>("reset"),
                        InstanceMethod<&ContextWrap::Close>("close"),
                        InstanceAccessor<&ContextWrap::NPast>("nPast"),
                        InstanceAccessor<&ContextWrap::NCtx>("nCtx")});
  }
  explicit ContextWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ContextWrap>(info) {
    if (!tl_new_context) throw_invalid(info.Env(), "use model.createContext() to create a context");
    s_ = *tl_new_context;
    tl_new_context = nullptr;
  }

 private:
  // Throws when closed; returns a rejected promise (in *busy_out) when busy.
  bool check_usable(Napi::Env env, Napi::Value* rejected) {
    if (s_->closed || !s_->ctx) throw closed_error(env, "context");
    if (s_->busy) {
      auto d = Napi::Promise::Deferred::New(env);
      d.Reject(make_js_error(env, "ERR_INVALID_ARGUMENT", "context busy: an eval or generate call is still running on it").Value());
      *rejected = d.Promise();
      return false;
    }
    return true;
  }

  Napi::Value Eval(const Napi::CallbackInfo& info) { return eval_impl(info, false); }
  Napi::Value EvalMultimodal(const Napi::CallbackInfo& info) { return eval_impl(info, true); }

  Napi::Value Score(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Value rejected;
    if (!check_usable(env, &rejected)) return rejected;
    if (info.Length() < 3) throw_invalid(env, "score expects (prefix: Int32Array, images: Float32Array | null, continuations: Int32Array[])");
    std::vector<int32_t> prefix = int32_array(env, info[0], "prefix");
    if (prefix.empty()) throw_invalid(env, "prefix must not be empty");
    std::vector<float> images;
    std::vector<int64_t> counts;
    std::vector<GridThw> grids;
    const int64_t n_images =
        image_features_arg(info, 1, s_->llava.get(), &images, s_->emollm.get(), &counts, s_->qwen.get(), &grids);
    if (!info[2].IsArray()) throw_invalid(env, "continuations must be an array of Int32Array");
    Napi::Array arr = info[2].As<Napi::Array>();
    std::vector<std::vector<int32_t>> conts;
    for (uint32_t i = 0; i < arr.Length(); ++i)
      conts.push_back(int32_array(env, arr.Get(i), ("continuations[" + std::to_string(i) + "]").c_str()));
    auto* w = new ScoreWorker(env, s_, std::move(prefix), std::move(images), n_images, std::move(conts));
    w->image_counts = std::move(counts);
    w->image_grids = std::move(grids);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  }

  Napi::Value eval_impl(const Napi::CallbackInfo& info, bool multimodal) {
    Napi::Env env = info.Env();
    Napi::Value rejected;
    if (!check_usable(env, &rejected)) return rejected;
    if (info.Length() < 1) throw_invalid(env, "eval expects tokens (Int32Array)");
    std::vector<int32_t> tokens = int32_array(env, info[0], "tokens");
    if (tokens.empty()) throw_invalid(env, "tokens must not be empty");
    std::vector<float> images;
    std::vector<int64_t> counts;
    std::vector<GridThw> grids;
    const int64_t n_images =
        multimodal ? image_features_arg(info, 1, s_->llava.get(), &images, s_->emollm.get(), &counts, s_->qwen.get(), &grids) : 0;
    Napi::Object o = opt_object(info, multimodal ? 2 : 1, "options");
    bool all = false;
    if (has_opt(o, "allLogits")) {
      if (!o.Get("allLogits").IsBoolean()) throw_invalid(env, "allLogits must be a boolean");
      all = o.Get("allLogits").As<Napi::Boolean>().Value();
    }
    if (int64_t(tokens.size()) > s_->n_ctx)
      throw_invalid(env, std::to_string(tokens.size()) + " tokens do not fit the context of " + std::to_string(s_->n_ctx));
    auto* w = new EvalWorker(env, s_, std::move(tokens), all, std::move(images), n_images);
    w->image_counts = std::move(counts);
    w->image_grids = std::move(grids);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  }

  Napi::Value Generate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Value rejected;
    if (!check_usable(env, &rejected)) return rejected;
    if (info.Length() < 1) throw_invalid(env, "generate expects a prompt (Int32Array)");
    std::vector<int32_t> prompt = int32_array(env, info[0], "prompt");
    if (prompt.empty()) throw_invalid(env, "prompt must not be empty");
    if (int64_t(prompt.size()) > s_->n_ctx)
      throw_invalid(env, "prompt of " + std::to_string(prompt.size()) + " tokens does not fit the context of " +
                             std::to_string(s_->n_ctx));
    Napi::Object o = opt_object(info, 1, "options");
    SamplerParams sp;
    sp.temperature = float(opt_number(env, o, "temperature", 0.8));
    sp.top_k = int32_t(opt_int(env, o, "topK", 40, 0, int64_t(1) << 30));
    sp.top_p = float(opt_number(env, o, "topP", 0.95));
    sp.repetition_penalty = float(opt_number(env, o, "repetitionPenalty", 1.0));
    sp.repeat_last_n = int32_t(opt_int(env, o, "repeatLastN", 64, -1, int64_t(1) << 30));
    if (!(sp.repetition_penalty > 0) || !std::isfinite(sp.repetition_penalty))
      throw_invalid(env, "repetitionPenalty must be a positive number");
    if (!std::isfinite(sp.temperature) || sp.temperature < 0) throw_invalid(env, "temperature must be >= 0");
    if (has_opt(o, "seed")) {
      Napi::Value sv = o.Get("seed");
      if (sv.IsBigInt()) {
        bool lossless;
        sp.seed = sv.As<Napi::BigInt>().Uint64Value(&lossless);
      } else {
        sp.seed = uint64_t(opt_int(env, o, "seed", 0, 0, int64_t(9007199254740991)));
      }
    } else {
      std::random_device rd;
      sp.seed = (uint64_t(rd()) << 32) ^ rd();
    }
    const int64_t max_tokens = opt_int(env, o, "maxTokens", int64_t(1) << 40, 0, int64_t(1) << 40);
    std::vector<int32_t> stop;
    if (has_opt(o, "stopTokens")) stop = int32_array(env, o.Get("stopTokens"), "stopTokens");
    Napi::Function cb;
    if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) {
      if (!info[2].IsFunction()) throw_invalid(env, "onTokens must be a function");
      cb = info[2].As<Napi::Function>();
    }
    std::vector<float> images;
    std::vector<int64_t> counts;
    std::vector<GridThw> grids;
    const int64_t n_images =
        image_features_arg(info, 3, s_->llava.get(), &images, s_->emollm.get(), &counts, s_->qwen.get(), &grids);
    auto* w = new GenerateWorker(env, s_, std::move(prompt), sp, max_tokens, std::move(stop), cb);
    w->set_images(std::move(images), n_images);
    w->image_counts = std::move(counts);
    w->image_grids = std::move(grids);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  }

  Napi::Value Abort(const Napi::CallbackInfo& info) {
    if (s_->busy) s_->abort.store(true);
    return info.Env().Undefined();
  }

  Napi::Value Reset(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (s_->closed || !s_->ctx) throw closed_error(env, "context");
    if (s_->busy) throw_invalid(env, "context busy: an eval or generate call is still running on it");
    s_->ctx->reset();
    s_->n_past.store(0);
    return env.Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto d = Napi::Promise::Deferred::New(env);
    s_->close_waiters.push_back(d);
    close_context(env, *s_);
    return d.Promise();
  }

  Napi::Value NPast(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(s_->n_past.load())); }
  Napi::Value NCtx(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(s_->n_ctx)); }

  std::shared_ptr<ContextState> s_;
};

}  // namespace

void register_model(Napi::Env env, Napi::Object exports) {
  auto* c = new Constructors();
  c->model = Napi::Persistent(ModelWrap::Define(env));
  c->context = Napi::Persistent(ContextWrap::Define(env));
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
}

}  // namespace emollm::addon
