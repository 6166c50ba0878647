"""Private pytree helpers shared by the optimizer modules: '/'-joined paths and input checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def path_str(path: tuple[Any, ...]) -> str:
    """Joins a jax key path into 'a/b/0/c' (the form routing rules and error messages use)."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(str(key.name))
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    return "/".join(parts) if parts else "<root>"


def map_with_path(fn: Callable[..., Any], tree: Any, *rest: Any, is_leaf=None) -> Any:
    """`jax.tree.map_with_path` whose function receives the '/'-joined path string."""
    return jax.tree_util.tree_map_with_path(
        lambda p, *xs: fn(path_str(p), *xs), tree, *rest, is_leaf=is_leaf
    )


def check_floating(x: Any, path: str, what: str = "leaf") -> None:
    """Raises TypeError naming `path` unless `x` has a floating dtype."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{what} '{path}' has dtype {dtype}; expected a floating dtype "
            "(float16, bfloat16, float32 or float64)"
        )
