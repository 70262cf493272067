// A random-weight LLaMA GGUF with rows that are whole 256-element k-quant super-blocks (dim 256,
// ffn 512), taking its tokenizer and the rest of its metadata from a real GGUF (stories260K), and
// a logits comparison; shared by the k-quant tests (quantize_kquant, quantize_mix).
import { expect } from 'vitest';

import { inspectGguf, writeGguf } from '../../../lib/index.js';
import type { GgufMetadataEntry, GgufTensorSpec, GgufType } from '../../../lib/gguf_writer.js';

/** Deterministic N(0, sd) values (xorshift + Box-Muller). */
export function randn(n: number, sd: number, seed: number): Float32Array {
  let s = (seed * 2654435761) >>> 0 || 1;
  const u = (): number => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = sd * Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u());
  return out;
}

export interface RandomLlamaOptions {
  layers?: number;
  /** Write no output.weight: the token embedding is the classifier (tied embeddings). */
  tied?: boolean;
  /** KV heads (default 4 of the 8 query heads; 2 = GQA 4:1, what the bf16-products decode path needs). */
  headsKv?: number;
}

/** Writes the model to `path`; `source` is the GGUF whose metadata (vocabulary: 512) it reuses. */
export async function makeRandomLlama(path: string, source: string, opts: RandomLlamaOptions = {}): Promise<void> {
  const info = await inspectGguf(source);
  const VOCAB = 512;
  const D = 256;
  const F = 512;
  const L = opts.layers ?? 2;
  const H = 8;
  const HKV = opts.headsKv ?? 4;
  const override: Record<string, number> = {
    'llama.embedding_length': D,
    'llama.feed_forward_length': F,
    'llama.block_count': L,
    'llama.attention.head_count': H,
    'llama.attention.head_count_kv': HKV,
    'llama.rope.dimension_count': D / H,
  };
  const metadata: GgufMetadataEntry[] = Object.entries(info.metadata).map(([key, value]) => ({
    key,
    value: key in override ? override[key]! : value,
    type: (info.metadataTypes[key] ?? 'string') as GgufType,
  }));
  for (const key of Object.keys(override))
    if (!(key in info.metadata)) metadata.push({ key, type: 'u32', value: override[key]! });
  const f32 = (name: string, shape: number[], sd: number, seed: number, mean = 0): GgufTensorSpec => {
    const v = randn(shape.reduce((a, b) => a * b, 1), sd, seed);
    if (mean) for (let i = 0; i < v.length; i++) v[i] += mean;
    return { name, shape, dtype: 'f32', data: new Uint8Array(v.buffer) };
  };
  let seed = 1;
  const tensors: GgufTensorSpec[] = [f32('token_embd.weight', [VOCAB, D], 1, seed++)];
  const s = 1 / Math.sqrt(D);
  for (let l = 0; l < L; l++) {
    tensors.push(
      f32(`blk.${l}.attn_norm.weight`, [D], 0.1, seed++, 1),
      f32(`blk.${l}.attn_q.weight`, [D, D], s, seed++),
      f32(`blk.${l}.attn_k.weight`, [(D / H) * HKV, D], s, seed++),
      f32(`blk.${l}.attn_v.weight`, [(D / H) * HKV, D], s, seed++),
      f32(`blk.${l}.attn_output.weight`, [D, D], s, seed++),
      f32(`blk.${l}.ffn_norm.weight`, [D], 0.1, seed++, 1),
      f32(`blk.${l}.ffn_gate.weight`, [F, D], s, seed++),
      f32(`blk.${l}.ffn_up.weight`, [F, D], s, seed++),
      f32(`blk.${l}.ffn_down.weight`, [D, F], 1 / Math.sqrt(F), seed++),
    );
  }
  tensors.push(f32('output_norm.weight', [D], 0.1, seed++, 1));
  if (!opts.tied) tensors.push(f32('output.weight', [VOCAB, D], s * 4, seed++));
  await writeGguf(path, metadata, tensors);
}

export interface LogitsComparison {
  maxDiff: number;
  /** maxDiff relative to the largest |logit| of b */
  relMax: number;
  cosine: number;
  /** fraction of rows whose argmax agrees */
  argmaxAgree: number;
}

/** Compares two [rows, vocab] logit arrays. */
export function compareLogits(a: Float32Array, b: Float32Array, vocab: number): LogitsComparison {
  expect(a.length).toBe(b.length);
  let maxDiff = 0;
  let maxAbs = 0;
  let dot = 0;
  let na = 0;
  let nb = 0;
  let agree = 0;
  const rows = a.length / vocab;
  for (let r = 0; r < rows; r++) {
    let ia = 0;
    let ib = 0;
    for (let i = 0; i < vocab; i++) {
      const x = a[r * vocab + i]!;
      const y = b[r * vocab + i]!;
      maxDiff = Math.max(maxDiff, Math.abs(x - y));
      maxAbs = Math.max(maxAbs, Math.abs(y));
      dot += x * y;
      na += x * x;
      nb += y * y;
      if (x > a[r * vocab + ia]!) ia = i;
      if (y > b[r * vocab + ib]!) ib = i;
    }
    if (ia === ib) agree++;
  }
  return { maxDiff, relMax: maxDiff / maxAbs, cosine: dot / Math.sqrt(na * nb), argmaxAgree: agree / rows };
}
