// A minimal test harness for the standalone native tests (no Node, no third-party deps), so the
// kernels can be tested on any machine with a C++ compiler, e.g. a GPU server without Node.
//   TEST(suite_name) { EXPECT(cond); EXPECT_NEAR(a, b, tol); EXPECT_THROWS(expr, ErrorCode::X); }
// The runner prints one line per failure and ends with "N passed, N failed".
#pragma once
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace emollm_test {

struct TestCase {
  const char* name;
  std::function<void()> fn;
};
std::vector<TestCase>& registry();
// Failures recorded by the running test.
int& current_failures();
struct Registrar {
  Registrar(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};
void report_failure(const char* file, int line, const std::string& what);
// n values of N(0, scale) (mt19937 from seed): the tests' random inputs.
inline std::vector<float> normal_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}
// Largest |a-b| over n floats, and the index where it happens.
double max_abs_diff(const float* a, const float* b, long n, long* where = nullptr);
// Checks |a[i]-b[i]| <= atol + rtol*|b[i]| everywhere; reports the worst element on failure.
bool all_close(const float* a, const float* b, long n, double atol, double rtol, const char* file, int line,
               const std::string& what);

}  // namespace emollm_test

#define EMT_CAT2(a, b) a##b
#define EMT_CAT(a, b) EMT_CAT2(a, b)
#define TEST(name)                                                                           \
  static void EMT_CAT(emt_test_, name)();                                                    \
  static ::emollm_test::Registrar EMT_CAT(emt_reg_, name)(#name, EMT_CAT(emt_test_, name)); \
  static void EMT_CAT(emt_test_, name)()

#define EXPECT(cond)                                                          \
  do {                                                                        \
    if (!(cond)) ::emollm_test::report_failure(__FILE__, __LINE__, #cond);    \
  } while (0)

#define EXPECT_NEAR(a, b, tol)                                                                    \
  do {                                                                                            \
    double emt_a = (a), emt_b = (b);                                                              \
    if (!(std::fabs(emt_a - emt_b) <= (tol)))                                                     \
      ::emollm_test::report_failure(__FILE__, __LINE__,                                           \
                                    std::string(#a " ~ " #b ": ") + std::to_string(emt_a) + " vs " + \
                                        std::to_string(emt_b));                                   \
  } while (0)

#define EXPECT_ALL_CLOSE(a, b, n, atol, rtol, what) \
  ::emollm_test::all_close((a), (b), (long)(n), (atol), (rtol), __FILE__, __LINE__, (what))

// Expects expr to throw emollm::Error with the given code.
#define EXPECT_THROWS(expr, errcode)                                                              \
  do {                                                                                            \
    bool emt_thrown = false;                                                                      \
    try {                                                                                         \
      (void)(expr);                                                                               \
    } catch (const ::emollm::Error& e) {                                                          \
      emt_thrown = true;                                                                          \
      if (e.code() != (errcode))                                                                  \
        ::emollm_test::report_failure(__FILE__, __LINE__,                                         \
                                      std::string("wrong error code from " #expr ": ") + e.what()); \
    }                                                                                             \
    if (!emt_thrown) ::emollm_test::report_failure(__FILE__, __LINE__, "no throw: " #expr);        \
  } while (0)
