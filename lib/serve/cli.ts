/**
 * `emollm serve --model PATH [options]`: loads the model, serves it (see server.ts), and on
 * SIGTERM / SIGINT drains in-flight requests before exiting.
 */
import { parseArgs } from 'node:util';

import { EmollmError } from '../errors.js';
import { loadModel } from '../model.js';
import { loadKeys } from './auth.js';
import { mediaRoot } from './media.js';
import { createServer } from './server.js';

export const SERVE_USAGE = `usage: emollm serve --model PATH [options]
  OpenAI-compatible server: POST /v1/chat/completions (SSE with stream: true), GET /v1/models,
  POST /v1/analyze (emollm.analysis/1), GET /health, GET /metrics (Prometheus). docs/serving.md
    --model PATH              LLaVA / EmoLLM folder or .gguf (--mmproj PATH for a GGUF's vision tower)
    --model-name NAME         the id clients use (default: the folder's name)
    --host H --port P         listen address (default 127.0.0.1:8080; port 0 picks a free one)
    --api-keys-file FILE      bearer tokens, one a line    --api-key-env VAR  comma-separated tokens in $VAR
    --media-root DIR          local image paths are accepted only under DIR (real path)
    --max-queue N             requests waiting beyond the running one (default 16; more: 429 + Retry-After)
    --request-timeout-ms MS   per request, queueing included (default 120000; then 504)
    --max-body-bytes N        (default 33554432)   --max-image-bytes N (default 16777216)
    --max-tokens-limit N      largest max_tokens accepted (default 4096)
    --shutdown-timeout-ms MS  drain time on SIGTERM / SIGINT before cancelling (default 30000)
    --threads N --context N   model loading
    --log                     log requests (JSON lines on stdout)`;

function int(name: string, v: string | undefined, min = 0): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new EmollmError('ERR_INVALID_ARGUMENT', `--${name} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  return n;
}

/** `emollm serve ...`; resolves with the exit code once the server has shut down. */
export async function serveCommand(argv: readonly string[]): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        model: { type: 'string' },
        mmproj: { type: 'string' },
        'model-name': { type: 'string' },
        host: { type: 'string' },
        port: { type: 'string' },
        'api-keys-file': { type: 'string' },
        'api-key-env': { type: 'string' },
        'media-root': { type: 'string' },
        'max-queue': { type: 'string' },
        'request-timeout-ms': { type: 'string' },
        'max-body-bytes': { type: 'string' },
        'max-image-bytes': { type: 'string' },
        'max-tokens-limit': { type: 'string' },
        'shutdown-timeout-ms': { type: 'string' },
        threads: { type: 'string' },
        context: { type: 'string' },
        log: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (e) {
    throw new EmollmError('ERR_INVALID_ARGUMENT', `serve: ${(e as Error).message}\n${SERVE_USAGE}`);
  }
  if (values.help) {
    console.log(SERVE_USAGE);
    return 0;
  }
  const s = (k: string): string | undefined => values[k] as string | undefined;
  if (!s('model')) throw new EmollmError('ERR_INVALID_ARGUMENT', `serve needs --model\n${SERVE_USAGE}`);
  const port = int('port', s('port')) ?? 8080;
  if (port > 65535) throw new EmollmError('ERR_INVALID_ARGUMENT', '--port must be <= 65535');
  const keys = loadKeys({ ...(s('api-keys-file') ? { keysFile: s('api-keys-file')! } : {}), ...(s('api-key-env') ? { keysEnv: s('api-key-env')! } : {}) });
  const root = await mediaRoot(s('media-root'));
  const threads = int('threads', s('threads'), 1);
  const context = int('context', s('context'), 1);
  const shutdownMs = int('shutdown-timeout-ms', s('shutdown-timeout-ms')) ?? 30_000;
  const model = await loadModel(s('model')!, {
    ...(s('mmproj') ? { mmproj: s('mmproj')! } : {}),
    ...(threads !== undefined ? { threads } : {}),
    ...(context !== undefined ? { contextSize: context } : {}),
  });
  const opt = (k: string, min = 0): number | undefined => int(k, s(k), min);
  let server;
  try {
    server = await createServer({
      model,
      apiKeys: keys,
      logger: values.log === true,
      ...(s('model-name') ? { modelName: s('model-name')! } : {}),
      ...(root !== undefined ? { mediaRoot: root } : {}),
      ...(opt('max-queue') !== undefined ? { maxQueue: opt('max-queue')! } : {}),
      ...(opt('request-timeout-ms', 1) !== undefined ? { requestTimeoutMs: opt('request-timeout-ms', 1)! } : {}),
      ...(opt('max-body-bytes', 1) !== undefined ? { maxBodyBytes: opt('max-body-bytes', 1)! } : {}),
      ...(opt('max-image-bytes', 1) !== undefined ? { maxImageBytes: opt('max-image-bytes', 1)! } : {}),
      ...(opt('max-tokens-limit', 1) !== undefined ? { maxTokensLimit: opt('max-tokens-limit', 1)! } : {}),
    });
  } catch (e) {
    await model.close();
    throw e;
  }
  const address = await server.listen(port, s('host') ?? '127.0.0.1');
  // one line a supervisor (or a test) can wait for
  console.error(`emollm serve: ${address} (model ${model.path}${keys.length ? `, ${keys.length} API keys` : ', no authentication'})`);
  return new Promise<number>((resolve, reject) => {
    const stop = (sig: string): void => {
      console.error(`emollm serve: ${sig}: draining in-flight requests (at most ${shutdownMs} ms)`);
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
      server.close(shutdownMs).then(() => {
        console.error('emollm serve: stopped');
        resolve(0);
      }, reject);
    };
    const onInt = (): void => stop('SIGINT');
    const onTerm = (): void => stop('SIGTERM');
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
  });
}
