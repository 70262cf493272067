// The TypeScript perspective table (lib/perspectives.ts) against the native registry: the same
// kinds in the same order as native/model/mvp_kind.cpp lists them, each defined in
// native/model/mvp/*.cpp with the same name, per-vision-token and layers-required flags, and the
// info() keys each kind's C++ info function sets.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { PERSPECTIVE_KINDS, perspectiveKind } from '../../lib/perspectives.js';

const root = join(__dirname, '..', '..');

interface NativeKind {
  symbol: string;
  name: string;
  perVisionToken: boolean;
  layersRequired: boolean;
  infoKeys: string[];
}

function nativeKinds(): Map<string, NativeKind> {
  const dir = join(root, 'native', 'model', 'mvp');
  const out = new Map<string, NativeKind>();
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.cpp'))) {
    const src = readFileSync(join(dir, f), 'utf8');
    const infoKeys = [...src.matchAll(/emplace_back\("(\w+)"/g)].map((m) => m[1]!);
    const re = /extern const MvpKind (\w+) = \{\s*"([^"]+)",\s*"[^"]*",\s*\/\*per_vision_token=\*\/(true|false),\s*\/\*layers_required=\*\/(true|false)/g;
    for (const m of src.matchAll(re)) {
      out.set(m[1]!, { symbol: m[1]!, name: m[2]!, perVisionToken: m[3] === 'true', layersRequired: m[4] === 'true', infoKeys });
    }
  }
  return out;
}

describe('perspective kinds: lib/perspectives.ts mirrors the native registry', () => {
  it('same kinds, same order, same flags and info keys', () => {
    const defs = nativeKinds();
    expect(defs.size).toBeGreaterThanOrEqual(4);
    const reg = readFileSync(join(root, 'native', 'model', 'mvp_kind.cpp'), 'utf8');
    const list = /kinds\{([^}]*)\}/.exec(reg);
    expect(list).not.toBeNull();
    const order = list![1]!.split(',').map((s) => s.trim().replace(/^&/, ''));
    const native = order.map((sym) => {
      const k = defs.get(sym);
      expect(k, `registry entry ${sym} has a definition in native/model/mvp/`).toBeDefined();
      return k!;
    });
    expect(PERSPECTIVE_KINDS.map((k) => k.name)).toEqual(native.map((k) => k.name));
    for (const [i, k] of PERSPECTIVE_KINDS.entries()) {
      expect(k.perVisionToken, k.name).toBe(native[i]!.perVisionToken);
      expect(k.layersRequired, k.name).toBe(native[i]!.layersRequired);
      expect([...k.infoKeys], k.name).toEqual(native[i]!.infoKeys);
    }
  });

  it('perspectiveKind finds by config name', () => {
    expect(perspectiveKind('attention-pool')?.configKeys).toEqual(['n_queries', 'num_heads']);
    expect(perspectiveKind('conv')).toBeUndefined();
  });
});
