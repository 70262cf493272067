// The LLaMA-architecture decoder (LLaMA, LLaMA-2/3, Vicuna, Mistral without sliding window, any
// GQA variant): one internal model struct loaded from either a Hugging Face folder
// (config.json + safetensors, single or sharded) or a GGUF file (general.architecture "llama"),
// and a context that evaluates one token sequence with a KV cache.
//
// Weights are used in place from the mmap (f32, f16, bf16, q8_0, q4_0) on backends that use host
// memory (the CPU); only small 1-D tensors (norm weights, biases) that are not f32 are converted
// once at load. On a device backend (!uses_host_memory()) every weight is uploaded once at load
// (both through core/backend_weights.h, as the vision towers and heads). The forward pass is in
// llama.cpp (llama2.c style: one readable function) and calls only the Backend interface.
//
// RoPE layout: Hugging Face checkpoints store q/k for rotate-half RoPE; llama.cpp's converters
// permute q/k so GGUF llama uses the interleaved layout (pairs 2i, 2i+1).
//
// Threading: a LlamaModel is immutable after load and may be shared by any number of contexts
// on any threads. Its backend's compute pool serialises kernel calls made from different
// threads (ThreadPool::run), so two contexts may eval concurrently; they interleave kernel by
// kernel. A LlamaContext is used by one thread at a time.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/arena.h"
#include "core/backend.h"
#include "core/backend_weights.h"
#include "core/runtime.h"
#include "base/dtype.h"
#include "loaders/hf_config.h"
#include "loaders/weight_store.h"

namespace emollm {

struct LlamaHparams {
  int64_t n_vocab = 0;
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  int64_t n_ff = 0;
  int64_t n_ctx_train = 0;
  float rms_eps = 1e-5f;
  float rope_theta = 10000.0f;
  int64_t rope_dim = 0;             // dims rotated per head (0 = head_dim)
  float rope_freq_scale = 1.0f;     // linear scaling: 1 / factor
  std::string rope_scaling = "none";  // "none", "linear", "llama3", "freq-factors" (GGUF rope_freqs)
  RopeLayout rope_layout = RopeLayout::RotateHalf;
  int64_t sliding_window = 0;       // mistral; contexts larger than it are refused
  int32_t bos_id = -1;              // -1 when unknown
  std::vector<int32_t> eos_ids;     // empty when unknown
  // Qwen2-VL M-RoPE: frequency bands (in pairs, summing to rope_dim / 2) rotated by the temporal,
  // height and width components of each token's 3-D position. Empty = plain RoPE.
  std::vector<int64_t> mrope_section;
};

// A weight matrix of `rows` x `cols` (N x K in gemm terms). `data` is in the backend's memory
// (the mmap itself on the CPU, the uploaded copy on a device); `host` is always the mmap.
struct LlamaWeight {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  const void* host = nullptr;  // set by the LLaMA loader
};

struct LlamaLayer {
  const float* attn_norm = nullptr;
  LlamaWeight wq, wk, wv, wo;
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr, *bo = nullptr;  // attention_bias
  const float* ffn_norm = nullptr;
  LlamaWeight w_gate, w_up, w_down;
  const float *b_gate = nullptr, *b_up = nullptr, *b_down = nullptr;      // mlp_bias
};

// The runtime configuration of one model (core/runtime.h): unset fields take the runtime's
// defaults (configure()); the backend comes from Runtime::instance(), shared with every model
// that asks for the same device and thread count.
struct LlamaLoadOptions {
  int threads = 0;  // compute threads; 0 = the runtime default (1 for models under 8 MiB)
  std::optional<DeviceKind> device;  // unset = the runtime default device
};

class LlamaModel {
 public:
  // `path`: a Hugging Face folder (or its config.json), or a .gguf file.
  // Errors: FileNotFound; Unsupported naming an architecture / rope scaling / activation we do
  // not run; MalformedFile naming a missing tensor or a shape that contradicts the hparams;
  // BadConfig from config.json.
  static std::shared_ptr<LlamaModel> load(const std::string& path, const LlamaLoadOptions& opts = {});

  // The decoder of a larger checkpoint (e.g. LLaVA's language model) in Hugging Face naming:
  // tensors `<model_prefix>embed_tokens.weight`, `<model_prefix>layers.N....`, `<model_prefix>norm.weight`
  // and `lm_head` (unless tied). model_prefix "model." and lm_head "lm_head.weight" are the plain
  // LlamaForCausalLM names; LLaVA uses "language_model.model." + "language_model.lm_head.weight"
  // (transformers < 4.52) or "model.language_model." + "lm_head.weight". `store` is shared (the
  // model keeps it alive); `config_file` names the config in errors. Errors as load().
  static std::shared_ptr<LlamaModel> from_hf_store(std::shared_ptr<WeightStore> store, const LlamaConfig& config,
                                                   const std::string& model_prefix, const std::string& lm_head,
                                                   const std::string& config_file, const LlamaLoadOptions& opts = {});

  const LlamaHparams& hparams() const { return hp_; }
  const std::string& format() const { return format_; }  // "safetensors" or "gguf"
  const std::string& arch() const { return arch_; }      // "llama" / "mistral"
  const std::string& source() const { return source_; }
  Backend& backend() const { return *backend_; }
  const WeightStore& store() const { return *store_; }
  // Where the weights were placed (device_bytes() 0 on the CPU, which computes on the mmap).
  const BackendWeights& placed() const { return weights_; }
  bool is_eos(int32_t id) const;
  // Harmless findings of the load, e.g. tensors of the decoder's namespace the model does not use
  // (the addon shows them as info().warnings). Layers beyond the config's count are not harmless:
  // they fail the load (a config listing fewer layers than the checkpoint computes garbage).
  const std::vector<std::string>& warnings() const { return warnings_; }
  // Bytes of the decoder's matrices the backend keeps in a layout of its own (the CPU's repacked
  // q4_0 / q8_0, core/backend_weights.h place_gemm_matrix; 0 when none, e.g. EMOLLM_REPACK=0).
  size_t packed_weight_bytes() const { return weights_.packed_bytes(); }
  // The decoder's RoPE (plain, not M-RoPE) and its causal self-attention over packed q rows
  // [n_q, n_head * head_dim] and k / v rows [n_kv, n_head_kv * head_dim], the queries at
  // positions q_pos0.. : shared by the forward pass and the trainer (native/train).
  RopeParams rope_params() const;
  AttentionParams causal_attention_params(int64_t n_q, int64_t n_kv, int64_t q_pos0) const;

  // ---- weights (public for the forward pass in llama.cpp; read-only)
  LlamaWeight tok_embd;
  std::vector<LlamaLayer> layers;
  const float* output_norm = nullptr;
  LlamaWeight output;  // == tok_embd when tied
  bool tied_output = false;
  std::vector<float> rope_inv_freq;  // rope_dim/2 entries when rope_scaling needs them, else empty
  // M-RoPE: per section, the rope_dim/2 inverse frequencies with the other sections' bands zeroed
  // (a zero frequency rotates by 0), so three passes of the plain rope kernel make one M-RoPE.
  std::vector<std::vector<float>> mrope_inv_freq;

  LlamaModel() = default;
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

 private:
  friend struct LlamaLoader;
  LlamaHparams hp_;
  std::string format_, arch_, source_;
  std::shared_ptr<WeightStore> store_;               // keeps the mapped files alive
  std::vector<std::vector<float>> converted_;        // f32 copies of small non-f32 tensors
  std::shared_ptr<Backend> backend_;  // from the Runtime, shared by models with the same options
  // The weights on the backend: device copies, or on the CPU the mmap itself plus the packed
  // copies of the decoder matrices (declared after backend_: freed before it).
  BackendWeights weights_;
  std::vector<std::string> warnings_;
};

struct LlamaContextOptions {
  int64_t n_ctx = 0;    // KV cache positions per sequence; 0 = min(n_ctx_train, 4096)
  int64_t n_batch = 0;  // most token rows per forward pass (prefill chunk); 0 = min(n_ctx * n_seq, 512), at least n_seq
  int64_t n_seq = 1;    // sequences the context holds; each may grow to n_ctx positions
  // Paged KV cache: positions per block (a multiple of 16; 0 = 64) and the pool's size in
  // positions (0 = n_seq x n_ctx rounded up to whole blocks per sequence, what the slot layout
  // held, so every sequence can always fill its context).
  int64_t kv_block_size = 0;
  int64_t kv_positions = 0;
  // Element type of the KV cache: F32 (default), F16 or BF16 (llama.cpp's default cache is f16).
  // The new keys and values are rounded once, to nearest even, when written into the cache;
  // attention reads them widened to f32. Half the cache's bytes and its memory traffic. A backend
  // without it (Backend::supports_kv_dtype, Backend::convert) refuses with Error(Unsupported);
  // other types are InvalidArgument.
  DType kv_type = DType::F32;
  // Fault in the whole context (KV block pool and activation buffers) at creation
  // (Backend::prefault), so no request pays a first-touch page fault: llama.cpp clears its cache
  // when it creates a context, i.e. the same cost at the same time. It makes the context's whole
  // size resident at once (memory_bytes(): a 7B f32 cache is 512 MiB per 1024 positions): turn it
  // off for a large n_ctx that is rarely filled, so the pages come as positions are written.
  // EMOLLM_PREFAULT=0 turns it off for every context (A/B).
  bool prefault = true;
  // Decode attention on a bf16 KV cache with bf16 dot products (AttentionParams::bf16_products on
  // the attention of one-token segments only: every decode step, and a prompt chunk only when it
  // is a single token, e.g. a chunked prompt's last; longer chunks keep the exact path): q rounded to bf16 for Q K^T and the
  // softmax weights rounded to bf16 per block for P V, on the CPU's AVX512-BF16 unit (vdpbf16ps),
  // sums in f32. Faster decode attention (1.11-1.13x the exact path at TinyLlama-1.1B's shape),
  // logits within the bound kernels/cpu/attention_internal.h states (each score carries q's
  // rounding, relative 2^-9 a product; each weight one more, relative 2^-9), not bit-equal to the
  // exact path. No effect on f32 / f16 caches, on models with fewer than 4 query heads per kv
  // head, on CPUs without AVX512-BF16, or under EMOLLM_DECODE_ATTN_BF16DP=0; backends without
  // such a path ignore it. Default off.
  bool decode_bf16_products = false;
};

// Occupancy of a context's KV block pool (LlamaContext::kv_stats).
struct KvCacheStats {
  int64_t block_size = 0;     // positions per block
  int64_t blocks_total = 0;   // blocks in the pool
  int64_t blocks_used = 0;    // blocks referenced by at least one sequence
  int64_t blocks_shared = 0;  // blocks referenced by more than one sequence (a shared prefix)
  int64_t block_refs = 0;     // sum over sequences of their block-table lengths
  int64_t bytes_per_block = 0;  // K and V of all layers
  DType type = DType::F32;      // element type (LlamaContextOptions::kv_type)
};

// log p(id) under softmax(x[0..n)), computed in double (the scoring of options).
double log_softmax_at(const float* x, int64_t n, int64_t id);

// One decode row of a batched step (LlamaContext::decode): `token` is appended to sequence `seq`
// at its next position.
struct LlamaBatchRow {
  int seq = 0;
  int32_t token = 0;
};

// A run of n tokens appended to sequence `seq` in a batched step (LlamaContext::eval_batch).
// all_logits: the output receives every row's logits (scoring), else only the last row's.
// A chunk of a prompt (the scheduler's chunked prefill) may carry what eval() takes: `embd`, the
// input-embedding rows of the segment's negative ids (in order, rows contiguous), and `pos3`, the
// M-RoPE positions of its n tokens ([n][3]); null: token-table rows only / positions continuing
// one past the sequence's largest cached position.
// fork: the n tokens are evaluated after the sequence's cached positions WITHOUT being appended:
// they attend to its cache and to each other only, and the sequence (tokens, blocks, logits) is
// unchanged afterwards. Several fork segments of one sequence (e.g. the options scored after one
// prompt) run side by side in one pass, each on a private copy of the sequence's block table (the
// blocks shared by reference; its partially filled last block copied, except by the last fork to
// write it when no other sequence holds it: that one writes its rows past the sequence's end in
// place, rows nothing reads; set_fork_in_place): what a pass per option with a truncate after it
// computes, in one pass. A sequence with fork segments takes no other
// segment in that pass.
struct LlamaBatchSegment {
  int seq = 0;
  const int32_t* tokens = nullptr;
  int64_t n = 0;
  bool all_logits = false;
  const float* embd = nullptr;
  const int32_t* pos3 = nullptr;
  bool fork = false;
};

// A paged KV cache and all scratch memory, allocated once here. The cache is a pool of blocks of
// kv_block_size positions (per layer, K and V are [n_blocks][block_size][kvd] f32); each sequence
// has a block table (position p lives in block table[p / block_size] at row p % block_size).
// Blocks are reference-counted: seq_copy_prefix shares the source's blocks by reference (no copy),
// and a sequence about to write into a block it shares copies that block first (copy-on-write,
// which only a partially filled last block ever needs). Attention reads K/V through the block
// table (Backend::supports_paged_kv; other backends get the blocks gathered into a contiguous
// staging buffer first). A step that needs more free blocks than the pool has throws
// Error(OutOfMemory) before changing anything.
//
// The single-sequence API (eval, eval_prompt, score_continuations, tokens, truncate, logits)
// works on sequence 0, so a context of n_seq 1 is exactly the one-sequence context it always was.
// The seq_* calls do the same on any sequence, and decode() runs one token of many sequences as
// ONE forward pass: the rows are stacked so every weight GEMM has M = rows, while attention runs
// per sequence over that sequence's own slot. Rows are computed independently (row-wise norms,
// RoPE at each row's position, per-sequence attention), so a sequence's logits do not depend on
// which other sequences share its step (bitwise on the CPU GEMM paths that keep a row's reduction
// order, i.e. up to the small-M limit of the dot kernels).
class LlamaContext {
 public:
  LlamaContext(std::shared_ptr<const LlamaModel> model, const LlamaContextOptions& opts = {});
  LlamaContext(const LlamaContext&) = delete;
  LlamaContext& operator=(const LlamaContext&) = delete;

  const LlamaModel& model() const { return *model_; }
  int64_t n_ctx() const { return n_ctx_; }
  int64_t n_batch() const { return n_batch_; }
  int n_seq() const { return int(seqs_.size()); }
  int64_t n_vocab() const { return model_->hparams().n_vocab; }
  int64_t n_past() const { return seq_n_past(0); }
  // Faults in the whole context (KV block pool and activations) now: what the constructor does
  // when LlamaContextOptions::prefault is set (and EMOLLM_PREFAULT is not 0). For an owner that
  // creates the context with prefault off on one thread and pays the page faults on another (the
  // Scheduler, on its own thread, so the JavaScript thread that created it is not blocked).
  // The contents are unchanged; calling it again only re-reads resident pages.
  void prefault_memory();
  // The tokens whose keys/values are in the cache, positions 0..n_past-1.
  const std::vector<int32_t>& tokens() const { return seq_tokens(0); }

  // Evaluates n tokens at positions n_past..n_past+n-1 (prefill in chunks of n_batch through
  // gemm; one token through gemv) and appends them to the cache. Returns the logits of the last
  // token (n_vocab floats, valid until the next eval). When all_logits is non-null it receives
  // n x n_vocab logits, one row per token. Throws InvalidArgument when n_past + n > n_ctx or a
  // token id is out of range. When *abort becomes true (checked between layers) it returns
  // nullptr and the cache is left as before the call.
  //
  // Input embeddings (multimodal): with `embd` non-null, a NEGATIVE token id means "this
  // position's input embedding is given": the k-th negative id of `tokens` takes row k of `embd`
  // ([number of negative ids, n_embd] f32, rows contiguous) instead of a token-table lookup. The
  // negative id itself is a pseudo-id recorded in tokens() like any other token, so prefix reuse
  // (eval_prompt) matches it: give distinct content distinct pseudo-ids (LLaVA derives them from
  // a hash of the image features, see llava.h). Without `embd` negative ids are invalid.
  //
  // M-RoPE models (hparams().mrope_section non-empty): `pos3` gives the n tokens' 3-D positions
  // ([n][3]: temporal, height, width); when null each token continues one past the largest
  // position cached so far (text after an image, generated tokens), as transformers' rope_deltas.
  const float* eval(const int32_t* tokens, int64_t n, float* all_logits = nullptr,
                    const std::atomic<bool>* abort = nullptr, const float* embd = nullptr,
                    const int32_t* pos3 = nullptr) {
    return seq_eval(0, tokens, n, all_logits, abort, embd, pos3);
  }

  // Prefix reuse: keeps the longest common prefix of `prompt` and the cached tokens (truncating
  // the cache there), then evaluates the rest. The last prompt token is always (re)evaluated so
  // there are logits to return. Returns the last token's logits (nullptr when aborted).
  // `embd`: rows for the prompt's negative ids, as in eval() (all of them, the reused ones too).
  // `pos3`: M-RoPE positions of the whole prompt ([n][3]), as in eval().
  const float* eval_prompt(const int32_t* prompt, int64_t n, const std::atomic<bool>* abort = nullptr,
                           const float* embd = nullptr, const int32_t* pos3 = nullptr) {
    return seq_eval_prompt(0, prompt, n, abort, embd, pos3);
  }

  // Scores continuations of one prefix (classification by likelihood): evaluates the prefix once
  // (eval_prompt, so a cached prefix is reused; `embd` as there), then each continuation from
  // the cached prefix, truncating back to the prefix after each. For continuation c of m tokens,
  // token_logprobs[j] = log p(c[j] | prefix, c[0..j)) from a log-softmax in double over the
  // logits, and logprob is their sum (0 for an empty continuation). Only c[0..m-1) is evaluated.
  // Returns false when aborted (out then holds the continuations finished so far). Throws
  // InvalidArgument when the prefix plus a continuation does not fit n_ctx or an id is out of
  // range. Afterwards the cache holds the prefix and logits() are the prefix's last logits.
  struct ContinuationScore {
    double logprob = 0.0;
    std::vector<double> token_logprobs;
  };
  bool score_continuations(const int32_t* prefix, int64_t n_prefix, const std::vector<std::vector<int32_t>>& continuations,
                           std::vector<ContinuationScore>* out, const std::atomic<bool>* abort = nullptr,
                           const float* embd = nullptr, const int32_t* pos3 = nullptr);
  // The checks score_continuations makes before any work (sizes and ids); throws InvalidArgument.
  void check_continuations(int64_t n_prefix, const std::vector<std::vector<int32_t>>& continuations) const;
  // One continuation after a prefix that sequence `seq` holds (n_past(seq) == n_prefix) whose
  // last logits are `prefix_logits`: evaluates c[0..m-1) from the prefix and truncates back.
  // Returns false when aborted.
  bool seq_score_continuation(int seq, const float* prefix_logits, const std::vector<int32_t>& cont,
                              ContinuationScore* out, const std::atomic<bool>* abort = nullptr);

  // Logits of the last evaluated token (n_vocab floats); nullptr before any eval.
  const float* logits() const { return seq_logits(0); }
  // Drops cache positions >= n (n <= n_past).
  void truncate(int64_t n) { seq_truncate(0, n); }
  void reset() { truncate(0); }
  size_t memory_bytes() const { return buffer_.bytes() + logits_.size() * sizeof(float); }
  // The context's one backend buffer (KV cache and scratch): where its memory is, e.g. for the
  // tests that check a prefaulted context is resident.
  const BackendBuffer& memory_buffer() const { return buffer_; }

  // ---- the KV block pool
  KvCacheStats kv_stats() const;
  int64_t kv_block_size() const { return kv_bs_; }
  DType kv_type() const { return kv_type_; }
  // LlamaContextOptions::decode_bf16_products as given (whether the kernels take it depends on
  // the cache type, the model's head grouping and the CPU).
  bool decode_bf16_products() const { return decode_bf16_products_; }
  int64_t kv_blocks_free() const { return int64_t(free_blocks_.size()); }
  // Blocks a sequence of n positions holds.
  int64_t kv_blocks_for(int64_t n) const { return (n + kv_bs_ - 1) / kv_bs_; }
  // Free blocks sequence `seq` takes to append n positions: the new blocks, plus one when its
  // partially filled last block is shared (copy-on-write). An upper bound when several sequences
  // sharing one partial block write in the same pass (the last writer keeps it).
  int64_t kv_blocks_needed(int seq, int64_t n) const;
  // Free blocks a fork segment (LlamaBatchSegment::fork) of n positions after sequence `seq`
  // takes: its new blocks, plus a copy of the sequence's partially filled last block (an upper
  // bound: the fork that writes that block in place takes no copy).
  int64_t kv_blocks_needed_fork(int seq, int64_t n) const;
  // Sequence `seq`'s block table and the reference count of a block (tests, stats).
  const std::vector<int32_t>& seq_blocks(int seq) const { return seq_at(seq).blocks; }
  int32_t kv_block_refs(int32_t block) const { return block_refs_.at(size_t(block)); }

  // ---- any sequence (0 <= seq < n_seq()): the calls above, on that sequence's slot.
  int64_t seq_n_past(int seq) const { return int64_t(seq_at(seq).tokens.size()); }
  const std::vector<int32_t>& seq_tokens(int seq) const { return seq_at(seq).tokens; }
  const float* seq_logits(int seq) const {
    return seq_at(seq).has_logits ? logits_.data() + int64_t(seq) * n_vocab() : nullptr;
  }
  void seq_truncate(int seq, int64_t n);
  const float* seq_eval(int seq, const int32_t* tokens, int64_t n, float* all_logits = nullptr,
                        const std::atomic<bool>* abort = nullptr, const float* embd = nullptr,
                        const int32_t* pos3 = nullptr);
  const float* seq_eval_prompt(int seq, const int32_t* prompt, int64_t n, const std::atomic<bool>* abort = nullptr,
                               const float* embd = nullptr, const int32_t* pos3 = nullptr);
  // Prefix sharing: makes sequence `dst` hold the first n cached positions of sequence `src`
  // (keys, values, tokens, M-RoPE positions): src's blocks are shared by reference (nothing is
  // copied; a partially filled last block is copied when either side writes into it); dst's
  // own blocks are released.
  void seq_copy_prefix(int src, int dst, int64_t n);
  // Longest common prefix of `tokens` and what sequence `seq` caches.
  int64_t seq_common_prefix(int seq, const int32_t* tokens, int64_t n) const;

  // One batched decode step: row r appends rows[r].token to sequence rows[r].seq (distinct
  // sequences, n <= n_batch) in ONE forward pass; out_logits receives [n, n_vocab] (row r's next-
  // token logits), and each sequence's seq_logits() is updated. M-RoPE sequences continue one
  // past their largest cached position. Throws InvalidArgument on a full sequence, a repeated
  // sequence or a bad id. Returns false when *abort became true (no sequence changed).
  bool decode(const LlamaBatchRow* rows, int64_t n, float* out_logits, const std::atomic<bool>* abort = nullptr);

  // The general batched step: each segment appends its tokens to its sequence (distinct
  // sequences, sum of n <= n_batch), all in ONE forward pass. `out` receives, in segment order,
  // every row's logits of all_logits segments and the last row's of the others. Each sequence's
  // seq_logits() becomes its last row's. Negative ids need the segment's `embd`; M-RoPE sequences
  // take the segment's `pos3`, else continue one past their largest cached position. Throws
  // InvalidArgument on a full sequence, a repeated sequence, too many rows or a bad id. Returns
  // false when *abort became true (no sequence changed).
  bool eval_batch(const LlamaBatchSegment* segs, int64_t n_segs, float* out, const std::atomic<bool>* abort = nullptr);
  // Rows of output eval_batch writes for these segments.
  static int64_t batch_output_rows(const LlamaBatchSegment* segs, int64_t n_segs);

 private:
  // A run of one sequence's consecutive tokens inside a forward pass.
  struct Segment {
    int seq = 0;
    const int32_t* tokens = nullptr;
    int64_t n = 0;
    int64_t pos0 = 0;              // position of the first token (== the sequence's n_past)
    const float* embd = nullptr;   // rows for the segment's negative ids, or null
    bool all_logits = false;       // out receives every row's logits, else only the last row's
    int fork = -1;                 // >= 0: runs on forks_[fork] (a copy of seq's table), see LlamaBatchSegment
  };
  struct Seq {
    std::vector<int32_t> tokens;
    std::vector<int32_t> blocks;  // block table: position p is in blocks[p / kv_bs_]
    std::vector<int32_t> pos3;  // M-RoPE: [n_ctx][3] positions of the cached tokens
    bool has_logits = false;
  };
  const Seq& seq_at(int seq) const;
  Seq& seq_at(int seq);
  // The sequence a segment's rows go to: its fork's private table, else its own.
  Seq& seq_of(const Segment& sg) { return sg.fork >= 0 ? forks_[size_t(sg.fork)] : seqs_[size_t(sg.seq)]; }
  void set_mrope_positions(Seq& q, int64_t start, int64_t n, const int32_t* pos3);
  void check_ids(const int32_t* tokens, int64_t n, bool have_embd) const;
  // Runs the segments (sum of n <= n_batch) as one pass; `out` (host memory) receives, in segment
  // order, every row of all_logits segments and the last row of the others.
  bool forward(const Segment* segs, int n_segs, float* out, const std::atomic<bool>* abort);
  // Block pool: makes every segment's sequence own writable blocks for positions
  // [pos0, pos0 + n) (allocating blocks, copying a shared partial block). Throws
  // Error(OutOfMemory) before changing anything when the pool lacks the blocks.
  void reserve_blocks(const Segment* segs, int n_segs);
  // forward() with the segments' blocks reserved first and given back when it aborts or throws.
  bool forward_reserved(const Segment* segs, int n_segs, float* out, const std::atomic<bool>* abort);
  void release_blocks_from(Seq& q, size_t keep);  // drops q.blocks[keep..]
  int32_t alloc_block();
  // Block b of a layer, and `elems` cache elements past a cache pointer (f32 or half elements:
  // the pointers are typed float* for the f32 signatures; a half cache's are reinterpreted).
  float* kv_elems(float* at, int64_t elems) const {
    return reinterpret_cast<float*>(reinterpret_cast<char*>(at) + size_t(elems) * kv_esz_);
  }
  float* k_block(int64_t layer, int32_t b) const { return kv_elems(k_cache_, (layer * n_blocks_ + b) * kv_bs_ * kvd_); }
  float* v_block(int64_t layer, int32_t b) const { return kv_elems(v_cache_, (layer * n_blocks_ + b) * kv_bs_ * kvd_); }

  std::shared_ptr<const LlamaModel> model_;
  int64_t n_ctx_ = 0, n_batch_ = 0;
  std::vector<Seq> seqs_;
  std::vector<Seq> forks_;  // fork segments' block tables, held only during eval_batch
  // The KV cache and all activations: one block of the model backend's memory (backend.alloc),
  // carved at construction. Model code reaches it only through Backend calls (on a device the
  // host never dereferences it: inputs are uploaded, output rows downloaded).
  BackendBuffer buffer_;
  // KV block pool, per layer [n_blocks, block_size, n_head_kv * head_dim] of kv_type_
  float* k_cache_ = nullptr;
  float* v_cache_ = nullptr;
  int64_t kv_bs_ = 64, n_blocks_ = 0, kvd_ = 0;
  DType kv_type_ = DType::F32;
  bool decode_bf16_products_ = false;  // LlamaContextOptions::decode_bf16_products
  size_t kv_esz_ = sizeof(float);  // bytes of a cache element
  std::vector<int32_t> block_refs_;   // per block: sequences whose table holds it
  std::vector<int32_t> free_blocks_;  // blocks with no reference (a stack)
  std::vector<const float*> k_table_, v_table_;  // the segments' block pointers for attention, one after another
  std::vector<AttentionBatchItem> att_items_;     // a pass's attentions, one per segment
  // residual adds fused with the RMSNorm after them and q / k rotated in one call (Backend::
  // add_rmsnorm, rope_pair); EMOLLM_FUSED_ROW_OPS=0 at the context's creation: the separate ops
  // (same bits), the A/B baseline
  bool fused_row_ops_ = true;
  // Backends without paged attention: a sequence's K/V gathered contiguous, [n_ctx, kvd] each (kv_type_).
  float* k_stage_ = nullptr;
  float* v_stage_ = nullptr;
  // scratch for n_batch rows
  float *x_ = nullptr, *xn_ = nullptr, *q_ = nullptr, *att_ = nullptr, *tmp_ = nullptr;
  float *gate_ = nullptr, *up_ = nullptr, *k_new_ = nullptr, *v_new_ = nullptr;
  int32_t* pos_ = nullptr;  // RoPE positions of the pass's rows, [sections][rows] (3 sections for M-RoPE)
  // Device backends only (null on host-memory backends, which read the caller's arrays in place):
  int32_t* ids_ = nullptr;      // the pass's token ids, uploaded per pass
  float* out_dev_ = nullptr;    // out_rows_ rows of classifier output, downloaded per chunk
  int64_t out_rows_ = 0;
  std::vector<int32_t> pos_host_;  // positions staged on the host before the upload
  // Host memory: [n_seq, n_vocab], each sequence's last logits (what the sampler reads).
  std::vector<float> logits_;
};

// Per-token work of the forward pass outside the weight products; neither changes a bit
// (process-wide, read at each forward pass, so an A/B alternates in one context):
// - KV rows written in place (set_kv_direct_write(false): off): a pass of one segment whose new
//   positions lie in one block of an f32 cache has its k / v projections write straight into that
//   block's rows (RoPE then rotates k there), instead of into k_new_ / v_new_ and a copy after.
// - Norm prefetch (set_norm_prefetch(false): off): a decode step (one row) issues Backend::prefetch
//   of the next RMSNorm's weights and of the residual row before the GEMV that precedes it (o's,
//   down's), so the add_rmsnorm after it finds them in cache (each layer's norm weights otherwise
//   come from DRAM once a token, the weight stream in between having evicted them).
void set_kv_direct_write(bool on);
bool kv_direct_write();
void set_norm_prefetch(bool on);
bool norm_prefetch();
// Forward passes (of every context in this process) that took the in-place KV write, and
// Backend::prefetch calls the norm prefetch issued: for tests that the paths run.
uint64_t kv_direct_passes();
uint64_t norm_prefetch_calls();
// Forks written in place (set_fork_in_place(false): every fork copies): a fork segment whose
// sequence's partially filled last block is held by nobody but that sequence and the fork writes
// its rows there instead of into a copy (LlamaContext::reserve_blocks says why that is safe):
// one block copy less per scoring pass. Same bits. fork_in_place_writes(): the blocks so written
// (every context in this process), for tests that the path runs.
void set_fork_in_place(bool on);
bool fork_in_place();
uint64_t fork_in_place_writes();

// The token embedding table's pages mapped when a model is loaded (set_embd_populate(false): off,
// for the test; read at load): on host memory an untied table stays in the weight file's
// mapping, and a decode step's row is otherwise a page fault a token (loaders/mapped_file.h
// populate_read). Changes no bit. embd_populated_bytes: the bytes populated so far in this
// process (tests: that the path runs).
void set_embd_populate(bool on);
bool embd_populate();
uint64_t embd_populated_bytes();

}  // namespace emollm
