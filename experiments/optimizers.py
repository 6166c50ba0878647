"""Optimizers of the harness: a table of optimizer families, one routing decision, one builder.

:func:`build_optimizer` turns an :class:`~experiments.configs.OptimizerConfig` into::

    skip_nonfinite(                                      # cfg.guard_nonfinite
      chain(clip_by_global_norm(grad_clip),              # cfg.grad_clip
            inject_hyperparams(routed)(learning_rate=peak * unit(count), ...)))

    routed(**hyperparameters) = optzoo.routing.by_role({group: chain(
        plan[group],                                     # the family's update of the group
        scale(lr_multiplier[group]),                     # cfg.lr_multipliers, if any
        scale_by_schedule(lr_factor_<group>))})          # cfg.group_schedules, if any

**One routing decision.** Which leaves are embeddings, hidden matrices, routers or vectors is
decided by ``optzoo.routing`` alone (its default rules, on the whole parameter tree):
``by_role`` sends every leaf to its group's branch, and the per-group metrics, learning-rate
multipliers and schedules use the same groups (:func:`param_groups`). A family's plan gives
each group (:data:`optzoo.routing.GROUPS`) its transform; a transform meant for matrices reads
every leaf of its branch as a matrix (``MatrixLayout()``, leading axes = batch axes).

**Learning rates** are hyperparameters injected by ``optax.inject_hyperparams`` (float32), so
the optimizer state holds the rate of the current step: :func:`learning_rates` reads it for
the metrics. ``learning_rate`` is ``peak × unit(count)`` (:func:`unit_schedule`: ``'wsd'`` =
``optzoo.schedules.warmup_stable_decay``, linear cooldown; ``'d2z'`` =
``optzoo.schedules.linear_warmup_d2z``; ``'cosine'`` = ``optax.warmup_cosine_decay_schedule``
to 10% of the peak; ``'constant'`` = warmup then flat); Muon's ``fallback_learning_rate``
(with ``adam_lr``) follows the same unit schedule. Inside the branches each rate is the
constant schedule of its injected value, so every transform scales by it in each update's
dtype. With ``group_schedules`` the optimizer runs at the constant peak and each group's update
is then multiplied by its own unit schedule (``lr_factor`` for the main one,
``lr_factor_<group>`` for a group with a schedule of its own; :func:`group_unit_schedule`):
exact, since every update here is linear in its learning rate.

How each config field maps onto each family (``b1``, ``b2``, ``eps`` are the AdamW moments
wherever Adam(W) runs; the momenta of Lion and Muon keep their papers' defaults unless given in
``options``: ``('b1', ...)`` for Lion, ``('beta', ...)`` for Muon; so swapping ``name`` in an
ablation never feeds Adam's ``b2`` to Lion):

===========================  ====================================================================
name                         groups
===========================  ====================================================================
``adamw``                    every group: ``optax.adamw(lr, b1, b2, eps, weight_decay, mask =
                             ndim >= 2)``
``lion``                     every group: ``optzoo.lion(lr, weight_decay, mask = ndim >= 2)``
                             (Lion's b1 = 0.9, b2 = 0.99)
``galore``                   attention, MLP, experts: ``optzoo.galore(lr, rank=32, b1, b2, eps,
                             weight_decay, weight_decay_mask = ndim >= 2)``; embeddings, head,
                             router, positions and vectors: the same call reading no leaf as
                             a matrix, i.e. its full-rank Adam (the GaLore paper's setting)
``natural_galore``,          as ``galore``
``online_subspace_descent``
``muon``                     attention, MLP, experts: ``optzoo.muon(lr, weight_decay)`` (beta
                             0.95, Jordan's shape factor ``sqrt(max(1, fan_out/fan_in))``);
                             embeddings, head, positions, router, vectors: Muon's AdamW fallback
                             ``optzoo.fallback.AdamW(learning_rate = adam_lr (None: 0.015 x
                             Muon's rate), b1, b2, eps)``, no weight decay
``symmetric``                ``optzoo.symmetric_stack.symmetry_compatible_plan(lr,
                             preset='paper', head_dim = the model's, fallback =
                             optzoo.fallback.AdamW(b1, b2, eps), weight_decay =
                             vector_weight_decay = weight_decay)``: ``lr`` is the hidden-matrix
                             rate, the other groups use the preset's multiples
===========================  ====================================================================

``cfg.options`` pass any other keyword of the family's function (checked against its
signature). ``build_optimizer(..., owner_computes=optzoo.OwnerComputes(mesh))`` (what the harness
passes for ``ShardingConfig.owner_computes=True``) hands the object to the families that take it
(:func:`supports_owner_computes`: Muon, the symmetric stack): each matrix's orthogonalization
then runs on one owner device of the mesh instead of on every device.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optzoo
from experiments.configs import OptimizerConfig
from experiments.configs.base import OPTIMIZER_NAMES
from optzoo import fallback as fallback_lib
from optzoo import routing, schedules, symmetric_stack
from optzoo.layout import MatrixLayout

__all__ = [
    "HIDDEN_GROUPS",
    "OPTIMIZERS",
    "Family",
    "Rates",
    "block_updates",
    "build_optimizer",
    "group_unit_schedule",
    "learning_rates",
    "optimizer_call",
    "param_groups",
    "plan",
    "skipped_steps",
    "supports_owner_computes",
    "unit_schedule",
    "with_model_defaults",
]

GROUPS = routing.GROUPS
#: Groups Muon (and GaLore's projection) is applied to.
HIDDEN_GROUPS = ("attention", "mlp", "experts")


# ----------------------------------------------------------------------------- routing
def param_groups(params: Any) -> Any:
    """A tree (structure of ``params``) of group names: ``optzoo.routing``'s role of each leaf
    (rules matched on the whole tree), mapped to its group.

    Raises:
      ValueError: naming the path of a leaf no rule covers.
    """
    return jax.tree.map(lambda role: routing.ROLE_GROUPS[role], routing.classify(params))


# ----------------------------------------------------------------------------- schedules
def unit_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """The schedule shape with peak 1 (see the module docstring)."""
    w = cfg.warmup_steps
    if cfg.schedule == "wsd":
        return schedules.warmup_stable_decay(
            1.0, total_steps, warmup_steps=w, cooldown_fraction=cfg.cooldown_fraction
        )
    if cfg.schedule == "d2z":
        return schedules.linear_warmup_d2z(1.0, total_steps, warmup_steps=w)
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, max(w, 0), total_steps, end_value=0.1)
    if cfg.schedule == "constant":
        return schedules.warmup_stable_decay(
            1.0, max(total_steps, w + 1), warmup_steps=w, cooldown_fraction=0.0
        )
    raise ValueError(
        f"OptimizerConfig.schedule={cfg.schedule!r}; expected one of "
        "'wsd', 'd2z', 'cosine', 'constant'"
    )


def group_unit_schedule(cfg: OptimizerConfig, group: str, total_steps: int) -> optax.Schedule:
    """The unit (peak 1) schedule of one parameter group: ``cfg.group_schedules``' entry for
    ``group``, else the main ``schedule`` / ``warmup_steps``. ``'cosine_zero'`` is linear
    warmup over ``w`` steps then ``(1 + cos(pi (t - w) / (T - w))) / 2`` (Hugging Face
    ``get_cosine_schedule_with_warmup``, ``num_cycles=0.5``)."""
    schedule, warmup = cfg.group_schedule(group)
    if schedule == "cosine_zero":
        return optax.warmup_cosine_decay_schedule(
            0.0, 1.0, warmup, max(total_steps, warmup + 1), end_value=0.0
        )
    return unit_schedule(
        dataclasses.replace(cfg, schedule=schedule, warmup_steps=warmup), total_steps
    )


def _scaled(peak: float, unit: optax.Schedule) -> optax.Schedule:
    peak = float(peak)
    return lambda count: peak * unit(count)


def _constant(value: Any) -> optax.Schedule | None:
    """The constant schedule of an injected value (``None`` stays ``None``): optax casts a
    schedule's value to each update's dtype, where a float32 scalar would promote bfloat16
    updates to float32."""
    return None if value is None else (lambda count: value)


def _hyperparameters(cfg: OptimizerConfig, total_steps: int) -> dict[str, optax.Schedule]:
    """What :func:`build_optimizer` injects (see the module docstring)."""
    if not cfg.group_schedules:
        unit = unit_schedule(cfg, total_steps)
        out = {}
    else:
        unit = unit_schedule(
            dataclasses.replace(cfg, schedule="constant", warmup_steps=0), total_steps
        )
        out = {"lr_factor": unit_schedule(cfg, total_steps)}
        out.update(
            {
                f"lr_factor_{g}": group_unit_schedule(cfg, g, total_steps)
                for g, _, _ in cfg.group_schedules
            }
        )
    out["learning_rate"] = _scaled(cfg.learning_rate, unit)
    if cfg.name == "muon" and cfg.adam_lr is not None:
        out["fallback_learning_rate"] = _scaled(cfg.adam_lr, unit)
    return out


# ----------------------------------------------------------------------------- families
class Rates(NamedTuple):
    """The learning rates a family's plan is built at (floats or schedules)."""

    learning_rate: Any
    fallback_learning_rate: Any = None


class Family(NamedTuple):
    """One optimizer of :data:`OPTIMIZERS`.

    Attributes:
      function: the optzoo / optax function ``cfg.options`` are keywords of.
      keywords: ``(cfg, rates, owner_computes) -> {keyword: value}``, what the config's fields
        set (the options are added and checked by :func:`_keywords`).
      plan: ``(rates, keywords) -> {group: routing.Assignment}`` for every group.
      owner_computes: whether ``function`` takes ``owner_computes``.
    """

    function: Callable[..., optax.GradientTransformation]
    keywords: Callable[[OptimizerConfig, Rates, Any], dict[str, Any]]
    plan: Callable[[Rates, dict[str, Any]], dict[str, routing.Assignment]]
    owner_computes: bool = False


def _matrix_mask(params: Any) -> Any:
    return jax.tree.map(lambda x: np.ndim(x) >= 2, params)


def _everywhere(name: str, tx: optax.GradientTransformation) -> dict[str, routing.Assignment]:
    return {g: routing.Assignment(tx, name) for g in GROUPS}


def _hidden_and_rest(
    hidden: routing.Assignment, rest: routing.Assignment
) -> dict[str, routing.Assignment]:
    return {g: hidden if g in HIDDEN_GROUPS else rest for g in GROUPS}


def _adam_moments(cfg: OptimizerConfig) -> dict[str, float]:
    return dict(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)


def _adamw_keywords(cfg, rates, owner):
    return dict(_adam_moments(cfg), weight_decay=cfg.weight_decay, mask=_matrix_mask)


def _adamw_plan(rates, kw):
    return _everywhere("adamw", optax.adamw(rates.learning_rate, **kw))


def _lion_keywords(cfg, rates, owner):
    return dict(weight_decay=cfg.weight_decay, mask=_matrix_mask)


def _lion_plan(rates, kw):
    return _everywhere("lion", optzoo.lion(rates.learning_rate, **kw))


def _low_rank_keywords(cfg, rates, owner):
    rank = {} if "rank" in dict(cfg.options) else {"rank": 32}
    return dict(
        _adam_moments(cfg),
        **rank,
        weight_decay=cfg.weight_decay,
        weight_decay_mask=_matrix_mask,
        layout=MatrixLayout(),
    )


def _no_matrices(params: Any) -> Any:
    """A layout tree reading no leaf as a matrix: a low-rank method's full-rank Adam path."""
    return jax.tree.map(lambda _: None, params)


def _low_rank(name: str, fn: Callable) -> Family:
    def plan(rates, kw):
        full_rank = fn(rates.learning_rate, **{**kw, "layout": _no_matrices})
        return _hidden_and_rest(
            routing.Assignment(fn(rates.learning_rate, **kw), name),
            routing.Assignment(full_rank, "adam (full rank)"),
        )

    return Family(fn, _low_rank_keywords, plan)


def _muon_keywords(cfg, rates, owner):
    fallback = fallback_lib.AdamW(learning_rate=rates.fallback_learning_rate, **_adam_moments(cfg))
    return dict(
        weight_decay=cfg.weight_decay,
        layout=MatrixLayout(),
        fallback=fallback,
        owner_computes=owner,
    )


def _muon_plan(rates, kw):
    fallback = kw["fallback"].build(rates.learning_rate, kw.get("mu_dtype"))
    return _hidden_and_rest(
        routing.Assignment(optzoo.muon(rates.learning_rate, **kw), "muon"),
        routing.Assignment(fallback, "adamw (fallback)"),
    )


def _symmetric_keywords(cfg, rates, owner):
    return dict(
        fallback=fallback_lib.AdamW(**_adam_moments(cfg)),
        weight_decay=cfg.weight_decay,
        vector_weight_decay=cfg.weight_decay,
        owner_computes=owner,
    )


def _symmetric_plan(rates, kw):
    return symmetric_stack.symmetry_compatible_plan(rates.learning_rate, **kw)


#: name -> :class:`Family` (the names are :data:`experiments.configs.OPTIMIZER_NAMES`).
OPTIMIZERS: dict[str, Family] = {
    "adamw": Family(optax.adamw, _adamw_keywords, _adamw_plan),
    "lion": Family(optzoo.lion, _lion_keywords, _lion_plan),
    "galore": _low_rank("galore", optzoo.galore),
    "natural_galore": _low_rank("natural_galore", optzoo.natural_galore),
    "online_subspace_descent": _low_rank("online_subspace_descent", optzoo.online_subspace_descent),
    "muon": Family(optzoo.muon, _muon_keywords, _muon_plan, owner_computes=True),
    "symmetric": Family(
        optzoo.symmetry_compatible, _symmetric_keywords, _symmetric_plan, owner_computes=True
    ),
}
assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES, "the table and the config's names must agree"


def supports_owner_computes(cfg: OptimizerConfig) -> bool:
    """Whether the family of ``cfg`` takes an ``optzoo.OwnerComputes``."""
    return OPTIMIZERS[cfg.name].owner_computes


def _keywords(cfg: OptimizerConfig, rates: Rates, owner_computes: Any = None) -> dict:
    """The family's keywords for ``cfg`` plus ``cfg.options``, every option checked against
    the function's signature (not the learning rate, not a keyword the config sets)."""
    family = OPTIMIZERS[cfg.name]
    fixed = family.keywords(cfg, rates, owner_computes)
    allowed = [
        p
        for p in inspect.signature(family.function).parameters
        if p != "learning_rate" and p not in fixed
    ]
    for key, _ in cfg.options:
        if key not in allowed:
            raise ValueError(
                f"OptimizerConfig.options: {key!r} is not an option of "
                f"{cfg.name!r} (set by the config or unknown); expected one of "
                f"{allowed}"
            )
    return {**fixed, **dict(cfg.options)}


def plan(
    cfg: OptimizerConfig,
    rates: Rates | None = None,
    owner_computes: Any = None,
    factors: Mapping[str, Any] | None = None,
) -> dict[str, routing.Assignment]:
    """Every group's branch (``routing.Assignment``: transform, name, learning-rate
    multiplier) of the routed optimizer of ``cfg``: the family's plan at ``rates`` (default:
    the peak rates) followed by the group's ``lr_multipliers`` entry and, when ``factors``
    (``{group: factor}``) is given, the group's learning-rate factor.

    Groups whose branches are the same (one family transform, multiplier and factor) get the
    same transform object: one update over all their leaves."""
    rates = Rates(cfg.learning_rate, cfg.adam_lr) if rates is None else rates
    base = OPTIMIZERS[cfg.name].plan(rates, _keywords(cfg, rates, owner_computes))
    multipliers = dict(cfg.lr_multipliers)
    shared: dict[tuple, optax.GradientTransformation] = {}
    out = {}
    for group in GROUPS:
        a = base[group]
        mult = multipliers.get(group, 1.0)
        factor = None if factors is None else factors[group]
        key = (id(a.transform), mult, id(factor))
        if key not in shared:
            parts = [a.transform]
            if mult != 1.0:
                parts.append(optax.scale(mult))
            if factor is not None:
                parts.append(optax.scale_by_schedule(_constant(factor)))
            shared[key] = parts[0] if len(parts) == 1 else optax.chain(*parts)
        shown = (
            None
            if a.lr_multiplier is None and group not in multipliers
            else ((1.0 if a.lr_multiplier is None else a.lr_multiplier) * mult)
        )
        out[group] = routing.Assignment(shared[key], a.name, shown)
    return out


def with_model_defaults(cfg: OptimizerConfig, model_cfg: Any) -> OptimizerConfig:
    """``cfg`` with model-dependent options filled in: the symmetric stack's ``head_dim``
    (head-wise Muon on attention) from the model config, unless given."""
    if cfg.name == "symmetric" and "head_dim" not in dict(cfg.options):
        return dataclasses.replace(cfg, options=cfg.options + (("head_dim", model_cfg.head_dim),))
    return cfg


# ----------------------------------------------------------------------------- builder
def build_optimizer(
    cfg: OptimizerConfig, params: Any, total_steps: int, *, owner_computes: Any = None
) -> optax.GradientTransformation:
    """The optimizer of ``cfg`` (module docstring): clipping, the routed families with their
    multipliers and per-group schedules, the injected learning rates and the non-finite guard.

    Args:
      cfg: the optimizer config.
      params: the parameter tree (arrays or ``ShapeDtypeStruct``; shapes and paths are read
        to check that routing covers every leaf).
      total_steps: run length (for the schedules).
      owner_computes: an ``optzoo.OwnerComputes`` for the families that take one
        (:func:`supports_owner_computes`), else ``None``.

    Raises:
      ValueError: an unknown option, a parameter no routing rule covers (named), or
        ``owner_computes`` for a family without it.
    """
    param_groups(params)  # coverage: raises naming an uncovered leaf
    if owner_computes is not None and not supports_owner_computes(cfg):
        raise ValueError(
            f"build_optimizer: owner_computes given, but optimizer {cfg.name!r} "
            "takes no owner_computes keyword"
        )
    plan(cfg, owner_computes=owner_computes)  # every option checked before any init
    try:
        hash(owner_computes)
    except TypeError:
        return _build.__wrapped__(cfg, int(total_steps), owner_computes)
    return _build(cfg, int(total_steps), owner_computes)


@functools.lru_cache(maxsize=16)
def _build(
    cfg: OptimizerConfig, total_steps: int, owner_computes: Any = None
) -> optax.GradientTransformation:
    # Cached per (config, steps, owner): the transform depends on the parameters only through
    # the trees it is given at init/update, and one object per config lets jitted steps that
    # close over it be reused across runs in a process (seeds of a sweep, resumed runs).
    def routed(learning_rate, fallback_learning_rate=None, lr_factor=None, **group_factors):
        rates = Rates(_constant(learning_rate), _constant(fallback_learning_rate))
        factors = (
            None
            if lr_factor is None
            else {g: group_factors.get(f"lr_factor_{g}", lr_factor) for g in GROUPS}
        )
        return routing.by_role(plan(cfg, rates, owner_computes, factors))

    hyperparameters = _hyperparameters(cfg, total_steps)
    # inject_hyperparams binds its arguments to the factory's signature: name each one
    routed.__signature__ = inspect.Signature(
        [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY) for k in hyperparameters]
    )
    tx = optax.inject_hyperparams(routed, hyperparam_dtype=jnp.float32)(**hyperparameters)
    if cfg.grad_clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    if cfg.guard_nonfinite:
        tx = optzoo.skip_nonfinite(tx)
    return tx


def _value(x: Any) -> Any:
    get = getattr(x, "get_value", None)  # an nnx.Variable inside nnx.Optimizer
    return x if get is None else get()


def skipped_steps(opt_state: Any) -> Any:
    """The ``skipped`` counter of an outermost ``optzoo.skip_nonfinite`` state, or ``None``."""
    value = getattr(opt_state, "skipped", None)
    return None if value is None else _value(value)


def learning_rates(opt_state: Any) -> dict[str, jax.Array]:
    """The learning rates of the last update, from the state of :func:`build_optimizer`'s
    ``inject_hyperparams``: ``lr`` (the main rate: ``learning_rate``, times ``lr_factor``
    with ``group_schedules``) and ``lr_factor/<group>`` for each group with a schedule of its
    own."""
    hp = {k: _value(v) for k, v in optax.tree_utils.tree_get(opt_state, "hyperparams").items()}
    lr = hp["learning_rate"] * hp["lr_factor"] if "lr_factor" in hp else hp["learning_rate"]
    return {
        "lr": lr,
        **{
            f"lr_factor/{k[len('lr_factor_') :]}": v
            for k, v in hp.items()
            if k.startswith("lr_factor_")
        },
    }


# ----------------------------------------------------------------------------- manifest
def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    name = getattr(value, "__name__", None)
    return name if isinstance(name, str) else repr(value)


def optimizer_call(cfg: OptimizerConfig) -> dict:
    """What the family calls, for the manifest: ``{'factory', 'function', 'learning_rate',
    'schedule', 'group_schedules', 'kwargs' (everything the config passes: the family's
    fixed mapping and ``options``, the preset name included), 'defaults' (the function's other
    keyword defaults, so that any numerics keyword in effect is recorded even when the config
    does not name it)}``."""
    fn = OPTIMIZERS[cfg.name].function
    kwargs = _keywords(cfg, Rates(cfg.learning_rate, cfg.adam_lr))
    kwargs.pop("owner_computes", None)
    params = inspect.signature(fn).parameters
    return {
        "factory": cfg.name,
        "function": f"{fn.__module__}.{fn.__qualname__}",
        "learning_rate": cfg.learning_rate,
        "schedule": [cfg.schedule, cfg.warmup_steps],
        "group_schedules": {g: list(cfg.group_schedule(g)) for g in GROUPS},
        "kwargs": _jsonable(kwargs),
        "defaults": {
            k: _jsonable(p.default)
            for k, p in params.items()
            if k not in kwargs
            and k not in ("learning_rate", "owner_computes")
            and p.default is not inspect.Parameter.empty
        },
    }


_NUMERICS_WORDS = (
    "numerics",
    "ortho",
    "ns_",
    "gram",
    "polar",
    "inv",
    "steps",
    "coeff",
    "dtype",
    "iter",
    "method",
)


def block_updates(params: Any, cfg: OptimizerConfig) -> list[dict]:
    """One row per parameter leaf for the manifest: ``path``, ``shape``, ``role``, ``group``,
    ``transform`` (the name of its group's branch in :func:`plan`; for the symmetric stack
    the names of ``symmetry_compatible_plan``'s assignments), ``lr_multiplier``, ``schedule``
    (``[name, warmup]``) and ``numerics`` (the numerics-related keywords in effect, from
    :func:`optimizer_call`: those naming no group, or naming this leaf's group; empty for
    AdamW / row-norm / Lion maps, which have no iterative part)."""
    call = optimizer_call(cfg)
    effective = {**call["defaults"], **call["kwargs"]}
    numeric = {k: v for k, v in effective.items() if any(w in k.lower() for w in _NUMERICS_WORDS)}
    out = []
    for row in routing.report(params, None, plan(cfg)).rows:
        group = routing.ROLE_GROUPS[row.role]
        name = str(row.transform)
        iterative = not any(w in name for w in ("adam", "rownorm", "lion")) or "muon" in name
        mine = {k: v for k, v in numeric.items() if not any(g in k for g in GROUPS if g != group)}
        out.append(
            {
                "path": row.path,
                "shape": list(row.shape),
                "role": row.role,
                "group": group,
                "transform": name,
                "lr_multiplier": row.lr_multiplier,
                "schedule": list(cfg.group_schedule(group)),
                "numerics": mine if iterative else {},
            }
        )
    return out
