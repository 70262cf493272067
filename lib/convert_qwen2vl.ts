/**
 * A Hugging Face Qwen2-VL folder (`Qwen2VLForConditionalGeneration`) as llama.cpp's pair of GGUF
 * files, in the key and tensor names llama.cpp's `convert_hf_to_gguf.py` writes (its
 * `Qwen2VLModel` and `Qwen2VLVisionModel`, `--mmproj`):
 *
 * - text (`general.architecture` "qwen2vl"): `token_embd`, `blk.N.{attn_norm, attn_q, attn_k,
 *   attn_v (+ biases), attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}`, `output_norm`,
 *   `output` (absent when tied); `qwen2vl.rope.dimension_sections` = mrope_section + [0]; the
 *   tokenizer as `tokenizer.ggml.*` ("gpt2" BPE: tokens, token types, merges, `pre` "qwen2" for
 *   Qwen2's split regex or "gpt-2" for plain byte-level) and `tokenizer.chat_template`.
 * - mmproj (`clip.projector_type` "qwen2vl_merger"): the Conv3d patch kernel split into its two
 *   temporal slices `v.patch_embd.weight` / `.weight.1`, each block's fused qkv split into
 *   `attn_q` / `attn_k` / `attn_v`, `ln1`, `ln2`, `attn_out`, `ffn_up` (fc1), `ffn_down` (fc2),
 *   the merger's `ln_q` as `v.post_ln` and its MLP as `mm.0` / `mm.2`. As llama.cpp does,
 *   `clip.vision.feed_forward_length` holds vision_config.hidden_size (not the MLP width); the
 *   processor's min / max pixels go to `clip.vision.image_{min,max}_pixels`.
 *
 * Tensors keep their dtype (f32, f16 or bf16); data is read from the safetensors files one tensor
 * at a time while the GGUF is written (see gguf_writer.ts). Used to check the GGUF path against
 * the HF path on the same weights, and by `scripts/qwen2vl-to-gguf.mjs`.
 */
import { open } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { EmollmError } from './errors.js';
import { writeGguf, type GgufMetadataEntry, type GgufTensorSpec } from './gguf_writer.js';
import { DEFAULT_MAX_JSON_BYTES } from './limits.js';
import { inspectSafetensors, type ComputeDType, type TensorInfo } from './loaders.js';
import { readRegularTextFile } from './safe_fs.js';
import { QWEN2_SPLIT_REGEX, QWEN2_SPLIT_REGEX_HF } from './tokenizer_hf.js';

type Json = Record<string, unknown>;

/** Where the pair is written. */
export interface Qwen2VLGgufPaths {
  /** The text GGUF. */
  text: string;
  /** The mmproj GGUF. */
  mmproj: string;
}

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

async function readJson(file: string): Promise<Json> {
  const text = await readRegularTextFile(file, { maxBytes: 64 * DEFAULT_MAX_JSON_BYTES });
  try {
    const j = JSON.parse(text) as unknown;
    if (!isObject(j)) throw new Error('not a JSON object');
    return j;
  } catch (e) {
    throw new EmollmError('ERR_MALFORMED_FILE', `${file}: ${(e as Error).message}`, { file });
  }
}

const DTYPE: Record<string, ComputeDType> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

/** Converts the folder's weights, tokenizer and template; writes `out.text` and `out.mmproj`. */
export async function convertQwen2VLToGguf(folder: string, out: Qwen2VLGgufPaths): Promise<void> {
  const cfgFile = join(folder, 'config.json');
  const cfg = await readJson(cfgFile);
  if (cfg.model_type !== 'qwen2_vl')
    throw new EmollmError('ERR_UNSUPPORTED', `${cfgFile}: model_type ${JSON.stringify(cfg.model_type)} is not "qwen2_vl"`, { file: cfgFile });
  const tc: Json = isObject(cfg.text_config) ? { ...cfg, ...cfg.text_config } : cfg;  // v5 nests the text config
  const vc = cfg.vision_config;
  if (!isObject(vc)) throw new EmollmError('ERR_BAD_CONFIG', `${cfgFile}: no vision_config`, { file: cfgFile });
  const int = (o: Json, k: string): number => {
    const v = o[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new EmollmError('ERR_BAD_CONFIG', `${cfgFile}: ${k} must be a positive integer`, { file: cfgFile });
    return v;
  };
  const rope = (isObject(tc.rope_parameters) ? tc.rope_parameters : isObject(tc.rope_scaling) ? tc.rope_scaling : {}) as Json;
  const sections = rope.mrope_section;
  if (!Array.isArray(sections) || sections.length !== 3 || !sections.every((x) => Number.isInteger(x)))
    throw new EmollmError('ERR_BAD_CONFIG', `${cfgFile}: mrope_section must be 3 integers`, { file: cfgFile });
  const E = int(tc, 'hidden_size'), L = int(tc, 'num_hidden_layers'), nHead = int(tc, 'num_attention_heads');
  const nKv = typeof tc.num_key_value_heads === 'number' ? int(tc, 'num_key_value_heads') : nHead;
  const ropeTheta = Number(rope.rope_theta ?? tc.rope_theta ?? 1e6);

  const st = await inspectSafetensors(folder);
  const byName = new Map(st.tensors.map((t) => [t.name, t]));
  const get = (name: string): TensorInfo => {
    const t = byName.get(name);
    if (!t) throw new EmollmError('ERR_MALFORMED_FILE', `${folder}: no tensor ${name}`, { file: st.source });
    if (!DTYPE[t.dtype]) throw new EmollmError('ERR_UNSUPPORTED', `${folder}: tensor ${name} is ${t.dtype} (f32, f16, bf16 supported)`, { file: t.file });
    return t;
  };
  const read = async (t: TensorInfo, offset = 0, length = t.nbytes): Promise<Buffer> => {
    const fh = await open(t.file, 'r');
    try {
      const b = Buffer.alloc(length);
      const { bytesRead } = await fh.read(b, 0, length, t.offset + offset);
      if (bytesRead !== length) throw new EmollmError('ERR_MALFORMED_FILE', `${t.file}: tensor ${t.name} is cut short`, { file: t.file });
      return b;
    } finally {
      await fh.close();
    }
  };
  const whole = (spec: string, name: string): GgufTensorSpec => {
    const t = get(name);
    return { name: spec, shape: t.shape, dtype: DTYPE[t.dtype]!, data: () => read(t) };
  };
  // rows [r0, r0 + n) of a 2-D tensor (or elements of a 1-D one)
  const rows = (spec: string, name: string, r0: number, n: number): GgufTensorSpec => {
    const t = get(name);
    const rowBytes = t.nbytes / t.shape[0]!;
    return { name: spec, shape: [n, ...t.shape.slice(1)], dtype: DTYPE[t.dtype]!, data: () => read(t, r0 * rowBytes, n * rowBytes) };
  };

  // ---- text GGUF
  const tp = byName.has('model.language_model.embed_tokens.weight') ? 'model.language_model.' : 'model.';
  const text: GgufTensorSpec[] = [whole('token_embd.weight', `${tp}embed_tokens.weight`)];
  for (let i = 0; i < L; i++) {
    const p = `${tp}layers.${i}.`, b = `blk.${i}.`;
    text.push(whole(`${b}attn_norm.weight`, `${p}input_layernorm.weight`));
    for (const [g, h] of [['attn_q', 'q_proj'], ['attn_k', 'k_proj'], ['attn_v', 'v_proj']] as const) {
      text.push(whole(`${b}${g}.weight`, `${p}self_attn.${h}.weight`));
      text.push(whole(`${b}${g}.bias`, `${p}self_attn.${h}.bias`));
    }
    text.push(whole(`${b}attn_output.weight`, `${p}self_attn.o_proj.weight`));
    text.push(whole(`${b}ffn_norm.weight`, `${p}post_attention_layernorm.weight`));
    text.push(whole(`${b}ffn_gate.weight`, `${p}mlp.gate_proj.weight`));
    text.push(whole(`${b}ffn_up.weight`, `${p}mlp.up_proj.weight`));
    text.push(whole(`${b}ffn_down.weight`, `${p}mlp.down_proj.weight`));
  }
  text.push(whole('output_norm.weight', `${tp}norm.weight`));
  if (byName.has('lm_head.weight') && cfg.tie_word_embeddings !== true && tc.tie_word_embeddings !== true) text.push(whole('output.weight', 'lm_head.weight'));
  const ftype = (ts: GgufTensorSpec[]): number => ({ f32: 0, f16: 1, bf16: 32 } as Record<string, number>)[ts[0]!.dtype] ?? 0;

  const md: GgufMetadataEntry[] = [];
  const put = (key: string, type: GgufMetadataEntry['type'], value: GgufMetadataEntry['value']): void => void md.push({ key, type, value });
  const a = 'qwen2vl.';
  put('general.architecture', 'string', 'qwen2vl');
  put('general.name', 'string', typeof cfg._name_or_path === 'string' ? cfg._name_or_path : 'Qwen2-VL');
  put('general.file_type', 'u32', ftype(text));
  put(a + 'context_length', 'u32', typeof tc.max_position_embeddings === 'number' ? tc.max_position_embeddings : 32768);
  put(a + 'embedding_length', 'u32', E);
  put(a + 'block_count', 'u32', L);
  put(a + 'feed_forward_length', 'u32', int(tc, 'intermediate_size'));
  put(a + 'attention.head_count', 'u32', nHead);
  put(a + 'attention.head_count_kv', 'u32', nKv);
  put(a + 'rope.freq_base', 'f32', ropeTheta);
  put(a + 'attention.layer_norm_rms_epsilon', 'f32', Number(tc.rms_norm_eps ?? 1e-6));
  put(a + 'rope.dimension_sections', 'array<i32>', [...(sections as number[]), 0]);
  md.push(...(await tokenizerMetadata(folder, int(tc, 'vocab_size'))));
  await writeGguf(out.text, md, text);

  // ---- mmproj GGUF
  const vp = byName.has('model.visual.patch_embed.proj.weight') ? 'model.visual.' : 'visual.';
  const D = int(vc, 'embed_dim'), depth = int(vc, 'depth');
  const pe = get(`${vp}patch_embed.proj.weight`);
  if (pe.shape.length !== 5 || pe.shape[2] !== 2)
    throw new EmollmError('ERR_UNSUPPORTED', `${folder}: patch_embed.proj.weight ${JSON.stringify(pe.shape)}: llama.cpp's layout needs temporal_patch_size 2`, { file: pe.file });
  const [, C, , P] = pe.shape as [number, number, number, number, number];
  const es = pe.nbytes / pe.shape.reduce((x, y) => x * y, 1);
  // [D, C, 2, P, P] -> slice k: [D, C, P, P]
  const slice = (k: number) => async (): Promise<Buffer> => {
    const all = await read(pe);
    const o = Buffer.alloc(all.length / 2), plane = P * P * es;
    for (let dc = 0; dc < D * C; dc++) all.copy(o, dc * plane, (dc * 2 + k) * plane, (dc * 2 + k + 1) * plane);
    return o;
  };
  const vis: GgufTensorSpec[] = [
    { name: 'v.patch_embd.weight', shape: [D, C, P, P], dtype: DTYPE[pe.dtype]!, data: slice(0) },
    { name: 'v.patch_embd.weight.1', shape: [D, C, P, P], dtype: DTYPE[pe.dtype]!, data: slice(1) },
  ];
  for (let i = 0; i < depth; i++) {
    const p = `${vp}blocks.${i}.`, b = `v.blk.${i}.`;
    ['attn_q', 'attn_k', 'attn_v'].forEach((g, k) => {
      vis.push(rows(`${b}${g}.weight`, `${p}attn.qkv.weight`, k * D, D));
      vis.push(rows(`${b}${g}.bias`, `${p}attn.qkv.bias`, k * D, D));
    });
    vis.push(whole(`${b}attn_out.weight`, `${p}attn.proj.weight`), whole(`${b}attn_out.bias`, `${p}attn.proj.bias`));
    vis.push(whole(`${b}ln1.weight`, `${p}norm1.weight`), whole(`${b}ln1.bias`, `${p}norm1.bias`));
    vis.push(whole(`${b}ln2.weight`, `${p}norm2.weight`), whole(`${b}ln2.bias`, `${p}norm2.bias`));
    vis.push(whole(`${b}ffn_up.weight`, `${p}mlp.fc1.weight`), whole(`${b}ffn_up.bias`, `${p}mlp.fc1.bias`));
    vis.push(whole(`${b}ffn_down.weight`, `${p}mlp.fc2.weight`), whole(`${b}ffn_down.bias`, `${p}mlp.fc2.bias`));
  }
  vis.push(whole('v.post_ln.weight', `${vp}merger.ln_q.weight`), whole('v.post_ln.bias', `${vp}merger.ln_q.bias`));
  vis.push(whole('mm.0.weight', `${vp}merger.mlp.0.weight`), whole('mm.0.bias', `${vp}merger.mlp.0.bias`));
  vis.push(whole('mm.2.weight', `${vp}merger.mlp.2.weight`), whole('mm.2.bias', `${vp}merger.mlp.2.bias`));

  const pre = existsSync(join(folder, 'preprocessor_config.json')) ? await readJson(join(folder, 'preprocessor_config.json')) : {};
  const size: Json = isObject(pre.size) ? pre.size : {};
  const vm: GgufMetadataEntry[] = [];
  const vput = (key: string, type: GgufMetadataEntry['type'], value: GgufMetadataEntry['value']): void => void vm.push({ key, type, value });
  vput('general.architecture', 'string', 'clip');
  vput('general.type', 'string', 'mmproj');
  vput('general.file_type', 'u32', ftype(vis));
  vput('clip.has_vision_encoder', 'bool', true);
  vput('clip.vision.projection_dim', 'u32', E);
  vput('clip.vision.image_size', 'u32', typeof vc.image_size === 'number' ? vc.image_size : 560);
  vput('clip.vision.patch_size', 'u32', int(vc, 'patch_size'));
  vput('clip.vision.embedding_length', 'u32', D);
  vput('clip.vision.feed_forward_length', 'u32', int(vc, 'hidden_size'));  // llama.cpp's choice, see above
  vput('clip.vision.block_count', 'u32', depth);
  vput('clip.vision.attention.head_count', 'u32', int(vc, 'num_heads'));
  vput('clip.vision.image_mean', 'array<f32>', (pre.image_mean as number[] | undefined) ?? [0.48145466, 0.4578275, 0.40821073]);
  vput('clip.vision.image_std', 'array<f32>', (pre.image_std as number[] | undefined) ?? [0.26862954, 0.26130258, 0.27577711]);
  vput('clip.projector_type', 'string', 'qwen2vl_merger');
  vput('clip.vision.attention.layer_norm_epsilon', 'f32', Number(tc.rms_norm_eps ?? 1e-6));
  const minPx = size.shortest_edge ?? pre.min_pixels, maxPx = size.longest_edge ?? pre.max_pixels;
  if (typeof minPx === 'number') vput('clip.vision.image_min_pixels', 'u32', minPx);
  if (typeof maxPx === 'number') vput('clip.vision.image_max_pixels', 'u32', maxPx);
  await writeGguf(out.mmproj, vm, vis);
}

/**
 * tokenizer.json (+ tokenizer_config.json, the chat template) as `tokenizer.ggml.*` keys, the way
 * llama.cpp's `_set_vocab_gpt2` writes them: every id below vocab_size, gaps as `[PAD<id>]`
 * (type 5, unused), added special tokens as control (3), other added tokens as user-defined (4).
 */
async function tokenizerMetadata(folder: string, vocabSize: number): Promise<GgufMetadataEntry[]> {
  const file = join(folder, 'tokenizer.json');
  const tj = await readJson(file);
  const model = tj.model as Json;
  if (!isObject(model) || model.type !== 'BPE' || !isObject(model.vocab))
    throw new EmollmError('ERR_UNSUPPORTED', `${file}: only a BPE tokenizer.json converts to a "gpt2" GGUF vocabulary`, { file });
  const pre = preTokenizerName(tj.pre_tokenizer, file);
  const tokens: string[] = [];
  const types: number[] = [];
  for (const [tok, id] of Object.entries(model.vocab as Record<string, number>)) (tokens[id] = tok), (types[id] = 1);
  const specials = new Set<number>();
  for (const t of (Array.isArray(tj.added_tokens) ? tj.added_tokens : []) as Json[]) {
    const id = Number(t.id);
    tokens[id] = String(t.content);
    types[id] = t.special === true ? 3 : 4;
    if (t.special === true) specials.add(id);
  }
  const n = Math.max(vocabSize, tokens.length);
  for (let i = 0; i < n; i++) if (tokens[i] === undefined) (tokens[i] = `[PAD${i}]`), (types[i] = 5);
  const merges = ((model.merges ?? []) as unknown[]).map((m) => (Array.isArray(m) ? m.join(' ') : String(m)));
  const md: GgufMetadataEntry[] = [
    { key: 'tokenizer.ggml.model', type: 'string', value: 'gpt2' },
    { key: 'tokenizer.ggml.pre', type: 'string', value: pre },
    { key: 'tokenizer.ggml.tokens', type: 'array<string>', value: tokens },
    { key: 'tokenizer.ggml.token_type', type: 'array<i32>', value: types },
    { key: 'tokenizer.ggml.merges', type: 'array<string>', value: merges },
  ];
  const tcFile = join(folder, 'tokenizer_config.json');
  const tc = existsSync(tcFile) ? await readJson(tcFile) : {};
  const idOf = (v: unknown): number | undefined => {
    const s = isObject(v) ? v.content : v;
    const i = typeof s === 'string' ? tokens.indexOf(s) : -1;
    return i >= 0 ? i : undefined;
  };
  for (const [k, key] of [['eos_token', 'eos_token_id'], ['pad_token', 'padding_token_id'], ['bos_token', 'bos_token_id']] as const) {
    const id = idOf(tc[k]);
    if (id !== undefined) md.push({ key: `tokenizer.ggml.${key}`, type: 'u32', value: id });
  }
  md.push({ key: 'tokenizer.ggml.add_bos_token', type: 'bool', value: tc.add_bos_token === true });
  // the chat template: chat_template.jinja, chat_template.json, or tokenizer_config.json's
  let template: string | undefined;
  if (existsSync(join(folder, 'chat_template.jinja'))) template = await readRegularTextFile(join(folder, 'chat_template.jinja'), { maxBytes: DEFAULT_MAX_JSON_BYTES });
  else if (existsSync(join(folder, 'chat_template.json'))) {
    const j = await readJson(join(folder, 'chat_template.json'));
    if (typeof j.chat_template === 'string') template = j.chat_template;
  } else if (typeof tc.chat_template === 'string') template = tc.chat_template;
  if (template !== undefined) md.push({ key: 'tokenizer.chat_template', type: 'string', value: template });
  return md;
}

/** llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json pre-tokenizer: "gpt-2" or "qwen2". */
function preTokenizerName(p: unknown, file: string): string {
  if (isObject(p) && p.type === 'ByteLevel' && p.use_regex !== false) return 'gpt-2';
  if (isObject(p) && p.type === 'Sequence' && Array.isArray(p.pretokenizers) && p.pretokenizers.length === 2) {
    const [split, bl] = p.pretokenizers as Json[];
    const pattern = split?.pattern;
    const re = isObject(pattern) ? pattern.Regex : undefined;
    if (split?.type === 'Split' && (re === QWEN2_SPLIT_REGEX_HF || re === QWEN2_SPLIT_REGEX) && bl?.type === 'ByteLevel' && bl.use_regex === false) return 'qwen2';
  }
  throw new EmollmError('ERR_UNSUPPORTED', `${file}: pre_tokenizer ${JSON.stringify(p).slice(0, 200)} is neither GPT-2's byte-level nor Qwen2's split`, { file });
}
