// The CLIP ViT vision tower: loading (HF safetensors names or llama.cpp mmproj GGUF names) and the
// batched forward pass. See clip.h for the contracts.
#include "model/clip.h"

#include <algorithm>
#include <cstring>

#include "base/arena.h"
#include "base/env_switch.h"
#include "base/error.h"
#include "core/device_tensor.h"
#include "core/tensor.h"
#include "loaders/weight_reader.h"

namespace emollm {

struct ClipLoader {
  ClipVisionModel& m;
  const WeightStore& ws;

  [[noreturn]] void malformed(const std::string& msg) const { throw Error(ErrorCode::MalformedFile, msg, ws.source()); }
  WeightReader reader{ws, "the vision tower's hyperparameters"};  // the typed errors of a bad tensor

  // A weight matrix rows x cols; `shape` is the stored shape (4-D for the patch embedding).
  LlamaWeight mat_shaped(const std::string& name, int64_t rows, int64_t cols, const std::vector<int64_t>& shape) const {
    const TensorInfo& t = reader.matrix(name, rows, cols, shape);
    return LlamaWeight{t.data, t.dtype, rows, cols, t.data};
  }
  LlamaWeight mat(const std::string& name, int64_t rows, int64_t cols) const { return mat_shaped(name, rows, cols, {rows, cols}); }
  // f32 data of a tensor of `shape` (converted once when stored in another dtype).
  const float* floats(const std::string& name, const std::vector<int64_t>& shape) const {
    return reader.floats(name, shape, m.converted_);
  }
  const float* vec(const std::string& name, int64_t n) const { return floats(name, {n}); }

  void check_hparams(ErrorCode code) const {
    const ClipHparams& h = m.hp_;
    auto bad = [&](const std::string& msg) { throw Error(code, "invalid vision hyperparameters: " + msg, ws.source()); };
    if (h.image_size <= 0 || h.patch_size <= 0 || h.n_channels <= 0 || h.n_embd <= 0 || h.n_ff <= 0 || h.n_layer < 0 ||
        h.n_head <= 0)
      bad("sizes must be positive");
    if (h.image_size % h.patch_size != 0)
      bad("image_size " + std::to_string(h.image_size) + " is not a multiple of patch_size " + std::to_string(h.patch_size));
    if (h.n_embd % h.n_head != 0)
      bad("hidden size " + std::to_string(h.n_embd) + " is not a multiple of the head count " + std::to_string(h.n_head));
    if (h.image_size > 8192 || h.patch_size > 1024 || h.n_channels > 16) bad("image geometry too large");
    if (!(h.eps >= 0)) bad("layer norm epsilon must be >= 0");
    if (h.act != "quick_gelu" && h.act != "gelu")
      throw Error(ErrorCode::Unsupported, "vision hidden_act \"" + h.act + "\" is not supported (quick_gelu, gelu)", ws.source());
  }

  void embeddings(const std::string& patch, const std::string& cls, const std::string& pos, const std::string& pre_w,
                  const std::string& pre_b) {
    const ClipHparams& h = m.hp_;
    const int64_t E = h.n_embd, p = h.patch_size, C = h.n_channels;
    m.patch_embd = mat_shaped(patch, E, C * p * p, {E, C, p, p});
    m.class_embd = vec(cls, E);
    m.pos_embd = floats(pos, {h.n_pos(), E});
    m.pre_ln_w = vec(pre_w, E);
    m.pre_ln_b = vec(pre_b, E);
  }
};

int64_t ClipVisionModel::resolve_layer(int64_t layer, int64_t n_layer) {
  const int64_t idx = layer < 0 ? n_layer + 1 + layer : layer;
  if (idx < 0 || idx > n_layer)
    throw Error(ErrorCode::InvalidArgument, "vision feature layer " + std::to_string(layer) + " is outside the " +
                                                std::to_string(n_layer + 1) + " hidden states of a " +
                                                std::to_string(n_layer) + "-layer vision tower");
  return idx;
}

std::unique_ptr<ClipVisionModel> ClipVisionModel::from_hf(const WeightStore& store, const ClipVisionConfig& c,
                                                          const std::string& prefix, const std::string& config_file) {
  auto m = std::make_unique<ClipVisionModel>();
  ClipHparams& h = m->hp_;
  h.image_size = c.image_size;
  h.patch_size = c.patch_size;
  h.n_channels = c.num_channels;
  h.n_embd = c.hidden_size;
  h.n_ff = c.intermediate_size;
  h.n_layer = c.num_hidden_layers;
  h.n_head = c.num_attention_heads;
  h.eps = float(c.layer_norm_eps);
  h.act = c.hidden_act;
  ClipLoader L{*m, store};
  try {
    L.check_hparams(ErrorCode::BadConfig);
  } catch (const Error& e) {
    throw Error(e.code(), e.detail(), config_file);
  }
  const std::string& P = prefix;
  L.embeddings(P + "embeddings.patch_embedding.weight", P + "embeddings.class_embedding",
               P + "embeddings.position_embedding.weight", P + "pre_layrnorm.weight", P + "pre_layrnorm.bias");
  const int64_t E = h.n_embd, F = h.n_ff;
  for (int64_t i = 0; i < h.n_layer; ++i) {
    const std::string p = P + "encoder.layers." + std::to_string(i) + ".";
    ClipLayer l;
    l.ln1_w = L.vec(p + "layer_norm1.weight", E);
    l.ln1_b = L.vec(p + "layer_norm1.bias", E);
    l.wq = L.mat(p + "self_attn.q_proj.weight", E, E);
    l.wk = L.mat(p + "self_attn.k_proj.weight", E, E);
    l.wv = L.mat(p + "self_attn.v_proj.weight", E, E);
    l.wo = L.mat(p + "self_attn.out_proj.weight", E, E);
    l.bq = L.vec(p + "self_attn.q_proj.bias", E);
    l.bk = L.vec(p + "self_attn.k_proj.bias", E);
    l.bv = L.vec(p + "self_attn.v_proj.bias", E);
    l.bo = L.vec(p + "self_attn.out_proj.bias", E);
    l.ln2_w = L.vec(p + "layer_norm2.weight", E);
    l.ln2_b = L.vec(p + "layer_norm2.bias", E);
    l.fc1 = L.mat(p + "mlp.fc1.weight", F, E);
    l.b1 = L.vec(p + "mlp.fc1.bias", F);
    l.fc2 = L.mat(p + "mlp.fc2.weight", E, F);
    l.b2 = L.vec(p + "mlp.fc2.bias", E);
    m->layers.push_back(l);
  }
  return m;
}

std::unique_ptr<ClipVisionModel> ClipVisionModel::from_gguf(const GgufFile& f) {
  const std::string arch = f.get_string_or("general.architecture", "");
  if (arch != "clip")
    throw Error(ErrorCode::Unsupported, "mmproj architecture \"" + arch + "\" is not supported (expected \"clip\")", f.source());
  if (!f.get_bool_or("clip.has_vision_encoder", true))
    throw Error(ErrorCode::Unsupported, "mmproj file has no vision encoder", f.source());
  auto m = std::make_unique<ClipVisionModel>();
  ClipHparams& h = m->hp_;
  const std::string v = "clip.vision.";
  h.image_size = f.get_u32(v + "image_size");
  h.patch_size = f.get_u32(v + "patch_size");
  h.n_embd = f.get_u32(v + "embedding_length");
  h.n_ff = f.get_u32(v + "feed_forward_length");
  h.n_layer = f.get_u32(v + "block_count");
  h.n_head = f.get_u32(v + "attention.head_count");
  h.eps = f.get_f32_or(v + "attention.layer_norm_epsilon", 1e-5f);
  h.act = f.get_bool_or("clip.use_gelu", false) ? "gelu" : "quick_gelu";
  if (f.get_bool_or("clip.use_silu", false))
    throw Error(ErrorCode::Unsupported, "mmproj vision tower with SiLU activation is not supported", f.source());
  if (f.has(v + "image_mean")) h.image_mean = f.get_f32_array(v + "image_mean");
  if (f.has(v + "image_std")) h.image_std = f.get_f32_array(v + "image_std");
  if ((!h.image_mean.empty() && int64_t(h.image_mean.size()) != h.n_channels) ||
      (!h.image_std.empty() && int64_t(h.image_std.size()) != h.n_channels))
    throw Error(ErrorCode::MalformedFile, "clip.vision.image_mean/image_std must have one value per channel", f.source());
  ClipLoader L{*m, f};
  L.check_hparams(ErrorCode::MalformedFile);
  const WeightStore& fw = f;  // tensor lookup (GgufFile::find looks up metadata keys)
  const std::string cls = fw.find("v.class_embd") ? "v.class_embd" : "v.class_embd.weight";
  L.embeddings("v.patch_embd.weight", cls, "v.position_embd.weight", "v.pre_ln.weight", "v.pre_ln.bias");
  if (fw.find("v.patch_embd.bias")) m->patch_bias = L.vec("v.patch_embd.bias", h.n_embd);
  const int64_t E = h.n_embd, F = h.n_ff;
  for (int64_t i = 0; i < h.n_layer; ++i) {
    const std::string p = "v.blk." + std::to_string(i) + ".";
    ClipLayer l;
    l.ln1_w = L.vec(p + "ln1.weight", E);
    l.ln1_b = L.vec(p + "ln1.bias", E);
    l.wq = L.mat(p + "attn_q.weight", E, E);
    l.wk = L.mat(p + "attn_k.weight", E, E);
    l.wv = L.mat(p + "attn_v.weight", E, E);
    l.wo = L.mat(p + "attn_out.weight", E, E);
    l.bq = L.vec(p + "attn_q.bias", E);
    l.bk = L.vec(p + "attn_k.bias", E);
    l.bv = L.vec(p + "attn_v.bias", E);
    l.bo = L.vec(p + "attn_out.bias", E);
    l.ln2_w = L.vec(p + "ln2.weight", E);
    l.ln2_b = L.vec(p + "ln2.bias", E);
    // fc1 is [F, E] (reads the hidden size), fc2 is [E, F]. The legacy converter stored fc1 as
    // "ffn_down"; gguf-py's mapping stores it as "ffn_up". Decide by shape, as llama.cpp does
    // (when F == E the names cannot tell, and llama.cpp assumes the legacy naming too).
    const TensorInfo& up = f.get(p + "ffn_up.weight");
    const bool legacy = !(up.shape.size() == 2 && up.shape[1] == E && up.shape[0] == F) || F == E;
    const std::string n1 = legacy ? "ffn_down" : "ffn_up", n2 = legacy ? "ffn_up" : "ffn_down";
    l.fc1 = L.mat(p + n1 + ".weight", F, E);
    l.b1 = L.vec(p + n1 + ".bias", F);
    l.fc2 = L.mat(p + n2 + ".weight", E, F);
    l.b2 = L.vec(p + n2 + ".bias", E);
    m->layers.push_back(l);
  }
  return m;
}

void ClipVisionModel::place_weights(Backend& be) {
  BackendWeights& w = weights_;
  w.begin(be);
  const int64_t E = hp_.n_embd, F = hp_.n_ff;
  // Every product of the tower has hundreds of rows (the image's tokens): its matrices may be kept
  // in the backend's many-row layout (the CPU's bf16 GEMM panels).
  const GemmRows many = GemmRows::Many;
  w.place_gemm_matrix(patch_embd, many);
  patch_bias = w.place(patch_bias, E);
  class_embd = w.place(class_embd, E);
  pos_embd = w.place(pos_embd, hp_.n_pos() * E);
  pre_ln_w = w.place(pre_ln_w, E);
  pre_ln_b = w.place(pre_ln_b, E);
  for (ClipLayer& l : layers) {
    l.ln1_w = w.place(l.ln1_w, E), l.ln1_b = w.place(l.ln1_b, E);
    w.place_gemm_matrix(l.wq, many), w.place_gemm_matrix(l.wk, many), w.place_gemm_matrix(l.wv, many);
    w.place_gemm_matrix(l.wo, many);
    l.bq = w.place(l.bq, E), l.bk = w.place(l.bk, E), l.bv = w.place(l.bv, E), l.bo = w.place(l.bo, E);
    l.ln2_w = w.place(l.ln2_w, E), l.ln2_b = w.place(l.ln2_b, E);
    w.place_gemm_matrix(l.fc1, many), w.place_gemm_matrix(l.fc2, many);
    l.b1 = w.place(l.b1, F), l.b2 = w.place(l.b2, E);
  }
  w.finish();
}

bool ClipVisionModel::encode(Backend& be, const float* pixels, int64_t B, const std::vector<int64_t>& sel, bool drop_cls,
                             float* out, const std::atomic<bool>* abort) const {
  EMOLLM_CHECK_ARG(B > 0 && pixels != nullptr && out != nullptr, "vision encode: no images");
  const int64_t n_tok = drop_cls ? hp_.n_patches() : hp_.n_pos();
  DeviceTensor o = DeviceTensor::output(be, out, B * n_tok, int64_t(sel.size()) * hp_.n_embd);
  if (!encode_device(be, pixels, B, sel, drop_cls, o.data(), abort)) return false;
  o.to_host(out);
  return true;
}

namespace {
EnvSwitch& keep_activations_flag() {
  static EnvSwitch on("EMOLLM_VISION_KEEP_ACTIVATIONS");
  return on;
}
bool keep_activations() { return keep_activations_flag().on(); }
}  // namespace

void ClipVisionModel::set_keep_activations(bool on) { keep_activations_flag().set(on); }

bool ClipVisionModel::encode_device(Backend& be, const float* pixels, int64_t B, const std::vector<int64_t>& sel,
                                    bool drop_cls, float* out, const std::atomic<bool>* abort) const {
  const ClipHparams& h = hp_;
  EMOLLM_CHECK_ARG(B > 0 && pixels != nullptr && out != nullptr, "vision encode: no images");
  EMOLLM_CHECK_ARG(!sel.empty(), "vision encode: no feature layers");
  weights_.require_usable_on(be, "CLIP vision tower");
  int64_t deepest = 0;
  for (int64_t l : sel) {
    EMOLLM_CHECK_ARG(l >= 0 && l <= h.n_layer, "vision encode: hidden state " + std::to_string(l) + " is outside [0, " +
                                                   std::to_string(h.n_layer) + "]");
    deepest = std::max(deepest, l);
  }
  const int64_t E = h.n_embd, F = h.n_ff, p = h.patch_size, C = h.n_channels, S = h.image_size;
  const int64_t P = h.n_patches(), T = h.n_pos(), N = B * T, K = C * p * p, H = h.n_head, D = h.head_dim();
  const int64_t t0 = drop_cls ? 1 : 0, n_tok = T - t0, n_sel = int64_t(sel.size());

  // ---- the activations: x, att, xn, q, k, v [N, E], ff [N, F], the patches [B*P, K]; in one
  // block kept between calls (kept_) on a host-memory backend, else allocated for this call
  const size_t a_ne = size_t(N * E + 15) / 16 * 16, a_cols = size_t(B * P * K + 15) / 16 * 16;
  const size_t act_bytes = (6 * a_ne + size_t(N * F + 15) / 16 * 16 + a_cols) * sizeof(float);
  KeptBlock::Claim claim;  // releases kept_ when this call ends, however it ends
  BackendBuffer own;
  float* act = keep_activations() ? static_cast<float*>(kept_.claim(be, act_bytes, &claim)) : nullptr;
  if (!act) {
    own.allocate(be, act_bytes);
    act = static_cast<float*>(own.data());
  }
  float* const x = act;
  float* const att = x + a_ne;
  float* const xn = att + a_ne;
  float* const q = xn + a_ne;
  float* const k = q + a_ne;
  float* const v = k + a_ne;
  float* const ff = v + a_ne;
  float* const cols = ff + size_t(N * F + 15) / 16 * 16;

  // ---- patch embedding: im2col [B*P, C*p*p] (c, ky, kx order, as the conv kernel) x W^T
  {
    DeviceTensor img = DeviceTensor::input(be, pixels, B * C * S, S);
    PatchParams pp;
    pp.batch = B, pp.channels = C, pp.height = S, pp.width = S, pp.patch = p;
    be.extract_patches(img.data(), cols, K, pp);
    be.gemm(cols, K, patch_embd.data, patch_embd.dtype, patch_bias, att, E, B * P, E, K);
  }
  // ---- [CLS + class_embd, patches] + position embeddings, per image
  for (int64_t b = 0; b < B; ++b) {
    be.add(class_embd, pos_embd, x + b * T * E, E);
    be.add(att + b * P * E, pos_embd + E, x + (b * T + 1) * E, P * E);
  }
  be.layernorm(x, E, pre_ln_w, pre_ln_b, x, E, N, E, h.eps);

  // Hidden state `state` into its slot of `out` ([B, n_tok, n_sel * E]): one strided copy per image.
  auto collect = [&](int64_t state) {
    for (int64_t s = 0; s < n_sel; ++s) {
      if (sel[size_t(s)] != state) continue;
      for (int64_t b = 0; b < B; ++b)
        be.copy_2d(out + (b * n_tok * n_sel + s) * E, size_t(n_sel * E) * sizeof(float), x + (b * T + t0) * E,
                   size_t(E) * sizeof(float), n_tok, size_t(E) * sizeof(float));
    }
  };
  collect(0);

  AttentionParams ap;
  ap.n_q = T;
  ap.n_kv = T;
  ap.n_heads = H;
  ap.n_kv_heads = H;
  ap.head_dim = D;
  ap.ldq = E; ap.ldk = E; ap.ldv = E; ap.ldo = E;
  ap.causal = false;
  ap.q_pos0 = 0;
  // A tower with bf16 weights (its GEMMs already round activations to bf16) runs attention's two
  // products in bf16 too, where the backend has such a path (kernels.h AttentionParams).
  ap.bf16_products = !layers.empty() && layers[0].wq.dtype == DType::BF16;

  // A residual add and the LayerNorm after it run as one op (Backend::add_layernorm: the same bits
  // as add() then layernorm()): layer il's first norm is done by the previous layer's last add.
  for (int64_t il = 0; il < deepest; ++il) {
    if (abort && abort->load(std::memory_order_relaxed)) return false;
    const ClipLayer& L = layers[size_t(il)];
    // ---- self-attention
    if (il == 0) be.layernorm(x, E, L.ln1_w, L.ln1_b, xn, E, N, E, h.eps);
    // q, k, v of one input: the CPU runs them as one product on its bf16 panels (X packed once)
    const Backend::GemmOutput qkv[3] = {{L.wq.data, L.wq.dtype, L.bq, q, E, E},
                                        {L.wk.data, L.wk.dtype, L.bk, k, E, E},
                                        {L.wv.data, L.wv.dtype, L.bv, v, E, E}};
    be.gemm_multi(xn, E, qkv, 3, N, E);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t o = b * T * E;
      be.attention(q + o, k + o, v + o, att + o, ap);
    }
    be.gemm(att, E, L.wo.data, L.wo.dtype, L.bo, xn, E, N, E, E);
    // ---- MLP (x += attention output, xn = its norm)
    be.add_layernorm(x, E, xn, E, L.ln2_w, L.ln2_b, xn, E, N, E, h.eps);
    be.gemm(xn, E, L.fc1.data, L.fc1.dtype, L.b1, ff, F, N, F, E);
    if (h.act == "gelu") be.gelu_erf(ff, ff, N * F);
    else be.quick_gelu(ff, ff, N * F);
    be.gemm(ff, F, L.fc2.data, L.fc2.dtype, L.b2, xn, E, N, E, F);
    if (il + 1 < deepest) {
      const ClipLayer& next = layers[size_t(il + 1)];
      be.add_layernorm(x, E, xn, E, next.ln1_w, next.ln1_b, xn, E, N, E, h.eps);  // the next layer's first norm
    } else {
      be.add(x, xn, x, N * E);
    }
    collect(il + 1);
  }
  return !(abort && abort->load(std::memory_order_relaxed));
}

}  // namespace emollm
