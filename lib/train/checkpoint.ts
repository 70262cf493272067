/**
 * The files of a train-mvp output folder:
 *   config.json               the starting checkpoint's, with the trained perspectives' gates
 *   emollm_mvp.safetensors    the MVP weights (trained tensors as F32, the others as stored)
 *   <base files>              symlinks to the starting checkpoint's other files
 *   train-state.safetensors   f32 master weights + AdamW moments, metadata { step, runKey }
 * Every file is written atomically (temp file + rename), so a killed run leaves the previous
 * checkpoint intact.
 */
import { lstat, mkdir, readdir, readFile, realpath, stat, symlink } from 'node:fs/promises';
import { join } from 'node:path';

import { EmollmError } from '../errors.js';
import { writeSafetensors } from '../init_mvp.js';

export interface StTensorData {
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

/** Reads a whole safetensors file (small files: MVP weights, trainer state). */
export async function readSafetensors(file: string): Promise<{ tensors: Record<string, StTensorData>; metadata: Record<string, string> }> {
  const buf = await readFile(file).catch((cause: unknown) => {
    throw new EmollmError('ERR_FILE_NOT_FOUND', `${file}: cannot read`, { file, cause });
  });
  if (buf.length < 8) throw new EmollmError('ERR_MALFORMED_FILE', `${file}: not a safetensors file`, { file });
  const n = Number(buf.readBigUInt64LE(0));
  if (n <= 0 || 8 + n > buf.length) throw new EmollmError('ERR_MALFORMED_FILE', `${file}: bad safetensors header length`, { file });
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  } catch (cause) {
    throw new EmollmError('ERR_MALFORMED_FILE', `${file}: bad safetensors header`, { file, cause });
  }
  const metadata = (header.__metadata__ ?? {}) as Record<string, string>;
  delete header.__metadata__;
  const base = 8 + n;
  const tensors: Record<string, StTensorData> = {};
  for (const [name, e] of Object.entries(header)) {
    const { dtype, shape, data_offsets: off } = e as { dtype: string; shape: number[]; data_offsets: [number, number] };
    if (!Array.isArray(off) || off[0] > off[1] || base + off[1] > buf.length)
      throw new EmollmError('ERR_MALFORMED_FILE', `${file}: tensor ${name} lies outside the file`, { file });
    // copy: the result outlives `buf` views and must be 4-byte aligned for Float32Array
    const data = new Uint8Array(off[1] - off[0]);
    data.set(buf.subarray(base + off[0], base + off[1]));
    tensors[name] = { dtype, shape, data };
  }
  return { tensors, metadata };
}

export function f32Data(v: Float32Array): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

export function asF32(t: StTensorData): Float32Array {
  return new Float32Array(t.data.buffer, t.data.byteOffset, t.data.byteLength / 4);
}

/**
 * Links the starting checkpoint's files (but config.json and the MVP weights) into the output
 * folder. Files already there are kept (a resumed run).
 */
export async function linkBaseFiles(modelDir: string, outDir: string, weightsName: string): Promise<void> {
  await mkdir(outDir, { recursive: true });
  for (const name of await readdir(modelDir)) {
    if (name === 'config.json' || name === weightsName) continue;
    const from = join(modelDir, name);
    const st = await stat(from).catch(() => undefined);
    if (!st || !st.isFile()) continue;
    const to = join(outDir, name);
    if (await lstat(to).catch(() => undefined)) continue;
    await symlink(await realpath(from), to);
  }
}

/** Writes the MVP weights: `source` tensors with the trained ones replaced (F32). */
export async function writeMvpWeights(
  file: string,
  source: Record<string, StTensorData>,
  trained: readonly { name: string; shape: number[]; value: Float32Array }[],
  metadata: Record<string, string>,
): Promise<void> {
  const t: Record<string, StTensorData> = { ...source };
  for (const p of trained) t[p.name] = { dtype: 'F32', shape: p.shape, data: f32Data(p.value) };
  await writeSafetensors(file, t, { format: 'pt', ...metadata });
}

export interface TrainerState {
  step: number;
  runKey: string;
  params: { name: string; shape: number[]; value: Float32Array; m: Float32Array; v: Float32Array }[];
}

export async function writeTrainerState(file: string, s: TrainerState): Promise<void> {
  const t: Record<string, StTensorData> = {};
  for (const p of s.params) {
    t[p.name] = { dtype: 'F32', shape: p.shape, data: f32Data(p.value) };
    t[`${p.name}.adam_m`] = { dtype: 'F32', shape: p.shape, data: f32Data(p.m) };
    t[`${p.name}.adam_v`] = { dtype: 'F32', shape: p.shape, data: f32Data(p.v) };
  }
  await writeSafetensors(file, t, { emollm: 'train-mvp-state', step: String(s.step), runKey: s.runKey, order: JSON.stringify(s.params.map((p) => p.name)) });
}

export async function readTrainerState(file: string): Promise<TrainerState> {
  const { tensors, metadata } = await readSafetensors(file);
  const step = Number(metadata.step);
  if (metadata.emollm !== 'train-mvp-state' || !Number.isInteger(step) || step < 0 || typeof metadata.runKey !== 'string')
    throw new EmollmError('ERR_MALFORMED_FILE', `${file}: not a train-mvp state`, { file });
  const order = JSON.parse(metadata.order ?? '[]') as string[];
  const params = order.map((name) => {
    const v = tensors[name], m = tensors[`${name}.adam_m`], s2 = tensors[`${name}.adam_v`];
    if (!v || !m || !s2 || v.dtype !== 'F32') throw new EmollmError('ERR_MALFORMED_FILE', `${file}: tensor ${name} or its moments are missing`, { file });
    return { name, shape: v.shape, value: asF32(v), m: asF32(m), v: asF32(s2) };
  });
  return { step, runKey: metadata.runKey, params };
}
