"""The compute floor of the embedded default model's recipe on this machine: how long its two training stages
take if every step were pure model arithmetic (no data loading, optimizer, clipping, EMA, checkpoints or
communication), next to the machine's own fp32 GEMM rate measured in the same run.

- Reference: a 1024^3 fp32 GEMM on one thread (GFLOP/s; the best a small model's matmuls can hope for).
- DiT (examples/default_model/train_dit.json): forward + backward of one micro batch per latent shape of the shapes
  data (images: 1 latent frame; 17- and 25-frame clips: 3 and 4) on the 8x8 grid of a 64x64 clip (the 48x80 and
  80x48 buckets have 60 tokens per frame, about the same), one thread, as each of the recipe's one-thread
  data-parallel processes runs it. FLOPs are counted by torch's FlopCounterMode (matmuls, attention), so the
  printed GFLOP/s say how close the step is to the GEMM rate.
- WF-VAE (examples/default_model/train_vae.json): forward + the generator loss + backward of one step at the
  config's crop and batch, with --vae-threads threads (the recipe trains it as one process of 2 threads).

The floor is then samples x per-sample time / processes for the DiT and steps x step time for the VAE: the
recipe's real stages (docs/default_model.md) take longer, as they also load data and update weights.

    OMP_NUM_THREADS=1 python -m benchmarks.recipe_floor                   # the shipped recipe: 104k DiT samples
    python -m benchmarks.recipe_floor --dit-samples 52000 --vae-steps 4000 --processes 2
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "default_model"
# Latent frames of the shapes data and their share of its items (8000 clips of 17 or 25 frames, 2000 images).
DEFAULT_MIX = "1:0.2,3:0.4,4:0.4"


def median_seconds(fn, repeat: int) -> float:
    fn()   # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def gemm_rate(repeat: int) -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return 2 * 1024 ** 3 / median_seconds(lambda: a @ b, repeat) / 1e9


def dit_costs(mix: dict, batch: int, repeat: int) -> list[dict]:
    """Per latent frame count: seconds and GFLOP per sample of one forward + backward."""
    from mindspeed_mm.osp.dit.suv import SUVConfig, SUVDiT

    spec = json.loads((RECIPE / "train_dit.json").read_text())["model"]
    cfg = SUVConfig(**spec["transformer"])
    torch.manual_seed(0)
    model = SUVDiT(cfg)
    text_len = spec["max_text_length"]
    rows = []
    for frames in mix:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, cfg.in_channels, frames, 8, 8, generator=g)
        text = torch.randn(batch, text_len, cfg.caption_channels, generator=g)
        pooled = torch.randn(batch, cfg.pooled_projection_dim, generator=g)
        t = torch.rand(batch, generator=g) * 1000
        mask = torch.ones(batch, text_len)

        def step():
            model.zero_grad(set_to_none=True)
            out = model(x, t, text, encoder_attention_mask=mask, pooled_projections=pooled)
            out.float().pow(2).mean().backward()

        seconds = median_seconds(step, repeat)
        rows.append({"frames": frames, "tokens": frames * 64, "s_per_sample": seconds / batch,
                     "gflop_per_sample": counted_flops(step) / batch / 1e9})
    return rows


def vae_cost(repeat: int) -> dict:
    """Seconds and GFLOP of one WF-VAE generator step at the recipe's crop and batch."""
    from mindspeed_mm.osp.training.vae_job import Autoencode, build_vae
    from mindspeed_mm.osp.vae.losses import LossConfig, WFVAELoss

    spec = json.loads((RECIPE / "train_vae.json").read_text())
    data = spec["data"]
    vae = build_vae(str(ROOT / spec["model"]["vae"]), 0).train()
    loss = WFVAELoss(LossConfig(**spec["loss"])).train()
    autoencode = Autoencode(vae)
    g = torch.Generator().manual_seed(0)
    shape = (data["micro_batch_size"], 3, data["num_frames"], data["height"], data["width"])
    video = torch.rand(*shape, generator=g) * 2 - 1
    noise = torch.randn(shape[0], *vae.latent_shape(*shape[2:]), generator=g)

    def step():
        vae.zero_grad(set_to_none=True)
        recon, posterior, enc, dec = autoencode(video, noise)
        total, _ = loss.generator(video, recon, posterior, enc, dec, 0, vae.decoder.conv_out.weight, None)
        total.backward()

    return {"shape": shape, "s_per_step": median_seconds(step, repeat), "gflop_per_step": counted_flops(step) / 1e9}


def parse_mix(text: str) -> dict:
    mix = {}
    for part in text.split(","):
        frames, share = part.split(":")
        mix[int(frames)] = float(share)
    total = sum(mix.values())
    return {k: v / total for k, v in mix.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dit-samples", type=int, default=104000,
                    help="DiT training samples (default: the shipped recipe's 13000 steps x batch 8)")
    ap.add_argument("--vae-steps", type=int, default=6000, help="WF-VAE steps (default: the recipe's 6000)")
    ap.add_argument("--processes", type=int, default=2,
                    help="one-thread data-parallel DiT processes the floor divides by (the recipe: 2, one per core)")
    ap.add_argument("--vae-threads", type=int, default=2, help="threads of the WF-VAE step (the recipe: 2)")
    ap.add_argument("--mix", default=DEFAULT_MIX,
                    help=f"latent frames:share of the DiT's data (default {DEFAULT_MIX}, the shapes data)")
    ap.add_argument("--batch", type=int, default=16, help="DiT micro batch measured (default 16)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    mix = parse_mix(args.mix)

    torch.set_num_threads(1)
    gemm = gemm_rate(args.repeat)
    print(f"reference: fp32 GEMM 1024^3, one thread: {gemm:.1f} GFLOP/s")
    rows = dit_costs(mix, args.batch, args.repeat)
    print(f"\nDiT forward + backward, one thread, micro batch {args.batch}:")
    print(f"{'latent frames':>14}{'tokens':>8}{'share':>7}{'ms/sample':>11}{'GFLOP/sample':>14}{'GFLOP/s':>9}"
          f"{'of GEMM':>9}")
    for r in rows:
        rate = r["gflop_per_sample"] / r["s_per_sample"]
        print(f"{r['frames']:>14}{r['tokens']:>8}{mix[r['frames']]:>7.2f}{1000 * r['s_per_sample']:>11.1f}"
              f"{r['gflop_per_sample']:>14.2f}{rate:>9.1f}{rate / gemm:>9.0%}")
    per_sample = sum(mix[r["frames"]] * r["s_per_sample"] for r in rows)
    dit_minutes = args.dit_samples * per_sample / args.processes / 60

    torch.set_num_threads(args.vae_threads)
    v = vae_cost(args.repeat)
    vae_minutes = args.vae_steps * v["s_per_step"] / 60
    rate = v["gflop_per_step"] / v["s_per_step"]
    print(f"\nWF-VAE generator step, {args.vae_threads} threads, clip batch {tuple(v['shape'])}: "
          f"{v['s_per_step']:.3f} s, {v['gflop_per_step']:.1f} GFLOP, {rate:.1f} GFLOP/s "
          f"({rate / (gemm * args.vae_threads):.0%} of {args.vae_threads} x the GEMM rate)")
    print(f"\nfloor: DiT {args.dit_samples} samples / {args.processes} processes = {dit_minutes:.1f} min, "
          f"WF-VAE {args.vae_steps} steps = {vae_minutes:.1f} min, together {dit_minutes + vae_minutes:.1f} min "
          f"(the hour: {(dit_minutes + vae_minutes) / 60:.2f}x; data, features and evaluation not included)")


if __name__ == "__main__":
    main()
