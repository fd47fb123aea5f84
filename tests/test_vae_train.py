"""WF-VAE training: the loss terms, and `osp train` runs on a VAE config (tiny preset, 9x32x32 clips, CPU)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mindspeed_mm.osp.training.config import ConfigError
from mindspeed_mm.osp.training.vae_config import from_dict, load_vae_config
from mindspeed_mm.osp.vae.distribution import DiagonalGaussian
from mindspeed_mm.osp.vae.losses import (LPIPS, LossConfig, NLayerDiscriminator3D, WFVAELoss, adaptive_weight,
                                         generator_loss, hinge_d_loss, kl_loss, wavelet_loss)

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("step_seconds", "samples_per_s")


# ---------------------------------------------------------------------------------------------------- losses
def test_kl_matches_the_closed_form_with_and_without_a_kl_method():
    torch.manual_seed(0)
    moments = torch.randn(2, 8, 3, 4, 4)
    mean, logvar = moments.chunk(2, dim=1)
    expected = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum() / 2
    assert torch.allclose(kl_loss(DiagonalGaussian(moments)), expected, rtol=1e-6)
    assert torch.allclose(kl_loss(SimpleNamespace(mean=mean, logvar=logvar)), expected, rtol=1e-6)
    zero = torch.zeros(3, 8, 1, 2, 2)
    assert kl_loss(DiagonalGaussian(zero)).item() == 0.0


def test_wavelet_loss_is_zero_for_equal_coefficients_and_the_batch_mean_l1_otherwise():
    torch.manual_seed(0)
    enc = [torch.randn(2, 24, 3, 4, 4), torch.randn(2, 24, 2, 2, 2)]
    assert wavelet_loss(enc, [c.clone() for c in enc]).item() == 0.0
    dec = [c + 0.5 * torch.randn_like(c) for c in enc]
    expected = sum((e - d).abs().sum() for e, d in zip(enc, dec)) / 2
    value = wavelet_loss(enc, dec)
    assert value.item() > 0 and torch.allclose(value, expected)
    with pytest.raises(ValueError):
        wavelet_loss(enc, dec[:1])


def test_hinge_and_generator_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    assert generator_loss(fake).item() == pytest.approx(1.0)


def test_adaptive_weight_equals_a_manual_gradient_ratio():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4)
    x = torch.randn(5, 6)
    y = layer(x)
    nll, g = (y - 1).abs().sum(), -(y ** 3).mean()
    weight = adaptive_weight(nll, g, layer.weight)
    grads = []
    for loss_fn in (lambda out: (out - 1).abs().sum(), lambda out: -(out ** 3).mean()):
        layer.zero_grad()
        loss_fn(layer(x)).backward()
        grads.append(layer.weight.grad.norm())
    assert weight.item() == pytest.approx((grads[0] / (grads[1] + 1e-6)).item(), rel=1e-6)
    assert not weight.requires_grad
    halved = adaptive_weight(nll, g, layer.weight, grad_reduce=lambda t: t * 0.5)   # both grads scaled: same ratio
    assert halved.item() == pytest.approx(weight.item(), rel=1e-5)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_discriminator_gives_one_logit_per_patch(norm):
    disc = NLayerDiscriminator3D(ndf=8, num_layers=3, norm=norm)
    out = disc(torch.randn(2, 3, 9, 32, 32))
    # s2 -> 5x16x16; (2,2,2) -> 3x8x8; (1,2,2) -> 3x4x4; s1 -> 3x4x4; head keeps 3x4x4
    assert out.shape == (2, 1, 3, 4, 4)


def test_lpips_without_weights_is_an_error_naming_the_fix(tmp_path):
    with pytest.raises(ValueError, match="lpips_weight=0"):
        WFVAELoss(LossConfig(lpips_weight=1.0))
    with pytest.raises(ConfigError, match="loss.lpips_vgg and loss.lpips_lin"):
        from_dict({"task": "vae", "data": {"source": "x"}, "loss": {"lpips_weight": 0.1}})


def test_lpips_reads_vgg16_and_linear_weights_and_is_zero_for_equal_images(tmp_path):
    torch.manual_seed(0)
    ref = LPIPS()
    torch.save({f"features.{k}": v for k, v in ref.features.state_dict().items()}, tmp_path / "vgg.pth")
    torch.save({f"lin{i}.model.1.weight": lin.weight.abs() for i, lin in enumerate(ref.lins)}, tmp_path / "lin.pth")
    model = LPIPS.from_files(str(tmp_path / "vgg.pth"), str(tmp_path / "lin.pth"))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(model(x, x), torch.zeros(2))
    assert (model(x, x.flip(-1)) > 0).all()
    # in the loss: (sum |x - y| + w * C*H*W * sum of per-frame LPIPS) / (B*T)
    loss = WFVAELoss(LossConfig(lpips_weight=0.5, lpips_vgg=str(tmp_path / "vgg.pth"),
                                lpips_lin=str(tmp_path / "lin.pth")))
    video, recon = torch.rand(2, 3, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 3, 32, 32) * 2 - 1
    per_frame = model(video.transpose(1, 2).reshape(6, 3, 32, 32), recon.transpose(1, 2).reshape(6, 3, 32, 32))
    nll, terms = loss.reconstruction(video, recon)
    expected = ((video - recon).abs().sum() + 0.5 * 3 * 32 * 32 * per_frame.sum()) / 6
    assert torch.allclose(nll, expected, rtol=1e-5) and terms["lpips"] == pytest.approx(per_frame.mean().item())
    torch.save({"lin0.model.1.weight": ref.lins[0].weight}, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="lins.1.weight"):
        LPIPS.from_files(str(tmp_path / "vgg.pth"), str(tmp_path / "short.pth"))


def _vgg16_features() -> torch.nn.Sequential:
    """torchvision's VGG16 `features` (configuration D: 13 3x3 convs with ReLU, 5 max-pools), randomly initialised,
    written out here rather than taken from our LPIPS module."""
    layers, width = [], 3
    for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if item == "M":
            layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [torch.nn.Conv2d(width, item, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True)]
            width = item
    return torch.nn.Sequential(*layers)


def test_lpips_equals_the_lpips_package_with_its_own_linear_weights(tmp_path, monkeypatch):
    """Our LPIPS against the reference implementation (`lpips` 0.1.4, VGG, v0.1) with the package's real linear
    weights and the same random VGG16 backbone. torchvision is stubbed when it is absent (PyPI's torchvision is a CUDA
    build that cannot load next to CPU torch); the package only asks it for `vgg16(pretrained=False).features`."""
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("lpips") is None:
        pytest.fail("the reference `lpips` package is missing: `pip install --no-deps lpips==0.1.4` "
                    "(tools/bootstrap_env.sh installs it)")
    torch.manual_seed(0)
    backbone = _vgg16_features()
    if importlib.util.find_spec("torchvision") is None:
        models = types.ModuleType("torchvision.models")
        models.vgg16 = lambda pretrained=False: types.SimpleNamespace(features=backbone)
        stub = types.ModuleType("torchvision")
        stub.models = models
        monkeypatch.setitem(sys.modules, "torchvision", stub)
        monkeypatch.setitem(sys.modules, "torchvision.models", models)
    for name in [n for n in sys.modules if n == "lpips" or n.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    import lpips

    reference = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    vgg = {}
    for slice_name in ("slice1", "slice2", "slice3", "slice4", "slice5"):
        for key, value in getattr(reference.net, slice_name).state_dict().items():
            vgg[f"features.{key}"] = value          # slice keys keep torchvision's layer indices
    torch.save(vgg, tmp_path / "vgg.pth")
    lin_path = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    ours = LPIPS.from_files(str(tmp_path / "vgg.pth"), str(lin_path))
    assert ours.lins[0].weight.abs().sum() > 0      # the package's trained linear layers, not zeros

    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 48, 40, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(3, 3, 48, 40, generator=g)).clamp(-1, 1)
    expected = reference(x, y).flatten()
    got = ours(x, y)
    assert expected.min() > 0
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7), (got, expected)


# ---------------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    from mindspeed_mm.osp.data.synthetic import make_synthetic_dataset
    return str(make_synthetic_dataset(tmp_path_factory.mktemp("vae_data") / "d", videos=4, frames=17, height=32,
                                      width=32))


def _config(data: str, **changes) -> dict:
    config = {"task": "vae", "model": {"vae": "wfvae_tiny_v15"},
              "data": {"source": data, "num_frames": 9, "height": 32, "width": 32, "global_batch_size": 1,
                       "micro_batch_size": 1, "num_workers": 0},
              "loss": {"disc_start": 2, "disc_num_layers": 2, "disc_ndf": 8, "disc_norm": "group"},
              "optimizer": {"lr": 1e-3, "ema_decay": 0.9},
              "checkpoint": {"every": 2, "keep_last": 0}, "logging": {"progress": False},
              "steps": 4, "seed": 0}
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        (config[section] if section else config)[name] = value
    return config


def _train(config: dict, output: Path, resume: str = "auto") -> int:
    from mindspeed_mm.osp.training.vae_job import train
    return train(from_dict(config), output, resume)


def _metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def _state(path: Path) -> dict:
    from mindspeed_mm.osp.training.vae_job import load_state
    return load_state(path)


# warm-up over step 0, then a cosine decay to 1e-4 at the run's end (decay_steps null: steps = 4)
SCHEDULE = {"optimizer__warmup_steps": 1, "optimizer__decay_style": "cosine", "optimizer__min_lr": 1e-4}


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """4 steps (GAN from step 3) under `SCHEDULE`, checkpoints at 2 and 4, export."""
    out = tmp_path_factory.mktemp("vae_run") / "a"
    assert _train(_config(data, **SCHEDULE), out) == 0
    return out


def test_a_run_writes_metrics_checkpoints_and_the_ema_export(finished):
    from mindspeed_mm.osp.vae.model import WFVAE

    records = _metrics(finished)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert "g_loss" not in records[1] and {"g_loss", "d_weight", "disc_loss", "disc_grad_norm"} <= set(records[2])
    assert all(math.isfinite(r[k]) for r in records for k in ("loss", "rec_loss", "kl_loss", "wl_loss", "psnr"))
    assert sorted(p.name for p in (finished / "checkpoints").iterdir()) == ["iter_0000002", "iter_0000004", "latest"]
    cosine = [1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * s / 3)) for s in range(3)]
    assert [r["lr"] for r in records] == pytest.approx([1e-3, *cosine])
    assert json.loads((finished / "config.json").read_text())["task"] == "vae"
    exported = WFVAE.from_pretrained(finished / "export" / "vae")
    ema = _state(finished)["ema"]
    assert all(torch.equal(exported.state_dict()[k], ema[k]) for k in ema)


def test_resuming_a_copy_from_step_2_repeats_steps_3_and_4_exactly(finished, data, tmp_path):
    copy = tmp_path / "b"
    # checkpoint.* and data.frame_cache_mb may change on resume: keep only the newest checkpoint, cache the frames
    assert _train(_config(data, checkpoint__keep_last=1, data__frame_cache_mb=64, **SCHEDULE), copy,
                  resume=str(finished / "checkpoints" / "iter_0000002")) == 0
    assert _metrics(copy) == _metrics(finished)[2:]
    a, b = _state(finished), _state(copy)
    for part in ("vae", "ema", "disc"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert torch.equal(a["opt_g"]["state"][0]["exp_avg_sq"], b["opt_g"]["state"][0]["exp_avg_sq"])
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["iter_0000004", "latest"]


def test_the_frame_cache_gives_the_same_clips_and_decodes_each_file_once(data, monkeypatch):
    from mindspeed_mm.osp.data import video_io
    from mindspeed_mm.osp.data.annotations import load_annotations
    from mindspeed_mm.osp.training.vae_job import ClipDataset, usable_items

    reads = []
    real_read = video_io.read_frames
    monkeypatch.setattr(video_io, "read_frames", lambda path, *a, **k: reads.append(path) or real_read(path, *a, **k))
    config = from_dict(_config(data))
    anno = load_annotations(data)
    items, frames, _ = usable_items(anno, config.data)

    def dataset(cache_mb: int) -> ClipDataset:
        return ClipDataset(anno, items, frames, from_dict(_config(data, data__frame_cache_mb=cache_mb)).data, seed=0)

    positions = range(3 * len(items))              # three epochs: other windows and crops of every clip
    plain, cached = dataset(0), dataset(1)
    expected = [plain[i]["video"] for i in positions]
    reads.clear()
    assert all(torch.equal(cached[i]["video"], expected[i]) for i in positions)
    assert sorted(reads) == sorted(anno.paths[i] for i in items)     # one whole-clip decode per file
    clip_bytes = 17 * 32 * 32 * 3
    assert cached.cache.used == len(items) * clip_bytes
    small = dataset(1)
    small.cache.budget = 2 * clip_bytes             # room for two clips: the others are decoded every time
    reads.clear()
    assert all(torch.equal(small[i]["video"], expected[i]) for i in positions)
    assert len(small.cache.clips) == 2 and len(reads) == 2 + 3 * (len(items) - 2)


def test_an_existing_run_is_not_overwritten(finished, data, capsys):
    from mindspeed_mm.osp.cli import main

    path = finished.parent / "a.json"
    path.write_text(json.dumps(_config(data)))
    assert main(["train", "--config", str(path), "--output", str(finished), "--resume", "none"]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="optimizer.lr"):   # a resumed run trains what it trained
        _train(_config(data, optimizer__lr=1e-4), finished)


def test_sigterm_saves_and_exits_0(data, tmp_path, monkeypatch):
    from mindspeed_mm.osp.training import vae_job

    original = vae_job._Run.train_step

    def step_then_signal(self, batch):
        entry = original(self, batch)
        os.kill(os.getpid(), signal.SIGTERM)
        return entry

    monkeypatch.setattr(vae_job._Run, "train_step", step_then_signal)
    out = tmp_path / "s"
    assert _train(_config(data), out) == 0
    assert (out / "checkpoints" / "latest").read_text().strip() == "1" and not (out / "export").exists()


def test_a_non_finite_loss_stops_the_run_naming_the_step(data, tmp_path, monkeypatch, capsys):
    from mindspeed_mm.osp.training import vae_job

    original = WFVAELoss.generator

    def poisoned(self, *args, **kwargs):
        loss, terms = original(self, *args, **kwargs)
        return loss * math.nan, {**terms, "loss": math.nan}

    monkeypatch.setattr(WFVAELoss, "generator", poisoned)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_config(data)))
    assert vae_job.main(path, [], tmp_path / "n") == 1
    assert "step 1: the generator loss is not finite" in capsys.readouterr().err


@pytest.mark.parametrize("changes, overrides, message", [
    ({"data__height": 36}, [], "data.height must be a multiple of 8"),
    ({"data__num_frames": 10}, [], "data.num_frames must be 1 + 8*n"),
    ({}, ["loss.disc_nrom=group"], "did you mean 'disc_norm'"),
    ({"data__source": "/nonexistent/data.txt"}, [], "does not exist"),
    ({"data__global_batch_size": 2}, [], "must equal data.micro_batch_size 1 x 1"),
    ({"optimizer__ema_decay": 1.5}, [], "ema_decay must be in [0, 1)"),
    ({"data__frame_cache_mb": -1}, [], "data.frame_cache_mb, seed and checkpoint.keep_last must be >= 0"),
    ({"optimizer__warmup_steps": 5, "optimizer__decay_steps": 5}, [],
     "optimizer.decay_steps (the step where the learning rate reaches min_lr) must be above optimizer.warmup_steps 5"),
    ({}, ["optimizer.decay_style=exponential"], "optimizer.decay_style must be one of"),
    ({}, ["optimizer.decay_style=WSD"], "optimizer.wsd_decay_steps (how many steps before decay_steps the WSD"),
    ({}, ["optimizer.decay_style=WSD", "optimizer.wsd_decay_steps=1", "optimizer.wsd_decay_style=square"],
     "optimizer.wsd_decay_style must be one of"),
    ({"optimizer__min_lr": 0.1}, [], "optimizer.min_lr must be in [0, optimizer.lr=0.001]"),
    ({"loss__disc_norm": "instance"}, [], "loss.disc_norm must be one of"),
    ({"model__vae": "wfvae_nope"}, [], "unknown WF-VAE preset"),
    ({"loss__lpips_weight": 0.1, "loss__lpips_vgg": "/nonexistent/vgg.pth", "loss__lpips_lin": "/nonexistent/l.pth"},
     [], "no such file: /nonexistent/vgg.pth, /nonexistent/l.pth"),
])
def test_bad_configs_are_refused_before_work(data, tmp_path, capsys, changes, overrides, message):
    from mindspeed_mm.osp.training.vae_job import main

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_config(data, **changes)))
    assert main(path, overrides, tmp_path / "out") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("style, wsd_style", [("constant", None), ("linear", None), ("cosine", None),
                                              ("WSD", "linear"), ("WSD", "cosine"), ("WSD", "exponential"),
                                              ("WSD", "minus_sqrt")])
def test_the_decay_follows_megatrons_scheduler(style, wsd_style):
    """After the warm-up, the VAE's learning rate equals what megatron's OptimizerParamScheduler (the DiT's) gives
    for the same settings, through the decay and past its end ("WSD": held until step 11 - 5, then decayed)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    from mindspeed_mm.osp.training.vae_job import lr_factor

    warmup, decay_steps, lr, min_lr, wsd_steps = 3, 11, 2e-3, 2e-4, 5
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=lr, min_lr=min_lr, lr_warmup_steps=warmup,
                                        lr_decay_steps=decay_steps, lr_decay_style=style, start_wd=0.0, end_wd=0.0,
                                        wd_incr_steps=1, wd_incr_style="constant", wsd_decay_steps=wsd_steps,
                                        lr_wsd_decay_style=wsd_style)
    ours, theirs = [], []
    for step in range(15):
        if step >= warmup:
            ours.append(lr * lr_factor(step, warmup, style, decay_steps, min_lr / lr, wsd_steps, wsd_style))
            theirs.append(scheduler.get_lr(optimizer.param_groups[0]))
        scheduler.step(1)
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert len(set(ours)) == {"constant": 1, "WSD": 6}.get(style, 9)   # WSD: the peak, 4 decayed rates, min_lr
    assert [lr * lr_factor(s, warmup, style, decay_steps, 0.1) for s in range(warmup)] == pytest.approx(
        [lr / 3, 2 * lr / 3, lr])


def test_shipped_configs_parse():
    tiny = load_vae_config(ROOT / "examples" / "train" / "wfvae_tiny.json")
    assert (tiny.data.num_frames, tiny.data.height, tiny.loss.lpips_weight) == (17, 64, 0.0)
    finetune = load_vae_config(ROOT / "examples" / "train" / "wfvae_v15_finetune.json", ["steps=5"])
    assert finetune.loss.lpips_weight > 0 and finetune.steps == 5 and finetune.task == "vae"


def test_unknown_keys_are_named(data):
    values = _config(data)
    values["loss"]["wavelet_weight"] = 0.1
    with pytest.raises(ConfigError, match="unknown key 'loss.wavelet_weight'"):
        from_dict(values)


def test_loss_falls_when_overfitting_one_clip(tmp_path):
    from mindspeed_mm.osp.data.synthetic import make_synthetic_dataset

    source = make_synthetic_dataset(tmp_path / "one", videos=1, frames=9, height=32, width=32)
    config = _config(str(source), steps=24, export=False, loss__disc_start=1000, optimizer__lr=2e-3,
                     checkpoint__every=1000)
    assert _train(config, tmp_path / "o") == 0
    losses = [r["rec_loss"] for r in _metrics(tmp_path / "o")]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(data, tmp_path):
    """GAN from step 2, GroupNorm, no dropout: every term is a per-sample mean, so DDP == one process."""
    config = _config(data, steps=2, export=False, data__global_batch_size=2, data__micro_batch_size=2,
                     loss__disc_start=1, loss__disc_dropout=0.0)
    path = tmp_path / "ddp.json"
    path.write_text(json.dumps(config))
    assert _train(config, tmp_path / "one") == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "mindspeed_mm.osp.cli", "train", "--config", str(path),
                           "--output", str(tmp_path / "two"), "data.micro_batch_size=1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [sorted(r) for r in one] == [sorted(r) for r in two] and "g_loss" in one[1]
    for r1, r2 in zip(one, two):
        for key in r1:
            # the total grad norm adds the GAN gradient times the adaptive weight (~1e3 here): the float noise of
            # the two reduction orders in that gradient reaches ~1e-3 of the norm on some clips; the adaptive weight
            # itself (d_weight) is a ratio of two such gradient norms (measured: 7e-4 apart in 1 run of 7), and the
            # total loss carries it (d_weight * g_loss; measured 3e-4 apart in another run)
            rel = 5e-3 if key in ("grad_norm", "d_weight", "loss") else 1e-4
            assert r2[key] == pytest.approx(r1[key], rel=rel, abs=1e-6), key
    a, b = _state(tmp_path / "one"), _state(tmp_path / "two")
    for part in ("vae", "disc"):
        # attention key biases have an exactly-zero gradient (softmax ignores a per-query shift): Adam turns the
        # float noise of the two reduction orders into +-lr steps, so they are left out
        for key in (k for k in a[part] if not k.endswith(".k.conv.bias")):
            assert torch.allclose(a[part][key], b[part][key], rtol=1e-4, atol=1e-4), (part, key)
