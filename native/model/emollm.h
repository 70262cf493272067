// EmoLLM (Yang, Ye & Du 2024): a LLaVA base whose single projector is replaced by a
// Multi-perspective Visual Projection (MVP): several projection heads ("perspectives") read the
// vision tower's hidden states and their outputs are fused before the LLM.
//
// A Hugging Face llava folder becomes an EmoLLM checkpoint when its config.json has an `emollm`
// section (schema: docs/emollm-config.md); the MVP weights live in a safetensors file beside the
// base weights (default emollm_mvp.safetensors), tensors mvp.heads.<i>.*.
//
// Perspective types (i = index in `perspectives`; each one an MvpKind in native/model/mvp/, listed
// in the registry native/model/mvp_kind.cpp):
//   mlp, multi-layer-mlp  linear_1 -> GELU(erf) -> linear_2 over the selected tokens of the
//                         hidden states `layers`, concatenated on channels (one token per
//                         vision token: n_tok = n_patches, or n_patches + 1 with the "full" strategy)
//   attention-pool        n_queries learned queries attend over those tokens (K/V projections,
//                         num_heads heads, softmax(Q K^T / sqrt(head_dim)) V), then out_proj:
//                         n_queries tokens
//   face-region           per face box (pixels of the tower input), the mean of the patch
//                         features the box overlaps, then linear_1 -> GELU -> linear_2: one token
//                         per face (zero faces: no tokens)
// Gates: "learned" multiplies the head's output by sigmoid(gate_logits) (per channel), "open" by
// exactly 1, "closed" skips the head entirely (no contribution, no tokens).
// Fusion "gated-sum": the open mlp / multi-layer-mlp heads are summed (they have the global
// head's token count), then the attention-pool and face tokens are appended in perspective order.
// Fusion "concat": every open perspective's tokens, in perspective order.
//
// Weights: used in place from the MVP file on the CPU (stacked group weights are built once at
// load); on a device backend all of them are uploaded once at load, like the base's.
//
// CPU path: the summed MLP heads that read the same input (same layers), the same hidden size and
// weight dtype form a group computed by ONE Backend::mvp_projection (stacked first layers in one
// GEMM, GELU, per-head second GEMMs with gated accumulation); the vision tower runs once for the
// union of all layers.
//
// Thread safety: immutable after load; encode_images may run on any thread.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "loaders/json.h"
#include "loaders/safetensors.h"
#include "model/image_splice.h"
#include "model/llava.h"
#include "model/mvp_kind.h"

namespace emollm {

class EmollmModel {
 public:
  // True when `path` is a llava folder (or its config.json) whose config has an `emollm` object.
  // Never throws.
  static bool is_emollm_folder(const std::string& path);
  // Loads the LLaVA base (LlavaModel::load) and the MVP. Errors: BadConfig naming the field of
  // the emollm section; MalformedFile naming a missing tensor or a wrong shape.
  static std::shared_ptr<EmollmModel> load(const std::string& path, const LlavaLoadOptions& opts = {});
  // From a loaded base, the parsed `emollm` section and the MVP weight store (tests).
  static std::shared_ptr<EmollmModel> from_parts(std::shared_ptr<LlavaModel> base, const JsonValue& section,
                                                 std::shared_ptr<WeightStore> mvp_store, const std::string& config_file);

  const std::shared_ptr<LlavaModel>& base() const { return base_; }
  const LlavaModel& llava() const { return *base_; }
  const std::string& fusion() const { return fusion_; }  // "gated-sum" or "concat"
  const std::vector<MvpPerspective>& perspectives() const { return persp_; }
  int64_t n_embd() const { return base_->n_embd(); }
  int32_t image_token_id() const { return base_->image_token_id(); }
  // The splice of a prompt with images of these token counts (image_token_counts, or the features'
  // tokenCounts): splice_prompt / spliced_length (image_splice.h).
  ImageSplice image_splice(const std::vector<int64_t>& counts) const { return {image_token_id(), image_token_id(), counts}; }
  // Vision tokens each mlp head reads per image (n_patches, + 1 with the "full" strategy).
  int64_t n_vision_tokens() const { return base_->n_image_tokens(); }
  // Decoder positions one image takes when it has `n_faces` face boxes (that fall on the image).
  int64_t n_image_tokens(int64_t n_faces = 0) const;
  // Hidden-state indices the tower computes (the union of all open perspectives' layers, sorted).
  const std::vector<int64_t>& tower_layers() const { return tower_layers_; }
  // The MVP weight file as loaded (the trainer reads its tensors by name).
  const WeightStore& mvp_store() const { return *store_; }

  // Vision tower + MVP for B images: pixels [B, C, S, S] normalised; faces: null or B lists.
  // out: the images' tokens one image after the other ([sum(counts), n_embd()]); counts[b]: image
  // b's token count. Returns false when aborted.
  bool encode_images(const float* pixels, int64_t B, const std::vector<std::vector<FaceBox>>* faces,
                     std::vector<float>* out, std::vector<int64_t>* counts,
                     const std::atomic<bool>* abort = nullptr) const;
  // The same into the caller's out of sum(counts) * n_embd() floats, where counts is what
  // image_token_counts(B, faces) gave the caller to size `out` (the addon passes a JavaScript result
  // array: no vector filled, then copied; no counts computed twice). Throws Internal when the heads
  // give any image another count.
  bool encode_images(const float* pixels, int64_t B, const std::vector<std::vector<FaceBox>>* faces, float* out,
                     const std::vector<int64_t>& counts, const std::atomic<bool>* abort = nullptr) const;
  // The token counts encode_images gives B images with these face boxes (null: none), known before
  // the tower runs: n_image_tokens() of the boxes that cover some patch (face_patches).
  std::vector<int64_t> image_token_counts(int64_t B, const std::vector<std::vector<FaceBox>>* faces) const;
  // The MVP alone, on tower features [B, n_vision_tokens(), tower_layers().size() * C] (the
  // encode() output for tower_layers()).
  void project(const float* tower_feats, int64_t B, const std::vector<std::vector<FaceBox>>* faces,
               std::vector<float>* out, std::vector<int64_t>* counts) const;
  // Face boxes -> the patch indices (row-major over the side x side grid) each covers; boxes that
  // cover no patch (outside the image, zero area) give an empty list. Exposed for tests.
  std::vector<int64_t> face_patches(const FaceBox& box) const;

  EmollmModel() = default;
  EmollmModel(const EmollmModel&) = delete;
  EmollmModel& operator=(const EmollmModel&) = delete;

 private:
  struct Group {  // summed MLP heads computed by one mvp_projection
    std::vector<size_t> heads;          // perspective indices, in order
    std::vector<int64_t> layers;        // the shared input
    int64_t d_in = 0, d_hid = 0;
    DType dtype = DType::F32;
    const void* w1 = nullptr;           // stacked [H * d_hid, d_in]
    const void* w2 = nullptr;           // stacked [H, E, d_hid]
    const float *b1 = nullptr, *b2 = nullptr;
    std::vector<float> gates;           // [H, E]
    const float* gates_placed = nullptr;  // gates in the backend's memory
  };
  std::shared_ptr<LlavaModel> base_;
  std::shared_ptr<WeightStore> store_;
  std::string fusion_ = "gated-sum";
  std::vector<MvpPerspective> persp_;
  std::vector<Group> groups_;
  std::vector<int64_t> tower_layers_;
  std::vector<std::vector<uint8_t>> owned_;      // stacked weights
  std::vector<std::vector<float>> converted_;    // f32 copies of vectors
  BackendWeights weights_;  // the MVP's device copies (empty on the CPU); after base_, freed before it

  // Places the open perspectives' and the groups' weights in the base decoder's backend (load's last step).
  void place_weights();

  Backend& backend() const { return base_->text_model()->backend(); }
  // The MVP on tower features already in backend memory ([B * T, tower_layers().size() * C]).
  // Where project_device writes the images' rows: a vector it resizes, or the caller's memory of
  // the rows of `promised` (image_token_counts(); checked image by image against the heads' counts).
  struct ProjectOut {
    std::vector<float>* vec = nullptr;
    float* data = nullptr;
    const std::vector<int64_t>* promised = nullptr;
  };
  void project_device(const DeviceTensor& tower_feats, int64_t B, const std::vector<std::vector<FaceBox>>* faces,
                      ProjectOut out, std::vector<int64_t>* counts) const;
  // Tower + MVP (both encode_images).
  bool encode_into(const float* pixels, int64_t B, const std::vector<std::vector<FaceBox>>* faces, ProjectOut out,
                   std::vector<int64_t>* counts, const std::atomic<bool>* abort) const;
  // The channels of `layers` from the tower features, concatenated: [rows, layers.size() * C].
  DeviceTensor gather(const DeviceTensor& tower_feats, const std::vector<int64_t>& layers) const;
};

}  // namespace emollm
