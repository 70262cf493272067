/** The `emollm worker` option table, kept apart from the command so the CLI lists it without loading bullmq. */
import type { CommandSpec } from '../cli/args.js';

/** `emollm worker`: one table entry per flag (lib/cli/args.ts parses and prints the usage). */
export const WORKER_SPEC = {
  name: 'worker',
  synopsis: '--queue redis://host:port[/db] --model SPEC',
  summary: 'runs the EmoBench samples `emollm eval --queue` enqueues (docs/serving.md)',
  options: {
    queue: { type: 'string', value: 'URL', description: 'the Redis the coordinator enqueues to' },
    model: { type: 'string', value: 'SPEC', description: "as eval's: a model folder or .gguf | http://host:port/v1#name | face | random | majority" },
    'media-root': { type: 'string', value: 'DIR', description: "where sample media paths are relative to on this machine (default: the coordinator's)" },
    concurrency: { type: 'string', value: 'N', description: 'jobs at once (default 1; a native model runs one at a time anyway)' },
    'lock-ms': { type: 'string', value: 'MS', description: "job lock: a dead worker's job goes back to the queue after about this long (default 30000)" },
    'throttle-ms': { type: 'string', value: 'MS', description: 'wait before each job (failure drills and smoke tests)' },
    mmproj: { type: 'string', value: 'PATH', description: 'multimodal projector GGUF beside a text GGUF' },
    threads: { type: 'string', value: 'N', description: 'native compute threads' },
    'timeout-ms': { type: 'string', value: 'MS', description: 'HTTP backend request timeout' },
    retries: { type: 'string', value: 'N', description: 'HTTP backend retries' },
  },
} as const satisfies CommandSpec;

