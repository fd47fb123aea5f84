"""Sampling speed: seconds per denoising step, end-to-end seconds per video, and the attention share of the
denoiser time (CoreAttention forward hooks).

CPU, tiny random presets (default):
    python benchmarks/sample_bench.py
Released v1.5 size on a GPU with random weights (needs ~40 GB in bf16 with batched guidance):
    python benchmarks/sample_bench.py --full-v15 --device cuda --dtype bf16 --frames 121 --height 576 --width 1024 --steps 3
Reference in the same run: block offload and sequential guidance are timed against the default mode.

Fast path vs the reference denoiser forward (CPU fp32; runs alternate, min of --repeats; max |difference| of the
final latents): the shipped default model at its own sampling size, and a mid-size SUV (the released 8.5B stage
plan k = 1,2,4,8,4,2,1 with one block per stage, D = 768, 4 latent channels, 17x128x128 video = 3x16x16 latents, 512 text tokens):
    python benchmarks/sample_bench.py --fast-vs-reference
"""
from __future__ import annotations

import argparse
import time

import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class AttentionTimer:
    """Wall time spent inside the denoiser's attention cores."""

    def __init__(self, model, device):
        from mindspeed_mm.osp.dit.layers import CoreAttention

        self.device, self.seconds, self._start = device, 0.0, 0.0
        self.handles = []
        for m in model.modules():
            if isinstance(m, CoreAttention):
                self.handles.append(m.register_forward_pre_hook(self._pre))
                self.handles.append(m.register_forward_hook(self._post))

    def _pre(self, *_):
        _sync(self.device)
        self._start = time.perf_counter()

    def _post(self, *_):
        _sync(self.device)
        self.seconds += time.perf_counter() - self._start

    def remove(self):
        for h in self.handles:
            h.remove()


def full_v15_pipeline(device, dtype):
    """Released v1.5 denoiser and WF-VAE-M sizes with random weights; tiny text encoders with the released widths
    of their outputs (T5 2048, CLIP 1280) so the denoiser sees the real shapes."""
    from mindspeed_mm.osp.diffusion import FlowMatchEulerSampler
    from mindspeed_mm.osp.dit import SUVDiT
    from mindspeed_mm.osp.pipelines import VideoPipeline
    from mindspeed_mm.osp.text import TextConditioner
    from mindspeed_mm.osp.text.tiny import tiny_clip_text_encoder, tiny_t5_encoder, tiny_tokenizer
    from mindspeed_mm.osp.vae import WFVAE

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build the 8.5B weights directly in the target dtype and on the device
    try:
        dit = SUVDiT.from_preset("osp15_suv_8b", device=device)
    finally:
        torch.set_default_dtype(previous)
    text = TextConditioner(tiny_t5_encoder(2048), tiny_tokenizer(512), 512,
                           tiny_clip_text_encoder(1280), tiny_tokenizer(77, bos=True), 77)
    return VideoPipeline("v1.5", dit, WFVAE.from_preset("v15"), text, FlowMatchEulerSampler(7.0))


def bench(pipe, args, label, device, dtype):
    pipe.device, pipe.dtype = device, dtype
    if args.mode == "offload" or label.endswith("offload"):
        pipe.enable_block_offload()
    pipe.to(device, dtype)
    pipe.vae_chunk_frames = args.vae_chunk
    size = dict(num_frames=args.frames, height=args.height, width=args.width)
    pipe(["warm up"], steps=1, seeds=[0], output_latents=True, **size)   # first-call allocations, lazy inits
    step_times = []
    last = [time.perf_counter()]

    def progress(i, n):
        _sync(device)
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now

    timer = AttentionTimer(pipe.transformer, device)
    _sync(device)
    start = time.perf_counter()
    last[0] = start
    latents = pipe(["a red car driving through a rainy city at night"], steps=args.steps, seeds=[1],
                   output_latents=True, progress=progress, **size)
    _sync(device)
    denoise = time.perf_counter() - start
    timer.remove()
    t0 = time.perf_counter()
    pipe.decode(latents)
    _sync(device)
    decode = time.perf_counter() - t0
    per_step = sum(step_times[1:]) / max(1, len(step_times) - 1) if len(step_times) > 1 else step_times[0]
    print(f"{label:28s} s/step {per_step:8.4f}   denoise {denoise:8.3f} s   decode {decode:7.3f} s   "
          f"end-to-end {denoise + decode:8.3f} s/video   attention share {timer.seconds / denoise:5.1%}")
    return per_step


MID_SUV = dict(num_layers=[1, 1, 1, 1, 1, 1, 1], sparse_n=[1, 2, 4, 8, 4, 2, 1], num_heads=6, head_dim=128,
               in_channels=4, out_channels=4, timestep_embed_dim=1024, caption_channels=2048,
               pooled_projection_dim=1280)


def mid_suv_pipeline(text_len: int = 512):
    """The mid-size SUV (MID_SUV, random weights) with tiny text encoders of the released output widths."""
    from mindspeed_mm.osp.diffusion import FlowMatchEulerSampler
    from mindspeed_mm.osp.dit import SUVConfig, SUVDiT
    from mindspeed_mm.osp.pipelines import VideoPipeline
    from mindspeed_mm.osp.text import TextConditioner
    from mindspeed_mm.osp.text.tiny import tiny_clip_text_encoder, tiny_t5_encoder, tiny_tokenizer
    from mindspeed_mm.osp.vae import WFVAE

    torch.manual_seed(0)
    dit = SUVDiT(SUVConfig(**MID_SUV))
    with torch.no_grad():  # off the [I | 0] skip init, so the skips matter
        for seq in (*dit.skip_norm_linear, *dit.skip_norm_linear_enc):
            seq[1].weight.normal_(std=0.02)
    text = TextConditioner(tiny_t5_encoder(2048), tiny_tokenizer(text_len), text_len,
                           tiny_clip_text_encoder(1280), tiny_tokenizer(77, bos=True), 77)
    # the tiny 4-channel WF-VAE fixes the latent shape (the released one has 32 channels: only the patch embedding
    # and the output projection would be wider)
    return VideoPipeline("v1.5", dit.eval().requires_grad_(False), WFVAE.from_preset("tiny_v15"), text,
                         FlowMatchEulerSampler(7.0))


def fast_vs_reference(args) -> None:
    """Alternate reference (fast_denoiser=False) and fast sampling runs of the same seeds; min s/step of each."""
    from mindspeed_mm.osp.pipelines import default_model, load_pipeline

    cases = [("default model", lambda: load_pipeline(default_model()), {}),
             ("mid-size SUV", mid_suv_pipeline, dict(num_frames=17, height=128, width=128))]
    for label, build, size in cases:
        pipe = build()
        d = pipe.defaults
        kw = dict(num_frames=d.num_frames, height=d.height, width=d.width, guidance_scale=d.guidance_scale,
                  steps=args.fast_steps, seeds=[3], output_latents=True)
        kw.update(size)
        prompt = ["a red circle moving to the right"]
        times, latents = {False: [], True: []}, {}
        for r in range(args.repeats + 1):  # the first round warms both paths up (not timed)
            for fast in (False, True):
                pipe.fast_denoiser = fast
                stamps = []
                latents[fast] = pipe(prompt, progress=lambda i, n: stamps.append(time.perf_counter()), **kw)
                if r:
                    times[fast].append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
        ref, fast = min(times[False]), min(times[True])
        diff = (latents[True] - latents[False]).abs().max().item()
        scale = latents[False].abs().max().item()
        pipe.fast_denoiser = True
        print(f"{label:14s} {kw['num_frames']}x{kw['height']}x{kw['width']}, {args.fast_steps} steps: reference "
              f"{ref:.4f} s/step, fast {fast:.4f} s/step, ratio {ref / fast:.2f}x, max |diff| {diff:.2e} "
              f"(max |latent| {scale:.2f}); fast path: {pipe.fast_path_problem() or 'on'}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", action="append", help="tiny preset(s); default tiny-osp13-random and tiny-osp15-random")
    ap.add_argument("--full-v15", action="store_true", help="released v1.5 sizes, random weights (GPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--vae-chunk", type=int, default=None)
    ap.add_argument("--mode", choices=("default", "offload"), default="default")
    ap.add_argument("--fast-vs-reference", action="store_true",
                    help="time the sampling fast path against the reference forward (default model, mid-size SUV)")
    ap.add_argument("--fast-steps", type=int, default=6, help="sampling steps per run with --fast-vs-reference")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each path with --fast-vs-reference")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    torch.manual_seed(0)
    if args.fast_vs_reference:
        print(f"CPU fp32, threads {torch.get_num_threads()}, {args.fast_steps} steps per run, min of {args.repeats} "
              f"alternating runs of each path")
        fast_vs_reference(args)
        return
    print(f"device {device}, dtype {args.dtype}, {args.frames}x{args.height}x{args.width}, {args.steps} steps, "
          f"threads {torch.get_num_threads()}")
    if args.full_v15:
        bench(full_v15_pipeline(device, dtype), args, "v1.5 8.5B (random)", device, dtype)
        return
    from mindspeed_mm.osp.pipelines import build_preset

    for name in args.preset or ["tiny-osp13-random", "tiny-osp15-random"]:
        frames = args.frames
        tf = 4 if "osp13" in name else 8
        args.frames = (frames - 1) // tf * tf + 1
        ref = bench(build_preset(name), args, name, device, dtype)
        seq = build_preset(name)
        seq.sequential_cfg = True
        s = bench(seq, args, name + " seq-cfg", device, dtype)
        o = bench(build_preset(name), args, name + " offload", device, dtype)
        print(f"{'':28s} ratio vs default: sequential guidance {s / ref:.2f}x, block offload {o / ref:.2f}x")
        args.frames = frames


if __name__ == "__main__":
    main()
