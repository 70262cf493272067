// Internal interface between gemm_quant_ext.cpp (dispatch, X rounding) and gemv_kquant_vnni.cpp
// (the decode-shaped products of q4_K / q5_K / q6_K weights on AVX-512 VNNI). Not public API.
#pragma once

#include <cstdint>

#include "gemm_internal.h"

namespace emollm {
namespace gemm_detail {

#if defined(__x86_64__)
// Y = X * W^T (+ bias) for Q4_K / Q5_K / Q6_K weights and M <= kSmallM rows, with X already
// rounded to q8_0 in q (qx_quantize_row_*: q.qs, q.dxe, and for Q6_K q.neg with off = 32).
// Reads the weights in their GGUF layout; splits the weight rows over a.pool. Requires AVX-512
// VNNI (cpu_features().avx512vnni).
void gemv_kquant_vnni(const Args& a, const QX& q);
// The same product for q4_K / q6_K weights in kquant_repack's 16-row records (a.W; a.row_bytes
// unused), X in f32 (rounded to q8_0 here, as above): one sequential stream per 16 rows, no
// horizontal sums. 1 <= M <= kSmallM, K % 256 == 0. Requires AVX-512 VNNI.
void gemv_kquant_records(const Args& a);
// M = 1 against several outputs' records (Args: W, bias, Y, N of each; the X, K, wtype and pool
// of outs[0]): each output bit for bit gemv_kquant_records, x rounded once, one dispatch.
void gemv_kquant_records_multi(const Args* outs, int n);
#endif

#if defined(__x86_64__)
// Streams a thread's lean pass reads side by side: 2 (its super-groups in two contiguous parts)
// or 1 (other values: 2 from 2 up, else 1); the default per CPU (decode_tuning.h: 2, one on
// double-pumped AVX-512). Its software prefetch (decode_tuning.h kquant_prefetch: T0 every line,
// with two streams 2 KiB (q4_K) / 4 KiB (q6_K) ahead, 8 KiB with one; None: no prefetch, on
// double-pumped AVX-512),
// and an explicit distance that overrides it (bytes; 0: none; -1: follow kquant_prefetch). Same
// bits at any; for the tests and A/B runs (no environment variable).
void set_kquant_streams(int streams);
int kquant_streams();
void set_kquant_prefetch(GemvPrefetch p);
GemvPrefetch kquant_prefetch();
void set_kquant_stream_prefetch(int64_t bytes);
// The M = 1 dispatch's first claim on a thread's own range of super-groups (base/thread_pool.h
// parallel_ranges owner_keep): all of it but the last `groups` super-groups, or -1: claims of at
// most sg_chunk's as before (M > 1: always those). Same bits. decode_tuning.h kquant_owner_keep;
// values below -1 read -1. For the tests and A/B tools.
void set_kquant_owner_keep(int groups);
int kquant_owner_keep();
#endif

}  // namespace gemm_detail
}  // namespace emollm
