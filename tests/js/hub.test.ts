// `pull` and `hf:` paths against a local stand-in of the hub's endpoints (tests/js/helpers/fake_hub.ts,
// 127.0.0.1 only; no test touches the network): the hub cache layout, pagination, --include,
// resumed downloads (Range), checksum failures, HF_TOKEN, revisions, and loadModel('hf:...') of a
// real GGUF served by it.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { EmollmError } from '../../lib/errors.js';
import { globToRegExp, parseHfPath, parseRepoSpec, pull, repoCacheDir, resolveHfPath, type PullProgress } from '../../lib/hub.js';
import { gitBlobSha1, sha256, startFakeHub, type FakeHub, type FakeRepo } from './helpers/fake_hub.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const storiesGguf = join(shared, 'models', 'stories260K', 'gguf', 'stories260K.gguf');
const haveStories = existsSync(storiesGguf);
const cli = join(repoRoot, 'dist', 'cli.js');

const COMMIT = 'a'.repeat(40);
const COMMIT_V1 = 'b'.repeat(40);
const weights = randomBytes(300_000);
const config = Buffer.from('{"model_type":"llama"}\n');
const repos: FakeRepo[] = [
  {
    id: 'acme/tiny',
    commit: COMMIT,
    refs: { main: COMMIT },
    files: [
      { path: 'config.json', data: config, lfs: false },
      { path: 'README.md', data: Buffer.from('# tiny\n'), lfs: false },
      { path: 'weights/model-Q4_K_M.gguf', data: weights, lfs: true },
      { path: 'weights/model-Q8_0.gguf', data: randomBytes(1000), lfs: true },
      { path: 'notes.txt', data: Buffer.from('notes\n'), lfs: false },
    ],
  },
  { id: 'acme/private', commit: COMMIT, refs: { main: COMMIT }, token: 'hf_secretsecret', files: [{ path: 'a.bin', data: randomBytes(100), lfs: true }] },
  {
    id: 'acme/stories',
    commit: COMMIT_V1,
    refs: { main: COMMIT_V1, v1: COMMIT_V1 },
    files: haveStories ? [{ path: 'stories260K.gguf', data: readFileSync(storiesGguf), lfs: true }] : [],
  },
];

let hub: FakeHub;
let tmp: string;
beforeAll(async () => {
  hub = await startFakeHub(repos);
  tmp = mkdtempSync(join(tmpdir(), 'emollm-hub-'));
});
afterAll(async () => {
  await hub.close();
  rmSync(tmp, { recursive: true, force: true });
});

const fresh = (name: string): string => {
  const d = join(tmp, name);
  mkdirSync(d, { recursive: true });
  return d;
};

describe('repo ids, hf: paths and patterns', () => {
  it('parses owner/name[@revision] and rejects what is not one', () => {
    expect(parseRepoSpec('acme/tiny')).toEqual({ repo: 'acme/tiny', revision: 'main' });
    expect(parseRepoSpec('acme/tiny@v1.0')).toEqual({ repo: 'acme/tiny', revision: 'v1.0' });
    for (const bad of ['tiny', 'a/b/c', '../x/y', 'acme/tiny@', 'acme/..'])
      expect(() => parseRepoSpec(bad), bad).toThrow(EmollmError);
    expect(parseHfPath('hf:acme/tiny@v1/weights/model-Q4_K_M.gguf')).toEqual({ repo: 'acme/tiny', revision: 'v1', file: 'weights/model-Q4_K_M.gguf' });
    expect(() => parseHfPath('hf:acme/tiny/../../etc/passwd')).toThrow(/unsafe path/);
  });

  it('matches patterns as huggingface_hub does (* crosses /)', () => {
    expect(globToRegExp('*.gguf').test('weights/model-Q4_K_M.gguf')).toBe(true);
    expect(globToRegExp('*Q4_K_M*').test('weights/model-Q4_K_M.gguf')).toBe(true);
    expect(globToRegExp('*.json').test('config.json')).toBe(true);
    expect(globToRegExp('*.json').test('config.jsonl')).toBe(false);
    expect(globToRegExp('model-?.bin').test('model-1.bin')).toBe(true);
    expect(globToRegExp('[ab].txt').test('c.txt')).toBe(false);
    expect(globToRegExp('a.b').test('axb')).toBe(false);
  });
});

describe('pull', () => {
  it('downloads a repository into the hub cache layout, checks hashes, reports progress; a second pull fetches nothing', async () => {
    const cacheDir = fresh('full');
    const progress: PullProgress[] = [];
    const r = await pull('acme/tiny', { cacheDir, endpoint: hub.url, onProgress: (p) => progress.push(p) });
    expect(r.commit).toBe(COMMIT);
    const storage = repoCacheDir('acme/tiny', cacheDir);
    expect(r.dir).toBe(join(storage, 'snapshots', COMMIT));
    expect(r.files.map((f) => f.path).sort()).toEqual(repos[0]!.files.map((f) => f.path).sort()); // all pages of the listing
    expect(readFileSync(join(storage, 'refs', 'main'), 'utf8')).toBe(COMMIT);
    for (const f of repos[0]!.files) {
      const p = join(r.dir, f.path);
      expect(readFileSync(p).equals(f.data), f.path).toBe(true);
      expect(lstatSync(p).isSymbolicLink()).toBe(true);
      const blob = f.lfs ? sha256(f.data) : gitBlobSha1(f.data);
      expect(readlinkSync(p).endsWith(join('blobs', blob))).toBe(true);
    }
    expect(r.files.find((f) => f.path === 'weights/model-Q4_K_M.gguf')?.checksum).toBe(`sha256:${sha256(weights)}`);
    expect(r.files.find((f) => f.path === 'config.json')?.checksum).toBe(`git-sha1:${gitBlobSha1(config)}`);
    expect(r.downloadedBytes).toBe(repos[0]!.files.reduce((s, f) => s + f.data.length, 0));
    const last = progress[progress.length - 1]!;
    expect(last.bytes).toBe(last.total);
    expect(last.total).toBe(r.downloadedBytes);
    expect(progress.every((p, i) => i === 0 || p.bytes >= progress[i - 1]!.bytes)).toBe(true);

    const before = hub.log.length;
    const again = await pull('acme/tiny', { cacheDir, endpoint: hub.url });
    expect(again.files.every((f) => f.status === 'cached')).toBe(true);
    expect(again.downloadedBytes).toBe(0);
    expect(hub.log.slice(before).some((l) => l.url.includes('/resolve/') || l.url.startsWith('/cdn/'))).toBe(false);
  });

  it('--include selects files; no match is an error that lists the repository', async () => {
    const cacheDir = fresh('include');
    const r = await pull('acme/tiny', { cacheDir, endpoint: hub.url, include: ['*Q4_K_M.gguf', '*.json'] });
    expect(r.files.map((f) => f.path).sort()).toEqual(['config.json', 'weights/model-Q4_K_M.gguf']);
    expect(existsSync(join(r.dir, 'README.md'))).toBe(false);
    await expect(pull('acme/tiny', { cacheDir, endpoint: hub.url, include: ['*.safetensors'] })).rejects.toMatchObject({
      code: 'ERR_FILE_NOT_FOUND',
      message: expect.stringMatching(/no file matches "\*\.safetensors".*config\.json/),
    });
  });

  it('resumes a broken download with a Range request and ends with the right bytes', async () => {
    const cacheDir = fresh('resume');
    hub.breakAfter.set('weights/model-Q4_K_M.gguf', 120_000);
    const first = pull('acme/tiny', { cacheDir, endpoint: hub.url, include: ['*Q4_K_M.gguf'] });
    await expect(first).rejects.toMatchObject({ code: 'ERR_NETWORK', message: expect.stringMatching(/run again to resume/) });
    const partial = join(repoCacheDir('acme/tiny', cacheDir), 'blobs', `${sha256(weights)}.incomplete`);
    // What reached the disk before the break (the last chunks in flight may be lost, as on a real drop).
    const kept = readFileSync(partial).length;
    expect(kept).toBeGreaterThan(0);
    expect(kept).toBeLessThanOrEqual(120_000);
    expect(readFileSync(partial).equals(weights.subarray(0, kept))).toBe(true);
    const before = hub.log.length;
    const r = await pull('acme/tiny', { cacheDir, endpoint: hub.url, include: ['*Q4_K_M.gguf'] });
    expect(r.files[0]).toMatchObject({ status: 'resumed', resumedFrom: kept });
    expect(r.downloadedBytes).toBe(weights.length - kept);
    expect(hub.log.slice(before).filter((l) => l.url.startsWith('/cdn/')).map((l) => l.range)).toEqual([`bytes=${kept}-`]);
    expect(readFileSync(join(r.dir, 'weights', 'model-Q4_K_M.gguf')).equals(weights)).toBe(true);
    expect(existsSync(partial)).toBe(false);
  });

  it('rejects bytes that do not match the listed hash and leaves nothing in the cache', async () => {
    const cacheDir = fresh('corrupt');
    const bad = Buffer.from(weights);
    bad[1234] = bad[1234]! ^ 1;
    hub.corrupt.set('weights/model-Q4_K_M.gguf', bad);
    try {
      await expect(pull('acme/tiny', { cacheDir, endpoint: hub.url, include: ['*Q4_K_M.gguf'] })).rejects.toMatchObject({
        code: 'ERR_CHECKSUM',
        message: expect.stringMatching(/sha256 [0-9a-f]{64} does not match/),
      });
    } finally {
      hub.corrupt.delete('weights/model-Q4_K_M.gguf');
    }
    const blobs = join(repoCacheDir('acme/tiny', cacheDir), 'blobs');
    expect(existsSync(join(blobs, sha256(weights)))).toBe(false);
    expect(existsSync(join(blobs, `${sha256(weights)}.incomplete`))).toBe(false);
    // A small git file is checked against its git blob hash.
    hub.corrupt.set('config.json', Buffer.from('{"model_type":"LLAMA"}\n'));
    try {
      await expect(pull('acme/tiny', { cacheDir, endpoint: hub.url, include: ['config.json'] })).rejects.toMatchObject({ code: 'ERR_CHECKSUM' });
    } finally {
      hub.corrupt.delete('config.json');
    }
  });

  it('sends HF_TOKEN (or the token option); without it a private repository is an ERR_NETWORK that says so', async () => {
    const cacheDir = fresh('private');
    const saved = process.env.HF_TOKEN;
    delete process.env.HF_TOKEN;
    try {
      await expect(pull('acme/private', { cacheDir, endpoint: hub.url })).rejects.toMatchObject({
        code: 'ERR_NETWORK',
        message: expect.stringMatching(/HF_TOKEN/),
      });
      process.env.HF_TOKEN = 'hf_secretsecret';
      const r = await pull('acme/private', { cacheDir, endpoint: hub.url });
      expect(r.files).toHaveLength(1);
      const r2 = await pull('acme/private', { cacheDir: fresh('private2'), endpoint: hub.url, token: 'hf_secretsecret' });
      expect(r2.files[0]!.status).toBe('downloaded');
      expect(hub.log.filter((l) => l.url.startsWith('/cdn/acme/private')).every((l) => l.auth === 'Bearer hf_secretsecret')).toBe(true);
    } finally {
      if (saved === undefined) delete process.env.HF_TOKEN;
      else process.env.HF_TOKEN = saved;
    }
  });

  it('a missing repository or revision is a clear ERR_NETWORK', async () => {
    const cacheDir = fresh('missing');
    await expect(pull('acme/nothing', { cacheDir, endpoint: hub.url })).rejects.toMatchObject({ code: 'ERR_NETWORK', message: expect.stringMatching(/not found/i) });
    await expect(pull('acme/tiny@v9', { cacheDir, endpoint: hub.url })).rejects.toMatchObject({ code: 'ERR_NETWORK' });
  });

  it('an aborted pull rejects with ERR_ABORTED', async () => {
    const ac = new AbortController();
    ac.abort();
    await expect(pull('acme/tiny', { cacheDir: fresh('abort'), endpoint: hub.url, signal: ac.signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });
});

describe('hf: paths', () => {
  it('resolve offline to the snapshot (or its single GGUF), and name what to pull when absent', async () => {
    const cacheDir = fresh('resolve');
    expect(() => resolveHfPath('hf:acme/tiny', { cacheDir })).toThrow(/emollm pull acme\/tiny/);
    const r = await pull('acme/tiny', { cacheDir, endpoint: hub.url, include: ['*.json', '*Q4_K_M.gguf'] });
    expect(resolveHfPath('hf:acme/tiny', { cacheDir })).toBe(r.dir); // config.json: a folder model
    expect(resolveHfPath('hf:acme/tiny/weights/model-Q4_K_M.gguf', { cacheDir })).toBe(join(r.dir, 'weights', 'model-Q4_K_M.gguf'));
    expect(() => resolveHfPath('hf:acme/tiny/weights/model-Q8_0.gguf', { cacheDir })).toThrow(/was not pulled/);
    expect(() => resolveHfPath('hf:acme/tiny@v2', { cacheDir })).toThrow(/not in the hub cache/);
    expect(resolveHfPath(`hf:acme/tiny@${COMMIT}`, { cacheDir })).toBe(r.dir);
  });

  it.skipIf(!haveStories)('loadModel("hf:owner/repo@rev") loads the pulled GGUF and generates (HF_HUB_CACHE)', async () => {
    const cacheDir = fresh('stories');
    const r = await pull('acme/stories@v1', { cacheDir, endpoint: hub.url });
    expect(readFileSync(join(r.dir, 'stories260K.gguf')).equals(readFileSync(storiesGguf))).toBe(true);
    const saved = process.env.HF_HUB_CACHE;
    process.env.HF_HUB_CACHE = cacheDir;
    try {
      const { loadModel } = await import('../../lib/model.js');
      const viaHub = await loadModel('hf:acme/stories@v1', { contextSize: 64 });
      const direct = await loadModel(storiesGguf, { contextSize: 64 });
      try {
        expect(viaHub.path).toBe(join(r.dir, 'stories260K.gguf'));
        const a = await viaHub.generate('Once upon a', { maxTokens: 8 }).result;
        const b = await direct.generate('Once upon a', { maxTokens: 8 }).result;
        expect(a.tokens).toEqual(b.tokens);
        expect(a.tokens.length).toBe(8);
      } finally {
        await viaHub.close();
        await direct.close();
      }
    } finally {
      if (saved === undefined) delete process.env.HF_HUB_CACHE;
      else process.env.HF_HUB_CACHE = saved;
    }
  });
});

describe.skipIf(!existsSync(cli))('emollm pull (CLI)', () => {
  const runCli = (args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> =>
    new Promise((resolve) => {
      const p = spawn(process.execPath, [cli, ...args], { env: { ...process.env, ...env } });
      let stdout = '';
      let stderr = '';
      p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      p.on('close', (code) => resolve({ code, stdout, stderr }));
    });

  it('pulls through HF_ENDPOINT and HF_HUB_CACHE, prints the summary and per-file progress; errors exit 1', async () => {
    const cacheDir = fresh('cli');
    const r = await runCli(['pull', 'acme/tiny', '--include', '*.json', '--include=*.md'], { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cacheDir });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/acme\/tiny@main \(aaaaaaaaaa\): 2 files, .* \(2 downloaded, 0 resumed, 0 already cached; .* checksums verified\)/);
    expect(r.stderr).toMatch(/\[1\/2\] config\.json: 23 B/);
    expect(existsSync(join(repoCacheDir('acme/tiny', cacheDir), 'snapshots', COMMIT, 'README.md'))).toBe(true);
    const j = await runCli(['pull', 'acme/tiny', '--include', '*.json', '--json', '--endpoint', hub.url, '--cache-dir', cacheDir], {});
    expect(j.code).toBe(0);
    expect(JSON.parse(j.stdout)).toMatchObject({ commit: COMMIT, files: [{ path: 'config.json', status: 'cached' }] });
    // inspect reads hf: paths from the cache too.
    const insp = await runCli(['inspect', 'hf:acme/tiny', '--json'], { HF_HUB_CACHE: cacheDir });
    expect(insp.code).toBe(1); // config.json only, no safetensors: the folder is found, its weights are not
    expect(insp.stderr).toMatch(/snapshots\/a{40}: directory .* has neither model\.safetensors\.index\.json nor model\.safetensors/);
    const notPulled = await runCli(['inspect', 'hf:acme/other'], { HF_HUB_CACHE: cacheDir });
    expect(notPulled.code).toBe(1);
    expect(notPulled.stderr).toMatch(/run `emollm pull acme\/other` first \[ERR_FILE_NOT_FOUND\]/);
    const missing = await runCli(['pull', 'acme/nothing', '--endpoint', hub.url, '--cache-dir', cacheDir], {});
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/ERR_NETWORK/);
  });
});
