// A small, strict JSON parser (RFC 8259) for safetensors headers, model.safetensors.index.json
// and config.json. No dependencies; every read is length-checked, nesting is limited to
// kJsonMaxDepth, duplicate object keys are rejected, strings must be valid UTF-8 (\uXXXX
// escapes incl. surrogate pairs are decoded), and every error is
// emollm::Error(MalformedFile, "... at byte N", source).
//
// Numbers: an integral literal (no fraction or exponent) that fits int64 is kept exactly as
// Type::Int; every other number is Type::Double.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace emollm {

constexpr int kJsonMaxDepth = 256;
// Most values one document may hold: bounds the memory a hostile input (e.g. a 100 MB
// safetensors header of "[0,0,0,...]") can make the parser allocate. A safetensors header has
// about 8 values per tensor, so this allows a quarter of a million tensors.
constexpr size_t kJsonMaxValues = size_t(1) << 21;

class JsonValue {
 public:
  enum class Type { Null, Bool, Int, Double, String, Array, Object };

  JsonValue() = default;
  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_int() const { return type_ == Type::Int; }
  bool is_number() const { return type_ == Type::Int || type_ == Type::Double; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  // Unchecked accessors: the value of the matching type (false / 0 / empty otherwise).
  bool as_bool() const { return b_; }
  int64_t as_int() const { return i_; }
  double as_double() const { return type_ == Type::Int ? double(i_) : d_; }
  const std::string& as_string() const { return s_; }
  const std::vector<JsonValue>& items() const { return arr_; }                          // array
  const std::vector<std::pair<std::string, JsonValue>>& members() const { return obj_; }  // object, file order
  size_t size() const { return type_ == Type::Array ? arr_.size() : type_ == Type::Object ? obj_.size() : 0; }

  // Object member lookup (linear); nullptr when absent or when this is not an object.
  const JsonValue* find(const std::string& key) const;

  static const char* type_name(Type t);
  const char* type_name() const { return type_name(type_); }

 private:
  friend class JsonParser;
  Type type_ = Type::Null;
  bool b_ = false;
  int64_t i_ = 0;
  double d_ = 0;
  std::string s_;
  std::vector<JsonValue> arr_;
  std::vector<std::pair<std::string, JsonValue>> obj_;
};

// Parses exactly one JSON value (surrounded by optional whitespace) from data[0, size).
// `source` (a path or description) names the input in errors. At most kJsonMaxValues values.
JsonValue parse_json(const char* data, size_t size, const std::string& source);
// Reads and parses a JSON file (errors as MappedFile::open and parse_json).
JsonValue load_json_file(const std::string& path);

}  // namespace emollm
