// The README's examples run as documented (against the compiled package in dist/).
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const tiny = join(shared, 'models', 'llava-tiny-hf');
const stories = join(shared, 'models', 'stories260K', 'gguf', 'stories260K.gguf');
const run = promisify(execFile);

describe('examples', () => {
  it.skipIf(!existsSync(tiny))('examples/llava-chat.mjs chats and scores options on the tiny LLaVA', async () => {
    const { stdout } = await run(process.execPath, [join(repoRoot, 'examples', 'llava-chat.mjs'), tiny], { cwd: repoRoot });
    expect(stdout).toMatch(/^chat: .+\n {2}\(16 tokens, max-tokens\)/);
    const probs = [...stdout.matchAll(/p=([0-9.]+)/g)].map((m) => Number(m[1]));
    expect(probs).toHaveLength(4);
    expect(probs.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 3);
    expect(stdout).toMatch(/best: (happy|sad|angry|surprised) \(margin/);
  });

  it('the README main job (emollm analyze on a demo photo, offline) prints faces and an emotion', async () => {
    const photo = join(repoRoot, 'node_modules', '@vladmandic', 'face-api', 'demo', 'sample1.jpg');
    const { stdout } = await run(process.execPath, [join(repoRoot, 'dist', 'cli.js'), 'analyze', photo], { cwd: repoRoot });
    expect(stdout).toMatch(/face 1: \d+x\d+ at/);
    expect(stdout).toMatch(/^emotion: (joy|neutral|sadness|anger|fear|disgust|surprise) \(\d+%, margin \d+%; face perspective\)$/m);
    const { stdout: json } = await run(process.execPath, [join(repoRoot, 'dist', 'cli.js'), 'analyze', photo, '--json'], { cwd: repoRoot });
    expect(JSON.parse(json)).toMatchObject({ schema: 'emollm.analysis/1', media: 'image', task: 'emotion' });
  });

  it.skipIf(!existsSync(stories))('emollm generate (emollm generate) streams the oracle text', async () => {
    const { stdout } = await run(
      process.execPath,
      [join(repoRoot, 'dist', 'cli.js'), 'generate', stories, 'Once upon a time', '--context', '512', '--max-tokens', '20'],
      { cwd: repoRoot },
    );
    expect(stdout.startsWith('Once upon a time, there was a little girl named Lily.')).toBe(true);
  });
});
