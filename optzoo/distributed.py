"""Owner-computes orthogonalization for sharded (FSDP) parameters and optimizer states.

Newton–Schulz, Polar Express, QDWH, SVD and the Gram polar factors need whole matrices. With
parameters and momentum sharded over devices (FSDP), the naive SPMD program gathers every
matrix on every device and orthogonalizes all of them there: ``D`` devices do the same work
``D`` times. *Owner-computes* gives each matrix one owner instead:

1. the ``(b, m, n)`` stack of same-shape matrices (one the block layer's ``map_matrices``
   group) is padded with zero matrices to a multiple of ``D`` (the product of the sizes of
   the mesh axes it is distributed over);
2. it is constrained to ``NamedSharding(mesh, P(axes, None, None))`` — every device now holds
   ``b_pad/D`` *whole* matrices; this resharding is the gather (an all-to-all from the
   parameters' FSDP sharding);
3. the batched matrix function runs on each device's own matrices (``jax.shard_map``);
4. the padding is dropped and the results flow back to the parameters' sharding (XLA inserts
   the scatter; under explicit sharding the input's sharding is restored explicitly).

The padding matrices are computed and discarded: every orthogonalizer of
:mod:`optzoo.linalg` maps ``0 ↦ 0`` (and the matrices are independent), so they cost at
most ``D − 1`` extra matrices per group and never touch a result. Per device the work is
``⌈b/D⌉`` matrices instead of ``b``; the results equal the single-device computation (to
the rounding of XLA's batch-size-dependent kernels: bitwise equal to running the same
function on each device's chunk alone).

Every optimizer that orthogonalizes (polar factor / spectral LMO) takes
``owner_computes: OwnerComputes | None = None``: :func:`optzoo.muon`, :func:`optzoo.polargrad`,
:func:`optzoo.scion` (``'spectral'`` atoms), :func:`optzoo.ef_muon` (``'spectral'``
compressor), :func:`optzoo.fismo`, the one-sided / left / hybrid maps of
:mod:`optzoo.symmetric`, :func:`optzoo.symmetry_compatible`, :func:`optzoo.lion_kappa`
(``'spectral'``) and :func:`optzoo.ringmaster` (``'spectral'``), and their ``scale_by_*``
blocks. Row / column normalizations, sign maps and centering are local along one axis of
an already-sharded matrix (at most a small all-reduce), so they do not use it.

Example::

    mesh = jax.make_mesh((8,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
    # (an Explicit mesh works too, but pads a replicated copy: an all-gather, not all-to-all)
    oc = optzoo.OwnerComputes(mesh)              # matrices distributed over all mesh axes
    tx = optzoo.muon(0.02, owner_computes=oc)     # jit the train step as usual
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from optzoo import layout as layout_lib

__all__ = ["OwnerComputes", "GroupPlan"]


class GroupPlan(NamedTuple):
    """How one ``(m, n, dtype)`` group of matrices is split among the owners.

    Attributes:
      m: rows of each matrix (fan-in).
      n: columns of each matrix (fan-out).
      dtype: the matrices' dtype (name).
      matrices: number of matrices ``b`` in the group.
      per_device: matrices each owner computes, ``⌈b/D⌉``.
      padding: zero matrices added, ``D·⌈b/D⌉ − b`` (computed and discarded).
    """

    m: int
    n: int
    dtype: str
    matrices: int
    per_device: int
    padding: int


@dataclasses.dataclass(frozen=True)
class OwnerComputes:
    """Owner-computes distribution of batched matrix functions over mesh axes.

    Hashable (closed over in jitted functions). See the module docstring for the algorithm.

    Attributes:
      mesh: the device mesh the parameters are sharded over (``jax.sharding.Mesh``; axes
        of type ``Auto`` or ``Explicit``).
      axes: the mesh axes the matrices are distributed over: a name, a tuple of names, or
        ``None`` for all mesh axes. Over mesh axes not listed, every replica group computes
        the same owners' matrices (e.g. ``axes='fsdp'`` on a ``('data', 'fsdp')`` mesh).

    Raises:
      TypeError: ``mesh`` is not a ``jax.sharding.Mesh``, or ``axes`` is not a name /
        tuple of names / ``None``.
      ValueError: ``axes`` names an axis the mesh does not have (naming it and the mesh's
        axes), repeats one, or is empty.
    """

    mesh: Mesh
    axes: str | tuple[str, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.mesh, Mesh):
            raise TypeError(
                f"OwnerComputes.mesh must be a jax.sharding.Mesh, got "
                f"{type(self.mesh).__name__} ({self.mesh!r})"
            )
        object.__setattr__(self, "axes", _normalize_axes(self.axes, self.mesh))

    # ----------------------------------------------------------------------- geometry
    @property
    def num_owners(self) -> int:
        """``D``: the number of devices the matrices are divided among."""
        return math.prod(self.mesh.shape[a] for a in self.axes)

    @property
    def partition_spec(self) -> P:
        """``P(axes, None, None)``: the owner layout of a ``(b, m, n)`` stack."""
        return P(self.axes, None, None)

    def per_device(self, batch: int) -> int:
        """Matrices each owner computes for a stack of ``batch``: ``⌈batch/D⌉``."""
        return -(-int(batch) // self.num_owners)

    def plan(self, tree: Any, layouts: Any = None) -> list[GroupPlan]:
        """Per ``(m, n, dtype)`` group of ``tree``'s matrices: count, per-device share, padding.

        Args:
          tree: parameters (arrays or ``jax.ShapeDtypeStruct``; only shapes are read).
          layouts: a layout spec for :func:`optzoo.layout.resolve` (``None``: the last two
            axes of every leaf with at least two axes).

        Returns:
          One :class:`GroupPlan` per group, in first-appearance order (the grouping of
          the block layer's ``map_matrices``).
        """
        if layouts is None:  # documented: every >= 2-D leaf's last two axes (a plan, not a map)
            layouts = layout_lib.MatrixLayout()
        resolved = layout_lib.resolve(layouts, tree, what="OwnerComputes.plan")
        leaves, treedef = jax.tree.flatten(tree)
        counts: dict[tuple[int, int, str], int] = {}
        for x, lay in zip(leaves, treedef.flatten_up_to(resolved), strict=True):
            if lay is None:
                continue
            b, m, n = lay.matrix_shape(jnp.shape(x))
            key = (m, n, jnp.dtype(x.dtype).name)
            counts[key] = counts.get(key, 0) + b
        d = self.num_owners
        return [
            GroupPlan(m, n, dt, b, self.per_device(b), d * self.per_device(b) - b)
            for (m, n, dt), b in counts.items()
        ]

    # -------------------------------------------------------------------------- apply
    def apply(self, fn: Callable[[jax.Array], jax.Array], stack: jax.Array) -> jax.Array:
        """``fn(stack)`` computed owner-computes style: each device does ``⌈b/D⌉`` matrices.

        Args:
          fn: a batched matrix function ``(k, m, n) -> (k, m, n)`` treating every matrix
            independently (an orthogonalizer, a polar factor times a per-matrix scale...). It
            runs once per device on that device's matrices (inside ``jax.shard_map``), so it
            must not reduce over the batch axis; it may close over traced scalars (learning
            rates, injected hyperparameters), which are replicated.
          stack: a ``(b, m, n)`` array, any sharding.

        Returns:
          ``fn(stack)``, shape ``(b, m, n)``; works under ``jax.jit`` (the normal case) and
          eagerly.

        Raises:
          ValueError: if ``stack`` is not 3-D.
        """
        if jnp.ndim(stack) != 3:
            raise ValueError(
                f"OwnerComputes.apply: expected a (batch, m, n) stack, got shape {jnp.shape(stack)}"
            )
        b = stack.shape[0]
        if b == 0:
            return fn(stack)
        explicit = self._explicit()
        source = _sharding_of(stack) if explicit else None
        if explicit:  # explicit mode: padding a batch-sharded stack needs it unsharded first
            stack = jax.sharding.reshard(stack, NamedSharding(self.mesh, P()))
        pad = self.num_owners * self.per_device(b) - b
        if pad:
            stack = jnp.concatenate([stack, jnp.zeros((pad,) + stack.shape[1:], stack.dtype)])
        owners = NamedSharding(self.mesh, self.partition_spec)
        if explicit:
            stack = jax.sharding.reshard(stack, owners)
        else:
            stack = jax.lax.with_sharding_constraint(stack, owners)
        # check_vma=False: the output is per-device by construction (out_specs names the
        # owner axes; other mesh axes hold identical replicas), and some linalg primitives'
        # internal loops (lax.linalg.qdwh) do not type-check under varying-manual-axes.
        out = jax.shard_map(
            fn,
            mesh=self.mesh,
            in_specs=(self.partition_spec,),
            out_specs=self.partition_spec,
            check_vma=False,
        )(stack)
        if explicit:
            out = jax.sharding.reshard(out, NamedSharding(self.mesh, P()))
        out = out[:b] if pad else out
        if (
            explicit
            and isinstance(source, NamedSharding)
            and source.mesh.shape_tuple == (self.mesh.shape_tuple)
        ):
            out = jax.sharding.reshard(out, NamedSharding(self.mesh, source.spec))
        return out

    def _explicit(self) -> bool:
        return any(t == AxisType.Explicit for t in self.mesh.axis_types)


def maybe_apply(
    owner_computes: OwnerComputes | None, fn: Callable[[jax.Array], jax.Array], stack: jax.Array
) -> jax.Array:
    """``owner_computes.apply(fn, stack)``, or ``fn(stack)`` when ``owner_computes`` is None.

    Args:
      owner_computes: an :class:`OwnerComputes` or ``None``.
      fn: batched matrix function (see :meth:`OwnerComputes.apply`).
      stack: ``(b, m, n)`` array.

    Returns:
      ``fn(stack)``, distributed when ``owner_computes`` is given.

    Raises:
      TypeError: ``owner_computes`` is neither ``None`` nor an :class:`OwnerComputes`.
    """
    if owner_computes is None:
        return fn(stack)
    check_owner_computes(owner_computes, "owner_computes")
    return owner_computes.apply(fn, stack)


def check_owner_computes(owner_computes: Any, what: str) -> None:
    """Raises TypeError naming ``what`` unless ``owner_computes`` is None or an OwnerComputes.

    Args:
      owner_computes: the value passed by the user.
      what: the caller's name (e.g. ``'scale_by_muon'``), for the error message.

    Raises:
      TypeError: for any other value.
    """
    if owner_computes is not None and not isinstance(owner_computes, OwnerComputes):
        raise TypeError(
            f"{what}: owner_computes must be an optzoo.OwnerComputes or None, got "
            f"{type(owner_computes).__name__} ({owner_computes!r})"
        )


def _normalize_axes(axes: Any, mesh: Mesh) -> tuple[str, ...]:
    names = tuple(mesh.axis_names)
    if axes is None:
        return names
    if isinstance(axes, str):
        axes = (axes,)
    if not isinstance(axes, (tuple, list)) or not all(isinstance(a, str) for a in axes):
        raise TypeError(
            f"OwnerComputes.axes must be a mesh axis name, a tuple of names or None, got {axes!r}"
        )
    axes = tuple(axes)
    if not axes:
        raise ValueError(
            f"OwnerComputes.axes must name at least one mesh axis (or be None "
            f"for all of {list(names)})"
        )
    unknown = [a for a in axes if a not in names]
    if unknown:
        raise ValueError(
            f"OwnerComputes.axes: unknown mesh axis name(s) {unknown}; the "
            f"mesh's axes are {list(names)}"
        )
    if len(set(axes)) != len(axes):
        raise ValueError(f"OwnerComputes.axes repeats an axis: {axes}")
    return axes


def _sharding_of(x: Any) -> Any:
    """The (explicit-mode) sharding of ``x``: its type's under tracing, else its own."""
    try:
        return jax.typeof(x).sharding
    except (AttributeError, TypeError):
        return getattr(x, "sharding", None)
