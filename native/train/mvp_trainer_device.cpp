// The MVP trainer's frozen decoder on a device backend (mvp_trainer.h): the forward through the
// inference ops, the backward through Backend's training ops, every activation in the backend's
// memory and every weight where the model placed it. What crosses: the image rows of the MVP
// heads and the sample's token ids / positions / targets go up; the loss (cross_entropy returns
// it) and the image rows' gradient come down. The same sequence of kernels as decoder_on_cpu, so
// on the emulated device (the CPU kernels behind the device checks) the result equals the CPU
// trainer's up to one difference: attention() here does not return its log-sum-exp (no backend
// op does), so attention_backward recomputes each row's statistics (tests/native/test_mvp_train.cpp
// states the tolerance this costs).
#include <algorithm>
#include <cstring>
#include <string>

#include "base/error.h"
#include "train/mvp_trainer.h"
#include "train/phase_lap.h"

namespace emollm {

namespace {
// A buffer of `n` elements of T on `be` (at least one byte: alloc(0) is not portable).
template <typename T>
BackendBuffer device_buffer(Backend& be, int64_t n) {
  return BackendBuffer(be, std::max<size_t>(1, size_t(std::max<int64_t>(0, n)) * sizeof(T)));
}
float* f32(const BackendBuffer& b) { return static_cast<float*>(b.data()); }

// The runs of consecutive positions in `pos` (sorted): (first position, first index, length).
struct Run {
  int64_t pos, index, len;
};
std::vector<Run> runs_of(const std::vector<int64_t>& pos) {
  std::vector<Run> out;
  for (size_t i = 0; i < pos.size(); ++i) {
    if (!out.empty() && out.back().pos + out.back().len == pos[i]) out.back().len++;
    else out.push_back({pos[i], int64_t(i), 1});
  }
  return out;
}
}  // namespace

double MvpTrainer::decoder_on_backend(const std::vector<int32_t>& ids, const std::vector<int64_t>& img_pos,
                                      const std::vector<float>& feats, const std::vector<int32_t>& targets,
                                      float scale, bool backward, std::vector<float>* dfeat) {
  PhaseLap lap;
  const LlamaModel& lm = model_->llava().text();
  const LlamaHparams& hp = lm.hparams();
  Backend& be = lm.backend();
  ContextScope scope(*device_ctx_);  // the trainer's stream and workspace
  const int64_t E = hp.n_embd, D = hp.head_dim, H = hp.n_head, Hkv = hp.n_head_kv, F = hp.n_ff, V = hp.n_vocab;
  const int64_t qd = H * D, kvd = Hkv * D;
  const int64_t n = int64_t(ids.size()), NA = int64_t(targets.size()), t0 = n - NA;
  const float eps = hp.rms_eps;

  // ---- inputs: token ids (an image row looks up token 0, then gets its MVP row), positions
  std::vector<int32_t> tok(ids), pos(static_cast<size_t>(n));
  // a device kernel cannot throw: the ids (the targets are among them) are checked here
  for (auto& t : tok) {
    EMOLLM_CHECK_ARG(t < V, "train sample: token id " + std::to_string(t) + " outside [0, " + std::to_string(V) + ")");
    t = std::max(t, 0);
  }
  for (int64_t t = 0; t < n; ++t) pos[size_t(t)] = int32_t(t);
  BackendBuffer d_tok = device_buffer<int32_t>(be, n), d_pos = device_buffer<int32_t>(be, n),
                d_tgt = device_buffer<int32_t>(be, NA);
  be.upload(d_tok.data(), tok.data(), size_t(n) * sizeof(int32_t));
  be.upload(d_pos.data(), pos.data(), size_t(n) * sizeof(int32_t));
  be.upload(d_tgt.data(), targets.data(), size_t(NA) * sizeof(int32_t));
  const int32_t* dpos = static_cast<const int32_t*>(d_pos.data());

  BackendBuffer x = device_buffer<float>(be, n * E);
  be.embedding_lookup(lm.tok_embd.data, lm.tok_embd.dtype, V, E, static_cast<const int32_t*>(d_tok.data()), n, f32(x),
                      E);
  const std::vector<Run> img_runs = runs_of(img_pos);
  BackendBuffer d_feats = device_buffer<float>(be, int64_t(feats.size()));  // lives until the stream has read it
  if (!img_pos.empty()) {
    be.upload(d_feats.data(), feats.data(), feats.size() * sizeof(float));
    for (const Run& r : img_runs)
      be.copy(f32(x) + r.pos * E, f32(d_feats) + r.index * E, size_t(r.len * E) * sizeof(float));
  }

  const RopeParams rp = lm.rope_params();
  const AttentionParams ap = lm.causal_attention_params(n, n, 0);
  AttentionParams bap = ap;
  bap.bf16_products =
      !lm.layers.empty() && (lm.layers[0].wq.dtype == DType::BF16 || lm.layers[0].wq.dtype == DType::F16);

  // ---- decoder forward; activations kept for layers [first_kept, NL) as decoder_on_cpu decides
  const int64_t NL = hp.n_layer;
  const int64_t layer_bytes = n * (2 * qd + 2 * kvd + E + 2 * F) * int64_t(sizeof(float));
  int64_t first_kept = 0;
  if (opts_.recompute == MvpTrainOptions::Recompute::On) first_kept = NL;
  else if (opts_.recompute == MvpTrainOptions::Recompute::Auto)
    first_kept = NL - std::min<int64_t>(NL, std::max<int64_t>(0, opts_.recompute_budget_bytes) / layer_bytes);
  struct Acts {
    BackendBuffer q, k, v, att, x_mid, gate, up;
  };
  auto alloc_acts = [&](Acts& A) {
    A.q = device_buffer<float>(be, n * qd);
    A.k = device_buffer<float>(be, n * kvd);
    A.v = device_buffer<float>(be, n * kvd);
    A.att = device_buffer<float>(be, n * qd);
    A.x_mid = device_buffer<float>(be, n * E);
    A.gate = device_buffer<float>(be, n * F);
    A.up = device_buffer<float>(be, n * F);
  };
  std::vector<Acts> kept(size_t(backward ? NL : 0));
  std::vector<BackendBuffer> x_in(size_t(backward ? NL : 0));
  Acts work;
  alloc_acts(work);
  BackendBuffer xn = device_buffer<float>(be, n * E), tmp = device_buffer<float>(be, n * E),
                act = device_buffer<float>(be, n * F);
  auto layer_forward = [&](int64_t l, float* xs, Acts& A) {
    const LlamaLayer& L = lm.layers[size_t(l)];
    float *q = f32(A.q), *k = f32(A.k), *v = f32(A.v), *att = f32(A.att), *gate = f32(A.gate), *up = f32(A.up);
    be.rmsnorm(xs, E, L.attn_norm, f32(xn), E, n, E, eps);
    be.gemm(f32(xn), E, L.wq.data, L.wq.dtype, L.bq, q, qd, n, qd, E);
    be.gemm(f32(xn), E, L.wk.data, L.wk.dtype, L.bk, k, kvd, n, kvd, E);
    be.gemm(f32(xn), E, L.wv.data, L.wv.dtype, L.bv, v, kvd, n, kvd, E);
    be.rope(q, qd, n, H, dpos, rp);
    be.rope(k, kvd, n, Hkv, dpos, rp);
    be.attention(q, k, v, att, ap);
    be.gemm(att, qd, L.wo.data, L.wo.dtype, L.bo, f32(tmp), E, n, E, qd);
    be.add(xs, f32(tmp), xs, n * E);
    be.copy(f32(A.x_mid), xs, size_t(n * E) * sizeof(float));
    be.rmsnorm(xs, E, L.ffn_norm, f32(xn), E, n, E, eps);
    be.gemm(f32(xn), E, L.w_gate.data, L.w_gate.dtype, L.b_gate, gate, F, n, F, E);
    be.gemm(f32(xn), E, L.w_up.data, L.w_up.dtype, L.b_up, up, F, n, F, E);
    be.swiglu(gate, up, f32(act), n * F);
    be.gemm(f32(act), F, L.w_down.data, L.w_down.dtype, L.b_down, f32(tmp), E, n, E, F);
    be.add(xs, f32(tmp), xs, n * E);
  };
  for (int64_t l = 0; l < NL; ++l) {
    if (backward) {
      x_in[size_t(l)] = device_buffer<float>(be, n * E);
      be.copy(x_in[size_t(l)].data(), x.data(), size_t(n * E) * sizeof(float));
    }
    const bool keep = backward && l >= first_kept;
    if (keep) alloc_acts(kept[size_t(l)]);
    layer_forward(l, f32(x), keep ? kept[size_t(l)] : work);
  }
  lap(times_.decoder_forward);

  // ---- loss over the answer rows t0-1 .. n-2 (their logits stay on the device)
  const float* xa = f32(x) + (t0 - 1) * E;
  BackendBuffer xf = device_buffer<float>(be, NA * E), logits = device_buffer<float>(be, NA * V);
  be.rmsnorm(xa, E, lm.output_norm, f32(xf), E, NA, E, eps);
  be.gemm(f32(xf), E, lm.output.data, lm.output.dtype, nullptr, f32(logits), V, NA, V, E);
  const float ls = scale / float(NA);
  const double total = be.cross_entropy(f32(logits), V, static_cast<const int32_t*>(d_tgt.data()), NA, V, ls,
                                        backward ? f32(logits) : nullptr);
  const double mean = total / double(NA);
  if (!backward) {
    lap(times_.lm_head);
    return mean;
  }

  // ---- backward: logits -> final norm -> residual stream gradient dx [n, E] (zero elsewhere)
  BackendBuffer dx = device_buffer<float>(be, n * E);
  {
    const std::vector<float> zeros(size_t(n * E), 0.0f);
    be.upload(dx.data(), zeros.data(), zeros.size() * sizeof(float));
    be.synchronize();  // `zeros` leaves scope: an asynchronous upload must have read it
  }
  be.gemm_backward_x(f32(logits), V, lm.output.data, lm.output.dtype, f32(xf), E, NA, V, E, false);
  be.rmsnorm_backward(xa, E, lm.output_norm, f32(xf), E, f32(dx) + (t0 - 1) * E, E, NA, E, eps, false);
  lap(times_.lm_head);
  BackendBuffer dq = device_buffer<float>(be, n * qd), dk = device_buffer<float>(be, n * kvd),
                dv = device_buffer<float>(be, n * kvd), datt = device_buffer<float>(be, n * qd),
                dxn = device_buffer<float>(be, n * E), dgate = device_buffer<float>(be, n * F),
                dup = device_buffer<float>(be, n * F), dact = device_buffer<float>(be, n * F);
  BackendBuffer xr = device_buffer<float>(be, n * E);
  for (int64_t l = NL - 1; l >= 0; --l) {
    const LlamaLayer& L = lm.layers[size_t(l)];
    const bool recomputed = l < first_kept;
    if (recomputed && l < NL - 1) {  // the last layer's are still in `work` from the forward pass
      be.copy(xr.data(), x_in[size_t(l)].data(), size_t(n * E) * sizeof(float));
      layer_forward(l, f32(xr), work);
      lap(times_.recompute);
    }
    const Acts& A = recomputed ? work : kept[size_t(l)];
    // MLP: x_out = x_mid + down(swiglu(gate(xn2), up(xn2)))
    be.gemm_backward_x(f32(dx), E, L.w_down.data, L.w_down.dtype, f32(dact), F, n, E, F, false);
    lap(times_.gemm_backward);
    be.swiglu_backward(f32(A.gate), f32(A.up), f32(dact), f32(dgate), f32(dup), n * F);
    lap(times_.elementwise_backward);
    be.gemm_backward_x(f32(dgate), F, L.w_gate.data, L.w_gate.dtype, f32(dxn), E, n, F, E, false);
    be.gemm_backward_x(f32(dup), F, L.w_up.data, L.w_up.dtype, f32(dxn), E, n, F, E, true);
    lap(times_.gemm_backward);
    be.rmsnorm_backward(f32(A.x_mid), E, L.ffn_norm, f32(dxn), E, f32(dx), E, n, E, eps, true);
    lap(times_.norm_backward);
    // attention: x_mid = x_in + wo(attn(rope(q), rope(k), v))
    be.gemm_backward_x(f32(dx), E, L.wo.data, L.wo.dtype, f32(datt), qd, n, E, qd, false);
    lap(times_.gemm_backward);
    be.attention_backward(f32(A.q), f32(A.k), f32(A.v), f32(A.att), f32(datt), nullptr, f32(dq), f32(dk), f32(dv),
                          bap);
    lap(times_.attention_backward);
    be.rope_backward(f32(dq), qd, n, H, dpos, rp);
    be.rope_backward(f32(dk), kvd, n, Hkv, dpos, rp);
    lap(times_.elementwise_backward);
    be.gemm_backward_x(f32(dq), qd, L.wq.data, L.wq.dtype, f32(dxn), E, n, qd, E, false);
    be.gemm_backward_x(f32(dk), kvd, L.wk.data, L.wk.dtype, f32(dxn), E, n, kvd, E, true);
    be.gemm_backward_x(f32(dv), kvd, L.wv.data, L.wv.dtype, f32(dxn), E, n, kvd, E, true);
    lap(times_.gemm_backward);
    be.rmsnorm_backward(f32(x_in[size_t(l)]), E, L.attn_norm, f32(dxn), E, f32(dx), E, n, E, eps, true);
    lap(times_.norm_backward);
  }

  // ---- the image rows' gradient comes down (download waits for the stream)
  dfeat->assign(img_pos.size() * size_t(E), 0.0f);
  for (const Run& r : img_runs)
    be.download(dfeat->data() + r.index * E, f32(dx) + r.pos * E, size_t(r.len * E) * sizeof(float));
  return mean;
}

}  // namespace emollm
