#include "backend.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "base/arena.h"
#include "base/env_switch.h"
#include "base/error.h"
#include "base/thread_pool.h"
#include "kernels/cpu/backward.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/row_ops.h"
#include "core/runtime.h"
#include "core/emulated_device_backend.h"
#if defined(EMOLLM_WITH_CUDA)
#include "core/cuda_backend.h"
#endif

namespace emollm {
namespace {

std::atomic<size_t> g_packed_bytes{0};

// True when [lo, hi) lies inside read-only mappings of one file in this process, without gaps (a
// weight file's mmap, which release_pages' MADV_NOHUGEPAGE splits at released ranges): dropping such pages loses nothing, they page back in from the file (or the page
// cache, which keeps them for the next load). Linux: /proc/self/maps.
bool in_read_only_file_mapping(uintptr_t lo, uintptr_t hi) {
#if defined(__linux__)
  FILE* f = std::fopen("/proc/self/maps", "r");
  if (!f) return false;
  bool ok = false;
  uintptr_t covered = lo;  // [lo, covered) lies in read-only file mappings
  unsigned long inode0 = 0;
  char line[512];
  while (std::fgets(line, sizeof line, f)) {
    unsigned long a = 0, b = 0, inode = 0;
    char perms[8] = {0};
    unsigned long long off = 0;
    char dev[32] = {0};
    if (std::sscanf(line, "%lx-%lx %7s %llx %31s %lu", &a, &b, perms, &off, dev, &inode) != 6) continue;
    if (b <= covered || a >= hi) continue;
    // [lo, hi) may span several mappings of the file: release_pages marks released ranges
    // MADV_NOHUGEPAGE, which splits the mapping where a range ends
    if (a > covered || perms[0] != 'r' || perms[1] != '-' || inode == 0 || (inode0 && inode != inode0)) break;
    inode0 = inode;
    covered = b;
    if (covered >= hi) {
      ok = true;
      break;
    }
  }
  std::fclose(f);
  return ok;
#else
  (void)lo;
  (void)hi;
  return false;
#endif
}

// K-quant matrices are packed (kquant_repack) a slice of rows at a time, each slice's original
// pages released once its records are written (CpuBackend::pack_gemm_weight). (The switch
// EMOLLM_KQUANT_PACK_SLICES=0, the whole matrix packed and then released, went in session 22:
// the repacked load's peak is the GGUF path's + the records' bytes + ~1 MiB, bench/README
// 2026-12-05 12:08.)
// ~16 MiB of file rows a slice, a multiple of the records' 64 rows (kquant_record_rows(): 16, 32
// or 64): TinyLlama-1.1B's only larger matrix is its 51 MiB output. 4 MiB slices (every FFN
// matrix in two) loaded q4_k_m in 2.0-3.6 s against 1.6-2.0 s unsliced (loaded machine,
// alternated); 16 MiB measured 1.7-3.0 vs 1.7-1.9.
constexpr size_t kKquantPackSliceBytes = size_t(16) << 20;
int64_t kquant_pack_slice_rows(size_t row_bytes) {
  return std::max<int64_t>(64, int64_t(kKquantPackSliceBytes / row_bytes) / 64 * 64);
}

// Drops the calling process's resident pages of [p, p + bytes) (whole pages inside the range
// only) once a packed copy replaces them, when they belong to a read-only file mapping (the
// weight file's mmap): they leave this process's RSS and page back in if anything reads them
// again (the embedding lookup of a tied matrix, a standard-layout fallback). MADV_DONTNEED keeps
// the page cache (the next load of the file stays warm). Other memory is left alone.
// The range is marked MADV_NOHUGEPAGE first: where the page cache holds the file in 2 MiB folios
// (ext4 large folios, Linux 6.x), a read of any byte of a 2 MiB-aligned span maps the whole
// folio with one PMD, so a tensor still read in place next to a released matrix (an 8 KiB
// RMSNorm weight between two layers' matrices) brought 2 MiB of released weight bytes back into
// RSS: TinyLlama-1.1B q4_k_m, 45 norm vectors, +43 MiB after the first forward. A span that
// meets a NOHUGEPAGE range is mapped in 4 KiB pages (fault-around: 64 KiB), so only the read
// pages come back; a 2 MiB span wholly inside a tensor read in place keeps its PMD mapping.
// (The switch EMOLLM_RELEASE_NOHUGEPAGE=0, the pages dropped without the mark, went in session 22.)
void release_pages(const void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_DONTNEED)
  const long ps = sysconf(_SC_PAGESIZE);
  if (ps <= 0) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), page = uintptr_t(ps);
  const uintptr_t lo = (a + page - 1) / page * page, hi = (a + bytes) / page * page;
  if (hi <= lo || !in_read_only_file_mapping(lo, hi)) return;
#if defined(MADV_NOHUGEPAGE)
  (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_NOHUGEPAGE);
#endif
  (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
#else
  (void)p;
  (void)bytes;
#endif
}

// Memory for a packed matrix: 2 MiB-aligned when it spans whole 2 MiB pages, which are asked to be
// transparent huge pages (MADV_HUGEPAGE; the tail stays in small pages, so nothing is wasted):
// filling hundreds of MiB page by page costs a fault per 4 KiB (seconds at load in a VM), and
// the decode GEMV streams it with fewer TLB misses.
constexpr size_t kHugePageBytes = kHugePage2M;
// backend.h set_bf16_decoder_panels: off unless EMOLLM_BF16_DECODER_PANELS is "1" or "on".
EnvSwitch& decoder_panels_flag() {
  static EnvSwitch on("EMOLLM_BF16_DECODER_PANELS", EnvDefault::Off);
  return on;
}
// The smallest BF16 / F16 decoder matrix that gets the same-layout copy (or, with decoder panels,
// the panels): 256 KiB (set_small_half_copies(false), tests only: 2 MiB, the previous threshold;
// its environment switch EMOLLM_SMALL_HALF_COPIES went in session 21, quiet A/B on / off 0.990 at
// 1 thread, 1.000 / 0.999 at 2: kept for the fused q / k / v dispatch it gives GQA models). A decode
// step's q / k / v take the fused GEMV dispatch (gemv_huge_pages_multi, or the panels' multi-output
// call) only when all three have a copy, and TinyLlama-1.1B's k / v (GQA: 256 x 2048 bf16 = 1 MiB)
// had none: its qkv call ran as three gemm() calls, k and v on the file's 4 KiB pages by the
// 8-row kernel, at ~0.66x the bytes per second of the other matrices (loaded decode profile).
// Below 2 MiB the copy stays in 4 KiB pages (alloc_packed); the original pages are released as for
// the others, so the resident size does not grow. Read when weights are placed (backend.h
// set_small_half_copies).
std::atomic<bool>& small_half_copies_flag() {
  static std::atomic<bool> on{true};
  return on;
}
// Default on (backend.h set_f32_huge_copies; EMOLLM_F32_HUGE_COPIES=0 off): decoder F32 matrices
// of 256 KiB or more get the BF16 / F16 treatment, a copy in the same layout in 2 MiB pages (the
// weight file's mapping is in 4 KiB pages), read by the same kernels: same bits. Quiet A/B on
// TinyLlama-1.1B f32 (Zen 5, 2 threads): decode 1.14-1.25x, prefill 1.10-1.15x, +105 MiB peak RSS.
EnvSwitch& f32_huge_copies_flag() {
  static EnvSwitch on("EMOLLM_F32_HUGE_COPIES");
  return on;
}
// CpuBackend::bf16_fused on the 2 MiB-page copies: on unless set_bf16_prefill_fuse(false) (tests:
// the reference is one gemm() each). Its environment switch EMOLLM_BF16_PREFILL_FUSE went in
// session 21: quiet 128-token prefill fused / one gemm() each 1.007 at 1 thread, 1.049 at 2.
std::atomic<bool>& bf16_prefill_fuse_flag() {
  static std::atomic<bool> on{true};
  return on;
}
size_t half_copy_min_bytes() { return small_half_copies_flag().load(std::memory_order_relaxed) ? (size_t(256) << 10) : kHugePageBytes; }
// backend.h set_packed_whole_huge_pages (A/B only, off): a copy of 256 KiB or more in whole 2 MiB
// pages, its size rounded up (its tail and a GQA model's small k / v too).
std::atomic<bool>& packed_whole_huge_flag() {
  static std::atomic<bool> on{false};
  return on;
}
void* alloc_packed(size_t bytes) {
  constexpr size_t kHuge = kHugePageBytes;
  if (packed_whole_huge_flag().load(std::memory_order_relaxed) && bytes >= (size_t(256) << 10))
    return aligned_alloc_huge((bytes + kHuge - 1) / kHuge * kHuge);
  if (bytes < kHuge) return aligned_alloc_bytes(bytes);
  return aligned_alloc_huge(bytes);
}

// backend.h set_packed_arena: packed copies back to back in chunks of 2 MiB pages (PackedArena).
// Default on, every CPU: the 4 KiB page edges stop the hardware prefetchers (an L2 stream does not
// cross a 4 KiB page on x86 cores generally, Zen 4 the one measured). Session 28, Zen 4 (EPYC
// Genoa, 2 vCPUs), decode_switch_ab AB_CPU=1 1 thread, 8 x 16 tokens, with a copy of the file,
// load 2-5: TinyLlama-1.1B decode arena / per-copy placement q4_k_m 1.066 / 1.104, q4_0 1.046 /
// 1.112, q8_0 0.998 / 1.028, bf16 0.960 / 1.027; arena / whole 2 MiB pages a copy q4_k_m 1.005,
// q4_0 0.939, q8_0 1.021, bf16 0.987 (A/As arena / arena 0.983-1.016); a load's resident memory
// +0.8 MiB (q4_k_m, 658.7 against 657.9), +1.4 (q4_0), +6.1 (q8_0), -0.2 (bf16) where whole pages a
// copy cost +249 / +273 / +164 / +45 MiB (bench/README Zen 4, session 28 h-arena).
std::atomic<bool>& packed_arena_flag() {
  static std::atomic<bool> on{true};
  return on;
}
std::atomic<size_t> g_arena_chunks{0}, g_arena_chunk_bytes{0};

// A chunk of transparent huge pages (aligned_alloc_huge: 2 MiB-aligned, a multiple of 2 MiB) that
// packed copies are bumped into; freed when the last copy in it goes (each copy holds a
// shared_ptr; the arena only a weak_ptr).
struct ArenaChunk {
  uint8_t* base = nullptr;
  size_t cap = 0, used = 0;  // used: under PackedArena's lock
  explicit ArenaChunk(size_t c) : base(static_cast<uint8_t*>(aligned_alloc_huge(c))), cap(c) {
    g_arena_chunks.fetch_add(1);
    g_arena_chunk_bytes.fetch_add(c);
  }
  ~ArenaChunk() {
    aligned_free(base);
    g_arena_chunks.fetch_sub(1);
    g_arena_chunk_bytes.fetch_sub(cap);
  }
  ArenaChunk(const ArenaChunk&) = delete;
  ArenaChunk& operator=(const ArenaChunk&) = delete;
};

// Where a packed copy lives: its own allocation (chunk null: alloc_packed, aligned_free) or a
// range of an arena chunk.
struct PackedBlock {
  void* data = nullptr;
  std::shared_ptr<ArenaChunk> chunk;
  size_t reserved = 0;  // bytes taken in the chunk (a multiple of kArenaAlign)
};

// The packed copies' arena (set_packed_arena): by default each copy had memory of its own, whose
// whole 2 MiB pages only were huge pages, its tail (and any copy under 2 MiB: a GQA model's k / v)
// in 4 KiB pages, where the hardware prefetchers stop at every page edge (Zen 4 session 28: the
// 1.1B q4_k_m decode 4-9% slower than with whole 2 MiB pages, bench/README); whole pages per copy
// cost up to 2 MiB a matrix. Here copies go back to back, each at a 4 KiB boundary (the kernels
// need 64 B; a page keeps each copy's pages its own, so a released copy's pages can be dropped),
// into 64 MiB chunks (or the copy's size rounded up to 2 MiB when larger), first fit over the chunks
// still alive: a chunk's unused end is untouched (not resident) but for the huge page the last copy
// ends in. Nothing is reused inside a chunk: a copy released while its chunk lives (another load's
// copies beside it) has its pages dropped (MADV_DONTNEED), and the chunk goes with its last copy.
class PackedArena {
 public:
  static constexpr size_t kChunkBytes = size_t(64) << 20;
  static constexpr size_t kArenaAlign = 4096;
  PackedBlock alloc(size_t bytes) {
    PackedBlock b;
    b.reserved = (std::max<size_t>(bytes, 1) + kArenaAlign - 1) / kArenaAlign * kArenaAlign;
    std::lock_guard<std::mutex> lk(mu_);
    for (size_t i = 0; i < open_.size();) {
      std::shared_ptr<ArenaChunk> c = open_[i].lock();
      if (!c || c->cap - c->used < kArenaAlign) {  // gone, or full
        open_.erase(open_.begin() + std::ptrdiff_t(i));
        continue;
      }
      if (c->cap - c->used >= b.reserved) {
        b.data = c->base + c->used;
        c->used += b.reserved;
        b.chunk = std::move(c);
        return b;
      }
      ++i;
    }
    const size_t cap = std::max(kChunkBytes, (b.reserved + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes);
    b.chunk = std::make_shared<ArenaChunk>(cap);
    b.data = b.chunk->base;
    b.chunk->used = b.reserved;
    open_.push_back(b.chunk);
    return b;
  }

 private:
  std::mutex mu_;
  std::vector<std::weak_ptr<ArenaChunk>> open_;
};
PackedArena& the_packed_arena() {
  static PackedArena* a = new PackedArena();  // never destroyed: copies may outlive static destruction order
  return *a;
}
PackedBlock alloc_packed_block(size_t bytes) {
  if (!packed_whole_huge_flag().load(std::memory_order_relaxed) && packed_arena_flag().load(std::memory_order_relaxed))
    return the_packed_arena().alloc(bytes);
  PackedBlock b;
  b.data = alloc_packed(bytes);
  return b;
}
void free_packed_block(PackedBlock& b) {
  if (!b.chunk) {
    aligned_free(b.data);
  } else {
#if defined(__linux__) && defined(MADV_DONTNEED)
    // The chunk lives on (other copies in it): give this copy's pages back (never reused). Marked
    // MADV_NOHUGEPAGE first, as release_pages does: in a huge-page range khugepaged may collapse a
    // 2 MiB span with dropped pages back into a whole (zero-filled) huge page, which would make
    // the released bytes resident again in a process that loads and closes models for hours; the
    // split VMA keeps it from doing so (the neighbours' pages in the boundary spans stay 4 KiB).
    if (b.chunk.use_count() > 1) {
#if defined(MADV_NOHUGEPAGE)
      (void)madvise(b.data, b.reserved, MADV_NOHUGEPAGE);
#endif
      (void)madvise(b.data, b.reserved, MADV_DONTNEED);
    }
#endif
    b.chunk.reset();
  }
  b.data = nullptr;
}

// Faults in [lo, hi) writable, contents unchanged: a locked add of 0 to one byte per 4 KiB (one
// write fault per page, none on a page already there; a 2 MiB huge page faults whole on its first
// byte). EMOLLM_PREFAULT_METHOD=populate (Linux >= 5.14): madvise(MADV_POPULATE_WRITE) first,
// which reports ENOMEM rather than meeting the OOM killer. Measured on the Zen 5 VM (kernel 6.18,
// THP "madvise", a 1.3 GiB context, 2 threads, interleaved, load ~6): populate 1.43-1.51 s, the
// touch loop 0.97-2.66 s (once 0.05 s): both ~1 GB/s, the cost being the pages' first backing in
// this VM rather than the method; the process still counted the 638 huge-page faults with
// populate. Returns false when the kernel refused the memory (populate only).
bool prefault_range(uint8_t* lo, uint8_t* hi) {
  if (hi <= lo) return true;
#if defined(__linux__) && defined(MADV_POPULATE_WRITE)
  static const bool populate = [] {
    const char* v = std::getenv("EMOLLM_PREFAULT_METHOD");
    return v && std::strcmp(v, "populate") == 0;
  }();
  if (populate) {
    const long ps = sysconf(_SC_PAGESIZE);
    const uintptr_t page = uintptr_t(ps > 0 ? ps : 4096);
    const uintptr_t a = reinterpret_cast<uintptr_t>(lo) / page * page;
    if (madvise(reinterpret_cast<void*>(a), reinterpret_cast<uintptr_t>(hi) - a, MADV_POPULATE_WRITE) == 0) return true;
    if (errno == ENOMEM) return false;
    // EINVAL (a kernel before 5.14), anything else: the touch loop below
  }
#endif
  for (uint8_t* q = lo; q < hi; q += 4096) __atomic_fetch_add(q, uint8_t(0), __ATOMIC_RELAXED);
  __atomic_fetch_add(hi - 1, uint8_t(0), __ATOMIC_RELAXED);
  return true;
}

// The CPU backend's packed weights: W (the pointer gemm() is called with) -> its quant_repack copy,
// its huge-page copy (bf16 / f16) or its GEMM panels (bf16 matrices of GemmRows::Many; `panels`).
// Shared by the backend and the handles (which may outlive it); a W packed twice (a tied matrix,
// two models on one mapping) is packed once and counted.
class PackedTable {
 public:
  struct Entry {
    DType t;
    int64_t N, K;
    PackedBlock block;
    size_t bytes;
    int refs;
    bool panels;
  };
  // A copy's layout beyond (type, N, K): K-quant records' rows (kquant_record_rows(), fixed when
  // the records are written and read by the kernels at each call): two loads of one file (one
  // mapping, one W) with different record rows get a copy each (decode_switch_ab kq_record_rows),
  // and gemm() finds the one of the rows in force. 0 for the others.
  static int layout_of(DType t) { return kquant_repack_supported(t) ? int(kquant_record_rows()) : 0; }
  // The packed copy for gemm(W, t, N, K), or null. One lock per gemm call, held for a hash lookup:
  // nothing next to streaming the matrix. A plain mutex, not std::shared_mutex: the latter's
  // pthread_rwlock_* are GLIBC_2.34 symbols on aarch64, above the prebuilds' glibc 2.33 floor
  // (scripts/check-glibc-prebuild.mjs).
  const void* find(const void* W, DType t, int64_t N, int64_t K, bool* panels) const {
    *panels = false;
    if (count_.load(std::memory_order_relaxed) == 0) return nullptr;
    const Key key{W, layout_of(t)};
    std::lock_guard<std::mutex> lk(mu_);
    auto it = map_.find(key);
    if (it == map_.end() || it->second.t != t || it->second.N != N || it->second.K != K) return nullptr;
    *panels = it->second.panels;
    return it->second.block.data;
  }
  // Takes a reference to W's packed copy, making it with `make` when absent. False when W is
  // packed for another shape or layout (then nothing is taken). *layout: the copy's layout key
  // (CpuPackedWeight's release).
  // The copy is made without the lock held, so gemm() calls of other models on this backend do
  // not wait for a load's repacking.
  template <class Make>
  bool acquire(const void* W, DType t, int64_t N, int64_t K, size_t bytes, Make&& make, bool panels, int* layout) {
    const Key key{W, layout_of(t)};
    *layout = key.layout;
    if (int r = take_existing(key, t, N, K, panels); r >= 0) return r == 1;
    PackedBlock block = alloc_packed_block(bytes);
    try {
      make(block.data);
    } catch (...) {
      free_packed_block(block);
      throw;
    }
    std::lock_guard<std::mutex> lk(mu_);
    auto it = map_.find(key);
    if (it != map_.end()) {  // packed by another thread meanwhile
      free_packed_block(block);
      if (it->second.t != t || it->second.N != N || it->second.K != K || it->second.panels != panels) return false;
      it->second.refs++;
      return true;
    }
    map_.emplace(key, Entry{t, N, K, std::move(block), bytes, 1, panels});
    count_.fetch_add(1);
    g_packed_bytes.fetch_add(bytes);
    return true;
  }
  void release(const void* W, int layout) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = map_.find(Key{W, layout});
    if (it == map_.end() || --it->second.refs > 0) return;
    free_packed_block(it->second.block);
    g_packed_bytes.fetch_sub(it->second.bytes);
    map_.erase(it);
    count_.fetch_sub(1);
  }

 private:
  struct Key {
    const void* W;
    int layout;
    bool operator==(const Key& o) const { return W == o.W && layout == o.layout; }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const { return std::hash<const void*>()(k.W) ^ (size_t(k.layout) * 0x9e3779b97f4a7c15ull); }
  };
  // 1: a reference to W's existing copy was taken; 0: W is packed for another shape or layout;
  // -1: absent.
  int take_existing(const Key& key, DType t, int64_t N, int64_t K, bool panels) {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = map_.find(key);
    if (it == map_.end()) return -1;
    if (it->second.t != t || it->second.N != N || it->second.K != K || it->second.panels != panels) return 0;
    it->second.refs++;
    return 1;
  }
  mutable std::mutex mu_;
  std::unordered_map<Key, Entry, KeyHash> map_;
  std::atomic<size_t> count_{0};
};

class CpuPackedWeight final : public PackedGemmWeight {
 public:
  CpuPackedWeight(std::shared_ptr<PackedTable> table, const void* W, size_t bytes, int layout)
      : table_(std::move(table)), W_(W), bytes_(bytes), layout_(layout) {}
  ~CpuPackedWeight() override { table_->release(W_, layout_); }
  size_t bytes() const override { return bytes_; }

 private:
  std::shared_ptr<PackedTable> table_;
  const void* W_;
  size_t bytes_;
  int layout_;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(std::shared_ptr<ThreadPool> pool) : owned_(std::move(pool)), pool_(*owned_) {}

  DeviceKind device() const override { return DeviceKind::Cpu; }
  std::string describe() const override {
    return std::string("cpu (") + isa_name(isa_active()) + ", " + std::to_string(pool_.size()) + " threads)";
  }

  // Buffers of >= 2 MiB (a context's KV cache and activations, device tensors) on transparent huge
  // pages, as the packed weights: on 4 KiB pages a decode step's K and V rows reach a fresh page
  // every 4 positions in each layer (1.1B: ~11 page faults a token, tens of us each in a loaded
  // VM; llama.cpp clears its whole KV cache at creation instead); on 2 MiB pages the first touch
  // of each 2 MiB faults once (the first LLaVA-7B prefill, 628 positions, touches ~1 GiB of KV cache and
  // activations: ~186k faults on 4 KiB pages, ~5k on 2 MiB). (The switch EMOLLM_HUGE_BUFFERS=0, 4 KiB
  // pages, went in session 22: decode 1.05-1.15x q4_0, 1.03-1.36x bf16, bench/README 2026-12-05 05:46.)
  void* alloc(size_t bytes) override { return alloc_packed(bytes); }
  void free(void* p) override { aligned_free(p); }
  // Split over the pool's threads in whole 2 MiB units: the cost is the kernel clearing (and, in a
  // VM, the host backing) each page, ~1 GB/s a core here, which two cores share.
  void prefault(void* p, size_t bytes) override {
    if (!p || bytes == 0) return;
    uint8_t* base = static_cast<uint8_t*>(p);
    const int64_t units = int64_t((bytes + kHugePageBytes - 1) / kHugePageBytes);
    std::atomic<bool> refused{false};
    auto part = [&](int ith, int nth) {
      int64_t b = 0, e = 0;
      split_range(units, ith, nth, 1, &b, &e);
      uint8_t* lo = base + size_t(b) * kHugePageBytes;
      uint8_t* hi = base + std::min(bytes, size_t(e) * kHugePageBytes);
      if (!prefault_range(lo, hi)) refused.store(true);
    };
    // split over the pool (session 21 removed EMOLLM_PREFAULT_THREADS=1, the calling thread alone:
    // no gain, quiet 0.92 at 2 threads)
    if (pool_.size() > 1 && units > 1)
      pool_.run(part);
    else
      part(0, 1);
    if (refused.load())
      throw Error(ErrorCode::OutOfMemory, "could not fault in " + std::to_string(bytes >> 20) +
                                              " MiB of buffers (the kernel refused the pages)");
  }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  bool uses_host_memory() const override { return true; }
  bool supports_paged_kv() const override { return true; }
  // f16 / bf16 caches: rounded once as convert() writes them, widened to f32 as attention reads
  bool supports_kv_dtype(DType t) const override { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

  void prefetch(const void* p, size_t bytes) override {
    const char* c = static_cast<const char*>(p);
    for (size_t o = 0; c && o < bytes; o += 64) __builtin_prefetch(c + o, 0, 3);
  }

  void gemm(const float* X, int64_t ldx, const void* W, DType wtype, const float* bias, float* Y, int64_t ldy,
            int64_t M, int64_t N, int64_t K) override {
    // Packed weights serve every M with q8_0 activations. With f32 activations asked for
    // (QuantActivations::F32), or the ISA capped below the VNNI kernel after the packing
    // (configure({ isa })), the standard layout's kernels run on the original bytes instead.
    // bf16 GEMM panels: the ISA capped below AVX512-BF16 after the packing reads the original bytes.
    bool panels = false;
    const void* packed = packed_->find(W, wtype, N, K, &panels);
    if (packed && panels) {
      if (bf16_panels_usable()) return gemm_bf16_panels(X, ldx, packed, bias, Y, ldy, M, N, K, &pool_);
    } else if (packed && (wtype == DType::BF16 || wtype == DType::F16 || wtype == DType::F32)) {
      return gemm_huge_pages(X, ldx, packed, wtype, bias, Y, ldy, M, N, K, &pool_);  // same layout, 2 MiB pages
    } else if (packed && kquant_repack_supported(wtype)) {  // kquant_repack's 16-row records
      if (quant_activations() == QuantActivations::Q8 && kquant_repacked_usable())
        return gemm_kquant_repacked(X, ldx, packed, wtype, bias, Y, ldy, M, N, K, &pool_);
    } else if (packed && quant_activations() == QuantActivations::Q8 && isa_active() >= Isa::Avx512) {
      return gemm_repacked(X, ldx, packed, wtype, bias, Y, ldy, M, N, K, &pool_);
    }
    emollm::gemm(X, ldx, W, wtype, bias, Y, ldy, M, N, K, &pool_);
  }
  // A decode step's GEMVs of one x as one pool dispatch, when every W has a packed copy of the
  // kind gemm() would use and all share a type (the usual q/k/v, gate/up); else one gemm() each.
  void gemm_multi(const float* X, int64_t ldx, const GemmOutput* outs, int n, int64_t M, int64_t K) override {
    if (M == 1 && n > 1 && n <= kMaxGemvOutputs && gemv_fusion() && gemv_fused(X, outs, n, K)) return;
    // (M = 1 too: a decoder's matrices in panels, bf16_decoder_panels(), are no GEMV layout)
    if (n > 1 && n <= kMaxPanelOutputs && bf16_fused(X, ldx, outs, n, M, K, true)) return;
    if (M > 1 && n > 1 && n <= kMaxRepackedOutputs && repacked_fused(X, ldx, outs, n, M, K)) return;
    if (M > 1 && n > 1 && n <= kMaxPanelOutputs && bf16_fused(X, ldx, outs, n, M, K, false)) return;
    Backend::gemm_multi(X, ldx, outs, n, M, K);
  }
  // Many rows on quant_repack's copies (a prefill layer's q/k/v, gate/up): what gemm() runs for
  // each output, with X rounded and packed once and one dispatch (gemm_repacked_multi), when every
  // W has a repacked copy of one type.
  bool repacked_fused(const float* X, int64_t ldx, const GemmOutput* outs, int n, int64_t M, int64_t K) {
    const DType t = outs[0].wtype;
    if ((t != DType::Q4_0 && t != DType::Q8_0) || quant_activations() != QuantActivations::Q8 ||
        isa_active() < Isa::Avx512)
      return false;
    RepackedOutput r[kMaxRepackedOutputs];
    for (int j = 0; j < n; ++j) {
      if (outs[j].wtype != t) return false;
      bool panels = false;
      const void* packed = packed_->find(outs[j].W, t, outs[j].N, K, &panels);
      if (!packed || panels) return false;
      r[j] = RepackedOutput{packed, outs[j].bias, outs[j].Y, outs[j].ldy, outs[j].N};
    }
    gemm_repacked_multi(X, ldx, t, r, n, M, K, &pool_);
    return true;
  }
  // A layer's bf16 products of one input as one call, when every W has a copy of one kind: on
  // GEMM panels (a vision layer's q/k/v, or a decoder with bf16_decoder_panels()):
  // gemm_bf16_panels_multi, X packed once, one dispatch (else one gemm() each, which reads the same
  // panels); on the 2 MiB-page row-major copies (a bf16 decoder's prefill q / k / v, gate / up, M > 1):
  // gemm_bf16_rows_multi, what gemm() gives for each output bit for bit, with X rounded and packed
  // once and one thread split over all their weight panels (TinyLlama-1.1B's k / v, N = 256, no
  // longer split by rows; X packing was 13.6% of such a call's samples, M = 512, 1 thread;
  // set_bf16_prefill_fuse(false): one gemm() each).
  bool bf16_fused(const float* X, int64_t ldx, const GemmOutput* outs, int n, int64_t M, int64_t K, bool on_panels) {
    if (on_panels ? !bf16_panels_usable() : !bf16_prefill_fuse_flag().load(std::memory_order_relaxed)) return false;
    PanelOutput po[kMaxPanelOutputs];
    for (int j = 0; j < n; ++j) {
      if (outs[j].wtype != DType::BF16) return false;
      bool panels = false;
      const void* packed = packed_->find(outs[j].W, DType::BF16, outs[j].N, K, &panels);
      if (!packed || panels != on_panels) return false;
      po[j] = PanelOutput{packed, outs[j].bias, outs[j].Y, outs[j].ldy, outs[j].N};
    }
    if (on_panels)
      gemm_bf16_panels_multi(X, ldx, po, n, M, K, &pool_);
    else
      gemm_bf16_rows_multi(X, ldx, po, n, M, K, &pool_);
    return true;
  }
  bool gemv_fused(const float* x, const GemmOutput* outs, int n, int64_t K) {
    const DType t = outs[0].wtype;
    const bool huge = t == DType::BF16 || t == DType::F16 || t == DType::F32;  // F32: copies only when asked
    const bool repacked = (t == DType::Q4_0 || t == DType::Q8_0) && quant_activations() == QuantActivations::Q8 &&
                          isa_active() >= Isa::Avx512;
    const bool records = kquant_repack_supported(t) && quant_activations() == QuantActivations::Q8 &&
                         kquant_repacked_usable();
    if (!huge && !repacked && !records) return false;
    GemvOutput g[kMaxGemvOutputs];
    for (int j = 0; j < n; ++j) {
      if (outs[j].wtype != t) return false;
      bool panels = false;  // a bf16 panel copy (GemmRows::Many) is no GEMV layout
      const void* packed = packed_->find(outs[j].W, t, outs[j].N, K, &panels);
      if (!packed || panels) return false;
      g[j] = GemvOutput{packed, outs[j].bias, outs[j].Y, outs[j].N};
    }
    if (huge)
      gemv_huge_pages_multi(x, t, g, n, K, &pool_);
    else if (records)
      gemv_kquant_repacked_multi(x, t, g, n, K, &pool_);
    else
      gemv_repacked_multi(x, t, g, n, K, &pool_);
    return true;
  }
  // Q8_0 / Q4_0 matrices into quant_repack's 16-row layout, where its VNNI kernel runs and
  // weight_repacking() is on; the original bytes' pages are then released (see release_pages).
  // BF16 / F16 matrices of 2 MiB or more (256 KiB or more: half_copy_min_bytes): a copy in the same
  // layout in 2 MiB pages (alloc_packed; under 2 MiB in 4 KiB pages, for the fused decode dispatch),
  // which gemm_huge_pages streams: the weight file's mapping is in 4 KiB pages, whose TLB misses
  // cost TinyLlama-1.1B bf16 decode ~10% and prefill ~15% (Zen 5, 2 threads; more with the
  // single-stream GEMV that huge pages allow, see kernels.h).
  // BF16 matrices of GemmRows::Many (vision towers, projectors) where AVX512-BF16 runs: the
  // vdpbf16ps GEMM's panels (bf16_pack_panels), so no call packs W again.
  std::unique_ptr<PackedGemmWeight> pack_gemm_weight(const void* W, DType wtype, int64_t N, int64_t K,
                                                     GemmRows rows = GemmRows::Any) override {
    // (GemmRows::Any too with bf16_decoder_panels(), instead of the 2 MiB-page copy below)
    const bool decoder_panels = rows == GemmRows::Any && bf16_decoder_panels() &&
                                size_t(N) * dtype_row_bytes(wtype, K) >= half_copy_min_bytes();
    if (W && (rows == GemmRows::Many || decoder_panels) && wtype == DType::BF16 && N > 0 &&
        K > 0 && weight_repacking() && bf16_panels_usable()) {
      const size_t bytes = bf16_panels_bytes(N, K);
      bool made = false;
      int layout = 0;
      if (!packed_->acquire(
              W, wtype, N, K, bytes,
              [&](void* out) {
                bf16_pack_panels(W, N, K, out, &pool_);
                made = true;
              },
              true, &layout))
        return nullptr;
      if (made) release_pages(W, size_t(N) * dtype_row_bytes(wtype, K));
      return std::make_unique<CpuPackedWeight>(packed_, W, bytes, layout);
    }
    if (rows == GemmRows::Many) return nullptr;  // the layouts below serve the decode GEMV
    if (W && weight_repacking() && N > 0 && K > 0 &&
        (wtype == DType::BF16 || wtype == DType::F16 || (wtype == DType::F32 && f32_huge_copies())) &&
        size_t(N) * dtype_row_bytes(wtype, K) >= half_copy_min_bytes()) {
      const size_t bytes = size_t(N) * dtype_row_bytes(wtype, K);
      bool made = false;
      int layout = 0;
      if (!packed_->acquire(W, wtype, N, K, bytes, [&](void* out) {
            pool_.parallel_for(int64_t(bytes), 1 << 20, [&](int64_t b, int64_t e) {
              std::memcpy(static_cast<uint8_t*>(out) + b, static_cast<const uint8_t*>(W) + b, size_t(e - b));
            });
            made = true;
          }, false, &layout))
        return nullptr;
      if (made) release_pages(W, bytes);
      return std::make_unique<CpuPackedWeight>(packed_, W, bytes, layout);
    }
    // Q4_K / Q6_K: kquant_repack's 16-row records (EMOLLM_REPACK=0: the GGUF bytes, read in place)
    if (W && weight_repacking() && kquant_repacking() && kquant_repack_supported(wtype) && N > 0 && K > 0 &&
        K % 256 == 0 && kquant_repacked_usable()) {
      const size_t bytes = kquant_repack_bytes(wtype, N, K), rb = dtype_row_bytes(wtype, K);
      bool made = false;
      int layout = 0;
      if (!packed_->acquire(W, wtype, N, K, bytes, [&](void* out) {
            // In slices of ~kKquantPackSliceBytes (16 MiB) of the file's rows (whole 16-row records), each
            // slice's pages released once its records are written: a matrix's original pages and
            // its records are resident together for one slice only, not for the whole matrix
            // (TinyLlama-1.1B's output, 51 MiB of q6_K: the load's peak was the records so far plus
            // those 51 MiB).
            const int64_t step = kquant_pack_slice_rows(rb);
            const size_t group_bytes = kquant_repack_bytes(wtype, 1, K);
            for (int64_t r0 = 0; r0 < N; r0 += step) {
              const int64_t n = std::min(step, N - r0);
              const uint8_t* src = static_cast<const uint8_t*>(W) + size_t(r0) * rb;
              kquant_repack(src, wtype, n, K, static_cast<uint8_t*>(out) + size_t(r0 / kquant_record_rows()) * group_bytes,
                            &pool_);
              if (n < N) release_pages(src, size_t(n) * rb);
            }
            made = true;
          }, false, &layout))
        return nullptr;
      if (made) release_pages(W, size_t(N) * rb);  // the whole range: pages two slices shared
      return std::make_unique<CpuPackedWeight>(packed_, W, bytes, layout);
    }
    if (!W || !weight_repacking() || (wtype != DType::Q4_0 && wtype != DType::Q8_0) || N <= 0 || K <= 0 || K % 32 != 0)
      return nullptr;
    if (!(isa_active() >= Isa::Avx512 && cpu_features().avx512vnni)) return nullptr;
    const size_t bytes = quant_repack_bytes(wtype, N, K);
    bool made = false;
    int layout = 0;
    if (!packed_->acquire(W, wtype, N, K, bytes, [&](void* out) {
          quant_repack(W, wtype, N, K, out, &pool_);
          made = true;
        }, false, &layout))
      return nullptr;
    if (made) release_pages(W, size_t(N) * dtype_row_bytes(wtype, K));
    return std::make_unique<CpuPackedWeight>(packed_, W, bytes, layout);
  }
  const void* gemm_weight_bytes(const void* W, DType wtype, int64_t N, int64_t K) const override {
    // the 2 MiB-page copy has W's layout; a bf16 panel copy (GemmRows::Many) does not
    bool panels = false;
    if (wtype == DType::BF16 || wtype == DType::F16 || wtype == DType::F32)
      if (const void* packed = packed_->find(W, wtype, N, K, &panels); packed && !panels) return packed;
    return W;
  }
  void rmsnorm(const float* x, int64_t ldx, const float* w, float* y, int64_t ldy, int64_t rows, int64_t n,
               float eps) override {
    emollm::rmsnorm(x, ldx, w, y, ldy, rows, n, eps, &pool_);
  }
  void layernorm(const float* x, int64_t ldx, const float* w, const float* b, float* y, int64_t ldy, int64_t rows,
                 int64_t n, float eps) override {
    emollm::layernorm(x, ldx, w, b, y, ldy, rows, n, eps, &pool_);
  }
  void silu(const float* x, float* y, int64_t n) override { emollm::silu(x, y, n, &pool_); }
  void gelu_erf(const float* x, float* y, int64_t n) override { emollm::gelu_erf(x, y, n, &pool_); }
  void quick_gelu(const float* x, float* y, int64_t n) override { emollm::quick_gelu(x, y, n, &pool_); }
  void swiglu(const float* gate, const float* up, float* y, int64_t n) override { emollm::swiglu(gate, up, y, n, &pool_); }
  void add(const float* a, const float* b, float* y, int64_t n) override { emollm::add(a, b, y, n, &pool_); }
  void add_rmsnorm(float* x, int64_t ldx, const float* d, int64_t ldd, const float* w, float* y, int64_t ldy,
                   int64_t rows, int64_t n, float eps) override {
    emollm::add_rmsnorm(x, ldx, d, ldd, w, y, ldy, rows, n, eps, &pool_);
  }
  void add_layernorm(float* x, int64_t ldx, const float* d, int64_t ldd, const float* w, const float* b, float* y,
                     int64_t ldy, int64_t rows, int64_t n, float eps) override {
    emollm::add_layernorm(x, ldx, d, ldd, w, b, y, ldy, rows, n, eps, &pool_);
  }
  void rope_pair(float* a, int64_t lda, int64_t heads_a, float* b, int64_t ldb, int64_t heads_b, int64_t n_tokens,
                 const int32_t* positions, const RopeParams& p) override {
    emollm::rope_pair(a, lda, heads_a, b, ldb, heads_b, n_tokens, positions, p, &pool_);
  }
  void copy(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void softmax(const float* x, int64_t ldx, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    emollm::softmax(x, ldx, y, ldy, rows, n, &pool_);
  }
  void rope(float* x, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
            const RopeParams& p) override {
    emollm::rope(x, ld, n_tokens, n_heads, positions, p, &pool_);
  }
  void embedding_lookup(const void* table, DType dtype, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n,
                        float* out, int64_t ld_out) override {
    emollm::embedding_lookup(table, dtype, vocab, dim, ids, n, out, ld_out, &pool_);
  }
  void attention(const float* q, const float* k, const float* v, float* out, const AttentionParams& p) override {
    require_kv_dtype(p.kv_dtype);
    emollm::attention(q, k, v, out, p, &pool_);
  }
  void attention_batch(const AttentionBatchItem* items, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) require_kv_dtype(items[i].p.kv_dtype);
    emollm::attention_batch(items, n, &pool_);
  }
  void mvp_projection(const float* X, const void* W1, const float* b1, const void* W2, const float* b2, const float* G,
                      DType wtype, float* Y, const MvpProjectionParams& p) override {
    emollm::mvp_projection(X, W1, b1, W2, b2, G, wtype, Y, p, &pool_);
  }
  void copy_2d(void* dst, size_t ld_dst, const void* src, size_t ld_src, int64_t rows, size_t row_bytes) override {
    emollm::copy_2d(dst, ld_dst, src, ld_src, rows, row_bytes, &pool_);
  }
  void extract_patches(const float* images, float* cols, int64_t ld_cols, const PatchParams& p) override {
    emollm::extract_patches(images, cols, ld_cols, p, &pool_);
  }
  void convert(const void* src, DType src_type, void* dst, DType dst_type, int64_t n) override {
    emollm::convert(src, src_type, dst, dst_type, n, &pool_);
  }
  void add_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    emollm::add_row(x, ldx, v, y, ldy, rows, n, &pool_);
  }
  void mul_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n) override {
    emollm::mul_row(x, ldx, v, y, ldy, rows, n, &pool_);
  }
  void mul_row_add(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n,
                   bool accumulate) override {
    emollm::mul_row_add(x, ldx, v, y, ldy, rows, n, accumulate, &pool_);
  }
  void scale(const float* x, float s, float* y, int64_t n) override { emollm::scale(x, s, y, n, &pool_); }

  // ---- training (kernels/cpu/backward.h on this backend's pool)
  void gemm_backward_x(const float* dY, int64_t lddy, const void* W, DType wtype, float* dX, int64_t lddx, int64_t M,
                       int64_t N, int64_t K, bool accumulate) override {
    emollm::gemm_backward_x(dY, lddy, gemm_weight_bytes(W, wtype, N, K), wtype, dX, lddx, M, N, K, accumulate, &pool_);
  }
  void rmsnorm_backward(const float* x, int64_t ldx, const float* w, const float* dy, int64_t lddy, float* dx,
                        int64_t lddx, int64_t rows, int64_t n, float eps, bool accumulate) override {
    emollm::rmsnorm_backward(x, ldx, w, dy, lddy, dx, lddx, rows, n, eps, accumulate, &pool_);
  }
  void swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup,
                       int64_t n) override {
    emollm::swiglu_backward(gate, up, dy, dgate, dup, n, &pool_);
  }
  void rope_backward(float* dx, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
                     const RopeParams& p) override {
    emollm::rope_backward(dx, ld, n_tokens, n_heads, positions, p, &pool_);
  }
  void attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                          const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p) override {
    emollm::attention_backward(q, k, v, out, dout, lse, dq, dk, dv, p, &pool_);
  }
  double cross_entropy(const float* logits, int64_t ld, const int32_t* targets, int64_t rows, int64_t V, float scale,
                       float* dlogits) override {
    return emollm::cross_entropy(logits, ld, targets, rows, V, scale, dlogits, &pool_);
  }

 private:
  std::shared_ptr<ThreadPool> owned_;
  ThreadPool& pool_;
  std::shared_ptr<PackedTable> packed_ = std::make_shared<PackedTable>();
};

// A stream on which every call has finished when it returns: the CPU's, and the default.
class HostStream final : public BackendStream {
 public:
  void synchronize() override {}
};

thread_local BackendContext* t_context = nullptr;

// Scratch for a default op: from the bound context's workspace (released when the op returns),
// else a buffer of its own for this call.
class Scratch {
 public:
  explicit Scratch(Backend& be) : be_(be), ws_(be.current_workspace()) {
    if (ws_) frame_.emplace(*ws_);
  }
  float* floats(int64_t n) {
    if (ws_) return ws_->take_n<float>(n);
    owned_.emplace_back(be_, size_t(n) * sizeof(float));
    return static_cast<float*>(owned_.back().data());
  }

 private:
  Backend& be_;
  Workspace* ws_;
  std::optional<Workspace::Frame> frame_;
  std::vector<BackendBuffer> owned_;
};

}  // namespace

void set_packed_whole_huge_pages(bool on) { packed_whole_huge_flag().store(on, std::memory_order_relaxed); }
void set_packed_arena(bool on) { packed_arena_flag().store(on, std::memory_order_relaxed); }
bool packed_arena() { return packed_arena_flag().load(std::memory_order_relaxed); }
size_t packed_arena_chunks() { return g_arena_chunks.load(); }
size_t packed_arena_chunk_bytes() { return g_arena_chunk_bytes.load(); }
void set_small_half_copies(bool on) { small_half_copies_flag().store(on, std::memory_order_relaxed); }
void set_f32_huge_copies(bool on) { f32_huge_copies_flag().set(on); }
bool f32_huge_copies() { return f32_huge_copies_flag().on(); }
void set_bf16_prefill_fuse(bool on) { bf16_prefill_fuse_flag().store(on, std::memory_order_relaxed); }
bool bf16_prefill_fuse() { return bf16_prefill_fuse_flag().load(std::memory_order_relaxed); }
bool small_half_copies() { return small_half_copies_flag().load(std::memory_order_relaxed); }
void set_bf16_decoder_panels(bool on) { decoder_panels_flag().set(on); }
bool bf16_decoder_panels() { return decoder_panels_flag().on(); }

// ---------------------------------------------------------------- buffers, workspace, contexts
BackendBuffer& BackendBuffer::operator=(BackendBuffer&& o) noexcept {
  if (this != &o) {
    release();
    be_ = o.be_;
    bytes_ = o.bytes_;
    data_ = o.data_;
    o.data_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}
void BackendBuffer::allocate(Backend& be, size_t bytes) {
  release();
  data_ = bytes ? be.alloc(bytes) : nullptr;
  be_ = &be;
  bytes_ = bytes;
}
void BackendBuffer::release() {
  if (data_) be_->free(data_);
  data_ = nullptr;
  bytes_ = 0;
}

void* Workspace::take(size_t bytes) {
  constexpr size_t kAlign = 64;
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  if (bytes == 0) bytes = kAlign;
  if (chunks_.empty() || used_ + bytes > chunks_.back().bytes()) {
    // A new chunk: live blocks in the older ones stay where they are. At least double the last,
    // so a context settles after a few calls (and rewind() merges the chunks once all are free).
    const size_t last = chunks_.empty() ? 0 : chunks_.back().bytes();
    chunks_.emplace_back(be_, std::max(bytes, std::max(last * 2, size_t(1) << 20)));
    used_ = 0;
  }
  void* p = static_cast<uint8_t*>(chunks_.back().data()) + used_;
  used_ += bytes;
  return p;
}
size_t Workspace::capacity() const {
  size_t n = 0;
  for (const auto& c : chunks_) n += c.bytes();
  return n;
}
void Workspace::rewind(std::pair<size_t, size_t> m) {
  // Chunks opened after the mark are empty now; keep the largest as the single chunk when the
  // workspace is empty again, so the next call fits in one.
  if (m.first == 0 || (m.first == 1 && m.second == 0)) {
    if (chunks_.size() > 1) {
      size_t total = capacity();
      chunks_.clear();
      chunks_.emplace_back(be_, total);
    }
    used_ = 0;
    return;
  }
  while (chunks_.size() > m.first) chunks_.pop_back();
  used_ = m.second;
}

BackendContext::BackendContext(Backend& be) : be_(be), stream_(be.create_stream()), workspace_(be) {
  EMOLLM_CHECK_ARG(stream_ != nullptr, "BackendContext: the backend made no stream");
}
BackendContext::~BackendContext() {
  // Work still queued may use the workspace: finish it before the memory goes.
  stream_->synchronize();
}

ContextScope::ContextScope(BackendContext& ctx) : previous_(t_context) { t_context = &ctx; }
ContextScope::~ContextScope() { t_context = previous_; }
BackendContext* current_context() { return t_context; }

// ---------------------------------------------------------------- Backend defaults
std::unique_ptr<BackendStream> Backend::create_stream() { return std::make_unique<HostStream>(); }

BackendStream* Backend::current_stream() const {
  return t_context && &t_context->backend() == this ? &t_context->stream() : nullptr;
}
Workspace* Backend::current_workspace() const {
  return t_context && &t_context->backend() == this ? &t_context->workspace() : nullptr;
}

std::unique_ptr<PackedGemmWeight> Backend::pack_gemm_weight(const void*, DType, int64_t, int64_t, GemmRows) {
  return nullptr;
}
const void* Backend::gemm_weight_bytes(const void* W, DType, int64_t, int64_t) const { return W; }

void Backend::gemm_multi(const float* X, int64_t ldx, const GemmOutput* outs, int n, int64_t M, int64_t K) {
  for (int j = 0; j < n; ++j)
    gemm(X, ldx, outs[j].W, outs[j].wtype, outs[j].bias, outs[j].Y, outs[j].ldy, M, outs[j].N, K);
}

size_t packed_gemm_weight_bytes() { return g_packed_bytes.load(); }

void Backend::require_kv_dtype(DType t) const {
  if (supports_kv_dtype(t)) return;
  std::string ok;
  for (DType c : {DType::F32, DType::F16, DType::BF16})
    if (supports_kv_dtype(c)) ok += std::string(ok.empty() ? "" : ", ") + dtype_name(c);
  throw Error(ErrorCode::Unsupported, std::string("KV cache type ") + dtype_name(t) + " is not supported by " +
                                          describe() + " (supported: " + ok + ")");
}

void Backend::mvp_projection(const float* X, const void* W1, const float* b1, const void* W2, const float* b2,
                             const float* G, DType wtype, float* Y, const MvpProjectionParams& p) {
  EMOLLM_CHECK_ARG(p.tokens >= 0 && p.d_in > 0 && p.d_hid > 0 && p.d_out > 0 && p.n_heads > 0,
                   "mvp_projection: d_in, d_hid, d_out and n_heads must be positive");
  const int64_t ldx = p.ldx ? p.ldx : p.d_in, ldy = p.ldy ? p.ldy : p.d_out;
  const int64_t T = p.tokens, H = p.n_heads, Dh = p.d_hid, Do = p.d_out;
  if (T == 0) return;
  Scratch scratch(*this);
  float* hidden = scratch.floats(T * H * Dh);
  float* tmp = scratch.floats(T * Do);
  gemm(X, ldx, W1, wtype, b1, hidden, H * Dh, T, H * Dh, p.d_in);
  gelu_erf(hidden, hidden, T * H * Dh);
  const size_t w2_head_bytes = size_t(Do) * dtype_row_bytes(wtype, Dh);
  for (int64_t h = 0; h < H; ++h) {
    gemm(hidden + h * Dh, H * Dh, static_cast<const uint8_t*>(W2) + size_t(h) * w2_head_bytes, wtype,
         b2 ? b2 + h * Do : nullptr, tmp, Do, T, Do, Dh);
    mul_row_add(tmp, Do, G + h * Do, Y, ldy, T, Do, h > 0);
  }
}

void Backend::add_rmsnorm(float* x, int64_t ldx, const float* d, int64_t ldd, const float* w, float* y, int64_t ldy,
                          int64_t rows, int64_t n, float eps) {
  if (rows <= 0) return;
  if (rows == 1 || (ldx == n && ldd == n)) {
    add(x, d, x, rows * n);
  } else {
    for (int64_t r = 0; r < rows; ++r) add(x + r * ldx, d + r * ldd, x + r * ldx, n);
  }
  rmsnorm(x, ldx, w, y, ldy, rows, n, eps);
}

void Backend::add_layernorm(float* x, int64_t ldx, const float* d, int64_t ldd, const float* w, const float* b,
                            float* y, int64_t ldy, int64_t rows, int64_t n, float eps) {
  if (rows <= 0) return;
  if (rows == 1 || (ldx == n && ldd == n)) {
    add(x, d, x, rows * n);
  } else {
    for (int64_t r = 0; r < rows; ++r) add(x + r * ldx, d + r * ldd, x + r * ldx, n);
  }
  layernorm(x, ldx, w, b, y, ldy, rows, n, eps);
}

void Backend::rope_pair(float* a, int64_t lda, int64_t heads_a, float* b, int64_t ldb, int64_t heads_b,
                        int64_t n_tokens, const int32_t* positions, const RopeParams& p) {
  rope(a, lda, n_tokens, heads_a, positions, p);
  rope(b, ldb, n_tokens, heads_b, positions, p);
}

void Backend::copy_2d(void* dst, size_t ld_dst, const void* src, size_t ld_src, int64_t rows, size_t row_bytes) {
  if (rows <= 0 || row_bytes == 0) return;
  if (ld_dst == row_bytes && ld_src == row_bytes) return copy(dst, src, size_t(rows) * row_bytes);
  for (int64_t r = 0; r < rows; ++r)
    copy(static_cast<uint8_t*>(dst) + size_t(r) * ld_dst, static_cast<const uint8_t*>(src) + size_t(r) * ld_src,
         row_bytes);
}

void Backend::extract_patches(const float* images, float* cols, int64_t ld_cols, const PatchParams& p) {
  EMOLLM_CHECK_ARG(p.batch >= 0 && p.channels > 0 && p.patch > 0 && p.height >= p.patch && p.width >= p.patch &&
                       p.height % p.patch == 0 && p.width % p.patch == 0,
                   "extract_patches: height and width must be positive multiples of the patch size");
  const int64_t C = p.channels, H = p.height, W = p.width, ps = p.patch, ph = p.patches_h(), pw = p.patches_w();
  const int64_t K = p.row_elems(), ld = ld_cols ? ld_cols : K;
  // For a fixed (image, patch row, channel, ky) the pw patches of that row are one strided copy.
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t py = 0; py < ph; ++py)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t ky = 0; ky < ps; ++ky)
          copy_2d(cols + (b * ph + py) * pw * ld + (c * ps + ky) * ps, size_t(ld) * sizeof(float),
                  images + ((b * C + c) * H + py * ps + ky) * W, size_t(ps) * sizeof(float), pw,
                  size_t(ps) * sizeof(float));
}

void Backend::convert(const void* src, DType src_type, void* dst, DType dst_type, int64_t n) {
  if (src_type == dst_type && !dtype_is_quantized(src_type)) return copy(dst, src, dtype_row_bytes(src_type, n));
  throw Error(ErrorCode::Unsupported, std::string("convert ") + dtype_name(src_type) + " -> " + dtype_name(dst_type) +
                                          " is not implemented by " + describe());
}

namespace {
// The host fallback of the row-broadcast defaults: only where the host can read the memory.
void require_host(const Backend& be, const char* op) {
  if (!be.uses_host_memory())
    throw Error(ErrorCode::Unsupported, std::string(op) + " is not implemented by " + be.describe());
}
}  // namespace

void Backend::add_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n) {
  require_host(*this, "add_row");
  emollm::add_row(x, ldx, v, y, ldy, rows, n, nullptr);
}
void Backend::mul_row(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n) {
  require_host(*this, "mul_row");
  emollm::mul_row(x, ldx, v, y, ldy, rows, n, nullptr);
}
void Backend::mul_row_add(const float* x, int64_t ldx, const float* v, float* y, int64_t ldy, int64_t rows, int64_t n,
                          bool accumulate) {
  require_host(*this, "mul_row_add");
  emollm::mul_row_add(x, ldx, v, y, ldy, rows, n, accumulate, nullptr);
}
void Backend::scale(const float* x, float s, float* y, int64_t n) {
  require_host(*this, "scale");
  emollm::scale(x, s, y, n, nullptr);
}

void Backend::gemm_backward_x(const float* dY, int64_t lddy, const void* W, DType wtype, float* dX, int64_t lddx,
                              int64_t M, int64_t N, int64_t K, bool accumulate) {
  require_host(*this, "gemm_backward_x");
  emollm::gemm_backward_x(dY, lddy, gemm_weight_bytes(W, wtype, N, K), wtype, dX, lddx, M, N, K, accumulate, nullptr);
}
void Backend::rmsnorm_backward(const float* x, int64_t ldx, const float* w, const float* dy, int64_t lddy, float* dx,
                               int64_t lddx, int64_t rows, int64_t n, float eps, bool accumulate) {
  require_host(*this, "rmsnorm_backward");
  emollm::rmsnorm_backward(x, ldx, w, dy, lddy, dx, lddx, rows, n, eps, accumulate, nullptr);
}
void Backend::swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate, float* dup, int64_t n) {
  require_host(*this, "swiglu_backward");
  emollm::swiglu_backward(gate, up, dy, dgate, dup, n, nullptr);
}
void Backend::rope_backward(float* dx, int64_t ld, int64_t n_tokens, int64_t n_heads, const int32_t* positions,
                            const RopeParams& p) {
  require_host(*this, "rope_backward");
  emollm::rope_backward(dx, ld, n_tokens, n_heads, positions, p, nullptr);
}
void Backend::attention_backward(const float* q, const float* k, const float* v, const float* out, const float* dout,
                                 const float* lse, float* dq, float* dk, float* dv, const AttentionParams& p) {
  require_host(*this, "attention_backward");
  emollm::attention_backward(q, k, v, out, dout, lse, dq, dk, dv, p, nullptr);
}
double Backend::cross_entropy(const float* logits, int64_t ld, const int32_t* targets, int64_t rows, int64_t V,
                              float scale, float* dlogits) {
  require_host(*this, "cross_entropy");
  return emollm::cross_entropy(logits, ld, targets, rows, V, scale, dlogits, nullptr);
}

std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<ThreadPool> pool) {
  EMOLLM_CHECK_ARG(pool != nullptr, "make_cpu_backend: null pool");
  return std::make_unique<CpuBackend>(std::move(pool));
}

std::unique_ptr<Backend> make_backend(const BackendOptions& options) {
  switch (options.device) {
    case DeviceKind::Cpu: return std::make_unique<CpuBackend>(std::make_shared<ThreadPool>(options.threads));
    case DeviceKind::Cuda:
      require_device(DeviceKind::Cuda);
#if defined(EMOLLM_WITH_CUDA)
      return make_cuda_backend(0);
#else
      break;
#endif
    case DeviceKind::Emulated:
      require_device(DeviceKind::Emulated);
      return make_emulated_device_backend(std::make_shared<ThreadPool>(options.threads));
  }
  throw Error(ErrorCode::InvalidArgument, "unknown device");
}

}  // namespace emollm
