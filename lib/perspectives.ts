/**
 * The perspective kinds of EmoLLM's Multi-perspective Visual Projection, as the TypeScript side
 * knows them: one entry per kind, mirroring the native registry (native/model/mvp_kind.cpp, one
 * `MvpKind` per file in native/model/mvp/). A new kind is one C++ file, one line in that registry
 * and one entry here; `tests/js/perspectives.test.ts` checks the two lists agree.
 */

/** One perspective kind: its config spelling and what the config and `info()` carry for it. */
export interface PerspectiveKind {
  /** The `type` in config.json's `emollm.perspectives[i]`. */
  readonly name: string;
  /** What the head computes, in one line. */
  readonly summary: string;
  /** One output token per vision token (summed under "gated-sum"; the only kind Qwen2-VL allows open). */
  readonly perVisionToken: boolean;
  /** The config must name `layers`. */
  readonly layersRequired: boolean;
  /** Config keys of this kind beyond name / type / gate / layers / act. */
  readonly configKeys: readonly string[];
  /** `info()` fields of this kind beyond the common ones (see EmollmPerspectiveInfo). */
  readonly infoKeys: readonly string[];
}

export const PERSPECTIVE_KINDS = [
  {
    name: 'mlp',
    summary: 'linear_1 -> GELU -> linear_2 over every vision token of the selected hidden states',
    perVisionToken: true,
    layersRequired: false,
    configKeys: [],
    infoKeys: [],
  },
  {
    name: 'multi-layer-mlp',
    summary: 'mlp over several hidden states concatenated on channels (layers required)',
    perVisionToken: true,
    layersRequired: true,
    configKeys: [],
    infoKeys: [],
  },
  {
    name: 'attention-pool',
    summary: 'n_queries learned queries attend over the vision tokens, then out_proj',
    perVisionToken: false,
    layersRequired: false,
    configKeys: ['n_queries', 'num_heads'],
    infoKeys: ['nQueries', 'numHeads'],
  },
  {
    name: 'face-region',
    summary: 'per face box, the mean of the patch features it covers, then an mlp',
    perVisionToken: false,
    layersRequired: false,
    configKeys: ['max_faces'],
    infoKeys: ['maxFaces'],
  },
] as const satisfies readonly PerspectiveKind[];

/** A perspective type name (`'mlp' | 'multi-layer-mlp' | 'attention-pool' | 'face-region'`). */
export type PerspectiveType = (typeof PERSPECTIVE_KINDS)[number]['name'];

/** The kind named `name`, or undefined. */
export function perspectiveKind(name: string): PerspectiveKind | undefined {
  return PERSPECTIVE_KINDS.find((k) => k.name === name);
}
