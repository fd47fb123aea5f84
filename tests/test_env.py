import json
import subprocess
import sys
import textwrap

from mindspeed_mm.osp import cli, envinfo


def test_env_report_lists_versions_and_backends(capsys):
    assert cli.main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"]
    assert "reference" in info["attention backends"] and "sdpa" in info["attention backends"]
    assert info["collective backend"] in ("gloo", "nccl", "hccl")
    assert info["mindspeed_mm namespace"]["osp_visible"]


def test_warns_on_torch_npu_built_for_other_torch():
    info = {"torch": "2.7.1+cpu", "torch_npu": "2.6.0.post3", "cann": "8.1", "numpy": "1.26.4",
            "mindspore": None, "megatron-core": "0.12.1",
            "mindspeed_mm namespace": {"osp_visible": True, "locations": []}}
    warnings = envinfo.warnings_for(info)
    assert any("torch_npu 2.6.0.post3 is built for torch 2.6" in w for w in warnings)
    info.update(torch="2.6.0", cann=None, numpy="2.1.0", mindspore="2.10.0")
    text = " ".join(envinfo.warnings_for(info))
    assert "no CANN toolkit" in text and "numpy<2" in text and "np.product" in text


def test_coexists_with_mindspeed_mm_regular_package(tmp_path):
    """MindSpeed-MM's regular `mindspeed_mm` package installed in the same site dir keeps both importable."""
    import mindspeed_mm.osp
    from pathlib import Path
    ours = Path(mindspeed_mm.osp.__file__).parent
    site = tmp_path / "site"
    (site / "mindspeed_mm" / "models").mkdir(parents=True)
    (site / "mindspeed_mm" / "__init__.py").write_text("ASCEND = True\n")
    (site / "mindspeed_mm" / "models" / "__init__.py").write_text("")
    (site / "mindspeed_mm" / "osp").symlink_to(ours, target_is_directory=True)  # what pip does: one directory
    code = textwrap.dedent("""
        import mindspeed_mm, mindspeed_mm.models, mindspeed_mm.osp
        from mindspeed_mm.osp import envinfo
        assert mindspeed_mm.ASCEND
        print(envinfo.mindspeed_mm_layout()["regular_package"])
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_finder_recovers_osp_behind_a_shadowing_checkout(tmp_path):
    """A MindSpeed-MM source checkout first on sys.path hides namespace portions; our .pth finder recovers it."""
    import site
    import mindspeed_mm.osp
    from pathlib import Path
    repo_root = Path(mindspeed_mm.osp.__file__).parents[2]
    checkout = tmp_path / "MindSpeed-MM"
    (checkout / "mindspeed_mm").mkdir(parents=True)
    (checkout / "mindspeed_mm" / "__init__.py").write_text("CHECKOUT = True\n")
    sitedir = tmp_path / "site"  # what a wheel install lays out: the finder module and its .pth
    sitedir.mkdir()
    (sitedir / "mindspeed_mm").symlink_to(repo_root / "mindspeed_mm", target_is_directory=True)
    for name in ("mindspeed_mm_osp_finder.py", "mindspeed_mm_osp.pth"):
        (sitedir / name).write_text((repo_root / name).read_text())
    probe = "import mindspeed_mm, mindspeed_mm.osp.envinfo as e; print(mindspeed_mm.CHECKOUT, e.__name__)"
    env = {"PYTHONPATH": str(checkout)}
    # -S: no site-packages of the test venv (an editable install has a finder of its own).
    without = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.append({str(sitedir)!r}); {probe}"],
                             env=env, capture_output=True, text=True)
    assert without.returncode != 0 and "mindspeed_mm.osp" in without.stderr
    with_pth = subprocess.run([sys.executable, "-S", "-c",
                               f"import site; site.addsitedir({str(sitedir)!r}); {probe}"],
                              env=env, capture_output=True, text=True)
    assert with_pth.returncode == 0, with_pth.stderr
    assert with_pth.stdout.split() == ["True", "mindspeed_mm.osp.envinfo"]
