"""Optimizer-state memory on a GPT-2-small-shaped tree, counted from the state pytree.

Every optimizer's ``init`` is traced with ``jax.eval_shape`` on a tree of
``jax.ShapeDtypeStruct`` (:func:`experiments.bench.trees.gpt2_small_like_tree`), so nothing is
allocated; the bytes are the sum of ``prod(shape) · itemsize`` over the leaves of the state.
Rows: ``optax.adamw`` (the baseline of every ratio), ``optax.lion``, optzoo's ``galore``
(official ``'std'`` side and ``'optax-like'``), ``optax.contrib.galore`` (cross-check of
``'optax-like'``), ``natural_galore`` and ``online_subspace_descent``.

The low-rank methods are counted in two scopes:

* ``all``: every leaf with at least 2 axes is projected, embeddings included (the library
  default);
* ``blocks``: only the transformer-block matrices (``layers/...``) are projected; the
  embeddings go unprojected to the inner Adam (how the GaLore paper applies it).

Usage::

    python -m experiments.bench.state_memory
    python -m experiments.bench.state_memory --rank 256 --out results/bench/state_memory.json
    python -m experiments.bench.state_memory --stacked --dtype bfloat16
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from experiments.bench import write_result
from experiments.bench.trees import gpt2_small_like_tree
from optzoo.galore import galore
from optzoo.layout import MatrixLayout
from optzoo.natural_galore import natural_galore
from optzoo.subspace_descent import online_subspace_descent

__all__ = ["state_bytes", "blocks_only_layout", "measure", "format_table", "main"]


def state_bytes(tx: optax.GradientTransformation, params: Any) -> int:
    """Bytes of ``tx.init(params)``'s leaves, from shapes only (``jax.eval_shape``)."""
    shapes = jax.eval_shape(tx.init, params)
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(shapes))


def blocks_only_layout(params: Any) -> Any:
    """Default matrix layout for ``layers/...`` leaves with >= 2 axes, ``None`` elsewhere."""

    def pick(path, x):
        top = path[0].key if isinstance(path[0], jax.tree_util.DictKey) else None
        return MatrixLayout() if top == "layers" and len(x.shape) >= 2 else None

    return jax.tree_util.tree_map_with_path(pick, params)


def _optimizers(rank: int, history: int) -> list[tuple[str, str, Callable[[], Any]]]:
    lr = 1e-3
    rows: list[tuple[str, str, Callable[[], Any]]] = [
        ("adamw", "-", lambda: optax.adamw(lr)),
        ("lion", "-", lambda: optax.lion(lr)),
        ("optax.contrib.galore", "all", lambda: optax.contrib.galore(lr, rank)),
    ]
    for scope, lay in (("all", MatrixLayout()), ("blocks", blocks_only_layout)):
        rows += [
            ("galore[std]", scope, lambda lay=lay: galore(lr, rank, layout=lay)),
            (
                "galore[optax-like]",
                scope,
                lambda lay=lay: galore(lr, rank, side="optax-like", layout=lay),
            ),
            (
                f"natural_galore[s={history}]",
                scope,
                lambda lay=lay: natural_galore(lr, rank, history=history, layout=lay),
            ),
            (
                "online_subspace_descent",
                scope,
                lambda lay=lay: online_subspace_descent(lr, rank, layout=lay),
            ),
        ]
    return rows


def measure(params: Any, rank: int = 128, history: int = 20) -> list[dict[str, Any]]:
    """One row per optimizer/scope: state bytes, bytes per parameter, ratio to AdamW."""
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank clipping of small matrices is expected
        for name, scope, make in _optimizers(rank, history):
            rows.append(
                {"optimizer": name, "scope": scope, "state_bytes": state_bytes(make(), params)}
            )
    base = rows[0]["state_bytes"]
    for r in rows:
        r["bytes_per_param"] = r["state_bytes"] / n_params
        r["ratio_vs_adamw"] = r["state_bytes"] / base
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'optimizer':<26} {'scope':<7} {'state MiB':>10} {'B/param':>8} {'vs AdamW':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['optimizer']:<26} {r['scope']:<7} {r['state_bytes'] / 2**20:>10.1f} "
            f"{r['bytes_per_param']:>8.3f} {r['ratio_vs_adamw']:>9.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--history", type=int, default=20, help="Natural GaLore's s")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--stacked", action="store_true", help="scanned layers [12, m, n]")
    ap.add_argument("--separate-qkv", action="store_true", help="q/k/v (768, 768) kernels")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)

    params = gpt2_small_like_tree(
        jnp.dtype(args.dtype), fused_qkv=not args.separate_qkv, stacked=args.stacked
    )
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    rows = measure(params, rank=args.rank, history=args.history)
    print(
        f"GPT-2-small-like tree: {n_params:,} parameters ({args.dtype}, "
        f"{'stacked' if args.stacked else 'per-layer'}, "
        f"{'separate q/k/v' if args.separate_qkv else 'fused qkv'}), rank {args.rank}"
    )
    print(format_table(rows))
    if args.out:
        write_result(
            args.out,
            {
                "tree": "gpt2_small_like",
                "params": n_params,
                "dtype": args.dtype,
                "stacked": args.stacked,
                "fused_qkv": not args.separate_qkv,
                "rank": args.rank,
                "history": args.history,
                "rows": rows,
            },
            indent=2,
        )
    return rows


if __name__ == "__main__":
    main()
