"""`osp data scan`: items probed from real files, captions (sidecar, CSV), skips, order, output files, the CLI."""
from __future__ import annotations

import json

import pytest

from media import make_garbage, make_image, make_video, truncate_file
from mindspeed_mm.osp.cli import main
from mindspeed_mm.osp.data import scan
from mindspeed_mm.osp.data.scan import MissingCaptionError, scan_folder, write_annotation

pytest.importorskip("av", reason="writing test clips needs PyAV (pip install av)")

CSV_TEXT = "path,cap\nsub/b.mp4,a red square\n./pic.PNG,first of two\npic.PNG,second of two\nmissing.mp4,unused\n"
EXPECTED = [  # sorted by path; fps checked to 0.01
    {"path": "clips/a.mp4", "cap": ["a moving square", "on a gradient"], "resolution": {"height": 64, "width": 96},
     "num_frames": 17, "fps": 24.0},
    {"path": "img.jpg", "cap": "a still photo", "resolution": {"height": 41, "width": 57}, "num_frames": 1},
    {"path": "pic.PNG", "cap": ["first of two", "second of two"], "resolution": {"height": 30, "width": 44},
     "num_frames": 1},
    {"path": "sub/b.mp4", "cap": "a red square", "resolution": {"height": 48, "width": 80}, "num_frames": 9,
     "fps": 12.5},
]
SKIPPED = {"broken.mp4": "unreadable", "cut.mp4": "unreadable", "nocap.jpg": "no caption",
           "notes.md": "unsupported file type"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    make_video(root / "clips" / "a.mp4", num_frames=17, height=64, width=96, fps=24.0, seed=1)
    (root / "clips" / "a.txt").write_text("a moving square\n\n  on a gradient \n")
    make_video(root / "sub" / "b.mp4", num_frames=9, height=48, width=80, fps=12.5, seed=2)
    (root / "sub" / "b.txt").write_text("the sidecar loses to the CSV\n")
    make_image(root / "img.jpg", height=41, width=57, seed=3)
    (root / "img.txt").write_text("a still photo\n")
    make_image(root / "pic.PNG", height=30, width=44, seed=4)
    make_image(root / "nocap.jpg", seed=5)
    make_garbage(root / "broken.mp4")
    (root / "broken.txt").write_text("never probed successfully\n")
    truncate_file(make_video(root / "cut.mp4", seed=6), keep_fraction=0.5)
    (root / "cut.txt").write_text("cut in half\n")
    (root / "notes.md").write_text("# notes\n")
    make_video(root / ".hidden" / "c.mp4", seed=7)
    (root / "captions.csv").write_text(CSV_TEXT)
    return root


def _check_items(items):
    assert [item["path"] for item in items] == [e["path"] for e in EXPECTED]
    for item, expected in zip(items, EXPECTED):
        assert list(item) == list(expected), item["path"]  # same keys, same order; images have no fps
        assert {k: v for k, v in item.items() if k != "fps"} == {k: v for k, v in expected.items() if k != "fps"}
        if "fps" in expected:
            assert item["fps"] == pytest.approx(expected["fps"], abs=0.01)


def test_items_probed_and_captioned(folder):
    result = scan_folder(folder, captions_csv=folder / "captions.csv")
    _check_items(result.items)
    assert result.uncaptioned == ["nocap.jpg"]


def test_skipped_with_reasons(folder):
    result = scan_folder(folder, captions_csv=folder / "captions.csv")
    assert [path for path, _ in result.skipped] == sorted(SKIPPED)  # caption files and hidden folders: not listed
    for path, reason in result.skipped:
        assert reason.split(":", 1)[0] == SKIPPED[path], (path, reason)
    assert len(dict(result.skipped)["broken.mp4"]) > len("unreadable: ")  # names the reader's complaint


def test_order_does_not_depend_on_workers(folder):
    one = scan_folder(folder, captions_csv=folder / "captions.csv", workers=1)
    two = scan_folder(folder, captions_csv=folder / "captions.csv", workers=2)
    assert (two.items, two.skipped) == (one.items, one.skipped)


def test_missing_caption_modes(folder):
    without_csv = scan_folder(folder, missing_caption="empty")
    caps = {item["path"]: item["cap"] for item in without_csv.items}
    assert caps["nocap.jpg"] == "" and caps["pic.PNG"] == ""
    assert caps["sub/b.mp4"] == "the sidecar loses to the CSV"  # no CSV: the sidecar counts
    assert without_csv.uncaptioned == ["nocap.jpg", "pic.PNG"]
    with pytest.raises(MissingCaptionError, match="nocap.jpg"):
        scan_folder(folder, captions_csv=folder / "captions.csv", missing_caption="error")


def test_write_json_and_jsonl(tmp_path):
    items = [dict(EXPECTED[0], cap="一个视频"), EXPECTED[1]]
    out = write_annotation(tmp_path / "ann.json", items)
    assert json.loads(out.read_text(encoding="utf-8")) == items
    lines = write_annotation(tmp_path / "ann.jsonl", items).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == items
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_annotation(out, items[:1])
    write_annotation(out, items[:1], overwrite=True)
    assert json.loads(out.read_text(encoding="utf-8")) == items[:1]
    with pytest.raises(ValueError, match=".jsonl"):
        write_annotation(tmp_path / "ann.csv", items)


# ---------------------------------------------------------------------------------------------------- CLI
def _run(*argv) -> int:
    return main(["data", "scan", *map(str, argv)])


def test_cli_writes_json_and_summary(folder, tmp_path, capsys):
    out = tmp_path / "out" / "ann.json"
    assert _run(folder, "--output", out, "--captions", folder / "captions.csv", "--workers", 2) == 0
    _check_items(json.loads(out.read_text(encoding="utf-8")))
    printed = capsys.readouterr().out
    for line in ("videos:  2", "images:  2", "skipped: 4", "  unreadable: 2", "  no caption: 1",
                 "    nocap.jpg", "  unsupported file type: 1", "    notes.md", f"wrote 4 items to {out}"):
        assert line in printed.splitlines(), line
    assert any(line.startswith("    broken.mp4: ") for line in printed.splitlines())


def test_cli_jsonl(folder, tmp_path):
    out = tmp_path / "ann.jsonl"
    assert _run(folder, "-o", out, "--captions", folder / "captions.csv") == 0
    _check_items([json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()])


def test_cli_refuses_bad_arguments_before_probing(folder, tmp_path, capsys, monkeypatch):
    def no_probe(*args):
        raise AssertionError("probed a file despite bad arguments")
    monkeypatch.setattr(scan, "_probe", no_probe)
    existing = tmp_path / "ann.json"
    existing.write_text("[]")
    assert _run(folder, "-o", existing) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert existing.read_text() == "[]"
    assert _run(tmp_path / "nowhere", "-o", tmp_path / "new.json") == 2
    assert "nowhere" in capsys.readouterr().err
    assert _run(folder, "-o", tmp_path / "ann.txt") == 2
    assert ".jsonl" in capsys.readouterr().err
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("file,caption\nimg.jpg,x\n")
    assert _run(folder, "-o", tmp_path / "new.json", "--captions", bad_csv) == 2
    assert "path,cap" in capsys.readouterr().err
    assert not (tmp_path / "new.json").exists()


def test_cli_missing_caption_error(folder, tmp_path, capsys):
    out = tmp_path / "ann.json"
    assert _run(folder, "-o", out, "--captions", folder / "captions.csv", "--missing-caption", "error") == 1
    assert "nocap.jpg" in capsys.readouterr().err
    assert not out.exists()
