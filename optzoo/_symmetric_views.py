"""Private: the per-leaf views of the symmetry-compatible stack (:mod:`optzoo.symmetric_stack`).

Every direction of the stack sees a leaf through a *view*, a ``(batch, rows, cols)`` stack:
units as rows for the row / spectral maps (the orientation comes from the routing rule's
``unit_axis``), attention heads and fused gate|up halves as batch slices for Muon, expert axes
as batch axes. :func:`viewed` runs a direction on the views of the updates and maps its output
back, so optimizer states hold the momentum in view shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optzoo import routing
from optzoo._symmetric_core import pair_rows, unit_layout, unpair_rows
from optzoo._tree import path_str
from optzoo.layout import MatrixLayout


class View(NamedTuple):
    """A leaf's view: ``fwd`` maps the leaf to its ``(batch, rows, cols)`` stack, ``inv`` back."""

    fwd: Callable[[jax.Array], jax.Array]
    inv: Callable[[jax.Array], jax.Array]


#: ``(path, shape) -> View``: how a direction sees each leaf.
ViewFor = Callable[[str, tuple[int, ...]], View]


def _split_to_front(shape: tuple[int, ...], axis: int, parts: int, interleaved: bool):
    """Splits ``axis`` into ``parts`` blocks and moves the block index to the front."""
    size = shape[axis] // parts
    inner = (size, parts) if interleaved else (parts, size)
    split = shape[:axis] + inner + shape[axis + 1 :]
    src = axis + 1 if interleaved else axis

    def fwd(x):
        return jnp.moveaxis(x.reshape(split), src, 0)

    def inv(y):
        return jnp.moveaxis(y, 0, src).reshape(shape)

    moved = (split[src],) + split[:src] + split[src + 1 :]
    return fwd, inv, moved


def _matrix_view(lay: MatrixLayout, shape: tuple[int, ...]) -> View:
    return View(lay.to_matrix, lambda y: lay.from_matrix(y, shape))


def _muon_view(
    rule: routing.Rule,
    lay: MatrixLayout,
    shape: tuple[int, ...],
    path: str,
    head_dim: int | None,
    split_pairs: bool = True,
    transpose: bool = False,
) -> View:
    """``(batch, fan_in, fan_out)`` blocks: heads and fused gate|up halves become batch.

    ``split_pairs=False`` keeps a fused gate|up axis whole (one joint polar factor per
    matrix); ``transpose=True`` presents each block as ``(fan_out, fan_in)`` (the polar factor
    is the transpose, only Muon's shape factor ``√max(1, cols/rows)`` changes).
    """
    ndim = len(shape)
    split = None
    if rule.head_axis is not None and head_dim is not None:
        axis = rule.head_axis % ndim
        if rule.layout is not None or axis < ndim - 2:
            raise ValueError(
                f"symmetry_compatible: head split of '{path}' needs the head axis "
                f"among the last two axes of a default layout; got head_axis "
                f"{rule.head_axis} for shape {shape}"
            )
        if shape[axis] % head_dim:
            raise ValueError(
                f"symmetry_compatible: parameter '{path}' of shape {shape}: axis "
                f"{rule.head_axis} (size {shape[axis]}) is not a multiple of "
                f"head_dim={head_dim}"
            )
        split = (axis, shape[axis] // head_dim, False)
    elif rule.gate_up_pair is not None and split_pairs:
        axis = rule.unit_axis % ndim
        split = (axis, 2, rule.gate_up_pair == "interleaved")
    if split is None:
        view = _matrix_view(lay, shape)
    else:
        fwd, inv, moved = _split_to_front(shape, *split)
        inner = _matrix_view(MatrixLayout(), moved)
        view = View(lambda x: inner.fwd(fwd(x)), lambda y: inv(inner.inv(y)))
    if not transpose:
        return view
    return View(
        lambda x: jnp.swapaxes(view.fwd(x), -1, -2), lambda y: view.inv(jnp.swapaxes(y, -1, -2))
    )


_GATE_TO_UP = {"gate_proj": "up_proj", "w1": "w3", "wi_0": "wi_1"}
_GATE_LEAF = re.compile(r"(^|/)(gate_proj|w1|wi_0)(/kernel)?$")


def gate_up_partner(path: str) -> str | None:
    """Path of the ``up`` sibling of a separate expert ``gate`` leaf (``None`` if not a gate)."""
    m = _GATE_LEAF.search(path)
    if m is None:
        return None
    return path[: m.start(2)] + _GATE_TO_UP[m.group(2)] + (m.group(3) or "")


def _unit_view(rule: routing.Rule, lay: MatrixLayout, shape: tuple[int, ...], path: str) -> View:
    """``(batch, units, features)`` stack with the units as rows (fused pairs joined)."""
    if lay.unit_axis is None:
        raise ValueError(
            f"symmetry_compatible: role {rule.role!r} of '{path}' (shape {shape}) "
            "needs a unit_axis in its routing rule for a row / spectral map"
        )
    ulay = unit_layout(lay, shape, None, path, "symmetry_compatible", rule.gate_up_pair)
    pair = rule.gate_up_pair
    return View(
        lambda x: pair_rows(ulay.to_matrix(x), pair),
        lambda y: ulay.from_matrix(unpair_rows(y, pair), shape),
    )


def unit_views(rules: tuple[routing.Rule, ...]) -> ViewFor:
    """``(path, shape) -> View`` with the units of the leaf's rule as rows."""

    def view_for(path, shape):
        rule = routing.rule_for(path, shape, rules)
        return _unit_view(rule, rule.matrix_layout(path, shape), shape, path)

    return view_for


def muon_views(
    rules: tuple[routing.Rule, ...],
    *,
    head_dim: int | None,
    experts: bool,
    experts_gate_up: str,
    expert_shape_factor: str,
) -> ViewFor:
    """``(path, shape) -> View`` of Muon's blocks: head-wise with ``head_dim``; for
    ``experts``, gate|up joint or split (``experts_gate_up``) and the blocks transposed where
    ``expert_shape_factor='reference'`` gives the released layouts' shape factors."""

    def joint(rule):
        if experts_gate_up == "auto":
            return rule.gate_up_pair == "concat"
        return experts_gate_up == "joint"

    def view_for(path, shape):
        rule = routing.rule_for(path, shape, rules)
        lay = rule.matrix_layout(path, shape)
        split_pairs, transpose = True, False
        if experts:
            split_pairs = not joint(rule)
            if expert_shape_factor == "reference":
                if rule.role == "expert_down":
                    transpose = True
                elif rule.role == "expert_gate_up":
                    # joint [gate | up] (d, 2f): Jordan's factor is the reference's
                    # (OLMoE, orientation row); split halves (d, f): the reference's
                    # gpt-oss factor √max(1, d/f), i.e. the transposed block's
                    is_joint = (
                        not split_pairs
                        if rule.gate_up_pair is not None
                        else experts_gate_up == "joint"
                    )
                    transpose = not is_joint
        return _muon_view(
            rule, lay, shape, path, head_dim, split_pairs=split_pairs, transpose=transpose
        )

    return view_for


def viewed(
    inner: optax.GradientTransformation,
    view_for: ViewFor,
    pair_for: Callable[[str], str | None] | None = None,
) -> optax.GradientTransformation:
    """Runs ``inner`` on per-leaf views of the updates and maps its output back.

    ``inner`` must be a direction (params-free) transform: it receives ``params=None``.
    ``pair_for(path)`` may name a sibling leaf whose view is concatenated to this leaf's along
    the last axis (one joint matrix, e.g. an expert's ``[gate | up]``); the inner transform
    then sees a flat dict of the (joined) views, and its output is split back.
    """

    def to_views(tree):
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
        # normalized ('/value' of an nnx.State dropped): init and update must pair alike
        paths = [routing.normalize_path(path_str(p)) for p, _ in paths_leaves]
        leaves = [x for _, x in paths_leaves]
        views = [view_for(path, tuple(jnp.shape(x))) for path, x in zip(paths, leaves, strict=True)]
        viewed = [v.fwd(x) for x, v in zip(leaves, views, strict=True)]
        pairs = {}
        if pair_for is not None:
            index = {path: i for i, path in enumerate(paths)}
            for i, path in enumerate(paths):
                j = index.get(pair_for(path) or "")
                if j is not None and j != i and viewed[i].shape == viewed[j].shape:
                    pairs[i] = j
        if not pairs:
            return treedef.unflatten(viewed), views, leaves, treedef, None
        partners = set(pairs.values())
        joined = {}
        for i, x in enumerate(viewed):
            if i in partners:
                continue
            joined[f"{i:05d}"] = (
                jnp.concatenate([x, viewed[pairs[i]]], axis=-1) if i in pairs else x
            )
        return joined, views, leaves, treedef, pairs

    def init_fn(params):
        return inner.init(to_views(params)[0])

    def update_fn(updates, state, params=None):
        del params
        viewed, views, leaves, treedef, pairs = to_views(updates)
        out, state = inner.update(viewed, state, None)
        if pairs is None:
            outs = treedef.flatten_up_to(out)
        else:
            outs = [None] * len(leaves)
            for key, y in out.items():
                i = int(key)
                if i in pairs:
                    half = y.shape[-1] // 2
                    outs[i], outs[pairs[i]] = y[..., :half], y[..., half:]
                else:
                    outs[i] = y
        back = [
            v.inv(y).astype(jnp.result_type(x)) for v, y, x in zip(views, outs, leaves, strict=True)
        ]
        return treedef.unflatten(back), state

    return optax.GradientTransformation(init_fn, update_fn)
