#!/usr/bin/env node
// Random-weight LLaMA models for `npm run bench:decode`: one GGUF v3 file (llama.cpp's layout,
// readable by llama.cpp) and, for f32 / f16 / bf16, a Hugging Face folder (config.json +
// model.safetensors, sharded with model.safetensors.index.json above --shard-gb) holding the
// same weights. Decode speed does not depend on the values, so they only need to be finite and
// small: N(0, 0.02) floats; q8_0 / q4_0 blocks are random bytes with a sane fp16 scale.
//
//   node bench/make-random-model.mjs                      # default set (see DEFAULT_SET below)
//   node bench/make-random-model.mjs --quick              # 1.1B q4_0 + q8_0
//   node bench/make-random-model.mjs --shapes 7b --dtypes q4_0 --out /data/models
//   node bench/make-random-model.mjs --full               # also 7B bf16 (~13.5 GB GGUF + 13.5 GB HF)
//   node bench/make-random-model.mjs --list               # what would be written, and sizes
//
// Files that already exist with the expected size are kept (generation is skipped); files are
// written as *.partial and renamed when complete. Output: bench/models/ (git-ignored):
//   <shape>-<dtype>.gguf   and   <shape>-<dtype>-hf/{config.json, model*.safetensors[, index]}
//
// The GGUF has llama.cpp's q/k row order (its HF converter permutes q_proj / k_proj rows per head
// so that RoPE rotates interleaved pairs); the HF folder has the inverse permutation, so both
// describe the same model and a loader that handles each layout gets the same logits from both.
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, statSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const DEFAULT_OUT = join(here, 'models');

// ---------------------------------------------------------------------------- shapes, dtypes
export const SHAPES = {
  // TinyLlama-1.1B (LLaMA-2 architecture, GQA 32/4)
  '1.1b': { name: 'tinyllama-1.1b', label: 'TinyLlama-1.1B', n_embd: 2048, n_layer: 22, n_head: 32, n_head_kv: 4, n_ff: 5632, n_vocab: 32000, n_ctx: 2048 },
  // LLaMA-2-7B
  '7b': { name: 'llama2-7b', label: 'LLaMA-2-7B', n_embd: 4096, n_layer: 32, n_head: 32, n_head_kv: 32, n_ff: 11008, n_vocab: 32000, n_ctx: 4096 },
  // a few MB, for smoke tests of the harness (not in any default set)
  tiny: { name: 'tiny-llama', label: 'tiny', n_embd: 256, n_layer: 2, n_head: 8, n_head_kv: 2, n_ff: 704, n_vocab: 1024, n_ctx: 2048 },
};

// ggml type ids, GGUF general.file_type, bytes per block of `block` elements
export const DTYPES = {
  f32: { ggml: 0, ftype: 0, block: 1, bytes: 4, st: 'F32', torch: 'float32' },
  f16: { ggml: 1, ftype: 1, block: 1, bytes: 2, st: 'F16', torch: 'float16' },
  bf16: { ggml: 30, ftype: 32, block: 1, bytes: 2, st: 'BF16', torch: 'bfloat16' },
  q8_0: { ggml: 8, ftype: 7, block: 32, bytes: 34, st: null },
  q4_0: { ggml: 2, ftype: 2, block: 32, bytes: 18, st: null },
  // K-quants (256-element super-blocks): every matrix in the one type (llama.cpp's Q4_K_S-like
  // and Q6_K files), or q4_k_m: llama.cpp's Q4_K_M recipe (see tensorDtype)
  q4_k: { ggml: 12, ftype: 14, block: 256, bytes: 144, st: null },
  q6_k: { ggml: 14, ftype: 18, block: 256, bytes: 210, st: null },
  q4_k_m: { ftype: 15, st: null, recipe: true },
};

// llama.cpp's use_more_bits (llama-quant.cpp): the layers Q4_K_M keeps at q6_K for attn_v and ffn_down
const useMoreBits = (i, n) => i < n / 8 || i >= (7 * n) / 8 || (i - Math.floor(n / 8)) % 3 === 2;

// The type of one matrix: `dtype`, except for the q4_k_m recipe (llama_tensor_get_type's
// LLAMA_FTYPE_MOSTLY_Q4_K_M branch): output q6_k; attn_v and ffn_down q6_k in the use_more_bits
// layers; everything else q4_k.
export function tensorDtype(dtype, role, layer, nLayer) {
  if (dtype !== 'q4_k_m') return dtype;
  if (role === 'output') return 'q6_k';
  if ((role === 'attn_v' || role === 'ffn_down') && useMoreBits(layer, nLayer)) return 'q6_k';
  return 'q4_k';
}

// [shape, dtype] pairs
export const DEFAULT_SET = [
  ['1.1b', 'f32'], ['1.1b', 'f16'], ['1.1b', 'bf16'], ['1.1b', 'q8_0'], ['1.1b', 'q4_0'],
  ['7b', 'q4_0'], ['7b', 'q8_0'],
];
export const FULL_EXTRA = [['7b', 'bf16']];
export const QUICK_SET = [['1.1b', 'q4_0'], ['1.1b', 'q8_0']];
// f32 only for the 1.1B (a 7B f32 is 27 GB)
export const ALLOWED = (shape, dtype) => !(shape === '7b' && dtype === 'f32');

export function tensorBytes(dtype, nElems) {
  const d = DTYPES[dtype];
  if (nElems % d.block !== 0) throw new Error(`${nElems} elements is not a multiple of the ${dtype} block`);
  return (nElems / d.block) * d.bytes;
}

// The tensor list in GGUF order, with HF names. dims are HF order [rows, cols] (ggml's ne is reversed).
export function tensorList(shape, dtype) {
  const s = SHAPES[shape];
  const hd = s.n_embd / s.n_head;
  const kv = s.n_head_kv * hd;
  const t = [];
  let layer = -1;
  const mat = (gguf, hf, rows, cols, extra = {}) => {
    const role = gguf.replace(/^blk\.\d+\./, '').replace(/\.weight$/, '');
    t.push({ gguf, hf, rows, cols, dtype: tensorDtype(dtype, role, layer, s.n_layer), ...extra });
  };
  const vec = (gguf, hf, n) => t.push({ gguf, hf, rows: 1, cols: n, dtype: 'f32', norm: true });
  mat('token_embd.weight', 'model.embed_tokens.weight', s.n_vocab, s.n_embd, { embd: true });
  for (let l = 0; l < s.n_layer; l++) {
    layer = l;
    const g = `blk.${l}.`, h = `model.layers.${l}.`;
    vec(g + 'attn_norm.weight', h + 'input_layernorm.weight', s.n_embd);
    mat(g + 'attn_q.weight', h + 'self_attn.q_proj.weight', s.n_embd, s.n_embd, { permute: s.n_head });
    mat(g + 'attn_k.weight', h + 'self_attn.k_proj.weight', kv, s.n_embd, { permute: s.n_head_kv });
    mat(g + 'attn_v.weight', h + 'self_attn.v_proj.weight', kv, s.n_embd);
    mat(g + 'attn_output.weight', h + 'self_attn.o_proj.weight', s.n_embd, s.n_embd);
    vec(g + 'ffn_norm.weight', h + 'post_attention_layernorm.weight', s.n_embd);
    mat(g + 'ffn_gate.weight', h + 'mlp.gate_proj.weight', s.n_ff, s.n_embd);
    mat(g + 'ffn_up.weight', h + 'mlp.up_proj.weight', s.n_ff, s.n_embd);
    mat(g + 'ffn_down.weight', h + 'mlp.down_proj.weight', s.n_embd, s.n_ff);
  }
  vec('output_norm.weight', 'model.norm.weight', s.n_embd);
  mat('output.weight', 'lm_head.weight', s.n_vocab, s.n_embd);
  for (const x of t) x.bytes = tensorBytes(x.dtype, x.rows * x.cols);
  return t;
}

// Bytes of weights streamed per decoded token: every matrix except the embedding table (one row
// of it is read), plus the norm vectors. KV-cache reads are not counted.
export function decodeWeightBytes(shape, dtype) {
  let b = 0;
  for (const x of tensorList(shape, dtype)) b += x.embd ? x.bytes / x.rows : x.bytes;
  return b;
}

// ---------------------------------------------------------------------------- random pools
// A pool of random bytes in the tensor's encoding; tensors are filled with slices of it taken at
// random offsets (fast: generating 7e9 normals in JS would take minutes; the values are irrelevant
// to speed). xorshift128+ keeps runs reproducible for a given --seed.
function rng(seed) {
  let s0 = BigInt.asUintN(64, BigInt(seed) * 0x9E3779B97F4A7C15n + 1n), s1 = BigInt.asUintN(64, s0 * 0xBF58476D1CE4E5B9n + 7n);
  // a 32-bit xorshift for the hot loop, seeded from the BigInt state
  let x = Number(s0 & 0xffffffffn) | 1, y = Number(s1 & 0xffffffffn) | 1;
  const u32 = () => {
    let t = x ^ (x << 11); x = y; y = (y ^ (y >>> 19)) ^ (t ^ (t >>> 8));
    return y >>> 0;
  };
  const uniform = () => (u32() + 0.5) / 4294967296;
  const normal = () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  return { u32, uniform, normal };
}

const f32buf = new Float32Array(1), u32view = new Uint32Array(f32buf.buffer);
export function f32ToBf16(v) {
  f32buf[0] = v;
  const u = u32view[0];
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;  // round to nearest even (finite inputs)
}
export function f32ToF16(v) {
  f32buf[0] = v;
  const u = u32view[0];
  const sign = (u >>> 16) & 0x8000;
  let exp = ((u >>> 23) & 0xff) - 127 + 15;
  let man = u & 0x7fffff;
  if (exp >= 31) return sign | 0x7c00;  // overflow -> inf (not produced here)
  if (exp <= 0) {                       // subnormal
    if (exp < -10) return sign;
    man |= 0x800000;
    const shift = 14 - exp;
    let h = man >>> shift;
    if ((man >>> (shift - 1)) & 1 && ((man & ((1 << (shift - 1)) - 1)) || (h & 1))) h++;
    return sign | h;
  }
  let h = (exp << 10) | (man >>> 13);
  if ((man & 0x1000) && ((man & 0xfff) || (h & 1))) h++;
  return sign | h;
}

const POOL_BYTES = 48 << 20;
const STD = 0.02;
function makePool(dtype, seed) {
  const r = rng(seed * 31 + DTYPES[dtype].ggml + 1);
  const d = DTYPES[dtype];
  const nBlocks = Math.floor(POOL_BYTES / d.bytes);
  const buf = Buffer.allocUnsafe(nBlocks * d.bytes);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (dtype === 'f32') for (let i = 0; i < nBlocks; i++) dv.setFloat32(i * 4, STD * r.normal(), true);
  else if (dtype === 'f16') for (let i = 0; i < nBlocks; i++) dv.setUint16(i * 2, f32ToF16(STD * r.normal()), true);
  else if (dtype === 'bf16') for (let i = 0; i < nBlocks; i++) dv.setUint16(i * 2, f32ToBf16(STD * r.normal()), true);
  else {
    // random quants, then the scale: int8 uniform on [-128,127] has std ~74, (nibble-8) on [-8,7] ~4.6
    const u32 = new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength >>> 2);
    for (let i = 0; i < u32.length; i++) u32[i] = r.u32();
    for (let i = buf.byteLength & ~3; i < buf.byteLength; i++) buf[i] = r.u32() & 0xff;
    // K-quants: q4_k = d * sc * u - dmin * m (6-bit sc, m ~ 32, nibble u ~ 8: d, dmin at bytes 0, 2),
    // q6_k = d * sc * (u - 32) (int8 sc ~ 74, 6-bit u - 32 ~ 18: d at byte 208)
    const q = { q8_0: 74, q4_0: 4.6, q4_k: 32 * 4.6, q6_k: 74 * 18 }[dtype];
    const at = dtype === 'q6_k' ? [208] : dtype === 'q4_k' ? [0, 2] : [0];
    for (let b = 0; b < nBlocks; b++)
      for (const o of at) dv.setUint16(b * d.bytes + o, f32ToF16((STD / q) * (0.75 + 0.5 * r.uniform())), true);
  }
  return { buf, unit: d.bytes, r };
}

function fillFromPool(pool, out) {
  const { buf, unit, r } = pool;
  const units = buf.byteLength / unit;
  const half = Math.floor(units / 2);
  let o = 0;
  while (o < out.byteLength) {
    const off = (r.u32() % half) * unit;
    const n = Math.min(out.byteLength - o, half * unit);
    buf.copy(out, o, off, off + n);
    o += n;
  }
}

// HF row order from GGUF row order (inverse of convert_hf_to_gguf.py's permute): within each head
// of hd rows, GGUF row 2i+j holds HF row j*hd/2+i.
function unpermuteRows(src, rows, rowBytes, nHead) {
  const hd = rows / nHead, half = hd / 2;
  const dst = Buffer.allocUnsafe(src.byteLength);
  for (let h = 0; h < nHead; h++)
    for (let i = 0; i < half; i++)
      for (let j = 0; j < 2; j++) {
        const g = h * hd + 2 * i + j, f = h * hd + j * half + i;
        src.copy(dst, f * rowBytes, g * rowBytes, (g + 1) * rowBytes);
      }
  return dst;
}

// ---------------------------------------------------------------------------- GGUF writer
const GT = { U32: 4, I32: 5, F32: 6, BOOL: 7, STRING: 8, ARRAY: 9, U64: 10 };
class Bytes {
  constructor() { this.parts = []; this.length = 0; }
  push(b) { this.parts.push(b); this.length += b.byteLength; }
  u32(v) { const b = Buffer.alloc(4); b.writeUInt32LE(v); this.push(b); }
  i32(v) { const b = Buffer.alloc(4); b.writeInt32LE(v); this.push(b); }
  u64(v) { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.push(b); }
  f32(v) { const b = Buffer.alloc(4); b.writeFloatLE(v); this.push(b); }
  str(s) { const b = Buffer.from(s, 'utf8'); this.u64(b.byteLength); this.push(b); }
  concat() { return Buffer.concat(this.parts, this.length); }
}

export function vocab(n) {
  const tokens = ['<unk>', '<s>', '</s>'], types = [2, 3, 3], scores = [0, 0, 0];
  for (let b = 0; b < 256; b++) { tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`); types.push(6); scores.push(0); }
  // filler pieces: "▁" + a unique lowercase word; scores decrease like a trained SPM vocab
  const letters = 'abcdefghijklmnopqrstuvwxyz';
  for (let i = 0; tokens.length < n; i++) {
    let w = '', k = i;
    do { w = letters[k % 26] + w; k = Math.floor(k / 26) - 1; } while (k >= 0);
    tokens.push('\u2581' + w); types.push(1); scores.push(-(tokens.length));
  }
  if (tokens.length > n) throw new Error(`n_vocab ${n} < 259 (special + byte tokens)`);
  return { tokens, types, scores };
}

function ggufHeader(shape, dtype, tensors) {
  const s = SHAPES[shape];
  const kv = [];
  const add = (key, type, write) => kv.push({ key, type, write });
  const u32 = (key, v) => add(key, GT.U32, (w) => w.u32(v));
  const f32 = (key, v) => add(key, GT.F32, (w) => w.f32(v));
  const str = (key, v) => add(key, GT.STRING, (w) => w.str(v));
  const boolean = (key, v) => add(key, GT.BOOL, (w) => w.push(Buffer.from([v ? 1 : 0])));
  const arr = (key, et, vals, wr) => add(key, GT.ARRAY, (w) => { w.u32(et); w.u64(vals.length); for (const v of vals) wr(w, v); });
  str('general.architecture', 'llama');
  str('general.name', `${s.label} random ${dtype} (emollm bench)`);
  u32('general.file_type', DTYPES[dtype].ftype);
  u32('general.quantization_version', 2);
  u32('general.alignment', 32);
  u32('llama.context_length', s.n_ctx);
  u32('llama.embedding_length', s.n_embd);
  u32('llama.block_count', s.n_layer);
  u32('llama.feed_forward_length', s.n_ff);
  u32('llama.rope.dimension_count', s.n_embd / s.n_head);
  u32('llama.attention.head_count', s.n_head);
  u32('llama.attention.head_count_kv', s.n_head_kv);
  f32('llama.attention.layer_norm_rms_epsilon', 1e-5);
  f32('llama.rope.freq_base', 10000);
  u32('llama.vocab_size', s.n_vocab);
  const v = vocab(s.n_vocab);
  str('tokenizer.ggml.model', 'llama');
  arr('tokenizer.ggml.tokens', GT.STRING, v.tokens, (w, x) => w.str(x));
  arr('tokenizer.ggml.scores', GT.F32, v.scores, (w, x) => w.f32(x));
  arr('tokenizer.ggml.token_type', GT.I32, v.types, (w, x) => w.i32(x));
  u32('tokenizer.ggml.unknown_token_id', 0);
  u32('tokenizer.ggml.bos_token_id', 1);
  u32('tokenizer.ggml.eos_token_id', 2);
  boolean('tokenizer.ggml.add_bos_token', true);
  boolean('tokenizer.ggml.add_eos_token', false);

  const w = new Bytes();
  w.push(Buffer.from('GGUF', 'latin1'));
  w.u32(3);
  w.u64(tensors.length);
  w.u64(kv.length);
  for (const e of kv) { w.str(e.key); w.u32(e.type); e.write(w); }
  let off = 0;
  for (const t of tensors) {
    w.str(t.gguf);
    const ne = t.norm ? [t.cols] : [t.cols, t.rows];
    w.u32(ne.length);
    for (const d of ne) w.u64(d);
    w.u32(DTYPES[t.dtype].ggml);
    w.u64(off);
    t.ggufOffset = off;
    off += t.bytes;
    off = Math.ceil(off / 32) * 32;
  }
  const head = w.concat();
  const dataStart = Math.ceil(head.byteLength / 32) * 32;
  const total = dataStart + tensors.reduce((a, t) => Math.max(a, t.ggufOffset + t.bytes), 0);
  return { head, dataStart, total };
}

// ---------------------------------------------------------------------------- safetensors
function hfPlan(shape, dtype, tensors, shardBytes) {
  // HF checkpoints keep norms in the model dtype
  const st = tensors.map((t) => ({ ...t, stDtype: dtype, stBytes: t.norm ? t.cols * DTYPES[dtype].bytes : t.bytes }));
  const shards = [];
  let cur = null;
  for (const t of st) {
    if (!cur || (cur.bytes > 0 && cur.bytes + t.stBytes > shardBytes)) { cur = { tensors: [], bytes: 0 }; shards.push(cur); }
    t.stBegin = cur.bytes;
    cur.bytes += t.stBytes;
    cur.tensors.push(t);
  }
  const n = shards.length;
  shards.forEach((sh, i) => {
    sh.file = n === 1 ? 'model.safetensors' : `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`;
    const header = { __metadata__: { format: 'pt' } };
    for (const t of sh.tensors) header[t.hf] = { dtype: DTYPES[dtype].st, shape: t.norm ? [t.cols] : [t.rows, t.cols], data_offsets: [t.stBegin, t.stBegin + t.stBytes] };
    let json = JSON.stringify(header);
    json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
    const hb = Buffer.from(json, 'utf8');
    const pre = Buffer.alloc(8);
    pre.writeBigUInt64LE(BigInt(hb.byteLength));
    sh.head = Buffer.concat([pre, hb]);
    sh.total = sh.head.byteLength + sh.bytes;
  });
  const s = SHAPES[shape];
  const config = {
    architectures: ['LlamaForCausalLM'], model_type: 'llama',
    hidden_size: s.n_embd, intermediate_size: s.n_ff, num_attention_heads: s.n_head, num_hidden_layers: s.n_layer,
    num_key_value_heads: s.n_head_kv, vocab_size: s.n_vocab, max_position_embeddings: s.n_ctx,
    rms_norm_eps: 1e-5, rope_theta: 10000.0, rope_scaling: null, hidden_act: 'silu', attention_bias: false,
    mlp_bias: false, tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2, torch_dtype: DTYPES[dtype].torch,
    initializer_range: STD, pretraining_tp: 1, use_cache: true, transformers_version: '4.40.0',
  };
  let index = null;
  if (n > 1) {
    index = { metadata: { total_size: shards.reduce((a, sh) => a + sh.bytes, 0) }, weight_map: {} };
    for (const sh of shards) for (const t of sh.tensors) index.weight_map[t.hf] = sh.file;
  }
  return { shards, config, index };
}

// ---------------------------------------------------------------------------- plan / write
export function modelPaths(shape, dtype, out = DEFAULT_OUT) {
  const base = `${SHAPES[shape].name}-${dtype}`;
  return { gguf: join(out, `${base}.gguf`), hf: DTYPES[dtype].st ? join(out, `${base}-hf`) : null };
}

const sizeIs = (p, n) => { try { return statSync(p).size === n; } catch { return false; } };

export function plan(shape, dtype, { out = DEFAULT_OUT, hf = true, shardBytes = 2e9 } = {}) {
  const tensors = tensorList(shape, dtype);
  const g = ggufHeader(shape, dtype, tensors);
  const paths = modelPaths(shape, dtype, out);
  const p = { shape, dtype, tensors, gguf: { path: paths.gguf, ...g }, hf: null };
  p.gguf.ok = sizeIs(paths.gguf, g.total);
  if (hf && paths.hf) {
    const h = hfPlan(shape, dtype, tensors, shardBytes);
    h.path = paths.hf;
    const configText = JSON.stringify(h.config, null, 2) + '\n';
    h.ok = h.shards.every((sh) => sizeIs(join(paths.hf, sh.file), sh.total)) && existsSync(join(paths.hf, 'config.json')) &&
      (!h.index || existsSync(join(paths.hf, 'model.safetensors.index.json')));
    h.configText = configText;
    h.total = h.shards.reduce((a, sh) => a + sh.total, 0);
    p.hf = h;
  }
  p.bytesToWrite = (p.gguf.ok ? 0 : p.gguf.total) + (p.hf && !p.hf.ok ? p.hf.total : 0);
  return p;
}

function writeAll(fd, buf) {
  let o = 0;
  while (o < buf.byteLength) o += writeSync(fd, buf, o, buf.byteLength - o);
}

// Writes what is missing of plan p. Returns seconds spent.
export function generate(p, { seed = 1, log = console.error } = {}) {
  const t0 = performance.now();
  const wantGguf = !p.gguf.ok, wantHf = p.hf && !p.hf.ok;
  if (!wantGguf && !wantHf) return 0;
  mkdirSync(dirname(p.gguf.path), { recursive: true });
  const pools = {};
  const pool = (dt) => (pools[dt] ??= makePool(dt, seed));
  let gfd = -1;
  if (wantGguf) {
    gfd = openSync(p.gguf.path + '.partial', 'w');
    writeAll(gfd, p.gguf.head);
    writeAll(gfd, Buffer.alloc(p.gguf.dataStart - p.gguf.head.byteLength));
  }
  let shardFds = [];
  if (wantHf) {
    rmSync(p.hf.path, { recursive: true, force: true });
    mkdirSync(p.hf.path, { recursive: true });
    shardFds = p.hf.shards.map((sh) => { const fd = openSync(join(p.hf.path, sh.file + '.partial'), 'w'); writeAll(fd, sh.head); return fd; });
  }
  const shardOf = new Map();
  if (wantHf) p.hf.shards.forEach((sh, i) => sh.tensors.forEach((t) => shardOf.set(t.hf, i)));
  const ones = {};
  let gpos = 0, done = 0, lastLog = performance.now();
  const totalBytes = p.tensors.reduce((a, t) => a + t.bytes, 0);
  for (const t of p.tensors) {
    let data;
    if (t.norm) {
      data = Buffer.alloc(t.bytes);
      new Float32Array(data.buffer, data.byteOffset, t.cols).fill(1);
    } else {
      data = Buffer.allocUnsafe(t.bytes);
      fillFromPool(pool(t.dtype), data);
    }
    if (wantGguf) {
      if (t.ggufOffset > gpos) { writeAll(gfd, Buffer.alloc(t.ggufOffset - gpos)); gpos = t.ggufOffset; }
      writeAll(gfd, data);
      gpos += t.bytes;
    }
    if (wantHf) {
      let hdata = data;
      if (t.norm && p.dtype !== 'f32') {
        // 1.0 in f16 (0x3c00) / bf16 (0x3f80)
        hdata = ones[p.dtype] ??= Buffer.from(new Uint16Array(t.cols).fill(p.dtype === 'f16' ? 0x3c00 : 0x3f80).buffer);
      } else if (t.permute) {
        hdata = unpermuteRows(data, t.rows, t.bytes / t.rows, t.permute);
      }
      writeAll(shardFds[shardOf.get(t.hf)], hdata);
    }
    done += t.bytes;
    if (performance.now() - lastLog > 5000) {
      lastLog = performance.now();
      log(`  ${((100 * done) / totalBytes).toFixed(0)}% (${(done / 1e9).toFixed(2)} GB of tensors)`);
    }
  }
  if (wantGguf) {
    if (gpos < p.gguf.total - p.gguf.dataStart) writeAll(gfd, Buffer.alloc(p.gguf.total - p.gguf.dataStart - gpos));
    fsyncSync(gfd);
    closeSync(gfd);
    renameSync(p.gguf.path + '.partial', p.gguf.path);
  }
  if (wantHf) {
    writeFileSync(join(p.hf.path, 'config.json'), p.hf.configText);
    if (p.hf.index) writeFileSync(join(p.hf.path, 'model.safetensors.index.json'), JSON.stringify(p.hf.index, null, 2) + '\n');
    p.hf.shards.forEach((sh, i) => { fsyncSync(shardFds[i]); closeSync(shardFds[i]); renameSync(join(p.hf.path, sh.file + '.partial'), join(p.hf.path, sh.file)); });
  }
  return (performance.now() - t0) / 1000;
}

// Makes sure every [shape, dtype] of `set` exists (GGUF, and HF when the dtype allows and hf).
// Returns the plans. Refuses (throws) when the disk lacks room for what must be written.
export function ensureModels(set, { out = DEFAULT_OUT, hf = true, seed = 1, shardBytes = 2e9, log = console.error } = {}) {
  const plans = set.map(([shape, dtype]) => plan(shape, dtype, { out, hf, shardBytes }));
  const need = plans.reduce((a, p) => a + p.bytesToWrite, 0);
  if (need > 0) {
    mkdirSync(out, { recursive: true });
    const fs = statfsSync(out);
    const free = fs.bavail * fs.bsize;
    if (need + 2e9 > free)
      throw new Error(`make-random-model: ${(need / 1e9).toFixed(1)} GB to write in ${out} but only ${(free / 1e9).toFixed(1)} GB free ` +
        '(keeping 2 GB spare). Pick fewer --shapes / --dtypes, or --out elsewhere.');
    log(`make-random-model: writing ${(need / 1e9).toFixed(1)} GB of random-weight models to ${out}`);
  }
  for (const p of plans) {
    if (p.bytesToWrite === 0) continue;
    const what = [!p.gguf.ok && 'GGUF', p.hf && !p.hf.ok && `HF (${p.hf.shards.length} shard${p.hf.shards.length > 1 ? 's' : ''})`].filter(Boolean).join(' + ');
    log(`  ${SHAPES[p.shape].label} ${p.dtype}: ${what}, ${(p.bytesToWrite / 1e9).toFixed(2)} GB`);
    const s = generate(p, { seed, log });
    log(`    done in ${s.toFixed(1)} s`);
    p.gguf.ok = true;
    if (p.hf) p.hf.ok = true;
  }
  return plans;
}

// ---------------------------------------------------------------------------- CLI
export function parseSet(args) {
  const get = (name) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : (args.find((a) => a.startsWith(name + '='))?.split('=')[1]); };
  const shapes = get('--shapes')?.split(',').map((s) => s.trim().toLowerCase());
  const dtypes = get('--dtypes')?.split(',').map((s) => s.trim().toLowerCase());
  for (const s of shapes ?? []) if (!SHAPES[s]) throw new Error(`unknown shape '${s}' (${Object.keys(SHAPES).join(', ')})`);
  for (const d of dtypes ?? []) if (!DTYPES[d]) throw new Error(`unknown dtype '${d}' (${Object.keys(DTYPES).join(', ')})`);
  let set = args.includes('--quick') ? QUICK_SET : [...DEFAULT_SET, ...(args.includes('--full') ? FULL_EXTRA : [])];
  if (shapes || dtypes) {
    // an explicit selection: the cross product of the given (or default) shapes and dtypes
    const ss = shapes ?? ['1.1b', '7b'];
    const ds = dtypes ?? Object.keys(DTYPES);
    const explicit = [];
    for (const s of ss) for (const d of ds) {
      if (!ALLOWED(s, d)) continue;
      // without --dtypes, keep the default set's dtypes for each shape (7B bf16 only with --full)
      if (!dtypes && !set.some(([a, b]) => a === s && b === d) && !(s === 'tiny')) continue;
      explicit.push([s, d]);
    }
    set = explicit;
  }
  return set;
}

async function main() {
  const args = process.argv.slice(2);
  if (args.includes('--help') || args.includes('-h')) {
    console.log(`usage: node bench/make-random-model.mjs [--quick | --full] [--shapes 1.1b,7b,tiny] [--dtypes f32,f16,bf16,q8_0,q4_0,q4_k,q6_k,q4_k_m]
       [--out DIR] [--no-hf] [--seed N] [--shard-gb G] [--list]
default set: ${DEFAULT_SET.map((x) => x.join(' ')).join(', ')}; --full adds ${FULL_EXTRA.map((x) => x.join(' ')).join(', ')}`);
    return;
  }
  const i = args.indexOf('--out');
  const out = i >= 0 ? resolve(args[i + 1]) : DEFAULT_OUT;
  const j = args.indexOf('--seed');
  const seed = j >= 0 ? Number(args[j + 1]) : 1;
  const k = args.indexOf('--shard-gb');
  const shardBytes = k >= 0 ? Number(args[k + 1]) * 1e9 : 2e9;
  const hf = !args.includes('--no-hf');
  const set = parseSet(args);
  if (args.includes('--list')) {
    for (const [s, d] of set) {
      const p = plan(s, d, { out, hf, shardBytes });
      console.log(`${SHAPES[s].label.padEnd(15)} ${d.padEnd(5)} ${p.gguf.path} ${(p.gguf.total / 1e9).toFixed(2)} GB${p.gguf.ok ? ' (present)' : ''}` +
        (p.hf ? `\n${''.padEnd(21)} ${p.hf.path}/ ${(p.hf.total / 1e9).toFixed(2)} GB in ${p.hf.shards.length} file(s)${p.hf.ok ? ' (present)' : ''}` : ''));
    }
    return;
  }
  ensureModels(set, { out, hf, seed, shardBytes });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((e) => { console.error(e.message ?? e); process.exit(1); });
}
