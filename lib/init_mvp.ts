/**
 * `emollm init-mvp`: turns a stock LLaVA (llava-hf) folder into an EmoLLM checkpoint whose
 * outputs equal the base model's until the Multi-perspective Visual Projection is trained.
 *
 * The new folder holds the base's files (weights symlinked, or copied with `copy: true`; the
 * small files copied), a config.json with an `emollm` section (docs/emollm-config.md), and
 * emollm_mvp.safetensors:
 *   0 global      mlp over the base's vision_feature_layer, the LLaVA projector's weights (same
 *                 dtype, bytes copied), gate "open" (exactly 1)
 *   1 low-level   multi-layer-mlp over hidden states [-2, early] (early ≈ a quarter of the
 *                 tower), small random weights, gate "closed"
 *   2 attention   attention-pool, 8 learned queries over layer -2, gate "closed"
 *   3 faces       face-region over the base's feature layers, initialised from the projector, gate "closed"
 * Closed heads are skipped by the engine (no contribution, no appended tokens), so logits equal
 * the base's exactly. Each closed head also gets gate_logits = -10 (sigmoid ≈ 4.5e-5): switching
 * its gate to "learned" for training starts it nearly closed.
 */
import { copyFile, lstat, mkdir, open, readdir, readFile, realpath, stat, symlink } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';

import { EmollmError } from './errors.js';
import { sameFile, writeFileAtomic } from './safe_fs.js';
import type { PerspectiveType } from './perspectives.js';

export interface InitMvpOptions {
  /** Copy the base weights instead of symlinking them; default false (symlinks). */
  copy?: boolean;
  /** Hidden-state index of the early layer the multi-layer perspective adds; default ≈ n_layers / 4. */
  earlyLayer?: number;
  /** Learned queries of the attention-pool perspective; default 8. */
  queries?: number;
  /** Seed of the random initialisation of the new heads; default 0. */
  seed?: number;
  /** Gate logits written for the closed heads; default -10. */
  closedGateLogit?: number;
}

export interface InitMvpResult {
  outDir: string;
  weights: string;
  /** The `emollm` section written into config.json. */
  section: EmollmSection;
  linked: string[];
  copied: string[];
}

/** The `emollm` section of config.json (docs/emollm-config.md). */
export interface EmollmSection {
  version: 1;
  weights: string;
  fusion: 'gated-sum' | 'concat';
  perspectives: EmollmPerspectiveConfig[];
  [key: string]: unknown;
}

export interface EmollmPerspectiveConfig {
  name?: string;
  /** The perspective kind (lib/perspectives.ts). */
  type: PerspectiveType;
  layers?: number | number[];
  gate?: 'learned' | 'open' | 'closed';
  act?: 'gelu';
  n_queries?: number;
  num_heads?: number;
  max_faces?: number;
  [key: string]: unknown;
}

// ---------------------------------------------------------------- safetensors (header + raw tensors)

interface StEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}

interface StTensor {
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2, F64: 8 };

async function readStHeader(file: string): Promise<{ header: Record<string, StEntry>; base: number }> {
  const fh = await open(file, 'r').catch((cause: unknown) => {
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${file}: cannot open`, { file, cause });
  });
  try {
    const len = Buffer.alloc(8);
    await fh.read(len, 0, 8, 0);
    const n = Number(len.readBigUInt64LE(0));
    const size = (await fh.stat()).size;
    if (n <= 0 || 8 + n > size || n > 100 << 20) throw new EmollmError('ERR_MALFORMED_FILE', `${file}: bad safetensors header length`, { file });
    const h = Buffer.alloc(n);
    await fh.read(h, 0, n, 8);
    const header = JSON.parse(h.toString('utf8')) as Record<string, StEntry>;
    delete (header as Record<string, unknown>).__metadata__;
    return { header, base: 8 + n };
  } finally {
    await fh.close();
  }
}

async function readTensor(file: string, name: string): Promise<StTensor> {
  const { header, base } = await readStHeader(file);
  const e = header[name];
  if (!e) throw new EmollmError('ERR_MALFORMED_FILE', `${file}: tensor ${name} is missing`, { file });
  const [a, b] = e.data_offsets;
  const fh = await open(file, 'r');
  try {
    const data = Buffer.alloc(b - a);
    await fh.read(data, 0, b - a, base + a);
    return { dtype: e.dtype, shape: e.shape, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
  } finally {
    await fh.close();
  }
}

/** Writes tensors (names sorted), header padded with spaces to a multiple of 8. */
export async function writeSafetensors(file: string, tensors: Record<string, StTensor>, metadata?: Record<string, string>): Promise<void> {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let off = 0;
  const names = Object.keys(tensors).sort();
  for (const n of names) {
    const t = tensors[n]!;
    header[n] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.byteLength] };
    off += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  while (Buffer.byteLength(json) % 8 !== 0) json += ' ';
  const hb = Buffer.from(json, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hb.length));
  await writeFileAtomic(file, Buffer.concat([len, hb, ...names.map((n) => Buffer.from(tensors[n]!.data))]));
}

function f32Tensor(shape: number[], values: Float32Array): StTensor {
  return { dtype: 'F32', shape, data: new Uint8Array(values.buffer, values.byteOffset, values.byteLength) };
}

/** Deterministic N(0, std) (mulberry32 + Box–Muller). */
function normal(n: number, std: number, seed: number): Float32Array {
  let s = seed >>> 0;
  const u = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 1) / 4294967297;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(u()));
    const th = 2 * Math.PI * u();
    out[i] = r * Math.cos(th) * std;
    if (i + 1 < n) out[i + 1] = r * Math.sin(th) * std;
  }
  return out;
}

// ---------------------------------------------------------------- init-mvp

function bad(msg: string, file?: string): never {
  throw new EmollmError('ERR_BAD_CONFIG', msg, file ? { file } : {});
}

/** Where a tensor lives in a llava folder (model.safetensors or the shards of an index). */
async function locateTensor(dir: string, names: string[]): Promise<{ file: string; name: string } | undefined> {
  const index = join(dir, 'model.safetensors.index.json');
  const exists = async (p: string): Promise<boolean> => !!(await stat(p).catch(() => undefined));
  if (await exists(index)) {
    const map = (JSON.parse(await readFile(index, 'utf8')) as { weight_map?: Record<string, string> }).weight_map ?? {};
    for (const n of names) if (map[n]) return { file: join(dir, map[n]!), name: n };
    return undefined;
  }
  const file = join(dir, 'model.safetensors');
  if (!(await exists(file))) throw new EmollmError('ERR_FILE_NOT_FOUND', `${dir}: no model.safetensors or model.safetensors.index.json`, { file: dir });
  const { header } = await readStHeader(file);
  for (const n of names) if (header[n]) return { file, name: n };
  return undefined;
}

function resolveLayer(l: number, nLayer: number): number {
  return l < 0 ? nLayer + 1 + l : l;
}

/** Builds an EmoLLM checkpoint in `outDir` from the llava-hf folder `llavaDir`. */
export async function initMvp(llavaDir: string, outDir: string, options: InitMvpOptions = {}): Promise<InitMvpResult> {
  const src = resolve(llavaDir);
  const out = resolve(outDir);
  if (await sameFile(src, out))
    throw new EmollmError('ERR_OUTPUT_EXISTS', `${outDir} is the LLaVA folder ${llavaDir} (same real path or inode): init-mvp would overwrite its config.json`, { file: out });
  const cfgPath = join(src, 'config.json');
  const cfg = JSON.parse(
    await readFile(cfgPath, 'utf8').catch((cause: unknown) => {
      throw new EmollmError('ERR_FILE_NOT_FOUND', `${cfgPath}: cannot read`, { file: cfgPath, cause });
    }),
  ) as Record<string, unknown>;
  if (cfg.model_type === 'qwen2_vl') {
    const { section, t } = await qwen2vlMvp(src, cfgPath, cfg, options);
    return writeCheckpoint(src, out, cfg, section, t, section.weights, options);
  }
  // LLaVA-NeXT: the same tower + projector, applied per anyres tile; the heads left closed here keep
  // one token per patch, so the tiles are packed exactly as the base's features.
  if (cfg.model_type !== 'llava' && cfg.model_type !== 'llava_next')
    bad(`model_type ${JSON.stringify(cfg.model_type)} is not "llava", "llava_next" or "qwen2_vl"`, cfgPath);
  const tc = (cfg.text_config ?? {}) as Record<string, unknown>;
  const vc = (cfg.vision_config ?? {}) as Record<string, unknown>;
  const E = Number(tc.hidden_size ?? 4096);
  const C = Number(vc.hidden_size ?? 768);
  const nLayer = Number(vc.num_hidden_layers ?? 12);
  const vHeads = Number(vc.num_attention_heads ?? 12);
  const featureLayer = (cfg.vision_feature_layer ?? -2) as number | number[];
  const baseLayers = Array.isArray(featureLayer) ? featureLayer : [featureLayer];
  if (!Number.isInteger(E) || !Number.isInteger(C) || E <= 0 || C <= 0) bad('text_config/vision_config hidden_size missing', cfgPath);

  // ---- the projector
  const proj: Record<string, StTensor> = {};
  for (const part of ['linear_1.weight', 'linear_1.bias', 'linear_2.weight', 'linear_2.bias']) {
    const loc = await locateTensor(src, [`multi_modal_projector.${part}`, `model.multi_modal_projector.${part}`]);
    if (!loc) {
      if (part.endsWith('bias')) continue; // multimodal_projector_bias false
      throw new EmollmError('ERR_MALFORMED_FILE', `${src}: not a LLaVA checkpoint (no multi_modal_projector.${part})`, { file: src });
    }
    proj[part] = await readTensor(loc.file, loc.name);
  }
  const dIn = proj['linear_1.weight']!.shape[1]!;
  if (dIn !== C * baseLayers.length) bad(`projector input ${dIn} is not ${baseLayers.length} x vision hidden ${C}`, cfgPath);

  // ---- perspectives
  const minus2 = resolveLayer(-2, nLayer);
  let early = options.earlyLayer ?? Math.max(1, Math.round(nLayer / 4));
  if (!Number.isInteger(early) || early < -(nLayer + 1) || early > nLayer)
    throw new EmollmError('ERR_INVALID_ARGUMENT', `earlyLayer ${early} is outside [-${nLayer + 1}, ${nLayer}]`);
  if (options.earlyLayer === undefined && resolveLayer(early, nLayer) === minus2) early = Math.max(0, minus2 - 1);
  const queries = options.queries ?? 8;
  if (!Number.isInteger(queries) || queries < 1) throw new EmollmError('ERR_INVALID_ARGUMENT', 'queries must be a positive integer');
  const numHeads = C % vHeads === 0 ? vHeads : 1;
  const seed = options.seed ?? 0;
  const closed = options.closedGateLogit ?? -10;
  const weights = 'emollm_mvp.safetensors';
  const section: EmollmSection = {
    version: 1,
    weights,
    fusion: 'gated-sum',
    perspectives: [
      { name: 'global', type: 'mlp', layers: featureLayer, gate: 'open' },
      { name: 'low-level', type: 'multi-layer-mlp', layers: [-2, early], gate: 'closed' },
      { name: 'attention', type: 'attention-pool', layers: -2, n_queries: queries, num_heads: numHeads, gate: 'closed' },
      { name: 'faces', type: 'face-region', layers: featureLayer, gate: 'closed' },
    ],
  };

  // ---- weights
  const t: Record<string, StTensor> = {};
  const gate = (): StTensor => f32Tensor([E], new Float32Array(E).fill(closed));
  for (const [part, tensor] of Object.entries(proj)) {
    t[`mvp.heads.0.${part}`] = tensor; // global: the projector, bytes and dtype as stored
    t[`mvp.heads.3.${part}`] = tensor; // faces: starts as the projector on pooled patch features
  }
  t['mvp.heads.1.linear_1.weight'] = f32Tensor([E, 2 * C], normal(E * 2 * C, 0.02, seed + 1));
  t['mvp.heads.1.linear_1.bias'] = f32Tensor([E], new Float32Array(E));
  t['mvp.heads.1.linear_2.weight'] = f32Tensor([E, E], normal(E * E, 0.02, seed + 2));
  t['mvp.heads.1.linear_2.bias'] = f32Tensor([E], new Float32Array(E));
  t['mvp.heads.2.queries'] = f32Tensor([queries, C], normal(queries * C, 0.02, seed + 3));
  t['mvp.heads.2.k_proj.weight'] = f32Tensor([C, C], normal(C * C, 0.02, seed + 4));
  t['mvp.heads.2.k_proj.bias'] = f32Tensor([C], new Float32Array(C));
  t['mvp.heads.2.v_proj.weight'] = f32Tensor([C, C], normal(C * C, 0.02, seed + 5));
  t['mvp.heads.2.v_proj.bias'] = f32Tensor([C], new Float32Array(C));
  t['mvp.heads.2.out_proj.weight'] = f32Tensor([E, C], normal(E * C, 0.02, seed + 6));
  t['mvp.heads.2.out_proj.bias'] = f32Tensor([E], new Float32Array(E));
  for (const i of [1, 2, 3]) t[`mvp.heads.${i}.gate_logits`] = gate();

  return writeCheckpoint(src, out, cfg, section, t, weights, options);
}

/** Writes the checkpoint folder: the base's files (linked or copied), config.json with `section`, the MVP weights. */
async function writeCheckpoint(
  src: string,
  out: string,
  cfg: Record<string, unknown>,
  section: EmollmSection,
  t: Record<string, StTensor>,
  weights: string,
  options: InitMvpOptions,
): Promise<InitMvpResult> {
  // ---- the folder
  await mkdir(out, { recursive: true });
  const linked: string[] = [];
  const copied: string[] = [];
  const big = 64 << 20;
  for (const name of await readdir(src)) {
    if (name === 'config.json' || name === weights) continue;
    const from = join(src, name);
    const st = await stat(from).catch(() => undefined);
    if (!st || !st.isFile()) continue; // sub-folders (e.g. reference outputs) are not part of the checkpoint
    const to = join(out, name);
    const isWeights = name.endsWith('.safetensors') || name.endsWith('.safetensors.index.json') || name.endsWith('.bin');
    const prev = await lstat(to).catch(() => undefined);
    if (prev) {
      // re-running into the same folder: keep what is there
      (prev.isSymbolicLink() ? linked : copied).push(name);
      continue;
    }
    if (!options.copy && (isWeights || st.size > big)) {
      await symlink(isAbsolute(from) ? await realpath(from) : from, to);
      linked.push(name);
    } else {
      await copyFile(from, to);
      copied.push(name);
    }
  }
  const outCfg = { ...cfg, emollm: section };
  await writeFileAtomic(join(out, 'config.json'), JSON.stringify(outCfg, null, 2) + '\n');
  await writeSafetensors(join(out, weights), t, { format: 'pt', emollm: 'init-mvp' });
  return { outDir: out, weights: join(out, weights), section, linked, copied };
}

/**
 * Qwen2-VL: the MVP sits around the patch merger (native/model/emollm_qwen2_vl.h). Perspectives:
 *   0 global     mlp over layer -1 (ln_q of the last block, 2x2-merged): the merger's own MLP
 *                (mlp.0 -> GELU -> mlp.2, bytes copied), gate "open"
 *   1 low-level  multi-layer-mlp over [-1, early], small random weights, gate "closed"
 * so the output equals the base's until trained.
 */
async function qwen2vlMvp(
  src: string,
  cfgPath: string,
  cfg: Record<string, unknown>,
  options: InitMvpOptions,
): Promise<{ section: EmollmSection; t: Record<string, StTensor> }> {
  const tc = (cfg.text_config ?? cfg) as Record<string, unknown>;
  const vc = (cfg.vision_config ?? {}) as Record<string, unknown>;
  const E = Number(tc.hidden_size ?? 3584);
  const D = Number(vc.embed_dim ?? 1280);
  const ms = Number(vc.spatial_merge_size ?? 2);
  const depth = Number(vc.depth ?? 32);
  const MD = D * ms * ms;
  if (![E, D, ms, depth].every((x) => Number.isInteger(x) && x > 0)) bad('text_config.hidden_size / vision_config sizes missing', cfgPath);
  let early = options.earlyLayer ?? Math.max(1, Math.round(depth / 4));
  if (!Number.isInteger(early) || early < -(depth + 1) || early > depth)
    throw new EmollmError('ERR_INVALID_ARGUMENT', `earlyLayer ${early} is outside [-${depth + 1}, ${depth}]`);
  if (options.earlyLayer === undefined && resolveLayer(early, depth) === depth) early = Math.max(0, depth - 1);
  const t: Record<string, StTensor> = {};
  const parts: [string, string][] = [
    ['mlp.0.weight', 'linear_1.weight'],
    ['mlp.0.bias', 'linear_1.bias'],
    ['mlp.2.weight', 'linear_2.weight'],
    ['mlp.2.bias', 'linear_2.bias'],
  ];
  for (const [from, to] of parts) {
    const loc = await locateTensor(src, [`visual.merger.${from}`, `model.visual.merger.${from}`]);
    if (!loc) throw new EmollmError('ERR_MALFORMED_FILE', `${src}: not a Qwen2-VL checkpoint (no visual.merger.${from})`, { file: src });
    t[`mvp.heads.0.${to}`] = await readTensor(loc.file, loc.name);
  }
  const seed = options.seed ?? 0;
  t['mvp.heads.1.linear_1.weight'] = f32Tensor([MD, 2 * MD], normal(MD * 2 * MD, 0.02, seed + 1));
  t['mvp.heads.1.linear_1.bias'] = f32Tensor([MD], new Float32Array(MD));
  t['mvp.heads.1.linear_2.weight'] = f32Tensor([E, MD], normal(E * MD, 0.02, seed + 2));
  t['mvp.heads.1.linear_2.bias'] = f32Tensor([E], new Float32Array(E));
  t['mvp.heads.1.gate_logits'] = f32Tensor([E], new Float32Array(E).fill(options.closedGateLogit ?? -10));
  const section: EmollmSection = {
    version: 1,
    weights: 'emollm_mvp.safetensors',
    fusion: 'gated-sum',
    perspectives: [
      { name: 'global', type: 'mlp', layers: -1, gate: 'open' },
      { name: 'low-level', type: 'multi-layer-mlp', layers: [-1, early], gate: 'closed' },
    ],
  };
  return { section, t };
}
