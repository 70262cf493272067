import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { Tokenizer as HfLib } from '@huggingface/tokenizers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { native } from '../../lib/native.js';
import {
  HfTokenizer,
  SpmTokenType,
  SpmTokenizer,
  loadHfTokenizer,
  loadTokenizer,
  loadTokenizerFromGguf,
  tokenizerFromGgufMetadata,
} from '../../lib/tokenizer.js';
import type { Tokenizer } from '../../lib/tokenizer.js';
import { rejects, throws } from './helpers/errors.js';

// Shared files: $EMOLLM_SHARED_DIR, else ../shared next to the repository.
const repoRoot = join(__dirname, '..', '..');
const shared = resolve(process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared'));
const llavaDir = join(shared, 'tokenizers', 'llava-1.5-7b-hf');
const vocabDir = join(shared, 'tokenizers', 'llamacpp-vocab-tests');
const storiesDir = join(shared, 'models', 'stories260K');
const haveLlava = existsSync(join(llavaDir, 'tokenizer.json'));
const haveVocabs = existsSync(join(vocabDir, 'ggml-vocab-llama-spm.gguf'));
const haveStories = existsSync(join(storiesDir, 'gguf', 'stories260K.gguf'));
const haveLlama2Bin = existsSync(join(shared, 'tokenizers', 'llama2-spm', 'tokenizer.bin'));
const haveTiny = existsSync(join(shared, 'models', 'llava-tiny-hf', 'tokenizer.json'));
let haveAddon = true;
try {
  native();
} catch {
  haveAddon = false;
}
if (!haveLlava || !haveVocabs || !haveStories || !haveLlama2Bin || !haveTiny)
  console.warn(`tokenizer.test: some shared files are missing under ${shared} (set EMOLLM_SHARED_DIR); their oracle tests are skipped`);
if (!haveAddon) console.warn('tokenizer.test: the native addon is not built; GGUF tokenizer tests (which read GGUF through it) are skipped');

interface Vector {
  text: string;
  ids: number[];
}

/** llama.cpp's test-tokenizer-0 vectors: `.inp` strings each followed by the separator, `.out` one line of ids per string. */
function readVectors(gguf: string): Vector[] {
  const inp = readFileSync(`${gguf}.inp`, 'utf8').split('\n__ggml_vocab_test__\n');
  expect(inp.pop()).toBe('');
  const out = readFileSync(`${gguf}.out`, 'utf8').split('\n');
  return inp.map((text, i) => {
    const line = out[i]!.trim();
    return { text, ids: line === '' ? [] : line.split(/\s+/).map(Number) };
  });
}

/** Streams ids one at a time through a detokenizer and checks each chunk is whole text. */
function stream(tok: Tokenizer, ids: readonly number[], skipSpecialTokens = false): string {
  const d = tok.createDetokenizer({ skipSpecialTokens });
  let s = '';
  for (const id of ids) s += d.push(id);
  return s + d.flush();
}

// ---------------------------------------------------------------------------------------------
// SPM algorithm on small made-up vocabularies (no shared files needed)
// ---------------------------------------------------------------------------------------------

function byteTokens(): string[] {
  return Array.from({ length: 256 }, (_, b) => `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
}

/** <unk> <s> </s>, 256 byte tokens, then `extra` (text, score, type). */
function smallSpm(extra: [string, number, number?][], opts: Partial<ConstructorParameters<typeof SpmTokenizer>[0]> = {}): SpmTokenizer {
  const tokens = ['<unk>', '<s>', '</s>', ...byteTokens(), ...extra.map((e) => e[0])];
  const scores = [0, 0, 0, ...new Array<number>(256).fill(0), ...extra.map((e) => e[1])];
  const types = [2, 3, 3, ...new Array<number>(256).fill(6), ...extra.map((e) => e[2] ?? 1)];
  return new SpmTokenizer({ tokens, scores, tokenTypes: types, ...opts });
}
const B = 259; // first id after the byte tokens

describe('SPM algorithm (synthetic vocabularies)', () => {
  it('merges the highest-scoring pair first, left-most on ties, and resegments', () => {
    // ids: ▁ a b ab ▁a bb
    const tok = smallSpm([
      ['▁', -1],
      ['a', -1],
      ['b', -1],
      ['ab', -2],
      ['▁a', -3],
      ['bb', -2],
    ]);
    // "abb": pairs ab (-2) and bb (-2) tie -> left-most "ab" wins, leaving "b".
    expect(tok.encode('abb', { addSpecialTokens: false })).toEqual([B + 0, B + 3, B + 2]);
    // "▁ab": ▁a (-3) vs ab (-2): ab wins.
    expect(tok.encode('ab', { addSpecialTokens: false, parseSpecialTokens: false })).toEqual([B + 0, B + 3]);
    const higher = smallSpm([
      ['▁', -1],
      ['a', -1],
      ['b', -1],
      ['ab', -2],
      ['▁a', -1.5],
    ]);
    expect(higher.encode('ab', { addSpecialTokens: false })).toEqual([B + 4, B + 2]);
  });

  it('falls back to <0xNN> byte tokens for characters missing from the vocabulary', () => {
    const tok = smallSpm([
      ['▁', 0],
      ['x', 0],
    ]);
    // 'é' = C3 A9, '🦙' = F0 9F A6 99: byte tokens are ids 3 + byte.
    expect(tok.encode('xé🦙', { addSpecialTokens: false })).toEqual([B, B + 1, 3 + 0xc3, 3 + 0xa9, 3 + 0xf0, 3 + 0x9f, 3 + 0xa6, 3 + 0x99]);
    expect(tok.decode(tok.encode('xé🦙'), { skipSpecialTokens: true })).toBe('xé🦙');
  });

  it('adds BOS/EOS as configured and the space prefix only where llama.cpp does', () => {
    const extra: [string, number, number?][] = [
      ['▁', 0],
      ['h', 0],
      ['i', 0],
      ['▁hi', 5],
      ['▁h', 1],
      ['hi', 2],
    ];
    const tok = smallSpm(extra);
    expect(tok.addBosToken).toBe(true);
    expect(tok.encode('hi')).toEqual([1, B + 3]);
    expect(tok.encode('hi', { addSpecialTokens: false })).toEqual([B + 3]);
    expect(tok.encode('')).toEqual([1]);
    expect(tok.encode('', { addSpecialTokens: false })).toEqual([]);
    // Control text is parsed by default; the fragment after it gets a space prefix again.
    expect(tok.encode('hi</s>hi', { addSpecialTokens: false })).toEqual([B + 3, 2, B + 3]);
    // parseSpecialTokens: false keeps "</s>" as text (byte fallback for < / >, then s).
    const plain = tok.encode('hi</s>', { addSpecialTokens: false, parseSpecialTokens: false });
    expect(plain).not.toContain(2);
    expect(tok.decode(plain)).toBe('hi</s>');

    const noPrefix = smallSpm(extra, { addSpacePrefix: false, addEosToken: true, addBosToken: false });
    expect(noPrefix.encode('hi')).toEqual([B + 5, 2]);
    expect(noPrefix.decode([B + 3])).toBe(' hi');
    expect(tok.decode([B + 3])).toBe('hi');
  });

  it('matches user-defined tokens literally (even without parseSpecialTokens) and renders them verbatim', () => {
    const tok = smallSpm([
      ['▁', 0],
      ['a', 0],
      ['<image>', 0, SpmTokenType.USER_DEFINED],
      ['▁▁', 0, SpmTokenType.USER_DEFINED],
      ['zz', 0, SpmTokenType.UNUSED],
    ]);
    expect(tok.encode('a<image>a', { addSpecialTokens: false, parseSpecialTokens: false })).toEqual([B, B + 1, B + 2, B, B + 1]);
    expect(tok.specialTokenId('<image>')).toBe(B + 2);
    expect(tok.specialTokenId('a')).toBeUndefined();
    expect(tok.isSpecial(B + 2)).toBe(false); // user-defined tokens are not skipped
    expect(tok.decode([B + 1, B + 2, B + 3], { skipSpecialTokens: true })).toBe('a<image>▁▁');
    expect(tok.tokenToPiece(B + 4)).toEqual(new Uint8Array(0)); // unused: nothing
    expect(tok.decode([1, B, B + 1, 2])).toBe('<s> a</s>');
    expect(tok.decode([1, B, B + 1, 2], { skipSpecialTokens: true })).toBe('a');
  });

  it('ignores special ids outside the vocabulary and rejects bad metadata', () => {
    const meta = {
      'tokenizer.ggml.model': 'llama',
      'tokenizer.ggml.tokens': ['<unk>', '<s>', '</s>', '▁', 'a'],
      'tokenizer.ggml.scores': [0, 0, 0, 0, 0],
      'tokenizer.ggml.token_type': [2, 3, 3, 1, 1],
      'tokenizer.ggml.padding_token_id': 4294967295,
      'tokenizer.ggml.add_bos_token': false,
    };
    const tok = tokenizerFromGgufMetadata(meta);
    expect(tok.kind).toBe('gguf-spm');
    expect(tok.padId).toBeUndefined();
    expect([tok.bosId, tok.eosId, tok.unkId]).toEqual([1, 2, 0]);
    expect(tok.encode('a')).toEqual([3, 4]);
    // A byte with no byte token and no "<0xNN>" falls back to <unk>.
    expect(tok.encode('é', { addSpecialTokens: false })).toEqual([3, 0, 0]);
    expect(throws(() => tokenizerFromGgufMetadata({})).code).toBe('ERR_MALFORMED_FILE');
    expect(throws(() => tokenizerFromGgufMetadata({ 'tokenizer.ggml.model': 'bert' })).code).toBe('ERR_UNSUPPORTED');
    expect(throws(() => tokenizerFromGgufMetadata({ ...meta, 'tokenizer.ggml.scores': [0, 0] })).code).toBe('ERR_MALFORMED_FILE');
    expect(throws(() => tokenizerFromGgufMetadata({ ...meta, 'tokenizer.ggml.tokens': ['a', 'a'] })).code).toBe('ERR_MALFORMED_FILE');
    expect(throws(() => tok.decode([5])).code).toBe('ERR_INVALID_ARGUMENT');
    expect(throws(() => tok.tokenToPiece(-1)).code).toBe('ERR_INVALID_ARGUMENT');
  });

  it('streams multi-byte characters only once they are complete', () => {
    const tok = smallSpm([['▁', 0]]);
    const ids = tok.encode('🦙', { addSpecialTokens: false }); // ▁ F0 9F A6 99
    expect(ids).toEqual([B, 3 + 0xf0, 3 + 0x9f, 3 + 0xa6, 3 + 0x99]);
    const d = tok.createDetokenizer();
    expect(ids.map((id) => d.push(id))).toEqual(['', '', '', '', '🦙']);
    expect(d.flush()).toBe('');
    // A continuation keeps the leading space of its first token.
    const c = tok.createDetokenizer({ atStart: false });
    expect(c.pushAll(ids) + c.flush()).toBe(' 🦙');
    // An incomplete character is flushed as U+FFFD, like decode.
    const e = tok.createDetokenizer();
    expect(e.push(3 + 0xf0)).toBe('');
    expect(e.flush()).toBe('\uFFFD');
    expect(tok.decode([3 + 0xf0])).toBe('\uFFFD');
  });
});

// ---------------------------------------------------------------------------------------------
// llama.cpp SPM vocabulary (GGUF) and its oracle vectors
// ---------------------------------------------------------------------------------------------

describe.skipIf(!haveVocabs || !haveAddon)('GGUF llama-spm vocabulary (llama.cpp test-tokenizer-0 vectors)', () => {
  let tok: Tokenizer;
  let vectors: Vector[];
  beforeAll(async () => {
    tok = await loadTokenizerFromGguf(join(vocabDir, 'ggml-vocab-llama-spm.gguf'));
    vectors = readVectors(join(vocabDir, 'ggml-vocab-llama-spm.gguf'));
  });

  it('has the LLaMA vocabulary and special ids', () => {
    expect(tok.kind).toBe('gguf-spm');
    expect(tok.vocabSize).toBe(32000);
    expect([tok.bosId, tok.eosId, tok.unkId, tok.padId]).toEqual([1, 2, 0, undefined]);
    expect([tok.addBosToken, tok.addEosToken]).toEqual([true, false]);
    expect([tok.bosToken, tok.eosToken]).toEqual(['<s>', '</s>']);
    expect(tok.specialTokenId('</s>')).toBe(2);
    expect(tok.tokenToId('▁Hello')).toBe(15043);
    expect(tok.idToToken(13)).toBe('<0x0A>');
  });

  it('reproduces all 46 vectors', () => {
    expect(vectors).toHaveLength(46);
    let passed = 0;
    for (const v of vectors) {
      expect(tok.encode(v.text, { addSpecialTokens: false }), JSON.stringify(v.text)).toEqual(v.ids);
      passed++;
    }
    expect(passed).toBe(46);
  });

  it('adds BOS by default', () => {
    expect(tok.encode('Hello world')).toEqual([1, 15043, 3186]);
  });

  it('decodes every vector back to its text, with or without BOS, and streams the same text', () => {
    for (const v of vectors) {
      expect(tok.decode(v.ids), JSON.stringify(v.text)).toBe(v.text);
      expect(tok.decode([1, ...v.ids], { skipSpecialTokens: true })).toBe(v.text);
      expect(stream(tok, v.ids)).toBe(tok.decode(v.ids));
      expect(stream(tok, [1, ...v.ids, 2])).toBe(tok.decode([1, ...v.ids, 2]));
    }
    expect(tok.decode([1, 15043, 3186, 2])).toBe('<s> Hello world</s>');
  });

  it('gives each token its exact bytes', () => {
    expect([...tok.tokenToPiece(15043)]).toEqual([...Buffer.from(' Hello')]);
    expect([...tok.tokenToPiece(13)]).toEqual([10]);
    expect([...tok.tokenToPiece(3 + 0xe2)]).toEqual([0xe2]);
    expect([...tok.tokenToPiece(1)]).toEqual([...Buffer.from('<s>')]);
    expect(tok.tokenToPiece(1, { skipSpecialTokens: true })).toHaveLength(0);
  });
});

describe.skipIf(!haveVocabs || !haveAddon)('GGUF gpt-2 vocabulary (byte-level BPE)', () => {
  it('reproduces all 46 vectors and decodes them back', async () => {
    const tok = await loadTokenizer(join(vocabDir, 'ggml-vocab-gpt-2.gguf'));
    expect(tok.kind).toBe('gguf-bpe');
    expect(tok.vocabSize).toBe(50257);
    expect(tok.eosId).toBe(50256);
    const vectors = readVectors(join(vocabDir, 'ggml-vocab-gpt-2.gguf'));
    expect(vectors).toHaveLength(46);
    for (const v of vectors) {
      expect(tok.encode(v.text, { addSpecialTokens: false }), JSON.stringify(v.text)).toEqual(v.ids);
      expect(tok.decode(v.ids)).toBe(v.text);
      expect(stream(tok, v.ids)).toBe(v.text);
    }
  });
});

describe.skipIf(!haveStories || !haveAddon)('stories260K GGUF (tok512)', () => {
  let tok: Tokenizer;
  beforeAll(async () => {
    tok = await loadTokenizer(join(storiesDir, 'gguf', 'stories260K.gguf'));
  });

  it('tokenizes the llama2.c prompts', () => {
    expect(tok.vocabSize).toBe(512);
    expect(tok.encode('Once upon a time')).toEqual([1, 403, 407, 261, 378]);
    expect(tok.encode('There was a big')).toEqual([1, 291, 276, 286, 261, 370]);
    expect(tok.decode([1, 403, 407, 261, 378], { skipSpecialTokens: true })).toBe('Once upon a time');
  });

  it('decodes the run.c greedy tokens to run.c stdout, streaming included', () => {
    const ids = readFileSync(join(storiesDir, 'oracle', 'greedy_n200_noprompt.tokens.txt'), 'utf8').trim().split(/\s+/).map(Number);
    expect(ids).toHaveLength(201);
    const expected = readFileSync(join(storiesDir, 'oracle', 'greedy_n200_noprompt.stdout.txt'), 'utf8');
    expect(tok.decode(ids, { skipSpecialTokens: true }) + '\n').toBe(expected);
    expect(stream(tok, ids, true) + '\n').toBe(expected);
    // Generation streaming: the prompt's BOS, then generated tokens continuing it.
    const d = tok.createDetokenizer({ skipSpecialTokens: true });
    expect(d.push(ids[0]!)).toBe('');
    expect(d.push(ids[1]!)).toBe('Once');
    expect(d.push(ids[2]!)).toBe(' upon');
  });

  it('streams an id past the vocabulary (a padded output layer) as no text; decode() stays strict', () => {
    const d = tok.createDetokenizer({ skipSpecialTokens: true });
    expect(d.push(403)).toBe('Once');
    expect(d.push(512)).toBe('');
    expect(d.push(600)).toBe('');
    expect(d.push(407)).toBe(' upon');
    expect(() => tok.decode([403, 512])).toThrow(/outside the vocabulary/);
    expect(() => d.push(-1)).toThrow(/outside the vocabulary/);
  });

  it('is the same vocabulary as the llama2.c tok512.bin', () => {
    const fromBin = SpmTokenizer.fromLlama2cVocab(readFileSync(join(storiesDir, 'tok512.bin')));
    expect(fromBin.vocabSize).toBe(512);
    for (let id = 0; id < 512; id++) expect(fromBin.idToToken(id)).toBe(tok.idToToken(id));
    expect(fromBin.encode('Once upon a time')).toEqual([1, 403, 407, 261, 378]);
    expect(fromBin.encode('There was a big')).toEqual([1, 291, 276, 286, 261, 370]);
  });
});

describe.skipIf(!haveLlama2Bin || !haveVocabs)('LLaMA-2 vocabulary from llama2.c tokenizer.bin', () => {
  it('reproduces all 46 llama-spm vectors', () => {
    const tok = SpmTokenizer.fromLlama2cVocab(readFileSync(join(shared, 'tokenizers', 'llama2-spm', 'tokenizer.bin')));
    expect(tok.vocabSize).toBe(32000);
    const vectors = readVectors(join(vocabDir, 'ggml-vocab-llama-spm.gguf'));
    for (const v of vectors) {
      expect(tok.encode(v.text, { addSpecialTokens: false }), JSON.stringify(v.text)).toEqual(v.ids);
      expect(tok.decode(v.ids)).toBe(v.text);
    }
  });

  it('rejects a truncated file', () => {
    const bytes = readFileSync(join(shared, 'tokenizers', 'llama2-spm', 'tokenizer.bin'));
    expect(throws(() => SpmTokenizer.fromLlama2cVocab(bytes.subarray(0, 1001))).code).toBe('ERR_MALFORMED_FILE');
  });
});

// ---------------------------------------------------------------------------------------------
// Hugging Face tokenizer.json (llava-1.5-7b-hf)
// ---------------------------------------------------------------------------------------------

interface OracleEntry {
  rendered_prompt?: string;
  prompt?: string;
  input_ids_with_bos: number[];
  tokens: string[];
  original_llava_tokenizer_image_token_ids?: number[];
}

describe.skipIf(!haveLlava)('HF tokenizer.json: llava-1.5-7b-hf', () => {
  let tok: HfTokenizer;
  let lib: HfLib;
  let oracles: [string, OracleEntry][];
  beforeAll(async () => {
    tok = (await loadTokenizer(llavaDir)) as HfTokenizer;
    // The library itself, as the reference for decode.
    lib = new HfLib(
      JSON.parse(readFileSync(join(llavaDir, 'tokenizer.json'), 'utf8')),
      JSON.parse(readFileSync(join(llavaDir, 'tokenizer_config.json'), 'utf8')),
    );
    oracles = Object.entries(JSON.parse(readFileSync(join(llavaDir, 'oracle_prompts.json'), 'utf8')) as Record<string, OracleEntry>);
  });

  it('has the llava special tokens', () => {
    expect(tok).toBeInstanceOf(HfTokenizer);
    expect(tok.kind).toBe('hf');
    expect(tok.vocabSize).toBe(32002);
    expect([tok.bosId, tok.eosId, tok.unkId, tok.padId]).toEqual([1, 2, 0, 32001]);
    expect([tok.bosToken, tok.eosToken]).toEqual(['<s>', '</s>']);
    expect([tok.addBosToken, tok.addEosToken]).toEqual([true, false]);
    expect(tok.legacy).toBe(false);
    expect(tok.cleanUpTokenizationSpaces).toBe(false);
    expect(tok.specialTokenId('<image>')).toBe(32000);
    expect(tok.specialTokenId('<pad>')).toBe(32001);
    expect(tok.specialTokenId('▁Hello')).toBeUndefined();
    expect(tok.tokenToId('▁Hello')).toBe(15043);
    expect(tok.isSpecial(32000)).toBe(true);
    expect(tok.isSpecial(15043)).toBe(false);
    expect(tok.idToToken(32000)).toBe('<image>');
    expect(tok.idToToken(32002)).toBeUndefined();
  });

  it('reproduces every oracle prompt: ids and tokens', () => {
    expect(oracles.length).toBe(9);
    for (const [name, o] of oracles) {
      const text = o.rendered_prompt ?? o.prompt!;
      expect(tok.encode(text), name).toEqual(o.input_ids_with_bos);
      expect(tok.tokenize(text), name).toEqual(o.tokens);
      expect(tok.encode(text, { addSpecialTokens: false })).toEqual(o.input_ids_with_bos.slice(1));
    }
  });

  it("reproduces original LLaVA's tokenizer_image_token ids (chunks split on <image>, BOS only on the first)", () => {
    const withOriginal = oracles.filter(([, o]) => o.original_llava_tokenizer_image_token_ids);
    expect(withOriginal.length).toBe(2);
    for (const [name, o] of withOriginal) {
      const chunks = o.prompt!.split('<image>').map((c, i) => (i === 0 ? tok.encode(c) : tok.encode(c).slice(1)));
      const ids = chunks.flatMap((c, i) => (i === 0 ? c : [-200, ...c]));
      expect(ids, name).toEqual(o.original_llava_tokenizer_image_token_ids);
    }
  });

  it('reproduces the 46 llama.cpp llama-spm vectors (same base vocabulary)', () => {
    test46((t) => tok.encode(t, { addSpecialTokens: false }));
  });

  it('decodes like the library, and streaming concatenates to decode', () => {
    const texts = [...(haveVocabs ? readVectors(join(vocabDir, 'ggml-vocab-llama-spm.gguf')).map((v) => v.text) : []), ...oracles.map(([, o]) => o.rendered_prompt ?? o.prompt!)];
    let roundTrips = 0;
    for (const text of texts) {
      const ids = tok.encode(text);
      for (const skipSpecialTokens of [false, true]) {
        const expected = ids.length === 0 ? '' : lib.decode(ids, { skip_special_tokens: skipSpecialTokens });
        expect(tok.decode(ids, { skipSpecialTokens }), JSON.stringify(text)).toBe(expected);
        expect(stream(tok, ids, skipSpecialTokens)).toBe(expected);
      }
      // Round trip: lossless on plain text. (Not around special tokens: the text after "<image>"
      // gets its own "▁" prefix, so "<image>\n" decodes as "<image> \n", as in transformers.)
      if (!text.includes('<')) {
        roundTrips++;
        expect(tok.decode(ids, { skipSpecialTokens: true })).toBe(text);
        expect(tok.decode(tok.encode(text, { addSpecialTokens: false }))).toBe(text);
      }
    }
    expect(roundTrips).toBeGreaterThanOrEqual(46);
    expect(tok.decode(tok.encode('USER: <image>\nHi'), { skipSpecialTokens: true })).toBe('USER:  \nHi');
    expect(tok.decode([1, 15043, 3186])).toBe('<s> Hello world');
    expect(tok.decode([])).toBe('');
  });

  it('gives each token its exact bytes', () => {
    expect([...tok.tokenToPiece(15043)]).toEqual([...Buffer.from(' Hello')]);
    expect([...tok.tokenToPiece(13)]).toEqual([10]);
    expect([...tok.tokenToPiece(3 + 0xf0)]).toEqual([0xf0]);
    expect([...tok.tokenToPiece(32000)]).toEqual([...Buffer.from('<image>')]);
    expect(tok.tokenToPiece(32000, { skipSpecialTokens: true })).toHaveLength(0);
    expect(throws(() => tok.tokenToPiece(32002)).code).toBe('ERR_INVALID_ARGUMENT');
    // 😁 is byte-fallback in LLaMA's vocabulary: streamed whole.
    const ids = tok.encode('😁', { addSpecialTokens: false });
    expect(ids).toEqual([29871, 3 + 0xf0, 3 + 0x9f, 3 + 0x98, 3 + 0x81]);
    const d = tok.createDetokenizer();
    expect(ids.map((id) => d.push(id))).toEqual(['', '', '', '', '😁']);
  });
});

function test46(encode: (text: string) => number[]): void {
  if (!haveVocabs) {
    console.warn('tokenizer.test: llama-spm vectors missing; 46-vector check skipped');
    return;
  }
  const vectors = readVectors(join(vocabDir, 'ggml-vocab-llama-spm.gguf'));
  expect(vectors).toHaveLength(46);
  for (const v of vectors) expect(encode(v.text), JSON.stringify(v.text)).toEqual(v.ids);
}

describe.skipIf(!haveTiny)('HF tokenizer.json: llava-tiny-hf', () => {
  it('reproduces the reference prompt ids', async () => {
    const dir = join(shared, 'models', 'llava-tiny-hf');
    const tok = await loadHfTokenizer(dir);
    const ref = JSON.parse(readFileSync(join(dir, 'reference', 'expected.json'), 'utf8')) as { prompt: string; input_ids_unexpanded: number[] };
    expect(tok.encode(ref.prompt)).toEqual(ref.input_ids_unexpanded);
  });
});

// ---------------------------------------------------------------------------------------------
// HF folder configuration and errors (a small made-up tokenizer.json)
// ---------------------------------------------------------------------------------------------

function smallTokenizerJson(): Record<string, unknown> {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  byteTokens().forEach((t, b) => (vocab[t] = 3 + b));
  Object.assign(vocab, { '▁': 259, h: 260, i: 261, '▁h': 262, '▁hi': 263 });
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }],
    },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges: ['▁ h', '▁h i'] },
  };
}

describe('HF folder configuration', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'emollm-tok-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function folder(name: string, files: Record<string, unknown>): Promise<string> {
    const d = join(dir, name);
    await mkdir(d);
    for (const [f, content] of Object.entries(files)) await writeFile(join(d, f), typeof content === 'string' ? content : JSON.stringify(content));
    return d;
  }

  it('uses tokenizer.json alone', async () => {
    const tok = await loadHfTokenizer(await folder('plain', { 'tokenizer.json': smallTokenizerJson() }));
    expect(tok.encode('hi')).toEqual([1, 263]);
    expect(tok.encode('hi hi', { addSpecialTokens: false })).toEqual([263, 263]);
    expect(tok.decode([1, 263, 263], { skipSpecialTokens: true })).toBe('hi hi');
    expect(tok.encode('hé', { addSpecialTokens: false })).toEqual([262, 3 + 0xc3, 3 + 0xa9]);
    expect(tok.decode([262, 3 + 0xc3, 3 + 0xa9])).toBe('hé');
    expect([tok.addBosToken, tok.addEosToken]).toEqual([true, false]);
  });

  it('applies add_bos_token / add_eos_token from tokenizer_config.json', async () => {
    const eos = await loadHfTokenizer(
      await folder('eos', { 'tokenizer.json': smallTokenizerJson(), 'tokenizer_config.json': { add_bos_token: true, add_eos_token: true, bos_token: '<s>', eos_token: '</s>' } }),
    );
    expect(eos.encode('hi')).toEqual([1, 263, 2]);
    expect([eos.addBosToken, eos.addEosToken]).toEqual([true, true]);
    const none = await loadHfTokenizer(
      await folder('nobos', { 'tokenizer.json': smallTokenizerJson(), 'tokenizer_config.json': { add_bos_token: false, bos_token: '<s>' } }),
    );
    expect(none.encode('hi')).toEqual([263]);
    expect(none.addBosToken).toBe(false);
  });

  it('takes special token names from special_tokens_map.json and extra tokens from added_tokens.json', async () => {
    const tok = await loadHfTokenizer(
      await folder('added', {
        'tokenizer.json': smallTokenizerJson(),
        'special_tokens_map.json': { bos_token: { content: '<s>' }, eos_token: '</s>', unk_token: '<unk>', pad_token: '<pad>', additional_special_tokens: ['<pad>'] },
        'added_tokens.json': { '<image>': 264, '<pad>': 265 },
      }),
    );
    expect(tok.vocabSize).toBe(266);
    expect([tok.bosId, tok.eosId, tok.unkId, tok.padId]).toEqual([1, 2, 0, 265]);
    expect(tok.specialTokenId('<image>')).toBe(264);
    expect(tok.encode('hi<image>hi')).toEqual([1, 263, 264, 263]);
    expect(tok.isSpecial(265)).toBe(true);
    expect(tok.isSpecial(264)).toBe(false);
    expect(tok.decode([1, 263, 264, 265], { skipSpecialTokens: true })).toBe('hi<image>');
  });

  it('reports missing and malformed files', async () => {
    const missing = await rejects(loadHfTokenizer(await folder('empty', {})));
    expect(missing.code).toBe('ERR_FILE_NOT_FOUND');
    expect(missing.file).toBe(join(dir, 'empty', 'tokenizer.json'));
    expect(missing.message).toContain('tokenizer.json');

    const bad = await rejects(loadHfTokenizer(await folder('badjson', { 'tokenizer.json': '{"model": ' })));
    expect(bad.code).toBe('ERR_MALFORMED_FILE');
    expect(bad.file).toBe(join(dir, 'badjson', 'tokenizer.json'));

    const noModel = await rejects(loadHfTokenizer(await folder('nomodel', { 'tokenizer.json': { version: '1.0' } })));
    expect(noModel.code).toBe('ERR_MALFORMED_FILE');

    const badModel = await rejects(loadHfTokenizer(await folder('badmodel', { 'tokenizer.json': { ...smallTokenizerJson(), model: { type: 'BPE' } } })));
    expect(badModel.code).toBe('ERR_MALFORMED_FILE');

    const badConfig = await rejects(
      loadHfTokenizer(await folder('badconfig', { 'tokenizer.json': smallTokenizerJson(), 'tokenizer_config.json': '{oops' })),
    );
    expect(badConfig.code).toBe('ERR_MALFORMED_FILE');
    expect(badConfig.file).toBe(join(dir, 'badconfig', 'tokenizer_config.json'));

    expect((await rejects(loadTokenizer(join(dir, 'nope')))).code).toBe('ERR_FILE_NOT_FOUND');
    expect((await loadTokenizer(join(dir, 'plain', 'tokenizer.json'))).encode('hi')).toEqual([1, 263]);
    await writeFile(join(dir, 'vocab.txt'), 'x');
    expect((await rejects(loadTokenizer(join(dir, 'vocab.txt')))).code).toBe('ERR_UNSUPPORTED');
  });
});
