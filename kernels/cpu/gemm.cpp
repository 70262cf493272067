// Matrix products: argument checks, ISA dispatch, the scalar reference, and shared helpers.
//
//   Y[M,N] = X[M,K] * W[N,K]^T (+ bias)
//
// Paths (picked from isa_active(); see gemm_internal.h):
//   Scalar : ref::gemm (double accumulation), rows of W split across the pool.
//   Avx2   : gemm_avx2.cpp   (dot kernels for M <= 8, packed 6x16 GEMM above)
//   Avx512 : gemm_avx512.cpp (dot kernels for M <= 8, packed 6x64 GEMM above; BF16 weights use
//            vdpbf16ps when the CPU has AVX512-BF16)
//   Amx    : gemm_amx.cpp    (BF16 weights, M >= 16 outside the small-M range, AMX-BF16 tiles), else Avx512.
// Q8_0/Q4_0 weights with M <= kSmallM in QuantActivations::Q8 mode (the default) quantise X to
// q8_0 and use integer block dot products: gemm_q8act_avx512vnni (vpdpbusd) at Avx512+ on CPUs
// with AVX512-VNNI, else gemm_q8act_avx2 (vpmaddubsw) at Avx2+, else gemm_q8act_scalar.
// Q8_0/Q4_0 weights with M > kSmallM in Q8 mode on CPUs with AVX512-VNNI: gemm_q8_vnni.cpp (X
// quantised to q8_0 once per call, packed GEMM on vpdpbusd); without VNNI the f32 packed GEMM.
// Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K weights: gemm_quant_ext.cpp (same levels).
#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../base/arena.h"
#include "../../base/env_switch.h"
#include "../../base/error.h"
#include "../../base/quant_formats.h"
#include "gemm_internal.h"

namespace emollm {
namespace gemm_detail {

void run_parallel(ThreadPool* pool, bool parallel, const std::function<void(int, int)>& fn) {
  if (pool && parallel && pool->size() > 1)
    pool->run(fn);
  else
    fn(0, 1);
}

void parallel_chunks(ThreadPool* pool, bool parallel, int64_t n, int64_t chunk,
                     const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (chunk < 1) chunk = 1;
  const int64_t nchunks = (n + chunk - 1) / chunk;
  if (!pool || !parallel || pool->size() <= 1 || nchunks <= 1) return fn(0, n);
  // run_dynamic: a worker another process keeps off its core is not waited for; whoever is
  // there takes the chunks (the caller alone, at worst).
  std::atomic<int64_t> next{0};
  pool->run_dynamic([&] {
    for (;;) {
      const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= nchunks) break;
      pool_late_point();
      fn(i * chunk, std::min(n, (i + 1) * chunk));
    }
  });
}

// ThreadPool::parallel_for with grain 1 (its claimed or static split, inline for one piece, one
// thread or a nested call), or inline when the work is too small to wake the pool.
void parallel_pieces(ThreadPool* pool, bool parallel, int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  if (!pool || !parallel) return fn(0, n);
  pool->parallel_for(n, 1, fn);
}

namespace {
struct ScratchBuf {
  AlignedPtr<uint8_t> p;
  size_t cap = 0;
};
constexpr int kScratchSlots = 4;
}  // namespace

// Each thread's scratch grows once to its largest request. From 1 MiB on it is whole 2 MiB pages,
// 2 MiB-aligned and asked to be transparent huge pages: a thread's first large call (a libuv
// thread's first vision encode: the bf16 X panels of K = 4096, 4.7 MiB, and of K = 1024, 1.2 MiB)
// faults a few huge pages instead of ~1500 4 KiB pages (~12 us each in this project's Zen 5 VM).
void* scratch(int slot, size_t bytes) {
  constexpr size_t kHuge = kHugePage2M;
  thread_local ScratchBuf bufs[kScratchSlots];
  ScratchBuf& b = bufs[slot];
  if (bytes > b.cap) {
    size_t cap = std::max(bytes, b.cap + b.cap / 2);
    b.p.reset();
    if (cap >= kHuge / 2) {
      cap = (cap + kHuge - 1) / kHuge * kHuge;
      b.p = AlignedPtr<uint8_t>(static_cast<uint8_t*>(aligned_alloc_huge(cap)));
    } else {
      cap = (cap + 4095) & ~size_t(4095);
      b.p = make_aligned<uint8_t>(cap);
    }
    b.cap = cap;
  }
  return b.p.get();
}

size_t qx_bytes(int64_t M, int64_t K) {
  const size_t ldq = size_t((K + 63) / 64 * 64), ldd = size_t(K / 4);
  const size_t qs = (size_t(M) * ldq + 63) / 64 * 64, f = (size_t(M) * ldd * 4 + 63) / 64 * 64;
  return qs + 2 * f;
}

QX qx_view(void* buf, int64_t M, int64_t K) {
  const size_t ldq = size_t((K + 63) / 64 * 64), ldd = size_t(K / 4);
  const size_t qs = (size_t(M) * ldq + 63) / 64 * 64, f = (size_t(M) * ldd * 4 + 63) / 64 * 64;
  uint8_t* p = static_cast<uint8_t*>(buf);
  return QX{reinterpret_cast<const int8_t*>(p), reinterpret_cast<const float*>(p + qs),
            reinterpret_cast<const int32_t*>(p + qs + f), int64_t(ldq), int64_t(ldd)};
}

// ggml quantize_row_q8_0_ref (== emollm::quantize_row(Q8_0)): d = amax / 127 stored as fp16,
// q = roundf(x * (1 / d)) with the unrounded d.
void qx_quantize_row_scalar(const float* x, int64_t K, int8_t* qs, float* dxe, int32_t* neg, int off) {
  for (int64_t b = 0; b < K / kQK; ++b) {
    const float* xb = x + b * kQK;
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const float dx = f16_to_f32(f32_to_f16(d));
    int8_t* q = qs + b * kQK;
    for (int j = 0; j < kQK; ++j) q[j] = int8_t(std::roundf(xb[j] * id));
    for (int j = 0; j < 8; ++j) {
      dxe[b * 8 + j] = dx;
      if (neg) neg[b * 8 + j] = -off * (int32_t(q[4 * j]) + q[4 * j + 1] + q[4 * j + 2] + q[4 * j + 3]);
    }
  }
}

namespace {
std::atomic<bool> g_vnni_allowed{true};
}  // namespace
void set_vnni_allowed(bool allowed) { g_vnni_allowed.store(allowed, std::memory_order_relaxed); }
bool vnni_allowed() { return g_vnni_allowed.load(std::memory_order_relaxed); }

namespace {
std::atomic<bool> g_q8_gemv_legacy{false};
}  // namespace
void set_q8_gemv_legacy(bool legacy) { g_q8_gemv_legacy.store(legacy, std::memory_order_relaxed); }
bool q8_gemv_legacy() { return g_q8_gemv_legacy.load(std::memory_order_relaxed); }

namespace {
// On at start; off (f32 M = 1 on dot_block's 4-row kernel, unfused: the kernel f32 weights on 4 KiB
// pages run) for the tests' same-bits reference and decode_switch_ab. No environment variable:
// EMOLLM_GEMV_STREAM_F32 went in session 22 (1.09-1.24x, bench/README 2026-12-05 20:53).
std::atomic<bool> g_gemv_stream_f32{true};
}  // namespace
void set_gemv_stream_f32(bool on) { g_gemv_stream_f32.store(on, std::memory_order_relaxed); }
bool gemv_stream_f32() { return g_gemv_stream_f32.load(std::memory_order_relaxed); }

void set_gemv_streams_prefetch(GemvPrefetch p) { DecodeSetting<&DecodeTuning::stream_prefetch>::set(p); }
GemvPrefetch gemv_streams_prefetch() { return DecodeSetting<&DecodeTuning::stream_prefetch>::get(); }
void set_gemv_half_long_streams(int streams) { DecodeSetting<&DecodeTuning::half_long_streams>::set(streams); }
int gemv_half_long_streams() { return DecodeSetting<&DecodeTuning::half_long_streams>::get(); }
void set_gemv_half_long_runs(int runs) { DecodeSetting<&DecodeTuning::half_long_runs>::set(runs); }
int gemv_half_long_runs() { return DecodeSetting<&DecodeTuning::half_long_runs>::get(); }
void set_gemv_streams_owner_keep(int steps) { DecodeSetting<&DecodeTuning::stream_owner_keep>::set(std::max(steps, -1)); }
int gemv_streams_owner_keep() { return DecodeSetting<&DecodeTuning::stream_owner_keep>::get(); }

void set_gemv_block_prefetch(GemvPrefetch p) { DecodeSetting<&DecodeTuning::block_prefetch>::set(p); }
GemvPrefetch gemv_block_prefetch() { return DecodeSetting<&DecodeTuning::block_prefetch>::get(); }

// Portable q8_0-activation path (Isa::Scalar): int32 block dot products, double accumulation.
void gemm_q8act_scalar(const Args& a) {
  const int64_t K = a.K, nb = K / kQK;
  const QX q = qx_view(scratch(kQxSlot, qx_bytes(a.M, K)), a.M, K);
  for (int64_t m = 0; m < a.M; ++m)
    qx_quantize_row_scalar(a.X + m * a.ldx, K, const_cast<int8_t*>(q.qs + m * q.ldq),
                           const_cast<float*>(q.dxe + m * q.ldd), nullptr, 0);
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  const bool q8 = a.wtype == DType::Q8_0;
  run_parallel(a.pool, a.M * a.N * a.K >= kParallelMinMacs, [&](int ith, int nth) {
    int64_t n0, n1;
    split_range(a.N, ith, nth, 1, &n0, &n1);
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* row = W + size_t(n) * a.row_bytes;
      for (int64_t m = 0; m < a.M; ++m) {
        const int8_t* xq = q.qs + m * q.ldq;
        double s = a.bias ? double(a.bias[n]) : 0.0;
        for (int64_t b = 0; b < nb; ++b) {
          const uint8_t* blk = row + size_t(b) * (q8 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0));
          uint16_t h;
          std::memcpy(&h, blk, 2);
          const int8_t* xb = xq + b * kQK;
          int32_t isum = 0;
          if (q8) {
            for (int i = 0; i < kQK; ++i) isum += int32_t(int8_t(blk[2 + i])) * xb[i];
          } else {
            for (int i = 0; i < kQK / 2; ++i) {
              isum += (int32_t(blk[2 + i] & 0x0F) - 8) * xb[i];
              isum += (int32_t(blk[2 + i] >> 4) - 8) * xb[i + 16];
            }
          }
          s += double(isum) * (double(f16_to_f32(h)) * double(q.dxe[m * q.ldd + b * 8]));
        }
        a.Y[m * a.ldy + n] = float(s);
      }
    }
  });
}

void gemm_scalar(const Args& a) {
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  run_parallel(a.pool, a.M * a.N * a.K >= kParallelMinMacs, [&](int ith, int nth) {
    int64_t n0, n1;
    split_range(a.N, ith, nth, 1, &n0, &n1);
    if (n1 <= n0) return;
    ref::gemm(a.X, a.ldx, W + size_t(n0) * a.row_bytes, a.wtype, a.bias ? a.bias + n0 : nullptr,
              a.Y + n0, a.ldy, a.M, n1 - n0, a.K);
  });
}

}  // namespace gemm_detail

namespace {

QuantActivations initial_quant_activations() {
  const char* env = std::getenv("EMOLLM_QUANT_ACT");
  if (!env) return QuantActivations::Q8;
  std::string v(env);
  for (char& c : v) c = char(std::tolower(static_cast<unsigned char>(c)));
  return (v == "f32" || v == "fp32" || v == "float") ? QuantActivations::F32 : QuantActivations::Q8;
}

std::atomic<int>& quant_act_storage() {
  static std::atomic<int> mode{int(initial_quant_activations())};
  return mode;
}

}  // namespace

void set_quant_activations(QuantActivations mode) {
  quant_act_storage().store(int(mode), std::memory_order_relaxed);
}
QuantActivations quant_activations() {
  return QuantActivations(quant_act_storage().load(std::memory_order_relaxed));
}

namespace {

void check_args(const float* X, int64_t ldx, const void* W, DType wtype, float* Y, int64_t ldy,
                int64_t M, int64_t N, int64_t K) {
  EMOLLM_CHECK_ARG(M >= 0 && N >= 0 && K >= 0, "gemm: negative size");
  EMOLLM_CHECK_ARG(wtype == DType::F32 || wtype == DType::F16 || wtype == DType::BF16 ||
                       wtype == DType::Q8_0 || wtype == DType::Q4_0 || dtype_is_ext_quant(wtype),
                   "gemm: unsupported weight dtype");
  if (dtype_is_quantized(wtype) && K % dtype_block_elems(wtype) != 0)
    throw Error(ErrorCode::InvalidArgument, std::string("gemm: ") + dtype_name(wtype) + " weights need K % " +
                                                std::to_string(dtype_block_elems(wtype)) +
                                                " == 0, got K = " + std::to_string(K));
  EMOLLM_CHECK_ARG(ldx >= K, "gemm: ldx < K");
  EMOLLM_CHECK_ARG(ldy >= N, "gemm: ldy < N");
  if (M > 0 && N > 0) {
    EMOLLM_CHECK_ARG(Y != nullptr, "gemm: null Y");
    if (K > 0) {
      EMOLLM_CHECK_ARG(X != nullptr, "gemm: null X");
      EMOLLM_CHECK_ARG(W != nullptr, "gemm: null W");
    }
  }
}

// Scalar dequantisation of element-wise weights, written from the ggml block layouts
// independently of dequantize_row (so the tests can compare the two).
void ref_dequant_row(DType t, const uint8_t* row, float* out, int64_t K) {
  switch (t) {
    case DType::F32:
      std::memcpy(out, row, size_t(K) * 4);
      break;
    case DType::F16:
      for (int64_t k = 0; k < K; ++k) {
        uint16_t h;
        std::memcpy(&h, row + 2 * k, 2);
        out[k] = f16_to_f32(h);
      }
      break;
    case DType::BF16:
      for (int64_t k = 0; k < K; ++k) {
        uint16_t h;
        std::memcpy(&h, row + 2 * k, 2);
        out[k] = bf16_to_f32(h);
      }
      break;
    case DType::Q8_0:
      for (int64_t b = 0; b < K / kQK; ++b) {
        const uint8_t* blk = row + b * sizeof(BlockQ8_0);
        uint16_t h;
        std::memcpy(&h, blk, 2);
        const float d = f16_to_f32(h);
        for (int i = 0; i < kQK; ++i) out[b * kQK + i] = float(int8_t(blk[2 + i])) * d;
      }
      break;
    case DType::Q4_0:
      for (int64_t b = 0; b < K / kQK; ++b) {
        const uint8_t* blk = row + b * sizeof(BlockQ4_0);
        uint16_t h;
        std::memcpy(&h, blk, 2);
        const float d = f16_to_f32(h);
        for (int i = 0; i < kQK / 2; ++i) {
          const uint8_t q = blk[2 + i];
          out[b * kQK + i] = float(int(q & 0x0F) - 8) * d;
          out[b * kQK + i + 16] = float(int(q >> 4) - 8) * d;
        }
      }
      break;
    default:  // q4_1, q5_0, q5_1, k-quants: ggml's dequantisation (checked against ggml's own outputs)
      dequantize_row(t, row, out, K);
      break;
  }
}

void fill_bias(const float* bias, float* Y, int64_t ldy, int64_t M, int64_t N) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) Y[m * ldy + n] = bias ? bias[n] : 0.0f;
}

}  // namespace

namespace ref {

void gemm(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y,
          int64_t ldy, int64_t M, int64_t N, int64_t K) {
  check_args(X, ldx, W, wtype, Y, ldy, M, N, K);
  if (M == 0 || N == 0) return;
  if (K == 0) return fill_bias(bias, Y, ldy, M, N);
  const size_t rb = dtype_row_bytes(wtype, K);
  std::vector<float> w(static_cast<size_t>(K));
  for (int64_t n = 0; n < N; ++n) {
    ref_dequant_row(wtype, static_cast<const uint8_t*>(W) + size_t(n) * rb, w.data(), K);
    for (int64_t m = 0; m < M; ++m) {
      const float* x = X + m * ldx;
      double s = 0.0;
      for (int64_t k = 0; k < K; ++k) s += double(x[k]) * double(w[k]);
      if (bias) s += double(bias[n]);
      Y[m * ldy + n] = float(s);
    }
  }
}

}  // namespace ref

namespace {
void gemm_impl(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y,
               int64_t ldy, int64_t M, int64_t N, int64_t K, ThreadPool* pool, bool huge_pages) {
  check_args(X, ldx, W, wtype, Y, ldy, M, N, K);
  if (M == 0 || N == 0) return;
  if (K == 0) return fill_bias(bias, Y, ldy, M, N);
  gemm_detail::Args a{X, ldx, W, wtype, bias, Y, ldy, M, N, K, pool, dtype_row_bytes(wtype, K), huge_pages};
  const bool q8act = dtype_is_quantized(wtype) && M <= gemm_detail::kSmallM &&
                     quant_activations() == QuantActivations::Q8;
  if (dtype_is_ext_quant(wtype)) return gemm_detail::gemm_quant_ext(a, isa_active(), q8act);
#if defined(__x86_64__)
  const Isa isa = isa_active();
  if (q8act) {
    if (isa >= Isa::Avx512 && cpu_features().avx512vnni && gemm_detail::vnni_allowed())
      return gemm_detail::gemm_q8act_avx512vnni(a);
    if (isa >= Isa::Avx2) return gemm_detail::gemm_q8act_avx2(a);
    return gemm_detail::gemm_q8act_scalar(a);
  }
  // large M (prefill): int8 block dot products on VNNI; without VNNI the f32 packed GEMM below
  if ((wtype == DType::Q8_0 || wtype == DType::Q4_0) && quant_activations() == QuantActivations::Q8 &&
      isa >= Isa::Avx512 && cpu_features().avx512vnni && gemm_detail::vnni_allowed())
    return gemm_detail::gemm_q8_packed_vnni(a);
  // The small-M path goes first, also on AMX CPUs: one kernel for every M in its range keeps a
  // row's result independent of the batch it rides in (test gemm_small_m_rows_independent_of_batch;
  // with AMX first, M >= 16 took the tiles and M = 9..15 did not, so the rows differed).
  if (gemm_detail::gemm_small_m(a, isa)) return;  // bf16/f16, 9 <= M <= 64 (gemm_small_m.cpp)
  if (isa >= Isa::Amx && wtype == DType::BF16 && cpu_features().amx_usable && cpu_features().amx_bf16 &&
      gemm_detail::gemm_amx(a))
    return;
  if (isa >= Isa::Avx512)
    return gemm_detail::gemm_avx512(a, wtype == DType::BF16 && cpu_features().avx512bf16);
  if (isa >= Isa::Avx2) return gemm_detail::gemm_avx2(a);
#else
  if (q8act) return gemm_detail::gemm_q8act_scalar(a);
#endif
  gemm_detail::gemm_scalar(a);
}
}  // namespace

void gemm(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y,
          int64_t ldy, int64_t M, int64_t N, int64_t K, ThreadPool* pool) {
  gemm_impl(X, ldx, W, wtype, bias, Y, ldy, M, N, K, pool, false);
}

void gemm_huge_pages(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y,
                     int64_t ldy, int64_t M, int64_t N, int64_t K, ThreadPool* pool) {
  gemm_impl(X, ldx, W, wtype, bias, Y, ldy, M, N, K, pool, true);
}

void gemv(const float* x, const void* W, DType wtype, const float* bias, float* y, int64_t N,
          int64_t K, ThreadPool* pool) {
  gemm(x, K, W, wtype, bias, y, N, 1, N, K, pool);
}

// ---------------------------------------------------------------- bf16 GEMM panels
bool bf16_panels_usable() {
#if defined(__x86_64__)
  return isa_active() >= Isa::Avx512 && cpu_features().avx512bf16;
#else
  return false;
#endif
}

size_t bf16_panels_bytes(int64_t N, int64_t K) {
  EMOLLM_CHECK_ARG(N >= 0 && K >= 0, "bf16_panels_bytes: negative size");
  return size_t((N + 63) / 64) * 64 * size_t((K + 1) / 2) * 4;
}

void bf16_pack_panels(const void* W, int64_t N, int64_t K, void* out, ThreadPool* pool) {
  EMOLLM_CHECK_ARG(N >= 0 && K >= 0, "bf16_pack_panels: negative size");
  if (N == 0 || K == 0) return;
  EMOLLM_CHECK_ARG(W != nullptr && out != nullptr, "bf16_pack_panels: null pointer");
  EMOLLM_CHECK_ARG(reinterpret_cast<uintptr_t>(out) % 64 == 0, "bf16_pack_panels: out must be 64-byte aligned");
  if (!bf16_panels_usable())
    throw Error(ErrorCode::Unsupported, "bf16_pack_panels: needs AVX512-BF16 at the AVX-512 ISA level");
#if defined(__x86_64__)
  gemm_detail::bf16_pack_panels_avx512(W, N, K, out, pool);
#else
  (void)pool;
#endif
}

void gemm_bf16_panels(const float* X, int64_t ldx, const void* Wp, const float* bias, float* Y, int64_t ldy,
                      int64_t M, int64_t N, int64_t K, ThreadPool* pool) {
  check_args(X, ldx, Wp, DType::BF16, Y, ldy, M, N, K);
  if (M == 0 || N == 0) return;
  if (K == 0) return fill_bias(bias, Y, ldy, M, N);
  EMOLLM_CHECK_ARG(reinterpret_cast<uintptr_t>(Wp) % 64 == 0, "gemm_bf16_panels: the panels must be 64-byte aligned");
  if (!bf16_panels_usable())
    throw Error(ErrorCode::Unsupported, "gemm_bf16_panels: needs AVX512-BF16 at the AVX-512 ISA level");
#if defined(__x86_64__)
  gemm_detail::Args a{X, ldx, Wp, DType::BF16, bias, Y, ldy, M, N, K, pool, dtype_row_bytes(DType::BF16, K), false};
  gemm_detail::gemm_bf16_panels_avx512(a);
#else
  (void)pool;
#endif
}

void gemm_bf16_panels_multi(const float* X, int64_t ldx, const PanelOutput* outs, int n, int64_t M, int64_t K,
                            ThreadPool* pool) {
  EMOLLM_CHECK_ARG(outs != nullptr && n >= 1 && n <= kMaxPanelOutputs,
                   "gemm_bf16_panels_multi: 1.." + std::to_string(kMaxPanelOutputs) + " outputs");
  for (int j = 0; j < n; ++j) {
    check_args(X, ldx, outs[j].Wp, DType::BF16, outs[j].Y, outs[j].ldy, M, outs[j].N, K);
    EMOLLM_CHECK_ARG(reinterpret_cast<uintptr_t>(outs[j].Wp) % 64 == 0,
                     "gemm_bf16_panels_multi: the panels must be 64-byte aligned");
  }
  if (M == 0) return;
  if (K == 0) {
    for (int j = 0; j < n; ++j) fill_bias(outs[j].bias, outs[j].Y, outs[j].ldy, M, outs[j].N);
    return;
  }
  if (!bf16_panels_usable())
    throw Error(ErrorCode::Unsupported, "gemm_bf16_panels_multi: needs AVX512-BF16 at the AVX-512 ISA level");
#if defined(__x86_64__)
  gemm_detail::Args a[kMaxPanelOutputs];
  for (int j = 0; j < n; ++j)
    a[j] = gemm_detail::Args{X, ldx, outs[j].Wp, DType::BF16, outs[j].bias, outs[j].Y, outs[j].ldy, M, outs[j].N, K,
                             pool, dtype_row_bytes(DType::BF16, K), false};
  gemm_detail::gemm_bf16_panels_multi_avx512(a, n);
#else
  (void)pool;
#endif
}

void gemm_bf16_rows_multi(const float* X, int64_t ldx, const PanelOutput* outs, int n, int64_t M, int64_t K,
                          ThreadPool* pool) {
  EMOLLM_CHECK_ARG(outs != nullptr && n >= 1 && n <= kMaxPanelOutputs,
                   "gemm_bf16_rows_multi: 1.." + std::to_string(kMaxPanelOutputs) + " outputs");
  for (int j = 0; j < n; ++j) check_args(X, ldx, outs[j].Wp, DType::BF16, outs[j].Y, outs[j].ldy, M, outs[j].N, K);
#if defined(__x86_64__)
  // where gemm_impl runs gemm_avx512's vdpbf16ps packed GEMM (no small-M path, no AMX)
  const bool amx = isa_active() >= Isa::Amx && cpu_features().amx_usable && cpu_features().amx_bf16;
  bool rows = M > gemm_detail::kSmallMMax && K > 0 && bf16_panels_usable() && !amx;
  for (int j = 0; j < n; ++j) rows = rows && outs[j].N > 0;
  if (rows) {
    gemm_detail::Args a[kMaxPanelOutputs];
    for (int j = 0; j < n; ++j)
      a[j] = gemm_detail::Args{X, ldx, outs[j].Wp, DType::BF16, outs[j].bias, outs[j].Y, outs[j].ldy, M, outs[j].N, K,
                               pool, dtype_row_bytes(DType::BF16, K), true};
    return gemm_detail::gemm_bf16_rows_multi_avx512(a, n);
  }
#endif
  for (int j = 0; j < n; ++j)
    gemm_huge_pages(X, ldx, outs[j].Wp, DType::BF16, outs[j].bias, outs[j].Y, outs[j].ldy, M, outs[j].N, K, pool);
}

}  // namespace emollm

namespace emollm {

namespace {
// On by default; off (one dispatch per matrix) is what the tests compare the fused dispatch with.
// Session 22, in-process ABBA (decode_switch_ab gemv_fuse, 24 x 32 tokens): 2 threads 1.046 (q4_0)
// and 1.074 (bf16) fused / unfused, 1 thread 0.985-0.998: the env read went.
std::atomic<bool> g_gemv_fusion{true};
}  // namespace

void set_gemv_fusion(bool on) { g_gemv_fusion.store(on, std::memory_order_relaxed); }
bool gemv_fusion() { return g_gemv_fusion.load(std::memory_order_relaxed); }

void gemv_huge_pages_multi(const float* x, DType wtype, const GemvOutput* outs, int n_outs, int64_t K,
                           ThreadPool* pool) {
  EMOLLM_CHECK_ARG(outs && n_outs >= 1 && n_outs <= kMaxGemvOutputs, "gemv_huge_pages_multi: 1 to 8 outputs");
  for (int j = 0; j < n_outs; ++j) check_args(x, K, outs[j].W, wtype, outs[j].y, outs[j].N, 1, outs[j].N, K);
#if defined(__x86_64__)
  // the case small_m() runs gemv_stream for (gemm_impl reaches it at M = 1 for these types)
  bool rows = true;  // an empty output goes the loop's way (gemm_impl returns at once)
  for (int j = 0; j < n_outs; ++j) rows = rows && outs[j].N > 0;
  if (n_outs > 1 && rows && K > 0 &&
      (wtype == DType::BF16 || wtype == DType::F16 || (wtype == DType::F32 && gemm_detail::gemv_stream_f32())) &&
      isa_active() >= Isa::Avx512)
    return gemm_detail::gemv_stream_multi(x, wtype, outs, n_outs, K, pool);
#endif
  for (int j = 0; j < n_outs; ++j)
    gemm_huge_pages(x, K, outs[j].W, wtype, outs[j].bias, outs[j].y, outs[j].N, 1, outs[j].N, K, pool);
}

}  // namespace emollm
