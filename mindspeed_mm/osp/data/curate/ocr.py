"""Text (subtitles, captions, logos) near the frame edges is cropped away.

A detector maps one uint8 (H, W, 3) RGB frame to text boxes (x0, y0, x1, y1) in pixels. Boxes that lie inside an
edge band (the outer `edge` fraction of the height or width) move that edge inward past the box (plus `margin`);
a corner box moves whichever edge loses fewer pixels. The crop never takes more than `edge` of any side. Boxes
outside every band are central text: the clip is dropped (`central="drop"`) or kept uncropped there ("keep").
The crop is stored as the annotation's `crop` [sx, ex, sy, ey] (the x range, then the y range, in pixels)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

Box = tuple  # (x0, y0, x1, y1)
Detector = Callable[[np.ndarray], Sequence[Box]]


@dataclass
class CropResult:
    crop: Optional[list]      # [sx, ex, sy, ey] or None when nothing is cropped
    central: int              # boxes outside the edge bands
    boxes: int                # boxes seen


def crop_from_boxes(boxes: Iterable[Box], height: int, width: int, edge: float = 0.2, margin: int = 2) -> CropResult:
    top, bottom, left, right = 0, height, 0, width
    max_y, max_x = int(height * edge), int(width * edge)
    central = seen = 0
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box)
        seen += 1
        costs = []   # (pixels lost, edge, new position)
        if y1 + margin <= max_y:
            costs.append((min(y1 + margin, max_y) * width, "top", int(np.ceil(y1 + margin))))
        if height - (y0 - margin) <= max_y:
            costs.append(((height - (y0 - margin)) * width, "bottom", int(np.floor(y0 - margin))))
        if x1 + margin <= max_x:
            costs.append((min(x1 + margin, max_x) * height, "left", int(np.ceil(x1 + margin))))
        if width - (x0 - margin) <= max_x:
            costs.append(((width - (x0 - margin)) * height, "right", int(np.floor(x0 - margin))))
        if not costs:
            central += 1
            continue
        _, side, pos = min(costs)
        if side == "top":
            top = max(top, min(pos, max_y))
        elif side == "bottom":
            bottom = min(bottom, max(pos, height - max_y))
        elif side == "left":
            left = max(left, min(pos, max_x))
        else:
            right = min(right, max(pos, width - max_x))
    if (top, bottom, left, right) == (0, height, 0, width):
        return CropResult(None, central, seen)
    # even sizes keep the crop encodable (yuv420p) if someone re-encodes it
    bottom -= (bottom - top) % 2
    right -= (right - left) % 2
    return CropResult([left, right, top, bottom], central, seen)


def crop_for_frames(detector: Detector, frames: Sequence[np.ndarray], edge: float, margin: int) -> CropResult:
    """One crop over every sampled frame of a clip (the union of their text boxes)."""
    boxes = [b for f in frames for b in detector(f)]
    h, w = frames[0].shape[:2]
    return crop_from_boxes(boxes, h, w, edge, margin)


def easyocr_weights_dir(folder: Optional[str]) -> Optional[str]:
    """The folder holding EasyOCR's CRAFT detector weights (craft_mlt_25k.pth), or None."""
    import os
    candidates = [folder] if folder else [os.path.expanduser("~/.EasyOCR/model")]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "craft_mlt_25k.pth")):
            return c
    return None


def easyocr_status(folder: Optional[str]) -> Optional[str]:
    """None when EasyOCR can run offline here, else why not."""
    import importlib.util
    if importlib.util.find_spec("easyocr") is None:
        return "easyocr is not installed (pip install easyocr; it needs a matching torch)"
    if easyocr_weights_dir(folder) is None:
        where = folder or "~/.EasyOCR/model"
        return f"no EasyOCR detector weights (craft_mlt_25k.pth) in {where}; set --ocr-weights or OSP_EASYOCR_DIR"
    return None


class EasyOCRDetector:
    """EasyOCR's CRAFT text detector, offline (no downloads)."""

    def __init__(self, folder: Optional[str] = None):
        import easyocr
        self.reader = easyocr.Reader(["en"], gpu=False, model_storage_directory=easyocr_weights_dir(folder),
                                     download_enabled=False, recognizer=False, verbose=False)

    def __call__(self, frame: np.ndarray) -> list[Box]:
        horizontal, free = self.reader.detect(frame)
        boxes = [(b[0], b[2], b[1], b[3]) for b in (horizontal[0] if horizontal else [])]
        for poly in (free[0] if free else []):
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            boxes.append((min(xs), min(ys), max(xs), max(ys)))
        return boxes
