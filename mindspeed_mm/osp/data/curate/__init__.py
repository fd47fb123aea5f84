"""`osp data curate`: raw videos in, captioned training clips and an Open-Sora Plan annotation out.

Stages, in this order (the Open-Sora Plan v1.3 report's filter, rebuilt here; see docs/curation.md):
slice (<= 16 s pieces, stream copy) -> cuts (jump-cut split, 32-512 frames) -> motion (static and chaotic clips
dropped) -> ocr (edge text cropped, <= 20 % per edge) -> aesthetic (>= 4.75) -> quality (DOVER > 0) -> recheck
(motion of the cropped clips) -> caption (sidecar or a hook). Resumable per input video, shardable over nodes.
"""
from mindspeed_mm.osp.data.curate.config import STAGES, CurateConfig
from mindspeed_mm.osp.data.curate.pipeline import curate

__all__ = ["STAGES", "CurateConfig", "curate"]
