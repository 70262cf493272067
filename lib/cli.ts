#!/usr/bin/env node
/**
 * The `emollm` command line.
 *   emollm info                  CPU features and the kernel paths in use
 *   emollm inspect <file|dir>    header of a GGUF file, safetensors file or HF model folder
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';

import { EmollmError } from './errors.js';
import { DTYPES, configure, cpuInfo, type DType } from './kernels.js';
import { runtimeInfo, type Device } from './runtime.js';
import { quantizeGguf } from './quantize.js';
import { initMvp, type InitMvpOptions } from './init_mvp.js';
import { ANALYZE_TASKS, analyze, formatAnalysis, type AnalyzeTask } from './analyze.js';
import { loadModel, type GenerateOptions, type LoadModelOptions, type Model } from './model.js';
import { native } from './native.js';
import { runBenchCommand } from './emobench/build.js';
import { evalCommand } from './emobench/eval.js';

const USAGE = `usage: emollm <command>

commands:
  analyze <image|video>  emotion, intent, hate, humor or sarcasm in an image or video; offline with
                         the face perspective, or with a LLaVA / EmoLLM model (EmoPrompt + decoding)
    --task T             emotion (default) | emotion-open | intent | hate | humor | sarcasm
    --text "..."         caption, utterance or meme text that comes with the image
    --model PATH         LLaVA / EmoLLM folder, or a GGUF (with --mmproj PATH)
    --labels a,b,c       close-set labels (default: Ekman 7 for emotion, MIntRec's 20 for intent)
    --frames N           video frames to sample with ffmpeg (default 8)
  eval --bench FILE --model SPEC --out DIR
                         EmoBench evaluation (SPEC: model folder | gguf | http://host:port/v1#name
                         | face | random | majority); eval compare RUN_A RUN_B; eval --help
  bench build --source <dataset>=<dir> ... --out <file.jsonl> [--media-root DIR] [--split test]
                         EmoBench JSONL from the source datasets' release files (emollm bench --help)
  info                   CPU features, instruction-set level and threads the kernels use
  inspect <path>         tensors and metadata of a .gguf, a .safetensors, or a model folder
                         (config.json + model.safetensors[.index.json])
  generate <model> [prompt]
                         stream a continuation from a .gguf or a Hugging Face folder
    --max-tokens N       (default 128)   --temperature T (default 0: greedy)   --seed S
    --context N          KV cache size   --threads N     --tokenizer PATH (folder without tokenizer.json)
  quantize <in.gguf> <out.gguf> <q8_0|q4_0|f16|bf16|f32>
                         convert a GGUF model's weight matrices (as llama-quantize's reference types)
  init-mvp <llava-dir> <out-dir>
                         EmoLLM checkpoint from a llava-hf folder: config.json with an \`emollm\`
                         section + emollm_mvp.safetensors (global head = the LLaVA projector, gate
                         open; multi-layer, attention-pool and face heads closed: outputs equal the
                         base's until trained). Weights are symlinked unless --copy.
    --copy               copy the base weights   --early-layer N (default ~n_layers/4)
    --queries N          attention-pool queries (default 8)   --seed S
options:
  --device cpu|cuda      where native compute runs (every command; cuda needs a CUDA build)
  --threads N            CPU compute threads (every command; default: physical cores)
  --json                 machine-readable output
  -h, --help             this help`;

interface TensorRow {
  name: string;
  dtype: string;
  shape: number[];
  nbytes: number;
}

function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

async function inspect(path: string, json: boolean): Promise<void> {
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

/** Removes `--name value` from args and returns the value. */
function takeOption(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const v = args[i + 1];
  if (v === undefined) throw new EmollmError('ERR_INVALID_ARGUMENT', `${name} needs a value`);
  args.splice(i, 2);
  return v;
}

function takeNumber(args: string[], name: string): number | undefined {
  const v = takeOption(args, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new EmollmError('ERR_INVALID_ARGUMENT', `${name} must be a number, got ${JSON.stringify(v)}`);
  return n;
}

async function generate(args: string[]): Promise<void> {
  const load: LoadModelOptions = {};
  const gen: GenerateOptions = { maxTokens: takeNumber(args, '--max-tokens') ?? 128 };
  const temperature = takeNumber(args, '--temperature');
  const seed = takeNumber(args, '--seed');
  const context = takeNumber(args, '--context');
  const threads = takeNumber(args, '--threads');
  const tokenizer = takeOption(args, '--tokenizer');
  if (temperature !== undefined) gen.temperature = temperature;
  if (seed !== undefined) gen.seed = seed;
  if (context !== undefined) load.contextSize = context;
  if (threads !== undefined) load.threads = threads;
  if (tokenizer !== undefined) load.tokenizer = tokenizer;
  const [path, prompt = ''] = args;
  if (!path) throw new EmollmError('ERR_INVALID_ARGUMENT', 'generate needs a model path');
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  gen.signal = ac.signal;
  const model = await loadModel(path, load);
  try {
    const ids = prompt === '' && model.tokenizer.bosId !== undefined ? [model.tokenizer.bosId] : prompt;
    process.stdout.write(prompt);
    const g = model.generate(ids, gen);
    for await (const chunk of g) process.stdout.write(chunk.text);
    const r = await g.result;
    process.stdout.write('\n');
    console.error(`[${r.tokens.length} tokens, stop: ${r.stopReason}]`);
  } finally {
    await model.close();
  }
}

/**
 * The runtime configuration (`--device`, `--threads`) of any command: taken out of the arguments
 * and made the process default (configure), so models, face analyzers and evaluations all use it.
 */
function applyRuntimeOptions(args: string[]): void {
  const device = takeOption(args, '--device');
  const threads = takeNumber(args, '--threads');
  if (device === undefined && threads === undefined) return;
  configure({ ...(device !== undefined ? { device: device as Device } : {}), ...(threads !== undefined ? { threads } : {}) });
}

async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  const args = argv.filter((a) => a !== '--json');
  applyRuntimeOptions(args);
  const [cmd, ...rest] = args;
  if (!cmd || cmd === '-h' || cmd === '--help') {
    console.log(USAGE);
    return cmd ? 0 : 1;
  }
  switch (cmd) {
    case 'info': {
      const info = cpuInfo();
      const runtime = runtimeInfo();
      if (json) console.log(JSON.stringify({ ...info, runtime }, null, 2));
      else {
        const on = Object.entries(info.features).filter(([, v]) => v).map(([k]) => k);
        console.log(`cpu:      ${info.brand}`);
        console.log(`cores:    ${info.physicalCores} physical, ${info.logicalCpus} logical; kernels use ${info.threads} threads`);
        console.log(
          `runtime:  device ${runtime.device}, ${runtime.threads} threads; devices in this build: ${runtime.devices.join(', ')}` +
            (runtime.cudaBuilt ? ' (CUDA kernels built)' : ' (no CUDA: `npm run build:cmake` with nvcc for one)'),
        );
        console.log(`kernels:  ${info.isaActive} (best supported: ${info.isaDetected})`);
        console.log(`features: ${on.join(' ')}`);
      }
      return 0;
    }
    case 'inspect': {
      if (!rest[0]) throw new EmollmError('ERR_INVALID_ARGUMENT', 'inspect needs a path');
      await inspect(rest[0], json);
      return 0;
    }
    case 'quantize': {
      const [input, output, target] = rest;
      if (!input || !output || !target) throw new EmollmError('ERR_INVALID_ARGUMENT', 'quantize needs <in.gguf> <out.gguf> <type>');
      if (!(DTYPES as readonly string[]).includes(target))
        throw new EmollmError('ERR_INVALID_ARGUMENT', `unknown type ${JSON.stringify(target)} (${DTYPES.join(', ')})`);
      const r = await quantizeGguf(input, output, target as DType);
      if (json) console.log(JSON.stringify(r, null, 2));
      else console.log(`${output}: ${r.converted.length} tensors converted to ${target}, ${r.kept.length} kept`);
      return 0;
    }
    case 'generate':
      await generate(rest);
      return 0;
    case 'analyze': {
      const task = takeOption(rest, '--task') ?? 'emotion';
      if (!(ANALYZE_TASKS as readonly string[]).includes(task))
        throw new EmollmError('ERR_INVALID_ARGUMENT', `unknown task ${JSON.stringify(task)} (${ANALYZE_TASKS.join(', ')})`);
      const text = takeOption(rest, '--text');
      const modelPath = takeOption(rest, '--model');
      const mmproj = takeOption(rest, '--mmproj');
      const labels = takeOption(rest, '--labels');
      const frames = takeNumber(rest, '--frames');
      const threads = takeNumber(rest, '--threads');
      const input = rest[0];
      if (!input) throw new EmollmError('ERR_INVALID_ARGUMENT', 'analyze needs an image or video path');
      const progress = (m: string): void => {
        if (!json) process.stderr.write(`… ${m}\n`);
      };
      let model: Model | undefined;
      if (modelPath) {
        progress(`loading ${modelPath}`);
        model = await loadModel(modelPath, { ...(mmproj ? { mmproj } : {}), ...(threads !== undefined ? { threads } : {}) });
      }
      try {
        const r = await analyze(input, {
          task: task as AnalyzeTask,
          ...(text !== undefined ? { text } : {}),
          ...(model ? { model } : {}),
          ...(labels ? { labels: labels.split(',').map((l) => l.trim()).filter((l) => l !== '') } : {}),
          ...(frames !== undefined ? { frames } : {}),
          onProgress: progress,
        });
        console.log(json ? JSON.stringify(r, null, 2) : formatAnalysis(r));
      } finally {
        await model?.close();
      }
      return 0;
    }
    case 'bench':
      return runBenchCommand(rest, json);
    case 'init-mvp': {
      const opts: InitMvpOptions = {};
      const copy = rest.indexOf('--copy');
      if (copy >= 0) {
        rest.splice(copy, 1);
        opts.copy = true;
      }
      const early = takeNumber(rest, '--early-layer');
      const queries = takeNumber(rest, '--queries');
      const seed = takeNumber(rest, '--seed');
      if (early !== undefined) opts.earlyLayer = early;
      if (queries !== undefined) opts.queries = queries;
      if (seed !== undefined) opts.seed = seed;
      const [from, to] = rest;
      if (!from || !to) throw new EmollmError('ERR_INVALID_ARGUMENT', 'init-mvp needs <llava-dir> <out-dir>');
      const r = await initMvp(from, to, opts);
      if (json) console.log(JSON.stringify(r, null, 2));
      else {
        console.log(`${r.outDir}: EmoLLM checkpoint (${r.linked.length} files linked, ${r.copied.length} copied)`);
        for (const p of r.section.perspectives)
          console.log(`  ${String(p.name).padEnd(10)} ${p.type.padEnd(16)} layers ${JSON.stringify(p.layers)}  gate ${p.gate}`);
      }
      return 0;
    }
    case 'eval':
      return evalCommand(rest, json);
    default:
      console.error(`emollm: unknown command "${cmd}"\n\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    if (e instanceof EmollmError) console.error(`emollm: ${e.message} [${e.code}]`);
    else console.error(e);
    process.exit(1);
  },
);
