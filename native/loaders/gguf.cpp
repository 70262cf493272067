#include "loaders/gguf.h"

#include <algorithm>
#include <cstring>

#include "base/error.h"

namespace emollm {

namespace {

struct GgmlTypeRow {
  uint32_t id;
  const char* name;
  uint32_t block_elems;
  uint32_t block_bytes;
};
// From ggml.c's type_traits (sizes of the block structs in ggml-common.h).
const GgmlTypeRow kGgmlTypes[] = {
    {0, "f32", 1, 4},        {1, "f16", 1, 2},          {2, "q4_0", 32, 18},     {3, "q4_1", 32, 20},
    {6, "q5_0", 32, 22},     {7, "q5_1", 32, 24},       {8, "q8_0", 32, 34},     {9, "q8_1", 32, 36},
    {10, "q2_K", 256, 84},   {11, "q3_K", 256, 110},    {12, "q4_K", 256, 144},  {13, "q5_K", 256, 176},
    {14, "q6_K", 256, 210},  {15, "q8_K", 256, 292},    {16, "iq2_xxs", 256, 66}, {17, "iq2_xs", 256, 74},
    {18, "iq3_xxs", 256, 98}, {19, "iq1_s", 256, 50},   {20, "iq4_nl", 32, 18},  {21, "iq3_s", 256, 110},
    {22, "iq2_s", 256, 82},  {23, "iq4_xs", 256, 136},  {24, "i8", 1, 1},        {25, "i16", 1, 2},
    {26, "i32", 1, 4},       {27, "i64", 1, 8},         {28, "f64", 1, 8},       {29, "iq1_m", 256, 56},
    {30, "bf16", 1, 2},      {34, "tq1_0", 256, 54},    {35, "tq2_0", 256, 66},  {39, "mxfp4", 32, 17},
};

bool ggml_to_dtype(uint32_t t, DType* out) {
  switch (t) {
    case 0: *out = DType::F32; return true;
    case 1: *out = DType::F16; return true;
    case 2: *out = DType::Q4_0; return true;
    case 8: *out = DType::Q8_0; return true;
    case 3: *out = DType::Q4_1; return true;
    case 6: *out = DType::Q5_0; return true;
    case 7: *out = DType::Q5_1; return true;
    case 12: *out = DType::Q4_K; return true;
    case 13: *out = DType::Q5_K; return true;
    case 14: *out = DType::Q6_K; return true;
    case 30: *out = DType::BF16; return true;
    default: return false;
  }
}

// Smallest encoded size of one value of each type (bounds counts before allocating).
uint64_t min_value_bytes(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    case GgufType::STRING: return 8;
    case GgufType::ARRAY: return 12;
  }
  return 1;
}
bool is_unsigned_kind(GgufType t) {
  return t == GgufType::U8 || t == GgufType::U16 || t == GgufType::U32 || t == GgufType::U64 || t == GgufType::BOOL;
}
bool scalar_size(GgufType t, uint32_t* size) {
  switch (t) {
    case GgufType::STRING: case GgufType::ARRAY: return false;
    default: *size = uint32_t(min_value_bytes(t)); return true;
  }
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::U8: return "u8";
    case GgufType::I8: return "i8";
    case GgufType::U16: return "u16";
    case GgufType::I16: return "i16";
    case GgufType::U32: return "u32";
    case GgufType::I32: return "i32";
    case GgufType::F32: return "f32";
    case GgufType::BOOL: return "bool";
    case GgufType::STRING: return "string";
    case GgufType::ARRAY: return "array";
    case GgufType::U64: return "u64";
    case GgufType::I64: return "i64";
    case GgufType::F64: return "f64";
  }
  return "?";
}

bool ggml_type_info(uint32_t type, const char** name, uint32_t* block_elems, uint32_t* block_bytes) {
  for (const auto& r : kGgmlTypes) {
    if (r.id == type) {
      if (name) *name = r.name;
      if (block_elems) *block_elems = r.block_elems;
      if (block_bytes) *block_bytes = r.block_bytes;
      return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------- GgufValue accessors

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16:
    case GgufType::U32: case GgufType::I32: case GgufType::U64: case GgufType::I64: return true;
    default: return false;
  }
}

namespace {
template <typename T>
T load_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // little-endian hosts only (x86-64, arm64)
  return v;
}
}  // namespace

int64_t GgufValue::int_at(size_t index) const {
  if (type != GgufType::ARRAY || index >= count)
    throw Error(ErrorCode::InvalidArgument, "GGUF array index " + std::to_string(index) + " out of range");
  const uint8_t* p = raw.data();
  switch (elem_type) {
    case GgufType::U8: return p[index];
    case GgufType::I8: return int8_t(p[index]);
    case GgufType::BOOL: return p[index] != 0;
    case GgufType::U16: return load_le<uint16_t>(p + 2 * index);
    case GgufType::I16: return load_le<int16_t>(p + 2 * index);
    case GgufType::U32: return load_le<uint32_t>(p + 4 * index);
    case GgufType::I32: return load_le<int32_t>(p + 4 * index);
    case GgufType::I64: return load_le<int64_t>(p + 8 * index);
    case GgufType::U64: {
      uint64_t v = load_le<uint64_t>(p + 8 * index);
      if (v > uint64_t(INT64_MAX)) throw Error(ErrorCode::InvalidArgument, "GGUF u64 array element too large");
      return int64_t(v);
    }
    default: throw Error(ErrorCode::InvalidArgument, std::string("GGUF array of ") + gguf_type_name(elem_type) + " is not integer");
  }
}

double GgufValue::float_at(size_t index) const {
  if (type == GgufType::ARRAY && index < count) {
    if (elem_type == GgufType::F32) return load_le<float>(raw.data() + 4 * index);
    if (elem_type == GgufType::F64) return load_le<double>(raw.data() + 8 * index);
    if (elem_type == GgufType::U64) return double(load_le<uint64_t>(raw.data() + 8 * index));
  }
  return double(int_at(index));
}

const std::string& GgufValue::string_at(size_t index) const {
  if (type != GgufType::ARRAY || elem_type != GgufType::STRING || index >= strings.size())
    throw Error(ErrorCode::InvalidArgument, "GGUF string array index " + std::to_string(index) + " out of range");
  return strings[index];
}

// ---------------------------------------------------------------- parser

struct GgufParser {
  const std::shared_ptr<MappedFile>& file;
  const uint8_t* p;
  uint64_t n;
  uint64_t pos = 0;
  std::string context;  // what is being read, for errors
  uint64_t nested_arrays = 0;
  static constexpr uint64_t kReserveCap = 4096;

  explicit GgufParser(const std::shared_ptr<MappedFile>& f) : file(f), p(f->data()), n(f->size()) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ErrorCode::MalformedFile, what + (context.empty() ? "" : " (" + context + ")") + " at byte " +
                                              std::to_string(pos),
                file->path());
  }
  uint64_t remaining() const { return n - pos; }
  void need(uint64_t bytes, const char* what) {
    if (bytes > remaining())
      fail(std::string("truncated file: ") + what + " needs " + std::to_string(bytes) + " bytes, " +
           std::to_string(remaining()) + " left");
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v = load_le<T>(p + pos);
    pos += sizeof(T);
    return v;
  }
  std::string read_string(const char* what) {
    uint64_t len = read<uint64_t>(what);
    if (len > remaining())
      fail(std::string(what) + " length " + std::to_string(len) + " extends past end of file (" +
           std::to_string(remaining()) + " bytes left)");
    std::string s(reinterpret_cast<const char*>(p + pos), size_t(len));
    pos += len;
    return s;
  }
  // Count of `what`, each at least min_bytes long: must fit in what is left of the file.
  void check_count(uint64_t count, uint64_t min_bytes, const std::string& what) {
    if (min_bytes && count > remaining() / min_bytes)
      fail(what + " count " + std::to_string(count) + " cannot fit in the " + std::to_string(remaining()) +
           " bytes left");
  }
  GgufType read_type(const char* what) {
    uint32_t t = read<uint32_t>(what);
    if (t > uint32_t(GgufType::F64)) {
      pos -= 4;
      fail("unknown metadata value type " + std::to_string(t));
    }
    return GgufType(t);
  }

  void read_value(GgufType type, GgufValue& v, int depth) {
    v.type = type;
    switch (type) {
      case GgufType::U8: v.u = read<uint8_t>("u8"); v.i = int64_t(v.u); break;
      case GgufType::I8: v.i = read<int8_t>("i8"); break;
      case GgufType::U16: v.u = read<uint16_t>("u16"); v.i = int64_t(v.u); break;
      case GgufType::I16: v.i = read<int16_t>("i16"); break;
      case GgufType::U32: v.u = read<uint32_t>("u32"); v.i = int64_t(v.u); break;
      case GgufType::I32: v.i = read<int32_t>("i32"); break;
      case GgufType::U64: v.u = read<uint64_t>("u64"); v.i = v.u <= uint64_t(INT64_MAX) ? int64_t(v.u) : 0; break;
      case GgufType::I64: v.i = read<int64_t>("i64"); break;
      case GgufType::F32: v.f = read<float>("f32"); break;
      case GgufType::F64: v.f = read<double>("f64"); break;
      case GgufType::BOOL: {
        uint8_t b = read<uint8_t>("bool");
        if (b > 1) {
          pos -= 1;
          fail("bool value " + std::to_string(b) + " is not 0 or 1");
        }
        v.b = b != 0;
        v.u = b;
        v.i = b;
        break;
      }
      case GgufType::STRING: v.str = read_string("string"); break;
      case GgufType::ARRAY: {
        if (depth >= kGgufMaxArrayDepth) fail("arrays nested deeper than " + std::to_string(kGgufMaxArrayDepth));
        v.elem_type = read_type("array element type");
        v.count = read<uint64_t>("array length");
        check_count(v.count, min_value_bytes(v.elem_type), std::string("array of ") + gguf_type_name(v.elem_type));
        if (v.count > kGgufMaxArrayElems)
          fail("array of " + std::to_string(v.count) + " elements exceeds the limit of " + std::to_string(kGgufMaxArrayElems));
        if (v.elem_type == GgufType::ARRAY && (nested_arrays += v.count) > kGgufMaxNestedArrays)
          fail("more than " + std::to_string(kGgufMaxNestedArrays) + " nested arrays");
        uint32_t es;
        if (scalar_size(v.elem_type, &es)) {
          uint64_t bytes = v.count * es;  // no overflow: bounded by remaining()
          v.raw.assign(p + pos, p + pos + bytes);
          if (v.elem_type == GgufType::BOOL)
            for (uint64_t k = 0; k < v.count; ++k)
              if (v.raw[k] > 1) {
                pos += k;
                fail("bool array element is not 0 or 1");
              }
          pos += bytes;
        } else if (v.elem_type == GgufType::STRING) {
          // Grow as elements are read (never reserve a claimed count up front).
          v.strings.reserve(size_t(std::min<uint64_t>(v.count, kReserveCap)));
          for (uint64_t k = 0; k < v.count; ++k) v.strings.push_back(read_string("array string"));
        } else {
          v.arrays.reserve(size_t(std::min<uint64_t>(v.count, kReserveCap)));
          for (uint64_t k = 0; k < v.count; ++k) {
            v.arrays.emplace_back();
            read_value(GgufType::ARRAY, v.arrays.back(), depth + 1);
          }
        }
        break;
      }
    }
  }

  GgufFile run() {
    GgufFile g;
    g.format_ = "gguf";
    g.source_ = file->path();
    g.file_ = file;
    if (n < 4 || std::memcmp(p, "GGUF", 4) != 0) {
      std::string got;
      for (uint64_t k = 0; k < std::min<uint64_t>(n, 4); ++k) {
        char c = char(p[k]);
        got += (c >= 0x20 && c < 0x7f) ? std::string(1, c) : "\\x" + std::to_string(int(uint8_t(c)));
      }
      throw Error(ErrorCode::MalformedFile, "bad magic \"" + got + "\", not a GGUF file (expected \"GGUF\")",
                  file->path());
    }
    pos = 4;
    g.version_ = read<uint32_t>("version");
    if (g.version_ == 1)
      throw Error(ErrorCode::Unsupported, "GGUF version 1 is not supported (only 2 and 3)", file->path());
    if (g.version_ != 2 && g.version_ != 3) {
      bool big_endian = (g.version_ & 0xFFFF) == 0 && g.version_ != 0;
      throw Error(ErrorCode::Unsupported,
                  "GGUF version " + std::to_string(g.version_) +
                      (big_endian ? " (a big-endian file?)" : "") + " is not supported (only 2 and 3)",
                  file->path());
    }
    uint64_t n_tensors = read<uint64_t>("tensor count");
    uint64_t n_kv = read<uint64_t>("metadata count");
    check_count(n_kv, 8 + 4 + 1, "metadata key/value");
    check_count(n_tensors, 8 + 4 + 4 + 8, "tensor info");

    // ---- metadata
    g.kv_.reserve(size_t(std::min<uint64_t>(n_kv, kReserveCap)));
    for (uint64_t k = 0; k < n_kv; ++k) {
      context = "metadata entry " + std::to_string(k);
      std::string key = read_string("metadata key");
      context = "metadata key " + key;
      GgufType t = read_type("value type");
      GgufValue v;
      read_value(t, v, 0);
      if (g.kv_index_.count(key)) fail("duplicate metadata key");
      g.kv_index_.emplace(key, g.kv_.size());
      g.kv_.emplace_back(std::move(key), std::move(v));
    }
    context.clear();
    if (const GgufValue* a = g.find("general.alignment")) {
      uint64_t av = 0;
      if (a->is_integer()) av = is_unsigned_kind(a->type) ? a->u : (a->i > 0 ? uint64_t(a->i) : 0);
      if (!a->is_integer() || av == 0 || av > 0x40000000u || (av & (av - 1)) != 0)
        throw Error(ErrorCode::MalformedFile,
                    "general.alignment must be a power of two (a u32 up to 2^30), got " +
                        (a->is_integer() ? std::to_string(a->i) : std::string(gguf_type_name(a->type))),
                    file->path());
      g.alignment_ = uint32_t(av);
    }

    // ---- tensor infos
    struct Raw {
      std::string name;
      GgufTensorExtra x;
      uint64_t nbytes;
    };
    std::vector<Raw> raws;
    raws.reserve(size_t(std::min<uint64_t>(n_tensors, kReserveCap)));
    for (uint64_t k = 0; k < n_tensors; ++k) {
      context = "tensor info " + std::to_string(k);
      Raw r;
      r.name = read_string("tensor name");
      context = "tensor " + r.name;
      uint32_t nd = read<uint32_t>("n_dims");
      if (nd > 4) {
        pos -= 4;
        fail("n_dims " + std::to_string(nd) + " exceeds the maximum of 4");
      }
      r.x.n_dims = int(nd);
      for (uint32_t d = 0; d < nd; ++d) {
        uint64_t ne = read<uint64_t>("dim");
        if (ne > uint64_t(INT64_MAX)) {
          pos -= 8;
          fail("dim " + std::to_string(d) + " = " + std::to_string(ne) + " is negative or too large");
        }
        r.x.ne[d] = ne;
      }
      r.x.ggml_type = read<uint32_t>("ggml type");
      const char* tname;
      uint32_t be, bb;
      if (!ggml_type_info(r.x.ggml_type, &tname, &be, &bb)) {
        pos -= 4;
        fail("unknown ggml type " + std::to_string(r.x.ggml_type));
      }
      r.x.rel_offset = read<uint64_t>("tensor offset");
      if (r.x.ne[0] % be != 0)
        fail("dim 0 (" + std::to_string(r.x.ne[0]) + ") is not a multiple of the " + tname + " block size " +
             std::to_string(be));
      // bytes = ne0/be*bb * ne1 * ne2 * ne3, overflow-checked (a zero dim gives 0).
      uint64_t bytes = (r.x.ne[0] / be);
      bool overflow = false;
      auto mul = [&](uint64_t m) {
        if (m != 0 && bytes > UINT64_MAX / m) overflow = true;
        else bytes *= m;
      };
      mul(bb);
      for (int d = 1; d < 4; ++d) mul(r.x.ne[d]);
      bool zero = false;
      for (int d = 0; d < 4; ++d) zero |= r.x.ne[d] == 0;
      if (zero) { bytes = 0; overflow = false; }
      if (overflow || bytes > uint64_t(INT64_MAX)) fail("size overflows");
      uint64_t numel = 1;  // fits: bytes >= numel / be * bb and bb >= 1 ... checked separately for safety
      for (int d = 0; d < 4 && !zero; ++d) {
        if (numel > uint64_t(INT64_MAX) / r.x.ne[d]) fail("element count overflows");
        numel *= r.x.ne[d];
      }
      r.nbytes = bytes;
      raws.push_back(std::move(r));
    }
    context.clear();

    // ---- data section
    uint64_t info_end = pos;
    uint64_t data_start = info_end;
    uint64_t rem = info_end % g.alignment_;
    if (rem) data_start += g.alignment_ - rem;  // info_end <= n < 2^63, so no overflow
    g.data_offset_ = data_start;
    if (n_tensors > 0 && data_start > n)
      throw Error(ErrorCode::MalformedFile,
                  "data section would start at " + std::to_string(data_start) + ", past end of file (" +
                      std::to_string(n) + " bytes)",
                  file->path());
    const uint64_t data_size = data_start <= n ? n - data_start : 0;

    for (auto& r : raws) {
      if (r.x.rel_offset % g.alignment_ != 0)
        throw Error(ErrorCode::MalformedFile,
                    "tensor " + r.name + " offset " + std::to_string(r.x.rel_offset) + " is not aligned to " +
                        std::to_string(g.alignment_),
                    file->path());
      if (r.x.rel_offset > data_size || r.nbytes > data_size - r.x.rel_offset)
        throw Error(ErrorCode::MalformedFile,
                    "tensor " + r.name + " extends past end of file (offset " + std::to_string(r.x.rel_offset) +
                        " + " + std::to_string(r.nbytes) + " bytes, data section is " + std::to_string(data_size) +
                        " bytes)",
                    file->path());
      if (g.has_tensor(r.name))
        throw Error(ErrorCode::MalformedFile, "duplicate tensor name " + r.name, file->path());
      TensorInfo t;
      t.name = r.name;
      const char* tname = "";
      ggml_type_info(r.x.ggml_type, &tname, nullptr, nullptr);
      t.type_name = tname;
      t.supported = ggml_to_dtype(r.x.ggml_type, &t.dtype);
      for (int d = r.x.n_dims - 1; d >= 0; --d) t.shape.push_back(int64_t(r.x.ne[size_t(d)]));
      t.offset = data_start + r.x.rel_offset;
      t.nbytes = size_t(r.nbytes);
      t.data = p + t.offset;
      t.file = file;
      g.add_tensor(std::move(t));
      g.extras_.push_back(r.x);
    }

    // No two tensors may share bytes.
    std::vector<size_t> order;
    for (size_t k = 0; k < g.tensors_.size(); ++k)
      if (g.tensors_[k].nbytes) order.push_back(k);
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return g.tensors_[a].offset < g.tensors_[b].offset; });
    for (size_t k = 1; k < order.size(); ++k) {
      const TensorInfo& a = g.tensors_[order[k - 1]];
      const TensorInfo& b = g.tensors_[order[k]];
      if (b.offset < a.offset + a.nbytes)
        throw Error(ErrorCode::MalformedFile, "tensor " + b.name + " overlaps tensor " + a.name, file->path());
    }
    return g;
  }
};

GgufFile GgufFile::parse(std::shared_ptr<MappedFile> file) {
  GgufParser parser(file);
  return parser.run();
}

GgufFile GgufFile::open(const std::string& path) { return parse(MappedFile::open(path)); }

// ---------------------------------------------------------------- typed accessors

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

namespace {
[[noreturn]] void wrong_type(const std::string& path, const std::string& key, const char* want, const GgufValue* v) {
  if (!v) throw Error(ErrorCode::MalformedFile, "missing metadata key " + key, path);
  std::string got = gguf_type_name(v->type);
  if (v->type == GgufType::ARRAY) got = std::string("array of ") + gguf_type_name(v->elem_type);
  throw Error(ErrorCode::MalformedFile, "metadata key " + key + " is " + got + ", expected " + want, path);
}
}  // namespace

uint64_t GgufFile::get_u64(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v || !v->is_integer() || (!is_unsigned_kind(v->type) && v->i < 0)) wrong_type(source_, key, "a non-negative integer", v);
  return is_unsigned_kind(v->type) ? v->u : uint64_t(v->i);
}
uint32_t GgufFile::get_u32(const std::string& key) const {
  uint64_t x = get_u64(key);
  if (x > UINT32_MAX) wrong_type(source_, key, "an integer that fits u32", find(key));
  return uint32_t(x);
}
int64_t GgufFile::get_i64(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v || !v->is_integer() || (v->type == GgufType::U64 && v->u > uint64_t(INT64_MAX)))
    wrong_type(source_, key, "an integer that fits i64", v);
  return v->i;
}
int32_t GgufFile::get_i32(const std::string& key) const {
  int64_t x = get_i64(key);
  if (x < INT32_MIN || x > INT32_MAX) wrong_type(source_, key, "an integer that fits i32", find(key));
  return int32_t(x);
}
double GgufFile::get_f64(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) wrong_type(source_, key, "a number", v);
  if (v->is_float()) return v->f;
  if (v->type == GgufType::U64) return double(v->u);
  if (v->is_integer()) return double(v->i);
  wrong_type(source_, key, "a number", v);
}
float GgufFile::get_f32(const std::string& key) const { return float(get_f64(key)); }
bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v || v->type != GgufType::BOOL) wrong_type(source_, key, "bool", v);
  return v->b;
}
const std::string& GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v || v->type != GgufType::STRING) wrong_type(source_, key, "string", v);
  return v->str;
}
const GgufValue& GgufFile::get_array(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v || v->type != GgufType::ARRAY) wrong_type(source_, key, "array", v);
  return *v;
}
std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const GgufValue& v = get_array(key);
  if (v.elem_type != GgufType::STRING) wrong_type(source_, key, "array of string", &v);
  return v.strings;
}
std::vector<float> GgufFile::get_f32_array(const std::string& key) const {
  const GgufValue& v = get_array(key);
  if (v.elem_type == GgufType::STRING || v.elem_type == GgufType::ARRAY) wrong_type(source_, key, "numeric array", &v);
  std::vector<float> out(size_t(v.count));
  for (size_t k = 0; k < out.size(); ++k) out[k] = float(v.float_at(k));
  return out;
}
std::vector<int32_t> GgufFile::get_i32_array(const std::string& key) const {
  const GgufValue& v = get_array(key);
  if (!(v.elem_type == GgufType::I32 || v.elem_type == GgufType::U8 || v.elem_type == GgufType::I8 ||
        v.elem_type == GgufType::U16 || v.elem_type == GgufType::I16 || v.elem_type == GgufType::BOOL ||
        v.elem_type == GgufType::U32 || v.elem_type == GgufType::I64 || v.elem_type == GgufType::U64))
    wrong_type(source_, key, "integer array", &v);
  std::vector<int32_t> out(size_t(v.count));
  for (size_t k = 0; k < out.size(); ++k) {
    int64_t x = v.int_at(k);
    if (x < INT32_MIN || x > INT32_MAX)
      throw Error(ErrorCode::MalformedFile, "metadata key " + key + " element " + std::to_string(k) + " does not fit i32",
                  source_);
    out[k] = int32_t(x);
  }
  return out;
}

}  // namespace emollm
