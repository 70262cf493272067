/**
 * emollm: multimodal emotional understanding (EmoLLM) on a native C++/CUDA inference core.
 *
 * This entry point re-exports the public, typed API.
 */
export { EmollmError, isEmollmError } from './errors.js';
export type { EmollmErrorCode, EmollmErrorOptions } from './errors.js';
export { cpuInfo, configure, gemm, attention, mvpProjection, quantize, dequantize, readBandwidth, DTYPES } from './kernels.js';
export type { AttentionArgs, CpuInfo, DType, GemmArgs, Isa, KernelOptions, MvpProjectionArgs, ReadBandwidth, ReadBandwidthOptions, ResultOut } from './kernels.js';
export * from './loaders.js';
export * from './config.js';
export * from './tokenizer.js';
export * from './chat_template.js';
export * from './model.js';
export { DEVICES, isDevice, runtimeInfo, runtimeOptions } from './runtime.js';
export type { RuntimeInfo, RuntimeOptions } from './runtime.js';
export * from './gguf_writer.js';
export * from './quantize.js';
export { convertQwen2VLToGguf, type Qwen2VLGgufPaths } from './convert_qwen2vl.js';
export { QUANT_MIXES, useMoreBits, type QuantMix } from './quantize_mix.js';
export * from './image.js';
export {
  anyresPreprocess,
  anyresTokenCount,
  parseGridPinpoints,
  selectBestResolution,
  type AnyresPixels,
  type GridPinpoint,
} from './image_processor_llava_next.js';
export {
  parseQwen2VLProcessorConfig,
  qwen2vlPatches,
  smartResize,
  type Qwen2VLPatches,
  type Qwen2VLProcessorConfig,
} from './image_processor_qwen2_vl.js';
export type { VideoPart, Visual, VisualFeatures } from './visual_input.js';
export { initMvp, type InitMvpOptions, type InitMvpResult, type EmollmSection, type EmollmPerspectiveConfig } from './init_mvp.js';
export { trainMvp, type TrainMvpOptions, type TrainMvpResult, type TrainStepInfo, type TrainEvalInfo, type TrainPhaseSeconds } from './train/train_mvp.js';
export { PERSPECTIVE_KINDS, perspectiveKind, type PerspectiveKind, type PerspectiveType } from './perspectives.js';
export * from './taxonomies.js';
export * from './emoprompt.js';
export {
  CANONICAL_EMOTIONS,
  EMOTION_LEXICON,
  EMOTION_TO_TAXONOMY,
  findEmotionMentions,
  isEmotionTaxonomy,
  mapEmotion,
  parseEmotion,
} from './emotion_lexicon.js';
export type { CanonicalEmotion, EmotionMention, EmotionParse, EmotionTaxonomyId } from './emotion_lexicon.js';
export * from './decode_result.js';
export * from './analyze.js';
export { askModel, buildModelPrompt, perceive, sharedFaceAnalyzer, type ModelAnswer, type ModelPromptOptions, type Perception, type PerceiveOptions } from './perception.js';
export * from './face.js';
export * from './emobench/index.js';
export { pull, parseRepoSpec, parseHfPath, resolveHfPath, hubCacheDir, repoCacheDir, DEFAULT_HUB_ENDPOINT } from './hub.js';
export type { PullOptions, PullProgress, PullResult, PulledFile, RepoSpec, HfPath } from './hub.js';
export type { LoadProgress } from './load_progress.js';
