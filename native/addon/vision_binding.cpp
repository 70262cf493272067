// Vision entry points of a loaded model (LLaVA / EmoLLM encodeImages, LLaVA-NeXT encodeAnyres,
// Qwen2-VL encodePatches): argument checks on the main thread, the tower on a worker thread.
// ModelWrap (model_binding.cpp) forwards its methods here.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model_call_worker.h"
#include "model_handle.h"
#include "napi_util.h"

namespace emollm::addon {
namespace {

// A call on the model's vision tower: counted in flight on the model (ModelCallWorker: model.close()
// waits for it) and abortable by it (its flag in encode_aborts), from claim_and_queue() (napi_util.h:
// the binding's last step) until Finish() (ModelCallWorker's, which derived workers' Finish() calls
// last, their references dropped first).
class VisionWorker : public ModelCallWorker {
 public:
  VisionWorker(Napi::Env env, std::shared_ptr<ModelHandle> h)
      : ModelCallWorker(env, std::move(h)), abort_(std::make_shared<std::atomic<bool>>(false)) {}

 protected:
  void claim() override {
    auto& a = h_->encode_aborts;
    a.erase(std::remove_if(a.begin(), a.end(), [](const std::weak_ptr<std::atomic<bool>>& w) { return w.expired(); }), a.end());
    try {
      a.push_back(abort_);
    } catch (const std::bad_alloc&) {
      throw make_js_error(Env(), "ERR_OUT_OF_MEMORY", "out of memory (the call's abort flag could not be registered)");
    }
    ModelCallWorker::claim();
  }
  // ModelCallWorker::unclaim as it is: the flag in encode_aborts expires with the worker
  std::shared_ptr<std::atomic<bool>> abort_;
};

// Per-visual token counts as the Int32Array a result's tokenCounts holds.
Napi::Int32Array int32_counts(Napi::Env env, const std::vector<int64_t>& counts) {
  auto c = Napi::Int32Array::New(env, counts.size());
  for (size_t i = 0; i < counts.size(); ++i) c[i] = int32_t(counts[i]);
  return c;
}

// ---------------------------------------------------------------- encodeImages

class EncodeWorker final : public VisionWorker {
 public:
  EncodeWorker(Napi::Env env, std::shared_ptr<ModelHandle> h, std::vector<float> pixels, int64_t B)
      : VisionWorker(env, std::move(h)), llava_(h_->llava), pixels_(std::move(pixels)), B_(B) {}

 protected:
  void Run() override {
    // the result array was made (or taken from the caller) on the JavaScript thread at its final size
    if (emollm_)
      aborted_ = !emollm_->encode_images(pixels_.data(), B_, faces_.empty() ? nullptr : &faces_, js_out_.data, counts_,
                                         abort_.get());
    else
      aborted_ = !llava_->encode_images(pixels_.data(), B_, js_out_.data, abort_.get());
  }
  Napi::Value Resolve(Napi::Env env) override {
    if (aborted_) throw make_js_error(env, "ERR_ABORTED", "encodeImages was aborted");
    Napi::Float32Array a = js_out_.ref.Value();
    if (emollm_) a.Set("tokenCounts", int32_counts(env, counts_));  // EmoLLM: per-image token counts travel with the features
    return a;
  }
  void Finish(Napi::Env env) override {
    js_out_.settle(env, js_error_, "encodeImages", run_failed());
    llava_.reset();
    emollm_.reset();
    VisionWorker::Finish(env);
  }

 private:
  std::shared_ptr<LlavaModel> llava_;
  std::vector<float> pixels_;
  int64_t B_;
  bool aborted_ = false;
  // The result array, written by the worker directly (its backing store does not move) instead
  // of a vector of the same size filled, then copied on the event loop. Either the caller's `out`
  // array (already faulted in when it is reused: none of the 2304 first-touch faults a fresh
  // 9 MiB LLaVA-1.5 result takes inside the projector's last GEMM) or a fresh one created on the
  // JavaScript thread before the worker runs (EmoLLM: its size from image_token_counts). The
  // reference keeps the array alive while the worker writes.
  JsResultArray js_out_;

 public:
  void write_into_js_array(Napi::Float32Array a) { js_out_.adopt(a); }
  // the caller's `out`, its range claimed (released when the call settles)
  void write_into_caller_array(Napi::Float32Array a, OutClaim claim) { js_out_.adopt_caller(a, std::move(claim)); }
  std::shared_ptr<EmollmModel> emollm_;
  std::vector<std::vector<FaceBox>> faces_;  // EmoLLM: per image (empty: no faces anywhere)
  // EmoLLM: image_token_counts, computed once on the JavaScript thread to size the result; the
  // worker's heads are checked against them
  std::vector<int64_t> counts_;
};

// ---------------------------------------------------------------- encodeAnyres / encodePatches
// LLaVA-NeXT: each image's tiles (base first) -> packed features (llava_next.h). Qwen2-VL: each
// visual's flattened patches -> merged features (qwen2_vl.h). Both resolve a Float32Array with
// tokenCounts (Int32Array, one per visual); Qwen2-VL's also carries grids (Int32Array [3 * k]).

class VisualEncodeWorker final : public VisionWorker {
 public:
  VisualEncodeWorker(Napi::Env env, std::shared_ptr<ModelHandle> h, std::vector<float> pixels)
      : VisionWorker(env, std::move(h)), llava_(h_->llava), qwen_(h_->qwen), emollm_(h_->emollm),
        emollm_qwen_(h_->emollm_qwen), pixels_(std::move(pixels)) {}
  std::vector<AnyresLayout> layouts;  // LLaVA-NeXT
  std::vector<GridThw> grids;         // Qwen2-VL
  std::vector<int64_t> counts;        // each visual's token count
  void set_pixels(std::vector<float> px) { pixels_ = std::move(px); }
  // The result array of sum(counts) rows, created on the JavaScript thread before the worker runs
  // and written by it directly (instead of a vector filled, then copied into a fresh array on the
  // event loop).
  void write_into_js_array(Napi::Float32Array a) { js_out_.adopt(a); }

 protected:
  void Run() override {
    // js_out_ holds every visual's rows (sizes known on the JavaScript thread): written in place
    if (qwen_) {
      aborted_ = emollm_qwen_ ? !emollm_qwen_->encode(pixels_.data(), grids, js_out_.data, abort_.get())
                              : !qwen_->encode(pixels_.data(), grids, js_out_.data, abort_.get());
      return;
    }
    const ClipHparams& vh = llava_->vision().hparams();
    const int64_t per_tile = vh.n_channels * vh.image_size * vh.image_size, E = llava_->n_embd();
    int64_t off = 0;
    float* dst = js_out_.data;
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
        anyres_pack(L, tiles.data(), E, llava_->image_newline(), dst);
      } else if (!llava_next_encode_image(*llava_, px, L, dst, abort_.get())) {
        aborted_ = true;
        return;
      }
      dst += L.n_tokens() * E;
      off += L.n_tiles();
    }
  }
  Napi::Value Resolve(Napi::Env env) override {
    if (aborted_) throw make_js_error(env, "ERR_ABORTED", "encoding was aborted");
    Napi::Float32Array a = js_out_.ref.Value();
    a.Set("tokenCounts", int32_counts(env, counts));
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
    VisionWorker::Finish(env);
  }

 private:
  std::shared_ptr<LlavaModel> llava_;
  std::shared_ptr<Qwen2VLModel> qwen_;
  std::shared_ptr<EmollmModel> emollm_;
  std::shared_ptr<EmollmQwen2VLModel> emollm_qwen_;
  std::vector<float> pixels_;
  bool aborted_ = false;
  JsResultArray js_out_;
};

}  // namespace

Napi::Value encode_images(const Napi::CallbackInfo& info, const std::shared_ptr<ModelHandle>& handle_) {
  Napi::Env env = info.Env();
  if (!handle_->model) throw closed_error(env, "model");
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
  // The result's size, known before any work starts: LLaVA a fixed count per image, EmoLLM the
  // counts its heads give these images with these faces (image_token_counts).
  size_t n_out = size_t(B * handle_->llava->n_image_tokens() * handle_->llava->n_embd());
  std::string sizes = "B * nImageTokens * nEmbd = " + std::to_string(B) + " * " +
                      std::to_string(handle_->llava->n_image_tokens()) + " * " + std::to_string(handle_->llava->n_embd());
  std::vector<int64_t> counts;
  if (handle_->emollm) {
    int64_t rows = 0;
    try {
      counts = handle_->emollm->image_token_counts(B, faces.empty() ? nullptr : &faces);
    } catch (const emollm::Error& e) {
      throw make_js_error(env, e);
    }
    for (int64_t c : counts) rows += c;
    n_out = size_t(rows * handle_->emollm->n_embd());
    sizes = "the images' token counts (" + std::to_string(rows) + ") * nEmbd (" + std::to_string(handle_->emollm->n_embd()) + ")";
  }
  // options.out: the caller's result array, checked and claimed before any work starts. The claim
  // is owned here until the worker takes it: if the worker's `new` throws, it is released.
  OutClaim claim;
  const Napi::Float32Array out = caller_out(env, opt_object(info, 3, "encodeImages: options"), n_out, "encodeImages", {}, claim, sizes);
  Napi::Float32Array fresh;  // made before the worker (napi_util.h new_result_array); the tower writes every float
  if (out.IsEmpty()) fresh = new_result_array(env, n_out, ResultFill::kWrittenWhole);
  auto* w = new_worker<EncodeWorker>(env, "encodeImages", env, handle_, std::move(px), B);
  w->emollm_ = handle_->emollm;
  if (!out.IsEmpty()) w->write_into_caller_array(out, std::move(claim));
  else w->write_into_js_array(fresh);
  w->faces_ = std::move(faces);
  w->counts_ = std::move(counts);
  return w->claim_and_queue();
}

// encodeAnyres(pixels: Float32Array [tiles, 3, S, S] for all images, sizes: Int32Array [2 * images]
// (original height, width)) -> Promise<Float32Array & { tokenCounts }> (LLaVA-NeXT)
Napi::Value encode_anyres(const Napi::CallbackInfo& info, const std::shared_ptr<ModelHandle>& handle_) {
  Napi::Env env = info.Env();
  if (!handle_->model) throw closed_error(env, "model");
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
  int64_t rows = 0;
  for (const AnyresLayout& L : layouts) rows += L.n_tokens();
  Napi::Float32Array out = new_result_array(env, size_t(rows * lv->n_embd()));
  // the worker counts as in flight from claim_and_queue, the last step (napi_util.h)
  std::vector<int64_t> counts;
  for (const AnyresLayout& L : layouts) counts.push_back(L.n_tokens());
  auto* w = new_worker<VisualEncodeWorker>(env, "encodeAnyres", env, handle_, std::vector<float>{});
  w->counts = std::move(counts);
  w->write_into_js_array(out);
  w->layouts = std::move(layouts);
  w->set_pixels(std::move(px));
  return w->claim_and_queue();
}

// encodePatches(patches: Float32Array [N, C * Tp * P * P], grids: Int32Array [3 * visuals] (t, h, w))
// -> Promise<Float32Array & { tokenCounts, grids }> (Qwen2-VL images and videos)
Napi::Value encode_patches(const Napi::CallbackInfo& info, const std::shared_ptr<ModelHandle>& handle_) {
  Napi::Env env = info.Env();
  if (!handle_->model) throw closed_error(env, "model");
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
  Napi::Float32Array out = new_result_array(env, size_t(qm->n_tokens(grids) * qm->n_embd()));
  std::vector<int64_t> counts;  // made before the worker, as in encodeAnyres
  for (const GridThw& gt : grids) counts.push_back(qm->n_tokens(gt));
  auto* w = new_worker<VisualEncodeWorker>(env, "encodePatches", env, handle_, std::move(px));
  w->counts = std::move(counts);
  w->write_into_js_array(out);
  w->grids = std::move(grids);
  return w->claim_and_queue();
}

}  // namespace emollm::addon
