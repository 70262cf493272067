// EmoLLM: the `emollm` config section, MVP weights, the multi-perspective projection and the
// variable-count image splice. See emollm.h and docs/emollm-config.md.
#include "model/emollm.h"

#include <initializer_list>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <sys/stat.h>

#include "base/error.h"
#include "core/tensor.h"
#include "core/filesystem.h"

namespace emollm {

namespace {


}  // namespace

const char* mvp_type_name(MvpType t) {
  switch (t) {
    case MvpType::Mlp: return "mlp";
    case MvpType::MultiLayerMlp: return "multi-layer-mlp";
    case MvpType::AttentionPool: return "attention-pool";
    case MvpType::FaceRegion: return "face-region";
  }
  return "?";
}
bool mvp_type_from_name(const std::string& name, MvpType* out) {
  for (MvpType t : {MvpType::Mlp, MvpType::MultiLayerMlp, MvpType::AttentionPool, MvpType::FaceRegion})
    if (name == mvp_type_name(t)) {
      *out = t;
      return true;
    }
  return false;
}
const char* mvp_gate_name(MvpGate g) {
  switch (g) {
    case MvpGate::Learned: return "learned";
    case MvpGate::Open: return "open";
    case MvpGate::Closed: return "closed";
  }
  return "?";
}

bool EmollmModel::is_emollm_folder(const std::string& path) {
  try {
    if (!LlavaModel::is_llava_folder(path)) return false;
    std::string p = path;
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    const std::string cfg = is_directory(p) ? p + "/config.json" : p;
    JsonValue root = load_json_file(cfg);
    const JsonValue* e = root.find("emollm");
    return e && e->is_object();
  } catch (...) {
    return false;
  }
}

std::shared_ptr<EmollmModel> EmollmModel::load(const std::string& path, const LlavaLoadOptions& opts) {
  EMOLLM_CHECK_ARG(opts.mmproj.empty(), "EmoLLM checkpoints are Hugging Face folders (no mmproj)");
  const std::string folder = folder_of(path);
  const std::string cfg_path = folder + "/config.json";
  JsonValue root = load_json_file(cfg_path);
  const JsonValue* sec = root.find("emollm");
  if (!sec || !sec->is_object()) throw Error(ErrorCode::BadConfig, "config.json has no \"emollm\" object", cfg_path);
  std::string weights = "emollm_mvp.safetensors";
  if (const JsonValue* w = sec->find("weights")) {
    if (!w->is_string() || w->as_string().empty())
      throw Error(ErrorCode::BadConfig, "emollm.weights must be a file name", cfg_path);
    weights = w->as_string();
  }
  const std::string wpath = weights[0] == '/' ? weights : folder + "/" + weights;
  if (!file_exists(wpath))
    throw Error(ErrorCode::FileNotFound, "the MVP weights " + wpath + " (emollm.weights) do not exist", cfg_path);
  auto base = LlavaModel::load(folder, opts);
  auto store = std::make_shared<SafetensorsStore>(SafetensorsStore::open(wpath));
  return from_parts(std::move(base), *sec, std::move(store), cfg_path);
}

std::shared_ptr<EmollmModel> EmollmModel::from_parts(std::shared_ptr<LlavaModel> base, const JsonValue& sec,
                                                     std::shared_ptr<WeightStore> store, const std::string& cfg) {
  EMOLLM_CHECK_ARG(base && store, "EmollmModel::from_parts: no base model or weights");
  auto m = std::make_shared<EmollmModel>();
  m->base_ = std::move(base);
  m->store_ = std::move(store);
  const WeightStore& ws = *m->store_;
  const LlavaModel& lv = *m->base_;
  const ClipHparams& vh = lv.vision().hparams();
  const int64_t C = vh.n_embd, E = lv.n_embd();
  auto bad = [&](const std::string& what) { throw Error(ErrorCode::BadConfig, "emollm." + what, cfg); };
  if (!sec.is_object()) bad(" must be an object");

  if (const JsonValue* v = sec.find("version"); v && !(v->is_int() && v->as_int() == 1)) bad("version must be 1");
  if (const JsonValue* f = sec.find("fusion")) {
    if (!f->is_string() || (f->as_string() != "gated-sum" && f->as_string() != "concat"))
      bad("fusion must be \"gated-sum\" or \"concat\"");
    m->fusion_ = f->as_string();
  }
  const JsonValue* ps = sec.find("perspectives");
  if (!ps || !ps->is_array() || ps->size() == 0) bad("perspectives must be a non-empty array");

  // ---- tensor helpers
  auto mat = [&](const std::string& name, int64_t rows, int64_t cols) {
    const TensorInfo* t = ws.find(name);
    if (!t) throw Error(ErrorCode::MalformedFile, "MVP tensor " + name + " is missing", ws.source());
    if (t->shape != std::vector<int64_t>{rows, cols})
      throw Error(ErrorCode::MalformedFile, "tensor " + name + " has shape " + format_shape(t->shape) + ", expected " +
                                                format_shape({rows, cols}), ws.source());
    t->compute_view();
    if (cols % dtype_block_elems(t->dtype) != 0)
      throw Error(ErrorCode::Unsupported, "tensor " + name + ": row length not a multiple of the block size", ws.source());
    return LlamaWeight{t->data, t->dtype, rows, cols};
  };
  auto vec = [&](const std::string& name, int64_t n, bool required) -> const float* {
    const TensorInfo* t = ws.find(name);
    if (!t) {
      if (required) throw Error(ErrorCode::MalformedFile, "MVP tensor " + name + " is missing", ws.source());
      return nullptr;
    }
    if (t->numel() != n || (t->shape.size() != 1 && !(t->shape.size() == 2 && name.find("queries") != std::string::npos)))
      throw Error(ErrorCode::MalformedFile, "tensor " + name + " has shape " + format_shape(t->shape) + ", expected " +
                                                std::to_string(n) + " elements", ws.source());
    t->compute_view();
    m->converted_.emplace_back(static_cast<size_t>(n));
    if (t->dtype == DType::F32) std::memcpy(m->converted_.back().data(), t->data, size_t(n) * sizeof(float));
    else dequantize_row(t->dtype, t->data, m->converted_.back().data(), n);
    return m->converted_.back().data();
  };
  auto int_field = [&](const JsonValue& o, const std::string& where, const char* key, int64_t def, int64_t lo) {
    const JsonValue* v = o.find(key);
    if (!v || v->is_null()) return def;
    if (!v->is_int() || v->as_int() < lo) bad(where + "." + key + " must be an integer >= " + std::to_string(lo));
    return v->as_int();
  };

  // ---- perspectives
  size_t i = 0;
  for (const JsonValue& po : ps->items()) {
    const std::string where = "perspectives[" + std::to_string(i) + "]";
    const std::string pre = "mvp.heads." + std::to_string(i) + ".";
    if (!po.is_object()) bad(where + " must be an object");
    MvpPerspective p;
    const JsonValue* t = po.find("type");
    if (!t || !t->is_string()) bad(where + ".type must be a string");
    const std::string& ts = t->as_string();
    if (!mvp_type_from_name(ts, &p.type))
      bad(where + ".type \"" + ts + "\" is not one of mlp, multi-layer-mlp, attention-pool, face-region");
    p.name = ts;
    if (const JsonValue* n = po.find("name")) {
      if (!n->is_string()) bad(where + ".name must be a string");
      p.name = n->as_string();
    }
    if (const JsonValue* g = po.find("gate")) {
      if (!g->is_string()) bad(where + ".gate must be a string");
      if (g->as_string() == "learned") p.gate = MvpGate::Learned;
      else if (g->as_string() == "open") p.gate = MvpGate::Open;
      else if (g->as_string() == "closed") p.gate = MvpGate::Closed;
      else bad(where + ".gate \"" + g->as_string() + "\" is not one of learned, open, closed");
    }
    if (const JsonValue* a = po.find("act"); a && !(a->is_string() && a->as_string() == "gelu"))
      bad(where + ".act must be \"gelu\" (erf)");
    // layers: an int or a list of ints (hidden-state indices, negative from the end); default the
    // base's vision_feature_layer
    std::vector<int64_t> layers;
    if (const JsonValue* l = po.find("layers"); l && !l->is_null()) {
      if (l->is_int()) layers.push_back(l->as_int());
      else if (l->is_array() && l->size() > 0) {
        for (const auto& x : l->items()) {
          if (!x.is_int()) bad(where + ".layers must hold integers");
          layers.push_back(x.as_int());
        }
      } else bad(where + ".layers must be an integer or a non-empty list of integers");
      for (int64_t x : layers) {
        try {
          p.layers.push_back(ClipVisionModel::resolve_layer(x, vh.n_layer));
        } catch (const Error& e) {
          bad(where + ".layers: " + e.detail());
        }
      }
    } else {
      if (p.type == MvpType::MultiLayerMlp) bad(where + ".layers is required for a multi-layer-mlp");
      p.layers = lv.feature_layers();
    }
    p.d_in = C * int64_t(p.layers.size());
    p.max_faces = int_field(po, where, "max_faces", 0, 0);
    if (p.type == MvpType::AttentionPool) {
      p.n_queries = int_field(po, where, "n_queries", -1, 1);
      if (p.n_queries < 0) bad(where + ".n_queries is required for an attention-pool");
      p.num_heads = int_field(po, where, "num_heads", 1, 1);
    }
    if (p.gate != MvpGate::Closed) {
      if (p.type == MvpType::AttentionPool) {
        const TensorInfo* q = ws.find(pre + "queries");
        if (!q) throw Error(ErrorCode::MalformedFile, "MVP tensor " + pre + "queries is missing", ws.source());
        if (q->shape.size() != 2 || q->shape[0] != p.n_queries)
          throw Error(ErrorCode::MalformedFile, "tensor " + pre + "queries has shape " + format_shape(q->shape) +
                                                    ", expected [n_queries = " + std::to_string(p.n_queries) + ", d]",
                      ws.source());
        p.d_hid = q->shape[1];
        if (p.d_hid % p.num_heads != 0) bad(where + ".num_heads does not divide the attention size " + std::to_string(p.d_hid));
        p.queries = vec(pre + "queries", p.n_queries * p.d_hid, true);
        p.wk = mat(pre + "k_proj.weight", p.d_hid, p.d_in);
        p.wv = mat(pre + "v_proj.weight", p.d_hid, p.d_in);
        p.wo = mat(pre + "out_proj.weight", E, p.d_hid);
        p.bk = vec(pre + "k_proj.bias", p.d_hid, false);
        p.bv = vec(pre + "v_proj.bias", p.d_hid, false);
        p.bo = vec(pre + "out_proj.bias", E, false);
      } else {
        const TensorInfo* w1 = ws.find(pre + "linear_1.weight");
        if (!w1) throw Error(ErrorCode::MalformedFile, "MVP tensor " + pre + "linear_1.weight is missing", ws.source());
        if (w1->shape.size() != 2)
          throw Error(ErrorCode::MalformedFile, "tensor " + pre + "linear_1.weight is not a matrix", ws.source());
        p.d_hid = w1->shape[0];
        p.w1 = mat(pre + "linear_1.weight", p.d_hid, p.d_in);
        p.w2 = mat(pre + "linear_2.weight", E, p.d_hid);
        p.b1 = vec(pre + "linear_1.bias", p.d_hid, false);
        p.b2 = vec(pre + "linear_2.bias", E, false);
      }
      if (p.gate == MvpGate::Learned) {
        const float* lg = vec(pre + "gate_logits", E, true);
        p.gate_values.resize(size_t(E));
        for (int64_t c = 0; c < E; ++c) p.gate_values[size_t(c)] = float(1.0 / (1.0 + std::exp(-double(lg[c]))));
      } else {
        p.gate_values.assign(size_t(E), 1.0f);
      }
    }
    m->persp_.push_back(std::move(p));
    ++i;
  }

  // ---- tower layers: the union of the open perspectives' layers
  std::vector<int64_t> u;
  for (const auto& p : m->persp_)
    if (p.gate != MvpGate::Closed) u.insert(u.end(), p.layers.begin(), p.layers.end());
  if (u.empty()) u = lv.feature_layers();
  std::sort(u.begin(), u.end());
  u.erase(std::unique(u.begin(), u.end()), u.end());
  m->tower_layers_ = u;

  // ---- groups of summed MLP heads (gated-sum only): same layers, hidden size, dtype
  if (m->fusion_ == "gated-sum") {
    for (size_t k = 0; k < m->persp_.size(); ++k) {
      const auto& p = m->persp_[k];
      if (!p.sums() || p.gate == MvpGate::Closed) continue;
      Group* g = nullptr;
      for (auto& x : m->groups_)
        if (x.layers == p.layers && x.d_hid == p.d_hid && x.dtype == p.w1.dtype && p.w2.dtype == p.w1.dtype) g = &x;
      if (!g) {
        m->groups_.emplace_back();
        g = &m->groups_.back();
        g->layers = p.layers;
        g->d_in = p.d_in;
        g->d_hid = p.d_hid;
        g->dtype = p.w1.dtype;
      }
      g->heads.push_back(k);
    }
    for (auto& g : m->groups_) {
      const size_t H = g.heads.size();
      if (H == 1) {  // the weights in place
        const auto& p = m->persp_[g.heads[0]];
        g.w1 = p.w1.data;
        g.w2 = p.w2.data;
        g.b1 = p.b1;
        g.b2 = p.b2;
      } else {
        const size_t r1 = dtype_row_bytes(g.dtype, g.d_in), r2 = dtype_row_bytes(g.dtype, g.d_hid);
        m->owned_.emplace_back(H * size_t(g.d_hid) * r1);
        uint8_t* w1 = m->owned_.back().data();
        m->owned_.emplace_back(H * size_t(E) * r2);
        uint8_t* w2 = m->owned_.back().data();
        bool any_b1 = false, any_b2 = false;
        for (size_t h = 0; h < H; ++h) {
          const auto& p = m->persp_[g.heads[h]];
          std::memcpy(w1 + h * size_t(g.d_hid) * r1, p.w1.data, size_t(g.d_hid) * r1);
          std::memcpy(w2 + h * size_t(E) * r2, p.w2.data, size_t(E) * r2);
          any_b1 |= p.b1 != nullptr;
          any_b2 |= p.b2 != nullptr;
        }
        g.w1 = w1;
        g.w2 = w2;
        if (any_b1) {
          m->converted_.emplace_back(H * size_t(g.d_hid), 0.0f);
          for (size_t h = 0; h < H; ++h)
            if (const float* b = m->persp_[g.heads[h]].b1) std::copy(b, b + g.d_hid, m->converted_.back().data() + h * g.d_hid);
          g.b1 = m->converted_.back().data();
        }
        if (any_b2) {
          m->converted_.emplace_back(H * size_t(E), 0.0f);
          for (size_t h = 0; h < H; ++h)
            if (const float* b = m->persp_[g.heads[h]].b2) std::copy(b, b + E, m->converted_.back().data() + h * E);
          g.b2 = m->converted_.back().data();
        }
      }
      for (size_t h : g.heads) {
        const auto& gv = m->persp_[h].gate_values;
        g.gates.insert(g.gates.end(), gv.begin(), gv.end());
      }
    }
  }
  return m;
}

int64_t EmollmModel::n_image_tokens(int64_t n_faces) const {
  int64_t n = 0;
  bool summed = false;
  for (const auto& p : persp_) {
    if (p.gate == MvpGate::Closed) continue;
    if (p.sums()) {
      if (fusion_ == "concat") n += n_vision_tokens();
      else if (!summed) n += n_vision_tokens(), summed = true;
    } else if (p.type == MvpType::AttentionPool) {
      n += p.n_queries;
    } else {
      n += p.max_faces > 0 ? std::min(n_faces, p.max_faces) : n_faces;
    }
  }
  return n;
}

std::vector<int64_t> EmollmModel::face_patches(const FaceBox& b) const {
  const ClipHparams& vh = base_->vision().hparams();
  const double S = double(vh.image_size), P = double(vh.patch_size);
  const int64_t side = vh.n_side();
  std::vector<int64_t> out;
  if (!(std::isfinite(b.x) && std::isfinite(b.y) && std::isfinite(b.width) && std::isfinite(b.height))) return out;
  const double x0 = std::max(0.0, double(b.x)), y0 = std::max(0.0, double(b.y));
  const double x1 = std::min(S, double(b.x) + double(b.width)), y1 = std::min(S, double(b.y) + double(b.height));
  if (!(x1 > x0 && y1 > y0)) return out;
  for (int64_t r = 0; r < side; ++r)
    for (int64_t c = 0; c < side; ++c)
      if (x0 < double(c + 1) * P && x1 > double(c) * P && y0 < double(r + 1) * P && y1 > double(r) * P)
        out.push_back(r * side + c);
  return out;
}

void EmollmModel::gather(const float* tf, int64_t rows, const std::vector<int64_t>& layers, std::vector<float>* out) const {
  const int64_t C = base_->vision().hparams().n_embd, L = int64_t(tower_layers_.size()), d = C * int64_t(layers.size());
  out->resize(size_t(rows * d));
  std::vector<int64_t> slot;
  for (int64_t l : layers)
    slot.push_back(int64_t(std::lower_bound(tower_layers_.begin(), tower_layers_.end(), l) - tower_layers_.begin()));
  for (int64_t r = 0; r < rows; ++r)
    for (size_t j = 0; j < slot.size(); ++j)
      std::memcpy(out->data() + r * d + int64_t(j) * C, tf + (r * L + slot[j]) * C, size_t(C) * sizeof(float));
}

void EmollmModel::mlp(const MvpPerspective& p, const float* x, int64_t rows, float* out) const {
  if (rows == 0) return;
  MvpProjectionParams mp;
  mp.tokens = rows;
  mp.d_in = p.d_in;
  mp.d_hid = p.d_hid;
  mp.d_out = n_embd();
  mp.n_heads = 1;
  if (p.w1.dtype == p.w2.dtype) {
    base_->text_model()->backend().mvp_projection(x, p.w1.data, p.b1, p.w2.data, p.b2, p.gate_values.data(), p.w1.dtype,
                                                  out, mp);
    return;
  }
  Backend& be = base_->text_model()->backend();
  const int64_t E = n_embd();
  std::vector<float> hid(size_t(rows * p.d_hid));
  be.gemm(x, p.d_in, p.w1.data, p.w1.dtype, p.b1, hid.data(), p.d_hid, rows, p.d_hid, p.d_in);
  be.gelu_erf(hid.data(), hid.data(), rows * p.d_hid);
  be.gemm(hid.data(), p.d_hid, p.w2.data, p.w2.dtype, p.b2, out, E, rows, E, p.d_hid);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < E; ++c) out[r * E + c] *= p.gate_values[size_t(c)];
}

void EmollmModel::attention_pool(const MvpPerspective& p, const float* x, int64_t B, float* out) const {
  Backend& be = base_->text_model()->backend();
  const int64_t T = n_vision_tokens(), D = p.d_hid, Q = p.n_queries, E = n_embd(), H = p.num_heads;
  std::vector<float> k(size_t(B * T * D)), v(size_t(B * T * D)), att(size_t(B * Q * D));
  be.gemm(x, p.d_in, p.wk.data, p.wk.dtype, p.bk, k.data(), D, B * T, D, p.d_in);
  be.gemm(x, p.d_in, p.wv.data, p.wv.dtype, p.bv, v.data(), D, B * T, D, p.d_in);
  AttentionParams ap;
  ap.n_q = Q;
  ap.n_kv = T;
  ap.n_heads = H;
  ap.n_kv_heads = H;
  ap.head_dim = D / H;
  ap.ldq = ap.ldk = ap.ldv = ap.ldo = D;
  ap.causal = false;
  for (int64_t b = 0; b < B; ++b)
    be.attention(p.queries, k.data() + b * T * D, v.data() + b * T * D, att.data() + b * Q * D, ap);
  be.gemm(att.data(), D, p.wo.data, p.wo.dtype, p.bo, out, E, B * Q, E, D);
  for (int64_t r = 0; r < B * Q; ++r)
    for (int64_t c = 0; c < E; ++c) out[r * E + c] *= p.gate_values[size_t(c)];
}

void EmollmModel::project(const float* tf, int64_t B, const std::vector<std::vector<FaceBox>>* faces,
                          std::vector<float>* out, std::vector<int64_t>* counts) const {
  EMOLLM_CHECK_ARG(B > 0 && tf != nullptr && out != nullptr && counts != nullptr, "EmoLLM project: no images");
  EMOLLM_CHECK_ARG(!faces || int64_t(faces->size()) == B,
                   "EmoLLM project: " + std::to_string(faces ? faces->size() : 0) + " face lists for " + std::to_string(B) +
                       " images");
  const int64_t T = n_vision_tokens(), E = n_embd();
  const bool cls = !base_->drop_cls();  // "full": row 0 of each image is CLS

  // Per perspective (in order), the token block of every image: blocks[k][b] = rows of E floats.
  struct Block {
    std::vector<float> rows;
    int64_t n = 0;
  };
  std::vector<std::vector<Block>> blocks;  // per output block, per image
  std::map<std::vector<int64_t>, std::vector<float>> inputs;  // gathered inputs by layer list
  auto input_for = [&](const std::vector<int64_t>& layers) -> const std::vector<float>& {
    auto it = inputs.find(layers);
    if (it != inputs.end()) return it->second;
    std::vector<float> x;
    gather(tf, B * T, layers, &x);
    return inputs.emplace(layers, std::move(x)).first->second;
  };
  auto per_image = [&](const std::vector<float>& all, int64_t n_per) {
    std::vector<Block> bl(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) {
      bl[size_t(b)].n = n_per;
      bl[size_t(b)].rows.assign(all.begin() + b * n_per * E, all.begin() + (b + 1) * n_per * E);
    }
    return bl;
  };

  bool summed_done = false;
  for (size_t k = 0; k < persp_.size(); ++k) {
    const MvpPerspective& p = persp_[k];
    if (p.gate == MvpGate::Closed) continue;
    if (p.sums()) {
      if (fusion_ == "gated-sum") {
        if (summed_done) continue;
        summed_done = true;
        std::vector<float> y(size_t(B * T * E), 0.0f), tmp;
        for (size_t gi = 0; gi < groups_.size(); ++gi) {
          const Group& g = groups_[gi];
          const std::vector<float>& x = input_for(g.layers);
          MvpProjectionParams mp;
          mp.tokens = B * T;
          mp.d_in = g.d_in;
          mp.d_hid = g.d_hid;
          mp.d_out = E;
          mp.n_heads = int64_t(g.heads.size());
          float* dst = y.data();
          if (gi > 0) {
            tmp.assign(y.size(), 0.0f);
            dst = tmp.data();
          }
          base_->text_model()->backend().mvp_projection(x.data(), g.w1, g.b1, g.w2, g.b2, g.gates.data(), g.dtype, dst, mp);
          if (gi > 0)
            for (size_t j = 0; j < y.size(); ++j) y[j] += tmp[j];
        }
        blocks.push_back(per_image(y, T));
      } else {
        std::vector<float> y(size_t(B * T * E));
        mlp(p, input_for(p.layers).data(), B * T, y.data());
        blocks.push_back(per_image(y, T));
      }
    } else if (p.type == MvpType::AttentionPool) {
      std::vector<float> y(size_t(B * p.n_queries * E));
      attention_pool(p, input_for(p.layers).data(), B, y.data());
      blocks.push_back(per_image(y, p.n_queries));
    } else {  // face-region
      const std::vector<float>& x = input_for(p.layers);
      std::vector<float> pooled;
      std::vector<int64_t> nf(static_cast<size_t>(B), 0);
      for (int64_t b = 0; b < B; ++b) {
        if (!faces) continue;
        for (const FaceBox& box : (*faces)[size_t(b)]) {
          if (p.max_faces > 0 && nf[size_t(b)] >= p.max_faces) break;
          const std::vector<int64_t> pt = face_patches(box);
          if (pt.empty()) continue;
          std::vector<float> acc(size_t(p.d_in), 0.0f);
          for (int64_t q : pt) {
            const float* row = x.data() + (b * T + q + (cls ? 1 : 0)) * p.d_in;
            for (int64_t c = 0; c < p.d_in; ++c) acc[size_t(c)] += row[c];
          }
          const float inv = 1.0f / float(pt.size());
          for (auto& a : acc) a *= inv;
          pooled.insert(pooled.end(), acc.begin(), acc.end());
          nf[size_t(b)]++;
        }
      }
      const int64_t rows = int64_t(pooled.size()) / p.d_in;
      std::vector<float> y(size_t(rows * E));
      mlp(p, pooled.data(), rows, y.data());
      std::vector<Block> bl(static_cast<size_t>(B));
      int64_t r0 = 0;
      for (int64_t b = 0; b < B; ++b) {
        bl[size_t(b)].n = nf[size_t(b)];
        bl[size_t(b)].rows.assign(y.begin() + r0 * E, y.begin() + (r0 + nf[size_t(b)]) * E);
        r0 += nf[size_t(b)];
      }
      blocks.push_back(std::move(bl));
    }
  }
  out->clear();
  counts->assign(size_t(B), 0);
  for (int64_t b = 0; b < B; ++b)
    for (const auto& bl : blocks) {
      const Block& x = bl[size_t(b)];
      out->insert(out->end(), x.rows.begin(), x.rows.end());
      (*counts)[size_t(b)] += x.n;
    }
}

bool EmollmModel::encode_images(const float* pixels, int64_t B, const std::vector<std::vector<FaceBox>>* faces,
                                std::vector<float>* out, std::vector<int64_t>* counts,
                                const std::atomic<bool>* abort) const {
  EMOLLM_CHECK_ARG(B > 0, "encode_images: no images");
  const int64_t C = base_->vision().hparams().n_embd;
  std::vector<float> tf(size_t(B * n_vision_tokens() * C * int64_t(tower_layers_.size())));
  if (!base_->vision().encode(base_->text_model()->backend(), pixels, B, tower_layers_, base_->drop_cls(), tf.data(), abort))
    return false;
  if (abort && abort->load(std::memory_order_relaxed)) return false;
  project(tf.data(), B, faces, out, counts);
  return true;
}

std::vector<int32_t> splice_prompt_counts(int32_t image_token_id, const int32_t* tokens, int64_t n, const float* features,
                                          int64_t E, const std::vector<int64_t>& counts) {
  EMOLLM_CHECK_ARG(n >= 0 && (n == 0 || tokens != nullptr), "splice_prompt: no tokens");
  const int64_t n_images = int64_t(counts.size());
  int64_t total = 0;
  for (int64_t c : counts) {
    EMOLLM_CHECK_ARG(c >= 0, "splice_prompt: negative image token count");
    total += c;
  }
  EMOLLM_CHECK_ARG(total == 0 || features != nullptr, "splice_prompt: images without features");
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] == image_token_id) ++count;
    else if (tokens[i] < 0)
      throw Error(ErrorCode::InvalidArgument, "token id " + std::to_string(tokens[i]) + " (at index " + std::to_string(i) +
                                                  ") is negative");
  }
  const bool once = count == n_images, expanded = count == total;
  if (!once && !expanded)
    throw Error(ErrorCode::InvalidArgument,
                "the prompt has " + std::to_string(count) + " image tokens (id " + std::to_string(image_token_id) + ") for " +
                    std::to_string(n_images) + " image" + (n_images == 1 ? "" : "s") + ": expected " +
                    std::to_string(n_images) + " (one per image) or " + std::to_string(total) + " (the images' " +
                    "token counts summed)");
  std::vector<std::vector<int32_t>> ids(static_cast<size_t>(n_images));
  int64_t off = 0;
  for (int64_t k = 0; k < n_images; ++k) {
    ids[size_t(k)] = image_pseudo_ids(features + off * E, counts[size_t(k)], E);
    off += counts[size_t(k)];
  }
  std::vector<int32_t> out;
  out.reserve(size_t(n + total));
  if (once) {
    int64_t k = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (tokens[i] != image_token_id) out.push_back(tokens[i]);
      else {
        const auto& v = ids[size_t(k++)];
        out.insert(out.end(), v.begin(), v.end());
      }
    }
  } else {
    int64_t k = 0, j = 0;  // image k, its j-th token
    for (int64_t i = 0; i < n; ++i) {
      if (tokens[i] != image_token_id) {
        out.push_back(tokens[i]);
        continue;
      }
      while (k < n_images && j >= counts[size_t(k)]) ++k, j = 0;
      out.push_back(ids[size_t(k)][size_t(j++)]);
    }
  }
  return out;
}

}  // namespace emollm
