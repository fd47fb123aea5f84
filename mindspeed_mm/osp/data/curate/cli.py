"""`osp data curate RAW --output CURATED`: argument parsing (the work is in pipeline.py)."""
from __future__ import annotations

import json
import sys

STAGE_LIST = "slice,cuts,motion,ocr,aesthetic,quality"


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
    g.add_argument("--quality-scorer", default=None,
                   help="module:function wrapping a local DOVER technical score (or env OSP_QUALITY_SCORER); "
                        "without it the quality stage is skipped and the report says so")
    from mindspeed_mm.osp.data.cli import _run
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
            "aesthetic_scorer", "quality_min", "quality_scorer", "captions")
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
