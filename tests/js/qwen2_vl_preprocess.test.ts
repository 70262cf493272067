// Qwen2-VL preprocessing (lib/image_processor_qwen2_vl.ts) against transformers' outputs in
// ../shared/models/qwen2-vl-tiny-hf (see its SOURCE.md): grid and token counts exact; flattened
// patches within 1e-5 for the photo (Pillow-exact resize) and for the 4 PNG video frames.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { describe, expect, it } from 'vitest';

import { f32, maxAbsDiff, sharedModel } from './helpers/vlm_fixtures.js';
import { decodeImage } from '../../lib/image.js';
import { parseQwen2VLProcessorConfig, qwen2vlPatches, smartResize } from '../../lib/image_processor_qwen2_vl.js';

const { dir, have } = sharedModel('qwen2-vl-tiny-hf', 'reference/expected.json', 'qwen2-vl-tiny-hf preprocessing tests');

describe('smart_resize', () => {
  it('follows transformers (round half even, pixel budget)', () => {
    expect(smartResize(1280, 1920, 28, 3136, 9408)).toEqual([56, 112]);
    expect(smartResize(64, 96, 28, 3136, 9408)).toEqual([56, 84]);
    expect(smartResize(14, 14, 28, 3136, 9408)).toEqual([56, 56]); // scaled up to the minimum
    expect(smartResize(42, 70, 28, 56, 1e9)).toEqual([56, 56]); // 1.5 -> 2, 2.5 -> 2 (half to even)
    expect(() => smartResize(1, 500, 28, 3136, 9408)).toThrow(/aspect ratio/);
  });
});

describe.skipIf(!have)('qwen2-vl-tiny-hf preprocessing parity', () => {
  const expected = have ? JSON.parse(readFileSync(join(dir, 'reference', 'expected.json'), 'utf8')) : {};
  const config = have ? parseQwen2VLProcessorConfig(JSON.parse(readFileSync(join(dir, 'preprocessor_config.json'), 'utf8'))) : undefined;
  it('photo: grid, token count and patches', async () => {
    const out = await qwen2vlPatches([await decodeImage(join(dir, 'photo.jpg'))], config!);
    expect(out.grid).toEqual(expected.photo.image_grid_thw[0]);
    expect(out.tokens).toBe((expected.photo.input_ids as number[]).filter((t) => t === 6).length);
    expect(maxAbsDiff(out.data, f32(join(dir, 'reference', 'photo_pixel_values.f32')))).toBeLessThanOrEqual(1e-5);
  });
  it('video: 4 frames -> 2 temporal patches', async () => {
    const frames = await Promise.all((expected.video.frames as string[]).map((f) => decodeImage(join(dir, f))));
    const out = await qwen2vlPatches(frames, config!);
    expect(out.grid).toEqual(expected.video.video_grid_thw[0]);
    expect(out.tokens).toBe((expected.video.input_ids as number[]).filter((t) => t === 7).length);
    const ref = f32(join(dir, 'reference', 'video_pixel_values_videos.f32'));
    expect(maxAbsDiff(out.data, ref)).toBeLessThanOrEqual(1e-5);
    // frames out of order do not match
    const swapped = await qwen2vlPatches([frames[1]!, frames[0]!, frames[2]!, frames[3]!], config!);
    let worst = 0;
    for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(swapped.data[i]! - ref[i]!));
    expect(worst).toBeGreaterThan(0.1);
  });
});
