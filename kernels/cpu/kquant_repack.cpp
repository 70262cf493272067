// q4_K / q6_K weights rearranged once (at load) into kquant_records.h's 32 / 64-row records, which the
// decode GEMV streams as one sequential read per record row range with one vpdpbusd per 4 elements of 16
// rows and the scales already one byte per lane (gemv_kquant_vnni.cpp), and which the prefill
// GEMM reads as well (gemm_kquant_vnni.cpp). The GGUF layout made the previous decode kernel
// unpack each row's 12 scale bytes with scalar code, permute the scales over the lanes once per
// 64 weights and sum 16 lanes per row: ~60 instructions per 144 bytes, compute-bound below the
// memory's rate at 2 threads; the records take ~10 B an instruction.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "../../base/cpu_features.h"
#include "../../base/error.h"
#include "../../base/quant_formats.h"
#include "../../base/thread_pool.h"
#include "gemm_kquant_vnni.h"
#include "kernels.h"
#include "kquant_records.h"

namespace emollm {

namespace {
// On at start; off (the GGUF bytes read in place by their kernels: what EMOLLM_REPACK=0 also
// gives, and what a CPU without AVX-512 VNNI runs) for the tests. No environment variable:
// EMOLLM_KQUANT_REPACK went in session 22 (its off path is EMOLLM_REPACK=0's).
std::atomic<bool> g_kquant_repack{true};

void check_args(DType t, int64_t N, int64_t K) {
  EMOLLM_CHECK_ARG(kquant_repack_supported(t), std::string("kquant_repack: q4_K or q6_K weights only, got ") + dtype_name(t));
  EMOLLM_CHECK_ARG(N > 0 && K > 0 && K % kQKK == 0,
                   "kquant_repack: N > 0 and K a positive multiple of 256, got K = " + std::to_string(K));
}

// The 256 codes of one GGUF super-block (the scalar form of gemm_quant_ext.cpp's decoders).
void codes_scalar(DType t, const uint8_t* blk, uint8_t* u) {
  if (t == DType::Q4_K) {
    const uint8_t* qs = blk + 16;
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        u[64 * c + l] = qs[32 * c + l] & 0x0F;
        u[64 * c + 32 + l] = qs[32 * c + l] >> 4;
      }
    return;
  }
  for (int n = 0; n < 2; ++n) {  // ggml dequantize_row_q6_K's interleave
    const uint8_t* ql = blk + 64 * n;
    const uint8_t* qh = blk + 128 + 32 * n;
    uint8_t* o = u + 128 * n;
    for (int l = 0; l < 32; ++l) {
      o[l] = uint8_t((ql[l] & 0x0F) | ((qh[l] & 3) << 4));
      o[l + 32] = uint8_t((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4));
      o[l + 64] = uint8_t((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
      o[l + 96] = uint8_t((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
    }
  }
}

// Row r's (0..16 G - 1) part of one record of layout L from its GGUF super-block `blk` (the
// record zeroed before).
void fill_row(DType t, const gemm_detail::KqLayout& L, const uint8_t* blk, int r, uint8_t* rec, bool avx2) {
  alignas(64) uint8_t u[256];
#if defined(__x86_64__)
  if (avx2) {
    gemm_detail::KquantDecoded dec;
    gemm_detail::kquant_decode_avx2(t, blk, &dec);
    std::memcpy(u, dec.u, 256);
  } else
#endif
  {
    (void)avx2;
    codes_scalar(t, blk, u);
  }
  using namespace gemm_detail;
  const int gi = r / kKqRows;
  r %= kKqRows;
  for (int j = 0; j < 8; ++j)
    for (int i = 0; i < 4; ++i)
      for (int k = 0; k < 4; ++k) {
        const uint8_t a = u[32 * j + 4 * i + k], b = u[32 * j + 16 + 4 * i + k];  // quads i, 4 + i
        uint8_t* c = rec + L.codes(gi, j) + 4 * r + k;
        if (t == DType::Q4_K) {
          c[64 * i] = uint8_t((a & 0x0F) | ((b & 0x0F) << 4));
          continue;
        }
        c[64 * i] = uint8_t(a | ((b >> 4) << 6));                      // quad i whole, quad 4 + i's bits 4-5
        c[64 * (4 + i / 2)] |= uint8_t((b & 0x0F) << (4 * (i % 2)));  // quad 4 + i's low 4 bits
      }
  if (t == DType::Q4_K) {
    std::memcpy(rec + L.d(gi) + 2 * r, blk, 2);         // d
    std::memcpy(rec + L.dmin(gi) + 2 * r, blk + 2, 2);  // dmin
    for (int j = 0; j < 8; ++j) {
      uint8_t s, m;
      kquant_scale_min(j, blk + 4, &s, &m);
      rec[L.sc(gi, j) + r] = s;
      rec[L.mn(gi, j) + r] = m;
    }
    return;
  }
  uint16_t dh;
  std::memcpy(&dh, blk + 208, 2);
  const float d = f16_to_f32(dh);
  std::memcpy(rec + L.d(gi) + 4 * r, &d, 4);
  for (int h = 0; h < 16; ++h) rec[L.sc(gi, h) + r] = blk[192 + h];
}

// Groups per record (kquant_records.h): 4 (64 rows). 32-row records stay a layout the tests pack
// and read (set_kquant_record_rows); the environment switch to them (EMOLLM_KQUANT_RECORD_ROWS=32)
// went in session 21: quiet 1 thread CPU time 32 / 64 rows 1.009 (q4_K_M) and 0.929 (q6_K).
std::atomic<int>& record_groups() {
  static std::atomic<int> g{4};
  return g;
}
}  // namespace

namespace gemm_detail {
int kquant_record_groups() { return record_groups().load(std::memory_order_relaxed); }
}  // namespace gemm_detail
void set_kquant_record_rows(int rows) {
  EMOLLM_CHECK_ARG(rows == 32 || rows == 64, "set_kquant_record_rows: 32 or 64");
  record_groups().store(rows / gemm_detail::kKqRows, std::memory_order_relaxed);
}

void set_kquant_repacking(bool on) { g_kquant_repack.store(on, std::memory_order_relaxed); }
bool kquant_repacking() { return g_kquant_repack.load(std::memory_order_relaxed); }
int64_t kquant_record_rows() { return int64_t(gemm_detail::kKqRows) * gemm_detail::kquant_record_groups(); }
bool kquant_repack_supported(DType wtype) { return wtype == DType::Q4_K || wtype == DType::Q6_K; }

size_t kquant_repack_bytes(DType wtype, int64_t N, int64_t K) {
  check_args(wtype, N, K);
  const int64_t rows = int64_t(gemm_detail::kKqRows) * gemm_detail::kquant_record_groups();
  return size_t((N + rows - 1) / rows) * size_t(K / kQKK) * gemm_detail::kquant_record_groups() *
         gemm_detail::kquant_record_bytes(wtype);
}

void kquant_repack(const void* W, DType wtype, int64_t N, int64_t K, void* out, ThreadPool* pool) {
  check_args(wtype, N, K);
  EMOLLM_CHECK_ARG(W && out, "kquant_repack: null pointer");
  using namespace gemm_detail;
  const KqLayout L{wtype == DType::Q6_K, kquant_record_groups(), K / kQKK};
  const int64_t ns = L.ns, R = int64_t(kKqRows) * L.G, groups = (N + R - 1) / R;  // super-groups
  const size_t rb = dtype_row_bytes(wtype, K), bb = dtype_block_bytes(wtype), rec = L.rec();
  const CpuFeatures& cf = cpu_features();
  const bool avx2 = cf.avx2 && cf.f16c;
  uint8_t* const O = static_cast<uint8_t*>(out);
  auto body = [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t s = 0; s < ns; ++s) {
        uint8_t* rp = O + size_t(g * ns + s) * rec;
        std::memset(rp, 0, rec);  // padding rows: zero codes, scales and d (their outputs are not written)
        for (int r = 0; r < R && g * R + r < N; ++r)
          fill_row(wtype, L, static_cast<const uint8_t*>(W) + size_t(g * R + r) * rb + size_t(s) * bb, r, rp, avx2);
      }
  };
  if (pool && pool->size() > 1 && groups > 1)
    pool->parallel_for(groups, 4, body);
  else
    body(0, groups);
}

}  // namespace emollm

#if defined(__x86_64__)
#include "gemm_internal.h"
#include "gemv_kquant_vnni.h"
#endif

namespace emollm {

bool kquant_repacked_usable() {
#if defined(__x86_64__)
  return isa_active() >= Isa::Avx512 && cpu_features().avx512vnni && gemm_detail::vnni_allowed();
#else
  return false;
#endif
}

void gemm_kquant_repacked(const float* X, int64_t ldx, const void* Wr, DType wtype, const float* bias, float* Y,
                          int64_t ldy, int64_t M, int64_t N, int64_t K, ThreadPool* pool) {
  check_args(wtype, N, K);
  EMOLLM_CHECK_ARG(X && Wr && Y && M > 0, "gemm_kquant_repacked: null pointer or M <= 0");
  EMOLLM_CHECK_ARG(kquant_repacked_usable(), "gemm_kquant_repacked: needs AVX-512 VNNI");
#if defined(__x86_64__)
  using namespace gemm_detail;
  const size_t group_bytes = KqLayout{wtype == DType::Q6_K, kquant_record_groups(), K / kQKK}.sg_bytes();
  const Args a{X, ldx, Wr, wtype, bias, Y, ldy, M, N, K, pool, group_bytes};
  if (M <= kSmallM) return gemv_kquant_records(a);
  return gemm_kquant_packed_vnni_records(a);
#else
  (void)X, (void)ldx, (void)Wr, (void)bias, (void)Y, (void)ldy, (void)M, (void)pool;
#endif
}

void gemv_kquant_repacked_multi(const float* x, DType wtype, const GemvOutput* outs, int n_outs, int64_t K,
                                ThreadPool* pool) {
  EMOLLM_CHECK_ARG(x && outs && n_outs >= 1 && n_outs <= kMaxGemvOutputs, "gemv_kquant_repacked_multi: bad outputs");
  EMOLLM_CHECK_ARG(kquant_repacked_usable(), "gemv_kquant_repacked_multi: needs AVX-512 VNNI");
#if defined(__x86_64__)
  using namespace gemm_detail;
  Args a[kMaxGemvOutputs];
  const size_t group_bytes = KqLayout{wtype == DType::Q6_K, kquant_record_groups(), K / kQKK}.sg_bytes();
  for (int j = 0; j < n_outs; ++j) {
    check_args(wtype, outs[j].N, K);
    EMOLLM_CHECK_ARG(outs[j].W && outs[j].y, "gemv_kquant_repacked_multi: null pointer");
    a[j] = Args{x, K, outs[j].W, wtype, outs[j].bias, outs[j].y, outs[j].N, 1, outs[j].N, K, pool, group_bytes};
  }
  gemv_kquant_records_multi(a, n_outs);
#else
  (void)wtype, (void)K, (void)pool;
#endif
}

}  // namespace emollm
