// Continuous batching in the core: many sequences of one model decode together.
//
//   Scheduler sched(model, { .n_ctx = 2048, .n_seq = 4 });
//   SeqRequest r;  r.prompt = ids;  r.params.max_tokens = 64;
//   r.on_token = [](int32_t t) { ... };           // scheduler thread, as soon as sampled
//   r.on_done = [](SeqOutcome&& o) { ... };      // exactly once
//   uint64_t id = sched.submit(std::move(r));     // returns at once
//   sched.abort(id);                              // that sequence only
//
// Design. One LlamaContext with n_seq sequence slots over a paged KV cache (see llama.h); one thread of
// the core runs the step loop:
//   1. admit: while a slot is free, the oldest waiting request (FIFO) takes one. Its `prepare`
//      hook runs (the addon splices image features there, off the event loop), then the slot
//      that already caches the longest prefix of its prompt is chosen (on a tie an empty slot, else
//      the one idle the longest: a new prompt keeps recent caches); when ANOTHER slot caches a
//      longer prefix (e.g. the same image + question scored a moment ago, or by a sequence still
//      running) its blocks are shared by the chosen slot by reference (prefix sharing; settled
//      at the prompt's first chunk). The rest of the prompt is prefilled in chunks inside the
//      step passes (chunked prefill, below).
//   2. step: ONE batched forward pass (LlamaContext::eval_batch: weight GEMMs with M = all rows,
//      attention per slot) of at most n_batch rows (the step's token budget) carries, in this
//      order: a row for every generating sequence's next token; for every scoring sequence, the
//      rows of its next option (evaluated from its cached prefix, then truncated back to it: the
//      prefix is evaluated once per request and shared by all its options; with score_forks(),
//      the default, as many of its next options as the rows and free blocks take, side by side as
//      fork segments of the prefix (LlamaBatchSegment::fork), so 8 short options cost one pass; an
//      option longer than the budget is split into chunks over several steps, like a prompt); then chunks of the
//      prompts still being prefilled, oldest first, up to the budget. Each generating sequence
//      then samples / delivers / stops exactly as Session::generate (SequenceGenerator); a
//      prompt whose last chunk ran starts generating (or scoring) from that chunk's logits.
// Chunked prefill: a long prompt never stalls the sequences that are decoding: each step gives
// them their row, and the prompt advances by what is left of the budget. A chunk carries the
// input-embedding rows of its image positions and its M-RoPE positions (LlamaBatchSegment), so
// an image may be split across chunks. Prefix sharing still holds for requests admitted
// together: a prompt whose common prefix with an OLDER prompt still being prefilled is longer
// than anything cached (by 16 positions or more) waits for those positions (a step or a few) and
// copies them, instead of computing them a second time beside it. With chunked_prefill false
// each prompt is prefilled at admission in its own passes (the decoding sequences wait): the
// A/B baseline.
// Stats count the chunks, the prompt rows and the rows per step (mixed_steps: passes carrying
// prompt rows beside decode / option rows, i.e. decoding that went on during a prefill).
// Finished sequences leave at the end of the step; their slot keeps its cache for prefix reuse
// by the next request (an aborted one's blocks are released), and the logits of its prompt's
// last position: a later request with exactly that prompt (same tokens, same image features)
// needs no pass at all for it (llama.cpp's server re-evaluates that one token; here a scoring
// after logits() of the same prompt goes straight to its options, with the same prefix logits
// bit for bit). Logits requests (Model.logits) run through the slots too, so what they prefill
// stays cached for the generate / scoreOptions calls after them.
// KV memory (paged, see llama.h): a prefix copied from another slot is shared by reference.
// Admission is optimistic (as vLLM's): a request is admitted when its prompt (a scoring request:
// prefix + longest option) and a watermark (1% of the pool's blocks, rounded down) fit the free
// blocks and the idle slots' caches beside what the prompts being prefilled still need; otherwise
// it waits at the head of the queue (FIFO). Sequences then take blocks as they grow: each step
// first gives every generating / scoring sequence the blocks of its rows, oldest (by submission)
// first, releasing idle caches (least recently used first) and then preempting the newest running
// sequence when none is free: its blocks are freed (shared prefix blocks drop a reference) and it
// goes back to the head of the queue, to be recomputed (prompt + tokens generated so far, as a
// prompt: chunked, prefix sharing included) when blocks are free again; its SequenceGenerator
// (sampler RNG, repetition history) goes on unchanged, so its output equals the request run alone
// and no token is delivered twice. Prompt chunks take what blocks are left. A request whose worst
// case (prompt + max_tokens, or prefix + longest option, capped at n_ctx) exceeds the whole pool
// fails with Error(OutOfMemory); every other one fits alone, so the oldest running sequence
// always progresses (only newer ones are preempted for it), and nothing deadlocks. With the
// default pool nothing waits or is preempted. Aborts are per request (a waiting or preempted
// request leaves the queue; a running one ends at the next step); other sequences are not
// disturbed.
//
// Threads: submit/abort/stats may be called from any thread. Callbacks run on the scheduler
// thread (on_done also from shutdown() for requests still waiting), so they must be quick:
// the addon queues them to JavaScript through thread-safe functions.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "model/llama.h"
#include "model/session.h"

namespace emollm {

struct SchedulerOptions {
  int64_t n_ctx = 0;    // positions per sequence (0 = LlamaContext's default)
  // The step's token budget: most rows per forward pass (decode rows + option rows + prompt
  // chunks). 0 = LlamaContext's default, min(n_ctx, 512); else at least n_seq (every decoding
  // sequence gets its row each step), InvalidArgument otherwise.
  int64_t n_batch = 0;
  int n_seq = 4;        // sequences decoded together (KV slots)
  bool chunked_prefill = true;  // prompts in chunks inside the steps; false: at admission, alone
  // Paged KV cache (LlamaContextOptions): positions per block (0 = 64) and the pool's size in
  // positions (0 = n_seq x n_ctx: every sequence can always fill its context, nothing waits).
  int64_t kv_block_size = 0;
  int64_t kv_positions = 0;
  DType kv_type = DType::F32;  // KV cache element type (LlamaContextOptions::kv_type)
  bool decode_bf16_products = false;  // LlamaContextOptions::decode_bf16_products
  bool prefault = true;        // fault the context in when created, on the scheduler's own thread before its
                               // first step (LlamaContextOptions::prefault): the creating thread is not blocked
};

struct SeqOutcome {
  GenerateResult generated;                                // Generate
  std::vector<LlamaContext::ContinuationScore> scores;     // Score (one per continuation)
  std::vector<float> logits;                               // Logits: the prompt's last position's [n_vocab]
  bool aborted = false;
  std::exception_ptr error;                                // set when the request failed
};

struct SeqRequest {
  // Logits: the prompt is evaluated (or found cached) and its last position's logits returned;
  // its slot keeps the prompt cached for the requests after it (a scoring of the same prefix).
  enum class Kind { Generate, Score, Logits };
  Kind kind = Kind::Generate;
  std::vector<int32_t> prompt;     // Generate, Logits: the prompt; Score: the prefix
  std::vector<float> embd;         // input embeddings of the prompt's negative ids (images), or empty
  // Or the same rows read in place (when embd is empty): the submitter keeps them alive and
  // unchanged until on_done has run (the addon: the caller's Float32Array, never copied).
  const float* embd_view = nullptr;
  int64_t embd_view_n = 0;         // floats at embd_view
  const float* embd_rows() const { return embd.empty() ? embd_view : embd.data(); }
  int64_t embd_floats() const { return embd.empty() ? (embd_view ? embd_view_n : 0) : int64_t(embd.size()); }
  std::vector<int32_t> pos3;       // M-RoPE positions of the prompt ([n][3]), or empty
  GenerateParams params;           // Generate
  std::vector<std::vector<int32_t>> continuations;  // Score
  // Logits: where the last position's [n_vocab] logits go, when set (instead of SeqOutcome::logits);
  // the submitter keeps it alive until on_done has run (the addon: the result array it resolves to).
  float* logits_out = nullptr;
  // Runs on the scheduler thread before the prompt is used (may rewrite prompt/embd/pos3; may throw).
  std::function<void(SeqRequest&)> prepare;
  TokenSink on_token;                          // Generate: each token as it is sampled
  std::function<void(SeqOutcome&&)> on_done;   // exactly once
};

struct SchedulerStats {
  int64_t steps = 0;            // batched step passes run
  int64_t batched_steps = 0;    // of which with 2 sequences or more
  int64_t max_batch = 0;        // most sequences in one step pass
  int64_t decoded_tokens = 0;   // decode and option rows evaluated in all step passes (not prompt rows)
  int64_t prefills = 0;         // prompts prefilled (started)
  int64_t prefill_chunks = 0;   // prompt chunks evaluated (a step pass's part of a prompt, or an own pass)
  int64_t prefill_tokens = 0;   // prompt positions evaluated
  int64_t mixed_steps = 0;      // step passes with prompt rows beside decode / option rows
  int64_t step_rows = 0;        // rows of all step passes (decode + option + prompt rows)
  int64_t last_step_rows = 0;   // rows of the latest step pass
  int64_t max_step_rows = 0;    // most rows in one step pass
  int64_t prefix_copies = 0;    // prefixes copied from another slot
  int64_t prefix_waits = 0;     // prompts that waited for an older prompt's prefill to share its prefix
  int64_t reused_tokens = 0;    // prompt positions not recomputed (own cache or copied)
  int64_t reused_logits = 0;    // prompts cached whole with their last position's logits: no pass at all
  int64_t active = 0;           // sequences holding a slot now
  int64_t prefilling = 0;       // of which with their prompt not fully evaluated yet
  int64_t queued = 0;           // requests waiting for a slot
  int64_t n_batch = 0;          // the step's token budget
  // the paged KV cache (LlamaContext::kv_stats), as of the latest step
  int64_t kv_block_size = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_used = 0;     // referenced by a running sequence or kept for prefix reuse
  int64_t kv_blocks_shared = 0;   // referenced by 2 sequences or more (shared prefixes)
  int64_t kv_blocks_cached = 0;   // held by idle slots' cached prefixes alone (released on demand)
  int64_t kv_bytes_per_block = 0;
  int64_t kv_waits = 0;           // requests that waited at admission for KV blocks
  int64_t kv_preemptions = 0;     // running sequences preempted (blocks freed, requeued to be recomputed)
  int64_t kv_recomputed_tokens = 0;  // positions evaluated again after a preemption
  bool chunked_prefill = true;
  int n_seq = 0;
  // the context's fault-in on the scheduler's thread (SchedulerOptions::prefault): done (or not
  // asked for: true from the start), and its seconds (0 when not asked for); requests wait for it
  bool context_ready = false;
  double prefault_s = 0;
};

// Options of one scoring request evaluated side by side in one pass (default on): each option
// with more than one token as a fork segment of the cached prefix (LlamaBatchSegment::fork), as
// many as the step's rows and free KV blocks take, instead of one option per pass (off: the test's
// reference and score_forks_ab's baseline; process-wide, read at each step).
void set_score_forks(bool on);
bool score_forks();

class Scheduler {
 public:
  Scheduler(std::shared_ptr<const LlamaModel> model, const SchedulerOptions& opts);
  ~Scheduler();  // shutdown() and join
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request (FIFO); returns its id (> 0). Throws InvalidArgument after shutdown().
  uint64_t submit(SeqRequest r);
  // Aborts one request (waiting or running); unknown or finished ids are ignored.
  void abort(uint64_t id);
  // Aborts everything and stops the thread; later submits throw. Does not wait.
  void shutdown();
  SchedulerStats stats() const;
  int64_t n_ctx() const { return n_ctx_; }
  int n_seq() const { return n_seq_; }

 private:
  struct Active;
  void loop();
  // Admits a request taken from the queue: true when it was (it runs, or it failed and finished);
  // false when it must wait for KV blocks (`a` is left to the caller, who requeues it first).
  bool admit(std::unique_ptr<Active>& a);
  void insert_running(std::unique_ptr<Active> a);  // in submission order
  int64_t worst_positions(const Active& a) const;  // prompt + max_tokens (or + longest option), capped
  bool start_prefill(Active& a, bool may_wait);
  void begin(Active& a, const float* logits);
  void finish(std::unique_ptr<Active>& a);
  void step();
  // KV blocks (scheduler thread). Releases the cached prefix of the idle slot idle the longest;
  // false when no idle slot holds blocks.
  bool evict_one_idle();
  int64_t available_blocks() const;        // free + held by idle slots' caches alone
  int64_t pending_prefill_blocks() const;  // blocks the prompts being prefilled still take
  // The most of `want` positions slot's sequence can append with the free blocks beyond
  // `granted` (idle caches released as needed).
  int64_t fit_positions(int slot, int64_t want, int64_t granted);
  // Frees a running sequence's blocks and puts it first in the queue, to be recomputed (prompt +
  // tokens generated so far) when it is admitted again. Leaves `v` null.
  void preempt(std::unique_ptr<Active>& v);
  void publish_kv_stats();  // under mu_
  // A slot's cached tokens change only through these two (they drop the slot's kept logits when
  // the positions those logits follow are cut or replaced).
  void truncate_slot(int slot, int64_t n);
  void copy_slot_prefix(int src, int dst, int64_t n);
  // The slot that caches all of `p` and kept the logits of its last position, or -1 (`prefer`
  // first when it qualifies).
  int slot_with_logits(const std::vector<int32_t>& p, int prefer) const;

  std::shared_ptr<const LlamaModel> model_;
  std::unique_ptr<LlamaContext> ctx_;  // used by the scheduler thread only
  int64_t n_ctx_ = 0;
  int n_seq_ = 0;
  bool chunked_ = true;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Active>> waiting_;  // guarded by mu_
  std::vector<std::unique_ptr<Active>> running_;  // scheduler thread, in submission order
  std::unordered_map<uint64_t, std::shared_ptr<std::atomic<bool>>> aborts_;  // guarded by mu_: live requests
  std::vector<uint8_t> slot_used_;                // scheduler thread
  std::vector<uint64_t> slot_idle_since_;         // scheduler thread: when an idle slot's cache was last used
  uint64_t idle_clock_ = 0;
  // Per slot (scheduler thread): the logits after the slot's first tail_len_[s] cached positions
  // (0: none), kept from the pass that evaluated them and dropped when the slot is truncated below
  // them, so the tokens they follow are the slot's own first tail_len_[s] tokens. A request whose
  // whole prompt is those tokens (logits() then scoreOptions() of the same prompt and image:
  // images are pseudo-ids hashed from their features, so only equal features match) starts from
  // them without evaluating its last prompt token again.
  std::vector<int64_t> tail_len_;
  std::vector<std::vector<float>> tail_logits_;
  uint64_t next_id_ = 1;
  bool stopping_ = false;
  std::atomic<bool> stop_{false};  // aborts the pass in flight at shutdown
  SchedulerStats stats_;           // guarded by mu_
  std::vector<float> step_logits_;
  bool prefault_ = true;  // SchedulerOptions::prefault, done by loop() on thread_
  std::thread thread_;
};

}  // namespace emollm
