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
#include "loaders/hf_folder.h"

namespace emollm {

namespace {


}  // namespace

bool EmollmModel::is_emollm_folder(const std::string& path) {
  if (!LlavaModel::is_llava_folder(path)) return false;
  const std::optional<JsonValue> root = hf_folder_config(path);
  const JsonValue* e = root ? root->find("emollm") : nullptr;
  return e && e->is_object();
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
    p.kind = find_mvp_kind(ts);
    if (!p.kind) bad(where + ".type \"" + ts + "\" is not one of " + mvp_kind_names());
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
      if (p.kind->layers_required) bad(where + ".layers is required for a " + ts);
      p.layers = lv.feature_layers();
    }
    p.d_in = C * int64_t(p.layers.size());
    p.max_faces = int_field(po, where, "max_faces", 0, 0);
    // the kind's own fields, and its weights unless closed
    const MvpParseContext ctx(po, where, pre, E, ws, cfg, &m->converted_);
    p.kind->parse(ctx, p);
    if (p.gate != MvpGate::Closed) {
      if (p.gate == MvpGate::Learned) {
        const float* lg = ctx.vector(pre + "gate_logits", E, true);
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
      if (!p.sums() || p.gate == MvpGate::Closed || !p.w1.data || !p.w2.data) continue;  // MLP-shaped heads only
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
  m->place_weights();
  return m;
}

void EmollmModel::place_weights() {
  const int64_t E = n_embd();
  weights_.begin(backend());
  for (MvpPerspective& p : persp_) mvp_place_weights(p, E, weights_);
  for (Group& g : groups_) {
    // a single-head group's pointers are its head's, whose copies are found again (no second upload)
    const int64_t H = int64_t(g.heads.size());
    g.w1 = weights_.place(g.w1, size_t(H * g.d_hid) * dtype_row_bytes(g.dtype, g.d_in));
    g.w2 = weights_.place(g.w2, size_t(H * E) * dtype_row_bytes(g.dtype, g.d_hid));
    g.b1 = weights_.place(g.b1, H * g.d_hid);
    g.b2 = weights_.place(g.b2, H * E);
    g.gates_placed = weights_.place(g.gates.data(), int64_t(g.gates.size()));
  }
  weights_.finish();
}

int64_t EmollmModel::n_image_tokens(int64_t n_faces) const {
  int64_t n = 0;
  bool summed = false;
  for (const auto& p : persp_) {
    if (p.gate == MvpGate::Closed) continue;
    if (p.sums() && fusion_ == "gated-sum") {
      if (!summed) n += n_vision_tokens(), summed = true;
    } else {
      n += p.kind->tokens(p, n_vision_tokens(), n_faces);
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

DeviceTensor EmollmModel::gather(const DeviceTensor& tf, const std::vector<int64_t>& layers) const {
  Backend& be = tf.backend();
  const int64_t C = base_->vision().hparams().n_embd, L = int64_t(tower_layers_.size()), d = C * int64_t(layers.size());
  const int64_t rows = tf.rows();
  DeviceTensor out(be, DType::F32, {rows, d});
  for (size_t j = 0; j < layers.size(); ++j) {
    const int64_t slot = int64_t(std::lower_bound(tower_layers_.begin(), tower_layers_.end(), layers[j]) - tower_layers_.begin());
    be.copy_2d(out.data() + int64_t(j) * C, size_t(d) * sizeof(float), tf.data() + slot * C, size_t(L * C) * sizeof(float),
               rows, size_t(C) * sizeof(float));
  }
  return out;
}

void EmollmModel::project(const float* tf, int64_t B, const std::vector<std::vector<FaceBox>>* faces,
                          std::vector<float>* out, std::vector<int64_t>* counts) const {
  EMOLLM_CHECK_ARG(B > 0 && tf != nullptr && out != nullptr && counts != nullptr, "EmoLLM project: no images");
  const int64_t C = base_->vision().hparams().n_embd;
  project_device(DeviceTensor::input(backend(), tf, B * n_vision_tokens(), C * int64_t(tower_layers_.size())), B, faces,
                 ProjectOut{out}, counts);
}

void EmollmModel::project_device(const DeviceTensor& tf, int64_t B, const std::vector<std::vector<FaceBox>>* faces,
                                 ProjectOut out, std::vector<int64_t>* counts) const {
  int64_t promised_rows = 0;  // the caller's memory: null only when it holds no rows
  if (out.promised)
    for (int64_t c : *out.promised) promised_rows += c;
  EMOLLM_CHECK_ARG(B > 0 && counts != nullptr &&
                       (out.vec != nullptr || (out.promised != nullptr && int64_t(out.promised->size()) == B &&
                                               (out.data != nullptr || promised_rows == 0))),
                   "EmoLLM project: no images");
  EMOLLM_CHECK_ARG(!faces || int64_t(faces->size()) == B,
                   "EmoLLM project: " + std::to_string(faces ? faces->size() : 0) + " face lists for " + std::to_string(B) +
                       " images");
  Backend& be = tf.backend();
  weights_.require_usable_on(be, "EmoLLM projection");
  const int64_t T = n_vision_tokens(), E = n_embd();

  // Inputs gathered once per distinct layer list.
  std::map<std::vector<int64_t>, DeviceTensor> inputs;
  auto input_for = [&](const std::vector<int64_t>& layers) -> const DeviceTensor& {
    auto it = inputs.find(layers);
    if (it != inputs.end()) return it->second;
    return inputs.emplace(layers, gather(tf, layers)).first->second;
  };
  auto forward_input = [&](const MvpPerspective& p) {
    MvpForwardInput in{be, this, input_for(p.layers).data()};
    in.B = B;
    in.T = T;
    in.cls = !base_->drop_cls();  // "full": row 0 of each image is CLS
    in.n_embd = E;
    in.faces = faces;
    return in;
  };

  // The output blocks in perspective order: rows [sum(counts), E] of all images, image after image.
  struct Block {
    DeviceTensor rows;
    std::vector<int64_t> counts;
  };
  std::vector<Block> blocks;
  bool summed_done = false;
  for (const MvpPerspective& p : persp_) {
    if (p.gate == MvpGate::Closed) continue;
    if (p.sums() && fusion_ == "gated-sum") {
      // Every summing head at the first one: the MLP groups (one fused projection each), then
      // any other per-vision-token kind through its own forward.
      if (summed_done) continue;
      summed_done = true;
      DeviceTensor y(be, DType::F32, {B * T, E}), tmp;
      bool first = true;
      auto accumulate = [&](const DeviceTensor& part) {
        if (first) be.copy(y.data(), part.data(), y.bytes());
        else be.add(y.data(), part.data(), y.data(), B * T * E);
        first = false;
      };
      for (const Group& g : groups_) {
        MvpProjectionParams mp;
        mp.tokens = B * T;
        mp.d_in = g.d_in;
        mp.d_hid = g.d_hid;
        mp.d_out = E;
        mp.n_heads = int64_t(g.heads.size());
        if (first) {
          be.mvp_projection(input_for(g.layers).data(), g.w1, g.b1, g.w2, g.b2, g.gates_placed, g.dtype, y.data(), mp);
          first = false;
        } else {
          if (!tmp.data()) tmp = DeviceTensor(be, DType::F32, {B * T, E});
          be.mvp_projection(input_for(g.layers).data(), g.w1, g.b1, g.w2, g.b2, g.gates_placed, g.dtype, tmp.data(), mp);
          accumulate(tmp);
        }
      }
      for (const MvpPerspective& q : persp_) {
        if (q.gate == MvpGate::Closed || !q.sums() || (q.w1.data && q.w2.data)) continue;  // grouped above
        std::vector<int64_t> c;
        accumulate(q.kind->forward(forward_input(q), q, &c));
      }
      blocks.push_back({std::move(y), std::vector<int64_t>(size_t(B), T)});
    } else {
      Block bl;
      bl.rows = p.kind->forward(forward_input(p), p, &bl.counts);
      EMOLLM_CHECK_ARG(int64_t(bl.counts.size()) == B, std::string("perspective kind ") + p.kind->name +
                                                            " returned counts for the wrong number of images");
      blocks.push_back(std::move(bl));
    }
  }

  // Image after image, its blocks in perspective order: one strided copy per (image, block).
  counts->assign(size_t(B), 0);
  for (const Block& bl : blocks)
    for (int64_t b = 0; b < B; ++b) (*counts)[size_t(b)] += bl.counts[size_t(b)];
  int64_t total = 0;
  for (int64_t c : *counts) total += c;
  float* dst = out.data;
  if (out.vec) {
    out.vec->resize(size_t(total * E));
    dst = out.vec->data();
  } else {
    for (int64_t b = 0; b < B; ++b)
      if ((*counts)[size_t(b)] != (*out.promised)[size_t(b)])
        throw Error(ErrorCode::Internal, "EmoLLM project: the heads gave image " + std::to_string(b) + " " +
                                             std::to_string((*counts)[size_t(b)]) + " rows, " +
                                             std::to_string((*out.promised)[size_t(b)]) +
                                             " were expected (image_token_counts)");
  }
  DeviceTensor fused = DeviceTensor::output(be, dst, total, E);
  std::vector<int64_t> src_row(blocks.size(), 0);
  int64_t dst_row = 0;
  for (int64_t b = 0; b < B; ++b)
    for (size_t k = 0; k < blocks.size(); ++k) {
      const int64_t n = blocks[k].counts[size_t(b)];
      if (n) be.copy(fused.row(dst_row), blocks[k].rows.row(src_row[k]), size_t(n * E) * sizeof(float));
      src_row[k] += n;
      dst_row += n;
    }
  fused.to_host(dst);
}

bool EmollmModel::encode_images(const float* pixels, int64_t B, const std::vector<std::vector<FaceBox>>* faces,
                                std::vector<float>* out, std::vector<int64_t>* counts,
                                const std::atomic<bool>* abort) const {
  return encode_into(pixels, B, faces, ProjectOut{out}, counts, abort);
}

bool EmollmModel::encode_images(const float* pixels, int64_t B, const std::vector<std::vector<FaceBox>>* faces, float* out,
                                const std::vector<int64_t>& counts, const std::atomic<bool>* abort) const {
  EMOLLM_CHECK_ARG(int64_t(counts.size()) == B, "EmoLLM encode_images: " + std::to_string(counts.size()) +
                                                    " token counts for " + std::to_string(B) + " images");
  std::vector<int64_t> got;  // the heads' counts, checked against `counts` before anything is written
  return encode_into(pixels, B, faces, ProjectOut{nullptr, out, &counts}, &got, abort);
}

bool EmollmModel::encode_into(const float* pixels, int64_t B, const std::vector<std::vector<FaceBox>>* faces, ProjectOut out,
                              std::vector<int64_t>* counts, const std::atomic<bool>* abort) const {
  EMOLLM_CHECK_ARG(B > 0, "encode_images: no images");
  const int64_t C = base_->vision().hparams().n_embd;
  DeviceTensor tf(backend(), DType::F32, {B * n_vision_tokens(), C * int64_t(tower_layers_.size())});
  if (!base_->vision().encode_device(backend(), pixels, B, tower_layers_, base_->drop_cls(), tf.data(), abort))
    return false;
  if (abort && abort->load(std::memory_order_relaxed)) return false;
  project_device(tf, B, faces, out, counts);
  return true;
}

std::vector<int64_t> EmollmModel::image_token_counts(int64_t B, const std::vector<std::vector<FaceBox>>* faces) const {
  EMOLLM_CHECK_ARG(!faces || int64_t(faces->size()) == B,
                   "EmoLLM: " + std::to_string(faces ? faces->size() : 0) + " face lists for " + std::to_string(B) + " images");
  std::vector<int64_t> counts(size_t(B), n_image_tokens(0));
  for (int64_t b = 0; faces && b < B; ++b) {
    int64_t on = 0;  // boxes that fall on the image (face-region keeps only those)
    for (const FaceBox& box : (*faces)[size_t(b)]) on += face_patches(box).empty() ? 0 : 1;
    counts[size_t(b)] = n_image_tokens(on);
  }
  return counts;
}

}  // namespace emollm
