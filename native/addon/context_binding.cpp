// One-sequence contexts for JavaScript (ctx.eval / evalMultimodal / score / generate): each call
// runs on a libuv worker thread over the context's own KV cache. model.logits() uses these; the
// concurrent generate / chat / scoreOptions path is batch_binding.cpp. (API in model_binding.cpp.)
#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "model_call_worker.h"
#include "model_handle.h"
#include "napi_util.h"

namespace emollm::addon {
namespace {

std::mutex g_context_ctor_mutex;
std::unordered_map<napi_env, Napi::FunctionReference*> g_context_ctors;
thread_local std::shared_ptr<ContextState>* tl_new_context = nullptr;

Napi::FunctionReference& context_ctor(Napi::Env env) {
  std::lock_guard<std::mutex> lk(g_context_ctor_mutex);
  return *g_context_ctors.at(env);
}

// ---------------------------------------------------------------- workers on a context

// A context a call can run on: not closed (ERR_CLOSED ... closed_error), not running another call
// (ERR_INVALID_ARGUMENT "context busy"). Checked when a call starts (ContextWrap::check_usable:
// busy rejects the call's promise instead of throwing) and again when it claims the context
// (ContextWorker::claim: the arguments' getters ran in between); ctx.reset() throws both.
constexpr const char* kContextBusy = "context busy: an eval or generate call is still running on it";
void check_context_open(Napi::Env env, const ContextState& s) {
  if (s.closed || !s.ctx) throw closed_error(env, "context");
}
void check_context_usable(Napi::Env env, const ContextState& s) {
  check_context_open(env, s);
  if (s.busy) throw make_js_error(env, "ERR_INVALID_ARGUMENT", kContextBusy);
}

// Marks the context busy (and counts the call in flight on its model: ModelCallWorker) from
// claim_and_queue() (napi_util.h: the binding's last step, after everything that can fail) until
// Finish() releases it.
class ContextWorker : public ModelCallWorker {
 public:
  ContextWorker(Napi::Env env, std::shared_ptr<ContextState> s) : ModelCallWorker(env, s->owner), s_(std::move(s)) {}

 protected:
  // The binding checked the context usable first, but then read its arguments through JavaScript
  // getters (options, arrays), which can close it or start another call on it: checked again
  // here, with the same typed errors (check_context_usable), before anything is claimed.
  void claim() override {
    check_context_usable(Env(), *s_);
    s_->busy = true;
    s_->abort.store(false);
    ModelCallWorker::claim();
  }
  void unclaim() override {
    s_->busy = false;
    ModelCallWorker::unclaim();
  }
  // Derived workers' Finish() calls this last (their references dropped first).
  void Finish(Napi::Env env) override {
    // the worker has stopped reading the caller's features: drop the reference (JavaScript thread)
    if (images_.release() && js_error_.IsEmpty())
      js_error_ = Napi::Persistent(make_js_error(env, "ERR_INVALID_ARGUMENT", "images were detached while the call read them").Value());
    s_->busy = false;
    s_->n_past.store(s_->ctx ? s_->ctx->n_past() : 0);
    if (s_->closed) release_context(env, *s_);
    ModelCallWorker::Finish(env);  // the model's count; a close() waiting for it finishes
  }
  // Image tokens -> pseudo-ids (and, for Qwen2-VL, pos3_ <- the M-RoPE positions).
  std::vector<int32_t> splice(const std::vector<int32_t>& tokens) {
    return splice_images(s_->llava.get(), s_->emollm.get(), s_->qwen.get(), tokens, images_.data, n_images_,
                         image_counts, image_grids, &pos3_);
  }
  const float* image_rows() const { return n_images_ > 0 ? images_.data : nullptr; }
  std::shared_ptr<ContextState> s_;
  std::vector<int32_t> pos3_;  // Qwen2-VL: M-RoPE positions of the spliced prompt
  const int32_t* pos3() const { return pos3_.empty() ? nullptr : pos3_.data(); }

 public:
  std::vector<int64_t> image_counts;  // EmoLLM, LLaVA-NeXT, Qwen2-VL: tokens per image
  std::vector<GridThw> image_grids;   // Qwen2-VL: each visual's grid
  void set_images(FeatureArg images, int64_t n_images) {
    images_ = std::move(images);
    n_images_ = n_images;
  }

 protected:
  FeatureArg images_;  // the caller's array, read in place on the worker thread until Finish
  int64_t n_images_ = 0;
};

class EvalWorker final : public ContextWorker {
 public:
  EvalWorker(Napi::Env env, std::shared_ptr<ContextState> s, std::vector<int32_t> tokens, bool all_logits)
      : ContextWorker(env, std::move(s)), tokens_(std::move(tokens)), all_(all_logits) {}

 protected:
  void Run() override {
    LlamaContext& ctx = *s_->ctx;
    const float* embd = nullptr;
    if (s_->llava || s_->qwen) {  // image tokens -> pseudo-ids whose input embeddings are the image features
      tokens_ = splice(tokens_);
      embd = image_rows();
    }
    const int64_t n = int64_t(tokens_.size()), V = ctx.n_vocab();
    // js_out_ was made on the JavaScript thread for the spliced length; a prompt too long for the
    // context has none (eval below refuses it before writing anything)
    if (all_ && js_out_.n != size_t(n * V) && n <= ctx.n_ctx())
      throw Error(ErrorCode::Internal, "eval: the result array holds " + std::to_string(js_out_.n) + " floats for " +
                                           std::to_string(n) + " positions");
    if (all_) {
      // logits for every position: nothing can be reused
      ctx.reset();
      aborted_ = ctx.eval(tokens_.data(), n, js_out_.data, &s_->abort, embd, pos3()) == nullptr;
    } else {
      const float* l = ctx.eval_prompt(tokens_.data(), n, &s_->abort, embd, pos3());
      aborted_ = l == nullptr;
      if (l) std::copy(l, l + V, js_out_.data);
    }
    s_->n_past.store(ctx.n_past());
  }
  Napi::Value Resolve(Napi::Env env) override {
    if (aborted_) throw make_js_error(env, "ERR_ABORTED", "eval was aborted");
    return js_out_.ref.Value();
  }

 public:
  // The result array, created here on the JavaScript thread and written by the worker directly,
  // instead of a vector of the same size filled, then copied into a fresh array on this thread
  // (allLogits: 128 KB a position at a 32000 vocabulary, 8 MB for 64 positions, faulted in twice
  // and copied once on the event loop). Its size: the last position's logits, or with allLogits
  // every position's, of the prompt with its images spliced in (spliced_length).
  void write_into_js_array(Napi::Float32Array a) { js_out_.adopt(a); }

 private:
  JsResultArray js_out_;
  std::vector<int32_t> tokens_;
  bool all_;
  bool aborted_ = false;
};

class ScoreWorker final : public ContextWorker {
 public:
  ScoreWorker(Napi::Env env, std::shared_ptr<ContextState> s, std::vector<int32_t> prefix,
              std::vector<std::vector<int32_t>> conts)
      : ContextWorker(env, std::move(s)), prefix_(std::move(prefix)), conts_(std::move(conts)) {}

 protected:
  void Run() override {
    LlamaContext& ctx = *s_->ctx;
    const float* embd = nullptr;
    if (s_->llava || s_->qwen) {
      prefix_ = splice(prefix_);
      embd = image_rows();
    }
    aborted_ = !ctx.score_continuations(prefix_.data(), int64_t(prefix_.size()), conts_, &out_, &s_->abort, embd, pos3());
    s_->n_past.store(ctx.n_past());
  }
  Napi::Value Resolve(Napi::Env env) override {
    if (aborted_) throw make_js_error(env, "ERR_ABORTED", "score was aborted");
    Napi::Array lp = Napi::Array::New(env, out_.size());
    Napi::Array tl = Napi::Array::New(env, out_.size());
    for (size_t i = 0; i < out_.size(); ++i) {
      lp.Set(uint32_t(i), out_[i].logprob);
      auto a = Napi::Float64Array::New(env, out_[i].token_logprobs.size());
      std::copy(out_[i].token_logprobs.begin(), out_[i].token_logprobs.end(), a.Data());
      tl.Set(uint32_t(i), a);
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("logprobs", lp);
    o.Set("tokenLogprobs", tl);
    return o;
  }

 private:
  std::vector<int32_t> prefix_;
  std::vector<std::vector<int32_t>> conts_;
  bool aborted_ = false;
  std::vector<LlamaContext::ContinuationScore> out_;
};

// Tokens on their way from the decode thread to JavaScript.
struct TokenQueue {
  std::mutex mu;
  std::vector<int32_t> pending;
  bool scheduled = false;               // a delivery is queued on the thread-safe function
  std::atomic<bool> js_failed{false};   // the callback threw: stop decoding
  Napi::ObjectReference js_error;
  std::shared_ptr<ContextState> state;  // to abort on a callback error

  // Takes everything queued (main thread).
  std::vector<int32_t> take() {
    std::lock_guard<std::mutex> lk(mu);
    scheduled = false;
    std::vector<int32_t> out;
    out.swap(pending);
    return out;
  }
  // Calls onTokens with `ids` (main thread); records a thrown error.
  void deliver(Napi::Env env, Napi::Function cb, const std::vector<int32_t>& ids) {
    if (ids.empty() || cb.IsEmpty() || js_failed.load()) return;
    auto arr = Napi::Int32Array::New(env, ids.size());
    std::copy(ids.begin(), ids.end(), arr.Data());
    try {
      cb.Call({arr});
    } catch (const Napi::Error& e) {
      js_error = Napi::Persistent(e.Value());
      js_failed.store(true);
      if (state) state->abort.store(true);
    }
  }
};
using TokenQueuePtr = std::shared_ptr<TokenQueue>;

void deliver_tokens(Napi::Env env, Napi::Function cb, TokenQueuePtr* q, void*) {
  if (env == nullptr || q == nullptr) return;
  Napi::HandleScope scope(env);
  (*q)->deliver(env, cb, (*q)->take());
}
using TokenTsfn = Napi::TypedThreadSafeFunction<TokenQueuePtr, void, deliver_tokens>;

class GenerateWorker final : public ContextWorker {
 public:
  GenerateWorker(Napi::Env env, std::shared_ptr<ContextState> s, std::vector<int32_t> prompt, GenerateParams gp,
                 Napi::Function on_tokens)
      : ContextWorker(env, std::move(s)), prompt_(std::move(prompt)), gp_(std::move(gp)), queue_(std::make_shared<TokenQueue>()) {
    queue_->state = s_;
    if (!on_tokens.IsEmpty()) {
      on_tokens_ = Napi::Persistent(on_tokens);
      tsfn_ = TokenTsfn::New(env, on_tokens, "emollm.generate", 0, 1, new TokenQueuePtr(queue_),
                             [](Napi::Env, void*, TokenQueuePtr* q) { delete q; });
      has_tsfn_ = true;
    }
  }
  // A worker deleted without running (claim_and_queue: its claim or Queue() failed; new_worker's
  // test hook 'after') still holds its thread-safe function: released here, or it would keep the
  // event loop (the process) alive. After Run() it is released already.
  ~GenerateWorker() override { release_tsfn(); }

 protected:
  void Run() override {
    try {
      decode();
    } catch (...) {
      release_tsfn();
      throw;
    }
    release_tsfn();
  }

  // The loop itself is the core's (model/session.h); this worker moves tokens to JavaScript.
  void decode() {
    const float* embd = nullptr;
    if (s_->llava || s_->qwen) {  // image tokens -> pseudo-ids (ignored by the repetition penalty)
      prompt_ = splice(prompt_);
      embd = image_rows();
    }
    Session session(*s_->ctx, &s_->n_past);
    GenerateResult r = session.generate(prompt_, embd, gp_, &s_->abort, [this](int32_t t) { push(t); }, pos3());
    out_ = std::move(r.tokens);
    reason_ = stop_reason_name(r.reason);
  }

  void push(int32_t t) {
    if (!has_tsfn_) return;
    bool schedule = false;
    {
      std::lock_guard<std::mutex> lk(queue_->mu);
      queue_->pending.push_back(t);
      if (!queue_->scheduled) schedule = queue_->scheduled = true;
    }
    if (schedule) tsfn_.NonBlockingCall();
  }
  void release_tsfn() {
    if (has_tsfn_ && !released_) {
      released_ = true;
      tsfn_.Release();
    }
  }

  Napi::Value Resolve(Napi::Env env) override {
    // Deliver whatever the thread-safe function has not delivered yet, in order, before settling.
    if (!on_tokens_.IsEmpty()) queue_->deliver(env, on_tokens_.Value(), queue_->take());
    if (queue_->js_failed.load()) throw Napi::Error(env, queue_->js_error.Value());
    auto tokens = Napi::Int32Array::New(env, out_.size());
    std::copy(out_.begin(), out_.end(), tokens.Data());
    Napi::Object o = Napi::Object::New(env);
    o.Set("tokens", tokens);
    o.Set("stopReason", reason_);
    return o;
  }
  void Finish(Napi::Env env) override {
    if (queue_->js_failed.load() && !queue_->js_error.IsEmpty() && js_error_.IsEmpty())
      js_error_ = Napi::Persistent(queue_->js_error.Value());
    queue_->state.reset();
    ContextWorker::Finish(env);
  }

 private:
  std::vector<int32_t> prompt_;
  GenerateParams gp_;
  TokenQueuePtr queue_;
  Napi::FunctionReference on_tokens_;
  TokenTsfn tsfn_;
  bool has_tsfn_ = false, released_ = false;
  std::vector<int32_t> out_;
  std::string reason_ = "max-tokens";
};

// ---------------------------------------------------------------- Context

class ContextWrap final : public Napi::ObjectWrap<ContextWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "LlamaContext",
                       {InstanceMethod<&ContextWrap::Eval>("eval"),
                        InstanceMethod<&ContextWrap::EvalMultimodal>("evalMultimodal"),
                        InstanceMethod<&ContextWrap::Score>("score"),
                        InstanceMethod<&ContextWrap::Generate>("generate"),
                        InstanceMethod<&ContextWrap::Abort>("abort"),
                        InstanceMethod<&ContextWrap::Reset>("reset"),
                        InstanceMethod<&ContextWrap::Close>("close"),
                        InstanceAccessor<&ContextWrap::NPast>("nPast"),
                        InstanceAccessor<&ContextWrap::NCtx>("nCtx")});
  }
  explicit ContextWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ContextWrap>(info) {
    if (!tl_new_context) throw_invalid(info.Env(), "use model.createContext() to create a context");
    s_ = *tl_new_context;
    tl_new_context = nullptr;
  }

 private:
  // Throws when closed (check_context_open); returns a rejected promise (in *rejected) when busy.
  bool check_usable(Napi::Env env, Napi::Value* rejected) {
    check_context_open(env, *s_);
    if (s_->busy) {
      auto d = Napi::Promise::Deferred::New(env);
      d.Reject(make_js_error(env, "ERR_INVALID_ARGUMENT", kContextBusy).Value());
      *rejected = d.Promise();
      return false;
    }
    return true;
  }

  Napi::Value Eval(const Napi::CallbackInfo& info) { return eval_impl(info, false); }
  Napi::Value EvalMultimodal(const Napi::CallbackInfo& info) { return eval_impl(info, true); }

  // image_features_arg with the models held for the call: a getter on the arguments may close the
  // context (and its model) while the features are read; the claim (check_context_usable) then
  // refuses the call.
  int64_t images_arg(const Napi::CallbackInfo& info, size_t i, FeatureArg* images, std::vector<int64_t>* counts,
                     std::vector<GridThw>* grids) {
    const auto llava = s_->llava;
    const auto emollm = s_->emollm;
    const auto qwen = s_->qwen;
    return image_features_arg(info, i, llava.get(), images, emollm.get(), counts, qwen.get(), grids);
  }

  Napi::Value Score(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Value rejected;
    if (!check_usable(env, &rejected)) return rejected;
    if (info.Length() < 3) throw_invalid(env, "score expects (prefix: Int32Array, images: Float32Array | null, continuations: Int32Array[])");
    std::vector<int32_t> prefix = int32_array(env, info[0], "prefix");
    if (prefix.empty()) throw_invalid(env, "prefix must not be empty");
    FeatureArg images;
    std::vector<int64_t> counts;
    std::vector<GridThw> grids;
    const int64_t n_images =
        images_arg(info, 1, &images, &counts, &grids);
    if (!info[2].IsArray()) throw_invalid(env, "continuations must be an array of Int32Array");
    Napi::Array arr = info[2].As<Napi::Array>();
    std::vector<std::vector<int32_t>> conts;
    for (uint32_t i = 0; i < arr.Length(); ++i)
      conts.push_back(int32_array(env, arr.Get(i), ("continuations[" + std::to_string(i) + "]").c_str()));
    auto* w = new_worker<ScoreWorker>(env, "score", env, s_, std::move(prefix), std::move(conts));
    w->set_images(std::move(images), n_images);
    w->image_counts = std::move(counts);
    w->image_grids = std::move(grids);
    return w->claim_and_queue();
  }

  Napi::Value eval_impl(const Napi::CallbackInfo& info, bool multimodal) {
    Napi::Env env = info.Env();
    Napi::Value rejected;
    if (!check_usable(env, &rejected)) return rejected;
    if (info.Length() < 1) throw_invalid(env, "eval expects tokens (Int32Array)");
    std::vector<int32_t> tokens = int32_array(env, info[0], "tokens");
    if (tokens.empty()) throw_invalid(env, "tokens must not be empty");
    FeatureArg images;
    std::vector<int64_t> counts;
    std::vector<GridThw> grids;
    const int64_t n_images =
        multimodal ? images_arg(info, 1, &images, &counts, &grids) : 0;
    Napi::Object o = opt_object(info, multimodal ? 2 : 1, "options");
    bool all = false;
    if (has_opt(o, "allLogits")) {
      if (!o.Get("allLogits").IsBoolean()) throw_invalid(env, "allLogits must be a boolean");
      all = o.Get("allLogits").As<Napi::Boolean>().Value();
    }
    // the options' getters ran: the context's model state is read below (check_context_usable)
    check_context_usable(env, *s_);
    if (int64_t(tokens.size()) > s_->n_ctx)
      throw_invalid(env, std::to_string(tokens.size()) + " tokens do not fit the context of " + std::to_string(s_->n_ctx));
    // rows of the result: the prompt's positions once its images are spliced in (a text model: its tokens)
    const int64_t rows = !all ? 1
                         : (s_->llava || s_->qwen) ? spliced_length(s_->llava.get(), s_->emollm.get(), s_->qwen.get(), tokens, n_images, counts, grids)
                                                   : int64_t(tokens.size());
    // none for a prompt the worker refuses anyway (image tokens that match no rule: the splice
    // names the counts; longer than the context: eval says so); made before the worker (napi_util.h)
    Napi::Float32Array out;
    if (rows >= 0 && rows <= s_->n_ctx) out = new_result_array(env, size_t(rows) * size_t(s_->ctx->n_vocab()));
    auto* w = new_worker<EvalWorker>(env, multimodal ? "evalMultimodal" : "eval", env, s_, std::move(tokens), all);
    w->set_images(std::move(images), n_images);
    if (!out.IsEmpty()) w->write_into_js_array(out);
    w->image_counts = std::move(counts);
    w->image_grids = std::move(grids);
    return w->claim_and_queue();
  }

  Napi::Value Generate(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Value rejected;
    if (!check_usable(env, &rejected)) return rejected;
    if (info.Length() < 1) throw_invalid(env, "generate expects a prompt (Int32Array)");
    std::vector<int32_t> prompt = int32_array(env, info[0], "prompt");
    if (prompt.empty()) throw_invalid(env, "prompt must not be empty");
    if (int64_t(prompt.size()) > s_->n_ctx)
      throw_invalid(env, "prompt of " + std::to_string(prompt.size()) + " tokens does not fit the context of " +
                             std::to_string(s_->n_ctx));
    Napi::Object o = opt_object(info, 1, "options");
    GenerateParams gp = read_generate_params(env, o);
    Napi::Function cb;
    if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) {
      if (!info[2].IsFunction()) throw_invalid(env, "onTokens must be a function");
      cb = info[2].As<Napi::Function>();
    }
    FeatureArg images;
    std::vector<int64_t> counts;
    std::vector<GridThw> grids;
    const int64_t n_images =
        images_arg(info, 3, &images, &counts, &grids);
    auto* w = new_worker<GenerateWorker>(env, "generate", env, s_, std::move(prompt), std::move(gp), cb);
    w->set_images(std::move(images), n_images);
    w->image_counts = std::move(counts);
    w->image_grids = std::move(grids);
    return w->claim_and_queue();
  }

  Napi::Value Abort(const Napi::CallbackInfo& info) {
    if (s_->busy) s_->abort.store(true);
    return info.Env().Undefined();
  }

  Napi::Value Reset(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    check_context_usable(env, *s_);
    s_->ctx->reset();
    s_->n_past.store(0);
    return env.Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto d = Napi::Promise::Deferred::New(env);
    s_->close_waiters.push_back(d);
    close_context(env, *s_);
    return d.Promise();
  }

  Napi::Value NPast(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(s_->n_past.load())); }
  Napi::Value NCtx(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(s_->n_ctx)); }

  std::shared_ptr<ContextState> s_;
};

}  // namespace

Napi::Value create_context(const Napi::CallbackInfo& info, const std::shared_ptr<ModelHandle>& handle_) {
  Napi::Env env = info.Env();
  if (!handle_->model) throw closed_error(env, "model");
  Napi::Object o = opt_object(info, 0, "options");
  LlamaContextOptions co;
  co.n_ctx = opt_int(env, o, "nCtx", handle_->default_n_ctx, 0, int64_t(1) << 24);
  co.n_batch = opt_int(env, o, "nBatch", 0, 0, int64_t(1) << 24);
  co.kv_type = opt_kv_type(env, o, "kvCacheType", handle_->default_kv_type);
  co.decode_bf16_products = opt_bool(env, o, "decodeBf16Products", false);
  auto s = std::make_shared<ContextState>();
  s->owner = handle_;
  s->model = handle_->model;
  s->llava = handle_->llava;
  s->emollm = handle_->emollm;
  s->qwen = handle_->qwen;
  try {
    s->ctx = std::make_unique<LlamaContext>(s->model, co);
  } catch (const Error& e) {
    throw make_js_error(env, e);
  } catch (const std::bad_alloc&) {
    throw make_js_error(env, "ERR_OUT_OF_MEMORY", "out of memory allocating the context");
  }
  s->n_ctx = s->ctx->n_ctx();
  auto& cs = handle_->contexts;
  cs.erase(std::remove_if(cs.begin(), cs.end(), [](const std::weak_ptr<ContextState>& w) { return w.expired(); }),
           cs.end());
  cs.push_back(s);
  tl_new_context = &s;
  Napi::Object obj;
  try {
    obj = context_ctor(env).New({});
  } catch (...) {
    tl_new_context = nullptr;
    throw;
  }
  tl_new_context = nullptr;
  return obj;
}

void register_context(Napi::Env env) {
  auto* ctor = new Napi::FunctionReference(Napi::Persistent(ContextWrap::Define(env)));
  {
    std::lock_guard<std::mutex> lk(g_context_ctor_mutex);
    g_context_ctors[napi_env(env)] = ctor;
  }
  napi_env raw = env;
  env.AddCleanupHook([raw]() {
    std::lock_guard<std::mutex> lk(g_context_ctor_mutex);
    auto it = g_context_ctors.find(raw);
    if (it != g_context_ctors.end()) {
      delete it->second;
      g_context_ctors.erase(it);
    }
  });
}

}  // namespace emollm::addon
