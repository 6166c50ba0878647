"""Optimizer step time on a GPT-2-small-shaped tree: optzoo's Muon vs optax's, and AdamW.

Times one jitted ``tx.update`` (plus ``optax.apply_updates``) on the parameter tree of
:func:`experiments.bench.trees.gpt2_small_like_tree` with fixed random float32 gradients.
The optimizer state (and the parameters) are **donated** to the jitted step, as in a training
loop, so no state copy is timed. Every optimizer is compiled and warmed up once, then the
``--reps`` timed calls go round-robin over the optimizers (so load from other processes on a
shared machine hits every row alike); each row reports the median (and minimum) wall time
(``jax.block_until_ready`` on the outputs). All optimizers' states are alive at once: about
5 GB of host/device memory for the full tree.

Rows (``OPTIMIZERS``, a dict name -> factory ``(hidden_layout, params) -> tx``; add entries
to time other optimizers on the same tree):

* ``adamw``: ``optax.adamw`` on every leaf (the memory-bound baseline);
* ``optax.contrib.muon``: Muon (Jordan's NS5, per-leaf vmap) on the hidden matrices, its
  internal AdamW elsewhere, with the same partition as optzoo's (dimension numbers ``None``
  for embeddings, positions, norms and biases) and the same AdamW settings;
* ``optzoo.muon[newton_schulz]``: same NS5 as optax, but every same-shape matrix of the tree
  orthogonalized in one batched call — the grouping gain alone;
* ``optzoo.muon``: the default orthogonalizer (``'auto'``: Polar Express / its Gram form on
  rectangular blocks) — grouping plus orthogonalizer gain.

The "hidden matrices" are the ``kernel`` leaves under ``layers/`` (for the stacked tree each is
``[12, m, n]``, a batch of 12 matrices); token/position embeddings, norms and biases use AdamW.

Usage::

    python -m experiments.bench.step_time                       # per-layer tree
    python -m experiments.bench.step_time --tree gpt2-stacked --out results/bench/st.json
    python -m experiments.bench.step_time --layers 2 --reps 3   # quick: first 2 layers only
    python -m experiments.bench.step_time --tree tiny --all     # every optimizer, tiny model
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import optzoo
from experiments.bench import write_result
from experiments.bench.trees import (
    GPT2_SMALL,
    gpt2_small_like_tree,
    hidden_layout,
    is_hidden_kernel,
)
from optzoo.layout import MatrixLayout
from optzoo.muon import muon as zoo_muon

__all__ = ["OPTIMIZERS", "BASELINE", "hidden_layout", "make_tree", "time_step", "run", "main"]

#: The row every Muon ratio is taken against.
BASELINE = "optax.contrib.muon"
LR, ADAM_LR, ADAM_B2 = 0.02, 3e-4, 0.95
#: The AdamW of the non-hidden leaves: optax.contrib.muon's adam_learning_rate / adam_b2 below.
FALLBACK = optzoo.fallback.AdamW(learning_rate=ADAM_LR, b2=ADAM_B2)


def _optax_dimension_numbers(params: Any) -> Any:
    """The same partition for optax.contrib.muon: last two axes, ``None`` off the hidden set."""
    dn = optax.contrib.MuonDimensionNumbers

    def pick(p, x):
        return dn(len(x.shape) - 2, len(x.shape) - 1) if is_hidden_kernel(p, x) else None

    return jax.tree_util.tree_map_with_path(pick, params)


Factory = Callable[[Any], optax.GradientTransformation]

#: name -> factory(params) -> transformation. Extend to time other optimizers.
OPTIMIZERS: dict[str, Factory] = {
    "adamw": lambda params: optax.adamw(ADAM_LR, b2=ADAM_B2, weight_decay=0.0),
    BASELINE: lambda params: optax.contrib.muon(
        LR,
        adam_learning_rate=ADAM_LR,
        adam_b2=ADAM_B2,
        muon_weight_dimension_numbers=_optax_dimension_numbers(params),
    ),
    "optzoo.muon[newton_schulz]": lambda params: zoo_muon(
        LR, ortho_method="newton_schulz", layout=hidden_layout, fallback=FALLBACK
    ),
    "optzoo.muon": lambda params: zoo_muon(LR, layout=hidden_layout, fallback=FALLBACK),
}

#: ``--all``: the rest of the zoo, each next to its optax twin where optax has one (same
#: hyperparameters; GaLore ranks: 128 on GPT-2, 32 on the tiny model). Matrix methods act on
#: the hidden matrices and send the rest to their AdamW fallback, as Muon does above.
ZOO: dict[str, Factory] = {
    "optax.lion": lambda params: optax.lion(3e-4, weight_decay=0.0),
    "optzoo.lion": lambda params: optzoo.lion(3e-4, weight_decay=0.0),
    "optax.contrib.galore": lambda params: optax.contrib.galore(
        1e-2, rank=_rank(params), update_proj_gap=200
    ),
    # the GaLore family projects every 2-D leaf, as optax.contrib.galore does (MatrixLayout():
    # the explicit form of that choice; the default layout refuses embeddings and heads)
    "optzoo.galore[optax-like]": lambda params: optzoo.galore(
        1e-2,
        _rank(params),
        update_proj_gap=200,
        scale=1.0,
        side="optax-like",
        layout=MatrixLayout(),
    ),
    "optzoo.galore": lambda params: optzoo.galore(
        1e-2, _rank(params), update_proj_gap=200, layout=MatrixLayout()
    ),
    "optzoo.natural_galore": lambda params: optzoo.natural_galore(
        1e-2, _rank(params), update_proj_gap=200, layout=MatrixLayout()
    ),
    "optzoo.online_subspace_descent": lambda params: optzoo.online_subspace_descent(
        1e-2, _rank(params), layout=MatrixLayout()
    ),
    "optzoo.polargrad": lambda params: optzoo.polargrad(
        LR, layout=hidden_layout, fallback=FALLBACK
    ),
    "optzoo.scion": lambda params: optzoo.scion(LR, layout=hidden_layout),
    "optzoo.ef_muon": lambda params: optzoo.ef_muon(LR, layout=hidden_layout, fallback=FALLBACK),
    "optzoo.fismo": lambda params: optzoo.fismo(LR, layout=hidden_layout, fallback=FALLBACK),
    "optzoo.symmetry_compatible": lambda params: optzoo.symmetry_compatible(LR),
}

#: optzoo row -> the optax row it re-implements (for the "vs twin" ratio).
TWINS = {
    "optzoo.lion": "optax.lion",
    "optzoo.galore[optax-like]": "optax.contrib.galore",
    "optzoo.muon[newton_schulz]": BASELINE,
    "optzoo.muon": BASELINE,
}


def _rank(params: Any) -> int:
    return 32 if max(x.shape[-1] for x in jax.tree.leaves(params)) <= 512 else 128


def make_tree(kind: str, layers: int | None = None) -> dict[str, Any]:
    """Concrete float32 parameters: the GPT-2-small-like tree (optionally fewer layers), or
    ``'tiny'``: the real parameter tree of the harness's tiny Qwen3-style model."""
    if kind == "tiny":
        from flax import nnx

        from experiments import models

        model = models.build(models.get_preset("tiny"), seed=0)
        tree = nnx.state(model, nnx.Param).to_pure_dict()
        return jax.tree.map(jnp.asarray, tree)
    tree = gpt2_small_like_tree(jnp.float32, stacked=(kind == "gpt2-stacked"), abstract=True)
    n = GPT2_SMALL["n_layers"]
    if layers is not None and layers < n:
        if kind == "gpt2-stacked":
            tree["layers"] = jax.tree.map(
                lambda s: jax.ShapeDtypeStruct((layers,) + s.shape[1:], s.dtype), tree["layers"]
            )
        else:
            tree["layers"] = {str(i): tree["layers"][str(i)] for i in range(layers)}
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    return treedef.unflatten(
        [0.02 * jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, leaves, strict=True)]
    )


class _Stepper:
    """A donated, jitted ``update + apply_updates`` step that carries its own params/state."""

    def __init__(self, tx: optax.GradientTransformation, params: Any, grads: Any):
        def step(p, s, g):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        self._fn = jax.jit(step, donate_argnums=(0, 1))
        self._grads = grads
        self._p = jax.tree.map(jnp.copy, params)  # donated: keep the caller's params intact
        # distinct buffers: an init may reuse one array in several state leaves (e.g. identity
        # factors), and a donated argument must not appear twice
        self._s = jax.tree.map(jnp.copy, tx.init(self._p))
        t0 = time.perf_counter()
        self()  # compile
        self.compile_s = time.perf_counter() - t0
        self()  # warm-up

    def __call__(self) -> float:
        """Runs one step; returns its wall time in ms."""
        t0 = time.perf_counter()
        self._p, self._s = jax.block_until_ready(self._fn(self._p, self._s, self._grads))
        return (time.perf_counter() - t0) * 1e3


def time_step(
    tx: optax.GradientTransformation, params: Any, grads: Any, reps: int
) -> tuple[float, list[float], float]:
    """(median ms, all ms, compile+first-call seconds) of the donated, jitted step."""
    stepper = _Stepper(tx, params, grads)
    times = [stepper() for _ in range(reps)]
    return statistics.median(times), times, stepper.compile_s


def run(
    tree: str = "gpt2",
    reps: int = 5,
    layers: int | None = None,
    only: tuple[str, ...] = (),
    zoo: bool = False,
) -> dict[str, Any]:
    params = make_tree(tree, layers)
    leaves = jax.tree.leaves(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    grads = jax.tree.unflatten(
        jax.tree.structure(params),
        [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)],
    )
    n_params = sum(x.size for x in leaves)
    table = {**OPTIMIZERS, **ZOO} if zoo else dict(OPTIMIZERS)
    names = [n for n in table if not only or n in only]
    print(
        f"tree={tree} layers={layers or GPT2_SMALL['n_layers']} params={n_params:,} "
        f"device={jax.devices()[0].device_kind} reps={reps}"
    )
    steppers = {}
    for name in names:
        steppers[name] = _Stepper(table[name](params), params, grads)
        print(f"  compiled {name:<28} ({steppers[name].compile_s:.1f} s)", flush=True)
    # Round-robin repetitions: on a shared machine, load changes hit every row alike.
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(reps):
        for name in names:
            times[name].append(steppers[name]())
    rows = [
        dict(
            name=n,
            ms=statistics.median(times[n]),
            ms_min=min(times[n]),
            ms_all=times[n],
            compile_s=steppers[n].compile_s,
        )
        for n in names
    ]
    ref = {r["name"]: r["ms"] for r in rows}
    for r in rows:
        r["vs_optax_muon"] = r["ms"] / ref[BASELINE] if BASELINE in ref else None
        r["vs_adamw"] = r["ms"] / ref["adamw"] if "adamw" in ref else None
        twin = TWINS.get(r["name"])
        r["vs_twin"] = r["ms"] / ref[twin] if twin in ref else None
    print(
        f"\n{'optimizer':<32} {'ms/step':>10} {'min ms':>10} {'vs optax twin':>14} {'vs adamw':>9}"
    )
    for r in rows:
        vo = f"{r['vs_twin']:.2f}" if r["vs_twin"] else "-"
        va = f"{r['vs_adamw']:.2f}" if r["vs_adamw"] else "-"
        print(f"{r['name']:<32} {r['ms']:10.2f} {r['ms_min']:10.2f} {vo:>14} {va:>9}")
    dev = jax.devices()[0]
    return dict(
        device=str(dev),
        device_kind=dev.device_kind,
        platform=jax.default_backend(),
        cpu_count=os.cpu_count(),
        machine=platform.machine(),
        jax=jax.__version__,
        optax=optax.__version__,
        date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        tree=tree,
        layers=layers or GPT2_SMALL["n_layers"],
        n_params=int(n_params),
        reps=reps,
        timing="median of reps (round-robin over optimizers) after compile + 1 warm-up; "
        "params and state donated",
        rows=rows,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", choices=("gpt2", "gpt2-stacked", "tiny"), default="gpt2")
    p.add_argument(
        "--all",
        action="store_true",
        help="also every other optzoo optimizer (and optax twins); on the GPT-2 "
        "tree this holds ~20 GB of optimizer states at once",
    )
    p.add_argument("--reps", type=int, default=5, help="timed calls per optimizer")
    p.add_argument("--layers", type=int, default=None, help="keep only the first N layers")
    p.add_argument("--only", default="", help="comma-separated optimizer names")
    p.add_argument("--out", default=None, help="JSON path (default results/bench/...)")
    args = p.parse_args(argv)
    result = run(
        args.tree, args.reps, args.layers, tuple(s for s in args.only.split(",") if s), zoo=args.all
    )
    out = args.out or os.path.join(
        "results", "bench", f"step_time-{result['platform']}-{args.tree}.json"
    )
    write_result(out, result)
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
