/**
 * Direct access to the native CPU kernels, for tests, microbenchmarks and users who compose
 * their own computations. Heavy calls return Promises and run on native worker threads.
 */
import { EmollmError } from './errors.js';
import { native } from './native.js';
import { runtimeOptions, type Device, type RuntimeOptions } from './runtime.js';

/**
 * Weight element types: plain floats and the GGUF block-quantised formats, with ggml's layouts
 * and names: q8_0, q4_0, q4_1, q5_0, q5_1 (32-element blocks) and the k-quants q4_K, q5_K, q6_K
 * (256-element super-blocks).
 */
export type DType = 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q4_0' | 'q4_1' | 'q5_0' | 'q5_1' | 'q4_K' | 'q5_K' | 'q6_K';

/** Instruction-set levels the kernels dispatch on, lowest first. */
export type Isa = 'scalar' | 'avx2' | 'avx512' | 'amx';

export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'q4_K', 'q5_K', 'q6_K'];

export interface CpuInfo {
  /** CPU brand string. */
  brand: string;
  /** Physical cores this process may run on: the default thread count. */
  physicalCores: number;
  logicalCpus: number;
  /** Best instruction-set level this CPU supports. */
  isaDetected: Isa;
  /** Level kernels use now (detected, capped by `configure({ isa })` or EMOLLM_ISA). */
  isaActive: Isa;
  /** Default compute threads of the runtime (configure({ threads }), else the physical cores). */
  threads: number;
  /** Default device of the runtime (configure({ device }), else 'cpu'). */
  device: Device;
  /** Activation precision for decode-shaped products with block-quantised weights. */
  quantActivations: 'q8' | 'f32';
  /** Individual CPU features (avx2, avx512f, avx512bf16, amxBf16, amxUsable, ...). */
  features: Record<string, boolean>;
}

/** Describes this CPU and the kernel paths in use. */
export function cpuInfo(): CpuInfo {
  return native().cpuInfo() as CpuInfo;
}

export interface KernelOptions extends RuntimeOptions {
  /**
   * The process default of the runtime configuration (RuntimeOptions: `device`, `threads`; 0
   * threads means physical cores): used by kernel calls here and by every model, analyzer and
   * evaluation that leaves them unset.
   */
  threads?: number;
  /** Cap the instruction-set level, e.g. 'scalar' to run the reference paths. */
  isa?: Isa;
  /**
   * How block-quantised weights (q8_0, q4_0, q4_1, q5_0, q5_1, q4_K, q5_K, q6_K) meet activations
   * in decode-shaped products (m <= 8): 'q8' (default, llama.cpp's numerics for the 32-block
   * types; for the k-quants llama.cpp rounds to 256-blocks, emollm to finer 32-blocks) rounds
   * each 32-block of activations to 8 bits and uses integer dot products, reaching memory
   * bandwidth; 'f32' keeps f32 activations (exact to f32 rounding,
   * slower). Prefill-shaped products always use f32 activations. Env: EMOLLM_QUANT_ACT=f32.
   */
  quantActivations?: 'q8' | 'f32';
}

/** Sets process-wide kernel options. */
export function configure(options: KernelOptions): void {
  if (options === null || typeof options !== 'object') throw new EmollmError('ERR_INVALID_ARGUMENT', 'configure expects an options object');
  native().configure({ ...options, ...runtimeOptions(options, 'configure options') });
}

export interface GemmArgs {
  /** Activations, row-major [m, k]. */
  x: Float32Array;
  /** Weights in `wtype` storage: n rows of k elements (nn.Linear / GGUF layout). */
  w: ArrayBufferView | ArrayBuffer;
  wtype: DType;
  /** Optional bias [n]. */
  bias?: Float32Array;
  m: number;
  n: number;
  k: number;
}

/** Y[m, n] = X[m, k] · W[n, k]^T (+ bias), f32 accumulation. */
export function gemm(args: GemmArgs): Promise<Float32Array> {
  return native().gemm(args.x, args.w, args.wtype, args.bias ?? null, args.m, args.n, args.k);
}

/** Converts f32 values to `dtype` storage bytes (ggml's reference quantizers `quantize_row_*_ref`, byte-exact). */
export function quantize(x: Float32Array, dtype: DType): Uint8Array {
  return native().quantize(x, dtype);
}

/** Converts `n` elements of `dtype` storage back to f32. */
export function dequantize(bytes: ArrayBufferView | ArrayBuffer, dtype: DType, n: number): Float32Array {
  if (!Number.isInteger(n) || n < 0) throw new EmollmError('ERR_INVALID_ARGUMENT', `n must be a non-negative integer, got ${n}`);
  return native().dequantize(bytes, dtype, n);
}
