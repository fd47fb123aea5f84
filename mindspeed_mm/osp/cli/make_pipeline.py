"""`osp make-pipeline`: assemble a pipeline folder from released checkpoints (library:
mindspeed_mm.osp.pipelines.assemble_pipeline)."""
from __future__ import annotations

import argparse
from pathlib import Path

from mindspeed_mm.osp.cli.sample import DTYPES


def register(subparsers) -> None:
    m = subparsers.add_parser("make-pipeline", help="assemble a pipeline folder from released checkpoints",
                              description="Load the released parts in their published layouts, check that they fit "
                                          "together, and write one pipeline folder for `osp sample --model`.")
    m.add_argument("--version", choices=("v1.3", "v1.5"), required=True,
                   help="model family of the parts: v1.3 (Skiparse DiT, mT5-XXL, 4x8x8 WF-VAE) or v1.5 (SUV, "
                        "T5-XL + CLIP-bigG, 8x8x8 WF-VAE)")
    m.add_argument("--transformer", required=True,
                   help="v1.3: diffusers transformer/ folder; v1.5: model_ema.pt, model_optim_rng.pt; either: a "
                        "Megatron folder (any TP/PP, merged)")
    m.add_argument("--transformer-config", help="official kwargs (JSON file or preset): v1.5 default osp15_suv_8b; "
                                                "needed for a v1.3 Megatron folder (e.g. osp13_t2v_2b)")
    m.add_argument("--vae", required=True, help="WF-VAE folder (config.json + checkpoint) or checkpoint file")
    m.add_argument("--text-encoder", required=True, help="transformers folder: mT5-XXL (v1.3) / T5-v1.1-XL (v1.5)")
    m.add_argument("--tokenizer", help="tokenizer folder (default: the text encoder folder)")
    m.add_argument("--text-encoder-2", help="v1.5: CLIP-ViT-bigG-14 folder (CLIPTextModelWithProjection)")
    m.add_argument("--tokenizer-2", help="v1.5: CLIP tokenizer folder (default: the CLIP folder)")
    m.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype the weights are stored in")
    m.add_argument("--output", required=True, help="pipeline folder to write")
    m.add_argument("--max-shard-size", default="5GB",
                   help="largest transformer safetensors shard (e.g. 2GB; bigger weights are split, with an index)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --output folder (atomically)")
    m.set_defaults(func=run_make_pipeline)


def _check_make_pipeline_inputs(args: argparse.Namespace) -> None:
    """Before loading anything: each given path exists, and the weights files are real checkpoints."""
    from mindspeed_mm.osp.checkpoints.tensors import check_checkpoint_path

    for flag, path in (("--transformer", args.transformer), ("--vae", args.vae),
                       ("--text-encoder", args.text_encoder), ("--tokenizer", args.tokenizer),
                       ("--text-encoder-2", args.text_encoder_2), ("--tokenizer-2", args.tokenizer_2)):
        if path is not None and not Path(path).exists():
            raise SystemExit(f"error: problem: {flag} {path} does not exist; fix: check the path")
    for flag, path in (("--transformer", args.transformer), ("--vae", args.vae)):
        try:
            check_checkpoint_path(path, flag)
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"error: {err}")


def _untrusted_pickle_fix(flag: str, path) -> str:
    """What to do when a released part is a pickle with non-tensor objects (make-pipeline never unpickles them)."""
    if flag == "--transformer":
        return (f"make-pipeline loads plain weights only; if you trust the file, extract them with `osp convert dit "
                f"--to official --trust-pickle {path} weights.safetensors` and pass --transformer weights.safetensors")
    return (f"make-pipeline loads plain weights only; if you trust the file, convert it with `osp convert wfvae "
            f"--to osp --unsafe-pickle {path} vae_folder` and pass --vae vae_folder")


def run_make_pipeline(args: argparse.Namespace) -> int:
    import pickle

    import torch

    from mindspeed_mm.osp.checkpoints.tensors import UntrustedPickleError, untrusted_pickle
    from mindspeed_mm.osp.pipelines import assemble_pipeline
    from mindspeed_mm.osp.progress import stage_printer, wrote

    log = stage_printer("make-pipeline")

    if Path(args.output).exists() and not args.overwrite:
        raise SystemExit(f"error: {args.output} exists; pass --overwrite or choose another --output")
    _check_make_pipeline_inputs(args)
    try:
        pipe = assemble_pipeline(args.version, args.transformer, args.vae, args.text_encoder, args.tokenizer,
                                 args.text_encoder_2, args.tokenizer_2, args.transformer_config,
                                 dtype=getattr(torch, DTYPES[args.dtype]), log=log)
        log(f"writing the pipeline folder {args.output} (transformer shards of at most {args.max_shard_size})")
        folder = pipe.save_pretrained(args.output, overwrite=args.overwrite, max_shard_size=args.max_shard_size)
    except UntrustedPickleError as err:  # the denoiser (checkpoints.tensors)
        raise SystemExit(f"error: {err.describe(_untrusted_pickle_fix('--transformer', err.path))}")
    except (FileNotFoundError, ValueError) as err:
        cause = err.__cause__
        if isinstance(cause, pickle.UnpicklingError):  # the VAE's reader (vae.checkpoint) wraps torch's refusal
            refused = untrusted_pickle(args.vae, cause)
            if refused is not None:
                raise SystemExit(f"error: {refused.describe(_untrusted_pickle_fix('--vae', args.vae))}")
            raise SystemExit(f"error: problem: --vae {args.vae} is a damaged torch checkpoint; fix: re-download "
                             "or re-export it")
        raise SystemExit(f"error: {err}")
    print(f"{wrote(folder, f'{args.version}, {args.dtype}')}; sample with: osp sample --model {folder} --prompt ...")
    return 0
