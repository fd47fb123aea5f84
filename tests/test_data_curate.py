"""`osp data curate`: slicing, jump cuts, motion, OCR crops, scorers, captions, resume, shards, corrupt inputs,
and the annotation it writes passing `osp data validate` and `osp data buckets`. Tiny 64x64 clips at 8 fps."""
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from media import make_garbage, truncate_file
from mindspeed_mm.osp.cli import main
from mindspeed_mm.osp.data.curate import CurateConfig, curate
from mindspeed_mm.osp.data.curate.cuts import content_cuts, pieces, zscore_cuts
from mindspeed_mm.osp.data.curate.ocr import crop_from_boxes
from mindspeed_mm.osp.data.curate.slicing import plan_slices, slice_video
from mindspeed_mm.osp.data.video_io import probe, read_video

pytest.importorskip("scenedetect", reason="pip install scenedetect-headless (the curate extra)")

H = W = 64
FPS = 8.0
FAST = dict(min_frames=8, max_frames=512)        # the paper's 32-frame minimum is 4 s at 8 fps


# ---------------------------------------------------------------------------------------------------- clips
def background(seed, h=H, w=W):
    rng = np.random.default_rng(seed)
    c0, c1 = rng.integers(20, 200, size=(2, 3))
    ramp = (np.linspace(0, 1, h)[:, None] + np.linspace(0, 1, w)[None, :]) / 2
    return (c0 + (c1 - c0) * ramp[..., None]).round().astype(np.uint8)


def moving(n, seed=0, speed=1.5):
    bg = background(seed)
    colour = (bg[H // 2, W // 2].astype(int) + 110) % 220           # always far from the background, never white
    frames = np.repeat(bg[None], n, 0)
    for t in range(n):
        x = int(4 + (speed * t) % (W - 22))
        y = int(10 + (0.5 * speed * t) % (H - 24))
        frames[t, y:y + 14, x:x + 14] = colour
    return frames


def static(n, seed=0):
    return np.repeat(moving(1, seed)[0][None], n, 0)


def noise(n, seed=0):
    return np.random.default_rng(seed).integers(0, 200, size=(n, H, W, 3)).astype(np.uint8)


def with_cuts(segment_lengths, seed=0):
    return np.concatenate([moving(n, seed + 7 * k) for k, n in enumerate(segment_lengths)])


def burn_text(frames, text="SUBTITLE 42", y=54):
    from PIL import Image, ImageDraw
    out = []
    for f in frames:
        img = Image.fromarray(f)
        ImageDraw.Draw(img).text((6, y), text, fill=(255, 255, 255))
        out.append(np.asarray(img))
    return np.stack(out)


def write(path, frames, fps=FPS, gop=None, caption="a test clip"):
    """mp4 via PyAV (libx264 crf 17); `gop`: keyframe interval in frames. A sidecar caption unless None."""
    import av
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "17", **({"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"} if gop else {})}
        elif gop:
            s.gop_size = gop
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        c.mux(s.encode())
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n")
    return path


def run(raw, out, stages="slice,cuts,motion", **kw):
    opts = {**FAST, **kw}
    workers = opts.pop("workers", 1)
    shard = opts.pop("shard", (0, 1))
    overwrite = opts.pop("overwrite", False)
    cfg = CurateConfig(stages=tuple(stages.split(",")), **opts)
    return curate(raw, out, cfg, workers=workers, shard_index=shard[0], shard_count=shard[1], overwrite=overwrite,
                  log=lambda m: None)


def anno(out):
    return json.loads((Path(out) / "anno.json").read_text())


# ---------------------------------------------------------------------------------------------------- slice
def test_plan_slices_is_greedy_and_refuses_long_gops():
    assert plan_slices([0, 1, 2, 3, 4, 5], 6.0, 2.5) == [0, 2, 4]
    assert plan_slices([0, 3], 6.0, 2.5) is None
    assert plan_slices([0], 2.0, 16) == [0]


@pytest.mark.parametrize("gop, method, sizes", [(8, "copy", [16, 16, 16]), (None, "reencode", [20, 20, 8])])
def test_slice_stream_copy_and_reencode(tmp_path, gop, method, sizes):
    frames = moving(48)
    src = write(tmp_path / "long.mp4", frames, gop=gop)
    paths, used = slice_video(str(src), tmp_path / "out", "long", 2.5, FPS)
    assert used == method
    assert [probe(p, backend="av").num_frames for p in paths] == sizes
    # the slices hold the source's frames, in order (lossless copy; re-encode within a few levels)
    first = read_video(paths[1], backend="av")[0].numpy().astype(int)
    ref = read_video(src, backend="av")[0].numpy().astype(int)[sizes[0]:sizes[0] + sizes[1]]
    assert np.abs(first - ref).mean() < (0.01 if method == "copy" else 4)


# ---------------------------------------------------------------------------------------------------- cuts
def test_content_detector_finds_planted_cuts_within_one_frame():
    frames = with_cuts([14, 11, 17])
    assert len(content_cuts(frames, FPS)) == 2
    found = content_cuts(frames, FPS)
    for got, want in zip(found, [14, 25]):
        assert abs(got - want) <= 1
    assert content_cuts(moving(40), FPS) == []


def test_pieces_and_zscore_rule():
    kept, dropped = pieces(100, [10, 60], min_frames=20, max_frames=30)
    assert kept == [(10, 40), (40, 60), (60, 90)] and dropped == {"shorter than 20 frames": 2}
    d = np.full(40, 0.02) + np.random.default_rng(0).uniform(0, 0.01, 40)
    d[[9, 29]] = 0.6
    assert zscore_cuts(d) == [10, 30]
    assert zscore_cuts(np.full(40, 0.02)) == []                   # no outlier, no cut


def test_cut_stage_splits_clips_at_cuts(tmp_path):
    raw = tmp_path / "raw"
    write(raw / "cuts.mp4", with_cuts([14, 11, 17, 5]))
    result = run(raw, tmp_path / "out", "cuts")
    items = anno(tmp_path / "out")
    starts_ends = sorted(tuple(i["cut"]) for i in items)
    want = [(0, 14), (14, 25), (25, 42)]                            # the 5-frame tail is < min_frames
    assert len(starts_ends) == 3
    for (s, e), (ws, we) in zip(starts_ends, want):
        assert abs(s - ws) <= 1 and abs(e - we) <= 1
    assert result["report"]["stages"]["cuts"]["dropped"] == {"shorter than 8 frames": 1}


# ---------------------------------------------------------------------------------------------------- motion
def test_motion_drops_static_and_noise_keeps_moving(tmp_path):
    raw = tmp_path / "raw"
    write(raw / "moving.mp4", moving(24))
    write(raw / "static.mp4", static(24))
    write(raw / "noise.mp4", noise(24))
    result = run(raw, tmp_path / "out", "motion")
    kept = {i["source"] for i in anno(tmp_path / "out")}
    assert kept == {"moving.mp4"}
    dropped = result["report"]["stages"]["motion"]["dropped"]
    assert sum(v for k, v in dropped.items() if k.startswith("static")) == 1
    assert sum(v for k, v in dropped.items() if k.startswith("chaotic")) == 1
    # the dropped slices' files are gone, the kept one is under clips/
    assert sorted(p.name for p in (tmp_path / "out" / "clips").rglob("*.mp4")) == ["moving_s000.mp4"]


# ---------------------------------------------------------------------------------------------------- ocr
def test_crop_from_planted_boxes():
    # a subtitle at the bottom, a logo in the top-left corner (left edge is cheaper: 10 px wide x 100 high)
    r = crop_from_boxes([(20, 85, 180, 95), (0, 0, 10, 15)], 100, 200, edge=0.2, margin=0)
    assert r.crop == [10, 200, 0, 84] and r.central == 0
    # a box reaching past the 20 % band is central text; no crop
    r = crop_from_boxes([(20, 40, 180, 60)], 100, 200)
    assert r.crop is None and r.central == 1
    assert crop_from_boxes([], 100, 200).crop is None
    # never more than 20 % per edge even with margin
    r = crop_from_boxes([(0, 81, 200, 99)], 100, 200, edge=0.2, margin=5)
    assert r.crop is None and r.central == 1
    r = crop_from_boxes([(0, 84, 200, 99)], 100, 200, edge=0.2, margin=3)
    assert r.crop == [0, 200, 0, 80]


def test_ocr_stage_crops_burnt_in_subtitles(tmp_path):
    raw = tmp_path / "raw"
    write(raw / "sub.mp4", burn_text(moving(24, seed=3)))
    write(raw / "clean.mp4", moving(24, seed=4))
    write(raw / "middle.mp4", burn_text(moving(24, seed=5), y=26))
    result = run(raw, tmp_path / "out", "motion,ocr", ocr_detector="curate_hooks:white_text_boxes")
    items = {i["source"]: i for i in anno(tmp_path / "out")}
    assert set(items) == {"sub.mp4", "clean.mp4"}
    sx, ex, sy, ey = items["sub.mp4"]["crop"]
    assert (sx, ex, sy) == (0, W, 0) and 64 * 0.8 <= ey <= 54            # bottom cut, above the text, <= 20 %
    assert "crop" not in items["clean.mp4"]
    assert result["report"]["stages"]["ocr"]["dropped"] == {"text outside the edge bands": 1}
    assert result["report"]["stages"]["recheck"]["out"] == 2


def test_real_easyocr_finds_burnt_in_text(tmp_path):
    from mindspeed_mm.osp.data.curate.ocr import EasyOCRDetector, easyocr_status
    why = easyocr_status(None)
    if why:
        pytest.skip(why)
    frame = burn_text(np.repeat(background(1, 128, 256)[None], 1, 0), y=112)[0]
    r = crop_from_boxes(EasyOCRDetector()(frame), 128, 256)
    assert r.crop is not None and r.crop[3] < 128


# ---------------------------------------------------------------------------------------------------- scores, captions
def test_scorers_captions_and_skipped_stages_are_reported(tmp_path):
    raw = tmp_path / "raw"
    dark = moving(24, seed=1) // 3
    write(raw / "bright.mp4", np.clip(moving(24, seed=2).astype(int) + 60, 0, 230).astype(np.uint8))
    write(raw / "dark.mp4", dark)
    write(raw / "nocap.mp4", moving(24, seed=6), caption=None)
    result = run(raw, tmp_path / "out", "slice,motion,aesthetic,quality", aesthetic_scorer="curate_hooks:brightness",
                 aesthetic_min=3.0)
    items = anno(tmp_path / "out")
    assert [i["source"] for i in items] == ["bright.mp4"]
    assert items[0]["aesthetic"] >= 3.0 and items[0]["cap"] == "a test clip"
    stages = result["report"]["stages"]
    assert stages["aesthetic"]["dropped"] == {"aesthetic < 3": 1}
    assert stages["caption"]["dropped"] == {"no caption": 1}
    assert stages["quality"]["note"].startswith("skipped: no local DOVER: give --dover-dir") and stages["quality"]["in"] == 0
    # a captioner hook instead of sidecars: every clip captioned, none dropped for it
    run(raw, tmp_path / "hook", "motion", captions="curate_hooks:caption_from_name")
    assert {i["cap"] for i in anno(tmp_path / "hook")} >= {"a clip from nocap.mp4 frames 0-24"}


def test_lpips_rules_need_local_weights(tmp_path, capsys):
    write(tmp_path / "raw" / "a.mp4", moving(16))
    code = main(["data", "curate", str(tmp_path / "raw"), "--output", str(tmp_path / "out"), "--cut-detector", "lpips"])
    err = capsys.readouterr().err
    assert code == 2 and "--lpips-vgg" in err and "no silent fallback" in err
    assert not (tmp_path / "out" / "anno.json").exists()


# ---------------------------------------------------------------------------------------------------- resume, shards
def test_resume_shards_and_partial_runs(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    for k in range(3):
        write(raw / f"v{k}.mp4", moving(20, seed=k))
    log = out / ".curate" / "log.jsonl"
    first = run(raw, out, shard=(0, 2))
    assert sorted(first["processed"]) == ["v0.mp4", "v2.mp4"] and not first["complete"]
    assert not (out / "anno.json").exists()
    second = run(raw, out, shard=(1, 2))
    assert second["processed"] == ["v1.mp4"] and second["complete"] and len(anno(out)) == 3
    again = run(raw, out)
    assert again["processed"] == [] and again["resumed"] == 3 and len(log.read_text().splitlines()) == 3
    # a run killed mid-item: no done-record for v1, a half-written slice left behind
    victim = [p for p in (out / ".curate" / "done").iterdir() if json.loads(p.read_text())["input"] == "v1.mp4"][0]
    victim.unlink()
    leftover = out / "clips" / "v1" / "v1_s000.mp4"
    leftover.write_bytes(b"partial")
    resumed = run(raw, out)
    assert resumed["processed"] == ["v1.mp4"] and resumed["resumed"] == 2
    assert len(log.read_text().splitlines()) == 4 and probe(leftover, backend="av").num_frames == 20
    # other settings into the same folder: refused unless --overwrite
    with pytest.raises(FileExistsError, match="different settings"):
        run(raw, out, motion_low=1.0)
    assert run(raw, out, motion_low=1.0, overwrite=True)["processed"] == ["v0.mp4", "v1.mp4", "v2.mp4"]


def test_parallel_workers_match_one_process(tmp_path):
    raw = tmp_path / "raw"
    for k in range(3):
        write(raw / f"v{k}.mp4", with_cuts([12, 12], seed=k))
    run(raw, tmp_path / "one")
    run(raw, tmp_path / "two", workers=2)
    strip = [{k: v for k, v in i.items()} for i in anno(tmp_path / "one")]
    assert anno(tmp_path / "two") == strip and len(strip) == 6


# ---------------------------------------------------------------------------------------------------- cli end to end
def test_cli_end_to_end_corrupt_inputs_validate_and_buckets(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "curated"
    write(raw / "a.mp4", with_cuts([16, 20]), gop=8)
    write(raw / "sub" / "b.mp4", burn_text(moving(40, seed=2)))
    write(raw / "still.mp4", static(24))
    make_garbage(raw / "bad.mp4")
    truncate_file(write(raw / "trunc.mp4", moving(40)), 0.2)
    args = ["data", "curate", str(raw), "--output", str(out), "--min-frames", "9", "--max-slice-seconds", "3",
            "--stages", "slice,cuts,motion,ocr", "--ocr-detector", "curate_hooks:white_text_boxes"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "slice" in table and "corrupt: bad.mp4" in table
    report = json.loads((out / "report.json").read_text())
    assert {c["path"] for c in report["corrupt"]} >= {"bad.mp4"}
    items = anno(out)
    assert {i["source"] for i in items} == {"a.mp4", "sub/b.mp4"}
    assert all(i["path"].startswith("clips/") and (out / i["path"]).is_file() for i in items)
    assert any("crop" in i for i in items if i["source"] == "sub/b.mp4")
    assert report["stages"]["motion"]["dropped"]
    # the annotation passes `osp data validate` and `osp data buckets`
    assert main(["data", "validate", str(out / "data.txt")]) == 0
    assert f"{len(items)} items checked: {len(items)} good, 0 bad" in capsys.readouterr().out
    config = tmp_path / "buckets.json"
    config.write_text(json.dumps({"num_frames": 9, "min_num_frames": 9, "ae_stride_t": 4, "max_hxw": 64 * 64,
                                  "min_hxw": 0, "drop_short_ratio": 0.0, "train_fps": 8}))
    assert main(["data", "buckets", str(out / "anno.json"), "--config", str(config), "--json"]) == 0
    buckets = json.loads(capsys.readouterr().out)
    assert buckets["items"] == len(items) and buckets["kept"] == len(items)
    # a second run into the same folder resumes; into a foreign non-empty folder it refuses
    assert main(args) == 0 and "processed 0, resumed 5" in capsys.readouterr().out
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    assert main(args[:3] + ["--output", str(tmp_path / "other")] + args[5:]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
