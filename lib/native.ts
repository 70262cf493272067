/**
 * Loads the native addon: a prebuilt binary shipped in prebuilds/ when one fits this platform
 * (node-gyp-build picks it), else a local build in build/Release. Internal: the public API is
 * the typed functions in the other lib/ modules.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { EmollmError } from './errors.js';

/** The package root (this file lives in lib/ or dist/). */
export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Raw native functions. Shapes are validated on the native side as well. */
export interface NativeBinding {
  abiVersion: number;
  setErrorClass(ctor: unknown): void;
  /** Image-feature arrays that calls in flight read in place (held until each settles): for tests. */
  liveFeatureRefs(): number;
  cpuInfo(): NativeCpuInfo;
  configure(options: { threads?: number; device?: string; isa?: string; quantActivations?: string; repackWeights?: boolean }): void;
  gemm(
    x: Float32Array,
    w: ArrayBufferView | ArrayBuffer,
    wtype: string,
    bias: Float32Array | null,
    m: number,
    n: number,
    k: number,
    options?: { device?: string; out?: Float32Array },
  ): Promise<Float32Array>;
  attention(
    q: Float32Array,
    k: Float32Array,
    v: Float32Array,
    params: { nQ: number; nKv: number; nHeads: number; nKvHeads: number; headDim: number; causal: boolean; qPos0: number; scale: number },
    options?: { device?: string; out?: Float32Array },
  ): Promise<Float32Array>;
  mvpProjection(
    x: Float32Array,
    w1: ArrayBufferView | ArrayBuffer,
    b1: Float32Array | null,
    w2: ArrayBufferView | ArrayBuffer,
    b2: Float32Array | null,
    g: Float32Array,
    wtype: string,
    params: { tokens: number; dIn: number; dHid: number; dOut: number; nHeads: number },
    options?: { device?: string; out?: Float32Array },
  ): Promise<Float32Array>;
  quantize(x: Float32Array, dtype: string): Uint8Array;
  dequantize(bytes: ArrayBufferView | ArrayBuffer, dtype: string, n: number, options?: { out?: Float32Array }): Float32Array;
  readBandwidth(options: object): Promise<unknown>;
  /**
   * Test hooks (native/addon/testing_binding.cpp), for tests and A/B tools only. An addon-owned
   * external ArrayBuffer of `bytes` (byte i = i * 7 mod 256) and how many of them were freed; the
   * environment's next call that makes a worker (napi_util.h new_worker: every call but the
   * sequence batch's, which runs on its scheduler thread) fails as if the worker's allocation had
   * (ERR_OUT_OF_MEMORY; `false` disarms it; `'after'`: the worker is made, deleted, then the same failure); fresh results written whole by the worker zeroed
   * first (today's arrays) while on.
   */
  testExternalArrayBuffer(bytes: number, tag?: number): ArrayBuffer;
  testExternalFinalized(tag?: number): number;
  testFailNextWorker(on?: boolean | 'after'): void;
  testZeroWrittenResults(on: boolean): void;
  testPoisonWrittenResults(on: boolean): void;
  /** The bytes readBandwidth's probe buffer holds now (0: none; kept only by calls with `keep: true`). */
  testReadProbeHeldBytes(): number;
  inspectSafetensors(path: string): Promise<unknown>;
  inspectGguf(path: string): Promise<unknown>;
  readConfig(path: string): Promise<unknown>;
}

export interface NativeCpuInfo {
  brand: string;
  vendor: 'amd' | 'other' | 'unknown';
  family: number;
  model: number;
  physicalCores: number;
  logicalCpus: number;
  isaDetected: string;
  isaActive: string;
  threads: number;
  device: string;
  quantActivations: string;
  repackWeights: boolean;
  packedWeightBytes: number;
  features: Record<string, boolean>;
}

function load(): NativeBinding {
  const require = createRequire(import.meta.url);
  let binding: NativeBinding;
  try {
    const nodeGypBuild = require('node-gyp-build') as (dir: string) => unknown;
    binding = nodeGypBuild(packageRoot) as NativeBinding;
  } catch (cause) {
    throw new EmollmError(
      'ERR_NO_BINARY',
      `emollm: no native binary for ${process.platform}-${process.arch} (Node ${process.versions.node}, ` +
        `N-API ${process.versions.napi}) was found in ${packageRoot}.\n` +
        'No prebuilt binary fits this platform, and npm 11 does not run dependencies\' build scripts ' +
        'unless you approve them. To build it from source (needs python3, make and a C++17 compiler):\n' +
        '  npm install-scripts approve emollm && npm rebuild emollm',
      { cause },
    );
  }
  binding.setErrorClass(EmollmError);
  return binding;
}

let cached: NativeBinding | undefined;

/** The native binding, loaded on first use. */
export function native(): NativeBinding {
  cached ??= load();
  return cached;
}
