"""Symmetry-compatible direction maps (Lau & Su, 2026): row-norm, one-sided and hybrid spectral.

A parameter block whose network function is unchanged under a group action ``W ↦ g·W`` should
get an update map ``f`` that commutes with it, ``f(g·G) = g·f(G)`` (for the shift symmetry of
LM heads and routers: invariance plus ``1ᵀΔ = 0``). Generic hidden matrices have the
bi-orthogonal group ``W ↦ U W Vᵀ`` (Muon, :mod:`optzoo.muon`); embeddings, LM heads, routers
and SwiGLU projections only have **permutations of their units** (tokens, vocabulary entries,
experts, intermediate neurons) times a rotation of the other side, plus a **shared shift**
``W ↦ W + 1cᵀ`` for LM heads and routers. Those smaller groups admit the maps of this module:

=====================  ================================================  =====================
map                    direction ``Δ = f(M)`` (units as rows)            group
=====================  ================================================  =====================
row-norm               ``rownorm_ε(M)``                                  ``S_units × O(d)``
centered row-norm      ``Π⊥ rownorm_ε(Π⊥ M)``                            ``… ⋉ shifts``
one-sided (right)      ``ν^α · M (MᵀM)^{-1/2}``                          ``O(m) × O(d)``
left spectral          ``Π⊥ ν^α · (YYᵀ)^{-1/2} Y``, ``Y = Π⊥M``          ``S_units × O(d) ⋉ shifts``
hybrid (row→polar)     ``ν^α · polar(rownorm_ε(M))`` (centered:          ``S_units·D × O(d)``
                       ``Π⊥ ν^α polar(Π⊥ rownorm_ε(Π⊥ M))``)
hybrid (polar→row)     ``rownorm_ε(polar(M))``                           ``S_units × O(d)``
=====================  ================================================  =====================

with ``rownorm_ε(X) = diag(‖xᵢ‖₂ + ε)⁻¹ X``, ``Π⊥ = I − 11ᵀ/m`` (subtract the mean unit),
``ν = ⟨X, polar(X)⟩ = ‖X‖_*`` of the matrix that was polarized (clamped below by ``eps``) and
``M`` the EMA momentum ``M ← βM + (1 − β)G`` (no Nesterov and no bias correction by default, as
in the reference code). Every ``scale_by_*`` block changes only the direction; the aliases
(:func:`rownorm`, :func:`one_sided_spectral`, :func:`left_spectral`, :func:`hybrid`) add
decoupled weight decay and the learning rate: ``W ← W − η(Δ + λW)``, the reference's
"decay before the step" ``W ← (1 − ηλ)W − ηΔ``.

**Orientation.** Formulas are written with units as rows (PyTorch ``(out, in)`` layout). Flax
stores ``Dense`` kernels as ``(fan_in, fan_out)``, so units are *columns* for an LM head
``(d, V)``, a router ``(d, E)`` and SwiGLU gate/up ``(d, f)``, and rows for an ``Embed`` table
``(V, d)`` and the down projection ``(f, d)``. Every map therefore takes an explicit
``unit_axis`` (``0``/``-2`` or ``1``/``-1`` of the matrix view); nothing assumes rows. Leading
axes (scanned layers, expert stacks ``[E, d, f]``) are batch axes: each slice is one matrix.
``gate_up_pair='concat'|'interleaved'`` reads a fused gate|up tensor so that one unit is the
pair ``(gate_j, up_j)``, normalized jointly (same permutation on both halves).

**Choices where the sources are silent or disagree** (ALGORITHMS.md §1, §12 item 1; the paper
text was not available, rules follow the authors' released code at its HEAD a773b3f,
2026-05-29; the parity suite is ``tests/test_symmetric_reference.py``):

* ``ν`` is ``⟨Y, P⟩ = tr(C R)`` (``= ‖Y‖_*`` for the exact polar factor), as the reference's
  right / left maps (``torch.trace(C @ R)``) and its hybrid / Gram-NS maps (sum of
  ``Y ⊙ P``) compute it. (Its first commit summed all entries of ``C R``; HEAD takes the
  trace.)
* ``ν`` is taken per matrix slice by default (``nu_scope='matrix'``: per expert, per scanned
  layer); the reference's hybrid sums it over a whole stacked expert tensor
  (``nu_scope='leaf'``).
* ``numerics``: ``'exact'`` (default of these factories) inverts the small Gram by float32
  ``eigh`` with a damping ``gram_eps`` *relative to the mean eigenvalue*, so the maps are
  exactly invariant to gradient scale (``α = 0``) and rank-deficient blocks (centered routers,
  embeddings with unseen tokens) stay finite; it is what the equivariance tests use.
  ``'reference'`` reproduces the released runs: the hybrid and right maps through Gram
  Newton-Schulz (5 Polar Express steps, float16, ``ns_epsilon = 1e-7``), the left map through
  the 5-step Polar-Express inverse square root (float32, absolute damping ``eps·I``); the
  symmetry-compatible stack's released presets default to it (their learning rates were
  tuned there). The iterations are not exactly equivariant (float16 rounding, absolute
  epsilons) and their output differs from the exact polar factor by 10-60 % on
  ill-conditioned momenta (small singular values are not lifted to 1).
* Centered maps re-center their output (``1ᵀΔ = 0`` exactly, also after the nonlinear step),
  as the reference does at HEAD (``RowNormM``, ``HybridPolarGradM``, ``LeftPolarGradM``,
  ``RightPolarGradM`` with ``center_rows=True``); the centered hybrid ``row_then_polar`` also
  re-centers the row-normalized matrix *before* the polar factor (``Π⊥ ν^α polar(Π⊥
  rownorm(Π⊥ M))``), as the reference's both hybrid classes do.
* Numerics over the whole float32/bfloat16 range: every map works on ``M / max|M|`` (per
  matrix; row norms per row), so no square overflows (1e30) or underflows (1e-30), and a
  matrix whose peak is below the dtype's smallest normal number (a momentum decayed into the
  subnormal range after its gradient stopped) counts as zero instead of being divided by.
  With ``α = 1`` the update's magnitude ``ν ≈ ‖M‖_*`` itself exceeds float32 beyond
  ``|M| ~ 3e38/(√rank·…)``; the direction is scale-free.
* Rare-token drift (ALGORITHMS.md §1.7): a row seen once keeps a momentum ``β^k g`` whose
  direction never changes, and row normalization moves it by about ``η`` per step until
  ``β^k‖(1−β)g‖`` falls below ``eps``: the total drift of such a row is at most
  ``η (k* + 1/(1−β))``, ``k* = log(eps/‖(1−β)g‖)/log β``. ``threshold > 0`` additionally
  zeroes rows whose norm is below ``threshold`` times the largest row norm of their matrix.

References:
  T. T.-K. Lau, W. Su, *Symmetry-Compatible Principle for Optimizer Design: Embeddings, LM
  Heads, SwiGLU MLPs, and MoE Routers*, arXiv:2605.18106 (2026) (equation numbers not
  verified; update rules from the released code, github.com/timlautk/equivariant_optimizers,
  ``optim/rownorm.py``, ``rightpolargrad.py``, ``leftpolargrad.py``, ``hybrid.py``).
  T. T.-K. Lau, Q. Long, W. Su, *PolarGrad*, arXiv:2505.21799 (2025) (the ``ν^α`` factor).
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optzoo import _checks, _partition, linalg
from optzoo import layout as layout_lib
from optzoo._symmetric_core import (
    GATE_UP_PAIRS,
    GRAM_METHODS,
    NU_SCOPES,
    NUMERICS,
    SIDES,
    SymmetricState,
    center_rows,
    check_beta,
    check_choice,
    check_unit_axis,
    gram_polar,
    is_zero,
    nu_factor,
    peak_scale,
    resolve_numerics,
    row_norm,
    scale_by_unit_map,
    scaled,
    unit_layouts,
)
from optzoo.distributed import OwnerComputes, check_owner_computes, maybe_apply

__all__ = [
    "SymmetricState",
    "HYBRID_ORDERS",
    "GATE_UP_PAIRS",
    "NUMERICS",
    "scale_by_rownorm",
    "scale_by_one_sided_spectral",
    "scale_by_left_spectral",
    "scale_by_hybrid",
    "rownorm",
    "one_sided_spectral",
    "left_spectral",
    "hybrid",
]

#: ``order`` of :func:`hybrid`.
HYBRID_ORDERS = ("row_then_polar", "polar_then_row")


# ---------------------------------------------------------------------------- blocks
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

    Args:
      beta: EMA rate ``β`` of the momentum.
      unit_axis: the parameter axis indexed by the units (required; Flax ``Embed`` ``(V, d)``:
        ``0``; Flax ``Dense`` LM head / router / gate / up kernel ``(d, units)``: ``-1``; down
        kernel ``(f, d)``: ``0``). A ``MatrixLayout.unit_axis`` in ``layout`` takes precedence.
        Static under ``optax.inject_hyperparams``.
      center: project out the mean unit before and after normalizing (shift symmetry).
      eps: added to each row norm (``1/(‖mᵢ‖ + ε)``, the reference's ``inverse_eps``).
      threshold: rows with norm ``<= threshold · max_j ‖m_j‖`` (per matrix) get no update;
        0 disables it. Bounds the rare-token drift (module docstring).
      nesterov: use ``(1−β)G + βM`` instead of ``M`` (off in the reference).
      gate_up_pair: ``None``, ``'concat'`` or ``'interleaved'``: the unit axis is a fused
        gate|up axis of size ``2f`` and one unit is the pair ``(gate_j, up_j)``.
      mu_dtype: momentum dtype (``None``: the parameter's).
      layout: ``MatrixLayout`` / tree / callable (see :func:`optzoo.layout.resolve`); ``None``
        reads the last two axes as the matrix and leading axes as batch (experts, layers).

    Returns:
      A :class:`optax.GradientTransformation` with state :class:`SymmetricState`.

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
    check_beta(beta, what)
    _checks.real(threshold, "threshold", what, lo=0.0, hi=1.0, hi_open=True)
    _checks.nonnegative(eps, "eps", what)
    check_unit_axis(unit_axis, what)
    check_choice(gate_up_pair, "gate_up_pair", GATE_UP_PAIRS, what)

    def matrix_fn(x):
        if center:
            return center_rows(row_norm(center_rows(x), eps, threshold))
        return row_norm(x, eps, threshold)

    return scale_by_unit_map(what, matrix_fn, beta=beta, nesterov=nesterov, mu_dtype=mu_dtype,
                              unit_axis=unit_axis, layout=layout, pair=gate_up_pair)


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

    Args:
      beta: EMA rate of the momentum.
      unit_axis: the axis indexed by the units (the tall side; required, see
        :func:`scale_by_rownorm`); the Gram is taken over the other side.
      center: remove the mean unit before, and re-center after (shift symmetry).
      alpha: exponent of the PolarGrad factor ``ν^α`` (``0``: the pure polar factor, = Muon's
        direction up to its shape factor; the released runs use 1 — re-tune the learning rate
        when changing it, ``ν`` grows like ``√rank``).
      eps: lower clamp of ``ν``.
      gram_eps: damping of the Gram, relative to its mean eigenvalue.
      gram_method: ``'eigh'`` (exact, default) or ``'newton_schulz'`` (coupled iteration,
        ``gram_steps`` steps; matmul-only, for accelerators).
      gram_steps: iterations of ``'newton_schulz'`` (static under inject_hyperparams).
      nu_scope: ``'matrix'`` (``ν`` per matrix slice) or ``'leaf'`` (one ``ν`` summed over a
        stacked leaf, as the reference's batched hybrid).
      numerics: ``'exact'`` (default: float32 eigendecomposition of the small Gram, what
        the equivariance tests use), ``'reference'`` (the released runs' numerics for this
        map: ``'gram_ns'``, RightPolarGradM_GramNS), ``'gram_ns'`` (the reference's Gram
        Newton-Schulz polar factor, float16, Polar Express quintics) or ``'pe_invsqrt'``
        (the reference's Polar-Express inverse square root of the Gram, float32, absolute
        damping ``eps``).
      numerics_steps: iterations of an iterative ``numerics`` (``None``: 5, the released
        ``--inner_steps``; static under inject_hyperparams; must be >= 1).
      numerics_coeffs: ``(numerics_steps, 3)`` quintic table or one ``(a, b, c)`` triple
        (``None``: the reference's Polar Express table with its 1.05 safety factor).
      numerics_dtype: compute dtype of an iterative ``numerics`` (``None``: float16 for
        ``'gram_ns'``, float32 for ``'pe_invsqrt'``, as released).
      nesterov: use ``(1−β)G + βM`` instead of ``M``.
      mu_dtype: momentum dtype (``None``: the parameter's).
      layout: matrix layout spec (see :func:`scale_by_rownorm`).
      owner_computes: distribute the polar factors over devices, each matrix computed by
        one owner (:class:`optzoo.OwnerComputes`, :mod:`optzoo.distributed`); row norms,
        centering and ``ν`` stay local. ``None`` (default): wherever XLA places them.

    Returns:
      A :class:`optax.GradientTransformation` with state :class:`SymmetricState`.

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
    what = "scale_by_one_sided_spectral"
    check_owner_computes(owner_computes, what)
    check_beta(beta, what)
    _checks.real(gram_steps, "gram_steps", what, lo=1)  # traced under inject_hyperparams
    check_unit_axis(unit_axis, what)
    check_choice(gram_method, "gram_method", GRAM_METHODS, what)
    check_choice(nu_scope, "nu_scope", NU_SCOPES, what)
    num = resolve_numerics(numerics, "right", 5 if numerics_steps is None else numerics_steps,
                           numerics_coeffs, numerics_dtype, what)

    def matrix_fn(x):
        z, s = peak_scale(x)  # Y = M/s: no Gram overflow (1e20) or subnormal trace (1e-20)
        y = center_rows(z) if center else z
        p = gram_polar(y, "right", gram_eps, gram_method, gram_steps, owner_computes, num, s,
                       eps)
        d = scaled(nu_factor(y, p, alpha, eps, nu_scope, s), p)
        return center_rows(d) if center else d

    return scale_by_unit_map(what, matrix_fn, beta=beta, nesterov=nesterov, mu_dtype=mu_dtype,
                              unit_axis=unit_axis, layout=layout, group=nu_scope == "matrix")


def scale_by_left_spectral(
    beta: jax.typing.ArrayLike = 0.95,
    *,
    unit_axis: int | None,
    center: bool = True,
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
    ``left_uncentered`` ablation (no shift invariance).

    Range: finite over the whole float32/bfloat16 range (the map works on ``M / max|M|``; a
    momentum decayed below the dtype's smallest normal number gives no step); with ``α = 1``
    the step's magnitude ``ν`` exceeds float32 once ``‖M‖_*`` does (~3e38).

    Args:
      beta: EMA rate of the momentum.
      unit_axis: the axis indexed by the experts (Flax router kernel ``(d, E)``: ``-1``).
      center: center before and after (default ``True``).
      alpha: exponent of ``ν^α`` (released runs: 1).
      eps: lower clamp of ``ν``.
      gram_eps: Gram damping relative to its mean eigenvalue.
      gram_method: ``'eigh'`` or ``'newton_schulz'``.
      gram_steps: iterations of ``'newton_schulz'``.
      nu_scope: ``'matrix'`` or ``'leaf'`` (see :func:`scale_by_one_sided_spectral`).
      numerics: ``'exact'`` (default: float32 eigendecomposition of the small Gram, what
        the equivariance tests use), ``'reference'`` (the released runs' numerics for this
        map: ``'pe_invsqrt'``, LeftPolarGradM), ``'gram_ns'`` (the reference's Gram
        Newton-Schulz polar factor, float16, Polar Express quintics) or ``'pe_invsqrt'``
        (the reference's Polar-Express inverse square root of the Gram, float32, absolute
        damping ``eps``).
      numerics_steps: iterations of an iterative ``numerics`` (``None``: 5, the released
        ``--inner_steps``; static under inject_hyperparams; must be >= 1).
      numerics_coeffs: ``(numerics_steps, 3)`` quintic table or one ``(a, b, c)`` triple
        (``None``: the reference's Polar Express table with its 1.05 safety factor).
      numerics_dtype: compute dtype of an iterative ``numerics`` (``None``: float16 for
        ``'gram_ns'``, float32 for ``'pe_invsqrt'``, as released).
      nesterov: use ``(1−β)G + βM`` instead of ``M``.
      mu_dtype: momentum dtype.
      layout: matrix layout spec.
      owner_computes: distribute the polar factors over devices, each matrix computed by
        one owner (:class:`optzoo.OwnerComputes`, :mod:`optzoo.distributed`); row norms,
        centering and ``ν`` stay local. ``None`` (default): wherever XLA places them.

    Returns:
      A :class:`optax.GradientTransformation` with state :class:`SymmetricState`.

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
    what = "scale_by_left_spectral"
    check_owner_computes(owner_computes, what)
    check_beta(beta, what)
    _checks.real(gram_steps, "gram_steps", what, lo=1)  # traced under inject_hyperparams
    check_unit_axis(unit_axis, what)
    check_choice(gram_method, "gram_method", GRAM_METHODS, what)
    check_choice(nu_scope, "nu_scope", NU_SCOPES, what)
    num = resolve_numerics(numerics, "left", 5 if numerics_steps is None else numerics_steps,
                           numerics_coeffs, numerics_dtype, what)

    def matrix_fn(x):
        z, s = peak_scale(x)  # Y = M/s: no Gram overflow (1e20) or subnormal trace (1e-20)
        y = center_rows(z) if center else z
        p = gram_polar(y, "left", gram_eps, gram_method, gram_steps, owner_computes, num, s,
                       eps)
        d = scaled(nu_factor(y, p, alpha, eps, nu_scope, s), p)
        return center_rows(d) if center else d

    return scale_by_unit_map(what, matrix_fn, beta=beta, nesterov=nesterov, mu_dtype=mu_dtype,
                              unit_axis=unit_axis, layout=layout, group=nu_scope == "matrix")


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

    Args:
      beta: EMA rate of the momentum.
      unit_axis: axis indexed by the units (required; see :func:`scale_by_rownorm`).
      order: ``'row_then_polar'`` (released default) or ``'polar_then_row'``.
      alpha: exponent of ``ν^α`` (released runs: 1; ``ν ≥ √(#nonzero rows)`` for
        ``row_then_polar``, so the step is large for big tables: re-tune if you change it).
      center: center before and after (routers, LM heads).
      side: ``'auto'``, ``'right'`` or ``'left'`` Gram for ``polar_method='gram'``.
      polar_method: ``'gram'`` (Gram inverse square root under ``numerics``) or a method of
        :func:`optzoo.linalg.orthogonalize` (only with ``numerics='exact'``).
      ns_steps: iterations for an iterative ``polar_method`` (static).
      ortho_dtype: compute dtype of an iterative ``polar_method`` (e.g. ``jnp.bfloat16``).
      eps: row-norm ``ε`` and lower clamp of ``ν``.
      threshold: relative row threshold (see :func:`scale_by_rownorm`).
      gram_eps: Gram damping relative to its mean eigenvalue.
      gram_method: ``'eigh'`` or ``'newton_schulz'``.
      gram_steps: iterations of ``'newton_schulz'``.
      nu_scope: ``'matrix'`` or ``'leaf'``.
      numerics: ``'exact'`` (default: float32 eigendecomposition of the small Gram, what
        the equivariance tests use), ``'reference'`` (the released runs' numerics for this
        map: ``'gram_ns'``, HybridPolarGradM_GramNS), ``'gram_ns'`` (the reference's Gram
        Newton-Schulz polar factor, float16, Polar Express quintics) or ``'pe_invsqrt'``
        (the reference's Polar-Express inverse square root of the Gram, float32, absolute
        damping ``eps``).
      numerics_steps: iterations of an iterative ``numerics`` (``None``: 5, the released
        ``--inner_steps``; static under inject_hyperparams; must be >= 1).
      numerics_coeffs: ``(numerics_steps, 3)`` quintic table or one ``(a, b, c)`` triple
        (``None``: the reference's Polar Express table with its 1.05 safety factor).
      numerics_dtype: compute dtype of an iterative ``numerics`` (``None``: float16 for
        ``'gram_ns'``, float32 for ``'pe_invsqrt'``, as released).
      nesterov: use ``(1−β)G + βM`` instead of ``M``.
      gate_up_pair: fused gate|up axis read as ``(gate_j, up_j)`` units (see
        :func:`scale_by_rownorm`).
      mu_dtype: momentum dtype.
      layout: matrix layout spec.
      owner_computes: distribute the polar factors over devices, each matrix computed by
        one owner (:class:`optzoo.OwnerComputes`, :mod:`optzoo.distributed`); row norms,
        centering and ``ν`` stay local. ``None`` (default): wherever XLA places them.

    Returns:
      A :class:`optax.GradientTransformation` with state :class:`SymmetricState`.

    Example:
      >>> import jax.numpy as jnp
      >>> from optzoo.symmetric import scale_by_hybrid
      >>> tx = scale_by_hybrid(beta=0.0, unit_axis=0, alpha=0.0)
      >>> g = jnp.array([[10.0, 0.0], [0.0, 0.1], [0.0, 0.0]])
      >>> u, _ = tx.update(g, tx.init(g))  # rows normalized first, then polarized
      >>> print(jnp.round(u, 3))
      [[1. 0.]
       [0. 1.]
       [0. 0.]]

    References:
      Lau & Su, arXiv:2605.18106 (2026), HybridPolarGradM (``optim/hybrid.py``).
      Lau, Long, Su, arXiv:2505.21799 (2025) (``ν^α``).
    """
    what = "scale_by_hybrid"
    check_owner_computes(owner_computes, what)
    check_beta(beta, what)
    _checks.real(gram_steps, "gram_steps", what, lo=1)  # traced under inject_hyperparams
    check_unit_axis(unit_axis, what)
    check_choice(order, "order", HYBRID_ORDERS, what)
    check_choice(side, "side", SIDES, what)
    check_choice(polar_method, "polar_method", ("gram",) + linalg.ORTHOGONALIZERS, what)
    check_choice(gram_method, "gram_method", GRAM_METHODS, what)
    check_choice(nu_scope, "nu_scope", NU_SCOPES, what)
    check_choice(gate_up_pair, "gate_up_pair", GATE_UP_PAIRS, what)
    num = resolve_numerics(numerics, "hybrid", 5 if numerics_steps is None else numerics_steps,
                           numerics_coeffs, numerics_dtype, what)
    if num.method != "exact" and polar_method != "gram":
        raise ValueError(f"{what}: numerics={numerics!r} computes its own polar factor; it "
                         f"cannot be combined with polar_method={polar_method!r} (use "
                         "polar_method='gram')")

    def polar(y, s=None):
        if polar_method == "gram":
            return gram_polar(y, side, gram_eps, gram_method, gram_steps, owner_computes, num,
                              s, eps)
        return maybe_apply(owner_computes, lambda z: linalg.orthogonalize(
            z, polar_method, steps=ns_steps, dtype=ortho_dtype).astype(z.dtype), y)

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

    return scale_by_unit_map(what, matrix_fn, beta=beta, nesterov=nesterov, mu_dtype=mu_dtype,
                              unit_axis=unit_axis, layout=layout, pair=gate_up_pair,
                              group=nu_scope == "matrix")


# ---------------------------------------------------------------------------- aliases
def _alias(
    what: str,
    block: optax.GradientTransformation,
    *,
    learning_rate: optax.ScalarOrSchedule,
    center: bool,
    weight_decay: Any,
    weight_decay_mask: Any,
    unit_axis: Any,
    layout: layout_lib.LayoutSpec,
    fallback: optax.GradientTransformation | None,
    mu_dtype: Any,
    adam_learning_rate: optax.ScalarOrSchedule,
    adam_b1: Any,
    adam_b2: Any,
    adam_eps: Any,
    adam_weight_decay: Any,
) -> optax.GradientTransformation:
    """Matrix leaves -> ``chain(block, decay, lr)``; leaves without a layout -> ``fallback``."""
    if center and not is_zero(weight_decay) and isinstance(weight_decay, numbers.Real):
        raise ValueError(f"{what}: center=True needs weight_decay=0 (decay shrinks the mean "
                         f"unit, i.e. moves along the shift symmetry), got {weight_decay}")
    fallback = _partition.default_fallback(
        fallback, adam_learning_rate=adam_learning_rate, adam_b1=adam_b1, adam_b2=adam_b2,
        adam_eps=adam_eps, adam_weight_decay=adam_weight_decay, mu_dtype=mu_dtype)

    def layouts_fn(tree):
        lays = unit_layouts(tree, unit_axis, layout, what, "parameter", strict=False)
        return jax.tree.structure(tree).flatten_up_to(lays)

    matrix_chain = optax.chain(
        block,
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    return _partition.split_by_layout(matrix_chain, fallback, layout, what,
                                      layouts_fn=layouts_fn)


_ALIAS_ARGS_DOC = """\
      weight_decay: decoupled weight decay ``λ`` of the matrix leaves (0 by default: the
        released runs use none for embeddings, heads and routers; must be 0 when centered).
      weight_decay_mask: tree of booleans or callable selecting the decayed matrix leaves.
      mu_dtype: momentum dtype (also the default fallback's).
      layout: matrix layout spec; leaves whose layout is ``None`` (by default: fewer than two
        axes) go to ``fallback``.
      fallback: transform (with its own learning rate) for leaves without a matrix layout;
        ``None`` builds ``optax.adamw(adam_learning_rate, adam_b1, adam_b2, adam_eps,
        weight_decay=adam_weight_decay)`` — 3e-4, (0.9, 0.95), 1e-8, 0 by default — whose
        learning rate is deliberately not ``learning_rate`` (row-norm and spectral learning
        rates are not Adam learning rates).
        float16 leaves: moments in float32 (the default AdamW upcasts them). Gradients beyond
        ~1.8e19 in float32/bfloat16 overflow its second moment to ``inf`` (a documented limit shared
        with ``optax.adamw``: the leaf then stops moving); the experiments harness clips gradients
        (``grad_clip=1.0``) long before.
      adam_learning_rate: learning rate of the default fallback.
      adam_b1: ``b1`` of the default fallback.
      adam_b2: ``b2`` of the default fallback.
      adam_eps: ``eps`` of the default fallback.
      adam_weight_decay: weight decay of the default fallback."""


def _alias_doc(fn):
    """Substitutes the Args shared by the aliases into ``fn``'s docstring."""
    if fn.__doc__:  # None under python -OO
        fn.__doc__ = fn.__doc__.replace("{alias_args}", _ALIAS_ARGS_DOC)
    return fn


@_alias_doc
def rownorm(
    learning_rate: optax.ScalarOrSchedule,
    *,
    unit_axis: int | None,
    beta: jax.typing.ArrayLike = 0.95,
    center: bool = False,
    eps: jax.typing.ArrayLike = 1e-8,
    threshold: jax.typing.ArrayLike = 0.0,
    nesterov: bool = False,
    gate_up_pair: str | None = None,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
    fallback: optax.GradientTransformation | None = None,
    adam_learning_rate: optax.ScalarOrSchedule = 3e-4,
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.95,
    adam_eps: jax.typing.ArrayLike = 1e-8,
    adam_weight_decay: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformation:
    r"""RowNormM: row-normalized EMA momentum per unit, decoupled weight decay.

    .. math::
      M \leftarrow \beta M + (1-\beta) G, \qquad
      W \leftarrow W - \eta\,\bigl(\mathrm{rownorm}_\varepsilon(M) + \lambda W\bigr),

    (centered: ``Π⊥ rownorm_ε(Π⊥M)``, ``λ = 0``). Steepest descent under the max-row norm
    ``‖·‖_{2,∞}``; equivariant under unit permutations times feature rotations, invariant to
    per-unit gradient scale (and to the shift ``G + 1cᵀ`` when centered). The released
    configuration for embeddings (``unit_axis=0`` on a Flax ``Embed``), untied LM heads and MoE
    routers (centered, ``unit_axis=-1`` on a Flax ``Dense`` kernel), and — with
    ``unit_axis=-1`` for gate/up, ``0`` for down — the row-/column-aware SwiGLU variants. See
    :func:`scale_by_rownorm`.

    Under ``optax.inject_hyperparams`` list ``unit_axis`` (an int) in ``static_args``.

    Args:
      learning_rate: ``η``, a float or optax schedule (released: 0.5 embeddings, 5e-3 heads,
        7.5e-4 routers on the OLMoE/Qwen3-style runs).
      unit_axis: axis indexed by the units (required).
      beta: EMA rate of the momentum.
      center: shift-symmetric (centered) variant for LM heads and routers.
      eps: row-norm ``ε``.
      threshold: relative row threshold (0: off).
      nesterov: Nesterov input instead of the momentum.
      gate_up_pair: ``'concat'``/``'interleaved'`` fused gate|up units.
{alias_args}

    Returns:
      A :class:`optax.GradientTransformation` (``optax.partition`` with labels ``'matrix'``
      and ``'fallback'``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from optzoo.symmetric import rownorm
      >>> params = {'embed': {'embedding': jnp.zeros((10, 4))}, 'norm': jnp.ones(4)}
      >>> opt = rownorm(0.5, unit_axis=0)  # the 1-D leaf goes to the AdamW fallback
      >>> state = opt.init(params)
      >>> g = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = opt.update(g, state, params)
      >>> print(jnp.round(jnp.linalg.norm(updates['embed']['embedding'], axis=1)[:2], 3))
      [0.5 0.5]

    References:
      Lau & Su, arXiv:2605.18106 (2026), RowNormM.
    """
    block = scale_by_rownorm(beta, unit_axis=unit_axis, center=center, eps=eps,
                             threshold=threshold, nesterov=nesterov, gate_up_pair=gate_up_pair,
                             mu_dtype=mu_dtype, layout=layout)
    return _alias("rownorm", block, learning_rate=learning_rate, center=center,
                  weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
                  unit_axis=unit_axis, layout=layout, fallback=fallback, mu_dtype=mu_dtype,
                  adam_learning_rate=adam_learning_rate, adam_b1=adam_b1, adam_b2=adam_b2,
                  adam_eps=adam_eps, adam_weight_decay=adam_weight_decay)


@_alias_doc
def one_sided_spectral(
    learning_rate: optax.ScalarOrSchedule,
    *,
    unit_axis: int | None,
    beta: jax.typing.ArrayLike = 0.95,
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
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
    fallback: optax.GradientTransformation | None = None,
    adam_learning_rate: optax.ScalarOrSchedule = 3e-4,
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.95,
    adam_eps: jax.typing.ArrayLike = 1e-8,
    adam_weight_decay: jax.typing.ArrayLike = 0.0,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""RightPolarGradM: ``ν^α M (MᵀM)^{-1/2}`` on the EMA momentum, decoupled weight decay.

    .. math::
      W \leftarrow W - \eta\,\bigl(\nu^\alpha M (M^\top M)^{-1/2} + \lambda W\bigr), \qquad
      \nu = \lVert M \rVert_*,

    with units (the tall side: vocabulary) as rows and the ``d×d`` Gram inverted in float32.
    Equals ``ν^α polar(M)`` for full column rank: steepest descent under the spectral norm,
    bi-orthogonally equivariant (exactly under unit permutations × feature rotations in
    floating point). ``center=True`` is the LM-head variant (shift invariant, ``1ᵀΔ = 0``,
    ``λ = 0``). See :func:`scale_by_one_sided_spectral`. Static under inject_hyperparams:
    ``unit_axis``, ``gram_steps``.

    Range: finite over the whole float32/bfloat16 range (the map works on ``M / max|M|``; a
    momentum decayed below the dtype's smallest normal number gives no step); with ``α = 1``
    the step's magnitude ``ν`` exceeds float32 once ``‖M‖_*`` does (~3e38).

    Args:
      learning_rate: ``η`` (float or schedule).
      unit_axis: axis indexed by the units (required).
      beta: EMA rate of the momentum.
      center: shift-symmetric variant for LM heads.
      alpha: PolarGrad exponent (released: 1).
      eps: lower clamp of ``ν``.
      gram_eps: Gram damping relative to its mean eigenvalue.
      gram_method: ``'eigh'`` or ``'newton_schulz'``.
      gram_steps: iterations of ``'newton_schulz'``.
      nu_scope: ``'matrix'`` or ``'leaf'``.
      numerics: ``'exact'`` (default: float32 eigendecomposition of the small Gram, what
        the equivariance tests use), ``'reference'`` (the released runs' numerics for this
        map: ``'gram_ns'``), ``'gram_ns'`` (the reference's Gram
        Newton-Schulz polar factor, float16, Polar Express quintics) or ``'pe_invsqrt'``
        (the reference's Polar-Express inverse square root of the Gram, float32, absolute
        damping ``eps``).
      numerics_steps: iterations of an iterative ``numerics`` (``None``: 5, the released
        ``--inner_steps``; static under inject_hyperparams; must be >= 1).
      numerics_coeffs: ``(numerics_steps, 3)`` quintic table or one ``(a, b, c)`` triple
        (``None``: the reference's Polar Express table with its 1.05 safety factor).
      numerics_dtype: compute dtype of an iterative ``numerics`` (``None``: float16 for
        ``'gram_ns'``, float32 for ``'pe_invsqrt'``, as released).
      nesterov: Nesterov input instead of the momentum.
{alias_args}
      owner_computes: distribute the polar factors over devices (see the ``scale_by_``
        block; :mod:`optzoo.distributed`).

    Returns:
      A :class:`optax.GradientTransformation` (``optax.partition``: ``'matrix'``,
      ``'fallback'``).

    Example:
      >>> import jax.numpy as jnp
      >>> from optzoo.symmetric import one_sided_spectral
      >>> opt = one_sided_spectral(1e-2, unit_axis=0)
      >>> params = jnp.zeros((32, 4))
      >>> updates, _ = opt.update(jnp.ones((32, 4)), opt.init(params), params)

    References:
      Lau & Su, arXiv:2605.18106 (2026), RightPolarGradM; Lau, Long, Su, arXiv:2505.21799.
    """
    block = scale_by_one_sided_spectral(
        beta, unit_axis=unit_axis, center=center, alpha=alpha, eps=eps, gram_eps=gram_eps,
        gram_method=gram_method, gram_steps=gram_steps, nu_scope=nu_scope, numerics=numerics,
        numerics_steps=numerics_steps, numerics_coeffs=numerics_coeffs,
        numerics_dtype=numerics_dtype, nesterov=nesterov, mu_dtype=mu_dtype, layout=layout,
        owner_computes=owner_computes)
    return _alias("one_sided_spectral", block, learning_rate=learning_rate, center=center,
                  weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
                  unit_axis=unit_axis, layout=layout, fallback=fallback, mu_dtype=mu_dtype,
                  adam_learning_rate=adam_learning_rate, adam_b1=adam_b1, adam_b2=adam_b2,
                  adam_eps=adam_eps, adam_weight_decay=adam_weight_decay)


@_alias_doc
def left_spectral(
    learning_rate: optax.ScalarOrSchedule,
    *,
    unit_axis: int | None,
    beta: jax.typing.ArrayLike = 0.95,
    center: bool = True,
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
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
    fallback: optax.GradientTransformation | None = None,
    adam_learning_rate: optax.ScalarOrSchedule = 3e-4,
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.95,
    adam_eps: jax.typing.ArrayLike = 1e-8,
    adam_weight_decay: jax.typing.ArrayLike = 0.0,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""LeftPolarGradM: centered left-spectral update for MoE routers.

    .. math::
      Y = \Pi_\perp M, \qquad
      W \leftarrow W - \eta\, \Pi_\perp \nu^\alpha (Y Y^\top)^{-1/2} Y, \qquad
      \nu = \lVert Y \rVert_*,

    with the experts as rows (Flax router kernel ``(d, E)``: ``unit_axis=-1``) and the
    ``E×E`` Gram inverted in float32. Spectral steepest descent on the horizontal subspace;
    equivariant under expert permutations × model-space rotations and invariant to the shared
    logit shift. ``center=False`` is the ``left_uncentered`` ablation (then ``weight_decay``
    may be nonzero). See :func:`scale_by_left_spectral`.

    Range: finite over the whole float32/bfloat16 range (the map works on ``M / max|M|``; a
    momentum decayed below the dtype's smallest normal number gives no step); with ``α = 1``
    the step's magnitude ``ν`` exceeds float32 once ``‖M‖_*`` does (~3e38).

    Args:
      learning_rate: ``η`` (released: 7.5e-4 for OLMoE/gpt-oss-style routers).
      unit_axis: axis indexed by the experts (required).
      beta: EMA rate of the momentum.
      center: centered (default) or the uncentered ablation.
      alpha: PolarGrad exponent (released: 1).
      eps: lower clamp of ``ν``.
      gram_eps: Gram damping relative to its mean eigenvalue.
      gram_method: ``'eigh'`` or ``'newton_schulz'``.
      gram_steps: iterations of ``'newton_schulz'``.
      nu_scope: ``'matrix'`` or ``'leaf'``.
      numerics: ``'exact'`` (default: float32 eigendecomposition of the small Gram, what
        the equivariance tests use), ``'reference'`` (the released runs' numerics for this
        map: ``'pe_invsqrt'``), ``'gram_ns'`` (the reference's Gram
        Newton-Schulz polar factor, float16, Polar Express quintics) or ``'pe_invsqrt'``
        (the reference's Polar-Express inverse square root of the Gram, float32, absolute
        damping ``eps``).
      numerics_steps: iterations of an iterative ``numerics`` (``None``: 5, the released
        ``--inner_steps``; static under inject_hyperparams; must be >= 1).
      numerics_coeffs: ``(numerics_steps, 3)`` quintic table or one ``(a, b, c)`` triple
        (``None``: the reference's Polar Express table with its 1.05 safety factor).
      numerics_dtype: compute dtype of an iterative ``numerics`` (``None``: float16 for
        ``'gram_ns'``, float32 for ``'pe_invsqrt'``, as released).
      nesterov: Nesterov input instead of the momentum.
{alias_args}
      owner_computes: distribute the polar factors over devices (see the ``scale_by_``
        block; :mod:`optzoo.distributed`).

    Returns:
      A :class:`optax.GradientTransformation` (``optax.partition``: ``'matrix'``,
      ``'fallback'``).

    Example:
      >>> import jax.numpy as jnp
      >>> from optzoo.symmetric import left_spectral
      >>> opt = left_spectral(7.5e-4, unit_axis=-1)
      >>> router = jnp.zeros((16, 4))  # (d_model, n_experts)
      >>> updates, _ = opt.update(jnp.ones((16, 4)) * jnp.arange(4.0), opt.init(router), router)

    References:
      Lau & Su, arXiv:2605.18106 (2026), LeftPolarGradM (``optim/leftpolargrad.py``).
    """
    block = scale_by_left_spectral(
        beta, unit_axis=unit_axis, center=center, alpha=alpha, eps=eps, gram_eps=gram_eps,
        gram_method=gram_method, gram_steps=gram_steps, nu_scope=nu_scope, numerics=numerics,
        numerics_steps=numerics_steps, numerics_coeffs=numerics_coeffs,
        numerics_dtype=numerics_dtype, nesterov=nesterov, mu_dtype=mu_dtype, layout=layout,
        owner_computes=owner_computes)
    return _alias("left_spectral", block, learning_rate=learning_rate, center=center,
                  weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
                  unit_axis=unit_axis, layout=layout, fallback=fallback, mu_dtype=mu_dtype,
                  adam_learning_rate=adam_learning_rate, adam_b1=adam_b1, adam_b2=adam_b2,
                  adam_eps=adam_eps, adam_weight_decay=adam_weight_decay)


@_alias_doc
def hybrid(
    learning_rate: optax.ScalarOrSchedule,
    *,
    unit_axis: int | None,
    beta: jax.typing.ArrayLike = 0.95,
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
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
    fallback: optax.GradientTransformation | None = None,
    adam_learning_rate: optax.ScalarOrSchedule = 3e-4,
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.95,
    adam_eps: jax.typing.ArrayLike = 1e-8,
    adam_weight_decay: jax.typing.ArrayLike = 0.0,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""HybridPolarGradM: row normalization and the (``ν^α``-scaled) polar factor combined.

    .. math::
      \texttt{row\_then\_polar}: W \leftarrow W - \eta\,\bigl(\nu^\alpha
      \mathrm{polar}(\mathrm{rownorm}_\varepsilon(M)) + \lambda W\bigr), \qquad
      \texttt{polar\_then\_row}: \Delta = \mathrm{rownorm}_\varepsilon(\mathrm{polar}(M)).

    ``row_then_polar`` (the released default) is equivariant under ``P D M Qᵀ ↦ P Δ Qᵀ``
    (unit permutations and positive per-unit scaling, feature rotations); ``polar_then_row``
    under ``P M Qᵀ``. Used for embeddings / LM heads (centered) / routers (centered, left
    Gram) and, with ``unit_axis=-1`` on gate/up and ``0`` on down kernels, for the row- and
    column-aware SwiGLU MLP (``gate_up_pair`` for fused gate|up tensors). See
    :func:`scale_by_hybrid`. Static under inject_hyperparams: ``unit_axis``, ``ns_steps``,
    ``gram_steps``.

    Args:
      learning_rate: ``η`` (released, Qwen3-style: 1.0 embedding, 1e-2 head with ``α = 1``).
      unit_axis: axis indexed by the units (required).
      beta: EMA rate of the momentum.
      order: ``'row_then_polar'`` or ``'polar_then_row'``.
      alpha: PolarGrad exponent (released: 1).
      center: shift-symmetric variant (LM heads, routers).
      side: Gram side of ``polar_method='gram'``: ``'auto'``, ``'right'``, ``'left'``.
      polar_method: ``'gram'`` or an :func:`optzoo.linalg.orthogonalize` method.
      ns_steps: iterations of an iterative ``polar_method``.
      ortho_dtype: compute dtype of an iterative ``polar_method``.
      eps: row-norm ``ε`` and ``ν`` clamp.
      threshold: relative row threshold (0: off).
      gram_eps: Gram damping relative to its mean eigenvalue.
      gram_method: ``'eigh'`` or ``'newton_schulz'``.
      gram_steps: iterations of ``'newton_schulz'``.
      nu_scope: ``'matrix'`` or ``'leaf'``.
      numerics: ``'exact'`` (default: float32 eigendecomposition of the small Gram, what
        the equivariance tests use), ``'reference'`` (the released runs' numerics for this
        map: ``'gram_ns'``), ``'gram_ns'`` (the reference's Gram
        Newton-Schulz polar factor, float16, Polar Express quintics) or ``'pe_invsqrt'``
        (the reference's Polar-Express inverse square root of the Gram, float32, absolute
        damping ``eps``).
      numerics_steps: iterations of an iterative ``numerics`` (``None``: 5, the released
        ``--inner_steps``; static under inject_hyperparams; must be >= 1).
      numerics_coeffs: ``(numerics_steps, 3)`` quintic table or one ``(a, b, c)`` triple
        (``None``: the reference's Polar Express table with its 1.05 safety factor).
      numerics_dtype: compute dtype of an iterative ``numerics`` (``None``: float16 for
        ``'gram_ns'``, float32 for ``'pe_invsqrt'``, as released).
      nesterov: Nesterov input instead of the momentum.
      gate_up_pair: ``'concat'``/``'interleaved'`` fused gate|up units.
{alias_args}
      owner_computes: distribute the polar factors over devices (see the ``scale_by_``
        block; :mod:`optzoo.distributed`).

    Returns:
      A :class:`optax.GradientTransformation` (``optax.partition``: ``'matrix'``,
      ``'fallback'``).

    Example:
      >>> import jax.numpy as jnp
      >>> from optzoo.symmetric import hybrid
      >>> opt = hybrid(1e-2, unit_axis=0, weight_decay=1e-3)
      >>> params = jnp.ones((32, 8))
      >>> updates, _ = opt.update(jnp.ones((32, 8)), opt.init(params), params)

    References:
      Lau & Su, arXiv:2605.18106 (2026), HybridPolarGradM; Lau, Long, Su, arXiv:2505.21799.
    """
    block = scale_by_hybrid(
        beta, unit_axis=unit_axis, order=order, alpha=alpha, center=center, side=side,
        polar_method=polar_method, ns_steps=ns_steps, ortho_dtype=ortho_dtype, eps=eps,
        threshold=threshold, gram_eps=gram_eps, gram_method=gram_method, gram_steps=gram_steps,
        nu_scope=nu_scope, numerics=numerics, numerics_steps=numerics_steps,
        numerics_coeffs=numerics_coeffs, numerics_dtype=numerics_dtype, nesterov=nesterov,
        gate_up_pair=gate_up_pair, mu_dtype=mu_dtype, layout=layout,
        owner_computes=owner_computes)
    return _alias("hybrid", block, learning_rate=learning_rate, center=center,
                  weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
                  unit_axis=unit_axis, layout=layout, fallback=fallback, mu_dtype=mu_dtype,
                  adam_learning_rate=adam_learning_rate, adam_b1=adam_b1, adam_b2=adam_b2,
                  adam_eps=adam_eps, adam_weight_decay=adam_weight_decay)
