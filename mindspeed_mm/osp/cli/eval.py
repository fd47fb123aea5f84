"""`osp eval`: score generated media. `osp eval shapes` measures how well a model trained on the shapes dataset draws
the colour, shape and motion a prompt asks for, on held-out and seen combinations, against a random-weights
baseline."""
from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    evaluate = subparsers.add_parser("eval", help="score generated media (shapes: colour/shape/motion accuracy)",
                                     description=__doc__)
    sub = evaluate.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")
    evaluate.set_defaults(func=lambda args: evaluate.print_help() or 2)

    p = sub.add_parser("shapes", help="colour / shape / motion accuracy of a shapes model vs. random weights",
                       description="Prompt the model with single-object shapes captions -- held-out colour/shape/"
                                   "motion combinations (never in training) and seen ones --, detect what each clip "
                                   "shows and print the accuracies next to a chance baseline (the same pipeline with "
                                   "its transformer's weights re-initialised randomly, same prompts and seeds) and "
                                   "the held-out goals (colour >= 90%, motion >= 85%, shape >= 75%). A missed "
                                   "goal is reported, not an error: the exit status is 0.")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="pipeline folder (default: the embedded default model, when installed)")
    p.add_argument("--prompts", type=int, default=32, metavar="N", help="prompts per split (default 32)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the prompts and of the first clip (default 0)")
    p.add_argument("--steps", type=int, default=None, metavar="K", help="sampling steps (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B", help="clips sampled together (default 8)")
    p.add_argument("--device", default=None, metavar="D", help="cpu, cuda, cuda:1, npu:0 (default: detected)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (accuracies and counts per model and split, per-prompt detections)")
    p.set_defaults(func=_shapes)


def _error(message: str) -> int:
    print(f"osp eval shapes: {message}", file=sys.stderr)
    return 2


def _shapes(args) -> int:
    import torch

    from mindspeed_mm.osp.eval.shapes_eval import GOALS, format_table, goal_status, resolve_model, run_shapes_eval
    from mindspeed_mm.osp.pipelines import load_pipeline
    from mindspeed_mm.osp.platform import default_device

    for flag, value in (("--prompts", args.prompts), ("--steps", args.steps), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            return _error(f"{flag} must be >= 1, got {value}")
    try:
        model = resolve_model(args.model)
        device = torch.device(args.device) if args.device else default_device()
        pipe = load_pipeline(model)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        return _error(str(err))
    pipe.to(device)

    def log(message: str) -> None:
        print(f"osp eval shapes: {message}", file=sys.stderr, flush=True)

    report = run_shapes_eval(pipe, args.prompts, args.seed, args.steps, args.batch_size, log)
    d = pipe.defaults
    steps = args.steps or d.steps
    if args.json:
        print(json.dumps({"model": str(model.resolve()), "prompts": args.prompts, "seed": args.seed, "steps": steps,
                          "num_frames": d.num_frames, "height": d.height, "width": d.width, "device": str(device),
                          "goals": GOALS, "goals_met": goal_status(report["model"]["held-out"]["accuracy"]),
                          "results": report}, indent=1))
    else:
        print(f"shapes eval of {model}: {args.prompts} prompts per split, seed {args.seed}, {steps} steps, "
              f"{d.num_frames} frames {d.height}x{d.width}")
        print(format_table(report))
    return 0
