/**
 * Per-media-file cache of the face perspective for an EmoBench run: many samples share one file
 * (EmoSet's emo-c and emo-o samples, a meme scored for several tasks), and each file's frames are
 * sampled and its faces found once. The face findings (small) are kept for the whole run; the
 * sampled video frames (PNG buffers) are kept in a byte-bounded LRU, and a file whose frames were
 * evicted is sampled again (same times, same frames) with its cached faces.
 */
import type { FaceAnalyzer } from '../face.js';
import { perceive, type Perception } from '../perception.js';

export interface PerceptionCacheOptions {
  /** Video frames sampled per file (default 8, as `analyze`). */
  frames?: number;
  /** The face perspective: an analyzer, the shared one (default), or `false` for none. */
  faces?: FaceAnalyzer | false;
  /** Bytes of sampled video frames kept (default 256 MiB). */
  maxFrameBytes?: number;
}

export class PerceptionCache {
  /** Files perceived (frames sampled + faces found) and cache hits. */
  readonly stats = { files: 0, hits: 0, resampled: 0 };
  private readonly done = new Map<string, Promise<Perception>>();
  private readonly resolved = new Map<string, Perception>();
  private readonly frameBytes = new Map<string, number>();
  private bytes = 0;
  private readonly maxBytes: number;

  constructor(private readonly options: PerceptionCacheOptions = {}) {
    this.maxBytes = options.maxFrameBytes ?? 256 * 1024 * 1024;
  }

  /** Whether the face perspective runs. */
  get face(): boolean {
    return this.options.faces !== false;
  }

  /** The perception of a media file (an absolute path), computed once. */
  async get(path: string, video: boolean, signal?: AbortSignal): Promise<Perception> {
    const hit = this.done.get(path);
    if (hit) {
      const p = await hit;
      if (!p.images.some((f) => f.image === EVICTED)) {
        this.stats.hits++;
        this.touch(path);
        return p;
      }
      // frames evicted: sample them again, keep the faces found the first time
      this.stats.resampled++;
      const again = await perceive(path, {
        video,
        ...(this.options.frames !== undefined ? { frames: this.options.frames } : {}),
        faces: false,
        ...(signal ? { signal } : {}),
      });
      const restored: Perception = { ...p, images: again.images.map((f, i) => ({ ...f, width: p.images[i]?.width, height: p.images[i]?.height })) };
      this.done.set(path, Promise.resolve(restored));
      this.resolved.set(path, restored);
      this.account(path, restored);
      return restored;
    }
    this.stats.files++;
    const pending = perceive(path, {
      video,
      ...(this.options.frames !== undefined ? { frames: this.options.frames } : {}),
      ...(this.options.faces !== undefined ? { faces: this.options.faces } : {}),
      ...(signal ? { signal } : {}),
    });
    this.done.set(path, pending);
    try {
      const p = await pending;
      this.resolved.set(path, p);
      this.account(path, p);
      return p;
    } catch (e) {
      this.done.delete(path); // a failure (abort, unreadable file) is not cached
      throw e;
    }
  }

  private touch(path: string): void {
    const n = this.frameBytes.get(path);
    if (n === undefined) return;
    this.frameBytes.delete(path);
    this.frameBytes.set(path, n);
  }

  private account(path: string, p: Perception): void {
    const n = p.images.reduce((a, f) => a + (f.image instanceof Uint8Array ? f.image.byteLength : 0), 0);
    if (n === 0) return;
    this.bytes -= this.frameBytes.get(path) ?? 0;
    this.frameBytes.delete(path);
    this.frameBytes.set(path, n);
    this.bytes += n;
    for (const [old, size] of this.frameBytes) {
      if (this.bytes <= this.maxBytes || old === path) break;
      this.frameBytes.delete(old);
      this.bytes -= size;
      // replace, never mutate: a caller may still hold the old object
      const q = this.resolved.get(old);
      if (q) {
        const evicted: Perception = { ...q, images: q.images.map((f) => ({ ...f, image: EVICTED })) };
        this.resolved.set(old, evicted);
        this.done.set(old, Promise.resolve(evicted));
      }
    }
  }
}

/** Placeholder for evicted frame bytes (never handed out). */
const EVICTED: Uint8Array = new Uint8Array(0);
