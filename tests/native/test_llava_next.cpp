// Tests for LLaVA-NeXT (native/model/llava_next.*, the "llava_next" config path of llava.*) against
// shared/models/llava-next-tiny-hf (transformers' own outputs, see its SOURCE.md): for each case of
// reference/expected.json (`photo`, 1920x1280 -> 2x2 tiles; `wide`, 1920x426 -> 1x2 tiles whose
// features are all cut by the unpadding), the layout's token count equals the processor's
// expansion, the logits at every position with the reference pixel values are within 1e-4, and
// the 12 greedy tokens are equal. A transposed tile grid and an off-centre unpadding (same token
// count, other features) must move the logits well beyond that tolerance. A llama.cpp pair (text
// GGUF + llava-v1.6 mmproj with clip.vision.image_grid_pinpoints and model.image_newline),
// converted here from the same weights, must give the same logits and greedy tokens.
// The shared dir comes from EMOLLM_SHARED_DIR, else ../shared. Missing data is a printed skip.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <unistd.h>
#include <vector>

#include "../../base/error.h"
#include "../../native/loaders/json.h"
#include "../../native/loaders/safetensors.h"
#include "../../native/model/emollm.h"
#include "../../native/model/llava.h"
#include "../../native/model/llava_next.h"
#include "gguf_out.h"
#include "greedy_decode.h"
#include "hf_to_gguf.h"
#include "shared_data.h"
#include "testing.h"

using namespace emollm;

namespace {

using emollm_test::ints;
using emollm_test::read_f32;

std::string next_dir() {
  static std::string dir = emollm_test::shared_model_dir("llava-next-tiny-hf", {"reference/expected.json"});
  return dir;
}


struct Case {
  std::string name;
  std::vector<int32_t> ids, greedy;
  int64_t h = 0, w = 0, tiles = 0;
  std::vector<float> pixels, logits;
};

struct Next {
  std::shared_ptr<LlavaModel> model;
  std::vector<Case> cases;
};

const Next* next() {
  static std::unique_ptr<Next> t = []() -> std::unique_ptr<Next> {
    if (next_dir().empty()) return nullptr;
    auto r = std::make_unique<Next>();
    r->model = LlavaModel::load(next_dir());
    JsonValue e = load_json_file(next_dir() + "/reference/expected.json");
    for (const char* name : {"photo", "wide"}) {
      const JsonValue* c = e.find(name);
      Case k;
      k.name = name;
      k.ids = ints(c->find("input_ids"));
      k.greedy = ints(c->find("greedy_new_tokens"));
      const JsonValue& sz = c->find("image_sizes")->items()[0];
      k.h = sz.items()[0].as_int();
      k.w = sz.items()[1].as_int();
      k.tiles = c->find("pixel_values_shape")->items()[1].as_int();
      k.pixels = read_f32(next_dir() + "/reference/" + k.name + "_pixel_values.f32");
      k.logits = read_f32(next_dir() + "/reference/" + k.name + "_logits.f32");
      r->cases.push_back(std::move(k));
    }
    return r;
  }();
  return t.get();
}

AnyresLayout layout_of(const LlavaModel& m, const Case& c) {
  const ClipHparams& vh = m.vision().hparams();
  return anyres_layout(c.h, c.w, m.grid_pinpoints(), vh.image_size, vh.n_side());
}

int64_t image_token_count(const LlavaModel& m, const Case& c) {
  return std::count(c.ids.begin(), c.ids.end(), m.image_token_id());
}

std::vector<float> all_logits(const LlavaModel& m, const std::vector<int32_t>& ids, const std::vector<float>& feats, int64_t count) {
  auto toks = splice_prompt_counts(m.image_token_id(), ids.data(), int64_t(ids.size()), feats.data(), m.n_embd(), {count});
  LlamaContextOptions o;
  o.n_ctx = 128;
  LlamaContext ctx(m.text_model(), o);
  std::vector<float> out(toks.size() * size_t(ctx.n_vocab()));
  EXPECT(ctx.eval(toks.data(), int64_t(toks.size()), out.data(), nullptr, feats.data()) != nullptr);
  return out;
}

std::vector<int32_t> greedy(const LlavaModel& m, const std::vector<int32_t>& ids, const std::vector<float>& feats, int64_t count,
                            int n) {
  auto toks = splice_prompt_counts(m.image_token_id(), ids.data(), int64_t(ids.size()), feats.data(), m.n_embd(), {count});
  LlamaContextOptions o;
  o.n_ctx = 128;
  LlamaContext ctx(m.text_model(), o);
  const float* l = ctx.eval_prompt(toks.data(), int64_t(toks.size()), nullptr, feats.data());
  return emollm_test::argmax_continuation(ctx, l, n);
}

// Tile features [n_tiles, per, E] of a case (tower + projector, no packing).
std::vector<float> tile_features(const LlavaModel& m, const Case& c) {
  const int64_t per = m.n_image_tokens(), E = m.n_embd();
  std::vector<float> f(size_t(c.tiles * per * E));
  EXPECT(m.encode_images(c.pixels.data(), c.tiles, f.data()));
  return f;
}

}  // namespace

TEST(llava_next_loads_anyres_config) {
  const Next* t = next();
  if (!t) return;
  const LlavaModel& m = *t->model;
  EXPECT(m.anyres());
  EXPECT(m.image_newline() != nullptr);
  EXPECT(m.grid_pinpoints().size() == 3);
  EXPECT(m.image_token_id() == 32000);
  EXPECT(m.n_image_tokens() == 4);
}

TEST(llava_next_best_resolution_and_unpadding) {
  const std::vector<std::pair<int64_t, int64_t>> pins{{28, 56}, {56, 28}, {56, 56}};
  // photo 1280x1920 (h x w): 56x56 keeps the most; wide 426x1920: 28x56 and 56x56 tie, the smaller wins
  EXPECT((anyres_best_resolution(1280, 1920, pins) == std::pair<int64_t, int64_t>{56, 56}));
  EXPECT((anyres_best_resolution(426, 1920, pins) == std::pair<int64_t, int64_t>{28, 56}));
  EXPECT((anyres_best_resolution(1920, 426, pins) == std::pair<int64_t, int64_t>{56, 28}));
  AnyresLayout p = anyres_layout(1280, 1920, pins, 28, 2);
  EXPECT(p.grid_rows == 2 && p.grid_cols == 2 && p.row0 == 1 && p.row1 == 3 && p.col0 == 0 && p.col1 == 4);
  EXPECT(p.n_tokens() == 4 + 2 * 4 + 2);
  AnyresLayout w = anyres_layout(426, 1920, pins, 28, 2);
  EXPECT(w.grid_rows == 1 && w.grid_cols == 2 && w.row1 - w.row0 == 0 && w.n_tokens() == 4);
  AnyresLayout tall = anyres_layout(1920, 1280, pins, 28, 2);  // the transpose of the photo
  EXPECT(tall.col0 == 1 && tall.col1 == 3 && tall.row1 - tall.row0 == 4 && tall.n_tokens() == 4 + 8 + 4);
  EXPECT_THROWS(anyres_layout(0, 10, pins, 28, 2), ErrorCode::InvalidArgument);
}

TEST(llava_next_tiny_hf_parity) {
  const Next* t = next();
  if (!t) return;
  const LlavaModel& m = *t->model;
  for (const Case& c : t->cases) {
    const AnyresLayout L = layout_of(m, c);
    EXPECT(L.n_tiles() == c.tiles);
    EXPECT(L.n_tokens() == image_token_count(m, c));  // the processor's expansion, exactly
    std::vector<float> feats;
    EXPECT(llava_next_encode_image(m, c.pixels.data(), L, &feats));
    EXPECT(int64_t(feats.size()) == L.n_tokens() * m.n_embd());
    auto got = all_logits(m, c.ids, feats, L.n_tokens());
    EXPECT(got.size() == c.logits.size());
    std::printf("  llava-next %s: max |logit - transformers| = %.3g\n", c.name.c_str(),
                emollm_test::max_abs_diff(got.data(), c.logits.data(), long(std::min(got.size(), c.logits.size()))));
    EXPECT_ALL_CLOSE(got.data(), c.logits.data(), std::min(got.size(), c.logits.size()), 1e-4, 0.0,
                     "llava-next " + c.name + " logits");
    EXPECT(greedy(m, c.ids, feats, L.n_tokens(), 12) == c.greedy);
    // the unexpanded prompt (one <image>) expands to the same positions
    std::vector<int32_t> once;
    bool put = false;
    for (int32_t id : c.ids)
      if (id != m.image_token_id()) once.push_back(id);
      else if (!put) once.push_back(id), put = true;
    auto got_once = all_logits(m, once, feats, L.n_tokens());
    EXPECT_ALL_CLOSE(got_once.data(), c.logits.data(), std::min(got_once.size(), c.logits.size()), 1e-4, 0.0,
                     "llava-next " + c.name + " logits (unexpanded prompt)");
  }
}

TEST(llava_next_wrong_tile_layout_or_unpadding_fails_parity) {
  const Next* t = next();
  if (!t) return;
  const LlavaModel& m = *t->model;
  const Case& c = t->cases[0];  // photo: 2x2 grid, rows 1..3 kept
  const AnyresLayout good = layout_of(m, c);
  const auto tiles = tile_features(m, c);
  const int64_t E = m.n_embd(), per = m.n_image_tokens();
  auto max_diff = [&](const std::vector<float>& feats) {
    auto got = all_logits(m, c.ids, feats, good.n_tokens());
    return emollm_test::max_abs_diff(got.data(), c.logits.data(), long(std::min(got.size(), c.logits.size())));
  };
  std::vector<float> packed(size_t(good.n_tokens() * E));
  anyres_pack(good, tiles.data(), E, m.image_newline(), packed.data());
  EXPECT(max_diff(packed) <= 1e-4);
  // wrong tile layout: the grid's tiles read column-major (tiles 1 and 2 swapped)
  std::vector<float> swapped = tiles;
  std::memcpy(swapped.data() + 2 * per * E, tiles.data() + 3 * per * E, size_t(per * E) * sizeof(float));
  std::memcpy(swapped.data() + 3 * per * E, tiles.data() + 2 * per * E, size_t(per * E) * sizeof(float));
  anyres_pack(good, swapped.data(), E, m.image_newline(), packed.data());
  EXPECT(max_diff(packed) > 1e-2);
  // wrong unpadding: the same number of rows, cut from the top instead of centred
  AnyresLayout top = good;
  top.row0 = 0;
  top.row1 = good.row1 - good.row0;
  EXPECT(top.n_tokens() == good.n_tokens());
  anyres_pack(top, tiles.data(), E, m.image_newline(), packed.data());
  EXPECT(max_diff(packed) > 1e-2);
  // no image_newline rows: a different count, refused by the splice
  AnyresLayout no_nl = good;
  no_nl.newline = false;
  EXPECT(no_nl.n_tokens() != good.n_tokens());
}

namespace {

using emollm_test::tdata;

// llava-next-tiny-hf -> text GGUF + llava-v1.6 mmproj (the tower's last layer dropped, as llama.cpp's
// llava surgery does: the features are the last stored layer = hidden_states[-2]).
void convert_next(const std::string& text_path, const std::string& mmproj_path) {
  auto st = SafetensorsStore::open(next_dir());
  emollm_test::GgufOut t;
  std::vector<std::string> vocab(32064);
  for (size_t i = 0; i < vocab.size(); ++i) vocab[i] = "t" + std::to_string(i);
  vocab[32000] = "<image>";
  t.kv_strs("tokenizer.ggml.tokens", vocab);
  t.kv_u32("tokenizer.ggml.bos_token_id", 1);
  t.kv_u32("tokenizer.ggml.eos_token_id", 2);
  emollm_test::add_text_model(t, st, {"llama", "language_model.model.", "language_model.lm_head.weight", 64, 2, 128, 4, 2, 32064, 512, 1e-5f, 10000.0f});
  t.write(text_path);

  emollm_test::GgufOut v;
  v.kv_str("general.architecture", "clip");
  v.kv_bool("clip.has_text_encoder", false);
  v.kv_bool("clip.has_vision_encoder", true);
  v.kv_bool("clip.has_llava_projector", true);
  v.kv_str("clip.projector_type", "mlp");
  v.kv_u32("clip.vision.image_size", 28);
  v.kv_u32("clip.vision.patch_size", 14);
  v.kv_u32("clip.vision.embedding_length", 32);
  v.kv_u32("clip.vision.feed_forward_length", 64);
  v.kv_u32("clip.vision.projection_dim", 512);
  v.kv_u32("clip.vision.attention.head_count", 2);
  v.kv_f32("clip.vision.attention.layer_norm_epsilon", 1e-5f);
  v.kv_u32("clip.vision.block_count", 1);
  v.kv_f32s("clip.vision.image_mean", {0.48145466f, 0.4578275f, 0.40821073f});
  v.kv_f32s("clip.vision.image_std", {0.26862954f, 0.26130258f, 0.27577711f});
  v.kv_bool("clip.use_gelu", false);
  v.kv_str("clip.vision.mm_patch_merge_type", "spatial_unpad");
  v.kv_i32s("clip.vision.image_grid_pinpoints", {28, 56, 56, 28, 56, 56});
  const std::string vt = "vision_tower.";
  v.tensor("v.class_embd", {32}, tdata(st, vt + "embeddings.class_embedding"));
  v.tensor("v.patch_embd.weight", {32, 3, 14, 14}, tdata(st, vt + "embeddings.patch_embedding.weight"));
  v.tensor("v.position_embd.weight", {5, 32}, tdata(st, vt + "embeddings.position_embedding.weight"));
  v.tensor("v.pre_ln.weight", {32}, tdata(st, vt + "pre_layrnorm.weight"));
  v.tensor("v.pre_ln.bias", {32}, tdata(st, vt + "pre_layrnorm.bias"));
  const std::string p = vt + "encoder.layers.0.", b = "v.blk.0.";
  for (const char* x : {"weight", "bias"}) {
    const std::string s = std::string(".") + x;
    const bool w = s == ".weight";
    auto sq = [&](int64_t r, int64_t c) { return w ? std::vector<int64_t>{r, c} : std::vector<int64_t>{r}; };
    v.tensor(b + "ln1" + s, {32}, tdata(st, p + "layer_norm1" + s));
    v.tensor(b + "ln2" + s, {32}, tdata(st, p + "layer_norm2" + s));
    v.tensor(b + "attn_q" + s, sq(32, 32), tdata(st, p + "self_attn.q_proj" + s));
    v.tensor(b + "attn_k" + s, sq(32, 32), tdata(st, p + "self_attn.k_proj" + s));
    v.tensor(b + "attn_v" + s, sq(32, 32), tdata(st, p + "self_attn.v_proj" + s));
    v.tensor(b + "attn_out" + s, sq(32, 32), tdata(st, p + "self_attn.out_proj" + s));
    v.tensor(b + "ffn_up" + s, sq(64, 32), tdata(st, p + "mlp.fc1" + s));
    v.tensor(b + "ffn_down" + s, sq(32, 64), tdata(st, p + "mlp.fc2" + s));
  }
  v.tensor("mm.0.weight", {64, 32}, tdata(st, "multi_modal_projector.linear_1.weight"));
  v.tensor("mm.0.bias", {64}, tdata(st, "multi_modal_projector.linear_1.bias"));
  v.tensor("mm.2.weight", {64, 64}, tdata(st, "multi_modal_projector.linear_2.weight"));
  v.tensor("mm.2.bias", {64}, tdata(st, "multi_modal_projector.linear_2.bias"));
  v.tensor("model.image_newline", {64}, tdata(st, "image_newline"));
  v.write(mmproj_path);
}

}  // namespace

TEST(llava_next_gguf_pair_parity) {
  const Next* t = next();
  if (!t) return;
  char tmpl[] = "/tmp/emollm-llava-next-gguf-XXXXXX";
  const char* d = ::mkdtemp(tmpl);
  EXPECT(d != nullptr);
  if (!d) return;
  const std::string text = std::string(d) + "/text.gguf", mm = std::string(d) + "/mmproj.gguf";
  convert_next(text, mm);
  LlavaLoadOptions o;
  o.mmproj = mm;
  auto g = LlavaModel::load(text, o);
  EXPECT(g->format() == "gguf" && g->anyres() && g->image_newline() != nullptr);
  EXPECT(g->grid_pinpoints() == t->model->grid_pinpoints());
  EXPECT(g->image_token_id() == 32000);
  for (const Case& c : t->cases) {
    const AnyresLayout L = layout_of(*g, c);
    EXPECT(L.n_tokens() == image_token_count(*g, c));
    std::vector<float> fg, fh;
    EXPECT(llava_next_encode_image(*g, c.pixels.data(), L, &fg));
    EXPECT(llava_next_encode_image(*t->model, c.pixels.data(), L, &fh));
    EXPECT(fg.size() == fh.size());
    EXPECT_ALL_CLOSE(fg.data(), fh.data(), std::min(fg.size(), fh.size()), 1e-5, 1e-5, "gguf vs hf packed features " + c.name);
    auto got = all_logits(*g, c.ids, fg, L.n_tokens());
    EXPECT_ALL_CLOSE(got.data(), c.logits.data(), std::min(got.size(), c.logits.size()), 1e-4, 0.0, "gguf pair logits " + c.name);
    EXPECT(greedy(*g, c.ids, fg, L.n_tokens(), 12) == c.greedy);
  }
  std::remove(text.c_str());
  std::remove(mm.c_str());
  ::rmdir(d);
}
