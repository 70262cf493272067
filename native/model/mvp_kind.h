// The perspective registry of EmoLLM's Multi-perspective Visual Projection: every perspective
// type ("mlp", "attention-pool", ...) is one MvpKind descriptor — its config spelling, how it
// reads its fields and weights, how many tokens it gives an image, its forward pass and what
// info() reports — defined in its own file under native/model/mvp/ and listed once in
// mvp_kind.cpp. The loaders (EmoLLM on LLaVA and on Qwen2-VL), the projection, the addon's
// info() and the TypeScript table (lib/perspectives.ts) all go through it, so adding a type is
// one file plus one entry per layer instead of a switch in each place.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/backend_weights.h"
#include "core/device_tensor.h"
#include "loaders/json.h"
#include "loaders/safetensors.h"
#include "model/llama.h"

namespace emollm {

struct MvpKind;
class EmollmModel;

// A face box in pixels of the vision tower's input (image_size x image_size, e.g. 336).
struct FaceBox {
  float x = 0, y = 0, width = 0, height = 0;
};

enum class MvpGate { Learned, Open, Closed };
const char* mvp_gate_name(MvpGate g);

// One configured perspective (a head). The common fields are filled by the loader; the
// kind-specific ones by its MvpKind::parse.
struct MvpPerspective {
  std::string name;
  const MvpKind* kind = nullptr;
  MvpGate gate = MvpGate::Learned;
  std::vector<int64_t> layers;  // resolved hidden-state indices (>= 0)
  int64_t d_in = 0;             // layers.size() * vision hidden size
  int64_t d_hid = 0;            // MLP hidden size (mlp types, face-region); attention size (attention-pool)
  int64_t n_queries = 0, num_heads = 1;  // attention-pool
  int64_t max_faces = 0;                 // face-region: 0 = no limit
  // weights (null when closed). MLP-shaped kinds: w1 [d_hid, d_in], w2 [E, d_hid].
  LlamaWeight w1, w2;
  const float *b1 = nullptr, *b2 = nullptr;
  // attention-pool: queries [n_queries, d_hid] (f32), wk / wv [d_hid, d_in], wo [E, d_hid]
  const float* queries = nullptr;
  LlamaWeight wk, wv, wo;
  const float *bk = nullptr, *bv = nullptr, *bo = nullptr;
  std::vector<float> gate_values;  // [E]: sigmoid(gate_logits) (learned) or ones (open); empty when closed
  const float* gate_device = nullptr;  // gate_values in the backend's memory (set by mvp_place_weights)
  // A kind's own state beyond the fields above (a kind added later keeps its weights here).
  std::shared_ptr<void> extra;

  // The gate vector for Backend ops: the placed copy, or the host vector before placement (CPU).
  const float* gates() const { return gate_device ? gate_device : gate_values.data(); }
  const char* type_name() const;
  // One output token per vision token ([B * T, E]): summed with the others under gated-sum.
  bool sums() const;
};

// What a kind's parse() reads with: the perspective's config object and the MVP weight file.
class MvpParseContext {
 public:
  MvpParseContext(const JsonValue& config, std::string where, std::string prefix, int64_t n_embd, const WeightStore& ws,
                  const std::string& config_file, std::vector<std::vector<float>>* owned_vectors)
      : config_(config), where_(std::move(where)), prefix_(std::move(prefix)), n_embd_(n_embd), ws_(ws),
        config_file_(config_file), owned_(owned_vectors) {}
  const JsonValue& config() const { return config_; }
  const std::string& where() const { return where_; }    // "perspectives[2]", for messages
  const std::string& prefix() const { return prefix_; }  // "mvp.heads.2.", the tensor name prefix
  int64_t n_embd() const { return n_embd_; }             // E: the decoder's hidden size
  // Throws Error(BadConfig) "emollm.<where>.<msg>" naming the config file.
  [[noreturn]] void bad(const std::string& msg) const;
  // An integer field >= lo, or def when absent / null.
  int64_t int_field(const char* key, int64_t def, int64_t lo) const;
  const TensorInfo* find(const std::string& name) const { return ws_.find(name); }
  const std::string& source() const { return ws_.source(); }  // the MVP weight file, for MalformedFile errors
  // A required matrix [rows, cols] (any weight dtype, used in place).
  LlamaWeight matrix(const std::string& name, int64_t rows, int64_t cols) const;
  // A vector of n elements as f32 (owned by the model); null when absent and not required.
  const float* vector(const std::string& name, int64_t n, bool required) const;

 private:
  const JsonValue& config_;
  std::string where_, prefix_;
  int64_t n_embd_;
  const WeightStore& ws_;
  const std::string& config_file_;
  std::vector<std::vector<float>>* owned_;
};

// What a kind's forward() computes on.
struct MvpForwardInput {
  Backend& be;
  const EmollmModel* model;  // null on Qwen2-VL (no face boxes, no CLS)
  const float* x;            // backend memory [B * T, p.d_in]: the perspective's layers, concatenated
  int64_t B = 0, T = 0;      // images, vision tokens per image
  bool cls = false;          // row 0 of each image is the CLS token
  int64_t n_embd = 0;        // E
  const std::vector<std::vector<FaceBox>>* faces = nullptr;  // null or B lists
};

struct MvpKind {
  const char* name;     // the config spelling ("mlp")
  const char* summary;  // one line: what the head computes
  // One token per vision token ([B * T, E]): the heads summed under "gated-sum" fusion, and the
  // only kind Qwen2-VL accepts open (the others would change its merged token layout).
  bool per_vision_token;
  // The config must name "layers" (no default to the base's vision_feature_layer).
  bool layers_required;
  // Kind-specific config fields (always) and weights (only when the gate is not closed; then it
  // must set d_hid). p.layers, p.d_in and p.gate are set.
  void (*parse)(const MvpParseContext& c, MvpPerspective& p);
  // Tokens one image gets from an open head with n_faces face boxes, T vision tokens.
  int64_t (*tokens)(const MvpPerspective& p, int64_t T, int64_t n_faces);
  // The gated output tokens [sum(counts), E] of all B images, image after image; counts[b] = rows of image b.
  DeviceTensor (*forward)(const MvpForwardInput& in, const MvpPerspective& p, std::vector<int64_t>* counts);
  // Extra info() fields beyond name / type / gate / layers / inputSize / hiddenSize (camelCase).
  void (*info)(const MvpPerspective& p, std::vector<std::pair<std::string, double>>* fields);
  // Optional: places the kind's own state (MvpPerspective::extra) with `w` at load, after the
  // common weight fields have been placed (mvp_place_weights). Null when the kind has none.
  void (*place)(MvpPerspective& p, BackendWeights& w) = nullptr;
};

// The registered kinds: the built-ins (mvp_kind.cpp) then any registered later.
std::vector<const MvpKind*> mvp_kinds();
// The kind spelled `name`, or null.
const MvpKind* find_mvp_kind(const std::string& name);
// "mlp, multi-layer-mlp, attention-pool, face-region": the choices, for messages.
std::string mvp_kind_names();
// Adds a kind (a test's, an embedder's) before loading a config that uses it. Throws
// InvalidArgument when the name is taken or a function is missing.
void register_mvp_kind(const MvpKind* kind);

// Puts an open perspective's weights in the backend's memory at load (w.begin() called): every
// common weight field (w1, w2, wk, wv, wo, their biases, queries) is repointed at its copy on a
// device (LlamaWeight::host keeps the mmap), gate_device is set, then the kind's place hook runs.
// On the CPU the pointers stay as they are (zero-copy). Closed perspectives are left alone.
void mvp_place_weights(MvpPerspective& p, int64_t n_embd, BackendWeights& w);

// ---- helpers the MLP-shaped kinds share (native/model/mvp/mlp.cpp)
// Reads linear_1 / linear_2 (+ optional biases) under c.prefix() and sets d_hid, w1, w2, b1, b2.
void mvp_parse_mlp_weights(const MvpParseContext& c, MvpPerspective& p);
// y [rows, E] = gate * (linear_2(GELU(linear_1(x)))) with x [rows, p.d_in]; backend memory.
void mvp_run_mlp(Backend& be, const MvpPerspective& p, const float* x, int64_t rows, int64_t n_embd, float* y);

}  // namespace emollm
