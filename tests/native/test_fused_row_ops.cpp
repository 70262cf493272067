// The fused row ops of the decoder's forward pass (kernels.h add_rmsnorm / rope_pair, Backend::
// add_rmsnorm / rope_pair, LlamaContext with EMOLLM_FUSED_ROW_OPS): they keep the arithmetic of
// the separate ops, so everything here is bit for bit:
//   - add_rmsnorm(x, d, w, y) against add(x, d, x) then rmsnorm(x, w, y): the updated x and y, at
//     every ISA level, with and without w and pool, in place (y == x), rows with ld > n (padding
//     untouched), n around the vector widths and the 512 / 256-element sum chunks;
//   - rope_pair(a, b) against rope(a) then rope(b): both layouts, rot_dim < head_dim, given
//     inv_freq, several tokens, with and without pool, every ISA level;
//   - layernorm on row blocks (EMOLLM_LAYERNORM_ROW_BLOCKS) against the row-by-row path, and
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
#include <random>
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
#include "gguf_out.h"
#include "stories_helpers.h"
#include "testing.h"

using namespace emollm;

namespace {

std::vector<float> randv(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

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
          std::vector<float> x0 = randv(size_t(rows * ld), uint32_t(n * 7 + rows), 2.0f);
          const std::vector<float> d = randv(size_t(rows * ldd), uint32_t(n * 11 + rows));
          const std::vector<float> w = randv(size_t(n), uint32_t(n + 3), 0.5f);
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
          std::vector<float> x0 = randv(size_t(rows * ld), seed, 2.0f);
          for (int64_t r = 0; r < rows; r += 2)  // a large mean on some rows (the mean's rounding correction)
            for (int64_t j = 0; j < n; ++j) x0[size_t(r * ld + j)] += 1e3f;
          const std::vector<float> d0 = randv(size_t(rows * ldd), seed + 1), w = randv(size_t(n), seed + 2, 0.5f),
                                   b = randv(size_t(n), seed + 3, 0.5f);
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
  const std::vector<float> x0 = randv(size_t(rows * n), 11), d = randv(size_t(rows * n), 12),
                           w = randv(size_t(n), 13), b = randv(size_t(n), 14);
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
          std::vector<float> a = randv(size_t(tokens * lda), uint32_t(tokens + variant)), b = randv(size_t(tokens * ldb), 99);
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
    std::vector<float> u = randv(64, 5), v = u;
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
  std::vector<float> x = randv(size_t(rows * n), 1), d = randv(size_t(rows * n), 2), w = randv(size_t(n), 3), y(size_t(rows * n));
  std::vector<float> x2 = x, y2 = y;
  be->add_rmsnorm(x.data(), n, d.data(), n, w.data(), y.data(), n, rows, n, 1e-6f);
  be->add(x2.data(), d.data(), x2.data(), rows * n);
  be->rmsnorm(x2.data(), n, w.data(), y2.data(), n, rows, n, 1e-6f);
  EXPECT(same_bits(x.data(), x2.data(), x.size(), "backend add_rmsnorm x"));
  EXPECT(same_bits(y.data(), y2.data(), y.size(), "backend add_rmsnorm y"));
  // the base class's default: add() and rmsnorm() through the virtuals
  std::vector<float> x3 = randv(size_t(rows * n), 1), y3(size_t(rows * n));
  be->Backend::add_rmsnorm(x3.data(), n, d.data(), n, w.data(), y3.data(), n, rows, n, 1e-6f);
  EXPECT(same_bits(x3.data(), x2.data(), x3.size(), "default add_rmsnorm x"));
  EXPECT(same_bits(y3.data(), y2.data(), y3.size(), "default add_rmsnorm y"));
  RopeParams p;
  p.head_dim = 16;
  std::vector<int32_t> pos = {4, 9};
  std::vector<float> a = randv(2 * 64, 5), b = randv(2 * 32, 6), a2 = a, b2 = b, a3 = a, b3 = b;
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

// A random-weight LLaMA GGUF (llama.cpp's keys; matrices in `wt`, norms f32): 2 layers, E = 128,
// 4 heads of 32 (2 KV heads: GQA), n_ff = 256, vocab 160.
void write_random_llama(const std::string& path, DType wt) {
  const int64_t E = 128, H = 4, Hkv = 2, D = 32, F = 256, V = 160, L = 2;
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
  struct T {
    std::string name;
    int64_t rows, cols;
    DType type;
    std::vector<uint8_t> bytes;
  };
  std::vector<T> ts;
  uint32_t seed = 1;
  auto mat = [&](const std::string& name, int64_t rows, int64_t cols, DType t, float scale) {
    const std::vector<float> f = randv(size_t(rows * cols), seed++, scale);
    const size_t rb = dtype_row_bytes(t, cols);
    std::vector<uint8_t> b(size_t(rows) * rb);
    for (int64_t r = 0; r < rows; ++r) quantize_row(t, f.data() + r * cols, b.data() + size_t(r) * rb, cols);
    ts.push_back({name, rows, cols, t, std::move(b)});
  };
  auto norm = [&](const std::string& name) {
    std::vector<float> f = randv(size_t(E), seed++, 0.1f);
    for (float& v : f) v += 1.0f;
    std::vector<uint8_t> b(size_t(E) * 4);
    std::memcpy(b.data(), f.data(), b.size());
    ts.push_back({name, 1, E, DType::F32, std::move(b)});
  };
  mat("token_embd.weight", V, E, wt, 1.0f);
  for (int64_t l = 0; l < L; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    norm(b + "attn_norm.weight");
    mat(b + "attn_q.weight", H * D, E, wt, 0.1f);
    mat(b + "attn_k.weight", Hkv * D, E, wt, 0.1f);
    mat(b + "attn_v.weight", Hkv * D, E, wt, 0.1f);
    mat(b + "attn_output.weight", E, H * D, wt, 0.1f);
    norm(b + "ffn_norm.weight");
    mat(b + "ffn_gate.weight", F, E, wt, 0.1f);
    mat(b + "ffn_up.weight", F, E, wt, 0.1f);
    mat(b + "ffn_down.weight", E, F, wt, 0.1f);
  }
  norm("output_norm.weight");
  mat("output.weight", V, E, wt, 0.1f);

  auto ggml_type = [](DType t) -> uint32_t {
    switch (t) {
      case DType::F32: return 0;
      case DType::F16: return 1;
      case DType::Q4_0: return 2;
      case DType::Q8_0: return 8;
      case DType::BF16: return 30;
      default: return 0;
    }
  };
  std::vector<uint8_t> out = {'G', 'G', 'U', 'F'};
  auto put = [&](const void* p, size_t n) { out.insert(out.end(), (const uint8_t*)p, (const uint8_t*)p + n); };
  const uint32_t ver = 3;
  const uint64_t nt = ts.size();
  put(&ver, 4);
  put(&nt, 8);
  put(&g.n_kv, 8);
  put(g.kv.data(), g.kv.size());
  uint64_t off = 0;
  for (const T& t : ts) {
    const uint64_t len = t.name.size();
    put(&len, 8);
    put(t.name.data(), len);
    const uint32_t nd = t.rows == 1 ? 1 : 2;
    put(&nd, 4);
    const uint64_t ne0 = uint64_t(t.cols), ne1 = uint64_t(t.rows);
    put(&ne0, 8);
    if (nd == 2) put(&ne1, 8);
    const uint32_t type = ggml_type(t.type);
    put(&type, 4);
    put(&off, 8);
    off += (t.bytes.size() + 31) / 32 * 32;
  }
  while (out.size() % 32) out.push_back(0);
  for (const T& t : ts) {
    put(t.bytes.data(), t.bytes.size());
    while (out.size() % 32) out.push_back(0);
  }
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(out.data()), std::streamsize(out.size()));
}

struct FusedOff {
  FusedOff() { ::setenv("EMOLLM_FUSED_ROW_OPS", "0", 1); }
  ~FusedOff() { ::unsetenv("EMOLLM_FUSED_ROW_OPS"); }
};

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

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
  // prompt of 9 tokens, every row's logits (prefill: M = 9 GEMMs)
  const std::vector<int32_t> prompt = {1, 17, 40, 3, 99, 12, 5, 77, 31};
  std::vector<float> la(prompt.size() * size_t(V)), lb(la.size());
  fused.seq_eval(0, prompt.data(), int64_t(prompt.size()), la.data());
  sep->seq_eval(0, prompt.data(), int64_t(prompt.size()), lb.data());
  EXPECT(same_bits(la.data(), lb.data(), la.size(), label + " prompt"));
  rows += int(prompt.size());
  // greedy decode, one token a step (the decode path: M = 1 GEMVs)
  int32_t tok = argmax(la.data() + (prompt.size() - 1) * size_t(V), V);
  for (int s = 0; s < 12; ++s) {
    const float* a = fused.seq_eval(0, &tok, 1);
    const float* b = sep->seq_eval(0, &tok, 1);
    EXPECT(same_bits(a, b, size_t(V), label + " decode step " + std::to_string(s)));
    EXPECT(argmax(a, V) == argmax(b, V));
    tok = argmax(a, V);
    ++rows;
  }
  // a second sequence, then batched decode steps of both (one forward pass, M = 2)
  const std::vector<int32_t> p1 = {2, 8, 150};
  fused.seq_eval(1, p1.data(), 3);
  sep->seq_eval(1, p1.data(), 3);
  int32_t t1 = 4;
  std::vector<float> oa(2 * size_t(V)), ob(oa.size());
  for (int s = 0; s < 4; ++s) {
    const LlamaBatchRow br[2] = {{0, tok}, {1, t1}};
    EXPECT(fused.decode(br, 2, oa.data()));
    EXPECT(sep->decode(br, 2, ob.data()));
    EXPECT(same_bits(oa.data(), ob.data(), oa.size(), label + " batched decode " + std::to_string(s)));
    tok = argmax(oa.data(), V);
    t1 = argmax(oa.data() + V, V);
    rows += 2;
  }
  // a step whose output rows are not all its rows: 3 tokens of seq 0 (last row only) + 1 of seq 1
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
    write_random_llama(path, t);
    auto m = LlamaModel::load(path);
    EXPECT(m->layers.size() == 2);
    EXPECT(m->layers[0].wq.dtype == t);
    compare_contexts(m, std::string("random ") + dtype_name(t));
    std::remove(path.c_str());
  }
  ::rmdir(dir);
}
