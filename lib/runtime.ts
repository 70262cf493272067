/**
 * The runtime configuration: where the native work runs. Every entry point takes the same
 * `{ device, threads }` (loadModel, analyze and the face analyzer, configure, `emollm eval`, the
 * CLI's `--device` / `--threads`); all of them end in one native runtime object that owns the
 * compute pools and the backends (native/core/runtime.h). What an option leaves unset comes from
 * {@link configure}, else the defaults (CPU, physical cores).
 *
 * @example
 * ```ts
 * configure({ threads: 4 });                                  // the process default
 * const model = await loadModel('model.gguf', { threads: 2 }); // this model only
 * console.log(runtimeInfo());                                 // device, threads, live pools
 * ```
 */
import { EmollmError } from './errors.js';
import { native } from './native.js';

/** Where native compute runs. 'cuda' needs a CUDA build of emollm (see {@link runtimeInfo}). */
export type Device = 'cpu' | 'cuda';
export const DEVICES: readonly Device[] = ['cpu', 'cuda'];

/** The runtime configuration accepted by every entry point. */
export interface RuntimeOptions {
  /** Device; default: `configure({ device })`, else 'cpu'. 'cuda' on a build without CUDA: ERR_UNSUPPORTED. */
  device?: Device;
  /** CPU compute threads, 1..1024; 0 or unset: `configure({ threads })`, else the physical cores. */
  threads?: number;
}

/** What the runtime uses now. */
export interface RuntimeInfo {
  /** Default device (configure), 'cpu' unless set. */
  device: Device;
  /** Default compute threads (resolved: physical cores unless configured). */
  threads: number;
  /** Devices this build can run. */
  devices: Device[];
  /** Whether this binary was built with the CUDA kernels. */
  cudaBuilt: boolean;
  /** Live CPU compute pools: their size and how many models / analyzers / calls hold each. */
  pools: Array<{ threads: number; users: number }>;
  /** Live backends, described (e.g. "cpu (avx512, 4 threads)"). */
  backends: string[];
}

/**
 * Checks the runtime fields of an options object and returns them in the native shape (only
 * the fields that are set). Unknown devices and bad thread counts are ERR_INVALID_ARGUMENT; a
 * device this build cannot run ('cuda' without CUDA) is ERR_UNSUPPORTED saying how to get one.
 */
export function runtimeOptions(o: RuntimeOptions | undefined, where = 'options'): { device?: Device; threads?: number } {
  const out: { device?: Device; threads?: number } = {};
  if (o === undefined || o === null) return out;
  if (o.device !== undefined) {
    if (typeof o.device !== 'string' || !DEVICES.includes(o.device))
      throw new EmollmError('ERR_INVALID_ARGUMENT', `${where}.device: unknown device ${JSON.stringify(o.device)} (use 'cpu' or 'cuda')`);
    // What this build can run is the native side's call (one message: how to get a CUDA build).
    (native() as unknown as { requireDevice(d: string): void }).requireDevice(o.device);
    out.device = o.device;
  }
  if (o.threads !== undefined) {
    if (typeof o.threads !== 'number' || !Number.isInteger(o.threads) || o.threads < 0 || o.threads > 1024)
      throw new EmollmError('ERR_INVALID_ARGUMENT', `${where}.threads must be an integer in [0, 1024] (0: the default), got ${String(o.threads)}`);
    out.threads = o.threads;
  }
  return out;
}

/** The runtime in use: default device and threads, the devices this build has, live pools and backends. */
export function runtimeInfo(): RuntimeInfo {
  return (native() as unknown as { runtimeInfo(): RuntimeInfo }).runtimeInfo();
}
