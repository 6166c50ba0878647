"""Online Subspace Descent: GaLore with a projector moved every step by online PCA.

Instead of an SVD every ``update_proj_gap`` steps, each matrix leaf's projector takes one
optimizer step per update on the online-PCA loss of the normalized gradient (ALGORITHMS.md
§6.3); the inner optimizer runs on the projected gradient exactly as in :mod:`optzoo.galore`,
whose projection code (side rules, layouts, rank clipping, non-matrix leaves) is shared.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optzoo import layout as _layout
from optzoo.galore import (
    _check_int,
    _check_side,
    _compute_dtype,
    _Core,
    _default_base,
    _init_pieces,
)

__all__ = [
    "OnlineSubspaceDescentState",
    "pca_loss",
    "scale_by_online_subspace_descent",
    "online_subspace_descent",
]


class OnlineSubspaceDescentState(NamedTuple):
    """State of :func:`scale_by_online_subspace_descent`.

    Attributes:
      count: number of updates taken (int32).
      base_optimizer_state: the inner optimizer's state on the low-rank tree (as in GaLore).
      projector: per matrix leaf, the projector *for the next step*, float32 (or wider), shape
        as in :class:`GaLoreState`; ``optax.MaskedNode()`` for non-matrix leaves.
      projector_optimizer_state: state of the Adam(W) that moves the projectors.
    """

    count: jax.Array
    base_optimizer_state: optax.OptState
    projector: Any
    projector_optimizer_state: optax.OptState


# --------------------------------------------------------------- Online Subspace Descent
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


def scale_by_online_subspace_descent(
    rank: int = 128,
    *,
    projector_learning_rate: optax.ScalarOrSchedule = 0.05,
    projector_weight_decay: float = 0.0,
    orth_penalty: float = 0.0,
    scale: float = 1.0,
    side: str = "std",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: Any | None = None,
    base_optimizer: optax.GradientTransformation | None = None,
    layout: _layout.LayoutSpec = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Online Subspace Descent direction: low-rank Adam with an online-PCA-updated projector.

    Per matrix slice ``G_t`` (``X_t = G_t`` for a left projector ``P ∈ R^{m×r}``,
    ``X_t = G_tᵀ`` for a right one ``Q ∈ R^{n×r}``; ``X̃_t = X_t / ‖X_t‖_F``):

    .. math::
      P_0 = \mathrm{top}_r\,\mathrm{SVD}(G_0),\qquad R_t = P_t^\top X_t\ (\text{left}),
      \qquad u_t = \alpha\, P_t\, \mathrm{Adam}(R_{1..t}),

    .. math::
      L_t(P) = \|P P^\top \tilde X_t - \tilde X_t\|_F^2 + \mu \|P^\top P - I\|_F^2,\qquad
      P_{t+1} = P_t - \eta_P \bigl(\mathrm{Adam}(\nabla L_t(P_t)) + \lambda_P P_t\bigr).

    So the projector used at step ``t`` was fitted to gradients up to ``t-1`` (and the SVD of
    ``G_0`` at ``t = 0``); the moments of the inner optimizer are never reset. Projectors and
    their Adam moments are kept in float32 (or wider): they move by small increments that
    bfloat16 would round away. The projector's Adam uses the same ``b1, b2, eps``.

    Geometry/symmetry: as GaLore's within the subspace; the projector dynamics are the
    Hamiltonian-descent view of the paper (any projector update rule converges).

    Range (a documented limit): gradients beyond ~1.8e19 in float32/bfloat16 overflow the inner
    Adam's second moment to ``inf`` (as in ``optax.adam``; the entry then stops moving); float16
    leaves: moments in float32. The experiments harness clips gradients (``grad_clip=1.0``) long
    before.

    Args:
      rank: target rank (clipped per matrix to ``min(m, n)`` with a warning).
      projector_learning_rate: ``η_P`` (float or schedule) of the projector's Adam.
      projector_weight_decay: ``λ_P``, decoupled weight decay of the projector.
      orth_penalty: ``μ``, weight of ``‖PᵀP − I‖²`` in the PCA loss. Default 0 (the released
        code's loss has no such term; the SVD start is orthonormal and the reconstruction
        term keeps ``P`` near the Stiefel manifold on the gradient's range).
      scale: ``α`` multiplying the lifted update of matrix leaves.
      side: ``'std'``, ``'optax-like'``, ``'left'`` or ``'right'`` (see the module docstring).
      b1: Adam ``β₁`` (inner optimizer and projector).
      b2: Adam ``β₂`` (inner optimizer and projector).
      eps: Adam ``ε`` (inner optimizer and projector).
      mu_dtype: dtype of the inner Adam's first moment.
      base_optimizer: params-free inner transform replacing Adam on the low-rank gradients.
      layout: matrix layout spec (see :func:`scale_by_galore`).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state
      :class:`OnlineSubspaceDescentState`.

    Example:
      >>> import jax.numpy as jnp, optax, optzoo
      >>> tx = optax.chain(optzoo.scale_by_online_subspace_descent(rank=2),
      ...                  optax.scale_by_learning_rate(1e-2))
      >>> params = {"w": jnp.ones((8, 4))}
      >>> updates, state = tx.update(params, tx.init(params), params)

    References:
      Liang, Liu, Chen, Liu, "Memory-Efficient LLM Training with Online Subspace Descent",
      NeurIPS 2024, arXiv:2408.12857 (the online-PCA projector update). The SVD
      initialization of ``P`` is our default (it is also what the authors' code does).
    """
    what = "scale_by_online_subspace_descent"
    rank = _check_int("rank", rank, 1, what)
    _check_side(side, what)
    base = _default_base(base_optimizer, b1, b2, eps, mu_dtype)
    proj_tx = optax.chain(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.add_decayed_weights(projector_weight_decay),
        optax.scale_by_learning_rate(projector_learning_rate),
    )

    def init_fn(params):
        treedef, _, base_state, projectors = _init_pieces(params, layout, rank, side, what,
                                                          base, _compute_dtype)
        proj_tree = treedef.unflatten(projectors)
        return OnlineSubspaceDescentState(jnp.zeros([], jnp.int32), base_state, proj_tree,
                                          proj_tx.init(proj_tree))

    def update_fn(updates, state, params=None, **extra_args):
        del params
        core = _Core(updates, layout, rank, side, what)
        old = core.flat(state.projector)
        proj = jax.lax.cond(state.count == 0, lambda: core.svd_projectors(old), lambda: old)
        low_rank = core.project(proj)
        low_upd, base_state = core.base_step(base, low_rank, state.base_optimizer_state,
                                             extra_args)
        out = core.lift(proj, low_upd, scale)

        grads = []
        for p, gm, pr in zip(core.plans, core.mats, proj, strict=True):
            if p is None:
                grads.append(pr)
                continue
            x = gm if p.left else jnp.swapaxes(gm, -1, -2)
            norm = jnp.sqrt(jnp.sum(x * x, axis=(-2, -1), keepdims=True))
            x = x / jnp.where(norm > 0, norm, 1.0)
            pb = p.batched(pr)
            mu = jnp.asarray(orth_penalty, pb.dtype)
            grads.append(p.unbatched(_pca_loss_grad(pb, x.astype(pb.dtype), mu)))
        proj_tree = core.treedef.unflatten(proj)
        p_upd, p_state = proj_tx.update(core.treedef.unflatten(grads),
                                        state.projector_optimizer_state, proj_tree)
        new_proj = optax.apply_updates(proj_tree, p_upd)
        return out, OnlineSubspaceDescentState(optax.safe_int32_increment(state.count),
                                               base_state, new_proj, p_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def online_subspace_descent(
    learning_rate: optax.ScalarOrSchedule,
    rank: int = 128,
    *,
    projector_lr_ratio: float = 5.0,
    projector_weight_decay: float | None = None,
    orth_penalty: float = 0.0,
    scale: float = 1.0,
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
    r"""Online Subspace Descent: low-rank Adam whose projector follows the gradients online.

    .. math::
      W_{t+1} = W_t - \eta_t (u_t + \lambda W_t),\qquad
      P_{t+1} = P_t - \eta_{P,t}\bigl(\mathrm{Adam}(\nabla_P L_t(P_t)) + \lambda_P P_t\bigr),

    with ``u_t`` and ``L_t`` as in :func:`scale_by_online_subspace_descent`,
    ``η_P = projector_lr_ratio · η`` (schedules follow) and ``λ_P = λ`` unless given.

    Range (a documented limit): gradients beyond ~1.8e19 in float32/bfloat16 overflow the inner
    Adam's second moment to ``inf`` (as in ``optax.adam``; the entry then stops moving); float16
    leaves: moments in float32. The experiments harness clips gradients (``grad_clip=1.0``) long
    before.

    Args:
      learning_rate: ``η``, a float or an optax schedule.
      rank: target rank (clipped per matrix to ``min(m, n)`` with a warning).
      projector_lr_ratio: ``η_P / η`` (the paper recommends about 5).
      projector_weight_decay: ``λ_P``; ``None`` uses ``weight_decay``.
      orth_penalty: ``μ`` of the PCA loss (default 0, see the block's docstring).
      scale: ``α`` multiplying the lifted update of matrix leaves.
      side: ``'std'``, ``'optax-like'``, ``'left'`` or ``'right'``.
      b1: Adam ``β₁``.
      b2: Adam ``β₂``.
      eps: Adam ``ε``.
      mu_dtype: dtype of the inner Adam's first moment.
      weight_decay: ``λ``, decoupled weight decay in the full parameter space.
      weight_decay_mask: tree of booleans or callable, as ``optax.add_decayed_weights``.
      base_optimizer: params-free inner transform replacing Adam.
      layout: matrix layout spec (see :func:`scale_by_galore`).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optzoo
      >>> tx = optzoo.online_subspace_descent(1e-3, rank=4)
      >>> params = {"w": jnp.ones((16, 8))}
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)

    References:
      Liang, Liu, Chen, Liu, "Memory-Efficient LLM Training with Online Subspace Descent",
      NeurIPS 2024, arXiv:2408.12857.
    """
    if callable(learning_rate):
        def projector_lr(count):
            return projector_lr_ratio * learning_rate(count)
    else:
        projector_lr = projector_lr_ratio * learning_rate
    if projector_weight_decay is None:
        projector_weight_decay = weight_decay
    return optax.chain(
        scale_by_online_subspace_descent(
            rank, projector_learning_rate=projector_lr,
            projector_weight_decay=projector_weight_decay, orth_penalty=orth_penalty,
            scale=scale, side=side, b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype,
            base_optimizer=base_optimizer, layout=layout),
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    )
