// LLaVA (1.5 layout): CLIP ViT vision tower -> multi-modal projector (linear_1 -> GELU (erf) ->
// linear_2) -> image features spliced into the LLaMA decoder's input embeddings.
//
// Two sources:
//  - a Hugging Face llava-hf folder (config.json model_type "llava" + safetensors), tensors in
//    either spelling: transformers < 4.52 ("vision_tower.vision_model.*" or "vision_tower.*",
//    "multi_modal_projector.*", "language_model.model.*", "language_model.lm_head.weight") or
//    >= 4.52 ("model.vision_tower.*", "model.multi_modal_projector.*", "model.language_model.*",
//    "lm_head.weight");
//  - llama.cpp's pair: a text GGUF (general.architecture "llama") + an mmproj GGUF
//    (general.architecture "clip", clip.projector_type "mlp", projector tensors mm.0.* / mm.2.*).
//    llava-1.5 mmproj files were converted with the tower's last layer removed, so the features
//    are the output of the last STORED layer (= transformers' hidden_states[-2] of the full
//    tower), unless the file lists clip.vision.feature_layer (hidden-state indices). Note that
//    llama.cpp itself runs one layer fewer than stored for this projector type (a known
//    double-subtraction); emollm follows transformers. The projector GELU is the exact (erf) one,
//    as in transformers (llama.cpp uses the tanh approximation).
//
// Prompt splice: the prompt carries image_token_id either once per image (expanded here to
// n_image_tokens() positions) or already expanded (n_image_tokens() per image, as the HF
// processor does). The image positions become negative pseudo-ids derived from a hash of the
// image's features (see image_pseudo_ids), which LlamaContext::eval replaces by the feature
// rows, and which make the KV-cache prefix reuse tell different images apart.
//
// Weights: the tower, the projector and image_newline are used in place from the mmap on the CPU;
// on a device backend they are uploaded once at load, like the decoder's (see clip.h).
//
// Thread safety: immutable after load; encode_images may run on any thread (the compute pool
// serialises kernels, as for the decoder).
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "loaders/gguf.h"
#include "loaders/hf_config.h"
#include "model/clip.h"
#include "model/image_splice.h"
#include "model/kept_block.h"
#include "model/llama.h"

namespace emollm {

struct LlavaLoadOptions {
  int threads = 0;                   // as LlamaLoadOptions
  std::optional<DeviceKind> device;  // as LlamaLoadOptions
  std::string mmproj;            // the mmproj GGUF when `path` is a text GGUF
  int32_t image_token_id = -1;   // GGUF pair: the id standing for an image in prompts; -1 = the
                                 // text GGUF's "<image>" token if it has one, else n_vocab
};

class LlavaModel {
 public:
  // True when `path` is a Hugging Face folder (or its config.json) whose model_type is "llava" or
  // "llava_next".
  // Never throws (false on any problem).
  static bool is_llava_folder(const std::string& path);

  // A llava-hf folder (opts.mmproj empty) or a text GGUF + opts.mmproj. Errors as
  // LlamaModel::load, plus Unsupported for a projector type / activation we do not run.
  static std::shared_ptr<LlavaModel> load(const std::string& path, const LlavaLoadOptions& opts = {});
  // From a store and a parsed config (tests use it to vary vision_feature_layer / strategy).
  static std::shared_ptr<LlavaModel> from_hf_store(std::shared_ptr<WeightStore> store, const LlavaConfig& config,
                                                   const std::string& config_file, const LlavaLoadOptions& opts = {});

  const std::shared_ptr<LlamaModel>& text_model() const { return text_; }
  const LlamaModel& text() const { return *text_; }
  const ClipVisionModel& vision() const { return *vision_; }
  const std::string& format() const { return format_; }  // "safetensors" or "gguf"

  int32_t image_token_id() const { return image_token_id_; }
  // Features (decoder positions) per image: n_patches, or n_patches + 1 with the "full" strategy.
  int64_t n_image_tokens() const;
  int64_t n_embd() const { return text_->hparams().n_embd; }
  // hidden-state indices of the vision tower whose rows are concatenated (resolved, >= 0)
  const std::vector<int64_t>& feature_layers() const { return feature_layers_; }
  bool drop_cls() const { return drop_cls_; }
  const std::string& projector_act() const { return projector_act_; }
  // Image normalisation from preprocessor_config.json / the mmproj; empty when unknown.
  const std::vector<float>& image_mean() const { return image_mean_; }
  const std::vector<float>& image_std() const { return image_std_; }

  // Vision tower + projector for B images: pixels [B, C, S, S] (normalised), out [B,
  // n_image_tokens(), n_embd()]. Returns false when aborted.
  bool encode_images(const float* pixels, int64_t B, float* out, const std::atomic<bool>* abort = nullptr) const;
  // The same with `out` in the backend's memory (text_model()->backend(); pixels stay host memory).
  bool encode_images_device(const float* pixels, int64_t B, float* out_device, const std::atomic<bool>* abort = nullptr) const;
  // The projector alone: feats [rows, d_in] -> out [rows, n_embd()], both in the backend's memory.
  void project(const float* feats, int64_t rows, float* out) const;
  // Whether encode calls keep their feature / projector scratch between calls (default: on,
  // unless EMOLLM_LLAVA_KEEP_SCRATCH=0), for every LLaVA model of the process; for A/B in one process.
  static void set_keep_scratch(bool on);
  static bool keep_scratch();
  // Bytes of the kept block (0: none yet), for tests.
  size_t kept_scratch_bytes() const { return kept_.bytes(); }
  int64_t projector_in() const { return proj_in_; }

  // The decoder prompt for `tokens` with `n_images` images whose projected features are
  // `features` ([n_images, n_image_tokens(), n_embd()]): image tokens become pseudo-ids, expanded
  // when given once per image. The features are then the `embd` rows for LlamaContext::eval /
  // eval_prompt / score_continuations, in order. Throws InvalidArgument naming the counts when
  // the prompt's image tokens are neither one per image nor n_image_tokens() per image.
  std::vector<int32_t> splice_prompt(const int32_t* tokens, int64_t n, const float* features, int64_t n_images) const;
  // The splice of a prompt with n_images images (splice_prompt / spliced_length, image_splice.h):
  // n_image_tokens() rows each, or for an anyres model the rows of each image's layout (`counts`,
  // the features' tokenCounts).
  ImageSplice image_splice(int64_t n_images, const std::vector<int64_t>& counts) const;

  // ---- LLaVA-NeXT (config model_type "llava_next"; see llava_next.h for the tiling and packing)
  bool anyres() const { return anyres_; }
  // {height, width} pinpoints in pixels
  const std::vector<std::pair<int64_t, int64_t>>& grid_pinpoints() const { return pinpoints_; }
  // the learned row separator [n_embd()] in host memory, null when the checkpoint has none
  const float* image_newline() const { return image_newline_; }
  // the same in the backend's memory (what Backend ops take: anyres_pack on the backend)
  const float* image_newline_device() const { return image_newline_dev_; }

  LlavaModel() = default;
  LlavaModel(const LlavaModel&) = delete;
  LlavaModel& operator=(const LlavaModel&) = delete;

 private:
  std::string format_;
  std::shared_ptr<LlamaModel> text_;
  std::shared_ptr<WeightStore> store_;       // the safetensors store or the mmproj GGUF (vision + projector)
  std::unique_ptr<ClipVisionModel> vision_;
  std::vector<int64_t> feature_layers_;
  bool drop_cls_ = true;
  int32_t image_token_id_ = 32000;
  std::string projector_act_ = "gelu";
  LlamaWeight proj1_, proj2_;
  const float *proj1_b_ = nullptr, *proj2_b_ = nullptr;
  int64_t proj_in_ = 0;
  std::vector<std::vector<float>> converted_;
  std::vector<float> image_mean_, image_std_;
  bool anyres_ = false;
  std::vector<std::pair<int64_t, int64_t>> pinpoints_;
  const float* image_newline_ = nullptr;
  const float* image_newline_dev_ = nullptr;
  BackendWeights weights_;  // the projector's and image_newline's device copies (empty on the CPU)

  // The tower's output features and the projector's hidden rows (2.25 + 9 MiB a LLaVA-1.5 image)
  // kept between encode calls on a host-memory backend, as the tower keeps its activations
  // (ClipVisionModel::kept_): fresh allocations paid their first-touch page faults every vision
  // pass. One call at a time uses the block; a concurrent call, a pass above
  // kMaxKeptScratchBytes, or EMOLLM_LLAVA_KEEP_SCRATCH=0 (a user setting, docs/environment.md:
  // nothing kept resident between calls) allocates its own.
  // Larger passes (LLaVA-1.5: more than ~5 images; LLaVA-NeXT's 5-tile images: one) allocate per
  // call rather than keep that much memory resident between calls.
  static constexpr size_t kMaxKeptScratchBytes = size_t(64) << 20;
  mutable KeptBlock kept_{kMaxKeptScratchBytes};
  // Claims kept_ (grown to `bytes` if needed) for this call and returns it, or null (see above);
  // the claim ends when `claim` is destroyed.
  float* claim_scratch(size_t bytes, KeptBlock::Claim* claim) const;
  // project() with the hidden rows at `hid` ([rows, n_embd()] of backend memory).
  void project_into(const float* feats, int64_t rows, float* out, float* hid) const;

  // Places the tower, the projector and image_newline in the decoder backend's memory (load's last step).
  void place_weights();
  const float* load_vector(const WeightStore& ws, const std::string& name, int64_t n);  // f32 copy
  void load_projector(const WeightStore& ws, const std::string& w1, const std::string& b1, const std::string& w2,
                      const std::string& b2, bool bias);
};

// Pseudo-ids (negative, distinct per position) for the n_feat positions of one image, from a
// 64-bit FNV-1a hash of its feature bytes: the same features always give the same ids, and
// different images give different ids with overwhelming probability.
std::vector<int32_t> image_pseudo_ids(const float* features, int64_t n_feat, int64_t n_embd);

}  // namespace emollm
