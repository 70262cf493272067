// Parameter structs of the compute ops, shared by every kernel family (kernels/cpu, kernels/cuda)
// and by the Backend interface (native/core/backend.h): a backend forwards the same struct to
// whichever kernels it runs, so an op's contract is written once. The semantics of each op are
// documented beside its CPU kernel in kernels/cpu/kernels.h.
#pragma once
#include <cstdint>

#include "../base/dtype.h"

namespace emollm {

// ---------------------------------------------------------------- rotary position embedding
enum class RopeLayout {
  RotateHalf,   // Hugging Face: pairs (i, i + rot_dim/2)
  Interleaved,  // GGUF / llama.cpp LLAMA_ROPE_TYPE_NORM and Meta's original: pairs (2i, 2i+1)
};
struct RopeParams {
  int64_t head_dim = 0;
  int64_t rot_dim = 0;        // dims rotated (<= head_dim, even); 0 means head_dim
  float theta = 10000.0f;     // rope_theta / freq_base
  float freq_scale = 1.0f;    // linear scaling: position * freq_scale (1/factor)
  const float* inv_freq = nullptr;  // optional precomputed rot_dim/2 inverse frequencies
                                    // (llama3 scaling); overrides theta when set
  RopeLayout layout = RopeLayout::RotateHalf;
};

// ---------------------------------------------------------------- attention (see kernels.h attention())
struct AttentionParams {
  int64_t n_q = 0, n_kv = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t ldq = 0, ldk = 0, ldv = 0, ldo = 0;
  float scale = 0.0f;  // 0 means 1/sqrt(head_dim)
  bool causal = true;
  int64_t q_pos0 = 0;
  // Element type of K and V (the KV cache): f32, or f16 / bf16 on backends that say so
  // (Backend::supports_kv_dtype): then k / v (or the blocks) point at 16-bit elements, typed
  // float* only to travel, and ldk / ldv count those elements. The CPU kernels take all three
  // (they widen a half row to f32 exactly as they read it); the bf16 bidirectional path and the
  // attention backward take f32 only.
  DType kv_dtype = DType::F32;
  // Paged KV cache (optional): with kv_block_size > 0, kv token j's key row is
  // k_blocks[j / kv_block_size] + (j % kv_block_size) * ldk (values likewise through v_blocks),
  // and the contiguous k / v arguments are not read (may be null). kv_block_size is a multiple
  // of 16. Backends that take it say so (Backend::supports_paged_kv).
  const float* const* k_blocks = nullptr;
  const float* const* v_blocks = nullptr;
  int64_t kv_block_size = 0;
  // Bidirectional attention may round q, k, v and the softmax weights to bf16 for bf16
  // dot-product hardware (f32 softmax and sums): what a model with bf16 weights sets (the CPU's
  // AVX512-BF16 path for long sequences, kernels/cpu/attention_bidir_bf16.cpp). Backends without
  // such a path ignore it.
  bool bf16_products = false;
};

// One attention of a batch (kernels.h attention_batch, Backend::attention_batch).
struct AttentionBatchItem {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  float* out = nullptr;
  AttentionParams p;
};

// ---------------------------------------------------------------- multi-perspective visual projection
struct MvpProjectionParams {
  int64_t tokens = 0, d_in = 0, d_hid = 0, d_out = 0, n_heads = 0;
  int64_t ldx = 0, ldy = 0;
};

// ---------------------------------------------------------------- patch extraction (ViT patch embedding)
// Images [batch, channels, height, width] f32 -> rows [batch * patches_h * patches_w,
// channels * patch * patch]: patches row-major over each image, each row in (channel, ky, kx)
// order, the order of a flattened Conv2d weight [out, channels, patch, patch]. This is the im2col
// of a convolution whose stride equals its kernel; height and width are multiples of patch.
struct PatchParams {
  int64_t batch = 1, channels = 0, height = 0, width = 0, patch = 0;
  int64_t patches_h() const { return patch ? height / patch : 0; }
  int64_t patches_w() const { return patch ? width / patch : 0; }
  int64_t row_elems() const { return channels * patch * patch; }
};

// ---------------------------------------------------------------- convolution and pooling (NHWC)
enum class ConvActivation { None, Relu, LeakyRelu };  // LeakyRelu: x > 0 ? x : alpha * x

struct Conv2dParams {
  int64_t batch = 1;
  int64_t in_h = 0, in_w = 0, in_c = 0;
  int64_t out_h = 0, out_w = 0, out_c = 0;  // depthwise / pooling: out_c == in_c
  int64_t k_h = 1, k_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_left = 0;
  ConvActivation act = ConvActivation::None;  // convolutions only, applied after the bias
  float alpha = 0.1f;
};

// ---------------------------------------------------------------- AdamW (decoupled weight decay)
// One optimizer step over n parameters, as the MVP trainer applies it (native/train):
//   g = grad * clip;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   value -= decay * value;  value -= lr * (m / bc1) / (sqrt(v / bc2) + eps)
// with m, v, value, g in f32 and the bias-corrected quotient in double (bc1 = 1 - b1^t,
// bc2 = 1 - b2^t for step t, decay = lr * weight_decay or 0, clip = the global-norm factor).
struct AdamWStep {
  double lr = 0.0, clip = 1.0, bc1 = 1.0, bc2 = 1.0, eps = 1e-8;
  float b1 = 0.9f, b2 = 0.999f, decay = 0.0f;
};

}  // namespace emollm
