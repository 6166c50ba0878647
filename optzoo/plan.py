"""Per-leaf plan of an optimizer alias: which transform, which learning rate, which matrix view.

:func:`plan` answers, before a first step, what ``factory(*args, **kwargs)`` will do to each
leaf of ``params``: the transform (the method, or the fallback and its rule), the learning
rate at step 0 (``schedule`` noted when it follows a schedule) and the matrix view
``m×n`` of a matrix leaf, with its batch (stacked matrices, heads) and head count. It resolves
layouts exactly as the optimizer does (:func:`optzoo._blocks.flat_layouts` with the call's
``layout``; the symmetric maps' unit layouts; Scion's per-leaf norms; the layerwise stack's
routing plan), so the table cannot disagree with what runs.

    >>> import jax.numpy as jnp, optzoo
    >>> params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros((3,))}
    >>> print(optzoo.plan(optzoo.muon, params, 0.02))
    path  shape   transform       learning rate  matrix view
    ----  ------  --------------  -------------  -----------
    b     (3,)    fallback AdamW  0.0003         -
    w     (4, 3)  muon            0.02           4×3
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optzoo import _blocks, _symmetric_core, routing, symmetric, symmetric_stack
from optzoo import fallback as fallback_lib
from optzoo._tree import path_str
from optzoo.error_feedback import ef_muon
from optzoo.fismo import fismo
from optzoo.galore import galore
from optzoo.lion import lion, lion_kappa
from optzoo.muon import muon
from optzoo.natural_galore import natural_galore
from optzoo.polargrad import DEFAULT_FALLBACK as POLARGRAD_FALLBACK
from optzoo.polargrad import polargrad
from optzoo.scion import leaf_norms, scion
from optzoo.subspace_descent import online_subspace_descent

#: The default fallback of the Muon family (AdamW following the method's learning rate).
_METHOD_FALLBACK = fallback_lib.AdamW()

__all__ = ["Plan", "PlanRow", "plan"]


class PlanRow(NamedTuple):
    """One leaf of :func:`plan`.

    Attributes:
      path: the leaf's ``'/'``-joined key path.
      shape: its shape.
      transform: what updates it (the method's name, ``'fallback AdamW'``...).
      learning_rate: the rate at step 0 (``None`` where the transform has its own).
      schedule: whether that rate follows a schedule.
      matrix: ``(batch, m, n)`` of the matrix view, ``None`` for a leaf without one.
      heads: the layout's head count (``None``: not split into heads).
    """

    path: str
    shape: tuple[int, ...]
    transform: str
    learning_rate: float | None
    schedule: bool
    matrix: tuple[int, int, int] | None
    heads: int | None


class Plan(str):
    """The text table of :func:`plan` (a ``str``), with the rows as data in ``.rows``."""

    rows: tuple[PlanRow, ...]

    def __new__(cls, text: str, rows: Sequence[PlanRow]):
        obj = super().__new__(cls, text)
        obj.rows = tuple(rows)
        return obj


def _rate(lr: Any) -> tuple[float | None, bool]:
    if lr is None:
        return None, False
    if callable(lr):
        return float(lr(0)), True
    return float(lr), False


def _view(lay: Any, shape: tuple[int, ...]) -> tuple[tuple[int, int, int] | None, int | None]:
    if lay is None:
        return None, None
    b, m, n = (int(s) for s in lay.matrix_shape(shape))
    return (b, m, n), lay.num_heads


def _fallback(kw: dict[str, Any], default: fallback_lib.AdamW) -> tuple[str, Any]:
    """(name, learning rate) of the fallback the alias builds from its ``fallback`` argument."""
    spec = kw["fallback"] if kw["fallback"] is not None else default
    if not isinstance(spec, fallback_lib.AdamW):
        return "fallback (custom)", None
    return "fallback AdamW", fallback_lib.learning_rate_of(spec, kw["learning_rate"])


def _split(
    name: str,
    default: fallback_lib.AdamW = _METHOD_FALLBACK,
    layouts: Callable[[Any, dict[str, Any]], list[Any]] | None = None,
):
    """A matrix method with the fallback on the other leaves (:func:`_blocks.with_fallback`)."""

    def rows(params, kw):
        paths, leaves, lays, _, _ = _blocks.flat_layouts(params, kw["layout"], name, "parameter")
        if layouts is not None:
            lays = layouts(params, kw)
        fb_name, fb_lr = _fallback(kw, default)
        return [
            (p, jnp.shape(x), lay, name, kw["learning_rate"])
            if lay is not None
            else (p, jnp.shape(x), None, fb_name, fb_lr)
            for p, x, lay in zip(paths, leaves, lays, strict=True)
        ]

    return rows


def _unit_layouts(name: str):
    def layouts(params, kw):
        return _symmetric_core.unit_layouts(
            params, kw["unit_axis"], kw["layout"], name, "parameter", strict=False
        )

    return layouts


def _lowrank(name: str):
    """GaLore-style: matrix leaves projected to ``rank``, the others unprojected (one rate)."""

    def rows(params, kw):
        paths, leaves, lays, _, _ = _blocks.flat_layouts(params, kw["layout"], name, "parameter")
        lr = kw["learning_rate"]
        return [
            (
                p,
                jnp.shape(x),
                lay,
                f"{name}(rank={kw['rank']})" if lay is not None else f"{name}: Adam, unprojected",
                lr,
            )
            for p, x, lay in zip(paths, leaves, lays, strict=True)
        ]

    return rows


def _elementwise(params: Any) -> list[tuple[str, tuple[int, ...]]]:
    """``(path, shape)`` per leaf, for the elementwise methods (no layout resolved)."""
    return [(path_str(p), jnp.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(params)]


def _lion(params, kw):
    return [(p, shape, None, "lion", kw["learning_rate"]) for p, shape in _elementwise(params)]


def _lion_kappa(params, kw):
    """``kappa='spectral'``: the polar map on matrix leaves, ``vector_kappa`` on the others;
    any other ``kappa``: that map on every leaf (no layout)."""
    lr, kappa = kw["learning_rate"], kw["kappa"]
    if kappa != "spectral":
        name = f"lion_kappa({kappa if isinstance(kappa, str) else 'custom'})"
        return [(p, shape, None, name, lr) for p, shape in _elementwise(params)]
    paths, leaves, lays, _, _ = _blocks.flat_layouts(
        params, kw["layout"], "lion_kappa", "parameter"
    )
    out = []
    for p, x, lay in zip(paths, leaves, lays, strict=True):
        if lay is None and kw["vector_kappa"] is None:
            raise ValueError(
                f"lion_kappa(kappa='spectral'): parameter '{p}' has no matrix "
                "layout; pass vector_kappa"
            )
        name = "lion_kappa(spectral)" if lay is not None else f"lion_kappa({kw['vector_kappa']})"
        out.append((p, jnp.shape(x), lay, name, lr))
    return out


def _scion(params, kw):
    paths, leaves, _, _, _ = _blocks.flat_layouts(params, kw["layout"], "scion", "parameter")
    shapes = {p: jnp.shape(x) for p, x in zip(paths, leaves, strict=True)}
    return [
        (p, shapes[p], lay, f"scion({norm})", kw["learning_rate"])
        for p, norm, _, lay in leaf_norms(params, kw["norms"], kw["radius"], kw["layout"])
    ]


def _stack(params, kw, args, kwargs):
    """The layerwise stack: :func:`optzoo.symmetric_stack.symmetry_compatible_plan` routed by
    :func:`optzoo.routing.report` (learning rate: the base rate times the group's multiplier)."""
    transforms = symmetric_stack.symmetry_compatible_plan(*args, **kwargs)
    report = routing.report(params, kw["rules"], transforms)
    if report.uncovered:
        raise ValueError(f"symmetry_compatible: no rule covers {list(report.uncovered)}\n" + report)
    rules = routing.DEFAULT_RULES if kw["rules"] is None else tuple(kw["rules"])
    base, sched = _rate(kw["learning_rate"])
    out = []
    for r in report.rows:
        lay = rules[r.rule].matrix_layout(r.path, r.shape)
        lr = None if r.lr_multiplier is None else base * r.lr_multiplier
        out.append((r.path, r.shape, lay, r.transform, (lr, sched)))
    return out


#: factory -> ``rows(params, bound_arguments)``: ``[(path, shape, layout, transform, lr)]``.
_PLANNERS: dict[Callable[..., Any], Callable[[Any, dict[str, Any]], list[tuple]]] = {
    muon: _split("muon"),
    polargrad: _split("polargrad", POLARGRAD_FALLBACK),
    ef_muon: _split("ef_muon"),
    fismo: _split("fismo"),
    scion: _scion,
    lion: _lion,
    lion_kappa: _lion_kappa,
    galore: _lowrank("galore"),
    natural_galore: _lowrank("natural_galore"),
    online_subspace_descent: _lowrank("online_subspace_descent"),
    **{
        alias: _split(alias.__name__, symmetric.DEFAULT_FALLBACK, _unit_layouts(alias.__name__))
        for alias in (
            symmetric.rownorm,
            symmetric.one_sided_spectral,
            symmetric.left_spectral,
            symmetric.hybrid,
        )
    },
}


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _fmt_rate(row: PlanRow) -> str:
    if row.learning_rate is None:
        return "-"
    return f"{row.learning_rate:.4g}" + (" (schedule)" if row.schedule else "")


def _fmt_view(row: PlanRow) -> str:
    if row.matrix is None:
        return "-"
    b, m, n = row.matrix
    text = f"{m}×{n}"
    if row.heads:
        text += f", {row.heads} heads"
    if b > 1:
        text += f", batch {b}"
    return text


def plan(
    factory: Callable[..., optax.GradientTransformation], params: Any, *args: Any, **kwargs: Any
) -> Plan:
    """The per-leaf plan of ``factory(*args, **kwargs)`` on ``params``.

    Args:
      factory: one of :func:`optzoo.muon`, :func:`optzoo.polargrad`, :func:`optzoo.ef_muon`,
        :func:`optzoo.fismo`, :func:`optzoo.scion`, :func:`optzoo.lion`,
        :func:`optzoo.lion_kappa`, :func:`optzoo.galore`, :func:`optzoo.natural_galore`,
        :func:`optzoo.online_subspace_descent`, the symmetric maps (:func:`optzoo.rownorm`,
        :func:`optzoo.one_sided_spectral`, :func:`optzoo.left_spectral`,
        :func:`optzoo.hybrid`) or :func:`optzoo.symmetry_compatible`.
      params: the parameters (arrays or ``jax.ShapeDtypeStruct``).
      *args: the factory's positional arguments, as in the optimizer's construction.
      **kwargs: its keyword arguments.

    Returns:
      A :class:`Plan`: printable text, one row per leaf (path, shape, transform, learning
      rate at step 0, matrix view), whose ``.rows`` holds :class:`PlanRow` tuples.

    Raises:
      TypeError: ``factory`` has no plan, or the arguments do not fit its signature.
      ValueError: a layout that does not fit a leaf, or (``symmetry_compatible``) a leaf no
        routing rule covers.
    """
    bound = inspect.signature(factory).bind(*args, **kwargs)
    bound.apply_defaults()
    kw = dict(bound.arguments)
    if factory is symmetric_stack.symmetry_compatible:
        entries = _stack(params, kw, args, kwargs)
    elif factory in _PLANNERS:
        entries = _PLANNERS[factory](params, kw)
    else:
        known = sorted(f.__name__ for f in (*_PLANNERS, symmetric_stack.symmetry_compatible))
        raise TypeError(
            f"optzoo.plan: no plan for {getattr(factory, '__name__', factory)!r}; "
            f"expected one of {known}"
        )
    rows = []
    for path, leaf_shape, lay, name, lr in entries:
        rate, sched = lr if isinstance(lr, tuple) else _rate(lr)
        shape = tuple(int(s) for s in leaf_shape)
        matrix, heads = _view(lay, shape)
        rows.append(PlanRow(routing.normalize_path(path), shape, name, rate, sched, matrix, heads))
    header = ("path", "shape", "transform", "learning rate", "matrix view")
    table = [header] + [
        (r.path, _fmt_shape(r.shape), r.transform, _fmt_rate(r), _fmt_view(r)) for r in rows
    ]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return Plan("\n".join(lines), rows)
