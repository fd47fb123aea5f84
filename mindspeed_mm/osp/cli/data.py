"""`osp data`: scan a folder into an annotation, validate a dataset, print its buckets, extract a feature cache,
curate raw videos into training clips."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Optional

from mindspeed_mm.osp.data.scan import (
    ANNOTATION_EXTS, MISSING_CAPTION_MODES, SHOWN_PER_REASON, MissingCaptionError, scan_folder, write_annotation,
)

EXTRACT_DTYPES = ("fp32", "bf16")  # the names of data.cache.DTYPES (not imported here: it loads torch)
STAGE_LIST = "slice,cuts,motion,ocr,aesthetic,quality"   # `osp data curate --stages` default


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
    p.add_argument("--workers", type=_positive_int, default=os.cpu_count() or 1, metavar="N",
                   help="processes rendering and encoding the files (default: one per CPU core); the data is the "
                        "same for any N")
    p.set_defaults(func=_run(_make_shapes))


# ---------------------------------------------------------------------------------------------------- buckets
def _buckets(args) -> int:
    from mindspeed_mm.osp.data.annotations import load_annotations, summarize_skipped
    from mindspeed_mm.osp.data.buckets import assign_buckets, bucket_report, load_bucket_config

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
def _validate(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from mindspeed_mm.osp.data.annotations import load_annotations, summarize_skipped
    from mindspeed_mm.osp.data.dataset import check_item

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


# ---------------------------------------------------------------------------------------------------- synth, make-shapes
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
                               args.two_object_fraction, workers=args.workers)
    print(f"wrote {args.videos} videos and {args.images} images to {path.parent}; dataset: {path}; "
          f"ground truth: {path.parent / 'shapes.json'}")
    print("held out (never in the data): " + ", ".join(" ".join(h) for h in HELD_OUT))
    return 0


# ---------------------------------------------------------------------------------------------------- scan
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register_scan(data_subparsers) -> None:
    """Add `scan` to the subparsers of `osp data`."""
    p = data_subparsers.add_parser(
        "scan", help="build an annotation (.json/.jsonl) from a folder of videos and images",
        description="Probe every video and image under FOLDER and write an Open-Sora Plan annotation: path "
                    "(relative to FOLDER), cap, resolution, num_frames, fps. Captions come from a sidecar .txt "
                    "(clip.mp4 -> clip.txt, one caption per line) or from --captions. Unknown, unreadable and "
                    "uncaptioned files are skipped and listed.")
    p.add_argument("folder", metavar="FOLDER", help="folder with the media (searched recursively)")
    p.add_argument("-o", "--output", required=True, metavar="ANNOTATION",
                   help="annotation to write: .json (a JSON list) or .jsonl (one item per line)")
    p.add_argument("--captions", metavar="FILE.csv",
                   help="CSV with columns path,cap (path relative to FOLDER; several rows give several captions); "
                        "wins over sidecar .txt files")
    p.add_argument("--missing-caption", choices=MISSING_CAPTION_MODES, default="skip",
                   help="media without a caption: leave out (skip, default), stop with an error, or keep with an "
                        "empty caption")
    p.add_argument("--workers", type=_positive_int, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="files probed in parallel (default: min(4, CPU count))")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run_scan)


def _argument_error(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with the arguments, checked before any file is probed; None when all is well."""
    folder, output = Path(args.folder), Path(args.output)
    if not folder.is_dir():
        return f"FOLDER {folder} is not an existing folder"
    if args.captions is not None and not Path(args.captions).is_file():
        return f"--captions {args.captions}: no such file"
    if output.suffix.lower() not in ANNOTATION_EXTS:
        return f"--output {output}: must end in .json (a JSON list) or .jsonl (one item per line)"
    if output.is_dir():
        return f"--output {output} is a folder; give a file name ending in .json or .jsonl"
    if output.exists() and not args.overwrite:
        return f"--output {output} already exists; pass --overwrite to replace it or choose another path"
    parent = output.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"--output {output}: cannot write in {parent}"
    return None


def _summary(result, missing_caption: str) -> list[str]:
    videos = sum("fps" in item for item in result.items)
    lines = [f"videos:  {videos}", f"images:  {len(result.items) - videos}", f"skipped: {len(result.skipped)}"]
    by_reason: dict[str, list[str]] = defaultdict(list)
    for path, reason in result.skipped:
        category, _, detail = reason.partition(": ")
        by_reason[category].append(f"{path}: {detail}" if detail else path)
    for reason, paths in sorted(by_reason.items()):
        lines.append(f"  {reason}: {len(paths)}")
        lines += [f"    {p}" for p in paths[:SHOWN_PER_REASON]]
        if len(paths) > SHOWN_PER_REASON:
            lines.append(f"    ... and {len(paths) - SHOWN_PER_REASON} more")
    if missing_caption == "empty" and result.uncaptioned:
        lines.append(f"written with an empty caption (no caption found): {len(result.uncaptioned)}")
        lines += [f"  {p}" for p in result.uncaptioned[:SHOWN_PER_REASON]]
    return lines


def run_scan(args: argparse.Namespace) -> int:
    """Exit codes: 0 written; 2 bad arguments (nothing probed); 1 nothing usable or captions missing (--missing-caption
    error)."""
    def fail(message: str, code: int) -> int:
        print(f"osp data scan: error: {message}", file=sys.stderr)
        return code

    problem = _argument_error(args)
    if problem:
        return fail(problem, 2)
    try:
        result = scan_folder(args.folder, captions_csv=args.captions, missing_caption=args.missing_caption,
                             workers=args.workers, progress=True)
    except MissingCaptionError as e:
        return fail(str(e), 1)
    except ValueError as e:  # a malformed captions CSV
        return fail(str(e), 2)
    print("\n".join(_summary(result, args.missing_caption)))
    if not result.items:
        return fail(f"no usable media under {args.folder}; nothing written", 1)
    write_annotation(args.output, result.items, overwrite=args.overwrite)
    print(f"wrote {len(result.items)} items to {args.output}")
    return 0


# ---------------------------------------------------------------------------------------------------- extract
def register_extract(data_subparsers) -> None:
    """Add `extract` to the `osp data` subcommands."""
    p = data_subparsers.add_parser(
        "extract", help="encode a dataset once into a feature cache (WF-VAE latents, text embeddings)",
        description="Encode every kept item of a dataset with the WF-VAE (and text encoders) into a sharded "
                    "cache that training reads instead of videos. Each video is read as at epoch 0, so its crop "
                    "is frozen. Under torchrun each rank writes shards s with s % WORLD_SIZE == RANK (no process "
                    "group needed); a rerun resumes, skipping finished shards.")
    p.add_argument("data", help="data.txt, an annotation .json/.jsonl, or MindSpeed-MM's data.json")
    p.add_argument("--config", required=True, metavar="BUCKETS.json",
                   help="JSON with the bucket settings, as training uses (BucketConfig keys, a training "
                        "config's data.buckets, or a MindSpeed-MM data.json)")
    p.add_argument("--vae", required=True, metavar="VAE_DIR", help="WF-VAE folder with config.json")
    p.add_argument("--text-encoder", metavar="DIR", help="T5/mT5 encoder folder (transformers)")
    p.add_argument("--tokenizer", metavar="DIR", help="its tokenizer folder")
    p.add_argument("--pooled-text-encoder", metavar="DIR", help="CLIP text encoder folder (v1.5 pooled input)")
    p.add_argument("--pooled-tokenizer", metavar="DIR", help="its tokenizer folder")
    p.add_argument("--max-length", type=int, default=512, help="text tokens, padded and truncated (default 512)")
    p.add_argument("--output", required=True, metavar="CACHE", help="cache folder")
    p.add_argument("--shard-size", type=int, default=64, help="items per shard file (default 64)")
    p.add_argument("--chunk-frames", type=int, default=None, metavar="N",
                   help="encode N video frames at a time (same latents, less memory; default: whole clip)")
    p.add_argument("--dtype", choices=EXTRACT_DTYPES, default="fp32",
                   help="dtype of the models and of the stored tensors (default fp32)")
    p.add_argument("--global-batch", type=int, default=1, metavar="N",
                   help="samples per optimizer step, as in training: small buckets are merged by it, and the cache "
                        "only fits a training run with the same buckets (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sample seed, as in training: picks the frozen crops")
    p.add_argument("--device", default=None, help="cpu, cuda, npu, ... (default: detected, LOCAL_RANK's device)")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild a cache built with other settings (shards of the same build are still reused)")
    p.set_defaults(func=run_extract)


def _check_inputs(args) -> None:
    """Problems of the arguments, found before any model is loaded."""
    if not Path(args.data).is_file():
        raise FileNotFoundError(f"dataset source {args.data} does not exist")
    if not (Path(args.vae) / "config.json").is_file():
        raise FileNotFoundError(f"{args.vae}/config.json is missing: --vae takes a WF-VAE folder "
                                "(config.json + weights)")
    pairs = (("--text-encoder", args.text_encoder, "--tokenizer", args.tokenizer),
             ("--pooled-text-encoder", args.pooled_text_encoder, "--pooled-tokenizer", args.pooled_tokenizer))
    for enc_flag, enc, tok_flag, tok in pairs:
        if (enc is None) != (tok is None):
            raise ValueError(f"{enc_flag} and {tok_flag} go together")
        if enc is not None and not (Path(enc) / "config.json").is_file():
            raise FileNotFoundError(f"{enc}/config.json is missing: {enc_flag} takes a transformers model folder")
        if tok is not None and not Path(tok).is_dir():
            raise FileNotFoundError(f"tokenizer folder {tok} ({tok_flag}) does not exist")
    if args.pooled_text_encoder and not args.text_encoder:
        raise ValueError("--pooled-text-encoder needs --text-encoder (the sequence encoder) as well")
    for flag in ("shard_size", "global_batch", "max_length"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.chunk_frames is not None and args.chunk_frames < 1:
        raise ValueError(f"--chunk-frames must be >= 1, got {args.chunk_frames}")
    out = Path(args.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        raise PermissionError(f"cannot write to the output folder {out} ({e})") from e


def run_extract(args: argparse.Namespace) -> int:
    import torch

    from mindspeed_mm.osp.data.annotations import load_annotations
    from mindspeed_mm.osp.data.buckets import assign_buckets, load_bucket_config
    from mindspeed_mm.osp.data.cache import DTYPES, CacheError, extract_cache
    from mindspeed_mm.osp.data.dataset import OSPDataset, SampleConfig
    from mindspeed_mm.osp.parallel.lifetime import die_with_launcher
    from mindspeed_mm.osp.platform import default_device
    from mindspeed_mm.osp.text.encoders import TextConditioner, load_text_encoder, load_tokenizer
    from mindspeed_mm.osp.vae.model import WFVAE

    try:
        _check_inputs(args)
        # no process group: each rank works alone, from torchrun's RANK and WORLD_SIZE; SIGKILLed when its
        # torchrun dies (the worker runs in a session of its own and would go on as an orphan)
        die_with_launcher()
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        cfg = load_bucket_config(args.config)
        anno = load_annotations(args.data)
        dataset = OSPDataset(anno, assign_buckets(anno, cfg, args.global_batch), cfg, SampleConfig(seed=args.seed))
        device = torch.device(args.device) if args.device else default_device()
        dtype = DTYPES[args.dtype]
        vae = WFVAE.from_pretrained(args.vae, dtype=dtype).to(device).eval()
        text = None
        if args.text_encoder:
            pooled = {}
            if args.pooled_text_encoder:
                pooled = {"pooled_encoder": load_text_encoder(args.pooled_text_encoder, dtype).to(device),
                          "pooled_tokenizer": load_tokenizer(args.pooled_tokenizer)}
            text = TextConditioner(load_text_encoder(args.text_encoder, dtype).to(device),
                                   load_tokenizer(args.tokenizer), args.max_length, **pooled)
        result = extract_cache(dataset, args.output, vae=vae, text=text, shard_size=args.shard_size, rank=rank,
                               world=world, chunk_frames=args.chunk_frames, dtype=dtype, overwrite=args.overwrite)
    except (OSError, ValueError, CacheError) as e:
        print(f"osp data extract: error: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


# ---------------------------------------------------------------------------------------------------- curate
def register_curate(sub) -> None:
    from mindspeed_mm.osp.data.curate.config import CUT_DETECTORS, MOTION_METRICS, OCR_CENTRAL

    p = sub.add_parser(
        "curate", help="filter raw videos into captioned training clips (slice, cuts, motion, OCR crop, scores)",
        description="The Open-Sora Plan v1.3 data filter: slice long videos (<= 16 s, stream copy), split at jump "
                    "cuts (keep 32-512 frames), drop static and chaotic clips, crop edge text (OCR, <= 20 %% per "
                    "edge), aesthetic >= 4.75 and DOVER > 0 (when their weights are local), motion re-check, "
                    "captions. Writes CURATED/clips/, anno.json, data.txt and report.json; resumable (rerun the same "
                    "command), shardable over nodes. See docs/curation.md.")
    p.add_argument("raw", help="folder of raw videos (searched recursively)")
    p.add_argument("--output", required=True, help="output folder (new, empty, or an earlier run of the same command)")
    p.add_argument("--stages", default=STAGE_LIST,
                   help=f"comma-separated stages to run, always in pipeline order (default {STAGE_LIST})")
    p.add_argument("--workers", type=int, default=1, help="worker processes, one CPU thread each (default 1)")
    p.add_argument("--shard", default=None, help="I/N: process the I-th (0-based) of N shards of the sorted inputs")
    p.add_argument("--shard-index", type=int, default=None, help="this node's shard, 0-based (with --shard-count)")
    p.add_argument("--shard-count", type=int, default=None, help="number of shards (nodes)")
    p.add_argument("--captions", default="sidecar",
                   help="sidecar (VIDEO.txt or VIDEO.json next to each raw video; clips without one are dropped "
                        "as 'no caption'), none (empty captions, nothing dropped), or module:function called with "
                        "each clip (a ClipView) returning its caption(s) (default sidecar)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an output folder that holds other files or a curation with other settings")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    g = p.add_argument_group("slice and cuts")
    g.add_argument("--max-slice-seconds", type=float, default=16.0, help="longest slice in seconds (default 16)")
    g.add_argument("--cut-detector", choices=CUT_DETECTORS, default="content",
                   help="content: PySceneDetect ContentDetector; lpips: z-score rule on consecutive-frame LPIPS "
                        "(needs --lpips-vgg/--lpips-lin); content+lpips: both (default content)")
    g.add_argument("--content-threshold", type=float, default=27.0,
                   help="ContentDetector threshold (default 27, its own default)")
    g.add_argument("--lpips-z", type=float, default=3.0, help="robust z-score above which an LPIPS jump is a cut (default 3)")
    g.add_argument("--lpips-min", type=float, default=0.1, help="smallest LPIPS that counts as a cut (default 0.1)")
    g.add_argument("--min-frames", type=int, default=32, help="shortest clip kept, frames (default 32)")
    g.add_argument("--max-frames", type=int, default=512, help="longest clip; longer pieces are split (default 512)")
    g = p.add_argument_group("motion")
    g.add_argument("--motion-metric", choices=MOTION_METRICS, default="flow",
                   help="flow: mean Farneback flow, %% of the long side per step; lpips: mean consecutive LPIPS "
                        "(the paper's; needs --lpips-vgg/--lpips-lin) (default flow)")
    g.add_argument("--motion-low", type=float, default=None,
                   help="clips below are static and dropped (default 0.1 for flow, 0.001 for lpips)")
    g.add_argument("--motion-high", type=float, default=None,
                   help="clips above are dropped (default 20 for flow, 0.3 for lpips)")
    g.add_argument("--max-flow-residual", type=float, default=0.08,
                   help="flow: mean |frame - motion-compensated next frame| / 255 above which a clip is chaotic "
                        "(noise, flicker) and dropped (default 0.08)")
    g.add_argument("--motion-fps", type=float, default=8.0, help="frames per second the motion score samples (default 8)")
    g.add_argument("--analysis-size", type=int, default=128,
                   help="long side, in pixels, of the frames cuts and motion look at (default 128)")
    g.add_argument("--lpips-vgg", default=None, help="torchvision vgg16-397923af.pth (or env OSP_LPIPS_VGG)")
    g.add_argument("--lpips-lin", default=None, help="LPIPS v0.1 linear layers, lpips' weights/v0.1/vgg.pth "
                                                     "(or env OSP_LPIPS_LIN)")
    g = p.add_argument_group("ocr")
    g.add_argument("--ocr-fps", type=float, default=1.0, help="frames per second searched for text (default 1)")
    g.add_argument("--ocr-edge", type=float, default=0.2, help="largest crop per edge, fraction (default 0.2)")
    g.add_argument("--ocr-central", choices=OCR_CENTRAL, default="drop",
                   help="text outside the edge bands: drop the clip, or keep it uncropped (default drop)")
    g.add_argument("--ocr-detector", default=None,
                   help="module:function mapping an RGB uint8 frame to (x0, y0, x1, y1) text boxes "
                        "(default: EasyOCR when installed with local weights)")
    g.add_argument("--ocr-weights", default=None,
                   help="EasyOCR model folder holding craft_mlt_25k.pth (or env OSP_EASYOCR_DIR; default "
                        "~/.EasyOCR/model)")
    g = p.add_argument_group("aesthetic and quality")
    g.add_argument("--aesthetic-min", type=float, default=4.75, help="lowest aesthetic score kept (default 4.75)")
    g.add_argument("--aesthetic-frames", type=int, default=5, help="frames scored per clip (default 5)")
    g.add_argument("--aesthetic-head", default=None,
                   help="LAION aesthetic MLP weights, sac+logos+ava1-l14-linearMSE.pth (or env OSP_AESTHETIC_HEAD)")
    g.add_argument("--aesthetic-clip", default=None,
                   help="local CLIP ViT-L/14 folder in transformers format (or env OSP_AESTHETIC_CLIP)")
    g.add_argument("--aesthetic-scorer", default=None,
                   help="module:function scoring a clip (ClipView) instead of the LAION predictor")
    g.add_argument("--quality-min", type=float, default=0.0, help="clips must score above this (default 0)")
    g.add_argument("--dover-dir", default=None,
                   help="a clone of github.com/VQAssessment/DOVER (dover.yml, pretrained_weights/DOVER.pth), "
                        "installed with pip install -e: its technical score (or env OSP_DOVER_DIR); without it "
                        "or --quality-scorer the quality stage is skipped and the report says so")
    g.add_argument("--quality-scorer", default=None,
                   help="module:function scoring a clip (ClipView) instead of DOVER (or env OSP_QUALITY_SCORER)")
    p.set_defaults(func=_run(curate_command))


def parse_shard(args) -> tuple[int, int]:
    if args.shard is not None:
        if args.shard_index is not None or args.shard_count is not None:
            raise ValueError("give --shard I/N or --shard-index/--shard-count, not both")
        try:
            index, count = (int(v) for v in args.shard.split("/"))
        except ValueError:
            raise ValueError(f"--shard takes I/N (e.g. 0/4), got {args.shard!r}") from None
        return index, count
    if (args.shard_index is None) != (args.shard_count is None):
        raise ValueError("--shard-index and --shard-count go together")
    return (args.shard_index, args.shard_count) if args.shard_index is not None else (0, 1)


def curate_command(args) -> int:
    from mindspeed_mm.osp.data.curate.config import CurateConfig
    from mindspeed_mm.osp.data.curate.pipeline import curate
    from mindspeed_mm.osp.data.curate.report import format_report

    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    keys = ("max_slice_seconds", "cut_detector", "content_threshold", "lpips_z", "lpips_min", "min_frames",
            "max_frames", "motion_metric", "motion_low", "motion_high", "max_flow_residual", "motion_fps",
            "analysis_size", "lpips_vgg", "lpips_lin", "ocr_fps", "ocr_edge", "ocr_central", "ocr_detector",
            "ocr_weights", "aesthetic_min", "aesthetic_frames", "aesthetic_head", "aesthetic_clip",
            "aesthetic_scorer", "quality_min", "quality_scorer", "dover_dir", "captions")
    cfg = CurateConfig(stages=stages, **{k: getattr(args, k) for k in keys})
    index, count = parse_shard(args)
    result = curate(args.raw, args.output, cfg, workers=args.workers, shard_index=index, shard_count=count,
                    overwrite=args.overwrite)
    report = result["report"]
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report))
        print(f"processed {len(result['processed'])}, resumed {result['resumed']}, failed {len(result['failed'])}")
        if result["complete"]:
            print(f"annotation: {args.output}/anno.json (data: {args.output}/data.txt); report: "
                  f"{args.output}/report.json")
        else:
            print("other shards (or failed inputs) are not done yet: anno.json is written by the run that finishes "
                  "the last input")
    for f in result["failed"]:
        print(f"failed: {f['path']}: {f['error']}", file=sys.stderr)
    return 1 if result["failed"] else 0
