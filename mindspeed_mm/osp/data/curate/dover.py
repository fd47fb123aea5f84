"""The paper's quality stage: DOVER's technical score, from a local DOVER installation.

DOVER (github.com/VQAssessment/DOVER, S-Lab License 1.0: non-commercial use) is not bundled. Its own code builds
the network and the views: clone it, `pip install -e .` in the clone (package `dover`), put `DOVER.pth` in its
`pretrained_weights/`, and pass the clone as `--dover-dir` (or OSP_DOVER_DIR). Per clip, as DOVER's
`evaluate_one_video.py` does for a file: the frame indices of each view's sampler (technical: 3 windows of 32
frames at interval 2; aesthetic: one window), the views (`get_single_view`: 32x32 fragments on a 7x7 grid /
a 224x224 resize), normalised by the ImageNet mean and std in 0-255, then the network. The score is the technical
output normalised as DOVER's `fuse_results` does, (t - 0.1107) / 0.07355: about 0 on average, the paper keeps > 0.
DOVER's constructor builds its aesthetic ConvNeXt with `pretrained=True`: on an offline machine those ImageNet
weights must already be in torch's hub cache (DOVER.pth then overwrites them).
"""
from __future__ import annotations

from pathlib import Path

CONFIG = "dover.yml"
WEIGHTS = Path("pretrained_weights") / "DOVER.pth"
VIEWS = "val-l1080p"        # the data entry of dover.yml whose sample_types evaluate_one_video.py uses
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
TECHNICAL_MEAN, TECHNICAL_STD = 0.1107, 0.07355


class DoverTechnical:
    """`DoverTechnical(dover_dir)(clip) -> float`: the normalised technical score of a ClipView (frames cropped)."""

    def __init__(self, dover_dir: str, device: str = "cpu"):
        import torch
        import yaml

        root = Path(dover_dir)
        missing = [str(root / name) for name in (CONFIG, WEIGHTS) if not (root / name).is_file()]
        if missing:
            raise ValueError(f"--dover-dir {root}: missing {', '.join(missing)}; give a clone of "
                             "github.com/VQAssessment/DOVER with DOVER.pth in its pretrained_weights/")
        try:
            from dover.datasets import UnifiedFrameSampler, get_single_view
            from dover.models import DOVER
        except ImportError as e:
            raise ValueError(f"--dover-dir needs DOVER's own code, which is not importable ({e}); run "
                             f"`pip install -e {root}` (its requirements: decord, ...) in this environment") from e
        opt = yaml.safe_load((root / CONFIG).read_text())
        self.sample_types = opt["data"][VIEWS]["args"]["sample_types"]
        if "technical" not in self.sample_types:
            raise ValueError(f"{root / CONFIG}: data.{VIEWS}.args.sample_types has no 'technical' view "
                             f"({sorted(self.sample_types)}): not DOVER's dover.yml")
        self.samplers = {kind: (UnifiedFrameSampler(o["clip_len"] // o["t_frag"], o["t_frag"], o["frame_interval"],
                                                    o["num_clips"]) if "t_frag" in o else
                                UnifiedFrameSampler(o["clip_len"], o["num_clips"], o["frame_interval"]))
                         for kind, o in self.sample_types.items()}
        self.single_view = get_single_view
        self.device = torch.device(device)
        self.model = DOVER(**opt["model"]["args"]).eval().to(self.device)
        self.model.load_state_dict(torch.load(root / WEIGHTS, map_location="cpu", weights_only=True))
        self.mean = torch.tensor(MEAN).view(3, 1, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1, 1)

    def views(self, clip) -> dict:
        """{kind: (num_clips, 3, T, H, W)} for every view of dover.yml, from the clip's (cropped) frames."""
        import torch

        out = {}
        for kind, o in self.sample_types.items():
            indices = self.samplers[kind](clip.num_frames)
            video = torch.from_numpy(clip.frames(indices)).permute(3, 0, 1, 2)        # (3, T, H, W) uint8
            view = (self.single_view(video, kind, **o).float() - self.mean) / self.std
            clips = o.get("num_clips", 1)
            out[kind] = view.reshape(3, clips, -1, *view.shape[2:]).transpose(0, 1).to(self.device)
        return out

    def __call__(self, clip) -> float:
        import torch

        views = self.views(clip)
        with torch.no_grad():
            scores = self.model(views)            # one per view, in the views' order
        technical = scores[list(views).index("technical")]
        return (float(technical.mean()) - TECHNICAL_MEAN) / TECHNICAL_STD
