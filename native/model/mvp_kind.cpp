// The perspective registry (mvp_kind.h): the built-in kinds, one entry each, and the parse
// helpers every kind reads its config and weights with.
#include "model/mvp_kind.h"

#include <algorithm>
#include <cstring>
#include <mutex>

#include "base/error.h"
#include "core/tensor.h"

namespace emollm {

// ---- the built-in kinds: one line per kind (each defined in native/model/mvp/<kind>.cpp)
extern const MvpKind kMvpMlp;            // mvp/mlp.cpp
extern const MvpKind kMvpMultiLayerMlp;  // mvp/mlp.cpp
extern const MvpKind kMvpAttentionPool;  // mvp/attention_pool.cpp
extern const MvpKind kMvpFaceRegion;     // mvp/face_region.cpp

namespace {
struct Registry {
  std::mutex mu;
  std::vector<const MvpKind*> kinds{&kMvpMlp, &kMvpMultiLayerMlp, &kMvpAttentionPool, &kMvpFaceRegion};
};
Registry& registry() {
  static Registry r;
  return r;
}
}  // namespace

std::vector<const MvpKind*> mvp_kinds() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.kinds;
}

const MvpKind* find_mvp_kind(const std::string& name) {
  for (const MvpKind* k : mvp_kinds())
    if (name == k->name) return k;
  return nullptr;
}

std::string mvp_kind_names() {
  std::string s;
  for (const MvpKind* k : mvp_kinds()) s += (s.empty() ? "" : ", ") + std::string(k->name);
  return s;
}

void register_mvp_kind(const MvpKind* kind) {
  EMOLLM_CHECK_ARG(kind && kind->name && *kind->name && kind->parse && kind->tokens && kind->forward,
                   "register_mvp_kind: a kind needs a name, parse, tokens and forward");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (const MvpKind* k : r.kinds)
    EMOLLM_CHECK_ARG(std::string(k->name) != kind->name,
                     std::string("register_mvp_kind: \"") + kind->name + "\" is already registered");
  r.kinds.push_back(kind);
}

const char* mvp_gate_name(MvpGate g) {
  switch (g) {
    case MvpGate::Learned: return "learned";
    case MvpGate::Open: return "open";
    case MvpGate::Closed: return "closed";
  }
  return "?";
}

const char* MvpPerspective::type_name() const { return kind ? kind->name : "?"; }
bool MvpPerspective::sums() const { return kind && kind->per_vision_token; }

void mvp_place_weights(MvpPerspective& p, int64_t E, BackendWeights& w) {
  if (p.gate == MvpGate::Closed) return;
  const int64_t D = p.d_hid;
  w.place_matrix(p.w1), w.place_matrix(p.w2);
  p.b1 = w.place(p.b1, D), p.b2 = w.place(p.b2, E);
  p.queries = w.place(p.queries, p.n_queries * D);
  w.place_matrix(p.wk), w.place_matrix(p.wv), w.place_matrix(p.wo);
  p.bk = w.place(p.bk, D), p.bv = w.place(p.bv, D), p.bo = w.place(p.bo, E);
  // On the CPU gates() reads gate_values itself (no pointer into the vector to go stale on a copy).
  if (!p.gate_values.empty() && !w.backend()->uses_host_memory())
    p.gate_device = w.place(p.gate_values.data(), int64_t(p.gate_values.size()));
  if (p.kind && p.kind->place) p.kind->place(p, w);
}

// ---- parse context
void MvpParseContext::bad(const std::string& msg) const {
  throw Error(ErrorCode::BadConfig, "emollm." + where_ + "." + msg, config_file_);
}

int64_t MvpParseContext::int_field(const char* key, int64_t def, int64_t lo) const {
  const JsonValue* v = config_.find(key);
  if (!v || v->is_null()) return def;
  if (!v->is_int() || v->as_int() < lo) bad(std::string(key) + " must be an integer >= " + std::to_string(lo));
  return v->as_int();
}

LlamaWeight MvpParseContext::matrix(const std::string& name, int64_t rows, int64_t cols) const {
  const TensorInfo* t = ws_.find(name);
  if (!t) throw Error(ErrorCode::MalformedFile, "MVP tensor " + name + " is missing", ws_.source());
  if (t->shape != std::vector<int64_t>{rows, cols})
    throw Error(ErrorCode::MalformedFile, "tensor " + name + " has shape " + format_shape(t->shape) + ", expected " +
                                              format_shape({rows, cols}), ws_.source());
  t->compute_view();
  if (cols % dtype_block_elems(t->dtype) != 0)
    throw Error(ErrorCode::Unsupported, "tensor " + name + ": row length not a multiple of the block size", ws_.source());
  return LlamaWeight{t->data, t->dtype, rows, cols, t->data};
}

const float* MvpParseContext::vector(const std::string& name, int64_t n, bool required) const {
  const TensorInfo* t = ws_.find(name);
  if (!t) {
    if (required) throw Error(ErrorCode::MalformedFile, "MVP tensor " + name + " is missing", ws_.source());
    return nullptr;
  }
  // [n], or for learned queries the matrix [n_queries, d] flattened
  if (t->numel() != n || (t->shape.size() != 1 && !(t->shape.size() == 2 && name.find("queries") != std::string::npos)))
    throw Error(ErrorCode::MalformedFile, "tensor " + name + " has shape " + format_shape(t->shape) + ", expected " +
                                              std::to_string(n) + " elements", ws_.source());
  t->compute_view();
  owned_->emplace_back(static_cast<size_t>(n));
  // Load time, not the hot path: an f32 copy (or conversion) the model keeps.
  if (t->dtype == DType::F32) std::memcpy(owned_->back().data(), t->data, size_t(n) * sizeof(float));
  else dequantize_row(t->dtype, t->data, owned_->back().data(), n);
  return owned_->back().data();
}

}  // namespace emollm
