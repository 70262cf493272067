// The continuous-batching step loop (see scheduler.h for the design).
#include "model/scheduler.h"

#include <algorithm>

#include "base/error.h"

namespace emollm {

namespace {
// A prompt waits for an older prompt's prefill only when that saves at least this many positions:
// for a few tokens, computing them beside it costs less than the steps of waiting.
constexpr int64_t kMinSharedWait = 16;
}  // namespace

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
  int64_t kv_reserve = 0; // blocks reserved for its worst case (released in finish)
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
  ctx_ = std::make_unique<LlamaContext>(model_, co);
  n_ctx_ = ctx_->n_ctx();
  n_seq_ = opts.n_seq;
  chunked_ = opts.chunked_prefill;
  slot_used_.assign(size_t(n_seq_), 0);
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
  stats_.kv_bytes_per_block = k.bytes_per_block;
  stats_.kv_reserved_blocks = kv_reserved_;
}

void Scheduler::evict_idle(const std::vector<int32_t>& prompt) {
  LlamaContext& ctx = *ctx_;
  std::vector<std::pair<int64_t, int>> idle;  // (common prefix, slot)
  int64_t held = 0;
  for (int s = 0; s < n_seq_; ++s)
    if (!slot_used_[size_t(s)] && !ctx.seq_blocks(s).empty()) {
      idle.emplace_back(ctx.seq_common_prefix(s, prompt.data(), int64_t(prompt.size())), s);
      held += int64_t(ctx.seq_blocks(s).size());
    }
  std::sort(idle.begin(), idle.end());
  const int64_t total = ctx.kv_stats().blocks_total;
  for (const auto& e : idle) {
    if (kv_reserved_ + held <= total) break;
    held -= int64_t(ctx.seq_blocks(e.second).size());
    ctx.seq_truncate(e.second, 0);
  }
}

void Scheduler::finish(std::unique_ptr<Active>& a) {
  if (a->slot >= 0) {
    slot_used_[size_t(a->slot)] = 0;
    if (a->aborted()) ctx_->seq_truncate(a->slot, 0);  // an aborted sequence's blocks go back to the pool
  }
  kv_reserved_ -= a->kv_reserve;
  a->kv_reserve = 0;
  if (a->req.kind == SeqRequest::Kind::Generate) {
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
  for (;;) {
    std::vector<std::unique_ptr<Active>> admitted, dropped;
    bool stopping;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stopping_ || !waiting_.empty() || !running_.empty() || kv_pending_; });
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
      if (kv_pending_ && (stopping || kv_pending_->aborted())) dropped.push_back(std::move(kv_pending_));
      // a request waiting for KV blocks goes first (FIFO): nothing is admitted past it
      size_t free_slots = size_t(n_seq_) - running_.size();
      if (kv_pending_ && free_slots > 0) {
        admitted.push_back(std::move(kv_pending_));
        --free_slots;
      }
      while (!stopping && free_slots > 0 && !waiting_.empty() && !kv_pending_) {
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
    std::vector<std::unique_ptr<Active>> requeue;
    for (auto& a : admitted) {
      if (kv_pending_) {  // an earlier one of this batch waits for blocks: the later ones queue behind it
        requeue.push_back(std::move(a));
        continue;
      }
      admit(std::move(a));
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto it = requeue.rbegin(); it != requeue.rend(); ++it) {
        (*it)->admitted = false;
        stats_.active--;
        waiting_.push_front(std::move(*it));
      }
      stats_.queued = int64_t(waiting_.size()) + (kv_pending_ ? 1 : 0);
    }
    step();
    for (auto& a : running_)
      if (a->done) finish(a);
    running_.erase(std::remove(running_.begin(), running_.end(), nullptr), running_.end());
  }
}

void Scheduler::admit(std::unique_ptr<Active> a) {
  LlamaContext& ctx = *ctx_;
  try {
    if (a->aborted()) throw 0;  // caught below as an abort
    SeqRequest& r = a->req;
    if (r.prepare && !a->prepared) r.prepare(r);
    a->prepared = true;
    const int64_t n = int64_t(r.prompt.size());
    EMOLLM_CHECK_ARG(n > 0, "the prompt is empty");
    if (n > n_ctx_)
      throw Error(ErrorCode::InvalidArgument, "prompt of " + std::to_string(n) + " tokens does not fit the context of " +
                                                  std::to_string(n_ctx_) + " tokens");
    EMOLLM_CHECK_ARG(r.pos3.empty() || int64_t(r.pos3.size()) == n * 3, "pos3 must hold 3 positions per prompt token");
    // The prompt's ids are checked here, alone: its chunks share passes with other requests, and
    // a bad id found there would fail them all.
    const int64_t V = ctx.n_vocab(), E = model_->hparams().n_embd;
    int64_t negatives = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int32_t t = r.prompt[size_t(i)];
      if (t < 0) ++negatives;
      if (t >= V || (t < 0 && r.embd.empty()))
        throw Error(ErrorCode::InvalidArgument, "prompt token id " + std::to_string(t) + " (at index " + std::to_string(i) +
                                                    ") is outside [0, " + std::to_string(V) + ")" +
                                                    (t < 0 ? " and no input embeddings were given" : ""));
    }
    if (negatives * E > int64_t(r.embd.size()))
      throw Error(ErrorCode::InvalidArgument, "the prompt has " + std::to_string(negatives) + " embedding positions but " +
                                                  std::to_string(int64_t(r.embd.size()) / E) + " embedding rows were given");
    if (r.kind == SeqRequest::Kind::Score) ctx.check_continuations(n, r.continuations);
    // KV admission control: the worst case of its positions must fit beside the running ones'
    int64_t worst = n;
    if (r.kind == SeqRequest::Kind::Generate) {
      worst = std::min(n_ctx_, n + std::max<int64_t>(0, r.params.max_tokens));
    } else {
      for (const auto& c : r.continuations) worst = std::max(worst, n + int64_t(c.size()) - 1);
    }
    const int64_t need = ctx.kv_blocks_for(worst), total = ctx.kv_stats().blocks_total;
    if (need > total)
      throw Error(ErrorCode::OutOfMemory, "the request needs up to " + std::to_string(worst) + " KV positions (" +
                                              std::to_string(need) + " blocks of " + std::to_string(ctx.kv_block_size()) +
                                              "), more than the whole KV pool of " + std::to_string(total) + " blocks");
    if (kv_reserved_ + need > total) {  // waits at the head of the queue for running requests to finish
      if (!a->kv_waited) {
        a->kv_waited = true;
        std::lock_guard<std::mutex> lk(mu_);
        stats_.kv_waits++;
      }
      kv_pending_ = std::move(a);
      return;
    }
    a->kv_reserve = need;
    kv_reserved_ += need;
    evict_idle(r.prompt);
    // the free slot that caches the longest prefix of the prompt
    int slot = -1;
    int64_t own = -1;
    for (int s = 0; s < n_seq_; ++s) {
      if (slot_used_[size_t(s)]) continue;
      const int64_t c = ctx.seq_common_prefix(s, r.prompt.data(), n);
      if (c > own) {
        own = c;
        slot = s;
      }
    }
    if (slot < 0) throw Error(ErrorCode::Internal, "scheduler: no free slot at admission");
    slot_used_[size_t(slot)] = 1;
    ctx.seq_truncate(slot, own);  // its table stays within the reservation (later positions are never reused)
    a->slot = slot;
    a->prefilling = true;
    {
      std::lock_guard<std::mutex> lk(mu_);
      stats_.prefilling++;
    }
    if (chunked_) {  // its chunks run in the step passes
      running_.push_back(std::move(a));
      return;
    }
    // unchunked: the whole prompt now, in its own passes
    start_prefill(*a, false);
    const int64_t rest = n - a->prefill_pos;
    const float* logits = ctx.seq_eval(slot, r.prompt.data() + a->prefill_pos, rest, nullptr, a->abort.get(),
                                       r.embd.empty() ? nullptr : r.embd.data() + a->embd_row * E,
                                       r.pos3.empty() ? nullptr : r.pos3.data() + a->prefill_pos * 3);
    {
      std::lock_guard<std::mutex> lk(mu_);
      stats_.prefill_chunks += (rest + ctx.n_batch() - 1) / ctx.n_batch();
      stats_.prefill_tokens += rest;
    }
    if (!logits) throw 0;  // aborted
    a->prefill_pos = n;
    begin(*a, logits);
  } catch (int) {
    a->done = true;
  } catch (...) {
    a->out.error = std::current_exception();
    a->done = true;
  }
  if (a->done) finish(a);
  else running_.push_back(std::move(a));
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
  if (src >= 0 && keep > own) ctx.seq_copy_prefix(src, a.slot, keep);
  else ctx.seq_truncate(a.slot, keep);
  a.prefill_pos = keep;
  a.embd_row = 0;
  for (int64_t i = 0; i < keep; ++i)
    if (p[size_t(i)] < 0) ++a.embd_row;
  a.started = true;
  std::lock_guard<std::mutex> lk(mu_);
  stats_.prefills++;
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
  switch (r.kind) {
    case SeqRequest::Kind::Generate:
      a.gen = std::make_unique<SequenceGenerator>(*model_, V, n_ctx_, r.prompt, r.params);
      a.next_token = a.gen->step(logits, a.aborted(), ctx.seq_n_past(a.slot), r.on_token);
      a.done = a.next_token < 0;
      break;
    case SeqRequest::Kind::Score:
      if (logits) a.prefix_logits.assign(logits, logits + V);
      a.done = !logits || r.continuations.empty();
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
      LlamaContext::ContinuationScore sc;
      if (!conts[a->next_cont].empty()) {
        sc.token_logprobs.push_back(log_softmax_at(a->prefix_logits.data(), V, conts[a->next_cont][0]));
        sc.logprob = sc.token_logprobs[0];
      }
      a->out.scores.push_back(std::move(sc));
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
    segs.push_back(LlamaBatchSegment{a->slot, c.data(), m, true});
    who.push_back(a);
    rows += m;
  }
  const int64_t other_rows = rows;
  for (Active* a : prefill) {
    if (rows >= budget) break;
    try {
      if (!a->started && !start_prefill(*a, true)) continue;  // waits for an older prompt's prefix
    } catch (...) {
      a->out.error = std::current_exception();
      a->done = true;
      continue;
    }
    const SeqRequest& r = a->req;
    const int64_t take = std::min(int64_t(r.prompt.size()) - a->prefill_pos, budget - rows);
    LlamaBatchSegment sg{a->slot, r.prompt.data() + a->prefill_pos, take, false};
    if (!r.embd.empty()) sg.embd = r.embd.data() + a->embd_row * E;
    if (!r.pos3.empty()) sg.pos3 = r.pos3.data() + a->prefill_pos * 3;
    segs.push_back(sg);
    who.push_back(a);
    rows += take;
    prompt_rows += take;
    chunks++;
  }
  if (segs.empty()) return;
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
        ctx.seq_truncate(a->slot, ctx.seq_n_past(a->slot) - a->cont_pos);  // back to the prefix
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
      ctx.seq_truncate(a->slot, ctx.seq_n_past(a->slot) - sg.n);  // back to the prefix
      a->done = ++a->next_cont == a->req.continuations.size();
    }
    out += sg.n * V;
  }
}

}  // namespace emollm
