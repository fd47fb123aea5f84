"""The denoisers against the official implementations (fixtures), run-time sparsity and the full-size builds."""
from __future__ import annotations

import pytest
import torch

from dit_helpers import DIT_FIXTURES, V13_CASES, V15_CASES, one_torch_thread, read_case, run_model  # noqa: F401
from mindspeed_mm.osp.dit import OSP13DiT, SUVDiT



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


@pytest.mark.parametrize("case", ["v13_t2v_h4", "v15_suv_h4"])
def test_pipeline_style_split_equals_forward(case):
    model, _, t = build(case)
    args = ((t["hidden_states"], t["timestep"], t["encoder_hidden_states"], t["encoder_attention_mask"],
             t["attention_mask"]) if case.startswith("v13") else
            (t["hidden_states"], t["timestep"], t["encoder_hidden_states"], t["encoder_attention_mask"],
             t["pooled_projections"], t["attention_mask"]))
    with torch.no_grad():
        state = model.prepare(*args)
        for start, stop in ((0, 3), (3, 7), (7, len(model.transformer_blocks))):  # cuts inside stages
            state = model.run_blocks(state, start, stop)
        out = model.finish(state)
    torch.testing.assert_close(out, t["output"], rtol=0, atol=1e-4)


def test_heads_follow_column_sharded_weights():
    """Tensor-parallel layout from outside: each rank keeps half the heads of proj_q/k/v (column split) and half
    the input columns of proj_out (row split); the sum of the ranks' outputs is the full attention output."""
    from mindspeed_mm.osp.dit.rope import RoPE3D
    from mindspeed_mm.osp.dit.suv import SUVAttention

    torch.manual_seed(0)
    hd, d = 16, 64  # 4 heads, 2 per rank
    full = SUVAttention(d, hd, bias=True, eps=1e-6, context_pre_only=False)
    x, e = torch.randn(40, 2, d), torch.randn(5, 2, d)
    rope = RoPE3D.v15(hd)
    tables = rope.tables((2, 4, 5), x.device, x.dtype)
    with torch.no_grad():
        want = full(x, e, None, None, rope, tables, 2, True)
        got = [torch.zeros_like(want[0]), torch.zeros_like(want[1])]
        for rank in range(2):
            part = SUVAttention(d, hd, bias=True, eps=1e-6, context_pre_only=False)
            rows = slice(rank * d // 2, (rank + 1) * d // 2)
            for name in ("proj_q", "proj_k", "proj_v", "added_proj_q", "added_proj_k", "added_proj_v"):
                src = getattr(full, name)
                setattr(part, name, torch.nn.Linear(d, d // 2))
                getattr(part, name).weight.copy_(src.weight[rows])
                getattr(part, name).bias.copy_(src.bias[rows])
            for name in ("proj_out", "added_proj_out"):
                lin = torch.nn.Linear(d // 2, d)
                lin.weight.copy_(getattr(full, name).weight[:, rows])
                lin.bias.copy_(getattr(full, name).bias if rank == 0 else torch.zeros(d))
                setattr(part, name, lin)
            for name in ("norm_proj_q", "norm_proj_k", "norm_added_proj_q", "norm_added_proj_k"):
                getattr(part, name).weight.copy_(getattr(full, name).weight)
            out = part(x, e, None, None, rope, tables, 2, True)
            got = [g + o for g, o in zip(got, out)]
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
