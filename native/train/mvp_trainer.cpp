// The MVP trainer (mvp_trainer.h): forward with saved activations, backward, AdamW.
#include "train/mvp_trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "base/error.h"
#include "cpu/backward.h"
#include "cpu/kernels.h"
#include "train/phase_lap.h"

namespace emollm {

namespace {
using Lap = PhaseLap;

// A frozen decoder matrix as the trainer reads it: the bytes the backend's gemm() reads
// (Backend::gemm_weight_bytes: the CPU's copy of a bf16 / f16 matrix in 2 MiB pages, else the
// mapped weights). The forward, the recompute and the input-gradient GEMMs all read that one
// copy: reading the weight file's mapping as well would fault back in the pages the backend
// released after copying them, holding every decoder matrix twice (peak RSS 9.0 GiB instead of
// ~4.6 for the 1.1B bench model).
struct Frozen {
  const void* data = nullptr;
  DType dtype = DType::F32;
  bool huge_pages = false;  // the backend's copy (gemm_huge_pages, as inference runs it)
};
template <class Matrix>
Frozen frozen(const Backend& be, const Matrix& w) {
  Frozen f;
  f.dtype = w.dtype;
  f.data = w.data ? be.gemm_weight_bytes(w.data, w.dtype, w.rows, w.cols) : nullptr;
  f.huge_pages = f.data != w.data;
  return f;
}
// Y = X W^T + b through the kernel inference runs on these bytes.
void frozen_gemm(const float* X, int64_t ldx, const Frozen& w, const float* bias, float* Y, int64_t ldy, int64_t M,
                 int64_t N, int64_t K, ThreadPool* pool) {
  if (w.huge_pages) gemm_huge_pages(X, ldx, w.data, w.dtype, bias, Y, ldy, M, N, K, pool);
  else gemm(X, ldx, w.data, w.dtype, bias, Y, ldy, M, N, K, pool);
}

std::vector<float> to_f32(const TensorInfo& t) {
  t.compute_view();
  std::vector<float> out(size_t(t.numel()));
  if (t.dtype == DType::F32) std::memcpy(out.data(), t.data, out.size() * sizeof(float));
  else dequantize_row(t.dtype, t.data, out.data(), t.numel());
  return out;
}
}  // namespace

const float* MvpTrainer::value(const Head& h, Part p) const {
  const Tensor& t = h.t[p];
  if (t.idx >= 0) return params_[size_t(t.idx)].value.data();
  return t.frozen.empty() ? nullptr : t.frozen.data();
}

float* MvpTrainer::grad(const Head& h, Part p) {
  const Tensor& t = h.t[p];
  return t.idx >= 0 ? params_[size_t(t.idx)].grad.data() : nullptr;
}

MvpTrainer::MvpTrainer(std::shared_ptr<const EmollmModel> model, const MvpTrainOptions& opts)
    : model_(std::move(model)), opts_(opts) {
  EMOLLM_CHECK_ARG(model_ != nullptr, "MvpTrainer: no model");
  EMOLLM_CHECK_ARG(opts.total_steps >= 1 && opts.warmup_steps >= 0 && opts.lr > 0 && std::isfinite(opts.lr),
                   "MvpTrainer: total_steps >= 1, warmup_steps >= 0 and lr > 0 are required");
  pool_ = std::make_unique<ThreadPool>(std::max(1, opts.threads));
  const EmollmModel& m = *model_;
  // On a device backend the decoder's weights are device memory (the host cannot read them): the
  // decoder then runs through the backend's ops (decoder_on_backend) on a context of its own.
  Backend& dbe = m.llava().text().backend();
  on_device_ = !dbe.uses_host_memory();
  if (on_device_) device_ctx_ = std::make_unique<BackendContext>(dbe);
  const WeightStore& ws = m.mvp_store();
  const auto& tl = m.tower_layers();
  const auto& ps = m.perspectives();
  const bool concat = m.fusion() == "concat";
  for (size_t i = 0; i < ps.size(); ++i) {
    const MvpPerspective& p = ps[i];
    if (p.gate == MvpGate::Closed) continue;
    // The trainer has backward passes for the MLP-shaped kinds, the attention-pool and the
    // face-region head; a kind registered later is refused.
    const std::string kind = p.type_name();
    if (kind != "mlp" && kind != "multi-layer-mlp" && kind != "attention-pool" && kind != "face-region")
      throw Error(ErrorCode::Unsupported, "training with an open " + kind + " perspective (\"" + p.name +
                                              "\") is not implemented: close it, or train the mlp / attention-pool / face-region perspectives");
    Head h;
    h.persp = i;
    h.pool = kind == "attention-pool";
    h.face = kind == "face-region";
    // token layout of EmollmModel::project: blocks in perspective order; gated-sum mlp heads share
    // the block of the first one (the per-image offsets depend on the faces: run() computes them)
    h.summed = !h.pool && !h.face && !concat;
    for (int64_t l : p.layers)
      h.slots.push_back(int64_t(std::lower_bound(tl.begin(), tl.end(), l) - tl.begin()));
    h.d_in = p.d_in;
    h.d_hid = p.d_hid;
    h.n_queries = p.n_queries;
    h.num_heads = p.num_heads;
    h.max_faces = p.max_faces;
    h.learned_gate = p.gate == MvpGate::Learned;
    h.trainable = opts.trainable.empty() ||
                  std::find(opts.trainable.begin(), opts.trainable.end(), p.name) != opts.trainable.end();
    const std::string pre = "mvp.heads." + std::to_string(i) + ".";
    auto load = [&](Part part, const std::string& name, bool decay) {
      const TensorInfo* t = ws.find(pre + name);
      if (!t) return;
      if (h.trainable) {
        MvpParam prm;
        prm.name = pre + name;
        prm.shape = t->shape;
        prm.decay = decay;
        prm.value = to_f32(*t);
        prm.grad.assign(prm.value.size(), 0.0f);
        prm.m.assign(prm.value.size(), 0.0f);
        prm.v.assign(prm.value.size(), 0.0f);
        h.t[part].idx = int(params_.size());
        params_.push_back(std::move(prm));
      } else {
        h.t[part].frozen = to_f32(*t);
      }
    };
    if (h.pool) {
      load(QUERIES, "queries", false);
      load(WK, "k_proj.weight", true);
      load(BK, "k_proj.bias", false);
      load(WV, "v_proj.weight", true);
      load(BV, "v_proj.bias", false);
      load(WO, "out_proj.weight", true);
      load(BO, "out_proj.bias", false);
    } else {
      load(W1, "linear_1.weight", true);
      load(B1, "linear_1.bias", false);
      load(W2, "linear_2.weight", true);
      load(B2, "linear_2.bias", false);
    }
    if (h.learned_gate) load(GATE, "gate_logits", false);
    heads_.push_back(std::move(h));
  }
  for (const std::string& name : opts.trainable) {
    bool found = false;
    for (const auto& p : ps) found |= p.name == name && p.gate != MvpGate::Closed;
    if (!found)
      throw Error(ErrorCode::InvalidArgument, "perspective \"" + name +
                                                  "\" is not an open perspective of this checkpoint "
                                                  "(a closed one must be opened first: train-mvp --perspectives does)");
  }
  EMOLLM_CHECK_ARG(!params_.empty(), "MvpTrainer: no trainable parameters (no open perspective selected)");
}

int64_t MvpTrainer::tower_feature_dim() const {
  return int64_t(model_->tower_layers().size()) * model_->llava().vision().hparams().n_embd;
}

void MvpTrainer::tower_features(const float* pixels, int64_t B, std::vector<float>* out) const {
  EMOLLM_CHECK_ARG(B > 0, "tower_features: no images");
  out->resize(size_t(B * model_->n_vision_tokens() * tower_feature_dim()));
  tower_features(pixels, B, out->data());
}

void MvpTrainer::tower_features(const float* pixels, int64_t B, float* out) const {
  EMOLLM_CHECK_ARG(B > 0 && pixels != nullptr && out != nullptr, "tower_features: no images");
  const LlavaModel& lv = model_->llava();
  lv.vision().encode(lv.text_model()->backend(), pixels, B, model_->tower_layers(), lv.drop_cls(), out);
}

void MvpTrainer::zero_grad() {
  for (auto& p : params_) std::fill(p.grad.begin(), p.grad.end(), 0.0f);
}

double MvpTrainer::accumulate(const MvpTrainSample& s, float scale) { return run(s, scale, true); }
double MvpTrainer::loss(const MvpTrainSample& s) { return run(s, 0.0f, false); }

// ---------------------------------------------------------------- forward + backward
double MvpTrainer::run(const MvpTrainSample& s, float scale, bool backward) {
  Lap lap;
  const EmollmModel& em = *model_;
  const LlamaModel& lm = em.llava().text();
  const LlamaHparams& hp = lm.hparams();
  ThreadPool* pool = pool_.get();
  const int64_t E = hp.n_embd;
  const int64_t T = em.n_vision_tokens(), TD = tower_feature_dim(), C = em.llava().vision().hparams().n_embd;
  const int64_t NI = s.n_images, rows_in = NI * T;
  const int32_t image_id = em.image_token_id();
  EMOLLM_CHECK_ARG(s.tokens && s.n_tokens > 0 && s.n_answer > 0 && s.n_answer < s.n_tokens,
                   "train sample: needs prompt tokens and 1..n-1 answer tokens");
  EMOLLM_CHECK_ARG(NI >= 0 && (NI == 0 || s.tower_feats), "train sample: images without tower features");
  EMOLLM_CHECK_ARG(hp.mrope_section.empty(), "MvpTrainer: M-RoPE decoders are not supported");

  // ---- token layout (EmollmModel::project): image after image, each image's blocks in
  // perspective order, the gated-sum mlp heads sharing one block; a face-region head gives one
  // token per kept face (boxes covering no patch are dropped; at most max_faces per image).
  EMOLLM_CHECK_ARG(!s.faces || int64_t(s.faces->size()) == NI,
                   "train sample: " + std::to_string(s.faces ? s.faces->size() : 0) + " face lists for " +
                       std::to_string(NI) + " images");
  const size_t NH = heads_.size();
  std::vector<std::vector<int64_t>> cnt(NH, std::vector<int64_t>(size_t(NI), 0));  // rows of head k for image b
  std::vector<std::vector<int64_t>> row_of(NH, std::vector<int64_t>(size_t(NI), 0));  // their first image row
  std::vector<std::vector<int64_t>> y_of(NH, std::vector<int64_t>(size_t(NI), 0));    // their first output row
  std::vector<std::vector<std::vector<int64_t>>> face_pt(NH);  // head k: the patches of each kept face
  std::vector<std::vector<int64_t>> face_img(NH);              // head k: the image of each kept face
  for (size_t k = 0; k < NH; ++k) {
    const Head& hd = heads_[k];
    for (int64_t b = 0; b < NI; ++b) {
      if (!hd.face) {
        cnt[k][size_t(b)] = hd.pool ? hd.n_queries : T;
        continue;
      }
      if (!s.faces) continue;
      for (const FaceBox& box : (*s.faces)[size_t(b)]) {
        if (hd.max_faces > 0 && cnt[k][size_t(b)] >= hd.max_faces) break;
        std::vector<int64_t> pt = em.face_patches(box);
        if (pt.empty()) continue;
        face_pt[k].push_back(std::move(pt));
        face_img[k].push_back(b);
        cnt[k][size_t(b)]++;
      }
    }
  }
  std::vector<int64_t> img_start(size_t(NI) + 1, 0);
  for (int64_t b = 0; b < NI; ++b) {
    int64_t pos = img_start[size_t(b)], summed_at = -1;
    for (size_t k = 0; k < NH; ++k) {
      if (heads_[k].summed) {
        if (summed_at < 0) {
          summed_at = pos;
          pos += T;
        }
        row_of[k][size_t(b)] = summed_at;
      } else {
        row_of[k][size_t(b)] = pos;
        pos += cnt[k][size_t(b)];
      }
      y_of[k][size_t(b)] = b == 0 ? 0 : y_of[k][size_t(b - 1)] + cnt[k][size_t(b - 1)];
    }
    img_start[size_t(b) + 1] = pos;
  }
  const int64_t total_rows = img_start[size_t(NI)];

  // ---- MVP forward. mlp: h = X W1^T + b1, a = gelu(h), y = a W2^T + b2. attention-pool:
  // K = X Wk^T + bk, V = X Wv^T + bv, a = attention(queries, K, V) per image, y = a Wo^T + bo.
  // face-region: X = per face, the mean of its patches' features (added in patch order, then
  // scaled, as the engine does), then the mlp. Each head adds g * y (g = sigmoid(gate logits),
  // or 1) into its rows of the image tokens.
  std::vector<float> feats(size_t(total_rows * E), 0.0f);  // image rows, image after image
  struct HeadActs {
    std::vector<float> x, h, a, y, g, k, v;
    int64_t nx = 0, ny = 0;  // rows of x and of y
  };
  auto pool_params = [&](const Head& hd) {
    AttentionParams ap;
    ap.n_q = hd.n_queries;
    ap.n_kv = T;
    ap.n_heads = ap.n_kv_heads = hd.num_heads;
    ap.head_dim = hd.d_hid / hd.num_heads;
    ap.ldq = ap.ldk = ap.ldv = ap.ldo = hd.d_hid;
    ap.causal = false;
    return ap;
  };
  const int64_t cls = em.llava().drop_cls() ? 0 : 1;  // "full": row 0 of each image is CLS
  // the head's layers of tower-feature row r, concatenated on channels
  auto gather_row = [&](const Head& hd, int64_t r, float* dst) {
    for (size_t j = 0; j < hd.slots.size(); ++j)
      std::memcpy(dst + int64_t(j) * C, s.tower_feats + r * TD + hd.slots[j] * C, size_t(C) * sizeof(float));
  };
  std::vector<HeadActs> ha(NH);
  for (size_t k = 0; k < NH && rows_in > 0; ++k) {
    const Head& hd = heads_[k];
    HeadActs& A = ha[k];
    for (int64_t b = 0; b < NI; ++b) A.ny += cnt[k][size_t(b)];
    if (A.ny == 0) continue;  // a face head on an image without faces: no tokens
    if (hd.face) {
      A.nx = int64_t(face_pt[k].size());
      A.x.resize(size_t(A.nx * hd.d_in));
      std::vector<float> row(size_t(hd.d_in));
      for (int64_t f = 0; f < A.nx; ++f) {
        const auto& pt = face_pt[k][size_t(f)];
        const int64_t base = face_img[k][size_t(f)] * T + cls;
        float* acc = A.x.data() + f * hd.d_in;
        gather_row(hd, base + pt[0], acc);
        for (size_t j = 1; j < pt.size(); ++j) {
          gather_row(hd, base + pt[j], row.data());
          for (int64_t c = 0; c < hd.d_in; ++c) acc[c] += row[size_t(c)];
        }
        const float inv = 1.0f / float(pt.size());
        for (int64_t c = 0; c < hd.d_in; ++c) acc[c] *= inv;
      }
    } else {
      A.nx = rows_in;
      A.x.resize(size_t(rows_in * hd.d_in));
      for (int64_t r = 0; r < rows_in; ++r) gather_row(hd, r, A.x.data() + r * hd.d_in);
    }
    A.y.resize(size_t(A.ny * E));
    if (hd.pool) {
      const int64_t D = hd.d_hid;
      A.k.resize(size_t(rows_in * D));
      A.v.resize(size_t(rows_in * D));
      A.a.resize(size_t(A.ny * D));
      gemm(A.x.data(), hd.d_in, value(hd, WK), DType::F32, value(hd, BK), A.k.data(), D, rows_in, D, hd.d_in, pool);
      gemm(A.x.data(), hd.d_in, value(hd, WV), DType::F32, value(hd, BV), A.v.data(), D, rows_in, D, hd.d_in, pool);
      const AttentionParams pap = pool_params(hd);
      for (int64_t b = 0; b < NI; ++b)
        attention(value(hd, QUERIES), A.k.data() + b * T * D, A.v.data() + b * T * D,
                  A.a.data() + y_of[k][size_t(b)] * D, pap, pool);
      gemm(A.a.data(), D, value(hd, WO), DType::F32, value(hd, BO), A.y.data(), E, A.ny, E, D, pool);
    } else {  // mlp and face-region: one output row per input row
      A.h.resize(size_t(A.nx * hd.d_hid));
      gemm(A.x.data(), hd.d_in, value(hd, W1), DType::F32, value(hd, B1), A.h.data(), hd.d_hid, A.nx, hd.d_hid,
           hd.d_in, pool);
      A.a.resize(A.h.size());
      gelu_erf(A.h.data(), A.a.data(), int64_t(A.h.size()), pool);
      gemm(A.a.data(), hd.d_hid, value(hd, W2), DType::F32, value(hd, B2), A.y.data(), E, A.nx, E, hd.d_hid, pool);
    }
    A.g.assign(size_t(E), 1.0f);
    if (hd.learned_gate) {
      const float* lg = value(hd, GATE);
      for (int64_t c = 0; c < E; ++c) A.g[size_t(c)] = float(1.0 / (1.0 + std::exp(-double(lg[c]))));
    }
    for (int64_t b = 0; b < NI; ++b)
      for (int64_t t = 0; t < cnt[k][size_t(b)]; ++t) {
        float* dst = feats.data() + (row_of[k][size_t(b)] + t) * E;
        const float* y = A.y.data() + (y_of[k][size_t(b)] + t) * E;
        for (int64_t c = 0; c < E; ++c) dst[c] += A.g[size_t(c)] * y[c];
      }
  }

  // ---- splice: the decoder input rows; img_pos[r] = position of image row r. The image token
  // stands once per image (expanded here to the image's rows) or already expanded.
  int64_t n_img_tok = 0;
  for (int64_t i = 0; i < s.n_tokens; ++i) n_img_tok += s.tokens[i] == image_id;
  const bool once = n_img_tok == NI, expanded = n_img_tok == total_rows;
  if (!once && !expanded)
    throw Error(ErrorCode::InvalidArgument, "train sample: " + std::to_string(n_img_tok) + " image tokens for " +
                                                std::to_string(NI) + " images (expected one per image or " +
                                                std::to_string(total_rows) + ")");
  std::vector<int32_t> ids;  // -1 = image row
  std::vector<int64_t> img_pos;
  int64_t img_k = 0;  // the image of the next image token (once per image)
  for (int64_t i = 0; i < s.n_tokens; ++i) {
    if (s.tokens[i] != image_id || NI == 0) {
      ids.push_back(s.tokens[i]);
      continue;
    }
    const int64_t reps = once ? img_start[size_t(img_k + 1)] - img_start[size_t(img_k)] : 1;
    img_k += once ? 1 : 0;
    for (int64_t r = 0; r < reps; ++r) {
      img_pos.push_back(int64_t(ids.size()));
      ids.push_back(-1);
    }
  }
  const int64_t n = int64_t(ids.size());
  // The same limit inference has (a context defaults to the trained length): a sample the model
  // cannot evaluate must not be trained on either.
  if (hp.n_ctx_train > 0 && n > hp.n_ctx_train)
    throw Error(ErrorCode::InvalidArgument, "train sample of " + std::to_string(n) +
                                                " positions does not fit the model's context of " +
                                                std::to_string(hp.n_ctx_train) + " positions");
  last_positions_ = n;
  const int64_t NA = s.n_answer, t0 = n - NA;  // first target position (in the expanded sequence)
  std::vector<int32_t> targets(static_cast<size_t>(NA));
  for (int64_t j = 0; j < NA; ++j) {
    targets[size_t(j)] = ids[size_t(t0 + j)];
    EMOLLM_CHECK_ARG(targets[size_t(j)] >= 0, "train sample: an answer token is an image token");
  }
  std::vector<float> dfeat;
  lap(times_.mvp_forward);
  const double mean = on_device_ ? decoder_on_backend(ids, img_pos, feats, targets, scale, backward, &dfeat)
                                 : decoder_on_cpu(ids, img_pos, feats, targets, scale, backward, &dfeat);
  if (!backward) return mean;
  lap.t = std::chrono::steady_clock::now();  // the decoder timed its own phases
  // ---- MVP heads' backward from the image rows' gradient
  for (size_t kk = 0; kk < NH; ++kk) {
    const Head& hd = heads_[kk];
    HeadActs& A = ha[kk];
    if (!hd.trainable || A.ny == 0) continue;
    // out += g * y: dy = dout * g; dlogit = sum_rows dout * y * g (1 - g)
    std::vector<float> dy(size_t(A.ny * E));
    std::vector<double> gsum(size_t(E), 0.0);
    for (int64_t b = 0; b < NI; ++b)
      for (int64_t t = 0; t < cnt[kk][size_t(b)]; ++t) {
        const float* d = dfeat.data() + (row_of[kk][size_t(b)] + t) * E;
        const int64_t yr = y_of[kk][size_t(b)] + t;
        const float* y = A.y.data() + yr * E;
        float* o = dy.data() + yr * E;
        for (int64_t c = 0; c < E; ++c) {
          o[c] = d[c] * A.g[size_t(c)];
          gsum[size_t(c)] += double(d[c]) * double(y[c]);
        }
      }
    if (float* dgl = grad(hd, GATE))
      for (int64_t c = 0; c < E; ++c) {
        const double g = A.g[size_t(c)];
        dgl[c] += float(gsum[size_t(c)] * g * (1.0 - g));
      }
    if (hd.pool) {
      const int64_t D = hd.d_hid;
      gemm_backward_w(dy.data(), E, A.a.data(), D, grad(hd, WO), grad(hd, BO), A.ny, E, D, pool);
      std::vector<float> da(size_t(A.ny * D)), dq(size_t(hd.n_queries * D)), dk(size_t(rows_in * D)),
          dv(size_t(rows_in * D));
      gemm_backward_x(dy.data(), E, value(hd, WO), DType::F32, da.data(), D, A.ny, E, D, false, pool);
      const AttentionParams pap = pool_params(hd);
      float* dQ = grad(hd, QUERIES);
      for (int64_t b = 0; b < NI; ++b) {
        const int64_t yr = y_of[kk][size_t(b)];
        attention_backward(value(hd, QUERIES), A.k.data() + b * T * D, A.v.data() + b * T * D, A.a.data() + yr * D,
                           da.data() + yr * D, nullptr, dq.data(), dk.data() + b * T * D, dv.data() + b * T * D, pap, pool);
        for (size_t i = 0; i < dq.size(); ++i) dQ[i] += dq[i];
      }
      gemm_backward_w(dk.data(), D, A.x.data(), hd.d_in, grad(hd, WK), grad(hd, BK), rows_in, D, hd.d_in, pool);
      gemm_backward_w(dv.data(), D, A.x.data(), hd.d_in, grad(hd, WV), grad(hd, BV), rows_in, D, hd.d_in, pool);
    } else {  // mlp and face-region (the pooled patch features are frozen: no gradient below linear_1)
      gemm_backward_w(dy.data(), E, A.a.data(), hd.d_hid, grad(hd, W2), grad(hd, B2), A.nx, E, hd.d_hid, pool);
      std::vector<float> da(size_t(A.nx * hd.d_hid));
      gemm_backward_x(dy.data(), E, value(hd, W2), DType::F32, da.data(), hd.d_hid, A.nx, E, hd.d_hid, false, pool);
      gelu_erf_backward(A.h.data(), da.data(), da.data(), int64_t(da.size()), pool);
      gemm_backward_w(da.data(), hd.d_hid, A.x.data(), hd.d_in, grad(hd, W1), grad(hd, B1), A.nx, hd.d_hid, hd.d_in,
                      pool);
    }
  }
  lap(times_.mvp_backward);
  return mean;
}

// ---------------------------------------------------------------- the decoder on the CPU
double MvpTrainer::decoder_on_cpu(const std::vector<int32_t>& ids, const std::vector<int64_t>& img_pos,
                                  const std::vector<float>& feats, const std::vector<int32_t>& targets, float scale,
                                  bool backward, std::vector<float>* dfeat) {
  Lap lap;
  const LlamaModel& lm = model_->llava().text();
  const LlamaHparams& hp = lm.hparams();
  ThreadPool* pool = pool_.get();
  const int64_t E = hp.n_embd, D = hp.head_dim, H = hp.n_head, Hkv = hp.n_head_kv, F = hp.n_ff, V = hp.n_vocab;
  const int64_t qd = H * D, kvd = Hkv * D;
  const int64_t n = int64_t(ids.size());
  std::vector<float> x(size_t(n * E));
  {
    int64_t r = 0;
    for (int64_t t = 0; t < n; ++t) {
      if (ids[size_t(t)] < 0) {
        std::memcpy(x.data() + t * E, feats.data() + r * E, size_t(E) * sizeof(float));
        ++r;
      } else {
        embedding_lookup(lm.tok_embd.data, lm.tok_embd.dtype, V, E, &ids[size_t(t)], 1, x.data() + t * E, E, nullptr);
      }
    }
  }
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) pos[size_t(t)] = int32_t(t);
  // the decoder's own RoPE and causal attention (one sequence from position 0)
  const RopeParams rp = lm.rope_params();
  const AttentionParams ap = lm.causal_attention_params(n, n, 0);
  // the decoder's matrices as the backend's gemm() reads them (see Frozen)
  struct LayerW {
    Frozen wq, wk, wv, wo, w_gate, w_up, w_down;
  };
  const Backend& be = lm.backend();
  std::vector<LayerW> lw(lm.layers.size());
  for (size_t l = 0; l < lw.size(); ++l) {
    const LlamaLayer& L = lm.layers[l];
    lw[l] = {frozen(be, L.wq), frozen(be, L.wk), frozen(be, L.wv), frozen(be, L.wo),
             frozen(be, L.w_gate), frozen(be, L.w_up), frozen(be, L.w_down)};
  }
  const Frozen out_w = frozen(be, lm.output);
  // The attention backward may run its products in bf16 (f32 sums) when the decoder's matrices
  // are bf16 / f16: its GEMMs round their activations to bf16 already (kernels/cpu/backward.h);
  // an f32 decoder keeps f32 products throughout.
  AttentionParams bap = ap;
  bap.bf16_products = !lw.empty() && (lw[0].wq.dtype == DType::BF16 || lw[0].wq.dtype == DType::F16);

  // ---- decoder forward. Each layer's input is kept; the rest of what the backward reads is
  // either kept too or recomputed from that input in the backward (recompute_layers: one more
  // forward pass, bit-identical values, memory of one layer instead of all). The kernels write
  // straight into the kept (or the one working) set of buffers: no per-layer copies.
  lap(times_.mvp_forward);
  const int64_t NL = hp.n_layer;
  // Layers [first_kept, NL) keep their activations; the ones below are recomputed.
  const int64_t layer_bytes = n * (2 * qd + 2 * kvd + E + 2 * F) * int64_t(sizeof(float));
  int64_t first_kept = 0;
  if (opts_.recompute == MvpTrainOptions::Recompute::On) first_kept = NL;
  else if (opts_.recompute == MvpTrainOptions::Recompute::Auto)
    first_kept = NL - std::min<int64_t>(NL, std::max<int64_t>(0, opts_.recompute_budget_bytes) / layer_bytes);
  if (backward && int64_t(kept_.size()) < NL) kept_.resize(size_t(NL));
  if (backward && int64_t(x_in_.size()) < NL) x_in_.resize(size_t(NL));
  std::vector<LayerActs>& la = kept_;
  std::vector<std::vector<float>>& x_in = x_in_;
  for (int64_t l = 0; backward && l < first_kept; ++l)  // kept for a shorter sample before: over the budget now
    if (!la[size_t(l)].q.empty()) la[size_t(l)] = LayerActs();
  auto alloc_acts = [&](LayerActs& A) {
    A.q.resize(size_t(n * qd));
    A.k.resize(size_t(n * kvd));
    A.v.resize(size_t(n * kvd));
    A.att.resize(size_t(n * qd));
    A.gate.resize(size_t(n * F));
    A.up.resize(size_t(n * F));
  };
  LayerActs& work = work_;
  alloc_acts(work);
  std::vector<float> xn(size_t(n * E)), tmp(size_t(n * E)), act(size_t(n * F));
  // layer l on the residual stream xs (in place), its activations in A (x_mid too when keep)
  auto layer_forward = [&](int64_t l, std::vector<float>& xs, LayerActs& A, bool keep) {
    const LlamaLayer& L = lm.layers[size_t(l)];
    const LayerW& W = lw[size_t(l)];
    float *q = A.q.data(), *k = A.k.data(), *v = A.v.data(), *att = A.att.data(), *gate = A.gate.data(),
          *up = A.up.data();
    rmsnorm(xs.data(), E, L.attn_norm, xn.data(), E, n, E, hp.rms_eps, pool);
    frozen_gemm(xn.data(), E, W.wq, L.bq, q, qd, n, qd, E, pool);
    frozen_gemm(xn.data(), E, W.wk, L.bk, k, kvd, n, kvd, E, pool);
    frozen_gemm(xn.data(), E, W.wv, L.bv, v, kvd, n, kvd, E, pool);
    rope(q, qd, n, H, pos.data(), rp, pool);
    rope(k, kvd, n, Hkv, pos.data(), rp, pool);
    // the rows' log-sum-exp too when the backward reads this layer's activations
    A.lse.resize(keep ? size_t(n * H) : 0);
    attention(q, k, v, att, ap, pool, keep ? A.lse.data() : nullptr);
    frozen_gemm(att, qd, W.wo, L.bo, tmp.data(), E, n, E, qd, pool);
    add(xs.data(), tmp.data(), xs.data(), n * E, pool);
    if (keep) A.x_mid = xs;
    rmsnorm(xs.data(), E, L.ffn_norm, xn.data(), E, n, E, hp.rms_eps, pool);
    frozen_gemm(xn.data(), E, W.w_gate, L.b_gate, gate, F, n, F, E, pool);
    frozen_gemm(xn.data(), E, W.w_up, L.b_up, up, F, n, F, E, pool);
    swiglu(gate, up, act.data(), n * F, pool);
    frozen_gemm(act.data(), F, W.w_down, L.b_down, tmp.data(), E, n, E, F, pool);
    add(xs.data(), tmp.data(), xs.data(), n * E, pool);
  };
  for (int64_t l = 0; l < NL; ++l) {
    if (backward) x_in[size_t(l)] = x;
    const bool keep = backward && l >= first_kept;
    if (keep) alloc_acts(la[size_t(l)]);
    // all recomputed: the last layer's activations stay in `work` for the first backward layer
    layer_forward(l, x, keep ? la[size_t(l)] : work, keep || (backward && l == NL - 1));
  }
  lap(times_.decoder_forward);

  // ---- loss over the answer: position t-1 predicts token t for the last n_answer tokens
  const int64_t NA = int64_t(targets.size()), t0 = n - NA;  // first target position
  const float* xa = x.data() + (t0 - 1) * E;  // rows t0-1 .. n-2
  std::vector<float> xf(size_t(NA * E)), logits(size_t(NA * V));
  rmsnorm(xa, E, lm.output_norm, xf.data(), E, NA, E, hp.rms_eps, pool);
  frozen_gemm(xf.data(), E, out_w, nullptr, logits.data(), V, NA, V, E, pool);
  const float ls = scale / float(NA);
  const double total = cross_entropy(logits.data(), V, targets.data(), NA, V, ls, backward ? logits.data() : nullptr, pool);
  const double mean = total / double(NA);
  if (!backward) {
    lap(times_.lm_head);
    return mean;
  }

  // ---- backward: logits -> final norm -> residual stream gradient dx [n, E]
  std::vector<float> dx(size_t(n * E), 0.0f);
  gemm_backward_x(logits.data(), V, out_w.data, out_w.dtype, xf.data(), E, NA, V, E, false, pool);
  rmsnorm_backward(xa, E, lm.output_norm, xf.data(), E, dx.data() + (t0 - 1) * E, E, NA, E, hp.rms_eps, false, pool);
  lap(times_.lm_head);
  std::vector<float> dq(size_t(n * qd)), dk(size_t(n * kvd)), dv(size_t(n * kvd)), datt(size_t(n * qd)),
      dxn(size_t(n * E)), dgate(size_t(n * F)), dup(size_t(n * F)), dact(size_t(n * F));
  std::vector<float> xr;
  for (int64_t l = NL - 1; l >= 0; --l) {
    const LlamaLayer& L = lm.layers[size_t(l)];
    const LayerW& W = lw[size_t(l)];
    const bool recomputed = l < first_kept;
    if (recomputed && l < NL - 1) {  // the last layer's are still in `work` from the forward pass
      xr = x_in[size_t(l)];
      layer_forward(l, xr, work, true);
      lap(times_.recompute);
    }
    const LayerActs& A = recomputed ? work : la[size_t(l)];
    // MLP: x_out = x_mid + down(swiglu(gate(xn2), up(xn2)))
    gemm_backward_x(dx.data(), E, W.w_down.data, W.w_down.dtype, dact.data(), F, n, E, F, false, pool);
    lap(times_.gemm_backward);
    swiglu_backward(A.gate.data(), A.up.data(), dact.data(), dgate.data(), dup.data(), n * F, pool);
    lap(times_.elementwise_backward);
    gemm_backward_x(dgate.data(), F, W.w_gate.data, W.w_gate.dtype, dxn.data(), E, n, F, E, false, pool);
    gemm_backward_x(dup.data(), F, W.w_up.data, W.w_up.dtype, dxn.data(), E, n, F, E, true, pool);
    lap(times_.gemm_backward);
    rmsnorm_backward(A.x_mid.data(), E, L.ffn_norm, dxn.data(), E, dx.data(), E, n, E, hp.rms_eps, true, pool);
    lap(times_.norm_backward);
    // attention: x_mid = x_in + wo(attn(rope(q), rope(k), v))
    gemm_backward_x(dx.data(), E, W.wo.data, W.wo.dtype, datt.data(), qd, n, E, qd, false, pool);
    lap(times_.gemm_backward);
    attention_backward(A.q.data(), A.k.data(), A.v.data(), A.att.data(), datt.data(), A.lse.data(), dq.data(),
                       dk.data(), dv.data(), bap, pool);
    lap(times_.attention_backward);
    rope_backward(dq.data(), qd, n, H, pos.data(), rp, pool);
    rope_backward(dk.data(), kvd, n, Hkv, pos.data(), rp, pool);
    lap(times_.elementwise_backward);
    gemm_backward_x(dq.data(), qd, W.wq.data, W.wq.dtype, dxn.data(), E, n, qd, E, false, pool);
    gemm_backward_x(dk.data(), kvd, W.wk.data, W.wk.dtype, dxn.data(), E, n, kvd, E, true, pool);
    gemm_backward_x(dv.data(), kvd, W.wv.data, W.wv.dtype, dxn.data(), E, n, kvd, E, true, pool);
    lap(times_.gemm_backward);
    rmsnorm_backward(x_in[size_t(l)].data(), E, L.attn_norm, dxn.data(), E, dx.data(), E, n, E, hp.rms_eps, true, pool);
    lap(times_.norm_backward);
  }

  // ---- the image rows' gradient
  dfeat->resize(img_pos.size() * size_t(E));
  for (size_t r = 0; r < img_pos.size(); ++r)
    std::memcpy(dfeat->data() + int64_t(r) * E, dx.data() + img_pos[r] * E, size_t(E) * sizeof(float));
  return mean;
}

// ---------------------------------------------------------------- optimizer
double MvpTrainer::lr_at(int64_t s) const {
  if (opts_.warmup_steps > 0 && s < opts_.warmup_steps) return opts_.lr * double(s + 1) / double(opts_.warmup_steps);
  const int64_t span = std::max<int64_t>(1, opts_.total_steps - opts_.warmup_steps);
  const double prog = std::min(1.0, double(s - opts_.warmup_steps) / double(span));
  const double cosv = 0.5 * (1.0 + std::cos(M_PI * prog));
  return opts_.lr * (opts_.min_lr_ratio + (1.0 - opts_.min_lr_ratio) * cosv);
}

MvpStepStats MvpTrainer::step() {
  Lap lap;
  MvpStepStats st;
  double ss = 0.0;
  for (const auto& p : params_) ss += sum_squares(p.grad.data(), int64_t(p.grad.size()));
  st.grad_norm = std::sqrt(ss);
  if (!std::isfinite(st.grad_norm))
    throw Error(ErrorCode::Internal, "the gradient is not finite (norm " + std::to_string(st.grad_norm) +
                                         "): lower the learning rate");
  const double clip = opts_.clip_norm > 0 && st.grad_norm > opts_.clip_norm ? opts_.clip_norm / st.grad_norm : 1.0;
  st.lr = lr_at(step_);
  const double t = double(step_ + 1);
  AdamWStep as;
  as.lr = st.lr;
  as.clip = clip;
  as.bc1 = 1.0 - std::pow(opts_.beta1, t);
  as.bc2 = 1.0 - std::pow(opts_.beta2, t);
  as.eps = opts_.eps;
  as.b1 = float(opts_.beta1);
  as.b2 = float(opts_.beta2);
  for (auto& p : params_) {
    as.decay = p.decay ? float(st.lr * opts_.weight_decay) : 0.0f;
    adamw_update(p.value.data(), p.grad.data(), p.m.data(), p.v.data(), int64_t(p.value.size()), as, nullptr);
  }
  zero_grad();
  st.step = ++step_;
  lap(times_.optimizer);
  return st;
}

}  // namespace emollm
