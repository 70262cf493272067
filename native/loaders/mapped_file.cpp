#include "loaders/mapped_file.h"

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <tuple>

#include "base/error.h"

#if defined(_WIN32)
#include <cstdio>
#else
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

namespace emollm {

namespace {
const uint8_t kEmpty[1] = {0};

[[noreturn]] void throw_open_error(const std::string& path, int err) {
  if (err == ENOENT || err == ENOTDIR)
    throw Error(ErrorCode::FileNotFound, "file not found: " + path, path);
  throw Error(ErrorCode::FileNotFound, "cannot open " + path + ": " + std::strerror(err), path);
}
}  // namespace

MappedFile::~MappedFile() {
#if !defined(_WIN32)
  if (mapped_) munmap(const_cast<uint8_t*>(data_), size_);
#endif
  delete[] owned_;
}

std::shared_ptr<MappedFile> MappedFile::from_bytes(const void* data, size_t size, std::string name) {
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = std::move(name);
  f->size_ = size;
  if (size == 0) {
    f->data_ = kEmpty;
    return f;
  }
  f->owned_ = new (std::nothrow) uint8_t[size];
  if (!f->owned_)
    throw Error(ErrorCode::OutOfMemory, "cannot allocate " + std::to_string(size) + " bytes", f->path_);
  std::memcpy(f->owned_, data, size);
  f->data_ = f->owned_;
  return f;
}

#if defined(_WIN32)
// Fallback without mmap: read the whole file into memory.
std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  FILE* fp = std::fopen(path.c_str(), "rb");
  if (!fp) throw_open_error(path, errno);
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  std::fseek(fp, 0, SEEK_END);
  long n = std::ftell(fp);
  std::fseek(fp, 0, SEEK_SET);
  if (n < 0) {
    std::fclose(fp);
    throw Error(ErrorCode::FileNotFound, "cannot read " + path, path);
  }
  f->size_ = size_t(n);
  if (n == 0) {
    f->data_ = kEmpty;
  } else {
    f->owned_ = new (std::nothrow) uint8_t[size_t(n)];
    if (!f->owned_) {
      std::fclose(fp);
      throw Error(ErrorCode::OutOfMemory, "cannot allocate " + std::to_string(n) + " bytes to read the file", path);
    }
    size_t got = std::fread(f->owned_, 1, size_t(n), fp);
    if (got != size_t(n)) {
      std::fclose(fp);
      throw Error(ErrorCode::FileNotFound, "short read of " + path, path);
    }
    f->data_ = f->owned_;
  }
  std::fclose(fp);
  return f;
}
#else
std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  // O_NONBLOCK: opening a FIFO that has no writer returns at once instead of waiting forever (a
  // FIFO named model.gguf would otherwise hang loadModel beyond AbortSignal and process.exit);
  // the fstat below then refuses it. It changes nothing for regular files.
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) throw_open_error(path, errno);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw_open_error(path, err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    const char* kind = S_ISDIR(st.st_mode)    ? "a directory"
                       : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                       : S_ISCHR(st.st_mode)  ? "a character device"
                       : S_ISBLK(st.st_mode)  ? "a block device"
                                              : "not a regular file";
    throw Error(ErrorCode::NotRegularFile, std::string(kind) + ", not a regular file", path);
  }
  // One mapping per file while any is alive: models loaded twice from one file (train-mvp's
  // trainer beside its tokenizer / evaluation model, a validation model) then hand the backend
  // the same weight pointers, whose packed copies (Backend::pack_gemm_weight) it keeps once.
  // Keyed by the file's identity and its size and change times, so a file replaced or rewritten
  // since is mapped anew.
  using Key = std::tuple<dev_t, ino_t, off_t, time_t, long, time_t, long>;
  static std::mutex open_mu;
  static std::map<Key, std::weak_ptr<MappedFile>> open_files;
#if defined(__APPLE__)
  const struct timespec &mt = st.st_mtimespec, &ct = st.st_ctimespec;
#else
  const struct timespec &mt = st.st_mtim, &ct = st.st_ctim;
#endif
  const Key key{st.st_dev, st.st_ino, st.st_size, mt.tv_sec, mt.tv_nsec, ct.tv_sec, ct.tv_nsec};
  std::lock_guard<std::mutex> lk(open_mu);
  for (auto it = open_files.begin(); it != open_files.end();) it = it->second.expired() ? open_files.erase(it) : std::next(it);
  if (st.st_size > 0)
    if (auto it = open_files.find(key); it != open_files.end())
      if (auto shared = it->second.lock()) {
        ::close(fd);
        return shared;
      }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = size_t(st.st_size);
  if (st.st_size == 0) {
    f->data_ = kEmpty;
    ::close(fd);
    return f;
  }
  void* p = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  ::close(fd);  // the mapping keeps its own reference to the file
  if (p == MAP_FAILED) {
    f->size_ = 0;
    f->data_ = kEmpty;
    throw Error(ErrorCode::OutOfMemory,
                "cannot map " + std::to_string(st.st_size) + " bytes of " + path + ": " + std::strerror(err), path);
  }
  f->data_ = static_cast<const uint8_t*>(p);
  f->mapped_ = true;
  open_files[key] = f;
  return f;
}
#endif

bool populate_read(const void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_POPULATE_READ)
  if (!p || bytes == 0) return false;
  const long ps = sysconf(_SC_PAGESIZE);
  const uintptr_t page = uintptr_t(ps > 0 ? ps : 4096);
  const uintptr_t a = reinterpret_cast<uintptr_t>(p) / page * page;
  return madvise(reinterpret_cast<void*>(a), reinterpret_cast<uintptr_t>(p) + bytes - a, MADV_POPULATE_READ) == 0;
#else
  (void)p;
  (void)bytes;
  return false;
#endif
}

}  // namespace emollm
