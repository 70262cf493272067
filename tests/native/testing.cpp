#include "testing.h"

#include <cstring>
#include <exception>

namespace emollm_test {

std::vector<TestCase>& registry() {
  static std::vector<TestCase> r;
  return r;
}
int& current_failures() {
  static int n = 0;
  return n;
}
void report_failure(const char* file, int line, const std::string& what) {
  ++current_failures();
  if (current_failures() <= 20) std::printf("    FAIL %s:%d: %s\n", file, line, what.c_str());
}
double max_abs_diff(const float* a, const float* b, long n, long* where) {
  double m = 0;
  long w = 0;
  for (long i = 0; i < n; ++i) {
    double d = std::fabs(double(a[i]) - double(b[i]));
    if (d > m || std::isnan(d)) { m = std::isnan(d) ? INFINITY : d; w = i; }
  }
  if (where) *where = w;
  return m;
}
bool all_close(const float* a, const float* b, long n, double atol, double rtol, const char* file, int line,
               const std::string& what) {
  for (long i = 0; i < n; ++i) {
    double d = std::fabs(double(a[i]) - double(b[i]));
    if (!(d <= atol + rtol * std::fabs(double(b[i])))) {
      long w;
      double m = max_abs_diff(a, b, n, &w);
      char buf[256];
      std::snprintf(buf, sizeof buf, "%s: first mismatch at %ld (%g vs %g), max |diff| %g at %ld (atol %g rtol %g)",
                    what.c_str(), i, double(a[i]), double(b[i]), m, w, atol, rtol);
      report_failure(file, line, buf);
      return false;
    }
  }
  return true;
}

}  // namespace emollm_test

// Usage: emollm_tests [substring-filter]
int main(int argc, char** argv) {
  const char* filter = argc > 1 ? argv[1] : nullptr;
  int passed = 0, failed = 0;
  for (auto& t : emollm_test::registry()) {
    if (filter && !std::strstr(t.name, filter)) continue;
    emollm_test::current_failures() = 0;
    try {
      t.fn();
    } catch (const std::exception& e) {
      emollm_test::report_failure(__FILE__, __LINE__, std::string("uncaught exception: ") + e.what());
    }
    if (emollm_test::current_failures() == 0) {
      ++passed;
      std::printf("  ok   %s\n", t.name);
    } else {
      ++failed;
      std::printf("  FAIL %s (%d failures)\n", t.name, emollm_test::current_failures());
    }
    std::fflush(stdout);
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
