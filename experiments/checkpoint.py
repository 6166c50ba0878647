"""Run directories: manifest, config-hash guard, and orbax checkpoints.

A run directory holds::

    manifest.json      resolved config + its hash, git SHA, library versions, devices,
                       corpus, routing table, parameter count; resume history appended
    metrics.jsonl      one record per line (see experiments.metrics)
    tb/                TensorBoard events (tensorboardX)
    checkpoints/<step>/  orbax: 'state' (model params, optimizer state, nnx.Optimizer step)
                       and 'meta' (JSON: step, data-loader position, RNG key, pending losses)
    summary.json       the summary dict of the last completed call

**Atomicity.** Orbax writes each checkpoint into ``<step>.orbax-checkpoint-tmp*`` and renames
it to ``<step>`` once complete (``CheckpointManager`` ignores the temporary directories), so
an interrupted save leaves the previous checkpoint as the latest; ``manifest.json``,
``summary.json`` and a truncated ``metrics.jsonl`` are written to a temporary file and renamed.

**Sharded state.** Every process calls :meth:`Checkpointer.save` / ``restore`` (orbax
writes each array's shards from the processes that hold them); ``restore`` places the
arrays in the shardings of its abstract tree, which may differ from the saving run's (a
resume on another mesh). :func:`load_state` reads a checkpoint onto one local device as
numpy arrays (for notebooks and tests).

**Resume guard.** :func:`prepare_workdir` compares the hash of the new config with the
manifest's before anything is written; a different config raises :class:`ConfigMismatch`
listing the differing fields, and nothing in the directory is touched.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax

from experiments.configs.base import TrainConfig, config_diff, config_hash, hashed_dict, to_dict

__all__ = [
    "ConfigMismatch",
    "Checkpointer",
    "CHECKPOINTS",
    "MANIFEST",
    "METRICS",
    "prepare_workdir",
    "write_json_atomic",
    "read_manifest",
    "git_info",
    "library_versions",
    "device_info",
    "new_manifest",
    "load_state",
]

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"


class ConfigMismatch(ValueError):
    """The run directory belongs to a run with a different config."""


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, p)


def read_manifest(workdir: str | os.PathLike) -> dict | None:
    p = Path(workdir) / MANIFEST
    if not p.exists():
        return None
    with open(p) as f:
        return json.load(f)


def prepare_workdir(workdir: str | os.PathLike, cfg: TrainConfig) -> dict | None:
    """Checks that ``workdir`` may be used for ``cfg`` (writes nothing).

    Returns:
      The existing manifest when the directory holds a run of the same config (resume), else
      ``None`` (a new run).

    Raises:
      ConfigMismatch: the manifest's config hash differs (message lists the fields), or the
        directory holds checkpoints / metrics without a manifest.
    """
    wd = Path(workdir)
    manifest = read_manifest(wd)
    if manifest is None:
        if (wd / CHECKPOINTS).exists() or (wd / METRICS).exists():
            raise ConfigMismatch(
                f"run directory {str(wd)!r} holds checkpoints or metrics but "
                f"no {MANIFEST}; refusing to resume or overwrite it"
            )
        return None
    want = config_hash(cfg)
    have = manifest.get("config_hash")
    if have != want:
        diff = config_diff(manifest.get("config_hashed", {}), hashed_dict(cfg))
        lines = "\n  ".join(diff) if diff else "(fields unknown)"
        raise ConfigMismatch(
            f"run directory {str(wd)!r} was created by a different config (hash {have} in its "
            f"{MANIFEST}, this config {want}); refusing to resume, nothing was written. "
            f"Differences (stored -> requested):\n  {lines}\nUse a new workdir, or restore the "
            "original config."
        )
    return manifest


def git_info() -> dict:
    """``{'sha', 'dirty'}`` of the repository holding this file (``None`` if unavailable)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    if sha.returncode != 0:
        return {"sha": None, "dirty": None}
    return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in (
        "jax",
        "jaxlib",
        "flax",
        "optax",
        "orbax-checkpoint",
        "numpy",
        "optzoo",
        "tensorboardX",
        "tyro",
    ):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict:
    devs = jax.devices()
    return {
        "backend": jax.default_backend(),
        "process_count": jax.process_count(),
        "device_count": len(devs),
        "local_device_count": jax.local_device_count(),
        "device_kinds": sorted({d.device_kind for d in devs}),
        "platform": platform.platform(),
    }


def new_manifest(cfg: TrainConfig, **extra: Any) -> dict:
    """The manifest of a new run (``extra``: resolved model/optimizer, corpus, routing...)."""
    return {
        "name": cfg.name,
        "created": datetime.datetime.now(datetime.UTC).isoformat(),
        "config_hash": config_hash(cfg),
        "config": to_dict(cfg),
        "config_hashed": hashed_dict(cfg),
        "command": sys.argv,
        "git": git_info(),
        "versions": library_versions(),
        "devices": device_info(),
        **extra,
        "resumes": [],
    }


class Checkpointer:
    """A thin wrapper of ``orbax.checkpoint.CheckpointManager`` for the training state.

    Each step stores ``state`` (a pytree of arrays, ``StandardSave``) and ``meta`` (JSON).
    Saves are asynchronous; :meth:`wait` blocks until the last one is committed.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True
            ),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        ocp = self._ocp
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """``(state, meta)`` of ``step``; ``abstract_state`` gives structure, dtypes and
        shardings (``jax.ShapeDtypeStruct`` leaves)."""
        ocp = self._ocp
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return out["state"], dict(out["meta"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_state(workdir: str | os.PathLike, step: int | None = None) -> tuple[dict, dict]:
    """``(state, meta)`` of a run's checkpoint ``step`` (default: the latest), the state as
    nested dicts of numpy arrays (``{'params', 'rest', 'opt'}``), read onto one local device
    whatever mesh saved it.

    Raises:
      FileNotFoundError: the run directory holds no checkpoint (``step``: not that one).
    """
    import numpy as np

    ck = Checkpointer(Path(workdir) / CHECKPOINTS)
    try:
        steps = ck.all_steps()
        step = ck.latest_step() if step is None else step
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"load_state: no checkpoint {step} in {str(workdir)!r} (steps {steps})"
            )
        meta_tree = ck.manager.item_metadata(step)["state"]
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta_tree
        )
        state, meta = ck.restore(step, abstract)
    finally:
        ck.close()
    return jax.tree.map(np.asarray, state), meta
