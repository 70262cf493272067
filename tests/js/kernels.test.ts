import { readFileSync } from 'node:fs';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { EmollmError, attention, configure, cpuInfo, dequantize, gemm, mvpProjection, quantize, readBandwidth, type DType } from '../../lib/index.js';
import { native } from '../../lib/native.js';

// Deterministic pseudo-random values in [-1, 1).
function randn(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

// Double-precision reference: Y = X W^T + b with W given in f32.
function refGemm(x: Float32Array, w: Float32Array, bias: Float32Array | undefined, m: number, n: number, k: number) {
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let acc = bias ? bias[j]! : 0;
      for (let p = 0; p < k; p++) acc += x[i * k + p]! * w[j * k + p]!;
      y[i * n + j] = acc;
    }
  return y;
}

describe('cpuInfo', () => {
  it('reports at least one core and a known ISA level', () => {
    const info = cpuInfo();
    expect(info.physicalCores).toBeGreaterThanOrEqual(1);
    expect(['scalar', 'avx2', 'avx512', 'amx']).toContain(info.isaDetected);
    expect(typeof info.features.avx2).toBe('boolean');
  });

  it('reports the CPUID family and model /proc/cpuinfo prints, and the double-pumped AVX-512 rule', () => {
    const info = cpuInfo();
    expect(typeof info.features.avx512DoublePumped).toBe('boolean');
    // the rule (base/cpu_features.h): AMD family 25 (Zen 4) with AVX-512
    expect(info.features.avx512DoublePumped).toBe(info.vendor === 'amd' && info.family === 25 && info.features.avx512f === true);
    if (process.platform !== 'linux' || (process.arch !== 'x64' && process.arch !== 'ia32')) {
      expect(info.family).toBe(0);
      return;
    }
    const text = readFileSync('/proc/cpuinfo', 'utf8');
    const field = (name: string): string | undefined => new RegExp(`^${name}\\s*:\\s*(.+)$`, 'm').exec(text)?.[1]?.trim();
    expect(info.family).toBe(Number(field('cpu family')));
    expect(info.model).toBe(Number(field('model')));
    expect(info.vendor).toBe(field('vendor_id') === 'AuthenticAMD' ? 'amd' : 'other');
  });
});

describe('quantize / dequantize', () => {
  it('round-trips f32 exactly and bf16/f16 within their precision', () => {
    const x = randn(64, 1);
    expect(Array.from(dequantize(quantize(x, 'f32'), 'f32', 64))).toEqual(Array.from(x));
    const f16 = dequantize(quantize(x, 'f16'), 'f16', 64);
    const bf16 = dequantize(quantize(x, 'bf16'), 'bf16', 64);
    for (let i = 0; i < 64; i++) {
      expect(Math.abs(f16[i]! - x[i]!)).toBeLessThanOrEqual(Math.abs(x[i]!) * 2 ** -11 + 1e-7);
      expect(Math.abs(bf16[i]! - x[i]!)).toBeLessThanOrEqual(Math.abs(x[i]!) * 2 ** -8);
    }
  });

  it('uses the ggml block layouts (34-byte q8_0, 18-byte q4_0 blocks)', () => {
    const x = randn(96, 2);
    expect(quantize(x, 'q8_0').byteLength).toBe(3 * 34);
    expect(quantize(x, 'q4_0').byteLength).toBe(3 * 18);
    // q8_0 error is at most half a step of amax/127 per block.
    const q8 = dequantize(quantize(x, 'q8_0'), 'q8_0', 96);
    for (let b = 0; b < 3; b++) {
      const block = x.subarray(b * 32, b * 32 + 32);
      const step = Math.max(...Array.from(block, Math.abs)) / 127;
      for (let i = 0; i < 32; i++) expect(Math.abs(q8[b * 32 + i]! - block[i]!)).toBeLessThanOrEqual(step * 0.5 + 1e-3 * step);
    }
  });

  it('rejects lengths that are not whole blocks with a typed error', () => {
    expect(() => quantize(new Float32Array(33), 'q4_0')).toThrow(EmollmError);
    try {
      quantize(new Float32Array(33), 'q4_0');
    } catch (e) {
      expect((e as EmollmError).code).toBe('ERR_INVALID_ARGUMENT');
    }
  });
});

describe('gemm through the addon', () => {
  const cases: Array<[DType, number]> = [
    // [dtype, tolerance relative to sqrt(k)]: weights are quantized first, so the reference uses the
    // dequantized weights and only accumulation order (and bf16 activation rounding) differs.
    ['f32', 1e-5],
    ['f16', 1e-5],
    ['bf16', 1e-2],
    ['q8_0', 1e-5],
    ['q4_0', 1e-5],
  ];
  beforeAll(() => configure({ quantActivations: 'f32' }));
  afterAll(() => configure({ quantActivations: 'q8' }));

  for (const [dtype, tol] of cases) {
    it(`matches a float64 reference for ${dtype} weights on odd shapes (f32 activations)`, async () => {
      for (const [m, n, k] of [
        [1, 5, 64],
        [3, 17, 96],
        [17, 33, 128],
      ] as const) {
        const x = randn(m * k, m + n + k);
        const wq = quantize(randn(n * k, 7 * k + n), dtype);
        const wf = dequantize(wq, dtype, n * k);
        const bias = randn(n, 99);
        const y = await gemm({ x, w: wq, wtype: dtype, bias, m, n, k });
        const ref = refGemm(x, wf, bias, m, n, k);
        expect(y.length).toBe(m * n);
        for (let i = 0; i < m * n; i++) expect(Math.abs(y[i]! - ref[i]!)).toBeLessThanOrEqual(tol * Math.sqrt(k));
      }
    });
  }

  it('rounds activations to q8_0 blocks in q8 mode, as llama.cpp does', async () => {
    configure({ quantActivations: 'q8' });
    try {
      expect(cpuInfo().quantActivations).toBe('q8');
      const [m, n, k] = [1, 9, 256];
      const x = randn(m * k, 11);
      const wq = quantize(randn(n * k, 12), 'q4_0');
      const wf = dequantize(wq, 'q4_0', n * k);
      // the reference: activations through q8_0 and back, then an exact product
      const xq = dequantize(quantize(x, 'q8_0'), 'q8_0', m * k);
      const y = await gemm({ x, w: wq, wtype: 'q4_0', m, n, k });
      const exact = refGemm(xq, wf, undefined, m, n, k);
      const f32 = refGemm(x, wf, undefined, m, n, k);
      let differs = false;
      for (let i = 0; i < m * n; i++) {
        expect(Math.abs(y[i]! - exact[i]!)).toBeLessThanOrEqual(1e-5 * Math.sqrt(k));
        differs ||= Math.abs(y[i]! - f32[i]!) > 1e-6;
      }
      expect(differs).toBe(true); // it really is not the f32-activation product
    } finally {
      configure({ quantActivations: 'f32' });
    }
  });

  it('gives the same result on the scalar path as on the best path', async () => {
    const [m, n, k] = [7, 19, 64];
    const x = randn(m * k, 5);
    const w = quantize(randn(n * k, 6), 'q4_0');
    const best = await gemm({ x, w, wtype: 'q4_0', m, n, k });
    configure({ isa: 'scalar' });
    try {
      const scalar = await gemm({ x, w, wtype: 'q4_0', m, n, k });
      for (let i = 0; i < m * n; i++) expect(Math.abs(best[i]! - scalar[i]!)).toBeLessThanOrEqual(1e-4);
    } finally {
      configure({ isa: 'amx' });
    }
  });

  // The result arrays are made on the JavaScript thread before the work is queued and written by the
  // worker in place (no vector copied into a fresh array on the event loop): each call gets its own
  // whole array of the result's size, with the values of a call made alone.
  it('writes every result into its own array of the result size, concurrent calls included', async () => {
    const [m, n, k] = [5, 24, 64];
    const w = quantize(randn(n * k, 41), 'f32');
    const xs = [randn(m * k, 42), randn(m * k, 43), randn(m * k, 44)];
    const alone = [];
    for (const x of xs) alone.push(await gemm({ x, w, wtype: 'f32', m, n, k }));
    const together = await Promise.all(xs.map((x) => gemm({ x, w, wtype: 'f32', m, n, k })));
    const [T, D] = [6, 32];
    const q = randn(T * 2 * D, 45);
    const att = await Promise.all([0, 1].map(() => attention({ q, k: q, v: q, nQ: T, nKv: T, nHeads: 2, nKvHeads: 2, headDim: D })));
    const x = randn(3 * 32, 46);
    const mvp = await Promise.all([0, 1].map(() =>
      mvpProjection({ x, w1: quantize(randn(16 * 32, 47), 'f32'), w2: quantize(randn(8 * 16, 48), 'f32'), g: randn(8, 49), wtype: 'f32', tokens: 3, dIn: 32, dHid: 16, dOut: 8, nHeads: 1 }),
    ));
    const dq = [dequantize(quantize(x, 'q8_0'), 'q8_0', x.length), dequantize(quantize(x, 'q8_0'), 'q8_0', x.length)];
    const all = [...alone, ...together, ...att, ...mvp, ...dq];
    for (const [i, a] of all.entries()) {
      const want = i < 6 ? m * n : i < 8 ? T * 2 * D : i < 10 ? 3 * 8 : x.length;
      expect(a.length).toBe(want);
      expect(a.byteOffset).toBe(0);
      expect(a.buffer.byteLength).toBe(want * 4); // the whole buffer: not a view of a shared one
      expect(all.filter((b) => b.buffer === a.buffer).length).toBe(1);
      expect(a.every(Number.isFinite)).toBe(true);
    }
    for (let i = 0; i < 3; i++) expect(Buffer.from(together[i]!.buffer).equals(Buffer.from(alone[i]!.buffer))).toBe(true);
    expect(Buffer.from(alone[0]!.buffer).equals(Buffer.from(alone[1]!.buffer))).toBe(false);
    expect(Buffer.from(att[0]!.buffer).equals(Buffer.from(att[1]!.buffer))).toBe(true);
    expect(att[0]!.some((v) => v !== 0)).toBe(true);
    expect(Buffer.from(mvp[0]!.buffer).equals(Buffer.from(mvp[1]!.buffer))).toBe(true);
    expect(mvp[0]!.some((v) => v !== 0)).toBe(true);
    for (let i = 0; i < x.length; i++) expect(Math.abs(dq[0]![i]! - x[i]!)).toBeLessThanOrEqual(1 / 127 + 1e-6);
  });

  // options.out: the caller's array, written in place by the worker (or by dequantize on this
  // thread) and returned as the result itself; its values are those of a call without it. Filled
  // with NaN first, so an element left unwritten shows.
  it('writes into a caller-supplied out and returns that same array', async () => {
    const [m, n, k] = [5, 24, 64];
    const x = randn(m * k, 51);
    const w = quantize(randn(n * k, 52), 'f32');
    const bias = randn(n, 53);
    const [T, D] = [6, 32];
    const q = randn(T * 2 * D, 54);
    const att = { q, k: q, v: q, nQ: T, nKv: T, nHeads: 2, nKvHeads: 2, headDim: D };
    const xm = randn(3 * 32, 55);
    const mvp = { x: xm, w1: quantize(randn(16 * 32, 56), 'f32'), w2: quantize(randn(8 * 16, 57), 'f32'), g: randn(8, 58), wtype: 'f32' as const, tokens: 3, dIn: 32, dHid: 16, dOut: 8, nHeads: 1 };
    const qb = quantize(xm, 'q8_0');
    const want = [await gemm({ x, w, wtype: 'f32', bias, m, n, k }), await attention(att), await mvpProjection(mvp), dequantize(qb, 'q8_0', xm.length)];
    // views into one larger buffer at an offset, as a caller's pool of arrays would hand out
    const pool = new Float32Array(8 + want.reduce((a, r) => a + r.length, 0)).fill(NaN);
    const outs: Float32Array[] = [];
    let at = 8;
    for (const r of want) {
      outs.push(pool.subarray(at, at + r.length));
      at += r.length;
    }
    const got = [
      await gemm({ x, w, wtype: 'f32', bias, m, n, k, out: outs[0] }),
      await attention({ ...att, out: outs[1] }),
      await mvpProjection({ ...mvp, out: outs[2] }),
      dequantize(qb, 'q8_0', xm.length, { out: outs[3] }),
    ];
    for (let i = 0; i < 4; i++) {
      expect(got[i]).toBe(outs[i]);
      expect(Buffer.from(got[i]!.buffer, got[i]!.byteOffset, got[i]!.byteLength).equals(Buffer.from(want[i]!.buffer))).toBe(true);
    }
    expect(pool.subarray(0, 8).every(Number.isNaN)).toBe(true); // nothing written outside out
    // concurrent calls into disjoint outs of one buffer, then the same out again once they settled
    const two = new Float32Array(2 * m * n);
    const [a, b] = await Promise.all([
      gemm({ x, w, wtype: 'f32', bias, m, n, k, out: two.subarray(0, m * n) }),
      gemm({ x, w, wtype: 'f32', m, n, k, out: two.subarray(m * n) }),
    ]);
    expect(Array.from(a!)).toEqual(Array.from(want[0]!));
    expect(Array.from(b!)).toEqual(Array.from(await gemm({ x, w, wtype: 'f32', m, n, k })));
    expect(await gemm({ x, w, wtype: 'f32', bias, m, n, k, out: a })).toBe(a);
  });

  it('refuses a wrong out with ERR_INVALID_ARGUMENT and writes nothing into it', async () => {
    const [m, n, k] = [4, 8, 32];
    const x = randn(m * k, 61);
    const w = randn(n * k, 62);
    const call = (out: unknown) => gemm({ x, w, wtype: 'f32', m, n, k, out: out as Float32Array });
    const refused = (f: () => unknown, msg: RegExp) => {
      let err: unknown;
      try {
        f();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(EmollmError);
      expect((err as EmollmError).code).toBe('ERR_INVALID_ARGUMENT');
      expect((err as EmollmError).message).toMatch(msg);
    };
    refused(() => call(new Float64Array(m * n)), /gemm: out must be a Float32Array/);
    refused(() => call(Array.from({ length: m * n }, () => 0)), /out must be a Float32Array/);
    const short = new Float32Array(m * n - 1).fill(5);
    refused(() => call(short), /gemm: out has 31 floats, expected M \* N = 32$/);
    expect(short.every((v) => v === 5)).toBe(true);
    refused(() => call(new Float32Array(m * n + 1)), /out has \d+ floats/);
    const detached = new Float32Array(m * n);
    structuredClone(detached.buffer, { transfer: [detached.buffer] });
    refused(() => call(detached), /gemm: out is detached/);
    const resizable = new (ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ArrayBuffer)(m * n * 4, { maxByteLength: m * n * 8 });
    refused(() => call(new Float32Array(resizable)), /fixed-length buffer/);
    // sharing memory with an input: the same array, an overlapping view, a byte view of w
    const both = randn(m * k + m * n, 63);
    const xv = both.subarray(0, m * k);
    refused(() => gemm({ x: xv, w, wtype: 'f32', m, n, k, out: both.subarray(m * k - 1, m * k - 1 + m * n) }), /gemm: out shares memory with x/);
    const wide = new Float32Array(n * k);
    refused(() => gemm({ x, w: new Uint8Array(wide.buffer), wtype: 'f32', m, n, k, out: wide.subarray(0, m * n) }), /out shares memory with w/);
    const sq = randn(2 * 2 * 16, 64);
    refused(() => attention({ q: sq, k: sq, v: sq, nQ: 2, nKv: 2, nHeads: 2, nKvHeads: 2, headDim: 16, out: sq }), /attention: out shares memory with q/);
    refused(() => dequantize(quantize(sq, 'f32'), 'f32', sq.length, { out: new Float32Array(3) }), /dequantize: out has 3 floats, expected n = 64$/);
    const raw = quantize(sq, 'f32');
    refused(() => dequantize(raw, 'f32', sq.length, { out: new Float32Array(raw.buffer, raw.byteOffset, sq.length) }), /dequantize: out shares memory with bytes/);
    // views of one buffer that do not overlap an input are fine: x and out side by side in `both`
    const ref = await gemm({ x: xv, w, wtype: 'f32', m, n, k });
    const outView = both.subarray(m * k, m * k + m * n);
    const y = await gemm({ x: xv, w, wtype: 'f32', m, n, k, out: outView });
    expect(y).toBe(outView);
    expect(Buffer.from(y.buffer, y.byteOffset, y.byteLength).equals(Buffer.from(ref.buffer, ref.byteOffset, ref.byteLength))).toBe(true);
  });

  it('takes SharedArrayBuffer-backed out and input arrays (written in place, the same bits)', async () => {
    const [m, n, k] = [4, 8, 32];
    const x = randn(m * k, 81);
    const w = randn(n * k, 82);
    const ref = await gemm({ x, w, wtype: 'f32', m, n, k });
    const bits = (a: Float32Array) => Buffer.from(a.buffer as ArrayBuffer, a.byteOffset, a.byteLength);
    // out over a SharedArrayBuffer, inputs plain
    const out = new Float32Array(new SharedArrayBuffer(m * n * 4));
    const y = await gemm({ x, w, wtype: 'f32', m, n, k, out });
    expect(y).toBe(out);
    expect(bits(y).equals(bits(ref))).toBe(true);
    // x over a SharedArrayBuffer too, out in another part of the same one, then overlapping it
    const shared = new Float32Array(new SharedArrayBuffer((m * k + m * n) * 4));
    shared.set(x);
    const xs = shared.subarray(0, m * k);
    const ys = shared.subarray(m * k);
    expect(await gemm({ x: xs, w, wtype: 'f32', m, n, k, out: ys })).toBe(ys);
    expect(bits(ys).equals(bits(ref))).toBe(true);
    expect(() => gemm({ x: xs, w, wtype: 'f32', m, n, k, out: shared.subarray(m * k - 1, m * k - 1 + m * n) })).toThrow(/out shares memory with x/);
    // dequantize into a SharedArrayBuffer-backed out
    const raw = quantize(x, 'f32');
    const dq = new Float32Array(new SharedArrayBuffer(x.length * 4));
    expect(await dequantize(raw, 'f32', x.length, { out: dq })).toBe(dq);
    expect(bits(dq).equals(bits(x))).toBe(true);
  });

  it('refuses an out that a call still running writes, frees it when that call settles, and rejects one detached meanwhile', async () => {
    const [m, n, k] = [64, 256, 256];
    const x = randn(m * k, 71);
    const w = randn(n * k, 72);
    const out = new Float32Array(2 * m * n);
    const first = gemm({ x, w, wtype: 'f32', m, n, k, out: out.subarray(0, m * n) });
    // claimed synchronously, given back on this thread when the work is done: nothing settles in between
    expect(() => gemm({ x, w, wtype: 'f32', m, n, k, out: out.subarray(0, m * n) })).toThrow(/gemm: out overlaps the out array of a call still running/);
    expect(() => gemm({ x, w, wtype: 'f32', m, n, k, out: out.subarray(m * n - 1, 2 * m * n - 1) })).toThrow(/still running/);
    expect(() => dequantize(quantize(x.subarray(0, 64), 'f32'), 'f32', 64, { out: out.subarray(0, 64) })).toThrow(/dequantize: out overlaps/);
    const second = gemm({ x, w, wtype: 'f32', m, n, k, out: out.subarray(m * n) }); // the other half runs beside it
    const [r1, r2] = await Promise.all([first, second]);
    expect(Array.from(r1)).toEqual(Array.from(r2));
    expect(await gemm({ x, w, wtype: 'f32', m, n, k, out: r1 })).toBe(r1);
    // detached (transferred) while the worker wrote it: a typed rejection, and its range is free again
    const gone = new Float32Array(m * n);
    const p = gemm({ x, w, wtype: 'f32', m, n, k, out: gone });
    const moved = structuredClone(gone.buffer, { transfer: [gone.buffer] }); // keeps the bytes alive
    let err: unknown;
    try {
      await p;
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(EmollmError);
    expect((err as EmollmError).code).toBe('ERR_INVALID_ARGUMENT');
    expect((err as EmollmError).message).toMatch(/gemm: out was detached while the call wrote it/);
    const again = new Float32Array(moved);
    expect(await gemm({ x, w, wtype: 'f32', m, n, k, out: again })).toBe(again);
  });

  // The result array is made before the worker exists: a failed allocation is a typed error, and
  // no worker is left behind unqueued (the next call runs).
  it('a result too large to allocate is ERR_OUT_OF_MEMORY, and the next call still runs', async () => {
    const [m, n, k] = [1 << 21, 1 << 15, 2]; // m * n = 2^36 floats: more than a typed array holds
    let err: unknown;
    try {
      await gemm({ x: new Float32Array(m * k), w: new Float32Array(n * k), wtype: 'f32', m, n, k });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(EmollmError);
    expect((err as EmollmError).code).toBe('ERR_OUT_OF_MEMORY');
    const y = await gemm({ x: new Float32Array(4).fill(1), w: new Float32Array(6).fill(1), wtype: 'f32', m: 2, n: 3, k: 2 });
    expect(Array.from(y)).toEqual([2, 2, 2, 2, 2, 2]);
  });

  it('rejects mismatched sizes with ERR_INVALID_ARGUMENT', async () => {
    expect(() => gemm({ x: new Float32Array(10), w: new Float32Array(6), wtype: 'f32', m: 2, n: 3, k: 2 })).toThrow(
      /x has 10 elements/,
    );
    expect(() => gemm({ x: new Float32Array(4), w: new Float32Array(5), wtype: 'f32', m: 2, n: 3, k: 2 })).toThrow(
      EmollmError,
    );
  });
});

describe('readBandwidth', () => {
  it('runs off the event loop: setImmediate callbacks run while a 64 MiB x 5 call is pending', async () => {
    // a call that blocked the JavaScript thread would return a settled promise and no setImmediate
    // callback would run before the await resumes
    let ticks = 0, on = true;
    const tick = () => { if (on) { ticks++; setImmediate(tick); } };
    setImmediate(tick);
    const r = await readBandwidth({ bytes: 64 << 20, reps: 5, threads: 1 });
    on = false;
    expect(r.repGbs).toHaveLength(5);
    expect(ticks).toBeGreaterThan(0);
  });

  it('returns finite positive rates with the settings it ran', async () => {
    const p = readBandwidth({ bytes: 1 << 20, reps: 2, threads: 1, streams: 2, prefetch: 0 });
    expect(p).toBeInstanceOf(Promise);
    const r = await p;
    expect(Number.isFinite(r.gbs) && r.gbs > 0).toBe(true);
    expect(r.repGbs).toHaveLength(2);
    for (const x of r.repGbs) expect(Number.isFinite(x) && x > 0 && x <= r.gbs).toBe(true);
    expect(r.medianGbs).toBeLessThanOrEqual(r.gbs);
    expect(r).toMatchObject({ bytes: 1 << 20, threads: 1, streams: 2, prefetch: 0 });
    expect(['scalar', 'avx2', 'avx512']).toContain(r.isa);
    // one thread: the CPU-time figure too (Linux has the per-thread clock)
    if (process.platform === 'linux') expect(Number.isFinite(r.cpuGbs) && r.cpuGbs! > 0).toBe(true);
    // the defaults (4 streams, 1 KiB ahead), on the runtime's pool of 2 threads; bytes rounded down to whole lines
    const d = await readBandwidth({ bytes: (1 << 20) + 100, reps: 1, threads: 2 });
    expect(d).toMatchObject({ bytes: (1 << 20) + 64, threads: 2, streams: 4, prefetch: 1024 });
    expect(Number.isFinite(d.gbs) && d.gbs > 0).toBe(true);
    expect(d.cpuGbs).toBeNull();  // two threads: the calling thread's CPU time is not the pass's
  });

  it('frees its buffer after a call unless the call passes keep: true', async () => {
    const held = () => native().testReadProbeHeldBytes();
    await readBandwidth({ bytes: 4 << 20, reps: 1, threads: 1 });
    expect(held()).toBe(0);
    // keep: the buffer (rounded up to 2 MiB pages) stays for the next calls, which reuse it
    await readBandwidth({ bytes: (4 << 20) + 64, reps: 1, threads: 1, keep: true });
    expect(held()).toBe(6 << 20);
    await readBandwidth({ bytes: 2 << 20, reps: 1, threads: 1, keep: true });
    expect(held()).toBe(6 << 20);
    // a call without keep frees it, the kept buffer included
    await readBandwidth({ bytes: 1 << 20, reps: 1, threads: 1 });
    expect(held()).toBe(0);
  });

  it('refuses bad options with ERR_INVALID_ARGUMENT before doing any work', () => {
    const bad: unknown[] = [
      { streams: 3 }, { streams: 0 }, { streams: 16 }, { prefetch: 100 }, { prefetch: -64 }, { prefetch: 1 << 17 },
      { bytes: 1000 }, { bytes: 2 ** 40 }, { bytes: 1.5 * 2 ** 20 + 0.5 }, { reps: 0 }, { reps: 1001 }, { reps: 'x' },
      { threads: -1 }, { device: 'tpu' }, { keep: 'yes' }, null, 7,
    ];
    for (const o of bad) {
      let err: unknown;
      try {
        void readBandwidth(o as never);
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(o)).toBeInstanceOf(EmollmError);
      expect((err as EmollmError).code).toBe('ERR_INVALID_ARGUMENT');
    }
  });
});
