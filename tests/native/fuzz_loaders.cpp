// A deterministic mutation fuzzer for the loaders: mutates the real GGUF, safetensors and
// config.json files (mostly in their header regions) and parses each mutant from an exact-size
// heap buffer. Every parse must either succeed or throw emollm::Error; anything else (another
// exception, a crash, an AddressSanitizer report) is a failure. After a successful parse the
// first and last byte of every tensor is read, so ASan catches extents outside the buffer.
// The safetensors mutants that parse are also loaded as the stories260K LLaMA (from_hf_store with
// the unmutated config), so the model's tensor checks (loaders/weight_reader.h: missing,
// misshapen, unsupported or misaligned tensors) meet renamed, reshaped and retyped tensors too:
// each must load or throw emollm::Error like the parse.
//
//   fuzz_loaders <shared models dir> [iterations per format (default 3000)] [seed]
// Skips (exit 0) with a printed reason when the models folder is absent.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "base/error.h"
#include "loaders/gguf.h"
#include "loaders/hf_config.h"
#include "loaders/json.h"
#include "loaders/mapped_file.h"
#include "loaders/safetensors.h"
#include "model/llama.h"

using namespace emollm;

namespace {

struct Rng {  // splitmix64: deterministic across platforms
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return n ? size_t(next() % n) : 0; }
  bool chance(int percent) { return below(100) < size_t(percent); }
};

bool read_all(const std::string& path, std::vector<uint8_t>& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  out.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
}

struct Field {
  size_t pos;
  int size;  // 4 or 8
};

// Integer fields (counts, lengths, types, dims, offsets) of a GGUF header, found by walking it.
std::vector<Field> gguf_fields(const std::vector<uint8_t>& b, size_t* header_end) {
  std::vector<Field> out;
  size_t p = 4;
  auto u32 = [&]() { uint32_t v; std::memcpy(&v, &b[p], 4); out.push_back({p, 4}); p += 4; return v; };
  auto u64 = [&]() { uint64_t v; std::memcpy(&v, &b[p], 8); out.push_back({p, 8}); p += 8; return v; };
  auto str = [&]() { uint64_t n = u64(); p += size_t(n); };
  std::function<void(uint32_t)> value = [&](uint32_t t) {
    static const int sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (t == 8) str();
    else if (t == 9) {
      uint32_t et = u32();
      uint64_t n = u64();
      for (uint64_t k = 0; k < n; ++k) {
        if (et == 8 || et == 9) value(et);
        else { p += size_t(sz[et]) * size_t(n - k); break; }
      }
    } else p += size_t(sz[t]);
  };
  u32();
  uint64_t nt = u64(), nkv = u64();
  for (uint64_t k = 0; k < nkv; ++k) { str(); value(u32()); }
  for (uint64_t k = 0; k < nt; ++k) {
    str();
    uint32_t nd = u32();
    for (uint32_t d = 0; d < nd; ++d) u64();
    u32();
    u64();
  }
  *header_end = p;
  return out;
}

// Positions of digit runs in a JSON text (numbers worth replacing by boundary values).
std::vector<std::pair<size_t, size_t>> json_numbers(const std::vector<uint8_t>& b, size_t lo, size_t hi) {
  std::vector<std::pair<size_t, size_t>> out;
  for (size_t i = lo; i < hi;) {
    if ((b[i] >= '0' && b[i] <= '9') || b[i] == '-') {
      size_t j = i;
      while (j < hi && ((b[j] >= '0' && b[j] <= '9') || b[j] == '-' || b[j] == '.' || b[j] == 'e')) ++j;
      out.push_back({i, j - i});
      i = j;
    } else {
      ++i;
    }
  }
  return out;
}

const uint64_t kBoundary64[] = {0, 1, 2, 3, 4, 5, 31, 32, 33, 0x7f, 0xff, 0x7fff, 0xffff, 0x7fffffffull, 0x80000000ull,
                                0xffffffffull, 0x100000000ull, uint64_t(1) << 60, 0x7fffffffffffffffull,
                                0x8000000000000000ull, 0xffffffffffffffffull, 0xfffffffffffffff0ull};
const char* kJsonNumbers[] = {"0", "-1", "1", "18446744073709551615", "9223372036854775807", "9223372036854775808",
                              "-9223372036854775808", "4611686018427387904", "1e308", "1e999", "1.5", "-0", "00",
                              "2147483648", "4294967296", "99999999999999999999999"};
const char kJsonChars[] = "{}[]\",:\\0-e.tfnu \x00\x7f\xff\xc3";

struct Target {
  std::string name;
  std::vector<uint8_t> base;
  size_t header_end = 0;             // mutations concentrate in [0, header_end)
  std::vector<Field> fields;         // binary integer fields
  std::vector<std::pair<size_t, size_t>> numbers;  // JSON numbers
  bool json_text = false;
  std::function<void(const std::shared_ptr<MappedFile>&)> parse;
};

void mutate(Rng& r, const Target& t, std::vector<uint8_t>& b) {
  int n = 1 + int(r.below(r.chance(70) ? 2 : 8));
  for (int m = 0; m < n; ++m) {
    size_t region = (r.chance(90) && t.header_end) ? std::min(t.header_end, b.size()) : b.size();
    if (b.empty()) {
      b.push_back(uint8_t(r.next()));
      continue;
    }
    size_t pos = r.below(region ? region : b.size());
    switch (r.below(t.json_text ? 9 : 8)) {
      case 0: b[pos] ^= uint8_t(1u << r.below(8)); break;  // bit flip
      case 1: {  // special byte
        static const uint8_t v[] = {0x00, 0xff, 0x7f, 0x80, 0x01, 0x20, '"', '{'};
        b[pos] = v[r.below(sizeof v)];
        break;
      }
      case 2: b[pos] = uint8_t(r.next()); break;
      case 3: {  // integer field to a boundary value
        uint64_t v = kBoundary64[r.below(sizeof kBoundary64 / sizeof kBoundary64[0])];
        if (r.chance(20)) v += r.below(3) - 1;
        size_t at = pos;
        int size = r.chance(50) ? 4 : 8;
        if (!t.fields.empty() && r.chance(80)) {
          const Field& f = t.fields[r.below(t.fields.size())];
          at = f.pos;
          size = f.size;
        }
        for (int k = 0; k < size && at + size_t(k) < b.size(); ++k) b[at + size_t(k)] = uint8_t(v >> (8 * k));
        break;
      }
      case 4: b.resize(r.chance(70) ? r.below(region + 1) : r.below(b.size() + 1)); break;  // truncate
      case 5: {  // insert bytes
        size_t k = 1 + r.below(r.chance(80) ? 4 : 64);
        std::vector<uint8_t> ins(k);
        for (auto& c : ins) c = t.json_text ? uint8_t(kJsonChars[r.below(sizeof kJsonChars - 1)]) : uint8_t(r.next());
        b.insert(b.begin() + long(pos), ins.begin(), ins.end());
        break;
      }
      case 6: {  // delete bytes
        size_t k = std::min(b.size() - pos, 1 + r.below(16));
        b.erase(b.begin() + long(pos), b.begin() + long(pos + k));
        break;
      }
      case 7: {  // duplicate a chunk (repeats structure)
        size_t k = std::min(b.size() - pos, 1 + r.below(64));
        std::vector<uint8_t> chunk(b.begin() + long(pos), b.begin() + long(pos + k));
        size_t at = r.below(b.size() + 1);
        b.insert(b.begin() + long(at), chunk.begin(), chunk.end());
        break;
      }
      case 8: {  // replace a JSON number with a boundary number (positions of the unmutated base)
        if (t.numbers.empty()) break;
        auto nr = t.numbers[r.below(t.numbers.size())];
        if (nr.first + nr.second > b.size()) break;
        const char* s = kJsonNumbers[r.below(sizeof kJsonNumbers / sizeof kJsonNumbers[0])];
        b.erase(b.begin() + long(nr.first), b.begin() + long(nr.first + nr.second));
        b.insert(b.begin() + long(nr.first), s, s + std::strlen(s));
        break;
      }
    }
  }
}

volatile uint8_t g_sink;
long g_model_loads = 0;  // mutants that parsed and went on to the model load

void touch(const WeightStore& ws) {
  uint8_t acc = 0;
  for (const auto& t : ws.tensors()) {
    if (t.nbytes == 0) continue;
    acc ^= t.data[0];
    acc ^= t.data[t.nbytes - 1];
    if (t.supported && t.shape.size() <= 4) (void)t.compute_view();
  }
  g_sink = acc;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::printf("usage: fuzz_loaders <shared models dir> [iterations per format] [seed]\n");
    return 2;
  }
  std::string dir = argv[1];
  long iters = argc > 2 ? std::atol(argv[2]) : 3000;
  uint64_t seed = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 20261125;
  const double kMaxSecondsPerFormat = 60.0;

  std::vector<Target> targets;
  {
    Target t;
    t.name = "gguf";
    if (!read_all(dir + "/stories260K/gguf/stories260K.gguf", t.base)) {
      std::printf("skip: %s/stories260K/gguf/stories260K.gguf not found (pass the shared models dir)\n", dir.c_str());
      std::printf("0 passed, 0 failed\n");
      return 0;
    }
    t.fields = gguf_fields(t.base, &t.header_end);
    t.parse = [](const std::shared_ptr<MappedFile>& f) {
      GgufFile g = GgufFile::parse(f);
      touch(g);
      uint8_t acc = 0;
      for (const auto& kv : g.metadata()) {
        const GgufValue& v = kv.second;
        if (v.is_array() && v.count > 0) {
          if (v.elem_type == GgufType::STRING) acc ^= uint8_t(v.string_at(v.count - 1).size());
          else if (v.elem_type != GgufType::ARRAY) acc ^= uint8_t(v.float_at(v.count - 1));
        }
      }
      g_sink = acc;
    };
    targets.push_back(std::move(t));
  }
  {
    Target t;
    t.name = "safetensors";
    if (read_all(dir + "/stories260K/hf/model.safetensors", t.base) && t.base.size() > 8) {
      uint64_t h;
      std::memcpy(&h, t.base.data(), 8);
      t.header_end = size_t(8 + h);
      t.fields = {{0, 8}};
      t.numbers = json_numbers(t.base, 8, t.header_end);
      t.json_text = true;
      t.parse = [](const std::shared_ptr<MappedFile>& f) { touch(SafetensorsStore::parse(f)); };
      targets.push_back(std::move(t));
    } else {
      std::printf("note: stories260K/hf/model.safetensors missing, safetensors not fuzzed\n");
    }
  }
  // safetensors mutants that parse, loaded as the LLaMA through the weight reader
  std::vector<uint8_t> st_config;
  if (!targets.back().json_text || targets.back().name != "safetensors") {
    std::printf("note: safetensors not fuzzed, so neither is the model load\n");
  } else if (!read_all(dir + "/stories260K/hf/config.json", st_config)) {
    std::printf("note: stories260K/hf/config.json missing, the model load is not fuzzed\n");
  } else {
    const HfConfig hc = parse_hf_config_text(reinterpret_cast<const char*>(st_config.data()), st_config.size(),
                                             "stories260K/hf/config.json");
    if (!hc.llama) {
      std::printf("FAIL: stories260K/hf/config.json is not a LLaMA config\n");
      return 1;
    }
    Target t = targets.back();
    t.name = "safetensors->llama (weight_reader)";
    const LlamaConfig cfg = *hc.llama;
    t.parse = [cfg](const std::shared_ptr<MappedFile>& f) {
      auto store = std::make_shared<SafetensorsStore>(SafetensorsStore::parse(f));
      touch(*store);
      ++g_model_loads;
      LlamaLoadOptions o;
      o.threads = 1;
      o.device = DeviceKind::Cpu;
      (void)LlamaModel::from_hf_store(store, cfg, "model.", "lm_head.weight", "stories260K/hf/config.json", o);
    };
    targets.push_back(std::move(t));
  }
  for (const char* cfg : {"/stories260K/hf/config.json", "/llava-tiny-hf/config.json"}) {
    Target t;
    t.name = std::string("config") + cfg;
    if (!read_all(dir + cfg, t.base)) continue;
    t.header_end = t.base.size();
    t.numbers = json_numbers(t.base, 0, t.base.size());
    t.json_text = true;
    t.parse = [](const std::shared_ptr<MappedFile>& f) {
      (void)parse_hf_config_text(reinterpret_cast<const char*>(f->data()), f->size(), f->path());
    };
    targets.push_back(std::move(t));
  }

  long passed = 0, failed = 0;
  Rng rng(seed);
  for (const Target& t : targets) {
    long ok = 0, rejected = 0, bad = 0;
    std::vector<long> by_code(8, 0);
    auto start = std::chrono::steady_clock::now();
    long i = 0;
    long n = t.name.rfind("config", 0) == 0 ? iters / 2 : iters;
    for (; i < n; ++i) {
      std::vector<uint8_t> b = t.base;
      mutate(rng, t, b);
      // Exact-size heap copy: any read past the end is an ASan report.
      auto f = MappedFile::from_bytes(b.data(), b.size(), t.name + "#" + std::to_string(i));
      try {
        t.parse(f);
        ++ok;
      } catch (const Error& e) {
        ++rejected;
        by_code[size_t(e.code())]++;
      } catch (const std::exception& e) {
        ++bad;
        std::printf("FAIL %s iteration %ld: non-emollm exception: %s\n", t.name.c_str(), i, e.what());
      } catch (...) {
        ++bad;
        std::printf("FAIL %s iteration %ld: unknown exception\n", t.name.c_str(), i);
      }
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (secs > kMaxSecondsPerFormat) {
        std::printf("note: %s stopped after %ld iterations (%.0f s time limit)\n", t.name.c_str(), i + 1, secs);
        ++i;
        break;
      }
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%-34s %5ld mutants in %5.2f s: %5ld parsed, %5ld rejected (malformed %ld, unsupported %ld, bad config %ld, other %ld), %ld failures\n",
                t.name.c_str(), i, secs, ok, rejected, by_code[size_t(ErrorCode::MalformedFile)],
                by_code[size_t(ErrorCode::Unsupported)], by_code[size_t(ErrorCode::BadConfig)],
                rejected - by_code[size_t(ErrorCode::MalformedFile)] - by_code[size_t(ErrorCode::Unsupported)] -
                    by_code[size_t(ErrorCode::BadConfig)],
                bad);
    if (t.name.rfind("safetensors->", 0) == 0)
      std::printf("%-34s %5ld of them reached the model load: %ld loaded, %ld rejected there\n", "", g_model_loads, ok,
                  g_model_loads - ok);
    passed += ok + rejected;
    failed += bad;
  }
  std::printf("%ld passed, %ld failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
