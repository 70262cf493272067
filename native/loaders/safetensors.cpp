#include "loaders/safetensors.h"

#include <algorithm>
#include <cstring>
#include <unordered_map>

#include "base/error.h"
#include "loaders/json.h"

#if !defined(_WIN32)
#include <sys/stat.h>
#endif

namespace emollm {

namespace {

struct StDType {
  const char* name;
  size_t size;
  bool supported;
  DType dtype;
};
const StDType kStDTypes[] = {
    {"F32", 4, true, DType::F32},    {"F16", 2, true, DType::F16},       {"BF16", 2, true, DType::BF16},
    {"F64", 8, false, DType::F32},   {"I64", 8, false, DType::F32},      {"I32", 4, false, DType::F32},
    {"I16", 2, false, DType::F32},   {"I8", 1, false, DType::F32},       {"U8", 1, false, DType::F32},
    {"U16", 2, false, DType::F32},   {"U32", 4, false, DType::F32},      {"U64", 8, false, DType::F32},
    {"BOOL", 1, false, DType::F32},  {"F8_E4M3", 1, false, DType::F32},  {"F8_E5M2", 1, false, DType::F32},
    {"F8_E8M0", 1, false, DType::F32}, {"C64", 8, false, DType::F32},
};

const StDType* find_dtype(const std::string& name) {
  for (const auto& d : kStDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

[[noreturn]] void malformed(const std::string& file, const std::string& what) {
  throw Error(ErrorCode::MalformedFile, what, file);
}

uint64_t read_u64le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string dirname_of(const std::string& path) {
  size_t s = path.find_last_of('/');
#if defined(_WIN32)
  size_t b = path.find_last_of('\\');
  if (b != std::string::npos && (s == std::string::npos || b > s)) s = b;
#endif
  if (s == std::string::npos) return ".";
  if (s == 0) return "/";
  return path.substr(0, s);
}

bool ends_with(const std::string& s, const char* suffix) {
  size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

enum class PathKind { Missing, File, Dir };
PathKind path_kind(const std::string& path) {
#if defined(_WIN32)
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f) { std::fclose(f); return PathKind::File; }
  return PathKind::Missing;
#else
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return PathKind::Missing;
  return S_ISDIR(st.st_mode) ? PathKind::Dir : PathKind::File;
#endif
}

}  // namespace

size_t safetensors_dtype_size(const std::string& name) {
  const StDType* d = find_dtype(name);
  return d ? d->size : 0;
}

// Parses the header of one file and appends its tensors; used for single files and each shard.
struct StFileParser {
  static void parse_into(const std::shared_ptr<MappedFile>& file, std::vector<TensorInfo>& out,
                         std::map<std::string, std::string>& metadata) {
    const std::string& path = file->path();
    const uint64_t size = file->size();
    if (size < 8)
      malformed(path, "file is " + std::to_string(size) + " bytes, too short for the 8-byte safetensors header length");
    const uint64_t hlen = read_u64le(file->data());
    if (hlen > size - 8)
      malformed(path, "header length " + std::to_string(hlen) + " extends past end of file (file is " +
                          std::to_string(size) + " bytes)");
    if (hlen > kSafetensorsMaxHeader)
      malformed(path, "header length " + std::to_string(hlen) + " exceeds the " +
                          std::to_string(kSafetensorsMaxHeader) + "-byte limit");
    if (hlen < 2) malformed(path, "header length " + std::to_string(hlen) + " is too small for a JSON object");
    const char* hdr = reinterpret_cast<const char*>(file->data() + 8);
    if (hdr[0] != '{') malformed(path, "header does not start with '{' (not a safetensors file?)");
    JsonValue root = parse_json(hdr, size_t(hlen), path);
    if (!root.is_object()) malformed(path, "header is not a JSON object");

    const uint64_t data_start = 8 + hlen;
    const uint64_t data_size = size - data_start;
    size_t first = out.size();

    for (const auto& kv : root.members()) {
      const std::string& name = kv.first;
      const JsonValue& v = kv.second;
      if (name == "__metadata__") {
        if (!v.is_object()) malformed(path, "__metadata__ must be an object of strings, got " + std::string(v.type_name()));
        for (const auto& m : v.members()) {
          if (!m.second.is_string())
            malformed(path, "__metadata__ entry \"" + m.first + "\" must be a string, got " + m.second.type_name());
          metadata.emplace(m.first, m.second.as_string());
        }
        continue;
      }
      const std::string where = "tensor " + name;
      if (!v.is_object()) malformed(path, where + ": entry must be an object, got " + v.type_name());
      const JsonValue* jd = v.find("dtype");
      const JsonValue* js = v.find("shape");
      const JsonValue* jo = v.find("data_offsets");
      if (!jd || !jd->is_string()) malformed(path, where + ": missing or non-string \"dtype\"");
      if (!js || !js->is_array()) malformed(path, where + ": missing or non-array \"shape\"");
      if (!jo || !jo->is_array()) malformed(path, where + ": missing or non-array \"data_offsets\"");
      const StDType* dt = find_dtype(jd->as_string());
      if (!dt) malformed(path, where + ": unknown dtype \"" + jd->as_string() + "\"");

      TensorInfo t;
      t.name = name;
      t.type_name = dt->name;
      t.supported = dt->supported;
      t.dtype = dt->dtype;
      if (js->size() > 32) malformed(path, where + ": " + std::to_string(js->size()) + " dims is too many");
      // numel with overflow check; bytes bounded by the data section anyway.
      uint64_t numel = 1;
      bool overflow = false;
      for (const auto& d : js->items()) {
        if (!d.is_int() || d.as_int() < 0)
          malformed(path, where + ": shape entries must be non-negative integers");
        uint64_t dim = uint64_t(d.as_int());
        t.shape.push_back(d.as_int());
        if (dim != 0 && numel > UINT64_MAX / dim) overflow = true;
        else numel *= dim;
      }
      if (js->size() > 0) {
        // A zero dim makes numel 0 whatever the overflowing dims; recompute to be exact.
        bool has_zero = std::find(t.shape.begin(), t.shape.end(), 0) != t.shape.end();
        if (has_zero) { numel = 0; overflow = false; }
      }
      uint64_t nbytes = 0;
      if (overflow || numel > UINT64_MAX / dt->size || numel > uint64_t(INT64_MAX) / dt->size)
        malformed(path, where + ": shape " + shape_str(t.shape) + " overflows");
      nbytes = numel * dt->size;

      if (jo->size() != 2) malformed(path, where + ": data_offsets must have 2 entries");
      const JsonValue& jb = jo->items()[0];
      const JsonValue& je = jo->items()[1];
      if (!jb.is_int() || jb.as_int() < 0 || !je.is_int() || je.as_int() < 0)
        malformed(path, where + ": data_offsets must be non-negative integers");
      uint64_t begin = uint64_t(jb.as_int()), end = uint64_t(je.as_int());
      if (end < begin)
        malformed(path, where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                            "] are out of order");
      if (end > data_size)
        malformed(path, where + " extends past end of file (ends at " + std::to_string(end) + ", data section is " +
                            std::to_string(data_size) + " bytes)");
      if (end - begin != nbytes)
        malformed(path, where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] span " +
                            std::to_string(end - begin) + " bytes but shape " + shape_str(t.shape) + " of " +
                            dt->name + " needs " + std::to_string(nbytes));
      t.offset = data_start + begin;
      t.nbytes = size_t(nbytes);
      t.data = file->data() + t.offset;
      t.file = file;
      out.push_back(std::move(t));
    }

    // No two tensors may share bytes.
    std::vector<const TensorInfo*> order;
    for (size_t i = first; i < out.size(); ++i)
      if (out[i].nbytes > 0) order.push_back(&out[i]);
    std::sort(order.begin(), order.end(),
              [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < order.size(); ++i)
      if (order[i]->offset < order[i - 1]->offset + order[i - 1]->nbytes)
        malformed(path, "tensor " + order[i]->name + " overlaps tensor " + order[i - 1]->name + " (data_offsets [" +
                            std::to_string(order[i]->offset - data_start) + ", ...) and [" +
                            std::to_string(order[i - 1]->offset - data_start) + ", " +
                            std::to_string(order[i - 1]->offset - data_start + order[i - 1]->nbytes) + "])");
  }

  static std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
  }
};

SafetensorsStore SafetensorsStore::parse(std::shared_ptr<MappedFile> file) {
  SafetensorsStore st;
  st.format_ = "safetensors";
  st.source_ = file->path();
  std::vector<TensorInfo> tensors;
  StFileParser::parse_into(file, tensors, st.metadata_);
  for (auto& t : tensors) st.add_tensor(std::move(t));  // JSON already rejected duplicate keys
  st.files_.push_back(std::move(file));
  return st;
}

SafetensorsStore SafetensorsStore::parse_index(const char* json, size_t size, const std::string& index_path) {
  JsonValue root = parse_json(json, size, index_path);
  if (!root.is_object()) malformed(index_path, "index is not a JSON object");
  const JsonValue* wm = root.find("weight_map");
  if (!wm || !wm->is_object()) malformed(index_path, "index has no \"weight_map\" object");
  SafetensorsStore st;
  st.format_ = "safetensors";
  st.source_ = index_path;
  st.sharded_ = true;
  if (const JsonValue* md = root.find("metadata")) {
    if (!md->is_object() && !md->is_null()) malformed(index_path, "index \"metadata\" must be an object");
    for (const auto& m : md->members()) {
      if (m.second.is_string()) st.metadata_.emplace(m.first, m.second.as_string());
      else if (m.second.is_int()) st.metadata_.emplace(m.first, std::to_string(m.second.as_int()));
    }
  }
  const std::string dir = dirname_of(index_path);
  // Shard file name -> its tensors, parsed once.
  std::unordered_map<std::string, size_t> shard_index;
  std::vector<std::vector<TensorInfo>> shard_tensors;
  std::vector<std::unordered_map<std::string, size_t>> shard_names;
  for (const auto& kv : wm->members()) {
    if (!kv.second.is_string()) malformed(index_path, "weight_map entry for " + kv.first + " must be a string");
    const std::string& shard = kv.second.as_string();
    if (shard.empty() || shard.find('/') != std::string::npos || shard.find('\\') != std::string::npos ||
        shard == "." || shard == ".." || shard.find('\0') != std::string::npos)
      malformed(index_path, "weight_map entry for " + kv.first + " names \"" + shard +
                                "\", which is not a plain file name in the index's directory");
    auto it = shard_index.find(shard);
    if (it == shard_index.end()) {
      auto f = MappedFile::open(dir + "/" + shard);
      std::vector<TensorInfo> ts;
      StFileParser::parse_into(f, ts, st.metadata_);
      std::unordered_map<std::string, size_t> names;
      for (size_t i = 0; i < ts.size(); ++i) names.emplace(ts[i].name, i);
      it = shard_index.emplace(shard, shard_tensors.size()).first;
      shard_tensors.push_back(std::move(ts));
      shard_names.push_back(std::move(names));
      st.files_.push_back(std::move(f));
    }
    if (!shard_names[it->second].count(kv.first))
      malformed(index_path, "weight_map puts tensor " + kv.first + " in " + shard + ", which has no such tensor");
  }
  // All tensors of every shard, shard by shard; a name in two shards is an error.
  for (size_t s = 0; s < shard_tensors.size(); ++s) {
    for (auto& t : shard_tensors[s]) {
      if (st.has_tensor(t.name)) malformed(index_path, "tensor " + t.name + " appears in more than one shard (" + t.path() + ")");
      st.add_tensor(std::move(t));
    }
  }
  return st;
}

SafetensorsStore SafetensorsStore::open(const std::string& path) {
  PathKind kind = path_kind(path);
  if (kind == PathKind::Missing) throw Error(ErrorCode::FileNotFound, "file not found: " + path, path);
  std::string file = path;
  if (kind == PathKind::Dir) {
    std::string idx = path + "/model.safetensors.index.json";
    std::string single = path + "/model.safetensors";
    if (path_kind(idx) == PathKind::File) file = idx;
    else if (path_kind(single) == PathKind::File) file = single;
    else
      throw Error(ErrorCode::FileNotFound,
                  "directory " + path + " has neither model.safetensors.index.json nor model.safetensors", path);
  }
  auto f = MappedFile::open(file);
  if (ends_with(file, ".json"))
    return parse_index(reinterpret_cast<const char*>(f->data()), f->size(), file);
  return parse(std::move(f));
}

}  // namespace emollm
