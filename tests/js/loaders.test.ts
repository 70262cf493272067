import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { readConfig } from '../../lib/config.js';
import { findTensor, inspectGguf, inspectSafetensors } from '../../lib/loaders.js';
import { rejects } from './helpers/errors.js';

// The shared model folder: $EMOLLM_SHARED_DIR, else ../shared next to the repository.
const shared = resolve(process.env.EMOLLM_SHARED_DIR ?? join(__dirname, '..', '..', '..', 'shared'));
const haveShared = existsSync(join(shared, 'models', 'stories260K'));
if (!haveShared) console.warn(`loaders.test: shared models not found at ${shared}; real-file tests skipped`);

function safetensorsBytes(header: string, dataBytes: number): Buffer {
  const h = Buffer.from(header, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([len, h, Buffer.alloc(dataBytes)]);
}

describe.skipIf(!haveShared)('real files', () => {
  it('inspects the stories260K safetensors', async () => {
    const info = await inspectSafetensors(join(shared, 'models/stories260K/hf/model.safetensors'));
    expect(info.format).toBe('safetensors');
    expect(info.sharded).toBe(false);
    expect(info.files).toHaveLength(1);
    expect(info.tensors).toHaveLength(48);
    const emb = findTensor(info, 'model.embed_tokens.weight')!;
    expect(emb).toMatchObject({ dtype: 'F32', computeDtype: 'f32', supported: true, shape: [512, 64], nbytes: 512 * 64 * 4 });
    expect(emb.file).toBe(info.files[0]);
    expect(emb.offset).toBeGreaterThan(8);
  });

  it('inspects the llava-tiny checkpoint directory', async () => {
    const info = await inspectSafetensors(join(shared, 'models/llava-tiny-hf'));
    expect(info.tensors).toHaveLength(64);
    expect(info.metadata).toEqual({ format: 'pt' });
  });

  it('inspects the stories260K GGUF with shapes outermost-first and full token arrays', async () => {
    const g = await inspectGguf(join(shared, 'models/stories260K/gguf/stories260K.gguf'));
    expect(g.version).toBe(3);
    expect(g.alignment).toBe(32);
    expect(g.tensors).toHaveLength(48);
    expect(g.tensors.every((t) => t.dtype === 'f32' && t.computeDtype === 'f32')).toBe(true);
    expect(findTensor(g, 'token_embd.weight')!.shape).toEqual([512, 64]);
    expect(g.metadata['general.architecture']).toBe('llama');
    expect(g.metadata['llama.block_count']).toBe(5);
    expect(g.metadataTypes['llama.block_count']).toBe('u32');
    const tokens = g.metadata['tokenizer.ggml.tokens'] as string[];
    expect(tokens).toHaveLength(512);
    expect(tokens.slice(0, 3)).toEqual(['<unk>', '<s>', '</s>']);
    expect(g.metadataTypes['tokenizer.ggml.tokens']).toBe('array<string>');
    expect((g.metadata['tokenizer.ggml.scores'] as number[]).length).toBe(512);
    expect(g.metadata['llama.attention.layer_norm_rms_epsilon']).toBeCloseTo(1e-5, 9);
  });

  it('reads a vocab-only GGUF with 50257 tokens', async () => {
    const g = await inspectGguf(join(shared, 'tokenizers/llamacpp-vocab-tests/ggml-vocab-gpt-2.gguf'));
    expect(g.tensors).toHaveLength(0);
    expect(g.metadata['tokenizer.ggml.model']).toBe('gpt2');
    expect((g.metadata['tokenizer.ggml.tokens'] as string[]).length).toBe(50257);
  });

  it('reads typed configs with transformers defaults', async () => {
    const s = await readConfig(join(shared, 'models/stories260K/hf/config.json'));
    expect(s.kind).toBe('llama');
    if (s.kind !== 'llama') return;
    expect(s.config).toMatchObject({ hiddenSize: 64, numKeyValueHeads: 4, headDim: 8, vocabSize: 512, rmsNormEps: 1e-5 });
    expect(s.config.eosTokenId).toEqual([2]);
    expect(s.config.ropeScaling.ropeType).toBe('default');

    const l = await readConfig(join(shared, 'tokenizers/llava-1.5-7b-hf/config.json'));
    expect(l.kind).toBe('llava');
    if (l.kind !== 'llava') return;
    expect(l.config.textConfig).toMatchObject({ hiddenSize: 4096, numHiddenLayers: 32, numKeyValueHeads: 32, headDim: 128 });
    expect(l.config.visionConfig).toMatchObject({ imageSize: 336, patchSize: 14, numPatches: 576, hiddenAct: 'quick_gelu' });
    expect(l.config.visionFeatureLayer).toBe(-2);
    expect(l.config.imageTokenIndex).toBe(32000);

    const t = await readConfig(join(shared, 'models/llava-tiny-hf'));
    expect(t.kind === 'llava' && t.config.imageSeqLength).toBe(9);
  });
});

describe('errors', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'emollm-loaders-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('rejects a missing file with ERR_FILE_NOT_FOUND naming it', async () => {
    const p = join(dir, 'nope.safetensors');
    const e = await rejects(inspectSafetensors(p));
    expect(e.code).toBe('ERR_FILE_NOT_FOUND');
    expect(e.message).toContain('nope.safetensors');
    expect((await rejects(inspectGguf(join(dir, 'nope.gguf')))).code).toBe('ERR_FILE_NOT_FOUND');
    expect((await rejects(readConfig(join(dir, 'config.json')))).code).toBe('ERR_FILE_NOT_FOUND');
  });

  it('rejects malformed safetensors with ERR_MALFORMED_FILE naming the tensor', async () => {
    const p = join(dir, 'bad.safetensors');
    await writeFile(p, safetensorsBytes('{"model.norm.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}', 20));
    const e = await rejects(inspectSafetensors(p));
    expect(e.code).toBe('ERR_MALFORMED_FILE');
    expect(e.file).toBe(p);
    expect(e.message).toContain('tensor model.norm.weight extends past end of file');
  });

  it('rejects a GGUF with a bad magic and one claiming 2^60 tensors', async () => {
    const p = join(dir, 'bad.gguf');
    await writeFile(p, Buffer.from('GGML\x03\x00\x00\x00', 'latin1'));
    const e = await rejects(inspectGguf(p));
    expect(e.code).toBe('ERR_MALFORMED_FILE');
    expect(e.message).toContain('bad magic');
    const h = Buffer.alloc(24);
    h.write('GGUF', 0, 'latin1');
    h.writeUInt32LE(3, 4);
    h.writeBigUInt64LE(1n << 60n, 8);
    await writeFile(p, h);
    expect((await rejects(inspectGguf(p))).message).toContain('cannot fit');
  });

  it('rejects bad configs with ERR_BAD_CONFIG / ERR_MALFORMED_FILE', async () => {
    const p = join(dir, 'config.json');
    await writeFile(p, '{"model_type": "gpt2"}');
    const e = await rejects(readConfig(p));
    expect(e.code).toBe('ERR_BAD_CONFIG');
    expect(e.message).toContain('gpt2');
    await writeFile(p, '{"model_type": "llama", "hidden_size": "big"}');
    expect((await rejects(readConfig(p))).message).toContain('hidden_size');
    await writeFile(p, '{"model_type": ');
    expect((await rejects(readConfig(p))).code).toBe('ERR_MALFORMED_FILE');
  });

  it('rejects a non-string path', async () => {
    expect((await rejects(inspectGguf(42 as unknown as string))).code).toBe('ERR_INVALID_ARGUMENT');
  });
});

describe.skipIf(!haveShared)('event loop', () => {
  it('parses off the main thread: the promise settles after the event loop has turned', async () => {
    const path = join(shared, 'tokenizers/llamacpp-vocab-tests/ggml-vocab-gpt-2.gguf');
    let turned = false;
    const job = inspectGguf(path);
    setImmediate(() => {
      turned = true;
    });
    // A parse done synchronously inside the call would settle on the microtask queue, before
    // any setImmediate callback; an AsyncWorker's result arrives in a later loop turn.
    const g = await job;
    expect(turned).toBe(true);
    expect(g.tensors).toHaveLength(0);
  });
});
