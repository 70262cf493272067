// q4_K / q6_K weights in kquant_repack's records of 32 or 64 rows (kquant_records.h): the
// layout against the GGUF bytes it came from, the decode GEMV on it (gemv_kquant_records) against
// the float64 sum with the documented bound and bit for bit the same on every record size, and
// the prefill on it bit for bit the prefill on the GGUF bytes.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../../base/error.h"
#include "../../base/quant_formats.h"
#include "../../base/thread_pool.h"
#include "../../kernels/cpu/gemm_internal.h"
#include "../../kernels/cpu/gemm_kquant_vnni.h"
#include "../../kernels/cpu/kernels.h"
#include "../../kernels/cpu/kquant_records.h"
#include "core/backend.h"
#include "kquant_test_weights.h"
#include "pool_claims.h"
#include "testing.h"

using namespace emollm;
using emollm_test::normal_floats;

namespace {

bool have_vnni() {
#if defined(__x86_64__)
  return isa_detected() >= Isa::Avx512 && cpu_features().avx512vnni;
#else
  return false;
#endif
}

std::vector<uint8_t> repacked(DType t, const std::vector<uint8_t>& w, int64_t N, int64_t K, ThreadPool* pool) {
  std::vector<uint8_t> r(kquant_repack_bytes(t, N, K) + 64);
  uint8_t* p = r.data() + (64 - reinterpret_cast<uintptr_t>(r.data()) % 64) % 64;  // the kernels' aligned loads
  kquant_repack(w.data(), t, N, K, p, pool);
  r.resize(size_t(p - r.data()) + kquant_repack_bytes(t, N, K));
  return r;
}
const uint8_t* aligned(const std::vector<uint8_t>& r, DType t, int64_t N, int64_t K) {
  return r.data() + (r.size() - kquant_repack_bytes(t, N, K));
}

// Records of `rows` rows (set_kquant_record_rows) for the scope's life, then the previous size.
struct RecordRows {
  int prev;
  explicit RecordRows(int rows) : prev(int(kquant_record_rows())) { set_kquant_record_rows(rows); }
  ~RecordRows() { set_kquant_record_rows(prev); }
};
constexpr int kRecordRows[] = {32, 64};  // the 16-row records are gone (kquant_records.h)

}  // namespace

// Every row of every record dequantised from the record (codes, fp16 d / dmin, unpacked scales)
// equals dequantize_row of the GGUF row bit for bit (the same f32 formula), and the padding rows
// of the last record are zero. Records of 32 and 64 rows, N not a multiple of them, 1 to 9
// super-blocks, quantised rows and random bytes, with and without a pool.
TEST(kquant_records_layout_matches_gguf) {
  ThreadPool pool(3);
  int rows = 0;
  for (int rr : kRecordRows)
  for (DType t : {DType::Q4_K, DType::Q6_K})
    for (int64_t N : {1, 16, 17, 45, 100})
      for (int64_t K : {256, 768, 2304})
        for (bool random_bytes : {false, true})
          for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
            const RecordRows rows_scope(rr);
            const std::vector<uint8_t> w = emollm_test::kquant_weights(t, N, K, random_bytes, 9u + uint32_t(N + K));
            const std::vector<uint8_t> r = repacked(t, w, N, K, p);
            const uint8_t* R = aligned(r, t, N, K);
            const int64_t ns = K / 256, records = (N + rr - 1) / rr;
            const gemm_detail::KqLayout L{t == DType::Q6_K, rr / 16, ns};
            EXPECT(kquant_repack_bytes(t, N, K) == size_t(records) * L.sg_bytes());
            std::vector<float> ref(static_cast<size_t>(K));
            for (int64_t n = 0; n < records * rr; ++n) {
              if (n < N) dequantize_row(t, w.data() + size_t(n) * dtype_row_bytes(t, K), ref.data(), K);
              int bad = 0;
              for (int64_t s = 0; s < ns; ++s) {
                const uint8_t* rp = L.record(R, n / 16, s);
                const int gi = int(n / 16 % L.G), r16 = int(n % 16);
                uint8_t u[256];
                gemm_detail::kquant_record_codes(t, L.G, rp, int(n % rr), u);
                for (int e = 0; e < 256; ++e) {
                  float v;
                  if (t == DType::Q6_K) {
                    float d;
                    std::memcpy(&d, rp + L.d(gi) + 4 * r16, 4);
                    const int8_t sc = int8_t(rp[L.sc(gi, e / 16) + r16]);
                    v = d * sc * (int(u[e]) - 32);
                  } else {
                    uint16_t dh, mh;
                    std::memcpy(&dh, rp + L.d(gi) + 2 * r16, 2);
                    std::memcpy(&mh, rp + L.dmin(gi) + 2 * r16, 2);
                    const int j = e / 32;
                    v = f16_to_f32(dh) * rp[L.sc(gi, j) + r16] * u[e] - f16_to_f32(mh) * rp[L.mn(gi, j) + r16];
                  }
                  const float want = n < N ? ref[size_t(256 * s + e)] : 0.0f;
                  if (!(v == want) && !(n >= N && v == 0.0f) && bad++ < 2)
                    emollm_test::report_failure(__FILE__, __LINE__,
                                                std::string(dtype_name(t)) + " rows " + std::to_string(rr) + " N=" + std::to_string(N) + " K=" +
                                                    std::to_string(K) + " row " + std::to_string(n) + " element " +
                                                    std::to_string(256 * s + e) + ": " + std::to_string(v) +
                                                    " vs " + std::to_string(want));
                }
              }
              ++rows;
            }
          }
  EXPECT(rows > 0);
}

// The decode GEMV on the records (gemm_kquant_repacked at M <= 8) against the float64 sum of X
// rounded to q8_0 times the dequantised weights, with the bound of test_kquant_gemv.cpp (the
// records' kernel is at most K / 32 + 2 K / 256 + 1 roundings deep, gemv_kquant_vnni.cpp):
//   |y - y64| <= (2 K / 32 + 8) 2^-24 (sum_k |xq_k| (|w_k| + 2 |M_j(k)|) + |bias|).
// A row's bits do not depend on M (the other X rows), the pool or its thread count: checked bit
// for bit against M = 1 without a pool; nor on the record size: records of 64 rows give the bits
// of the 32-row ones (each row's arithmetic is the same, gemv_kquant_vnni.cpp). N 1..300 (not
// multiples of 16 / 64), K of 1, 3, 9, 43 super-blocks, every M up to 8, an all-zero X row and one
// of mixed magnitudes, bias on / off.
TEST(kquant_records_gemv_bound_and_bits) {
  if (!have_vnni()) {
    std::printf("  skip: no AVX-512 VNNI (gemm_kquant_repacked needs it)\n");
    EXPECT(!kquant_repacked_usable());
    return;
  }
  ThreadPool pool2(2), pool3(3);
  struct Shape {
    int64_t M, N, K;
  };
  const Shape shapes[] = {{1, 1, 256},  {1, 37, 768},  {1, 300, 2304}, {2, 45, 256}, {3, 70, 768},
                          {5, 19, 512}, {8, 33, 1280}, {1, 5, 11008},  {7, 129, 256}, {4, 16, 2304}};
  int checked = 0;
  for (DType t : {DType::Q4_K, DType::Q6_K})
    for (const Shape& sh : shapes)
      for (bool random_bytes : {false, true}) {
        const int64_t M = sh.M, N = sh.N, K = sh.K;
        const std::vector<uint8_t> w = emollm_test::kquant_weights(t, N, K, random_bytes, 300u + uint32_t(K + 7 * N + M));
        std::vector<float> X = normal_floats(size_t(M * K), 41u + uint32_t(M + K), 1.0f);
        if (M >= 3) {
          for (int64_t k = 0; k < K; ++k) X[size_t(K + k)] = 0.0f;
          for (int64_t k = 0; k < K; ++k) X[size_t(2 * K + k)] *= (k % 64 < 32) ? 300.0f : 1e-3f;
        }
        const std::vector<float> bias = normal_floats(size_t(N), 3u, 0.5f);
        const size_t rb = dtype_row_bytes(t, K);
        std::vector<float> wd(size_t(N * K)), xq(size_t(M * K));
        for (int64_t n = 0; n < N; ++n) dequantize_row(t, w.data() + size_t(n) * rb, wd.data() + n * K, K);
        std::vector<uint8_t> tmp(dtype_row_bytes(DType::Q8_0, K));
        for (int64_t m = 0; m < M; ++m) {
          quantize_row(DType::Q8_0, X.data() + m * K, tmp.data(), K);
          dequantize_row(DType::Q8_0, tmp.data(), xq.data() + m * K, K);
        }
        const double gamma = double(2 * K / 32 + 8) * std::ldexp(1.0, -24);
        std::vector<float> y16[2];  // the first record size's bits (without / with bias)
        for (int rr : kRecordRows)
        for (bool with_bias : {true, false}) {
          const RecordRows rows_scope(rr);
          const std::vector<uint8_t> r = repacked(t, w, N, K, &pool3);
          const uint8_t* R = aligned(r, t, N, K);
          const float* b = with_bias ? bias.data() : nullptr;
          // row m alone, no pool: the reference bits
          std::vector<float> y1(size_t(M * N));
          for (int64_t m = 0; m < M; ++m)
            gemm_kquant_repacked(X.data() + m * K, K, R, t, b, y1.data() + m * N, N, 1, N, K, nullptr);
          if (rr == kRecordRows[0])
            y16[with_bias] = y1;
          else
            EXPECT(std::memcmp(y1.data(), y16[with_bias].data(), y1.size() * 4) == 0);
          for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
            std::vector<float> y(size_t(M * N) + 1, NAN);
            gemm_kquant_repacked(X.data(), K, R, t, b, y.data(), N, M, N, K, p);
            const std::string what = std::string(dtype_name(t)) + " rows " + std::to_string(rr) + " M=" + std::to_string(M) + " N=" + std::to_string(N) +
                                     " K=" + std::to_string(K) + (random_bytes ? " random-bytes" : " quantised") +
                                     (p ? " pool" + std::to_string(p->size()) : "") + (with_bias ? " bias" : "");
            EXPECT(std::isnan(y[size_t(M * N)]));  // nothing written past the outputs
            int bad = 0;
            for (int64_t i = 0; i < M * N && bad < 3; ++i) {
              const int64_t m = i / N, n = i % N;
              double s = 0, a = 0;
              for (int64_t k = 0; k < K; ++k) {
                const double x = xq[size_t(m * K + k)], wk = wd[size_t(n * K + k)];
                const double mn =
                    emollm_test::kquant_min_magnitude(t, w.data() + size_t(n) * rb + size_t(k / 256) * dtype_block_bytes(t), int((k / 32) % 8));
                s += x * wk;
                a += std::fabs(x) * (std::fabs(wk) + 2 * mn);
              }
              const double bi = with_bias ? double(bias[size_t(n)]) : 0.0;
              const double err = std::fabs(double(y[size_t(i)]) - (s + bi));
              const double bound = gamma * (a + std::fabs(bi));
              if (!(err <= bound)) {
                ++bad;
                emollm_test::report_failure(__FILE__, __LINE__,
                                            what + ": element " + std::to_string(i) + ": " + std::to_string(y[size_t(i)]) +
                                                " vs float64 " + std::to_string(s + bi) + ", error " +
                                                std::to_string(err) + " > bound " + std::to_string(bound));
              }
              if (std::memcmp(&y[size_t(i)], &y1[size_t(i)], 4) != 0 && bad++ < 3)
                emollm_test::report_failure(__FILE__, __LINE__,
                                            what + ": element " + std::to_string(i) + " differs from row " +
                                                std::to_string(m) + " alone without a pool");
            }
            ++checked;
          }
        }
      }
  EXPECT(checked > 0);
}

// The prefill (M > 8) on the records is gemm() on the GGUF bytes (gemm_kquant_packed_vnni) bit
// for bit: the W panels come out the same. Records of 32 and 64 rows, M 9..70, N not multiples
// of 16 / 32 / 64 / 512, odd super-block counts, 1-3 threads, bias on / off. And a code flipped in
// one record moves only its row's output (the comparison can fail).
TEST(kquant_records_prefill_bit_equal_gguf) {
  if (!have_vnni()) {
    std::printf("  skip: no AVX-512 VNNI\n");
    return;
  }
  ThreadPool pool2(2), pool3(3);
  struct Shape {
    int64_t M, N, K;
  };
  const Shape shapes[] = {{9, 17, 256}, {20, 45, 768}, {13, 530, 2304}, {70, 33, 1280}, {9, 1, 512}};
  int compared = 0;
  for (int rr : kRecordRows)
  for (DType t : {DType::Q4_K, DType::Q6_K})
    for (const Shape& sh : shapes) {
      const RecordRows rows_scope(rr);
      const int64_t M = sh.M, N = sh.N, K = sh.K;
      const std::vector<uint8_t> w = emollm_test::kquant_weights(t, N, K, false, 500u + uint32_t(K + N));
      const std::vector<uint8_t> r = repacked(t, w, N, K, nullptr);
      const uint8_t* R = aligned(r, t, N, K);
      const std::vector<float> X = normal_floats(size_t(M * K), 61u + uint32_t(M), 1.0f);
      const std::vector<float> bias = normal_floats(size_t(N), 4u, 0.5f);
      for (bool with_bias : {true, false})
        for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
          const float* b = with_bias ? bias.data() : nullptr;
          std::vector<float> y0(size_t(M * N), NAN), y1(size_t(M * N), NAN);
          gemm(X.data(), K, w.data(), t, b, y0.data(), N, M, N, K, p);
          gemm_kquant_repacked(X.data(), K, R, t, b, y1.data(), N, M, N, K, p);
          int bad = 0;
          for (size_t i = 0; i < y0.size(); ++i)
            if (std::memcmp(&y0[i], &y1[i], 4) != 0 && bad++ < 3)
              emollm_test::report_failure(__FILE__, __LINE__,
                                          std::string(dtype_name(t)) + " rows " + std::to_string(rr) + " M=" + std::to_string(M) + " N=" +
                                              std::to_string(N) + " K=" + std::to_string(K) + ": element " +
                                              std::to_string(i) + ": " + std::to_string(y1[i]) + " vs GGUF " +
                                              std::to_string(y0[i]));
          ++compared;
        }
    }
  EXPECT(compared == 120);  // 2 record sizes x 2 types x 5 shapes x 6
  // a flipped code bit of row 17 (group 1, row 1): only that output changes, at M = 1 and M = 9
  for (int rr : kRecordRows)
  for (DType t : {DType::Q4_K, DType::Q6_K}) {
    const RecordRows rows_scope(rr);
    const int64_t N = 20, K = 512;
    const gemm_detail::KqLayout L{t == DType::Q6_K, rr / 16, K / 256};
    const std::vector<uint8_t> w = emollm_test::kquant_weights(t, N, K, false, 8u);
    std::vector<uint8_t> r = repacked(t, w, N, K, nullptr);
    uint8_t* R = const_cast<uint8_t*>(aligned(r, t, N, K));
    for (int64_t M : {1, 9}) {
      const std::vector<float> X = normal_floats(size_t(M * K), 7u, 1.0f);
      std::vector<float> y0(size_t(M * N)), y1(size_t(M * N));
      gemm_kquant_repacked(X.data(), K, R, t, nullptr, y0.data(), N, M, N, K, nullptr);
      const size_t off = size_t(L.record(R, 1, 0) - R) + L.codes(1 % L.G, 0) + 4 * 1;  // group 1, row 1
      R[off] ^= 0x02;
      gemm_kquant_repacked(X.data(), K, R, t, nullptr, y1.data(), N, M, N, K, nullptr);
      R[off] ^= 0x02;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t m = 0; m < M; ++m) {
          if (n == 17)
            EXPECT(y0[size_t(m * N + n)] != y1[size_t(m * N + n)]);
          else
            EXPECT(std::memcmp(&y0[size_t(m * N + n)], &y1[size_t(m * N + n)], 4) == 0);
        }
    }
  }
}

// Below AVX-512 (an ISA cap) the records' kernels are not usable and say so; gemm_kquant_repacked
// refuses instead of reading the records as something else.
TEST(kquant_records_need_vnni) {
  for (int lvl = 0; lvl <= int(isa_detected()); ++lvl) {
    IsaCapScope cap{Isa(lvl)};
    const bool usable = kquant_repacked_usable();
    EXPECT(usable == (have_vnni() && Isa(lvl) >= Isa::Avx512));
    if (!usable) {
      const int64_t N = 3, K = 256;
      const std::vector<uint8_t> w = emollm_test::kquant_weights(DType::Q4_K, N, K, false, 1u);
      const std::vector<uint8_t> r = repacked(DType::Q4_K, w, N, K, nullptr);
      std::vector<float> x(static_cast<size_t>(K), 1.0f), y(static_cast<size_t>(N));
      bool threw = false;
      try {
        gemm_kquant_repacked(x.data(), K, aligned(r, DType::Q4_K, N, K), DType::Q4_K, nullptr, y.data(), N, 1, N, K,
                             nullptr);
      } catch (const Error&) {
        threw = true;
      }
      EXPECT(threw);
    }
  }
}

// The CPU backend packs q4_K / q6_K matrices into the records at load (pack_gemm_weight) and its
// gemm() then runs on them: M <= 8 is gemm_kquant_repacked on the records bit for bit, M > 8 is
// gemm() on the GGUF bytes bit for bit; the matrix's bytes are not read after packing (they are
// overwritten here and the results stay). With set_kquant_repacking(false) (what EMOLLM_REPACK=0 gives)
// nothing is packed and gemm() is the GGUF path's. Q5_K is never packed.
TEST(kquant_records_backend_packs_and_dispatches) {
  auto be = make_backend(BackendOptions{});
  const int64_t N = 45, K = 768;
  for (int rr : {32, 64})
  for (DType t : {DType::Q4_K, DType::Q6_K, DType::Q5_K}) {
    const RecordRows rows_scope(rr);
    const std::vector<uint8_t> w0 = emollm_test::kquant_weights(t, N, K, false, 91u);
    std::vector<uint8_t> w = w0;
    const std::vector<uint8_t> r = repacked(t == DType::Q5_K ? DType::Q4_K : t, w0, N, K, nullptr);
    const std::vector<float> X = normal_floats(size_t(12 * K), 17u, 1.0f);
    {
      set_kquant_repacking(false);
      auto none = be->pack_gemm_weight(w.data(), t, N, K);
      set_kquant_repacking(true);
      EXPECT(none == nullptr);
    }
    auto packed = be->pack_gemm_weight(w.data(), t, N, K);
    const bool want = t != DType::Q5_K && kquant_repacked_usable();
    EXPECT((packed != nullptr) == want);
    if (!packed) continue;
    EXPECT(packed->bytes() == kquant_repack_bytes(t, N, K));
    std::memset(w.data(), 0xFF, w.size());  // the backend must read its records, not these bytes
    for (int64_t M : {1, 3, 12}) {
      std::vector<float> yb(size_t(M * N), NAN), yr(size_t(M * N), NAN);
      be->gemm(X.data(), K, w.data(), t, nullptr, yb.data(), N, M, N, K);
      if (M <= 8)
        gemm_kquant_repacked(X.data(), K, aligned(r, t, N, K), t, nullptr, yr.data(), N, M, N, K, nullptr);
      else
        gemm(X.data(), K, w0.data(), t, nullptr, yr.data(), N, M, N, K, nullptr);
      EXPECT(std::memcmp(yb.data(), yr.data(), yb.size() * 4) == 0);
    }
    packed.reset();
  }
}

// Two loads of one W (one file mapping) with different record rows (decode_switch_ab
// kq_record_rows): each gets a copy of its own layout (the shared-copy lookup is keyed by the rows
// too), and gemm() reads the copy of the rows in force: bit for bit gemm_kquant_repacked on records
// of those rows. The same rows twice share one copy (counted once).
TEST(kquant_records_shared_copy_keyed_by_record_rows) {
  auto be = make_backend(BackendOptions{});
  if (!kquant_repacked_usable()) {
    std::printf("  skip: no K-quant records here\n");
    return;
  }
  const int64_t N = 100, K = 512;
  const DType t = DType::Q4_K;
  const std::vector<uint8_t> w = emollm_test::kquant_weights(t, N, K, false, 93u);
  const std::vector<float> X = normal_floats(size_t(K), 19u, 1.0f);
  const size_t packed0 = packed_gemm_weight_bytes();
  std::vector<uint8_t> r64, r32;
  std::unique_ptr<PackedGemmWeight> h64, h64b, h32;
  {
    const RecordRows rows(64);
    r64 = repacked(t, w, N, K, nullptr);
    h64 = be->pack_gemm_weight(w.data(), t, N, K);
    h64b = be->pack_gemm_weight(w.data(), t, N, K);  // the same rows: shared
    EXPECT(h64 && h64b);
    EXPECT(packed_gemm_weight_bytes() == packed0 + kquant_repack_bytes(t, N, K));
  }
  {
    const RecordRows rows(32);
    r32 = repacked(t, w, N, K, nullptr);
    h32 = be->pack_gemm_weight(w.data(), t, N, K);
    EXPECT(h32 != nullptr);
    EXPECT(packed_gemm_weight_bytes() == packed0 + 2 * kquant_repack_bytes(t, N, K));
  }
  for (int rr : {32, 64, 32}) {
    const RecordRows rows(rr);
    std::vector<float> yb(static_cast<size_t>(N), NAN), yr(static_cast<size_t>(N), NAN);
    be->gemm(X.data(), K, w.data(), t, nullptr, yb.data(), N, 1, N, K);
    const std::vector<uint8_t>& r = rr == 32 ? r32 : r64;
    gemm_kquant_repacked(X.data(), K, aligned(r, t, N, K), t, nullptr, yr.data(), N, 1, N, K, nullptr);
    EXPECT(std::memcmp(yb.data(), yr.data(), yb.size() * 4) == 0);
  }
  h64.reset();
  EXPECT(packed_gemm_weight_bytes() == packed0 + 2 * kquant_repack_bytes(t, N, K));
  h64b.reset();
  h32.reset();
  EXPECT(packed_gemm_weight_bytes() == packed0);
}

// A decode step's q/k/v (or gate/up) on records as one dispatch (gemv_kquant_repacked_multi, and
// the CPU backend's gemm_multi at M = 1): each output bit for bit its own gemm_kquant_repacked,
// outputs of 1, 16, 45 and 300 rows (groups split across outputs and threads), bias on some,
// no pool / 2 / 3 threads.
TEST(kquant_records_multi_equals_separate) {
  if (!have_vnni()) {
    std::printf("  skip: no AVX-512 VNNI\n");
    return;
  }
  ThreadPool pool2(2), pool3(3);
  const int64_t K = 768;
  const int64_t Ns[] = {45, 1, 300, 16};
  for (int rr : kRecordRows)
  for (DType t : {DType::Q4_K, DType::Q6_K}) {
    const RecordRows rows_scope(rr);
    std::vector<std::vector<uint8_t>> ws, rs;
    for (int j = 0; j < 4; ++j) {
      ws.push_back(emollm_test::kquant_weights(t, Ns[j], K, j % 2 == 1, 70u + uint32_t(j)));
      rs.push_back(repacked(t, ws.back(), Ns[j], K, nullptr));
    }
    const std::vector<float> x = normal_floats(size_t(K), 12u, 1.0f);
    const std::vector<float> bias = normal_floats(300, 13u, 0.5f);
    std::vector<std::vector<float>> ref(4), got(4);
    for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
      GemvOutput g[4];
      for (int j = 0; j < 4; ++j) {
        ref[size_t(j)].assign(size_t(Ns[j]), NAN);
        got[size_t(j)].assign(size_t(Ns[j]) + 1, NAN);
        const float* b = j % 2 == 0 ? bias.data() : nullptr;
        gemm_kquant_repacked(x.data(), K, aligned(rs[size_t(j)], t, Ns[j], K), t, b, ref[size_t(j)].data(), Ns[j], 1,
                             Ns[j], K, nullptr);
        g[j] = GemvOutput{aligned(rs[size_t(j)], t, Ns[j], K), b, got[size_t(j)].data(), Ns[j]};
      }
      gemv_kquant_repacked_multi(x.data(), t, g, 4, K, p);
      for (int j = 0; j < 4; ++j) {
        EXPECT(std::memcmp(ref[size_t(j)].data(), got[size_t(j)].data(), size_t(Ns[j]) * 4) == 0);
        EXPECT(std::isnan(got[size_t(j)][size_t(Ns[j])]));
      }
    }
    // through the backend: packed at "load", then one gemm_multi of the four at M = 1
    auto be = make_backend(BackendOptions{});
    std::vector<std::unique_ptr<PackedGemmWeight>> keep;
    Backend::GemmOutput go[4];
    for (int j = 0; j < 4; ++j) {
      keep.push_back(be->pack_gemm_weight(ws[size_t(j)].data(), t, Ns[j], K));
      EXPECT(keep.back() != nullptr);
      got[size_t(j)].assign(size_t(Ns[j]), NAN);
      go[j] = Backend::GemmOutput{ws[size_t(j)].data(), t, j % 2 == 0 ? bias.data() : nullptr, got[size_t(j)].data(),
                                  Ns[j], Ns[j]};
    }
    be->gemm_multi(x.data(), K, go, 4, 1, K);
    for (int j = 0; j < 4; ++j) EXPECT(std::memcmp(ref[size_t(j)].data(), got[size_t(j)].data(), size_t(Ns[j]) * 4) == 0);
  }
}

#if defined(__x86_64__)
#include "../../kernels/cpu/gemv_kquant_vnni.h"

// The lean M = 1 pass over 32 / 64-row records (gemv_kquant_vnni.cpp kq_records_sg_lean: one load
// per code line, q4_K's high nibbles left in place as 16 x the nibble and shifted back once a
// sub-block) gives the bits of the M = 2 pass's first row on the same x (the same int32 sums and
// the same f32 operations in the same order; the previous M = 1 pass, its former reference, and
// its switch EMOLLM_KQUANT_LEAN went in session 22). Random bytes (every nibble and 6-bit scale,
// min and high-bit pattern) and quantised rows, X with blocks of x300 / x1e-3 (the q8 codes at
// +-127 on many blocks) and zero blocks, N not a multiple of the record, K 256..11008, single
// and multi-output dispatch, no pool / 2 / 3 threads, every prefetch distance of kPfAhead (the prefetch
// changes no arithmetic), one or two streams a thread (set_kquant_streams:
// two (the default on full-width AVX-512; one on Zen 4, decode_tuning.h) read a range's super-groups in two contiguous parts side by side, an odd one
// after them; N 1000 gives parts of several super-groups); q6_K's lean pass spreads its prefetches
// over each step's groups. A flipped code byte moves the lean output of its row only (the
// comparison can fail).
namespace {
// The lean pass's prefetch distances the same-bits test runs (set_kquant_stream_prefetch, bytes):
// the CPU's default (decode_tuning.h; two streams: q4_K 2 KiB, q6_K 4 KiB), none, 8, 4 and 2 KiB ahead.
constexpr int64_t kPfAhead[] = {-1, 0, 8192, 4096, 2048};
}  // namespace

TEST(kquant_records_lean_same_bits_as_m2) {
  if (!have_vnni()) {
    std::printf("  skip: no AVX-512 VNNI\n");
    return;
  }
  const int streams_before = gemm_detail::kquant_streams();
  ThreadPool pool2(2), pool3(3);
  struct Shape {
    int64_t N, K;
  };
  const Shape shapes[] = {{1, 256}, {37, 768}, {64, 2048}, {130, 2304}, {300, 512}, {70, 11008}, {1000, 512}};
  int compared = 0, moved = 0;
  for (int rr : {32, 64})
    for (DType t : {DType::Q4_K, DType::Q6_K})
      for (const Shape& sh : shapes)
        for (bool random_bytes : {true, false}) {
          const RecordRows rows_scope(rr);
          const int64_t N = sh.N, K = sh.K;
          std::vector<uint8_t> w = emollm_test::kquant_weights(t, N, K, random_bytes, 900u + uint32_t(N + K));
          std::vector<float> x = normal_floats(size_t(K), 17u + uint32_t(K), 1.0f);
          for (int64_t k = 0; k < K; ++k) x[size_t(k)] *= (k % 96 < 32) ? 300.0f : (k % 96 < 64 ? 1e-3f : 1.0f);
          for (int64_t k = 64; k < std::min<int64_t>(K, 96); ++k) x[size_t(k)] = 0.0f;
          const std::vector<float> bias = normal_floats(size_t(N), 5u, 0.5f);
          std::vector<uint8_t> r = repacked(t, w, N, K, nullptr);
          // the reference: row 0 of the M = 2 pass on (x, x), no pool
          std::vector<float> x2(size_t(2 * K)), y2(size_t(2 * N), NAN);
          std::copy(x.begin(), x.end(), x2.begin());
          std::copy(x.begin(), x.end(), x2.begin() + K);
          gemm_kquant_repacked(x2.data(), K, aligned(r, t, N, K), t, bias.data(), y2.data(), N, 2, N, K, nullptr);
          EXPECT(std::memcmp(y2.data(), y2.data() + N, size_t(N) * 4) == 0);
          for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3})
          for (int streams : {1, 2})  // the lean pass on one or two streams a thread
          for (int64_t ahead : kPfAhead) {
            gemm_detail::set_kquant_streams(streams);
            gemm_detail::set_kquant_stream_prefetch(ahead);
            std::vector<float> y(size_t(N) + 1, NAN);
            gemm_kquant_repacked(x.data(), K, aligned(r, t, N, K), t, bias.data(), y.data(), N, 1, N, K, p);
            EXPECT(std::isnan(y[size_t(N)]));
            // the multi-output dispatch (the decode's q / k / v): the same bits as the single call
            std::vector<float> ym(size_t(N), NAN);
            GemvOutput g{aligned(r, t, N, K), bias.data(), ym.data(), N};
            gemv_kquant_repacked_multi(x.data(), t, &g, 1, K, p);
            EXPECT(std::memcmp(ym.data(), y.data(), size_t(N) * 4) == 0);
            EXPECT(std::memcmp(y2.data(), y.data(), size_t(N) * 4) == 0);
            ++compared;
          }
          // flip one code byte of the last row's group (record 0): the lean output of that row moves
          {
            const int64_t n = N - 1;
            const gemm_detail::KqLayout L{t == DType::Q6_K, rr / 16, K / 256};
            // the first code byte of row n in its super-group's first record (sub-block 0, line 0)
            uint8_t* byte = const_cast<uint8_t*>(L.record(aligned(r, t, N, K), n / 16, 0)) +
                            L.codes(int((n / 16) % (rr / 16)), 0) + 4 * size_t(n % 16);
            *byte ^= 0x11;
            std::vector<float> y2(size_t(N), NAN), y1(size_t(N), NAN);
            gemm_kquant_repacked(x.data(), K, aligned(r, t, N, K), t, bias.data(), y2.data(), N, 1, N, K, nullptr);
            *byte ^= 0x11;
            gemm_kquant_repacked(x.data(), K, aligned(r, t, N, K), t, bias.data(), y1.data(), N, 1, N, K, nullptr);
            EXPECT(std::memcmp(y1.data(), y2.data(), size_t(N - 1) * 4) == 0);
            if (std::memcmp(&y1[size_t(n)], &y2[size_t(n)], 4) != 0) ++moved;
          }
        }
  gemm_detail::set_kquant_streams(streams_before);
  gemm_detail::set_kquant_stream_prefetch(-1);
  EXPECT(compared == 2 * 2 * 7 * 2 * 3 * 2 * 5);
  EXPECT(moved >= 47);  // of 56: an x block of zeros or a tiny one can hide a flip
}

namespace {
// q6_K's independent reference (ggml's dequantize_row_q6_K, read from the GGUF bytes, not from
// the records): per row, the 256 codes u (0..63, w = d scales[e / 16] (u - 32)) of each
// super-block, its fp16 d as f32 and its 16 int8 scales.
struct Q6Row {
  std::vector<uint8_t> u;   // K codes
  std::vector<float> d;     // K / 256
  std::vector<int8_t> sc;   // K / 16
};
Q6Row q6k_gguf_row(const uint8_t* row, int64_t K) {
  Q6Row r{std::vector<uint8_t>(size_t(K)), std::vector<float>(size_t(K / 256)), std::vector<int8_t>(size_t(K / 16))};
  for (int64_t s = 0; s < K / 256; ++s) {
    const uint8_t* blk = row + size_t(s) * 210;  // ql[128], qh[64], scales[16], d (fp16)
    uint8_t* u = r.u.data() + 256 * s;
    for (int n = 0; n < 2; ++n)
      for (int l = 0; l < 32; ++l) {
        const uint8_t* ql = blk + 64 * n;
        const uint8_t qh = blk[128 + 32 * n + l];
        u[128 * n + l] = uint8_t((ql[l] & 15) | ((qh & 3) << 4));
        u[128 * n + l + 32] = uint8_t((ql[l + 32] & 15) | (((qh >> 2) & 3) << 4));
        u[128 * n + l + 64] = uint8_t((ql[l] >> 4) | (((qh >> 4) & 3) << 4));
        u[128 * n + l + 96] = uint8_t((ql[l + 32] >> 4) | (((qh >> 6) & 3) << 4));
      }
    uint16_t dh;
    std::memcpy(&dh, blk + 208, 2);
    r.d[size_t(s)] = f16_to_f32(dh);
    for (int h = 0; h < 16; ++h) r.sc[size_t(16 * s + h)] = int8_t(blk[192 + h]);
  }
  return r;
}

// One output of the q6_K records' passes (gemv_kquant_vnni.cpp: kq_dot_sub / kq_lean_records,
// kq_y_update, kq_store_group), written out in scalar code from the GGUF codes: X row in q8_0
// (quantize_row's bytes: fp16 dx, 32 int8 q per block, what qx_quantize_row_avx2 rounds to); per
// 16-element half h of 32-element block b = 8 s + j the exact int32 P_h = sum u q - 32 sum q, then
// t = P_0 sc_2j + P_1 sc_2j+1 (int32), aA = fma(float(t), dx_b, aA) over the 8 blocks of a
// super-block, y = fma(d, aA, y) over the super-blocks, plus the bias (or + 0). Every record
// size, M, pool and layout of the records must give these bits.
float q6k_records_model(const Q6Row& w, const uint8_t* xq8, int64_t K, float bias) {
  float y = 0.0f;
  for (int64_t s = 0; s < K / 256; ++s) {
    float aA = 0.0f;
    for (int j = 0; j < 8; ++j) {
      const uint8_t* xb = xq8 + size_t(8 * s + j) * 34;
      uint16_t dh;
      std::memcpy(&dh, xb, 2);
      const int8_t* q = reinterpret_cast<const int8_t*>(xb + 2);
      int32_t P[2];
      for (int h = 0; h < 2; ++h) {
        int32_t dot = 0, sum = 0;
        for (int e = 16 * h; e < 16 * h + 16; ++e) dot += int32_t(w.u[size_t(256 * s + 32 * j + e)]) * q[e], sum += q[e];
        P[h] = dot - 32 * sum;
      }
      const int32_t t = P[0] * w.sc[size_t(16 * s + 2 * j)] + P[1] * w.sc[size_t(16 * s + 2 * j + 1)];
      aA = std::fma(float(t), f16_to_f32(dh), aA);
    }
    y = std::fma(w.d[size_t(s)], aA, y);
  }
  return y + bias;
}
}  // namespace

// q6_K's packed code layout (kquant_records.h) against an independent reference: ggml's q6_K
// decode of the GGUF bytes (q6k_gguf_row, checked against dequantize_row). Every row's code lines
// are the bytes kquant_records.h's layout gives for those codes (lines 0-3: the quad's 6 bits and
// bits 4-5 of quad 4 + i in bits 6-7; lines 4-5: the low nibbles of quads 4-7); the decode passes
// (M 1..8: the 32 / 64-row pass, the lean pass at M = 1, the multi-output dispatch) give every
// output bit for bit q6k_records_model and lie within test_kquant_gemv.cpp's float64 bound; the
// prefill (M 9, 20) is gemm() on the GGUF bytes bit for bit (its W panels come from the GGUF
// decode, not from the records); 0 / 2 / 3 threads, records of 32 and 64 rows. Flipping bit 6 of
// a line-0 byte (bit 4 of a quad-4 code) moves that row's output to the model's with that code
// flipped, and no other output. (The previous layout, EMOLLM_KQ6_PACKED=0, was this test's
// reference until session 23.)
TEST(kquant_records_q6_packed_against_gguf_reference) {
  if (!have_vnni()) {
    std::printf("  skip: no AVX-512 VNNI\n");
    return;
  }
  const DType t = DType::Q6_K;
  ThreadPool pool2(2), pool3(3);
  struct Shape {
    int64_t N, K;
  };
  const Shape shapes[] = {{1, 256}, {37, 768}, {64, 2048}, {130, 2304}, {70, 11008}};
  int compared = 0, moved = 0, flips = 0, bad = 0;
  auto fail = [&](const std::string& what) {
    if (bad++ < 6) emollm_test::report_failure(__FILE__, __LINE__, what);
  };
  for (int rr : kRecordRows)
    for (const Shape& sh : shapes)
      for (bool random_bytes : {true, false}) {
        const RecordRows rows_scope(rr);
        const int64_t N = sh.N, K = sh.K;
        const std::string what0 = std::string("rows ") + std::to_string(rr) + " N=" + std::to_string(N) +
                                  " K=" + std::to_string(K) + (random_bytes ? " random-bytes" : " quantised");
        const std::vector<uint8_t> w = emollm_test::kquant_weights(t, N, K, random_bytes, 700u + uint32_t(N + K));
        const size_t rb = dtype_row_bytes(t, K);
        std::vector<Q6Row> ref;
        std::vector<float> wd(size_t(N * K));
        for (int64_t n = 0; n < N; ++n) {
          ref.push_back(q6k_gguf_row(w.data() + size_t(n) * rb, K));
          dequantize_row(t, w.data() + size_t(n) * rb, wd.data() + n * K, K);
          for (int64_t e = 0; e < K; ++e) {  // the reference decode is dequantize_row's
            const Q6Row& q = ref.back();
            const float v = q.d[size_t(e / 256)] * q.sc[size_t(e / 16)] * (int(q.u[size_t(e)]) - 32);
            if (!(v == wd[size_t(n * K + e)])) fail(what0 + ": reference decode of row " + std::to_string(n) + " element " + std::to_string(e));
          }
        }
        std::vector<uint8_t> r1 = repacked(t, w, N, K, &pool3);
        const uint8_t* R = aligned(r1, t, N, K);
        // the code lines of every row are the layout's bytes for the GGUF codes
        const gemm_detail::KqLayout L{true, rr / 16, K / 256};
        for (int64_t n = 0; n < N; ++n)
          for (int64_t s = 0; s < L.ns; ++s) {
            const uint8_t* rec = L.record(R, n / 16, s);
            const int gi = int((n / 16) % L.G), r16 = int(n % 16);
            for (int j = 0; j < 8; ++j) {
              const uint8_t* u = ref[size_t(n)].u.data() + 256 * s + 32 * j;
              const uint8_t* c = rec + L.codes(gi, j) + 4 * r16;
              for (int i = 0; i < 4; ++i)
                for (int k = 0; k < 4; ++k) {
                  const uint8_t a = u[4 * i + k], b = u[16 + 4 * i + k];  // quads i and 4 + i
                  const uint8_t want_line = uint8_t(a | ((b >> 4) << 6));
                  const uint8_t nib = uint8_t((c[64 * (4 + i / 2) + k] >> (4 * (i % 2))) & 15);
                  if (c[64 * i + k] != want_line || nib != (b & 15))
                    fail(what0 + ": code bytes of row " + std::to_string(n) + " super-block " + std::to_string(s) +
                         " sub-block " + std::to_string(j) + " quad " + std::to_string(i));
                }
            }
          }
        const std::vector<float> bias = normal_floats(size_t(N), 6u, 0.5f);
        for (int64_t M : {1, 2, 3, 8, 9, 20}) {
          std::vector<float> x = normal_floats(size_t(M * K), 23u + uint32_t(K + M), 1.0f);
          for (int64_t k = 0; k < M * K; ++k) x[size_t(k)] *= (k % 96 < 32) ? 300.0f : (k % 96 < 64 ? 1e-3f : 1.0f);
          const size_t xb = dtype_row_bytes(DType::Q8_0, K);
          std::vector<uint8_t> xq8(size_t(M) * xb);
          std::vector<float> xq(size_t(M * K));
          for (int64_t m = 0; m < M; ++m) {
            quantize_row(DType::Q8_0, x.data() + m * K, xq8.data() + size_t(m) * xb, K);
            dequantize_row(DType::Q8_0, xq8.data() + size_t(m) * xb, xq.data() + m * K, K);
          }
          // the expected outputs: the model's bits (M <= 8), gemm() on the GGUF bytes (M > 8)
          std::vector<float> want(size_t(M * N));
          if (M <= 8) {
            for (int64_t m = 0; m < M; ++m)
              for (int64_t n = 0; n < N; ++n)
                want[size_t(m * N + n)] = q6k_records_model(ref[size_t(n)], xq8.data() + size_t(m) * xb, K, bias[size_t(n)]);
            // ... and the model within the float64 bound (the decode tests' tolerance)
            const double gamma = double(2 * K / 32 + 8) * std::ldexp(1.0, -24);
            for (int64_t i = 0; i < M * N; ++i) {
              const int64_t m = i / N, n = i % N;
              double s = 0, a = 0;
              for (int64_t k = 0; k < K; ++k) {
                const double xv = xq[size_t(m * K + k)], wk = wd[size_t(n * K + k)];
                s += xv * wk;
                a += std::fabs(xv) * std::fabs(wk);
              }
              const double bi = bias[size_t(n)];
              if (!(std::fabs(double(want[size_t(i)]) - (s + bi)) <= gamma * (a + std::fabs(bi))))
                fail(what0 + " M=" + std::to_string(M) + ": element " + std::to_string(i) + " outside the float64 bound");
            }
          } else {
            gemm(x.data(), K, w.data(), t, bias.data(), want.data(), N, M, N, K, nullptr);
          }
          for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool2, &pool3}) {
            const std::string what = what0 + " M=" + std::to_string(M) + (p ? " pool" + std::to_string(p->size()) : "");
            std::vector<float> y(size_t(M * N) + 1, NAN);
            gemm_kquant_repacked(x.data(), K, R, t, bias.data(), y.data(), N, M, N, K, p);
            EXPECT(std::isnan(y[size_t(M * N)]));
            for (int64_t i = 0; i < M * N; ++i)
              if (std::memcmp(&y[size_t(i)], &want[size_t(i)], 4) != 0)
                fail(what + ": element " + std::to_string(i) + ": " + std::to_string(y[size_t(i)]) + " vs " +
                     (M <= 8 ? "the model " : "GGUF gemm() ") + std::to_string(want[size_t(i)]));
            if (M > 8) {  // and the GGUF prefill on this pool: the same bits
              std::vector<float> yg(size_t(M * N), NAN);
              gemm(x.data(), K, w.data(), t, bias.data(), yg.data(), N, M, N, K, p);
              if (std::memcmp(yg.data(), want.data(), yg.size() * 4) != 0) fail(what + ": GGUF gemm() differs across pools");
            }
            if (M == 1) {  // the multi-output dispatch (the decode's q / k / v)
              std::vector<float> ym(size_t(N), NAN);
              GemvOutput g{R, bias.data(), ym.data(), N};
              gemv_kquant_repacked_multi(x.data(), t, &g, 1, K, p);
              if (std::memcmp(ym.data(), want.data(), size_t(N) * 4) != 0) fail(what + ": multi-output dispatch differs");
            }
            ++compared;
          }
        }
        // bit 6 of row n's byte of line 0 of the last super-block's sub-block 7 in the records: bit 4
        // of that row's code 256 (ns - 1) + 240 (quad 4, byte 0)
        const std::vector<float> x = normal_floats(size_t(K), 31u + uint32_t(K), 1.0f);
        std::vector<uint8_t> x8(dtype_row_bytes(DType::Q8_0, K));
        quantize_row(DType::Q8_0, x.data(), x8.data(), K);
        for (int64_t n : {int64_t(0), N - 1}) {
          uint8_t* byte = const_cast<uint8_t*>(L.record(R, n / 16, L.ns - 1)) + L.codes(int((n / 16) % L.G), 7) + 4 * size_t(n % 16);
          std::vector<float> y1(size_t(N), NAN), y2(size_t(N), NAN);
          gemm_kquant_repacked(x.data(), K, R, t, bias.data(), y1.data(), N, 1, N, K, &pool2);
          *byte ^= 0x40;
          gemm_kquant_repacked(x.data(), K, R, t, bias.data(), y2.data(), N, 1, N, K, &pool2);
          *byte ^= 0x40;
          Q6Row flipped = ref[size_t(n)];
          flipped.u[size_t(256 * (L.ns - 1) + 240)] ^= 0x10;
          const float want = q6k_records_model(flipped, x8.data(), K, bias[size_t(n)]);
          if (std::memcmp(&y2[size_t(n)], &want, 4) != 0) fail(what0 + ": flipped row " + std::to_string(n) + " is not the model's");
          for (int64_t o = 0; o < N; ++o)
            if (o != n) EXPECT(std::memcmp(&y1[size_t(o)], &y2[size_t(o)], 4) == 0);
          ++flips;
          if (std::memcmp(&y1[size_t(n)], &y2[size_t(n)], 4) != 0) ++moved;
        }
      }
  if (bad) emollm_test::report_failure(__FILE__, __LINE__, std::to_string(bad) + " checks failed");
  EXPECT(compared == 2 * 5 * 2 * 6 * 3);
  EXPECT(moved >= flips - 4);  // a tiny scale or x block can hide a flip
}

// The K-quant records' M = 1 dispatch with each thread's first claim all of its range but 0 / 1 /
// 3 super-groups (set_kquant_owner_keep; -1: claims of at most sg_chunk's) gives the bits of one
// thread, on 2 and 3 threads, called 20 times each (both threads claiming, stealing from the
// back), with the pass on one and two streams (sg_chunk's size follows the count): the 1.1B's
// q+k+v and gate+up row counts (40 and 176 super-groups of 64 rows), odd counts (17, 65), a
// partial last super-group (1000 rows), and gemv_kquant_repacked_multi over the 1.1B's q / k / v
// (2048 + 256 + 256) and an odd first output (320 rows: 5 super-groups). K = 256 keeps it short
// (the claims do not depend on K). And the setter's floor: values below -1 read -1.
TEST(kquant_records_claims_same_bits) {
  if (!have_vnni()) {
    std::printf("  skip: no AVX-512 VNNI\n");
    return;
  }
  struct KeepScope {
    explicit KeepScope(int k) : prev_(gemm_detail::kquant_owner_keep()) { gemm_detail::set_kquant_owner_keep(k); }
    ~KeepScope() { gemm_detail::set_kquant_owner_keep(prev_); }
    int prev_;
  };
  struct StreamsScope {
    explicit StreamsScope(int s) : prev_(gemm_detail::kquant_streams()) { gemm_detail::set_kquant_streams(s); }
    ~StreamsScope() { gemm_detail::set_kquant_streams(prev_); }
    int prev_;
  };
  {
    KeepScope ks(-7);
    EXPECT(gemm_detail::kquant_owner_keep() == -1);
  }
  ThreadPool pool2(2), pool3(3);
  const int64_t K = 256;
  const std::vector<float> x = normal_floats(size_t(K), 91u, 1.0f);
  int compared = 0;
  for (DType t : {DType::Q4_K, DType::Q6_K}) {
    for (int64_t N : {2560, 11264, 1088, 4160, 1000}) {
      const std::vector<uint8_t> w = emollm_test::kquant_weights(t, N, K, false, 900u + uint32_t(N));
      const std::vector<uint8_t> r = repacked(t, w, N, K, nullptr);
      const uint8_t* R = aligned(r, t, N, K);
      std::vector<float> ref(static_cast<size_t>(N)), y(static_cast<size_t>(N));
      gemm_kquant_repacked(x.data(), K, R, t, nullptr, ref.data(), N, 1, N, K, nullptr);
      for (int streams : {1, 2}) {
        StreamsScope ss(streams);
        for (ThreadPool* pool : {&pool2, &pool3})
          for (int keep : {-1, 0, 1, 3}) {
            KeepScope ks(keep);
            bool same = true;
            for (int rep = 0; rep < 20; ++rep) {
              std::fill(y.begin(), y.end(), NAN);
              gemm_kquant_repacked(x.data(), K, R, t, nullptr, y.data(), N, 1, N, K, pool);
              same = same && std::memcmp(y.data(), ref.data(), size_t(N) * 4) == 0;
            }
            if (!same)
              emollm_test::report_failure(__FILE__, __LINE__,
                                          std::string(dtype_name(t)) + " N=" + std::to_string(N) + " streams " +
                                              std::to_string(streams) + " threads " + std::to_string(pool->size()) +
                                              " owner_keep " + std::to_string(keep) + ": not one thread's bits");
            ++compared;
          }
      }
    }
    for (const std::vector<int64_t>& ns : {std::vector<int64_t>{2048, 256, 256}, std::vector<int64_t>{320, 2048, 256}}) {
      std::vector<std::vector<uint8_t>> rs;
      std::vector<std::vector<float>> refs, ys;
      GemvOutput outs[3];
      for (size_t j = 0; j < ns.size(); ++j) {
        rs.push_back(repacked(t, emollm_test::kquant_weights(t, ns[j], K, j == 1, 950u + uint32_t(j)), ns[j], K, nullptr));
        refs.emplace_back(size_t(ns[j]));
        ys.emplace_back(size_t(ns[j]));
        gemm_kquant_repacked(x.data(), K, aligned(rs[j], t, ns[j], K), t, nullptr, refs[j].data(), ns[j], 1, ns[j], K,
                             nullptr);
        outs[j] = GemvOutput{aligned(rs[j], t, ns[j], K), nullptr, ys[j].data(), ns[j]};
      }
      for (int streams : {1, 2}) {
        StreamsScope ss(streams);
        for (ThreadPool* pool : {&pool2, &pool3})
          for (int keep : {-1, 0, 1, 3}) {
            KeepScope ks(keep);
            for (int rep = 0; rep < 20; ++rep) {
              for (auto& v : ys) std::fill(v.begin(), v.end(), NAN);
              gemv_kquant_repacked_multi(x.data(), t, outs, int(ns.size()), K, pool);
              for (size_t j = 0; j < ns.size(); ++j)
                EXPECT(std::memcmp(ys[j].data(), refs[j].data(), size_t(ns[j]) * 4) == 0);
            }
            ++compared;
          }
      }
    }
  }
  EXPECT(compared == 2 * 7 * 2 * 2 * 4);  // types x (5 shapes + 2 multi) x streams x pools x owner_keep
}

// The M = 1 dispatch (sg_dispatch) takes set_kquant_owner_keep (the test above shows only that
// every setting keeps the bits, which a dispatch that dropped it would too): at 2 threads on the
// 1.1B's gate+up rows (11264) each thread's first claim all of its range but 0 / 1 super-groups
// makes fewer chunks (about 1-2 a range) than claims of shrinking quarters (-1), on one and two
// streams, counted by base/pool_stats.h pool_range_chunks_this_thread, the fewest of 5 calls (a
// call whose worker joined in time). K = 256: the claims do not depend on K.
TEST(kquant_records_owner_keep_taken) {
  if (!have_vnni()) {
    std::printf("  skip: no AVX-512 VNNI\n");
    return;
  }
  struct Restore {
    int keep = gemm_detail::kquant_owner_keep(), streams = gemm_detail::kquant_streams();
    bool ranges = gemm_detail::gemv_ranges();
    ~Restore() {
      gemm_detail::set_kquant_owner_keep(keep), gemm_detail::set_kquant_streams(streams);
      gemm_detail::set_gemv_ranges(ranges);
    }
  } restore;
  gemm_detail::set_gemv_ranges(true);
  ThreadPool pool(2);
  const int64_t N = 11264, K = 256;
  const std::vector<float> x = normal_floats(size_t(K), 97u, 1.0f);
  std::vector<float> y(static_cast<size_t>(N));
  for (DType t : {DType::Q4_K, DType::Q6_K}) {
    const std::vector<uint8_t> r = repacked(t, emollm_test::kquant_weights(t, N, K, false, 990u), N, K, nullptr);
    const uint8_t* R = aligned(r, t, N, K);
    for (int streams : {1, 2}) {
      gemm_detail::set_kquant_streams(streams);
      auto chunks = [&](int keep) {
        gemm_detail::set_kquant_owner_keep(keep);
        return emollm_test::fewest_range_chunks(
            pool, 5, [&] { gemm_kquant_repacked(x.data(), K, R, t, nullptr, y.data(), N, 1, N, K, &pool); });
      };
      const uint64_t quarters = chunks(-1), whole = chunks(0), one = chunks(1);
      if (!(whole < quarters && one < quarters))
        emollm_test::report_failure(__FILE__, __LINE__,
                                    std::string(dtype_name(t)) + " streams " + std::to_string(streams) +
                                        ": chunks owner_keep -1 / 0 / 1 " + std::to_string(quarters) + " / " +
                                        std::to_string(whole) + " / " + std::to_string(one) +
                                        ": the dispatch does not take owner_keep");
    }
  }
}
#endif

// The records are laid out in the order the lean M = 1 pass reads them (kquant_records.h), so that
// one stream a thread reads each record front to back and the hardware prefetchers keep it fed
// without software prefetch (decode_tuning.h: none on Zen 4; the previous layout, scales of every
// sub-block at the front, read 0.61-0.80x a plain one-stream read there): per sub-block step j
// its scales (and q4_K's mins), then its code lines, every region inside the record, none
// overlapping, every byte covered, the code lines 64-byte aligned, d (and dmin) last.
TEST(kquant_record_layout_in_read_order) {
  for (bool q6 : {false, true})
    for (int G : {2, 4}) {
      const gemm_detail::KqLayout L{q6, G, 1};
      std::vector<int> cover(L.rec(), 0);
      auto mark = [&](size_t off, size_t n) {
        EXPECT(off + n <= L.rec());
        for (size_t i = off; i < off + n && i < L.rec(); ++i) ++cover[i];
      };
      size_t last = 0;  // the end of the previous step's regions: each step starts at or after it
      for (int j = 0; j < 8; ++j) {
        size_t lo = L.rec(), hi = 0;
        auto region = [&](size_t off, size_t n) {
          mark(off, n);
          lo = std::min(lo, off), hi = std::max(hi, off + n);
        };
        for (int gi = 0; gi < G; ++gi) {
          if (q6) {
            region(L.sc(gi, 2 * j), 16), region(L.sc(gi, 2 * j + 1), 16);
          } else {
            region(L.sc(gi, j), 16), region(L.mn(gi, j), 16);
          }
          region(L.codes(gi, j), q6 ? 384 : 256);
          EXPECT(L.codes(gi, j) % 64 == 0);
          EXPECT(L.codes(gi, j) > (q6 ? L.sc(gi, 2 * j + 1) : L.mn(gi, j)));  // scales before codes
        }
        EXPECT(lo == last);  // step j starts where step j - 1 ended
        EXPECT(hi - lo == size_t(G) * (q6 ? 416 : 288));
        last = hi;
      }
      for (int gi = 0; gi < G; ++gi) {
        mark(L.d(gi), q6 ? 64 : 32);
        EXPECT(L.d(gi) >= last);
        if (!q6) {
          mark(L.dmin(gi), 32);
          EXPECT(L.dmin(gi) >= last);
        }
      }
      int bad = 0;
      for (int c : cover) bad += c != 1;
      EXPECT(bad == 0);
    }
}

// The 16-row records are gone: asking for them is an error, 32 and 64 rows stay.
TEST(kquant_record_rows_16_rejected) {
  const int prev = int(kquant_record_rows());
  EXPECT_THROWS(set_kquant_record_rows(16), ErrorCode::InvalidArgument);
  EXPECT(kquant_record_rows() == prev);
  set_kquant_record_rows(32);
  EXPECT(kquant_record_rows() == 32);
  set_kquant_record_rows(prev);
}
