"""Time every attention backend usable here on one Skiparse-shaped problem and print ratios against `sdpa`
(measured in the same run). Also checks each output against `reference`.

    python benchmarks/attention_backends.py --batch 4 --heads 24 --seq 2560 --head-dim 96 --dtype bf16

The default problem is a Skiparse sub-sequence of the v1.5 model scaled down; on an NPU or GPU raise --seq.
"""
from __future__ import annotations

import argparse
import time

import torch

from mindspeed_mm.osp import platform
from mindspeed_mm.osp.ops.attention import attention, available_backends

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "npu":
        torch.npu.synchronize()


def _time(fn, device, iters):
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", choices=DTYPES, default="fp32")
    p.add_argument("--pad", type=float, default=0.1, help="fraction of keys masked as padding at the tail")
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args()

    device = platform.default_device()
    dtype = DTYPES[args.dtype]
    shape = (args.seq, args.batch, args.heads * args.head_dim)       # SBH, as the OSP models use
    q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    mask = torch.zeros(args.batch, 1, 1, args.seq, dtype=torch.bool, device=device)
    mask[..., int(args.seq * (1 - args.pad)):] = True
    kwargs = dict(layout="SBH", heads=args.heads, mask=mask)

    want = attention(q, k, v, backend="reference", **kwargs).float()
    results = {}
    for name in available_backends():
        fn = lambda name=name: attention(q, k, v, backend=name, **kwargs)  # noqa: E731
        err = (fn().float() - want).abs().max().item()
        results[name] = (_time(fn, device, args.iters), err)
    base = results["sdpa"][0]
    print(f"device {device}, SBH {shape} {args.dtype}, key padding {args.pad:.0%}, {args.iters} iters")
    for name, (sec, err) in results.items():
        print(f"{name:>12}: {sec * 1e3:9.2f} ms  x{sec / base:5.2f} vs sdpa  max|diff vs reference| {err:.2e}")


if __name__ == "__main__":
    main()
