// HF safetensors -> llama.cpp GGUF pieces for the VLM native tests (LLaVA, LLaVA-NeXT, Qwen2-VL):
// f32 tensor reads, llama.cpp's q/k permute, and the LLaMA-family text model (llama / qwen2vl)
// in llama.cpp's key and tensor names. The vocabulary and the mmproj stay with each test.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../../native/loaders/weight_store.h"
#include "gguf_out.h"

namespace emollm_test {

/** A tensor of an f32 store as a vector. */
inline std::vector<float> tdata(const emollm::WeightStore& ws, const std::string& name) {
  const emollm::TensorInfo& t = ws.get(name);
  std::vector<float> v(size_t(t.numel()));
  std::memcpy(v.data(), t.data, v.size() * 4);
  return v;
}

/** llama.cpp's convert permute for interleaved RoPE (LLaMA q/k): each head's two halves interleaved. */
inline std::vector<float> permute_qk(const std::vector<float>& w, int64_t n_head, int64_t cols) {
  const int64_t rows = int64_t(w.size()) / cols, D = rows / n_head;
  std::vector<float> out(w.size());
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < D / 2; ++i)
      for (int64_t s = 0; s < 2; ++s)
        std::memcpy(&out[size_t((h * D + 2 * i + s) * cols)], &w[size_t((h * D + s * (D / 2) + i) * cols)], size_t(cols) * 4);
  return out;
}

/** The text model of an HF checkpoint, as llama.cpp's converter writes it. */
struct TextGgufSpec {
  std::string arch;         // "llama" (q/k permuted for interleaved RoPE) or "qwen2vl" (NEOX RoPE, q/k/v biases)
  std::string prefix;       // the decoder's tensor prefix: "language_model.model." or "model."
  std::string lm_head;      // "language_model.lm_head.weight" or "lm_head.weight"
  int64_t n_embd, n_layer, n_ff, n_head, n_head_kv, n_vocab, n_ctx;
  float rms_eps, rope_theta;
};

/** Adds the text model's hyper-parameters and tensors to `t` (the tokenizer keys are the caller's). */
inline void add_text_model(GgufOut& t, const emollm::WeightStore& st, const TextGgufSpec& s) {
  const std::string a = s.arch + ".";
  const bool llama = s.arch == "llama";
  const int64_t E = s.n_embd, hd = E / s.n_head, kv = s.n_head_kv * hd;
  t.kv_str("general.architecture", s.arch);
  t.kv_u32(a + "embedding_length", uint32_t(E));
  t.kv_u32(a + "block_count", uint32_t(s.n_layer));
  t.kv_u32(a + "feed_forward_length", uint32_t(s.n_ff));
  t.kv_u32(a + "attention.head_count", uint32_t(s.n_head));
  t.kv_u32(a + "attention.head_count_kv", uint32_t(s.n_head_kv));
  t.kv_f32(a + "attention.layer_norm_rms_epsilon", s.rms_eps);
  t.kv_f32(a + "rope.freq_base", s.rope_theta);
  t.kv_u32(a + "context_length", uint32_t(s.n_ctx));
  if (llama) t.kv_u32(a + "rope.dimension_count", uint32_t(hd));
  t.tensor("token_embd.weight", {s.n_vocab, E}, tdata(st, s.prefix + "embed_tokens.weight"));
  for (int64_t i = 0; i < s.n_layer; ++i) {
    const std::string p = s.prefix + "layers." + std::to_string(i) + ".", b = "blk." + std::to_string(i) + ".";
    const auto qk = [&](const char* n, int64_t heads) {
      std::vector<float> w = tdata(st, p + "self_attn." + n + ".weight");
      return llama ? permute_qk(w, heads, E) : w;  // qwen2: NEOX rope, not permuted
    };
    t.tensor(b + "attn_norm.weight", {E}, tdata(st, p + "input_layernorm.weight"));
    t.tensor(b + "attn_q.weight", {E, E}, qk("q_proj", s.n_head));
    t.tensor(b + "attn_k.weight", {kv, E}, qk("k_proj", s.n_head_kv));
    t.tensor(b + "attn_v.weight", {kv, E}, tdata(st, p + "self_attn.v_proj.weight"));
    if (!llama) {
      t.tensor(b + "attn_q.bias", {E}, tdata(st, p + "self_attn.q_proj.bias"));
      t.tensor(b + "attn_k.bias", {kv}, tdata(st, p + "self_attn.k_proj.bias"));
      t.tensor(b + "attn_v.bias", {kv}, tdata(st, p + "self_attn.v_proj.bias"));
    }
    t.tensor(b + "attn_output.weight", {E, E}, tdata(st, p + "self_attn.o_proj.weight"));
    t.tensor(b + "ffn_norm.weight", {E}, tdata(st, p + "post_attention_layernorm.weight"));
    t.tensor(b + "ffn_gate.weight", {s.n_ff, E}, tdata(st, p + "mlp.gate_proj.weight"));
    t.tensor(b + "ffn_up.weight", {s.n_ff, E}, tdata(st, p + "mlp.up_proj.weight"));
    t.tensor(b + "ffn_down.weight", {E, s.n_ff}, tdata(st, p + "mlp.down_proj.weight"));
  }
  t.tensor("output_norm.weight", {E}, tdata(st, s.prefix + "norm.weight"));
  t.tensor("output.weight", {s.n_vocab, E}, tdata(st, s.lm_head));
}

}  // namespace emollm_test
