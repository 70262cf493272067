/**
 * emollm: multimodal emotional understanding (EmoLLM) on a native C++/CUDA inference core.
 *
 * This entry point re-exports the public, typed API.
 */
export { EmollmError, isEmollmError } from './errors.js';
export type { EmollmErrorCode, EmollmErrorOptions } from './errors.js';
export { cpuInfo, configure, gemm, quantize, dequantize, DTYPES } from './kernels.js';
export type { CpuInfo, DType, GemmArgs, Isa, KernelOptions } from './kernels.js';
export * from './loaders.js';
export * from './config.js';
export * from './tokenizer.js';
export * from './chat_template.js';
export * from './model.js';
export { DEVICES, runtimeInfo, runtimeOptions } from './runtime.js';
export type { RuntimeInfo, RuntimeOptions } from './runtime.js';
export * from './gguf_writer.js';
export * from './quantize.js';
export * from './image.js';
export { initMvp, type InitMvpOptions, type InitMvpResult, type EmollmSection, type EmollmPerspectiveConfig } from './init_mvp.js';
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
export * from './face.js';
