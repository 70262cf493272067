// EmoLLM on Qwen2-VL: loading the MVP around the patch merger, and encoding. See emollm_qwen2_vl.h.
#include "model/emollm_qwen2_vl.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/error.h"
#include "core/device_tensor.h"
#include "core/filesystem.h"
#include "core/tensor.h"
#include "loaders/hf_folder.h"
#include "loaders/json.h"
#include "loaders/safetensors.h"

namespace emollm {

bool EmollmQwen2VLModel::is_emollm_qwen2_vl_folder(const std::string& path) {
  if (!Qwen2VLModel::is_qwen2_vl_folder(path)) return false;
  const std::optional<JsonValue> root = hf_folder_config(path);
  const JsonValue* e = root ? root->find("emollm") : nullptr;
  return e && e->is_object();
}

std::shared_ptr<EmollmQwen2VLModel> EmollmQwen2VLModel::load(const std::string& path, const LlamaLoadOptions& opts) {
  const std::string folder = folder_of(path);
  const std::string cfg = folder + "/config.json";
  JsonValue root = load_json_file(cfg);
  const JsonValue* sec = root.find("emollm");
  auto bad = [&](const std::string& what) { throw Error(ErrorCode::BadConfig, "emollm." + what, cfg); };
  if (!sec || !sec->is_object()) throw Error(ErrorCode::BadConfig, "config.json has no \"emollm\" object", cfg);
  std::string weights = "emollm_mvp.safetensors";
  if (const JsonValue* w = sec->find("weights")) {
    if (!w->is_string() || w->as_string().empty()) bad("weights must be a file name");
    weights = w->as_string();
  }
  const std::string wpath = weights[0] == '/' ? weights : folder + "/" + weights;
  if (!file_exists(wpath)) throw Error(ErrorCode::FileNotFound, "the MVP weights " + wpath + " (emollm.weights) do not exist", cfg);

  auto m = std::make_shared<EmollmQwen2VLModel>();
  m->base_ = Qwen2VLModel::load(folder, opts);
  m->store_ = std::make_shared<SafetensorsStore>(SafetensorsStore::open(wpath));
  const WeightStore& ws = *m->store_;
  const Qwen2VisionModel& vis = m->base_->vision();
  const int64_t MD = vis.config().embed_dim * vis.merge_unit(), E = m->base_->n_embd(), depth = vis.depth();

  if (const JsonValue* v = sec->find("version"); v && !(v->is_int() && v->as_int() == 1)) bad("version must be 1");
  if (const JsonValue* f = sec->find("fusion")) {
    if (!f->is_string() || (f->as_string() != "gated-sum" && f->as_string() != "concat")) bad("fusion must be \"gated-sum\" or \"concat\"");
    m->fusion_ = f->as_string();
  }
  const JsonValue* ps = sec->find("perspectives");
  if (!ps || !ps->is_array() || ps->size() == 0) bad("perspectives must be a non-empty array");

  size_t i = 0, open = 0;
  for (const JsonValue& po : ps->items()) {
    const std::string where = "perspectives[" + std::to_string(i) + "]";
    const std::string pre = "mvp.heads." + std::to_string(i) + ".";
    ++i;
    if (!po.is_object()) bad(where + " must be an object");
    MvpPerspective p;
    const JsonValue* t = po.find("type");
    if (!t || !t->is_string()) bad(where + ".type must be a string");
    const std::string& ts = t->as_string();
    p.kind = find_mvp_kind(ts);
    if (!p.kind) bad(where + ".type \"" + ts + "\" is not one of " + mvp_kind_names());
    if (const JsonValue* n = po.find("name"); n && n->is_string()) p.name = n->as_string();
    else p.name = ts;
    std::string gate = "learned";
    if (const JsonValue* g = po.find("gate")) {
      if (!g->is_string() || (g->as_string() != "learned" && g->as_string() != "open" && g->as_string() != "closed"))
        bad(where + ".gate must be \"learned\", \"open\" or \"closed\"");
      gate = g->as_string();
    }
    p.gate = gate == "open" ? MvpGate::Open : gate == "closed" ? MvpGate::Closed : MvpGate::Learned;
    // layers: an int or a list; negative counts from the end (-1 = the last block's output)
    std::vector<int64_t> layers;
    if (const JsonValue* l = po.find("layers"); l && !l->is_null()) {
      if (l->is_int()) layers.push_back(l->as_int());
      else if (l->is_array()) {
        for (const auto& x : l->items()) {
          if (!x.is_int()) bad(where + ".layers must be integers");
          layers.push_back(x.as_int());
        }
      } else bad(where + ".layers must be an integer or a list of integers");
    } else layers.push_back(-1);
    if (layers.empty()) bad(where + ".layers must not be empty");
    for (int64_t& l : layers) {
      if (l < -(depth + 1) || l > depth)
        bad(where + ".layers: " + std::to_string(l) + " is outside the tower's " + std::to_string(depth) + " blocks");
      if (l < 0) l += depth + 1;
    }
    p.layers = layers;
    if (p.gate == MvpGate::Closed) {  // skipped: no weights needed, no contribution
      m->persp_.push_back(std::move(p));
      continue;
    }
    if (!p.sums())
      throw Error(ErrorCode::Unsupported, "emollm." + where + " (" + ts + ") is open: on Qwen2-VL only per-vision-token "
                                          "perspectives (mlp, multi-layer-mlp) can be open (the others would change the "
                                          "merged token layout)", cfg);
    p.d_in = MD * int64_t(layers.size());
    const MvpParseContext ctx(po, where, pre, E, ws, cfg, &m->converted_);
    p.kind->parse(ctx, p);
    p.gate_values.assign(size_t(E), 1.0f);
    if (p.gate == MvpGate::Learned) {
      const float* g = ctx.vector(pre + "gate_logits", E, false);
      if (!g) throw Error(ErrorCode::MalformedFile, "MVP tensor " + pre + "gate_logits is missing (gate \"learned\")", ws.source());
      for (int64_t c = 0; c < E; ++c) p.gate_values[size_t(c)] = float(1.0 / (1.0 + std::exp(-double(g[c]))));
    }
    for (int64_t l : layers) m->taps_.push_back(l);
    ++open;
    m->persp_.push_back(std::move(p));
  }
  if (open == 0) bad("perspectives: at least one must be open or learned");
  if (m->fusion_ == "concat" && open > 1)
    throw Error(ErrorCode::Unsupported, "emollm.fusion \"concat\" with several open heads changes the merged token layout, "
                                        "which Qwen2-VL's M-RoPE grid does not allow; use \"gated-sum\"", cfg);
  std::sort(m->taps_.begin(), m->taps_.end());
  m->taps_.erase(std::unique(m->taps_.begin(), m->taps_.end()), m->taps_.end());
  m->weights_.begin(m->base_->text_model()->backend());
  for (MvpPerspective& p : m->persp_) mvp_place_weights(p, E, m->weights_);
  m->weights_.finish();
  return m;
}

bool EmollmQwen2VLModel::encode(const float* patches, const std::vector<GridThw>& grids, std::vector<float>* out,
                                const std::atomic<bool>* abort) const {
  out->resize(size_t(base_->n_tokens(grids) * base_->n_embd()));
  return encode(patches, grids, out->data(), abort);
}

bool EmollmQwen2VLModel::encode(const float* patches, const std::vector<GridThw>& grids, float* out,
                                const std::atomic<bool>* abort) const {
  Backend& be = base_->text_model()->backend();
  weights_.require_usable_on(be, "EmoLLM projection");
  const Qwen2VisionModel& vis = base_->vision();
  std::vector<DeviceTensor> taps;  // the merger inputs at taps_, in backend memory
  if (!vis.merger_inputs_device(be, patches, grids, taps_, &taps, abort)) return false;
  const int64_t MD = vis.config().embed_dim * vis.merge_unit(), E = base_->n_embd();
  const int64_t M = taps[0].numel() / MD;
  auto tap = [&](int64_t layer) -> const DeviceTensor& {
    return taps[size_t(std::lower_bound(taps_.begin(), taps_.end(), layer) - taps_.begin())];
  };
  // out holds n_tokens(grids) rows: the merger's row count by construction
  if (M != base_->n_tokens(grids))
    throw Error(ErrorCode::Internal, "EmoLLM Qwen2-VL: " + std::to_string(M) + " merged rows for " +
                                         std::to_string(base_->n_tokens(grids)) + " visual tokens");
  DeviceTensor sum = DeviceTensor::output(be, out, M, E);
  bool first = true;
  for (const MvpPerspective& p : persp_) {
    if (p.gate == MvpGate::Closed) continue;
    DeviceTensor x;
    const float* in = tap(p.layers[0]).data();
    if (p.layers.size() > 1) {  // several layers: concatenated on channels
      x = DeviceTensor(be, DType::F32, {M, p.d_in});
      for (size_t k = 0; k < p.layers.size(); ++k)
        be.copy_2d(x.data() + int64_t(k) * MD, size_t(p.d_in) * sizeof(float), tap(p.layers[k]).data(),
                   size_t(MD) * sizeof(float), M, size_t(MD) * sizeof(float));
      in = x.data();
    }
    MvpForwardInput fi{be, nullptr, in};
    fi.B = 1;
    fi.T = M;
    fi.n_embd = E;
    std::vector<int64_t> counts;
    DeviceTensor y = p.kind->forward(fi, p, &counts);
    if (first) be.copy(sum.data(), y.data(), sum.bytes());
    else be.add(sum.data(), y.data(), sum.data(), M * E);
    first = false;
  }
  sum.to_host(out);
  return true;
}

}  // namespace emollm
