// The perspective registry (native/model/mvp_kind.h): the built-in kinds are listed; a kind
// registered by this test ("test-mean-pool": the mean of every vision token of an image, then the
// MLP of its head, one token per image) loads from a config, counts its tokens, and computes what
// the built-in face-region head computes for a box covering the whole image (the same mean, the
// same MLP weights), on the EmoLLM PyTorch fixture. Registering a taken name or an incomplete
// kind is refused.
#include <cstdio>
#include <cstring>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "base/error.h"
#include "loaders/json.h"
#include "loaders/safetensors.h"
#include "model/emollm.h"
#include "model/mvp_kind.h"
#include "shared_data.h"
#include "testing.h"

using namespace emollm;

namespace {

std::string fixture_dir() { return emollm_test::committed_fixture("emollm/gated-sum", "config.json", __FILE__); }

// ---- the test-only kind: everything it needs is in this block (one file, one registration)
void mean_pool_parse(const MvpParseContext& c, MvpPerspective& p) {
  if (p.gate != MvpGate::Closed) mvp_parse_mlp_weights(c, p);
}
int64_t mean_pool_tokens(const MvpPerspective&, int64_t, int64_t) { return 1; }
DeviceTensor mean_pool_forward(const MvpForwardInput& in, const MvpPerspective& p, std::vector<int64_t>* counts) {
  Backend& be = in.be;
  const int64_t first = in.cls ? 1 : 0, n = in.T - first;
  DeviceTensor pooled(be, DType::F32, {in.B, p.d_in});
  for (int64_t b = 0; b < in.B; ++b) {
    const float* x0 = in.x + (b * in.T + first) * p.d_in;
    be.copy(pooled.row(b), x0, size_t(p.d_in) * sizeof(float));
    for (int64_t t = 1; t < n; ++t) be.add(pooled.row(b), x0 + t * p.d_in, pooled.row(b), p.d_in);
    be.scale(pooled.row(b), 1.0f / float(n), pooled.row(b), p.d_in);
  }
  DeviceTensor y(be, DType::F32, {in.B, in.n_embd});
  mvp_run_mlp(be, p, pooled.data(), in.B, in.n_embd, y.data());
  counts->assign(size_t(in.B), 1);
  return y;
}
void mean_pool_info(const MvpPerspective&, std::vector<std::pair<std::string, double>>* f) {
  f->emplace_back("pooledTokens", 1.0);
}
const MvpKind kTestMeanPool = {"test-mean-pool", "mean of the vision tokens, then an mlp (test only)",
                               /*per_vision_token=*/false, /*layers_required=*/false, mean_pool_parse, mean_pool_tokens,
                               mean_pool_forward, mean_pool_info};

void ensure_registered() {
  if (!find_mvp_kind(kTestMeanPool.name)) register_mvp_kind(&kTestMeanPool);
}

// The fixture's section with perspective 4 (its "faces" head: linear_1 / linear_2 / gate_logits
// over layer -2) of the given type, and the other heads closed.
std::shared_ptr<EmollmModel> with_head4(const std::string& d, const std::string& type) {
  auto base = LlavaModel::load(d);
  auto store = std::make_shared<SafetensorsStore>(SafetensorsStore::open(d + "/emollm_mvp.safetensors"));
  const std::string section = R"({"version": 1, "fusion": "gated-sum", "perspectives": [
      {"name": "global", "type": "mlp", "gate": "closed"},
      {"name": "texture", "type": "mlp", "gate": "closed"},
      {"name": "low-level", "type": "multi-layer-mlp", "layers": [-2, 1], "gate": "closed"},
      {"name": "pool", "type": "attention-pool", "n_queries": 4, "gate": "closed"},
      {"name": "head4", "type": ")" + type + R"(", "layers": [-2], "gate": "learned"}]})";
  JsonValue sec = parse_json(section.data(), section.size(), "section");
  return EmollmModel::from_parts(base, sec, store, "config.json");
}

}  // namespace

TEST(mvp_registry_builtins) {
  std::vector<std::string> names;
  for (const MvpKind* k : mvp_kinds()) names.push_back(k->name);
  EXPECT(names.size() >= 4);
  EXPECT(names[0] == "mlp" && names[1] == "multi-layer-mlp" && names[2] == "attention-pool" && names[3] == "face-region");
  EXPECT(find_mvp_kind("mlp") && find_mvp_kind("mlp")->per_vision_token);
  EXPECT(find_mvp_kind("multi-layer-mlp")->layers_required);
  EXPECT(!find_mvp_kind("attention-pool")->per_vision_token);
  EXPECT(find_mvp_kind("conv") == nullptr);
  EXPECT(mvp_kind_names().find("mlp, multi-layer-mlp, attention-pool, face-region") == 0);
}

TEST(mvp_registry_refuses_duplicates_and_incomplete_kinds) {
  ensure_registered();
  EXPECT_THROWS(register_mvp_kind(&kTestMeanPool), ErrorCode::InvalidArgument);
  EXPECT_THROWS(register_mvp_kind(find_mvp_kind("mlp")), ErrorCode::InvalidArgument);
  static const MvpKind incomplete = {"test-incomplete", "", false, false, nullptr, nullptr, nullptr, nullptr};
  EXPECT_THROWS(register_mvp_kind(&incomplete), ErrorCode::InvalidArgument);
  EXPECT(find_mvp_kind("test-incomplete") == nullptr);
}

TEST(mvp_registry_test_kind_loads_and_runs) {
  const std::string d = fixture_dir();
  if (d.empty()) return;
  ensure_registered();
  EXPECT(mvp_kind_names().find("test-mean-pool") != std::string::npos);
  auto mine = with_head4(d, "test-mean-pool");
  auto faces = with_head4(d, "face-region");
  const MvpPerspective& p = mine->perspectives()[4];
  EXPECT(p.kind == &kTestMeanPool && std::string(p.type_name()) == "test-mean-pool");
  EXPECT(p.d_hid > 0 && p.w1.data != nullptr && p.gate_values.size() == size_t(mine->n_embd()));
  EXPECT(mine->n_image_tokens(0) == 1 && mine->n_image_tokens(5) == 1);

  const int64_t B = 2, T = mine->n_vision_tokens();
  const int64_t C = mine->llava().vision().hparams().n_embd, L = int64_t(mine->tower_layers().size());
  std::vector<float> tf(size_t(B * T * C * L));
  for (size_t i = 0; i < tf.size(); ++i) tf[i] = float((i * 7919) % 1000) / 500.0f - 1.0f;
  std::vector<float> a, b;
  std::vector<int64_t> ca, cb;
  mine->project(tf.data(), B, nullptr, &a, &ca);
  // face-region with one box over the whole image: the mean of every patch, the same MLP.
  std::vector<std::vector<FaceBox>> whole{{FaceBox{-100, -100, 1000, 1000}}, {FaceBox{-100, -100, 1000, 1000}}};
  faces->project(tf.data(), B, &whole, &b, &cb);
  EXPECT((ca == std::vector<int64_t>{1, 1}) && ca == cb);
  EXPECT(a.size() == size_t(2 * mine->n_embd()) && a.size() == b.size());
  EXPECT_ALL_CLOSE(a.data(), b.data(), a.size(), 0.0, 0.0, "test-mean-pool vs face-region over the whole image");
  // The two images differ, so the rows are not trivially equal.
  EXPECT(std::memcmp(a.data(), a.data() + mine->n_embd(), size_t(mine->n_embd()) * sizeof(float)) != 0);
}
