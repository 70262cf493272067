// A random-weight LLaMA GGUF (llama.cpp's keys and tensor names) for the decoder tests that
// compare two contexts of one model: the fused row ops (test_fused_row_ops.cpp) and the decode
// attention's bf16 products (test_decode_bf16_products.cpp).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "base/dtype.h"
#include "gguf_out.h"
#include "testing.h"

namespace emollm_test {

struct RandomLlamaShape {
  int64_t n_embd = 128, n_head = 4, n_head_kv = 2, head_dim = 32, n_ff = 256, n_vocab = 160, n_layer = 2;
  emollm::DType weights = emollm::DType::F32;  // the matrices' type (norms stay f32)
  uint32_t first_seed = 1;                     // each tensor takes the next seed, in file order
};

// ggml's type number of the matrix types the writer takes.
inline uint32_t ggml_type_of(emollm::DType t) {
  switch (t) {
    case emollm::DType::F32: return 0;
    case emollm::DType::F16: return 1;
    case emollm::DType::Q4_0: return 2;
    case emollm::DType::Q8_0: return 8;
    case emollm::DType::BF16: return 30;
    default: return ~0u;  // not one of them: the loader rejects the file rather than misread it
  }
}

// Token embeddings N(0, 1); every other matrix N(0, 0.1) (with E = 256 and head_dim 32: q and k
// entries ~1.6, scores of std ~2.6, a softmax neither flat nor one-hot, as in a trained model);
// norms 1 + N(0, 0.1); context length 256, rope base 1e4, rms eps 1e-5.
inline void write_random_llama(const std::string& path, const RandomLlamaShape& s) {
  const int64_t E = s.n_embd, H = s.n_head, Hkv = s.n_head_kv, D = s.head_dim, F = s.n_ff, V = s.n_vocab;
  GgufOut g;
  const std::string a = "llama.";
  g.kv_str("general.architecture", "llama");
  g.kv_u32(a + "embedding_length", uint32_t(E));
  g.kv_u32(a + "block_count", uint32_t(s.n_layer));
  g.kv_u32(a + "feed_forward_length", uint32_t(F));
  g.kv_u32(a + "attention.head_count", uint32_t(H));
  g.kv_u32(a + "attention.head_count_kv", uint32_t(Hkv));
  g.kv_f32(a + "attention.layer_norm_rms_epsilon", 1e-5f);
  g.kv_f32(a + "rope.freq_base", 10000.0f);
  g.kv_u32(a + "context_length", 256);
  g.kv_u32(a + "rope.dimension_count", uint32_t(D));
  uint32_t seed = s.first_seed;
  auto mat = [&](const std::string& name, int64_t rows, int64_t cols, float scale) {
    std::vector<float> f = normal_floats(size_t(rows * cols), seed++, scale);
    if (s.weights == emollm::DType::F32) return g.tensor(name, {rows, cols}, std::move(f));
    const size_t rb = emollm::dtype_row_bytes(s.weights, cols);
    std::vector<uint8_t> b(size_t(rows) * rb);
    for (int64_t r = 0; r < rows; ++r) emollm::quantize_row(s.weights, f.data() + r * cols, b.data() + size_t(r) * rb, cols);
    g.tensor_bytes(name, {rows, cols}, ggml_type_of(s.weights), std::move(b));
  };
  auto norm = [&](const std::string& name) {
    std::vector<float> f = normal_floats(size_t(E), seed++, 0.1f);
    for (float& v : f) v += 1.0f;
    g.tensor(name, {E}, std::move(f));
  };
  mat("token_embd.weight", V, E, 1.0f);
  for (int64_t l = 0; l < s.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    norm(b + "attn_norm.weight");
    mat(b + "attn_q.weight", H * D, E, 0.1f);
    mat(b + "attn_k.weight", Hkv * D, E, 0.1f);
    mat(b + "attn_v.weight", Hkv * D, E, 0.1f);
    mat(b + "attn_output.weight", E, H * D, 0.1f);
    norm(b + "ffn_norm.weight");
    mat(b + "ffn_gate.weight", F, E, 0.1f);
    mat(b + "ffn_up.weight", F, E, 0.1f);
    mat(b + "ffn_down.weight", E, F, 0.1f);
  }
  norm("output_norm.weight");
  mat("output.weight", V, E, 0.1f);
  g.write(path);
}

}  // namespace emollm_test
