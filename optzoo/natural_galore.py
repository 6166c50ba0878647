r"""Natural GaLore: GaLore with an inverse empirical Fisher applied to the low-rank gradients.

After GaLore's projection (:mod:`optzoo.galore`), each matrix slice's low-rank gradient
``g_t`` (flattened, ``p = r·max(m,n)`` entries under the default side rule) is pushed into a
FIFO history of the last ``s`` low-rank gradients, the current one included,
``G_t = [g_t, g_{t-1}, …, g_{t-s+1}] ∈ R^{p×s}``, and replaced by

.. math::
  \tilde g_t = \hat F_t^{-1} g_t,\qquad \hat F_t = \lambda I + G_t G_t^\top

(no ``1/s``, as in the released code), computed through Woodbury with an ``s×s`` Cholesky
(:func:`woodbury_inverse_product`). The inner optimizer (Adam) then runs on ``g̃_t``.

Warm-up: the history starts as zeros. A zero column adds nothing to ``G Gᵀ`` (a sum of outer
products of the columns), and in Woodbury it gives an identity row/column of
``S = I + GᵀG/λ`` uncoupled from the rest and a zero entry of ``Gᵀg``, so its entry of
``z = S⁻¹Gᵀg`` is zero and ``G z`` is unchanged: during the first ``s − 1`` steps the product
is *exactly* the one over the gradients seen so far.

Projector: the paper's one-sided ``P_t`` (GaLore's), chosen by ``side``. The released code
instead uses a Tucker decomposition on all modes (for a matrix ``Uᵀ G V``, an ``r×r`` core);
we follow the paper. The history is kept across projector refreshes, like the Adam moments
(its old entries are then in the old basis). Side rules, non-matrix leaves, float16 leaves,
rank clipping, the range limit and ``optax.inject_hyperparams``: as in :mod:`optzoo.galore`.

Against the release (``selfsupervised-ai/Natural-GaLore`` @ ``e23336d``,
``code/natural_galore/subspace_adamw.py`` and ``galore_projector_tensor.py``; checked by a
numpy port in ``tests/test_natural_galore.py``):

* same: FIFO history of ``s = 20`` flattened low-rank gradients with the current one appended
  before the solve, ``F̂ = λI + GGᵀ`` with ``λ = 1e-3`` and no ``1/s``, refresh at steps
  ``0, T, 2T, ...`` (``T = 200``), Adam ``β = (0.9, 0.999)``, ``ε = 1e-6`` (the release's
  ``SubSpaceAdamW`` default, which its training script keeps), ``scale`` applied after the
  lift (0.25 in the release's scripts), weight decay in the full space.
* different, on purpose: (1) the projector is the paper's one-sided SVD ``P`` (the release
  uses a Tucker decomposition on every mode, for a matrix ``Uᵀ G V``); (2) ``F̂⁻¹g`` is
  computed in the push-through form ``G S⁻¹e₁/λ`` (the same number as the release's
  ``g/λ − G S⁻¹Gᵀg/λ²``, without its float32 cancellation); (3) Adam's ``ε`` is added to
  ``√v̂`` (optax) rather than to the uncorrected ``√v`` with the bias corrections folded into
  the step size (the release, from HF's AdamW): the two differ only through ``ε``, by
  ``ε(1/√(1−β₂ᵗ) − 1)`` in the denominator; (4) decoupled weight decay is ``W − η(u + λW)``
  (optax); the release decays the already-updated weight, ``(W − ηu)(1 − ηλ)``, a
  difference of ``η²λu`` per step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.scipy.linalg import solve_triangular

from optzoo import _checks, _lowrank
from optzoo import layout as layout_lib

__all__ = [
    "NATURAL_GALORE_STATIC_ARGS",
    "SCALE_BY_NATURAL_GALORE_STATIC_ARGS",
    "NaturalGaLoreState",
    "scale_by_natural_galore",
    "natural_galore",
    "woodbury_inverse_product",
]


#: Arguments of :func:`scale_by_natural_galore` that ``optax.inject_hyperparams`` cannot
#: trace: pass them as ``static_args`` (also ``scale_by_natural_galore.static_args``).
SCALE_BY_NATURAL_GALORE_STATIC_ARGS = (
    "rank",
    "update_proj_gap",
    "history",
    "side",
    "mu_dtype",
    "base_optimizer",
    "layout",
)
#: The same for :func:`natural_galore` (also ``natural_galore.static_args``).
NATURAL_GALORE_STATIC_ARGS = SCALE_BY_NATURAL_GALORE_STATIC_ARGS + ("weight_decay_mask",)


class NaturalGaLoreState(NamedTuple):
    """State of :func:`scale_by_natural_galore`.

    Attributes:
      count: number of updates taken (int32).
      base_optimizer_state: the inner optimizer's state on the low-rank tree (as in GaLore).
      projector: as in :class:`optzoo.galore.GaLoreState`.
      history: per matrix leaf, ``batch + (s,) + low_rank_shape`` in the parameter dtype,
        newest first (zeros until filled); ``optax.MaskedNode()`` for non-matrix leaves.
    """

    count: jax.Array
    base_optimizer_state: optax.OptState
    projector: Any
    history: Any


def _cholesky_solve(s_mat: jax.Array, rhs: jax.Array) -> jax.Array:
    chol = jnp.linalg.cholesky(s_mat)
    y = solve_triangular(chol, rhs, lower=True)
    return solve_triangular(jnp.swapaxes(chol, -1, -2), y, lower=False)


def woodbury_inverse_product(history: jax.Array, vector: jax.Array, damping: Any) -> jax.Array:
    r"""``(λI + G Gᵀ)⁻¹ v`` by Woodbury, for any ``v``.

    .. math::
      (\lambda I + G G^\top)^{-1} v = \frac{v}{\lambda} - \frac{G z}{\lambda^2},\qquad
      S z = G^\top v,\quad S = I_s + \frac{G^\top G}{\lambda}\ \text{(Cholesky)}.

    Args:
      history: ``(..., s, p)``, the ``s`` columns of ``G`` as rows.
      vector: ``(..., p)``.
      damping: ``λ > 0``.

    Returns:
      ``(..., p)``, in the dtype of the inputs.

    Note: this general form subtracts two terms of size ``‖v‖/λ``; in float32 it loses all
    accuracy once ``‖G‖²/λ`` is large (~1e4 relative error at ``‖g‖ ≈ 100``, ``λ = 1e-3``).
    The optimizer uses the exact rewrite for ``v`` = the newest column (see
    :func:`_fisher_inverse_newest`), which has no cancellation.
    """
    lam = jnp.asarray(damping, history.dtype)
    s = history.shape[-2]
    gram = history @ jnp.swapaxes(history, -1, -2)
    s_mat = jnp.eye(s, dtype=history.dtype) + gram / lam
    z = _cholesky_solve(s_mat, (history @ vector[..., None]))
    return vector / lam - (jnp.swapaxes(history, -1, -2) @ z)[..., 0] / lam**2


def _fisher_inverse_newest(history: jax.Array, damping: Any) -> jax.Array:
    r"""``(λI + G Gᵀ)⁻¹ g`` for ``g = G e₁`` (the newest row of ``history``, ``(..., s, p)``).

    Push-through identity: ``(λI + GGᵀ)⁻¹ G = G (λI + GᵀG)⁻¹ = G S⁻¹ / λ``, so
    ``F̂⁻¹ g = G S⁻¹ e₁ / λ``: the same number as the Woodbury form, with the same ``s×s``
    Cholesky of ``S = I + GᵀG/λ``, without the ``g/λ − Gz/λ²`` cancellation.
    """
    # Multiplications by 1/λ, not divisions by λ: with a constant λ XLA may rewrite x/λ as
    # x·(1/λ), with an injected (traced) λ it cannot; written this way both programs round
    # alike (the divisions made inject_hyperparams(natural_galore) differ from the plain
    # transformation by up to 5e-3 relative on entries of a rank-deficient history).
    inv = 1.0 / jnp.asarray(damping, history.dtype)
    s = history.shape[-2]
    gram = history @ jnp.swapaxes(history, -1, -2)
    s_mat = jnp.eye(s, dtype=history.dtype) + gram * inv
    e1 = jnp.zeros(history.shape[:-2] + (s, 1), history.dtype).at[..., 0, 0].set(1.0)
    w = _cholesky_solve(s_mat, e1)
    return (jnp.swapaxes(w, -1, -2) @ history)[..., 0, :] * inv


def _natural_step(
    view: _lowrank.Projection, low_rank: list[Any], history: Any, damping: Any
) -> tuple[list[Any], list[Any]]:
    """Pushes every matrix leaf's low-rank gradient into its history (newest first, the oldest
    dropped) and replaces it by ``F̂⁻¹ g`` (in float32 or wider, cast back). Non-matrix leaves
    pass. Returns ``(natural gradients, new histories)``, flat."""
    natural, new_hist = [], []
    for p, r, h in zip(view.plans, low_rank, view.flat(history), strict=True):
        if p is None:
            natural.append(r)
            new_hist.append(h)
            continue
        hb = p.batched(h)  # (B, s, a, b)
        rb = p.batched(r)  # (B, a, b)
        hb = jnp.concatenate([rb[:, None], hb[:, :-1]], axis=1)
        new_hist.append(p.unbatched(hb))
        flat = hb.reshape(hb.shape[:2] + (-1,)).astype(_lowrank.compute_dtype(hb.dtype))
        g_nat = _fisher_inverse_newest(flat, damping)
        natural.append(p.unbatched(g_nat.reshape(rb.shape)).astype(r.dtype))
    return natural, new_hist


def scale_by_natural_galore(
    rank: int = 128,
    *,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    side: str = "std",
    history: int = 20,
    damping: float = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    mu_dtype: Any | None = None,
    base_optimizer: optax.GradientTransformation | None = None,
    layout: layout_lib.LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Natural GaLore direction: GaLore with ``(λI + GGᵀ)⁻¹`` on the low-rank gradients.

    Per matrix slice, with GaLore's projector ``P_t`` (:func:`optzoo.scale_by_galore`):

    .. math::
      g_t = \mathrm{vec}(R_t),\quad G_t = [g_t, \dots, g_{t-s+1}],\quad
      \tilde g_t = (\lambda I + G_t G_t^\top)^{-1} g_t,\quad
      u_t = \alpha\,\mathrm{lift}_{P_t}\bigl(\mathrm{Adam}(\tilde g_1, \dots, \tilde g_t)\bigr).

    The ``s×s`` system is solved by Cholesky in float32 (or wider). Until ``s`` gradients
    have been seen the missing history entries are zeros, which contribute exactly nothing
    (module docstring). Non-matrix leaves go to the inner optimizer unprojected and
    unpreconditioned. Geometry/symmetry: GaLore's, with the natural-gradient metric
    ``F̂`` of the subspace in place of the identity; ``F̂`` is invariant under orthogonal
    maps of the subspace, so the Fisher step itself is ``O(p)``-equivariant. The arguments
    not listed below are :func:`optzoo.scale_by_galore`'s, with the same meaning and checks.

    Args:
      rank: target rank (clipped per matrix to ``min(m, n)`` with a warning).
      history: ``s >= 1``, number of low-rank gradients in the Fisher estimate (current
        one included; ``s = 1`` gives ``g/(λ + ‖g‖²)``).
      damping: ``λ > 0``.
      eps: Adam ``ε`` (``1e-6``, the release's; added to ``√v̂``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`NaturalGaLoreState`.

    Raises:
      ValueError, TypeError: as :func:`optzoo.scale_by_galore` (an array lists
        ``scale_by_natural_galore.static_args``), and ``history`` not an int ``>= 1``,
        ``damping <= 0``.

    Example:
      >>> import jax.numpy as jnp, optax, optzoo
      >>> tx = optax.chain(optzoo.scale_by_natural_galore(rank=2, history=4),
      ...                  optax.scale_by_learning_rate(1e-2))
      >>> params = {"w": jnp.ones((8, 4))}
      >>> updates, state = tx.update(params, tx.init(params), params)

    References:
      A. Das, "Natural GaLore: Accelerating GaLore for memory-efficient LLM training and
      fine-tuning", arXiv:2410.16029 (Sec. 3, the Woodbury form of the empirical Fisher);
      Zhao et al., arXiv:2403.03507 (the projection).
    """
    what = "scale_by_natural_galore"
    static = SCALE_BY_NATURAL_GALORE_STATIC_ARGS
    rank = _lowrank.check_projection(rank, scale, side, what, static)
    gap = _lowrank.static_int(update_proj_gap, "update_proj_gap", what, static)
    s = _lowrank.static_int(history, "history", what, static)
    _checks.positive(damping, "damping", what)
    base = _lowrank.base_optimizer(base_optimizer, b1, b2, eps, mu_dtype, what)

    def init_fn(params):
        treedef, plans, base_state, projectors = _lowrank.init_state(
            params, layout, rank, side, what, base
        )
        hist = [
            optax.MaskedNode()
            if p is None
            else jnp.zeros(
                p.batch_shape + (s,) + p.low_rank_shape[len(p.batch_shape) :], jnp.result_type(x)
            )
            for p, x in zip(plans, treedef.flatten_up_to(params), strict=True)
        ]
        return NaturalGaLoreState(
            jnp.zeros([], jnp.int32),
            base_state,
            treedef.unflatten(projectors),
            treedef.unflatten(hist),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params
        view = _lowrank.Projection(updates, layout, rank, side, what)
        proj = view.projectors(state.projector, state.count % gap == 0)
        natural, hist = _natural_step(view, view.project(proj), state.history, damping)
        out, base_state = view.descend(
            base, natural, state.base_optimizer_state, extra_args, proj, scale
        )
        return out, NaturalGaLoreState(
            optax.safe_int32_increment(state.count),
            base_state,
            view.treedef.unflatten(proj),
            view.treedef.unflatten(hist),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def natural_galore(
    learning_rate: optax.ScalarOrSchedule,
    rank: int = 128,
    *,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    side: str = "std",
    history: int = 20,
    damping: float = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    mu_dtype: Any | None = None,
    weight_decay: float = 0.0,
    weight_decay_mask: Any | None = None,
    base_optimizer: optax.GradientTransformation | None = None,
    layout: layout_lib.LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Natural GaLore: GaLore + inverse empirical Fisher (Woodbury) + Adam, decoupled decay.

    .. math::
      W_{t+1} = W_t - \eta_t (u_t + \lambda_{wd} W_t),

    with ``u_t`` the :func:`scale_by_natural_galore` direction: ``chain(
    scale_by_natural_galore, add_decayed_weights(λ_wd, weight_decay_mask),
    scale_by_learning_rate(η))``. Defaults follow the released code and scripts (``s = 20``,
    ``λ = 1e-3``, ``T = 200``, ``α = 0.25``, Adam ``ε = 1e-6``; the differences from the
    release are listed in the module docstring). The arguments not listed below are
    :func:`scale_by_natural_galore`'s, with the same meaning, defaults and checks.

    Args:
      learning_rate: ``η``, a float or an optax schedule.
      rank: target rank (clipped per matrix to ``min(m, n)`` with a warning).
      weight_decay: ``λ_wd >= 0``, decoupled weight decay in the full parameter space.
      weight_decay_mask: tree of booleans or callable, as ``optax.add_decayed_weights``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Raises:
      ValueError, TypeError: as :func:`scale_by_natural_galore` (an array
        ``rank``/``update_proj_gap``/``history`` gets ``natural_galore.static_args``), and
        ``learning_rate`` ``None``, negative or non-finite, ``weight_decay < 0``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optzoo
      >>> tx = optzoo.natural_galore(1e-2, rank=4, history=8)
      >>> params = {"w": jnp.ones((16, 8))}
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)

    References:
      A. Das, "Natural GaLore: Accelerating GaLore for memory-efficient LLM training and
      fine-tuning", arXiv:2410.16029.
    """
    what = "natural_galore"
    for name, value in (("rank", rank), ("update_proj_gap", update_proj_gap), ("history", history)):
        _lowrank.static_int(value, name, what, NATURAL_GALORE_STATIC_ARGS)
    direction = scale_by_natural_galore(
        rank,
        update_proj_gap=update_proj_gap,
        history=history,
        damping=damping,
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


scale_by_natural_galore.static_args = SCALE_BY_NATURAL_GALORE_STATIC_ARGS
natural_galore.static_args = NATURAL_GALORE_STATIC_ARGS
