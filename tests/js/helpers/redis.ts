/**
 * A throwaway redis-server on 127.0.0.1 for tests: a free port, no persistence, its own folder;
 * stopped by stop().
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { connect, createServer } from 'node:net';

export function haveRedisServer(): boolean {
  return spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

/** The process id of the redis-server answering on `port` (INFO server), or undefined when none answers. */
function serverPid(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const sock = connect({ host: '127.0.0.1', port });
    let got = '';
    sock.setTimeout(1000, () => (sock.destroy(), resolve(undefined)));
    sock.on('error', () => resolve(undefined));
    sock.on('close', () => resolve(undefined));
    sock.on('connect', () => sock.write('INFO server\r\n'));
    sock.on('data', (d) => {
      got += d.toString();
      const m = /process_id:(\d+)\r\n/.exec(got);  // the whole line, not a chunk's first digits
      if (m) {
        sock.end();
        resolve(Number(m[1]));
      }
    });
  });
}

export interface RedisServer {
  url: string;
  port: number;
  stop(): Promise<void>;
}

export async function startRedis(dir: string): Promise<RedisServer> {
  // freePort's port is free when it returns, not when redis-server binds it: another process may
  // take it in between (tests run beside other programs). redis-server then exits at once with
  // "Address already in use"; that case alone starts it again on another port.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const proc: ChildProcess = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let log = '';
    proc.stdout!.on('data', (d) => (log += d));
    proc.stderr!.on('data', (d) => (log += d));
    proc.once('error', (e) => (log += `${e}\n`));  // could not start: no pid (the loop below fails on it)
    const closed = new Promise((r) => proc.once('close', r));
    let taken = false;
    for (let i = 0; i < 100; i++) {
      // this redis-server, not another program's that took the port first (nor, with no pid, none)
      const pid = await serverPid(port);
      if (proc.pid !== undefined && pid === proc.pid) break;
      if (proc.exitCode !== null) {
        await closed;  // its whole log
        if (attempt < 5 && /Address already in use/.test(log)) {
          taken = true;
          break;
        }
        throw new Error(`redis-server exited: ${log}`);
      }
      await new Promise((r) => setTimeout(r, 100));
      if (i === 99) {
        proc.kill('SIGKILL');  // not left running after the test
        await Promise.race([closed, new Promise((r) => setTimeout(r, 2000))]);
        throw new Error(`redis-server did not answer INFO server: ${log}`);
      }
    }
    if (taken) continue;
    return server(proc, port);
  }
}

function server(proc: ChildProcess, port: number): RedisServer {
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    stop: () =>
      new Promise((resolve) => {
        if (proc.exitCode !== null) return resolve();
        proc.once('exit', () => resolve());
        proc.kill('SIGTERM');
      }),
  };
}
