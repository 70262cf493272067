/**
 * The on-disk cache of frozen vision-tower features used by train-mvp: one file per (image bytes,
 * tower) pair, `<dir>/<towerKey>/<sha256 of the image bytes>.f32` (raw little-endian f32): an
 * image file's bytes, or a sampled video frame's PNG bytes. The
 * tower never changes during training, so each image runs through it once per model, across
 * epochs and runs. Files are written atomically; a file of the wrong size is recomputed.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

import { EmollmError } from '../errors.js';
import { writeFileAtomic } from '../safe_fs.js';

export class FeatureCache {
  private readonly dir: string;
  private readonly memo = new Map<string, Float32Array>();
  /** Hits and misses of this instance (progress, tests). */
  hits = 0;
  misses = 0;

  /** `towerKey` names the tower (weights, layers, preprocessing); `maxMemoryBytes` bounds the in-memory copies. */
  constructor(
    root: string,
    towerKey: string,
    private readonly maxMemoryBytes = 256 << 20,
  ) {
    this.dir = join(root, towerKey);
  }

  private memoBytes = 0;

  /** The features of the image file at `path`, computed by `compute(bytes)` on a miss. */
  async get(path: string, compute: (bytes: Uint8Array) => Promise<Float32Array>): Promise<Float32Array> {
    const bytes = await readFile(path).catch((cause: unknown) => {
      throw new EmollmError('ERR_FILE_NOT_FOUND', `${path}: cannot read the image`, { file: path, cause });
    });
    return this.getBytes(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), compute);
  }

  /** The features of an encoded image (e.g. a video frame's PNG), computed by `compute(bytes)` on a miss. */
  async getBytes(bytes: Uint8Array, compute: (bytes: Uint8Array) => Promise<Float32Array>): Promise<Float32Array> {
    const key = createHash('sha256').update(bytes).digest('hex');
    const m = this.memo.get(key);
    if (m) {
      this.hits++;
      return m;
    }
    const file = join(this.dir, `${key}.f32`);
    const cached = await readFile(file).catch(() => undefined);
    let feats: Float32Array;
    if (cached && cached.byteLength > 0 && cached.byteLength % 4 === 0) {
      feats = new Float32Array(cached.byteLength / 4);
      new Uint8Array(feats.buffer).set(cached);
      this.hits++;
    } else {
      feats = await compute(bytes);
      await mkdir(this.dir, { recursive: true });
      await writeFileAtomic(file, new Uint8Array(feats.buffer, feats.byteOffset, feats.byteLength));
      this.misses++;
    }
    if (this.memoBytes + feats.byteLength <= this.maxMemoryBytes) {
      this.memo.set(key, feats);
      this.memoBytes += feats.byteLength;
    }
    return feats;
  }
}
