// The kernel bindings with a `device` (gemm, attention, mvpProjection): on 'cpu' against double
// references written here; 'cuda' / 'cuda:N' as a typed error on a build without CUDA, and on a
// CUDA build with a GPU against the CPU (skipped with the reason otherwise). Device names.
import { describe, expect, it } from 'vitest';

import { attention, gemm, isDevice, mvpProjection, quantize, runtimeInfo, runtimeOptions } from '../../lib/index.js';

function rand(n: number, seed: number, amp = 1): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = amp * (s / 2 ** 31 - 1);
  }
  return out;
}

function expectClose(got: Float32Array, want: ArrayLike<number>, atol: number, rtol: number): void {
  expect(got.length).toBe(want.length);
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    const excess = Math.abs(got[i]! - want[i]!) - (atol + rtol * Math.abs(want[i]!));
    if (!(excess <= worst)) worst = Number.isNaN(excess) ? Infinity : excess;
  }
  expect(worst).toBeLessThanOrEqual(0);
}

// Double reference of attention over dense rows (GQA, causal with qPos0).
function refAttention(q: Float32Array, k: Float32Array, v: Float32Array, nQ: number, nKv: number, H: number, Hkv: number, D: number, causal: boolean, qPos0: number): Float64Array {
  const out = new Float64Array(nQ * H * D);
  const scale = 1 / Math.sqrt(D);
  for (let i = 0; i < nQ; i++)
    for (let h = 0; h < H; h++) {
      const kh = Math.floor(h / (H / Hkv));
      const lim = causal ? qPos0 + i + 1 : nKv;
      const s = new Float64Array(lim);
      let m = -Infinity;
      for (let j = 0; j < lim; j++) {
        let a = 0;
        for (let d = 0; d < D; d++) a += q[i * H * D + h * D + d]! * k[j * Hkv * D + kh * D + d]!;
        s[j] = a * scale;
        m = Math.max(m, s[j]!);
      }
      let z = 0;
      for (let j = 0; j < lim; j++) z += s[j] = Math.exp(s[j]! - m);
      for (let d = 0; d < D; d++) {
        let a = 0;
        for (let j = 0; j < lim; j++) a += s[j]! * v[j * Hkv * D + kh * D + d]!;
        out[i * H * D + h * D + d] = a / z;
      }
    }
  return out;
}

function erf(x: number): number {
  // Abramowitz-Stegun 7.1.26 is too coarse for 1e-5; use a series / continued fraction split.
  const t = Math.abs(x);
  if (t < 3) {
    let sum = t, term = t;
    for (let n = 1; n < 200; n++) {
      term *= (-t * t) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17) break;
    }
    return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * sum;
  }
  let f = 0;
  for (let n = 60; n >= 1; n--) f = (n / 2) / (t + f);
  return Math.sign(x) * (1 - Math.exp(-t * t) / Math.sqrt(Math.PI) / (t + f));
}

function refMvp(x: Float32Array, w1: Float32Array, b1: Float32Array, w2: Float32Array, b2: Float32Array, g: Float32Array, T: number, Din: number, Dh: number, Do: number, H: number): Float64Array {
  const y = new Float64Array(T * Do);
  for (let t = 0; t < T; t++)
    for (let h = 0; h < H; h++) {
      const hid = new Float64Array(Dh);
      for (let j = 0; j < Dh; j++) {
        let a = b1[h * Dh + j]!;
        for (let c = 0; c < Din; c++) a += x[t * Din + c]! * w1[(h * Dh + j) * Din + c]!;
        hid[j] = 0.5 * a * (1 + erf(a / Math.SQRT2));
      }
      for (let o = 0; o < Do; o++) {
        let a = b2[h * Do + o]!;
        for (let j = 0; j < Dh; j++) a += hid[j]! * w2[(h * Do + o) * Dh + j]!;
        y[t * Do + o] += g[h * Do + o]! * a;
      }
    }
  return y;
}

describe('device names', () => {
  it('accepts cpu, cuda and cuda:N and nothing else', () => {
    for (const d of ['cpu', 'cuda', 'cuda:0', 'cuda:7', 'cuda:255']) expect(isDevice(d)).toBe(true);
    for (const d of ['gpu', 'cuda:', 'cuda:01', 'cuda:-1', 'cuda:256', 'cuda:1.5', 'CUDA', '', 3, null]) expect(isDevice(d)).toBe(false);
    expect(() => runtimeOptions({ device: 'cuda:01' as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});

describe('kernels on device cpu', () => {
  it('gemm with device cpu equals the default path', async () => {
    const m = 5, n = 7, k = 64;
    const x = rand(m * k, 1), w = rand(n * k, 2), b = rand(n, 3);
    for (const wtype of ['f32', 'q8_0'] as const) {
      const wq = quantize(w, wtype);
      const a = await gemm({ x, w: wq, wtype, bias: b, m, n, k });
      const c = await gemm({ x, w: wq, wtype, bias: b, m, n, k, device: 'cpu' });
      // The default path and the cpu backend run the same CPU kernels.
      expect(Array.from(c)).toEqual(Array.from(a));
    }
  });

  it('attention matches a double reference (GQA, causal with a cache offset, bidirectional)', async () => {
    for (const [nQ, nKv, H, Hkv, D, causal, qPos0] of [[5, 9, 4, 2, 16, true, 4], [6, 6, 2, 2, 8, false, 0]] as const) {
      const q = rand(nQ * H * D, 4), k = rand(nKv * Hkv * D, 5), v = rand(nKv * Hkv * D, 6);
      const got = await attention({ q, k, v, nQ, nKv, nHeads: H, nKvHeads: Hkv, headDim: D, causal, qPos0, device: 'cpu' });
      expectClose(got, refAttention(q, k, v, nQ, nKv, H, Hkv, D, causal, qPos0), 1e-5, 1e-5);
    }
  });

  it('mvpProjection matches a double reference', async () => {
    const T = 3, Din = 32, Dh = 32, Do = 5, H = 2;
    const x = rand(T * Din, 7), w1 = rand(H * Dh * Din, 8, 0.2), b1 = rand(H * Dh, 9), w2 = rand(H * Do * Dh, 10, 0.2), b2 = rand(H * Do, 11), g = rand(H * Do, 12);
    const got = await mvpProjection({ x, w1: quantize(w1, 'f32'), b1, w2: quantize(w2, 'f32'), b2, g, wtype: 'f32', tokens: T, dIn: Din, dHid: Dh, dOut: Do, nHeads: H, device: 'cpu' });
    expectClose(got, refMvp(x, w1, b1, w2, b2, g, T, Din, Dh, Do, H), 1e-4, 1e-4);
  });

  it('rejects bad shapes with ERR_INVALID_ARGUMENT', async () => {
    const q = rand(8, 1);
    expect(() => attention({ q, k: q, v: q, nQ: 2, nKv: 2, nHeads: 3, nKvHeads: 2, headDim: 4 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => attention({ q, k: q, v: q, nQ: 3, nKv: 2, nHeads: 1, nKvHeads: 1, headDim: 4 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});

describe('kernels on device cuda', () => {
  const info = runtimeInfo();
  it.runIf(!info.cudaBuilt)('is ERR_UNSUPPORTED saying how to get a CUDA build (this build has no CUDA)', () => {
    const x = rand(4, 1);
    for (const device of ['cuda', 'cuda:1'] as const) {
      const call = () => gemm({ x, w: quantize(x, 'f32'), wtype: 'f32', m: 1, n: 1, k: 4, device });
      expect(call).toThrow(expect.objectContaining({ code: 'ERR_UNSUPPORTED', message: expect.stringContaining('build:cmake') }));
      expect(() => attention({ q: x, k: x, v: x, nQ: 1, nKv: 1, nHeads: 1, nKvHeads: 1, headDim: 4, device })).toThrow(expect.objectContaining({ code: 'ERR_UNSUPPORTED' }));
    }
  });

  const gpu = info.devices.includes('cuda');
  if (!gpu) console.log(`[skip] CUDA kernel bindings against the CPU: ${info.cudaBuilt ? 'no usable CUDA device' : 'this build has no CUDA'}`);
  it.runIf(gpu)('gemm, attention and mvpProjection on cuda match the CPU', async () => {
    const m = 20, n = 33, k = 64;
    const x = rand(m * k, 21), w = rand(n * k, 22);
    for (const wtype of ['f32', 'bf16', 'q8_0'] as const) {
      const wq = quantize(w, wtype);
      const c = await gemm({ x, w: wq, wtype, m, n, k, device: 'cpu' });
      const g = await gemm({ x, w: wq, wtype, m, n, k, device: 'cuda' });
      // f32: SIMT f32; bf16 / q8_0 at m = 20: tensor cores with X rounded to 16 bits (docs/cuda.md).
      expectClose(g, c, wtype === 'f32' ? 1e-4 : 5e-2, wtype === 'f32' ? 1e-4 : 2e-2);
    }
    const q = rand(7 * 4 * 64, 23), kk = rand(30 * 2 * 64, 24), v = rand(30 * 2 * 64, 25);
    const args = { q, k: kk, v, nQ: 7, nKv: 30, nHeads: 4, nKvHeads: 2, headDim: 64, qPos0: 23 };
    expectClose(await attention({ ...args, device: 'cuda' }), await attention({ ...args, device: 'cpu' }), 2e-4, 2e-4);
  });
});
