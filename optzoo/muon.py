"""Muon: momentum orthogonalized per matrix, with an explicit fallback for the other leaves.

Every matrix leaf (as read by its :class:`~optzoo.layout.MatrixLayout`; leading axes of stacked
leaves ``[L, m, n]``, ``[E, m, n]``, ``[L, E, m, n]`` and attention heads are batch axes, each
slice an independent matrix) keeps an EMA momentum ``B``; the update is the (approximate)
polar factor of the Nesterov mix of ``B`` and the gradient, times a shape factor:

.. math::
  B \\leftarrow \\beta B + (1-\\beta) G, \\qquad
  X = (1-\\beta) G + \\beta B, \\qquad
  \\Delta = s(m, n)\\, \\mathrm{polar}(X).

All matrices of the same ``(m, n)`` shape and dtype — across leaves, layers, experts and
heads — are stacked and orthogonalized in one batched call
(the block layer's ``map_matrices``): on a GPT-2-small tree this is 4 orthogonalizer calls
instead of 48.

The module is the math; momentum, the batched matrix map, the orthogonalizer, the shape factor
and the fallback split are blocks of :mod:`optzoo._blocks`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optzoo import _blocks, _checks
from optzoo import fallback as fallback_lib
from optzoo import layout as layout_lib
from optzoo.distributed import OwnerComputes, check_owner_computes

__all__ = ["PRECONDITIONINGS", "SHAPE_SCALES", "ScaleByMuonState", "scale_by_muon", "muon"]

SHAPE_SCALES = _blocks.SHAPE_SCALES
PRECONDITIONINGS = _blocks.PRECONDITIONINGS


class ScaleByMuonState(NamedTuple):
    """State of :func:`scale_by_muon`.

    Attributes:
      count: number of updates applied so far (int32, saturating).
      mu: the EMA momentum ``B`` of every matrix leaf (its shape, dtype ``mu_dtype`` or the
        parameter's); ``optax.MaskedNode()`` for leaves without a matrix layout, which keep
        no state.
    """

    count: jax.Array
    mu: optax.Updates


# ---------------------------------------------------------------------------- Muon
def scale_by_muon(
    beta: jax.typing.ArrayLike = 0.95,
    *,
    nesterov: bool = True,
    bias_correction: bool = False,
    ortho_method: str = "auto",
    ns_steps: int | None = None,
    ns_coeffs: Any = None,
    ortho_dtype: jax.typing.DTypeLike | None = None,
    shape_scale: str | None = "jordan",
    rms_scale: jax.typing.ArrayLike = 0.2,
    eps: jax.typing.ArrayLike = 1e-7,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
    group: bool = True,
    owner_computes: OwnerComputes | None = None,
    preconditioning: str = "frobenius",
    adaptive: bool = False,
) -> optax.GradientTransformation:
    r"""Rescales updates to the orthogonalized Nesterov momentum of each matrix (Muon).

    For every matrix ``G ∈ R^{m×n}`` of the layout's matrix view (``m`` = fan-in,
    ``n`` = fan-out, Flax ``(fan_in, fan_out)`` orientation):

    .. math::
      B \leftarrow \beta B + (1-\beta) G, \qquad
      X = (1-\beta) G + \beta B \;\;(\text{or } X = B), \qquad
      \Delta = s(m, n)\, \mathrm{orth}(X),

    with ``orth`` an approximate polar factor :func:`optzoo.linalg.orthogonalize` and
    ``s = √max(1, n/m)`` (``'jordan'``: Keller Jordan's ``√max(1, rows/cols)`` of the PyTorch
    ``(out, in)`` weight), ``rms_scale·√max(m, n)`` (``'rms'``, Moonshot: update RMS ≈
    ``rms_scale`` like AdamW's) or 1. With ``bias_correction=True`` the input is optax's
    debiased Nesterov mix ``X = β B/(1−β^{t+1}) + (1−β) G/(1−β^t)`` (``B/(1−β^t)`` without
    Nesterov), so that with ``ortho_method='newton_schulz'`` and ``eps=1e-8`` the direction is
    ``optax.contrib.scale_by_muon`` followed by ``optax.contrib.scale_by_shape``. The default
    (``False``) is the reference (Keller Jordan) recursion. No learning rate, no sign flip.

    The update is steepest descent under the spectral norm ``‖X‖₂`` of each matrix (RMS→RMS
    operator norm with the ``'jordan'`` factor); with an exact polar factor it is the LMO of
    the spectral-norm ball. It is equivariant under ``G ↦ U G Vᵀ`` (``U ∈ O(m)``,
    ``V ∈ O(n)``) independently per matrix slice — *exactly*, also for the Newton–Schulz-type
    orthogonalizers, which use only ``X``, ``XXᵀ`` and ``‖X‖_F`` — and invariant to a positive
    rescaling of the gradient stream (up to ``eps``). Head-wise layouts
    (``MatrixLayout(num_heads=H)``) orthogonalize each ``(d, d_head)`` block separately:
    equivariant under per-head rotations and head permutations, not rotations mixing heads.
    Grouped-query attention: give the k/v projections ``(d, H_kv·d_head)`` their own layout
    with ``num_heads=H_kv``; the shape factor is computed on the per-head block.

    Leaves whose layout is ``None`` (by default: leaves with fewer than two axes) pass through
    **unchanged** and keep no state; :func:`muon` routes them to its ``fallback`` instead.

    Args:
      beta: momentum decay ``β``.
      nesterov: use the Nesterov mix ``(1−β)G + βB`` (default) or the momentum ``B``.
      bias_correction: debias the momentum like ``optax.contrib.muon`` (see above).
      ortho_method: orthogonalizer of :func:`optzoo.linalg.orthogonalize`: ``'auto'``
        (default, Polar Express), ``'newton_schulz'`` (Jordan's quintic unless ``ns_coeffs``),
        ``'polar_express'``, ``'gram_newton_schulz'``, ``'svd'`` or ``'qdwh'`` (exact).
      ns_steps: iterations of an iterative orthogonalizer (``None``: its default, 5). A Python
        int: list it in ``static_args`` under ``optax.inject_hyperparams``.
      ns_coeffs: coefficient triple or ``(steps, 3)`` table for ``'newton_schulz'`` /
        ``'gram_newton_schulz'``.
      ortho_dtype: compute dtype of the orthogonalizer (``None``: the momentum's; Jordan's
        reference uses ``jnp.bfloat16``).
      shape_scale: ``'jordan'``, ``'rms'`` or ``None`` (see above).
      rms_scale: the RMS target of ``'rms'`` (Moonshot: 0.2).
      eps: added to the Frobenius norm in the orthogonalizer's normalization (relative to the
        largest entry; optzoo.linalg).
      mu_dtype: dtype of the momentum; ``None`` uses the parameter's.
      layout: how leaves are read as matrices: a :class:`~optzoo.layout.MatrixLayout`, a tree
        of ``MatrixLayout | None``, or a callable ``params -> tree`` (under
        ``optax.inject_hyperparams`` list a callable in ``static_args``). ``None``: the last
        two axes of every leaf with at least two axes.
      group: orthogonalize all same-shape matrices of all leaves in one batched call (the
        default; identical results, fewer and larger kernels) or one call per leaf.
      owner_computes: distribute the orthogonalizations over devices, each matrix computed
        by one owner (:class:`optzoo.OwnerComputes`, :mod:`optzoo.distributed`); ``None``
        (default): wherever XLA places them.
      preconditioning: scaling before the Newton–Schulz iteration, as ``optax.contrib.muon``'s
        option of the same name (:data:`PRECONDITIONINGS`): ``'frobenius'`` (default; every
        ``ortho_method``), or ``'spectral'``, ``'aol'``, ``'schatten'`` (with
        ``ortho_method='newton_schulz'``). ``'spectral'`` and ``'schatten'`` divide by a
        unitarily invariant norm, so ``U·Vᵀ`` equivariance is kept; ``'aol'`` scales the rows
        of the wide view by data-dependent factors: equivariant only under permutations and
        sign flips (plus rotations on the long side), not under rotations of the short side.
      adaptive: multiply each matrix's direction ``O`` by ``⟨X, O⟩`` (``= ‖X‖_*`` for an exact
        polar factor: the dual-norm scaling of Bernstein & Newhouse, ``optax.contrib.muon``'s
        ``adaptive=True``), per matrix slice. optax sums ``⟨X, O⟩`` over the whole leaf, so the
        two agree on 2-D leaves and differ on stacked ones (optzoo's is per matrix). The
        update is then degree-1 homogeneous in the gradient, not scale-invariant.

    Returns:
      A :class:`optax.GradientTransformation` with state :class:`ScaleByMuonState`.

    Raises:
      ValueError: for an unknown ``ortho_method``/``shape_scale``, ``beta`` outside
        ``[0, 1]``, ``ns_coeffs`` with a method that takes none, or (at ``init``/``update``) a
        layout that does not fit a leaf, naming its path.
      TypeError: (at ``init``/``update``) for a non-floating leaf, naming its path, or an
        ``owner_computes`` that is not an :class:`optzoo.OwnerComputes`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from optzoo.muon import scale_by_muon
      >>> tx = scale_by_muon(beta=0.0, ortho_method='svd')  # β = 0: Δ = polar(G)
      >>> g = jnp.array([[3.0, 0.0], [0.0, -0.5]])
      >>> u, _ = tx.update(g, tx.init(g))
      >>> print(jnp.round(u, 4))
      [[ 1.  0.]
       [ 0. -1.]]

    References:
      Jordan et al., *Muon: An optimizer for hidden layers in neural networks* (2024),
      https://kellerjordan.github.io/posts/muon/ (update rule and ``√max(1, rows/cols)``).
      Liu et al., *Muon is Scalable for LLM Training*, arXiv:2502.16982 (2025)
      (``0.2·√max(m, n)`` update-RMS matching; section/equation numbers not re-verified).
      Bernstein & Newhouse, *Old Optimizer, New Norm: An Anthology*, arXiv:2409.20325 (2024)
      (steepest descent under the spectral norm).
      Amsel et al., *The Polar Express*, arXiv:2505.16932 (2025) (default orthogonalizer).
    """
    what = "scale_by_muon"
    _checks.unit_interval(beta, "beta", what)
    _blocks.check_ortho(ortho_method, ns_coeffs, what, preconditioning)
    _blocks.check_steps(ns_steps, what)
    _checks.choice(shape_scale, "shape_scale", what, SHAPE_SCALES)
    _checks.positive(eps, "eps", what)
    _checks.positive(rms_scale, "rms_scale", what)
    _checks.float_dtype(mu_dtype, "mu_dtype", what)
    _checks.float_dtype(ortho_dtype, "ortho_dtype", what)
    check_owner_computes(owner_computes, what)
    mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)
    orth = _blocks.orthogonalizer(
        ortho_method, ns_steps, ns_coeffs, ortho_dtype, eps, preconditioning
    )

    def matrix_fn(x: jax.Array) -> jax.Array:
        s = _blocks.shape_factor(shape_scale, x.shape[-2], x.shape[-1], rms_scale)
        o = orth(x)
        if adaptive:  # dual-norm scaling <X, O> per matrix, summed in float32 or wider
            acc = jnp.promote_types(o.dtype, jnp.float32)
            dual = jnp.sum(x.astype(acc) * o.astype(acc), axis=(-2, -1), keepdims=True)
            o = (dual * o.astype(acc)).astype(o.dtype)
        return o if s is None else (s * o).astype(o.dtype)

    def init_fn(params):
        return ScaleByMuonState(
            count=jnp.zeros([], jnp.int32), mu=_blocks.init_momentum(params, layout, mu_dtype, what)
        )

    def update_fn(updates, state, params=None):
        del params
        _, gs, _, layouts, treedef = _blocks.flat_layouts(updates, layout, what, "update")
        count_inc = optax.safe_increment(state.count)
        mus, dirs = _blocks.momentum_step(
            gs,
            treedef.flatten_up_to(state.mu),
            beta,
            count_inc,
            nesterov=nesterov,
            bias_correction=bias_correction,
        )
        out = _blocks.map_matrices(
            matrix_fn,
            treedef.unflatten(dirs),
            layouts,
            otherwise=lambda x, path: x,
            group=group,
            what=what,
            owner_computes=owner_computes,
        )
        out = _blocks.cast_like(out, updates)
        return out, ScaleByMuonState(count=count_inc, mu=treedef.unflatten(mus))

    return optax.GradientTransformation(init_fn, update_fn)


def muon(
    learning_rate: optax.ScalarOrSchedule,
    beta: jax.typing.ArrayLike = 0.95,
    *,
    nesterov: bool = True,
    bias_correction: bool = False,
    ortho_method: str = "auto",
    ns_steps: int | None = None,
    ns_coeffs: Any = None,
    ortho_dtype: jax.typing.DTypeLike | None = None,
    shape_scale: str | None = "jordan",
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
    fallback: fallback_lib.FallbackSpec = None,
    rms_scale: jax.typing.ArrayLike = 0.2,
    eps: jax.typing.ArrayLike = 1e-7,
    group: bool = True,
    owner_computes: OwnerComputes | None = None,
    preconditioning: str = "frobenius",
    adaptive: bool = False,
) -> optax.GradientTransformation:
    r"""Muon on the matrix leaves, an explicit fallback (AdamW by default) on the others.

    Matrix leaves (layout not ``None``), with learning rate ``η`` and weight decay ``λ``:

    .. math::
      B \leftarrow \beta B + (1-\beta) G, \quad
      X = (1-\beta) G + \beta B, \quad
      W \leftarrow (1 - \eta\lambda) W - \eta\, s(m, n)\, \mathrm{orth}(X),

    i.e. ``chain(scale_by_muon, add_decayed_weights(λ, weight_decay_mask),
    scale_by_learning_rate(η))`` — Keller Jordan's reference recursion (EMA momentum without
    bias correction, Nesterov mix, decoupled decay); see :func:`scale_by_muon` for the
    orthogonalizer, the shape factor ``s``, head-wise layouts and ``bias_correction``.
    Steepest descent under the per-matrix spectral norm, equivariant under ``W ↦ U W Vᵀ``
    per matrix slice.

    Every other leaf (layout ``None``: by default every leaf with fewer than two axes —
    biases, norm scales) goes to ``fallback``, by default :class:`optzoo.fallback.AdamW()
    <optzoo.fallback.AdamW>` (``optax.adamw(lr_fb, 0.9, 0.95, 1e-8, weight_decay=0,
    mu_dtype=mu_dtype)``) with the reference README's settings for non-hidden parameters
    (Adam lr 3e-4 at Muon's 0.02, β = (0.9, 0.95)). Its rate ``lr_fb`` **follows Muon's
    learning rate**: ``0.015 × learning_rate`` (``optzoo.fallback.LR_RATIO``), a
    schedule scaled pointwise and an injected value (``optax.inject_hyperparams``) every step
    — so warmup, decay and a zero learning rate reach the fallback leaves too, as in the
    reference, where every parameter group shares one schedule multiplier. An explicit
    ``fallback=optzoo.fallback.AdamW(learning_rate=...)`` (float or schedule) is used exactly as
    given instead and does not follow ``learning_rate``; the same class sets ``b1``, ``b2``,
    ``eps``, ``weight_decay`` and ``mu_dtype`` of the default. Unlike ``optax.contrib.muon``,
    the fallback's rate is not Muon's own (0.02 is far too large for Adam) and ``b2`` is 0.95,
    not 0.999. The fallback's
    updates (default or given) are cast to the gradients' dtypes.
    float16 leaves: moments in float32 (the default AdamW upcasts them). Gradients beyond ~1.8e19 in
    float32/bfloat16 overflow its second moment to ``inf`` (a documented limit shared with
    ``optax.adamw``: the leaf then stops moving); the experiments harness clips gradients
    (``grad_clip=1.0``) long before.

    **Embeddings and LM heads are matrices too**: Muon is meant for hidden matrices only, so
    pass a layout that returns ``None`` for them (the routing module will do this by role)::

        def hidden_only(params):
            def pick(path, x):
                p = jax.tree_util.keystr(path)
                if 'embed' in p or 'lm_head' in p or x.ndim < 2:
                    return None
                return optzoo.layout.MatrixLayout()
            return jax.tree_util.tree_map_with_path(pick, params)

        opt = optzoo.muon(0.02, layout=hidden_only)

    Under ``optax.inject_hyperparams``, list the non-numeric arguments that optax would take
    for schedules or inject as arrays in ``static_args``: a callable ``layout`` or
    ``weight_decay_mask``, ``mu_dtype``/``ortho_dtype`` (dtypes are callables) and
    ``ns_steps``.

    Args:
      learning_rate: Muon's learning rate (scalar or optax schedule); reference default 0.02.
      beta: momentum decay.
      nesterov: Nesterov mix (default) or plain momentum.
      bias_correction: ``optax.contrib.muon``'s debiased Nesterov input instead of the
        reference's (see :func:`scale_by_muon`).
      ortho_method: orthogonalizer (``'auto'``: Polar Express; ``'newton_schulz'``: Jordan's
        NS5; ``'svd'``/``'qdwh'``: exact), see :func:`optzoo.linalg.orthogonalize`.
      ns_steps: iterations of an iterative orthogonalizer (static under inject_hyperparams).
      ns_coeffs: coefficients for ``'newton_schulz'``/``'gram_newton_schulz'``.
      ortho_dtype: orthogonalizer compute dtype (``None``: the momentum's).
      shape_scale: ``'jordan'`` (``√max(1, fan_out/fan_in)``), ``'rms'``
        (``rms_scale·√max(fan_in, fan_out)``) or ``None``.
      weight_decay: decoupled weight decay of the matrix leaves (multiplied by the lr).
      weight_decay_mask: tree of booleans or callable selecting decayed matrix leaves.
      mu_dtype: momentum dtype (Muon's and the default fallback's first moment).
      layout: matrix layout spec (see :func:`scale_by_muon`); ``None`` marks non-Muon leaves.
      fallback: the leaves without a layout: an ``optax.GradientTransformation`` (with its own
        learning rate), an :class:`optzoo.fallback.AdamW` (the default AdamW configured), or
        ``None``: ``AdamW()`` at ``0.015 × learning_rate`` (see above).
      rms_scale: RMS target of ``shape_scale='rms'``.
      eps: orthogonalizer normalization epsilon.
      group: batch same-shape matrices across leaves (see :func:`scale_by_muon`).
      owner_computes: distribute the orthogonalizations over devices, each matrix computed
        by one owner (:class:`optzoo.OwnerComputes`, :mod:`optzoo.distributed`); ``None``
        (default): wherever XLA places them.
      preconditioning: scaling before Newton–Schulz (``optax.contrib.muon``'s option; see
        :func:`scale_by_muon`).
      adaptive: dual-norm scaling of each matrix's direction (``optax.contrib.muon``'s
        ``adaptive=True``; see :func:`scale_by_muon`).

    Returns:
      A :class:`optax.GradientTransformation` (an ``optax.partition`` with labels ``'muon'``
      and ``'fallback'``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optzoo
      >>> params = {'w': jnp.ones((4, 8)), 'b': jnp.zeros(8)}
      >>> opt = optzoo.muon(0.02, weight_decay=0.01)
      >>> state = opt.init(params)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = opt.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)

    References:
      Jordan et al., *Muon: An optimizer for hidden layers in neural networks* (2024),
      https://kellerjordan.github.io/posts/muon/ and github.com/KellerJordan/Muon README
      (AdamW settings for non-hidden parameters).
      Liu et al., *Muon is Scalable for LLM Training*, arXiv:2502.16982 (2025).
    """
    tx = scale_by_muon(
        beta,
        nesterov=nesterov,
        bias_correction=bias_correction,
        ortho_method=ortho_method,
        ns_steps=ns_steps,
        ns_coeffs=ns_coeffs,
        ortho_dtype=ortho_dtype,
        shape_scale=shape_scale,
        rms_scale=rms_scale,
        eps=eps,
        mu_dtype=mu_dtype,
        layout=layout,
        group=group,
        owner_computes=owner_computes,
        preconditioning=preconditioning,
        adaptive=adaptive,
    )
    return _blocks.with_fallback(
        "muon",
        tx,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        layout=layout,
        fallback=fallback,
        mu_dtype=mu_dtype,
    )


#: The arguments ``optax.inject_hyperparams`` cannot trace (iteration counts, choices, dtypes,
#: layouts, masks, the fallback): pass ``static_args=factory.static_args``.
scale_by_muon.static_args = (
    "ortho_method",
    "ns_steps",
    "ns_coeffs",
    "ortho_dtype",
    "shape_scale",
    "mu_dtype",
    "layout",
    "owner_computes",
    "preconditioning",
)
muon.static_args = scale_by_muon.static_args + ("weight_decay_mask", "fallback")
