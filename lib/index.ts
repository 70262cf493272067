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
export * from './gguf_writer.js';
export * from './quantize.js';
export * from './image.js';
