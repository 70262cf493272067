// Decode Q K^T on K as token rows (the KV cache today) against K kept transposed in 16-token tiles
// (tile t, kv head g: Kt[d][16 tokens], D x 16 elements contiguous), one process, interleaved call
// by call, 1 thread, thread CPU time; scores compared bit for bit:
//
//   build-bench/attn_kt_ab [1b|7b] [kv 512] [f32|f16] [rounds 31] [copies 1]
//
// 1b: TinyLlama-1.1B's 32 / 4 heads x 64 (8 query heads a kv head): "rows" is attention.cpp's
// qk_decode_rows_avx512<E, 8> (each 16-dim chunk of the 16 key rows transposed in registers, then
// 16 broadcast FMAs a query row), "tiles" the same FMAs on the stored transpose (no transposes).
// Both sum each score over d = 0 .. D-1 in order in one FMA chain: the same bits.
// 7b: LLaMA-7B's 32 / 32 heads x 128 (one query head a kv head): "rows" is qk16_strided_tile<E, 1, 8>
// (a key's 8 chunk FMAs into its own 16-lane accumulator, then reduce16_512's shuffle tree),
// "tiles" the same sums on the transpose: 16 accumulators (one a dim lane e, over the 16 tokens),
// then reduce16_512's tree as vertical adds ((e0 + e2) + (e1 + e3) per 4 lanes, then pairs):
// the same bits.
// copies 1: K stays in the caches (kv 512 at 1b: 512 KiB f32, in L2): the compute alone; copies
// above L3 (32 MiB; e.g. 1b kv 2048 f32: 2 MiB a copy, 24 copies): K from memory, each copy read
// once a round, on the hardware prefetchers alone (the driver's own sweep / prefetch not modelled).
// Not the whole attention: softmax and P V are untouched by the layout; weigh the Q K^T saving
// against attn_decode_threads' 1t time of the same shape, and measure the call itself there
// (`attn_decode_threads ... 1b 1t kt`): on Zen 4 (session 28) the 1.1B's Q K^T ran 1.48-1.54x
// faster here on tiles, but the whole call only 1.01-1.04x (f32) / 1.11-1.14x (f16), the tile
// kernel taking about the row kernel's time inside the driver (perf; cause not found). Session 29, on the
// lean driver (attention_detail::decode_lean, its per-call / per-kv-head overhead removed): the whole
// call on tiles 0.97-1.03x the lean rows' in cache with f32, 1.13-1.15x with f16: still below 1.15x.
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized on their own _mm512_undefined_*() (GCC bug 105593)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../../kernels/cpu/gemm_transpose_avx512.h"
#include "bench_clock.h"

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

namespace {
__attribute__((target("f16c"))) uint16_t f16_bits(float f) { return uint16_t(_cvtss_sh(f, 0)); }  // nearest even

struct F32 {
  using T = float;
  T512 static inline __m512 load(const T* p) { return _mm512_loadu_ps(p); }
};
struct F16 {
  using T = uint16_t;
  T512 static inline __m512 load(const T* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
};

// attention.cpp's reduce16_512: out lane i = horizontal sum of a[i].
T512 static inline __m512 reduce16(const __m512* a) {
  __m512 w[8], x[4];
#pragma GCC unroll 8
  for (int t = 0; t < 8; ++t)
    w[t] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * t], a[2 * t + 1]), _mm512_unpackhi_ps(a[2 * t], a[2 * t + 1]));
#pragma GCC unroll 4
  for (int t = 0; t < 4; ++t)
    x[t] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * t], w[2 * t + 1], 0x44), _mm512_shuffle_ps(w[2 * t], w[2 * t + 1], 0xEE));
  const __m512 y0 = _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], 0x88), _mm512_shuffle_f32x4(x[0], x[1], 0xDD));
  const __m512 y1 = _mm512_add_ps(_mm512_shuffle_f32x4(x[2], x[3], 0x88), _mm512_shuffle_f32x4(x[2], x[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(y0, y1, 0x88), _mm512_shuffle_f32x4(y0, y1, 0xDD));
}

// --- 1.1B (GQA): 8 query rows (q rows Dp apart) x 16 keys
template <class E>
T512 __attribute__((noinline)) void gqa_rows(const float* q, int64_t ldq, const typename E::T* k, int64_t ldk, int D,
                                              __m512 vs, float* S, int64_t ldS) {
  const typename E::T* kr[16];
  for (int i = 0; i < 16; ++i) kr[i] = k + i * ldk;
  __m512 acc[8];
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r) acc[r] = _mm512_setzero_ps();
  for (int d0 = 0; d0 < D; d0 += 16) {
    __m512 t[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) t[i] = E::load(kr[i] + d0);
    emollm::gemm_detail::transpose16_ps(t);
#pragma GCC unroll 16
    for (int e = 0; e < 16; ++e)
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * ldq + d0 + e]), t[e], acc[r]);
  }
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r) _mm512_storeu_ps(S + r * ldS, _mm512_mul_ps(acc[r], vs));
}
template <class E>
T512 __attribute__((noinline)) void gqa_tiles(const float* q, int64_t ldq, const typename E::T* kt, int D, __m512 vs,
                                               float* S, int64_t ldS) {
  __m512 acc[8];
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r) acc[r] = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int d = 0; d < D; ++d) {
    const __m512 t = E::load(kt + d * 16);
#pragma GCC unroll 8
    for (int r = 0; r < 8; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(q[r * ldq + d]), t, acc[r]);
  }
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r) _mm512_storeu_ps(S + r * ldS, _mm512_mul_ps(acc[r], vs));
}

// --- 7B (MHA): 1 query row x 16 keys, D = 128 (8 chunks)
template <class E>
T512 __attribute__((noinline)) void mha_rows(const float* q, const typename E::T* k, int64_t ldk, __m512 vs, float* S) {
  __m512 acc[16];
#pragma GCC unroll 16
  for (int t = 0; t < 16; ++t) acc[t] = _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int c = 0; c < 8; ++c) {
    const __m512 a0 = _mm512_loadu_ps(q + 16 * c);
#pragma GCC unroll 16
    for (int t = 0; t < 16; ++t) acc[t] = _mm512_fmadd_ps(a0, E::load(k + t * ldk + 16 * c), acc[t]);
  }
  _mm512_storeu_ps(S, _mm512_mul_ps(reduce16(acc), vs));
}
template <class E>
T512 __attribute__((noinline)) void mha_tiles(const float* q, const typename E::T* kt, __m512 vs, float* S) {
  __m512 acc[16];
#pragma GCC unroll 16
  for (int e = 0; e < 16; ++e) acc[e] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int c = 0; c < 8; ++c)
#pragma GCC unroll 16
    for (int e = 0; e < 16; ++e)
      acc[e] = _mm512_fmadd_ps(_mm512_set1_ps(q[16 * c + e]), E::load(kt + (16 * c + e) * 16), acc[e]);
  // reduce16's tree, vertically: per 4 lanes (e0 + e2) + (e1 + e3), then (P0 + P1) + (P2 + P3)
  __m512 P[4];
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g)
    P[g] = _mm512_add_ps(_mm512_add_ps(acc[4 * g], acc[4 * g + 2]), _mm512_add_ps(acc[4 * g + 1], acc[4 * g + 3]));
  _mm512_storeu_ps(S, _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(P[0], P[1]), _mm512_add_ps(P[2], P[3])), vs));
}

struct Shape {
  int H, Hkv, D;
};

// One call: every kv head, every 16-token sub-block; S[h][n_kv].
template <class E>
T512 void run(bool tiles, const Shape& sh, int64_t n_kv, const float* q, const typename E::T* krows,
              const typename E::T* ktiles, float* S) {
  const int G = sh.H / sh.Hkv, D = sh.D;
  const int64_t ld = int64_t(sh.Hkv) * D;
  const __m512 vs = _mm512_set1_ps(1.0f / std::sqrt(float(D)));
  for (int64_t s0 = 0; s0 < n_kv; s0 += 16)
    for (int g = 0; g < sh.Hkv; ++g) {
      const typename E::T* kr = krows + s0 * ld + g * D;
      const typename E::T* kt = ktiles + (s0 / 16 * sh.Hkv + g) * int64_t(D) * 16;
      float* s = S + int64_t(g) * G * n_kv + s0;
      if (G == 8) {
        if (tiles) gqa_tiles<E>(q + g * G * D, D, kt, D, vs, s, n_kv);
        else gqa_rows<E>(q + g * G * D, D, kr, ld, D, vs, s, n_kv);
      } else {
        if (tiles) mha_tiles<E>(q + g * D, kt, vs, s);
        else mha_rows<E>(q + g * D, kr, ld, vs, s);
      }
    }
}

template <class E>
int bench_main(const Shape& sh, int64_t n_kv, int rounds, int copies, const char* tname) {
  using T = typename E::T;
  const int64_t ld = int64_t(sh.Hkv) * sh.D, elems = n_kv * ld;
  std::vector<T*> rows(static_cast<size_t>(copies)), tiles(static_cast<size_t>(copies));
  uint32_t x = 12345;
  for (int c = 0; c < copies; ++c) {
    rows[size_t(c)] = static_cast<T*>(std::aligned_alloc(64, size_t(elems) * sizeof(T)));
    tiles[size_t(c)] = static_cast<T*>(std::aligned_alloc(64, size_t(elems) * sizeof(T)));
    for (int64_t i = 0; i < elems; ++i) {
      x = x * 1664525u + 1013904223u;
      const float f = float(int32_t(x >> 8) - (1 << 23)) / float(1 << 23);
      if constexpr (sizeof(T) == 4) rows[size_t(c)][i] = f;
      else rows[size_t(c)][i] = f16_bits(f);
    }
    for (int64_t j = 0; j < n_kv; ++j)  // tile j / 16, head g: [d][j % 16]
      for (int g = 0; g < sh.Hkv; ++g)
        for (int d = 0; d < sh.D; ++d)
          tiles[size_t(c)][((j / 16 * sh.Hkv + g) * sh.D + d) * 16 + j % 16] = rows[size_t(c)][j * ld + g * sh.D + d];
  }
  std::vector<float> q(size_t(sh.H) * sh.D), S0(size_t(sh.H) * n_kv), S1(S0.size());
  for (float& v : q) {
    x = x * 1664525u + 1013904223u;
    v = float(int32_t(x >> 8) - (1 << 23)) / float(1 << 23);
  }
  std::vector<double> t[2];
  int call = 0;
  for (int r = -1; r < rounds; ++r)
    for (int m0 = 0; m0 < 2; ++m0) {
      const int m = (r & 1) ? 1 - m0 : m0;  // alternate which goes first
      const int c = call++ % copies;
      const double c0 = bench::thread_cpu();
      run<E>(m == 1, sh, n_kv, q.data(), rows[size_t(c)], tiles[size_t(c)], m ? S1.data() : S0.data());
      const double dt = bench::thread_cpu() - c0;
      if (r >= 0) t[m].push_back(dt);
    }
  // bits: both layouts of copy 0
  run<E>(false, sh, n_kv, q.data(), rows[0], tiles[0], S0.data());
  run<E>(true, sh, n_kv, q.data(), rows[0], tiles[0], S1.data());
  size_t diff = 0;
  for (size_t i = 0; i < S0.size(); ++i) diff += std::memcmp(&S0[i], &S1[i], 4) != 0;
  const double bytes = double(elems) * sizeof(T);
  std::printf("Q K^T %s shape (%d / %d heads x %d), kv %lld, %s K (%.2f MiB a copy), %d copies, %d rounds, 1 thread CPU time\n",
              sh.Hkv == sh.H ? "7B" : "1.1B", sh.H, sh.Hkv, sh.D, (long long)n_kv, tname, bytes / 1048576.0, copies,
              rounds);
  const char* names[2] = {"rows", "tiles"};
  for (int m = 0; m < 2; ++m)
    std::printf("  %-5s median %8.1f us (min %8.1f max %8.1f)  %.2f ns a kv token  %5.1f GB/s of K\n", names[m],
                bench::median(t[m]) * 1e6, bench::best(t[m]) * 1e6, *std::max_element(t[m].begin(), t[m].end()) * 1e6,
                bench::median(t[m]) / double(n_kv) * 1e9, bytes / bench::median(t[m]) / 1e9);
  std::printf("  rows / tiles: median %.3f, best %.3f; scores differing in bits: %zu of %zu\n",
              bench::median(t[0]) / bench::median(t[1]), bench::best(t[0]) / bench::best(t[1]), diff, S0.size());
  return diff != 0;
}
}  // namespace

int main(int argc, char** argv) {
  bool b7 = false, f16 = false;
  int64_t n_kv = 512;
  int rounds = 31, copies = 1, num = 0;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "7b")) b7 = true;
    else if (!std::strcmp(argv[i], "1b")) b7 = false;
    else if (!std::strcmp(argv[i], "f16")) f16 = true;
    else if (!std::strcmp(argv[i], "f32")) f16 = false;
    else if (argv[i][0] >= '0' && argv[i][0] <= '9') {
      const long v = std::atol(argv[i]);
      if (num == 0) n_kv = std::max(16L, v / 16 * 16);
      else if (num == 1) rounds = std::max(1, int(v));
      else copies = std::max(1, int(v));
      ++num;
    } else {
      std::fprintf(stderr, "attn_kt_ab [1b|7b] [kv 512] [f32|f16] [rounds 31] [copies 1]\n");
      return 2;
    }
  }
  if (!__builtin_cpu_supports("avx512f")) {
    std::fprintf(stderr, "needs AVX-512\n");
    return 2;
  }
  const Shape sh = b7 ? Shape{32, 32, 128} : Shape{32, 4, 64};
  return f16 ? bench_main<F16>(sh, n_kv, rounds, copies, "f16") : bench_main<F32>(sh, n_kv, rounds, copies, "f32");
}
