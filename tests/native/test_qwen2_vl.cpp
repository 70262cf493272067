// Tests for Qwen2-VL (native/model/qwen2_{vision,vl}.*, the M-RoPE path of llama.*) against
// shared/models/qwen2-vl-tiny-hf (transformers' own outputs, see its SOURCE.md): for the image
// (grid 1x4x8) and the 4-frame video (grid 2x4x6), with the reference pixel patches and
// input_ids, the logits at every prompt position are within 1e-4 and the 12 greedy tokens are
// equal, with the prompt expanded (as the processor gives it) and with one placeholder per visual.
// A wrong mrope_section, or plain 1-D positions, must move the logits well beyond tolerance.
// llama.cpp's Qwen2-VL pair (text GGUF "qwen2vl" + mmproj "qwen2vl_merger"), converted here from
// the same weights in the layout of llama.cpp's convert_hf_to_gguf.py (Conv3d split into two
// temporal slices, qkv split, merger ln_q as v.post_ln, merger MLP as mm.0 / mm.2), must give the
// HF path's logits (1e-5) and greedy tokens.
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
#include "../../native/model/qwen2_vl.h"
#include "../../native/model/scheduler.h"
#include "../../native/model/session.h"
#include "gguf_out.h"
#include "greedy_decode.h"
#include "hf_to_gguf.h"
#include "shared_data.h"
#include "submit_together.h"
#include "testing.h"

using namespace emollm;

namespace {

using emollm_test::ints;
using emollm_test::read_f32;

std::string qdir() {
  static std::string dir = emollm_test::shared_model_dir("qwen2-vl-tiny-hf", {"reference/expected.json"});
  return dir;
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
  const float* l = ctx.eval_prompt(p.tokens.data(), int64_t(p.tokens.size()), nullptr, feats.data(), p.pos3.data());
  return emollm_test::argmax_continuation(ctx, l, n);
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

namespace {

using emollm_test::tdata;

std::vector<float> rows(const std::vector<float>& w, int64_t cols, int64_t r0, int64_t n) {
  return std::vector<float>(w.begin() + r0 * cols, w.begin() + (r0 + n) * cols);
}

// qwen2-vl-tiny-hf -> text.gguf + mmproj.gguf in llama.cpp's layouts. The mmproj's keys are the
// ones llama.cpp's Qwen2VLVisionModel writes: clip.vision.feed_forward_length is vision_config's
// hidden_size (the merger's output width, 3584 for Qwen2-VL-7B, not the MLP's 5120), no
// spatial_merge_size (clip.cpp's default 2), no use_gelu (quick_gelu). `ff_key` overrides that key
// to show it is not read as the MLP width; `vision_ptype_key` names the projector type the
// mixed-modality way (clip.vision.projector_type).
void convert_qwen(const std::string& text_path, const std::string& mmproj_path, uint32_t ff_key = 64,
                  bool vision_ptype_key = false) {
  auto st = SafetensorsStore::open(qdir());
  emollm_test::GgufOut t;
  t.kv_i32s("qwen2vl.rope.dimension_sections", {2, 3, 3, 0});
  std::vector<std::string> vocab(561);
  for (size_t i = 0; i < vocab.size(); ++i) vocab[i] = "t" + std::to_string(i);
  const char* special[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                           "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"};
  for (int i = 0; i < 8; ++i) vocab[size_t(i)] = special[i];
  t.kv_strs("tokenizer.ggml.tokens", vocab);
  t.kv_u32("tokenizer.ggml.eos_token_id", 2);
  emollm_test::add_text_model(t, st, {"qwen2vl", "model.", "lm_head.weight", 64, 2, 128, 4, 2, 561, 1024, 1e-6f, 1000000.0f});
  t.write(text_path);

  emollm_test::GgufOut v;
  v.kv_str("general.architecture", "clip");
  v.kv_u32("general.file_type", 0);
  v.kv_bool("clip.has_vision_encoder", true);
  v.kv_u32("clip.vision.projection_dim", 64);
  v.kv_u32("clip.vision.image_size", 560);
  v.kv_u32("clip.vision.patch_size", 14);
  v.kv_u32("clip.vision.embedding_length", 32);
  v.kv_u32("clip.vision.feed_forward_length", ff_key);
  v.kv_u32("clip.vision.block_count", 2);
  v.kv_u32("clip.vision.attention.head_count", 2);
  v.kv_f32s("clip.vision.image_mean", {0.48145466f, 0.4578275f, 0.40821073f});
  v.kv_f32s("clip.vision.image_std", {0.26862954f, 0.26130258f, 0.27577711f});
  v.kv_str(vision_ptype_key ? "clip.vision.projector_type" : "clip.projector_type", "qwen2vl_merger");
  v.kv_f32("clip.vision.attention.layer_norm_epsilon", 1e-6f);
  // Conv3d [32, 3, 2, 14, 14] -> two Conv2d kernels [32, 3, 14, 14], one per temporal slice
  const auto pe = tdata(st, "visual.patch_embed.proj.weight");
  for (int k = 0; k < 2; ++k) {
    std::vector<float> s(size_t(32 * 3 * 14 * 14));
    for (int d = 0; d < 32; ++d)
      for (int c = 0; c < 3; ++c)
        std::memcpy(&s[size_t((d * 3 + c) * 196)], &pe[size_t(((d * 3 + c) * 2 + k) * 196)], 196 * 4);
    v.tensor(k == 0 ? "v.patch_embd.weight" : "v.patch_embd.weight.1", {32, 3, 14, 14}, s);
  }
  for (int i = 0; i < 2; ++i) {
    const std::string p = "visual.blocks." + std::to_string(i) + ".", b = "v.blk." + std::to_string(i) + ".";
    const auto qkv = tdata(st, p + "attn.qkv.weight"), qkvb = tdata(st, p + "attn.qkv.bias");
    const char* names[3] = {"attn_q", "attn_k", "attn_v"};
    for (int k = 0; k < 3; ++k) {
      v.tensor(b + names[k] + ".weight", {32, 32}, rows(qkv, 32, k * 32, 32));
      v.tensor(b + names[k] + ".bias", {32}, rows(qkvb, 1, k * 32, 32));
    }
    v.tensor(b + "attn_out.weight", {32, 32}, tdata(st, p + "attn.proj.weight"));
    v.tensor(b + "attn_out.bias", {32}, tdata(st, p + "attn.proj.bias"));
    v.tensor(b + "ln1.weight", {32}, tdata(st, p + "norm1.weight"));
    v.tensor(b + "ln1.bias", {32}, tdata(st, p + "norm1.bias"));
    v.tensor(b + "ln2.weight", {32}, tdata(st, p + "norm2.weight"));
    v.tensor(b + "ln2.bias", {32}, tdata(st, p + "norm2.bias"));
    v.tensor(b + "ffn_up.weight", {64, 32}, tdata(st, p + "mlp.fc1.weight"));
    v.tensor(b + "ffn_up.bias", {64}, tdata(st, p + "mlp.fc1.bias"));
    v.tensor(b + "ffn_down.weight", {32, 64}, tdata(st, p + "mlp.fc2.weight"));
    v.tensor(b + "ffn_down.bias", {32}, tdata(st, p + "mlp.fc2.bias"));
  }
  v.tensor("v.post_ln.weight", {32}, tdata(st, "visual.merger.ln_q.weight"));
  v.tensor("v.post_ln.bias", {32}, tdata(st, "visual.merger.ln_q.bias"));
  v.tensor("mm.0.weight", {128, 128}, tdata(st, "visual.merger.mlp.0.weight"));
  v.tensor("mm.0.bias", {128}, tdata(st, "visual.merger.mlp.0.bias"));
  v.tensor("mm.2.weight", {64, 128}, tdata(st, "visual.merger.mlp.2.weight"));
  v.tensor("mm.2.bias", {64}, tdata(st, "visual.merger.mlp.2.bias"));
  v.write(mmproj_path);
}

}  // namespace

TEST(qwen2_vl_gguf_pair_parity) {
  const Q* t = q();
  if (!t) return;
  char tmpl[] = "/tmp/emollm-qwen2vl-gguf-XXXXXX";
  const char* d = ::mkdtemp(tmpl);
  EXPECT(d != nullptr);
  if (!d) return;
  const std::string text = std::string(d) + "/text.gguf", mm = std::string(d) + "/mmproj.gguf";
  convert_qwen(text, mm);
  EXPECT(Qwen2VLModel::is_qwen2vl_mmproj(mm));
  EXPECT(!Qwen2VLModel::is_qwen2vl_mmproj(text));
  auto g = Qwen2VLModel::load_gguf(text, mm);
  EXPECT(g->text_model()->format() == "gguf" && g->text_model()->arch() == "qwen2vl");
  EXPECT(g->image_token_id() == 6 && g->video_token_id() == 7);
  EXPECT((g->text_model()->hparams().mrope_section == std::vector<int64_t>{2, 3, 3}));
  const Qwen2VLModel& hf = *t->model;
  for (const Case& c : t->cases) {
    std::vector<float> fh, fg;
    EXPECT(hf.encode(c.pixels.data(), {c.grid}, &fh));
    EXPECT(g->encode(c.pixels.data(), {c.grid}, &fg));
    EXPECT(fg.size() == fh.size());
    EXPECT_ALL_CLOSE(fg.data(), fh.data(), std::min(fg.size(), fh.size()), 1e-5, 1e-5, "gguf vs hf visual features " + c.name);
    auto p = g->prepare(c.ids.data(), int64_t(c.ids.size()), fg.data(), {c.grid});
    auto got = all_logits(*g, p, fg, p.pos3.data());
    EXPECT(got.size() == c.logits.size());
    EXPECT_ALL_CLOSE(got.data(), c.logits.data(), std::min(got.size(), c.logits.size()), 1e-4, 0.0, "gguf pair logits " + c.name);
    EXPECT(greedy(*g, p, fg, 12) == c.greedy);
  }
  // Qwen2-VL-7B's mmproj says feed_forward_length 3584 for a 5120-wide MLP: the key is not the MLP
  // width. And a mixed-modality file names its projector type clip.vision.projector_type.
  {
    const std::string text2 = std::string(d) + "/text2.gguf", mm2 = std::string(d) + "/mmproj-ff.gguf";
    convert_qwen(text2, mm2, 3584, true);  // new files: `g` maps the first pair
    EXPECT(Qwen2VLModel::is_qwen2vl_mmproj(mm2));
    auto g2 = Qwen2VLModel::load_gguf(text2, mm2);
    const Case& c = t->cases[0];
    std::vector<float> f1, f2;
    EXPECT(g->encode(c.pixels.data(), {c.grid}, &f1));
    EXPECT(g2->encode(c.pixels.data(), {c.grid}, &f2));
    EXPECT(f1 == f2);
    g2.reset();
    std::remove(text2.c_str());
    std::remove(mm2.c_str());
  }
  // a Qwen2-VL mmproj with a llama text GGUF, or a missing file, is a typed error
  EXPECT_THROWS(Qwen2VLModel::load_gguf(text, text), ErrorCode::Unsupported);
  EXPECT_THROWS(Qwen2VLModel::load_gguf(text, std::string(d) + "/missing.gguf"), ErrorCode::FileNotFound);
  std::remove(text.c_str());
  std::remove(mm.c_str());
  ::rmdir(d);
}

// Preemption under a small KV pool recomputes a sequence from its prompt and the tokens it had
// (scheduler.h); for Qwen2-VL the prompt's visual positions carry 3-D M-RoPE positions and the
// generated tokens continue at max position + 1. Four calls with a visual (the photo and the
// video prompts cut 20 and 24 tokens short, 41-48 positions: the visual and a few text tokens
// after it; the second cut with a text token before the visual changed, so no two calls share
// their visual positions and a preempted call recomputes them) and 48 greedy tokens each, in a pool
// of 12 blocks of 16: the four prompts (3 blocks each) are admitted together and outgrow it.
// Their greedy tokens, stop reasons and streamed tokens must equal each call alone, with
// preemptions and recomputed positions counted.
TEST(qwen2_vl_preempted_generation_equals_alone) {
  const Q* t = q();
  if (!t) return;
  const Qwen2VLModel& m = *t->model;
  struct Call {
    Qwen2VLModel::Prompt p;
    std::vector<float> feats;
  };
  std::vector<Call> calls;
  for (const Case& c : t->cases)
    for (size_t cut : {size_t(20), size_t(24)}) {
      Call k;
      EXPECT(m.encode(c.pixels.data(), {c.grid}, &k.feats));
      std::vector<int32_t> ids(c.ids.begin(), c.ids.end() - int64_t(cut));
      if (cut == 24) ids[3] = 100;  // a text token before the visual changed: no prefix to share, all recomputed
      k.p = m.prepare(ids.data(), int64_t(ids.size()), k.feats.data(), {c.grid});
      calls.push_back(std::move(k));
    }
  const int64_t kTokens = 48;
  GenerateParams params;
  params.max_tokens = kTokens;
  params.sampler.temperature = 0.0f;
  std::vector<GenerateResult> want;
  for (const Call& k : calls) {
    LlamaContextOptions o;
    o.n_ctx = 128;
    LlamaContext alone(m.text_model(), o);
    want.push_back(Session(alone).generate(k.p.tokens, k.feats.data(), params, nullptr, {}, k.p.pos3.data()));
  }
  SchedulerOptions so;
  so.n_ctx = 128;
  so.n_seq = 4;
  so.kv_block_size = 16;
  so.kv_positions = 12 * 16;
  Scheduler sched(m.text_model(), so);
  const size_t N = calls.size();
  std::vector<SeqRequest> requests(N);
  for (size_t i = 0; i < N; ++i) {
    requests[i].prompt = calls[i].p.tokens;
    requests[i].embd = calls[i].feats;
    requests[i].pos3 = calls[i].p.pos3;
    requests[i].params = params;
  }
  const emollm_test::TogetherRun together = emollm_test::submit_together(sched, std::move(requests));  // admitted together
  for (size_t i = 0; i < N; ++i) {
    const SeqOutcome& o = together.got[i];
    const std::string what = "qwen2-vl call " + std::to_string(i);
    if (!(!o.error)) ::emollm_test::report_failure(__FILE__, __LINE__, what + " failed");
    if (!(o.generated.tokens == want[i].tokens)) ::emollm_test::report_failure(__FILE__, __LINE__, what + ": tokens differ from the call alone");
    if (!(o.generated.reason == want[i].reason)) ::emollm_test::report_failure(__FILE__, __LINE__, what + ": stop reason differs");
    if (!(together.streamed[i] == want[i].tokens)) ::emollm_test::report_failure(__FILE__, __LINE__, what + ": streamed tokens differ");
  }
  const SchedulerStats st = sched.stats();
  std::printf("  qwen2-vl, 4 visual prompts (%zu-%zu positions) + %lld tokens in 12 blocks of 16: %lld preemptions, "
              "%lld positions recomputed, %lld prefix copies, max batch %lld\n",
              calls[1].p.tokens.size(), calls[2].p.tokens.size(), (long long)kTokens, (long long)st.kv_preemptions,
              (long long)st.kv_recomputed_tokens, (long long)st.prefix_copies, (long long)st.max_batch);
  EXPECT(st.kv_preemptions > 0);
  EXPECT(st.kv_recomputed_tokens > 0);
  EXPECT(st.active == 0 && st.queued == 0 && st.prefilling == 0);
  EXPECT(st.kv_blocks_used == st.kv_blocks_cached);
}
