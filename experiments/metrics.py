"""Training metrics: per-group norms, MFU, and the JSONL / TensorBoard writers.

**Records.** ``metrics.jsonl`` holds one JSON object per line, each with ``kind`` (``'train'``
every ``log_every`` steps, ``'eval'`` every ``eval_every`` steps, at step 0 and at the end),
``step`` (optimizer updates done) and ``tokens`` (training tokens consumed). Train records:
``loss`` (this step's objective, MoE auxiliary losses included), ``ce`` (its cross-entropy),
``loss_mean`` (mean ``loss`` over the steps since the previous train record), ``lr`` (the main
learning rate used by this step's update), ``grad_norm`` (global, before clipping) and
``grad_norm/<group>``, ``update_norm[/<group>]`` (the applied parameter change, learning rate
included), ``param_norm[/<group>]`` (after the update), ``update_ratio/<group>`` (=
update / param norm), ``skipped_steps`` (non-finite steps so far), MoE ``moe/*`` losses and
router metrics ``router/<layer>/<metric>`` with their layer means ``router/<metric>``,
``lr_factor/<group>`` (the unit schedule of a group with its own schedule,
``OptimizerConfig.group_schedules``), and the wall-clock fields of :data:`TIMING_KEYS`. Eval
records: ``val_loss`` (mean next-token cross-entropy on the fixed validation tokens,
nats/token) and ``val_bpt`` (bits/token; bits per byte for the byte corpora); for MoE models
the router statistics on the validation set (:func:`val_router_record`):
``val_router/<layer>/<metric>`` and their layer means ``val_router/<metric>`` (``load_cv``,
``load_entropy``, ``dead_expert_fraction``, ``logit_mean``, ``logit_std``, ... of
:func:`experiments.models.router_metrics`) and ``val_router/expert_load``, the per-expert
load ``f`` per layer (``[L][E]``, rows sum to one), drawn as a heatmap by
:func:`plot_router`.

**Timing method.** A training step is two jitted calls: ``grads`` (forward + backward over
the micro-batches) and ``apply`` (the optimizer update through ``nnx.Optimizer.update``).
Between log steps they run asynchronously; ``ms_per_step`` is the wall time of the steps
since the previous train record divided by their number (the first step after start, which
compiles, is excluded and reported as ``compile_s``). At a log step the two calls are timed
separately with a device sync after each: ``fwd_bwd_ms`` and ``opt_ms``, the optimizer's own
cost on the very gradients of that step. ``tokens_per_s`` = tokens per step /
``ms_per_step``; ``mfu`` = ``flops_per_token`` × ``tokens_per_s`` / (device peak × devices),
``None`` when the device's peak is not in :data:`PEAK_FLOPS` (every CPU).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "PEAK_FLOPS",
    "TIMING_KEYS",
    "peak_flops",
    "mfu",
    "group_norms",
    "router_means",
    "val_router_record",
    "plot_router",
    "save_figure",
    "to_python",
    "JsonlWriter",
    "read_jsonl",
    "truncate_jsonl",
    "TensorBoardWriter",
    "deterministic",
    "summarize",
    "tree_bytes",
    "load_metrics",
    "plot_run",
]

#: Dense peak FLOP/s per device by ``device_kind`` substring (vendor datasheets, no
#: sparsity): bfloat16 tensor-core peak and float32 (TF32 tensor-core on NVIDIA, which XLA
#: uses for float32 matmuls at default precision). First match wins.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bfloat16": 989.4e12, "float32": 494.7e12}),
    ("H100", {"bfloat16": 989.4e12, "float32": 494.7e12}),
    ("A100", {"bfloat16": 312e12, "float32": 156e12}),
    ("L4", {"bfloat16": 121e12, "float32": 60e12}),
    ("TPU v6", {"bfloat16": 918e12, "float32": 918e12}),
    ("TPU v5p", {"bfloat16": 459e12, "float32": 459e12}),
    ("TPU v5 lite", {"bfloat16": 197e12, "float32": 197e12}),
    ("TPU v5e", {"bfloat16": 197e12, "float32": 197e12}),
    ("TPU v4", {"bfloat16": 275e12, "float32": 275e12}),
)

#: Record keys that depend on the wall clock (everything else is a deterministic function of
#: the config: resumed runs reproduce them bitwise on CPU).
TIMING_KEYS = frozenset(
    {
        "ms_per_step",
        "fwd_bwd_ms",
        "opt_ms",
        "tokens_per_s",
        "mfu",
        "compile_s",
        "eval_ms",
        "elapsed_s",
        "time",
    }
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """Peak FLOP/s of one device of this kind in ``dtype``, or ``None`` if unknown."""
    for key, peaks in PEAK_FLOPS:
        if key.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def mfu(
    flops_per_token: float, tokens_per_s: float | None, n_devices: int, peak: float | None
) -> float | None:
    """Model FLOPs utilization ``flops_per_token * tokens_per_s / (peak * n_devices)``."""
    if peak is None or tokens_per_s is None or n_devices <= 0:
        return None
    return flops_per_token * tokens_per_s / (peak * n_devices)


def group_norms(tree: Any, groups: Sequence[str], prefix: str) -> dict[str, jax.Array]:
    """Global and per-group L2 norms (float32) of ``tree``'s leaves.

    Args:
      tree: arrays (inside jit).
      groups: the group of every leaf, in ``jax.tree.leaves`` order.
      prefix: metric name, e.g. ``'grad_norm'``: returns ``prefix`` and ``prefix/<group>``.
    """
    sums: dict[str, jax.Array] = {}
    for x, g in zip(jax.tree.leaves(tree), groups, strict=True):
        s = jnp.sum(jnp.square(x.astype(jnp.float32)))
        sums[g] = sums[g] + s if g in sums else s
    out = {prefix: jnp.sqrt(sum(sums.values()))} if sums else {}
    for g, s in sums.items():
        out[f"{prefix}/{g}"] = jnp.sqrt(s)
    return out


def router_means(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``router/<metric>`` = mean over layers of ``router/<layer>/<metric>``."""
    per: dict[str, list] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "router" and parts[1].isdigit():
            per.setdefault(parts[2], []).append(value)
    return {f"router/{name}": float(np.mean(vals)) for name, vals in per.items()}


def val_router_record(batches: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The validation router fields of an eval record from per-batch statistics.

    Args:
      batches: one dict per validation batch, ``{'router/<i>/<metric>': scalar,
        'router/<i>/expert_load': [E]}`` (the model's aux entries; empty for dense models).

    Returns:
      ``{}`` for dense models; else ``val_router/<i>/<metric>`` (mean over batches),
      ``val_router/<metric>`` (mean over layers of those) and ``val_router/expert_load``
      (``[L][E]`` lists: the batch-mean per-expert load of each layer).
    """
    batches = [b for b in batches if b]
    if not batches:
        return {}
    out: dict[str, Any] = {}
    per: dict[str, list] = {}
    loads: dict[int, Any] = {}
    for key in batches[0]:
        parts = key.split("/")
        mean = np.mean(np.stack([np.asarray(b[key], np.float64) for b in batches]), axis=0)
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        if parts[2] == "expert_load":
            loads[int(parts[1])] = mean
            continue
        out[f"val_router/{parts[1]}/{parts[2]}"] = float(mean)
        per.setdefault(parts[2], []).append(float(mean))
    for name, vals in per.items():
        out[f"val_router/{name}"] = float(np.mean(vals))
    if loads:
        out["val_router/expert_load"] = [loads[i].tolist() for i in sorted(loads)]
    return out


def to_python(value: Any) -> Any:
    """JSON-ready value: numpy/jax scalars to float/int/bool, arrays to lists."""
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value
    arr = np.asarray(value)
    if arr.ndim == 0:
        item = arr.item()
        return float(item) if isinstance(item, float) else item
    return arr.tolist()


# ----------------------------------------------------------------------------- JSONL
def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL file (``[]`` if it does not exist); a torn last line (a crash
    while writing) is ignored."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    with open(p) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def truncate_jsonl(path: str | os.PathLike, max_step: int | None) -> list[dict]:
    """Keeps the records with ``step <= max_step`` (all removed for ``None``), rewriting the
    file atomically (temporary file + rename); returns the kept records."""
    p = Path(path)
    kept = [] if max_step is None else [r for r in read_jsonl(p) if r.get("step", 0) <= max_step]
    if p.exists() or kept:
        tmp = p.with_name(p.name + ".tmp")
        with open(tmp, "w") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, p)
    return kept


class JsonlWriter:
    """Appends one JSON record per line and flushes (so a crash loses at most one line)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a")

    def write(self, record: Mapping[str, Any]) -> None:
        self._f.write(json.dumps({k: to_python(v) for k, v in record.items()}) + "\n")
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class TensorBoardWriter:
    """tensorboardX scalars ``<kind>/<key>`` for the numeric fields of each record.

    ``purge_step`` (on resume) discards events at or after that step left by the interrupted
    run. A no-op when ``enabled`` is false.
    """

    def __init__(
        self, logdir: str | os.PathLike, enabled: bool = True, purge_step: int | None = None
    ):
        self._w = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._w = SummaryWriter(str(logdir), purge_step=purge_step)

    def write(self, record: Mapping[str, Any]) -> None:
        if self._w is None:
            return
        kind, step = record.get("kind", "train"), int(record["step"])
        for key, value in record.items():
            if key in ("kind", "step") or isinstance(value, (bool, str)) or value is None:
                continue
            v = to_python(value)
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._w.add_scalar(f"{kind}/{key}", v, step)

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


def deterministic(records: Iterable[Mapping[str, Any]], drop: Sequence[str] = ()) -> list[dict]:
    """Records without the :data:`TIMING_KEYS` (and ``drop``): what must match bitwise
    between an interrupted-and-resumed run and an uninterrupted one."""
    skip = set(TIMING_KEYS) | set(drop)
    return [{k: v for k, v in r.items() if k not in skip} for r in records]


def tree_bytes(tree: Any) -> int:
    """Total bytes of the arrays of a pytree (logical, not per device)."""
    return int(sum(np.dtype(x.dtype).itemsize * math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _median(values: Iterable[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(statistics.median(vals)) if vals else None


def summarize(
    records: Sequence[Mapping[str, Any]],
    tokens_per_step: int,
    *,
    opt_state_bytes: int,
    param_count: int,
    workdir: str,
) -> dict:
    """The run summary of :func:`experiments.train.train_and_evaluate` from its records.

    ``final_val_loss`` / ``best_val_loss`` over the eval records, ``steps`` / ``tokens`` of
    the last record, ``ms_per_step`` and ``opt_ms_per_step`` = medians over the train
    records (robust to the compile step and to eval/checkpoint pauses), ``tokens_per_s`` from
    the median step time, and ``history`` = the eval records.
    """
    evals = [dict(r) for r in records if r.get("kind") == "eval"]
    trains = [r for r in records if r.get("kind") == "train"]
    last = max((r["step"] for r in records), default=0)
    ms = _median(r.get("ms_per_step") for r in trains)
    return {
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        "best_val_loss": min((r["val_loss"] for r in evals), default=None),
        "steps": last,
        "tokens": last * tokens_per_step,
        "ms_per_step": ms,
        "opt_ms_per_step": _median(r.get("opt_ms") for r in trains),
        "tokens_per_s": tokens_per_step / (ms / 1e3) if ms else None,
        "opt_state_bytes": int(opt_state_bytes),
        "param_count": int(param_count),
        "history": evals,
        "workdir": workdir,
    }


# ----------------------------------------------------------------------------- plots
def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Lays out ``fig``, writes it to ``path`` (PNG at 110 dpi; parent directories created)
    and closes it. Returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_metrics(workdir: str | os.PathLike, kind: str | None = None):
    """``metrics.jsonl`` of a run directory as a pandas DataFrame (optionally one ``kind``)."""
    import pandas as pd

    df = pd.DataFrame(read_jsonl(Path(workdir) / "metrics.jsonl"))
    if kind is not None and len(df):
        df = df[df["kind"] == kind].dropna(axis=1, how="all").reset_index(drop=True)
    return df


def plot_run(workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Loss curves of a run against steps, tokens and wall-clock time (the three axes of
    docs/benchmarks.md#curves): train ``loss_mean`` and ``val_loss``; written to
    ``<workdir>/plots/curves.png`` (or ``out``). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wd = Path(workdir)
    tr, ev = load_metrics(wd, "train"), load_metrics(wd, "eval")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for ax, x, label in zip(
        axes, ("step", "tokens", "elapsed_s"), ("step", "tokens", "wall-clock (s)"), strict=True
    ):
        if len(tr) and x in tr:
            ax.plot(tr[x], tr["loss_mean"], lw=1, label="train (mean since last log)")
        if len(ev) and x in ev:
            ax.plot(ev[x], ev["val_loss"], "o-", ms=3, label="validation")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (nats/token)")
    axes[0].legend()
    fig.suptitle(wd.name)
    path = save_figure(fig, Path(out) if out is not None else wd / "plots" / "curves.png")
    if out is None:
        plot_router(wd)
    return path


#: Upper clip of the relative-load heatmap (load / uniform), as the reference's
#: ``--router_heatmap_clip=3.0``.
HEATMAP_CLIP = 3.0


def plot_router(workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path | None:
    """Router plots of an MoE run from its eval records: the per-expert load heatmap of the
    last evaluation (layers x experts, load relative to the uniform ``1/E``, clipped at
    :data:`HEATMAP_CLIP`: 1 = balanced, 0 = dead) and the validation ``load_cv``,
    ``dead_expert_fraction``, ``load_entropy`` and ``logit_std`` against steps; written to
    ``<workdir>/plots/router.png`` (or ``out``). Returns the path, ``None`` when the run has
    no validation router statistics (dense models)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wd = Path(workdir)
    evals = [
        r
        for r in read_jsonl(wd / "metrics.jsonl")
        if r.get("kind") == "eval" and "val_router/expert_load" in r
    ]
    if not evals:
        return None
    last = evals[-1]
    load = np.asarray(last["val_router/expert_load"], np.float64)  # [L, E]
    rel = np.clip(load * load.shape[1], 0.0, HEATMAP_CLIP)
    series = ("load_cv", "dead_expert_fraction", "load_entropy", "logit_std")
    fig, axes = plt.subplots(1, 1 + len(series), figsize=(4.2 + 3.2 * len(series), 3.6))
    im = axes[0].imshow(
        rel, aspect="auto", cmap="viridis", vmin=0.0, vmax=HEATMAP_CLIP, interpolation="nearest"
    )
    axes[0].set_xlabel("expert")
    axes[0].set_ylabel("layer")
    axes[0].set_title(f"val load / uniform, step {last['step']}")
    fig.colorbar(im, ax=axes[0])
    steps = [r["step"] for r in evals]
    for ax, name in zip(axes[1:], series, strict=True):
        ax.plot(steps, [r.get(f"val_router/{name}") for r in evals], "o-", ms=3)
        ax.set_xlabel("step")
        ax.set_title(f"val {name}")
        ax.grid(alpha=0.3)
    fig.suptitle(wd.name)
    return save_figure(fig, Path(out) if out is not None else wd / "plots" / "router.png")
