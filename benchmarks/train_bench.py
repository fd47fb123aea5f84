"""Training throughput of `osp train`'s step: tokens/s, step time and MFU per config, next to a plain eager
PyTorch loop (same model, batch and AdamW; no engine, clipping or EMA) measured in the same run on the same device.

The engine step is `training.step.training_step` on a one-process layout (megatron DDP + distributed optimizer,
adaptive clipping, sharded EMA); the ratio engine / plain is the engine's overhead at that size. MFU uses the
analytic FLOPs of `training/flops.py` (3x forward) and the device's dense bf16 peak (known GPUs, or --peak-tflops);
on CPU it is not reported.

    python -m benchmarks.train_bench                               # the tiny configs, CPU, ~1 min
    python -m benchmarks.train_bench --configs examples/train/osp15_suv_t2v.json --layers 2,2,2 \\
        --latent 8,30,40 --batch 1 --dtype bf16                    # SUV at reduced depth on a GPU
    python -m benchmarks.train_bench --mid --latent 3,16,16 --text 512 --batch 1   # the mid-size SUV, CPU
    python -m benchmarks.train_bench --configs examples/default_model/train_dit.json --latent 3,8,8 --batch 4 \
        --text 24 --compile                                        # the default model's DiT, eager vs compiled
"""
from __future__ import annotations

import argparse
import copy
import socket
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["osp15_suv_tiny.json", "osp13_t2v_tiny.json", "osp13_i2v_tiny.json"]


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def inputs_for(config, model_cfg, latent: tuple, batch: int, text_len: int, device, dtype):
    from mindspeed_mm.osp.diffusion import FlowMatchingObjective, VPredictionObjective
    from mindspeed_mm.osp.training.objectives import FlowMatchingTask, VPredictionTask

    g = torch.Generator().manual_seed(0)
    c = model_cfg.out_channels
    latents = torch.randn(batch, c, *latent, generator=g)
    text = torch.randn(batch, text_len, model_cfg.caption_channels, generator=g)
    mask = torch.ones(batch, text_len)
    if config.model.version == "v1.5":
        pooled = torch.randn(batch, model_cfg.pooled_projection_dim, generator=g)
        inputs, loss = FlowMatchingTask(FlowMatchingObjective()).prepare(latents, text, mask, pooled, seed=0, step=0,
                                                                        first_index=0)
    else:
        cond = torch.randn(batch, c + model_cfg.vae_scale_factor_t, *latent, generator=g) if config.i2v else None
        inputs, loss = VPredictionTask(VPredictionObjective()).prepare(latents, text, mask, seed=0, step=0,
                                                                      first_index=0, condition=cond)
    move = lambda d: {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device))  # noqa: E731
                      for k, v in d.items() if v is not None}
    loss = {k: v.to(device) for k, v in loss.items()}
    return move(inputs), loss


def bench(path: Path, args, device) -> dict:
    from mindspeed_mm.osp import parallel
    from mindspeed_mm.osp.training.config import clip_of, load_config
    from mindspeed_mm.osp.training.ema import ShardedEMA
    from mindspeed_mm.osp.training.flops import training_flops
    from mindspeed_mm.osp.training.job import spatial_patch
    from mindspeed_mm.osp.training.models import model_spec, official_model_config
    from mindspeed_mm.osp.training.objectives import loss_fn
    from mindspeed_mm.osp.training.runlog import peak_flops
    from mindspeed_mm.osp.training.step import training_step

    overrides = [f"model.dtype={args.dtype}"]
    config = load_config(path, overrides)
    model_config = official_model_config(config)
    if args.mid:
        if config.model.version != "v1.5":
            raise SystemExit(f"--mid is an SUV (v1.5) size; {path} is {config.model.version}")
        from benchmarks.sample_bench import MID_SUV
        model_config = {**model_config, **MID_SUV}
    if args.layers:
        key = "num_layers"
        layers = [int(n) for n in args.layers.split(",")]
        model_config = {**model_config, key: layers if config.model.version == "v1.5" else sum(layers)}
    cls, cfg = model_spec(config, model_config)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    model = cls(cfg).to(device=device, dtype=dtype)
    plain_model = copy.deepcopy(model)
    latent = tuple(int(n) for n in args.latent.split(","))
    inputs, loss_inputs = inputs_for(config, cfg, latent, args.batch, args.text, device, dtype)

    parallel.initialize()
    pmodel = parallel.parallelize(model, device=device)
    optimizer = parallel.make_optimizer(pmodel, lr=1e-5, weight_decay=1e-4, eps=1e-15, bf16=dtype == torch.bfloat16)
    ema = ShardedEMA(pmodel, optimizer)
    clip = clip_of(config)

    def engine_step():
        training_step(pmodel, optimizer, loss_fn, inputs, loss_inputs, clip=clip, ema=ema)

    adam = torch.optim.AdamW(plain_model.parameters(), lr=1e-5, weight_decay=1e-4, eps=1e-15)

    def plain_step():
        adam.zero_grad(set_to_none=True)
        out = plain_model(**inputs)
        loss_fn(out.float(), loss_inputs).backward()
        adam.step()

    times = {}
    for name, step in (("engine", engine_step), ("plain", plain_step)):
        for _ in range(args.warmup):
            step()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync(device)
        times[name] = (time.perf_counter() - t0) / args.steps
    if args.compile:  # the same engine, its blocks compiled in place (the first warm-up step compiles)
        parallel.compile_blocks(pmodel, input_shapes=1)
        t0 = time.perf_counter()
        engine_step()
        times["compile"] = time.perf_counter() - t0
        for _ in range(args.warmup - 1):
            engine_step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            engine_step()
        times["compiled"] = (time.perf_counter() - t0) / args.steps
    p = spatial_patch(config, model_config)
    tokens = args.batch * latent[0] * (latent[1] // p) * (latent[2] // p)
    flops = args.batch * training_flops(cfg, inputs["hidden_states"].shape[1:], args.text)
    peak = peak_flops(args.peak_tflops, device)
    from megatron.core import parallel_state
    parallel_state.destroy_model_parallel()
    row = {"config": path.stem + ("+mid" if args.mid else ""),
           "params_M": sum(p.numel() for p in plain_model.parameters()) / 1e6,
           "tokens": tokens, "engine_s": times["engine"], "plain_s": times["plain"],
           "engine_tokens_per_s": tokens / times["engine"], "plain_tokens_per_s": tokens / times["plain"],
           "engine_vs_plain": times["plain"] / times["engine"],
           "engine_mfu": flops / times["engine"] / peak if peak else None}
    if args.compile:
        row.update(compile_s=times["compile"], compiled_s=times["compiled"],
                   compiled_vs_engine=times["engine"] / times["compiled"])
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=[str(ROOT / "examples" / "train" / n) for n in TINY])
    ap.add_argument("--mid", action="store_true",
                    help="the mid-size SUV of benchmarks/sample_bench.py (MID_SUV: the released stage plan with one "
                         "block per stage, 6 heads x 128, 4 latent channels); default config: the v1.5 T2V example")
    ap.add_argument("--layers", help="override the block counts (v1.5: per stage, e.g. 2,2,2; v1.3: their sum)")
    ap.add_argument("--latent", default="3,8,12", help="latent T,H,W of one sample (default 3,8,12)")
    ap.add_argument("--text", type=int, default=16, help="text tokens (default 16)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true",
                    help="then compile the engine's blocks (model.compile) and time it again: compiled s/step, the "
                         "first (compiling) step's seconds, and engine eager / compiled")
    ap.add_argument("--peak-tflops", type=float, help="per-device peak for MFU (default: known GPUs; none on CPU)")
    args = ap.parse_args()
    if args.mid and args.configs == ap.get_default("configs"):
        args.configs = [str(ROOT / "examples" / "train" / "osp15_suv_t2v.json")]

    from mindspeed_mm.osp import platform
    device = platform.default_device()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group(platform.collective_backend(), init_method=f"tcp://127.0.0.1:{port}",
                                         rank=0, world_size=1)
    name = torch.cuda.get_device_name() if device.type == "cuda" else device.type
    print(f"device {name}, dtype {args.dtype}, latent {args.latent} x batch {args.batch}, text {args.text}, "
          f"{args.steps} timed steps after {args.warmup}")
    print(f"{'config':<22}{'params(M)':>10}{'tokens':>8}{'engine s':>10}{'plain s':>10}{'engine tok/s':>14}"
          f"{'plain tok/s':>13}{'engine/plain':>14}{'MFU':>8}")
    for path in args.configs:
        r = bench(Path(path), args, device)
        mfu = f"{100 * r['engine_mfu']:.1f}%" if r["engine_mfu"] is not None else "n/a"
        print(f"{r['config']:<22}{r['params_M']:>10.2f}{r['tokens']:>8}{r['engine_s']:>10.4f}{r['plain_s']:>10.4f}"
              f"{r['engine_tokens_per_s']:>14.0f}{r['plain_tokens_per_s']:>13.0f}{r['engine_vs_plain']:>14.2f}"
              f"{mfu:>8}")
        if args.compile:
            print(f"{'':<22}compiled blocks: {r['compiled_s']:.4f} s/step ({r['tokens'] / r['compiled_s']:.0f} tok/s), "
                  f"engine eager / compiled {r['compiled_vs_engine']:.2f}x, first step (compiling) {r['compile_s']:.0f} s")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
