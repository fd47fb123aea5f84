"""Memory figures behind docs/inference.md: exact parameter bytes (meta-device builds of the released configs) and
activation estimates (formula in mindspeed_mm/osp/pipelines/memory.py). Nothing is allocated.

    python benchmarks/sample_memory.py [--version v1.5 --frames 121 --height 576 --width 1024 --bytes 2]
"""
from __future__ import annotations

import argparse

from mindspeed_mm.osp.pipelines.memory import GIB, count_params, estimate, released_models


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", choices=("v1.3", "v1.5"), action="append")
    ap.add_argument("--frames", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--bytes", type=int, default=2, help="bytes per value (2 = bf16/fp16)")
    args = ap.parse_args()
    shapes = {"v1.5": (121, 576, 1024), "v1.3": (93, 352, 640)}
    for version in args.version or ["v1.5", "v1.3"]:
        f, h, w = shapes[version]
        f, h, w = args.frames or f, args.height or h, args.width or w
        e = estimate(version, f, h, w, bytes_per_value=args.bytes)
        dit, _ = released_models(version)
        non_block = e.denoiser_params - sum(count_params(b) for b in dit.transformer_blocks)
        g = lambda n: f"{n / GIB:6.2f} GiB"
        b = args.bytes
        print(f"{version} at {f}x{h}x{w}, {b} bytes/value, {e.tokens} tokens/sample (video + 512 text)")
        print(f"  denoiser weights        {e.denoiser_params:>14,d} params {g(e.denoiser_bytes)}")
        print(f"    outside the blocks    {non_block:>14,d} params {g(non_block * b)}")
        print(f"    largest block         {e.largest_block_params:>14,d} params {g(e.block_bytes)}")
        print(f"  WF-VAE weights          {e.vae_params:>14,d} params {g(e.vae_params * b)}")
        for name, n in e.text_params.items():
            print(f"  {name:23s} {n:>14,d} params {g(n * b)}")
        skips = 3 if version == "v1.5" else 0
        print(f"  block activations (est) guidance batched {g(e.activation_bytes)}, sequential {g(e.activation_bytes / 2)}")
        if skips:
            print(f"  long-skip stash (est)   guidance batched {g(e.skip_bytes(skips))}, sequential {g(e.skip_bytes(skips) / 2)}")
        resident = e.denoiser_bytes + e.vae_params * b
        act = e.activation_bytes + e.skip_bytes(skips)
        print(f"  all weights on device, text on host: batched {g(resident + act)}, sequential {g(resident + act / 2)}")
        offl = non_block * b + 2 * e.block_bytes + e.vae_params * b
        print(f"  block offload (2 blocks resident):   batched {g(offl + act)}, sequential {g(offl + act / 2)}")
        print(f"  everything on device (text too):     batched {g(resident + e.text_bytes + act)}")


if __name__ == "__main__":
    main()
