// The continuous-batching step loop (see scheduler.h for the design).
#include "model/scheduler.h"

#include <algorithm>
#include <chrono>

#include "base/error.h"

namespace emollm {

namespace {
// A prompt waits for an older prompt's prefill only when that saves at least this many positions:
// for a few tokens, computing them beside it costs less than the steps of waiting.
constexpr int64_t kMinSharedWait = 16;
// Optimistic admission keeps this share of the pool (rounded down, as vLLM's watermark: none in a
// pool under 100 blocks) free beyond the prompts being prefilled, so the sequences already
// decoding can grow a while before anyone is preempted.
constexpr int64_t kWatermarkPercent = 1;
// Image rows (negative ids: one embedding row each) among a prompt's first n tokens: the embd row
// a prefill that starts at position n reads next.
int64_t image_rows(const std::vector<int32_t>& p, int64_t n) {
  int64_t rows = 0;
  for (int64_t i = 0; i < n; ++i)
    if (p[size_t(i)] < 0) ++rows;
  return rows;
}
// On at start; set_score_forks(false) (one option per pass) is the test's reference. No
// environment variable: EMOLLM_SCORE_FORKS went in session 22 (quiet score_forks_ab, 7B, 8 options:
// scoring 0.400 -> 0.210 s, bench/README 2026-12-06 07:30).
std::atomic<bool> g_score_forks{true};
// The score of an option of 0 or 1 token: from the prefix's last logits alone.
LlamaContext::ContinuationScore prefix_score(const std::vector<float>& prefix_logits, int64_t V, const std::vector<int32_t>& c) {
  LlamaContext::ContinuationScore sc;
  if (!c.empty()) {
    sc.token_logprobs.push_back(log_softmax_at(prefix_logits.data(), V, c[0]));
    sc.logprob = sc.token_logprobs[0];
  }
  return sc;
}
}  // namespace

void set_score_forks(bool on) { g_score_forks.store(on, std::memory_order_relaxed); }
bool score_forks() { return g_score_forks.load(std::memory_order_relaxed); }

struct Scheduler::Active {
  uint64_t id = 0;
  SeqRequest req;
  std::shared_ptr<std::atomic<bool>> abort = std::make_shared<std::atomic<bool>>(false);
  int slot = -1;
  std::unique_ptr<SequenceGenerator> gen;  // Generate
  int32_t next_token = -1;                 // Generate: the token the next decode step evaluates
  std::vector<float> prefix_logits;        // Score: the prefix's last logits
  size_t next_cont = 0;                    // Score: the next option to evaluate
  // Score, an option longer than the step budget: split across steps like a prompt's chunks
  int64_t cont_pos = 0;                        // its rows evaluated so far (cached after the prefix)
  LlamaContext::ContinuationScore cont_score;  // its token logprobs so far
  // Score with forks (score_forks()): the options of this step's pass from next_cont on, one
  // entry each: 1 = ran as a fork segment, 0 = 0 or 1 token (scored from the prefix logits)
  std::vector<uint8_t> fork_opts;
  size_t fork_at = 0;  // the entry of fork_opts the next output row belongs to
  // chunked prefill: the prompt's evaluation inside the step passes
  bool prefilling = false;  // the prompt is not fully evaluated yet
  bool started = false;     // where it starts (own cache / copied prefix) is settled
  bool waited = false;      // counted in stats_.prefix_waits
  int64_t prefill_pos = 0;  // prompt positions cached so far
  int64_t embd_row = 0;     // the embd row of the next negative id from prefill_pos on
  SeqOutcome out;
  bool done = false;
  bool admitted = false;  // counted in stats_.active
  bool prepared = false;  // prepare() ran and the request was checked
  bool kv_waited = false; // counted in stats_.kv_waits
  // Preemption (KV blocks ran out): the prompt as submitted is req.prompt[0, prompt_len); a
  // preempted generation's req.prompt becomes that plus every token generated so far, recomputed
  // at its re-admission, after which its SequenceGenerator (sampler state, history) goes on.
  int64_t prompt_len = 0;
  int64_t preemptions = 0;
  bool aborted() const { return abort->load(std::memory_order_relaxed); }
};

Scheduler::Scheduler(std::shared_ptr<const LlamaModel> model, const SchedulerOptions& opts) : model_(std::move(model)) {
  EMOLLM_CHECK_ARG(opts.n_seq >= 1 && opts.n_seq <= 256, "n_seq must be in [1, 256]");
  EMOLLM_CHECK_ARG(opts.n_batch == 0 || (opts.n_batch >= opts.n_seq && opts.n_batch <= (int64_t(1) << 20)),
                   "the step's token budget (n_batch) " + std::to_string(opts.n_batch) + " must be 0 (default) or in [n_seq = " +
                       std::to_string(opts.n_seq) + ", 1048576]: every decoding sequence takes one row per step");
  LlamaContextOptions co;
  co.n_ctx = opts.n_ctx;
  co.n_batch = opts.n_batch;
  co.n_seq = opts.n_seq;
  co.kv_block_size = opts.kv_block_size;
  co.kv_positions = opts.kv_positions;
  co.kv_type = opts.kv_type;
  co.decode_bf16_products = opts.decode_bf16_products;
  // Faulted in on the scheduler's thread before its first step (loop()), not here: the
  // constructor runs on the caller's thread (the addon's createBatch, on the JavaScript thread),
  // and faulting in a large context takes ~1 s per GB in a VM. Requests submitted meanwhile wait.
  co.prefault = false;
  prefault_ = opts.prefault;
  ctx_ = std::make_unique<LlamaContext>(model_, co);
  n_ctx_ = ctx_->n_ctx();
  n_seq_ = opts.n_seq;
  chunked_ = opts.chunked_prefill;
  slot_used_.assign(size_t(n_seq_), 0);
  slot_idle_since_.assign(size_t(n_seq_), 0);
  tail_len_.assign(size_t(n_seq_), 0);
  tail_logits_.assign(size_t(n_seq_), {});
  stats_.n_seq = n_seq_;
  stats_.n_batch = ctx_->n_batch();
  stats_.chunked_prefill = chunked_;
  publish_kv_stats();
  thread_ = std::thread([this] { loop(); });
}

Scheduler::~Scheduler() {
  shutdown();
  if (thread_.joinable()) thread_.join();
}

uint64_t Scheduler::submit(SeqRequest r) {
  auto a = std::make_unique<Active>();
  a->req = std::move(r);
  std::lock_guard<std::mutex> lk(mu_);
  if (stopping_) throw Error(ErrorCode::InvalidArgument, "the model's scheduler is shut down (the model is closed)");
  a->id = next_id_++;
  const uint64_t id = a->id;
  aborts_[id] = a->abort;
  waiting_.push_back(std::move(a));
  stats_.queued = int64_t(waiting_.size());
  cv_.notify_one();
  return id;
}

void Scheduler::abort(uint64_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = aborts_.find(id);
  if (it == aborts_.end()) return;
  it->second->store(true);
  cv_.notify_one();
}

void Scheduler::shutdown() {
  std::lock_guard<std::mutex> lk(mu_);
  stopping_ = true;
  stop_.store(true);
  for (auto& kv : aborts_) kv.second->store(true);
  cv_.notify_one();
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

void Scheduler::publish_kv_stats() {
  const KvCacheStats k = ctx_->kv_stats();
  stats_.kv_block_size = k.block_size;
  stats_.kv_blocks_total = k.blocks_total;
  stats_.kv_blocks_used = k.blocks_used;
  stats_.kv_blocks_shared = k.blocks_shared;
  stats_.kv_blocks_cached = available_blocks() - ctx_->kv_blocks_free();
  stats_.kv_bytes_per_block = k.bytes_per_block;
}

void Scheduler::truncate_slot(int slot, int64_t n) {
  ctx_->seq_truncate(slot, n);
  if (tail_len_[size_t(slot)] > n) {
    tail_len_[size_t(slot)] = 0;
    tail_logits_[size_t(slot)].clear();
  }
}

void Scheduler::copy_slot_prefix(int src, int dst, int64_t n) {
  if (src == dst) return truncate_slot(dst, n);
  ctx_->seq_copy_prefix(src, dst, n);
  // dst's positions are src's now: src's kept logits hold for them when they cover all of them
  if (tail_len_[size_t(src)] == n) {
    tail_len_[size_t(dst)] = n;
    tail_logits_[size_t(dst)] = tail_logits_[size_t(src)];
  } else {
    tail_len_[size_t(dst)] = 0;
    tail_logits_[size_t(dst)].clear();
  }
}

int Scheduler::slot_with_logits(const std::vector<int32_t>& p, int prefer) const {
  const int64_t n = int64_t(p.size());
  auto fits = [&](int s) {
    return s >= 0 && n > 0 && tail_len_[size_t(s)] == n && ctx_->seq_common_prefix(s, p.data(), n) == n;
  };
  if (fits(prefer)) return prefer;
  for (int s = 0; s < n_seq_; ++s)
    if (fits(s)) return s;
  return -1;
}

bool Scheduler::evict_one_idle() {
  LlamaContext& ctx = *ctx_;
  int victim = -1;
  for (int s = 0; s < n_seq_; ++s)
    if (!slot_used_[size_t(s)] && !ctx.seq_blocks(s).empty() &&
        (victim < 0 || slot_idle_since_[size_t(s)] < slot_idle_since_[size_t(victim)]))
      victim = s;
  if (victim < 0) return false;
  truncate_slot(victim, 0);
  return true;
}

int64_t Scheduler::available_blocks() const {
  const LlamaContext& ctx = *ctx_;
  std::vector<int32_t> idle_refs(size_t(ctx.kv_stats().blocks_total), 0);
  for (int s = 0; s < n_seq_; ++s)
    if (!slot_used_[size_t(s)])
      for (int32_t b : ctx.seq_blocks(s)) idle_refs[size_t(b)]++;
  int64_t n = ctx.kv_blocks_free();
  for (size_t b = 0; b < idle_refs.size(); ++b)
    if (idle_refs[b] > 0 && idle_refs[b] == ctx.kv_block_refs(int32_t(b))) ++n;
  return n;
}

int64_t Scheduler::pending_prefill_blocks() const {
  const LlamaContext& ctx = *ctx_;
  int64_t n = 0;
  for (const auto& a : running_)
    if (a && !a->done && a->prefilling)
      n += std::max<int64_t>(0, ctx.kv_blocks_for(int64_t(a->req.prompt.size())) - int64_t(ctx.seq_blocks(a->slot).size()));
  return n;
}

int64_t Scheduler::fit_positions(int slot, int64_t want, int64_t granted) {
  LlamaContext& ctx = *ctx_;
  for (;;) {
    if (ctx.kv_blocks_needed(slot, want) <= ctx.kv_blocks_free() - granted) return want;
    if (!evict_one_idle()) break;
  }
  int64_t lo = 0, hi = want;  // kv_blocks_needed grows with the positions: the most that fit
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (ctx.kv_blocks_needed(slot, mid) <= ctx.kv_blocks_free() - granted) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

void Scheduler::preempt(std::unique_ptr<Active>& v) {
  Active& a = *v;
  if (a.gen) {  // recomputed from the prompt and its tokens; the last one's logits come from that pass
    a.req.prompt.resize(size_t(a.prompt_len));
    const std::vector<int32_t>& toks = a.gen->result().tokens;
    a.req.prompt.insert(a.req.prompt.end(), toks.begin(), toks.end());
  }
  a.cont_pos = 0;  // a split option starts again from the prefix
  a.cont_score = LlamaContext::ContinuationScore{};
  truncate_slot(a.slot, 0);  // shared prefix blocks only drop a reference
  slot_used_[size_t(a.slot)] = 0;
  slot_idle_since_[size_t(a.slot)] = 0;
  a.slot = -1;
  const bool was_prefilling = a.prefilling;
  a.prefilling = a.started = a.waited = false;
  a.prefill_pos = a.embd_row = 0;
  a.preemptions++;
  std::lock_guard<std::mutex> lk(mu_);
  stats_.kv_preemptions++;
  if (was_prefilling) stats_.prefilling--;
  if (a.admitted) stats_.active--;
  a.admitted = false;
  waiting_.push_front(std::move(v));  // first in line again
  stats_.queued = int64_t(waiting_.size());
  publish_kv_stats();
}

void Scheduler::finish(std::unique_ptr<Active>& a) {
  if (a->slot >= 0) {
    slot_used_[size_t(a->slot)] = 0;
    slot_idle_since_[size_t(a->slot)] = ++idle_clock_;
    if (a->aborted()) truncate_slot(a->slot, 0);  // an aborted sequence's blocks go back to the pool
  }
  if (a->req.kind == SeqRequest::Kind::Generate) {
    if (a->gen && !a->gen->done()) a->gen->abort();  // dropped while preempted (abort, shutdown)
    if (a->gen) a->out.generated = a->gen->take_result();
    else if (!a->out.error) a->out.generated.reason = StopReason::Aborted;
  } else if (a->aborted() && !a->out.error) {
    a->out.aborted = true;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    aborts_.erase(a->id);
    if (a->admitted) stats_.active--;  // before on_done: a caller woken by it sees the slot free
    if (a->prefilling) stats_.prefilling--;
    publish_kv_stats();
  }
  if (a->req.on_done) {
    try {
      a->req.on_done(std::move(a->out));
    } catch (...) {  // a callback's failure is the caller's; the loop goes on
    }
  }
  a.reset();
}

void Scheduler::loop() {
  if (prefault_) {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      ctx_->prefault_memory();
    } catch (const Error&) {
      // Out of memory while faulting in (MADV_POPULATE_WRITE reports it): the pages come as
      // positions are written instead, as with prefault off; a real shortage fails that request.
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::lock_guard<std::mutex> lk(mu_);
    stats_.prefault_s = s;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    stats_.context_ready = true;
  }
  for (;;) {
    std::vector<std::unique_ptr<Active>> admitted, dropped;
    bool stopping;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !waiting_.empty() || !running_.empty(); });
      stopping = stopping_;
      // waiting requests that were aborted leave the queue; the others keep their order
      for (auto it = waiting_.begin(); it != waiting_.end();) {
        if (stopping || (*it)->aborted()) {
          dropped.push_back(std::move(*it));
          it = waiting_.erase(it);
        } else {
          ++it;
        }
      }
      size_t free_slots = size_t(n_seq_) - running_.size();
      while (!stopping && free_slots > 0 && !waiting_.empty()) {
        admitted.push_back(std::move(waiting_.front()));
        waiting_.pop_front();
        admitted.back()->admitted = true;
        stats_.active++;
        --free_slots;
      }
      stats_.queued = int64_t(waiting_.size());
    }
    for (auto& d : dropped) finish(d);
    if (stopping) {
      for (auto& a : running_) {
        if (a->gen) a->gen->abort();
        finish(a);
      }
      running_.clear();
      return;
    }
    // FIFO: once one waits for KV blocks, the later ones queue behind it
    std::vector<std::unique_ptr<Active>> requeue;
    for (auto& a : admitted) {
      if (!requeue.empty() || !admit(a)) requeue.push_back(std::move(a));
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto it = requeue.rbegin(); it != requeue.rend(); ++it) {
        (*it)->admitted = false;
        stats_.active--;
        waiting_.push_front(std::move(*it));
      }
      stats_.queued = int64_t(waiting_.size());
    }
    step();
    for (auto& a : running_)
      if (a && a->done) finish(a);
    running_.erase(std::remove(running_.begin(), running_.end(), nullptr), running_.end());
  }
}

bool Scheduler::admit(std::unique_ptr<Active>& a) {
  LlamaContext& ctx = *ctx_;
  try {
    if (a->aborted()) throw 0;  // caught below as an abort
    SeqRequest& r = a->req;
    const int64_t E = model_->hparams().n_embd;
    if (!a->prepared) {
      if (r.prepare) r.prepare(r);
      const int64_t n = int64_t(r.prompt.size());
      EMOLLM_CHECK_ARG(n > 0, "the prompt is empty");
      if (n > n_ctx_)
        throw Error(ErrorCode::InvalidArgument, "prompt of " + std::to_string(n) + " tokens does not fit the context of " +
                                                    std::to_string(n_ctx_) + " tokens");
      EMOLLM_CHECK_ARG(r.pos3.empty() || int64_t(r.pos3.size()) == n * 3, "pos3 must hold 3 positions per prompt token");
      // The prompt's ids are checked here, alone: its chunks share passes with other requests, and
      // a bad id found there would fail them all.
      const int64_t V = ctx.n_vocab();
      int64_t negatives = 0;
      for (int64_t i = 0; i < n; ++i) {
        const int32_t t = r.prompt[size_t(i)];
        if (t < 0) ++negatives;
        if (t >= V || (t < 0 && r.embd_floats() == 0))
          throw Error(ErrorCode::InvalidArgument, "prompt token id " + std::to_string(t) + " (at index " + std::to_string(i) +
                                                      ") is outside [0, " + std::to_string(V) + ")" +
                                                      (t < 0 ? " and no input embeddings were given" : ""));
      }
      if (negatives * E > r.embd_floats())
        throw Error(ErrorCode::InvalidArgument, "the prompt has " + std::to_string(negatives) + " embedding positions but " +
                                                    std::to_string(r.embd_floats() / E) + " embedding rows were given");
      if (r.kind == SeqRequest::Kind::Score) ctx.check_continuations(n, r.continuations);
      // A request whose worst case (prompt + max_tokens, or prefix + longest option, capped at
      // n_ctx) exceeds the whole pool could be stuck even alone: it fails now. Every other one,
      // alone, always fits, so the oldest running request always progresses.
      const int64_t need = ctx.kv_blocks_for(worst_positions(*a)), total = ctx.kv_stats().blocks_total;
      if (need > total)
        throw Error(ErrorCode::OutOfMemory, "the request needs up to " + std::to_string(worst_positions(*a)) +
                                                " KV positions (" + std::to_string(need) + " blocks of " +
                                                std::to_string(ctx.kv_block_size()) + "), more than the whole KV pool of " +
                                                std::to_string(total) + " blocks");
      a->prompt_len = n;
      a->prepared = true;
    }
    const int64_t n = int64_t(r.prompt.size());  // with a preempted generation's tokens
    // Optimistic admission: the prompt (a scoring request: its worst case, prefix + longest
    // option) and a watermark must fit the free blocks and idle caches beside what the prompts
    // being prefilled still need. Sequences then grow block by block; when a step runs out, the
    // most recently admitted one is preempted (step()). Alone, a request is always admitted.
    const bool alone = std::none_of(running_.begin(), running_.end(), [](const std::unique_ptr<Active>& b) { return b && !b->done; });
    const int64_t total = ctx.kv_stats().blocks_total;
    const int64_t prompt_blocks =
        ctx.kv_blocks_for(r.kind == SeqRequest::Kind::Score ? worst_positions(*a) : n);
    // (a pool that holds every slot's whole context never runs out: no watermark, nothing waits)
    const bool full_pool = total >= int64_t(n_seq_) * ctx.kv_blocks_for(n_ctx_);
    const int64_t watermark = full_pool ? 0 : total * kWatermarkPercent / 100;
    if (!alone && prompt_blocks + watermark + pending_prefill_blocks() > available_blocks()) {
      if (!a->kv_waited) {
        a->kv_waited = true;
        std::lock_guard<std::mutex> lk(mu_);
        stats_.kv_waits++;
      }
      return false;  // waits at the head of the queue for blocks
    }
    // the free slot that caches the longest prefix of the prompt; on a tie (typically no common
    // prefix at all) an empty slot, else the one idle the longest, so that a new prompt does not
    // drop the cache a recent call left (a scoring after the logits() of its prompt) while another
    // slot has nothing worth keeping
    int slot = -1;
    int64_t own = -1;
    auto older = [&](int s, int t) {
      const bool se = ctx.seq_n_past(s) == 0, te = ctx.seq_n_past(t) == 0;
      return se != te ? se : slot_idle_since_[size_t(s)] < slot_idle_since_[size_t(t)];
    };
    for (int s = 0; s < n_seq_; ++s) {
      if (slot_used_[size_t(s)]) continue;
      const int64_t c = ctx.seq_common_prefix(s, r.prompt.data(), n);
      if (c > own || (c == own && older(s, slot))) {
        own = c;
        slot = s;
      }
    }
    if (slot < 0) throw Error(ErrorCode::Internal, "scheduler: no free slot at admission");
    slot_used_[size_t(slot)] = 1;
    truncate_slot(slot, own);
    a->slot = slot;
    a->prefilling = true;
    {
      std::lock_guard<std::mutex> lk(mu_);
      stats_.prefilling++;
    }
    if (chunked_) {  // its chunks run in the step passes
      insert_running(std::move(a));
      return true;
    }
    // unchunked: the whole prompt now, in its own passes (idle caches give way first; the
    // admission check above left it enough blocks)
    start_prefill(*a, false);
    if (a->prefilling) {  // (not when the whole prompt was cached with its logits)
      const int64_t rest = n - a->prefill_pos;
      fit_positions(slot, rest, 0);
      const float* logits = nullptr;
      const int64_t n_pos3 = int64_t(r.pos3.size()) / 3;
      if (n_pos3 > a->prefill_pos && n_pos3 < n) {  // a resumed M-RoPE generation: prompt positions, then its tokens
        logits = ctx.seq_eval(slot, r.prompt.data() + a->prefill_pos, n_pos3 - a->prefill_pos, nullptr, a->abort.get(),
                              r.embd_floats() == 0 ? nullptr : r.embd_rows() + a->embd_row * E, r.pos3.data() + a->prefill_pos * 3);
        if (logits) logits = ctx.seq_eval(slot, r.prompt.data() + n_pos3, n - n_pos3, nullptr, a->abort.get());
      } else {
        logits = ctx.seq_eval(slot, r.prompt.data() + a->prefill_pos, rest, nullptr, a->abort.get(),
                              r.embd_floats() == 0 ? nullptr : r.embd_rows() + a->embd_row * E,
                              n_pos3 > a->prefill_pos ? r.pos3.data() + a->prefill_pos * 3 : nullptr);
      }
      {
        std::lock_guard<std::mutex> lk(mu_);
        stats_.prefill_chunks += (rest + ctx.n_batch() - 1) / ctx.n_batch();
        stats_.prefill_tokens += rest;
      }
      if (!logits) throw 0;  // aborted
      a->prefill_pos = n;
      begin(*a, logits);
    }
  } catch (int) {
    a->done = true;
  } catch (...) {
    a->out.error = std::current_exception();
    a->done = true;
  }
  if (a->done) finish(a);
  else insert_running(std::move(a));
  return true;
}

int64_t Scheduler::worst_positions(const Active& a) const {
  const SeqRequest& r = a.req;
  const int64_t n = a.prepared ? a.prompt_len : int64_t(r.prompt.size());
  if (r.kind == SeqRequest::Kind::Generate) return std::min(n_ctx_, n + std::max<int64_t>(0, r.params.max_tokens));
  int64_t worst = n;
  for (const auto& c : r.continuations) worst = std::max(worst, n + int64_t(c.size()) - 1);
  return worst;
}

void Scheduler::insert_running(std::unique_ptr<Active> a) {
  // running_ stays in submission order (a re-admitted preempted request keeps its place): the
  // oldest sequences get their blocks first and the newest are preempted first
  const uint64_t id = a->id;
  auto at = std::find_if(running_.begin(), running_.end(),
                         [id](const std::unique_ptr<Active>& b) { return b && b->id > id; });
  running_.insert(at, std::move(a));
}

// Settles where the prompt's evaluation starts: after the longest prefix its own slot caches,
// or (copied once) another slot caches; the last prompt token is always evaluated, for its
// logits. With may_wait, returns false instead while an OLDER prompt still being prefilled
// shares a longer prefix with this one (by kMinSharedWait positions or more) than any slot
// caches now: those positions are copied once it has them (requests admitted together share
// their image + question prefix).
bool Scheduler::start_prefill(Active& a, bool may_wait) {
  LlamaContext& ctx = *ctx_;
  const std::vector<int32_t>& p = a.req.prompt;
  const int64_t n = int64_t(p.size());
  // The whole prompt cached with its last position's logits (in this slot or another): nothing to
  // evaluate. The request starts from those logits, as it would from its own pass over them.
  const int full = slot_with_logits(p, a.slot);
  if (full >= 0) {
    copy_slot_prefix(full, a.slot, n);
    a.prefill_pos = n;
    a.embd_row = image_rows(p, n);
    a.started = true;
    {
      std::lock_guard<std::mutex> lk(mu_);
      stats_.prefills++;
      stats_.reused_tokens += n;
      stats_.reused_logits++;
      if (full != a.slot) stats_.prefix_copies++;
    }
    begin(a, tail_logits_[size_t(a.slot)].data());
    return true;
  }
  const int64_t own = ctx.seq_common_prefix(a.slot, p.data(), n);
  int src = -1;
  int64_t best = own;
  for (int s = 0; s < n_seq_; ++s) {
    if (s == a.slot) continue;
    const int64_t c = ctx.seq_common_prefix(s, p.data(), n);
    if (c > best) {
      best = c;
      src = s;
    }
  }
  const int64_t keep = std::min(best, n - 1);
  if (may_wait) {
    for (const auto& bp : running_) {
      const Active* b = bp.get();
      if (b == &a) break;  // older ones only (running_ is in admission order): no cycles
      if (!b || b->done || !b->prefilling) continue;
      const std::vector<int32_t>& q = b->req.prompt;
      const int64_t lim = std::min(n, int64_t(q.size()));
      int64_t c = 0;
      while (c < lim && q[size_t(c)] == p[size_t(c)]) ++c;
      if (std::min(c, n - 1) >= keep + kMinSharedWait) {
        if (!a.waited) {
          a.waited = true;
          std::lock_guard<std::mutex> lk(mu_);
          stats_.prefix_waits++;
        }
        return false;
      }
    }
  }
  if (src >= 0 && keep > own) copy_slot_prefix(src, a.slot, keep);
  else truncate_slot(a.slot, keep);
  a.prefill_pos = keep;
  a.embd_row = image_rows(p, keep);
  a.started = true;
  std::lock_guard<std::mutex> lk(mu_);
  stats_.prefills++;
  if (a.preemptions > 0) stats_.kv_recomputed_tokens += n - keep;
  if (src >= 0 && keep > own) stats_.prefix_copies++;
  stats_.reused_tokens += keep;
  return true;
}

// The prompt is in (`logits`: its last token's): a generation samples its first token, a
// scoring keeps the prefix's logits for its options.
void Scheduler::begin(Active& a, const float* logits) {
  LlamaContext& ctx = *ctx_;
  const int64_t V = ctx.n_vocab();
  SeqRequest& r = a.req;
  a.prefilling = false;
  {
    std::lock_guard<std::mutex> lk(mu_);
    stats_.prefilling--;
  }
  // kept for a later request with exactly this prompt (the slot caches it: n_past == its length)
  float* const kept = a.slot >= 0 ? tail_logits_[size_t(a.slot)].data() : nullptr;
  if (logits && a.slot >= 0 && logits != kept && ctx.seq_n_past(a.slot) == int64_t(r.prompt.size())) {
    tail_len_[size_t(a.slot)] = int64_t(r.prompt.size());
    tail_logits_[size_t(a.slot)].assign(logits, logits + V);
  }
  switch (r.kind) {
    case SeqRequest::Kind::Generate:
      // a preempted generation goes on with its own generator (sampler RNG, repetition history,
      // tokens so far: nothing is delivered twice); the recomputed pass's last row is the logits
      // its pending token's decode would have given
      if (!a.gen) a.gen = std::make_unique<SequenceGenerator>(*model_, V, n_ctx_, r.prompt, r.params);
      a.next_token = a.gen->step(logits, a.aborted(), ctx.seq_n_past(a.slot), r.on_token);
      a.done = a.next_token < 0;
      break;
    case SeqRequest::Kind::Score:
      if (logits && a.prefix_logits.empty()) a.prefix_logits.assign(logits, logits + V);  // kept across a preemption
      a.done = !logits || r.continuations.empty();
      break;
    case SeqRequest::Kind::Logits:
      if (logits && r.logits_out) std::copy(logits, logits + V, r.logits_out);
      else if (logits) a.out.logits.assign(logits, logits + V);
      a.done = true;
      break;
  }
}

// One batched forward pass for the step, at most n_batch rows: a row for every generating
// sequence's next token; for every scoring sequence, the rows of its next option (all their
// logits; options of one token need no pass, the prefix's logits score them); then chunks of the
// prompts being prefilled, oldest first, with what is left. Option rows past the budget wait for
// the next step; an option longer than the whole budget is evaluated in chunks over several steps
// (like a prompt: each takes what the step has left after the decode rows), its positions staying
// cached after the prefix until its last chunk, then truncated back.
void Scheduler::step() {
  LlamaContext& ctx = *ctx_;
  const int64_t V = ctx.n_vocab(), E = model_->hparams().n_embd, budget = ctx.n_batch();
  // KV blocks, oldest first: every generating / scoring sequence's rows of this step get theirs
  // before any prompt chunk; when the pool (after the idle caches) has none left, the newest
  // running sequence is preempted, which may be the one asking.
  int64_t granted = 0;  // blocks the rows placed so far take in this pass
  for (auto& ap : running_)  // aborted ones end now and give their blocks back before anyone is preempted
    if (!ap->done && ap->aborted()) {
      if (ap->gen) ap->gen->abort();
      ap->done = true;
      truncate_slot(ap->slot, 0);
    }
  for (size_t i = 0; i < running_.size(); ++i) {
    Active* a = running_[i].get();
    if (!a || a->done || a->aborted() || a->prefilling) continue;
    int64_t want = 0;
    if (a->req.kind == SeqRequest::Kind::Generate) {
      want = a->next_token >= 0 ? 1 : 0;
    } else {
      const auto& conts = a->req.continuations;
      size_t k = a->next_cont;
      while (k < conts.size() && conts[k].size() <= 1) ++k;
      if (k < conts.size()) want = std::min(int64_t(conts[k].size()) - 1 - a->cont_pos, budget);
    }
    if (want == 0) continue;
    const int64_t need = ctx.kv_blocks_needed(a->slot, want);
    while (need > ctx.kv_blocks_free() - granted && !evict_one_idle()) {
      size_t v = running_.size();
      while (v > 0 && (!running_[v - 1] || running_[v - 1]->done)) --v;
      preempt(running_[v - 1]);  // v - 1 >= i: a itself is live
      if (v - 1 == i) break;
    }
    if (running_[i]) granted += need;
  }
  running_.erase(std::remove(running_.begin(), running_.end(), nullptr), running_.end());
  std::vector<LlamaBatchSegment> segs;
  std::vector<Active*> who;
  int64_t rows = 0, prompt_rows = 0, chunks = 0;
  std::vector<Active*> prefill;  // in admission order
  // decode rows still to be placed: a split option leaves them room (every generating sequence
  // gets its row each step)
  int64_t decode_left = 0;
  for (const auto& ap : running_)
    if (!ap->done && !ap->aborted() && !ap->prefilling && ap->req.kind == SeqRequest::Kind::Generate &&
        ap->next_token >= 0)
      ++decode_left;
  const bool forks = score_forks();
  for (auto& ap : running_) {
    Active* a = ap.get();
    if (a->done) continue;
    if (a->aborted()) {
      if (a->gen) a->gen->abort();
      a->done = true;
      continue;
    }
    if (a->prefilling) {
      prefill.push_back(a);
      continue;
    }
    if (a->req.kind == SeqRequest::Kind::Generate) {
      if (a->next_token < 0 || rows + 1 > budget) continue;
      segs.push_back(LlamaBatchSegment{a->slot, &a->next_token, 1, false});
      who.push_back(a);
      rows += 1;
      --decode_left;
      continue;
    }
    // scoring: options of 0 or 1 token are scored from the prefix logits alone
    const auto& conts = a->req.continuations;
    while (a->next_cont < conts.size() && conts[a->next_cont].size() <= 1) {
      a->out.scores.push_back(prefix_score(a->prefix_logits, V, conts[a->next_cont]));
      a->next_cont++;
    }
    if (a->next_cont == conts.size()) {
      a->done = true;
      continue;
    }
    const auto& c = conts[a->next_cont];
    const int64_t m = int64_t(c.size()) - 1;
    if (m > budget) {  // longer than a pass: chunks inside the step passes, with what is left
      const int64_t take = std::min(m - a->cont_pos, budget - rows - decode_left);
      if (take <= 0) continue;
      segs.push_back(LlamaBatchSegment{a->slot, c.data() + a->cont_pos, take, true});
      who.push_back(a);
      rows += take;
      continue;
    }
    if (rows + m > budget) continue;
    if (forks) {
      // The options from next_cont on that fit this pass side by side, each a fork of the cached
      // prefix: the first within the rows checked above, the others within the rows the decode
      // rows still to be placed leave; all within the free blocks beyond the grants (the first
      // loop granted this sequence its first option's blocks in place: kv_blocks_needed).
      const int64_t spare = ctx.kv_blocks_free() - granted + ctx.kv_blocks_needed(a->slot, m);
      std::vector<uint8_t> sel;
      int64_t frows = 0, fblocks = 0, nf = 0;
      for (size_t k = a->next_cont; k < conts.size(); ++k) {
        const int64_t mk = int64_t(conts[k].size()) - 1;
        if (mk <= 0) {
          sel.push_back(0);
          continue;
        }
        const int64_t bk = ctx.kv_blocks_needed_fork(a->slot, mk);
        if ((nf > 0 && rows + frows + mk + decode_left > budget) || mk > budget - rows - frows || fblocks + bk > spare) break;
        sel.push_back(1);
        frows += mk;
        fblocks += bk;
        ++nf;
      }
      if (nf >= 2) {  // one option alone runs in place (no copy of the prefix's last block)
        while (!sel.empty() && sel.back() == 0) sel.pop_back();  // scored at the next step, with no pass
        for (size_t k = 0; k < sel.size(); ++k) {
          if (!sel[k]) continue;
          const auto& ck = conts[a->next_cont + k];
          segs.push_back(LlamaBatchSegment{a->slot, ck.data(), int64_t(ck.size()) - 1, true, nullptr, nullptr, true});
          who.push_back(a);
        }
        a->fork_opts = std::move(sel);
        a->fork_at = 0;
        rows += frows;
        granted += fblocks - ctx.kv_blocks_needed(a->slot, m);
        continue;
      }
    }
    segs.push_back(LlamaBatchSegment{a->slot, c.data(), m, true});
    who.push_back(a);
    rows += m;
  }
  const int64_t other_rows = rows;
  bool starved = false;  // a prompt chunk found no free block
  for (Active* a : prefill) {
    if (rows >= budget) break;
    try {
      if (!a->started && !start_prefill(*a, true)) continue;  // waits for an older prompt's prefix
    } catch (...) {
      a->out.error = std::current_exception();
      a->done = true;
      continue;
    }
    if (!a->prefilling) continue;  // its whole prompt was cached with its logits: begun, no rows
    const SeqRequest& r = a->req;
    int64_t take = std::min(int64_t(r.prompt.size()) - a->prefill_pos, budget - rows);
    // a resumed M-RoPE generation: its prompt's given positions and its tokens in separate chunks
    const int64_t n_pos3 = int64_t(r.pos3.size()) / 3;
    if (a->prefill_pos < n_pos3) take = std::min(take, n_pos3 - a->prefill_pos);
    take = fit_positions(a->slot, take, granted);  // as much of the chunk as the free blocks hold
    if (take == 0) {
      starved = true;
      continue;
    }
    granted += ctx.kv_blocks_needed(a->slot, take);
    LlamaBatchSegment sg{a->slot, r.prompt.data() + a->prefill_pos, take, false};
    if (r.embd_floats() > 0) sg.embd = r.embd_rows() + a->embd_row * E;
    if (a->prefill_pos < n_pos3) sg.pos3 = r.pos3.data() + a->prefill_pos * 3;
    segs.push_back(sg);
    who.push_back(a);
    rows += take;
    prompt_rows += take;
    chunks++;
  }
  if (segs.empty()) {
    // Prompts starved of blocks that only sequences making no progress hold: the newest gives
    // them back (a sequence alone always fits: its worst case was checked against the pool).
    if (starved) {
      size_t live = 0;
      for (const auto& ap : running_) live += ap && !ap->done ? 1 : 0;
      if (live >= 2) {
        for (size_t v = running_.size(); v-- > 0;)
          if (!running_[v]->done) {
            preempt(running_[v]);
            break;
          }
        running_.erase(std::remove(running_.begin(), running_.end(), nullptr), running_.end());
      } else {
        for (auto& ap : running_)
          if (!ap->done) {
            ap->out.error = std::make_exception_ptr(Error(ErrorCode::Internal, "scheduler: a sequence alone found no free KV block"));
            ap->done = true;
          }
      }
    }
    return;
  }
  const int64_t n_segs = int64_t(segs.size());
  step_logits_.resize(size_t(LlamaContext::batch_output_rows(segs.data(), n_segs) * V));
  bool ok = false;
  try {
    ok = ctx.eval_batch(segs.data(), n_segs, step_logits_.data(), &stop_);
  } catch (...) {
    for (Active* a : who) {
      a->out.error = std::current_exception();
      if (a->gen) a->gen->abort();
      a->done = true;
    }
    return;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    stats_.steps++;
    publish_kv_stats();
    if (n_segs > 1) stats_.batched_steps++;
    stats_.max_batch = std::max(stats_.max_batch, n_segs);
    stats_.decoded_tokens += other_rows;
    stats_.prefill_chunks += chunks;
    stats_.prefill_tokens += prompt_rows;
    if (prompt_rows > 0 && other_rows > 0) stats_.mixed_steps++;
    stats_.step_rows += rows;
    stats_.last_step_rows = rows;
    stats_.max_step_rows = std::max(stats_.max_step_rows, rows);
  }
  const float* out = step_logits_.data();
  for (int64_t i = 0; i < n_segs; ++i) {
    Active* a = who[size_t(i)];
    const LlamaBatchSegment& sg = segs[size_t(i)];
    if (a->prefilling) {  // a prompt chunk: one output row, its last token's logits
      if (!ok) {
        a->done = true;
      } else {
        for (int64_t j = 0; j < sg.n; ++j)
          if (sg.tokens[j] < 0) a->embd_row++;
        a->prefill_pos += sg.n;
        if (a->prefill_pos == int64_t(a->req.prompt.size())) begin(*a, out);
      }
      out += V;
      continue;
    }
    if (a->req.kind == SeqRequest::Kind::Generate) {
      a->next_token = a->gen->step(ok ? out : nullptr, a->aborted(), ctx.seq_n_past(a->slot), a->req.on_token);
      a->done = a->next_token < 0;
      out += V;
      continue;
    }
    if (sg.fork) {  // one option of several side by side (fork_opts), in option order
      out += sg.n * V;
      if (!ok) {
        a->done = true;
        continue;
      }
      const auto& conts = a->req.continuations;
      auto& fo = a->fork_opts;
      for (; fo[a->fork_at] == 0; ++a->fork_at)  // options of 0 or 1 token before this one
        a->out.scores.push_back(prefix_score(a->prefix_logits, V, conts[a->next_cont++]));
      const auto& c = conts[a->next_cont++];
      ++a->fork_at;
      const float* rows_out = out - sg.n * V;
      LlamaContext::ContinuationScore sc;
      sc.token_logprobs.push_back(log_softmax_at(a->prefix_logits.data(), V, c[0]));
      for (int64_t j = 1; j < int64_t(c.size()); ++j)
        sc.token_logprobs.push_back(log_softmax_at(rows_out + (j - 1) * V, V, c[size_t(j)]));
      for (double lp : sc.token_logprobs) sc.logprob += lp;
      a->out.scores.push_back(std::move(sc));
      if (a->fork_at == fo.size()) {  // its last fork (fork_opts ends with one)
        fo.clear();
        a->done = a->next_cont == conts.size();
      }
      continue;
    }
    const auto& c = a->req.continuations[a->next_cont];
    if (ok && int64_t(c.size()) - 1 > budget) {  // a chunk of a split option
      LlamaContext::ContinuationScore& sc = a->cont_score;
      if (a->cont_pos == 0) {
        sc = LlamaContext::ContinuationScore{};
        sc.token_logprobs.push_back(log_softmax_at(a->prefix_logits.data(), V, c[0]));
      }
      // row j is option token cont_pos + j; its logits score the token after it
      for (int64_t j = 0; j < sg.n; ++j)
        sc.token_logprobs.push_back(log_softmax_at(out + j * V, V, c[size_t(a->cont_pos + j + 1)]));
      a->cont_pos += sg.n;
      if (a->cont_pos == int64_t(c.size()) - 1) {
        for (double lp : sc.token_logprobs) sc.logprob += lp;
        a->out.scores.push_back(std::move(sc));
        truncate_slot(a->slot, ctx.seq_n_past(a->slot) - a->cont_pos);  // back to the prefix
        a->cont_pos = 0;
        a->done = ++a->next_cont == a->req.continuations.size();
      }
    } else if (!ok) {
      a->done = true;
    } else {
      LlamaContext::ContinuationScore sc;
      sc.token_logprobs.push_back(log_softmax_at(a->prefix_logits.data(), V, c[0]));
      for (int64_t j = 1; j < int64_t(c.size()); ++j) sc.token_logprobs.push_back(log_softmax_at(out + (j - 1) * V, V, c[size_t(j)]));
      for (double lp : sc.token_logprobs) sc.logprob += lp;
      a->out.scores.push_back(std::move(sc));
      truncate_slot(a->slot, ctx.seq_n_past(a->slot) - sg.n);  // back to the prefix
      a->done = ++a->next_cont == a->req.continuations.size();
    }
    out += sg.n * V;
  }
}

}  // namespace emollm
