// Typed errors shared by the native core, the loaders and the addon.
// The addon turns an emollm::Error into a JavaScript EmollmError with the same code,
// so every failure a user sees names what went wrong and, where relevant, which file.
#pragma once
#include <stdexcept>
#include <string>

namespace emollm {

enum class ErrorCode {
  InvalidArgument,  // a caller passed a bad shape, dtype, option or value
  FileNotFound,     // a path that does not exist or cannot be opened
  MalformedFile,    // a weight/config file whose bytes contradict its own format
  Unsupported,      // a well-formed file using something we do not implement (dtype, version, arch)
  BadConfig,        // config.json missing fields, wrong types or unknown model_type
  OutOfMemory,      // an allocation or mapping failed
  NotRegularFile,   // a FIFO, socket, device or folder where a regular file is needed (refused before any read)
  Internal,         // a bug: an invariant inside emollm did not hold
};

// Stable string codes: the JavaScript side exposes these as EmollmError.code.
inline const char* error_code_name(ErrorCode c) {
  switch (c) {
    case ErrorCode::InvalidArgument: return "ERR_INVALID_ARGUMENT";
    case ErrorCode::FileNotFound: return "ERR_FILE_NOT_FOUND";
    case ErrorCode::MalformedFile: return "ERR_MALFORMED_FILE";
    case ErrorCode::Unsupported: return "ERR_UNSUPPORTED";
    case ErrorCode::BadConfig: return "ERR_BAD_CONFIG";
    case ErrorCode::OutOfMemory: return "ERR_OUT_OF_MEMORY";
    case ErrorCode::NotRegularFile: return "ERR_NOT_REGULAR_FILE";
    case ErrorCode::Internal: return "ERR_INTERNAL";
  }
  return "ERR_INTERNAL";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message, std::string file = {})
      : std::runtime_error(file.empty() ? message : file + ": " + message),
        code_(code), file_(std::move(file)), detail_(message) {}
  ErrorCode code() const noexcept { return code_; }
  const std::string& file() const noexcept { return file_; }
  // The message without the "file: " prefix.
  const std::string& detail() const noexcept { return detail_; }

 private:
  ErrorCode code_;
  std::string file_;
  std::string detail_;
};

#define EMOLLM_CHECK_ARG(cond, msg)                                              \
  do {                                                                           \
    if (!(cond)) throw ::emollm::Error(::emollm::ErrorCode::InvalidArgument, msg); \
  } while (0)

}  // namespace emollm
