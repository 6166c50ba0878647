"""EGN vs tuned Adam and SGD at equal epochs: synthetic regression and sklearn digits.

Two tasks, small tanh MLPs in plain JAX (``apply_fn(params, x) -> [b, c]``):

* ``regression``: ``y = sin(x·a) + ½cos(x·b) + 0.05ε`` with ``x ∈ R⁴`` Gaussian, MLP
  4-32-32-1, loss ``½‖f − y‖²`` (EGN's ``'mse'``);
* ``digits``: scikit-learn's bundled 8×8 digits (1,797 images, offline), pixels / 16, MLP
  64-32-10, softmax cross-entropy. Needs ``scikit-learn`` (the ``experiments`` extra).

Every optimizer sees the same minibatches (batch 64, reshuffled each epoch, same seed) for
the same number of epochs. Adam, SGD (momentum 0.9) and EGN are each tuned over a grid of
five values (learning rate; EGN: its constant damping ``λ``, full steps) on a validation
split; the table reports the test loss (and accuracy) of the tuned configuration after the
last epoch. Objective everywhere:
:func:`optzoo.egn.egn_loss` (so all optimizers minimize the same function).

Usage::

    python -m experiments.demos.egn_demo --out results/demos/egn
    python -m experiments.demos.egn_demo --smoke --out /tmp/egn_smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo.egn import egn, egn_loss

__all__ = [
    "Task",
    "init_mlp",
    "mlp_apply",
    "regression_task",
    "digits_task",
    "blobs_task",
    "make_optimizer",
    "train",
    "tune",
    "run_task",
    "main",
]

GRIDS = {  # five values each: equal tuning budgets
    "adam": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
    "sgd": [1e-2, 3e-2, 1e-1, 3e-1, 1.0],
    "egn": [1e-2, 3e-2, 1e-1, 3e-1, 1.0],  # damping λ (constant), learning rate 1
}
SMOKE_GRIDS = {"adam": [1e-2], "sgd": [1e-1], "egn": [1e-1]}


@dataclasses.dataclass(frozen=True)
class Task:
    """A supervised task: splits, loss name and MLP layer sizes."""

    name: str
    loss: str
    sizes: tuple[int, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def init_mlp(seed: int, sizes: Sequence[int]) -> dict:
    """LeCun-normal weights, zero biases: ``{'w0', 'b0', 'w1', ...}``."""
    rng = np.random.default_rng(seed)
    params = {}
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        params[f"w{i}"] = jnp.asarray(rng.standard_normal((m, n)) / np.sqrt(m), jnp.float32)
        params[f"b{i}"] = jnp.zeros((n,), jnp.float32)
    return params


def mlp_apply(params: dict, x: jax.Array) -> jax.Array:
    """tanh MLP ``[b, d_in] -> [b, d_out]`` (linear last layer)."""
    n_layers = len(params) // 2
    h = x
    for i in range(n_layers):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n_layers - 1:
            h = jnp.tanh(h)
    return h


def _split(x, y, n_val, n_test, seed):
    perm = np.random.default_rng(seed).permutation(len(x))
    x, y = x[perm], y[perm]
    n_train = len(x) - n_val - n_test
    return (
        x[:n_train],
        y[:n_train],
        x[n_train : n_train + n_val],
        y[n_train : n_train + n_val],
        x[n_train + n_val :],
        y[n_train + n_val :],
    )


def regression_task(seed: int = 0, n: int = 1792) -> Task:
    """``y = sin(x·a) + ½cos(x·b) + 0.05ε``, ``x ~ N(0, I₄)``; 1/7 val, 2/7 test."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    a, b = rng.standard_normal(4), rng.standard_normal(4)
    y = np.sin(x @ a) + 0.5 * np.cos(x @ b) + 0.05 * rng.standard_normal(n)
    return Task(
        "regression",
        "mse",
        (4, 32, 32, 1),
        *_split(x, y[:, None].astype(np.float32), n // 7, 2 * n // 7, seed + 1),
    )


def digits_task(seed: int = 0) -> Task:
    """scikit-learn's digits (bundled CSV, no download): 1,077 train / 360 val / 360 test."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - optional dependency

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    return Task("digits", "cross_entropy", (64, 32, 10), *_split(x, y, 360, 360, seed))


def blobs_task(seed: int = 0, n: int = 480, dim: int = 8, classes: int = 3) -> Task:
    """Gaussian blobs (a small synthetic classification set, used by the tests)."""
    rng = np.random.default_rng(seed)
    centers = 2.0 * rng.standard_normal((classes, dim))
    y = rng.integers(0, classes, n).astype(np.int32)
    x = (centers[y] + rng.standard_normal((n, dim))).astype(np.float32)
    return Task("blobs", "cross_entropy", (dim, 16, classes), *_split(x, y, n // 6, n // 6, seed))


def make_optimizer(name: str, hp: float, loss: str) -> optax.GradientTransformation:
    """``'adam'`` (lr ``hp``), ``'sgd'`` (lr ``hp``, momentum 0.9) or ``'egn'`` (lr 1,
    constant damping ``λ = hp``, the solver chosen by the loss: Cholesky for MSE, LU for
    cross-entropy)."""
    if name == "adam":
        return optax.adam(hp)
    if name == "sgd":
        return optax.sgd(hp, momentum=0.9)
    if name == "egn":
        return egn(1.0, mlp_apply, loss=loss, damping=hp)
    raise ValueError(f"unknown optimizer {name!r}; expected 'adam', 'sgd' or 'egn'")


def _metrics(task: Task, params: dict, x, y) -> dict:
    objective = egn_loss(mlp_apply, task.loss)
    out = {"loss": float(objective(params, (jnp.asarray(x), jnp.asarray(y))))}
    if task.loss == "cross_entropy":
        pred = np.asarray(jnp.argmax(mlp_apply(params, jnp.asarray(x)), axis=-1))
        out["acc"] = float(np.mean(pred == y))
    return out


def train(
    task: Task, name: str, hp: float, *, epochs: int, batch_size: int = 64, seed: int = 0
) -> dict:
    """Trains one configuration; returns per-epoch train/val/test metrics and seconds."""
    params = init_mlp(seed, task.sizes)
    tx = make_optimizer(name, hp, task.loss)
    objective = egn_loss(mlp_apply, task.loss)
    state = tx.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        batch = (xb, yb)
        if name == "egn":  # EGN computes its direction from the batch; no gradient needed
            updates, state = tx.update(params, state, params, batch=batch)
        else:
            updates, state = tx.update(jax.grad(objective)(params, batch), state, params)
        return optax.apply_updates(params, updates), state

    n = len(task.x_train)
    steps_per_epoch = n // batch_size
    rng = np.random.default_rng(seed + 12345)
    curve = []
    t0 = time.perf_counter()
    for epoch in range(epochs + 1):
        if epoch:
            perm = rng.permutation(n)
            for s in range(steps_per_epoch):
                idx = perm[s * batch_size : (s + 1) * batch_size]
                params, state = step(
                    params, state, jnp.asarray(task.x_train[idx]), jnp.asarray(task.y_train[idx])
                )
        record = {"epoch": epoch, "seconds": time.perf_counter() - t0}
        for split in ("train", "val", "test"):
            m = _metrics(task, params, getattr(task, f"x_{split}"), getattr(task, f"y_{split}"))
            record.update({f"{split}_{k}": v for k, v in m.items()})
        curve.append(record)
    final = curve[-1]["val_loss"]
    return {
        "optimizer": name,
        "hp": hp,
        "curve": curve,
        "final_val_loss": final if np.isfinite(final) else float("inf"),
    }


def tune(
    task: Task,
    name: str,
    grid: Sequence[float],
    *,
    epochs: int,
    batch_size: int = 64,
    seed: int = 0,
) -> dict:
    """Runs every grid value; the tuned one has the lowest final validation loss."""
    runs = [train(task, name, hp, epochs=epochs, batch_size=batch_size, seed=seed) for hp in grid]
    best = min(runs, key=lambda r: r["final_val_loss"])
    return {
        "optimizer": name,
        "best": best,
        "grid": {str(r["hp"]): r["final_val_loss"] for r in runs},
    }


def run_task(
    task: Task,
    *,
    epochs: int,
    grids: dict[str, Sequence[float]],
    batch_size: int = 64,
    seed: int = 0,
) -> dict:
    """Tunes every optimizer of ``grids`` on ``task``; returns a JSON-ready summary."""
    results = {
        name: tune(task, name, grid, epochs=epochs, batch_size=batch_size, seed=seed)
        for name, grid in grids.items()
    }
    table = {}
    for name, res in results.items():
        last = res["best"]["curve"][-1]
        table[name] = {
            "hp": res["best"]["hp"],
            "test_loss": last["test_loss"],
            "train_loss": last["train_loss"],
            "seconds": last["seconds"],
            **({"test_acc": last["test_acc"]} if "test_acc" in last else {}),
        }
    return {
        "task": task.name,
        "loss": task.loss,
        "sizes": list(task.sizes),
        "epochs": epochs,
        "batch_size": batch_size,
        "table": table,
        "runs": results,
    }


def plot_task(summary: dict, path: str) -> None:
    """Test loss (and accuracy) vs epoch of each tuned optimizer."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    has_acc = summary["loss"] == "cross_entropy"
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(11 if has_acc else 6, 4))
    axes = np.atleast_1d(axes)
    for name, res in summary["runs"].items():
        curve = res["best"]["curve"]
        ep = [c["epoch"] for c in curve]
        label = f"{name} ({'λ' if name == 'egn' else 'lr'}={res['best']['hp']:g})"
        axes[0].plot(ep, [c["test_loss"] for c in curve], marker="o", label=label)
        if has_acc:
            axes[1].plot(ep, [c["test_acc"] for c in curve], marker="o", label=label)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("test loss" + (" (cross-entropy)" if has_acc else " (½ squared error)"))
    axes[0].set_title(f"{summary['task']}: tuned optimizers, equal epochs")
    axes[0].legend()
    if has_acc:
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("test accuracy")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="1 epoch, one grid value each")
    p.add_argument("--out", default="results/demos/egn", help="output directory")
    p.add_argument("--epochs", type=int, default=None, help="default: 20 (smoke: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", default="regression,digits")
    args = p.parse_args(argv)
    epochs = args.epochs or (1 if args.smoke else 20)
    grids = SMOKE_GRIDS if args.smoke else GRIDS
    os.makedirs(args.out, exist_ok=True)
    makers = {"regression": regression_task, "digits": digits_task, "blobs": blobs_task}
    summaries = {}
    for name in args.tasks.split(","):
        task = makers[name](args.seed)
        if args.smoke:  # a fraction of the data keeps the smoke run in seconds
            task = dataclasses.replace(task, x_train=task.x_train[:256], y_train=task.y_train[:256])
        summaries[name] = run_task(task, epochs=epochs, grids=grids, seed=args.seed)
        plot_task(summaries[name], os.path.join(args.out, f"egn_{name}.png"))
        for opt, row in summaries[name]["table"].items():
            print(f"{name:10s} {opt:5s} " + " ".join(f"{k}={v:.4g}" for k, v in row.items()))
    out = {
        "command": "python -m experiments.demos.egn_demo",
        "smoke": args.smoke,
        "devices": [str(d) for d in jax.devices()],
        "tasks": summaries,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
