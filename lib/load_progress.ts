/**
 * Progress of loading a model. Weights are memory-mapped, so the native load itself only maps the
 * files; on a cold disk the time goes into page faults during the first forward pass, which nothing
 * can report. When the caller asks for progress, emollm therefore reads the weight files through
 * once first, in large sequential chunks on libuv's threads (never the event loop), counting bytes:
 * the page cache then holds them, the map finds them there, and the first generation does not stall.
 * The same bytes are not copied anywhere (one reused buffer). Cancellable through the AbortSignal.
 * Costs a second pass over the disk only where the model does not fit in free memory.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { basename, join } from 'node:path';

import { EmollmError } from './errors.js';

/** What {@link LoadModelOptions.onProgress} receives. */
export interface LoadProgress {
  /** 'read': weight bytes read from disk so far; 'load': the native load (maps, converts, builds the model) started or ended. */
  phase: 'read' | 'load';
  /** The file being read (phase 'read'). */
  file: string;
  /** Bytes of all weight files read so far, and in all. */
  bytes: number;
  total: number;
  /** Phase 'load': false when it starts, true when the model is ready. */
  done: boolean;
}

const CHUNK = 8 << 20;

/** The weight files a model path loads: the .gguf itself, or a folder's .safetensors (and an mmproj). */
export function weightFiles(path: string, mmproj?: string): string[] {
  const files: string[] = [];
  if (statSync(path).isDirectory()) {
    for (const f of readdirSync(path).sort()) if (f.endsWith('.safetensors') && statSync(join(path, f)).isFile()) files.push(join(path, f));
  } else files.push(path);
  if (mmproj && existsSync(mmproj)) files.push(mmproj);
  return files;
}

/** Reads `files` through (warming the page cache), reporting progress at most every 8 MiB. */
export async function readThrough(files: readonly string[], onProgress: (p: LoadProgress) => void, signal?: AbortSignal): Promise<number> {
  const sizes = files.map((f) => statSync(f).size);
  const total = sizes.reduce((a, b) => a + b, 0);
  const buf = Buffer.allocUnsafe(CHUNK);
  let bytes = 0;
  for (const file of files) {
    const fh = await open(file, 'r');
    try {
      onProgress({ phase: 'read', file: basename(file), bytes, total, done: false });
      for (;;) {
        if (signal?.aborted) throw new EmollmError('ERR_ABORTED', 'the operation was aborted');
        const { bytesRead } = await fh.read(buf, 0, CHUNK, null);
        if (bytesRead === 0) break;
        bytes += bytesRead;
        onProgress({ phase: 'read', file: basename(file), bytes, total, done: false });
      }
    } finally {
      await fh.close();
    }
  }
  return total;
}
