#!/usr/bin/env node
/**
 * The `emollm` command line. Every command declares its options in a table (a CommandSpec) that
 * lib/cli/args.ts parses strictly (unknown flags and missing values are errors) and turns into
 * the command's `--help`. Adding a flag is one table entry.
 */
import { readFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename, join } from 'node:path';

import { JSON_OPTION, formatUsage, parseCommand, UsageError, type CommandSpec, type ParsedCommand } from './cli/args.js';
import { EmollmError } from './errors.js';
import { DTYPES, cpuInfo, type DType } from './kernels.js';
import { runtimeInfo } from './runtime.js';
import { quantizeGguf } from './quantize.js';
import { QUANT_MIXES, type QuantMix } from './quantize_mix.js';
import { initMvp, type InitMvpOptions } from './init_mvp.js';
import { TRAIN_MVP_SPEC } from './train/spec.js';
import { ANALYZE_TASKS, analyze, formatAnalysis } from './analyze.js';
import { loadModel, type GenerateOptions, type LoadModelOptions, type Model } from './model.js';
import { native, packageRoot } from './native.js';
import { pull, resolveHfPath } from './hub.js';
import { ProgressBar, formatBytes } from './cli/progress_bar.js';
import { BENCH_BUILD_SPEC, runBenchCommand } from './emobench/build.js';
import { EVAL_COMPARE_SPEC, EVAL_LEADERBOARD_SPEC, EVAL_SPEC, evalCommand } from './emobench/eval.js';
import { WORKER_SPEC } from './emobench/worker_spec.js';
import { SERVE_SPEC } from './serve/spec.js';

const JSON_FLAG = JSON_OPTION;

const INFO = {
  name: 'info',
  synopsis: '',
  summary: 'CPU features, instruction-set level and threads the kernels use',
  options: { json: JSON_FLAG },
} as const satisfies CommandSpec;

const INSPECT = {
  name: 'inspect',
  synopsis: '<path>',
  summary: 'tensors and metadata of a .gguf, a .safetensors, a model folder (config.json + model.safetensors[.index.json]) or hf:owner/repo',
  positionals: { min: 1 },
  options: { json: JSON_FLAG },
} as const satisfies CommandSpec;

const GENERATE = {
  name: 'generate',
  synopsis: '<model> [prompt]',
  summary: 'stream a continuation from a .gguf or a Hugging Face folder (or hf:owner/repo, see emollm pull)',
  positionals: { min: 1, max: 2 },
  options: {
    'max-tokens': { type: 'integer', description: 'tokens to generate (default 128)' },
    temperature: { type: 'number', value: 'T', description: 'sampling temperature (default 0: greedy)' },
    seed: { type: 'integer', description: 'sampling seed' },
    context: { type: 'integer', description: 'KV cache size in tokens' },
    'kv-type': { type: 'string', choices: ['f32', 'f16', 'bf16'], description: 'KV cache element type (default f32; llama.cpp uses f16)' },
    'bf16-products': { type: 'boolean', description: 'with --kv-type bf16: decode attention on bf16 products (AVX512-BF16); faster, not bit-equal' },
    threads: { type: 'integer', description: 'compute threads (default: physical cores)' },
    tokenizer: { type: 'string', value: 'PATH', description: 'tokenizer for a folder without tokenizer.json (.gguf, tokenizer.json, llama2.c .bin)' },
  },
  notes: '  a prompt that starts with "-" goes after --:  emollm generate model.gguf -- "-x"',
} as const satisfies CommandSpec;

const QUANTIZE = {
  name: 'quantize',
  synopsis: `<in.gguf> <out.gguf> <${[...QUANT_MIXES, ...DTYPES].join('|')}>`,
  summary:
    "convert a GGUF model's weight matrices (as llama-quantize's reference types; rows that are not whole\n" +
    '256-blocks fall back as llama.cpp does: q4_K->q5_0, q5_K->q5_1, q6_K->q8_0). A dtype converts every\n' +
    "matrix (llama-quantize --pure); Q4_K_M / Q5_K_M / Q4_K_S / Q5_K_S choose per tensor as llama.cpp's\n" +
    'presets do (attn_v and ffn_down in the first and last eighth of the layers and every third layer\n' +
    'between get q6_K in the _M mixes; the output matrix q6_K)',
  positionals: { min: 3 },
  options: { json: JSON_FLAG },
} as const satisfies CommandSpec;

const ANALYZE = {
  name: 'analyze',
  synopsis: '<image|video>',
  summary:
    'emotion, intent, hate, humor or sarcasm in an image or video; offline with the face perspective,\n' +
    'or with a LLaVA / EmoLLM model (EmoPrompt + decoding)',
  positionals: { min: 1 },
  options: {
    task: { type: 'string', choices: ANALYZE_TASKS, description: 'what to recognise (default emotion)' },
    text: { type: 'string', value: '"..."', description: 'caption, utterance or meme text that comes with the image' },
    model: { type: 'string', value: 'PATH', description: 'LLaVA / EmoLLM folder, or a GGUF (with --mmproj PATH)' },
    mmproj: { type: 'string', value: 'PATH', description: 'multimodal projector GGUF beside a text GGUF' },
    labels: { type: 'list', value: 'a,b,c', description: "close-set labels (default: Ekman 7 for emotion, MIntRec's 20 for intent)" },
    frames: { type: 'integer', description: 'video frames to sample with ffmpeg (default 8)' },
    'max-pixels': { type: 'integer', value: 'N', description: 'largest image or frame accepted, in pixels (default 100000000; lower it for untrusted input)' },
    threads: { type: 'integer', description: 'compute threads' },
    json: JSON_FLAG,
  },
} as const satisfies CommandSpec;

const INIT_MVP = {
  name: 'init-mvp',
  synopsis: '<llava-dir> <out-dir>',
  summary:
    'EmoLLM checkpoint from a llava-hf folder: config.json with an `emollm` section + emollm_mvp.safetensors\n' +
    '(global head = the LLaVA projector, gate open; multi-layer, attention-pool and face heads closed:\n' +
    "outputs equal the base's until trained). Weights are symlinked unless --copy. Also llava_next folders\n" +
    "(the MVP per anyres tile) and qwen2_vl folders (global head = the patch merger's MLP; low-level head closed).",
  positionals: { min: 2 },
  options: {
    copy: { type: 'boolean', description: 'copy the base weights' },
    'early-layer': { type: 'integer', description: 'hidden-state index of the early layer (default ~n_layers/4)' },
    queries: { type: 'integer', description: 'attention-pool queries (default 8)' },
    seed: { type: 'integer', description: 'seed of the new heads' },
    json: JSON_FLAG,
  },
} as const satisfies CommandSpec;

const PULL = {
  name: 'pull',
  synopsis: '<repo>[@revision]',
  summary:
    'download a model repository from the Hugging Face hub (or HF_ENDPOINT) into the hub cache: resumes\n' +
    "partial files, checks every file's SHA-256 / git hash, uses HF_TOKEN; load it as hf:<repo>",
  positionals: { min: 1 },
  options: {
    include: { type: 'string', multiple: true, value: 'PATTERN', description: "only files matching (repeatable; * matches across /, e.g. '*Q4_K_M.gguf')" },
    'cache-dir': { type: 'string', value: 'DIR', description: 'the hub cache (default HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub)' },
    endpoint: { type: 'string', value: 'URL', description: 'the hub or a mirror (default HF_ENDPOINT, https://huggingface.co)' },
    json: JSON_FLAG,
  },
} as const satisfies CommandSpec;

async function pullCommand(argv: readonly string[]): Promise<number> {
  const p = parse(PULL, argv);
  if (!p) return 0;
  const v = p.values;
  const ac = new AbortController();
  const onSig = (): void => ac.abort();
  process.once('SIGINT', onSig);
  const bar = new ProgressBar();
  let current = '';
  try {
    const r = await pull(p.positionals[0]!, {
      ...(v.include ? { include: v.include } : {}),
      ...(v['cache-dir'] !== undefined ? { cacheDir: v['cache-dir'] } : {}),
      ...(v.endpoint !== undefined ? { endpoint: v.endpoint } : {}),
      signal: ac.signal,
      onProgress: (x) => {
        if (v.json) return;
        if (x.file !== current) {
          bar.done();
          current = x.file;
        }
        bar.update(`[${x.index + 1}/${x.files}] ${x.file}`, x.fileBytes, x.fileTotal);
      },
    });
    bar.done();
    if (v.json) console.log(JSON.stringify(r, null, 2));
    else {
      const counts = { cached: 0, downloaded: 0, resumed: 0 };
      for (const f of r.files) counts[f.status]++;
      console.log(
        `${r.repo}@${r.revision} (${r.commit.slice(0, 10)}): ${r.files.length} files, ${formatBytes(r.files.reduce((s, f) => s + f.size, 0))} ` +
          `(${counts.downloaded} downloaded, ${counts.resumed} resumed, ${counts.cached} already cached; ${formatBytes(r.downloadedBytes)} transferred, checksums verified)`,
      );
      console.log(`${r.dir}\nload it with: emollm generate hf:${r.repo}${r.revision === 'main' ? '' : `@${r.revision}`} "..."`);
    }
    return 0;
  } finally {
    bar.done();
    process.removeListener('SIGINT', onSig);
  }
}

/** loadModel with a progress bar on stderr (reading the weights, then the native load). */
async function loadWithBar(path: string, options: LoadModelOptions, quiet = false): Promise<Model> {
  const bar = new ProgressBar();
  try {
    return await loadModel(path, {
      ...options,
      onProgress: (p) => {
        if (quiet) return;
        if (p.phase === 'read') bar.update(`loading ${basename(path)}`, p.bytes, p.total);
        else if (!p.done) bar.done();
      },
    });
  } finally {
    bar.done();
  }
}

/** A command: its table, and what it does with the parsed arguments. */
interface Command {
  spec: CommandSpec;
  run(argv: readonly string[]): Promise<number>;
}

/** Parses argv against spec; prints the usage and returns undefined on --help. */
function parse<S extends CommandSpec>(spec: S, argv: readonly string[]): ParsedCommand<S> | undefined {
  const p = parseCommand(spec, argv);
  if (!p.help) return p;
  console.log(formatUsage(spec));
  return undefined;
}

interface TensorRow {
  name: string;
  dtype: string;
  shape: number[];
  nbytes: number;
}

async function inspect(path: string, json: boolean): Promise<void> {
  if (path.startsWith('hf:')) path = resolveHfPath(path);
  const st = await stat(path).catch((cause: unknown) => {
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${path}: no such file or folder`, { file: path, cause });
  });
  const b = native();
  let header: { tensors?: TensorRow[] } & Record<string, unknown>;
  let config: unknown;
  if (st.isDirectory()) {
    config = await b.readConfig(join(path, 'config.json')).catch(() => undefined);
    header = (await b.inspectSafetensors(path)) as typeof header;
  } else if (path.endsWith('.gguf')) {
    header = (await b.inspectGguf(path)) as typeof header;
  } else {
    header = (await b.inspectSafetensors(path)) as typeof header;
  }
  if (json) {
    console.log(JSON.stringify({ config, ...header }, null, 2));
    return;
  }
  const tensors = header.tensors ?? [];
  const total = tensors.reduce((s, t) => s + t.nbytes, 0);
  console.log(`${path}: ${tensors.length} tensors, ${formatBytes(total)}`);
  if (config && typeof config === 'object') console.log(`config: ${JSON.stringify(config)}`);
  for (const t of tensors.slice(0, 40)) console.log(`  ${t.name.padEnd(48)} ${t.dtype.padEnd(6)} [${t.shape.join(', ')}]`);
  if (tensors.length > 40) console.log(`  ... ${tensors.length - 40} more (--json lists all)`);
}


async function generate(argv: readonly string[]): Promise<number> {
  const p = parse(GENERATE, argv);
  if (!p) return 0;
  const v = p.values;
  const [path, prompt = ''] = p.positionals as [string, string?];
  const load: LoadModelOptions = {};
  const gen: GenerateOptions = { maxTokens: v['max-tokens'] ?? 128 };
  if (v.temperature !== undefined) gen.temperature = v.temperature;
  if (v.seed !== undefined) gen.seed = v.seed;
  if (v.context !== undefined) load.contextSize = v.context;
  if (v['kv-type'] !== undefined) load.kvCacheType = v['kv-type'];
  if (v['bf16-products']) load.decodeBf16Products = true;
  if (v.threads !== undefined) load.threads = v.threads;
  if (v.tokenizer !== undefined) load.tokenizer = v.tokenizer;
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  gen.signal = ac.signal;
  const model = await loadWithBar(path, { ...load, signal: ac.signal });
  try {
    const ids = prompt === '' && model.tokenizer.bosId !== undefined ? [model.tokenizer.bosId] : prompt;
    process.stdout.write(prompt);
    // The chunks continue the prompt: the first one carries its own leading space.
    const g = model.generate(ids, gen);
    for await (const chunk of g) process.stdout.write(chunk.text);
    const r = await g.result;
    process.stdout.write('\n');
    console.error(`[${r.tokens.length} tokens, stop: ${r.stopReason}]`);
  } finally {
    await model.close();
  }
  return 0;
}

async function info(argv: readonly string[]): Promise<number> {
  const p = parse(INFO, argv);
  if (!p) return 0;
  const i = cpuInfo();
  const runtime = runtimeInfo();
  if (p.values.json) console.log(JSON.stringify({ ...i, runtime }, null, 2));
  else {
    const on = Object.entries(i.features).filter(([, v]) => v).map(([k]) => k);
    const microarch = i.family > 0 ? ` (family ${i.family} model ${i.model}${i.features.avx512DoublePumped ? ', AVX-512 double-pumped' : ''})` : '';
    console.log(`cpu:      ${i.brand}${microarch}`);
    console.log(`cores:    ${i.physicalCores} physical, ${i.logicalCpus} logical; kernels use ${i.threads} threads`);
    console.log(
      `runtime:  device ${runtime.device}, ${runtime.threads} threads; devices in this build: ${runtime.devices.join(', ')}` +
        (runtime.cudaBuilt ? ' (CUDA kernels built)' : ' (no CUDA: `npm run build:cmake` with nvcc for one)'),
    );
    console.log(`kernels:  ${i.isaActive} (best supported: ${i.isaDetected})`);
    console.log(`features: ${on.join(' ')}`);
  }
  return 0;
}

async function quantize(argv: readonly string[]): Promise<number> {
  const p = parse(QUANTIZE, argv);
  if (!p) return 0;
  const [input, output, target] = p.positionals as [string, string, string];
  const type: DType | QuantMix | undefined = [...QUANT_MIXES, ...DTYPES].find((t) => t.toLowerCase() === target.toLowerCase()); // Q4_K, q4_k, q4_K
  if (!type)
    throw new UsageError(`quantize: unknown type ${JSON.stringify(target)} (${[...QUANT_MIXES, ...DTYPES].join(', ')})`, formatUsage(QUANTIZE));
  const r = await quantizeGguf(input, output, type);
  if (p.values.json) console.log(JSON.stringify(r, null, 2));
  else {
    const fb = Object.values(r.fallbacks);
    const fbText = fb.length ? `, ${fb.length} to llama.cpp's fallback ${[...new Set(fb)].join('/')} (rows not whole 256-blocks)` : '';
    if ((QUANT_MIXES as readonly string[]).includes(type)) {
      const counts: Record<string, number> = {};
      for (const n of r.converted) counts[r.types[n]!] = (counts[r.types[n]!] ?? 0) + 1;
      const mixText = Object.entries(counts).map(([t, c]) => `${c} ${t}`).join(', ');
      console.log(`${output}: ${type}: ${r.converted.length} tensors converted (${mixText})${fbText}, ${r.kept.length} kept`);
    } else console.log(`${output}: ${r.converted.length - fb.length} tensors converted to ${type}${fbText}, ${r.kept.length} kept`);
  }
  return 0;
}

async function analyzeCommand(argv: readonly string[]): Promise<number> {
  const p = parse(ANALYZE, argv);
  if (!p) return 0;
  const v = p.values;
  const json = v.json === true;
  const input = p.positionals[0]!;
  const progress = (m: string): void => {
    if (!json) process.stderr.write(`… ${m}\n`);
  };
  let model: Model | undefined;
  if (v.model) {
    progress(`loading ${v.model}`);
    model = await loadWithBar(v.model, { ...(v.mmproj ? { mmproj: v.mmproj } : {}), ...(v.threads !== undefined ? { threads: v.threads } : {}) }, json);
  }
  try {
    const r = await analyze(input, {
      task: v.task ?? 'emotion',
      ...(v.text !== undefined ? { text: v.text } : {}),
      ...(model ? { model } : {}),
      ...(v.labels?.length ? { labels: v.labels } : {}),
      ...(v.frames !== undefined ? { frames: v.frames } : {}),
      ...(v['max-pixels'] !== undefined ? { maxPixels: v['max-pixels'] } : {}),
      onProgress: progress,
    });
    console.log(json ? JSON.stringify(r, null, 2) : formatAnalysis(r));
  } finally {
    await model?.close();
  }
  return 0;
}

async function initMvpCommand(argv: readonly string[]): Promise<number> {
  const p = parse(INIT_MVP, argv);
  if (!p) return 0;
  const v = p.values;
  const opts: InitMvpOptions = {};
  if (v.copy) opts.copy = true;
  if (v['early-layer'] !== undefined) opts.earlyLayer = v['early-layer'];
  if (v.queries !== undefined) opts.queries = v.queries;
  if (v.seed !== undefined) opts.seed = v.seed;
  const [from, to] = p.positionals as [string, string];
  const r = await initMvp(from, to, opts);
  if (v.json) console.log(JSON.stringify(r, null, 2));
  else {
    console.log(`${r.outDir}: EmoLLM checkpoint (${r.linked.length} files linked, ${r.copied.length} copied)`);
    for (const x of r.section.perspectives)
      console.log(`  ${String(x.name).padEnd(10)} ${x.type.padEnd(16)} layers ${JSON.stringify(x.layers)}  gate ${x.gate}`);
  }
  return 0;
}

/** Every command, in the order the top-level usage lists them. */
const COMMANDS: Record<string, Command> = {
  analyze: { spec: ANALYZE, run: analyzeCommand },
  eval: { spec: EVAL_SPEC, run: (a) => evalCommand(a) },
  'eval compare': { spec: EVAL_COMPARE_SPEC, run: (a) => evalCommand(['compare', ...a]) },
  'eval leaderboard': { spec: EVAL_LEADERBOARD_SPEC, run: (a) => evalCommand(['leaderboard', ...a]) },
  bench: { spec: BENCH_BUILD_SPEC, run: (a) => runBenchCommand(a) },
  generate: { spec: GENERATE, run: generate },
  info: { spec: INFO, run: info },
  inspect: {
    spec: INSPECT,
    run: async (a) => {
      const p = parse(INSPECT, a);
      if (p) await inspect(p.positionals[0]!, p.values.json === true);
      return 0;
    },
  },
  quantize: { spec: QUANTIZE, run: quantize },
  'init-mvp': { spec: INIT_MVP, run: initMvpCommand },
  'train-mvp': { spec: TRAIN_MVP_SPEC, run: async (a) => (await import('./train/cli.js')).trainMvpCommand(a) },
  pull: { spec: PULL, run: pullCommand },
  // loaded on use: fastify and bullmq stay out of the other commands' start-up
  serve: { spec: SERVE_SPEC, run: async (a) => (await import('./serve/cli.js')).serveCommand(a) },
  worker: { spec: WORKER_SPEC, run: async (a) => (await import('./emobench/worker.js')).workerCommand(a) },
};

function version(): string {
  return (JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version;
}

function topUsage(): string {
  const lines = ['usage: emollm <command> [options]      emollm <command> --help for its options', '', 'commands:'];
  for (const [key, c] of Object.entries(COMMANDS)) {
    const head = `${c.spec.name} ${c.spec.synopsis}`.trim();
    const summary = c.spec.summary.split('\n')[0]!;
    lines.push(head.length < 34 ? `  ${head.padEnd(34)} ${summary}` : `  ${head}\n  ${' '.repeat(34)} ${summary}`);
    void key;
  }
  lines.push('', 'options:', '  -h, --help                         this help', '  -v, --version                      the version of emollm');
  return lines.join('\n');
}

/** Runs the command line; returns the exit code. */
async function main(argv: readonly string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined) {
    console.error(topUsage());
    return 2;
  }
  if (cmd === '-h' || cmd === '--help' || cmd === 'help') {
    console.log(topUsage());
    return 0;
  }
  if (cmd === '-v' || cmd === '--version') {
    console.log(version());
    return 0;
  }
  const sub = cmd === 'eval' && (rest[0] === 'compare' || rest[0] === 'leaderboard') ? COMMANDS[`eval ${rest[0]}`] : undefined;
  const command = sub ?? COMMANDS[cmd];
  if (!command || cmd.includes(' ')) {
    console.error(`emollm: unknown ${cmd.startsWith('-') ? 'option' : 'command'} ${JSON.stringify(cmd)}\n\n${topUsage()}`);
    return 2;
  }
  return command.run(sub ? rest.slice(1) : rest);
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    if (e instanceof UsageError) {
      console.error(`emollm ${e.message}\n\n${e.usage}`);
      process.exit(2);
    }
    if (e instanceof EmollmError) console.error(`emollm: ${e.message} [${e.code}]`);
    else console.error(e);
    process.exit(1);
  },
);
