// LLaVA-NeXT-7B-shaped and Qwen2-VL-7B-shaped cases for `npm run bench:vision` (random weights,
// llama.cpp's text + mmproj GGUF pair layout, written by make-random-llava's generator):
//   next:    llava-v1.6-vicuna-7b's vision side: CLIP ViT-L/14-336 (24 layers) + MLP projector
//            1024 -> 4096 -> 4096, anyres pinpoints [[336,672],[672,336],[672,672],[1008,336],
//            [336,1008]] and image_newline; a square photo-sized image takes the 672x672 pinpoint:
//            4 tiles + the base image = 5 tiles of 336 (2,928 image tokens after unpadding).
//   qwen2vl: Qwen2-VL-7B-Instruct's vision side: ViT 32 layers, width 1280, 16 heads, MLP 5120,
//            patch 14, 2x2 merger 5120 -> 5120 -> 3584; images at a few sizes within the default
//            pixel budget (max_pixels 12845056 / 16 = 1280 tokens x 28^2) and a 16-frame video.
// Each sample is timed by phase: preprocessing (decode + resize / tile / patchify, the package's own
// pipeline) and vision (tower + projector / merger, the native encoder).
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';

import { DEFAULT_OUT, VISION, finish, mmprojPlan } from './make-random-llava.mjs';
import { vocab as baseVocab } from './make-random-model.mjs';
import { childMain } from './measure.mjs';

export const VLM_CASES = ['next', 'qwen2vl'];

// llava-v1.6's pinpoints ([height, width]) at 336.
export const NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];
export const QWEN2VL = {
  embed_dim: 1280, depth: 32, num_heads: 16, mlp: 5120, patch_size: 14, merge: 2, temporal_patch: 2, hidden_size: 3584,
  text: { n_embd: 3584, n_head: 28, n_head_kv: 4, mrope: [16, 24, 24, 0] },
};

/** Drops tower layers >= `layers` from a plan (smoke runs); the path gets an -L<N> tag. */
function cutTower(p, layers, total, tag) {
  if (!layers || layers === total) return p;
  if (!(Number.isInteger(layers) && layers >= 1 && layers <= total)) throw new Error(`--vision-layers ${layers}: 1..${total}`);
  p.tensors = p.tensors.filter((t) => { const m = /^v\.blk\.(\d+)\./.exec(t.name); return !m || Number(m[1]) < layers; });
  for (const e of p.metadata) if (e.key === 'clip.vision.block_count') e.value = layers;
  p.path = p.path.replace(tag, `${tag}-L${layers}`);
  p.label += ` cut to ${layers} layers`;
  return finish(p);
}

/** LLaVA-NeXT mmproj: LLaVA-1.5's tower + projector with anyres pinpoints and image_newline. */
export function nextMmprojPlan(dtype, { out = DEFAULT_OUT, layers } = {}) {
  const p = mmprojPlan(dtype, out);
  p.path = join(out, `llava-next-mmproj-vitl14-336-${dtype}.gguf`);
  p.label = `mmproj LLaVA-NeXT ViT-L/14-336 ${dtype}`;
  p.metadata.push({ key: 'clip.vision.image_grid_pinpoints', type: 'array<i32>', value: NEXT_PINPOINTS.flat() });
  p.metadata.push({ key: 'clip.vision.mm_patch_merge_type', type: 'string', value: 'spatial_unpad' });
  p.tensors.push({ name: 'model.image_newline', shape: [VISION.mm_out], dtype: 'f32', fill: 'rand' });
  return cutTower(finish(p), layers, VISION.n_layer, `llava-next-mmproj-vitl14-336-${dtype}`);
}

/** Qwen2-VL mmproj (llama.cpp's qwen2vl_merger layout). */
export function qwen2vlMmprojPlan(dtype, { out = DEFAULT_OUT, layers } = {}) {
  const q = QWEN2VL, D = q.embed_dim, F = q.mlp, MD = D * q.merge * q.merge;
  const md = [];
  const put = (key, type, value) => md.push({ key, type, value });
  put('general.architecture', 'string', 'clip');
  put('general.name', 'string', `Qwen2-VL-7B vision random ${dtype} (emollm bench)`);
  put('general.file_type', 'u32', { f32: 0, f16: 1, bf16: 32 }[dtype]);
  put('general.alignment', 'u32', 32);
  put('clip.has_text_encoder', 'bool', false);
  put('clip.has_vision_encoder', 'bool', true);
  put('clip.projector_type', 'string', 'qwen2vl_merger');
  put('clip.use_gelu', 'bool', false);  // Qwen2-VL's ViT: quick_gelu
  put('clip.vision.image_size', 'u32', 560);
  put('clip.vision.patch_size', 'u32', q.patch_size);
  put('clip.vision.embedding_length', 'u32', D);
  put('clip.vision.feed_forward_length', 'u32', F);
  put('clip.vision.projection_dim', 'u32', q.hidden_size);
  put('clip.vision.attention.head_count', 'u32', q.num_heads);
  put('clip.vision.attention.layer_norm_epsilon', 'f32', 1e-6);
  put('clip.vision.block_count', 'u32', q.depth);
  put('clip.vision.spatial_merge_size', 'u32', q.merge);
  put('clip.vision.image_mean', 'array<f32>', [0.48145466, 0.4578275, 0.40821073]);
  put('clip.vision.image_std', 'array<f32>', [0.26862954, 0.26130258, 0.27577711]);
  const t = [];
  const mat = (name, shape) => t.push({ name, shape, dtype, fill: 'rand' });
  const f32 = (name, shape, fill) => t.push({ name, shape, dtype: 'f32', fill });
  mat('v.patch_embd.weight', [D, 3, q.patch_size, q.patch_size]);
  mat('v.patch_embd.weight.1', [D, 3, q.patch_size, q.patch_size]);
  for (let l = 0; l < q.depth; l++) {
    const b = `v.blk.${l}.`;
    f32(b + 'ln1.weight', [D], 'ones'); f32(b + 'ln1.bias', [D], 'zeros');
    for (const x of ['attn_q', 'attn_k', 'attn_v', 'attn_out']) { mat(b + x + '.weight', [D, D]); f32(b + x + '.bias', [D], 'zeros'); }
    f32(b + 'ln2.weight', [D], 'ones'); f32(b + 'ln2.bias', [D], 'zeros');
    mat(b + 'ffn_up.weight', [F, D]); f32(b + 'ffn_up.bias', [F], 'zeros');
    mat(b + 'ffn_down.weight', [D, F]); f32(b + 'ffn_down.bias', [D], 'zeros');
  }
  f32('v.post_ln.weight', [D], 'ones'); f32('v.post_ln.bias', [D], 'zeros');
  mat('mm.0.weight', [MD, MD]); f32('mm.0.bias', [MD], 'zeros');
  mat('mm.2.weight', [q.hidden_size, MD]); f32('mm.2.bias', [q.hidden_size], 'zeros');
  const name = `qwen2vl-7b-mmproj-${dtype}`;
  const p = finish({ path: join(out, `${name}.gguf`), label: `mmproj Qwen2-VL-7B vision ${dtype}`, metadata: md, tensors: t });
  return cutTower(p, layers, q.depth, name);
}

/** A 1-layer qwen2vl text model of Qwen2-VL-7B's width (3584) with its vision tokens: what the vision bench loads. */
export function qwen2vlStubPlan(out = DEFAULT_OUT) {
  const s = { ...QWEN2VL.text, n_layer: 1, n_ff: 128, n_vocab: 512 };
  const md = [];
  const put = (key, type, value) => md.push({ key, type, value });
  const a = 'qwen2vl.';
  put('general.architecture', 'string', 'qwen2vl');
  put('general.name', 'string', 'Qwen2-VL vision stub (emollm bench)');
  put('general.file_type', 'u32', 2);
  put('general.alignment', 'u32', 32);
  put(a + 'context_length', 'u32', 32768);
  put(a + 'embedding_length', 'u32', s.n_embd);
  put(a + 'block_count', 'u32', s.n_layer);
  put(a + 'feed_forward_length', 'u32', s.n_ff);
  put(a + 'attention.head_count', 'u32', s.n_head);
  put(a + 'attention.head_count_kv', 'u32', s.n_head_kv);
  put(a + 'attention.layer_norm_rms_epsilon', 'f32', 1e-6);
  put(a + 'rope.freq_base', 'f32', 1000000);
  put(a + 'rope.dimension_sections', 'array<i32>', s.mrope);
  const v = baseVocab(s.n_vocab - 6);
  for (const tok of ['<|im_start|>', '<|im_end|>', '<|vision_start|>', '<|vision_end|>', '<|image_pad|>', '<|video_pad|>']) {
    v.tokens.push(tok); v.types.push(3); v.scores.push(0);
  }
  put('tokenizer.ggml.model', 'string', 'llama');
  put('tokenizer.ggml.tokens', 'array<string>', v.tokens);
  put('tokenizer.ggml.scores', 'array<f32>', v.scores);
  put('tokenizer.ggml.token_type', 'array<i32>', v.types);
  put('tokenizer.ggml.bos_token_id', 'u32', 1);
  put('tokenizer.ggml.eos_token_id', 'u32', 2);
  const hd = s.n_embd / s.n_head, kv = s.n_head_kv * hd;
  const t = [];
  const mat = (name, shape) => t.push({ name, shape, dtype: 'q4_0', fill: 'rand' });
  const vec = (name, n, fill) => t.push({ name, shape: [n], dtype: 'f32', fill });
  mat('token_embd.weight', [s.n_vocab, s.n_embd]);
  vec('blk.0.attn_norm.weight', s.n_embd, 'ones');
  mat('blk.0.attn_q.weight', [s.n_embd, s.n_embd]); vec('blk.0.attn_q.bias', s.n_embd, 'zeros');
  mat('blk.0.attn_k.weight', [kv, s.n_embd]); vec('blk.0.attn_k.bias', kv, 'zeros');
  mat('blk.0.attn_v.weight', [kv, s.n_embd]); vec('blk.0.attn_v.bias', kv, 'zeros');
  mat('blk.0.attn_output.weight', [s.n_embd, s.n_embd]);
  vec('blk.0.ffn_norm.weight', s.n_embd, 'ones');
  mat('blk.0.ffn_gate.weight', [s.n_ff, s.n_embd]);
  mat('blk.0.ffn_up.weight', [s.n_ff, s.n_embd]);
  mat('blk.0.ffn_down.weight', [s.n_embd, s.n_ff]);
  vec('output_norm.weight', s.n_embd, 'ones');
  mat('output.weight', [s.n_vocab, s.n_embd]);
  return finish({ path: join(out, 'qwen2vl-vision-stub.gguf'), label: 'text stub qwen2vl (width 3584, 1 layer) q4_0', metadata: md, tensors: t });
}

/** The samples of a case: `{ label, kind: 'image' | 'video', width, height, frames }`. */
export function vlmSamples(kase, o) {
  if (kase === 'next') return [{ label: `image ${o.nextSize[0]}x${o.nextSize[1]}`, kind: 'image', width: o.nextSize[0], height: o.nextSize[1], frames: 1 }];
  return [
    ...o.qwenSizes.map(([w, h]) => ({ label: `image ${w}x${h}`, kind: 'image', width: w, height: h, frames: 1 })),
    ...(o.videoFrames > 0 ? [{ label: `video ${o.videoFrames}x${o.videoSize[0]}x${o.videoSize[1]}`, kind: 'video', width: o.videoSize[0], height: o.videoSize[1], frames: o.videoFrames }] : []),
  ];
}

/**
 * GFLOP of encoding a sample (multiply-adds x 2; norms, activations, softmax not counted).
 * next: per tile the CLIP tower + projector (visionGflop of vision.mjs) x tiles.
 * qwen2vl: patch embedding, per layer qkv/o (4 N D^2) + MLP (2 N D F) + attention (2 N^2 D per
 * attention window; Qwen2-VL's vision attends within each temporal slice), the merger.
 */
export function qwen2vlGflop(grid, layers = QWEN2VL.depth) {
  const q = QWEN2VL, D = q.embed_dim, F = q.mlp, K = 3 * q.temporal_patch * q.patch_size ** 2;
  const [t, h, w] = grid, N = t * h * w, win = h * w;
  const patch = N * K * D;
  const layer = 4 * N * D * D + 2 * N * D * F + 2 * t * win * win * D;
  const M = N / (q.merge * q.merge), MD = D * q.merge * q.merge;
  const merger = M * (MD * MD + MD * q.hidden_size);
  return (2 * (patch + layers * layer + merger)) / 1e9;
}

/** Random-texture RGB frames as encoded PNGs (deterministic per seed). */
async function makeFrames(sharp, width, height, frames, seed) {
  const out = [];
  for (let f = 0; f < frames; f++) {
    let x = ((seed + f) * 2654435761) >>> 0 || 1;
    const raw = Buffer.allocUnsafe(width * height * 3);
    for (let i = 0; i < raw.length; i++) { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; raw[i] = x & 255; }
    out.push(await sharp(raw, { raw: { width, height, channels: 3 } }).png({ compressionLevel: 1 }).toBuffer());
  }
  return out;
}

/** The child: loads the pair, then per sample times preprocessing and vision separately. */
export async function vlmChild(spec, root, timed) {
  const log = (...a) => console.error('[emollm]', ...a);
  const out = { side: 'emollm', case: spec.case, dtype: spec.dtype, ok: false, samples: [] };
  await childMain(out, log, async (use) => {
    const dist = (f) => import(pathToFileURL(join(root, 'dist', f)).href);
    const { loadModel, cpuInfo } = await dist('index.js');
    const { decodeImage } = await dist('image.js');
    const sharp = (await import('sharp')).default;
    try { out.cpu = cpuInfo(); } catch {}
    const t0 = performance.now();
    const model = use(await loadModel(spec.text, { mmproj: spec.mmproj, threads: spec.threads, contextSize: 64 }));
    out.load_s = (performance.now() - t0) / 1000;
    const pre = model.visualPreprocessing;  // @internal: the family's preprocessing settings
    if (!pre || pre.family !== (spec.case === 'next' ? 'llava_next' : 'qwen2_vl'))
      throw new Error(`the pair did not load as ${spec.case} (preprocessing: ${pre?.family ?? 'none'})`);
    const { anyresPreprocess } = await dist('image_processor_llava_next.js');
    const { qwen2vlPatches } = await dist('image_processor_qwen2_vl.js');
    for (const s of spec.samples) {
      const files = await makeFrames(sharp, s.width, s.height, s.frames, spec.seed);
      const preprocess = async () => {
        const imgs = [];
        for (const f of files) imgs.push(await decodeImage(f));
        if (pre.family === 'llava_next') return anyresPreprocess(imgs[0], pre.config, pre.pinpoints);
        // Qwen2-VL video: frames in pairs (temporal patch 2), as the package's video path does
        return qwen2vlPatches(imgs, pre.config);
      };
      const encode = (px) => (pre.family === 'llava_next'
        ? model.encodeAnyresPixels(px.data, [px.imageSize])
        : model.encodePatches(px.data, [px.grid]));
      const px = await preprocess();
      const w = await timed(() => encode(px));  // warm-up
      const feats = w.value;
      for (let i = 0; i < feats.length; i += 97) if (!Number.isFinite(feats[i])) throw new Error(`${s.label}: non-finite features`);
      const rec = { label: s.label, kind: s.kind, warmup_s: w.s, tokens: feats.length / spec.outDim,
        tiles: px.tiles ?? null, grid: px.grid ?? null, pinpoint: px.pinpoint ?? null, reps: [] };
      const tStart = performance.now();
      for (let rep = 0; rep < spec.maxReps; rep++) {
        const p = await timed(preprocess);
        const e = await timed(() => encode(p.value));
        rec.reps.push({ pre_s: p.s, vision_s: e.s, other: Math.max(p.other, e.other) });
        const spent = (performance.now() - tStart) / 1000;
        if (rep + 1 >= spec.minReps && spent > spec.budgetS) break;
      }
      log(`${spec.case} ${spec.dtype} ${s.label}: ${rec.reps.map((r) => `${r.pre_s.toFixed(3)}+${r.vision_s.toFixed(3)}`).join(' ')} s`);
      out.samples.push(rec);
    }
  });
}
