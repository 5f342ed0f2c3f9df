"""Untrusted files never run code: no pickle, weights-only loads, no remote code by default."""

import ast
from pathlib import Path

import pytest

from metarec.cli import main

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    path
    for folder in ("metarec", "train", "retrieval", "bench")
    for path in (REPO / folder).rglob("*.py")
)


def calls(name: str):
    """(file, call) for every call of ``<something>.<name>(...)`` or ``name(...)`` in the code."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                function = node.func
                called = (
                    function.attr
                    if isinstance(function, ast.Attribute)
                    else getattr(function, "id", None)
                )
                if called == name:
                    yield path, node


def keyword(call: ast.Call, name: str):
    for argument in call.keywords:
        if argument.arg == name and isinstance(argument.value, ast.Constant):
            return argument.value.value
    return None


def test_sources_were_found():
    assert len(SOURCES) > 40


def test_every_torch_load_is_weights_only():
    found = [(p, c) for p, c in calls("load") if getattr(c.func, "value", None) is not None
             and getattr(c.func.value, "id", None) == "torch"]  # fmt: skip
    for path, call in found:
        assert keyword(call, "weights_only") is True, f"{path}:{call.lineno}"


def test_every_numpy_load_refuses_pickles():
    found = [(p, c) for p, c in calls("load") if getattr(c.func, "value", None) is not None
             and getattr(c.func.value, "id", None) == "np"]  # fmt: skip
    assert found
    for path, call in found:
        assert keyword(call, "allow_pickle") is False, f"{path}:{call.lineno}"


def test_no_pickle_module_anywhere():
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", "")]
                assert not {"pickle", "cPickle", "dill", "joblib"} & set(names), path


def test_remote_code_is_never_switched_on_in_code():
    for path, call in calls("from_pretrained"):
        value = keyword(call, "trust_remote_code")
        assert value is not True, f"{path}:{call.lineno}"


@pytest.mark.parametrize("flag, expected", [([], "false"), (["--trust-remote-code"], "true")])
def test_remote_code_follows_the_command_line_flag(flag, expected, capsys):
    assert main(["config", "show", "--config", str(REPO / "configs" / "quick.yaml"), *flag]) == 0
    assert f"trust_remote_code: {expected}" in capsys.readouterr().out
