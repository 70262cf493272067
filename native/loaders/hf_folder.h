// Probing a path for a Hugging Face model folder without loading it: the model-kind checks
// (LlavaModel::is_llava_folder, Qwen2VLModel::is_qwen2_vl_folder, the EmoLLM variants) read the
// folder's config.json the same way. A probe never throws: a path it cannot read is simply not
// that kind of folder (loading it then reports why).
#pragma once
#include <optional>
#include <string>

#include "core/filesystem.h"
#include "loaders/json.h"

namespace emollm {

// The parsed config.json of the folder `path` (trailing slashes allowed), or of `path` itself
// when it names a file called config.json; nullopt when there is none or it does not parse.
inline std::optional<JsonValue> hf_folder_config(const std::string& path) {
  try {
    std::string p = path;
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    std::string cfg;
    if (is_directory(p)) cfg = p + "/config.json";
    else if (p.size() >= 11 && p.compare(p.size() - 11, 11, "config.json") == 0) cfg = p;
    else return std::nullopt;
    if (!file_exists(cfg)) return std::nullopt;
    return load_json_file(cfg);
  } catch (...) {
    return std::nullopt;
  }
}

// hf_folder_config(path)'s "model_type" string, or "" (no config, or no string model_type).
inline std::string hf_folder_model_type(const std::string& path) {
  const std::optional<JsonValue> root = hf_folder_config(path);
  const JsonValue* mt = root ? root->find("model_type") : nullptr;
  return mt && mt->is_string() ? mt->as_string() : std::string();
}

}  // namespace emollm
