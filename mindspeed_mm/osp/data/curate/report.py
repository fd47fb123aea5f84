"""Per-stage counts (in, out, dropped by reason, seconds of video in and out, processing time) and their table."""
from __future__ import annotations

import time
from contextlib import contextmanager

ROWS = ("slice", "decode", "cuts", "motion", "ocr", "aesthetic", "quality", "recheck", "caption")
UNITS = {"slice": "videos -> slices", "decode": "slices (frames for cuts, motion, OCR)",
         "cuts": "slices -> clips"}


def empty_stage() -> dict:
    return {"in": 0, "out": 0, "in_s": 0.0, "out_s": 0.0, "dropped": {}, "seconds": 0.0}


class StageCounter:
    """Counts of one input video, stage by stage."""

    def __init__(self):
        self.stages = {}

    def row(self, name: str) -> dict:
        return self.stages.setdefault(name, empty_stage())

    def add(self, name: str, *, n_in=0, n_out=0, in_s=0.0, out_s=0.0, dropped=None, seconds=0.0) -> None:
        r = self.row(name)
        r["in"] += n_in
        r["out"] += n_out
        r["in_s"] += in_s
        r["out_s"] += out_s
        r["seconds"] += seconds
        for reason, count in (dropped or {}).items():
            r["dropped"][reason] = r["dropped"].get(reason, 0) + count

    @contextmanager
    def timed(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.row(name)["seconds"] += time.perf_counter() - t0


def merge_stages(records) -> dict:
    total = {}
    for rec in records:
        for name, r in rec.get("stages", {}).items():
            t = total.setdefault(name, empty_stage())
            for k in ("in", "out", "in_s", "out_s", "seconds"):
                t[k] += r[k]
            for reason, count in r["dropped"].items():
                t["dropped"][reason] = t["dropped"].get(reason, 0) + count
    return {name: total[name] for name in ROWS if name in total}


def build_report(records, notes: dict, config: dict, shard: str) -> dict:
    ok = [r for r in records if r["status"] == "ok"]
    stages = merge_stages(ok)
    for name, note in notes.items():
        stages.setdefault(name, empty_stage())["note"] = note
    input_s = sum(r.get("duration", 0.0) for r in ok)
    kept_s = sum(i["num_frames"] / i["fps"] for r in ok for i in r["items"])
    return {"shard": shard, "inputs": len(records), "corrupt": [{"path": r["input"], "error": r["error"]}
                                                                   for r in records if r["status"] == "corrupt"],
            "clips": sum(len(r["items"]) for r in ok), "input_seconds": round(input_s, 3),
            "kept_seconds": round(kept_s, 3), "kept_fraction": round(kept_s / input_s, 4) if input_s else 0.0,
            "stages": {k: stages[k] for k in ROWS if k in stages}, "config": config}


def format_report(report: dict) -> str:
    lines = [f"{'stage':<10} {'in':>7} {'out':>7} {'kept %':>7} {'in s':>9} {'out s':>9} {'time s':>7}  dropped / note"]
    for name, r in report["stages"].items():
        pct = f"{100 * r['out_s'] / r['in_s']:.1f}" if r["in_s"] else "-"
        why = ", ".join(f"{reason} {n}" for reason, n in sorted(r["dropped"].items(), key=lambda kv: -kv[1]))
        extra = "; ".join(x for x in (why, r.get("note", ""), UNITS.get(name, "")) if x)
        lines.append(f"{name:<10} {r['in']:>7} {r['out']:>7} {pct:>7} {r['in_s']:>9.1f} {r['out_s']:>9.1f} "
                     f"{r['seconds']:>7.2f}  {extra}")
    lines.append(f"{report['inputs']} input video(s), {len(report['corrupt'])} corrupt; {report['clips']} clip(s), "
                 f"{report['kept_seconds']:.1f} s of {report['input_seconds']:.1f} s kept "
                 f"({100 * report['kept_fraction']:.1f} %)")
    for c in report["corrupt"][:20]:
        lines.append(f"corrupt: {c['path']}: {c['error']}")
    if len(report["corrupt"]) > 20:
        lines.append(f"corrupt: ... and {len(report['corrupt']) - 20} more (report.json lists all)")
    return "\n".join(lines)
