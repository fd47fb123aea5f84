"""`osp vae ...` commands. `osp vae reconstruct IN.mp4 OUT.mp4 --model PATH`: encode and decode a clip, print PSNR/SSIM
(library: mindspeed_mm.osp.vae.roundtrip); `osp vae stats`: the latent normaliser (mindspeed_mm.osp.vae.stats).

`osp vae reconstruct --demo OUT.mp4` needs no input or weights: it writes a clip next to OUT (`<OUT stem>_input.mp4`)
and reconstructs it: with the embedded default model's WF-VAE on a held-out shapes clip when that model is
installed, else (or with --preset) with a randomly initialised tiny WF-VAE on a moving pattern.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

from mindspeed_mm.osp.vae.roundtrip import chunk_counts, reconstruct

DTYPES = ("fp32", "bf16", "fp16")
DEMO_PRESET = "tiny_v13"
DEMO_FRAMES, DEMO_SIZE, DEMO_FPS, DEMO_CHUNK_FRAMES = 17, 64, 8.0, 8
DEFAULT_FPS = 24.0
STATS_DESCRIPTION = ("Latent statistics of a WF-VAE over a dataset, and the normaliser they give (`scale` = 1/std, "
                     "`shift` = mean per latent channel), as the released configs carry: a denoiser trains on "
                     "`(z - shift) * scale`, about unit variance.")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def register(subparsers) -> None:
    vae = subparsers.add_parser("vae", help="WF-VAE tools (reconstruct a video, latent statistics)",
                                description="WF-VAE tools: `reconstruct` encodes and decodes a video (chunked, with "
                                            "PSNR/SSIM), `stats` measures the latent normaliser over a dataset.")
    sub = vae.add_subparsers(dest="vae_command", metavar="SUBCOMMAND")

    def show_help(_args: argparse.Namespace) -> int:
        vae.print_help()
        return 2
    vae.set_defaults(func=show_help)

    p = sub.add_parser(
        "reconstruct", help="encode + decode a video, print PSNR/SSIM, write the reconstruction",
        description="Encode IN with the WF-VAE (posterior mode), decode, write OUT as mp4 and print PSNR/SSIM of the "
                    "round trip (computed on the tensors, before mp4 compression).",
        usage="osp vae reconstruct IN.mp4 OUT.mp4 --model PATH [options]\n"
              "       osp vae reconstruct --demo OUT.mp4 [options]")
    p.add_argument("paths", nargs="*", metavar="IN.mp4 OUT.mp4", help="input video and output path "
                   "(with --demo: only the output path)")
    p.add_argument("--model", metavar="PATH", help="WF-VAE checkpoint: a directory (save_pretrained / released layout) or file")
    p.add_argument("--demo", action="store_true",
                   help="no input or weights needed: a held-out shapes clip through the embedded default model's "
                        "WF-VAE (or, without that model or with --preset, a moving pattern through a random tiny "
                        "WF-VAE)")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help=f"with --demo: WF-VAE preset to initialise randomly (default {DEMO_PRESET})")
    p.add_argument("--chunk-frames", type=_positive_int, default=None, metavar="N",
                   help="encode N video frames at a time, decode max(1, N // R) latent frames at a time (causal "
                        "cache: same output as the whole clip, less memory). Default: whole clip "
                        f"(--demo: {DEMO_CHUNK_FRAMES})")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="VAE compute dtype (default: bf16 on GPU/NPU as in the official eval, fp32 on CPU)")
    p.add_argument("--device", default=None, metavar="DEV", help="cpu, cuda, cuda:1, npu:0, ... (default: detected)")
    p.add_argument("--num-frames", type=_positive_int, default=None, metavar="N",
                   help="frames to take (default: all); the VAE needs 1 + R*n (R = 4 for v1.3, 8 for v1.5). "
                        f"--demo: frames to synthesise (default {DEMO_FRAMES})")
    p.add_argument("--start", type=_non_negative_int, default=0, metavar="N", help="first frame to take")
    p.add_argument("--stride", type=_positive_int, default=1, metavar="N", help="take every N-th frame (sample rate)")
    p.add_argument("--resolution", type=_positive_int, default=None, metavar="S",
                   help=f"resize the short side to S pixels first (--demo: frame size S x S, default {DEMO_SIZE})")
    p.add_argument("--center-crop", action="store_true", help="after resizing, center-crop to S x S")
    p.add_argument("--pad", action="store_true",
                   help="pad frames/size the VAE cannot take (T != 1 + R*n, H/W not multiples of 8) and crop back; "
                        "an odd height/width is written one pixel smaller (mp4/yuv420p needs even sizes; PSNR/SSIM "
                        "use the full frames)")
    p.add_argument("--backend", choices=("decord", "av", "cv2"), default=None, help="video reader (default: first "
                   "installed of decord, av, cv2)")
    p.add_argument("--save-input", action="store_true",
                   help="also write the preprocessed input as <OUT stem>_input.mp4 (for side-by-side viewing)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (and the saved input) if they exist")
    p.add_argument("--no-fast-path", action="store_true",
                   help="run every convolution directly (the reference) instead of the float32 CPU fast path "
                        "(Winograd 3x3 convs, ~1e-5 relative difference; docs/performance.md)")
    p.add_argument("--seed", type=int, default=0, help="seed for --demo's random weights")
    p.set_defaults(func=run_reconstruct)

    p = sub.add_parser("stats", help="latent mean/std over a dataset; --write stores the normaliser (scale, shift)",
                       description=STATS_DESCRIPTION)
    p.add_argument("vae", metavar="VAE_DIR", help="WF-VAE folder (config.json + weights)")
    p.add_argument("--data", required=True, help="data.txt or an annotation .json/.jsonl of videos")
    p.add_argument("--clips", type=int, default=64, help="videos used, spread evenly over the dataset (default 64)")
    p.add_argument("--max-frames", type=int, default=33, help="frames encoded per video (default 33)")
    p.add_argument("--write", action="store_true", help="write scale = 1/std and shift = mean into config.json")
    p.set_defaults(func=run_stats)


def _fail(msg: str) -> int:
    print(f"osp vae reconstruct: error: {msg}", file=sys.stderr)
    return 2


def input_sibling(out: Path) -> Path:
    return out.with_name(f"{out.stem}_input{out.suffix or '.mp4'}")


def resolve_dtype(name, device):
    import torch
    if name is None:
        name = "fp32" if device.type == "cpu" else "bf16"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def run_reconstruct(args: argparse.Namespace) -> int:
    if args.demo:
        if len(args.paths) != 1:
            return _fail("--demo takes exactly one path, the output (e.g. outputs/demo_recon.mp4)")
        if args.model:
            return _fail("--demo uses random weights; drop --model (or drop --demo to reconstruct a real video)")
        inp, out = None, Path(args.paths[0])
    else:
        if len(args.paths) != 2:
            return _fail("expected IN.mp4 OUT.mp4 (or --demo OUT.mp4 for a demo without input or weights)")
        if not args.model:
            return _fail("--model PATH is required (a WF-VAE checkpoint); try --demo for a run without weights")
        if args.preset:
            return _fail("--preset only applies to --demo; the model's architecture comes from --model")
        inp, out = Path(args.paths[0]), Path(args.paths[1])
    if args.center_crop and not args.resolution:
        return _fail("--center-crop needs --resolution S (the crop is S x S)")
    if args.chunk_frames is not None and args.chunk_frames < 1:
        return _fail(f"--chunk-frames must be >= 1, got {args.chunk_frames}")
    saved_input = input_sibling(out) if (args.demo or args.save_input) else None
    for path in (out, saved_input):
        if path is not None and path.exists() and not args.overwrite:
            return _fail(f"{path} already exists; pass --overwrite to replace it, or choose another output path")
    if inp is not None and inp.resolve() in {out.resolve(), saved_input and saved_input.resolve()}:
        return _fail("the output path must differ from the input video")
    problem = _check_before_work(args, out)
    if problem:
        return _fail(problem)
    from mindspeed_mm.osp.data.video_io import VideoReadError
    written: list = []  # files this run wrote; removed again if it fails, so a failed run leaves no outputs
    try:
        rc = _reconstruct_command(args, inp, out, saved_input, written)
        written.clear()
        return rc
    except (FileNotFoundError, FileExistsError, VideoReadError, ValueError) as e:
        # the VAE's library messages name keyword arguments; say the CLI flag instead
        return _fail(str(e).replace("pass pad=True", "pass --pad").replace("overwrite=True (CLI: --overwrite)",
                                                                             "--overwrite"))
    finally:
        for path in written:
            path.unlink(missing_ok=True)


def _check_before_work(args: argparse.Namespace, out: Path) -> Optional[str]:
    """What can be checked without reading video or weights: the mp4 writer, write access, the model's config
    file, and with --demo the synthetic clip's size (the demo writes its input first). None when all is well."""
    try:
        import av  # noqa: F401  (the mp4 writer)
    except ImportError:
        return "writing mp4 needs PyAV, which is not installed: pip install av"
    existing = out.parent.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot write {out}: {existing} is a file, not a folder; choose another output path"
    try:
        fd, tmp = tempfile.mkstemp(dir=existing, prefix=".osp-write-check.")
        os.close(fd)
        os.remove(tmp)
    except OSError as err:
        return f"cannot write {out}: {existing} is not writable ({err.strerror or err}); choose another output path"
    if args.model:
        model = Path(args.model)
        if not model.exists():
            return f"--model {model} does not exist; give a WF-VAE folder (config.json + checkpoint) or checkpoint file"
        config = (model if model.is_dir() else model.parent) / "config.json"
        if config.is_file():
            try:
                json.loads(config.read_text())
            except ValueError as err:
                return f"{config} is not valid JSON ({err}); fix or replace the file"
    if args.demo:
        from mindspeed_mm.osp.vae.config import load_preset
        try:
            r = load_preset(args.preset or DEMO_PRESET).temporal_compression
        except ValueError as err:
            return str(err)
        frames, size = args.num_frames or DEMO_FRAMES, args.resolution or DEMO_SIZE
        if not args.pad and (frames - 1) % r:
            lo = 1 + r * ((frames - 1) // r)
            return (f"--num-frames {frames}: the VAE needs 1 + {r}*n frames (nearest: {lo} or {lo + r}); "
                    "pick one, or pass --pad")
        if not args.pad and size % 8:
            lo = max(8, size // 8 * 8)
            return f"--resolution {size}: the VAE needs a multiple of 8 (nearest: {lo} or {lo + 8}); pick one, or pass --pad"
    return None


def _even(frames, path: Path):
    """uint8 (T, H, W, 3) frames cropped to even H and W (mp4/yuv420p), with a note when a pixel is dropped."""
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        print(f"note: {path}: mp4 (yuv420p) needs even sizes; writing {h - h % 2}x{w - w % 2} of the {h}x{w} frames",
              file=sys.stderr)
    return frames[:, :h - h % 2, :w - w % 2]


def _held_out_clip(frames: int, size: int, seed: int):
    """uint8 (T, S, S, 3) of the first held-out shapes combination (never in the default model's training data)."""
    import numpy as np
    import torch

    from mindspeed_mm.osp.data.shapes import HELD_OUT, place_object, random_background, render_clip

    rng = np.random.default_rng(seed)
    colour, shape, motion = HELD_OUT[0]
    clip = render_clip([place_object(rng, colour, shape, motion, size, size)], frames, size, size,
                       random_background(rng))
    return torch.from_numpy(clip), f"held-out shapes clip: a {colour} {shape} moving {motion}"


def _reconstruct_command(args: argparse.Namespace, inp: Optional[Path], out: Path, saved_input: Optional[Path],
                         written: list) -> int:
    import torch
    from tqdm import tqdm

    from mindspeed_mm.osp import metrics, platform
    from mindspeed_mm.osp.data import video_io
    from mindspeed_mm.osp.vae import WFVAE

    device = torch.device(args.device) if args.device else platform.default_device()
    dtype = resolve_dtype(args.dtype, device)
    chunk_frames = args.chunk_frames
    trained = None   # with --demo: the embedded default model's folder, when it is used
    if args.demo:
        from mindspeed_mm.osp.pipelines.folder import default_model
        torch.manual_seed(args.seed)
        size = args.resolution or DEMO_SIZE
        trained = default_model() if args.preset is None else None
        if trained is not None:   # the embedded default's VAE on a clip of a combination it never saw
            vae = WFVAE.from_pretrained(trained / "vae")
            frames, what = _held_out_clip(args.num_frames or DEMO_FRAMES, size, args.seed)
            model_desc = f"the embedded default model's WF-VAE ({trained / 'vae'})"
        else:
            from mindspeed_mm.osp.data.synthetic import moving_pattern
            preset = args.preset or DEMO_PRESET
            vae = WFVAE.from_preset(preset)
            frames, what = moving_pattern(args.num_frames or DEMO_FRAMES, size, size), "moving pattern"
            model_desc = f"preset {preset} (random weights)"
        frames = _even(frames, saved_input)
        video_io.write_video(saved_input, frames, DEMO_FPS, overwrite=args.overwrite)
        written.append(saved_input)
        print(f"demo input: wrote {saved_input} ({frames.shape[0]} frames, {frames.shape[1]}x{frames.shape[2]}, "
              f"{what})")
        if trained is None:
            print(f"NOTE: WF-VAE preset {preset!r} with RANDOM weights (seed {args.seed}): the reconstruction is noise "
                  "and PSNR/SSIM are meaningless. The demo shows reading, chunked encode/decode, metrics and writing "
                  "at work; use --model with a trained checkpoint for real figures.")
        chunk_frames = chunk_frames or DEMO_CHUNK_FRAMES
        inp = saved_input
        video, fps = video_io.load_video(inp, backend=args.backend)
    else:
        video, fps = video_io.load_video(inp, num_frames=args.num_frames, start=args.start, stride=args.stride,
                                         resolution=args.resolution,
                                         crop=args.resolution if args.center_crop else None, backend=args.backend)
        vae = WFVAE.from_pretrained(args.model)
        model_desc = str(args.model)
    if not fps > 0:
        print(f"warning: {inp} reports no frame rate; writing at {DEFAULT_FPS:g} fps", file=sys.stderr)
        fps = DEFAULT_FPS
    _, _, t, h, w = video.shape
    print(f"input: {inp} -> {t} frames {h}x{w} at {fps:g} fps")

    vae = vae.to(device=device, dtype=dtype).eval().use_fast_conv(not args.no_fast_path)
    r = vae.temporal_compression
    valid_t = 1 + r * math.ceil((t - 1) / r) if args.pad else t
    n_enc, n_dec, _ = chunk_counts(vae, valid_t, chunk_frames)
    with tqdm(total=n_enc + n_dec, desc="encode", unit="chunk", disable=None, leave=False) as bar:
        def on_chunk(stage: str) -> None:
            bar.set_description(stage)
            bar.update(1)
        recon, timings, latent_shape = reconstruct(vae, video.to(device=device, dtype=dtype),
                                                   chunk_frames=chunk_frames, pad=args.pad, on_chunk=on_chunk)
    chunks = (f"; chunks of {chunk_frames} frames: {n_enc} encode / {n_dec} decode" if chunk_frames
              else "; whole clip at once")
    fast = "" if args.no_fast_path or device.type != "cpu" or dtype != torch.float32 else "; fast path"
    print(f"model: {model_desc}; {str(dtype).replace('torch.', '')} on {device}{fast}; latent {latent_shape}; "
          f"encode {timings['encode']:.2f} s, decode {timings['decode']:.2f} s{chunks}")
    if args.demo:
        whole = reconstruct(vae, video.to(device=device, dtype=dtype), pad=args.pad)[0]
        print(f"chunked vs whole-clip reconstruction: max |diff| = {(whole - recon).abs().max().item():.3g}")

    x01, y01 = (video.float() + 1) / 2, (recon.float().cpu().clamp(-1, 1) + 1) / 2
    p, s = metrics.psnr(y01, x01), metrics.ssim(y01, x01)
    if args.save_input and not args.demo:
        video_io.write_video(saved_input, _even(video_io.model_output_to_frames(video), saved_input), fps,
                             overwrite=args.overwrite)
        written.append(saved_input)
        print(f"wrote preprocessed input: {saved_input}")
    video_io.write_video(out, _even(video_io.model_output_to_frames(recon), out), fps, overwrite=args.overwrite)
    written.append(out)
    print(f"wrote reconstruction: {out}")
    print(f"PSNR {metrics.format_psnr(p)}   SSIM {s:.4f}   (per frame, averaged, on the tensors before mp4 "
          "compression)" + ("   [random weights: meaningless]" if args.demo and trained is None else ""))
    return 0


# ------------------------------------------------------------------------------------------------ stats
def run_stats(args) -> int:
    from mindspeed_mm.osp.data.annotations import AnnotationError, load_annotations
    from mindspeed_mm.osp.data.video_io import VideoReadError
    from mindspeed_mm.osp.vae.model import WFVAE
    from mindspeed_mm.osp.vae.official import CONFIG_FILE
    from mindspeed_mm.osp.vae.stats import latent_statistics, write_normaliser

    def fail(message: str) -> int:
        print(f"osp vae stats: error: {message}", file=sys.stderr)
        return 2

    if args.clips < 1 or args.max_frames < 1:
        return fail("--clips and --max-frames must be >= 1")
    if not (Path(args.vae) / CONFIG_FILE).is_file():
        return fail(f"{args.vae}/{CONFIG_FILE} is missing: give a WF-VAE folder (config.json + weights)")
    try:
        anno = load_annotations(args.data)
        vae = WFVAE.from_pretrained(args.vae).eval()
        mean, std, used = latent_statistics(vae, anno, args.clips, args.max_frames)
    except (AnnotationError, FileNotFoundError, ValueError, VideoReadError) as e:
        return fail(str(e))
    print(f"{used} clips; per latent channel (mean, std) -> shift = mean, scale = 1/std:")
    for c, (m, v) in enumerate(zip(mean, std)):
        print(f"  {c:3d}  {m:+.4f}  {v:.4f}  scale {1 / v:.4f}")
    if args.write:
        write_normaliser(Path(args.vae), mean, std)
        print(f"wrote scale and shift into {Path(args.vae) / CONFIG_FILE}")
    else:
        print("(pass --write to store them in the folder's config.json)")
    return 0
