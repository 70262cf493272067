// Reading ../shared (the read-only reference data beside the checkout) from the native tests: the
// folder of one shared model, and the raw f32 / JSON integer references its SOURCE.md describes.
// The shared dir comes from EMOLLM_SHARED_DIR (CTest sets it), else ../shared; a model that is not
// there is a printed skip, never a silent pass.
#pragma once
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "../../native/loaders/json.h"
#include "testing.h"

namespace emollm_test {

inline bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

// tests/fixtures/<rel> (committed with the tests), found next to the test sources or from the
// working directory (the repository root, as CI runs the tests, or a build folder inside it).
// `source_file` is the caller's __FILE__, which is absolute in a plain build but relative to the
// build folder when the compile runs through ccache with CCACHE_BASEDIR. The fixtures are in the
// repository, so one that cannot be found is a test failure, never a skip: returns "" after
// reporting it (the caller returns).
inline std::string committed_fixture(const std::string& rel, const char* probe, const char* source_file) {
  const std::string f = source_file;
  const size_t slash = f.find_last_of('/');
  const std::string here = slash == std::string::npos ? std::string(".") : f.substr(0, slash);
  for (const std::string& d : {here + "/../fixtures/" + rel, "tests/fixtures/" + rel, "../tests/fixtures/" + rel})
    if (file_exists(d + "/" + probe)) return d;
  report_failure(source_file, 0, "committed fixture tests/fixtures/" + rel + "/" + probe +
                                     " not found next to the sources or from the working directory (run from the "
                                     "repository root or a build folder inside it)");
  return std::string();
}

// ../shared/models/<name>, or "" (after printing why) when any of `required` (paths below it) is missing.
inline std::string shared_model_dir(const std::string& name, std::initializer_list<const char*> required) {
  const char* env = std::getenv("EMOLLM_SHARED_DIR");
  const std::string d = std::string(env ? env : "../shared") + "/models/" + name;
  for (const char* r : required)
    if (!file_exists(d + "/" + r)) {
      std::printf("  [skip] %s tests: %s not found (set EMOLLM_SHARED_DIR)\n", name.c_str(), (d + "/" + r).c_str());
      return std::string();
    }
  return d;
}

// A raw little-endian f32 file (the references' .f32 tensors).
inline std::vector<float> read_f32(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<char> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<float> out(b.size() / 4);
  std::memcpy(out.data(), b.data(), out.size() * 4);
  return out;
}

// Whitespace-separated integers (the token-id oracles, e.g. greedy_n200_noprompt.tokens.txt); empty when absent.
inline std::vector<int32_t> read_ints(const std::string& path) {
  std::ifstream f(path);
  std::vector<int32_t> v;
  int32_t t;
  while (f >> t) v.push_back(t);
  return v;
}

// ../shared/models/stories260K (the GGUF required), or "" after printing why.
inline const std::string& stories_dir() {
  static const std::string dir = shared_model_dir("stories260K", {"gguf/stories260K.gguf"});
  return dir;
}

// A JSON array of integers (token ids); empty when absent.
inline std::vector<int32_t> ints(const emollm::JsonValue* v) {
  std::vector<int32_t> r;
  if (v)
    for (const auto& x : v->items()) r.push_back(int32_t(x.as_int()));
  return r;
}

}  // namespace emollm_test
