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
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "base/cpu_features.h"
#include "base/dtype.h"
#include "../../kernels/cpu/attention_internal.h"
#include "model/llama.h"
#include "model/scheduler.h"
#include "gguf_out.h"
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

std::vector<float> randv(size_t n, uint32_t seed, float scale) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// A random-weight LLaMA GGUF, f32: 2 layers, E = 256, 8 heads of 32 over 2 kv heads (GQA 4:1),
// n_ff = 384, vocab 160.
void write_gqa4_llama(const std::string& path) {
  const int64_t E = 256, H = 8, Hkv = 2, D = 32, F = 384, V = 160, L = 2;
  emollm_test::GgufOut g;
  const std::string a = "llama.";
  g.kv_str("general.architecture", "llama");
  g.kv_u32(a + "embedding_length", uint32_t(E));
  g.kv_u32(a + "block_count", uint32_t(L));
  g.kv_u32(a + "feed_forward_length", uint32_t(F));
  g.kv_u32(a + "attention.head_count", uint32_t(H));
  g.kv_u32(a + "attention.head_count_kv", uint32_t(Hkv));
  g.kv_f32(a + "attention.layer_norm_rms_epsilon", 1e-5f);
  g.kv_f32(a + "rope.freq_base", 10000.0f);
  g.kv_u32(a + "context_length", 256);
  g.kv_u32(a + "rope.dimension_count", uint32_t(D));
  uint32_t seed = 7;
  auto mat = [&](const std::string& name, int64_t rows, int64_t cols, float scale) {
    g.tensor(name, {rows, cols}, randv(size_t(rows * cols), seed++, scale));
  };
  auto norm = [&](const std::string& name) {
    std::vector<float> f = randv(size_t(E), seed++, 0.1f);
    for (float& v : f) v += 1.0f;
    g.tensor(name, {E}, std::move(f));
  };
  mat("token_embd.weight", V, E, 1.0f);
  for (int64_t l = 0; l < L; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    norm(b + "attn_norm.weight");
    // q / k at scale 0.1: q and k entries ~1.6, scores q.k / sqrt(D) of std ~2.6 (a softmax
    // neither flat nor one-hot, as in a trained model)
    mat(b + "attn_q.weight", H * D, E, 0.1f);
    mat(b + "attn_k.weight", Hkv * D, E, 0.1f);
    mat(b + "attn_v.weight", Hkv * D, E, 0.1f);
    mat(b + "attn_output.weight", E, H * D, 0.1f);
    norm(b + "ffn_norm.weight");
    mat(b + "ffn_gate.weight", F, E, 0.1f);
    mat(b + "ffn_up.weight", F, E, 0.1f);
    mat(b + "ffn_down.weight", E, F, 0.1f);
  }
  norm("output_norm.weight");
  mat("output.weight", V, E, 0.1f);
  g.write(path);
}

std::shared_ptr<LlamaModel> gqa4_model() {
  static std::shared_ptr<LlamaModel> m = [] {
    char tmpl[] = "/tmp/emollm_bf16dp_XXXXXX";
    const char* dir = mkdtemp(tmpl);
    if (!dir) return std::shared_ptr<LlamaModel>();
    const std::string path = std::string(dir) + "/gqa4.gguf";
    write_gqa4_llama(path);
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

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

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
  // a prompt of 70 tokens (more than one 64-position block), every row's logits: prefill
  std::vector<int32_t> prompt(70);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = int32_t((i * 37 + 11) % size_t(V));
  std::vector<float> la(prompt.size() * size_t(V)), lb(la.size());
  off.seq_eval(0, prompt.data(), int64_t(prompt.size()), la.data());
  on.seq_eval(0, prompt.data(), int64_t(prompt.size()), lb.data());
  c.rows(la.data(), lb.data(), int64_t(la.size()), true, label + " prompt");
  // decode steps, both fed the off context's greedy tokens (same inputs: only attention differs)
  int32_t tok = argmax(la.data() + (prompt.size() - 1) * size_t(V), V);
  for (int s = 0; s < 16; ++s) {
    std::vector<float> a(static_cast<size_t>(V));
    std::memcpy(a.data(), off.seq_eval(0, &tok, 1), size_t(V) * sizeof(float));
    const float* b = on.seq_eval(0, &tok, 1);
    c.rows(a.data(), b, V, decode_equal, label + " decode step " + std::to_string(s));
    tok = argmax(a.data(), V);
  }
  // a second sequence's prompt after those steps: a prompt chunk, never on bf16 products
  const std::vector<int32_t> p1 = {2, 8, 150, 33, 5, 71, 19, 4, 90, 12, 6, 44, 100, 3, 58, 27, 81};
  std::vector<float> pa(p1.size() * size_t(V)), pb(pa.size());
  off.seq_eval(1, p1.data(), int64_t(p1.size()), pa.data());
  on.seq_eval(1, p1.data(), int64_t(p1.size()), pb.data());
  c.rows(pa.data(), pb.data(), int64_t(pa.size()), true, label + " second prompt");
  // batched decode of both sequences (one pass, two one-token segments)
  int32_t t1 = argmax(pa.data() + (p1.size() - 1) * size_t(V), V);
  std::vector<float> oa(2 * size_t(V)), ob(oa.size());
  for (int s = 0; s < 4; ++s) {
    const LlamaBatchRow br[2] = {{0, tok}, {1, t1}};
    EXPECT(off.decode(br, 2, oa.data()));
    EXPECT(on.decode(br, 2, ob.data()));
    c.rows(oa.data(), ob.data(), V, decode_equal, label + " batched decode seq 0 step " + std::to_string(s));
    c.rows(oa.data() + V, ob.data() + V, V, decode_equal, label + " batched decode seq 1 step " + std::to_string(s));
    tok = argmax(oa.data(), V);
    t1 = argmax(oa.data() + V, V);
  }
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
