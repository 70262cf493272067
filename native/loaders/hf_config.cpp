#include "loaders/hf_config.h"

#include <cmath>

#include "base/error.h"
#include "loaders/mapped_file.h"

#if !defined(_WIN32)
#include <sys/stat.h>
#endif

namespace emollm {

namespace {

constexpr int64_t kMaxConfigInt = int64_t(1) << 31;

// Typed, defaulted reads of one config object's fields; errors name "prefix.field".
class Fields {
 public:
  Fields(const JsonValue& obj, const std::string& file, const std::string& prefix)
      : obj_(obj), file_(file), prefix_(prefix) {}

  [[noreturn]] void bad(const std::string& key, const std::string& what) const {
    throw Error(ErrorCode::BadConfig, "config field " + prefix_ + key + " " + what, file_);
  }
  // The field's value, or nullptr when absent or null.
  const JsonValue* get(const std::string& key) const {
    const JsonValue* v = obj_.find(key);
    return (v && !v->is_null()) ? v : nullptr;
  }
  static bool integral(const JsonValue& v, int64_t* out) {
    if (v.is_int()) { *out = v.as_int(); return true; }
    if (v.type() == JsonValue::Type::Double) {
      double d = v.as_double();
      if (std::floor(d) == d && std::fabs(d) < 9.0e15) { *out = int64_t(d); return true; }
    }
    return false;
  }
  int64_t int_(const std::string& key, int64_t def) const {
    const JsonValue* v = get(key);
    if (!v) return def;
    int64_t x;
    if (!integral(*v, &x)) bad(key, std::string("must be an integer, got ") + v->type_name());
    return x;
  }
  // A positive integer below 2^31.
  int64_t pos_int(const std::string& key, int64_t def) const {
    int64_t x = int_(key, def);
    if (x <= 0 || x >= kMaxConfigInt) bad(key, "must be a positive integer below 2^31, got " + std::to_string(x));
    return x;
  }
  double num(const std::string& key, double def) const {
    const JsonValue* v = get(key);
    if (!v) return def;
    if (!v->is_number()) bad(key, std::string("must be a number, got ") + v->type_name());
    return v->as_double();
  }
  double pos_num(const std::string& key, double def) const {
    double x = num(key, def);
    if (!(x > 0) || !std::isfinite(x)) bad(key, "must be a positive number");
    return x;
  }
  bool boolean(const std::string& key, bool def) const {
    const JsonValue* v = get(key);
    if (!v) return def;
    if (!v->is_bool()) bad(key, std::string("must be true or false, got ") + v->type_name());
    return v->as_bool();
  }
  std::string str(const std::string& key, const std::string& def) const {
    const JsonValue* v = get(key);
    if (!v) return def;
    if (!v->is_string()) bad(key, std::string("must be a string, got ") + v->type_name());
    return v->as_string();
  }
  // An int, a list of ints, or null/absent (-> def).
  std::vector<int64_t> int_list(const std::string& key, std::vector<int64_t> def, bool* was_list = nullptr) const {
    if (was_list) *was_list = false;
    const JsonValue* v = obj_.find(key);
    if (!v) return def;
    if (v->is_null()) return {};
    int64_t x;
    if (integral(*v, &x)) return {x};
    if (!v->is_array()) bad(key, std::string("must be an integer or a list of integers, got ") + v->type_name());
    if (was_list) *was_list = true;
    std::vector<int64_t> out;
    for (const auto& e : v->items()) {
      if (!integral(e, &x)) bad(key, "must be an integer or a list of integers");
      out.push_back(x);
    }
    return out;
  }
  const JsonValue* object(const std::string& key) const {
    const JsonValue* v = get(key);
    if (v && !v->is_object()) bad(key, std::string("must be an object, got ") + v->type_name());
    return v;
  }
  std::string dtype() const {
    // transformers 5 writes "dtype", 4 "torch_dtype".
    std::string d = str("dtype", "");
    return d.empty() ? str("torch_dtype", "") : d;
  }
  const std::string& file() const { return file_; }
  const std::string& prefix() const { return prefix_; }

 private:
  const JsonValue& obj_;
  const std::string& file_;
  std::string prefix_;
};

void require_object(const JsonValue& obj, const std::string& file, const std::string& what) {
  if (!obj.is_object())
    throw Error(ErrorCode::BadConfig, what + " must be a JSON object, got " + obj.type_name(), file);
}

RopeScaling parse_rope(const JsonValue& obj, const std::string& file, const std::string& prefix) {
  Fields f(obj, file, prefix);
  RopeScaling r;
  std::string type = f.str("rope_type", "");
  if (type.empty()) type = f.str("type", "default");
  static const char* kKnown[] = {"default", "linear", "dynamic", "yarn", "longrope", "llama3"};
  bool known = false;
  for (const char* k : kKnown) known |= type == k;
  if (!known) f.bad(obj.find("rope_type") ? "rope_type" : "type", "has unknown rope type \"" + type + "\"");
  r.rope_type = type;
  if (type == "default") return r;
  if (type != "longrope" && !f.get("factor")) f.bad("factor", "is required for " + type + " rope scaling");
  r.factor = f.pos_num("factor", 1.0);
  r.low_freq_factor = f.pos_num("low_freq_factor", 1.0);
  r.high_freq_factor = f.pos_num("high_freq_factor", 4.0);
  r.original_max_position_embeddings = f.int_("original_max_position_embeddings", 0);
  if (r.original_max_position_embeddings < 0) f.bad("original_max_position_embeddings", "must be positive");
  if (type == "llama3" && r.original_max_position_embeddings == 0)
    f.bad("original_max_position_embeddings", "is required for llama3 rope scaling");
  if (type == "llama3" && !(r.high_freq_factor > r.low_freq_factor))
    f.bad("high_freq_factor", "must be greater than low_freq_factor");
  r.beta_fast = f.num("beta_fast", 32.0);
  r.beta_slow = f.num("beta_slow", 1.0);
  r.attention_factor = f.num("attention_factor", 0.0);
  return r;
}

}  // namespace

LlamaConfig parse_llama_config(const JsonValue& obj, const std::string& file, const std::string& prefix) {
  require_object(obj, file, prefix.empty() ? "config" : prefix.substr(0, prefix.size() - 1));
  Fields f(obj, file, prefix);
  LlamaConfig c;
  c.model_type = f.str("model_type", "llama");
  const bool mistral = c.model_type == "mistral";
  const bool qwen2 = c.model_type == "qwen2" || c.model_type == "qwen2_vl_text";
  if (c.model_type != "llama" && !mistral && !qwen2)
    f.bad("model_type", "\"" + c.model_type + "\" is not a llama-style decoder (expected \"llama\" or \"mistral\")");
  c.qkv_bias = qwen2;
  c.vocab_size = f.pos_int("vocab_size", 32000);
  c.hidden_size = f.pos_int("hidden_size", 4096);
  c.intermediate_size = f.pos_int("intermediate_size", mistral ? 14336 : 11008);
  c.num_hidden_layers = f.pos_int("num_hidden_layers", 32);
  c.num_attention_heads = f.pos_int("num_attention_heads", 32);
  c.num_key_value_heads = f.pos_int("num_key_value_heads", mistral ? 8 : c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    f.bad("num_key_value_heads", "(" + std::to_string(c.num_key_value_heads) + ") must divide num_attention_heads (" +
                                     std::to_string(c.num_attention_heads) + ")");
  if (!f.get("head_dim") && c.hidden_size % c.num_attention_heads != 0)
    f.bad("hidden_size", "(" + std::to_string(c.hidden_size) + ") must be a multiple of num_attention_heads (" +
                             std::to_string(c.num_attention_heads) + ") when head_dim is not given");
  c.head_dim = f.pos_int("head_dim", c.hidden_size / c.num_attention_heads);
  c.max_position_embeddings = f.pos_int("max_position_embeddings", mistral ? 4096 * 32 : 2048);
  c.rms_norm_eps = f.pos_num("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.attention_bias = f.boolean("attention_bias", false);
  c.mlp_bias = f.boolean("mlp_bias", false);
  c.hidden_act = f.str("hidden_act", "silu");
  c.bos_token_id = f.int_list("bos_token_id", {1});
  c.eos_token_id = f.int_list("eos_token_id", {2});
  c.pad_token_id = f.int_list("pad_token_id", {});
  c.torch_dtype = f.dtype();
  if (mistral) {
    const JsonValue* sw = f.get("sliding_window");
    c.sliding_window = sw ? f.pos_int("sliding_window", 4096) : (obj.find("sliding_window") ? 0 : 4096);
  }
  // RoPE: transformers 5 "rope_parameters" {rope_theta, rope_type, factor, ...}; 4: rope_theta + rope_scaling.
  const JsonValue* rope_obj = nullptr;
  std::string rope_prefix;
  if (const JsonValue* rp = f.object("rope_parameters")) {
    Fields rf(*rp, file, prefix + "rope_parameters.");
    c.rope_theta = rf.pos_num("rope_theta", f.pos_num("rope_theta", 10000.0));
    rope_obj = rp;
    rope_prefix = prefix + "rope_parameters.";
  } else {
    c.rope_theta = f.pos_num("rope_theta", 10000.0);
    if (const JsonValue* rs = f.object("rope_scaling")) rope_obj = rs, rope_prefix = prefix + "rope_scaling.";
  }
  if (rope_obj) {
    // Qwen2-VL: mrope_section beside rope_type "default" (v5) or type "mrope" (v4).
    Fields rf(*rope_obj, file, rope_prefix);
    if (rope_obj->find("mrope_section")) {
      c.mrope_section = rf.int_list("mrope_section", {});
      int64_t sum = 0;
      for (int64_t s : c.mrope_section) {
        if (s <= 0) rf.bad("mrope_section", "must hold positive integers");
        sum += s;
      }
      if (c.mrope_section.size() != 3 || sum * 2 != c.head_dim)
        rf.bad("mrope_section", "must hold 3 sections summing to head_dim / 2 (" + std::to_string(c.head_dim / 2) + ")");
    }
    const JsonValue* t = rope_obj->find("type");
    const bool mrope_type = (t && t->is_string() && t->as_string() == "mrope");
    if (!mrope_type) c.rope_scaling = parse_rope(*rope_obj, file, rope_prefix);
  }
  return c;
}

ClipVisionConfig parse_clip_vision_config(const JsonValue& obj, const std::string& file, const std::string& prefix) {
  require_object(obj, file, prefix.empty() ? "config" : prefix.substr(0, prefix.size() - 1));
  Fields f(obj, file, prefix);
  ClipVisionConfig c;
  c.model_type = f.str("model_type", "clip_vision_model");
  if (c.model_type != "clip_vision_model")
    f.bad("model_type", "\"" + c.model_type + "\" is not supported as a vision tower (expected \"clip_vision_model\")");
  c.hidden_size = f.pos_int("hidden_size", c.hidden_size);
  c.intermediate_size = f.pos_int("intermediate_size", c.intermediate_size);
  c.num_hidden_layers = f.pos_int("num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = f.pos_int("num_attention_heads", c.num_attention_heads);
  c.image_size = f.pos_int("image_size", c.image_size);
  c.patch_size = f.pos_int("patch_size", c.patch_size);
  c.num_channels = f.pos_int("num_channels", c.num_channels);
  c.layer_norm_eps = f.pos_num("layer_norm_eps", c.layer_norm_eps);
  c.hidden_act = f.str("hidden_act", c.hidden_act);
  c.projection_dim = f.pos_int("projection_dim", c.projection_dim);
  c.torch_dtype = f.dtype();
  if (c.hidden_size % c.num_attention_heads != 0)
    f.bad("hidden_size", "(" + std::to_string(c.hidden_size) + ") must be a multiple of num_attention_heads (" +
                             std::to_string(c.num_attention_heads) + ")");
  if (c.image_size % c.patch_size != 0)
    f.bad("image_size", "(" + std::to_string(c.image_size) + ") must be a multiple of patch_size (" +
                            std::to_string(c.patch_size) + ")");
  return c;
}

LlavaConfig parse_llava_config(const JsonValue& obj, const std::string& file) {
  require_object(obj, file, "config");
  Fields f(obj, file, "");
  LlavaConfig c;
  if (const JsonValue* tc = f.object("text_config")) c.text_config = parse_llama_config(*tc, file, "text_config.");
  if (const JsonValue* vc = f.object("vision_config")) {
    c.vision_config = parse_clip_vision_config(*vc, file, "vision_config.");
  } else {
    // LlavaConfig's default vision tower (CLIP ViT-L/14 at 336 px).
    ClipVisionConfig& v = c.vision_config;
    v.intermediate_size = 4096;
    v.hidden_size = 1024;
    v.patch_size = 14;
    v.image_size = 336;
    v.num_hidden_layers = 24;
    v.num_attention_heads = 16;
    v.projection_dim = 768;
  }
  // transformers 5 spells it image_token_id.
  c.image_token_index = f.int_("image_token_index", f.int_("image_token_id", 32000));
  if (c.image_token_index < 0) f.bad("image_token_index", "must be non-negative");
  c.projector_hidden_act = f.str("projector_hidden_act", "gelu");
  c.vision_feature_layer = f.int_list("vision_feature_layer", {-2}, &c.vision_feature_layer_is_list);
  if (c.vision_feature_layer.empty()) f.bad("vision_feature_layer", "must not be empty");
  for (int64_t l : c.vision_feature_layer) {
    int64_t n = c.vision_config.num_hidden_layers;
    if (l < -(n + 1) || l > n)
      f.bad("vision_feature_layer", "(" + std::to_string(l) + ") is outside the vision tower's " + std::to_string(n) +
                                        " layers (hidden_states has " + std::to_string(n + 1) + " entries)");
  }
  c.vision_feature_select_strategy = f.str("vision_feature_select_strategy", "default");
  if (c.vision_feature_select_strategy != "default" && c.vision_feature_select_strategy != "full")
    f.bad("vision_feature_select_strategy", "must be \"default\" or \"full\", got \"" + c.vision_feature_select_strategy + "\"");
  c.image_seq_length = f.pos_int("image_seq_length", 576);
  c.multimodal_projector_bias = f.boolean("multimodal_projector_bias", true);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.pad_token_id = f.int_list("pad_token_id", {});
  c.torch_dtype = f.dtype();
  return c;
}

Qwen2VLConfig parse_qwen2_vl_config(const JsonValue& obj, const std::string& file) {
  require_object(obj, file, "config");
  Fields f(obj, file, "");
  Qwen2VLConfig c;
  // transformers 5 nests text_config; 4 keeps the text fields at the top level.
  const JsonValue* tc = f.object("text_config");
  c.text_config = parse_llama_config(tc ? *tc : obj, file, tc ? "text_config." : "");
  if (!tc) c.text_config.qkv_bias = true;  // a v4 top-level qwen2_vl config is a Qwen2 decoder
  if (c.text_config.mrope_section.empty()) f.bad("text_config.rope_parameters.mrope_section", "is required for Qwen2-VL");
  if (const JsonValue* vc = f.object("vision_config")) {
    Fields v(*vc, file, "vision_config.");
    Qwen2VisionConfig& q = c.vision_config;
    q.depth = v.pos_int("depth", q.depth);
    q.embed_dim = v.pos_int("embed_dim", q.embed_dim);
    q.hidden_size = v.pos_int("hidden_size", q.hidden_size);
    q.num_heads = v.pos_int("num_heads", q.num_heads);
    q.mlp_ratio = v.pos_int("mlp_ratio", q.mlp_ratio);
    q.in_channels = v.pos_int("in_channels", q.in_channels);
    q.patch_size = v.pos_int("patch_size", q.patch_size);
    q.spatial_merge_size = v.pos_int("spatial_merge_size", q.spatial_merge_size);
    q.temporal_patch_size = v.pos_int("temporal_patch_size", q.temporal_patch_size);
    q.hidden_act = v.str("hidden_act", q.hidden_act);
    if (const JsonValue* rp = v.object("rope_parameters")) q.rope_theta = Fields(*rp, file, "vision_config.rope_parameters.").pos_num("rope_theta", 10000.0);
    if (q.embed_dim % q.num_heads != 0 || (q.embed_dim / q.num_heads) % 4 != 0)
      v.bad("embed_dim", "must split into heads whose size is a multiple of 4 (2-D RoPE)");
  }
  c.image_token_id = f.int_("image_token_id", c.image_token_id);
  c.video_token_id = f.int_("video_token_id", c.video_token_id);
  c.vision_start_token_id = f.int_("vision_start_token_id", c.vision_start_token_id);
  c.vision_end_token_id = f.int_("vision_end_token_id", c.vision_end_token_id);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", c.text_config.tie_word_embeddings);
  c.text_config.tie_word_embeddings = c.tie_word_embeddings;
  return c;
}

HfConfig parse_hf_config(const JsonValue& root, const std::string& file) {
  require_object(root, file, "config");
  Fields f(root, file, "");
  HfConfig h;
  if (const JsonValue* a = f.get("architectures")) {
    if (!a->is_array()) f.bad("architectures", "must be a list of strings");
    for (const auto& e : a->items()) {
      if (!e.is_string()) f.bad("architectures", "must be a list of strings");
      h.architectures.push_back(e.as_string());
    }
  }
  const JsonValue* mt = root.find("model_type");
  if (!mt) throw Error(ErrorCode::BadConfig, "config has no model_type", file);
  h.model_type = f.str("model_type", "");
  if (h.model_type == "llama" || h.model_type == "mistral") h.llama = parse_llama_config(root, file);
  else if (h.model_type == "clip_vision_model") h.clip = parse_clip_vision_config(root, file);
  else if (h.model_type == "llava") h.llava = parse_llava_config(root, file);
  else if (h.model_type == "qwen2_vl") h.qwen2_vl = parse_qwen2_vl_config(root, file);
  else if (h.model_type == "llava_next") {
    // LLaVA-NeXT: the LLaVA fields plus anyres pinpoints ({height, width} pairs).
    h.llava = parse_llava_config(root, file);
    h.llava->anyres = true;
    const JsonValue* g = f.get("image_grid_pinpoints");
    if (!g || !g->is_array() || g->items().empty()) f.bad("image_grid_pinpoints", "must be a non-empty list of [height, width] pairs");
    const int64_t tile = h.llava->vision_config.image_size;
    for (const auto& e : g->items()) {
      int64_t hh = 0, ww = 0;
      if (!e.is_array() || e.items().size() != 2 || !Fields::integral(e.items()[0], &hh) || !Fields::integral(e.items()[1], &ww) ||
          hh <= 0 || ww <= 0 || hh % tile != 0 || ww % tile != 0)
        f.bad("image_grid_pinpoints", "must hold [height, width] pairs of positive multiples of vision_config.image_size (" +
                                          std::to_string(tile) + ")");
      h.llava->image_grid_pinpoints.emplace_back(hh, ww);
    }
  } else
    throw Error(ErrorCode::BadConfig,
                "unknown model_type \"" + h.model_type + "\" (supported: llama, mistral, clip_vision_model, llava, llava_next, qwen2_vl)", file);
  return h;
}

HfConfig parse_hf_config_text(const char* json, size_t size, const std::string& file) {
  return parse_hf_config(parse_json(json, size, file), file);
}

HfConfig load_hf_config(const std::string& path) {
  std::string p = path;
#if !defined(_WIN32)
  struct stat st;
  if (stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) p += "/config.json";
#endif
  auto f = MappedFile::open(p);
  return parse_hf_config_text(reinterpret_cast<const char*>(f->data()), f->size(), p);
}

}  // namespace emollm
