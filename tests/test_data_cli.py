"""`osp data buckets` and `osp data validate` on a tiny dataset made here."""
import json

import pytest

from mindspeed_mm.osp.cli import main
from media import make_garbage, make_image, make_video, truncate_file, write_annotation


def item(name, n, h=64, w=96, fps=24.0, cap="a clip"):
    return {"path": name, "cap": cap, "resolution": {"height": h, "width": w}, "num_frames": n, "fps": fps}


@pytest.fixture
def data(tmp_path):
    make_video(tmp_path / "a.mp4", num_frames=20, height=64, width=96)
    make_video(tmp_path / "b.mp4", num_frames=12, height=64, width=64)
    make_image(tmp_path / "c.jpg", height=64, width=96)
    make_garbage(tmp_path / "bad.mp4")
    make_video(tmp_path / "trunc.mp4", num_frames=40, height=64, width=96)
    truncate_file(tmp_path / "trunc.mp4", 0.3)
    items = [item("a.mp4", 20), item("b.mp4", 12, w=64), {"path": "c.jpg", "cap": "img",
                                                           "resolution": {"height": 64, "width": 96}},
             item("a.mp4", 30), item("a.mp4", 20, h=48), item("missing.mp4", 20), item("bad.mp4", 20),
             item("trunc.mp4", 40), {"path": "readme.md", "cap": "x"}]
    anno = write_annotation(tmp_path / "anno.json", items)
    config = tmp_path / "buckets.json"
    config.write_text(json.dumps({"num_frames": 9, "min_num_frames": 9, "ae_stride_t": 4, "max_hxw": 64 * 64,
                                  "min_hxw": 0, "drop_short_ratio": 0.0, "train_fps": 24}))
    return anno, config


def test_buckets_json_and_table(data, capsys):
    anno, config = data
    assert main(["data", "buckets", str(anno), "--config", str(config), "--json", "--dp", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    # 64x96 at area 4096: 52x78 -> 48x64 at stride 16; 64x64 stays; 48x96: 45x90 -> 32x80; the image is 1 frame
    assert report["buckets"] == {"9x48x64": 5, "1x48x64": 1, "9x32x80": 1, "9x64x64": 1}
    assert report["dropped"] == {} and report["skipped_unsupported"] == 1
    assert report["global_batches_per_epoch"] == 3 + 1 + 1 + 1     # ceil(5 / 2) + three topped-up singles
    assert main(["data", "buckets", str(anno), "--config", str(config), "--grad-acc", "2"]) == 0
    out = capsys.readouterr().out
    assert "9x48x64" in out and "skipped 1 item(s) of unsupported type: readme.md" in out
    assert "gradient accumulation 2: 8 global batches, 4 optimizer steps per epoch" in out


def test_buckets_bad_arguments_are_named(data, capsys, tmp_path):
    anno, config = data
    assert main(["data", "buckets", str(anno), "--config", str(config), "--dp", "0"]) == 2
    assert "--dp must be >= 1" in capsys.readouterr().err
    bad = tmp_path / "typo.json"
    bad.write_text(json.dumps({"max_hw": 1}))
    assert main(["data", "buckets", str(anno), "--config", str(bad)]) == 2
    assert "did you mean 'max_hxw'" in capsys.readouterr().err
    assert main(["data", "buckets", str(tmp_path / "nope.json"), "--config", str(config)]) == 2
    assert "dataset source not found" in capsys.readouterr().err


def test_validate_lists_every_bad_item_and_fails(data, capsys):
    anno, _ = data
    assert main(["data", "validate", str(anno), "--json", "--workers", "2"]) == 1
    report = json.loads(capsys.readouterr().out)
    problems = {(p["path"].rsplit("/", 1)[-1], p["problem"].split(":")[0].split(" ")[0]) for p in report["bad"]}
    assert ("missing.mp4", "missing") in problems
    assert ("bad.mp4", "unreadable") in problems
    # PyAV decodes a truncated file up to where it ends ("too few frames"); decord refuses to open it
    assert ("trunc.mp4", "too") in problems or ("trunc.mp4", "unreadable") in problems
    assert any(p["path"].endswith("a.mp4") and p["problem"].startswith("too few frames") for p in report["bad"])
    assert any(p["problem"] == "resolution 64x96 in the file, 48x96 declared" for p in report["bad"])
    assert len(report["bad"]) == 5 and report["items"] == 8


def test_validate_passes_a_clean_dataset(tmp_path, capsys):
    make_video(tmp_path / "a.mp4", num_frames=20, height=64, width=96)
    anno = write_annotation(tmp_path / "anno.json", [item("a.mp4", 20)])
    assert main(["data", "validate", str(anno)]) == 0
    assert "1 items checked: 1 good, 0 bad" in capsys.readouterr().out
