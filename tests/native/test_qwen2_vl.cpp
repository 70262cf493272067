// Tests for Qwen2-VL (native/model/qwen2_{vision,vl}.*, the M-RoPE path of llama.*) against
// shared/models/qwen2-vl-tiny-hf (transformers' own outputs, see its SOURCE.md): for the image
// (grid 1x4x8) and the 4-frame video (grid 2x4x6), with the reference pixel patches and
// input_ids, the logits at every prompt position are within 1e-4 and the 12 greedy tokens are
// equal, with the prompt expanded (as the processor gives it) and with one placeholder per visual.
// A wrong mrope_section, or plain 1-D positions, must move the logits well beyond tolerance.
// The shared dir comes from EMOLLM_SHARED_DIR, else ../shared. Missing data is a printed skip.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "../../native/core/error.h"
#include "../../native/loaders/json.h"
#include "../../native/model/qwen2_vl.h"
#include "testing.h"

using namespace emollm;

namespace {

std::string qdir() {
  static std::string dir = [] {
    std::string shared = std::getenv("EMOLLM_SHARED_DIR") ? std::getenv("EMOLLM_SHARED_DIR") : "../shared";
    std::string d = shared + "/models/qwen2-vl-tiny-hf";
    struct stat st;
    if (::stat((d + "/reference/expected.json").c_str(), &st) != 0) {
      std::printf("  [skip] qwen2-vl-tiny-hf tests: %s not found (set EMOLLM_SHARED_DIR)\n", d.c_str());
      return std::string();
    }
    return d;
  }();
  return dir;
}

std::vector<float> read_f32(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<char> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<float> out(b.size() / 4);
  std::memcpy(out.data(), b.data(), out.size() * 4);
  return out;
}
std::vector<int32_t> ints(const JsonValue* v) {
  std::vector<int32_t> r;
  if (v)
    for (const auto& x : v->items()) r.push_back(int32_t(x.as_int()));
  return r;
}

struct Case {
  std::string name;
  std::vector<int32_t> ids, greedy;
  GridThw grid;
  std::vector<float> pixels, logits;
};
struct Q {
  std::shared_ptr<Qwen2VLModel> model;
  std::vector<Case> cases;
};

const Q* q() {
  static std::unique_ptr<Q> t = []() -> std::unique_ptr<Q> {
    if (qdir().empty()) return nullptr;
    auto r = std::make_unique<Q>();
    r->model = Qwen2VLModel::load(qdir());
    JsonValue e = load_json_file(qdir() + "/reference/expected.json");
    for (const char* name : {"photo", "video"}) {
      const JsonValue* c = e.find(name);
      Case k;
      k.name = name;
      k.ids = ints(c->find("input_ids"));
      k.greedy = ints(c->find("greedy_new_tokens"));
      const JsonValue* g = c->find(k.name == "photo" ? "image_grid_thw" : "video_grid_thw");
      const auto& thw = g->items()[0].items();
      k.grid = GridThw{thw[0].as_int(), thw[1].as_int(), thw[2].as_int()};
      k.pixels = read_f32(qdir() + "/reference/" + (k.name == "photo" ? "photo_pixel_values.f32" : "video_pixel_values_videos.f32"));
      k.logits = read_f32(qdir() + "/reference/" + k.name + "_logits.f32");
      r->cases.push_back(std::move(k));
    }
    return r;
  }();
  return t.get();
}

std::vector<float> all_logits(const Qwen2VLModel& m, const Qwen2VLModel::Prompt& p, const std::vector<float>& feats,
                              const int32_t* pos3) {
  LlamaContextOptions o;
  o.n_ctx = 128;
  LlamaContext ctx(m.text_model(), o);
  std::vector<float> out(p.tokens.size() * size_t(ctx.n_vocab()));
  EXPECT(ctx.eval(p.tokens.data(), int64_t(p.tokens.size()), out.data(), nullptr, feats.data(), pos3) != nullptr);
  return out;
}

std::vector<int32_t> greedy(const Qwen2VLModel& m, const Qwen2VLModel::Prompt& p, const std::vector<float>& feats, int n) {
  LlamaContextOptions o;
  o.n_ctx = 128;
  LlamaContext ctx(m.text_model(), o);
  const int64_t V = ctx.n_vocab();
  const float* l = ctx.eval_prompt(p.tokens.data(), int64_t(p.tokens.size()), nullptr, feats.data(), p.pos3.data());
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    int32_t best = int32_t(std::max_element(l, l + V) - l);
    out.push_back(best);
    if (i + 1 < n) l = ctx.eval(&best, 1);
  }
  return out;
}

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT(a.size() == b.size());
  return emollm_test::max_abs_diff(a.data(), b.data(), long(std::min(a.size(), b.size())));
}

}  // namespace

TEST(qwen2_vl_mrope_positions_follow_get_rope_index) {
  // 2 text, a 1x4x4 image (2x2 merged), 2 text: t stays, h/w walk the merged grid, text resumes at max + 1
  std::vector<bool> vis{false, false, true, true, true, true, false, false};
  auto p = Qwen2VLModel::mrope_positions(vis, {GridThw{1, 4, 4}}, 2);
  const std::vector<int32_t> want{0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 2, 3, 2, 2, 3, 3, 4, 4, 4, 5, 5, 5};
  EXPECT(p == want);
  // a video of 2 temporal slices: t advances per slice
  auto v = Qwen2VLModel::mrope_positions({true, true}, {GridThw{2, 2, 2}}, 2);
  EXPECT((v == std::vector<int32_t>{0, 0, 0, 1, 0, 0}));
  EXPECT_THROWS(Qwen2VLModel::mrope_positions({true, false}, {GridThw{2, 2, 2}}, 2), ErrorCode::InvalidArgument);
}

TEST(qwen2_vl_tiny_hf_parity) {
  const Q* t = q();
  if (!t) return;
  const Qwen2VLModel& m = *t->model;
  EXPECT(m.image_token_id() == 6 && m.video_token_id() == 7);
  for (const Case& c : t->cases) {
    std::vector<float> feats;
    EXPECT(m.encode(c.pixels.data(), {c.grid}, &feats));
    const int64_t nt = m.n_tokens(c.grid);
    const int32_t pad = c.name == "photo" ? m.image_token_id() : m.video_token_id();
    EXPECT(std::count(c.ids.begin(), c.ids.end(), pad) == nt);  // the processor's expansion, exactly
    auto p = m.prepare(c.ids.data(), int64_t(c.ids.size()), feats.data(), {c.grid});
    auto got = all_logits(m, p, feats, p.pos3.data());
    std::printf("  qwen2-vl %s: max |logit - transformers| = %.3g\n", c.name.c_str(),
                emollm_test::max_abs_diff(got.data(), c.logits.data(), long(std::min(got.size(), c.logits.size()))));
    EXPECT_ALL_CLOSE(got.data(), c.logits.data(), std::min(got.size(), c.logits.size()), 1e-4, 0.0, "qwen2-vl " + c.name + " logits");
    EXPECT(got.size() == c.logits.size());
    EXPECT(greedy(m, p, feats, 12) == c.greedy);
    // one placeholder per visual expands to the same prompt
    std::vector<int32_t> once;
    bool put = false;
    for (int32_t id : c.ids)
      if (id != pad) once.push_back(id);
      else if (!put) once.push_back(id), put = true;
    auto p1 = m.prepare(once.data(), int64_t(once.size()), feats.data(), {c.grid});
    EXPECT(p1.tokens == p.tokens && p1.pos3 == p.pos3);
  }
}

TEST(qwen2_vl_wrong_mrope_fails_parity) {
  const Q* t = q();
  if (!t) return;
  const Qwen2VLModel& m = *t->model;
  const Case& c = t->cases[1];  // the video: all three components vary
  std::vector<float> feats;
  EXPECT(m.encode(c.pixels.data(), {c.grid}, &feats));
  auto p = m.prepare(c.ids.data(), int64_t(c.ids.size()), feats.data(), {c.grid});
  EXPECT(max_diff(all_logits(m, p, feats, p.pos3.data()), c.logits) <= 1e-4);
  // plain 1-D positions (0, 1, 2, ... on all three components)
  std::vector<int32_t> seq(p.pos3.size());
  for (size_t i = 0; i < seq.size(); ++i) seq[i] = int32_t(i / 3);
  EXPECT(max_diff(all_logits(m, p, feats, seq.data()), c.logits) > 1e-2);
  // mrope_section [3, 3, 2] instead of [2, 3, 3]: rebuild the per-section frequencies
  LlamaModel& tm = *m.text_model();
  const auto saved = tm.mrope_inv_freq;
  const int64_t half = tm.hparams().rope_dim / 2;
  const int64_t wrong[3] = {3, 3, 2};
  int64_t lo = 0;
  for (int s = 0; s < 3; ++s) {
    std::vector<float> f(size_t(half), 0.0f);
    for (int64_t i = lo; i < lo + wrong[s]; ++i) f[size_t(i)] = saved[0][size_t(i)] + saved[1][size_t(i)] + saved[2][size_t(i)];
    tm.mrope_inv_freq[size_t(s)] = f;
    lo += wrong[s];
  }
  const double d = max_diff(all_logits(m, p, feats, p.pos3.data()), c.logits);
  tm.mrope_inv_freq = saved;
  EXPECT(d > 1e-2);
}

TEST(qwen2_vl_prefix_reuse_keeps_mrope_positions) {
  const Q* t = q();
  if (!t) return;
  const Qwen2VLModel& m = *t->model;
  const Case& c = t->cases[1];  // video
  std::vector<float> feats;
  EXPECT(m.encode(c.pixels.data(), {c.grid}, &feats));
  // the prompt minus its last 3 tokens, then the full prompt on the same context: the cached
  // prefix (visual pseudo-ids and their 3-D positions) is reused, and the last logits must equal
  // the reference's last row
  auto full = m.prepare(c.ids.data(), int64_t(c.ids.size()), feats.data(), {c.grid});
  std::vector<int32_t> shorter(c.ids.begin(), c.ids.end() - 3);
  auto part = m.prepare(shorter.data(), int64_t(shorter.size()), feats.data(), {c.grid});
  LlamaContextOptions o;
  o.n_ctx = 128;
  LlamaContext ctx(m.text_model(), o);
  EXPECT(ctx.eval_prompt(part.tokens.data(), int64_t(part.tokens.size()), nullptr, feats.data(), part.pos3.data()) != nullptr);
  const float* l = ctx.eval_prompt(full.tokens.data(), int64_t(full.tokens.size()), nullptr, feats.data(), full.pos3.data());
  EXPECT(l != nullptr);
  const int64_t V = ctx.n_vocab(), n = int64_t(full.tokens.size());
  if (l) EXPECT_ALL_CLOSE(l, c.logits.data() + (n - 1) * V, V, 1e-4, 0.0, "qwen2-vl logits after prefix reuse");
  // a generated token continues at max position + 1 (transformers' rope_deltas): decoding the
  // reference's first greedy token then gives the same next token as the uncached greedy run
  const int32_t first = c.greedy[0];
  const float* l2 = ctx.eval(&first, 1);
  EXPECT(l2 != nullptr);
  if (l2) EXPECT(int32_t(std::max_element(l2, l2 + V) - l2) == c.greedy[1]);
}
