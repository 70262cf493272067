// Hugging Face config.json -> typed model configs, with transformers' defaults applied for absent
// (or null) fields, as transformers' own config classes do. model_type dispatch:
//   "llama", "mistral"   -> LlamaConfig (Mistral is the same decoder plus sliding_window)
//   "clip_vision_model"  -> ClipVisionConfig
//   "llava"              -> LlavaConfig (text_config: llama/mistral, vision_config: clip_vision_model)
//   "llava_next"         -> LlavaConfig with anyres = true and image_grid_pinpoints (LLaVA-NeXT)
// An unknown model_type is Error(BadConfig) naming it; a field of the wrong type or out of range is
// Error(BadConfig) naming the field ("text_config.hidden_size"); invalid JSON is MalformedFile.
// Both transformers 4 ("rope_theta", "rope_scaling", "torch_dtype") and 5 ("rope_parameters",
// "dtype") spellings are read.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "loaders/json.h"

namespace emollm {

struct RopeScaling {
  // "default" (no scaling), "linear", "dynamic", "yarn", "longrope" or "llama3".
  std::string rope_type = "default";
  double factor = 1.0;
  double low_freq_factor = 1.0;               // llama3
  double high_freq_factor = 4.0;              // llama3
  int64_t original_max_position_embeddings = 0;  // llama3/yarn/longrope; 0 when absent
  double beta_fast = 32.0, beta_slow = 1.0;   // yarn
  double attention_factor = 0.0;              // yarn/longrope; 0 when absent
};

struct LlamaConfig {
  std::string model_type = "llama";
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // default: num_attention_heads
  int64_t head_dim = 128;            // default: hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;          // rope_type "default" when absent
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  std::string hidden_act = "silu";
  // Token ids: a config may give an int, a list of ints, or null (empty).
  std::vector<int64_t> bos_token_id{1};
  std::vector<int64_t> eos_token_id{2};
  std::vector<int64_t> pad_token_id;
  std::string torch_dtype;           // "float16", "bfloat16", "float32" or "" when absent
  int64_t sliding_window = 0;        // mistral; 0 = none
  // Qwen2 / Qwen2-VL text ("qwen2", "qwen2_vl_text"): biases on q/k/v only (not o), and for
  // Qwen2-VL the multimodal RoPE sections (frequency bands rotated by the temporal, height and
  // width position; they sum to head_dim / 2). Empty = plain 1-D RoPE.
  bool qkv_bias = false;
  std::vector<int64_t> mrope_section;
};

struct ClipVisionConfig {
  std::string model_type = "clip_vision_model";
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t image_size = 224;
  int64_t patch_size = 32;
  int64_t num_channels = 3;
  double layer_norm_eps = 1e-5;
  std::string hidden_act = "quick_gelu";
  int64_t projection_dim = 512;
  std::string torch_dtype;
  int64_t num_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
};

struct LlavaConfig {
  LlamaConfig text_config;
  ClipVisionConfig vision_config;
  int64_t image_token_index = 32000;
  std::string projector_hidden_act = "gelu";
  // vision_feature_layer: one int (the usual -2) or a list of ints whose features are concatenated.
  std::vector<int64_t> vision_feature_layer{-2};
  bool vision_feature_layer_is_list = false;
  std::string vision_feature_select_strategy = "default";  // "default" (drop CLS) or "full"
  int64_t image_seq_length = 576;
  bool multimodal_projector_bias = true;
  bool tie_word_embeddings = false;
  std::vector<int64_t> pad_token_id;
  std::string torch_dtype;
  // LLaVA-NeXT (model_type "llava_next"): anyres tiling over image_grid_pinpoints, each a
  // {height, width} in pixels (multiples of the vision tower's image_size).
  bool anyres = false;
  std::vector<std::pair<int64_t, int64_t>> image_grid_pinpoints;
};

// Qwen2-VL's vision tower (model_type "qwen2_vl_vision"): a ViT over 3-D patches with 2-D RoPE
// and a 2x2 patch merger to the decoder's width.
struct Qwen2VisionConfig {
  int64_t depth = 32;
  int64_t embed_dim = 1280;
  int64_t hidden_size = 3584;  // the merger's output (the decoder's hidden size)
  int64_t num_heads = 16;
  int64_t mlp_ratio = 4;
  int64_t in_channels = 3;
  int64_t patch_size = 14;
  int64_t spatial_merge_size = 2;
  int64_t temporal_patch_size = 2;
  std::string hidden_act = "quick_gelu";
  double rope_theta = 10000.0;
};

struct Qwen2VLConfig {
  LlamaConfig text_config;
  Qwen2VisionConfig vision_config;
  int64_t image_token_id = 151655, video_token_id = 151656;
  int64_t vision_start_token_id = 151652, vision_end_token_id = 151653;
  bool tie_word_embeddings = false;
};

struct HfConfig {
  std::string model_type;
  std::vector<std::string> architectures;
  std::optional<LlamaConfig> llama;       // model_type "llama" / "mistral"
  std::optional<ClipVisionConfig> clip;   // model_type "clip_vision_model"
  std::optional<LlavaConfig> llava;       // model_type "llava" / "llava_next"
  std::optional<Qwen2VLConfig> qwen2_vl;  // model_type "qwen2_vl"
};

// `file` names the source in errors.
HfConfig parse_hf_config(const JsonValue& root, const std::string& file);
HfConfig parse_hf_config_text(const char* json, size_t size, const std::string& file);
// `path` is a config.json or a directory holding one.
HfConfig load_hf_config(const std::string& path);

// The sub-parsers, for a JSON object already in hand; `prefix` ("text_config.") prefixes field
// names in errors.
LlamaConfig parse_llama_config(const JsonValue& obj, const std::string& file, const std::string& prefix = "");
ClipVisionConfig parse_clip_vision_config(const JsonValue& obj, const std::string& file, const std::string& prefix = "");
LlavaConfig parse_llava_config(const JsonValue& obj, const std::string& file);
Qwen2VLConfig parse_qwen2_vl_config(const JsonValue& obj, const std::string& file);

}  // namespace emollm
