// Qwen2-VL's vision tower (transformers' Qwen2VisionTransformerPretrainedModel), llama2.c style:
//
//   patches [N, C * Tp * P * P] (the image processor's flattened temporal patches, already in the
//   2x2-merge order) -> patch_embed (a Conv3d with stride = kernel, no bias: one GEMM)
//   -> depth pre-LN blocks:  x += proj(attention(rope2d(qkv(norm1(x)))))   (bidirectional within
//                                                                           each temporal slice)
//                            x += fc2(act(fc1(norm2(x))))
//   -> merger: ln_q, every 2x2 group of consecutive rows concatenated -> Linear -> GELU (erf) -> Linear
//   -> [N / merge^2, hidden_size] features for the decoder.
//
// 2-D RoPE: each head's first half of frequency pairs turns with the patch's row, the second
// half with its column (VisionRotaryEmbedding(head_dim / 2), rotate-half layout); the plain rope
// kernel runs twice with the other half's frequencies zeroed. Attention is segmented as
// transformers' cu_seqlens: one segment per temporal slice (grid_h * grid_w patches) of each
// image or video.
//
// Weights are used in place from the mapped file on the CPU; on a device backend the owning model
// calls place_weights() at load, which uploads them once (the RoPE frequency tables stay on the
// host: RopeParams::inv_freq is a host parameter). Immutable after load; encode() may run on any
// thread (the backend's pool serialises kernels).
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/backend_weights.h"
#include "core/device_tensor.h"
#include "loaders/gguf.h"
#include "loaders/hf_config.h"
#include "loaders/weight_store.h"
#include "model/llama.h"

namespace emollm {

// One visual input's grid of patches: temporal slices x rows x columns (before merging).
struct GridThw {
  int64_t t = 1, h = 0, w = 0;
  int64_t n_patches() const { return t * h * w; }
};

struct Qwen2VisionBlock {
  const float *norm1_w = nullptr, *norm1_b = nullptr, *norm2_w = nullptr, *norm2_b = nullptr;
  LlamaWeight qkv, proj, fc1, fc2;
  const float *qkv_b = nullptr, *proj_b = nullptr, *fc1_b = nullptr, *fc2_b = nullptr;
};

class Qwen2VisionModel {
 public:
  // Tensors under `prefix` ("visual." or "model.visual."). Errors: MalformedFile naming a missing
  // tensor or a wrong shape; Unsupported for an activation we do not run. `store` must outlive it.
  static std::unique_ptr<Qwen2VisionModel> from_hf(const WeightStore& store, const Qwen2VisionConfig& config,
                                                   const std::string& prefix, const std::string& config_file);

  // A llama.cpp mmproj GGUF (clip.projector_type "qwen2vl_merger"): clip.vision.{embedding_length,
  // block_count, attention.head_count, feed_forward_length, patch_size, spatial_merge_size},
  // clip.use_gelu (false: quick_gelu); tensors v.patch_embd.weight + v.patch_embd.weight.1 (the
  // Conv3d's two temporal slices), v.blk.N.{ln1, ln2, attn_q, attn_k, attn_v, attn_out, ffn_up,
  // ffn_down}.{weight,bias}, v.post_ln.* (the merger's ln_q), mm.0.*, mm.2.*. The patch kernel and
  // the q/k/v rows are re-joined once at load (a copy); the rest is used in place.
  static std::unique_ptr<Qwen2VisionModel> from_gguf(const GgufFile& file);

  const Qwen2VisionConfig& config() const { return c_; }
  int64_t patch_dim() const { return c_.in_channels * c_.temporal_patch_size * c_.patch_size * c_.patch_size; }
  int64_t merge_unit() const { return c_.spatial_merge_size * c_.spatial_merge_size; }
  int64_t out_dim() const { return c_.hidden_size; }

  // patches: [sum n_patches, patch_dim()] for `grids` in order; out: [sum n_patches / merge_unit(),
  // out_dim()]. InvalidArgument when a grid's h or w is not a multiple of the merge size. Returns
  // false when aborted (checked between blocks).
  bool encode(Backend& be, const float* patches, const std::vector<GridThw>& grids, float* out,
              const std::atomic<bool>* abort = nullptr) const;

  // The merger's input at chosen depths (EmoLLM's perspectives read "around the patch merger"):
  // for each hidden-state index in `layers` (0 = patch embeddings, l = output of block l, depth =
  // the last), ln_q of that hidden state, each merge_unit() consecutive rows as one row:
  // tapped[k] = [N / merge_unit(), merge_unit() * embed_dim]. Only the blocks up to the deepest
  // index run. InvalidArgument for an index outside [0, depth].
  bool merger_inputs(Backend& be, const float* patches, const std::vector<GridThw>& grids,
                     const std::vector<int64_t>& layers, std::vector<std::vector<float>>* tapped,
                     const std::atomic<bool>* abort = nullptr) const;
  // The same with the taps in the backend's memory (patches stay host memory).
  bool merger_inputs_device(Backend& be, const float* patches, const std::vector<GridThw>& grids,
                            const std::vector<int64_t>& layers, std::vector<DeviceTensor>* tapped,
                            const std::atomic<bool>* abort = nullptr) const;
  // The merger's MLP alone (mlp.0 -> GELU -> mlp.2) on merger_inputs() rows; out [rows, out_dim()];
  // merged and out in the backend's memory.
  void merger_mlp(Backend& be, const float* merged, int64_t rows, float* out) const;
  // depth (number of blocks)
  int64_t depth() const { return int64_t(blocks_.size()); }

  // Puts the weights in `be`'s memory, once, at load (nothing to do on the CPU; on a device,
  // uploads and repoints them). The encode calls then take only `be` (InvalidArgument otherwise).
  void place_weights(Backend& be);
  const BackendWeights& placed() const { return weights_; }

  // The (row, column) rotary position of every patch, in the processor's merge order.
  static std::vector<std::array<int32_t, 2>> patch_positions(const std::vector<GridThw>& grids, int64_t merge);

  Qwen2VisionModel() = default;
  Qwen2VisionModel(const Qwen2VisionModel&) = delete;
  Qwen2VisionModel& operator=(const Qwen2VisionModel&) = delete;

 private:
  Qwen2VisionConfig c_;
  LlamaWeight patch_embd_;
  std::vector<Qwen2VisionBlock> blocks_;
  const float *ln_q_w_ = nullptr, *ln_q_b_ = nullptr;
  LlamaWeight mlp0_, mlp2_;
  const float *mlp0_b_ = nullptr, *mlp2_b_ = nullptr;
  std::vector<float> inv_freq_h_, inv_freq_w_;  // head_dim/2 entries each, the other half zeroed
  // The tower up to the deepest of `layers`; tapped[k] = ln_q(hidden state layers[k]).
  // Activations and taps in the backend's memory.
  bool forward(Backend& be, const float* patches, const std::vector<GridThw>& grids, const std::vector<int64_t>& layers,
               std::vector<DeviceTensor>* tapped, const std::atomic<bool>* abort) const;
  std::vector<std::vector<float>> converted_;
  std::vector<std::vector<uint8_t>> joined_;  // GGUF: re-joined patch kernel / qkv rows
  BackendWeights weights_;                    // the device copies (empty on the CPU)
};

}  // namespace emollm
