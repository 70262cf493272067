// .gitignore keeps the bench assets out of git whether they are folders or, as users set them up,
// symlinks to a models folder elsewhere (`bench/models -> /data/models`): a pattern with a trailing
// slash matches folders only, so a symlink would show up as an untracked file. Checked in a scratch
// repository holding only this .gitignore (the worktree's own .git/info/exclude could hide a miss).
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const BENCH_ASSETS = ['bench/models', 'bench/anchors/node_modules', 'bench/anchors/llama.cpp'];

const hasGit = !spawnSync('git', ['--version'], { stdio: 'ignore' }).error;
if (!hasGit && process.env.CI) throw new Error('git is missing: CI must not skip the .gitignore check');
if (!hasGit) console.warn('.gitignore check skipped: git not installed');
describe.skipIf(!hasGit)('.gitignore', () => {
  it.each(['folder', 'symlink'])('ignores the bench assets as a %s', (kind) => {
    const dir = mkdtempSync(join(tmpdir(), 'emollm-gitignore-'));
    try {
      const git = (...args: string[]) => spawnSync('git', args, { cwd: join(dir, 'repo'), encoding: 'utf8' });
      mkdirSync(join(dir, 'repo', 'bench', 'anchors'), { recursive: true });
      mkdirSync(join(dir, 'target'));
      expect(git('init', '-q').status).toBe(0);
      copyFileSync(join(repoRoot, '.gitignore'), join(dir, 'repo', '.gitignore'));
      for (const asset of BENCH_ASSETS) {
        if (kind === 'folder') mkdirSync(join(dir, 'repo', asset), { recursive: true });
        else symlinkSync(join(dir, 'target'), join(dir, 'repo', asset));
      }
      const ignored = git('check-ignore', ...BENCH_ASSETS);
      expect(ignored.stdout.trim().split('\n').sort()).toEqual([...BENCH_ASSETS].sort());
      // and nothing of them is left untracked (only .gitignore itself)
      expect(git('status', '--porcelain', '--untracked-files=all').stdout.trim()).toBe('?? .gitignore');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
