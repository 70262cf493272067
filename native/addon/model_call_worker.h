// A call counted in flight on a loaded model: model.close() waits for it (maybe_finish_model_close).
// The one way a worker counts it: the context calls (context_binding.cpp: eval, evalMultimodal,
// score, generate) and the vision tower's (vision_binding.cpp: encodeImages, encodeAnyres,
// encodePatches) derive from it. (The batch requests are counted by batch_binding.cpp, which
// queues them on the core's Scheduler, not as workers.)
#pragma once
#include <napi.h>

#include <memory>
#include <utility>

#include "model_handle.h"
#include "napi_util.h"

namespace emollm::addon {

// Counted from claim() (PromiseWorker::claim_and_queue: the binding's last step, after everything
// that can fail) until Finish(); unclaim() gives the count back when Queue() fails. A derived
// worker's claim() marks and checks its own part first (whatever can throw: nothing is counted
// then) and calls this last; its unclaim() and Finish() release its own part and call these last.
class ModelCallWorker : public PromiseWorker {
 public:
  ModelCallWorker(Napi::Env env, std::shared_ptr<ModelHandle> h) : PromiseWorker(env), h_(std::move(h)) {}

 protected:
  void claim() override { h_->inflight++; }
  void unclaim() override { h_->inflight--; }
  void Finish(Napi::Env env) override {
    h_->inflight--;
    maybe_finish_model_close(env, *h_);
  }
  std::shared_ptr<ModelHandle> h_;  // the model the call runs on
};

}  // namespace emollm::addon
