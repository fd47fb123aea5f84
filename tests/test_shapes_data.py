"""The procedural shapes dataset (`osp data make-shapes`) and the detectors that score it."""
import itertools
import json

import numpy as np
import pytest
from scipy import ndimage

from mindspeed_mm.osp.cli import main
from mindspeed_mm.osp.data.annotations import load_annotations
from mindspeed_mm.osp.data.dataset import read_image
from mindspeed_mm.osp.data.shapes import (COLOUR_WORDS, COLOURS, HELD_OUT, MOTION_WORDS, MOTIONS, SHAPE_WORDS, SHAPES,
                                          caption_words, make_shapes_dataset, place_object, random_background,
                                          render_clip, seen_combinations, shapes_vocabulary)
from mindspeed_mm.osp.data.video_io import read_frames
from mindspeed_mm.osp.eval.shapes_detect import detect, score

SIZES = ((64, 64), (48, 80), (80, 48))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """70 videos (every seen triple at least once as the first object; half with a second object) and 14 images."""
    out = tmp_path_factory.mktemp("shapes") / "data"
    data_txt = make_shapes_dataset(out, videos=70, images=14, seed=3, two_object_fraction=0.5)
    return out, data_txt, json.loads((out / "shapes.json").read_text())


@pytest.fixture(scope="module")
def every_combination():
    """(expected, clip) for all 75 colour/shape/motion triples, cycling through sizes and frame counts."""
    rng = np.random.default_rng(0)
    cases = []
    for i, (colour, shape, motion) in enumerate(itertools.product(COLOURS, SHAPES, MOTIONS)):
        height, width = SIZES[i % len(SIZES)]
        obj = place_object(rng, colour, shape, motion, height, width)
        clip = render_clip([obj], (17, 25)[i % 2], height, width, random_background(rng))
        cases.append(({"colour": colour, "shape": shape, "motion": motion}, clip))
    return cases


def accuracy(cases, transform=lambda clip: clip) -> dict[str, float]:
    results = [score(expected, detect(transform(clip))) for expected, clip in cases]
    return {key: float(np.mean([r[key] for r in results])) for key in ("colour", "shape", "motion")}


# ---------------------------------------------------------------------------------------------------- generator
def test_held_out_triples_leave_every_word_seen():
    seen = seen_combinations()
    assert len(seen) == 75 - len(HELD_OUT) and not set(seen) & set(HELD_OUT)
    for index, values in enumerate((COLOURS, SHAPES, MOTIONS)):
        assert {triple[index] for triple in seen} == set(values)


def test_dataset_ground_truth(dataset):
    out, _, manifest = dataset
    assert manifest["held_out"] == [list(h) for h in HELD_OUT] and len(manifest["items"]) == 84
    objects = [o for item in manifest["items"] for o in item["objects"]]
    triples = {(o["colour"], o["shape"], o["motion"]) for o in objects}
    assert not triples & set(HELD_OUT)
    assert triples == set(seen_combinations())      # 70 clips cycle through all 67 seen triples
    assert 5 <= sum(len(item["objects"]) == 2 for item in manifest["items"]) <= 50
    assert all(o["motion"] == "still" for item in manifest["items"] if item["path"].startswith("images/")
               for o in item["objects"])
    for item in manifest["items"]:
        assert (out / item["path"]).is_file()


def test_annotations_load_and_use_several_buckets(dataset):
    out, data_txt, manifest = dataset
    anno = load_annotations(data_txt)
    assert len(anno) == 84 and int(anno.is_image.sum()) == 14 and not anno.skipped
    assert set(anno.num_captions()) <= {2, 3}
    buckets = {(int(anno.num_frames[i]), int(anno.height[i]), int(anno.width[i])) for i in range(len(anno))}
    assert {(t, h, w) for t in (17, 25) for h, w in SIZES} <= buckets and (1, 64, 64) in buckets
    first = anno.item(0)
    assert first["path"] == str(out / "videos" / "00000.mp4") and first["fps"] == 8.0


def test_captions_name_every_object_in_the_vocabulary(dataset):
    out, _, manifest = dataset
    vocabulary = set(shapes_vocabulary())
    assert vocabulary == set(sorted(vocabulary)) and {"red", "disc", "rightward", "still"} <= vocabulary
    entries = json.loads((out / "anno.json").read_text())
    for entry, item in zip(entries, manifest["items"]):
        assert entry["path"] == item["path"]
        for text in entry["cap"]:
            assert set(caption_words(text)) <= vocabulary, text
            for obj in item["objects"]:
                assert any(w in text for w in COLOUR_WORDS[obj["colour"]]), text
                assert any(w in text for w in SHAPE_WORDS[obj["shape"]]), text
                if item["path"].startswith("videos/"):
                    assert any(w in text for w in MOTION_WORDS[obj["motion"]]), text


def test_deterministic_for_a_seed(tmp_path):
    def make(folder, seed, workers=1):
        make_shapes_dataset(tmp_path / folder, videos=6, images=2, seed=seed, workers=workers)
        return (tmp_path / folder / "anno.json").read_bytes(), (tmp_path / folder / "shapes.json").read_bytes()

    first = make("a", 5)
    assert make("b", 5) == first
    assert make("c", 6) != first
    assert make("d", 5, workers=2) == first      # the files are written by two processes, the data is the same
    anno = json.loads(first[0])
    for item in anno:
        one, two = ((read_frames(tmp_path / folder / item["path"], range(item["num_frames"]), backend="av")
                     if item["path"].endswith(".mp4") else read_image(str(tmp_path / folder / item["path"])))
                    for folder in ("a", "d"))
        assert one.shape[0] == item["num_frames"] and bool((one == two).all()), item["path"]


def test_refuses_a_non_empty_folder_and_bad_arguments(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not empty; choose a new folder or remove it"):
        make_shapes_dataset(tmp_path / "full", videos=1, images=0, seed=0)
    with pytest.raises(ValueError, match="multiples of 16"):
        make_shapes_dataset(tmp_path / "new", videos=1, images=0, seed=0, sizes=((60, 64),))
    with pytest.raises(ValueError, match="1 \\+ 8n"):
        make_shapes_dataset(tmp_path / "new", videos=1, images=0, seed=0, frames=(16,))
    with pytest.raises(ValueError, match="videos and images must be >= 0"):
        make_shapes_dataset(tmp_path / "new", videos=-1, images=2, seed=0)
    assert not (tmp_path / "new").exists()


def test_objects_travel_far_and_stay_inside():
    rng = np.random.default_rng(1)
    for motion, (height, width) in itertools.product(MOTIONS, SIZES * 4):
        obj = place_object(rng, "red", "square", motion, height, width)
        travel = np.subtract(obj.end, obj.start) / (width, height)
        assert obj.start == obj.end if motion == "still" else np.abs(travel).max() >= 0.3
        for x, y in (obj.start, obj.end):
            assert obj.size / 2 <= x <= width - obj.size / 2 and obj.size / 2 <= y <= height - obj.size / 2


def test_a_path_as_long_as_the_room_is_placed():
    """In a frame too short for the drawn travel, the path is cut to the room left (start and end at the margins)."""
    for seed in range(300):
        obj = place_object(np.random.default_rng(seed), "red", "circle", "up", 16, 64)
        lo = 2.0 + obj.size / 2
        assert lo - 1e-9 <= obj.end[1] < obj.start[1] <= 16 - lo + 1e-9

# ---------------------------------------------------------------------------------------------------- detectors
def test_detects_every_combination(every_combination):
    acc = accuracy(every_combination)
    assert acc["colour"] == 1.0 and acc["motion"] == 1.0 and acc["shape"] >= 0.95, acc


def test_detects_through_noise_and_blur(every_combination):
    rng = np.random.default_rng(0)

    def degrade(clip):
        blurred = ndimage.gaussian_filter(clip.astype(np.float64), (0, 1.0, 1.0, 0))
        return np.clip(np.round(blurred + rng.normal(0, 10, clip.shape)), 0, 255).astype(np.uint8)

    acc = accuracy(every_combination, degrade)
    assert min(acc.values()) >= 0.9, acc


def test_detects_dataset_files_after_encoding(dataset):
    out, _, manifest = dataset
    single = [item for item in manifest["items"] if len(item["objects"]) == 1]
    videos = [item for item in single if item["path"].endswith(".mp4")][:6]
    images = [item for item in single if item["path"].endswith(".jpg")][:3]
    num_frames = {entry["path"]: entry["num_frames"] for entry in json.loads((out / "anno.json").read_text())}
    for item in videos:    # read as training reads them (decord, or PyAV for widths decord cannot copy)
        frames = read_frames(out / item["path"], range(num_frames[item["path"]])).numpy()
        assert all(score(item["objects"][0], detect(frames)).values()), item
    for item in images:
        assert all(score(item["objects"][0], detect(read_image(str(out / item["path"])).numpy())).values()), item


def test_pure_noise_is_not_a_match():
    rng = np.random.default_rng(0)
    expected = {"colour": "red", "shape": "circle", "motion": "right"}
    for _ in range(5):
        detection = detect(rng.integers(0, 256, (17, 48, 80, 3), dtype=np.uint8))
        assert not all(score(expected, detection).values()), detection
    empty = np.clip(60 + rng.normal(0, 20, (17, 48, 80, 3)), 0, 255).astype(np.uint8)    # noisy, no object
    assert not detect(empty).found


def test_score_checks_only_the_named_attributes():
    clip = render_clip([place_object(np.random.default_rng(0), "blue", "square", "still", 64, 64)], 1, 64, 64,
                       (40, 40, 40))
    detection = detect(clip[0])
    assert score({"colour": "blue", "shape": "square"}, detection) == {"colour": True, "shape": True}
    assert score({"colour": "red", "shape": "square", "motion": "still"}, detection) == {
        "colour": False, "shape": True, "motion": True}


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_make_shapes(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["data", "make-shapes", str(out), "--videos", "3", "--images", "1", "--seed", "0",
                 "--sizes", "64x64,48x80", "--frames", "9", "--fps", "6"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 videos and 1 images" in printed and "red triangle up" in printed
    manifest = json.loads((out / "shapes.json").read_text())
    assert manifest["sizes"] == [[64, 64], [48, 80]] and manifest["frames"] == [9] and manifest["fps"] == 6.0
    assert len(load_annotations(out / "data.txt")) == 4
    assert main(["data", "make-shapes", str(out), "--videos", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "make-shapes", str(tmp_path / "other"), "--sizes", "64by64"]) == 2
    assert "HEIGHTxWIDTH" in capsys.readouterr().err
