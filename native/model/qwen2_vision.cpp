// Qwen2-VL vision tower: loading and the forward pass. See qwen2_vision.h.
#include "model/qwen2_vision.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/error.h"
#include "core/tensor.h"
#include "loaders/weight_reader.h"

namespace emollm {

namespace {

struct Loader {
  const WeightStore& ws;
  std::vector<std::vector<float>>& converted;

  WeightReader reader{ws, "the vision tower's hyperparameters"};  // the typed errors of a bad tensor

  const TensorInfo& tensor(const std::string& name, const std::vector<int64_t>& shape) const { return reader.tensor(name, shape); }
  LlamaWeight mat(const std::string& name, int64_t rows, int64_t cols, std::vector<int64_t> shape = {}) const {
    const TensorInfo& t = reader.matrix(name, rows, cols, std::move(shape));
    return LlamaWeight{t.data, t.dtype, rows, cols, t.data};
  }
  const float* vec(const std::string& name, int64_t n) const {
    const TensorInfo& t = tensor(name, {n});
    converted.emplace_back(size_t(n));
    if (t.dtype == DType::F32) std::memcpy(converted.back().data(), t.data, size_t(n) * sizeof(float));
    else dequantize_row(t.dtype, t.data, converted.back().data(), n);
    return converted.back().data();
  }
};

}  // namespace

std::unique_ptr<Qwen2VisionModel> Qwen2VisionModel::from_hf(const WeightStore& ws, const Qwen2VisionConfig& c,
                                                            const std::string& p, const std::string& config_file) {
  if (c.hidden_act != "quick_gelu" && c.hidden_act != "gelu")
    throw Error(ErrorCode::Unsupported, "vision_config.hidden_act \"" + c.hidden_act + "\" is not supported (quick_gelu, gelu)",
                config_file);
  auto m = std::make_unique<Qwen2VisionModel>();
  m->c_ = c;
  Loader L{ws, m->converted_};
  const int64_t D = c.embed_dim, F = c.embed_dim * c.mlp_ratio, K = m->patch_dim();
  m->patch_embd_ = L.mat(p + "patch_embed.proj.weight", D, K,
                         {D, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size});
  for (int64_t i = 0; i < c.depth; ++i) {
    const std::string b = p + "blocks." + std::to_string(i) + ".";
    Qwen2VisionBlock k;
    k.norm1_w = L.vec(b + "norm1.weight", D);
    k.norm1_b = L.vec(b + "norm1.bias", D);
    k.norm2_w = L.vec(b + "norm2.weight", D);
    k.norm2_b = L.vec(b + "norm2.bias", D);
    k.qkv = L.mat(b + "attn.qkv.weight", 3 * D, D);
    k.qkv_b = L.vec(b + "attn.qkv.bias", 3 * D);
    k.proj = L.mat(b + "attn.proj.weight", D, D);
    k.proj_b = L.vec(b + "attn.proj.bias", D);
    k.fc1 = L.mat(b + "mlp.fc1.weight", F, D);
    k.fc1_b = L.vec(b + "mlp.fc1.bias", F);
    k.fc2 = L.mat(b + "mlp.fc2.weight", D, F);
    k.fc2_b = L.vec(b + "mlp.fc2.bias", D);
    m->blocks_.push_back(k);
  }
  const int64_t MD = D * m->merge_unit();
  m->ln_q_w_ = L.vec(p + "merger.ln_q.weight", D);
  m->ln_q_b_ = L.vec(p + "merger.ln_q.bias", D);
  m->mlp0_ = L.mat(p + "merger.mlp.0.weight", MD, MD);
  m->mlp0_b_ = L.vec(p + "merger.mlp.0.bias", MD);
  m->mlp2_ = L.mat(p + "merger.mlp.2.weight", c.hidden_size, MD);
  m->mlp2_b_ = L.vec(p + "merger.mlp.2.bias", c.hidden_size);
  // VisionRotaryEmbedding(dim = head_dim / 2): inv_freq[j] = theta^(-2j / dim), j < head_dim / 4;
  // the row angle drives pairs [0, head_dim/4), the column angle pairs [head_dim/4, head_dim/2).
  const int64_t hd = D / c.num_heads, q = hd / 4;
  m->inv_freq_h_.assign(size_t(hd / 2), 0.0f);
  m->inv_freq_w_.assign(size_t(hd / 2), 0.0f);
  for (int64_t j = 0; j < q; ++j) {
    const float f = float(1.0 / std::pow(c.rope_theta, double(2 * j) / double(hd / 2)));
    m->inv_freq_h_[size_t(j)] = f;
    m->inv_freq_w_[size_t(q + j)] = f;
  }
  return m;
}

std::unique_ptr<Qwen2VisionModel> Qwen2VisionModel::from_gguf(const GgufFile& f) {
  const WeightStore& ws = f;  // tensor lookup (GgufFile::find looks up metadata keys)
  const std::string src = ws.source();
  // "clip.projector_type"; llama.cpp's files of mixed-modality models name it "clip.vision.projector_type"
  const std::string ptype = f.get_string_or("clip.projector_type", f.get_string_or("clip.vision.projector_type", ""));
  if (ptype != "qwen2vl_merger")
    throw Error(ErrorCode::Unsupported, "mmproj projector type \"" + ptype + "\" is not Qwen2-VL's (qwen2vl_merger)", src);
  auto m = std::make_unique<Qwen2VisionModel>();
  Qwen2VisionConfig& c = m->c_;
  c.embed_dim = f.get_u32("clip.vision.embedding_length");
  c.depth = f.get_u32("clip.vision.block_count");
  c.num_heads = f.get_u32("clip.vision.attention.head_count");
  // The MLP width is fc1's (v.blk.0.ffn_up) row count: llama.cpp's converter writes the merger's
  // output width (vision_config.hidden_size) as clip.vision.feed_forward_length for Qwen2-VL.
  const TensorInfo* up0 = ws.find("v.blk.0.ffn_up.weight");
  const int64_t F = up0 && up0->shape.size() == 2 ? up0->shape[0] : 0;
  c.patch_size = f.get_u32("clip.vision.patch_size");
  c.spatial_merge_size = f.get_u32_or("clip.vision.spatial_merge_size", 2);
  c.temporal_patch_size = 2;
  c.in_channels = 3;
  c.hidden_act = f.get_bool_or("clip.use_gelu", false) ? "gelu" : "quick_gelu";
  if (c.embed_dim <= 0 || c.num_heads <= 0 || c.embed_dim % c.num_heads != 0 || (c.embed_dim / c.num_heads) % 4 != 0 ||
      F <= 0 || F % c.embed_dim != 0 || c.depth <= 0)
    throw Error(ErrorCode::MalformedFile, "clip.vision sizes are inconsistent for a Qwen2-VL tower", src);
  c.mlp_ratio = F / c.embed_dim;
  const TensorInfo& mm2 = ws.get("mm.2.weight");
  if (mm2.shape.size() != 2) throw Error(ErrorCode::MalformedFile, "tensor mm.2.weight must be 2-D", src);
  c.hidden_size = mm2.shape[0];
  Loader L{ws, m->converted_};
  const int64_t D = c.embed_dim, P = c.patch_size, K = m->patch_dim();
  // Conv3d kernel [D, C, T, P, P] from its two temporal slices [D, C, P, P], as f32
  {
    std::vector<float> s[2];
    for (int k = 0; k < 2; ++k) {
      const TensorInfo& t = L.tensor(k == 0 ? "v.patch_embd.weight" : "v.patch_embd.weight.1", {D, c.in_channels, P, P});
      s[k].resize(size_t(t.numel()));
      if (t.dtype == DType::F32) std::memcpy(s[k].data(), t.data, s[k].size() * sizeof(float));
      else dequantize_row(t.dtype, t.data, s[k].data(), t.numel());
    }
    m->joined_.emplace_back(size_t(D * K) * sizeof(float));
    float* w = reinterpret_cast<float*>(m->joined_.back().data());
    for (int64_t d = 0; d < D; ++d)
      for (int64_t ch = 0; ch < c.in_channels; ++ch)
        for (int k = 0; k < 2; ++k)
          std::memcpy(w + d * K + (ch * 2 + k) * P * P, s[k].data() + (d * c.in_channels + ch) * P * P, size_t(P * P) * sizeof(float));
    m->patch_embd_ = LlamaWeight{w, DType::F32, D, K, w};
  }
  for (int64_t i = 0; i < c.depth; ++i) {
    const std::string b = "v.blk." + std::to_string(i) + ".";
    Qwen2VisionBlock k;
    k.norm1_w = L.vec(b + "ln1.weight", D);
    k.norm1_b = L.vec(b + "ln1.bias", D);
    k.norm2_w = L.vec(b + "ln2.weight", D);
    k.norm2_b = L.vec(b + "ln2.bias", D);
    // q, k, v rows joined into one [3D, D] matrix (same dtype: the rows' bytes; else f32)
    const LlamaWeight q = L.mat(b + "attn_q.weight", D, D), kk = L.mat(b + "attn_k.weight", D, D), v = L.mat(b + "attn_v.weight", D, D);
    const DType dt = (q.dtype == kk.dtype && kk.dtype == v.dtype) ? q.dtype : DType::F32;
    const size_t row_bytes = dt == DType::F32 ? size_t(D) * sizeof(float) : dtype_row_bytes(dt, D);
    m->joined_.emplace_back(3 * size_t(D) * row_bytes);
    uint8_t* dst = m->joined_.back().data();
    for (const LlamaWeight* w : {&q, &kk, &v}) {
      if (w->dtype == dt) std::memcpy(dst, w->data, size_t(D) * row_bytes);
      else
        for (int64_t r = 0; r < D; ++r)
          dequantize_row(w->dtype, static_cast<const uint8_t*>(w->data) + size_t(r) * dtype_row_bytes(w->dtype, D),
                         reinterpret_cast<float*>(dst) + r * D, D);
      dst += size_t(D) * row_bytes;
    }
    k.qkv = LlamaWeight{m->joined_.back().data(), dt, 3 * D, D, m->joined_.back().data()};
    m->converted_.emplace_back(size_t(3 * D));
    float* qb = m->converted_.back().data();
    const float* bq = L.vec(b + "attn_q.bias", D);
    const float* bk = L.vec(b + "attn_k.bias", D);
    const float* bv = L.vec(b + "attn_v.bias", D);
    std::memcpy(qb, bq, size_t(D) * sizeof(float));
    std::memcpy(qb + D, bk, size_t(D) * sizeof(float));
    std::memcpy(qb + 2 * D, bv, size_t(D) * sizeof(float));
    k.qkv_b = qb;
    k.proj = L.mat(b + "attn_out.weight", D, D);
    k.proj_b = L.vec(b + "attn_out.bias", D);
    k.fc1 = L.mat(b + "ffn_up.weight", F, D);
    k.fc1_b = L.vec(b + "ffn_up.bias", F);
    k.fc2 = L.mat(b + "ffn_down.weight", D, F);
    k.fc2_b = L.vec(b + "ffn_down.bias", D);
    m->blocks_.push_back(k);
  }
  const int64_t MD = D * m->merge_unit();
  m->ln_q_w_ = L.vec("v.post_ln.weight", D);
  m->ln_q_b_ = L.vec("v.post_ln.bias", D);
  m->mlp0_ = L.mat("mm.0.weight", MD, MD);
  m->mlp0_b_ = L.vec("mm.0.bias", MD);
  m->mlp2_ = L.mat("mm.2.weight", c.hidden_size, MD);
  m->mlp2_b_ = L.vec("mm.2.bias", c.hidden_size);
  const int64_t hd = D / c.num_heads, qn = hd / 4;
  m->inv_freq_h_.assign(size_t(hd / 2), 0.0f);
  m->inv_freq_w_.assign(size_t(hd / 2), 0.0f);
  for (int64_t j = 0; j < qn; ++j) {
    const float fr = float(1.0 / std::pow(c.rope_theta, double(2 * j) / double(hd / 2)));
    m->inv_freq_h_[size_t(j)] = fr;
    m->inv_freq_w_[size_t(qn + j)] = fr;
  }
  return m;
}

std::vector<std::array<int32_t, 2>> Qwen2VisionModel::patch_positions(const std::vector<GridThw>& grids, int64_t ms) {
  std::vector<std::array<int32_t, 2>> pos;
  for (const GridThw& g : grids)
    for (int64_t t = 0; t < g.t; ++t)
      for (int64_t bh = 0; bh < g.h / ms; ++bh)
        for (int64_t bw = 0; bw < g.w / ms; ++bw)
          for (int64_t ih = 0; ih < ms; ++ih)
            for (int64_t iw = 0; iw < ms; ++iw) pos.push_back({int32_t(bh * ms + ih), int32_t(bw * ms + iw)});
  return pos;
}

void Qwen2VisionModel::place_weights(Backend& be) {
  BackendWeights& w = weights_;
  w.begin(be);
  const int64_t D = c_.embed_dim, F = D * c_.mlp_ratio, MD = D * merge_unit();
  // Every product has many rows (an image's patches): the backend's many-row layout may serve them
  // (the CPU's bf16 GEMM panels).
  const GemmRows many = GemmRows::Many;
  w.place_gemm_matrix(patch_embd_, many);
  for (Qwen2VisionBlock& b : blocks_) {
    b.norm1_w = w.place(b.norm1_w, D), b.norm1_b = w.place(b.norm1_b, D);
    b.norm2_w = w.place(b.norm2_w, D), b.norm2_b = w.place(b.norm2_b, D);
    w.place_gemm_matrix(b.qkv, many), w.place_gemm_matrix(b.proj, many), w.place_gemm_matrix(b.fc1, many);
    w.place_gemm_matrix(b.fc2, many);
    b.qkv_b = w.place(b.qkv_b, 3 * D), b.proj_b = w.place(b.proj_b, D);
    b.fc1_b = w.place(b.fc1_b, F), b.fc2_b = w.place(b.fc2_b, D);
  }
  ln_q_w_ = w.place(ln_q_w_, D), ln_q_b_ = w.place(ln_q_b_, D);
  w.place_gemm_matrix(mlp0_, many), w.place_gemm_matrix(mlp2_, many);
  mlp0_b_ = w.place(mlp0_b_, MD), mlp2_b_ = w.place(mlp2_b_, c_.hidden_size);
  w.finish();
}

bool Qwen2VisionModel::encode(Backend& be, const float* patches, const std::vector<GridThw>& grids, float* out,
                              const std::atomic<bool>* abort) const {
  std::vector<DeviceTensor> tapped;
  if (!forward(be, patches, grids, {depth()}, &tapped, abort)) return false;
  const int64_t M = tapped[0].numel() / (c_.embed_dim * merge_unit());
  DeviceTensor o = DeviceTensor::output(be, out, M, c_.hidden_size);
  merger_mlp(be, tapped[0].data(), M, o.data());
  o.to_host(out);
  return true;
}

bool Qwen2VisionModel::merger_inputs(Backend& be, const float* patches, const std::vector<GridThw>& grids,
                                     const std::vector<int64_t>& layers, std::vector<std::vector<float>>* tapped,
                                     const std::atomic<bool>* abort) const {
  std::vector<DeviceTensor> t;
  if (!forward(be, patches, grids, layers, &t, abort)) return false;
  tapped->assign(t.size(), {});
  for (size_t k = 0; k < t.size(); ++k) {
    (*tapped)[k].resize(size_t(t[k].numel()));
    t[k].to_host((*tapped)[k].data());
  }
  return true;
}

bool Qwen2VisionModel::merger_inputs_device(Backend& be, const float* patches, const std::vector<GridThw>& grids,
                                            const std::vector<int64_t>& layers, std::vector<DeviceTensor>* tapped,
                                            const std::atomic<bool>* abort) const {
  return forward(be, patches, grids, layers, tapped, abort);
}

void Qwen2VisionModel::merger_mlp(Backend& be, const float* merged, int64_t M, float* out) const {
  weights_.require_usable_on(be, "Qwen2-VL patch merger");
  const int64_t MD = c_.embed_dim * merge_unit();
  DeviceTensor mh(be, DType::F32, {M, MD});
  be.gemm(merged, MD, mlp0_.data, mlp0_.dtype, mlp0_b_, mh.data(), MD, M, MD, MD);
  be.gelu_erf(mh.data(), mh.data(), M * MD);
  be.gemm(mh.data(), MD, mlp2_.data, mlp2_.dtype, mlp2_b_, out, c_.hidden_size, M, c_.hidden_size, MD);
}

bool Qwen2VisionModel::forward(Backend& be, const float* patches, const std::vector<GridThw>& grids,
                               const std::vector<int64_t>& layers, std::vector<DeviceTensor>* tapped,
                               const std::atomic<bool>* abort) const {
  weights_.require_usable_on(be, "Qwen2-VL vision tower");
  const int64_t ms = c_.spatial_merge_size, D = c_.embed_dim, H = c_.num_heads, hd = D / H, F = D * c_.mlp_ratio;
  int64_t N = 0;
  for (const GridThw& g : grids) {
    if (g.t <= 0 || g.h <= 0 || g.w <= 0 || g.h % ms != 0 || g.w % ms != 0)
      throw Error(ErrorCode::InvalidArgument, "vision grid (" + std::to_string(g.t) + ", " + std::to_string(g.h) + ", " +
                                                  std::to_string(g.w) + ") must be positive with h and w multiples of " +
                                                  std::to_string(ms));
    N += g.n_patches();
  }
  EMOLLM_CHECK_ARG(N > 0, "Qwen2VisionModel: no patches");
  int64_t deepest = 0;
  for (int64_t l : layers) {
    if (l < 0 || l > depth())
      throw Error(ErrorCode::InvalidArgument, "vision hidden-state index " + std::to_string(l) + " is outside [0, " +
                                                  std::to_string(depth()) + "]");
    deepest = std::max(deepest, l);
  }
  tapped->clear();
  tapped->resize(layers.size());
  auto act = [&](int64_t rows, int64_t cols) { return DeviceTensor(be, DType::F32, {rows, cols}); };
  DeviceTensor x = act(N, D), xn = act(N, D), qkv = act(N, 3 * D), att = act(N, D), tmp = act(N, D), hid = act(N, F);
  {
    const DeviceTensor px = DeviceTensor::input(be, patches, N, patch_dim());
    be.gemm(px.data(), patch_dim(), patch_embd_.data, patch_embd_.dtype, nullptr, x.data(), D, N, D, patch_dim());
  }
  // ln_q of the current hidden state into every tap that asks for depth `l`
  auto tap = [&](int64_t l) {
    for (size_t k = 0; k < layers.size(); ++k)
      if (layers[k] == l) {
        (*tapped)[k] = act(N / merge_unit(), merge_unit() * D);
        be.layernorm(x.data(), D, ln_q_w_, ln_q_b_, (*tapped)[k].data(), D, N, D, 1e-6f);
      }
  };
  tap(0);

  // The rotary positions (row, column) of every patch, in the backend's memory.
  const auto pos = patch_positions(grids, ms);
  std::vector<int32_t> host_pos(size_t(2 * N));
  for (int64_t i = 0; i < N; ++i) host_pos[size_t(i)] = pos[size_t(i)][0], host_pos[size_t(N + i)] = pos[size_t(i)][1];
  BackendBuffer positions(be, host_pos.size() * sizeof(int32_t));
  be.upload(positions.data(), host_pos.data(), host_pos.size() * sizeof(int32_t));
  const int32_t* rows = static_cast<const int32_t*>(positions.data());
  const int32_t* cols = rows + N;
  RopeParams rh;
  rh.head_dim = hd;
  rh.rot_dim = hd;
  rh.layout = RopeLayout::RotateHalf;
  RopeParams rw = rh;
  rh.inv_freq = inv_freq_h_.data();
  rw.inv_freq = inv_freq_w_.data();

  for (int64_t li = 0; li < deepest; ++li) {
    const Qwen2VisionBlock& b = blocks_[size_t(li)];
    if (abort && abort->load(std::memory_order_relaxed)) return false;
    be.layernorm(x.data(), D, b.norm1_w, b.norm1_b, xn.data(), D, N, D, 1e-6f);
    be.gemm(xn.data(), D, b.qkv.data, b.qkv.dtype, b.qkv_b, qkv.data(), 3 * D, N, 3 * D, D);
    for (int k = 0; k < 2; ++k) {  // q then k: rows then columns
      be.rope(qkv.data() + k * D, 3 * D, N, H, rows, rh);
      be.rope(qkv.data() + k * D, 3 * D, N, H, cols, rw);
    }
    int64_t off = 0;
    for (const GridThw& g : grids)
      for (int64_t t = 0; t < g.t; ++t) {  // one attention segment per temporal slice
        const int64_t len = g.h * g.w;
        AttentionParams ap;
        ap.n_q = ap.n_kv = len;
        ap.n_heads = ap.n_kv_heads = H;
        ap.head_dim = hd;
        ap.ldq = ap.ldk = ap.ldv = 3 * D;
        ap.ldo = D;
        ap.causal = false;
        ap.bf16_products = b.qkv.dtype == DType::BF16;  // a bf16 tower: bf16 attention products too
        const float* base = qkv.row(off);
        be.attention(base, base + D, base + 2 * D, att.row(off), ap);
        off += len;
      }
    be.gemm(att.data(), D, b.proj.data, b.proj.dtype, b.proj_b, tmp.data(), D, N, D, D);
    be.add(x.data(), tmp.data(), x.data(), N * D);
    be.layernorm(x.data(), D, b.norm2_w, b.norm2_b, xn.data(), D, N, D, 1e-6f);
    be.gemm(xn.data(), D, b.fc1.data, b.fc1.dtype, b.fc1_b, hid.data(), F, N, F, D);
    if (c_.hidden_act == "quick_gelu") be.quick_gelu(hid.data(), hid.data(), N * F);
    else be.gelu_erf(hid.data(), hid.data(), N * F);
    be.gemm(hid.data(), F, b.fc2.data, b.fc2.dtype, b.fc2_b, tmp.data(), D, N, D, F);
    be.add(x.data(), tmp.data(), x.data(), N * D);
    tap(li + 1);
  }
  return !(abort && abort->load(std::memory_order_relaxed));
}

}  // namespace emollm
