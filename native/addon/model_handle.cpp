// Shared model state and argument readers of the addon (see model_handle.h).
#include "model_handle.h"

#include <atomic>
#include <cmath>
#include <random>

#include "napi_util.h"

namespace emollm::addon {

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

namespace {
std::atomic<int64_t> g_live_feature_refs{0};
}  // namespace

int64_t live_feature_refs() { return g_live_feature_refs.load(); }

FeatureArg::~FeatureArg() {
  if (!ref.IsEmpty()) g_live_feature_refs--;
}

bool FeatureArg::release() {
  if (ref.IsEmpty()) return false;
  const bool detached = ref.Value().ArrayBuffer().IsDetached();
  g_live_feature_refs--;
  ref.Reset();
  data = nullptr;
  n = 0;
  return detached;
}

int64_t image_features_arg(const Napi::CallbackInfo& info, size_t i, const LlavaModel* llava, FeatureArg* out,
                           const EmollmModel* emollm, std::vector<int64_t>* counts,
                           const Qwen2VLModel* qwen, std::vector<GridThw>* grids) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return 0;
  check_fixed_float32_array(env, info[i], "images");  // read in place until the request settles
  auto fa = info[i].As<Napi::Float32Array>();
  if (fa.ElementLength() == 0) return 0;
  out->data = fa.Data();
  out->n = fa.ElementLength();
  // held until the request settles (FeatureArg::release): read in place off the event loop
  out->ref = Napi::Persistent(fa);
  g_live_feature_refs++;
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
    if (total * E != int64_t(out->n))
      throw_invalid(env, "images has " + std::to_string(out->n) + " floats, but its tokenCounts sum to " +
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
      if (total * E != int64_t(out->n))
        throw_invalid(env, "images has " + std::to_string(out->n) + " floats, but its tokenCounts sum to " +
                               std::to_string(total) + " tokens of nEmbd = " + std::to_string(E));
      return int64_t(counts->size());
    }
    const int64_t per = emollm->n_image_tokens(0) * E;
    if (per == 0 || int64_t(out->n) % per != 0)
      throw_invalid(env, "images has " + std::to_string(out->n) + " floats, not a multiple of nImageTokens * nEmbd = " +
                             std::to_string(emollm->n_image_tokens(0)) + " * " + std::to_string(E) +
                             " (pass the features from encodeImages, with their tokenCounts)");
    counts->assign(size_t(int64_t(out->n) / per), emollm->n_image_tokens(0));
    return int64_t(counts->size());
  }
  const int64_t per = llava->n_image_tokens() * llava->n_embd();
  if (int64_t(out->n) % per != 0)
    throw_invalid(env, "images has " + std::to_string(out->n) + " floats, not a multiple of nImageTokens * nEmbd = " +
                           std::to_string(llava->n_image_tokens()) + " * " + std::to_string(llava->n_embd()) +
                           " (pass the projected features from encodeImages)");
  return int64_t(out->n) / per;
}

namespace {
// The one place that picks which model's splice applies to a context's prompt (Qwen2-VL, EmoLLM,
// LLaVA / LLaVA-NeXT): splice_images and spliced_length both ask it.
ImageSplice model_splice(const LlavaModel* llava, const EmollmModel* emollm, const Qwen2VLModel* qwen, int64_t n_images,
                         const std::vector<int64_t>& counts, const std::vector<GridThw>& grids) {
  if (qwen) return qwen->image_splice(grids);
  if (emollm) return emollm->image_splice(counts);
  return llava->image_splice(n_images, counts);
}
}  // namespace

std::vector<int32_t> splice_images(const LlavaModel* llava, const EmollmModel* emollm, const Qwen2VLModel* qwen,
                                   const std::vector<int32_t>& tokens, const float* images, int64_t n_images,
                                   const std::vector<int64_t>& counts, const std::vector<GridThw>& grids,
                                   std::vector<int32_t>* pos3) {
  if (qwen) {  // the splice of qwen->image_splice(grids), and the M-RoPE positions
    auto p = qwen->prepare(tokens.data(), int64_t(tokens.size()), images, grids);
    *pos3 = std::move(p.pos3);
    return std::move(p.tokens);
  }
  const int64_t E = emollm ? emollm->n_embd() : llava->n_embd();
  return splice_prompt(model_splice(llava, emollm, qwen, n_images, counts, grids), tokens.data(), int64_t(tokens.size()),
                       images, E);
}

int64_t spliced_length(const LlavaModel* llava, const EmollmModel* emollm, const Qwen2VLModel* qwen,
                       const std::vector<int32_t>& tokens, int64_t n_images, const std::vector<int64_t>& counts,
                       const std::vector<GridThw>& grids) {
  return ::emollm::spliced_length(model_splice(llava, emollm, qwen, n_images, counts, grids), tokens.data(),
                                  int64_t(tokens.size()));
}

GenerateParams read_generate_params(Napi::Env env, Napi::Object o) {
  GenerateParams gp;
  SamplerParams& sp = gp.sampler;
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
  gp.max_tokens = opt_int(env, o, "maxTokens", int64_t(1) << 40, 0, int64_t(1) << 40);
  if (has_opt(o, "stopTokens")) gp.stop_tokens = int32_array(env, o.Get("stopTokens"), "stopTokens");
  return gp;
}

}  // namespace emollm::addon
