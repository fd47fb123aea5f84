"""`osp data`: scan a folder into an annotation, validate a dataset, print its buckets, extract a feature cache,
curate raw videos into training clips."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path


def load_bucket_config(path: str):
    """A BucketConfig from a JSON file: bucket keys at the top level, under `data.buckets` or `buckets` (a
    training config), or a MindSpeed-MM data.json (its preprocess_parameters)."""
    from mindspeed_mm.osp.data.buckets import bucket_config_from_dict, bucket_config_from_mindspeed

    from mindspeed_mm.osp.files import read_json_object

    p = Path(path)
    values = read_json_object(p, "bucket config")
    if "dataset_param" in values:
        cfg, _ = bucket_config_from_mindspeed(values)
        return cfg
    if "data" in values and "model" in values:   # an `osp train` config: its rule defaults to model.version
        values = {"rule": values["model"].get("version", "v1.5"), **values["data"].get("buckets", {})}
    values = values.get("data", values)
    values = values.get("buckets", values)
    try:
        return bucket_config_from_dict(values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{p}: {e}") from e


# ---------------------------------------------------------------------------------------------------- buckets
def bucket_report(anno, assignment, cfg, *, dp_size: int, micro_batch: int, grad_acc: int,
                  batch_tokens=None) -> dict:
    from mindspeed_mm.osp.data.sampler import steps_per_epoch

    tokens = [cfg.tokens(s) for s in assignment.shapes]
    batches = steps_per_epoch(assignment.bucket_counts(), dp_size, micro_batch, batch_tokens, tokens)
    return {"buckets": assignment.counts(), "dropped": assignment.dropped(),
            "tokens_per_sample": {assignment.key(s): t for s, t in zip(assignment.shapes, tokens)
                                  if assignment.key(s) in assignment.counts()},
            "items": len(anno), "kept": int((assignment.bucket_of >= 0).sum()),
            "skipped_unsupported": len(anno.skipped), "global_batches_per_epoch": batches,
            "steps_per_epoch": batches // grad_acc, "notes": assignment.notes}


def _buckets(args) -> int:
    from mindspeed_mm.osp.data.annotations import load_annotations, summarize_skipped
    from mindspeed_mm.osp.data.buckets import assign_buckets

    for flag in ("dp", "micro_batch", "grad_acc", "sp"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.batch_tokens is not None and args.batch_tokens < 1:
        raise ValueError(f"--batch-tokens must be >= 1, got {args.batch_tokens}")
    cfg = load_bucket_config(args.config)
    if args.sp is not None:
        cfg = dataclasses.replace(cfg, sp_size=args.sp)
    anno = load_annotations(args.data)
    global_batch = args.dp * args.micro_batch * args.grad_acc
    per_shape = None
    if args.batch_tokens is not None:
        def per_shape(shape):
            return args.dp * args.grad_acc * max(1, args.batch_tokens // cfg.tokens(shape))
    assignment = assign_buckets(anno, cfg, global_batch, per_shape)
    report = bucket_report(anno, assignment, cfg, dp_size=args.dp, micro_batch=args.micro_batch,
                           grad_acc=args.grad_acc, batch_tokens=args.batch_tokens)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{report['items']} items, {report['kept']} kept in {len(report['buckets'])} bucket(s) "
          f"(rule {cfg.rule}{', five ratios' if cfg.force_5_ratio else ''})")
    width = max([len(k) for k in report["buckets"]] + [6])
    print(f"  {'TxHxW':<{width}}  {'items':>7}  {'tokens':>7}")
    for key, count in report["buckets"].items():
        print(f"  {key:<{width}}  {count:>7}  {report['tokens_per_sample'][key]:>7}")
    if report["dropped"]:
        print("dropped: " + ", ".join(f"{r} {n}" for r, n in report["dropped"].items()))
    if anno.skipped:
        print(summarize_skipped(anno.skipped))
    for note in report["notes"]:
        print(f"note: {note}")
    batch = f"batch_tokens {args.batch_tokens}" if args.batch_tokens else f"micro-batch {args.micro_batch}"
    print(f"layout DP{args.dp}, {batch}, gradient accumulation {args.grad_acc}: "
          f"{report['global_batches_per_epoch']} global batches, {report['steps_per_epoch']} optimizer steps per epoch")
    return 0


# ---------------------------------------------------------------------------------------------------- validate
def check_item(anno, i: int, backend=None, decode: bool = True) -> list[str]:
    """Problems of item i: missing file, undecodable media, fewer frames than declared, resolution mismatch."""
    import os

    from mindspeed_mm.osp.data.dataset import read_image
    from mindspeed_mm.osp.data.video_io import VideoReadError, probe, read_frames

    path = anno.paths[i]
    if not os.path.isfile(path):
        return ["missing file"]
    problems = []
    try:
        if anno.is_image[i]:
            frames = read_image(path)
            h, w = frames.shape[1:3]
        else:
            info = probe(path, backend=backend)
            h, w = info.height, info.width
            declared = int(anno.num_frames[i])
            start = max(0, int(anno.cut[i, 0]))
            if declared > 0 and decode:
                read_frames(path, [start + declared - 1], backend=backend)
            elif declared > 0 and info.num_frames < start + declared:
                problems.append(f"{info.num_frames} frames in the file, {start + declared} declared")
    except VideoReadError as e:
        message = str(e).split(": ", 1)[-1]
        return [f"unreadable: {message}" if "frame" not in message else f"too few frames: {message}"]
    if anno.height[i] > 0 and (anno.height[i], anno.width[i]) != (h, w):
        problems.append(f"resolution {h}x{w} in the file, {anno.height[i]}x{anno.width[i]} declared")
    return problems


def _validate(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from mindspeed_mm.osp.data.annotations import load_annotations, summarize_skipped

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    anno = load_annotations(args.data)
    with ThreadPoolExecutor(args.workers) as pool:
        results = list(tqdm(pool.map(lambda i: check_item(anno, i, args.backend, not args.fast), range(len(anno))),
                            total=len(anno), desc="validating", unit="item", disable=not sys.stderr.isatty()))
    bad = [(anno.paths[i], p) for i, problems in enumerate(results) for p in problems]
    if args.json:
        print(json.dumps({"items": len(anno), "bad": [{"path": p, "problem": q} for p, q in bad],
                          "skipped": [{"path": p, "reason": r} for p, r in anno.skipped]}, indent=1))
    else:
        if bad:
            width = min(80, max(len(p) for p, _ in bad))
            print(f"  {'path':<{width}}  problem")
            for path, problem in bad:
                print(f"  {path:<{width}}  {problem}")
        if anno.skipped:
            print(summarize_skipped(anno.skipped))
        print(f"{len(anno)} items checked: {len(anno) - len({p for p, _ in bad})} good, "
              f"{len({p for p, _ in bad})} bad")
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------------- register
def _run(handler):
    def run(args) -> int:
        try:
            return handler(args)
        except (FileNotFoundError, FileExistsError, ValueError) as e:
            print(f"osp data {args.data_command}: {e}", file=sys.stderr)
            return 2
    return run


def register(subparsers) -> None:
    from mindspeed_mm.osp.data.cache import register_extract
    from mindspeed_mm.osp.data.curate.cli import register_curate
    from mindspeed_mm.osp.data.scan import register_scan

    data = subparsers.add_parser("data", help="datasets: scan, validate, buckets, extract, curate",
                                 description=__doc__)
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: data.print_help() or 2)
    register_scan(sub)

    p = sub.add_parser("validate", help="check every item of a dataset (files, frames, resolution)",
                       description="Check every item: missing file, unreadable or truncated video, fewer frames "
                                   "than declared, resolution mismatch. Exit 1 if any item is bad.")
    p.add_argument("data", help="data.txt, an annotation .json/.jsonl, or MindSpeed-MM's data.json")
    p.add_argument("--workers", type=int, default=4, help="items checked in parallel (default 4)")
    p.add_argument("--backend", choices=("decord", "av", "cv2"), default=None,
                   help="video reader (default: the first installed of decord, av, cv2)")
    p.add_argument("--fast", action="store_true",
                   help="trust the container's frame count instead of decoding up to the last declared frame")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=_run(_validate))

    p = sub.add_parser("buckets", help="bucket table, drop reasons and steps per epoch for a layout",
                       description="Print the Min-Max Token bucket table (TxHxW: items), the dropped items by "
                                   "reason and the steps per epoch of a data-parallel layout.")
    p.add_argument("data", help="data.txt, an annotation .json/.jsonl, or MindSpeed-MM's data.json")
    p.add_argument("--config", required=True,
                   help="JSON with the bucket settings (BucketConfig keys, a training config's data.buckets, "
                        "or a MindSpeed-MM data.json)")
    p.add_argument("--dp", type=int, default=1, help="data-parallel size (default 1)")
    p.add_argument("--sp", type=int, default=None,
                   help="sequence/context-parallel size: latent frames must divide by it (default: the config's)")
    p.add_argument("--micro-batch", type=int, default=1, help="samples per rank and micro-step (default 1)")
    p.add_argument("--grad-acc", type=int, default=1, help="gradient accumulation steps (default 1)")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="token budget per rank and micro-step instead of a fixed micro-batch")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys include buckets, dropped)")
    p.set_defaults(func=_run(_buckets))

    register_extract(sub)
    register_curate(sub)

    p = sub.add_parser("synth", help="write a small synthetic captioned video dataset (smoke runs, tiny configs)",
                       description="Coloured squares moving over a gradient, captioned with their colour and motion "
                                   "(e.g. 'a red car running'); writes videos/, anno.json and data.txt.")
    p.add_argument("output", help="empty or new folder")
    p.add_argument("--videos", type=int, default=16, help="number of clips (default 16)")
    p.add_argument("--frames", type=int, default=33, help="frames per clip (default 33)")
    p.add_argument("--height", type=int, default=32, help="frame height, even (default 32)")
    p.add_argument("--width", type=int, default=48, help="frame width, even (default 48)")
    p.add_argument("--fps", type=float, default=24.0, help="frame rate written to the files (default 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of colours, motions and placements (default 0)")
    p.set_defaults(func=_run(_synth))

    p = sub.add_parser("make-shapes", help="write the procedural shapes dataset (captioned shapes, exact ground truth)",
                       description="Coloured circles, squares and triangles moving left, right, up or down, or "
                                   "standing still, over dark backgrounds, with 2-3 synonymous captions each (e.g. "
                                   "'a red circle moving to the right'); a few held-out colour/shape/motion "
                                   "combinations never appear. Writes videos/, images/, anno.json, data.txt and "
                                   "shapes.json (ground truth). See mindspeed_mm/osp/data/shapes.py.")
    p.add_argument("output", help="empty or new folder")
    p.add_argument("--videos", type=int, default=256, help="number of clips (default 256)")
    p.add_argument("--images", type=int, default=64, help="number of still images (default 64)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of every random choice: objects, paths, backgrounds, captions (default 0)")
    p.add_argument("--sizes", default="64x64,48x80,80x48",
                   help="comma-separated HEIGHTxWIDTH sizes, multiples of 16 (default 64x64,48x80,80x48)")
    p.add_argument("--frames", default="17,25", help="comma-separated frame counts 1+8n (default 17,25)")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate of the clips (default 8)")
    p.add_argument("--two-object-fraction", type=float, default=0.15,
                   help="share of clips with a second object (default 0.15)")
    p.set_defaults(func=_run(_make_shapes))


def _synth(args) -> int:
    from mindspeed_mm.osp.data.synthetic import make_synthetic_dataset

    path = make_synthetic_dataset(args.output, args.videos, args.frames, args.height, args.width, args.fps, args.seed)
    print(f"wrote {args.videos} videos; dataset: {path}")
    return 0


def _make_shapes(args) -> int:
    from mindspeed_mm.osp.data.shapes import HELD_OUT, make_shapes_dataset

    try:
        sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes.split(",")]
        frames = [int(f) for f in args.frames.split(",")]
    except ValueError:
        raise ValueError(f"--sizes takes HEIGHTxWIDTH pairs and --frames numbers, comma-separated (e.g. --sizes "
                         f"64x64,48x80 --frames 17,25); got --sizes {args.sizes} --frames {args.frames}") from None
    path = make_shapes_dataset(args.output, args.videos, args.images, args.seed, sizes, frames, args.fps,
                               args.two_object_fraction)
    print(f"wrote {args.videos} videos and {args.images} images to {path.parent}; dataset: {path}; "
          f"ground truth: {path.parent / 'shapes.json'}")
    print("held out (never in the data): " + ", ".join(" ".join(h) for h in HELD_OUT))
    return 0
