// The greedy continuation the decoder tests compare with a reference's greedy tokens
// (transformers' greedy_new_tokens): shared by the LLaVA, LLaVA-NeXT, Qwen2-VL and
// emulated-device tests; and the greedy decode script two contexts of one model run side by side
// (paired_decode_script), shared by the fused-row-ops and bf16-products tests.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "model/llama.h"
#include "testing.h"

namespace emollm_test {

// The first largest of x[0, n).
inline int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

// n argmax tokens after a prompt already evaluated in `ctx`, whose last-position logits are
// `logits`: each chosen token is fed back through ctx.eval for the next one.
inline std::vector<int32_t> argmax_continuation(emollm::LlamaContext& ctx, const float* logits, int64_t n) {
  const int64_t V = ctx.n_vocab();
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t best = argmax(logits, V);
    out.push_back(best);
    if (i + 1 < n) logits = ctx.eval(&best, 1);
  }
  return out;
}

// What paired_decode_script runs on both contexts (sequences 0 and 1; the contexts need n_seq >= 2).
struct PairedScript {
  std::vector<int32_t> prompt;  // sequence 0's prompt, every row's logits
  int decode_steps = 0;         // then greedy one-token steps of sequence 0
  std::vector<int32_t> prompt1;  // then sequence 1's prompt
  bool prompt1_logits = false;   // every row of it compared (else only evaluated)
  int32_t first_t1 = -1;         // sequence 1's first batched token; -1: the argmax of prompt1's last row
  int batched_steps = 0;         // then decode() steps of both sequences at once (one pass, M = 2)
};
enum class PairedStep { Prompt, Decode, Prompt1, Batched };
// Compares the two contexts' logits of one step: n floats (Prompt / Prompt1: every row;
// Decode: one row; Batched: sequence 0's row then sequence 1's).
using PairedCompare = std::function<void(const float* a, const float* b, int64_t n, PairedStep step, const std::string& what)>;
struct PairedEnd {
  int32_t tok = 0, t1 = 0;  // the next tokens of sequences 0 and 1 (a's greedy choices)
};

// The script on contexts a and b of one model, both fed a's greedy tokens (same inputs: only
// what differs between the contexts can move the logits); `compare` asserts on each step's
// logits, named `label` + the step.
inline PairedEnd paired_decode_script(emollm::LlamaContext& a, emollm::LlamaContext& b, const PairedScript& s,
                                      const std::string& label, const PairedCompare& compare) {
  const int64_t V = a.n_vocab();
  std::vector<float> la(s.prompt.size() * size_t(V)), lb(la.size());
  a.seq_eval(0, s.prompt.data(), int64_t(s.prompt.size()), la.data());
  b.seq_eval(0, s.prompt.data(), int64_t(s.prompt.size()), lb.data());
  compare(la.data(), lb.data(), int64_t(la.size()), PairedStep::Prompt, label + " prompt");
  PairedEnd e;
  e.tok = argmax(la.data() + (s.prompt.size() - 1) * size_t(V), V);
  std::vector<float> ra(static_cast<size_t>(V));
  for (int i = 0; i < s.decode_steps; ++i) {
    std::memcpy(ra.data(), a.seq_eval(0, &e.tok, 1), size_t(V) * sizeof(float));
    const float* rb = b.seq_eval(0, &e.tok, 1);
    compare(ra.data(), rb, V, PairedStep::Decode, label + " decode step " + std::to_string(i));
    e.tok = argmax(ra.data(), V);
  }
  const int64_t n1 = int64_t(s.prompt1.size());
  if (s.prompt1_logits) {
    std::vector<float> pa(size_t(n1 * V)), pb(pa.size());
    a.seq_eval(1, s.prompt1.data(), n1, pa.data());
    b.seq_eval(1, s.prompt1.data(), n1, pb.data());
    compare(pa.data(), pb.data(), int64_t(pa.size()), PairedStep::Prompt1, label + " second prompt");
    e.t1 = argmax(pa.data() + size_t((n1 - 1) * V), V);
  } else {
    e.t1 = argmax(a.seq_eval(1, s.prompt1.data(), n1), V);
    b.seq_eval(1, s.prompt1.data(), n1);
  }
  if (s.first_t1 >= 0) e.t1 = s.first_t1;
  std::vector<float> oa(2 * size_t(V)), ob(oa.size());
  for (int i = 0; i < s.batched_steps; ++i) {
    const emollm::LlamaBatchRow br[2] = {{0, e.tok}, {1, e.t1}};
    EXPECT(a.decode(br, 2, oa.data()));
    EXPECT(b.decode(br, 2, ob.data()));
    compare(oa.data(), ob.data(), int64_t(oa.size()), PairedStep::Batched, label + " batched decode " + std::to_string(i));
    e.tok = argmax(oa.data(), V);
    e.t1 = argmax(oa.data() + V, V);
  }
  return e;
}

}  // namespace emollm_test
