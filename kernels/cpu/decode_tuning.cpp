#include "decode_tuning.h"

#include "../../base/cpu_features.h"

namespace emollm {
namespace gemm_detail {

DecodeTuning decode_tuning_for(const CpuFeatures& f) {
  // Named fields, not positional: one row per CPU kind, each entry's reason in decode_tuning.h.
  DecodeTuning t;
  if (f.avx512_double_pumped) {  // Zen 4 (sessions 25-26)
    t.stream_prefetch = GemvPrefetch::None;
    t.q40_prefetch = GemvPrefetch::None;
    t.kquant_streams = 1;
    t.kquant_prefetch = GemvPrefetch::None;
    t.attn_pipeline_l2 = true;
    t.q80_streams = 2;
    t.q80_prefetch = GemvPrefetch::None;
    t.block_prefetch = GemvPrefetch::None;
    t.q40_even_claims = true;
  } else {  // full-width AVX-512 (Zen 5, Intel) and every other CPU: the defaults measured on Zen 5
    t.stream_prefetch = GemvPrefetch::T0;
    t.q40_prefetch = GemvPrefetch::T0;
    t.kquant_streams = 2;
    t.kquant_prefetch = GemvPrefetch::T0;
    t.attn_pipeline_l2 = false;
    t.q80_streams = 0;
    t.q80_prefetch = GemvPrefetch::None;
    t.block_prefetch = GemvPrefetch::T0;
    t.q40_even_claims = false;
  }
  return t;
}

const DecodeTuning& decode_tuning() {
  static const DecodeTuning t = decode_tuning_for(cpu_features());
  return t;
}

}  // namespace gemm_detail
}  // namespace emollm
