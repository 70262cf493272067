// Tests for LLaVA (native/model/{clip,llava}.*) and the multimodal parts of LlamaContext (input
// embeddings, image-aware prefix reuse, score_continuations):
//  - shared/models/llava-tiny-hf (transformers' own outputs, see its SOURCE.md): logits at every
//    position within 1e-4 with the expanded and the unexpanded prompt, the 16 greedy tokens, from
//    the Hugging Face folder and from a text GGUF + mmproj GGUF pair converted here in C++ (the
//    llama.cpp layouts: q/k permuted for interleaved RoPE; the tower's last layer dropped; fc1
//    named ffn_down (legacy) or ffn_up (gguf-py));
//  - tests/fixtures/llava/* (PyTorch re-implementation, see its README): layer lists, "full",
//    two batched images, GQA 4 + llama3 RoPE: features, logits and greedy tokens;
//  - a random bf16 tower written here: its GEMM panels packed at load give the per-call pack's bits.
// The shared dir comes from EMOLLM_SHARED_DIR, else ../shared; the fixtures from
// EMOLLM_LLAVA_FIXTURES, else tests/fixtures/llava next to this file. Missing data is a printed skip.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "../../base/cpu_features.h"
#include "../../base/error.h"
#include "../../kernels/cpu/kernels.h"
#include "../../kernels/cpu/norm_internal.h"
#include "../../native/loaders/json.h"
#include "../../native/loaders/safetensors.h"
#include "../../native/model/llava.h"
#include "gguf_out.h"
#include "greedy_decode.h"
#include "hf_to_gguf.h"
#include "shared_data.h"
#include "testing.h"

using namespace emollm;

namespace {

using emollm_test::file_exists;
using emollm_test::ints;
using emollm_test::read_f32;

std::string tiny_dir() {
  static std::string dir = emollm_test::shared_model_dir("llava-tiny-hf", {"model.safetensors", "reference/logits.f32"});
  return dir;
}

std::string fixtures_dir() {
  static std::string dir = [] {
    std::string d;
    if (const char* e = std::getenv("EMOLLM_LLAVA_FIXTURES")) d = e;
    else {
      std::string f = __FILE__;
      size_t slash = f.find_last_of('/');
      d = (slash == std::string::npos ? std::string(".") : f.substr(0, slash)) + "/../fixtures/llava";
      if (!file_exists(d + "/README.md")) d = "tests/fixtures/llava";
    }
    if (!file_exists(d + "/README.md")) {
      std::printf("  [skip] llava fixture tests: %s not found (set EMOLLM_LLAVA_FIXTURES)\n", d.c_str());
      return std::string();
    }
    return d;
  }();
  return dir;
}

JsonValue read_json(const std::string& path) { return load_json_file(path); }

LlamaContextOptions ctx_opts(int64_t n_ctx = 256) {
  LlamaContextOptions o;
  o.n_ctx = n_ctx;
  return o;
}

// All-position logits of `ids` (with images) on a fresh context.
std::vector<float> all_logits(const LlavaModel& m, const std::vector<int32_t>& ids, const std::vector<float>& feats,
                              int64_t n_images, int64_t n_batch = 0) {
  auto toks = m.splice_prompt(ids.data(), int64_t(ids.size()), feats.data(), n_images);
  LlamaContextOptions o = ctx_opts();
  o.n_batch = n_batch;
  LlamaContext ctx(m.text_model(), o);
  std::vector<float> out(toks.size() * size_t(ctx.n_vocab()));
  EXPECT(ctx.eval(toks.data(), int64_t(toks.size()), out.data(), nullptr, feats.data()) != nullptr);
  return out;
}

std::vector<int32_t> greedy(const LlavaModel& m, const std::vector<int32_t>& ids, const std::vector<float>& feats,
                            int64_t n_images, int n) {
  auto toks = m.splice_prompt(ids.data(), int64_t(ids.size()), feats.data(), n_images);
  LlamaContext ctx(m.text_model(), ctx_opts());
  const float* l = ctx.eval_prompt(toks.data(), int64_t(toks.size()), nullptr, feats.data());
  return emollm_test::argmax_continuation(ctx, l, n);
}

struct Tiny {
  std::shared_ptr<LlavaModel> model;
  std::vector<float> pixels, ref_logits;
  std::vector<int32_t> ids_expanded, ids_unexpanded, greedy_tokens;
};
const Tiny* tiny() {
  static std::unique_ptr<Tiny> t = []() -> std::unique_ptr<Tiny> {
    if (tiny_dir().empty()) return nullptr;
    auto r = std::make_unique<Tiny>();
    r->model = LlavaModel::load(tiny_dir());
    r->pixels = read_f32(tiny_dir() + "/reference/pixel_values.f32");
    r->ref_logits = read_f32(tiny_dir() + "/reference/logits.f32");
    JsonValue e = read_json(tiny_dir() + "/reference/expected.json");
    r->ids_expanded = ints(e.find("input_ids_expanded"));
    r->ids_unexpanded = ints(e.find("input_ids_unexpanded"));
    r->greedy_tokens = ints(e.find("greedy_new_tokens"));
    return r;
  }();
  return t.get();
}

std::vector<float> encode(const LlavaModel& m, const std::vector<float>& pixels, int64_t B) {
  std::vector<float> f(size_t(B * m.n_image_tokens() * m.n_embd()));
  EXPECT(m.encode_images(pixels.data(), B, f.data()));
  return f;
}

double check_logits(const std::vector<float>& got, const std::vector<float>& ref, const std::string& what) {
  EXPECT(got.size() == ref.size());
  if (got.size() != ref.size()) return 1e9;
  double d = emollm_test::max_abs_diff(got.data(), ref.data(), long(got.size()));
  EXPECT_ALL_CLOSE(got.data(), ref.data(), got.size(), 1e-4, 0.0, what);
  std::printf("    %s: max |logit diff| %.3g over %zu values\n", what.c_str(), d, got.size());
  return d;
}

// ---------------------------------------------------------------- a GGUF writer (llama.cpp layouts): gguf_out.h, hf_to_gguf.h
using emollm_test::GgufOut;

using emollm_test::tdata;

// Converts llava-tiny-hf to a text GGUF + an mmproj GGUF (llava-1.5 style: last tower layer dropped).
void convert_tiny(const std::string& text_path, const std::string& mmproj_path, bool legacy_ffn_names) {
  auto st = SafetensorsStore::open(tiny_dir());
  GgufOut t;
  std::vector<std::string> vocab(32064);
  for (size_t i = 0; i < vocab.size(); ++i) vocab[i] = "t" + std::to_string(i);
  vocab[32000] = "<image>";
  t.kv_strs("tokenizer.ggml.tokens", vocab);
  t.kv_u32("tokenizer.ggml.bos_token_id", 1);
  t.kv_u32("tokenizer.ggml.eos_token_id", 2);
  emollm_test::add_text_model(t, st, {"llama", "language_model.model.", "language_model.lm_head.weight", 64, 2, 128, 4, 2, 32064, 256, 1e-5f, 10000.0f});
  t.write(text_path);

  GgufOut v;
  v.kv_str("general.architecture", "clip");
  v.kv_bool("clip.has_text_encoder", false);
  v.kv_bool("clip.has_vision_encoder", true);
  v.kv_bool("clip.has_llava_projector", true);
  v.kv_str("clip.projector_type", "mlp");
  v.kv_u32("clip.vision.image_size", 42);
  v.kv_u32("clip.vision.patch_size", 14);
  v.kv_u32("clip.vision.embedding_length", 32);
  v.kv_u32("clip.vision.feed_forward_length", 64);
  v.kv_u32("clip.vision.projection_dim", 512);
  v.kv_u32("clip.vision.attention.head_count", 2);
  v.kv_f32("clip.vision.attention.layer_norm_epsilon", 1e-5f);
  v.kv_u32("clip.vision.block_count", 1);  // 2 - 1: the llava converter drops the last layer
  v.kv_f32s("clip.vision.image_mean", {0.48145466f, 0.4578275f, 0.40821073f});
  v.kv_f32s("clip.vision.image_std", {0.26862954f, 0.26130258f, 0.27577711f});
  v.kv_bool("clip.use_gelu", false);
  const std::string vt = "vision_tower.";
  v.tensor("v.class_embd", {32}, tdata(st, vt + "embeddings.class_embedding"));
  v.tensor("v.patch_embd.weight", {32, 3, 14, 14}, tdata(st, vt + "embeddings.patch_embedding.weight"));
  v.tensor("v.position_embd.weight", {10, 32}, tdata(st, vt + "embeddings.position_embedding.weight"));
  v.tensor("v.pre_ln.weight", {32}, tdata(st, vt + "pre_layrnorm.weight"));
  v.tensor("v.pre_ln.bias", {32}, tdata(st, vt + "pre_layrnorm.bias"));
  const std::string p = vt + "encoder.layers.0.", b = "v.blk.0.";
  for (const char* x : {"weight", "bias"}) {
    const std::string s = std::string(".") + x;
    const bool w = s == ".weight";
    v.tensor(b + "ln1" + s, {32}, tdata(st, p + "layer_norm1" + s));
    v.tensor(b + "ln2" + s, {32}, tdata(st, p + "layer_norm2" + s));
    v.tensor(b + "attn_q" + s, w ? std::vector<int64_t>{32, 32} : std::vector<int64_t>{32}, tdata(st, p + "self_attn.q_proj" + s));
    v.tensor(b + "attn_k" + s, w ? std::vector<int64_t>{32, 32} : std::vector<int64_t>{32}, tdata(st, p + "self_attn.k_proj" + s));
    v.tensor(b + "attn_v" + s, w ? std::vector<int64_t>{32, 32} : std::vector<int64_t>{32}, tdata(st, p + "self_attn.v_proj" + s));
    v.tensor(b + "attn_out" + s, w ? std::vector<int64_t>{32, 32} : std::vector<int64_t>{32}, tdata(st, p + "self_attn.out_proj" + s));
    v.tensor(b + (legacy_ffn_names ? "ffn_down" : "ffn_up") + s, w ? std::vector<int64_t>{64, 32} : std::vector<int64_t>{64},
             tdata(st, p + "mlp.fc1" + s));
    v.tensor(b + (legacy_ffn_names ? "ffn_up" : "ffn_down") + s, w ? std::vector<int64_t>{32, 64} : std::vector<int64_t>{32},
             tdata(st, p + "mlp.fc2" + s));
  }
  v.tensor("mm.0.weight", {64, 32}, tdata(st, "multi_modal_projector.linear_1.weight"));
  v.tensor("mm.0.bias", {64}, tdata(st, "multi_modal_projector.linear_1.bias"));
  v.tensor("mm.2.weight", {64, 64}, tdata(st, "multi_modal_projector.linear_2.weight"));
  v.tensor("mm.2.bias", {64}, tdata(st, "multi_modal_projector.linear_2.bias"));
  v.write(mmproj_path);
}

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/emollm_llava_XXXXXX";
    path = ::mkdtemp(tmpl) ? tmpl : "/tmp";
  }
  ~TempDir() {
    std::string cmd = "rm -rf '" + path + "'";
    if (path.rfind("/tmp/emollm_llava_", 0) == 0) (void)!std::system(cmd.c_str());
  }
};

}  // namespace

// ================================================================ llava-tiny-hf (transformers' outputs)

TEST(llava_tiny_hf_loads) {
  const Tiny* t = tiny();
  if (!t) return;
  const LlavaModel& m = *t->model;
  EXPECT(m.format() == "safetensors");
  EXPECT(m.image_token_id() == 32000);
  EXPECT(m.n_image_tokens() == 9);
  EXPECT(m.n_embd() == 64);
  EXPECT(m.feature_layers() == std::vector<int64_t>{1});  // -2 of 2 layers = hidden_states[1]
  EXPECT(m.drop_cls());
  EXPECT(m.vision().hparams().n_pos() == 10);
  EXPECT(m.image_mean().size() == 3 && m.image_std().size() == 3);
  EXPECT(m.text().hparams().n_vocab == 32064 && m.text().hparams().n_layer == 2);
  EXPECT(t->pixels.size() == 3 * 42 * 42);
  EXPECT(t->ref_logits.size() == 30 * size_t(32064));
  EXPECT(LlavaModel::is_llava_folder(tiny_dir()));
  EXPECT(!LlavaModel::is_llava_folder(tiny_dir() + "/model.safetensors"));
  // a llava folder is not a plain LLaMA
  EXPECT_THROWS(LlamaModel::load(tiny_dir()), ErrorCode::Unsupported);
}

TEST(llava_tiny_hf_logits_expanded_prompt) {
  const Tiny* t = tiny();
  if (!t) return;
  auto feats = encode(*t->model, t->pixels, 1);
  check_logits(all_logits(*t->model, t->ids_expanded, feats, 1), t->ref_logits, "tiny hf, expanded ids");
  // prefill in chunks that split the image (n_batch 7) gives the same
  check_logits(all_logits(*t->model, t->ids_expanded, feats, 1, 7), t->ref_logits, "tiny hf, n_batch 7");
}

TEST(llava_tiny_hf_logits_unexpanded_prompt) {
  const Tiny* t = tiny();
  if (!t) return;
  auto feats = encode(*t->model, t->pixels, 1);
  auto a = t->model->splice_prompt(t->ids_unexpanded.data(), int64_t(t->ids_unexpanded.size()), feats.data(), 1);
  auto b = t->model->splice_prompt(t->ids_expanded.data(), int64_t(t->ids_expanded.size()), feats.data(), 1);
  EXPECT(a == b);
  EXPECT(a.size() == 30);
  check_logits(all_logits(*t->model, t->ids_unexpanded, feats, 1), t->ref_logits, "tiny hf, unexpanded ids");
}

TEST(llava_tiny_hf_greedy) {
  const Tiny* t = tiny();
  if (!t) return;
  auto feats = encode(*t->model, t->pixels, 1);
  EXPECT(greedy(*t->model, t->ids_unexpanded, feats, 1, 16) == t->greedy_tokens);
  EXPECT(greedy(*t->model, t->ids_expanded, feats, 1, 16) == t->greedy_tokens);
}

TEST(llava_image_token_count_mismatch) {
  const Tiny* t = tiny();
  if (!t) return;
  const LlavaModel& m = *t->model;
  auto feats = encode(m, t->pixels, 1);
  std::vector<float> two(feats);
  two.insert(two.end(), feats.begin(), feats.end());
  auto ids = t->ids_unexpanded;
  // one image token, two images
  try {
    m.splice_prompt(ids.data(), int64_t(ids.size()), two.data(), 2);
    EXPECT(false);
  } catch (const Error& e) {
    EXPECT(e.code() == ErrorCode::InvalidArgument);
    EXPECT(std::string(e.what()).find("1 image tokens") != std::string::npos);
    EXPECT(std::string(e.what()).find("expected 2 (one per image) or 18 (9 per image)") != std::string::npos);
  }
  // 5 image tokens for one image (neither 1 nor 9): never truncated
  std::vector<int32_t> five(ids);
  five.insert(five.begin() + 5, 4, 32000);
  EXPECT_THROWS(m.splice_prompt(five.data(), int64_t(five.size()), feats.data(), 1), ErrorCode::InvalidArgument);
  // image tokens but no images; negative ids in a prompt
  EXPECT_THROWS(m.splice_prompt(ids.data(), int64_t(ids.size()), nullptr, 0), ErrorCode::InvalidArgument);
  std::vector<int32_t> neg{1, -5, 2};
  EXPECT_THROWS(m.splice_prompt(neg.data(), 3, nullptr, 0), ErrorCode::InvalidArgument);
  // no image: plain text passes through
  std::vector<int32_t> txt{1, 3148, 1001};
  EXPECT(m.splice_prompt(txt.data(), 3, nullptr, 0) == txt);
  // negative ids without embeddings are refused by eval
  LlamaContext ctx(m.text_model(), ctx_opts());
  EXPECT_THROWS(ctx.eval(neg.data(), 3), ErrorCode::InvalidArgument);
}

TEST(llava_batched_images_equal_single) {
  const Tiny* t = tiny();
  if (!t) return;
  const LlavaModel& m = *t->model;
  // image 2: the photo mirrored left-right
  std::vector<float> px2(t->pixels.size());
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 42; ++y)
      for (int x = 0; x < 42; ++x) px2[size_t((c * 42 + y) * 42 + x)] = t->pixels[size_t((c * 42 + y) * 42 + (41 - x))];
  auto f1 = encode(m, t->pixels, 1), f2 = encode(m, px2, 1);
  std::vector<float> both(t->pixels);
  both.insert(both.end(), px2.begin(), px2.end());
  auto fb = encode(m, both, 2);
  const size_t n = f1.size();
  EXPECT(fb.size() == 2 * n);
  EXPECT_ALL_CLOSE(fb.data(), f1.data(), n, 1e-5, 1e-5, "batched image 0");
  EXPECT_ALL_CLOSE(fb.data() + n, f2.data(), n, 1e-5, 1e-5, "batched image 1");
  EXPECT(emollm_test::max_abs_diff(f1.data(), f2.data(), long(n)) > 1e-3);  // really different images

  // Two images in one prompt: positions before the second image equal the one-image prompt's.
  std::vector<int32_t> ids = t->ids_unexpanded;  // ... <image> ...
  ids.push_back(32000);                          // ... <image> ... <image>
  ids.push_back(13);
  auto lb = all_logits(m, ids, fb, 2);
  auto l1 = all_logits(m, t->ids_unexpanded, f1, 1);
  const int64_t V = 32064, common = 30;
  EXPECT_ALL_CLOSE(lb.data(), l1.data(), common * V, 1e-5, 0.0, "two-image prompt prefix");
  // and the second image's features are the mirrored photo's: splicing fb equals splicing [f1, f2]
  std::vector<float> f12(f1);
  f12.insert(f12.end(), f2.begin(), f2.end());
  auto l12 = all_logits(m, ids, f12, 2);
  EXPECT_ALL_CLOSE(lb.data(), l12.data(), lb.size(), 1e-4, 0.0, "batched vs single features in a 2-image prompt");
}

// The tower's activations kept between calls (ClipVisionModel::set_keep_activations): a call
// that finds the block holding another image's activations, a larger batch that replaces it, a
// per-call allocation, and two calls at once (one takes the kept block, the other its own) all
// give the same feature bits.
TEST(llava_vision_kept_activations_equal_fresh) {
  const Tiny* t = tiny();
  if (!t) return;
  const LlavaModel& m = *t->model;
  std::vector<float> px2(t->pixels.size());
  for (size_t i = 0; i < px2.size(); ++i) px2[i] = t->pixels[px2.size() - 1 - i];
  ClipVisionModel::set_keep_activations(false);
  const auto fresh = encode(m, t->pixels, 1);
  ClipVisionModel::set_keep_activations(true);
  const auto same_bits = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  const auto a1 = encode(m, t->pixels, 1);
  const auto b1 = encode(m, px2, 1);  // the kept block now holds image 2's activations
  const auto a2 = encode(m, t->pixels, 1);
  EXPECT(same_bits(a1, fresh));
  EXPECT(same_bits(a2, fresh));
  EXPECT(!same_bits(b1, fresh));
  std::vector<float> both(px2);
  both.insert(both.end(), t->pixels.begin(), t->pixels.end());
  const auto fb = encode(m, both, 2);  // a larger block replaces the kept one
  EXPECT(std::memcmp(fb.data() + a1.size(), fresh.data(), fresh.size() * sizeof(float)) == 0);
  EXPECT(same_bits(encode(m, t->pixels, 1), fresh));
  // two calls at once
  std::vector<float> c1, c2;
  std::thread th([&] { c1 = encode(m, t->pixels, 1); });
  c2 = encode(m, t->pixels, 1);
  th.join();
  EXPECT(same_bits(c1, fresh) && same_bits(c2, fresh));
}

// The tower's features and the projector's hidden rows kept between calls
// (LlavaModel::set_keep_scratch): a call that finds the block holding another image's rows, a
// larger batch that replaces it, the projector alone (its hidden rows in the block), a per-call
// allocation, and two calls at once (one takes the kept block, the other its own) all give the
// same feature bits; and the kept block really is reused (the same projector output after another
// image wrote into it).
TEST(llava_projector_kept_scratch_equal_fresh) {
  const Tiny* t = tiny();
  if (!t) return;
  const LlavaModel& m = *t->model;
  std::vector<float> px2(t->pixels.size());
  for (size_t i = 0; i < px2.size(); ++i) px2[i] = t->pixels[px2.size() - 1 - i];
  const auto same_bits = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  LlavaModel::set_keep_scratch(false);
  const auto fresh = encode(m, t->pixels, 1);
  const auto fresh2 = encode(m, px2, 1);
  {  // the reference: the tower into its own buffer, then the projector (not encode's carving)
    Backend& be = m.text_model()->backend();
    std::vector<float> tf(size_t(m.n_image_tokens() * m.projector_in())), ref(fresh.size());
    EXPECT(m.vision().encode(be, t->pixels.data(), 1, m.feature_layers(), m.drop_cls(), tf.data()));
    m.project(tf.data(), m.n_image_tokens(), ref.data());
    EXPECT(std::memcmp(ref.data(), fresh.data(), ref.size() * sizeof(float)) == 0);
  }
  LlavaModel::set_keep_scratch(true);
  const size_t kept0 = m.kept_scratch_bytes();  // another test's calls may have made it already
  const auto a1 = encode(m, t->pixels, 1);
  const size_t one = (size_t(m.n_image_tokens() * (m.projector_in() + m.n_embd())) * sizeof(float));
  EXPECT(m.kept_scratch_bytes() >= one);  // the call kept its scratch
  EXPECT(kept0 == 0 || kept0 == m.kept_scratch_bytes());
  const auto b1 = encode(m, px2, 1);  // the kept block now holds image 2's rows
  const auto a2 = encode(m, t->pixels, 1);
  EXPECT(same_bits(a1, fresh));
  EXPECT(same_bits(a2, fresh));
  EXPECT(same_bits(b1, fresh2));
  EXPECT(!same_bits(b1, fresh));
  std::vector<float> both(px2);
  both.insert(both.end(), t->pixels.begin(), t->pixels.end());
  const auto fb = encode(m, both, 2);  // a larger block replaces the kept one
  EXPECT(fb.size() == 2 * fresh.size());
  EXPECT(m.kept_scratch_bytes() >= 2 * one);  // grown for the batch
  EXPECT(std::memcmp(fb.data(), fresh2.data(), fresh2.size() * sizeof(float)) == 0);
  EXPECT(std::memcmp(fb.data() + a1.size(), fresh.data(), fresh.size() * sizeof(float)) == 0);
  EXPECT(same_bits(encode(m, t->pixels, 1), fresh));
  // the projector alone, kept and fresh, on the same tower features
  const int64_t rows = m.n_image_tokens(), din = m.projector_in(), E = m.n_embd();
  std::vector<float> feats(size_t(rows * din));
  for (size_t i = 0; i < feats.size(); ++i) feats[i] = float(int(i * 7919 % 2001) - 1000) * 1e-3f;
  std::vector<float> pk(size_t(rows * E)), pf(size_t(rows * E));
  m.project(feats.data(), rows, pk.data());
  LlavaModel::set_keep_scratch(false);
  m.project(feats.data(), rows, pf.data());
  LlavaModel::set_keep_scratch(true);
  EXPECT(same_bits(pk, pf));
  // two calls at once
  std::vector<float> c1, c2;
  std::thread th([&] { c1 = encode(m, t->pixels, 1); });
  c2 = encode(m, px2, 1);
  th.join();
  EXPECT(same_bits(c1, fresh) && same_bits(c2, fresh2));
}

TEST(llava_prefix_reuse_tells_images_apart) {
  const Tiny* t = tiny();
  if (!t) return;
  const LlavaModel& m = *t->model;
  std::vector<float> px2(t->pixels);
  for (auto& v : px2) v = -v;
  auto fa = encode(m, t->pixels, 1), fb = encode(m, px2, 1);
  auto ta = m.splice_prompt(t->ids_unexpanded.data(), int64_t(t->ids_unexpanded.size()), fa.data(), 1);
  auto tb = m.splice_prompt(t->ids_unexpanded.data(), int64_t(t->ids_unexpanded.size()), fb.data(), 1);
  EXPECT(ta != tb);
  for (int i = 5; i < 14; ++i) EXPECT(ta[size_t(i)] < 0 && tb[size_t(i)] < 0 && ta[size_t(i)] != tb[size_t(i)]);
  // same features, same ids
  EXPECT(ta == m.splice_prompt(t->ids_unexpanded.data(), int64_t(t->ids_unexpanded.size()), fa.data(), 1));
  const int64_t V = 32064;
  LlamaContext ctx(m.text_model(), ctx_opts());
  const float* l = ctx.eval_prompt(ta.data(), int64_t(ta.size()), nullptr, fa.data());
  EXPECT_ALL_CLOSE(l, t->ref_logits.data() + 29 * V, V, 1e-4, 0.0, "image A last logits");
  // image B after A: only the text before the image may be reused
  l = ctx.eval_prompt(tb.data(), int64_t(tb.size()), nullptr, fb.data());
  LlamaContext fresh(m.text_model(), ctx_opts());
  const float* lf = fresh.eval_prompt(tb.data(), int64_t(tb.size()), nullptr, fb.data());
  EXPECT_ALL_CLOSE(l, lf, V, 1e-5, 0.0, "image B after image A == image B fresh");
  EXPECT(emollm_test::max_abs_diff(l, t->ref_logits.data() + 29 * V, long(V)) > 1e-3);
  // back to A with a longer prompt: reuses the cached A prefix... after B, only 5 tokens match
  std::vector<int32_t> ta2(ta);
  ta2.push_back(13);
  l = ctx.eval_prompt(ta.data(), int64_t(ta.size()), nullptr, fa.data());
  EXPECT_ALL_CLOSE(l, t->ref_logits.data() + 29 * V, V, 1e-4, 0.0, "image A again");
  EXPECT(ctx.tokens() == ta);
  l = ctx.eval_prompt(ta2.data(), int64_t(ta2.size()), nullptr, fa.data());  // reuses all 30, evaluates 1
  EXPECT(l != nullptr && ctx.n_past() == 31);
  // a prompt ending in an image: a full cache hit re-evaluates the last image position from its row
  std::vector<int32_t> tail_ids{1, 3148, 32000};
  auto te = m.splice_prompt(tail_ids.data(), 3, fa.data(), 1);
  EXPECT(te.size() == 11);
  std::vector<float> first(static_cast<size_t>(V));
  l = ctx.eval_prompt(te.data(), int64_t(te.size()), nullptr, fa.data());
  std::memcpy(first.data(), l, size_t(V) * 4);
  l = ctx.eval_prompt(te.data(), int64_t(te.size()), nullptr, fa.data());
  EXPECT_ALL_CLOSE(l, first.data(), V, 1e-5, 0.0, "image-final prompt, cached");  // gemv vs gemm noise
  EXPECT(ctx.n_past() == 11);
}

TEST(llava_score_continuations) {
  const Tiny* t = tiny();
  if (!t) return;
  const LlavaModel& m = *t->model;
  auto feats = encode(m, t->pixels, 1);
  const int64_t V = 32064;
  auto full = m.splice_prompt(t->ids_expanded.data(), 30, feats.data(), 1);
  // prefix = first 20 positions (image included), continuation = the remaining 10 reference ids
  std::vector<int32_t> prefix(full.begin(), full.begin() + 20);
  std::vector<int32_t> cont(t->ids_expanded.begin() + 20, t->ids_expanded.end());
  std::vector<int32_t> other{5328, 947, 278};
  LlamaContext ctx(m.text_model(), ctx_opts());
  std::vector<LlamaContext::ContinuationScore> out;
  EXPECT(ctx.score_continuations(prefix.data(), 20, {cont, {}, other, cont}, &out, nullptr, feats.data()));
  EXPECT(out.size() == 4);
  if (out.size() != 4) return;
  // reference: log-softmax of transformers' logits
  double sum = 0, worst = 0;
  EXPECT(out[0].token_logprobs.size() == 10);
  for (int j = 0; j < 10; ++j) {
    const float* row = t->ref_logits.data() + (19 + j) * V;
    double mx = *std::max_element(row, row + V), s = 0;
    for (int64_t i = 0; i < V; ++i) s += std::exp(double(row[i]) - mx);
    const double ref = double(row[cont[size_t(j)]]) - mx - std::log(s);
    sum += ref;
    if (out[0].token_logprobs.size() == 10) worst = std::max(worst, std::fabs(out[0].token_logprobs[size_t(j)] - ref));
  }
  std::printf("    score: sum logprob %.6f (reference %.6f), max token diff %.3g\n", out[0].logprob, sum, worst);
  EXPECT(worst < 2e-4);
  EXPECT_NEAR(out[0].logprob, sum, 1e-3);
  EXPECT(out[1].logprob == 0 && out[1].token_logprobs.empty());
  EXPECT(out[2].token_logprobs.size() == 3 && out[2].logprob < 0);
  EXPECT(out[3].logprob == out[0].logprob);  // the cache was truncated back after each
  EXPECT(ctx.n_past() == 20);
  EXPECT_ALL_CLOSE(ctx.logits(), t->ref_logits.data() + 19 * V, V, 1e-4, 0.0, "prefix logits after scoring");
  // errors: id out of range; too long for the context
  EXPECT_THROWS(ctx.score_continuations(prefix.data(), 20, {{1, 40000}}, &out, nullptr, feats.data()), ErrorCode::InvalidArgument);
  LlamaContext small(m.text_model(), ctx_opts(24));
  EXPECT_THROWS(small.score_continuations(prefix.data(), 20, {cont}, &out, nullptr, feats.data()), ErrorCode::InvalidArgument);
  // abort
  std::atomic<bool> stop{true};
  EXPECT(!ctx.score_continuations(prefix.data(), 20, {cont}, &out, &stop, feats.data()) || out.empty());
}

// Paged KV cache on the tiny LLaVA: an image + text prefix (20 positions: one full block of 16
// and a partial one) evaluated once and shared by reference with two more sequences, which then
// take the reference continuation in ONE batched pass (the partial block copied on write): every
// sequence's logits equal transformers' (atol 1e-4, the tolerance of the other logit checks here).
TEST(llava_paged_kv_shared_image_prefix_equals_reference) {
  const Tiny* t = tiny();
  if (!t) return;
  const LlavaModel& m = *t->model;
  auto feats = encode(m, t->pixels, 1);
  const int64_t V = 32064;
  auto full = m.splice_prompt(t->ids_expanded.data(), 30, feats.data(), 1);
  LlamaContextOptions o = ctx_opts(64);
  o.n_seq = 3;
  o.kv_block_size = 16;
  LlamaContext ctx(m.text_model(), o);
  EXPECT(ctx.seq_eval(0, full.data(), 20, nullptr, nullptr, feats.data()) != nullptr);
  ctx.seq_copy_prefix(0, 1, 20);
  ctx.seq_copy_prefix(0, 2, 20);
  EXPECT(ctx.kv_stats().blocks_used == 2 && ctx.kv_stats().blocks_shared == 2);
  std::vector<int32_t> cont(t->ids_expanded.begin() + 20, t->ids_expanded.end());
  std::vector<LlamaBatchSegment> segs;
  for (int s = 0; s < 3; ++s) segs.push_back(LlamaBatchSegment{s, cont.data(), 10, true});
  std::vector<float> out(size_t(30 * V));
  EXPECT(ctx.eval_batch(segs.data(), 3, out.data()));
  EXPECT(ctx.kv_stats().blocks_shared == 1);  // the full image block stays shared
  std::vector<float> ref(t->ref_logits.begin() + 20 * V, t->ref_logits.begin() + 30 * V);
  for (int s = 0; s < 3; ++s)
    check_logits(std::vector<float>(out.begin() + s * 10 * V, out.begin() + (s + 1) * 10 * V), ref,
                 "paged KV, shared image prefix, sequence " + std::to_string(s));
}

TEST(llava_vision_layer_list_and_full_shapes) {
  const Tiny* t = tiny();
  if (!t) return;
  const ClipVisionModel& v = t->model->vision();
  Backend& be = t->model->text().backend();
  const int64_t E = 32;
  std::vector<float> s0(10 * E), s1(10 * E), s2(10 * E), cat(10 * 3 * E), def(9 * 2 * E);
  EXPECT(v.encode(be, t->pixels.data(), 1, {0}, false, s0.data()));
  EXPECT(v.encode(be, t->pixels.data(), 1, {1}, false, s1.data()));
  EXPECT(v.encode(be, t->pixels.data(), 1, {2}, false, s2.data()));
  EXPECT(v.encode(be, t->pixels.data(), 1, {2, 0, 1}, false, cat.data()));
  EXPECT(v.encode(be, t->pixels.data(), 1, {1, 2}, true, def.data()));
  for (int tk = 0; tk < 10; ++tk) {
    EXPECT(std::memcmp(&cat[size_t(tk * 3 * E)], &s2[size_t(tk * E)], E * 4) == 0);
    EXPECT(std::memcmp(&cat[size_t(tk * 3 * E + E)], &s0[size_t(tk * E)], E * 4) == 0);
    EXPECT(std::memcmp(&cat[size_t(tk * 3 * E + 2 * E)], &s1[size_t(tk * E)], E * 4) == 0);
  }
  for (int tk = 0; tk < 9; ++tk) {
    EXPECT(std::memcmp(&def[size_t(tk * 2 * E)], &s1[size_t((tk + 1) * E)], E * 4) == 0);
    EXPECT(std::memcmp(&def[size_t(tk * 2 * E + E)], &s2[size_t((tk + 1) * E)], E * 4) == 0);
  }
  EXPECT(ClipVisionModel::resolve_layer(-2, 2) == 1);
  EXPECT(ClipVisionModel::resolve_layer(-3, 2) == 0);
  EXPECT(ClipVisionModel::resolve_layer(2, 2) == 2);
  EXPECT_THROWS(ClipVisionModel::resolve_layer(-4, 2), ErrorCode::InvalidArgument);
  EXPECT_THROWS(ClipVisionModel::resolve_layer(3, 2), ErrorCode::InvalidArgument);
  EXPECT_THROWS(v.encode(be, t->pixels.data(), 1, {3}, false, s0.data()), ErrorCode::InvalidArgument);

  // LLaVA-level: "full" keeps CLS (10 features); a layer list needs a projector of 2 x 32 inputs
  HfConfig hc = load_hf_config(tiny_dir());
  LlavaConfig c = *hc.llava;
  c.vision_feature_select_strategy = "full";
  auto st = std::make_shared<SafetensorsStore>(SafetensorsStore::open(tiny_dir()));
  auto full = LlavaModel::from_hf_store(st, c, "config.json");
  EXPECT(full->n_image_tokens() == 10 && !full->drop_cls());
  std::vector<float> ff(10 * 64);
  EXPECT(full->encode_images(t->pixels.data(), 1, ff.data()));
  auto fd = encode(*t->model, t->pixels, 1);
  EXPECT(std::memcmp(ff.data() + 64, fd.data(), 9 * 64 * 4) == 0);  // tokens 1.. equal the default's
  std::vector<int32_t> ids = t->ids_unexpanded;
  EXPECT(full->splice_prompt(ids.data(), int64_t(ids.size()), ff.data(), 1).size() == 31);
  c.vision_feature_select_strategy = "default";
  c.vision_feature_layer = {-2, -1};
  c.vision_feature_layer_is_list = true;
  try {
    LlavaModel::from_hf_store(st, c, "config.json");
    EXPECT(false);
  } catch (const Error& e) {
    EXPECT(e.code() == ErrorCode::MalformedFile);
    EXPECT(std::string(e.what()).find("linear_1.weight") != std::string::npos);
  }
  c.vision_feature_layer = {-4};
  EXPECT_THROWS(LlavaModel::from_hf_store(st, c, "config.json"), ErrorCode::BadConfig);
  c.vision_feature_layer = {-2};
  c.vision_feature_select_strategy = "cls";
  EXPECT_THROWS(LlavaModel::from_hf_store(st, c, "config.json"), ErrorCode::BadConfig);
}

// transformers >= 4.52 saves LlavaForConditionalGeneration as model.language_model.*, model.vision_tower.*,
// model.multi_modal_projector.*, lm_head.weight: the same weights renamed must give the same logits.
TEST(llava_transformers5_tensor_names) {
  const Tiny* t = tiny();
  if (!t) return;
  auto st = SafetensorsStore::open(tiny_dir());
  auto rename = [](const std::string& n) -> std::string {
    auto starts = [&](const char* p) { return n.rfind(p, 0) == 0; };
    if (starts("language_model.model.")) return "model.language_model." + n.substr(21);
    if (n == "language_model.lm_head.weight") return "lm_head.weight";
    return "model." + n;  // vision_tower.*, multi_modal_projector.*
  };
  std::string header = "{";
  std::vector<uint8_t> data;
  for (const auto& ti : st.tensors()) {
    if (header.size() > 1) header += ",";
    header += "\"" + rename(ti.name) + "\":{\"dtype\":\"F32\",\"shape\":[";
    for (size_t i = 0; i < ti.shape.size(); ++i) header += (i ? "," : "") + std::to_string(ti.shape[i]);
    header += "],\"data_offsets\":[" + std::to_string(data.size()) + "," + std::to_string(data.size() + ti.nbytes) + "]}";
    data.insert(data.end(), ti.data, ti.data + ti.nbytes);
  }
  header += "}";
  while (header.size() % 8) header += ' ';  // as the safetensors library pads, so the data stays aligned
  std::vector<uint8_t> bytes(8);
  const uint64_t hl = header.size();
  std::memcpy(bytes.data(), &hl, 8);
  bytes.insert(bytes.end(), header.begin(), header.end());
  bytes.insert(bytes.end(), data.begin(), data.end());
  auto store = std::make_shared<SafetensorsStore>(
      SafetensorsStore::parse(MappedFile::from_bytes(bytes.data(), bytes.size(), "renamed.safetensors")));
  EXPECT(store->find("model.vision_tower.embeddings.class_embedding") && store->find("lm_head.weight"));
  HfConfig hc = load_hf_config(tiny_dir());
  auto m = LlavaModel::from_hf_store(store, *hc.llava, "config.json");
  auto feats = encode(*m, t->pixels, 1);
  check_logits(all_logits(*m, t->ids_unexpanded, feats, 1), t->ref_logits, "transformers-5 tensor names");
}

// ================================================================ llama.cpp text GGUF + mmproj GGUF

TEST(llava_gguf_mmproj_pair_parity) {
  const Tiny* t = tiny();
  if (!t) return;
  TempDir dir;
  for (bool legacy : {true, false}) {
    const std::string text = dir.path + "/text.gguf", mm = dir.path + (legacy ? "/mmproj-legacy.gguf" : "/mmproj.gguf");
    convert_tiny(text, mm, legacy);
    LlavaLoadOptions o;
    o.mmproj = mm;
    auto m = LlavaModel::load(text, o);
    EXPECT(m->format() == "gguf");
    EXPECT(m->image_token_id() == 32000);  // the text GGUF's "<image>"
    EXPECT(m->n_image_tokens() == 9);
    EXPECT(m->feature_layers() == std::vector<int64_t>{1});
    EXPECT(m->vision().hparams().n_layer == 1);
    EXPECT(m->image_mean().size() == 3 && std::fabs(m->image_std()[2] - 0.27577711f) < 1e-7f);
    auto f = encode(*m, t->pixels, 1);
    auto fref = encode(*t->model, t->pixels, 1);
    EXPECT_ALL_CLOSE(f.data(), fref.data(), f.size(), 1e-5, 1e-5, "gguf image features vs hf");
    check_logits(all_logits(*m, t->ids_unexpanded, f, 1), t->ref_logits,
                 legacy ? "gguf pair (legacy ffn names), unexpanded ids" : "gguf pair (gguf-py ffn names), unexpanded ids");
    EXPECT(greedy(*m, t->ids_expanded, f, 1, 16) == t->greedy_tokens);
    LlavaLoadOptions o2 = o;
    o2.image_token_id = 7;
    EXPECT(LlavaModel::load(text, o2)->image_token_id() == 7);
  }
  // an mmproj given with an HF folder or a non-clip GGUF is refused
  LlavaLoadOptions bad;
  bad.mmproj = dir.path + "/text.gguf";
  EXPECT_THROWS(LlavaModel::load(dir.path + "/text.gguf", bad), ErrorCode::Unsupported);
  bad.mmproj = dir.path + "/missing.gguf";
  EXPECT_THROWS(LlavaModel::load(dir.path + "/text.gguf", bad), ErrorCode::FileNotFound);
}

// ================================================================ tests/fixtures/llava (PyTorch re-implementation)

TEST(llava_fixtures_parity) {
  if (fixtures_dir().empty()) return;
  for (const char* name : {"layers-list", "full-strategy", "two-images", "gqa4"}) {
    const std::string d = fixtures_dir() + "/" + name;
    if (!file_exists(d + "/model.safetensors")) {
      std::printf("    [skip] fixture %s missing\n", name);
      continue;
    }
    auto m = LlavaModel::load(d);
    JsonValue ids = read_json(d + "/input_ids.json");
    JsonValue gt = read_json(d + "/greedy_tokens.json");
    JsonValue man = read_json(d + "/manifest.json");
    const JsonValue* shp = man.find("shapes") ? man.find("shapes")->find("pixel_values.f32") : nullptr;
    const int64_t B = shp ? shp->items()[0].as_int() : 1;
    auto px = read_f32(d + "/pixel_values.f32");
    auto ref_feat = read_f32(d + "/image_features.f32");
    auto ref_logits = read_f32(d + "/logits.f32");
    EXPECT(m->image_token_id() == int32_t(ids.find("image_token_index")->as_int()));
    EXPECT(m->n_image_tokens() == ids.find("n_image_tokens_per_image")->as_int());
    auto feats = encode(*m, px, B);
    EXPECT(feats.size() == ref_feat.size());
    if (feats.size() != ref_feat.size()) continue;
    const double fd = emollm_test::max_abs_diff(feats.data(), ref_feat.data(), long(feats.size()));
    EXPECT_ALL_CLOSE(feats.data(), ref_feat.data(), feats.size(), 1e-4, 0.0, std::string(name) + " image features");
    std::printf("    fixture %s: max |feature diff| %.3g\n", name, fd);
    check_logits(all_logits(*m, ints(ids.find("input_ids_expanded")), feats, B), ref_logits,
                 std::string("fixture ") + name + ", expanded ids");
    check_logits(all_logits(*m, ints(ids.find("input_ids_unexpanded")), feats, B), ref_logits,
                 std::string("fixture ") + name + ", unexpanded ids");
    EXPECT(greedy(*m, ints(ids.find("input_ids_unexpanded")), feats, B, 16) == ints(gt.find("greedy_new_tokens")));
  }
}

// The CLIP tower's residual adds fused with the LayerNorm after them (Backend::add_layernorm,
// norm rows in blocks: set_layernorm_row_blocks) give the bits of the separate ops (the
// switch off: add() then the row-by-row layernorm), at the detected ISA and at AVX2 (the features
// against the Hugging Face fixtures: llava_fixtures_parity).
TEST(llava_vision_add_layernorm_same_bits) {
  const Tiny* t = tiny();
  if (!t) return;
  const LlavaModel& m = *t->model;
  const bool saved = layernorm_row_blocks();
  for (Isa isa : {isa_detected(), Isa::Avx2}) {
    if (isa > isa_detected()) continue;
    IsaCapScope cap(isa);
    set_layernorm_row_blocks(false);
    const auto separate = encode(m, t->pixels, 1);
    set_layernorm_row_blocks(true);
    const auto fused = encode(m, t->pixels, 1);
    EXPECT(!separate.empty() && separate.size() == fused.size());
    EXPECT(std::memcmp(separate.data(), fused.data(), separate.size() * sizeof(float)) == 0);
  }
  set_layernorm_row_blocks(saved);
}

// A bf16 CLIP tower's matrices are packed once at load into the vdpbf16ps GEMM's panels
// (place_gemm_matrix with GemmRows::Many, where AVX512-BF16 runs): its features equal bit for bit
// those of the same tower on a backend that keeps the file's layout (set_weight_repacking(false):
// every GEMM packs W per call, the path before the load-time packing). 82 tokens (over
// kSmallMMax, where gemm() runs the packed GEMM), width 96 (a panel and a half), MLP 200 (three
// panels and one of 8 rows), 2 layers; bf16 patch embedding, q / k / v / o, fc1, fc2. Also: the
// packed bytes are every bf16 matrix's panels (none with the panels off).
TEST(clip_bf16_tower_panels_same_bits) {
  const int64_t S = 126, P = 14, C = 3, E = 96, F = 200, H = 2, L = 2, T = (S / P) * (S / P) + 1;
  uint32_t seed = 12345;
  auto rnd = [&](float scale) {
    seed = seed * 1664525u + 1013904223u;
    return (float(seed >> 8) / float(1u << 24) - 0.5f) * 2.0f * scale;
  };
  auto vec = [&](int64_t n, float scale, float base = 0.0f) {
    std::vector<float> r(static_cast<size_t>(n));
    for (auto& x : r) x = base + rnd(scale);
    return r;
  };
  auto bf16 = [&](int64_t rows, int64_t cols, float scale) {
    std::vector<uint8_t> b(size_t(rows * cols) * 2);
    for (int64_t i = 0; i < rows * cols; ++i) {
      const uint16_t h = f32_to_bf16(rnd(scale));
      std::memcpy(b.data() + 2 * i, &h, 2);
    }
    return b;
  };
  constexpr uint32_t kBf16Type = 30;  // ggml's BF16
  emollm_test::GgufOut v;
  v.kv_str("general.architecture", "clip");
  v.kv_bool("clip.has_text_encoder", false);
  v.kv_bool("clip.has_vision_encoder", true);
  v.kv_u32("clip.vision.image_size", uint32_t(S));
  v.kv_u32("clip.vision.patch_size", uint32_t(P));
  v.kv_u32("clip.vision.embedding_length", uint32_t(E));
  v.kv_u32("clip.vision.feed_forward_length", uint32_t(F));
  v.kv_u32("clip.vision.attention.head_count", uint32_t(H));
  v.kv_f32("clip.vision.attention.layer_norm_epsilon", 1e-5f);
  v.kv_u32("clip.vision.block_count", uint32_t(L));
  v.kv_bool("clip.use_gelu", false);
  v.tensor("v.class_embd", {E}, vec(E, 0.5f));
  v.tensor_bytes("v.patch_embd.weight", {E, C, P, P}, kBf16Type, bf16(E, C * P * P, 0.05f));
  v.tensor("v.position_embd.weight", {T, E}, vec(T * E, 0.5f));
  v.tensor("v.pre_ln.weight", {E}, vec(E, 0.1f, 1.0f));
  v.tensor("v.pre_ln.bias", {E}, vec(E, 0.1f));
  for (int64_t l = 0; l < L; ++l) {
    const std::string b = "v.blk." + std::to_string(l) + ".";
    for (const char* n : {"ln1", "ln2"}) {
      v.tensor(b + n + ".weight", {E}, vec(E, 0.1f, 1.0f));
      v.tensor(b + n + ".bias", {E}, vec(E, 0.1f));
    }
    for (const char* n : {"attn_q", "attn_k", "attn_v", "attn_out"}) {
      v.tensor_bytes(b + n + ".weight", {E, E}, kBf16Type, bf16(E, E, 0.2f));
      v.tensor(b + n + ".bias", {E}, vec(E, 0.1f));
    }
    v.tensor_bytes(b + "ffn_up.weight", {F, E}, kBf16Type, bf16(F, E, 0.2f));  // fc1 (gguf-py's name)
    v.tensor(b + "ffn_up.bias", {F}, vec(F, 0.1f));
    v.tensor_bytes(b + "ffn_down.weight", {E, F}, kBf16Type, bf16(E, F, 0.1f));
    v.tensor(b + "ffn_down.bias", {E}, vec(E, 0.1f));
  }
  TempDir dir;
  const std::string path = dir.path + "/clip-bf16.gguf";
  v.write(path);
  const std::vector<float> pixels = vec(C * S * S, 1.0f);

  const bool repack_was = weight_repacking();
  std::vector<float> feats[2];
  size_t packed[2] = {0, 0};
  for (int panels = 0; panels < 2; ++panels) {
    set_weight_repacking(panels == 1);  // off: the file's layout, W packed by every GEMM call
    GgufFile f = GgufFile::open(path);  // outlives the tower, as the backend does
    auto be = make_cpu_backend(std::make_shared<ThreadPool>(2));
    auto tower = ClipVisionModel::from_gguf(f);
    tower->place_weights(*be);  // with the panels on: the packing
    packed[panels] = tower->placed().packed_bytes();
    EXPECT(tower->layers[0].wq.dtype == DType::BF16 && tower->hparams().n_pos() == T);
    feats[panels].assign(size_t(T * E * 2), -1.0f);
    EXPECT(tower->encode(*be, pixels.data(), 1, {1, L}, false, feats[panels].data()));
  }
  set_weight_repacking(repack_was);
  EXPECT(packed[0] == 0);
  // every bf16 matrix packed (a panel of 64 rows, K in pairs): patch, 4 x E x E and E x F, F x E a layer
  auto pan = [](int64_t n, int64_t k) { return size_t((n + 63) / 64 * 64) * size_t((k + 1) / 2) * 4; };
  const size_t want = pan(E, C * P * P) + size_t(L) * (4 * pan(E, E) + pan(F, E) + pan(E, F));
  if (bf16_panels_usable()) EXPECT(packed[1] == want);
  else std::printf("  note: no AVX512-BF16 on this CPU: nothing packed, both runs read the file's layout\n");
  bool finite = true;
  for (float x : feats[1]) finite = finite && std::isfinite(x);
  EXPECT(finite);
  EXPECT(std::memcmp(feats[0].data(), feats[1].data(), feats[0].size() * sizeof(float)) == 0);
}
