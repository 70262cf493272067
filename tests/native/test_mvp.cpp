// Tests for EmoLLM's Multi-perspective Visual Projection (native/model/emollm.*):
//  - the fused multi-head projection (stacked first layers, one Backend::mvp_projection per
//    group) equals the head-by-head composition computed with the scalar reference gemm (1e-5);
//  - tests/fixtures/emollm/{gated-sum,concat} (an independent PyTorch MVP module, see
//    scripts/fixtures/make_mvp_fixture.py): image features after the MVP and logits at every
//    position within 1e-4, with face boxes, zero faces, a box outside the image, max_faces;
//  - closed perspectives: an EmoLLM section whose only open head is the LLaVA projector gives the
//    base model's features and logits exactly;
//  - the variable-count splice and config errors.
// Fixtures from EMOLLM_MVP_FIXTURES, else tests/fixtures/emollm next to this file (printed skip).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "../../kernels/cpu/kernels.h"
#include "../../base/error.h"
#include "../../native/loaders/json.h"
#include "../../native/loaders/safetensors.h"
#include "../../native/model/emollm.h"
#include "testing.h"

using namespace emollm;

namespace {

bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

std::string here_rel(const char* rel) {
  std::string f = __FILE__;
  size_t slash = f.find_last_of('/');
  return (slash == std::string::npos ? std::string(".") : f.substr(0, slash)) + rel;
}

std::string mvp_fixtures() {
  static std::string dir = [] {
    std::string d = std::getenv("EMOLLM_MVP_FIXTURES") ? std::getenv("EMOLLM_MVP_FIXTURES") : here_rel("/../fixtures/emollm");
    if (!exists(d + "/gated-sum/config.json")) d = "tests/fixtures/emollm";
    if (!exists(d + "/gated-sum/config.json")) {
      std::printf("  [skip] EmoLLM MVP fixture tests: %s not found (set EMOLLM_MVP_FIXTURES)\n", d.c_str());
      return std::string();
    }
    return d;
  }();
  return dir;
}

std::string llava_fixture(const char* name) {
  std::string d = here_rel("/../fixtures/llava/") + name;
  if (!exists(d + "/config.json")) d = std::string("tests/fixtures/llava/") + name;
  return exists(d + "/config.json") ? d : std::string();
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

std::vector<std::vector<FaceBox>> faces_of(const JsonValue& inputs) {
  std::vector<std::vector<FaceBox>> out;
  for (const auto& img : inputs.find("faces")->items()) {
    out.emplace_back();
    for (const auto& b : img.items())
      out.back().push_back(FaceBox{float(b.find("x")->as_double()), float(b.find("y")->as_double()),
                                   float(b.find("width")->as_double()), float(b.find("height")->as_double())});
  }
  return out;
}

std::vector<float> all_logits(const EmollmModel& m, const std::vector<int32_t>& ids, const std::vector<float>& feats,
                              const std::vector<int64_t>& counts) {
  auto toks = splice_prompt_counts(m.image_token_id(), ids.data(), int64_t(ids.size()), feats.data(), m.n_embd(), counts);
  LlamaContextOptions o;
  o.n_ctx = 256;
  LlamaContext ctx(m.llava().text_model(), o);
  std::vector<float> out(toks.size() * size_t(ctx.n_vocab()));
  EXPECT(ctx.eval(toks.data(), int64_t(toks.size()), out.data(), nullptr, feats.data()) != nullptr);
  return out;
}

void fixture_parity(const std::string& name) {
  const std::string d = mvp_fixtures() + "/" + name;
  auto m = EmollmModel::load(d);
  JsonValue in = load_json_file(d + "/inputs.json");
  const auto faces = faces_of(in);
  const auto px = read_f32(d + "/pixel_values.f32");
  const auto want_feats = read_f32(d + "/image_features.f32");
  const auto want_logits = read_f32(d + "/logits.f32");
  std::vector<float> feats;
  std::vector<int64_t> counts;
  EXPECT(m->encode_images(px.data(), int64_t(faces.size()), &faces, &feats, &counts));
  const auto want_counts = ints(in.find("token_counts"));
  EXPECT(counts.size() == want_counts.size());
  for (size_t i = 0; i < counts.size() && i < want_counts.size(); ++i) EXPECT(counts[i] == want_counts[i]);
  EXPECT(feats.size() == want_feats.size());
  if (feats.size() != want_feats.size()) return;
  const double fd = emollm_test::max_abs_diff(feats.data(), want_feats.data(), long(feats.size()));
  std::printf("  emollm %-9s features max |diff| %.3g", name.c_str(), fd);
  EXPECT(fd <= 1e-4);
  for (const char* key : {"input_ids_unexpanded", "input_ids_expanded"}) {
    auto lg = all_logits(*m, ints(in.find(key)), feats, counts);
    EXPECT(lg.size() == want_logits.size());
    if (lg.size() != want_logits.size()) continue;
    const double ld = emollm_test::max_abs_diff(lg.data(), want_logits.data(), long(lg.size()));
    std::printf("  logits (%s) %.3g", key + 10, ld);
    EXPECT(ld <= 1e-4);
  }
  std::printf("\n");
}

}  // namespace

TEST(emollm_fixture_gated_sum_parity) {
  if (mvp_fixtures().empty()) return;
  fixture_parity("gated-sum");
}

TEST(emollm_fixture_concat_parity) {
  if (mvp_fixtures().empty()) return;
  fixture_parity("concat");
}

// The fused path (one mvp_projection over the stacked heads of a group, groups summed) against
// the composition head by head with the scalar reference gemm.
TEST(emollm_fused_mvp_equals_unfused_composition) {
  if (mvp_fixtures().empty()) return;
  const std::string d = mvp_fixtures() + "/gated-sum";
  auto m = EmollmModel::load(d);
  const auto px = read_f32(d + "/pixel_values.f32");
  const LlavaModel& lv = m->llava();
  const int64_t B = 2, T = m->n_vision_tokens(), C = lv.vision().hparams().n_embd, E = m->n_embd();
  const auto& tl = m->tower_layers();
  std::vector<float> tf(size_t(B * T * C * int64_t(tl.size())));
  EXPECT(lv.vision().encode(lv.text_model()->backend(), px.data(), B, tl, lv.drop_cls(), tf.data()));
  std::vector<float> fused;
  std::vector<int64_t> counts;
  m->project(tf.data(), B, nullptr, &fused, &counts);
  // unfused: sum over the open mlp heads, in order, of gate * linear_2(gelu(linear_1(x)))
  std::vector<float> want(size_t(B * T * E), 0.0f);
  int n_heads = 0;
  for (const MvpPerspective& p : m->perspectives()) {
    if (!p.sums() || p.gate == MvpGate::Closed) continue;
    ++n_heads;
    std::vector<float> x(size_t(B * T * p.d_in));
    for (int64_t r = 0; r < B * T; ++r)
      for (size_t j = 0; j < p.layers.size(); ++j) {
        const size_t slot = size_t(std::find(tl.begin(), tl.end(), p.layers[j]) - tl.begin());
        std::memcpy(x.data() + r * p.d_in + int64_t(j) * C, tf.data() + (r * int64_t(tl.size()) + int64_t(slot)) * C,
                    size_t(C) * 4);
      }
    std::vector<float> h(size_t(B * T * p.d_hid)), y(size_t(B * T * E));
    ref::gemm(x.data(), p.d_in, p.w1.data, p.w1.dtype, p.b1, h.data(), p.d_hid, B * T, p.d_hid, p.d_in);
    for (auto& v : h) v = float(0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))));
    ref::gemm(h.data(), p.d_hid, p.w2.data, p.w2.dtype, p.b2, y.data(), E, B * T, E, p.d_hid);
    for (int64_t r = 0; r < B * T; ++r)
      for (int64_t c = 0; c < E; ++c) want[size_t(r * E + c)] += p.gate_values[size_t(c)] * y[size_t(r * E + c)];
  }
  EXPECT(n_heads == 3);
  // the summed block is first in each image's tokens (attention-pool tokens follow)
  double worst = 0;
  int64_t off = 0;
  for (int64_t b = 0; b < B; ++b) {
    worst = std::max(worst, emollm_test::max_abs_diff(fused.data() + off * E, want.data() + b * T * E, long(T * E)));
    off += counts[size_t(b)];
  }
  std::printf("  fused vs unfused gated-sum (3 heads, 2 groups): max |diff| %.3g\n", worst);
  EXPECT(worst <= 1e-5);
}

// A section whose only open head carries the LLaVA projector (gate "open") and whose other heads
// are closed gives the base's features and logits exactly.
TEST(emollm_closed_heads_equal_base) {
  const std::string d = llava_fixture("layers-list");
  if (d.empty()) {
    std::printf("  [skip] emollm_closed_heads_equal_base: tests/fixtures/llava/layers-list not found\n");
    return;
  }
  auto base = LlavaModel::load(d);
  // MVP weights = the projector's, written to a temporary safetensors in memory
  SafetensorsStore st = SafetensorsStore::open(d);
  std::string header = "{";
  std::string data;
  auto add = [&](const std::string& name, const char* src) {
    const TensorInfo* t = st.find(src);
    EXPECT(t != nullptr);
    std::string shape;
    for (size_t i = 0; i < t->shape.size(); ++i) shape += (i ? "," : "") + std::to_string(t->shape[i]);
    if (header.size() > 1) header += ",";
    header += "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[" + shape + "],\"data_offsets\":[" +
              std::to_string(data.size()) + "," + std::to_string(data.size() + t->nbytes) + "]}";
    data.append(reinterpret_cast<const char*>(t->data), t->nbytes);
  };
  add("mvp.heads.0.linear_1.weight", "multi_modal_projector.linear_1.weight");
  add("mvp.heads.0.linear_1.bias", "multi_modal_projector.linear_1.bias");
  add("mvp.heads.0.linear_2.weight", "multi_modal_projector.linear_2.weight");
  add("mvp.heads.0.linear_2.bias", "multi_modal_projector.linear_2.bias");
  header += "}";
  while (header.size() % 8) header += ' ';
  std::string bytes(8, '\0');
  uint64_t n = header.size();
  std::memcpy(&bytes[0], &n, 8);
  bytes += header + data;
  auto mf = MappedFile::from_bytes(bytes.data(), bytes.size(), "mvp.safetensors");
  auto store = std::make_shared<SafetensorsStore>(SafetensorsStore::parse(mf));
  const char* section = R"({"version": 1, "fusion": "gated-sum", "perspectives": [
      {"name": "global", "type": "mlp", "gate": "open"},
      {"name": "low-level", "type": "multi-layer-mlp", "layers": [-2, 0], "gate": "closed"},
      {"name": "pool", "type": "attention-pool", "n_queries": 8, "gate": "closed"},
      {"name": "faces", "type": "face-region", "gate": "closed"}]})";
  JsonValue sec = parse_json(section, std::strlen(section), "section");
  auto m = EmollmModel::from_parts(base, sec, store, "config.json");
  EXPECT(m->n_image_tokens(3) == base->n_image_tokens());
  const auto px = read_f32(d + "/pixel_values.f32");
  std::vector<float> want(size_t(base->n_image_tokens() * base->n_embd())), got;
  std::vector<int64_t> counts;
  EXPECT(base->encode_images(px.data(), 1, want.data()));
  std::vector<std::vector<FaceBox>> faces{{FaceBox{0, 0, 20, 20}}};
  EXPECT(m->encode_images(px.data(), 1, &faces, &got, &counts));
  EXPECT(got == want);  // bit-exact
  JsonValue ids = load_json_file(d + "/input_ids.json");
  auto tok = ints(ids.find("input_ids_unexpanded"));
  auto a = splice_prompt_counts(m->image_token_id(), tok.data(), int64_t(tok.size()), got.data(), m->n_embd(), counts);
  auto b = base->splice_prompt(tok.data(), int64_t(tok.size()), want.data(), 1);
  EXPECT(a == b);
}

// encode_images into the caller's memory takes the counts the caller sized it from
// (image_token_counts, computed once) and checks the heads' counts against them image by image.
TEST(emollm_encode_into_promised_counts) {
  if (mvp_fixtures().empty()) return;
  const std::string d = mvp_fixtures() + "/gated-sum";
  auto m = EmollmModel::load(d);
  JsonValue in = load_json_file(d + "/inputs.json");
  const auto faces = faces_of(in);
  const auto px = read_f32(d + "/pixel_values.f32");
  const int64_t B = int64_t(faces.size());
  std::vector<float> want;
  std::vector<int64_t> counts;
  EXPECT(m->encode_images(px.data(), B, &faces, &want, &counts));
  const std::vector<int64_t> promised = m->image_token_counts(B, &faces);
  EXPECT(promised == counts && promised.size() == 2 && promised[0] != promised[1]);
  std::vector<float> got(want.size(), -1.0f);
  EXPECT(m->encode_images(px.data(), B, &faces, got.data(), promised));
  EXPECT(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) == 0);  // the same bits
  // the same total split otherwise: the heads give what was not promised
  std::vector<int64_t> moved = promised;
  moved[0] += 1;
  moved[1] -= 1;
  std::vector<float> sink(want.size(), -1.0f);
  EXPECT_THROWS(m->encode_images(px.data(), B, &faces, sink.data(), moved), ErrorCode::Internal);
  bool untouched = true;  // refused before anything is written
  for (float x : sink) untouched = untouched && x == -1.0f;
  EXPECT(untouched);
  EXPECT_THROWS(m->encode_images(px.data(), B, &faces, sink.data(), std::vector<int64_t>{promised[0]}),
                ErrorCode::InvalidArgument);
}

TEST(emollm_splice_counts) {
  const int32_t IMG = 9;
  const int64_t E = 2;
  std::vector<float> f(size_t(5 * E));
  for (size_t i = 0; i < f.size(); ++i) f[i] = float(i);
  std::vector<int64_t> counts{3, 0, 2};
  std::vector<int32_t> once{1, IMG, 4, IMG, 5, IMG};
  auto a = splice_prompt_counts(IMG, once.data(), int64_t(once.size()), f.data(), E, counts);
  EXPECT(a.size() == 1 + 3 + 1 + 0 + 1 + 2);
  EXPECT(a[0] == 1 && a[1] < 0 && a[3] < 0 && a[4] == 4 && a[5] == 5 && a[6] < 0);
  std::vector<int32_t> expanded{1, IMG, IMG, IMG, 4, 5, IMG, IMG};
  auto b = splice_prompt_counts(IMG, expanded.data(), int64_t(expanded.size()), f.data(), E, counts);
  EXPECT(b.size() == expanded.size());
  std::vector<int32_t> c1(a.begin() + 1, a.begin() + 4), c2(b.begin() + 1, b.begin() + 4);
  EXPECT(c1 == c2);
  EXPECT(b[6] == a[6] && b[7] == a[7]);
  std::vector<int32_t> wrong{1, IMG, IMG};
  EXPECT_THROWS(splice_prompt_counts(IMG, wrong.data(), 3, f.data(), E, counts), ErrorCode::InvalidArgument);
}

TEST(emollm_config_errors) {
  const std::string d = llava_fixture("layers-list");
  if (d.empty()) return;
  auto base = LlavaModel::load(d);
  auto store = std::make_shared<SafetensorsStore>(SafetensorsStore::open(d));
  auto try_section = [&](const char* s) {
    JsonValue sec = parse_json(s, std::strlen(s), "section");
    return EmollmModel::from_parts(base, sec, store, "config.json");
  };
  EXPECT_THROWS(try_section(R"({"fusion": "mean", "perspectives": [{"type": "mlp", "gate": "closed"}]})"), ErrorCode::BadConfig);
  EXPECT_THROWS(try_section(R"({"perspectives": []})"), ErrorCode::BadConfig);
  EXPECT_THROWS(try_section(R"({"perspectives": [{"type": "conv"}]})"), ErrorCode::BadConfig);
  EXPECT_THROWS(try_section(R"({"perspectives": [{"type": "mlp", "layers": [7]}]})"), ErrorCode::BadConfig);
  EXPECT_THROWS(try_section(R"({"perspectives": [{"type": "multi-layer-mlp", "gate": "closed"}]})"), ErrorCode::BadConfig);
  EXPECT_THROWS(try_section(R"({"perspectives": [{"type": "attention-pool", "gate": "closed"}]})"), ErrorCode::BadConfig);
  // an open head whose tensors are missing
  EXPECT_THROWS(try_section(R"({"perspectives": [{"type": "mlp", "gate": "open"}]})"), ErrorCode::MalformedFile);
}

TEST(emollm_face_patches) {
  if (mvp_fixtures().empty()) return;
  auto m = EmollmModel::load(mvp_fixtures() + "/gated-sum");  // 56 px, patch 14: 4 x 4
  EXPECT((m->face_patches(FaceBox{3, 5, 20, 17}) == std::vector<int64_t>{0, 1, 4, 5}));
  EXPECT((m->face_patches(FaceBox{30.5f, 28, 40, 40}) == std::vector<int64_t>{10, 11, 14, 15}));
  EXPECT(m->face_patches(FaceBox{60, 0, 10, 10}).empty());
  EXPECT(m->face_patches(FaceBox{10, 10, 0, 5}).empty());
  EXPECT((m->face_patches(FaceBox{-100, -100, 1000, 1000}).size() == 16));
  EXPECT(m->n_image_tokens(0) == 16 + 4);
  EXPECT(m->n_image_tokens(2) == 16 + 4 + 2);
}
