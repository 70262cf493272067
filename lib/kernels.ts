/**
 * Direct access to the native kernels, for tests, microbenchmarks and users who compose their own
 * computations. Heavy calls return Promises and run on native worker threads. `gemm`,
 * `attention` and `mvpProjection` take a `device` ('cpu', 'cuda', 'cuda:N'): on a GPU the
 * inputs are copied to the device, computed there, and the result copied back (the copies are
 * part of what a JavaScript timing of these calls measures; bench_cuda times the kernels alone).
 *
 * Every call that returns a Float32Array (`gemm`, `attention`, `mvpProjection`, `dequantize`)
 * takes an optional `out`: the caller's array to write the result into, returned instead of a
 * fresh one (see {@link ResultOut}).
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
  /** `'amd'` for AMD CPUs, `'other'` for other x86 vendors, `'unknown'` where CPUID was not read (not x86). */
  vendor: 'amd' | 'other' | 'unknown';
  /**
   * CPUID display family and model (base plus extended fields, as /proc/cpuinfo prints them; 0 where
   * not x86): e.g. AMD family 25 model 17 is Zen 4 "Genoa", family 26 Zen 5. Kernels choose some
   * defaults by them (features.avx512DoublePumped); benchmarks record them beside every figure.
   */
  family: number;
  model: number;
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
  /** Whether models loaded from now on keep q4_0 / q8_0 decoder weights repacked (configure({ repackWeights })). */
  repackWeights: boolean;
  /** Bytes of repacked weight copies alive in this process (0 when none). */
  packedWeightBytes: number;
  /**
   * Individual CPU features (avx2, avx512f, avx512bf16, amxBf16, amxUsable, ...), and
   * `avx512DoublePumped`: 512-bit operations run as two 256-bit halves (AMD Zen 4), for which some
   * kernel defaults differ (bench/README.md, the Zen 4 section).
   */
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
   * slower). Prefill-shaped products (m > 8) use f32 activations, except q8_0 / q4_0 weights on
   * CPUs with AVX512-VNNI in 'q8' mode (integer dot products, as llama.cpp). Env: EMOLLM_QUANT_ACT=f32.
   */
  quantActivations?: 'q8' | 'f32';
  /**
   * Keep the q4_0 / q8_0 matrices of LLaMA decoders (and the LLaVA / Qwen2-VL text decoders) in a
   * 16-row interleaved layout made once at load, which the AVX512-VNNI decode GEMV streams
   * faster; the copy replaces the memory-mapped bytes in memory (their pages are released).
   * Applies to models loaded afterwards; only where AVX512-VNNI is present. Products on repacked
   * weights always round activations to q8 (any m); with quantActivations 'f32' they read the
   * original bytes instead. Default true; env EMOLLM_REPACK=0 turns it off. Models of the same
   * file share one mapping and its copies: a file loaded again with repacking off, while a model
   * that repacked it is alive, reads that model's repacked copy.
   */
  repackWeights?: boolean;
}

/** Sets process-wide kernel options. */
export function configure(options: KernelOptions): void {
  if (options === null || typeof options !== 'object') throw new EmollmError('ERR_INVALID_ARGUMENT', 'configure expects an options object');
  native().configure({ ...options, ...runtimeOptions(options, 'configure options') });
}

/**
 * The optional result array of a kernel call: a Float32Array of exactly the result's length
 * (attached, over a fixed-length buffer: a resizable ArrayBuffer or a growable SharedArrayBuffer
 * is refused), sharing no memory with the call's inputs, and not the memory of an `out` that a
 * call still running writes. The result is written into it in place (no fresh array, and no first-
 * touch page faults when it is reused) and the call returns that same array. Anything else is a
 * synchronous ERR_INVALID_ARGUMENT, and nothing is written into a refused array. Like `fs.read`'s
 * buffer, `out` must stay attached (not transferred) until the promise settles, and what it holds
 * meanwhile is unspecified; a call whose `out` was detached while it ran rejects with
 * ERR_INVALID_ARGUMENT. Without `out`, the result is a fresh Float32Array over its own ordinary
 * ArrayBuffer (byteOffset 0): the caller's to keep, transfer to a worker without a copy
 * (`postMessage(r, [r.buffer])`, `structuredClone`) or view (`Buffer.from(r.buffer)`).
 */
export interface ResultOut {
  out?: Float32Array;
}

export interface GemmArgs extends ResultOut {
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
  /** Where to compute; unset: the CPU kernels on the runtime's default pool. */
  device?: Device;
}

/**
 * Y[m, n] = X[m, k] · W[n, k]^T (+ bias), f32 accumulation. On 'cuda' with m > 8 and
 * f16 / bf16 / q8_0 / q4_0 weights the product runs on tensor cores with X rounded to the
 * 16-bit operand type (docs/cuda.md); m <= 8 and f32 weights keep f32 products.
 */
export function gemm(args: GemmArgs): Promise<Float32Array> {
  return native().gemm(args.x, args.w, args.wtype, args.bias ?? null, args.m, args.n, args.k, callOptions(args.device, args.out));
}

// The native options argument: `device` checked here, `out` by the native side.
function callOptions(device: Device | undefined, out: Float32Array | undefined): { device?: Device; out?: Float32Array } | undefined {
  if (device === undefined && out === undefined) return undefined;
  const o: { device?: Device; out?: Float32Array } = device === undefined ? {} : runtimeOptions({ device }, 'options');
  if (out !== undefined) o.out = out;
  return o;
}

export interface AttentionArgs extends ResultOut {
  /** Queries [nQ, nHeads * headDim], row-major. */
  q: Float32Array;
  /** Keys and values [nKv, nKvHeads * headDim]. */
  k: Float32Array;
  v: Float32Array;
  nQ: number;
  nKv: number;
  nHeads: number;
  /** nHeads must be a multiple of it (grouped-query attention). */
  nKvHeads: number;
  headDim: number;
  /** Causal mask with query i at absolute position qPos0 + i (default true). */
  causal?: boolean;
  qPos0?: number;
  /** Score scale; default 1 / sqrt(headDim). */
  scale?: number;
  device?: Device;
}

/** Scaled-dot-product attention (flash attention; no score matrix is stored) -> [nQ, nHeads * headDim]. */
export function attention(a: AttentionArgs): Promise<Float32Array> {
  const params = { nQ: a.nQ, nKv: a.nKv, nHeads: a.nHeads, nKvHeads: a.nKvHeads, headDim: a.headDim, causal: a.causal ?? true, qPos0: a.qPos0 ?? 0, scale: a.scale ?? 0 };
  return native().attention(a.q, a.k, a.v, params, callOptions(a.device, a.out));
}

export interface MvpProjectionArgs extends ResultOut {
  /** Visual features [tokens, dIn]. */
  x: Float32Array;
  /** First layers of every head, stacked: nHeads * dHid rows of dIn, in `wtype` storage. */
  w1: ArrayBufferView | ArrayBuffer;
  b1?: Float32Array;
  /** Second layers: nHeads * dOut rows of dHid. */
  w2: ArrayBufferView | ArrayBuffer;
  b2?: Float32Array;
  /** Per-head gates [nHeads, dOut]. */
  g: Float32Array;
  wtype: DType;
  tokens: number;
  dIn: number;
  dHid: number;
  dOut: number;
  nHeads: number;
  device?: Device;
}

/** EmoLLM's multi-perspective visual projection: Y = sum_h g_h * (gelu(X W1_h^T + b1_h) W2_h^T + b2_h) -> [tokens, dOut]. */
export function mvpProjection(a: MvpProjectionArgs): Promise<Float32Array> {
  const params = { tokens: a.tokens, dIn: a.dIn, dHid: a.dHid, dOut: a.dOut, nHeads: a.nHeads };
  return native().mvpProjection(a.x, a.w1, a.b1 ?? null, a.w2, a.b2 ?? null, a.g, a.wtype, params, callOptions(a.device, a.out));
}

/** Converts f32 values to `dtype` storage bytes (ggml's reference quantizers `quantize_row_*_ref`, byte-exact). */
export function quantize(x: Float32Array, dtype: DType): Uint8Array {
  return native().quantize(x, dtype);
}

/** Converts `n` elements of `dtype` storage back to f32 (into `options.out` when given: {@link ResultOut}). */
export function dequantize(bytes: ArrayBufferView | ArrayBuffer, dtype: DType, n: number, options?: ResultOut): Float32Array {
  if (!Number.isInteger(n) || n < 0) throw new EmollmError('ERR_INVALID_ARGUMENT', `n must be a non-negative integer, got ${n}`);
  return native().dequantize(bytes, dtype, n, options?.out === undefined ? undefined : { out: options.out });
}

export interface ReadBandwidthOptions {
  /**
   * Bytes each pass reads (default 256 MiB; 1 MiB to 16 GiB, rounded down to whole 64-byte lines).
   * Make it well over the last-level cache (a pass that fits the cache measures the cache). The
   * buffer is the process's one probe buffer, in 2 MiB pages, allocated and written by a call that
   * finds none of at least `bytes` (a smaller one is replaced) and freed when the call ends, unless
   * it passes `keep: true`.
   */
  bytes?: number;
  /** Passes over the buffer (default 3, 1 to 1000); `gbs` is the best of them. */
  reps?: number;
  /** Contiguous parts each thread walks side by side: 1, 2, 4 (default) or 8. */
  streams?: number;
  /** Software prefetch distance of each stream in bytes, a multiple of 64 up to 65536 (default 1024; 0: none). */
  prefetch?: number;
  /** Threads (the runtime's shared pool of that many; unset or 0: the runtime default, as the other kernel calls). */
  threads?: number;
  /** Only 'cpu' (this measures the CPU's reads). */
  device?: Device;
  /**
   * Keep the probe buffer (`bytes`, rounded up to 2 MiB) after the call, for later calls of the
   * same or a smaller size: no allocation or page faults before their passes (default false: the
   * call frees it, and the next call allocates and writes it again). For a caller that probes
   * again and again (bench:decode's decoding process between its decode chunks); the memory stays
   * held until a call without `keep` ends or the process exits.
   */
  keep?: boolean;
}

export interface ReadBandwidth {
  /** The best pass's read rate, GB/s (1e9 bytes a second). */
  gbs: number;
  /** The median pass's read rate, GB/s. */
  medianGbs: number;
  /** Every pass's rate in the order they ran, GB/s. */
  repGbs: number[];
  /**
   * With one thread: the best pass's rate by the calling thread's CPU time (the pass runs on that
   * thread alone, so time another process held the core is left out: the figure that stays
   * readable on a loaded machine); null with more threads or where there is no per-thread clock.
   */
  cpuGbs: number | null;
  bytes: number;
  threads: number;
  streams: number;
  prefetch: number;
  /** The instruction-set level of the loads ('avx512', 'avx2' or 'scalar'). */
  isa: Isa;
}

/**
 * Measures the memory read bandwidth the way the fastest streaming kernels read: each thread of
 * the pool reads its slice of a buffer larger than the caches as `streams` parts side by side with
 * software prefetch (the loop of bench_kernels' read probe, its best variant 4 streams + 1 KiB
 * ahead by default), every 64-byte line once, timed per pass. The ceiling a decode's bytes per
 * second is held to; bench:decode (`--probe-every chunk`) runs it in the decoding process between
 * decode chunks, so each chunk is held to the bandwidth of its own moment. Runs on a native worker
 * thread (the event loop stays free); bad options are a synchronous ERR_INVALID_ARGUMENT. The
 * buffer (`bytes`: 256 MiB by default, up to 16 GiB) is allocated for the call and freed when it
 * ends unless `keep: true` (then held until a call without it ends, or the process exits).
 */
export function readBandwidth(options: ReadBandwidthOptions = {}): Promise<ReadBandwidth> {
  if (options === null || typeof options !== 'object') throw new EmollmError('ERR_INVALID_ARGUMENT', 'readBandwidth expects an options object');
  return native().readBandwidth(options) as Promise<ReadBandwidth>;
}
