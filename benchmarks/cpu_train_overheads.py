"""The fixed per-step costs of a small DiT's training step on CPU, with the alternatives `osp train` uses there:

* the AdamW update of the model's parameters: torch's default on CPU (one parameter at a time), foreach, and the
  fused CPU kernel that `parallel.make_optimizer` and the VAE trainer switch to on CPU (and how far its weights
  end up from the default's);
* the data-parallel gradient reduction of the distributed optimizer over gloo, 2 processes: reduce-scatter (what
  megatron does) against all-reduce (what `osp train` asks megatron for on gloo, `force_all_reduce`);
* the gradient norm and the clipping scale over the model's gradients: megatron's local fallbacks (used without
  apex / Transformer Engine) against the foreach versions the CPU adaptor installs (`parallel/cpu_adaptor.py`).

    python -m benchmarks.cpu_train_overheads                              # the default model's DiT, 1 thread
    python -m benchmarks.cpu_train_overheads --config examples/train/osp15_suv_tiny.json
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def parameter_shapes(config: Path) -> list:
    from mindspeed_mm.osp.dit.suv import SUVConfig, SUVDiT

    cfg = json.loads(config.read_text())["model"]["transformer"]
    with torch.device("meta"):
        return [p.shape for p in SUVDiT(SUVConfig(**cfg)).parameters()]


def adam_ms(shapes: list, mode: str, steps: int) -> tuple[float, torch.Tensor]:
    """Median ms of one AdamW step in `mode` ("default", "foreach", "fused") and the weights after `steps` steps."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    options = {"default": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[mode]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, **options)
    g = torch.Generator().manual_seed(1)
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(3)]
    times = []
    for i in range(steps):
        for p, grad in zip(params, grads[i % 3]):
            p.grad = grad
        tick = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - tick)
    return 1000 * statistics.median(times), torch.cat([p.detach().flatten() for p in params])


def norm_and_scale_ms(shapes: list, repeat: int) -> dict:
    """Median ms of megatron's local L2-norm / scale fallbacks and of the adaptor's foreach ones, and the two
    norms' relative difference."""
    from megatron.core import utils

    from mindspeed_mm.osp.parallel import cpu_adaptor
    from mindspeed_mm.osp.parallel.cpu_adaptor import foreach_l2_norm, foreach_scale

    cpu_adaptor.apply()   # megatron's fallback returns its norm on device "cuda"
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=g) for s in shapes]
    calls = {"norm megatron": lambda: utils.local_multi_tensor_l2_norm(2048, None, [grads], False),
             "norm foreach": lambda: foreach_l2_norm(2048, None, [grads], False),
             "scale megatron": lambda: utils.local_multi_tensor_scale(2048, None, [grads, grads], 1.0),
             "scale foreach": lambda: foreach_scale(2048, None, [grads, grads], 1.0)}
    out = {}
    for name, fn in calls.items():
        times = []
        for _ in range(repeat):
            tick = time.perf_counter()
            fn()
            times.append(time.perf_counter() - tick)
        out[name] = 1000 * statistics.median(times)
    a, b = float(calls["norm megatron"]()[0]), float(calls["norm foreach"]()[0])
    out["norm rel diff"] = abs(a - b) / a
    return out


def _reduce_worker(rank: int, port: int, numel: int, repeat: int, results) -> None:
    import torch.distributed as dist
    from torch.distributed import _coalescing_manager

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    buffer = torch.randn(numel)
    shard = buffer.view(2, -1)[rank]

    def reduce_scatter():
        with _coalescing_manager(None, async_ops=False):   # as megatron's grad buffers issue it
            dist.reduce_scatter_tensor(shard, buffer)

    def all_reduce():
        with _coalescing_manager(None, async_ops=False):
            dist.all_reduce(buffer)

    for name, fn in (("reduce_scatter", reduce_scatter), ("all_reduce", all_reduce)) * 2:
        times = []
        for _ in range(repeat):
            dist.barrier()
            tick = time.perf_counter()
            fn()
            times.append(time.perf_counter() - tick)
        if rank == 0:
            results[name] = 1000 * statistics.median(times)   # the second round (warm) overwrites the first
    dist.destroy_process_group()


def reduce_ms(numel: int, repeat: int) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_reduce_worker, args=(port, numel, repeat, results), nprocs=2)
        return dict(results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "examples/default_model/train_dit.json",
                   help="an osp train config with an SUV transformer (default: the default model's DiT)")
    p.add_argument("--steps", type=int, default=30, help="AdamW steps per mode (default 30)")
    p.add_argument("--repeat", type=int, default=15, help="collectives per kind (default 15)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as each rank of NPROC=2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    shapes = parameter_shapes(args.config)
    numel = sum(s.numel() for s in shapes)
    print(f"{args.config.name}: {len(shapes)} parameters, {numel / 1e6:.2f}M values; {args.threads} thread(s)")
    ms, weights = {}, {}
    for mode in ("default", "foreach", "fused"):
        ms[mode], weights[mode] = adam_ms(shapes, mode, args.steps)
    for mode in ("default", "foreach", "fused"):
        diff = (weights[mode] - weights["default"]).abs().max().item()
        print(f"AdamW {mode:8s} {ms[mode]:7.2f} ms/step  {ms['default'] / ms[mode]:5.2f}x the default  "
              f"max |w - w_default| after {args.steps} steps: {diff:.1e}")
    t = norm_and_scale_ms(shapes, args.repeat)
    print(f"gradient norm: megatron's fallback {t['norm megatron']:.2f} ms, foreach {t['norm foreach']:.2f} ms "
          f"({t['norm megatron'] / t['norm foreach']:.1f}x, relative difference {t['norm rel diff']:.1e}); "
          f"clipping scale: {t['scale megatron']:.2f} ms, foreach {t['scale foreach']:.2f} ms "
          f"({t['scale megatron'] / t['scale foreach']:.1f}x)")
    even = numel + numel % 2
    times = reduce_ms(even, args.repeat)
    print(f"gloo, 2 processes, {even * 4 / 2 ** 20:.1f} MiB of fp32 gradients: reduce-scatter "
          f"{times['reduce_scatter']:.1f} ms, all-reduce {times['all_reduce']:.1f} ms "
          f"({times['reduce_scatter'] / times['all_reduce']:.2f}x)")


if __name__ == "__main__":
    main()
