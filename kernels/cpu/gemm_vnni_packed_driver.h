// The cache-blocked driver of the int8 VNNI packed GEMMs at M > kSmallM (gemm_q8_vnni.cpp for
// q8_0 / q4_0 weights, gemm_kquant_vnni.cpp for q4_K / q5_K / q6_K), as the f32 packed GEMM's
// (gemm_avx512.cpp): X in chunks of rows (at most ~8 MiB of panels each) rounded to q8_0 and
// packed in parallel (gemm_q8_xpanel.h); then each chunk's M x N work split between threads by
// weight-row chunks (each thread packs its own part of W) when there are enough of them, else by X
// row panels (split_packed_gemm); a thread packs W KCB blocks x NC rows at a time into L2 (scratch
// slot 0) and runs the MR x NR microkernel over its X panels. Each output's k blocks are summed in
// order: the first KCB-block's sums are stored (plus the bias), later ones added.
// Include only from x86-64 translation units.
#pragma once
#include <algorithm>
#include <cstdint>

#include "gemm_internal.h"

namespace emollm {
namespace gemm_detail {

// Kernel: a type with the static members
//   kMR, kNR, kKCB, kNC   X rows and weight rows per microkernel; k blocks (of 32) and weight rows
//                         per L2 block (kNC a multiple of kNR)
//   XPanels               the X panel packer (Q8XPanels<kMR, ...>)
//   kWBlk                 dwords per W panel block
//   pack_w(W, row_bytes, n0, nv, b0, kb, out)      W rows [n0, n0 + nv) x k blocks [b0, b0 + kb)
//                         into panels of kNR rows, panel p at out + p * kb * kWBlk
//   kern(kb, xp, wp, y, ldy, mr, nr, bias, first)  Y[i, 0:nr] (= if first, else +=) the kb blocks'
//                         sums of X panel xp and W panel wp (+ bias when first), i < mr
// off: the X panels' correction factor (Q8XPanels::quantise_chunk).
template <class Kernel>
void vnni_packed_gemm(const Args& a, int off) {
  constexpr int MR = Kernel::kMR;
  constexpr int64_t NR = Kernel::kNR, KCB = Kernel::kKCB, NC = Kernel::kNC;
  constexpr int64_t XBLK = Kernel::XPanels::kBlockDwords, WBLK = Kernel::kWBlk;
  const uint8_t* W = static_cast<const uint8_t*>(a.W);
  const int64_t nb = a.K / kQK;
  // Rows [m_begin, m_end) (m_begin a multiple of MR) x weight rows [n_begin, n_end) of one X chunk.
  auto compute_range = [&](float* Y, const int32_t* xp, int64_t m_begin, int64_t m_end, int64_t n_begin,
                           int64_t n_end) {
    int32_t* wpack = static_cast<int32_t*>(scratch(0, size_t(KCB) * WBLK * 4 * (NC / NR)));
    for (int64_t jc = n_begin; jc < n_end; jc += NC) {
      const int64_t nc = std::min(NC, n_end - jc);
      for (int64_t pb = 0; pb < nb; pb += KCB) {
        const int64_t kb = std::min(KCB, nb - pb);
        Kernel::pack_w(W, a.row_bytes, jc, nc, pb, kb, wpack);
        for (int64_t m0 = m_begin; m0 < m_end; m0 += MR) {
          const int mr = int(std::min<int64_t>(MR, m_end - m0));
          const int32_t* xpanel = xp + ((m0 / MR) * nb + pb) * XBLK;
          for (int64_t jp = 0; jp * NR < nc; ++jp) {
            float* y = Y + m0 * a.ldy + jc + jp * NR;
            const float* bias = a.bias ? a.bias + jc + jp * NR : nullptr;
            Kernel::kern(kb, xpanel, wpack + jp * kb * WBLK, y, a.ldy, mr, nc - jp * NR, bias, pb == 0);
          }
        }
      }
    }
  };
  const int64_t mc = Kernel::XPanels::chunk_rows(a.K);
  for (int64_t m0 = 0; m0 < a.M; m0 += mc) {
    const int64_t mcur = std::min(mc, a.M - m0);
    const int32_t* xp = Kernel::XPanels::quantise_chunk(a.X + m0 * a.ldx, a.ldx, mcur, a.K, off, a.pool, 2, 1);
    float* Y = a.Y + m0 * a.ldy;
    split_packed_gemm(a.pool, mcur, a.N, a.K, MR, NR, NC, [&](int64_t r0, int64_t r1, int64_t n0, int64_t n1) {
      compute_range(Y, xp, r0, r1, n0, n1);
    });
  }
}

}  // namespace gemm_detail
}  // namespace emollm
