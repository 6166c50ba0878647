"""Private: the direction blocks of :mod:`optzoo.symmetric` and the text of their arguments.

Each ``scale_by_*`` block is the EMA momentum of
:func:`optzoo._symmetric_core.scale_by_unit_map` followed by one matrix map on the unit-row
view of every leaf. :mod:`optzoo.symmetric` re-exports the blocks, documents their formulas,
orientation and choices, and derives its aliases from them. The ``Args`` sections of blocks and
aliases are generated once from :data:`ARGS` (plus a few per-block texts in
:data:`OVERRIDES`) by :func:`document`.
"""

from __future__ import annotations

import inspect
import textwrap
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optzoo import _checks, linalg
from optzoo import layout as layout_lib
from optzoo._symmetric_core import (
    GATE_UP_PAIRS,
    GRAM_METHODS,
    NU_SCOPES,
    SIDES,
    center_rows,
    gram_polar,
    nu_factor,
    peak_scale,
    resolve_numerics,
    row_norm,
    scale_by_unit_map,
    scaled,
)
from optzoo.distributed import OwnerComputes, check_owner_computes, maybe_apply

#: ``order`` of :func:`optzoo.symmetric.hybrid`.
HYBRID_ORDERS = ("row_then_polar", "polar_then_row")

# ------------------------------------------------------------------------ argument texts
#: The ``Args`` text of every argument of the blocks and aliases, by name.
ARGS: dict[str, str] = {
    "learning_rate": "``η``, a float or optax schedule.",
    "beta": "EMA rate ``β`` of the momentum.",
    "unit_axis": (
        "the parameter axis indexed by the units (required; Flax ``Embed`` ``(V, d)``: "
        "``0``; Flax ``Dense`` LM head / router / gate / up kernel ``(d, units)``: ``-1``; "
        "down kernel ``(f, d)``: ``0``). A ``MatrixLayout.unit_axis`` in ``layout`` takes "
        "precedence. Static under ``optax.inject_hyperparams``."
    ),
    "center": (
        "remove the mean unit before the map and re-center its output (shift "
        "symmetry: LM heads, routers)."
    ),
    "order": "``'row_then_polar'`` (released default) or ``'polar_then_row'``.",
    "alpha": (
        "exponent of the PolarGrad factor ``ν^α`` (``0``: the pure polar factor, = Muon's "
        "direction up to its shape factor; the released runs use 1 — re-tune the learning "
        "rate when changing it, ``ν`` grows like ``√rank``)."
    ),
    "side": "``'auto'``, ``'right'`` or ``'left'`` Gram for ``polar_method='gram'``.",
    "polar_method": (
        "``'gram'`` (Gram inverse square root under ``numerics``) or a method of "
        ":func:`optzoo.linalg.orthogonalize` (only with ``numerics='exact'``)."
    ),
    "ns_steps": "iterations for an iterative ``polar_method`` (static).",
    "ortho_dtype": "compute dtype of an iterative ``polar_method`` (e.g. ``jnp.bfloat16``).",
    "eps": "lower clamp of ``ν``.",
    "threshold": (
        "rows with norm ``<= threshold · max_j ‖m_j‖`` (per matrix) get no update; 0 "
        "disables it. Bounds the rare-token drift (see :mod:`optzoo.symmetric`)."
    ),
    "gram_eps": "damping of the Gram, relative to its mean eigenvalue.",
    "gram_method": (
        "``'eigh'`` (exact, default) or ``'newton_schulz'`` (coupled iteration, "
        "``gram_steps`` steps; matmul-only, for accelerators)."
    ),
    "gram_steps": "iterations of ``'newton_schulz'`` (static under inject_hyperparams).",
    "nu_scope": (
        "``'matrix'`` (``ν`` per matrix slice) or ``'leaf'`` (one ``ν`` summed over a "
        "stacked leaf, as the reference's batched hybrid)."
    ),
    "numerics": (
        "``'exact'`` (default: float32 eigendecomposition of the small Gram, what the "
        "equivariance tests use), ``'reference'`` (the released runs' numerics for this map: "
        "``'gram_ns'`` for the one-sided and hybrid maps, ``'pe_invsqrt'`` for the left one), "
        "``'gram_ns'`` (the reference's Gram Newton-Schulz polar factor, float16, Polar "
        "Express quintics) or ``'pe_invsqrt'`` (the reference's Polar-Express inverse square "
        "root of the Gram, float32, absolute damping ``eps``)."
    ),
    "numerics_steps": (
        "iterations of an iterative ``numerics`` (``None``: 5, the released "
        "``--inner_steps``; static under inject_hyperparams; must be >= 1)."
    ),
    "numerics_coeffs": (
        "``(numerics_steps, 3)`` quintic table or one ``(a, b, c)`` triple (``None``: the "
        "reference's Polar Express table with its 1.05 safety factor)."
    ),
    "numerics_dtype": (
        "compute dtype of an iterative ``numerics`` (``None``: float16 for ``'gram_ns'``, "
        "float32 for ``'pe_invsqrt'``, as released)."
    ),
    "nesterov": "use ``(1−β)G + βM`` instead of ``M`` (off in the reference).",
    "gate_up_pair": (
        "``None``, ``'concat'`` or ``'interleaved'``: the unit axis is a fused gate|up axis "
        "of size ``2f`` and one unit is the pair ``(gate_j, up_j)``, normalized jointly."
    ),
    "mu_dtype": "momentum dtype (``None``: the parameter's).",
    "layout": (
        "``MatrixLayout`` / tree / callable (see :func:`optzoo.layout.resolve`); ``None`` "
        "reads the last two axes as the matrix and leading axes as batch (experts, layers)."
    ),
    "owner_computes": (
        "distribute the polar factors over devices, each matrix computed by one owner "
        "(:class:`optzoo.OwnerComputes`, :mod:`optzoo.distributed`); row norms, centering "
        "and ``ν`` stay local. ``None`` (default): wherever XLA places them."
    ),
}

#: The ``Returns`` text of the blocks.
BLOCK_RETURNS = "A :class:`optax.GradientTransformation` with state :class:`SymmetricState`."

#: Per block, the arguments whose text differs from :data:`ARGS` (its alias uses them too).
OVERRIDES: dict[str, dict[str, str]] = {
    "scale_by_rownorm": {
        "eps": "added to each row norm (``1/(‖mᵢ‖ + ε)``, the reference's ``inverse_eps``)."
    },
    "scale_by_one_sided_spectral": {
        "unit_axis": (
            "the axis indexed by the units (the tall side; required, see "
            ":func:`scale_by_rownorm`); the Gram is taken over the other side."
        )
    },
    "scale_by_left_spectral": {
        "unit_axis": "the axis indexed by the experts (Flax router kernel ``(d, E)``: ``-1``).",
        "center": (
            "center before and after (default ``True``); ``False`` is the released "
            "``left_uncentered`` ablation."
        ),
    },
    "scale_by_hybrid": {
        "eps": "row-norm ``ε`` and lower clamp of ``ν``.",
        "alpha": (
            "exponent of ``ν^α`` (released runs: 1; ``ν ≥ √(#nonzero rows)`` for "
            "``row_then_polar``, so the step is large for big tables: re-tune if you change "
            "it)."
        ),
    },
}


def document(
    fn: Callable[..., Any], overrides: Mapping[str, str] | None = None, returns: str = BLOCK_RETURNS
) -> Callable[..., Any]:
    """Replaces the ``{args}`` line of ``fn``'s docstring by its ``Args`` section (one entry
    per parameter of its signature, in order: ``overrides[name]``, else :data:`ARGS`
    ``[name]``) and its ``Returns`` section (``returns``). Returns ``fn``."""

    def entry(head: str, text: str) -> str:
        return textwrap.fill(
            text,
            100,
            initial_indent=head,
            subsequent_indent="        ",
            break_long_words=False,
            break_on_hyphens=False,
        )

    if fn.__doc__:  # None under python -OO
        texts = {**ARGS, **(overrides or {})}
        args = [entry(f"      {name}: ", texts[name]) for name in inspect.signature(fn).parameters]
        section = "\n".join(["    Args:", *args, "", "    Returns:", entry("      ", returns)])
        fn.__doc__ = fn.__doc__.replace("{args}", section)
    return fn


def _documented(fn: Callable[..., Any]) -> Callable[..., Any]:
    return document(fn, OVERRIDES.get(fn.__name__))


def _check_common(what: str, beta: Any, unit_axis: Any) -> None:
    _checks.unit_interval(beta, "beta", what)
    _checks.integer(unit_axis, "unit_axis", what, allow_none=True)


def _check_gram(what: str, o: types.SimpleNamespace) -> None:
    """The checks of every Gram-based block (``o``: its arguments)."""
    check_owner_computes(o.owner_computes, what)
    _check_common(what, o.beta, o.unit_axis)
    _checks.real(o.gram_steps, "gram_steps", what, lo=1)  # traced under inject_hyperparams
    _checks.choice(o.gram_method, "gram_method", what, GRAM_METHODS)
    _checks.choice(o.nu_scope, "nu_scope", what, NU_SCOPES)


# ---------------------------------------------------------------------------- blocks
@_documented
def scale_by_rownorm(
    beta: jax.typing.ArrayLike = 0.95,
    *,
    unit_axis: int | None,
    center: bool = False,
    eps: jax.typing.ArrayLike = 1e-8,
    threshold: jax.typing.ArrayLike = 0.0,
    nesterov: bool = False,
    gate_up_pair: str | None = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
) -> optax.GradientTransformation:
    r"""Row-norm direction (RowNormM): every unit of the momentum normalized to unit ℓ₂ norm.

        With units as rows of the matrix view (``unit_axis``) and EMA momentum ``M``:

        .. math::
          M \leftarrow \beta M + (1-\beta) G, \qquad
          \Delta = \mathrm{diag}(\lVert m_i \rVert_2 + \varepsilon)^{-1} M ,

        and with ``center=True`` (routers, LM heads) ``Δ = Π⊥ rownorm_ε(Π⊥ M)``, ``Π⊥`` removing
        the mean unit: then ``f(M + 1cᵀ) = f(M)`` and ``1ᵀΔ = 0``. Each unit moves by exactly the
        learning rate per step; all-zero units (tokens absent from the batch history, unused
        experts) stay exactly zero.

        Steepest descent under the max-row norm ``‖X‖_{2,∞} = maxᵢ ‖xᵢ‖₂`` (the LMO of its unit
        ball, whose dual is ``Σᵢ ‖gᵢ‖₂``); equivariant under ``P M Qᵀ`` (``P`` a permutation of
        units, ``Q ∈ O(features)``), invariant to positive per-unit scaling ``D M`` — *not* to a
        general rotation of the units. The centered map is additionally invariant to the shift
        ``M ↦ M + 1cᵀ`` (it acts on the quotient by the shift orbit).

    {args}

        Raises:
          ValueError: naming the parameter path, for a unit axis out of range or on a batch axis,
            a leaf with fewer than two axes (use :func:`rownorm`'s fallback), an odd fused axis.
          TypeError: for a non-floating leaf (naming its path) or a non-int ``unit_axis``.

        Example:
          >>> import jax.numpy as jnp, numpy as np
          >>> from optzoo.symmetric import scale_by_rownorm
          >>> tx = scale_by_rownorm(beta=0.0, unit_axis=0)
          >>> g = jnp.array([[3.0, 4.0], [0.0, 0.0]])
          >>> u, _ = tx.update(g, tx.init(g))
          >>> print(np.round(np.asarray(u), 4))
          [[0.6 0.8]
           [0.  0. ]]

        References:
          Lau & Su, arXiv:2605.18106 (2026), RowNormM (released ``optim/rownorm.py``).
    """
    what = "scale_by_rownorm"
    _check_common(what, beta, unit_axis)
    _checks.real(threshold, "threshold", what, lo=0.0, hi=1.0, hi_open=True)
    _checks.nonnegative(eps, "eps", what)
    _checks.choice(gate_up_pair, "gate_up_pair", what, GATE_UP_PAIRS)

    def matrix_fn(x):
        if center:
            return center_rows(row_norm(center_rows(x), eps, threshold))
        return row_norm(x, eps, threshold)

    return scale_by_unit_map(
        what,
        matrix_fn,
        beta=beta,
        nesterov=nesterov,
        mu_dtype=mu_dtype,
        unit_axis=unit_axis,
        layout=layout,
        pair=gate_up_pair,
    )


def _gram_block(what: str, side: str, o: types.SimpleNamespace) -> optax.GradientTransformation:
    """The one-sided (``side='right'``) or left spectral block with arguments ``o``:
    ``Δ = ν^α polar(Y)``, ``Y = M/s`` (centered: ``Π⊥ ν^α polar(Π⊥ M/s)``)."""
    _check_gram(what, o)
    num = resolve_numerics(
        o.numerics,
        side,
        5 if o.numerics_steps is None else o.numerics_steps,
        o.numerics_coeffs,
        o.numerics_dtype,
        what,
    )

    def matrix_fn(x):
        z, s = peak_scale(x)  # Y = M/s: no Gram overflow (1e20) or subnormal trace (1e-20)
        y = center_rows(z) if o.center else z
        p = gram_polar(
            y, side, o.gram_eps, o.gram_method, o.gram_steps, o.owner_computes, num, s, o.eps
        )
        d = scaled(nu_factor(y, p, o.alpha, o.eps, o.nu_scope, s), p)
        return center_rows(d) if o.center else d

    return scale_by_unit_map(
        what,
        matrix_fn,
        beta=o.beta,
        nesterov=o.nesterov,
        mu_dtype=o.mu_dtype,
        unit_axis=o.unit_axis,
        layout=o.layout,
        group=o.nu_scope == "matrix",
    )


@_documented
def scale_by_one_sided_spectral(
    beta: jax.typing.ArrayLike = 0.95,
    *,
    unit_axis: int | None,
    center: bool = False,
    alpha: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-8,
    gram_eps: jax.typing.ArrayLike = 1e-6,
    gram_method: str = "eigh",
    gram_steps: int = 20,
    nu_scope: str = "matrix",
    numerics: str = "exact",
    numerics_steps: int | None = None,
    numerics_coeffs: Any = None,
    numerics_dtype: jax.typing.DTypeLike | None = None,
    nesterov: bool = False,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""One-sided (right) spectral direction (RightPolarGradM) for tall ``V×d`` blocks.

        With units as rows (``M ∈ R^{V×d}``, ``V ≥ d``) and ``C = MᵀM`` (``d×d``):

        .. math::
          R = (C + \epsilon_g \tfrac{\mathrm{tr} C}{d} I)^{-1/2}, \qquad
          \Delta = \nu^\alpha\, M R, \qquad \nu = \mathrm{tr}(C R) \;(= \lVert M \rVert_*) .

        Only the small ``d×d`` Gram is inverted (float32 eigh, or ``numerics``),
        so a 150k-row embedding costs ``4Vd² + O(d³)``. For full column rank ``M R = polar(M)``:
        steepest descent under the spectral norm (with ``α = 1``, PolarGrad's nuclear-norm-scaled
        step ``‖M‖_* polar(M)``), equivariant under ``U M Vᵀ`` for any orthogonal ``U, V`` — in
        floating point exactly under ``P M Qᵀ`` and to rounding under a general left ``U``.
        ``center=True`` (LM heads) uses ``Y = Π⊥M`` and re-centers ``Δ``: invariant to
        ``M + 1cᵀ`` with ``1ᵀΔ = 0``.

        Range: finite over the whole float32/bfloat16 range (the map works on ``M / max|M|``; a
        momentum decayed below the dtype's smallest normal number gives no step); with ``α = 1``
        the step's magnitude ``ν`` exceeds float32 once ``‖M‖_*`` does (~3e38).

    {args}

        Example:
          >>> import jax.numpy as jnp
          >>> from optzoo.symmetric import scale_by_one_sided_spectral
          >>> tx = scale_by_one_sided_spectral(beta=0.0, unit_axis=0, alpha=0.0)
          >>> g = jnp.array([[2.0, 0.0], [0.0, 0.5], [0.0, 0.0]])
          >>> u, _ = tx.update(g, tx.init(g))  # polar(g)
          >>> print(jnp.round(u, 3))
          [[1. 0.]
           [0. 1.]
           [0. 0.]]

        References:
          Lau & Su, arXiv:2605.18106 (2026), RightPolarGradM (``optim/rightpolargrad.py``).
          Lau, Long, Su, arXiv:2505.21799 (2025), PolarGrad (``ν = ‖M‖_*`` scaling).
    """
    return _gram_block("scale_by_one_sided_spectral", "right", types.SimpleNamespace(**locals()))


def scale_by_left_spectral(*args: Any, **kwargs: Any) -> optax.GradientTransformation:
    r"""Left-spectral direction (LeftPolarGradM) for wide router blocks ``E×d``, ``E ≪ d``.

        With units (experts) as rows and ``Y = Π⊥M`` (``Y = M`` if ``center=False``):

        .. math::
          C = Y Y^\top, \quad L = (C + \epsilon_g \tfrac{\mathrm{tr} C}{E} I)^{-1/2}, \quad
          \Delta = \Pi_\perp\, \nu^\alpha L Y, \quad \nu = \mathrm{tr}(C L) .

        ``C`` is ``E×E`` (negligible cost). Centered, ``C`` is singular along ``1``, which ``Y``
        never touches: ``L Y`` is the partial-isometry polar factor of ``Y`` (re-centered against
        rounding). Steepest descent under the spectral norm on the horizontal subspace
        ``{1ᵀΔ = 0}``; equivariant under ``P M Qᵀ`` (expert permutation, rotation of the model
        space) and invariant to the logit shift ``M + 1cᵀ``. ``center=False`` is the released
        ``left_uncentered`` ablation (no shift invariance). Range: as
        :func:`scale_by_one_sided_spectral`.

    {args}

        Example:
          >>> import jax.numpy as jnp
          >>> from optzoo.symmetric import scale_by_left_spectral
          >>> tx = scale_by_left_spectral(beta=0.0, unit_axis=-1)
          >>> g = jnp.arange(12.0).reshape(4, 3)  # Flax router kernel (d=4, E=3)
          >>> u, _ = tx.update(g, tx.init(g))
          >>> print(jnp.abs(u.sum(axis=1)).max() < 1e-5)  # 1ᵀΔ = 0 over the experts
          True

        References:
          Lau & Su, arXiv:2605.18106 (2026), LeftPolarGradM (``optim/leftpolargrad.py``).
    """
    bound = inspect.signature(scale_by_left_spectral).bind(*args, **kwargs)
    bound.apply_defaults()
    return _gram_block("scale_by_left_spectral", "left", types.SimpleNamespace(**bound.arguments))


# the left map takes the one-sided map's arguments; it is centered by default (routers)
scale_by_left_spectral.__signature__ = inspect.signature(scale_by_one_sided_spectral).replace(
    parameters=[
        p.replace(default=True) if p.name == "center" else p
        for p in inspect.signature(scale_by_one_sided_spectral).parameters.values()
    ]
)
_documented(scale_by_left_spectral)


@_documented
def scale_by_hybrid(
    beta: jax.typing.ArrayLike = 0.95,
    *,
    unit_axis: int | None,
    order: str = "row_then_polar",
    alpha: jax.typing.ArrayLike = 1.0,
    center: bool = False,
    side: str = "auto",
    polar_method: str = "gram",
    ns_steps: int | None = None,
    ortho_dtype: jax.typing.DTypeLike | None = None,
    eps: jax.typing.ArrayLike = 1e-8,
    threshold: jax.typing.ArrayLike = 0.0,
    gram_eps: jax.typing.ArrayLike = 1e-6,
    gram_method: str = "eigh",
    gram_steps: int = 20,
    nu_scope: str = "matrix",
    numerics: str = "exact",
    numerics_steps: int | None = None,
    numerics_coeffs: Any = None,
    numerics_dtype: jax.typing.DTypeLike | None = None,
    nesterov: bool = False,
    gate_up_pair: str | None = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""Hybrid row-norm / spectral direction (HybridPolarGradM), in either order.

        With units as rows and ``M̃ = Π⊥M`` if ``center`` else ``M``:

        .. math::
          \texttt{row\_then\_polar}:\; Y = \mathrm{rownorm}_\varepsilon(\tilde M),\;
          \Delta = \nu^\alpha \mathrm{polar}(Y),\; \nu = \langle Y, \mathrm{polar}(Y) \rangle;
          \qquad
          \texttt{polar\_then\_row}:\; \Delta = \mathrm{rownorm}_\varepsilon(\nu^\alpha
          \mathrm{polar}(\tilde M)),

        followed by ``Δ ← Π⊥Δ`` when centered; centered ``row_then_polar`` also re-centers ``Y``
        (``Y = Π⊥ rownorm_ε(M̃)``) before the polar factor and ``ν``, as the reference does (the
        row scaling moves the mean row off zero). In ``polar_then_row`` the scalar ``ν^α`` cancels
        in the normalization (up to ``ε``). ``polar`` inverts the smaller Gram (``side='auto'``:
        right for tall embeddings/MLP blocks, left for wide routers) or, with ``polar_method`` an
        :func:`optzoo.linalg.orthogonalize` method (``'polar_express'``, ``'svd'``, ...),
        orthogonalizes the matrix itself.

        ``row_then_polar`` is equivariant under ``P D M Qᵀ ↦ P Δ Qᵀ`` (permutation and positive
        scaling of units, rotation of features): normalizing rows first makes it invariant to
        per-unit gradient scale. ``polar_then_row`` is equivariant under ``P M Qᵀ`` but not
        invariant to ``D``. Neither is steepest descent under one norm: each is the spectral LMO
        composed with the ``‖·‖_{2,∞}`` normalization.

    {args}

        Example:
          >>> import jax.numpy as jnp
          >>> from optzoo.symmetric import scale_by_hybrid
          >>> tx = scale_by_hybrid(beta=0.0, unit_axis=0)
          >>> g = jnp.array([[10.0, 1.0], [0.0, 0.1], [2.0, 0.0]])
          >>> u, _ = tx.update(g, tx.init(g))  # rows normalized first, then polarized
          >>> v, _ = tx.update(g * jnp.array([[0.1], [50.0], [3.0]]), tx.init(g))
          >>> print(jnp.allclose(u, v, atol=1e-6))  # invariant to a positive rescaling of units
          True

        References:
          Lau & Su, arXiv:2605.18106 (2026), HybridPolarGradM (``optim/hybrid.py``).
          Lau, Long, Su, arXiv:2505.21799 (2025) (``ν^α``).
    """
    what = "scale_by_hybrid"
    _check_gram(what, types.SimpleNamespace(**locals()))
    _checks.choice(order, "order", what, HYBRID_ORDERS)
    _checks.choice(side, "side", what, SIDES)
    _checks.choice(polar_method, "polar_method", what, ("gram",) + linalg.ORTHOGONALIZERS)
    _checks.choice(gate_up_pair, "gate_up_pair", what, GATE_UP_PAIRS)
    num = resolve_numerics(
        numerics,
        "hybrid",
        5 if numerics_steps is None else numerics_steps,
        numerics_coeffs,
        numerics_dtype,
        what,
    )
    if num.method != "exact" and polar_method != "gram":
        raise ValueError(
            f"{what}: numerics={numerics!r} computes its own polar factor; it "
            f"cannot be combined with polar_method={polar_method!r} (use "
            "polar_method='gram')"
        )

    def polar(y, s=None):
        if polar_method == "gram":
            return gram_polar(
                y, side, gram_eps, gram_method, gram_steps, owner_computes, num, s, eps
            )
        return maybe_apply(
            owner_computes,
            lambda z: linalg.orthogonalize(
                z, polar_method, steps=ns_steps, dtype=ortho_dtype
            ).astype(z.dtype),
            y,
        )

    def matrix_fn(x):
        zz, s = peak_scale(x)  # work on M/s: every square and trace stays in range
        y = center_rows(zz) if center else zz
        if order == "row_then_polar":
            z = row_norm(y, jnp.asarray(eps, y.dtype) / s, threshold)  # = rownorm_eps(M)
            if center:
                # the reference re-centers after the row scaling and before the polar factor
                # (optim/hybrid.py, both classes): P and nu see the horizontal rows only
                z = center_rows(z)
            z, sz = peak_scale(z)  # rows of norm << eps are not normalized: keep z in range
            p = polar(z, sz)
            d = scaled(nu_factor(z, p, alpha, eps, nu_scope, sz), p)
        else:
            p = polar(y, s)
            d = row_norm(scaled(nu_factor(y, p, alpha, eps, nu_scope, s), p), eps, threshold)
        return center_rows(d) if center else d

    return scale_by_unit_map(
        what,
        matrix_fn,
        beta=beta,
        nesterov=nesterov,
        mu_dtype=mu_dtype,
        unit_axis=unit_axis,
        layout=layout,
        pair=gate_up_pair,
        group=nu_scope == "matrix",
    )
