"""Online Subspace Descent: GaLore with a projector moved every step by online PCA.

Instead of an SVD every ``update_proj_gap`` steps, each matrix leaf's projector takes one
optimizer step per update on the online-PCA loss of the normalized gradient; the inner
optimizer runs on the projected gradient exactly as in :mod:`optzoo.galore`, with the same
projection block (side rules, layouts, rank clipping, non-matrix leaves, float16 leaves, the
range limit and ``optax.inject_hyperparams``: as there).

Against the authors' release (``kyleliang919/Online-Subspace-Descent`` @ ``e694775``,
``galore_torch/galore_projector.py`` with ``proj_type='continuous'`` and
``galore_torch/adamw.py``; checked step by step by a numpy port in
``tests/test_subspace_descent.py``):

* same: the projector starts as the top-``r`` singular vectors of the first gradient and is
  **not moved on that step** (the release creates its AdamW there and the step finds no
  gradient: at the SVD the PCA-loss gradient is exactly zero, so an Adam step would only
  normalize rounding noise into a full-size move, which made jit and eager runs differ by
  ~2.5 % from step 1); afterwards one AdamW step per update on
  ``‖PPᵀX̃ − X̃‖²`` (``X̃ = G/‖G‖_F``, no orthogonality term), taken after ``P`` was used
  for the step's projection; the projector's AdamW has torch's defaults
  ``β = (0.9, 0.999)``, ``ε = 1e-8``, weight decay ``0.01``, and learning rate
  ``1/update_proj_gap`` (``update_proj_gap = 200`` in the release's README); the main Adam
  ``ε = 1e-6`` (the release's ``GaLoreAdamW`` default, kept by its training script);
  ``scale = 0.25`` (the README's command; its argparse default is 1.0).
* different, on purpose: (1) with a learning-rate *schedule* the release multiplies the
  projector's rate by ``η_t/η_0``; an optax schedule has no base value to divide by, so
  :func:`online_subspace_descent` keeps ``1/update_proj_gap`` unless ``projector_lr_ratio``
  or ``projector_learning_rate`` is given (pass
  ``projector_learning_rate=lambda t: sched(t) / (T * peak)`` to reproduce it); (2) the
  projector and its moments stay in float32 (the release casts it to the parameter dtype:
  in bfloat16 the steps of size ``~1/T`` relative would round away); (3) main Adam's
  ``ε`` is added to ``√v̂`` (optax), not to the uncorrected ``√v`` (a difference only
  through ``ε``); (4) decoupled weight decay ``W − η(u + λW)`` (optax) instead of the
  release's ``(W − ηu)(1 − ηλ)`` (``η²λu`` per step); (5) a zero gradient leaves the
  projector's loss at 0 instead of dividing by ``‖G‖ = 0``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo import _checks, _lowrank
from optzoo import layout as layout_lib

__all__ = [
    "ONLINE_SUBSPACE_DESCENT_STATIC_ARGS",
    "SCALE_BY_ONLINE_SUBSPACE_DESCENT_STATIC_ARGS",
    "OnlineSubspaceDescentState",
    "pca_loss",
    "scale_by_online_subspace_descent",
    "online_subspace_descent",
]

#: Arguments of :func:`scale_by_online_subspace_descent` that ``optax.inject_hyperparams``
#: cannot trace: pass them as ``static_args`` (also ``.static_args`` on the function).
SCALE_BY_ONLINE_SUBSPACE_DESCENT_STATIC_ARGS = (
    "rank",
    "side",
    "mu_dtype",
    "base_optimizer",
    "layout",
)
#: The same for :func:`online_subspace_descent` (also ``online_subspace_descent.static_args``).
#: (``update_proj_gap`` only sets the default projector rate ``1/T``, so it may be injected.)
ONLINE_SUBSPACE_DESCENT_STATIC_ARGS = (
    "rank",
    "side",
    "mu_dtype",
    "weight_decay_mask",
    "base_optimizer",
    "layout",
)


class OnlineSubspaceDescentState(NamedTuple):
    """State of :func:`scale_by_online_subspace_descent`.

    Attributes:
      count: number of updates taken (int32).
      base_optimizer_state: the inner optimizer's state on the low-rank tree (as in GaLore).
      projector: per matrix leaf, the projector *for the next step*, float32 (or wider), shape
        as in :class:`GaLoreState`; ``optax.MaskedNode()`` for non-matrix leaves.
      projector_optimizer_state: state of the projectors' AdamW direction,
        ``(ScaleByAdamState, EmptyState)`` (Adam, then the decoupled weight decay; the
        learning rate is applied from ``count``). Its Adam count lags ``count`` by one: the
        projector is not moved on the step that initializes it.
    """

    count: jax.Array
    base_optimizer_state: optax.OptState
    projector: Any
    projector_optimizer_state: optax.OptState


def _pca_loss_grad(p: jax.Array, x: jax.Array, orth_penalty: Any) -> jax.Array:
    """∇_P of ``‖P Pᵀ X − X‖² + μ‖PᵀP − I‖²`` on ``(B, k, r)`` / ``(B, k, l)`` stacks."""
    e = p @ (jnp.swapaxes(p, -1, -2) @ x) - x
    grad = 2.0 * (e @ (jnp.swapaxes(x, -1, -2) @ p) + x @ (jnp.swapaxes(e, -1, -2) @ p))
    gram = jnp.swapaxes(p, -1, -2) @ p - jnp.eye(p.shape[-1], dtype=p.dtype)
    return grad + 4.0 * orth_penalty * (p @ gram)


def pca_loss(p: jax.Array, x: jax.Array, orth_penalty: float) -> jax.Array:
    """Online-PCA loss ``‖P Pᵀ X − X‖²_F + μ‖PᵀP − I‖²_F`` summed over leading axes.

    ``p``: ``(..., k, r)``; ``x``: ``(..., k, l)``, the (normalized) gradient read with the
    compressed side first (``G`` for a left projector, ``Gᵀ`` for a right one).
    """
    e = p @ (jnp.swapaxes(p, -1, -2) @ x) - x
    gram = jnp.swapaxes(p, -1, -2) @ p - jnp.eye(p.shape[-1], dtype=p.dtype)
    return jnp.sum(e * e) + orth_penalty * jnp.sum(gram * gram)


def _pca_grads(view: _lowrank.Projection, projectors: list[Any], orth_penalty: Any) -> list[Any]:
    """∇_P of every matrix leaf's PCA loss at its projector, on ``X̃ = X/‖X‖_F`` (a zero
    gradient gives ``X̃ = 0``); non-matrix leaves keep their ``MaskedNode``."""
    grads = []
    for p, gm, pr in zip(view.plans, view.mats, projectors, strict=True):
        if p is None:
            grads.append(pr)
            continue
        x = gm if p.left else jnp.swapaxes(gm, -1, -2)
        norm = jnp.sqrt(jnp.sum(x * x, axis=(-2, -1), keepdims=True))
        x = x / jnp.where(norm > 0, norm, 1.0)
        pb = p.batched(pr)
        mu = jnp.asarray(orth_penalty, pb.dtype)
        grads.append(p.unbatched(_pca_loss_grad(pb, x.astype(pb.dtype), mu)))
    return grads


def scale_by_online_subspace_descent(
    rank: int = 128,
    *,
    projector_learning_rate: optax.ScalarOrSchedule = 0.005,
    projector_weight_decay: float = 0.01,
    projector_b1: float = 0.9,
    projector_b2: float = 0.999,
    projector_eps: float = 1e-8,
    orth_penalty: float = 0.0,
    scale: float = 0.25,
    side: str = "std",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    mu_dtype: Any | None = None,
    base_optimizer: optax.GradientTransformation | None = None,
    layout: layout_lib.LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Online Subspace Descent direction: low-rank Adam with an online-PCA-updated projector.

    Per matrix slice ``G_t`` (``X_t = G_t`` for a left projector ``P ∈ R^{m×r}``,
    ``X_t = G_tᵀ`` for a right one ``Q ∈ R^{n×r}``; ``X̃_t = X_t / ‖X_t‖_F``), steps
    ``t = 0, 1, ...``:

    .. math::
      P_0 = \mathrm{top}_r\,\mathrm{SVD}(G_0),\qquad R_t = P_t^\top X_t\ (\text{left}),
      \qquad u_t = \alpha\, P_t\, \mathrm{Adam}(R_{0..t}),

    .. math::
      L_t(P) = \|P P^\top \tilde X_t - \tilde X_t\|_F^2 + \mu \|P^\top P - I\|_F^2,\qquad
      P_{t+1} = \begin{cases} P_0 & t = 0 \\
        P_t - \eta_{P,t} \bigl(\mathrm{Adam}_P(\nabla L_1(P_1), \dots, \nabla L_t(P_t))
        + \lambda_P P_t\bigr) & t \ge 1. \end{cases}

    The projector used at step ``t`` was fitted to gradients up to ``t-1``. It is **not**
    moved on step 0, as in the authors' release: ``P_0`` minimizes ``L_0`` (with ``μ = 0``),
    so ``∇L_0(P_0)`` is rounding noise, which Adam's normalization would turn into a
    full-size step (before this rule jit and eager runs differed by ~2.5 % from step 1).
    ``Adam_P``'s bias correction therefore starts at step 1. ``η_{P,t}`` is
    ``projector_learning_rate`` (a schedule is evaluated at ``t``, the count of this block).
    The inner optimizer's moments are never reset. Projectors and their Adam moments are
    kept in float32 (or wider): they move by small increments that bfloat16 would round
    away. Defaults are the release's (module docstring, with its list of deviations).

    Geometry/symmetry: as GaLore's within the subspace; the projector dynamics are the
    Hamiltonian-descent view of the paper (any projector update rule converges).

    The arguments not listed below are :func:`optzoo.scale_by_galore`'s, with the same
    meaning and checks (``rank``, ``scale``, ``side``, the inner Adam's ``b1``, ``b2``,
    ``mu_dtype``, ``base_optimizer``, ``layout``).

    Args:
      projector_learning_rate: ``η_P`` (float or schedule) of the projector's AdamW; default
        ``1/200``, the release's ``1/update_proj_gap`` at its README's ``update_proj_gap``.
      projector_weight_decay: ``λ_P``, decoupled weight decay of the projector (``0.01``,
        torch AdamW's default, which the release uses).
      projector_b1: ``β₁`` of the projector's Adam (torch's 0.9).
      projector_b2: ``β₂`` of the projector's Adam (torch's 0.999).
      projector_eps: ``ε`` of the projector's Adam (torch's 1e-8).
      orth_penalty: ``μ``, weight of ``‖PᵀP − I‖²`` in the PCA loss. Default 0 (the released
        code's loss has no such term; the SVD start is orthonormal and the reconstruction
        term keeps ``P`` near the Stiefel manifold on the gradient's range).
      eps: Adam ``ε`` of the inner optimizer (``1e-6``, the release's; added to ``√v̂``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`OnlineSubspaceDescentState`.

    Raises:
      ValueError / TypeError: as :func:`optzoo.scale_by_galore` for the shared arguments;
        ``projector_learning_rate`` ``None``/negative, ``projector_weight_decay < 0``,
        ``projector_b1``/``projector_b2`` outside ``[0, 1)``, ``projector_eps <= 0``,
        ``orth_penalty < 0``. Under ``optax.inject_hyperparams`` pass
        ``static_args=scale_by_online_subspace_descent.static_args``.

    Example:
      >>> import jax.numpy as jnp, optax, optzoo
      >>> tx = optax.chain(optzoo.scale_by_online_subspace_descent(rank=2),
      ...                  optax.scale_by_learning_rate(1e-2))
      >>> params = {"w": jnp.ones((8, 4))}
      >>> updates, state = tx.update(params, tx.init(params), params)

    References:
      Liang, Liu, Chen, Liu, "Memory-Efficient LLM Training with Online Subspace Descent",
      NeurIPS 2024, arXiv:2408.12857 (the online-PCA projector update); the SVD start and
      the skipped first projector step follow the authors' code.
    """
    what = "scale_by_online_subspace_descent"
    rank = _lowrank.check_projection(
        rank, scale, side, what, SCALE_BY_ONLINE_SUBSPACE_DESCENT_STATIC_ARGS
    )
    _checks.learning_rate(projector_learning_rate, "projector_learning_rate", what)
    _checks.nonnegative(projector_weight_decay, "projector_weight_decay", what)
    _checks.nonnegative(orth_penalty, "orth_penalty", what)
    base = _lowrank.base_optimizer(base_optimizer, b1, b2, eps, mu_dtype, what)
    proj_tx = optax.chain(
        _lowrank.adam(projector_b1, projector_b2, projector_eps, None, what, "projector_"),
        optax.add_decayed_weights(projector_weight_decay),
    )

    def init_fn(params):
        treedef, _, base_state, projectors = _lowrank.init_state(
            params, layout, rank, side, what, base, _lowrank.compute_dtype
        )
        proj_tree = treedef.unflatten(projectors)
        return OnlineSubspaceDescentState(
            jnp.zeros([], jnp.int32), base_state, proj_tree, proj_tx.init(proj_tree)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params
        view = _lowrank.Projection(updates, layout, rank, side, what)
        first = state.count == 0
        proj = view.projectors(state.projector, first)
        out, base_state = view.descend(
            base, view.project(proj), state.base_optimizer_state, extra_args, proj, scale
        )
        grads = view.treedef.unflatten(_pca_grads(view, proj, orth_penalty))
        proj_tree = view.treedef.unflatten(proj)

        def move():
            direction, p_state = proj_tx.update(grads, state.projector_optimizer_state, proj_tree)
            lr = (
                projector_learning_rate(state.count)
                if callable(projector_learning_rate)
                else projector_learning_rate
            )
            moved = jax.tree.map(
                lambda x, d: (x - jnp.asarray(lr, x.dtype) * d).astype(x.dtype),
                proj_tree,
                direction,
            )
            return moved, p_state

        def keep():
            return proj_tree, state.projector_optimizer_state

        new_proj, p_state = jax.lax.cond(first, keep, move)
        return out, OnlineSubspaceDescentState(
            optax.safe_int32_increment(state.count), base_state, new_proj, p_state
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _projector_rate(
    learning_rate: optax.ScalarOrSchedule, update_proj_gap: Any, ratio: Any, rate: Any, what: str
) -> optax.ScalarOrSchedule:
    """The projector's learning rate of :func:`online_subspace_descent`: ``rate`` when given,
    else ``ratio · learning_rate`` (pointwise for a schedule), else ``1 / update_proj_gap``
    (an injected gap is used as a real ``>= 1``)."""
    if isinstance(update_proj_gap, jax.Array | np.ndarray):  # injected: used as 1/T only
        _checks.real(update_proj_gap, "update_proj_gap", what, lo=1.0)
        gap = update_proj_gap
    else:
        gap = int(_checks.integer(update_proj_gap, "update_proj_gap", what, lo=1))
    if ratio is not None and rate is not None:
        raise ValueError(f"{what}: give projector_lr_ratio or projector_learning_rate, not both")
    if rate is not None:
        return rate
    if ratio is None:
        return 1.0 / gap
    _checks.nonnegative(ratio, "projector_lr_ratio", what)
    if callable(learning_rate):
        return lambda count: ratio * learning_rate(count)
    return ratio * learning_rate


def online_subspace_descent(
    learning_rate: optax.ScalarOrSchedule,
    rank: int = 128,
    *,
    update_proj_gap: int = 200,
    projector_lr_ratio: float | None = None,
    projector_learning_rate: optax.ScalarOrSchedule | None = None,
    projector_weight_decay: float = 0.01,
    projector_b1: float = 0.9,
    projector_b2: float = 0.999,
    projector_eps: float = 1e-8,
    orth_penalty: float = 0.0,
    scale: float = 0.25,
    side: str = "std",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    mu_dtype: Any | None = None,
    weight_decay: float = 0.0,
    weight_decay_mask: Any | None = None,
    base_optimizer: optax.GradientTransformation | None = None,
    layout: layout_lib.LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Online Subspace Descent: low-rank Adam whose projector follows the gradients online.

    .. math::
      W_{t+1} = W_t - \eta_t (u_t + \lambda W_t),\qquad
      P_{t+1} = P_t - \eta_{P,t}\bigl(\mathrm{Adam}_P(\nabla_P L_t(P_t)) + \lambda_P P_t\bigr)
      \quad (t \ge 1;\ P_1 = P_0 = \text{SVD of } G_0),

    with ``u_t`` and ``L_t`` as in :func:`scale_by_online_subspace_descent`. The projector's
    learning rate, first rule that applies:

    * ``projector_learning_rate`` given: that (float or schedule);
    * ``projector_lr_ratio`` given: ``η_P = projector_lr_ratio · η_t`` (schedules follow);
    * default: ``η_P = 1 / update_proj_gap``, the release's rule for a constant ``η``
      (``update_proj_gap = 200`` as in its README). With a schedule the release also
      multiplies by ``η_t/η_0``; pass ``projector_learning_rate`` to reproduce that.

    ``update_proj_gap`` only sets that default rate (the projector moves every step).
    Defaults are the release's: ``scale = 0.25``, main Adam ``ε = 1e-6``, projector AdamW
    ``(0.9, 0.999, 1e-8)`` with weight decay ``0.01``; the deviations are listed in the
    module docstring. (Before this alignment: ``η_P = 5η``, ``scale = 1``, ``ε = 1e-8``,
    ``λ_P = λ``.) The arguments not listed below are
    :func:`scale_by_online_subspace_descent`'s, with the same meaning, defaults and checks.

    Args:
      learning_rate: ``η``, a float or an optax schedule.
      rank: target rank (clipped per matrix to ``min(m, n)`` with a warning).
      update_proj_gap: ``T >= 1``; the default projector rate is ``1/T`` (may be injected by
        ``optax.inject_hyperparams``, it is only used through ``1/T``).
      projector_lr_ratio: ``η_P / η`` (``>= 0``), or ``None``.
      projector_learning_rate: ``η_P`` itself (float or schedule), or ``None``; not together
        with ``projector_lr_ratio``.
      weight_decay: ``λ >= 0``, decoupled weight decay in the full parameter space.
      weight_decay_mask: tree of booleans or callable, as ``optax.add_decayed_weights``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Raises:
      ValueError / TypeError: as :func:`scale_by_online_subspace_descent`, and
        ``learning_rate`` ``None``/negative, ``update_proj_gap < 1``,
        ``projector_lr_ratio < 0``, both projector rates given, ``weight_decay < 0``. Under
        ``optax.inject_hyperparams`` pass ``static_args=online_subspace_descent.static_args``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optzoo
      >>> tx = optzoo.online_subspace_descent(1e-3, rank=4)
      >>> params = {"w": jnp.ones((16, 8))}
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)

    References:
      Liang, Liu, Chen, Liu, "Memory-Efficient LLM Training with Online Subspace Descent",
      NeurIPS 2024, arXiv:2408.12857; code: github.com/kyleliang919/Online-Subspace-Descent.
    """
    what = "online_subspace_descent"
    _checks.learning_rate(learning_rate, "learning_rate", what)
    _lowrank.static_int(rank, "rank", what, ONLINE_SUBSPACE_DESCENT_STATIC_ARGS)
    direction = scale_by_online_subspace_descent(
        rank,
        projector_learning_rate=_projector_rate(
            learning_rate, update_proj_gap, projector_lr_ratio, projector_learning_rate, what
        ),
        projector_weight_decay=projector_weight_decay,
        projector_b1=projector_b1,
        projector_b2=projector_b2,
        projector_eps=projector_eps,
        orth_penalty=orth_penalty,
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


scale_by_online_subspace_descent.static_args = SCALE_BY_ONLINE_SUBSPACE_DESCENT_STATIC_ARGS
online_subspace_descent.static_args = ONLINE_SUBSPACE_DESCENT_STATIC_ARGS
