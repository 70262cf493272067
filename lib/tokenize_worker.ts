/**
 * Tokenization of long prompts off the main thread.
 *
 * emollm's tokenizers are JavaScript and synchronous; a 256 Ki-character prompt takes seconds
 * (measured: ~1.4 s with a SentencePiece GGUF vocabulary, ~11 s with LLaVA's tokenizer.json), all
 * of it blocking the event loop. A {@link Model} whose tokenizer was loaded from a file therefore
 * encodes prompts longer than {@link WORKER_MIN_CHARS} on one shared worker thread, which opens
 * the same tokenizer file once and encodes there: the same code on the same vocabulary, so the ids
 * are identical. Tokenizer objects passed in by the caller (no file to reopen) stay on the main
 * thread.
 *
 * The worker runs the compiled JavaScript (`dist/tokenizer.js`); under a TypeScript test runner,
 * where this module is `lib/tokenize_worker.ts`, it uses the package's `dist/` build.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';

import { EmollmError, type EmollmErrorCode } from './errors.js';

/** Strings at least this long are encoded on the worker (shorter ones cost less than the round trip). */
export const WORKER_MIN_CHARS = 4096;

/** Where a tokenizer came from, so the worker can open the same one. */
export type TokenizerSource = { kind: 'file'; path: string } | { kind: 'llama2c'; path: string };

interface Reply {
  id: number;
  ids?: Int32Array;
  error?: { code: EmollmErrorCode; message: string; file?: string };
}

/** The worker's code (ESM, evaluated): loads tokenizers on demand, one per source, and encodes. */
const WORKER_CODE = `
const { parentPort, workerData } = require('node:worker_threads');
const modules = Promise.all([import(workerData.tokenizerUrl), import(workerData.safeFsUrl)]);
const cache = new Map();
async function open(source) {
  const [tok, fs] = await modules;
  const key = source.kind + ':' + source.path;
  let t = cache.get(key);
  if (!t) {
    t = source.kind === 'llama2c'
      ? fs.readRegularFile(source.path, { maxBytes: 512 * 1024 * 1024 }).then((b) => tok.SpmTokenizer.fromLlama2cVocab(new Uint8Array(b.buffer, b.byteOffset, b.byteLength), source.path))
      : tok.loadTokenizer(source.path);
    cache.set(key, t);
    t.catch(() => cache.delete(key));
  }
  return t;
}
parentPort.on('message', async (m) => {
  try {
    const t = await open(m.source);
    const ids = Int32Array.from(t.encode(m.text, { addSpecialTokens: m.addSpecialTokens }));
    parentPort.postMessage({ id: m.id, ids }, [ids.buffer]);
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: { code: e && e.code ? e.code : 'ERR_INTERNAL', message: String(e && e.message || e), file: e && e.file } });
  }
});
`;

/** The compiled module beside this one, or the package's dist/ build when running from lib/*.ts. */
function compiledUrl(name: string): string {
  const here = fileURLToPath(import.meta.url);
  const dir = here.endsWith('.ts') ? join(dirname(here), '..', 'dist') : dirname(here);
  const file = join(dir, name);
  if (!existsSync(file))
    throw new EmollmError('ERR_INTERNAL', `${file} is missing: build the TypeScript (npm run build:ts) to tokenize long prompts off the main thread`);
  return pathToFileURL(file).href;
}

let worker: Worker | undefined;
let nextId = 1;
const pending = new Map<number, { resolve: (ids: number[]) => void; reject: (e: unknown) => void }>();

function getWorker(): Worker {
  if (worker) return worker;
  const w = new Worker(WORKER_CODE, {
    eval: true,
    workerData: { tokenizerUrl: compiledUrl('tokenizer.js'), safeFsUrl: compiledUrl('safe_fs.js') },
  });
  w.unref(); // an idle tokenizer worker never keeps the process alive
  w.on('message', (r: Reply) => {
    const p = pending.get(r.id);
    if (!p) return;
    pending.delete(r.id);
    if (pending.size === 0) w.unref();
    if (r.error) p.reject(new EmollmError(r.error.code, r.error.message, r.error.file ? { file: r.error.file } : {}));
    else p.resolve(Array.from(r.ids ?? []));
  });
  const fail = (e: unknown): void => {
    worker = undefined;
    for (const p of pending.values()) p.reject(new EmollmError('ERR_INTERNAL', `the tokenizer worker failed: ${String((e as Error)?.message ?? e)}`, { cause: e }));
    pending.clear();
  };
  w.on('error', fail);
  w.on('exit', (code) => {
    if (worker === w) fail(new Error(`exited with code ${code}`));
  });
  worker = w;
  return w;
}

/** Encodes `text` with the tokenizer `source` names, on the worker thread. */
export function encodeOffThread(source: TokenizerSource, text: string, addSpecialTokens: boolean, signal?: AbortSignal): Promise<number[]> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new EmollmError('ERR_ABORTED', 'aborted'));
    const w = getWorker();
    const id = nextId++;
    const onAbort = (): void => {
      if (pending.delete(id)) reject(new EmollmError('ERR_ABORTED', 'aborted'));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    pending.set(id, {
      resolve: (ids) => {
        signal?.removeEventListener('abort', onAbort);
        resolve(ids);
      },
      reject: (e) => {
        signal?.removeEventListener('abort', onAbort);
        reject(e);
      },
    });
    w.ref(); // keep the process alive while a request is in flight
    w.postMessage({ id, source, text, addSpecialTokens });
  });
}
