#!/usr/bin/env python3
"""Same-run PyTorch anchors for bench_cuda's shapes (cuBLAS GEMM / GEMV, SDPA), CUDA events.

    python3 bench/native/bench_cuda_torch.py [--bench-json PATH] [--out DIR] [--reps N]

Runs each shape of bench_cuda (bench/native/bench_cuda.cu) through PyTorch on the same GPU:
F.linear on bf16 X and W (cuBLAS / cuBLASLt), F.scaled_dot_product_attention in f32 and bf16
(32 heads of 128, as bench_cuda). Times are the best of 5 means of `reps` launches after warm-up.
Writes torch_anchor.json to --out (default $OUT). With --bench-json (bench_cuda's JSON of the
same run, default $OUT/bench_cuda.json when it exists), it prints and writes the rows the two
share side by side as speed ratios, torch_ms / ours_ms (1.0 = as fast as PyTorch, 0.03 = 3% of
its speed):
    gemm bf16 (by shape): matmul's path (bench_cuda "ms") and gemm_tc ("gemm_tc_ms") vs F.linear
    gemv bf16 (by N, K):  our GEMV vs F.linear with M = 1
    attention (by n_q, n_kv, causal): attention f32 KV vs SDPA f32; attention bf16 KV and
        attention_tc (bf16 operands) vs SDPA bf16
Exits non-zero without a CUDA PyTorch.
"""
import argparse
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--bench-json', help="bench_cuda's JSON of the same run (default: $OUT/bench_cuda.json if present)")
    ap.add_argument('--out', default=os.environ.get('OUT'), help='folder for torch_anchor.json (default $OUT)')
    ap.add_argument('--reps', type=int, default=20, help='launches per timing (GEMV / decode: 10x)')
    args = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        sys.exit(f'bench_cuda_torch: PyTorch is not installed ({e})')
    if not torch.cuda.is_available():
        sys.exit('bench_cuda_torch: PyTorch has no CUDA device here')
    dev = 'cuda'

    def t(fn, reps):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(True), torch.cuda.Event(True)
        best = 1e9
        for _ in range(5):
            s.record()
            for _ in range(reps):
                fn()
            e.record()
            torch.cuda.synchronize()
            best = min(best, s.elapsed_time(e) / reps)
        return best

    rows = []
    for name, M, N, K in [('llama7b qkvo M=512', 512, 4096, 4096), ('llama7b ffn-up M=512', 512, 11008, 4096),
                          ('llama7b ffn-down M=512', 512, 4096, 11008), ('llama7b qkvo M=2048', 2048, 4096, 4096),
                          ('clip-l attn', 577, 1024, 1024), ('clip-l mlp-up', 577, 4096, 1024)]:
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
        ms = t(lambda: F.linear(x, w), args.reps)
        rows.append(dict(op='gemm', name=name, M=M, N=N, K=K, ms=ms, tflops=2 * M * N * K / ms / 1e9))
    for N, K in [(4096, 4096), (11008, 4096), (32000, 4096)]:
        x = torch.randn(1, K, device=dev, dtype=torch.bfloat16)
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
        ms = t(lambda: F.linear(x, w), 10 * args.reps)
        rows.append(dict(op='gemv', dtype='bf16', N=N, K=K, ms=ms, gbps=N * K * 2 / ms / 1e6))
    for nq, nkv, causal in [(512, 512, True), (2048, 2048, True), (2048, 2048, False), (1, 2048, True), (1, 8192, True)]:
        for dt in (torch.float32, torch.bfloat16):
            q = torch.randn(1, 32, nq, 128, device=dev, dtype=dt)
            k = torch.randn(1, 32, nkv, 128, device=dev, dtype=dt)
            v = torch.randn_like(k)
            # causal with n_q < n_kv: the queries are the last n_q positions (bench_cuda's q_pos0)
            mask = None
            if causal and nq != nkv:
                mask = torch.ones(nq, nkv, dtype=torch.bool, device=dev).tril(nkv - nq)
            if causal and nq == nkv:
                fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                fn = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            ms = t(fn, 10 * args.reps if nq == 1 else args.reps)
            rows.append(dict(op='sdpa', dtype='f32' if dt == torch.float32 else 'bf16', n_q=nq, n_kv=nkv,
                             causal=causal, ms=ms))
    for r in rows:
        print(r)

    bench_json = args.bench_json
    if bench_json is None and args.out and os.path.exists(os.path.join(args.out, 'bench_cuda.json')):
        bench_json = os.path.join(args.out, 'bench_cuda.json')
    ratios = compare(rows, bench_json) if bench_json else []
    if not bench_json:
        print('(no bench_cuda.json given: no ratios; pass --bench-json or set OUT to the folder bench_cuda wrote)')
    result = dict(torch=torch.__version__, device=torch.cuda.get_device_name(), rows=rows, ratios=ratios,
                  bench_json=bench_json)
    if args.out:
        path = os.path.join(args.out, 'torch_anchor.json')
        with open(path, 'w') as f:
            json.dump(result, f, indent=1)
        print(f'wrote {path}')


def compare(torch_rows, bench_json):
    """Rows bench_cuda and PyTorch share, as speed ratios torch_ms / ours_ms."""
    with open(bench_json) as f:
        ours = json.load(f)['rows']
    out = []

    def add(what, ours_what, ours_ms, torch_ms):
        if ours_ms and torch_ms:
            r = torch_ms / ours_ms
            out.append(dict(row=what, ours=ours_what, ours_ms=ours_ms, torch_ms=torch_ms, speed_vs_torch=r))
            print(f'{what:<46} {ours_what:<26} ours {ours_ms:9.4f} ms  torch {torch_ms:9.4f} ms  '
                  f'ours at {100 * r:7.1f}% of torch speed')

    print('--- bench_cuda vs PyTorch, same run (speed ratio = torch_ms / ours_ms)')
    for tr in torch_rows:
        if tr['op'] == 'gemm':
            for r in ours:
                if r.get('op') == 'gemm' and r.get('dtype') == 'bf16' and r.get('shape') == tr['name']:
                    add(f"gemm bf16 {tr['name']}", 'matmul (active path)', r.get('ms'), tr['ms'])
                    add(f"gemm bf16 {tr['name']}", 'gemm_tc', r.get('gemm_tc_ms'), tr['ms'])
                    add(f"gemm bf16 {tr['name']}", 'cuBLASLt direct (C++)', r.get('cublaslt_direct_ms'), tr['ms'])
        elif tr['op'] == 'gemv':
            for r in ours:
                if r.get('op') == 'gemv' and r.get('dtype') == 'bf16' and r.get('N') == tr['N'] and r.get('K') == tr['K']:
                    add(f"gemv bf16 N={tr['N']} K={tr['K']}", 'gemv', r.get('ms'), tr['ms'])
        elif tr['op'] == 'sdpa':
            key = (tr['n_q'], tr['n_kv'], tr['causal'])
            tc_seen = False  # bench_cuda prints attention_tc once per KV type: the first is enough
            for r in ours:
                if (r.get('n_q'), r.get('n_kv'), r.get('causal')) != key:
                    continue
                what = f"attention n_q={key[0]} n_kv={key[1]} {'causal' if key[2] else 'bidir'} vs sdpa {tr['dtype']}"
                if tr['dtype'] == 'f32' and r.get('op') == 'attention' and r.get('kv') == 'f32':
                    add(what, 'attention (f32 KV)', r.get('ms'), tr['ms'])
                if tr['dtype'] == 'bf16' and r.get('op') == 'attention' and r.get('kv') == 'bf16':
                    add(what, 'attention (bf16 KV)', r.get('ms'), tr['ms'])
                if tr['dtype'] == 'bf16' and r.get('op') == 'attention_tc' and not tc_seen:
                    add(what, 'attention_tc (bf16 ops)', r.get('ms'), tr['ms'])
                    tc_seen = True
    return out


if __name__ == '__main__':
    main()
