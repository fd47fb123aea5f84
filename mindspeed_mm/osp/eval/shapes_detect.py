"""Detect the colour, shape and motion of ONE object on a plain or gradient background, for scoring what a model
trained on the shapes dataset (`mindspeed_mm.osp.data.shapes`) draws for a prompt such as "a red circle moving to the
right". Tolerant of the blur, noise and faded colours of a small generative model:

- background: per frame, a plane per channel fitted to the border pixels (robustly, so an object touching the border
  does not bend it); foreground: pixels far from it (a threshold at half the clip's peak distance, at least
  `MIN_THRESHOLD`); the object: the 8-connected foreground component with the largest solid core in each frame;
- colour: the palette colour which, faded towards the background by some strength in [MIN_STRENGTH, 1], comes
  nearest the median colour of the components' inner pixels;
- shape: analysis by synthesis. Around the component, each pixel's difference from the background, projected on the
  object's colour and divided by its contrast, estimates how much of the pixel the object covers; blur and noise act
  linearly on it. Each shape (triangles in four orientations) is drawn with the same total coverage at the same
  centroid -- both unchanged by blur --, blurred by each of `BLURS`, and compared by relative squared error, for the
  fitted and the full colour strength (heavy blur makes small objects look faint); the errors are averaged over up
  to `SHAPE_FRAMES` frames and the smallest wins;
- motion: the least-squares slope of the component centroid over time; "still" when the fitted displacement over the
  clip is below `STILL_THRESHOLD` of the frame size, else the dominant direction.

Frames without a plausible object (none, or foreground over `MAX_FOREGROUND` of the frame: noise, clutter) are
skipped; with none left every attribute is None.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from mindspeed_mm.osp.data.shapes import COLOURS, SHAPES, shape_coverage

MIN_THRESHOLD = 40.0      # RGB distance from the background below which a pixel is background
MAX_FOREGROUND = 0.3      # a frame with more foreground than this (a fraction of its pixels) shows no single object
MIN_AREA = 12             # pixels: smaller components are not objects (noise specks)
MIN_STRENGTH = 0.3        # the faintest colour matched: this share of the way from the background to a palette colour
STILL_THRESHOLD = 0.1     # displacement over the clip, as a fraction of the frame, below which an object is still
BORDER = 2                # pixels of the frame border used to fit the background
BLURS = (0.0, 0.75, 1.5, 2.25, 3.0)   # Gaussian sigmas (pixels) tried on the shape templates
REACH = 6                 # pixels around the component compared with the templates
SHAPE_FRAMES = 9          # at most this many frames, evenly spaced among those with an object, vote on the shape
# (shape, pointing): side of the box drawn around the shape for an area of 1, and the offset (x, y) of the area's
# centroid from the box centre, as a fraction of the side
TEMPLATES = {("circle", "up"): (np.sqrt(4 / np.pi), 0, 0), ("square", "up"): (1.0, 0, 0),
             ("triangle", "up"): (np.sqrt(2), 0, 1 / 6), ("triangle", "down"): (np.sqrt(2), 0, -1 / 6),
             ("triangle", "left"): (np.sqrt(2), 1 / 6, 0), ("triangle", "right"): (np.sqrt(2), -1 / 6, 0)}


@dataclass(frozen=True)
class Detection:
    """What `detect` saw. Attributes are None when no object was found."""

    colour: Optional[str]
    shape: Optional[str]
    motion: Optional[str]
    colour_distance: float = float("nan")   # RGB distance from the object's colour to the (faded) palette colour
    colour_strength: float = float("nan")   # how far from the background towards the palette colour the object is
    shape_error: float = float("nan")       # squared error of the best template relative to the object's (0 = exact)
    displacement: tuple[float, float] = (float("nan"), float("nan"))   # (dx / W, dy / H) over the clip
    found_fraction: float = 0.0             # share of frames in which an object was found

    @property
    def found(self) -> bool:
        return self.colour is not None


def background_plane(frame: np.ndarray, border: int = BORDER) -> np.ndarray:
    """float (H, W, 3): a plane per channel fitted to the border pixels, refitted without a first fit's outliers."""
    h, w, _ = frame.shape
    y, x = np.mgrid[0:h, 0:w]
    ring = np.ones((h, w), dtype=bool)
    ring[border:h - border, border:w - border] = False
    ring = ring.ravel()
    design = np.stack([np.ones(h * w), x.ravel() / w, y.ravel() / h], axis=1)
    values = frame.reshape(-1, 3).astype(np.float64)
    keep = ring
    for _ in range(2):
        coef = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
        residual = np.linalg.norm(values - design @ coef, axis=1)
        keep = ring & (residual <= max(MIN_THRESHOLD / 2, 3 * np.median(residual[ring])))
        if keep.sum() < 3:
            break
    return (design @ coef).reshape(h, w, 3)


def fit_colour(rgb, background) -> tuple[str, float, float]:
    """The palette colour P and strength a in [MIN_STRENGTH, 1] for which `background` + a (P - `background`) comes
    nearest the RGB triple `rgb`: (P's name, the distance, a)."""
    background = np.asarray(background, np.float64)
    diff = np.asarray(rgb, np.float64) - background
    fits = []
    for name, palette in COLOURS.items():
        towards = np.asarray(palette, np.float64) - background
        strength = float(np.clip(diff @ towards / (towards @ towards), MIN_STRENGTH, 1.0))
        fits.append((float(np.linalg.norm(diff - strength * towards)), name, strength))
    distance, name, strength = min(fits)
    return name, distance, strength


def shape_errors(cover: np.ndarray) -> dict[str, float]:
    """Per shape, the smallest squared error (over orientations and `BLURS`, relative to the sum of `cover`**2)
    between `cover` -- float (h, w), the share of each pixel the object covers, 0 where unknown -- and that shape
    drawn with the same area and centroid. All infinite when `cover` holds less than MIN_AREA pixels of object."""
    area = float(cover.sum())
    if area < MIN_AREA:
        return dict.fromkeys(SHAPES, float("inf"))
    h, w = cover.shape
    y, x = np.mgrid[0:h, 0:w] + 0.5
    cx, cy = float((cover * x).sum()) / area, float((cover * y).sum()) / area
    energy = float((cover ** 2).sum())
    errors = dict.fromkeys(SHAPES, float("inf"))
    for (shape, pointing), (unit, ox, oy) in TEMPLATES.items():
        side = unit * np.sqrt(area)
        x0, y0 = cx - side * (0.5 + ox), cy - side * (0.5 + oy)
        drawn = shape_coverage(shape, (x0, y0, x0 + side, y0 + side), h, w, pointing)
        for sigma in BLURS:
            template = ndimage.gaussian_filter(drawn, sigma) if sigma else drawn
            errors[shape] = min(errors[shape], float(((cover - template) ** 2).sum()) / energy)
    return errors


def coverage_estimate(frame: np.ndarray, background: np.ndarray, component: np.ndarray,
                      colour: np.ndarray) -> np.ndarray:
    """float (h, w) around `component` (REACH pixels further): the share of each pixel covered by an object of RGB
    `colour`, from the pixel's difference to the background along the colour's; 0 further away."""
    near = ndimage.binary_dilation(component, iterations=REACH)
    rows, cols = np.nonzero(near)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    towards = colour - background[component].mean(axis=0)
    contrast = max(float(np.linalg.norm(towards)), 1.0)
    return np.where(near[box], (frame[box] - background[box]) @ (towards / contrast) / contrast, 0.0)


def motion_of(centroids: np.ndarray, times: np.ndarray, frames: int, height: int, width: int
              ) -> tuple[str, tuple[float, float]]:
    """Motion label and (dx / W, dy / H) over the clip from (x, y) centroids seen at frame `times`."""
    if len(times) < 2:
        return "still", (0.0, 0.0)
    slope = np.polyfit(times.astype(np.float64), centroids, 1)[0]
    dx, dy = slope[0] * (frames - 1) / width, slope[1] * (frames - 1) / height
    if max(abs(dx), abs(dy)) < STILL_THRESHOLD:
        motion = "still"
    elif abs(dx) >= abs(dy):
        motion = "right" if dx > 0 else "left"
    else:
        motion = "down" if dy > 0 else "up"
    return motion, (float(dx), float(dy))


def _largest_component(foreground: np.ndarray) -> Optional[np.ndarray]:
    """The 8-connected component of a boolean mask with the largest solid core (pixels left by a 3x3 opening, which
    removes specks and threads of noise), or None when the mask shows no single object."""
    if foreground.mean() > MAX_FOREGROUND:
        return None
    labels, count = ndimage.label(foreground, structure=np.ones((3, 3)))
    core = np.bincount(labels[ndimage.binary_opening(foreground, np.ones((3, 3)))], minlength=count + 1)[1:]
    if count == 0 or core.max() < MIN_AREA:
        return None
    return labels == int(core.argmax()) + 1


def detect(video: np.ndarray) -> Detection:
    """Colour, shape and motion of the one object in a uint8 (T, H, W, 3) video (or an (H, W, 3) image)."""
    video = np.asarray(video)
    if video.ndim == 3:
        video = video[None]
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a (T, H, W, 3) video, got shape {video.shape}")
    frames, height, width, _ = video.shape
    pixels = video.astype(np.float64)
    backgrounds = [background_plane(f) for f in pixels]
    distance = np.stack([np.linalg.norm(f - b, axis=-1) for f, b in zip(pixels, backgrounds)])
    threshold = max(MIN_THRESHOLD, 0.5 * float(np.median(distance.reshape(frames, -1).max(axis=1))))

    times, centroids, colours, grounds, components = [], [], [], [], []
    for t in range(frames):
        component = _largest_component(distance[t] > threshold)
        if component is None:
            continue
        rows, cols = np.nonzero(component)
        inner = ndimage.binary_erosion(component)
        times.append(t)
        centroids.append((cols.mean(), rows.mean()))
        colours.append(np.median(pixels[t][inner if inner.any() else component], axis=0))
        grounds.append(backgrounds[t][component].mean(axis=0))
        components.append(component)
    if not times:
        return Detection(None, None, None)

    ground = np.median(grounds, axis=0)
    colour, colour_distance, strength = fit_colour(np.median(colours, axis=0), ground)
    palette = np.asarray(COLOURS[colour], np.float64)
    targets = [ground + strength * (palette - ground), palette] if strength < 1 else [palette]
    votes = []
    for i in np.unique(np.linspace(0, len(times) - 1, SHAPE_FRAMES).round().astype(int)):
        fits = [shape_errors(coverage_estimate(pixels[times[i]], backgrounds[times[i]], components[i], target))
                for target in targets]
        votes.append({s: min(f[s] for f in fits) for s in SHAPES})
    errors = {s: float(np.mean([v[s] for v in votes])) for s in SHAPES}
    shape = min(errors, key=errors.get) if np.isfinite(min(errors.values())) else None
    motion, displacement = motion_of(np.asarray(centroids), np.asarray(times), frames, height, width)
    return Detection(colour, shape, motion, colour_distance, strength, errors[shape] if shape else float("nan"),
                     displacement, len(times) / frames)


def score(expected: dict, detection: Detection) -> dict[str, bool]:
    """Per attribute named in `expected` (colour, shape, motion): whether the detection matches it."""
    return {key: getattr(detection, key) == expected[key] for key in ("colour", "shape", "motion") if key in expected}
