"""WF-VAE decoder: MindSpore GRAPH_MODE vs PyNative vs our PyTorch model, same machine, same weights.

Full-size v1.5 decoder (C=160, L=32, 8x8x8) with random weights on a small clip (default latents 1x32x2x2x2 ->
video 1x3x9x16x16) so it finishes in minutes on CPU. Prints first-call time (GRAPH: compilation + one run),
steady step time (median), and ratios against PyTorch measured in the same run; also the max |diff| of the
outputs (the three must agree).

    python benchmarks/vae_ms_bench.py [--preset v15] [--latent 2 2 2] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _time(fn, repeat):
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    steps = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        steps.append(time.perf_counter() - start)
    return out, first, statistics.median(steps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="v15", help="WF-VAE preset of mindspeed_mm.osp.vae (v13, v15, ...)")
    p.add_argument("--latent", type=int, nargs=3, default=(2, 2, 2), metavar=("T", "H", "W"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import mindspore as ms
    import torch

    from mindspeed_mm.osp.vae import WFVAE as TorchWFVAE
    from mindspeed_mm.osp.vae import load_preset
    from mindspeed_mm.osp.vae_ms import WFVAE, WFVAEConfig

    torch.set_num_threads(args.threads)
    official = load_preset(args.preset).to_official()
    cfg = WFVAEConfig.from_official(official)
    shapes = WFVAE(cfg).expected_shapes()
    rng = np.random.default_rng(0)
    weights = {k: (rng.standard_normal(s, dtype=np.float32) * (0.02 if len(s) > 1 else 0.1)
                   + (1.0 if k.endswith("norm.weight") else 0.0)).astype(np.float32) for k, s in shapes.items()}
    n_dec = sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("decoder."))
    z = rng.standard_normal((1, cfg.latent_dim, *args.latent)).astype(np.float32)
    print(f"WF-VAE {args.preset} decoder ({n_dec / 1e6:.1f} M params), latents {z.shape}, {args.threads} threads, "
          f"MindSpore {ms.__version__} ({ms.get_context('device_target')}), torch {torch.__version__}")

    rows, outs = [], {}
    tvae = TorchWFVAE.from_official(official, {k: torch.from_numpy(v) for k, v in weights.items()}).eval()
    with torch.no_grad():
        outs["torch"], first, step = _time(lambda: tvae.decode(torch.from_numpy(z)).numpy(), args.repeat)
    rows.append(("PyTorch eager", first, step))
    del tvae
    for name, mode in (("MindSpore GRAPH", ms.GRAPH_MODE), ("MindSpore PyNative", ms.PYNATIVE_MODE)):
        ms.set_context(mode=mode)
        vae = WFVAE.from_official(official, weights)
        outs[name], first, step = _time(lambda: vae.decode(z).asnumpy(), args.repeat)
        rows.append((name, first, step))
        del vae

    ref = rows[0][2]
    print(f"{'backend':<20} {'first call s':>13} {'step s':>9} {'step / torch':>13}")
    for name, first, step in rows:
        print(f"{name:<20} {first:>13.2f} {step:>9.3f} {step / ref:>12.1f}x")
    graph_compile = rows[1][1] - rows[1][2]
    print(f"GRAPH compile (first call - step): {graph_compile:.1f} s; GRAPH step vs PyNative step: "
          f"{rows[2][2] / rows[1][2]:.1f}x faster")
    for name in ("MindSpore GRAPH", "MindSpore PyNative"):
        print(f"max |{name} - torch| = {np.abs(outs[name] - outs['torch']).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
