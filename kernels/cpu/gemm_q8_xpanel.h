// X rounded to q8_0 and packed into MR-row panels for the VNNI int8 GEMMs at M > kSmallM: the
// standard-layout one (gemm_q8_vnni.cpp), the one over quant_repack's 16-row groups
// (gemv_repacked.cpp) and the K-quant one (gemm_kquant_vnni.cpp). x86-64 only (the quantiser is
// qx_quantize_row_avx2).
//
// Panel p holds X rows [p*MR, p*MR + MR); per 32-element block b, kBlockDwords dwords:
//   [q*MR + i]    q < 8: the 4 int8 values x_q[row i, 4q .. 4q+3] (one dword, for a vpdpbusd broadcast)
// then, Q8XTail::PerBlock (q8_0 / q4_0 weights; 10*MR dwords a block):
//   [8*MR + i]    -off * sum_{k in b} x_q[row i, k]: the correction of weights made unsigned by +off
//                 (q8_0: +128, q4_0: the raw nibble = q + 8); int32 accumulators start from it
//   [9*MR + i]    d_x of row i, block b (f32 bits)
// or Q8XTail::PerHalf (K-quant weights; 12*MR dwords a block):
//   [8*MR + i]    -off * S_0, S_0 = sum of x_q[row i, k] over the block's first 16 k (q6_K: off = 32,
//   [9*MR + i]    -off * S_1, S_1 = the same over its last 16 k          its codes' offset, per half)
//   [10*MR + i]   d_x (f32 bits)
//   [11*MR + i]   d_x * (S_0 + S_1) (f32 bits; exact: an 11-bit scale times |S| <= 4064), the
//                 factor of the q4_K / q5_K mins
// Rows past the end are zero (q = 0, corrections 0, f32 values +0.0f). The rounding is ggml's
// quantize_row_q8_0 (the small-M path's), so every kernel reading these panels sees the same X: on
// AVX-512 each row is rounded straight into its panels (gemm_q8_xquant.cpp, the same bits), else
// by qx_quantize_row_avx2 into a row buffer and then packed.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../../base/thread_pool.h"
#include "gemm_internal.h"

#if defined(__x86_64__)

namespace emollm {
namespace gemm_detail {

// What follows a block's 8 quads in the panels (layouts above).
enum class Q8XTail { PerBlock, PerHalf };

template <int MR, Q8XTail Tail = Q8XTail::PerBlock>
struct Q8XPanels {
  static constexpr int kMR = MR;
  static constexpr int kTailDwords = Tail == Q8XTail::PerBlock ? 2 : 4;  // per row
  static constexpr int64_t kBlockDwords = (8 + kTailDwords) * MR;

  // Rows per call of quantise_chunk: at most ~8 MiB of panels (a multiple of MR).
  static int64_t chunk_rows(int64_t K) {
    const int64_t panel_bytes = (K / kQK) * kBlockDwords * 4;
    return std::max<int64_t>(MR, ((int64_t(8) << 20) / panel_bytes) * MR);
  }

  // Panels [p0, p1) of the `rows` rows at X into out (panel p at out + p * nb * kBlockDwords).
  // qtmp / dtmp: one row of qx_quantize_row_avx2 output (K bytes, K/4 floats).
  static void pack(const float* X, int64_t ldx, int64_t rows, int64_t K, int64_t p0, int64_t p1, int off,
                   int8_t* qtmp, float* dtmp, int32_t* out) {
    const int64_t nb = K / kQK;
    static_assert(MR % 2 == 0, "qx_pack_row_avx512 takes panels of an even number of rows");
    const bool fused = qx_pack_fused() && isa_active() >= Isa::Avx512;
    const bool panel4 = MR == 4 && fused && qx_pack_panel4();
    for (int64_t p = p0; p < p1; ++p) {
      int32_t* o = out + p * nb * kBlockDwords;
      if (panel4 && p * MR + MR <= rows) {  // a whole panel: its 4 rows at once (the same dwords)
        qx_pack_panel4_avx512(X + p * MR * ldx, ldx, K, kTailDwords, off, o);
        continue;
      }
      for (int i = 0; i < MR; ++i) {
        const int64_t r = p * MR + i;
        if (r >= rows) {
          for (int64_t b = 0; b < nb; ++b) {
            int32_t* ob = o + b * kBlockDwords;
            for (int q = 0; q < 8 + kTailDwords; ++q) ob[q * MR + i] = 0;  // f32: +0.0f
          }
          continue;
        }
        if (fused) {
          qx_pack_row_avx512(X + r * ldx, K, MR, i, kTailDwords, off, o);
          continue;
        }
        qx_quantize_row_avx2(X + r * ldx, K, qtmp, dtmp, nullptr, 0);
        for (int64_t b = 0; b < nb; ++b) {
          int32_t* ob = o + b * kBlockDwords;
          const int8_t* qb = qtmp + b * kQK;
          for (int q = 0; q < 8; ++q) std::memcpy(&ob[q * MR + i], qb + 4 * q, 4);
          if constexpr (Tail == Q8XTail::PerBlock) {
            int32_t s = 0;
            for (int k = 0; k < kQK; ++k) s += qb[k];
            ob[8 * MR + i] = -off * s;
            std::memcpy(&ob[9 * MR + i], &dtmp[b * 8], 4);
          } else {
            int32_t s0 = 0, s1 = 0;
            for (int k = 0; k < kQK / 2; ++k) s0 += qb[k];
            for (int k = kQK / 2; k < kQK; ++k) s1 += qb[k];
            ob[8 * MR + i] = -off * s0;
            ob[9 * MR + i] = -off * s1;
            const float dx = dtmp[b * 8];
            const float dxs = dx * float(s0 + s1);
            std::memcpy(&ob[10 * MR + i], &dx, 4);
            std::memcpy(&ob[11 * MR + i], &dxs, 4);
          }
        }
      }
    }
  }

  // All panels of `rows` rows at X (rows <= chunk_rows(K)), quantised and packed in parallel into
  // the calling thread's scratch slot `slot` (workers use slot tmp_slot for one row); the pool's
  // workers may then read them.
  static const int32_t* quantise_chunk(const float* X, int64_t ldx, int64_t rows, int64_t K, int off,
                                       ThreadPool* pool, int slot, int tmp_slot) {
    const int64_t nb = K / kQK, npm = (rows + MR - 1) / MR;
    int32_t* xp = static_cast<int32_t*>(scratch(slot, size_t(npm * nb * kBlockDwords * 4)));
    parallel_pieces(pool, rows * K >= (1 << 15), npm, [&](int64_t p0, int64_t p1) {
      uint8_t* tmp = static_cast<uint8_t*>(scratch(tmp_slot, size_t(K) * 2 + 64));
      pack(X, ldx, rows, K, p0, p1, off, reinterpret_cast<int8_t*>(tmp),
           reinterpret_cast<float*>(tmp + (K + 63) / 64 * 64), xp);
    });
    return xp;
  }
};

}  // namespace gemm_detail
}  // namespace emollm

#endif  // __x86_64__
