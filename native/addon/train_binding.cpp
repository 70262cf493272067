// The MVP trainer (native/train/mvp_trainer.h) for JavaScript; lib/train/ drives it.
//
//   createMvpTrainer(path, { trainable?: string[], lr?, minLrRatio?, warmupSteps?, totalSteps?,
//                            weightDecay?, clipNorm?, beta1?, beta2?, eps?, threads?, recompute?,
//                            device?: 'cpu' | 'cuda' })
//     -> Promise<MvpTrainer>            (loads the EmoLLM checkpoint off the main thread)
//   MvpTrainer.info() -> { towerFeatureDim, nVisionTokens, imageTokenId, imageSize, fusion, device }
//   MvpTrainer.towerFeatures(pixels: Float32Array [B,3,S,S], B) -> Promise<Float32Array>
//   MvpTrainer.accumulate(tokens: Int32Array, nAnswer, feats: Float32Array, nImages, scale, faces?)
//     -> Promise<number>                (the sample's mean answer loss; gradients added)
//   MvpTrainer.loss(tokens, nAnswer, feats, nImages, faces?) -> Promise<number>
//     faces: null, or one list per image of { x, y, width, height } boxes in tower-input pixels
//     (the face-region heads' input, as Model.encodeImages takes them)
//   MvpTrainer.lastPositions            (decoder positions of the last sample run)
//   MvpTrainer.phaseSeconds             ({ mvpForward, decoderForward, ... }: seconds per phase
//                                        since the trainer was made, MvpPhaseTimes; not while busy)
//   MvpTrainer.step() -> Promise<{ lr, gradNorm, step }>
//   MvpTrainer.params() -> Array<{ name, shape, value, grad, m, v: Float32Array }>  (copies, sync)
//   MvpTrainer.setState(params: Array<{ name, value, m, v }>, steps) (sync; names must match)
//   MvpTrainer.stepsDone, MvpTrainer.close()
// One call at a time per trainer: a second call while one runs rejects with ERR_BUSY. Inputs are
// copied before work is queued.
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../model/emollm.h"
#include "../train/mvp_trainer.h"
#include "bindings.h"
#include "napi_util.h"

namespace emollm::addon {
namespace {

struct TrainerHandle {
  std::unique_ptr<MvpTrainer> trainer;
  std::atomic<bool> busy{false};
};

// A worker running `work` off the main thread and `done` on it.
class FnWorker final : public PromiseWorker {
 public:
  FnWorker(Napi::Env env, std::shared_ptr<TrainerHandle> h, std::function<void()> work,
           std::function<Napi::Value(Napi::Env)> done)
      : PromiseWorker(env), h_(std::move(h)), work_(std::move(work)), done_(std::move(done)) {}

 protected:
  void Run() override { work_(); }
  Napi::Value Resolve(Napi::Env env) override { return done_(env); }
  // the trainer runs one call at a time: busy from claim_and_queue (napi_util.h: the binding's
  // last step) until Finish
  void claim() override {
    if (h_) h_->busy = true;
  }
  void unclaim() override {
    if (h_) h_->busy = false;
  }
  void Finish(Napi::Env) override {
    if (h_) h_->busy = false;
  }

 private:
  std::shared_ptr<TrainerHandle> h_;
  std::function<void()> work_;
  std::function<Napi::Value(Napi::Env)> done_;
};

std::vector<float> f32_arg(const Napi::CallbackInfo& info, size_t i, const char* what, bool nullable) {
  if (nullable && (info.Length() <= i || info[i].IsNull() || info[i].IsUndefined())) return {};
  if (info.Length() <= i || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw_invalid(info.Env(), std::string(what) + " must be a Float32Array");
  auto a = info[i].As<Napi::Float32Array>();
  return std::vector<float>(a.Data(), a.Data() + a.ElementLength());
}

std::vector<int32_t> i32_arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw_invalid(info.Env(), std::string(what) + " must be an Int32Array");
  auto a = info[i].As<Napi::Int32Array>();
  return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}

// null / undefined, or nImages arrays (each null or an array) of { x, y, width, height }.
std::shared_ptr<std::vector<std::vector<FaceBox>>> faces_arg(const Napi::CallbackInfo& info, size_t i, int64_t n_images) {
  if (info.Length() <= i || info[i].IsNull() || info[i].IsUndefined()) return nullptr;
  const char* what = "faces must be null or one array of { x, y, width, height } per image";
  if (!info[i].IsArray()) throw_invalid(info.Env(), what);
  Napi::Array a = info[i].As<Napi::Array>();
  if (int64_t(a.Length()) != n_images)
    throw_invalid(info.Env(), "faces has " + std::to_string(a.Length()) + " lists for " + std::to_string(n_images) + " images");
  auto out = std::make_shared<std::vector<std::vector<FaceBox>>>(size_t(n_images));
  for (uint32_t b = 0; b < a.Length(); ++b) {
    Napi::Value l = a.Get(b);
    if (l.IsNull() || l.IsUndefined()) continue;
    if (!l.IsArray()) throw_invalid(info.Env(), what);
    Napi::Array boxes = l.As<Napi::Array>();
    for (uint32_t j = 0; j < boxes.Length(); ++j) {
      Napi::Value v = boxes.Get(j);
      if (!v.IsObject()) throw_invalid(info.Env(), what);
      Napi::Object o = v.As<Napi::Object>();
      FaceBox fb;
      float* dst[4] = {&fb.x, &fb.y, &fb.width, &fb.height};
      const char* keys[4] = {"x", "y", "width", "height"};
      for (int k = 0; k < 4; ++k) {
        Napi::Value n = o.Get(keys[k]);
        if (!n.IsNumber()) throw_invalid(info.Env(), std::string("a face box's ") + keys[k] + " must be a number");
        *dst[k] = float(n.As<Napi::Number>().DoubleValue());
      }
      (*out)[b].push_back(fb);
    }
  }
  return out;
}

Napi::Float32Array to_js(Napi::Env env, const std::vector<float>& v) {
  auto a = Napi::Float32Array::New(env, v.size());
  std::copy(v.begin(), v.end(), a.Data());
  return a;
}

class TrainerWrap final : public Napi::ObjectWrap<TrainerWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "MvpTrainer",
                       {InstanceMethod<&TrainerWrap::Info>("info"),
                        InstanceMethod<&TrainerWrap::TowerFeatures>("towerFeatures"),
                        InstanceMethod<&TrainerWrap::Accumulate>("accumulate"),
                        InstanceMethod<&TrainerWrap::Loss>("loss"), InstanceMethod<&TrainerWrap::Step>("step"),
                        InstanceMethod<&TrainerWrap::Params>("params"),
                        InstanceMethod<&TrainerWrap::SetState>("setState"),
                        InstanceMethod<&TrainerWrap::Close>("close"),
                        InstanceAccessor<&TrainerWrap::StepsDone>("stepsDone"),
                        InstanceAccessor<&TrainerWrap::LastPositions>("lastPositions"),
                        InstanceAccessor<&TrainerWrap::PhaseSeconds>("phaseSeconds")});
  }
  explicit TrainerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TrainerWrap>(info) {
    if (info.Length() < 1 || !info[0].IsExternal()) throw_invalid(info.Env(), "use createMvpTrainer()");
    h_ = *info[0].As<Napi::External<std::shared_ptr<TrainerHandle>>>().Data();
  }

 private:
  std::shared_ptr<TrainerHandle> h_;

  MvpTrainer& trainer(Napi::Env env) {
    if (!h_->trainer) throw make_js_error(env, "ERR_INVALID_ARGUMENT", "the trainer is closed");
    return *h_->trainer;
  }
  // The trainer runs one call at a time: ERR_BUSY while another runs (or it is still loading).
  void check_idle(Napi::Env env) const {
    if (h_->busy) throw make_js_error(env, "ERR_BUSY", "the trainer is running another call: await it first");
  }
  // Queues `work` as the trainer's call `what`. The trainer is marked busy by claim_and_queue, the
  // last step (new_worker: an allocation failure is ERR_OUT_OF_MEMORY and leaves it free; Queue()
  // failing frees it again), until the worker's Finish.
  Napi::Value queue(Napi::Env env, const char* what, std::function<void()> work, std::function<Napi::Value(Napi::Env)> done) {
    trainer(env);
    check_idle(env);
    auto* w = new_worker<FnWorker>(env, what, env, h_, std::move(work), std::move(done));
    return w->claim_and_queue();
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    MvpTrainer& t = trainer(env);
    Napi::Object o = Napi::Object::New(env);
    o.Set("towerFeatureDim", Napi::Number::New(env, double(t.tower_feature_dim())));
    o.Set("nVisionTokens", Napi::Number::New(env, double(t.model().n_vision_tokens())));
    o.Set("imageTokenId", Napi::Number::New(env, t.model().image_token_id()));
    o.Set("imageSize", Napi::Number::New(env, double(t.model().llava().vision().hparams().image_size)));
    o.Set("fusion", Napi::String::New(env, t.model().fusion()));
    // where the decoder runs: 'cpu', 'cuda' or 'emulated' (the kind, not the backend's description)
    o.Set("device", Napi::String::New(env, device_name(t.model().llava().text().backend().device())));
    return o;
  }
  Napi::Value TowerFeatures(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    MvpTrainer& t = trainer(env);
    auto px = std::make_shared<std::vector<float>>(f32_arg(info, 0, "pixels", false));
    const int64_t B = arg_int(info, 1, "batch");
    const int64_t S = t.model().llava().vision().hparams().image_size;
    if (B < 1 || int64_t(px->size()) != B * 3 * S * S)
      throw_invalid(env, "pixels must hold batch x 3 x " + std::to_string(S) + " x " + std::to_string(S) + " floats");
    // the result array, made here and written by the worker in place (no vector copied on the event
    // loop); the lambdas hold it until the worker is deleted, on this thread
    auto out = std::make_shared<JsResultArray>();
    out->create(env, size_t(B * t.model().n_vision_tokens() * t.tower_feature_dim()));
    MvpTrainer* tp = &t;
    return queue(env, "towerFeatures", [tp, px, B, out]() { tp->tower_features(px->data(), B, out->data); },
                 [out](Napi::Env) -> Napi::Value { return out->ref.Value(); });
  }
  Napi::Value RunSample(const Napi::CallbackInfo& info, bool backward) {
    Napi::Env env = info.Env();
    MvpTrainer& t = trainer(env);
    auto tok = std::make_shared<std::vector<int32_t>>(i32_arg(info, 0, "tokens"));
    const int64_t n_answer = arg_int(info, 1, "nAnswer");
    auto feats = std::make_shared<std::vector<float>>(f32_arg(info, 2, "feats", true));
    const int64_t n_images = arg_int(info, 3, "nImages");
    const float scale = backward ? float(info.Length() > 4 && info[4].IsNumber() ? info[4].As<Napi::Number>().DoubleValue() : 1.0) : 0.0f;
    const int64_t per = t.model().n_vision_tokens() * t.tower_feature_dim();
    if (n_images < 0 || int64_t(feats->size()) != n_images * per)
      throw_invalid(env, "feats must hold nImages x " + std::to_string(per) + " floats (from towerFeatures)");
    auto faces = faces_arg(info, backward ? 5 : 4, n_images);
    auto loss = std::make_shared<double>(0.0);
    MvpTrainer* tp = &t;
    return queue(
        env, backward ? "accumulate" : "loss",
        [tp, tok, n_answer, feats, n_images, faces, scale, backward, loss]() {
          MvpTrainSample s;
          s.tokens = tok->data();
          s.n_tokens = int64_t(tok->size());
          s.n_answer = n_answer;
          s.tower_feats = feats->empty() ? nullptr : feats->data();
          s.n_images = n_images;
          s.faces = faces.get();
          *loss = backward ? tp->accumulate(s, scale) : tp->loss(s);
        },
        [loss](Napi::Env e) -> Napi::Value { return Napi::Number::New(e, *loss); });
  }
  Napi::Value Accumulate(const Napi::CallbackInfo& info) { return RunSample(info, true); }
  Napi::Value Loss(const Napi::CallbackInfo& info) { return RunSample(info, false); }
  Napi::Value Step(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    MvpTrainer* tp = &trainer(env);
    auto st = std::make_shared<MvpStepStats>();
    return queue(env, "step", [tp, st]() { *st = tp->step(); },
                 [st](Napi::Env e) -> Napi::Value {
                   Napi::Object o = Napi::Object::New(e);
                   o.Set("lr", Napi::Number::New(e, st->lr));
                   o.Set("gradNorm", Napi::Number::New(e, st->grad_norm));
                   o.Set("step", Napi::Number::New(e, double(st->step)));
                   return o;
                 });
  }
  Napi::Value Params(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    MvpTrainer& t = trainer(env);
    check_idle(env);
    const auto& ps = t.params();
    Napi::Array a = Napi::Array::New(env, ps.size());
    for (size_t i = 0; i < ps.size(); ++i) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("name", Napi::String::New(env, ps[i].name));
      Napi::Array sh = Napi::Array::New(env, ps[i].shape.size());
      for (size_t j = 0; j < ps[i].shape.size(); ++j) sh.Set(uint32_t(j), Napi::Number::New(env, double(ps[i].shape[j])));
      o.Set("shape", sh);
      o.Set("value", to_js(env, ps[i].value));
      o.Set("grad", to_js(env, ps[i].grad));
      o.Set("m", to_js(env, ps[i].m));
      o.Set("v", to_js(env, ps[i].v));
      a.Set(uint32_t(i), o);
    }
    return a;
  }
  Napi::Value SetState(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    MvpTrainer& t = trainer(env);
    check_idle(env);
    if (info.Length() < 2 || !info[0].IsArray()) throw_invalid(env, "setState(params, steps)");
    const int64_t steps = arg_int(info, 1, "steps");
    auto& ps = t.params();
    Napi::Array a = info[0].As<Napi::Array>();
    if (a.Length() != ps.size())
      throw make_js_error(env, "ERR_MALFORMED_FILE", "the trainer state has " + std::to_string(a.Length()) +
                                                         " tensors, the trainer " + std::to_string(ps.size()));
    // validate everything before changing anything
    for (uint32_t i = 0; i < a.Length(); ++i) {
      Napi::Object o = a.Get(i).As<Napi::Object>();
      if (!o.Get("name").IsString() || o.Get("name").As<Napi::String>().Utf8Value() != ps[i].name)
        throw make_js_error(env, "ERR_MALFORMED_FILE", "the trainer state's tensor " + std::to_string(i) + " is not " + ps[i].name);
      for (const char* k : {"value", "m", "v"}) {
        Napi::Value v = o.Get(k);
        if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array ||
            v.As<Napi::Float32Array>().ElementLength() != ps[i].value.size())
          throw make_js_error(env, "ERR_MALFORMED_FILE", "the trainer state's " + ps[i].name + "." + k + " has the wrong size");
      }
    }
    for (uint32_t i = 0; i < a.Length(); ++i) {
      Napi::Object o = a.Get(i).As<Napi::Object>();
      auto cp = [&](const char* k, std::vector<float>& dst) {
        auto f = o.Get(k).As<Napi::Float32Array>();
        std::copy(f.Data(), f.Data() + f.ElementLength(), dst.begin());
      };
      cp("value", ps[i].value);
      cp("m", ps[i].m);
      cp("v", ps[i].v);
    }
    t.zero_grad();
    t.set_steps_done(steps);
    return env.Undefined();
  }
  Napi::Value StepsDone(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), double(trainer(info.Env()).steps_done()));
  }
  Napi::Value LastPositions(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), double(trainer(info.Env()).last_positions()));
  }
  Napi::Value PhaseSeconds(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    check_idle(env);
    const MvpPhaseTimes& t = trainer(env).phase_times();
    Napi::Object o = Napi::Object::New(env);
    o.Set("mvpForward", Napi::Number::New(env, t.mvp_forward));
    o.Set("decoderForward", Napi::Number::New(env, t.decoder_forward));
    o.Set("lmHead", Napi::Number::New(env, t.lm_head));
    o.Set("recompute", Napi::Number::New(env, t.recompute));
    o.Set("gemmBackward", Napi::Number::New(env, t.gemm_backward));
    o.Set("attentionBackward", Napi::Number::New(env, t.attention_backward));
    o.Set("normBackward", Napi::Number::New(env, t.norm_backward));
    o.Set("elementwiseBackward", Napi::Number::New(env, t.elementwise_backward));
    o.Set("mvpBackward", Napi::Number::New(env, t.mvp_backward));
    o.Set("optimizer", Napi::Number::New(env, t.optimizer));
    return o;
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    check_idle(env);
    h_->trainer.reset();
    return env.Undefined();
  }
};

struct TrainerCtor {
  Napi::FunctionReference ctor;
};

Napi::Value CreateMvpTrainer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string path = arg_string(info, 0, "path");
  Napi::Object o = info.Length() > 1 && info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(env);
  MvpTrainOptions opts;
  if (has_opt(o, "trainable")) {
    if (!o.Get("trainable").IsArray()) throw_invalid(env, "trainable must be an array of perspective names");
    Napi::Array a = o.Get("trainable").As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      if (!a.Get(i).IsString()) throw_invalid(env, "trainable must be an array of perspective names");
      opts.trainable.push_back(a.Get(i).As<Napi::String>().Utf8Value());
    }
  }
  opts.lr = opt_number(env, o, "lr", opts.lr);
  opts.min_lr_ratio = opt_number(env, o, "minLrRatio", opts.min_lr_ratio);
  opts.warmup_steps = opt_int(env, o, "warmupSteps", 0, 0, int64_t(1) << 40);
  opts.total_steps = opt_int(env, o, "totalSteps", 1, 1, int64_t(1) << 40);
  opts.weight_decay = opt_number(env, o, "weightDecay", opts.weight_decay);
  opts.clip_norm = opt_number(env, o, "clipNorm", opts.clip_norm);
  opts.beta1 = opt_number(env, o, "beta1", opts.beta1);
  opts.beta2 = opt_number(env, o, "beta2", opts.beta2);
  opts.eps = opt_number(env, o, "eps", opts.eps);
  opts.threads = int(opt_int(env, o, "threads", 1, 1, 1024));
  if (has_opt(o, "recompute")) {  // unset: auto (keep the layers that fit in 1 GiB, recompute the others)
    if (!o.Get("recompute").IsBoolean()) throw_invalid(env, "recompute must be a boolean");
    opts.recompute = o.Get("recompute").As<Napi::Boolean>().Value() ? MvpTrainOptions::Recompute::On
                                                                      : MvpTrainOptions::Recompute::Off;
  }
  LlavaLoadOptions lo;
  lo.threads = opts.threads;
  // device: where the frozen decoder runs (the model loads there; MvpTrainer then runs the
  // decoder through the backend's ops). Typed errors from read_runtime_options / require_device.
  const RuntimeOptions ro = read_runtime_options(env, o);
  if (ro.device_set) {
    if (ro.device_index != 0)
      throw make_js_error(env, "ERR_UNSUPPORTED",
                          "createMvpTrainer: device 'cuda:" + std::to_string(ro.device_index) +
                              "' is not supported yet; use device 'cuda' with CUDA_VISIBLE_DEVICES=" +
                              std::to_string(ro.device_index));
    lo.device = ro.device;
  }
  auto h = std::make_shared<TrainerHandle>();
  auto* ctor = static_cast<TrainerCtor*>(info.Data());
  auto* w = new_worker<FnWorker>(
      env, "createMvpTrainer", env, h,
      [h, path, lo, opts]() {
        auto m = EmollmModel::load(path, lo);
        h->trainer = std::make_unique<MvpTrainer>(m, opts);
      },
      [h, ctor](Napi::Env e) -> Napi::Value {
        auto ext = Napi::External<std::shared_ptr<TrainerHandle>>::New(
            e, new std::shared_ptr<TrainerHandle>(h), [](Napi::Env, std::shared_ptr<TrainerHandle>* p) { delete p; });
        return ctor->ctor.New({ext});
      });
  return w->claim_and_queue();  // its handle is new: nothing else can see it busy
}

}  // namespace

void register_train(Napi::Env env, Napi::Object exports) {
  auto* c = new TrainerCtor();
  c->ctor = Napi::Persistent(TrainerWrap::Define(env));
  env.AddCleanupHook([c]() { delete c; });
  exports.Set("createMvpTrainer", Napi::Function::New(env, CreateMvpTrainer, "createMvpTrainer", c));
}

}  // namespace emollm::addon
