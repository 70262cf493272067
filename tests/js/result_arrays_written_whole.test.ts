// Fresh result arrays the worker writes whole are not zeroed first (native/addon/napi_util.h
// new_result_array, ResultFill::kWrittenWhole: gemm, attention, mvpProjection, dequantize,
// encodeImages). That is only right if every path of every kernel stores every float: a kernel that
// added into Y, or skipped a tail, would now hand out whatever the allocator's memory held (often
// zeros, which would hide it). The addon's test hook testPoisonWrittenResults makes those arrays
// start as quiet NaNs, so any float a call leaves unwritten shows as NaN here, for every weight
// type and the row counts that take different kernel paths (M = 1 GEMV, 2-8 few-row tiles, >= 9
// the panel kernels, an odd N and K tail), attention causal and not, mvp with two heads,
// dequantize of every type.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { attention, dequantize, gemm, mvpProjection, quantize, type DType } from '../../lib/index.js';
import { native } from '../../lib/native.js';

function randn(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const next = (): number => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s + 0.5) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(next())) * Math.cos(2 * Math.PI * next());
  return out;
}
const nanCount = (a: Float32Array): number => a.reduce((c, x) => c + (Number.isNaN(x) ? 1 : 0), 0);

describe('fresh results written whole (poisoned with NaN before the worker runs)', () => {
  beforeAll(() => native().testPoisonWrittenResults(true));
  afterAll(() => native().testPoisonWrittenResults(false));

  it('a zero-length dequantize is empty, and the hook refuses a non-boolean', () => {
    expect(dequantize(quantize(new Float32Array(0), 'f32'), 'f32', 0).length).toBe(0);
    expect(() => native().testPoisonWrittenResults(1 as unknown as boolean)).toThrow(/boolean/);
  });

  const types: DType[] = ['f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_K', 'q6_K'];
  for (const wtype of types) {
    it(`gemm ${wtype}: every float written at M = 1, 5, 8, 9, 33`, async () => {
      const blockK = wtype === 'q4_K' || wtype === 'q6_K' ? 256 : 32;
      const k = blockK * 3;
      const n = 37;  // odd: tails after the 4-row streams and 32-row panels
      const w = quantize(randn(n * k, 11), wtype);
      for (const m of [1, 5, 8, 9, 33]) {
        const x = randn(m * k, 100 + m);
        const y = await gemm({ x, w, wtype, m, n, k });
        expect(y.length).toBe(m * n);
        expect(nanCount(y), `${wtype} M=${m}`).toBe(0);
        const yb = await gemm({ x, w, wtype, bias: randn(n, 7), m, n, k });
        expect(nanCount(yb), `${wtype} M=${m} with bias`).toBe(0);
      }
    });
    it(`dequantize ${wtype}: every float written`, () => {
      const n = (wtype === 'q4_K' || wtype === 'q6_K' ? 256 : 32) * 5;
      const y = dequantize(quantize(randn(n, 21), wtype), wtype, n);
      expect(y.length).toBe(n);
      expect(nanCount(y)).toBe(0);
    });
  }

  it('attention, causal and not, grouped heads: every float written', async () => {
    const T = 7, D = 16;
    for (const causal of [false, true])
      for (const [nHeads, nKvHeads] of [[2, 2], [4, 2]] as const) {
        const q = randn(T * nHeads * D, 31), kv = randn(T * nKvHeads * D, 32);
        const y = await attention({ q, k: kv, v: kv, nQ: T, nKv: T, nHeads, nKvHeads, headDim: D, causal });
        expect(y.length).toBe(T * nHeads * D);
        expect(nanCount(y), `causal ${causal} heads ${nHeads}/${nKvHeads}`).toBe(0);
      }
  });

  it('mvpProjection with two heads: every float written', async () => {
    const tokens = 5, dIn = 32, dHid = 16, dOut = 8, nHeads = 2;
    const y = await mvpProjection({
      x: randn(tokens * dIn, 41),
      w1: quantize(randn(nHeads * dHid * dIn, 42), 'f32'),
      w2: quantize(randn(nHeads * dOut * dHid, 43), 'f32'),
      g: randn(nHeads * dOut, 44),
      wtype: 'f32', tokens, dIn, dHid, dOut, nHeads,
    });
    expect(y.length).toBe(tokens * dOut);
    expect(nanCount(y)).toBe(0);
  });
});
