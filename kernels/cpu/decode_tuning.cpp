#include "decode_tuning.h"

#include "../../base/cpu_features.h"

namespace emollm {
namespace gemm_detail {

DecodeTuning decode_tuning_for(const CpuFeatures& f) {
  if (f.avx512_double_pumped) return DecodeTuning{GemvPrefetch::None, GemvPrefetch::None, 1, true};
  return DecodeTuning{GemvPrefetch::T0, GemvPrefetch::T0, 2, false};
}

const DecodeTuning& decode_tuning() {
  static const DecodeTuning t = decode_tuning_for(cpu_features());
  return t;
}

}  // namespace gemm_detail
}  // namespace emollm
