/**
 * llama.cpp's k-quant mixes (the `llama-quantize` presets Q4_K_M, Q5_K_M, Q4_K_S, Q5_K_S): which
 * weight matrix gets which type. A port of the branches of llama.cpp's `llama_tensor_get_type`
 * (src/llama-quant.cpp) that these four presets reach, for dense (non-MoE) models:
 *
 * - `output.weight` (or `token_embd.weight` when the model has no separate output, i.e. tied
 *   embeddings): q6_K; q8_0 when its rows are not whole 256-element super-blocks.
 * - `attn_v.weight`, counted in file order as i of n (n = number of attn_v / attn_qkv tensors):
 *   Q4_K_M / Q5_K_M: q6_K when `useMoreBits(i, n)`; Q4_K_S: q5_K for i < 4. In a 70B LLaMA (80
 *   layers, grouped-query attention) a q4_K attn_v becomes q5_K.
 * - `ffn_down`, counted in file order as i of n (n = the model's block_count):
 *   Q4_K_M / Q5_K_M: q6_K when `useMoreBits(i, n)`; Q4_K_S: q5_K for i < n/8.
 * - `attn_qkv.weight` (fused QKV): Q4_K_M q5_K, Q5_K_M q6_K.
 * - everything else: the preset's base type (q4_K for Q4_K_*, q5_K for Q5_K_*).
 *
 * Then, as llama.cpp does after choosing, a k-quant matrix whose rows are not whole super-blocks
 * falls back (q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0), done by the caller (lib/quantize.ts).
 * Not ported (emollm runs no such models): the MoE rules (8 experts: attn_v / attn_k q8_0), and
 * Falcon's variants. No importance matrix (llama.cpp's Q4_K_M without --imatrix is this mix).
 */
import type { ComputeDType } from './loaders.js';

/** The llama.cpp presets `emollm quantize` writes, as llama-quantize names them. */
export type QuantMix = 'Q4_K_M' | 'Q5_K_M' | 'Q4_K_S' | 'Q5_K_S';
export const QUANT_MIXES: readonly QuantMix[] = ['Q4_K_M', 'Q5_K_M', 'Q4_K_S', 'Q5_K_S'];

/** llama.cpp's general.file_type (LLAMA_FTYPE_MOSTLY_*) of each preset. */
export const MIX_FILE_TYPE: Record<QuantMix, number> = { Q4_K_S: 14, Q4_K_M: 15, Q5_K_S: 16, Q5_K_M: 17 };

/** The type most matrices get. */
export function mixBaseType(mix: QuantMix): ComputeDType {
  return mix.startsWith('Q4') ? 'q4_K' : 'q5_K';
}

/**
 * llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third layer
 * in between, get more bits.
 */
export function useMoreBits(i: number, n: number): boolean {
  const eighth = Math.trunc(n / 8);
  return i < eighth || i >= Math.trunc((7 * n) / 8) || (i - eighth) % 3 === 2;
}

/** What the rule needs to know about the model, from its metadata and tensor names. */
export interface MixModelInfo {
  /** `<arch>.block_count` (llama.cpp's n_ffn_down). */
  nLayers: number;
  /** Number of attn_v / attn_qkv weight tensors (llama.cpp's n_attention_wv). */
  nAttentionWv: number;
  /** The model has an `output.weight` (else the token embedding is the output and is treated as it). */
  hasOutput: boolean;
  /** A 70B-class LLaMA: 80 layers with grouped-query attention (llama.cpp's LLM_TYPE_70B). */
  is70B: boolean;
}

/**
 * The stateful chooser: call it once per quantizable matrix in file order (the counters advance
 * as llama.cpp's do). `inner` is the row length (ggml's ne[0]).
 */
export function mixChooser(mix: QuantMix, model: MixModelInfo): (name: string, inner: number) => ComputeDType {
  let iAttentionWv = 0;
  let iFfnDown = 0;
  const base = mixBaseType(mix);
  const medium = mix === 'Q4_K_M' || mix === 'Q5_K_M';
  return (name, inner) => {
    if (name === 'output.weight' || (!model.hasOutput && name === 'token_embd.weight')) return inner % 256 !== 0 ? 'q8_0' : 'q6_K';
    if (name === 'token_embd.weight') return base;
    let type = base;
    if (name.includes('attn_v.weight')) {
      if (medium && useMoreBits(iAttentionWv, model.nAttentionWv)) type = 'q6_K';
      else if (mix === 'Q4_K_S' && iAttentionWv < 4) type = 'q5_K';
      if (model.is70B && type === 'q4_K') type = 'q5_K';
      iAttentionWv++;
    } else if (name.includes('ffn_down')) {
      if (medium && useMoreBits(iFfnDown, model.nLayers)) type = 'q6_K';
      else if (mix === 'Q4_K_S' && iFfnDown < Math.trunc(model.nLayers / 8)) type = 'q5_K';
      iFfnDown++;
    } else if (name.includes('attn_qkv.weight')) {
      if (mix === 'Q4_K_M') type = 'q5_K';
      else if (mix === 'Q5_K_M') type = 'q6_K';
    }
    return type;
  };
}

/** The model facts the rule needs, from a GGUF's metadata and tensor names. */
export function mixModelInfo(metadata: Record<string, unknown>, tensorNames: readonly string[]): MixModelInfo {
  const arch = typeof metadata['general.architecture'] === 'string' ? metadata['general.architecture'] : 'llama';
  const num = (k: string): number | undefined => {
    const v = metadata[`${arch}.${k}`];
    return typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : undefined;
  };
  const nFfnDown = tensorNames.filter((n) => n.includes('ffn_down') && n.endsWith('.weight')).length;
  const nLayers = num('block_count') ?? nFfnDown;
  const heads = num('attention.head_count');
  const kvHeads = num('attention.head_count_kv') ?? heads;
  return {
    nLayers,
    nAttentionWv: tensorNames.filter((n) => n.includes('attn_v.weight') || n.includes('attn_qkv.weight')).length,
    hasOutput: tensorNames.includes('output.weight'),
    is70B: arch === 'llama' && nLayers === 80 && heads !== undefined && kvHeads !== undefined && heads !== kvHeads,
  };
}
