"""The EF-Muon seed paper's counterexample: Muon stalls, error feedback converges.

Parshakova, Khaled, Crawshaw, Garrigos, Gower, *Muon Does Not Converge on Convex Lipschitz
Functions*, arXiv:2605.08980. On ``W ∈ R^{2×2}``

    f(W) = c·|W₁₁ + W₂₂| + |W₁₁ − W₂₂|      (minimum 0 at W₁₁ = W₂₂ = 0),

a subgradient is diagonal, its polar factor is its sign pattern, and Muon is signed
(momentum) descent on the diagonal. For ``c < 1`` each sign step moves along ``(1, −1)``, so
``W₁₁ + W₂₂`` never changes and ``f ≥ c·|W₁₁ + W₂₂|₀`` for *every* step-size schedule; with
momentum ``β`` the same happens for ``c`` small enough (here ``c = 0.02 < (1−β)/(1+β)`` for
Muon's ``β = 0.95``, Nesterov on). Error feedback (:func:`optzoo.ef_muon`, step size
``γ = 1/√T`` as in the authors' toy script) converges.

Runs (``W₀ = diag(2, 1)``, float32, one jitted scan each; ``svd`` = exact polar factor,
``auto`` = optzoo's default approximate Polar Express):

* ``no_momentum``: ``c = 0.5``, ``β = 0``: Muon under four schedules vs EF-Muon;
* ``muon_defaults``: ``c = 0.02``, ``β = 0.95`` (Nesterov for Muon): the same comparison.

Usage::

    python -m experiments.demos.ef_counterexample --out experiments/results/demos/ef_counterexample
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optzoo

__all__ = ["objective", "subgradient", "run", "main"]

W0 = np.diag([2.0, 1.0])


def objective(w, c):
    """``c·|W₁₁ + W₂₂| + |W₁₁ − W₂₂|``."""
    return c * jnp.abs(w[0, 0] + w[1, 1]) + jnp.abs(w[0, 0] - w[1, 1])


def subgradient(w, c):
    """Diagonal subgradient, ``sign(0) = +1`` (the toy script's convention)."""
    s1 = jnp.where(w[0, 0] + w[1, 1] == 0, 1.0, jnp.sign(w[0, 0] + w[1, 1]))
    s2 = jnp.where(w[0, 0] - w[1, 1] == 0, 1.0, jnp.sign(w[0, 0] - w[1, 1]))
    return jnp.diag(jnp.stack([c * s1 + s2, c * s1 - s2])).astype(w.dtype)


def run(tx: optax.GradientTransformation, c: float, steps: int) -> dict:
    """``steps`` updates from ``W₀``; returns f and ``W₁₁ + W₂₂`` on a log-spaced step grid."""

    def body(carry, _):
        w, s = carry
        u, s = tx.update(subgradient(w, c), s, w)
        w = optax.apply_updates(w, u)
        return (w, s), (objective(w, c), w[0, 0] + w[1, 1])

    w = jnp.asarray(W0, jnp.float32)
    t0 = time.perf_counter()
    (w, _), (fs, sums) = jax.jit(lambda w: jax.lax.scan(body, (w, tx.init(w)), None, length=steps))(
        w
    )
    fs, sums = np.asarray(fs, np.float64), np.asarray(sums, np.float64)
    grid = np.unique(np.geomspace(1, steps, 60).astype(int)) - 1
    return {
        "f0": float(objective(jnp.asarray(W0), c)),
        "final_f": float(fs[-1]),
        "tail_mean_f": float(fs[-max(1, steps // 10) :].mean()),
        "tail_max_f": float(fs[-max(1, steps // 10) :].max()),
        "min_f": float(fs.min()),
        "final_sum": float(sums[-1]),
        "sum_range": [float(sums.min()), float(sums.max())],
        "steps": [int(i) + 1 for i in grid],
        "f": [float(fs[i]) for i in grid],
        "seconds": time.perf_counter() - t0,
    }


SCHEDULES = {
    "const_0.05": lambda t: 0.05,
    "1/(t+1)": lambda t: 1.0 / (t + 1.0),
    "1/(t+1)^0.51": lambda t: (t + 1.0) ** -0.51,
    "0.3/sqrt(t+1)": lambda t: 0.3 / jnp.sqrt(t + 1.0),
}


def cases(steps: int) -> dict:
    gamma = 1.0 / np.sqrt(steps)
    out = {}
    for case, c, beta in (("no_momentum", 0.5, 0.0), ("muon_defaults", 0.02, 0.95)):
        runs = {}
        for name, sched in SCHEDULES.items():
            runs[f"muon[svd, {name}]"] = run(
                optzoo.muon(sched, beta=beta, nesterov=True, ortho_method="svd"), c, steps
            )
        runs["muon[auto, 1/(t+1)]"] = run(
            optzoo.muon(SCHEDULES["1/(t+1)"], beta=beta, nesterov=True), c, steps
        )
        for method in ("svd", "auto"):
            runs[f"ef_muon[{method}, 1/sqrt(T)]"] = run(
                optzoo.ef_muon(gamma, beta, ortho_method=method), c, steps
            )
        runs["ef_muon[sign, 1/sqrt(T)]"] = run(
            optzoo.ef_muon(gamma, beta, compressor="sign"), c, steps
        )
        floor = c * abs(W0[0, 0] + W0[1, 1])
        out[case] = {"c": c, "beta": beta, "steps": steps, "muon_floor": floor, "runs": runs}
        for name, r in runs.items():
            print(
                f"{case:14s} {name:28s} f_T={r['final_f']:.4g} "
                f"last-10%: mean {r['tail_mean_f']:.4g} max {r['tail_max_f']:.4g} "
                f"min={r['min_f']:.4g} "
                f"sum={r['final_sum']:.4f} (floor {floor:g})",
                flush=True,
            )
    return out


def plot(results: dict, path: str) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.2))
    for ax, (case, res) in zip(axes, results.items(), strict=True):
        for name, r in res["runs"].items():
            ls = "-" if name.startswith("ef") else "--"
            ax.plot(r["steps"], r["f"], ls, label=name)
        ax.axhline(res["muon_floor"], color="gray", lw=0.8, ls=":", label="Muon floor c·3")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("f(W_t)")
        ax.set_title(f"{case}: c = {res['c']}, β = {res['beta']}")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="experiments/results/demos/ef_counterexample")
    p.add_argument("--steps", type=int, default=10000)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results = cases(args.steps)
    plot(results, os.path.join(args.out, "ef_counterexample.png"))
    out = {
        "command": "python -m experiments.demos.ef_counterexample",
        "W0": W0.tolist(),
        "results": results,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
