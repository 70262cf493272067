// The package as npm publishes it: the file list `npm pack` would ship (no source maps, the
// EmoBench API and CLI in dist), and consumers of that file set installed beside each other
// under node_modules: plain ESM `import`, plain CommonJS `require`, and strict TypeScript
// projects under `module: nodenext` in both module kinds (type-checked with this repo's tsc,
// then run). Needs dist/ (tsc); the native calls need the built addon and are skipped without it.
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const haveDist = existsSync(join(repoRoot, 'dist', 'index.js'));
const addon = join(repoRoot, 'build', 'Release', 'emollm.node');
const tsc = join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc');

function packedFiles(): string[] {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: repoRoot, encoding: 'utf8' });
  return (JSON.parse(out) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path);
}

// What a consumer imports and checks, in both module kinds (the same source).
const CONSUMER_TS = `
import { EmollmError, FaceAnalyzer, Model, buildBenchmark, compareRuns, computeMetrics, cpuInfo, formatComparison, leaderboardMarkdown,
  loadModel, pairedBootstrap, pull, resolveHfPath, runEval, writeReports, BENCH_TASKS } from 'emollm';
import type { BenchSample, EvalOptions, EvalResults, Metrics, PullOptions, ScoredItem, LoadModelOptions } from 'emollm';

// Types a strict consumer relies on.
const opts: EvalOptions = { bench: 'b.jsonl', model: 'random', out: 'run' };
const load: LoadModelOptions = { contextSize: 64 };
const pullOpts: PullOptions = { include: ['*.gguf'] };
const disposables = (m: Model, f: FaceAnalyzer): AsyncDisposable[] => [m, f];
const items: ScoredItem[] = [];
const metrics: Metrics = computeMetrics(items);
let results: EvalResults | undefined;
let sample: BenchSample | undefined;
void disposables; void results; void sample; void opts; void load; void pullOpts;

const report = {
  functions: [loadModel, runEval, buildBenchmark, computeMetrics, pairedBootstrap, compareRuns, writeReports, leaderboardMarkdown, formatComparison, pull, resolveHfPath]
    .every((f) => typeof f === 'function'),
  tasks: BENCH_TASKS.length,
  overallTasks: metrics.overall.tasks.length,
  error: new EmollmError('ERR_INVALID_ARGUMENT', 'x') instanceof Error,
  modelDispose: typeof Model.prototype[Symbol.asyncDispose],
  faceDispose: typeof FaceAnalyzer.prototype[Symbol.asyncDispose],
  cpu: process.env.EMOLLM_CONSUMER_NATIVE ? cpuInfo().logicalCpus > 0 : null,
};
console.log(JSON.stringify(report));
`;

const tsconfig = (module: string): string =>
  JSON.stringify({
    compilerOptions: {
      target: 'ES2022', module, moduleResolution: module, lib: ['ES2022', 'esnext.disposable'], types: ['node'],
      strict: true, noUncheckedIndexedAccess: true, exactOptionalPropertyTypes: true, skipLibCheck: true, outDir: 'out', rootDir: '.',
    },
    include: ['index.ts'],
  });

describe.skipIf(!haveDist)('the published package', () => {
  let files: string[];
  let consumer: string;

  beforeAll(() => {
    files = packedFiles();
    // Inside this repo's node_modules so that emollm's own dependencies resolve as they would after `npm install`.
    consumer = mkdtempSync(join(repoRoot, 'node_modules', '.emollm-consumer-'));
    const pkg = join(consumer, 'node_modules', 'emollm');
    for (const f of files) {
      mkdirSync(dirname(join(pkg, f)), { recursive: true });
      cpSync(join(repoRoot, f), join(pkg, f));
    }
    if (existsSync(addon)) cpSync(addon, join(pkg, 'build', 'Release', 'emollm.node')); // as `npm rebuild` leaves it
  }, 60_000);
  afterAll(() => {
    if (consumer) rmSync(consumer, { recursive: true, force: true });
  });

  it('ships dist with declarations, no source maps, the CLI and the EmoBench API', () => {
    expect(files.filter((f) => f.endsWith('.map'))).toEqual([]);
    for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/cli.js', 'dist/cli/args.js', 'dist/hub.js', 'dist/emobench/index.js', 'dist/emobench/index.d.ts', 'package.json'])
      expect(files, f).toContain(f);
    expect(files.some((f) => f.startsWith('tests/') || f.startsWith('lib/'))).toBe(false);
    // The face weights ship inside; face-api itself is only a development dependency.
    for (const f of ['models/face/tiny_face_detector_model.bin', 'models/face/face_expression_model.bin', 'models/face/LICENSE', 'models/face/SOURCE.md'])
      expect(files, f).toContain(f);
    const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { dependencies: Record<string, string>; devDependencies: Record<string, string> };
    expect(pkg.dependencies['@vladmandic/face-api']).toBeUndefined();
    expect(pkg.devDependencies['@vladmandic/face-api']).toBeDefined();
  });

  const env = { ...process.env, ...(existsSync(addon) ? { EMOLLM_CONSUMER_NATIVE: '1' } : {}) };

  it('plain ESM import and CommonJS require give the same API', () => {
    const dir = join(consumer, 'plain');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'esm.mjs'), "import * as e from 'emollm'; console.log(JSON.stringify([typeof e.loadModel, typeof e.runEval, typeof e.computeMetrics, Object.keys(e).length]));");
    writeFileSync(join(dir, 'cjs.cjs'), "const e = require('emollm'); console.log(JSON.stringify([typeof e.loadModel, typeof e.runEval, typeof e.computeMetrics, Object.keys(e).length]));");
    const esm = spawnSync(process.execPath, ['esm.mjs'], { cwd: dir, encoding: 'utf8' });
    const cjs = spawnSync(process.execPath, ['cjs.cjs'], { cwd: dir, encoding: 'utf8' });
    expect(esm.status, esm.stderr).toBe(0);
    expect(cjs.status, cjs.stderr).toBe(0);
    expect(cjs.stderr).toBe(''); // no ExperimentalWarning
    expect(JSON.parse(esm.stdout)).toEqual(JSON.parse(cjs.stdout));
    expect(JSON.parse(esm.stdout).slice(0, 3)).toEqual(['function', 'function', 'function']);
  });

  it.each([
    ['module', 'nodenext'],
    ['commonjs', 'nodenext'],
  ])('a strict TypeScript project ("type": "%s", module %s) type-checks and runs', (type, module) => {
    const dir = join(consumer, `ts-${type}`);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: `consumer-${type}`, private: true, type }));
    writeFileSync(join(dir, 'tsconfig.json'), tsconfig(module));
    writeFileSync(join(dir, 'index.ts'), CONSUMER_TS);
    const c = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: dir, encoding: 'utf8' });
    expect(c.status, c.stdout + c.stderr).toBe(0);
    // The CommonJS project really loads emollm with require() (Node >= 20.19 loads ES modules so).
    const emitted = readFileSync(join(dir, 'out', 'index.js'), 'utf8');
    expect(emitted).toMatch(type === 'commonjs' ? /require\("emollm"\)/ : /from 'emollm'/);
    const r = spawnSync(process.execPath, [join('out', 'index.js')], { cwd: dir, encoding: 'utf8', env });
    expect(r.status, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(report).toMatchObject({ functions: true, tasks: 6, error: true, modelDispose: 'function', faceDispose: 'function' });
    if (existsSync(addon)) expect(report.cpu).toBe(true);
    else console.warn('native call in the consumer skipped: build/Release/emollm.node not built');
  }, 120_000);

  it('a type error in a consumer is caught (the check can fail)', () => {
    const dir = join(consumer, 'ts-wrong');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'consumer-wrong', private: true, type: 'commonjs' }));
    writeFileSync(join(dir, 'tsconfig.json'), tsconfig('nodenext'));
    writeFileSync(join(dir, 'index.ts'), "import { runEval } from 'emollm';\nvoid runEval({ bench: 1 });\n");
    const c = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.json', '--noEmit'], { cwd: dir, encoding: 'utf8' });
    expect(c.status).not.toBe(0);
    expect(c.stdout).toMatch(/index\.ts\(2,/);
  }, 120_000);

  it('a prebuild tagged as prebuildify --tag-libc names it is picked for glibc and refused for musl (node-gyp-build)', () => {
    const dir = join(consumer, 'tagged');
    const file = join(dir, 'prebuilds', `${process.platform}-${process.arch}`, 'emollm.glibc.node');
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, 'not loaded: only resolved');
    const resolveIn = (libc: string): { status: number | null; stdout: string; stderr: string } =>
      spawnSync(process.execPath, ['-e', `console.log(require('node-gyp-build').resolve(${JSON.stringify(dir)}))`], {
        cwd: repoRoot,
        encoding: 'utf8',
        env: { ...process.env, LIBC: libc },
      });
    const glibc = resolveIn('glibc');
    expect(glibc.status, glibc.stderr).toBe(0);
    expect(glibc.stdout.trim()).toBe(file);
    const musl = resolveIn('musl');
    expect(musl.status).not.toBe(0);
    expect(musl.stderr).toMatch(/No native build was found/);
  });

  it('with glibc and musl prebuilds side by side (npm run prebuild:linux-x64-musl), each libc picks its own', () => {
    const dir = join(consumer, 'tagged-both');
    const folder = join(dir, 'prebuilds', `${process.platform}-${process.arch}`);
    mkdirSync(folder, { recursive: true });
    for (const libc of ['glibc', 'musl']) writeFileSync(join(folder, `emollm.${libc}.node`), 'not loaded: only resolved');
    for (const libc of ['glibc', 'musl']) {
      const r = spawnSync(process.execPath, ['-e', `console.log(require('node-gyp-build').resolve(${JSON.stringify(dir)}))`], {
        cwd: repoRoot,
        encoding: 'utf8',
        env: { ...process.env, LIBC: libc },
      });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout.trim()).toBe(join(folder, `emollm.${libc}.node`));
    }
  });
});
