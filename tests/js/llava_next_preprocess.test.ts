// LLaVA-NeXT anyres preprocessing (lib/image_processor_llava_next.ts) against transformers'
// LlavaNextImageProcessor outputs in ../shared/models/llava-next-tiny-hf (see its SOURCE.md):
// tile count, chosen layout and token count exact; pixel values: photo.jpg within 1e-5 (both sides
// resize with Pillow's fixed-point bicubic on the same 8-bit pixels); wide.jpg decodes slightly
// differently in sharp (libvips) than in PIL, so there the bound is one 8-bit level after
// normalisation (1 / 255 / std = 0.01501) on under 5% of the values (measured: 2.8%).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { f32, sharedModel } from './helpers/vlm_fixtures.js';
import { decodeImage, loadImageProcessorConfig } from '../../lib/image.js';
import {
  anyresPreprocess,
  anyresTokenCount,
  parseGridPinpoints,
  patchOutputSize,
  selectBestResolution,
} from '../../lib/image_processor_llava_next.js';

const { dir, have } = sharedModel('llava-next-tiny-hf', 'reference/expected.json', 'llava-next-tiny-hf preprocessing tests');

const pins = [
  [28, 56],
  [56, 28],
  [56, 56],
] as const;

describe('anyres arithmetic (transformers formulas)', () => {
  it('selects the best pinpoint, ties to the least waste', () => {
    expect(selectBestResolution(1280, 1920, pins)).toEqual([56, 56]);
    expect(selectBestResolution(426, 1920, pins)).toEqual([28, 56]);
    expect(selectBestResolution(1920, 426, pins)).toEqual([56, 28]);
  });
  it('resizes to fit the pinpoint with ceil on the free side', () => {
    expect(patchOutputSize(1280, 1920, [56, 56])).toEqual([38, 56]);
    expect(patchOutputSize(426, 1920, [28, 56])).toEqual([13, 56]);
  });
  it('counts base + unpadded grid + newlines', () => {
    expect(anyresTokenCount(1280, 1920, pins, 28, 2)).toBe(4 + 8 + 2);
    expect(anyresTokenCount(426, 1920, pins, 28, 2)).toBe(4);
    expect(anyresTokenCount(1920, 1280, pins, 28, 2)).toBe(4 + 8 + 4);
  });
  it('rejects bad pinpoints', () => {
    expect(() => parseGridPinpoints([[28, 0]])).toThrow(/image_grid_pinpoints/);
    expect(() => parseGridPinpoints([])).toThrow(/image_grid_pinpoints/);
  });
});

describe.skipIf(!have)('llava-next-tiny-hf preprocessing parity', () => {
  const expected = have ? JSON.parse(readFileSync(join(dir, 'reference', 'expected.json'), 'utf8')) : {};
  for (const name of ['photo', 'wide']) {
    it(`${name}: tiles, token count and pixel values match LlavaNextImageProcessor`, async () => {
      const c = expected[name] as { input_ids: number[]; image_sizes: [[number, number]]; pixel_values_shape: number[] };
      const config = await loadImageProcessorConfig(dir);
      const pre = JSON.parse(readFileSync(join(dir, 'preprocessor_config.json'), 'utf8'));
      const pinpoints = parseGridPinpoints(pre.image_grid_pinpoints);
      const img = await decodeImage(join(dir, name === 'photo' ? 'photo.jpg' : 'wide.jpg'));
      const out = await anyresPreprocess(img, config, pinpoints);
      expect(out.imageSize).toEqual(c.image_sizes[0]);
      expect(out.tiles).toBe(c.pixel_values_shape[1]);
      const ref = f32(join(dir, 'reference', `${name}_pixel_values.f32`));
      expect(out.data.length).toBe(ref.length);
      let worst = 0;
      let differing = 0;
      for (let i = 0; i < ref.length; i++) {
        const d = Math.abs(out.data[i]! - ref[i]!);
        worst = Math.max(worst, d);
        if (d > 1e-5) differing++;
      }
      if (name === 'photo') expect(worst).toBeLessThanOrEqual(1e-5);
      else {
        expect(worst).toBeLessThanOrEqual(0.0151);
        expect(differing / ref.length).toBeLessThan(0.05);
      }
      const nImageTokens = c.input_ids.filter((t) => t === 32000).length;
      expect(anyresTokenCount(out.imageSize[0], out.imageSize[1], pinpoints, out.tileSize, 2)).toBe(nImageTokens);
    });
  }
  it('a transposed tile order does not match the reference', async () => {
    const config = await loadImageProcessorConfig(dir);
    const img = await decodeImage(join(dir, 'photo.jpg'));
    const out = await anyresPreprocess(img, config, pins);
    const ref = f32(join(dir, 'reference', 'photo_pixel_values.f32'));
    const plane = 3 * 28 * 28;
    const swapped = out.data.slice();
    swapped.set(out.data.subarray(2 * plane, 3 * plane), 3 * plane);
    swapped.set(out.data.subarray(3 * plane, 4 * plane), 2 * plane);
    let worst = 0;
    for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(swapped[i]! - ref[i]!));
    expect(worst).toBeGreaterThan(0.1);
  });
});
