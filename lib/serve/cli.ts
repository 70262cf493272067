/**
 * `emollm serve --model PATH [options]`: loads the model, serves it (see server.ts), and on
 * SIGTERM / SIGINT drains in-flight requests before exiting.
 */
import { formatUsage, parseCommand, UsageError } from '../cli/args.js';
import { SERVE_SPEC } from './spec.js';
import { EmollmError } from '../errors.js';
import { loadModel, type KvCacheType } from '../model.js';
import { loadKeys } from './auth.js';
import { mediaRoot } from './media.js';
import { createServer } from './server.js';

export const SERVE_USAGE = formatUsage(SERVE_SPEC);

function int(name: string, v: string | undefined, min = 0): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new EmollmError('ERR_INVALID_ARGUMENT', `--${name} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  return n;
}

/** `emollm serve ...`; resolves with the exit code once the server has shut down. */
export async function serveCommand(argv: readonly string[]): Promise<number> {
  const { values, help } = parseCommand(SERVE_SPEC, argv);
  if (help) {
    console.log(SERVE_USAGE);
    return 0;
  }
  const s = (k: keyof typeof values): string | undefined => values[k] as string | undefined;
  if (!s('model')) throw new UsageError('serve needs --model', SERVE_USAGE);
  const port = int('port', s('port')) ?? 8080;
  if (port > 65535) throw new EmollmError('ERR_INVALID_ARGUMENT', '--port must be <= 65535');
  const keys = loadKeys({ ...(s('api-keys-file') ? { keysFile: s('api-keys-file')! } : {}), ...(s('api-key-env') ? { keysEnv: s('api-key-env')! } : {}) });
  const root = await mediaRoot(s('media-root'));
  const threads = int('threads', s('threads'), 1);
  const context = int('context', s('context'), 1);
  const sequences = int('max-sequences', s('max-sequences'), 1);
  const batchTokens = int('batch-tokens', s('batch-tokens'), 1);
  const shutdownMs = int('shutdown-timeout-ms', s('shutdown-timeout-ms')) ?? 30_000;
  const model = await loadModel(s('model')!, {
    ...(s('mmproj') ? { mmproj: s('mmproj')! } : {}),
    ...(threads !== undefined ? { threads } : {}),
    ...(context !== undefined ? { contextSize: context } : {}),
    ...(s('kv-type') ? { kvCacheType: s('kv-type') as KvCacheType } : {}),
    ...(values['bf16-products'] === true ? { decodeBf16Products: true } : {}),
    ...(sequences !== undefined ? { maxSequences: sequences } : {}),
    ...(batchTokens !== undefined ? { batchTokens } : {}),
  });
  const opt = (k: keyof typeof values, min = 0): number | undefined => int(k, s(k), min);
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
