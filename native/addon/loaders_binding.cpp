// Loader entry points for JavaScript: inspectSafetensors, inspectGguf and readConfig. Each one
// parses on a libuv worker thread (PromiseWorker) and builds the JavaScript result on the main
// thread, so the event loop is never blocked by file work. Failures reject with EmollmError
// (code ERR_FILE_NOT_FOUND / ERR_MALFORMED_FILE / ERR_UNSUPPORTED / ERR_BAD_CONFIG, .file set).
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include "bindings.h"
#include "loaders/gguf.h"
#include "loaders/hf_config.h"
#include "loaders/safetensors.h"
#include "napi_util.h"

namespace emollm::addon {
namespace {

constexpr double kMaxSafeInteger = 9007199254740991.0;

// An integer as a Number when exactly representable, else a BigInt.
Napi::Value int_value(Napi::Env env, int64_t v) {
  if (double(v) <= kMaxSafeInteger && double(v) >= -kMaxSafeInteger) return Napi::Number::New(env, double(v));
  return Napi::BigInt::New(env, v);
}
Napi::Value uint_value(Napi::Env env, uint64_t v) {
  if (double(v) <= kMaxSafeInteger) return Napi::Number::New(env, double(v));
  return Napi::BigInt::New(env, v);
}

Napi::Array int_array(Napi::Env env, const std::vector<int64_t>& v) {
  Napi::Array a = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); ++i) a.Set(uint32_t(i), int_value(env, v[i]));
  return a;
}

Napi::Value str_or_null(Napi::Env env, const std::string& s) {
  return s.empty() ? env.Null() : Napi::String::New(env, s);
}

Napi::Object tensor_object(Napi::Env env, const TensorInfo& t) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("name", t.name);
  o.Set("dtype", t.type_name);
  o.Set("computeDtype", t.supported ? Napi::Value(Napi::String::New(env, dtype_name(t.dtype))) : env.Null());
  o.Set("supported", t.supported);
  o.Set("shape", int_array(env, t.shape));
  o.Set("nbytes", uint_value(env, t.nbytes));
  o.Set("file", t.path());
  o.Set("offset", uint_value(env, t.offset));
  return o;
}

Napi::Array tensors_array(Napi::Env env, const WeightStore& ws) {
  Napi::Array a = Napi::Array::New(env, ws.size());
  for (size_t i = 0; i < ws.size(); ++i) a.Set(uint32_t(i), tensor_object(env, ws.tensors()[i]));
  return a;
}

// ---------------------------------------------------------------- safetensors

class InspectSafetensorsWorker final : public PromiseWorker {
 public:
  static constexpr const char* kName = "inspectSafetensors";  // the call, in its out-of-memory error
  InspectSafetensorsWorker(Napi::Env env, std::string path) : PromiseWorker(env), path_(std::move(path)) {}

 protected:
  void Run() override { store_.emplace(SafetensorsStore::open(path_)); }
  Napi::Value Resolve(Napi::Env env) override {
    const SafetensorsStore& st = *store_;
    Napi::Object o = Napi::Object::New(env);
    o.Set("format", "safetensors");
    o.Set("source", st.source());
    o.Set("sharded", st.sharded());
    Napi::Array files = Napi::Array::New(env, st.files().size());
    for (size_t i = 0; i < st.files().size(); ++i) files.Set(uint32_t(i), st.files()[i]->path());
    o.Set("files", files);
    Napi::Object md = Napi::Object::New(env);
    for (const auto& kv : st.metadata()) md.Set(kv.first, kv.second);
    o.Set("metadata", md);
    o.Set("tensors", tensors_array(env, st));
    return o;
  }

 private:
  std::string path_;
  std::optional<SafetensorsStore> store_;
};

// ---------------------------------------------------------------- GGUF

std::string gguf_value_type(const GgufValue& v) {
  if (v.type != GgufType::ARRAY) return gguf_type_name(v.type);
  if (v.elem_type == GgufType::ARRAY)
    return "array<" + (v.arrays.empty() ? std::string("array") : gguf_value_type(v.arrays[0])) + ">";
  return std::string("array<") + gguf_type_name(v.elem_type) + ">";
}

Napi::Value gguf_js_value(Napi::Env env, const GgufValue& v) {
  switch (v.type) {
    case GgufType::U8: case GgufType::U16: case GgufType::U32: case GgufType::U64: return uint_value(env, v.u);
    case GgufType::I8: case GgufType::I16: case GgufType::I32: case GgufType::I64: return int_value(env, v.i);
    case GgufType::F32: case GgufType::F64: return Napi::Number::New(env, v.f);
    case GgufType::BOOL: return Napi::Boolean::New(env, v.b);
    case GgufType::STRING: return Napi::String::New(env, v.str);
    case GgufType::ARRAY: break;
  }
  Napi::Array a = Napi::Array::New(env, size_t(v.count));
  for (size_t i = 0; i < size_t(v.count); ++i) {
    Napi::Value e;
    switch (v.elem_type) {
      case GgufType::STRING: e = Napi::String::New(env, v.strings[i]); break;
      case GgufType::ARRAY: e = gguf_js_value(env, v.arrays[i]); break;
      case GgufType::F32: case GgufType::F64: e = Napi::Number::New(env, v.float_at(i)); break;
      case GgufType::BOOL: e = Napi::Boolean::New(env, v.int_at(i) != 0); break;
      case GgufType::U64: {
        uint64_t x;
        std::memcpy(&x, v.raw.data() + 8 * i, 8);
        e = uint_value(env, x);
        break;
      }
      default: e = int_value(env, v.int_at(i)); break;
    }
    a.Set(uint32_t(i), e);
  }
  return a;
}

class InspectGgufWorker final : public PromiseWorker {
 public:
  static constexpr const char* kName = "inspectGguf";  // the call, in its out-of-memory error
  InspectGgufWorker(Napi::Env env, std::string path) : PromiseWorker(env), path_(std::move(path)) {}

 protected:
  void Run() override { gguf_.emplace(GgufFile::open(path_)); }
  Napi::Value Resolve(Napi::Env env) override {
    const GgufFile& g = *gguf_;
    Napi::Object o = Napi::Object::New(env);
    o.Set("format", "gguf");
    o.Set("file", g.source());
    o.Set("version", g.version());
    o.Set("alignment", g.alignment());
    o.Set("dataOffset", uint_value(env, g.data_offset()));
    Napi::Object md = Napi::Object::New(env);
    Napi::Object types = Napi::Object::New(env);
    for (const auto& kv : g.metadata()) {
      md.Set(kv.first, gguf_js_value(env, kv.second));
      types.Set(kv.first, gguf_value_type(kv.second));
    }
    o.Set("metadata", md);
    o.Set("metadataTypes", types);
    o.Set("tensors", tensors_array(env, g));
    return o;
  }

 private:
  std::string path_;
  std::optional<GgufFile> gguf_;
};

// ---------------------------------------------------------------- config.json

Napi::Object rope_object(Napi::Env env, const RopeScaling& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("ropeType", r.rope_type);
  o.Set("factor", r.factor);
  o.Set("lowFreqFactor", r.low_freq_factor);
  o.Set("highFreqFactor", r.high_freq_factor);
  o.Set("originalMaxPositionEmbeddings",
        r.original_max_position_embeddings ? int_value(env, r.original_max_position_embeddings) : env.Null());
  o.Set("betaFast", r.beta_fast);
  o.Set("betaSlow", r.beta_slow);
  o.Set("attentionFactor", r.attention_factor != 0 ? Napi::Value(Napi::Number::New(env, r.attention_factor)) : env.Null());
  return o;
}

Napi::Object llama_object(Napi::Env env, const LlamaConfig& c) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("modelType", c.model_type);
  o.Set("vocabSize", int_value(env, c.vocab_size));
  o.Set("hiddenSize", int_value(env, c.hidden_size));
  o.Set("intermediateSize", int_value(env, c.intermediate_size));
  o.Set("numHiddenLayers", int_value(env, c.num_hidden_layers));
  o.Set("numAttentionHeads", int_value(env, c.num_attention_heads));
  o.Set("numKeyValueHeads", int_value(env, c.num_key_value_heads));
  o.Set("headDim", int_value(env, c.head_dim));
  o.Set("maxPositionEmbeddings", int_value(env, c.max_position_embeddings));
  o.Set("rmsNormEps", c.rms_norm_eps);
  o.Set("ropeTheta", c.rope_theta);
  o.Set("ropeScaling", rope_object(env, c.rope_scaling));
  o.Set("tieWordEmbeddings", c.tie_word_embeddings);
  o.Set("attentionBias", c.attention_bias);
  o.Set("mlpBias", c.mlp_bias);
  o.Set("hiddenAct", c.hidden_act);
  o.Set("bosTokenId", int_array(env, c.bos_token_id));
  o.Set("eosTokenId", int_array(env, c.eos_token_id));
  o.Set("padTokenId", int_array(env, c.pad_token_id));
  o.Set("torchDtype", str_or_null(env, c.torch_dtype));
  o.Set("slidingWindow", c.sliding_window ? int_value(env, c.sliding_window) : env.Null());
  if (c.qkv_bias) o.Set("qkvBias", true);                                          // Qwen2
  if (!c.mrope_section.empty()) o.Set("mropeSection", int_array(env, c.mrope_section));  // Qwen2-VL
  return o;
}

Napi::Object clip_object(Napi::Env env, const ClipVisionConfig& c) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("modelType", c.model_type);
  o.Set("hiddenSize", int_value(env, c.hidden_size));
  o.Set("intermediateSize", int_value(env, c.intermediate_size));
  o.Set("numHiddenLayers", int_value(env, c.num_hidden_layers));
  o.Set("numAttentionHeads", int_value(env, c.num_attention_heads));
  o.Set("imageSize", int_value(env, c.image_size));
  o.Set("patchSize", int_value(env, c.patch_size));
  o.Set("numChannels", int_value(env, c.num_channels));
  o.Set("layerNormEps", c.layer_norm_eps);
  o.Set("hiddenAct", c.hidden_act);
  o.Set("projectionDim", int_value(env, c.projection_dim));
  o.Set("torchDtype", str_or_null(env, c.torch_dtype));
  o.Set("numPatches", int_value(env, c.num_patches()));
  o.Set("headDim", int_value(env, c.head_dim()));
  return o;
}

Napi::Object llava_object(Napi::Env env, const LlavaConfig& c) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("textConfig", llama_object(env, c.text_config));
  o.Set("visionConfig", clip_object(env, c.vision_config));
  o.Set("imageTokenIndex", int_value(env, c.image_token_index));
  o.Set("projectorHiddenAct", c.projector_hidden_act);
  o.Set("visionFeatureLayer", c.vision_feature_layer_is_list ? Napi::Value(int_array(env, c.vision_feature_layer))
                                                             : int_value(env, c.vision_feature_layer.at(0)));
  o.Set("visionFeatureSelectStrategy", c.vision_feature_select_strategy);
  o.Set("imageSeqLength", int_value(env, c.image_seq_length));
  o.Set("multimodalProjectorBias", c.multimodal_projector_bias);
  o.Set("tieWordEmbeddings", c.tie_word_embeddings);
  o.Set("padTokenId", int_array(env, c.pad_token_id));
  o.Set("torchDtype", str_or_null(env, c.torch_dtype));
  if (c.anyres) {  // LLaVA-NeXT
    Napi::Array pa = Napi::Array::New(env, c.image_grid_pinpoints.size());
    for (size_t i = 0; i < c.image_grid_pinpoints.size(); ++i) {
      Napi::Array pp = Napi::Array::New(env, 2);
      pp.Set(uint32_t(0), int_value(env, c.image_grid_pinpoints[i].first));
      pp.Set(uint32_t(1), int_value(env, c.image_grid_pinpoints[i].second));
      pa.Set(uint32_t(i), pp);
    }
    o.Set("imageGridPinpoints", pa);
  }
  return o;
}

Napi::Object qwen2_vl_object(Napi::Env env, const Qwen2VLConfig& c) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("textConfig", llama_object(env, c.text_config));
  const Qwen2VisionConfig& v = c.vision_config;
  Napi::Object vo = Napi::Object::New(env);
  vo.Set("depth", int_value(env, v.depth));
  vo.Set("embedDim", int_value(env, v.embed_dim));
  vo.Set("hiddenSize", int_value(env, v.hidden_size));
  vo.Set("numHeads", int_value(env, v.num_heads));
  vo.Set("mlpRatio", int_value(env, v.mlp_ratio));
  vo.Set("inChannels", int_value(env, v.in_channels));
  vo.Set("patchSize", int_value(env, v.patch_size));
  vo.Set("spatialMergeSize", int_value(env, v.spatial_merge_size));
  vo.Set("temporalPatchSize", int_value(env, v.temporal_patch_size));
  vo.Set("hiddenAct", v.hidden_act);
  vo.Set("ropeTheta", v.rope_theta);
  o.Set("visionConfig", vo);
  o.Set("imageTokenId", int_value(env, c.image_token_id));
  o.Set("videoTokenId", int_value(env, c.video_token_id));
  o.Set("visionStartTokenId", int_value(env, c.vision_start_token_id));
  o.Set("visionEndTokenId", int_value(env, c.vision_end_token_id));
  o.Set("tieWordEmbeddings", c.tie_word_embeddings);
  return o;
}

class ReadConfigWorker final : public PromiseWorker {
 public:
  static constexpr const char* kName = "readConfig";  // the call, in its out-of-memory error
  ReadConfigWorker(Napi::Env env, std::string path) : PromiseWorker(env), path_(std::move(path)) {}

 protected:
  void Run() override { cfg_ = load_hf_config(path_); }
  Napi::Value Resolve(Napi::Env env) override {
    Napi::Object o = Napi::Object::New(env);
    o.Set("modelType", cfg_.model_type);
    Napi::Array arch = Napi::Array::New(env, cfg_.architectures.size());
    for (size_t i = 0; i < cfg_.architectures.size(); ++i) arch.Set(uint32_t(i), cfg_.architectures[i]);
    o.Set("architectures", arch);
    if (cfg_.llama) {
      o.Set("kind", "llama");
      o.Set("config", llama_object(env, *cfg_.llama));
    } else if (cfg_.clip) {
      o.Set("kind", "clip_vision");
      o.Set("config", clip_object(env, *cfg_.clip));
    } else if (cfg_.llava) {
      o.Set("kind", "llava");  // also LLaVA-NeXT (modelType "llava_next", config.imageGridPinpoints)
      o.Set("config", llava_object(env, *cfg_.llava));
    } else if (cfg_.qwen2_vl) {
      o.Set("kind", "qwen2_vl");
      o.Set("config", qwen2_vl_object(env, *cfg_.qwen2_vl));
    }
    return o;
  }

 private:
  std::string path_;
  HfConfig cfg_;
};

template <typename Worker>
Napi::Value queue_path_worker(const Napi::CallbackInfo& info) {
  std::string path = arg_string(info, 0, "path");
  if (path.empty()) throw_invalid(info.Env(), "path must not be empty");
  auto* w = new_worker<Worker>(info.Env(), Worker::kName, info.Env(), std::move(path));
  return w->claim_and_queue();
}

}  // namespace

void register_loaders(Napi::Env env, Napi::Object exports) {
  exports.Set("inspectSafetensors",
              Napi::Function::New(env, queue_path_worker<InspectSafetensorsWorker>, "inspectSafetensors"));
  exports.Set("inspectGguf", Napi::Function::New(env, queue_path_worker<InspectGgufWorker>, "inspectGguf"));
  exports.Set("readConfig", Napi::Function::New(env, queue_path_worker<ReadConfigWorker>, "readConfig"));
}

}  // namespace emollm::addon
