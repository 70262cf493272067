// EmoLLM on Qwen2-VL: loading the MVP around the patch merger, and encoding. See emollm_qwen2_vl.h.
#include "model/emollm_qwen2_vl.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/error.h"
#include "core/filesystem.h"
#include "core/tensor.h"
#include "loaders/json.h"
#include "loaders/safetensors.h"

namespace emollm {

bool EmollmQwen2VLModel::is_emollm_qwen2_vl_folder(const std::string& path) {
  try {
    if (!Qwen2VLModel::is_qwen2_vl_folder(path)) return false;
    std::string p = path;
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    JsonValue root = load_json_file(is_directory(p) ? p + "/config.json" : p);
    const JsonValue* e = root.find("emollm");
    return e && e->is_object();
  } catch (...) {
    return false;
  }
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

  auto mat = [&](const std::string& name, int64_t rows, int64_t cols) {
    const TensorInfo* t = ws.find(name);
    if (!t) throw Error(ErrorCode::MalformedFile, "MVP tensor " + name + " is missing", ws.source());
    if (t->shape != std::vector<int64_t>{rows, cols})
      throw Error(ErrorCode::MalformedFile, "tensor " + name + " has shape " + format_shape(t->shape) + ", expected " +
                                                format_shape({rows, cols}), ws.source());
    t->compute_view();
    return LlamaWeight{t->data, t->dtype, rows, cols};
  };
  auto vec = [&](const std::string& name, int64_t n) -> const float* {
    const TensorInfo* t = ws.find(name);
    if (!t) return nullptr;
    if (t->shape != std::vector<int64_t>{n})
      throw Error(ErrorCode::MalformedFile, "tensor " + name + " has shape " + format_shape(t->shape) + ", expected " +
                                                format_shape({n}), ws.source());
    t->compute_view();
    m->converted_.emplace_back(static_cast<size_t>(n));
    if (t->dtype == DType::F32) std::memcpy(m->converted_.back().data(), t->data, size_t(n) * sizeof(float));
    else dequantize_row(t->dtype, t->data, m->converted_.back().data(), n);
    return m->converted_.back().data();
  };

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
    if (!mvp_type_from_name(ts, &p.type))
      bad(where + ".type \"" + ts + "\" is not one of mlp, multi-layer-mlp, attention-pool, face-region");
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
      throw Error(ErrorCode::Unsupported, "emollm." + where + " (" + ts + ") is open: on Qwen2-VL only mlp / multi-layer-mlp "
                                          "perspectives can be open (the others would change the merged token layout)", cfg);
    p.d_in = MD * int64_t(layers.size());
    const TensorInfo* w1 = ws.find(pre + "linear_1.weight");
    if (!w1 || w1->shape.size() != 2) throw Error(ErrorCode::MalformedFile, "MVP tensor " + pre + "linear_1.weight is missing", ws.source());
    p.d_hid = w1->shape[0];
    p.w1 = mat(pre + "linear_1.weight", p.d_hid, p.d_in);
    p.w2 = mat(pre + "linear_2.weight", E, p.d_hid);
    p.b1 = vec(pre + "linear_1.bias", p.d_hid);
    p.b2 = vec(pre + "linear_2.bias", E);
    p.gate_values.assign(size_t(E), 1.0f);
    if (p.gate == MvpGate::Learned) {
      const float* g = vec(pre + "gate_logits", E);
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
  return m;
}

bool EmollmQwen2VLModel::encode(const float* patches, const std::vector<GridThw>& grids, std::vector<float>* out,
                                const std::atomic<bool>* abort) const {
  Backend& be = base_->text_model()->backend();
  const Qwen2VisionModel& vis = base_->vision();
  std::vector<std::vector<float>> tapped;
  if (!vis.merger_inputs(be, patches, grids, taps_, &tapped, abort)) return false;
  const int64_t MD = vis.config().embed_dim * vis.merge_unit(), E = base_->n_embd();
  const int64_t M = int64_t(tapped[0].size()) / MD;
  out->assign(size_t(M * E), 0.0f);
  std::vector<float> x, hid, y(size_t(M * E));
  for (const MvpPerspective& p : persp_) {
    if (p.gate == MvpGate::Closed) continue;
    const float* in = nullptr;
    if (p.layers.size() == 1) {
      in = tapped[size_t(std::lower_bound(taps_.begin(), taps_.end(), p.layers[0]) - taps_.begin())].data();
    } else {  // several layers: concatenated on channels, row by row
      x.assign(size_t(M * p.d_in), 0.0f);
      for (size_t k = 0; k < p.layers.size(); ++k) {
        const float* src = tapped[size_t(std::lower_bound(taps_.begin(), taps_.end(), p.layers[k]) - taps_.begin())].data();
        for (int64_t r = 0; r < M; ++r) std::memcpy(&x[size_t(r * p.d_in + int64_t(k) * MD)], src + r * MD, size_t(MD) * sizeof(float));
      }
      in = x.data();
    }
    hid.resize(size_t(M * p.d_hid));
    be.gemm(in, p.d_in, p.w1.data, p.w1.dtype, p.b1, hid.data(), p.d_hid, M, p.d_hid, p.d_in);
    be.gelu_erf(hid.data(), hid.data(), M * p.d_hid);
    be.gemm(hid.data(), p.d_hid, p.w2.data, p.w2.dtype, p.b2, y.data(), E, M, E, p.d_hid);
    for (int64_t r = 0; r < M; ++r)
      for (int64_t c = 0; c < E; ++c) (*out)[size_t(r * E + c)] += p.gate_values[size_t(c)] * y[size_t(r * E + c)];
  }
  return true;
}

}  // namespace emollm
