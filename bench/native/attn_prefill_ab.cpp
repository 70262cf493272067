// The LLaVA-7B sample's prefill attention alone (7B shape: 32 / 32 heads x 128, f32 cache in
// 64-token pages as the LLaMA context allocates it), its two chunk calls (n_batch 512 of a
// 628-token prompt: 512 queries at position 0, then 116 at 512 over 628 keys):
//
//   build-bench/attn_prefill_ab [threads 1] [rounds 15] [n_prompt 628] [chunk 512]
//   AB_ONLY=on|off build-bench/attn_prefill_ab ...   (one path alone: for perf record)
//   AB_SHAPE=1b build-bench/attn_prefill_ab ...      (TinyLlama-1.1B: 32 / 4 heads x 64)
//
// Per round, ABBA: the default path, then the one with the switch under A/B off, on the same data
// in one process. AB_SWITCH picks it: prefill_fast (default: attention_detail::set_prefill_fast,
// the tile groups) or causal_skip (set_prefill_causal_skip: the tile groups' diagonal blocks
// without their fully masked parts). Timed: the calling
// thread's CPU time at 1 thread (readable under load), wall at more. Printed: the median / best of
// each, GFLOP/s (4 * head_dim * visible pairs * heads), the ratio off / on, and the largest
// difference of either path's output from ref::attention (double accumulation) on the first call.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "../../base/thread_pool.h"
#include "../../kernels/cpu/attention_internal.h"
#include "../../kernels/cpu/kernels.h"
#include "bench_clock.h"

using namespace emollm;

int main(int argc, char** argv) {
  const int nth = argc > 1 ? std::max(1, std::atoi(argv[1])) : 1;
  const int rounds = argc > 2 ? std::max(1, std::atoi(argv[2])) : 15;
  const int64_t n_prompt = argc > 3 ? std::max(16L, std::atol(argv[3])) : 628;
  const int64_t chunk = argc > 4 ? std::max(16L, std::atol(argv[4])) : 512;
  // AB_SHAPE=1b: TinyLlama-1.1B's 32 query heads over 4 kv heads of 64 (GQA) instead
  const char* shape = std::getenv("AB_SHAPE");
  const bool small = shape && std::strcmp(shape, "1b") == 0;
  const int64_t H = 32, Hkv = small ? 4 : 32, D = small ? 64 : 128, kPage = 64;
  const int64_t ld = H * D, ldkv = Hkv * D, n_pages = (n_prompt + kPage - 1) / kPage;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> q(size_t(n_prompt * ld)), k(size_t(n_pages * kPage * ldkv)), v(k.size());
  for (float& x : q) x = nd(rng);
  for (float& x : k) x = nd(rng);
  for (float& x : v) x = nd(rng);
  // pages in reverse order in memory (a block table, as a paged cache has)
  std::vector<const float*> kb(static_cast<size_t>(n_pages)), vb(static_cast<size_t>(n_pages));
  for (int64_t j = 0; j < n_pages; ++j) {
    kb[size_t(j)] = k.data() + (n_pages - 1 - j) * kPage * ldkv;
    vb[size_t(j)] = v.data() + (n_pages - 1 - j) * kPage * ldkv;
  }
  std::vector<AttentionBatchItem> items;
  double pairs = 0;
  for (int64_t p0 = 0; p0 < n_prompt; p0 += chunk) {
    AttentionBatchItem it;
    it.p.n_q = std::min(chunk, n_prompt - p0);
    it.p.n_kv = p0 + it.p.n_q;
    it.p.n_heads = H;
    it.p.n_kv_heads = Hkv;
    it.p.head_dim = D;
    it.p.ldq = it.p.ldo = ld;
    it.p.ldk = it.p.ldv = ldkv;
    it.p.causal = true;
    it.p.q_pos0 = p0;
    it.p.k_blocks = kb.data();
    it.p.v_blocks = vb.data();
    it.p.kv_block_size = kPage;
    it.q = q.data() + p0 * ld;
    it.k = it.v = nullptr;
    items.push_back(it);
    for (int64_t i = 0; i < it.p.n_q; ++i) pairs += double(p0 + i + 1);
  }
  std::vector<float> out(q.size()), ref(q.size());
  for (size_t i = 0; i < items.size(); ++i) items[i].out = out.data() + (items[i].q - q.data());
  ThreadPool pool(nth);
  const char* sw = std::getenv("AB_SWITCH");
  const bool skip_ab = sw && std::strcmp(sw, "causal_skip") == 0;
  if (sw && !skip_ab && std::strcmp(sw, "prefill_fast") != 0) {
    std::fprintf(stderr, "attn_prefill_ab: unknown AB_SWITCH '%s' (prefill_fast, causal_skip)\n", sw);
    return 2;
  }
  const bool saved = attention_detail::prefill_fast(), saved_skip = attention_detail::prefill_causal_skip();
  auto run = [&](bool on) {
    if (skip_ab) attention_detail::set_prefill_causal_skip(on);
    else attention_detail::set_prefill_fast(on);
    const double w0 = bench::now(), c0 = bench::thread_cpu();
    attention_batch(items.data(), int64_t(items.size()), &pool);
    return nth == 1 ? bench::thread_cpu() - c0 : bench::now() - w0;
  };
  // accuracy: each path against the double reference, per head
  double err[2] = {0, 0};
  {
    std::vector<float> contiguous_k(size_t(n_prompt * ldkv)), contiguous_v(contiguous_k.size());
    for (int64_t j = 0; j < n_prompt; ++j)
      for (int64_t e = 0; e < ldkv; ++e) {
        contiguous_k[size_t(j * ldkv + e)] = kb[size_t(j / kPage)][(j % kPage) * ldkv + e];
        contiguous_v[size_t(j * ldkv + e)] = vb[size_t(j / kPage)][(j % kPage) * ldkv + e];
      }
    for (const AttentionBatchItem& it : items) {
      AttentionParams p1 = it.p;
      p1.n_heads = p1.n_kv_heads = 1;
      p1.k_blocks = p1.v_blocks = nullptr;
      p1.kv_block_size = 0;
      for (int64_t h = 0; h < H; ++h)
        ref::attention(it.q + h * D, contiguous_k.data() + h / (H / Hkv) * D, contiguous_v.data() + h / (H / Hkv) * D,
                       ref.data() + (it.q - q.data()) + h * D, p1);
    }
    std::vector<float> first;
    for (int m = 0; m < 2; ++m) {
      run(m == 0);
      for (size_t i = 0; i < out.size(); ++i) err[m] = std::max(err[m], double(std::fabs(out[i] - ref[i])));
      if (m == 0) first = out;
    }
    size_t differ = 0;
    for (size_t i = 0; i < out.size(); ++i) differ += std::memcmp(&out[i], &first[i], sizeof(float)) != 0;
    std::printf("outputs of the two paths differing in bits: %zu of %zu\n", differ, out.size());
  }
  std::vector<double> t_on, t_off;
  const char* only = std::getenv("AB_ONLY");  // "on" / "off": that path alone (for a profiler)
  if (only) {
    for (int r = 0; r < rounds; ++r) (std::strcmp(only, "on") == 0 ? t_on : t_off).push_back(run(std::strcmp(only, "on") == 0));
    std::printf("%s alone: median %.3f ms best %.3f ms\n", only, 1e3 * bench::median(std::strcmp(only, "on") == 0 ? t_on : t_off),
                1e3 * bench::best(std::strcmp(only, "on") == 0 ? t_on : t_off));
    return 0;
  }
  for (int r = 0; r < rounds; ++r) {
    if (r % 2 == 0) { t_on.push_back(run(true)); t_off.push_back(run(false)); }
    else { t_off.push_back(run(false)); t_on.push_back(run(true)); }
  }
  attention_detail::set_prefill_fast(saved);
  attention_detail::set_prefill_causal_skip(saved_skip);
  std::printf("switch under A/B: %s\n", skip_ab ? "causal_skip" : "prefill_fast");
  const double flops = 4.0 * double(D) * pairs * double(H);
  std::printf("prefill attention, %s, %lld positions in chunks of %lld, %d thread(s), %d rounds (%s)\n",
              small ? "1.1B shape (32 / 4 heads x 64)" : "7B shape (32 x 128)", (long long)n_prompt, (long long)chunk, nth, rounds, nth == 1 ? "thread CPU time" : "wall");
  std::printf("  on : median %.3f ms best %.3f ms  %.1f GFLOP/s (best)  max |err| vs ref %.3g\n", 1e3 * bench::median(t_on),
              1e3 * bench::best(t_on), flops / bench::best(t_on) * 1e-9, err[0]);
  std::printf("  off: median %.3f ms best %.3f ms  %.1f GFLOP/s (best)  max |err| vs ref %.3g\n", 1e3 * bench::median(t_off),
              1e3 * bench::best(t_off), flops / bench::best(t_off) * 1e-9, err[1]);
  std::printf("  off / on: median %.3f best %.3f\n", bench::median(t_off) / bench::median(t_on),
              bench::best(t_off) / bench::best(t_on));
  return 0;
}
