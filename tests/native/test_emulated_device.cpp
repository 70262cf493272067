// Device-readiness without a GPU: the strict emulated device (core/emulated_device_backend.h)
// catches a host pointer in a compute op, an overrun of a device block and a device pointer on
// the host side of a transfer; its memory faults when the host reads it (checked in a forked
// child); it is no user device unless EMOLLM_EMULATED_DEVICE=1; and the
// LLaMA decoder runs on it (weights uploaded at load, ids / positions uploaded per pass, logits
// downloaded): stories260K greedy through Session::generate and through the batched scheduler
// equals llama2.c's run.c tokens (../shared/models/stories260K/oracle), and equals the CPU run;
// llava-tiny-hf's decoder on it, fed image features spliced in (uploaded input embeddings),
// gives transformers' logits within 1e-4 and its 16 greedy tokens. The vision tower itself is
// still host-only: on the emulated device its encode is refused with a typed error (checked).
// qwen2-vl-tiny-hf's decoder on it (M-RoPE: 3-D positions uploaded per pass) gives transformers'
// logits within 1e-4 and greedy tokens for the photo and the video.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <future>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/thread_pool.h"
#include "core/emulated_device_backend.h"
#include "core/runtime.h"
#include "loaders/json.h"
#include "model/llama.h"
#include "model/llava.h"
#include "model/qwen2_vl.h"
#include "model/scheduler.h"
#include "model/session.h"
#include "shared_data.h"
#include "testing.h"

using namespace emollm;

namespace {

void enable_emulated() { ::setenv("EMOLLM_EMULATED_DEVICE", "1", 1); }

// Runs f and returns the Error's message, or "" when it did not throw one of `code`.
template <typename F>
std::string error_of(F&& f, ErrorCode code) {
  try {
    f();
  } catch (const Error& e) {
    return e.code() == code ? std::string(e.what()) : std::string();
  }
  return std::string();
}
bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

using emollm_test::read_ints;
using emollm_test::stories_dir;

std::vector<int32_t> oracle_greedy() {
  return read_ints(stories_dir() + "/oracle/greedy_n200_noprompt.tokens.txt");  // BOS, then 200 greedy tokens
}

std::shared_ptr<LlamaModel> emulated_model() {
  static std::shared_ptr<LlamaModel> m = [] {
    enable_emulated();
    LlamaLoadOptions o;
    o.device = DeviceKind::Emulated;
    return LlamaModel::load(stories_dir() + "/gguf/stories260K.gguf", o);
  }();
  return m;
}

GenerateParams greedy(int64_t max_tokens) {
  GenerateParams p;
  p.sampler.temperature = 0;
  p.sampler.repetition_penalty = 1.0f;
  p.max_tokens = max_tokens;
  return p;
}

// The oracle's continuation of its own first k tokens: greedy is deterministic, so generating
// from want[0..k) must give want[k..k+n) (n = what was generated; EOS may end it early).
void expect_oracle_continuation(const std::vector<int32_t>& want, size_t k, const GenerateResult& r, int64_t max_tokens,
                                const LlamaModel& m) {
  const size_t n = r.tokens.size();
  EXPECT(n >= 1 && k + n <= want.size());
  if (k + n > want.size()) return;
  EXPECT(std::vector<int32_t>(want.begin() + long(k), want.begin() + long(k + n)) == r.tokens);
  if (r.reason == StopReason::Eos) EXPECT(k + n < want.size() && m.is_eos(want[k + n]));
  else EXPECT(r.reason == StopReason::MaxTokens && int64_t(n) == max_tokens);
}

}  // namespace

TEST(emulated_device_is_no_user_device_unless_enabled) {
  ::unsetenv("EMOLLM_EMULATED_DEVICE");
  EXPECT_THROWS(parse_device("emulated"), ErrorCode::InvalidArgument);
  EXPECT_THROWS(require_device(DeviceKind::Emulated), ErrorCode::InvalidArgument);
  enable_emulated();
  EXPECT(parse_device("emulated").kind == DeviceKind::Emulated);
  RuntimeOptions ro;
  ro.device = DeviceKind::Emulated;
  ro.device_set = true;
  ro.threads = 1;
  std::shared_ptr<Backend> be = Runtime::instance().backend(ro);
  EXPECT(be->device() == DeviceKind::Emulated);
  EXPECT(!be->uses_host_memory());
  EXPECT(std::string(device_name(DeviceKind::Emulated)) == "emulated");
}

TEST(emulated_device_catches_host_pointers_and_overruns) {
  auto pool = std::make_shared<ThreadPool>(1);
  std::unique_ptr<Backend> dev = make_emulated_device_backend(pool);
  std::unique_ptr<Backend> cpu = make_cpu_backend(pool);
  const int64_t M = 3, N = 5, K = 8;
  std::vector<float> x(size_t(M * K)), w(size_t(N * K)), y_cpu(size_t(M * N)), y_dev(size_t(M * N));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 7) * 0.25f - 0.5f;
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(i % 5) * 0.125f - 0.25f;
  BackendBuffer dx(*dev, x.size() * 4), dw(*dev, w.size() * 4), dy(*dev, y_dev.size() * 4);
  dev->upload(dx.data(), x.data(), x.size() * 4);
  dev->upload(dw.data(), w.data(), w.size() * 4);
  auto* X = static_cast<float*>(dx.data());
  auto* W = static_cast<float*>(dw.data());
  auto* Y = static_cast<float*>(dy.data());

  // all in device memory: computes, and equals the CPU backend
  dev->gemm(X, K, W, DType::F32, nullptr, Y, N, M, N, K);
  dev->download(y_dev.data(), Y, y_dev.size() * 4);
  cpu->gemm(x.data(), K, w.data(), DType::F32, nullptr, y_cpu.data(), N, M, N, K);
  EXPECT(y_dev == y_cpu);

  // a host weight (an mmap'd tensor passed as is) is refused, naming the op and the argument
  std::string e = error_of([&] { dev->gemm(X, K, w.data(), DType::F32, nullptr, Y, N, M, N, K); }, ErrorCode::InvalidArgument);
  EXPECT(has(e, "gemm") && has(e, "argument W"));
  e = error_of([&] { dev->rmsnorm(x.data(), K, W, Y, K, 1, K, 1e-5f); }, ErrorCode::InvalidArgument);
  EXPECT(has(e, "rmsnorm") && has(e, "argument x"));
  std::vector<int32_t> pos(size_t(M), 0);
  RopeParams rp;
  rp.head_dim = 4;
  rp.rot_dim = 4;
  e = error_of([&] { dev->rope(X, K, M, 2, pos.data(), rp); }, ErrorCode::InvalidArgument);
  EXPECT(has(e, "rope") && has(e, "positions"));
  // a host bias beside device operands
  std::vector<float> bias(size_t(N), 1.0f);
  e = error_of([&] { dev->gemm(X, K, W, DType::F32, bias.data(), Y, N, M, N, K); }, ErrorCode::InvalidArgument);
  EXPECT(has(e, "bias"));
  // an overrun: X read with a row stride of 2K runs past the end of its block (Y stays inside)
  e = error_of([&] { dev->gemm(X, 2 * K, W, DType::F32, nullptr, Y, N, M, N, K); }, ErrorCode::InvalidArgument);
  EXPECT(has(e, "gemm") && has(e, "argument X"));
  e = error_of([&] { dev->add(X, X, X, M * K + 1); }, ErrorCode::InvalidArgument);
  EXPECT(has(e, "add"));
  // transfers: the device side must be device memory, the host side must not be
  e = error_of([&] { dev->upload(x.data(), w.data(), 4); }, ErrorCode::InvalidArgument);
  EXPECT(has(e, "upload") && has(e, "dst"));
  e = error_of([&] { dev->upload(X, W, 4); }, ErrorCode::InvalidArgument);
  EXPECT(has(e, "upload") && has(e, "src"));
  e = error_of([&] { dev->download(y_dev.data(), y_cpu.data(), 4); }, ErrorCode::InvalidArgument);
  EXPECT(has(e, "download") && has(e, "src"));
  e = error_of([&] { dev->copy(X, x.data(), 4); }, ErrorCode::InvalidArgument);
  EXPECT(has(e, "copy") && has(e, "src"));
  // an offset inside a block is fine (row 1 of X)
  dev->gemm(X + K, K, W, DType::F32, nullptr, Y, N, 1, N, K);
}

// Whether reading one byte at p on the host, in a forked child, ends the child normally.
bool host_read_survives(const void* p) {
  std::fflush(stdout);
  const pid_t pid = ::fork();
  if (pid == 0) {
    // quiet child: under AddressSanitizer the fault is reported on stderr before the child exits
    const int null_fd = ::open("/dev/null", O_WRONLY);
    if (null_fd >= 0) ::dup2(null_fd, 2);
    volatile char c = *static_cast<const volatile char*>(p);
    (void)c;
    ::_exit(0);
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return true;  // could not tell: counts as a failure below
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

TEST(emulated_device_memory_faults_on_host_reads) {
  // device memory is an inaccessible reservation: the host reading it faults (as a cudaMalloc
  // pointer would), so a decoder that dereferenced its device buffers could not pass the tests
  auto pool = std::make_shared<ThreadPool>(1);
  std::unique_ptr<Backend> dev = make_emulated_device_backend(pool);
  BackendBuffer b(*dev, 256);
  std::vector<char> host(256, 1);
  dev->upload(b.data(), host.data(), host.size());
  EXPECT(host_read_survives(host.data()));  // the harness itself: a host read of host memory is fine
  EXPECT(!host_read_survives(b.data()));
  EXPECT(!host_read_survives(static_cast<char*>(b.data()) + 100));
}

TEST(emulated_device_llama_greedy_matches_runc) {
  if (stories_dir().empty()) return;
  const std::vector<int32_t> want = oracle_greedy();
  EXPECT(want.size() == 201);
  std::shared_ptr<LlamaModel> m = emulated_model();
  EXPECT(!m->backend().uses_host_memory());
  // the weights were uploaded: the model computes from copies, not from the mmap
  EXPECT(m->tok_embd.data != m->tok_embd.host && m->layers[0].wq.data != m->layers[0].wq.host);
  LlamaContext ctx(m, LlamaContextOptions{512, 0, 1});
  GenerateResult r = Session(ctx).generate({1}, nullptr, greedy(200), nullptr);
  expect_oracle_continuation(want, 1, r, 200, *m);
  std::printf("  emulated device greedy: %zu tokens equal run.c's, stop %s\n", r.tokens.size(), stop_reason_name(r.reason));

  // all_logits (prefill rows downloaded in chunks of the device's output rows) equal the CPU's
  std::shared_ptr<LlamaModel> cpu = LlamaModel::load(stories_dir() + "/gguf/stories260K.gguf", LlamaLoadOptions{1, DeviceKind::Cpu});
  const int64_t n = 40, V = m->hparams().n_vocab;
  LlamaContext c_dev(m, LlamaContextOptions{64, 0, 1}), c_cpu(cpu, LlamaContextOptions{64, 0, 1});
  std::vector<float> a(size_t(n * V)), b(size_t(n * V));
  c_dev.eval(want.data(), n, a.data());
  c_cpu.eval(want.data(), n, b.data());
  float md = 0;
  for (size_t i = 0; i < a.size(); ++i) md = std::max(md, std::fabs(a[i] - b[i]));
  EXPECT(md <= 1e-5f);
  std::printf("  emulated vs cpu all_logits over %lld rows: max |diff| %g (tolerance 1e-5)\n", (long long)n, double(md));
}

TEST(emulated_device_scheduler_greedy_matches_runc) {
  if (stories_dir().empty()) return;
  const std::vector<int32_t> want = oracle_greedy();
  std::shared_ptr<LlamaModel> m = emulated_model();
  SchedulerOptions so;
  so.n_ctx = 256;
  so.n_seq = 3;  // 4 requests: one waits for a slot
  Scheduler sched(m, so);
  const size_t ks[4] = {1, 4, 9, 15};  // prompts: the oracle's first k tokens
  const int64_t max_tokens = 40;
  std::vector<std::promise<SeqOutcome>> done(4);
  for (size_t i = 0; i < 4; ++i) {
    SeqRequest r;
    r.prompt.assign(want.begin(), want.begin() + long(ks[i]));
    r.params = greedy(max_tokens);
    r.on_done = [&, i](SeqOutcome&& o) { done[i].set_value(std::move(o)); };
    sched.submit(std::move(r));
  }
  for (size_t i = 0; i < 4; ++i) {
    SeqOutcome o = done[i].get_future().get();
    EXPECT(!o.error);
    if (o.error) continue;
    expect_oracle_continuation(want, ks[i], o.generated, max_tokens, *m);
  }
  const SchedulerStats st = sched.stats();
  std::printf("  emulated device scheduler: %lld steps, %lld batched, max batch %lld\n", (long long)st.steps,
              (long long)st.batched_steps, (long long)st.max_batch);
  EXPECT(st.batched_steps > 0 && st.max_batch >= 2);
}

TEST(emulated_device_llava_decoder_matches_transformers) {
  const std::string dir = emollm_test::shared_model_dir("llava-tiny-hf", {"model.safetensors", "reference/logits.f32"});
  if (dir.empty()) return;
  enable_emulated();
  std::shared_ptr<LlavaModel> cpu = LlavaModel::load(dir, LlavaLoadOptions{1, DeviceKind::Cpu});
  std::shared_ptr<LlavaModel> dev = LlavaModel::load(dir, LlavaLoadOptions{1, DeviceKind::Emulated});
  EXPECT(!dev->text().backend().uses_host_memory());
  const std::vector<float> pixels = emollm_test::read_f32(dir + "/reference/pixel_values.f32");
  const std::vector<float> ref = emollm_test::read_f32(dir + "/reference/logits.f32");
  JsonValue e = load_json_file(dir + "/reference/expected.json");
  const std::vector<int32_t> ids = emollm_test::ints(e.find("input_ids_unexpanded"));
  const std::vector<int32_t> want_greedy = emollm_test::ints(e.find("greedy_new_tokens"));

  // the vision tower still computes from host weights: refused on a device backend, typed
  std::vector<float> feats(size_t(cpu->n_image_tokens() * cpu->n_embd()));
  const std::string refused = error_of([&] { dev->encode_images(pixels.data(), 1, feats.data()); }, ErrorCode::InvalidArgument);
  EXPECT(has(refused, "emulated device") && has(refused, "not inside a block"));
  std::printf("  llava vision on the emulated device: %s\n", refused.c_str());
  // so the features come from the CPU model; the decoder on the device takes them as input rows
  EXPECT(cpu->encode_images(pixels.data(), 1, feats.data()));
  const std::vector<int32_t> toks = dev->splice_prompt(ids.data(), int64_t(ids.size()), feats.data(), 1);
  for (int64_t n_batch : {int64_t(0), int64_t(7)}) {  // n_batch 7 splits the image rows across passes
    LlamaContext ctx(dev->text_model(), LlamaContextOptions{256, n_batch, 1});
    std::vector<float> out(toks.size() * size_t(ctx.n_vocab()));
    EXPECT(ctx.eval(toks.data(), int64_t(toks.size()), out.data(), nullptr, feats.data()) != nullptr);
    EXPECT(out.size() == ref.size());
    if (out.size() != ref.size()) return;
    const double d = emollm_test::max_abs_diff(out.data(), ref.data(), long(out.size()));
    EXPECT(d <= 1e-4);
    std::printf("  emulated device llava decoder (n_batch %lld): max |logit diff| vs transformers %.3g (tolerance 1e-4)\n",
                (long long)n_batch, d);
  }
  LlamaContext ctx(dev->text_model(), LlamaContextOptions{256, 0, 1});
  const int64_t V = ctx.n_vocab();
  const float* l = ctx.eval_prompt(toks.data(), int64_t(toks.size()), nullptr, feats.data());
  std::vector<int32_t> got;
  for (size_t i = 0; i < want_greedy.size(); ++i) {
    const int32_t best = int32_t(std::max_element(l, l + V) - l);
    got.push_back(best);
    if (i + 1 < want_greedy.size()) l = ctx.eval(&best, 1);
  }
  EXPECT(got == want_greedy);
}

TEST(emulated_device_qwen2_vl_decoder_mrope_matches_transformers) {
  const std::string dir = emollm_test::shared_model_dir("qwen2-vl-tiny-hf", {"reference/expected.json"});
  if (dir.empty()) return;
  enable_emulated();
  std::shared_ptr<Qwen2VLModel> cpu = Qwen2VLModel::load(dir, LlamaLoadOptions{1, DeviceKind::Cpu});
  std::shared_ptr<Qwen2VLModel> dev = Qwen2VLModel::load(dir, LlamaLoadOptions{1, DeviceKind::Emulated});
  EXPECT(!dev->text_model()->backend().uses_host_memory());
  EXPECT(!dev->text_model()->mrope_inv_freq.empty());
  JsonValue e = load_json_file(dir + "/reference/expected.json");
  for (const char* name : {"photo", "video"}) {
    const std::string nm = name;
    const JsonValue* c = e.find(name);
    const std::vector<int32_t> ids = emollm_test::ints(c->find("input_ids"));
    const std::vector<int32_t> want_greedy = emollm_test::ints(c->find("greedy_new_tokens"));
    const auto& thw = c->find(nm == "photo" ? "image_grid_thw" : "video_grid_thw")->items()[0].items();
    const GridThw grid{thw[0].as_int(), thw[1].as_int(), thw[2].as_int()};
    const std::vector<float> pixels = emollm_test::read_f32(
        dir + "/reference/" + (nm == "photo" ? "photo_pixel_values.f32" : "video_pixel_values_videos.f32"));
    const std::vector<float> ref = emollm_test::read_f32(dir + "/reference/" + nm + "_logits.f32");
    std::vector<float> feats;  // the vision tower on the CPU (host-only, see above)
    EXPECT(cpu->encode(pixels.data(), {grid}, &feats));
    const Qwen2VLModel::Prompt p = dev->prepare(ids.data(), int64_t(ids.size()), feats.data(), {grid});
    LlamaContext ctx(dev->text_model(), LlamaContextOptions{128, 0, 1});
    std::vector<float> out(p.tokens.size() * size_t(ctx.n_vocab()));
    EXPECT(ctx.eval(p.tokens.data(), int64_t(p.tokens.size()), out.data(), nullptr, feats.data(), p.pos3.data()) != nullptr);
    EXPECT(out.size() == ref.size());
    if (out.size() != ref.size()) continue;
    const double d = emollm_test::max_abs_diff(out.data(), ref.data(), long(out.size()));
    EXPECT(d <= 1e-4);
    std::printf("  emulated device qwen2-vl %s: max |logit diff| vs transformers %.3g (tolerance 1e-4)\n", name, d);
    LlamaContext g(dev->text_model(), LlamaContextOptions{128, 0, 1});
    const int64_t V = g.n_vocab();
    const float* l = g.eval_prompt(p.tokens.data(), int64_t(p.tokens.size()), nullptr, feats.data(), p.pos3.data());
    std::vector<int32_t> got;
    for (size_t i = 0; i < want_greedy.size(); ++i) {
      const int32_t best = int32_t(std::max_element(l, l + V) - l);
      got.push_back(best);
      if (i + 1 < want_greedy.size()) l = g.eval(&best, 1);
    }
    EXPECT(got == want_greedy);
  }
}
