// Device-readiness without a GPU: the strict emulated device (core/emulated_device_backend.h)
// catches a host pointer in a compute op, an overrun of a device block and a device pointer on
// the host side of a transfer; its memory faults when the host reads it (checked in a forked
// child); it is no user device unless EMOLLM_EMULATED_DEVICE=1; and the
// LLaMA decoder runs on it (weights uploaded at load, ids / positions uploaded per pass, logits
// downloaded): stories260K greedy through Session::generate and through the batched scheduler
// equals llama2.c's run.c tokens (../shared/models/stories260K/oracle), and equals the CPU run.
// The multimodal models run on it end to end, vision included: their towers' and heads' weights
// are uploaded at load (zero-copy on the CPU, checked), so any weight still read from the mmap
// would be refused by the device's pointer checks, and any host read of device memory would fault
// (kill the test binary). Tolerances: vision features / image tokens vs the CPU run 1e-5; logits
// vs the reference 1e-4 (the CPU tests' tolerance); greedy tokens equal.
//  - llava-tiny-hf: CLIP + projector, then the decoder: transformers' logits and 16 greedy tokens;
//  - llava-next-tiny-hf: anyres tiles and the packing with the uploaded image_newline (photo, wide);
//  - qwen2-vl-tiny-hf: the ViT + merger (photo, video), the decoder with M-RoPE;
//  - EmoLLM's PyTorch fixtures (every perspective kind, gated-sum and concat, face boxes).
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
#include "core/backend_weights.h"
#include "core/emulated_device_backend.h"
#include "core/runtime.h"
#include "loaders/json.h"
#include "model/llama.h"
#include "model/emollm.h"
#include "model/llava.h"
#include "model/llava_next.h"
#include "model/qwen2_vl.h"
#include "model/scheduler.h"
#include "model/session.h"
#include "batched_parity.h"
#include "greedy_decode.h"
#include "shared_data.h"
#include "stories_helpers.h"
#include "submit_together.h"
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

using emollm_test::greedy;
using emollm_test::oracle_greedy;
using emollm_test::stories_dir;

std::shared_ptr<LlamaModel> emulated_model() {
  static std::shared_ptr<LlamaModel> m = [] {
    enable_emulated();
    LlamaLoadOptions o;
    o.device = DeviceKind::Emulated;
    return LlamaModel::load(emollm_test::stories_gguf(), o);
  }();
  return m;
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

// BackendWeights (core/backend_weights.h), what the vision models place their weights with: on
// the CPU place() is the host pointer itself (zero-copy, nothing allocated); on a device a range is
// uploaded once (placed again: the same copy) and holds the bytes; one object, one backend.
TEST(backend_weights_zero_copy_on_cpu_upload_once_on_device) {
  auto pool = std::make_shared<ThreadPool>(1);
  std::unique_ptr<Backend> dev = make_emulated_device_backend(pool);
  std::unique_ptr<Backend> cpu = make_cpu_backend(pool);
  std::vector<float> a(64), b(16);
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(i) * 0.5f;
  BackendWeights on_cpu;
  on_cpu.begin(*cpu);
  EXPECT(on_cpu.place(a.data(), 64) == a.data() && on_cpu.device_bytes() == 0);
  EXPECT(on_cpu.usable_on(*cpu) && !on_cpu.usable_on(*dev));
  BackendWeights on_dev;
  EXPECT(on_dev.usable_on(*cpu) && !on_dev.usable_on(*dev));  // nothing placed yet: host weights
  on_dev.begin(*dev);
  const float* pa = on_dev.place(a.data(), 64);
  EXPECT(pa != a.data() && !host_read_survives(pa));
  EXPECT(on_dev.place(a.data(), 64) == pa && on_dev.place(a.data(), 8) == pa);  // placed again: the same copy
  EXPECT(on_dev.place(static_cast<const float*>(nullptr), 4) == nullptr);
  EXPECT(on_dev.place(b.data(), 16) != pa && on_dev.device_bytes() == (64 + 16) * sizeof(float));
  std::vector<float> back(64);
  dev->download(back.data(), pa, back.size() * sizeof(float));
  EXPECT(back == a);
  EXPECT(on_dev.usable_on(*dev) && !on_dev.usable_on(*cpu));
  const std::string e = error_of([&] { on_dev.require_usable_on(*cpu, "test tower"); }, ErrorCode::InvalidArgument);
  EXPECT(has(e, "test tower") && has(e, "emulated device"));
  EXPECT_THROWS(on_dev.begin(*cpu), ErrorCode::Internal);
}

TEST(emulated_device_llama_greedy_matches_runc) {
  if (stories_dir().empty()) return;
  const std::vector<int32_t> want = oracle_greedy();
  EXPECT(want.size() == 201);
  std::shared_ptr<LlamaModel> m = emulated_model();
  EXPECT(!m->backend().uses_host_memory());
  // the weights were uploaded: the model computes from copies, not from the mmap
  EXPECT(m->tok_embd.data != m->tok_embd.host && m->layers[0].wq.data != m->layers[0].wq.host);
  EXPECT(m->placed().device_bytes() > 0 && m->placed().usable_on(m->backend()));
  EXPECT(!host_read_survives(m->layers[0].wq.data) && !host_read_survives(m->output_norm));
  if (m->tied_output) EXPECT(m->output.data == m->tok_embd.data);  // one copy of a tied matrix
  LlamaContext ctx(m, LlamaContextOptions{512, 0, 1});
  GenerateResult r = Session(ctx).generate({1}, nullptr, greedy(200), nullptr);
  expect_oracle_continuation(want, 1, r, 200, *m);
  std::printf("  emulated device greedy: %zu tokens equal run.c's, stop %s\n", r.tokens.size(), stop_reason_name(r.reason));

  // all_logits (prefill rows downloaded in chunks of the device's output rows) equal the CPU's
  std::shared_ptr<LlamaModel> cpu = LlamaModel::load(emollm_test::stories_gguf(), LlamaLoadOptions{1, DeviceKind::Cpu});
  // on the CPU the same placement is zero-copy: the forward pass reads the mmap
  EXPECT(cpu->placed().device_bytes() == 0 && cpu->tok_embd.data == cpu->tok_embd.host);
  EXPECT(cpu->layers[0].wq.data == cpu->layers[0].wq.host && cpu->layers.back().w_down.data == cpu->layers.back().w_down.host);
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
  std::vector<SeqRequest> reqs(4);
  for (size_t i = 0; i < 4; ++i) {
    reqs[i].prompt.assign(want.begin(), want.begin() + long(ks[i]));
    reqs[i].params = greedy(max_tokens);
  }
  // all queued before the first decodes past its first token (a loaded machine could otherwise
  // finish one request before the next is submitted, and no step would be batched)
  const emollm_test::TogetherRun run = emollm_test::submit_together(sched, std::move(reqs));
  for (size_t i = 0; i < 4; ++i) {
    const SeqOutcome& o = run.got[i];
    EXPECT(!o.error);
    if (o.error) continue;
    expect_oracle_continuation(want, ks[i], o.generated, max_tokens, *m);
  }
  const SchedulerStats st = sched.stats();
  std::printf("  emulated device scheduler: %lld steps, %lld batched, max batch %lld\n", (long long)st.steps,
              (long long)st.batched_steps, (long long)st.max_batch);
  EXPECT(st.batched_steps > 0 && st.max_batch >= 2);
}

// The shared batched-parity checks (batched_parity.h; cuda/test_cuda_e2e.cpp runs the same on a
// GPU): through the scheduler on the device, each request equals itself alone on the device and
// run.c, with a full KV pool and with one small enough to preempt.
TEST(emulated_device_scheduler_batched_greedy_equals_alone) {
  if (stories_dir().empty()) return;
  emollm_test::expect_batched_greedy_parity(emulated_model(), "emulated device");
}

namespace {

double max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size() || a.empty()) return INFINITY;
  return emollm_test::max_abs_diff(a.data(), b.data(), long(a.size()));
}

// The logits at every position of `toks` (input embeddings `feats` for its negative ids, M-RoPE
// positions `pos3` or null) and `n_greedy` greedy tokens after it, on `text`'s backend.
struct Decoded {
  std::vector<float> logits;
  std::vector<int32_t> greedy;
};
Decoded decode(const std::shared_ptr<LlamaModel>& text, const std::vector<int32_t>& toks, const std::vector<float>& feats,
               const int32_t* pos3, size_t n_greedy, int64_t n_batch = 0) {
  Decoded d;
  LlamaContext ctx(text, LlamaContextOptions{256, n_batch, 1});
  d.logits.resize(toks.size() * size_t(ctx.n_vocab()));
  EXPECT(ctx.eval(toks.data(), int64_t(toks.size()), d.logits.data(), nullptr, feats.data(), pos3) != nullptr);
  if (n_greedy == 0) return d;
  LlamaContext g(text, LlamaContextOptions{256, 0, 1});
  const float* l = g.eval_prompt(toks.data(), int64_t(toks.size()), nullptr, feats.data(), pos3);
  d.greedy = emollm_test::argmax_continuation(g, l, int64_t(n_greedy));
  return d;
}

// Tolerances of the vision parity below: the device's vision features against the CPU's, and
// the device's logits against transformers' (the CPU tests' tolerance).
constexpr double kFeatTol = 1e-5, kLogitTol = 1e-4;

// A weight the device computes from: a copy in device memory (not the mmap), which the host
// cannot read (the read faults, so model code that read it on the host could not pass).
template <class W>
void expect_device_copy(const W& w) {
  EXPECT(w.data != nullptr && w.host != nullptr && w.data != w.host);
  EXPECT(!host_read_survives(w.data));
}

std::string emollm_fixture(const char* name) {
  return emollm_test::committed_fixture(std::string("emollm/") + name, "config.json", __FILE__);
}

}  // namespace

// llava-tiny-hf entirely on the emulated device: the CLIP tower and the projector compute from
// weights uploaded at load (the CPU model keeps using the mmap), the features equal the CPU's,
// and the decoder fed them gives transformers' logits and greedy tokens.
TEST(emulated_device_llava_vision_and_decoder_match) {
  const std::string dir = emollm_test::shared_model_dir("llava-tiny-hf", {"model.safetensors", "reference/logits.f32"});
  if (dir.empty()) return;
  enable_emulated();
  std::shared_ptr<LlavaModel> cpu = LlavaModel::load(dir, LlavaLoadOptions{1, DeviceKind::Cpu});
  std::shared_ptr<LlavaModel> dev = LlavaModel::load(dir, LlavaLoadOptions{1, DeviceKind::Emulated});
  EXPECT(!dev->text().backend().uses_host_memory());
  // weights: uploaded on the device, zero-copy on the CPU
  const ClipVisionModel& v = dev->vision();
  EXPECT(v.placed().device_bytes() > 0 && cpu->vision().placed().device_bytes() == 0);
  expect_device_copy(v.patch_embd);
  expect_device_copy(v.layers[0].wq);
  expect_device_copy(v.layers.back().fc2);
  EXPECT(!host_read_survives(v.pos_embd) && !host_read_survives(v.layers[0].ln1_w));
  const ClipVisionModel& vc = cpu->vision();
  EXPECT(vc.layers[0].wq.data == vc.layers[0].wq.host && vc.patch_embd.data == vc.patch_embd.host);

  const std::vector<float> pixels = emollm_test::read_f32(dir + "/reference/pixel_values.f32");
  const std::vector<float> ref = emollm_test::read_f32(dir + "/reference/logits.f32");
  JsonValue e = load_json_file(dir + "/reference/expected.json");
  const std::vector<int32_t> ids = emollm_test::ints(e.find("input_ids_unexpanded"));
  const std::vector<int32_t> want_greedy = emollm_test::ints(e.find("greedy_new_tokens"));
  std::vector<float> f_cpu(size_t(cpu->n_image_tokens() * cpu->n_embd())), f_dev(f_cpu.size());
  EXPECT(cpu->encode_images(pixels.data(), 1, f_cpu.data()));
  EXPECT(dev->encode_images(pixels.data(), 1, f_dev.data()));
  const double fd = max_diff(f_dev, f_cpu);
  EXPECT(fd <= kFeatTol);
  const std::vector<int32_t> toks = dev->splice_prompt(ids.data(), int64_t(ids.size()), f_dev.data(), 1);
  for (int64_t n_batch : {int64_t(0), int64_t(7)}) {  // n_batch 7 splits the image rows across passes
    const Decoded d = decode(dev->text_model(), toks, f_dev, nullptr, n_batch ? 0 : want_greedy.size(), n_batch);
    const double ld = max_diff(d.logits, ref);
    EXPECT(ld <= kLogitTol);
    if (!n_batch) EXPECT(d.greedy == want_greedy);
    std::printf("  emulated llava-tiny-hf (n_batch %lld): features vs cpu %.3g (tol %g), logits vs transformers %.3g (tol %g)\n",
                (long long)n_batch, fd, kFeatTol, ld, kLogitTol);
  }
  // the weights live on one backend: the tower refuses another one, typed
  Backend& cpu_be = cpu->text().backend();
  std::vector<float> tmp(size_t(cpu->projector_in() * cpu->n_image_tokens()));
  std::string refused = error_of([&] { v.encode(cpu_be, pixels.data(), 1, dev->feature_layers(), true, tmp.data()); },
                                 ErrorCode::InvalidArgument);
  EXPECT(has(refused, "CLIP vision tower") && has(refused, "emulated device"));
  refused = error_of([&] { vc.encode(dev->text().backend(), pixels.data(), 1, cpu->feature_layers(), true, tmp.data()); },
                     ErrorCode::InvalidArgument);
  EXPECT(has(refused, "CLIP vision tower"));
}

// llava-next-tiny-hf on the emulated device: every anyres tile through the tower and projector on
// the device, packed there with the uploaded image_newline; features equal the CPU's, logits and
// the 12 greedy tokens equal transformers'.
TEST(emulated_device_llava_next_vision_and_decoder_match) {
  const std::string dir = emollm_test::shared_model_dir("llava-next-tiny-hf", {"reference/expected.json"});
  if (dir.empty()) return;
  enable_emulated();
  std::shared_ptr<LlavaModel> cpu = LlavaModel::load(dir, LlavaLoadOptions{1, DeviceKind::Cpu});
  std::shared_ptr<LlavaModel> dev = LlavaModel::load(dir, LlavaLoadOptions{1, DeviceKind::Emulated});
  EXPECT(dev->anyres() && dev->image_newline() != nullptr);
  EXPECT(dev->image_newline_device() != dev->image_newline() && !host_read_survives(dev->image_newline_device()));
  EXPECT(cpu->image_newline_device() == cpu->image_newline());  // zero-copy on the CPU
  expect_device_copy(dev->vision().layers[0].wk);
  JsonValue e = load_json_file(dir + "/reference/expected.json");
  for (const char* name : {"photo", "wide"}) {
    const JsonValue* c = e.find(name);
    const std::vector<int32_t> ids = emollm_test::ints(c->find("input_ids"));
    const std::vector<int32_t> want_greedy = emollm_test::ints(c->find("greedy_new_tokens"));
    const JsonValue& sz = c->find("image_sizes")->items()[0];
    const std::vector<float> pixels = emollm_test::read_f32(dir + "/reference/" + name + "_pixel_values.f32");
    const std::vector<float> ref = emollm_test::read_f32(dir + "/reference/" + name + "_logits.f32");
    const ClipHparams& vh = dev->vision().hparams();
    const AnyresLayout L = anyres_layout(sz.items()[0].as_int(), sz.items()[1].as_int(), dev->grid_pinpoints(), vh.image_size,
                                         vh.n_side());
    std::vector<float> f_cpu, f_dev;
    EXPECT(llava_next_encode_image(*cpu, pixels.data(), L, &f_cpu));
    EXPECT(llava_next_encode_image(*dev, pixels.data(), L, &f_dev));
    const double fd = max_diff(f_dev, f_cpu);
    EXPECT(fd <= kFeatTol);
    const std::vector<int32_t> toks =
        splice_prompt_counts(dev->image_token_id(), ids.data(), int64_t(ids.size()), f_dev.data(), dev->n_embd(), {L.n_tokens()});
    const Decoded d = decode(dev->text_model(), toks, f_dev, nullptr, want_greedy.size());
    const double ld = max_diff(d.logits, ref);
    EXPECT(ld <= kLogitTol);
    EXPECT(d.greedy == want_greedy);
    std::printf("  emulated llava-next-tiny-hf %s (%lld tiles): features vs cpu %.3g (tol %g), logits vs transformers %.3g (tol %g)\n",
                name, (long long)L.n_tiles(), fd, kFeatTol, ld, kLogitTol);
  }
}

// qwen2-vl-tiny-hf on the emulated device: the ViT (2-D RoPE positions uploaded, weights uploaded
// at load) and the patch merger on the device for the photo and the video; features equal the
// CPU's, the decoder's logits (M-RoPE) and greedy tokens equal transformers'.
TEST(emulated_device_qwen2_vl_vision_and_decoder_match) {
  const std::string dir = emollm_test::shared_model_dir("qwen2-vl-tiny-hf", {"reference/expected.json"});
  if (dir.empty()) return;
  enable_emulated();
  std::shared_ptr<Qwen2VLModel> cpu = Qwen2VLModel::load(dir, LlamaLoadOptions{1, DeviceKind::Cpu});
  std::shared_ptr<Qwen2VLModel> dev = Qwen2VLModel::load(dir, LlamaLoadOptions{1, DeviceKind::Emulated});
  EXPECT(!dev->text_model()->backend().uses_host_memory());
  EXPECT(dev->vision().placed().device_bytes() > 0 && cpu->vision().placed().device_bytes() == 0);
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
    std::vector<float> f_cpu, f_dev;
    EXPECT(cpu->encode(pixels.data(), {grid}, &f_cpu));
    EXPECT(dev->encode(pixels.data(), {grid}, &f_dev));
    const double fd = max_diff(f_dev, f_cpu);
    EXPECT(fd <= kFeatTol);
    const Qwen2VLModel::Prompt p = dev->prepare(ids.data(), int64_t(ids.size()), f_dev.data(), {grid});
    const Decoded d = decode(dev->text_model(), p.tokens, f_dev, p.pos3.data(), want_greedy.size());
    const double ld = max_diff(d.logits, ref);
    EXPECT(ld <= kLogitTol);
    EXPECT(d.greedy == want_greedy);
    std::printf("  emulated qwen2-vl-tiny-hf %s: features vs cpu %.3g (tol %g), logits vs transformers %.3g (tol %g)\n", name, fd,
                kFeatTol, ld, kLogitTol);
  }
  // the merger's MLP alone refuses a backend its weights are not on
  std::vector<float> tmp(size_t(dev->vision().config().embed_dim * dev->vision().merge_unit()));
  const std::string refused = error_of([&] { dev->vision().merger_mlp(cpu->text_model()->backend(), tmp.data(), 1, tmp.data()); },
                                       ErrorCode::InvalidArgument);
  EXPECT(has(refused, "Qwen2-VL patch merger"));
}

// EmoLLM's multi-perspective projection on the emulated device, on the PyTorch fixtures (every
// kind: mlp, multi-layer-mlp, attention-pool, face-region; gated-sum and concat): the heads'
// weights, the stacked group weights and the gates are uploaded at load; the image tokens (with
// face boxes) equal the CPU's and the fixture's, and the decoder's logits equal the fixture's.
TEST(emulated_device_emollm_mvp_matches_fixture) {
  for (const char* name : {"gated-sum", "concat"}) {
    const std::string d = emollm_fixture(name);
    if (d.empty()) return;
    enable_emulated();
    auto cpu = EmollmModel::load(d, LlavaLoadOptions{1, DeviceKind::Cpu});
    auto dev = EmollmModel::load(d, LlavaLoadOptions{1, DeviceKind::Emulated});
    int placed = 0;
    for (const MvpPerspective& p : dev->perspectives()) {
      if (p.gate == MvpGate::Closed) continue;
      EXPECT(p.gate_device != nullptr && !host_read_survives(p.gates()));
      if (p.w1.data) expect_device_copy(p.w1), ++placed;
      if (p.wk.data) expect_device_copy(p.wk), ++placed;
      if (p.queries) EXPECT(!host_read_survives(p.queries));
    }
    EXPECT(placed >= 1);
    for (const MvpPerspective& p : cpu->perspectives())
      if (p.gate != MvpGate::Closed) EXPECT(p.gate_device == nullptr && (!p.w1.data || p.w1.data == p.w1.host));
    JsonValue in = load_json_file(d + "/inputs.json");
    std::vector<std::vector<FaceBox>> faces;
    for (const auto& img : in.find("faces")->items()) {
      faces.emplace_back();
      for (const auto& b : img.items())
        faces.back().push_back(FaceBox{float(b.find("x")->as_double()), float(b.find("y")->as_double()),
                                       float(b.find("width")->as_double()), float(b.find("height")->as_double())});
    }
    const auto px = emollm_test::read_f32(d + "/pixel_values.f32");
    const auto want_feats = emollm_test::read_f32(d + "/image_features.f32");
    const auto want_logits = emollm_test::read_f32(d + "/logits.f32");
    std::vector<float> f_cpu, f_dev;
    std::vector<int64_t> c_cpu, c_dev;
    EXPECT(cpu->encode_images(px.data(), int64_t(faces.size()), &faces, &f_cpu, &c_cpu));
    EXPECT(dev->encode_images(px.data(), int64_t(faces.size()), &faces, &f_dev, &c_dev));
    std::vector<int64_t> want_counts;
    for (int32_t c : emollm_test::ints(in.find("token_counts"))) want_counts.push_back(c);
    EXPECT(c_dev == c_cpu && c_dev == want_counts);
    const double fd = max_diff(f_dev, f_cpu), fr = max_diff(f_dev, want_feats);
    EXPECT(fd <= kFeatTol && fr <= kLogitTol);
    const std::vector<int32_t> ids = emollm_test::ints(in.find("input_ids_unexpanded"));
    const std::vector<int32_t> toks =
        splice_prompt_counts(dev->image_token_id(), ids.data(), int64_t(ids.size()), f_dev.data(), dev->n_embd(), c_dev);
    const Decoded dd = decode(dev->llava().text_model(), toks, f_dev, nullptr, 0);
    const double ld = max_diff(dd.logits, want_logits);
    EXPECT(ld <= kLogitTol);
    std::printf("  emulated emollm %-9s: tokens vs cpu %.3g (tol %g), vs fixture %.3g, logits vs fixture %.3g (tol %g)\n", name, fd,
                kFeatTol, fr, ld, kLogitTol);
  }
}

// A half-precision KV cache on a backend without one (the emulated device takes f32 caches
// only): the context refuses at creation with Unsupported, naming the backend and what it takes.
TEST(emulated_device_refuses_half_kv_cache) {
  if (stories_dir().empty()) return;
  std::shared_ptr<LlamaModel> m = emulated_model();
  for (DType t : {DType::F16, DType::BF16}) {
    LlamaContextOptions o{64, 0, 1};
    o.kv_type = t;
    const std::string e = error_of([&] { LlamaContext ctx(m, o); }, ErrorCode::Unsupported);
    EXPECT(has(e, "KV cache type") && has(e, dtype_name(t)) && has(e, "supported: f32"));
  }
}
