"""The layerwise symmetry-compatible optimizer: one map per parameter role (Lau & Su, 2026).

:func:`symmetry_compatible` classifies every parameter with :mod:`optzoo.routing` and gives
each role group the update compatible with its symmetry group (docs/math/symmetry.md#roles):

===============  ===========================================  =================================
group            choices (first = ``'paper'`` preset)         symmetry group of the block
===============  ===========================================  =================================
embedding        ``row`` / ``right`` / ``hybrid`` / ``adamw``  token permutations × ``O(d)``
lm_head          ``row`` / ``right`` / ``hybrid`` / ``adamw``  vocab permutations × ``O(d)`` ⋉
                 (centered unless ``center_lm_head=False``)   logit shifts
router           ``row`` / ``left`` / ``left_uncentered`` /   expert permutations × ``O(d)`` ⋉
                 ``hybrid`` / ``adamw`` (centered)            logit shifts
mlp              ``muon`` / ``hybrid`` / ``row`` / ``adamw``   bi-orthogonal (Muon) or neuron
                 (row-aware gate/up, column-aware down)       permutations × ``O(d)``
experts          ``muon`` / ``hybrid`` / ``row`` / ``adamw``   as mlp, per expert
attention        ``muon`` (head-wise with ``head_dim``)       per-head rotations
other_matrices   ``muon`` / ``adamw``                         bi-orthogonal
vectors          ``adamw``                                    coordinatewise
===============  ===========================================  =================================

Each group is ``chain(direction, add_decayed_weights, scale(lr multiplier),
scale_by_learning_rate(learning_rate))`` inside one ``optax.partition``
(:func:`optzoo.routing.by_role`). Every direction sees the leaf through a *view*: a
``(batch, rows, cols)`` stack in which the units are rows for the row/spectral maps (so the
Flax orientation of each role — units on axis 0 of an ``Embed`` table, on the last axis of an
LM-head / router / gate / up kernel, on axis 0 of a down kernel — comes from the rules, never
from a hard-coded "rows"), attention heads are split into batch slices for head-wise Muon
(``q/k/v`` kernels ``(d, H·d_h)`` → ``H`` blocks ``d×d_h``; ``o`` kernels ``(H·d_h, d)`` →
``H`` blocks ``d_h×d``; grouped-query attention needs nothing special: ``k/v`` kernels simply
have ``H_kv`` heads), fused gate|up tensors are split into their two halves for Muon and read
as ``(gate_j, up_j)`` units for the row maps, and expert axes are batch axes. Optimizer
states therefore hold the momentum in view shape.

Presets reproduce the 20 released configurations (the reference README's commands; plus
``'paper'``, optzoo's headline configuration, exact numerics): with
``learning_rate`` = the hidden-matrix (Muon) learning rate, every other group's learning rate
is a fixed multiple of it (:data:`PRESETS`, :func:`preset_learning_rates`). The reference runs
the 1-D AdamW group on its own warmup + cosine schedule; here one schedule (``learning_rate``)
drives every group, scaled by the multipliers — pass a GradientTransformation as ``fallback``
(or ``vectors``) to give it another schedule; ``fallback=optzoo.fallback.AdamW(b1=..., b2=...,
eps=...)`` sets the moments of every ``'adamw'`` group. The released presets also default to
the reference's numerics (``numerics='reference'``) and expert handling (joint OLMoE gate|up,
the reference's shape factors); :func:`symmetry_compatible_numerics` names, per group, what a
configuration uses (for run manifests). Head-wise attention Muon uses Jordan's factor per head
block, as the reference's ``MuonHeadsPolarExpress`` (``o_proj`` head blocks ``(d_h, d)``:
``√(d/d_h)``; a whole ``o_proj`` matrix: 1).
"""

from __future__ import annotations

import inspect
import numbers
import types
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import optax

from optzoo import _checks, routing
from optzoo import fallback as fallback_lib
from optzoo._symmetric_core import NUMERICS, resolve_numerics
from optzoo._symmetric_views import gate_up_partner, muon_views, unit_views, viewed
from optzoo.distributed import OwnerComputes, check_owner_computes
from optzoo.layout import MatrixLayout
from optzoo.muon import scale_by_muon
from optzoo.symmetric import (
    HYBRID_ORDERS,
    scale_by_hybrid,
    scale_by_left_spectral,
    scale_by_one_sided_spectral,
    scale_by_rownorm,
)

__all__ = [
    "PRESETS",
    "NUMERICS",
    "EXPERT_GATE_UP",
    "EXPERT_SHAPE_FACTORS",
    "DEFAULT_FALLBACK",
    "preset_learning_rates",
    "symmetry_compatible_plan",
    "symmetry_compatible_numerics",
    "symmetry_compatible",
]

#: ``experts_gate_up``: how Muon orthogonalizes an expert's gate and up projections.
#: ``'joint'``: one polar factor of the expert's ``(d, 2f)`` matrix ``[gate | up]`` (the
#: reference's OLMoE fused ``gate_up_proj``, orientation ``row``); sibling ``gate_proj`` /
#: ``up_proj`` leaves are concatenated for it. ``'split'``: one polar factor per half (the
#: reference's gpt-oss interleaved ``gate_up_proj``). ``'auto'``: joint for a fused concat
#: layout, split for an interleaved one and for separate leaves.
EXPERT_GATE_UP = ("auto", "joint", "split")
#: ``expert_shape_factor``: ``'reference'`` = the released layouts' factors (per expert block,
#: Flax ``(fan_in, fan_out)``): down ``√max(1, f/d)`` (the reference transposes OLMoE's
#: ``down_proj``, orientation ``col``; gpt-oss's is stored ``(f, d)``), split gate/up
#: ``√max(1, d/f)`` (gpt-oss stores ``(d, 2f)``), joint gate|up ``√max(1, 2f/d)``; ``'jordan'``
#: = Jordan's ``√max(1, fan_out/fan_in)`` everywhere (down: ``√max(1, d/f)``).
EXPERT_SHAPE_FACTORS = ("reference", "jordan")
_MAP_KINDS = {"right": "right", "left": "left", "left_uncentered": "left", "hybrid": "hybrid"}

Choice = str | optax.GradientTransformation | None

_CHOICES = {
    "embedding": ("row", "right", "hybrid", "adamw"),
    "lm_head": ("row", "right", "hybrid", "adamw"),
    "router": ("row", "left", "left_uncentered", "hybrid", "adamw"),
    "mlp": ("muon", "hybrid", "row", "adamw"),
    "experts": ("muon", "hybrid", "row", "adamw"),
    "attention": ("muon", "adamw"),
    "other_matrices": ("muon", "adamw"),
    "vectors": ("adamw",),
}
_HIDDEN = ("attention", "mlp", "experts", "other_matrices")


def _released(
    embedding,
    lm_head,
    mlp,
    router,
    lrs,
    *,
    gate_up="auto",
    numerics="reference",
    factor="reference",
):
    hidden = lrs["hidden"]
    mult = {g: lrs[g] / hidden for g in ("embedding", "lm_head", "router", "vectors")}
    choices = dict(
        embedding=embedding,
        lm_head=lm_head,
        router=router,
        mlp=mlp,
        experts="muon",
        attention="muon",
        other_matrices="muon",
        vectors="adamw",
    )
    return dict(
        choices=choices,
        learning_rate=hidden,
        multipliers=mult,
        numerics=numerics,
        experts_gate_up=gate_up,
        expert_shape_factor=factor,
    )


# The dense runs have no router: its multiplier is the MoE runs' 7.5e-4 / 5e-3 = 0.15.
_QWEN3 = dict(hidden=2e-2, vectors=5e-2, router=3e-3)
_GEMMA3 = dict(hidden=2e-2, vectors=5e-2, router=3e-3)
_OLMOE = dict(hidden=5e-3, vectors=1e-2, router=7.5e-4)
_GPTOSS = dict(hidden=1e-3, vectors=5e-3, router=7.5e-4)

#: Released configurations (github.com/timlautk/equivariant_optimizers README commands):
#: ``choices`` per group, the suggested ``learning_rate`` (the Muon / hidden learning rate
#: ``--lr_muon``) and the ``multipliers`` ``lr_group / lr_muon`` of the other groups
#: (``--lr_embed``, ``--lr_lm_head``, ``--lr_router``, and ``--lr`` for the 1-D AdamW group).
#: ``'paper'`` is the headline configuration: row-norm embedding, centered row-norm LM head and
#: router, Muon MLP / experts, head-wise Muon attention, AdamW vectors, with the Qwen3-style
#: learning-rate ratios (and the OLMoE router ratio).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": _released(
        "row",
        "row",
        "muon",
        "row",
        dict(_QWEN3, embedding=5e-1, lm_head=5e-3),
        numerics="exact",
        factor="jordan",
    ),
    "qwen3_row": _released("row", "row", "muon", "row", dict(_QWEN3, embedding=5e-1, lm_head=5e-3)),
    "qwen3_hybrid": _released(
        "hybrid", "hybrid", "muon", "row", dict(_QWEN3, embedding=1.0, lm_head=1e-2)
    ),
    "qwen3_adamw": _released(
        "adamw", "adamw", "muon", "row", dict(_QWEN3, embedding=1e-1, lm_head=1e-3)
    ),
    "qwen3_swiglu_row": _released(
        "row", "row", "hybrid", "row", dict(_QWEN3, embedding=5e-1, lm_head=5e-3)
    ),
    "qwen3_swiglu_hybrid": _released(
        "hybrid", "hybrid", "hybrid", "row", dict(_QWEN3, embedding=1.0, lm_head=1e-2)
    ),
    "qwen3_swiglu_adamw": _released(
        "adamw", "adamw", "hybrid", "row", dict(_QWEN3, embedding=1e-1, lm_head=1e-3)
    ),
    "gemma3_row": _released(
        "row", "row", "muon", "row", dict(_GEMMA3, embedding=2.5e-3, lm_head=2.5e-3)
    ),
    "gemma3_hybrid": _released(
        "hybrid", "hybrid", "muon", "row", dict(_GEMMA3, embedding=2.5e-3, lm_head=2.5e-3)
    ),
    "gemma3_adamw": _released(
        "adamw", "adamw", "muon", "row", dict(_GEMMA3, embedding=5e-4, lm_head=5e-4)
    ),
    "gemma3_swiglu_row": _released(
        "row", "row", "hybrid", "row", dict(_GEMMA3, embedding=5e-3, lm_head=5e-3)
    ),
    "gemma3_swiglu_hybrid": _released(
        "hybrid", "hybrid", "hybrid", "row", dict(_GEMMA3, embedding=1e-2, lm_head=1e-2)
    ),
    "gemma3_swiglu_adamw": _released(
        "adamw", "adamw", "hybrid", "row", dict(_GEMMA3, embedding=5e-4, lm_head=5e-4)
    ),
    "olmoe_row": _released(
        "row", "row", "muon", "row", dict(_OLMOE, embedding=5e-1, lm_head=5e-3), gate_up="joint"
    ),
    "olmoe_left": _released(
        "row", "row", "muon", "left", dict(_OLMOE, embedding=5e-1, lm_head=5e-3), gate_up="joint"
    ),
    "olmoe_adamw_router": _released(
        "row", "row", "muon", "adamw", dict(_OLMOE, embedding=5e-1, lm_head=5e-3), gate_up="joint"
    ),
    "olmoe_adamw": _released(
        "adamw",
        "adamw",
        "muon",
        "adamw",
        dict(_OLMOE, embedding=5e-4, lm_head=5e-4),
        gate_up="joint",
    ),
    "gptoss_row": _released(
        "row", "row", "muon", "row", dict(_GPTOSS, embedding=1e-1, lm_head=1e-3), gate_up="split"
    ),
    "gptoss_left": _released(
        "row", "row", "muon", "left", dict(_GPTOSS, embedding=1e-1, lm_head=1e-3), gate_up="split"
    ),
    "gptoss_adamw_router": _released(
        "row", "row", "muon", "adamw", dict(_GPTOSS, embedding=1e-1, lm_head=1e-3), gate_up="split"
    ),
    "gptoss_adamw": _released(
        "adamw",
        "adamw",
        "muon",
        "adamw",
        dict(_GPTOSS, embedding=5e-4, lm_head=5e-4),
        gate_up="split",
    ),
}


def preset_learning_rates(preset: str) -> dict[str, float]:
    """Absolute learning rates of a released preset per group (``learning_rate`` × multiplier)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    return {g: p["learning_rate"] * p["multipliers"].get(g, 1.0) for g in routing.GROUPS}


#: The moments of every ``'adamw'`` group (the vectors, and any group set to ``'adamw'``):
#: ``b = (0.9, 0.95)``, ``eps = 1e-8``; each group's rate and decay are the stack's.
DEFAULT_FALLBACK = fallback_lib.AdamW()


# --------------------------------------------------------------------------- the stack
def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _fallback_moments(fallback: Any, what: str) -> fallback_lib.AdamW:
    """The :class:`optzoo.fallback.AdamW` whose moments the ``'adamw'`` groups use."""
    if fallback is None or isinstance(fallback, optax.GradientTransformation):
        return DEFAULT_FALLBACK
    if not isinstance(fallback, fallback_lib.AdamW):
        raise TypeError(
            f"{what}: fallback must be an optax.GradientTransformation, an "
            f"optzoo.fallback.AdamW or None, got {type(fallback).__name__}"
        )
    if (
        fallback.learning_rate is not None
        or fallback.lr_ratio != fallback_lib.LR_RATIO
        or not (_is_number(fallback.weight_decay) and fallback.weight_decay == 0)
    ):
        raise ValueError(
            f"{what}: the 'adamw' groups run at learning_rate × lr_multipliers"
            "[group] with the stack's decays (vector_weight_decay on vectors); "
            "fallback=optzoo.fallback.AdamW(...) sets only b1, b2, eps and "
            "mu_dtype, not learning_rate, lr_ratio or weight_decay"
        )
    return fallback


def _direction(group: str, choice: str, o: types.SimpleNamespace, numerics: str):
    """``(direction transform, name, decays)`` for one group's string choice; ``o``: the
    stack's resolved arguments."""
    # every view is a (batch, rows, cols) stack: leading axes are batch axes by construction
    common = dict(nesterov=False, mu_dtype=o.mu_dtype, layout=MatrixLayout())
    spectral = dict(
        numerics=numerics,
        numerics_steps=o.numerics_steps,
        numerics_dtype=o.numerics_dtype,
        alpha=o.alpha,
        gram_eps=o.gram_eps,
        gram_method=o.gram_method,
        nu_scope=o.nu_scope,
        owner_computes=o.owner_computes,
    )
    center = {
        "embedding": False,
        "lm_head": o.center_lm_head,
        "router": choice != "left_uncentered",
    }.get(group, False)
    if choice == "adamw":  # float16 leaves: moments in float32
        spec = o.adamw
        adam = optax.scale_by_adam(
            b1=spec.b1,
            b2=spec.b2,
            eps=spec.eps,
            mu_dtype=(o.mu_dtype if spec.mu_dtype is None else spec.mu_dtype),
        )
        return fallback_lib.float16_in_float32(adam), "adamw", True
    if choice == "muon":
        inner = scale_by_muon(
            o.muon_beta,
            nesterov=True,
            ortho_method=o.ortho_method,
            ns_steps=o.ns_steps,
            ortho_dtype=o.ortho_dtype,
            shape_scale="jordan",
            mu_dtype=o.mu_dtype,
            owner_computes=o.owner_computes,
            layout=MatrixLayout(),
        )
        headwise = group == "attention" and o.head_dim is not None
        experts = group == "experts"
        view_for = muon_views(
            o.rules,
            head_dim=o.head_dim if headwise else None,
            experts=experts,
            experts_gate_up=o.experts_gate_up,
            expert_shape_factor=o.expert_shape_factor,
        )
        pair_for = gate_up_partner if experts and o.experts_gate_up == "joint" else None
        name = f"muon(head-wise, d_h={o.head_dim})" if headwise else "muon"
        return viewed(inner, view_for, pair_for), name, True
    if choice == "row":
        inner = scale_by_rownorm(o.beta, unit_axis=-2, center=center, eps=o.eps, **common)
        name = "rownorm(centered)" if center else "rownorm"
    elif choice == "right":
        inner = scale_by_one_sided_spectral(
            o.beta, unit_axis=-2, center=center, eps=o.eps, **spectral, **common
        )
        name = "one_sided_spectral(centered)" if center else "one_sided_spectral"
    elif choice in ("left", "left_uncentered"):
        inner = scale_by_left_spectral(
            o.beta, unit_axis=-2, center=center, eps=o.eps, **spectral, **common
        )
        name = "left_spectral(centered)" if center else "left_spectral(uncentered)"
    else:  # hybrid
        inner = scale_by_hybrid(
            o.beta,
            unit_axis=-2,
            order=o.hybrid_order,
            center=center,
            side="left" if group == "router" else "auto",
            eps=o.eps,
            **spectral,
            **common,
        )
        name = f"hybrid({o.hybrid_order}{', centered' if center else ''})"
    return viewed(inner, unit_views(o.rules)), name, not center


def _group_numerics(numerics: Any, group: str, choice: str, default: str) -> str:
    kind = _MAP_KINDS.get(choice)
    if isinstance(numerics, Mapping):
        for key in (group, kind):
            if key is not None and key in numerics:
                return numerics[key]
        return default
    return default if numerics is None else numerics


def _check_numerics(numerics: Any, what: str) -> None:
    if isinstance(numerics, Mapping):
        for key, value in numerics.items():
            if key not in routing.GROUPS and key not in ("hybrid", "right", "left"):
                raise ValueError(
                    f"{what}: numerics key {key!r} is neither a group "
                    f"{list(routing.GROUPS)} nor a map ('hybrid', 'right', "
                    "'left')"
                )
            _checks.choice(value, f"numerics[{key!r}]", what, NUMERICS)
    elif numerics is not None:
        _checks.choice(numerics, "numerics", what, NUMERICS)


def _plan_details(o: types.SimpleNamespace) -> tuple[dict[str, routing.Assignment], dict[str, str]]:
    """The plan of :func:`symmetry_compatible` with arguments ``o`` (every parameter of its
    signature) and the per-group descriptions."""
    what = "symmetry_compatible"
    check_owner_computes(o.owner_computes, what)
    _checks.choice(o.preset, "preset", what, tuple(PRESETS))
    _checks.choice(o.hybrid_order, "hybrid_order", what, HYBRID_ORDERS)
    if o.head_dim is not None and (
        isinstance(o.head_dim, bool)
        or not isinstance(o.head_dim, numbers.Integral)
        or o.head_dim < 1
    ):
        raise TypeError(
            f"{what}: head_dim must be a positive Python int or None, got "
            f"{o.head_dim!r}; under optax.inject_hyperparams list it in static_args"
        )
    _check_numerics(o.numerics, what)
    _checks.integer(o.numerics_steps, "numerics_steps", what, lo=1, allow_none=True)
    _checks.float_dtype(o.numerics_dtype, "numerics_dtype", what)
    spec = PRESETS[o.preset]
    gate_up = spec["experts_gate_up"] if o.experts_gate_up is None else o.experts_gate_up
    _checks.choice(gate_up, "experts_gate_up", what, EXPERT_GATE_UP)
    factor = spec["expert_shape_factor"] if o.expert_shape_factor is None else o.expert_shape_factor
    _checks.choice(factor, "expert_shape_factor", what, EXPERT_SHAPE_FACTORS)
    given = {g: getattr(o, g) for g in routing.GROUPS}
    if isinstance(o.fallback, optax.GradientTransformation):
        if given["vectors"] is not None:
            raise ValueError(
                f"{what}: fallback= and vectors= both give the vectors group a "
                "transform; pass one of them"
            )
        given["vectors"] = o.fallback
    multipliers = dict(spec["multipliers"])
    if o.lr_multipliers is not None:
        for key in o.lr_multipliers:
            if key not in routing.GROUPS:
                raise ValueError(
                    f"{what}: lr_multipliers key {key!r} is not a group; expected "
                    f"one of {list(routing.GROUPS)}"
                )
        multipliers.update(o.lr_multipliers)
    r = types.SimpleNamespace(
        **{
            **vars(o),
            "rules": routing.DEFAULT_RULES if o.rules is None else tuple(o.rules),
            "experts_gate_up": gate_up,
            "expert_shape_factor": factor,
            "adamw": _fallback_moments(o.fallback, what),
        }
    )
    plan, details = {}, {}
    for group in routing.GROUPS:
        choice = given[group] if given[group] is not None else spec["choices"][group]
        mult = multipliers.get(group, 1.0)
        if isinstance(choice, optax.GradientTransformation):
            plan[group] = routing.Assignment(choice, "custom", None)
            details[group] = "custom"
            continue
        _checks.choice(choice, group, what, _CHOICES[group])
        group_numerics = _group_numerics(o.numerics, group, choice, spec["numerics"])
        direction, name, decays = _direction(group, choice, r, group_numerics)
        if group == "experts" and choice == "muon":
            details[group] = (
                f"muon(experts: gate|up {gate_up}, {factor} shape factors, {o.ortho_method})"
            )
        elif choice in _MAP_KINDS:
            steps = 5 if o.numerics_steps is None else o.numerics_steps
            num = resolve_numerics(
                group_numerics, _MAP_KINDS[choice], steps, None, o.numerics_dtype, what
            )
            details[group] = f"{name} [numerics {num.describe()}]"
        else:
            details[group] = name
        if group == "vectors":
            decay = o.vector_weight_decay
        elif group in _HIDDEN:
            decay = o.weight_decay
        else:
            decay = 0.0  # released: no decay on embeddings, LM heads, routers
        parts = [direction]
        if decays and not (_is_number(decay) and decay == 0):
            parts.append(optax.add_decayed_weights(decay))
        if not (_is_number(mult) and mult == 1):
            parts.append(optax.scale(mult))
        parts.append(optax.scale_by_learning_rate(o.learning_rate))
        plan[group] = routing.Assignment(
            optax.chain(*parts), name, float(mult) if _is_number(mult) else None
        )
    return plan, details


def symmetry_compatible(
    learning_rate: optax.ScalarOrSchedule,
    *,
    preset: str = "paper",
    embedding: Choice = None,
    lm_head: Choice = None,
    router: Choice = None,
    mlp: Choice = None,
    experts: Choice = None,
    attention: Choice = None,
    other_matrices: Choice = None,
    vectors: Choice = None,
    rules: Sequence[routing.Rule] | None = None,
    head_dim: int | None = None,
    lr_multipliers: Mapping[str, float] | None = None,
    weight_decay: jax.typing.ArrayLike = 1e-3,
    vector_weight_decay: jax.typing.ArrayLike = 1e-3,
    beta: jax.typing.ArrayLike = 0.95,
    muon_beta: jax.typing.ArrayLike = 0.95,
    alpha: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-8,
    gram_eps: jax.typing.ArrayLike = 1e-6,
    gram_method: str = "eigh",
    hybrid_order: str = "row_then_polar",
    center_lm_head: bool = True,
    nu_scope: str = "matrix",
    ortho_method: str = "polar_express",
    ns_steps: int | None = None,
    ortho_dtype: jax.typing.DTypeLike | None = None,
    fallback: fallback_lib.FallbackSpec = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    owner_computes: OwnerComputes | None = None,
    numerics: str | Mapping[str, str] | None = None,
    numerics_steps: int | None = None,
    numerics_dtype: jax.typing.DTypeLike | None = None,
    experts_gate_up: str | None = None,
    expert_shape_factor: str | None = None,
) -> optax.GradientTransformation:
    r"""Symmetry-compatible layerwise optimizer: each parameter role gets its compatible map.

    For a leaf of group ``r`` with direction map ``f_r`` (module docstring table), learning
    rate ``η``, multiplier ``c_r`` and decay ``λ_r``:

    .. math::
      W \leftarrow W - \eta\, c_r \bigl(f_r(\text{state}, G) + \lambda_r W\bigr),

    with ``f`` = row-norm / one-sided / left / hybrid on EMA momentum (``beta``, no Nesterov)
    for embeddings, LM heads (centered), routers (centered), Muon (``muon_beta``, Nesterov,
    ``ortho_method``, Jordan's shape factor) on attention — head by head with ``head_dim`` —
    and the MLP / experts (or hybrid / row-norm with row-aware gate/up and column-aware down
    orientation), AdamW (the moments of ``fallback``) for vectors. ``λ = weight_decay`` on the
    hidden matrices, ``vector_weight_decay`` on vectors and 0 on embeddings, heads and routers
    (centered maps must not decay: it moves the mean unit along the shift orbit). Each map is
    the steepest-descent direction of the norm matched to its block's symmetry group (see
    :mod:`optzoo.symmetric` and :mod:`optzoo.muon`), so the whole update commutes with the
    network's symmetries: token/vocabulary/expert/neuron permutations, residual-stream and
    per-head rotations, logit shifts.

    Every leaf must be covered by ``rules`` (an uncovered leaf raises at ``init``, naming its
    path); print the table with ``routing.report(params, rules,
    symmetry_compatible_plan(...))``. A tied embedding table is an ``embedding`` (uncentered;
    see :mod:`optzoo.routing`). Under ``optax.inject_hyperparams`` list ``head_dim`` and
    ``ns_steps`` in ``static_args``.

    Args:
      learning_rate: ``η``, the hidden-matrix (Muon) learning rate, float or schedule; the
        other groups use ``η·c_r`` (preset multipliers).
      preset: a released configuration from :data:`PRESETS` (default ``'paper'``).
      embedding: ``'row'``, ``'right'``, ``'hybrid'``, ``'adamw'``, a complete transform
        (used as is), or ``None`` for the preset's choice.
      lm_head: as ``embedding`` (row/right/hybrid are centered unless ``center_lm_head`` is
        false).
      router: ``'row'``, ``'left'``, ``'left_uncentered'``, ``'hybrid'`` (left Gram),
        ``'adamw'``, a transform or ``None``.
      mlp: ``'muon'``, ``'hybrid'``, ``'row'``, ``'adamw'``, a transform or ``None``.
      experts: as ``mlp``, per expert.
      attention: ``'muon'``, ``'adamw'``, a transform or ``None``.
      other_matrices: ``'muon'``, ``'adamw'``, a transform or ``None``.
      vectors: ``'adamw'``, a transform or ``None``.
      rules: routing rules (default :data:`optzoo.routing.DEFAULT_RULES`).
      head_dim: attention head dimension for head-wise Muon (``None``: each projection is one
        matrix).
      lr_multipliers: overrides of the preset's multipliers, keyed by group.
      weight_decay: decoupled decay of the hidden matrices (released ``wd_muon``: 1e-3).
      vector_weight_decay: AdamW decay of the vectors (released: 1e-3).
      beta: EMA rate of the row / spectral maps.
      muon_beta: Muon momentum.
      alpha: PolarGrad exponent of the one-sided / left / hybrid maps (released: 1).
      eps: row-norm ``ε`` and ``ν`` clamp.
      gram_eps: relative Gram damping of the spectral maps.
      gram_method: ``'eigh'`` or ``'newton_schulz'`` Gram inverse square root.
      hybrid_order: ``'row_then_polar'`` (released) or ``'polar_then_row'``.
      center_lm_head: center the LM-head maps (default, as the released routing at HEAD:
        ``center_rows=True`` for the row / right / hybrid head; for an untied head the
        uncentered map gives the same loss trajectory in exact arithmetic for the row map,
        since the two differ by a shift ``1cᵀ``).
      nu_scope: ``'matrix'`` or ``'leaf'`` for ``ν`` of stacked leaves.
      ortho_method: Muon's orthogonalizer (released: Polar Express, 5 steps).
      ns_steps: orthogonalizer iterations (static).
      ortho_dtype: Muon's orthogonalizer dtype (released: bfloat16; ``None``: momentum dtype).
      fallback: the vectors (norm scales, biases): ``None`` (:data:`DEFAULT_FALLBACK`) or an
        :class:`optzoo.fallback.AdamW` setting ``b1``, ``b2``, ``eps`` and ``mu_dtype`` of
        every ``'adamw'`` group (their rate is ``η·c_r`` and their decay the stack's, so its
        ``learning_rate``, ``lr_ratio`` and ``weight_decay`` must keep their defaults); or an
        ``optax.GradientTransformation``, the vectors' update used as given (as ``vectors=``).
      mu_dtype: dtype of every first-moment buffer (``None``: the parameter's).
      owner_computes: distribute every orthogonalization (Muon's and the one-sided / left /
        hybrid polar factors) over devices, each matrix computed by one owner
        (:class:`optzoo.OwnerComputes`, :mod:`optzoo.distributed`); row-norm and AdamW
        groups are local. ``None`` (default): wherever XLA places them.
      numerics: numerics of the one-sided / left / hybrid maps (:data:`NUMERICS`): one name
        for all, or a mapping keyed by group (``'embedding'``, ``'lm_head'``, ``'router'``,
        ``'mlp'``, ``'experts'``) or by map (``'hybrid'``, ``'right'``, ``'left'``; a group
        key wins); ``None``: the preset's — ``'reference'`` for the 20 released presets (the
        released runs' Gram Newton-Schulz for hybrid / right, Polar-Express inverse root for
        left, which their learning rates were tuned with), ``'exact'`` for ``'paper'``.
      numerics_steps: iterations of the iterative numerics (``None``: 5; static).
      numerics_dtype: their compute dtype (``None``: float16 Gram Newton-Schulz, float32
        inverse root, as released).
      experts_gate_up: Muon on experts' gate/up (:data:`EXPERT_GATE_UP`): ``'joint'`` (one
        polar factor of ``[gate | up]`` per expert, sibling ``gate_proj``/``up_proj`` leaves
        joined; the reference's OLMoE), ``'split'`` (per half; its gpt-oss) or ``'auto'``;
        ``None``: the preset's (OLMoE presets joint, gpt-oss presets split, others auto).
      expert_shape_factor: ``'reference'`` (the released layouts' factors: down
        ``√max(1, f/d)``, split gate/up ``√max(1, d/f)``, joint ``√max(1, 2f/d)``) or
        ``'jordan'`` (``√max(1, fan_out/fan_in)``); ``None``: the preset's (``'reference'``
        for the released presets, ``'jordan'`` for ``'paper'``).

    Returns:
      An ``optax.GradientTransformation`` (``optax.partition`` over role groups).

    Raises:
      ValueError: for an unknown preset / choice / multiplier key, a fallback ``AdamW`` with
        its own rate or decay, ``fallback`` and ``vectors`` both transforms; at ``init``,
        naming the path, for an uncovered leaf, a bad rule layout, or a head axis not
        divisible by ``head_dim``.
      TypeError: for an unknown keyword, a ``fallback`` of another type, a bad ``head_dim``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from optzoo.symmetric_stack import symmetry_compatible
      >>> params = {'embed': {'embedding': jnp.zeros((64, 16))},
      ...           'layers': {'0': {'attn': {'q_proj': {'kernel': jnp.zeros((16, 16))}},
      ...                           'mlp': {'up_proj': {'kernel': jnp.zeros((16, 32))}}}},
      ...           'final_norm': {'scale': jnp.ones(16)},
      ...           'lm_head': {'kernel': jnp.zeros((16, 64))}}
      >>> tx = symmetry_compatible(2e-2, head_dim=8)
      >>> state = tx.init(params)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = tx.update(grads, state, params)

    References:
      Lau & Su, *Symmetry-Compatible Principle for Optimizer Design*, arXiv:2605.18106 (2026)
      (role table and released configurations: github.com/timlautk/equivariant_optimizers,
      ``optim/routing.py``, README).
      Jordan et al., Muon (2024); Amsel et al., Polar Express, arXiv:2505.16932.
    """
    plan, _ = _plan_details(types.SimpleNamespace(**locals()))
    return routing.by_role(plan, rules)


def _options(
    learning_rate: optax.ScalarOrSchedule, kwargs: dict[str, Any]
) -> types.SimpleNamespace:
    """Every argument of :func:`symmetry_compatible` for a call ``(learning_rate, **kwargs)``
    (defaults filled in; an unknown keyword raises ``TypeError``)."""
    try:
        bound = inspect.signature(symmetry_compatible).bind(learning_rate, **kwargs)
    except TypeError as err:
        raise TypeError(f"symmetry_compatible: {err}") from None
    bound.apply_defaults()
    return types.SimpleNamespace(**bound.arguments)


def symmetry_compatible_plan(
    learning_rate: optax.ScalarOrSchedule, **kwargs: Any
) -> dict[str, routing.Assignment]:
    """The per-group transforms of :func:`symmetry_compatible` as :class:`routing.Assignment`
    (for :func:`optzoo.routing.report`); the same arguments.

    Example:
      >>> import jax.numpy as jnp
      >>> from optzoo import routing, symmetric_stack
      >>> params = {'embed': {'embedding': jnp.zeros((16, 8))}, 'lm_head': {'kernel':
      ...           jnp.zeros((8, 16))}, 'final_norm': {'scale': jnp.ones(8)}}
      >>> plan = symmetric_stack.symmetry_compatible_plan(2e-2)
      >>> print(routing.report(params, None, plan).rows[0][4:6])
      ('rownorm', 25.0)
    """
    return _plan_details(_options(learning_rate, kwargs))[0]


# help() and signature-reading tools see symmetry_compatible's keywords
symmetry_compatible_plan.__signature__ = inspect.signature(symmetry_compatible).replace(
    return_annotation=dict[str, routing.Assignment]
)


def symmetry_compatible_numerics(
    learning_rate: optax.ScalarOrSchedule = 1.0, **kwargs: Any
) -> dict[str, str]:
    """Per group, the update and the numerics :func:`symmetry_compatible` would use with the
    same arguments (for run manifests), e.g. ``{'router': 'left_spectral(centered) [numerics
    pe_invsqrt(5 steps, float32)]', 'experts': 'muon(experts: gate|up joint, reference
    factors)', ...}``. Custom transforms read ``'custom'``.

    Example:
      >>> from optzoo.symmetric_stack import symmetry_compatible_numerics
      >>> print(symmetry_compatible_numerics(preset='olmoe_left')['router'])
      left_spectral(centered) [numerics pe_invsqrt(5 steps, float32)]
    """
    return _plan_details(_options(learning_rate, kwargs))[1]


#: The arguments ``optax.inject_hyperparams`` cannot trace (the preset and the per-group choices,
#: rules, the head size, iteration counts, dtypes, the fallback): pass
#: ``static_args=symmetry_compatible.static_args``.
symmetry_compatible.static_args = (
    "preset",
    "embedding",
    "lm_head",
    "router",
    "mlp",
    "experts",
    "attention",
    "other_matrices",
    "vectors",
    "rules",
    "head_dim",
    "lr_multipliers",
    "gram_method",
    "hybrid_order",
    "nu_scope",
    "ortho_method",
    "ns_steps",
    "ortho_dtype",
    "fallback",
    "mu_dtype",
    "owner_computes",
    "numerics",
    "numerics_steps",
    "numerics_dtype",
    "experts_gate_up",
    "expert_shape_factor",
)
