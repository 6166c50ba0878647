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

The aliases are derived from their blocks: ``learning_rate``, then every keyword of the block,
then ``weight_decay``, ``weight_decay_mask`` and ``fallback`` (leaves without a matrix layout;
by default :data:`DEFAULT_FALLBACK`, AdamW at a constant 3e-4, see :mod:`optzoo.fallback`).

**Orientation.** Formulas are written with units as rows (PyTorch ``(out, in)`` layout). Flax
stores ``Dense`` kernels as ``(fan_in, fan_out)``, so units are *columns* for an LM head
``(d, V)``, a router ``(d, E)`` and SwiGLU gate/up ``(d, f)``, and rows for an ``Embed`` table
``(V, d)`` and the down projection ``(f, d)``. Every map therefore takes an explicit
``unit_axis`` (``0``/``-2`` or ``1``/``-1`` of the matrix view); nothing assumes rows. Leading
axes (scanned layers, expert stacks ``[E, d, f]``) are batch axes: each slice is one matrix.
``gate_up_pair='concat'|'interleaved'`` reads a fused gate|up tensor so that one unit is the
pair ``(gate_j, up_j)``, normalized jointly (same permutation on both halves).

**Choices where the sources are silent or disagree** (docs/math/symmetry.md, #open-questions; the
paper text was not available, rules follow the authors' released code at its HEAD a773b3f,
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
* Rare-token drift (docs/math/symmetry.md#pitfalls): a row seen once keeps a momentum ``β^k g``
  whose direction never changes, and row normalization moves it by about ``η`` per step until
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

import inspect
import numbers
from collections.abc import Callable
from typing import Any

import optax

from optzoo import _blocks, _checks
from optzoo import fallback as fallback_lib
from optzoo._symmetric_core import GATE_UP_PAIRS, NUMERICS, SymmetricState, is_zero, unit_layouts
from optzoo._symmetric_maps import (
    HYBRID_ORDERS,
    OVERRIDES,
    document,
    scale_by_hybrid,
    scale_by_left_spectral,
    scale_by_one_sided_spectral,
    scale_by_rownorm,
)

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

#: The default fallback of the aliases: AdamW at a constant 3e-4, ``b = (0.9, 0.95)``, no
#: decay. Its rate deliberately does not follow ``learning_rate``: row-norm and spectral
#: learning rates are not Adam learning rates.
DEFAULT_FALLBACK = fallback_lib.AdamW(learning_rate=3e-4)

_KEYWORD = inspect.Parameter.KEYWORD_ONLY
# annotations as the blocks' (postponed, strings); learning_rate's is the object itself, which
# optax's test battery reads to pass schedules
_LEARNING_RATE = inspect.Parameter(
    "learning_rate", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=optax.ScalarOrSchedule
)
_ALIAS_PARAMETERS = (
    inspect.Parameter("weight_decay", _KEYWORD, default=0.0, annotation="jax.typing.ArrayLike"),
    inspect.Parameter("weight_decay_mask", _KEYWORD, default=None, annotation="Any"),
    inspect.Parameter("fallback", _KEYWORD, default=None, annotation="fallback_lib.FallbackSpec"),
)

#: ``Args`` texts of the aliases that differ from their blocks'.
_ALIAS_ARGS = {
    "mu_dtype": "momentum dtype (also the default fallback's first-moment dtype).",
    "layout": (
        "matrix layout spec (see :func:`optzoo.layout.resolve`); leaves whose layout is "
        "``None`` (by default: fewer than two axes) go to ``fallback``."
    ),
    "weight_decay": (
        "decoupled weight decay ``λ`` of the matrix leaves (0 by default: the "
        "released runs use none for embeddings, heads and routers; must be 0 when "
        "centered)."
    ),
    "weight_decay_mask": "tree of booleans or callable selecting the decayed matrix leaves.",
    "fallback": (
        "the leaves without a matrix layout: an ``optax.GradientTransformation`` (with its own "
        "learning rate), an :class:`optzoo.fallback.AdamW`, or ``None`` "
        "(:data:`DEFAULT_FALLBACK`). float16 leaves keep their moments in float32. Gradients "
        "beyond ~1.8e19 in float32/bfloat16 overflow AdamW's second moment to ``inf`` (a "
        "limit shared with ``optax.adamw``: the leaf then stops moving); the experiments "
        "harness clips gradients (``grad_clip=1.0``) long before."
    ),
}


_ALIAS_RETURNS = (
    "A :class:`optax.GradientTransformation`: an ``optax.partition`` with labels "
    "``'matrix'`` (the leaves with a matrix layout) and ``'fallback'``."
)


def _alias_of(
    block: Callable[..., optax.GradientTransformation], learning_rate_doc: str
) -> Callable[[Callable], Callable]:
    """Decorator of the alias of ``block``: its signature is ``learning_rate``, the block's
    arguments (keyword-only) and ``weight_decay``, ``weight_decay_mask``, ``fallback`` (one
    definition of every option, read by ``optax.inject_hyperparams`` like an explicit one);
    its docstring gets the ``Args`` and ``Returns`` sections."""
    block_parameters = inspect.signature(block).parameters.values()
    signature = inspect.Signature(
        [_LEARNING_RATE, *(p.replace(kind=_KEYWORD) for p in block_parameters), *_ALIAS_PARAMETERS],
        return_annotation="optax.GradientTransformation",
    )

    def decorate(alias):
        alias.__signature__ = signature
        return document(
            alias,
            {
                **OVERRIDES.get(block.__name__, {}),
                **_ALIAS_ARGS,
                "learning_rate": learning_rate_doc,
            },
            _ALIAS_RETURNS,
        )

    return decorate


def _build(
    alias: Callable[..., Any],
    block: Callable[..., optax.GradientTransformation],
    args: tuple,
    kwargs: dict,
) -> optax.GradientTransformation:
    r"""``alias(*args, **kwargs)``: the matrix leaves get ``chain(block,
    add_decayed_weights(λ, weight_decay_mask), scale_by_learning_rate(η))``, i.e.
    ``W ← W − η(Δ + λW)``, the others the fallback; update shapes are checked against the
    parameters."""
    name = alias.__name__
    bound = inspect.signature(alias).bind(*args, **kwargs)
    bound.apply_defaults()
    kw = dict(bound.arguments)
    lr, decay, mask, fallback = (
        kw.pop(k) for k in ("learning_rate", "weight_decay", "weight_decay_mask", "fallback")
    )
    _checks.learning_rate(lr, "learning_rate", name)
    _checks.nonnegative(decay, "weight_decay", name)
    if kw["center"] and not is_zero(decay) and isinstance(decay, numbers.Real):
        raise ValueError(
            f"{name}: center=True needs weight_decay=0 (decay shrinks the mean "
            f"unit, i.e. moves along the shift symmetry), got {decay}"
        )
    matrix_tx = optax.chain(
        block(**kw), optax.add_decayed_weights(decay, mask), optax.scale_by_learning_rate(lr)
    )
    fb = fallback_lib.resolve(
        fallback,
        default=DEFAULT_FALLBACK,
        method_learning_rate=lr,
        mu_dtype=kw["mu_dtype"],
        what=name,
    )

    def layouts_fn(tree):
        return unit_layouts(tree, kw["unit_axis"], kw["layout"], name, "parameter", strict=False)

    return _blocks.split_by_layout(matrix_tx, fb, kw["layout"], name, layouts_fn=layouts_fn)


# ---------------------------------------------------------------------------- aliases
@_alias_of(
    scale_by_rownorm,
    (
        "``η``, a float or optax schedule (released: 0.5 embeddings, 5e-3 heads, 7.5e-4 "
        "routers on the OLMoE/Qwen3-style runs)."
    ),
)
def rownorm(*args: Any, **kwargs: Any) -> optax.GradientTransformation:
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

    {args}

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
    return _build(rownorm, scale_by_rownorm, args, kwargs)


@_alias_of(scale_by_one_sided_spectral, "``η`` (float or schedule).")
def one_sided_spectral(*args: Any, **kwargs: Any) -> optax.GradientTransformation:
    r"""RightPolarGradM: ``ν^α M (MᵀM)^{-1/2}`` on the EMA momentum, decoupled weight decay.

        .. math::
          W \leftarrow W - \eta\,\bigl(\nu^\alpha M (M^\top M)^{-1/2} + \lambda W\bigr), \qquad
          \nu = \lVert M \rVert_*,

        with units (the tall side: vocabulary) as rows and the ``d×d`` Gram inverted in float32.
        Equals ``ν^α polar(M)`` for full column rank: steepest descent under the spectral norm,
        bi-orthogonally equivariant (exactly under unit permutations × feature rotations in
        floating point). ``center=True`` is the LM-head variant (shift invariant, ``1ᵀΔ = 0``,
        ``λ = 0``). See :func:`scale_by_one_sided_spectral` (also for the range: finite over the
        whole float32/bfloat16 range). Static under inject_hyperparams: ``unit_axis``,
        ``gram_steps``.

    {args}

        Example:
          >>> import jax.numpy as jnp, numpy as np
          >>> from optzoo.symmetric import one_sided_spectral
          >>> g = jnp.asarray(np.random.default_rng(0).standard_normal((32, 4)), jnp.float32)
          >>> opt = one_sided_spectral(1.0, unit_axis=0, beta=0.0, alpha=0.0)  # Δ = polar(G)
          >>> u, _ = opt.update(g, opt.init(g), g)
          >>> print(np.allclose(u.T @ u, np.eye(4), atol=1e-4))  # orthonormal columns
          True

        References:
          Lau & Su, arXiv:2605.18106 (2026), RightPolarGradM; Lau, Long, Su, arXiv:2505.21799.
    """
    return _build(one_sided_spectral, scale_by_one_sided_spectral, args, kwargs)


@_alias_of(scale_by_left_spectral, "``η`` (released: 7.5e-4 for OLMoE/gpt-oss-style routers).")
def left_spectral(*args: Any, **kwargs: Any) -> optax.GradientTransformation:
    r"""LeftPolarGradM: centered left-spectral update for MoE routers.

        .. math::
          Y = \Pi_\perp M, \qquad
          W \leftarrow W - \eta\, \Pi_\perp \nu^\alpha (Y Y^\top)^{-1/2} Y, \qquad
          \nu = \lVert Y \rVert_*,

        with the experts as rows (Flax router kernel ``(d, E)``: ``unit_axis=-1``) and the
        ``E×E`` Gram inverted in float32. Spectral steepest descent on the horizontal subspace;
        equivariant under expert permutations × model-space rotations and invariant to the shared
        logit shift. ``center=False`` is the ``left_uncentered`` ablation (then ``weight_decay``
        may be nonzero). See :func:`scale_by_left_spectral` (also for the range).

    {args}

        Example:
          >>> import jax.numpy as jnp
          >>> from optzoo.symmetric import left_spectral
          >>> opt = left_spectral(7.5e-4, unit_axis=-1)
          >>> router = jnp.zeros((16, 4))  # (d_model, n_experts)
          >>> updates, _ = opt.update(jnp.ones((16, 4)) * jnp.arange(4.0), opt.init(router), router)

        References:
          Lau & Su, arXiv:2605.18106 (2026), LeftPolarGradM (``optim/leftpolargrad.py``).
    """
    return _build(left_spectral, scale_by_left_spectral, args, kwargs)


@_alias_of(
    scale_by_hybrid, "``η`` (released, Qwen3-style: 1.0 embedding, 1e-2 head with ``α = 1``)."
)
def hybrid(*args: Any, **kwargs: Any) -> optax.GradientTransformation:
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

    {args}

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from optzoo.symmetric import hybrid
          >>> params = {'embed': jnp.ones((32, 8)), 'norm': jnp.ones(8)}
          >>> opt = hybrid(1e-2, unit_axis=0, weight_decay=1e-3)  # the norm goes to the fallback
          >>> grads = jax.tree.map(jnp.ones_like, params)
          >>> updates, state = opt.update(grads, opt.init(params), params)
          >>> print(sorted(state.inner_states))
          ['fallback', 'matrix']

        References:
          Lau & Su, arXiv:2605.18106 (2026), HybridPolarGradM; Lau, Long, Su, arXiv:2505.21799.
    """
    return _build(hybrid, scale_by_hybrid, args, kwargs)


#: The arguments of the maps ``optax.inject_hyperparams`` cannot trace (the unit axis, choices,
#: iteration counts, dtypes, the gate/up pairing, layouts), in signature order per factory as
#: ``factory.static_args``; the aliases add ``weight_decay_mask`` and ``fallback``.
STATIC_ARGS = (
    "unit_axis",
    "order",
    "side",
    "polar_method",
    "ns_steps",
    "ortho_dtype",
    "gram_method",
    "gram_steps",
    "nu_scope",
    "numerics",
    "numerics_steps",
    "numerics_coeffs",
    "numerics_dtype",
    "gate_up_pair",
    "mu_dtype",
    "layout",
    "owner_computes",
)


def _declare_static_args() -> None:
    pairs: tuple[tuple[Any, Any], ...] = (
        (scale_by_rownorm, rownorm),
        (scale_by_one_sided_spectral, one_sided_spectral),
        (scale_by_left_spectral, left_spectral),
        (scale_by_hybrid, hybrid),
    )
    for block, alias in pairs:
        static = tuple(n for n in inspect.signature(block).parameters if n in STATIC_ARGS)
        block.static_args = static
        alias.static_args = static + ("weight_decay_mask", "fallback")


_declare_static_args()
