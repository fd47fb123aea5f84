"""Hooks for tests/test_data_curate.py (importable by spawned workers: tests/ is on sys.path)."""
import numpy as np

WHITE = 235   # text is burnt in pure white; nothing else in the test clips is this bright


def white_text_boxes(frame):
    """A stub text detector: one box around the near-white pixels of each text row band."""
    mask = (frame >= WHITE).all(-1)
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return []
    return [(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)]


def brightness(clip):
    """An aesthetic stand-in: mean brightness of 3 frames on a 0-10 scale."""
    return float(clip.sample(3).mean()) / 25.5


def caption_from_name(clip):
    return f"a clip from {clip.source} frames {clip.start}-{clip.end}"


CALLS = []    # (path, start, end, fps, crop, source, frames shape) of each technical_stub call, in-process runs only


def technical_stub(clip):
    """A DOVER-shaped quality hook: DOVER's technical branch samples 32 frames at interval 2, wrapping around short
    clips; this samples the same indices (`clip.frames`, cropped) and scores 1 - mean |horizontal neighbour
    difference| / 16, so smooth frames score near 1 and per-pixel noise far below 0."""
    idx = [(2 * i) % clip.num_frames for i in range(32)]
    frames = clip.frames(idx).astype(np.float32)
    CALLS.append((clip.path, clip.start, clip.end, clip.fps, clip.crop, clip.source, frames.shape))
    return 1.0 - float(np.abs(np.diff(frames, axis=2)).mean()) / 16
