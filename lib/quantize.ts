/**
 * Re-quantizing GGUF models: every 2-D weight matrix whose rows are whole blocks of the target
 * type is converted to it (ggml's reference quantizers, the same bytes llama.cpp's reference path
 * writes); for the k-quants, matrices whose rows are not whole 256-element super-blocks fall back
 * as llama-quantize does (q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0); norms, biases and matrices
 * with rows that fit neither keep their type. Every matrix gets the same type (no per-tensor mix
 * as in llama.cpp's Q4_K_M / Q5_K_M presets: like `llama-quantize --pure`).
 */
import { EmollmError } from './errors.js';
import { writeGguf, type GgufMetadataEntry, type GgufTensorSpec, type GgufType } from './gguf_writer.js';
import { dequantize, quantize } from './kernels.js';
import { inspectGguf, type ComputeDType, type TensorInfo } from './loaders.js';
import { openRegularFile, sameFile } from './safe_fs.js';

export interface QuantizeResult {
  /** Tensors converted to the target type. */
  converted: string[];
  /** Tensors kept as they were (1-D, or rows that are not whole blocks). */
  kept: string[];
  /** Converted tensors that got the k-quant fallback type instead of the target, by name. */
  fallbacks: Record<string, ComputeDType>;
}

/** llama.cpp's general.file_type values. */
const FILE_TYPE: Record<ComputeDType, number> = {
  f32: 0, f16: 1, q4_0: 2, q4_1: 3, q8_0: 7, q5_0: 8, q5_1: 9, q4_K: 14, q5_K: 16, q6_K: 18, bf16: 32,
};

function blockElems(t: ComputeDType): number {
  if (t === 'q4_K' || t === 'q5_K' || t === 'q6_K') return 256;
  return t === 'f32' || t === 'f16' || t === 'bf16' ? 1 : 32;
}

/** llama.cpp's tensor_type_fallback for rows that are not whole 256-element super-blocks. */
const KQUANT_FALLBACK: Partial<Record<ComputeDType, ComputeDType>> = { q4_K: 'q5_0', q5_K: 'q5_1', q6_K: 'q8_0' };

/** The type a matrix with rows of `inner` elements gets for `target`, or null to keep it. */
function typeFor(target: ComputeDType, inner: number): ComputeDType | null {
  if (inner % blockElems(target) === 0) return target;
  const fb = KQUANT_FALLBACK[target];
  return fb && inner % blockElems(fb) === 0 ? fb : null;
}

/**
 * Writes `output`: `input` (a GGUF file) with its weight matrices converted to `target`. The
 * output is written to a temporary file and renamed into place when complete, so `input` is never
 * touched; an `output` that is the input (same real path or inode: the same path, a symlink or a
 * hard link to it) rejects with `ERR_OUTPUT_EXISTS` before anything is written.
 */
export async function quantizeGguf(input: string, output: string, target: ComputeDType): Promise<QuantizeResult> {
  if (!(target in FILE_TYPE)) throw new EmollmError('ERR_INVALID_ARGUMENT', `unknown target type ${JSON.stringify(target)}`);
  if (await sameFile(input, output))
    throw new EmollmError('ERR_OUTPUT_EXISTS', `${output} is the input file ${input} (same path, link or inode): quantize would destroy it; choose another output`, { file: output });
  const { fh } = await openRegularFile(input);
  let info: Awaited<ReturnType<typeof inspectGguf>>;
  try {
    info = await inspectGguf(input);
  } catch (e) {
    await fh.close();
    throw e;
  }
  const metadata: GgufMetadataEntry[] = Object.entries(info.metadata).map(([key, value]) => ({
    key,
    value: key === 'general.file_type' ? FILE_TYPE[target] : value,
    type: (info.metadataTypes[key] ?? 'string') as GgufType,
  }));
  if (!('general.file_type' in info.metadata)) metadata.push({ key: 'general.file_type', type: 'u32', value: FILE_TYPE[target] });

  const result: QuantizeResult = { converted: [], kept: [], fallbacks: {} };
  try {
    const read = async (t: TensorInfo): Promise<Uint8Array> => {
      const b = Buffer.alloc(t.nbytes);
      const { bytesRead } = await fh.read(b, 0, t.nbytes, t.offset);
      if (bytesRead !== t.nbytes) throw new EmollmError('ERR_MALFORMED_FILE', `${input}: short read of tensor ${t.name}`, { file: input });
      return b;
    };
    const tensors: GgufTensorSpec[] = info.tensors.map((t) => {
      if (!t.computeDtype)
        throw new EmollmError('ERR_UNSUPPORTED', `${input}: tensor ${t.name} has type ${t.dtype}, which emollm cannot convert`, { file: input });
      const from = t.computeDtype;
      const inner = t.shape[t.shape.length - 1] ?? 1;
      const to = t.shape.length === 2 ? typeFor(target, inner) : null;
      const convert = to !== null && from !== to;
      (convert ? result.converted : result.kept).push(t.name);
      if (convert && to !== target) result.fallbacks[t.name] = to;
      const n = t.shape.reduce((a, b) => a * b, 1);
      return {
        name: t.name,
        shape: t.shape,
        dtype: convert ? to : from,
        data: async () => {
          const raw = await read(t);
          return convert ? quantize(dequantize(raw, from, n), to) : raw;
        },
      };
    });
    await writeGguf(output, metadata, tensors);
  } finally {
    await fh.close();
  }
  return result;
}
