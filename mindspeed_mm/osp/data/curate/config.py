"""Curation settings, defaults from the Open-Sora Plan v1.3 report where it gives them (marked "paper")."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Optional

STAGES = ("slice", "cuts", "motion", "ocr", "aesthetic", "quality")
CUT_DETECTORS = ("content", "lpips", "content+lpips")
MOTION_METRICS = ("flow", "lpips")
CAPTION_MODES = ("sidecar", "none")      # or "module:function"
OCR_CENTRAL = ("drop", "keep")


@dataclass
class CurateConfig:
    stages: tuple = STAGES
    # slice
    max_slice_seconds: float = 16.0        # paper: 16 s slices
    # cuts
    cut_detector: str = "content"          # PySceneDetect ContentDetector; "lpips" adds/uses the LPIPS z-score rule
    content_threshold: float = 27.0        # ContentDetector's default
    lpips_z: float = 3.0                   # robust z-score (median/MAD) of consecutive-frame LPIPS above which a cut is
    lpips_min: float = 0.1                 # ... and LPIPS itself at least this
    min_frames: int = 32                   # paper: clips of 32-512 frames
    max_frames: int = 512
    # motion
    motion_metric: str = "flow"            # "flow": Farneback; "lpips": mean consecutive LPIPS (paper)
    motion_low: Optional[float] = None     # None: 0.1 (flow, % of the frame's long side per step) / 0.001 (lpips, paper)
    motion_high: Optional[float] = None    # None: 20 (flow) / 0.3 (lpips, paper)
    max_flow_residual: float = 0.08        # flow only: mean |frame - motion-compensated next frame| / 255 above -> chaotic
    motion_fps: float = 8.0                # frames per second the motion score looks at
    analysis_size: int = 128               # long side of the frames cuts and motion look at
    # ocr
    ocr_fps: float = 1.0                   # paper: EasyOCR at 1 fps
    ocr_edge: float = 0.2                  # paper: crop at most 20 % per edge
    ocr_central: str = "drop"              # text outside the edge bands: drop the clip, or keep it uncropped
    ocr_margin: int = 2                    # pixels cropped beyond a text box
    ocr_detector: Optional[str] = None     # "module:function" returning boxes; None: EasyOCR when installed
    ocr_weights: Optional[str] = None      # EasyOCR model folder (craft_mlt_25k.pth); env OSP_EASYOCR_DIR
    # aesthetic / quality
    aesthetic_min: float = 4.75            # paper
    aesthetic_frames: int = 5              # paper
    aesthetic_head: Optional[str] = None   # LAION aesthetic MLP (sac+logos+ava1-l14-linearMSE.pth); env OSP_AESTHETIC_HEAD
    aesthetic_clip: Optional[str] = None   # local CLIP ViT-L/14 folder (transformers format); env OSP_AESTHETIC_CLIP
    aesthetic_scorer: Optional[str] = None  # "module:function" instead of the LAION predictor
    quality_min: float = 0.0               # paper: DOVER technical score > 0
    quality_scorer: Optional[str] = None   # "module:function" scoring a clip instead; env OSP_QUALITY_SCORER
    dover_dir: Optional[str] = None        # a DOVER clone (dover.yml, pretrained_weights/DOVER.pth); env OSP_DOVER_DIR
    # LPIPS weights (cuts/motion with lpips); env OSP_LPIPS_VGG / OSP_LPIPS_LIN
    lpips_vgg: Optional[str] = None
    lpips_lin: Optional[str] = None
    # captions
    captions: str = "sidecar"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.stages = tuple(self.stages)
        env = {"ocr_weights": "OSP_EASYOCR_DIR", "aesthetic_head": "OSP_AESTHETIC_HEAD",
               "aesthetic_clip": "OSP_AESTHETIC_CLIP", "quality_scorer": "OSP_QUALITY_SCORER",
               "dover_dir": "OSP_DOVER_DIR",
               "lpips_vgg": "OSP_LPIPS_VGG", "lpips_lin": "OSP_LPIPS_LIN"}
        for key, var in env.items():
            if getattr(self, key) is None and os.environ.get(var):
                setattr(self, key, os.environ[var])
        flow = self.motion_metric == "flow"
        if self.motion_low is None:
            self.motion_low = 0.1 if flow else 0.001
        if self.motion_high is None:
            self.motion_high = 20.0 if flow else 0.3

    def problems(self) -> list[str]:
        out = []
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            out.append(f"unknown stage(s) {', '.join(unknown)}: choose from {','.join(STAGES)}")
        if self.max_slice_seconds <= 0:
            out.append(f"--max-slice-seconds must be > 0, got {self.max_slice_seconds}")
        if self.cut_detector not in CUT_DETECTORS:
            out.append(f"--cut-detector must be one of {', '.join(CUT_DETECTORS)}, got {self.cut_detector!r}")
        if self.motion_metric not in MOTION_METRICS:
            out.append(f"--motion-metric must be one of {', '.join(MOTION_METRICS)}, got {self.motion_metric!r}")
        if not 1 <= self.min_frames <= self.max_frames:
            out.append(f"need 1 <= --min-frames <= --max-frames, got {self.min_frames}, {self.max_frames}")
        if self.motion_low > self.motion_high:
            out.append(f"--motion-low {self.motion_low} is above --motion-high {self.motion_high}")
        if not 0 < self.ocr_edge < 0.5:
            out.append(f"--ocr-edge must be in (0, 0.5), got {self.ocr_edge}")
        if self.ocr_central not in OCR_CENTRAL:
            out.append(f"--ocr-central must be one of {', '.join(OCR_CENTRAL)}, got {self.ocr_central!r}")
        if self.captions not in CAPTION_MODES and ":" not in self.captions:
            out.append(f"--captions must be sidecar, none or module:function, got {self.captions!r}")
        for name in ("ocr_fps", "motion_fps", "aesthetic_frames", "analysis_size"):
            if getattr(self, name) <= 0:
                out.append(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        return out

    def uses_lpips(self) -> bool:
        return ("cuts" in self.stages and "lpips" in self.cut_detector) or \
            ("motion" in self.stages and self.motion_metric == "lpips")

    def fingerprint(self) -> dict:
        """The settings that change results (a rerun into the same output must match them to resume)."""
        return {k: v for k, v in asdict(self).items() if k not in ("extra",)}
