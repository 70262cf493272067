// Tests of the weight/config loaders: real files from the shared model folder (skipped with a
// printed reason when it is absent) and hand-made malformed files, one per check.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>
#if !defined(_WIN32)
#include <sys/stat.h>
#include <unistd.h>
#endif

#include "base/error.h"
#include "loaders/gguf.h"
#include "loaders/hf_config.h"
#include "loaders/json.h"
#include "loaders/mapped_file.h"
#include "loaders/safetensors.h"
#include "testing.h"

using namespace emollm;
namespace fs = std::filesystem;

// Expects expr to throw emollm::Error with the given code and a message containing `substr`.
#define EXPECT_THROWS_MSG(expr, errcode, substr)                                                         \
  do {                                                                                                   \
    bool emt_thrown = false;                                                                             \
    try {                                                                                                \
      (void)(expr);                                                                                      \
    } catch (const ::emollm::Error& e) {                                                                 \
      emt_thrown = true;                                                                                 \
      if (e.code() != (errcode) || std::string(e.what()).find(substr) == std::string::npos)              \
        ::emollm_test::report_failure(__FILE__, __LINE__,                                                \
                                      std::string("wrong error from " #expr ": [") +                     \
                                          error_code_name(e.code()) + "] " + e.what() +                  \
                                          " (wanted " #errcode " containing \"" + (substr) + "\")");     \
    }                                                                                                    \
    if (!emt_thrown) ::emollm_test::report_failure(__FILE__, __LINE__, "no throw: " #expr);               \
  } while (0)

namespace {

// The shared data folder: $EMOLLM_SHARED_DIR, else ../shared; "" (with a printed reason) if absent.
std::string shared_dir() {
  const char* env = std::getenv("EMOLLM_SHARED_DIR");
  std::string d = env && *env ? env : "../shared";
  if (fs::exists(fs::path(d) / "models")) return d;
  std::printf("    skip: shared data folder not found at %s (set EMOLLM_SHARED_DIR)\n", d.c_str());
  return "";
}

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "emollm_loaders_XXXXXX").string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
    path = buf.data();
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

std::shared_ptr<MappedFile> mem(const std::vector<uint8_t>& b, const std::string& name = "mem.bin") {
  return MappedFile::from_bytes(b.data(), b.size(), name);
}

// safetensors bytes: 8-byte LE header length, the header, then `data_bytes` bytes of data.
std::vector<uint8_t> make_st(const std::string& header, size_t data_bytes, uint64_t claimed_len = UINT64_MAX) {
  std::vector<uint8_t> b(8);
  uint64_t n = claimed_len == UINT64_MAX ? header.size() : claimed_len;
  for (int i = 0; i < 8; ++i) b[size_t(i)] = uint8_t(n >> (8 * i));
  b.insert(b.end(), header.begin(), header.end());
  for (size_t i = 0; i < data_bytes; ++i) b.push_back(uint8_t(i));
  return b;
}
SafetensorsStore parse_st(const std::vector<uint8_t>& b) { return SafetensorsStore::parse(mem(b, "bad.safetensors")); }

// A little GGUF writer for hand-made files.
struct GgufWriter {
  std::vector<uint8_t> b;
  void u8(uint8_t v) { b.push_back(v); }
  void u32(uint32_t v) { for (int i = 0; i < 4; ++i) b.push_back(uint8_t(v >> (8 * i))); }
  void u64(uint64_t v) { for (int i = 0; i < 8; ++i) b.push_back(uint8_t(v >> (8 * i))); }
  void f32(float f) { uint32_t u; std::memcpy(&u, &f, 4); u32(u); }
  void str(const std::string& s) { u64(s.size()); b.insert(b.end(), s.begin(), s.end()); }
  void header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    b = {'G', 'G', 'U', 'F'};
    u32(version);
    u64(n_tensors);
    u64(n_kv);
  }
  void kv_u32(const std::string& k, uint32_t v) { str(k); u32(4); u32(v); }
  void kv_str(const std::string& k, const std::string& v) { str(k); u32(8); str(v); }
  // ne in ggml order (innermost first).
  void tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name);
    u32(uint32_t(ne.size()));
    for (uint64_t d : ne) u64(d);
    u32(type);
    u64(offset);
  }
  void pad(size_t align = 32) { while (b.size() % align) b.push_back(0); }
  void data(size_t n, uint8_t fill = 0) { b.insert(b.end(), n, fill); }
};
GgufFile parse_gguf(const std::vector<uint8_t>& b) { return GgufFile::parse(mem(b, "bad.gguf")); }

// A valid two-tensor GGUF: a [3,8] f32 "a" and a [32] f16 "b".
std::vector<uint8_t> good_gguf() {
  GgufWriter w;
  w.header(2, 2);
  w.kv_str("general.architecture", "llama");
  w.kv_u32("llama.block_count", 7);
  w.tensor("a", {8, 3}, 0, 0);
  w.tensor("b", {32}, 1, 96);
  w.pad();
  w.data(96 + 64, 1);
  return w.b;
}

}  // namespace

// ------------------------------------------------------------------ JSON

TEST(json_values) {
  std::string s = R"({"a": [1, -2, 3.5, 1e3, true, false, null], "s": "x\"\\\/\b\f\n\r\tq\u00e9\ud83d\ude00",
                     "big": 9007199254740993, "min": -9223372036854775808, "huge": 18446744073709551616,
                     "nested": {"k": {}} , "e": []})";
  JsonValue v = parse_json(s.data(), s.size(), "t.json");
  EXPECT(v.is_object());
  EXPECT(v.size() == 7);
  const JsonValue* a = v.find("a");
  EXPECT(a && a->is_array() && a->size() == 7);
  EXPECT(a->items()[0].is_int() && a->items()[0].as_int() == 1);
  EXPECT(a->items()[1].as_int() == -2);
  EXPECT(a->items()[2].type() == JsonValue::Type::Double && a->items()[2].as_double() == 3.5);
  EXPECT(a->items()[3].type() == JsonValue::Type::Double && a->items()[3].as_double() == 1000.0);
  EXPECT(a->items()[4].is_bool() && a->items()[4].as_bool());
  EXPECT(a->items()[6].is_null());
  EXPECT(v.find("s")->as_string() == "x\"\\/\b\f\n\r\tq\xc3\xa9\xf0\x9f\x98\x80");
  EXPECT(v.find("big")->is_int() && v.find("big")->as_int() == 9007199254740993LL);  // exact, not rounded
  EXPECT(v.find("min")->is_int() && v.find("min")->as_int() == INT64_MIN);
  EXPECT(v.find("huge")->type() == JsonValue::Type::Double);
  EXPECT(v.find("nested")->find("k")->is_object());
  EXPECT(v.find("missing") == nullptr);
  EXPECT(v.members()[0].first == "a" && v.members()[6].first == "e");  // file order kept
  std::string raw = "\"caf\xc3\xa9 \xe2\x82\xac\"";
  EXPECT(parse_json(raw.data(), raw.size(), "t").as_string() == "caf\xc3\xa9 \xe2\x82\xac");
}

TEST(json_depth_limit) {
  std::string ok(size_t(kJsonMaxDepth), '['), deep(size_t(kJsonMaxDepth) + 1, '[');
  ok += std::string(size_t(kJsonMaxDepth), ']');
  deep += std::string(size_t(kJsonMaxDepth) + 1, ']');
  EXPECT(parse_json(ok.data(), ok.size(), "t").is_array());
  EXPECT_THROWS_MSG(parse_json(deep.data(), deep.size(), "t"), ErrorCode::MalformedFile, "nesting deeper");
  // A value budget bounds memory on hostile inputs.
  std::string many = "[";
  for (size_t i = 0; i < kJsonMaxValues; ++i) many += "0,";
  many += "0]";
  EXPECT_THROWS_MSG(parse_json(many.data(), many.size(), "t"), ErrorCode::MalformedFile, "values");
  std::string very_deep(100000, '[');  // must not overflow the stack
  EXPECT_THROWS(parse_json(very_deep.data(), very_deep.size(), "t"), ErrorCode::MalformedFile);
}

TEST(json_errors) {
  struct Case { std::string text; const char* msg; };
  const Case cases[] = {
      {"", "unexpected end of input at byte 0"},
      {"{", "unexpected end"},
      {"{\"a\":1,}", "expected a string key at byte 7"},
      {"[1,]", "unexpected character"},
      {"[1 2]", "expected ',' or ']' at byte 3"},
      {"{\"a\" 1}", "expected ':'"},
      {"{\"a\":1,\"a\":2}", "duplicate key \"a\" at byte 7"},
      {"01", "unexpected trailing data at byte 1"},
      {"1.", "no digits after '.'"},
      {"1e", "no digits in exponent"},
      {"-", "invalid number"},
      {"+1", "unexpected character '+'"},
      {"NaN", "unexpected character 'N'"},
      {"1e999", "number out of range"},
      {"tru", "invalid literal at byte 0"},
      {"\"abc", "unterminated string at byte 0"},
      {"\"a\x01\"", "unescaped control character in string at byte 2"},
      {"\"\\x\"", "invalid escape at byte 1"},
      {"\"\\u12zz\"", "invalid hex digit"},
      {"\"\\u123", "truncated \\u escape"},
      {"\"\\ud800\"", "unpaired high surrogate"},
      {"\"\\udc00\"", "unpaired low surrogate"},
      {"\"\\ud800\\u0041\"", "invalid low surrogate"},
      {"\"\xff\"", "invalid UTF-8 byte at byte 1"},
      {"\"\xc3", "truncated UTF-8"},
      {"\"\xc3\"", "invalid UTF-8 continuation byte at byte 2"},
      {"\"\xc0\xaf\"", "invalid UTF-8 byte"},          // overlong
      {"\"\xed\xa0\x80\"", "invalid UTF-8 sequence"},  // encoded surrogate
      {"[1] x", "unexpected trailing data at byte 4"},
  };
  for (const auto& c : cases) EXPECT_THROWS_MSG(parse_json(c.text.data(), c.text.size(), "cfg.json"), ErrorCode::MalformedFile, c.msg);
  // The source name is in the message and in Error::file().
  try {
    parse_json("x", 1, "named.json");
    EXPECT(false);
  } catch (const Error& e) {
    EXPECT(e.file() == "named.json");
  }
  EXPECT(parse_json(" 1e-400 ", 8, "t").as_double() == 0.0);  // underflow is 0, not an error
}

// ------------------------------------------------------------------ MappedFile

#if !defined(_WIN32)
// A FIFO named like a model must be refused before any read: a blocking open would wait forever
// for a writer (issue 9). Here the test itself would hang without the fix, so ctest's timeout
// and the alarm below turn that into a failure.
TEST(mapped_file_refuses_fifo_without_blocking) {
  TempDir tmp;
  const std::string fifo = tmp.file("model.gguf");
  EXPECT(mkfifo(fifo.c_str(), 0600) == 0);
  alarm(20);  // a hang is a failure (SIGALRM kills the test), not a stuck CI job
  EXPECT_THROWS_MSG(MappedFile::open(fifo), ErrorCode::NotRegularFile, "FIFO");
  EXPECT_THROWS_MSG(GgufFile::open(fifo), ErrorCode::NotRegularFile, "FIFO");
  EXPECT_THROWS_MSG(SafetensorsStore::open(fifo), ErrorCode::NotRegularFile, "FIFO");
  EXPECT_THROWS_MSG(MappedFile::open("/dev/null"), ErrorCode::NotRegularFile, "character device");
  alarm(0);
}
#endif

TEST(mapped_file_basics) {
  TempDir tmp;
  EXPECT_THROWS_MSG(MappedFile::open(tmp.file("nope.bin")), ErrorCode::FileNotFound, "nope.bin");
  EXPECT_THROWS_MSG(MappedFile::open(tmp.path.string()), ErrorCode::NotRegularFile, "directory");
  write_file(tmp.file("empty"), {});
  auto e = MappedFile::open(tmp.file("empty"));
  EXPECT(e->size() == 0 && e->data() != nullptr);
  write_file(tmp.file("three"), {1, 2, 3});
  auto f = MappedFile::open(tmp.file("three"));
  EXPECT(f->size() == 3 && f->data()[2] == 3 && f->is_mapped());
  EXPECT(f->path() == tmp.file("three"));
  // One mapping per file while it lives (two models loaded from one file share their weights and
  // the backend's copies of them); a file replaced since (another inode) is mapped anew.
  auto again = MappedFile::open(tmp.file("three"));
  EXPECT(again == f);
  write_file(tmp.file("three.new"), {4, 5, 6});
  fs::rename(tmp.file("three.new"), tmp.file("three"));
  auto replaced = MappedFile::open(tmp.file("three"));
  EXPECT(replaced != f && replaced->data()[0] == 4 && f->data()[0] == 1);
  auto m = MappedFile::from_bytes("abc", 3, "buf");
  EXPECT(m->size() == 3 && m->data()[1] == 'b' && !m->is_mapped() && m->path() == "buf");
  // Empty inputs are typed errors for every format.
  EXPECT_THROWS_MSG(SafetensorsStore::open(tmp.file("empty")), ErrorCode::MalformedFile, "too short");
  EXPECT_THROWS_MSG(GgufFile::open(tmp.file("empty")), ErrorCode::MalformedFile, "bad magic");
  EXPECT_THROWS_MSG(load_hf_config(tmp.file("empty")), ErrorCode::MalformedFile, "unexpected end");
  EXPECT_THROWS_MSG(SafetensorsStore::open(tmp.file("missing.safetensors")), ErrorCode::FileNotFound, "missing.safetensors");
  EXPECT_THROWS_MSG(GgufFile::open(tmp.file("missing.gguf")), ErrorCode::FileNotFound, "missing.gguf");
  EXPECT_THROWS_MSG(load_hf_config(tmp.file("missing.json")), ErrorCode::FileNotFound, "missing.json");
}

// ------------------------------------------------------------------ safetensors: real files

TEST(safetensors_stories260k) {
  std::string sd = shared_dir();
  if (sd.empty()) return;
  std::string p = sd + "/models/stories260K/hf/model.safetensors";
  std::shared_ptr<MappedFile> keep;
  const uint8_t* emb_data = nullptr;
  float first = 0;
  {
    SafetensorsStore st = SafetensorsStore::open(p);
    EXPECT(st.format() == "safetensors" && !st.sharded());
    EXPECT(st.size() == 48);
    const TensorInfo& emb = st.get("model.embed_tokens.weight");
    EXPECT(emb.supported && emb.dtype == DType::F32 && emb.type_name == "F32");
    EXPECT(emb.shape == std::vector<int64_t>({512, 64}));
    EXPECT(emb.nbytes == 512 * 64 * 4 && emb.numel() == 512 * 64);
    EXPECT(emb.file->path() == p);
    EXPECT(emb.data == emb.file->data() + emb.offset);
    const TensorInfo* down = st.find("model.layers.0.mlp.down_proj.weight");
    EXPECT(down && down->shape == std::vector<int64_t>({64, 172}));
    EXPECT(st.find("model.layers.4.self_attn.k_proj.weight")->shape == std::vector<int64_t>({32, 64}));
    EXPECT(st.find("no.such.tensor") == nullptr);
    EXPECT_THROWS_MSG(st.get("no.such.tensor"), ErrorCode::MalformedFile, "no.such.tensor");
    TensorView v = st.compute_view("model.norm.weight");
    EXPECT(v.ndim == 1 && v.shape[0] == 64 && v.dtype == DType::F32 && v.is_contiguous());
    for (const auto& t : st.tensors()) EXPECT(t.dtype == DType::F32 && t.nbytes == size_t(t.numel()) * 4);
    keep = emb.file;
    emb_data = emb.data;
    std::memcpy(&first, emb.data, 4);
  }
  // The file stays mapped while a reference to it lives.
  float again;
  std::memcpy(&again, emb_data, 4);
  EXPECT(again == first && keep.use_count() == 1);
}

TEST(safetensors_llava_tiny) {
  std::string sd = shared_dir();
  if (sd.empty()) return;
  SafetensorsStore st = SafetensorsStore::open(sd + "/models/llava-tiny-hf");  // a directory
  EXPECT(st.size() == 64);
  EXPECT(st.metadata().count("format") && st.metadata().at("format") == "pt");
  EXPECT(st.get("language_model.model.embed_tokens.weight").shape == std::vector<int64_t>({32064, 64}));
  size_t vision = 0;
  for (const auto& t : st.tensors()) vision += t.name.find("vision_tower") != std::string::npos;
  EXPECT(vision > 0);
}

TEST(safetensors_sharded_index) {
  std::string sd = shared_dir();
  if (sd.empty()) return;
  std::string src_path = sd + "/models/stories260K/hf/model.safetensors";
  SafetensorsStore src = SafetensorsStore::open(src_path);
  TempDir tmp;
  // Split into two shards: tensors [0, 20) and [20, 48), each a valid safetensors file.
  std::string index = "{\"metadata\": {\"total_size\": 1}, \"weight_map\": {";
  bool first_entry = true;
  for (int s = 0; s < 2; ++s) {
    std::string shard = "model-0000" + std::to_string(s + 1) + "-of-00002.safetensors";
    std::string hdr = "{\"__metadata__\":{\"format\":\"pt\"}";
    std::vector<uint8_t> data;
    size_t lo = s == 0 ? 0 : 20, hi = s == 0 ? 20 : src.size();
    for (size_t i = lo; i < hi; ++i) {
      const TensorInfo& t = src.tensors()[i];
      hdr += ",\"" + t.name + "\":{\"dtype\":\"F32\",\"shape\":[";
      for (size_t k = 0; k < t.shape.size(); ++k) hdr += (k ? "," : "") + std::to_string(t.shape[k]);
      hdr += "],\"data_offsets\":[" + std::to_string(data.size()) + "," + std::to_string(data.size() + t.nbytes) + "]}";
      data.insert(data.end(), t.data, t.data + t.nbytes);
      index += std::string(first_entry ? "" : ",") + "\"" + t.name + "\":\"" + shard + "\"";
      first_entry = false;
    }
    hdr += "}";
    while ((8 + hdr.size()) % 8) hdr += ' ';
    std::vector<uint8_t> bytes = make_st(hdr, 0);
    bytes.insert(bytes.end(), data.begin(), data.end());
    write_file(tmp.file(shard), bytes);
  }
  index += "}}";
  write_file(tmp.file("model.safetensors.index.json"), std::vector<uint8_t>(index.begin(), index.end()));

  SafetensorsStore st = SafetensorsStore::open(tmp.path.string());
  EXPECT(st.sharded() && st.size() == 48 && st.files().size() == 2);
  EXPECT(st.metadata().at("total_size") == "1" && st.metadata().at("format") == "pt");
  for (const auto& t : src.tensors()) {
    const TensorInfo* u = st.find(t.name);
    EXPECT(u && u->shape == t.shape && u->nbytes == t.nbytes && std::memcmp(u->data, t.data, t.nbytes) == 0);
  }
  EXPECT(st.get("model.norm.weight").file->path().find("00002-of-00002") != std::string::npos);
  // Opening the index file itself works too.
  EXPECT(SafetensorsStore::open(tmp.file("model.safetensors.index.json")).size() == 48);

  auto idx = [&](const std::string& text) {
    return SafetensorsStore::parse_index(text.data(), text.size(), tmp.file("model.safetensors.index.json"));
  };
  EXPECT_THROWS_MSG(idx("{\"weight_map\": {\"model.norm.weight\": \"model-00001-of-00002.safetensors\"}}"),
                    ErrorCode::MalformedFile, "model.norm.weight");
  EXPECT_THROWS_MSG(idx("{\"weight_map\": {\"x\": \"../model-00001-of-00002.safetensors\"}}"), ErrorCode::MalformedFile,
                    "not a plain file name");
  EXPECT_THROWS_MSG(idx("{\"weight_map\": {\"x\": \"gone.safetensors\"}}"), ErrorCode::FileNotFound, "gone.safetensors");
  EXPECT_THROWS_MSG(idx("{\"weight_map\": {\"x\": 3}}"), ErrorCode::MalformedFile, "must be a string");
  EXPECT_THROWS_MSG(idx("{\"metadata\": {}}"), ErrorCode::MalformedFile, "weight_map");
  EXPECT_THROWS_MSG(idx("{\"weight_map\": {"), ErrorCode::MalformedFile, "invalid JSON");
}

// ------------------------------------------------------------------ safetensors: malformed

TEST(safetensors_malformed) {
  const std::string ok_hdr = R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})";
  {
    SafetensorsStore st = parse_st(make_st(ok_hdr, 24));
    EXPECT(st.size() == 1 && st.get("w").nbytes == 24 && st.get("w").offset == 8 + ok_hdr.size());
  }
  using EC = ErrorCode;
  EXPECT_THROWS_MSG(parse_st({1, 2, 3}), EC::MalformedFile, "too short for the 8-byte");
  // Truncated header: the length says more bytes than the file has.
  {
    auto b = make_st(ok_hdr, 0);
    b.resize(b.size() - 10);
    EXPECT_THROWS_MSG(parse_st(b), EC::MalformedFile, "header length");
  }
  EXPECT_THROWS_MSG(parse_st(make_st(ok_hdr, 24, uint64_t(1) << 40)), EC::MalformedFile, "extends past end of file");
  EXPECT_THROWS_MSG(parse_st(make_st(ok_hdr, 24, UINT64_MAX - 1)), EC::MalformedFile, "extends past end of file");
  EXPECT_THROWS_MSG(parse_st(make_st("{}", 0, 0)), EC::MalformedFile, "too small");
  EXPECT_THROWS_MSG(parse_st(make_st("[1]", 0)), EC::MalformedFile, "does not start with '{'");
  EXPECT_THROWS_MSG(parse_st(make_st("{\"w\":{\"dtype\":\"F32\",}", 0)), EC::MalformedFile, "invalid JSON");
  EXPECT_THROWS_MSG(parse_st(make_st("{\"w\": 5}", 0)), EC::MalformedFile, "tensor w: entry must be an object");
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 4)), EC::MalformedFile, "\"dtype\"");
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 4)), EC::MalformedFile, "\"shape\"");
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"w":{"dtype":"F32","shape":[1]}})", 4)), EC::MalformedFile, "\"data_offsets\"");
  // Bad dtype.
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", 4)), EC::MalformedFile,
                    "tensor w: unknown dtype \"F33\"");
  // Offsets out of range, named with the tensor and the sizes.
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"model.norm.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})", 20)),
                    EC::MalformedFile, "tensor model.norm.weight extends past end of file (ends at 24, data section is 20 bytes)");
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[24,0]}})", 24)), EC::MalformedFile,
                    "out of order");
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", 24)), EC::MalformedFile,
                    "needs 24");
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24,3]}})", 24)), EC::MalformedFile,
                    "2 entries");
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[-4,20]}})", 24)), EC::MalformedFile,
                    "non-negative");
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,1.5]}})", 24)), EC::MalformedFile,
                    "non-negative integers");
  // Negative / non-integer / huge dims.
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"w":{"dtype":"F32","shape":[-2,3],"data_offsets":[0,24]}})", 24)), EC::MalformedFile,
                    "shape entries must be non-negative");
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,24]}})", 24)),
                    EC::MalformedFile, "overflows");
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,24]}})", 24)),
                    EC::MalformedFile, "overflows");
  // A zero dim is a legal empty tensor.
  EXPECT(parse_st(make_st(R"({"w":{"dtype":"F32","shape":[0,9223372036854775807],"data_offsets":[0,0]}})", 0)).get("w").nbytes == 0);
  // Overlap.
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16)),
                    EC::MalformedFile, "overlaps");
  // Duplicate names (a duplicate JSON key).
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8)),
                    EC::MalformedFile, "duplicate key \"a\"");
  // __metadata__ must map strings to strings.
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"__metadata__":{"format":1}})", 0)), EC::MalformedFile, "__metadata__ entry \"format\"");
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"__metadata__":[]})", 0)), EC::MalformedFile, "__metadata__ must be an object");
  // Unsupported dtypes are listed, and only fail when asked for compute.
  {
    SafetensorsStore st = parse_st(make_st(
        R"({"ids":{"dtype":"I64","shape":[3],"data_offsets":[0,24]},"h":{"dtype":"F16","shape":[2],"data_offsets":[24,28]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[28,32]}})",
        32));
    const TensorInfo& ids = st.get("ids");
    EXPECT(!ids.supported && ids.type_name == "I64" && ids.nbytes == 24);
    EXPECT_THROWS_MSG(ids.compute_view(), EC::Unsupported, "I64");
    EXPECT(st.get("h").supported && st.get("h").dtype == DType::F16);
    EXPECT(st.get("b").compute_view().dtype == DType::BF16);
  }
  // Rank above 4 is listed but not a compute tensor.
  EXPECT_THROWS_MSG(parse_st(make_st(R"({"w":{"dtype":"U8","shape":[1,1,1,1,1],"data_offsets":[0,1]}})", 1)).get("w").compute_view(),
                    EC::Unsupported, "");
  // Errors carry the file.
  try {
    parse_st({0});
    EXPECT(false);
  } catch (const Error& e) {
    EXPECT(e.file() == "bad.safetensors" && std::string(e.what()).rfind("bad.safetensors: ", 0) == 0);
  }
}

// ------------------------------------------------------------------ GGUF: real files

TEST(gguf_stories260k) {
  std::string sd = shared_dir();
  if (sd.empty()) return;
  GgufFile g = GgufFile::open(sd + "/models/stories260K/gguf/stories260K.gguf");
  EXPECT(g.format() == "gguf" && g.version() == 3 && g.alignment() == 32);
  EXPECT(g.size() == 48);
  for (const auto& t : g.tensors()) EXPECT(t.supported && t.dtype == DType::F32 && t.type_name == "f32");
  EXPECT(g.data_offset() % 32 == 0);
  EXPECT(g.get_string("general.architecture") == "llama");
  EXPECT(g.get_u32("llama.embedding_length") == 64);
  EXPECT(g.get_u32("llama.block_count") == 5);
  EXPECT(g.get_u32("llama.attention.head_count_kv") == 4);
  EXPECT_NEAR(g.get_f32("llama.attention.layer_norm_rms_epsilon"), 1e-5, 1e-9);
  EXPECT(g.get_u32_or("llama.rope.freq_base_absent", 7) == 7);
  EXPECT(g.get_u32("tokenizer.ggml.seperator_token_id") == 0xFFFFFFFFu);
  EXPECT_THROWS_MSG(g.get_i32("tokenizer.ggml.seperator_token_id"), ErrorCode::MalformedFile, "fits i32");
  EXPECT_THROWS_MSG(g.get_string("llama.block_count"), ErrorCode::MalformedFile, "llama.block_count is u32, expected string");
  EXPECT_THROWS_MSG(g.get_u32("nope"), ErrorCode::MalformedFile, "missing metadata key nope");
  std::vector<std::string> tokens = g.get_string_array("tokenizer.ggml.tokens");
  EXPECT(tokens.size() == 512 && tokens[0] == "<unk>" && tokens[1] == "<s>" && tokens[2] == "</s>");
  EXPECT(g.get_f32_array("tokenizer.ggml.scores").size() == 512);
  std::vector<int32_t> types = g.get_i32_array("tokenizer.ggml.token_type");
  EXPECT(types.size() == 512 && types[0] == 2 && types[1] == 3 && types[3] == 6);
  EXPECT(g.get_array("tokenizer.ggml.tokens").string_at(1) == "<s>");
  // Shapes are outermost-first: ggml ne {64, 512} -> {512, 64}.
  const TensorInfo& emb = g.get("token_embd.weight");
  EXPECT(emb.shape == std::vector<int64_t>({512, 64}));
  EXPECT(g.extras()[0].ne[0] == 64 && g.extras()[0].ne[1] == 512);
  EXPECT(emb.data >= g.file()->data() && emb.data + emb.nbytes <= g.file()->data() + g.file()->size());  // zero copy
  EXPECT(g.get("blk.0.ffn_down.weight").shape == std::vector<int64_t>({64, 172}));
  EXPECT(g.get("blk.0.attn_k.weight").shape == std::vector<int64_t>({32, 64}));

  // Values agree with the safetensors conversion where the layouts coincide.
  SafetensorsStore st = SafetensorsStore::open(sd + "/models/stories260K/hf/model.safetensors");
  const char* pairs[][2] = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"},
      {"blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"},
      {"blk.3.ffn_norm.weight", "model.layers.3.post_attention_layernorm.weight"},
      {"blk.1.attn_v.weight", "model.layers.1.self_attn.v_proj.weight"},
      {"blk.2.attn_output.weight", "model.layers.2.self_attn.o_proj.weight"},
      {"blk.4.ffn_gate.weight", "model.layers.4.mlp.gate_proj.weight"},
      {"blk.4.ffn_down.weight", "model.layers.4.mlp.down_proj.weight"},
      {"blk.4.ffn_up.weight", "model.layers.4.mlp.up_proj.weight"},
  };
  for (auto& pr : pairs) {
    const TensorInfo& a = g.get(pr[0]);
    const TensorInfo& b = st.get(pr[1]);
    EXPECT(a.shape == b.shape);
    EXPECT(a.nbytes == b.nbytes);
    if (a.nbytes == b.nbytes)
      EXPECT_ALL_CLOSE(reinterpret_cast<const float*>(a.data), reinterpret_cast<const float*>(b.data), a.nbytes / 4, 0.0,
                       0.0, std::string(pr[0]) + " vs " + pr[1]);
  }
}

TEST(gguf_vocab_only) {
  std::string sd = shared_dir();
  if (sd.empty()) return;
  GgufFile spm = GgufFile::open(sd + "/tokenizers/llamacpp-vocab-tests/ggml-vocab-llama-spm.gguf");
  EXPECT(spm.size() == 0);
  EXPECT(spm.get_string("tokenizer.ggml.model") == "llama");
  EXPECT(spm.get_string_array("tokenizer.ggml.tokens").size() == 32000);
  EXPECT(spm.get_f32_array("tokenizer.ggml.scores").size() == 32000);
  GgufFile gpt2 = GgufFile::open(sd + "/tokenizers/llamacpp-vocab-tests/ggml-vocab-gpt-2.gguf");
  EXPECT(gpt2.get_string("tokenizer.ggml.model") == "gpt2");
  EXPECT(gpt2.get_string_array("tokenizer.ggml.tokens").size() == 50257);
  EXPECT(gpt2.get_string_array("tokenizer.ggml.merges").size() > 40000);
}

// ------------------------------------------------------------------ GGUF: hand-made and malformed

TEST(gguf_handmade_ok) {
  GgufFile g = parse_gguf(good_gguf());
  EXPECT(g.size() == 2 && g.get_u32("llama.block_count") == 7);
  EXPECT(g.get("a").shape == std::vector<int64_t>({3, 8}) && g.get("a").nbytes == 96);
  EXPECT(g.get("b").dtype == DType::F16 && g.get("b").nbytes == 64 && g.get("b").offset == g.data_offset() + 96);
  // Every metadata type, nested arrays, v2, a custom alignment, and quantised / unsupported types.
  GgufWriter w;
  w.header(4, 16, 2);
  w.str("u8"); w.u32(0); w.u8(200);
  w.str("i8"); w.u32(1); w.u8(0xFE);
  w.str("u16"); w.u32(2); w.u8(0x34); w.u8(0x12);
  w.str("i16"); w.u32(3); w.u8(0xFF); w.u8(0xFF);
  w.str("u32"); w.u32(4); w.u32(70000);
  w.str("i32"); w.u32(5); w.u32(uint32_t(-5));
  w.str("f32"); w.u32(6); w.f32(1.5f);
  w.str("bool"); w.u32(7); w.u8(1);
  w.str("str"); w.u32(8); w.str("hello");
  w.str("u64"); w.u32(10); w.u64(uint64_t(1) << 40);
  w.str("i64"); w.u32(11); w.u64(uint64_t(-7));
  w.str("f64"); w.u32(12); { double d = 2.25; uint64_t u; std::memcpy(&u, &d, 8); w.u64(u); }
  w.str("arr_i16"); w.u32(9); w.u32(3); w.u64(2); w.u8(0xFF); w.u8(0xFF); w.u8(2); w.u8(0);
  w.str("arr_nested"); w.u32(9); w.u32(9); w.u64(2);
  w.u32(4); w.u64(1); w.u32(11);
  w.u32(8); w.u64(2); w.str("x"); w.str("yz");
  w.str("arr_empty"); w.u32(9); w.u32(8); w.u64(0);
  w.kv_u32("general.alignment", 64);
  w.tensor("q8", {64, 2}, 8, 0);         // 2 rows x 2 blocks x 34 = 136 bytes
  w.tensor("q4", {32}, 2, 192);          // 18 bytes
  w.tensor("k4", {256, 1, 1, 1}, 10, 256);  // q2_K (no emollm kernels), 84 bytes
  w.tensor("bf", {2, 2, 2}, 30, 448);       // 16 bytes
  w.pad(64);
  w.data(448 + 16, 7);
  GgufFile h = parse_gguf(w.b);
  EXPECT(h.version() == 2 && h.alignment() == 64 && h.data_offset() % 64 == 0);
  EXPECT(h.get_u32("u8") == 200 && h.get_i32("i8") == -2 && h.get_u32("u16") == 0x1234 && h.get_i32("i16") == -1);
  EXPECT(h.get_u32("u32") == 70000 && h.get_i32("i32") == -5 && h.get_f32("f32") == 1.5f && h.get_bool("bool"));
  EXPECT(h.get_string("str") == "hello" && h.get_u64("u64") == (uint64_t(1) << 40) && h.get_i64("i64") == -7);
  EXPECT(h.get_f64("f64") == 2.25);
  EXPECT_THROWS_MSG(h.get_u32("i8"), ErrorCode::MalformedFile, "non-negative");
  EXPECT_THROWS_MSG(h.get_u32("u64"), ErrorCode::MalformedFile, "fits u32");
  EXPECT(h.get_i32_array("arr_i16") == std::vector<int32_t>({-1, 2}));
  const GgufValue& nested = h.get_array("arr_nested");
  EXPECT(nested.elem_type == GgufType::ARRAY && nested.count == 2 && nested.arrays.size() == 2);
  EXPECT(nested.arrays[0].int_at(0) == 11 && nested.arrays[1].string_at(1) == "yz");
  EXPECT(h.get_string_array("arr_empty").empty());
  EXPECT_THROWS_MSG(h.get_string_array("arr_i16"), ErrorCode::MalformedFile, "array of i16, expected array of string");
  EXPECT(h.get("q8").dtype == DType::Q8_0 && h.get("q8").nbytes == 136 && h.get("q8").shape == std::vector<int64_t>({2, 64}));
  EXPECT(h.get("q4").dtype == DType::Q4_0 && h.get("q4").nbytes == 18);
  EXPECT(!h.get("k4").supported && h.get("k4").type_name == "q2_K" && h.get("k4").nbytes == 84);
  EXPECT(h.get("k4").shape == std::vector<int64_t>({1, 1, 1, 256}));
  EXPECT_THROWS_MSG(h.compute_view("k4"), ErrorCode::Unsupported, "q2_K");
  EXPECT(h.get("bf").dtype == DType::BF16 && h.get("bf").shape == std::vector<int64_t>({2, 2, 2}));
  TensorView v = h.compute_view("q8");
  EXPECT(v.ndim == 2 && v.shape[0] == 2 && v.shape[1] == 64 && v.dtype == DType::Q8_0);
}

TEST(gguf_malformed) {
  using EC = ErrorCode;
  EXPECT_THROWS_MSG(parse_gguf({'G', 'G', 'U'}), EC::MalformedFile, "bad magic");
  EXPECT_THROWS_MSG(parse_gguf({'G', 'G', 'M', 'L', 3, 0, 0, 0}), EC::MalformedFile, "bad magic \"GGML\"");
  {
    GgufWriter w;
    w.header(0, 0, 1);
    EXPECT_THROWS_MSG(parse_gguf(w.b), EC::Unsupported, "version 1");
    w.header(0, 0, 0x03000000);
    EXPECT_THROWS_MSG(parse_gguf(w.b), EC::Unsupported, "big-endian");
  }
  // Truncated header.
  {
    auto b = good_gguf();
    b.resize(12);
    EXPECT_THROWS_MSG(parse_gguf(b), EC::MalformedFile, "truncated file: tensor count");
  }
  {  // Truncated within the metadata and within the tensor infos.
    auto b = good_gguf();
    b.resize(40);
    EXPECT_THROWS(parse_gguf(b), EC::MalformedFile);
    auto c = good_gguf();
    c.resize(c.size() - 160 - 20);
    EXPECT_THROWS(parse_gguf(c), EC::MalformedFile);
  }
  // Huge counts fail at once, before any allocation.
  {
    GgufWriter w;
    w.header(uint64_t(1) << 60, 0);
    EXPECT_THROWS_MSG(parse_gguf(w.b), EC::MalformedFile, "tensor info count 1152921504606846976 cannot fit");
    w.header(0, UINT64_MAX);
    EXPECT_THROWS_MSG(parse_gguf(w.b), EC::MalformedFile, "metadata key/value count");
  }
  {  // An array claiming 2^60 strings.
    GgufWriter w;
    w.header(0, 1);
    w.str("tokenizer.ggml.tokens");
    w.u32(9); w.u32(8); w.u64(uint64_t(1) << 60);
    w.str("a");
    EXPECT_THROWS_MSG(parse_gguf(w.b), EC::MalformedFile, "array of string count 1152921504606846976 cannot fit");
  }
  {  // More nested arrays than the limit, claimed in a file big enough to hold them.
    GgufWriter w;
    w.header(0, 1);
    w.str("k"); w.u32(9); w.u32(9); w.u64(kGgufMaxNestedArrays + 1);
    w.data(size_t(kGgufMaxNestedArrays + 1) * 12);
    EXPECT_THROWS_MSG(parse_gguf(w.b), EC::MalformedFile, "nested arrays");
  }
  {  // An array of u64 whose byte size would overflow.
    GgufWriter w;
    w.header(0, 1);
    w.str("k"); w.u32(9); w.u32(10); w.u64(uint64_t(1) << 62);
    EXPECT_THROWS_MSG(parse_gguf(w.b), EC::MalformedFile, "cannot fit");
  }
  {  // String length past EOF (a key, and a value).
    GgufWriter w;
    w.header(0, 1);
    w.u64(1000); w.data(20, 'k');
    EXPECT_THROWS_MSG(parse_gguf(w.b), EC::MalformedFile, "metadata key length 1000 extends past end of file");
    GgufWriter v;
    v.header(0, 1);
    v.str("k"); v.u32(8); v.u64(UINT64_MAX); v.b.push_back('x');
    EXPECT_THROWS_MSG(parse_gguf(v.b), EC::MalformedFile, "string length 18446744073709551615 extends past end of file");
  }
  {  // Unknown value type; bool not 0/1; duplicate key; nesting too deep.
    GgufWriter w;
    w.header(0, 1);
    w.str("k"); w.u32(13); w.u32(0);
    EXPECT_THROWS_MSG(parse_gguf(w.b), EC::MalformedFile, "unknown metadata value type 13");
    GgufWriter b;
    b.header(0, 1);
    b.str("k"); b.u32(7); b.u8(2);
    EXPECT_THROWS_MSG(parse_gguf(b.b), EC::MalformedFile, "bool value 2");
    GgufWriter d;
    d.header(0, 2);
    d.kv_u32("k", 1);
    d.kv_u32("k", 2);
    EXPECT_THROWS_MSG(parse_gguf(d.b), EC::MalformedFile, "duplicate metadata key (metadata key k)");
    GgufWriter n;
    n.header(0, 1);
    n.str("k");
    n.u32(9);
    for (int i = 0; i < 20; ++i) { n.u32(9); n.u64(1); }
    n.u32(4); n.u64(0);
    EXPECT_THROWS_MSG(parse_gguf(n.b), EC::MalformedFile, "nested deeper");
  }
  // align < 0: no general.alignment key.
  auto one_tensor = [](std::vector<uint64_t> ne, uint32_t type, uint64_t offset, size_t data_bytes, int64_t align = -1,
                       bool align_as_string = false) {
    GgufWriter w;
    w.header(1, align >= 0 || align_as_string ? 1 : 0);
    if (align_as_string) w.kv_str("general.alignment", "32");
    else if (align >= 0) w.kv_u32("general.alignment", uint32_t(align));
    w.tensor("t", ne, type, offset);
    w.pad(align > 0 && (align & (align - 1)) == 0 ? size_t(align) : 32);
    w.data(data_bytes);
    return w.b;
  };
  EXPECT(parse_gguf(one_tensor({4, 2}, 0, 0, 32)).get("t").nbytes == 32);
  // n_dims 5.
  EXPECT_THROWS_MSG(parse_gguf(one_tensor({1, 1, 1, 1, 1}, 0, 0, 32)), EC::MalformedFile, "n_dims 5 exceeds the maximum of 4 (tensor t)");
  // Misaligned offset.
  EXPECT_THROWS_MSG(parse_gguf(one_tensor({4}, 0, 4, 64)), EC::MalformedFile, "tensor t offset 4 is not aligned to 32");
  // Tensor past EOF.
  EXPECT_THROWS_MSG(parse_gguf(one_tensor({4, 2}, 0, 0, 31)), EC::MalformedFile,
                    "tensor t extends past end of file (offset 0 + 32 bytes, data section is 31 bytes)");
  EXPECT_THROWS_MSG(parse_gguf(one_tensor({4, 2}, 0, uint64_t(1) << 63, 32)), EC::MalformedFile, "extends past end of file");
  // Bad alignment values.
  EXPECT_THROWS_MSG(parse_gguf(one_tensor({4}, 0, 0, 16, 3)), EC::MalformedFile, "general.alignment must be a power of two");
  EXPECT_THROWS_MSG(parse_gguf(one_tensor({4}, 0, 0, 16, 0)), EC::MalformedFile, "got 0");
  EXPECT_THROWS_MSG(parse_gguf(one_tensor({4}, 0, 0, 16, -1, true)), EC::MalformedFile, "got string");
  EXPECT(parse_gguf(one_tensor({4}, 0, 0, 16, 16)).alignment() == 16);
  // Unknown ggml type; block size mismatch; negative / overflowing dims.
  EXPECT_THROWS_MSG(parse_gguf(one_tensor({4}, 99, 0, 16)), EC::MalformedFile, "unknown ggml type 99");
  EXPECT_THROWS_MSG(parse_gguf(one_tensor({4}, 4, 0, 16)), EC::MalformedFile, "unknown ggml type 4");
  EXPECT_THROWS_MSG(parse_gguf(one_tensor({33}, 8, 0, 64)), EC::MalformedFile, "not a multiple of the q8_0 block size 32");
  EXPECT_THROWS_MSG(parse_gguf(one_tensor({UINT64_MAX}, 0, 0, 16)), EC::MalformedFile, "negative or too large");
  EXPECT_THROWS_MSG(parse_gguf(one_tensor({uint64_t(1) << 40, uint64_t(1) << 40}, 0, 0, 16)), EC::MalformedFile, "overflows");
  // Data section past EOF (no padding written at all).
  {
    GgufWriter w;
    w.header(1, 0);
    w.tensor("t", {0}, 0, 0);
    EXPECT_THROWS_MSG(parse_gguf(w.b), EC::MalformedFile, "data section would start at");
  }
  // Duplicate tensor names; overlapping tensors.
  {
    GgufWriter w;
    w.header(2, 0);
    w.tensor("t", {8}, 0, 0);
    w.tensor("t", {8}, 0, 32);
    w.pad();
    w.data(64);
    EXPECT_THROWS_MSG(parse_gguf(w.b), EC::MalformedFile, "duplicate tensor name t");
    GgufWriter o;
    o.header(2, 0);
    o.tensor("a", {16}, 0, 0);
    o.tensor("b", {8}, 0, 32);
    o.pad();
    o.data(64);
    EXPECT_THROWS_MSG(parse_gguf(o.b), EC::MalformedFile, "overlaps");
  }
  // The file is named in errors.
  try {
    parse_gguf({'x'});
    EXPECT(false);
  } catch (const Error& e) {
    EXPECT(e.file() == "bad.gguf");
  }
}

// ------------------------------------------------------------------ config.json

TEST(hf_config_real) {
  std::string sd = shared_dir();
  if (sd.empty()) return;
  HfConfig s = load_hf_config(sd + "/models/stories260K/hf/config.json");
  EXPECT(s.model_type == "llama" && s.llama && !s.llava && !s.clip);
  EXPECT(s.architectures == std::vector<std::string>({"LlamaForCausalLM"}));
  const LlamaConfig& l = *s.llama;
  EXPECT(l.hidden_size == 64 && l.intermediate_size == 172 && l.num_hidden_layers == 5);
  EXPECT(l.num_attention_heads == 8 && l.num_key_value_heads == 4 && l.head_dim == 8);
  EXPECT(l.vocab_size == 512 && l.max_position_embeddings == 512 && !l.tie_word_embeddings);
  EXPECT(l.rms_norm_eps == 1e-5 && l.rope_theta == 10000.0 && l.rope_scaling.rope_type == "default");
  EXPECT(l.bos_token_id == std::vector<int64_t>({1}) && l.eos_token_id == std::vector<int64_t>({2}) && l.pad_token_id.empty());
  EXPECT(l.torch_dtype == "float32" && l.hidden_act == "silu");

  HfConfig t = load_hf_config(sd + "/models/llava-tiny-hf");  // a directory
  EXPECT(t.model_type == "llava" && t.llava);
  const LlavaConfig& v = *t.llava;
  EXPECT(v.text_config.hidden_size == 64 && v.text_config.head_dim == 16 && v.text_config.num_key_value_heads == 2);
  EXPECT(v.text_config.vocab_size == 32064 && v.text_config.intermediate_size == 128 && v.text_config.num_hidden_layers == 2);
  EXPECT(v.text_config.rope_theta == 10000.0 && v.text_config.max_position_embeddings == 256);  // from rope_parameters
  EXPECT(v.text_config.pad_token_id == std::vector<int64_t>({32001}));
  EXPECT(v.vision_config.hidden_size == 32 && v.vision_config.image_size == 42 && v.vision_config.patch_size == 14);
  EXPECT(v.vision_config.num_patches() == 9 && v.vision_config.hidden_act == "quick_gelu" && v.vision_config.num_hidden_layers == 2);
  EXPECT(v.image_token_index == 32000 && v.image_seq_length == 9 && v.multimodal_projector_bias);
  EXPECT(v.vision_feature_layer == std::vector<int64_t>({-2}) && !v.vision_feature_layer_is_list);
  EXPECT(v.vision_feature_select_strategy == "default" && v.projector_hidden_act == "gelu");
  EXPECT(v.torch_dtype == "float32");

  HfConfig r = load_hf_config(sd + "/tokenizers/llava-1.5-7b-hf/config.json");
  const LlavaConfig& q = *r.llava;
  // text_config omits most fields: LlamaConfig defaults (vicuna-7b).
  EXPECT(q.text_config.hidden_size == 4096 && q.text_config.intermediate_size == 11008);
  EXPECT(q.text_config.num_hidden_layers == 32 && q.text_config.num_attention_heads == 32);
  EXPECT(q.text_config.num_key_value_heads == 32 && q.text_config.head_dim == 128);
  EXPECT(q.text_config.max_position_embeddings == 4096 && q.text_config.rms_norm_eps == 1e-5);
  EXPECT(q.text_config.vocab_size == 32064 && q.text_config.torch_dtype == "float16");
  EXPECT(q.vision_config.hidden_size == 1024 && q.vision_config.image_size == 336 && q.vision_config.num_patches() == 576);
  EXPECT(q.vision_config.num_hidden_layers == 24 && q.vision_config.projection_dim == 768);
  EXPECT(q.vision_config.hidden_act == "quick_gelu" && q.vision_config.layer_norm_eps == 1e-5);
  EXPECT(q.image_seq_length == 576 && q.image_token_index == 32000 && q.pad_token_id == std::vector<int64_t>({32001}));
}

TEST(hf_config_parsing) {
  auto cfg = [](const std::string& s) { return parse_hf_config_text(s.data(), s.size(), "config.json"); };
  using EC = ErrorCode;
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "gpt2"})"), EC::BadConfig, "unknown model_type \"gpt2\"");
  EXPECT_THROWS_MSG(cfg(R"({"hidden_size": 4})"), EC::BadConfig, "no model_type");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": 3})"), EC::BadConfig, "model_type must be a string");
  EXPECT_THROWS_MSG(cfg(R"([1])"), EC::BadConfig, "must be a JSON object");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llama",})"), EC::MalformedFile, "invalid JSON");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llama", "hidden_size": "64"})"), EC::BadConfig, "config field hidden_size must be an integer, got string");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llama", "hidden_size": 64.5})"), EC::BadConfig, "hidden_size must be an integer");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llama", "num_hidden_layers": -1})"), EC::BadConfig, "num_hidden_layers must be a positive");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llama", "rms_norm_eps": "x"})"), EC::BadConfig, "rms_norm_eps must be a number");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llama", "tie_word_embeddings": 1})"), EC::BadConfig, "tie_word_embeddings must be true or false");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llama", "num_attention_heads": 8, "num_key_value_heads": 3})"), EC::BadConfig, "num_key_value_heads");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llama", "hidden_size": 100, "num_attention_heads": 8})"), EC::BadConfig, "hidden_size");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llama", "eos_token_id": "2"})"), EC::BadConfig, "eos_token_id must be an integer or a list");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llama", "rope_scaling": {"rope_type": "weird", "factor": 2}})"), EC::BadConfig, "unknown rope type \"weird\"");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llama", "rope_scaling": {"type": "linear"}})"), EC::BadConfig, "rope_scaling.factor is required");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llama", "rope_scaling": 5})"), EC::BadConfig, "rope_scaling must be an object");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llava", "text_config": {"hidden_size": "x"}})"), EC::BadConfig, "text_config.hidden_size");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llava", "text_config": {"model_type": "gpt2"}})"), EC::BadConfig, "text_config.model_type");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llava", "vision_config": {"model_type": "siglip_vision_model"}})"), EC::BadConfig, "siglip_vision_model");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llava", "vision_config": {"patch_size": true}})"), EC::BadConfig, "vision_config.patch_size");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llava", "vision_feature_layer": "last"})"), EC::BadConfig, "vision_feature_layer");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llava", "vision_feature_layer": -40})"), EC::BadConfig, "vision_feature_layer");
  EXPECT_THROWS_MSG(cfg(R"({"model_type": "llava", "vision_feature_select_strategy": "cls"})"), EC::BadConfig, "vision_feature_select_strategy");

  HfConfig a = cfg(R"({"model_type": "llama", "hidden_size": 2048, "num_attention_heads": 32, "num_key_value_heads": 8,
      "rope_theta": 500000.0, "eos_token_id": [128001, 128008, 128009], "pad_token_id": null, "head_dim": null,
      "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                       "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "tie_word_embeddings": true})");
  const LlamaConfig& l = *a.llama;
  EXPECT(l.head_dim == 64 && l.num_key_value_heads == 8 && l.rope_theta == 500000.0 && l.tie_word_embeddings);
  EXPECT(l.eos_token_id == std::vector<int64_t>({128001, 128008, 128009}) && l.pad_token_id.empty());
  EXPECT(l.rope_scaling.rope_type == "llama3" && l.rope_scaling.factor == 32.0 &&
         l.rope_scaling.original_max_position_embeddings == 8192 && l.rope_scaling.high_freq_factor == 4.0);
  // Defaults of an empty llama config are transformers' LlamaConfig().
  HfConfig d = cfg(R"({"model_type": "llama"})");
  EXPECT(d.llama->hidden_size == 4096 && d.llama->num_key_value_heads == 32 && d.llama->head_dim == 128 &&
         d.llama->rms_norm_eps == 1e-6 && d.llama->max_position_embeddings == 2048 && d.llama->vocab_size == 32000);
  HfConfig lin = cfg(R"({"model_type": "llama", "rope_scaling": {"type": "linear", "factor": 4}})");
  EXPECT(lin.llama->rope_scaling.rope_type == "linear" && lin.llama->rope_scaling.factor == 4.0);
  HfConfig m = cfg(R"({"model_type": "mistral"})");
  EXPECT(m.llama && m.llama->model_type == "mistral" && m.llama->num_key_value_heads == 8 && m.llama->sliding_window == 4096 &&
         m.llama->intermediate_size == 14336);
  HfConfig c = cfg(R"({"model_type": "clip_vision_model", "hidden_size": 64, "num_attention_heads": 4})");
  EXPECT(c.clip && c.clip->hidden_size == 64 && c.clip->head_dim() == 16 && c.clip->image_size == 224 && c.clip->patch_size == 32);
  HfConfig lv = cfg(R"({"model_type": "llava", "vision_feature_layer": [-2, -5, 3], "image_token_id": 7})");
  EXPECT(lv.llava->vision_feature_layer == std::vector<int64_t>({-2, -5, 3}) && lv.llava->vision_feature_layer_is_list);
  EXPECT(lv.llava->image_token_index == 7 && lv.llava->text_config.hidden_size == 4096 && lv.llava->vision_config.image_size == 336);
}
