// bench:decode's schedule and the arithmetic read from it, without timers or processes (so
// tests/js/decode_rounds.test.ts can feed it numbers): the order of a run's measurements (each
// model's sides alternated in rounds, read-bandwidth probes beside each model's block), the
// ceiling each row's %bw is held to (the probes measured in its own block), and the engine ratios
// taken round by round.
//
// Why: on a VM whose memory bandwidth swings from minute to minute one probe at the start and one
// at the end of a whole run, and each side of a ratio measured once minutes apart, carry the
// swing. Session 26 (Zen 4 VM): the probe read 35.5 GB/s at the start and 49.3 at the end of one
// run; f16 decode read 0.87x llama-bench in one run and 1.63x in a rerun minutes later, same code.
// Alternating the sides A B B A ... puts slow drift on both sides alike, a ratio taken within a
// round compares measurements seconds apart, and a ceiling from the probes next to a model's
// block is that block's machine, not the run's best moment.
//
// Even a block's probes are seconds to minutes from its tokens: session 28's quiet Zen 4 run read
// 36-67 GB/s from one probe to the next and one model's two rounds 1.63x apart, so its per-row
// %bw ran 47-146%. --probe-every chunk pairs each few decode tokens with an in-process read probe
// right before and after them (pairedBw below): a %bw per chunk, against the bandwidth of that
// moment.
import { median } from './measure.mjs';

export const PROBE_EVERY = ['block', 'round', 'chunk'];
/** How a decode chunk's two probes (before, after) make its ceiling: see pairProbe. */
export const PAIR = ['max', 'mean'];

/**
 * The steps of a run, in order: `{ kind: 'probe', probe }` (probe = its index, 0 = the run's start
 * probe, the last = its end probe) and `{ kind: 'side', model, round, side }`.
 * sidesPerModel[m]: model m's sides in their base order (e.g. ['emollm/gguf', 'llama-bench/gguf']).
 * Round r runs them in the base order when (r + m) is even and reversed otherwise (A B | B A | A B
 * ...; the next model starts the other way, as the run's earlier one-round flip did).
 * probeEvery 'block': a probe before each model's block and after it, a probe between two models
 * shared by both (models + 1 probes); 'round': also one between a model's rounds; 'chunk': the
 * block's probes (the emollm child adds its own beside its decode chunks: pairedBw); null: none.
 * A model without sides is skipped: no steps, no probes (each probe costs seconds of CPU).
 */
export function decodeSchedule(sidesPerModel, { rounds = 1, probeEvery = 'block' } = {}) {
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`rounds: a whole number >= 1, not ${rounds}`);
  if (probeEvery !== null && !PROBE_EVERY.includes(probeEvery)) throw new Error(`probeEvery: ${PROBE_EVERY.join(' or ')} or null, not ${probeEvery}`);
  const steps = [];
  let probes = 0;
  const probe = () => steps.push({ kind: 'probe', probe: probes++ });
  let started = false;
  sidesPerModel.forEach((sides, model) => {
    if (!sides.length) return;  // a model with nothing to measure (no engine for it) gets no probes either
    if (probeEvery && !started) probe();
    started = true;
    for (let round = 0; round < rounds; round++) {
      if (probeEvery === 'round' && round > 0) probe();
      const order = (round + model) % 2 ? [...sides].reverse() : sides;
      for (const side of order) steps.push({ kind: 'side', model, round, side });
    }
    if (probeEvery) probe();
  });
  return steps;
}

/**
 * The probes beside a model's block (round null) or one of its rounds: the last probe before its
 * first measurement, every probe among its measurements, the first probe after its last one.
 * Returns probe indices in run order ([] when the schedule has none).
 */
export function probesBeside(steps, model, round = null) {
  const mine = (s) => s.kind === 'side' && s.model === model && (round === null || s.round === round);
  const first = steps.findIndex(mine);
  if (first < 0) return [];
  let last = first;
  steps.forEach((s, i) => { if (mine(s)) last = i; });
  const out = [];
  for (let i = first - 1; i >= 0; i--) if (steps[i].kind === 'probe') { out.push(steps[i].probe); break; }
  for (let i = first; i <= last; i++) if (steps[i].kind === 'probe') out.push(steps[i].probe);
  for (let i = last + 1; i < steps.length; i++) if (steps[i].kind === 'probe') { out.push(steps[i].probe); break; }
  return out;
}

const gbsOf = (p) => (typeof p === 'number' ? p : p?.read_bw_gbs);
const usable = (v) => Number.isFinite(v) && v > 0;

/**
 * The ceiling from some probes (numbers, or probe results with read_bw_gbs = max(read probe, best
 * anchor GEMV); failed probes as null): the highest, as the run's max(start, end) before. Also
 * the lowest and the spread = 100 x (max - min) / max: how far under the ceiling the lowest probe
 * beside the same rows read (a %bw can be that far off whichever the machine gave the rows).
 */
export function ceilingOf(probes) {
  const gbs = probes.map(gbsOf).filter(usable);
  if (!gbs.length) return { ceiling_gbs: null, min_gbs: null, spread_pct: null, probes_gbs: [] };
  const max = Math.max(...gbs), min = Math.min(...gbs);
  return { ceiling_gbs: max, min_gbs: min, spread_pct: (100 * (max - min)) / max, probes_gbs: gbs };
}

/** Decode GB/s of a row: weight bytes a token x tokens a second; null without both. */
export function decodeGbs(weightBytes, tokS) {
  return usable(weightBytes) && usable(tokS) ? (weightBytes * tokS) / 1e9 : null;
}

/** %bw: decode GB/s against a ceiling (GB/s); null without one. */
export function bwPct(weightBytes, tokS, ceilingGbs) {
  const gbs = decodeGbs(weightBytes, tokS);
  return gbs !== null && usable(ceilingGbs) ? (100 * gbs) / ceilingGbs : null;
}

/**
 * A ratio from rounds: num[r] / den[r] for each round where both sides measured (numbers or
 * null), the median of those per-round ratios (the figure the table shows: both sides of each
 * one measured seconds apart), their range, and the ratio of the best figures over all rounds
 * (what one round gives and the run printed before). null when no round has both sides.
 */
export function roundRatios(num, den) {
  const perRound = num.map((n, r) => (usable(n) && usable(den[r]) ? n / den[r] : null));
  const got = perRound.filter((x) => x !== null);
  if (!got.length) return null;
  const best = (xs) => Math.max(...xs.filter(usable));
  return { median: median(got), min: Math.min(...got), max: Math.max(...got), rounds: got.length, per_round: perRound,
    of_bests: best(num) / best(den) };
}

/**
 * One round's share of a side's time: --budget and --runs are per model and side over all its
 * rounds (a run with rounds takes about as long as one without), at least one run a round.
 */
export function perRound({ budgetS, maxRuns }, rounds) {
  return { budgetS: budgetS / rounds, maxRuns: Math.max(1, Math.ceil(maxRuns / rounds)) };
}

/**
 * Bytes a decode chunk's timed tokens read: weightBytes each, plus the KV cache's rows (K and V of
 * every layer: kvRowBytes a cached position) up to each token's position. Token i of the
 * generation (1-based) reads prompt + i positions, as bench:decode's "with KV" line counts them
 * (its mean over the generated tokens: prompt + (gen + 1) / 2); the chunk's timed tokens are
 * i = first .. first + tokens - 1.
 */
export function chunkBytes({ weightBytes, kvRowBytes = 0, prompt = 0 }, first, tokens) {
  if (!usable(weightBytes) || !Number.isInteger(first) || first < 1 || !Number.isInteger(tokens) || tokens < 0) return null;
  const positions = tokens * prompt + (tokens * (2 * first + tokens - 1)) / 2;  // sum of prompt + i over the chunk
  return tokens * weightBytes + kvRowBytes * positions;
}

/**
 * A chunk's ceiling from the probes before and after it (GB/s; a failed probe null): 'max' (the
 * default) the higher, as every ceiling here (ceilingOf: the %bw is held to the best the machine
 * gave beside the tokens, so a probe slowed by other work cannot raise the %bw; a chunk the
 * bandwidth changed in shows as spread, not hidden in an average); 'mean' their mean (the better
 * estimate when the bandwidth moved during the chunk). One probe alone when the other failed.
 */
export function pairProbe(before, after, pair = 'max') {
  if (!PAIR.includes(pair)) throw new Error(`pair: ${PAIR.join(' or ')}, not ${pair}`);
  const got = [before, after].filter(usable);
  if (!got.length) return null;
  return pair === 'max' ? Math.max(...got) : got.reduce((a, b) => a + b, 0) / got.length;
}

/**
 * The paired %bw of decode chunks. runs: the emollm child's runs with chunks, each
 * { chunks: [{ first, tokens, s }], probes_gbs: [p0, p1, ...] } where probe j ran before chunk j
 * and probe j + 1 after it (chunks.length + 1 probes); `tokens` timed tokens took `s` seconds
 * (the gaps between their deliveries). sizes: chunkBytes' { weightBytes, kvRowBytes, prompt }.
 * Per chunk: GB/s = chunkBytes / s, its ceiling pairProbe(before, after, pair), %bw = 100 x GB/s /
 * ceiling. Returns the per-chunk figures (every run's, in order), the median %bw and its range,
 * the range of the chunks' ceilings, and the median %bw by the other pairing too; null when no
 * chunk has both a time and a probe.
 */
export function pairedBw(runs, sizes, { pair = 'max' } = {}) {
  const other = pair === 'max' ? 'mean' : 'max';
  const perChunk = [];
  for (const run of runs ?? []) {
    const probes = run?.probes_gbs ?? [];
    (run?.chunks ?? []).forEach((c, j) => {
      const bytes = chunkBytes(sizes, c.first, c.tokens);
      const gbs = bytes !== null && c.tokens > 0 && usable(c.s) ? bytes / c.s / 1e9 : null;
      const ceiling = pairProbe(probes[j], probes[j + 1], pair), alt = pairProbe(probes[j], probes[j + 1], other);
      const tokS = gbs !== null ? c.tokens / c.s : null;
      perChunk.push({ first: c.first, tokens: c.tokens, gbs, ceiling_gbs: ceiling,
        bw_pct: gbs !== null && ceiling !== null ? (100 * gbs) / ceiling : null,
        [`bw_pct_${other}`]: gbs !== null && alt !== null ? (100 * gbs) / alt : null,
        // the decode rate held to the bandwidth of its moment (tok/s per GB/s of probe): pairedRatio's
        tok_s: tokS, tok_s_per_gbs: tokS !== null && ceiling !== null ? tokS / ceiling : null,
        [`tok_s_per_gbs_${other}`]: tokS !== null && alt !== null ? tokS / alt : null });
    });
  }
  const pct = perChunk.map((c) => c.bw_pct).filter((x) => x !== null);
  if (!pct.length) return null;
  const ceilings = perChunk.filter((c) => c.bw_pct !== null).map((c) => c.ceiling_gbs);
  const gbs = perChunk.filter((c) => c.bw_pct !== null).map((c) => c.gbs);
  const med = (k) => median(perChunk.map((c) => c[k]).filter((x) => x !== null));
  return { pair, chunks: pct.length, median_pct: median(pct), min_pct: Math.min(...pct), max_pct: Math.max(...pct),
    median_gbs: median(gbs), probe_min_gbs: Math.min(...ceilings), probe_max_gbs: Math.max(...ceilings),
    [`median_pct_${other}`]: med(`bw_pct_${other}`),
    median_tok_s_per_gbs: med('tok_s_per_gbs'), [`median_tok_s_per_gbs_${other}`]: med(`tok_s_per_gbs_${other}`),
    per_chunk: perChunk };
}

/**
 * llama-bench's paired decode runs (bench:decode --probe-every chunk) as one pairedBw run. paired:
 * { runs: [{ tokens, s, cached }], probes_gbs: [p0 .. pN], probes_late: [bool ..] } from one
 * llama-bench process of N + 1 tests (-p 0 -n tokens -d prompt -r 1 each): the first test computes the
 * depth and is not paired; run j (test j + 2) lies between probe j (taken after test j + 1's result) and
 * probe j + 1 (after its own). Each run is a chunk from generated token 1 (llama-bench times all its
 * tokens, after one warm-up token), so chunkBytes with sizes.prompt = the depth counts its KV rows.
 * Left out (s null): a run whose depth was not restored from the first test's state (cached false: the
 * depth's prefill ran between its probe and its tokens) and a run whose probe before it was late
 * (probes_late[j]: the probe still ran when llama-bench began the run's warm-up token, so they read
 * beside each other); a late probe's figure is dropped too (null: the run before it pairs with its
 * other probe alone). With each run's cpu_s and probes_cpu_gbs (one thread) chunkRunByCpu gives the
 * pairing by CPU time.
 */
export function benchPairedRun(paired) {
  const late = paired?.probes_late ?? [];
  const out = (r, j) => r.cached === false || late[j];
  return {
    chunks: (paired?.runs ?? []).map((r, j) => ({ first: 1, tokens: r.tokens, s: out(r, j) ? null : r.s, cpu_s: out(r, j) ? null : r.cpu_s ?? null })),
    probes_gbs: (paired?.probes_gbs ?? []).map((g, k) => (late[k] ? null : g)),
    probes_cpu_gbs: (paired?.probes_cpu_gbs ?? []).map((g, k) => (late[k] ? null : g)),
  };
}

/**
 * bench:decode's --lb-tokens / --lb-runs (null: not given) checked and resolved: they need the
 * paired mode (paired: --probe-every chunk with probes); tokens a whole number from 1 to gen
 * (default defaults.tokens, at most gen), runs from 1 to 1000 (default defaults.runs). Throws
 * with the flag's name otherwise.
 */
export function lbPairedOptions({ lbTokens = null, lbRuns = null, gen, paired }, defaults) {
  for (const [flag, v] of [['--lb-tokens', lbTokens], ['--lb-runs', lbRuns]]) {
    if (v !== null && !paired) throw new Error(`${flag} sets llama-bench's paired runs: it needs --probe-every chunk (and probes: not --no-probe)`);
  }
  const tokens = lbTokens ?? Math.min(defaults.tokens, gen), runs = lbRuns ?? defaults.runs;
  if (!Number.isInteger(tokens) || tokens < 1 || tokens > gen) throw new Error(`--lb-tokens: a whole number of tokens from 1 to --gen (${gen}), not '${tokens}'`);
  if (!Number.isInteger(runs) || runs < 1 || runs > 1000) throw new Error(`--lb-runs: a whole number of runs from 1 to 1000, not '${runs}'`);
  return { lbTokens: tokens, lbRuns: runs };
}

/**
 * The phase-fair decode ratio of two pairedBw results (emollm's chunks, llama-bench's runs): the
 * median of emollm's tok/s per GB/s of its probes over llama-bench's: the ratio of the decode
 * rates, each held to the bandwidth of its own moment (the KV bytes left out: the %bw columns count
 * each engine's own KV cache). Also by the other pairing of the probes (`ratio_<other>`). null
 * without both.
 */
export function pairedRatio(num, den) {
  if (!num || !den || num.pair !== den.pair) return null;
  const other = num.pair === 'max' ? 'mean' : 'max';
  const r = (k) => (usable(num[k]) && usable(den[k]) ? num[k] / den[k] : null);
  const ratio = r('median_tok_s_per_gbs');
  return ratio === null ? null : { pair: num.pair, ratio, [`ratio_${other}`]: r(`median_tok_s_per_gbs_${other}`) };
}

/**
 * The chunk plan of a paired decode run: gen tokens in chunks of `chunk` (the last one shorter),
 * as [{ first, count }] with `first` the 1-based index of the chunk's first generated token.
 */
export function chunkPlan(gen, chunk) {
  if (!Number.isInteger(gen) || gen < 1) throw new Error(`gen: a whole number >= 1, not ${gen}`);
  if (!Number.isInteger(chunk) || chunk < 2) throw new Error(`chunk: a whole number >= 2 (a chunk times the gaps between its tokens), not ${chunk}`);
  const out = [];
  for (let first = 1; first <= gen; first += chunk) out.push({ first, count: Math.min(chunk, gen - first + 1) });
  return out;
}

/**
 * A chunked run's figures by CPU time (bench:decode --cpu-clock, one thread), for pairedBw: each
 * chunk's `cpu_s` (the process's CPU seconds over its timed tokens) as its time, and the probes'
 * CPU-time rates (`probes_cpu_gbs`, readBandwidth's cpuGbs) as its probes; a chunk without a CPU
 * time, or a probe without a CPU rate, then counts as not measured.
 */
export function chunkRunByCpu(run) {
  return { ...run, chunks: (run?.chunks ?? []).map((c) => ({ ...c, s: c.cpu_s ?? null })), probes_gbs: run?.probes_cpu_gbs ?? [] };
}
