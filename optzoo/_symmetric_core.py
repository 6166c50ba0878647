"""Private core of the symmetry-compatible maps (:mod:`optzoo.symmetric`, its stack).

Unit-row layouts (every leaf read as a ``(batch, U, F)`` stack whose rows are the permuted
units), the float32 matrix maps (row normalization, centering, Gram polar factors, the
PolarGrad factor ``ν^α``, fused gate|up pairing) and the EMA-momentum skeleton shared by the
``scale_by_*`` blocks. Formulas and choices are documented in :mod:`optzoo.symmetric`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optzoo import layout as layout_lib
from optzoo import linalg
from optzoo._tree import check_floating, path_str
from optzoo.distributed import OwnerComputes, maybe_apply

#: ``gate_up_pair``: a fused gate|up axis of size ``2f`` read as ``f`` units ``(gate_j, up_j)``;
#: ``'concat'`` = gate in the first half, up in the second; ``'interleaved'`` = ``2j, 2j+1``.
GATE_UP_PAIRS = (None, "concat", "interleaved")
SIDES = ("auto", "right", "left")
NU_SCOPES = ("matrix", "leaf")
GRAM_METHODS = ("eigh", "newton_schulz")
_HIGHEST = jax.lax.Precision.HIGHEST


class SymmetricState(NamedTuple):
    """State of the ``scale_by_*`` blocks of :mod:`optzoo.symmetric`.

    Attributes:
      count: number of updates applied so far (int32, saturating).
      mu: the EMA momentum ``M`` (structure and shapes of the parameters, dtype ``mu_dtype``
        or the parameter's).
    """

    count: jax.Array
    mu: optax.Updates


# ---------------------------------------------------------------------- validation
def check_choice(value: Any, name: str, allowed: tuple, what: str) -> None:
    if not any(value is a or (isinstance(a, str) and value == a) for a in allowed):
        raise ValueError(f"{what}: unknown {name} {value!r}; expected one of {list(allowed)}")


def check_beta(beta: Any, what: str) -> None:
    # Concrete numbers only: under optax.inject_hyperparams beta arrives as an array.
    if isinstance(beta, numbers.Real) and not isinstance(beta, bool) and not 0 <= beta <= 1:
        raise ValueError(f"{what}: beta must lie in [0, 1], got {beta}")


def check_unit_axis(unit_axis: Any, what: str) -> None:
    if unit_axis is None:
        return
    if isinstance(unit_axis, bool) or not isinstance(unit_axis, numbers.Integral):
        raise TypeError(f"{what}: unit_axis must be a Python int (the axis indexed by the "
                        f"permuted units), got {unit_axis!r}; under optax.inject_hyperparams "
                        "list 'unit_axis' in static_args")


def is_zero(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and x == 0


def is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


# ------------------------------------------------------------------------ layouts
def user_layouts(layout: layout_lib.LayoutSpec, tree: Any, what: str) -> list[Any]:
    """The layout spec resolved to a flat list aligned with ``jax.tree.leaves(tree)``
    (masked trees of ``optax.partition`` included: see :func:`optzoo.layout.resolve`)."""
    return jax.tree.structure(tree).flatten_up_to(layout_lib.resolve(layout, tree, what=what))


def unit_layout(lay: layout_lib.MatrixLayout, shape: tuple[int, ...], unit_axis: Any,
                path: str, what: str, pair: str | None) -> layout_lib.MatrixLayout:
    """A layout of ``shape`` whose matrix view has the units as rows: ``(batch, U, F)``."""
    ndim = len(shape)
    u = lay.unit_axis if lay.unit_axis is not None else unit_axis
    if u is None:
        raise ValueError(f"{what}: parameter '{path}' of shape {shape} needs a unit axis (the "
                         "axis indexed by tokens / vocabulary entries / experts / neurons): "
                         "pass unit_axis= or a MatrixLayout(unit_axis=...)")
    if not -ndim <= u < ndim:
        raise ValueError(f"{what}: unit_axis {u} is out of range for parameter '{path}' of "
                         f"shape {shape} ({ndim} axes). Flax Embed tables (V, d) have their "
                         "units on axis 0; Dense kernels of LM heads/routers/gate/up "
                         "projections (d, units) on axis 1 (-1)")
    if lay.num_heads is not None:
        raise ValueError(f"{what}: layout of '{path}' splits heads (num_heads="
                         f"{lay.num_heads}); unit maps take a layout without num_heads")
    lay.validate(shape, path)
    red = tuple(a % ndim for a in lay.reduction_axes)
    out = tuple(a % ndim for a in lay.output_axes)
    un = u % ndim
    if un in red:
        side, other = red, out
    elif un in out:
        side, other = out, red
    else:
        raise ValueError(f"{what}: unit_axis {u} of parameter '{path}' (shape {shape}) is a "
                         f"batch axis of its layout (matrix axes {red} x {out}); the units "
                         "must index the rows or columns of the matrix view")
    if len(side) != 1:
        raise ValueError(f"{what}: the unit axis {u} of '{path}' must be the only axis on its "
                         f"side of the matrix view, got axes {side}")
    if pair is not None and shape[un] % 2:
        raise ValueError(f"{what}: gate_up_pair={pair!r} needs an even unit axis for "
                         f"'{path}', got size {shape[un]} on axis {u}")
    return layout_lib.MatrixLayout(reduction_axes=(un,), output_axes=other, unit_axis=un)


def unit_layouts(tree: Any, unit_axis: Any, layout: layout_lib.LayoutSpec, what: str,
                 kind: str, pair: str | None = None, strict: bool = True) -> Any:
    """Tree of unit-row layouts (``None`` for non-matrix leaves unless ``strict``)."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    for p, x in paths_leaves:
        check_floating(x, path_str(p), f"{what}: {kind}")
    lays = user_layouts(layout, tree, what)
    out = []
    for (p, x), lay in zip(paths_leaves, lays, strict=True):
        path = path_str(p)
        if lay is None:
            if strict:
                raise ValueError(
                    f"{what}: parameter '{path}' of shape {tuple(jnp.shape(x))} has no matrix "
                    "layout (fewer than 2 axes, or a None layout); the block has no rule for it. "
                    "Use the alias (which sends such leaves to its documented `fallback`) or "
                    "route it elsewhere with optzoo.routing")
            out.append(None)
            continue
        out.append(unit_layout(lay, tuple(jnp.shape(x)), unit_axis, path, what, pair))
    return treedef.unflatten(out)


# ------------------------------------------------------------------ matrix maps
# All maps act on float32 stacks (b, U, F) whose rows are the units.
def _t(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


def center_rows(x: jax.Array) -> jax.Array:
    return linalg.center(x, axis=-2)


def row_norm(x: jax.Array, eps: Any, threshold: Any) -> jax.Array:
    y = linalg.row_normalize(x, eps=eps)
    if not is_zero(threshold):
        norms = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
        keep = norms > threshold * jnp.max(norms, axis=-2, keepdims=True)
        y = jnp.where(keep, y, jnp.zeros_like(y))
    return y


def gram_polar(y: jax.Array, side: str, gram_eps: Any, gram_method: str,
               gram_steps: int, owner_computes: OwnerComputes | None = None) -> jax.Array:
    """``Y (YᵀY)^{-1/2}`` (right) or ``(YYᵀ)^{-1/2} Y`` (left); 'auto' inverts the smaller.

    With ``owner_computes`` the polar factors of the ``(b, U, F)`` stack are computed
    owner-computes style (:mod:`optzoo.distributed`); the cheap maps around them (row norms,
    centering, ``ν``) stay where the stack is, so a ``ν`` summed over a leaf is unaffected.
    """
    if side == "auto":
        side = "right" if y.shape[-1] <= y.shape[-2] else "left"

    def polar(z: jax.Array) -> jax.Array:
        if side == "right":
            r = linalg.inverse_sqrt_psd(_mm(_t(z), z), method=gram_method, eps=gram_eps,
                                        steps=gram_steps)
            return _mm(z, r)
        left = linalg.inverse_sqrt_psd(_mm(z, _t(z)), method=gram_method, eps=gram_eps,
                                       steps=gram_steps)
        return _mm(left, z)

    return maybe_apply(owner_computes, polar, y)


def nu_factor(y: jax.Array, p: jax.Array, alpha: Any, eps: Any, scope: str) -> Any:
    """``max(⟨Y, P⟩, eps)^α`` per matrix (``(b, 1, 1)``) or per leaf; ``None`` if ``α = 0``."""
    if is_zero(alpha):
        return None
    nu = jnp.sum(y * p, axis=(-2, -1), keepdims=True)
    if scope == "leaf":
        nu = jnp.sum(nu, axis=0, keepdims=True)
    return jnp.power(jnp.maximum(nu, eps), alpha)


def scaled(factor: Any, p: jax.Array) -> jax.Array:
    return p if factor is None else factor * p


def pair_rows(x: jax.Array, pair: str | None) -> jax.Array:
    """``(b, 2f, F)`` rows of a fused gate|up axis -> ``(b, f, 2F)`` rows ``[gate_j, up_j]``."""
    if pair is None:
        return x
    b, u, f = x.shape
    if pair == "concat":
        x = jnp.swapaxes(x.reshape(b, 2, u // 2, f), 1, 2)
    return x.reshape(b, u // 2, 2 * f)


def unpair_rows(y: jax.Array, pair: str | None) -> jax.Array:
    if pair is None:
        return y
    b, h, f2 = y.shape
    if pair == "concat":
        return jnp.swapaxes(y.reshape(b, h, 2, f2 // 2), 1, 2).reshape(b, 2 * h, f2 // 2)
    return y.reshape(b, 2 * h, f2 // 2)


# ----------------------------------------------------------------- the skeleton
def scale_by_unit_map(
    what: str,
    matrix_fn: Callable[[jax.Array], jax.Array],
    *,
    beta: Any,
    nesterov: bool,
    mu_dtype: Any,
    unit_axis: Any,
    layout: layout_lib.LayoutSpec,
    pair: str | None = None,
    group: bool = True,
) -> optax.GradientTransformation:
    """EMA momentum, then ``matrix_fn`` on the unit-row view of every leaf (§1.3 skeleton)."""
    mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)

    def fn(x):
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        return unpair_rows(matrix_fn(pair_rows(x32, pair)), pair)

    def init_fn(params):
        unit_layouts(params, unit_axis, layout, what, "parameter", pair)
        mu = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), mu_dtype or jnp.result_type(p)),
                          params)
        return SymmetricState(count=jnp.zeros([], jnp.int32), mu=mu)

    def update_fn(updates, state, params=None):
        del params
        lays = unit_layouts(updates, unit_axis, layout, what, "update", pair)

        def moment(g, m):
            acc = jnp.promote_types(jnp.result_type(m), jnp.float32)
            return beta * m.astype(acc) + (1 - beta) * g.astype(acc)

        mu32 = jax.tree.map(moment, updates, state.mu)
        if nesterov:
            inputs = jax.tree.map(lambda g, m: (1 - beta) * g.astype(m.dtype) + beta * m,
                                  updates, mu32)
        else:
            inputs = mu32
        out = layout_lib.map_matrices(fn, inputs, lays, group=group, what=what)
        out = jax.tree.map(lambda u, g: u.astype(jnp.result_type(g)), out, updates)
        mu = jax.tree.map(lambda m, old: m.astype(old.dtype), mu32, state.mu)
        return out, SymmetricState(count=optax.safe_increment(state.count), mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)


