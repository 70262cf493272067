/** The `emollm serve` option table, kept apart from the command so the CLI lists it without loading fastify. */
import type { CommandSpec } from '../cli/args.js';

/** `emollm serve`: one table entry per flag (lib/cli/args.ts parses and prints the usage). */
export const SERVE_SPEC = {
  name: 'serve',
  synopsis: '--model PATH',
  summary:
    'OpenAI-compatible server: POST /v1/chat/completions (SSE with stream: true), GET /v1/models,\n' +
    'POST /v1/analyze (emollm.analysis/1), GET /health, GET /metrics (Prometheus). docs/serving.md',
  options: {
    model: { type: 'string', value: 'PATH', description: 'LLaVA / EmoLLM folder or .gguf' },
    mmproj: { type: 'string', value: 'PATH', description: "a GGUF's vision tower" },
    'model-name': { type: 'string', value: 'NAME', description: "the id clients use (default: the folder's name)" },
    host: { type: 'string', value: 'H', description: 'listen address (default 127.0.0.1)' },
    port: { type: 'string', value: 'P', description: 'listen port (default 8080; 0 picks a free one)' },
    'api-keys-file': { type: 'string', value: 'FILE', description: 'bearer tokens, one a line' },
    'api-key-env': { type: 'string', value: 'VAR', description: 'comma-separated bearer tokens in $VAR' },
    'media-root': { type: 'string', value: 'DIR', description: 'local image paths are accepted only under DIR (real path)' },
    'max-queue': { type: 'string', value: 'N', description: 'requests waiting beyond the running ones (default 16; more: 429 + Retry-After)' },
    'request-timeout-ms': { type: 'string', value: 'MS', description: 'per request, queueing included (default 120000; then 504)' },
    'max-body-bytes': { type: 'string', value: 'N', description: 'request body limit (default 33554432)' },
    'max-image-bytes': { type: 'string', value: 'N', description: 'image limit (default 16777216)' },
    'max-tokens-limit': { type: 'string', value: 'N', description: 'largest max_tokens accepted (default 4096)' },
    'shutdown-timeout-ms': { type: 'string', value: 'MS', description: 'drain time on SIGTERM / SIGINT before cancelling (default 30000)' },
    threads: { type: 'string', value: 'N', description: 'compute threads' },
    context: { type: 'string', value: 'N', description: 'KV cache size in tokens (per sequence)' },
    'kv-type': { type: 'string', choices: ['f32', 'f16', 'bf16'], description: 'KV cache element type (default f32; llama.cpp uses f16)' },
    'bf16-products': { type: 'boolean', description: 'with --kv-type bf16: decode attention on bf16 products (AVX512-BF16); faster, not bit-equal' },
    'max-sequences': { type: 'string', value: 'N', description: 'requests decoded together (default 4; each has its own KV cache)' },
    'batch-tokens': { type: 'string', value: 'N', description: 'token rows per scheduler step (default min(context × max sequences, 512)); long prompts are prefilled in chunks of what decoding leaves' },
    log: { type: 'boolean', description: 'log requests (JSON lines on stdout)' },
  },
} as const satisfies CommandSpec;

