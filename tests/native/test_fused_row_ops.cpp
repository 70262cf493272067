// The fused row ops of the decoder's forward pass (kernels.h add_rmsnorm / rope_pair, Backend::
// add_rmsnorm / rope_pair, LlamaContext with EMOLLM_FUSED_ROW_OPS): they keep the arithmetic of
// the separate ops, so everything here is bit for bit:
//   - add_rmsnorm(x, d, w, y) against add(x, d, x) then rmsnorm(x, w, y): the updated x and y, at
//     every ISA level, with and without w and pool, in place (y == x), rows with ld > n (padding
//     untouched), n around the vector widths and the 512 / 256-element sum chunks;
//   - rope_pair(a, b) against rope(a) then rope(b): both layouts, rot_dim < head_dim, given
//     inv_freq, several tokens, with and without pool, every ISA level;
//   - layernorm on row blocks (set_layernorm_row_blocks) against the row-by-row path, and
//     add_layernorm(x, d, w, b, y) against add(x, d, x) then layernorm(x, w, b, y) on either path:
//     every ISA level, w / b present or not, in place (y == x, y == d), ld > n, 1-3 threads, n
//     around the vector widths and the sum chunks, row counts odd and even (the blocks of 2);
//   - Backend::add_rmsnorm / add_layernorm / rope_pair (CPU and the defaults a device backend
//     inherits);
//   - whole models, a context with the fused ops (default) against one created under
//     EMOLLM_FUSED_ROW_OPS=0 in the same process: prompt logits (all rows), greedy decode
//     (tokens and logits), a batched two-sequence decode() and an eval_batch() whose output rows
//     are not all the rows; on stories260K (../shared) and on random-weight LLaMA GGUFs written
//     here in f32, f16, bf16, q8_0 and q4_0 (q4_0 / q8_0 take the repacked GEMVs).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "base/cpu_features.h"
#include "base/dtype.h"
#include "base/thread_pool.h"
#include "../../kernels/cpu/elementwise_ref.h"
#include "../../kernels/cpu/kernels.h"
#include "../../kernels/cpu/norm_internal.h"
#include "core/backend.h"
#include "model/llama.h"
#include "greedy_decode.h"
#include "random_llama.h"
#include "stories_helpers.h"
#include "testing.h"

using namespace emollm;

namespace {

using emollm_test::normal_floats;

bool same_bits(const float* a, const float* b, size_t n, const std::string& what) {
  for (size_t i = 0; i < n; ++i)
    if (std::memcmp(a + i, b + i, sizeof(float)) != 0) {
      emollm_test::report_failure(__FILE__, __LINE__,
                                  what + ": [" + std::to_string(i) + "] fused " + std::to_string(a[i]) + ", separate ops " +
                                      std::to_string(b[i]));
      return false;
    }
  return true;
}

std::vector<Isa> isa_levels() {
  std::vector<Isa> v;
  for (int i = 0; i <= int(isa_detected()); ++i) v.push_back(Isa(i));
  return v;
}

}  // namespace

TEST(add_rmsnorm_equals_add_then_rmsnorm) {
  ThreadPool pool(2);
  int cases = 0;
  for (Isa isa : isa_levels()) {
    IsaCapScope cap(isa);
    for (int64_t n : {1, 15, 16, 17, 63, 64, 100, 511, 512, 513, 1000, 2048, 4097}) {
      for (int64_t rows : {1, 3, 40}) {
        if (rows == 40 && n < 1000) continue;  // the pool splits only rows of enough work
        for (int variant = 0; variant < 4; ++variant) {
          const bool with_w = variant != 1, in_place = variant == 2, use_pool = variant == 3;
          const int64_t ld = rows > 1 ? n + 5 : n, ldd = rows > 1 ? n + 3 : n;
          std::vector<float> x0 = normal_floats(size_t(rows * ld), uint32_t(n * 7 + rows), 2.0f);
          const std::vector<float> d = normal_floats(size_t(rows * ldd), uint32_t(n * 11 + rows));
          const std::vector<float> w = normal_floats(size_t(n), uint32_t(n + 3), 0.5f);
          std::vector<float> xa = x0, xb = x0, ya(size_t(rows * ld), -7.0f), yb = ya;
          float* y_a = in_place ? xa.data() : ya.data();
          float* y_b = in_place ? xb.data() : yb.data();
          add_rmsnorm(xa.data(), ld, d.data(), ldd, with_w ? w.data() : nullptr, y_a, ld, rows, n, 1e-5f,
                      use_pool ? &pool : nullptr);
          for (int64_t r = 0; r < rows; ++r) add(xb.data() + r * ld, d.data() + r * ldd, xb.data() + r * ld, n, nullptr);
          rmsnorm(xb.data(), ld, with_w ? w.data() : nullptr, y_b, ld, rows, n, 1e-5f, nullptr);
          const std::string what = std::string(isa_name(isa)) + " n=" + std::to_string(n) + " rows=" +
                                   std::to_string(rows) + " variant " + std::to_string(variant);
          EXPECT(same_bits(xa.data(), xb.data(), xa.size(), what + " x"));
          EXPECT(same_bits(ya.data(), yb.data(), ya.size(), what + " y"));
          ++cases;
        }
      }
    }
  }
  EXPECT(cases > 100);
  // the output is the norm of the sum, not of x: a changed d changes y
  std::vector<float> x = {1, 2, 3, 4}, d = {1, 1, 1, 1}, y(4);
  add_rmsnorm(x.data(), 4, d.data(), 4, nullptr, y.data(), 4, 1, 4, 0.0f, nullptr);
  EXPECT(x[0] == 2 && x[3] == 5);
  EXPECT_NEAR(y[3], 5.0 / std::sqrt((4.0 + 9 + 16 + 25) / 4.0), 1e-6);
}

namespace {
// Restores the layernorm path switch on scope exit.
struct RowBlocksScope {
  bool saved = layernorm_row_blocks();
  explicit RowBlocksScope(bool on) { set_layernorm_row_blocks(on); }
  ~RowBlocksScope() { set_layernorm_row_blocks(saved); }
};
}  // namespace

TEST(layernorm_row_blocks_and_add_layernorm_same_bits) {
  ThreadPool pool2(2), pool3(3);
  int cases = 0, differ = 0;
  for (Isa isa : isa_levels()) {
    IsaCapScope cap(isa);
    for (int64_t n : {1, 7, 8, 15, 16, 17, 63, 64, 65, 100, 255, 256, 257, 511, 512, 513, 1024, 1100}) {
      for (int64_t rows : {1, 2, 3, 5, 40}) {
        if (rows == 40 && n < 500) continue;  // the pool splits only rows of enough work
        for (int variant = 0; variant < 6; ++variant) {
          // 0: w and b; 1: neither; 2: w only, y == x; 3: b only, y == d; 4: 2 threads; 5: 3 threads
          const bool with_w = variant != 1 && variant != 3, with_b = variant != 1 && variant != 2;
          ThreadPool* pool = variant == 4 ? &pool2 : variant == 5 ? &pool3 : nullptr;
          const int64_t ld = rows > 1 ? n + 5 : n, ldd = variant == 3 ? ld : rows > 1 ? n + 3 : n;
          const uint32_t seed = uint32_t(n * 13 + rows * 3 + variant);
          std::vector<float> x0 = normal_floats(size_t(rows * ld), seed, 2.0f);
          for (int64_t r = 0; r < rows; r += 2)  // a large mean on some rows (the mean's rounding correction)
            for (int64_t j = 0; j < n; ++j) x0[size_t(r * ld + j)] += 1e3f;
          const std::vector<float> d0 = normal_floats(size_t(rows * ldd), seed + 1), w = normal_floats(size_t(n), seed + 2, 0.5f),
                                   b = normal_floats(size_t(n), seed + 3, 0.5f);
          const float* wp = with_w ? w.data() : nullptr;
          const float* bp = with_b ? b.data() : nullptr;
          const std::string what = std::string(isa_name(isa)) + " n=" + std::to_string(n) + " rows=" +
                                   std::to_string(rows) + " variant " + std::to_string(variant);
          // the reference: add() row by row (the padding stays), then layernorm() row by row
          std::vector<float> xr = x0, dr = d0, yr(size_t(rows * ld), -7.0f);
          float* y_r = variant == 2 ? xr.data() : variant == 3 ? dr.data() : yr.data();
          std::vector<float> yln(size_t(rows * ld), -7.0f);
          {
            RowBlocksScope off(false);
            layernorm(x0.data(), ld, wp, bp, yln.data(), ld, rows, n, 1e-5f, nullptr);
            for (int64_t r = 0; r < rows; ++r) add(xr.data() + r * ld, dr.data() + r * ldd, xr.data() + r * ld, n, nullptr);
            layernorm(xr.data(), ld, wp, bp, y_r, ld, rows, n, 1e-5f, nullptr);
          }
          for (bool blocks : {false, true}) {
            RowBlocksScope sw(blocks);
            const std::string w2 = what + (blocks ? " blocks" : " rows");
            // layernorm alone (into y; in place for variant 2)
            std::vector<float> xl = x0, yl(size_t(rows * ld), -7.0f);
            float* y_l = variant == 2 ? xl.data() : yl.data();
            layernorm(xl.data(), ld, wp, bp, y_l, ld, rows, n, 1e-5f, pool);
            for (int64_t r = 0; r < rows; ++r)  // rows only: in place, y's padding is x's
              EXPECT(same_bits(y_l + r * ld, yln.data() + r * ld, size_t(n), w2 + " layernorm row " + std::to_string(r)));
            if (variant != 2) EXPECT(same_bits(yl.data(), yln.data(), yln.size(), w2 + " layernorm padding"));
            // add + layernorm
            std::vector<float> xa = x0, da = d0, ya(size_t(rows * ld), -7.0f);
            float* y_a = variant == 2 ? xa.data() : variant == 3 ? da.data() : ya.data();
            add_layernorm(xa.data(), ld, da.data(), ldd, wp, bp, y_a, ld, rows, n, 1e-5f, pool);
            EXPECT(same_bits(xa.data(), xr.data(), xa.size(), w2 + " add_layernorm x"));
            EXPECT(same_bits(y_a, y_r, yr.size(), w2 + " add_layernorm y"));
            if (variant != 3) EXPECT(same_bits(da.data(), d0.data(), da.size(), w2 + " add_layernorm d untouched"));
            ++cases;
          }
          if (std::memcmp(xr.data(), x0.data(), x0.size() * sizeof(float)) != 0) ++differ;
        }
      }
    }
  }
  EXPECT(cases > 500);
  EXPECT(differ > 100);  // the add really changed x
  // the output is the norm of the sum: 1, 2, 3 + 1 each -> mean 3, var 2/3
  for (bool blocks : {false, true}) {
    RowBlocksScope sw(blocks);
    std::vector<float> x = {1, 2, 3}, d = {1, 1, 1}, y(3);
    add_layernorm(x.data(), 3, d.data(), 3, nullptr, nullptr, y.data(), 3, 1, 3, 0.0f, nullptr);
    EXPECT(x[0] == 2 && x[2] == 4);
    EXPECT_NEAR(y[2], 1.0 / std::sqrt(2.0 / 3.0), 1e-6);
  }
}

TEST(backend_add_layernorm) {
  // the CPU backend's fused op on both paths, and the default (what the emulated device and CUDA inherit)
  auto be = make_backend(BackendOptions{});
  const int64_t rows = 5, n = 96;
  const std::vector<float> x0 = normal_floats(size_t(rows * n), 11), d = normal_floats(size_t(rows * n), 12),
                           w = normal_floats(size_t(n), 13), b = normal_floats(size_t(n), 14);
  std::vector<float> x2 = x0, y2(size_t(rows * n));
  be->add(x2.data(), d.data(), x2.data(), rows * n);
  be->layernorm(x2.data(), n, w.data(), b.data(), y2.data(), n, rows, n, 1e-5f);
  for (bool blocks : {false, true}) {
    RowBlocksScope sw(blocks);
    std::vector<float> x = x0, y(size_t(rows * n));
    be->add_layernorm(x.data(), n, d.data(), n, w.data(), b.data(), y.data(), n, rows, n, 1e-5f);
    EXPECT(same_bits(x.data(), x2.data(), x.size(), "backend add_layernorm x"));
    EXPECT(same_bits(y.data(), y2.data(), y.size(), "backend add_layernorm y"));
    std::vector<float> x3 = x0, dd = d;  // the default, with y == d as the CLIP tower calls it
    be->Backend::add_layernorm(x3.data(), n, dd.data(), n, w.data(), b.data(), dd.data(), n, rows, n, 1e-5f);
    EXPECT(same_bits(x3.data(), x2.data(), x3.size(), "default add_layernorm x"));
    EXPECT(same_bits(dd.data(), y2.data(), dd.size(), "default add_layernorm y == d"));
  }
}

TEST(rope_pair_equals_two_ropes) {
  ThreadPool pool(2);
  std::vector<float> inv(16);
  for (size_t i = 0; i < inv.size(); ++i) inv[i] = 1.0f / float(1 + 3 * i);
  int cases = 0;
  for (Isa isa : isa_levels()) {
    IsaCapScope cap(isa);
    for (RopeLayout layout : {RopeLayout::RotateHalf, RopeLayout::Interleaved}) {
      for (int variant = 0; variant < 4; ++variant) {
        RopeParams p;
        p.head_dim = variant == 3 ? 32 : 64;
        p.rot_dim = variant == 1 ? 32 : 0;  // partial rotation: the rest untouched
        p.theta = variant == 2 ? 500000.0f : 10000.0f;
        p.freq_scale = variant == 2 ? 0.25f : 1.0f;
        p.inv_freq = variant == 3 ? inv.data() : nullptr;
        p.layout = layout;
        for (int64_t tokens : {1, 5, 300}) {
          const int64_t ha = 8, hb = 2, lda = ha * p.head_dim + 3, ldb = hb * p.head_dim + 1;
          std::vector<int32_t> pos(static_cast<size_t>(tokens));
          for (int64_t t = 0; t < tokens; ++t) pos[size_t(t)] = int32_t(t * 37 + variant * 1000);
          std::vector<float> a = normal_floats(size_t(tokens * lda), uint32_t(tokens + variant));
          std::vector<float> b = normal_floats(size_t(tokens * ldb), 99);
          std::vector<float> a2 = a, b2 = b;
          ThreadPool* pl = tokens == 300 ? &pool : nullptr;
          rope_pair(a.data(), lda, ha, b.data(), ldb, hb, tokens, pos.data(), p, pl);
          rope(a2.data(), lda, tokens, ha, pos.data(), p, pl);
          rope(b2.data(), ldb, tokens, hb, pos.data(), p, pl);
          const std::string what = std::string(isa_name(isa)) + " layout " + std::to_string(int(layout)) + " variant " +
                                   std::to_string(variant) + " tokens " + std::to_string(tokens);
          EXPECT(same_bits(a.data(), a2.data(), a.size(), what + " a"));
          EXPECT(same_bits(b.data(), b2.data(), b.size(), what + " b"));
          ++cases;
        }
      }
    }
  }
  EXPECT(cases >= 24);
  // the inv_freq kept per thread follows theta: after a call at another theta, the vector path
  // agrees with the reference (which computes inv_freq afresh) at the new theta
  RopeParams p;
  p.head_dim = 64;
  const int32_t pos = 7;
  for (float theta : {10000.0f, 2.0f, 10000.0f}) {
    p.theta = theta;
    std::vector<float> u = normal_floats(64, 5), v = u;
    rope(u.data(), 64, 1, 1, &pos, p, nullptr);
    ref::rope(v.data(), 64, 1, 1, &pos, p);
    float worst = 0;
    for (int i = 0; i < 64; ++i) worst = std::max(worst, std::fabs(u[size_t(i)] - v[size_t(i)]));
    EXPECT(worst <= 2e-6f);
  }
}

TEST(backend_add_rmsnorm_and_rope_pair) {
  // the CPU backend's fused ops and the defaults (what the emulated device and CUDA inherit)
  auto be = make_backend(BackendOptions{});
  const int64_t rows = 3, n = 96;
  std::vector<float> x = normal_floats(size_t(rows * n), 1), d = normal_floats(size_t(rows * n), 2);
  std::vector<float> w = normal_floats(size_t(n), 3), y(size_t(rows * n));
  std::vector<float> x2 = x, y2 = y;
  be->add_rmsnorm(x.data(), n, d.data(), n, w.data(), y.data(), n, rows, n, 1e-6f);
  be->add(x2.data(), d.data(), x2.data(), rows * n);
  be->rmsnorm(x2.data(), n, w.data(), y2.data(), n, rows, n, 1e-6f);
  EXPECT(same_bits(x.data(), x2.data(), x.size(), "backend add_rmsnorm x"));
  EXPECT(same_bits(y.data(), y2.data(), y.size(), "backend add_rmsnorm y"));
  // the base class's default: add() and rmsnorm() through the virtuals
  std::vector<float> x3 = normal_floats(size_t(rows * n), 1), y3(size_t(rows * n));
  be->Backend::add_rmsnorm(x3.data(), n, d.data(), n, w.data(), y3.data(), n, rows, n, 1e-6f);
  EXPECT(same_bits(x3.data(), x2.data(), x3.size(), "default add_rmsnorm x"));
  EXPECT(same_bits(y3.data(), y2.data(), y3.size(), "default add_rmsnorm y"));
  RopeParams p;
  p.head_dim = 16;
  std::vector<int32_t> pos = {4, 9};
  std::vector<float> a = normal_floats(2 * 64, 5), b = normal_floats(2 * 32, 6), a2 = a, b2 = b, a3 = a, b3 = b;
  be->rope_pair(a.data(), 64, 4, b.data(), 32, 2, 2, pos.data(), p);
  be->Backend::rope_pair(a3.data(), 64, 4, b3.data(), 32, 2, 2, pos.data(), p);
  be->rope(a2.data(), 64, 2, 4, pos.data(), p);
  be->rope(b2.data(), 32, 2, 2, pos.data(), p);
  EXPECT(same_bits(a.data(), a2.data(), a.size(), "backend rope_pair a"));
  EXPECT(same_bits(b.data(), b2.data(), b.size(), "backend rope_pair b"));
  EXPECT(same_bits(a3.data(), a2.data(), a.size(), "default rope_pair a"));
  EXPECT(same_bits(b3.data(), b2.data(), b.size(), "default rope_pair b"));
}

namespace {

struct FusedOff {
  FusedOff() { ::setenv("EMOLLM_FUSED_ROW_OPS", "0", 1); }
  ~FusedOff() { ::unsetenv("EMOLLM_FUSED_ROW_OPS"); }
};

// The same script on two contexts of `m`, fused (default) and EMOLLM_FUSED_ROW_OPS=0: every
// logit must have the same bits. Returns the number of logit rows compared.
int compare_contexts(const std::shared_ptr<LlamaModel>& m, const std::string& label) {
  LlamaContextOptions o;
  o.n_ctx = 96;
  o.n_seq = 2;
  o.n_batch = 32;
  LlamaContext fused(m, o);
  std::unique_ptr<LlamaContext> sep;
  {
    FusedOff off;
    sep = std::make_unique<LlamaContext>(m, o);
  }
  const int64_t V = fused.n_vocab();
  int rows = 0;
  // prompt of 9 tokens, every row's logits (prefill: M = 9 GEMMs); greedy decode, one token a
  // step (the decode path: M = 1 GEMVs); a second sequence, then batched decode steps of both
  // (one forward pass, M = 2)
  emollm_test::PairedScript script;
  script.prompt = {1, 17, 40, 3, 99, 12, 5, 77, 31};
  script.decode_steps = 12;
  script.prompt1 = {2, 8, 150};
  script.first_t1 = 4;
  script.batched_steps = 4;
  const auto compare = [&](const float* a, const float* b, int64_t n, emollm_test::PairedStep step, const std::string& what) {
    EXPECT(same_bits(a, b, size_t(n), what));
    if (step == emollm_test::PairedStep::Decode) EXPECT(emollm_test::argmax(a, V) == emollm_test::argmax(b, V));
    rows += int(n / V);
  };
  const emollm_test::PairedEnd end = emollm_test::paired_decode_script(fused, *sep, script, label, compare);
  const int32_t tok = end.tok, t1 = end.t1;
  // a step whose output rows are not all its rows: 3 tokens of seq 0 (last row only) + 1 of seq 1
  std::vector<float> oa(2 * size_t(V)), ob(oa.size());
  const int32_t three[3] = {tok, 6, 7};
  LlamaBatchSegment segs[2];
  segs[0].seq = 0;
  segs[0].tokens = three;
  segs[0].n = 3;
  segs[1].seq = 1;
  segs[1].tokens = &t1;
  segs[1].n = 1;
  EXPECT(fused.eval_batch(segs, 2, oa.data()));
  EXPECT(sep->eval_batch(segs, 2, ob.data()));
  EXPECT(same_bits(oa.data(), ob.data(), oa.size(), label + " mixed segments"));
  rows += 2;
  return rows;
}

}  // namespace

TEST(fused_row_ops_bit_equal_stories260K) {
  if (emollm_test::stories_gguf().empty()) return;
  const int rows = compare_contexts(emollm_test::stories_model(), "stories260K gguf");
  EXPECT(rows == 9 + 12 + 8 + 2);
}

TEST(fused_row_ops_bit_equal_random_weights_all_dtypes) {
  char tmpl[] = "/tmp/emollm_fused_XXXXXX";
  const char* dir = mkdtemp(tmpl);
  EXPECT(dir != nullptr);
  if (!dir) return;
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0}) {
    const std::string path = std::string(dir) + "/random-" + dtype_name(t) + ".gguf";
    emollm_test::RandomLlamaShape shape;  // 2 layers, E = 128, 4 heads of 32 (2 KV heads: GQA), n_ff = 256, vocab 160
    shape.weights = t;                     // norms f32
    emollm_test::write_random_llama(path, shape);
    auto m = LlamaModel::load(path);
    EXPECT(m->layers.size() == 2);
    EXPECT(m->layers[0].wq.dtype == t);
    compare_contexts(m, std::string("random ") + dtype_name(t));
    std::remove(path.c_str());
  }
  ::rmdir(dir);
}
