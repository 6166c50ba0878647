"""Guarding an optimizer against non-finite gradients (and non-finite batches).

One bad batch (an overflow in bf16, a NaN from a degenerate input) must not poison the
momentum of a run that lasts days. :func:`skip_nonfinite` wraps any optax transformation and,
when *any* gradient entry is NaN or ±Inf — or any floating entry of the extra keyword
arguments passed to ``update`` (``batch=`` of :func:`optzoo.egn`, which derives its step from
the batch, not from the gradients) — either

* ``mode='skip'``: returns a zero update and leaves the inner state untouched (the step never
  happened for the optimizer; same semantics as ``optax.apply_if_finite``), or
* ``mode='zero'``: feeds an all-zero gradient to the inner transformation (its step counter
  and schedules advance, momenta decay, nothing non-finite enters the state). The extra
  arguments are passed on unchanged (they cannot be "zeroed" meaningfully); when the inner
  step on zero gradients still comes out non-finite — an inner transformation that reads a
  non-finite extra argument, e.g. EGN's NaN batch — the step is skipped as in ``'skip'``,

and counts the event in its state (``skipped`` in total, ``consecutive`` in a row) so that the
training loop can log it. ``max_consecutive=k`` has ``optax.apply_if_finite``'s
``max_consecutive_errors`` semantics exactly: the first ``k`` non-finite steps in a row are
protected, the ``(k+1)``-th and later ones are let through, so that a run that diverged for
good fails loudly instead of silently standing still (``0``: never protect, only count;
``None``: protect forever).

Non-finite policy of the optimizers themselves: optzoo's transforms do not test for NaN/Inf
(that would cost a reduction per leaf per step); a non-finite gradient propagates into the
update and state, and orthogonalizers return the affected matrix entirely NaN (see
``optzoo.linalg``). Wrap the optimizer with this guard to skip such steps instead.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo import _checks

__all__ = ["SkipNonfiniteState", "skip_nonfinite", "all_finite"]

_MODES = ("skip", "zero")


class SkipNonfiniteState(NamedTuple):
    """State of :func:`skip_nonfinite`.

    Attributes:
      inner_state: the wrapped transformation's state.
      skipped: total number of non-finite steps (int32, saturating), whether protected or
        let through.
      consecutive: number of such steps in a row up to now (int32, saturating).
      last_finite: whether the latest gradients (and extra arguments) were finite (bool).
    """

    inner_state: optax.OptState
    skipped: jax.Array
    consecutive: jax.Array
    last_finite: jax.Array


def all_finite(tree: Any) -> jax.Array:
    """True iff every entry of every leaf is finite (a scalar bool array).

    Leaves that are not numeric arrays or numbers (callables, strings, ``None``) and integer
    or bool leaves (always finite) are ignored, so the function accepts the extra keyword
    arguments of an ``update`` call as they come (``batch=(x, labels)``, ``value_fn=...``).
    """
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if _inexact(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _inexact(x: Any) -> bool:
    if isinstance(x, bool | np.bool_):
        return False
    if isinstance(x, float | complex):
        return True
    dtype = getattr(x, "dtype", None)
    if dtype is None or not isinstance(x, jax.Array | np.ndarray | np.generic):
        return False
    return bool(jnp.issubdtype(dtype, jnp.inexact))


def skip_nonfinite(
    inner: optax.GradientTransformation,
    *,
    mode: str = "skip",
    max_consecutive: int | None = None,
    check_extra_args: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` so that a step with any non-finite gradient does no harm.

    Args:
      inner: the transformation to protect (any optax transformation; extra keyword
        arguments of ``update`` are passed through).
      mode: ``'skip'`` (zero update, inner state unchanged) or ``'zero'`` (inner step on an
        all-zero gradient; skipped instead when that step is itself non-finite).
      max_consecutive: protect at most this many non-finite steps in a row, then apply
        ``inner`` to the non-finite inputs (``optax.apply_if_finite``'s
        ``max_consecutive_errors``: ``k`` protects ``k``; ``0`` protects none; ``None``:
        keep protecting forever).
      check_extra_args: also treat a step as non-finite when a floating leaf of the extra
        keyword arguments of ``update`` (e.g. EGN's ``batch``) is NaN/Inf (one reduction
        over them per step). ``False`` checks the gradients only, like
        ``optax.apply_if_finite``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`SkipNonfiniteState`.
      The state holds no buffer twice (it can be donated to a jitted step).

    Raises:
      ValueError / TypeError: unknown ``mode``; ``max_consecutive`` not an int ``>= 0`` or
        ``None``; ``inner`` not an optax transformation.

    Example:
      >>> import optax, optzoo
      >>> tx = optzoo.skip_nonfinite(optax.adam(1e-3))
    """
    what = "skip_nonfinite"
    _checks.choice(mode, "mode", what, _MODES)
    _checks.integer(max_consecutive, "max_consecutive", what, lo=0, allow_none=True)
    _checks.choice(check_extra_args, "check_extra_args", what, (True, False))
    if not (hasattr(inner, "init") and hasattr(inner, "update")):
        raise TypeError(
            f"{what}: inner must be an optax GradientTransformation, got {type(inner).__name__}"
        )
    limit = None if max_consecutive is None else int(max_consecutive)
    inner = optax.with_extra_args_support(inner)

    def init(params):
        # Three separate buffers: a shared one cannot be donated (XLA refuses to donate
        # the same buffer twice).
        return SkipNonfiniteState(
            inner.init(params), jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32), jnp.array(True)
        )

    def update(updates, state, params=None, **extra_args):
        finite = all_finite(updates)
        if check_extra_args and extra_args:
            finite = finite & all_finite(extra_args)
        consecutive = jnp.where(
            finite, jnp.zeros([], jnp.int32), optax.safe_increment(state.consecutive)
        )
        protect = ~finite
        if limit is not None:
            # optax.apply_if_finite applies the update when notfinite_count > limit.
            protect = protect & (consecutive <= limit)

        def apply(_):
            return inner.update(updates, state.inner_state, params, **extra_args)

        def guarded(_):
            zeros = jax.tree.map(jnp.zeros_like, updates)
            if mode == "skip":
                return zeros, state.inner_state
            z_updates, z_state = inner.update(zeros, state.inner_state, params, **extra_args)
            # An inner transformation that reads a non-finite extra argument (EGN's batch)
            # is not saved by a zero gradient: skip the step instead. A state that already
            # held non-finite values (e.g. a -inf diagnostic) is only judged by its updates.
            ok = all_finite(z_updates) & (all_finite(z_state) | ~all_finite(state.inner_state))
            return jax.tree.map(
                lambda a, b: jnp.where(ok, a, b), (z_updates, z_state), (zeros, state.inner_state)
            )

        new_updates, inner_state = jax.lax.cond(protect, guarded, apply, None)
        skipped = jnp.where(finite, state.skipped, optax.safe_increment(state.skipped))
        return new_updates, SkipNonfiniteState(inner_state, skipped, consecutive, finite)

    return optax.GradientTransformationExtraArgs(init, update)


#: The arguments ``optax.inject_hyperparams`` cannot trace (the wrapped transformation, the mode,
#: the consecutive-skip cap): pass ``static_args=factory.static_args``.
skip_nonfinite.static_args = ("inner", "mode", "max_consecutive")
