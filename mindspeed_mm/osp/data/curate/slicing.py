"""Slice a long video into pieces of at most `max_seconds`: packet stream copy (no re-encode) when keyframes fall
inside every window, else a re-encode (libx264 crf 17, frame-accurate). Video stream only; audio is dropped.
Every piece is written atomically (temp file + os.replace)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Optional

from mindspeed_mm.osp.files import replace_file


def plan_slices(keyframe_times: list[float], duration: float, max_seconds: float) -> Optional[list[int]]:
    """Indices into `keyframe_times` (sorted, starting at 0) where pieces start, each piece at most `max_seconds`
    long (greedy: the latest keyframe that fits). None when some keyframe gap is longer than `max_seconds`."""
    eps = 1e-6
    starts, current = [0], 0
    while duration - keyframe_times[current] > max_seconds + eps:
        fits = [k for k in range(current + 1, len(keyframe_times))
                if keyframe_times[k] - keyframe_times[current] <= max_seconds + eps]
        if not fits:
            return None
        current = fits[-1]
        starts.append(current)
    return starts


def _packets(path: str):
    """(time_base, [(pts_seconds, is_keyframe)] in decode order, duration in seconds) of the first video stream."""
    import av
    with av.open(path) as container:
        stream = container.streams.video[0]
        tb = stream.time_base
        info, end = [], 0.0
        for pkt in container.demux(stream):
            if pkt.size == 0 or pkt.pts is None:
                continue
            t = float(pkt.pts * tb)
            info.append((t, bool(pkt.is_keyframe)))
            end = max(end, t + float((pkt.duration or 0) * tb))
        return tb, info, end


def _copy_slices(src: str, starts_pkt: list[int], out_paths: list[Path]) -> None:
    """Mux packets [starts_pkt[k], starts_pkt[k+1]) of the video stream into out_paths[k], timestamps rebased."""
    import av
    bounds = starts_pkt[1:] + [None]
    with av.open(src) as inp:
        vs = inp.streams.video[0]
        packets = (p for p in inp.demux(vs) if p.size and p.pts is not None)
        for k, out_path in enumerate(out_paths):
            def write(tmp: str, k=k) -> None:
                with av.open(tmp, mode="w", format="mp4") as out:
                    ostream = out.add_stream_from_template(vs)
                    offset = None
                    index = starts_pkt[k]
                    while bounds[k] is None or index < bounds[k]:
                        pkt = next(packets, None)
                        if pkt is None:
                            break
                        if offset is None:
                            offset = pkt.dts if pkt.dts is not None else pkt.pts
                        pkt.pts -= offset
                        if pkt.dts is not None:
                            pkt.dts -= offset
                        pkt.stream = ostream
                        out.mux(pkt)
                        index += 1
            replace_file(out_path, write, suffix=".mp4")


def _reencode_slices(src: str, frames_per_slice: int, out_of: callable) -> list[Path]:
    """Decode and re-encode in chunks of `frames_per_slice` frames; `out_of(k)` names chunk k. Even sizes (yuv420p):
    an odd last row/column is dropped."""
    import av

    from mindspeed_mm.osp.data.video_io import _av_fps, _encoder_codec

    written: list[Path] = []
    codec = _encoder_codec(None)
    with av.open(src) as inp:
        vs = inp.streams.video[0]
        fps = _av_fps(vs) or 24.0
        state = {"out": None, "stream": None, "count": 0, "tmp": None}

        def close():
            if state["out"] is not None:
                state["out"].mux(state["stream"].encode())
                state["out"].close()
                state["finish"]()
                state["out"] = None

        for frame in inp.decode(vs):
            if state["out"] is None:
                import os
                import tempfile
                path = out_of(len(written))
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".mp4")
                os.close(fd)
                out = av.open(tmp, mode="w", format="mp4")
                stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height = frame.width // 2 * 2, frame.height // 2 * 2
                stream.pix_fmt = "yuv420p"
                if codec == "libx264":
                    stream.options = {"crf": "17", "preset": "fast"}
                else:
                    stream.bit_rate = max(1_000_000, int(stream.width * stream.height * fps * 4))

                def finish(tmp=tmp, path=path):
                    os.chmod(tmp, 0o644)
                    os.replace(tmp, path)
                state.update(out=out, stream=stream, count=0, finish=finish)
                written.append(path)
            stream = state["stream"]
            img = frame.to_ndarray(format="rgb24")[:stream.height, :stream.width]
            state["out"].mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            state["count"] += 1
            if state["count"] >= frames_per_slice:
                close()
        close()
    return written


def slice_video(src: str, out_dir: Path, stem: str, max_seconds: Optional[float], fps: float) -> tuple[list[Path], str]:
    """Write `out_dir/{stem}_sNNN.mp4` pieces of at most `max_seconds` (None: one piece, the whole video).
    Returns (paths, method): method is "copy" or "reencode"."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def name(k: int) -> Path:
        return out_dir / f"{stem}_s{k:03d}.mp4"

    tb, packets, duration = _packets(src)
    if not packets:
        raise ValueError("no video packets")
    keys = [i for i, (_, key) in enumerate(packets) if key]
    starts = None
    if keys and keys[0] == 0:
        key_times = [packets[i][0] - packets[0][0] for i in keys]
        total = duration - packets[0][0]
        plan = [0] if max_seconds is None else plan_slices(key_times, total, max_seconds)
        starts = None if plan is None else [keys[k] for k in plan]
    if starts is not None:
        paths = [name(k) for k in range(len(starts))]
        _copy_slices(src, starts, paths)
        return paths, "copy"
    per_slice = 1 << 62 if max_seconds is None else max(1, int(max_seconds * fps + 1e-6))
    return _reencode_slices(src, per_slice, name), "reencode"
