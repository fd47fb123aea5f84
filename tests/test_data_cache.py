"""Feature cache: extraction matches direct encoding, rank split, resume, manifest checks, CachedDataset, the
MindSpore per-video pack and `osp data extract`; tiny media, a tiny random WF-VAE and tiny text encoders."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from media import make_garbage, make_image, make_video, write_annotation
from safetensors import safe_open
from safetensors.torch import save_file

from mindspeed_mm.osp.cli import build_parser
from mindspeed_mm.osp.data.annotations import load_annotations
from mindspeed_mm.osp.data.buckets import BucketConfig, assign_buckets
from mindspeed_mm.osp.data.cache import (CacheError, CachedDataset, LatentCache, collate_cached, extract_cache,
                                         pack_per_video_latents, per_video_name, shard_name)
from mindspeed_mm.osp.data.dataset import OSPDataset, SampleConfig
from mindspeed_mm.osp.text.encoders import TextConditioner
from mindspeed_mm.osp.text.tiny import tiny_clip_text_encoder, tiny_t5_encoder, tiny_tokenizer
from mindspeed_mm.osp.vae.model import WFVAE

BUCKETS = dict(rule="v1.5", num_frames=9, min_num_frames=9, ae_stride_t=8, ae_stride_hw=8, train_fps=24.0,
               max_hxw=32 * 48, min_hxw=256, hw_stride=16, drop_short_ratio=0.0, min_bucket_factor=1,
               small_buckets="keep")
# (file, height, width, captions): the image and the videos fill three buckets, "tiny" is dropped (too small)
# and "bad" is kept but cannot be decoded.
ITEMS = [("v0.mp4", 32, 48, ["a cat on the street", "a red car"]), ("v1.mp4", 32, 32, ["a dog"]),
         ("bad.mp4", 32, 32, ["a man running"]), ("v2.mp4", 32, 48, ["the sea at sunset"]),
         ("img.png", 32, 32, ["a blue sky", "snow", "rain"]), ("tiny.mp4", 8, 8, ["a car"]),
         ("v3.mp4", 32, 32, ["a forest"]), ("v4.mp4", 32, 48, ["slow motion city at night"])]
KEPT = [0, 1, 2, 3, 4, 6, 7]
BAD, STORED = 2, [0, 1, 3, 4, 6, 7]
SHARD_SIZE, CHUNK = 2, 4


def make_dataset(root, buckets=BUCKETS, **sample) -> OSPDataset:
    anno = load_annotations(root / "anno.json")
    cfg = BucketConfig(**buckets)
    return OSPDataset(anno, assign_buckets(anno, cfg), cfg, SampleConfig(**sample))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    entries = []
    for n, (name, h, w, caps) in enumerate(ITEMS):
        if name == "bad.mp4":
            make_garbage(root / name)
        elif name.endswith(".png"):
            make_image(root / name, h, w, seed=n)
        elif name != "tiny.mp4":
            make_video(root / name, num_frames=12, height=h, width=w, fps=24.0, seed=n)
        entry = {"path": name, "cap": caps, "resolution": {"height": h, "width": w}}
        entries.append(entry if name.endswith(".png") else {**entry, "num_frames": 12, "fps": 24.0})
    write_annotation(root / "anno.json", entries)
    torch.manual_seed(0)
    vae = WFVAE.from_preset("tiny_v15").eval()
    text = TextConditioner(tiny_t5_encoder(16), tiny_tokenizer(16), 16, tiny_clip_text_encoder(8),
                           tiny_tokenizer(16, bos=True), pooled_max_length=16)
    dataset = make_dataset(root, caption_dropout=0.0)
    dataset.set_epoch(5)
    result = extract_cache(dataset, root / "out", vae=vae, text=text, shard_size=SHARD_SIZE, chunk_frames=CHUNK,
                           progress=False)
    return argparse.Namespace(root=root, vae=vae, text=text, dataset=dataset, result=result, out=root / "out")


def build(env, out, **kwargs):
    options = dict(vae=env.vae, text=env.text, shard_size=SHARD_SIZE, chunk_frames=CHUNK, progress=False)
    return extract_cache(env.dataset, out, **{**options, **kwargs})


def mtimes(folder) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_cached_latents_and_text_equal_direct_encoding(env):
    assert env.dataset.epoch == 5                       # restored after the epoch-0 extraction
    env.dataset.set_epoch(0)
    cache = LatentCache(env.out)
    assert cache.items.tolist() == KEPT and cache.manifest["num_shards"] == 4
    for i in STORED:
        shape = env.dataset.assignment.shapes[env.dataset.assignment.bucket_of[i]]
        posterior = env.vae.encode(env.dataset.load_video(i, shape)[None], chunk_frames=CHUNK)
        entry = cache.load(i)
        assert entry["latent_mean"].dtype == torch.float32
        assert entry["latent_mean"].shape == env.vae.latent_shape(*shape)
        assert torch.allclose(entry["latent_mean"], posterior.mean[0], atol=1e-6, rtol=0)
        assert torch.allclose(entry["latent_logvar"], posterior.logvar[0], atol=1e-6, rtol=0)
        emb = env.text.encode(env.dataset.anno.captions_of(i))
        assert len(entry["texts"]) == len(emb.hidden_states)
        for j, (hidden, mask, pooled) in enumerate(entry["texts"]):
            assert torch.allclose(hidden, emb.hidden_states[j], atol=1e-6) and hidden.shape == (16, 16)
            assert torch.equal(mask, emb.attention_mask[j]) and 0 < int(mask.sum()) < 16
            assert torch.allclose(pooled, emb.pooled[j], atol=1e-6)
    null = env.text.encode([""])
    hidden, mask, pooled = cache.null_text()
    assert torch.allclose(hidden, null.hidden_states[0]) and torch.equal(mask, null.attention_mask[0])
    assert torch.allclose(pooled, null.pooled[0])
    assert all(i in cache for i in STORED) and BAD not in cache and 5 not in cache
    with safe_open(str(env.out / shard_name(0)), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["items"]) == [0, 1] and json.loads(meta["buckets"]) == ["9x32x48", "9x32x32"]
    assert json.loads(meta["paths"]) == [env.dataset.anno.paths[0], env.dataset.anno.paths[1]]


def test_corrupt_video_is_recorded_not_raised(env):
    assert [(i, p) for i, p, _ in env.result.failed] == [(BAD, env.dataset.anno.paths[BAD])]
    assert "1 item(s) could not be read" in env.result.summary()
    with safe_open(str(env.out / shard_name(1)), framework="pt") as f:
        assert [f[0] for f in json.loads(f.metadata()["failed"])] == [BAD]
    cache = LatentCache(env.out)
    assert cache.failure(BAD)[0] == env.dataset.anno.paths[BAD]
    with pytest.raises(CacheError, match=f"could not be read.*delete {shard_name(1)}"):
        cache.load(BAD)
    with pytest.raises(CacheError, match="dropped it"):
        cache.load(5)


def test_two_ranks_write_disjoint_shards_covering_every_item(env, tmp_path):
    results = [build(env, tmp_path, rank=rank, world=2) for rank in (0, 1)]
    assert results[0].written == [0, 2] and results[1].written == [1, 3]
    ours, reference = LatentCache(tmp_path), LatentCache(env.out)
    assert ours.manifest == reference.manifest
    for i in STORED:
        assert torch.equal(ours.load(i)["latent_mean"], reference.load(i)["latent_mean"])


def test_rerun_skips_finished_shards_and_rewrites_a_deleted_one(env, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(env.out, out)
    before = mtimes(out)
    again = build(env, out)
    assert again.written == [] and again.skipped == [0, 1, 2, 3] and mtimes(out) == before
    assert [i for i, _, _ in again.failed] == [BAD]      # failures of skipped shards are still reported
    (out / shard_name(2)).unlink()
    again = build(env, out)
    assert again.written == [2] and again.skipped == [0, 1, 3]
    after = mtimes(out)
    assert {k for k in after if after[k] != before[k]} == {shard_name(2)}
    assert torch.equal(LatentCache(out).load(4)["latent_mean"], LatentCache(env.out).load(4)["latent_mean"])


def test_a_different_manifest_is_refused_unless_overwrite(env, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(env.out, out)
    with pytest.raises(CacheError, match="shard_size: 2 in the cache, 3 now.*--overwrite"):
        build(env, out, shard_size=3)
    with pytest.raises(CacheError, match="vae.weights"):
        torch.manual_seed(1)
        build(env, out, vae=WFVAE.from_preset("tiny_v15").eval())
    with pytest.raises(CacheError, match="buckets.max_hxw"):
        extract_cache(make_dataset(env.root, {**BUCKETS, "max_hxw": 32 * 32}), out, vae=env.vae, progress=False)
    result = build(env, out, shard_size=3, overwrite=True)
    assert result.written == [0, 1, 2] and not (out / shard_name(3)).exists()
    assert LatentCache(out).manifest["shard_size"] == 3 and 7 in LatentCache(out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not a feature cache"):
        build(env, tmp_path / "other")


def test_cached_dataset_samples(env):
    cache = LatentCache(env.out)
    ds = CachedDataset(cache, env.dataset, sample_latents=False)
    bucket_of = env.dataset.assignment.bucket_of
    for i in STORED:
        sample = ds[(i, bucket_of[i])]
        entry = cache.load(i)
        assert torch.equal(sample["latent"], entry["latent_mean"]) and sample["failed"] == []
        assert sample["text"].shape == (16, 16) and sample["text_mask"].shape == (16,)
        assert sample["pooled"].shape == (8,) and sample["caption"] in env.dataset.anno.captions_of(i)
        assert any(torch.equal(sample["text"], hidden) for hidden, _, _ in entry["texts"])
    sampled = CachedDataset(cache, env.dataset)
    first = sampled[(0, bucket_of[0])]["latent"]
    assert torch.equal(first, sampled[(0, bucket_of[0])]["latent"])   # deterministic within an epoch
    assert not torch.allclose(first, cache.load(0)["latent_mean"])
    sampled.set_epoch(1)
    assert not torch.equal(first, sampled[(0, bucket_of[0])]["latent"])
    replaced = ds[(BAD, bucket_of[BAD])]                               # failed at extraction: replaced
    assert replaced["index"] in STORED and bucket_of[replaced["index"]] == bucket_of[BAD]
    assert replaced["failed"][0][0] == env.dataset.anno.paths[BAD]
    batch = collate_cached([ds[(i, bucket_of[i])] for i in (0, 3, 7)])
    assert batch["latent"].shape == (3, 4, 2, 4, 6) and batch["pooled"].shape == (3, 8)
    with pytest.raises(IndexError):
        ds[(0, bucket_of[1])]


def test_caption_dropout_substitutes_the_null_text(env):
    cache = LatentCache(env.out)
    ds = CachedDataset(cache, make_dataset(env.root, caption_dropout=1.0))
    sample = ds[(4, env.dataset.assignment.bucket_of[4])]
    hidden, mask, pooled = cache.null_text()
    assert sample["caption"] == "" and torch.equal(sample["text"], hidden)
    assert torch.equal(sample["text_mask"], mask) and torch.equal(sample["pooled"], pooled)
    with pytest.raises(CacheError, match="dropout_text"):
        CachedDataset(cache, make_dataset(env.root, caption_dropout=0.5, dropout_text="low quality"))


def test_cached_dataset_refuses_other_buckets_and_missing_shards(env, tmp_path):
    with pytest.raises(CacheError, match="other buckets.*max_hxw.*osp data extract"):
        CachedDataset(LatentCache(env.out), make_dataset(env.root, {**BUCKETS, "max_hxw": 32 * 32}))
    out = tmp_path / "out"
    shutil.copytree(env.out, out)
    (out / shard_name(3)).unlink()
    ds = CachedDataset(LatentCache(out), env.dataset)
    with pytest.raises(CacheError, match="not extracted yet.*osp data extract"):
        ds[(7, env.dataset.assignment.bucket_of[7])]


def test_pack_mindspore_per_video_latents(env, tmp_path):
    reference = LatentCache(env.out)
    src = tmp_path / "latents"
    src.mkdir()
    for i in STORED:
        entry = reference.load(i)
        mean, logvar = entry["latent_mean"], entry["latent_logvar"]
        if i == 6:   # extracted at another size than its bucket
            mean, logvar = mean[:, :, :2], logvar[:, :, :2]
        save_file({"latent_mean": mean.contiguous(), "latent_logvar": logvar.contiguous()},
                  str(src / per_video_name(env.dataset.anno.paths[i])), metadata={"source": "x"})
    result = pack_per_video_latents(src, env.dataset, tmp_path / "packed", shard_size=SHARD_SIZE, progress=False)
    assert sorted(i for i, _, _ in result.failed) == [BAD, 6]
    assert "needs (C, 2, 4, 4)" in dict((i, r) for i, _, r in result.failed)[6]
    packed = LatentCache(tmp_path / "packed")
    assert packed.manifest["text"] is None and packed.manifest["vae"]["packed_from"] == str(src.resolve())
    for i in (0, 1, 3, 4, 7):
        entry = packed.load(i)
        assert torch.equal(entry["latent_mean"], reference.load(i)["latent_mean"])
        assert torch.equal(entry["latent_logvar"], reference.load(i)["latent_logvar"]) and entry["texts"] == []
    sample = CachedDataset(packed, env.dataset, sample_latents=False)[(0, env.dataset.assignment.bucket_of[0])]
    assert "text" not in sample and sample["caption"] in env.dataset.anno.captions_of(0)


def test_per_video_name_matches_the_mindspore_extractor(env, monkeypatch):
    # extract.py imports only numpy at the top; loading the file alone keeps MindSpore (its package) out of this
    # process, where it would clash with the torch already running.
    import mindspeed_mm.osp

    source = Path(mindspeed_mm.osp.__file__).parent / "vae_ms" / "extract.py"
    spec = importlib.util.spec_from_file_location("_ms_extract_naming", source)
    extract = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, extract)   # its dataclasses look their module up there
    spec.loader.exec_module(extract)
    path = env.dataset.anno.paths[0]
    assert per_video_name(path) == extract.output_name(path, "safetensors")


def test_cli_offers_the_cache_dtypes():
    from mindspeed_mm.osp.cli.data import EXTRACT_DTYPES
    from mindspeed_mm.osp.data.cache import DTYPES

    assert EXTRACT_DTYPES == tuple(DTYPES)   # `osp data extract --dtype` names them without importing torch


def test_cli_extract_under_torchrun_rank(env, tmp_path, monkeypatch, capsys):
    vae_dir = env.vae.save_pretrained(tmp_path / "vae")
    env.text.encoder.save_pretrained(tmp_path / "t5")
    env.text.tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "buckets.json").write_text(json.dumps(BUCKETS))
    parser = build_parser()
    base = ["data", "extract", str(env.root / "anno.json"), "--config", str(tmp_path / "buckets.json"), "--output",
            str(tmp_path / "cache"), "--shard-size", "2", "--chunk-frames", "4", "--max-length", "16",
            "--device", "cpu"]

    def run(*extra) -> int:
        args = parser.parse_args(base + list(extra))
        return args.func(args)

    assert run("--vae", str(tmp_path / "missing")) == 2
    assert "missing/config.json is missing" in capsys.readouterr().err
    assert run("--vae", str(vae_dir), "--text-encoder", str(tmp_path / "t5")) == 2
    assert "--text-encoder and --tokenizer go together" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert run("--vae", str(vae_dir), "--text-encoder", str(tmp_path / "t5"), "--tokenizer",
               str(tmp_path / "tok")) == 0
    assert "rank 1/2: wrote 2 shard(s)" in capsys.readouterr().out
    shards = sorted(p.name for p in (tmp_path / "cache").glob("shard-*"))
    assert shards == [shard_name(1), shard_name(3)]
    cache, reference = LatentCache(tmp_path / "cache"), LatentCache(env.out)
    assert 7 in cache and 0 not in cache
    assert torch.allclose(cache.load(7)["latent_mean"], reference.load(7)["latent_mean"], atol=1e-6)
    assert torch.allclose(cache.load(7)["texts"][0][0], reference.load(7)["texts"][0][0], atol=1e-6)
    assert os.path.isfile(tmp_path / "cache" / "null_text.safetensors")
