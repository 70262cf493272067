// LLaVA: loading (llava-hf folders, text GGUF + mmproj GGUF), image encoding (tower + projector)
// and the prompt splice. See llava.h.
#include "model/llava.h"

#include <algorithm>
#include <cstring>
#include <sys/stat.h>

#include "base/arena.h"
#include "base/env_switch.h"
#include "base/error.h"
#include "core/device_tensor.h"
#include "core/tensor.h"
#include "core/filesystem.h"
#include "loaders/hf_folder.h"
#include "loaders/json.h"
#include "loaders/safetensors.h"

namespace emollm {

namespace {


// image_mean / image_std of a preprocessor_config.json next to the config, when readable.
void read_preprocessor(const std::string& folder, std::vector<float>* mean, std::vector<float>* stdv) {
  const std::string p = folder + "/preprocessor_config.json";
  if (!file_exists(p)) return;
  try {
    JsonValue root = load_json_file(p);
    auto arr = [&](const char* key, std::vector<float>* out) {
      const JsonValue* v = root.find(key);
      if (!v || !v->is_array()) return;
      std::vector<float> r;
      for (const auto& x : v->items()) {
        if (!x.is_number()) return;
        r.push_back(float(x.as_double()));
      }
      *out = r;
    };
    arr("image_mean", mean);
    arr("image_std", stdv);
  } catch (const Error&) {
    // optional: a broken preprocessor config only loses the normalisation hint
  }
}

}  // namespace

std::vector<int32_t> image_pseudo_ids(const float* features, int64_t n_feat, int64_t n_embd) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a 64
  const auto* b = reinterpret_cast<const unsigned char*>(features);
  const size_t nb = size_t(n_feat * n_embd) * sizeof(float);
  for (size_t i = 0; i < nb; ++i) {
    h ^= b[i];
    h *= 1099511628211ull;
  }
  std::vector<int32_t> ids(static_cast<size_t>(n_feat));
  for (int64_t j = 0; j < n_feat; ++j) {
    uint64_t z = h + uint64_t(j + 1) * 0x9E3779B97F4A7C15ull;  // splitmix64 finaliser per position
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    ids[size_t(j)] = -1 - int32_t(z & 0x7FFFFFFEu);  // in [-2^31 + 1, -1]
  }
  return ids;
}

bool LlavaModel::is_llava_folder(const std::string& path) {
  const std::string type = hf_folder_model_type(path);
  return type == "llava" || type == "llava_next";
}

int64_t LlavaModel::n_image_tokens() const {
  return drop_cls_ ? vision_->hparams().n_patches() : vision_->hparams().n_pos();
}

const float* LlavaModel::load_vector(const WeightStore& ws, const std::string& name, int64_t n) {
  const TensorInfo& t = ws.get(name);
  if (t.shape != std::vector<int64_t>{n})
    throw Error(ErrorCode::MalformedFile, "tensor " + name + " has shape " + format_shape(t.shape) + ", expected " + format_shape({n}),
                ws.source());
  t.compute_view();
  converted_.emplace_back(static_cast<size_t>(n));
  if (t.dtype == DType::F32) std::memcpy(converted_.back().data(), t.data, size_t(n) * sizeof(float));
  else dequantize_row(t.dtype, t.data, converted_.back().data(), n);
  return converted_.back().data();
}

void LlavaModel::load_projector(const WeightStore& ws, const std::string& w1, const std::string& b1, const std::string& w2,
                                const std::string& b2, bool bias) {
  const int64_t E = n_embd();
  proj_in_ = vision_->hparams().n_embd * int64_t(feature_layers_.size());
  auto mat = [&](const std::string& name, int64_t rows, int64_t cols) {
    const TensorInfo& t = ws.get(name);
    if (t.shape != std::vector<int64_t>{rows, cols})
      throw Error(ErrorCode::MalformedFile, "tensor " + name + " has shape " + format_shape(t.shape) + ", expected " +
                                                format_shape({rows, cols}) + " (projector from " + std::to_string(cols) +
                                                " vision channels to the decoder's hidden size)",
                  ws.source());
    t.compute_view();
    if (cols % dtype_block_elems(t.dtype) != 0)
      throw Error(ErrorCode::Unsupported, "tensor " + name + ": row length not a multiple of the block size", ws.source());
    return LlamaWeight{t.data, t.dtype, rows, cols, t.data};
  };
  auto vec = [&](const std::string& name, int64_t n) -> const float* {
    const TensorInfo& t = ws.get(name);
    if (t.shape != std::vector<int64_t>{n})
      throw Error(ErrorCode::MalformedFile, "tensor " + name + " has shape " + format_shape(t.shape) + ", expected " + format_shape({n}),
                  ws.source());
    t.compute_view();
    if (t.dtype == DType::F32 && reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0)
      return reinterpret_cast<const float*>(t.data);
    converted_.emplace_back(static_cast<size_t>(n));
    if (t.dtype == DType::F32) std::memcpy(converted_.back().data(), t.data, size_t(n) * sizeof(float));
    else dequantize_row(t.dtype, t.data, converted_.back().data(), n);
    return converted_.back().data();
  };
  proj1_ = mat(w1, E, proj_in_);
  proj2_ = mat(w2, E, E);
  if (bias) {
    proj1_b_ = vec(b1, E);
    proj2_b_ = vec(b2, E);
  }
}

std::shared_ptr<LlavaModel> LlavaModel::from_hf_store(std::shared_ptr<WeightStore> store, const LlavaConfig& c,
                                                      const std::string& config_file, const LlavaLoadOptions& opts) {
  EMOLLM_CHECK_ARG(store != nullptr, "LlavaModel::from_hf_store: no weight store");
  auto m = std::make_shared<LlavaModel>();
  const WeightStore& ws = *store;
  m->format_ = ws.format();
  auto pick = [&](std::initializer_list<const char*> prefixes, const std::string& probe) -> std::string {
    for (const char* p : prefixes)
      if (ws.find(std::string(p) + probe)) return p;
    std::string tried;
    for (const char* p : prefixes) tried += (tried.empty() ? "" : ", ") + std::string(p) + probe;
    throw Error(ErrorCode::MalformedFile, "not a LLaVA checkpoint: none of " + tried + " is present", ws.source());
  };
  // ---- decoder
  const std::string tp = pick({"language_model.model.", "model.language_model.", "language_model.", "model."},
                              "embed_tokens.weight");
  std::string lm_head = "lm_head.weight";
  if (ws.find("language_model.lm_head.weight")) lm_head = "language_model.lm_head.weight";
  LlamaConfig tc = c.text_config;
  if (c.tie_word_embeddings && !ws.find(lm_head)) tc.tie_word_embeddings = true;
  LlamaLoadOptions lo;
  lo.threads = opts.threads;
  lo.device = opts.device;
  m->text_ = LlamaModel::from_hf_store(store, tc, tp, lm_head, config_file, lo);

  // ---- vision tower
  const std::string vp = pick({"vision_tower.vision_model.", "model.vision_tower.vision_model.", "vision_tower.",
                               "model.vision_tower."},
                              "embeddings.patch_embedding.weight");
  m->vision_ = ClipVisionModel::from_hf(ws, c.vision_config, vp, config_file);
  const int64_t nl = m->vision_->hparams().n_layer;
  if (c.vision_feature_layer.empty()) throw Error(ErrorCode::BadConfig, "vision_feature_layer is empty", config_file);
  for (int64_t l : c.vision_feature_layer) {
    try {
      m->feature_layers_.push_back(ClipVisionModel::resolve_layer(l, nl));
    } catch (const Error& e) {
      throw Error(ErrorCode::BadConfig, e.detail(), config_file);
    }
  }
  if (c.vision_feature_select_strategy == "default") m->drop_cls_ = true;
  else if (c.vision_feature_select_strategy == "full") m->drop_cls_ = false;
  else
    throw Error(ErrorCode::BadConfig, "vision_feature_select_strategy \"" + c.vision_feature_select_strategy +
                                          "\" is not one of \"default\", \"full\"", config_file);

  // ---- projector
  if (c.projector_hidden_act != "gelu")
    throw Error(ErrorCode::Unsupported, "projector_hidden_act \"" + c.projector_hidden_act + "\" is not supported (gelu)",
                config_file);
  m->projector_act_ = c.projector_hidden_act;
  const std::string pp = pick({"multi_modal_projector.", "model.multi_modal_projector."}, "linear_1.weight");
  m->load_projector(ws, pp + "linear_1.weight", pp + "linear_1.bias", pp + "linear_2.weight", pp + "linear_2.bias",
                    c.multimodal_projector_bias);
  if (c.image_token_index < 0 || c.image_token_index > INT32_MAX)
    throw Error(ErrorCode::BadConfig, "image_token_index " + std::to_string(c.image_token_index) + " is out of range", config_file);
  m->image_token_id_ = int32_t(opts.image_token_id >= 0 ? opts.image_token_id : c.image_token_index);
  // ---- LLaVA-NeXT: anyres pinpoints and the image_newline row separator
  if (c.anyres) {
    m->anyres_ = true;
    m->pinpoints_ = c.image_grid_pinpoints;
    const char* nl = ws.find("model.image_newline") ? "model.image_newline" : "image_newline";
    m->image_newline_ = m->load_vector(ws, nl, m->n_embd());
  }
  m->store_ = std::move(store);
  m->place_weights();
  return m;
}

std::shared_ptr<LlavaModel> LlavaModel::load(const std::string& path, const LlavaLoadOptions& opts) {
  if (opts.mmproj.empty()) {
    // ---- Hugging Face folder
    const std::string folder = folder_of(path);
    const std::string cfg_path = folder + "/config.json";
    const HfConfig hc = load_hf_config(cfg_path);
    if (!hc.llava)
      throw Error(ErrorCode::Unsupported, "model_type \"" + hc.model_type + "\" is not LLaVA (expected \"llava\")", cfg_path);
    auto st = std::make_shared<SafetensorsStore>(SafetensorsStore::open(folder));
    auto m = from_hf_store(st, *hc.llava, cfg_path, opts);
    read_preprocessor(folder, &m->image_mean_, &m->image_std_);
    return m;
  }
  // ---- text GGUF + mmproj GGUF
  auto m = std::make_shared<LlavaModel>();
  m->format_ = "gguf";
  LlamaLoadOptions lo;
  lo.threads = opts.threads;
  lo.device = opts.device;
  m->text_ = LlamaModel::load(path, lo);
  if (m->text_->format() != "gguf")
    throw Error(ErrorCode::InvalidArgument, "an mmproj goes with a text GGUF, not a " + m->text_->format() + " model", path);
  auto g = std::make_shared<GgufFile>(GgufFile::open(opts.mmproj));
  const GgufFile& f = *g;
  m->vision_ = ClipVisionModel::from_gguf(f);
  const ClipHparams& vh = m->vision_->hparams();
  const std::string ptype = f.get_string_or("clip.projector_type", "mlp");
  if (ptype != "mlp")
    throw Error(ErrorCode::Unsupported, "mmproj projector type \"" + ptype + "\" is not supported (mlp)", opts.mmproj);
  if (f.has("clip.has_llava_projector") && !f.get_bool("clip.has_llava_projector"))
    throw Error(ErrorCode::Unsupported, "mmproj file has no LLaVA projector", opts.mmproj);
  if (f.has("clip.vision.feature_layer")) {
    for (int32_t l : f.get_i32_array("clip.vision.feature_layer")) {
      if (l < 0 || l > vh.n_layer)
        throw Error(ErrorCode::MalformedFile, "clip.vision.feature_layer " + std::to_string(l) + " is outside [0, " +
                                                  std::to_string(vh.n_layer) + "]", opts.mmproj);
      m->feature_layers_.push_back(l);
    }
    if (m->feature_layers_.empty()) throw Error(ErrorCode::MalformedFile, "clip.vision.feature_layer is empty", opts.mmproj);
  } else {
    m->feature_layers_.push_back(vh.n_layer);  // the output of the last stored layer
  }
  m->drop_cls_ = true;
  m->projector_act_ = "gelu";
  m->load_projector(f, "mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias", static_cast<const WeightStore&>(f).find("mm.0.bias") != nullptr);
  m->image_mean_ = vh.image_mean;
  m->image_std_ = vh.image_std;
  // LLaVA-NeXT (llava-v1.6 mmproj): anyres pinpoints as a flat list of pairs, in the order of the
  // HF config's image_grid_pinpoints ([height, width]), and the model.image_newline vector
  if (f.has("clip.vision.image_grid_pinpoints")) {
    const std::vector<int32_t> pp = f.get_i32_array("clip.vision.image_grid_pinpoints");
    if (pp.empty() || pp.size() % 2 != 0)
      throw Error(ErrorCode::MalformedFile, "clip.vision.image_grid_pinpoints must hold (height, width) pairs", opts.mmproj);
    for (size_t i = 0; i < pp.size(); i += 2) {
      if (pp[i] <= 0 || pp[i + 1] <= 0 || pp[i] % vh.image_size != 0 || pp[i + 1] % vh.image_size != 0)
        throw Error(ErrorCode::MalformedFile, "clip.vision.image_grid_pinpoints must be positive multiples of the image size",
                    opts.mmproj);
      m->pinpoints_.emplace_back(pp[i], pp[i + 1]);
    }
    m->anyres_ = true;
    m->image_newline_ = m->load_vector(f, "model.image_newline", m->n_embd());
  }
  // The image token: explicit, else the text GGUF's "<image>", else one past the vocabulary.
  int64_t img = opts.image_token_id;
  if (img < 0) {
    img = m->text_->hparams().n_vocab;
    if (const auto* tg = dynamic_cast<const GgufFile*>(&m->text_->store())) {
      if (const GgufValue* toks = tg->find("tokenizer.ggml.tokens"); toks && toks->is_array() &&
                                                                      toks->elem_type == GgufType::STRING) {
        for (size_t i = 0; i < toks->strings.size(); ++i)
          if (toks->strings[i] == "<image>") {
            img = int64_t(i);
            break;
          }
      }
    }
  }
  m->image_token_id_ = int32_t(img);
  m->store_ = std::move(g);
  m->place_weights();
  return m;
}

void LlavaModel::place_weights() {
  Backend& be = text_->backend();
  vision_->place_weights(be);
  const int64_t E = n_embd();
  weights_.begin(be);
  weights_.place_gemm_matrix(proj1_, GemmRows::Many);  // an image's tokens at once (the CPU's bf16 panels)
  weights_.place_gemm_matrix(proj2_, GemmRows::Many);
  proj1_b_ = weights_.place(proj1_b_, E);
  proj2_b_ = weights_.place(proj2_b_, E);
  image_newline_dev_ = weights_.place(image_newline_, E);  // image_newline_ stays the host copy
  weights_.finish();
}

namespace {
EnvSwitch& keep_scratch_flag() {
  static EnvSwitch on("EMOLLM_LLAVA_KEEP_SCRATCH");
  return on;
}
// f32 values rounded up to a 64-byte line (the blocks carved from one allocation stay aligned)
size_t line_floats(int64_t n) { return size_t(n + 15) / 16 * 16; }
}  // namespace

void LlavaModel::set_keep_scratch(bool on) { keep_scratch_flag().set(on); }
bool LlavaModel::keep_scratch() { return keep_scratch_flag().on(); }

float* LlavaModel::claim_scratch(size_t bytes, KeptBlock::Claim* claim) const {
  return keep_scratch() ? static_cast<float*>(kept_.claim(text_->backend(), bytes, claim)) : nullptr;
}

void LlavaModel::project_into(const float* feats, int64_t rows, float* out, float* hid) const {
  Backend& be = text_->backend();
  const int64_t E = n_embd();
  be.gemm(feats, proj_in_, proj1_.data, proj1_.dtype, proj1_b_, hid, E, rows, E, proj_in_);
  be.gelu_erf(hid, hid, rows * E);
  be.gemm(hid, E, proj2_.data, proj2_.dtype, proj2_b_, out, E, rows, E, E);
}

void LlavaModel::project(const float* feats, int64_t rows, float* out) const {
  Backend& be = text_->backend();
  weights_.require_usable_on(be, "LLaVA projector");
  KeptBlock::Claim claim;
  if (float* kept = claim_scratch(line_floats(rows * n_embd()) * sizeof(float), &claim))
    return project_into(feats, rows, out, kept);
  DeviceTensor hid(be, DType::F32, {rows, n_embd()});
  project_into(feats, rows, out, hid.data());
}

bool LlavaModel::encode_images_device(const float* pixels, int64_t B, float* out, const std::atomic<bool>* abort) const {
  EMOLLM_CHECK_ARG(B > 0, "encode_images: no images");
  Backend& be = text_->backend();
  weights_.require_usable_on(be, "LLaVA projector");
  const int64_t rows = B * n_image_tokens();
  // the tower's features, then the projector's hidden rows: kept between calls, else this call's own
  const size_t nf = line_floats(rows * proj_in_), nh = line_floats(rows * n_embd());
  KeptBlock::Claim claim;
  float* feats = claim_scratch((nf + nh) * sizeof(float), &claim);
  DeviceTensor own;
  if (!feats) {
    own = DeviceTensor(be, DType::F32, {int64_t(nf + nh)});
    feats = own.data();
  }
  if (!vision_->encode_device(be, pixels, B, feature_layers_, drop_cls_, feats, abort)) return false;
  if (abort && abort->load(std::memory_order_relaxed)) return false;
  project_into(feats, rows, out, feats + nf);
  return true;
}

bool LlavaModel::encode_images(const float* pixels, int64_t B, float* out, const std::atomic<bool>* abort) const {
  EMOLLM_CHECK_ARG(B > 0, "encode_images: no images");
  DeviceTensor o = DeviceTensor::output(text_->backend(), out, B * n_image_tokens(), n_embd());
  if (!encode_images_device(pixels, B, o.data(), abort)) return false;
  o.to_host(out);
  return true;
}

std::vector<int32_t> LlavaModel::splice_prompt(const int32_t* tokens, int64_t n, const float* features,
                                               int64_t n_images) const {
  EMOLLM_CHECK_ARG(n_images >= 0, "splice_prompt: negative image count");
  EMOLLM_CHECK_ARG(n_images == 0 || features != nullptr, "splice_prompt: images without features");
  // n_image_tokens() rows each (for an anyres model too: this entry point takes fixed counts)
  const ImageSplice fixed{image_token_id_, image_token_id_, std::vector<int64_t>(size_t(n_images), n_image_tokens())};
  return emollm::splice_prompt(fixed, tokens, n, features, n_embd());
}

ImageSplice LlavaModel::image_splice(int64_t n_images, const std::vector<int64_t>& counts) const {
  if (anyres_) return {image_token_id_, image_token_id_, counts};
  EMOLLM_CHECK_ARG(n_images >= 0, "image_splice: negative image count");
  return {image_token_id_, image_token_id_, std::vector<int64_t>(size_t(n_images), n_image_tokens())};  // fixed
}

}  // namespace emollm
