"""A timed encode + decode round trip of a WF-VAE, with a callback per processed chunk (what `osp vae reconstruct`
runs and reports)."""
from __future__ import annotations

import math
import time
from typing import Callable, Optional


def chunk_counts(vae, frames: int, chunk_frames) -> tuple[int, int, Optional[int]]:
    """(encoder calls, decoder calls, decoder chunk in latent frames) for a clip of `frames` valid frames.

    `chunk_frames` counts video frames; the decoder takes `chunk_frames // R` latent frames per chunk (at least 1),
    the same mapping as `WFVAE.reconstruct`.
    """
    latent_frames = (frames - 1) // vae.temporal_compression + 1
    if chunk_frames is None:
        return 1, 1, None
    dec_chunk = max(1, chunk_frames // vae.temporal_compression)
    return math.ceil(frames / chunk_frames), math.ceil(latent_frames / dec_chunk), dec_chunk


def reconstruct(vae, video, *, chunk_frames: Optional[int] = None, pad: bool = False,
                on_chunk: Optional[Callable[[str], None]] = None):
    """`video` (1, 3, T, H, W) in [-1, 1] -> (reconstruction, {"encode": s, "decode": s}, latent shape).

    Encodes to the posterior mode and decodes; with `pad=True` invalid sizes are padded and the output cropped
    back. `on_chunk("encode" | "decode")` is called after every chunk the encoder/decoder processes (forward hooks:
    the VAE streams the chunks itself, with its causal cache, so the result equals whole-clip inference).
    """
    import torch

    hooks = []
    if on_chunk is not None:
        hooks = [vae.encoder.register_forward_hook(lambda *_: on_chunk("encode")),
                 vae.decoder.register_forward_hook(lambda *_: on_chunk("decode"))]
    dec_chunk = chunk_counts(vae, 1, chunk_frames)[2]
    try:
        with torch.inference_mode():
            t0 = time.perf_counter()
            posterior = vae.encode(video, chunk_frames=chunk_frames, pad=pad)
            latents = posterior.mode()
            t1 = time.perf_counter()
            recon = vae.decode(latents, chunk_frames=dec_chunk, output_size=posterior.original_size)
            t2 = time.perf_counter()
    finally:
        for h in hooks:
            h.remove()
    return recon, {"encode": t1 - t0, "decode": t2 - t1}, tuple(latents.shape)
