// The splice rule (native/model/image_splice.h): the length computed before a splice (what the addon
// sizes a result array with, on the JavaScript thread) and the splice itself agree, for every model
// kind (LLaVA, LLaVA-NeXT, EmoLLM, Qwen2-VL with image and video pads) and both token forms (once
// per image, already expanded), and a prompt that fits neither gives -1 and the splice's error.
// Expected lengths are written out independently (n - images + rows, or n), so a rule broken in the
// length, in the splice, or in a model's ImageSplice fails here.
//
// Features are placeholders of the right size: the splice only hashes them into pseudo-ids.
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "../../base/error.h"
#include "../../native/loaders/json.h"
#include "../../native/model/emollm.h"
#include "../../native/model/image_splice.h"
#include "../../native/model/llava.h"
#include "../../native/model/llava_next.h"
#include "../../native/model/qwen2_vl.h"
#include "shared_data.h"
#include "testing.h"

using namespace emollm;

namespace {

using Splice = std::function<std::vector<int32_t>(const std::vector<int32_t>&)>;

// Prompts of text ids around one marker per image: `once` (each marker once) and `expanded` (image
// k's marker counts[k] times), their lengths written out, then prompts that fit no rule.
void check_kind(const char* kind, const ImageSplice& s, const std::vector<int32_t>& marks,
                const std::vector<int64_t>& counts, const Splice& splice) {
  EXPECT(marks.size() == counts.size());
  const int64_t n_images = int64_t(counts.size());
  const int64_t rows = std::accumulate(counts.begin(), counts.end(), int64_t(0));
  std::vector<int32_t> once{1, 2}, expanded{1, 2};
  for (size_t k = 0; k < marks.size(); ++k) {
    once.push_back(marks[k]);
    once.push_back(int32_t(3 + k));
    expanded.insert(expanded.end(), size_t(counts[k]), marks[k]);
    expanded.push_back(int32_t(3 + k));
  }
  const int64_t want_once = int64_t(once.size()) - n_images + rows;
  const int64_t want_expanded = int64_t(expanded.size());
  int checked = 0;
  for (const auto& [name, toks, want] : {std::make_tuple("once", once, want_once),
                                         std::make_tuple("expanded", expanded, want_expanded)}) {
    const int64_t len = spliced_length(s, toks.data(), int64_t(toks.size()));
    if (len != want) std::printf("  %s %s: spliced_length %lld, expected %lld\n", kind, name, (long long)len, (long long)want);
    EXPECT(len == want);
    const std::vector<int32_t> out = splice(toks);
    if (int64_t(out.size()) != want)
      std::printf("  %s %s: the splice gave %zu tokens, expected %lld\n", kind, name, out.size(), (long long)want);
    EXPECT(int64_t(out.size()) == want);
    int64_t pseudo = 0;  // every image position became a pseudo-id (negative), nothing else did
    for (int32_t t : out) pseudo += t < 0 ? 1 : 0;
    EXPECT(pseudo == rows);
    ++checked;
  }
  EXPECT(checked == 2);
  // one marker too many (or two, where one more would read as expanded): neither form
  std::vector<int32_t> wrong = once;
  wrong.push_back(marks[0]);
  if (n_images + 1 == rows) wrong.push_back(marks[0]);
  EXPECT(spliced_length(s, wrong.data(), int64_t(wrong.size())) == -1);
  EXPECT_THROWS(splice(wrong), ErrorCode::InvalidArgument);
  // a negative id in the text: the splice refuses the prompt, so no length either
  std::vector<int32_t> negative = once;
  negative.push_back(-5);
  EXPECT(spliced_length(s, negative.data(), int64_t(negative.size())) == -1);
  EXPECT_THROWS(splice(negative), ErrorCode::InvalidArgument);
}

std::vector<float> placeholder_features(int64_t rows, int64_t E) {
  std::vector<float> f(size_t(rows * E));
  for (size_t i = 0; i < f.size(); ++i) f[i] = float(i % 97) * 0.25f;
  return f;
}

std::string fixture(const char* rel, const char* probe) {
  return emollm_test::committed_fixture(rel, probe, __FILE__);
}

}  // namespace

TEST(image_splice_rule_without_a_model) {
  // counts with a zero (a face-region head on an image without faces), a second marker id
  const ImageSplice s{9, 11, {3, 0, 2}};
  const int64_t E = 2;
  const auto f = placeholder_features(5, E);
  check_kind("rule", s, {9, 11, 9}, s.counts,
             [&](const std::vector<int32_t>& t) { return splice_prompt(s, t.data(), int64_t(t.size()), f.data(), E); });
  // without a second id, 11 is text
  const ImageSplice one{9, 9, {3, 0, 2}};
  const std::vector<int32_t> t{1, 9, 11, 9, 9};
  EXPECT(spliced_length(one, t.data(), 5) == 5 - 3 + 5);
  EXPECT(splice_prompt(one, t.data(), 5, f.data(), E).size() == 7);
  // no images, no markers: the prompt as it is
  const ImageSplice none{9, 9, {}};
  EXPECT(spliced_length(none, t.data() + 2, 1) == 1);
}

TEST(image_splice_llava_length_equals_splice) {
  const std::string d = fixture("llava/two-images", "config.json");
  if (d.empty()) return;
  auto m = LlavaModel::load(d);
  const int64_t nf = m->n_image_tokens();
  const std::vector<int64_t> counts{nf, nf};
  const auto f = placeholder_features(2 * nf, m->n_embd());
  const ImageSplice s = m->image_splice(2, {});
  const int32_t id = m->image_token_id();
  check_kind("llava", s, {id, id}, counts, [&](const std::vector<int32_t>& t) {
    auto a = splice_prompt(s, t.data(), int64_t(t.size()), f.data(), m->n_embd());
    EXPECT(a == m->splice_prompt(t.data(), int64_t(t.size()), f.data(), 2));  // the model's own entry point
    return a;
  });
}

TEST(image_splice_llava_next_length_equals_splice) {
  const std::string d = emollm_test::shared_model_dir("llava-next-tiny-hf", {"config.json"});
  if (d.empty()) return;
  auto m = LlavaModel::load(d);
  EXPECT(m->anyres());
  const ClipHparams& vh = m->vision().hparams();
  std::vector<int64_t> counts;  // each image's packed layout (what encodeAnyres' tokenCounts carry)
  for (auto [h, w] : {std::pair<int64_t, int64_t>{30, 50}, {64, 20}})
    counts.push_back(anyres_layout(h, w, m->grid_pinpoints(), vh.image_size, vh.n_side(), m->image_newline() != nullptr).n_tokens());
  const auto f = placeholder_features(counts[0] + counts[1], m->n_embd());
  const ImageSplice s = m->image_splice(2, counts);
  const int32_t id = m->image_token_id();
  check_kind("llava-next", s, {id, id}, counts, [&](const std::vector<int32_t>& t) {
    return splice_prompt(s, t.data(), int64_t(t.size()), f.data(), m->n_embd());
  });
}

TEST(image_splice_emollm_length_equals_splice) {
  const std::string d = fixture("emollm/gated-sum", "config.json");
  if (d.empty()) return;
  auto m = EmollmModel::load(d);
  JsonValue in = load_json_file(d + "/inputs.json");
  const std::vector<int32_t> tc = emollm_test::ints(in.find("token_counts"));  // 22 and 20 (faces on one image)
  const std::vector<int64_t> counts(tc.begin(), tc.end());
  EXPECT(counts.size() == 2 && counts[0] != counts[1]);
  const auto f = placeholder_features(counts[0] + counts[1], m->n_embd());
  const ImageSplice s = m->image_splice(counts);
  const int32_t id = m->image_token_id();
  check_kind("emollm", s, {id, id}, counts, [&](const std::vector<int32_t>& t) {
    return splice_prompt(s, t.data(), int64_t(t.size()), f.data(), m->n_embd());
  });
}

TEST(image_splice_qwen2_vl_length_equals_prepare) {
  const std::string d = emollm_test::shared_model_dir("qwen2-vl-tiny-hf", {"config.json"});
  if (d.empty()) return;
  auto m = Qwen2VLModel::load(d);
  // an image (1 x 4 x 6 patches) and a video (2 x 4 x 4): merged 2 x 2, 6 and 8 positions
  const std::vector<GridThw> grids{GridThw{1, 4, 6}, GridThw{2, 4, 4}};
  const std::vector<int64_t> counts{6, 8};
  const auto f = placeholder_features(14, m->n_embd());
  const ImageSplice s = m->image_splice(grids);
  check_kind("qwen2-vl", s, {m->image_token_id(), m->video_token_id()}, counts, [&](const std::vector<int32_t>& t) {
    auto p = m->prepare(t.data(), int64_t(t.size()), f.data(), grids);
    EXPECT(p.pos3.size() == p.tokens.size() * 3);
    return p.tokens;
  });
}
