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
projected gradient with an inverse empirical Fisher. The three share one projection block
(plans, SVD projectors, project, inner step, lift, argument checks); the rules below hold for
all of them.

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

Range (a documented limit): gradients beyond ~1.8e19 in float32/bfloat16 overflow the inner
Adam's second moment to ``inf`` (as in ``optax.adam``; the entry then stops moving). The
experiments harness clips gradients (``grad_clip=1.0``) long before.

``optax.inject_hyperparams``: every factory lists the arguments it cannot trace (shapes, step
gaps, strings, dtypes, trees and callables) as ``factory.static_args``; pass them as
``static_args``. An array where a static integer is expected is refused with that whole list.
The float hyperparameters can be injected; ``b1``/``b2`` given as Python numbers are rounded
to float32 at construction, the value an injected hyperparameter has, so the wrapped and the
plain transformation compute the same numbers (this moves ``1 - b2`` by ``1.3e-5`` relative
against a float64 ``1 - 0.999``: ``optax.contrib.galore``'s Adam, which keeps the Python
constant, differs from ``side='optax-like'`` by a few ``1e-6`` relative).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optzoo import _lowrank
from optzoo import layout as layout_lib

__all__ = [
    "GALORE_STATIC_ARGS",
    "SCALE_BY_GALORE_STATIC_ARGS",
    "SIDES",
    "GaLoreState",
    "scale_by_galore",
    "galore",
]

SIDES = _lowrank.SIDES


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


#: Arguments of :func:`scale_by_galore` that ``optax.inject_hyperparams`` cannot trace (shapes,
#: step gaps, strings, dtypes, trees and callables): pass them as ``static_args``.
SCALE_BY_GALORE_STATIC_ARGS = (
    "rank",
    "update_proj_gap",
    "side",
    "mu_dtype",
    "base_optimizer",
    "layout",
)
#: The same for :func:`galore` (also ``galore.static_args``).
GALORE_STATIC_ARGS = SCALE_BY_GALORE_STATIC_ARGS + ("weight_decay_mask",)


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
    layout: layout_lib.LayoutSpec = None,
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
    behave exactly as independent slices. Range and float16 leaves: module docstring.

    Geometry: within the rank-``r`` subspace this is the inner optimizer's steepest descent
    (Adam: a diagonally preconditioned, sign-like ``ℓ∞``-type step). Symmetry: if every
    gradient is mapped ``G ↦ U G Π`` with ``U`` orthogonal on the compressed side and ``Π`` a
    signed permutation on the kept side (Adam's group), the whole trajectory maps alike as
    long as no refresh after the first happens (a later SVD may pick other singular-vector
    signs, which the carried moments see).

    Args:
      rank: target rank ``r`` (``>= 1``); clipped per matrix to ``min(m, n)`` with a warning.
      update_proj_gap: ``T >= 1``; the projector is recomputed at steps ``0, T, 2T, ...``.
      scale: ``α > 0``, multiplies the lifted update of matrix leaves (0.25 in the GaLore
        README; ``optax.contrib.galore`` defaults to 1.0).
      side: ``'std'`` (official), ``'optax-like'``, ``'left'`` or ``'right'``.
      b1: Adam ``β₁ ∈ [0, 1)`` of the default inner optimizer.
      b2: Adam ``β₂ ∈ [0, 1)`` of the default inner optimizer.
      eps: Adam ``ε > 0`` of the default inner optimizer (added to ``√v̂``, optax's form; the
        PyTorch reference adds it to the uncorrected ``√v``, which differs only through
        ``ε``).
      mu_dtype: dtype of Adam's first moment (default: that of the gradient).
      base_optimizer: params-free inner transform replacing Adam (``b1, b2, eps, mu_dtype``
        are then unused, though still checked).
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
        argument, ``scale_by_galore.static_args``), bool or ``None`` reals, an integer
        ``mu_dtype``, a ``base_optimizer`` that is not a transformation; a non-float
        parameter (naming its path).

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
    rank = _lowrank.check_projection(rank, scale, side, what, static)
    gap = _lowrank.static_int(update_proj_gap, "update_proj_gap", what, static)
    base = _lowrank.base_optimizer(base_optimizer, b1, b2, eps, mu_dtype, what)

    def init_fn(params):
        treedef, _, base_state, projectors = _lowrank.init_state(
            params, layout, rank, side, what, base
        )
        return GaLoreState(jnp.zeros([], jnp.int32), base_state, treedef.unflatten(projectors))

    def update_fn(updates, state, params=None, **extra_args):
        del params
        view = _lowrank.Projection(updates, layout, rank, side, what)
        proj = view.projectors(state.projector, state.count % gap == 0)
        out, base_state = view.descend(
            base, view.project(proj), state.base_optimizer_state, extra_args, proj, scale
        )
        return out, GaLoreState(
            optax.safe_int32_increment(state.count), base_state, view.treedef.unflatten(proj)
        )

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
    layout: layout_lib.LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    r"""GaLore: Adam in an SVD-refreshed low-rank gradient subspace, decoupled weight decay.

    .. math::
      W_{t+1} = W_t - \eta_t\,\bigl(u_t + \lambda W_t\bigr),

    with ``u_t`` the :func:`scale_by_galore` direction (Adam on ``R_t = P_tᵀ G_t`` or
    ``G_t P_t``, lifted back and multiplied by ``scale``) and the weight decay ``λ`` applied
    in the full parameter space: ``chain(scale_by_galore, add_decayed_weights(λ,
    weight_decay_mask), scale_by_learning_rate(η))``. With ``side='optax-like'`` (and 2-D
    matrix leaves, the same ``rank``, ``update_proj_gap``, ``scale``, weight decay and mask)
    this is step for step ``optax.contrib.galore``; the default ``side='std'`` is the official
    GaLore rule. The arguments not listed below are :func:`scale_by_galore`'s, with the same
    meaning, defaults and checks.

    Args:
      learning_rate: ``η``, a float or an optax schedule.
      rank: target rank (clipped per matrix to ``min(m, n)`` with a warning).
      weight_decay: ``λ >= 0`` of the decoupled weight decay (full space, every leaf unless
        masked).
      weight_decay_mask: tree of booleans or callable, as ``optax.add_decayed_weights``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Raises:
      ValueError, TypeError: as :func:`scale_by_galore` (an array ``rank``/``update_proj_gap``
        gets ``galore.static_args``), and ``learning_rate`` ``None``, negative or non-finite,
        ``weight_decay < 0``.

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
    _lowrank.static_int(rank, "rank", what, GALORE_STATIC_ARGS)
    _lowrank.static_int(update_proj_gap, "update_proj_gap", what, GALORE_STATIC_ARGS)
    direction = scale_by_galore(
        rank,
        update_proj_gap=update_proj_gap,
        scale=scale,
        side=side,
        b1=b1,
        b2=b2,
        eps=eps,
        mu_dtype=mu_dtype,
        base_optimizer=base_optimizer,
        layout=layout,
    )
    return _lowrank.alias(
        what,
        direction,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
    )


scale_by_galore.static_args = SCALE_BY_GALORE_STATIC_ARGS
galore.static_args = GALORE_STATIC_ARGS
