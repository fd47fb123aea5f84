"""`osp plan`: per-rank memory estimate of a parallel training layout (checkpoint re-cutting: `osp convert dit`)."""
from __future__ import annotations

MODELS = {"v13": ("mindspeed_mm.osp.dit.osp13", "OSP13DiT"), "v15": ("mindspeed_mm.osp.dit.suv", "SUVDiT")}
PRESETS = {"osp15_suv_8b": ("v15", (8, 8, 8), 512), "osp13_t2v_2b": ("v13", (4, 8, 8), 512)}


def _plan(args) -> int:
    import importlib
    from mindspeed_mm.osp.parallel import memory
    from mindspeed_mm.osp.parallel.layout import Layout
    from mindspeed_mm.osp.parallel.plan import plan_for
    version, vae, text = PRESETS[args.preset]
    module, cls = MODELS[version]
    model = getattr(importlib.import_module(module), cls).from_preset(args.preset, device="meta")
    plan = plan_for(model)
    Layout(args.tp, args.pp, args.cp, args.tp > 1).check_model(heads=plan.heads(model),
                                                                layers=len(plan.blocks(model)))
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
    q = subparsers.add_parser("plan", help="per-rank memory estimate of a parallel training layout")
    q.add_argument("--preset", choices=sorted(PRESETS), default="osp15_suv_8b")
    for flag, default in (("--tp", 1), ("--pp", 1), ("--cp", 1), ("--dp", 1), ("--micro-batch", 1)):
        q.add_argument(flag, type=int, default=default)
    q.add_argument("--frames", type=int, default=121)
    q.add_argument("--height", type=int, default=576)
    q.add_argument("--width", type=int, default=1024)
    q.add_argument("--recompute", choices=("full", "none"), default="full")
    q.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="bf16: mixed precision with fp32 main weights; fp32: everything in fp32")
    q.set_defaults(func=_plan)

