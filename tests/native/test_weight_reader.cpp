// loaders/weight_reader.h: one typed error per kind of bad tensor, the same from every model that
// reads weights through it. First the reader on a synthetic store; then each model (LLaMA on
// stories260K, the CLIP tower of llava-tiny-hf, the Qwen2-VL tower of qwen2-vl-tiny-hf) fed its
// real checkpoint with one tensor missing, misshapen, of an unsupported type, or of a block type
// its rows do not fill: each must fail with that error, naming the tensor.
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "../../base/error.h"
#include "../../native/loaders/hf_config.h"
#include "../../native/loaders/safetensors.h"
#include "../../native/loaders/weight_reader.h"
#include "../../native/model/clip.h"
#include "../../native/model/llama.h"
#include "../../native/model/qwen2_vision.h"
#include "shared_data.h"
#include "testing.h"

using namespace emollm;

namespace {

// A store holding `base`'s tensors (their data stays in base's mapping), edited by `edit`, which
// may drop a tensor (returns false) or change its shape / type.
class EditedStore : public WeightStore {
 public:
  EditedStore(const WeightStore& base, const std::function<bool(TensorInfo&)>& edit) {
    format_ = base.format();
    source_ = "edited " + base.source();
    for (TensorInfo t : base.tensors())
      if (edit(t)) add_tensor(std::move(t));
  }
  EditedStore() { format_ = "memory", source_ = "synthetic"; }
  void add(TensorInfo t) { add_tensor(std::move(t)); }
};

// Runs fn, which must throw emollm::Error `code` whose message holds `needle`.
void expect_error(const std::function<void()>& fn, ErrorCode code, const std::string& needle, const char* what) {
  try {
    fn();
  } catch (const Error& e) {
    if (e.code() != code)
      emollm_test::report_failure(__FILE__, __LINE__, std::string(what) + ": wrong code " + error_code_name(e.code()) + ": " + e.what());
    if (std::string(e.what()).find(needle) == std::string::npos)
      emollm_test::report_failure(__FILE__, __LINE__, std::string(what) + ": message lacks \"" + needle + "\": " + e.what());
    return;
  }
  emollm_test::report_failure(__FILE__, __LINE__, std::string(what) + ": no error");
}

// The four edits, each applied to `name`.
std::function<bool(TensorInfo&)> drop(const std::string& name) {
  return [name](TensorInfo& t) { return t.name != name; };
}
std::function<bool(TensorInfo&)> grow_outer(const std::string& name) {
  return [name](TensorInfo& t) {
    if (t.name == name) t.shape[0] += 1;
    return true;
  };
}
std::function<bool(TensorInfo&)> unsupported(const std::string& name) {
  return [name](TensorInfo& t) {
    if (t.name == name) t.supported = false, t.type_name = "I64";
    return true;
  };
}
// Q4_K blocks hold 256 elements: no tiny model's row fills them (checked before any data is read).
std::function<bool(TensorInfo&)> as_q4_k(const std::string& name) {
  return [name](TensorInfo& t) {
    if (t.name == name) t.dtype = DType::Q4_K;
    return true;
  };
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
HfConfig config_of(const std::string& dir) {
  const std::string text = read_text(dir + "/config.json");
  return parse_hf_config_text(text.data(), text.size(), dir + "/config.json");
}

// The model-level checks: `load` builds the model from a store; `matrix` is one weight matrix it
// reads, `vector` one 1-D tensor.
void check_model(const char* model, const WeightStore& base, const std::function<void(const WeightStore&)>& load,
                 const std::string& matrix, const std::string& vector) {
  load(EditedStore(base, [](TensorInfo&) { return true; }));  // the unedited copy loads
  const std::string m = std::string(model) + " ";
  expect_error([&] { load(EditedStore(base, drop(matrix))); }, ErrorCode::MalformedFile, "no tensor named " + matrix, (m + "missing matrix").c_str());
  expect_error([&] { load(EditedStore(base, drop(vector))); }, ErrorCode::MalformedFile, "no tensor named " + vector, (m + "missing vector").c_str());
  expect_error([&] { load(EditedStore(base, grow_outer(matrix))); }, ErrorCode::MalformedFile, "tensor " + matrix + " has shape", (m + "misshapen matrix").c_str());
  expect_error([&] { load(EditedStore(base, grow_outer(vector))); }, ErrorCode::MalformedFile, "tensor " + vector + " has shape", (m + "misshapen vector").c_str());
  expect_error([&] { load(EditedStore(base, unsupported(matrix))); }, ErrorCode::Unsupported, "has type I64", (m + "unsupported dtype").c_str());
  expect_error([&] { load(EditedStore(base, as_q4_k(matrix))); }, ErrorCode::MalformedFile, "not a multiple of the q4_K block size (256)", (m + "misaligned rows").c_str());
}

}  // namespace

TEST(weight_reader_typed_errors) {
  // a 2 x 40 f32 matrix, a 3-vector at a misaligned address, a 5-D tensor, an unsupported one
  static std::vector<float> mat(80), vec3(4);
  static std::vector<uint8_t> odd(3 * sizeof(float) + 1);
  for (size_t i = 0; i < mat.size(); ++i) mat[i] = float(i);
  const float v3[3] = {1.5f, -2.f, 3.25f};
  std::memcpy(odd.data() + 1, v3, sizeof v3);
  auto info = [](const std::string& name, DType dt, std::vector<int64_t> shape, const void* data, bool supported = true) {
    TensorInfo t;
    t.name = name, t.dtype = dt, t.shape = std::move(shape), t.data = static_cast<const uint8_t*>(data), t.supported = supported;
    t.type_name = supported ? dtype_name(dt) : "I64";
    return t;
  };
  EditedStore s;
  s.add(info("m", DType::F32, {2, 40}, mat.data()));
  s.add(info("q", DType::Q8_0, {2, 40}, mat.data()));  // 40 is not a multiple of q8_0's 32
  s.add(info("v", DType::F32, {3}, odd.data() + 1));
  s.add(info("conv", DType::F32, {2, 1, 2, 2, 5}, mat.data()));
  s.add(info("ids", DType::F32, {2, 40}, mat.data(), false));
  const WeightReader r(s, "the test's shapes");
  std::vector<std::vector<float>> converted;

  EXPECT(r.matrix("m", 2, 40).data == reinterpret_cast<const uint8_t*>(mat.data()));
  EXPECT(r.floats("m", {2, 40}, converted) == mat.data());  // aligned f32: a view, no copy
  EXPECT(converted.empty());
  const float* v = r.floats("v", {3}, converted);  // misaligned f32: copied, same values
  EXPECT(converted.size() == 1 && v == converted.back().data() && v[0] == 1.5f && v[1] == -2.f && v[2] == 3.25f);
  EXPECT(r.matrix("conv", 2, 20, {2, 1, 2, 2, 5}).shape.size() == 5);  // 5-D read as a matrix

  expect_error([&] { r.tensor("absent", {2, 40}); }, ErrorCode::MalformedFile, "checkpoint has no tensor named absent", "missing");
  expect_error([&] { r.matrix("m", 40, 2); }, ErrorCode::MalformedFile, "tensor m has shape [2, 40], expected [40, 2] from the test's shapes", "shape");
  expect_error([&] { r.floats("v", {4}, converted); }, ErrorCode::MalformedFile, "tensor v has shape", "vector shape");
  expect_error([&] { r.tensor("ids", {2, 40}); }, ErrorCode::Unsupported, "tensor ids has type I64, which emollm cannot compute with", "dtype");
  expect_error([&] { r.matrix("q", 2, 40); }, ErrorCode::MalformedFile, "tensor q: row length 40 is not a multiple of the q8_0 block size (32)", "misaligned");
  expect_error([&] { r.floats("q", {2, 40}, converted); }, ErrorCode::MalformedFile, "not a multiple of the q8_0 block size", "misaligned floats");
  // every error names the checkpoint
  expect_error([&] { r.tensor("absent", {1}); }, ErrorCode::MalformedFile, "synthetic: ", "names the source");
}

TEST(weight_reader_llama_errors) {
  const std::string dir = emollm_test::shared_model_dir("stories260K", {"hf/model.safetensors", "hf/config.json"});
  if (dir.empty()) return;
  const HfConfig hc = config_of(dir + "/hf");
  EXPECT(hc.llama.has_value());
  if (!hc.llama) return;
  auto base = std::make_shared<SafetensorsStore>(SafetensorsStore::open(dir + "/hf/model.safetensors"));
  check_model("llama", *base, [&](const WeightStore& s) {
    auto copy = std::make_shared<EditedStore>(s, [](TensorInfo&) { return true; });
    LlamaModel::from_hf_store(copy, *hc.llama, "model.", "lm_head.weight", dir + "/hf/config.json");
  }, "model.layers.1.mlp.down_proj.weight", "model.layers.1.post_attention_layernorm.weight");
}

TEST(weight_reader_clip_errors) {
  const std::string dir = emollm_test::shared_model_dir("llava-tiny-hf", {"model.safetensors", "config.json"});
  if (dir.empty()) return;
  const HfConfig hc = config_of(dir);
  EXPECT(hc.llava.has_value());
  if (!hc.llava) return;
  const SafetensorsStore base = SafetensorsStore::open(dir + "/model.safetensors");
  check_model("clip", base, [&](const WeightStore& s) {
    ClipVisionModel::from_hf(s, hc.llava->vision_config, "vision_tower.", dir + "/config.json");
  }, "vision_tower.encoder.layers.0.mlp.fc2.weight", "vision_tower.encoder.layers.0.layer_norm2.bias");
}

TEST(weight_reader_qwen2_vision_errors) {
  const std::string dir = emollm_test::shared_model_dir("qwen2-vl-tiny-hf", {"model.safetensors", "config.json"});
  if (dir.empty()) return;
  const HfConfig hc = config_of(dir);
  EXPECT(hc.qwen2_vl.has_value());
  if (!hc.qwen2_vl) return;
  const SafetensorsStore base = SafetensorsStore::open(dir + "/model.safetensors");
  check_model("qwen2 vision", base, [&](const WeightStore& s) {
    Qwen2VisionModel::from_hf(s, hc.qwen2_vl->vision_config, "visual.", dir + "/config.json");
  }, "visual.blocks.0.mlp.fc2.weight", "visual.blocks.0.norm2.bias");
}
