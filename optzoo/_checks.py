"""Private: one set of construction-time argument checks for every optimizer factory.

Every check names the factory (``what``) and the argument (``name``) and says what was
expected. Concrete values are checked: Python numbers, numpy scalars and 0-d concrete arrays.
Traced values (under ``optax.inject_hyperparams`` hyperparameters arrive as jax arrays inside
``jit``) cannot be inspected and pass through unchanged.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "choice",
    "float_dtype",
    "integer",
    "learning_rate",
    "matrix",
    "nonnegative",
    "positive",
    "real",
    "unit_interval",
]


def _concrete_scalar(value: Any) -> float | None:
    """``value`` as a Python float when it is a concrete real scalar; ``None`` when traced.

    Raises TypeError (with a short description of ``value``) for anything else: bools,
    strings, sequences, non-scalar arrays. ``None`` is handled by the callers.
    """
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, bool | np.bool_):
        raise TypeError("a bool")
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.ndarray | jax.Array) and np.ndim(value) == 0:
        dtype = np.dtype(value.dtype) if not hasattr(value.dtype, "name") else value.dtype
        if jnp.issubdtype(dtype, jnp.bool_):
            raise TypeError("a bool array")
        if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
            raise TypeError(f"an array of dtype {dtype}")
        return float(np.asarray(value))
    raise TypeError(f"{type(value).__name__} {value!r}")


def real(
    value: Any,
    name: str,
    what: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    allow_none: bool = False,
) -> Any:
    """Checks a real hyperparameter: finite, not a bool, inside ``[lo, hi]`` (ends open on
    request). Returns ``value`` unchanged (traced values pass through)."""
    if value is None:
        if allow_none:
            return value
        raise TypeError(f"{what}: {name} must be a real number, got None")
    try:
        x = _concrete_scalar(value)
    except TypeError as err:
        raise TypeError(f"{what}: {name} must be a real number, got {err}") from None
    if x is None:
        return value
    if not math.isfinite(x):
        raise ValueError(f"{what}: {name} must be finite, got {x}")
    lo_bad = lo is not None and (x <= lo if lo_open else x < lo)
    hi_bad = hi is not None and (x >= hi if hi_open else x > hi)
    if lo_bad or hi_bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ValueError(f"{what}: {name} must lie in {left}{lo_s}, {hi_s}{right}, got {x:g}")
    return value


def unit_interval(
    value: Any,
    name: str,
    what: str,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    allow_none: bool = False,
) -> Any:
    """``real`` in ``[0, 1]`` (a momentum, a decay rate, a fraction)."""
    return real(
        value, name, what, lo=0.0, hi=1.0, lo_open=lo_open, hi_open=hi_open, allow_none=allow_none
    )


def positive(value: Any, name: str, what: str, *, allow_none: bool = False) -> Any:
    """``real`` strictly above 0 (an epsilon, a damping, a scale)."""
    return real(value, name, what, lo=0.0, lo_open=True, allow_none=allow_none)


def nonnegative(value: Any, name: str, what: str, *, allow_none: bool = False) -> Any:
    """``real`` at or above 0 (a weight decay, a learning-rate peak)."""
    return real(value, name, what, lo=0.0, allow_none=allow_none)


def integer(
    value: Any,
    name: str,
    what: str,
    *,
    lo: int | None = None,
    hi: int | None = None,
    allow_none: bool = False,
) -> Any:
    """A static integer (a step count, a rank, a gap): a Python or numpy int, not a bool,
    inside ``[lo, hi]``. Under ``optax.inject_hyperparams`` such arguments must be listed in
    ``static_args``; a traced value is refused with that hint."""
    if value is None:
        if allow_none:
            return value
        raise TypeError(f"{what}: {name} must be an int, got None")
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{what}: {name} must be a static Python int; under "
            f"optax.inject_hyperparams list {name!r} in static_args"
        )
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{what}: {name} must be an int, got {type(value).__name__} {value!r}"
            f"; under optax.inject_hyperparams list {name!r} in static_args"
        )
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        lo_s = "-inf" if lo is None else str(lo)
        hi_s = "inf" if hi is None else str(hi)
        raise ValueError(f"{what}: {name} must lie in [{lo_s}, {hi_s}], got {v}")
    return value


def choice(value: Any, name: str, what: str, allowed: Sequence[Any]) -> Any:
    """``value`` is one of ``allowed`` (strings by equality, other values by identity)."""
    ok = any(
        value is a or (isinstance(a, str) and isinstance(value, str) and value == a)
        for a in allowed
    )
    if not ok:
        raise ValueError(f"{what}: unknown {name} {value!r}; expected one of {list(allowed)}")
    return value


def learning_rate(value: Any, name: str, what: str) -> Any:
    """A learning rate: a finite real ``>= 0`` or a schedule (a callable of the step count).
    ``None`` is refused (optax would turn it into a silent ascent or a crash later)."""
    if callable(value) and not isinstance(value, jax.Array | np.ndarray):
        return value
    return nonnegative(value, name, what)


def float_dtype(dtype: Any, name: str, what: str) -> Any:
    """``None`` or a floating dtype (an integer ``mu_dtype`` would truncate a momentum to 0)."""
    if dtype is None:
        return dtype
    try:
        d = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"{what}: {name} must be a floating dtype or None, got {dtype!r}") from None
    if not jnp.issubdtype(d, jnp.floating):
        raise TypeError(
            f"{what}: {name} must be a floating dtype (float32, bfloat16, ...) or None, got {d}"
        )
    return dtype


def callable_or_none(value: Any, name: str, what: str) -> Callable[..., Any] | None:
    """``None`` or a callable."""
    if value is not None and not callable(value):
        raise TypeError(f"{what}: {name} must be callable or None, got {value!r}")
    return value


def matrix(x: Any, name: str) -> jax.Array:
    """``x`` as an array of a floating dtype with at least two axes ``(..., m, n)``; else a
    ``TypeError`` / ``ValueError`` naming ``name``, the dtype and the shape."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating dtype, got {x.dtype} (shape {x.shape})")
    if x.ndim < 2:
        raise ValueError(
            f"{name}: expected an array of at least 2 dimensions (..., m, n), got shape {x.shape}"
        )
    return x
