/**
 * The `emollm train-mvp` option table (a light module: the top-level usage lists it without
 * loading the trainer).
 */
import type { CommandSpec } from '../cli/args.js';

export const TRAIN_MVP_SPEC = {
  name: 'train-mvp',
  synopsis: '',
  summary:
    "train an EmoLLM checkpoint's Multi-perspective Visual Projection on an EmoBench JSONL (language model and\n" +
    'vision tower frozen; CPU, or --device cuda): AdamW, warmup + cosine, gradient accumulation over --batch, clipping; checkpoints\n' +
    'written atomically (--resume continues a killed run to the same weights); --val scored with the evaluator',
  positionals: { min: 0, max: 0 },
  options: {
    model: { type: 'string', value: 'DIR', description: 'the EmoLLM checkpoint to start from (emollm init-mvp output)' },
    bench: { type: 'string', value: 'FILE', description: 'training samples (EmoBench JSONL)' },
    val: { type: 'string', value: 'FILE', description: 'validation samples (EmoBench JSONL), scored by the evaluator' },
    'media-root': { type: 'string', value: 'DIR', description: "media paths' root (default: the --bench file's folder)" },
    out: { type: 'string', value: 'DIR', description: 'the trained checkpoint folder (loads with loadModel)' },
    perspectives: {
      type: 'list',
      value: 'NAMES',
      description: 'perspectives to train (default: every open one); a closed one named here is opened with a learned gate',
    },
    steps: { type: 'integer', value: 'N', description: 'optimizer steps (default: --epochs over --bench)' },
    epochs: { type: 'number', value: 'N', description: 'passes over --bench when --steps is not given (default 1)' },
    batch: { type: 'integer', value: 'N', description: 'samples per optimizer step (gradient accumulation; default 8)' },
    lr: { type: 'number', value: 'LR', description: 'peak learning rate (default 1e-3)' },
    'min-lr-ratio': { type: 'number', value: 'R', description: 'the cosine decays to lr * R (default 0.1)' },
    warmup: { type: 'integer', value: 'N', description: 'linear warmup steps (default: 3% of the steps)' },
    'weight-decay': { type: 'number', value: 'W', description: 'AdamW decoupled weight decay on matrices (default 0)' },
    clip: { type: 'number', value: 'NORM', description: 'gradient clipping by global norm (default 1; 0 = off)' },
    seed: { type: 'integer', value: 'N', description: 'sample order seed (default 0)' },
    'eval-every': { type: 'integer', value: 'N', description: 'score --val every N steps (default: at the end only)' },
    'save-every': { type: 'integer', value: 'N', description: 'checkpoint every N steps (default: --eval-every, else the end)' },
    resume: { type: 'boolean', description: "continue the run in --out from its last checkpoint (same options)" },
    recompute: {
      type: 'string',
      choices: ['auto', 'on', 'off'],
      description: "recompute each decoder layer's activations in the backward instead of keeping them (auto: keep as many layers' activations as fit in 1 GiB per sample, recompute the others)",
    },
    face: {
      type: 'boolean',
      description: 'run the face perspective as `emollm eval` does (face cues + face-region boxes; default: when the checkpoint has an open face-region perspective)',
    },
    'no-face': { type: 'boolean', description: 'no face perspective (refused when a face-region perspective is trained)' },
    frames: { type: 'integer', value: 'N', description: 'video samples: frames sampled per video (default 8, as eval)' },
    'model-frames': { type: 'integer', value: 'N', description: 'video samples: of those, frames given to the model (default 4, as eval)' },
    'cache-dir': { type: 'string', value: 'DIR', description: 'vision-feature cache (default <out>/feature-cache)' },
    device: {
      type: 'string',
      value: 'cpu|cuda',
      description: "where the frozen decoder's forward and backward run (cuda: a CUDA build and a GPU; the MVP heads and AdamW stay on the CPU)",
    },
    json: { type: 'boolean', description: 'print the result as JSON' },
  },
  notes:
    '\nThe frozen vision tower runs once per image: its features are cached on disk, keyed by the image bytes\n' +
    "and the tower (weights, layers, preprocessing); video frames are sampled with ffmpeg as eval samples them.\n" +
    "Training scores each answer's tokens after the same EmoPrompt the evaluator builds (same frames, same face\n" +
    'perspective), so `emollm eval` (with `--no-face` when training ran without faces) measures what was trained.',
} as const satisfies CommandSpec;
