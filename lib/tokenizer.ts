/**
 * Tokenizers: one interface over Hugging Face `tokenizer.json` folders and GGUF vocabularies.
 *
 * - {@link loadTokenizer} opens either a model folder (Hugging Face files) or a `.gguf` file.
 * - {@link loadHfTokenizer} (folder with `tokenizer.json`, see `tokenizer_hf.ts`) uses the
 *   `@huggingface/tokenizers` library, configured from `tokenizer_config.json`,
 *   `special_tokens_map.json` and `added_tokens.json`.
 * - {@link loadTokenizerFromGguf} / {@link tokenizerFromGgufMetadata} build a tokenizer from GGUF
 *   metadata: `tokenizer.ggml.model = "llama"` is llama.cpp's SentencePiece-style tokenizer
 *   (`tokenizer_spm.ts`), `"gpt2"` a byte-level BPE (GPT-2 pre-tokenization only).
 *
 * Every tokenizer maps each id to the exact bytes it stands for ({@link Tokenizer.tokenToPiece}),
 * so generated text can be streamed with an {@link IncrementalDetokenizer}, which never emits a
 * partial UTF-8 character and whose output, concatenated, equals {@link Tokenizer.decode}.
 *
 * Failures are {@link EmollmError}s: `ERR_FILE_NOT_FOUND` (naming the missing file),
 * `ERR_MALFORMED_FILE` (unparseable or inconsistent tokenizer data), `ERR_UNSUPPORTED` (a
 * tokenizer kind emollm does not implement), `ERR_INVALID_ARGUMENT` (bad ids or options).
 */
import { stat } from 'node:fs/promises';
import { basename, join } from 'node:path';

import { EmollmError } from './errors.js';
import { inspectGguf } from './loaders.js';
import type { GgufValue } from './loaders.js';
import { hfTokenizerFromGgufMetadata, loadHfTokenizer } from './tokenizer_hf.js';
import { SpmTokenizer } from './tokenizer_spm.js';

export { loadHfTokenizer, HfTokenizer } from './tokenizer_hf.js';
export type { HfTokenizerFiles } from './tokenizer_hf.js';
export { SpmTokenizer, SpmTokenType } from './tokenizer_spm.js';
export type { SpmEncodeOptions, SpmVocab } from './tokenizer_spm.js';

/** Options of {@link Tokenizer.encode}. */
export interface EncodeOptions {
  /**
   * Add the model's special tokens around the text (BOS and/or EOS, as the tokenizer's
   * configuration says: `add_bos_token` / `add_eos_token`, the post-processor of
   * `tokenizer.json`, or GGUF `tokenizer.ggml.add_bos_token` / `add_eos_token`). Default true.
   */
  addSpecialTokens?: boolean;
}

/** Options of {@link Tokenizer.decode}, {@link Tokenizer.tokenToPiece} and detokenizers. */
export interface DecodeOptions {
  /**
   * Leave out special tokens (BOS, EOS, PAD, `<image>`, other control tokens). Default false:
   * they are rendered as their text (`"<s>"`), as Hugging Face's `decode` and llama.cpp's
   * `token_to_piece(special = true)` do.
   */
  skipSpecialTokens?: boolean;
}

/** Options of {@link IncrementalDetokenizer}. */
export interface DetokenizerOptions extends DecodeOptions {
  /**
   * Whether the first token pushed starts the text, as in {@link Tokenizer.decode}: the tokenizer's
   * leading-space removal (SentencePiece's dummy prefix `"▁"`) then applies to the first piece
   * that produces text. Default true. Pass false to stream a continuation of a prompt, where the
   * first generated token's leading space is real (`"▁time"` after `"Once upon a"`).
   */
  atStart?: boolean;
}

/** What kind of tokenizer this is. */
export type TokenizerKind = 'hf' | 'gguf-spm' | 'gguf-bpe';

/**
 * A tokenizer: text to token ids and back.
 *
 * Ids are vocabulary indices (0 ≤ id < {@link vocabSize}). Methods taking ids throw
 * `EmollmError('ERR_INVALID_ARGUMENT')` for an id outside the vocabulary.
 */
export interface Tokenizer {
  /** Where the vocabulary came from. */
  readonly kind: TokenizerKind;
  /**
   * Number of ids, added tokens included (llava-1.5: 32002). A model's embedding may be larger
   * (padded: llava-1.5 has 32064 rows).
   */
  readonly vocabSize: number;
  /** Beginning-of-sequence id, when the model has one. */
  readonly bosId: number | undefined;
  /** End-of-sequence id, when the model has one. */
  readonly eosId: number | undefined;
  /** Padding id, when the model has one. */
  readonly padId: number | undefined;
  /** Unknown-token id, when the model has one. */
  readonly unkId: number | undefined;
  /** The BOS token's text (`"<s>"`), for chat templates. */
  readonly bosToken: string | undefined;
  /** The EOS token's text (`"</s>"`), for chat templates. */
  readonly eosToken: string | undefined;
  /** Whether `encode` adds BOS when `addSpecialTokens` is true. */
  readonly addBosToken: boolean;
  /** Whether `encode` adds EOS when `addSpecialTokens` is true. */
  readonly addEosToken: boolean;

  /**
   * Text to ids. Special tokens written in the text (`"<image>"`, `"</s>"`) become their ids, as
   * Hugging Face tokenizers do.
   */
  encode(text: string, options?: EncodeOptions): number[];
  /**
   * Ids to text: the bytes of every piece, joined and read as UTF-8 (invalid sequences become
   * U+FFFD), less the tokenizer's leading space (SentencePiece dummy prefix) at the start.
   */
  decode(ids: readonly number[], options?: DecodeOptions): string;
  /**
   * The exact bytes one token stands for, with no leading-space removal: `"▁Hello"` → `" Hello"`,
   * byte tokens `<0xE2>` → the single byte 0xE2 (which alone is not valid UTF-8). Special tokens
   * give their text, or nothing with `skipSpecialTokens`.
   */
  tokenToPiece(id: number, options?: DecodeOptions): Uint8Array;
  /** The vocabulary string of an id (`"▁Hello"`, `"<0x0A>"`, `"<s>"`), or undefined. */
  idToToken(id: number): string | undefined;
  /** The id of a vocabulary string (any token, special or not), or undefined. */
  tokenToId(token: string): number | undefined;
  /**
   * The id of a special or added token by its text (`"<image>"` → 32000 in llava-1.5,
   * `"</s>"` → 2), or undefined when `token` is not one.
   */
  specialTokenId(token: string): number | undefined;
  /** Whether an id is a special (control) token, skipped by `skipSpecialTokens`. */
  isSpecial(id: number): boolean;
  /** A streaming detokenizer over this tokenizer. */
  createDetokenizer(options?: DetokenizerOptions): IncrementalDetokenizer;
}

/**
 * The per-token rendering a tokenizer gives {@link IncrementalDetokenizer} and its own `decode`.
 * @internal
 */
export interface PieceSource {
  tokenToPiece(id: number, options?: DecodeOptions): Uint8Array;
  /**
   * How many leading `' '` to remove from the first bytes of text (0 or 1): SentencePiece's dummy
   * prefix, Hugging Face's `Strip(" ", 1)` decoder.
   */
  readonly leadingSpacesToStrip: number;
  /**
   * The tokenizer's id count, when known. A model's output layer may be larger (padded:
   * llava-1.5 has 32064 rows for 32002 tokens), and a sampled id past the vocabulary has no text.
   */
  readonly vocabSize?: number;
}

const SPACE = 0x20;

/**
 * Streaming detokenization for generation: push ids one at a time and get back the text that
 * became complete. Bytes of a UTF-8 character split across byte-fallback tokens (`<0xF0>` `<0x9F>`
 * `<0x98>` `<0x81>` = 😁) are held until the character is complete. The concatenation of
 * everything {@link push} and {@link flush} return equals `tokenizer.decode(ids)` for the same ids
 * and options (with the default `atStart: true`).
 *
 * @example
 * ```ts
 * const detok = tokenizer.createDetokenizer({ skipSpecialTokens: true });
 * for await (const id of generate()) process.stdout.write(detok.push(id));
 * process.stdout.write(detok.flush());
 * ```
 */
export class IncrementalDetokenizer {
  private readonly source: PieceSource;
  private readonly options: DecodeOptions;
  private decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
  private stripLeft: number;

  constructor(source: PieceSource, options: DetokenizerOptions = {}) {
    this.source = source;
    this.options = { skipSpecialTokens: options.skipSpecialTokens ?? false };
    this.stripLeft = options.atStart === false ? 0 : source.leadingSpacesToStrip;
  }

  /** Adds one token; returns the text completed by it (possibly ""). */
  push(id: number): string {
    // A generated id in the padding rows of the model's output layer renders as "", as Hugging
    // Face's decode skips an id without a token; tokenizer.decode() itself stays strict.
    const vocab = this.source.vocabSize;
    if (vocab !== undefined && Number.isInteger(id) && id >= vocab) return '';
    let bytes = this.source.tokenToPiece(id, this.options);
    if (bytes.length === 0) return '';
    if (this.stripLeft > 0) {
      let k = 0;
      while (k < this.stripLeft && k < bytes.length && bytes[k] === SPACE) k++;
      bytes = bytes.subarray(k);
      this.stripLeft = 0;
    }
    return this.decoder.decode(bytes, { stream: true });
  }

  /** Adds several tokens; returns the text completed by them. */
  pushAll(ids: Iterable<number>): string {
    let s = '';
    for (const id of ids) s += this.push(id);
    return s;
  }

  /**
   * Ends the stream: returns what is left (U+FFFD for an incomplete trailing character) and
   * resets the detokenizer for a new, continuing stream (no leading-space removal).
   */
  flush(): string {
    const rest = this.decoder.decode();
    this.decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
    return rest;
  }
}

/**
 * `decode` for tokenizers that render token by token: exactly what an
 * {@link IncrementalDetokenizer} streams.
 * @internal
 */
export function decodePieces(source: PieceSource, ids: readonly number[], options: DecodeOptions = {}): string {
  // decode() is strict about ids past the vocabulary (the streaming detokenizer is not).
  if (source.vocabSize !== undefined) for (const id of ids) checkId(id, source.vocabSize);
  const detok = new IncrementalDetokenizer(source, options);
  let s = '';
  for (const id of ids) s += detok.push(id);
  return s + detok.flush();
}

/** Checks that `id` is an integer vocabulary index. @internal */
export function checkId(id: number, vocabSize: number): void {
  if (!Number.isInteger(id) || id < 0 || id >= vocabSize)
    throw new EmollmError('ERR_INVALID_ARGUMENT', `token id ${String(id)} is outside the vocabulary (0..${vocabSize - 1})`);
}

/** A GGUF metadata object (as `inspectGguf(path).metadata` returns it). */
export type GgufMetadata = Record<string, GgufValue | undefined>;

/**
 * Builds a tokenizer from GGUF metadata (`tokenizer.ggml.*` keys). `tokenizer.ggml.model`
 * `"llama"` gives an {@link SpmTokenizer} (llama.cpp's SPM tokenizer); `"gpt2"` with
 * `tokenizer.ggml.pre` `"gpt-2"` (or absent/`"default"`) a byte-level BPE tokenizer. Other
 * models throw `ERR_UNSUPPORTED`; missing or inconsistent keys `ERR_MALFORMED_FILE`.
 *
 * @param file Named in errors.
 */
export function tokenizerFromGgufMetadata(meta: GgufMetadata, file?: string): Tokenizer {
  const model = meta['tokenizer.ggml.model'];
  if (model === undefined)
    throw new EmollmError('ERR_MALFORMED_FILE', `${file ?? 'GGUF metadata'}: no tokenizer.ggml.model key (no vocabulary)`, {
      file,
    });
  if (model === 'llama') return SpmTokenizer.fromGgufMetadata(meta, file);
  if (model === 'gpt2') return hfTokenizerFromGgufMetadata(meta, file);
  throw new EmollmError(
    'ERR_UNSUPPORTED',
    `${file ?? 'GGUF metadata'}: tokenizer.ggml.model ${JSON.stringify(model)} is not supported (supported: "llama", "gpt2")`,
    { file },
  );
}

/** Reads a GGUF file's metadata with the native loader and builds its tokenizer. */
export async function loadTokenizerFromGguf(path: string): Promise<Tokenizer> {
  const info = await inspectGguf(path);
  return tokenizerFromGgufMetadata(info.metadata, path);
}

/**
 * Opens a tokenizer: a `.gguf` file, a `tokenizer.json` file, or a model folder holding
 * `tokenizer.json` (with its `tokenizer_config.json` etc.).
 */
export async function loadTokenizer(path: string): Promise<Tokenizer> {
  if (typeof path !== 'string' || path.length === 0)
    throw new EmollmError('ERR_INVALID_ARGUMENT', 'path must be a non-empty string');
  let isDir: boolean;
  try {
    isDir = (await stat(path)).isDirectory();
  } catch (cause) {
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${path}: no such file or folder`, { file: path, cause });
  }
  if (isDir) return loadHfTokenizer(path);
  if (basename(path) === 'tokenizer.json') return loadHfTokenizer(join(path, '..'));
  if (path.toLowerCase().endsWith('.gguf')) return loadTokenizerFromGguf(path);
  throw new EmollmError(
    'ERR_UNSUPPORTED',
    `${path}: expected a .gguf file, a tokenizer.json or a folder holding tokenizer.json`,
    { file: path },
  );
}
