import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { deflateSync } from 'node:zlib';

import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  ImageProcessor,
  OPENAI_CLIP_MEAN,
  OPENAI_CLIP_STD,
  centerCrop,
  decodeImage,
  loadImageProcessor,
  loadImageProcessorConfig,
  parseImageProcessorConfig,
  preprocessImage,
  resizeOutputSize,
  resizePil,
} from '../../lib/image.js';
import type { RgbImage } from '../../lib/image.js';
import { rejects, throws } from './helpers/errors.js';

// Shared files: $EMOLLM_SHARED_DIR, else ../shared next to the repository.
const repoRoot = join(__dirname, '..', '..');
const shared = resolve(process.env.EMOLLM_SHARED_DIR ?? join(repoRoot, '..', 'shared'));
const tinyDir = join(shared, 'models', 'llava-tiny-hf');
const llavaDir = join(shared, 'tokenizers', 'llava-1.5-7b-hf');
const photo = join(tinyDir, 'photo.jpg');
const haveTiny = existsSync(join(tinyDir, 'reference', 'pixel_values.f32')) && existsSync(photo);
const haveLlava = existsSync(join(llavaDir, 'preprocessor_config.json'));
if (!haveTiny || !haveLlava) console.warn(`image.test: llava files missing under ${shared} (set EMOLLM_SHARED_DIR); parity tests skipped`);

/** Deterministic bytes (mulberry32). */
function randomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let a = seed >>> 0;
  for (let i = 0; i < n; i++) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((t ^ (t >>> 14)) >>> 0) & 255;
  }
  return out;
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();
function crc32(buf: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 255]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function pngChunk(type: string, data: Uint8Array): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}
/** A structurally valid PNG whose header declares `width x height` RGB pixels but holds a few bytes of data. */
function hugePngHeader(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', deflateSync(Buffer.alloc(64))),
    pngChunk('IEND', new Uint8Array(0)),
  ]);
}

/** An RGB test pattern with some structure (gradients + noise). */
function pattern(width: number, height: number, seed = 1): RgbImage {
  const noise = randomBytes(width * height * 3, seed);
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3;
      data[i] = ((x * 255) / Math.max(1, width - 1) + (noise[i]! - 128) / 4) & 255;
      data[i + 1] = ((y * 255) / Math.max(1, height - 1)) & 255;
      data[i + 2] = noise[i + 2]!;
    }
  return { data, width, height };
}

function norm(v: number, c: number): number {
  const f = Math.fround;
  return f(f(f(v * (1 / 255)) - f(OPENAI_CLIP_MEAN[c]!)) / f(OPENAI_CLIP_STD[c]!));
}

/** One 8-bit level after normalisation, for the channel with the smallest std: 1 / (255 * 0.2613) = 0.0150. */
const ONE_LEVEL = 1 / (255 * Math.min(...OPENAI_CLIP_STD));

let dir = '';
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'emollm-image-'));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('parity with transformers CLIPImageProcessor', () => {
  it.skipIf(!haveTiny)('photo.jpg with the tiny model config matches reference/pixel_values.f32', async () => {
    const proc = await loadImageProcessor(tinyDir);
    const { data, shape } = await proc.preprocess(photo);
    expect(shape).toEqual([3, 42, 42]);
    const raw = readFileSync(join(tinyDir, 'reference', 'pixel_values.f32'));
    const ref = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
    expect(ref.length).toBe(3 * 42 * 42);
    let max = 0;
    let sum = 0;
    for (let i = 0; i < ref.length; i++) {
      const d = Math.abs(data[i]! - ref[i]!);
      max = Math.max(max, d);
      sum += d;
    }
    const mean = sum / ref.length;
    console.log(`image.test: photo.jpg vs PIL reference: max abs diff ${max}, mean abs diff ${mean}`);
    // Tolerance. The resize is a port of PIL's fixed-point ImagingResample and the float steps
    // repeat transformers' float64 rescale + float32 normalise, so with the same decoded JPEG the
    // output is bit-identical (measured: max 0, mean 0 with sharp 0.35 / libvips 8.18 on x64).
    // The only legitimate source of difference is the JPEG decoder (libvips' libjpeg vs PIL's
    // libjpeg-turbo on another platform); a decoder that differs by one level in some pixels
    // moves an output value by at most about one level, 1/(255*std) <= 0.0150. So: max <= one
    // level, mean <= 1e-3. For scale: sharp's own resize kernels are far off (best, 'mks2021':
    // max 0.071 / mean 0.0089; 'cubic': 0.088 / 0.0044), and a crop one pixel off fails too
    // (checked below).
    expect(max).toBeLessThanOrEqual(ONE_LEVEL + 1e-6);
    expect(mean).toBeLessThanOrEqual(1e-3);

    // The bound discriminates: cropping one column to the right breaks it.
    const cfg = { ...proc.config, doCenterCrop: false };
    const wide = await new ImageProcessor(cfg).preprocess(photo);
    expect(wide.shape).toEqual([3, 42, 63]);
    let maxShift = 0;
    for (let c = 0; c < 3; c++)
      for (let y = 0; y < 42; y++)
        for (let x = 0; x < 42; x++) {
          // left = (63 - 42) // 2 = 10 reproduces the reference exactly; 11 does not
          expect(wide.data[c * 42 * 63 + y * 63 + x + 10]).toBe(data[c * 42 * 42 + y * 42 + x]);
          maxShift = Math.max(maxShift, Math.abs(wide.data[c * 42 * 63 + y * 63 + x + 11]! - ref[c * 42 * 42 + y * 42 + x]!));
        }
    expect(maxShift).toBeGreaterThan(10 * ONE_LEVEL);
  });

  it.skipIf(!haveTiny || !haveLlava)('the llava-1.5 336 px config gives [3, 336, 336] with sane values', async () => {
    const proc = await loadImageProcessor(llavaDir);
    expect(proc.config.size).toEqual({ shortestEdge: 336 });
    expect(proc.config.cropSize).toEqual({ height: 336, width: 336 });
    const big = await proc.preprocess(photo);
    expect(big.shape).toEqual([3, 336, 336]);
    expect(big.data.length).toBe(3 * 336 * 336);
    const small = await (await loadImageProcessor(tinyDir)).preprocess(photo);
    for (let c = 0; c < 3; c++) {
      const lo = norm(0, c);
      const hi = norm(255, c);
      let sum = 0;
      let sq = 0;
      let min = Infinity;
      let max = -Infinity;
      for (let i = 0; i < 336 * 336; i++) {
        const v = big.data[c * 336 * 336 + i]!;
        min = Math.min(min, v);
        max = Math.max(max, v);
        sum += v;
        sq += v * v;
      }
      expect(min).toBeGreaterThanOrEqual(lo);
      expect(max).toBeLessThanOrEqual(hi);
      const m = sum / (336 * 336);
      const sd = Math.sqrt(sq / (336 * 336) - m * m);
      expect(sd).toBeGreaterThan(0.1); // a real photo, not a flat fill
      let sumSmall = 0;
      for (let i = 0; i < 42 * 42; i++) sumSmall += small.data[c * 42 * 42 + i]!;
      // same central crop at two resolutions: channel means agree closely
      expect(Math.abs(m - sumSmall / (42 * 42))).toBeLessThan(0.02);
    }
  });

  it.skipIf(!haveTiny)('pad to square (LLaVA expand2square) fills with int(255 * mean) before resizing', async () => {
    const proc = await loadImageProcessor(tinyDir, { padToSquare: true });
    const { data, shape } = await proc.preprocess(photo);
    expect(shape).toEqual([3, 42, 42]);
    // 1920x1280 -> 1920x1920 with 320 rows of (122, 116, 104) above and below; after resizing to
    // 42 rows, rows 0..4 (source rows < 320 - filter support) are exactly the fill colour.
    const fill = [122, 116, 104];
    for (let c = 0; c < 3; c++)
      for (const y of [0, 1, 2, 3, 4, 37, 38, 39, 40, 41])
        for (let x = 0; x < 42; x++) expect(data[c * 1764 + y * 42 + x]).toBe(norm(fill[c]!, c));
    // the middle holds the photo: equal to the unpadded image resized into 42 x 28
    const plain = await new ImageProcessor({ ...proc.config, padToSquare: false, size: { height: 28, width: 42 }, doCenterCrop: false }).preprocess(photo);
    expect(plain.shape).toEqual([3, 28, 42]);
    let max = 0;
    for (let x = 0; x < 42; x++) max = Math.max(max, Math.abs(data[21 * 42 + x]! - plain.data[14 * 42 + x]!));
    expect(max).toBeLessThan(0.5); // same content, different filter phase
    // per-call override
    const off = await proc.preprocess(photo, { padToSquare: false });
    expect(off.data[0]).not.toBe(norm(fill[0]!, 0));
  });
});

describe('geometry (transformers rounding rules)', () => {
  it('resizeOutputSize: short edge = size, long = int(size * long / short)', () => {
    expect(resizeOutputSize(1280, 1920, { shortestEdge: 42 })).toEqual([42, 63]);
    expect(resizeOutputSize(1280, 1920, { shortestEdge: 336 })).toEqual([336, 504]);
    expect(resizeOutputSize(480, 640, { shortestEdge: 224 })).toEqual([224, 298]); // 298.67 truncates
    expect(resizeOutputSize(1000, 333, { shortestEdge: 336 })).toEqual([1009, 336]); // 1009.009
    expect(resizeOutputSize(500, 500, { shortestEdge: 336 })).toEqual([336, 336]);
    expect(resizeOutputSize(3, 1000, { shortestEdge: 336 })).toEqual([336, 112000]);
    expect(resizeOutputSize(10, 20, { height: 7, width: 9 })).toEqual([7, 9]);
  });

  it('centerCrop: offsets (size - crop) // 2, zero padding when the crop is larger', () => {
    const img = pattern(63, 43);
    const c = centerCrop(img, 42, 42);
    expect([c.width, c.height]).toEqual([42, 42]);
    // top = (43 - 42) // 2 = 0, left = (63 - 42) // 2 = 10
    for (let y = 0; y < 42; y++)
      for (let x = 0; x < 42; x++) for (let k = 0; k < 3; k++) expect(c.data[(y * 42 + x) * 3 + k]).toBe(img.data[(y * 63 + x + 10) * 3 + k]);
    // larger crop: 5x4 into 8x7, pad offsets ceil((8-5)/2) = 2 (x), ceil((7-4)/2) = 2 (y)
    const small = pattern(5, 4);
    const p = centerCrop(small, 7, 8);
    expect([p.width, p.height]).toEqual([8, 7]);
    for (let y = 0; y < 7; y++)
      for (let x = 0; x < 8; x++) {
        const inside = x >= 2 && x < 7 && y >= 2 && y < 6;
        const want = inside ? small.data[((y - 2) * 5 + (x - 2)) * 3] : 0;
        expect(p.data[(y * 8 + x) * 3]).toBe(want);
      }
  });

  it('resizePil keeps a flat image flat for every filter and the identity size is a no-op', async () => {
    const flat: RgbImage = { data: new Uint8Array(37 * 23 * 3).fill(200), width: 37, height: 23 };
    for (const r of [0, 1, 2, 3, 4, 5] as const)
      for (const [w, h] of [
        [10, 7],
        [80, 50],
        [37, 5],
        [3, 23],
      ] as const) {
        const out = await resizePil(flat, w, h, r);
        expect([out.width, out.height]).toEqual([w, h]);
        expect(out.data.every((v) => v === 200), `filter ${r} ${w}x${h}`).toBe(true);
      }
    const img = pattern(9, 9);
    expect(await resizePil(img, 9, 9, 3)).toBe(img);
    await expect(resizePil(img, 0, 9, 3)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});

describe('inputs', () => {
  it('file path, Buffer, Uint8Array, ArrayBuffer and raw pixels give the same result', async () => {
    const img = pattern(64, 48, 7);
    const png = await sharp(Buffer.from(img.data), { raw: { width: 64, height: 48, channels: 3 } }).png().toBuffer();
    const file = join(dir, 'pattern.png');
    await writeFile(file, png);
    const proc = new ImageProcessor({ size: { shortestEdge: 32 }, cropSize: { height: 32, width: 32 } });
    const fromRaw = await proc.preprocess({ data: img.data, width: 64, height: 48, channels: 3 });
    expect(fromRaw.shape).toEqual([3, 32, 32]);
    const copy = new Uint8Array(png.length + 8);
    copy.set(png, 8);
    const inputs = [file, png, copy.subarray(8), png.buffer.slice(png.byteOffset, png.byteOffset + png.length)];
    for (const input of inputs) expect((await proc.preprocess(input)).data).toEqual(fromRaw.data);
    // raw RGBA / grey / grey+alpha
    const rgba = new Uint8Array(64 * 48 * 4);
    for (let i = 0; i < 64 * 48; i++) {
      rgba.set(img.data.subarray(i * 3, i * 3 + 3), i * 4);
      rgba[i * 4 + 3] = i % 256;
    }
    expect((await proc.preprocess({ data: rgba, width: 64, height: 48, channels: 4 })).data).toEqual(fromRaw.data);
    const grey = await decodeImage({ data: new Uint8Array([1, 2, 3, 4]), width: 2, height: 2, channels: 1 });
    expect([...grey.data]).toEqual([1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]);
    const la = await decodeImage({ data: new Uint8ClampedArray([9, 0, 8, 255]), width: 2, height: 1, channels: 2 });
    expect([...la.data]).toEqual([9, 9, 9, 8, 8, 8]);
  });

  it('RGBA: alpha is dropped, not composited (PIL convert("RGB"))', async () => {
    const rgba = Buffer.from([10, 20, 30, 0, 200, 100, 50, 128, 1, 2, 3, 255, 255, 255, 255, 0]);
    const png = await sharp(rgba, { raw: { width: 2, height: 2, channels: 4 } }).png().toBuffer();
    const webp = await sharp(rgba, { raw: { width: 2, height: 2, channels: 4 } }).webp({ lossless: true, exact: true }).toBuffer();
    for (const enc of [png, webp]) {
      const out = await decodeImage(enc);
      expect([out.width, out.height]).toEqual([2, 2]);
      expect([...out.data]).toEqual([10, 20, 30, 200, 100, 50, 1, 2, 3, 255, 255, 255]);
    }
  });

  it('greyscale and 16-bit PNGs become 8-bit RGB', async () => {
    const g = await sharp(Buffer.from([0, 50, 100, 255]), { raw: { width: 2, height: 2, channels: 1 } }).png().toBuffer();
    expect([...(await decodeImage(g)).data]).toEqual([0, 0, 0, 50, 50, 50, 100, 100, 100, 255, 255, 255]);
    const rgb16 = await sharp(Buffer.from([0, 128, 255, 255, 0, 10]), { raw: { width: 2, height: 1, channels: 3 } })
      .toColourspace('rgb16')
      .png()
      .toBuffer();
    const meta = await sharp(rgb16).metadata();
    expect(meta.depth).toBe('ushort');
    expect([...(await decodeImage(rgb16)).data]).toEqual([0, 128, 255, 255, 0, 10]);
  });

  it('EXIF orientation is applied', async () => {
    // 4 wide x 2 high, left half red, right half blue; orientation 6 = rotate 90 degrees clockwise
    const px = Buffer.alloc(4 * 2 * 3);
    for (let y = 0; y < 2; y++) for (let x = 0; x < 4; x++) px.set(x < 2 ? [255, 0, 0] : [0, 0, 255], (y * 4 + x) * 3);
    const png = await sharp(px, { raw: { width: 4, height: 2, channels: 3 } }).png().withMetadata({ orientation: 6 }).toBuffer();
    expect((await sharp(png).metadata()).orientation).toBe(6);
    const out = await decodeImage(png);
    expect([out.width, out.height]).toEqual([2, 4]);
    // after a clockwise rotation the left (red) half is on top
    expect([...out.data.subarray(0, 3)]).toEqual([255, 0, 0]);
    expect([...out.data.subarray(out.data.length - 3)]).toEqual([0, 0, 255]);
    const unrotated = await decodeImage(png, { autoOrient: false });
    expect([unrotated.width, unrotated.height]).toEqual([4, 2]);
  });

  it('GIF: the first frame of an animation', async () => {
    const red = await sharp({ create: { width: 8, height: 6, channels: 3, background: { r: 255, g: 0, b: 0 } } }).png().toBuffer();
    const blue = await sharp({ create: { width: 8, height: 6, channels: 3, background: { r: 0, g: 0, b: 255 } } }).png().toBuffer();
    const gif = await sharp([red, blue], { join: { animated: true } }).gif().toBuffer();
    expect((await sharp(gif).metadata()).pages).toBe(2);
    const out = await decodeImage(gif);
    expect([out.width, out.height]).toEqual([8, 6]);
    for (let i = 0; i < 48; i++) expect([...out.data.subarray(i * 3, i * 3 + 3)]).toEqual([255, 0, 0]);
  });

  it('batches: [B, 3, H, W], each slice equal to the single result', async () => {
    const proc = new ImageProcessor({ size: { shortestEdge: 16 }, cropSize: { height: 16, width: 16 } });
    const a = pattern(40, 30, 1);
    const b = pattern(25, 50, 2);
    const ra = { data: a.data, width: a.width, height: a.height, channels: 3 as const };
    const rb = { data: b.data, width: b.width, height: b.height, channels: 3 as const };
    const batch = await proc.preprocessBatch([ra, rb, ra]);
    expect(batch.shape).toEqual([3, 3, 16, 16]);
    const per = 3 * 16 * 16;
    expect(batch.data.subarray(0, per)).toEqual((await proc.preprocess(ra)).data);
    expect(batch.data.subarray(per, 2 * per)).toEqual((await proc.preprocess(rb)).data);
    expect(batch.data.subarray(2 * per)).toEqual(batch.data.subarray(0, per));
    // without a crop the sizes differ
    const noCrop = new ImageProcessor({ ...proc.config, doCenterCrop: false });
    await rejects(noCrop.preprocessBatch([ra, rb]), 'ERR_INVALID_ARGUMENT');
    await rejects(proc.preprocessBatch([]), 'ERR_INVALID_ARGUMENT');
  });

  it('do_resize / do_center_crop / do_rescale / do_normalize are honoured', async () => {
    const img = pattern(5, 3, 3);
    const raw = { data: img.data, width: 5, height: 3, channels: 3 as const };
    const none = await preprocessImage(raw, { doResize: false, doCenterCrop: false, doRescale: false, doNormalize: false });
    expect(none.shape).toEqual([3, 3, 5]);
    for (let c = 0; c < 3; c++) for (let i = 0; i < 15; i++) expect(none.data[c * 15 + i]).toBe(img.data[i * 3 + c]);
    const rescaled = await preprocessImage(raw, { doResize: false, doCenterCrop: false, doNormalize: false });
    for (let c = 0; c < 3; c++) for (let i = 0; i < 15; i++) expect(rescaled.data[c * 15 + i]).toBe(Math.fround(img.data[i * 3 + c]! / 255));
    const normalized = await preprocessImage(raw, { doResize: false, doCenterCrop: false });
    for (let c = 0; c < 3; c++) for (let i = 0; i < 15; i++) expect(normalized.data[c * 15 + i]).toBe(norm(img.data[i * 3 + c]!, c));
    // normalise without rescale: (uint8 - mean) / std, as transformers does
    const f = Math.fround;
    const noRescale = await preprocessImage(raw, { doResize: false, doCenterCrop: false, doRescale: false });
    expect(noRescale.data[0]).toBe(f(f(img.data[0]! - f(OPENAI_CLIP_MEAN[0])) / f(OPENAI_CLIP_STD[0])));
    // crop larger than the image pads with zeros (normalised 0 = -mean/std)
    const padded = await preprocessImage(raw, { doResize: false, cropSize: { height: 5, width: 7 } });
    expect(padded.shape).toEqual([3, 5, 7]);
    expect(padded.data[0]).toBe(norm(0, 0));
    expect(padded.data[1 * 7 + 1]).toBe(norm(img.data[0]!, 0));
    // fixed {height, width} resize
    const fixed = await preprocessImage(raw, { size: { height: 4, width: 6 }, doCenterCrop: false });
    expect(fixed.shape).toEqual([3, 4, 6]);
  });

  it('a large image does not stall the event loop', async () => {
    const w = 3000;
    const h = 2000;
    const data = new Uint8Array(w * h * 3);
    for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
    let ticks = 0;
    let running = true;
    const tick = (): void => {
      ticks++;
      if (running) setImmediate(tick);
    };
    setImmediate(tick);
    const out = await preprocessImage({ data, width: w, height: h, channels: 3 }, { size: { shortestEdge: 336 }, cropSize: { height: 336, width: 336 } });
    running = false;
    expect(out.shape).toEqual([3, 336, 336]);
    expect(ticks).toBeGreaterThan(5);
  });
});

describe('bad input never crashes: typed errors', () => {
  it('missing file and folder -> ERR_FILE_NOT_FOUND', async () => {
    const e = await rejects(decodeImage(join(dir, 'nope.jpg')), 'ERR_FILE_NOT_FOUND');
    expect(e.file).toBe(join(dir, 'nope.jpg'));
    await rejects(decodeImage(dir), 'ERR_NOT_REGULAR_FILE');
  });

  it('0-byte file and empty buffer -> ERR_BAD_IMAGE', async () => {
    const empty = join(dir, 'empty.jpg');
    await writeFile(empty, new Uint8Array(0));
    const e = await rejects(decodeImage(empty), 'ERR_BAD_IMAGE');
    expect(e.file).toBe(empty);
    await rejects(decodeImage(new Uint8Array(0)), 'ERR_BAD_IMAGE');
  });

  it('random bytes -> ERR_BAD_IMAGE', async () => {
    const junk = join(dir, 'junk.png');
    await writeFile(junk, randomBytes(4096, 99));
    await rejects(decodeImage(junk), 'ERR_BAD_IMAGE');
    for (let seed = 0; seed < 20; seed++) await rejects(decodeImage(randomBytes(16 + seed * 37, seed)), 'ERR_BAD_IMAGE');
  });

  it('truncated or corrupted JPEG / PNG -> ERR_BAD_IMAGE', async () => {
    const img = pattern(128, 96, 5);
    const jpeg = await sharp(Buffer.from(img.data), { raw: { width: 128, height: 96, channels: 3 } }).jpeg({ quality: 90 }).toBuffer();
    const png = await sharp(Buffer.from(img.data), { raw: { width: 128, height: 96, channels: 3 } }).png().toBuffer();
    expect((await decodeImage(jpeg)).width).toBe(128);
    for (const cut of [0.9, 0.5, 0.1]) {
      await rejects(decodeImage(jpeg.subarray(0, Math.floor(jpeg.length * cut))), 'ERR_BAD_IMAGE');
      await rejects(decodeImage(png.subarray(0, Math.floor(png.length * cut))), 'ERR_BAD_IMAGE');
    }
    await rejects(decodeImage(jpeg.subarray(0, 3)), 'ERR_BAD_IMAGE');
    // flipped bytes inside the compressed PNG data: zlib / CRC errors
    const bad = Buffer.from(png);
    for (let i = 100; i < 200; i++) bad[i] = bad[i]! ^ 0x5a;
    await rejects(decodeImage(bad), 'ERR_BAD_IMAGE');
    if (haveTiny) {
      const t = join(dir, 'truncated.jpg');
      const full = readFileSync(photo);
      await writeFile(t, full.subarray(0, full.length >> 1));
      const e = await rejects(new ImageProcessor().preprocess(t), 'ERR_BAD_IMAGE');
      expect(e.file).toBe(t);
    }
  });

  it('huge declared dimensions -> ERR_BAD_IMAGE before decoding', async () => {
    const huge = hugePngHeader(100_000, 100_000); // 10 gigapixels, 100 bytes of file
    expect((await sharp(huge, { limitInputPixels: false }).metadata()).width).toBe(100_000); // the header is well-formed
    const e = await rejects(decodeImage(huge), 'ERR_BAD_IMAGE');
    expect(e.message).toMatch(/limit/);
    await rejects(decodeImage(hugePngHeader(20_000, 6_000)), 'ERR_BAD_IMAGE'); // 120 MP > default 100 MP
    const hugeFile = join(dir, 'huge.png');
    await writeFile(hugeFile, hugePngHeader(65_535, 65_535));
    await rejects(new ImageProcessor().preprocess(hugeFile), 'ERR_BAD_IMAGE');
    // a configurable limit
    const img = pattern(50, 40);
    const raw = { data: img.data, width: 50, height: 40, channels: 3 as const };
    await rejects(decodeImage(raw, { maxPixels: 1999 }), 'ERR_BAD_IMAGE');
    expect((await decodeImage(raw, { maxPixels: 2000 })).width).toBe(50);
    const png = await sharp(Buffer.from(img.data), { raw: { width: 50, height: 40, channels: 3 } }).png().toBuffer();
    await rejects(decodeImage(png, { maxPixels: 1999 }), 'ERR_BAD_IMAGE');
    expect((await decodeImage(png, { maxPixels: 2000 })).height).toBe(40);
    await rejects(decodeImage(png, { maxPixels: 0 }), 'ERR_INVALID_ARGUMENT');
  });

  it('SVG and other non-raster formats are refused', async () => {
    const svg = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>');
    const e = await rejects(decodeImage(svg), 'ERR_BAD_IMAGE');
    expect(e.message).toMatch(/unsupported image format/);
  });

  it('bad raw pixel objects and inputs -> ERR_INVALID_ARGUMENT', async () => {
    await rejects(decodeImage({ data: new Uint8Array(11), width: 2, height: 2, channels: 3 }), 'ERR_INVALID_ARGUMENT');
    await rejects(decodeImage({ data: new Uint8Array(12), width: 0, height: 2, channels: 3 }), 'ERR_INVALID_ARGUMENT');
    await rejects(decodeImage({ data: new Uint8Array(20), width: 2, height: 2, channels: 5 as 3 }), 'ERR_INVALID_ARGUMENT');
    await rejects(decodeImage({ data: [1, 2, 3] as unknown as Uint8Array, width: 1, height: 1, channels: 3 }), 'ERR_INVALID_ARGUMENT');
    await rejects(decodeImage(42 as unknown as string), 'ERR_INVALID_ARGUMENT');
    await rejects(decodeImage(new Uint8Array(4), { failOn: 'sometimes' as 'none' }), 'ERR_INVALID_ARGUMENT');
  });

  it('an aborted signal rejects with ERR_ABORTED', async () => {
    const ac = new AbortController();
    ac.abort();
    await rejects(preprocessImage({ data: new Uint8Array(12), width: 2, height: 2, channels: 3 }, {}, { signal: ac.signal }), 'ERR_ABORTED');
  });
});

describe('preprocessor_config.json', () => {
  it.skipIf(!haveTiny || !haveLlava)('reads both shared configs', async () => {
    const tiny = await loadImageProcessorConfig(join(tinyDir, 'preprocessor_config.json'));
    expect(tiny).toMatchObject({
      imageProcessorType: 'CLIPImageProcessor',
      size: { shortestEdge: 42 },
      cropSize: { height: 42, width: 42 },
      resample: 3,
      doResize: true,
      doCenterCrop: true,
      doRescale: true,
      doNormalize: true,
      doConvertRgb: true,
      padToSquare: false,
    });
    expect(tiny.rescaleFactor).toBe(1 / 255);
    expect(tiny.imageMean).toEqual([...OPENAI_CLIP_MEAN]);
    expect(tiny.imageStd).toEqual([...OPENAI_CLIP_STD]);
    const llava = await loadImageProcessorConfig(llavaDir);
    expect(llava.size).toEqual({ shortestEdge: 336 });
  });

  it('defaults, legacy spellings and errors', async () => {
    const d = parseImageProcessorConfig({});
    expect(d.size).toEqual({ shortestEdge: 224 });
    expect(d.cropSize).toEqual({ height: 224, width: 224 });
    expect(d.resample).toBe(3);
    expect(parseImageProcessorConfig({ size: 336, crop_size: 336 })).toMatchObject({ size: { shortestEdge: 336 }, cropSize: { height: 336, width: 336 } });
    expect(parseImageProcessorConfig({ size: { height: 384, width: 384 } }).size).toEqual({ height: 384, width: 384 });
    expect(parseImageProcessorConfig({ image_mean: 0.5, image_std: 0.5 }).imageMean).toEqual([0.5, 0.5, 0.5]);
    expect(parseImageProcessorConfig({ image_aspect_ratio: 'pad' }).padToSquare).toBe(true);
    expect(parseImageProcessorConfig({ size: null, do_resize: null }).doResize).toBe(true);
    throws(() => parseImageProcessorConfig([]), 'ERR_BAD_CONFIG');
    throws(() => parseImageProcessorConfig({ size: { longest_edge: 3 } }), 'ERR_BAD_CONFIG');
    throws(() => parseImageProcessorConfig({ size: { shortest_edge: 0 } }), 'ERR_BAD_CONFIG');
    throws(() => parseImageProcessorConfig({ crop_size: '42' }), 'ERR_BAD_CONFIG');
    throws(() => parseImageProcessorConfig({ resample: 7 }), 'ERR_BAD_CONFIG');
    throws(() => parseImageProcessorConfig({ do_resize: 'yes' }), 'ERR_BAD_CONFIG');
    throws(() => parseImageProcessorConfig({ image_std: [1, 0, 1] }), 'ERR_BAD_CONFIG');
    throws(() => parseImageProcessorConfig({ image_mean: [1, 2] }), 'ERR_BAD_CONFIG');
    const e = throws(() => parseImageProcessorConfig({ rescale_factor: -1 }, 'x.json'), 'ERR_BAD_CONFIG');
    expect(e.message).toMatch(/rescale_factor/);
    expect(e.file).toBe('x.json');
    throws(() => parseImageProcessorConfig({ image_processor_type: 'ViTImageProcessor' }), 'ERR_UNSUPPORTED');
    throws(() => new ImageProcessor({ cropSize: { height: 0, width: 3 } }), 'ERR_INVALID_ARGUMENT');
    throws(() => new ImageProcessor({ imageStd: [1, 1, 0] }), 'ERR_INVALID_ARGUMENT');

    await rejects(loadImageProcessorConfig(join(dir, 'missing')), 'ERR_FILE_NOT_FOUND');
    await rejects(loadImageProcessorConfig(dir), 'ERR_FILE_NOT_FOUND'); // folder without the file
    const bad = join(dir, 'bad.json');
    await writeFile(bad, '{"size": ');
    await rejects(loadImageProcessorConfig(bad), 'ERR_MALFORMED_FILE');
    const wrong = join(dir, 'wrong.json');
    await writeFile(wrong, JSON.stringify({ crop_size: { height: -1, width: 2 } }));
    const e2 = await rejects(loadImageProcessor(wrong), 'ERR_BAD_CONFIG');
    expect(e2.file).toBe(wrong);
  });
});
