/**
 * Re-quantizing GGUF models: every 2-D weight matrix whose rows are whole blocks of the target
 * type is converted to it (ggml's reference quantizers, the same bytes llama.cpp's reference path
 * writes); for the k-quants, matrices whose rows are not whole 256-element super-blocks fall back
 * as llama-quantize does (q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0); norms, biases and matrices
 * with rows that fit neither keep their type. A dtype target gives every matrix that type (like
 * `llama-quantize --pure`); a preset target (Q4_K_M, Q5_K_M, Q4_K_S, Q5_K_S) chooses per tensor as
 * llama.cpp's presets do (lib/quantize_mix.ts), then applies the same fallback.
 */
import { EmollmError } from './errors.js';
import { writeGguf, type GgufMetadataEntry, type GgufTensorSpec, type GgufType } from './gguf_writer.js';
import { dequantize, quantize } from './kernels.js';
import { inspectGguf, type ComputeDType, type TensorInfo } from './loaders.js';
import { MIX_FILE_TYPE, QUANT_MIXES, mixChooser, mixModelInfo, type QuantMix } from './quantize_mix.js';
import { openRegularFile, sameFile } from './safe_fs.js';

export interface QuantizeResult {
  /** Tensors converted to the target type. */
  converted: string[];
  /** Tensors kept as they were (1-D, or rows that are not whole blocks). */
  kept: string[];
  /** Converted tensors that got the k-quant fallback type instead of the target, by name. */
  fallbacks: Record<string, ComputeDType>;
  /** The type of every tensor in the output, by name. */
  types: Record<string, ComputeDType>;
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

/** The type a matrix with rows of `inner` elements gets for `target` (after the fallback), or null to keep it. */
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
export async function quantizeGguf(input: string, output: string, target: ComputeDType | QuantMix): Promise<QuantizeResult> {
  const mix = (QUANT_MIXES as readonly string[]).includes(target) ? (target as QuantMix) : null;
  if (!mix && !(target in FILE_TYPE))
    throw new EmollmError('ERR_INVALID_ARGUMENT', `unknown target type ${JSON.stringify(target)} (a dtype or one of ${QUANT_MIXES.join(', ')})`);
  const fileType = mix ? MIX_FILE_TYPE[mix] : FILE_TYPE[target as ComputeDType];
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
    value: key === 'general.file_type' ? fileType : value,
    type: (info.metadataTypes[key] ?? 'string') as GgufType,
  }));
  if (!('general.file_type' in info.metadata)) metadata.push({ key: 'general.file_type', type: 'u32', value: fileType });

  // Per tensor, before the fallback: the mix's choice (its counters advance in file order, over
  // the matrices llama.cpp would quantize), or the one dtype.
  const choose = mix ? mixChooser(mix, mixModelInfo(info.metadata, info.tensors.map((t) => t.name))) : () => target as ComputeDType;
  const result: QuantizeResult = { converted: [], kept: [], fallbacks: {}, types: {} };
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
      const wanted = t.shape.length === 2 ? choose(t.name, inner) : null;
      const to = wanted ? typeFor(wanted, inner) : null;
      const convert = to !== null && from !== to;
      (convert ? result.converted : result.kept).push(t.name);
      if (convert && to !== wanted) result.fallbacks[t.name] = to;
      result.types[t.name] = convert ? to : from;
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
