// safetensors checkpoints: one file (8-byte little-endian header length N, N bytes of JSON
// header, then the data section), or a sharded directory described by
// model.safetensors.index.json ({"metadata": {...}, "weight_map": {tensor: shard file}}).
//
// Every header field is checked against the file before use: header length within the file
// and at most kSafetensorsMaxHeader, data_offsets ordered and inside the data section,
// end - begin == numel * element size (overflow-checked), dims non-negative, tensors not
// overlapping, no duplicate names, "__metadata__" a map of strings. Errors are
// Error(MalformedFile) naming the file and the tensor.
//
// dtypes F32/F16/BF16 are supported for compute; the other safetensors dtypes (F64, I64, I32,
// I16, I8, U8, U16, U32, U64, BOOL, F8_E4M3, F8_E5M2, F8_E8M0) are listed with
// supported == false and only fail (Unsupported) when asked for as compute tensors.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "loaders/mapped_file.h"
#include "loaders/weight_store.h"

namespace emollm {

constexpr uint64_t kSafetensorsMaxHeader = uint64_t(100) << 20;  // 100 MiB

class SafetensorsStore : public WeightStore {
 public:
  // `path` may be a .safetensors file, a model.safetensors.index.json, or a directory holding
  // either model.safetensors.index.json (preferred) or model.safetensors.
  static SafetensorsStore open(const std::string& path);
  // Parses one safetensors file already in memory (e.g. MappedFile::from_bytes).
  static SafetensorsStore parse(std::shared_ptr<MappedFile> file);
  // Parses an index.json (its text given, named index_path) and maps the shards it names, which
  // live in the index's directory. Each shard is mapped once.
  static SafetensorsStore parse_index(const char* json, size_t size, const std::string& index_path);

  // "__metadata__" of the file (sharded: of all shards, first one wins), plus, for a sharded
  // checkpoint, the index's "metadata" entries whose values are strings or numbers (as text).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The files whose data the tensors point into (one, or the shards in first-use order).
  const std::vector<std::shared_ptr<MappedFile>>& files() const { return files_; }
  bool sharded() const { return sharded_; }

 private:
  std::map<std::string, std::string> metadata_;
  std::vector<std::shared_ptr<MappedFile>> files_;
  bool sharded_ = false;
};

// Element size in bytes of a safetensors dtype name ("F32" -> 4); 0 when unknown.
size_t safetensors_dtype_size(const std::string& name);

}  // namespace emollm
