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

/**
 * Where native compute runs: 'cpu', or an NVIDIA GPU: 'cuda' (the first) or 'cuda:N' (the N-th,
 * 0-based, as nvidia-smi numbers them under CUDA_VISIBLE_DEVICES). A GPU needs a CUDA build of
 * emollm (see {@link runtimeInfo} and docs/cuda.md).
 */
export type Device = 'cpu' | 'cuda' | `cuda:${number}`;
/** The device kinds (a GPU can also be named by index, 'cuda:N'). */
export const DEVICES: readonly Device[] = ['cpu', 'cuda'];

/** True for 'cpu', 'cuda' and 'cuda:N' (N in 0..255, no leading zeros). */
export function isDevice(d: unknown): d is Device {
  if (typeof d !== 'string') return false;
  if (d === 'cpu' || d === 'cuda') return true;
  // The strict emulated device of the tests (native/core/emulated_device_backend.h): not a user
  // device, accepted only when EMOLLM_EMULATED_DEVICE=1 (the native side checks the same).
  if (d === 'emulated') return process.env.EMOLLM_EMULATED_DEVICE === '1';
  const m = /^cuda:(0|[1-9][0-9]{0,2})$/.exec(d);
  return m !== null && Number(m[1]) <= 255;
}

/** The runtime configuration accepted by every entry point. */
export interface RuntimeOptions {
  /**
   * Device; default: `configure({ device })`, else 'cpu'. 'cuda' / 'cuda:N' on a build without
   * CUDA: ERR_UNSUPPORTED saying how to get one; on a CUDA build without a driver or a GPU:
   * ERR_UNSUPPORTED saying which; 'cuda:N' past the device count: ERR_INVALID_ARGUMENT.
   */
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
    if (!isDevice(o.device))
      throw new EmollmError('ERR_INVALID_ARGUMENT', `${where}.device: unknown device ${JSON.stringify(o.device)} (use 'cpu', 'cuda' or 'cuda:N')`);
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
