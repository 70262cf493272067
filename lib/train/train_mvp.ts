/**
 * `emollm train-mvp` / {@link trainMvp}: trains an EmoLLM checkpoint's Multi-perspective Visual
 * Projection on EmoBench samples with the native trainer (native/train/mvp_trainer.h: language
 * model and vision tower frozen; the decoder's forward and backward on the CPU or, with
 * `device: 'cuda'`, on the GPU, the MVP heads and AdamW on the CPU).
 *
 * Each sample becomes the token ids the evaluator scores, built by the evaluator's own perception
 * path (lib/perception.ts, as `emollm eval` / `analyze`): the image, or frames sampled evenly from
 * the video (ffmpeg) of which `modelFrames` go to the model as images; with the face perspective
 * on, the faces face-api finds in each, stated as EmoPrompt cues and given to the face-region heads
 * as boxes; the EmoPrompt through the model's chat template, followed by the gold answer's tokens
 * (the loss is their mean cross-entropy). Images and frames go through the model's image
 * processor and the frozen tower once; the tower features are cached on disk (feature_cache.ts).
 *
 * Determinism and resume: step k uses samples [k * batch, (k + 1) * batch) of the sequence of
 * epoch permutations drawn from `seed`; a checkpoint holds the f32 master weights, the AdamW
 * moments and k, so a resumed run computes exactly the steps an uninterrupted one would (same
 * options, same thread count).
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, realpath } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';

import { EmollmError } from '../errors.js';
import { loadModel, type Model } from '../model.js';
import type { ChatContentPart, ChatMessage } from '../chat_template.js';
import type { FaceAnalyzer } from '../face.js';
import type { ImageInput } from '../image.js';
import type { FaceBox } from '../model.js';
import { native } from '../native.js';
import { runtimeOptions, type Device } from '../runtime.js';
import { buildModelPrompt, summarizeFaces, type Perception } from '../perception.js';
import { writeFileAtomic } from '../safe_fs.js';
import { mediaPath, nativeBackend, samplePromptOptions } from '../emobench/backends.js';
import { PerceptionCache } from '../emobench/perception_cache.js';
import { runEval } from '../emobench/eval.js';
import { rng } from '../emobench/metrics.js';
import { formatDuration } from '../emobench/progress.js';
import { parseSamples, type BenchSample } from '../emobench/sample.js';
import { FeatureCache } from './feature_cache.js';
import { linkBaseFiles, readSafetensors, readTrainerState, writeMvpWeights, writeTrainerState } from './checkpoint.js';

/** Options of {@link trainMvp}. */
export interface TrainMvpOptions {
  /** The EmoLLM checkpoint to start from (an `emollm init-mvp` folder). */
  model: string;
  /** Training samples (EmoBench JSONL). */
  bench: string;
  /** Validation samples (EmoBench JSONL), scored with the evaluator every `evalEvery` steps and at the end. */
  val?: string;
  /** Root of the samples' media paths (default: the bench file's folder). */
  mediaRoot?: string;
  /** The output checkpoint folder. */
  out: string;
  /** Perspectives to train (default: every open one; mlp, multi-layer-mlp, attention-pool, face-region). A closed one named here is opened with a learned gate. */
  perspectives?: readonly string[];
  /** Optimizer steps (default: `epochs` passes over the bench). */
  steps?: number;
  epochs?: number;
  /** Samples per optimizer step (gradients accumulated; default 8). */
  batch?: number;
  lr?: number;
  minLrRatio?: number;
  /** Linear warmup steps (default: 3% of the steps). */
  warmup?: number;
  weightDecay?: number;
  /** Global-norm gradient clipping (default 1; 0 = off). */
  clip?: number;
  seed?: number;
  evalEvery?: number;
  saveEvery?: number;
  /** Continue the run in `out` from its last checkpoint (the options must be the same). */
  resume?: boolean;
  /** Vision-feature cache folder (default `<out>/feature-cache`). */
  cacheDir?: string;
  /** Recompute each decoder layer's activations in the backward (less memory, one more forward pass; same gradients). Default: when keeping them would pass 1 GiB per sample. */
  recompute?: boolean;
  /**
   * The face perspective, as `emollm eval` runs it (its `--no-face` is `face: false`): the faces
   * found in each image / frame become EmoPrompt cues and the face-region heads' boxes, in training
   * and in validation. Default: on when the trained checkpoint has an open face-region perspective
   * (which needs it), else off.
   */
  face?: boolean;
  /** The face analyzer of the face perspective (default: face-api's shared one). */
  faceAnalyzer?: FaceAnalyzer;
  /** Video samples: frames sampled per video (default 8, as eval / analyze), and of those, frames given to the model (default 4). */
  frames?: number;
  modelFrames?: number;
  /** Compute threads of the trainer (default 1; the result depends on it only through rounding). */
  threads?: number;
  /**
   * Where the frozen decoder's forward and backward run (default: the runtime's device,
   * `configure({ device })`, else 'cpu'). 'cuda' needs a CUDA build and a GPU (else
   * ERR_UNSUPPORTED saying which is missing); the trainer and the evaluation model both load there.
   */
  device?: Device;
  /** Called after each optimizer step. */
  onStep?: (s: TrainStepInfo) => void;
  /** Called with notices that do not stop the run (e.g. no face found for a face-region head). */
  onWarning?: (message: string) => void;
  /** Called with each validation result. */
  onEval?: (e: TrainEvalInfo) => void;
  signal?: AbortSignal;
}

export interface TrainStepInfo {
  step: number;
  totalSteps: number;
  loss: number;
  lr: number;
  gradNorm: number;
  samplesPerSecond: number;
  /** Decoder positions (prompt + image + answer tokens) trained on by this call so far. */
  tokens: number;
  tokensPerSecond: number;
  etaMs: number;
  /** Seconds spent in each phase of training since the run started (profiling; see TrainPhaseSeconds). */
  phaseSeconds: TrainPhaseSeconds;
}

/** Wall seconds per phase of the native trainer (native/train/mvp_trainer.h, MvpPhaseTimes). */
export interface TrainPhaseSeconds {
  /** MVP heads forward, image-token splice, embeddings. */
  mvpForward: number;
  /** The frozen decoder's layers, first pass. */
  decoderForward: number;
  /** Final norm, LM head on the answer rows, cross-entropy and their backward. */
  lmHead: number;
  /** The decoder layers run again in the backward (activation recomputation). */
  recompute: number;
  /** Input-gradient GEMMs dX = dY W of the decoder projections. */
  gemmBackward: number;
  attentionBackward: number;
  /** RMSNorm backwards. */
  normBackward: number;
  /** SwiGLU and RoPE backwards. */
  elementwiseBackward: number;
  /** Splice backward and the MVP heads' gradients. */
  mvpBackward: number;
  /** Clipping and AdamW. */
  optimizer: number;
}

export interface TrainEvalInfo {
  step: number;
  /** Mean accuracy over the validation sub-tasks. */
  accuracy: number;
  perTask: Record<string, number>;
  outDir: string;
}

export interface TrainMvpResult {
  out: string;
  /** Samples of the bench trained on, and how many of them are video samples. */
  samples: number;
  videoSamples: number;
  /** Whether the face perspective ran; sample visits whose images had face boxes. */
  face: boolean;
  samplesWithFaces: number;
  steps: number;
  /** Steps run by this call (fewer than `steps` after a resume). */
  stepsRun: number;
  finalLoss: number;
  evals: TrainEvalInfo[];
  wallMs: number;
  /** Where the frozen decoder ran: 'cpu', 'cuda' (or the tests' 'emulated'). */
  device: string;
}

interface NativeTrainer {
  info(): { towerFeatureDim: number; nVisionTokens: number; imageTokenId: number; imageSize: number; fusion: string; device: string };
  towerFeatures(pixels: Float32Array, batch: number): Promise<Float32Array>;
  accumulate(tokens: Int32Array, nAnswer: number, feats: Float32Array | null, nImages: number, scale: number, faces?: readonly (readonly FaceBox[])[] | null): Promise<number>;
  loss(tokens: Int32Array, nAnswer: number, feats: Float32Array | null, nImages: number, faces?: readonly (readonly FaceBox[])[] | null): Promise<number>;
  /** Decoder positions of the last sample run. */
  readonly lastPositions: number;
  readonly phaseSeconds: TrainPhaseSeconds;
  step(): Promise<{ lr: number; gradNorm: number; step: number }>;
  params(): { name: string; shape: number[]; value: Float32Array; grad: Float32Array; m: Float32Array; v: Float32Array }[];
  setState(params: { name: string; value: Float32Array; m: Float32Array; v: Float32Array }[], steps: number): void;
  readonly stepsDone: number;
  close(): void;
}

type TrainerFactory = (path: string, options: Record<string, unknown>) => Promise<NativeTrainer>;

/** @internal the native trainer (tests use it for gradient checks). */
export function createNativeTrainer(path: string, options: Record<string, unknown>): Promise<NativeTrainer> {
  const b = native() as unknown as { createMvpTrainer?: TrainerFactory };
  if (typeof b.createMvpTrainer !== 'function') throw new EmollmError('ERR_NO_BINARY', 'this build of the addon has no MVP trainer');
  return b.createMvpTrainer(path, options);
}

function bad(msg: string): EmollmError {
  return new EmollmError('ERR_INVALID_ARGUMENT', msg);
}

function checkInt(name: string, v: number | undefined, min: number): void {
  if (v !== undefined && (!Number.isInteger(v) || v < min)) throw bad(`${name} must be an integer >= ${min}`);
}

function permutation(n: number, seed: number): number[] {
  const r = rng(seed);
  const p = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [p[i], p[j]] = [p[j]!, p[i]!];
  }
  return p;
}

/** @internal a training sample as the trainer takes it. */
export interface PreparedSample {
  tokens: Int32Array;
  nAnswer: number;
  /** The images given to the model, in prompt order: the image file, or the chosen video frames (PNG). */
  images: ImageInput[];
  /** Face boxes of each image in the model's input pixels (empty lists: none). */
  faces: FaceBox[][];
  /** The prompt as the evaluator gives it to the model (image parts with their images and faces). */
  prompt: ChatMessage[];
}

/** @internal what prepareSample needs beside the model. */
export interface PrepareContext {
  mediaRoot: string;
  perception: PerceptionCache;
  modelFrames?: number;
  signal?: AbortSignal;
}

const NO_MEDIA: Perception = { media: 'image', images: [], frames: [], summary: summarizeFaces([]), face: false };

/**
 * @internal The evaluator's prompt for a sample (the native backend's perception + EmoPrompt,
 * lib/emobench/backends.ts) + the answer tokens: what classify scores.
 */
export async function prepareSample(model: Model, s: BenchSample, ctx: PrepareContext): Promise<PreparedSample> {
  const path = mediaPath(s, ctx.mediaRoot);
  const p = path === null ? NO_MEDIA : await ctx.perception.get(path, s.media?.type === 'video', ctx.signal);
  const prompt = await buildModelPrompt(model, p, { ...samplePromptOptions(s), ...(ctx.modelFrames !== undefined ? { modelFrames: ctx.modelFrames } : {}) });
  const images: ImageInput[] = [];
  const faces: FaceBox[][] = [];
  // the template only needs to know an image stands here (as Model.prepare)
  const messages: ChatMessage[] = prompt.messages.map((m) =>
    typeof m.content === 'string'
      ? m
      : {
          ...m,
          content: m.content.map((part: ChatContentPart): ChatContentPart => {
            if (part.type === 'video') throw new EmollmError('ERR_UNSUPPORTED', `${s.id}: native video parts (Qwen2-VL) are not trained by train-mvp`);
            if (part.type !== 'image') return part;
            images.push((part as unknown as { image: ImageInput }).image);
            faces.push([...((part as { faces?: FaceBox[] }).faces ?? [])]);
            return { type: 'image' } as ChatContentPart;
          }),
        },
  );
  const ids = model.promptTokens(messages, true);
  const answer = model.tokenizer.encode(s.answer, { addSpecialTokens: false });
  if (answer.length === 0) throw bad(`${s.id}: the answer ${JSON.stringify(s.answer)} has no tokens`);
  return { tokens: Int32Array.from([...ids, ...answer]), nAnswer: answer.length, images, faces, prompt: prompt.messages };
}

async function readBench(file: string): Promise<BenchSample[]> {
  const text = await readFile(file, 'utf8').catch((cause: unknown) => {
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${file}: cannot read`, { file, cause });
  });
  const s = parseSamples(text);
  if (s.length === 0) throw new EmollmError('ERR_MALFORMED_FILE', `${file}: no samples`, { file });
  return s;
}

/** Trains the MVP; returns when the last step is done and saved. */
export async function trainMvp(o: TrainMvpOptions): Promise<TrainMvpResult> {
  const t0 = performance.now();
  if (!o || typeof o.model !== 'string' || typeof o.bench !== 'string' || typeof o.out !== 'string')
    throw bad('trainMvp needs model, bench and out');
  checkInt('steps', o.steps, 1);
  checkInt('batch', o.batch, 1);
  checkInt('warmup', o.warmup, 0);
  checkInt('seed', o.seed, 0);
  checkInt('evalEvery', o.evalEvery, 1);
  checkInt('saveEvery', o.saveEvery, 1);
  checkInt('threads', o.threads, 1);
  // the device is checked before any work (unknown: ERR_INVALID_ARGUMENT; no CUDA: ERR_UNSUPPORTED)
  const device = runtimeOptions(o.device !== undefined ? { device: o.device } : undefined, 'trainMvp').device;
  checkInt('frames', o.frames, 1);
  checkInt('modelFrames', o.modelFrames, 1);
  for (const [k, v] of [['lr', o.lr], ['epochs', o.epochs]] as const)
    if (v !== undefined && !(Number.isFinite(v) && v > 0)) throw bad(`${k} must be a positive number`);
  for (const [k, v] of [['weightDecay', o.weightDecay], ['clip', o.clip], ['minLrRatio', o.minLrRatio]] as const)
    if (v !== undefined && !(Number.isFinite(v) && v >= 0)) throw bad(`${k} must be a number >= 0`);
  const modelDir = resolve(o.model);
  const out = resolve(o.out);
  if ((await realpath(modelDir).catch(() => modelDir)) === (await realpath(out).catch(() => out)))
    throw new EmollmError('ERR_OUTPUT_EXISTS', `${o.out} is the starting checkpoint ${o.model}: train-mvp writes a new folder`);
  const cfgPath = join(modelDir, 'config.json');
  const cfg = JSON.parse(
    await readFile(cfgPath, 'utf8').catch((cause: unknown) => {
      throw new EmollmError('ERR_FILE_NOT_FOUND', `${cfgPath}: cannot read`, { file: cfgPath, cause });
    }),
  ) as Record<string, unknown>;
  const section = cfg.emollm as { weights?: string; perspectives?: { name?: string; type: string; gate?: string }[] } | undefined;
  if (!section || !Array.isArray(section.perspectives))
    throw new EmollmError('ERR_BAD_CONFIG', `${cfgPath} has no "emollm" section: run emollm init-mvp first`, { file: cfgPath });
  const weightsName = section.weights ?? 'emollm_mvp.safetensors';
  const names = section.perspectives.map((p, i) => p.name ?? `${p.type}#${i}`);
  for (const n of o.perspectives ?? [])
    if (!names.includes(n)) throw bad(`--perspectives: ${JSON.stringify(n)} is not a perspective of ${o.model} (${names.join(', ')})`);
  // closed perspectives named for training open with a learned gate
  const outSection = {
    ...section,
    weights: weightsName,
    perspectives: section.perspectives.map((p, i) => ((o.perspectives ?? []).includes(names[i]!) && p.gate === 'closed' ? { ...p, gate: 'learned' } : p)),
  };

  // the face perspective: an open face-region head reads the face boxes (its only input), so it is
  // on by default when there is one, and cannot be off when one is trained
  const open = (i: number): boolean => outSection.perspectives[i]!.gate !== 'closed';
  const trained = (i: number): boolean => open(i) && (!o.perspectives || o.perspectives.length === 0 || o.perspectives.includes(names[i]!));
  const isFace = (i: number): boolean => outSection.perspectives[i]!.type === 'face-region';
  const faceHeads = names.filter((_, i) => isFace(i) && trained(i));
  const face = o.face ?? names.some((_, i) => isFace(i) && open(i));
  if (!face && faceHeads.length > 0)
    throw bad(`the face-region perspective ${faceHeads.join(', ')} is trained on face boxes: the face perspective cannot be off (face: false / --no-face)`);

  const mediaRoot = resolve(o.mediaRoot ?? dirname(o.bench));
  const train = await readBench(o.bench);
  const videoSamples = train.filter((s) => s.media?.type === 'video').length;
  const batch = o.batch ?? 8;
  const totalSteps = o.steps ?? Math.max(1, Math.ceil(((o.epochs ?? 1) * train.length) / batch));
  const warmup = o.warmup ?? Math.floor(totalSteps * 0.03);
  const seed = o.seed ?? 0;
  const threads = o.threads ?? 1;
  const trainerOptions = {
    ...(o.perspectives && o.perspectives.length > 0 ? { trainable: [...o.perspectives] } : {}),
    lr: o.lr ?? 1e-3,
    minLrRatio: o.minLrRatio ?? 0.1,
    warmupSteps: warmup,
    totalSteps,
    weightDecay: o.weightDecay ?? 0,
    clipNorm: o.clip ?? 1,
    threads,
    ...(o.recompute !== undefined ? { recompute: o.recompute } : {}),
  };
  const benchHash = createHash('sha256').update(await readFile(o.bench)).digest('hex');
  const runKey = createHash('sha256')
    .update(JSON.stringify({ model: await realpath(modelDir), benchHash, batch, seed, trainerOptions, outSection, face, frames: o.frames ?? null, modelFrames: o.modelFrames ?? null }))
    .digest('hex')
    .slice(0, 32);

  // ---- the output folder
  const statePath = join(out, 'train-state.safetensors');
  const hasState = existsSync(statePath);
  if (hasState && !o.resume)
    throw new EmollmError('ERR_OUTPUT_EXISTS', `${o.out} holds a train-mvp run: pass --resume to continue it, or choose another --out`);
  if (!hasState && existsSync(join(out, 'config.json')) && !o.resume)
    throw new EmollmError('ERR_OUTPUT_EXISTS', `${o.out} already holds a checkpoint: choose another --out`);
  await linkBaseFiles(modelDir, out, weightsName);
  await writeFileAtomic(join(out, 'config.json'), JSON.stringify({ ...cfg, emollm: outSection }, null, 2) + '\n');
  const source = (await readSafetensors(join(modelDir, weightsName))).tensors;
  if (!existsSync(join(out, weightsName))) await writeMvpWeights(join(out, weightsName), source, [], { emollm: 'train-mvp', step: '0' });

  // ---- the model (tokenizer, image processor, evaluation) and the trainer
  const trainer = await createNativeTrainer(out, { ...trainerOptions, ...(device !== undefined ? { device } : {}) });
  let model: Model | undefined;
  try {
    if (hasState) {
      const st = await readTrainerState(statePath);
      if (st.runKey !== runKey)
        throw new EmollmError('ERR_OUTPUT_EXISTS', `${o.out} holds a run with other options or data: --resume needs the same ones`);
      trainer.setState(st.params, st.step);
    }
    model = await loadModel(out, { threads, ...(device !== undefined ? { device } : {}) });
    const info = trainer.info();
    const cache = new FeatureCache(o.cacheDir ?? join(out, 'feature-cache'), await towerKey(modelDir, cfg, info));
    if (!model.imageProcessor) throw new EmollmError('ERR_UNSUPPORTED', `${o.model} has no vision tower`);
    // the evaluator's perception: frames of videos, faces (face-api) when the face perspective is on
    const perception = new PerceptionCache({
      ...(o.frames !== undefined ? { frames: o.frames } : {}),
      ...(face ? (o.faceAnalyzer ? { faces: o.faceAnalyzer } : {}) : { faces: false }),
    });
    const prepareContext: PrepareContext = { mediaRoot, perception, ...(o.modelFrames !== undefined ? { modelFrames: o.modelFrames } : {}), ...(o.signal ? { signal: o.signal } : {}) };
    // the images' tower features, concatenated in prompt order (null without images)
    const featuresOf = async (p: PreparedSample): Promise<Float32Array | null> => {
      if (p.images.length === 0) return null;
      const parts: Float32Array[] = [];
      for (const img of p.images) {
        const compute = async (bytes: Uint8Array): Promise<Float32Array> => {
          const px = await model!.imageProcessor!.preprocessBatch([bytes]);
          return trainer.towerFeatures(px.data, 1);
        };
        if (typeof img === 'string') parts.push(await cache.get(img, compute));
        else if (img instanceof Uint8Array) parts.push(await cache.getBytes(img, compute));
        else throw new EmollmError('ERR_UNSUPPORTED', 'train-mvp caches tower features of encoded images only');
      }
      if (parts.length === 1) return parts[0]!;
      const all = new Float32Array(parts.reduce((n, f) => n + f.length, 0));
      let at = 0;
      for (const f of parts) {
        all.set(f, at);
        at += f.length;
      }
      return all;
    };

    const perms = new Map<number, number[]>(); // epoch -> its sample order
    const order = (k: number): number => {
      const e = Math.floor(k / train.length);
      let p = perms.get(e);
      if (!p) {
        perms.clear();
        p = permutation(train.length, seed * 1000003 + e);
        perms.set(e, p);
      }
      return p[k % train.length]!;
    };
    const evals: TrainEvalInfo[] = [];
    const save = async (step: number): Promise<void> => {
      const ps = trainer.params();
      await writeMvpWeights(join(out, weightsName), source, ps, { emollm: 'train-mvp', step: String(step) });
      await writeTrainerState(statePath, { step, runKey, params: ps });
    };
    const validate = async (step: number): Promise<void> => {
      if (!o.val) return;
      await save(step);
      const evalModel = await loadModel(out, { threads, ...(device !== undefined ? { device } : {}) });
      const dir = join(out, 'val', `step-${step}`);
      let r: Awaited<ReturnType<typeof runEval>>;
      try {
        r = await runEval({
          bench: o.val,
          model: nativeBackend(evalModel, {
            face,
            ...(o.faceAnalyzer ? { faces: o.faceAnalyzer } : {}),
            ...(o.frames !== undefined ? { frames: o.frames } : {}),
            ...(o.modelFrames !== undefined ? { modelFrames: o.modelFrames } : {}),
          }),
          out: dir,
          mediaRoot: resolve(o.mediaRoot ?? dirname(o.val)),
          progress: false,
          summary: false,
          face,
          force: true,
          ...(o.signal ? { signal: o.signal } : {}),
        });
      } finally {
        await evalModel.close();
      }
      const perTask: Record<string, number> = {};
      for (const [task, m] of Object.entries(r.metrics.tasks ?? {})) perTask[task] = (m as { accuracy: number }).accuracy;
      const accs = Object.values(perTask);
      const e = { step, accuracy: accs.reduce((a, b) => a + b, 0) / Math.max(1, accs.length), perTask, outDir: dir };
      evals.push(e);
      o.onEval?.(e);
    };

    const evalEvery = o.evalEvery ?? 0;
    const saveEvery = o.saveEvery ?? (evalEvery > 0 ? evalEvery : totalSteps);
    const first = trainer.stepsDone;
    let lastLoss = NaN;
    let samplesDone = 0;
    let tokensDone = 0;
    let samplesWithFaces = 0;
    const tStart = performance.now();
    for (let step = first; step < totalSteps; step++) {
      if (o.signal?.aborted) throw new EmollmError('ERR_ABORTED', 'train-mvp was aborted (the last checkpoint is kept)');
      let loss = 0;
      for (let j = 0; j < batch; j++) {
        const p = await prepareSample(model, train[order(step * batch + j)]!, prepareContext);
        const feats = await featuresOf(p);
        const withFaces = p.faces.some((f) => f.length > 0);
        samplesWithFaces += withFaces ? 1 : 0;
        loss += (await trainer.accumulate(p.tokens, p.nAnswer, feats, p.images.length, 1 / batch, withFaces ? p.faces : null)) / batch;
        tokensDone += trainer.lastPositions;
      }
      samplesDone += batch;
      const st = await trainer.step();
      lastLoss = loss;
      const el = performance.now() - tStart;
      o.onStep?.({
        step: st.step,
        totalSteps,
        loss,
        lr: st.lr,
        gradNorm: st.gradNorm,
        samplesPerSecond: (samplesDone * 1000) / el,
        tokens: tokensDone,
        tokensPerSecond: (tokensDone * 1000) / el,
        etaMs: (el / (st.step - first)) * (totalSteps - st.step),
        phaseSeconds: trainer.phaseSeconds,
      });
      if (st.step % saveEvery === 0 || st.step === totalSteps) await save(st.step);
      if (evalEvery > 0 && st.step % evalEvery === 0 && st.step !== totalSteps) await validate(st.step);
    }
    if (faceHeads.length > 0 && samplesWithFaces === 0 && totalSteps > first)
      o.onWarning?.(`no face was found in the training images: the face-region perspective ${faceHeads.join(', ')} got no gradient`);
    if (first >= totalSteps) await save(totalSteps);
    await validate(totalSteps);
    await writeFileAtomic(
      join(out, 'train-mvp.json'),
      JSON.stringify({ schema: 'emollm.train-mvp/1', model: o.model, bench: o.bench, val: o.val ?? null, steps: totalSteps, batch, seed, face, frames: o.frames ?? 8, modelFrames: o.modelFrames ?? 4, options: trainerOptions, finalLoss: lastLoss, evals }, null, 2) + '\n',
    );
    return { out, samples: train.length, videoSamples, face, samplesWithFaces, steps: totalSteps, stepsRun: totalSteps - first, finalLoss: lastLoss, evals, wallMs: performance.now() - t0, device: info.device };
  } finally {
    await model?.close();
    trainer.close();
  }
}

/** The cache key of the frozen tower: its weights file identity, layers and preprocessing. */
async function towerKey(modelDir: string, cfg: Record<string, unknown>, info: ReturnType<NativeTrainer['info']>): Promise<string> {
  const h = createHash('sha256');
  // the device stays out of the key, as the thread count does (features differ only by rounding)
  const tower = { towerFeatureDim: info.towerFeatureDim, nVisionTokens: info.nVisionTokens, imageTokenId: info.imageTokenId, imageSize: info.imageSize, fusion: info.fusion };
  h.update(JSON.stringify({ vision: cfg.vision_config ?? null, layer: cfg.vision_feature_layer ?? null, strategy: cfg.vision_feature_select_strategy ?? null, info: tower }));
  for (const f of ['preprocessor_config.json', 'model.safetensors.index.json', 'model.safetensors']) {
    const p = join(modelDir, f);
    if (!existsSync(p)) continue;
    if (f.endsWith('.json')) h.update(await readFile(p));
    else {
      // the weights: identity by real path, size and modification time (hashing GBs per run is too slow)
      const { stat } = await import('node:fs/promises');
      const st = await stat(p);
      h.update(`${await realpath(p)}:${st.size}:${st.mtimeMs}`);
    }
  }
  return h.digest('hex').slice(0, 24);
}

export { formatDuration };
