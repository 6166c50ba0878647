"""GaLore: an inner optimizer run on low-rank gradient projections.

Every matrix leaf (as read by its :class:`~optzoo.layout.MatrixLayout`; leading/batch axes of
stacked leaves give independent matrices, each with its own projector) has its gradient
``G ∈ R^{m×n}`` projected to a rank-``r`` subspace, the inner optimizer (default Adam, so
its moments live in the small space) runs on the projection, and the result is lifted back:

* left projection, ``P ∈ R^{m×r}``:  ``R = Pᵀ G`` (``r×n``),  ``ΔW = α P N(R)``;
* right projection, ``Q ∈ R^{n×r}``: ``R = G Q`` (``m×r``),  ``ΔW = α N(R) Qᵀ``.

:func:`galore` recomputes the projector from an SVD of the current gradient every
``update_proj_gap`` steps. :mod:`optzoo.subspace_descent` (Online Subspace Descent) moves it
every step by an Adam step on an online-PCA loss, and :mod:`optzoo.natural_galore` whitens the
projected gradient with an inverse empirical Fisher; both reuse the projection code here.

Side rules (``side``), on the ``(m, n)`` matrix view given by the layout:

* ``'std'`` (default, the official GaLore rule): ``m >= n`` -> right, else left. The
  *smaller* dimension is compressed; the moments are ``max(m,n) × r`` and the projector
  ``min(m,n) × r``. The official code applies this rule to PyTorch ``(out, in)`` weights, the
  transpose of a Flax kernel; the two agree except for square matrices (``m == n``), where the
  official code compresses fan-in and ``'std'`` on the Flax view compresses fan-out. Reading the
  kernel as ``MatrixLayout(reduction_axes=(-1,), output_axes=(-2,))`` reproduces the official
  tie-break exactly.
* ``'optax-like'``: ``optax.contrib.galore``'s rule, ``m >= n`` -> left, else right (the
  *larger* dimension is compressed; moments ``min(m,n) × r``, projector ``max(m,n) × r``).
* ``'left'`` / ``'right'``: always that side.

Non-matrix leaves (fewer than 2 axes, or a ``None`` layout) are passed *unprojected* to the
inner optimizer, are not multiplied by ``scale``, and still get the alias's learning rate and
weight decay: the behaviour of ``optax.contrib.galore``. To give them a different optimizer,
route them with ``optax.partition`` (or ``optzoo.routing``).

float16 leaves: the default inner Adam keeps their moments in float32 (their projected
gradient is upcast, the Adam update cast back to float16): in float16, ``eps=1e-8`` rounds
to 0 (a zero gradient would give ``0/0``) and ``nu`` overflows once ``|g| > ~256``.

Rank: ``rank`` larger than ``min(m, n)`` of a matrix is clipped to ``min(m, n)`` for that
matrix, with a ``UserWarning`` naming the parameter (emitted by ``init``).
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo import _checks, _partition
from optzoo import layout as _layout
from optzoo._partition import float16_in_float32
from optzoo._tree import check_floating, path_str

__all__ = [
    "GALORE_STATIC_ARGS",
    "SCALE_BY_GALORE_STATIC_ARGS",
    "SIDES",
    "GaLoreState",
    "scale_by_galore",
    "galore",
]

SIDES = ("std", "optax-like", "left", "right")


class GaLoreState(NamedTuple):
    """State of :func:`scale_by_galore`.

    Attributes:
      count: number of updates taken (int32); the projector is refreshed when
        ``count % update_proj_gap == 0``.
      base_optimizer_state: the inner optimizer's state, built on a tree with the structure of
        the parameters whose matrix leaves have the low-rank shape ``batch + (r, n)`` (left) or
        ``batch + (m, r)`` (right) and whose other leaves keep their shape.
      projector: per matrix leaf, ``batch + (m, r)`` (left) or ``batch + (n, r)`` (right) in
        the parameter dtype; ``optax.MaskedNode()`` for non-matrix leaves.
    """

    count: jax.Array
    base_optimizer_state: optax.OptState
    projector: Any


# ----------------------------------------------------------------------------- validation
#: Arguments of :func:`scale_by_galore` that ``optax.inject_hyperparams`` cannot trace (shapes,
#: step gaps, strings, dtypes, trees and callables): pass them as ``static_args``.
SCALE_BY_GALORE_STATIC_ARGS = ("rank", "update_proj_gap", "side", "mu_dtype", "base_optimizer",
                               "layout")
#: The same for :func:`galore` (also ``galore.static_args``).
GALORE_STATIC_ARGS = SCALE_BY_GALORE_STATIC_ARGS + ("weight_decay_mask",)


def _static_int(value: Any, name: str, what: str, lo: int, static: tuple[str, ...]) -> int:
    """A static integer argument; an array (what ``optax.inject_hyperparams`` passes for a
    numeric argument not listed in ``static_args``) is refused with the whole static list,
    so one error tells the user every argument to list."""
    if isinstance(value, jax.Array | np.ndarray | jax.core.Tracer):
        raise TypeError(
            f"{what}: {name} must be a static Python int, got an array; under "
            f"optax.inject_hyperparams pass static_args={static!r} (also available as "
            f"optzoo.{what}.static_args)")
    return int(_checks.integer(value, name, what, lo=lo))


def _check_adam(b1: Any, b2: Any, eps: Any, mu_dtype: Any, what: str) -> None:
    """The default inner Adam's arguments: ``b1, b2 ∈ [0, 1)`` (``b = 1`` zeroes the bias
    correction), ``eps > 0`` (a zero gradient would give ``0/0``), a floating ``mu_dtype``."""
    _checks.unit_interval(b1, "b1", what, hi_open=True)
    _checks.unit_interval(b2, "b2", what, hi_open=True)
    _checks.positive(eps, "eps", what)
    _checks.float_dtype(mu_dtype, "mu_dtype", what)


def _check_common(scale: Any, side: Any, base_optimizer: Any, what: str) -> str:
    _checks.positive(scale, "scale", what)
    _checks.choice(side, "side", what, SIDES)
    if base_optimizer is not None and not (hasattr(base_optimizer, "init")
                                           and hasattr(base_optimizer, "update")):
        raise TypeError(f"{what}: base_optimizer must be an optax GradientTransformation or "
                        f"None, got {base_optimizer!r}")
    return side


def _as_float32(x: Any) -> Any:
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


def _use_left(side: str, m: int, n: int) -> bool:
    if side == "std":
        return m < n
    if side == "optax-like":
        return m >= n
    return side == "left"


def _default_base(base_optimizer, b1, b2, eps, mu_dtype):
    """The inner optimizer: ``base_optimizer``, or Adam with float16 leaves in float32
    (``b1``/``b2`` rounded to float32, see :func:`_as_float32`)."""
    if base_optimizer is None:
        return float16_in_float32(
            optax.scale_by_adam(b1=_as_float32(b1), b2=_as_float32(b2), eps=eps,
                                mu_dtype=mu_dtype))
    return optax.with_extra_args_support(base_optimizer)


def _compute_dtype(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


# ------------------------------------------------------------------------- per-leaf plan
@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static description of one matrix leaf: its layout, matrix view and projection side."""

    path: str
    layout: _layout.MatrixLayout
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
        return y.reshape((-1,) + y.shape[len(self.batch_shape):])

    def unbatched(self, y: jax.Array) -> jax.Array:
        return y.reshape(self.batch_shape + y.shape[1:])


def _make_plans(params: Any, layout: Any, rank: int, side: str, what: str, at_init: bool):
    """Returns ``(treedef, [ _Plan | None per leaf ])``; at init also checks dtypes and warns."""
    layouts = _layout.resolve(layout, params, what=what)
    treedef = jax.tree.structure(params)
    lays = treedef.flatten_up_to(layouts)
    plans = []
    for (kp, leaf), lay in zip(jax.tree_util.tree_flatten_with_path(params)[0], lays,
                               strict=True):
        path = path_str(kp)
        if at_init:
            check_floating(leaf, path, "parameter")
        if lay is None:
            plans.append(None)
            continue
        shape = tuple(jnp.shape(leaf))
        _, m, n = lay.matrix_shape(shape)
        batch_shape = tuple(shape[a] for a in lay.batch_axes(len(shape)))
        if lay.num_heads:
            batch_shape += (lay.num_heads,)
        k = min(m, n)
        if at_init and rank > k:
            warnings.warn(f"{what}: rank {rank} exceeds min(m, n) = {k} for parameter "
                          f"'{path}' (matrix view {m}x{n}); using rank {k} for it",
                          UserWarning, stacklevel=3)
        plans.append(_Plan(path, lay, shape, batch_shape, m, n, min(rank, k),
                           _use_left(side, m, n)))
    return treedef, plans


def _project(plan: _Plan, p: jax.Array, g: jax.Array) -> jax.Array:
    """``Pᵀ G`` (left) or ``G Q`` (right) on ``(B, ·, ·)`` stacks."""
    return jnp.swapaxes(p, -1, -2) @ g if plan.left else g @ p


def _lift(plan: _Plan, p: jax.Array, r: jax.Array) -> jax.Array:
    """``P N`` (left) or ``N Qᵀ`` (right) on ``(B, ·, ·)`` stacks."""
    return p @ r if plan.left else r @ jnp.swapaxes(p, -1, -2)


def _svd_projector(plan: _Plan, g: jax.Array) -> jax.Array:
    """Top-``r`` left (``U[:, :r]``) or right (``V[:, :r]``) singular vectors of each slice."""
    u, _, vh = jnp.linalg.svd(g, full_matrices=False)
    if plan.left:
        return u[..., :, : plan.rank]
    return jnp.swapaxes(vh[..., : plan.rank, :], -1, -2)


class _Core:
    """One ``update`` call's view of the gradients: plans, matrix stacks and the shared steps
    (project, inner optimizer, lift) used by GaLore, Natural GaLore and Online Subspace
    Descent. Built afresh inside every trace; holds no state."""

    def __init__(self, updates, layout, rank, side, what):
        self.treedef, self.plans = _make_plans(updates, layout, rank, side, what, False)
        self.grads = self.treedef.flatten_up_to(updates)
        self.mats = [
            None if p is None else p.layout.to_matrix(g).astype(_compute_dtype(g.dtype))
            for p, g in zip(self.plans, self.grads, strict=True)
        ]

    def flat(self, tree):
        return self.treedef.flatten_up_to(tree)

    def svd_projectors(self, old):
        """Fresh SVD projectors, in the storage dtype/shape of ``old`` (a flat list)."""
        return [
            o if p is None else p.unbatched(_svd_projector(p, g)).astype(o.dtype)
            for p, g, o in zip(self.plans, self.mats, old, strict=True)
        ]

    def project(self, projectors):
        """Low-rank gradients (unbatched, gradient dtype); non-matrix leaves unchanged."""
        out = []
        for p, g, gm, pr in zip(self.plans, self.grads, self.mats, projectors, strict=True):
            if p is None:
                out.append(g)
            else:
                r = _project(p, p.batched(pr).astype(gm.dtype), gm)
                out.append(p.unbatched(r).astype(g.dtype))
        return out

    def base_step(self, base, low_rank, base_state, extra_args):
        u, base_state = base.update(self.treedef.unflatten(low_rank), base_state, None,
                                    **extra_args)
        return self.flat(u), base_state

    def lift(self, projectors, low_rank_updates, scale):
        out = []
        for p, g, gm, pr, u in zip(self.plans, self.grads, self.mats, projectors,
                                   low_rank_updates, strict=True):
            if p is None:
                out.append(u.astype(g.dtype))
            else:
                full = _lift(p, p.batched(pr).astype(gm.dtype), p.batched(u).astype(gm.dtype))
                out.append((scale * p.layout.from_matrix(full, p.shape)).astype(g.dtype))
        return self.treedef.unflatten(out)


def _init_pieces(params, layout, rank, side, what, base, projector_dtype=None):
    """``(treedef, plans, base_state, projectors)`` for an ``init``; projectors are zeros."""
    treedef, plans = _make_plans(params, layout, rank, side, what, True)
    leaves = treedef.flatten_up_to(params)
    proxies, projectors = [], []
    for p, x in zip(plans, leaves, strict=True):
        dtype = jnp.result_type(x)
        if p is None:
            proxies.append(jnp.zeros(jnp.shape(x), dtype))
            projectors.append(optax.MaskedNode())
        else:
            proxies.append(jnp.zeros(p.low_rank_shape, dtype))
            pdt = dtype if projector_dtype is None else projector_dtype(dtype)
            projectors.append(jnp.zeros(p.projector_shape, pdt))
    base_state = base.init(treedef.unflatten(proxies))
    return treedef, plans, base_state, projectors


# ------------------------------------------------------------------------------- GaLore
def scale_by_galore(
    rank: int = 128,
    *,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    side: str = "std",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: Any | None = None,
    base_optimizer: optax.GradientTransformation | None = None,
    layout: _layout.LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    r"""GaLore direction: the inner optimizer on SVD-projected low-rank gradients.

    Per matrix slice ``G_t ∈ R^{m×n}``, with ``T = update_proj_gap`` and scale ``α``:

    .. math::
      P_t = \begin{cases} \mathrm{top}_r\,\mathrm{SVD}(G_t) & t \bmod T = 0 \\
            P_{t-1} & \text{otherwise} \end{cases},\qquad
      R_t = P_t^\top G_t \ \text{(left) or}\ G_t P_t \ \text{(right)},

    .. math::
      N_t = \mathrm{Adam}(R_1, \dots, R_t),\qquad
      u_t = \alpha\, P_t N_t \ \text{(left) or}\ \alpha\, N_t P_t^\top \ \text{(right)}.

    The SVD is taken in float32 (or wider), the projector stored in the parameter dtype. The
    moments are **not** reset when the projector changes (as in the paper and both reference
    codes: they are then expressed in the old basis). The side is chosen per matrix by
    ``side`` (module docstring); non-matrix leaves go to the inner optimizer unprojected and
    unscaled. The inner optimizer must not need ``params`` (it is called with
    ``params=None`` on low-rank-shaped trees: ``scale_by_adam``, ``scale_by_lion``,
    ``scale_by_rms``... not ``adamw``) and should act elementwise for stacked leaves to
    behave exactly as independent slices.

    Geometry: within the rank-``r`` subspace this is the inner optimizer's steepest descent
    (Adam: a diagonally preconditioned, sign-like ``ℓ∞``-type step). Symmetry: if every
    gradient is mapped ``G ↦ U G Π`` with ``U`` orthogonal on the compressed side and ``Π`` a
    signed permutation on the kept side (Adam's group), the whole trajectory maps alike as
    long as no refresh after the first happens (a later SVD may pick other singular-vector
    signs, which the carried moments see).

    Range (a documented limit): gradients beyond ~1.8e19 in float32/bfloat16 overflow the inner
    Adam's second moment to ``inf`` (as in ``optax.adam``; the entry then stops moving); float16
    leaves: moments in float32. The experiments harness clips gradients (``grad_clip=1.0``) long
    before.

    Args:
      rank: target rank ``r`` (``>= 1``); clipped per matrix to ``min(m, n)`` with a warning.
      update_proj_gap: ``T >= 1``; the projector is recomputed at steps ``0, T, 2T, ...``.
      scale: ``α``, multiplies the lifted update of matrix leaves (0.25 in the GaLore README;
        ``optax.contrib.galore`` defaults to 1.0).
      side: ``'std'`` (official), ``'optax-like'``, ``'left'`` or ``'right'``.
      b1: Adam ``β₁`` of the default inner optimizer.
      b2: Adam ``β₂`` of the default inner optimizer.
      eps: Adam ``ε`` of the default inner optimizer (added to ``√v̂``, optax's form; the
        PyTorch reference adds it to the uncorrected ``√v``, which differs only through
        ``ε``).
      mu_dtype: dtype of Adam's first moment (default: that of the gradient).
      base_optimizer: inner transform replacing Adam (``b1, b2, eps, mu_dtype`` are then
        ignored).
      layout: ``MatrixLayout``, tree of ``MatrixLayout | None`` or callable (see
        :func:`optzoo.layout.resolve`); default ``None``: :func:`optzoo.layout.default_layout`
        per leaf (2-D leaves are matrices, vectors go unprojected to the inner optimizer,
        leaves with more axes, embeddings and heads raise asking for a decision);
        ``MatrixLayout()`` reads every leaf with at least 2 axes as its last two axes, leading
        axes being batch axes (``optax.contrib.galore`` leaves non-2-D leaves unprojected:
        give those leaves ``None`` in a layout tree for that).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`GaLoreState`.

    Raises:
      ValueError: ``rank < 1``, ``update_proj_gap < 1``, unknown ``side``, ``scale <= 0``,
        ``b1``/``b2`` outside ``[0, 1)``, ``eps <= 0``, non-finite values, bad layout.
      TypeError: non-integer ``rank``/``update_proj_gap`` (an array, as under
        ``optax.inject_hyperparams`` without ``static_args``, gets the list of every static
        argument), bool or ``None`` reals, an integer ``mu_dtype``, a ``base_optimizer`` that
        is not a transformation; a non-float parameter (at init, naming its path).

    ``optax.inject_hyperparams``: pass ``static_args=scale_by_galore.static_args``
    (``rank, update_proj_gap, side, mu_dtype, base_optimizer, layout``); the float
    hyperparameters can be injected. ``b1``/``b2`` given as Python numbers are rounded to
    float32 at construction, the value an injected hyperparameter has, so the wrapped and the
    plain transformation compute the same numbers (this moves ``1 - b2`` by ``1.3e-5``
    relative against a float64 ``1 - 0.999``: ``optax.contrib.galore``'s Adam, which keeps
    the Python constant, differs from ``side='optax-like'`` by a few ``1e-6`` relative).

    Example:
      >>> import jax.numpy as jnp, optax, optzoo
      >>> tx = optax.chain(optzoo.scale_by_galore(rank=2, update_proj_gap=50),
      ...                  optax.scale_by_learning_rate(1e-2))
      >>> params = {"w": jnp.ones((8, 4)), "b": jnp.zeros((4,))}
      >>> state = tx.init(params)
      >>> updates, state = tx.update(params, state, params)

    References:
      Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
      ICML 2024, arXiv:2403.03507 (Algorithm 1; projector of Sec. 4.1).
    """
    what = "scale_by_galore"
    static = SCALE_BY_GALORE_STATIC_ARGS
    rank = _static_int(rank, "rank", what, 1, static)
    gap = _static_int(update_proj_gap, "update_proj_gap", what, 1, static)
    _check_common(scale, side, base_optimizer, what)
    _check_adam(b1, b2, eps, mu_dtype, what)
    base = _default_base(base_optimizer, b1, b2, eps, mu_dtype)

    def init_fn(params):
        treedef, _, base_state, projectors = _init_pieces(params, layout, rank, side, what, base)
        return GaLoreState(jnp.zeros([], jnp.int32), base_state, treedef.unflatten(projectors))

    def update_fn(updates, state, params=None, **extra_args):
        del params
        core = _Core(updates, layout, rank, side, what)
        old = core.flat(state.projector)
        proj = jax.lax.cond(state.count % gap == 0, lambda: core.svd_projectors(old),
                            lambda: old)
        low_rank = core.project(proj)
        low_upd, base_state = core.base_step(base, low_rank, state.base_optimizer_state,
                                             extra_args)
        out = core.lift(proj, low_upd, scale)
        return out, GaLoreState(optax.safe_int32_increment(state.count), base_state,
                                core.treedef.unflatten(proj))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def galore(
    learning_rate: optax.ScalarOrSchedule,
    rank: int = 128,
    *,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    side: str = "std",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: Any | None = None,
    weight_decay: float = 0.0,
    weight_decay_mask: Any | None = None,
    base_optimizer: optax.GradientTransformation | None = None,
    layout: _layout.LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    r"""GaLore: Adam in an SVD-refreshed low-rank gradient subspace, decoupled weight decay.

    .. math::
      W_{t+1} = W_t - \eta_t\,\bigl(u_t + \lambda W_t\bigr),

    with ``u_t`` the :func:`scale_by_galore` direction (Adam on ``R_t = P_tᵀ G_t`` or
    ``G_t P_t``, lifted back and multiplied by ``scale``) and the weight decay ``λ`` applied
    in the full parameter space. With ``side='optax-like'`` (and 2-D matrix leaves, the same
    ``rank``, ``update_proj_gap``, ``scale``, weight decay and mask) this is step for step
    ``optax.contrib.galore``; the default ``side='std'`` is the official GaLore rule.

    Range (a documented limit): gradients beyond ~1.8e19 in float32/bfloat16 overflow the inner
    Adam's second moment to ``inf`` (as in ``optax.adam``; the entry then stops moving); float16
    leaves: moments in float32. The experiments harness clips gradients (``grad_clip=1.0``) long
    before.

    Args:
      learning_rate: ``η``, a float or an optax schedule.
      rank: target rank (clipped per matrix to ``min(m, n)`` with a warning).
      update_proj_gap: steps between SVD refreshes of the projector (``>= 1``).
      scale: ``α`` multiplying the lifted update of matrix leaves.
      side: ``'std'`` (official), ``'optax-like'``, ``'left'`` or ``'right'``.
      b1: Adam ``β₁``.
      b2: Adam ``β₂``.
      eps: Adam ``ε``.
      mu_dtype: dtype of Adam's first moment.
      weight_decay: ``λ`` of the decoupled weight decay (full space, every leaf unless
        masked).
      weight_decay_mask: tree of booleans or callable, as ``optax.add_decayed_weights``.
      base_optimizer: params-free inner transform replacing Adam.
      layout: matrix layout spec (see :func:`scale_by_galore`).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Raises:
      As :func:`scale_by_galore` (named ``galore``), and ``learning_rate`` ``None``,
      negative or non-finite, ``weight_decay < 0``.

    ``optax.inject_hyperparams``: ``static_args=galore.static_args`` (``rank,
    update_proj_gap, side, mu_dtype, base_optimizer, layout, weight_decay_mask``); see
    :func:`scale_by_galore` for the float32 rounding of ``b1``/``b2``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optzoo
      >>> tx = optzoo.galore(1e-2, rank=4, update_proj_gap=100, weight_decay=0.01)
      >>> params = {"w": jnp.ones((16, 8)), "b": jnp.zeros((8,))}
      >>> state = tx.init(params)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = tx.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)

    References:
      Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
      ICML 2024, arXiv:2403.03507.
    """
    what = "galore"
    _checks.learning_rate(learning_rate, "learning_rate", what)
    _static_int(rank, "rank", what, 1, GALORE_STATIC_ARGS)
    _static_int(update_proj_gap, "update_proj_gap", what, 1, GALORE_STATIC_ARGS)
    _check_common(scale, side, base_optimizer, what)
    _check_adam(b1, b2, eps, mu_dtype, what)
    _checks.nonnegative(weight_decay, "weight_decay", what)
    return _partition.check_update_shapes(optax.chain(
        scale_by_galore(rank, update_proj_gap=update_proj_gap, scale=scale, side=side, b1=b1,
                        b2=b2, eps=eps, mu_dtype=mu_dtype, base_optimizer=base_optimizer,
                        layout=layout),
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    ), "galore")


scale_by_galore.static_args = SCALE_BY_GALORE_STATIC_ARGS
galore.static_args = GALORE_STATIC_ARGS
