// EmoLLM on Qwen2-VL: the Multi-perspective Visual Projection placed around Qwen2-VL's patch
// merger. A qwen2_vl Hugging Face folder whose config.json has an `emollm` section (the schema of
// docs/emollm-config.md) and MVP weights beside it (mvp.heads.<i>.*).
//
// Each perspective reads the merger's input at its `layers`: ln_q of the tower's hidden state at
// that depth (0 = patch embeddings, depth = the last block; negative indices count from the end,
// -1 = the last), every 2x2 group of patches concatenated into one row (4 * embed_dim channels),
// several layers concatenated on channels. So one perspective row = one merged token, and the
// token count and M-RoPE grid of a visual stay those of the base model.
//
// Supported here: mlp and multi-layer-mlp perspectives (linear_1 -> GELU (erf) -> linear_2, gate
// learned / open / closed) fused by "gated-sum" (or "concat" with exactly one open head, which is
// the same). attention-pool and face-region perspectives must be closed (they would change the
// token layout M-RoPE positions depend on); an open one is Unsupported, naming it.
// `emollm init-mvp` on a Qwen2-VL folder writes a global mlp head over layer -1 holding the
// merger's own MLP weights (gate open), so the output equals the base model's.
//
// Weights: in place from the MVP file on the CPU; uploaded once at load on a device backend (with
// the tower's, see qwen2_vision.h).
//
// Thread safety: immutable after load; encode() may run on any thread.
#pragma once
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "model/emollm.h"
#include "model/qwen2_vl.h"

namespace emollm {

class EmollmQwen2VLModel {
 public:
  // True when `path` is a qwen2_vl folder (or its config.json) with an `emollm` object. Never throws.
  static bool is_emollm_qwen2_vl_folder(const std::string& path);
  static std::shared_ptr<EmollmQwen2VLModel> load(const std::string& path, const LlamaLoadOptions& opts = {});

  const std::shared_ptr<Qwen2VLModel>& base() const { return base_; }
  const std::string& fusion() const { return fusion_; }
  const std::vector<MvpPerspective>& perspectives() const { return persp_; }

  // Same contract as Qwen2VLModel::encode, with the MVP in place of the merger's MLP.
  bool encode(const float* patches, const std::vector<GridThw>& grids, std::vector<float>* out,
              const std::atomic<bool>* abort = nullptr) const;
  bool encode(const float* patches, const std::vector<GridThw>& grids, float* out,
              const std::atomic<bool>* abort = nullptr) const;

  EmollmQwen2VLModel() = default;
  EmollmQwen2VLModel(const EmollmQwen2VLModel&) = delete;
  EmollmQwen2VLModel& operator=(const EmollmQwen2VLModel&) = delete;

 private:
  std::shared_ptr<Qwen2VLModel> base_;
  std::shared_ptr<WeightStore> store_;
  std::string fusion_ = "gated-sum";
  std::vector<MvpPerspective> persp_;
  std::vector<int64_t> taps_;  // union of the open heads' layers, sorted
  std::vector<std::vector<float>> converted_;
  BackendWeights weights_;  // the heads' device copies (empty on the CPU); after base_, freed before it
};

}  // namespace emollm
