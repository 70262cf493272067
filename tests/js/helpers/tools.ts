// External tools the tests need (ffmpeg, chromium). Locally a missing tool skips its tests with
// the reason printed; in CI (CI=true; .ci/run installs them from Debian) a missing tool fails the
// test file, so no video or browser test is ever skipped there.
import { spawnSync } from 'node:child_process';

export const IN_CI = process.env.CI === 'true' || process.env.CI === '1';

/** Whether `cmd` runs (`cmd --version`); throws in CI when it does not. */
export function requireTool(cmd: string, debianPackage: string, what: string): boolean {
  const ok = spawnSync(cmd, ['-version'], { stdio: 'ignore' }).status === 0 || spawnSync(cmd, ['--version'], { stdio: 'ignore' }).status === 0;
  if (ok) return true;
  if (IN_CI) throw new Error(`${what} needs ${cmd}, which is not installed; CI must run them (.ci/run installs ${debianPackage} from Debian)`);
  console.warn(`${what} skipped: ${cmd} not found (apt-get install ${debianPackage})`);
  return false;
}
