// GGUF (llama.cpp's format), versions 3 and 2: header, typed metadata, tensor infos, and
// zero-copy tensor data pointers into the mapped file.
//
// Layout (little-endian): "GGUF", u32 version, u64 tensor_count, u64 kv_count, kv_count
// key/value pairs (string key, u32 value type, value), tensor_count tensor infos (string name,
// u32 n_dims <= 4, n_dims u64 dims, u32 ggml type, u64 offset), padding to general.alignment
// (default 32, a power of two), then the data section; each tensor offset is relative to it and
// aligned. Strings are a u64 length then bytes (not NUL-terminated).
//
// SHAPES: ggml lists dims innermost first (ne[0] is the contiguous dimension). TensorInfo::shape
// is reversed to outermost-first like PyTorch/safetensors, so a ggml tensor with
// ne = {64, 512} has shape {512, 64}; GgufTensorExtra::ne keeps the raw ggml order.
//
// Safety: every count and length is bounded by the bytes remaining before anything is
// allocated (a claimed 2^60 strings fails at once), nesting of arrays is limited, and every
// tensor's extent is checked against the file. Errors are Error(MalformedFile) naming the file
// (and key or tensor); GGUF v1 / other versions are Error(Unsupported).
//
// ggml types F32(0), F16(1), Q4_0(2), Q4_1(3), Q5_0(6), Q5_1(7), Q8_0(8), Q4_K(12), Q5_K(13),
// Q6_K(14), BF16(30) map to DType; the other known ggml types (q2_K, q3_K, iq2_xxs, ...) are listed by name with supported == false (Unsupported on
// compute_view()); an unknown type number is MalformedFile.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "loaders/mapped_file.h"
#include "loaders/weight_store.h"

namespace emollm {

enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GgufType t);  // "u8", ..., "array"

constexpr int kGgufMaxArrayDepth = 8;
// Most elements one metadata array may hold (the largest real ones, token lists and merges,
// have under a million), and most arrays in all nested arrays of a file: with the
// remaining-bytes bound these keep a hostile file's metadata from allocating much more than
// the file's size.
constexpr uint64_t kGgufMaxArrayElems = uint64_t(1) << 26;
constexpr uint64_t kGgufMaxNestedArrays = uint64_t(1) << 20;
constexpr uint32_t kGgufDefaultAlignment = 32;

// One metadata value. Scalars: the integer kinds in i/u, floats in f, bool in b, string in str.
// Arrays: elem_type and count; numeric/bool elements kept as their raw little-endian bytes in
// raw (decoded by the *_at accessors), string elements in strings, nested arrays in arrays.
struct GgufValue {
  GgufType type = GgufType::U8;
  uint64_t u = 0;  // unsigned kinds (and bool 0/1)
  int64_t i = 0;   // signed kinds (also set for unsigned ones that fit)
  double f = 0;    // F32/F64
  bool b = false;
  std::string str;
  // ---- arrays
  GgufType elem_type = GgufType::U8;
  uint64_t count = 0;
  std::vector<uint8_t> raw;
  std::vector<std::string> strings;
  std::vector<GgufValue> arrays;

  bool is_integer() const;  // any of the 8 integer kinds
  bool is_float() const { return type == GgufType::F32 || type == GgufType::F64; }
  bool is_array() const { return type == GgufType::ARRAY; }
  // Array element access (index < count, elem_type matching); throw InvalidArgument otherwise.
  int64_t int_at(size_t index) const;     // integer and bool elements (u64 above INT64_MAX throws)
  double float_at(size_t index) const;    // float and integer elements
  const std::string& string_at(size_t index) const;
};

// GGUF-specific facts of a tensor, parallel to WeightStore::tensors().
struct GgufTensorExtra {
  uint32_t ggml_type = 0;
  int n_dims = 0;
  std::array<uint64_t, 4> ne{{1, 1, 1, 1}};  // ggml order: ne[0] innermost
  uint64_t rel_offset = 0;                   // offset within the data section
};

class GgufFile : public WeightStore {
 public:
  static GgufFile open(const std::string& path);
  // Parses a GGUF already in memory (e.g. MappedFile::from_bytes).
  static GgufFile parse(std::shared_ptr<MappedFile> file);

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute start of the data section
  const std::shared_ptr<MappedFile>& file() const { return file_; }
  // Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const std::vector<GgufTensorExtra>& extras() const { return extras_; }

  // ---- typed metadata accessors. find() returns nullptr when absent; the get_* throw
  // MalformedFile naming the key when it is absent or of another type. Integer getters accept any
  // integer kind whose value fits; get_f32/get_f64 accept floats and integers.
  const GgufValue* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }
  uint32_t get_u32(const std::string& key) const;
  uint64_t get_u64(const std::string& key) const;
  int32_t get_i32(const std::string& key) const;
  int64_t get_i64(const std::string& key) const;
  float get_f32(const std::string& key) const;
  double get_f64(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;
  const GgufValue& get_array(const std::string& key) const;  // any array
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<float> get_f32_array(const std::string& key) const;
  std::vector<int32_t> get_i32_array(const std::string& key) const;
  // With a default for an absent key (a present key of the wrong type still throws).
  uint32_t get_u32_or(const std::string& key, uint32_t def) const { return has(key) ? get_u32(key) : def; }
  float get_f32_or(const std::string& key, float def) const { return has(key) ? get_f32(key) : def; }
  bool get_bool_or(const std::string& key, bool def) const { return has(key) ? get_bool(key) : def; }
  std::string get_string_or(const std::string& key, const std::string& def) const {
    return has(key) ? get_string(key) : def;
  }

 private:
  friend struct GgufParser;
  std::shared_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint32_t alignment_ = kGgufDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t> kv_index_;
  std::vector<GgufTensorExtra> extras_;
};

// ggml type facts: name ("f32", "q4_K"), elements per block and bytes per block. Returns false for
// numbers that are not (or no longer) ggml types.
bool ggml_type_info(uint32_t type, const char** name, uint32_t* block_elems, uint32_t* block_bytes);

}  // namespace emollm
