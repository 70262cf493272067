// The forward pass's per-token work outside the weight products (model/llama.h kv_direct_write,
// norm_prefetch): neither changes the arithmetic, so a context with each path on must give every
// logit with the same bits as with it off, and each path must actually run:
//   - KV rows written in place: the k / v projections write into the cache block (RoPE rotates k
//     there) instead of into scratch rows and a copy; taken by a pass of one segment whose new
//     positions lie in one block of an f32 cache (a decode step; a prompt inside one block), not
//     by a prompt across a block edge, a batched multi-sequence step or a half cache;
//   - the norm prefetch (Backend::prefetch of the next norm's weights and the residual row before
//     o's and down's GEMVs in a decode step);
//   - the token embedding table's pages mapped at load (set_embd_populate): the table's bytes
//     counted as populated and every page of it present, the logits the same as without.
// The same script (a prompt with every row's logits, greedy decode across block edges, a second
// sequence, batched steps of both) runs on two contexts of one model, one with the switches on
// and one with them off, switched before each call; on stories260K (../shared) and random-weight
// GGUFs (f32, q4_0, q8_0: the repacked GEMVs), with 1 and 2 threads, f32 and f16 caches.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "base/dtype.h"
#include "model/llama.h"
#include "page_map.h"
#include "random_llama.h"
#include "stories_helpers.h"
#include "testing.h"

using namespace emollm;

namespace {

struct Switches {
  bool kv, prefetch;
};
void set_switches(Switches s) {
  set_kv_direct_write(s.kv);
  set_norm_prefetch(s.prefetch);
}
// Restores both switches to on (their default) at scope end.
struct SwitchesScope {
  ~SwitchesScope() { set_switches({true, true}); }
};

int argmax(const float* v, int64_t n) {
  int64_t b = 0;
  for (int64_t i = 1; i < n; ++i)
    if (v[i] > v[b]) b = i;
  return int(b);
}

// Runs the script on `on` (with `sw`) and `off` (both switches off), comparing every logit's bits.
// Returns the number of mismatching floats (0 expected) and counts the rows compared.
int64_t compare_paths(LlamaContext& on, LlamaContext& off, Switches sw, int prompt_len, int steps, int* rows) {
  const int64_t V = on.n_vocab();
  int64_t bad = 0;
  auto cmp = [&](const float* a, const float* b, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
      if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) ++bad;
    *rows += int(n / V);
  };
  std::vector<int32_t> prompt;
  for (int i = 0; i < prompt_len; ++i) prompt.push_back(int32_t(1 + (37 * i + 11) % (V - 1)));
  std::vector<float> la(size_t(prompt_len * V)), lb(la.size());
  set_switches(sw);
  on.eval(prompt.data(), prompt_len, la.data());
  set_switches({false, false});
  off.eval(prompt.data(), prompt_len, lb.data());
  cmp(la.data(), lb.data(), prompt_len * V);
  int32_t tok = argmax(la.data() + (prompt_len - 1) * V, V);
  for (int s = 0; s < steps; ++s) {
    set_switches(sw);
    const float* a = on.eval(&tok, 1);
    std::vector<float> ca(a, a + V);
    set_switches({false, false});
    const float* b = off.eval(&tok, 1);
    cmp(ca.data(), b, V);
    tok = argmax(ca.data(), V);
  }
  // a second sequence, then batched steps of both (two segments: the scratch rows and copies)
  const int32_t p1[3] = {2, 8, 15};
  set_switches(sw);
  on.seq_eval(1, p1, 3);
  set_switches({false, false});
  off.seq_eval(1, p1, 3);
  int32_t toks[2] = {tok, 5};
  for (int s = 0; s < 3; ++s) {
    const LlamaBatchRow br[2] = {{0, toks[0]}, {1, toks[1]}};
    std::vector<float> oa(size_t(2 * V)), ob(oa.size());
    set_switches(sw);
    EXPECT(on.decode(br, 2, oa.data()));
    set_switches({false, false});
    EXPECT(off.decode(br, 2, ob.data()));
    cmp(oa.data(), ob.data(), 2 * V);
    toks[0] = argmax(oa.data(), V);
    toks[1] = argmax(oa.data() + V, V);
  }
  return bad;
}

// Every switch combination on `m` with `opts`: same bits, and the paths counted where they must run.
void check_model(const std::shared_ptr<LlamaModel>& m, LlamaContextOptions opts, const std::string& label) {
  SwitchesScope restore;
  for (Switches sw : {Switches{true, false}, Switches{false, true}, Switches{true, true}}) {
    // prompt inside one block (9 of 16: the direct path in the prefill too), then across one (20)
    for (int prompt_len : {9, 20}) {
      LlamaContext on(m, opts), off(m, opts);
      const uint64_t kv0 = kv_direct_passes(), pf0 = norm_prefetch_calls();
      int rows = 0;
      const int steps = 14;  // decode crosses the block edge at 16 (and 32)
      const int64_t bad = compare_paths(on, off, sw, prompt_len, steps, &rows);
      const std::string what = label + " kv " + std::to_string(sw.kv) + " prefetch " + std::to_string(sw.prefetch) +
                               " prompt " + std::to_string(prompt_len);
      if (bad) std::fprintf(stderr, "%s: %lld logits differ\n", what.c_str(), (long long)bad);
      EXPECT(bad == 0);
      EXPECT(rows == prompt_len + steps + 3 * 2);
      const uint64_t kv = kv_direct_passes() - kv0, pf = norm_prefetch_calls() - pf0;
      // direct passes: every single-sequence decode step (the prompt too when it fits one
      // block; seq 1's 3-token prompt at position 0); none in batched steps or with an f16 cache
      const uint64_t want_kv =
          opts.kv_type == DType::F32 && sw.kv ? uint64_t(steps + 1 + (prompt_len <= opts.kv_block_size ? 1 : 0)) : 0;
      if (kv != want_kv) std::fprintf(stderr, "%s: %llu direct passes, want %llu\n", what.c_str(), (unsigned long long)kv, (unsigned long long)want_kv);
      EXPECT(kv == want_kv);
      // 4 prefetches a layer in each one-row pass (the decode steps)
      const uint64_t want_pf = sw.prefetch ? uint64_t(steps) * uint64_t(m->hparams().n_layer) * 4 : 0;
      EXPECT(pf == want_pf);
    }
  }
}

LlamaContextOptions small_opts(DType kv) {
  LlamaContextOptions o;
  o.n_ctx = 64;
  o.n_seq = 2;
  o.n_batch = 32;
  o.kv_block_size = 16;
  o.kv_type = kv;
  return o;
}

}  // namespace

TEST(decode_overheads_same_bits_stories260K) {
  if (emollm_test::stories_gguf().empty()) return;
  check_model(emollm_test::stories_model(), small_opts(DType::F32), "stories260K");
  check_model(emollm_test::stories_model(), small_opts(DType::F16), "stories260K f16 cache");
}

TEST(decode_overheads_same_bits_random_weights) {
  char tmpl[] = "/tmp/emollm_overheads_XXXXXX";
  const char* dir = mkdtemp(tmpl);
  EXPECT(dir != nullptr);
  if (!dir) return;
  for (DType t : {DType::F32, DType::Q8_0, DType::Q4_0}) {
    const std::string path = std::string(dir) + "/random-" + dtype_name(t) + ".gguf";
    emollm_test::RandomLlamaShape shape;  // 2 layers, E = 128, GQA 4 / 2 heads of 32, n_ff = 256, vocab 160
    shape.weights = t;
    emollm_test::write_random_llama(path, shape);
    for (int threads : {1, 2}) {
      LlamaLoadOptions lo;
      lo.threads = threads;
      auto m = LlamaModel::load(path, lo);
      EXPECT(m->layers[0].wq.dtype == t);
      check_model(m, small_opts(DType::F32), std::string("random ") + dtype_name(t) + " threads " + std::to_string(threads));
    }
    std::remove(path.c_str());
  }
  ::rmdir(dir);
}

TEST(embd_populate_maps_the_table_same_logits) {
  char tmpl[] = "/tmp/emollm_embd_XXXXXX";
  const char* dir = mkdtemp(tmpl);
  EXPECT(dir != nullptr);
  if (!dir) return;
  struct Restore {
    ~Restore() { set_embd_populate(true); }
  } restore;
  for (DType t : {DType::F32, DType::Q4_0}) {
    const std::string path = std::string(dir) + "/random-" + dtype_name(t) + ".gguf";
    emollm_test::RandomLlamaShape shape;
    shape.weights = t;
    shape.n_vocab = 4096;  // a table of many pages (f32: 512, q4_0: 72 KiB a 128-wide row set)
    emollm_test::write_random_llama(path, shape);
    std::vector<float> logits[2];
    for (int on : {0, 1}) {
      set_embd_populate(on != 0);
      const uint64_t b0 = embd_populated_bytes();
      auto m = LlamaModel::load(path, LlamaLoadOptions{});
      const size_t bytes = size_t(m->tok_embd.rows) * dtype_row_bytes(m->tok_embd.dtype, m->tok_embd.cols);
      EXPECT(m->tok_embd.dtype == t);
      EXPECT(embd_populated_bytes() - b0 == (on ? bytes : 0));
      if (on) {
        const size_t mapped = emollm_test::mapped_pages(m->tok_embd.data, bytes);
        const size_t pages = emollm_test::pages_spanned(m->tok_embd.data, bytes);
        if (mapped != size_t(-1) && mapped != pages)  // size_t(-1): pagemap unreadable here, nothing to check
          std::fprintf(stderr, "%s: %zu of %zu pages of the table not mapped\n", dtype_name(t), pages - mapped, pages);
        EXPECT(mapped == size_t(-1) || mapped == pages);
      }
      LlamaContextOptions o;
      o.n_ctx = 32;
      LlamaContext ctx(m, o);
      const int32_t prompt[5] = {7, 4000, 123, 2048, 9};
      const float* l = ctx.eval(prompt, 5);
      logits[on].assign(l, l + ctx.n_vocab());
      int32_t tok = 3001;
      for (int s = 0; s < 4; ++s) {
        l = ctx.eval(&tok, 1);
        logits[on].insert(logits[on].end(), l, l + ctx.n_vocab());
        tok = int32_t((tok * 7 + 13) % 4096);
      }
    }
    EXPECT(logits[0].size() == logits[1].size() &&
           std::memcmp(logits[0].data(), logits[1].data(), logits[0].size() * sizeof(float)) == 0);
    std::remove(path.c_str());
  }
  ::rmdir(dir);
}
