/**
 * Hugging Face tokenizers (`tokenizer.json`), run by the `@huggingface/tokenizers` library (pure
 * JavaScript port of the Rust `tokenizers` crate) and configured the way transformers configures
 * them from a model folder:
 *
 * - `tokenizer.json` (required): normalizer, pre-tokenizer, model (BPE / Unigram / WordPiece),
 *   post-processor, decoder, added tokens.
 * - `tokenizer_config.json` (optional): `bos_token`, `eos_token`, `unk_token`, `pad_token`,
 *   `add_bos_token` / `add_eos_token` (when set, they replace a `TemplateProcessing` post-processor
 *   the way transformers' `LlamaTokenizerFast.update_post_processor` does),
 *   `added_tokens_decoder`, `additional_special_tokens`, `clean_up_tokenization_spaces`,
 *   `legacy` (kept in {@link HfTokenizer.legacy}; it changes only the slow SentencePiece tokenizer
 *   of transformers, never `tokenizer.json`, so encoding ignores it).
 * - `special_tokens_map.json` (optional): special token names missing from tokenizer_config.json.
 * - `added_tokens.json` (optional): `{ "<image>": 32000 }`, added when tokenizer.json lacks them.
 *
 * Decoding renders each token to bytes from the `decoder` of tokenizer.json (Replace,
 * ByteFallback, Fuse, Strip, Metaspace, ByteLevel and Sequences of them), so `decode` and
 * streaming agree byte for byte; other decoders (WordPiece, BPE suffix, CTC) fall back to the
 * library's `decode` for whole sequences.
 */
import { join } from 'node:path';

import { Tokenizer as HfLibTokenizer } from '@huggingface/tokenizers';

import { EmollmError } from './errors.js';
import { DEFAULT_MAX_JSON_BYTES } from './limits.js';
import { readRegularTextFile } from './safe_fs.js';
import { IncrementalDetokenizer, checkId, decodePieces } from './tokenizer.js';
import type {
  DecodeOptions,
  DetokenizerOptions,
  EncodeOptions,
  GgufMetadata,
  PieceSource,
  Tokenizer,
} from './tokenizer.js';

type Json = Record<string, unknown>;

/** The parsed files of a Hugging Face tokenizer folder. */
export interface HfTokenizerFiles {
  /** tokenizer.json. */
  tokenizer: unknown;
  /** tokenizer_config.json. */
  tokenizerConfig?: unknown;
  /** special_tokens_map.json. */
  specialTokensMap?: unknown;
  /** added_tokens.json. */
  addedTokens?: unknown;
  /** Named in errors (the folder or tokenizer.json). */
  source?: string;
}

const utf8 = new TextEncoder();
const EMPTY = new Uint8Array(0);
const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A special-token entry: `"<s>"` or `{ content: "<s>", ... }`. */
function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  return undefined;
}

/** GPT-2's byte ↔ printable-character table (`bytes_to_unicode`). */
function byteLevelCharToByte(): Map<string, number> {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  return new Map(bs.map((b, i) => [String.fromCharCode(cs[i]!), b]));
}

let byteLevelTable: Map<string, number> | undefined;

/** One per-token step of a tokenizer.json decoder. */
type DecodeStep =
  | { kind: 'replace'; from: string; to: string }
  | { kind: 'byteFallback' }
  | { kind: 'byteLevel' }
  | { kind: 'strip'; content: string; start: number; stop: number };

/** The decoder of tokenizer.json as per-token steps plus a leading strip, or null if unsupported. */
interface DecodePlan {
  steps: DecodeStep[];
  leadingSpaces: number;
}

function planDecoder(decoder: unknown): DecodePlan | null {
  if (!isObject(decoder)) return null;
  const list = decoder.type === 'Sequence' ? decoder.decoders : [decoder];
  if (!Array.isArray(list)) return null;
  const plan: DecodePlan = { steps: [], leadingSpaces: 0 };
  let fused = false;
  for (const d of list) {
    if (!isObject(d)) return null;
    switch (d.type) {
      case 'Replace': {
        const pattern = d.pattern;
        if (!isObject(pattern) || typeof pattern.String !== 'string' || typeof d.content !== 'string') return null;
        plan.steps.push({ kind: 'replace', from: pattern.String, to: d.content });
        break;
      }
      case 'ByteFallback':
        plan.steps.push({ kind: 'byteFallback' });
        break;
      case 'ByteLevel':
        plan.steps.push({ kind: 'byteLevel' });
        break;
      case 'Fuse':
        fused = true;
        break;
      case 'Strip': {
        const content = typeof d.content === 'string' ? d.content : ' ';
        const start = typeof d.start === 'number' ? d.start : 0;
        const stop = typeof d.stop === 'number' ? d.stop : 0;
        if (fused) {
          // After Fuse the whole text is one token: only a leading strip of spaces can stream.
          if (stop !== 0 || (start > 0 && content !== ' ')) return null;
          plan.leadingSpaces += start;
        } else {
          plan.steps.push({ kind: 'strip', content, start, stop });
        }
        break;
      }
      case 'Metaspace': {
        const replacement = typeof d.replacement === 'string' ? d.replacement : '\u2581';
        plan.steps.push({ kind: 'replace', from: replacement, to: ' ' });
        if (d.prepend_scheme !== 'never' && d.add_prefix_space !== false) plan.leadingSpaces += 1;
        break;
      }
      default:
        return null;
    }
  }
  if (plan.leadingSpaces > 1) return null;
  return plan;
}

/** Renders one token string to bytes with the plan's per-token steps. */
function renderToken(token: string, steps: readonly DecodeStep[]): Uint8Array {
  let text: string | null = token;
  let bytes: Uint8Array | null = null;
  for (const step of steps) {
    if (text === null) break; // already bytes: later text steps do not apply
    switch (step.kind) {
      case 'replace':
        text = text.replaceAll(step.from, step.to);
        break;
      case 'byteFallback': {
        const m = BYTE_TOKEN.exec(text);
        if (m) {
          bytes = Uint8Array.of(parseInt(m[1]!, 16));
          text = null;
        }
        break;
      }
      case 'byteLevel': {
        byteLevelTable ??= byteLevelCharToByte();
        const out: number[] = [];
        let ok = true;
        for (const c of text) {
          const b = byteLevelTable.get(c);
          if (b === undefined) {
            ok = false;
            break;
          }
          out.push(b);
        }
        bytes = ok ? Uint8Array.from(out) : utf8.encode(text);
        text = null;
        break;
      }
      case 'strip': {
        const chars: string[] = Array.from(text);
        let a = 0;
        while (a < step.start && a < chars.length && chars[a] === step.content) a++;
        let b = chars.length;
        while (chars.length - b < step.stop && b > a && chars[b - 1] === step.content) b--;
        text = chars.slice(a, b).join('');
        break;
      }
    }
  }
  return text !== null ? utf8.encode(text) : bytes!;
}

/** transformers' `clean_up_tokenization`. */
function cleanUpTokenization(s: string): string {
  return s
    .replaceAll(' .', '.')
    .replaceAll(' ?', '?')
    .replaceAll(' !', '!')
    .replaceAll(' ,', ',')
    .replaceAll(" ' ", "'")
    .replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m")
    .replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

/** A Hugging Face `tokenizer.json` tokenizer. Build it with {@link loadHfTokenizer} or {@link HfTokenizer.fromFiles}. */
export class HfTokenizer implements Tokenizer, PieceSource {
  readonly kind: 'hf' | 'gguf-bpe';
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  readonly padId: number | undefined;
  readonly unkId: number | undefined;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  readonly addBosToken: boolean;
  readonly addEosToken: boolean;
  /** tokenizer_config.json `legacy` (informational: it only affects transformers' slow tokenizer). */
  readonly legacy: boolean | undefined;
  /** Whether `decode` applies transformers' `clean_up_tokenization` (streaming does not). */
  readonly cleanUpTokenizationSpaces: boolean;
  /** The `model.type` of tokenizer.json (`"BPE"`, `"Unigram"`, `"WordPiece"`). */
  readonly modelType: string;
  readonly leadingSpacesToStrip: number;

  private readonly lib: HfLibTokenizer;
  private readonly plan: DecodePlan | null;
  private readonly special = new Set<number>();
  private readonly added = new Map<string, number>();
  private readonly pieces: (Uint8Array | undefined)[];

  private constructor(files: HfTokenizerFiles, kind: 'hf' | 'gguf-bpe', cleanUpDefault: boolean) {
    const where = files.source ?? 'tokenizer.json';
    const malformed = (msg: string, cause?: unknown): EmollmError =>
      new EmollmError('ERR_MALFORMED_FILE', `${where}: ${msg}`, { file: files.source, cause });
    if (!isObject(files.tokenizer)) throw malformed('tokenizer.json is not a JSON object');
    const tj: Json = { ...files.tokenizer };
    if (!isObject(tj.model)) throw malformed('tokenizer.json has no "model" object');
    const config: Json = isObject(files.tokenizerConfig) ? { ...files.tokenizerConfig } : {};
    const stm: Json = isObject(files.specialTokensMap) ? files.specialTokensMap : {};

    // Special-token names: tokenizer_config.json first, then special_tokens_map.json.
    const name = (key: string): string | undefined => tokenContent(config[key]) ?? tokenContent(stm[key]);
    const names = {
      bos: name('bos_token'),
      eos: name('eos_token'),
      unk: name('unk_token'),
      pad: name('pad_token'),
    };
    // Without names, BOS/EOS are the special tokens a TemplateProcessing puts around a single text.
    const pp0 = tj.post_processor;
    if (isObject(pp0) && pp0.type === 'TemplateProcessing' && Array.isArray(pp0.single) && pp0.single.length > 1) {
      const specialAt = (e: unknown): string | undefined =>
        isObject(e) && isObject(e.SpecialToken) && typeof e.SpecialToken.id === 'string' ? e.SpecialToken.id : undefined;
      names.bos ??= specialAt(pp0.single[0]);
      names.eos ??= specialAt(pp0.single[pp0.single.length - 1]);
    }
    for (const [k, v] of Object.entries(names)) if (v !== undefined) config[`${k}_token`] = v;
    const additional = [
      ...(Array.isArray(config.additional_special_tokens) ? config.additional_special_tokens : []),
      ...(Array.isArray(stm.additional_special_tokens) ? stm.additional_special_tokens : []),
    ]
      .map(tokenContent)
      .filter((s): s is string => s !== undefined);
    config.additional_special_tokens = [...new Set(additional)];

    // Added tokens: tokenizer.json's, plus those only in added_tokens_decoder / added_tokens.json.
    if (tj.added_tokens !== undefined && !Array.isArray(tj.added_tokens)) throw malformed('"added_tokens" is not an array');
    const addedTokens: Json[] = Array.isArray(tj.added_tokens) ? tj.added_tokens.map((t) => ({ ...(t as Json) })) : [];
    for (const t of addedTokens)
      if (typeof t.id !== 'number' || typeof t.content !== 'string') throw malformed('an added token lacks "id" or "content"');
    const knownIds = new Set(addedTokens.map((t) => t.id as number));
    const addToken = (id: number, content: string, special: boolean, extra: Json = {}): void => {
      if (knownIds.has(id)) return;
      knownIds.add(id);
      addedTokens.push({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: !special, special, ...extra });
    };
    if (isObject(config.added_tokens_decoder)) {
      for (const [idText, entry] of Object.entries(config.added_tokens_decoder)) {
        const content = tokenContent(entry);
        if (content === undefined || !/^\d+$/.test(idText)) continue;
        const e = entry as Json;
        addToken(Number(idText), content, e.special === true, {
          single_word: e.single_word === true,
          lstrip: e.lstrip === true,
          rstrip: e.rstrip === true,
          normalized: e.normalized === true,
        });
      }
    }
    if (isObject(files.addedTokens)) {
      for (const [content, id] of Object.entries(files.addedTokens)) {
        if (typeof id !== 'number') continue;
        // Matched literally (normalized: false): a normalizer such as Prepend("▁") would otherwise
        // change the token's own text and it would never match.
        addToken(id, content, additional.includes(content) || Object.values(names).includes(content), { normalized: false });
      }
    }
    tj.added_tokens = addedTokens;

    // add_bos_token / add_eos_token rebuild a TemplateProcessing post-processor (transformers'
    // LlamaTokenizerFast.update_post_processor).
    const addBos = config.add_bos_token;
    const addEos = config.add_eos_token;
    const pp = tj.post_processor;
    if ((typeof addBos === 'boolean' || typeof addEos === 'boolean') && (pp === null || pp === undefined || (isObject(pp) && pp.type === 'TemplateProcessing'))) {
      const idOf = (content: string | undefined): number | undefined => {
        if (content === undefined) return undefined;
        const a = addedTokens.find((t) => t.content === content);
        if (a) return a.id as number;
        const vocab = (tj.model as Json).vocab;
        if (isObject(vocab) && typeof vocab[content] === 'number') return vocab[content];
        if (Array.isArray(vocab)) {
          const i = vocab.findIndex((e) => Array.isArray(e) && e[0] === content);
          if (i >= 0) return i;
        }
        return undefined;
      };
      const wantBos = addBos === true;
      const wantEos = addEos === true;
      const bosId = idOf(names.bos);
      const eosId = idOf(names.eos);
      if (wantBos && bosId === undefined) throw new EmollmError('ERR_BAD_CONFIG', `${where}: add_bos_token is true but bos_token is not set`, { file: files.source });
      if (wantEos && eosId === undefined) throw new EmollmError('ERR_BAD_CONFIG', `${where}: add_eos_token is true but eos_token is not set`, { file: files.source });
      const seq = (id: 'A' | 'B', typeId: number): unknown[] => [
        ...(wantBos ? [{ SpecialToken: { id: names.bos, type_id: typeId } }] : []),
        { Sequence: { id, type_id: typeId } },
        ...(wantEos ? [{ SpecialToken: { id: names.eos, type_id: typeId } }] : []),
      ];
      const specialTokens: Json = {};
      if (wantBos) specialTokens[names.bos!] = { id: names.bos, ids: [bosId], tokens: [names.bos] };
      if (wantEos) specialTokens[names.eos!] = { id: names.eos, ids: [eosId], tokens: [names.eos] };
      tj.post_processor = { type: 'TemplateProcessing', single: seq('A', 0), pair: [...seq('A', 0), ...seq('B', 1)], special_tokens: specialTokens };
    }

    try {
      this.lib = new HfLibTokenizer(tj, config);
    } catch (cause) {
      throw malformed(`cannot build the tokenizer: ${(cause as Error).message ?? String(cause)}`, cause);
    }
    this.kind = kind;
    this.modelType = typeof (tj.model as Json).type === 'string' ? ((tj.model as Json).type as string) : 'unknown';
    const vocabSize = this.lib.get_vocab(true).size;
    let maxId = -1;
    for (const id of this.lib.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.vocabSize = Math.max(vocabSize, maxId + 1);
    for (const t of addedTokens) {
      this.added.set(t.content as string, t.id as number);
      if (t.special === true || additional.includes(t.content as string)) this.special.add(t.id as number);
    }
    const idOf = (s: string | undefined): number | undefined => (s === undefined ? undefined : this.lib.token_to_id(s));
    this.bosToken = names.bos;
    this.eosToken = names.eos;
    this.bosId = idOf(names.bos);
    this.eosId = idOf(names.eos);
    this.padId = idOf(names.pad);
    const modelUnk = (tj.model as Json).unk_token;
    this.unkId = idOf(names.unk ?? (typeof modelUnk === 'string' ? modelUnk : undefined));
    for (const id of [this.bosId, this.eosId, this.padId, this.unkId]) if (id !== undefined && this.added.has(this.lib.id_to_token(id) ?? '')) this.special.add(id);
    this.legacy = typeof config.legacy === 'boolean' ? config.legacy : undefined;
    this.cleanUpTokenizationSpaces =
      typeof config.clean_up_tokenization_spaces === 'boolean' ? config.clean_up_tokenization_spaces : cleanUpDefault;
    this.plan = planDecoder(tj.decoder);
    this.leadingSpacesToStrip = this.plan?.leadingSpaces ?? 0;
    this.pieces = new Array<Uint8Array | undefined>(this.vocabSize);

    // What the post-processor adds around a text.
    let withSpecial: number[] = [];
    try {
      withSpecial = this.lib.encode('', { add_special_tokens: true }).ids;
    } catch {
      withSpecial = [];
    }
    this.addBosToken = this.bosId !== undefined && withSpecial[0] === this.bosId;
    this.addEosToken =
      this.eosId !== undefined && withSpecial.length > (this.addBosToken ? 1 : 0) && withSpecial[withSpecial.length - 1] === this.eosId;
  }

  /** Builds a tokenizer from already-parsed files. */
  static fromFiles(files: HfTokenizerFiles): HfTokenizer {
    return new HfTokenizer(files, 'hf', true);
  }

  /** @internal GGUF byte-level BPE. */
  static fromGgufJson(tokenizerJson: Json, config: Json, file?: string): HfTokenizer {
    return new HfTokenizer({ tokenizer: tokenizerJson, tokenizerConfig: config, source: file }, 'gguf-bpe', false);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new EmollmError('ERR_INVALID_ARGUMENT', 'text must be a string');
    return this.lib.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;
  }

  /** The token strings `encode` would produce (`["<s>", "▁Hello"]`). */
  tokenize(text: string, options: EncodeOptions = {}): string[] {
    return this.lib.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).tokens;
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    for (const id of ids) checkId(id, this.vocabSize);
    let s: string;
    if (this.plan) {
      s = decodePieces(this, ids, options);
    } else {
      if (ids.length === 0) return '';
      s = this.lib.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? false, clean_up_tokenization_spaces: false });
    }
    return this.cleanUpTokenizationSpaces ? cleanUpTokenization(s) : s;
  }

  tokenToPiece(id: number, options: DecodeOptions = {}): Uint8Array {
    checkId(id, this.vocabSize);
    if (options.skipSpecialTokens && this.special.has(id)) return EMPTY;
    let p = this.pieces[id];
    if (p !== undefined) return p;
    const token = this.lib.id_to_token(id);
    if (token === undefined) p = EMPTY;
    else if (this.plan) p = renderToken(token, this.plan.steps);
    else p = utf8.encode(this.lib.decode([id], { skip_special_tokens: false, clean_up_tokenization_spaces: false }));
    this.pieces[id] = p;
    return p;
  }

  idToToken(id: number): string | undefined {
    return Number.isInteger(id) && id >= 0 && id < this.vocabSize ? this.lib.id_to_token(id) : undefined;
  }

  tokenToId(token: string): number | undefined {
    return this.lib.token_to_id(token);
  }

  specialTokenId(token: string): number | undefined {
    return this.added.get(token);
  }

  isSpecial(id: number): boolean {
    checkId(id, this.vocabSize);
    return this.special.has(id);
  }

  createDetokenizer(options: DetokenizerOptions = {}): IncrementalDetokenizer {
    return new IncrementalDetokenizer(this, options);
  }
}

async function readJson(path: string, required: boolean): Promise<unknown> {
  let text: string;
  try {
    // a regular file only (a FIFO named tokenizer.json would block the read forever)
    text = await readRegularTextFile(path, { maxBytes: DEFAULT_MAX_JSON_BYTES });
  } catch (e) {
    const cause = e instanceof EmollmError ? e.cause : e;
    if (!required && (cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return undefined;
    if (e instanceof EmollmError && e.code !== 'ERR_FILE_NOT_FOUND') throw e;
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${path}: cannot read (${(cause as Error).message})`, { file: path, cause });
  }
  try {
    return JSON.parse(text);
  } catch (cause) {
    throw new EmollmError('ERR_MALFORMED_FILE', `${path}: not valid JSON (${(cause as Error).message})`, { file: path, cause });
  }
}

/**
 * Loads the Hugging Face tokenizer of a model folder: `tokenizer.json` (required; a missing one is
 * `ERR_FILE_NOT_FOUND` naming it) and, when present, `tokenizer_config.json`,
 * `special_tokens_map.json` and `added_tokens.json`.
 */
export async function loadHfTokenizer(dir: string): Promise<HfTokenizer> {
  if (typeof dir !== 'string' || dir.length === 0) throw new EmollmError('ERR_INVALID_ARGUMENT', 'dir must be a non-empty string');
  const tokenizerPath = join(dir, 'tokenizer.json');
  const [tokenizer, tokenizerConfig, specialTokensMap, addedTokens] = await Promise.all([
    readJson(tokenizerPath, true),
    readJson(join(dir, 'tokenizer_config.json'), false),
    readJson(join(dir, 'special_tokens_map.json'), false),
    readJson(join(dir, 'added_tokens.json'), false),
  ]);
  return HfTokenizer.fromFiles({ tokenizer, tokenizerConfig, specialTokensMap, addedTokens, source: tokenizerPath });
}

/**
 * Qwen2's pre-tokenizer split (its tokenizer.json's `Split` regex, as Qwen2 / Qwen2-VL ship it), and
 * llama.cpp's spelling of the same pattern with the inline case-insensitive group expanded.
 * @internal
 */
export const QWEN2_SPLIT_REGEX_HF = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
/** @internal */
export const QWEN2_SPLIT_REGEX = String.raw`(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;

/** The tokenizer.json pre-tokenizer for a GGUF `tokenizer.ggml.pre` (llama.cpp's names). */
function ggufPreTokenizer(pre: unknown): Json | undefined {
  if (pre === undefined || pre === 'gpt-2' || pre === 'default') return { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  // Qwen2 / Qwen2-VL: one digit per piece, then byte-level without GPT-2's regex (Qwen2's tokenizer.json)
  if (pre === 'qwen2')
    return {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: QWEN2_SPLIT_REGEX_HF }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
      ],
    };
  return undefined;
}

/**
 * A GGUF byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`) as a Hugging Face BPE
 * tokenizer: `tokenizer.ggml.tokens`, `.merges`, `.token_type` (control tokens special,
 * user-defined tokens added), `.bos_token_id`, `.eos_token_id`, `.unknown_token_id`,
 * `.padding_token_id`, `.add_bos_token` (default false), `.add_eos_token` (default false). The
 * pre-tokenizers of `tokenizer.ggml.pre` `"gpt-2"` (also `"default"` or absent) and `"qwen2"` are supported.
 * @internal Use `tokenizerFromGgufMetadata` in tokenizer.ts.
 */
export function hfTokenizerFromGgufMetadata(meta: GgufMetadata, file?: string): HfTokenizer {
  const where = file ?? 'GGUF metadata';
  const bad = (msg: string): EmollmError => new EmollmError('ERR_MALFORMED_FILE', `${where}: ${msg}`, { file });
  const pre = meta['tokenizer.ggml.pre'];
  const preTokenizer = ggufPreTokenizer(pre);
  if (!preTokenizer)
    throw new EmollmError('ERR_UNSUPPORTED', `${where}: BPE pre-tokenizer ${JSON.stringify(pre)} is not supported ("gpt-2", "qwen2")`, { file });
  const tokens = meta['tokenizer.ggml.tokens'];
  if (!Array.isArray(tokens) || tokens.length === 0 || !tokens.every((t) => typeof t === 'string'))
    throw bad('tokenizer.ggml.tokens is missing or not an array of strings');
  const merges = meta['tokenizer.ggml.merges'];
  if (!Array.isArray(merges) || !merges.every((t) => typeof t === 'string')) throw bad('tokenizer.ggml.merges is missing or not an array of strings');
  const types = meta['tokenizer.ggml.token_type'];
  if (types !== undefined && (!Array.isArray(types) || types.length < tokens.length)) throw bad('tokenizer.ggml.token_type does not match the tokens');
  const n = tokens.length;
  const idKey = (key: string): number | undefined => {
    const v = meta[key];
    const x = typeof v === 'bigint' ? Number(v) : v;
    return typeof x === 'number' && Number.isInteger(x) && x >= 0 && x < n ? x : undefined;
  };
  const added: Json[] = [];
  (tokens as string[]).forEach((content, id) => {
    const t = Array.isArray(types) ? Number(types[id]) : 1;
    if (t === 3 || t === 4) added.push({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: t === 3 });
  });
  const vocab = Object.fromEntries((tokens as string[]).map((t, i) => [t, i]));
  const tj: Json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: preTokenizer,
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges },
  };
  const name = (key: string): string | undefined => {
    const id = idKey(key);
    return id === undefined ? undefined : (tokens[id] as string);
  };
  const config: Json = {
    bos_token: name('tokenizer.ggml.bos_token_id'),
    eos_token: name('tokenizer.ggml.eos_token_id'),
    unk_token: name('tokenizer.ggml.unknown_token_id'),
    pad_token: name('tokenizer.ggml.padding_token_id'),
    add_bos_token: meta['tokenizer.ggml.add_bos_token'] === true,
    add_eos_token: meta['tokenizer.ggml.add_eos_token'] === true,
    clean_up_tokenization_spaces: false,
  };
  return HfTokenizer.fromGgufJson(tj, config, file);
}
