// Qwen2-VL (transformers' Qwen2VLForConditionalGeneration): the Qwen2VisionModel tower (2-D RoPE,
// 2x2 patch merger) feeding a Qwen2 decoder (LlamaModel with q/k/v biases) that uses M-RoPE:
// every position has a (temporal, height, width) triple; text tokens have three equal components,
// a visual's merged tokens take (t, row, column) of their grid offset by the text before them,
// and the text after a visual continues from the largest position so far + 1 (transformers'
// get_rope_index / rope_deltas). LlamaContext applies the triples (see llama.h, eval's pos3).
//
// Prompts carry <|image_pad|> / <|video_pad|> either once per visual or already expanded to the
// visual's merged token count (grid t * h * w / merge^2), as the HF processor does. prepare()
// expands, computes the M-RoPE positions and replaces the visual positions with pseudo-ids
// derived from the features (as LLaVA does, so the KV-cache prefix reuse tells visuals apart).
//
// Thread safety: immutable after load; encode() may run on any thread.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "loaders/hf_config.h"
#include "model/image_splice.h"
#include "model/llama.h"
#include "model/qwen2_vision.h"

namespace emollm {

class Qwen2VLModel {
 public:
  // True when `path` is a Hugging Face folder (or its config.json) whose model_type is "qwen2_vl".
  static bool is_qwen2_vl_folder(const std::string& path);
  // A Hugging Face folder. Errors as LlamaModel::load.
  static std::shared_ptr<Qwen2VLModel> load(const std::string& path, const LlamaLoadOptions& opts = {});
  // llama.cpp's pair: a text GGUF (general.architecture "qwen2vl") + an mmproj GGUF (projector
  // "qwen2vl_merger", see Qwen2VisionModel::from_gguf). The special ids are the text GGUF's
  // <|image_pad|>, <|video_pad|>, <|vision_start|>, <|vision_end|> tokens.
  static std::shared_ptr<Qwen2VLModel> load_gguf(const std::string& text, const std::string& mmproj,
                                                 const LlamaLoadOptions& opts = {});
  // True when `mmproj` is a GGUF whose clip.projector_type is "qwen2vl_merger". Never throws.
  static bool is_qwen2vl_mmproj(const std::string& mmproj);

  const std::shared_ptr<LlamaModel>& text_model() const { return text_; }
  const Qwen2VisionModel& vision() const { return *vision_; }
  const Qwen2VLConfig& config() const { return c_; }
  int64_t n_embd() const { return text_->hparams().n_embd; }
  int32_t image_token_id() const { return int32_t(c_.image_token_id); }
  int32_t video_token_id() const { return int32_t(c_.video_token_id); }
  // Decoder positions of one visual: t * h * w / merge^2.
  int64_t n_tokens(const GridThw& g) const { return g.n_patches() / vision_->merge_unit(); }

  // Tower + merger for the visuals' flattened patches (in order); out [sum n_tokens, n_embd()].
  bool encode(const float* patches, const std::vector<GridThw>& grids, std::vector<float>* out,
              const std::atomic<bool>* abort = nullptr) const;
  // The same into the caller's out [n_tokens(grids), n_embd()] (the addon passes a JavaScript result
  // array: no vector filled, then copied).
  bool encode(const float* patches, const std::vector<GridThw>& grids, float* out,
              const std::atomic<bool>* abort = nullptr) const;
  // Decoder positions of all the visuals.
  int64_t n_tokens(const std::vector<GridThw>& grids) const {
    int64_t n = 0;
    for (const GridThw& g : grids) n += n_tokens(g);
    return n;
  }

  struct Prompt {
    std::vector<int32_t> tokens;  // visual positions as pseudo-ids (rows of the features, in order)
    std::vector<int32_t> pos3;    // [tokens.size()][3] M-RoPE positions
  };
  // `visuals[k]` is the grid of the k-th visual placeholder (image or video pad) of the prompt;
  // features: encode()'s output for them. Throws InvalidArgument when the placeholders are
  // neither once per visual nor fully expanded.
  Prompt prepare(const int32_t* tokens, int64_t n, const float* features, const std::vector<GridThw>& visuals) const;
  // prepare()'s splice (image_splice.h): image and video pads alike, n_tokens(visual) rows each.
  ImageSplice image_splice(const std::vector<GridThw>& visuals) const;

  // transformers' get_rope_index on an EXPANDED prompt: `is_visual[i]` marks the visual
  // positions; each run of visual positions belongs to the next grid (merged by `merge`).
  static std::vector<int32_t> mrope_positions(const std::vector<bool>& is_visual, const std::vector<GridThw>& grids,
                                              int64_t merge);

  Qwen2VLModel() = default;
  Qwen2VLModel(const Qwen2VLModel&) = delete;
  Qwen2VLModel& operator=(const Qwen2VLModel&) = delete;

 private:
  Qwen2VLConfig c_;
  std::shared_ptr<LlamaModel> text_;
  std::shared_ptr<WeightStore> store_;  // the safetensors store or the mmproj GGUF
  std::unique_ptr<Qwen2VisionModel> vision_;
};

}  // namespace emollm
