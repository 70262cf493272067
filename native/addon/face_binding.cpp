// Face detection + expression recognition (native/model/face.h) for JavaScript. lib/face.ts
// loads face-api's weight manifests, dequantises them and calls createFaceModels once.
//
//   createFaceModels(weights: Record<string, Float32Array>, shapes: Record<string, number[]>)
//     -> FaceModels. Names: "detector/<manifest name>" (tiny_face_detector_model) and
//     "expression/<manifest name>" (face_expression_model); either group may be absent.
//   FaceModels.detect(rgb: Uint8Array, width, height, { inputSize?, scoreThreshold?, iouThreshold? })
//     -> Promise<Array<{ x, y, width, height, score }>>         (image pixels, best first)
//   FaceModels.expressions(crops: Float32Array [n*112*112*3], n) -> Promise<Float32Array [n*7]>
//   FaceModels.analyze(rgb, width, height, options)
//     -> Promise<Array<{ x, y, width, height, score, expressions: Float32Array(7) | null }>>
//        (detect, crop as face-api's extractFaceTensors, expressions, in one native call)
//   FaceModels.cropFaces(rgb, width, height, boxes: Float64Array [n*4] x,y,w,h)
//     -> { crops: Float32Array [n*112*112*3], valid: Uint8Array [n] }       (synchronous)
//   FaceModels.preprocess(rgb, width, height, size, center) -> Float32Array [size*size*3] (sync)
//   FaceModels.detectorForward(input: Float32Array [size*size*3], size) -> Promise<Float32Array>
//     the raw output grid [g, g, 25] (g = size / 32), for network-level parity tests.
// Inputs are copied before work is queued. Compute runs on the runtime pool chosen at creation
// (createFaceModels(weights, shapes, { device?, threads? }); unset: the runtime defaults).
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "../model/face.h"
#include "bindings.h"
#include "napi_util.h"

namespace emollm::addon {
namespace {

namespace fc = emollm::face;

struct FaceModelsHandle {
  std::unique_ptr<fc::TinyFaceDetector> detector;
  std::unique_ptr<fc::FaceExpressionNet> expression;
  std::shared_ptr<ThreadPool> pool;  // the runtime's pool for the options given at creation
};

std::vector<uint8_t> arg_u8(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsTypedArray()) throw_invalid(info.Env(), std::string(what) + " must be a Uint8Array");
  auto ta = info[i].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_uint8_array && ta.TypedArrayType() != napi_uint8_clamped_array)
    throw_invalid(info.Env(), std::string(what) + " must be a Uint8Array");
  const uint8_t* p = typed_array_data(ta);
  return std::vector<uint8_t>(p, p + ta.ByteLength());
}

std::vector<float> arg_f32(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw_invalid(info.Env(), std::string(what) + " must be a Float32Array");
  auto ta = info[i].As<Napi::Float32Array>();
  return std::vector<float>(ta.Data(), ta.Data() + ta.ElementLength());
}

// rgb, width, height at info[0..2], checked against each other.
void arg_image(const Napi::CallbackInfo& info, std::vector<uint8_t>* rgb, int64_t* w, int64_t* h) {
  *rgb = arg_u8(info, 0, "rgb");
  *w = arg_int(info, 1, "width");
  *h = arg_int(info, 2, "height");
  if (*w <= 0 || *h <= 0 || *w > 65535 || *h > 65535) throw_invalid(info.Env(), "width and height must be in [1, 65535]");
  if (int64_t(rgb->size()) != *w * *h * 3)
    throw_invalid(info.Env(), "rgb has " + std::to_string(rgb->size()) + " bytes, expected width*height*3 = " +
                                  std::to_string(*w * *h * 3));
}

// The pixels of rgb (info[0]) without copying them: the worker reads them on its own thread while
// `keep` holds the array alive. Copying 100 MP (300 MB) here used to block the event loop for
// most of a second (issue 9). The caller must not transfer (detach) the buffer while the call is
// pending; emollm's own callers pass buffers they own.
struct ImageView {
  const uint8_t* data = nullptr;
  int64_t w = 0, h = 0;
  Napi::ObjectReference keep;
};

void arg_image_view(const Napi::CallbackInfo& info, ImageView* v) {
  if (info.Length() < 1 || !info[0].IsTypedArray()) throw_invalid(info.Env(), "rgb must be a Uint8Array");
  auto ta = info[0].As<Napi::TypedArray>();
  if (ta.TypedArrayType() != napi_uint8_array && ta.TypedArrayType() != napi_uint8_clamped_array)
    throw_invalid(info.Env(), "rgb must be a Uint8Array");
  v->w = arg_int(info, 1, "width");
  v->h = arg_int(info, 2, "height");
  if (v->w <= 0 || v->h <= 0 || v->w > 65535 || v->h > 65535) throw_invalid(info.Env(), "width and height must be in [1, 65535]");
  if (int64_t(ta.ByteLength()) != v->w * v->h * 3)
    throw_invalid(info.Env(), "rgb has " + std::to_string(ta.ByteLength()) + " bytes, expected width*height*3 = " +
                                  std::to_string(v->w * v->h * 3));
  v->data = typed_array_data(ta);
  v->keep = Napi::Persistent(info[0].As<Napi::Object>());
}

fc::DetectOptions arg_detect_options(const Napi::CallbackInfo& info, size_t i) {
  fc::DetectOptions o;
  Napi::Env env = info.Env();
  Napi::Object obj = opt_object(info, i, "options");
  const double size = opt_number(env, obj, "inputSize", double(o.input_size));
  o.score_threshold = opt_number(env, obj, "scoreThreshold", o.score_threshold);
  o.iou_threshold = opt_number(env, obj, "iouThreshold", o.iou_threshold);
  if (!(size >= 64 && size <= 2048) || size != std::floor(size) || int64_t(size) % 32 != 0)
    throw_invalid(info.Env(), "inputSize must be a multiple of 32 in [64, 2048]");
  o.input_size = int64_t(size);
  if (!(o.score_threshold >= 0 && o.score_threshold < 1)) throw_invalid(info.Env(), "scoreThreshold must be in [0, 1)");
  if (!(o.iou_threshold >= 0 && o.iou_threshold <= 1)) throw_invalid(info.Env(), "iouThreshold must be in [0, 1]");
  return o;
}

Napi::Object box_object(Napi::Env env, const fc::FaceBox& b) {
  auto o = Napi::Object::New(env);
  o.Set("x", b.x);
  o.Set("y", b.y);
  o.Set("width", b.width);
  o.Set("height", b.height);
  o.Set("score", b.score);
  return o;
}

// ---------------------------------------------------------------- workers

class DetectWorker final : public PromiseWorker {
 public:
  DetectWorker(Napi::Env env, std::shared_ptr<FaceModelsHandle> m, ImageView img, fc::DetectOptions o,
               bool with_expressions)
      : PromiseWorker(env), m_(std::move(m)), img_(std::move(img)), w_(img_.w), h_(img_.h), o_(o), expr_(with_expressions) {}

 protected:
  void Run() override {
    boxes_ = m_->detector->detect(img_.data, w_, h_, o_, m_->pool.get());
    if (!expr_ || boxes_.empty()) return;
    const int64_t S = fc::kExpressionInputSize;
    std::vector<float> crops(size_t(int64_t(boxes_.size()) * S * S * 3));
    valid_.assign(boxes_.size(), 0);
    int64_t n = 0;
    std::vector<size_t> which;
    for (size_t i = 0; i < boxes_.size(); ++i)
      if (fc::extract_face_crop(img_.data, w_, h_, boxes_[i], crops.data() + n * S * S * 3)) {
        valid_[i] = 1;
        which.push_back(i);
        ++n;
      }
    std::vector<float> probs(size_t(n * fc::kNumExpressions));
    m_->expression->forward(crops.data(), n, probs.data(), m_->pool.get());
    probs_.assign(boxes_.size() * fc::kNumExpressions, 0.0f);
    for (size_t k = 0; k < which.size(); ++k)
      std::copy(probs.begin() + int64_t(k) * fc::kNumExpressions, probs.begin() + int64_t(k + 1) * fc::kNumExpressions,
                probs_.begin() + int64_t(which[k]) * fc::kNumExpressions);
  }
  Napi::Value Resolve(Napi::Env env) override {
    auto arr = Napi::Array::New(env, boxes_.size());
    for (size_t i = 0; i < boxes_.size(); ++i) {
      Napi::Object o = box_object(env, boxes_[i]);
      if (expr_) {
        if (valid_[i]) {
          auto p = Napi::Float32Array::New(env, fc::kNumExpressions);
          std::copy(probs_.begin() + int64_t(i) * fc::kNumExpressions,
                    probs_.begin() + int64_t(i + 1) * fc::kNumExpressions, p.Data());
          o.Set("expressions", p);
        } else {
          o.Set("expressions", env.Null());
        }
      }
      arr.Set(uint32_t(i), o);
    }
    return arr;
  }

 private:
  std::shared_ptr<FaceModelsHandle> m_;
  ImageView img_;  // holds the caller's pixel array alive until the worker is destroyed (main thread)
  int64_t w_, h_;
  fc::DetectOptions o_;
  bool expr_;
  std::vector<fc::FaceBox> boxes_;
  std::vector<uint8_t> valid_;
  std::vector<float> probs_;
};

class ExpressionsWorker final : public PromiseWorker {
 public:
  ExpressionsWorker(Napi::Env env, std::shared_ptr<FaceModelsHandle> m, std::vector<float> crops, int64_t n)
      : PromiseWorker(env), m_(std::move(m)), crops_(std::move(crops)), n_(n) {}

 protected:
  void Run() override {
    probs_.resize(size_t(n_ * fc::kNumExpressions));
    m_->expression->forward(crops_.data(), n_, probs_.data(), m_->pool.get());
  }
  Napi::Value Resolve(Napi::Env env) override {
    auto a = Napi::Float32Array::New(env, probs_.size());
    std::copy(probs_.begin(), probs_.end(), a.Data());
    return a;
  }

 private:
  std::shared_ptr<FaceModelsHandle> m_;
  std::vector<float> crops_;
  int64_t n_;
  std::vector<float> probs_;
};

class ForwardWorker final : public PromiseWorker {
 public:
  ForwardWorker(Napi::Env env, std::shared_ptr<FaceModelsHandle> m, std::vector<float> input, int64_t size)
      : PromiseWorker(env), m_(std::move(m)), input_(std::move(input)), size_(size) {}

 protected:
  void Run() override {
    int64_t grid = 0;
    out_ = m_->detector->forward(input_.data(), size_, m_->pool.get(), &grid);
  }
  Napi::Value Resolve(Napi::Env env) override {
    auto a = Napi::Float32Array::New(env, out_.size());
    std::copy(out_.begin(), out_.end(), a.Data());
    return a;
  }

 private:
  std::shared_ptr<FaceModelsHandle> m_;
  std::vector<float> input_;
  int64_t size_;
  std::vector<float> out_;
};

// ---------------------------------------------------------------- FaceModels

class FaceModelsWrap final : public Napi::ObjectWrap<FaceModelsWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FaceModels",
                       {InstanceMethod<&FaceModelsWrap::Detect>("detect"),
                        InstanceMethod<&FaceModelsWrap::Expressions>("expressions"),
                        InstanceMethod<&FaceModelsWrap::Analyze>("analyze"),
                        InstanceMethod<&FaceModelsWrap::CropFaces>("cropFaces"),
                        InstanceMethod<&FaceModelsWrap::Preprocess>("preprocess"),
                        InstanceMethod<&FaceModelsWrap::DetectorForward>("detectorForward")});
  }

  explicit FaceModelsWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FaceModelsWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject())
      throw_invalid(env, "createFaceModels(weights, shapes) expects two objects");
    auto weights = info[0].As<Napi::Object>();
    auto shapes = info[1].As<Napi::Object>();
    fc::WeightMap det, expr;
    Napi::Array names = weights.GetPropertyNames();
    for (uint32_t i = 0; i < names.Length(); ++i) {
      const std::string name = names.Get(i).As<Napi::String>().Utf8Value();
      Napi::Value v = weights.Get(name);
      if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
        throw_invalid(env, "weights[\"" + name + "\"] must be a Float32Array");
      auto ta = v.As<Napi::Float32Array>();
      fc::Tensor t;
      t.data.assign(ta.Data(), ta.Data() + ta.ElementLength());
      Napi::Value sv = shapes.Get(name);
      if (!sv.IsArray()) throw_invalid(env, "shapes[\"" + name + "\"] must be an array of integers");
      auto sa = sv.As<Napi::Array>();
      for (uint32_t k = 0; k < sa.Length(); ++k) {
        Napi::Value d = sa.Get(k);
        if (!d.IsNumber()) throw_invalid(env, "shapes[\"" + name + "\"] must be an array of integers");
        t.shape.push_back(int64_t(d.As<Napi::Number>().DoubleValue()));
      }
      if (name.rfind("detector/", 0) == 0) det[name.substr(9)] = std::move(t);
      else if (name.rfind("expression/", 0) == 0) expr[name.substr(11)] = std::move(t);
      else throw_invalid(env, "weight name \"" + name + "\" must start with detector/ or expression/");
    }
    if (det.empty() && expr.empty()) throw_invalid(env, "createFaceModels: no weights");
    handle_ = std::make_shared<FaceModelsHandle>();
    try {
      if (!det.empty()) handle_->detector = std::make_unique<fc::TinyFaceDetector>(det);
      if (!expr.empty()) handle_->expression = std::make_unique<fc::FaceExpressionNet>(expr);
      // The face CNNs run on the CPU: the runtime's pool for the requested thread count.
      RuntimeOptions ro;
      ro = read_runtime_options(env, opt_object(info, 2, "runtime options"));
      handle_->pool = Runtime::instance().pool(ro.threads);
    } catch (const emollm::Error& e) {
      throw make_js_error(env, e);
    }
  }

 private:
  void need_detector(Napi::Env env) const {
    if (!handle_->detector) throw make_js_error(env, "ERR_UNSUPPORTED", "FaceModels: no detector weights were given");
  }
  void need_expression(Napi::Env env) const {
    if (!handle_->expression)
      throw make_js_error(env, "ERR_UNSUPPORTED", "FaceModels: no expression weights were given");
  }

  Napi::Value Detect(const Napi::CallbackInfo& info) { return detect_impl(info, false); }
  Napi::Value Analyze(const Napi::CallbackInfo& info) {
    need_expression(info.Env());
    return detect_impl(info, true);
  }
  Napi::Value detect_impl(const Napi::CallbackInfo& info, bool with_expr) {
    Napi::Env env = info.Env();
    need_detector(env);
    ImageView img;
    arg_image_view(info, &img);
    fc::DetectOptions o = arg_detect_options(info, 3);
    auto* worker = new_worker<DetectWorker>(env, with_expr ? "analyze" : "detect", env, handle_, std::move(img), o, with_expr);
    return worker->claim_and_queue();
  }

  Napi::Value Expressions(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    need_expression(env);
    auto crops = arg_f32(info, 0, "crops");
    const int64_t n = arg_int(info, 1, "n");
    const int64_t S = fc::kExpressionInputSize;
    if (n < 0 || int64_t(crops.size()) != n * S * S * 3)
      throw_invalid(env, "crops has " + std::to_string(crops.size()) + " values, expected n*112*112*3 = " +
                             std::to_string(n * S * S * 3));
    auto* worker = new_worker<ExpressionsWorker>(env, "expressions", env, handle_, std::move(crops), n);
    return worker->claim_and_queue();
  }

  Napi::Value CropFaces(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::vector<uint8_t> rgb;
    int64_t w, h;
    arg_image(info, &rgb, &w, &h);
    if (info.Length() <= 3 || !info[3].IsTypedArray() ||
        info[3].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
      throw_invalid(env, "boxes must be a Float64Array of x, y, width, height per face");
    auto boxes = info[3].As<Napi::Float64Array>();
    if (boxes.ElementLength() % 4 != 0) throw_invalid(env, "boxes must hold 4 numbers per face");
    const int64_t n = int64_t(boxes.ElementLength() / 4), S = fc::kExpressionInputSize;
    auto crops = Napi::Float32Array::New(env, size_t(n * S * S * 3));
    auto valid = Napi::Uint8Array::New(env, size_t(n));
    for (int64_t i = 0; i < n; ++i) {
      fc::FaceBox b;
      b.x = boxes[size_t(4 * i)];
      b.y = boxes[size_t(4 * i + 1)];
      b.width = boxes[size_t(4 * i + 2)];
      b.height = boxes[size_t(4 * i + 3)];
      valid[size_t(i)] = fc::extract_face_crop(rgb.data(), w, h, b, crops.Data() + i * S * S * 3) ? 1 : 0;
    }
    auto o = Napi::Object::New(env);
    o.Set("crops", crops);
    o.Set("valid", valid);
    return o;
  }

  Napi::Value Preprocess(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::vector<uint8_t> rgb;
    int64_t w, h;
    arg_image(info, &rgb, &w, &h);
    const int64_t size = arg_int(info, 3, "size");
    if (size <= 0 || size > 2048) throw_invalid(env, "size must be in [1, 2048]");
    const bool center = info.Length() > 4 && info[4].ToBoolean().Value();
    auto out = Napi::Float32Array::New(env, size_t(size * size * 3));
    fc::pad_to_square_resize(rgb.data(), w * 3, w, h, size, center, out.Data());
    return out;
  }

  Napi::Value DetectorForward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    need_detector(env);
    auto input = arg_f32(info, 0, "input");
    const int64_t size = arg_int(info, 1, "size");
    if (size < 64 || size > 2048 || size % 32 != 0) throw_invalid(env, "size must be a multiple of 32 in [64, 2048]");
    if (int64_t(input.size()) != size * size * 3) throw_invalid(env, "input must hold size*size*3 values");
    auto* worker = new_worker<ForwardWorker>(env, "detectorForward", env, handle_, std::move(input), size);
    return worker->claim_and_queue();
  }

  std::shared_ptr<FaceModelsHandle> handle_;
};

struct FaceCtor {
  Napi::FunctionReference ctor;
};

Napi::Value CreateFaceModels(const Napi::CallbackInfo& info) {
  auto* c = static_cast<FaceCtor*>(info.Data());
  return c->ctor.New({info.Length() > 0 ? info[0] : info.Env().Undefined(),
                      info.Length() > 1 ? info[1] : info.Env().Undefined(),
                      info.Length() > 2 ? info[2] : info.Env().Undefined()});
}

}  // namespace

void register_face(Napi::Env env, Napi::Object exports) {
  auto* c = new FaceCtor();
  c->ctor = Napi::Persistent(FaceModelsWrap::Define(env));
  env.AddCleanupHook([c]() { delete c; });
  exports.Set("createFaceModels", Napi::Function::New(env, CreateFaceModels, "createFaceModels", c));
}

}  // namespace emollm::addon
