"""Annotation formats and the Min-Max Token bucket rules, against hand-computed cases from the spec."""
import json
import pickle

import numpy as np
import pytest

from mindspeed_mm.osp.data.annotations import AnnotationError, load_annotations
from mindspeed_mm.osp.data.buckets import (BucketConfig, assign_buckets, bucket_config_from_dict,
                                           bucket_config_from_mindspeed, five_ratio_size, largest_valid_frames,
                                           spatial_bucket)
from media import write_annotation, write_data_txt, write_jsonl


def video(name, h, w, n=121, fps=24.0, cap="a cat", **extra):
    return {"path": name, "cap": cap, "resolution": {"height": h, "width": w}, "num_frames": n, "fps": fps,
            **extra}


def annotations(tmp_path, items):
    return load_annotations(write_annotation(tmp_path / "anno.json", items))


# ---------------------------------------------------------------------------------------------------- formats
def test_data_txt_json_and_jsonl_mix_videos_and_images(tmp_path):
    write_annotation(tmp_path / "a.json", [video("v.mp4", 720, 1280, cap=["one", "two"]),
                                          {"path": "i.jpg", "cap": "img", "resolution": {"height": 64, "width": 64}}])
    write_jsonl(tmp_path / "b.jsonl", [video("w.mp4", 480, 640, cut=[10, 100], crop=[0, 600, 20, 460], aes=5.5),
                                       {"path": "notes.md", "cap": "x"}])
    anno = load_annotations(write_data_txt(tmp_path / "data.txt", [("/data/a", "a.json"), ("rel", "b.jsonl")]))
    assert len(anno) == 3
    assert [anno.paths[i] for i in range(3)] == ["/data/a/v.mp4", "/data/a/i.jpg", str(tmp_path / "rel/w.mp4")]
    assert anno.captions_of(0) == ["one", "two"] and anno.captions_of(1) == ["img"]
    assert anno.is_image.tolist() == [False, True, False]
    assert anno.num_frames.tolist() == [121, 1, 121]
    assert anno.cut[2].tolist() == [10, 100] and anno.cut[0].tolist() == [-1, -1]
    assert anno.crop[2].tolist() == [0, 600, 20, 460]
    assert anno.aesthetic[2] == pytest.approx(5.5) and np.isnan(anno.aesthetic[0])
    assert np.isnan(anno.fps[1]) and anno.fps[0] == 24.0
    assert len(anno.skipped) == 1 and anno.skipped[0][0].endswith("notes.md") and "'.md'" in anno.skipped[0][1]
    assert anno.item(2)["resolution"] == {"height": 480, "width": 640}


def test_pkl_is_refused_with_a_conversion_hint(tmp_path):
    pkl = tmp_path / "anno.pkl"
    pkl.write_bytes(pickle.dumps([video("v.mp4", 64, 64)]))
    with pytest.raises(AnnotationError, match="arbitrary code.*json.dump"):
        load_annotations(pkl)
    with pytest.raises(AnnotationError, match="arbitrary code"):
        load_annotations(write_data_txt(tmp_path / "data.txt", [("r", "anno.pkl")]))


def test_broken_sources_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset source not found"):
        load_annotations(tmp_path / "missing.txt")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(AnnotationError, match="bad.json: not valid JSON"):
        load_annotations(tmp_path / "bad.json")
    (tmp_path / "data.txt").write_text("only-a-root\n")
    with pytest.raises(AnnotationError, match=r"data.txt:1: expected `<root>,<annotation file>`"):
        load_annotations(tmp_path / "data.txt")
    write_annotation(tmp_path / "nopath.json", [{"cap": "x"}])
    with pytest.raises(AnnotationError, match="item 0 has no string `path`"):
        load_annotations(tmp_path / "nopath.json")


def test_mindspeed_data_json(tmp_path):
    write_annotation(tmp_path / "anno.json", [video("v.mp4", 576, 1024)])
    write_data_txt(tmp_path / "data.txt", [("videos", "anno.json")])
    data_json = {"dataset_param": {"basic_parameters": {"data_path": "data.txt", "data_folder": "/mnt"},
                                   "preprocess_parameters": {"num_frames": 57, "max_hxw": 147456, "min_hxw": 36864,
                                                             "force_5_ratio": True, "hw_stride": 16,
                                                             "ae_stride_t": 8, "train_fps": 12, "cfg": 0.1,
                                                             "train_pipeline": {}}}}
    (tmp_path / "data.json").write_text(json.dumps(data_json))
    anno = load_annotations(tmp_path / "data.json")
    assert anno.paths[0] == "/mnt/videos/v.mp4"
    cfg, unmapped = bucket_config_from_mindspeed(data_json)
    assert (cfg.rule, cfg.num_frames, cfg.max_hxw, cfg.force_5_ratio, cfg.train_fps) == ("v1.5", 57, 147456, True, 12)
    assert unmapped == ["cfg", "train_pipeline"]


def test_unknown_config_key_suggests_the_closest():
    with pytest.raises(ValueError, match=r"'max_hw'.*did you mean 'max_hxw'"):
        bucket_config_from_dict({"max_hw": 65536})
    assert bucket_config_from_dict({"rule": "v1.3"}).hw_stride == 32


# ---------------------------------------------------------------------------------------------------- spatial
@pytest.mark.parametrize("hw,expected", [
    ((720, 1280), (144, 256)),     # 9:16: k = floor(sqrt(65536 / (9*16*256))) = 1; the paper's min tokens 36864
    ((480, 640), (192, 256)),      # 3:4: k = 4
    ((1000, 1000), (256, 256)),    # 1:1: k = 16
    ((640, 480), (256, 192)),
    ((1280, 720), (256, 144)),
    ((200, 200), (192, 192)),      # area 40000 < max_hxw: k = floor(sqrt(40000 / 256)) = 12
    ((1311, 2000), (192, 256)),    # h/w 0.6555: nearer 0.75 than the *rounded* key 0.56 (exact 9/16 would win)
])
def test_five_ratio_sizes(hw, expected):
    assert five_ratio_size(*hw, 65536) == expected


def test_five_ratio_sizes_at_384_squared():
    sizes = [five_ratio_size(h, w, 147456) for h, w in ((1000, 1000), (480, 640), (640, 480), (1080, 1920), (1920, 1080))]
    assert sizes == [(384, 384), (288, 384), (384, 288), (288, 512), (512, 288)]


def test_v13_resizes_by_area_then_crops_to_stride_32():
    cfg = BucketConfig.official("v1.3")            # max_hxw 352 x 640
    # scale sqrt(225280 / 921600) = 0.4944: 720x1280 -> 355x632 -> multiples of 32: 352x608
    assert spatial_bucket(cfg, 720, 1280) == (352, 608, "kept")
    assert spatial_bucket(cfg, 352, 640) == (352, 640, "kept")


def test_aspect_limits_apply_to_the_original_in_v15_and_the_result_in_v13():
    v15 = BucketConfig(rule="v1.5", max_hxw=65536, min_hxw=0, hw_stride=32)
    v13 = BucketConfig.official("v1.3", max_hxw=65536, min_hxw=0)
    # 130x64 is h/w 2.03 > 2.0; stride-cropped it is 128x64 = exactly 2.0
    assert spatial_bucket(v15, 130, 64) == (0, 0, "aspect_mismatch")
    assert spatial_bucket(v13, 130, 64) == (128, 64, "kept")
    assert spatial_bucket(v13, 300, 1000)[2] == "aspect_mismatch"   # 128x448 after resize: 0.29


def test_min_hxw_defaults_to_a_quarter_of_max_hxw():
    v15 = BucketConfig(rule="v1.5", max_hxw=65536)
    assert v15.min_area == 16384
    assert spatial_bucket(v15, 100, 100)[2] == "too_small"          # 10000 px on the original
    assert spatial_bucket(v15, 130, 130) == (128, 128, "kept")     # 16900 px, 16384 after the stride crop
    v13 = BucketConfig.official("v1.3", max_hxw=65536)
    assert spatial_bucket(v13, 130, 130) == (128, 128, "kept")
    assert spatial_bucket(v13, 120, 130)[2] == "too_small"        # 96x128 after the stride-32 crop


def test_force_resolution():
    cfg = BucketConfig(force_resolution=True, max_height=576, max_width=1024, min_hxw=576 * 1024)
    assert spatial_bucket(cfg, 720, 1280) == (576, 1024, "kept")
    assert spatial_bucket(cfg, 480, 854)[2] == "too_small"


# ---------------------------------------------------------------------------------------------------- frames
def test_largest_valid_frame_counts():
    v15 = BucketConfig(ae_stride_t=8)
    # 8x VAE: T = 1 mod 8 and >= 29, so 33 is the smallest
    assert [largest_valid_frames(v15, n) for n in (121, 120, 57, 33, 32, 29)] == [121, 113, 57, 33, 0, 0]
    v15_sp2 = BucketConfig(ae_stride_t=8, sp_size=2)   # latent frames even: 121 -> 16 latents; 113 -> 15 is odd
    assert [largest_valid_frames(v15_sp2, n) for n in (121, 113, 112)] == [121, 105, 105]
    v13 = BucketConfig.official("v1.3")                # latent frames divisible by 4: 29, 45, 61, 77, 93
    assert [largest_valid_frames(v13, n) for n in (93, 92, 60, 29)] == [93, 77, 45, 29]
    v13_sp8 = BucketConfig.official("v1.3", sp_size=8)  # 29, 61, 93
    assert [largest_valid_frames(v13_sp8, n) for n in (93, 92, 60)] == [93, 61, 29]


def test_frame_rules_and_drop_reasons(tmp_path):
    items = [
        video("full.mp4", 576, 1024, n=121),                    # 121 @ 24 fps -> 121
        video("fast.mp4", 576, 1024, n=200, fps=48.0),          # interval 2: 100 frames -> 97
        video("slow.mp4", 576, 1024, n=100, fps=12.0),          # v1.5 drops slower than train_fps
        video("long.mp4", 576, 1024, n=606),                    # > 5 x 121 x 24/24
        video("short.mp4", 576, 1024, n=28),
        video("nearly.mp4", 576, 1024, n=40, fps=24.05),       # |fps - 24| < 0.1 counts as 24: 40 -> 33
        {"path": "nocap.mp4", "resolution": {"height": 576, "width": 1024}, "num_frames": 121},
        {"path": "nores.mp4", "cap": "x", "num_frames": 121},
        {"path": "nonum.mp4", "cap": "x", "resolution": {"height": 576, "width": 1024}},
        {"path": "img.jpg", "cap": "x", "resolution": {"height": 1080, "width": 1920}},
    ]
    cfg = BucketConfig(force_resolution=True, max_height=576, max_width=1024, min_hxw=0, drop_short_ratio=0.0,
                       min_bucket_factor=0)
    result = assign_buckets(annotations(tmp_path, items), cfg)
    shapes = [result.shapes[b] if b >= 0 else None for b in result.bucket_of]
    assert shapes[:6] == [(121, 576, 1024), (97, 576, 1024), None, None, None, (33, 576, 1024)]
    assert shapes[-1] == (1, 576, 1024)
    assert result.dropped() == {"no_caption": 1, "no_resolution": 1, "no_num_frames": 1, "too_long": 1,
                                "fps_too_low": 1, "too_short": 1}
    v13 = BucketConfig.official("v1.3", force_resolution=True, max_height=576, max_width=1024, drop_short_ratio=0.0,
                                min_bucket_factor=0)
    slow = assign_buckets(annotations(tmp_path, [video("slow.mp4", 576, 1024, n=60, fps=12.0)]), v13)
    # v1.3 keeps slow videos: interval 12/16 = 0.75 -> ceil(60 / 0.75) = 80 frames (repeats) -> 77
    assert slow.shapes[slow.bucket_of[0]] == (77, 576, 1024)


def test_drop_short_ratio_and_speed_factor(tmp_path):
    items = [video(f"{i}.mp4", 576, 1024, n=100) for i in range(200)]
    forced = dict(force_resolution=True, max_height=576, max_width=1024, min_hxw=0, min_bucket_factor=0)
    assert assign_buckets(annotations(tmp_path, items), BucketConfig(drop_short_ratio=1.0, **forced)).dropped() == {
        "too_short": 200}
    half = assign_buckets(annotations(tmp_path, items), BucketConfig(drop_short_ratio=0.5, seed=3, **forced))
    assert 70 < half.dropped()["too_short"] < 130 and half.counts() == {"97x576x1024": 200 - half.dropped()["too_short"]}
    # speed 2 on a 480-frame window: min(2, 480/121) = 2 -> 240 frames, cropped to 121
    sped = assign_buckets(annotations(tmp_path, [video("s.mp4", 576, 1024, n=480)]),
                          BucketConfig(speed_factor=2.0, drop_short_ratio=1.0, **forced))
    assert sped.counts() == {"121x576x1024": 1}


# ---------------------------------------------------------------------------------------------------- small buckets
def _two_bucket_items():
    big = [video(f"b{i}.mp4", 720, 1280, n=121) for i in range(40)]       # 144x256 (9:16)
    small = [video(f"s{i}.mp4", 480, 640, n=121) for i in range(5)]       # 192x256 (3:4)
    tiny_t = [video(f"t{i}.mp4", 720, 1280, n=57) for i in range(3)]      # 57 frames: no large bucket that short
    return big + small + tiny_t


@pytest.mark.parametrize("policy", ["merge", "drop", "keep"])
def test_small_bucket_policies(tmp_path, policy):
    cfg = BucketConfig(force_5_ratio=True, max_hxw=65536, min_hxw=0, drop_short_ratio=0.0, small_buckets=policy)
    result = assign_buckets(annotations(tmp_path, _two_bucket_items()), cfg, global_batch=8)   # needs 32 items
    counts = result.counts()
    if policy == "merge":
        assert counts == {"121x144x256": 45, "57x144x256": 3}
        assert any("merged bucket 121x192x256 (5 items < 32) into 121x144x256" in n for n in result.notes)
        assert any("kept small bucket 57x144x256" in n for n in result.notes)
    elif policy == "drop":
        assert counts == {"121x144x256": 40} and result.dropped() == {"minority": 8}
    else:
        assert counts == {"121x144x256": 40, "121x192x256": 5, "57x144x256": 3}


def test_a_dataset_of_small_buckets_trains_or_says_why_not(tmp_path):
    anno = annotations(tmp_path, [video(f"{i}.mp4", 720, 1280) for i in range(3)])
    kept = assign_buckets(anno, BucketConfig(force_5_ratio=True, min_hxw=0), global_batch=8)
    assert kept.counts() == {"121x144x256": 3} and "all 1 bucket(s) are smaller" in kept.notes[0]
    with pytest.raises(ValueError, match="leave nothing to train on; use small_buckets='merge' or 'keep'"):
        assign_buckets(anno, BucketConfig(force_5_ratio=True, min_hxw=0, small_buckets="drop"), global_batch=8)


def test_bad_bucket_configs_are_named():
    with pytest.raises(ValueError, match="rule must be 'v1.5' or 'v1.3'"):
        BucketConfig(rule="v2")
    with pytest.raises(ValueError, match="drop_short_ratio must be in"):
        BucketConfig(drop_short_ratio=2)
    with pytest.raises(ValueError, match="multiples of hw_stride"):
        BucketConfig(force_resolution=True, max_height=500, max_width=1024)
