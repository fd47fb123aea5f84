"""Fused Skiparse attention vs rearrange + dense attention: time, TFLOP/s and speed-up, forward and forward+backward.

    python benchmarks/skiparse_kernel_bench.py                       # CUDA: triton_skiparse vs rearrange:sdpa
    python benchmarks/skiparse_kernel_bench.py --fused ascendc --baseline rearrange:<NPU attention backend>
    python benchmarks/skiparse_kernel_bench.py --tokens 8192 16384 --sparsity 4 --dtype bf16

Shapes: batch 1, 24 heads x 128, video tokens in original order (8k-64k), k in {2, 4, 8}, single and group skip.
FLOPs count the work Skiparse actually does: 4 * B * heads * N * (N / k) * D for the forward (QK^T and PV) and
2.5x that for the backward. Both paths run in the same process on the same inputs; the ratio is baseline / fused.
Needs a GPU or NPU; on CPU it prints why it does not run (the CPU shim is a correctness harness, not a speed figure).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from mindspeed_mm.osp.ops.skiparse import skiparse_attention


def accelerator() -> str | None:
    if torch.cuda.is_available():
        return "cuda"
    try:
        from mindspeed_mm.osp.platform import npu_available
        if npu_available():
            return "npu"
    except ImportError:
        pass
    return None


def synchronize(device: str) -> None:
    getattr(torch, device).synchronize()


def timed(fn, device: str, warmup: int, iters: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fused", default=None, help="fused backend (default: triton_skiparse on CUDA, ascendc on NPU)")
    parser.add_argument("--baseline", default="rearrange:sdpa", help="rearrange path over an attention backend")
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    parser.add_argument("--sparsity", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", choices=["fp16", "bf16"], default="bf16")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()

    device = accelerator()
    if device is None:
        print("skiparse_kernel_bench: no GPU or NPU here; this benchmark only measures accelerator kernels "
              "(the ascendc_shim backend is a CPU correctness harness, not a speed reference).")
        return 0
    fused = args.fused or ("ascendc" if device == "npu" else "triton_skiparse")
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    print(f"device={device} fused={fused} baseline={args.baseline} heads={args.heads} head_dim={args.head_dim} "
          f"dtype={args.dtype}")
    print(f"{'k':>2} {'pattern':>7} {'tokens':>6} {'mode':>7} | {'fused ms':>9} {'TFLOP/s':>8} | "
          f"{'base ms':>9} {'TFLOP/s':>8} | {'speed-up':>8}")
    for n in args.tokens:
        q, k, v = (torch.randn(1, args.heads, n, args.head_dim, device=device, dtype=dtype, requires_grad=True)
                   for _ in range(3))
        grad = torch.randn_like(q)
        for sparsity in args.sparsity:
            for group in (False, True):
                flops_fwd = 4.0 * args.heads * n * (n / sparsity) * args.head_dim
                for mode, flops in (("fwd", flops_fwd), ("fwd+bwd", 3.5 * flops_fwd)):
                    results = []
                    for backend in (fused, args.baseline):
                        def step():
                            out = skiparse_attention(q, k, v, sparsity=sparsity, group=group, backend=backend)
                            if mode == "fwd+bwd":
                                out.backward(grad)
                        with torch.set_grad_enabled(mode == "fwd+bwd"):
                            seconds = timed(step, device, args.warmup, args.iters)
                        results.append((seconds * 1e3, flops / seconds / 1e12))
                    (f_ms, f_tf), (b_ms, b_tf) = results
                    print(f"{sparsity:>2} {'group' if group else 'single':>7} {n:>6} {mode:>7} | {f_ms:>9.3f} "
                          f"{f_tf:>8.1f} | {b_ms:>9.3f} {b_tf:>8.1f} | {b_ms / f_ms:>7.2f}x")
        del q, k, v, grad
    return 0


if __name__ == "__main__":
    sys.exit(main())
