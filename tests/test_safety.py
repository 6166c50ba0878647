"""Configs are data: no code path evaluates user strings, and loading configs, results or
checkpoints never executes code.

Two layers:

* a static scan (``ast``) of every Python file of ``optzoo/``, ``experiments/`` and
  ``notebooks/`` for the constructs that turn data into code: ``eval``/``exec``/``compile``/
  ``__import__``, ``pickle``/``dill``/``cloudpickle``/``marshal``/``shelve`` loads,
  ``yaml.load``/``yaml.unsafe_load``, ``np.load(..., allow_pickle=True)``, ``jax/np``
  ``.loads`` of pickles, and ``importlib.import_module`` with a non-literal argument outside
  the one reviewed place (the optimizer table imports ``optzoo.<module>`` where ``module``
  comes from the table, never from the config). A negative control runs the scanner on a
  snippet holding each construct, so a scanner that finds nothing fails.
* behaviour: an optimizer name, option or preset that names code (``"os.system"``,
  ``"__import__('os')"``) is rejected as unknown data, and a manifest / checkpoint ``meta``
  whose strings hold code is read as plain strings.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from experiments import checkpoint as ckpt_lib
from experiments.configs import OptimizerConfig, TrainConfig, get_config

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("optzoo", "experiments", "notebooks")
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "execfile"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve"}
# (file relative to the repo, function) allowed to call importlib.import_module with a
# computed name: the optimizer table's module names are constants of experiments/optimizers.py
REVIEWED_IMPORTS = {("experiments/optimizers.py", "_optzoo")}


def _call_name(node: ast.Call) -> str:
    f = node.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    # a method of a computed object (``jit(f).lower(x).compile()``) is not a builtin
    parts.append(f.id if isinstance(f, ast.Name) else "<expr>")
    return ".".join(reversed(parts))


def scan(source: str, filename: str) -> list[str]:
    """Findings ``'file:line: what'`` for the data-to-code constructs in ``source``."""
    tree = ast.parse(source, filename)
    found = []

    def visit(node, func):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            func = node.name
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for m in mods:
                if m.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"{filename}:{node.lineno}: imports {m}")
        if isinstance(node, ast.Call):
            name = _call_name(node)
            last = name.rsplit(".", 1)[-1]
            if name in FORBIDDEN_CALLS:
                found.append(f"{filename}:{node.lineno}: calls {name}()")
            if name.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{filename}:{node.lineno}: calls {name}()")
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                found.append(f"{filename}:{node.lineno}: calls {name}()")
            if last == "load" and name.split(".")[0] in ("np", "numpy", "jnp"):
                for kw in node.keywords:
                    if kw.arg == "allow_pickle" and not (
                        isinstance(kw.value, ast.Constant) and kw.value.value is False
                    ):
                        found.append(f"{filename}:{node.lineno}: {name}(allow_pickle=...)")
            if (
                name in ("importlib.import_module", "import_module")
                and node.args
                and not (isinstance(node.args[0], ast.Constant))
            ):
                if (filename, func) not in REVIEWED_IMPORTS:
                    found.append(f"{filename}:{node.lineno}: import_module(<computed>)")
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(tree, None)
    return found


def test_no_data_to_code_constructs_in_the_sources():
    files = [p for d in SCANNED for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 40, "the scan must cover the package, the harness and the notebooks"
    findings = []
    for p in files:
        findings += scan(p.read_text(), str(p.relative_to(REPO)))
    assert findings == []


def test_the_scanner_finds_each_construct():
    # negative control: every construct the scan is meant to catch is reported
    snippet = "\n".join(
        [
            "import pickle",
            "import numpy as np, yaml, importlib",
            "def f(s, name):",
            "    eval(s)",
            "    exec(s)",
            "    compile(s, 'x', 'exec')",
            "    __import__(s)",
            "    pickle.loads(s)",
            "    yaml.load(s)",
            "    np.load(s, allow_pickle=True)",
            "    importlib.import_module(name)",
            "    np.load(s, allow_pickle=False)",  # safe: not reported
            "    importlib.import_module('json')",  # literal: not reported
            "    jax.jit(f).lower(s).compile()",  # a method named compile: not reported
        ]
    )
    found = scan(snippet, "snippet.py")
    assert len(found) == 9, found
    for what in (
        "imports pickle",
        "eval()",
        "exec()",
        "compile()",
        "__import__()",
        "pickle.loads()",
        "yaml.load()",
        "allow_pickle",
        "import_module(<computed>)",
    ):
        assert any(what in f for f in found), (what, found)


@pytest.mark.parametrize(
    "name", ["os.system", "__import__('os').system('true')", "optzoo.linalg", "muon; import os"]
)
def test_an_optimizer_name_that_names_code_is_rejected(name):
    # refused when the config is constructed (names are looked up in a table, never run)
    with pytest.raises(ValueError, match="OptimizerConfig.name.*not a known optimizer"):
        OptimizerConfig(name=name)


def test_a_preset_name_that_names_code_is_rejected():
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("__import__('os')")


def test_stored_strings_with_code_are_read_as_data(tmp_path):
    # a manifest whose fields hold code: reading it returns the strings, nothing runs
    payload = "__import__('pathlib').Path('PWNED').touch()"
    (tmp_path / ckpt_lib.MANIFEST).write_text(json.dumps({"config_hash": payload, "name": payload}))
    man = ckpt_lib.read_manifest(tmp_path)
    assert man["name"] == payload
    # and a config carrying it is refused as a different run, not evaluated
    cfg = dataclasses.replace(TrainConfig(), name="x")
    with pytest.raises(ckpt_lib.ConfigMismatch):
        ckpt_lib.prepare_workdir(tmp_path, cfg)
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
