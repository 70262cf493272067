// Small path helpers shared by the model loaders (POSIX stat; no <filesystem> dependency).
#pragma once
#include <string>
#include <sys/stat.h>

namespace emollm {

inline bool is_directory(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

inline bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The folder a model path stands for: the path itself when it is a folder (trailing slashes
// dropped), else the folder holding the file.
inline std::string folder_of(const std::string& path_in) {
  std::string path = path_in;
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  if (is_directory(path)) return path;
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

}  // namespace emollm
