// The addon's context and model objects as the tests that call them directly see them (below
// lib/'s typed wrappers: the re-entrancy and allocation-failure tests need the raw calls), and two
// checks those tests share: whether a promise settles (a close waiting on a call left counted in
// flight never does) and whether two results are bit for bit equal.
export interface RawContext {
  eval(tokens: Int32Array, options?: object): Promise<Float32Array>;
  score(prefix: Int32Array, images: null, continuations: Int32Array[]): Promise<{ logprobs: number[] }>;
  generate(prompt: Int32Array, options: object, onTokens?: (ids: Int32Array) => void): Promise<{ tokens: Int32Array }>;
  reset(): void;
  close(): Promise<void>;
  readonly nPast: number;
}
export interface RawModel {
  createContext(options?: { nCtx?: number }): RawContext;
  close(): Promise<void>;
}

// Resolves to 'hung' when `p` has not settled within `ms`.
export const settles = <T>(p: Promise<T>, ms = 10_000): Promise<T | 'hung'> =>
  Promise.race([p, new Promise<'hung'>((r) => setTimeout(() => r('hung'), ms).unref())]);

export const bitsEqual = (a: Float32Array, b: Float32Array): boolean =>
  a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
