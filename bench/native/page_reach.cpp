// What the first access to a 2 MiB page of memory costs after the process has read `other` MiB
// elsewhere: the machine's reach for address translation, guest and host together. On the shared
// dev VM (Firecracker guest, bench/README.md, session 22) a page first touched after more than
// ~2-3.5 GiB of other reads costs ~6 us (one load; 0.15-0.2 us after 2 GiB or less, 0.05 us when
// touched again), with no guest page fault, and a touch from the other vCPU first makes it cheap:
// state outside the guest, shared by its vCPUs. A decode step that streams more than that reach
// (7B: ~5 GB of weights and K / V a token) pays it on every 2 MiB page it reads, every step.
//
//   build-bench/page_reach [--region-1g] [--other-1g] [region MiB=64] [rounds=20] [other MiB ...=256 1024 2048 3072 4096]
//
// --region-1g / --other-1g: that memory in 1 GiB hugetlb pages (MAP_HUGETLB | MAP_HUGE_1GB, from the
// pool reserved in /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages; whole GiB each)
// instead of 2 MiB transparent huge pages. The process's AnonHugePages / Hugetlb are printed.
//
// Per `other` size and round: read `other` MiB (one load a 64-byte line, 2 MiB pages), then one
// load per 2 MiB page of the region (thread CPU time per page), then the same again (now cached);
// then the same with one load per 4 KiB of the region; then, after `other` MiB again, a stream of
// the region (one load a 64-byte line: what a decode GEMV does to its weights); then one load per
// 2 MiB page with the region's pages first touched by a thread on another CPU. Printed: median / p10 / p90 over the rounds, us a 2 MiB page.
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "bench_clock.h"
#include "proc_rollup.h"

namespace {
constexpr size_t kPage2M = size_t(2) << 20;

// n bytes of anonymous memory on a 2 MiB boundary, huge pages asked for, written once (faulted in).
char* huge_region(size_t n) {
  void* p = mmap(nullptr, n + kPage2M, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("mmap");
    std::exit(1);
  }
  char* a = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(p) + kPage2M - 1) & ~uintptr_t(kPage2M - 1));
  madvise(a, n, MADV_HUGEPAGE);
  std::memset(a, 1, n);
  return a;
}

constexpr size_t kPage1G = size_t(1) << 30;
#ifndef MAP_HUGE_1GB
#define MAP_HUGE_1GB (30 << 26)
#endif
// n bytes rounded up to whole 1 GiB hugetlb pages, written once; exits when the pool has too few.
char* gib_region(size_t n) {
  const size_t len = (n + kPage1G - 1) / kPage1G * kPage1G;
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_1GB, -1, 0);
  if (p == MAP_FAILED) {
    std::fprintf(stderr, "mmap of %zu GiB in 1 GiB pages failed (reserve them: nr_hugepages)\n", len >> 30);
    std::exit(1);
  }
  std::memset(p, 1, n);
  return static_cast<char*>(p);
}

// AnonHugePages and Hugetlb of the whole process (/proc/self/smaps_rollup), MiB.
void print_coverage() {
  const bench::ProcRollup r = bench::proc_rollup();
  if (!r.ok) return;
  std::printf("process: AnonHugePages %.0f MiB, Hugetlb %.0f MiB\n", r.anon_huge_kb / 1024, r.hugetlb_kb / 1024);
}

unsigned g_sink;
// One load every `stride` bytes of [a, a + n); seconds of this thread's CPU time.
double touch(const char* a, size_t n, size_t stride) {
  const double t0 = bench::thread_cpu();
  unsigned x = 0;
  for (size_t o = 0; o < n; o += stride) x += static_cast<const volatile char*>(a)[o];
  g_sink += x;
  return bench::thread_cpu() - t0;
}

void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  (void)pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

double pct(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(q * double(v.size())))];
}
}  // namespace

int main(int argc, char** argv) {
  bool region_1g = false, other_1g = false;
  while (argc > 1 && argv[1][0] == '-') {
    if (!std::strcmp(argv[1], "--region-1g")) region_1g = true;
    else if (!std::strcmp(argv[1], "--other-1g")) other_1g = true;
    else {
      std::fprintf(stderr, "page_reach: unknown option %s\n", argv[1]);
      return 2;
    }
    ++argv, --argc;
  }
  const size_t region = size_t(argc > 1 ? std::max(2, std::atoi(argv[1])) : 64) << 20;
  const int rounds = argc > 2 ? std::max(1, std::atoi(argv[2])) : 20;
  std::vector<size_t> others;
  for (int i = 3; i < argc; ++i) others.push_back(size_t(std::max(0, std::atoi(argv[i]))) << 20);
  if (others.empty()) others = {size_t(256) << 20, size_t(1) << 30, size_t(2) << 30, size_t(3) << 30, size_t(4) << 30};
  size_t max_other = 0;
  for (size_t o : others) max_other = std::max(max_other, o);
  const int ncpu = int(std::thread::hardware_concurrency());
  pin(0);
  char* r = region_1g ? gib_region(region) : huge_region(region);
  char* other = other_1g ? gib_region(std::max(max_other, kPage2M)) : huge_region(std::max(max_other, kPage2M));
  const double pages = double(region / kPage2M);
  std::printf("region %zu MiB (%.0f pages of 2 MiB) in %s, other in %s, %d rounds; us a 2 MiB page, median [p10, p90]\n",
              region >> 20, pages, region_1g ? "1 GiB pages" : "2 MiB THP", other_1g ? "1 GiB pages" : "2 MiB THP", rounds);
  print_coverage();
  for (size_t o : others) {
    std::vector<double> first, again, first4k, other_cpu, stream;
    for (int it = 0; it < rounds; ++it) {
      touch(other, o, 64);
      first.push_back(touch(r, region, kPage2M) / pages * 1e6);
      again.push_back(touch(r, region, kPage2M) / pages * 1e6);
      touch(other, o, 64);
      first4k.push_back(touch(r, region, 4096) / pages * 1e6);
      touch(other, o, 64);
      stream.push_back(touch(r, region, 64) / pages * 1e6);
      if (ncpu > 1) {
        touch(other, o, 64);
        std::thread t([&] {
          pin(1);
          touch(r, region, kPage2M);
        });
        t.join();
        other_cpu.push_back(touch(r, region, kPage2M) / pages * 1e6);
      }
    }
    std::printf("other %5zu MiB: first load %.3f [%.3f, %.3f]  again %.3f  every 4 KiB %.3f [%.3f, %.3f]", o >> 20,
                pct(first, 0.5), pct(first, 0.1), pct(first, 0.9), pct(again, 0.5), pct(first4k, 0.5),
                pct(first4k, 0.1), pct(first4k, 0.9));
    std::printf("  stream (every 64 B) %.2f [%.2f, %.2f]", pct(stream, 0.5), pct(stream, 0.1), pct(stream, 0.9));
    if (!other_cpu.empty())
      std::printf("  after the other CPU's touch %.3f [%.3f, %.3f]", pct(other_cpu, 0.5), pct(other_cpu, 0.1),
                  pct(other_cpu, 0.9));
    std::printf("\n");
  }
  std::printf("(sink %u)\n", g_sink);
  return 0;
}
