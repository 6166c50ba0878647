"""PolarGrad: polar-factor updates scaled by the nuclear norm (stochastic spectral descent).

Each matrix slice of a leaf (see :class:`~optzoo.layout.MatrixLayout`) is updated by
``‖X‖_* polar(X)`` — the steepest-descent step under the spectral norm *with* its magnitude
(the "sharp" map of ``‖·‖₂``), where Muon keeps only the direction ``polar(X)``. The nuclear
norm is computed as ``⟨X, polar(X)⟩``, free once the polar factor is known.

Stacked leaves (``[L, m, n]``, ``[E, m, n]``, heads): the factor ``ν = ‖X‖_*`` is computed
**per matrix slice**, like the polar factor — each layer/expert/head is its own matrix with its
own spectral geometry, and a per-tensor ``ν`` would make one slice's step depend on the others'
gradients (breaking per-slice equivariance and the equality with unstacked leaves).

Momentum, orthogonalization, layout resolution and the fallback partition are blocks of
:mod:`optzoo._blocks`, shared with :mod:`optzoo.muon`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optzoo import _blocks, _checks
from optzoo import fallback as fallback_lib
from optzoo import layout as layout_lib
from optzoo.distributed import OwnerComputes, check_owner_computes

__all__ = ["VARIANTS", "ScaleByPolarGradState", "scale_by_polargrad", "polargrad"]

#: The default fallback: AdamW at a constant 3e-4 (see :func:`polargrad`).
DEFAULT_FALLBACK = fallback_lib.AdamW(learning_rate=3e-4)

#: Values accepted by ``variant``.
VARIANTS = ("momentum_first", "polar_first")


class ScaleByPolarGradState(NamedTuple):
    """State of :func:`scale_by_polargrad`.

    Attributes:
      count: number of updates applied so far (int32, saturating).
      mu: per matrix leaf, the EMA of the gradients (``'momentum_first'``) or of their polar
        factors (``'polar_first'``), dtype ``mu_dtype`` or the parameter's;
        ``optax.MaskedNode()`` for leaves without a matrix layout.
    """

    count: jax.Array
    mu: optax.Updates


def _accumulation_dtype(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


def _nuclear_times_polar(orth):
    """Batched ``X -> ⟨X, O⟩ O`` with ``O = orth(X)``; the inner product per slice, in f32+."""

    def fn(x: jax.Array) -> jax.Array:
        o = orth(x)
        acc = _accumulation_dtype(x.dtype)
        of = o.astype(acc)
        nu = jnp.sum(x.astype(acc) * of, axis=(-2, -1), keepdims=True)
        return (nu * of).astype(x.dtype)

    return fn


def _per_slice_inner(lay: layout_lib.MatrixLayout, a: jax.Array, b: jax.Array) -> jax.Array:
    """``⟨A_i, B_i⟩`` of every matrix slice ``i``, broadcast back to ``a``'s shape (f32+)."""
    ma, mb = lay.to_matrix(a), lay.to_matrix(b)
    acc = _accumulation_dtype(jnp.promote_types(ma.dtype, mb.dtype))
    nu = jnp.sum(ma.astype(acc) * mb.astype(acc), axis=(-2, -1), keepdims=True)
    return lay.from_matrix(jnp.broadcast_to(nu, ma.shape), jnp.shape(a))


def scale_by_polargrad(
    beta: jax.typing.ArrayLike = 0.95,
    *,
    variant: str = "momentum_first",
    nesterov: bool = False,
    ortho_method: str = "qdwh",
    ns_steps: int | None = None,
    ns_coeffs: Any = None,
    ortho_dtype: jax.typing.DTypeLike | None = None,
    eps: jax.typing.ArrayLike = 1e-7,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
    group: bool = True,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""Rescales updates to ``‖X‖_* polar(X)`` per matrix (PolarGrad / PolarGradM).

    ``'momentum_first'`` (default, PolarGradM):

    .. math::
      M \leftarrow \beta M + (1-\beta) G, \qquad O = \mathrm{polar}(M), \qquad
      \Delta = \langle M, O\rangle\, O = \|M\|_*\, \mathrm{polar}(M).

    ``'polar_first'``:

    .. math::
      O = \mathrm{polar}(G), \qquad M \leftarrow \beta M + (1-\beta) O, \qquad
      \Delta = \langle G, O\rangle\, M = \|G\|_*\, M.

    With ``nesterov=True`` the EMA's Nesterov mix ``(1−β)·input + βM`` replaces ``M`` in the
    step (off in the reference). No learning rate, no sign flip; no bias correction (the
    reference has none, and ``ν`` makes the update's magnitude depend on it).

    ``‖X‖_* polar(X) = argmax_D ⟨X, D⟩ − ½‖D‖₂²`` is steepest descent under the spectral norm
    ``‖·‖₂`` (the nuclear norm is its dual); the map is equivariant under ``X ↦ U X Vᵀ``
    (``U ∈ O(m)``, ``V ∈ O(n)``) per matrix slice (``ν`` is invariant), and **homogeneous of
    degree 1** in the gradient scale: ``f(cG) = c f(G)`` for ``c > 0`` — unlike Muon, the step
    shrinks with the gradient, which the reference shows is needed to converge on strongly
    convex smooth problems with deterministic gradients. ``ν`` is per matrix slice (see the
    module docstring). Leaves without a layout pass through unchanged and keep no state;
    :func:`polargrad` routes them to its fallback.

    Args:
      beta: EMA decay ``β``.
      variant: ``'momentum_first'`` or ``'polar_first'``.
      nesterov: use the Nesterov mix of the EMA (default ``False``, as the reference).
      ortho_method: polar back-end of :func:`optzoo.linalg.orthogonalize`: ``'qdwh'``
        (default, as the reference; float32 or wider), ``'svd'`` (exact), or an iterative one
        (``'auto'``, ``'polar_express'``, ``'newton_schulz'``, ``'gram_newton_schulz'``), with
        which ``ν = ⟨X, orth(X)⟩`` approximates ``‖X‖_*``.
      ns_steps: iterations of an iterative back-end (static under inject_hyperparams).
      ns_coeffs: coefficients for ``'newton_schulz'`` / ``'gram_newton_schulz'``.
      ortho_dtype: compute dtype of the back-end (exact back-ends use at least float32).
      eps: normalization epsilon of the iterative back-ends.
      mu_dtype: dtype of the EMA buffer; ``None`` uses the parameter's.
      layout: matrix layout spec (see :func:`optzoo.muon.scale_by_muon`).
      group: batch same-shape matrices across leaves into one back-end call.
      owner_computes: distribute the polar factors over devices, each matrix computed by
        one owner (:class:`optzoo.OwnerComputes`, :mod:`optzoo.distributed`); ``None``
        (default): wherever XLA places them.

    Returns:
      A :class:`optax.GradientTransformation` with state :class:`ScaleByPolarGradState`.

    Raises:
      ValueError: for an unknown ``variant``/``ortho_method``, ``beta`` outside ``[0, 1]``,
        or (at ``init``/``update``) a layout that does not fit a leaf, naming its path.
      TypeError: (at ``init``/``update``) for a non-floating leaf, naming its path.

    Example:
      >>> import jax.numpy as jnp
      >>> from optzoo.polargrad import scale_by_polargrad
      >>> tx = scale_by_polargrad(beta=0.0, ortho_method='svd')  # Δ = ‖G‖_* polar(G)
      >>> g = jnp.array([[3.0, 0.0], [0.0, -0.5]])
      >>> u, _ = tx.update(g, tx.init(g))
      >>> print(jnp.round(u, 4))
      [[ 3.5  0. ]
       [ 0.  -3.5]]

    References:
      Lau, Long, Su, *PolarGrad: A Class of Matrix-Gradient Optimizers from a Unifying
      Preconditioning Perspective*, arXiv:2505.21799 (2025) — PolarGrad/PolarGradM and the
      polar-first variant (update rules as in github.com/timlautk/polargrad; the paper's
      equation numbers were not verified).
      Carlson, Cevher, Carin, *Stochastic Spectral Descent for Restricted Boltzmann Machines*,
      AISTATS 2015 (the ``‖G‖_* polar(G)`` step).
    """
    what = "scale_by_polargrad"
    _checks.choice(variant, "variant", what, VARIANTS)
    _checks.unit_interval(beta, "beta", what)
    _blocks.check_ortho(ortho_method, ns_coeffs, what)
    _blocks.check_steps(ns_steps, what)
    check_owner_computes(owner_computes, what)
    mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)
    orth = _blocks.orthogonalizer(ortho_method, ns_steps, ns_coeffs, ortho_dtype, eps)
    matrix_map = functools.partial(_blocks.map_matrices, owner_computes=owner_computes)

    def init_fn(params):
        return ScaleByPolarGradState(
            count=jnp.zeros([], jnp.int32), mu=_blocks.init_momentum(params, layout, mu_dtype, what)
        )

    def update_fn(updates, state, params=None):
        del params
        _, gs, lays, layouts, treedef = _blocks.flat_layouts(updates, layout, what, "update")
        count_inc = optax.safe_increment(state.count)
        mus = treedef.flatten_up_to(state.mu)
        keep = lambda x, path: x  # noqa: E731  (leaves without a layout pass through)
        if variant == "momentum_first":
            new_mus, dirs = _blocks.momentum_step(gs, mus, beta, count_inc, nesterov=nesterov)
            out = matrix_map(
                _nuclear_times_polar(orth),
                treedef.unflatten(dirs),
                layouts,
                otherwise=keep,
                group=group,
                what=what,
            )
        else:
            polars = treedef.flatten_up_to(
                matrix_map(orth, updates, layouts, otherwise=keep, group=group, what=what)
            )
            new_mus, dirs = _blocks.momentum_step(polars, mus, beta, count_inc, nesterov=nesterov)
            out = []
            for g, o, d, lay in zip(gs, polars, dirs, lays, strict=True):
                if lay is None:
                    out.append(g)
                    continue
                nu = _per_slice_inner(lay, g, o)
                out.append(nu * d.astype(nu.dtype))
            out = treedef.unflatten(out)
        out = _blocks.cast_like(out, updates)
        return out, ScaleByPolarGradState(count=count_inc, mu=treedef.unflatten(new_mus))

    return optax.GradientTransformation(init_fn, update_fn)


def polargrad(
    learning_rate: optax.ScalarOrSchedule,
    beta: jax.typing.ArrayLike = 0.95,
    *,
    variant: str = "momentum_first",
    nesterov: bool = False,
    ortho_method: str = "qdwh",
    ns_steps: int | None = None,
    ns_coeffs: Any = None,
    ortho_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
    fallback: fallback_lib.FallbackSpec = None,
    eps: jax.typing.ArrayLike = 1e-7,
    group: bool = True,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""PolarGrad on the matrix leaves, an explicit fallback (AdamW by default) on the others.

    Matrix leaves, with learning rate ``η`` and decoupled weight decay ``λ``
    (``'momentum_first'``, PolarGradM):

    .. math::
      M \leftarrow \beta M + (1-\beta) G, \qquad
      W \leftarrow (1 - \eta\lambda) W - \eta\, \|M\|_*\, \mathrm{polar}(M);

    ``'polar_first'``: ``M ← βM + (1−β) polar(G)``, ``W ← (1 − ηλ)W − η‖G‖_* M``.
    That is ``chain(scale_by_polargrad, add_decayed_weights(λ, weight_decay_mask),
    scale_by_learning_rate(η))``; steepest descent under the per-matrix spectral norm,
    equivariant under ``W ↦ U W Vᵀ`` per slice, homogeneous of degree 1 in the gradient scale
    (see :func:`scale_by_polargrad`). Because the step scales with ``‖M‖_*``, learning rates
    are much smaller than Muon's for the same model (the reference's default is 0.02 on
    matrix-regression problems).

    Leaves without a matrix layout (by default those with fewer than two axes) go to
    ``fallback``, by default ``optzoo.fallback.AdamW(learning_rate=3e-4)``: AdamW at a constant
    3e-4 with ``b = (0.9, 0.95)`` (see :mod:`optzoo.fallback`). Unlike :func:`optzoo.muon`'s it
    does not follow ``learning_rate``: PolarGrad's step scales with ``‖M‖_*``, so its rate has
    no fixed ratio to Adam's; pass ``optzoo.fallback.AdamW(learning_rate=schedule)`` for warmup
    or decay of the fallback leaves, or ``AdamW()`` for ``0.015 × learning_rate``.
    float16 leaves: moments in float32 (the default AdamW upcasts them). Gradients beyond ~1.8e19 in
    float32/bfloat16 overflow its second moment to ``inf`` (a documented limit shared with
    ``optax.adamw``: the leaf then stops moving); the experiments harness clips gradients
    (``grad_clip=1.0``) long before.
    Embeddings and LM heads are matrices: exclude them with a layout returning ``None`` (the
    example in :func:`optzoo.muon.muon`). Under ``optax.inject_hyperparams`` list a callable
    ``layout``/``weight_decay_mask``, ``mu_dtype``/``ortho_dtype`` and ``ns_steps`` in
    ``static_args``.

    Args:
      learning_rate: PolarGrad's learning rate (scalar or optax schedule).
      beta: EMA decay.
      variant: ``'momentum_first'`` (default) or ``'polar_first'``.
      nesterov: Nesterov mix of the EMA in the step (default off, as the reference).
      ortho_method: polar back-end (default ``'qdwh'``; ``'svd'`` exact; iterative ones
        approximate ``ν``), see :func:`scale_by_polargrad`.
      ns_steps: iterations of an iterative back-end (static under inject_hyperparams).
      ns_coeffs: coefficients for ``'newton_schulz'`` / ``'gram_newton_schulz'``.
      ortho_dtype: back-end compute dtype.
      weight_decay: decoupled weight decay of the matrix leaves (multiplied by the lr).
      weight_decay_mask: tree of booleans or callable selecting decayed matrix leaves.
      mu_dtype: EMA dtype (also the default fallback's first-moment dtype).
      layout: matrix layout spec; ``None`` marks leaves for the fallback.
      fallback: the leaves without a layout: an ``optax.GradientTransformation``, an
        :class:`optzoo.fallback.AdamW`, or ``None`` (the constant-rate AdamW above).
      eps: normalization epsilon of iterative back-ends.
      group: batch same-shape matrices across leaves.
      owner_computes: distribute the polar factors over devices, each matrix computed by
        one owner (:class:`optzoo.OwnerComputes`, :mod:`optzoo.distributed`); ``None``
        (default): wherever XLA places them.

    Returns:
      A :class:`optax.GradientTransformation` (an ``optax.partition`` with labels
      ``'polargrad'`` and ``'fallback'``).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optzoo
      >>> params = {'w': jnp.ones((4, 8)), 'b': jnp.zeros(8)}
      >>> opt = optzoo.polargrad(1e-3, variant='polar_first')
      >>> state = opt.init(params)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = opt.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)

    References:
      Lau, Long, Su, *PolarGrad: A Class of Matrix-Gradient Optimizers from a Unifying
      Preconditioning Perspective*, arXiv:2505.21799 (2025).
    """
    tx = scale_by_polargrad(
        beta,
        variant=variant,
        nesterov=nesterov,
        ortho_method=ortho_method,
        ns_steps=ns_steps,
        ns_coeffs=ns_coeffs,
        ortho_dtype=ortho_dtype,
        eps=eps,
        mu_dtype=mu_dtype,
        layout=layout,
        group=group,
        owner_computes=owner_computes,
    )
    return _blocks.with_fallback(
        "polargrad",
        tx,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        layout=layout,
        fallback=fallback,
        mu_dtype=mu_dtype,
        default_fallback=DEFAULT_FALLBACK,
    )


#: The arguments ``optax.inject_hyperparams`` cannot trace (iteration counts, choices, dtypes,
#: layouts, masks, the fallback): pass ``static_args=factory.static_args``.
scale_by_polargrad.static_args = (
    "variant",
    "ortho_method",
    "ns_steps",
    "ns_coeffs",
    "ortho_dtype",
    "mu_dtype",
    "layout",
    "owner_computes",
)
polargrad.static_args = scale_by_polargrad.static_args + ("weight_decay_mask", "fallback")
