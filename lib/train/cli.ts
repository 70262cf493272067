/** `emollm train-mvp`: the command line over {@link trainMvp}. */
import { formatUsage, parseCommand, UsageError } from '../cli/args.js';
import type { Device } from '../runtime.js';
import { formatDuration } from '../emobench/progress.js';
import { TRAIN_MVP_SPEC } from './spec.js';
import { trainMvp, type TrainMvpOptions } from './train_mvp.js';

const USAGE = formatUsage(TRAIN_MVP_SPEC);

export async function trainMvpCommand(argv: readonly string[]): Promise<number> {
  const { values: v, help } = parseCommand(TRAIN_MVP_SPEC, argv);
  if (help) {
    console.log(USAGE);
    return 0;
  }
  for (const k of ['model', 'bench', 'out'] as const) if (!v[k]) throw new UsageError(`train-mvp needs --${k}`, USAGE);
  const rt = v as Record<string, unknown>;
  if (v.steps !== undefined && v.epochs !== undefined) throw new UsageError('train-mvp: give --steps or --epochs, not both', USAGE);
  if (v.face && v['no-face']) throw new UsageError('train-mvp: give --face or --no-face, not both', USAGE);
  const tty = process.stderr.isTTY === true;
  let lastLine = 0;
  const o: TrainMvpOptions = {
    model: v.model!,
    bench: v.bench!,
    out: v.out!,
    ...(v.val !== undefined ? { val: v.val } : {}),
    ...(v['media-root'] !== undefined ? { mediaRoot: v['media-root'] } : {}),
    ...(v.perspectives !== undefined ? { perspectives: v.perspectives } : {}),
    ...(v.steps !== undefined ? { steps: v.steps } : {}),
    ...(v.epochs !== undefined ? { epochs: v.epochs } : {}),
    ...(v.batch !== undefined ? { batch: v.batch } : {}),
    ...(v.lr !== undefined ? { lr: v.lr } : {}),
    ...(v['min-lr-ratio'] !== undefined ? { minLrRatio: v['min-lr-ratio'] } : {}),
    ...(v.warmup !== undefined ? { warmup: v.warmup } : {}),
    ...(v['weight-decay'] !== undefined ? { weightDecay: v['weight-decay'] } : {}),
    ...(v.clip !== undefined ? { clip: v.clip } : {}),
    ...(v.seed !== undefined ? { seed: v.seed } : {}),
    ...(v['eval-every'] !== undefined ? { evalEvery: v['eval-every'] } : {}),
    ...(v['save-every'] !== undefined ? { saveEvery: v['save-every'] } : {}),
    ...(v.resume ? { resume: true } : {}),
    ...(v.recompute === 'on' || v.recompute === 'off' ? { recompute: v.recompute === 'on' } : {}),
    ...(v['cache-dir'] !== undefined ? { cacheDir: v['cache-dir'] } : {}),
    ...(v.face ? { face: true } : v['no-face'] ? { face: false } : {}),
    ...(v.frames !== undefined ? { frames: v.frames } : {}),
    ...(v['model-frames'] !== undefined ? { modelFrames: v['model-frames'] } : {}),
    ...(typeof rt.threads === 'number' ? { threads: rt.threads } : {}),
    // --device was checked and made the process default by the parser (configure); given here too
    // so that the trainer and the evaluation model load there whatever else configured
    ...(typeof rt.device === 'string' ? { device: rt.device as Device } : {}),
    onStep: (s) => {
      const line =
        `train-mvp step ${s.step}/${s.totalSteps}  loss ${s.loss.toFixed(4)}  lr ${s.lr.toExponential(2)}  |g| ${s.gradNorm.toFixed(3)}  ` +
        `${s.samplesPerSecond.toFixed(2)} samples/s  ${s.tokensPerSecond.toFixed(0)} tok/s  ETA ${formatDuration(s.etaMs)}`;
      const now = performance.now();
      if (tty) process.stderr.write(`\r${line}\x1b[K${s.step === s.totalSteps ? '\n' : ''}`);
      else if (s.step === s.totalSteps || s.step === 1 || now - lastLine > 5000) {
        process.stderr.write(line + '\n');
        lastLine = now;
      }
    },
    onWarning: (m) => process.stderr.write(`train-mvp: ${m}\n`),
    onEval: (e) => {
      const tasks = Object.entries(e.perTask).map(([t, a]) => `${t} ${(a * 100).toFixed(1)}%`).join('  ');
      process.stderr.write(`${tty ? '\n' : ''}validation at step ${e.step}: accuracy ${(e.accuracy * 100).toFixed(1)}%  (${tasks})  ${e.outDir}\n`);
    },
  };
  const ac = new AbortController();
  const onSig = (): void => ac.abort();
  process.once('SIGINT', onSig);
  try {
    const r = await trainMvp({ ...o, signal: ac.signal });
    if (v.json) console.log(JSON.stringify(r, null, 2));
    if (!v.json)
      console.log(
        `${r.out}: ${r.steps} steps (${r.stepsRun} in this run, decoder on ${r.device}) on ${r.samples} samples (${r.videoSamples} videos; face perspective ${r.face ? 'on' : 'off'}), final loss ${r.finalLoss.toFixed(4)}, ${formatDuration(r.wallMs)}`,
      );
    return 0;
  } finally {
    process.off('SIGINT', onSig);
  }
}
