// Qwen2-VL: loading, visual encoding, prompt expansion and M-RoPE positions. See qwen2_vl.h.
#include "model/qwen2_vl.h"

#include <algorithm>

#include "base/error.h"
#include "core/filesystem.h"
#include "loaders/gguf.h"
#include "loaders/hf_folder.h"
#include "loaders/json.h"
#include "loaders/safetensors.h"
#include "model/llava.h"

namespace emollm {

bool Qwen2VLModel::is_qwen2_vl_folder(const std::string& path) { return hf_folder_model_type(path) == "qwen2_vl"; }

std::shared_ptr<Qwen2VLModel> Qwen2VLModel::load(const std::string& path, const LlamaLoadOptions& opts) {
  const std::string folder = folder_of(path);
  const std::string cfg_path = folder + "/config.json";
  const HfConfig hc = load_hf_config(cfg_path);
  if (!hc.qwen2_vl)
    throw Error(ErrorCode::Unsupported, "model_type \"" + hc.model_type + "\" is not Qwen2-VL (expected \"qwen2_vl\")", cfg_path);
  auto m = std::make_shared<Qwen2VLModel>();
  m->c_ = *hc.qwen2_vl;
  auto st = std::make_shared<SafetensorsStore>(SafetensorsStore::open(folder));
  const WeightStore& ws = *st;
  // transformers 4.5x/5 save "model.language_model.*" + "model.visual.*"; older ones "model.*" + "visual.*"
  const bool nested = ws.find("model.language_model.embed_tokens.weight") != nullptr;
  const std::string tp = nested ? "model.language_model." : "model.";
  const std::string vp = ws.find("model.visual.patch_embed.proj.weight") ? "model.visual." : "visual.";
  LlamaConfig tc = m->c_.text_config;
  if (!ws.find("lm_head.weight")) tc.tie_word_embeddings = true;
  m->text_ = LlamaModel::from_hf_store(st, tc, tp, "lm_head.weight", cfg_path, opts);
  m->vision_ = Qwen2VisionModel::from_hf(ws, m->c_.vision_config, vp, cfg_path);
  if (m->vision_->out_dim() != m->n_embd())
    throw Error(ErrorCode::BadConfig, "vision_config.hidden_size " + std::to_string(m->vision_->out_dim()) +
                                          " differs from the decoder's hidden size " + std::to_string(m->n_embd()), cfg_path);
  m->vision_->place_weights(m->text_->backend());  // zero-copy on the CPU, uploaded once on a device
  m->store_ = std::move(st);
  return m;
}

bool Qwen2VLModel::is_qwen2vl_mmproj(const std::string& mmproj) {
  try {
    GgufFile g = GgufFile::open(mmproj);
    return g.get_string_or("clip.projector_type", g.get_string_or("clip.vision.projector_type", "")) == "qwen2vl_merger";
  } catch (...) {
    return false;
  }
}

std::shared_ptr<Qwen2VLModel> Qwen2VLModel::load_gguf(const std::string& text, const std::string& mmproj,
                                                      const LlamaLoadOptions& opts) {
  auto m = std::make_shared<Qwen2VLModel>();
  m->text_ = LlamaModel::load(text, opts);
  if (m->text_->format() != "gguf" || m->text_->arch() != "qwen2vl")
    throw Error(ErrorCode::InvalidArgument, "a Qwen2-VL mmproj goes with a qwen2vl text GGUF, not " + m->text_->arch(), text);
  auto g = std::make_shared<GgufFile>(GgufFile::open(mmproj));
  m->vision_ = Qwen2VisionModel::from_gguf(*g);
  m->c_.vision_config = m->vision_->config();
  if (m->vision_->out_dim() != m->n_embd())
    throw Error(ErrorCode::MalformedFile, "the mmproj's merger outputs " + std::to_string(m->vision_->out_dim()) +
                                              " channels, the decoder takes " + std::to_string(m->n_embd()), mmproj);
  m->vision_->place_weights(m->text_->backend());
  const auto* tg = dynamic_cast<const GgufFile*>(&m->text_->store());
  const GgufValue* toks = tg ? tg->find("tokenizer.ggml.tokens") : nullptr;
  auto id_of = [&](const char* tok) -> int64_t {
    if (toks && toks->is_array() && toks->elem_type == GgufType::STRING)
      for (size_t i = 0; i < toks->strings.size(); ++i)
        if (toks->strings[i] == tok) return int64_t(i);
    throw Error(ErrorCode::MalformedFile, std::string("the text GGUF's vocabulary has no ") + tok + " token", text);
  };
  m->c_.image_token_id = id_of("<|image_pad|>");
  m->c_.video_token_id = id_of("<|video_pad|>");
  m->c_.vision_start_token_id = id_of("<|vision_start|>");
  m->c_.vision_end_token_id = id_of("<|vision_end|>");
  m->store_ = std::move(g);
  return m;
}

bool Qwen2VLModel::encode(const float* patches, const std::vector<GridThw>& grids, std::vector<float>* out,
                          const std::atomic<bool>* abort) const {
  out->assign(size_t(n_tokens(grids) * n_embd()), 0.0f);
  return encode(patches, grids, out->data(), abort);
}

bool Qwen2VLModel::encode(const float* patches, const std::vector<GridThw>& grids, float* out,
                          const std::atomic<bool>* abort) const {
  return vision_->encode(text_->backend(), patches, grids, out, abort);
}

std::vector<int32_t> Qwen2VLModel::mrope_positions(const std::vector<bool>& is_visual, const std::vector<GridThw>& grids,
                                                   int64_t ms) {
  const int64_t n = int64_t(is_visual.size());
  std::vector<int32_t> pos(size_t(n * 3));
  int32_t next = 0;  // one past the largest position so far
  size_t k = 0;      // the next grid
  for (int64_t i = 0; i < n;) {
    if (!is_visual[size_t(i)]) {
      for (int c = 0; c < 3; ++c) pos[size_t(i * 3 + c)] = next;
      ++next, ++i;
      continue;
    }
    if (k >= grids.size()) throw Error(ErrorCode::InvalidArgument, "the prompt has more visual positions than visuals");
    const GridThw& g = grids[k++];
    const int64_t gh = g.h / ms, gw = g.w / ms, cnt = g.t * gh * gw;
    if (i + cnt > n) throw Error(ErrorCode::InvalidArgument, "the prompt ends inside a visual's positions");
    int32_t mx = next;
    for (int64_t j = 0; j < cnt; ++j) {
      if (!is_visual[size_t(i + j)]) throw Error(ErrorCode::InvalidArgument, "a visual's positions are interrupted by text");
      const int64_t t = j / (gh * gw), h = (j / gw) % gh, w = j % gw;
      int32_t* p = &pos[size_t((i + j) * 3)];
      p[0] = next + int32_t(t);
      p[1] = next + int32_t(h);
      p[2] = next + int32_t(w);
      mx = std::max({mx, p[0], p[1], p[2]});
    }
    next = mx + 1;
    i += cnt;
  }
  if (k != grids.size()) throw Error(ErrorCode::InvalidArgument, "the prompt has fewer visual positions than visuals");
  return pos;
}

ImageSplice Qwen2VLModel::image_splice(const std::vector<GridThw>& visuals) const {
  // video pads and image pads are filled in prompt order alike
  ImageSplice s{image_token_id(), video_token_id(), {}};
  for (const GridThw& g : visuals) s.counts.push_back(n_tokens(g));
  return s;
}

Qwen2VLModel::Prompt Qwen2VLModel::prepare(const int32_t* tokens, int64_t n, const float* features,
                                           const std::vector<GridThw>& visuals) const {
  EMOLLM_CHECK_ARG(n > 0 && tokens != nullptr, "Qwen2VLModel::prepare: no tokens");
  Prompt p;
  p.tokens = splice_prompt(image_splice(visuals), tokens, n, features, n_embd());
  std::vector<bool> is_visual(p.tokens.size());
  for (size_t i = 0; i < p.tokens.size(); ++i) is_visual[i] = p.tokens[i] < 0;
  p.pos3 = mrope_positions(is_visual, visuals, vision_->config().spatial_merge_size);
  return p;
}

}  // namespace emollm
