"""Optimizer factories for the harness: an explicit table from names to optax transforms.

``OPTIMIZERS[name](cfg, params_abstract, total_steps) -> optax.GradientTransformation`` builds
the bare optimizer (with its learning-rate schedule) from an :class:`OptimizerConfig`;
:func:`build_optimizer` adds the harness wrappers::

    skip_nonfinite(                        # cfg.guard_nonfinite: NaN/Inf step skipped, counted
      chain(clip_by_global_norm(grad_clip), # cfg.grad_clip
            OPTIMIZERS[cfg.name](...),      # the optimizer, lr = peak * unit_schedule(step)
            scale_by_group(lr_multipliers)))  # per-role lr multipliers (cfg.lr_multipliers)

**Schedules** (:func:`unit_schedule`): ``'wsd'`` = ``optzoo.schedules.warmup_stable_decay``
(linear cooldown), ``'d2z'`` = ``optzoo.schedules.linear_warmup_d2z``, ``'cosine'`` =
``optax.warmup_cosine_decay_schedule`` to 10% of the peak, ``'constant'`` = warmup then flat.
Every learning rate of an optimizer (Muon's and its AdamW fallback's) follows the same unit
schedule times its own peak.

**Parameter groups** (:func:`group_of`): ``embedding``, ``lm_head``, ``router``,
``attention``, ``mlp``, ``experts``, ``other_matrices`` (learned positions), ``vectors``
(norms, biases), taken from ``optzoo.routing``'s default rules (role -> group).

How each config field maps onto each optimizer. ``b1``, ``b2``, ``eps`` are the AdamW
moments wherever Adam(W) runs (AdamW itself, the fallback groups of Muon and of the symmetric
stack, the inner Adam of the GaLore family); the momenta of Lion and Muon keep their papers'
defaults unless given in ``options`` (``('b1', ...)`` for Lion, ``('beta', ...)`` for Muon),
so swapping ``name`` in an ablation never feeds Adam's ``b2`` to Lion.

===========================  ====================================================================
name                         mapping
===========================  ====================================================================
``adamw``                    ``optax.adamw(lr, b1, b2, eps, weight_decay, mask = ndim >= 2)``
``lion``                     ``optzoo.lion(lr, weight_decay, mask = ndim >= 2)`` (Lion's
                             b1 = 0.9, b2 = 0.99)
``galore``                   ``optzoo.galore(lr, rank=32, b1, b2, eps, weight_decay, mask =
                             ndim >= 2)``, the projection on the hidden matrices (attention,
                             MLP, experts) only; embeddings, head, router and vectors get
                             full-rank Adam (the GaLore paper's setting)
``natural_galore``,          as ``galore``
``online_subspace_descent``
``muon``                     ``optzoo.muon(lr, weight_decay)`` (beta 0.95, Jordan's shape
                             factor ``sqrt(max(1, fan_out/fan_in))``) on the hidden matrices
                             (:data:`HIDDEN_GROUPS`: attention q/k/v/o, MLP, experts); every other
                             leaf (embedding, LM head, learned positions, router, norms, biases)
                             goes to Muon's AdamW fallback: ``adam_learning_rate = adam_lr``
                             (default Muon's 3e-4), ``adam_b1 = b1``, ``adam_b2 = b2``,
                             ``adam_eps = eps``, no weight decay
``symmetric``                ``optzoo.symmetry_compatible(lr, preset='paper', head_dim = the
                             model's, adam_b1 = b1, adam_b2 = b2, adam_eps = eps, weight_decay =
                             vector_weight_decay = weight_decay)``; ``lr`` is the hidden-matrix
                             rate, the other groups use the preset's multiples
===========================  ====================================================================

``cfg.options`` pass any other keyword of the underlying function (checked against its
signature).

**Owner computes.** ``build_optimizer(..., owner_computes=optzoo.OwnerComputes(mesh))`` (what
the harness passes for ``ShardingConfig.owner_computes=True``, :func:`make_owner_computes`)
hands the object to optimizers whose function takes an ``owner_computes`` keyword
(:func:`supports_owner_computes`: Muon, the symmetric stack): each matrix's orthogonalization
then runs on one owner device of the mesh instead of on every device.

Factories of optimizers that are not importable yet raise :class:`OptimizerNotAvailable`
naming what is missing; :func:`available` lists the usable ones.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo import routing

if TYPE_CHECKING:  # pragma: no cover
    from experiments.configs.base import OptimizerConfig

__all__ = [
    "GROUPS",
    "HIDDEN_GROUPS",
    "OPTIMIZERS",
    "OptimizerNotAvailable",
    "available",
    "build_optimizer",
    "group_of",
    "group_transforms",
    "make_owner_computes",
    "param_groups",
    "path_str",
    "routing_report",
    "scale_by_group",
    "skipped_steps",
    "supports_owner_computes",
    "unit_schedule",
    "with_model_defaults",
]

#: Parameter groups (the role groups of ``optzoo.routing``).
GROUPS = ("embedding", "lm_head", "router", "attention", "mlp", "experts", "other_matrices",
          "vectors")
#: Groups Muon (and GaLore's projection) is applied to.
HIDDEN_GROUPS = ("attention", "mlp", "experts")

class OptimizerNotAvailable(ImportError):
    """The optimizer's implementation cannot be imported (not written or broken yet)."""


# ----------------------------------------------------------------------------- paths
def path_str(path: tuple) -> str:
    """'/'-joined key path (DictKey/GetAttrKey/SequenceKey names), a trailing ``/value`` (the
    ``nnx.Variable`` level that ``nnx.Optimizer`` hands optax at ``init``) dropped."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    s = "/".join(parts)
    return s[: -len("/value")] if s.endswith("/value") else s


def _optzoo(name: str, module: str) -> Any:
    """``optzoo.<name>`` (the top-level export) or ``optzoo.<module>.<name>``."""
    try:
        import optzoo
    except ImportError as e:  # pragma: no cover - optzoo is this repository
        raise OptimizerNotAvailable(f"optzoo cannot be imported: {e}") from e
    obj = getattr(optzoo, name, None)
    if callable(obj) and not isinstance(obj, types.ModuleType):
        return obj
    try:
        return getattr(importlib.import_module(f"optzoo.{module}"), name)
    except (ImportError, AttributeError) as e:
        raise OptimizerNotAvailable(f"optzoo.{name} is not available (neither exported by "
                                    f"optzoo nor importable from optzoo.{module}: {e})") from e


def group_of(path: str, shape: tuple[int, ...]) -> str:
    """The parameter group of one leaf (see the module docstring).

    Raises:
      ValueError: naming the path when no rule covers the leaf.
    """
    return routing.ROLE_GROUPS[routing.rule_for(path, tuple(shape)).role]


def param_groups(params: Any) -> Any:
    """A tree (structure of ``params``) of group names."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: group_of(path_str(p), np.shape(x)), params)


def routing_report(params: Any, transforms: dict[str, Any] | None = None) -> str:
    """``optzoo.routing.report`` of the parameters."""
    return str(routing.report(params, None, transforms))


# ----------------------------------------------------------------------------- schedules
def unit_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """The schedule shape with peak 1 (see the module docstring)."""
    from optzoo import schedules

    w = cfg.warmup_steps
    if cfg.schedule == "wsd":
        return schedules.warmup_stable_decay(1.0, total_steps, warmup_steps=w,
                                             cooldown_fraction=cfg.cooldown_fraction)
    if cfg.schedule == "d2z":
        return schedules.linear_warmup_d2z(1.0, total_steps, warmup_steps=w)
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, max(w, 0), total_steps,
                                                  end_value=0.1)
    if cfg.schedule == "constant":
        return schedules.warmup_stable_decay(1.0, max(total_steps, w + 1), warmup_steps=w,
                                             cooldown_fraction=0.0)
    raise ValueError(f"OptimizerConfig.schedule={cfg.schedule!r}; expected one of "
                     "'wsd', 'd2z', 'cosine', 'constant'")


def _scheduled(peak: float, unit: optax.Schedule) -> optax.Schedule:
    peak = float(peak)
    return lambda count: peak * unit(count)


# ----------------------------------------------------------------------------- wrappers
def scale_by_group(multipliers: dict[str, float]) -> optax.GradientTransformation:
    """Multiplies each leaf's update by ``multipliers[group_of(leaf)]`` (default 1): a
    per-group learning-rate multiplier when placed after the learning rate. Stateless."""
    multipliers = {k: float(v) for k, v in multipliers.items()}

    def update(updates, state, params=None):
        del params

        def one(path, u):
            m = multipliers.get(group_of(path_str(path), np.shape(u)), 1.0)
            return u if m == 1.0 else u * jnp.asarray(m, u.dtype)

        return jax.tree_util.tree_map_with_path(one, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def skipped_steps(opt_state: Any) -> Any:
    """The ``skipped`` counter of an outermost ``optzoo.skip_nonfinite`` state, or ``None``."""
    value = getattr(opt_state, "skipped", None)
    get = getattr(value, "get_value", None)  # an nnx.Variable inside nnx.Optimizer
    return value if get is None else get()


def _matrix_mask(params: Any) -> Any:
    return jax.tree.map(lambda x: np.ndim(x) >= 2, params)


def _hidden_layout(params: Any) -> Any:
    """Layout callable: the default ``MatrixLayout`` for hidden matrices, ``None`` otherwise
    (embeddings, LM head, positions, router and vectors go to the fallback)."""
    from optzoo.layout import MatrixLayout

    def pick(path, x):
        return MatrixLayout() if group_of(path_str(path), np.shape(x)) in HIDDEN_GROUPS else None

    return jax.tree_util.tree_map_with_path(pick, params)


def _kwargs(cfg: OptimizerConfig, fn: Callable, name: str, fixed: dict[str, Any]) -> dict:
    """``fixed`` plus ``cfg.options``, every key checked against ``fn``'s signature."""
    params = inspect.signature(fn).parameters
    allowed = [p for p in params if p != "learning_rate" and p not in fixed]
    out = dict(fixed)
    for key, value in cfg.options:
        if key not in allowed:
            raise ValueError(f"OptimizerConfig.options: {key!r} is not an option of {name!r} "
                             f"(set by the config or unknown); expected one of {allowed}")
        out[key] = value
    return out


# ----------------------------------------------------------------------------- factories
def adamw(cfg: OptimizerConfig, params: Any, total_steps: int) -> optax.GradientTransformation:
    """``optax.adamw``; decay on ``ndim >= 2`` leaves (nanoGPT's convention)."""
    lr = _scheduled(cfg.learning_rate, unit_schedule(cfg, total_steps))
    kw = _kwargs(cfg, optax.adamw, "adamw", dict(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                                  weight_decay=cfg.weight_decay,
                                                  mask=_matrix_mask))
    return optax.adamw(lr, **kw)


def lion(cfg: OptimizerConfig, params: Any, total_steps: int) -> optax.GradientTransformation:
    """``optzoo.lion`` (its own b1/b2 unless in ``options``); decay on ``ndim >= 2`` leaves."""
    fn = _optzoo("lion", "lion")
    lr = _scheduled(cfg.learning_rate, unit_schedule(cfg, total_steps))
    kw = _kwargs(cfg, fn, "lion", dict(weight_decay=cfg.weight_decay, mask=_matrix_mask))
    return fn(lr, **kw)


def _low_rank(name: str, module: str) -> Callable:
    def factory(cfg: OptimizerConfig, params: Any, total_steps: int):
        fn = _optzoo(name, module)
        lr = _scheduled(cfg.learning_rate, unit_schedule(cfg, total_steps))
        fixed = dict(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                     weight_decay_mask=_matrix_mask, layout=_hidden_layout)
        if "rank" not in dict(cfg.options):
            fixed["rank"] = 32
        kw = _kwargs(cfg, fn, name, fixed)
        return fn(lr, **kw)

    factory.__name__ = name
    factory.__doc__ = (f"``optzoo.{name}`` with the projection on the hidden matrices "
                       "(default rank 32), full-rank Adam elsewhere.")
    return factory


def _with_owner(fixed: dict, owner_computes: Any) -> dict:
    return fixed if owner_computes is None else {**fixed, "owner_computes": owner_computes}


def muon(cfg: OptimizerConfig, params: Any, total_steps: int, *,
         owner_computes: Any = None) -> optax.GradientTransformation:
    """``optzoo.muon`` on the hidden matrices, its AdamW fallback elsewhere."""
    fn = _optzoo("muon", "muon")
    unit = unit_schedule(cfg, total_steps)
    adam_peak = cfg.adam_lr
    if adam_peak is None:
        adam_peak = inspect.signature(fn).parameters["adam_learning_rate"].default
    kw = _kwargs(cfg, fn, "muon", _with_owner(
        dict(weight_decay=cfg.weight_decay, layout=_hidden_layout, adam_b1=cfg.b1,
             adam_b2=cfg.b2, adam_eps=cfg.eps, adam_learning_rate=_scheduled(adam_peak, unit)),
        owner_computes))
    return fn(_scheduled(cfg.learning_rate, unit), **kw)


def _symmetric_fixed(cfg: OptimizerConfig) -> dict:
    return dict(adam_b1=cfg.b1, adam_b2=cfg.b2, adam_eps=cfg.eps, weight_decay=cfg.weight_decay,
                vector_weight_decay=cfg.weight_decay)


def symmetric(cfg: OptimizerConfig, params: Any, total_steps: int, *,
              owner_computes: Any = None) -> optax.GradientTransformation:
    """``optzoo.symmetry_compatible`` (default preset ``'paper'``)."""
    fn = _optzoo("symmetry_compatible", "symmetric_stack")
    lr = _scheduled(cfg.learning_rate, unit_schedule(cfg, total_steps))
    kw = _kwargs(cfg, fn, "symmetric", _with_owner(_symmetric_fixed(cfg), owner_computes))
    return fn(lr, **kw)


#: name -> factory ``(cfg, params_abstract, total_steps) -> GradientTransformation``.
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adamw": adamw,
    "lion": lion,
    "galore": _low_rank("galore", "galore"),
    "natural_galore": _low_rank("natural_galore", "natural_galore"),
    "online_subspace_descent": _low_rank("online_subspace_descent", "subspace_descent"),
    "muon": muon,
    "symmetric": symmetric,
}

# What each factory needs from optzoo: (exported name, module).
_REQUIRES = {
    "adamw": (),
    "lion": (("lion", "lion"),),
    "galore": (("galore", "galore"),),
    "natural_galore": (("natural_galore", "natural_galore"),),
    "online_subspace_descent": (("online_subspace_descent", "subspace_descent"),),
    "muon": (("muon", "muon"),),
    "symmetric": (("symmetry_compatible", "symmetric_stack"),),
}


def supports_owner_computes(cfg: OptimizerConfig) -> bool:
    """Whether the optimizer of ``cfg`` takes ``owner_computes`` (its harness factory and its
    optzoo function both accept the keyword)."""
    factory = OPTIMIZERS.get(cfg.name)
    if factory is None or "owner_computes" not in inspect.signature(factory).parameters:
        return False
    req = _REQUIRES.get(cfg.name, ())
    try:
        fns = [_optzoo(*r) for r in req]
    except OptimizerNotAvailable:
        return False
    return bool(fns) and all("owner_computes" in inspect.signature(f).parameters for f in fns)


def make_owner_computes(mesh: Any) -> Any:
    """``optzoo.OwnerComputes(mesh)`` (owners spread over every axis of the mesh).

    Raises:
      OptimizerNotAvailable: naming ``ShardingConfig.owner_computes`` when ``optzoo``
        has no ``OwnerComputes``.
    """
    try:
        cls = _optzoo("OwnerComputes", "distributed")
    except OptimizerNotAvailable as e:
        raise OptimizerNotAvailable(f"ShardingConfig.owner_computes=True needs "
                                    f"optzoo.OwnerComputes: {e}") from e
    return cls(mesh, axes=None)


def available() -> list[str]:
    """Names in :data:`OPTIMIZERS` whose implementation imports now."""
    out = []
    for name in OPTIMIZERS:
        try:
            for req in _REQUIRES.get(name, ()):
                _optzoo(*req)
        except OptimizerNotAvailable:
            continue
        out.append(name)
    return out


def group_transforms(cfg: OptimizerConfig) -> dict[str, Any]:
    """Which transform each parameter group gets (for the routing table in the manifest):
    ``{group: name}``; for the symmetric stack the ``routing.Assignment`` s of
    ``symmetry_compatible_plan`` (name and lr multiplier)."""
    mult = dict(cfg.lr_multipliers)

    def named(name_of):
        return {g: name_of(g) + (f" x{mult[g]:g}" if g in mult else "") for g in GROUPS}

    if cfg.name in ("muon", "galore", "natural_galore", "online_subspace_descent"):
        other = "adamw (fallback)" if cfg.name == "muon" else "adam (full rank)"
        return named(lambda g: cfg.name if g in HIDDEN_GROUPS else other)
    if cfg.name == "symmetric":
        plan_fn = _optzoo("symmetry_compatible_plan", "symmetric_stack")
        kw = _kwargs(cfg, plan_fn, "symmetric", _symmetric_fixed(cfg))
        return dict(plan_fn(cfg.learning_rate, **kw))
    return named(lambda g: cfg.name)


def with_model_defaults(cfg: OptimizerConfig, model_cfg: Any) -> OptimizerConfig:
    """``cfg`` with model-dependent options filled in: the symmetric stack's ``head_dim``
    (head-wise Muon on attention) from the model config, unless given."""
    import dataclasses

    if cfg.name == "symmetric" and "head_dim" not in dict(cfg.options):
        return dataclasses.replace(cfg, options=cfg.options + (("head_dim",
                                                                model_cfg.head_dim),))
    return cfg


def build_optimizer(cfg: OptimizerConfig, params_abstract: Any, total_steps: int, *,
                    owner_computes: Any = None) -> optax.GradientTransformation:
    """The optimizer of ``cfg`` with clipping, per-group multipliers and the non-finite guard
    (see the module docstring). ``params_abstract`` (arrays or ``ShapeDtypeStruct``) is used
    to check that every leaf has a group.

    Args:
      cfg: the optimizer config.
      params_abstract: the parameter tree (shapes only are read).
      total_steps: run length (for the schedule).
      owner_computes: an ``optzoo.OwnerComputes`` for optimizers that take one
        (:func:`supports_owner_computes`), else ``None``.

    Raises:
      ValueError: unknown name / option, a parameter no group rule covers (named), or
        ``owner_computes`` for an optimizer without the keyword.
      OptimizerNotAvailable: the optimizer's implementation is not importable.
    """
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"OptimizerConfig.name={cfg.name!r} is not a known optimizer; "
                         f"expected one of {sorted(OPTIMIZERS)}")
    param_groups(params_abstract)  # coverage: raises naming an uncovered leaf
    for req in _REQUIRES.get(cfg.name, ()):  # checked on every call, cached builds included
        _optzoo(*req)
    if owner_computes is not None and not supports_owner_computes(cfg):
        raise ValueError(f"build_optimizer: owner_computes given, but optimizer {cfg.name!r} "
                         "takes no owner_computes keyword")
    try:
        hash(owner_computes)
    except TypeError:
        return _build.__wrapped__(cfg, int(total_steps), owner_computes)
    return _build(cfg, int(total_steps), owner_computes)


@functools.lru_cache(maxsize=16)
def _build(cfg: OptimizerConfig, total_steps: int,
           owner_computes: Any = None) -> optax.GradientTransformation:
    # Cached per (config, steps, owner): the transform depends on the parameters only through
    # the trees it is given at init/update, and one object per config lets jitted steps that
    # close over it be reused across runs in a process (seeds of a sweep, resumed runs).
    parts = []
    if cfg.grad_clip is not None:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    extra = {} if owner_computes is None else {"owner_computes": owner_computes}
    parts.append(OPTIMIZERS[cfg.name](cfg, None, total_steps, **extra))
    if cfg.lr_multipliers:
        parts.append(scale_by_group(dict(cfg.lr_multipliers)))
    tx = parts[0] if len(parts) == 1 else optax.chain(*parts)
    if cfg.guard_nonfinite:
        tx = _optzoo("skip_nonfinite", "guard")(tx)
    return tx
