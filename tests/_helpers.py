"""Helpers shared by the test files (one definition each; ``import _helpers``).

Test data comes from numpy (``jax.random`` would compile a kernel per shape, which dominates a
small test on a loaded 2-core machine); float64 references go through numpy too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


def normal(
    seed: int, shape: Sequence[int], scale: float = 1.0, dtype: Any = np.float32
) -> np.ndarray:
    """``scale ×`` standard-normal numpy array of ``shape`` from ``default_rng(seed)``."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def tree(shapes: dict[str, Sequence[int]], seed: int, scale: float = 1.0) -> dict[str, Any]:
    """``{key: float32 jax array}``; leaf ``i`` drawn by :func:`normal` with seed
    ``1000·seed + i`` (so the trees of two seeds share no draws)."""
    return {
        k: jnp.asarray(normal(1000 * seed + i, s, scale)) for i, (k, s) in enumerate(shapes.items())
    }


class Trajectory(NamedTuple):
    """What :func:`run` returns: the final parameters, and the updates and states per step."""

    params: Any
    updates: list[Any]
    states: list[Any]


def run(
    tx: optax.GradientTransformation,
    params: Any,
    grads: Sequence[Any],
    *,
    jit: bool = True,
    extra: dict[str, Any] | None = None,
) -> Trajectory:
    """``init`` then one ``update`` + ``apply_updates`` per gradient tree.

    ``jit``: the update is jitted once and reused (a partitioned tree's many small ops are
    cheaper compiled once than dispatched eagerly); eager otherwise. ``extra``: optax extra
    arguments passed to every update.
    """
    extra = extra or {}
    update = jax.jit(tx.update) if jit else tx.update
    state = tx.init(params)
    updates, states = [], []
    for g in grads:
        u, state = update(g, state, params, **extra)
        params = optax.apply_updates(params, u)
        updates.append(u)
        states.append(state)
    return Trajectory(params, updates, states)


def rel(a: Any, b: Any) -> float:
    """Relative Frobenius error ``‖a − b‖ / ‖b‖`` in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def polar64(x: Any, rtol: float | None = None) -> np.ndarray:
    """float64 polar factor ``U Vᵀ`` of each matrix of ``(..., m, n)`` by numpy's thin SVD;
    with ``rtol``, directions with ``σ <= rtol·σ_max`` are dropped (a partial isometry)."""
    u, s, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    if rtol is not None:
        u = u * (s > rtol * s[..., :1])[..., None, :]
    return u @ vt


def slices(tree: dict[str, Any]) -> dict[str, Any]:
    """Every matrix slice (last two axes) of every leaf as its own 2-D leaf ``key<i>``."""
    out = {}
    for k, v in tree.items():
        flat = jnp.reshape(v, (-1,) + tuple(v.shape[-2:]))
        for i in range(flat.shape[0]):
            out[f"{k}{i}"] = flat[i]
    return out


def leaves_finite(tree: Any) -> bool:
    """Whether every floating leaf of ``tree`` is finite (other leaves are ignored)."""
    return all(
        bool(jnp.all(jnp.isfinite(x)))
        for x in jax.tree.leaves(tree)
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)
    )


def bitwise_equal(a: Any, b: Any) -> bool:
    """Same leaves, dtypes and bits (NaN equal to NaN)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype
        and np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        for x, y in zip(la, lb, strict=True)
    )
