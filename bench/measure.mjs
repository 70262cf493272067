// Measurement helpers shared by the benchmarks (and the llama.cpp anchor child in anchors/):
// medians, and how much OTHER work ran beside a measurement, so disturbed runs can be told apart.
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

export function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  if (!s.length) return NaN;
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

// CPU seconds the whole machine spent busy (Linux /proc/stat), to tell how much other work ran
// beside a measurement: (machine busy - own cpu time) / wall = cores' worth of other work.
export function machineBusyS() {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const [user, nice, system, , , irq, softirq, steal] = f;
    return (user + nice + system + irq + softirq + (steal || 0)) / 100; // USER_HZ
  } catch {
    return NaN;
  }
}
export const processCpuS = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

// Times `fn` and the other work beside it: { value, s, other } (other in cores).
export async function timed(fn) {
  const b0 = machineBusyS(), c0 = processCpuS(), t0 = performance.now();
  const value = await fn();
  const s = (performance.now() - t0) / 1000;
  return { value, s, other: (machineBusyS() - b0 - (processCpuS() - c0)) / s };
}

// Waits up to maxS seconds for a 2-second window with < 0.25 cores of other work; returns the
// other work seen last (cores), or null when it cannot tell.
export async function waitQuiet(maxS, log = () => {}) {
  if (!(maxS > 0) || !Number.isFinite(machineBusyS())) return null;
  const t0 = performance.now();
  let said = false;
  for (;;) {
    const b0 = machineBusyS(), c0 = processCpuS(), w0 = performance.now();
    await new Promise((r) => setTimeout(r, 2000));
    const other = (machineBusyS() - b0 - (processCpuS() - c0)) / ((performance.now() - w0) / 1000);
    if (other < 0.25) return other;
    if ((performance.now() - t0) / 1000 > maxS) {
      log(`    machine still busy (${other.toFixed(2)} cores of other work); measuring anyway`);
      return other;
    }
    if (!said) {
      log(`    waiting up to ${maxS} s for the machine to go quiet (other work: ${other.toFixed(2)} cores) ...`);
      said = true;
    }
  }
}

/**
 * The end every benchmark child shares: runs `body(use)`, records a failure in `out.error`, adds
 * the peak RSS, releases what `body` registered, writes `out` as one JSON line on stdout for the
 * parent, and exits 0 when `body` finished, 1 when it threw (the exit also ends handles a native
 * binding may keep alive). `use(resource)` returns the resource and registers it for release at
 * the end: models, contexts, node-llama-cpp's Llama; released in reverse order of registration
 * (a context before its model) with `close()`, or `dispose()` where there is no close (node-llama-cpp).
 * Releasing one that `body` already closed itself is harmless: errors of the release are ignored.
 */
export async function childMain(out, log, body) {
  const held = [];
  const use = (resource) => {
    if (resource) held.push(resource);
    return resource;
  };
  try {
    await body(use);
    out.ok = true;
  } catch (e) {
    out.error = String(e?.stack ?? e);
    log(out.error);
  } finally {
    out.maxrss_mib = process.resourceUsage().maxRSS / 1024;
    for (const r of held.reverse()) {
      try {
        await (typeof r.close === 'function' ? r.close() : r.dispose?.());
      } catch {}
    }
  }
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(out.ok ? 0 : 1);
}
