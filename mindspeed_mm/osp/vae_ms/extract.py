"""Data-parallel WF-VAE latent extraction with MindSpore (one process per device, launched by `msrun`).

Each worker takes every `world`-th entry of the video list (starting at its rank), encodes it, and writes
`<out>/<name>.safetensors` (or `.npz`) holding `latent_mean` and `latent_logvar` (float32, B=1 squeezed away)
atomically (temp file + os.replace). A rerun skips entries whose output exists, so an interrupted job resumes.

    msrun --worker_num=8 --local_worker_num=8 python -m mindspeed_mm.osp.vae_ms.extract \
        --model /path/wfvae --videos list.txt --out latents/ --num-frames 33 --resolution 256
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np


@dataclass
class ShardResult:
    rank: int
    world: int
    written: List[str]
    skipped: List[str]


def read_video_list(path: str) -> List[str]:
    """One video path per line (blank lines and `#` comments ignored), or a JSON list of paths."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        return [str(p) for p in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def shard(items: Sequence[str], rank: int, world: int) -> List[str]:
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world} workers")
    return list(items[rank::world])


def output_name(video_path: str, fmt: str) -> str:
    """Stable, collision-free file name: `<stem>-<8 hex of the path's sha1>.<fmt>`."""
    stem = os.path.splitext(os.path.basename(video_path))[0]
    digest = hashlib.sha1(os.path.abspath(video_path).encode("utf-8")).hexdigest()[:8]
    return f"{stem}-{digest}.{fmt}"


def read_clip(path: str, num_frames: int, temporal_compression: int, resolution: Optional[int]) -> np.ndarray:
    """First frames of a video as (1, 3, T, H, W) float32 in [-1, 1], with T = 1 + R*n <= num_frames and
    H, W cropped to multiples of 8 (after resizing the short side to `resolution`). PyAV decodes."""
    import av
    import cv2

    frames = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == num_frames:
                break
    usable = 1 + (len(frames) - 1) // temporal_compression * temporal_compression if frames else 0
    if usable == 0:
        raise ValueError(f"{path}: no decodable frames")
    frames = frames[:usable]
    h, w = frames[0].shape[:2]
    if resolution is not None and min(h, w) != resolution:
        scale = resolution / min(h, w)
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        frames = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]
        h, w = frames[0].shape[:2]
    th, tw = h // 8 * 8, w // 8 * 8
    top, left = (h - th) // 2, (w - tw) // 2
    clip = np.stack(frames)[:, top:top + th, left:left + tw]  # T, H, W, 3 uint8
    return (clip.transpose(3, 0, 1, 2)[None].astype(np.float32) / 127.5 - 1.0)


def _save_atomic(path: str, tensors: dict, metadata: dict, fmt: str) -> None:
    from mindspeed_mm.osp.files import replace_file

    def write(tmp: str) -> None:
        if fmt == "safetensors":
            from safetensors.numpy import save_file

            save_file(tensors, tmp, metadata={k: str(v) for k, v in metadata.items()})
        else:
            with open(tmp, "wb") as f:
                np.savez(f, **tensors, metadata=np.array(json.dumps(metadata)))
    replace_file(path, write)


def extract_shard(videos: Sequence[str], out_dir: str, encode: Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]],
                  load: Callable[[str], np.ndarray], rank: int, world: int, fmt: str = "safetensors",
                  log: Callable[[str], None] = print) -> ShardResult:
    """Encode this rank's share of `videos` into `out_dir`; outputs that already exist are skipped."""
    if fmt not in ("safetensors", "npz"):
        raise ValueError(f"format must be 'safetensors' or 'npz', got {fmt!r}")
    os.makedirs(out_dir, exist_ok=True)
    result = ShardResult(rank, world, [], [])
    mine = shard(videos, rank, world)
    for i, video in enumerate(mine):
        target = os.path.join(out_dir, output_name(video, fmt))
        if os.path.exists(target):
            result.skipped.append(target)
            continue
        clip = load(video)
        mean, logvar = encode(clip)
        _save_atomic(target, {"latent_mean": np.ascontiguousarray(mean[0], np.float32),
                              "latent_logvar": np.ascontiguousarray(logvar[0], np.float32)},
                     {"source": video, "input_shape": list(clip.shape[1:])}, fmt)
        result.written.append(target)
        log(f"[rank {rank}/{world}] {i + 1}/{len(mine)} {video} -> {target} latent {tuple(mean.shape[1:])}")
    return result


def distributed_rank_world() -> Tuple[int, int]:
    """(rank, world) from MindSpore's communication init under msrun; (0, 1) when not launched distributed.

    If the collective runtime cannot start (sharding needs no communication), msrun's RANK_ID / MS_WORKER_NUM
    are used instead, with a note."""
    if not any(k in os.environ for k in ("MS_WORKER_NUM", "MS_ROLE", "RANK_SIZE")):
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init

    try:
        init()
        return get_rank(), get_group_size()
    except Exception as e:  # noqa: BLE001 - any runtime failure: fall back to the launcher's variables
        rank = int(os.environ.get("RANK_ID", os.environ.get("MS_NODE_ID", "0")))
        world = int(os.environ.get("MS_WORKER_NUM", os.environ.get("RANK_SIZE", "1")))
        print(f"[extract] mindspore.communication.init() failed ({type(e).__name__}: {e}); "
              f"using RANK_ID={rank}, MS_WORKER_NUM={world} from the launcher", flush=True)
        return rank, world


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mindspeed_mm.osp.vae_ms.extract", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="WF-VAE folder: config.json + model.safetensors")
    p.add_argument("--videos", required=True, help="text file with one video path per line (or a JSON list)")
    p.add_argument("--out", required=True, help="output folder for the latent files")
    p.add_argument("--num-frames", type=int, default=33, help="frames read from the start (trimmed to 1 + R*n)")
    p.add_argument("--resolution", type=int, default=None, help="resize the short side to this before cropping to /8")
    p.add_argument("--chunk-frames", type=int, default=None, help="causal-cache chunk (video frames, multiple of R)")
    p.add_argument("--format", choices=("safetensors", "npz"), default="safetensors")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p.add_argument("--pynative", action="store_true", help="run eagerly instead of GRAPH_MODE")
    p.add_argument("--device-target", default=None, help="Ascend / CPU (default: MindSpore's choice)")
    args = p.parse_args(argv)

    import mindspore as ms

    from mindspeed_mm.osp.vae_ms import WFVAE

    ms.set_context(mode=ms.PYNATIVE_MODE if args.pynative else ms.GRAPH_MODE)
    if args.device_target:
        ms.set_device(args.device_target)
    rank, world = distributed_rank_world()
    videos = read_video_list(args.videos)
    vae = WFVAE.from_pretrained(args.model, dtype=getattr(ms, args.dtype))
    r = vae.config.temporal_compression

    def encode(clip):
        post = vae.encode(clip, chunk_frames=args.chunk_frames)
        return post.mean.asnumpy(), post.logvar.asnumpy()

    result = extract_shard(videos, args.out, encode, lambda v: read_clip(v, args.num_frames, r, args.resolution),
                           rank, world, args.format)
    print(f"[rank {rank}/{world}] wrote {len(result.written)}, skipped {len(result.skipped)} already done; "
          f"graphs compiled: {vae.compile_stats.count} in {vae.compile_stats.total_s:.1f} s (first calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
