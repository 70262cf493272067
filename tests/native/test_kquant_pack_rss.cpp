// The resident set while the CPU backend packs q4_K / q6_K weights from a read-only file mapping
// (what a GGUF load does, CpuBackend::pack_gemm_weight) and afterwards:
//   - packing a matrix raises the process's peak RSS (VmHWM, reset through /proc/self/clear_refs)
//     by at most its records' bytes + 20 MiB (a 16 MiB slice + 4): the file's pages are released a
//     slice at a time as the records are written (without the slices the peak held the whole
//     matrix's file pages and its records together: +76 MiB against a 60 MiB bound here);
//   - after packing, none of a matrix's pages stays mapped (those two slices shared included);
//   - after packing, reading an 8 KiB vector that lies in the file between two packed matrices (a
//     layer's RMSNorm weight) maps at most 256 KiB of the file back in (the vector's pages, the
//     kernel's 64 KiB fault-around, the two matrices' edge pages the release keeps): the released
//     ranges are MADV_NOHUGEPAGE, so a page-cache folio of 2 MiB around the vector is not mapped
//     whole (it was: up to 2 MiB per vector, +41 MiB for TinyLlama-1.1B q4_k_m's 45 norms, where
//     the kernel keeps the file in 2 MiB folios; elsewhere the bound holds either way);
//   - the records still compute what the file's bytes do (M = 1, bit for bit gemm_kquant_repacked
//     on the same bytes repacked in memory).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "../../base/quant_formats.h"
#include "../../kernels/cpu/kernels.h"
#include "core/backend.h"
#include "kquant_test_weights.h"
#include "page_map.h"
#include "testing.h"

using namespace emollm;
using emollm_test::mapped_pages;

#if defined(__linux__)
namespace {

constexpr size_t kMiB = size_t(1) << 20, k2M = size_t(2) << 20;

// VmHWM / VmRSS of /proc/self/status in bytes (0 when absent).
size_t status_bytes(const char* key) {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  size_t v = 0;
  const size_t n = std::strlen(key);
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, key, n) == 0 && line[n] == ':') {
      v = size_t(std::strtoull(line + n + 1, nullptr, 10)) * 1024;
      break;
    }
  std::fclose(f);
  return v;
}

// Resets VmHWM to the current RSS (clear_refs "5", Linux >= 4.0); false where not allowed.
bool reset_peak_rss() {
  FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  const bool ok = std::fputs("5", f) >= 0;
  return std::fclose(f) == 0 && ok;
}

// A file laid out as a model's: [pad][matrix A][8 KiB vector][matrix B], A and B 2 MiB-aligned
// in the file and the vector inside A's last 2 MiB span, written in 2 MiB pieces (the page cache
// may then hold it in 2 MiB folios) and mapped read-only at a 2 MiB-aligned address (so such a
// folio could be mapped whole).
struct MappedFile {
  uint8_t* base = nullptr;
  size_t bytes = 0;
  void* reserve = nullptr;
  size_t reserve_bytes = 0;
  ~MappedFile() {
    if (reserve) munmap(reserve, reserve_bytes);
  }
};

bool map_file(const std::vector<uint8_t>& content, MappedFile* m) {
  char path[] = "/tmp/emollm_kquant_pack_rss_XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return false;
  unlink(path);
  bool ok = true;
  for (size_t o = 0; o < content.size() && ok; o += k2M) {
    const size_t n = std::min(k2M, content.size() - o);
    ok = pwrite(fd, content.data() + o, n, off_t(o)) == ssize_t(n);
  }
  ok = ok && fsync(fd) == 0;
  if (ok) {
    m->reserve_bytes = content.size() + k2M;
    m->reserve = mmap(nullptr, m->reserve_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ok = m->reserve != MAP_FAILED;
    if (!ok) m->reserve = nullptr;
  }
  if (ok) {
    const uintptr_t a = (reinterpret_cast<uintptr_t>(m->reserve) + k2M - 1) / k2M * k2M;
    void* p = mmap(reinterpret_cast<void*>(a), content.size(), PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
    ok = p != MAP_FAILED;
    if (ok) {
      m->base = static_cast<uint8_t*>(p);
      m->bytes = content.size();
    }
  }
  close(fd);
  return ok;
}

}  // namespace
#endif

TEST(kquant_pack_peak_rss_and_released_pages) {
#if defined(__linux__)
  if (!kquant_repacked_usable() || !kquant_repacking() || !weight_repacking()) {
    std::printf("  skip: the CPU backend does not pack q4_K / q6_K here (no AVX-512 VNNI or switched off)\n");
    return;
  }
  const int64_t K = 4096;
  const int64_t NA = 12288, NB = 2048;  // q6_K 41.3 MB, q4_K 4.7 MB
  const DType ta = DType::Q6_K, tb = DType::Q4_K;
  const size_t a_bytes = size_t(NA) * dtype_row_bytes(ta, K), b_bytes = size_t(NB) * dtype_row_bytes(tb, K);
  // A ends 16 KiB before a 2 MiB boundary; the vector follows it; B starts at that boundary.
  const size_t a_end = (k2M + a_bytes + k2M - 1) / k2M * k2M - 16 * 1024;
  const size_t a_start = a_end - a_bytes, v_off = a_end, b_off = a_end + 16 * 1024;
  std::vector<uint8_t> content(b_off + b_bytes, 0);
  {
    const std::vector<uint8_t> wa = emollm_test::kquant_weights(ta, NA, K, true, 5u);
    const std::vector<uint8_t> wb = emollm_test::kquant_weights(tb, NB, K, true, 6u);
    std::memcpy(content.data() + a_start, wa.data(), a_bytes);
    std::memcpy(content.data() + b_off, wb.data(), b_bytes);
    for (size_t i = 0; i < 2048; ++i) {
      const float f = 1.0f + float(i % 7);
      std::memcpy(content.data() + v_off + 4 * i, &f, 4);
    }
  }
  MappedFile mf;
  EXPECT(map_file(content, &mf));
  if (!mf.base) return;
  const uint8_t* A = mf.base + a_start;
  const uint8_t* B = mf.base + b_off;
  const float* vec = reinterpret_cast<const float*>(mf.base + v_off);

  auto be = make_backend(BackendOptions{});
  // peak RSS while A is packed
  const bool hwm = reset_peak_rss();
  if (!hwm) std::printf("  note: /proc/self/clear_refs not writable: the peak check is skipped\n");
  const size_t rss0 = status_bytes("VmRSS");
  auto pa = be->pack_gemm_weight(A, ta, NA, K);
  EXPECT(pa != nullptr);
  if (!pa) return;
  const size_t peak = status_bytes("VmHWM");
  const size_t bound = kquant_repack_bytes(ta, NA, K) + 20 * kMiB;  // a 16 MiB slice + 4 MiB
  if (hwm) {
    EXPECT(peak > rss0 && peak - rss0 <= bound);
    if (!(peak > rss0 && peak - rss0 <= bound))
      std::printf("  peak grew %.1f MiB packing a %.1f MiB matrix, bound %.1f MiB\n", double(peak - rss0) / kMiB,
                  double(a_bytes) / kMiB, double(bound) / kMiB);
  }
  auto pb = be->pack_gemm_weight(B, tb, NB, K);
  EXPECT(pb != nullptr);
  // A and B start and end on page boundaries here: none of their pages stays mapped, those two
  // slices shared included (released with the whole range across the split mappings)
  EXPECT(mapped_pages(A, a_bytes) == 0);
  EXPECT(mapped_pages(B, b_bytes) == 0);

  // the released ranges stay unmapped; reading the vector between them maps little
  const size_t before = mapped_pages(mf.base, mf.bytes);
  float s = 0, want = 0;
  for (int i = 0; i < 2048; ++i) s += vec[i];
  for (int i = 0; i < 2048; ++i) want += 1.0f + float(i % 7);
  EXPECT(s == want);
  const size_t after = mapped_pages(mf.base, mf.bytes);
  const size_t ps = size_t(sysconf(_SC_PAGESIZE));
  EXPECT(before != size_t(-1) && after != size_t(-1));
  EXPECT(before * ps <= 4 * ps + 2 * 64 * 1024);  // edge pages kept by the releases, fault-around
  EXPECT(after * ps <= 256 * 1024);
  if (after * ps > 256 * 1024)
    std::printf("  reading 8 KiB between two packed matrices mapped %zu KiB of the file\n", after * ps / 1024);

  // the records compute what the file's bytes do (A: M = 1 on the backend = the records made here)
  {
    std::vector<uint8_t> ra(kquant_repack_bytes(ta, NA, K) + 64);
    uint8_t* r = ra.data() + (64 - reinterpret_cast<uintptr_t>(ra.data()) % 64) % 64;
    kquant_repack(content.data() + a_start, ta, NA, K, r, nullptr);
    const std::vector<float> x = emollm_test::normal_floats(size_t(K), 3u, 1.0f);
    std::vector<float> yb(size_t(NA), NAN), yr(size_t(NA), NAN);
    be->gemm(x.data(), K, A, ta, nullptr, yb.data(), NA, 1, NA, K);
    gemm_kquant_repacked(x.data(), K, r, ta, nullptr, yr.data(), NA, 1, NA, K, nullptr);
    EXPECT(std::memcmp(yb.data(), yr.data(), yb.size() * 4) == 0);
  }
  pa.reset();
  pb.reset();
#endif
}
