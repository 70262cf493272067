// Seeded, bounded fuzzing of the JavaScript parsers of untrusted files (issue 9): the EmoBench
// JSONL parser and the three tokenizer sources (tokenizer.json folders, GGUF tokenizer metadata,
// llama2.c tokenizer.bin). Every mutated input must end in a result or an EmollmError: never a
// TypeError / RangeError / SyntaxError escaping, a hang, or a crash. On failure the message names
// the seed and iteration, so a case can be replayed with FUZZ_SEED.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import { parseSamples, sampleToJsonl, type BenchSample } from '../../lib/emobench/sample.js';
import { EmollmError } from '../../lib/errors.js';
import { loadHfTokenizer, SpmTokenizer, tokenizerFromGgufMetadata, type Tokenizer } from '../../lib/tokenizer.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const shared = process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared');
const SEED = Number(process.env.FUZZ_SEED ?? 9);
const tmp = mkdtempSync(join(tmpdir(), 'emollm-fuzz-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** mulberry32: small, seeded, reproducible. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const TOKENS = ['{', '}', '[', ']', '"', ',', ':', 'null', 'true', '-1', '1e999', '"__proto__"', '"constructor"', '\n', '\\u0000', '\\ud800', '"task"', '"emo-c"', '"media"', '"path"', '"../x"', '"answer"', '"options"', 'é', '\u0000', '\uffff', '"' + 'a'.repeat(1000) + '"'];

/** One byte-level / token-level mutation of `s`. */
function mutateText(s: string, r: () => number): string {
  const pos = Math.floor(r() * (s.length + 1));
  switch (Math.floor(r() * 6)) {
    case 0: // replace one character
      return s.slice(0, pos) + String.fromCharCode(Math.floor(r() * 0x3000)) + s.slice(pos + 1);
    case 1: // delete a range
      return s.slice(0, pos) + s.slice(pos + Math.floor(r() * 40));
    case 2: // insert a token
      return s.slice(0, pos) + TOKENS[Math.floor(r() * TOKENS.length)]! + s.slice(pos);
    case 3: // duplicate a range
      return s.slice(0, pos) + s.slice(Math.max(0, pos - 60), pos) + s.slice(pos);
    case 4: // truncate
      return s.slice(0, pos);
    default: // swap two ranges
      {
        const q = Math.floor(r() * s.length);
        const [a, b] = pos < q ? [pos, q] : [q, pos];
        return s.slice(0, a) + s.slice(b, b + 20) + s.slice(a + 20, b) + s.slice(a, a + 20) + s.slice(b + 20);
      }
  }
}

const WEIRD: unknown[] = [null, -1, 0, 2 ** 53, -(2 ** 31), 1e308, Number.NaN, '', 'x'.repeat(5000), [], {}, [null], { a: 1 }, true, '\u0000', ['a', 1, null]];

/** Replaces one random value inside a JSON-like tree (objects and arrays), or drops a key. */
function mutateTree(v: unknown, r: () => number): unknown {
  const copy = JSON.parse(JSON.stringify(v)) as unknown;
  const nodes: Array<{ parent: Record<string, unknown> | unknown[]; key: string | number }> = [];
  const walk = (x: unknown): void => {
    if (Array.isArray(x)) x.forEach((c, i) => (nodes.push({ parent: x, key: i }), nodes.length < 5000 && walk(c)));
    else if (x && typeof x === 'object') for (const [k, c] of Object.entries(x)) nodes.push({ parent: x as Record<string, unknown>, key: k }), nodes.length < 5000 && walk(c);
  };
  walk(copy);
  if (nodes.length === 0) return WEIRD[Math.floor(r() * WEIRD.length)];
  const { parent, key } = nodes[Math.floor(r() * nodes.length)]!;
  if (r() < 0.2 && !Array.isArray(parent)) delete (parent as Record<string, unknown>)[key as string];
  else (parent as Record<string | number, unknown>)[key] = WEIRD[Math.floor(r() * WEIRD.length)];
  return copy;
}

/** Runs `fn`; an EmollmError is an accepted outcome, anything else thrown fails with the case named. */
async function typedOrOk<T>(label: string, fn: () => T | Promise<T>): Promise<T | undefined> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof EmollmError) return undefined;
    throw new Error(`${label}: untyped ${(e as Error)?.name}: ${(e as Error)?.message}`, { cause: e });
  }
}

/** A tokenizer that loaded must encode and decode without untyped errors. */
async function exercise(label: string, tok: Tokenizer | undefined): Promise<void> {
  if (!tok) return;
  await typedOrOk(`${label} encode/decode`, () => {
    const ids = tok.encode('Hello wörld, <s> 😀 \u0000 ok', { addSpecialTokens: true });
    tok.decode(ids);
    tok.decode([0, 1, 2, tok.vocabSize - 1], { skipSpecialTokens: true });
  });
}

function benchSample(i: number): BenchSample {
  const media = i % 3 === 0 ? { type: 'image' as const, path: `img/${i}.jpg` } : i % 3 === 1 ? { type: 'video' as const, path: `v/${i}.mp4`, start: 1, end: 2 } : null;
  const base = { id: `F/test/${i}`, source: 'F', split: 'test', media, text: `text ${i}` };
  if (i % 2 === 0) return { ...base, task: 'emo-c', options: ['happy', 'sad', 'angry'], answer: 'sad' };
  return { ...base, task: 'sarcasm', answer: i % 4 === 1 ? 'yes' : 'no' };
}

describe('fuzz: EmoBench JSONL parser', () => {
  it(`2000 mutated benchmark files end in samples or ERR_MALFORMED_FILE (seed ${SEED})`, () => {
    const r = rng(SEED);
    const base = Array.from({ length: 12 }, (_, i) => sampleToJsonl(benchSample(i))).join('\n') + '\n';
    expect(parseSamples(base)).toHaveLength(12);
    let ok = 0;
    let rejected = 0;
    for (let it = 0; it < 2000; it++) {
      let text = base;
      const n = 1 + Math.floor(r() * 4);
      for (let k = 0; k < n; k++) text = mutateText(text, r);
      try {
        const samples = parseSamples(text);
        // what parses is valid: unique ids, known tasks, answers among the options
        expect(new Set(samples.map((s) => s.id)).size).toBe(samples.length);
        for (const s of samples) if (s.options) expect(s.options).toContain(s.answer);
        ok++;
      } catch (e) {
        if (!(e instanceof EmollmError) || e.code !== 'ERR_MALFORMED_FILE')
          throw new Error(`seed ${SEED} iteration ${it}: ${(e as Error).name}: ${(e as Error).message}\n${JSON.stringify(text.slice(0, 400))}`);
        rejected++;
      }
    }
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    // both outcomes occur: the mutations are neither all harmless nor all fatal
    expect(ok).toBeGreaterThan(20);
    expect(rejected).toBeGreaterThan(200);
  });
});

describe('fuzz: tokenizer files', () => {
  it(`GGUF tokenizer metadata: 600 mutated vocabularies (seed ${SEED})`, async () => {
    const r = rng(SEED + 1);
    const tokens = ['<unk>', '<s>', '</s>', ...Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`), '▁', 'h', 'e', 'l', 'o', '▁h', '▁he', 'll', '▁hello'];
    const meta = {
      'tokenizer.ggml.model': 'llama',
      'tokenizer.ggml.tokens': tokens,
      'tokenizer.ggml.scores': tokens.map((_, i) => -i),
      'tokenizer.ggml.token_type': tokens.map((t, i) => (i === 0 ? 2 : i < 3 ? 3 : t.startsWith('<0x') ? 6 : 1)),
      'tokenizer.ggml.bos_token_id': 1,
      'tokenizer.ggml.eos_token_id': 2,
      'tokenizer.ggml.add_bos_token': true,
    };
    await exercise('base', tokenizerFromGgufMetadata(meta));
    for (let it = 0; it < 600; it++) {
      let m = meta as unknown;
      for (let k = 0, n = 1 + Math.floor(r() * 3); k < n; k++) m = mutateTree(m, r);
      if (r() < 0.2 && m && typeof m === 'object') (m as Record<string, unknown>)['tokenizer.ggml.model'] = r() < 0.5 ? 'gpt2' : 'llama';
      const label = `seed ${SEED + 1} iteration ${it}`;
      const tok = await typedOrOk(label, () => tokenizerFromGgufMetadata(m as Record<string, never>));
      await exercise(label, tok);
    }
  });

  const tok512 = join(shared, 'models', 'stories260K', 'tok512.bin');
  it.skipIf(!(() => {
    try {
      readFileSync(tok512);
      return true;
    } catch {
      console.warn(`llama2.c tokenizer.bin fuzzing skipped: ${tok512} not found (set EMOLLM_SHARED_DIR)`);
      return false;
    }
  })())(`llama2.c tokenizer.bin: 400 mutated files (seed ${SEED})`, async () => {
    const r = rng(SEED + 2);
    const base = readFileSync(tok512);
    await exercise('base', SpmTokenizer.fromLlama2cVocab(new Uint8Array(base)));
    for (let it = 0; it < 400; it++) {
      const b = Buffer.from(base);
      let bytes: Uint8Array = b;
      for (let k = 0, n = 1 + Math.floor(r() * 4); k < n; k++) {
        const pos = Math.floor(r() * bytes.length);
        const op = bytes.length < 4 ? 2 : Math.floor(r() * 4);
        if (op === 0) bytes[pos] = Math.floor(r() * 256);
        else if (op === 1) new DataView(bytes.buffer, bytes.byteOffset).setInt32(Math.min(pos, bytes.length - 4), [0x7fffffff, -1, 0, 1 << 20][Math.floor(r() * 4)]!, true);
        else if (op === 2) bytes = bytes.subarray(0, pos);
        else new DataView(bytes.buffer, bytes.byteOffset).setFloat32(Math.min(pos, bytes.length - 4), [NaN, Infinity, -Infinity, 1e38][Math.floor(r() * 4)]!, true);
      }
      const label = `seed ${SEED + 2} iteration ${it}`;
      await exercise(label, await typedOrOk(label, () => SpmTokenizer.fromLlama2cVocab(bytes)));
    }
  });

  it(`tokenizer.json folders: 150 mutated files (seed ${SEED})`, async () => {
    const r = rng(SEED + 3);
    const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
    for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
    Object.assign(vocab, { '▁': 259, h: 260, i: 261, '▁h': 262, '▁hi': 263 });
    const special = (id: number, content: string): object => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
    const json = {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
      normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
      pre_tokenizer: null,
      post_processor: null,
      decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }] },
      model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges: ['▁ h', '▁h i'] },
    };
    const cfg = { bos_token: '<s>', eos_token: '</s>', add_bos_token: true, add_eos_token: false };
    const dir = join(tmp, 'hf');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(json));
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(cfg));
    await exercise('base', await loadHfTokenizer(dir));
    for (let it = 0; it < 150; it++) {
      const which = r() < 0.7 ? 'tokenizer.json' : 'tokenizer_config.json';
      const src = which === 'tokenizer.json' ? json : cfg;
      const text = r() < 0.5 ? JSON.stringify(mutateTree(src, r)) : mutateText(JSON.stringify(src), r);
      writeFileSync(join(dir, which), text);
      writeFileSync(join(dir, which === 'tokenizer.json' ? 'tokenizer_config.json' : 'tokenizer.json'), JSON.stringify(which === 'tokenizer.json' ? cfg : json));
      const label = `seed ${SEED + 3} iteration ${it} (${which})`;
      await exercise(label, await typedOrOk(label, () => loadHfTokenizer(dir)));
    }
  });
});
