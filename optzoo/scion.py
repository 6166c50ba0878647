r"""Scion: stochastic conditional gradient with a norm-constrained LMO per parameter.

Scion (Pethick et al., 2025) averages the gradients, ``D ← (1 − α) D + α G``, and moves each
parameter along the *linear minimization oracle* of a norm chosen for that parameter,

.. math::
  \mathrm{lmo}(D) = \arg\min_{\|X\| \le \rho} \langle D, X \rangle ,

either unconstrained (``W ← W + η·lmo(D)``, uSCG) or as a Frank–Wolfe convex combination
(``W ← (1 − η) W + η·lmo(D)``, SCG), which keeps ``‖W‖ ≤ ρ`` once it holds.

Norms, on the ``(m, n) = (fan_in, fan_out)`` matrix view of each leaf given by its
:class:`~optzoo.layout.MatrixLayout` (Flax orientation: ``y = x W``; rows index inputs,
columns index output units; leading axes are batch axes — every slice is its own matrix):

=============  ==============================================  =================================
name           norm ``‖W‖`` (its unit-ball atom ``−lmo/ρ``)    symmetry group of the update
=============  ==============================================  =================================
``spectral``   ``‖W‖_{RMS→RMS} = √(m/n)·σ_max(W)``              ``W ↦ U W Vᵀ`` (U, V orthogonal)
               (``√(n/m)·polar(D)``)
``sign``       ``m·max_ij |W_ij|`` (``sign(D)/m``)              signed permutations of entries
``row``        ``‖W‖_{ℓ1→RMS} = max_i ‖W_{i,:}‖₂/√n``          ``W ↦ Π W Qᵀ`` (Π signed perm. of
               (each row ``√n·D_i/‖D_i‖₂``)                     rows, Q orthogonal)
``column``     ``‖W‖_{RMS→ℓ∞} = √m·max_j ‖W_{:,j}‖₂``          ``W ↦ U W Πᵀ`` (Π signed perm. of
               (each column ``D_j/(√m‖D_j‖₂)``)                 columns, U orthogonal)
``bias_rms``   ``RMS(w) = ‖w‖₂/√d`` (``D/RMS(D)``)              orthogonal maps of the leaf (or
                                                               of each matrix slice)
=============  ==============================================  =================================

``row`` normalizes along axis −1 of the matrix view (each row is the fan-out vector of one
input feature or token); ``column`` along axis −2 (each column is the fan-in vector of one
output unit). Because Flax stores kernels transposed with respect to PyTorch, ``row`` is the
reference code's ``ColNorm`` (default ``normalized=False``, the input-layer/embedding norm) and
``column`` its ``RowNorm`` (default ``normalized=True``, e.g. an LM head). A Flax ``Embed``
table ``(V, d)`` read with the default layout (rows = tokens) takes ``row``; a Flax ``Dense``
LM head ``(d, V)`` (columns = vocabulary entries) takes ``column`` or ``sign``.

The shape factors are those of the reference implementation (``scion.py``: ``Spectral`` with
``normalized=True`` scales by ``√(d_out/d_in)``, ``Sign`` with ``normalized=True`` by
``1/d_in``, ``RowNorm``/``ColNorm`` as above, ``BiasRMS``), read in Flax orientation with
``d_in = fan_in = m`` and ``d_out = fan_out = n``. For a conv kernel read with reduction
axes ``(kh, kw, in)`` the spectral factor is ``√(fan_out/fan_in) = √(c_out/c_in)/k`` on the
flattened view; the reference's ``SpectralConv`` uses ``√(c_out/c_in)/k²`` instead (pass a
``radius`` of ``1/k`` to reproduce it). ``'auto'`` mirrors the reference's ``Auto``
(spectral for every matrix, ``BiasRMS`` for vectors); embeddings and heads usually want
``'row'``/``'column'``/``'sign'`` instead and are best assigned explicitly.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo import _blocks, _checks, linalg
from optzoo import layout as layout_lib
from optzoo._tree import path_str
from optzoo.distributed import OwnerComputes, check_owner_computes

__all__ = [
    "NORMS",
    "MATRIX_NORMS",
    "ScaleByScionState",
    "lmo_spectral",
    "lmo_sign",
    "lmo_row",
    "lmo_column",
    "lmo_bias_rms",
    "scale_by_scion",
    "scion",
]

#: Norm names accepted by ``norms``. ``'auto'`` is ``'spectral'`` on leaves with a matrix
#: layout and ``'bias_rms'`` on the others (the reference code's ``Auto`` for 2-D/1-D leaves).
NORMS = ("auto", "spectral", "sign", "row", "column", "bias_rms")
#: Norms that need a matrix view (a leaf with a layout).
MATRIX_NORMS = ("spectral", "sign", "row", "column")

NormSpec = str | Callable[[str, jax.Array], str] | Any
RadiusSpec = jax.typing.ArrayLike | Callable[[str, jax.Array], Any] | Any


class ScaleByScionState(NamedTuple):
    """State of :func:`scale_by_scion`.

    Attributes:
      count: number of updates so far (int32, saturating).
      mu: the averaged gradient ``D`` (structure and shapes of the parameters; dtype
        ``mu_dtype`` or the parameters').
    """

    count: jax.Array
    mu: optax.Updates


# ------------------------------------------------------------------------------ LMO atoms
def lmo_spectral(
    x: jax.typing.ArrayLike,
    radius: jax.typing.ArrayLike = 1.0,
    *,
    method: str = "auto",
    steps: int | None = None,
) -> jax.Array:
    r"""LMO of the ``RMS→RMS`` operator-norm ball: ``−ρ·√(n/m)·polar(X)`` per matrix.

    For ``X ∈ R^{m×n}`` (``m = fan_in``, ``n = fan_out``) with thin SVD ``X = U Σ Vᵀ``:

    .. math::
      \mathrm{lmo}(X) = \arg\min_{\|W\|_{RMS\to RMS} \le \rho} \langle X, W\rangle
      = -\rho \sqrt{n/m}\; U V^\top ,\qquad
      \|W\|_{RMS\to RMS} = \sqrt{m/n}\,\sigma_{\max}(W),

    and ``⟨X, lmo(X)⟩ = −ρ√(n/m)‖X‖_*`` (the dual norm). ``polar`` is computed by
    :func:`optzoo.linalg.orthogonalize` (``method='svd'`` gives it exactly; the iterative
    methods approximately, with singular values near 1). Equivariant under
    ``X ↦ U X Vᵀ``.

    Args:
      x: array ``(..., m, n)``; leading axes are batch axes.
      radius: ``ρ > 0`` (a scalar).
      method: orthogonalizer name for :func:`optzoo.linalg.orthogonalize`.
      steps: iterations of an iterative orthogonalizer (``None``: its default).

    Returns:
      Array of the shape and dtype of ``x``.
    """
    x = _checks.matrix(x, "lmo_spectral")
    m, n = x.shape[-2:]
    o = linalg.orthogonalize(x, method=method, steps=steps)
    return (-radius * math.sqrt(n / m) * o).astype(x.dtype)


def lmo_sign(x: jax.typing.ArrayLike, radius: jax.typing.ArrayLike = 1.0) -> jax.Array:
    r"""LMO of the max-entry ball ``m·max|W_ij| ≤ ρ``: ``−(ρ/m)·sign(X)``.

    The norm ``‖W‖ = m·max_ij |W_ij|`` is the ``ℓ1→ℓ∞`` operator norm with the input measured
    by the mean absolute value (``‖x‖₁/m``); its dual is ``‖X‖₁/m``, so
    ``⟨X, lmo(X)⟩ = −ρ‖X‖₁/m``. Equivariant under signed permutations of the entries (not
    under rotations).

    Args:
      x: array ``(..., m, n)``.
      radius: ``ρ > 0``.

    Returns:
      Array of the shape and dtype of ``x``.
    """
    x = _checks.matrix(x, "lmo_sign")
    m = x.shape[-2]
    return (-(radius / m) * jnp.sign(x)).astype(x.dtype)


def lmo_row(
    x: jax.typing.ArrayLike, radius: jax.typing.ArrayLike = 1.0, *, eps: float = 1e-8
) -> jax.Array:
    r"""LMO of the ``ℓ1→RMS`` ball: every row scaled to ``ℓ₂`` norm ``ρ√n``, sign flipped.

    Rows are axis −2 of ``(..., m, n)`` (fan-in index: one input feature or token); each row
    ``X_i`` (length ``n = fan_out``) becomes ``−ρ√n·X_i/(‖X_i‖₂ + eps)`` (RMS ``ρ``):

    .. math::
      \|W\|_{\ell_1\to RMS} = \max_i \|W_{i,:}\|_2/\sqrt{n},\qquad
      \langle X, \mathrm{lmo}(X)\rangle = -\rho\sqrt{n}\sum_i \|X_{i,:}\|_2 .

    A zero row stays zero. Equivariant under ``X ↦ Π X Qᵀ`` (signed permutation of rows,
    orthogonal ``Q``) and invariant under positive scaling of rows.

    Args:
      x: array ``(..., m, n)``, normalized row by row (over its ``n`` columns).
      radius: ``ρ > 0``, the RMS of every row of the result.
      eps: added to each row norm (:func:`optzoo.linalg.row_normalize`).

    Returns:
      ``lmo(x)``, of the shape and dtype of ``x``.
    """
    x = _checks.matrix(x, "lmo_row")
    n = x.shape[-1]
    return (-radius * math.sqrt(n) * linalg.row_normalize(x, eps=eps)).astype(x.dtype)


def lmo_column(
    x: jax.typing.ArrayLike, radius: jax.typing.ArrayLike = 1.0, *, eps: float = 1e-8
) -> jax.Array:
    r"""LMO of the ``RMS→ℓ∞`` ball: every column scaled to ``ℓ₂`` norm ``ρ/√m``, sign flipped.

    Columns are axis −1 of ``(..., m, n)`` (fan-out index: one output unit, e.g. one
    vocabulary entry of a Flax LM head ``(d, V)``); each column ``X_j`` (length ``m = fan_in``)
    becomes ``−ρ·X_j/(√m(‖X_j‖₂ + eps))``:

    .. math::
      \|W\|_{RMS\to\ell_\infty} = \sqrt{m}\max_j \|W_{:,j}\|_2,\qquad
      \langle X, \mathrm{lmo}(X)\rangle = -\frac{\rho}{\sqrt{m}}\sum_j \|X_{:,j}\|_2 .

    Equivariant under ``X ↦ U X Πᵀ`` (orthogonal ``U``, signed permutation of columns).

    Args:
      x: array ``(..., m, n)``, normalized column by column (over its ``m`` rows).
      radius: ``ρ > 0``; every column of the result has ``ℓ₂`` norm ``ρ/√m``.
      eps: added to each column norm (:func:`optzoo.linalg.col_normalize`).

    Returns:
      ``lmo(x)``, of the shape and dtype of ``x``.
    """
    x = _checks.matrix(x, "lmo_column")
    m = x.shape[-2]
    return (-(radius / math.sqrt(m)) * linalg.col_normalize(x, eps=eps)).astype(x.dtype)


def lmo_bias_rms(
    x: jax.typing.ArrayLike,
    radius: jax.typing.ArrayLike = 1.0,
    *,
    axis: int | tuple[int, ...] | None = None,
    eps: float = 1e-8,
) -> jax.Array:
    r"""LMO of the RMS ball: ``−ρ·X/(RMS(X) + eps)``, RMS over ``axis`` (default: all).

    .. math::
      \mathrm{RMS}(w) = \|w\|_2/\sqrt{d},\qquad
      \langle x, \mathrm{lmo}(x)\rangle = -\rho\sqrt{d}\,\|x\|_2 .

    For vectors (biases, norm scales) and scalars; on a ``(batch, m, n)`` stack pass
    ``axis=(-2, -1)`` for one RMS per matrix. Equivariant under orthogonal maps of the
    reduced axes. RMS accumulated in float32 or wider.

    Args:
      x: any floating array.
      radius: ``ρ > 0``.
      axis: axes of one vector (``None``: the whole array).
      eps: added to the RMS.

    Returns:
      Array of the shape and dtype of ``x``.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"lmo_bias_rms: expected a floating array, got dtype {x.dtype}")
    acc = jnp.promote_types(x.dtype, jnp.float32)
    xa = x.astype(acc)
    # Rescale by the peak before squaring (x/(RMS(x)+eps) = z/(RMS(z)+eps/peak), z = x/peak):
    # squares of |x| > ~1e19 overflow float32 and the direction became exactly 0.
    peak = jnp.max(jnp.abs(xa), axis=axis, keepdims=True, initial=0.0)  # 0 if empty
    safe = jnp.where(peak > 0, peak, 1)
    z = xa / safe
    rms = jnp.sqrt(jnp.mean(jnp.square(z), axis=axis, keepdims=True))
    return (-radius * z / (rms + eps / safe)).astype(x.dtype)


# ------------------------------------------------------------------- per-leaf resolution
def _is_number(v: Any) -> bool:
    return (isinstance(v, numbers.Real) and not isinstance(v, bool)) or (
        isinstance(v, (np.ndarray, jax.Array)) and np.ndim(v) == 0
    )


def _check_radius(value: Any, path: str, what: str) -> None:
    if not _is_number(value):
        raise TypeError(
            f"{what}: radius for '{path}' must be a positive scalar, got {type(value).__name__}"
        )
    if isinstance(value, jax.core.Tracer):
        return  # injected hyperparameter under jit: cannot be checked
    if not float(np.asarray(value)) > 0:
        raise ValueError(f"{what}: radius for '{path}' must be > 0, got {value}")


def _per_leaf(
    spec: Any, tree: Any, is_scalar: Callable[[Any], bool], name: str, what: str
) -> list[Any]:
    """One value per leaf of ``tree`` from a scalar, a matching tree or ``(path, leaf) -> v``."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    if is_scalar(spec):
        return [spec] * len(paths_leaves)
    if callable(spec):
        return [spec(path_str(p), x) for p, x in paths_leaves]
    try:
        return treedef.flatten_up_to(spec)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{what}: `{name}` must be a single value, a callable (path, leaf) -> "
            f"value, or a tree matching the parameters: {e}"
        ) from e


class _Plan(NamedTuple):
    path: str
    norm: str
    radius: Any
    layout: layout_lib.MatrixLayout | None


def _plans(
    tree: Any,
    norms: NormSpec,
    radius: RadiusSpec,
    layout: layout_lib.LayoutSpec,
    what: str,
    kind: str,
) -> list[_Plan]:
    """The norm, radius and layout of every leaf of ``tree`` (every leaf checked floating,
    its layout resolved once); ``kind`` names the tree in errors."""
    paths, leaves, lays, _, _ = _blocks.flat_layouts(tree, layout, what, kind)
    names = _per_leaf(norms, tree, lambda v: isinstance(v, str), "norms", what)
    radii = _per_leaf(radius, tree, _is_number, "radius", what)
    plans = []
    for path, x, lay, name, rad in zip(paths, leaves, lays, names, radii, strict=True):
        if not isinstance(name, str) or name not in NORMS:
            raise ValueError(
                f"{what}: unknown norm {name!r} for parameter '{path}'; expected "
                f"one of {list(NORMS)}"
            )
        if name == "auto":
            name = "spectral" if lay is not None else "bias_rms"
        if name in MATRIX_NORMS and lay is None:
            raise ValueError(
                f"{what}: parameter '{path}' of shape {tuple(jnp.shape(x))} has no matrix "
                f"layout, so the matrix norm '{name}' is undefined for it; assign it "
                "'bias_rms' (or norms='auto'), or give it a MatrixLayout"
            )
        _check_radius(rad, path, what)
        plans.append(_Plan(path, name, rad, lay))
    return plans


_UNIT_ATOMS = {
    # Positive unit atoms −lmo/ρ on (batch, m, n) stacks.
    "spectral": lambda x, method, steps, eps: -lmo_spectral(x, 1.0, method=method, steps=steps),
    "sign": lambda x, method, steps, eps: -lmo_sign(x, 1.0),
    "row": lambda x, method, steps, eps: -lmo_row(x, 1.0, eps=eps),
    "column": lambda x, method, steps, eps: -lmo_column(x, 1.0, eps=eps),
    "bias_rms": lambda x, method, steps, eps: -lmo_bias_rms(x, 1.0, axis=(-2, -1), eps=eps),
}


def _directions(
    d_tree: Any,
    plans: list[_Plan],
    method: str,
    steps: int | None,
    eps: float,
    what: str,
    owner_computes: OwnerComputes | None = None,
) -> list[jax.Array]:
    """``ρ·(−lmo/ρ)(D)`` per leaf: the positive Scion direction (subtracted by the alias)."""
    leaves, treedef = jax.tree.flatten(d_tree)
    out: list[Any] = [None] * len(leaves)
    for name in NORMS[1:]:
        members = [i for i, p in enumerate(plans) if p.norm == name and p.layout is not None]
        if not members:
            continue
        lays = [plans[i].layout if i in members else None for i in range(len(leaves))]
        res = _blocks.map_matrices(
            lambda mat, name=name: _UNIT_ATOMS[name](mat, method, steps, eps),
            d_tree,
            treedef.unflatten(lays),
            otherwise=lambda x, p: x,
            what=what,
            owner_computes=owner_computes if name == "spectral" else None,
        )
        res_leaves = treedef.flatten_up_to(res)
        for i in members:
            out[i] = res_leaves[i]
    for i, p in enumerate(plans):
        if p.layout is None:  # only 'bias_rms' reaches here (checked in _plans)
            out[i] = -lmo_bias_rms(leaves[i], 1.0, eps=eps)
        out[i] = (p.radius * out[i]).astype(out[i].dtype)
    return out


def _check_momentum(momentum: Any) -> None:
    # Scion's α is the weight of the *new* gradient: α = 0 would never move.
    _checks.real(
        momentum,
        "momentum (Scion's α, the weight of the new gradient)",
        "scale_by_scion",
        lo=0.0,
        hi=1.0,
        lo_open=True,
    )


# ---------------------------------------------------------------------------- blocks
def scale_by_scion(
    momentum: jax.typing.ArrayLike = 0.1,
    *,
    norms: NormSpec = "auto",
    radius: RadiusSpec = 1.0,
    layout: layout_lib.LayoutSpec = None,
    ortho_method: str = "auto",
    ns_steps: int | None = None,
    eps: float = 1e-8,
    mu_dtype: jax.typing.DTypeLike | None = None,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""Scion direction: the (positive) LMO atom of each leaf's norm at the averaged gradient.

    With ``α = momentum`` and per-leaf norm ``‖·‖`` and radius ``ρ``:

    .. math::
      D_t = (1 - \alpha) D_{t-1} + \alpha G_t ,\qquad
      u_t = -\mathrm{lmo}_{\|\cdot\| \le \rho}(D_t)
          = \rho \cdot \arg\max_{\|X\| \le 1} \langle D_t, X \rangle ,

    with ``D_0 = 0``. ``u_t`` is the steepest-ascent atom of the chosen norm (``⟨D, u⟩ =
    ρ‖D‖_*``, ``‖u‖ = ρ``); the learning rate and the sign flip come later in the chain
    (:func:`scion`). The norms, their atoms and the symmetry group each is equivariant under
    are listed in the module docstring: ``'spectral'`` (``ρ√(n/m)·polar(D)``, bi-orthogonal
    group), ``'sign'`` (``ρ·sign(D)/m``, signed permutations), ``'row'``/``'column'``
    (row/column normalization, permutation × orthogonal groups), ``'bias_rms'``
    (``ρ·D/RMS(D)``). Every atom is invariant to positive rescaling of ``D``, so the
    averaging convention (EMA with weight ``α`` on the new gradient, Scion's ``momentum``
    = one minus the usual momentum) only matters through its time constant.

    Args:
      momentum: Scion's ``α ∈ (0, 1]``, the weight of the new gradient: ``0.1`` is the usual
        momentum 0.9, ``1`` disables averaging. (The reference code's default is 1; its README
        recommends 0.1.)
      norms: the norm of each leaf: one name of :data:`NORMS` for all leaves, a tree of names
        matching the parameters, or a callable ``(path, leaf) -> name`` (``path`` is the
        '/'-joined key path). ``'auto'``: ``'spectral'`` on leaves with a matrix layout,
        ``'bias_rms'`` on the others. A matrix norm on a leaf without a layout raises.
      radius: ``ρ > 0`` per leaf: a scalar, a tree of scalars, or a callable
        ``(path, leaf) -> scalar`` (list a callable in ``static_args`` of
        ``optax.inject_hyperparams``).
      layout: matrix view of each leaf (:func:`optzoo.layout.resolve`); default: the last two
        axes of leaves with at least two dimensions, leading axes as batch axes (each slice
        gets its own LMO).
      ortho_method: orthogonalizer for ``'spectral'`` (:func:`optzoo.linalg.orthogonalize`:
        ``'auto'``, ``'newton_schulz'`` (the reference's NS5), ``'polar_express'``,
        ``'gram_newton_schulz'``, ``'svd'``, ``'qdwh'``).
      ns_steps: iterations of an iterative orthogonalizer (``None``: its default).
      eps: added to the row/column norms and the RMS (the reference uses 1e-8).
      mu_dtype: dtype of ``D``; ``None`` uses the parameters' dtype.
      owner_computes: distribute the ``'spectral'`` atoms' orthogonalizations over devices,
        each matrix computed by one owner (:class:`optzoo.OwnerComputes`,
        :mod:`optzoo.distributed`); the other atoms are local and ignore it.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByScionState`; updates keep
      the gradients' dtype.

    Raises:
      ValueError: unknown norm name, ``radius <= 0``, a matrix norm on a leaf without a
        layout, ``momentum`` outside ``(0, 1]``, a layout that does not fit; naming the path.
      TypeError: non-floating leaves (naming the path) or a non-scalar radius.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from optzoo.scion import scale_by_scion
      >>> params = {"w": jnp.ones((4, 8)), "b": jnp.zeros((8,))}
      >>> tx = scale_by_scion(momentum=1.0, norms={"w": "row", "b": "bias_rms"})
      >>> grads = {"w": jnp.ones((4, 8)), "b": jnp.full((8,), -2.0)}
      >>> u, _ = tx.update(grads, tx.init(params), params)
      >>> print(jnp.round(u["w"][0, :2], 4), jnp.round(u["b"][:2], 4))  # RMS-1 rows and bias
      [1. 1.] [-1. -1.]

    References:
      Pethick, Xie, Antonakopoulos, Zhu, Silveti-Falls, Cevher, *Training Deep Learning Models
      with Norm-Constrained LMOs*, ICML 2025, arXiv:2502.07529: the averaged gradient and the
      uSCG/SCG steps (Algorithms 1 and 2 of the arXiv version) and the table of layer norms;
      shape factors as in the reference code github.com/LIONS-EPFL/scion (``scion.py``).
      Equation numbers not re-verified against the paper text.
    """
    what = "scale_by_scion"
    _check_momentum(momentum)
    _blocks.check_steps(ns_steps, what)
    _checks.positive(eps, "eps", what)
    _checks.float_dtype(mu_dtype, "mu_dtype", what)
    _blocks.check_ortho(ortho_method, None, what)
    if isinstance(norms, str):
        _checks.choice(norms, "norm", what, NORMS)
    if _is_number(radius):
        _check_radius(radius, "<all parameters>", what)
    check_owner_computes(owner_computes, what)
    mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)

    def init_fn(params):
        _plans(params, norms, radius, layout, what, "parameter")
        mu = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), mu_dtype or jnp.result_type(p)), params)
        return ScaleByScionState(count=jnp.zeros([], jnp.int32), mu=mu)

    def update_fn(updates, state, params=None):
        del params
        plans = _plans(updates, norms, radius, layout, what, "update")
        # D ← (1 − α) D + α G, written with α itself: optax.tree.update_moment's form needs
        # decay = 1 − α, and 1 − (1 − α) ≠ α in floating point.
        mu = jax.tree.map(
            lambda g, d: ((1.0 - momentum) * d + momentum * g).astype(d.dtype), updates, state.mu
        )
        directions = _directions(mu, plans, ortho_method, ns_steps, eps, what, owner_computes)
        leaves, treedef = jax.tree.flatten(updates)
        out = [u.astype(g.dtype) for u, g in zip(directions, leaves, strict=True)]
        return treedef.unflatten(out), ScaleByScionState(optax.safe_increment(state.count), mu)

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------- alias
def scion(
    learning_rate: optax.ScalarOrSchedule,
    *,
    norms: NormSpec = "auto",
    radius: RadiusSpec = 1.0,
    momentum: jax.typing.ArrayLike = 0.1,
    constrained: bool = False,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
    layout: layout_lib.LayoutSpec = None,
    ortho_method: str = "auto",
    ns_steps: int | None = None,
    eps: float = 1e-8,
    mu_dtype: jax.typing.DTypeLike | None = None,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""Scion: conditional-gradient steps with a per-leaf norm LMO (uSCG or SCG).

    With learning rate ``η`` (Scion's ``γ``), averaged gradient ``D`` and per-leaf LMO of the
    radius-``ρ`` ball (:func:`scale_by_scion`):

    .. math::
      \text{unconstrained (uSCG):}\quad W \leftarrow W + \eta\,\mathrm{lmo}(D) - \eta\lambda W,
      \qquad
      \text{constrained (SCG):}\quad W \leftarrow (1 - \eta) W + \eta\,\mathrm{lmo}(D).

    The constrained form is a Frank–Wolfe convex combination: for ``0 ≤ η ≤ 1`` it keeps every
    leaf in its ball ``‖W‖ ≤ ρ`` once it is inside (with an exact LMO, ``ortho_method='svd'``
    for ``'spectral'``) and otherwise contracts ``‖W‖ − ρ`` by ``(1 − η)`` per step. Its
    weight decay is implicit and equal to the learning rate (decay factor ``1 − η``), so the
    constrained form reads the parameters: it is ``chain(scale_by_scion, add_decayed_weights(1),
    scale_by_learning_rate)`` and ``update`` must be given ``params``. Leaves excluded by
    ``weight_decay_mask`` get the unconstrained step.

    Each step is steepest descent (uSCG) / a conditional-gradient step (SCG) in the chosen
    per-leaf norm and is equivariant under that norm's symmetry group (module docstring):
    ``U·Vᵀ`` for ``'spectral'``, signed permutations of entries for ``'sign'``, permutation ×
    orthogonal groups for ``'row'``/``'column'``.

    Non-matrix leaves: by default (``norms='auto'``) every leaf without a matrix layout
    (biases, norm scales, scalars) uses Scion's own vector norm ``'bias_rms'``, so no AdamW
    fallback is needed; assigning a matrix norm to such a leaf raises a ``ValueError``.

    Defaults: unconstrained (the reference code defaults to the constrained form,
    ``unconstrained=False``; we default to the form that composes with an ordinary
    ``weight_decay`` and does not need a ball-matched initialization), ``α = 0.1`` (the
    README's recommendation), ``ρ = 1`` (the README's MLP example; nanoGPT uses ``ρ = 50``
    for blocks and ``60ρ`` for a ``'sign'`` head).

    Args:
      learning_rate: ``η`` (Scion's ``γ``): a scalar or an optax schedule.
      norms: per-leaf norm names (see :func:`scale_by_scion`).
      radius: per-leaf ``ρ > 0`` (see :func:`scale_by_scion`).
      momentum: Scion's ``α ∈ (0, 1]`` (weight of the new gradient in ``D``).
      constrained: ``True`` for SCG (implicit decay ``1``), ``False`` for uSCG.
      weight_decay: decoupled weight decay ``λ`` (multiplied by ``η``) of the unconstrained
        form; must be 0 when ``constrained`` (the decay is then implicit).
      weight_decay_mask: tree of booleans or callable selecting the decayed leaves (also the
        leaves that get the Frank–Wolfe contraction when ``constrained``).
      layout: matrix view of each leaf (:func:`optzoo.layout.resolve`).
      ortho_method: orthogonalizer of ``'spectral'`` atoms.
      ns_steps: iterations of an iterative orthogonalizer.
      eps: normalization epsilon of ``'row'``, ``'column'``, ``'bias_rms'``.
      mu_dtype: dtype of the averaged gradient.
      owner_computes: distribute the ``'spectral'`` atoms' orthogonalizations over devices,
        each matrix computed by one owner (:class:`optzoo.OwnerComputes`,
        :mod:`optzoo.distributed`); the other atoms are local and ignore it.

    Returns:
      ``chain(scale_by_scion, add_decayed_weights(1 if constrained else λ, mask),
      scale_by_learning_rate(η))``.

    Raises:
      ValueError: as :func:`scale_by_scion`, and for a nonzero ``weight_decay`` together
        with ``constrained=True``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optzoo
      >>> params = {"w": jnp.eye(4, 8), "b": jnp.zeros((8,))}
      >>> opt = optzoo.scion(0.1, constrained=True, norms={"w": "spectral", "b": "bias_rms"})
      >>> state = opt.init(params)
      >>> grads = {"w": jnp.ones((4, 8)), "b": jnp.ones((8,))}
      >>> updates, state = opt.update(grads, state, params)
      >>> params = optax.apply_updates(params, updates)

    References:
      Pethick et al., *Training Deep Learning Models with Norm-Constrained LMOs*, ICML 2025,
      arXiv:2502.07529 (uSCG and SCG, Algorithms 1–2 of the arXiv version; equation numbers
      not re-verified); reference code github.com/LIONS-EPFL/scion.
    """
    _checks.learning_rate(learning_rate, "learning_rate", "scion")
    _checks.nonnegative(weight_decay, "weight_decay", "scion")
    if constrained:
        if (
            _is_number(weight_decay)
            and not isinstance(weight_decay, jax.core.Tracer)
            and (float(np.asarray(weight_decay)) != 0.0)
        ):
            raise ValueError(
                "scion: constrained=True already decays by the learning rate (W ← (1 − η)W + "
                f"η·lmo); weight_decay must be 0, got {weight_decay}"
            )
        decay = 1.0 + weight_decay  # weight_decay is 0 here (an injected 0.0 keeps it traced)
    else:
        decay = weight_decay
    return _blocks.check_update_shapes(
        optax.chain(
            scale_by_scion(
                momentum,
                norms=norms,
                radius=radius,
                layout=layout,
                ortho_method=ortho_method,
                ns_steps=ns_steps,
                eps=eps,
                mu_dtype=mu_dtype,
                owner_computes=owner_computes,
            ),
            optax.add_decayed_weights(decay, weight_decay_mask),
            optax.scale_by_learning_rate(learning_rate),
        ),
        "scion",
    )


#: The arguments ``optax.inject_hyperparams`` cannot trace (per-leaf norms, iteration counts,
#: dtypes, layouts, masks): pass ``static_args=factory.static_args``.
scale_by_scion.static_args = (
    "norms",
    "layout",
    "ortho_method",
    "ns_steps",
    "mu_dtype",
    "owner_computes",
)
scion.static_args = scale_by_scion.static_args + ("weight_decay_mask",)


def leaf_norms(
    params: Any,
    norms: NormSpec = "auto",
    radius: RadiusSpec = 1.0,
    layout: layout_lib.LayoutSpec = None,
) -> list[tuple[str, str, Any, Any]]:
    """``(path, norm, radius, layout)`` of every leaf of ``params``, resolved as
    :func:`scion` resolves them (``'auto'`` replaced by the norm it picks): its plan."""
    return [tuple(p) for p in _plans(params, norms, radius, layout, "scion", "parameter")]
