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

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo import routing
from optzoo._matrix_layout import MatrixLayout
from optzoo._tree import path_str

__all__ = ["MatrixLayout", "LayoutSpec", "resolve", "default_layout"]


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
    shape = tuple(int(s) for s in jnp.shape(x))
    try:
        role = routing.rule_for(path, shape).role
    except ValueError:
        role = None  # no rule knows this name: judged by its shape alone
    if role == "vector" or len(shape) < 2:
        return None
    fix = (
        "pass layout=optzoo.routing.hidden_layouts (role-aware), "
        "layout=optzoo.layout.MatrixLayout() (last two axes, leading axes as batch axes) "
        "or a layout tree (None sends a leaf to the fallback)"
    )
    if len(shape) > 2:
        raise ValueError(
            f"default layout: parameter '{path}' of shape {shape} has "
            f"{len(shape)} axes, and which of them form the matrix (stacked "
            "layers or experts? attention heads? conv taps?) is a decision the "
            f"default does not make; {fix}"
        )
    if role in ("embedding", "lm_head"):
        raise ValueError(
            f"default layout: parameter '{path}' of shape {shape} is an "
            f"{role.replace('_', ' ')} by its name; matrix methods are meant for "
            f"hidden matrices, so say what it gets: {fix}"
        )
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
        filled = flat_def.unflatten(
            [np.zeros((), np.float32) if m else x for x, m in zip(flat, masked, strict=True)]
        )
        spec = (
            layout(filled)
            if callable(layout) and not isinstance(layout, MatrixLayout)
            else (layout)
        )
        if spec is not None and not isinstance(spec, MatrixLayout):
            try:  # positions the caller does not own: drop whatever the spec says there
                spec_flat = flat_def.flatten_up_to(spec)
            except (ValueError, TypeError) as e:
                raise ValueError(
                    f"{what}: the layout tree does not match the parameter tree: {e}"
                ) from e
            spec = flat_def.unflatten(
                [None if m else lay for lay, m in zip(spec_flat, masked, strict=True)]
            )
        full = flat_def.flatten_up_to(resolve(spec, filled, what=what))
        return flat_def.unflatten(
            [optax.MaskedNode() if m else lay for lay, m in zip(full, masked, strict=True)]
        )
    if callable(layout) and not isinstance(layout, MatrixLayout):
        layout = layout(params)
    if layout is None:
        tree = jax.tree_util.tree_map_with_path(lambda p, x: default_layout(x, path_str(p)), params)
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
            raise ValueError(
                f"{what}: layout for '{path_str(path)}' must be a MatrixLayout or "
                f"None, got {type(lay).__name__}"
            )
        lay.validate(jnp.shape(leaf), path_str(path))
    return params_struct.unflatten(flat)


def _is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)
