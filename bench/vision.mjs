#!/usr/bin/env node
// `npm run bench:vision [-- options]`: (case llava15) one 336x336 image through LLaVA-1.5's vision side (CLIP
// ViT-L/14-336, 24 layers, 577 tokens, + the 1024 -> 4096 -> 4096 MLP projector) with random
// weights, for f32 / f16 / bf16 towers: wall time per image, GFLOP/s and % of the machine's fp32
// FMA and bf16 dot peaks measured in the same run (build-bench/bench_kernels' probes), peak RSS;
// beside PyTorch (Debian's python3-torch, f32, same shapes, same threads) when it is installed.
// See bench/README.md ("Vision benchmark"). Cases next and qwen2vl (bench/vlm-cases.mjs): LLaVA-NeXT-7B's
// anyres tiles and Qwen2-VL-7B's images and video, preprocessing and vision timed apart.
//
//   npm run bench:vision
//   npm run bench:vision -- --dtypes bf16 --threads 2
//   npm run -s bench:vision -- --json > vision.json
//
// Every measurement (one tower dtype, or the anchor) runs in its own child process, one at a time.
// This file also exports the harness helpers bench/llava.mjs uses.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { torchEnv } from './anchor-env.mjs';
import { childMain, machineBusyS, median, processCpuS, timed, waitQuiet } from './measure.mjs';
import { DEFAULT_OUT, VISION, VISION_DTYPES, ensure, mmprojPlan, stubPlan } from './make-random-llava.mjs';
import { QWEN2VL, VLM_CASES, nextMmprojPlan, qwen2vlGflop, qwen2vlMmprojPlan, qwen2vlStubPlan, vlmChild, vlmSamples } from './vlm-cases.mjs';

const here = dirname(fileURLToPath(import.meta.url));
export const root = join(here, '..');

// ============================================================================ shared helpers
export { machineBusyS, median, processCpuS, timed, waitQuiet };
export const fmt = (v, d = 1) => (v === undefined || v === null || !Number.isFinite(v) ? '-' : v.toFixed(d));

// Physical cores (as bench/kernels.mjs): unique (physical id, core id) pairs.
export function physicalCores() {
  try {
    const cores = new Set();
    let phys = '0';
    for (const line of readFileSync('/proc/cpuinfo', 'utf8').split('\n')) {
      const [k, v] = line.split(':').map((s) => s && s.trim());
      if (k === 'physical id') phys = v;
      else if (k === 'core id') cores.add(`${phys}/${v}`);
    }
    if (cores.size) return cores.size;
  } catch {}
  return os.availableParallelism?.() ?? os.cpus().length;
}

// Runs a child process; resolves with its last stdout line parsed as JSON (or { ok: false, error }).
export function runChild(cmd, args, { timeoutS = 1800, label = cmd, env = process.env } = {}) {
  return new Promise((resolveP) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], env });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => {
      stderr += d;
      for (const line of String(d).split('\n')) if (line.trim()) process.stderr.write(`    ${line}\n`);
    });
    child.on('error', (e) => { stderr += String(e); });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutS * 1000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const wall = (performance.now() - t0) / 1000;
      const last = stdout.trim().split('\n').filter(Boolean).at(-1);
      let res;
      try { res = JSON.parse(last); } catch {
        res = { ok: false, error: signal ? `${label}: killed (${signal}) after ${wall.toFixed(0)} s` : `${label}: exit ${code}, no result\n${stderr.slice(-2000)}` };
      }
      res.wall_s = wall;
      resolveP(res);
    });
  });
}

// Machine ceilings from build-bench/bench_kernels (built by bench/kernels.mjs when needed); its
// --filter matches no case, so only the probes run.
export function probePeaks(threads, log) {
  const r = spawnSync(process.execPath, [join(here, 'kernels.mjs'), '--filter', '__probes_only__', '--no-anchors', '--json', '--threads', String(threads)],
    { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
  try {
    const j = JSON.parse(r.stdout);
    return { fma_gflops: j.probes.fma_gflops, bf16_dot_gflops: j.probes.bf16_dot_gflops, amx_bf16_gflops: j.probes.amx_bf16_gflops,
      int8_dot_gops: j.probes.int8_dot_gops, int8_block_gops: j.probes.int8_block_gops, read_bw_gbs: j.probes.read_bw_gbs, isa: j.probes.fma_isa, amx: j.machine?.amx_usable ?? (j.probes.amx_bf16_gflops != null), machine: j.machine };
  } catch {
    log(`the machine probes (bench_kernels) failed; the % columns will be empty.\n${(r.stderr || '').split('\n').slice(-8).join('\n')}`);
    return null;
  }
}
// The highest of each ceiling over the probes of a run (a busy moment only lowers a probe).
export function combinePeaks(list) {
  const ps = list.filter(Boolean);
  if (!ps.length) return null;
  const hi = (k) => { const v = ps.map((p) => p[k]).filter(Number.isFinite); return v.length ? Math.max(...v) : null; };
  return { ...ps[0], fma_gflops: hi('fma_gflops'), bf16_dot_gflops: hi('bf16_dot_gflops'), amx_bf16_gflops: hi('amx_bf16_gflops'),
    int8_dot_gops: hi('int8_dot_gops'), int8_block_gops: hi('int8_block_gops'), read_bw_gbs: hi('read_bw_gbs'), probes: list };
}

// Brings the addon (incremental node-gyp build) and dist/ (tsc, when missing or older than lib/) up to date.
export function ensureBuilt(build, log) {
  if (build) {
    log('bringing the addon up to date (node scripts/build-addon.mjs) ...');
    const r = spawnSync(process.execPath, [join(root, 'scripts', 'build-addon.mjs')], { cwd: root, stdio: ['ignore', 2, 2] });
    if (r.status !== 0) throw new Error('the addon build failed (see above)');
  }
  const dist = join(root, 'dist', 'index.js');
  const libDir = join(root, 'lib');
  const newest = Math.max(...readdirSync(libDir).filter((f) => f.endsWith('.ts')).map((f) => statSync(join(libDir, f)).mtimeMs));
  if (!existsSync(dist) || (build && statSync(dist).mtimeMs < newest)) {
    log('compiling the TypeScript API (npx tsc -p tsconfig.json) ...');
    const r = spawnSync(process.platform === 'win32' ? 'npx.cmd' : 'npx', ['tsc', '-p', 'tsconfig.json'], { cwd: root, stdio: ['ignore', 2, 2] });
    if (r.status !== 0 && !existsSync(dist)) throw new Error('tsc failed and there is no dist/');
    if (r.status !== 0) log('tsc reported errors; using dist/ as it is');
  }
}

export function printTable(head, rows, out, leftCols = 1) {
  const lines = [head, ...rows].map((l) => l.map((x) => (x === undefined || x === null ? '-' : String(x))));
  const w = head.map((_, c) => Math.max(...lines.map((l) => l[c].length)));
  const pr = (l) => out(l.map((x, c) => (c < leftCols ? x.padEnd(w[c]) : x.padStart(w[c]))).join('  ').trimEnd());
  pr(lines[0]);
  out(w.map((n) => '-'.repeat(n)).join('  '));
  lines.slice(1).forEach(pr);
}
export const busyMark = (c) => (Number.isFinite(c) ? `${c.toFixed(2)}${c >= 0.25 ? '!' : ''}` : '-');

// GFLOP of one image through the tower (first `layers` encoder layers) and the projector:
// multiply-adds x 2 of the patch-embedding GEMM, per layer q/k/v/o (4 T D^2), fc1 + fc2 (2 T D F),
// attention scores and mix (2 T^2 D), and the projector over the 576 kept tokens. Norms,
// activations and softmax are not counted.
export function visionGflop(v = VISION, layers = v.n_layer) {
  const P = v.n_patches, T = v.n_pos, D = v.n_embd, F = v.n_ff, K = v.n_channels * v.patch_size ** 2;
  const patch = P * K * D;
  const layer = 4 * T * D * D + 2 * T * D * F + 2 * T * T * D;
  const proj = P * (D * v.mm_hidden + v.mm_hidden * v.mm_out);
  return { total: (2 * (patch + layers * layer + proj)) / 1e9, patch: (2 * patch) / 1e9, layers: (2 * layers * layer) / 1e9, projector: (2 * proj) / 1e9 };
}

// Normalised random pixels [B, 3, S, S]: uniform [0,1) per channel through the CLIP mean / std.
export function randomPixels(B, S, seed = 1, mean = VISION.mean, std = VISION.std) {
  let x = (seed * 2654435761) >>> 0 || 1;
  const px = new Float32Array(B * 3 * S * S);
  for (let i = 0; i < px.length; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    const c = Math.floor(i / (S * S)) % 3;
    px[i] = (x / 4294967296 - mean[c]) / std[c];
  }
  return px;
}

// ============================================================================ emollm child
async function emollmChild(spec) {
  const log = (...a) => console.error('[emollm]', ...a);
  const out = { side: 'emollm', dtype: spec.dtype, ok: false, reps: [] };
  await childMain(out, log, async (use) => {
    const { loadModel, cpuInfo } = await import(pathToFileURL(join(spec.pkgRoot ?? root, 'dist', 'index.js')).href);
    try { out.cpu = cpuInfo(); } catch {}
    const t0 = performance.now();
    const model = use(await loadModel(spec.text, { mmproj: spec.mmproj, threads: spec.threads, contextSize: 64 }));
    out.load_s = (performance.now() - t0) / 1000;
    const vi = model.info.vision;
    out.vision = vi;
    const px = randomPixels(1, vi.imageSize, spec.seed, vi.mean, vi.std);
    // warm-up: faults in the mapped weights, sizes the buffers
    const w = await timed(() => model.encodePixels(px, 1));
    out.warmup_s = w.s;
    const feats = w.value;
    let bad = 0;
    for (let i = 0; i < feats.length; i += 97) if (!Number.isFinite(feats[i])) bad++;
    if (bad) throw new Error(`the features have ${bad} non-finite sampled values`);
    out.features = [vi.nImageTokens, feats.length / vi.nImageTokens];
    log(`${spec.dtype}: load ${out.load_s.toFixed(1)} s, warm-up image ${w.s.toFixed(2)} s`);
    const tStart = performance.now();
    for (let rep = 0; rep < spec.maxReps; rep++) {
      const c0 = processCpuS();
      const r = await timed(() => model.encodePixels(px, 1));
      // the process's CPU seconds (all its threads): with --threads 1 the image's cost in core time,
      // which other work on a busy machine does not inflate as it does the wall time
      out.reps.push({ s: r.s, other: r.other, cpu_s: processCpuS() - c0 });
      log(`${spec.dtype}: image ${rep + 1}: ${r.s.toFixed(3)} s (other work ${r.other.toFixed(2)} cores)`);
      const spent = (performance.now() - tStart) / 1000;
      const quiet = out.reps.filter((x) => x.other < 0.25).length;
      if (rep + 1 >= spec.minReps && spent > spec.budgetS && (quiet > 0 || spent > 3 * spec.budgetS)) break;
    }
    out.images = out.reps.length + 1;  // the warm-up included (a profile counts it)
  });
}

// ============================================================================ PyTorch anchor
// The same tower shape in torch.nn.functional, f32, random weights, no autograd. Prints one JSON line.
const TORCH_ANCHOR = String.raw`
import json, math, resource, sys, time
spec = json.loads(sys.argv[1])
import torch
import torch.nn.functional as F
torch.set_num_threads(spec['threads'])
torch.manual_seed(0)
v = spec['vision']
E, Fd, H, L, S, p = v['n_embd'], v['n_ff'], v['n_head'], v['n_layer'], v['image_size'], v['patch_size']
T, D = v['n_pos'], v['n_embd'] // v['n_head']
def w(*shape): return torch.empty(*shape).normal_(0, 0.02)
def z(n): return torch.zeros(n)
def o(n): return torch.ones(n)
patch = w(E, 3, p, p); cls = w(E); pos = w(T, E); pre = (o(E), z(E))
layers = [dict(ln1=(o(E), z(E)), q=(w(E, E), z(E)), k=(w(E, E), z(E)), v=(w(E, E), z(E)), o=(w(E, E), z(E)),
               ln2=(o(E), z(E)), fc1=(w(Fd, E), z(Fd)), fc2=(w(E, Fd), z(E))) for _ in range(L)]
mm1 = (w(v['mm_hidden'], E), z(v['mm_hidden'])); mm2 = (w(v['mm_out'], v['mm_hidden']), z(v['mm_out']))
g = torch.Generator().manual_seed(1)
px = torch.rand(1, 3, S, S, generator=g)
px = (px - torch.tensor(v['mean']).view(1, 3, 1, 1)) / torch.tensor(v['std']).view(1, 3, 1, 1)
eps = v['eps']
def encode(px):
    x = F.conv2d(px, patch, stride=p).flatten(2).transpose(1, 2)        # [1, 576, E]
    x = torch.cat([cls.view(1, 1, E), x], dim=1) + pos
    x = F.layer_norm(x, (E,), *pre, eps)
    for l in layers:
        h = F.layer_norm(x, (E,), *l['ln1'], eps)
        q = F.linear(h, *l['q']).view(1, T, H, D).transpose(1, 2)
        k = F.linear(h, *l['k']).view(1, T, H, D).transpose(1, 2)
        vv = F.linear(h, *l['v']).view(1, T, H, D).transpose(1, 2)
        a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * (D ** -0.5), dim=-1)
        a = torch.matmul(a, vv).transpose(1, 2).reshape(1, T, E)
        x = x + F.linear(a, *l['o'])
        h = F.layer_norm(x, (E,), *l['ln2'], eps)
        h = F.linear(h, *l['fc1'])
        h = h * torch.sigmoid(1.702 * h)                                   # quick_gelu
        x = x + F.linear(h, *l['fc2'])
    f = x[:, 1:]
    return F.linear(F.gelu(F.linear(f, *mm1)), *mm2)
cfg = torch.__config__.show()
blas = [x.split('=', 1)[1] for x in cfg.replace(',', ' ').split() if x.startswith('BLAS_INFO=')]
import os
lib = os.path.realpath('/usr/lib/x86_64-linux-gnu/libblas.so.3') if os.path.exists('/usr/lib/x86_64-linux-gnu/libblas.so.3') else None
out = dict(side='torch', ok=True, version=torch.__version__, threads=torch.get_num_threads(), reps=[],
           blas=(blas[0] if blas else '?') + (' -> ' + lib if lib and (not blas or blas[0] == 'generic') else ''), mkl=torch.backends.mkl.is_available())
with torch.inference_mode():
    t = time.perf_counter(); y = encode(px); out['warmup_s'] = time.perf_counter() - t
    out['features'] = list(y.shape[1:])
    start = time.perf_counter()
    for i in range(spec['maxReps']):
        t = time.perf_counter(); encode(px); s = time.perf_counter() - t
        out['reps'].append(dict(s=s))
        print(f'[torch] image {i + 1}: {s:.3f} s', file=sys.stderr, flush=True)
        spent = time.perf_counter() - start
        if i + 1 >= spec['minReps'] and spent > spec['budgetS']: break
out['maxrss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
`;

const PY = '/usr/bin/python3';
export function torchAvailable() {
  if (!existsSync(PY)) return `${PY} not found`;
  const r = spawnSync(PY, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8', timeout: 120000 });
  return r.status === 0 ? null : (r.stderr || '').trim().split('\n').at(-1) || 'import torch failed';
}

// The anchor's "other work" is measured from outside (the parent polls /proc/stat around the child).
async function runTorch(spec, log) {
  return runChild(PY, ['-c', TORCH_ANCHOR, JSON.stringify(spec)], { timeoutS: spec.timeoutS, label: 'torch anchor', env: torchEnv(spec.threads) });
}

// ============================================================================ parent
function parseArgs(argv) {
  const o = { threads: 0, dtypes: [...VISION_DTYPES], budgetS: 12, minReps: 3, maxReps: 10, anchor: true, probe: true, build: true,
    out: DEFAULT_OUT, json: false, jsonOut: null, seed: 1, timeoutS: 900, quietWaitS: 20, abEnv: null, abRoot: null, abRounds: 1, profile: false,
    cases: ['llava15', ...VLM_CASES], visionLayers: 0, nextSize: [1024, 1024], qwenSizes: [[448, 448], [1280, 720]], videoFrames: 16, videoSize: [640, 360] };
  const size = (v, name) => {
    const m = /^(\d+)x(\d+)$/.exec(v.trim());
    if (!m || +m[1] < 1 || +m[2] < 1) throw new Error(`${name}: WIDTHxHEIGHT, not '${v}'`);
    return [Number(m[1]), Number(m[2])];
  };
  const val = (i, name) => { if (i + 1 >= argv.length) throw new Error(`${name} needs a value`); return argv[i + 1]; };
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) { argv.splice(i + 1, 0, a.slice(eq + 1)); a = argv[i] = a.slice(0, eq); }
    switch (a) {
      case '--threads': o.threads = Number(val(i, a)); i++; break;
      case '--dtypes': o.dtypes = val(i, a).split(',').map((s) => s.trim().toLowerCase()); i++; break;
      case '--budget': o.budgetS = Number(val(i, a)); i++; break;
      case '--reps': o.minReps = Number(val(i, a)); i++; break;
      case '--max-reps': o.maxReps = Number(val(i, a)); i++; break;
      case '--no-anchor': o.anchor = false; break;
      case '--no-probe': o.probe = false; break;
      case '--no-build': o.build = false; break;
      case '--models-dir': o.out = val(i, a); i++; break;
      case '--json': o.json = true; break;
      case '--json-out': o.jsonOut = val(i, a); i++; break;
      case '--seed': o.seed = Number(val(i, a)); i++; break;
      case '--timeout': o.timeoutS = Number(val(i, a)); i++; break;
      case '--quiet-wait': o.quietWaitS = Number(val(i, a)); i++; break;
      case '--cases': o.cases = val(i, a).split(',').map((x) => x.trim().toLowerCase()); i++; break;
      case '--vision-layers': o.visionLayers = Number(val(i, a)); i++; break;
      case '--next-size': o.nextSize = size(val(i, a), a); i++; break;
      case '--qwen-sizes': o.qwenSizes = val(i, a).split(',').map((x) => size(x, a)); i++; break;
      case '--video-frames': o.videoFrames = Number(val(i, a)); i++; break;
      case '--video-size': o.videoSize = size(val(i, a), a); i++; break;
      case '--ab-env': o.abEnv = parseEnvList(val(i, a)); i++; break;
      case '--ab-root': o.abRoot = resolve(val(i, a)); i++; break;
      case '--profile': o.profile = true; break;
      case '--ab-rounds': o.abRounds = Number(val(i, a)); i++; break;
      case '--help': case '-h': o.help = true; break;
      default: throw new Error(`unknown option ${a} (--help)`);
    }
  }
  for (const c of o.cases) if (!['llava15', ...VLM_CASES].includes(c)) throw new Error(`--cases: llava15, ${VLM_CASES.join(', ')}, not '${c}'`);
  if (!(Number.isInteger(o.videoFrames) && o.videoFrames >= 0 && o.videoFrames % 2 === 0)) throw new Error('--video-frames: an even number >= 0 (Qwen2-VL patches frames in pairs)');
  if (!(Number.isInteger(o.visionLayers) && o.visionLayers >= 0)) throw new Error('--vision-layers: an integer >= 1 (0: all)');
  for (const d of o.dtypes) if (!VISION_DTYPES.includes(d)) throw new Error(`--dtypes: ${VISION_DTYPES.join(', ')}, not '${d}'`);
  if (o.maxReps < o.minReps) o.maxReps = o.minReps;
  if (!(Number.isInteger(o.abRounds) && o.abRounds >= 1)) throw new Error('--ab-rounds: an integer >= 1');
  if (o.abRoot && !existsSync(join(o.abRoot, 'dist', 'index.js'))) throw new Error(`--ab-root: no dist/index.js under ${o.abRoot}`);
  return o;
}

// 'A=1,B=0' -> { A: '1', B: '0' } (environment variables of the --ab-env variant)
function parseEnvList(v) {
  const env = {};
  for (const kv of v.split(',').map((x) => x.trim()).filter(Boolean)) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(kv);
    if (!m) throw new Error(`--ab-env: NAME=VALUE[,NAME=VALUE...], not '${kv}'`);
    env[m[1]] = m[2];
  }
  if (!Object.keys(env).length) throw new Error('--ab-env: no NAME=VALUE given');
  return env;
}

const HELP = `usage: npm run bench:vision -- [options]
  --dtypes a,b          tower weight dtypes: f32, f16, bf16 (default all three)
  --threads N           threads for emollm and the anchor (default: physical cores)
  --budget S            timed images per measurement until S seconds are spent (default 12) and one
                        image was undisturbed (at most 3 x S), at least --reps N (default 3), at most
                        --max-reps N (default 10); one untimed warm-up image first
  --no-anchor           skip PyTorch; --no-probe skip the machine probes; --no-build skip building
  --models-dir DIR      where the random models are (default bench/models)
  --json                JSON on stdout (table on stderr); --json-out FILE writes it to a file
  --timeout S           kill a child after S seconds (default 900)
  --quiet-wait S        before each measurement wait up to S s for other work to stop (default 20; 0: don't)
  --cases a,b           llava15 (one 336 image, CLIP ViT-L), next (LLaVA-NeXT-7B: anyres, 5 tiles of 336 for
                        a square image), qwen2vl (Qwen2-VL-7B vision: images and a video); default all three
  --vision-layers N     cut the NeXT / Qwen2-VL towers to N layers (smoke runs; default: all)
  --next-size WxH       the NeXT image (default 1024x1024 -> pinpoint 672x672, 4 tiles + base)
  --qwen-sizes WxH,...  the Qwen2-VL images (default 448x448,1280x720)
  --video-frames N      Qwen2-VL video frames, even (default 16; 0: no video); --video-size WxH (default 640x360)
  --ab-env A=1,B=0      llava15: per dtype also measure with these environment variables set (a row labelled
                        with them), alternating with the plain run, e.g. EMOLLM_REPACK=0 for the
                        previous bf16 paths; --ab-rounds N alternations (default 1), reps pooled per row
  --ab-root DIR         llava15: the A/B variant loads the package at DIR instead (its dist/index.js and the
                        addon beside it, e.g. a checkout or copy of an earlier build): same models, same run,
                        alternating with this checkout; may be combined with --ab-env
  --profile             llava15: one more child per dtype (this checkout) with EMOLLM_PROFILE=1: per-op time per
                        image (GEMMs by shape, attention, norms, activations, thread hand-offs) with each op's
                        rate, floor at the probed peak / bandwidth and share of the gap to the floors, printed and in
                        the JSON (profiles); its images are not in the timed rows (profiling adds overhead)`;

// Best undisturbed image (other work < 0.25 cores), else the best of all.
function summarize(reps) {
  if (!reps?.length) return null;
  const quiet = reps.filter((r) => !(r.other >= 0.25));
  const use = quiet.length ? quiet : reps;
  const best = use.reduce((a, b) => (b.s < a.s ? b : a));
  // other: the other work beside the reported image
  const cpus = reps.map((r) => r.cpu_s).filter(Number.isFinite);
  return { best_s: best.s, median_s: median(reps.map((r) => r.s)), n: reps.length, quiet: quiet.length, other: best.other,
    other_max: Math.max(0, ...reps.map((r) => r.other).filter(Number.isFinite)),
    best_cpu_s: cpus.length ? Math.min(...cpus) : null, median_cpu_s: cpus.length ? median(cpus) : null };
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  if (o.help) { console.log(HELP); return; }
  const out = o.json ? (s) => process.stderr.write(s + '\n') : (s) => process.stdout.write(s + '\n');
  const log = (s) => process.stderr.write(`bench:vision: ${s}\n`);
  const threads = o.threads > 0 ? o.threads : physicalCores();
  const t0 = performance.now();

  ensureBuilt(o.build, log);
  const llava15 = o.cases.includes('llava15');
  const plans = llava15 ? [stubPlan(o.out), ...o.dtypes.map((d) => mmprojPlan(d, o.out))] : [];
  const vlmPlans = [];
  for (const c of o.cases.filter((x) => VLM_CASES.includes(x)))
    for (const dtype of o.dtypes) {
      const opts = { out: o.out, layers: o.visionLayers || undefined };
      vlmPlans.push({ case: c, dtype, text: c === 'next' ? stubPlan(o.out) : qwen2vlStubPlan(o.out),
        mmproj: c === 'next' ? nextMmprojPlan(dtype, opts) : qwen2vlMmprojPlan(dtype, opts) });
    }
  const all = [...plans, ...vlmPlans.flatMap((p) => [p.text, p.mmproj])].filter((p, i, a) => a.findIndex((q) => q.path === p.path) === i);
  await ensure(all, { log: (s) => log(s.trim()) });
  const load = os.loadavg()[0];
  if (load > threads * 0.5) log(`load average ${load.toFixed(2)}: other work is running; timings will be noisy (see the busy column)`);

  // machine probes at the start, after each measurement and at the end; the highest is used
  const probes = [];
  const probe = (when) => { if (o.probe) { log(`machine probes (${when}) ...`); probes.push(probePeaks(threads, log)); } };
  probe('start');

  const gf = visionGflop(VISION, VISION.n_layer);
  const results = [];
  const profiles = [];
  // --ab-env: per dtype the variant with those variables, then the plain run, --ab-rounds times;
  // each row pools its rounds' timed images (load / warm-up / RSS from its first round).
  const ab = Boolean(o.abEnv || o.abRoot);
  const abLabel = ab ? [...Object.entries(o.abEnv ?? {}).map(([k, v]) => `${k}=${v}`), ...(o.abRoot ? [`root ${o.abRoot}`] : [])].join(' ') : null;
  const variants = ab ? [{ label: abLabel, env: o.abEnv ?? {}, pkgRoot: o.abRoot }, { label: null, env: {} }] : [{ label: null, env: {} }];
  for (const [i, dtype] of (llava15 ? o.dtypes : []).entries()) {
    const mm = plans[i + 1].path;
    const rows = variants.map((v) => ({ side: 'emollm', dtype, label: v.label, res: null, sum: null }));
    for (let round = 0; round < (ab ? o.abRounds : 1); round++)
      for (const [vi, v] of variants.entries()) {
        const tag = `${dtype}${v.label ? ` [${v.label}]` : ''}`;
        log(`emollm ${tag} tower (${mm.split('/').at(-1)})${ab ? ` round ${round + 1}` : ''} ...`);
        await waitQuiet(o.quietWaitS, log);
        const spec = { text: plans[0].path, mmproj: mm, dtype, threads, seed: o.seed, budgetS: o.budgetS, minReps: o.minReps, maxReps: o.maxReps,
          pkgRoot: v.pkgRoot ?? undefined };
        const res = await runChild(process.execPath, [fileURLToPath(import.meta.url), '--child', JSON.stringify(spec)],
          { timeoutS: o.timeoutS, label: `emollm ${tag}`, env: { ...process.env, ...v.env } });
        const row = rows[vi];
        if (!row.res || !res.ok) row.res = res;  // the first round, or a failed one (fails the row)
        else if (row.res.ok) row.res.reps.push(...res.reps);
      }
    for (const row of rows) { row.sum = row.res.ok ? summarize(row.res.reps) : null; results.push(row); }
    if (o.profile) {
      log(`emollm ${dtype} tower, profiled (EMOLLM_PROFILE=1) ...`);
      await waitQuiet(o.quietWaitS, log);
      const dir = mkdtempSync(join(os.tmpdir(), 'emollm-vision-profile-'));
      const file = join(dir, 'profile.json');
      const spec = { text: plans[0].path, mmproj: mm, dtype, threads, seed: o.seed, budgetS: 0, minReps: o.minReps, maxReps: o.minReps };
      const res = await runChild(process.execPath, [fileURLToPath(import.meta.url), '--child', JSON.stringify(spec)],
        { timeoutS: o.timeoutS, label: `emollm ${dtype} profiled`, env: { ...process.env, EMOLLM_PROFILE: '1', EMOLLM_PROFILE_OUT: file } });
      let prof = null;
      try { prof = JSON.parse(readFileSync(file, 'utf8')); } catch { prof = { error: res.ok ? 'the child wrote no profile' : String(res.error).split('\n')[0] }; }
      rmSync(dir, { recursive: true, force: true });
      profiles.push({ dtype, images: res.images ?? null, ...prof });
    }
    if (i + 1 < o.dtypes.length) probe(`after ${dtype}`);
  }

  // ---- LLaVA-NeXT / Qwen2-VL cases: per sample, preprocessing and vision timed apart
  const vlmResults = [];
  for (const vp of vlmPlans) {
    const samples = vlmSamples(vp.case, o);
    log(`emollm ${vp.case} ${vp.dtype} (${vp.mmproj.path.split('/').at(-1)}): ${samples.map((x) => x.label).join(', ')} ...`);
    await waitQuiet(o.quietWaitS, log);
    const spec = { vlm: true, case: vp.case, text: vp.text.path, mmproj: vp.mmproj.path, dtype: vp.dtype, threads, seed: o.seed, samples,
      outDim: vp.case === 'next' ? VISION.mm_out : QWEN2VL.hidden_size, budgetS: o.budgetS, minReps: o.minReps, maxReps: o.maxReps };
    const res = await runChild(process.execPath, [fileURLToPath(import.meta.url), '--child', JSON.stringify(spec)], { timeoutS: o.timeoutS, label: `emollm ${vp.case} ${vp.dtype}` });
    vlmResults.push({ case: vp.case, dtype: vp.dtype, res });
    probe(`after ${vp.case} ${vp.dtype}`);
  }

  let anchor = null, anchorNote = null;
  if (o.anchor && llava15) {
    anchorNote = torchAvailable();
    if (anchorNote) { log(`anchor unavailable (${anchorNote})`); anchorNote = `anchor unavailable: ${anchorNote}`; }
    else {
      log('PyTorch anchor (f32) ...');
      await waitQuiet(o.quietWaitS, log);
      const spec = { threads, vision: VISION, budgetS: o.budgetS, minReps: o.minReps, maxReps: o.maxReps, timeoutS: o.timeoutS };
      const b0 = machineBusyS(), w0 = performance.now();
      const res = await runTorch(spec, log);
      // the child's own cpu time is not known from here: report the machine's total busy cores
      // minus the threads the anchor asked for, as an upper bound on other work
      const busy = (machineBusyS() - b0) / ((performance.now() - w0) / 1000);
      if (res.ok) for (const r of res.reps) r.other = NaN;
      anchor = { side: 'torch', dtype: 'f32', res, sum: res.ok ? summarize(res.reps) : null, machine_busy_cores: busy };
      if (!res.ok) anchorNote = `anchor failed: ${String(res.error).split('\n')[0]}`;
    }
  } else anchorNote = 'anchor skipped (--no-anchor)';

  probe('end');
  const peaks = combinePeaks(probes);

  // ---- table
  const cpu = [...results, ...vlmResults].find((r) => r.res.cpu)?.res.cpu;
  out('');
  out(`CPU: ${cpu?.brand ?? os.cpus()[0]?.model ?? 'unknown'} (${cpu?.isaActive ?? '?'} kernels), ${threads} threads`);
  if (llava15) {
  out(`LLaVA-1.5 vision: one ${VISION.image_size}x${VISION.image_size} image, CLIP ViT-L/14 (${VISION.n_layer} layers, ${VISION.n_pos} tokens, ` +
    `hidden ${VISION.n_embd}, MLP ${VISION.n_ff}) + projector ${VISION.n_embd}->${VISION.mm_hidden}->${VISION.mm_out}, random weights, ${threads} threads`);
  out(`GFLOP per image: ${fmt(gf.total, 1)} (patch ${fmt(gf.patch, 2)}, encoder ${fmt(gf.layers, 1)}, projector ${fmt(gf.projector, 1)}); ` +
    `s/image = best undisturbed image after a warm-up, median of all; %fma / %bf16 against the probes of this run`);
  const ta = anchor?.sum?.best_s;
  const head = ['engine', 'weights', 's/image', 'median', 'quiet/n', 'GFLOP/s', '%fma', '%bf16', 'torch/this', 'cpu s', 'cpu med', 'warm-up s', 'load s', 'RSS MiB', 'busy'];
  const rows = [];
  for (const r of [...results, ...(anchor ? [anchor] : [])]) {
    const s = r.sum;
    const name = r.side === 'emollm' ? 'emollm' : `PyTorch ${r.res.version ?? ''}`.trim();
    const weights = r.label ? `${r.dtype} [${r.label}]` : r.dtype;
    if (!s) { rows.push([name, weights, 'failed', '', '', '', '', '', '', '', '', '', '', '', '']); continue; }
    const gfs = gf.total / s.best_s;
    rows.push([
      name, weights, fmt(s.best_s, 3), fmt(s.median_s, 3), r.side === 'emollm' ? `${s.quiet}/${s.n}` : `-/${s.n}`, fmt(gfs, 1),
      peaks?.fma_gflops ? fmt((100 * gfs) / peaks.fma_gflops, 0) : '-',
      r.dtype === 'bf16' && peaks?.bf16_dot_gflops ? fmt((100 * gfs) / (peaks.amx_bf16_gflops ?? peaks.bf16_dot_gflops), 0) : '-',
      r.side === 'emollm' && ta ? fmt(ta / s.best_s, 2) : '-',
      fmt(s.best_cpu_s, 3), fmt(s.median_cpu_s, 3), fmt(r.res.warmup_s, 2), r.side === 'emollm' ? fmt(r.res.load_s, 2) : '-', fmt(r.res.maxrss_mib, 0),
      r.side === 'emollm' ? busyMark(s.other) : `(${fmt(anchor.machine_busy_cores, 2)})`,
    ]);
  }
  printTable(head, rows, out, 2);
  for (const r of [...results, ...(anchor ? [anchor] : [])]) if (!r.res.ok) out(`  ${r.side} ${r.dtype}: ${String(r.res.error).split('\n').slice(0, 3).join(' | ')}`);
  if (anchorNote) out(anchorNote);
  if (anchor?.res.ok) out(`anchor: PyTorch ${anchor.res.version} f32 (torch.nn.functional, ${anchor.res.threads} threads), BLAS ${anchor.res.blas}${anchor.res.mkl ? ', MKL' : ', no MKL'}`);
  if (peaks) {
    out(`peaks (bench_kernels probes, ${threads} threads, highest of ${probes.length}): fp32 FMA ${fmt(peaks.fma_gflops, 0)} GFLOP/s ` +
      `(each: ${probes.map((p) => fmt(p?.fma_gflops, 0)).join(' / ')}), bf16 dot (vdpbf16ps) ${fmt(peaks.bf16_dot_gflops, 0)} GFLOP/s` +
      ` (${probes.map((p) => fmt(p?.bf16_dot_gflops, 0)).join(' / ')})` +
      `${peaks.amx_bf16_gflops ? `, AMX bf16 ${fmt(peaks.amx_bf16_gflops, 0)} GFLOP/s` : ', no AMX'}`);
    out(`floor at peak: f32 ${fmt(gf.total / peaks.fma_gflops, 2)} s/image, bf16 ${fmt(gf.total / (peaks.amx_bf16_gflops ?? peaks.bf16_dot_gflops), 2)} s/image`);
  }
  const bf = results.find((r) => r.dtype === 'bf16' && !r.label)?.sum;
  const amx = Boolean(cpu?.features?.amxUsable ?? peaks?.amx);
  out(`issue target: <= 0.70 s/image at 2 threads with bf16 through AMX. This CPU: AMX ${amx ? 'present' : 'absent'}` +
    (bf ? `; bf16 here ${fmt(bf.best_s, 2)} s/image at ${threads} threads (${fmt(bf.best_s / 0.7, 1)}x the target)` : '') + '.');
  out('cpu s / cpu med = the process\'s CPU seconds per image (all its threads; best / median): at --threads 1 the image\'s ' +
    'cost in core time, which a busy machine inflates far less than the wall time (at more threads it includes waiting workers).');
  out('torch/this = PyTorch f32 s/image / this row\'s (above 1: emollm faster). quiet/n = timed images with < 0.25 cores of other work ' +
    '/ all; busy = other work beside the reported image (! >= 0.25: disturbed); the anchor\'s is the machine\'s total busy cores ' +
    'in parentheses (its own threads included).');
  }
  for (const pr of profiles) { annotateProfile(pr, peaks); printProfile(pr, out); }
  if (vlmResults.length) printVlmTable(vlmResults, peaks, o, out);
  out(`total wall ${fmt((performance.now() - t0) / 1000, 0)} s`);

  const json = { threads, vision: VISION, gflop: gf, peaks, profiles, results: results.map((r) => ({ dtype: r.dtype, env: r.label ?? undefined, ...r.sum, raw: r.res })), vlm: vlmResults,
    anchor: anchor ? { ...anchor.sum, raw: anchor.res, machine_busy_cores: anchor.machine_busy_cores } : null, anchor_note: anchorNote, cpu };
  if (o.json) process.stdout.write(JSON.stringify(json, null, 1) + '\n');
  if (o.jsonOut) writeFileSync(o.jsonOut, JSON.stringify(json, null, 1) + '\n');
  process.exitCode = [...results, ...vlmResults].every((r) => r.res.ok) ? 0 : 1;
}

// Each profiled op's work per image and its floor (LLaVA-1.5's tower + projector, `v` = VISION):
// GEMMs and attention in flop at the dtype's peak (bf16: the vdpbf16ps / AMX probe, as the tower's
// attention runs its products in bf16 too; f32 / f16: the FMA probe), the elementwise ops in bytes
// (each operand read or written once) at the read-bandwidth probe (lenient: their operands, 2-10
// MiB, mostly come from L3). GEMM rows: the encoder's shapes run n_layer calls an image at
// n_pos = 577 rows, every other call (patch embedding, projector) at n_patches = 576. Adds
// to each op of pr.ops: gflop, gflops, pct_peak (GEMM / attention), mbytes, gbs (elementwise),
// floor_ms and x_floor (per image), and pr.floor = { ms, floor_ms, ratio, peak_gflops, bw_gbs }.
export function annotateProfile(pr, peaks, v = VISION) {
  if (pr.error || !pr.ops || !peaks) return;
  const n = pr.images || 1, T = v.n_pos, P = v.n_patches, E = v.n_embd, F = v.n_ff;
  const bf16 = pr.dtype === 'bf16';
  const peak = bf16 ? (peaks.amx_bf16_gflops ?? peaks.bf16_dot_gflops) : peaks.fma_gflops;
  const bw = peaks.read_bw_gbs;
  const towerShape = (N, K) => K === E && (N === E || N === 3 * E || N === F) || (K === F && N === E);
  let ms = 0, floor = 0;
  for (const x of pr.ops) {
    if (x.op === 'handoff' || x.op === 'dispatch') continue;
    const calls = x.calls / n;  // per image
    let gflop = null, mbytes = null;
    if (x.op === 'gemm') {
      const m = /N=([\d+]+) K=(\d+)/.exec(x.key);
      if (m) {
        const N = m[1].split('+').reduce((a, b) => a + Number(b), 0), K = Number(m[2]);
        const tower = towerShape(N, K) ? Math.min(calls, v.n_layer) : 0;
        gflop = (2 * N * K * (tower * T + (calls - tower) * P)) / 1e9;
      }
    } else if (x.op === 'attention') gflop = (calls * 4 * T * T * E) / 1e9;  // QK^T and PV, all heads
    else if (x.op === 'add') mbytes = x.phase === 'decode' ? (calls * 3 * E * 4) / 1e6 : (calls * 3 * T * E * 4) / 1e6;
    else if (x.op === 'layernorm') mbytes = (calls * 2 * T * E * 4) / 1e6;
    else if (x.op === 'add_layernorm') mbytes = (calls * 4 * T * E * 4) / 1e6;  // x, d read; x, y written
    else if (x.op === 'quick_gelu' || x.op === 'gelu_erf') mbytes = (calls * 2 * (x.op === 'gelu_erf' ? P * v.mm_hidden : T * F) * 4) / 1e6;
    else if (x.op === 'copy_2d') mbytes = (calls * 2 * P * E * 4) / 1e6;
    else if (x.op === 'extract_patches') mbytes = (calls * 2 * v.n_channels * v.image_size ** 2 * 4) / 1e6;
    const t = x.total_ms / n;
    ms += t;
    if (gflop != null && peak) {
      x.gflop = gflop;
      x.gflops = gflop / (t / 1e3);
      x.pct_peak = (100 * x.gflops) / peak;
      x.floor_ms = (1e3 * gflop) / peak;
    } else if (mbytes != null && bw) {
      x.mbytes = mbytes;
      x.gbs = mbytes / 1e3 / (t / 1e3);
      x.floor_ms = mbytes / bw;  // MB / (GB/s) = ms
    }
    if (x.floor_ms != null) { x.x_floor = t / x.floor_ms; floor += x.floor_ms; }
  }
  pr.floor = { ms, floor_ms: floor, ratio: ms / floor, peak_gflops: peak, bw_gbs: bw };
}

// The per-op profile of one dtype's child (core/profiling_backend.h): ms per image by op and key
// (wall time of each call, thread-pool hand-offs inside the ops as their own rows), sorted, with
// annotateProfile's work, rate and floor per op, and the share of the gap to the floor per op.
function printProfile(pr, out) {
  out('');
  if (pr.error || !pr.ops) { out(`profile ${pr.dtype}: ${pr.error ?? 'no ops'}`); return; }
  const n = pr.images || 1;
  const ops = pr.ops.filter((x) => x.op !== 'handoff');
  const total = ops.reduce((a, x) => a + x.total_ms, 0);
  const gap = pr.floor ? pr.floor.ms - pr.floor.floor_ms : null;
  out(`profile: ${pr.dtype} tower + projector, ${n} images (warm-up included), ms per image by op (EMOLLM_PROFILE=1; ` +
    `handoff = waking and waiting for the pool inside those ops, already part of their time); rate = GFLOP/s (GEMM, ` +
    `attention: % of the ${pr.dtype === 'bf16' ? 'bf16 dot' : 'fp32 FMA'} peak) or GB/s (elementwise: % of the read probe); ` +
    `floor = the op's work at that peak / bandwidth; gap% = the op's share of (sum of ops - sum of floors):`);
  const rows = [...pr.ops].sort((a, b) => b.total_ms - a.total_ms)
    .map((x) => {
      const t = x.total_ms / n;
      const rate = x.gflops != null ? `${fmt(x.gflops, 0)} GF/s ${fmt(x.pct_peak, 0)}%`
        : x.gbs != null ? `${fmt(x.gbs, 1)} GB/s ${fmt((100 * x.gbs) / pr.floor.bw_gbs, 0)}%` : '-';
      return [x.op, x.key || '-', fmt(x.calls / n, 0), fmt(t, 1), x.op === 'handoff' ? '-' : fmt((100 * x.total_ms) / total, 1), rate,
        x.floor_ms != null ? fmt(x.floor_ms, 1) : '-', x.x_floor != null ? `${fmt(x.x_floor, 2)}x` : '-',
        x.floor_ms != null && gap > 0 ? fmt((100 * (t - x.floor_ms)) / gap, 1) : '-'];
    });
  printTable(['op', 'key', 'calls/image', 'ms/image', '%', 'rate', 'floor ms', 'x floor', 'gap%'], rows, out, 2);
  out(`sum of ops ${fmt(total / n, 1)} ms per image` + (pr.floor ? `; sum of floors ${fmt(pr.floor.floor_ms, 1)} ms (` +
    `${fmt(pr.floor.peak_gflops, 0)} GFLOP/s, ${fmt(pr.floor.bw_gbs, 1)} GB/s): ${fmt(pr.floor.ratio, 2)}x` : ''));
}

// LLaVA-NeXT / Qwen2-VL rows: per sample the best rep (fewest seconds of preprocessing + vision).
function printVlmTable(vlmResults, peaks, o, out) {
  out('');
  const layers = o.visionLayers || null;
  out(`LLaVA-NeXT-7B / Qwen2-VL-7B vision (random weights${layers ? `, towers cut to ${layers} layers: smoke run, not the 7B cost` : ''}): ` +
    's = best rep after a warm-up; pre = decode + resize/tile/patchify; vision = tower + projector/merger; GFLOP/s and %fma over the vision phase');
  const head = ['case', 'weights', 'sample', 'tiles/grid', 'tokens', 'pre s', 'vision s', 'total s', 'GFLOP', 'GFLOP/s', '%fma', 'busy'];
  const rows = [];
  for (const r of vlmResults) {
    if (!r.res.ok) { rows.push([r.case, r.dtype, 'failed', '', '', '', '', '', '', '', '', '']); continue; }
    for (const s of r.res.samples) {
      const best = s.reps.reduce((a, b) => (b.pre_s + b.vision_s < a.pre_s + a.vision_s ? b : a));
      const nl = layers ?? (r.case === 'next' ? VISION.n_layer : QWEN2VL.depth);
      const g = r.case === 'next' ? visionGflop(VISION, nl).total * s.tiles : qwen2vlGflop(s.grid, nl);
      const gfs = g / best.vision_s;
      rows.push([r.case, r.dtype, s.label, r.case === 'next' ? `${s.tiles} (${s.pinpoint.join('x')})` : s.grid.join('x'), fmt(s.tokens, 0),
        fmt(best.pre_s, 3), fmt(best.vision_s, 3), fmt(best.pre_s + best.vision_s, 3), fmt(g, 1), fmt(gfs, 1),
        peaks?.fma_gflops ? fmt((100 * gfs) / peaks.fma_gflops, 0) : '-', busyMark(best.other)]);
    }
  }
  printTable(head, rows, out, 3);
  for (const r of vlmResults) if (!r.res.ok) out(`  ${r.case} ${r.dtype}: ${String(r.res.error).split('\n').slice(0, 3).join(' | ')}`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const i = process.argv.indexOf('--child');
  if (i >= 0) {
    const spec = JSON.parse(process.argv[i + 1]);
    if (spec.vlm) vlmChild(spec, root, timed);
    else emollmChild(spec);
  }
  else main().catch((e) => { console.error(e?.stack ?? e); process.exit(1); });
}
