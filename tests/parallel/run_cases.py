"""Run parallel layouts against the single-device model in one torchrun launch; rank 0 writes JSON.

    torchrun --nproc_per_node 4 tests/parallel/run_cases.py --out result.json --cases tp2 tp2sp pp2 ...

A case name is a layout: tp<N>, pp<N>, cp<N>, vpp<N>, "sp" (e.g. tp2sp_pp2). Each case checks, on every rank:
forward output vs the single-device model, and the gathered official state dict vs the original weights.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
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


def forward_case(case: str, build, inputs, num_microbatches: int) -> dict:
    parallel.initialize(**parse_layout(case))
    torch.manual_seed(0)
    model = build()
    reference = model(**inputs)
    full = {k: v.clone() for k, v in model.state_dict().items()}
    pmodel = parallel.parallelize(copy.deepcopy(model))
    out = parallel.forward(pmodel, num_microbatches=num_microbatches, **inputs)
    sd = parallel.full_state_dict(pmodel)
    return {"reference_abs_mean": reference.abs().mean().item(),
            "forward_max_diff": max_across_ranks((out - reference).abs().max().item()),
            "state_dict_keys_equal": sorted(sd) == sorted(full),
            "state_dict_max_diff": max_across_ranks(max((sd[k] - full[k]).abs().max().item() for k in full))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", nargs="+", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="toy")
    args = ap.parse_args()
    torch.distributed.init_process_group("gloo")
    torch.set_num_threads(1)
    from toy import ToyDiT, toy_inputs
    results = {}
    for case in args.cases:
        try:
            results[case] = forward_case(case, ToyDiT, toy_inputs(), num_microbatches=2)
        except Exception as exc:  # report, keep going: one launch covers many cases
            results[case] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-3000:]}
    if torch.distributed.get_rank() == 0:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.out)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
