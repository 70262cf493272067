/**
 * The face perspective over one image or video, and what it gives a LLaVA / EmoLLM model: the one
 * code path that both `analyze` (lib/analyze.ts) and the EmoBench native backend
 * (lib/emobench/backends.ts) use, so a benchmark run sees exactly what `emollm analyze` sees.
 *
 * 1. {@link perceive}: the frames (the image itself, or `frames` frames of a video sampled evenly
 *    with ffmpeg) and the faces face-api's networks find in each (or none with `faces: false`).
 * 2. {@link buildModelPrompt}: the task's EmoPrompt over at most `modelFrames` of those frames,
 *    the face findings stated as cues, and each image part given its face boxes mapped into the
 *    model's input pixels (EmoLLM's face-region perspective reads them; LLaVA ignores them).
 * 3. {@link askModel}: option scoring for the closed tasks, greedy generation + the emotion
 *    lexicon for the open-set task.
 */
import { spawn } from 'node:child_process';
import { extname } from 'node:path';

import { classify, decodeOpenEmotion } from './decode_result.js';
import { buildEmoPrompt, type EmoPrompt, type EmoPromptOptions, type PerceptionCue } from './emoprompt.js';
import { EmollmError } from './errors.js';
import { FaceAnalyzer, FACE_EXPRESSIONS, type DetectedFace, type FaceExpression } from './face.js';
import { decodeImage, type ImageInput, type ImageProcessor } from './image.js';
import type { FaceBox, Model } from './model.js';
import { runtimeOptions, type RuntimeOptions } from './runtime.js';

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
export function faceCues(frames: readonly FrameAnalysis[], summary: FaceSummary): PerceptionCue[] {
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

export function pickEvenly<T>(items: readonly T[], n: number): T[] {
  if (items.length <= n) return [...items];
  return Array.from({ length: n }, (_, i) => items[Math.floor(((i + 0.5) * items.length) / n)]!);
}

/** Whether an input is a video: `video: true`, or a file path with a video extension. */
export function isVideoInput(input: ImageInput, video?: boolean): boolean {
  return video === true || (typeof input === 'string' && VIDEO_EXTENSIONS.has(extname(input).toLowerCase()));
}

// Face analyzers loaded on first use, one per runtime configuration.
const sharedFaces = new Map<string, Promise<FaceAnalyzer>>();

/** The process-wide face analyzer of a runtime configuration, loaded on first use (a failed load is retried next time). */
export function sharedFaceAnalyzer(runtime: RuntimeOptions = {}): Promise<FaceAnalyzer> {
  const r = runtimeOptions(runtime, 'runtime options');
  const key = `${r.device ?? ''}/${r.threads ?? ''}`;
  let shared = sharedFaces.get(key);
  if (!shared) {
    shared = FaceAnalyzer.load(r).catch((e: unknown) => {
      sharedFaces.delete(key);
      throw e;
    });
    sharedFaces.set(key, shared);
  }
  return shared;
}

export interface PerceiveOptions {
  /** Treat the input as a video even without a video extension. */
  video?: boolean;
  /** Video frames to sample (default 8). */
  frames?: number;
  /** A face analyzer; default the shared one; `false` skips the face perspective (no faces, no cues). */
  faces?: FaceAnalyzer | false;
  /** Largest image or frame decoded, in pixels (default `DEFAULT_MAX_PIXELS` of image.ts). */
  maxPixels?: number;
  /** Where the shared face analyzer runs (when `faces` is not given). */
  runtime?: RuntimeOptions;
  onProgress?: (message: string) => void;
  signal?: AbortSignal;
}

/** What the face perspective saw in one image or video. */
export interface Perception {
  media: 'image' | 'video';
  /** The frames: the image itself, or PNG frames of the video with their times; `width`/`height` once decoded for the faces. */
  images: Array<{ image: ImageInput; time?: number; width?: number; height?: number }>;
  /** Faces per frame (empty lists when the face perspective was off). */
  frames: FrameAnalysis[];
  summary: FaceSummary;
  /** Whether the face perspective ran. */
  face: boolean;
}

/** Samples the frames of an image or video and runs the face perspective on each. */
export async function perceive(input: ImageInput, options: PerceiveOptions = {}): Promise<Perception> {
  const progress = options.onProgress ?? ((): void => undefined);
  const video = isVideoInput(input, options.video);
  let images: Perception['images'];
  if (video) {
    if (typeof input !== 'string') throw new EmollmError('ERR_INVALID_ARGUMENT', 'video input must be a file path');
    const n = options.frames ?? 8;
    progress(`sampling ${n} frames with ffmpeg`);
    images = (await sampleVideoFrames(input, n, options.signal)).map((f) => ({ image: f.png, time: f.time }));
  } else images = [{ image: input }];

  let faces: FaceAnalyzer | undefined;
  if (options.faces !== false) {
    if (options.faces) faces = options.faces;
    else {
      progress('loading face models');
      faces = await sharedFaceAnalyzer(options.runtime);
    }
  }
  const frames: FrameAnalysis[] = [];
  for (const [index, f] of images.entries()) {
    checkAbort(options.signal);
    let found: DetectedFace[] = [];
    if (faces) {
      if (images.length > 1) progress(`frame ${index + 1}/${images.length}`);
      // decode once: the pixels go to the face networks, the size is kept for mapping boxes later
      const rgb = await decodeImage(f.image, {
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.maxPixels !== undefined ? { maxPixels: options.maxPixels } : {}),
      });
      f.width = rgb.width;
      f.height = rgb.height;
      found = await faces.analyze({ data: rgb.data, width: rgb.width, height: rgb.height, channels: 3 }, options.signal ? { signal: options.signal } : {});
    }
    frames.push({ index, ...(f.time !== undefined ? { time: f.time } : {}), faces: found });
  }
  return { media: video ? 'video' : 'image', images, frames, summary: summarizeFaces(frames), face: faces !== undefined };
}

/** The EmoPrompt options a caller chooses; images, media and the face cues come from the perception. */
export type ModelPromptOptions = Omit<EmoPromptOptions, 'images' | 'media'> & {
  /** At most this many frames go to the model (default 4), picked evenly. */
  modelFrames?: number;
};

/**
 * The task's EmoPrompt for a model over a perception: the frames given to the model, the face
 * findings as cues (appended to any given), and each image part's face boxes in model-input pixels.
 */
export async function buildModelPrompt(model: Model, p: Perception, options: ModelPromptOptions): Promise<EmoPrompt> {
  const { modelFrames: nFrames, ...promptOptions } = options;
  const modelFrames = p.images.length === 1 ? p.images : pickEvenly(p.images, nFrames ?? 4);
  const prompt = buildEmoPrompt({
    ...promptOptions,
    images: modelFrames.map((f) => f.image),
    media: p.media,
    // Qwen2-VL takes a video's frames as one native video (temporal patches, M-RoPE time axis)
    ...(p.media === 'video' && model.info.vision?.family === 'qwen2_vl' ? { nativeVideo: true } : {}),
    ...(p.face ? { cues: [...(options.cues ?? []), ...faceCues(p.frames, p.summary)] } : {}),
  });
  // EmoLLM's face-region perspective reads the detected faces: give each image part its boxes,
  // mapped into the model's input pixels (models without that perspective ignore them).
  const proc = model.imageProcessor;
  if (proc && p.face) {
    const boxes = await Promise.all(
      modelFrames.map(async (f) => {
        const faces = p.frames[p.images.indexOf(f)]?.faces ?? [];
        if (faces.length === 0) return [];
        const { width, height } = f.width !== undefined && f.height !== undefined ? { width: f.width, height: f.height } : await decodeImage(f.image);
        return faces.map((face) => boxToModelInput(face.box, width, height, proc));
      }),
    );
    let k = 0;
    for (const m of prompt.messages)
      if (typeof m.content !== 'string')
        m.content = m.content.map((part) => (part.type === 'image' ? { ...part, faces: boxes[k++] ?? [] } : part));
  }
  return prompt;
}

/** A model's answer to a prompt. */
export type ModelAnswer =
  | { outcome: 'label'; label: string; probability: number; distribution: Record<string, number>; margin: number }
  | { outcome: 'emotion'; emotion: string; emotions: string[]; text: string }
  | { outcome: 'unparsed'; reason: string; text: string };

/** Asks the model: option scoring for closed and yes/no tasks, greedy generation + the emotion lexicon for emo-o. */
export async function askModel(model: Model, prompt: EmoPrompt, options: { maxTokens?: number; signal?: AbortSignal } = {}): Promise<ModelAnswer> {
  const signal = options.signal ? { signal: options.signal } : {};
  if (prompt.task === 'emo-o') {
    const r = await model.generate(prompt.messages, { maxTokens: options.maxTokens ?? 32, temperature: 0, ...signal }).result;
    const d = decodeOpenEmotion(r.text);
    return d.outcome === 'emotion'
      ? { outcome: 'emotion', emotion: d.emotion, emotions: d.emotions, text: r.text }
      : { outcome: 'unparsed', reason: d.reason, text: r.text };
  }
  const c = await classify(model, prompt.messages, prompt.labels, signal);
  return { outcome: 'label', label: c.label, probability: c.probability, distribution: c.distribution, margin: c.margin };
}
