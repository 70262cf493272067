#!/usr/bin/env node
// Random-weight LLaVA-1.5 models for `npm run bench:vision` and `npm run bench:llava`, in
// llama.cpp's pair layout (a text GGUF + an mmproj GGUF), written with lib's streaming GGUF
// writer (dist/gguf_writer.js). Speed does not depend on the values, so they only need to be
// finite and small: N(0, 0.02) floats, random q8_0 / q4_0 quants with an fp16 scale of the same
// spread, LayerNorm weights 1, biases 0.
//
//   node bench/make-random-llava.mjs                       # mmproj f32 + f16 + bf16, vision stub, text 7B q4_0
//   node bench/make-random-llava.mjs --full                # also text 7B q8_0
//   node bench/make-random-llava.mjs --vision-dtypes bf16 --text-dtypes q4_0 --layers 4
//   node bench/make-random-llava.mjs --list                # what would be written, sizes, which exist
//
// Files (bench/models/, git-ignored; reused when present with the expected size, written as
// *.partial and renamed when complete):
//   llava1.5-mmproj-vitl14-336-<f32|f16|bf16>.gguf   CLIP ViT-L/14-336 (24 layers) + MLP projector
//   llava1.5-7b-<q4_0|q8_0>.gguf                      LLaMA-2-7B-shaped text model, vocab 32064
//   llava1.5-7b-L<N>-<dtype>.gguf                     the same cut to N layers (--layers N, smoke runs)
//   llava1.5-vision-stub.gguf                          a 1-layer text model of width 4096 (~25 MB): what
//                                                      bench:vision loads so that encodePixels runs
//                                                      without mapping the 7B
import { existsSync, mkdirSync, renameSync, rmSync, statSync, statfsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { f32ToBf16, f32ToF16, vocab as baseVocab } from './make-random-model.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
export const DEFAULT_OUT = join(here, 'models');

// ---------------------------------------------------------------------------- shapes
// CLIP ViT-L/14 at 336 px (openai/clip-vit-large-patch14-336) as LLaVA-1.5 uses it, and the
// LLaVA-1.5 MLP projector 1024 -> 4096 -> 4096 (GELU). A real llava-1.5 mmproj stores 23 of the
// 24 layers (the last is unused); this file stores all 24, so bench:vision times the whole tower.
export const VISION = {
  image_size: 336, patch_size: 14, n_channels: 3, n_embd: 1024, n_ff: 4096, n_layer: 24, n_head: 16,
  eps: 1e-5, proj_dim: 768, mm_hidden: 4096, mm_out: 4096,
  mean: [0.48145466, 0.4578275, 0.40821073], std: [0.26862954, 0.26130258, 0.27577711],
};
VISION.n_patches = (VISION.image_size / VISION.patch_size) ** 2;  // 576
VISION.n_pos = VISION.n_patches + 1;                               // 577

// llava-1.5-7b's language model (Vicuna-7B v1.5 = LLaMA-2-7B shape), vocabulary 32064:
// 32000 SentencePiece pieces, "<image>" = 32000, "<pad>" = 32001, then padding to 32064.
export const TEXT = { label: 'LLaVA-1.5-7B', n_embd: 4096, n_layer: 32, n_head: 32, n_head_kv: 32, n_ff: 11008, n_vocab: 32064, n_ctx: 4096 };
// Only the width matters for the vision bench (the projector's output must match n_embd).
export const STUB = { label: 'vision stub', n_embd: 4096, n_layer: 1, n_head: 32, n_head_kv: 1, n_ff: 128, n_vocab: 512, n_ctx: 4096 };
export const IMAGE_TOKEN_ID = 32000;

export const VISION_DTYPES = ['f32', 'f16', 'bf16'];
export const TEXT_DTYPES = ['q4_0', 'q8_0'];

const BLOCK = { f32: [1, 4], f16: [1, 2], bf16: [1, 2], q8_0: [32, 34], q4_0: [32, 18] };
const FTYPE = { f32: 0, f16: 1, q4_0: 2, q8_0: 7, bf16: 32 };
const STD = 0.02;

export function tensorBytes(shape, dtype) {
  const [be, bb] = BLOCK[dtype];
  const inner = shape[shape.length - 1];
  if (inner % be) throw new Error(`${dtype}: last dimension ${inner} is not a multiple of ${be}`);
  return (shape.slice(0, -1).reduce((a, b) => a * b, 1) * inner / be) * bb;
}

// ---------------------------------------------------------------------------- plans
// A plan: { path, label, metadata: [{key, type, value}], tensors: [{name, shape, dtype, fill}], total }.
// fill: 'rand' (random in dtype), 'ones', 'zeros'.
export function mmprojPlan(dtype, out = DEFAULT_OUT) {
  if (!VISION_DTYPES.includes(dtype)) throw new Error(`mmproj dtype ${dtype}: one of ${VISION_DTYPES.join(', ')}`);
  const v = VISION, E = v.n_embd, F = v.n_ff;
  const md = [];
  const put = (key, type, value) => md.push({ key, type, value });
  put('general.architecture', 'string', 'clip');
  put('general.name', 'string', `LLaVA-1.5 CLIP ViT-L/14-336 random ${dtype} (emollm bench)`);
  put('general.description', 'string', 'random-weight vision tower + MLP projector, shapes of llava-1.5-7b');
  put('general.file_type', 'u32', FTYPE[dtype]);
  put('general.alignment', 'u32', 32);
  put('clip.has_text_encoder', 'bool', false);
  put('clip.has_vision_encoder', 'bool', true);
  put('clip.has_llava_projector', 'bool', true);
  put('clip.projector_type', 'string', 'mlp');
  put('clip.use_gelu', 'bool', false);  // CLIP ViT-L: quick_gelu
  put('clip.vision.image_size', 'u32', v.image_size);
  put('clip.vision.patch_size', 'u32', v.patch_size);
  put('clip.vision.embedding_length', 'u32', E);
  put('clip.vision.feed_forward_length', 'u32', F);
  put('clip.vision.projection_dim', 'u32', v.proj_dim);
  put('clip.vision.attention.head_count', 'u32', v.n_head);
  put('clip.vision.attention.layer_norm_epsilon', 'f32', v.eps);
  put('clip.vision.block_count', 'u32', v.n_layer);
  put('clip.vision.image_mean', 'array<f32>', v.mean);
  put('clip.vision.image_std', 'array<f32>', v.std);
  const t = [];
  const mat = (name, shape) => t.push({ name, shape, dtype, fill: 'rand' });
  const f32 = (name, shape, fill) => t.push({ name, shape, dtype: 'f32', fill });
  // llama.cpp's own converter stores the projector as mm.0 / mm.2 (indices of the nn.Sequential)
  mat('mm.0.weight', [v.mm_hidden, E]);
  f32('mm.0.bias', [v.mm_hidden], 'zeros');
  mat('mm.2.weight', [v.mm_out, v.mm_hidden]);
  f32('mm.2.bias', [v.mm_out], 'zeros');
  mat('v.patch_embd.weight', [E, v.n_channels, v.patch_size, v.patch_size]);
  f32('v.class_embd', [E], 'rand');
  f32('v.position_embd.weight', [v.n_pos, E], 'rand');
  f32('v.pre_ln.weight', [E], 'ones');
  f32('v.pre_ln.bias', [E], 'zeros');
  for (let l = 0; l < v.n_layer; l++) {
    const p = `v.blk.${l}.`;
    for (const x of ['attn_q', 'attn_k', 'attn_v', 'attn_out']) { mat(p + x + '.weight', [E, E]); f32(p + x + '.bias', [E], 'zeros'); }
    f32(p + 'ln1.weight', [E], 'ones'); f32(p + 'ln1.bias', [E], 'zeros');
    // gguf-py's naming: ffn_up = fc1 [F, E], ffn_down = fc2 [E, F]
    mat(p + 'ffn_up.weight', [F, E]); f32(p + 'ffn_up.bias', [F], 'zeros');
    mat(p + 'ffn_down.weight', [E, F]); f32(p + 'ffn_down.bias', [E], 'zeros');
    f32(p + 'ln2.weight', [E], 'ones'); f32(p + 'ln2.bias', [E], 'zeros');
  }
  return finish({ path: join(out, `llava1.5-mmproj-vitl14-336-${dtype}.gguf`), label: `mmproj ViT-L/14-336 ${dtype}`, metadata: md, tensors: t });
}

function llavaVocab(n) {
  const v = baseVocab(32000);
  v.tokens.push('<image>'); v.types.push(4); v.scores.push(0);  // USER_DEFINED: parsed in text
  v.tokens.push('<pad>'); v.types.push(3); v.scores.push(0);
  while (v.tokens.length < n) { v.tokens.push(`[PAD${v.tokens.length}]`); v.types.push(5); v.scores.push(0); }
  return v;
}

function llamaPlan(s, dtype, path, label, withImageVocab) {
  const md = [];
  const put = (key, type, value) => md.push({ key, type, value });
  put('general.architecture', 'string', 'llama');
  put('general.name', 'string', `${s.label} random ${dtype} (emollm bench)`);
  put('general.file_type', 'u32', FTYPE[dtype]);
  put('general.quantization_version', 'u32', 2);
  put('general.alignment', 'u32', 32);
  put('llama.context_length', 'u32', s.n_ctx);
  put('llama.embedding_length', 'u32', s.n_embd);
  put('llama.block_count', 'u32', s.n_layer);
  put('llama.feed_forward_length', 'u32', s.n_ff);
  put('llama.rope.dimension_count', 'u32', s.n_embd / s.n_head);
  put('llama.attention.head_count', 'u32', s.n_head);
  put('llama.attention.head_count_kv', 'u32', s.n_head_kv);
  put('llama.attention.layer_norm_rms_epsilon', 'f32', 1e-5);
  put('llama.rope.freq_base', 'f32', 10000);
  put('llama.vocab_size', 'u32', s.n_vocab);
  const v = withImageVocab ? llavaVocab(s.n_vocab) : baseVocab(s.n_vocab);
  put('tokenizer.ggml.model', 'string', 'llama');
  put('tokenizer.ggml.tokens', 'array<string>', v.tokens);
  put('tokenizer.ggml.scores', 'array<f32>', v.scores);
  put('tokenizer.ggml.token_type', 'array<i32>', v.types);
  put('tokenizer.ggml.unknown_token_id', 'u32', 0);
  put('tokenizer.ggml.bos_token_id', 'u32', 1);
  put('tokenizer.ggml.eos_token_id', 'u32', 2);
  if (withImageVocab) put('tokenizer.ggml.padding_token_id', 'u32', 32001);
  put('tokenizer.ggml.add_bos_token', 'bool', true);
  put('tokenizer.ggml.add_eos_token', 'bool', false);
  const hd = s.n_embd / s.n_head, kv = s.n_head_kv * hd;
  const t = [];
  const mat = (name, shape) => t.push({ name, shape, dtype, fill: 'rand' });
  const norm = (name) => t.push({ name, shape: [s.n_embd], dtype: 'f32', fill: 'ones' });
  mat('token_embd.weight', [s.n_vocab, s.n_embd]);
  for (let l = 0; l < s.n_layer; l++) {
    const g = `blk.${l}.`;
    norm(g + 'attn_norm.weight');
    mat(g + 'attn_q.weight', [s.n_embd, s.n_embd]);
    mat(g + 'attn_k.weight', [kv, s.n_embd]);
    mat(g + 'attn_v.weight', [kv, s.n_embd]);
    mat(g + 'attn_output.weight', [s.n_embd, s.n_embd]);
    norm(g + 'ffn_norm.weight');
    mat(g + 'ffn_gate.weight', [s.n_ff, s.n_embd]);
    mat(g + 'ffn_up.weight', [s.n_ff, s.n_embd]);
    mat(g + 'ffn_down.weight', [s.n_embd, s.n_ff]);
  }
  norm('output_norm.weight');
  mat('output.weight', [s.n_vocab, s.n_embd]);
  return finish({ path, label, metadata: md, tensors: t });
}

export function textPlan(dtype, { out = DEFAULT_OUT, layers } = {}) {
  if (!TEXT_DTYPES.includes(dtype)) throw new Error(`text dtype ${dtype}: one of ${TEXT_DTYPES.join(', ')}`);
  const cut = layers !== undefined && layers !== null && layers !== TEXT.n_layer;
  if (cut && !(Number.isInteger(layers) && layers >= 1 && layers <= TEXT.n_layer)) throw new Error(`--layers ${layers}: 1..${TEXT.n_layer}`);
  const s = cut ? { ...TEXT, n_layer: layers, label: `${TEXT.label} cut to ${layers} layers` } : TEXT;
  const name = cut ? `llava1.5-7b-L${layers}-${dtype}.gguf` : `llava1.5-7b-${dtype}.gguf`;
  return llamaPlan(s, dtype, join(out, name), `text ${s.label} ${dtype}`, true);
}

export function stubPlan(out = DEFAULT_OUT) {
  return llamaPlan(STUB, 'q4_0', join(out, 'llava1.5-vision-stub.gguf'), 'text stub (width 4096, 1 layer) q4_0', false);
}

// Expected file size of what lib's writeGguf writes for this plan.
function valueBytes(type, value) {
  const m = /^array<(.+)>$/.exec(type);
  if (m) return 4 + 8 + value.reduce((a, e) => a + valueBytes(m[1], e), 0);
  switch (type) {
    case 'u8': case 'i8': case 'bool': return 1;
    case 'u16': case 'i16': return 2;
    case 'u32': case 'i32': case 'f32': return 4;
    case 'u64': case 'i64': case 'f64': return 8;
    case 'string': return 8 + Buffer.byteLength(value, 'utf8');
    default: throw new Error(`unknown GGUF type ${type}`);
  }
}
export function finish(p) {
  const align = 32, pad = (n) => (align - (n % align)) % align;
  let head = 4 + 4 + 8 + 8;
  for (const e of p.metadata) head += 8 + Buffer.byteLength(e.key) + 4 + valueBytes(e.type, e.value);
  let data = 0;
  for (const t of p.tensors) {
    head += 8 + Buffer.byteLength(t.name) + 4 + 8 * t.shape.length + 4 + 8;
    t.bytes = tensorBytes(t.shape, t.dtype);
    data += t.bytes + pad(t.bytes);
  }
  p.total = head + pad(head) + data;
  p.ok = sizeIs(p.path, p.total);
  return p;
}
const sizeIs = (path, n) => { try { return statSync(path).size === n; } catch { return false; } };

// ---------------------------------------------------------------------------- random data
function rng(seed) {
  let x = (seed * 2654435761) >>> 0 || 1, y = (seed * 40503 + 12345) >>> 0 || 7;
  const u32 = () => { const t = x ^ (x << 11); x = y; y = (y ^ (y >>> 19)) ^ (t ^ (t >>> 8)); return y >>> 0; };
  const uniform = () => (u32() + 0.5) / 4294967296;
  const normal = () => Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  return { u32, uniform, normal };
}

const POOL_BYTES = 24 << 20;
function makePool(dtype, seed) {
  const r = rng(seed * 31 + dtype.length * 7 + dtype.charCodeAt(1));
  const [, bytes] = BLOCK[dtype];
  const n = Math.floor(POOL_BYTES / bytes);
  const buf = Buffer.allocUnsafe(n * bytes);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (dtype === 'f32') for (let i = 0; i < n; i++) dv.setFloat32(i * 4, STD * r.normal(), true);
  else if (dtype === 'f16') for (let i = 0; i < n; i++) dv.setUint16(i * 2, f32ToF16(STD * r.normal()), true);
  else if (dtype === 'bf16') for (let i = 0; i < n; i++) dv.setUint16(i * 2, f32ToBf16(STD * r.normal()), true);
  else {
    // random quants; the fp16 scale gives the spread STD: int8 uniform has std ~74, (nibble - 8) ~4.6
    for (let i = 0; i + 4 <= buf.byteLength; i += 4) buf.writeUInt32LE(r.u32(), i);
    const q = dtype === 'q8_0' ? 74 : 4.6;
    for (let b = 0; b < n; b++) dv.setUint16(b * bytes, f32ToF16((STD / q) * (0.75 + 0.5 * r.uniform())), true);
  }
  return { buf, unit: bytes, r };
}

// `bytes` of random data in the pool's encoding: slices of the pool at random block offsets.
function fillRandom(pool, bytes) {
  const out = Buffer.allocUnsafe(bytes);
  const half = Math.floor(pool.buf.byteLength / pool.unit / 2);
  let o = 0;
  while (o < bytes) {
    const off = (pool.r.u32() % half) * pool.unit;
    const n = Math.min(bytes - o, half * pool.unit);
    pool.buf.copy(out, o, off, off + n);
    o += n;
  }
  return out;
}

async function writer() {
  const dist = join(root, 'dist', 'gguf_writer.js');
  if (!existsSync(dist)) throw new Error('dist/gguf_writer.js is missing: run `npx tsc -p tsconfig.json` (npm run build:ts) first');
  return (await import(pathToFileURL(dist).href)).writeGguf;
}

// Writes plan p (unless already there). Returns seconds spent.
export async function generate(p, { seed = 1, log = console.error } = {}) {
  if (p.ok) return 0;
  const t0 = performance.now();
  const writeGguf = await writer();
  mkdirSync(dirname(p.path), { recursive: true });
  const pools = {};
  const pool = (dt) => (pools[dt] ??= makePool(dt, seed));
  const totalData = p.tensors.reduce((a, t) => a + t.bytes, 0);
  let done = 0, lastLog = performance.now();
  const tensors = p.tensors.map((t) => ({
    name: t.name, shape: t.shape, dtype: t.dtype,
    data: async () => {
      let b;
      if (t.fill === 'rand') b = fillRandom(pool(t.dtype), t.bytes);
      else {
        b = Buffer.alloc(t.bytes);
        if (t.fill === 'ones') new Float32Array(b.buffer, b.byteOffset, t.bytes / 4).fill(1);
      }
      done += t.bytes;
      if (performance.now() - lastLog > 5000) {
        lastLog = performance.now();
        log(`    ${((100 * done) / totalData).toFixed(0)}% (${(done / 1e9).toFixed(2)} GB)`);
      }
      return b;
    },
  }));
  const tmp = p.path + '.partial';
  try {
    await writeGguf(tmp, p.metadata, tensors);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  const size = statSync(tmp).size;
  if (size !== p.total) throw new Error(`${tmp}: wrote ${size} bytes, expected ${p.total} (size formula out of date?)`);
  renameSync(tmp, p.path);
  p.ok = true;
  return (performance.now() - t0) / 1000;
}

// Makes sure the plans' files exist; refuses (throws) when the disk lacks room.
export async function ensure(plans, { seed = 1, log = console.error } = {}) {
  const need = plans.filter((p) => !p.ok).reduce((a, p) => a + p.total, 0);
  if (need > 0) {
    const dir = dirname(plans[0].path);
    mkdirSync(dir, { recursive: true });
    const fs = statfsSync(dir);
    const free = fs.bavail * fs.bsize;
    if (need + 2e9 > free)
      throw new Error(`make-random-llava: ${(need / 1e9).toFixed(1)} GB to write in ${dir} but only ${(free / 1e9).toFixed(1)} GB free (keeping 2 GB spare)`);
    log(`make-random-llava: writing ${(need / 1e9).toFixed(2)} GB of random-weight models to ${dir}`);
  }
  for (const p of plans) {
    if (p.ok) continue;
    log(`  ${p.label}: ${(p.total / 1e9).toFixed(2)} GB -> ${p.path}`);
    const s = await generate(p, { seed, log });
    log(`    done in ${s.toFixed(1)} s`);
  }
  return plans;
}

// ---------------------------------------------------------------------------- CLI
function parse(args) {
  const get = (name) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : args.find((a) => a.startsWith(name + '='))?.split('=')[1]; };
  const list = (name, dflt, allowed) => {
    const v = get(name);
    const xs = v ? v.split(',').map((s) => s.trim().toLowerCase()).filter(Boolean) : dflt;
    for (const x of xs) if (!allowed.includes(x)) throw new Error(`${name}: unknown '${x}' (${allowed.join(', ')})`);
    return xs;
  };
  const full = args.includes('--full');
  const layers = get('--layers') !== undefined ? Number(get('--layers')) : undefined;
  const out = get('--out') ? resolve(get('--out')) : DEFAULT_OUT;
  return {
    out, layers, seed: get('--seed') ? Number(get('--seed')) : 1,
    vision: list('--vision-dtypes', VISION_DTYPES, VISION_DTYPES),
    text: list('--text-dtypes', full ? TEXT_DTYPES : ['q4_0'], TEXT_DTYPES),
    list: args.includes('--list'), help: args.includes('--help') || args.includes('-h'),
  };
}

async function main() {
  const o = parse(process.argv.slice(2));
  if (o.help) {
    console.log(`usage: node bench/make-random-llava.mjs [--full] [--vision-dtypes f32,f16,bf16] [--text-dtypes q4_0,q8_0]
       [--layers N] [--out DIR] [--seed N] [--list]
default: mmproj f32, f16, bf16 + vision stub + text q4_0; --full adds text q8_0; --layers N writes the text model cut to N layers`);
    return;
  }
  const plans = [stubPlan(o.out), ...o.vision.map((d) => mmprojPlan(d, o.out)), ...o.text.map((d) => textPlan(d, { out: o.out, layers: o.layers }))];
  if (o.list) {
    for (const p of plans) console.log(`${p.label.padEnd(42)} ${p.path}  ${(p.total / 1e9).toFixed(2)} GB${p.ok ? ' (present)' : ''}`);
    return;
  }
  await ensure(plans, { seed: o.seed });
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((e) => { console.error(e.message ?? e); process.exit(1); });
}
