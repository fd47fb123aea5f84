#!/usr/bin/env python
"""Data pipeline: video decode throughput per reader, and DataLoader worker memory with compact annotations.

1. Decode: `--files` synthetic mp4s (`--frames` frames of `--src-size` at 24 fps, H.264 via `write_video`) in a temp
   folder; every installed reader (decord, PyAV, OpenCV) decodes `--clips` 33-frame clips with random starts, single
   process, (a) through `OSPDataset` at a 33x256x256 bucket (frame selection, uint8 -> [-1, 1], cover-resize and
   centre crop) and (b) decode only through `read_frames`. Rounds are interleaved across readers (`--repeat`) and
   the best round is reported, as clips/s and the ratio to PyAV measured in the same run.
2. Memory: `--items` annotation items (a JSON list: path, ~100-char caption, resolution, num_frames, fps; the paths
   point at the mp4s above, round-robin) -> `load_annotations` -> `assign_buckets` -> `GroupedBatchSampler` ->
   `DataLoader(num_workers=--workers, collate_fn=collate)` over `--batches` micro-batches of 1 at `--mem-bucket`.
   RSS, PSS and USS of the main process and of each worker are read after every worker delivered its first batch
   and again after the last one (PSS/USS from /proc/<pid>/smaps: under fork RSS counts shared pages in every
   process, USS is what a process owns alone, PSS shares the rest out). The same loader also runs with the
   annotation list kept as per-item Python dicts (what the official loaders hold) as the reference. Each
   configuration runs in its own subprocess, so neither inherits the other's heap.
   Static sizes: `anno.nbytes` against the same list as Python dicts (tracemalloc and RSS growth of `json.load`).

Timings vary with the machine's load (other processes share the cores); compare figures of the same run.

Examples:
  python benchmarks/data_bench.py --quick                     # < 1 min on 2 cores
  python benchmarks/data_bench.py                             # defaults: 200k items, 4 workers, 200 batches
  python benchmarks/data_bench.py --src-size 360x640 --clips 50 --skip-memory   # with a real resize
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FPS = 24.0
WORDS = ("a", "the", "slow", "camera", "pan", "over", "green", "hills", "while", "bright", "clouds", "drift",
         "across", "blue", "sky", "close", "up", "of", "young", "woman", "smiling", "city", "street", "at",
         "night", "with", "neon", "lights", "and", "rain", "reflections", "on", "wet", "asphalt", "dog", "running")


# ---------------------------------------------------------------------------------------------------- inputs
def write_clips(folder: Path, files: int, frames: int, height: int, width: int) -> list[str]:
    """`files` distinct mp4s (the moving pattern shifted per file); returns their names."""
    import torch

    from mindspeed_mm.osp.data.synthetic import moving_pattern
    from mindspeed_mm.osp.data.video_io import write_video
    base = moving_pattern(frames, height, width)
    names = []
    for i in range(files):
        name = f"clip_{i:03d}.mp4"
        write_video(folder / name, torch.roll(base, shifts=(i * 13, i * 29), dims=(1, 2)), FPS)
        names.append(name)
    return names


def caption(rng) -> str:
    words, length = [], 0
    while length < 100:
        word = WORDS[int(rng.integers(len(WORDS)))]
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:100]


def write_annotations(path: Path, names: list[str], items: int, height: int, width: int, frames: int) -> None:
    import numpy as np
    rng = np.random.default_rng(0)
    data = [{"path": names[i % len(names)], "cap": caption(rng), "resolution": {"height": height, "width": width},
             "num_frames": frames, "fps": FPS} for i in range(items)]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def bucket_config(t: int, h: int, w: int):
    from mindspeed_mm.osp.data.buckets import BucketConfig
    return BucketConfig(num_frames=t, min_num_frames=min(29, t), ae_stride_t=4, train_fps=FPS,
                        force_resolution=True, max_height=h, max_width=w, small_buckets="keep")


def parse_size(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().split("x"))


# ---------------------------------------------------------------------------------------------------- memory
def memory(pid: int) -> dict:
    """rss, pss, uss in bytes (psutil when installed, else /proc/<pid>/status and smaps_rollup)."""
    try:
        import psutil
        info = psutil.Process(pid).memory_full_info()
        return {"rss": info.rss, "pss": info.pss, "uss": info.uss}
    except ImportError:
        pass
    fields = {}
    for name in ("status", "smaps_rollup"):
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[-1] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[-2]) * 1024
    return {"rss": fields["VmRSS"], "pss": fields["Pss"],
            "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)}


class DictItemsDataset:
    """Reference: the annotation list kept as per-item Python dicts (as the official loaders keep it); every
    sample reads its dict's fields, then decodes through the same `OSPDataset`, so only the annotation storage
    differs from the compact run."""

    def __init__(self, items: list, inner):
        self.items, self.inner = items, inner

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        item = self.items[key[0]]
        _ = (item["path"], item["cap"], item["resolution"]["height"], item["resolution"]["width"],
             item["num_frames"], item["fps"])
        return self.inner[key]


def measure_static(spec: dict) -> dict:
    """Python dicts from json.load vs the compact arrays of load_annotations, and the load/assign times."""
    import tracemalloc

    from mindspeed_mm.osp.data.annotations import load_annotations
    from mindspeed_mm.osp.data.buckets import assign_buckets
    path, out = spec["anno"], {}
    gc.collect()
    before = memory(os.getpid())["rss"]
    start = time.perf_counter()
    with open(path, encoding="utf-8") as f:
        items = json.load(f)
    out["json_seconds"] = time.perf_counter() - start
    out["dicts_rss_bytes"] = memory(os.getpid())["rss"] - before
    del items
    gc.collect()
    tracemalloc.start()
    with open(path, encoding="utf-8") as f:
        items = json.load(f)
    out["dicts_traced_bytes"] = tracemalloc.get_traced_memory()[0]
    del items
    gc.collect()
    tracemalloc.stop()
    start = time.perf_counter()
    anno = load_annotations(path)
    out["load_seconds"] = time.perf_counter() - start
    out["anno_nbytes"] = anno.nbytes
    out["items"] = len(anno)
    start = time.perf_counter()
    assignment = assign_buckets(anno, bucket_config(*spec["bucket"]), 1)
    out["assign_seconds"] = time.perf_counter() - start
    out["buckets"] = assignment.counts()
    del anno
    gc.collect()
    tracemalloc.start()
    anno = load_annotations(path)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out["anno_traced_bytes"], out["load_peak_traced_bytes"] = current, peak
    return out


def measure_loader(spec: dict) -> dict:
    """RSS/PSS/USS of the main process and each DataLoader worker, after the workers' first batches and at the end."""
    import torch

    from mindspeed_mm.osp.data.annotations import load_annotations
    from mindspeed_mm.osp.data.buckets import assign_buckets
    from mindspeed_mm.osp.data.dataset import OSPDataset, SampleConfig, collate
    from mindspeed_mm.osp.data.sampler import GroupedBatchSampler
    me = os.getpid()
    base = memory(me)
    anno = load_annotations(spec["anno"])
    buckets = bucket_config(*spec["bucket"])
    assignment = assign_buckets(anno, buckets, 1)
    dataset = OSPDataset(anno, assignment, buckets, SampleConfig(video_backend=spec["backend"]))
    if spec["mode"] == "dicts":
        with open(spec["anno"], encoding="utf-8") as f:
            dataset = DictItemsDataset(json.load(f), dataset)
    gc.collect()
    loaded = memory(me)
    sampler = GroupedBatchSampler(assignment.bucket_of, micro_batch_size=1, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=spec["workers"],
                                         collate_fn=collate)
    it = iter(loader)
    workers = [w.pid for w in getattr(it, "_workers", [])]
    if not workers:
        import psutil
        workers = [c.pid for c in psutil.Process(me).children()]
    warm = min(spec["workers"], spec["batches"])
    for _ in range(warm):   # batches come round-robin: every worker has built one
        next(it)
    first = {"main": memory(me), **{str(pid): memory(pid) for pid in workers}}
    start = time.perf_counter()
    for _ in range(spec["batches"] - warm):
        next(it)
    seconds = time.perf_counter() - start
    last = {"main": memory(me), **{str(pid): memory(pid) for pid in workers}}
    del it
    return {"mode": spec["mode"], "base": base, "loaded": loaded, "first": first, "last": last,
            "workers": [str(p) for p in workers], "seconds": seconds, "timed_batches": spec["batches"] - warm,
            "anno_nbytes": anno.nbytes}


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode:
        raise RuntimeError(f"measurement {spec['kind']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- decode
def decode_bench(args, folder: Path, names: list[str], backends: list[str]) -> list[dict]:
    import numpy as np
    import torch

    from mindspeed_mm.osp.data.annotations import load_annotations
    from mindspeed_mm.osp.data.buckets import assign_buckets
    from mindspeed_mm.osp.data.dataset import OSPDataset, SampleConfig
    from mindspeed_mm.osp.data.video_io import read_frames
    t, h, w = args.bucket
    src_h, src_w = args.src_size
    anno_path = folder / "decode.json"
    write_annotations(anno_path, names, len(names), src_h, src_w, args.frames)
    anno = load_annotations(anno_path)
    buckets = bucket_config(t, h, w)
    assignment = assign_buckets(anno, buckets, 1)
    if assignment.counts() != {f"{t}x{h}x{w}": len(names)}:
        raise RuntimeError(f"expected every clip in bucket {t}x{h}x{w}, got {assignment.counts()} "
                           f"(dropped {assignment.dropped()}); give --frames >= {t}")
    bucket = int(assignment.bucket_of[0])
    datasets = {b: OSPDataset(anno, assignment, buckets, SampleConfig(video_backend=b, caption_dropout=0.0))
                for b in backends}
    rng = np.random.default_rng(1)
    starts = rng.integers(0, args.frames - t + 1, size=args.clips)
    paths = [str(folder / names[j % len(names)]) for j in range(args.clips)]

    def via_dataset(backend: str) -> float:
        ds = datasets[backend]
        start = time.perf_counter()
        for j in range(args.clips):
            ds.set_epoch(j // len(names))   # a new random window per pass over the files
            video = ds[(j % len(names), bucket)]["video"]
        elapsed = time.perf_counter() - start
        assert tuple(video.shape) == (3, t, h, w), video.shape
        return elapsed

    def via_read_frames(backend: str) -> float:
        start = time.perf_counter()
        for j in range(args.clips):
            frames = read_frames(paths[j], range(int(starts[j]), int(starts[j]) + t), backend=backend)
        elapsed = time.perf_counter() - start
        assert tuple(frames.shape) == (t, src_h, src_w, 3), frames.shape
        return elapsed

    paths_of = {"dataset": via_dataset, "read_frames": via_read_frames}
    for b in backends:   # warm-up: imports, codec setup, page cache
        datasets[b][(0, bucket)]
        read_frames(paths[0], range(t), backend=b)
    best: dict = {}
    for _ in range(args.repeat):
        for b in backends:
            for name, fn in paths_of.items():
                seconds = fn(b)
                best[(b, name)] = min(seconds, best.get((b, name), float("inf")))
    print(f"\n## decode: {args.clips} clips of {t}x{h}x{w} from {len(names)} mp4s of {args.frames}x{src_h}x{src_w} "
          f"@ {FPS:g} fps, random start, single process, torch threads {torch.get_num_threads()}, "
          f"best of {args.repeat} interleaved round(s)")
    if (src_h, src_w) == (h, w):
        print("   (source size = bucket size: the dataset's cover-resize is a no-op; --src-size changes that)")
    print(f"{'backend':8} {'path':12} {'clips/s':>8} {'frames/s':>9} {'ms/clip':>8} {'vs av':>6}")
    rows = []
    for name in paths_of:
        for b in backends:
            seconds = best[(b, name)]
            rate = args.clips / seconds
            ref = args.clips / best[("av", name)] if ("av", name) in best else None
            rows.append({"backend": b, "path": name, "clips_per_s": rate, "ms_per_clip": 1000 * seconds / args.clips})
            print(f"{b:8} {name:12} {rate:8.1f} {rate * t:9.0f} {1000 * seconds / args.clips:8.1f} "
                  f"{(f'{rate / ref:.2f}' if ref else '-'):>6}")
    for b in backends:
        ds_ms, rf_ms = (1000 * best[(b, n)] / args.clips for n in paths_of)
        print(f"  -> {b}: dataset {ds_ms:.1f} ms/clip = decode {rf_ms:.1f} + selection/convert/resize/caption "
              f"{ds_ms - rf_ms:.1f} ({(ds_ms - rf_ms) / ds_ms:.0%} of the sample)")
    return rows


# ---------------------------------------------------------------------------------------------------- report
def mib(value: float) -> str:
    return f"{value / 2**20:8.1f}"


def print_static(static: dict) -> None:
    n = static["items"]
    print(f"\n## annotations: {n} items (JSON list, ~100-char captions)")
    print(f"{'held as':34} {'MiB':>8} {'B/item':>7}")
    arrays = static["anno_nbytes"]
    for label, value in (("compact arrays (anno.nbytes)", arrays),
                         ("  same, tracemalloc after load", static["anno_traced_bytes"]),
                         ("Python dicts (tracemalloc)", static["dicts_traced_bytes"]),
                         ("Python dicts (RSS growth)", static["dicts_rss_bytes"]),
                         ("load_annotations peak (transient)", static["load_peak_traced_bytes"])):
        print(f"{label:34} {mib(value)} {value / n:7.0f}")
    print(f"  -> dicts/arrays: {static['dicts_traced_bytes'] / arrays:.1f}x (tracemalloc), "
          f"{static['dicts_rss_bytes'] / arrays:.1f}x (RSS); json.load {static['json_seconds']:.2f} s, "
          f"load_annotations {static['load_seconds']:.2f} s, assign_buckets {static['assign_seconds']:.2f} s; "
          f"buckets {static['buckets']}")


def print_loader(results: list[dict], args) -> None:
    t, h, w = args.mem_bucket
    print(f"\n## DataLoader memory: {args.items} items, {args.workers} workers, {args.batches} micro-batches of 1 "
          f"at {t}x{h}x{w} ({args.backend}); 'start' = after every worker's first batch")
    print(f"{'annotations':11} {'process':8} {'RSS start':>9} {'RSS end':>8} {'PSS start':>9} {'PSS end':>8} "
          f"{'USS start':>9} {'USS end':>8} {'USS +':>7}")
    summary = {}
    for res in results:
        growth = []
        for key in ["main"] + res["workers"]:
            a, b = res["first"][key], res["last"][key]
            label = "main" if key == "main" else f"worker{res['workers'].index(key)}"
            print(f"{res['mode']:11} {label:8} {mib(a['rss']):>9} {mib(b['rss'])} {mib(a['pss']):>9} {mib(b['pss'])} "
                  f"{mib(a['uss']):>9} {mib(b['uss'])} {(b['uss'] - a['uss']) / 2**20:7.1f}")
            if key != "main":
                growth.append(b["uss"] - a["uss"])
        pss_total = sum(res["last"][k]["pss"] for k in ["main"] + res["workers"])
        rss_total = sum(res["last"][k]["rss"] for k in ["main"] + res["workers"])
        per_worker = sum(growth) / max(len(growth), 1)
        samples = res["timed_batches"]
        summary[res["mode"]] = (pss_total, per_worker)
        print(f"  -> {res['mode']}: main before the loader {mib(res['loaded']['rss']).strip()} MiB RSS "
              f"(+{(res['loaded']['rss'] - res['base']['rss']) / 2**20:.1f} for annotations, buckets, dataset); "
              f"USS growth per worker {per_worker / 2**20:.2f} MiB over {samples} timed samples "
              f"({per_worker / max(samples / max(len(growth), 1), 1) / 1024:.1f} KiB per sample it built); "
              f"all processes at the end: PSS {pss_total / 2**20:.1f} MiB (sum of RSS {rss_total / 2**20:.1f}); "
              f"{samples / res['seconds']:.1f} samples/s")
    if "arrays" in summary and "dicts" in summary:
        (pa, ga), (pd, gd) = summary["arrays"], summary["dicts"]
        print(f"  -> dicts/arrays: total PSS {pd / pa:.2f}x ({(pd - pa) / 2**20:+.1f} MiB), USS growth per worker "
              f"{gd / 2**20:.2f} vs {ga / 2**20:.2f} MiB")


def machine_line(backends: list[str]) -> str:
    import importlib.metadata as md

    import torch

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "?"
    dists = {"decord": "decord", "av": "av", "cv2": "opencv-python-headless"}
    readers = []
    for b in backends:
        v = version(dists[b])
        if b == "cv2" and v == "?":
            import cv2
            v = cv2.__version__
        readers.append(f"{b} {v}")
    try:
        import psutil  # noqa: F401
        mem = "psutil"
    except ImportError:
        mem = "/proc"
    return (f"machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, readers: {', '.join(readers) or 'none'}, memory via {mem}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=100, help="clips decoded per reader and path per round")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved decode rounds (the best is reported)")
    parser.add_argument("--files", type=int, default=8, help="synthetic mp4s written")
    parser.add_argument("--frames", type=int, default=64, help="frames per mp4")
    parser.add_argument("--src-size", type=parse_size, default=(256, 256), help="HxW of the mp4s")
    parser.add_argument("--bucket", type=parse_size, default=(33, 256, 256), help="TxHxW of the decode bucket")
    parser.add_argument("--backends", nargs="+", default=None, help="readers (default: all installed)")
    parser.add_argument("--items", type=int, default=200_000, help="annotation items of the memory test")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers")
    parser.add_argument("--batches", type=int, default=200, help="micro-batches (of 1) the DataLoader yields")
    parser.add_argument("--mem-bucket", type=parse_size, default=(33, 64, 64), help="TxHxW of the memory test")
    parser.add_argument("--backend", default=None, help="reader of the memory test (default: the first installed)")
    parser.add_argument("--no-reference", action="store_true", help="skip the per-item-dict DataLoader run")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small setting: 24 clips x 1 round, 20k items, "
                                                             "2 workers, 40 batches")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(measure_static(spec) if spec["kind"] == "static" else measure_loader(spec)))
        return 0
    if args.quick:
        args.clips, args.repeat, args.files, args.items, args.workers, args.batches = 24, 1, 4, 20_000, 2, 40
    from mindspeed_mm.osp.data.video_io import available_backends
    installed = available_backends()
    backends = args.backends or installed
    missing = [b for b in backends if b not in installed]
    if missing:
        parser.error(f"reader(s) not installed: {missing}; installed: {installed}")
    args.backend = args.backend or installed[0]
    if args.frames < max(args.bucket[0], args.mem_bucket[0]):
        parser.error(f"--frames {args.frames} is shorter than a bucket's T")
    print(machine_line(installed))
    results: dict = {"machine": machine_line(installed)}
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="osp_data_bench_") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        names = write_clips(folder, args.files, args.frames, *args.src_size)
        print(f"wrote {len(names)} mp4s of {args.frames}x{args.src_size[0]}x{args.src_size[1]} in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        if not args.skip_decode:
            results["decode"] = decode_bench(args, folder, names, backends)
        if not args.skip_memory:
            anno_path = folder / "items.json"
            start = time.perf_counter()
            write_annotations(anno_path, names, args.items, args.src_size[0], args.src_size[1], args.frames)
            print(f"\nwrote {args.items} annotation items ({anno_path.stat().st_size / 2**20:.1f} MiB JSON) in "
                  f"{time.perf_counter() - start:.1f} s", flush=True)
            common = {"anno": str(anno_path), "bucket": list(args.mem_bucket)}
            results["static"] = run_child({"kind": "static", **common})
            print_static(results["static"])
            loader = []
            for mode in ("arrays",) if args.no_reference else ("arrays", "dicts"):
                loader.append(run_child({"kind": "loader", "mode": mode, "workers": args.workers,
                                         "batches": args.batches, "backend": args.backend, **common}))
            results["loader"] = loader
            print_loader(loader, args)
    print(f"\ntotal {time.perf_counter() - wall:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
