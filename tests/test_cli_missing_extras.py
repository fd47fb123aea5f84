"""A missing optional package ends any `osp` command in one line naming the package, what needs it and how to
install it (never a raw ModuleNotFoundError); `osp env` lists the missing ones with the same facts."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from mindspeed_mm.osp import cli
from mindspeed_mm.osp.cli import env as env_command


def test_a_command_missing_an_optional_package_says_what_to_install(tmp_path, capsys, monkeypatch):
    anno = tmp_path / "anno.json"
    anno.write_text('[{"path": "a.jpg", "cap": ["a red circle"]}]')
    monkeypatch.setitem(sys.modules, "transformers", None)     # `import transformers` now fails as if absent
    assert cli.main(["text", "tiny", str(tmp_path / "t"), "--captions", str(anno), "--dim", "16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("osp text tiny: error: the Python package 'transformers' is not installed")
    assert "pip install transformers" in err and "pip install -e '.[text]'" in err and "Traceback" not in err
    assert not (tmp_path / "t").exists()


def test_other_missing_modules_keep_their_traceback(monkeypatch):
    def broken(_args):
        raise ModuleNotFoundError("No module named 'not_an_osp_extra'", name="not_an_osp_extra")
    monkeypatch.setattr(env_command, "run", broken)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["env"])


def test_env_lists_missing_packages_with_the_commands_they_break(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a))
    assert cli.main(["env"]) == 0
    out = capsys.readouterr().out
    assert "MISSING: diffusers, needed for the v1.3 sampler (osp sample of v1.3 models); pip install diffusers or " \
           "pip install -e '.[sample]'" in out


def test_every_command_and_flag_has_help():
    """`osp X --help` explains every flag and every command group (the whole class, not single instances)."""
    import argparse

    def undocumented(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    yield from undocumented(subparser, f"{name} {sub}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                yield f"{name} {'/'.join(action.option_strings) or action.dest}"
        if name != "osp" and not parser.description:
            yield f"{name}: no description"

    assert list(undocumented(cli.build_parser(), "osp")) == []
