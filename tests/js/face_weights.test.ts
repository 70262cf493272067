// The face weights shipped in models/face: byte-identical to @vladmandic/face-api's (the dev
// dependency the parity tests run), loaded by default, with their licence and provenance; and
// FaceAnalyzer's explicit lifetime (close / Symbol.asyncDispose).
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

import { FaceAnalyzer, faceApiModelDir, faceModelDir, loadFaceWeights } from '../../lib/face.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const FILES = [
  'tiny_face_detector_model-weights_manifest.json',
  'tiny_face_detector_model.bin',
  'face_expression_model-weights_manifest.json',
  'face_expression_model.bin',
];
const haveAddon = existsSync(join(repoRoot, 'build', 'Release', 'emollm.node'));

describe('shipped face weights', () => {
  it('live in models/face with the MIT licence and their SHA-256 in SOURCE.md', () => {
    expect(faceModelDir()).toBe(join(repoRoot, 'models', 'face'));
    const source = readFileSync(join(faceModelDir(), 'SOURCE.md'), 'utf8');
    expect(readFileSync(join(faceModelDir(), 'LICENSE'), 'utf8')).toMatch(/^MIT License\s+Copyright \(c\) Vladimir Mandic/);
    for (const f of FILES) {
      const digest = createHash('sha256').update(readFileSync(join(faceModelDir(), f))).digest('hex');
      expect(source, f).toContain(`${digest}  ${f}`);
    }
  });

  it('are byte-identical to the installed face-api package', () => {
    for (const f of FILES) expect(readFileSync(join(faceModelDir(), f)).equals(readFileSync(join(faceApiModelDir(), f))), f).toBe(true);
  });

  it('are what loadFaceWeights reads by default', async () => {
    const shipped = await loadFaceWeights();
    const faceApi = await loadFaceWeights({ modelDir: faceApiModelDir() });
    expect(Object.keys(shipped.weights).length).toBeGreaterThan(20);
    expect(Object.keys(shipped.weights).sort()).toEqual(Object.keys(faceApi.weights).sort());
    for (const k of Object.keys(shipped.weights)) expect(shipped.weights[k]).toEqual(faceApi.weights[k]);
  });
});

describe.skipIf(!haveAddon)('FaceAnalyzer lifetime', () => {
  it('Symbol.asyncDispose closes it; calls after that throw a typed error', async () => {
    const analyzer = await FaceAnalyzer.load();
    expect(analyzer.models).toBeDefined();
    await analyzer[Symbol.asyncDispose]();
    expect(() => analyzer.models).toThrow(/closed/);
    await expect(analyzer.detect(Buffer.alloc(4))).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringMatching(/closed/) });
    await expect(analyzer.analyze(Buffer.alloc(4))).rejects.toMatchObject({ message: expect.stringMatching(/closed/) });
    await analyzer.close(); // twice is fine
  });
});
