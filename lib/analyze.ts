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
 * - Frames, faces, cues and boxes come from lib/perception.ts, which `emollm eval` runs too.
 *
 * The result follows the JSON schema `emollm.analysis/1` documented on {@link AnalysisResult}.
 */

import type { EmoTask, GuidanceLevel } from './emoprompt.js';
import { EmollmError } from './errors.js';
import { FACE_EXPRESSIONS, type FaceAnalyzer } from './face.js';
import type { ImageInput } from './image.js';
import type { Model } from './model.js';
import { askModel, buildModelPrompt, perceive, EXPRESSION_TO_EKMAN7, type FaceSummary, type FrameAnalysis } from './perception.js';
import { assertRegularFile } from './safe_fs.js';
import { runtimeOptions, type RuntimeOptions } from './runtime.js';
import type { TaxonomyId } from './taxonomies.js';

export {
  boxToModelInput,
  EXPRESSION_TO_EKMAN7,
  sampleVideoFrames,
  summarizeFaces,
  type FaceFinding,
  type FaceSummary,
  type FrameAnalysis,
} from './perception.js';

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


export interface AnalyzeOptions extends RuntimeOptions {
  /** Default 'emotion' (close-set emotion recognition). */
  task?: AnalyzeTask;
  /** Accompanying text: caption, utterance, meme text. */
  text?: string;
  /** Dialogue context, oldest first (model only). */
  context?: readonly string[];
  /** EmoPrompt reasoning guidance (default 'full'). */
  guidance?: GuidanceLevel;
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
  /**
   * Largest image (or video frame) accepted, in pixels (width x height as the file's header
   * declares, checked before any pixel is decoded). Default `DEFAULT_MAX_PIXELS` of image.ts
   * (100 000 000); larger images reject with `ERR_BAD_IMAGE`. Lower it for untrusted uploads.
   */
  maxPixels?: number;
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

/** Analyzes one image or video. */
export async function analyze(input: ImageInput, options: AnalyzeOptions = {}): Promise<AnalysisResult> {
  const task = options.task ?? 'emotion';
  if (!ANALYZE_TASKS.includes(task))
    throw new EmollmError('ERR_INVALID_ARGUMENT', `unknown task ${JSON.stringify(task)} (${ANALYZE_TASKS.join(', ')})`);
  const progress = options.onProgress ?? ((): void => undefined);
  const name = typeof input === 'string' ? input : '<buffer>';
  // a regular file only: a FIFO or device would hang the reader (sharp or ffmpeg)
  if (typeof input === 'string') await assertRegularFile(input);
  const pixelLimit = options.maxPixels === undefined ? {} : { maxPixels: options.maxPixels };

  // ---- frames and the face perspective (lib/perception.ts: the same code the EmoBench native backend runs)
  const p = await perceive(input, {
    ...(options.video !== undefined ? { video: options.video } : {}),
    ...(options.frames !== undefined ? { frames: options.frames } : {}),
    ...(options.faces ? { faces: options.faces } : {}),
    ...pixelLimit,
    runtime: runtimeOptions(options, 'analyze options'),
    onProgress: progress,
    ...(options.signal ? { signal: options.signal } : {}),
  });
  const summary = p.summary;
  const result: AnalysisResult = {
    schema: 'emollm.analysis/1',
    input: name,
    media: p.media,
    task,
    frames: p.frames,
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
  const prompt = await buildModelPrompt(model, p, {
    task: EMO_TASK[task],
    ...(options.modelFrames !== undefined ? { modelFrames: options.modelFrames } : {}),
    ...(options.guidance !== undefined ? { guidance: options.guidance } : {}),
    ...(options.text !== undefined ? { text: options.text } : {}),
    ...(options.context !== undefined ? { context: options.context } : {}),
    ...(options.labels ? { labels: options.labels } : {}),
    ...(options.taxonomy ? { taxonomy: options.taxonomy } : task === 'emotion' && !options.labels ? { taxonomy: 'ekman7' as const } : {}),
  });
  result.model = { path: model.path, templateId: prompt.templateId };
  progress('asking the model');
  const a = await askModel(model, prompt, options.signal ? { signal: options.signal } : {});
  result.answer = { ...a, source: 'model' };
  return result;
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
