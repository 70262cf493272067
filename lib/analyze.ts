/**
 * "What emotion, intent, hate, humor or sarcasm is in this image or video?" — the analysis that
 * `emollm analyze` runs.
 *
 * - Without a model it runs offline on the face perspective (face-api's trained detector and
 *   7-class expression network, run by the native core): faces, their expressions, and an overall
 *   emotion (score- and area-weighted mean of the faces' distributions, averaged over frames).
 * - With a LLaVA / EmoLLM model it builds the task's EmoPrompt, states the face perspective's
 *   findings as cues, and decodes the answer: option scoring for closed tasks, the emotion lexicon
 *   for the open-set task.
 * - Videos are sampled into frames with ffmpeg (a child process) and aggregated over time.
 *
 * The result follows the JSON schema `emollm.analysis/1` documented on {@link AnalysisResult}.
 */
import { spawn } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { extname } from 'node:path';

import { classify, decodeOpenEmotion } from './decode_result.js';
import { buildEmoPrompt, type EmoTask, type PerceptionCue } from './emoprompt.js';
import { EmollmError } from './errors.js';
import { FaceAnalyzer, FACE_EXPRESSIONS, type DetectedFace, type FaceExpression } from './face.js';
import { decodeImage, type ImageInput, type ImageProcessor } from './image.js';
import type { FaceBox, Model } from './model.js';
import { runtimeOptions, type RuntimeOptions } from './runtime.js';
import type { TaxonomyId } from './taxonomies.js';

/** The analysis tasks (EmoBench's six sub-tasks, by their CLI names). */
export type AnalyzeTask = 'emotion' | 'emotion-open' | 'intent' | 'hate' | 'humor' | 'sarcasm';
export const ANALYZE_TASKS: readonly AnalyzeTask[] = ['emotion', 'emotion-open', 'intent', 'hate', 'humor', 'sarcasm'];

const EMO_TASK: Record<AnalyzeTask, EmoTask> = {
  emotion: 'emo-c',
  'emotion-open': 'emo-o',
  intent: 'intent',
  hate: 'hate',
  humor: 'humor',
  sarcasm: 'sarcasm',
};

/** face-api's expression classes as Ekman-7 labels (a one-to-one mapping). */
export const EXPRESSION_TO_EKMAN7: Readonly<Record<FaceExpression, string>> = Object.freeze({
  neutral: 'neutral',
  happy: 'joy',
  sad: 'sadness',
  angry: 'anger',
  fearful: 'fear',
  disgusted: 'disgust',
  surprised: 'surprise',
});

const VIDEO_EXTENSIONS = new Set(['.mp4', '.mov', '.mkv', '.webm', '.avi', '.m4v', '.mpg', '.mpeg', '.flv', '.wmv', '.3gp']);

export interface AnalyzeOptions extends RuntimeOptions {
  /** Default 'emotion' (close-set emotion recognition). */
  task?: AnalyzeTask;
  /** Accompanying text: caption, utterance, meme text. */
  text?: string;
  /** A loaded LLaVA / EmoLLM model; without one the face perspective answers what it can. */
  model?: Model;
  /** Close-set labels (default: Ekman 7 for 'emotion', MIntRec's 20 intents for 'intent'). */
  labels?: readonly string[];
  /** Taxonomy for the close-set labels. */
  taxonomy?: TaxonomyId;
  /** Video frames to sample (default 8); at most `modelFrames` of them go to the model (default 4). */
  frames?: number;
  modelFrames?: number;
  /**
   * A preloaded face analyzer (loaded on first use otherwise, on `device` / `threads` when given:
   * the runtime configuration of RuntimeOptions; a preloaded one keeps its own).
   */
  faces?: FaceAnalyzer;
  /** Treat the input as a video even without a video extension. */
  video?: boolean;
  /** Progress messages ("loading face models", "frame 3/8", ...). */
  onProgress?: (message: string) => void;
  signal?: AbortSignal;
}

/** One face found in a frame. */
export interface FaceFinding {
  box: { x: number; y: number; width: number; height: number };
  score: number;
  expressions: Record<FaceExpression, number>;
  dominant: FaceExpression;
}

export interface FrameAnalysis {
  index: number;
  /** Seconds into the video (videos only). */
  time?: number;
  faces: FaceFinding[];
}

/** The face perspective's overall reading. */
export interface FaceSummary {
  /** Largest number of faces in one frame. */
  maxFaces: number;
  /** Frames in which at least one face was found. */
  framesWithFaces: number;
  /** Weighted mean expression distribution (null without faces). */
  expressions: Record<FaceExpression, number> | null;
  /** Its most probable expression, and that expression as an Ekman-7 emotion. */
  dominant: FaceExpression | null;
  emotion: string | null;
}

/** The answer to the task. */
export type TaskAnswer =
  | {
      outcome: 'label';
      /** Who answered: the model (EmoPrompt + decoding) or the face perspective alone. */
      source: 'model' | 'face';
      label: string;
      probability: number;
      distribution: Record<string, number>;
      margin: number;
    }
  | { outcome: 'emotion'; source: 'model' | 'face'; emotion: string; emotions: string[]; text?: string }
  | { outcome: 'unparsed'; source: 'model' | 'face'; reason: string; text?: string }
  | { outcome: 'unavailable'; reason: string };

/**
 * The result of {@link analyze} (JSON schema `emollm.analysis/1`):
 * `{ schema, input, media, task, frames: [{ index, time?, faces: [{ box, score, expressions, dominant }] }],
 *    faces: { maxFaces, framesWithFaces, expressions, dominant, emotion },
 *    answer: { outcome: 'label' | 'emotion' | 'unparsed' | 'unavailable', ... },
 *    model?: { path, templateId } }`
 */
export interface AnalysisResult {
  schema: 'emollm.analysis/1';
  input: string;
  media: 'image' | 'video';
  task: AnalyzeTask;
  frames: FrameAnalysis[];
  faces: FaceSummary;
  answer: TaskAnswer;
  model?: { path: string; templateId: string };
}

function checkAbort(signal?: AbortSignal): void {
  if (signal?.aborted) throw new EmollmError('ERR_ABORTED', 'the analysis was aborted');
}

/** Mean of the faces' expression distributions, weighted by detection score x box area. */
export function summarizeFaces(frames: readonly FrameAnalysis[]): FaceSummary {
  const total = Object.fromEntries(FACE_EXPRESSIONS.map((e) => [e, 0])) as Record<FaceExpression, number>;
  let framesWithFaces = 0;
  let maxFaces = 0;
  for (const f of frames) {
    maxFaces = Math.max(maxFaces, f.faces.length);
    if (f.faces.length === 0) continue;
    framesWithFaces++;
    const w = f.faces.map((x) => x.score * Math.max(1, x.box.width * x.box.height));
    const wsum = w.reduce((a, b) => a + b, 0);
    // each frame counts once, whatever its number of faces
    f.faces.forEach((face, i) => {
      for (const e of FACE_EXPRESSIONS) total[e] += (face.expressions[e] * w[i]!) / wsum;
    });
  }
  if (framesWithFaces === 0) return { maxFaces, framesWithFaces, expressions: null, dominant: null, emotion: null };
  for (const e of FACE_EXPRESSIONS) total[e] /= framesWithFaces;
  const dominant = FACE_EXPRESSIONS.reduce((a, b) => (total[b] > total[a] ? b : a));
  return { maxFaces, framesWithFaces, expressions: total, dominant, emotion: EXPRESSION_TO_EKMAN7[dominant] };
}

/** What the face perspective tells the model, as EmoPrompt cues. */
function faceCues(frames: readonly FrameAnalysis[], summary: FaceSummary): PerceptionCue[] {
  if (summary.framesWithFaces === 0) return [{ source: 'face', text: 'no face was detected' }];
  if (frames.length === 1)
    return frames[0]!.faces.slice(0, 3).map((f) => ({
      source: 'face',
      text: `a face with a ${f.dominant} expression (p=${f.expressions[f.dominant].toFixed(2)})`,
    }));
  return [
    {
      source: 'face',
      text: `across ${summary.framesWithFaces} of ${frames.length} frames the faces look mostly ${summary.dominant} (p=${summary.expressions![summary.dominant!].toFixed(2)})`,
    },
  ];
}

/** Runs a command and collects stdout; a missing binary is ERR_UNSUPPORTED with install advice. */
function runTool(cmd: string, args: string[], signal?: AbortSignal): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(signal ? { signal } : {}) });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT')
        reject(
          new EmollmError('ERR_UNSUPPORTED', `video input needs ${cmd} (from ffmpeg), which was not found: install ffmpeg (Debian/Ubuntu: apt-get install ffmpeg)`, {
            cause: e,
          }),
        );
      else if (e.name === 'AbortError') reject(new EmollmError('ERR_ABORTED', 'the analysis was aborted', { cause: e }));
      else reject(new EmollmError('ERR_INTERNAL', `${cmd} failed to start: ${e.message}`, { cause: e }));
    });
    child.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out));
      else reject(new EmollmError('ERR_BAD_IMAGE', `${cmd} could not read the video: ${err.trim().split('\n').slice(-2).join(' ')}`));
    });
  });
}

/** Samples `n` frames evenly over a video (ffprobe for the duration, one ffmpeg seek per frame), as PNG. */
export async function sampleVideoFrames(path: string, n: number, signal?: AbortSignal): Promise<Array<{ time: number; png: Buffer }>> {
  if (!Number.isInteger(n) || n < 1 || n > 1000) throw new EmollmError('ERR_INVALID_ARGUMENT', `frames must be an integer in 1..1000, got ${n}`);
  const probe = await runTool('ffprobe', ['-v', 'error', '-show_entries', 'format=duration', '-of', 'default=nw=1:nk=1', path], signal);
  const duration = Number(probe.toString().trim());
  if (!Number.isFinite(duration) || duration <= 0)
    throw new EmollmError('ERR_BAD_IMAGE', `${path}: ffprobe reports no duration; is it a video?`, { file: path });
  const frames: Array<{ time: number; png: Buffer }> = [];
  for (let i = 0; i < n; i++) {
    checkAbort(signal);
    const time = (duration * (i + 0.5)) / n;
    const png = await runTool(
      'ffmpeg',
      ['-v', 'error', '-ss', time.toFixed(3), '-i', path, '-frames:v', '1', '-f', 'image2pipe', '-vcodec', 'png', '-'],
      signal,
    );
    if (png.length > 0) frames.push({ time, png });
  }
  if (frames.length === 0) throw new EmollmError('ERR_BAD_IMAGE', `${path}: no frame could be decoded`, { file: path });
  return frames;
}

function isVideoPath(input: ImageInput, options: AnalyzeOptions): boolean {
  return options.video === true || (typeof input === 'string' && VIDEO_EXTENSIONS.has(extname(input).toLowerCase()));
}

// Face analyzers loaded by analyze() itself, one per runtime configuration.
const sharedFaces = new Map<string, Promise<FaceAnalyzer>>();

/** Analyzes one image or video. */
export async function analyze(input: ImageInput, options: AnalyzeOptions = {}): Promise<AnalysisResult> {
  const task = options.task ?? 'emotion';
  if (!ANALYZE_TASKS.includes(task))
    throw new EmollmError('ERR_INVALID_ARGUMENT', `unknown task ${JSON.stringify(task)} (${ANALYZE_TASKS.join(', ')})`);
  const progress = options.onProgress ?? ((): void => undefined);
  const name = typeof input === 'string' ? input : '<buffer>';
  if (typeof input === 'string')
    await stat(input).catch((cause: unknown) => {
      throw new EmollmError('ERR_FILE_NOT_FOUND', `${input}: no such file`, { file: input, cause });
    });

  // ---- frames
  const video = isVideoPath(input, options);
  let images: Array<{ image: ImageInput; time?: number }>;
  if (video) {
    if (typeof input !== 'string') throw new EmollmError('ERR_INVALID_ARGUMENT', 'video input must be a file path');
    const n = options.frames ?? 8;
    progress(`sampling ${n} frames with ffmpeg`);
    images = (await sampleVideoFrames(input, n, options.signal)).map((f) => ({ image: f.png, time: f.time }));
  } else {
    images = [{ image: input }];
  }

  // ---- face perspective
  let faces = options.faces;
  if (!faces) {
    progress('loading face models');
    const runtime = runtimeOptions(options, 'analyze options');
    const key = `${runtime.device ?? ''}/${runtime.threads ?? ''}`;
    let shared = sharedFaces.get(key);
    if (!shared) {
      shared = FaceAnalyzer.load(runtime).catch((e: unknown) => {
        sharedFaces.delete(key);
        throw e;
      });
      sharedFaces.set(key, shared);
    }
    faces = await shared;
  }
  const frames: FrameAnalysis[] = [];
  for (const [index, f] of images.entries()) {
    checkAbort(options.signal);
    if (images.length > 1) progress(`frame ${index + 1}/${images.length}`);
    const found: DetectedFace[] = await faces.analyze(f.image, options.signal ? { signal: options.signal } : {});
    frames.push({ index, ...(f.time !== undefined ? { time: f.time } : {}), faces: found });
  }
  const summary = summarizeFaces(frames);

  const result: AnalysisResult = {
    schema: 'emollm.analysis/1',
    input: name,
    media: video ? 'video' : 'image',
    task,
    frames,
    faces: summary,
    answer: { outcome: 'unavailable', reason: '' },
  };

  // ---- the answer
  const model = options.model;
  if (!model) {
    if (task === 'emotion' || task === 'emotion-open') {
      if (!summary.emotion) result.answer = { outcome: 'unparsed', source: 'face', reason: 'no face was detected' };
      else if (task === 'emotion-open')
        result.answer = { outcome: 'emotion', source: 'face', emotion: summary.emotion, emotions: [summary.emotion] };
      else {
        const distribution = Object.fromEntries(FACE_EXPRESSIONS.map((e) => [EXPRESSION_TO_EKMAN7[e], summary.expressions![e]]));
        const sorted = Object.values(distribution).sort((a, b) => b - a);
        result.answer = {
          outcome: 'label',
          source: 'face',
          label: summary.emotion,
          probability: sorted[0]!,
          distribution,
          margin: sorted[0]! - (sorted[1] ?? 0),
        };
      }
    } else {
      result.answer = { outcome: 'unavailable', reason: `the ${task} task needs a model (--model <llava or emollm folder | gguf>)` };
    }
    return result;
  }

  if (!model.info.vision) throw new EmollmError('ERR_UNSUPPORTED', `${model.path} is not a multimodal (LLaVA / EmoLLM) model`);
  const modelFrames = images.length === 1 ? images : pickEvenly(images, options.modelFrames ?? 4);
  const prompt = buildEmoPrompt({
    task: EMO_TASK[task],
    images: modelFrames.map((f) => f.image),
    media: video ? 'video' : 'image',
    ...(options.text !== undefined ? { text: options.text } : {}),
    ...(options.labels ? { labels: options.labels } : {}),
    ...(options.taxonomy ? { taxonomy: options.taxonomy } : task === 'emotion' && !options.labels ? { taxonomy: 'ekman7' as const } : {}),
    cues: faceCues(frames, summary),
  });
  result.model = { path: model.path, templateId: prompt.templateId };
  // EmoLLM's face-region perspective reads the detected faces: give each image part its boxes,
  // mapped into the model's input pixels (models without that perspective ignore them).
  const proc = model.imageProcessor;
  if (proc) {
    const boxes = await Promise.all(
      modelFrames.map(async (f) => {
        const faces = frames[images.indexOf(f)]?.faces ?? [];
        if (faces.length === 0) return [];
        const { width, height } = await decodeImage(f.image);
        return faces.map((face) => boxToModelInput(face.box, width, height, proc));
      }),
    );
    let k = 0;
    for (const m of prompt.messages)
      if (typeof m.content !== 'string')
        m.content = m.content.map((part) => (part.type === 'image' ? { ...part, faces: boxes[k++] ?? [] } : part));
  }
  progress('asking the model');
  if (task === 'emotion-open') {
    const r = await model.generate(prompt.messages, { maxTokens: 32, temperature: 0, ...(options.signal ? { signal: options.signal } : {}) }).result;
    const d = decodeOpenEmotion(r.text);
    result.answer =
      d.outcome === 'emotion'
        ? { outcome: 'emotion', source: 'model', emotion: d.emotion, emotions: d.emotions, text: r.text }
        : { outcome: 'unparsed', source: 'model', reason: d.reason, text: r.text };
  } else {
    const c = await classify(model, prompt.messages, prompt.labels, options.signal ? { signal: options.signal } : {});
    result.answer = { outcome: 'label', source: 'model', label: c.label, probability: c.probability, distribution: c.distribution, margin: c.margin };
  }
  return result;
}

/**
 * Maps a box in original-image pixels to pixels of the model's input image (after the image
 * processor's pad-to-square, shortest-edge resize and centre crop): where EmoLLM's face-region
 * perspective expects face boxes.
 */
export function boxToModelInput(box: FaceBox, width: number, height: number, proc: ImageProcessor): FaceBox {
  const cfg = proc.config;
  let x = box.x;
  let y = box.y;
  let w = width;
  let h = height;
  if (cfg.padToSquare) {
    const side = Math.max(w, h);
    x += Math.floor((side - w) / 2);
    y += Math.floor((side - h) / 2);
    w = h = side;
  }
  let rw = w;
  let rh = h;
  if (cfg.doResize) {
    const size = cfg.size;
    if ('shortestEdge' in size) {
      const long = Math.trunc((size.shortestEdge * Math.max(w, h)) / Math.min(w, h));
      [rh, rw] = w <= h ? [long, size.shortestEdge] : [size.shortestEdge, long];
    } else [rh, rw] = [size.height, size.width];
  }
  const sx = rw / w;
  const sy = rh / h;
  let bx = x * sx;
  let by = y * sy;
  if (cfg.doCenterCrop) {
    bx -= Math.floor((rw - cfg.cropSize.width) / 2);
    by -= Math.floor((rh - cfg.cropSize.height) / 2);
  }
  return { x: bx, y: by, width: box.width * sx, height: box.height * sy };
}

function pickEvenly<T>(items: readonly T[], n: number): T[] {
  if (items.length <= n) return [...items];
  return Array.from({ length: n }, (_, i) => items[Math.floor(((i + 0.5) * items.length) / n)]!);
}

/** A human-readable rendering of an analysis. */
export function formatAnalysis(r: AnalysisResult): string {
  const lines: string[] = [];
  const pct = (p: number): string => `${(p * 100).toFixed(0)}%`;
  const top = (e: Record<string, number>, k = 3): string =>
    Object.entries(e)
      .sort((a, b) => b[1] - a[1])
      .slice(0, k)
      .map(([n, p]) => `${n} ${pct(p)}`)
      .join(', ');
  lines.push(`${r.input} (${r.media}${r.media === 'video' ? `, ${r.frames.length} frames` : ''})`);
  for (const f of r.frames) {
    const when = f.time !== undefined ? `  t=${f.time.toFixed(1)}s` : '';
    if (f.faces.length === 0) lines.push(`${when ? when + ': ' : '  '}no face found`);
    f.faces.forEach((face, i) => {
      const b = face.box;
      lines.push(
        `${when}  face ${i + 1}: ${Math.round(b.width)}x${Math.round(b.height)} at (${Math.round(b.x)}, ${Math.round(b.y)}), ` +
          `detection ${pct(face.score)}; expression: ${top(face.expressions)}`,
      );
    });
  }
  if (r.faces.expressions) lines.push(`faces overall: ${top(r.faces.expressions)} → ${r.faces.emotion}`);
  const a = r.answer;
  const who = 'source' in a ? (a.source === 'model' ? `model, ${r.model?.templateId ?? ''}` : 'face perspective') : '';
  switch (a.outcome) {
    case 'label':
      lines.push(`${r.task}: ${a.label} (${pct(a.probability)}, margin ${pct(a.margin)}; ${who})`);
      lines.push(`  distribution: ${top(a.distribution, 7)}`);
      break;
    case 'emotion':
      lines.push(`${r.task}: ${a.emotion} (${who})${a.text ? `  — "${a.text.trim()}"` : ''}`);
      break;
    case 'unparsed':
      lines.push(`${r.task}: no answer (${a.reason}; ${who})${a.text ? `  — "${a.text.trim()}"` : ''}`);
      break;
    case 'unavailable':
      lines.push(`${r.task}: ${a.reason}`);
      break;
  }
  return lines.join('\n');
}
