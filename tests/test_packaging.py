"""The installed package is the library alone: no top-level ``experiments`` on a user's path.

The harness (``experiments/``) stays at the repository's top level and runs from a checkout
(``python -m experiments.train`` from the repository root finds it on the working directory),
so the wheel must not ship it: an installed ``experiments`` package would shadow a user's own.
The fast test reads ``pyproject.toml``'s package-find configuration against the repository's
top-level packages; the slow one builds the wheel (with build isolation, as ``pip install``
and ``python -m build`` do, so it needs the package index), checks its entries, installs it
alone into a scratch directory and runs one optimizer step from outside the checkout, as
``.ci/run``'s ``package`` step does.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _top_level_packages() -> list[str]:
    return sorted(p.name for p in REPO.iterdir() if (p / "__init__.py").is_file())


def _found(name: str, find: dict) -> bool:
    """Whether setuptools' ``packages.find`` (include/exclude globs) selects ``name``."""
    include = find.get("include", ["*"])
    exclude = find.get("exclude", [])
    return any(fnmatch.fnmatchcase(name, p) for p in include) and not any(
        fnmatch.fnmatchcase(name, p) for p in exclude
    )


def test_pyproject_ships_the_library_only():
    """Of the repository's top-level packages only ``optzoo`` (and its subpackages) is
    selected; the harness is not (repro of the old config ``include = ["optzoo*",
    "experiments*"]``: ``experiments`` and ``experiments.configs`` were selected)."""
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    tops = _top_level_packages()
    assert {"optzoo", "experiments"} <= set(tops)
    assert [t for t in tops if _found(t, find)] == ["optzoo"]
    for sub in ("experiments.configs", "experiments.bench", "experiments.launch"):
        assert not _found(sub, find), sub
    assert _found("optzoo.sub", find)


def test_pyproject_metadata_is_current():
    """An SPDX license string (the ``license = {text = ...}`` table is deprecated by
    setuptools), a build backend that understands it, ``tensorboard`` in the harness extra
    (the README runs it) and ``build`` in the dev extra (``.ci/run`` builds the wheel)."""
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]
    extras = project["optional-dependencies"]

    def names(extra):
        return {req.split(">")[0].split("=")[0].split("[")[0].strip() for req in extras[extra]}

    assert "tensorboard" in names("experiments")
    assert "build" in names("dev")


def _build_wheel(src: Path, out: Path) -> tuple[Path, str]:
    if importlib.util.find_spec("build") is not None:
        cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(src)]
    else:  # a venv installed before ``build`` joined the dev extra
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    (wheel,) = out.glob("*.whl")
    return wheel, log


@pytest.mark.slow
def test_wheel_installs_alone_and_runs_a_step(tmp_path):
    """The built wheel's top-level entries are ``optzoo`` and its dist-info only; the build
    prints no deprecation; installed without dependencies into a scratch directory (this
    interpreter provides jax and optax) it imports from there and runs one muon step."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "optzoo", src / "optzoo", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        REPO / "experiments",
        src / "experiments",
        ignore=shutil.ignore_patterns("__pycache__", "results"),
    )
    wheel, log = _build_wheel(src, tmp_path / "dist")
    assert "deprecat" not in log.lower(), log
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"optzoo", wheel.name.split("-py")[0] + ".dist-info"}, tops

    target = tmp_path / "target"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert not (target / "experiments").exists()
    script = (
        "import sys, jax.numpy as jnp, optzoo\n"
        "assert optzoo.__file__.startswith(sys.argv[1]), optzoo.__file__\n"
        "p = {'w': jnp.ones((4, 3)), 'b': jnp.zeros((3,))}\n"
        "tx = optzoo.muon(0.02)\n"
        "u, _ = tx.update(p, tx.init(p), p)\n"
        "print(sorted(u), u['w'].shape)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "['b', 'w'] (4, 3)" in proc.stdout
