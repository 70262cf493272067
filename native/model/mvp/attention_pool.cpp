// Perspective "attention-pool": n_queries learned queries attend over the image's vision tokens
// (K / V projections, num_heads heads, softmax(Q K^T / sqrt(head_dim)) V), then out_proj, times
// the gate: n_queries tokens per image.
#include "base/error.h"
#include "core/tensor.h"
#include "model/mvp_kind.h"

namespace emollm {
namespace {

void parse(const MvpParseContext& c, MvpPerspective& p) {
  p.n_queries = c.int_field("n_queries", -1, 1);
  if (p.n_queries < 0) c.bad("n_queries is required for an attention-pool");
  p.num_heads = c.int_field("num_heads", 1, 1);
  if (p.gate == MvpGate::Closed) return;
  const std::string& pre = c.prefix();
  const TensorInfo* q = c.find(pre + "queries");
  if (!q) throw Error(ErrorCode::MalformedFile, "MVP tensor " + pre + "queries is missing", c.source());
  if (q->shape.size() != 2 || q->shape[0] != p.n_queries)
    throw Error(ErrorCode::MalformedFile, "tensor " + pre + "queries has shape " + format_shape(q->shape) +
                                              ", expected [n_queries = " + std::to_string(p.n_queries) + ", d]", c.source());
  p.d_hid = q->shape[1];
  if (p.d_hid % p.num_heads != 0) c.bad("num_heads does not divide the attention size " + std::to_string(p.d_hid));
  const int64_t E = c.n_embd();
  p.queries = c.vector(pre + "queries", p.n_queries * p.d_hid, true);
  p.wk = c.matrix(pre + "k_proj.weight", p.d_hid, p.d_in);
  p.wv = c.matrix(pre + "v_proj.weight", p.d_hid, p.d_in);
  p.wo = c.matrix(pre + "out_proj.weight", E, p.d_hid);
  p.bk = c.vector(pre + "k_proj.bias", p.d_hid, false);
  p.bv = c.vector(pre + "v_proj.bias", p.d_hid, false);
  p.bo = c.vector(pre + "out_proj.bias", E, false);
}

int64_t tokens(const MvpPerspective& p, int64_t, int64_t) { return p.n_queries; }

DeviceTensor forward(const MvpForwardInput& in, const MvpPerspective& p, std::vector<int64_t>* counts) {
  Backend& be = in.be;
  const int64_t B = in.B, T = in.T, D = p.d_hid, Q = p.n_queries, E = in.n_embd, H = p.num_heads;
  DeviceTensor k(be, DType::F32, {B * T, D}), v(be, DType::F32, {B * T, D}), att(be, DType::F32, {B * Q, D});
  be.gemm(in.x, p.d_in, p.wk.data, p.wk.dtype, p.bk, k.data(), D, B * T, D, p.d_in);
  be.gemm(in.x, p.d_in, p.wv.data, p.wv.dtype, p.bv, v.data(), D, B * T, D, p.d_in);
  AttentionParams ap;
  ap.n_q = Q;
  ap.n_kv = T;
  ap.n_heads = H;
  ap.n_kv_heads = H;
  ap.head_dim = D / H;
  ap.ldq = ap.ldk = ap.ldv = ap.ldo = D;
  ap.causal = false;
  for (int64_t b = 0; b < B; ++b) be.attention(p.queries, k.row(b * T), v.row(b * T), att.row(b * Q), ap);
  DeviceTensor y(be, DType::F32, {B * Q, E});
  be.gemm(att.data(), D, p.wo.data, p.wo.dtype, p.bo, y.data(), E, B * Q, E, D);
  be.mul_row(y.data(), E, p.gates(), y.data(), E, B * Q, E);
  counts->assign(size_t(B), Q);
  return y;
}

void info(const MvpPerspective& p, std::vector<std::pair<std::string, double>>* f) {
  f->emplace_back("nQueries", double(p.n_queries));
  f->emplace_back("numHeads", double(p.num_heads));
}

}  // namespace

extern const MvpKind kMvpAttentionPool = {
    "attention-pool", "n_queries learned queries attend over the vision tokens, then out_proj",
    /*per_vision_token=*/false, /*layers_required=*/false, parse, tokens, forward, info};

}  // namespace emollm
