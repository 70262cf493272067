// A decode step's repacked q4_0 / q8_0 GEMVs in the decoder's order, outside the model:
//   per layer: q+k+v (one gemv_repacked_multi), a gap standing for rope + attention, o, gate+up
//   (one multi call), down; then the output matrix
// on random weights of TinyLlama-1.1B's (or another given) shapes, each matrix in its own
// 2 MiB-page buffer as the CPU backend keeps them, so every call reads its weights from memory as in
// a real decode step (a layer's matrices are used once a step). Per op: the median time of a call
// and its GB/s. With --ab SWITCH two variants (switch off / on) alternate layer by layer (layer l of
// step s runs variant (s + l) % 2), so both see the same load: the way to A/B a decode-path change
// on a machine other work shares (the 2-vCPU Zen 5 VM these benchmarks run on). Timings only; the
// bits of each switch are checked by the native tests.
//
//   build-bench/bench_decode_sequence [--threads N] [--steps N] [--dtype q4_0|q8_0] [--layers N]
//       [--shape 1.1b|7b] [--gap-us U] [--gap fma|pause|fma-trickle|fma-prefetch-o]
//       [--ab prefetch-o|even-claims|qkv-one] [--pf-kib K] [--cpu]
// (--cpu at 1 thread: each call timed by the thread's CPU time, readable on a loaded machine;
// --ab qkv-one: q+k+v as one matrix of their rows, one gemv_repacked, against the three outputs of
// gemv_repacked_multi (the model's call): what the multi-output dispatch costs a small layer;
// --ab even-claims: q4_0's dispatch claiming whole pairs of super-groups, set_gemv_even_claims, off / on;
// --ab prefetch-o: the --gap kind against fma-prefetch-o, alternated per layer; --pf-kib: fma-prefetch-o prefetches at most
// K KiB of a thread's part, 0 = all of it)
//
// --gap: what the threads do between q/k/v and o (the attention's place): `fma` AVX-512 FMAs only
// (compute, no memory traffic), `pause` a pause loop, `fma-trickle` FMAs plus one 64-byte read
// from a 256 MiB buffer every ~100 FMAs (~2-3 GB/s: memory kept busy, as a decode attention reading
// its KV cache does), `fma-prefetch-o` FMAs with o's records prefetched meanwhile (each thread a
// share, 16 lines per ~100 cycles: what a prefetch hook inside decode attention could do). Found with it (session 13, 1 thread, load ~11): after >= 50 us without memory
// traffic (fma or pause) the next GEMV (o, 2.4 MB) took ~30 us longer (102-108 us against 70-73
// after a 5-20 us gap or none); with the trickle 80 us. See bench/README.md.
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "../../base/quant_formats.h"
#include "../../base/thread_pool.h"
#include "../../kernels/cpu/gemm_internal.h"
#include "../../kernels/cpu/kernels.h"
#include "bench_clock.h"

using namespace emollm;

namespace {

using bench::now;

void* huge_buffer(size_t bytes) {
  const size_t h = size_t(2) << 20;
  bytes = (bytes + h - 1) / h * h;
  void* p = std::aligned_alloc(h, bytes);
  if (!p) {
    std::fprintf(stderr, "out of memory\n");
    std::exit(1);
  }
#if defined(MADV_HUGEPAGE)
  (void)madvise(p, bytes, MADV_HUGEPAGE);
#endif
  std::memset(p, 0, bytes);
  return p;
}

struct Matrix {
  void* W;
  int64_t N;
  size_t bytes;
};

// Random quants, fp16 scales in [2^-7, 2^-6): any values do for timing.
Matrix make_matrix(DType t, int64_t N, int64_t K, ThreadPool* pool, std::mt19937& rng) {
  const size_t rb = dtype_row_bytes(t, K), bs = t == DType::Q4_0 ? sizeof(BlockQ4_0) : sizeof(BlockQ8_0);
  std::vector<uint8_t> raw(size_t(N) * rb);
  for (auto& c : raw) c = uint8_t(rng());
  for (size_t o = 0; o < raw.size(); o += bs) {
    const uint16_t h = uint16_t(0x2000 | (rng() & 0x3ff));
    std::memcpy(&raw[o], &h, 2);
  }
  const size_t bytes = quant_repack_bytes(t, N, K);
  void* out = huge_buffer(bytes);
  quant_repack(raw.data(), t, N, K, out, pool);
  return {out, N, bytes};
}

enum class Gap { Fma, Pause, FmaTrickle, FmaPrefetchO };

#if defined(__x86_64__)
// pf / pf_bytes (FmaPrefetchO): this thread's share of the next GEMV's weights, prefetched
// 16 lines per 200 FMAs (~100 cycles) until done.
__attribute__((target("avx512f"))) void gap_work(double us, Gap kind, const uint8_t* pf = nullptr, size_t pf_bytes = 0) {
  const double t0 = now();
  if (kind == Gap::Pause) {
    while ((now() - t0) * 1e6 < us) _mm_pause();
    return;
  }
  static const size_t kTrickle = size_t(256) << 20;
  static uint8_t* big = kind == Gap::FmaTrickle ? static_cast<uint8_t*>(huge_buffer(kTrickle)) : nullptr;
  thread_local size_t pos = size_t(std::rand() % 1024) << 16;
  const __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.9999f);
  __m512 c0 = a, c1 = a, c2 = a, c3 = a;
  unsigned sum = 0;
  while ((now() - t0) * 1e6 < us)
    for (int i = 0; i < 50; ++i) {
      c0 = _mm512_fmadd_ps(c0, b, a), c1 = _mm512_fmadd_ps(c1, b, a);
      c2 = _mm512_fmadd_ps(c2, b, a), c3 = _mm512_fmadd_ps(c3, b, a);
      if (big) sum += big[pos], pos = (pos + 64 * 33) % kTrickle;
      if (i == 0 && pf_bytes)
        for (int j = 0; j < 16 && pf_bytes; ++j, pf += 64, pf_bytes -= std::min<size_t>(64, pf_bytes))
          _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T0);
    }
  alignas(64) float f[16];
  _mm512_store_ps(f, _mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)));
  volatile float sink = f[0] + float(sum);
  (void)sink;
}
#else
void gap_work(double us, Gap, const uint8_t* = nullptr, size_t = 0) {
  const double t0 = now();
  while ((now() - t0) * 1e6 < us) {
  }
}
#endif

[[noreturn]] void usage(int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: bench_decode_sequence [--threads N] [--steps N] [--dtype q4_0|q8_0] [--layers N] [--shape 1.1b|7b]\n"
               "                             [--gap-us U] [--gap fma|pause|fma-trickle|fma-prefetch-o]\n"
               "                             [--ab prefetch-o|even-claims|qkv-one] [--pf-kib K] [--cpu]\n");
  std::exit(code);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, steps = 20, layers = -1, pf_kib = 0;
  double gap_us = 50;
  Gap gap = Gap::Fma;
  DType t = DType::Q4_0;
  std::string shape = "1.1b", ab;
  bool cpu = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(2);
      return argv[++i];
    };
    if (a == "-h" || a == "--help") usage(0);
    else if (a == "--threads") threads = std::atoi(val().c_str());
    else if (a == "--steps") steps = std::atoi(val().c_str());
    else if (a == "--layers") layers = std::atoi(val().c_str());
    else if (a == "--gap-us") gap_us = std::atof(val().c_str());
    else if (a == "--pf-kib") pf_kib = std::atoi(val().c_str());
    else if (a == "--shape") shape = val();
    else if (a == "--ab") ab = val();
    else if (a == "--cpu") cpu = true;
    else if (a == "--dtype") {
      const std::string v = val();
      if (v == "q8_0") t = DType::Q8_0;
      else if (v != "q4_0") usage(2);
    } else if (a == "--gap") {
      const std::string v = val();
      gap = v == "pause"         ? Gap::Pause
            : v == "fma-trickle" ? Gap::FmaTrickle
            : v == "fma-prefetch-o" ? Gap::FmaPrefetchO
            : v == "fma"         ? Gap::Fma
                                 : (usage(2), Gap::Fma);
    } else {
      usage(2);
    }
  }
  if (!ab.empty() && ab != "prefetch-o" && ab != "even-claims" && ab != "qkv-one") usage(2);
  const bool big = shape == "7b";
  const int64_t D = big ? 4096 : 2048, F = big ? 11008 : 5632, KV = big ? 4096 : 256, V = 32000;
  const int L = layers > 0 ? layers : big ? 32 : 22;
  const int nvar = ab.empty() ? 1 : 2;
  // prefetch-o: the gap kind alternates (below); even-claims: q4_0's claims of whole super-group pairs
  // (gemm_detail::set_gemv_even_claims) on in variant 1
  auto set_variant = [&](int v) {
    if (ab == "even-claims") gemm_detail::set_gemv_even_claims(v == 1);
  };

  ThreadPool pool(threads);
  // --cpu at 1 thread: each call timed by the calling thread's CPU time (preemption excluded on a
  // loaded machine; a pool of one runs the calls on the caller); else wall time
  const bool use_cpu = cpu && threads == 1;
  auto tick = [&] { return use_cpu ? bench::thread_cpu() : now(); };
  std::mt19937 rng(1);
  struct Layer {
    Matrix q, k, v, o, g, u, d, qkv;  // qkv: one matrix of q's + k's + v's rows (--ab qkv-one), else empty
  };
  std::vector<Layer> lw;
  for (int l = 0; l < L; ++l)
    lw.push_back({make_matrix(t, D, D, &pool, rng), make_matrix(t, KV, D, &pool, rng), make_matrix(t, KV, D, &pool, rng),
                  make_matrix(t, D, D, &pool, rng), make_matrix(t, F, D, &pool, rng), make_matrix(t, F, D, &pool, rng),
                  make_matrix(t, D, F, &pool, rng), ab == "qkv-one" ? make_matrix(t, D + 2 * KV, D, &pool, rng) : Matrix{nullptr, 0, 0}});
  const Matrix out = make_matrix(t, V, D, &pool, rng);
  std::vector<float> x(size_t(F), 0.0f), y1(size_t(2 * F), 0.0f), y2(size_t(D), 0.0f), y3(size_t(D), 0.0f), yo(size_t(V), 0.0f);
  for (auto& e : x) e = float(rng() % 1000) / 1000.0f - 0.5f;

  const char* names[5] = {"q+k+v", "o", "gate+up", "down", "output"};
  const Layer& l0 = lw[0];
  const double bytes[5] = {double(l0.q.bytes + l0.k.bytes + l0.v.bytes), double(l0.o.bytes),
                           double(l0.g.bytes + l0.u.bytes), double(l0.d.bytes), double(out.bytes)};
  std::vector<std::vector<std::vector<double>>> sm(size_t(nvar), std::vector<std::vector<double>>(5));
  for (int s = 0; s < steps; ++s) {
    for (int l = 0; l < L; ++l) {
      const int v = (s + l) % nvar;
      set_variant(v);
      const Layer& w = lw[size_t(l)];
      const double t0 = tick();
      const GemvOutput qkv[3] = {{w.q.W, nullptr, y1.data(), D}, {w.k.W, nullptr, y2.data(), KV}, {w.v.W, nullptr, y3.data(), KV}};
      if (ab == "qkv-one" && v == 1)
        gemv_repacked(x.data(), w.qkv.W, t, nullptr, y1.data(), D + 2 * KV, D, &pool);
      else
        gemv_repacked_multi(x.data(), t, qkv, 3, D, &pool);
      const double t1 = tick();
      const Gap g = ab == "prefetch-o" && v == 1 ? Gap::FmaPrefetchO : gap;
      if (gap_us > 0)
        pool.run([&](int ith, int nth) {
          // FmaPrefetchO: thread ith prefetches the start of its own part of o (the part
          // gemv_repacked gives pool thread ith while its ranges are owned by thread; with
          // EMOLLM_GEMV_OWNED_RANGES=0 the part of the ith arrival: right at 1 thread, a guess at more),
          // at most --pf-kib KiB of it (0: all)
          const uint8_t* base = nullptr;
          size_t share = 0;
          gemv_repacked_own_part(w.o.W, t, D, D, ith, nth, &base, &share);
          if (pf_kib > 0) share = std::min(share, size_t(pf_kib) << 10);
          gap_work(gap_us, g, g == Gap::FmaPrefetchO ? base : nullptr, g == Gap::FmaPrefetchO ? share : 0);
        });
      const double t2 = tick();
      gemv_repacked(x.data(), w.o.W, t, nullptr, y2.data(), D, D, &pool);
      const double t3 = tick();
      const GemvOutput gu[2] = {{w.g.W, nullptr, y1.data(), F}, {w.u.W, nullptr, y1.data() + F, F}};
      gemv_repacked_multi(x.data(), t, gu, 2, D, &pool);
      const double t4 = tick();
      gemv_repacked(x.data(), w.d.W, t, nullptr, y2.data(), D, F, &pool);
      const double t5 = tick();
      auto& S = sm[size_t(v)];
      S[0].push_back(t1 - t0), S[1].push_back(t3 - t2), S[2].push_back(t4 - t3), S[3].push_back(t5 - t4);
    }
    const int v = s % nvar;
    set_variant(v);
    const double t6 = tick();
    gemv_repacked(x.data(), out.W, t, nullptr, yo.data(), V, D, &pool);
    sm[size_t(v)][4].push_back(tick() - t6);
  }
  std::printf("decode GEMV sequence: %s %s, %d layers, %d steps, %d threads, %s, gap %.0f us (%s)%s\n", shape.c_str(),
              t == DType::Q4_0 ? "q4_0" : "q8_0", L, steps, threads, use_cpu ? "thread CPU time" : "wall", gap_us,
              gap == Gap::Pause ? "pause" : gap == Gap::FmaTrickle ? "fma-trickle" : gap == Gap::FmaPrefetchO ? "fma-prefetch-o" : "fma",
              ab.empty() ? "" : (", A/B " + ab + " off/on alternated per layer").c_str());
  for (int v = 0; v < nvar; ++v) {
    std::printf("%s", nvar > 1 ? (v ? "  on: " : "  off:") : " ");
    double step = 0, step10 = 0;
    for (int i = 0; i < 5; ++i) {
      auto s = sm[size_t(v)][size_t(i)];
      if (s.empty()) continue;
      std::sort(s.begin(), s.end());
      const double med = s[s.size() / 2], p10 = s[s.size() / 10];
      step += med * (i == 4 ? 1 : L);
      step10 += p10 * (i == 4 ? 1 : L);
      std::printf(" | %s %.1f us (p10 %.1f) %.1f GB/s", names[i], med * 1e6, p10 * 1e6, bytes[i] / med / 1e9);
    }
    std::printf(" | GEMVs of a step (medians) %.2f ms (p10s %.2f)\n", step * 1e3, step10 * 1e3);
  }
  return 0;
}
