"""`osp data curate` with its model-based rules, end to end on generated clips, with stand-in weights that the tests
write in the file formats users give (no weights can be downloaded here):

- LPIPS: torchvision's vgg16-397923af.pth (`features.N.weight/bias`) and the lpips package's weights/v0.1/vgg.pth
  (`linK.model.1.weight`), random but seeded, for the LPIPS cut rule and the LPIPS motion metric;
- the LAION aesthetic predictor: a tiny random CLIP saved with transformers' save_pretrained (a whole CLIP like
  openai/clip-vit-large-patch14, or a vision tower with projection) and an MLP head with the official key names;
- DOVER, which is never bundled: a quality hook (`module:function`) that receives a ClipView.

Random weights give other magnitudes than trained ones, so every threshold below is passed explicitly (chosen from the
stand-in's measured values, with margins): these tests verify plumbing, file formats and rules, not the thresholds
that suit trained weights. Clips are 32x32 at 8 fps so that VGG16 costs little."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import curate_hooks
from mindspeed_mm.osp.data.curate import CurateConfig, curate
from mindspeed_mm.osp.data.curate.scorers import ClipView
from mindspeed_mm.osp.data.video_io import read_video
from test_data_curate import FPS, burn_text, moving, noise, static, with_cuts, write

S = 32    # clip side


def half(frames):
    """64x64 test frames -> 32x32 (2x2 means)."""
    t, h, w, c = frames.shape
    return frames.reshape(t, h // 2, 2, w // 2, 2, c).mean((2, 4)).round().astype(np.uint8)


def run(raw, out, stages, **kw):
    cfg = CurateConfig(stages=tuple(stages.split(",")), **{"min_frames": 8, **kw})
    return curate(raw, out, cfg, log=lambda m: None)


def anno(out):
    return json.loads((Path(out) / "anno.json").read_text())


def decoded(out, item):
    """The item's frames as the curated clip file holds them: uint8 (n, H, W, 3)."""
    s, e = item["cut"]
    return read_video(Path(out) / item["path"], backend="av")[0].numpy()[s:e]


# ---------------------------------------------------------------------------------------------------- LPIPS weights
# torchvision VGG16 `features`: conv (index, in, out) between ReLUs and max-pools; LPIPS taps relu1_2 .. relu5_3
VGG16_CONVS = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
               (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512))
LPIPS_BLOCKS = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
LPIPS_CHANNELS = (64, 128, 256, 512, 512)


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """(vgg16-397923af.pth, vgg.pth) with the official names and shapes, seeded random values: VGG convs drawn like
    torchvision initialises them (Kaiming normal, fan_out), the classifier's biases (its weights, 120M numbers, are
    left out: the loader reads `features.*` only), LPIPS linear layers uniform in [0, 1) (trained ones are >= 0)."""
    folder = tmp_path_factory.mktemp("lpips")
    g = torch.Generator().manual_seed(0)
    vgg = {}
    for index, cin, cout in VGG16_CONVS:
        vgg[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (cout * 9)) ** 0.5
        vgg[f"features.{index}.bias"] = torch.randn(cout, generator=g) * 0.01
    vgg.update({"classifier.0.bias": torch.zeros(4096), "classifier.3.bias": torch.zeros(4096),
                "classifier.6.bias": torch.zeros(1000)})
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(LPIPS_CHANNELS)}
    torch.save(vgg, folder / "vgg16-397923af.pth")
    torch.save(lin, folder / "vgg.pth")
    return str(folder / "vgg16-397923af.pth"), str(folder / "vgg.pth")


def reference_lpips(vgg_path, lin_path, frames):
    """LPIPS v0.1 of consecutive frames, written from the lpips package's definition straight on the two files
    (independent of mindspeed_mm.osp.vae.losses.LPIPS): scaling layer, VGG16 blocks, unit-normalised features per
    tap, squared difference, 1x1 `linK`, spatial mean, summed over the 5 taps."""
    vgg = torch.load(vgg_path, weights_only=True)
    lin = torch.load(lin_path, weights_only=True)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    h, total = (x - shift) / scale, 0.0
    for k, block in enumerate(LPIPS_BLOCKS):
        if k:
            h = F.max_pool2d(h, 2)
        for i in block:
            h = F.relu(F.conv2d(h, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"], padding=1))
        f = h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + F.conv2d((f[:-1] - f[1:]).pow(2), lin[f"lin{k}.model.1.weight"]).mean((1, 2, 3))
    return total.numpy()


def test_lpips_distances_match_pairwise_lpips():
    """The cut rule's consecutive-frame distances (each frame's features computed once, in overlapping batches) are
    LPIPS(frame i, frame i+1), for a frame count that leaves a partial last batch."""
    from mindspeed_mm.osp.data.curate.cuts import lpips_distances
    from mindspeed_mm.osp.vae.losses import LPIPS

    torch.manual_seed(0)
    model = LPIPS()
    for lin in model.lins:
        lin.weight.data.abs_()
    frames = np.random.default_rng(0).integers(0, 256, (20, 16, 24, 3)).astype(np.uint8)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        want = model(x[:-1], x[1:]).numpy()
    np.testing.assert_allclose(lpips_distances(model, frames, batch=6), want, rtol=1e-5, atol=1e-7)
    assert lpips_distances(model, frames[:1]).shape == (0,) and lpips_distances(model, frames[:2]).shape == (1,)


# Measured with these stand-in weights on 32x32 clips: consecutive frames within a shot 0.02-0.12, across a planted
# cut 1.0-1.7; mean over a clip: still ~5e-5, moving square ~0.07, per-frame noise ~0.7. (Trained LPIPS: other values.)
CUT_RULE = dict(lpips_z=3.0, lpips_min=0.5)
MOTION_RANGE = dict(motion_low=0.005, motion_high=0.35)


@pytest.mark.parametrize("detector", ["lpips", "content+lpips"])
def test_lpips_cut_rule_splits_at_planted_cuts(tmp_path, lpips_files, detector):
    raw = tmp_path / "raw"
    write(raw / "cuts.mp4", half(with_cuts([12, 10, 12, 5])))
    write(raw / "one_shot.mp4", half(moving(20, seed=3)))
    # content+lpips: ContentDetector's score is a mean of 0-255 channel differences, so threshold 300 never fires
    # and every cut found must come from the LPIPS rule
    extra = {"content_threshold": 300.0} if detector == "content+lpips" else {}
    opts = dict(cut_detector=detector, lpips_vgg=lpips_files[0], lpips_lin=lpips_files[1], **extra)
    result = run(raw, tmp_path / "out", "cuts", **opts, **CUT_RULE)
    cuts = sorted((i["source"], tuple(i["cut"])) for i in anno(tmp_path / "out"))
    assert cuts == [("cuts.mp4", (0, 12)), ("cuts.mp4", (12, 22)), ("cuts.mp4", (22, 34)), ("one_shot.mp4", (0, 20))]
    stage = result["report"]["stages"]["cuts"]
    assert stage["dropped"] == {"shorter than 8 frames": 1} and stage["note"] == f"detector {detector}"
    # the same distances as LPIPS v0.1 computed independently on the slice's frames: cuts exactly at the outliers
    d = reference_lpips(*lpips_files, decoded(tmp_path / "out", {"path": "clips/cuts/cuts_s000.mp4", "cut": [0, 39]}))
    assert sorted(np.nonzero(d >= CUT_RULE["lpips_min"])[0] + 1) == [12, 22, 34]
    # negative control: with an unreachable LPIPS floor nothing splits the clip
    run(raw, tmp_path / "none", "cuts", **opts, lpips_z=3.0, lpips_min=1e6)
    assert sorted(tuple(i["cut"]) for i in anno(tmp_path / "none")) == [(0, 20), (0, 39)]


def test_lpips_motion_drops_static_and_noise(tmp_path, lpips_files, monkeypatch):
    raw = tmp_path / "raw"
    write(raw / "moving.mp4", half(moving(16)))
    write(raw / "static.mp4", half(static(16)))
    write(raw / "noise.mp4", noise(16)[:, :S, :S])
    monkeypatch.setenv("OSP_LPIPS_VGG", lpips_files[0])       # the weights through the documented variables
    monkeypatch.setenv("OSP_LPIPS_LIN", lpips_files[1])
    result = run(raw, tmp_path / "out", "motion", motion_metric="lpips", **MOTION_RANGE)
    items = anno(tmp_path / "out")
    assert [i["source"] for i in items] == ["moving.mp4"] and "flow_residual" not in items[0]
    stage = result["report"]["stages"]["motion"]
    assert stage["dropped"] == {"static (motion < 0.005)": 1, "too fast (motion > 0.35)": 1}
    assert stage["note"] == "metric lpips in [0.005, 0.35]"
    # the score is the mean LPIPS of consecutive frames of the kept clip (8 fps clip, motion_fps 8: every frame)
    want = reference_lpips(*lpips_files, decoded(tmp_path / "out", items[0])).mean()
    assert items[0]["motion_score"] == pytest.approx(want, rel=1e-3, abs=1e-5)


def test_lpips_rules_name_missing_or_wrong_weight_files(tmp_path, lpips_files):
    raw = tmp_path / "raw"
    write(raw / "a.mp4", half(moving(16)))
    vgg, lin = lpips_files
    with pytest.raises(ValueError, match=r"missing: --lpips-lin \(.*nope\.pth\)\..*no silent fallback") as e:
        run(raw, tmp_path / "out", "cuts", cut_detector="lpips", lpips_vgg=vgg, lpips_lin=str(tmp_path / "nope.pth"))
    assert "--lpips-vgg" not in str(e.value).split("missing:")[1].split(".")[0]
    with pytest.raises(ValueError, match=r"--lpips-vgg \(unset\), --lpips-lin \(unset\)"):
        run(raw, tmp_path / "out", "motion", motion_metric="lpips")
    # the files swapped (the VGG file given as the linear layers): one error before any input is processed
    with pytest.raises(ValueError, match=r"do not fit VGG16/LPIPS v0.1: missing \['lins.0.weight'"):
        run(raw, tmp_path / "out", "cuts", cut_detector="lpips", lpips_vgg=vgg, lpips_lin=vgg)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- LAION
PROJ = 16
HEAD = ((PROJ, 1024), (1024, 128), (128, 64), (64, 16), (16, 1))       # the official MLP, input = projection size
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@pytest.fixture(scope="module")
def laion_files(tmp_path_factory):
    """The head (sac+logos+ava1-l14-linearMSE.pth naming) and two CLIP folders: `clip` a whole CLIP saved like
    openai/clip-vit-large-patch14 (CLIPModel, with its legacy preprocessor_config.json), `vision` a vision tower
    with projection (CLIPVisionModelWithProjection and CLIPImageProcessor save_pretrained)."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    folder = tmp_path_factory.mktemp("laion")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=99,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJ)).save_pretrained(folder / "clip")
    (folder / "clip" / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": S, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": MEAN, "image_std": STD, "resample": 3,
        "size": S}))
    CLIPVisionModelWithProjection(CLIPVisionConfig(**vision, projection_dim=PROJ)).save_pretrained(folder / "vision")
    CLIPImageProcessor(size={"shortest_edge": S}, crop_size={"height": S, "width": S}, image_mean=MEAN,
                       image_std=STD).save_pretrained(folder / "vision")
    g = torch.Generator().manual_seed(1)
    head = {}
    for k, (fin, fout) in zip((0, 2, 4, 6, 7), HEAD):
        head[f"layers.{k}.weight"] = torch.randn(fout, fin, generator=g) * (3.0 / fin) ** 0.5
        head[f"layers.{k}.bias"] = torch.randn(fout, generator=g) * 0.1
    head["layers.7.bias"] += 5.0                                # scores of a few units, as on the 1-10 scale
    torch.save(head, folder / "sac+logos+ava1-l14-linearMSE.pth")
    return folder


def reference_aesthetic(laion, clip_format, frames):
    """The LAION predictor computed directly: CLIP preprocessing by hand (bicubic resize of the short side, centre
    crop, mean/std), the CLIP image embedding (CLIPModel.get_image_features for a whole CLIP), L2-normalised, then the
    MLP's linear layers from the head file; mean over the frames."""
    from PIL import Image
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    pixels = []
    for f in frames:
        img = Image.fromarray(f)
        scale = S / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
        left, top = (img.width - S) // 2, (img.height - S) // 2
        a = np.asarray(img.crop((left, top, left + S, top + S)), dtype=np.float32) / 255
        pixels.append((a - np.float32(MEAN)) / np.float32(STD))
    x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
    with torch.no_grad():
        if clip_format == "clip":
            emb = CLIPModel.from_pretrained(laion / "clip").eval().get_image_features(pixel_values=x)
            emb = emb if torch.is_tensor(emb) else emb.pooler_output
        else:
            emb = CLIPVisionModelWithProjection.from_pretrained(laion / "vision").eval()(pixel_values=x).image_embeds
        h = emb / emb.norm(dim=-1, keepdim=True)
        head = torch.load(laion / "sac+logos+ava1-l14-linearMSE.pth", weights_only=True)
        for k in (0, 2, 4, 6, 7):
            h = F.linear(h, head[f"layers.{k}.weight"], head[f"layers.{k}.bias"])
    return float(h.mean())


def five_frames(frames):
    """The 5 frames the stage scores: evenly spaced, first and last included."""
    return frames[np.linspace(0, len(frames) - 1, 5).round().astype(int)]


@pytest.mark.parametrize("clip_format", ["clip", "vision"])
def test_laion_aesthetic_scores_and_drops(tmp_path, laion_files, clip_format):
    raw = tmp_path / "raw"
    clips = {"a.mp4": half(moving(12, seed=1)), "b.mp4": noise(12, seed=2)[:, :S, :S], "c.mp4": half(static(12, 4))}
    for name, frames in clips.items():
        write(raw / name, frames)
    # threshold between the lowest two scores, computed directly on the encoded clips' frames
    direct = {name: reference_aesthetic(laion_files, clip_format, five_frames(read_video(raw / name, backend="av")[0]
                                                                               .numpy())) for name in clips}
    low, mid, high = sorted(direct, key=direct.get)
    assert direct[mid] - direct[low] > 0.02 and direct[high] - direct[low] > 0.02   # the stand-in separates them
    threshold = round((direct[low] + direct[mid]) / 2, 4)
    head = str(laion_files / "sac+logos+ava1-l14-linearMSE.pth")
    result = run(raw, tmp_path / "out", "aesthetic", aesthetic_head=head, aesthetic_clip=str(laion_files / clip_format),
                 aesthetic_min=threshold)
    items = {i["source"]: i for i in anno(tmp_path / "out")}
    assert set(items) == {mid, high}
    for name, item in items.items():
        assert item["aesthetic"] == pytest.approx(direct[name], abs=2e-3)
        assert item["aesthetic"] == pytest.approx(reference_aesthetic(laion_files, clip_format, five_frames(
            decoded(tmp_path / "out", item))), abs=2e-4)                  # the curated file holds the scored frames
    stage = result["report"]["stages"]["aesthetic"]
    assert stage["dropped"] == {f"aesthetic < {threshold:g}": 1} and stage["note"] == "LAION aesthetic predictor"


def test_laion_aesthetic_missing_or_mismatched_files(tmp_path, laion_files):
    raw = tmp_path / "raw"
    write(raw / "a.mp4", half(moving(12)))
    head = str(laion_files / "sac+logos+ava1-l14-linearMSE.pth")
    # a missing CLIP folder: the stage is skipped, the report says which flag, nothing dropped
    result = run(raw, tmp_path / "out", "aesthetic", aesthetic_head=head, aesthetic_clip=str(tmp_path / "no_clip"))
    stage = result["report"]["stages"]["aesthetic"]
    assert stage["note"].startswith("skipped: no local LAION aesthetic predictor weights: --aesthetic-clip (")
    assert "--aesthetic-head" not in stage["note"] and stage["in"] == 0 and len(anno(tmp_path / "out")) == 1
    # a head for 768-dim embeddings (ViT-L/14's) next to a 16-dim CLIP: one error naming both, before any input
    wide = torch.load(head, weights_only=True)
    wide["layers.0.weight"] = torch.zeros(1024, 768)
    torch.save(wide, tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"takes 768-dim CLIP embeddings but the CLIP in .* gives 16-dim"):
        run(raw, tmp_path / "bad", "aesthetic", aesthetic_head=str(tmp_path / "wide.pth"),
            aesthetic_clip=str(laion_files / "clip"))
    # a head that is not the LAION MLP
    torch.save({"layers.0.weight": torch.zeros(1024, 16)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"aesthetic head: layers.0.weight/bias missing"):
        run(raw, tmp_path / "bad", "aesthetic", aesthetic_head=str(tmp_path / "other.pth"),
            aesthetic_clip=str(laion_files / "clip"))
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------------------------- DOVER hook
def test_quality_hook_gets_clip_views_with_crops(tmp_path):
    raw = tmp_path / "raw"
    write(raw / "smooth.mp4", moving(12, seed=1))
    write(raw / "noise.mp4", noise(12, seed=2))
    write(raw / "sub.mp4", burn_text(moving(12, seed=3)))
    curate_hooks.CALLS.clear()
    result = run(raw, tmp_path / "out", "ocr,quality", ocr_detector="curate_hooks:white_text_boxes",
                 quality_scorer="curate_hooks:technical_stub")
    items = {i["source"]: i for i in anno(tmp_path / "out")}
    assert set(items) == {"smooth.mp4", "sub.mp4"}
    stage = result["report"]["stages"]["quality"]
    assert stage["dropped"] == {"quality <= 0": 1} and stage["note"] == "hook curate_hooks:technical_stub"
    calls = {c[5]: c for c in curate_hooks.CALLS}
    assert set(calls) == {"smooth.mp4", "noise.mp4", "sub.mp4"}
    out = tmp_path / "out"
    for name, item in items.items():
        path, start, end, fps, crop, source, shape = calls[name]
        assert (Path(path), start, end, fps) == (out / item["path"], *item["cut"], FPS) and source == name
        view = ClipView(path, start, end, fps, item.get("crop"), name)
        assert item["quality_score"] == pytest.approx(curate_hooks.technical_stub(view), abs=1e-4)
    # the subtitle clip reached the hook cropped: 32 frames of the crop, and a score that differs from the uncropped
    crop = items["sub.mp4"]["crop"]
    assert calls["sub.mp4"][4] == crop and calls["sub.mp4"][6] == (32, crop[3] - crop[2], crop[1] - crop[0], 3)
    uncropped = curate_hooks.technical_stub(ClipView(calls["sub.mp4"][0], 0, 12, FPS, None, "sub.mp4"))
    assert abs(uncropped - items["sub.mp4"]["quality_score"]) > 0.01
    # a hook that does not import stops the run before any input
    with pytest.raises(ValueError, match="cannot load 'curate_hooks:no_such_scorer'"):
        run(raw, tmp_path / "bad", "quality", quality_scorer="curate_hooks:no_such_scorer")
    assert not (tmp_path / "bad").exists()



# A stand-in for DOVER's own package (`pip install -e` of its clone provides `dover`): the sampler and view functions
# with DOVER's signatures, and a "network" that records the views it gets and returns one score per view, in the
# views' order like DOVER's `forward`. Its one weight, `scale`, comes from DOVER.pth, so a score proves the load.
FAKE_DOVER = {
    "__init__.py": "",
    "datasets.py": '''
import torch.nn.functional as F


class UnifiedFrameSampler:
    def __init__(self, fsize_t, fragments_t, frame_interval=1, num_clips=1):
        self.count, self.interval = fsize_t * fragments_t * num_clips, frame_interval

    def __call__(self, total_frames):
        return [(self.interval * i) % total_frames for i in range(self.count)]


def get_single_view(video, sample_type, **opt):
    size = ((opt["fsize_h"] * opt["fragments_h"], opt["fsize_w"] * opt["fragments_w"]) if sample_type == "technical"
            else (opt["size_h"], opt["size_w"]))
    return F.interpolate(video.float(), size=size, mode="area")      # (3, T, H, W)
''',
    "models.py": '''
import torch

CALLS = []


class DOVER(torch.nn.Module):
    def __init__(self, backbone_preserve_keys="technical,aesthetic", **kwargs):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, vclips):
        CALLS.append({k: tuple(v.shape) for k, v in vclips.items()})
        return [self.scale * v.mean() * (1 if k == "technical" else -100) for k, v in vclips.items()]
''',
}
DOVER_YML = """   # the aesthetic view first: the score must be picked by name
data:
  val-l1080p:
    args:
      sample_types:
        aesthetic: {size_h: 8, size_w: 8, clip_len: 32, frame_interval: 2, t_frag: 32, num_clips: 1}
        technical: {fragments_h: 2, fragments_w: 2, fsize_h: 4, fsize_w: 4, aligned: 4, clip_len: 32,
                    frame_interval: 2, num_clips: 3}
model:
  args: {backbone_preserve_keys: "technical,aesthetic"}
"""


@pytest.fixture
def fake_dover(tmp_path, monkeypatch):
    code = tmp_path / "dover_code"
    for name, text in FAKE_DOVER.items():
        (code / "dover").mkdir(parents=True, exist_ok=True)
        (code / "dover" / name).write_text(text)
    clone = tmp_path / "DOVER"
    (clone / "pretrained_weights").mkdir(parents=True)
    (clone / "dover.yml").write_text(DOVER_YML)
    torch.save({"scale": torch.tensor(2.0)}, clone / "pretrained_weights" / "DOVER.pth")
    for name in ("dover", "dover.models", "dover.datasets"):
        monkeypatch.delitem(__import__("sys").modules, name, raising=False)
    monkeypatch.syspath_prepend(str(code))
    return clone


def dover_reference(frames: np.ndarray) -> float:
    """The technical score by hand: DOVER's technical frame indices (32 x 3 at interval 2, wrapping), 8x8 area
    views, ImageNet mean/std in 0-255, mean x the weights' scale (2), normalised as DOVER's fuse_results."""
    idx = [(2 * i) % len(frames) for i in range(96)]
    video = torch.from_numpy(frames[idx]).permute(3, 0, 1, 2).float()
    view = F.interpolate(video, size=(8, 8), mode="area")
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1, 1)
    return (2 * float(((view - mean) / std).mean()) - 0.1107) / 0.07355


def test_dover_dir_scores_the_technical_view_and_drops_below_the_threshold(tmp_path, fake_dover):
    raw = tmp_path / "raw"
    write(raw / "bright.mp4", np.clip(moving(12, seed=1).astype(int) + 60, 0, 255).astype(np.uint8))
    write(raw / "dark.mp4", (moving(12, seed=2) // 3).astype(np.uint8))
    out = tmp_path / "out"
    cfg = dict(dover_dir=str(fake_dover))
    probe = run(raw, tmp_path / "probe", "quality", quality_min=-1e9, **cfg)
    assert probe["report"]["stages"]["quality"]["note"] == f"DOVER technical score ({fake_dover})"
    scores = {i["source"]: i["quality_score"] for i in anno(tmp_path / "probe")}
    for name, item in ((i["source"], i) for i in anno(tmp_path / "probe")):
        assert item["quality_score"] == pytest.approx(dover_reference(decoded(tmp_path / "probe", item)), abs=2e-3)
    assert scores["bright.mp4"] - scores["dark.mp4"] > 1.0
    from dover.models import CALLS
    assert CALLS[-1] == {"aesthetic": (1, 3, 32, 8, 8), "technical": (3, 3, 32, 8, 8)}
    threshold = (scores["bright.mp4"] + scores["dark.mp4"]) / 2
    result = run(raw, out, "quality", quality_min=threshold, **cfg)
    assert [i["source"] for i in anno(out)] == ["bright.mp4"]
    assert result["report"]["stages"]["quality"]["dropped"] == {f"quality <= {threshold:g}": 1}


def test_dover_dir_problems_are_one_error_before_any_output(tmp_path, fake_dover, monkeypatch):
    raw = tmp_path / "raw"
    write(raw / "a.mp4", moving(12, seed=1))
    (fake_dover / "pretrained_weights" / "DOVER.pth").rename(tmp_path / "DOVER.pth")
    with pytest.raises(ValueError, match=r"missing .*DOVER\.pth"):
        run(raw, tmp_path / "o1", "quality", dover_dir=str(fake_dover))
    (tmp_path / "DOVER.pth").rename(fake_dover / "pretrained_weights" / "DOVER.pth")
    monkeypatch.setitem(__import__("sys").modules, "dover", None)     # DOVER's code not installed
    with pytest.raises(ValueError, match="pip install -e"):
        run(raw, tmp_path / "o2", "quality", dover_dir=str(fake_dover))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
