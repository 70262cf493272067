/**
 * llama.cpp's SentencePiece-style tokenizer (`llm_tokenizer_spm`, vocabulary type SPM), built from
 * GGUF metadata (`tokenizer.ggml.model = "llama"`): LLaMA, LLaMA-2, Vicuna, LLaVA-1.5,
 * TinyStories (llama2.c) vocabularies.
 *
 * Encoding, as llama.cpp does it:
 * 1. Special-token partition: the text is cut at every occurrence of a user-defined token (always)
 *    and of control/unknown tokens (when `parseSpecialTokens`, the default), longest tokens first;
 *    those pieces become their ids directly.
 * 2. Each remaining text fragment gets a leading space when `add_space_prefix` is on and it starts
 *    the text or follows a special token; spaces become `"▁"`.
 * 3. The fragment is split into UTF-8 characters, and adjacent symbols are merged greedily: the
 *    pair whose concatenation is a vocabulary token with the highest score first, left-most on
 *    ties (a priority queue of bigrams).
 * 4. Each final symbol is emitted as its token, or split back along the merges that built it, or
 *    as `<0xNN>` byte tokens (byte fallback).
 *
 * Decoding: `"▁"` → `" "`, byte tokens → their byte, user-defined tokens verbatim, control and
 * unknown tokens as their text (or nothing with `skipSpecialTokens`), unused/undefined tokens as
 * nothing; with `add_space_prefix`, one leading space of the first piece producing text is
 * removed (SentencePiece's rule). Note: llama.cpp's `llama_detokenize` does not strip it when the
 * sequence starts with BOS (it counts BOS as the first piece); emollm follows SentencePiece and
 * Hugging Face here, so `decode(encode(text))` gives back `text` with or without BOS.
 */
import { EmollmError } from './errors.js';
import type { GgufValue } from './loaders.js';
import { IncrementalDetokenizer, checkId, decodePieces } from './tokenizer.js';
import type {
  DecodeOptions,
  DetokenizerOptions,
  EncodeOptions,
  GgufMetadata,
  PieceSource,
  Tokenizer,
} from './tokenizer.js';

/** GGUF / llama.cpp token types (`tokenizer.ggml.token_type`). */
export const SpmTokenType = {
  UNDEFINED: 0,
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;

/** Encode options of the SPM tokenizer. */
export interface SpmEncodeOptions extends EncodeOptions {
  /**
   * Recognise control and unknown tokens written in the text (`"<s>"`, `"</s>"`), like llama.cpp's
   * `parse_special = true` and Hugging Face tokenizers. Default true. With false (llama.cpp's
   * default in `test-tokenizer-0`) only user-defined tokens are matched; the rest is plain text.
   */
  parseSpecialTokens?: boolean;
}

/** An SPM vocabulary: what GGUF's `tokenizer.ggml.*` keys hold. */
export interface SpmVocab {
  /** Token strings, `"▁"` for spaces, `"<0xNN>"` byte tokens. */
  tokens: readonly string[];
  /** Merge priorities (higher merges first). Default all 0. */
  scores?: ArrayLike<number>;
  /** {@link SpmTokenType} per token. Default all NORMAL. */
  tokenTypes?: ArrayLike<number>;
  bosId?: number;
  eosId?: number;
  unkId?: number;
  padId?: number;
  /** Default true (llama.cpp's default for SPM). */
  addBosToken?: boolean;
  /** Default false. */
  addEosToken?: boolean;
  /** Default true. */
  addSpacePrefix?: boolean;
}

const SPACE_ESCAPE = '\u2581';
const utf8 = new TextEncoder();
const EMPTY = new Uint8Array(0);
const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

interface Symbol {
  start: number; // code-unit offset in the fragment
  len: number; // code units; 0 once merged away
  prev: number;
  next: number;
}

interface Bigram {
  left: number;
  right: number;
  score: number;
  size: number; // code units of left+right when queued
}

/** llama.cpp's comparator: highest score first, then the left-most pair. */
function before(a: Bigram, b: Bigram): boolean {
  return a.score > b.score || (a.score === b.score && a.left < b.left);
}

/** A binary max-heap of bigrams in llama.cpp's order. */
class BigramQueue {
  private readonly heap: Bigram[] = [];
  get size(): number {
    return this.heap.length;
  }
  push(b: Bigram): void {
    const h = this.heap;
    h.push(b);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!before(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }
  pop(): Bigram {
    const h = this.heap;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && before(h[l]!, h[m]!)) m = l;
        if (r < h.length && before(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
}

function toInt(v: GgufValue | undefined): number | undefined {
  if (typeof v === 'number') return v;
  if (typeof v === 'bigint') return Number(v);
  return undefined;
}

/**
 * llama.cpp's SPM tokenizer. Build it with {@link SpmTokenizer.fromGgufMetadata} (or
 * `loadTokenizerFromGguf(path)` in `tokenizer.ts`) or from an {@link SpmVocab}.
 */
export class SpmTokenizer implements Tokenizer, PieceSource {
  readonly kind = 'gguf-spm' as const;
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  readonly padId: number | undefined;
  readonly unkId: number | undefined;
  readonly addBosToken: boolean;
  readonly addEosToken: boolean;
  /** Whether a space is put before the text (SentencePiece's dummy prefix). */
  readonly addSpacePrefix: boolean;
  readonly leadingSpacesToStrip: number;

  private readonly tokens: readonly string[];
  private readonly scores: Float32Array;
  private readonly types: Uint8Array;
  private readonly ids = new Map<string, number>();
  /** Control, user-defined and unknown tokens, longest text first (llama.cpp's cache_special_tokens). */
  private readonly specialCache: number[];
  private readonly byteIds = new Int32Array(256).fill(-1);
  private readonly pieces: (Uint8Array | undefined)[];

  constructor(vocab: SpmVocab) {
    const n = vocab.tokens.length;
    if (n === 0) throw new EmollmError('ERR_INVALID_ARGUMENT', 'SPM vocabulary is empty');
    this.vocabSize = n;
    this.tokens = vocab.tokens;
    this.scores = new Float32Array(n);
    this.types = new Uint8Array(n).fill(SpmTokenType.NORMAL);
    if (vocab.scores) {
      if (vocab.scores.length < n) throw new EmollmError('ERR_INVALID_ARGUMENT', `SPM vocabulary: ${vocab.scores.length} scores for ${n} tokens`);
      for (let i = 0; i < n; i++) this.scores[i] = vocab.scores[i]!;
    }
    if (vocab.tokenTypes) {
      if (vocab.tokenTypes.length < n)
        throw new EmollmError('ERR_INVALID_ARGUMENT', `SPM vocabulary: ${vocab.tokenTypes.length} token types for ${n} tokens`);
      for (let i = 0; i < n; i++) {
        const t = vocab.tokenTypes[i]!;
        this.types[i] = t >= 0 && t <= 6 ? t : SpmTokenType.UNDEFINED;
      }
    }
    for (let i = 0; i < n; i++) {
      let text = vocab.tokens[i]!;
      if (typeof text !== 'string') throw new EmollmError('ERR_INVALID_ARGUMENT', `SPM vocabulary: token ${i} is not a string`);
      if (text.length === 0) text = `[EMPTY_${i}]`; // as llama.cpp
      if (this.ids.has(text))
        throw new EmollmError('ERR_INVALID_ARGUMENT', `SPM vocabulary: duplicate token ${JSON.stringify(text)} (ids ${this.ids.get(text)} and ${i})`);
      this.ids.set(text, i);
      if (this.types[i] === SpmTokenType.BYTE) {
        const m = BYTE_TOKEN.exec(text);
        if (m) this.byteIds[parseInt(m[1]!, 16)] = i;
      }
    }
    // llama.cpp's byte_to_token: "<0xNN>" first, else the one-byte token.
    for (let b = 0; b < 256; b++) {
      if (this.byteIds[b]! >= 0) continue;
      const hex = `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`;
      const id = this.ids.get(hex) ?? (b < 0x80 ? this.ids.get(String.fromCharCode(b)) : undefined);
      if (id !== undefined) this.byteIds[b] = id;
    }
    const valid = (id: number | undefined): number | undefined =>
      id !== undefined && Number.isInteger(id) && id >= 0 && id < n ? id : undefined;
    // llama.cpp's defaults for SPM: bos 1, eos 2, unk 0, no pad.
    this.bosId = valid(vocab.bosId ?? 1);
    this.eosId = valid(vocab.eosId ?? 2);
    this.unkId = valid(vocab.unkId ?? 0);
    this.padId = valid(vocab.padId);
    this.addBosToken = vocab.addBosToken ?? true;
    this.addEosToken = vocab.addEosToken ?? false;
    if (this.addBosToken && this.bosId === undefined)
      throw new EmollmError('ERR_INVALID_ARGUMENT', 'SPM vocabulary: add_bos_token is true but there is no BOS token');
    if (this.addEosToken && this.eosId === undefined)
      throw new EmollmError('ERR_INVALID_ARGUMENT', 'SPM vocabulary: add_eos_token is true but there is no EOS token');
    this.addSpacePrefix = vocab.addSpacePrefix ?? true;
    this.leadingSpacesToStrip = this.addSpacePrefix ? 1 : 0;

    const special: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = this.types[i];
      if (t === SpmTokenType.CONTROL || t === SpmTokenType.USER_DEFINED || t === SpmTokenType.UNKNOWN) special.push(i);
    }
    // Longest by UTF-8 bytes, as llama.cpp compares std::string sizes.
    const bytes = new Map(special.map((i) => [i, utf8.encode(this.tokens[i]!).length]));
    special.sort((a, b) => bytes.get(b)! - bytes.get(a)! || a - b);
    this.specialCache = special;
    this.pieces = new Array<Uint8Array | undefined>(n);
  }

  /**
   * Builds the tokenizer from GGUF metadata: `tokenizer.ggml.tokens`, `.scores`, `.token_type`,
   * `.bos_token_id`, `.eos_token_id`, `.unknown_token_id`, `.padding_token_id`, `.add_bos_token`,
   * `.add_eos_token`, `.add_space_prefix`. Special ids outside the vocabulary (e.g. 0xFFFFFFFF,
   * "none") are ignored, as llama.cpp does.
   *
   * @param file Named in errors.
   */
  static fromGgufMetadata(meta: GgufMetadata, file?: string): SpmTokenizer {
    const where = file ?? 'GGUF metadata';
    const bad = (msg: string): EmollmError => new EmollmError('ERR_MALFORMED_FILE', `${where}: ${msg}`, { file });
    const model = meta['tokenizer.ggml.model'];
    if (model !== 'llama')
      throw new EmollmError('ERR_UNSUPPORTED', `${where}: tokenizer.ggml.model is ${JSON.stringify(model)}, not "llama" (SPM)`, { file });
    const tokens = meta['tokenizer.ggml.tokens'];
    if (!Array.isArray(tokens) || tokens.length === 0 || !tokens.every((t) => typeof t === 'string'))
      throw bad('tokenizer.ggml.tokens is missing or not an array of strings');
    const numArray = (key: string): number[] | undefined => {
      const v = meta[key];
      if (v === undefined) return undefined;
      if (!Array.isArray(v)) throw bad(`${key} is not an array`);
      const out = v.map((x) => toInt(x));
      if (out.some((x) => x === undefined || Number.isNaN(x))) throw bad(`${key} holds non-numbers`);
      if (out.length < tokens.length) throw bad(`${key} has ${out.length} entries for ${tokens.length} tokens`);
      return out as number[];
    };
    const scores = numArray('tokenizer.ggml.scores');
    const tokenTypes = numArray('tokenizer.ggml.token_type');
    const bool = (key: string): boolean | undefined => {
      const v = meta[key];
      if (v === undefined) return undefined;
      if (typeof v !== 'boolean') throw bad(`${key} is not a bool`);
      return v;
    };
    const id = (key: string): number | undefined => {
      const v = meta[key];
      if (v === undefined) return undefined;
      const x = toInt(v);
      if (x === undefined) throw bad(`${key} is not an integer`);
      return x;
    };
    const n = tokens.length;
    // An id key present but out of range keeps llama.cpp's default (bos 1, eos 2, unk 0), else none.
    const special = (key: string, dflt: number | undefined): number | undefined => {
      const x = id(key);
      if (x !== undefined && x >= 0 && x < n) return x;
      return dflt !== undefined && dflt < n ? dflt : undefined;
    };
    try {
      return new SpmTokenizer({
        tokens: tokens as string[],
        scores,
        tokenTypes,
        bosId: special('tokenizer.ggml.bos_token_id', 1) ?? -1,
        eosId: special('tokenizer.ggml.eos_token_id', 2) ?? -1,
        unkId: special('tokenizer.ggml.unknown_token_id', 0) ?? -1,
        padId: special('tokenizer.ggml.padding_token_id', undefined),
        addBosToken: bool('tokenizer.ggml.add_bos_token'),
        addEosToken: bool('tokenizer.ggml.add_eos_token'),
        addSpacePrefix: bool('tokenizer.ggml.add_space_prefix'),
      });
    } catch (e) {
      if (e instanceof EmollmError && e.code === 'ERR_INVALID_ARGUMENT') throw bad(e.message);
      throw e;
    }
  }

  /**
   * Builds the tokenizer from a llama2.c `tokenizer.bin` (`tok512.bin`, LLaMA's `tokenizer.bin`):
   * int32 max_token_length, then per token float32 score, int32 length, bytes. llama2.c stores
   * spaces as `' '` and BOS/EOS as `"\n<s>\n"` / `"\n</s>\n"`; they are mapped back to `"▁"`,
   * `"<s>"`, `"</s>"`. Token types are inferred the way llama.cpp's
   * `convert-llama2c-to-ggml` does: id 0 unknown, 1 and 2 control (BOS, EOS), `<0xNN>` byte,
   * the rest normal. The file does not store the vocabulary size: every entry is read.
   */
  static fromLlama2cVocab(bytes: Uint8Array, file?: string): SpmTokenizer {
    const where = file ?? 'llama2.c tokenizer';
    const bad = (msg: string): EmollmError => new EmollmError('ERR_MALFORMED_FILE', `${where}: ${msg}`, { file });
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (bytes.length < 4) throw bad('too short');
    const maxLen = view.getInt32(0, true);
    const dec = new TextDecoder('utf-8', { fatal: false });
    const tokens: string[] = [];
    const scores: number[] = [];
    const types: number[] = [];
    let o = 4;
    while (o < bytes.length) {
      if (o + 8 > bytes.length) throw bad(`truncated entry ${tokens.length} at byte ${o}`);
      const score = view.getFloat32(o, true);
      const len = view.getInt32(o + 4, true);
      o += 8;
      if (len < 0 || len > maxLen || o + len > bytes.length) throw bad(`entry ${tokens.length} has a bad length ${len}`);
      let text = dec.decode(bytes.subarray(o, o + len));
      o += len;
      const id = tokens.length;
      if (id === 1 || id === 2) text = text.trim();
      text = text.replaceAll(' ', SPACE_ESCAPE);
      tokens.push(text);
      scores.push(score);
      types.push(
        id === 0 ? SpmTokenType.UNKNOWN : id <= 2 ? SpmTokenType.CONTROL : BYTE_TOKEN.test(text) ? SpmTokenType.BYTE : SpmTokenType.NORMAL,
      );
    }
    if (tokens.length < 3) throw bad(`only ${tokens.length} tokens`);
    try {
      return new SpmTokenizer({ tokens, scores, tokenTypes: types, bosId: 1, eosId: 2, unkId: 0 });
    } catch (e) {
      if (e instanceof EmollmError && e.code === 'ERR_INVALID_ARGUMENT') throw bad(e.message);
      throw e;
    }
  }

  /** The {@link SpmTokenType} of an id. */
  tokenType(id: number): number {
    checkId(id, this.vocabSize);
    return this.types[id]!;
  }

  /** The merge score of an id. */
  score(id: number): number {
    checkId(id, this.vocabSize);
    return this.scores[id]!;
  }

  get bosToken(): string | undefined {
    return this.bosId === undefined ? undefined : this.tokens[this.bosId];
  }

  get eosToken(): string | undefined {
    return this.eosId === undefined ? undefined : this.tokens[this.eosId];
  }

  encode(text: string, options: SpmEncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new EmollmError('ERR_INVALID_ARGUMENT', 'text must be a string');
    const addSpecial = options.addSpecialTokens ?? true;
    const parseSpecial = options.parseSpecialTokens ?? true;
    const raw = text.replace(LONE_SURROGATE, '\uFFFD');
    const output: number[] = [];
    if (addSpecial && this.addBosToken) output.push(this.bosId!);
    let prevSpecial = true; // the first fragment gets the space prefix
    for (const frag of this.partition(raw, parseSpecial)) {
      if (typeof frag === 'number') {
        output.push(frag);
        prevSpecial = true;
      } else {
        let s = this.addSpacePrefix && prevSpecial ? ' ' + frag : frag;
        s = s.replaceAll(' ', SPACE_ESCAPE);
        this.tokenizeFragment(s, output);
        prevSpecial = false;
      }
    }
    if (addSpecial && this.addEosToken) output.push(this.eosId!);
    return output;
  }

  /** llama.cpp's tokenizer_st_partition: text fragments and special-token ids, in order. */
  private partition(text: string, parseSpecial: boolean): (string | number)[] {
    let frags: (string | number)[] = text.length > 0 ? [text] : [];
    for (const id of this.specialCache) {
      const t = this.types[id];
      if (!parseSpecial && (t === SpmTokenType.CONTROL || t === SpmTokenType.UNKNOWN)) continue;
      const needle = this.tokens[id]!;
      if (needle.length === 0) continue;
      let changed = false;
      const next: (string | number)[] = [];
      for (const f of frags) {
        if (typeof f === 'number' || !f.includes(needle)) {
          next.push(f);
          continue;
        }
        changed = true;
        const parts = f.split(needle);
        parts.forEach((p, k) => {
          if (k > 0) next.push(id);
          if (p.length > 0) next.push(p);
        });
      }
      if (changed) frags = next;
    }
    return frags;
  }

  /** llm_tokenizer_spm_session::tokenize on one escaped fragment. */
  private tokenizeFragment(text: string, output: number[]): void {
    if (text.length === 0) return;
    const symbols: Symbol[] = [];
    for (let offs = 0; offs < text.length; ) {
      const len = (text.codePointAt(offs) ?? 0) > 0xffff ? 2 : 1;
      const index = symbols.length;
      symbols.push({ start: offs, len, prev: index - 1, next: offs + len >= text.length ? -1 : index + 1 });
      offs += len;
    }
    const queue = new BigramQueue();
    const revMerge = new Map<string, [number, number]>();
    const tryAddBigram = (left: number, right: number): void => {
      if (left === -1 || right === -1) return;
      const l = symbols[left]!;
      const r = symbols[right]!;
      const s = text.substr(l.start, l.len + r.len);
      const id = this.ids.get(s);
      if (id === undefined) return;
      queue.push({ left, right, score: this.scores[id]!, size: l.len + r.len });
      revMerge.set(s, [left, right]);
    };
    for (let i = 1; i < symbols.length; i++) tryAddBigram(i - 1, i);
    while (queue.size > 0) {
      const bigram = queue.pop();
      const left = symbols[bigram.left]!;
      const right = symbols[bigram.right]!;
      if (left.len === 0 || right.len === 0 || left.len + right.len !== bigram.size) continue;
      left.len += right.len;
      right.len = 0;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next]!.prev = bigram.left;
      tryAddBigram(left.prev, bigram.left);
      tryAddBigram(bigram.left, left.next);
    }
    const resegment = (sym: Symbol): void => {
      const s = text.substr(sym.start, sym.len);
      const id = this.ids.get(s);
      if (id !== undefined) {
        output.push(id);
        return;
      }
      const p = revMerge.get(s);
      if (p === undefined) {
        for (const b of utf8.encode(s)) output.push(this.byteToToken(b));
        return;
      }
      resegment(symbols[p[0]]!);
      resegment(symbols[p[1]]!);
    };
    for (let i = 0; i !== -1; i = symbols[i]!.next) resegment(symbols[i]!);
  }

  private byteToToken(b: number): number {
    const id = this.byteIds[b]!;
    if (id >= 0) return id;
    if (this.unkId !== undefined) return this.unkId;
    throw new EmollmError('ERR_UNSUPPORTED', `SPM vocabulary has no token for byte 0x${b.toString(16)} and no unknown token`);
  }

  tokenToPiece(id: number, options: DecodeOptions = {}): Uint8Array {
    checkId(id, this.vocabSize);
    const t = this.types[id];
    if (t === SpmTokenType.CONTROL || t === SpmTokenType.UNKNOWN) {
      return options.skipSpecialTokens ? EMPTY : this.piece(id);
    }
    return this.piece(id);
  }

  /** llama.cpp token_to_piece with special = true, cached. */
  private piece(id: number): Uint8Array {
    let p = this.pieces[id];
    if (p !== undefined) return p;
    const text = this.tokens[id]!;
    switch (this.types[id]) {
      case SpmTokenType.CONTROL:
      case SpmTokenType.UNKNOWN:
      case SpmTokenType.USER_DEFINED:
        p = utf8.encode(text);
        break;
      case SpmTokenType.NORMAL:
        p = utf8.encode(text.replaceAll(SPACE_ESCAPE, ' '));
        break;
      case SpmTokenType.BYTE: {
        const m = BYTE_TOKEN.exec(text);
        p = m ? Uint8Array.of(parseInt(m[1]!, 16)) : EMPTY;
        break;
      }
      default: // UNUSED, UNDEFINED: nothing, as llama.cpp
        p = EMPTY;
    }
    this.pieces[id] = p;
    return p;
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    return decodePieces(this, ids, options);
  }

  idToToken(id: number): string | undefined {
    return Number.isInteger(id) && id >= 0 && id < this.vocabSize ? this.tokens[id] : undefined;
  }

  tokenToId(token: string): number | undefined {
    return this.ids.get(token);
  }

  specialTokenId(token: string): number | undefined {
    const id = this.ids.get(token);
    if (id === undefined) return undefined;
    const t = this.types[id];
    return t === SpmTokenType.CONTROL || t === SpmTokenType.USER_DEFINED || t === SpmTokenType.UNKNOWN ? id : undefined;
  }

  isSpecial(id: number): boolean {
    checkId(id, this.vocabSize);
    const t = this.types[id];
    return t === SpmTokenType.CONTROL || t === SpmTokenType.UNKNOWN;
  }

  createDetokenizer(options: DetokenizerOptions = {}): IncrementalDetokenizer {
    return new IncrementalDetokenizer(this, options);
  }
}
