// The CLIP ViT vision tower (Hugging Face CLIPVisionModel / llama.cpp "clip" mmproj layout), as
// LLaVA uses it: patch embedding (a conv with stride = kernel = patch, no bias, computed as an
// im2col GEMM), class embedding, learned position embeddings, pre_layrnorm, then pre-LN encoder
// layers:
//   x += out_proj(attention(q_proj, k_proj, v_proj of layer_norm1(x)))   (bidirectional, biases)
//   x += fc2(act(fc1(layer_norm2(x))))                                    (act: quick_gelu or gelu)
//
// Hidden states follow transformers' CLIPVisionTransformer(output_hidden_states=True): there are
// n_layer + 1 of them; hidden_states[0] is the embeddings output after pre_layrnorm and
// hidden_states[i] is the output of encoder layer i (post_layernorm is never applied to them, and
// LLaVA does not use the pooled output). encode() computes only the layers up to the deepest
// hidden state asked for.
//
// Weights are used in place from the mapped file (f32, f16, bf16; q8_0/q4_0 where the row length
// allows); small vectors and the embeddings that are not f32 are converted once at load. The
// owning model then calls place_weights(backend): on the CPU that changes nothing (zero-copy), on
// a device every weight is uploaded once and the weight fields point at the copies
// (LlamaWeight::host keeps the mmap). The forward pass calls only the Backend interface (patch
// extraction, embedding adds and residuals included: no host-side arithmetic on activations).
// A ClipVisionModel is immutable after load; encode() may run on any thread.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/backend_weights.h"
#include "loaders/gguf.h"
#include "loaders/hf_config.h"
#include "loaders/weight_store.h"
#include "model/kept_block.h"
#include "model/llama.h"

namespace emollm {

struct ClipHparams {
  int64_t image_size = 0;
  int64_t patch_size = 0;
  int64_t n_channels = 3;
  int64_t n_embd = 0;
  int64_t n_ff = 0;
  int64_t n_layer = 0;  // encoder layers present (a llava-1.5 mmproj GGUF stores one fewer than the tower had)
  int64_t n_head = 0;
  float eps = 1e-5f;
  std::string act = "quick_gelu";  // "quick_gelu" or "gelu" (erf)
  std::vector<float> image_mean, image_std;  // from the GGUF; empty when the file does not say
  int64_t n_side() const { return patch_size > 0 ? image_size / patch_size : 0; }
  int64_t n_patches() const { return n_side() * n_side(); }
  int64_t n_pos() const { return n_patches() + 1; }  // + CLS
  int64_t head_dim() const { return n_head > 0 ? n_embd / n_head : 0; }
};

struct ClipLayer {
  const float *ln1_w = nullptr, *ln1_b = nullptr;
  LlamaWeight wq, wk, wv, wo;
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr, *bo = nullptr;
  const float *ln2_w = nullptr, *ln2_b = nullptr;
  LlamaWeight fc1, fc2;
  const float *b1 = nullptr, *b2 = nullptr;
};

class ClipVisionModel {
 public:
  // Hugging Face CLIPVisionModel tensors under `prefix`, e.g. "vision_tower.vision_model." or
  // "vision_tower." (the tiny llava-hf checkpoint). Errors: MalformedFile naming a missing tensor
  // or a wrong shape; Unsupported for hidden_act other than quick_gelu/gelu or a dtype we cannot
  // compute with. The store must outlive the model.
  static std::unique_ptr<ClipVisionModel> from_hf(const WeightStore& store, const ClipVisionConfig& config,
                                                  const std::string& prefix, const std::string& config_file);
  // A llama.cpp mmproj GGUF (general.architecture "clip", clip.has_vision_encoder): keys
  // clip.vision.{image_size, patch_size, embedding_length, feed_forward_length, block_count,
  // attention.head_count, attention.layer_norm_epsilon, image_mean, image_std}, clip.use_gelu;
  // tensors v.patch_embd.weight, v.class_embd, v.position_embd.weight, v.pre_ln.*, v.blk.N.{ln1,
  // ln2, attn_q, attn_k, attn_v, attn_out, ffn_up, ffn_down}.*. Which of ffn_up/ffn_down is fc1 is
  // decided by shape (the legacy converter named fc1 "ffn_down", the newer one "ffn_up"), as
  // llama.cpp does. The file must outlive the model.
  static std::unique_ptr<ClipVisionModel> from_gguf(const GgufFile& file);

  const ClipHparams& hparams() const { return hp_; }

  // Encodes B images in one pass (every GEMM runs over all B * n_pos tokens; attention per
  // image). pixels: [B, n_channels, image_size, image_size] f32, already normalised.
  // `layers`: hidden-state indices in [0, n_layer] (callers resolve negative ones with
  // resolve_layer()); their rows are concatenated on channels, in the order given. drop_cls
  // skips token 0 (LLaVA's "default" strategy). out: [B, n_tok, layers.size() * n_embd] with
  // n_tok = n_patches (drop_cls) or n_pos. Returns false (out unspecified) when *abort becomes
  // true (checked between layers).
  // pixels and out are host memory here; encode_device() writes `out` in backend memory instead
  // (the activations live in the backend's memory either way).
  bool encode(Backend& be, const float* pixels, int64_t B, const std::vector<int64_t>& layers, bool drop_cls,
              float* out, const std::atomic<bool>* abort = nullptr) const;
  bool encode_device(Backend& be, const float* pixels, int64_t B, const std::vector<int64_t>& layers, bool drop_cls,
                     float* out_device, const std::atomic<bool>* abort = nullptr) const;

  // hidden_states index of `layer` (negative counts from the end, -1 = the last layer's output)
  // for a tower of `n_layer` layers; InvalidArgument when outside [-(n_layer+1), n_layer].
  static int64_t resolve_layer(int64_t layer, int64_t n_layer);

  // Puts the weights in `be`'s memory, once, at load (the owning model calls it with its decoder's
  // backend): nothing to do on the CPU; on a device, uploads and repoints the weight fields.
  // encode() then takes only `be` (InvalidArgument on another device).
  void place_weights(Backend& be);
  const BackendWeights& placed() const { return weights_; }

  // Whether encode_device keeps its activations between calls (default: on, unless
  // EMOLLM_VISION_KEEP_ACTIVATIONS=0), for every tower of the process; for A/B in one process.
  static void set_keep_activations(bool on);

  // ---- weights (read-only; in the placed backend's memory, see place_weights)
  LlamaWeight patch_embd;          // [n_embd, n_channels * patch * patch] (the conv kernel, flattened c, ky, kx)
  const float* patch_bias = nullptr;  // absent in CLIP
  const float* class_embd = nullptr;  // [n_embd]
  const float* pos_embd = nullptr;    // [n_pos, n_embd]
  const float *pre_ln_w = nullptr, *pre_ln_b = nullptr;
  std::vector<ClipLayer> layers;

  ClipVisionModel() = default;
  ClipVisionModel(const ClipVisionModel&) = delete;
  ClipVisionModel& operator=(const ClipVisionModel&) = delete;

 private:
  friend struct ClipLoader;
  ClipHparams hp_;
  std::vector<std::vector<float>> converted_;
  BackendWeights weights_;  // the device copies (empty on the CPU)
  // The activations of encode_device on a backend that computes on host memory, kept between
  // calls: a fresh allocation per call (x, q, k, v, the MLP's hidden rows: ~26 MiB an image for
  // CLIP-L/336) is faulted in again on every call, thousands of first-touch faults a pass (~8% of
  // a LLaVA vision pass's CPU time in a VM). One call at a time uses them; a concurrent call
  // allocates its own. EMOLLM_VISION_KEEP_ACTIVATIONS=0: a fresh allocation per call (a user
  // setting, docs/environment.md: the memory is given back after every call).
  // Larger passes (batches of more than ~9 CLIP-L/336 images) allocate per call rather than keep
  // that much memory resident between calls.
  static constexpr size_t kMaxKeptActivationBytes = size_t(256) << 20;
  mutable KeptBlock kept_{kMaxKeptActivationBytes};
};

}  // namespace emollm
