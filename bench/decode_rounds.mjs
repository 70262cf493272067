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
import { median } from './measure.mjs';

export const PROBE_EVERY = ['block', 'round'];

/**
 * The steps of a run, in order: `{ kind: 'probe', probe }` (probe = its index, 0 = the run's start
 * probe, the last = its end probe) and `{ kind: 'side', model, round, side }`.
 * sidesPerModel[m]: model m's sides in their base order (e.g. ['emollm/gguf', 'llama-bench/gguf']).
 * Round r runs them in the base order when (r + m) is even and reversed otherwise (A B | B A | A B
 * ...; the next model starts the other way, as the run's earlier one-round flip did).
 * probeEvery 'block': a probe before each model's block and after it, a probe between two models
 * shared by both (models + 1 probes); 'round': also one between a model's rounds; null: none.
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
