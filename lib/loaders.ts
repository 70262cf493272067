/**
 * Inspecting weight files: safetensors (single files and sharded checkpoints) and GGUF.
 *
 * The native side memory-maps the file, checks every header field against the file (offsets,
 * sizes, alignment, counts) and describes its tensors; nothing is copied. Parsing runs on a
 * native worker thread, so these calls never block the event loop. Failures reject with an
 * {@link EmollmError}: `ERR_FILE_NOT_FOUND` (missing/unreadable path), `ERR_MALFORMED_FILE`
 * (bytes that contradict the format; the message names the file and the tensor or key),
 * `ERR_UNSUPPORTED` (e.g. GGUF v1).
 */
import { EmollmError } from './errors.js';
import { native } from './native.js';

/** A compute dtype emollm implements (see kernels' `DType`). */
export type ComputeDType = 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q4_0' | 'q4_1' | 'q5_0' | 'q5_1' | 'q4_K' | 'q5_K' | 'q6_K';

/** One tensor of a checkpoint. */
export interface TensorInfo {
  name: string;
  /**
   * The element type as the file spells it: safetensors `"F32"`, `"BF16"`, `"I64"`, ...;
   * GGUF (ggml names) `"f32"`, `"q8_0"`, `"q4_K"`, ...
   */
  dtype: string;
  /** The same type as an emollm compute dtype, or null when emollm cannot compute with it. */
  computeDtype: ComputeDType | null;
  /** Whether emollm can use this tensor for compute (`computeDtype !== null`). */
  supported: boolean;
  /**
   * Dimensions outermost-first (row-major, like PyTorch). GGUF files list ggml dims innermost
   * first (`ne[0]` contiguous); they are reversed here, so a GGUF token embedding of
   * ne = [64, 512] has shape [512, 64], the same as its safetensors counterpart.
   */
  shape: number[];
  /** Bytes of data. */
  nbytes: number;
  /** The file holding the data (for sharded safetensors, the shard). */
  file: string;
  /** Absolute byte offset of the data in `file`. */
  offset: number;
}

/** A safetensors checkpoint: one file or a sharded one (model.safetensors.index.json). */
export interface SafetensorsInfo {
  format: 'safetensors';
  /** The path that was read: the .safetensors file or the index.json. */
  source: string;
  sharded: boolean;
  /** The files holding tensor data (one, or every shard). */
  files: string[];
  /**
   * The `__metadata__` strings (of all shards, the first one wins), plus for a sharded checkpoint
   * the index's string/integer `metadata` entries (e.g. `total_size`, as text).
   */
  metadata: Record<string, string>;
  /** File order (shard by shard). */
  tensors: TensorInfo[];
}

/**
 * A GGUF metadata value: integers as numbers (BigInt beyond 2^53), floats as numbers, bools,
 * strings, and arrays of these (nested arrays allowed). Arrays are returned in full, e.g.
 * `tokenizer.ggml.tokens` with every token.
 */
export type GgufValue = number | bigint | boolean | string | GgufValue[];

export interface GgufInfo {
  format: 'gguf';
  file: string;
  /** 2 or 3. */
  version: number;
  /** `general.alignment`, default 32. */
  alignment: number;
  /** Absolute offset of the data section. */
  dataOffset: number;
  /** Metadata in file order. */
  metadata: Record<string, GgufValue>;
  /** The GGUF type of each metadata value: `"u32"`, `"string"`, `"array<string>"`, ... */
  metadataTypes: Record<string, string>;
  tensors: TensorInfo[];
}

function checkPath(path: unknown): asserts path is string {
  if (typeof path !== 'string' || path.length === 0)
    throw new EmollmError('ERR_INVALID_ARGUMENT', 'path must be a non-empty string');
}

/**
 * Describes a safetensors checkpoint. `path` may be a `.safetensors` file, a
 * `model.safetensors.index.json`, or a directory holding either (the index is preferred).
 */
export async function inspectSafetensors(path: string): Promise<SafetensorsInfo> {
  checkPath(path);
  return (await native().inspectSafetensors(path)) as SafetensorsInfo;
}

/** Describes a GGUF file (v2 or v3): metadata and tensors. */
export async function inspectGguf(path: string): Promise<GgufInfo> {
  checkPath(path);
  return (await native().inspectGguf(path)) as GgufInfo;
}

/** Finds a tensor by name. */
export function findTensor(info: { tensors: TensorInfo[] }, name: string): TensorInfo | undefined {
  return info.tensors.find((t) => t.name === name);
}
