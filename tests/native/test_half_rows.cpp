// Tests for the half-precision row conversions of the KV cache (kernels/cpu/half_rows.h) at every
// ISA level: narrowing must be bit for bit base/dtype.h's scalar f32_to_f16 / f32_to_bf16 (round
// to nearest even) on finite values and infinities, NaN must stay NaN; widening must be exact
// (bit for bit f16_to_f32 / bf16_to_f32) on every one of the 65536 half values.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../../base/cpu_features.h"
#include "../../base/dtype.h"
#include "../../base/error.h"
#include "../../kernels/cpu/half_rows.h"
#include "testing.h"

using namespace emollm;

namespace {

std::vector<Isa> all_levels() {
  std::vector<Isa> v{Isa::Scalar};
  if (isa_detected() >= Isa::Avx2) v.push_back(Isa::Avx2);
  if (isa_detected() >= Isa::Avx512) v.push_back(Isa::Avx512);
  return v;
}

// Values that exercise rounding: exact ties of both parities for f16 and bf16, values just around
// them, f16 subnormals and their ties, the f16 overflow threshold (65520 rounds to inf, 65519.99
// to 65504), huge, tiny, zeros of both signs, infinities; then random values of all magnitudes.
std::vector<float> edge_values() {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e30f, -1e-30f,
                          std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                          std::ldexp(1.0f, -24), std::ldexp(1.5f, -24), std::ldexp(2.5f, -24), std::ldexp(1.0f, -25),
                          std::ldexp(1.0f, -26), std::ldexp(1.0f, -14), std::ldexp(1.0f, -15), 3.0e-5f};
  for (uint32_t m : {0x3f801000u, 0x3f803000u, 0x3f800fffu, 0x3f801001u,   // f16 ties (even / odd) and neighbours
                     0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x3f808001u,   // bf16 ties and neighbours
                     0xc0a01000u, 0xc0a18000u, 0x477fefffu, 0x477ff000u})
    v.push_back(fp32_from_bits(m));
  uint64_t s = 0x2545F4914F6CDD1Dull;
  for (int i = 0; i < 4000; ++i) {  // random bit patterns, NaN excluded here (checked below)
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    const float f = fp32_from_bits(uint32_t(s));
    if (!std::isnan(f)) v.push_back(f);
  }
  return v;
}

}  // namespace

TEST(half_rows_narrow_matches_scalar_rounding) {
  const std::vector<float> x = edge_values();
  for (Isa isa : all_levels()) {
    IsaCapScope cap(isa);
    for (DType t : {DType::F16, DType::BF16}) {
      const half_rows::NarrowFn narrow = half_rows::narrow_fn(t);
      // every length 0..40 from every start offset 0..3 (tails, unaligned)
      for (int64_t off = 0; off < 4; ++off)
        for (int64_t n = 0; n <= 40; ++n) {
          std::vector<uint16_t> got(size_t(n) + 1, 0xABCD);
          narrow(x.data() + off, got.data(), n);
          bool ok = got[size_t(n)] == 0xABCD;  // nothing past n written
          for (int64_t i = 0; i < n; ++i) {
            const float f = x[size_t(off + i)];
            ok = ok && got[size_t(i)] == (t == DType::F16 ? f32_to_f16(f) : f32_to_bf16(f));
          }
          if (!ok) {
            EXPECT(ok);
            std::printf("    at isa=%s %s off=%lld n=%lld\n", isa_name(isa), dtype_name(t), (long long)off, (long long)n);
            break;
          }
        }
      std::vector<uint16_t> all(x.size());
      narrow(x.data(), all.data(), int64_t(x.size()));
      size_t bad = 0;
      for (size_t i = 0; i < x.size(); ++i) bad += all[i] != (t == DType::F16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]));
      EXPECT(bad == 0);
      // NaN stays NaN (quiet) through the rounding
      std::vector<float> nans(37, std::nanf(""));
      nans[5] = -std::nanf("");
      std::vector<uint16_t> hn(nans.size());
      narrow(nans.data(), hn.data(), int64_t(nans.size()));
      for (uint16_t h : hn) EXPECT(std::isnan(t == DType::F16 ? f16_to_f32(h) : bf16_to_f32(h)));
    }
  }
}

TEST(half_rows_widen_is_exact) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = uint16_t(i);
  for (Isa isa : all_levels()) {
    IsaCapScope cap(isa);
    for (DType t : {DType::F16, DType::BF16}) {
      const half_rows::WidenFn widen = half_rows::widen_fn(t);
      std::vector<float> got(all.size() + 1, 7.0f);
      widen(all.data() + 1, got.data(), int64_t(all.size()) - 1);  // odd length, unaligned source
      size_t bad = got[all.size() - 1] != 7.0f ? 1 : 0;
      for (size_t i = 0; i + 1 < all.size(); ++i) {
        const float want = t == DType::F16 ? f16_to_f32(all[i + 1]) : bf16_to_f32(all[i + 1]);
        const bool same = std::isnan(want) ? std::isnan(got[i]) : fp32_to_bits(got[i]) == fp32_to_bits(want);
        bad += same ? 0 : 1;
      }
      EXPECT(bad == 0);
    }
  }
  EXPECT_THROWS(half_rows::widen_fn(DType::Q8_0), ErrorCode::Unsupported);
  EXPECT_THROWS(half_rows::narrow_fn(DType::Q4_0), ErrorCode::Unsupported);
}
