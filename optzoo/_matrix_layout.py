"""Private: :class:`MatrixLayout`, the bottom of the layout stack (no optzoo imports).

Public as :class:`optzoo.layout.MatrixLayout`; it lives here so that :mod:`optzoo.routing`
(which builds layouts) and :mod:`optzoo.layout` (whose default layout asks routing for a
leaf's role) do not import each other.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["MatrixLayout"]


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
            raise ValueError(
                f"MatrixLayout: reduction_axes {self.reduction_axes} and output_axes "
                f"{self.output_axes} overlap"
            )
        if self.num_heads is not None:
            if int(self.num_heads) < 1:
                raise ValueError(f"MatrixLayout: num_heads must be >= 1, got {self.num_heads}")
            if len(self.output_axes) != 1:
                raise ValueError(
                    f"MatrixLayout: num_heads needs exactly one output axis, got {self.output_axes}"
                )

    # ----------------------------------------------------------------------------- checks
    def _norm(self, ndim: int, path: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        def norm(axes, name):
            out = []
            for a in axes:
                if not -ndim <= a < ndim:
                    raise ValueError(
                        f"layout of '{path}': {name} axis {a} is out of range for a "
                        f"{ndim}-D parameter"
                    )
                out.append(a % ndim)
            return tuple(out)

        red = norm(self.reduction_axes, "reduction")
        out = norm(self.output_axes, "output")
        if set(red) & set(out):
            raise ValueError(
                f"layout of '{path}': reduction axes {red} and output axes {out} "
                f"name the same axis of a {ndim}-D parameter"
            )
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
            raise ValueError(
                f"layout of '{path}': a matrix layout needs a parameter with at "
                f"least 2 dimensions, got shape {tuple(shape)}"
            )
        if math.prod(shape) == 0:
            raise ValueError(
                f"layout of '{path}': parameter of shape {tuple(shape)} is "
                "zero-size, so its matrix view has no entries; matrix methods "
                "need a non-empty matrix (give it a None layout to send it to the "
                "fallback)"
            )
        red, out = self._norm(ndim, path)
        if self.unit_axis is not None:
            if not -ndim <= self.unit_axis < ndim:
                raise ValueError(
                    f"layout of '{path}': unit_axis {self.unit_axis} is out of range "
                    f"for shape {tuple(shape)}"
                )
            u = self.unit_axis % ndim
            if u not in red + out:
                raise ValueError(
                    f"layout of '{path}': unit_axis {self.unit_axis} must be one of "
                    f"the reduction axes {red} or output axes {out}"
                )
        if self.num_heads is not None and shape[out[0]] % self.num_heads:
            raise ValueError(
                f"layout of '{path}': output axis of size {shape[out[0]]} is not "
                f"divisible by num_heads={self.num_heads}"
            )

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


def _as_axes(axes: Any, name: str) -> tuple[int, ...]:
    if isinstance(axes, int):
        axes = (axes,)
    try:
        axes = tuple(int(a) for a in axes)
    except TypeError as e:
        raise TypeError(
            f"MatrixLayout: {name} must be an int or a sequence of ints, got {axes!r}"
        ) from e
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


MatrixLayout.__module__ = "optzoo.layout"
