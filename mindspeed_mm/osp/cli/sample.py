"""`osp sample`: text-to-video / image-to-video from a pipeline folder or a tiny random preset (library:
mindspeed_mm.osp.pipelines)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List

if TYPE_CHECKING:
    import torch

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
TEMPORAL_FACTOR = {"v1.3": 4, "v1.5": 8}  # frames must be TEMPORAL_FACTOR * k + 1 (the WF-VAE's compression)


class UsageError(SystemExit):
    """A bad command line found before any work: exit status 2 (as argparse), the message already on stderr."""

    def __init__(self, message: str):
        super().__init__(message)
        self.code = 2


def _usage(message: str) -> UsageError:
    print(f"osp sample: error: {message}", file=sys.stderr)
    return UsageError(f"error: {message}")


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="generate videos from prompts (v1.3 / v1.5; t2v, v1.3 i2v)",
                              description="Generate mp4 videos (plus a JSON sidecar with every setting) from prompts.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="pipeline folder (model_index.json, transformer/, vae/, text_encoder/, ...); "
                                     "default: the embedded tiny shapes model")
    src.add_argument("--preset", help="tiny random pipeline built in code: tiny-osp13-random, tiny-osp13-i2v-random, "
                                      "tiny-osp15-random (defaults: 2 latent frames + 1, 64x96, 4 steps)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeat for several)")
    p.add_argument("--prompt-file", help="text file, one prompt per line (blank lines and # comments skipped)")
    p.add_argument("--negative-prompt", default=None, help="appended to the model's default negative prompt")
    p.add_argument("--no-template", action="store_true", help="use prompts as given (no quality template/negatives)")
    p.add_argument("--image", action="append", default=[], metavar="IMG[@INDEX]",
                   help="conditioning frame for v1.3 i2v weights; INDEX = frame position (default 0; with two "
                        "images 0 and -1). Repeat for several reference frames")
    p.add_argument("--num-frames", type=int, help="frames (v1.3: 4k+1, default 93; v1.5: 8k+1, default 121)")
    p.add_argument("--height", type=int, help="multiple of 16 (default 352 / 576)")
    p.add_argument("--width", type=int, help="multiple of 16 (default 640 / 1024)")
    p.add_argument("--steps", type=int, help="sampling steps (default 100 / 50)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5 / 7.0)")
    p.add_argument("--guidance-rescale", type=float, help="std rescale of the guided prediction (default 0 / 0.7)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first video; video i uses seed + i")
    p.add_argument("--fps", type=float, help="frame rate of the mp4 (default 18 / 24)")
    p.add_argument("--output", required=True, help="OUT.mp4; several videos become OUT_000.mp4, OUT_001.mp4, ...")
    p.add_argument("--batch-size", type=int, default=1, help="prompts sampled together")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="denoiser/VAE dtype (default: bf16 on GPU/NPU, fp32 on CPU)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, npu:0 (default: detected)")
    p.add_argument("--text-device", default=None, help="where the text encoders run (e.g. cpu to save memory)")
    p.add_argument("--free-text-encoders", action="store_true", help="drop the text encoders after encoding")
    p.add_argument("--offload", choices=("none", "blocks"), default="none",
                   help="blocks: keep denoiser blocks in host memory, stream one at a time to the device")
    p.add_argument("--cfg-mode", choices=("batch", "sequential"), default="batch",
                   help="sequential: run the guidance passes one after another (half the activation memory)")
    p.add_argument("--no-fast-path", action="store_true",
                   help="run the reference paths: the denoiser forward at every step instead of the v1.5 sampling "
                        "fast path, and the WF-VAE's direct convolutions instead of its float32 CPU Winograd path "
                        "(same result within float32 rounding; the fast paths are used by default where valid: "
                        "float32, one process, no --offload; CPU for the VAE)")
    p.add_argument("--vae-chunk", type=int, default=None, help="latent frames per VAE decode chunk (bounds memory)")
    p.add_argument("--refiner", default=None, help="local causal-LM folder that rewrites prompts (t2v only)")
    p.add_argument("--save-latents", action="store_true",
                   help="also write the final latents (before VAE decoding) to OUT.latents.safetensors")
    p.add_argument("--pad", action="store_true", help="generate at the next valid size and crop back")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (under torchrun; processes beyond "
                                                     "tp x cp sample different prompts)")
    p.add_argument("--cp", type=int, default=1, help="context-parallel (Ulysses) degree (under torchrun)")
    p.set_defaults(func=run)


def read_prompts(args) -> List[str]:
    prompts = list(args.prompt)
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise _usage(f"--prompt-file {path} does not exist")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise _usage("give at least one --prompt or a --prompt-file")
    empty = [i + 1 for i, prompt in enumerate(prompts) if not prompt.strip()]
    if empty:
        raise _usage(f"prompt {empty[0]} is empty; describe the video, e.g. --prompt 'a red car driving in the rain'")
    return prompts


def output_paths(output: str, count: int) -> List[Path]:
    out = Path(output)
    if out.suffix.lower() != ".mp4":
        raise _usage(f"--output {out} must end in .mp4")
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i:03d}.mp4") for i in range(count)]


def image_spec(spec: str) -> tuple:
    """`IMG[@INDEX]` -> (path, index string or "")."""
    head, sep, tail = spec.rpartition("@")
    if sep and tail.lstrip("-").isdigit():  # IMG@INDEX (a file name may itself contain '@')
        return head, tail
    return spec, ""


def parse_images(specs: List[str], height: int, width: int) -> Dict[int, "torch.Tensor"]:
    """`IMG[@INDEX]` -> {index: (3, H, W) in [-1, 1]}; images of another size are center-cropped and resized."""
    import numpy as np
    import torch
    from PIL import Image

    frames = {}
    for n, spec in enumerate(specs):
        path, index = image_spec(spec)
        if index:
            i = int(index)
        elif len(specs) <= 2:
            i = 0 if n == 0 else -1
        else:
            raise SystemExit(f"error: with more than two --image give each a frame index, e.g. {spec}@8")
        if not Path(path).is_file():
            raise SystemExit(f"error: --image {path} does not exist")
        image = Image.open(path).convert("RGB")
        if image.size != (width, height):
            w0, h0 = image.size
            scale = max(width / w0, height / h0)
            rw, rh = max(width, round(w0 * scale)), max(height, round(h0 * scale))
            image = image.resize((rw, rh), Image.BICUBIC)
            left, top = (rw - width) // 2, (rh - height) // 2
            image = image.crop((left, top, left + width, top + height))
            print(f"note: --image {path} is {w0}x{h0}; resized and center-cropped to {width}x{height}", file=sys.stderr)
        if i in frames:
            raise SystemExit(f"error: two --image given for frame {i}")
        frames[i] = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 127.5 - 1
    return frames


def _write_json_atomic(path: Path, payload: dict) -> None:
    from mindspeed_mm.osp.files import replace_file

    replace_file(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1) + "\n"))


def _save_latents_atomic(path: Path, latents) -> None:
    from safetensors.torch import save_file

    from mindspeed_mm.osp.files import replace_file

    replace_file(path, lambda tmp: save_file({"latents": latents.detach().float().cpu().contiguous()}, tmp))


def model_version(args) -> str:
    """v1.3 / v1.5 from the preset name, or the pipeline folder's model_index.json (else transformer/config.json);
    reads only those small JSON files. Neither --model nor --preset: the embedded default model (set here)."""
    if args.model is None and args.preset is None:
        from mindspeed_mm.osp.pipelines.folder import DEFAULT_MODEL, default_model

        if default_model() is None:
            raise _usage(f"no --model or --preset given and this install has no embedded default model "
                         f"({DEFAULT_MODEL}); pass --model PIPELINE_DIR, or --preset tiny-osp15-random (random "
                         "weights: noise)")
        args.model = str(default_model())
        print(f"osp sample: using the embedded default model ({args.model}): a tiny v1.5 model trained on "
              "coloured shapes; it draws prompts like 'a red circle moving to the right'", file=sys.stderr)
    if args.preset:
        from mindspeed_mm.osp.pipelines.presets import PRESETS

        if args.preset not in PRESETS:
            raise _usage(f"unknown --preset {args.preset!r}; available: {', '.join(PRESETS)}")
        return "v1.3" if args.preset.startswith("tiny-osp13") else "v1.5"
    folder = Path(args.model)
    if not folder.is_dir():
        raise _usage(f"--model {folder} is not a folder; give a pipeline folder (see `osp make-pipeline`)")
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise _usage(f"{index_file} is missing: --model must be a pipeline folder written by `osp make-pipeline` "
                     "(model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/)")
    version = _read_json(index_file).get("version")
    if version not in TEMPORAL_FACTOR:
        config_file = folder / "transformer" / "config.json"
        name = str(_read_json(config_file).get("_class_name", "")) if config_file.is_file() else ""
        version = ("v1.3" if "v1_3" in name or "OSP13" in name else
                   "v1.5" if name in ("SparseUMMDiT", "SUVDiT") else None)
    if version is None:
        raise _usage(f"{index_file} names no model version (\"version\": \"v1.3\" or \"v1.5\"); rewrite the folder "
                     "with `osp make-pipeline`")
    return version


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise _usage(f"cannot read {path}: {err}; fix the file or rebuild the folder with `osp make-pipeline`")
    if not isinstance(data, dict):
        raise _usage(f"{path} is not a JSON object; fix the file or rebuild the folder with `osp make-pipeline`")
    return data


def check_writable(path: Path, flag: str = "--output") -> None:
    """Create and remove a temporary file where `path` will be written (its folder, or the nearest existing parent
    when the folder is still to be made)."""
    folder = path.parent.absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise _usage(f"{flag} {path}: {existing} is a file, not a folder; choose another {flag}")
    try:
        fd, tmp = tempfile.mkstemp(dir=existing, prefix=".osp-write-check.")
        os.close(fd)
        os.remove(tmp)
    except OSError as err:
        raise _usage(f"{flag} {path}: cannot write to {existing} ({err.strerror or err}); choose another {flag} or "
                     "fix the folder's permissions")


def check_video_writer() -> None:
    try:
        import av  # noqa: F401  (the mp4 writer)
    except ImportError:
        raise _usage("writing mp4 needs PyAV, which is not installed: pip install av")


def check_request(args, version: str) -> None:
    """Sizes, steps and the like, checked before any weights load (the defaults are valid by construction)."""
    for name in ("num_frames", "height", "width", "steps", "batch_size", "vae_chunk"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise _usage(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.fps is not None and args.fps <= 0:
        raise _usage(f"--fps must be positive, got {args.fps}")
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and value % 2:
            raise _usage(f"--{name} {value} is odd; mp4 (yuv420p) needs even sizes: use {value - 1} or {value + 1}")
    for spec in args.image:
        if not Path(image_spec(spec)[0]).is_file():
            raise _usage(f"--image {image_spec(spec)[0]} does not exist")
    if args.pad:
        return
    from mindspeed_mm.osp.pipelines.geometry import VideoGeometry

    geometry = VideoGeometry(temporal_factor=TEMPORAL_FACTOR[version])
    tf, stride = geometry.temporal_factor, geometry.size_stride
    problems = []
    if args.num_frames is not None and geometry.valid_frames(args.num_frames)[0] != args.num_frames:
        lo, hi = geometry.valid_frames(args.num_frames)
        problems.append(f"num_frames {args.num_frames} is not {tf}k+1 for {version} (nearest: {lo} or {hi})")
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and geometry.valid_size(value)[0] != value:
            lo, hi = geometry.valid_size(value)
            problems.append(f"{name} {value} is not a multiple of {stride} (nearest: {lo} or {hi})")
    if problems:
        raise _usage("; ".join(problems) + ". Pick valid values, or pass --pad to generate at the next valid size "
                     "and crop back")


def build_pipeline(args):
    import torch

    from mindspeed_mm.osp.pipelines import build_preset, load_pipeline
    from mindspeed_mm.osp.platform import default_device

    device = torch.device(args.device) if args.device else default_device()
    args.dtype = args.dtype or ("fp32" if device.type == "cpu" else "bf16")
    dtype = getattr(torch, DTYPES[args.dtype])
    if args.preset:
        pipe = build_preset(args.preset)
        print(f"osp sample: --preset {args.preset} has random weights: its videos are noise (a check of the "
              "pipeline, not a model)", file=sys.stderr)
    else:
        if not Path(args.model).is_dir():
            raise SystemExit(f"error: --model {args.model} is not a folder")
        try:
            pipe = load_pipeline(args.model, dtype=dtype)
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"error: {err}")
    pipe.text_device = torch.device(args.text_device) if args.text_device else None
    pipe.free_text_encoders = args.free_text_encoders
    pipe.vae_chunk_frames = args.vae_chunk
    pipe.sequential_cfg = args.cfg_mode == "sequential"
    pipe.fast_denoiser = not args.no_fast_path
    pipe.vae.use_fast_conv(not args.no_fast_path)
    pipe.device, pipe.dtype = device, dtype
    if args.offload == "blocks":
        pipe.enable_block_offload()
    pipe.to(device, dtype)
    if args.refiner:
        from mindspeed_mm.osp.text import PromptRefiner
        pipe.refiner = PromptRefiner(args.refiner, device=pipe.text_device or device)
    return pipe


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from mindspeed_mm.osp import __version__
    from mindspeed_mm.osp.data.video_io import model_output_to_frames, write_video

    # everything that can be checked without the weights is checked first (loading takes minutes)
    prompts = read_prompts(args)
    paths = output_paths(args.output, len(prompts))
    check_request(args, model_version(args))
    check_video_writer()
    check_writable(paths[0])
    from mindspeed_mm.osp.pipelines.parallel_run import parallelize_pipeline, setup_parallel

    ranks = setup_parallel(args.tp, args.cp)
    mine = [i for i in range(len(prompts)) if ranks.owns(i)]
    # every rank checks the files of its own data-parallel group (all ranks of a group stop together; another
    # group may already be writing its files)
    existing = [str(q) for i in mine for q in (paths[i], paths[i].with_suffix(".json"),
                                              paths[i].with_suffix(".latents.safetensors"))
                if q.exists() and (q.suffix != ".safetensors" or args.save_latents)]
    if existing and not args.overwrite:
        raise _usage(f"output exists: {', '.join(existing)}; pass --overwrite or choose another --output")
    pipe = build_pipeline(args)
    if ranks.model_parallel:
        parallelize_pipeline(pipe)
    d = pipe.defaults
    frames_n, height, width = (d.num_frames if args.num_frames is None else args.num_frames,
                               d.height if args.height is None else args.height,
                               d.width if args.width is None else args.width)
    try:
        gen_size = pipe.geometry.resolve(frames_n, height, width, pad=args.pad)
    except ValueError as err:
        raise SystemExit(f"error: {err}")
    if gen_size != (frames_n, height, width) and ranks.writer:
        print(f"note: generating {gen_size[0]}x{gen_size[1]}x{gen_size[2]} and cropping to "
              f"{frames_n}x{height}x{width} (--pad)", file=sys.stderr)
    images = parse_images(args.image, gen_size[1], gen_size[2]) if args.image else None
    steps = d.steps if args.steps is None else args.steps
    guidance = d.guidance_scale if args.guidance is None else args.guidance
    rescale = d.guidance_rescale if args.guidance_rescale is None else args.guidance_rescale
    fps = args.fps or d.fps
    template = pipe.template if not args.no_template else None

    fast_path_problem = pipe.fast_path_problem()
    for start in range(0, len(mine), args.batch_size):
        indices = mine[start:start + args.batch_size]
        batch = [prompts[i] for i in indices]
        seeds = [args.seed + i for i in indices]
        negatives = [args.negative_prompt or ""] * len(batch)
        bar = tqdm(total=steps, desc=f"videos {indices[0] + 1}-{indices[-1] + 1}/{len(prompts)}", unit="step",
                   disable=not ranks.writer)
        began = time.time()
        try:
            latents = pipe(batch, negative_prompts=negatives, num_frames=frames_n, height=height, width=width,
                           steps=steps, guidance_scale=guidance, guidance_rescale=rescale, seeds=seeds, frames=images,
                           pad=args.pad, use_template=not args.no_template, output_latents=True,
                           progress=lambda i, n: bar.update(1))
        except ValueError as err:
            raise SystemExit(f"error: {err}")
        finally:
            bar.close()
        if not ranks.writer:
            continue
        videos = pipe.decode(latents)[:, :, :frames_n, :height, :width]
        seconds = time.time() - began
        used_pos, used_neg = (template.apply(batch, negatives) if template else (batch, negatives))
        for j, prompt in enumerate(batch):
            path = paths[indices[j]]
            write_video(path, model_output_to_frames(videos[j]), fps, overwrite=args.overwrite)
            sidecar = {
                "prompt": prompt, "prompt_used": used_pos[j],
                "negative_prompt": args.negative_prompt, "negative_prompt_used": used_neg[j] if guidance > 1 else None,
                "seed": seeds[j], "num_frames": frames_n, "height": height, "width": width,
                "generated_size": list(gen_size), "pad": args.pad, "steps": steps, "guidance_scale": guidance,
                "guidance_rescale": rescale, "fps": fps, "dtype": args.dtype, "device": str(pipe.device),
                "model": args.model and str(Path(args.model).resolve()), "preset": args.preset,
                "model_version": pipe.version, "sampler": _sampler_config(pipe.sampler),
                "images": args.image, "template": not args.no_template, "batch_size": args.batch_size,
                "tp": args.tp, "cp": args.cp, "data_parallel": ranks.data_parallel_size,
                "offload": args.offload, "cfg_mode": args.cfg_mode, "vae_chunk": args.vae_chunk,
                "fast_path": fast_path_problem is None,
                "vae_fast_path": (not args.no_fast_path and pipe.device.type == "cpu"
                                  and pipe.dtype == torch.float32),
                "refiner": args.refiner, "seconds_for_batch": round(seconds, 3),
                "versions": {"mindspeed_mm.osp": __version__, "torch": torch.__version__},
                "command": ["osp", "sample"] + sys.argv[2:] if sys.argv[1:2] == ["sample"] else None,
            }
            _write_json_atomic(path.with_suffix(".json"), sidecar)
            if args.save_latents:
                _save_latents_atomic(path.with_suffix(".latents.safetensors"), latents[j])
            print(f"wrote {path} ({frames_n} frames {height}x{width} @ {fps} fps, seed {seeds[j]})")
    return 0


def _sampler_config(sampler) -> dict:
    config = getattr(sampler, "config", None)
    if config is not None:
        return {"_class_name": type(sampler).__name__, **{k: v for k, v in dict(config).items() if not k.startswith("_")}}
    from dataclasses import asdict
    return {"_class_name": type(sampler).__name__, **asdict(sampler)}
