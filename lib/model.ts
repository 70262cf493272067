/**
 * Language models: load a LLaMA-architecture checkpoint (a Hugging Face folder or a GGUF file),
 * tokenize, generate text as an async iterator, and read logits. All heavy work runs on native
 * threads; nothing here blocks the event loop.
 *
 * @example
 * ```ts
 * const model = await loadModel('stories260K.gguf', { contextSize: 512 });
 * for await (const chunk of model.generate('Once upon a time', { maxTokens: 50 })) process.stdout.write(chunk.text);
 * await model.close();
 * ```
 */
import { stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';

import { ChatTemplate, loadChatTemplate, type ChatContentPart, type ChatMessage } from './chat_template.js';
import { EmollmError } from './errors.js';
import { ImageProcessor, type ImageInput } from './image.js';
import type { ImageProcessorConfig } from './image_processor.js';
import { resolveHfPath } from './hub.js';
import { readThrough, weightFiles, type LoadProgress } from './load_progress.js';
import { parseGridPinpoints } from './image_processor_llava_next.js';
import type { PerspectiveType } from './perspectives.js';
import { parseQwen2VLProcessorConfig, type Qwen2VLProcessorConfig } from './image_processor_qwen2_vl.js';
import { inspectGguf } from './loaders.js';
import { native } from './native.js';
import { FileGuard } from './file_guard.js';
import { WORKER_MIN_CHARS, encodeOffThread, type TokenizerSource } from './tokenize_worker.js';
import { DEFAULT_MAX_JSON_BYTES, DEFAULT_MAX_PROMPT_CHARS, limitOption } from './limits.js';
import { assertRegularFile, readRegularFile } from './safe_fs.js';
import { runtimeOptions, type RuntimeOptions } from './runtime.js';
import { SpmTokenizer, loadTokenizer, tokenizerFromGgufMetadata, type Tokenizer } from './tokenizer.js';
import { encodeVisuals, type NativeVisualEncoder, type Visual, type VisualFeatures, type VisualPreprocessing } from './visual_input.js';

export type { Device } from './runtime.js';

/** Element types of the KV cache (`LoadModelOptions.kvCacheType`). */
export type KvCacheType = 'f32' | 'f16' | 'bf16';
const KV_CACHE_TYPES: readonly KvCacheType[] = ['f32', 'f16', 'bf16'];

/** Options of {@link loadModel}; `device` and `threads` are the runtime configuration (RuntimeOptions). */
export interface LoadModelOptions extends RuntimeOptions {
  /** Tokens the KV cache holds per sequence; default min(the model's training context, 4096). */
  contextSize?: number;
  /**
   * Sequences decoded together (default 4, at most 256): concurrent `generate` / `chat` /
   * `scoreOptions` calls on the model run at once, up to this many, as one batched forward pass
   * per step; later calls wait in arrival order. Each sequence owns a KV cache of `contextSize`
   * positions (reserved address space; pages are touched as they are used).
   */
  maxSequences?: number;
  /**
   * The scheduler's token budget per step (default min(contextSize × maxSequences, 512); at least
   * `maxSequences`, at most 1048576): the most token rows one forward pass carries. Each step
   * carries every decoding sequence's next token, then option rows of scoring calls, then chunks
   * of the prompts being prefilled with what is left, so a long prompt is evaluated over several
   * steps while the other sequences keep decoding. Larger: prompts in fewer, bigger passes
   * (throughput); smaller: shorter steps (steadier token latency for the decoding sequences).
   */
  batchTokens?: number;
  /**
   * Chunked prefill (default true): prompts are evaluated in chunks inside the scheduler's steps,
   * beside the decoding sequences. `false` evaluates each prompt whole when its call is admitted,
   * and the decoding sequences wait meanwhile (the A/B baseline for measurements).
   */
  chunkedPrefill?: boolean;
  /**
   * KV cache pool size in positions, shared by all sequences (paged KV cache, blocks of
   * `kvBlockSize` positions). Default: maxSequences × contextSize (every sequence can always
   * fill its context). Smaller: less memory; a call is admitted when its prompt (or prefix +
   * longest option) fits the free blocks, sequences take blocks as they grow, and when none is
   * left the most recently admitted call is preempted and later recomputed (its output and
   * streamed tokens are as if it ran alone); a call whose worst case (prompt + maxTokens) can
   * never fit the pool fails with ERR_OUT_OF_MEMORY.
   */
  kvCachePositions?: number;
  /** Positions per KV cache block (a multiple of 16, default 64). */
  kvBlockSize?: number;
  /**
   * Element type of the KV cache (default `'f32'`). `'f16'` (llama.cpp's default cache type) or
   * `'bf16'` halve the cache's memory and the bytes attention reads per token: each key and value
   * is rounded once, to nearest even, when written, and widened back to f32 when read, so logits
   * move by the rounding (relative 2^-11 for f16, 2^-8 for bf16). A backend without such a cache
   * (e.g. the CUDA backend for f16) fails the load with ERR_UNSUPPORTED.
   */
  kvCacheType?: KvCacheType;
  /**
   * Fault in the sequences' whole KV cache and activation buffers when they are created (default
   * true; the context is made at the model's first call and faulted in on the model's own
   * thread before that call runs, never on the event loop), as llama.cpp clears its cache when
   * it creates a context: no prompt then pays the first touch of its memory (a LLaVA-7B prompt of
   * ~630 positions touches ~700 MiB: ~0.7 s in a VM), and the memory is resident from then on.
   * `false`: pages are taken as positions are first written, for a large `contextSize` ×
   * `maxSequences` that is rarely filled (the environment variable EMOLLM_PREFAULT=0 does the
   * same for every context).
   */
  prefaultContext?: boolean;
  /**
   * Decode attention on a bf16 KV cache with bf16 dot products (default false). With `kvCacheType:
   * 'bf16'` on a CPU with AVX512-BF16 (the `vdpbf16ps` instruction), each generated token's
   * attention rounds the query to bf16 for Q·Kᵀ and the softmax weights to bf16 per block for P·V,
   * summing in f32: faster decode attention (the kernel 1.11-1.13× the exact path at
   * TinyLlama-1.1B's shape, kv 512-2048, on a Zen 5; attention is ~10% of such a decode step, so the
   * whole step gains less), at the cost of logits that are no longer bit-equal to the exact path:
   * they stay within the kernel's stated bound (each score carries the query's rounding, relative
   * 2^-9 a product; each weight one more, relative 2^-9). A trade-off like llama.cpp's cache-type
   * and flash-attention switches. Prompts are evaluated exactly (a prompt chunk of a single token,
   * e.g. a chunked prompt's last, counts as a decode step). No effect with an `'f32'` / `'f16'`
   * cache, on models with fewer than 4 query heads per KV head, on CPUs without AVX512-BF16, on the
   * CUDA backend, or under EMOLLM_DECODE_ATTN_BF16DP=0. Anything but a boolean fails with
   * ERR_INVALID_ARGUMENT.
   */
  decodeBf16Products?: boolean;
  /**
   * The tokenizer, when the model does not carry its own: a Tokenizer, or a path to a .gguf, a
   * tokenizer.json (or its folder), or a llama2.c tokenizer.bin. Default: the model's own
   * (tokenizer.json in the folder, or the GGUF's vocabulary).
   */
  tokenizer?: Tokenizer | string;
  /** For a LLaVA GGUF: llama.cpp's multimodal projector GGUF (CLIP + projector) beside the text model. */
  mmproj?: string;
  /**
   * Recycle the image features that prompts with image parts encode inside generate / chat /
   * scoreOptions / logits (LLaVA with one fixed-size image; default true). The native call that
   * takes the prompt reads those features in place (off the event loop, no copy), so their array is
   * free again once that call settles: the model keeps up to two such arrays and the next prompt's images are written into one of
   * them, already faulted in (a fresh 9 MiB LLaVA-1.5 array takes 2304 first-touch page faults
   * inside the projector). The arrays are never handed to the caller; `false` allocates a new one
   * for every prompt (and holds none). Arrays that encodeImages / encodePixels return are the
   * caller's either way (see {@link ImageEncodeOptions}).
   */
  recycleImageFeatures?: boolean;
  /** Overrides of the image preprocessing (preprocessor_config.json), e.g. `{ padToSquare: true }`. */
  imageProcessor?: Partial<ImageProcessorConfig>;
  /** Cancels loading (checked before and after the native load, and between chunks of the progress read). */
  signal?: AbortSignal;
  /**
   * Longest prompt string tokenized, in characters (default 262 144). Longer prompts reject with
   * `ERR_LIMIT_EXCEEDED` from a length check, before any tokenizing work blocks the event loop.
   */
  maxPromptChars?: number;
  /**
   * Loading progress. When given, the weight files are first read through once with progress
   * (filling the page cache the memory map then uses; see lib/load_progress.ts), then the native
   * load runs ('load' phase, reported at its start and end).
   */
  onProgress?: (progress: LoadProgress) => void;
}

/** What a loaded model is. */
export interface ModelInfo {
  format: 'gguf' | 'safetensors';
  arch: string;
  nVocab: number;
  nEmbd: number;
  nLayer: number;
  nHead: number;
  nHeadKv: number;
  nCtxTrain: number;
  ropeTheta: number;
  bosId?: number;
  eosId?: number;
  /**
   * Harmless findings of the load, e.g. checkpoint tensors the model does not use. (Layers beyond
   * the config's layer count and missing tensors are errors, not warnings.)
   */
  warnings?: string[];
  /** Present for multimodal (LLaVA / EmoLLM) models. */
  vision?: VisionInfo;
  /**
   * Present for EmoLLM models (a llava folder whose config.json has an `emollm` section, see
   * docs/emollm-config.md): the Multi-perspective Visual Projection's perspectives and fusion.
   */
  emollm?: EmollmInfo;
}

/** A face box in pixels of the vision tower's input (e.g. 336 x 336 for LLaVA-1.5). */
export interface FaceBox {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** One perspective (projection head) of an EmoLLM model. */
export interface EmollmPerspectiveInfo {
  name: string;
  /** The perspective kind (lib/perspectives.ts). */
  type: PerspectiveType;
  /** 'learned' (sigmoid(gate_logits)), 'open' (1) or 'closed' (skipped: no contribution, no tokens). */
  gate: 'learned' | 'open' | 'closed';
  /** Vision hidden-state indices read (resolved, >= 0), concatenated on channels. */
  layers: number[];
  inputSize: number;
  hiddenSize?: number;
  nQueries?: number;
  numHeads?: number;
  maxFaces?: number;
}

/** The EmoLLM side of a model. */
export interface EmollmInfo {
  fusion: 'gated-sum' | 'concat';
  /** Vision tokens per image the MLP perspectives read (n_patches, + 1 with the "full" strategy). */
  nVisionTokens: number;
  perspectives: EmollmPerspectiveInfo[];
}

/**
 * Encoded images. For EmoLLM models the array carries `tokenCounts` (positions per image; images
 * with face boxes take more); eval/generate/score read it back. Copies (slice, subarray) lose it.
 */
export type ImageFeatures = Float32Array & { tokenCounts?: Int32Array; grids?: Int32Array };

/**
 * Options of {@link Model.encodePixels} / {@link Model.encodeImages}.
 *
 * Lifetime of the result: without `out`, every call resolves to a new array that belongs to the
 * caller; no later call writes into it. With `out`, the call writes the features straight into
 * `out` (the vision tower's projector writes its rows there: no second array, no copy) and
 * resolves to `out` itself, so each call given the same array overwrites what the previous one
 * left there: copy what you need to keep, or pass a different array.
 */
export interface ImageEncodeOptions {
  /**
   * The result array (LLaVA and EmoLLM models with one fixed-size image: not LLaVA-NeXT or
   * Qwen2-VL, which throw ERR_UNSUPPORTED): a Float32Array of exactly
   * `batch * info.vision.nImageTokens * info.nEmbd` floats (EmoLLM: the images' token counts summed,
   * times `info.nEmbd`; face boxes that fall on an image add positions, as the result's
   * `tokenCounts` show), attached and over a fixed-length buffer (a resizable ArrayBuffer or a
   * growable SharedArrayBuffer is refused). Anything else is ERR_INVALID_ARGUMENT, as is an array
   * whose memory an encode still running writes, and a call whose `out` was detached (transferred)
   * while it ran rejects with it. Reusing one array for repeated
   * calls saves the fresh result's first-touch page faults (a LLaVA-1.5 image's 9 MiB: 2304 at 4 KiB,
   * ~600 where Linux gives its whole 2 MiB pages as transparent huge pages, which the addon asks for).
   * Like `fs.read`'s buffer, `out` must stay attached (not transferred) until the promise settles,
   * and what it holds meanwhile is unspecified. Passed on as a prompt's `images`, it is read in
   * place by that call until the call settles: encode into it again only after that. Without
   * `out`, the features are a fresh Float32Array over its own ordinary ArrayBuffer: the caller's
   * to keep or transfer to a worker without a copy.
   */
  out?: Float32Array;
}

/** The vision side of a multimodal model. */
export interface VisionInfo {
  /**
   * The model family: 'llava' (one fixed-size image), 'llava_next' (anyres tiles, the token count
   * follows the image's size) or 'qwen2_vl' (dynamic resolution, images and videos, M-RoPE).
   */
  family?: 'llava' | 'llava_next' | 'qwen2_vl';
  /** The tower's input size (LLaVA-NeXT: one tile). Absent for Qwen2-VL (dynamic resolution). */
  imageSize?: number;
  patchSize: number;
  /**
   * Language-model positions one image takes (e.g. 576 for LLaVA-1.5; EmoLLM: without face boxes;
   * LLaVA-NeXT: one tile's features). Absent for Qwen2-VL.
   */
  nImageTokens?: number;
  /** The `<image>` placeholder id (32000 in llava-1.5; `<|image_pad|>` in Qwen2-VL). */
  imageTokenId: number;
  /** Qwen2-VL: the `<|video_pad|>` id. */
  videoTokenId?: number;
  /** LLaVA-NeXT: the anyres grid pinpoints, `[height, width]` in pixels. */
  gridPinpoints?: [number, number][];
  /** Qwen2-VL: patches merged per side into one token, and frames per temporal patch. */
  mergeSize?: number;
  temporalPatchSize?: number;
  mean?: number[];
  std?: number[];
}

/** An image part of a chat message. */
export interface ImagePart {
  type: 'image';
  /** A file path, an encoded image (Buffer / Uint8Array / ArrayBuffer) or raw pixels. */
  image: ImageInput;
  /**
   * EmoLLM models with a face-region perspective: the faces in this image, in pixels of the
   * vision tower's input (after preprocessing, e.g. 336 x 336). Absent or empty: the face
   * perspective contributes nothing. Other models ignore it.
   */
  faces?: readonly FaceBox[];
}

/** Why generation ended. */
export type StopReason = 'eos' | 'stop-token' | 'stop-string' | 'max-tokens' | 'context-full' | 'aborted';

export interface GenerateOptions {
  /** Most tokens to generate; default 256. */
  maxTokens?: number;
  /** 0 means greedy (the default, deterministic); > 0 samples. */
  temperature?: number;
  /** Keep the k most likely tokens when sampling; 0 disables; default 40. */
  topK?: number;
  /** Nucleus sampling mass; 1 disables; default 0.95. */
  topP?: number;
  /** > 1 discourages repeating recent tokens (llama.cpp / HF semantics); default 1 (off). */
  repetitionPenalty?: number;
  /** How many recent tokens the penalty looks at; default 64. */
  repeatLastN?: number;
  /** Sampling seed; the same seed gives the same tokens. Default: random. */
  seed?: number;
  /** Stop when one of these strings appears; it is not included in the output. */
  stop?: readonly string[];
  /** Stop at one of these token ids (EOS always stops). */
  stopTokens?: readonly number[];
  /** Cancels generation: iteration throws an EmollmError with code ERR_ABORTED. */
  signal?: AbortSignal;
  /** For string prompts: add BOS etc. as the tokenizer is configured to; default true. */
  addSpecialTokens?: boolean;
}

/** A piece of generated output. */
export interface GenerationChunk {
  /** Text completed by these tokens (may be "" while a UTF-8 character is incomplete). */
  text: string;
  tokens: number[];
}

export interface GenerationResult {
  text: string;
  tokens: number[];
  promptTokens: number;
  stopReason: StopReason;
}

/**
 * A prompt: text, a chat conversation (rendered with the model's chat template; content parts
 * `{ type: 'image', image }` for multimodal models), or token ids.
 */
export type Prompt = string | readonly ChatMessage[] | readonly number[] | PreparedInput;

/**
 * Token ids with encoded images (from {@link Model.encodePixels} / {@link Model.encodeImages}):
 * the prompt holds the image token once per image, or already expanded.
 */
export interface PreparedInput {
  tokens: readonly number[];
  /**
   * The features, read in place by the call that takes the prompt (never copied on the event
   * loop): like `fs.write`'s buffer, the array must not be changed, transferred or detached until
   * that call's promise (or a generation's `result`) settles; it must be over a fixed-length
   * buffer (a resizable ArrayBuffer or a growable SharedArrayBuffer is ERR_INVALID_ARGUMENT). A
   * detached array rejects with `ERR_INVALID_ARGUMENT`, when submitted or, detached while the call
   * read it, when the call settles unaborted (what it read then is undefined).
   */
  images?: Float32Array | null;
}

/** Options of {@link Model.scoreOptions}. */
export interface ScoreOptions {
  /**
   * How an option's token log-probabilities combine into its score: 'mean' (length-normalised,
   * the default, so longer labels are not penalised for their length) or 'sum' (the joint
   * log-probability).
   */
  normalize?: 'mean' | 'sum';
  signal?: AbortSignal;
}

/** One candidate answer's score. */
export interface ScoredOption {
  option: string;
  /** The option's tokens as scored after the prompt. */
  tokens: number[];
  /** Joint log-probability of the tokens. */
  logprob: number;
  /** Mean log-probability per token. */
  meanLogprob: number;
  /** Per-token log-probabilities. */
  tokenLogprobs: number[];
}

/** Result of {@link Model.scoreOptions}. */
export interface ScoreResult {
  options: ScoredOption[];
  /** Softmax over the options' normalised scores: a distribution over the candidates. */
  probabilities: number[];
  /** The most probable option and its index. */
  best: string;
  bestIndex: number;
  /** Probability of the best option minus that of the runner-up (1 when there is one option). */
  margin: number;
}

/** A prompt made ready for the native side. */
interface PreparedPrompt {
  ids: number[];
  /** Projected image features, or null. */
  images: Float32Array | null;
  /**
   * Set when `images` is a recycled array of the model's pool: hands it back. Call it only once
   * the native call that takes `images` has settled (it reads them in place, off the event loop,
   * until then), or when no native call took them; never otherwise (an array not handed back is
   * simply dropped).
   */
  release?: () => void;
}

interface NativeContext {
  eval(tokens: Int32Array, options?: { allLogits?: boolean }): Promise<Float32Array>;
  evalMultimodal(tokens: Int32Array, images: Float32Array | null, options?: { allLogits?: boolean }): Promise<Float32Array>;
  generate(
    prompt: Int32Array,
    options: Record<string, unknown>,
    onTokens?: (ids: Int32Array) => void,
    images?: Float32Array | null,
  ): Promise<{ tokens: Int32Array; stopReason: Exclude<StopReason, 'stop-string'> }>;
  score(
    prefix: Int32Array,
    images: Float32Array | null,
    continuations: Int32Array[],
  ): Promise<{ logprobs: number[]; tokenLogprobs: Float64Array[] }>;
  abort(): void;
  reset(): void;
  close(): Promise<void>;
  readonly nPast: number;
  readonly nCtx: number;
}

/** Counters of the model's sequence scheduler (native/model/scheduler.h), from {@link Model.stats}. */
export interface SequenceStats {
  /** Sequences decoded together at most (the `maxSequences` load option). */
  maxSequences: number;
  /** The token budget of a step (the `batchTokens` load option or its default; 0 before the first call when defaulted). */
  batchTokens: number;
  /** Whether prompts are prefilled in chunks inside the steps (the `chunkedPrefill` load option). */
  chunkedPrefill: boolean;
  /** Sequences holding a KV slot now. */
  active: number;
  /** Of which still having their prompt evaluated. */
  prefilling: number;
  /** Calls waiting for a slot (the queue depth). */
  queued: number;
  /** Step passes run so far (each carries every running sequence's next token or option, and prompt chunks). */
  steps: number;
  /** Of which with two sequences or more. */
  batchedSteps: number;
  /** Most sequences in one step pass. */
  maxBatch: number;
  /** Decode and option rows evaluated in all step passes (prompt rows not included). */
  decodedTokens: number;
  /** Prompts prefilled. */
  prefills: number;
  /** Prompt chunks evaluated (a step's part of a prompt; unchunked: a prompt's own passes). */
  prefillChunks: number;
  /** Prompt positions evaluated. */
  prefillTokens: number;
  /** Step passes that carried prompt rows beside decode / option rows (decoding went on during a prefill). */
  mixedSteps: number;
  /** Rows of all step passes (stepRows / steps: the mean batch rows per step). */
  stepRows: number;
  /** Rows of the latest step pass. */
  lastStepRows: number;
  /** Most rows in one step pass. */
  maxStepRows: number;
  /** Prompt prefixes copied from another sequence's cache instead of recomputed. */
  prefixCopies: number;
  /** Prompts that waited a step or more for an older prompt's prefill, to copy the prefix they share. */
  prefixWaits: number;
  /** Prompt positions taken from a cache (own or copied) instead of recomputed. */
  reusedTokens: number;
  /**
   * Prompts found cached whole together with their last position's logits (e.g. a scoreOptions
   * after logits() of the same prompt and image): no pass at all before their options / tokens.
   */
  reusedLogits: number;
  /** Positions per block of the paged KV cache (0 before the first call). */
  kvBlockSize: number;
  /** Blocks in the KV pool. */
  kvBlocksTotal: number;
  /** Blocks referenced by a running sequence or kept for prefix reuse. */
  kvBlocksUsed: number;
  /** Blocks shared by two sequences or more (a common prefix held once). */
  kvBlocksShared: number;
  /** Blocks held only by finished calls' cached prompts (kept for prefix reuse, released on demand). */
  kvBlocksCached: number;
  /** Bytes of one block (K and V of all layers). */
  kvBytesPerBlock: number;
  /** Calls that waited at admission for KV blocks. */
  kvWaits: number;
  /**
   * Running sequences preempted because the KV pool ran out of blocks: their blocks were freed and
   * they were requeued first, to be recomputed (prompt + tokens so far) when blocks are free.
   */
  kvPreemptions: number;
  /** Positions evaluated again for preempted sequences. */
  kvRecomputedTokens: number;
  /**
   * Whether the sequences' context is ready: its KV cache and activations faulted in (the
   * `prefaultContext` load option; done on the scheduler's thread after creation, and calls wait for
   * it), or no fault-in was asked for. False before the first call creates the context.
   */
  contextReady: boolean;
  /** Seconds that fault-in took (0 before it finished, or without one). */
  prefaultSeconds: number;
}

interface NativeSubmission<T> {
  id: number;
  promise: Promise<T>;
}

interface NativeBatch {
  generate(
    prompt: Int32Array,
    options: Record<string, unknown>,
    onTokens?: (ids: Int32Array) => void,
    images?: Float32Array | null,
  ): NativeSubmission<{ tokens: Int32Array; stopReason: Exclude<StopReason, 'stop-string'> }>;
  score(
    prefix: Int32Array,
    images: Float32Array | null,
    continuations: Int32Array[],
  ): NativeSubmission<{ logprobs: number[]; tokenLogprobs: Float64Array[] }>;
  logits(prompt: Int32Array, images: Float32Array | null): NativeSubmission<Float32Array>;
  abort(id: number): void;
  stats(): SequenceStats;
  close(): Promise<void>;
  readonly nCtx: number;
  readonly maxSequences: number;
}

interface NativeModel extends NativeVisualEncoder {
  info(): ModelInfo;
  encodeImages?(pixels: Float32Array, batch: number, faces?: (readonly FaceBox[] | null)[], options?: { out?: Float32Array }): Promise<ImageFeatures>;
  createContext(options?: { nCtx?: number; decodeBf16Products?: boolean }): NativeContext;
  createBatch(options?: {
    nCtx?: number;
    maxSequences?: number;
    batchTokens?: number;
    chunkedPrefill?: boolean;
    kvCachePositions?: number;
    kvBlockSize?: number;
    prefault?: boolean;
    decodeBf16Products?: boolean;
  }): NativeBatch;
  close(): Promise<void>;
}

// Frees native memory of models that were never closed (the deterministic path is close()).
const leakGuard = new FinalizationRegistry<NativeModel>((m) => {
  void m.close().catch(() => undefined);
});

/** Sequences decoded together unless `maxSequences` says otherwise. */
const DEFAULT_MAX_SEQUENCES = 4;
/** The largest `batchTokens` (rows of one forward pass; scratch memory grows with it). */
const MAX_BATCH_TOKENS = 1 << 20;

function abortError(): EmollmError {
  return new EmollmError('ERR_ABORTED', 'the operation was aborted');
}

/**
 * Loads a model: a Hugging Face folder (config.json + model.safetensors[.index.json] +
 * tokenizer files), a GGUF file (weights and vocabulary in one), or `hf:owner/name[@revision][/file]`
 * from the local hub cache (see {@link pull}).
 */
export async function loadModel(path: string, options: LoadModelOptions = {}): Promise<Model> {
  if (typeof path !== 'string' || path === '') throw new EmollmError('ERR_INVALID_ARGUMENT', 'path must be a non-empty string');
  // hf:owner/name[@revision][/file]: the local hub cache (emollm pull fetches it).
  if (path.startsWith('hf:')) path = resolveHfPath(path);
  if (options.mmproj?.startsWith('hf:')) options = { ...options, mmproj: resolveHfPath(options.mmproj) };
  // Validated here (types) and natively (what this build can run: 'cuda' without CUDA is ERR_UNSUPPORTED).
  const runtime = runtimeOptions(options, 'loadModel options');
  if (options.signal?.aborted) throw abortError();
  const st = await stat(path).catch((cause: unknown) => {
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${path}: no such file or folder`, { file: path, cause });
  });
  if (!st.isDirectory()) await assertRegularFile(path);
  if (options.mmproj !== undefined) await assertRegularFile(options.mmproj);
  const maxPromptChars = limitOption('maxPromptChars', options.maxPromptChars, DEFAULT_MAX_PROMPT_CHARS);
  const maxSequences = limitOption('maxSequences', options.maxSequences, DEFAULT_MAX_SEQUENCES);
  if (maxSequences > 256) throw new EmollmError('ERR_INVALID_ARGUMENT', `maxSequences must be at most 256, got ${maxSequences}`);
  const batchTokens = options.batchTokens === undefined ? undefined : limitOption('batchTokens', options.batchTokens, 0);
  if (batchTokens !== undefined && (batchTokens < maxSequences || batchTokens > MAX_BATCH_TOKENS))
    throw new EmollmError(
      'ERR_INVALID_ARGUMENT',
      `batchTokens must be in [maxSequences = ${maxSequences}, ${MAX_BATCH_TOKENS}] (every decoding sequence takes one row per step), got ${batchTokens}`,
    );
  if (options.chunkedPrefill !== undefined && typeof options.chunkedPrefill !== 'boolean')
    throw new EmollmError('ERR_INVALID_ARGUMENT', `chunkedPrefill must be a boolean, got ${typeof options.chunkedPrefill}`);
  if (options.prefaultContext !== undefined && typeof options.prefaultContext !== 'boolean')
    throw new EmollmError('ERR_INVALID_ARGUMENT', `prefaultContext must be a boolean, got ${typeof options.prefaultContext}`);
  if (options.decodeBf16Products !== undefined && typeof options.decodeBf16Products !== 'boolean')
    throw new EmollmError('ERR_INVALID_ARGUMENT', `decodeBf16Products must be a boolean, got ${typeof options.decodeBf16Products}`);
  if (options.recycleImageFeatures !== undefined && typeof options.recycleImageFeatures !== 'boolean')
    throw new EmollmError('ERR_INVALID_ARGUMENT', `recycleImageFeatures must be a boolean, got ${typeof options.recycleImageFeatures}`);
  const kvCachePositions =
    options.kvCachePositions === undefined ? undefined : limitOption('kvCachePositions', options.kvCachePositions, 0);
  const kvBlockSize = options.kvBlockSize === undefined ? undefined : limitOption('kvBlockSize', options.kvBlockSize, 0);
  if (kvBlockSize !== undefined && (kvBlockSize % 16 !== 0 || kvBlockSize < 16 || kvBlockSize > 4096))
    throw new EmollmError('ERR_INVALID_ARGUMENT', `kvBlockSize must be a multiple of 16 in [16, 4096], got ${kvBlockSize}`);
  if (options.kvCacheType !== undefined && !KV_CACHE_TYPES.includes(options.kvCacheType))
    throw new EmollmError(
      'ERR_INVALID_ARGUMENT',
      `kvCacheType must be one of ${KV_CACHE_TYPES.map((t) => `'${t}'`).join(', ')}, got ${JSON.stringify(options.kvCacheType)}`,
    );
  // Snapshot before mapping, so a change during the load is caught by the first call too.
  const guard = await FileGuard.watch(path, [options.mmproj]);

  let tokenizer: Tokenizer | undefined = typeof options.tokenizer === 'object' ? options.tokenizer : undefined;
  if (typeof options.tokenizer === 'string') tokenizer = await openTokenizer(options.tokenizer);
  let template: ChatTemplate | undefined;
  if (st.isDirectory()) {
    tokenizer ??= await loadTokenizer(path).catch((e: unknown) => {
      if (e instanceof EmollmError && e.code === 'ERR_FILE_NOT_FOUND')
        throw new EmollmError(
          'ERR_FILE_NOT_FOUND',
          `${path}: the model folder has no tokenizer.json; pass one with the \`tokenizer\` option (${e.message})`,
          { file: path, cause: e },
        );
      throw e;
    });
    template = await loadChatTemplate(path).catch((e: unknown) => {
      if (e instanceof EmollmError && e.code === 'ERR_UNSUPPORTED') return undefined; // no template: plain prompts only
      throw e;
    });
  } else {
    const meta = (await inspectGguf(path)).metadata;
    tokenizer ??= tokenizerFromGgufMetadata(meta, path);
    const t = meta['tokenizer.chat_template'];
    if (typeof t === 'string')
      template = new ChatTemplate(t, { file: path, bosToken: tokenizer.bosToken, eosToken: tokenizer.eosToken });
  }

  let weightBytes = 0;
  if (options.onProgress) {
    weightBytes = await readThrough(weightFiles(path, options.mmproj), options.onProgress, options.signal);
    options.onProgress({ phase: 'load', file: basename(path), bytes: weightBytes, total: weightBytes, done: false });
  }

  const nativeOptions: { threads?: number; device?: string; nCtx?: number; kvCacheType?: KvCacheType; mmproj?: string } = {
    ...runtime,
  };
  if (options.contextSize !== undefined) nativeOptions.nCtx = options.contextSize;
  // the native model keeps it as the default of every context and sequence batch it creates
  if (options.kvCacheType !== undefined) nativeOptions.kvCacheType = options.kvCacheType;
  if (options.mmproj !== undefined) nativeOptions.mmproj = options.mmproj;
  const handle = (await (native() as unknown as { loadModel(p: string, o: object): Promise<NativeModel> }).loadModel(
    path,
    nativeOptions,
  )) as NativeModel;
  if (options.signal?.aborted) {
    await handle.close();
    throw abortError();
  }
  // Harmless load findings (e.g. checkpoint tensors the model does not use) as process warnings.
  for (const w of handle.info().warnings ?? []) process.emitWarning(`${path}: ${w}`, { code: 'EMOLLM_LOAD_WARNING' });
  if (!tokenizer) throw new EmollmError('ERR_INTERNAL', 'no tokenizer');
  let imageProcessor: ImageProcessor | undefined;
  let visualPreprocessing: VisualPreprocessing | undefined;
  const vision = handle.info().vision;
  if (vision?.family === 'qwen2_vl') {
    // Qwen2-VL: its own processor (smart resize, temporal patches); no CLIP ImageProcessor
    try {
      // a GGUF pair: the mmproj's mean / std and llama.cpp's clip.vision.image_{min,max}_pixels
      // when present, else transformers' Qwen2VLImageProcessor defaults
      if (!st.isDirectory()) visualPreprocessing = { family: 'qwen2_vl', config: await qwen2vlGgufPreprocessing(options.mmproj) };
      else {
        const file = join(path, 'preprocessor_config.json');
        const text = (
          await readRegularFile(file, { maxBytes: DEFAULT_MAX_JSON_BYTES }).catch((cause: unknown) => {
            if (cause instanceof EmollmError && cause.code !== 'ERR_FILE_NOT_FOUND') throw cause;
            throw new EmollmError('ERR_FILE_NOT_FOUND', `${file}: a Qwen2-VL folder needs its preprocessor_config.json`, { file, cause });
          })
        ).toString('utf8');
        visualPreprocessing = { family: 'qwen2_vl', config: parseQwen2VLProcessorConfig(JSON.parse(text), file) };
      }
    } catch (e) {
      await handle.close();
      throw e instanceof SyntaxError ? new EmollmError('ERR_MALFORMED_FILE', `${path}: preprocessor_config.json: ${e.message}`) : e;
    }
  } else if (vision) {
    try {
      // A folder without preprocessor_config.json gets CLIP preprocessing at the tower's size.
      imageProcessor =
        st.isDirectory() && existsSync(join(path, 'preprocessor_config.json'))
          ? await ImageProcessor.load(path, options.imageProcessor ?? {})
          : imageProcessorFor(vision, options.imageProcessor);
      if (vision.family === 'llava_next')
        visualPreprocessing = { family: 'llava_next', config: imageProcessor.config, pinpoints: parseGridPinpoints(vision.gridPinpoints) };
    } catch (e) {
      await handle.close();
      throw e;
    }
  }
  const model = new Model(handle, tokenizer, template, path, options.contextSize, imageProcessor, visualPreprocessing);
  // the tokenizer file, when there is one, for encoding long prompts on a worker thread
  const tokenizerSource: TokenizerSource | undefined =
    typeof options.tokenizer === 'string'
      ? { kind: options.tokenizer.toLowerCase().endsWith('.bin') ? 'llama2c' : 'file', path: options.tokenizer }
      : options.tokenizer === undefined && (st.isDirectory() || path.toLowerCase().endsWith('.gguf'))
        ? { kind: 'file', path }
        : undefined;
  model.setSafety(guard, maxPromptChars, tokenizerSource, options.recycleImageFeatures ?? true);
  model.maxSequences = maxSequences;
  model.stepOptions = {
    ...(batchTokens === undefined ? {} : { batchTokens }),
    ...(kvCachePositions === undefined ? {} : { kvCachePositions }),
    ...(kvBlockSize === undefined ? {} : { kvBlockSize }),
    chunkedPrefill: options.chunkedPrefill ?? true,
    ...(options.prefaultContext === undefined ? {} : { prefault: options.prefaultContext }),
    ...(options.decodeBf16Products === undefined ? {} : { decodeBf16Products: options.decodeBf16Products }),
  };
  options.onProgress?.({ phase: 'load', file: basename(path), bytes: weightBytes, total: weightBytes, done: true });
  return model;
}

/** Qwen2-VL preprocessing of a GGUF pair, from the mmproj's keys (llama.cpp's names) over transformers' defaults. */
async function qwen2vlGgufPreprocessing(mmproj: string | undefined): Promise<Qwen2VLProcessorConfig> {
  const meta = mmproj === undefined ? {} : (await inspectGguf(mmproj)).metadata;
  const num = (k: string): number | undefined => (typeof meta[k] === 'number' || typeof meta[k] === 'bigint' ? Number(meta[k]) : undefined);
  return parseQwen2VLProcessorConfig(
    {
      image_mean: meta['clip.vision.image_mean'],
      image_std: meta['clip.vision.image_std'],
      min_pixels: num('clip.vision.image_min_pixels'),
      max_pixels: num('clip.vision.image_max_pixels'),
      patch_size: num('clip.vision.patch_size'),
      merge_size: num('clip.vision.spatial_merge_size'),
    },
    mmproj,
  );
}

/** CLIP preprocessing for a model whose only description is its vision info (a GGUF mmproj). */
function imageProcessorFor(vision: VisionInfo, overrides: Partial<ImageProcessorConfig> = {}): ImageProcessor {
  const size = vision.imageSize ?? 224;
  const config: Partial<ImageProcessorConfig> = {
    size: { shortestEdge: size },
    cropSize: { height: size, width: size },
  };
  if (vision.mean?.length === 3) config.imageMean = vision.mean as [number, number, number];
  if (vision.std?.length === 3) config.imageStd = vision.std as [number, number, number];
  return new ImageProcessor({ ...config, ...overrides });
}

/** The native `faces` argument: only when some image has boxes (EmoLLM face-region perspective). */
function facesArg(faces?: readonly (readonly FaceBox[] | null | undefined)[]): [] | [(readonly FaceBox[] | null)[]] {
  if (!faces || !faces.some((f) => f && f.length > 0)) return [];
  return [faces.map((f) => f ?? null)];
}

// The native arguments after (pixels, batch): faces, then { out } when the caller passed one.
// out is checked natively (type, size, and the one guard a prompt's images also go through: attached,
// over a fixed-length buffer), before any work.
function encodeArgs(
  faces: readonly (readonly FaceBox[] | null | undefined)[] | undefined,
  options: ImageEncodeOptions,
): [faces?: (readonly FaceBox[] | null)[], options?: { out: Float32Array }] {
  const f = facesArg(faces);
  if (options.out === undefined) return f;
  return [f[0], { out: options.out }];
}

function isPreparedInput(p: Prompt): p is PreparedInput {
  return typeof p === 'object' && p !== null && !Array.isArray(p) && 'tokens' in p;
}

/** Opens a tokenizer from a path: .gguf, tokenizer.json or its folder, or a llama2.c tokenizer.bin. */
async function openTokenizer(path: string): Promise<Tokenizer> {
  if (path.toLowerCase().endsWith('.bin')) {
    const bytes = await readRegularFile(path, { maxBytes: DEFAULT_MAX_JSON_BYTES });
    return SpmTokenizer.fromLlama2cVocab(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), path);
  }
  return loadTokenizer(path);
}

/** A loaded language model. Close it with {@link Model.close} to free native memory at once. */
export class Model {
  /** Architecture and sizes. */
  readonly info: ModelInfo;
  /** The model's tokenizer. */
  readonly tokenizer: Tokenizer;
  /** The chat template, when the model has one. */
  readonly chatTemplate: ChatTemplate | undefined;
  /** Where it was loaded from. */
  readonly path: string;
  /** Image preprocessing (multimodal models only; the CLIP steps, under LLaVA-NeXT's anyres; absent for Qwen2-VL). */
  readonly imageProcessor: ImageProcessor | undefined;
  /** @internal LLaVA-NeXT / Qwen2-VL: how visuals become native inputs (see visual_input.ts). */
  private readonly visualPreprocessing: VisualPreprocessing | undefined;

  /** Sequences decoded together (the `maxSequences` load option); later calls wait in arrival order. */
  maxSequences = DEFAULT_MAX_SEQUENCES;
  /** @internal the scheduler's step options (`batchTokens`, `chunkedPrefill` load options). */
  stepOptions: {
    batchTokens?: number;
    kvCachePositions?: number;
    kvBlockSize?: number;
    chunkedPrefill: boolean;
    prefault?: boolean;
    decodeBf16Products?: boolean;
  } = {
    chunkedPrefill: true,
  };

  private handle: NativeModel | undefined;
  // generate / chat / scoreOptions / logits: the core's sequence scheduler (continuous batching, a
  // KV slot per sequence, prefixes reused and shared across calls), created at the first call
  private batch: NativeBatch | undefined;
  // logits({ all: true }): one context, calls one at a time in call order (every position's logits:
  // nothing cached could be reused)
  private context: NativeContext | undefined;
  private readonly contextSize: number | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private maxPromptChars: number;
  /** Set by loadModel: checks the mapped weight files are unchanged before each call. */
  private fileGuard: FileGuard | undefined;
  /** Free recycled image-feature arrays (LoadModelOptions.recycleImageFeatures); null: off. */
  private featurePool: Float32Array[] | null = [];

  /** @internal use {@link loadModel}. */
  constructor(
    handle: NativeModel,
    tokenizer: Tokenizer,
    template: ChatTemplate | undefined,
    path: string,
    contextSize?: number,
    imageProcessor?: ImageProcessor,
    visualPreprocessing?: VisualPreprocessing,
  ) {
    this.handle = handle;
    this.imageProcessor = imageProcessor;
    this.visualPreprocessing = visualPreprocessing;
    this.info = handle.info();
    this.tokenizer = tokenizer;
    this.chatTemplate = template;
    this.path = path;
    this.contextSize = contextSize;
    this.maxPromptChars = DEFAULT_MAX_PROMPT_CHARS;
    leakGuard.register(this, handle, this);
  }

  /** Where the tokenizer was loaded from (long prompts are encoded from it on a worker thread). */
  private tokenizerSource: TokenizerSource | undefined;

  /** @internal set by loadModel. */
  setSafety(guard: FileGuard | undefined, maxPromptChars: number, tokenizerSource?: TokenizerSource, recycleImageFeatures = true): void {
    if (!recycleImageFeatures) this.featurePool = null;
    this.fileGuard = guard;
    this.maxPromptChars = maxPromptChars;
    this.tokenizerSource = tokenizerSource;
  }

  private checkPromptLength(text: string): void {
    if (typeof text === 'string' && text.length > this.maxPromptChars)
      throw new EmollmError(
        'ERR_LIMIT_EXCEEDED',
        `the prompt has ${text.length} characters, over the limit of ${this.maxPromptChars} (LoadModelOptions.maxPromptChars)`,
      );
  }

  /**
   * {@link tokenize} without blocking the event loop: texts of at least WORKER_MIN_CHARS
   * characters are encoded on the tokenizer worker thread (same tokenizer file, same ids) when the
   * tokenizer was loaded from a file; otherwise (or if the worker cannot start) here.
   */
  async tokenizeAsync(text: string, options: { addSpecialTokens?: boolean; signal?: AbortSignal } = {}): Promise<number[]> {
    this.checkPromptLength(text);
    const addSpecialTokens = options.addSpecialTokens ?? true;
    if (this.tokenizerSource && text.length >= WORKER_MIN_CHARS) {
      try {
        return await encodeOffThread(this.tokenizerSource, text, addSpecialTokens, options.signal);
      } catch (e) {
        if (!(e instanceof EmollmError) || e.code !== 'ERR_INTERNAL') throw e;
        // no worker (e.g. no compiled build to run in it): encode here
      }
    }
    return this.tokenizer.encode(text, { addSpecialTokens });
  }

  /** {@link promptTokens} with long texts tokenized off the main thread (see {@link tokenizeAsync}). */
  private async promptTokensAsync(prompt: Prompt, addSpecialTokens: boolean, signal?: AbortSignal): Promise<number[]> {
    if (typeof prompt === 'string') return this.tokenizeAsync(prompt, { addSpecialTokens, ...(signal ? { signal } : {}) });
    if (isPreparedInput(prompt) || prompt.length === 0 || typeof prompt[0] === 'number') return this.promptTokens(prompt, addSpecialTokens);
    const text = this.applyChatTemplate(prompt as readonly ChatMessage[]);
    const ids = await this.tokenizeAsync(text, { addSpecialTokens: false, ...(signal ? { signal } : {}) });
    const bos = this.tokenizer.bosId;
    if (this.tokenizer.addBosToken && bos !== undefined && ids[0] !== bos) ids.unshift(bos);
    return ids;
  }

  /** Text to token ids (BOS added as the tokenizer is configured, unless `addSpecialTokens: false`). */
  tokenize(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    this.checkPromptLength(text);
    return this.tokenizer.encode(text, { addSpecialTokens: options.addSpecialTokens ?? true });
  }

  /** Token ids to text. */
  detokenize(ids: readonly number[], options: { skipSpecialTokens?: boolean } = {}): string {
    return this.tokenizer.decode(ids, options);
  }

  /** Renders a conversation with the model's chat template (ending with the assistant's turn). */
  applyChatTemplate(messages: readonly ChatMessage[]): string {
    if (!this.chatTemplate)
      throw new EmollmError('ERR_UNSUPPORTED', `${this.path}: the model has no chat template; pass a string prompt`);
    return this.chatTemplate.render(messages, { addGenerationPrompt: true });
  }

  /** Token ids of a prompt (image placeholders unexpanded). */
  promptTokens(prompt: Prompt, addSpecialTokens = true): number[] {
    if (isPreparedInput(prompt)) return [...prompt.tokens];
    if (typeof prompt === 'string') return this.tokenize(prompt, { addSpecialTokens });
    if (prompt.length > 0 && typeof prompt[0] === 'number') return [...(prompt as readonly number[])];
    if (prompt.length === 0) throw new EmollmError('ERR_INVALID_ARGUMENT', 'the prompt is empty');
    // A rendered template carries its own special tokens (e.g. "<s>" in the text).
    const text = this.applyChatTemplate(prompt as readonly ChatMessage[]);
    const ids = this.tokenize(text, { addSpecialTokens: false });
    const bos = this.tokenizer.bosId;
    if (this.tokenizer.addBosToken && bos !== undefined && ids[0] !== bos) ids.unshift(bos);
    return ids;
  }

  /**
   * Logits (unnormalised scores over the vocabulary) after the prompt: of the last position, or
   * of every position with `all: true` (row-major [tokens, nVocab]).
   *
   * The last position's logits come from the sequence scheduler, like generate and scoreOptions:
   * the longest prefix of the prompt already cached there (same tokens, same image features) is
   * not computed again, and the prompt stays cached for the calls after it, so a scoreOptions or
   * generate of the same prompt starts from it (with its last logits: no pass at all).
   */
  logits(prompt: Prompt, options: { all?: boolean; signal?: AbortSignal } = {}): Promise<Float32Array> {
    const preparing = this.prepare(prompt, true, options.signal);
    if (!(options.all ?? false)) return this.lastLogits(preparing, options.signal);
    // observed below once the earlier calls are done; marked handled now so that a prompt that
    // fails early (no chat template, a bad image) is not reported as an unhandled rejection
    preparing.catch(() => undefined);
    return this.exclusive(async (ctx) => {
      const { ids, images, release } = await preparing;
      if (options.signal?.aborted) throw abortError();
      const onAbort = (): void => ctx.abort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      try {
        const all = options.all ?? false;
        if (!images) return await ctx.eval(Int32Array.from(ids), { allLogits: all });
        return await ctx.evalMultimodal(Int32Array.from(ids), images, { allLogits: all });
      } finally {
        release?.();  // the call has settled (or never started): it reads the features no more
        options.signal?.removeEventListener('abort', onAbort);
      }
    });
  }

  private async lastLogits(preparing: Promise<PreparedPrompt>, signal: AbortSignal | undefined): Promise<Float32Array> {
    const prepared = await preparing;
    return this.submitPrepared(prepared, signal, (batch) => batch.logits(Int32Array.from(prepared.ids), prepared.images ?? null));
  }

  /**
   * Submits a prepared prompt's request to the sequences (`submit`), aborted with `signal`. The
   * request reads the prompt's features in place until it settles: only then does a recycled
   * feature array go back to the pool (at once when no request took it).
   */
  private async submitPrepared<T>(
    prepared: PreparedPrompt,
    signal: AbortSignal | undefined,
    submit: (batch: NativeBatch) => NativeSubmission<T>,
  ): Promise<T> {
    let batch: NativeBatch;
    let submitted: NativeSubmission<T>;
    try {
      batch = await this.sequences();
      if (signal?.aborted) throw abortError();
      submitted = submit(batch);
    } catch (e) {
      prepared.release?.();  // no request took the features
      throw e;
    }
    const { id, promise } = submitted;
    const onAbort = (): void => batch.abort(id);
    signal?.addEventListener('abort', onAbort, { once: true });
    return promise.finally(() => {
      prepared.release?.();
      signal?.removeEventListener('abort', onAbort);
    });
  }

  /**
   * Encodes already-normalised pixel values (`[batch, 3, H, W]`, as the image processor makes
   * them) through the vision tower and projector: `[batch, nImageTokens, nEmbd]` features that
   * a {@link PreparedInput} prompt can carry. `options.out`: write them into the caller's array
   * (see {@link ImageEncodeOptions} for the sizes and the lifetime rule).
   */
  async encodePixels(
    pixels: Float32Array,
    batch: number,
    faces?: (readonly FaceBox[] | null | undefined)[],
    options: ImageEncodeOptions = {},
  ): Promise<ImageFeatures> {
    const handle = this.handle;
    if (!handle) throw new EmollmError('ERR_INVALID_ARGUMENT', `${basename(this.path)}: the model is closed`);
    if (!handle.encodeImages) throw new EmollmError('ERR_UNSUPPORTED', `${basename(this.path)} has no vision tower: it cannot take images`);
    const args = encodeArgs(faces, options);
    await this.fileGuard?.check();
    return handle.encodeImages(pixels, batch, ...args);
  }

  /**
   * Generates a continuation. Iterate the returned object for streamed text, or await
   * `.result` for everything at once.
   */
  generate(prompt: Prompt, options: GenerateOptions = {}): Generation {
    // A plain text or token-id prompt is continued: its output's first space is real text.
    const continuation = typeof prompt === 'string' || (Array.isArray(prompt) && typeof prompt[0] === 'number');
    return new Generation(this, this.prepare(prompt, options.addSpecialTokens ?? true, options.signal), options, continuation);
  }

  /** Chat: `generate` over a conversation whose messages may hold image parts. */
  chat(request: { messages: readonly ChatMessage[] } & GenerateOptions): Generation {
    const { messages, ...options } = request;
    return this.generate(messages, options);
  }

  /**
   * Scores candidate answers after a prompt: the log-probability of each option's tokens,
   * sharing one prefill of the prompt (images included) through the KV cache. The primitive
   * that classification tasks use.
   */
  async scoreOptions(prompt: Prompt, options: readonly string[], settings: ScoreOptions = {}): Promise<ScoreResult> {
    if (!Array.isArray(options) || options.length === 0)
      throw new EmollmError('ERR_INVALID_ARGUMENT', 'scoreOptions needs at least one option');
    const conts = options.map((o) => {
      if (typeof o !== 'string' || o === '') throw new EmollmError('ERR_INVALID_ARGUMENT', 'options must be non-empty strings');
      // SentencePiece-style vocabularies encode "Happy" as "▁Happy", i.e. " Happy" after the prompt.
      return this.tokenizer.encode(o, { addSpecialTokens: false });
    });
    const prepared = await this.prepare(prompt, true, settings.signal);
    const r = await this.submitPrepared(prepared, settings.signal, (batch) =>
      batch.score(Int32Array.from(prepared.ids), prepared.images, conts.map((c) => Int32Array.from(c))),
    );
    const scored: ScoredOption[] = options.map((option, i) => {
      const tokenLogprobs = Array.from(r.tokenLogprobs[i] ?? []);
      const logprob = r.logprobs[i] ?? -Infinity;
      return { option, tokens: conts[i]!, logprob, meanLogprob: logprob / Math.max(1, tokenLogprobs.length), tokenLogprobs };
    });
    const scores = scored.map((s) => ((settings.normalize ?? 'mean') === 'mean' ? s.meanLogprob : s.logprob));
    const top = Math.max(...scores);
    const exps = scores.map((v) => Math.exp(v - top));
    const z = exps.reduce((a, b) => a + b, 0);
    const probabilities = exps.map((e) => e / z);
    const order = probabilities.map((p, i) => [p, i] as const).sort((a, b) => b[0] - a[0]);
    const bestIndex = order[0]![1];
    return {
      options: scored,
      probabilities,
      best: options[bestIndex]!,
      bestIndex,
      margin: order.length > 1 ? order[0]![0] - order[1]![0] : 1,
    };
  }

  /**
   * Preprocesses and encodes the images of a prompt (vision tower + projector, or EmoLLM's
   * multi-perspective projection), in order. `faces[i]`: face boxes of image i (EmoLLM).
   * `options.out`: write the features into the caller's array (LLaVA, EmoLLM; see {@link ImageEncodeOptions}).
   */
  async encodeImages(
    images: readonly ImageInput[],
    signal?: AbortSignal,
    faces?: readonly (readonly FaceBox[] | null | undefined)[],
    options: ImageEncodeOptions = {},
  ): Promise<ImageFeatures> {
    const handle = this.handle;
    if (!handle) throw new EmollmError('ERR_INVALID_ARGUMENT', `${basename(this.path)}: the model is closed`);
    if (this.visualPreprocessing) {
      if (options.out !== undefined)
        throw new EmollmError('ERR_UNSUPPORTED', `${basename(this.path)}: out is supported for LLaVA models with one fixed-size image, not LLaVA-NeXT or Qwen2-VL`);
      return this.encodeVisuals(images.map((input) => ({ kind: 'image', input })), signal);
    }
    if (!this.info.vision || !this.imageProcessor || !handle.encodeImages)
      throw new EmollmError('ERR_UNSUPPORTED', `${basename(this.path)} has no vision tower: it cannot take images`);
    if (faces !== undefined && faces.length !== images.length)
      throw new EmollmError('ERR_INVALID_ARGUMENT', `faces has ${faces.length} lists for ${images.length} images`);
    const args = encodeArgs(faces, options);
    const batch = await this.imageProcessor.preprocessBatch(images, signal ? { signal } : {});
    await this.fileGuard?.check();
    return handle.encodeImages(batch.data, images.length, ...args);
  }

  /**
   * LLaVA-NeXT / Qwen2-VL: preprocesses and encodes images and videos (Qwen2-VL only) in order.
   * The features carry `tokenCounts` (and Qwen2-VL `grids`) for eval/generate/score.
   */
  async encodeVisuals(visuals: readonly Visual[], signal?: AbortSignal): Promise<VisualFeatures> {
    const handle = this.handle;
    if (!handle) throw new EmollmError('ERR_INVALID_ARGUMENT', `${basename(this.path)}: the model is closed`);
    if (!this.visualPreprocessing)
      throw new EmollmError('ERR_UNSUPPORTED', `${basename(this.path)} is not a LLaVA-NeXT or Qwen2-VL model`);
    return encodeVisuals(handle, this.visualPreprocessing, visuals, signal);
  }

  /**
   * LLaVA-NeXT: encodes already-preprocessed anyres tiles (`[tiles, 3, S, S]` for all images, base
   * image first per image, as LlavaNextImageProcessor's `pixel_values`) given each image's original
   * `[height, width]`.
   */
  async encodeAnyresPixels(pixels: Float32Array, imageSizes: readonly (readonly [number, number])[]): Promise<VisualFeatures> {
    const handle = this.handle;
    if (!handle) throw new EmollmError('ERR_INVALID_ARGUMENT', `${basename(this.path)}: the model is closed`);
    if (!handle.encodeAnyres) throw new EmollmError('ERR_UNSUPPORTED', `${basename(this.path)} is not a LLaVA-NeXT model`);
    return handle.encodeAnyres(pixels, Int32Array.from(imageSizes.flat()));
  }

  /**
   * Qwen2-VL: encodes already-flattened patches (`[N, 3 * 2 * 14 * 14]`, as Qwen2VLImageProcessor's
   * `pixel_values` / `pixel_values_videos`) with each visual's `[t, h, w]` grid.
   */
  async encodePatches(patches: Float32Array, grids: readonly (readonly [number, number, number])[]): Promise<VisualFeatures> {
    const handle = this.handle;
    if (!handle) throw new EmollmError('ERR_INVALID_ARGUMENT', `${basename(this.path)}: the model is closed`);
    if (!handle.encodePatches) throw new EmollmError('ERR_UNSUPPORTED', `${basename(this.path)} is not a Qwen2-VL model`);
    return handle.encodePatches(patches, Int32Array.from(grids.flat()));
  }

  /** @internal token ids and encoded images of a prompt. */
  async prepare(prompt: Prompt, addSpecialTokens: boolean, signal?: AbortSignal): Promise<PreparedPrompt> {
    if (isPreparedInput(prompt)) return { ids: [...prompt.tokens], images: prompt.images ?? null };
    if (typeof prompt === 'string' || prompt.length === 0 || typeof prompt[0] === 'number')
      return { ids: await this.promptTokensAsync(prompt, addSpecialTokens, signal), images: null };
    const images: ImageInput[] = [];
    const faces: (readonly FaceBox[] | undefined)[] = [];
    const visuals: Visual[] = []; // images and videos in prompt order (LLaVA-NeXT, Qwen2-VL)
    const messages = (prompt as readonly ChatMessage[]).map((m) => {
      if (typeof m.content === 'string') return m;
      const content = m.content.map((part: ChatContentPart): ChatContentPart => {
        if (part.type === 'video') {
          const frames = (part as { frames?: unknown }).frames;
          if (!Array.isArray(frames) || frames.length === 0)
            throw new EmollmError('ERR_INVALID_ARGUMENT', "a video part needs its frames: { type: 'video', frames: [<image>, ...] }");
          if (this.visualPreprocessing?.family !== 'qwen2_vl')
            throw new EmollmError('ERR_UNSUPPORTED', `${basename(this.path)} takes no native video (Qwen2-VL does); pass the frames as images`);
          visuals.push({ kind: 'video', frames: frames as ImageInput[] });
          return { type: 'video' };
        }
        if (part.type !== 'image') return part;
        if ('image' in part && part.image !== undefined) visuals.push({ kind: 'image', input: part.image as ImageInput });
        if (!('image' in part) || part.image === undefined)
          throw new EmollmError('ERR_INVALID_ARGUMENT', "an image part needs its image: { type: 'image', image: <path | Buffer | pixels> }");
        images.push(part.image as ImageInput);
        faces.push((part as Partial<ImagePart>).faces);
        return { type: 'image' }; // the template only needs to know an image stands here
      });
      return { ...m, content };
    });
    const ids = await this.promptTokensAsync(messages, addSpecialTokens, signal);
    if (this.visualPreprocessing) return { ids, images: visuals.length > 0 ? await this.encodeVisuals(visuals, signal) : null };
    const anyFaces = faces.some((f) => f !== undefined && f.length > 0);
    if (images.length === 0) return { ids, images: null };
    const pool = this.featurePool;
    const perImage = (this.info.vision?.nImageTokens ?? 0) * this.info.nEmbd;
    if (!pool || this.info.emollm || perImage <= 0)
      return { ids, images: await this.encodeImages(images, signal, anyFaces ? faces : undefined) };
    // a recycled array (see LoadModelOptions.recycleImageFeatures): taken out of the pool while
    // this prompt holds it, so no other prompt writes into it meanwhile
    const n = images.length * perImage;
    const k = pool.findIndex((a) => a.length === n);
    const out = k >= 0 ? pool.splice(k, 1)[0]! : new Float32Array(n);
    const release = (): void => {
      if (pool.length < 2 && !pool.includes(out)) pool.push(out);
    };
    try {
      return { ids, images: await this.encodeImages(images, signal, anyFaces ? faces : undefined, { out }), release };
    } catch (e) {
      release();  // the encode has settled: nothing writes into the array any more
      throw e;
    }
  }

  /** Frees the native model now. Pending calls finish as aborted. Safe to call twice. */
  async close(): Promise<void> {
    const h = this.handle;
    if (!h) return;
    this.handle = undefined;
    leakGuard.unregister(this);
    this.context = undefined;
    this.batch = undefined; // closed with the model
    this.featurePool?.splice(0);  // the recycled feature arrays go with it
    await h.close();
  }

  /** `await using model = await loadModel(...)` closes the model at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /**
   * Counters of the sequence scheduler: how many calls run and wait now, and how many decode
   * passes ran with several sequences together (all zero before the first generate/score call).
   */
  stats(): SequenceStats {
    if (!this.handle) throw new EmollmError('ERR_INVALID_ARGUMENT', `${basename(this.path)}: the model is closed`);
    if (this.batch) return this.batch.stats();
    return {
      maxSequences: this.maxSequences, batchTokens: this.stepOptions.batchTokens ?? 0, chunkedPrefill: this.stepOptions.chunkedPrefill,
      active: 0, prefilling: 0, queued: 0, steps: 0, batchedSteps: 0, maxBatch: 0, decodedTokens: 0, prefills: 0,
      prefillChunks: 0, prefillTokens: 0, mixedSteps: 0, stepRows: 0, lastStepRows: 0, maxStepRows: 0, prefixCopies: 0,
      prefixWaits: 0, reusedTokens: 0, reusedLogits: 0, kvBlockSize: 0, kvBlocksTotal: 0, kvBlocksUsed: 0, kvBlocksShared: 0,
      kvBlocksCached: 0, kvBytesPerBlock: 0, kvWaits: 0, kvPreemptions: 0, kvRecomputedTokens: 0,
      contextReady: false, prefaultSeconds: 0,
    };
  }

  /** @internal the sequence scheduler (created at the first call), after the weight-file check. */
  async sequences(): Promise<NativeBatch> {
    // The weight files are checked before each call: a truncated mapped file would SIGBUS.
    await this.fileGuard?.check();
    if (!this.handle) throw new EmollmError('ERR_INVALID_ARGUMENT', `${basename(this.path)}: the model is closed`);
    this.batch ??= this.handle.createBatch({
      maxSequences: this.maxSequences,
      ...this.stepOptions,
      ...(this.contextSize === undefined ? {} : { nCtx: this.contextSize }),
    });
    return this.batch;
  }

  /** @internal runs `fn` on the model's context after every earlier call finished. */
  exclusive<T>(fn: (ctx: NativeContext) => Promise<T>): Promise<T> {
    // The weight files are checked before each call: a truncated mapped file would SIGBUS.
    const go = async (): Promise<T> => {
      await this.fileGuard?.check();
      return fn(this.ctx());
    };
    const run = this.queue.then(go, go);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private ctx(): NativeContext {
    if (!this.handle) throw new EmollmError('ERR_INVALID_ARGUMENT', `${basename(this.path)}: the model is closed`);
    this.context ??= this.handle.createContext({
      ...(this.contextSize === undefined ? {} : { nCtx: this.contextSize }),
      ...(this.stepOptions.decodeBf16Products === undefined ? {} : { decodeBf16Products: this.stepOptions.decodeBf16Products }),
    });
    return this.context;
  }
}

/** Longest suffix of `text` that is a proper prefix of some stop string (held back while streaming). */
function heldBackLength(text: string, stops: readonly string[]): number {
  let keep = 0;
  for (const s of stops)
    for (let n = Math.min(s.length - 1, text.length); n > keep; n--)
      if (text.endsWith(s.slice(0, n))) {
        keep = n;
        break;
      }
  return keep;
}

/**
 * A running generation: an async iterator of {@link GenerationChunk}s and a `result` promise.
 * Breaking out of the iteration stops the native decode loop.
 */
export class Generation implements AsyncIterable<GenerationChunk> {
  /** Resolves when generation ends (after any stop string is cut off). */
  readonly result: Promise<GenerationResult>;

  private readonly chunks: GenerationChunk[] = [];
  private wake: (() => void) | undefined;
  private finished = false;
  private failure: unknown;
  private abortNative: (() => void) | undefined;
  private stopRequested = false;

  /** @internal */
  constructor(model: Model, preparing: Promise<PreparedPrompt>, options: GenerateOptions, continuation = false) {
    const stops = (options.stop ?? []).filter((s) => s.length > 0);
    // Replaced once the prompt is known: a continuation of prompt text keeps its first token's
    // leading space ("Once upon a" + "▁time" streams " time"); output that starts the text (an
    // empty or special-tokens-only prompt, or a chat answer) gets the leading-space removal.
    let detok = model.tokenizer.createDetokenizer({ skipSpecialTokens: true });
    const eos = model.tokenizer.eosId;
    let emitted = ''; // text handed to the consumer
    let pending = ''; // text held back: it may be the start of a stop string
    let pendingTokens: number[] = [];
    const tokens: number[] = [];
    let stopString = false;

    const push = (chunk: GenerationChunk): void => {
      this.chunks.push(chunk);
      this.wake?.();
    };

    const onTokens = (ids: Int32Array): void => {
      if (stopString) return;
      for (const id of ids) {
        tokens.push(id);
        pendingTokens.push(id);
        if (id === eos) continue;
        pending += detok.push(id);
        if (stops.length > 0) {
          const hit = stops.map((s) => pending.indexOf(s)).filter((i) => i >= 0);
          if (hit.length > 0) {
            const cut = Math.min(...hit);
            const text = pending.slice(0, cut);
            emitted += text;
            push({ text, tokens: pendingTokens });
            pending = '';
            pendingTokens = [];
            stopString = true;
            this.abortNative?.();
            return;
          }
        }
      }
      const hold = stops.length > 0 ? heldBackLength(pending, stops) : 0;
      const text = pending.slice(0, pending.length - hold);
      if (text.length > 0 || hold === 0) {
        emitted += text;
        push({ text, tokens: pendingTokens });
        pending = pending.slice(pending.length - hold);
        pendingTokens = [];
      }
    };

    // A rejection is reported through `result`; keep it from being "unhandled" meanwhile.
    preparing.catch(() => undefined);
    this.result = (async () => {
      const { ids: prompt, images, release } = await preparing;
      const batch = await model.sequences();
      const specials = new Set([model.tokenizer.bosId, model.tokenizer.eosId]);
      if (continuation && prompt.some((id) => !specials.has(id)))
        detok = model.tokenizer.createDetokenizer({ skipSpecialTokens: true, atStart: false });
      const signal = options.signal;
      if (signal?.aborted) throw abortError();
      let onAbort: (() => void) | undefined;
      let submitted = false;
      try {
        const nativeOptions: Record<string, unknown> = {
          maxTokens: options.maxTokens ?? 256,
          temperature: options.temperature ?? 0,
          topK: options.topK ?? 40,
          topP: options.topP ?? 0.95,
          repetitionPenalty: options.repetitionPenalty ?? 1,
          repeatLastN: options.repeatLastN ?? 64,
          stopTokens: Int32Array.from(options.stopTokens ?? []),
        };
        if (options.seed !== undefined) nativeOptions.seed = options.seed;
        // submitted now: it runs beside the model's other sequences, or waits for a slot (FIFO)
        const { id, promise } = batch.generate(Int32Array.from(prompt), nativeOptions, onTokens, images);
        submitted = true;
        // the request reads the features in place until it settles: only then back to the pool
        const settled = release ? promise.finally(release) : promise;
        onAbort = (): void => batch.abort(id);
        this.abortNative = onAbort;
        signal?.addEventListener('abort', onAbort, { once: true });
        if (this.stopRequested) onAbort();
        const r = await settled;
        if (signal?.aborted) throw abortError();
        if (!stopString) {
          // Tokens not yet delivered through the callback (the native side may finish first).
          const seen = tokens.length;
          if (r.tokens.length > seen) onTokens(r.tokens.subarray(seen));
          const rest = pending + detok.flush();
          if (rest.length > 0 || pendingTokens.length > 0) {
            emitted += rest;
            push({ text: rest, tokens: pendingTokens });
          }
        }
        const stopReason: StopReason = stopString ? 'stop-string' : r.stopReason;
        return { text: emitted, tokens, promptTokens: prompt.length, stopReason };
      } finally {
        if (!submitted) release?.();  // no request took the features
        if (onAbort) signal?.removeEventListener('abort', onAbort);
      }
    })();
    this.result.then(
      () => this.finish(undefined),
      (e: unknown) => this.finish(e),
    );
  }

  private finish(error: unknown): void {
    this.finished = true;
    this.failure = error;
    this.wake?.();
  }

  /** Stops generation; `result` then resolves with stopReason 'aborted'. */
  stop(): void {
    this.stopRequested = true;
    this.abortNative?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<GenerationChunk> {
    try {
      for (;;) {
        const chunk = this.chunks.shift();
        if (chunk) {
          yield chunk;
          continue;
        }
        if (this.finished) {
          if (this.failure !== undefined) throw this.failure;
          return;
        }
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
      }
    } finally {
      if (!this.finished) {
        this.stop();
        await this.result.catch(() => undefined);
      }
    }
  }
}
