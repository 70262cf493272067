// Perspectives "mlp" and "multi-layer-mlp": linear_1 -> GELU (erf) -> linear_2 over every vision
// token of the selected hidden states (concatenated on channels), times the gate. The two differ
// only in that multi-layer-mlp must name its layers. Also the MLP helpers face-region shares.
#include "base/error.h"
#include "model/mvp_kind.h"

namespace emollm {

void mvp_parse_mlp_weights(const MvpParseContext& c, MvpPerspective& p) {
  const std::string& pre = c.prefix();
  const TensorInfo* w1 = c.find(pre + "linear_1.weight");
  if (!w1) throw Error(ErrorCode::MalformedFile, "MVP tensor " + pre + "linear_1.weight is missing", c.source());
  if (w1->shape.size() != 2) throw Error(ErrorCode::MalformedFile, "tensor " + pre + "linear_1.weight is not a matrix", c.source());
  p.d_hid = w1->shape[0];
  p.w1 = c.matrix(pre + "linear_1.weight", p.d_hid, p.d_in);
  p.w2 = c.matrix(pre + "linear_2.weight", c.n_embd(), p.d_hid);
  p.b1 = c.vector(pre + "linear_1.bias", p.d_hid, false);
  p.b2 = c.vector(pre + "linear_2.bias", c.n_embd(), false);
}

void mvp_run_mlp(Backend& be, const MvpPerspective& p, const float* x, int64_t rows, int64_t E, float* y) {
  if (rows == 0) return;
  if (p.w1.dtype == p.w2.dtype) {  // the fused projection, one head
    MvpProjectionParams mp;
    mp.tokens = rows;
    mp.d_in = p.d_in;
    mp.d_hid = p.d_hid;
    mp.d_out = E;
    mp.n_heads = 1;
    be.mvp_projection(x, p.w1.data, p.b1, p.w2.data, p.b2, p.gates(), p.w1.dtype, y, mp);
    return;
  }
  DeviceTensor hid(be, DType::F32, {rows, p.d_hid});
  be.gemm(x, p.d_in, p.w1.data, p.w1.dtype, p.b1, hid.data(), p.d_hid, rows, p.d_hid, p.d_in);
  be.gelu_erf(hid.data(), hid.data(), rows * p.d_hid);
  be.gemm(hid.data(), p.d_hid, p.w2.data, p.w2.dtype, p.b2, y, E, rows, E, p.d_hid);
  be.mul_row(y, E, p.gates(), y, E, rows, E);
}

namespace {

void parse_mlp(const MvpParseContext& c, MvpPerspective& p) {
  if (p.gate != MvpGate::Closed) mvp_parse_mlp_weights(c, p);
}
int64_t tokens_mlp(const MvpPerspective&, int64_t T, int64_t) { return T; }
DeviceTensor forward_mlp(const MvpForwardInput& in, const MvpPerspective& p, std::vector<int64_t>* counts) {
  DeviceTensor y(in.be, DType::F32, {in.B * in.T, in.n_embd});
  mvp_run_mlp(in.be, p, in.x, in.B * in.T, in.n_embd, y.data());
  counts->assign(size_t(in.B), in.T);
  return y;
}

}  // namespace

extern const MvpKind kMvpMlp = {
    "mlp", "linear_1 -> GELU -> linear_2 over every vision token of the selected hidden states",
    /*per_vision_token=*/true, /*layers_required=*/false, parse_mlp, tokens_mlp, forward_mlp, nullptr};
extern const MvpKind kMvpMultiLayerMlp = {
    "multi-layer-mlp", "mlp over several hidden states concatenated on channels (layers required)",
    /*per_vision_token=*/true, /*layers_required=*/true, parse_mlp, tokens_mlp, forward_mlp, nullptr};

}  // namespace emollm
