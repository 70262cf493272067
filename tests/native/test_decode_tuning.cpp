// The per-CPU defaults of the decode GEMVs' read patterns (kernels/cpu/decode_tuning.h): the trait
// they key on (base/cpu_features.h avx512_double_pumped: AMD family 25 with AVX-512), the table's
// two rows (Zen 5 keeps the defaults measured there; double-pumped AVX-512 reads without software
// prefetch, the K-quant pass on one stream without software prefetch, the decode attention's
// pipelined prefetch into L2 and the q8_0 pass in 2 parts a thread), and that the process-wide
// settings start from the table's row for this CPU. That every setting gives the same bits is
// checked where each kernel is tested (test_gemm.cpp gemv_q40_ms_bit_equal_one_stream,
// gemv_q80_parts_bit_equal_four_group_pass and gemm_huge_pages_multi_stream_gemv,
// test_gemv_f32_stream.cpp, test_kquant_records.cpp kquant_records_lean_same_bits_as_m2,
// test_attention.cpp attention_decode_pipeline_l2_same_bits).
#include <cstdio>

#include "base/cpu_features.h"
#include "../../kernels/cpu/attention_internal.h"
#include "../../kernels/cpu/decode_tuning.h"
#include "../../kernels/cpu/gemm_internal.h"
#include "../../kernels/cpu/gemv_kquant_vnni.h"
#include "testing.h"

using namespace emollm;

TEST(decode_tuning_double_pumped_trait) {
  EXPECT(avx512_double_pumped_cpu(true, 25, true));    // Zen 4
  EXPECT(!avx512_double_pumped_cpu(true, 25, false));  // Zen 3: same family, no AVX-512
  EXPECT(!avx512_double_pumped_cpu(true, 26, true));   // Zen 5: full-width units
  EXPECT(!avx512_double_pumped_cpu(true, 23, true));
  EXPECT(!avx512_double_pumped_cpu(false, 25, true));
  EXPECT(!avx512_double_pumped_cpu(false, 6, true));
  const CpuFeatures& f = cpu_features();
  EXPECT(f.avx512_double_pumped == avx512_double_pumped_cpu(f.amd, f.family, f.avx512f));
  std::printf("  %s (family %d model %d): avx512_double_pumped=%d\n", f.brand.c_str(), f.family, f.model,
              int(f.avx512_double_pumped));
}

TEST(decode_tuning_table_rows) {
  using gemm_detail::GemvPrefetch;
  CpuFeatures zen5, zen4;
  zen5.avx512f = zen4.avx512f = true;
  zen4.avx512_double_pumped = true;
  const gemm_detail::DecodeTuning a = gemm_detail::decode_tuning_for(zen5), b = gemm_detail::decode_tuning_for(zen4);
  EXPECT(a.stream_prefetch == GemvPrefetch::T0);
  EXPECT(a.q40_prefetch == GemvPrefetch::T0);
  EXPECT(a.kquant_streams == 2);
  EXPECT(!a.attn_pipeline_l2);
  EXPECT(a.q80_streams == 0);
  EXPECT(b.stream_prefetch == GemvPrefetch::None);
  EXPECT(b.q40_prefetch == GemvPrefetch::None);
  EXPECT(b.kquant_streams == 1);
  EXPECT(b.attn_pipeline_l2);
  EXPECT(b.q80_streams == 2);
  EXPECT(a.q80_prefetch == GemvPrefetch::None && b.q80_prefetch == GemvPrefetch::None);
  EXPECT(a.kquant_prefetch == GemvPrefetch::T0);
  EXPECT(b.kquant_prefetch == GemvPrefetch::None);
  EXPECT(a.block_prefetch == GemvPrefetch::T0);
  EXPECT(b.block_prefetch == GemvPrefetch::None);
  EXPECT(!a.q40_even_claims);
  EXPECT(b.q40_even_claims);
}

// Every test that changes one of these settings restores it, so they still hold the start values.
TEST(decode_tuning_settings_start_from_the_table) {
  const gemm_detail::DecodeTuning& t = gemm_detail::decode_tuning();
  const gemm_detail::DecodeTuning d = gemm_detail::decode_tuning_for(cpu_features());
  EXPECT(t.stream_prefetch == d.stream_prefetch && t.q40_prefetch == d.q40_prefetch &&
         t.kquant_streams == d.kquant_streams && t.kquant_prefetch == d.kquant_prefetch &&
         t.attn_pipeline_l2 == d.attn_pipeline_l2 && t.q80_streams == d.q80_streams &&
         t.q80_prefetch == d.q80_prefetch && t.block_prefetch == d.block_prefetch &&
         t.q40_even_claims == d.q40_even_claims);
  EXPECT(attention_detail::decode_pipeline_l2() == t.attn_pipeline_l2);
  EXPECT(gemm_detail::q80_streams() == t.q80_streams);
  EXPECT(gemm_detail::q80_prefetch() == t.q80_prefetch);
  EXPECT(gemm_detail::gemv_even_claims() == t.q40_even_claims);
  EXPECT(gemm_detail::gemv_streams_prefetch() == t.stream_prefetch);
  EXPECT(gemm_detail::q40_ms_prefetch() == t.q40_prefetch);
  EXPECT(gemm_detail::gemv_block_prefetch() == t.block_prefetch);
#if defined(__x86_64__)
  EXPECT(gemm_detail::kquant_streams() == t.kquant_streams);
#endif
}
