#include "loaders/json.h"

#include <charconv>
#include <cmath>
#include <unordered_set>
#if defined(_LIBCPP_VERSION) && _LIBCPP_VERSION < 200000
#include <cerrno>
#include <cfloat>
#include <clocale>
#include <cstdlib>
#include <string>
#endif

#include "base/error.h"
#include "loaders/mapped_file.h"

namespace emollm {

namespace {
// Text -> double for a number the grammar has already checked. libc++ before LLVM 20 has no
// floating-point std::from_chars (the musl prebuild compiles with libc++), so there it is strtod
// on a copy whose '.' is the C library's current decimal point (strtod follows LC_NUMERIC).
std::from_chars_result parse_double(const char* b, const char* e, double& out) {
#if defined(_LIBCPP_VERSION) && _LIBCPP_VERSION < 200000
  std::string text(b, e);
  const char* point = std::localeconv()->decimal_point;
  if (point && point[0] && !(point[0] == '.' && point[1] == 0)) {
    const size_t dot = text.find('.');
    if (dot != std::string::npos) text.replace(dot, 1, point);
  }
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &end);
  const size_t used = size_t(end - text.c_str());
  if (used == 0) return {b, std::errc::invalid_argument};
  const char* ptr = used >= text.size() ? e : b + used;  // the whole text, or where it stopped
  if (errno == ERANGE && (std::isinf(v) || std::fabs(v) < DBL_MIN)) return {ptr, std::errc::result_out_of_range};
  out = v;
  return {ptr, std::errc()};
#else
  return std::from_chars(b, e, out);
#endif
}
}  // namespace

const char* JsonValue::type_name(Type t) {
  switch (t) {
    case Type::Null: return "null";
    case Type::Bool: return "boolean";
    case Type::Int: return "integer";
    case Type::Double: return "number";
    case Type::String: return "string";
    case Type::Array: return "array";
    case Type::Object: return "object";
  }
  return "?";
}

const JsonValue* JsonValue::find(const std::string& key) const {
  if (type_ != Type::Object) return nullptr;
  for (const auto& kv : obj_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

class JsonParser {
 public:
  JsonParser(const char* data, size_t size, const std::string& source)
      : p_(reinterpret_cast<const unsigned char*>(data)), n_(size), source_(source) {}

  JsonValue parse_document() {
    JsonValue v;
    skip_ws();
    parse_value(v, 0);
    skip_ws();
    if (pos_ != n_) fail("unexpected trailing data");
    return v;
  }

 private:
  const unsigned char* p_;
  size_t n_;
  size_t pos_ = 0;
  size_t values_ = 0;
  const std::string& source_;

  [[noreturn]] void fail(const std::string& what) const { fail_at(what, pos_); }
  [[noreturn]] void fail_at(const std::string& what, size_t at) const {
    throw Error(ErrorCode::MalformedFile, "invalid JSON: " + what + " at byte " + std::to_string(at), source_);
  }

  void skip_ws() {
    while (pos_ < n_ && (p_[pos_] == ' ' || p_[pos_] == '\t' || p_[pos_] == '\n' || p_[pos_] == '\r')) ++pos_;
  }
  void expect_literal(const char* lit) {
    size_t start = pos_;
    for (const char* c = lit; *c; ++c, ++pos_)
      if (pos_ >= n_ || p_[pos_] != static_cast<unsigned char>(*c)) fail_at("invalid literal", start);
  }

  void parse_value(JsonValue& v, int depth) {
    if (pos_ >= n_) fail("unexpected end of input");
    if (++values_ > kJsonMaxValues) fail("more than " + std::to_string(kJsonMaxValues) + " values");
    unsigned char c = p_[pos_];
    switch (c) {
      case '{': parse_object(v, depth + 1); return;
      case '[': parse_array(v, depth + 1); return;
      case '"':
        v.type_ = JsonValue::Type::String;
        parse_string(v.s_);
        return;
      case 't': expect_literal("true"); v.type_ = JsonValue::Type::Bool; v.b_ = true; return;
      case 'f': expect_literal("false"); v.type_ = JsonValue::Type::Bool; v.b_ = false; return;
      case 'n': expect_literal("null"); v.type_ = JsonValue::Type::Null; return;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) {
          parse_number(v);
          return;
        }
        fail(std::string("unexpected character '") + (c >= 0x20 && c < 0x7f ? std::string(1, char(c)) : "\\x" + hex2(c)) + "'");
    }
  }

  static std::string hex2(unsigned char c) {
    const char* h = "0123456789abcdef";
    return std::string{h[c >> 4], h[c & 15]};
  }

  void parse_object(JsonValue& v, int depth) {
    if (depth > kJsonMaxDepth) fail("nesting deeper than " + std::to_string(kJsonMaxDepth));
    v.type_ = JsonValue::Type::Object;
    ++pos_;  // '{'
    skip_ws();
    if (pos_ < n_ && p_[pos_] == '}') {
      ++pos_;
      return;
    }
    std::unordered_set<std::string> seen;
    for (;;) {
      skip_ws();
      if (pos_ >= n_) fail("unexpected end of input in object");
      if (p_[pos_] != '"') fail("expected a string key");
      size_t key_at = pos_;
      std::string key;
      parse_string(key);
      if (!seen.insert(key).second) fail_at("duplicate key \"" + key + "\"", key_at);
      skip_ws();
      if (pos_ >= n_ || p_[pos_] != ':') fail("expected ':'");
      ++pos_;
      skip_ws();
      v.obj_.emplace_back(std::move(key), JsonValue());
      parse_value(v.obj_.back().second, depth);
      skip_ws();
      if (pos_ >= n_) fail("unexpected end of input in object");
      if (p_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (p_[pos_] == '}') {
        ++pos_;
        return;
      }
      fail("expected ',' or '}'");
    }
  }

  void parse_array(JsonValue& v, int depth) {
    if (depth > kJsonMaxDepth) fail("nesting deeper than " + std::to_string(kJsonMaxDepth));
    v.type_ = JsonValue::Type::Array;
    ++pos_;  // '['
    skip_ws();
    if (pos_ < n_ && p_[pos_] == ']') {
      ++pos_;
      return;
    }
    for (;;) {
      skip_ws();
      v.arr_.emplace_back();
      parse_value(v.arr_.back(), depth);
      skip_ws();
      if (pos_ >= n_) fail("unexpected end of input in array");
      if (p_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (p_[pos_] == ']') {
        ++pos_;
        return;
      }
      fail("expected ',' or ']'");
    }
  }

  unsigned hex4() {
    if (n_ - pos_ < 4) fail("truncated \\u escape");
    unsigned u = 0;
    for (int k = 0; k < 4; ++k) {
      unsigned char c = p_[pos_++];
      u <<= 4;
      if (c >= '0' && c <= '9') u |= unsigned(c - '0');
      else if (c >= 'a' && c <= 'f') u |= unsigned(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') u |= unsigned(c - 'A' + 10);
      else fail_at("invalid hex digit in \\u escape", pos_ - 1);
    }
    return u;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  // Validates one UTF-8 sequence starting at pos_ (first byte >= 0x80) and copies it.
  void copy_utf8(std::string& out) {
    size_t start = pos_;
    unsigned char c = p_[pos_];
    int len;
    unsigned cp, min;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; min = 0x10000; }
    else fail("invalid UTF-8 byte");
    if (n_ - pos_ < size_t(len)) fail("truncated UTF-8 sequence");
    for (int k = 1; k < len; ++k) {
      unsigned char cc = p_[pos_ + k];
      if ((cc & 0xC0) != 0x80) fail_at("invalid UTF-8 continuation byte", pos_ + k);
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) fail_at("invalid UTF-8 sequence", start);
    out.append(reinterpret_cast<const char*>(p_ + pos_), size_t(len));
    pos_ += size_t(len);
  }

  void parse_string(std::string& out) {
    size_t start = pos_;
    ++pos_;  // opening quote
    for (;;) {
      if (pos_ >= n_) fail_at("unterminated string", start);
      unsigned char c = p_[pos_];
      if (c == '"') {
        ++pos_;
        return;
      }
      if (c < 0x20) fail("unescaped control character in string");
      if (c >= 0x80) {
        copy_utf8(out);
        continue;
      }
      if (c != '\\') {
        // Copy a run of plain ASCII at once.
        size_t run = pos_;
        while (run < n_ && p_[run] >= 0x20 && p_[run] < 0x80 && p_[run] != '"' && p_[run] != '\\') ++run;
        out.append(reinterpret_cast<const char*>(p_ + pos_), run - pos_);
        pos_ = run;
        continue;
      }
      ++pos_;
      if (pos_ >= n_) fail_at("unterminated string", start);
      unsigned char e = p_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          size_t esc_at = pos_ - 2;
          unsigned cp = hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail_at("unpaired low surrogate in \\u escape", esc_at);
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (n_ - pos_ < 2 || p_[pos_] != '\\' || p_[pos_ + 1] != 'u')
              fail_at("unpaired high surrogate in \\u escape", esc_at);
            pos_ += 2;
            unsigned lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail_at("invalid low surrogate in \\u escape", esc_at);
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail_at("invalid escape", pos_ - 2);
      }
    }
  }

  void parse_number(JsonValue& v) {
    size_t start = pos_;
    bool integral = true, neg_exp = false;
    if (p_[pos_] == '-') ++pos_;
    if (pos_ >= n_) fail_at("invalid number", start);
    if (p_[pos_] == '0') {
      ++pos_;
    } else if (p_[pos_] >= '1' && p_[pos_] <= '9') {
      while (pos_ < n_ && p_[pos_] >= '0' && p_[pos_] <= '9') ++pos_;
    } else {
      fail_at("invalid number", start);
    }
    if (pos_ < n_ && p_[pos_] == '.') {
      integral = false;
      ++pos_;
      size_t d = pos_;
      while (pos_ < n_ && p_[pos_] >= '0' && p_[pos_] <= '9') ++pos_;
      if (pos_ == d) fail_at("invalid number (no digits after '.')", start);
    }
    if (pos_ < n_ && (p_[pos_] == 'e' || p_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      if (pos_ < n_ && (p_[pos_] == '+' || p_[pos_] == '-')) neg_exp = p_[pos_++] == '-';
      size_t d = pos_;
      while (pos_ < n_ && p_[pos_] >= '0' && p_[pos_] <= '9') ++pos_;
      if (pos_ == d) fail_at("invalid number (no digits in exponent)", start);
    }
    const char* b = reinterpret_cast<const char*>(p_ + start);
    const char* e = reinterpret_cast<const char*>(p_ + pos_);
    if (integral) {
      int64_t iv = 0;
      auto r = std::from_chars(b, e, iv);
      if (r.ec == std::errc() && r.ptr == e) {
        v.type_ = JsonValue::Type::Int;
        v.i_ = iv;
        return;
      }
      // Too large for int64: falls through to double.
    }
    double dv = 0;
    auto r = parse_double(b, e, dv);
    if (r.ec == std::errc::result_out_of_range) {
      if (!neg_exp || integral) fail_at("number out of range", start);
      dv = (*b == '-') ? -0.0 : 0.0;  // underflow
    } else if (r.ec != std::errc() || r.ptr != e) {
      fail_at("invalid number", start);
    }
    if (!std::isfinite(dv)) fail_at("number out of range", start);
    v.type_ = JsonValue::Type::Double;
    v.d_ = dv;
  }
};

JsonValue parse_json(const char* data, size_t size, const std::string& source) {
  JsonParser p(data, size, source);
  return p.parse_document();
}

JsonValue load_json_file(const std::string& path) {
  auto f = MappedFile::open(path);
  return parse_json(reinterpret_cast<const char*>(f->data()), f->size(), path);
}

}  // namespace emollm
