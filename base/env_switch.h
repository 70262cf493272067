// Switches of alternative code paths (a new kernel and the one it replaced, a fusion, a packing),
// read once from the environment so whole runs can be compared (A/B benchmarks) without a
// rebuild. A default-on switch is on unless its variable is "0" or "off"; an opt-in one (a path
// kept for A/B that lost or is not yet decided) is off unless it is "1" or "on". Tests and
// benchmarks flip it at run time through the setter the owning file exports.
#pragma once
#include <atomic>
#include <cstdlib>
#include <cstring>

namespace emollm {

// True unless the environment variable `name` is set to "0" or "off".
inline bool env_enabled(const char* name) {
  const char* v = std::getenv(name);
  return !(v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "off") == 0));
}

// True only if the environment variable `name` is set to "1" or "on".
inline bool env_opted_in(const char* name) {
  const char* v = std::getenv(name);
  return v && (std::strcmp(v, "1") == 0 || std::strcmp(v, "on") == 0);
}

// The integer in the environment variable `name`, or `dflt` when it is unset or empty. Parsed as
// std::atoll does (leading blanks, a sign, the digits up to the first other character; 0 when
// there are none), the callers clamping it to their own range.
inline long long env_int(const char* name, long long dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoll(v, nullptr, 10) : dflt;
}

enum class EnvDefault { On, Off };

// A run-time switch that starts as env_enabled(name) (EnvDefault::On) or env_opted_in(name)
// (EnvDefault::Off). Define it as a function-local static so it
// is read on first use, whatever the order of static initialisation.
class EnvSwitch {
 public:
  explicit EnvSwitch(const char* name, EnvDefault d = EnvDefault::On)
      : on_(d == EnvDefault::On ? env_enabled(name) : env_opted_in(name)) {}
  bool on() const { return on_.load(std::memory_order_relaxed); }
  void set(bool on) { on_.store(on, std::memory_order_relaxed); }

 private:
  std::atomic<bool> on_;
};

}  // namespace emollm
