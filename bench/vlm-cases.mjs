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
import { childMain, waitQuiet } from './measure.mjs';

export const VLM_CASES = ['next', 'qwen2vl'];

// llava-v1.6's pinpoints ([height, width]) at 336.
export const NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]];
// text: Qwen2-VL-7B-Instruct's language model (Qwen2-7B: 28 layers, GQA 28 / 4 heads, SwiGLU 18944,
// vocabulary 152064, M-RoPE sections [16, 24, 24]); bench:vision loads a 1-layer stub of its width.
export const QWEN2VL = {
  embed_dim: 1280, depth: 32, num_heads: 16, mlp: 5120, patch_size: 14, merge: 2, temporal_patch: 2, hidden_size: 3584,
  text: { label: 'Qwen2-VL-7B', n_embd: 3584, n_layer: 28, n_head: 28, n_head_kv: 4, n_ff: 18944, n_vocab: 152064, n_ctx: 32768, mrope: [16, 24, 24, 0] },
};
// Qwen2-VL's special tokens, appended after the random vocabulary (the native loader finds them by name).
export const QWEN2VL_SPECIALS = ['<|im_start|>', '<|im_end|>', '<|vision_start|>', '<|vision_end|>', '<|image_pad|>', '<|video_pad|>'];

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

/**
 * Qwen2-VL mmproj (llama.cpp's qwen2vl_merger layout), with the keys llama.cpp's converter writes:
 * feed_forward_length is vision_config.hidden_size (3584, not the MLP's 5120), no
 * spatial_merge_size (clip.cpp's default 2) and no use_gelu (quick_gelu).
 */
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
  put('clip.vision.image_size', 'u32', 560);
  put('clip.vision.patch_size', 'u32', q.patch_size);
  put('clip.vision.embedding_length', 'u32', D);
  put('clip.vision.feed_forward_length', 'u32', q.hidden_size);
  put('clip.vision.projection_dim', 'u32', q.hidden_size);
  put('clip.vision.attention.head_count', 'u32', q.num_heads);
  put('clip.vision.attention.layer_norm_epsilon', 'f32', 1e-6);
  put('clip.vision.block_count', 'u32', q.depth);
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

/** A qwen2vl text GGUF of shape `s` (llama.cpp's layout: q/k/v biases, M-RoPE sections), matrices in `dtype`. */
function qwen2vlTextGguf(s, dtype, path, label) {
  const md = [];
  const put = (key, type, value) => md.push({ key, type, value });
  const a = 'qwen2vl.';
  put('general.architecture', 'string', 'qwen2vl');
  put('general.name', 'string', `${s.label} random ${dtype} (emollm bench)`);
  put('general.file_type', 'u32', { q4_0: 2, q8_0: 7 }[dtype]);
  put('general.quantization_version', 'u32', 2);
  put('general.alignment', 'u32', 32);
  put(a + 'context_length', 'u32', s.n_ctx);
  put(a + 'embedding_length', 'u32', s.n_embd);
  put(a + 'block_count', 'u32', s.n_layer);
  put(a + 'feed_forward_length', 'u32', s.n_ff);
  put(a + 'attention.head_count', 'u32', s.n_head);
  put(a + 'attention.head_count_kv', 'u32', s.n_head_kv);
  put(a + 'attention.layer_norm_rms_epsilon', 'f32', 1e-6);
  put(a + 'rope.freq_base', 'f32', 1000000);
  put(a + 'rope.dimension_sections', 'array<i32>', s.mrope);
  const v = baseVocab(s.n_vocab - QWEN2VL_SPECIALS.length);
  for (const tok of QWEN2VL_SPECIALS) { v.tokens.push(tok); v.types.push(3); v.scores.push(0); }
  put('tokenizer.ggml.model', 'string', 'llama');
  put('tokenizer.ggml.tokens', 'array<string>', v.tokens);
  put('tokenizer.ggml.scores', 'array<f32>', v.scores);
  put('tokenizer.ggml.token_type', 'array<i32>', v.types);
  put('tokenizer.ggml.bos_token_id', 'u32', 1);
  put('tokenizer.ggml.eos_token_id', 'u32', 2);
  put('tokenizer.ggml.add_bos_token', 'bool', false);  // Qwen2 adds no BOS
  const hd = s.n_embd / s.n_head, kv = s.n_head_kv * hd;
  const t = [];
  const mat = (name, shape) => t.push({ name, shape, dtype, fill: 'rand' });
  const vec = (name, n, fill) => t.push({ name, shape: [n], dtype: 'f32', fill });
  mat('token_embd.weight', [s.n_vocab, s.n_embd]);
  for (let l = 0; l < s.n_layer; l++) {
    const b = `blk.${l}.`;
    vec(b + 'attn_norm.weight', s.n_embd, 'ones');
    mat(b + 'attn_q.weight', [s.n_embd, s.n_embd]); vec(b + 'attn_q.bias', s.n_embd, 'zeros');
    mat(b + 'attn_k.weight', [kv, s.n_embd]); vec(b + 'attn_k.bias', kv, 'zeros');
    mat(b + 'attn_v.weight', [kv, s.n_embd]); vec(b + 'attn_v.bias', kv, 'zeros');
    mat(b + 'attn_output.weight', [s.n_embd, s.n_embd]);
    vec(b + 'ffn_norm.weight', s.n_embd, 'ones');
    mat(b + 'ffn_gate.weight', [s.n_ff, s.n_embd]);
    mat(b + 'ffn_up.weight', [s.n_ff, s.n_embd]);
    mat(b + 'ffn_down.weight', [s.n_embd, s.n_ff]);
  }
  vec('output_norm.weight', s.n_embd, 'ones');
  mat('output.weight', [s.n_vocab, s.n_embd]);
  return finish({ path, label, metadata: md, tensors: t });
}

/** A 1-layer qwen2vl text model of Qwen2-VL-7B's width (3584) with its vision tokens: what the vision bench loads. */
export function qwen2vlStubPlan(out = DEFAULT_OUT) {
  const s = { ...QWEN2VL.text, label: 'Qwen2-VL vision stub', n_layer: 1, n_ff: 128, n_vocab: 512 };
  return qwen2vlTextGguf(s, 'q4_0', join(out, 'qwen2vl-vision-stub.gguf'), 'text stub qwen2vl (width 3584, 1 layer) q4_0');
}

/** Qwen2-VL-7B's language model (random weights, q4_0 or q8_0); `layers` cuts it for smoke runs. */
export function qwen2vlTextPlan(dtype, { out = DEFAULT_OUT, layers } = {}) {
  if (!['q4_0', 'q8_0'].includes(dtype)) throw new Error(`text dtype ${dtype}: q4_0 or q8_0`);
  const T = QWEN2VL.text, cut = layers !== undefined && layers !== null && layers !== T.n_layer;
  if (cut && !(Number.isInteger(layers) && layers >= 1 && layers <= T.n_layer)) throw new Error(`--layers ${layers}: 1..${T.n_layer}`);
  const s = cut ? { ...T, n_layer: layers, label: `${T.label} cut to ${layers} layers` } : T;
  return qwen2vlTextGguf(s, dtype, join(out, cut ? `qwen2vl-7b-L${layers}-${dtype}.gguf` : `qwen2vl-7b-${dtype}.gguf`), `text ${s.label} ${dtype}`);
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

/**
 * A loaded pair's own pipeline for a case: `preprocess(files)` decodes and resizes / tiles /
 * patchifies (video frames in pairs, as the package's video path does), `encode(px)` runs the
 * tower + projector / merger and packs (the features carry the token counts / grids the prompt needs).
 */
async function familyOps(model, kase, dist) {
  const pre = model.visualPreprocessing;  // @internal: the family's preprocessing settings
  if (!pre || pre.family !== (kase === 'next' ? 'llava_next' : 'qwen2_vl'))
    throw new Error(`the pair did not load as ${kase} (preprocessing: ${pre?.family ?? 'none'})`);
  const { decodeImage } = await dist('image.js');
  const { anyresPreprocess } = await dist('image_processor_llava_next.js');
  const { qwen2vlPatches } = await dist('image_processor_qwen2_vl.js');
  return {
    async preprocess(files) {
      const imgs = [];
      for (const f of files) imgs.push(await decodeImage(f));
      if (pre.family === 'llava_next') return anyresPreprocess(imgs[0], pre.config, pre.pinpoints);
      return qwen2vlPatches(imgs, pre.config);
    },
    encode: (px) => (pre.family === 'llava_next' ? model.encodeAnyresPixels(px.data, [px.imageSize]) : model.encodePatches(px.data, [px.grid])),
  };
}

const distOf = (root) => (f) => import(pathToFileURL(join(root, 'dist', f)).href);

/** The child: loads the pair, then per sample times preprocessing and vision separately. */
export async function vlmChild(spec, root, timed) {
  const log = (...a) => console.error('[emollm]', ...a);
  const out = { side: 'emollm', case: spec.case, dtype: spec.dtype, ok: false, samples: [] };
  await childMain(out, log, async (use) => {
    const dist = distOf(root);
    const { loadModel, cpuInfo } = await dist('index.js');
    const sharp = (await import('sharp')).default;
    try { out.cpu = cpuInfo(); } catch {}
    const t0 = performance.now();
    const model = use(await loadModel(spec.text, { mmproj: spec.mmproj, threads: spec.threads, contextSize: 64 }));
    out.load_s = (performance.now() - t0) / 1000;
    const ops = await familyOps(model, spec.case, dist);
    for (const s of spec.samples) {
      const files = await makeFrames(sharp, s.width, s.height, s.frames, spec.seed);
      const preprocess = () => ops.preprocess(files);
      const px = await preprocess();
      const w = await timed(() => ops.encode(px));  // warm-up
      const feats = w.value;
      for (let i = 0; i < feats.length; i += 97) if (!Number.isFinite(feats[i])) throw new Error(`${s.label}: non-finite features`);
      const rec = { label: s.label, kind: s.kind, warmup_s: w.s, tokens: feats.length / spec.outDim,
        tiles: px.tiles ?? null, grid: px.grid ?? null, pinpoint: px.pinpoint ?? null, reps: [] };
      const tStart = performance.now();
      for (let rep = 0; rep < spec.maxReps; rep++) {
        const p = await timed(preprocess);
        const e = await timed(() => ops.encode(p.value));
        rec.reps.push({ pre_s: p.s, vision_s: e.s, other: Math.max(p.other, e.other) });
        const spent = (performance.now() - tStart) / 1000;
        if (rep + 1 >= spec.minReps && spent > spec.budgetS) break;
      }
      log(`${spec.case} ${spec.dtype} ${s.label}: ${rec.reps.map((r) => `${r.pre_s.toFixed(3)}+${r.vision_s.toFixed(3)}`).join(' ')} s`);
      out.samples.push(rec);
    }
  });
}

/**
 * The prompt of a sample with one visual placeholder: LLaVA-NeXT (llava-v1.6-vicuna) "USER: <image>\n...
 * ASSISTANT:"; Qwen2-VL's chat format with <|vision_start|><|image_pad|> or <|video_pad|><|vision_end|>.
 */
function promptTokens(model, kase, kind, question) {
  if (kase === 'next') return model.tokenize(`USER: <image>\n${question} ASSISTANT:`);
  const id = (t) => {
    const v = model.tokenizer.tokenToId(t);
    if (v === undefined) throw new Error(`the text GGUF has no ${t} token`);
    return v;
  };
  const text = (x) => model.tokenize(x, { addSpecialTokens: false });
  return [
    id('<|im_start|>'), ...text('user\n'), id('<|vision_start|>'), id(kind === 'video' ? '<|video_pad|>' : '<|image_pad|>'), id('<|vision_end|>'),
    ...text(question), id('<|im_end|>'), ...text('\n'), id('<|im_start|>'), ...text('assistant\n'),
  ];
}

/**
 * bench:llava's child for the NeXT / Qwen2-VL cases: loads the text + mmproj pair, then per sample
 * (after an untimed warm-up of the same sample) times preprocessing, vision, the prefill of the
 * prompt with the visual into an empty KV cache, and scoring the options on the cached prompt.
 */
export async function vlmEndToEndChild(spec, root, timed) {
  const log = (...a) => console.error('[emollm]', ...a);
  const out = { case: spec.case, ok: false, samples: [] };
  await childMain(out, log, async (use) => {
    const dist = distOf(root);
    const { loadModel, cpuInfo } = await dist('index.js');
    const sharp = (await import('sharp')).default;
    try { out.cpu = cpuInfo(); } catch {}
    const t0 = performance.now();
    // one KV slot: the one-token call on coldId below then empties the cache (logits() shares the
    // scheduler's slots, and a new prompt takes an empty slot before a cached one)
    const opts = { mmproj: spec.mmproj, threads: spec.threads, contextSize: spec.nCtx, maxSequences: 1 };
    if (spec.tokenizer) opts.tokenizer = spec.tokenizer;
    const model = use(await loadModel(spec.text, opts));
    out.load_s = (performance.now() - t0) / 1000;
    const ops = await familyOps(model, spec.case, dist);
    out.question_tokens = model.tokenize(spec.question, { addSpecialTokens: false }).length;
    out.option_tokens = spec.options.map((o) => model.tokenizer.encode(o, { addSpecialTokens: false }).length);
    // a token no prompt starts with: a one-token call on it empties the KV cache (cold prefill)
    const coldId = 300;
    for (const s of spec.samples) {
      const files = await makeFrames(sharp, s.width, s.height, s.frames, spec.seed);
      const tokens = promptTokens(model, spec.case, s.kind, spec.question);
      const run = async () => {
        const pre = await timed(() => ops.preprocess(files));
        const vis = await timed(() => ops.encode(pre.value));
        const input = { tokens, images: vis.value };
        const fill = await timed(() => model.logits(input));
        const score = await timed(() => model.scoreOptions(input, spec.options));
        return { pre, vis, fill, score };
      };
      const tw = performance.now();
      const w = await run();  // warm-up: the weights' pages, sharp's first decode
      const feats = w.vis.value;
      for (let i = 0; i < feats.length; i += 97) if (!Number.isFinite(feats[i])) throw new Error(`${s.label}: non-finite features`);
      const visualTokens = feats.length / spec.outDim;  // one placeholder in the prompt becomes these positions
      const rec = { label: s.label, kind: s.kind, warmup_s: (performance.now() - tw) / 1000, prompt_tokens: tokens.length,
        visual_tokens: visualTokens, positions: tokens.length - 1 + visualTokens, tiles: w.pre.value.tiles ?? null,
        grid: w.pre.value.grid ?? null, pinpoint: w.pre.value.pinpoint ?? null, runs: [] };
      for (let r = 0; r < spec.runs; r++) {
        await model.logits([coldId]);
        if (spec.quietWaitS > 0) await waitQuiet(Math.min(10, spec.quietWaitS));
        const x = await run();
        rec.runs.push({
          preprocess_s: x.pre.s, vision_s: x.vis.s, prefill_s: x.fill.s, scoring_s: x.score.s,
          total_s: x.pre.s + x.vis.s + x.fill.s + x.score.s,
          other: Math.max(x.pre.other, x.vis.other, x.fill.other, x.score.other), best: x.score.value.best,
        });
      }
      const b = rec.runs.at(-1);
      log(`${spec.case} ${s.label}: ${rec.visual_tokens} visual tokens, ${rec.positions} positions; preprocess ${b.preprocess_s.toFixed(3)} s, ` +
        `vision ${b.vision_s.toFixed(2)} s, prefill ${b.prefill_s.toFixed(2)} s, scoring ${b.scoring_s.toFixed(2)} s`);
      out.samples.push(rec);
    }
  });
}
