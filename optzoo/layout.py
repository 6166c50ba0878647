"""Matrix layouts: how an n-D parameter is read as a batch of matrices.

A :class:`MatrixLayout` says which axes of a parameter are *reduction* axes (fan-in, the rows
``m`` of the matrix view), which are *output* axes (fan-out, the columns ``n``), and, for
permutation-aware maps, which axis indexes the permuted units. Every other axis is a *batch*
axis (scanned layers ``[L, m, n]``, expert stacks ``[E, m, n]``, attention heads ...): each
batch slice is one independent matrix.

The default layout is Flax's ``Dense`` kernel convention ``(..., fan_in, fan_out)``: the last
two axes are the matrix, leading axes are batch axes. A Flax ``Embed`` table ``(V, d)`` read
as "units on axis 0" is ``MatrixLayout(unit_axis=0)``; a conv kernel ``(kh, kw, in, out)`` is
``MatrixLayout(reduction_axes=(0, 1, 2), output_axes=(3,))``.

Matrix optimizers accept a layout as a single ``MatrixLayout`` (applied to every matrix
leaf), a pytree of ``MatrixLayout | None`` matching the parameters, or a callable
``params -> such a tree``; :func:`resolve` turns any of these into the tree form and checks it
against the shapes, naming the parameter path of any mismatch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo import distributed
from optzoo._tree import path_str
from optzoo.distributed import OwnerComputes

__all__ = [
    "MatrixLayout", "LayoutSpec", "resolve", "default_layout", "map_matrices", "map_stacks",
]


@dataclasses.dataclass(frozen=True)
class MatrixLayout:
    """Which axes of a parameter form the (fan_in, fan_out) matrix; the rest are batch axes.

    Attributes:
      reduction_axes: axes contracted with the layer input (fan-in); flattened, in the order
        given, into the rows ``m`` of the matrix view. Negative axes count from the end.
      output_axes: axes of the layer output (fan-out); flattened into the columns ``n``.
      unit_axis: the axis indexed by permuted units (tokens, vocabulary entries, experts,
        neurons) for permutation-aware maps; must be one of the reduction or output axes, or
        ``None`` when the method does not use it.
      num_heads: if set, the (single) output axis is split into ``(num_heads, n // num_heads)``
        and the head axis becomes a batch axis: head-wise orthogonalization of a fused
        ``(d, heads * head_dim)`` projection. ``None`` leaves the output axis whole.
    """

    reduction_axes: tuple[int, ...] = (-2,)
    output_axes: tuple[int, ...] = (-1,)
    unit_axis: int | None = None
    num_heads: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "reduction_axes", _as_axes(self.reduction_axes, "reduction_axes"))
        object.__setattr__(self, "output_axes", _as_axes(self.output_axes, "output_axes"))
        if set(self.reduction_axes) & set(self.output_axes):
            raise ValueError(f"MatrixLayout: reduction_axes {self.reduction_axes} and output_axes "
                             f"{self.output_axes} overlap")
        if self.num_heads is not None:
            if int(self.num_heads) < 1:
                raise ValueError(f"MatrixLayout: num_heads must be >= 1, got {self.num_heads}")
            if len(self.output_axes) != 1:
                raise ValueError("MatrixLayout: num_heads needs exactly one output axis, got "
                                 f"{self.output_axes}")

    # ----------------------------------------------------------------------------- checks
    def _norm(self, ndim: int, path: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        def norm(axes, name):
            out = []
            for a in axes:
                if not -ndim <= a < ndim:
                    raise ValueError(f"layout of '{path}': {name} axis {a} is out of range for a "
                                     f"{ndim}-D parameter")
                out.append(a % ndim)
            return tuple(out)

        red = norm(self.reduction_axes, "reduction")
        out = norm(self.output_axes, "output")
        if set(red) & set(out):
            raise ValueError(f"layout of '{path}': reduction axes {red} and output axes {out} "
                             f"name the same axis of a {ndim}-D parameter")
        return red, out

    def validate(self, shape: Sequence[int], path: str = "<param>") -> None:
        """Checks that this layout can read a parameter of shape ``shape``.

        Every matrix method resolves its layouts through :func:`resolve`, which calls this at
        ``init``: a bad layout fails there, before any matrix code runs.

        Args:
          shape: the parameter's shape.
          path: the parameter's path, for error messages.

        Raises:
          ValueError: naming ``path`` and ``shape``: fewer than 2 axes, an axis out of range
            or used twice, a bad ``unit_axis``/``num_heads``, or a zero-size parameter (its
            matrix view has no entries: matrix methods need at least one matrix entry; give
            such a leaf a ``None`` layout to send it to the method's fallback).
        """
        ndim = len(shape)
        if ndim < 2:
            raise ValueError(f"layout of '{path}': a matrix layout needs a parameter with at "
                             f"least 2 dimensions, got shape {tuple(shape)}")
        if math.prod(shape) == 0:
            raise ValueError(f"layout of '{path}': parameter of shape {tuple(shape)} is "
                             "zero-size, so its matrix view has no entries; matrix methods "
                             "need a non-empty matrix (give it a None layout to send it to the "
                             "fallback)")
        red, out = self._norm(ndim, path)
        if self.unit_axis is not None:
            if not -ndim <= self.unit_axis < ndim:
                raise ValueError(f"layout of '{path}': unit_axis {self.unit_axis} is out of range "
                                 f"for shape {tuple(shape)}")
            u = self.unit_axis % ndim
            if u not in red + out:
                raise ValueError(f"layout of '{path}': unit_axis {self.unit_axis} must be one of "
                                 f"the reduction axes {red} or output axes {out}")
        if self.num_heads is not None and shape[out[0]] % self.num_heads:
            raise ValueError(f"layout of '{path}': output axis of size {shape[out[0]]} is not "
                             f"divisible by num_heads={self.num_heads}")

    # ------------------------------------------------------------------------ geometry
    def batch_axes(self, ndim: int) -> tuple[int, ...]:
        red, out = self._norm(ndim, "<param>")
        return tuple(a for a in range(ndim) if a not in red + out)

    def fan_in(self, shape: Sequence[int]) -> int:
        red, _ = self._norm(len(shape), "<param>")
        return math.prod(shape[a] for a in red)

    def fan_out(self, shape: Sequence[int]) -> int:
        _, out = self._norm(len(shape), "<param>")
        n = math.prod(shape[a] for a in out)
        return n // self.num_heads if self.num_heads else n

    def matrix_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """``(batch, m, n)``: number of independent matrices and their shape."""
        batch = math.prod(shape[a] for a in self.batch_axes(len(shape)))
        if self.num_heads:
            batch *= self.num_heads
        return batch, self.fan_in(shape), self.fan_out(shape)

    def unit_side(self, ndim: int) -> int:
        """-2 if the units index rows (a reduction axis) of the matrix view, -1 if columns."""
        if self.unit_axis is None:
            raise ValueError("this layout has no unit_axis")
        red, _ = self._norm(ndim, "<param>")
        return -2 if self.unit_axis % ndim in red else -1

    # --------------------------------------------------------------------- reshaping
    def to_matrix(self, x: jax.Array) -> jax.Array:
        """Reads ``x`` as a ``(batch, m, n)`` stack of matrices (batch axes flattened in order)."""
        shape = x.shape
        red, out = self._norm(x.ndim, "<param>")
        batch = self.batch_axes(x.ndim)
        y = jnp.transpose(x, batch + red + out)
        b = math.prod(shape[a] for a in batch)
        m = math.prod(shape[a] for a in red)
        n = math.prod(shape[a] for a in out)
        if self.num_heads:
            h = self.num_heads
            y = y.reshape(b, m, h, n // h)
            y = jnp.swapaxes(y, 1, 2)  # (b, h, m, n/h)
            return y.reshape(b * h, m, n // h)
        return y.reshape(b, m, n)

    def from_matrix(self, y: jax.Array, shape: Sequence[int]) -> jax.Array:
        """Inverse of :meth:`to_matrix` for a parameter of shape ``shape``."""
        shape = tuple(shape)
        ndim = len(shape)
        red, out = self._norm(ndim, "<param>")
        batch = self.batch_axes(ndim)
        b = math.prod(shape[a] for a in batch)
        m = math.prod(shape[a] for a in red)
        n = math.prod(shape[a] for a in out)
        if self.num_heads:
            h = self.num_heads
            y = y.reshape(b, h, m, n // h)
            y = jnp.swapaxes(y, 1, 2)
        perm = batch + red + out
        y = y.reshape(tuple(shape[a] for a in perm))
        return jnp.transpose(y, _inverse_permutation(perm))


def default_layout(x: Any, path: str = "<param>") -> MatrixLayout | None:
    """The layout a matrix method uses when none is given, for the leaf ``x`` at ``path``.

    * vectors — leaves with fewer than two axes, and any leaf :mod:`optzoo.routing`'s rules
      call a ``vector`` (biases and norm scales of any shape, e.g. a linen attention bias
      ``(heads, head_dim)``): ``None``, i.e. the method's fallback;
    * 2-D leaves: ``MatrixLayout()``, a Flax ``(fan_in, fan_out)`` kernel;
    * everything else raises ``ValueError`` naming the path and the one-line fix, because
      reading it by default would silently pick *some* matrices: a leaf with more than two
      axes (a linen ``MultiHeadAttention`` kernel ``(d, heads, head_dim)``, a conv kernel,
      stacked layers or experts — which axes are the matrix?) and a 2-D leaf the routing
      rules call an ``embedding`` or ``lm_head`` (Muon-style methods are meant for hidden
      matrices).

    The fixes: ``layout=optzoo.routing.hidden_layouts`` (role-aware: embeddings, heads,
    routers and vectors to the fallback, multi-axis kernels read as their rule says),
    ``layout=optzoo.layout.MatrixLayout()`` (every >= 2-D leaf's last two axes, leading axes
    as batch axes — the previous default, now an explicit choice), or a layout tree.
    """
    from optzoo import routing  # routing imports this module: resolve the role lazily

    shape = tuple(int(s) for s in jnp.shape(x))
    try:
        role = routing.rule_for(path, shape).role
    except ValueError:
        role = None  # no rule knows this name: judged by its shape alone
    if role == "vector" or len(shape) < 2:
        return None
    fix = ("pass layout=optzoo.routing.hidden_layouts (role-aware), "
           "layout=optzoo.layout.MatrixLayout() (last two axes, leading axes as batch axes) "
           "or a layout tree (None sends a leaf to the fallback)")
    if len(shape) > 2:
        raise ValueError(f"default layout: parameter '{path}' of shape {shape} has "
                         f"{len(shape)} axes, and which of them form the matrix (stacked "
                         "layers or experts? attention heads? conv taps?) is a decision the "
                         f"default does not make; {fix}")
    if role in ("embedding", "lm_head"):
        raise ValueError(f"default layout: parameter '{path}' of shape {shape} is an "
                         f"{role.replace('_', ' ')} by its name; matrix methods are meant for "
                         f"hidden matrices, so say what it gets: {fix}")
    return MatrixLayout()


LayoutSpec = MatrixLayout | Callable[[Any], Any] | Any | None


def resolve(layout: LayoutSpec, params: Any, *, what: str = "matrix method") -> Any:
    """Returns a tree (structure of ``params``) of ``MatrixLayout | None``, validated.

    Args:
      layout: ``None`` (the :func:`default_layout` of each leaf: 2-D leaves are matrices,
        vectors go to the fallback, >2-D leaves, embeddings and heads raise), a single
        ``MatrixLayout``
        (used for every leaf with at least 2 dimensions; lower-dimensional leaves get ``None``),
        a pytree of ``MatrixLayout | None`` with the structure of ``params``, or a callable
        mapping ``params`` to such a tree.
      params: the parameters (or gradients/updates: only shapes are read).
      what: the caller's name, used in error messages.

    Trees masked by ``optax.partition``/``optax.masked`` (``optax.MaskedNode()`` in place of
    the leaves a transform does not own) are accepted: the spec — a tree or callable written
    for the full parameters — is resolved with a 0-d placeholder standing in for each masked
    leaf, and the masked positions come back as ``MaskedNode`` (whatever the spec says there).

    Raises:
      ValueError: naming the parameter path, if a layout does not fit its leaf's shape or the
        tree does not match the parameters.
    """
    flat, flat_def = jax.tree.flatten(params, is_leaf=_is_masked)
    masked = [_is_masked(x) for x in flat]
    if any(masked):
        filled = flat_def.unflatten([np.zeros((), np.float32) if m else x
                                     for x, m in zip(flat, masked, strict=True)])
        spec = layout(filled) if callable(layout) and not isinstance(layout, MatrixLayout) else (
            layout)
        if spec is not None and not isinstance(spec, MatrixLayout):
            try:  # positions the caller does not own: drop whatever the spec says there
                spec_flat = flat_def.flatten_up_to(spec)
            except (ValueError, TypeError) as e:
                raise ValueError(f"{what}: the layout tree does not match the parameter "
                                 f"tree: {e}") from e
            spec = flat_def.unflatten([None if m else lay
                                       for lay, m in zip(spec_flat, masked, strict=True)])
        full = flat_def.flatten_up_to(resolve(spec, filled, what=what))
        return flat_def.unflatten([optax.MaskedNode() if m else lay
                                   for lay, m in zip(full, masked, strict=True)])
    if callable(layout) and not isinstance(layout, MatrixLayout):
        layout = layout(params)
    if layout is None:
        tree = jax.tree_util.tree_map_with_path(
            lambda p, x: default_layout(x, path_str(p)), params)
    elif isinstance(layout, MatrixLayout):
        tree = jax.tree.map(lambda x: layout if jnp.ndim(x) >= 2 else None, params)
    else:
        tree = layout
    is_leaf = lambda x: x is None or isinstance(x, MatrixLayout)  # noqa: E731
    params_struct = jax.tree.structure(params)
    try:
        flat = params_struct.flatten_up_to(tree)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{what}: the layout tree does not match the parameter tree: {e}") from e
    paths_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, leaf), lay in zip(paths_leaves, flat, strict=True):
        if lay is None:
            continue
        if not is_leaf(lay):
            raise ValueError(f"{what}: layout for '{path_str(path)}' must be a MatrixLayout or "
                             f"None, got {type(lay).__name__}")
        lay.validate(jnp.shape(leaf), path_str(path))
    return params_struct.unflatten(flat)


def map_matrices(
    fn: Callable[[jax.Array], jax.Array],
    tree: Any,
    layouts: Any,
    *,
    otherwise: Callable[[jax.Array, str], jax.Array] | None = None,
    group: bool = True,
    what: str = "matrix method",
    owner_computes: OwnerComputes | None = None,
) -> Any:
    """Applies a batched matrix function to the matrix view of every leaf that has a layout.

    Args:
      fn: maps a ``(batch, m, n)`` stack to an array of the same shape, treating each matrix
        independently (an orthogonalizer, a normalizer...).
      tree: arrays to transform.
      layouts: tree of ``MatrixLayout | None`` as returned by :func:`resolve`.
      otherwise: ``(leaf, path) -> leaf`` for leaves without a layout; by default such a leaf
        raises ``ValueError`` naming its path.
      group: concatenate the stacks of all leaves whose matrices have the same ``(m, n)`` and
        call ``fn`` once per shape (fewer, larger kernels; identical results because ``fn``
        treats matrices independently).
      what: the caller's name, for error messages.
      owner_computes: distribute each call of ``fn`` over devices owner-computes style (one
        :meth:`optzoo.distributed.OwnerComputes.apply` per group; see
        :mod:`optzoo.distributed`); ``None`` computes it where XLA places it.

    Returns:
      A tree like ``tree``; every leaf keeps its shape and dtype.
    """
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    lays = treedef.flatten_up_to(layouts)
    out: list[Any] = [None] * len(paths_leaves)
    mats: list[jax.Array] = []
    owners: list[int] = []
    for i, ((path, x), lay) in enumerate(zip(paths_leaves, lays, strict=True)):
        if lay is None:
            if otherwise is None:
                raise ValueError(f"{what}: parameter '{path_str(path)}' of shape "
                                 f"{jnp.shape(x)} has no matrix layout")
            out[i] = otherwise(x, path_str(path))
            continue
        mats.append(lay.to_matrix(x))
        owners.append(i)
    results = map_stacks(fn, mats, group=group, owner_computes=owner_computes, what=what)
    for i, res in zip(owners, results, strict=True):
        x = paths_leaves[i][1]
        out[i] = lays[i].from_matrix(res, jnp.shape(x)).astype(jnp.result_type(x))
    return treedef.unflatten(out)


def map_stacks(
    fn: Callable[[jax.Array], jax.Array],
    stacks: Sequence[jax.Array],
    *,
    group: bool = True,
    owner_computes: OwnerComputes | None = None,
    what: str = "matrix method",
) -> list[jax.Array]:
    """Applies ``fn`` to a list of ``(b_i, m_i, n_i)`` stacks, batching same-shape ones.

    Args:
      fn: batched matrix function ``(b, m, n) -> (b, m, n)``, matrices independent.
      stacks: the stacks (e.g. the matrix views of several leaves).
      group: concatenate stacks with the same ``(m, n, dtype)`` and call ``fn`` once per
        group (default), or once per stack.
      owner_computes: an :class:`optzoo.distributed.OwnerComputes` distributing every call
        (one per group), or ``None``.
      what: the caller's name, for error messages.

    Returns:
      ``[fn(s) for s in stacks]`` (same shapes).

    Raises:
      TypeError: ``owner_computes`` is neither ``None`` nor an ``OwnerComputes``.
    """
    distributed.check_owner_computes(owner_computes, what)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for j, mat in enumerate(stacks):
        key = (mat.shape[1], mat.shape[2], mat.dtype) if group else (j,)
        groups.setdefault(key, []).append(j)
    out: list[Any] = [None] * len(stacks)
    for members in groups.values():
        parts = [stacks[j] for j in members]
        stack = jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        res = distributed.maybe_apply(owner_computes, fn, stack)
        start = 0
        for j in members:
            size = stacks[j].shape[0]
            out[j] = res[start:start + size]
            start += size
    return out


def _is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def _as_axes(axes: Any, name: str) -> tuple[int, ...]:
    if isinstance(axes, int):
        axes = (axes,)
    try:
        axes = tuple(int(a) for a in axes)
    except TypeError as e:
        raise TypeError(f"MatrixLayout: {name} must be an int or a sequence of ints, "
                        f"got {axes!r}") from e
    if not axes:
        raise ValueError(f"MatrixLayout: {name} must name at least one axis")
    if len(set(axes)) != len(axes):
        raise ValueError(f"MatrixLayout: {name} repeats an axis: {axes}")
    return axes


def _inverse_permutation(perm: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)
