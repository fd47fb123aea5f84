"""The training dataset on tiny media made here: frame selection, crops, captions, bad files, the DataLoader."""
import dataclasses

import numpy as np
import pytest
import torch

from mindspeed_mm.osp.data.annotations import load_annotations
from mindspeed_mm.osp.data.buckets import BucketConfig, assign_buckets
from mindspeed_mm.osp.data.dataset import (CaptionTokenizer, DataError, DataHealth, OSPDataset, SampleConfig,
                                           collate)
from mindspeed_mm.osp.data.sampler import GroupedBatchSampler
from mindspeed_mm.osp.data.video_io import write_video
from media import make_garbage, make_image, make_video, truncate_file, write_annotation

STEP = 6   # frame i of a counting video has grey level STEP * i


def counting_video(path, num_frames=40, height=32, width=48, fps=24.0, left_black=False):
    """Frame i is uniformly grey STEP * i (optionally with a black left half), so decoded frames name their index."""
    frames = torch.arange(num_frames, dtype=torch.uint8).mul(STEP).view(-1, 1, 1, 1).expand(-1, height, width, 3)
    frames = frames.clone()
    if left_black:
        frames[:, :, : width // 2] = 0
    return write_video(path, frames, fps)


def decoded_index(video):
    """Frame indices of a (3, T, H, W) sample of a counting video."""
    grey = (video.mean(dim=(0, 2, 3)) + 1) * 127.5
    return torch.round(grey / STEP).long().tolist()


def item(name, n, fps=24.0, h=32, w=48, cap="a grey square", **extra):
    return {"path": name, "cap": cap, "resolution": {"height": h, "width": w}, "num_frames": n, "fps": fps, **extra}


CFG = BucketConfig(num_frames=9, min_num_frames=9, ae_stride_t=4, max_hxw=32 * 48, min_hxw=0, hw_stride=16,
                   drop_short_ratio=0.0, min_bucket_factor=0)


def dataset(tmp_path, items, cfg=CFG, **sample):
    anno = load_annotations(write_annotation(tmp_path / "anno.json", items))
    return OSPDataset(anno, assign_buckets(anno, cfg), cfg, SampleConfig(**sample))


def sample(ds, i):
    return ds[(i, ds.assignment.bucket_of[i])]


def test_frames_are_consecutive_resampled_and_cropped_per_epoch(tmp_path):
    counting_video(tmp_path / "v24.mp4", 40)
    counting_video(tmp_path / "v48.mp4", 40, fps=48.0)
    counting_video(tmp_path / "cut.mp4", 40)
    ds = dataset(tmp_path, [item("v24.mp4", 40), item("v48.mp4", 40, fps=48.0), item("cut.mp4", 12, cut=[20, 32])],
                 caption_dropout=0.0)
    assert [ds.assignment.shapes[b] for b in ds.assignment.bucket_of] == [(9, 32, 48)] * 3
    first = decoded_index(sample(ds, 0)["video"])
    assert first == list(range(first[0], first[0] + 9))                    # consecutive at 24 fps
    assert first == decoded_index(sample(ds, 0)["video"])                  # same epoch, same crop
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        starts.add(decoded_index(sample(ds, 0)["video"])[0])
    assert len(starts) > 1                                                 # the crop moves with the epoch
    fast = decoded_index(sample(ds, 1)["video"])
    assert np.diff(fast).tolist() == [2] * 8                               # 48 -> 24 fps: every other frame
    cut = decoded_index(sample(ds, 2)["video"])
    assert 20 <= cut[0] and cut[-1] <= 31 and np.diff(cut).tolist() == [1] * 8


def test_pixels_crop_box_resize_and_range(tmp_path):
    counting_video(tmp_path / "half.mp4", 12, height=64, width=96, left_black=True)
    make_image(tmp_path / "img.png", height=40, width=80)
    items = [item("half.mp4", 12, h=64, w=96, crop=[0, 48, 0, 64]),
             {"path": "img.png", "cap": "x", "resolution": {"height": 40, "width": 80}}]
    cfg = BucketConfig(num_frames=9, min_num_frames=9, ae_stride_t=4, max_hxw=32 * 32, min_hxw=0, hw_stride=16,
                       max_h_div_w_ratio=4.0, drop_short_ratio=0.0, min_bucket_factor=0)
    official = dataset(tmp_path, items, cfg)
    # the official rule buckets the uncropped 64x96: area 1024 -> 26x39 -> 16x32 at stride 16
    video = sample(official, 0)["video"]
    assert video.shape == (3, 9, 16, 32) and video.dtype == torch.float32
    assert video.max() < -0.9                         # the crop box kept only the black left half
    image = sample(official, 1)["video"]              # 40x80 -> 22x45 -> 16x32
    assert image.shape == (3, 1, 16, 32) and image.min() >= -1 and image.max() <= 1
    crop_aware = dataset(tmp_path, items, dataclasses.replace(cfg, crop_aware=True))
    assert sample(crop_aware, 0)["video"].shape == (3, 9, 32, 16)   # the 64x48 box: 36x27 -> 32x16


def test_captions_pick_one_per_epoch_and_dropout_always_applies(tmp_path):
    counting_video(tmp_path / "v.mp4", 12)
    items = [item("v.mp4", 12, cap=["first", "second", "third"]) for _ in range(50)]
    ds = dataset(tmp_path, items, caption_dropout=0.0)
    picked = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        picked.add(ds.caption(0))
    assert picked == {"first", "second", "third"}
    assert {dataset(tmp_path, items, caption_dropout=1.0, dropout_text="<drop>").caption(i) for i in range(50)} == {
        "<drop>"}
    half = dataset(tmp_path, items, caption_dropout=0.5)
    dropped = sum(half.caption(i) == "" for i in range(50))
    assert 12 < dropped < 38


def test_bad_files_are_replaced_within_the_bucket_and_counted(tmp_path):
    for i in range(4):
        counting_video(tmp_path / f"ok{i}.mp4", 12)
    make_garbage(tmp_path / "garbage.mp4")
    counting_video(tmp_path / "trunc.mp4", 40)
    truncate_file(tmp_path / "trunc.mp4", 0.3)
    items = [item(f"ok{i}.mp4", 12) for i in range(4)] + [item("missing.mp4", 12), item("garbage.mp4", 12),
                                                          item("trunc.mp4", 40)]
    ds = dataset(tmp_path, items)
    health = DataHealth(len(ds), max_failure_fraction=0.5)
    for i in (4, 5, 6):
        s = sample(ds, i)
        assert s["video"].shape == (3, 9, 32, 48)                  # same shape: never a silent change
        assert s["index"] in range(4) and s["failed"][0][0].endswith(items[i]["path"])
        health.update(collate([s]))
    # a replacement may itself be bad (it is drawn from the whole bucket): each attempt is counted
    assert health.replaced >= 3 and sorted(health.bad) == sorted(str(tmp_path / items[i]["path"]) for i in (4, 5, 6))
    strict = DataHealth(len(ds), max_failure_fraction=0.3)        # 3 of 7 bad > 30% (2 of 7 is not)
    with pytest.raises(DataError, match=r"3 of 7 items are unreadable.*missing.mp4.*osp data validate"):
        for i in (4, 5, 6):
            strict.update(collate([sample(ds, i)]))


def test_a_bucket_of_only_bad_files_stops_with_the_paths(tmp_path):
    make_garbage(tmp_path / "g.mp4")
    ds = dataset(tmp_path, [item("g.mp4", 12)], max_retries=2)
    with pytest.raises(DataError, match=r"3 items of bucket 9x32x48 in a row could not be read; first: .*g.mp4"):
        sample(ds, 0)


def test_dataloader_with_the_grouped_sampler_resumes_exactly(tmp_path):
    for i in range(3):
        counting_video(tmp_path / f"a{i}.mp4", 12)
        counting_video(tmp_path / f"b{i}.mp4", 12, height=48, width=32)
    items = [item(f"a{i}.mp4", 12) for i in range(3)] + [item(f"b{i}.mp4", 12, h=48, w=32) for i in range(3)]
    ds = dataset(tmp_path, items, caption_dropout=0.0)

    def loader(sampler):
        # a hung worker fails the test (timeout, seconds per batch) instead of hanging the suite
        return torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=2, collate_fn=collate, timeout=120)

    sampler = GroupedBatchSampler(ds.assignment.bucket_of, micro_batch_size=2, seed=1)
    full = [(b["index"].tolist(), tuple(b["video"].shape), decoded_index(b["video"][0])) for b in loader(sampler)]
    assert {shape for _, shape, _ in full} == {(2, 3, 9, 32, 48), (2, 3, 9, 48, 32)}
    resumed = GroupedBatchSampler(ds.assignment.bucket_of, micro_batch_size=2, seed=1)
    resumed.load_state_dict(sampler.state_dict(consumed_batches=1))
    assert [(b["index"].tolist(), tuple(b["video"].shape), decoded_index(b["video"][0]))
            for b in loader(resumed)] == full[1:]


def test_caption_tokenizer_pads_to_the_model_lengths():
    pytest.importorskip("transformers", reason="tokenizers come from transformers (extra: text)")
    from mindspeed_mm.osp.text.tiny import tiny_tokenizer

    tok = CaptionTokenizer(tiny_tokenizer(512), 512, tiny_tokenizer(77, bos=True), 77)
    out = tok("a red car")
    assert out["input_ids"].shape == (512,) and out["attention_mask"].sum() == 4     # 3 words + </s>
    assert out["pooled_input_ids"].shape == (77,) and out["pooled_attention_mask"].sum() == 5
