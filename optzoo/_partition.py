"""Private: how matrix optimizers hand their non-matrix leaves to an explicit fallback.

Every matrix alias (``muon``, ``polargrad``, ``ef_muon``, ``fismo``, the symmetric maps) is
``optax.partition``: leaves whose resolved layout is a :class:`~optzoo.layout.MatrixLayout`
go to the matrix transform, the others (vectors, scalars, leaves the layout sends away) to the
fallback — by default AdamW (``b1=0.9``, ``b2=0.95``, no weight decay: the Muon reference's
setting for non-hidden parameters; float16 leaves: moments in float32, see
:func:`float16_in_float32`), never silently to the matrix rule.

The default AdamW's learning rate follows the method's: ``FALLBACK_LR_RATIO × learning_rate``
(a schedule is scaled pointwise, an injected value under ``optax.inject_hyperparams`` is
scaled every step), i.e. 3e-4 when the matrix rate is Muon's reference 0.02 — the reference
runs every parameter group on one schedule multiplier. An explicit ``adam_learning_rate`` (a
float or its own schedule) is used as given instead.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optzoo import layout as layout_lib
from optzoo._tree import path_str


def keep_update_dtypes(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` with its updates cast back to the incoming updates' dtypes (optax's adam returns
    float32 updates for bfloat16 gradients when ``mu_dtype`` is float32)."""
    tx = optax.with_extra_args_support(tx)

    def update_fn(updates, state, params=None, **extra_args):
        new, state = tx.update(updates, state, params, **extra_args)
        return jax.tree.map(lambda u, g: u.astype(jnp.result_type(g)), new, updates), state

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def _is_float16(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.result_type(x) == jnp.float16


def _upcast_float16(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(jnp.float32) if _is_float16(x) else x, tree)


def float16_in_float32(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``tx`` run in float32 on the float16 leaves; every other leaf exactly as ``tx``.

    Adam in float16 breaks at both ends of the range: ``eps=1e-8`` rounds to 0, so a zero
    gradient gives ``0/0 = NaN`` and a small one (``|g| ~ 1e-4``, where ``(1-b2)·g²``
    underflows to 0) ``m/0 = inf``; and ``nu`` overflows once ``|g| > 256`` (``g² > 65504``). Here
    float16 gradients (and params) are upcast to float32 before ``tx`` sees them, so ``tx``
    keeps float32 state for those leaves, and their updates are cast back to float16.
    float32/bfloat16/float64 leaves are passed through untouched (bitwise identical to ``tx``).

    Args:
      tx: an elementwise transformation (Adam, AdamW...).

    Returns:
      The wrapped transformation (extra arguments are forwarded to ``tx``).
    """
    tx = optax.with_extra_args_support(tx)

    def init_fn(params):
        return tx.init(_upcast_float16(params))

    def update_fn(updates, state, params=None, **extra_args):
        new, state = tx.update(_upcast_float16(updates), state,
                               None if params is None else _upcast_float16(params), **extra_args)
        new = jax.tree.map(lambda u, g: u.astype(jnp.float16) if _is_float16(g) else u,
                           new, updates)
        return new, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


#: Default AdamW fallback rate as a multiple of the matrix method's learning rate: the Muon
#: reference's Adam rate 3e-4 at its Muon rate 0.02.
FALLBACK_LR_RATIO = 0.015


def fallback_learning_rate(adam_learning_rate: optax.ScalarOrSchedule | None,
                           learning_rate: optax.ScalarOrSchedule | None) -> Any:
    """The default fallback's learning rate: ``adam_learning_rate`` when given, else
    ``FALLBACK_LR_RATIO × learning_rate`` (pointwise for a schedule)."""
    if adam_learning_rate is not None:
        return adam_learning_rate
    if learning_rate is None:
        raise TypeError("the default fallback needs adam_learning_rate or the method's "
                        "learning_rate to follow")
    if callable(learning_rate):
        return lambda count: FALLBACK_LR_RATIO * learning_rate(count)
    return FALLBACK_LR_RATIO * learning_rate


def default_fallback(
    fallback: optax.GradientTransformation | None,
    *,
    learning_rate: optax.ScalarOrSchedule | None = None,
    adam_learning_rate: optax.ScalarOrSchedule | None = 3e-4,
    adam_b1: Any = 0.9,
    adam_b2: Any = 0.95,
    adam_eps: Any = 1e-8,
    adam_weight_decay: Any = 0.0,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    """``fallback`` (or the default AdamW), with updates kept in the gradients' dtypes.

    The default AdamW runs at :func:`fallback_learning_rate` (``adam_learning_rate`` or
    ``FALLBACK_LR_RATIO × learning_rate``) and keeps the moments of float16 leaves in float32
    (:func:`float16_in_float32`); a given ``fallback`` is used as is.
    """
    if fallback is None:
        fallback = float16_in_float32(optax.adamw(
            fallback_learning_rate(adam_learning_rate, learning_rate), b1=adam_b1,
            b2=adam_b2, eps=adam_eps, weight_decay=adam_weight_decay, mu_dtype=mu_dtype))
    return keep_update_dtypes(fallback)


def check_update_shapes(tx: optax.GradientTransformation,
                        what: str) -> optax.GradientTransformationExtraArgs:
    """``tx`` whose ``update`` first checks the updates against ``params`` (when given): the
    same tree structure and, leaf by leaf, the same shape — else a ``ValueError`` naming the
    path and both shapes, instead of a broadcasting error from deep inside the method.
    Shapes are static, so the check costs nothing under ``jit``; states are unchanged."""
    tx = optax.with_extra_args_support(tx)

    def update_fn(updates, state, params=None, **extra_args):
        if params is not None:
            u_paths, u_def = jax.tree_util.tree_flatten_with_path(updates)
            p_leaves, p_def = jax.tree.flatten(params)
            if u_def != p_def:
                raise ValueError(f"{what}: the updates' tree structure does not match the "
                                 f"parameters': {u_def} vs {p_def}")
            for (path, u), p in zip(u_paths, p_leaves, strict=True):
                if jnp.shape(u) != jnp.shape(p):
                    raise ValueError(f"{what}: the update of '{path_str(path)}' has shape "
                                     f"{jnp.shape(u)} but the parameter has shape "
                                     f"{jnp.shape(p)}")
        return tx.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def split_by_layout(
    matrix_tx: optax.GradientTransformation,
    fallback: optax.GradientTransformation,
    layout: layout_lib.LayoutSpec,
    what: str,
    *,
    matrix_label: str = "matrix",
    layouts_fn: Any = None,
) -> optax.GradientTransformation:
    """``optax.partition``: leaves with a matrix layout -> ``matrix_tx``, others -> fallback.

    Labels come from ``layout`` resolved on the parameters the partition sees (it may be a
    callable of them), or from ``layouts_fn(params)`` returning a flat list of layouts when
    the caller resolves layouts its own way.
    """

    def labels(params):
        treedef = jax.tree.structure(params)
        if layouts_fn is not None:
            lays = layouts_fn(params)
        else:
            lays = treedef.flatten_up_to(layout_lib.resolve(layout, params, what=what))
        return treedef.unflatten([matrix_label if lay is not None else "fallback"
                                  for lay in lays])

    return check_update_shapes(
        optax.partition({matrix_label: matrix_tx, "fallback": fallback}, labels), what)
