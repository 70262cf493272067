import { describe, expect, it } from 'vitest';

import { PROBE_EVERY, benchPairedRun, bwPct, ceilingOf, chunkBytes, chunkPlan, chunkRunByCpu, decodeGbs, decodeSchedule, lbPairedOptions, pairProbe, pairedBw, pairedRatio, perRound, probesBeside, roundRatios } from '../../bench/decode_rounds.mjs';

// bench:decode's schedule (sides alternated in rounds, probes beside each model's block) and the
// arithmetic on it (bench/decode_rounds.mjs): numbers in, no timings.
type Step = { kind: 'probe'; probe: number } | { kind: 'side'; model: number; round: number; side: string };
const compact = (steps: Step[]) => steps.map((s) => (s.kind === 'probe' ? `P${s.probe}` : `${s.model}${s.side}${s.round}`));

describe('bench:decode schedule', () => {
  it('alternates the sides A B B A within a model and starts the next model the other way', () => {
    const steps = decodeSchedule([['A', 'B'], ['A', 'B']], { rounds: 4, probeEvery: 'block' });
    expect(compact(steps)).toEqual([
      'P0', '0A0', '0B0', '0B1', '0A1', '0A2', '0B2', '0B3', '0A3',
      'P1', '1B0', '1A0', '1A1', '1B1', '1B2', '1A2', '1A3', '1B3', 'P2',
    ]);
  });

  it('puts a probe between the rounds with probeEvery round, none without probes', () => {
    const three = [['A', 'B', 'C']];
    expect(compact(decodeSchedule(three, { rounds: 3, probeEvery: 'round' }))).toEqual([
      'P0', '0A0', '0B0', '0C0', 'P1', '0C1', '0B1', '0A1', 'P2', '0A2', '0B2', '0C2', 'P3',
    ]);
    expect(compact(decodeSchedule(three, { rounds: 2, probeEvery: null }))).toEqual(['0A0', '0B0', '0C0', '0C1', '0B1', '0A1']);
    // one round, one model: the run's start and end probe only (what a run cost before)
    expect(compact(decodeSchedule([['A']], { rounds: 1 }))).toEqual(['P0', '0A0', 'P1']);
  });

  it('gives each model its own sides (an HF row only where the model has one)', () => {
    const steps = decodeSchedule([['e/gguf', 'e/hf', 'lb'], ['e/gguf', 'lb']], { rounds: 1 });
    expect(compact(steps)).toEqual(['P0', '0e/gguf0', '0e/hf0', '0lb0', 'P1', '1lb0', '1e/gguf0', 'P2']);
  });

  it('gives a model with no sides neither steps nor probes', () => {
    expect(compact(decodeSchedule([[], ['A', 'B'], [], ['A']], { rounds: 2, probeEvery: 'round' }))).toEqual([
      'P0', '1B0', '1A0', 'P1', '1A1', '1B1', 'P2', '3A0', 'P3', '3A1', 'P4',
    ]);
    expect(decodeSchedule([[], []], { rounds: 3 })).toEqual([]);
  });

  it('rejects a round count or probe placement it does not know', () => {
    expect(() => decodeSchedule([['A']], { rounds: 0 })).toThrow(/rounds/);
    expect(() => decodeSchedule([['A']], { rounds: 1.5 })).toThrow(/rounds/);
    expect(() => decodeSchedule([['A']], { rounds: 1, probeEvery: 'side' as 'block' })).toThrow(/probeEvery/);
  });

  it('finds the probes beside a block and beside each of its rounds', () => {
    const block = decodeSchedule([['A', 'B'], ['A', 'B'], ['A']], { rounds: 2, probeEvery: 'block' });
    expect(probesBeside(block, 0)).toEqual([0, 1]);
    expect(probesBeside(block, 1)).toEqual([1, 2]);
    expect(probesBeside(block, 2)).toEqual([2, 3]);
    // probes beside the block only: every round of a model gets the block's two
    expect(probesBeside(block, 1, 0)).toEqual([1, 2]);
    expect(probesBeside(block, 1, 1)).toEqual([1, 2]);
    const round = decodeSchedule([['A', 'B'], ['A', 'B']], { rounds: 3, probeEvery: 'round' });
    // P0 m0r0 P1 m0r1 P2 m0r2 P3 m1r0 P4 m1r1 P5 m1r2 P6
    expect(probesBeside(round, 0)).toEqual([0, 1, 2, 3]);
    expect(probesBeside(round, 1)).toEqual([3, 4, 5, 6]);
    expect(probesBeside(round, 0, 1)).toEqual([1, 2]);
    expect(probesBeside(round, 1, 2)).toEqual([5, 6]);
    expect(probesBeside(decodeSchedule([['A']], { rounds: 2, probeEvery: null }), 0)).toEqual([]);
    expect(probesBeside(block, 7)).toEqual([]);
  });
});

describe('bench:decode ceiling and %bw', () => {
  // Session 26's swing: 35.5 GB/s at the start, 49.3 at the end; a middle probe at 40
  const probes = [{ read_bw_gbs: 35.5 }, { read_bw_gbs: 40 }, { read_bw_gbs: 49.3 }];
  const steps = decodeSchedule([['e', 'lb'], ['e', 'lb']], { rounds: 2, probeEvery: 'block' });
  const ceilingOfModel = (m: number) => ceilingOf(probesBeside(steps, m).map((i) => probes[i] ?? null));

  it("holds each row to the highest probe of its own block, not the run's", () => {
    const first = ceilingOfModel(0), second = ceilingOfModel(1);
    expect(first.ceiling_gbs).toBe(40);
    expect(first.min_gbs).toBe(35.5);
    expect(first.probes_gbs).toEqual([35.5, 40]);
    expect(first.spread_pct).toBeCloseTo((100 * 4.5) / 40, 10);
    expect(second.ceiling_gbs).toBe(49.3);
    expect(second.spread_pct).toBeCloseTo((100 * 9.3) / 49.3, 10);
    // 0.6 GB a token at 60 tok/s = 36 GB/s: 90% of the first block's 40, not 73% of the run's 49.3
    expect(decodeGbs(0.6e9, 60)).toBeCloseTo(36, 10);
    expect(bwPct(0.6e9, 60, first.ceiling_gbs)).toBeCloseTo(90, 10);
    expect(bwPct(0.6e9, 60, second.ceiling_gbs)).toBeCloseTo((100 * 36) / 49.3, 10);
  });

  it('skips failed probes and has no ceiling without one', () => {
    expect(ceilingOf([null, { read_bw_gbs: 41 }, { read_bw_gbs: NaN }, 0]).ceiling_gbs).toBe(41);
    expect(ceilingOf([38, 44]).ceiling_gbs).toBe(44);
    expect(ceilingOf([null, undefined])).toEqual({ ceiling_gbs: null, min_gbs: null, spread_pct: null, probes_gbs: [] });
    expect(bwPct(0.6e9, 60, null)).toBeNull();
    expect(bwPct(0.6e9, NaN, 40)).toBeNull();
    expect(decodeGbs(null, 60)).toBeNull();
  });
});

describe('bench:decode ratios from rounds', () => {
  it('takes the median of the per-round ratios, beside the ratio of the bests', () => {
    // emollm 40 / 44 / 42 tok/s, llama-bench 50 / 40 / 42 in the same rounds
    const r = roundRatios([40, 44, 42], [50, 40, 42]);
    expect(r?.per_round).toEqual([0.8, 1.1, 1]);
    expect(r?.median).toBeCloseTo(1, 12);
    expect(r?.min).toBeCloseTo(0.8, 12);
    expect(r?.max).toBeCloseTo(1.1, 12);
    expect(r?.rounds).toBe(3);
    expect(r?.of_bests).toBeCloseTo(44 / 50, 12);
    // an even count: the mean of the middle two
    expect(roundRatios([30, 30, 30, 30], [10, 20, 30, 15])?.median).toBeCloseTo((1.5 + 2) / 2, 12);
  });

  it('leaves out the rounds one side did not measure', () => {
    const r = roundRatios([40, null, 42], [50, 40, NaN]);
    expect(r?.per_round).toEqual([0.8, null, null]);
    expect(r?.median).toBeCloseTo(0.8, 12);
    expect(r?.rounds).toBe(1);
    expect(roundRatios([null, null], [1, 2])).toBeNull();
  });

  it('splits the per-side budget over the rounds, at least one run a round', () => {
    expect(perRound({ budgetS: 20, maxRuns: 4 }, 2)).toEqual({ budgetS: 10, maxRuns: 2 });
    expect(perRound({ budgetS: 20, maxRuns: 4 }, 3)).toEqual({ budgetS: 20 / 3, maxRuns: 2 });
    expect(perRound({ budgetS: 8, maxRuns: 1 }, 4)).toEqual({ budgetS: 2, maxRuns: 1 });
    expect(perRound({ budgetS: 20, maxRuns: 4 }, 1)).toEqual({ budgetS: 20, maxRuns: 4 });
  });
});

describe('bench:decode paired %bw (--probe-every chunk)', () => {
  it('schedules chunk like block (the block probes stay) and still refuses an unknown value', () => {
    expect(PROBE_EVERY).toContain('chunk');
    const two = [['A', 'B'], ['A']];
    expect(compact(decodeSchedule(two, { rounds: 2, probeEvery: 'chunk' }))).toEqual(compact(decodeSchedule(two, { rounds: 2, probeEvery: 'block' })));
    expect(() => decodeSchedule(two, { probeEvery: 'token' as never })).toThrow(/probeEvery/);
  });

  it('cuts the generated tokens into chunks, the last one shorter', () => {
    expect(chunkPlan(10, 4)).toEqual([{ first: 1, count: 4 }, { first: 5, count: 4 }, { first: 9, count: 2 }]);
    expect(chunkPlan(64, 8)).toHaveLength(8);
    expect(chunkPlan(8, 8)).toEqual([{ first: 1, count: 8 }]);
    expect(() => chunkPlan(10, 1)).toThrow(/chunk/);
    expect(() => chunkPlan(0, 4)).toThrow(/gen/);
  });

  it("counts a chunk's weight bytes and the KV rows up to each token's position", () => {
    // tokens 3..5 of a 10-token prompt read 13 + 14 + 15 cached positions of 2 bytes each
    expect(chunkBytes({ weightBytes: 100, kvRowBytes: 2, prompt: 10 }, 3, 3)).toBe(300 + 2 * (13 + 14 + 15));
    expect(chunkBytes({ weightBytes: 100 }, 1, 4)).toBe(400);  // weights only
    // over the whole generation, the same bytes as gen x (weights + KV at the mean position prompt + (gen + 1) / 2)
    const sizes = { weightBytes: 1e6, kvRowBytes: 1000, prompt: 512 }, gen = 64;
    const whole = chunkPlan(gen, 8).reduce((a, c) => a + chunkBytes(sizes, c.first, c.count)!, 0);
    expect(whole).toBeCloseTo(gen * (1e6 + 1000 * (512 + (gen + 1) / 2)), 6);
    expect(chunkBytes({ weightBytes: 0 }, 1, 4)).toBeNull();
    expect(chunkBytes({ weightBytes: 100 }, 0, 4)).toBeNull();
  });

  it("pairs a chunk with the higher of its probes, or their mean, or the one that measured", () => {
    expect(pairProbe(30, 60)).toBe(60);
    expect(pairProbe(30, 60, 'mean')).toBe(45);
    expect(pairProbe(null, 40)).toBe(40);
    expect(pairProbe(50, NaN, 'mean')).toBe(50);
    expect(pairProbe(null, null)).toBeNull();
    expect(() => pairProbe(1, 2, 'min' as never)).toThrow(/pair/);
  });

  it('holds each chunk to its own probes: a swing between chunks does not move the %bw', () => {
    // a machine that swings 36 <-> 64 GB/s: each chunk reads at 90% of its moment's bandwidth
    const sizes = { weightBytes: 0.9e9, kvRowBytes: 0, prompt: 0 };
    const probes = [36, 36, 64, 64, 36];
    const chunks = [36, 64, 64, 36].map((bw, j) => ({ first: 2 + 8 * j, tokens: 7, s: (7 * 0.9e9) / (0.9 * bw * 1e9) }));
    const p = pairedBw([{ chunks, probes_gbs: probes }], sizes)!;
    expect(p.chunks).toBe(4);
    // chunks 0 and 3 (36 GB/s) sit next to a 64 GB/s probe: against the higher probe they read 51%
    expect(p.per_chunk.map((c) => Math.round(c.bw_pct!))).toEqual([90, 90, 90, 51]);
    expect(p.median_pct).toBeCloseTo(90, 6);
    expect(p.min_pct).toBeCloseTo(50.625, 6);
    expect(p.max_pct).toBeCloseTo(90, 6);
    expect([p.probe_min_gbs, p.probe_max_gbs]).toEqual([36, 64]);
    // by the mean pairing the straddled chunk reads 100 x 32.4 / 50
    expect(p.per_chunk[3]!.bw_pct_mean).toBeCloseTo(64.8, 6);
    expect(p.median_pct_mean).toBeCloseTo(90, 6);
    // against one ceiling for all (the block's 64) the slow-phase chunks would read 51%
    expect(bwPct(sizes.weightBytes, 0.9 * 36 / 0.9, 64)).toBeCloseTo(50.625, 6);
  });

  it("takes every run's chunks, skips untimed chunks and failed probes, and is null with nothing to pair", () => {
    const sizes = { weightBytes: 1e9 };
    const runs = [
      { chunks: [{ first: 2, tokens: 3, s: 0.1 }, { first: 6, tokens: 0, s: null }], probes_gbs: [40, 50, 45] },
      { chunks: [{ first: 2, tokens: 3, s: 0.15 }], probes_gbs: [null, 20] },
    ];
    const p = pairedBw(runs, sizes)!;
    expect(p.chunks).toBe(2);
    expect(p.per_chunk[0]!.gbs).toBeCloseTo(30, 6);
    expect(p.per_chunk[0]!.bw_pct).toBeCloseTo(60, 6);
    expect(p.per_chunk[1]!.bw_pct).toBeNull();
    expect(p.per_chunk[2]!.bw_pct).toBeCloseTo(100, 6);
    expect(p.median_pct).toBeCloseTo(80, 6);
    expect([p.probe_min_gbs, p.probe_max_gbs]).toEqual([20, 50]);
    expect(pairedBw([], sizes)).toBeNull();
    // by CPU time (--cpu-clock): the chunks' cpu_s against the probes' CPU-time rates
    const cpuRuns = [{ chunks: [{ first: 2, tokens: 3, s: 0.3, cpu_s: 0.1 }, { first: 6, tokens: 3, s: 0.3 }], probes_gbs: [10, 10, 10], probes_cpu_gbs: [25, 30, null] }];
    const c = pairedBw(cpuRuns.map(chunkRunByCpu), sizes)!;
    expect(c.chunks).toBe(1);  // the second chunk has no CPU time
    expect(c.per_chunk[0]!.bw_pct).toBeCloseTo(100, 6);  // 30 GB/s by CPU time against the higher probe, 30
    expect(pairedBw(cpuRuns, sizes)!.per_chunk[0]!.bw_pct).toBeCloseTo(100, 6);  // by wall: 10 GB/s against 10
    expect(pairedBw([{ chunks: [{ first: 2, tokens: 3, s: 0.1 }], probes_gbs: [40, 40] }].map(chunkRunByCpu), sizes)).toBeNull();
    expect(pairedBw([{ chunks: [{ first: 2, tokens: 3, s: 0.1 }], probes_gbs: [null, null] }], sizes)).toBeNull();
  });
});

describe("bench:decode llama-bench's paired runs and the phase-fair ratio", () => {
  // Session 30's f32 row: emollm's blocks in a ~35 GB/s phase, llama-bench's between them at ~43 GB/s
  // of weights: 0.79x by tok/s, the same code 1.31x a day before. Here each engine reads 90% of its
  // moment (emollm 4.4 GB a token at 0.9 x 35 GB/s, llama-bench at 0.9 x 60): the tok/s ratio is
  // 35 / 60 = 0.58, the ratio of the rates held to their probes 1.
  const w = 4.4e9;
  const emollm = { chunks: [0, 1, 2].map((j) => ({ first: 2 + 8 * j, tokens: 7, s: (7 * w) / (0.9 * 35e9) })), probes_gbs: [35, 35, 35, 35] };
  const bench = { runs: [0, 1, 2].map(() => ({ tokens: 16, s: (16 * w) / (0.9 * 60e9), cached: true })), probes_gbs: [60, 60, 60, 60], probes_late: [false, false, false, false] };

  it('pairs each llama-bench run with the probes before and after it, from generated token 1 after the depth', () => {
    const run = benchPairedRun(bench);
    expect(run.chunks.map((c) => c.first)).toEqual([1, 1, 1]);
    expect(run.probes_gbs).toEqual([60, 60, 60, 60]);
    const kv = { weightBytes: w, kvRowBytes: 1000, prompt: 512 };
    const p = pairedBw([run], kv)!;
    expect(p.chunks).toBe(3);
    // 16 tokens reading 513..528 cached positions of 1000 bytes each beside the weights
    expect(p.per_chunk[0]!.gbs).toBeCloseTo((16 * w + 1000 * (16 * 512 + (16 * 17) / 2)) / bench.runs[0]!.s / 1e9, 6);
    expect(p.per_chunk[0]!.tok_s).toBeCloseTo(16 / bench.runs[0]!.s, 9);
    expect(pairedBw([run], { weightBytes: w })!.median_pct).toBeCloseTo(90, 6);
  });

  it('gives the ratio of the decode rates each held to its own probes, not the tok/s ratio', () => {
    const e = pairedBw([emollm], { weightBytes: w })!, b = pairedBw([benchPairedRun(bench)], { weightBytes: w })!;
    const tokRatio = e.per_chunk[0]!.tok_s! / b.per_chunk[0]!.tok_s!;
    expect(tokRatio).toBeCloseTo(35 / 60, 9);
    const r = pairedRatio(e, b)!;
    expect(r.ratio).toBeCloseTo(1, 9);
    expect(r.ratio_mean).toBeCloseTo(1, 9);
    // equal to the ratio of the paired %bw when both count the same bytes a token
    expect(r.ratio).toBeCloseTo(e.median_pct / b.median_pct, 9);
    // emollm 10% faster at its moment: 1.1
    const faster = { ...emollm, chunks: emollm.chunks.map((c) => ({ ...c, s: c.s / 1.1 })) };
    expect(pairedRatio(pairedBw([faster], { weightBytes: w }), b)!.ratio).toBeCloseTo(1.1, 9);
    expect(pairedRatio(null, b)).toBeNull();
    expect(pairedRatio(e, pairedBw([benchPairedRun(bench)], { weightBytes: w }, { pair: 'mean' }))).toBeNull();  // different pairings
  });

  it('leaves out a run its late probe overlapped, or whose depth was not restored, and the late probe', () => {
    // probe 1 ran into run 1's warm-up: run 1 and probe 1 out; run 0 pairs with probe 0 alone
    const late = { ...bench, probes_gbs: [60, 30, 60, 58], probes_late: [false, true, false, false] };
    const run = benchPairedRun(late);
    expect(run.probes_gbs).toEqual([60, null, 60, 58]);
    expect(run.chunks.map((c) => c.s === null)).toEqual([false, true, false]);
    const p = pairedBw([run], { weightBytes: w })!;
    expect(p.chunks).toBe(2);
    expect(p.per_chunk.map((c) => c.ceiling_gbs)).toEqual([60, 60, 60]);
    const uncached = benchPairedRun({ ...bench, runs: bench.runs.map((r, j) => ({ ...r, cached: j !== 2 })) });
    expect(uncached.chunks.map((c) => c.s === null)).toEqual([false, false, true]);
    expect(benchPairedRun(null)).toEqual({ chunks: [], probes_gbs: [], probes_cpu_gbs: [] });
  });

  it('pairs the runs by CPU time with their cpu_s and the probes\' CPU-time rates (--cpu-clock)', () => {
    // wall: 16 tokens in 0.4 s against 40 GB/s probes; by CPU time 0.3 s against 50 GB/s
    const paired = { runs: [{ tokens: 16, s: 0.4, cpu_s: 0.3, cached: true }, { tokens: 16, s: 0.4, cached: true }],
      probes_gbs: [40, 40, 40], probes_cpu_gbs: [50, 50, 45], probes_late: [false, false, false] };
    const cpu = pairedBw([chunkRunByCpu(benchPairedRun(paired))], { weightBytes: 1e9 })!;
    expect(cpu.chunks).toBe(1);  // the second run has no CPU time
    expect(cpu.per_chunk[0]!.tok_s).toBeCloseTo(16 / 0.3, 9);
    expect(cpu.per_chunk[0]!.bw_pct).toBeCloseTo((100 * 16 / 0.3) / 50, 9);
    const wall = pairedBw([benchPairedRun(paired)], { weightBytes: 1e9 })!;
    expect(wall.chunks).toBe(2);
    expect(wall.per_chunk[0]!.bw_pct).toBeCloseTo(100, 9);
    // a late probe's CPU rate is dropped with its wall rate
    expect(benchPairedRun({ ...paired, probes_late: [false, true, false] }).probes_cpu_gbs).toEqual([50, null, 45]);
  });

  it('checks --lb-tokens and --lb-runs', () => {
    const d = { tokens: 16, runs: 8 };
    expect(lbPairedOptions({ gen: 64, paired: true }, d)).toEqual({ lbTokens: 16, lbRuns: 8 });
    expect(lbPairedOptions({ gen: 8, paired: true }, d)).toEqual({ lbTokens: 8, lbRuns: 8 });
    expect(lbPairedOptions({ lbTokens: 32, lbRuns: 3, gen: 64, paired: true }, d)).toEqual({ lbTokens: 32, lbRuns: 3 });
    expect(lbPairedOptions({ gen: 64, paired: false }, d)).toEqual({ lbTokens: 16, lbRuns: 8 });  // unused defaults
    expect(() => lbPairedOptions({ lbTokens: 8, gen: 64, paired: false }, d)).toThrow(/--lb-tokens .*--probe-every chunk/);
    expect(() => lbPairedOptions({ lbRuns: 2, gen: 64, paired: false }, d)).toThrow(/--lb-runs .*--probe-every chunk/);
    expect(() => lbPairedOptions({ lbTokens: 0, gen: 64, paired: true }, d)).toThrow(/--lb-tokens/);
    expect(() => lbPairedOptions({ lbTokens: 65, gen: 64, paired: true }, d)).toThrow(/--lb-tokens/);
    expect(() => lbPairedOptions({ lbTokens: NaN, gen: 64, paired: true }, d)).toThrow(/--lb-tokens/);
    expect(() => lbPairedOptions({ lbRuns: 1.5, gen: 64, paired: true }, d)).toThrow(/--lb-runs/);
    expect(() => lbPairedOptions({ lbRuns: 0, gen: 64, paired: true }, d)).toThrow(/--lb-runs/);
  });
});
