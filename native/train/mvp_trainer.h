// Training EmoLLM's Multi-perspective Visual Projection (MVP) with the language model and the
// vision tower frozen (issue 16), the decoder on the CPU or on a device backend (below).
//
// One sample = a token sequence (the chat prompt with the image token standing once per image,
// or already expanded, followed by the answer tokens) + the frozen vision tower's features of its
// images (tower_features(), computed once per image and cached by the caller). The loss is the
// mean cross-entropy of the answer tokens. accumulate() runs the forward pass
//   tower features -> MVP heads (f32 master weights) -> image-token splice -> frozen LLaMA decoder
//   (activations kept per layer, or recomputed per layer in the backward) -> final norm -> logits
//   of the answer positions -> loss
// and the backward pass through the same chain (kernels/cpu/backward.h), adding the gradients of
// the trainable MVP parameters only. step() applies them: global-norm clipping, AdamW (decoupled
// weight decay on matrices only), learning rate with linear warmup + cosine decay.
//
// Trainable perspectives: mlp / multi-layer-mlp heads (linear_1, GELU, linear_2), attention-pool
// heads (learned queries, k/v projections, non-causal multi-head attention, out_proj) and
// face-region heads (per face box of the sample, the mean of the patch features it covers, then
// linear_1, GELU, linear_2: one token per face), each with gate logits when its gate is "learned",
// fused by gated-sum or concat exactly as EmollmModel::project lays out the image tokens (an
// image's token count then depends on its faces). Every open perspective takes part in the forward
// pass (those not in `trainable` are kept frozen); a kind registered later is refused with
// Unsupported.
//
// Where it runs: on a model whose backend uses host memory (the CPU), the decoder runs on the CPU
// kernels with the trainer's own pool. On a device backend (CUDA, the strict emulated device of
// the tests) the frozen decoder's forward (the inference ops) and backward (Backend's training
// ops) run on the backend, on the weights already there (mvp_trainer_device.cpp): the image rows
// of the MVP heads go up, the loss and the image rows' gradient come down. The MVP heads and the
// optimizer stay on the host in both cases (few products next to the decoder's, but on a GPU
// their host time may dominate a step: moving them is the next step; docs/training.md).
// Deterministic: for a given thread count (and device), the same samples give bit-identical
// parameters (every reduction has one fixed order).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/thread_pool.h"
#include "core/backend.h"
#include "model/emollm.h"

namespace emollm {

struct MvpTrainOptions {
  std::vector<std::string> trainable;  // perspective names; empty = every open mlp perspective
  double lr = 1e-3;
  double min_lr_ratio = 0.1;  // cosine decays to lr * min_lr_ratio
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;  // optimizer steps of the schedule
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;
  double clip_norm = 1.0;  // 0 = no clipping
  int threads = 1;
  // Decoder activations for the backward: kept for every layer (Off), or recomputed layer by
  // layer from each layer's input (On; the last layer's are still there from the forward pass),
  // identical gradients either way. Auto keeps the activations of as many of the last layers as
  // fit in recompute_budget_bytes for the sample and recomputes the others.
  enum class Recompute { Auto, Off, On };
  Recompute recompute = Recompute::Auto;
  int64_t recompute_budget_bytes = int64_t(1) << 30;
};

// One trainable tensor: f32 master value, gradient and AdamW moments.
struct MvpParam {
  std::string name;  // the safetensors name, e.g. mvp.heads.0.linear_1.weight
  std::vector<int64_t> shape;
  bool decay = false;  // weight decay (matrices)
  std::vector<float> value, grad, m, v;
};

struct MvpTrainSample {
  const int32_t* tokens = nullptr;  // prompt + answer; the image token once per image or expanded
  int64_t n_tokens = 0;
  int64_t n_answer = 0;  // the last n_answer tokens are the targets
  const float* tower_feats = nullptr;  // [n_images, n_vision_tokens, tower_feature_dim]
  int64_t n_images = 0;
  // Face boxes of each image in pixels of the tower input (null: no faces), as
  // EmollmModel::encode_images takes them: the face-region heads' input.
  const std::vector<std::vector<FaceBox>>* faces = nullptr;
};

// Wall seconds spent in each phase of accumulate() / step() since the trainer was made (for
// profiling: bench:train reports them per sample). Sums of steady-clock intervals.
struct MvpPhaseTimes {
  double mvp_forward = 0;          // MVP heads forward + image-token splice + embeddings
  double decoder_forward = 0;      // the frozen decoder's layers, first pass
  double lm_head = 0;              // final norm, LM head on the answer rows, cross-entropy (+ its backward)
  double recompute = 0;            // the decoder layers again in the backward (--recompute)
  double gemm_backward = 0;        // dX = dY W of the seven decoder projections
  double attention_backward = 0;   // attention_backward (probabilities recomputed)
  double norm_backward = 0;        // the two RMSNorm backwards per layer (residual adds included)
  double elementwise_backward = 0; // SwiGLU and RoPE backwards
  double mvp_backward = 0;         // splice backward + MVP heads' gradients
  double optimizer = 0;            // step(): clipping + AdamW
};

struct MvpStepStats {
  double lr = 0, grad_norm = 0;
  int64_t step = 0;  // optimizer steps done after this one
};

class MvpTrainer {
 public:
  // Throws Unsupported for an open perspective of a kind the trainer has no backward for,
  // InvalidArgument for a `trainable` name that is no open perspective, or when nothing would be
  // trained.
  MvpTrainer(std::shared_ptr<const EmollmModel> model, const MvpTrainOptions& opts);

  const EmollmModel& model() const { return *model_; }
  // Floats per vision token of tower_features(): tower_layers().size() * vision hidden size.
  int64_t tower_feature_dim() const;
  // The frozen vision tower on B normalised images [B, 3, S, S] -> [B, n_vision_tokens, dim].
  void tower_features(const float* pixels, int64_t B, std::vector<float>* out) const;
  // The same into the caller's B * n_vision_tokens() * tower_feature_dim() floats (the addon passes a
  // JavaScript result array: no vector filled, then copied).
  void tower_features(const float* pixels, int64_t B, float* out) const;

  // Forward + backward of one sample: adds scale * d(mean answer loss) to the gradients.
  // Returns the sample's mean answer cross-entropy.
  double accumulate(const MvpTrainSample& s, float scale);
  // The sample's mean answer cross-entropy (forward only).
  double loss(const MvpTrainSample& s);
  // Clips, applies AdamW at the scheduled learning rate, zeroes the gradients.
  MvpStepStats step();
  double lr_at(int64_t step) const;

  std::vector<MvpParam>& params() { return params_; }
  const std::vector<MvpParam>& params() const { return params_; }
  int64_t steps_done() const { return step_; }
  // Decoder positions of the last sample run (prompt + image + answer tokens; throughput figures).
  int64_t last_positions() const { return last_positions_; }
  void set_steps_done(int64_t s) { step_ = s; }
  const MvpPhaseTimes& phase_times() const { return times_; }
  void zero_grad();

 private:
  // The tensors of a head: mlp types linear_1 / linear_2 (+ biases); attention-pool queries,
  // k_proj, v_proj, out_proj (+ biases); gate_logits when the gate is learned.
  enum Part { W1, B1, W2, B2, GATE, QUERIES, WK, BK, WV, BV, WO, BO, N_PARTS };
  struct Tensor {
    int idx = -1;               // index into params_ when trainable
    std::vector<float> frozen;  // f32 copy when frozen (empty: absent)
  };
  struct Head {  // one open perspective
    size_t persp = 0;
    bool pool = false;           // attention-pool
    bool face = false;           // face-region (else mlp / multi-layer-mlp)
    bool summed = false;         // gated-sum mlp head: shares the block of the first one
    std::vector<int64_t> slots;  // positions of its layers in tower_layers()
    int64_t d_in = 0, d_hid = 0, n_queries = 0, num_heads = 1, max_faces = 0;
    bool trainable = false, learned_gate = false;
    Tensor t[N_PARTS];
  };

  double run(const MvpTrainSample& s, float scale, bool backward);
  // The decoder part of run(), on the CPU kernels or on a device backend (mvp_trainer_device.cpp):
  // ids of the expanded sequence (-1 = image row), the image rows [rows, E] in order, the answer
  // targets (the last targets.size() tokens); returns the mean answer loss and, when backward,
  // writes the image rows' gradient to dfeat [rows, E].
  double decoder_on_cpu(const std::vector<int32_t>& ids, const std::vector<int64_t>& img_pos,
                        const std::vector<float>& feats, const std::vector<int32_t>& targets, float scale,
                        bool backward, std::vector<float>* dfeat);
  double decoder_on_backend(const std::vector<int32_t>& ids, const std::vector<int64_t>& img_pos,
                            const std::vector<float>& feats, const std::vector<int32_t>& targets, float scale,
                            bool backward, std::vector<float>* dfeat);
  const float* value(const Head& h, Part p) const;  // the trainable value, the frozen copy, or null
  float* grad(const Head& h, Part p);               // null when frozen or absent
  int64_t last_positions_ = 0;
  MvpPhaseTimes times_;
  // Decoder activations for the backward, reused from sample to sample (at most the recompute
  // budget plus each layer's input stay allocated): fresh buffers every sample cost page faults
  // and zero-filling of up to a GiB.
  struct LayerActs {
    std::vector<float> q, k, v, att, x_mid, gate, up;
    std::vector<float> lse;  // attention's log-sum-exp per (position, head), read by its backward
  };
  std::vector<LayerActs> kept_;           // layers [first_kept, n_layer)
  LayerActs work_;                        // the layer being run when its activations are not kept
  std::vector<std::vector<float>> x_in_;  // each layer's input

  std::shared_ptr<const EmollmModel> model_;
  MvpTrainOptions opts_;
  // The decoder's backend is a device (uses_host_memory() false): decoder_on_backend runs, on
  // this context's stream and workspace.
  bool on_device_ = false;
  std::unique_ptr<BackendContext> device_ctx_;
  std::unique_ptr<ThreadPool> pool_;
  std::vector<Head> heads_;
  std::vector<MvpParam> params_;
  int64_t step_ = 0;
};

}  // namespace emollm
