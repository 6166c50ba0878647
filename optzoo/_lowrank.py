"""Private: the low-rank projection block of GaLore, Natural GaLore and Online Subspace Descent.

Each of the three methods is an inner optimizer (Adam by default) run on low-rank projections
of the matrix gradients; they differ in how the projector moves and in what is done to the
projected gradient. What they share lives here:

* **argument checks**: :func:`static_int` (a shape or a gap, refused with the factory's whole
  ``static_args`` list when ``optax.inject_hyperparams`` passes it as an array),
  :func:`check_projection` (``rank``, ``scale``, ``side``) and :func:`adam` (``b1``, ``b2``,
  ``eps``, ``mu_dtype`` of an Adam, rounded to float32 once);
* **the inner optimizer** :func:`base_optimizer`: the user's transformation, or Adam with
  float16 leaves run in float32;
* **projection plans**: :class:`Plan`, the static view of one matrix leaf (layout, batch
  shape, ``m × n``, clipped rank, side), built by :func:`plans` with the layouts resolved once;
* **one update's projection** :class:`Projection`: SVD projectors, ``R = PᵀG`` / ``GQ``, the
  inner step on the low-rank tree and the lift ``α PN`` / ``α NQᵀ``;
* **state pieces** :func:`init_state` and the alias chain :func:`alias`.

Side rules on the ``(m, n)`` matrix view: ``'std'`` (``m >= n`` -> right, else left),
``'optax-like'`` (``m >= n`` -> left, else right), ``'left'``, ``'right'``.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo import _blocks, _checks
from optzoo import fallback as fallback_lib
from optzoo import layout as layout_lib

#: Projection sides accepted by ``side``.
SIDES = ("std", "optax-like", "left", "right")


# ------------------------------------------------------------------------------ checks
def static_int(value: Any, name: str, what: str, static: tuple[str, ...], lo: int = 1) -> int:
    """A static integer argument ``>= lo``; an array (what ``optax.inject_hyperparams`` passes
    for a numeric argument not listed in ``static_args``) is refused with the whole ``static``
    list, so one error tells the user every argument to list."""
    if isinstance(value, jax.Array | np.ndarray | jax.core.Tracer):
        raise TypeError(
            f"{what}: {name} must be a static Python int, got an array; under "
            f"optax.inject_hyperparams pass static_args={static!r} (also available as "
            f"optzoo.{what}.static_args)"
        )
    return int(_checks.integer(value, name, what, lo=lo))


def check_projection(rank: Any, scale: Any, side: Any, what: str, static: tuple[str, ...]) -> int:
    """The projection's arguments: a static ``rank >= 1`` (returned as an int), ``scale > 0``,
    ``side`` one of :data:`SIDES`."""
    rank = static_int(rank, "rank", what, static)
    _checks.positive(scale, "scale", what)
    _checks.choice(side, "side", what, SIDES)
    return rank


def as_float32(x: Any) -> Any:
    """A Python/numpy real rounded to the nearest float32, as a Python float; arrays unchanged.

    ``optax.inject_hyperparams`` hands ``b1``/``b2`` to the factory as float32 arrays, so
    optax's Adam computes ``1 - b2`` in float32 from ``float32(0.999)``
    (``0.00099998713``), while a Python ``0.999`` gives ``1 - b2 = 0.001`` in float64: a
    ``1.3e-5`` relative difference in the second moment (``6.6e-6`` in ``optax.adam``'s own
    update under ``inject_hyperparams``; ``1.2e-5`` here, where rank-deficient projected
    gradients make Adam sensitive). Rounding the constant once at construction makes both
    paths compute the same numbers; the bias correction ``1 - b2**t`` already used the float32
    value, so for a constant gradient ``v̂`` is now ``g²`` up to float32 rounding.
    """
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return float(np.float32(x))
    return x


def adam(
    b1: Any, b2: Any, eps: Any, mu_dtype: Any, what: str, prefix: str = ""
) -> optax.GradientTransformation:
    """``optax.scale_by_adam`` after checking its arguments (named ``prefix + 'b1'``...):
    ``b1, b2 ∈ [0, 1)`` (``b = 1`` zeroes the bias correction), ``eps > 0`` (a zero gradient
    would give ``0/0``), a floating ``mu_dtype``; ``b1``/``b2`` rounded by
    :func:`as_float32`."""
    _checks.unit_interval(b1, prefix + "b1", what, hi_open=True)
    _checks.unit_interval(b2, prefix + "b2", what, hi_open=True)
    _checks.positive(eps, prefix + "eps", what)
    _checks.float_dtype(mu_dtype, prefix + "mu_dtype", what)
    return optax.scale_by_adam(b1=as_float32(b1), b2=as_float32(b2), eps=eps, mu_dtype=mu_dtype)


def base_optimizer(
    base: Any, b1: Any, b2: Any, eps: Any, mu_dtype: Any, what: str
) -> optax.GradientTransformationExtraArgs:
    """The inner optimizer: ``base`` (an optax transformation), or for ``None`` the checked
    :func:`adam` with float16 leaves run in float32. The Adam arguments are checked either
    way."""
    default = adam(b1, b2, eps, mu_dtype, what)
    if base is None:
        return fallback_lib.float16_in_float32(default)
    if not (hasattr(base, "init") and hasattr(base, "update")):
        raise TypeError(
            f"{what}: base_optimizer must be an optax GradientTransformation or None, got {base!r}"
        )
    return optax.with_extra_args_support(base)


def compute_dtype(dtype: Any) -> Any:
    """The dtype projections, SVDs and solves run in: ``dtype`` promoted to float32 or wider."""
    return jnp.promote_types(dtype, jnp.float32)


# ------------------------------------------------------------------------------- plans
def _use_left(side: str, m: int, n: int) -> bool:
    if side == "std":
        return m < n
    if side == "optax-like":
        return m >= n
    return side == "left"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static description of one matrix leaf: its layout, matrix view and projection side."""

    path: str
    layout: layout_lib.MatrixLayout
    shape: tuple[int, ...]
    batch_shape: tuple[int, ...]
    m: int
    n: int
    rank: int
    left: bool

    @property
    def low_rank_shape(self) -> tuple[int, ...]:
        core = (self.rank, self.n) if self.left else (self.m, self.rank)
        return self.batch_shape + core

    @property
    def projector_shape(self) -> tuple[int, ...]:
        return self.batch_shape + ((self.m if self.left else self.n), self.rank)

    def batched(self, y: jax.Array) -> jax.Array:
        """``batch + core`` -> ``(B,) + core`` (the layout's flattened batch order)."""
        return y.reshape((-1,) + y.shape[len(self.batch_shape) :])

    def unbatched(self, y: jax.Array) -> jax.Array:
        return y.reshape(self.batch_shape + y.shape[1:])


def plans(tree: Any, layout: layout_lib.LayoutSpec, rank: int, side: str, what: str, kind: str):
    """``(leaves, treedef, [Plan | None per leaf])`` of ``tree``, layouts resolved once and
    dtypes checked (:func:`optzoo._blocks.flat_layouts`). For the parameters
    (``kind='parameter'``, at ``init``) a rank above ``min(m, n)`` warns, naming the leaf."""
    paths, leaves, lays, _, treedef = _blocks.flat_layouts(tree, layout, what, kind)
    out = []
    for path, leaf, lay in zip(paths, leaves, lays, strict=True):
        if lay is None:
            out.append(None)
            continue
        shape = tuple(jnp.shape(leaf))
        _, m, n = lay.matrix_shape(shape)
        batch_shape = tuple(shape[a] for a in lay.batch_axes(len(shape)))
        if lay.num_heads:
            batch_shape += (lay.num_heads,)
        k = min(m, n)
        if kind == "parameter" and rank > k:
            warnings.warn(
                f"{what}: rank {rank} exceeds min(m, n) = {k} for parameter "
                f"'{path}' (matrix view {m}x{n}); using rank {k} for it",
                UserWarning,
                stacklevel=3,
            )
        out.append(Plan(path, lay, shape, batch_shape, m, n, min(rank, k), _use_left(side, m, n)))
    return leaves, treedef, out


def init_state(
    params: Any,
    layout: layout_lib.LayoutSpec,
    rank: int,
    side: str,
    what: str,
    base: optax.GradientTransformation,
    projector_dtype=None,
):
    """``(treedef, plans, base_state, projectors)`` for an ``init``: the inner optimizer's
    state on the low-rank tree (matrix leaves of shape ``plan.low_rank_shape``, the others
    as they are) and zero projectors (``projector_dtype(leaf dtype)``, default the leaf's
    dtype; ``MaskedNode`` for non-matrix leaves)."""
    leaves, treedef, leaf_plans = plans(params, layout, rank, side, what, "parameter")
    proxies, projectors = [], []
    for p, x in zip(leaf_plans, leaves, strict=True):
        dtype = jnp.result_type(x)
        if p is None:
            proxies.append(jnp.zeros(jnp.shape(x), dtype))
            projectors.append(optax.MaskedNode())
        else:
            proxies.append(jnp.zeros(p.low_rank_shape, dtype))
            pdt = dtype if projector_dtype is None else projector_dtype(dtype)
            projectors.append(jnp.zeros(p.projector_shape, pdt))
    base_state = base.init(treedef.unflatten(proxies))
    return treedef, leaf_plans, base_state, projectors


# -------------------------------------------------------------------------- projection
def _svd_projector(plan: Plan, g: jax.Array) -> jax.Array:
    """Top-``r`` left (``U[:, :r]``) or right (``V[:, :r]``) singular vectors of each slice."""
    u, _, vh = jnp.linalg.svd(g, full_matrices=False)
    if plan.left:
        return u[..., :, : plan.rank]
    return jnp.swapaxes(vh[..., : plan.rank, :], -1, -2)


class Projection:
    """One ``update`` call's view of the gradients: plans, matrix stacks (in
    :func:`compute_dtype`) and the shared steps (projectors, project, inner step, lift).
    Built afresh inside every trace; holds no state. Projector lists are flat, one entry per
    leaf (``MaskedNode`` for non-matrix leaves)."""

    def __init__(
        self, updates: Any, layout: layout_lib.LayoutSpec, rank: int, side: str, what: str
    ):
        self.grads, self.treedef, self.plans = plans(updates, layout, rank, side, what, "update")
        self.mats = [
            None if p is None else p.layout.to_matrix(g).astype(compute_dtype(g.dtype))
            for p, g in zip(self.plans, self.grads, strict=True)
        ]

    def flat(self, tree: Any) -> list[Any]:
        return self.treedef.flatten_up_to(tree)

    def svd_projectors(self, old: list[Any]) -> list[Any]:
        """Fresh SVD projectors, in the storage dtype/shape of ``old``."""
        return [
            o if p is None else p.unbatched(_svd_projector(p, g)).astype(o.dtype)
            for p, g, o in zip(self.plans, self.mats, old, strict=True)
        ]

    def projectors(self, stored: Any, refresh: jax.Array) -> list[Any]:
        """The stored projector tree, or where ``refresh`` (a traced bool) fresh SVD ones."""
        old = self.flat(stored)
        return jax.lax.cond(refresh, lambda: self.svd_projectors(old), lambda: old)

    def project(self, projectors: list[Any]) -> list[Any]:
        """``Pᵀ G`` (left) or ``G Q`` (right) per matrix leaf, unbatched, in the gradient's
        dtype; non-matrix leaves unchanged."""
        out = []
        for p, g, gm, pr in zip(self.plans, self.grads, self.mats, projectors, strict=True):
            if p is None:
                out.append(g)
                continue
            pb = p.batched(pr).astype(gm.dtype)
            r = jnp.swapaxes(pb, -1, -2) @ gm if p.left else gm @ pb
            out.append(p.unbatched(r).astype(g.dtype))
        return out

    def descend(
        self,
        base: optax.GradientTransformationExtraArgs,
        low_rank: list[Any],
        base_state: optax.OptState,
        extra_args: dict[str, Any],
        projectors: list[Any],
        scale: Any,
    ) -> tuple[Any, optax.OptState]:
        """The inner optimizer on the low-rank tree (``params=None``), then the lift
        ``α P N`` (left) or ``α N Qᵀ`` (right) of every matrix leaf, cast to the gradient's
        dtype (non-matrix leaves: the inner update, cast, not scaled).
        Returns ``(updates, base_state)``."""
        low, base_state = base.update(
            self.treedef.unflatten(low_rank), base_state, None, **extra_args
        )
        out = []
        for p, g, gm, pr, u in zip(
            self.plans, self.grads, self.mats, projectors, self.flat(low), strict=True
        ):
            if p is None:
                out.append(u.astype(g.dtype))
                continue
            pb, ub = p.batched(pr).astype(gm.dtype), p.batched(u).astype(gm.dtype)
            full = pb @ ub if p.left else ub @ jnp.swapaxes(pb, -1, -2)
            out.append((scale * p.layout.from_matrix(full, p.shape)).astype(g.dtype))
        return self.treedef.unflatten(out), base_state


# ------------------------------------------------------------------------------- alias
def alias(
    what: str,
    direction: optax.GradientTransformation,
    *,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: Any,
    weight_decay_mask: Any,
) -> optax.GradientTransformationExtraArgs:
    """``chain(direction, add_decayed_weights(weight_decay, weight_decay_mask),
    scale_by_learning_rate(learning_rate))`` with ``learning_rate`` and ``weight_decay >= 0``
    checked and the update shapes checked against the parameters."""
    _checks.learning_rate(learning_rate, "learning_rate", what)
    _checks.nonnegative(weight_decay, "weight_decay", what)
    return _blocks.check_update_shapes(
        optax.chain(
            direction,
            optax.add_decayed_weights(weight_decay, weight_decay_mask),
            optax.scale_by_learning_rate(learning_rate),
        ),
        what,
    )
