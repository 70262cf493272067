// End to end on the GPU (device cuda through the model code, no Node): the same references as
// the CPU tests. Skipped with a printed reason when there is no CUDA device or the shared model
// is missing; on a GPU they must pass (a model path that cannot run on the device fails here).
//   stories260K: greedy tokens equal llama2.c's run.c (../shared/models/stories260K/oracle).
//   stories260K through the continuous-batching scheduler: each request's greedy tokens equal the
//     request alone on the GPU and run.c, with a full KV pool and with one small enough to
//     preempt (batched_parity.h, the checks the emulated device runs in CI).
//   llava-tiny-hf: the image encoder and the decoder on the GPU; greedy new tokens equal
//     transformers' (reference/expected.json "greedy_new_tokens").
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "../../../base/error.h"
#include "../../../native/loaders/json.h"
#include "../../../native/model/llama.h"
#include "../../../native/model/llava.h"
#include "../../../native/model/session.h"
#include "../batched_parity.h"
#include "../shared_data.h"
#include "../testing.h"
#include "gpu_test.h"

using namespace emollm;

TEST(cuda_e2e_stories260k_greedy_equals_llama2c) {
  SKIP_WITHOUT_GPU();
  const std::string dir = emollm_test::shared_model_dir(
      "stories260K", {"gguf/stories260K.gguf", "oracle/greedy_n200_noprompt.tokens.txt"});
  if (dir.empty()) return;
  std::vector<int32_t> want;
  {
    std::ifstream f(dir + "/oracle/greedy_n200_noprompt.tokens.txt");
    int32_t t;
    while (f >> t) want.push_back(t);
  }
  EXPECT(want.size() == 201);  // BOS, then 200 greedy tokens
  LlamaLoadOptions lo;
  lo.device = DeviceKind::Cuda;
  std::shared_ptr<LlamaModel> m = LlamaModel::load(dir + "/gguf/stories260K.gguf", lo);
  LlamaContextOptions co;
  co.n_ctx = 512;
  LlamaContext ctx(m, co);
  std::atomic<int64_t> n_past{-1};
  Session s(ctx, &n_past);
  GenerateParams gp;
  gp.sampler.temperature = 0;
  gp.sampler.repetition_penalty = 1.0f;
  gp.max_tokens = 200;
  GenerateResult r = s.generate({1}, nullptr, gp, nullptr, [](int32_t) {});
  const size_t n = r.tokens.size();
  EXPECT(n >= 1 && n <= 200 && want.size() == 201);
  if (want.size() == 201 && n <= 200)
    EXPECT(std::vector<int32_t>(want.begin() + 1, want.begin() + 1 + long(n)) == r.tokens);
  std::printf("  cuda stories260K greedy: %zu tokens, stop %s\n", n, stop_reason_name(r.reason));
}

TEST(cuda_e2e_scheduler_batched_greedy_equals_alone) {
  SKIP_WITHOUT_GPU();
  if (emollm_test::stories_dir().empty()) return;
  LlamaLoadOptions lo;
  lo.device = DeviceKind::Cuda;
  std::shared_ptr<LlamaModel> m = LlamaModel::load(emollm_test::stories_gguf(), lo);
  emollm_test::expect_batched_greedy_parity(m, "cuda");
}

TEST(cuda_e2e_llava_tiny_hf_greedy_equals_transformers) {
  SKIP_WITHOUT_GPU();
  const std::string dir =
      emollm_test::shared_model_dir("llava-tiny-hf", {"model.safetensors", "reference/pixel_values.f32", "reference/expected.json"});
  if (dir.empty()) return;
  LlavaLoadOptions lo;
  lo.device = DeviceKind::Cuda;
  std::shared_ptr<LlavaModel> m = LlavaModel::load(dir, lo);
  const std::vector<float> pixels = emollm_test::read_f32(dir + "/reference/pixel_values.f32");
  const JsonValue e = load_json_file(dir + "/reference/expected.json");
  const std::vector<int32_t> ids = emollm_test::ints(e.find("input_ids_expanded"));
  const std::vector<int32_t> want = emollm_test::ints(e.find("greedy_new_tokens"));
  EXPECT(!want.empty());
  std::vector<float> feats(size_t(m->n_image_tokens() * m->n_embd()));
  EXPECT(m->encode_images(pixels.data(), 1, feats.data()));
  auto toks = m->splice_prompt(ids.data(), int64_t(ids.size()), feats.data(), 1);
  LlamaContextOptions co;
  co.n_ctx = 256;
  LlamaContext ctx(m->text_model(), co);
  const int64_t V = ctx.n_vocab();
  const float* l = ctx.eval_prompt(toks.data(), int64_t(toks.size()), nullptr, feats.data());
  std::vector<int32_t> got;
  for (size_t i = 0; i < want.size(); ++i) {
    const int32_t best = int32_t(std::max_element(l, l + V) - l);
    got.push_back(best);
    if (i + 1 < want.size()) l = ctx.eval(&best, 1);
  }
  EXPECT(got == want);
  std::printf("  cuda llava-tiny-hf greedy: %zu tokens\n", got.size());
}
