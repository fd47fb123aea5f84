"""The denoisers against the official implementations (fixtures), run-time sparsity and the full-size builds."""
from __future__ import annotations

import pytest
import torch

from dit_helpers import DIT_FIXTURES, V13_CASES, V15_CASES, read_case, run_model
from mindspeed_mm.osp.dit import OSP13DiT, SUVDiT

torch.set_num_threads(1)  # tiny shapes: one thread is fastest on a shared machine


def build(case: str):
    meta, weights, tensors = read_case(case)
    cls = OSP13DiT if case.startswith("v13") else SUVDiT
    return cls.from_official(meta["config"], weights), meta, tensors


@pytest.mark.parametrize("case", V13_CASES + V15_CASES)
def test_matches_official_implementation(case):
    model, _, tensors = build(case)
    with torch.no_grad():
        out = run_model(model, case, tensors)
    diff = (out - tensors["output"]).abs().max().item()
    assert out.shape == tensors["output"].shape
    assert diff <= 1e-4, f"{case}: max abs diff {diff:.3e}"


def test_v13_plan_follows_the_official_rule():
    meta, _, _ = read_case("v13_t2v")
    model, _, _ = build("v13_t2v")
    want = [(row["k"] if row["sparse"] else 1, row["group"]) for row in meta["per_block_skiparse"]]
    got = [(k, g) for k, g in model.sparsity_plan()]
    # a dense block's group flag is irrelevant
    assert [(k, g if k > 1 else None) for k, g in got] == [(k, g if k > 1 else None) for k, g in want]
    full = OSP13DiT.from_preset("osp13_t2v_2b").sparsity_plan()
    assert [i for i, (k, _) in enumerate(full) if k > 1] == list(range(2, 30))
    assert all(k == 4 and g == (i % 2 == 1) for i, (k, g) in enumerate(full) if 1 < i < 30)


@pytest.mark.parametrize("case", ["v13_t2v", "v15_suv"])
def test_run_time_sparsity(case):
    model, _, tensors = build(case)
    with torch.no_grad():
        trained = run_model(model, case, tensors)
        dense = run_model(model, case, tensors, sparsity="dense")
        k1 = run_model(model, case, tensors, sparsity=1)
        k2 = run_model(model, case, tensors, sparsity=2)
        model.set_sparsity("dense")
        dense_set = run_model(model, case, tensors)
        model.set_sparsity(None)
        again = run_model(model, case, tensors)
    assert (dense - trained).abs().max() > 1e-3          # sparsity changes the function
    assert (k2 - trained).abs().max() > 1e-3 and (k2 - dense).abs().max() > 1e-3
    torch.testing.assert_close(k1, dense, rtol=0, atol=0)
    torch.testing.assert_close(dense_set, dense, rtol=0, atol=0)
    torch.testing.assert_close(again, trained, rtol=0, atol=0)
    torch.testing.assert_close(trained, tensors["output"], rtol=0, atol=1e-4)


def test_suv_per_stage_sparsity():
    model, _, tensors = build("v15_suv")
    assert [k for k, _ in model.sparsity_plan([1, 3, 5, 3, 1])] == [1, 1, 3, 3, 5, 5, 3, 3, 1, 1]
    with torch.no_grad():
        out = run_model(model, "v15_suv", tensors, sparsity=[1, 3, 5, 3, 1])   # k not dividing anything
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="one int per stage"):
        model.sparsity_plan([1, 2])


def read_manifest(name: str) -> tuple[dict, int]:
    shapes, total = {}, None
    for line in (DIT_FIXTURES / "keys" / name).read_text().splitlines():
        if line.startswith("# total numel"):
            total = int(line.split()[-1])
        elif line.strip() and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            shapes[key] = [int(s) for s in shape.strip("[] ").split(",") if s.strip()]
    return shapes, total


@pytest.mark.parametrize("cls,preset,manifest,count", [
    (OSP13DiT, "osp13_t2v_2b", "keys_v13_t2v_2B.txt", 2_771_981_600),
    (SUVDiT, "osp15_suv_8b", "keys_v15_suv_8B.txt", 8_504_661_120),
])
def test_full_size_presets_match_the_released_models(cls, preset, manifest, count):
    model = cls.from_preset(preset)  # meta device: no memory
    assert sum(p.numel() for p in model.parameters()) == count
    want, total = read_manifest(manifest)
    assert total == count
    got = {k: list(v.shape) for k, v in model.official_state_dict().items()}
    assert sorted(got) == sorted(want)
    assert got == want
