import { describe, expect, it } from 'vitest';

import { kernelsEnv, torchEnv } from '../../bench/anchor-env.mjs';

// The environment bench:kernels (and bench:decode's / bench:vision's probe runs through it) gives
// bench_kernels: the anchors' thread counts and libgomp's idle spin (bench/anchor-env.mjs).
describe('bench anchor environment', () => {
  it('gives oneDNN and OpenBLAS the thread count and libgomp a short idle spin', () => {
    const env = kernelsEnv(2, { PATH: '/bin' });
    expect(env).toEqual({ PATH: '/bin', OMP_NUM_THREADS: '2', OPENBLAS_NUM_THREADS: '2', GOMP_SPINCOUNT: '10000' });
  });

  it("keeps the caller's own spin settings", () => {
    expect(kernelsEnv(1, { GOMP_SPINCOUNT: '0' }).GOMP_SPINCOUNT).toBe('0');
    // libgomp lets GOMP_SPINCOUNT override OMP_WAIT_POLICY: an A/B of the policy must not get one
    const passive = kernelsEnv(2, { OMP_WAIT_POLICY: 'passive' });
    expect(passive.OMP_WAIT_POLICY).toBe('passive');
    expect('GOMP_SPINCOUNT' in passive).toBe(false);
  });

  it('leaves OpenBLAS its default idle spin (bench_kernels sleeps past it)', () => {
    expect('OPENBLAS_THREAD_TIMEOUT' in kernelsEnv(2, {})).toBe(false);
  });

  it("runs bench:vision's PyTorch anchor on the thread count with its own spin defaults", () => {
    expect(torchEnv(2, { PATH: '/bin' })).toEqual({ PATH: '/bin', OMP_NUM_THREADS: '2', MKL_NUM_THREADS: '2', OPENBLAS_NUM_THREADS: '2' });
  });
});
