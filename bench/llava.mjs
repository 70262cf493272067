#!/usr/bin/env node
// `npm run bench:llava [-- options]`: LLaVA-1.5-7B-shaped model (random weights: text GGUF q4_0
// + mmproj GGUF) end to end on CPU: a real photo + a 40-token question, then scoring 8 one-word
// answers with Model.scoreOptions. Time split into preprocessing (ImageProcessor.preprocessBatch),
// vision (Model.encodePixels: tower + projector), prefill (Model.logits of the prompt with the
// image, ~576 + 56 positions) and scoring (Model.scoreOptions after the prefill is cached: the
// scheduler finds the whole prompt cached with its last logits and evaluates the options only),
// total, peak RSS; then, as the same-run A/B, cold scoring (scoreOptions of the same input from an
// empty KV cache: the prompt's prefill + the options, what scoring cost before logits() and
// scoreOptions shared the scheduler's cache). See bench/README.md ("LLaVA end-to-end benchmark").
// Cases next and qwen2vl (bench/vlm-cases.mjs, the shapes bench:vision uses): LLaVA-NeXT-7B
// (llava-v1.6-vicuna-7b: the same Vicuna-7B text model + anyres mmproj, a 1024x1024 image -> 5 tiles of
// 336) and Qwen2-VL-7B (text 28 layers / width 3584 / GQA 28:4 / M-RoPE + the 32-layer ViT and merger;
// images at a few sizes and a 16-frame video), the same four phases per sample, with GFLOP/s of the
// vision and prefill phases against the machine's peaks probed in the same run.
//
//   npm run bench:llava                               # text q4_0 + bf16 tower
//   npm run bench:llava -- --full                     # also text q8_0
//   npm run bench:llava -- --vision-dtypes f32,bf16 --runs 2
//   npm run bench:llava -- --layers 2                 # smoke run: text model cut to 2 of 32 layers
//   npm run bench:llava -- --cases next,qwen2vl --layers 1 --vision-layers 1 --qwen-sizes 224x224 \
//       --video-frames 4 --video-size 224x224 --runs 1         # smallest smoke run of the VLM cases
//   npm run -s bench:llava -- --json > llava.json
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { DEFAULT_OUT, TEXT, TEXT_DTYPES, VISION, VISION_DTYPES, ensure, mmprojPlan, textPlan } from './make-random-llava.mjs';
import {
  busyMark, combinePeaks, ensureBuilt, fmt, physicalCores, printTable, probePeaks, root, runChild, timed, visionGflop, waitQuiet,
} from './vision.mjs';
import {
  QWEN2VL, VLM_CASES, nextMmprojPlan, qwen2vlGflop, qwen2vlMmprojPlan, qwen2vlTextPlan, vlmEndToEndChild, vlmSamples,
} from './vlm-cases.mjs';
import { childMain } from './measure.mjs';

// The real llava-1.5-7b-hf tokenizer when the shared folder has it (token counts as the real
// model's), else the random GGUF's own vocabulary (which splits words into more pieces).
const SHARED = join(root, '..', 'shared');
const TOKENIZER_DIRS = [join(SHARED, 'tokenizers', 'llava-1.5-7b-hf'), join(SHARED, 'models', 'llava-tiny-hf')];
const PHOTO = join(SHARED, 'models', 'llava-tiny-hf', 'photo.jpg');

// 40 tokens with the llava-1.5 tokenizer; LLaVA-1.5's prompt format ("USER: <image>\n... ASSISTANT:").
export const QUESTION = 'Look closely at the face, the posture and the surroundings of the person in this photo. ' +
  'Which of the emotions describes best how the person feels now? Answer with a single word.';
export const OPTIONS = ['happy', 'sad', 'angry', 'surprised', 'fearful', 'disgusted', 'neutral', 'contemptuous'];

// ============================================================================ child
// Creates the model's sequences (the scheduler and its context) and waits until the scheduler has
// faulted the context in on its own thread (stats().contextReady): out.context_s = creation up to
// then (what a first request would wait), out.prefault_s = the fault-in alone (the scheduler's own
// timing). Polled every 2 ms, so the figure is at most ~2 ms late.
async function readyContext(model, out) {
  const tc = performance.now();
  await model.sequences();
  for (const deadline = tc + 120_000; !model.stats().contextReady && performance.now() < deadline; )
    await new Promise((r) => setTimeout(r, 2));
  out.context_s = (performance.now() - tc) / 1000;
  out.prefault_s = model.stats().prefaultSeconds;
}

async function child(spec) {
  const log = (...a) => console.error('[emollm]', ...a);
  const out = { ok: false, runs: [] };
  await childMain(out, log, async (use) => {
    const { loadModel } = await import(pathToFileURL(join(root, 'dist', 'index.js')).href);
    const t0 = performance.now();
    // one KV slot: a one-token call that shares no prefix with the prompt empties the cache (cold runs)
    const opts = { mmproj: spec.mmproj, threads: spec.threads, contextSize: spec.nCtx, maxSequences: 1 };
    if (spec.tokenizer) opts.tokenizer = spec.tokenizer;
    const model = use(await loadModel(spec.text, opts));
    out.load_s = (performance.now() - t0) / 1000;
    // the sequences' context, created here as its own row; its KV cache and activations are faulted
    // in on the scheduler's thread right after (unless EMOLLM_PREFAULT=0 / prefaultContext: false),
    // never in the first timed prefill: the row times creation up to the end of that fault-in
    await readyContext(model, out);
    const vi = model.info.vision;
    const prompt = `USER: <image>\n${spec.question} ASSISTANT:`;
    const tokens = model.tokenize(prompt);
    const nImg = tokens.filter((t) => t === vi.imageTokenId).length;
    if (nImg !== 1) throw new Error(`the prompt has ${nImg} image tokens (id ${vi.imageTokenId}), expected 1`);
    out.prompt_tokens = tokens.length;
    out.question_tokens = model.tokenize(spec.question, { addSpecialTokens: false }).length;
    out.positions = tokens.length - 1 + vi.nImageTokens;
    out.option_tokens = spec.options.map((o) => model.tokenizer.encode(o, { addSpecialTokens: false }).length);
    out.image_token_id = vi.imageTokenId;
    out.n_image_tokens = vi.nImageTokens;

    if (spec.profileOnly) {
      // --profile: one prefill after the image's vision, no text warm-up, in a child whose backend
      // ops are timed (EMOLLM_PROFILE=1); the parent reads the table the child writes at exit
      const wb = await model.imageProcessor.preprocessBatch([spec.image]);
      const feats = await model.encodePixels(wb.data, 1);
      await readyContext(model, out);
      const fill = await timed(() => model.logits({ tokens, images: feats }));
      out.runs.push({ prefill_s: fill.s, other: fill.other });
      log(`profiled prefill ${fill.s.toFixed(2)} s (other work up to ${fill.other.toFixed(2)} cores)`);
      return;
    }
    // ---- warm-up (untimed): sharp's first decode, the vision weights, every text weight page
    // (a 16-token eval that shares no prefix with the prompt: it does not start with BOS)
    const tw = performance.now();
    const wb = await model.imageProcessor.preprocessBatch([spec.image]);
    await model.encodePixels(wb.data, 1);
    const warmIds = Array.from({ length: 16 }, (_, i) => 1000 + 37 * i);
    await model.logits(warmIds);
    out.warmup_s = (performance.now() - tw) / 1000;
    log(`load ${out.load_s.toFixed(1)} s, context ${out.context_s.toFixed(2)} s (fault-in ${(out.prefault_s ?? 0).toFixed(2)}), warm-up ${out.warmup_s.toFixed(1)} s; prompt ${tokens.length} tokens -> ${out.positions} positions`);

    for (let run = 0; run < spec.runs; run++) {
      if (run > 0) {
        // empty the KV cache for a cold prefill: a one-token call that shares no prefix with the prompt
        await model.logits([warmIds[0]]);
        if (spec.quietWaitS > 0) await waitQuiet(Math.min(10, spec.quietWaitS));
      }
      const pre = await timed(() => model.imageProcessor.preprocessBatch([spec.image]));
      // the vision phase's minor page faults (the whole process): a fresh result array's first touch
      // lands inside encodePixels (2304 faults at 4 KiB for LLaVA-1.5's 9 MiB), a reused one has none
      const f0 = process.resourceUsage().minorPageFault;
      const vis = await timed(() => model.encodePixels(pre.value.data, 1));
      const visionFaults = process.resourceUsage().minorPageFault - f0;
      const input = { tokens, images: vis.value };
      const s0 = model.stats();
      const fill = await timed(() => model.logits(input));
      const s1 = model.stats();
      const score = await timed(() => model.scoreOptions(input, spec.options));
      const s2 = model.stats();
      // what the scheduler evaluated in each phase: prompt positions, option rows, passes
      const work = (a, b) => ({ prompt_positions: b.prefillTokens - a.prefillTokens, reused_positions: b.reusedTokens - a.reusedTokens,
        reused_logits: b.reusedLogits - a.reusedLogits, option_rows: b.decodedTokens - a.decodedTokens, passes: b.steps - a.steps });
      const r = {
        preprocess_s: pre.s, vision_s: vis.s, vision_faults: visionFaults, prefill_s: fill.s, scoring_s: score.s,
        total_s: pre.s + vis.s + fill.s + score.s,
        other: Math.max(pre.other, vis.other, fill.other, score.other),
        other_by_phase: [pre.other, vis.other, fill.other, score.other],
        best: score.value.best, margin: score.value.margin,
        prefill_work: work(s0, s1), scoring_work: work(s1, s2),
      };
      if (spec.coldScoring) {
        // A/B in the same run: the same scoring from an empty KV cache (its prompt prefilled again)
        await model.logits([warmIds[0]]);
        const c0 = model.stats();
        const cold = await timed(() => model.scoreOptions(input, spec.options));
        r.cold_scoring_s = cold.s;
        r.cold_scoring_work = work(c0, model.stats());
        r.cold_other = cold.other;
        r.cold_equal = cold.value.options.every((o, i) => o.logprob === score.value.options[i].logprob);
      }
      out.runs.push(r);
      log(`run ${run + 1}: preprocess ${r.preprocess_s.toFixed(3)} s, vision ${r.vision_s.toFixed(2)} s (${r.vision_faults} faults), prefill ${r.prefill_s.toFixed(2)} s, ` +
        `scoring ${r.scoring_s.toFixed(2)} s (${r.scoring_work.prompt_positions} prompt positions, ${r.scoring_work.option_rows} option rows, ` +
        `${r.scoring_work.passes} passes), total ${r.total_s.toFixed(2)} s (other work up to ${r.other.toFixed(2)} cores)` +
        (spec.coldScoring ? `; cold scoring ${r.cold_scoring_s.toFixed(2)} s (${r.cold_scoring_work.prompt_positions} prompt positions, ` +
          `scores ${r.cold_equal ? 'bit-equal' : 'DIFFERENT'})` : ''));
    }
  });
}

// ============================================================================ parent
function parseArgs(argv) {
  const o = { threads: 0, text: ['q4_0'], vision: ['bf16'], full: false, layers: null, runs: 1, nCtx: 1024, build: true, probe: true, profile: false,
    out: DEFAULT_OUT, json: false, jsonOut: null, timeoutS: 1200, quietWaitS: 30, image: null, tokenizer: undefined, coldScoring: true,
    // the VLM cases, with bench:vision's defaults (bench/vlm-cases.mjs vlmSamples)
    cases: ['llava15', ...VLM_CASES], visionLayers: 0, nextSize: [1024, 1024], qwenSizes: [[448, 448], [1280, 720]], videoFrames: 16,
    videoSize: [640, 360], seed: 1, nCtxVlm: 4096 };
  const size = (s, name) => {
    const m = /^(\d+)x(\d+)$/.exec(s.trim());
    if (!m || Number(m[1]) < 1 || Number(m[2]) < 1) throw new Error(`${name}: WIDTHxHEIGHT, not '${s}'`);
    return [Number(m[1]), Number(m[2])];
  };
  const val = (i, name) => { if (i + 1 >= argv.length) throw new Error(`${name} needs a value`); return argv[i + 1]; };
  const list = (s, allowed, name) => {
    const xs = s.split(',').map((x) => x.trim().toLowerCase()).filter(Boolean);
    for (const x of xs) if (!allowed.includes(x)) throw new Error(`${name}: ${allowed.join(', ')}, not '${x}'`);
    return xs;
  };
  let textGiven = false;
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) { argv.splice(i + 1, 0, a.slice(eq + 1)); a = argv[i] = a.slice(0, eq); }
    switch (a) {
      case '--threads': o.threads = Number(val(i, a)); i++; break;
      case '--full': o.full = true; break;
      case '--text-dtypes': o.text = list(val(i, a), TEXT_DTYPES, a); textGiven = true; i++; break;
      case '--vision-dtypes': o.vision = list(val(i, a), VISION_DTYPES, a); i++; break;
      case '--layers': o.layers = Number(val(i, a)); i++; break;
      case '--runs': o.runs = Math.max(1, Number(val(i, a))); i++; break;
      case '--ctx': o.nCtx = Number(val(i, a)); i++; break;
      case '--vlm-ctx': o.nCtxVlm = Number(val(i, a)); i++; break;
      case '--cases': o.cases = val(i, a).split(',').map((x) => x.trim().toLowerCase()).filter(Boolean); i++; break;
      case '--vision-layers': o.visionLayers = Number(val(i, a)); i++; break;
      case '--next-size': o.nextSize = size(val(i, a), a); i++; break;
      case '--qwen-sizes': o.qwenSizes = val(i, a).split(',').map((x) => size(x, a)); i++; break;
      case '--video-frames': o.videoFrames = Number(val(i, a)); i++; break;
      case '--video-size': o.videoSize = size(val(i, a), a); i++; break;
      case '--image': o.image = val(i, a); i++; break;
      case '--tokenizer': o.tokenizer = val(i, a); i++; break;
      case '--gguf-vocab': o.tokenizer = null; break;
      case '--no-build': o.build = false; break;
      case '--no-probe': o.probe = false; break;
      case '--no-cold-scoring': o.coldScoring = false; break;
      case '--profile': o.profile = true; break;
      case '--models-dir': o.out = val(i, a); i++; break;
      case '--json': o.json = true; break;
      case '--json-out': o.jsonOut = val(i, a); i++; break;
      case '--timeout': o.timeoutS = Number(val(i, a)); i++; break;
      case '--quiet-wait': o.quietWaitS = Number(val(i, a)); i++; break;
      case '--help': case '-h': o.help = true; break;
      default: throw new Error(`unknown option ${a} (--help)`);
    }
  }
  if (o.full && !textGiven) o.text = [...TEXT_DTYPES];
  if (!o.cases.length) throw new Error('--cases: at least one of llava15, next, qwen2vl');
  for (const c of o.cases) if (!['llava15', ...VLM_CASES].includes(c)) throw new Error(`--cases: llava15, ${VLM_CASES.join(', ')}, not '${c}'`);
  if (!(Number.isInteger(o.videoFrames) && o.videoFrames >= 0 && o.videoFrames % 2 === 0)) throw new Error('--video-frames: an even number >= 0 (Qwen2-VL patches frames in pairs)');
  if (!(Number.isInteger(o.visionLayers) && o.visionLayers >= 0)) throw new Error('--vision-layers: an integer >= 1 (0: all)');
  if (!(Number.isInteger(o.nCtxVlm) && o.nCtxVlm >= 256)) throw new Error('--vlm-ctx: an integer >= 256');
  if (o.cases.includes('qwen2vl') && o.layers !== null && o.layers > QWEN2VL.text.n_layer) throw new Error(`--layers: 1..${QWEN2VL.text.n_layer} with the qwen2vl case`);
  if (o.layers !== null && !(Number.isInteger(o.layers) && o.layers >= 1 && o.layers <= TEXT.n_layer)) throw new Error(`--layers: 1..${TEXT.n_layer}`);
  if (o.layers === TEXT.n_layer) o.layers = null;
  return o;
}

const HELP = `usage: npm run bench:llava -- [options]
  --text-dtypes a,b     text model: q4_0 (default), q8_0; --full = both
  --vision-dtypes a,b   mmproj tower: bf16 (default), f16, f32
  --cases a,b           llava15 (LLaVA-1.5-7B, one 336 image), next (LLaVA-NeXT-7B: anyres, up to 5 tiles of 336),
                        qwen2vl (Qwen2-VL-7B: images at --qwen-sizes and a --video-frames video); default all three
  --layers N            smoke run: the text models cut to N layers (of 32; Qwen2-VL's of 28) (labelled; not the 7B figure)
  --vision-layers N     smoke run: the NeXT / Qwen2-VL towers cut to N layers (default: all)
  --next-size WxH       NeXT image (default 1024x1024: pinpoint 672x672, 5 tiles)
  --qwen-sizes WxH,..   Qwen2-VL images (default 448x448,1280x720); --video-frames N (default 16, even; 0: none),
  --video-size WxH      Qwen2-VL video frames (default 640x360); --vlm-ctx N KV positions for these cases (default 4096)
  --runs N              end-to-end runs per model pair, each from an empty KV cache (default 1)
  --no-cold-scoring     skip the A/B phase: scoreOptions of the same input from an empty KV cache (llava15)
  --profile             llava15: one more child per model pair with EMOLLM_PROFILE=1 (native/core/profiling_backend.h): one
                        prefill after load + vision, split by op (GEMM per weight shape with GOP/s, attention, norms, rope,
                        SwiGLU, residual adds, KV copies, thread-pool hand-offs); printed and in the JSON (rows[].profile)
  --threads N           compute threads (default: physical cores); --ctx N KV positions (default 1024)
  --image FILE          the photo (default ../shared/models/llava-tiny-hf/photo.jpg, else a generated JPEG)
  --tokenizer DIR       tokenizer (default ../shared/tokenizers/llava-1.5-7b-hf when present); --gguf-vocab: the GGUF's own
  --no-probe, --no-build, --models-dir DIR, --json, --json-out FILE, --timeout S (default 1200),
  --quiet-wait S        before each measurement wait up to S s for other work to stop (default 30; 0: don't)`;

// A 1920x1280 JPEG of smooth colour gradients and noise, when there is no real photo.
export async function generatedPhoto(dir) {
  const path = join(dir, 'generated-photo.jpg');
  if (existsSync(path)) return path;
  const { default: sharp } = await import('sharp');
  const W = 1920, H = 1280, px = Buffer.alloc(W * H * 3);
  let x = 12345;
  for (let y = 0; y < H; y++)
    for (let i = 0; i < W; i++) {
      x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
      const o = (y * W + i) * 3, n = (x & 31) - 16;
      px[o] = Math.max(0, Math.min(255, (255 * i) / W + n));
      px[o + 1] = Math.max(0, Math.min(255, (255 * y) / H + n));
      px[o + 2] = Math.max(0, Math.min(255, 128 + 100 * Math.sin(i / 90) * Math.cos(y / 70) + n));
    }
  mkdirSync(dir, { recursive: true });
  await sharp(px, { raw: { width: W, height: H, channels: 3 } }).jpeg({ quality: 90 }).toFile(path);
  return path;
}

// Multiply-adds x 2 of the decoder's matrices over `n` prompt positions (q/o E x E, k/v E x kv
// with grouped-query heads, SwiGLU 3 E F), causal attention (QK^T and AV over n(n+1)/2 pairs),
// and the LM head for the last position.
function prefillGflop(n, s, layers) {
  const p = prefillParts(n, s, layers);
  return p.weights + p.attention;
}
// The prefill's GFLOP by kind: products with the weight matrices (the layers' and the last
// position's output projection) and the causal attention's (scores and weighted values).
function prefillParts(n, s, layers) {
  const { n_embd: E, n_ff: F, n_vocab: V } = s, kv = s.n_head_kv * (E / s.n_head);
  const mats = n * layers * (2 * E * E + 2 * E * kv + 3 * E * F);
  const attn = layers * 2 * E * ((n * (n + 1)) / 2);
  return { weights: (2 * (mats + V * E)) / 1e9, attention: (2 * attn) / 1e9 };
}

// Seconds of the vision and prefill phases at the machine's probed peaks (null without probes):
//   vision: the tower's and projector's GFLOP at the bf16 dot peak (AMX when usable) for a bf16
//     tower, else at the fp32 FMA peak;
//   prefill: the weight products of a q8_0 / q4_0 text model at the int8 dot peak (vpdpbusd,
//     2 ops an int8 product: the VNNI GEMMs multiply q8_0-rounded activations with the weights'
//     integers), of a bf16 / f16 one at the bf16 dot peak, the attention at the fp32 FMA peak.
// What the int8 floor leaves out: per 32-element block and output the int32 -> f32 conversion,
// the d_w * d_x multiply and the f32 FMA (3 vector ops beside the block's 8 vpdpbusd of a
// 16-output register), the activations' rounding to q8_0 and the weights' unpacking; it is the
// ceiling of the multiply-adds alone, so the prefill cannot reach it (8 / 11 of it if those ops
// share the vpdpbusd pipes).
function phaseFloors(peaks, pos, layers, textDtype, visionDtype) {
  if (!peaks?.fma_gflops) return null;
  const dot = peaks.amx_bf16_gflops ?? peaks.bf16_dot_gflops;
  const gv = visionGflop(VISION, VISION.n_layer).total;
  const vision = gv / (visionDtype === 'bf16' && dot ? dot : peaks.fma_gflops);
  const pp = prefillParts(pos, TEXT, layers);
  const int8 = ['q4_0', 'q8_0'].includes(textDtype) ? peaks.int8_dot_gops : null;
  const wpeak = int8 ?? ((textDtype === 'bf16' || textDtype === 'f16') && dot ? dot : peaks.fma_gflops);
  const prefill = pp.weights / wpeak + pp.attention / peaks.fma_gflops;
  // the same with the weight products at the int8 + q8_0 block scale probe (the inner loop's
  // instruction mix, register-only): the floor with the scale work counted
  // (capped at the int8 peak: the same work plus more ops cannot run faster; a higher block probe
  // caught a busy moment of the plain one)
  const blockPeak = int8 && peaks.int8_block_gops ? Math.min(peaks.int8_block_gops, int8) : null;
  const block = blockPeak ? pp.weights / blockPeak + pp.attention / peaks.fma_gflops : null;
  return { vision_s: vision, prefill_s: prefill, sum_s: vision + prefill, weight_peak: wpeak,
    weight_peak_kind: int8 ? 'int8 dot' : wpeak === dot ? 'bf16 dot' : 'fp32 FMA',
    prefill_scaled_s: block, sum_scaled_s: block === null ? null : vision + block };
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  if (o.help) { console.log(HELP); return; }
  const out = o.json ? (s) => process.stderr.write(s + '\n') : (s) => process.stdout.write(s + '\n');
  const log = (s) => process.stderr.write(`bench:llava: ${s}\n`);
  const threads = o.threads > 0 ? o.threads : physicalCores();
  const t0 = performance.now();

  ensureBuilt(o.build, log);
  const llava15 = o.cases.includes('llava15');
  const vl = o.visionLayers || undefined;
  const mm = llava15 ? o.vision.map((d) => mmprojPlan(d, o.out)) : [];
  const tx = llava15 || o.cases.includes('next') ? o.text.map((d) => textPlan(d, { out: o.out, layers: o.layers ?? undefined })) : [];
  // the VLM cases: (case, text, tower) triples; NeXT shares LLaVA-1.5's Vicuna-7B text model
  const vlmPairs = [];
  for (const c of o.cases.filter((x) => VLM_CASES.includes(x)))
    for (const [i, t] of o.text.entries())
      for (const v of o.vision) {
        const text = c === 'next' ? tx[i] : qwen2vlTextPlan(t, { out: o.out, layers: o.layers ?? undefined });
        const mmproj = c === 'next' ? nextMmprojPlan(v, { out: o.out, layers: vl }) : qwen2vlMmprojPlan(v, { out: o.out, layers: vl });
        vlmPairs.push({ case: c, textDtype: t, visionDtype: v, text, mmproj });
      }
  const plans = [...new Map([...mm, ...tx, ...vlmPairs.flatMap((x) => [x.text, x.mmproj])].map((p) => [p.path, p])).values()];
  await ensure(plans, { log: (s) => log(s.trim()) });
  const image = o.image ?? (existsSync(PHOTO) ? PHOTO : await generatedPhoto(o.out));
  const tokenizer = o.tokenizer === null ? undefined : o.tokenizer ?? TOKENIZER_DIRS.find((d) => existsSync(join(d, 'tokenizer.json')));
  const load = os.loadavg()[0];
  if (load > threads * 0.5) log(`load average ${load.toFixed(2)}: other work is running; timings will be noisy (see the busy column)`);

  const probes = [];
  const probe = (when) => { if (o.probe) { log(`machine probes (${when}) ...`); probes.push(probePeaks(threads, log)); } };
  probe('start');

  const rows = [];
  if (llava15) for (const t of tx) for (const v of mm) {
    const label = `${t.path.split('/').at(-1)} + ${v.path.split('/').at(-1)}`;
    log(`${label} ...`);
    await waitQuiet(o.quietWaitS, log);
    const spec = { text: t.path, mmproj: v.path, threads, nCtx: o.nCtx, image, tokenizer, question: QUESTION, options: OPTIONS, runs: o.runs,
      quietWaitS: o.quietWaitS, coldScoring: o.coldScoring };
    const res = await runChild(process.execPath, [fileURLToPath(import.meta.url), '--child', JSON.stringify(spec)], { timeoutS: o.timeoutS, label });
    const row = { text: t.path.match(/(q4_0|q8_0)\.gguf$/)[1], vision: v.path.match(/-(f32|f16|bf16)\.gguf$/)[1], res };
    if (o.profile) {
      log(`${label}: profiled prefill (EMOLLM_PROFILE=1) ...`);
      await waitQuiet(o.quietWaitS, log);
      row.profile = await profiledPrefill({ ...spec, runs: 1, profileOnly: true }, o, `${label} profiled`);
    }
    rows.push(row);
  }
  const vlmRows = [];
  for (const x of vlmPairs) {
    const samples = vlmSamples(x.case, o);
    const label = `${x.case} ${x.text.path.split('/').at(-1)} + ${x.mmproj.path.split('/').at(-1)}`;
    log(`${label}: ${samples.map((s) => s.label).join(', ')} ...`);
    await waitQuiet(o.quietWaitS, log);
    const spec = { vlm: true, case: x.case, text: x.text.path, mmproj: x.mmproj.path, threads, nCtx: o.nCtxVlm, seed: o.seed, samples,
      tokenizer: x.case === 'next' ? tokenizer : undefined, question: QUESTION, options: OPTIONS, runs: o.runs, quietWaitS: o.quietWaitS,
      outDim: x.case === 'next' ? VISION.mm_out : QWEN2VL.hidden_size };
    const res = await runChild(process.execPath, [fileURLToPath(import.meta.url), '--child', JSON.stringify(spec)], { timeoutS: o.timeoutS, label });
    vlmRows.push({ ...x, res });
    probe(`after ${x.case} ${x.textDtype} + ${x.visionDtype}`);
  }
  probe('end');
  const peaks = combinePeaks(probes);

  // best undisturbed run (every phase < 0.25 cores of other work), else the fastest run
  for (const r of rows) {
    const runs = r.res.ok ? r.res.runs : [];
    const quiet = runs.filter((x) => !(x.other >= 0.25));
    const pool = quiet.length ? quiet : runs;
    r.best = pool.length ? pool.reduce((a, b) => (b.total_s < a.total_s ? b : a)) : null;
  }

  const layers = o.layers ?? TEXT.n_layer;
  const first = rows.find((r) => r.res.ok)?.res;
  if (llava15) {
  out('');
  out(`LLaVA-1.5-7B shape end to end, random weights, ${threads} threads` +
    (o.layers ? `  ** SMOKE RUN: text model cut to ${o.layers} of ${TEXT.n_layer} layers: prefill/scoring are NOT the 7B figures **` : ''));
  if (first) {
    out(`image: ${image.startsWith(SHARED) ? image.slice(SHARED.length - 'shared'.length) : image} -> ${VISION.image_size}x${VISION.image_size}; ` +
      `prompt "USER: <image>\\n<question> ASSISTANT:" = ${first.prompt_tokens} tokens (question ${first.question_tokens}) -> ${first.positions} positions with ` +
      `${first.n_image_tokens} image features; ${OPTIONS.length} options, ${first.option_tokens.reduce((a, b) => a + b, 0)} tokens (${first.option_tokens.join('+')}); ` +
      `tokenizer: ${tokenizer ? tokenizer.split('/').slice(-2).join('/') : 'the GGUF vocabulary'}`);
  }
  const head = ['text', 'tower', 'preproc s', 'vision s', 'floor s', 'prefill s', 'floor s', 'tok/s', 'GFLOP/s', 'scoring s', 'pos/rows/passes', 'cold scoring s', 'cold/warm',
    'total s', 'x floors', 'dominant', 'load s', 'context s', 'RSS MiB', 'runs', 'busy'];
  const tbl = [];
  for (const r of rows) {
    const b = r.best;
    if (!b) { tbl.push([r.text + (o.layers ? ` L${o.layers}` : ''), r.vision, 'failed']); continue; }
    const phases = [['preprocess', b.preprocess_s], ['vision', b.vision_s], ['prefill', b.prefill_s], ['scoring', b.scoring_s]];
    const dom = phases.reduce((a, c) => (c[1] > a[1] ? c : a));
    const pos = r.res.positions;
    const fl = phaseFloors(peaks, pos, layers, r.text, r.vision);
    r.floors = fl;
    tbl.push([
      r.text + (o.layers ? ` L${o.layers}` : ''), r.vision, fmt(b.preprocess_s, 3), fmt(b.vision_s, 2), fl ? fmt(fl.vision_s, 2) : '-',
      fmt(b.prefill_s, 2), fl ? fmt(fl.prefill_s, 2) : '-', fmt(pos / b.prefill_s, 1),
      fmt(prefillGflop(pos, TEXT, layers) / b.prefill_s, 0), fmt(b.scoring_s, 2),
      b.scoring_work ? `${b.scoring_work.prompt_positions}/${b.scoring_work.option_rows}/${b.scoring_work.passes}` : '-',
      b.cold_scoring_s === undefined ? '-' : fmt(b.cold_scoring_s, 2), b.cold_scoring_s === undefined ? '-' : fmt(b.cold_scoring_s / b.scoring_s, 2),
      fmt(b.total_s, 2), fl ? fmt(b.total_s / fl.sum_s, 2) : '-', `${dom[0]} ${fmt((100 * dom[1]) / b.total_s, 0)}%`,
      fmt(r.res.load_s, 1), r.res.context_s === undefined ? '-' : fmt(r.res.context_s, 2), fmt(r.res.maxrss_mib, 0), r.res.runs.length, busyMark(b.other),
    ]);
  }
  printTable(head, tbl, out, 2);
  for (const r of rows) if (!r.res.ok) out(`  ${r.text} + ${r.vision}: ${String(r.res.error).split('\n').slice(0, 3).join(' | ')}`);
  // every run, the first (the fresh context's first prompt) apart from the later ones
  for (const r of rows) {
    if (!r.res.ok || r.res.runs.length < 2) continue;
    out(`  ${r.text} + ${r.vision} each run: ` + r.res.runs.map((x, i) => `run ${i + 1} vision ${fmt(x.vision_s, 2)}${x.vision_faults === undefined ? '' : ` (${x.vision_faults} faults)`} + prefill ${fmt(x.prefill_s, 2)} + ` +
      `scoring ${fmt(x.scoring_s, 2)} = ${fmt(x.total_s, 2)} s` + (r.floors ? ` (${fmt(x.total_s / r.floors.sum_s, 2)}x floors)` : '') +
      (x.other >= 0.25 ? ' busy' : '')).join('; '));
  }
  const gv = visionGflop(VISION, VISION.n_layer);
  out(`vision = encodePixels (tower ${VISION.n_layer} layers + projector, ${fmt(gv.total, 0)} GFLOP); prefill = logits of the whole prompt with the image ` +
    `into an empty KV cache (${fmt(first ? prefillGflop(first.positions, TEXT, layers) : NaN, 0)} GFLOP); scoring = scoreOptions on the cached prompt ` +
    '(found whole with its last logits: only each option\'s tokens after the first are evaluated, the options side by side in one pass as forks of the cached prompt; ' +
    '); pos/rows/passes = prompt ' +
    'positions, option rows and forward passes the scoring evaluated; cold scoring = the same scoreOptions from an empty KV cache (prompt prefilled ' +
    'again: the cost before logits() shared the scheduler\'s cache), cold/warm its ratio. total = the four phases (load, warm-up and cold scoring not included). load s = loadModel (weights mapped and repacked); ' +
    'context s = creating the sequences\' context up to the end of its fault-in (the call returns at once; the scheduler faults its KV cache and ' +
    'activations in on its own thread before its first step, as llama.cpp clears its cache at creation, and requests wait for it: the bench waits for ' +
    'stats().contextReady before its warm-up; ~1 GB/s a core in a VM; EMOLLM_PREFAULT=0: no fault-in, and the first prefill pays the first touch instead), ' +
    'each once per process, not in total.');
  if (peaks) out(`peaks (bench_kernels probes, ${threads} threads, highest of ${probes.length}): fp32 FMA ${fmt(peaks.fma_gflops, 0)} GFLOP/s, bf16 dot ${fmt(peaks.bf16_dot_gflops, 0)} GFLOP/s, ` +
    `int8 dot ${fmt(peaks.int8_dot_gops, 0)} GOP/s (vpdpbusd, 2 ops an int8 product; with the q8_0 block scale ops ${fmt(peaks.int8_block_gops, 0)}), ` +
    `read bandwidth ${fmt(peaks.read_bw_gbs, 1)} GB/s`);
  for (const r of rows) {
    if (r.floors?.sum_scaled_s && r.best)
      out(`  ${r.text} + ${r.vision}: with the block scale work counted (weight products at the int8 + q8_0 scale probe) the prefill floor is ` +
        `${fmt(r.floors.prefill_scaled_s, 2)} s and total / floors ${fmt(r.best.total_s / r.floors.sum_scaled_s, 2)}x`);
  }
  if (peaks) out('floor s = the phase\'s GFLOP at the probed peaks: vision at the bf16 dot peak (bf16 tower); prefill = its weight products at the int8 dot ' +
    'peak (q4_0 / q8_0 text on the VNNI int8 GEMMs; bf16 dot for bf16 / f16 text) + its attention at the fp32 FMA peak. The int8 floor counts the ' +
    'multiply-adds only: not the per-32-block scale work (int32->f32, d_w*d_x, FMA: 3 vector ops beside 8 vpdpbusd), the q8_0 rounding of the ' +
    'activations or the weights\' unpacking. x floors = total s / (vision floor + prefill floor) (preprocessing and scoring have no floor: they count against it).');
  for (const r of rows) if (r.profile) printPrefillProfile(r, peaks, out);
  }
  if (vlmRows.length) printVlmTable(vlmRows, peaks, o, out);
  if (peaks && !llava15) out(`peaks (bench_kernels probes, ${threads} threads, highest of ${probes.length}): fp32 FMA ${fmt(peaks.fma_gflops, 0)} GFLOP/s, ` +
    `bf16 dot ${fmt(peaks.bf16_dot_gflops, 0)} GFLOP/s, read bandwidth ${fmt(peaks.read_bw_gbs, 1)} GB/s`);
  out('busy = most cores of other work during any phase of the reported run (! >= 0.25: disturbed). RSS = the measuring process\'s peak (mapped weights included).');
  out(`total wall ${fmt((performance.now() - t0) / 1000, 0)} s`);

  const json = { threads, layers, image, tokenizer: tokenizer ?? null, question: QUESTION, options: OPTIONS, peaks,
    rows: rows.map((r) => ({ text: r.text, vision: r.vision, best: r.best, floors: r.floors ?? null, profile: r.profile ?? null, raw: r.res })),
    vlm: vlmRows.map((r) => ({ case: r.case, text: r.textDtype, vision: r.visionDtype, raw: r.res })) };
  if (o.json) process.stdout.write(JSON.stringify(json, null, 1) + '\n');
  if (o.jsonOut) writeFileSync(o.jsonOut, JSON.stringify(json, null, 1) + '\n');
  process.exitCode = [...rows, ...vlmRows].every((r) => r.res.ok) ? 0 : 1;
}

// --profile: the child of `spec` (profileOnly) with EMOLLM_PROFILE=1; its table (written at exit)
// reduced to the text model's prefill: the "prefill"-phase rows of the decoder's ops (the tower's
// bf16 GEMMs, layer norms, GELUs, patches and its own attention and residual adds have other
// keys), each with its share and, for the weight GEMMs, GOP/s over the prompt's positions.
async function profiledPrefill(spec, o, label) {
  const dir = mkdtempSync(join(os.tmpdir(), 'emollm-llava-profile-'));
  const file = join(dir, 'profile.json');
  try {
    const res = await runChild(process.execPath, [fileURLToPath(import.meta.url), '--child', JSON.stringify(spec)],
      { timeoutS: o.timeoutS, label, env: { ...process.env, EMOLLM_PROFILE: '1', EMOLLM_PROFILE_OUT: file } });
    if (!res.ok) return { error: String(res.error) };
    if (!existsSync(file)) return { error: 'the child wrote no profile' };
    const prof = JSON.parse(readFileSync(file, 'utf8'));
    const pos = res.positions, E = TEXT.n_embd, layers = o.layers ?? TEXT.n_layer;
    // (a residual add of the decoder: rows x E elements, once per layer and chunk)
    const text = (r) => r.phase === 'prefill' && (
      (r.op === 'gemm' && /^(q4_0|q8_0) /.test(r.key)) || ['rmsnorm', 'add_rmsnorm', 'rope', 'rope_pair', 'swiglu', 'copy', 'attention_batch', 'embedding'].includes(r.op) ||
      (r.op === 'add' && Number(r.key.slice(2)) % E === 0 && r.calls % layers === 0) || ((r.op === 'handoff' || r.op === 'dispatch') && r.key !== 'layernorm' &&
        !['attention', 'quick_gelu', 'gelu_erf', 'extract_patches', 'copy_2d'].includes(r.key)));
    const rowsP = prof.ops.filter(text);
    const timedOps = rowsP.filter((r) => r.op !== 'handoff' && r.op !== 'dispatch');
    const total = timedOps.reduce((a, r) => a + r.total_ms, 0);
    for (const r of timedOps) {
      r.share = total ? r.total_ms / total : null;
      if (r.op === 'gemm') {  // "q4_0 N=4096+4096+4096 K=4096 repacked": 2 * positions * layers * sum(N) * K ops
        // (the output projection, N = the vocabulary: the last position's one row, once)
        const m = /N=([\d+]+) K=(\d+)/.exec(r.key);
        const sumN = m ? m[1].split('+').reduce((a, n) => a + Number(n), 0) : NaN;
        const ops = !m ? NaN : sumN === TEXT.n_vocab ? 2 * sumN * Number(m[2]) * r.calls : 2 * pos * layers * sumN * Number(m[2]);
        r.gops = ops / (r.total_ms * 1e6);
      }
    }
    const handoff = rowsP.filter((r) => r.op === 'handoff').reduce((a, r) => a + r.total_ms, 0);
    const jobs = rowsP.filter((r) => r.op === 'dispatch').reduce((a, r) => a + r.calls, 0);
    return { prefill_s: res.runs[0]?.prefill_s ?? null, other: res.runs[0]?.other ?? null, positions: pos, layers,
      ops_ms: total, handoff_ms: handoff, pool_jobs: jobs, rows: timedOps.sort((a, b) => b.total_ms - a.total_ms),
      handoff_rows: rowsP.filter((r) => r.op === 'handoff') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function printPrefillProfile(r, peaks, out) {
  const p = r.profile;
  out('');
  if (p.error) { out(`prefill profile ${r.text} + ${r.vision}: ${p.error}`); return; }
  out(`prefill profile ${r.text} + ${r.vision} (EMOLLM_PROFILE=1, its own child: load, vision, one prefill of ${p.positions} positions with no ` +
    `text warm-up, ${p.layers} layers): prefill ${fmt(p.prefill_s, 2)} s wall, ops ${fmt(p.ops_ms / 1000, 2)} s, of which thread-pool ` +
    `hand-offs ${fmt(p.handoff_ms / 1000, 2)} s (those of gemm and add with the tower's); ${p.pool_jobs} pool jobs (likewise); busy ${busyMark(p.other)}`);
  const int8 = peaks?.int8_dot_gops;
  const tbl = p.rows.map((x) => [x.op, x.key, x.calls, fmt(x.total_ms, 0), fmt(100 * x.share, 1),
    x.gops ? fmt(x.gops, 0) : '-', x.gops && int8 ? fmt((100 * x.gops) / int8, 0) : '-']);
  printTable(['op', 'key', 'calls', 'ms', '%', 'GOP/s', '%int8'], tbl, out, 2);
  out('ms = wall time of the op calls (a thread-pool op includes waking the pool and waiting for its slowest thread); % of the ops\' sum; ' +
    'GOP/s of a weight GEMM = 2 x positions x layers x N x K / its ms; %int8 against the int8 dot probe. The wall time beyond the ops\' sum ' +
    'is the scheduler, the LM head (one row: a decode-phase GEMV) and the addon.');
}

// LLaVA-NeXT / Qwen2-VL rows: per sample the fastest undisturbed run (every phase < 0.25 cores of
// other work), else the fastest; GFLOP/s of the vision and prefill phases and % of the fp32 FMA peak.
function printVlmTable(vlmRows, peaks, o, out) {
  const tl = o.layers, vl = o.visionLayers || null;
  out('');
  out(`LLaVA-NeXT-7B / Qwen2-VL-7B shapes end to end, random weights${tl || vl ? `  ** SMOKE RUN: ${tl ? `text cut to ${tl} layers` : ''}` +
    `${tl && vl ? ', ' : ''}${vl ? `towers cut to ${vl} layers` : ''}: NOT the 7B figures **` : ''}`);
  out(`prompt: the question (${QUESTION.length} chars) with one visual, in llava-v1.6-vicuna's / Qwen2-VL's chat format; ${OPTIONS.length} options scored. ` +
    'next: the Vicuna-7B text GGUF + anyres mmproj; qwen2vl: Qwen2-VL-7B text GGUF (random SPM vocabulary: more pieces per word than Qwen2\'s BPE) + qwen2vl_merger mmproj');
  const head = ['case', 'text', 'tower', 'sample', 'tiles/grid', 'visual', 'positions', 'preproc s', 'vision s', 'GFLOP/s', '%fma',
    'prefill s', 'GFLOP/s', '%fma', 'scoring s', 'total s', 'dominant', 'RSS MiB', 'busy'];
  const tbl = [];
  const pct = (g) => (peaks?.fma_gflops ? fmt((100 * g) / peaks.fma_gflops, 0) : '-');
  for (const r of vlmRows) {
    if (!r.res.ok) { tbl.push([r.case, r.textDtype, r.visionDtype, 'failed']); continue; }
    for (const smp of r.res.samples) {
      const quiet = smp.runs.filter((x) => !(x.other >= 0.25));
      const b = (quiet.length ? quiet : smp.runs).reduce((a, c) => (c.total_s < a.total_s ? c : a));
      const nl = vl ?? (r.case === 'next' ? VISION.n_layer : QWEN2VL.depth);
      const gv = r.case === 'next' ? visionGflop(VISION, nl).total * smp.tiles : qwen2vlGflop(smp.grid, nl);
      const shape = r.case === 'next' ? TEXT : QWEN2VL.text;
      const gp = prefillGflop(smp.positions, shape, tl ?? shape.n_layer);
      const phases = [['preprocess', b.preprocess_s], ['vision', b.vision_s], ['prefill', b.prefill_s], ['scoring', b.scoring_s]];
      const dom = phases.reduce((a, c) => (c[1] > a[1] ? c : a));
      tbl.push([r.case, r.textDtype, r.visionDtype, smp.label, r.case === 'next' ? `${smp.tiles} (${smp.pinpoint.join('x')})` : smp.grid.join('x'),
        fmt(smp.visual_tokens, 0), fmt(smp.positions, 0), fmt(b.preprocess_s, 3), fmt(b.vision_s, 2), fmt(gv / b.vision_s, 0), pct(gv / b.vision_s),
        fmt(b.prefill_s, 2), fmt(gp / b.prefill_s, 0), pct(gp / b.prefill_s), fmt(b.scoring_s, 2), fmt(b.total_s, 2),
        `${dom[0]} ${fmt((100 * dom[1]) / b.total_s, 0)}%`, fmt(r.res.maxrss_mib, 0), busyMark(b.other)]);
    }
  }
  printTable(head, tbl, out, 4);
  for (const r of vlmRows) if (!r.res.ok) out(`  ${r.case} ${r.textDtype} + ${r.visionDtype}: ${String(r.res.error).split('\n').slice(0, 3).join(' | ')}`);
  out('visual = decoder positions of the visual (NeXT: base tile + unpadded grid + newlines; Qwen2-VL: t*h*w/4 merged patches); ' +
    'preproc = decode + resize / tile / patchify; vision = tower + projector / merger (+ packing); prefill = logits of the whole prompt into an ' +
    'empty KV cache; scoring = scoreOptions on the cached prompt. GFLOP/s = multiply-adds x 2 of the phase / its seconds; %fma against the fp32 FMA probe of this run.');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const i = process.argv.indexOf('--child');
  if (i >= 0) {
    const spec = JSON.parse(process.argv[i + 1]);
    if (spec.vlm) vlmEndToEndChild(spec, root, timed);
    else child(spec);
  }
  else main().catch((e) => { console.error(e?.stack ?? e); process.exit(1); });
}
