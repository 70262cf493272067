import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { EmollmError, attention, configure, cpuInfo, dequantize, gemm, mvpProjection, quantize, type DType } from '../../lib/index.js';

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
