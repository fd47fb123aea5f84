#!/usr/bin/env python
"""`osp data curate` throughput per stage on generated clips.

`--videos` synthetic mp4s (`--seconds` s of `--size` at `--fps`, H.264 with a keyframe every second, a hard cut
every `--shot-seconds` s, a moving square on a gradient, a white caption burnt into the bottom of every other video,
every fifth video static) are curated single-process with the stages slice, cuts, motion, ocr (a stand-in detector
that boxes near-white pixels: EasyOCR is not installed here), aesthetic (a stand-in scorer: brightness) and the
motion re-check. The table gives, per stage, the items in and out, the processing time, items/s and the
real-time factor (seconds of video per second of processing). Timings vary with the machine's load.

Examples:
  python benchmarks/curate_bench.py --quick          # a few seconds on 2 cores
  python benchmarks/curate_bench.py --size 360x640 --seconds 40 --videos 4
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.modules.setdefault("curate_bench", sys.modules[__name__])


def white_boxes(frame):
    """Stand-in text detector: the bounding box of near-white pixels."""
    ys, xs = np.nonzero((frame >= 235).all(-1))
    return [] if ys.size == 0 else [(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)]


def brightness(clip):
    return float(clip.sample(3).mean()) / 25.5


def make_video(path: Path, seconds: float, fps: float, h: int, w: int, shot_s: float, seed: int, text: bool,
               still: bool) -> None:
    import av
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    n, side = int(seconds * fps), max(8, min(h, w) // 5)
    ramp = (np.linspace(0, 1, h)[:, None] + np.linspace(0, 1, w)[None, :]) / 2
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "20", "preset": "veryfast", "g": str(int(fps)), "sc_threshold": "0"}
        for t in range(n):
            shot = int(t / fps // shot_s)
            if t == 0 or int((t - 1) / fps // shot_s) != shot:
                c0, c1 = rng.integers(20, 200, size=(2, 3))
                bg = (c0 + (c1 - c0) * ramp[..., None]).astype(np.uint8)
                colour = (bg[h // 2, w // 2].astype(int) + 110) % 220
                x0, y0 = rng.integers(0, w - side), rng.integers(0, h // 2)
            frame = bg.copy()
            k = 0 if still else t
            x, y = int(x0 + 1.5 * k) % (w - side), int(y0 + 0.7 * k) % (h - side)
            frame[y:y + side, x:x + side] = colour
            if text:
                img = Image.fromarray(frame)
                ImageDraw.Draw(img).text((w // 8, h - 12), "A CAPTION BURNT IN", fill=(255, 255, 255))
                frame = np.asarray(img)
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        c.mux(s.encode())
    path.with_suffix(".txt").write_text("a square moving over a gradient\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=6, help="input videos (default 6)")
    p.add_argument("--seconds", type=float, default=40.0, help="length of each video (default 40)")
    p.add_argument("--fps", type=float, default=24.0, help="frame rate (default 24)")
    p.add_argument("--size", default="144x256", help="HEIGHTxWIDTH (default 144x256)")
    p.add_argument("--shot-seconds", type=float, default=6.0, help="a hard cut every this many seconds (default 6)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1: per-stage times are exact)")
    p.add_argument("--quick", action="store_true", help="3 videos of 20 s at 96x160")
    args = p.parse_args(argv)
    if args.quick:
        args.videos, args.seconds, args.size = 3, 20.0, "96x160"
    h, w = (int(v) for v in args.size.lower().split("x"))

    from mindspeed_mm.osp.data.curate import CurateConfig, curate
    from mindspeed_mm.osp.data.curate.report import format_report

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        t0 = time.perf_counter()
        for i in range(args.videos):
            make_video(raw / f"v{i:03d}.mp4", args.seconds, args.fps, h, w, args.shot_seconds, i, text=i % 2 == 1,
                       still=i % 5 == 4)
        made = time.perf_counter() - t0
        cfg = CurateConfig(stages=("slice", "cuts", "motion", "ocr", "aesthetic"), ocr_detector="curate_bench:white_boxes",
                           aesthetic_scorer="curate_bench:brightness", aesthetic_min=0.0)
        sys.path.insert(0, str(Path(__file__).parent))
        t0 = time.perf_counter()
        result = curate(raw, Path(tmp) / "out", cfg, workers=args.workers, log=lambda m: None)
        wall = time.perf_counter() - t0
    report = result["report"]
    print(f"{args.videos} videos of {args.seconds:g} s, {h}x{w} at {args.fps:g} fps (generated in {made:.1f} s); "
          f"curated in {wall:.2f} s wall with {args.workers} worker(s)")
    print(f"{'stage':<10} {'in':>6} {'out':>6} {'time s':>8} {'items/s':>9} {'video s/s':>10}")
    for name, r in report["stages"].items():
        rate = f"{r['in'] / r['seconds']:.1f}" if r["seconds"] > 0 and r["in"] else "-"
        rt = f"{r['in_s'] / r['seconds']:.1f}" if r["seconds"] > 0 and r["in"] else "-"
        print(f"{name:<10} {r['in']:>6} {r['out']:>6} {r['seconds']:>8.3f} {rate:>9} {rt:>10}")
    print(f"overall: {report['input_seconds'] / wall:.1f} s of video per s of wall time")
    print()
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
