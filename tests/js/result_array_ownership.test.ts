// What a user can do with a result array's ArrayBuffer, checked on this Node, for:
// - today's zero-filled results (V8's allocator, calloc: a gemm result with the addon's
//   testZeroWrittenResults hook on),
// - the results a worker writes whole (gemm, attention, mvpProjection, dequantize, encodeImages:
//   napi_util.h new_result_array, ResultFill::kWrittenWhole: V8-owned memory from
//   napi_create_buffer, not zeroed first),
// - an addon-owned external ArrayBuffer (native testExternalArrayBuffer: what a pool of 2 MiB
//   huge-page blocks handed out as results would be).
// The cases: structuredClone with { transfer }, MessagePort.postMessage with a transfer list, a
// worker_thread receiving it, ArrayBuffer.prototype.transfer(), Buffer.from(ab), and a worker
// that made the buffer exiting while what it sent lives on (an addon environment torn down).
// Answer (run on Node 20.20.2 and 22.23.5; package.json allows node >= 20.19): an external buffer
// is never transferred by postMessage / structuredClone. Node marks it untransferable
// (napi_create_external_arraybuffer goes through node::Buffer::New with a free callback), so in a
// transfer list it is copied and the sender's stays attached (Node 20), or the call throws a
// DataCloneError (Node >= 21, nodejs/node#47604; seen on 22). A user who hands a result to a
// worker without a copy, as they can today, would get a 9 MiB copy or an exception. Worse, on
// Node 22 ArrayBuffer.prototype.transfer() moves an external buffer's memory into a buffer that
// can be posted on, and the addon frees that memory when the environment that made it exits
// (the last case below: a use after free). So results stay V8-owned; the written-whole ones
// behave exactly as the zero-filled ones.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

import { describe, expect, it } from 'vitest';

import { repoRoot } from './helpers/vlm_fixtures.js';
import { gemm } from '../../lib/index.js';
import { native } from '../../lib/native.js';

const nodeMajor = Number(process.versions.node.split('.')[0]);
const M = 4, N = 256, K = 32;  // a gemm result of 4 KiB
const BYTES = M * N * 4;

// Y = X W^T with X = 1 and W's row j = j / 64: Y[i, j] = K * j / 64, exact in f32.
async function gemmResult(zeroed: boolean): Promise<ArrayBuffer> {
  native().testZeroWrittenResults(zeroed);
  try {
    const x = new Float32Array(M * K).fill(1);
    const w = new Float32Array(N * K).map((_, i) => Math.floor(i / K) / 64);
    const y = await gemm({ x, w, wtype: 'f32', m: M, n: N, k: K });
    expect(y.byteOffset).toBe(0);
    expect(y.buffer.byteLength).toBe(BYTES);
    return y.buffer as ArrayBuffer;
  } finally {
    native().testZeroWrittenResults(false);
  }
}
const gemmExpected = (ab: ArrayBuffer): boolean => {
  const y = new Float32Array(ab);
  return y.length === M * N && y.every((v, i) => v === (K * (i % N)) / 64);
};
const externalExpected = (ab: ArrayBuffer): boolean => {
  const b = new Uint8Array(ab);
  return b.length === BYTES && b.every((v, i) => v === ((i * 7) & 255));
};

interface Kind {
  name: string;
  make: () => Promise<ArrayBuffer>;
  intact: (ab: ArrayBuffer) => boolean;  // the bytes it was made with
  external: boolean;
}
const kinds: Kind[] = [
  { name: "today's zero-filled result (V8's calloc)", make: () => gemmResult(true), intact: gemmExpected, external: false },
  { name: 'a result the worker writes whole (napi_create_buffer)', make: () => gemmResult(false), intact: gemmExpected, external: false },
  { name: 'an addon-owned external ArrayBuffer', make: async () => native().testExternalArrayBuffer(BYTES), intact: externalExpected, external: true },
];

// A worker that answers each message with whether it received an ArrayBuffer and its bytes' sum.
function echoWorker(): Worker {
  return new Worker(
    `const { parentPort } = require('node:worker_threads');
     parentPort.on('message', (ab) => parentPort.postMessage({ isAb: ab instanceof ArrayBuffer, bytes: ab.byteLength,
       sum: new Uint8Array(ab).reduce((s, v) => s + v, 0) }));`,
    { eval: true },
  );
}
const byteSum = (ab: ArrayBuffer): number => new Uint8Array(ab).reduce((s, v) => s + v, 0);

describe.each(kinds)('$name', (kind) => {
  // Node >= 21 refuses an untransferable buffer in a transfer list with a DataCloneError.
  const refusedHere = kind.external && nodeMajor >= 21;

  it('structuredClone(ab, { transfer: [ab] }): V8-owned moves (the sender detached); external copies (Node 20) or throws', async () => {
    const ab = await kind.make();
    if (refusedHere) {
      expect(() => structuredClone(ab, { transfer: [ab] })).toThrow(expect.objectContaining({ name: 'DataCloneError' }));
      expect(kind.intact(ab)).toBe(true);
      return;
    }
    const clone = structuredClone(ab, { transfer: [ab] });
    expect(kind.intact(clone)).toBe(true);
    if (kind.external) expect(kind.intact(ab)).toBe(true);  // copied: the sender's is still attached
    else expect(ab.byteLength).toBe(0);  // moved: the sender's is detached
  });

  it('structuredClone(ab) without transfer copies, for every kind', async () => {
    const ab = await kind.make();
    const clone = structuredClone(ab);
    expect(clone).not.toBe(ab);
    expect(kind.intact(clone)).toBe(true);
    expect(kind.intact(ab)).toBe(true);
  });

  it('MessagePort.postMessage(ab, [ab]) to a worker_thread: V8-owned moves, external copies (Node 20) or throws', async () => {
    const ab = await kind.make();
    const sum = byteSum(ab);
    const w = echoWorker();
    try {
      if (refusedHere) {
        expect(() => w.postMessage(ab, [ab])).toThrow(expect.objectContaining({ name: 'DataCloneError' }));
        return;
      }
      const reply = new Promise<{ isAb: boolean; bytes: number; sum: number }>((res) => w.once('message', res));
      w.postMessage(ab, [ab]);
      expect(await reply).toEqual({ isAb: true, bytes: BYTES, sum });
      expect(ab.byteLength).toBe(kind.external ? BYTES : 0);
    } finally {
      await w.terminate();
    }
  });

  it('ArrayBuffer.prototype.transfer(): absent on Node 20; where present it moves every kind, and the new buffer can be transferred on', async () => {
    const ab = await kind.make();
    const transfer = (ArrayBuffer.prototype as { transfer?: (this: ArrayBuffer) => ArrayBuffer }).transfer;
    if (nodeMajor < 21) {
      expect(transfer).toBeUndefined();
      return;
    }
    // Node 22: an external buffer too (its memory moves, the untransferable mark does not)
    const moved = transfer!.call(ab);
    expect(ab.byteLength).toBe(0);
    expect(kind.intact(moved)).toBe(true);
    const again = structuredClone(moved, { transfer: [moved] });
    expect(moved.byteLength).toBe(0);
    expect(kind.intact(again)).toBe(true);
  });

  it('Buffer.from(ab) is a view of the same memory, for every kind', async () => {
    const ab = await kind.make();
    const b = Buffer.from(ab);
    expect(b.buffer).toBe(ab);
    expect(b.length).toBe(BYTES);
    b[0] ^= 0xff;
    expect(new Uint8Array(ab)[0]).toBe(b[0]);
    b[0] ^= 0xff;
    expect(kind.intact(ab)).toBe(true);
  });
});

describe('a worker that made the buffer exits while what it sent lives on', () => {
  // The worker loads the addon itself (its own environment of it), makes a gemm result and an
  // external buffer, sends both in transfer lists, and exits: its environment's cleanup frees its
  // external buffers (the addon's finalizer runs; the process-wide count rises), while what the
  // main thread received (the moved V8-owned result, the external one's copy) stays readable.
  it('the moved result and the external copy stay readable; the worker\'s external buffers are freed at its exit', async () => {
    // the worker's buffers carry a tag of their own: the main thread's GC may free this file's
    // other external buffers (tag 0) at any moment in between (CI once counted 7)
    const TAG = 3;
    const before = native().testExternalFinalized(TAG);
    const w = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const binding = require(workerData.nodeGypBuild)(workerData.root);
       (async () => {
         const M = ${M}, N = ${N}, K = ${K}, TAG = ${TAG};
         const x = new Float32Array(M * K).fill(1);
         const w = new Float32Array(N * K).map((_, i) => Math.floor(i / K) / 64);
         const y = await binding.gemm(x, w, 'f32', null, M, N, K);
         const ext = binding.testExternalArrayBuffer(${BYTES}, TAG);
         const ext2 = binding.testExternalArrayBuffer(${BYTES}, TAG);  // never sent
         let refused = false;
         try {
           parentPort.postMessage({ y: y.buffer, ext }, [y.buffer, ext]);
         } catch (e) {
           refused = e.name === 'DataCloneError';
           parentPort.postMessage({ y: y.buffer, ext: null, refused }, [y.buffer]);
         }
         parentPort.postMessage({ after: { y: y.buffer.byteLength, ext: ext.byteLength, ext2: ext2.byteLength } });
       })();`,
      { eval: true, workerData: { root: repoRoot, nodeGypBuild: createRequire(import.meta.url).resolve('node-gyp-build') } },
    );
    const messages: unknown[] = [];
    w.on('message', (m) => messages.push(m));
    const code = await new Promise<number>((res) => w.once('exit', res));
    expect(code).toBe(0);
    const [sent, after] = messages as [{ y: ArrayBuffer; ext: ArrayBuffer | null; refused?: boolean }, { after: Record<string, number> }];
    expect(gemmExpected(sent.y)).toBe(true);  // the result moved to this thread outlives its maker
    if (nodeMajor >= 21) {
      expect(sent.refused).toBe(true);
      expect(after.after).toEqual({ y: 0, ext: BYTES, ext2: BYTES });
    } else {
      expect(externalExpected(sent.ext!)).toBe(true);  // a copy this thread owns
      expect(after.after).toEqual({ y: 0, ext: BYTES, ext2: BYTES });  // the external one was not detached: copied
    }
    // both external buffers were the worker's environment's: freed when it was torn down
    expect(native().testExternalFinalized(TAG) - before).toBe(2);
    // and this thread's copies are still what was sent
    expect(gemmExpected(sent.y)).toBe(true);
    if (sent.ext) expect(externalExpected(sent.ext)).toBe(true);
  });
});

// Where ArrayBuffer.prototype.transfer exists (Node >= 21), an external buffer's memory can leave
// the environment that owns it: transfer() drops the untransferable mark, postMessage moves the
// new buffer to another thread, and when the maker exits, its environment's cleanup runs the
// addon's finalizer, which frees the memory the other thread still reads (use after free: the
// bytes change once the memory is reused, or the read faults). Run in a child process, which may
// crash; on Node 22.23.5 the bytes changed (8355840 of 8388608). A pool handing such buffers out
// as results would give the block to the next result while that thread still holds it.
if (nodeMajor < 21)
  console.warn(`external buffer transfer() case skipped: ArrayBuffer.prototype.transfer needs Node >= 21 (this is Node ${process.versions.node})`);
describe.skipIf(nodeMajor < 21)('an external buffer moved out of a worker by transfer() outlives its memory', () => {
  it('its bytes do not survive the worker that made it', () => {
    // the addon as lib/native.ts loads it (a prebuilt binary or build/Release)
    const load = `require(${JSON.stringify(createRequire(import.meta.url).resolve('node-gyp-build'))})(${JSON.stringify(repoRoot)})`;
    const script = `
      const { Worker } = require('node:worker_threads');
      const b = ${load};
      const w = new Worker(\`
        const { parentPort } = require('node:worker_threads');
        const b = ${JSON.stringify(load).slice(1, -1)};
        const t = b.testExternalArrayBuffer(8 << 20).transfer();
        parentPort.postMessage(t, [t]);\`, { eval: true });
      let got;
      w.on('message', (m) => { got = m; });
      w.on('exit', () => {
        const junk = [];
        for (let i = 0; i < 4; i++) new Uint8Array(junk[junk.push(b.testExternalArrayBuffer(8 << 20)) - 1]).fill(0xab);
        const u = new Uint8Array(got);
        let changed = 0;
        for (let i = 0; i < u.length; i++) if (u[i] !== ((i * 7) & 255)) changed++;
        console.log(JSON.stringify({ bytes: u.length, changed }));
      });`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 });
    if (r.status === 0) {
      const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { bytes: number; changed: number };
      expect(out.bytes).toBe(8 << 20);
      expect(out.changed).toBeGreaterThan(0);
    } else {
      expect(r.signal ?? r.status).toBeTruthy();  // the read faulted: the memory was gone
    }
  });
});
