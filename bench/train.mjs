#!/usr/bin/env node
// `npm run bench:train [-- options]`: MVP training throughput on CPU (issue 16): samples/s,
// tokens/s (decoder positions, image tokens included) and peak RSS of `train-mvp` (lib/train,
// native/train/mvp_trainer) for
//   tiny   the tiny LLaVA in ../shared/models/llava-tiny-hf (42 px images, 9 image tokens)
//   1.1b   a LLaVA with a TinyLlama-1.1B-shaped decoder (2048 wide, 22 layers, GQA 32/4, FFN 5632,
//          vocab 32064, bf16) and a CLIP ViT-L/14-336-shaped tower (576 image tokens, bf16),
//          random weights written once to bench/models/llava-1.1b-train-hf/ (~3 GB)
// on synthetic colour images (EmoBench JSONL, emo-c with four options), batch --batch, --steps
// optimizer steps after one warm-up step (its tower features are computed and cached then, so the
// timed steps measure training only). Anchor, same run: the inference forward pass of the same
// checkpoint on the same prompts (Model.logits, vision tower + MVP + decoder), printed as the
// ratio train-sample time / forward time.
//
//   npm run bench:train                               # tiny + 1.1b at 2 threads
//   npm run bench:train -- --models tiny --steps 3    # smoke run
//   npm run bench:train -- --models 1.1b --layers 2   # the 1.1B shape cut to 2 decoder layers
//   npm run -s bench:train -- --json > train.json
//
// The closing line estimates one epoch of a training split of --epoch-samples samples (default
// 40,000, about EmoBench's instruction-tuning split) at the measured samples/s.
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const SHARED = join(root, '..', 'shared');
const TINY = join(SHARED, 'models', 'llava-tiny-hf');

function args(argv) {
  const o = { models: ['tiny', '1.1b'], steps: 5, batch: 4, threads: 2, layers: undefined, json: false, epochSamples: 40000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--models') o.models = next().split(',');
    else if (a === '--steps') o.steps = Number(next());
    else if (a === '--batch') o.batch = Number(next());
    else if (a === '--threads') o.threads = Number(next());
    else if (a === '--layers') o.layers = Number(next());
    else if (a === '--epoch-samples') o.epochSamples = Number(next());
    else if (a === '--json') o.json = true;
    else if (a === '--help' || a === '-h') {
      console.log('usage: node bench/train.mjs [--models tiny,1.1b] [--steps N] [--batch N] [--threads N] [--layers N] [--epoch-samples N] [--json]');
      process.exit(0);
    } else throw new Error(`unknown option ${a}`);
  }
  for (const m of o.models) if (m !== 'tiny' && m !== '1.1b') throw new Error(`--models: unknown ${m} (tiny, 1.1b)`);
  for (const k of ['steps', 'batch', 'threads']) if (!(Number.isInteger(o[k]) && o[k] >= 1)) throw new Error(`--${k} must be a positive integer`);
  return o;
}

// ---------------------------------------------------------------------------- a 1.1B-shaped LLaVA (bf16, random)
const TEXT = { hidden_size: 2048, num_hidden_layers: 22, num_attention_heads: 32, num_key_value_heads: 4, intermediate_size: 5632, vocab_size: 32064 };
const VISION = { hidden_size: 1024, num_hidden_layers: 24, num_attention_heads: 16, intermediate_size: 4096, image_size: 336, patch_size: 14 };

function tensors1b(layers) {
  const t = [];
  const E = TEXT.hidden_size, F = TEXT.intermediate_size, kv = (E / TEXT.num_attention_heads) * TEXT.num_key_value_heads;
  const C = VISION.hidden_size, FF = VISION.intermediate_size, P = VISION.patch_size, n = (VISION.image_size / P) ** 2 + 1;
  const v = 'vision_tower.vision_model.';
  t.push([v + 'embeddings.patch_embedding.weight', [C, 3, P, P], 0.02], [v + 'embeddings.class_embedding', [C], 0.02], [v + 'embeddings.position_embedding.weight', [n, C], 0.02]);
  t.push([v + 'pre_layrnorm.weight', [C], 'one'], [v + 'pre_layrnorm.bias', [C], 'zero'], [v + 'post_layernorm.weight', [C], 'one'], [v + 'post_layernorm.bias', [C], 'zero']);
  for (let i = 0; i < VISION.num_hidden_layers; i++) {
    const l = `${v}encoder.layers.${i}.`;
    for (const x of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) t.push([`${l}self_attn.${x}.weight`, [C, C], 0.02], [`${l}self_attn.${x}.bias`, [C], 'zero']);
    for (const x of ['layer_norm1', 'layer_norm2']) t.push([`${l}${x}.weight`, [C], 'one'], [`${l}${x}.bias`, [C], 'zero']);
    t.push([`${l}mlp.fc1.weight`, [FF, C], 0.02], [`${l}mlp.fc1.bias`, [FF], 'zero'], [`${l}mlp.fc2.weight`, [C, FF], 0.02], [`${l}mlp.fc2.bias`, [C], 'zero']);
  }
  t.push(['multi_modal_projector.linear_1.weight', [E, C], 0.02], ['multi_modal_projector.linear_1.bias', [E], 'zero']);
  t.push(['multi_modal_projector.linear_2.weight', [E, E], 0.02], ['multi_modal_projector.linear_2.bias', [E], 'zero']);
  const m = 'language_model.model.';
  t.push([m + 'embed_tokens.weight', [TEXT.vocab_size, E], 0.02], [m + 'norm.weight', [E], 'one'], ['language_model.lm_head.weight', [TEXT.vocab_size, E], 0.02]);
  for (let i = 0; i < layers; i++) {
    const l = `${m}layers.${i}.`;
    t.push([l + 'input_layernorm.weight', [E], 'one'], [l + 'post_attention_layernorm.weight', [E], 'one']);
    t.push([l + 'self_attn.q_proj.weight', [E, E], 0.02], [l + 'self_attn.k_proj.weight', [kv, E], 0.02], [l + 'self_attn.v_proj.weight', [kv, E], 0.02], [l + 'self_attn.o_proj.weight', [E, E], 0.02]);
    t.push([l + 'mlp.gate_proj.weight', [F, E], 0.02], [l + 'mlp.up_proj.weight', [F, E], 0.02], [l + 'mlp.down_proj.weight', [E, F], 0.02]);
  }
  return t;
}

function bf16Block(n, kind, state) {
  const f = new Float32Array(n);
  if (kind === 'one') f.fill(1);
  else if (kind !== 'zero') {
    // xorshift32 uniform in [-sqrt(3) s, sqrt(3) s]: the spread of N(0, s); speed does not depend on the values
    let x = state.x;
    const scale = (3.4641 * kind) / 4294967296;
    for (let i = 0; i < n; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      f[i] = ((x >>> 0) - 2147483648) * scale;
    }
    state.x = x;
  }
  const u = new Uint32Array(f.buffer);
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) out[i] = u[i] >>> 16;
  return Buffer.from(out.buffer);
}

function ensure1b(layers, log) {
  const dir = join(here, 'models', `llava-1.1b-train-hf${layers === TEXT.num_hidden_layers ? '' : `-L${layers}`}`);
  if (existsSync(join(dir, 'model.safetensors'))) return dir;
  mkdirSync(dir, { recursive: true });
  log(`writing ${dir} (random bf16 weights, once)`);
  const list = tensors1b(layers);
  const header = {};
  let off = 0;
  for (const [name, shape] of list) {
    const n = shape.reduce((a, b) => a * b, 1);
    header[name] = { dtype: 'BF16', shape, data_offsets: [off, off + n * 2] };
    off += n * 2;
  }
  let h = JSON.stringify(header);
  while (Buffer.byteLength(h) % 8) h += ' ';
  const tmp = join(dir, 'model.safetensors.partial');
  const fd = openSync(tmp, 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(h)));
  writeSync(fd, len);
  writeSync(fd, Buffer.from(h));
  const state = { x: 0x9e3779b9 };
  for (const [, shape, kind] of list) {
    let n = shape.reduce((a, b) => a * b, 1);
    while (n > 0) {
      const k = Math.min(n, 1 << 22);
      writeSync(fd, bf16Block(k, kind, state));
      n -= k;
    }
  }
  closeSync(fd);
  renameSync(tmp, join(dir, 'model.safetensors'));
  const cfg = {
    architectures: ['LlavaForConditionalGeneration'], model_type: 'llava', image_token_index: 32000, projector_hidden_act: 'gelu',
    vision_feature_layer: -2, vision_feature_select_strategy: 'default', multimodal_projector_bias: true, tie_word_embeddings: false,
    text_config: { model_type: 'llama', ...TEXT, num_hidden_layers: layers, head_dim: 64, hidden_act: 'silu', rms_norm_eps: 1e-5, max_position_embeddings: 2048, rope_theta: 10000, tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2 },
    vision_config: { model_type: 'clip_vision_model', ...VISION, hidden_act: 'quick_gelu', layer_norm_eps: 1e-5, num_channels: 3, projection_dim: 768 },
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'added_tokens.json', 'chat_template.json'])
    if (existsSync(join(TINY, f))) copyFileSync(join(TINY, f), join(dir, f));
  const pre = JSON.parse(JSON.stringify({ crop_size: { height: 336, width: 336 }, do_center_crop: true, do_normalize: true, do_rescale: true, do_resize: true, image_mean: [0.48145466, 0.4578275, 0.40821073], image_std: [0.26862954, 0.26130258, 0.27577711], resample: 3, rescale_factor: 1 / 255, size: { shortest_edge: 336 } }));
  writeFileSync(join(dir, 'preprocessor_config.json'), JSON.stringify(pre, null, 2));
  return dir;
}

// ---------------------------------------------------------------------------- synthetic data
async function makeBench(dir, n, size) {
  const sharp = (await import('sharp')).default;
  const words = ['happy', 'calm', 'sad', 'surprised'];
  const colours = [[220, 30, 30], [30, 200, 40], [30, 40, 220], [230, 220, 30]];
  mkdirSync(join(dir, 'img'), { recursive: true });
  const lines = [];
  for (let i = 0; i < n; i++) {
    const c = colours[i % 4];
    const png = await sharp({ create: { width: size, height: size, channels: 3, background: { r: c[0], g: c[1], b: c[2] } } }).png().toBuffer();
    writeFileSync(join(dir, `img/${i}.png`), png);
    lines.push(JSON.stringify({ id: `bench/${i}`, task: 'emo-c', source: 'bench', split: 'train', media: { type: 'image', path: `img/${i}.png` }, options: words, answer: words[i % 4] }));
  }
  writeFileSync(join(dir, 'train.jsonl'), lines.join('\n') + '\n');
  return join(dir, 'train.jsonl');
}

// ---------------------------------------------------------------------------- run
// An EMOLLM_* path switch is off when set to "0" or "off" (base/env_switch.h).
const switchOff = (name) => process.env[name] === '0' || process.env[name] === 'off';

async function runOne(name, o, lib, log) {
  const folder = name === 'tiny' ? TINY : ensure1b(o.layers ?? TEXT.num_hidden_layers, log);
  const work = join(tmpdir(), `emollm-bench-train-${process.pid}-${name}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  try {
    await lib.initMvp(folder, join(work, 'start'));
    const samples = o.batch * (o.steps + 1);
    const bench = await makeBench(work, samples, name === 'tiny' ? 42 : 336);
    const times = [];
    const r = await lib.trainMvp({
      model: join(work, 'start'), bench, out: join(work, 'out'), steps: o.steps + 1, batch: o.batch, threads: o.threads, lr: 1e-4, seed: 0,
      onStep: (s) => times.push({ t: performance.now(), tokens: s.tokens, phases: s.phaseSeconds }),
    });
    // steps 2..: features cached, training only
    const dt = (times[times.length - 1].t - times[0].t) / 1000;
    const sps = (o.batch * o.steps) / dt;
    // where a timed sample's time goes: the trainer's phase counters over the timed steps, per sample
    const last = times[times.length - 1].phases, firstP = times[0].phases;
    const phasesPerSampleS = {};
    for (const k of Object.keys(last)) phasesPerSampleS[k] = (last[k] - firstP[k]) / (o.batch * o.steps);
    // anchor: inference forward passes of the same prompts
    const model = await lib.loadModel(join(work, 'out'), { threads: o.threads });
    const n = Math.min(o.batch, 4);
    const t0 = performance.now();
    for (let i = 0; i < n; i++)
      await model.logits([{ role: 'user', content: [{ type: 'image', image: join(work, `img/${i}.png`) }, { type: 'text', text: 'Which emotion does the image show? Options: happy, calm, sad, surprised.' }] }]);
    const forwardS = (performance.now() - t0) / 1000 / n;
    await model.close();
    const rss = process.resourceUsage().maxRSS / 1024;
    const phaseSum = Object.values(phasesPerSampleS).reduce((a, b) => a + b, 0);
    const phasesOverForward = {};
    for (const [k, v] of Object.entries(phasesPerSampleS)) phasesOverForward[k] = v / forwardS;
    return { model: name, backwardKernels: switchOff('EMOLLM_BACKWARD_AVX512') ? 'portable loops (EMOLLM_BACKWARD_AVX512=0)' : 'default',
      loadAverage: loadavg().map((x) => Number(x.toFixed(2))), phasesPerSampleS, phasesOverForward, phasesCoverage: phaseSum * sps, layers: name === 'tiny' ? 2 : (o.layers ?? TEXT.num_hidden_layers), threads: o.threads, batch: o.batch, steps: o.steps, samplesPerSecond: sps, tokensPerSecond: (times[times.length - 1].tokens - times[0].tokens) / dt, peakRssMiB: rss, epochHours: o.epochSamples / sps / 3600, forwardMs: forwardS * 1000, trainOverForward: 1 / sps / forwardS, finalLoss: r.finalLoss };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

async function main() {
  const o = args(process.argv.slice(2));
  const log = (m) => console.error(m);
  const dist = join(root, 'dist');
  if (!existsSync(join(dist, 'train', 'train_mvp.js'))) throw new Error('dist/ is not built: run `npx tsc -p tsconfig.json` (and the addon) first');
  const { initMvp, loadModel } = await import(pathToFileURL(join(dist, 'index.js')).href);
  const { trainMvp } = await import(pathToFileURL(join(dist, 'train', 'train_mvp.js')).href);
  if (o.models.includes('tiny') && !existsSync(join(TINY, 'model.safetensors'))) throw new Error(`${TINY} not found`);
  const rows = [];
  for (const m of o.models) {
    log(`train-mvp ${m}: ${o.steps} timed steps of batch ${o.batch} at ${o.threads} threads`);
    rows.push(await runOne(m, o, { initMvp, trainMvp, loadModel }, log));
  }
  if (o.json) console.log(JSON.stringify(rows, null, 2));
  else {
    console.log('model  layers threads batch  samples/s  tokens/s  peak RSS MiB  train/forward  one epoch of ' + o.epochSamples + ' samples');
    for (const r of rows)
      console.log(`${r.model.padEnd(6)} ${String(r.layers).padStart(6)} ${String(r.threads).padStart(7)} ${String(r.batch).padStart(5)} ${r.samplesPerSecond.toFixed(3).padStart(10)} ${r.tokensPerSecond.toFixed(0).padStart(9)} ${r.peakRssMiB.toFixed(0).padStart(13)} ${(r.trainOverForward.toFixed(1) + 'x').padStart(14)}  ${r.epochHours.toFixed(1)} h`);
    console.log('train/forward: seconds per trained sample over seconds per inference forward pass of the same prompt (same run)');
    for (const r of rows)
      console.log(`${r.model} per sample, x forward: ` + Object.entries(r.phasesOverForward).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ') + ` (phases cover ${(100 * r.phasesCoverage).toFixed(0)}% of the sample time; load ${r.loadAverage.join(' ')})`);
  }
}

main().catch((e) => {
  console.error(`bench:train: ${e.message}`);
  process.exit(1);
});
