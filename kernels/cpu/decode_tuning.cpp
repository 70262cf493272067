#include "decode_tuning.h"

#include "../../base/cpu_features.h"
#include "attention_internal.h"
#include "gemm_internal.h"
#include "gemv_kquant_vnni.h"

namespace emollm {
namespace gemm_detail {

DecodeTuning decode_tuning_for(const CpuFeatures& f) {
  DecodeTuning t;  // the full-width row (decode_tuning.h's initializers)
  if (f.avx512_double_pumped) {  // Zen 4: what differs (sessions 25-26; reasons in decode_tuning.h)
    t.stream_prefetch = GemvPrefetch::None;
    t.q40_prefetch = GemvPrefetch::None;
    t.q40_addr_order = true;
    t.kquant_streams = 1;
    t.kquant_prefetch = GemvPrefetch::None;
    t.attn_pipeline_l2 = true;
    t.attn_decode_lean = true;
    t.attn_pv_chunks = true;
    // attention_detail::DecodeWide::All: f16 / bf16 (session 30), f32 (session 32: rows back to back, head_dim
    // 113-128; other f32 shapes keep the 16 rows) caches
    t.attn_wide_pf = 2;
    t.attn_wide8 = 2;
    t.attn_wide_lin = 8;  // f32: the prefetch in address order, every 8th line (session 32)
    t.q80_streams = 2;
    t.q80_prefetch = GemvPrefetch::None;
    t.q80_ahead = 4096;
    t.q40_ahead = 4096;  // a cold start's prefetch (its pass runs without prefetch; Zen 5: 2 KiB)
    t.block_prefetch = GemvPrefetch::None;
    t.half_long_streams = 6;
    t.half_long_runs = 1;  // f16 (bf16 at 2 threads 0.95-0.99x: session 32)
    t.gemv_owner_keep = 1;
    t.kquant_owner_keep = -1;  // Zen 5 takes 1 (session 33, quiet 2 threads); not measured here
    // stream_owner_keep: -1 as the full-width row (within the noise on Zen 5; not measured here)
  }
  return t;
}

const DecodeTuning& decode_tuning() {
  static const DecodeTuning t = decode_tuning_for(cpu_features());
  return t;
}

void apply_decode_tuning(const DecodeTuning& t) {
  set_gemv_streams_prefetch(t.stream_prefetch);
  set_q40_ms_prefetch(t.q40_prefetch);
  set_q40_ms_addr_order(t.q40_addr_order);
  set_q40_ms_ahead(t.q40_ahead);
#if defined(__x86_64__)
  set_kquant_streams(t.kquant_streams);
  set_kquant_prefetch(t.kquant_prefetch);
  set_kquant_stream_prefetch(-1);  // the distance follows kquant_prefetch and the stream count
  set_kquant_owner_keep(t.kquant_owner_keep);
#endif
  attention_detail::set_decode_pipeline_l2(t.attn_pipeline_l2);
  attention_detail::set_decode_lean(t.attn_decode_lean);
  attention_detail::set_decode_pv_chunks(t.attn_pv_chunks);
  attention_detail::set_decode_wide_pf_mode(attention_detail::DecodeWide(t.attn_wide_pf));
  attention_detail::set_decode_wide8_mode(attention_detail::DecodeWide(t.attn_wide8));
  attention_detail::set_decode_wide_lin(t.attn_wide_lin);
  set_q80_streams(t.q80_streams);
  set_q80_prefetch(t.q80_prefetch);
  set_q80_ahead(t.q80_ahead);
  set_gemv_block_prefetch(t.block_prefetch);
  set_gemv_half_long_streams(t.half_long_streams);
  set_gemv_half_long_runs(t.half_long_runs);
  set_gemv_owner_keep(t.gemv_owner_keep);
  set_gemv_streams_owner_keep(t.stream_owner_keep);
}

}  // namespace gemm_detail
}  // namespace emollm
