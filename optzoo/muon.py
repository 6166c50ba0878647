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
(:func:`optzoo.layout.map_matrices`): on a GPT-2-small tree this is 4 orthogonalizer calls
instead of 48.

The momentum/orthogonalize/fallback plumbing here is shared with :mod:`optzoo.polargrad`
through the private helpers below (``_flat_layouts``, ``_momentum_step``,
``_orthogonalizer``, ``_matrix_alias``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo import _checks, _partition, linalg
from optzoo import layout as layout_lib
from optzoo._tree import check_floating, path_str
from optzoo.distributed import OwnerComputes, check_owner_computes

__all__ = ["PRECONDITIONINGS", "SHAPE_SCALES", "ScaleByMuonState", "scale_by_muon", "muon"]

#: Values accepted by ``shape_scale``: Jordan's ``√max(1, fan_out/fan_in)``, Moonshot's
#: ``rms_scale·√max(fan_in, fan_out)``, or ``None`` (no factor).
SHAPE_SCALES = ("jordan", "rms", None)

#: Values accepted by ``preconditioning`` (the scaling applied before Newton–Schulz, as in
#: ``optax.contrib.muon``): ``'frobenius'`` (divide by ``‖X‖_F``, the default), ``'spectral'``
#: (by ``‖X‖₂``, exact), ``'aol'`` (rows of the wide view scaled by ``(Σ_j |XXᵀ|_ij)^{-1/2}``,
#: Prach & Lampert's almost-orthogonal layer rescaling: ``‖X‖₂ ≤ 1`` and often much closer to 1
#: than Frobenius), ``'schatten'`` (by the Schatten-4 norm ``‖XXᵀ‖_F^{1/2}``).
PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")


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


# ------------------------------------------------------------------------ validation
def _check_choice(value: Any, name: str, allowed: Sequence[Any], what: str) -> None:
    if not any(value is a or (isinstance(a, str) and value == a) for a in allowed):
        raise ValueError(f"{what}: unknown {name} {value!r}; expected one of {list(allowed)}")


def _check_unit_interval(value: Any, name: str, what: str) -> None:
    # Only concrete numbers are checked: under optax.inject_hyperparams they arrive as arrays.
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{what}: {name} must lie in [0, 1], got {value}")


def _check_steps(steps: Any, what: str) -> None:
    if steps is None:
        return
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise TypeError(f"{what}: ns_steps must be a Python int or None, got {steps!r}; under "
                        "optax.inject_hyperparams list 'ns_steps' in static_args")
    if steps < 1:
        raise ValueError(f"{what}: ns_steps must be >= 1, got {steps}")


def _check_ortho(method: Any, coeffs: Any, what: str, preconditioning: str = "frobenius") -> None:
    _check_choice(method, "ortho_method", linalg.ORTHOGONALIZERS, what)
    if coeffs is not None and method not in ("newton_schulz", "gram_newton_schulz"):
        raise ValueError(f"{what}: ns_coeffs applies to ortho_method 'newton_schulz' or "
                         f"'gram_newton_schulz', not {method!r}")
    _checks.choice(preconditioning, "preconditioning", what, PRECONDITIONINGS)
    if preconditioning != "frobenius" and method != "newton_schulz":
        raise ValueError(f"{what}: preconditioning={preconditioning!r} applies to "
                         f"ortho_method='newton_schulz' (optax.contrib.muon's iteration), not "
                         f"{method!r}")


# ------------------------------------------------------------------ shared plumbing
def _is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def _flat_layouts(tree: Any, layout: layout_lib.LayoutSpec, what: str, kind: str):
    """``(paths, leaves, layouts, layout_tree, treedef)`` of ``tree``; checks floating dtypes."""
    layouts = layout_lib.resolve(layout, tree, what=what)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    lays = treedef.flatten_up_to(layouts)
    paths = [path_str(p) for p, _ in paths_leaves]
    leaves = [x for _, x in paths_leaves]
    for p, x in zip(paths, leaves, strict=True):
        check_floating(x, p, f"{what}: {kind}")
    return paths, leaves, lays, layouts, treedef


def _init_momentum(params: Any, layout: layout_lib.LayoutSpec, mu_dtype: Any, what: str):
    """Zero momentum for matrix leaves, ``MaskedNode`` for the others."""
    _, leaves, lays, _, treedef = _flat_layouts(params, layout, what, "parameter")
    mu = [optax.MaskedNode() if lay is None
          else jnp.zeros(jnp.shape(x), mu_dtype or jnp.result_type(x))
          for x, lay in zip(leaves, lays, strict=True)]
    return treedef.unflatten(mu)


def _momentum_step(
    inputs: list[Any],
    mus: list[Any],
    beta: Any,
    count_inc: jax.Array,
    *,
    nesterov: bool,
    bias_correction: bool,
) -> tuple[list[Any], list[Any]]:
    """EMA momentum and the direction input, per leaf (``MaskedNode`` momenta pass ``x``).

    ``B ← βB + (1−β)x``; direction input ``(1−β)x + βB`` (Nesterov) or ``B``. With
    ``bias_correction`` both terms are debiased as ``optax.contrib.scale_by_muon`` does:
    ``β B/(1−β^{t+1}) + (1−β) x/(1−β^t)`` (Nesterov) or ``B/(1−β^t)``, ``t = count_inc``.
    Returns ``(new_mus, direction_inputs)``; new momenta keep their buffer's dtype.
    """
    new_mus, dirs = [], []
    for x, m in zip(inputs, mus, strict=True):
        if _is_masked(m):
            new_mus.append(m)
            dirs.append(x)
            continue
        b = (1 - beta) * x + beta * m  # the operation order of optax.tree.update_moment
        if bias_correction:
            bc_t = 1 - beta ** count_inc
            if nesterov:
                bc_next = 1 - beta ** optax.safe_increment(count_inc)
                d = beta * (b / bc_next.astype(b.dtype)) + (1 - beta) * (
                    x / bc_t.astype(jnp.result_type(x)))
            else:
                d = b / bc_t.astype(b.dtype)
        else:
            d = (1 - beta) * x + beta * b if nesterov else b
        new_mus.append(b.astype(m.dtype))
        dirs.append(d)
    return new_mus, dirs


def _prescale(y: jax.Array, preconditioning: str, eps: Any) -> jax.Array:
    """``optax.contrib.muon``'s scaling of a wide ``(b, m, n)`` stack (``m ≤ n``) before NS.

    Every matrix is first divided by its peak entry, so squares stay in range and ``eps`` is
    relative to the peak (as everywhere in :mod:`optzoo.linalg`): the scaling is then exactly
    scale-free, where optax's absolute ``eps`` turns inputs below ~1e-4 into 0. For ordinary
    inputs the two differ by ``O(eps)`` relative. A zero matrix maps to zero.
    """
    acc = jnp.promote_types(y.dtype, jnp.float32)
    z = y.astype(acc)
    peak = jnp.max(jnp.abs(z), axis=(-2, -1), keepdims=True)
    z = z / jnp.where(peak > 0, peak, 1)
    if preconditioning == "spectral":
        out = z / (jnp.linalg.norm(z, ord=2, axis=(-2, -1), keepdims=True) + eps)
    elif preconditioning == "schatten":
        gram = z @ jnp.swapaxes(z, -1, -2)
        s4_sq = jnp.sqrt(jnp.sum(gram * gram, axis=(-2, -1), keepdims=True))
        out = z * jax.lax.rsqrt(jnp.maximum(s4_sq, eps))
    else:  # 'aol': D = row sums of |XXᵀ|; X <- D^{-1/2} X has spectral norm <= 1 (Gershgorin)
        gram = z @ jnp.swapaxes(z, -1, -2)
        d = jnp.sum(jnp.abs(gram), axis=-1, keepdims=True)
        out = z * jax.lax.rsqrt(jnp.maximum(d, eps))
    return out.astype(y.dtype)


def _prescaled_newton_schulz(x: jax.Array, preconditioning: str, steps: int | None,
                             coeffs: Any, dtype: Any, eps: Any) -> jax.Array:
    """Newton–Schulz on ``x`` scaled by ``preconditioning`` instead of ``‖x‖_F``.

    The iteration is :func:`optzoo.linalg.newton_schulz`'s on the already-scaled input
    (``norm_scale`` cannot express a non-Frobenius scaling): wide orientation, products
    accumulated in float32, one rounding to the compute dtype per step.
    """
    table = np.asarray(linalg.JORDAN_QUINTIC if coeffs is None else coeffs, np.float64)
    if table.ndim == 1:
        table = np.tile(table, (5 if steps is None else steps, 1))
    dt = jnp.dtype(dtype) if dtype is not None else x.dtype
    transposed = x.shape[-2] > x.shape[-1]
    y = jnp.swapaxes(x, -1, -2) if transposed else x
    y = _prescale(y, preconditioning, eps).astype(dt)
    acc = jnp.promote_types(dt, jnp.float32)
    for a, b, c in table.tolist():
        gram = jnp.matmul(y, jnp.swapaxes(y, -1, -2), preferred_element_type=acc)
        gc = gram.astype(dt)
        poly = (b * gram + c * jnp.matmul(gc, gc, preferred_element_type=acc)).astype(dt)
        y = (a * y.astype(acc) + jnp.matmul(poly, y, preferred_element_type=acc)).astype(dt)
    if transposed:
        y = jnp.swapaxes(y, -1, -2)
    return jnp.where(jnp.isfinite(x).all(axis=(-2, -1), keepdims=True), y, jnp.nan).astype(
        x.dtype)


def _orthogonalizer(method: str, steps: int | None, coeffs: Any, dtype: Any,
                    eps: Any, preconditioning: str = "frobenius"
                    ) -> Callable[[jax.Array], jax.Array]:
    """Batched ``(b, m, n) -> (b, m, n)`` polar-factor map of :func:`linalg.orthogonalize`
    (or, with a non-Frobenius ``preconditioning``, of :func:`_prescaled_newton_schulz`)."""
    if coeffs is not None:
        coeffs = np.asarray(coeffs, np.float64)  # concrete: it fixes the unrolled iteration
    if preconditioning != "frobenius":
        return lambda x: _prescaled_newton_schulz(x, preconditioning, steps, coeffs, dtype, eps)

    def orth(x: jax.Array) -> jax.Array:
        return linalg.orthogonalize(x, method, steps=steps, coeffs=coeffs, dtype=dtype, eps=eps)

    return orth


def _shape_factor(shape_scale: str | None, rms_scale: Any, m: int, n: int) -> Any:
    """Muon's scale on an ``m×n`` (fan_in × fan_out) matrix view (``None``: no factor)."""
    if shape_scale == "jordan":
        s = math.sqrt(max(1.0, n / m))
        return None if s == 1.0 else s
    if shape_scale == "rms":
        return rms_scale * math.sqrt(max(m, n))  # rms_scale may be an injected array
    return None


def _matrix_alias(
    name: str,
    matrix_tx: optax.GradientTransformation,
    *,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: Any,
    weight_decay_mask: Any,
    layout: layout_lib.LayoutSpec,
    fallback: optax.GradientTransformation | None,
    mu_dtype: Any,
    adam_learning_rate: optax.ScalarOrSchedule | None,
    adam_b1: Any,
    adam_b2: Any,
    adam_eps: Any,
    adam_weight_decay: Any,
) -> optax.GradientTransformation:
    """``optax.partition``: matrix leaves -> ``chain(matrix_tx, decay, lr)``, others -> fallback.

    Labels are computed from the layouts resolved on the parameters the partition sees (the
    layout may be a callable of the parameters); every leaf must have a floating dtype. The
    fallback's updates are cast to the gradients' dtypes.
    """
    _checks.learning_rate(learning_rate, "learning_rate", name)
    _checks.nonnegative(weight_decay, "weight_decay", name)
    if fallback is None:
        if adam_learning_rate is not None:
            _checks.learning_rate(adam_learning_rate, "adam_learning_rate", name)
        _checks.unit_interval(adam_b1, "adam_b1", name)
        _checks.unit_interval(adam_b2, "adam_b2", name)
        _checks.positive(adam_eps, "adam_eps", name)
        _checks.nonnegative(adam_weight_decay, "adam_weight_decay", name)
    elif not isinstance(fallback, optax.GradientTransformation):
        raise TypeError(f"{name}: fallback must be an optax.GradientTransformation or None, "
                        f"got {type(fallback).__name__}")
    fallback = _partition.default_fallback(
        fallback, learning_rate=learning_rate, adam_learning_rate=adam_learning_rate,
        adam_b1=adam_b1, adam_b2=adam_b2, adam_eps=adam_eps,
        adam_weight_decay=adam_weight_decay, mu_dtype=mu_dtype)

    def layouts_fn(tree):
        return _flat_layouts(tree, layout, name, "parameter")[2]

    matrix_chain = optax.chain(
        matrix_tx,
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    return _partition.split_by_layout(matrix_chain, fallback, layout, name, matrix_label=name,
                                      layouts_fn=layouts_fn)


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
    _check_ortho(ortho_method, ns_coeffs, what, preconditioning)
    _check_steps(ns_steps, what)
    _check_choice(shape_scale, "shape_scale", SHAPE_SCALES, what)
    _checks.positive(eps, "eps", what)
    _checks.positive(rms_scale, "rms_scale", what)
    _checks.float_dtype(mu_dtype, "mu_dtype", what)
    _checks.float_dtype(ortho_dtype, "ortho_dtype", what)
    check_owner_computes(owner_computes, what)
    mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)
    orth = _orthogonalizer(ortho_method, ns_steps, ns_coeffs, ortho_dtype, eps, preconditioning)

    def matrix_fn(x: jax.Array) -> jax.Array:
        s = _shape_factor(shape_scale, rms_scale, x.shape[-2], x.shape[-1])
        o = orth(x)
        if adaptive:  # dual-norm scaling <X, O> per matrix, summed in float32 or wider
            acc = jnp.promote_types(o.dtype, jnp.float32)
            dual = jnp.sum(x.astype(acc) * o.astype(acc), axis=(-2, -1), keepdims=True)
            o = (dual * o.astype(acc)).astype(o.dtype)
        return o if s is None else (s * o).astype(o.dtype)

    def init_fn(params):
        return ScaleByMuonState(count=jnp.zeros([], jnp.int32),
                                mu=_init_momentum(params, layout, mu_dtype, what))

    def update_fn(updates, state, params=None):
        del params
        _, gs, _, layouts, treedef = _flat_layouts(updates, layout, what, "update")
        count_inc = optax.safe_increment(state.count)
        mus, dirs = _momentum_step(gs, treedef.flatten_up_to(state.mu), beta, count_inc,
                                   nesterov=nesterov, bias_correction=bias_correction)
        out = layout_lib.map_matrices(matrix_fn, treedef.unflatten(dirs), layouts,
                                      otherwise=lambda x, path: x, group=group, what=what,
                                      owner_computes=owner_computes)
        out = jax.tree.map(lambda u, g: u.astype(jnp.result_type(g)), out, updates)
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
    fallback: optax.GradientTransformation | None = None,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.95,
    adam_eps: jax.typing.ArrayLike = 1e-8,
    adam_weight_decay: jax.typing.ArrayLike = 0.0,
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
    biases, norm scales) goes to ``fallback``, by default
    ``optax.adamw(lr_fb, adam_b1, adam_b2, adam_eps, weight_decay=adam_weight_decay,
    mu_dtype=mu_dtype)`` with the reference README's settings for non-hidden parameters
    (Adam lr 3e-4 at Muon's 0.02, β = (0.9, 0.95)). Its rate ``lr_fb`` **follows Muon's
    learning rate**: ``0.015 × learning_rate`` (``optzoo._partition.FALLBACK_LR_RATIO``), a
    schedule scaled pointwise and an injected value (``optax.inject_hyperparams``) every step
    — so warmup, decay and a zero learning rate reach the fallback leaves too, as in the
    reference, where every parameter group shares one schedule multiplier. An explicit
    ``adam_learning_rate`` (float or schedule) is used exactly as given instead and does not
    follow ``learning_rate``. Unlike ``optax.contrib.muon``, the fallback's rate is not Muon's
    own (0.02 is far too large for Adam) and ``b2`` is 0.95, not 0.999. The fallback's
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
      fallback: transform for leaves without a layout (including its own learning rate);
        ``None`` builds the AdamW above.
      adam_learning_rate: learning rate of the default fallback; ``None`` (default):
        ``0.015 × learning_rate``, following its schedule (see above).
      adam_b1: ``b1`` of the default fallback.
      adam_b2: ``b2`` of the default fallback.
      adam_eps: ``eps`` of the default fallback.
      adam_weight_decay: weight decay of the default fallback.
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
        beta, nesterov=nesterov, bias_correction=bias_correction, ortho_method=ortho_method,
        ns_steps=ns_steps, ns_coeffs=ns_coeffs, ortho_dtype=ortho_dtype,
        shape_scale=shape_scale, rms_scale=rms_scale, eps=eps, mu_dtype=mu_dtype,
        layout=layout, group=group, owner_computes=owner_computes,
        preconditioning=preconditioning, adaptive=adaptive)
    return _matrix_alias(
        "muon", tx, learning_rate=learning_rate, weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask, layout=layout, fallback=fallback,
        mu_dtype=mu_dtype, adam_learning_rate=adam_learning_rate, adam_b1=adam_b1,
        adam_b2=adam_b2, adam_eps=adam_eps, adam_weight_decay=adam_weight_decay)
