"""A procedural "shapes" dataset: one (sometimes two) coloured circle, square or triangle moving left, right, up or
down, or standing still, over a dark plain or gradient background, captioned from templates with synonyms
("a crimson disc sliding right"). Ground truth is exact, so a tiny text-to-video model trained on it can be scored
by the simple detectors in `mindspeed_mm.osp.eval.shapes_detect`:

    osp data make-shapes runs/shapes --videos 256 --images 64 --seed 0

Held-out combinations (`HELD_OUT`, colour/shape/motion triples) never appear in the written data, neither as the
only object nor as either object of a two-object clip; every colour, shape and motion still does. Prompting a
trained model with a held-out triple tests composition rather than recall.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

# RGB palette: saturated or bright, pairwise >= 185 apart and >= 115 from every background pixel (`random_background`).
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 80, 235),
    "yellow": (235, 215, 30),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "still")

# Never written to a dataset: 8 of the 5 * 3 * 5 = 75 triples, at most two per colour, three per shape, two per motion.
HELD_OUT = (
    ("red", "triangle", "up"),
    ("red", "square", "right"),
    ("green", "circle", "left"),
    ("green", "triangle", "down"),
    ("blue", "square", "down"),
    ("blue", "circle", "up"),
    ("yellow", "circle", "still"),
    ("white", "triangle", "right"),
)

COLOUR_WORDS = {"red": ("red", "crimson"), "green": ("green",), "blue": ("blue",), "yellow": ("yellow", "golden"),
                "white": ("white",)}
SHAPE_WORDS = {"circle": ("circle", "disc", "ball"), "square": ("square", "box", "block"), "triangle": ("triangle",)}
MOTION_WORDS = {
    "left": ("moving to the left", "sliding left", "moving leftward"),
    "right": ("moving to the right", "sliding right", "moving rightward"),
    "up": ("moving up", "rising", "moving upward"),
    "down": ("moving down", "falling", "moving downward"),
    "still": ("standing still", "resting", "not moving"),
}
OBJECT_TEMPLATES = ("a {colour} {shape} {motion}", "a {colour} {shape} that is {motion}")
IMAGE_OBJECT_TEMPLATES = ("a {colour} {shape}", "a {colour} {shape} {motion}")   # images: motion is always "still"
VIDEO_TEMPLATES = ("{objects}", "a video of {objects}", "footage of {objects}")
IMAGE_TEMPLATES = ("{objects}", "a picture of {objects}", "an image of {objects}")
OBJECT_JOINER = " and "

SIZE_RANGE = (0.3, 0.45)      # object side as a fraction of the frame's short side (64x64: 19-29 px)
TRAVEL_RANGE = (0.3, 0.55)    # distance travelled over a clip, as a fraction of the frame along the motion
MARGIN = 2.0                  # pixels between an object and the frame edge, at every frame


def seen_combinations() -> list[tuple[str, str, str]]:
    """Every (colour, shape, motion) triple the training data may contain: all but `HELD_OUT`."""
    held = set(HELD_OUT)
    return [c for c in itertools.product(COLOURS, SHAPES, MOTIONS) if c not in held]


def caption_words(text: str) -> list[str]:
    """Lower-cased words of a caption, split at whitespace and punctuation."""
    return re.findall(r"[a-z0-9]+", text.lower())


def shapes_vocabulary() -> list[str]:
    """Every word any caption can contain, sorted (for a word-level tokenizer)."""
    texts = [*OBJECT_TEMPLATES, *IMAGE_OBJECT_TEMPLATES, *VIDEO_TEMPLATES, *IMAGE_TEMPLATES, OBJECT_JOINER]
    texts = [re.sub(r"\{\w+\}", " ", t) for t in texts]
    for words in (COLOUR_WORDS, SHAPE_WORDS, MOTION_WORDS):
        texts += [w for synonyms in words.values() for w in synonyms]
    return sorted({w for t in texts for w in caption_words(t)})


# ---------------------------------------------------------------------------------------------------- drawing
@dataclass(frozen=True)
class Background:
    """A plain colour or a linear gradient from `colour0` to `colour1` (vertical: top to bottom, horizontal: left to
    right, diagonal: top-left to bottom-right)."""

    kind: str                       # plain | vertical | horizontal | diagonal
    colour0: tuple[int, int, int]
    colour1: tuple[int, int, int]

    def render(self, height: int, width: int) -> np.ndarray:
        """float32 (H, W, 3) in 0..255."""
        y, x = np.meshgrid(np.linspace(0, 1, height, dtype=np.float32), np.linspace(0, 1, width, dtype=np.float32),
                           indexing="ij")
        ramp = {"plain": np.zeros_like(y), "vertical": y, "horizontal": x, "diagonal": (y + x) / 2}[self.kind]
        c0, c1 = np.asarray(self.colour0, np.float32), np.asarray(self.colour1, np.float32)
        return c0 + (c1 - c0) * ramp[..., None]


def random_background(rng: np.random.Generator) -> Background:
    """Dark to mid grey, or a slightly tinted grey (each channel within 10 of the grey level 25..90)."""
    kind = str(rng.choice(["plain", "vertical", "horizontal", "diagonal"]))

    def colour():
        level = rng.uniform(25, 90)
        return tuple(int(round(level + t)) for t in rng.uniform(-10, 10, 3))

    first = colour()
    return Background(kind, first, first if kind == "plain" else colour())


def shape_coverage(shape: str, box: Sequence[float], height: int, width: int, pointing: str = "up") -> np.ndarray:
    """float32 (H, W) in [0, 1]: how much of each pixel `shape` covers when fitted to `box` = (x0, y0, x1, y1) in
    pixel units (pixel (i, j) spans [j, j+1] x [i, i+1]). Circle: the inscribed ellipse; square: the box; triangle:
    apex at the middle of the box side named by `pointing` (up, down, left, right; the dataset draws "up"), base
    along the opposite side. Edges are anti-aliased over one pixel."""
    x0, y0, x1, y1 = (float(v) for v in box)
    y = np.arange(height, dtype=np.float32)[:, None] + 0.5
    x = np.arange(width, dtype=np.float32)[None, :] + 0.5
    if shape == "circle":
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        signed = (np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) - 1) * np.sqrt(rx * ry)
    elif shape == "square":
        signed = np.maximum(np.maximum(x0 - x, x - x1), np.maximum(y0 - y, y - y1))
    elif shape == "triangle":
        # u runs along the base, v from the apex (v = apex) to the base (v = base)
        if pointing in ("up", "down"):
            u, u0, u1 = x, x0, x1
            v, apex, base = (y, y0, y1) if pointing == "up" else (-y, -y1, -y0)
        elif pointing in ("left", "right"):
            u, u0, u1 = y, y0, y1
            v, apex, base = (x, x0, x1) if pointing == "left" else (-x, -x1, -x0)
        else:
            raise ValueError(f"pointing must be up, down, left or right, got {pointing!r}")
        half, tall = (u1 - u0) / 2, base - apex
        # signed distance to the nearer slanted side (the line through the apex and a base corner)
        side = (np.abs(u - (u0 + u1) / 2) * tall - (v - apex) * half) / np.hypot(half, tall)
        signed = np.maximum(side, v - base)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    return np.clip(0.5 - signed, 0, 1).astype(np.float32)


@dataclass(frozen=True)
class ShapeObject:
    """One object's ground truth: its centre moves linearly from `start` to `end` ((x, y) pixels) over the clip."""

    colour: str
    shape: str
    motion: str
    size: float                       # side of the object's bounding square, pixels
    start: tuple[float, float]
    end: tuple[float, float]

    def centre(self, t: int, frames: int) -> tuple[float, float]:
        f = t / (frames - 1) if frames > 1 else 0.0
        return tuple(a + (b - a) * f for a, b in zip(self.start, self.end))


def place_object(rng: np.random.Generator, colour: str, shape: str, motion: str, height: int,
                 width: int) -> ShapeObject:
    """A random size and path for `motion`: moving objects travel 30-55% of the frame, and stay inside it."""
    if colour not in COLOURS or shape not in SHAPES or motion not in MOTIONS:
        raise ValueError(f"unknown object {colour!r} {shape!r} {motion!r}; colours: {', '.join(COLOURS)}; shapes: "
                         f"{', '.join(SHAPES)}; motions: {', '.join(MOTIONS)}")
    size = rng.uniform(*SIZE_RANGE) * min(height, width)
    lo = MARGIN + size / 2
    x, y = rng.uniform(lo, width - lo), rng.uniform(lo, height - lo)
    if motion == "still":
        return ShapeObject(colour, shape, motion, size, (x, y), (x, y))
    horizontal = motion in ("left", "right")
    extent = width if horizontal else height
    travel = min(extent - 2 * lo, rng.uniform(*TRAVEL_RANGE) * extent)
    a = lo + rng.uniform(0.0, max(0.0, extent - 2 * lo - travel))   # max: rounding when travel fills the room
    a, b = (a, a + travel) if motion in ("right", "down") else (a + travel, a)
    start, end = ((a, y), (b, y)) if horizontal else ((x, a), (x, b))
    return ShapeObject(colour, shape, motion, size, start, end)


def render_clip(objects: Sequence[ShapeObject], frames: int, height: int, width: int,
                background: Union[Background, Sequence[int]]) -> np.ndarray:
    """uint8 (T, H, W, 3): `objects` drawn in order over `background` (a Background or one RGB colour)."""
    if not isinstance(background, Background):
        background = Background("plain", tuple(background), tuple(background))
    base = background.render(height, width)
    clip = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        frame = base.copy()
        for obj in objects:
            cx, cy = obj.centre(t, frames)
            half = obj.size / 2
            alpha = shape_coverage(obj.shape, (cx - half, cy - half, cx + half, cy + half), height, width)[..., None]
            frame = frame * (1 - alpha) + np.asarray(COLOURS[obj.colour], np.float32) * alpha
        clip[t] = np.clip(np.round(frame), 0, 255).astype(np.uint8)
    return clip


def _overlap(a: ShapeObject, b: ShapeObject, frames: int) -> bool:
    """Whether the bounding squares of `a` and `b` come closer than MARGIN at any frame."""
    reach = (a.size + b.size) / 2 + MARGIN
    return any(abs(ax - bx) < reach and abs(ay - by) < reach
               for ax, ay, bx, by in (a.centre(t, frames) + b.centre(t, frames) for t in range(frames)))


# ---------------------------------------------------------------------------------------------------- captions
def caption(objects: Sequence[ShapeObject], rng: np.random.Generator, image: bool = False) -> str:
    """One caption naming every object's colour, shape and motion, with random templates and synonyms."""
    phrases = []
    for obj in objects:
        template = str(rng.choice(IMAGE_OBJECT_TEMPLATES if image else OBJECT_TEMPLATES))
        phrases.append(template.format(colour=rng.choice(COLOUR_WORDS[obj.colour]),
                                       shape=rng.choice(SHAPE_WORDS[obj.shape]),
                                       motion=rng.choice(MOTION_WORDS[obj.motion])))
    return str(rng.choice(IMAGE_TEMPLATES if image else VIDEO_TEMPLATES)).format(objects=OBJECT_JOINER.join(phrases))


def captions(objects: Sequence[ShapeObject], rng: np.random.Generator, image: bool = False,
             count: int = 3) -> list[str]:
    """Up to `count` different synonymous captions (fewer when a few draws repeat)."""
    out: list[str] = []
    for _ in range(4 * count):
        text = caption(objects, rng, image)
        if text not in out:
            out.append(text)
        if len(out) == count:
            break
    return out


# ---------------------------------------------------------------------------------------------------- dataset
def _check_arguments(videos, images, sizes, frames, fps, two_object_fraction) -> None:
    if videos < 0 or images < 0 or videos + images < 1:
        raise ValueError(f"videos and images must be >= 0 and not both 0; got videos={videos}, images={images}")
    if not sizes or any(len(s) != 2 or min(s) < 16 or s[0] % 16 or s[1] % 16 for s in sizes):
        raise ValueError(f"sizes must be (height, width) pairs of positive multiples of 16, e.g. 64x64, 48x80; "
                         f"got {list(sizes)}")
    if not frames or any(f < 9 or (f - 1) % 8 for f in frames):
        raise ValueError(f"frames must be of the form 1 + 8n with n >= 1 (9, 17, 25, 33, ...); got {list(frames)}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not 0 <= two_object_fraction <= 1:
        raise ValueError(f"two_object_fraction must lie in [0, 1], got {two_object_fraction}")


def _second_object(rng, first: ShapeObject, frames: int, height: int, width: int) -> Optional[ShapeObject]:
    """A seen triple with another colour or shape than `first`, on a path that never touches it (None if no try
    fits)."""
    options = [c for c in seen_combinations() if c[:2] != (first.colour, first.shape)]
    for _ in range(20):
        other = place_object(rng, *options[rng.integers(len(options))], height, width)
        if not _overlap(first, other, frames):
            return other
    return None


def _ground_truth(path: str, objects: Sequence[ShapeObject], background: Background) -> dict:
    rounded = [{**asdict(o), "size": round(o.size, 2), "start": [round(v, 2) for v in o.start],
                "end": [round(v, 2) for v in o.end]} for o in objects]
    return {"path": path, "objects": rounded, "background": asdict(background)}


def _write_item(job: tuple) -> None:
    """Render and write one planned item: (path, objects, frames, height, width, background, fps); fps None = jpg."""
    path, objects, frames, height, width, background, fps = job
    pixels = render_clip(objects, frames, height, width, background)
    if fps is None:
        from PIL import Image

        Image.fromarray(pixels[0]).save(path, quality=95)
    else:
        from mindspeed_mm.osp.data.video_io import write_video

        write_video(path, pixels, fps)


def make_shapes_dataset(out, videos: int, images: int, seed: int,
                        sizes: Sequence[Sequence[int]] = ((64, 64), (48, 80), (80, 48)),
                        frames: Sequence[int] = (17, 25), fps: float = 8.0,
                        two_object_fraction: float = 0.15, workers: int = 1) -> Path:
    """Write `out/videos/*.mp4`, `out/images/*.jpg`, `out/anno.json` (OSP annotation, 2-3 captions per item),
    `out/data.txt` and `out/shapes.json` (settings, `HELD_OUT` and per-item ground truth); returns data.txt's path.

    Sizes are (height, width); clips cycle through every size and frame count, so several buckets are used. Videos
    cycle through a shuffled list of `seen_combinations()`, images through the colour/shape pairs whose still
    triple is seen. Deterministic for a seed, whatever `workers`: every random choice is drawn first, in one
    process; then `workers` processes render and encode the files. Refuses a non-empty `out`.
    """
    sizes = [tuple(int(v) for v in s) for s in sizes]
    frames = [int(f) for f in frames]
    _check_arguments(videos, images, sizes, frames, fps, two_object_fraction)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder or remove it")
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)

    rng = np.random.default_rng(seed)
    combos = seen_combinations()
    combo_order = rng.permutation(len(combos))
    layouts = [(f, h, w) for f in frames for h, w in sizes]
    entries, truth, jobs = [], [], []
    for i in range(videos):
        num_frames, height, width = layouts[i % len(layouts)]
        objects = [place_object(rng, *combos[combo_order[i % len(combos)]], height, width)]
        if rng.random() < two_object_fraction:
            second = _second_object(rng, objects[0], num_frames, height, width)
            objects += [second] if second else []
        background = random_background(rng)
        name = f"videos/{i:05d}.mp4"
        jobs.append((out / name, objects, num_frames, height, width, background, fps))
        entries.append({"path": name, "cap": captions(objects, rng), "num_frames": num_frames, "fps": fps,
                        "resolution": {"height": height, "width": width}})
        truth.append(_ground_truth(name, objects, background))

    pairs = [(c, s) for c, s, m in combos if m == "still"]
    pair_order = rng.permutation(len(pairs))
    for i in range(images):
        height, width = sizes[i % len(sizes)]
        objects = [place_object(rng, *pairs[pair_order[i % len(pairs)]], "still", height, width)]
        background = random_background(rng)
        name = f"images/{i:05d}.jpg"
        jobs.append((out / name, objects, 1, height, width, background, None))
        entries.append({"path": name, "cap": captions(objects, rng, image=True), "num_frames": 1,
                        "resolution": {"height": height, "width": width}})
        truth.append(_ground_truth(name, objects, background))

    if workers == 1 or len(jobs) < 2:
        for job in jobs:
            _write_item(job)
    else:   # spawned, not forked: a forked child of a process that used the video codecs can deadlock in them
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            pool.map(_write_item, jobs, chunksize=max(1, len(jobs) // (8 * workers)))

    manifest = {"seed": seed, "videos": videos, "images": images, "sizes": [list(s) for s in sizes],
                "frames": frames, "fps": fps, "two_object_fraction": two_object_fraction,
                "held_out": [list(h) for h in HELD_OUT], "items": truth}
    (out / "anno.json").write_text(json.dumps(entries, indent=1) + "\n")
    (out / "shapes.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "data.txt").write_text(f"{out.resolve()},{(out / 'anno.json').resolve()}\n")
    return out / "data.txt"
