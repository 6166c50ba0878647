"""The layerwise symmetry-compatible optimizer: one map per parameter role (Lau & Su, 2026).

:func:`symmetry_compatible` classifies every parameter with :mod:`optzoo.routing` and gives
each role group the update compatible with its symmetry group (ALGORITHMS.md §1.6):

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
drives every group, scaled by the multipliers — pass a GradientTransformation for ``vectors``
to give it another schedule. The released presets also default to the reference's numerics
(``numerics='reference'``) and expert handling (joint OLMoE gate|up, the reference's shape
factors); :func:`symmetry_compatible_numerics` names, per group, what a configuration uses
(for run manifests). Head-wise attention Muon uses Jordan's factor per head block, as the
reference's ``MuonHeadsPolarExpress`` (``o_proj`` head blocks ``(d_h, d)``: ``√(d/d_h)``; a
whole ``o_proj`` matrix: 1).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optzoo import _checks, _partition, routing
from optzoo._symmetric_core import (
    NUMERICS,
    check_choice,
    pair_rows,
    resolve_numerics,
    unit_layout,
    unpair_rows,
)
from optzoo._tree import path_str
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

__all__ = ["PRESETS", "NUMERICS", "EXPERT_GATE_UP", "EXPERT_SHAPE_FACTORS",
           "preset_learning_rates", "symmetry_compatible_plan", "symmetry_compatible_numerics",
           "symmetry_compatible"]

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


def _released(embedding, lm_head, mlp, router, lrs, *, gate_up="auto", numerics="reference",
              factor="reference"):
    hidden = lrs["hidden"]
    mult = {g: lrs[g] / hidden for g in ("embedding", "lm_head", "router", "vectors")}
    choices = dict(embedding=embedding, lm_head=lm_head, router=router, mlp=mlp,
                   experts="muon", attention="muon", other_matrices="muon", vectors="adamw")
    return dict(choices=choices, learning_rate=hidden, multipliers=mult, numerics=numerics,
                experts_gate_up=gate_up, expert_shape_factor=factor)


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
    "paper": _released("row", "row", "muon", "row", dict(_QWEN3, embedding=5e-1, lm_head=5e-3),
                       numerics="exact", factor="jordan"),
    "qwen3_row": _released("row", "row", "muon", "row",
                           dict(_QWEN3, embedding=5e-1, lm_head=5e-3)),
    "qwen3_hybrid": _released("hybrid", "hybrid", "muon", "row",
                              dict(_QWEN3, embedding=1.0, lm_head=1e-2)),
    "qwen3_adamw": _released("adamw", "adamw", "muon", "row",
                             dict(_QWEN3, embedding=1e-1, lm_head=1e-3)),
    "qwen3_swiglu_row": _released("row", "row", "hybrid", "row",
                                  dict(_QWEN3, embedding=5e-1, lm_head=5e-3)),
    "qwen3_swiglu_hybrid": _released("hybrid", "hybrid", "hybrid", "row",
                                     dict(_QWEN3, embedding=1.0, lm_head=1e-2)),
    "qwen3_swiglu_adamw": _released("adamw", "adamw", "hybrid", "row",
                                    dict(_QWEN3, embedding=1e-1, lm_head=1e-3)),
    "gemma3_row": _released("row", "row", "muon", "row",
                            dict(_GEMMA3, embedding=2.5e-3, lm_head=2.5e-3)),
    "gemma3_hybrid": _released("hybrid", "hybrid", "muon", "row",
                               dict(_GEMMA3, embedding=2.5e-3, lm_head=2.5e-3)),
    "gemma3_adamw": _released("adamw", "adamw", "muon", "row",
                              dict(_GEMMA3, embedding=5e-4, lm_head=5e-4)),
    "gemma3_swiglu_row": _released("row", "row", "hybrid", "row",
                                   dict(_GEMMA3, embedding=5e-3, lm_head=5e-3)),
    "gemma3_swiglu_hybrid": _released("hybrid", "hybrid", "hybrid", "row",
                                      dict(_GEMMA3, embedding=1e-2, lm_head=1e-2)),
    "gemma3_swiglu_adamw": _released("adamw", "adamw", "hybrid", "row",
                                     dict(_GEMMA3, embedding=5e-4, lm_head=5e-4)),
    "olmoe_row": _released("row", "row", "muon", "row",
                           dict(_OLMOE, embedding=5e-1, lm_head=5e-3), gate_up="joint"),
    "olmoe_left": _released("row", "row", "muon", "left",
                            dict(_OLMOE, embedding=5e-1, lm_head=5e-3), gate_up="joint"),
    "olmoe_adamw_router": _released("row", "row", "muon", "adamw",
                                    dict(_OLMOE, embedding=5e-1, lm_head=5e-3), gate_up="joint"),
    "olmoe_adamw": _released("adamw", "adamw", "muon", "adamw",
                             dict(_OLMOE, embedding=5e-4, lm_head=5e-4), gate_up="joint"),
    "gptoss_row": _released("row", "row", "muon", "row",
                            dict(_GPTOSS, embedding=1e-1, lm_head=1e-3), gate_up="split"),
    "gptoss_left": _released("row", "row", "muon", "left",
                             dict(_GPTOSS, embedding=1e-1, lm_head=1e-3), gate_up="split"),
    "gptoss_adamw_router": _released("row", "row", "muon", "adamw",
                                     dict(_GPTOSS, embedding=1e-1, lm_head=1e-3), gate_up="split"),
    "gptoss_adamw": _released("adamw", "adamw", "muon", "adamw",
                              dict(_GPTOSS, embedding=5e-4, lm_head=5e-4), gate_up="split"),
}


def preset_learning_rates(preset: str) -> dict[str, float]:
    """Absolute learning rates of a released preset per group (``learning_rate`` × multiplier)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    return {g: p["learning_rate"] * p["multipliers"].get(g, 1.0) for g in routing.GROUPS}


# ------------------------------------------------------------------------------ views
class _View(NamedTuple):
    fwd: Callable[[jax.Array], jax.Array]
    inv: Callable[[jax.Array], jax.Array]


def _split_to_front(shape: tuple[int, ...], axis: int, parts: int, interleaved: bool):
    """Splits ``axis`` into ``parts`` blocks and moves the block index to the front."""
    size = shape[axis] // parts
    inner = (size, parts) if interleaved else (parts, size)
    split = shape[:axis] + inner + shape[axis + 1:]
    src = axis + 1 if interleaved else axis

    def fwd(x):
        return jnp.moveaxis(x.reshape(split), src, 0)

    def inv(y):
        return jnp.moveaxis(y, 0, src).reshape(shape)

    moved = (split[src],) + split[:src] + split[src + 1:]
    return fwd, inv, moved


def _matrix_view(lay: MatrixLayout, shape: tuple[int, ...]) -> _View:
    return _View(lay.to_matrix, lambda y: lay.from_matrix(y, shape))


def _muon_view(rule: routing.Rule, lay: MatrixLayout, shape: tuple[int, ...], path: str,
               head_dim: int | None, split_pairs: bool = True,
               transpose: bool = False) -> _View:
    """``(batch, fan_in, fan_out)`` blocks: heads and fused gate|up halves become batch.

    ``split_pairs=False`` keeps a fused gate|up axis whole (one joint polar factor per
    matrix); ``transpose=True`` presents each block as ``(fan_out, fan_in)`` (the polar factor
    is the transpose, only Muon's shape factor ``√max(1, cols/rows)`` changes).
    """
    ndim = len(shape)
    split = None
    if rule.head_axis is not None and head_dim is not None:
        axis = rule.head_axis % ndim
        if rule.layout is not None or axis < ndim - 2:
            raise ValueError(f"symmetry_compatible: head split of '{path}' needs the head axis "
                             f"among the last two axes of a default layout; got head_axis "
                             f"{rule.head_axis} for shape {shape}")
        if shape[axis] % head_dim:
            raise ValueError(f"symmetry_compatible: parameter '{path}' of shape {shape}: axis "
                             f"{rule.head_axis} (size {shape[axis]}) is not a multiple of "
                             f"head_dim={head_dim}")
        split = (axis, shape[axis] // head_dim, False)
    elif rule.gate_up_pair is not None and split_pairs:
        axis = rule.unit_axis % ndim
        split = (axis, 2, rule.gate_up_pair == "interleaved")
    if split is None:
        view = _matrix_view(lay, shape)
    else:
        fwd, inv, moved = _split_to_front(shape, *split)
        inner = _matrix_view(MatrixLayout(), moved)
        view = _View(lambda x: inner.fwd(fwd(x)), lambda y: inv(inner.inv(y)))
    if not transpose:
        return view
    return _View(lambda x: jnp.swapaxes(view.fwd(x), -1, -2),
                 lambda y: view.inv(jnp.swapaxes(y, -1, -2)))


_GATE_TO_UP = {"gate_proj": "up_proj", "w1": "w3", "wi_0": "wi_1"}
_GATE_LEAF = re.compile(r"(^|/)(gate_proj|w1|wi_0)(/kernel)?$")


def _gate_up_partner(path: str) -> str | None:
    """Path of the ``up`` sibling of a separate expert ``gate`` leaf (``None`` if not a gate)."""
    m = _GATE_LEAF.search(path)
    if m is None:
        return None
    return path[:m.start(2)] + _GATE_TO_UP[m.group(2)] + (m.group(3) or "")


def _unit_view(rule: routing.Rule, lay: MatrixLayout, shape: tuple[int, ...],
               path: str) -> _View:
    """``(batch, units, features)`` stack with the units as rows (fused pairs joined)."""
    if lay.unit_axis is None:
        raise ValueError(f"symmetry_compatible: role {rule.role!r} of '{path}' (shape {shape}) "
                         "needs a unit_axis in its routing rule for a row / spectral map")
    ulay = unit_layout(lay, shape, None, path, "symmetry_compatible", rule.gate_up_pair)
    pair = rule.gate_up_pair
    return _View(lambda x: pair_rows(ulay.to_matrix(x), pair),
                 lambda y: ulay.from_matrix(unpair_rows(y, pair), shape))


def _viewed(inner: optax.GradientTransformation,
            view_for: Callable[[str, tuple[int, ...]], _View],
            pair_for: Callable[[str], str | None] | None = None) -> optax.GradientTransformation:
    """Runs ``inner`` on per-leaf views of the updates and maps its output back.

    ``inner`` must be a direction (params-free) transform: it receives ``params=None``.
    ``pair_for(path)`` may name a sibling leaf whose view is concatenated to this leaf's along
    the last axis (one joint matrix, e.g. an expert's ``[gate | up]``); the inner transform
    then sees a flat dict of the (joined) views, and its output is split back.
    """

    def to_views(tree):
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
        # normalized ('/value' of an nnx.State dropped): init and update must pair alike
        paths = [routing.normalize_path(path_str(p)) for p, _ in paths_leaves]
        leaves = [x for _, x in paths_leaves]
        views = [view_for(path, tuple(jnp.shape(x))) for path, x in zip(paths, leaves,
                                                                          strict=True)]
        viewed = [v.fwd(x) for x, v in zip(leaves, views, strict=True)]
        pairs = {}
        if pair_for is not None:
            index = {path: i for i, path in enumerate(paths)}
            for i, path in enumerate(paths):
                j = index.get(pair_for(path) or "")
                if j is not None and j != i and viewed[i].shape == viewed[j].shape:
                    pairs[i] = j
        if not pairs:
            return treedef.unflatten(viewed), views, leaves, treedef, None
        partners = set(pairs.values())
        joined = {}
        for i, x in enumerate(viewed):
            if i in partners:
                continue
            joined[f"{i:05d}"] = (jnp.concatenate([x, viewed[pairs[i]]], axis=-1)
                                  if i in pairs else x)
        return joined, views, leaves, treedef, pairs

    def init_fn(params):
        return inner.init(to_views(params)[0])

    def update_fn(updates, state, params=None):
        del params
        viewed, views, leaves, treedef, pairs = to_views(updates)
        out, state = inner.update(viewed, state, None)
        if pairs is None:
            outs = treedef.flatten_up_to(out)
        else:
            outs = [None] * len(leaves)
            for key, y in out.items():
                i = int(key)
                if i in pairs:
                    half = y.shape[-1] // 2
                    outs[i], outs[pairs[i]] = y[..., :half], y[..., half:]
                else:
                    outs[i] = y
        back = [v.inv(y).astype(jnp.result_type(x))
                for v, y, x in zip(views, outs, leaves, strict=True)]
        return treedef.unflatten(back), state

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- the stack
def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _direction(group: str, choice: str, *, rules, head_dim, beta, muon_beta, alpha, eps,
               gram_eps, gram_method, hybrid_order, center_lm_head, nu_scope, ortho_method,
               ns_steps, ortho_dtype, adam_b1, adam_b2, adam_eps, mu_dtype, owner_computes,
               numerics, numerics_steps, numerics_dtype, experts_gate_up,
               expert_shape_factor):
    """``(direction transform, name, decays)`` for one group's string choice."""
    # every view is a (batch, rows, cols) stack: leading axes are batch axes by construction
    common = dict(nesterov=False, mu_dtype=mu_dtype, layout=MatrixLayout())
    spectral = dict(numerics=numerics, numerics_steps=numerics_steps,
                    numerics_dtype=numerics_dtype)
    center = {"embedding": False, "lm_head": center_lm_head, "router": choice != "left_uncentered"
              }.get(group, False)
    if choice == "adamw":  # float16 leaves: moments in float32 (_partition.float16_in_float32)
        adam = optax.scale_by_adam(b1=adam_b1, b2=adam_b2, eps=adam_eps, mu_dtype=mu_dtype)
        return _partition.float16_in_float32(adam), "adamw", True
    if choice == "muon":
        inner = scale_by_muon(muon_beta, nesterov=True, ortho_method=ortho_method,
                              ns_steps=ns_steps, ortho_dtype=ortho_dtype, shape_scale="jordan",
                              mu_dtype=mu_dtype, owner_computes=owner_computes,
                              layout=MatrixLayout())
        headwise = group == "attention" and head_dim is not None
        name = f"muon(head-wise, d_h={head_dim})" if headwise else "muon"
        experts = group == "experts"

        def joint(rule):
            if experts_gate_up == "auto":
                return rule.gate_up_pair == "concat"
            return experts_gate_up == "joint"

        def view_for(path, shape):
            rule = routing.rule_for(path, shape, rules)
            lay = rule.matrix_layout(path, shape)
            split_pairs, transpose = True, False
            if experts:
                split_pairs = not joint(rule)
                if expert_shape_factor == "reference":
                    if rule.role == "expert_down":
                        transpose = True
                    elif rule.role == "expert_gate_up":
                        # joint [gate | up] (d, 2f): Jordan's factor is the reference's
                        # (OLMoE, orientation row); split halves (d, f): the reference's
                        # gpt-oss factor √max(1, d/f), i.e. the transposed block's
                        is_joint = (not split_pairs if rule.gate_up_pair is not None
                                    else experts_gate_up == "joint")
                        transpose = not is_joint
            return _muon_view(rule, lay, shape, path, head_dim if headwise else None,
                              split_pairs=split_pairs, transpose=transpose)

        pair_for = _gate_up_partner if experts and experts_gate_up == "joint" else None
        return _viewed(inner, view_for, pair_for), name, True
    if choice == "row":
        inner = scale_by_rownorm(beta, unit_axis=-2, center=center, eps=eps, **common)
        name = "rownorm(centered)" if center else "rownorm"
    elif choice == "right":
        inner = scale_by_one_sided_spectral(beta, unit_axis=-2, center=center, alpha=alpha,
                                            eps=eps, gram_eps=gram_eps, gram_method=gram_method,
                                            nu_scope=nu_scope, owner_computes=owner_computes,
                                            **spectral, **common)
        name = "one_sided_spectral(centered)" if center else "one_sided_spectral"
    elif choice in ("left", "left_uncentered"):
        inner = scale_by_left_spectral(beta, unit_axis=-2, center=center, alpha=alpha, eps=eps,
                                       gram_eps=gram_eps, gram_method=gram_method,
                                       nu_scope=nu_scope, owner_computes=owner_computes,
                                       **spectral, **common)
        name = "left_spectral(centered)" if center else "left_spectral(uncentered)"
    else:  # hybrid
        inner = scale_by_hybrid(beta, unit_axis=-2, order=hybrid_order, alpha=alpha,
                                center=center, side="left" if group == "router" else "auto",
                                eps=eps, gram_eps=gram_eps, gram_method=gram_method,
                                nu_scope=nu_scope, owner_computes=owner_computes, **spectral,
                                **common)
        name = f"hybrid({hybrid_order}{', centered' if center else ''})"

    def unit_view_for(path, shape):
        rule = routing.rule_for(path, shape, rules)
        return _unit_view(rule, rule.matrix_layout(path, shape), shape, path)

    return _viewed(inner, unit_view_for), name, not center


def symmetry_compatible_plan(
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
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.95,
    adam_eps: jax.typing.ArrayLike = 1e-8,
    mu_dtype: jax.typing.DTypeLike | None = None,
    owner_computes: OwnerComputes | None = None,
    numerics: str | Mapping[str, str] | None = None,
    numerics_steps: int | None = None,
    numerics_dtype: jax.typing.DTypeLike | None = None,
    experts_gate_up: str | None = None,
    expert_shape_factor: str | None = None,
) -> dict[str, routing.Assignment]:
    """The per-group transforms of :func:`symmetry_compatible` as :class:`routing.Assignment`
    (for :func:`optzoo.routing.report`); same arguments.

    Example:
      >>> import jax.numpy as jnp
      >>> from optzoo import routing, symmetric_stack
      >>> params = {'embed': {'embedding': jnp.zeros((16, 8))}, 'lm_head': {'kernel':
      ...           jnp.zeros((8, 16))}, 'final_norm': {'scale': jnp.ones(8)}}
      >>> plan = symmetric_stack.symmetry_compatible_plan(2e-2)
      >>> print(routing.report(params, None, plan).rows[0][4:6])
      ('rownorm', 25.0)
    """
    return _plan_details(dict(locals()))[0]


def symmetry_compatible_numerics(learning_rate: optax.ScalarOrSchedule = 1.0,
                                 **kwargs: Any) -> dict[str, str]:
    """Per group, the update and the numerics :func:`symmetry_compatible` would use with the
    same arguments (for run manifests), e.g. ``{'router': 'left_spectral(centered) [numerics
    pe_invsqrt(5 steps, float32)]', 'experts': 'muon(experts: gate|up joint, reference
    factors)', ...}``. Custom transforms read ``'custom'``.

    Example:
      >>> from optzoo.symmetric_stack import symmetry_compatible_numerics
      >>> print(symmetry_compatible_numerics(preset='olmoe_left')['router'])
      left_spectral(centered) [numerics pe_invsqrt(5 steps, float32)]
    """
    return _plan_details(dict(kwargs, learning_rate=learning_rate))[1]


def _group_numerics(numerics: Any, group: str, choice: str, default: str) -> str:
    kind = _MAP_KINDS.get(choice)
    if isinstance(numerics, Mapping):
        for key in (group, kind):
            if key is not None and key in numerics:
                return numerics[key]
        return default
    return default if numerics is None else numerics


def _plan_details(kw: dict[str, Any]) -> tuple[dict[str, routing.Assignment], dict[str, str]]:
    """The plan of :func:`symmetry_compatible_plan` and the per-group descriptions."""
    defaults = dict(preset="paper", rules=None, head_dim=None, lr_multipliers=None,
                    weight_decay=1e-3, vector_weight_decay=1e-3, beta=0.95, muon_beta=0.95,
                    alpha=1.0, eps=1e-8, gram_eps=1e-6, gram_method="eigh",
                    hybrid_order="row_then_polar", center_lm_head=True, nu_scope="matrix",
                    ortho_method="polar_express", ns_steps=None, ortho_dtype=None, adam_b1=0.9,
                    adam_b2=0.95, adam_eps=1e-8, mu_dtype=None, owner_computes=None,
                    numerics=None, numerics_steps=None, numerics_dtype=None,
                    experts_gate_up=None, expert_shape_factor=None)
    unknown = set(kw) - set(defaults) - set(routing.GROUPS) - {"learning_rate"}
    if unknown:
        raise TypeError(f"symmetry_compatible: unknown keyword(s) {sorted(unknown)}")
    kw = {**defaults, **{g: None for g in routing.GROUPS}, **kw}
    learning_rate = kw["learning_rate"]
    preset, rules, head_dim = kw["preset"], kw["rules"], kw["head_dim"]
    lr_multipliers, owner_computes = kw["lr_multipliers"], kw["owner_computes"]
    hybrid_order = kw["hybrid_order"]
    what = "symmetry_compatible"
    check_owner_computes(owner_computes, what)
    check_choice(preset, "preset", tuple(PRESETS), what)
    check_choice(hybrid_order, "hybrid_order", HYBRID_ORDERS, what)
    if head_dim is not None and (isinstance(head_dim, bool) or not isinstance(
            head_dim, numbers.Integral) or head_dim < 1):
        raise TypeError(f"{what}: head_dim must be a positive Python int or None, got "
                        f"{head_dim!r}; under optax.inject_hyperparams list it in static_args")
    numerics = kw["numerics"]
    if isinstance(numerics, Mapping):
        for key, value in numerics.items():
            if key not in routing.GROUPS and key not in ("hybrid", "right", "left"):
                raise ValueError(f"{what}: numerics key {key!r} is neither a group "
                                 f"{list(routing.GROUPS)} nor a map ('hybrid', 'right', "
                                 "'left')")
            _checks.choice(value, f"numerics[{key!r}]", what, NUMERICS)
    elif numerics is not None:
        _checks.choice(numerics, "numerics", what, NUMERICS)
    _checks.integer(kw["numerics_steps"], "numerics_steps", what, lo=1, allow_none=True)
    _checks.float_dtype(kw["numerics_dtype"], "numerics_dtype", what)
    spec = PRESETS[preset]
    gate_up = spec["experts_gate_up"] if kw["experts_gate_up"] is None else kw["experts_gate_up"]
    _checks.choice(gate_up, "experts_gate_up", what, EXPERT_GATE_UP)
    factor = (spec["expert_shape_factor"] if kw["expert_shape_factor"] is None
              else kw["expert_shape_factor"])
    _checks.choice(factor, "expert_shape_factor", what, EXPERT_SHAPE_FACTORS)
    rules = routing.DEFAULT_RULES if rules is None else tuple(rules)
    given = {g: kw[g] for g in routing.GROUPS}
    multipliers = dict(spec["multipliers"])
    if lr_multipliers is not None:
        for key in lr_multipliers:
            if key not in routing.GROUPS:
                raise ValueError(f"{what}: lr_multipliers key {key!r} is not a group; expected "
                                 f"one of {list(routing.GROUPS)}")
        multipliers.update(lr_multipliers)
    opts = {k: kw[k] for k in ("head_dim", "beta", "muon_beta", "alpha", "eps", "gram_eps",
                               "gram_method", "hybrid_order", "center_lm_head", "nu_scope",
                               "ortho_method", "ns_steps", "ortho_dtype", "adam_b1", "adam_b2",
                               "adam_eps", "mu_dtype", "owner_computes", "numerics_steps",
                               "numerics_dtype")}
    opts.update(rules=rules, experts_gate_up=gate_up, expert_shape_factor=factor)
    plan, details = {}, {}
    for group in routing.GROUPS:
        choice = given[group] if given[group] is not None else spec["choices"][group]
        mult = multipliers.get(group, 1.0)
        if isinstance(choice, optax.GradientTransformation):
            plan[group] = routing.Assignment(choice, "custom", None)
            details[group] = "custom"
            continue
        check_choice(choice, group, _CHOICES[group], what)
        group_numerics = _group_numerics(numerics, group, choice, spec["numerics"])
        direction, name, decays = _direction(group, choice, numerics=group_numerics, **opts)
        if group == "experts" and choice == "muon":
            details[group] = (f"muon(experts: gate|up {gate_up}, {factor} shape factors, "
                              f"{kw['ortho_method']})")
        elif choice in _MAP_KINDS:
            steps = 5 if kw["numerics_steps"] is None else kw["numerics_steps"]
            num = resolve_numerics(group_numerics, _MAP_KINDS[choice], steps, None,
                                   kw["numerics_dtype"], what)
            details[group] = f"{name} [numerics {num.describe()}]"
        else:
            details[group] = name
        if group == "vectors":
            decay = kw["vector_weight_decay"]
        elif group in _HIDDEN:
            decay = kw["weight_decay"]
        else:
            decay = 0.0  # released: no decay on embeddings, LM heads, routers
        parts = [direction]
        if decays and not (_is_number(decay) and decay == 0):
            parts.append(optax.add_decayed_weights(decay))
        if not (_is_number(mult) and mult == 1):
            parts.append(optax.scale(mult))
        parts.append(optax.scale_by_learning_rate(learning_rate))
        plan[group] = routing.Assignment(optax.chain(*parts), name, float(mult)
                                         if _is_number(mult) else None)
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
    adam_b1: jax.typing.ArrayLike = 0.9,
    adam_b2: jax.typing.ArrayLike = 0.95,
    adam_eps: jax.typing.ArrayLike = 1e-8,
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
    orientation), AdamW (``adam_b1``, ``adam_b2``) for vectors. ``λ = weight_decay`` on the
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
      adam_b1: AdamW ``b1`` (vectors and ``'adamw'`` groups).
      adam_b2: AdamW ``b2``.
      adam_eps: AdamW ``eps``.
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
      ValueError: for an unknown preset / choice / multiplier key; at ``init``, naming the
        path, for an uncovered leaf, a bad rule layout, or a head axis not divisible by
        ``head_dim``.

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
    plan = symmetry_compatible_plan(
        learning_rate, preset=preset, embedding=embedding, lm_head=lm_head, router=router,
        mlp=mlp, experts=experts, attention=attention, other_matrices=other_matrices,
        vectors=vectors, rules=rules, head_dim=head_dim, lr_multipliers=lr_multipliers,
        weight_decay=weight_decay, vector_weight_decay=vector_weight_decay, beta=beta,
        muon_beta=muon_beta, alpha=alpha, eps=eps, gram_eps=gram_eps, gram_method=gram_method,
        hybrid_order=hybrid_order, center_lm_head=center_lm_head, nu_scope=nu_scope,
        ortho_method=ortho_method, ns_steps=ns_steps, ortho_dtype=ortho_dtype,
        adam_b1=adam_b1, adam_b2=adam_b2, adam_eps=adam_eps, mu_dtype=mu_dtype,
        owner_computes=owner_computes, numerics=numerics, numerics_steps=numerics_steps,
        numerics_dtype=numerics_dtype, experts_gate_up=experts_gate_up,
        expert_shape_factor=expert_shape_factor)
    return routing.by_role(plan, rules)

