// The per-CPU defaults of the decode GEMVs' read patterns (kernels/cpu/decode_tuning.h): the trait
// they key on (base/cpu_features.h avx512_double_pumped: AMD family 25 with AVX-512), the table's
// two rows (Zen 5 keeps the defaults measured there; double-pumped AVX-512 reads without software
// prefetch, the K-quant pass on one stream without software prefetch, the decode attention's
// pipelined prefetch into L2, its lean narrow-row piece, its P V pairs a chunk at a time across the
// token rows and its wide-row sub-blocks as two of 8 rows with the next 8 prefetched into L2 (attn_wide_pf /
// attn_wide8: DecodeWide::All, f16 / bf16 caches and f32 ones on the 7B's shape; Zen 5: Off; f32's prefetch in
// address order, every 8th line: attn_wide_lin 8), the q8_0 pass in
// 2 parts a thread without software prefetch (Zen 5:
// 4 parts, T0 1 KiB ahead), the bf16 block GEMV without software prefetch, long bf16 / f16 rows
// on 6 streams a thread (f16 ones in runs of two steps a row), the q4_0 / q8_0 M = 1 dispatch's first
// claims all of a thread's range but its last pass; the K-quant and stream kernels' first claims as
// today's on both rows), that the process-wide settings start from the table's row for this CPU, and
// that apply_decode_tuning sets every one of them (the q4_0 pass's prefetch distance and those two
// owner_keep entries, the same on both rows, too). That every setting gives the same bits is
// checked where each kernel is tested (test_gemm.cpp gemv_q40_ms_bit_equal_one_stream,
// gemv_q80_parts_bit_equal_four_group_pass, gemm_huge_pages_multi_stream_gemv and
// gemm_huge_pages_half_long_streams_same_bits, gemv_repacked_claims_same_bits,
// gemm_huge_pages_stream_claims_same_bits, test_gemv_f32_stream.cpp, test_kquant_records.cpp
// kquant_records_lean_same_bits_as_m2, kquant_records_claims_same_bits,
// test_attention.cpp attention_decode_pipeline_l2_same_bits, attention_decode_lean_same_bits,
// attention_decode_lean_large_partials_same_bits, attention_decode_pv_chunks_same_bits,
// attention_decode_wide_pf_same_bits, attention_decode_wide8_same_bits, attention_decode_wide_lin_same_bits).
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
  EXPECT(a.q80_streams == 4);
  EXPECT(b.stream_prefetch == GemvPrefetch::None);
  EXPECT(b.q40_prefetch == GemvPrefetch::None);
  EXPECT(a.q40_addr_order && b.q40_addr_order);  // Zen 5 with its T0 loop (session 33), Zen 4 without prefetch
  EXPECT(b.kquant_streams == 1);
  EXPECT(b.attn_pipeline_l2);
  EXPECT(!a.attn_decode_lean && b.attn_decode_lean);
  EXPECT(!a.attn_pv_chunks && b.attn_pv_chunks);
  // the 7B's wide-row sub-blocks: off on Zen 5, All on Zen 4 (f32 caches on the 7B's shape, their prefetch in
  // address order, every 8th line)
  using attention_detail::DecodeWide;
  EXPECT(a.attn_wide_pf == int(DecodeWide::Off) && a.attn_wide8 == int(DecodeWide::Off));
  EXPECT(b.attn_wide_pf == int(DecodeWide::All) && b.attn_wide8 == int(DecodeWide::All));
  EXPECT(a.attn_wide_lin == 0 && b.attn_wide_lin == 8);
  EXPECT(b.q80_streams == 2);
  EXPECT(a.q80_prefetch == GemvPrefetch::T0 && b.q80_prefetch == GemvPrefetch::None);
  EXPECT(a.q80_ahead == 1024 && b.q80_ahead == 4096);
  EXPECT(a.kquant_prefetch == GemvPrefetch::T0);
  EXPECT(b.kquant_prefetch == GemvPrefetch::None);
  EXPECT(a.block_prefetch == GemvPrefetch::T0);
  EXPECT(b.block_prefetch == GemvPrefetch::None);
  EXPECT(a.half_long_streams == 4 && b.half_long_streams == 6);
  EXPECT(a.half_long_runs == 0 && b.half_long_runs == 1);  // the 6-stream rows' two-step runs: f16 on Zen 4
  EXPECT(a.gemv_owner_keep == -1 && b.gemv_owner_keep == 1);  // the M = 1 dispatch's long first claims on Zen 4
  // the K-quant and stream kernels' M = 1 dispatches: the K-quants' long first claim on Zen 5, the stream
  // kernels' claims as before on both rows
  EXPECT(a.kquant_owner_keep == 1 && b.kquant_owner_keep == -1);  // Zen 5's quiet 2-thread win (session 33)
  EXPECT(a.stream_owner_keep == -1 && b.stream_owner_keep == -1);
  // the q4_0 pass's prefetch distance: Zen 5 2 KiB (session 33), Zen 4 4 KiB (a cold start's only)
  EXPECT(a.q40_ahead == 2048 && b.q40_ahead == 4096);
}

namespace {
// How many of the process-wide settings differ from row t (0: all equal).
int settings_differing_from(const gemm_detail::DecodeTuning& t) {
  int n = 0;
  n += attention_detail::decode_pipeline_l2() != t.attn_pipeline_l2;
  n += attention_detail::decode_lean() != t.attn_decode_lean;
  n += attention_detail::decode_pv_chunks() != t.attn_pv_chunks;
  n += int(attention_detail::decode_wide_pf_mode()) != t.attn_wide_pf;
  n += int(attention_detail::decode_wide8_mode()) != t.attn_wide8;
  n += attention_detail::decode_wide_lin() != t.attn_wide_lin;
  n += gemm_detail::q80_streams() != t.q80_streams;
  n += gemm_detail::q80_prefetch() != t.q80_prefetch;
  n += gemm_detail::q80_ahead() != t.q80_ahead;
  n += gemm_detail::gemv_streams_prefetch() != t.stream_prefetch;
  n += gemm_detail::q40_ms_prefetch() != t.q40_prefetch;
  n += gemm_detail::q40_ms_addr_order() != t.q40_addr_order;
  n += gemm_detail::q40_ms_ahead() != t.q40_ahead;
  n += gemm_detail::gemv_block_prefetch() != t.block_prefetch;
  n += gemm_detail::gemv_half_long_streams() != t.half_long_streams;
  n += gemm_detail::gemv_half_long_runs() != t.half_long_runs;
  n += gemm_detail::gemv_owner_keep() != t.gemv_owner_keep;
  n += gemm_detail::gemv_streams_owner_keep() != t.stream_owner_keep;
#if defined(__x86_64__)
  n += gemm_detail::kquant_streams() != t.kquant_streams;
  n += gemm_detail::kquant_prefetch() != t.kquant_prefetch;
  n += gemm_detail::kquant_owner_keep() != t.kquant_owner_keep;
#endif
  return n;
}
}  // namespace

// Every test that changes one of these settings restores it, so they still hold the start values:
// this CPU's row. apply_decode_tuning then sets the other row whole, and this CPU's back.
TEST(decode_tuning_settings_start_from_the_table) {
  const gemm_detail::DecodeTuning& t = gemm_detail::decode_tuning();
  EXPECT(settings_differing_from(t) == 0);
  CpuFeatures other = cpu_features();
  other.avx512_double_pumped = !other.avx512_double_pumped;
  const gemm_detail::DecodeTuning o = gemm_detail::decode_tuning_for(other);
  // entries both rows share (the stream kernels' owner_keep, the q4_0 pass's address order): moved off
  // first, so that apply_decode_tuning must set them too
  gemm_detail::set_gemv_streams_owner_keep(2);
  gemm_detail::set_q40_ms_addr_order(!o.q40_addr_order);
  gemm_detail::apply_decode_tuning(o);
  const int after_other = settings_differing_from(o);
  // the entries the two rows differ in: 19 (stream, q4_0 prefetch and distance, K-quant streams,
  // prefetch and owner_keep, block prefetch, half_long_streams and half_long_runs, the q8_0 parts /
  // prefetch / distance, the q4_0 / q8_0 M = 1 dispatch's owner_keep, the attention's L2 pipeline,
  // lean piece, P V chunks, wide_pf, wide8 and wide_lin; the q4_0 pass's address order (since session
  // 33) and the stream kernels' owner_keep are the same on both), 16 off x86-64 (no K-quant entries)
#if defined(__x86_64__)
  const int differing = 19;
#else
  const int differing = 16;
#endif
  const int moved = settings_differing_from(t);
  gemm_detail::apply_decode_tuning(t);
  EXPECT(after_other == 0);
  EXPECT(moved == differing);
  EXPECT(settings_differing_from(t) == 0);
}

// gemv_repacked's M = 1 form (gemm_internal.h gemv_m1_form, what repacked_groups dispatches on)
// from each CPU's row: Zen 4 q4_0 on two streams without software prefetch, a record's loads in
// address order, q8_0 in 2 parts without prefetch; Zen 5 q4_0 in address order with T0 along the
// streams (session 33; t-major before), q8_0 in 4 parts with T0. set_q40_ms_addr_order(false) gives
// t-major under every hint; the 17th q8_0 prefetch only with a hint; the process-wide settings lead
// where their setters say. A Zen 5 row back in t-major (its form before session 33) fails here.
TEST(decode_tuning_gemv_m1_forms) {
  using namespace gemm_detail;
  CpuFeatures zen5, zen4;
  zen5.avx512f = zen4.avx512f = true;
  zen4.avx512_double_pumped = true;
  const GemvM1Settings s5 = gemv_m1_settings(decode_tuning_for(zen5)), s4 = gemv_m1_settings(decode_tuning_for(zen4));
  auto form = [](GemvPass pass, int streams, GemvPrefetch hint, bool addr, bool line17) {
    GemvM1Form f;
    f.pass = pass, f.streams = streams, f.hint = hint, f.addr_order = addr, f.line17 = line17;
    return f;
  };
  EXPECT(gemv_m1_form(false, s4) == form(GemvPass::Q40Streams, 2, GemvPrefetch::None, true, false));
  EXPECT(gemv_m1_form(true, s4) == form(GemvPass::Q80Parts, 2, GemvPrefetch::None, false, false));
  EXPECT(gemv_m1_form(false, s5) == form(GemvPass::Q40Streams, 2, GemvPrefetch::T0, true, false));
  EXPECT(gemv_m1_form(true, s5) == form(GemvPass::Q80Parts, 4, GemvPrefetch::T0, false, false));
  // the address order: off by its setting, on under every prefetch hint (the loop of a record's 18
  // prefetches before it, then its loads in address order: Zen 5's row since session 33)
  GemvM1Settings s = s4;
  s.q40_addr_order = false;
  EXPECT(gemv_m1_form(false, s) == form(GemvPass::Q40Streams, 2, GemvPrefetch::None, false, false));
  for (GemvPrefetch p : {GemvPrefetch::T0, GemvPrefetch::T1, GemvPrefetch::Nta}) {
    s = s4;
    s.q40_prefetch = p;
    EXPECT(gemv_m1_form(false, s) == form(GemvPass::Q40Streams, 2, p, true, false));
    s.q40_addr_order = false;
    EXPECT(gemv_m1_form(false, s) == form(GemvPass::Q40Streams, 2, p, false, false));
  }
  // the passes of adjacent groups: q40_ms off, q80_streams 0
  s = s4;
  s.q40_ms = false, s.q80_streams = 0;
  EXPECT(gemv_m1_form(false, s) == GemvM1Form{});
  EXPECT(gemv_m1_form(true, s) == GemvM1Form{});
  // the 17th q8_0 prefetch: with a hint only
  s = s5;
  s.q80_line17 = true;
  EXPECT(gemv_m1_form(true, s).line17);
  s = s4;
  s.q80_line17 = true;
  EXPECT(!gemv_m1_form(true, s).line17);
  // the process-wide settings: this CPU's row at start, then what the setters store (restored after)
  EXPECT(gemv_m1_form(false, gemv_m1_settings()) == gemv_m1_form(false, gemv_m1_settings(decode_tuning())));
  EXPECT(gemv_m1_form(true, gemv_m1_settings()) == gemv_m1_form(true, gemv_m1_settings(decode_tuning())));
  const GemvPrefetch p0 = q40_ms_prefetch();
  const bool a0 = q40_ms_addr_order();
  set_q40_ms_prefetch(GemvPrefetch::None);
  set_q40_ms_addr_order(true);
  const bool on = gemv_m1_form(false, gemv_m1_settings()).addr_order;
  set_q40_ms_addr_order(false);
  const bool off = gemv_m1_form(false, gemv_m1_settings()).addr_order;
  set_q40_ms_addr_order(true);
  set_q40_ms_prefetch(GemvPrefetch::T1);
  const GemvM1Form t1 = gemv_m1_form(false, gemv_m1_settings());
  set_q40_ms_prefetch(p0);
  set_q40_ms_addr_order(a0);
  EXPECT(on && !off);
  EXPECT(t1 == form(GemvPass::Q40Streams, 2, GemvPrefetch::T1, true, false));
}
