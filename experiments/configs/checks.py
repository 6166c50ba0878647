"""What a config value may be: field types, ranges, ``(key, value)`` pairs, and the grammar of
``ShardingConfig.rules`` partition specs.

Every check raises ``TypeError`` / ``ValueError`` naming ``<Class>.<field>``. Nothing here
imports jax, the models or the optimizers: the configs are data, checked before any of the code
that consumes them is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, Union

__all__ = [
    "MESH_AXES",
    "check_fields",
    "check_pairs",
    "check_int",
    "check_finite",
    "parse_spec",
    "check_rules",
]

#: Mesh axis names of the harness, outermost first (``experiments.sharding`` builds the mesh).
MESH_AXES = ("dp", "fsdp", "tp")


# ----------------------------------------------------------------------------- fields
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{_type_name(args[0])}, ...]"
        return "tuple[" + ", ".join(_type_name(a) for a in args) + "]"
    return getattr(tp, "__name__", str(tp))


def _conform(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against the annotation ``tp`` (ints widened to float for float
    fields, lists accepted for tuples); raises ``TypeError`` naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if (
            value in typing.get_args(tp)
            and not isinstance(value, bool)
            or (isinstance(value, bool) and any(a is value for a in typing.get_args(tp)))
        ):
            return value
        raise ValueError(f"{where}={value!r}; expected {_type_name(tp)}")
    elif origin in (Union, types.UnionType):
        errors = []
        # exact-type members first, so that 1 stays an int in int | float
        args = sorted(typing.get_args(tp), key=lambda a: 0 if a is type(value) else 1)
        for arg in args:
            try:
                return _conform(value, arg, where)
            except (TypeError, ValueError) as e:
                errors.append(e)
    elif origin is tuple:
        if isinstance(value, (tuple, list)):
            args = typing.get_args(tp)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_conform(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
            if len(args) == len(value):
                return tuple(
                    _conform(v, a, f"{where}[{i}]")
                    for i, (v, a) in enumerate(zip(value, args, strict=True))
                )
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
    else:  # pragma: no cover - only the annotations above are used
        raise TypeError(f"{where}: unsupported annotation {tp!r}")
    raise TypeError(f"{where}={value!r} has type {type(value).__name__}; expected {_type_name(tp)}")


def check_fields(obj: Any) -> None:
    """Type-checks (and canonicalizes) every field of a frozen dataclass instance."""
    hints = typing.get_type_hints(type(obj))
    owner = type(obj).__name__
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        new = _conform(value, hints[f.name], f"{owner}.{f.name}")
        if new is not value:
            object.__setattr__(obj, f.name, new)


def check_pairs(pairs: tuple, where: str) -> None:
    """``(key, value)`` pairs: unique identifier keys, finite float values."""
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"{where}: duplicate keys {dup}")
    for k, v in pairs:
        if not k.isidentifier():
            raise ValueError(f"{where}: key {k!r} is not a valid identifier")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{where}: value of {k!r} is {v}; expected a finite number")


def check_int(owner: str, name: str, value: int, minimum: int = 1) -> None:
    """``<owner>.<name>`` is an int ``>= minimum``."""
    if value < minimum:
        raise ValueError(f"{owner}.{name}={value}; expected an int >= {minimum}")


def check_finite(
    owner: str,
    name: str,
    value: float,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
) -> None:
    """``<owner>.<name>`` is finite and in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    ok = math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        lo_s = "-inf" if lo is None else lo
        rng = f"{'(' if lo_open else '['}{lo_s}, {'inf' if hi is None else hi}]"
        raise ValueError(f"{owner}.{name}={value}; expected a finite number in {rng}")


# ----------------------------------------------------------------------------- specs
def parse_spec(spec: str, where: str) -> tuple[Any, ...] | None:
    """Parses a user spec string: ``""`` -> ``None`` (replicated, any rank), else one entry per
    parameter axis: ``None``/``-`` -> ``None``, ``"fsdp"`` -> ``'fsdp'``, ``"fsdp+tp"`` ->
    ``('fsdp', 'tp')``.

    Raises:
      ValueError: naming ``where``, for an unknown axis name, an empty entry, or an axis used
        twice.
    """
    text = spec.strip()
    if not text:
        return None
    entries, used = [], []
    for raw in text.split(","):
        item = raw.strip()
        if item in ("None", "-"):
            entries.append(None)
            continue
        names = [n.strip() for n in item.split("+")]
        bad = [n for n in names if n not in MESH_AXES]
        if bad:
            raise ValueError(
                f"{where}: spec {spec!r} has entry {raw.strip()!r}; each entry must "
                f"be None, '-', or mesh axes {list(MESH_AXES)} joined by '+'"
            )
        used += names
        entries.append(names[0] if len(names) == 1 else tuple(names))
    twice = sorted({n for n in used if used.count(n) > 1})
    if twice:
        raise ValueError(f"{where}: spec {spec!r} uses mesh axis {twice} more than once")
    return tuple(entries)


def check_rules(rules: Sequence[tuple[str, str]]) -> None:
    """Validates ``ShardingConfig.rules`` (regexes compile, specs parse) without a model.

    Raises:
      ValueError: naming ``ShardingConfig.rules[i]``.
    """
    for i, (pattern, spec) in enumerate(rules):
        where = f"ShardingConfig.rules[{i}]"
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{where}: invalid regex {pattern!r}: {e}") from e
        parse_spec(spec, where)
