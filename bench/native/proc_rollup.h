// The whole process's memory as /proc/self/smaps_rollup (Linux) reports it, for the native tools
// that print what their buffers or a model load got (resident bytes, transparent huge pages,
// hugetlb pages): one reader instead of a parser in each tool.
#pragma once
#include <cstdio>

namespace bench {

struct ProcRollup {
  bool ok = false;         // false: the file could not be read (not Linux, or no /proc); every field 0
  double rss_kb = 0;       // Rss
  double anonymous_kb = 0; // Anonymous
  double anon_huge_kb = 0; // AnonHugePages
  double hugetlb_kb = 0;   // Private_Hugetlb + Shared_Hugetlb
};

inline ProcRollup proc_rollup() {
  ProcRollup r;
  std::FILE* f = std::fopen("/proc/self/smaps_rollup", "r");
  if (!f) return r;
  r.ok = true;
  char line[256];
  double kb = 0;
  while (std::fgets(line, sizeof line, f)) {
    if (std::sscanf(line, "Rss: %lf kB", &kb) == 1) r.rss_kb = kb;
    else if (std::sscanf(line, "Anonymous: %lf kB", &kb) == 1) r.anonymous_kb = kb;
    else if (std::sscanf(line, "AnonHugePages: %lf kB", &kb) == 1) r.anon_huge_kb = kb;
    else if (std::sscanf(line, "Private_Hugetlb: %lf kB", &kb) == 1) r.hugetlb_kb += kb;
    else if (std::sscanf(line, "Shared_Hugetlb: %lf kB", &kb) == 1) r.hugetlb_kb += kb;
  }
  std::fclose(f);
  return r;
}

}  // namespace bench
