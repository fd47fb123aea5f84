"""Run parallel layouts against the single-device model in one torchrun launch; rank 0 writes JSON.

    torchrun --nproc_per_node 4 tests/parallel/run_cases.py --out result.json --cases toy/cp2 v15/tp2_sp_pp2 ...

A case is <model>/<layout>: model toy (tests/parallel/toy.py), v13 or v15 (the 4-head official fixtures);
layout tp<N>, pp<N>, cp<N>, vpp<N> and "sp", joined by "_" (e.g. tp2_sp_pp2). Each case checks, on every rank:
forward output vs the single-device model, and the gathered official state dict vs the original weights.
"""
from __future__ import annotations

import argparse
import copy
import faulthandler
import json
import os
import re
import shutil
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import torch  # noqa: E402

from mindspeed_mm.osp import parallel  # noqa: E402


def parse_layout(case: str) -> dict:
    kw = dict(tensor_parallel=1, pipeline_parallel=1, context_parallel=1, sequence_parallel="sp" in case.split("_"),
              virtual_pipeline=None)
    for key, name in (("tp", "tensor_parallel"), ("pp", "pipeline_parallel"), ("cp", "context_parallel"),
                      ("vpp", "virtual_pipeline")):
        m = re.search(rf"(?<![a-z]){key}(\d+)", case)
        if m:
            kw[name] = int(m.group(1))
    return kw


def max_across_ranks(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t)


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "dit")


def fixture_files(name: str):
    """(model class, official config, official weights, inputs, official output) of a 4-head fixture."""
    from safetensors.torch import load_file
    from mindspeed_mm.osp.dit.osp13 import OSP13DiT
    from mindspeed_mm.osp.dit.suv import SUVDiT
    folder = os.path.join(FIXTURES, {"v13": "v13_t2v_h4", "v15": "v15_suv_h4"}[name])
    config = json.load(open(os.path.join(folder, "meta.json")))["config"]
    weights = {k: v.float() for k, v in load_file(os.path.join(folder, "weights.safetensors")).items()}
    tensors = load_file(os.path.join(folder, "tensors.safetensors"))
    expected = tensors.pop("output")
    return (OSP13DiT if name == "v13" else SUVDiT), config, weights, tensors, expected


def fixture_model(name: str):
    """(build, inputs, official output) for an official-implementation fixture, loaded like a user would."""
    cls, config, weights, tensors, expected = fixture_files(name)
    return (lambda: cls.from_official(config, weights)), tensors, expected


def meta_case(case: str, name: str) -> dict:
    """Build the model on the meta device, parallelize it (only this rank's tensors are allocated), then load the
    official weights: the output equals the official one, and this rank holds only its share of the weights."""
    from mindspeed_mm.osp.dit.osp13 import OSP13Config
    from mindspeed_mm.osp.dit.suv import SUVConfig
    parallel.initialize(**parse_layout(case))
    cls, config, weights, inputs, expected = fixture_files(name)
    with torch.device("meta"):
        model = cls((OSP13Config if name == "v13" else SUVConfig).from_official(config))
    pmodel = parallel.parallelize(model)
    try:
        parallel.forward(pmodel, **inputs)
        not_loaded_error = None
    except RuntimeError as exc:
        not_loaded_error = str(exc)
    parallel.load_state_dict(pmodel, weights)  # official key names
    out = parallel.forward(pmodel, num_microbatches=2, **inputs)
    local = sum(p.numel() for p in pmodel.model.parameters())
    return {"official_max_diff": max_across_ranks((out - expected).abs().max().item()),
            "not_loaded_error": not_loaded_error,
            "largest_rank_share": max_across_ranks(local / sum(v.numel() for v in weights.values()))}


def forward_case(case: str, build, inputs, num_microbatches: int, expected=None) -> dict:
    parallel.initialize(**parse_layout(case))
    torch.manual_seed(0)
    model = build()
    with torch.no_grad():
        reference = model(**inputs)
    full = {k: v.clone() for k, v in model.state_dict().items()}
    pmodel = parallel.parallelize(copy.deepcopy(model))
    out = parallel.forward(pmodel, num_microbatches=num_microbatches, **inputs)
    sd = parallel.full_state_dict(pmodel)
    result = {"reference_abs_mean": reference.abs().mean().item(),
            "forward_max_diff": max_across_ranks((out - reference).abs().max().item()),
            "state_dict_keys_equal": sorted(sd) == sorted(full),
            "state_dict_max_diff": max_across_ranks(max((sd[k] - full[k]).abs().max().item() for k in full))}
    if expected is not None:
        result["official_max_diff"] = max_across_ranks((out - expected).abs().max().item())
    return result


def _loss(output, inputs):
    target = torch.sin(3 * inputs["hidden_states"])[..., : output.shape[-1]]
    return torch.nn.functional.mse_loss(output, target)


def _reference_optimizer(model, lr, wd, eps):
    decay = [p for n, p in model.named_parameters() if p.dim() > 1 and not n.endswith(".bias")]
    other = [p for n, p in model.named_parameters() if not (p.dim() > 1 and not n.endswith(".bias"))]
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": other, "weight_decay": 0.0}],
                             lr=lr, eps=eps)


def train_case(layout: str, build, inputs, steps: int = 3, lr=1e-3, wd=0.1, eps=1e-8, clip=1.0) -> dict:
    """`steps` AdamW steps (distributed optimizer) vs the same steps on one device, same global batch."""
    from megatron.core import parallel_state
    parallel.initialize(**parse_layout(layout))
    torch.manual_seed(0)
    model = build()
    reference = copy.deepcopy(model)
    ref_opt = _reference_optimizer(reference, lr, wd, eps)
    pmodel = parallel.parallelize(copy.deepcopy(model))
    optimizer = parallel.make_optimizer(pmodel, lr=lr, weight_decay=wd, eps=eps, clip_grad=clip)
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    local = {k: v.chunk(dp)[dp_rank] for k, v in inputs.items()}
    micro = 2 if parallel.current_layout().pipeline_parallel > 1 else 1
    loss_diff = norm_diff = 0.0
    for _ in range(steps):
        ref_opt.zero_grad()
        ref_loss = _loss(reference(**inputs), inputs)
        ref_loss.backward()
        for p in reference.parameters():  # megatron steps every parameter (weight decay on unused ones too)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        ref_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), clip)
        ref_opt.step()
        loss, norm = parallel.train_step(pmodel, optimizer, _loss, num_microbatches=micro, **local)
        loss_diff = max(loss_diff, abs(loss - ref_loss.item()))
        norm_diff = max(norm_diff, abs(norm - ref_norm.item()))
    sd, ref_sd = parallel.full_state_dict(pmodel), reference.state_dict()
    weight_diff = max((sd[k] - ref_sd[k]).abs().max().item() for k in ref_sd)
    moved = max((ref_sd[k] - v).abs().max().item() for k, v in model.state_dict().items())
    return {"loss_max_diff": max_across_ranks(loss_diff), "grad_norm_max_diff": max_across_ranks(norm_diff),
            "weight_max_diff": max_across_ranks(weight_diff), "weights_moved": moved,
            "last_loss": ref_loss.item()}


def _reference_losses(model, inputs, steps, lr=1e-3, wd=0.1, eps=1e-8, clip=1.0):
    """Uninterrupted single-device AdamW: the loss of every step and the final weights."""
    ref_opt = _reference_optimizer(model, lr, wd, eps)
    losses = []
    for _ in range(steps):
        ref_opt.zero_grad()
        loss = _loss(model(**inputs), inputs)
        loss.backward()
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        ref_opt.step()
        losses.append(loss.item())
    return losses, model.state_dict()


def _train_under(layout: str, model, inputs, steps: int, load_from=None, lr=1e-3, wd=0.1, eps=1e-8, clip=1.0):
    from megatron.core import parallel_state
    parallel.initialize(**parse_layout(layout))
    pmodel = parallel.parallelize(model)
    optimizer = parallel.make_optimizer(pmodel, lr=lr, weight_decay=wd, eps=eps, clip_grad=clip)
    iteration = parallel.load_checkpoint(pmodel, optimizer, load_from) if load_from else 0
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    local = {k: v.chunk(dp)[dp_rank] for k, v in inputs.items()}
    micro = 2 if parallel.current_layout().pipeline_parallel > 1 else 1
    losses = [parallel.train_step(pmodel, optimizer, _loss, num_microbatches=micro, **local)[0]
              for _ in range(steps)]
    return pmodel, optimizer, iteration, losses


def _adam_steps(optimizer) -> list:
    """[smallest, largest] Adam step count over every parameter shard of every rank."""
    inner = [o.optimizer for o in getattr(optimizer, "chained_optimizers", [optimizer])]
    steps = [float(s["step"]) for o in inner for s in o.state.values()]
    return [-max_across_ranks(-min(steps)), max_across_ranks(max(steps))]


def resume_case(spec: str, build, inputs, root: str) -> dict:
    """Train 2 steps under the first layout, save; for every other layout: load into a differently initialised
    model, train 2 more steps. Losses must equal 4 uninterrupted single-device steps."""
    save_layout, *load_layouts = spec.split("-")
    torch.manual_seed(0)
    model = build()
    ref_losses, ref_sd = _reference_losses(copy.deepcopy(model), inputs, 4)
    if torch.distributed.get_rank() == 0:
        shutil.rmtree(root, ignore_errors=True)
    torch.distributed.barrier()
    pmodel, optimizer, _, first = _train_under(save_layout, copy.deepcopy(model), inputs, 2)
    parallel.save_checkpoint(pmodel, optimizer, root, iteration=2)
    try:
        parallel.save_checkpoint(pmodel, optimizer, root, iteration=2)
        overwrite_error = None
    except FileExistsError as exc:
        overwrite_error = str(exc)
    result = {"first_loss_max_diff": max_across_ranks(max(abs(a - b) for a, b in zip(first, ref_losses))),
              "overwrite_error": overwrite_error, "latest": open(os.path.join(root, "latest")).read().strip()}
    for layout in load_layouts:
        torch.manual_seed(1)  # other initial weights: everything must come from the checkpoint
        pmodel, optimizer, iteration, losses = _train_under(layout, build(), inputs, 2, load_from=root)
        sd = parallel.full_state_dict(pmodel)
        result[layout] = {"iteration": iteration, "adam_steps": _adam_steps(optimizer),
                          "loss_max_diff": max_across_ranks(max(abs(a - b) for a, b in zip(losses, ref_losses[2:]))),
                          "weight_max_diff": max_across_ranks(max((sd[k] - ref_sd[k]).abs().max().item()
                                                                  for k in ref_sd))}
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--hang-timeout", type=float, default=600)
    args = ap.parse_args()
    faulthandler.dump_traceback_later(args.hang_timeout, exit=True)  # a hang becomes a traceback
    torch.distributed.init_process_group("gloo")
    torch.set_num_threads(1)
    results = {}
    try:
        parallel.initialize(tensor_parallel=3)
        results["world_size_error"] = None
    except ValueError as exc:
        results["world_size_error"] = str(exc)
    for case in args.cases:
        model, _, layout = case.rpartition("/")
        if model in ("", "toy"):
            from toy import ToyDiT, toy_inputs
            build, inputs, expected = ToyDiT, toy_inputs(), None
        else:
            build, inputs, expected = fixture_model(model)
        try:
            if layout.startswith("resume_"):
                root = os.path.join(os.path.dirname(os.path.abspath(args.out)), "ckpt_" + layout)
                results[case] = resume_case(layout[len("resume_"):], build, inputs, root)
            elif layout.startswith("meta_"):
                results[case] = meta_case(layout[len("meta_"):], model)
            elif layout.startswith("train_"):
                results[case] = train_case(layout[len("train_"):], build, inputs)
            else:
                results[case] = forward_case(layout, build, inputs, num_microbatches=2, expected=expected)
        except Exception:  # the other ranks would wait in a collective: end the whole launch
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
    if torch.distributed.get_rank() == 0:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
