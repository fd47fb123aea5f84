#!/usr/bin/env python
"""WF-VAE speed and peak memory: the reference (direct convolutions) vs the fast path (`use_fast_conv`, Winograd
on CPU), whole-clip vs chunked encode/decode, random weights, batch 1.

Prints, per model and size: encode/decode seconds, videos/s = 1/(t_enc + t_dec) (the paper's throughput), peak
memory of each call, the fast/reference speed ratio and the max output difference, and the chunked/whole ratios,
all measured in the same run (reference and fast alternate). Each CPU measurement runs in its own subprocess and
reports the growth of ru_maxrss over the process's peak before the call (model and input already resident,
glibc mmap threshold fixed); CUDA uses torch.cuda.max_memory_allocated (the fast path is CPU-only, so on CUDA
both paths are the direct convolution).

Examples:
  python benchmarks/vae_bench.py                                  # CPU default: v1.3 and v1.5 at 9x64x64
  OMP_NUM_THREADS=2 python benchmarks/vae_bench.py --sizes 17x128x128 33x256x256
  OMP_NUM_THREADS=1 python benchmarks/vae_bench.py --models v13 --sizes 17x128x128 --repeat 2 --default-malloc
  python benchmarks/vae_bench.py --sizes 33x256x256 33x512x512 --device cuda --paths reference
  python benchmarks/vae_bench.py --models v15 --sizes 33x256x256 --modes decode --chunk-dec 1
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A fixed glibc mmap threshold returns freed large buffers to the OS, so ru_maxrss follows the tensor peak
# instead of heap fragmentation (with the default dynamic threshold it mostly measures the allocator).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
sys.path.insert(0, str(ROOT))


def measure(spec: dict) -> dict:
    """One timed call in this process: spec = model, size, op, chunk, device, dtype, repeat."""
    import resource

    import torch

    from mindspeed_mm.osp.vae import WFVAE
    torch.manual_seed(0)
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    vae = WFVAE.from_preset(spec["model"]).to(device=device, dtype=dtype).eval()
    vae.use_fast_conv(spec["path"] == "fast")
    t, h, w = spec["size"]
    r = vae.temporal_compression
    if spec["op"] == "encode":
        x = (torch.rand(1, 3, t, h, w, device=device) * 2 - 1).to(dtype)
        run = lambda: vae.encode(x, chunk_frames=spec["chunk"]).mean  # noqa: E731
    else:
        x = torch.randn(1, vae.latent_dim, (t - 1) // r + 1, h // 8, w // 8, device=device, dtype=dtype)
        run = lambda: vae.decode(x, chunk_frames=spec["chunk"])  # noqa: E731
    if device.type == "cuda":
        run()  # warm-up (cudnn autotune, allocator)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(spec["repeat"]):
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"seconds": min(times), "peak_bytes": max(peak, 0)}


def max_difference(spec: dict) -> dict:
    """Largest |fast - reference| of the encoder's latents (mode) and of the decoded video, whole clip."""
    import torch

    from mindspeed_mm.osp.vae import WFVAE
    torch.manual_seed(0)
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    vae = WFVAE.from_preset(spec["model"]).to(device=device, dtype=dtype).eval()
    t, h, w = spec["size"]
    x = (torch.rand(1, 3, t, h, w, device=device) * 2 - 1).to(dtype)
    out = {}
    with torch.no_grad():
        results = []
        for fast in (False, True):
            vae.use_fast_conv(fast)
            z = vae.encode(x).mode()
            results.append((z, vae.decode(results[0][0] if results else z)))
        out["latent_max_diff"] = (results[0][0] - results[1][0]).abs().max().item()
        out["video_max_diff"] = (results[0][1] - results[1][1]).abs().max().item()
    return out


def run_isolated(spec: dict, diff: bool = False) -> dict:
    if spec["device"] != "cpu":
        return max_difference(spec) if diff else measure(spec)
    flag = "--child-diff" if diff else "--child"
    out = subprocess.run([sys.executable, __file__, flag, json.dumps(spec)], capture_output=True, text=True,
                         check=False, env={**os.environ, "PYTHONPATH": str(ROOT),
                                           **({} if spec.get("default_malloc") else MALLOC_ENV)})
    if out.returncode:
        raise RuntimeError(f"measurement {spec} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["v13", "v15"], help="WF-VAE presets (full size: v13 v15 l16)")
    parser.add_argument("--sizes", nargs="+", default=None, help="TxHxW (default 9x64x64 on CPU, 33x256x256 and "
                                                                 "33x512x512 on CUDA)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--chunk-enc", type=int, default=None, help="video frames per encoder chunk (default R)")
    parser.add_argument("--chunk-dec", type=int, default=1, help="latent frames per decoder chunk")
    parser.add_argument("--modes", nargs="+", default=["encode", "decode"], choices=["encode", "decode"])
    parser.add_argument("--paths", nargs="+", default=["reference", "fast"], choices=["reference", "fast"],
                        help="convolution paths to time (fast = WFVAE.use_fast_conv)")
    parser.add_argument("--repeat", type=int, default=1, help="timed repetitions (the minimum is reported)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's default mmap threshold (what a normal run has: freed buffers are reused, "
                             "so repeated calls are faster); peak memory then measures the allocator too")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-diff", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.child_diff:
        fn = measure if args.child else max_difference
        print(json.dumps(fn(json.loads(args.child or args.child_diff))))
        return 0
    sizes = args.sizes or (["33x256x256", "33x512x512"] if args.device.startswith("cuda") else ["9x64x64"])
    print(f"device={args.device} dtype={args.dtype} threads={os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'model':5} {'size':11} {'op':6} {'path':9} {'mode':8} {'chunk':>5} {'seconds':>8} {'peak MiB':>9}")
    results = []
    for model in args.models:
        r = 4 if "v13" in model or "l16" in model else 8
        for size in sizes:
            t, h, w = (int(v) for v in size.split("x"))
            row = {"model": model, "size": size}
            for op in args.modes:
                chunk = (args.chunk_enc or r) if op == "encode" else args.chunk_dec
                for mode, c in (("whole", None), ("chunked", chunk)):
                    for path in args.paths:
                        spec = {"model": model, "size": [t, h, w], "op": op, "chunk": c, "device": args.device,
                                "dtype": args.dtype, "repeat": args.repeat, "path": path,
                                "default_malloc": args.default_malloc}
                        res = run_isolated(spec)
                        row[f"{op}_{path}_{mode}"] = res
                        print(f"{model:5} {size:11} {op:6} {path:9} {mode:8} {str(c or '-'):>5} {res['seconds']:8.3f} "
                              f"{res['peak_bytes'] / 2**20:9.1f}", flush=True)
            if len(args.paths) == 2:
                row.update(run_isolated({"model": model, "size": [t, h, w], "device": args.device,
                                         "dtype": args.dtype}, diff=True))
            print(f"  -> {model} {size}: " + "; ".join(_summary(row, args.modes, args.paths)), flush=True)
            results.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _summary(row: dict, modes: list, paths: list) -> list:
    """Throughput per path, fast/reference ratios and differences, chunked/whole memory ratios."""
    out = []
    for path in paths:
        for mode in ("whole", "chunked"):
            if all(f"{op}_{path}_{mode}" in row for op in ("encode", "decode")):
                seconds = row[f"encode_{path}_{mode}"]["seconds"] + row[f"decode_{path}_{mode}"]["seconds"]
                row[f"videos_per_s_{path}_{mode}"] = 1 / seconds
                out.append(f"{path} {mode} {1 / seconds:.3f} videos/s")
    if len(paths) == 2:
        for op in modes:
            ref, fast = row[f"{op}_reference_whole"], row[f"{op}_fast_whole"]
            out.append(f"{op} fast/reference speed {ref['seconds'] / fast['seconds']:.2f}x, "
                       f"memory {fast['peak_bytes'] / max(ref['peak_bytes'], 1):.2f}x")
        if "videos_per_s_fast_whole" in row:
            out.append(f"encode+decode fast/reference "
                       f"{row['videos_per_s_fast_whole'] / row['videos_per_s_reference_whole']:.2f}x")
        out.append(f"max |fast - reference|: latents {row['latent_max_diff']:.1e}, video {row['video_max_diff']:.1e}")
    for op in modes:
        for path in paths:
            whole, chunked = row[f"{op}_{path}_whole"], row[f"{op}_{path}_chunked"]
            out.append(f"{op} {path} chunked/whole: time {chunked['seconds'] / whole['seconds']:.2f}, "
                       f"peak memory {chunked['peak_bytes'] / max(whole['peak_bytes'], 1):.2f}")
    return out


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
