/**
 * Hugging Face `config.json` as typed model configs. Absent (or null) fields take transformers'
 * defaults, as transformers' own config classes do — e.g. llava-1.5's `text_config` names only a
 * few fields and the rest are LlamaConfig's defaults (hidden 4096, 32 layers, 32 heads, ...).
 * Both transformers 4 (`rope_theta`, `rope_scaling`, `torch_dtype`) and 5 (`rope_parameters`,
 * `dtype`) spellings are read.
 *
 * Errors reject with an {@link EmollmError}: `ERR_BAD_CONFIG` for an unknown `model_type` (named
 * in the message) or a field of the wrong type or out of range (named, e.g.
 * `text_config.hidden_size`), `ERR_MALFORMED_FILE` for invalid JSON (with the byte offset),
 * `ERR_FILE_NOT_FOUND` for a missing file.
 */
import { EmollmError } from './errors.js';
import { native } from './native.js';

export type RopeType = 'default' | 'linear' | 'dynamic' | 'yarn' | 'longrope' | 'llama3';

/** RoPE scaling (`rope_scaling`, or `rope_parameters` in transformers 5). */
export interface RopeScaling {
  /** 'default' when the config has no scaling. */
  ropeType: RopeType;
  factor: number;
  /** llama3 */
  lowFreqFactor: number;
  /** llama3 */
  highFreqFactor: number;
  /** llama3 / yarn / longrope; null when absent. */
  originalMaxPositionEmbeddings: number | null;
  /** yarn */
  betaFast: number;
  /** yarn */
  betaSlow: number;
  /** yarn / longrope; null when absent. */
  attentionFactor: number | null;
}

/** A LLaMA-style decoder (`model_type` "llama" or "mistral"). */
export interface LlamaConfig {
  modelType: 'llama' | 'mistral';
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  /** Defaults to numAttentionHeads (8 for mistral). */
  numKeyValueHeads: number;
  /** Defaults to hiddenSize / numAttentionHeads. */
  headDim: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  tieWordEmbeddings: boolean;
  attentionBias: boolean;
  mlpBias: boolean;
  hiddenAct: string;
  /** Token ids: a config may give one id or a list; empty when null. */
  bosTokenId: number[];
  eosTokenId: number[];
  padTokenId: number[];
  /** "float32", "float16", "bfloat16", or null when absent. */
  torchDtype: string | null;
  /** Mistral's sliding attention window; null for none. */
  slidingWindow: number | null;
  /** Qwen2 decoders: biases on q/k/v (not o). */
  qkvBias?: boolean;
  /** Qwen2-VL: M-RoPE frequency sections (temporal, height, width), summing to headDim / 2. */
  mropeSection?: number[];
}

/** A CLIP vision tower (`model_type` "clip_vision_model"). */
export interface ClipVisionConfig {
  modelType: 'clip_vision_model';
  hiddenSize: number;
  intermediateSize: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  imageSize: number;
  patchSize: number;
  numChannels: number;
  layerNormEps: number;
  hiddenAct: string;
  projectionDim: number;
  torchDtype: string | null;
  /** (imageSize / patchSize)^2 */
  numPatches: number;
  /** hiddenSize / numAttentionHeads */
  headDim: number;
}

/** LLaVA (`model_type` "llava"): a CLIP tower, a 2-layer MLP projector and a LLaMA decoder. */
export interface LlavaConfig {
  textConfig: LlamaConfig;
  visionConfig: ClipVisionConfig;
  /** `image_token_index` (`image_token_id` in transformers 5). */
  imageTokenIndex: number;
  projectorHiddenAct: string;
  /** Which CLIP hidden state feeds the projector: one index (usually -2) or a list (concatenated). */
  visionFeatureLayer: number | number[];
  /** 'default' drops the CLS token, 'full' keeps it. */
  visionFeatureSelectStrategy: 'default' | 'full';
  imageSeqLength: number;
  multimodalProjectorBias: boolean;
  tieWordEmbeddings: boolean;
  padTokenId: number[];
  torchDtype: string | null;
  /** LLaVA-NeXT (`model_type` "llava_next"): anyres grid pinpoints, `[height, width]` in pixels. */
  imageGridPinpoints?: [number, number][];
}

/** Qwen2-VL (`model_type` "qwen2_vl"): a ViT with 2-D RoPE and a 2x2 patch merger, a Qwen2 decoder with M-RoPE. */
export interface Qwen2VLConfig {
  textConfig: LlamaConfig;
  visionConfig: {
    depth: number;
    embedDim: number;
    /** The merger's output width (the decoder's hidden size). */
    hiddenSize: number;
    numHeads: number;
    mlpRatio: number;
    inChannels: number;
    patchSize: number;
    spatialMergeSize: number;
    temporalPatchSize: number;
    hiddenAct: string;
    ropeTheta: number;
  };
  imageTokenId: number;
  videoTokenId: number;
  visionStartTokenId: number;
  visionEndTokenId: number;
  tieWordEmbeddings: boolean;
}

interface ConfigBase {
  /** The config's `model_type`. */
  modelType: string;
  /** The config's `architectures` (may be empty). */
  architectures: string[];
}

/** A parsed config.json; switch on `kind`. */
export type ModelConfig =
  | (ConfigBase & { kind: 'llama'; config: LlamaConfig })
  | (ConfigBase & { kind: 'clip_vision'; config: ClipVisionConfig })
  | (ConfigBase & { kind: 'llava'; config: LlavaConfig })
  | (ConfigBase & { kind: 'qwen2_vl'; config: Qwen2VLConfig });

/** Reads a Hugging Face config.json (or the config.json in a model directory). */
export async function readConfig(path: string): Promise<ModelConfig> {
  if (typeof path !== 'string' || path.length === 0)
    throw new EmollmError('ERR_INVALID_ARGUMENT', 'path must be a non-empty string');
  return (await native().readConfig(path)) as ModelConfig;
}
