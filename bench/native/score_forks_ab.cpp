// In-process A/B of the scheduler's score forks (model/scheduler.h set_score_forks): a prompt of
// P token ids evaluated once (a Logits request, as Model.logits), then the same scoring request
// (LLaVA sample's 8 options: 1+1+1+1+2+3+1+3 tokens, ids fixed) alternated forks off / on in ABBA
// rounds on that cached prompt, as bench:llava's scoring phase. Per mode: wall and process CPU
// time per scoring (CPU: readable on a loaded machine at 1 thread), option passes, and whether
// the scores of both modes agree within 1e-5 relative. From the repository root:
//   ./build-bench/score_forks_ab bench/models/llava1.5-7b-q4_0.gguf [threads 1] [rounds 6] [prompt 628]
// AB_SWITCH=tile_rows: forks on in both modes, "off" = gemm_repacked's 4-row tiles at M <= 6
// (gemm_detail::set_repacked_tile_rows(4)), "on" = the default one tile for all M rows.
// AB_SWITCH=fork_in_place: forks on in both modes, "off" = every fork copies the prompt's partial
// last block (set_fork_in_place(false)), "on" = the last one writes it in place (default).
// AB_SWITCH=few_rows:P: forks on in both modes, "off" = gemm_repacked's few-row path Previous
// (gemm_detail::set_repacked_few_rows_path), "on" = path P (1 Spread, 2 SpreadPanel).
// AB_ONLY=on / off: that mode alone (for a profile of one mode, EMOLLM_PROFILE=1).
#include <time.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <string>
#include <vector>

#include "bench_clock.h"
#include "cpu/gemm_internal.h"
#include "model/llama.h"
#include "model/scheduler.h"
using namespace emollm;

namespace {
double process_cpu() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}
SeqOutcome run(Scheduler& s, SeqRequest r) {
  std::promise<SeqOutcome> p;
  r.on_done = [&](SeqOutcome&& o) { p.set_value(std::move(o)); };
  s.submit(std::move(r));
  return p.get_future().get();
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL.gguf [threads 1] [rounds 6] [prompt 628]\n", argv[0]);
    return 2;
  }
  const int threads = argc > 2 ? std::atoi(argv[2]) : 1;
  const int rounds = argc > 3 ? std::atoi(argv[3]) : 6;
  const int64_t n_prompt = argc > 4 ? std::atoll(argv[4]) : 628;
  LlamaLoadOptions lo;
  lo.threads = threads;
  auto model = LlamaModel::load(argv[1], lo);
  const int64_t V = model->hparams().n_vocab;
  SchedulerOptions so;
  so.n_ctx = 1024;
  so.n_seq = 1;
  Scheduler sched(model, so);
  std::vector<int32_t> prompt{1};
  for (int64_t i = 1; i < n_prompt; ++i) prompt.push_back(int32_t(100 + (i * 7919) % (V - 200)));
  SeqRequest lr;
  lr.kind = SeqRequest::Kind::Logits;
  lr.prompt = prompt;
  const double t0 = bench::now();
  if (run(sched, lr).error) return 1;
  std::printf("prompt %lld tokens prefilled in %.2f s (%d threads)\n", (long long)n_prompt, bench::now() - t0, threads);
  const std::vector<std::vector<int32_t>> conts = {{310}, {411}, {512}, {613}, {714, 815}, {916, 1017, 1118}, {1219}, {1320, 1421, 1522}};
  std::vector<double> wall[2], cpu[2];
  int64_t passes[2] = {0, 0};
  std::vector<double> scores[2];
  double worst = 0;
  const char* sw = std::getenv("AB_SWITCH");
  const bool tile_ab = sw && std::string(sw) == "tile_rows", inplace_ab = sw && std::string(sw) == "fork_in_place";
  const bool small_ab = sw && std::string(sw).rfind("few_rows:", 0) == 0;
  const int small_on = small_ab ? std::atoi(sw + 9) : 0;
  if (sw && !tile_ab && !inplace_ab && !small_ab) {
    std::fprintf(stderr, "score_forks_ab: AB_SWITCH is tile_rows, fork_in_place, few_rows:P or unset\n");
    return 2;
  }
  const char* name = tile_ab ? "tile_rows" : inplace_ab ? "fork_in_place" : small_ab ? "few_rows" : "forks";
  const char* only = std::getenv("AB_ONLY");
  const int only_mode = only ? (std::string(only) == "on" ? 1 : 0) : -1;
  for (int r = 0; r < rounds; ++r)
    for (int k = 0; k < 2; ++k) {
      const int on = (r % 2 == 0) ? k : 1 - k;  // off, on, on, off, ...
      if (only_mode >= 0 && on != only_mode) continue;
      if (tile_ab)
        gemm_detail::set_repacked_tile_rows(on ? 6 : 4);
      else if (inplace_ab)
        set_fork_in_place(on != 0);
      else if (small_ab)
        gemm_detail::set_repacked_few_rows_path(gemm_detail::FewRowsPath(on ? small_on : 0));
      else
        set_score_forks(on != 0);
      SeqRequest sr;
      sr.kind = SeqRequest::Kind::Score;
      sr.prompt = prompt;
      sr.continuations = conts;
      const int64_t s0 = sched.stats().steps;
      const double w0 = bench::now(), c0 = process_cpu();
      SeqOutcome o = run(sched, sr);
      const double w = bench::now() - w0, c = process_cpu() - c0;
      if (o.error || o.scores.size() != conts.size()) return 1;
      wall[on].push_back(w);
      cpu[on].push_back(c);
      passes[on] = sched.stats().steps - s0;
      std::vector<double> sc;
      for (const auto& x : o.scores) sc.push_back(x.logprob);
      if (scores[on].empty()) scores[on] = sc;
      if (!scores[0].empty() && !scores[1].empty())
        for (size_t i = 0; i < sc.size(); ++i)
          worst = std::max(worst, std::fabs(scores[0][i] - scores[1][i]) / std::max(1.0, std::fabs(scores[0][i])));
      std::printf("round %d %s %s: wall %.3f s, cpu %.3f s, %lld passes\n", r, name, on ? "on " : "off", w, c,
                  (long long)passes[on]);
    }
  for (int on = 0; on < 2; ++on)
    std::printf("%s %s: wall median %.3f best %.3f s, process cpu median %.3f best %.3f s, %lld option passes\n",
                name, on ? "on " : "off", bench::median(wall[on]), bench::best(wall[on]), bench::median(cpu[on]),
                bench::best(cpu[on]), (long long)passes[on]);
  std::printf("on / off: wall median %.3f, cpu median %.3f; scores max relative |on - off| %.3g\n",
              bench::median(wall[1]) / bench::median(wall[0]), bench::median(cpu[1]) / bench::median(cpu[0]), worst);
  set_score_forks(true);
  gemm_detail::set_repacked_tile_rows(6);
  set_fork_in_place(true);
  gemm_detail::set_repacked_few_rows_path(gemm_detail::FewRowsPath::Default);
  return 0;
}
