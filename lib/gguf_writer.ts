/**
 * Writing GGUF v3 files: metadata, tensor infos and tensor data, streamed to disk one tensor at a
 * time (so multi-gigabyte models never sit in memory). The layout is llama.cpp's: tensor data
 * offsets relative to the data section, every tensor aligned to `general.alignment`.
 */
import { open } from 'node:fs/promises';

import { EmollmError } from './errors.js';
import type { ComputeDType, GgufValue } from './loaders.js';
import { withAtomicOutput } from './safe_fs.js';

/** GGUF metadata value types, by the names `inspectGguf().metadataTypes` uses. */
export type GgufScalarType = 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'f32' | 'bool' | 'string' | 'u64' | 'i64' | 'f64';
/** A scalar type, or `array<T>` (nested arrays allowed). */
export type GgufType = GgufScalarType | `array<${string}>`;

export interface GgufMetadataEntry {
  key: string;
  type: GgufType;
  value: GgufValue;
}

export interface GgufTensorSpec {
  name: string;
  /** Outermost-first (PyTorch order); written reversed as ggml's ne[]. */
  shape: number[];
  dtype: ComputeDType;
  /** The tensor's bytes in `dtype` storage, or a function producing them when it is written. */
  data: Uint8Array | (() => Promise<Uint8Array>);
}

const VALUE_TYPE: Record<GgufScalarType | 'array', number> = {
  u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10, i64: 11, f64: 12,
};

/** ggml tensor type ids. */
export const GGML_TYPE: Record<ComputeDType, number> = {
  f32: 0, f16: 1, q4_0: 2, q4_1: 3, q5_0: 6, q5_1: 7, q8_0: 8, q4_K: 12, q5_K: 13, q6_K: 14, bf16: 30,
};

const BLOCK: Record<ComputeDType, [elems: number, bytes: number]> = {
  f32: [1, 4], f16: [1, 2], bf16: [1, 2], q8_0: [32, 34], q4_0: [32, 18],
  q4_1: [32, 20], q5_0: [32, 22], q5_1: [32, 24], q4_K: [256, 144], q5_K: [256, 176], q6_K: [256, 210],
};

/** Bytes of a tensor of `shape` in `dtype` (the innermost dimension must be whole blocks). */
export function tensorBytes(shape: readonly number[], dtype: ComputeDType): number {
  const [be, bb] = BLOCK[dtype];
  const inner = shape[shape.length - 1] ?? 1;
  if (inner % be !== 0)
    throw new EmollmError('ERR_INVALID_ARGUMENT', `a ${dtype} tensor needs its last dimension (${inner}) to be a multiple of ${be}`);
  const rows = shape.slice(0, -1).reduce((a, b) => a * b, 1);
  return rows * (inner / be) * bb;
}

/** Little-endian byte builder. */
class Bytes {
  private chunks: Buffer[] = [];
  length = 0;
  push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  u32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }
  u64(v: number | bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }
  concat(): Buffer {
    return Buffer.concat(this.chunks, this.length);
  }
}

function bad(msg: string): EmollmError {
  return new EmollmError('ERR_INVALID_ARGUMENT', msg);
}

function writeScalar(out: Bytes, type: GgufScalarType, v: GgufValue, key: string): void {
  const b = Buffer.alloc(8);
  const num = (): number => {
    if (typeof v !== 'number' && typeof v !== 'bigint') throw bad(`metadata ${key}: expected a number for ${type}`);
    return Number(v);
  };
  switch (type) {
    case 'u8': b.writeUInt8(num()); out.push(b.subarray(0, 1)); return;
    case 'i8': b.writeInt8(num()); out.push(b.subarray(0, 1)); return;
    case 'u16': b.writeUInt16LE(num()); out.push(b.subarray(0, 2)); return;
    case 'i16': b.writeInt16LE(num()); out.push(b.subarray(0, 2)); return;
    case 'u32': b.writeUInt32LE(num()); out.push(b.subarray(0, 4)); return;
    case 'i32': b.writeInt32LE(num()); out.push(b.subarray(0, 4)); return;
    case 'f32': b.writeFloatLE(num()); out.push(b.subarray(0, 4)); return;
    case 'f64': b.writeDoubleLE(num()); out.push(b); return;
    case 'u64': b.writeBigUInt64LE(BigInt(v as number | bigint)); out.push(b); return;
    case 'i64': b.writeBigInt64LE(BigInt(v as number | bigint)); out.push(b); return;
    case 'bool':
      if (typeof v !== 'boolean') throw bad(`metadata ${key}: expected a boolean`);
      out.push(Buffer.from([v ? 1 : 0]));
      return;
    case 'string':
      if (typeof v !== 'string') throw bad(`metadata ${key}: expected a string`);
      out.str(v);
      return;
  }
}

function writeValue(out: Bytes, type: GgufType, v: GgufValue, key: string, withType: boolean): void {
  const m = /^array<(.+)>$/.exec(type);
  if (m) {
    if (!Array.isArray(v)) throw bad(`metadata ${key}: expected an array for ${type}`);
    const inner = m[1] as GgufType;
    if (withType) out.u32(VALUE_TYPE.array);
    out.u32(/^array</.test(inner) ? VALUE_TYPE.array : VALUE_TYPE[inner as GgufScalarType]);
    out.u64(v.length);
    // Elements carry no type tag of their own (a nested array element is its type + count + items).
    for (const e of v) writeValue(out, inner, e, key, false);
    return;
  }
  if (!(type in VALUE_TYPE)) throw bad(`metadata ${key}: unknown GGUF type ${type}`);
  if (withType) out.u32(VALUE_TYPE[type as GgufScalarType]);
  writeScalar(out, type as GgufScalarType, v, key);
}

/**
 * Writes a GGUF v3 file. `general.alignment` in `metadata` sets the alignment (default 32).
 * Tensor data producers are called one at a time, in order.
 */
export async function writeGguf(path: string, metadata: readonly GgufMetadataEntry[], tensors: readonly GgufTensorSpec[]): Promise<void> {
  const alignEntry = metadata.find((e) => e.key === 'general.alignment');
  const alignment = alignEntry ? Number(alignEntry.value) : 32;
  if (!Number.isInteger(alignment) || alignment <= 0 || (alignment & (alignment - 1)) !== 0)
    throw bad(`general.alignment must be a power of two, got ${String(alignEntry?.value)}`);

  const head = new Bytes();
  head.push(Buffer.from('GGUF', 'latin1'));
  head.u32(3);
  head.u64(tensors.length);
  head.u64(metadata.length);
  for (const e of metadata) {
    head.str(e.key);
    writeValue(head, e.type, e.value, e.key, true);
  }
  const pad = (n: number): number => (alignment - (n % alignment)) % alignment;
  let offset = 0;
  const sizes: number[] = [];
  for (const t of tensors) {
    if (t.shape.length === 0 || t.shape.length > 4) throw bad(`tensor ${t.name}: ${t.shape.length} dims (1 to 4 allowed)`);
    const size = tensorBytes(t.shape, t.dtype);
    sizes.push(size);
    head.str(t.name);
    head.u32(t.shape.length);
    for (const d of [...t.shape].reverse()) head.u64(d);
    head.u32(GGML_TYPE[t.dtype]);
    head.u64(offset);
    offset += size + pad(size);
  }
  const header = head.concat();
  // Written beside `path` and renamed over it when complete: a failed or killed write never leaves
  // a truncated model, and an existing file (or what a symlink at `path` points to) is never written through.
  await withAtomicOutput(path, async (tmp) => {
    const fh = await open(tmp, 'wx', 0o644);
    try {
      let pos = 0;
      const write = async (b: Uint8Array): Promise<void> => {
        await fh.write(b, 0, b.length, pos);
        pos += b.length;
      };
      await write(header);
      await write(Buffer.alloc(pad(header.length)));
      for (const [i, t] of tensors.entries()) {
        const data = typeof t.data === 'function' ? await t.data() : t.data;
        if (data.length !== sizes[i])
          throw bad(`tensor ${t.name}: ${data.length} bytes given, ${String(sizes[i])} expected for [${t.shape.join(', ')}] ${t.dtype}`);
        await write(data);
        await write(Buffer.alloc(pad(data.length)));
      }
    } finally {
      await fh.close();
    }
  });
}
