// A minimal GGUF v3 writer for the native tests (f32 tensors, or rows already in a ggml type;
// llama.cpp's key and tensor layouts are up to the caller). Shared by the LLaVA, LLaVA-NeXT,
// Qwen2-VL tests and the random-weight LLaMA models (random_llama.h).
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace emollm_test {

struct GgufOut {
  std::vector<uint8_t> kv;
  uint64_t n_kv = 0;
  struct T {
    std::string name;
    std::vector<uint64_t> ne;
    std::vector<float> data;
    uint32_t type = 0;           // ggml's type: 0 = f32 (`data`), else the rows in `bytes`
    std::vector<uint8_t> bytes;
    size_t size() const { return type == 0 ? data.size() * 4 : bytes.size(); }
    const void* ptr() const { return type == 0 ? static_cast<const void*>(data.data()) : bytes.data(); }
  };
  std::vector<T> tensors;
  void raw(const void* p, size_t n) { kv.insert(kv.end(), (const uint8_t*)p, (const uint8_t*)p + n); }
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void str(const std::string& s) { u64(s.size()); raw(s.data(), s.size()); }
  void key(const std::string& k, uint32_t type) { str(k); u32(type); ++n_kv; }
  void kv_u32(const std::string& k, uint32_t v) { key(k, 4); u32(v); }
  void kv_f32(const std::string& k, float v) { key(k, 6); raw(&v, 4); }
  void kv_bool(const std::string& k, bool v) { key(k, 7); uint8_t b = v; raw(&b, 1); }
  void kv_str(const std::string& k, const std::string& v) { key(k, 8); str(v); }
  void kv_f32s(const std::string& k, const std::vector<float>& v) { key(k, 9); u32(6); u64(v.size()); raw(v.data(), v.size() * 4); }
  void kv_i32s(const std::string& k, const std::vector<int32_t>& v) { key(k, 9); u32(5); u64(v.size()); raw(v.data(), v.size() * 4); }
  void kv_strs(const std::string& k, const std::vector<std::string>& v) {
    key(k, 9); u32(8); u64(v.size());
    for (auto& s : v) str(s);
  }
  // shape outermost-first, as PyTorch (reversed into ggml's ne)
  void tensor(const std::string& name, std::vector<int64_t> shape, std::vector<float> data) {
    std::vector<uint64_t> ne(shape.rbegin(), shape.rend());
    tensors.push_back({name, ne, std::move(data), 0, {}});
  }
  // rows already in ggml type `type` (quantized blocks, f16, bf16, ...)
  void tensor_bytes(const std::string& name, std::vector<int64_t> shape, uint32_t type, std::vector<uint8_t> bytes) {
    std::vector<uint64_t> ne(shape.rbegin(), shape.rend());
    tensors.push_back({name, ne, {}, type, std::move(bytes)});
  }
  void write(const std::string& path) {
    std::vector<uint8_t> b = {'G', 'G', 'U', 'F'};
    auto put = [&](const void* p, size_t n) { b.insert(b.end(), (const uint8_t*)p, (const uint8_t*)p + n); };
    uint32_t ver = 3;
    uint64_t nt = tensors.size();
    put(&ver, 4); put(&nt, 8); put(&n_kv, 8);
    put(kv.data(), kv.size());
    uint64_t off = 0;
    for (auto& t : tensors) {
      uint64_t len = t.name.size();
      put(&len, 8); put(t.name.data(), len);
      uint32_t nd = uint32_t(t.ne.size());
      put(&nd, 4);
      for (uint64_t d : t.ne) put(&d, 8);
      put(&t.type, 4); put(&off, 8);
      off += (t.size() + 31) / 32 * 32;
    }
    while (b.size() % 32) b.push_back(0);
    for (auto& t : tensors) {
      put(t.ptr(), t.size());
      while (b.size() % 32) b.push_back(0);
    }
    std::ofstream f(path, std::ios::binary);
    f.write((const char*)b.data(), std::streamsize(b.size()));
  }
};

}  // namespace emollm_test
