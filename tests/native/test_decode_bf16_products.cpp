// LlamaContextOptions::decode_bf16_products (the user option `decodeBf16Products`): a context
// with it sets AttentionParams::bf16_products on its decode steps' attention (one token of a
// sequence), never on prompt chunks. On a random-weight LLaMA GGUF with 8 query heads per 2 kv
// heads (the bf16-products decode path needs >= 4 a kv head), two contexts of the same model, the
// option off and on, run the same script (a prompt, greedy decode steps fed the off context's
// tokens, a batched two-sequence decode, a second sequence's prompt after the decode steps):
//   - bf16 cache, CPU with AVX512-BF16: prompt logits bit-equal (prefill untouched); every decode
//     step's logits within kLogitTol of the option off, and some differ (the option reaches the
//     kernel: a context that never set bf16_products fails this); without AVX512-BF16 everything
//     is bit-equal (the option has no effect there, as documented);
//   - f32 and f16 caches: every logit bit-equal (the option has no effect on them);
//   - through the Scheduler (SchedulerOptions::decode_bf16_products, what the addon's batch and
//     so generate / chat use): Logits of a prompt (a prompt chunk) bit-equal on and off, then
//     Logits of that prompt + one token (the cached prompt reused: one decode row) within the
//     tolerance and, with AVX512-BF16 on a bf16 cache, not bit-equal.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "base/cpu_features.h"
#include "base/dtype.h"
#include "../../kernels/cpu/attention_internal.h"
#include "model/llama.h"
#include "model/scheduler.h"
#include "greedy_decode.h"
#include "random_llama.h"
#include "testing.h"

using namespace emollm;

namespace {

// Tolerance on a decode step's logits, |on - off| <= kLogitTol * max(1, max |off|). The kernel
// rounds q and the softmax weights to bf16 (relative 2^-9 each per product; its own check,
// attention_decode_bf16dp_within_bound, sees errors of 5.6-6.3e-3 of the output's RMS at the
// 1.1B shape); on this model (scores of std ~2.6) the logits moved by at most 5.6e-3 of max |off|
// over the script (printed below), the decode steps' changes compounding through the cache of
// the decoded tokens. 2e-2 leaves ~3.5x headroom; with q / k three times larger (scores of std
// ~23, a near one-hot softmax) the same script moved them by 4.9e-2, i.e. the check is not loose
// enough to pass anything.
constexpr double kLogitTol = 2e-2;

std::shared_ptr<LlamaModel> gqa4_model() {
  static std::shared_ptr<LlamaModel> m = [] {
    char tmpl[] = "/tmp/emollm_bf16dp_XXXXXX";
    const char* dir = mkdtemp(tmpl);
    if (!dir) return std::shared_ptr<LlamaModel>();
    const std::string path = std::string(dir) + "/gqa4.gguf";
    // a random-weight LLaMA GGUF, f32: 2 layers, E = 256, 8 heads of 32 over 2 kv heads (GQA
    // 4:1), n_ff = 384, vocab 160; q / k entries ~1.6, scores of std ~2.6
    emollm_test::RandomLlamaShape shape;  // the rest: RandomLlamaShape's defaults
    shape.n_embd = 256;
    shape.n_head = 8;
    shape.n_ff = 384;
    shape.first_seed = 7;
    emollm_test::write_random_llama(path, shape);
    std::shared_ptr<LlamaModel> r = LlamaModel::load(path);
    std::remove(path.c_str());
    ::rmdir(dir);
    return r;
  }();
  return m;
}

// The mode the option works under: WhenAsked (the default; EMOLLM_DECODE_ATTN_BF16DP set in the
// environment would change what "off" means), restored after.
struct WhenAskedScope {
  attention_detail::DecodeBf16Dp prev = attention_detail::decode_bf16dp_mode();
  WhenAskedScope() { attention_detail::set_decode_bf16dp_mode(attention_detail::DecodeBf16Dp::WhenAsked); }
  ~WhenAskedScope() { attention_detail::set_decode_bf16dp_mode(prev); }
};

struct Compare {
  int steps = 0, steps_differ = 0, bit_equal_fail = 0, tol_fail = 0;
  double worst = 0;  // max |on - off| / max(1, max |off|)
  // expect_equal: the bits must match; else within kLogitTol (and counted when they differ)
  void rows(const float* off, const float* on, int64_t n, bool expect_equal, const std::string& what) {
    ++steps;
    double mx = 1.0, d = 0.0;
    bool same = true;
    for (int64_t i = 0; i < n; ++i) {
      mx = std::max(mx, double(std::fabs(off[i])));
      d = std::max(d, std::fabs(double(on[i]) - double(off[i])));
      if (std::memcmp(off + i, on + i, sizeof(float)) != 0) same = false;
    }
    if (!same) ++steps_differ;
    worst = std::max(worst, d / mx);
    if (expect_equal && !same) {
      ++bit_equal_fail;
      emollm_test::report_failure(__FILE__, __LINE__, what + ": not bit-equal, max |on - off| " + std::to_string(d));
    }
    if (!expect_equal && d > kLogitTol * mx) {
      ++tol_fail;
      emollm_test::report_failure(__FILE__, __LINE__,
                                  what + ": max |on - off| " + std::to_string(d) + " > " + std::to_string(kLogitTol) + " x " + std::to_string(mx));
    }
  }
};

// The script on two contexts (off, on) of the model with cache type kv. prefill_equal: prompt
// logits must be bit-equal; decode_equal: decode steps too (else within the tolerance).
Compare run_script(const std::shared_ptr<LlamaModel>& m, DType kv, bool decode_equal) {
  LlamaContextOptions o;
  o.n_ctx = 160;
  o.n_seq = 2;
  o.n_batch = 64;
  o.kv_type = kv;
  o.prefault = false;
  LlamaContext off(m, o);
  o.decode_bf16_products = true;
  LlamaContext on(m, o);
  EXPECT(!off.decode_bf16_products());
  EXPECT(on.decode_bf16_products());
  const std::string label = std::string("kv ") + dtype_name(kv);
  const int64_t V = off.n_vocab();
  Compare c;
  // a prompt of 70 tokens (more than one 64-position block), every row's logits: prefill; decode
  // steps, both fed the off context's greedy tokens (same inputs: only attention differs); a
  // second sequence's prompt after those steps (a prompt chunk, never on bf16 products); batched
  // decode of both sequences (one pass, two one-token segments)
  emollm_test::PairedScript script;
  script.prompt.resize(70);
  for (size_t i = 0; i < script.prompt.size(); ++i) script.prompt[i] = int32_t((i * 37 + 11) % size_t(V));
  script.decode_steps = 16;
  script.prompt1 = {2, 8, 150, 33, 5, 71, 19, 4, 90, 12, 6, 44, 100, 3, 58, 27, 81};
  script.prompt1_logits = true;
  script.batched_steps = 4;
  emollm_test::paired_decode_script(
      off, on, script, label, [&](const float* a, const float* b, int64_t n, emollm_test::PairedStep step, const std::string& what) {
        switch (step) {
          case emollm_test::PairedStep::Prompt:
          case emollm_test::PairedStep::Prompt1: return c.rows(a, b, n, true, what);
          case emollm_test::PairedStep::Decode: return c.rows(a, b, n, decode_equal, what);
          case emollm_test::PairedStep::Batched:  // one row a sequence
            c.rows(a, b, V, decode_equal, what + " seq 0");
            return c.rows(a + V, b + V, V, decode_equal, what + " seq 1");
        }
      });
  return c;
}

bool bf16dp_available() { return cpu_features().avx512bf16 && isa_active() >= Isa::Avx512; }

}  // namespace

TEST(decode_bf16_products_option_bf16_cache_within_tolerance_and_taken) {
  WhenAskedScope mode;
  auto m = gqa4_model();
  EXPECT(m != nullptr);
  if (!m) return;
  EXPECT(m->hparams().n_head == 8 && m->hparams().n_head_kv == 2);
  const bool avail = bf16dp_available();
  if (!avail)
    std::printf("  decode_bf16_products: no AVX512-BF16 on this CPU (or ISA capped below AVX-512): checking the option has no effect\n");
  const Compare c = run_script(m, DType::BF16, !avail);
  std::printf("  decode_bf16_products bf16 cache: %d of %d logit rows differ, worst |on - off| / max|off| %.3g (tolerance %.3g)\n",
              c.steps_differ, c.steps, c.worst, kLogitTol);
  EXPECT(c.steps == 1 + 16 + 1 + 8);
  EXPECT(c.bit_equal_fail == 0);
  EXPECT(c.tol_fail == 0);
  if (avail) {
    // the products reach the kernel: most decode steps move (the prompt rows never do)
    EXPECT(c.steps_differ >= 12);
    EXPECT(c.worst > 0.0);
  }
}

TEST(decode_bf16_products_option_no_effect_on_f32_f16_caches) {
  WhenAskedScope mode;
  auto m = gqa4_model();
  EXPECT(m != nullptr);
  if (!m) return;
  for (DType kv : {DType::F32, DType::F16}) {
    const Compare c = run_script(m, kv, true);
    EXPECT(c.steps == 1 + 16 + 1 + 8);
    EXPECT(c.steps_differ == 0);
    EXPECT(c.bit_equal_fail == 0);
  }
}

namespace {

std::vector<float> sched_logits(Scheduler& s, const std::vector<int32_t>& prompt) {
  std::promise<SeqOutcome> p;
  SeqRequest r;
  r.kind = SeqRequest::Kind::Logits;
  r.prompt = prompt;
  r.on_done = [&p](SeqOutcome&& o) { p.set_value(std::move(o)); };
  s.submit(std::move(r));
  SeqOutcome o = p.get_future().get();
  EXPECT(!o.error && !o.aborted);
  return o.logits;
}

}  // namespace

TEST(decode_bf16_products_option_through_scheduler) {
  WhenAskedScope mode;
  auto m = gqa4_model();
  EXPECT(m != nullptr);
  if (!m) return;
  const bool avail = bf16dp_available();
  for (DType kv : {DType::BF16, DType::F32}) {
    SchedulerOptions so;
    so.n_ctx = 128;
    so.n_seq = 1;
    so.kv_type = kv;
    so.prefault = false;
    Scheduler off(m, so);
    so.decode_bf16_products = true;
    Scheduler on(m, so);
    std::vector<int32_t> prompt(50);
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t((i * 29 + 3) % 160);
    const std::string label = std::string("scheduler kv ") + dtype_name(kv);
    Compare c;
    {
      const std::vector<float> a = sched_logits(off, prompt), b = sched_logits(on, prompt);
      EXPECT(a.size() == 160 && b.size() == a.size());
      c.rows(a.data(), b.data(), int64_t(a.size()), true, label + " prompt");
    }
    // the prompt + one token at a time: the cached positions reused, the new token one decode row
    for (int t = 0; t < 6; ++t) {
      prompt.push_back(int32_t(7 + 11 * t));
      const std::vector<float> a = sched_logits(off, prompt), b = sched_logits(on, prompt);
      EXPECT(a.size() == 160 && b.size() == a.size());
      c.rows(a.data(), b.data(), int64_t(a.size()), !(avail && kv == DType::BF16), label + " + " + std::to_string(t + 1));
    }
    EXPECT(c.steps == 7);
    if (avail && kv == DType::BF16) EXPECT(c.steps_differ >= 4);
    else EXPECT(c.steps_differ == 0);
    EXPECT(on.stats().prefill_tokens == off.stats().prefill_tokens);
  }
}
