"""`osp plan`: per-rank memory estimate of a parallel training layout (library: mindspeed_mm.osp.parallel.memory;
checkpoint re-cutting: `osp convert dit`)."""
from __future__ import annotations

MODELS = {"v13": ("mindspeed_mm.osp.dit.osp13", "OSP13DiT"), "v15": ("mindspeed_mm.osp.dit.suv", "SUVDiT")}
PRESETS = {"osp15_suv_8b": ("v15", (8, 8, 8), 512), "osp13_t2v_2b": ("v13", (4, 8, 8), 512)}


PATCH = (1, 2, 2)  # the DiT's patch size (frames, height, width) in latent cells


def _positive_int(text: str) -> int:
    import argparse
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: give a positive integer (1, 2, ...)")
    return value


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def _check_input(parser, args, vae) -> None:
    """Frames and sizes the preset's VAE and patching accept (argparse-style error otherwise)."""
    if (args.frames - 1) % vae[0]:
        low = (args.frames - 1) // vae[0] * vae[0] + 1
        parser.error(f"argument --frames: invalid value {args.frames}: {args.preset} takes {vae[0]}k+1 frames "
                     f"(e.g. {low} or {low + vae[0]})")
    for flag, value, cell in (("--height", args.height, vae[1] * PATCH[1]), ("--width", args.width, vae[2] * PATCH[2])):
        if value % cell:
            low = max(cell, value // cell * cell)
            parser.error(f"argument {flag}: invalid value {value}: {args.preset} takes a multiple of {cell} "
                         f"(e.g. {low} or {low + cell})")


def _check_layout(parser, args, heads: int, layers: int) -> None:
    """TP x CP must divide the attention heads and PP the blocks (argparse-style error otherwise)."""
    if heads % (args.tp * args.cp):
        parser.error(f"argument --tp/--cp: invalid value TP {args.tp} x CP {args.cp} = {args.tp * args.cp}: "
                     f"{args.preset} has {heads} attention heads; choose TP x CP among {_divisors(heads)}")
    if layers % args.pp:
        parser.error(f"argument --pp: invalid value {args.pp}: {args.preset} has {layers} blocks; choose PP among "
                     f"{_divisors(layers)}")


def _plan(args) -> int:
    import importlib
    from mindspeed_mm.osp.parallel import memory
    from mindspeed_mm.osp.parallel.plans import plan_for
    parser = args.plan_parser
    version, vae, text = PRESETS[args.preset]
    _check_input(parser, args, vae)
    module, cls = MODELS[version]
    model = getattr(importlib.import_module(module), cls).from_preset(args.preset, device="meta")
    plan = plan_for(model)
    _check_layout(parser, args, heads=plan.heads(model), layers=len(plan.blocks(model)))
    tokens = memory.latent_tokens(args.frames, args.height, args.width, vae=vae)
    hidden = model.config.hidden_size
    est = memory.estimate(model, plan, tp=args.tp, pp=args.pp, cp=args.cp, dp=args.dp, tokens=tokens,
                          text_tokens=text, hidden=hidden, micro_batch=args.micro_batch, recompute=args.recompute,
                          precision=args.precision)
    print(f"{args.preset}: {est.params_total:,} parameters; layout TP{args.tp} PP{args.pp} CP{args.cp} DP{args.dp} "
          f"(world {args.tp * args.pp * args.cp * args.dp}), SP on with TP>1, distributed optimizer")
    print(f"input {args.frames}x{args.height}x{args.width}: {tokens:,} video tokens + {text} text tokens, "
          f"micro-batch {args.micro_batch}, recompute {args.recompute}, precision {args.precision}")
    print(f"per rank (most loaded stage): {est.params_rank:,} parameters")
    optimizer = "fp32 master + Adam" if args.precision == "bf16" else "Adam m, v"
    for name, value in ((f"weights ({args.precision})", est.weights_gib), ("gradients (fp32)", est.grads_gib),
                        (f"optimizer ({optimizer}, /DP)", est.optimizer_gib),
                        ("activations (estimate)", est.activations_gib),
                        ("reserved (framework, buffers)", memory.RESERVED_GIB)):
        print(f"  {name:<38} {value:8.1f} GiB")
    print(f"  {'total':<38} {est.total_gib:8.1f} GiB")
    for device, gb in memory.DEVICES.items():
        cap = gb * 1e9 / memory.GIB
        print(f"  {device}: {'fits' if est.total_gib <= cap else 'does NOT fit'} ({cap:.1f} GiB)")
    return 0


def register(subparsers) -> None:
    q = subparsers.add_parser("plan", help="per-rank memory estimate of a parallel training layout",
                              description="Per-rank memory (weights, gradients, optimizer, activations) of a training "
                                          "layout, from the preset built on the meta device (nothing is allocated).")
    q.add_argument("--preset", choices=sorted(PRESETS), default="osp15_suv_8b",
                   help="model preset (default: %(default)s)")
    for flag, what in (("--tp", "tensor-parallel size; TP x CP must divide the attention heads"),
                       ("--pp", "pipeline-parallel size; must divide the number of blocks"),
                       ("--cp", "context-parallel size; TP x CP must divide the attention heads"),
                       ("--dp", "data-parallel size (shards the optimizer states)"),
                       ("--micro-batch", "videos per micro-batch")):
        q.add_argument(flag, type=_positive_int, default=1, metavar="N", help=f"{what} (default: %(default)s)")
    q.add_argument("--frames", type=_positive_int, default=121, metavar="N",
                   help="video frames, 8k+1 for v1.5 / 4k+1 for v1.3 presets (default: %(default)s)")
    q.add_argument("--height", type=_positive_int, default=576, metavar="PX",
                   help="video height in pixels, a multiple of 16 (default: %(default)s)")
    q.add_argument("--width", type=_positive_int, default=1024, metavar="PX",
                   help="video width in pixels, a multiple of 16 (default: %(default)s)")
    q.add_argument("--recompute", choices=("full", "none"), default="full",
                   help="activation recomputation: full keeps only each block's input (default: %(default)s)")
    q.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="bf16: mixed precision with fp32 main weights; fp32: everything in fp32 (default: %(default)s)")
    q.set_defaults(func=_plan, plan_parser=q)
