// The LLaMA decoder: loading (Hugging Face safetensors or GGUF -> one LlamaModel) and the forward
// pass (LlamaContext::forward), llama2.c style. See llama.h for the contracts.
#include "model/llama.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <sys/stat.h>
#include <unordered_set>

#include "base/error.h"
#include "base/env_switch.h"
#include "core/tensor.h"
#include "core/filesystem.h"
#include "core/profiling_backend.h"
#include "loaders/gguf.h"
#include "loaders/hf_config.h"
#include "loaders/json.h"
#include "loaders/mapped_file.h"
#include "loaders/safetensors.h"
#include "loaders/weight_reader.h"

namespace emollm {

bool LlamaModel::is_eos(int32_t id) const {
  return std::find(hp_.eos_ids.begin(), hp_.eos_ids.end(), id) != hp_.eos_ids.end();
}

RopeParams LlamaModel::rope_params() const {
  RopeParams rp;
  rp.head_dim = hp_.head_dim;
  rp.rot_dim = hp_.rope_dim;
  rp.theta = hp_.rope_theta;
  rp.freq_scale = hp_.rope_freq_scale;
  rp.inv_freq = rope_inv_freq.empty() ? nullptr : rope_inv_freq.data();
  rp.layout = hp_.rope_layout;
  return rp;
}

AttentionParams LlamaModel::causal_attention_params(int64_t n_q, int64_t n_kv, int64_t q_pos0) const {
  AttentionParams ap;
  ap.n_q = n_q;
  ap.n_kv = n_kv;
  ap.n_heads = hp_.n_head;
  ap.n_kv_heads = hp_.n_head_kv;
  ap.head_dim = hp_.head_dim;
  ap.ldq = ap.ldo = hp_.n_head * hp_.head_dim;
  ap.ldk = ap.ldv = hp_.n_head_kv * hp_.head_dim;
  ap.causal = true;
  ap.q_pos0 = q_pos0;
  return ap;
}

// ================================================================ loading

namespace {

std::string dir_of(const std::string& p) {
  size_t slash = p.find_last_of('/');
  return slash == std::string::npos ? std::string(".") : p.substr(0, slash);
}
// True when the file starts with the GGUF magic. Throws FileNotFound when it cannot be opened.
bool has_gguf_magic(const std::string& path) {
  require_regular_file_if_exists(path);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw Error(ErrorCode::FileNotFound, "cannot open model file", path);
  char magic[4] = {0, 0, 0, 0};
  size_t got = std::fread(magic, 1, 4, f);
  std::fclose(f);
  return got == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

// M-RoPE (Qwen2-VL): per section, rope_dim/2 inverse frequencies with the other sections zeroed.
std::vector<std::vector<float>> mrope_inv_freqs(double theta, int64_t rope_dim, const std::vector<int64_t>& sections) {
  std::vector<std::vector<float>> out;
  const int64_t half = rope_dim / 2;
  int64_t lo = 0;
  for (int64_t sec : sections) {
    std::vector<float> f(size_t(half), 0.0f);
    for (int64_t i = lo; i < lo + sec && i < half; ++i) f[size_t(i)] = float(1.0 / std::pow(theta, double(2 * i) / double(rope_dim)));
    out.push_back(std::move(f));
    lo += sec;
  }
  return out;
}

// HF rope_scaling "llama3" (transformers' _compute_llama3_parameters), in double.
std::vector<float> llama3_inv_freq(double theta, int64_t rot_dim, const RopeScaling& rs) {
  const double factor = rs.factor, lo = rs.low_freq_factor, hi = rs.high_freq_factor;
  const double old_ctx = double(rs.original_max_position_embeddings);
  const double lo_wavelen = old_ctx / lo, hi_wavelen = old_ctx / hi;
  const double pi = 3.14159265358979323846;
  std::vector<float> out(size_t(rot_dim / 2));
  for (int64_t i = 0; i < rot_dim / 2; ++i) {
    const double f = std::pow(theta, -double(2 * i) / double(rot_dim));
    const double wavelen = 2 * pi / f;
    double r;
    if (wavelen < hi_wavelen) r = f;                     // high frequency: unchanged
    else if (wavelen > lo_wavelen) r = f / factor;       // low frequency: scaled
    else {                                               // in between: smooth blend
      const double smooth = (old_ctx / wavelen - lo) / (hi - lo);
      r = (1 - smooth) * f / factor + smooth * f;
    }
    out[size_t(i)] = float(r);
  }
  return out;
}

}  // namespace

struct LlamaLoader {
  LlamaModel& m;
  const WeightStore& ws;
  // Names of the tensors the model took (for the tensor-set check against the config).
  mutable std::unordered_set<std::string> used{};

  [[noreturn]] void malformed(const std::string& msg) const { throw Error(ErrorCode::MalformedFile, msg, ws.source()); }
  WeightReader reader{ws};  // the typed errors of a missing / misshapen / unsupported / misaligned tensor

  const TensorInfo& tensor(const std::string& name, const std::vector<int64_t>& shape) const {
    const TensorInfo& t = reader.tensor(name, shape);
    used.insert(name);
    return t;
  }
  LlamaWeight mat(const std::string& name, int64_t rows, int64_t cols) const {
    const TensorInfo& t = reader.matrix(name, rows, cols);
    used.insert(name);
    return LlamaWeight{t.data, t.dtype, rows, cols, t.data};
  }
  // A 1-D f32 vector of n, converted once when stored in another dtype.
  const float* vec(const std::string& name, int64_t n) const {
    used.insert(name);
    return reader.floats(name, {n}, m.converted_);
  }
  const float* opt_vec(const std::string& name, int64_t n, bool want) const {
    return want ? vec(name, n) : nullptr;
  }

  // Hyperparameters and weights of a Hugging Face LLaMA under the tensor-name prefix `mp`.
  static void load_hf(LlamaModel& m, const WeightStore& ws, const LlamaConfig& c, const std::string& mp,
                      const std::string& lm_head, const std::string& cfg_path);
  // The backend, then the weights placed on it.
  static void finish(LlamaModel& m, const LlamaLoadOptions& opts);
  static void place_weights(LlamaModel& m);

  // The tensor-set check (issue 9): every tensor under `prefix` (the decoder's namespace; "" for a
  // GGUF) or named `extra` must be one the model took. A layer index >= n_layer means the config
  // lists fewer layers than the checkpoint holds: an error (`code`), since the output would be
  // silently wrong. Other unused tensors are recorded as warnings. Missing tensors already failed
  // in tensor().
  void check_tensor_set(const std::string& prefix, const std::string& layers_word, const std::string& extra,
                        ErrorCode code, const std::string& where) const {
    const int64_t n_layer = m.hp_.n_layer;
    const std::string lp = prefix + layers_word;
    int64_t max_layer = -1;
    std::vector<std::string> unused;
    for (const TensorInfo& t : ws.tensors()) {
      const std::string& n = t.name;
      if (n.compare(0, prefix.size(), prefix) != 0 && n != extra) continue;
      if (used.count(n)) continue;
      if (n.compare(0, lp.size(), lp) == 0) {
        size_t i = lp.size(), j = i;
        while (j < n.size() && n[j] >= '0' && n[j] <= '9') ++j;
        if (j > i && j - i < 10 && j < n.size() && n[j] == '.') {
          const int64_t k = std::stoll(n.substr(i, j - i));
          if (k >= n_layer) {
            max_layer = std::max(max_layer, k);
            continue;
          }
        }
      }
      unused.push_back(n);
    }
    if (max_layer >= 0)
      throw Error(code,
                  "the configuration lists " + std::to_string(n_layer) + " layers but the checkpoint holds tensors of layer " +
                      std::to_string(max_layer) + " (" + std::to_string(max_layer + 1) +
                      " layers or more): refusing to run a truncated model; fix the layer count",
                  where);
    if (!unused.empty()) {
      std::string msg = std::to_string(unused.size()) + " tensor(s) in the checkpoint are not used by the model: ";
      for (size_t k = 0; k < unused.size() && k < 5; ++k) msg += (k ? ", " : "") + unused[k];
      if (unused.size() > 5) msg += ", ...";
      m.warnings_.push_back(msg);
    }
  }

  void check_hparams(ErrorCode code) const {
    const LlamaHparams& h = m.hp_;
    auto bad = [&](const std::string& msg) { throw Error(code, "invalid hyperparameters: " + msg, ws.source()); };
    if (h.n_embd <= 0 || h.n_layer <= 0 || h.n_head <= 0 || h.n_head_kv <= 0 || h.n_ff <= 0 || h.head_dim <= 0)
      bad("sizes must be positive");
    if (h.n_head % h.n_head_kv != 0)
      bad("n_head " + std::to_string(h.n_head) + " is not a multiple of n_head_kv " + std::to_string(h.n_head_kv));
    if (h.rope_dim <= 0 || h.rope_dim > h.head_dim || h.rope_dim % 2 != 0)
      bad("rope dimension " + std::to_string(h.rope_dim) + " must be even and <= head_dim " + std::to_string(h.head_dim));
    if (!(h.rope_theta > 0)) bad("rope theta must be > 0");
    if (!(h.rms_eps >= 0)) bad("rms norm epsilon must be >= 0");
  }
};

void LlamaLoader::load_hf(LlamaModel& mm, const WeightStore& ws, const LlamaConfig& c, const std::string& mp,
                          const std::string& lm_head, const std::string& cfg_path) {
  LlamaModel* m = &mm;
  LlamaHparams& hp = m->hp_;
  if (c.hidden_act != "silu")
    throw Error(ErrorCode::Unsupported, "hidden_act \"" + c.hidden_act + "\" is not supported (silu)", cfg_path);
  hp.n_vocab = c.vocab_size;
  hp.n_embd = c.hidden_size;
  hp.n_layer = c.num_hidden_layers;
  hp.n_head = c.num_attention_heads;
  hp.n_head_kv = c.num_key_value_heads;
  hp.head_dim = c.head_dim;
  hp.n_ff = c.intermediate_size;
  hp.n_ctx_train = c.max_position_embeddings;
  hp.rms_eps = float(c.rms_norm_eps);
  hp.rope_theta = float(c.rope_theta);
  hp.rope_dim = c.head_dim;
  hp.rope_layout = RopeLayout::RotateHalf;
  hp.sliding_window = c.sliding_window;
  const RopeScaling& rs = c.rope_scaling;
  if (rs.rope_type == "linear") {
    hp.rope_freq_scale = float(1.0 / rs.factor);
    hp.rope_scaling = "linear";
  } else if (rs.rope_type == "llama3") {
    if (rs.original_max_position_embeddings <= 0 || !(rs.high_freq_factor != rs.low_freq_factor))
      throw Error(ErrorCode::BadConfig, "rope_scaling llama3 needs original_max_position_embeddings and distinct freq factors", cfg_path);
    m->rope_inv_freq = llama3_inv_freq(c.rope_theta, hp.rope_dim, rs);
    hp.rope_scaling = "llama3";
  } else if (rs.rope_type != "default") {
    throw Error(ErrorCode::Unsupported, "rope_scaling type \"" + rs.rope_type + "\" is not supported (linear, llama3)", cfg_path);
  }
  if (!c.mrope_section.empty()) {  // Qwen2-VL: per-section masked inverse frequencies
    hp.mrope_section = c.mrope_section;
    m->mrope_inv_freq = mrope_inv_freqs(c.rope_theta, hp.rope_dim, c.mrope_section);
  }
  if (!c.bos_token_id.empty()) hp.bos_id = int32_t(c.bos_token_id[0]);
  for (int64_t e : c.eos_token_id) hp.eos_ids.push_back(int32_t(e));

  LlamaLoader L{*m, ws};
  L.check_hparams(ErrorCode::BadConfig);
  const int64_t E = hp.n_embd, qd = hp.n_head * hp.head_dim, kvd = hp.n_head_kv * hp.head_dim;
  m->tok_embd = L.mat(mp + "embed_tokens.weight", hp.n_vocab, E);
  for (int64_t i = 0; i < hp.n_layer; ++i) {
    const std::string p = mp + "layers." + std::to_string(i) + ".";
    LlamaLayer l;
    l.attn_norm = L.vec(p + "input_layernorm.weight", E);
    l.wq = L.mat(p + "self_attn.q_proj.weight", qd, E);
    l.wk = L.mat(p + "self_attn.k_proj.weight", kvd, E);
    l.wv = L.mat(p + "self_attn.v_proj.weight", kvd, E);
    l.wo = L.mat(p + "self_attn.o_proj.weight", E, qd);
    l.bq = L.opt_vec(p + "self_attn.q_proj.bias", qd, c.attention_bias || c.qkv_bias);
    l.bk = L.opt_vec(p + "self_attn.k_proj.bias", kvd, c.attention_bias || c.qkv_bias);
    l.bv = L.opt_vec(p + "self_attn.v_proj.bias", kvd, c.attention_bias || c.qkv_bias);
    l.bo = L.opt_vec(p + "self_attn.o_proj.bias", E, c.attention_bias);
    l.ffn_norm = L.vec(p + "post_attention_layernorm.weight", E);
    l.w_gate = L.mat(p + "mlp.gate_proj.weight", hp.n_ff, E);
    l.w_up = L.mat(p + "mlp.up_proj.weight", hp.n_ff, E);
    l.w_down = L.mat(p + "mlp.down_proj.weight", E, hp.n_ff);
    l.b_gate = L.opt_vec(p + "mlp.gate_proj.bias", hp.n_ff, c.mlp_bias);
    l.b_up = L.opt_vec(p + "mlp.up_proj.bias", hp.n_ff, c.mlp_bias);
    l.b_down = L.opt_vec(p + "mlp.down_proj.bias", E, c.mlp_bias);
    m->layers.push_back(l);
  }
  m->output_norm = L.vec(mp + "norm.weight", E);
  if (c.tie_word_embeddings) {
    m->output = m->tok_embd;
    m->tied_output = true;
  } else {
    m->output = L.mat(lm_head, hp.n_vocab, E);
  }
  L.check_tensor_set(mp, "layers.", lm_head, ErrorCode::BadConfig, cfg_path);
}

std::shared_ptr<LlamaModel> LlamaModel::load(const std::string& path_in, const LlamaLoadOptions& opts) {
  auto m = std::make_shared<LlamaModel>();
  std::string path = path_in;
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  LlamaHparams& hp = m->hp_;

  const bool dir = is_directory(path);
  if (!dir && has_gguf_magic(path)) {
    // ---------------------------------------------------------------- GGUF
    auto g = std::make_unique<GgufFile>(GgufFile::open(path));
    const GgufFile& f = *g;
    const WeightStore& fw = f;  // tensor lookup (GgufFile::find looks up metadata keys)
    m->format_ = "gguf";
    m->source_ = path;
    m->arch_ = f.get_string_or("general.architecture", "");
    // qwen2 / qwen2vl: the same decoder with q/k/v biases, NEOX (rotate-half) RoPE (llama.cpp's
    // converter does not permute their q/k), and for qwen2vl the M-RoPE sections.
    const bool qwen = m->arch_ == "qwen2" || m->arch_ == "qwen2vl";
    if (m->arch_ != "llama" && !qwen)
      throw Error(ErrorCode::Unsupported,
                  "architecture \"" + m->arch_ + "\" is not supported by the LLaMA decoder (expected \"llama\", \"qwen2\" or \"qwen2vl\")", path);
    const std::string a = m->arch_ + ".";
    hp.n_embd = f.get_u32(a + "embedding_length");
    hp.n_layer = f.get_u32(a + "block_count");
    hp.n_ff = f.get_u32(a + "feed_forward_length");
    hp.n_head = f.get_u32(a + "attention.head_count");
    hp.n_head_kv = f.get_u32_or(a + "attention.head_count_kv", uint32_t(hp.n_head));
    hp.head_dim = hp.n_head > 0 ? hp.n_embd / hp.n_head : 0;
    hp.head_dim = f.get_u32_or(a + "attention.key_length", uint32_t(hp.head_dim));
    hp.rms_eps = f.get_f32_or(a + "attention.layer_norm_rms_epsilon", 1e-5f);
    hp.rope_theta = f.get_f32_or(a + "rope.freq_base", 10000.0f);
    hp.rope_dim = f.get_u32_or(a + "rope.dimension_count", uint32_t(hp.head_dim));
    hp.n_ctx_train = f.get_u32_or(a + "context_length", 2048);
    hp.rope_layout = qwen ? RopeLayout::RotateHalf : RopeLayout::Interleaved;  // llama.cpp permuted llama's q/k only
    std::string scaling = f.get_string_or(a + "rope.scaling.type", "none");
    float factor = f.get_f32_or(a + "rope.scaling.factor", 0.0f);
    if (f.has(a + "rope.scale_linear")) {  // older key
      scaling = "linear";
      factor = f.get_f32(a + "rope.scale_linear");
    }
    if (scaling == "linear") {
      if (factor > 0 && factor != 1.0f) {
        hp.rope_freq_scale = 1.0f / factor;
        hp.rope_scaling = "linear";
      }
    } else if (scaling != "none" && !scaling.empty()) {
      throw Error(ErrorCode::Unsupported, "rope scaling type \"" + scaling + "\" is not supported (none, linear)", path);
    }
    if (f.has("tokenizer.ggml.bos_token_id")) hp.bos_id = int32_t(f.get_u32("tokenizer.ggml.bos_token_id"));
    if (f.has("tokenizer.ggml.eos_token_id")) hp.eos_ids.push_back(int32_t(f.get_u32("tokenizer.ggml.eos_token_id")));
    if (f.has("tokenizer.ggml.eot_token_id")) {
      int32_t eot = int32_t(f.get_u32("tokenizer.ggml.eot_token_id"));
      if (std::find(hp.eos_ids.begin(), hp.eos_ids.end(), eot) == hp.eos_ids.end()) hp.eos_ids.push_back(eot);
    }
    const TensorInfo& emb = f.get("token_embd.weight");
    if (emb.shape.size() != 2 || emb.shape[1] != hp.n_embd)
      throw Error(ErrorCode::MalformedFile, "tensor token_embd.weight has shape " + format_shape(emb.shape) +
                                                ", expected [n_vocab, " + std::to_string(hp.n_embd) + "]", path);
    hp.n_vocab = emb.shape[0];

    LlamaLoader L{*m, f};
    L.check_hparams(ErrorCode::MalformedFile);
    const int64_t E = hp.n_embd, qd = hp.n_head * hp.head_dim, kvd = hp.n_head_kv * hp.head_dim;
    m->tok_embd = L.mat("token_embd.weight", hp.n_vocab, E);
    for (int64_t i = 0; i < hp.n_layer; ++i) {
      const std::string p = "blk." + std::to_string(i) + ".";
      LlamaLayer l;
      l.attn_norm = L.vec(p + "attn_norm.weight", E);
      l.wq = L.mat(p + "attn_q.weight", qd, E);
      l.wk = L.mat(p + "attn_k.weight", kvd, E);
      l.wv = L.mat(p + "attn_v.weight", kvd, E);
      l.wo = L.mat(p + "attn_output.weight", E, qd);
      // Optional biases (some llama-arch GGUFs carry them).
      if (fw.find(p + "attn_q.bias")) l.bq = L.vec(p + "attn_q.bias", qd);
      if (fw.find(p + "attn_k.bias")) l.bk = L.vec(p + "attn_k.bias", kvd);
      if (fw.find(p + "attn_v.bias")) l.bv = L.vec(p + "attn_v.bias", kvd);
      if (fw.find(p + "attn_output.bias")) l.bo = L.vec(p + "attn_output.bias", E);
      l.ffn_norm = L.vec(p + "ffn_norm.weight", E);
      l.w_gate = L.mat(p + "ffn_gate.weight", hp.n_ff, E);
      l.w_up = L.mat(p + "ffn_up.weight", hp.n_ff, E);
      l.w_down = L.mat(p + "ffn_down.weight", E, hp.n_ff);
      m->layers.push_back(l);
    }
    if (m->arch_ == "qwen2vl") {  // rope.dimension_sections: [t, h, w, 0] in frequency pairs
      std::vector<int64_t> secs;
      for (int32_t x : f.get_i32_array(a + "rope.dimension_sections"))
        if (x > 0) secs.push_back(x);
      int64_t sum = 0;
      for (int64_t x : secs) sum += x;
      if (secs.size() != 3 || sum * 2 != hp.rope_dim)
        throw Error(ErrorCode::MalformedFile, a + "rope.dimension_sections must hold 3 positive sections summing to rope_dim / 2", path);
      hp.mrope_section = secs;
      m->mrope_inv_freq = mrope_inv_freqs(hp.rope_theta, hp.rope_dim, secs);
    }
    m->output_norm = L.vec("output_norm.weight", E);
    if (fw.find("output.weight")) {
      m->output = L.mat("output.weight", hp.n_vocab, E);
    } else {
      m->output = m->tok_embd;
      m->tied_output = true;
    }
    // LLaMA-3 style scaling is stored by llama.cpp as per-frequency divisors.
    if (fw.find("rope_freqs.weight")) {
      const float* ff = L.vec("rope_freqs.weight", hp.rope_dim / 2);
      m->rope_inv_freq.resize(size_t(hp.rope_dim / 2));
      for (int64_t i = 0; i < hp.rope_dim / 2; ++i)
        m->rope_inv_freq[size_t(i)] =
            float(std::pow(double(hp.rope_theta), -double(2 * i) / double(hp.rope_dim)) / double(ff[i]));
      hp.rope_scaling = "freq-factors";
    }
    L.check_tensor_set("", "blk.", "", ErrorCode::MalformedFile, path);
    m->store_ = std::move(g);
  } else {
    // ---------------------------------------------------------------- Hugging Face folder
    std::string folder = dir ? path : dir_of(path);
    const std::string cfg_path = folder + "/config.json";
    JsonValue root = load_json_file(cfg_path);
    const JsonValue* mt = root.find("model_type");
    m->arch_ = mt && mt->is_string() ? mt->as_string() : std::string();
    if (m->arch_ != "llama" && m->arch_ != "mistral")
      throw Error(ErrorCode::Unsupported,
                  "architecture \"" + m->arch_ + "\" is not supported by the LLaMA decoder (expected \"llama\" or \"mistral\")",
                  cfg_path);
    const LlamaConfig c = parse_llama_config(root, cfg_path);
    auto st = std::make_shared<SafetensorsStore>(SafetensorsStore::open(folder));
    m->format_ = "safetensors";
    m->source_ = folder;
    LlamaLoader::load_hf(*m, *st, c, "model.", "lm_head.weight", cfg_path);
    m->store_ = std::move(st);
  }
  LlamaLoader::finish(*m, opts);
  return m;
}

std::shared_ptr<LlamaModel> LlamaModel::from_hf_store(std::shared_ptr<WeightStore> store, const LlamaConfig& config,
                                                      const std::string& model_prefix, const std::string& lm_head,
                                                      const std::string& config_file, const LlamaLoadOptions& opts) {
  EMOLLM_CHECK_ARG(store != nullptr, "from_hf_store: no weight store");
  auto m = std::make_shared<LlamaModel>();
  m->arch_ = config.model_type.empty() ? std::string("llama") : config.model_type;
  // Qwen2 decoders (q/k/v biases, optionally M-RoPE) are reached through a multimodal model's store
  if (m->arch_ != "llama" && m->arch_ != "mistral" && m->arch_ != "qwen2" && m->arch_ != "qwen2_vl_text")
    throw Error(ErrorCode::Unsupported,
                "architecture \"" + m->arch_ + "\" is not supported by the LLaMA decoder (expected \"llama\" or \"mistral\")",
                config_file);
  m->format_ = store->format();
  m->source_ = store->source();
  LlamaLoader::load_hf(*m, *store, config, model_prefix, lm_head, config_file);
  m->store_ = std::move(store);
  LlamaLoader::finish(*m, opts);
  return m;
}

void LlamaLoader::finish(LlamaModel& mm, const LlamaLoadOptions& opts) {
  LlamaModel* m = &mm;
  const LlamaHparams& hp = m->hp_;
  if (!m->rope_inv_freq.empty() && int64_t(m->rope_inv_freq.size()) != hp.rope_dim / 2)
    throw Error(ErrorCode::Internal, "rope inv_freq size mismatch");

  RuntimeOptions ro;
  if (opts.device) {
    ro.device = *opts.device;
    ro.device_set = true;
  }
  ro.threads = opts.threads;
  // A tiny model (stories260K) runs faster on one thread than paying a pool hand-off per kernel.
  size_t weight_bytes = 0;
  for (const auto& t : m->store_->tensors()) weight_bytes += t.nbytes;
  if (ro.threads == 0 && weight_bytes < (size_t(8) << 20)) ro.threads = 1;
  m->backend_ = Runtime::instance().backend(ro);
  place_weights(*m);
}

namespace {
// On at start; set_embd_populate(false) for the test that the table's bytes are counted only when
// populated (no environment variable: EMOLLM_EMBD_POPULATE went in session 22, quiet ABBA 1.033).
std::atomic<bool> g_embd_populate{true};
std::atomic<uint64_t> g_embd_populated_bytes{0};
}  // namespace
void set_embd_populate(bool on) { g_embd_populate.store(on, std::memory_order_relaxed); }
bool embd_populate() { return g_embd_populate.load(std::memory_order_relaxed); }
uint64_t embd_populated_bytes() { return g_embd_populated_bytes.load(std::memory_order_relaxed); }

// Every weight the forward pass uses goes through the model's BackendWeights: on the CPU the
// pointers stay the mmap's (zero-copy), on a device each is uploaded once (the tied output finds
// tok_embd's copy) and LlamaWeight::host keeps the mmap. The matrices gemm() streams are offered
// to the backend for a layout of its own (place_gemm_matrix: the CPU's repacked q4_0 / q8_0 for
// decode, which then replaces the mapped bytes in memory); the pointers stay the mmap's, so the
// embedding lookup of a tied output still reads the original rows.
void LlamaLoader::place_weights(LlamaModel& m) {
  BackendWeights& w = m.weights_;
  w.begin(*m.backend_);
  const LlamaHparams& h = m.hp_;
  const int64_t E = h.n_embd, qd = h.n_head * h.head_dim, kvd = h.n_head_kv * h.head_dim, F = h.n_ff;
  w.place_matrix(m.tok_embd);
  for (LlamaLayer& l : m.layers) {
    l.attn_norm = w.place(l.attn_norm, E);
    w.place_gemm_matrix(l.wq), w.place_gemm_matrix(l.wk), w.place_gemm_matrix(l.wv), w.place_gemm_matrix(l.wo);
    l.bq = w.place(l.bq, qd), l.bk = w.place(l.bk, kvd), l.bv = w.place(l.bv, kvd), l.bo = w.place(l.bo, E);
    l.ffn_norm = w.place(l.ffn_norm, E);
    w.place_gemm_matrix(l.w_gate), w.place_gemm_matrix(l.w_up), w.place_gemm_matrix(l.w_down);
    l.b_gate = w.place(l.b_gate, F), l.b_up = w.place(l.b_up, F), l.b_down = w.place(l.b_down, E);
  }
  m.output_norm = w.place(m.output_norm, E);
  w.place_gemm_matrix(m.output);
  w.finish();  // the mmap pages may be released by the OS once the copies are done
  // The embedding rows a decode step reads in place (host memory, an untied table: a tied one's
  // mapped bytes are the packed output's to release): mapped now, not one page fault a token.
  if (embd_populate() && m.backend_->uses_host_memory() && m.tok_embd.data && m.tok_embd.data == m.tok_embd.host &&
      m.output.data != m.tok_embd.data) {
    const size_t bytes = size_t(m.tok_embd.rows) * dtype_row_bytes(m.tok_embd.dtype, m.tok_embd.cols);
    if (populate_read(m.tok_embd.data, bytes)) g_embd_populated_bytes.fetch_add(bytes, std::memory_order_relaxed);
  }
}

// ================================================================ context

namespace {

int64_t default_n_ctx(const LlamaModel& m, int64_t n_ctx) {
  if (n_ctx > 0) return n_ctx;
  const int64_t train = m.hparams().n_ctx_train;
  return train > 0 ? std::min<int64_t>(train, 4096) : 4096;
}
// A step carries rows of every sequence, so the budget is bounded by all the slots' positions
// (n_ctx x n_seq), not by one slot's: with short per-sequence contexts and many sequences the
// per-slot bound capped every step at one context's worth of rows.
int64_t default_n_batch(int64_t n_ctx, int64_t n_batch, int64_t n_seq) {
  return std::max<int64_t>(std::min<int64_t>(n_ctx * std::max<int64_t>(n_seq, 1), n_batch > 0 ? n_batch : 512), n_seq);
}
size_t floats_bytes(int64_t n) { return size_t(n) * sizeof(float) + kAlign; }
// Sections of RoPE positions per row: 3 for M-RoPE (temporal, height, width), else 1.
int64_t pos_sections(const LlamaModel& m) {
  return m.mrope_inv_freq.empty() ? 1 : int64_t(m.mrope_inv_freq.size());
}
// Rows of classifier output a device context computes per chunk before downloading them: one
// decode step of every sequence at once, and at least 16 rows for scoring.
int64_t device_out_rows(int64_t n_batch, int64_t n_seq) {
  return std::min<int64_t>(n_batch, std::max<int64_t>(n_seq, 16));
}

// Every byte a context allocates, so its arena is one block allocated once.
size_t context_bytes(const LlamaModel& m, int64_t n_ctx, int64_t n_batch, int64_t n_seq, int64_t kv_pool_positions,
                     size_t kv_esz) {
  const LlamaHparams& h = m.hparams();
  const int64_t kvd = h.n_head_kv * h.head_dim, qd = h.n_head * h.head_dim;
  auto kv_bytes = [&](int64_t n) { return size_t(n) * kv_esz + kAlign; };
  size_t b = 2 * kv_bytes(h.n_layer * kv_pool_positions * kvd);                     // K and V block pools
  if (!m.backend().supports_paged_kv()) b += 2 * kv_bytes(n_ctx * kvd);             // K, V staging
  b += 2 * floats_bytes(n_batch * h.n_embd);                                         // x, xn
  b += 2 * floats_bytes(n_batch * qd);                                               // q, att
  b += floats_bytes(n_batch * std::max(h.n_embd, qd));                               // tmp
  b += 2 * floats_bytes(n_batch * h.n_ff);                                           // gate, up
  b += 2 * floats_bytes(n_batch * kvd);                                              // new keys, values
  b += size_t(pos_sections(m) * n_batch) * sizeof(int32_t) + kAlign;                 // positions
  if (!m.backend().uses_host_memory()) {
    b += size_t(n_batch) * sizeof(int32_t) + kAlign;                                 // token ids
    b += floats_bytes(device_out_rows(n_batch, n_seq) * h.n_vocab);                  // classifier rows
  }
  return b;
}

}  // namespace

// log-softmax of row x at index id, in double.
double log_softmax_at(const float* x, int64_t n, int64_t id) {
  double mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, double(x[i]));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(double(x[i]) - mx);
  return double(x[id]) - mx - std::log(sum);
}

void LlamaContext::prefault_memory() {
  static const bool prefault_on = env_enabled("EMOLLM_PREFAULT");
  if (prefault_on) model_->backend().prefault(buffer_.data(), buffer_.bytes());
}

LlamaContext::LlamaContext(std::shared_ptr<const LlamaModel> model, const LlamaContextOptions& opts)
    : model_(std::move(model)),
      n_ctx_(default_n_ctx(*model_, opts.n_ctx)),
      n_batch_(default_n_batch(n_ctx_, opts.n_batch, opts.n_seq)),
      buffer_() {
  const LlamaHparams& h = model_->hparams();
  EMOLLM_CHECK_ARG(opts.n_ctx >= 0 && opts.n_batch >= 0, "n_ctx and n_batch must be >= 0");
  EMOLLM_CHECK_ARG(opts.n_seq >= 1 && opts.n_seq <= 1024, "n_seq must be in [1, 1024]");
  EMOLLM_CHECK_ARG(n_ctx_ <= (int64_t(1) << 24), "n_ctx " + std::to_string(n_ctx_) + " is too large");
  if (h.sliding_window > 0 && n_ctx_ > h.sliding_window)
    throw Error(ErrorCode::Unsupported, "n_ctx " + std::to_string(n_ctx_) + " exceeds the model's sliding_window " +
                                            std::to_string(h.sliding_window) + ", which is not implemented");
  const int64_t kvd = h.n_head_kv * h.head_dim, qd = h.n_head * h.head_dim, S = opts.n_seq;
  EMOLLM_CHECK_ARG(opts.kv_block_size >= 0 && opts.kv_block_size <= 4096 && opts.kv_block_size % 16 == 0,
                   "kv_block_size " + std::to_string(opts.kv_block_size) + " must be 0 (default 64) or a multiple of 16 up to 4096");
  EMOLLM_CHECK_ARG(opts.kv_positions >= 0, "kv_positions must be >= 0");
  EMOLLM_CHECK_ARG(opts.kv_type == DType::F32 || opts.kv_type == DType::F16 || opts.kv_type == DType::BF16,
                   std::string("kv_type ") + dtype_name(opts.kv_type) + " must be f32, f16 or bf16");
  model_->backend().require_kv_dtype(opts.kv_type);  // Unsupported, naming the backend, when it cannot
  kv_type_ = opts.kv_type;
  decode_bf16_products_ = opts.decode_bf16_products;
  kv_esz_ = dtype_row_bytes(kv_type_, 1);
  kv_bs_ = opts.kv_block_size > 0 ? opts.kv_block_size : 64;
  fused_row_ops_ = env_enabled("EMOLLM_FUSED_ROW_OPS");
  kvd_ = kvd;
  n_blocks_ = opts.kv_positions > 0 ? (opts.kv_positions + kv_bs_ - 1) / kv_bs_ : S * kv_blocks_for(n_ctx_);
  EMOLLM_CHECK_ARG(n_blocks_ <= (int64_t(1) << 30), "kv_positions is too large");
  buffer_.allocate(model_->backend(), context_bytes(*model_, n_ctx_, n_batch_, S, n_blocks_ * kv_bs_, kv_esz_));
  if (opts.prefault) prefault_memory();
  // Carves the backend block (context_bytes counted kAlign of slack per array).
  size_t offset = 0;
  auto carve = [&](size_t bytes) {
    offset = (offset + kAlign - 1) / kAlign * kAlign;
    void* p = static_cast<uint8_t*>(buffer_.data()) + offset;
    offset += bytes;
    if (offset > buffer_.bytes()) throw Error(ErrorCode::Internal, "context buffer too small");
    return p;
  };
  auto f32 = [&](int64_t count) { return static_cast<float*>(carve(size_t(count) * sizeof(float))); };
  auto kv = [&](int64_t count) { return static_cast<float*>(carve(size_t(count) * kv_esz_)); };
  k_cache_ = kv(h.n_layer * n_blocks_ * kv_bs_ * kvd);
  v_cache_ = kv(h.n_layer * n_blocks_ * kv_bs_ * kvd);
  if (!model_->backend().supports_paged_kv()) {
    k_stage_ = kv(n_ctx_ * kvd);
    v_stage_ = kv(n_ctx_ * kvd);
  }
  block_refs_.assign(size_t(n_blocks_), 0);
  free_blocks_.resize(size_t(n_blocks_));
  for (int64_t b = 0; b < n_blocks_; ++b) free_blocks_[size_t(b)] = int32_t(n_blocks_ - 1 - b);  // block 0 first
  x_ = f32(n_batch_ * h.n_embd);
  xn_ = f32(n_batch_ * h.n_embd);
  q_ = f32(n_batch_ * qd);
  att_ = f32(n_batch_ * qd);
  tmp_ = f32(n_batch_ * std::max(h.n_embd, qd));
  gate_ = f32(n_batch_ * h.n_ff);
  up_ = f32(n_batch_ * h.n_ff);
  k_new_ = f32(n_batch_ * kvd);
  v_new_ = f32(n_batch_ * kvd);
  pos_ = static_cast<int32_t*>(carve(size_t(pos_sections(*model_) * n_batch_) * sizeof(int32_t)));
  // A half cache is written through Backend::convert: a backend that lacks it refuses here, at
  // creation, rather than at the first pass (one element of the new-keys scratch into the cache).
  if (kv_type_ != DType::F32) model_->backend().convert(k_new_, DType::F32, k_cache_, kv_type_, 1);
  if (!model_->backend().uses_host_memory()) {
    ids_ = static_cast<int32_t*>(carve(size_t(n_batch_) * sizeof(int32_t)));
    out_rows_ = device_out_rows(n_batch_, S);
    out_dev_ = f32(out_rows_ * h.n_vocab);
    pos_host_.resize(size_t(pos_sections(*model_) * n_batch_));
  }
  logits_.assign(size_t(S * h.n_vocab), 0.0f);
  seqs_.resize(size_t(S));
  for (Seq& q : seqs_) {
    q.tokens.reserve(size_t(std::min<int64_t>(n_ctx_, 1 << 16)));
    if (!h.mrope_section.empty()) q.pos3.assign(size_t(n_ctx_ * 3), 0);
  }
}

const LlamaContext::Seq& LlamaContext::seq_at(int seq) const {
  EMOLLM_CHECK_ARG(seq >= 0 && seq < int(seqs_.size()),
                   "sequence " + std::to_string(seq) + " is outside [0, " + std::to_string(seqs_.size()) + ")");
  return seqs_[size_t(seq)];
}
LlamaContext::Seq& LlamaContext::seq_at(int seq) {
  return const_cast<Seq&>(static_cast<const LlamaContext*>(this)->seq_at(seq));
}

void LlamaContext::seq_truncate(int seq, int64_t n) {
  Seq& q = seq_at(seq);
  EMOLLM_CHECK_ARG(n >= 0 && n <= int64_t(q.tokens.size()), "truncate: " + std::to_string(n) + " is outside [0, n_past]");
  q.tokens.resize(size_t(n));
  release_blocks_from(q, size_t(kv_blocks_for(n)));
  if (n == 0) q.has_logits = false;
}

void LlamaContext::release_blocks_from(Seq& q, size_t keep) {
  for (size_t i = keep; i < q.blocks.size(); ++i) {
    const int32_t b = q.blocks[i];
    if (--block_refs_[size_t(b)] == 0) free_blocks_.push_back(b);
  }
  if (keep < q.blocks.size()) q.blocks.resize(keep);
}

int32_t LlamaContext::alloc_block() {
  if (free_blocks_.empty()) throw Error(ErrorCode::Internal, "KV block pool: no free block after the reservation");
  const int32_t b = free_blocks_.back();
  free_blocks_.pop_back();
  block_refs_[size_t(b)] = 1;
  return b;
}

namespace {
// On at start; set_fork_in_place(false): every fork copies (test_scheduler's reference,
// score_forks_ab's AB_SWITCH=fork_in_place).
std::atomic<bool> g_fork_in_place{true};
std::atomic<uint64_t> g_fork_in_place_writes{0};
}  // namespace
void set_fork_in_place(bool on) { g_fork_in_place.store(on, std::memory_order_relaxed); }
bool fork_in_place() { return g_fork_in_place.load(std::memory_order_relaxed); }
uint64_t fork_in_place_writes() { return g_fork_in_place_writes.load(std::memory_order_relaxed); }

void LlamaContext::reserve_blocks(const Segment* segs, int n_segs) {
  // A fork's partial block held by nobody but the fork and its own sequence (refs == 2): written
  // in place, as the sequence's own segment would be: the rows it writes lie past the sequence's
  // last position (pos0 is its n_past), which nothing reads, and the sequence takes no other
  // segment in a pass with forks. So of a prompt's forks only the first ones copy that block
  // (the LLaVA sample's 3 forks: 2 copies of 52 x 4096 x 2 x 32 floats instead of 3).
  auto fork_in_place = [&](const Segment& sg, int32_t b, int64_t refs) {
    return g_fork_in_place.load(std::memory_order_relaxed) && sg.fork >= 0 && refs == 2 && seqs_[size_t(sg.seq)].blocks[size_t(sg.pos0 / kv_bs_)] == b;
  };
  // Count first, so a step that cannot fit changes nothing.
  int64_t need = 0;
  std::vector<int32_t> copied;  // shared blocks already counted for a copy in this step
  for (int i = 0; i < n_segs; ++i) {
    const Seq& q = seq_of(segs[i]);
    const int64_t have = int64_t(q.blocks.size());
    need += std::max<int64_t>(0, kv_blocks_for(segs[i].pos0 + segs[i].n) - have);
    if (segs[i].pos0 % kv_bs_ != 0) {  // copy-on-write while others still hold it (the last writer keeps it)
      const int32_t b = q.blocks[size_t(segs[i].pos0 / kv_bs_)];
      const int64_t refs = block_refs_[size_t(b)] - std::count(copied.begin(), copied.end(), b);
      if (refs > 1 && !fork_in_place(segs[i], b, refs)) {
        ++need;
        copied.push_back(b);
      }
    }
  }
  if (need > kv_blocks_free())
    throw Error(ErrorCode::OutOfMemory, "KV cache pool exhausted: the step needs " + std::to_string(need) + " blocks of " +
                                            std::to_string(kv_bs_) + " positions, " + std::to_string(kv_blocks_free()) +
                                            " of " + std::to_string(n_blocks_) + " are free");
  Backend& be = model_->backend();
  const int64_t L = model_->hparams().n_layer;
  for (int i = 0; i < n_segs; ++i) {
    Seq& q = seq_of(segs[i]);
    const int64_t pos0 = segs[i].pos0;
    if (pos0 % kv_bs_ != 0) {
      int32_t& b = q.blocks[size_t(pos0 / kv_bs_)];
      if (block_refs_[size_t(b)] > 1 && fork_in_place(segs[i], b, block_refs_[size_t(b)])) {
        g_fork_in_place_writes.fetch_add(1, std::memory_order_relaxed);
      } else if (block_refs_[size_t(b)] > 1) {  // shared partial block: copy the filled rows, then write the copy
        const int32_t nb = alloc_block();
        const size_t bytes = size_t((pos0 % kv_bs_) * kvd_) * kv_esz_;
        for (int64_t l = 0; l < L; ++l) {
          be.copy(k_block(l, nb), k_block(l, b), bytes);
          be.copy(v_block(l, nb), v_block(l, b), bytes);
        }
        --block_refs_[size_t(b)];
        b = nb;
      }
    }
    while (int64_t(q.blocks.size()) < kv_blocks_for(pos0 + segs[i].n)) q.blocks.push_back(alloc_block());
  }
}

bool LlamaContext::forward_reserved(const Segment* segs, int n_segs, float* out, const std::atomic<bool>* abort) {
  // The per-op profile (core/profiling_backend.h) learns the pass's phase from here, not from
  // the ops' sizes: a decode step is one new token of each sequence.
  int64_t rows = 0;
  for (int i = 0; i < n_segs; ++i) rows += segs[i].n;
  const ProfileStep step(rows == n_segs, rows);
  reserve_blocks(segs, n_segs);
  auto unreserve = [&] {  // the blocks taken for the new positions go back; a copied block stays
    for (int i = 0; i < n_segs; ++i) release_blocks_from(seq_of(segs[i]), size_t(kv_blocks_for(segs[i].pos0)));
  };
  bool ok = false;
  try {
    ok = forward(segs, n_segs, out, abort);
  } catch (...) {
    unreserve();
    throw;
  }
  if (!ok) unreserve();
  return ok;
}

int64_t LlamaContext::kv_blocks_needed(int seq, int64_t n) const {
  const Seq& q = seq_at(seq);
  const int64_t pos0 = int64_t(q.tokens.size()), have = int64_t(q.blocks.size());
  int64_t need = std::max<int64_t>(0, kv_blocks_for(pos0 + n) - have);
  if (n > 0 && pos0 % kv_bs_ != 0 && block_refs_[size_t(q.blocks[size_t(pos0 / kv_bs_)])] > 1) ++need;
  return need;
}

int64_t LlamaContext::kv_blocks_needed_fork(int seq, int64_t n) const {
  const int64_t pos0 = seq_n_past(seq);
  if (n <= 0) return 0;
  return kv_blocks_for(pos0 + n) - kv_blocks_for(pos0) + (pos0 % kv_bs_ != 0 ? 1 : 0);
}

KvCacheStats LlamaContext::kv_stats() const {
  KvCacheStats s;
  s.block_size = kv_bs_;
  s.blocks_total = n_blocks_;
  s.blocks_used = n_blocks_ - kv_blocks_free();
  for (int32_t r : block_refs_) s.blocks_shared += r > 1 ? 1 : 0;
  for (const Seq& q : seqs_) s.block_refs += int64_t(q.blocks.size());
  s.bytes_per_block = 2 * model_->hparams().n_layer * kv_bs_ * kvd_ * int64_t(kv_esz_);
  s.type = kv_type_;
  return s;
}

int64_t LlamaContext::seq_common_prefix(int seq, const int32_t* tokens, int64_t n) const {
  const Seq& q = seq_at(seq);
  const int64_t limit = std::min<int64_t>(n, int64_t(q.tokens.size()));
  int64_t common = 0;
  while (common < limit && q.tokens[size_t(common)] == tokens[common]) ++common;
  return common;
}

void LlamaContext::seq_copy_prefix(int src, int dst, int64_t n) {
  const Seq& s = seq_at(src);
  Seq& d = seq_at(dst);
  EMOLLM_CHECK_ARG(n >= 0 && n <= int64_t(s.tokens.size()), "copy_prefix: " + std::to_string(n) + " is outside [0, n_past]");
  if (src == dst) return seq_truncate(dst, n);
  // Share by reference: take the new references before dropping dst's own (they may overlap).
  const size_t nb = size_t(kv_blocks_for(n));
  for (size_t i = 0; i < nb; ++i) ++block_refs_[size_t(s.blocks[i])];
  release_blocks_from(d, 0);
  d.blocks.assign(s.blocks.begin(), s.blocks.begin() + nb);
  d.tokens.assign(s.tokens.begin(), s.tokens.begin() + n);
  if (!d.pos3.empty()) std::copy(s.pos3.begin(), s.pos3.begin() + n * 3, d.pos3.begin());
  d.has_logits = false;  // the source's logits are of its own last token, not of position n-1
}

void LlamaContext::check_ids(const int32_t* tokens, int64_t n, bool have_embd) const {
  const int64_t vocab = model_->hparams().n_vocab;
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] >= vocab || (tokens[i] < 0 && !have_embd))
      throw Error(ErrorCode::InvalidArgument, "eval: token id " + std::to_string(tokens[i]) + " (at index " +
                                                  std::to_string(i) + ") is outside [0, " + std::to_string(vocab) + ")" +
                                                  (tokens[i] < 0 ? " and no input embeddings were given" : ""));
}

void LlamaContext::set_mrope_positions(Seq& q, int64_t start, int64_t n, const int32_t* pos3) {
  if (q.pos3.empty()) return;  // plain RoPE: the position is the index
  int32_t next = 0;
  for (int64_t i = 0; i < start * 3; ++i) next = std::max(next, q.pos3[size_t(i)] + 1);
  for (int64_t i = 0; i < n; ++i)
    for (int k = 0; k < 3; ++k) q.pos3[size_t((start + i) * 3 + k)] = pos3 ? pos3[i * 3 + k] : next + int32_t(i);
}

const float* LlamaContext::seq_eval(int seq, const int32_t* tokens, int64_t n, float* all_logits,
                                    const std::atomic<bool>* abort, const float* embd, const int32_t* pos3) {
  EMOLLM_CHECK_ARG(n > 0 && tokens != nullptr, "eval: no tokens");
  Seq& q = seq_at(seq);
  const int64_t start = int64_t(q.tokens.size());
  if (start + n > n_ctx_)
    throw Error(ErrorCode::InvalidArgument, "eval: " + std::to_string(n) + " tokens after " + std::to_string(start) +
                                                " cached do not fit the context of " + std::to_string(n_ctx_) + " tokens");
  check_ids(tokens, n, embd != nullptr);
  const int64_t E = model_->hparams().n_embd, V = n_vocab();
  set_mrope_positions(q, start, n, pos3);
  float* seq_logits = logits_.data() + int64_t(seq) * V;
  const float* e = embd;  // the next chunk's first embedding row
  for (int64_t off = 0; off < n; off += n_batch_) {
    Segment sg;
    sg.seq = seq;
    sg.tokens = tokens + off;
    sg.n = std::min(n_batch_, n - off);
    sg.pos0 = start + off;
    sg.embd = e;
    sg.all_logits = all_logits != nullptr;
    if (!forward_reserved(&sg, 1, all_logits ? all_logits + off * V : seq_logits, abort)) {
      seq_truncate(seq, start);
      return nullptr;
    }
    if (e)
      for (int64_t i = off; i < off + sg.n; ++i)
        if (tokens[i] < 0) e += E;
    q.tokens.insert(q.tokens.end(), tokens + off, tokens + off + sg.n);
  }
  if (all_logits) std::memcpy(seq_logits, all_logits + (n - 1) * V, size_t(V) * sizeof(float));
  q.has_logits = true;
  return seq_logits;
}

const float* LlamaContext::seq_eval_prompt(int seq, const int32_t* prompt, int64_t n, const std::atomic<bool>* abort,
                                           const float* embd, const int32_t* pos3) {
  EMOLLM_CHECK_ARG(n > 0 && prompt != nullptr, "eval_prompt: empty prompt");
  int64_t common = seq_common_prefix(seq, prompt, n);
  if (common == n) --common;  // always re-evaluate the last prompt token for its logits
  if (n > n_ctx_)
    throw Error(ErrorCode::InvalidArgument, "prompt of " + std::to_string(n) + " tokens does not fit the context of " +
                                                std::to_string(n_ctx_) + " tokens");
  seq_truncate(seq, common);
  const float* e = embd;
  if (e)
    for (int64_t i = 0; i < common; ++i)
      if (prompt[i] < 0) e += model_->hparams().n_embd;
  return seq_eval(seq, prompt + common, n - common, nullptr, abort, e, pos3 ? pos3 + common * 3 : nullptr);
}

bool LlamaContext::decode(const LlamaBatchRow* rows, int64_t n, float* out_logits, const std::atomic<bool>* abort) {
  EMOLLM_CHECK_ARG(n > 0 && rows != nullptr && out_logits != nullptr, "decode: no rows");
  std::vector<LlamaBatchSegment> segs(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) segs[size_t(r)] = LlamaBatchSegment{rows[r].seq, &rows[r].token, 1, false};
  return eval_batch(segs.data(), n, out_logits, abort);
}

int64_t LlamaContext::batch_output_rows(const LlamaBatchSegment* segs, int64_t n_segs) {
  int64_t rows = 0;
  for (int64_t i = 0; i < n_segs; ++i) rows += segs[i].all_logits ? segs[i].n : 1;
  return rows;
}

bool LlamaContext::eval_batch(const LlamaBatchSegment* segs, int64_t n_segs, float* out, const std::atomic<bool>* abort) {
  EMOLLM_CHECK_ARG(n_segs > 0 && segs != nullptr && out != nullptr, "eval_batch: no segments");
  // per sequence: 1 = a segment appends to it, 2 = fork segments read it
  std::vector<uint8_t> seen(seqs_.size(), 0);
  std::vector<Segment> fs(static_cast<size_t>(n_segs));
  int64_t rows = 0, n_forks = 0;
  for (int64_t i = 0; i < n_segs; ++i) {
    const LlamaBatchSegment& b = segs[i];
    const Seq& q = seq_at(b.seq);
    EMOLLM_CHECK_ARG(b.n > 0 && b.tokens != nullptr, "eval_batch: segment " + std::to_string(i) + " has no tokens");
    const uint8_t use = b.fork ? 2 : 1;
    EMOLLM_CHECK_ARG(!seen[size_t(b.seq)] || (use == 2 && seen[size_t(b.seq)] == 2),
                     "eval_batch: sequence " + std::to_string(b.seq) + " appears twice in one step");
    seen[size_t(b.seq)] = use;
    if (int64_t(q.tokens.size()) + b.n > n_ctx_)
      throw Error(ErrorCode::InvalidArgument, "eval_batch: sequence " + std::to_string(b.seq) + " cannot take " +
                                                  std::to_string(b.n) + " more tokens (context of " + std::to_string(n_ctx_) + ")");
    check_ids(b.tokens, b.n, b.embd != nullptr);
    rows += b.n;
    Segment& sg = fs[size_t(i)];
    sg.seq = b.seq;
    sg.tokens = b.tokens;
    sg.n = b.n;
    sg.pos0 = int64_t(q.tokens.size());
    sg.all_logits = b.all_logits;
    sg.embd = b.embd;
    if (b.fork) sg.fork = int(n_forks++);
  }
  EMOLLM_CHECK_ARG(rows <= n_batch_, "eval_batch: " + std::to_string(rows) + " rows exceed n_batch " + std::to_string(n_batch_));
  // Each fork: its sequence's cached positions shared by reference (reserve_blocks copies the
  // partially filled last block before the fork writes into it, or lets the last fork write it in
  // place when only the sequence and that fork hold it); all released after the pass.
  if (forks_.size() < size_t(n_forks)) forks_.resize(size_t(n_forks));
  struct ForkRelease {
    LlamaContext& c;
    int64_t n;
    ~ForkRelease() {
      for (int64_t f = 0; f < n; ++f) {
        c.release_blocks_from(c.forks_[size_t(f)], 0);
        c.forks_[size_t(f)].tokens.clear();
      }
    }
  } release{*this, n_forks};
  for (const Segment& sg : fs) {
    if (sg.fork < 0) continue;
    const Seq& q = seqs_[size_t(sg.seq)];
    Seq& f = forks_[size_t(sg.fork)];
    for (int32_t b : q.blocks) ++block_refs_[size_t(b)];
    f.blocks = q.blocks;
    f.tokens = q.tokens;
    f.pos3 = q.pos3;
    f.has_logits = false;
  }
  for (int64_t i = 0; i < n_segs; ++i) set_mrope_positions(seq_of(fs[size_t(i)]), fs[size_t(i)].pos0, fs[size_t(i)].n, segs[i].pos3);
  if (!forward_reserved(fs.data(), int(n_segs), out, abort)) return false;
  const int64_t V = n_vocab();
  int64_t o = 0;
  for (const Segment& sg : fs) {
    o += sg.all_logits ? sg.n : 1;
    if (sg.fork >= 0) continue;  // the sequence is unchanged
    Seq& q = seqs_[size_t(sg.seq)];
    q.tokens.insert(q.tokens.end(), sg.tokens, sg.tokens + sg.n);
    q.has_logits = true;
    std::memcpy(logits_.data() + int64_t(sg.seq) * V, out + (o - 1) * V, size_t(V) * sizeof(float));
  }
  return true;
}

void LlamaContext::check_continuations(int64_t n_prefix, const std::vector<std::vector<int32_t>>& continuations) const {
  const int64_t V = n_vocab();
  for (size_t c = 0; c < continuations.size(); ++c) {
    const auto& cont = continuations[c];
    if (n_prefix + int64_t(cont.size()) - 1 > n_ctx_)
      throw Error(ErrorCode::InvalidArgument, "score: prefix of " + std::to_string(n_prefix) + " tokens plus continuation " +
                                                  std::to_string(c) + " of " + std::to_string(cont.size()) +
                                                  " tokens does not fit the context of " + std::to_string(n_ctx_) + " tokens");
    for (size_t j = 0; j < cont.size(); ++j)
      if (cont[j] < 0 || cont[j] >= V)
        throw Error(ErrorCode::InvalidArgument, "score: continuation " + std::to_string(c) + " token id " +
                                                    std::to_string(cont[j]) + " (at index " + std::to_string(j) +
                                                    ") is outside [0, " + std::to_string(V) + ")");
  }
}

bool LlamaContext::seq_score_continuation(int seq, const float* prefix_logits, const std::vector<int32_t>& cont,
                                          ContinuationScore* out, const std::atomic<bool>* abort) {
  const int64_t V = n_vocab(), m = int64_t(cont.size()), n_prefix = seq_n_past(seq);
  *out = ContinuationScore{};
  if (m == 0) return true;
  out->token_logprobs.resize(size_t(m));
  out->token_logprobs[0] = log_softmax_at(prefix_logits, V, cont[0]);
  if (m > 1) {
    std::vector<float> rows(size_t((m - 1) * V));
    const float* r = seq_eval(seq, cont.data(), m - 1, rows.data(), abort);
    seq_truncate(seq, n_prefix);
    if (!r) return false;
    for (int64_t j = 1; j < m; ++j) out->token_logprobs[size_t(j)] = log_softmax_at(rows.data() + (j - 1) * V, V, cont[size_t(j)]);
  }
  for (double lp : out->token_logprobs) out->logprob += lp;
  return true;
}

bool LlamaContext::score_continuations(const int32_t* prefix, int64_t n_prefix,
                                       const std::vector<std::vector<int32_t>>& continuations,
                                       std::vector<ContinuationScore>* out, const std::atomic<bool>* abort,
                                       const float* embd, const int32_t* pos3) {
  EMOLLM_CHECK_ARG(out != nullptr, "score_continuations: no output");
  EMOLLM_CHECK_ARG(n_prefix > 0 && prefix != nullptr, "score_continuations: empty prefix");
  check_continuations(n_prefix, continuations);
  const int64_t V = n_vocab();
  out->clear();
  const float* pl = eval_prompt(prefix, n_prefix, abort, embd, pos3);
  if (!pl) return false;
  std::vector<float> prefix_logits(pl, pl + V);
  for (const auto& cont : continuations) {
    if (abort && abort->load(std::memory_order_relaxed)) return false;
    ContinuationScore sc;
    if (!seq_score_continuation(0, prefix_logits.data(), cont, &sc, abort)) return false;
    out->push_back(std::move(sc));
  }
  std::memcpy(logits_.data(), prefix_logits.data(), size_t(V) * sizeof(float));
  seqs_[0].has_logits = true;
  return true;
}

// ---------------------------------------------------------------- the forward pass
namespace {
// On at start; the setters are for test_decode_overheads (each path against the other, bit for
// bit) and decode_switch_ab. No environment variable (EMOLLM_KV_DIRECT_WRITE,
// EMOLLM_NORM_PREFETCH went in session 22).
std::atomic<bool> g_kv_direct{true}, g_norm_prefetch{true};
std::atomic<uint64_t> g_kv_direct_passes{0}, g_norm_prefetch_calls{0};
}  // namespace
uint64_t kv_direct_passes() { return g_kv_direct_passes.load(std::memory_order_relaxed); }
uint64_t norm_prefetch_calls() { return g_norm_prefetch_calls.load(std::memory_order_relaxed); }
void set_kv_direct_write(bool on) { g_kv_direct.store(on, std::memory_order_relaxed); }
bool kv_direct_write() { return g_kv_direct.load(std::memory_order_relaxed); }
void set_norm_prefetch(bool on) { g_norm_prefetch.store(on, std::memory_order_relaxed); }
bool norm_prefetch() { return g_norm_prefetch.load(std::memory_order_relaxed); }

// The segments' rows (sum of n <= n_batch) stacked into one pass: every weight GEMM runs over all
// rows (M = rows); each segment's new keys/values go to its sequence's slot at pos0.., and its
// queries attend to that slot only. `out` receives the output rows (see Segment::all_logits).
bool LlamaContext::forward(const Segment* segs, int n_segs, float* out, const std::atomic<bool>* abort) {
  const LlamaModel& m = *model_;
  const LlamaHparams& h = m.hparams();
  Backend& be = m.backend();
  const int64_t E = h.n_embd, D = h.head_dim, H = h.n_head, Hkv = h.n_head_kv, F = h.n_ff;
  const int64_t qd = H * D, kvd = Hkv * D, V = h.n_vocab;
  const bool mrope = !m.mrope_inv_freq.empty();
  // On a device the host arrays (token ids, positions, output rows) travel through ids_, pos_ and
  // out_dev_; on the CPU the kernels read and write them in place.
  const bool host_mem = be.uses_host_memory();

  const RopeParams rp = m.rope_params();

  // row offset of each segment in the stacked batch
  std::vector<int64_t> row0(size_t(n_segs) + 1, 0);
  for (int i = 0; i < n_segs; ++i) row0[size_t(i) + 1] = row0[size_t(i)] + segs[i].n;
  const int64_t n = row0[size_t(n_segs)];
  if (n > n_batch_) throw Error(ErrorCode::Internal, "forward: more rows than n_batch");

  // RoPE positions of the rows, set once per pass: [sections][n] (M-RoPE: temporal, height,
  // width; else one section, the index in the sequence). A device gets them in one upload.
  const int64_t n_sec = pos_sections(m);
  {
    int32_t* pos = host_mem ? pos_ : pos_host_.data();
    for (int64_t sec = 0; sec < n_sec; ++sec)
      for (int i = 0; i < n_segs; ++i) {
        const Segment& sg = segs[i];
        for (int64_t t = 0; t < sg.n; ++t)
          pos[sec * n + row0[size_t(i)] + t] =
              mrope ? seq_of(sg).pos3[size_t((sg.pos0 + t) * 3 + sec)] : int32_t(sg.pos0 + t);
      }
    if (!host_mem) be.upload(pos_, pos, size_t(n_sec * n) * sizeof(int32_t));
  }

  // token embeddings -> residual stream x [n, E]; negative ids take the next row of the segment's embd
  for (int i = 0; i < n_segs; ++i) {
    const Segment& sg = segs[i];
    float* xs = x_ + row0[size_t(i)] * E;
    const float* embd = sg.embd;
    const int32_t* ids = sg.tokens;  // the ids as the backend reads them
    if (!host_mem) {
      be.upload(ids_ + row0[size_t(i)], sg.tokens, size_t(sg.n) * sizeof(int32_t));
      ids = ids_ + row0[size_t(i)];
    }
    if (!embd) {
      be.embedding_lookup(m.tok_embd.data, m.tok_embd.dtype, V, E, ids, sg.n, xs, E);
      continue;
    }
    for (int64_t t = 0; t < sg.n;) {
      int64_t r = t;
      if (sg.tokens[t] < 0) {
        while (r < sg.n && sg.tokens[r] < 0) ++r;
        be.upload(xs + t * E, embd, size_t((r - t) * E) * sizeof(float));  // caller's host rows -> the residual stream
        embd += (r - t) * E;
      } else {
        while (r < sg.n && sg.tokens[r] >= 0) ++r;
        be.embedding_lookup(m.tok_embd.data, m.tok_embd.dtype, V, E, ids + t, r - t, xs + t * E, E);
      }
      t = r;
    }
  }

  // Whether the output rows are all the rows, in order (every segment one row, or all its rows'
  // logits: a decode step), so the last layer's residual add can take the output norm with it.
  bool out_all_rows = true;
  for (int i = 0; i < n_segs; ++i) out_all_rows = out_all_rows && (segs[i].all_logits || segs[i].n == 1);
  // Fused row ops (EMOLLM_FUSED_ROW_OPS=0 at the context's creation: the separate calls, same bits):
  // each residual add takes the RMSNorm after it (add_rmsnorm), and q and k are rotated in one call.
  const bool fused = fused_row_ops_;
  bool xn_ready = false;  // xn_ = rmsnorm(x_, attn_norm of this layer) already (the previous layer's add)
  // One segment whose new positions lie in one block of an f32 cache: k / v straight into that
  // block (kv_direct_write), at block kv_blk, row kv_off of it, in every layer.
  int32_t kv_blk = -1;
  int64_t kv_off = 0;
  if (n_segs == 1 && kv_type_ == DType::F32 && kv_direct_write()) {
    kv_off = segs[0].pos0 % kv_bs_;
    if (kv_off + segs[0].n <= kv_bs_) kv_blk = seq_of(segs[0]).blocks[size_t(segs[0].pos0 / kv_bs_)];
  }
  if (kv_blk >= 0) g_kv_direct_passes.fetch_add(1, std::memory_order_relaxed);
  const bool prefetch_norms = n == 1 && norm_prefetch();
  if (prefetch_norms) g_norm_prefetch_calls.fetch_add(uint64_t(h.n_layer) * (fused ? 4 : 2), std::memory_order_relaxed);

  for (int64_t l = 0; l < h.n_layer; ++l) {
    if (abort && abort->load(std::memory_order_relaxed)) return false;
    const LlamaLayer& L = m.layers[size_t(l)];

    // ---- attention: xn = rmsnorm(x); q, k, v projections over all rows
    if (!xn_ready) be.rmsnorm(x_, E, L.attn_norm, xn_, E, n, E, h.rms_eps);
    xn_ready = false;
    // one call for the three products of xn (the CPU backend runs a decode step's as one dispatch)
    // (k / v into the cache block itself when kv_blk >= 0: the copies below are then skipped)
    float* const k_rows = kv_blk >= 0 ? k_block(l, kv_blk) + kv_off * kvd : k_new_;
    float* const v_rows = kv_blk >= 0 ? v_block(l, kv_blk) + kv_off * kvd : v_new_;
    const Backend::GemmOutput qkv[3] = {{L.wq.data, L.wq.dtype, L.bq, q_, qd, qd},
                                        {L.wk.data, L.wk.dtype, L.bk, k_rows, kvd, kvd},
                                        {L.wv.data, L.wv.dtype, L.bv, v_rows, kvd, kvd}};
    be.gemm_multi(xn_, E, qkv, 3, n, E);
    if (!mrope) {
      if (fused) {
        be.rope_pair(q_, qd, H, k_rows, kvd, Hkv, n, pos_, rp);
      } else {
        be.rope(q_, qd, n, H, pos_, rp);
        be.rope(k_rows, kvd, n, Hkv, pos_, rp);
      }
    } else {  // M-RoPE: one pass per section, each rotating only its frequency bands
      for (size_t s = 0; s < m.mrope_inv_freq.size(); ++s) {
        RopeParams sp = rp;
        sp.inv_freq = m.mrope_inv_freq[s].data();
        be.rope(q_, qd, n, H, pos_ + int64_t(s) * n, sp);
        be.rope(k_rows, kvd, n, Hkv, pos_ + int64_t(s) * n, sp);
      }
    }
    // per segment: new keys/values into its blocks, causal GQA attention over positions 0..pos0+n-1
    for (int i = 0; i < n_segs && kv_blk < 0; ++i) {
      const Segment& sg = segs[i];
      const int64_t r0 = row0[size_t(i)];
      const std::vector<int32_t>& table = seq_of(sg).blocks;  // reserve_blocks made them writable
      for (int64_t t = 0; t < sg.n;) {
        const int64_t pos = sg.pos0 + t, off = pos % kv_bs_, run = std::min(sg.n - t, kv_bs_ - off);
        const int32_t b = table[size_t(pos / kv_bs_)];
        if (kv_type_ == DType::F32) {
          be.copy(k_block(l, b) + off * kvd, k_new_ + (r0 + t) * kvd, size_t(run * kvd) * sizeof(float));
          be.copy(v_block(l, b) + off * kvd, v_new_ + (r0 + t) * kvd, size_t(run * kvd) * sizeof(float));
        } else {  // half cache: each value rounded once (nearest even) as it is written
          be.convert(k_new_ + (r0 + t) * kvd, DType::F32, kv_elems(k_block(l, b), off * kvd), kv_type_, run * kvd);
          be.convert(v_new_ + (r0 + t) * kvd, DType::F32, kv_elems(v_block(l, b), off * kvd), kv_type_, run * kvd);
        }
        t += run;
      }
    }
    if (k_stage_) {  // no paged attention on this backend: each segment's blocks gathered contiguous, one at a time
      for (int i = 0; i < n_segs; ++i) {
        const Segment& sg = segs[i];
        const std::vector<int32_t>& table = seq_of(sg).blocks;
        const int64_t n_kv = sg.pos0 + sg.n, nb = kv_blocks_for(n_kv);
        for (int64_t j = 0; j < nb; ++j) {
          const size_t bytes = size_t(std::min(kv_bs_, n_kv - j * kv_bs_) * kvd) * kv_esz_;
          be.copy(kv_elems(k_stage_, j * kv_bs_ * kvd), k_block(l, table[size_t(j)]), bytes);
          be.copy(kv_elems(v_stage_, j * kv_bs_ * kvd), v_block(l, table[size_t(j)]), bytes);
        }
        const int64_t r0 = row0[size_t(i)];
        AttentionParams ap = m.causal_attention_params(sg.n, n_kv, sg.pos0);
        ap.kv_dtype = kv_type_;
        ap.bf16_products = decode_bf16_products_ && sg.n == 1;  // one-token segments (decode) only
        be.attention(q_ + r0 * qd, k_stage_, v_stage_, att_ + r0 * qd, ap);
      }
    } else {  // paged: every segment's attention through its block table, all in one backend call
      int64_t total_blocks = 0;
      for (int i = 0; i < n_segs; ++i) total_blocks += kv_blocks_for(segs[i].pos0 + segs[i].n);
      k_table_.resize(size_t(total_blocks));
      v_table_.resize(size_t(total_blocks));
      att_items_.resize(size_t(n_segs));
      int64_t at = 0;
      for (int i = 0; i < n_segs; ++i) {
        const Segment& sg = segs[i];
        const std::vector<int32_t>& table = seq_of(sg).blocks;
        const int64_t n_kv = sg.pos0 + sg.n, nb = kv_blocks_for(n_kv), r0 = row0[size_t(i)];
        for (int64_t j = 0; j < nb; ++j) {
          k_table_[size_t(at + j)] = k_block(l, table[size_t(j)]);
          v_table_[size_t(at + j)] = v_block(l, table[size_t(j)]);
        }
        AttentionBatchItem& it = att_items_[size_t(i)];
        it.q = q_ + r0 * qd;
        it.k = it.v = nullptr;
        it.out = att_ + r0 * qd;
        it.p = m.causal_attention_params(sg.n, n_kv, sg.pos0);
        it.p.k_blocks = k_table_.data() + at;
        it.p.v_blocks = v_table_.data() + at;
        it.p.kv_block_size = kv_bs_;
        it.p.kv_dtype = kv_type_;
        it.p.bf16_products = decode_bf16_products_ && sg.n == 1;  // one-token segments (decode) only
        at += nb;
      }
      // one call for every segment (session 21 removed EMOLLM_BATCHED_ATTENTION=0, one call a
      // segment: quiet, 8 sequences decoding, batched / per segment 1.005 at 1 thread, 1.015 at 2)
      be.attention_batch(att_items_.data(), n_segs);
    }
    const Backend::GemmOutput gate_up[2] = {{L.w_gate.data, L.w_gate.dtype, L.b_gate, gate_, F, F},
                                            {L.w_up.data, L.w_up.dtype, L.b_up, up_, F, F}};
    // output projection, residual
    if (prefetch_norms) {  // what the add_rmsnorm after o reads besides o's output
      be.prefetch(L.ffn_norm, size_t(E) * sizeof(float));
      be.prefetch(x_, size_t(E) * sizeof(float));
    }
    be.gemm(att_, qd, L.wo.data, L.wo.dtype, L.bo, tmp_, E, n, E, qd);

    // ---- MLP: x += down(silu(gate(xn)) * up(xn)), xn = rmsnorm(x)
    if (fused) {
      be.add_rmsnorm(x_, E, tmp_, E, L.ffn_norm, xn_, E, n, E, h.rms_eps);
    } else {
      be.add(x_, tmp_, x_, n * E);
      be.rmsnorm(x_, E, L.ffn_norm, xn_, E, n, E, h.rms_eps);
    }
    be.gemm_multi(xn_, E, gate_up, 2, n, E);
    be.swiglu(gate_, up_, gate_, n * F);
    if (prefetch_norms && fused) {  // what the add_rmsnorm after down reads besides down's output
      const float* next_norm = l + 1 < h.n_layer ? m.layers[size_t(l + 1)].attn_norm : m.output_norm;
      be.prefetch(next_norm, size_t(E) * sizeof(float));
      be.prefetch(x_, size_t(E) * sizeof(float));
    }
    be.gemm(gate_, F, L.w_down.data, L.w_down.dtype, L.b_down, tmp_, E, n, E, F);
    if (!fused) {
      be.add(x_, tmp_, x_, n * E);
    } else if (l + 1 < h.n_layer) {  // the next layer's attention norm with the add
      be.add_rmsnorm(x_, E, tmp_, E, m.layers[size_t(l + 1)].attn_norm, xn_, E, n, E, h.rms_eps);
      xn_ready = true;
    } else if (out_all_rows) {  // the output norm with the add: the output rows are all the rows
      be.add_rmsnorm(x_, E, tmp_, E, m.output_norm, xn_, E, n, E, h.rms_eps);
      xn_ready = true;
    } else {
      be.add(x_, tmp_, x_, n * E);
    }
  }
  if (abort && abort->load(std::memory_order_relaxed)) return false;

  // ---- final norm and classifier over the output rows only (gathered into xn)
  int64_t n_out = xn_ready ? n : 0;
  for (int i = 0; i < n_segs && !xn_ready; ++i) {
    const Segment& sg = segs[i];
    const int64_t r0 = row0[size_t(i)];
    if (sg.all_logits) {
      be.rmsnorm(x_ + r0 * E, E, m.output_norm, xn_ + n_out * E, E, sg.n, E, h.rms_eps);
      n_out += sg.n;
    } else {
      be.rmsnorm(x_ + (r0 + sg.n - 1) * E, E, m.output_norm, xn_ + n_out * E, E, 1, E, h.rms_eps);
      n_out += 1;
    }
  }
  if (host_mem) {
    be.gemm(xn_, E, m.output.data, m.output.dtype, nullptr, out, V, n_out, V, E);
    return true;
  }
  // device: out_rows_ rows at a time into out_dev_, then down to the caller's host rows
  for (int64_t r = 0; r < n_out; r += out_rows_) {
    const int64_t rows = std::min(out_rows_, n_out - r);
    be.gemm(xn_ + r * E, E, m.output.data, m.output.dtype, nullptr, out_dev_, V, rows, V, E);
    be.download(out + r * V, out_dev_, size_t(rows * V) * sizeof(float));
  }
  return true;
}

}  // namespace emollm
