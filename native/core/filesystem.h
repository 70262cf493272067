// Small path helpers shared by the model loaders (POSIX stat; no <filesystem> dependency).
#pragma once
#include <string>
#include <sys/stat.h>

#include "base/error.h"

namespace emollm {

inline bool is_directory(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

inline bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Throws Error(NotRegularFile) when `p` exists but is not a regular file (a FIFO, socket, device
// or folder): call before a blocking open (fopen of a FIFO waits forever for a writer).
inline void require_regular_file_if_exists(const std::string& p) {
  struct stat st;
  if (::stat(p.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    throw Error(ErrorCode::NotRegularFile, S_ISDIR(st.st_mode) ? "a directory, not a regular file" : "not a regular file (FIFO, socket or device)", p);
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
