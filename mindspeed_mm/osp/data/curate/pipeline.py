"""Run the stages over a folder: one work item per input video, in worker processes, shardable over nodes,
resumable (a done-record per input, written atomically), outputs written atomically.

Output folder: clips/<input path without suffix>/<stem>_sNNN.mp4 (the slices that keep at least one clip; a clip is
a `cut` [start, end) frame range of a slice plus an optional `crop`), anno.json (Open-Sora Plan annotation),
data.txt, report.json; .curate/ holds state.json (input folder and settings), done/ (one record per input), log.jsonl
(one line per input processed, for auditing resumes) and per-shard reports.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from mindspeed_mm.osp.data.curate.config import CurateConfig
from mindspeed_mm.osp.files import check_target, replace_file

STATE_DIR = ".curate"
OUTPUTS = ("clips", STATE_DIR, "anno.json", "report.json", "data.txt")


# ---------------------------------------------------------------------------------------------------- captions
def sidecar_caption(video: Path):
    """Caption(s) of VIDEO.txt (one per non-empty line) or VIDEO.json (a string, a list, or {"cap": ...}); None."""
    txt, js = video.with_suffix(".txt"), video.with_suffix(".json")
    if txt.is_file():
        caps = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
        return (caps[0] if len(caps) == 1 else caps) or None
    if js.is_file():
        value = json.loads(js.read_text(encoding="utf-8"))
        value = value.get("cap") if isinstance(value, dict) else value
        if isinstance(value, list):
            value = [v for v in value if isinstance(v, str) and v.strip()] or None
        return value if value else None
    return None


# ---------------------------------------------------------------------------------------------------- workers
class Context:
    """What one process loads once: detectors, scorers, LPIPS, the captioner."""

    def __init__(self, cfg: CurateConfig):
        from mindspeed_mm.osp.data.curate import scorers
        from mindspeed_mm.osp.data.curate.ocr import EasyOCRDetector, easyocr_status

        self.cfg = cfg
        stages = cfg.stages
        self.lpips = scorers.lpips_model(cfg) if cfg.uses_lpips() else None
        self.detector = None
        if "ocr" in stages:
            if cfg.ocr_detector:
                self.detector = scorers.load_callable(cfg.ocr_detector)
            elif easyocr_status(cfg.ocr_weights) is None:
                self.detector = EasyOCRDetector(cfg.ocr_weights)
        self.aesthetic = scorers.aesthetic_scorer(cfg)[0] if "aesthetic" in stages else None
        self.quality = scorers.quality_scorer(cfg)[0] if "quality" in stages else None
        self.captioner = scorers.load_callable(cfg.captions) if ":" in cfg.captions else None


def stage_notes(cfg: CurateConfig) -> dict:
    """Why a requested stage will not run here (cheap checks, no model loading); raises for LPIPS without weights."""
    from mindspeed_mm.osp.data.curate import scorers
    from mindspeed_mm.osp.data.curate.ocr import easyocr_status

    notes = {}
    if "cuts" in cfg.stages and "content" in cfg.cut_detector:
        import scenedetect  # noqa: F401 -- a missing package is named before any work starts
    if "motion" in cfg.stages and cfg.motion_metric == "flow":
        import cv2  # noqa: F401
    if cfg.uses_lpips():
        for flag, path in (("--lpips-vgg", cfg.lpips_vgg), ("--lpips-lin", cfg.lpips_lin)):
            if not path or not os.path.isfile(path):
                scorers.lpips_model(cfg)   # raises, naming the missing files
    if "ocr" in cfg.stages:
        why = None if cfg.ocr_detector else easyocr_status(cfg.ocr_weights)
        notes["ocr"] = f"skipped: {why}" if why else (f"detector {cfg.ocr_detector}" if cfg.ocr_detector else "EasyOCR")
    if "aesthetic" in cfg.stages:
        if cfg.aesthetic_scorer:
            notes["aesthetic"] = f"hook {cfg.aesthetic_scorer}"
        elif all(p and os.path.exists(p) for p in (cfg.aesthetic_head, cfg.aesthetic_clip)):
            notes["aesthetic"] = "LAION aesthetic predictor"
        else:
            notes["aesthetic"] = scorers.aesthetic_scorer(cfg)[1]
    if "quality" in cfg.stages:
        notes["quality"] = scorers.quality_scorer(cfg)[1]
    if "cuts" in cfg.stages:
        notes["cuts"] = f"detector {cfg.cut_detector}"
    if "motion" in cfg.stages:
        notes["motion"] = f"metric {cfg.motion_metric} in [{cfg.motion_low:g}, {cfg.motion_high:g}]"
    notes["caption"] = {"sidecar": "sidecar VIDEO.txt/.json", "none": "not required"}.get(cfg.captions,
                                                                                         f"hook {cfg.captions}")
    return notes


_CONTEXT: dict = {}


def _init_worker() -> None:
    """One CPU thread per worker process (torch, OpenCV, OpenMP/BLAS)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        import cv2
        cv2.setNumThreads(1)
    except ImportError:
        pass
    import torch
    torch.set_num_threads(1)


def _context(cfg: CurateConfig) -> Context:
    key = json.dumps(cfg.fingerprint(), sort_keys=True, default=str)
    if key not in _CONTEXT:
        _CONTEXT.clear()
        _CONTEXT[key] = Context(cfg)
    return _CONTEXT[key]


def preload_models(cfg: CurateConfig, keep: bool) -> None:
    """Load the models and hooks the stages use once, before any input is touched, so that a weight file in the
    wrong format, a CLIP folder without weights or a hook that does not import is one error naming it (ValueError)
    instead of every input failing with it. `keep`: leave them loaded for this process (one worker reuses them)."""
    try:
        _context(cfg)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 -- torch.load / transformers raise many kinds; one message names the cause
        raise ValueError(f"cannot load the curation models: {type(e).__name__}: {e}") from e
    finally:
        if not keep:
            _CONTEXT.clear()


def done_path(out: Path, rel: str) -> Path:
    return out / STATE_DIR / "done" / (hashlib.sha1(rel.encode()).hexdigest()[:20] + ".json")


def _write_json(path: Path, value) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(value, f, ensure_ascii=False, indent=1)
    replace_file(path, write)


def run_item(raw: str, out: str, rel: str, cfg_dict: dict) -> dict:
    """Process one input and write its done-record (worker entry point). Unexpected errors come back as
    status "failed" without a record, so a rerun tries the input again."""
    import traceback

    cfg = CurateConfig(**cfg_dict)
    item_dir = Path(out) / "clips" / Path(rel).with_suffix("")
    try:
        record = process_video(Path(raw) / rel, rel, Path(out), item_dir, cfg, _context(cfg))
    except Exception as e:  # noqa: BLE001 -- one bad input must not end a long run; reported, retried on rerun
        shutil.rmtree(item_dir, ignore_errors=True)
        return {"input": rel, "status": "failed", "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(limit=4)}
    _write_json(done_path(Path(out), rel), record)
    with open(Path(out) / STATE_DIR / "log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"input": rel, "status": record["status"], "pid": os.getpid(), "time": time.time()}) + "\n")
    return record


# ---------------------------------------------------------------------------------------------------- one video
def process_video(src: Path, rel: str, out: Path, item_dir: Path, cfg: CurateConfig, ctx: Context) -> dict:
    from mindspeed_mm.osp.data.curate.report import StageCounter
    from mindspeed_mm.osp.data.curate.slicing import slice_video
    from mindspeed_mm.osp.data.video_io import VideoReadError, probe

    if item_dir.exists():
        shutil.rmtree(item_dir)       # left by an interrupted earlier attempt (no done-record)
    try:
        info = probe(src, backend="av")
    except (VideoReadError, OSError, ValueError) as e:
        return {"input": rel, "status": "corrupt", "error": str(e).split(": ", 1)[-1][:300], "items": []}
    counter = StageCounter()
    duration = info.num_frames / info.fps if info.fps else 0.0
    with counter.timed("slice"):
        try:
            slices, method = slice_video(str(src), item_dir, Path(rel).stem,
                                         cfg.max_slice_seconds if "slice" in cfg.stages else None, info.fps)
        except Exception as e:  # noqa: BLE001 -- av errors of a damaged stream
            shutil.rmtree(item_dir, ignore_errors=True)
            return {"input": rel, "status": "corrupt", "error": f"cannot slice: {e}"[:300], "items": []}
    caption = sidecar_caption(src) if cfg.captions == "sidecar" else None
    items, offset_s, slice_s = [], 0.0, 0.0
    for path in slices:
        try:
            new, slice_s = _process_slice(path, rel, out, offset_s, caption, cfg, ctx, counter)
        except VideoReadError as e:
            shutil.rmtree(item_dir, ignore_errors=True)
            return {"input": rel, "status": "corrupt", "error": f"{path.name}: {e}"[:300], "items": []}
        items += new
        offset_s += slice_s
        if not new:
            path.unlink()
    counter.add("slice", n_in=1, n_out=len(slices), in_s=duration, out_s=offset_s)
    if item_dir.exists() and not any(item_dir.iterdir()):
        item_dir.rmdir()
    return {"input": rel, "status": "ok", "error": "", "duration": duration, "slice_method": method,
            "items": items, "stages": counter.stages}


def _process_slice(path: Path, rel, out, offset_s, caption, cfg, ctx, counter):
    from mindspeed_mm.osp.data.curate import cuts as cut_rules
    from mindspeed_mm.osp.data.curate.frames import decode_slice
    from mindspeed_mm.osp.data.curate.motion import flow_motion, lpips_motion, motion_verdict
    from mindspeed_mm.osp.data.curate.ocr import crop_for_frames
    from mindspeed_mm.osp.data.curate.scorers import ClipView

    stages = cfg.stages
    with counter.timed("decode"):
        frames = decode_slice(str(path), cfg.analysis_size, cfg.ocr_fps if ctx.detector is not None else 0.0)
    fps, n = frames.fps, frames.num_frames
    counter.add("decode", n_in=1, n_out=1, in_s=n / fps, out_s=n / fps)

    def secs(c):
        return (c["end"] - c["start"]) / fps

    def stage(name, cands, verdict):
        """Run `verdict(c)` -> drop reason or None over the candidates; count."""
        kept, dropped = [], {}
        with counter.timed(name):
            for c in cands:
                why = verdict(c)
                if why is None:
                    kept.append(c)
                else:
                    dropped[why] = dropped.get(why, 0) + 1
        counter.add(name, n_in=len(cands), n_out=len(kept), in_s=sum(map(secs, cands)),
                    out_s=sum(map(secs, kept)), dropped=dropped)
        return kept

    # cuts
    if "cuts" in stages:
        with counter.timed("cuts"):
            found = set()
            if "content" in cfg.cut_detector:
                found |= set(cut_rules.content_cuts(frames.small, fps, cfg.content_threshold))
            if "lpips" in cfg.cut_detector:
                d = cut_rules.lpips_distances(ctx.lpips, frames.small)
                found |= set(cut_rules.zscore_cuts(d, cfg.lpips_z, cfg.lpips_min))
            ranges, dropped = cut_rules.pieces(n, sorted(found), cfg.min_frames, cfg.max_frames)
        cands = [{"start": s, "end": e} for s, e in ranges]
        counter.add("cuts", n_in=1, n_out=len(cands), in_s=n / fps, out_s=sum(map(secs, cands)), dropped=dropped)
    else:
        cands = [{"start": 0, "end": n}]
    step = max(1, int(round(fps / cfg.motion_fps)))

    def motion_of(c, crop=None):
        small = frames.small[c["start"]:c["end"]]
        if crop is not None:
            sy = small.shape[1] / frames.height
            sx = small.shape[2] / frames.width
            small = small[:, int(crop[2] * sy):max(int(crop[2] * sy) + 2, int(crop[3] * sy)),
                          int(crop[0] * sx):max(int(crop[0] * sx) + 2, int(crop[1] * sx))]
        if cfg.motion_metric == "lpips":
            c["motion_score"], residual = lpips_motion(ctx.lpips, small, step), None
        else:
            c["motion_score"], residual = flow_motion(small, step)
            c["flow_residual"] = round(residual, 5)
        c["motion_score"] = round(float(c["motion_score"]), 5)
        return motion_verdict(c["motion_score"], residual, cfg.motion_low, cfg.motion_high,
                              cfg.max_flow_residual if cfg.motion_metric == "flow" else None)

    if "motion" in stages:
        cands = stage("motion", cands, motion_of)
    if "ocr" in stages and ctx.detector is not None:
        def ocr(c):
            idx = [i for i in sorted(frames.sampled) if c["start"] <= i < c["end"]]
            if not idx:
                idx = [min(frames.sampled, key=lambda i: abs(i - (c["start"] + c["end"]) // 2))]
            result = crop_for_frames(ctx.detector, [frames.sampled[i] for i in idx], cfg.ocr_edge, cfg.ocr_margin)
            if result.central and cfg.ocr_central == "drop":
                return "text outside the edge bands"
            c["crop"] = result.crop
            return None
        cands = stage("ocr", cands, ocr)

    def view(c):
        return ClipView(str(path), c["start"], c["end"], fps, c.get("crop"), rel)

    if "aesthetic" in stages and ctx.aesthetic is not None:
        def aesthetic(c):
            c["aesthetic"] = round(float(ctx.aesthetic(view(c))), 4)
            return None if c["aesthetic"] >= cfg.aesthetic_min else f"aesthetic < {cfg.aesthetic_min:g}"
        cands = stage("aesthetic", cands, aesthetic)
    if "quality" in stages and ctx.quality is not None:
        def quality(c):
            c["quality_score"] = round(float(ctx.quality(view(c))), 4)
            return None if c["quality_score"] > cfg.quality_min else f"quality <= {cfg.quality_min:g}"
        cands = stage("quality", cands, quality)
    if "motion" in stages and "ocr" in stages and ctx.detector is not None:
        cands = stage("recheck", cands, lambda c: motion_of(c, c["crop"]) if c.get("crop") else None)

    def captioned(c):
        if cfg.captions == "none":
            c["cap"] = ""
        elif ctx.captioner is not None:
            c["cap"] = ctx.captioner(view(c))
        else:
            c["cap"] = caption
        return None if c["cap"] or cfg.captions == "none" else "no caption"
    cands = stage("caption", cands, captioned)

    rel_path = path.relative_to(out).as_posix()
    items = []
    for c in cands:
        item = {"path": rel_path, "cap": c["cap"], "resolution": {"height": frames.height, "width": frames.width},
                "num_frames": c["end"] - c["start"], "fps": round(fps, 4), "cut": [c["start"], c["end"]]}
        if c.get("crop"):
            item["crop"] = [int(v) for v in c["crop"]]
        for key in ("motion_score", "flow_residual", "aesthetic", "quality_score"):
            if key in c:
                item[key] = c[key]
        item["source"] = rel
        item["source_start_s"] = round(offset_s + c["start"] / fps, 3)
        items.append(item)
    return items, n / fps


# ---------------------------------------------------------------------------------------------------- driver
def list_inputs(raw: Path, out: Path) -> list[str]:
    from mindspeed_mm.osp.data.video_io import iter_videos

    out = out.resolve()
    rels = []
    for p in iter_videos(raw):
        if out == p.resolve() or out in p.resolve().parents:
            continue
        rels.append(p.relative_to(raw).as_posix())
    return sorted(rels)


def _prepare_output(raw: Path, out: Path, cfg: CurateConfig, overwrite: bool) -> None:
    state_file = out / STATE_DIR / "state.json"
    state = {"raw": str(raw.resolve()), "config": cfg.fingerprint()}
    if state_file.is_file():
        old = json.loads(state_file.read_text(encoding="utf-8"))
        if json.loads(json.dumps(state, default=str)) == old:
            return                                                  # resume
        if not overwrite:
            changed = sorted(k for k in state["config"] if old.get("config", {}).get(k) != state["config"][k])
            what = "input folder" if old.get("raw") != state["raw"] else "settings " + ", ".join(changed)
            raise FileExistsError(f"{out} holds a curation with a different {what}; pass --overwrite to start "
                                  "over, or choose a new --output (same inputs and settings resume instead)")
    elif out.exists() and any(out.iterdir()) and not overwrite:
        check_target(out, overwrite)
    if overwrite:
        for name in OUTPUTS:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    (out / STATE_DIR / "done").mkdir(parents=True, exist_ok=True)
    _write_json(state_file, json.loads(json.dumps(state, default=str)))


def curate(raw, output, cfg: Optional[CurateConfig] = None, *, workers: int = 1, shard_index: int = 0,
           shard_count: int = 1, overwrite: bool = False, log=None) -> dict:
    """Curate `raw` into `output`. Returns {"report", "processed", "resumed", "failed", "complete"}."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    from mindspeed_mm.osp.data.curate.report import build_report

    cfg = cfg or CurateConfig()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    problems = cfg.problems()
    if problems:
        raise ValueError("; ".join(problems))
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard index < shard count, got {shard_index}/{shard_count}")
    raw, out = Path(raw), Path(output)
    if not raw.is_dir():
        raise FileNotFoundError(f"raw folder {raw} does not exist")
    notes = stage_notes(cfg)
    inputs = list_inputs(raw, out)
    mine = inputs[shard_index::shard_count]
    if overwrite or not all(done_path(out, rel).is_file() for rel in mine):
        preload_models(cfg, keep=workers == 1)           # before the output folder is touched
    _prepare_output(raw, out, cfg, overwrite)
    pending = [rel for rel in mine if not done_path(out, rel).is_file()]
    resumed = len(mine) - len(pending)
    log(f"curate: {len(inputs)} input(s), shard {shard_index}/{shard_count}: {len(mine)}, "
        f"{resumed} already done, {len(pending)} to process with {workers} worker(s)")
    cfg_dict = asdict(cfg)
    failed, processed = [], []

    def finished(result):
        if result["status"] == "failed":
            failed.append(result)
            log(f"curate: FAILED {result['input']}: {result['error']}")
        else:
            processed.append(result["input"])

    if workers == 1 or len(pending) <= 1:
        for rel in pending:
            finished(run_item(str(raw), str(out), rel, cfg_dict))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = [pool.submit(run_item, str(raw), str(out), rel, cfg_dict) for rel in pending]
            for fut in as_completed(futures):
                finished(fut.result())

    def records(rels):
        return [json.loads(done_path(out, r).read_text(encoding="utf-8")) for r in rels if done_path(out, r).is_file()]

    shard = f"{shard_index}/{shard_count}"
    fingerprint = json.loads(json.dumps(cfg.fingerprint(), default=str))
    report = build_report(records(mine), notes, fingerprint, shard)
    report["failed"] = [{"path": f["input"], "error": f["error"]} for f in failed]
    _write_json(out / STATE_DIR / f"report.{shard_index}-of-{shard_count}.json", report)
    complete = all(done_path(out, r).is_file() for r in inputs)
    if complete:
        recs = records(inputs)
        report = build_report(recs, notes, fingerprint, "all")
        report["failed"] = [{"path": f["input"], "error": f["error"]} for f in failed]
        _write_json(out / "anno.json", [item for r in recs for item in r["items"]])
        replace_file(out / "data.txt", lambda tmp: Path(tmp).write_text(".,anno.json\n", encoding="utf-8"))
        _write_json(out / "report.json", report)
    return {"report": report, "processed": processed, "resumed": resumed, "failed": failed, "complete": complete}
