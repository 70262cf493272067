// Concurrent sequences of one model for JavaScript: a thin layer over the core's Scheduler
// (native/model/scheduler.h), which owns the KV slots, the queue and the batched step loop.
//
//   model.createBatch({ nCtx?, maxSequences?, batchTokens?, chunkedPrefill? }) -> Batch
//       batchTokens: the step's token budget (SchedulerOptions::n_batch; 0 or absent = default);
//       chunkedPrefill (default true): prompts in chunks inside the steps, beside decoding sequences
//   batch.generate(prompt: Int32Array, opts, onTokens?, images?) -> { id, promise }
//       promise -> { tokens: Int32Array, stopReason }   (opts as ctx.generate: read_generate_params)
//   batch.score(prefix: Int32Array, images | null, continuations: Int32Array[]) -> { id, promise }
//       promise -> { logprobs: number[], tokenLogprobs: Float64Array[] }; rejects ERR_ABORTED when aborted
//   batch.logits(prompt: Int32Array, images | null) -> { id, promise }
//       promise -> Float32Array [nVocab], the prompt's last position's logits; the prompt stays
//       cached in its slot (a scoring or generation of it starts from there); ERR_ABORTED when aborted
//   batch.abort(id)       aborts that request only (waiting: it leaves the queue; running: next step)
//   batch.stats()         { maxSequences, batchTokens, chunkedPrefill, active, prefilling, queued, steps,
//                           batchedSteps, maxBatch, decodedTokens, prefills, prefillChunks, prefillTokens,
//                           mixedSteps, stepRows, lastStepRows, maxStepRows, prefixCopies, prefixWaits,
//                           reusedTokens, reusedLogits, kv* }
//   batch.close() -> Promise<void>   aborts everything; resolves once the native memory is released
//   batch.nCtx, batch.maxSequences
//
// Threads: nothing here blocks the event loop. Token arguments are copied on the main thread;
// image features are not: the request reads the caller's Float32Array in place on the scheduler
// thread (FeatureArg: its bridge holds the reference until the request settles), where the image
// splicing runs too (the request's prepare hook); tokens and the outcome come
// back per request through one thread-safe function, batched like ctx.generate's (a delivery
// hands over everything queued since the last one).
#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/scheduler.h"
#include "model_handle.h"
#include "napi_util.h"

namespace emollm::addon {

struct BatchState {
  std::shared_ptr<ModelHandle> owner;
  std::shared_ptr<LlamaModel> model;
  std::shared_ptr<LlavaModel> llava;
  std::shared_ptr<EmollmModel> emollm;
  std::shared_ptr<Qwen2VLModel> qwen;
  std::unique_ptr<Scheduler> sched;
  int inflight = 0;  // requests whose promise has not settled
  bool closed = false;
  std::vector<Napi::Promise::Deferred> close_waiters;
};

namespace {

std::mutex g_batch_ctor_mutex;
std::unordered_map<napi_env, Napi::FunctionReference*> g_batch_ctors;
thread_local std::shared_ptr<BatchState>* tl_new_batch = nullptr;

// Frees the scheduler (its thread has nothing left to run) once no request is in flight.
void release_batch(Napi::Env env, BatchState& b) {
  if (b.inflight > 0) return;
  b.sched.reset();  // joins the scheduler thread: shut down and idle, it returns at once
  b.model.reset();
  b.llava.reset();
  b.emollm.reset();
  b.qwen.reset();
  resolve_all(env, b.close_waiters);
}

// One request on its way between the scheduler thread and JavaScript.
struct SeqBridge : std::enable_shared_from_this<SeqBridge> {
  std::mutex mu;
  std::vector<int32_t> pending;  // tokens not yet delivered
  bool scheduled = false;        // a delivery is queued on the thread-safe function
  bool done = false;             // the outcome arrived
  SeqOutcome outcome;
  // main thread only
  SeqRequest::Kind kind = SeqRequest::Kind::Generate;
  uint64_t id = 0;
  bool settled = false;
  bool js_failed = false;
  Napi::ObjectReference js_error;
  Napi::FunctionReference on_tokens;
  Napi::Promise::Deferred deferred;
  std::shared_ptr<BatchState> state;
  Napi::ThreadSafeFunction tsfn;
  FeatureArg features;  // the request's image features, read in place until it settles
  // Logits: the result array, made at submission; the scheduler thread writes the logits into it
  // (SeqRequest::logits_out) instead of a vector copied into a fresh array here.
  JsResultArray logits;

  explicit SeqBridge(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}

  // scheduler thread
  void push(int32_t t) {
    bool schedule = false;
    {
      std::lock_guard<std::mutex> lk(mu);
      pending.push_back(t);
      if (!scheduled) schedule = scheduled = true;
    }
    if (schedule) call();
  }
  void complete(SeqOutcome&& o) {
    {
      std::lock_guard<std::mutex> lk(mu);
      outcome = std::move(o);
      done = true;
      scheduled = true;
    }
    call();
    tsfn.Release();
  }
  void call();

  // main thread: hands over the queued tokens and settles once the outcome is there
  void drain(Napi::Env env) {
    std::vector<int32_t> ids;
    bool fin;
    {
      std::lock_guard<std::mutex> lk(mu);
      ids.swap(pending);
      scheduled = false;
      fin = done;
    }
    Napi::HandleScope scope(env);
    if (!ids.empty() && !on_tokens.IsEmpty() && !js_failed) {
      auto arr = Napi::Int32Array::New(env, ids.size());
      std::copy(ids.begin(), ids.end(), arr.Data());
      try {
        on_tokens.Call({arr});
      } catch (const Napi::Error& e) {  // the callback threw: stop this sequence, reject with the error
        js_error = Napi::Persistent(e.Value());
        js_failed = true;
        if (state->sched) state->sched->abort(id);
      }
    }
    if (fin && !settled) settle(env);
  }

  void settle(Napi::Env env) {
    settled = true;
    Napi::Value result, rejection;
    try {
      if (js_failed) rejection = js_error.Value();
      else if (outcome.error) rejection = make_js_error(env, outcome.error).Value();
      else if (kind == SeqRequest::Kind::Generate) {
        const GenerateResult& g = outcome.generated;
        auto tokens = Napi::Int32Array::New(env, g.tokens.size());
        std::copy(g.tokens.begin(), g.tokens.end(), tokens.Data());
        Napi::Object o = Napi::Object::New(env);
        o.Set("tokens", tokens);
        o.Set("stopReason", stop_reason_name(g.reason));
        result = o;
      } else if (outcome.aborted) {
        rejection = make_js_error(env, "ERR_ABORTED", kind == SeqRequest::Kind::Logits ? "eval was aborted" : "score was aborted").Value();
      } else if (kind == SeqRequest::Kind::Logits) {
        result = logits.ref.Value();
      } else {
        Napi::Array lp = Napi::Array::New(env, outcome.scores.size());
        Napi::Array tl = Napi::Array::New(env, outcome.scores.size());
        for (size_t i = 0; i < outcome.scores.size(); ++i) {
          lp.Set(uint32_t(i), outcome.scores[i].logprob);
          auto a = Napi::Float64Array::New(env, outcome.scores[i].token_logprobs.size());
          std::copy(outcome.scores[i].token_logprobs.begin(), outcome.scores[i].token_logprobs.end(), a.Data());
          tl.Set(uint32_t(i), a);
        }
        Napi::Object o = Napi::Object::New(env);
        o.Set("logprobs", lp);
        o.Set("tokenLogprobs", tl);
        result = o;
      }
    } catch (const Napi::Error& e) {
      rejection = e.Value();
    }
    // the scheduler is done with the request (on_done ran): the caller's features are free again
    if (features.release() && rejection.IsEmpty())
      rejection = make_js_error(env, "ERR_INVALID_ARGUMENT", "images were detached while the request read them").Value();
    std::shared_ptr<BatchState> s = std::move(state);
    on_tokens.Reset();
    s->inflight--;
    s->owner->inflight--;
    if (s->closed) release_batch(env, *s);
    maybe_finish_model_close(env, *s->owner);
    if (!rejection.IsEmpty()) deferred.Reject(rejection);
    else deferred.Resolve(result);
  }
};
using SeqBridgePtr = std::shared_ptr<SeqBridge>;

void SeqBridge::call() {
  // the bridge lives until its last queued call ran (the lambda holds it)
  SeqBridgePtr self = shared_from_this();
  tsfn.NonBlockingCall([self](Napi::Env env, Napi::Function) {
    if (env != nullptr) self->drain(env);
  });
}


class BatchWrap final : public Napi::ObjectWrap<BatchWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Batch",
                       {InstanceMethod<&BatchWrap::Generate>("generate"),
                        InstanceMethod<&BatchWrap::Score>("score"),
                        InstanceMethod<&BatchWrap::Logits>("logits"),
                        InstanceMethod<&BatchWrap::Abort>("abort"),
                        InstanceMethod<&BatchWrap::Stats>("stats"),
                        InstanceMethod<&BatchWrap::Close>("close"),
                        InstanceAccessor<&BatchWrap::NCtx>("nCtx"),
                        InstanceAccessor<&BatchWrap::MaxSequences>("maxSequences")});
  }
  explicit BatchWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BatchWrap>(info) {
    if (!tl_new_batch) throw_invalid(info.Env(), "use model.createBatch() to create a batch");
    s_ = *tl_new_batch;
    tl_new_batch = nullptr;
    n_ctx_ = s_->sched->n_ctx();
    n_seq_ = s_->sched->n_seq();
  }

 private:
  void check_open(Napi::Env env) {
    if (s_->closed || !s_->sched) throw closed_error(env, "batch");
  }

  // What the scheduler thread reads of a request's images (no N-API object: the prepare hook dies
  // there): the caller's rows in place, spliced there.
  struct ImageRows {
    const float* data = nullptr;
    int64_t floats = 0;
    std::vector<int64_t> counts;
    std::vector<GridThw> grids;
    int64_t n = 0;
  };
  // Images of a request: referenced here (not copied); the reference stays on the JavaScript
  // thread, handed to the request's bridge.
  struct Images {
    FeatureArg features;
    ImageRows rows;
  };
  Images read_images(const Napi::CallbackInfo& info, size_t i) {
    Images im;
    im.rows.n = image_features_arg(info, i, s_->llava.get(), &im.features, s_->emollm.get(), &im.rows.counts,
                                   s_->qwen.get(), &im.rows.grids);
    im.rows.data = im.features.data;
    im.rows.floats = int64_t(im.features.n);
    return im;
  }
  void set_prepare(SeqRequest& r, Images& im) {
    if (!(s_->llava || s_->qwen)) return;
    auto llava = s_->llava;
    auto emollm = s_->emollm;
    auto qwen = s_->qwen;
    auto rows = std::make_shared<ImageRows>(std::move(im.rows));
    r.prepare = [llava, emollm, qwen, rows](SeqRequest& q) {
      const ImageRows& m = *rows;
      q.prompt = splice_images(llava.get(), emollm.get(), qwen.get(), q.prompt, m.data, m.n, m.counts, m.grids, &q.pos3);
      if (m.n > 0) {
        q.embd_view = m.data;
        q.embd_view_n = m.floats;
      }
    };
  }

  // Submits r with a new bridge; returns { id, promise }.
  Napi::Value submit(Napi::Env env, SeqRequest r, Napi::Function on_tokens, FeatureArg features = {}) {
    auto b = std::make_shared<SeqBridge>(env);
    b->kind = r.kind;
    if (r.kind == SeqRequest::Kind::Logits) {
      b->logits.create(env, size_t(s_->model->hparams().n_vocab));
      r.logits_out = b->logits.data;
    }
    b->features = std::move(features);
    b->state = s_;
    if (!on_tokens.IsEmpty()) b->on_tokens = Napi::Persistent(on_tokens);
    auto noop = Napi::Function::New(env, [](const Napi::CallbackInfo&) {});
    b->tsfn = Napi::ThreadSafeFunction::New(env, noop, "emollm.batch", 0, 1);
    if (r.kind == SeqRequest::Kind::Generate && !on_tokens.IsEmpty()) {
      SeqBridge* raw = b.get();  // alive until complete(): the on_done closure holds it
      r.on_token = [raw](int32_t t) { raw->push(t); };
    }
    r.on_done = [b](SeqOutcome&& o) { b->complete(std::move(o)); };
    try {
      b->id = s_->sched->submit(std::move(r));
    } catch (const Error& e) {
      b->tsfn.Release();
      throw make_js_error(env, e);
    }
    s_->inflight++;
    s_->owner->inflight++;
    Napi::Object o = Napi::Object::New(env);
    o.Set("id", double(b->id));
    o.Set("promise", b->deferred.Promise());
    return o;
  }

  // A prompt argument of generate / score / logits: a non-empty Int32Array that fits the context.
  std::vector<int32_t> read_prompt(Napi::Env env, const Napi::Value& v, const char* name) {
    std::vector<int32_t> p = int32_array(env, v, name);
    if (p.empty()) throw_invalid(env, std::string(name) + " must not be empty");
    if (int64_t(p.size()) > n_ctx_)
      throw_invalid(env, std::string(name) + " of " + std::to_string(p.size()) +
                             " tokens does not fit the context of " + std::to_string(n_ctx_));
    return p;
  }

  Napi::Value Generate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    check_open(env);
    if (info.Length() < 1) throw_invalid(env, "generate expects a prompt (Int32Array)");
    SeqRequest r;
    r.kind = SeqRequest::Kind::Generate;
    r.prompt = read_prompt(env, info[0], "prompt");
    r.params = read_generate_params(env, opt_object(info, 1, "options"));
    Napi::Function cb;
    if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) {
      if (!info[2].IsFunction()) throw_invalid(env, "onTokens must be a function");
      cb = info[2].As<Napi::Function>();
    }
    Images im = read_images(info, 3);
    set_prepare(r, im);
    return submit(env, std::move(r), cb, std::move(im.features));
  }

  Napi::Value Score(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    check_open(env);
    if (info.Length() < 3) throw_invalid(env, "score expects (prefix: Int32Array, images: Float32Array | null, continuations: Int32Array[])");
    SeqRequest r;
    r.kind = SeqRequest::Kind::Score;
    r.prompt = read_prompt(env, info[0], "prefix");
    Images im = read_images(info, 1);
    if (!info[2].IsArray()) throw_invalid(env, "continuations must be an array of Int32Array");
    Napi::Array arr = info[2].As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); ++i)
      r.continuations.push_back(int32_array(env, arr.Get(i), ("continuations[" + std::to_string(i) + "]").c_str()));
    set_prepare(r, im);
    return submit(env, std::move(r), Napi::Function(), std::move(im.features));
  }

  Napi::Value Logits(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    check_open(env);
    if (info.Length() < 1) throw_invalid(env, "logits expects (prompt: Int32Array, images?: Float32Array | null)");
    SeqRequest r;
    r.kind = SeqRequest::Kind::Logits;
    r.prompt = read_prompt(env, info[0], "prompt");
    Images im = read_images(info, 1);
    set_prepare(r, im);
    return submit(env, std::move(r), Napi::Function(), std::move(im.features));
  }

  Napi::Value Abort(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) throw_invalid(env, "abort expects a request id");
    if (s_->sched) s_->sched->abort(uint64_t(info[0].As<Napi::Number>().DoubleValue()));
    return env.Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    check_open(env);
    const SchedulerStats st = s_->sched->stats();
    Napi::Object o = Napi::Object::New(env);
    o.Set("maxSequences", double(st.n_seq));
    o.Set("batchTokens", double(st.n_batch));
    o.Set("chunkedPrefill", st.chunked_prefill);
    o.Set("active", double(st.active));
    o.Set("prefilling", double(st.prefilling));
    o.Set("queued", double(st.queued));
    o.Set("steps", double(st.steps));
    o.Set("batchedSteps", double(st.batched_steps));
    o.Set("maxBatch", double(st.max_batch));
    o.Set("decodedTokens", double(st.decoded_tokens));
    o.Set("prefills", double(st.prefills));
    o.Set("prefillChunks", double(st.prefill_chunks));
    o.Set("prefillTokens", double(st.prefill_tokens));
    o.Set("mixedSteps", double(st.mixed_steps));
    o.Set("stepRows", double(st.step_rows));
    o.Set("lastStepRows", double(st.last_step_rows));
    o.Set("maxStepRows", double(st.max_step_rows));
    o.Set("prefixCopies", double(st.prefix_copies));
    o.Set("prefixWaits", double(st.prefix_waits));
    o.Set("reusedTokens", double(st.reused_tokens));
    o.Set("reusedLogits", double(st.reused_logits));
    o.Set("kvBlockSize", double(st.kv_block_size));
    o.Set("kvBlocksTotal", double(st.kv_blocks_total));
    o.Set("kvBlocksUsed", double(st.kv_blocks_used));
    o.Set("kvBlocksShared", double(st.kv_blocks_shared));
    o.Set("kvBlocksCached", double(st.kv_blocks_cached));
    o.Set("kvBytesPerBlock", double(st.kv_bytes_per_block));
    o.Set("kvWaits", double(st.kv_waits));
    o.Set("kvPreemptions", double(st.kv_preemptions));
    o.Set("kvRecomputedTokens", double(st.kv_recomputed_tokens));
    o.Set("contextReady", st.context_ready);
    o.Set("prefaultSeconds", st.prefault_s);
    return o;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto d = Napi::Promise::Deferred::New(env);
    s_->close_waiters.push_back(d);
    close_batch(env, *s_);
    return d.Promise();
  }

  Napi::Value NCtx(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(n_ctx_)); }
  Napi::Value MaxSequences(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(n_seq_)); }

  std::shared_ptr<BatchState> s_;
  int64_t n_ctx_ = 0;
  int n_seq_ = 0;
};

}  // namespace

void close_batch(Napi::Env env, BatchState& b) {
  if (!b.closed) {
    b.closed = true;
    if (b.sched) b.sched->shutdown();  // aborts every request; they settle through their bridges
  }
  release_batch(env, b);
}

Napi::Value create_batch(const Napi::CallbackInfo& info, const std::shared_ptr<ModelHandle>& h) {
  Napi::Env env = info.Env();
  Napi::Object o = opt_object(info, 0, "options");
  SchedulerOptions so;
  so.n_ctx = opt_int(env, o, "nCtx", h->default_n_ctx, 0, int64_t(1) << 24);
  so.n_seq = int(opt_int(env, o, "maxSequences", 4, 1, 256));
  so.n_batch = opt_int(env, o, "batchTokens", 0, 0, int64_t(1) << 20);
  so.kv_block_size = opt_int(env, o, "kvBlockSize", 0, 0, 4096);
  so.kv_positions = opt_int(env, o, "kvCachePositions", 0, 0, int64_t(1) << 30);
  so.kv_type = opt_kv_type(env, o, "kvCacheType", h->default_kv_type);
  so.decode_bf16_products = opt_bool(env, o, "decodeBf16Products", false);
  if (has_opt(o, "chunkedPrefill")) {
    if (!o.Get("chunkedPrefill").IsBoolean()) throw_invalid(env, "chunkedPrefill must be a boolean");
    so.chunked_prefill = o.Get("chunkedPrefill").As<Napi::Boolean>().Value();
  }
  if (has_opt(o, "prefault")) {
    if (!o.Get("prefault").IsBoolean()) throw_invalid(env, "prefault must be a boolean");
    so.prefault = o.Get("prefault").As<Napi::Boolean>().Value();
  }
  auto s = std::make_shared<BatchState>();
  s->owner = h;
  s->model = h->model;
  s->llava = h->llava;
  s->emollm = h->emollm;
  s->qwen = h->qwen;
  try {
    s->sched = std::make_unique<Scheduler>(s->model, so);
  } catch (const Error& e) {
    throw make_js_error(env, e);
  } catch (const std::bad_alloc&) {
    throw make_js_error(env, "ERR_OUT_OF_MEMORY", "out of memory allocating the KV cache of " + std::to_string(so.n_seq) + " sequences");
  }
  auto& bs = h->batches;
  bs.erase(std::remove_if(bs.begin(), bs.end(), [](const std::weak_ptr<BatchState>& w) { return w.expired(); }), bs.end());
  bs.push_back(s);
  Napi::FunctionReference* ctor;
  {
    std::lock_guard<std::mutex> lk(g_batch_ctor_mutex);
    ctor = g_batch_ctors.at(env);
  }
  tl_new_batch = &s;
  Napi::Object obj;
  try {
    obj = ctor->New({});
  } catch (...) {
    tl_new_batch = nullptr;
    throw;
  }
  tl_new_batch = nullptr;
  return obj;
}

void register_batch(Napi::Env env) {
  auto* ctor = new Napi::FunctionReference(Napi::Persistent(BatchWrap::Define(env)));
  {
    std::lock_guard<std::mutex> lk(g_batch_ctor_mutex);
    g_batch_ctors[napi_env(env)] = ctor;
  }
  napi_env raw = env;
  env.AddCleanupHook([raw]() {
    std::lock_guard<std::mutex> lk(g_batch_ctor_mutex);
    auto it = g_batch_ctors.find(raw);
    if (it != g_batch_ctors.end()) {
      delete it->second;
      g_batch_ctors.erase(it);
    }
  });
}

}  // namespace emollm::addon
