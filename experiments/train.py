"""The training loop: ``train_and_evaluate(cfg, workdir) -> summary``.

Reads top to bottom like nanoGPT's ``train.py``; every piece is an importable function::

    cfg -> data = make_data(cfg)                              (resumable TokenLoader + fixed
                                                               validation batches)
        -> tx = build_tx(...)                                 (clip, optimizer, per-group
                                                               schedules, guard)
        -> state = init_state(...)                            (models.build + nnx.Optimizer(
                                                               model, tx, wrt=nnx.Param))
        -> steps = make_train_step(...)                       (jitted grads / apply / eval)
        -> restore the latest checkpoint of workdir, if any   (exact resume)
        -> loop: batch -> grads -> apply -> log / eval / checkpoint
        -> summary.json

Usage (CLI; overrides are parsed by tyro, nested fields with dots)::

    python -m experiments.train --preset tiny --workdir runs/tiny
    python -m experiments.train --preset tiny --workdir runs/muon --optimizer.name muon \\
        --optimizer.learning-rate 0.02 --optimizer.adam-lr 0.003 --steps 300
    python -m experiments.train --preset tiny_moe --smoke --workdir /tmp/smoke

**Sharding.** All devices form a mesh ``('dp', 'fsdp', 'tp')`` sized by ``cfg.sharding``
(:mod:`experiments.sharding`): the batch is sharded over ``dp x fsdp``; parameters and the
optimizer state that mirrors them over ``fsdp`` (ZeRO-3) and ``tp`` (Megatron-style rules
per routing role), replicated over ``dp``. Initialization, gradients (reduce-scattered into
the parameter layout), the update and checkpoint restore all name their output shardings,
so the layout never drifts; XLA inserts the gathers. The default (``dp=-1``) is plain data
parallelism with replicated parameters.

**Multi-host.** ``python -m experiments.train --distributed [--coordinator HOST:PORT
--num-processes N --process-id I]`` calls ``jax.distributed.initialize`` first (no flags:
jax's auto-detection of Slurm / Open MPI / TPU pods; CPU collectives via gloo). Each process
reads its own rows of every global batch (``TokenLoader`` process fields), all processes
write and read the orbax checkpoints, and process 0 alone writes the manifest and metrics.

**Exact resume.** A checkpoint stores the parameters, the optimizer state (including its step
counter and the non-finite guard's counters), the step, the data-loader position, the run's
RNG key (reserved: the current models are deterministic) and the not-yet-logged training
losses; ``metrics.jsonl`` is cut back to the
checkpoint's step and TensorBoard events after it are purged. The resumed run then emits the
same records as an uninterrupted one (bitwise on CPU; the wall-clock fields of
``experiments.metrics.TIMING_KEYS`` excepted). Calling ``train_and_evaluate`` again on a
finished run returns its summary without training.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import checkpoint as ckpt_lib
from experiments import data as data_lib
from experiments import metrics as metrics_lib
from experiments import models
from experiments import optimizers as opt_lib
from experiments import sharding as shard_lib
from experiments.configs import OptimizerConfig, ShardingConfig, TrainConfig, get_config

__all__ = [
    "Data",
    "Steps",
    "build_tx",
    "group_unit_schedule",
    "scale_by_group_schedule",
    "optimizer_call",
    "block_updates",
    "make_mesh",
    "make_data",
    "next_global_batch",
    "init_state",
    "make_train_step",
    "evaluate",
    "train_and_evaluate",
    "initialize_distributed",
    "main",
]


# ----------------------------------------------------------------------------- devices
def make_mesh(sharding: ShardingConfig | None = None, devices: list | None = None) -> Mesh:
    """The ``('dp', 'fsdp', 'tp')`` mesh of ``sharding`` (default: all devices on ``dp``)
    over ``devices`` (default: every device of every process); see
    :func:`experiments.sharding.make_mesh`."""
    return shard_lib.make_mesh(ShardingConfig() if sharding is None else sharding, devices)


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` (before any other jax call of the process).

    With no arguments jax detects the cluster (Slurm, Open MPI, TPU pods). CPU collectives
    across processes use gloo (``jax_cpu_collectives_implementation``, unless set to
    something else already).
    """
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


# ----------------------------------------------------------------------------- data
class Data(NamedTuple):
    """The training stream, the fixed validation set and what the corpus is."""

    loader: data_lib.TokenLoader
    val_batches: list[tuple[np.ndarray, np.ndarray]]
    info: dict


def make_data(cfg: TrainConfig, *, process_index: int = 0, process_count: int = 1,
              n_devices: int = 1) -> Data:
    """Builds the loader of ``cfg.data`` (this process's slice) and the validation batches.

    ``n_devices`` is the number of batch shards (the ``dp x fsdp`` axes of the mesh).

    Raises:
      ValueError: ``data.batch_size`` not divisible by the batch shards / process count, a token id
        outside the model's vocabulary, or a corpus too short (messages name the field).
      FileNotFoundError: a shard path (``DataConfig.shards`` / ``val_shards``) matches nothing.
    """
    d = cfg.data
    d.check_paths()
    for count, what in ((n_devices, "devices"), (process_count, "processes")):
        if d.batch_size % count:
            raise ValueError(f"DataConfig.batch_size={d.batch_size} is not divisible by the "
                             f"{count} {what} of the data-parallel mesh axes {BATCH_AXES}")
    per_process = d.batch_size // process_count
    if d.corpus == "stdlib":
        train, val, corpus = data_lib.default_splits(d.corpus_bytes, d.val_tokens)
        source, info = train, dataclasses.asdict(corpus)
    elif d.corpus == "shakespeare":
        tokens, corpus = data_lib.shakespeare_corpus()
        train, val = data_lib.split_train_val(tokens[: d.corpus_bytes], d.val_tokens)
        source, info = train, dataclasses.asdict(corpus)
    else:
        shards, paths = data_lib.open_shards(d.shards)
        if d.val_shards is not None:
            val_arrays, val_paths = data_lib.open_shards(d.val_shards)
            val = val_arrays[0]
        else:
            if len(shards[-1]) <= d.val_tokens:
                raise ValueError(f"DataConfig.val_tokens={d.val_tokens} is not smaller than the "
                                 f"last training shard ({len(shards[-1])} tokens)")
            val, val_paths = shards[-1][-d.val_tokens:], paths[-1:]
            shards = shards[:-1] + [shards[-1][: -d.val_tokens]]
        source = shards
        info = {"name": "shards", "train": [str(p) for p in paths],
                "val": [str(p) for p in val_paths],
                "train_tokens": int(sum(len(s) for s in shards))}
    need = cfg.eval_batches * d.batch_size * d.seq_len + 1
    val = np.asarray(val[:need])
    vocab = cfg.model_config().vocab_size
    if val.size and int(val.max()) >= vocab:
        raise ValueError(f"DataConfig: the validation tokens hold id {int(val.max())} >= the "
                         f"model's vocab_size {vocab} (TrainConfig.model={cfg.model!r})")
    loader = data_lib.TokenLoader(source, per_process, d.seq_len, process_index=process_index,
                                  process_count=process_count, shuffle=d.shuffle, seed=d.seed)
    val_batches = data_lib.validation_batches(val, per_process, d.seq_len,
                                              process_index=process_index,
                                              process_count=process_count,
                                              max_batches=cfg.eval_batches)
    return Data(loader, val_batches, info)


BATCH_AXES = shard_lib.BATCH_AXES


def next_global_batch(loader: data_lib.TokenLoader, grad_accum: int,
                      sharding: NamedSharding) -> tuple[jax.Array, jax.Array]:
    """``grad_accum`` micro-batches of this process stacked to ``[A, B_local, T]`` and
    assembled into global arrays ``[A, B, T]`` sharded along ``B``."""
    xs, ys = zip(*(loader.next() for _ in range(grad_accum)), strict=True)
    x, y = np.stack(xs), np.stack(ys)
    return (jax.make_array_from_process_local_data(sharding, x),
            jax.make_array_from_process_local_data(sharding, y))


# ----------------------------------------------------------------------------- optimizer
def group_unit_schedule(opt_cfg: OptimizerConfig, group: str, total_steps: int):
    """The unit (peak 1) schedule of one parameter group: ``opt_cfg.group_schedules``' entry
    for ``group``, else the main ``schedule`` / ``warmup_steps``. ``'cosine_zero'`` is linear
    warmup over ``w`` steps then ``(1 + cos(pi (t - w) / (T - w))) / 2`` (Hugging Face
    ``get_cosine_schedule_with_warmup``, ``num_cycles=0.5``)."""
    import optax

    schedule, warmup = opt_cfg.group_schedule(group)
    if schedule == "cosine_zero":
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(total_steps, warmup + 1),
                                                  end_value=0.0)
    return opt_lib.unit_schedule(dataclasses.replace(opt_cfg, schedule=schedule,
                                                     warmup_steps=warmup), total_steps)


def scale_by_group_schedule(units: dict[str, Callable]) -> Any:
    """Multiplies each leaf's update by ``units[group](count)`` (``group`` of
    :func:`experiments.optimizers.group_of`; ``count`` = updates applied so far). Placed
    after an optimizer run at a constant unit learning rate, it gives each group its own
    schedule; exact because every harness optimizer's update is linear in its learning rate
    (``-lr * (direction + decay * param)``)."""
    import optax

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        del params
        factors = {g: jnp.asarray(fn(state.count), jnp.float32) for g, fn in units.items()}

        def one(path, u):
            f = factors[opt_lib.group_of(opt_lib.path_str(path), np.shape(u))]
            return u * f.astype(u.dtype)

        new = jax.tree_util.tree_map_with_path(one, updates)
        return new, optax.ScaleByScheduleState(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init, update)


@functools.lru_cache(maxsize=16)
def _build_grouped(opt_cfg: OptimizerConfig, total_steps: int, owner: Any) -> Any:
    import optax

    base = dataclasses.replace(opt_cfg, schedule="constant", warmup_steps=0,
                               group_schedules=(), guard_nonfinite=False)
    inner = opt_lib.build_optimizer(base, None, total_steps, owner_computes=owner)
    units = {g: group_unit_schedule(opt_cfg, g, total_steps) for g in opt_lib.GROUPS}
    tx = optax.chain(inner, scale_by_group_schedule(units))
    if opt_cfg.guard_nonfinite:
        from optzoo.guard import skip_nonfinite

        tx = skip_nonfinite(tx)
    return tx


def build_tx(opt_cfg: OptimizerConfig, params_abstract: Any, total_steps: int, *,
             owner_computes: Any = None) -> Any:
    """The run's optimizer: :func:`experiments.optimizers.build_optimizer`, or, with
    ``opt_cfg.group_schedules``, ``skip_nonfinite(chain(<that optimizer at a constant unit
    schedule, unguarded>, scale_by_group_schedule(<each group's unit schedule>)))`` (the
    guard stays outermost, so ``skipped_steps`` and its state layout are unchanged)."""
    if not opt_cfg.group_schedules:
        return opt_lib.build_optimizer(opt_cfg, params_abstract, total_steps,
                                       owner_computes=owner_computes)
    opt_lib.build_optimizer(dataclasses.replace(opt_cfg, group_schedules=()), params_abstract,
                            total_steps, owner_computes=owner_computes)  # every check it makes
    try:
        hash(owner_computes)
    except TypeError:
        return _build_grouped.__wrapped__(opt_cfg, int(total_steps), owner_computes)
    return _build_grouped(opt_cfg, int(total_steps), owner_computes)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    name = getattr(value, "__name__", None)
    return name if isinstance(name, str) else repr(value)


#: optzoo function each factory calls (for :func:`optimizer_call`).
_FACTORY_FUNCTIONS = {"symmetric": ("symmetry_compatible", "symmetric_stack"),
                      "muon": ("muon", "muon"), "lion": ("lion", "lion"),
                      "galore": ("galore", "galore"),
                      "natural_galore": ("natural_galore", "natural_galore"),
                      "online_subspace_descent": ("online_subspace_descent",
                                                  "subspace_descent")}


def optimizer_call(opt_cfg: OptimizerConfig) -> dict:
    """What the optimizer factory calls, for the manifest: ``{'factory', 'function',
    'learning_rate', 'kwargs' (everything the config passes: the factory's fixed mapping and
    ``options``, the preset name included), 'defaults' (the function's other keyword
    defaults, so that any numerics keyword in effect is recorded even when the config does
    not name it), 'group_schedules'}``. Generic over the function's signature."""
    import inspect

    out: dict = {"factory": opt_cfg.name, "learning_rate": opt_cfg.learning_rate,
                 "schedule": [opt_cfg.schedule, opt_cfg.warmup_steps],
                 "group_schedules": {g: list(opt_cfg.group_schedule(g)) for g in opt_lib.GROUPS}}
    kwargs = dict(opt_cfg.options)
    if opt_cfg.name == "symmetric":
        fixed = getattr(opt_lib, "_symmetric_fixed", None)
        kwargs = {**(fixed(opt_cfg) if fixed is not None else {}), **kwargs}
    fn = None
    if opt_cfg.name in _FACTORY_FUNCTIONS:
        try:
            fn = opt_lib._optzoo(*_FACTORY_FUNCTIONS[opt_cfg.name])
        except opt_lib.OptimizerNotAvailable as e:
            out["function"] = f"unavailable: {e}"
    elif opt_cfg.name == "adamw":
        import optax

        fn = optax.adamw
    if fn is not None:
        out["function"] = f"{fn.__module__}.{fn.__qualname__}"
        params = inspect.signature(fn).parameters
        out["defaults"] = {k: _jsonable(p.default) for k, p in params.items()
                           if k not in kwargs and k != "learning_rate"
                           and p.default is not inspect.Parameter.empty}
    out["kwargs"] = _jsonable(kwargs)
    return out


_NUMERICS_WORDS = ("numerics", "ortho", "ns_", "gram", "polar", "inv", "steps", "coeff",
                   "dtype", "iter", "method")


def block_updates(params: Any, opt_cfg: OptimizerConfig) -> list[dict] | str:
    """One row per parameter leaf for the manifest: ``path``, ``shape``, ``role``, ``group``,
    ``transform`` (the optimizer's name for the map, from ``optzoo.routing.report`` with
    :func:`experiments.optimizers.group_transforms`: for the symmetric stack the names of
    ``symmetry_compatible_plan``'s assignments), ``lr_multiplier``, ``schedule``
    (``[name, warmup]``) and ``numerics`` (the numerics-related keywords in effect, from
    :func:`optimizer_call`: those naming no group, or naming this leaf's group; empty for
    AdamW / row-norm maps, which have no iterative part)."""
    from optzoo import routing

    try:
        rows = routing.report(params, None, opt_lib.group_transforms(opt_cfg)).rows
    except (ValueError, opt_lib.OptimizerNotAvailable) as e:
        return f"unavailable: {e}"
    call = optimizer_call(opt_cfg)
    effective = {**call.get("defaults", {}), **call["kwargs"]}
    numeric = {k: v for k, v in effective.items()
               if any(w in k.lower() for w in _NUMERICS_WORDS)}
    out = []
    for row in rows:
        group = routing.ROLE_GROUPS[row.role]
        name = str(row.transform)
        iterative = not any(w in name for w in ("adam", "rownorm", "lion")) or "muon" in name
        mine = {k: v for k, v in numeric.items()
                if not any(g in k for g in routing.GROUPS if g != group)}
        out.append({"path": row.path, "shape": list(row.shape), "role": row.role,
                    "group": group, "transform": name, "lr_multiplier": row.lr_multiplier,
                    "schedule": list(opt_cfg.group_schedule(group)),
                    "numerics": mine if iterative else {}})
    return out


# ----------------------------------------------------------------------------- steps
class Steps(NamedTuple):
    """The jitted pieces of a training step.

    ``grads(params, rest, x, y) -> (grads, metrics)``: mean gradient over the ``A``
    micro-batches of ``x, y [A, B, T]`` (accumulated in float32) with ``loss``, ``ce``, MoE
    aux metrics and ``grad_norm[/group]``. ``apply(state, grads) -> (state, metrics)``: the
    optimizer update (``nnx.Optimizer.update``) with ``update_norm``, ``param_norm``,
    ``update_ratio`` per group and ``skipped_steps``. ``eval(params, rest, x, y) -> (ce,
    router)``:
    validation cross-entropy of one batch and, for MoE models, that batch's router statistics
    (``{'router/<i>/<metric>': scalar, 'router/<i>/expert_load': [E]}``; ``{}`` for dense
    models). ``state`` is ``{'params', 'rest', 'opt'}``
    (``nnx.State`` s). Gradients come out in the parameters' shardings, the new state in the
    state's, metrics replicated. ``grads`` and ``eval`` do not depend on the optimizer and are
    cached per (model graph, mesh, shardings, accumulation), so runs of one model in a process
    compile them once.
    """

    grads: Callable
    apply: Callable
    eval: Callable


def _loss_fn(graphdef, params, rest, x, y):
    model = nnx.merge(graphdef, params, rest)
    logits, aux = model(x)
    return models.loss_from_logits(logits, aux, y)


def _update_ratios(metrics: dict) -> dict:
    out = {}
    for key, value in metrics.items():
        if key.startswith("update_norm/"):
            g = key.split("/", 1)[1]
            out[f"update_ratio/{g}"] = value / jnp.maximum(metrics[f"param_norm/{g}"], 1e-30)
    return out


def _freeze(tree: Any) -> tuple | None:
    """A hashable form of a sharding tree (``None`` stays ``None``): (leaves, treedef)."""
    if tree is None:
        return None
    leaves, treedef = jax.tree.flatten(tree)
    return tuple(leaves), treedef


def _thaw(frozen: tuple | None, mesh: Mesh) -> Any:
    """The tree of :func:`_freeze` (``None``: replicated over ``mesh``)."""
    if frozen is None:
        return NamedSharding(mesh, P())
    return jax.tree.unflatten(frozen[1], frozen[0])


@functools.lru_cache(maxsize=16)
def _grad_step(graphdef: Any, groups: tuple, mesh: Mesh, grad_accum: int,
               param_shardings: tuple | None) -> Callable:
    groups_map = dict(groups)
    value_and_grad = jax.value_and_grad(lambda p, r, x, y: _loss_fn(graphdef, p, r, x, y),
                                        has_aux=True)

    def grads_fn(params, rest, x, y):
        if grad_accum == 1:
            (loss, metrics), grads = value_and_grad(params, rest, x[0], y[0])
        else:
            def body(carry, xy):
                gsum, lsum, msum = carry
                (loss, m), g = value_and_grad(params, rest, *xy)
                gsum = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), gsum, g)
                msum = jax.tree.map(jnp.add, msum, m)
                return (gsum, lsum + loss, msum), None

            m_shape = jax.eval_shape(lambda: value_and_grad(params, rest, x[0], y[0])[0][1])
            zeros_g = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), params)
            zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
            (gsum, lsum, msum), _ = jax.lax.scan(body, (zeros_g, jnp.float32(0), zeros_m),
                                                 (x, y))
            grads = jax.tree.map(lambda s, p: (s / grad_accum).astype(p.dtype), gsum, params)
            loss = lsum / grad_accum
            metrics = jax.tree.map(lambda v: v / grad_accum, msum)
        metrics = {"loss": loss, **metrics}
        metrics.update(metrics_lib.group_norms(grads, groups_map, "grad_norm", opt_lib.path_str))
        return grads, metrics

    return jax.jit(grads_fn, out_shardings=(_thaw(param_shardings, mesh),
                                            NamedSharding(mesh, P())))


@functools.lru_cache(maxsize=16)
def _eval_step(graphdef: Any, mesh: Mesh) -> Callable:
    def eval_fn(params, rest, x, y):
        model = nnx.merge(graphdef, params, rest)
        logits, aux = model(x)
        router = {k: v for k, v in aux.items() if k.startswith("router/")}
        return cross_entropy(logits, y), router

    return jax.jit(eval_fn, out_shardings=NamedSharding(mesh, P()))


def make_train_step(graphdef: Any, opt_graphdef: Any, groups: dict[str, str], mesh: Mesh, *,
                    grad_accum: int = 1, donate: bool = False,
                    state_shardings: dict | None = None) -> Steps:
    """The jitted grads / apply / eval functions (see :class:`Steps`).

    Args:
      graphdef: model graphdef of ``nnx.split(model, nnx.Param, ...)``.
      opt_graphdef: graphdef of ``nnx.split(optimizer)``.
      groups: ``{parameter path: group}`` for the per-group norms.
      mesh: the device mesh (metrics are replicated over it).
      grad_accum: micro-batches per step.
      donate: donate the state and gradient buffers to ``apply`` (off on CPU, where orbax's
        asynchronous save may still read the host buffers).
      state_shardings: ``{'params', 'rest', 'opt'}`` trees of ``NamedSharding`` (those of
        :func:`init_state`'s state: ``jax.tree.map(lambda a: a.sharding, state)``); the
        gradients and the new state keep them. ``None``: everything replicated.
    """
    groups_t = tuple(sorted(groups.items()))
    param_sh = None if state_shardings is None else _freeze(state_shardings["params"])
    return Steps(
        grads=_grad_step(graphdef, groups_t, mesh, grad_accum, param_sh),
        apply=_apply_step(graphdef, opt_graphdef, groups_t, mesh, donate,
                          _freeze(state_shardings)),
        eval=_eval_step(graphdef, mesh),
    )


@functools.lru_cache(maxsize=16)
def _apply_step(graphdef: Any, opt_graphdef: Any, groups: tuple, mesh: Mesh, donate: bool,
                state_shardings: tuple | None) -> Callable:
    groups_map = dict(groups)

    def apply_fn(state, grads):
        model = nnx.merge(graphdef, state["params"], state["rest"])
        optimizer = nnx.merge(opt_graphdef, state["opt"])
        updates = optimizer.update(model, grads)
        _, params, rest = nnx.split(model, nnx.Param, ...)
        new_state = {"params": params, "rest": rest, "opt": nnx.state(optimizer)}
        metrics = metrics_lib.group_norms(updates, groups_map, "update_norm", opt_lib.path_str)
        metrics.update(metrics_lib.group_norms(params, groups_map, "param_norm",
                                               opt_lib.path_str))
        metrics.update(_update_ratios(metrics))
        skipped = opt_lib.skipped_steps(optimizer.opt_state)
        if skipped is not None:
            metrics["skipped_steps"] = skipped
        return new_state, metrics

    return jax.jit(apply_fn, out_shardings=(_thaw(state_shardings, mesh),
                                            NamedSharding(mesh, P())),
                   donate_argnums=(0, 1) if donate else ())


@functools.lru_cache(maxsize=16)
def _model_init(model_cfg: models.ModelConfig, seed: int, mesh: Mesh,
                sharding: ShardingConfig):
    graphdefs = {}

    def build():
        graphdef, params, rest = nnx.split(models.build(model_cfg, seed=seed), nnx.Param, ...)
        graphdefs["model"] = graphdef
        return params, rest

    params_abstract, _ = jax.eval_shape(build)
    specs = shard_lib.param_specs(params_abstract, sharding, mesh)
    out = (shard_lib.named_shardings(specs, mesh), NamedSharding(mesh, P()))
    return jax.jit(build, out_shardings=out), graphdefs["model"], specs


def init_state(model_cfg: models.ModelConfig, tx: Any, seed: int, mesh: Mesh,
               sharding: ShardingConfig | None = None) -> tuple[tuple[Any, Any], dict]:
    """Builds the model and ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` in jitted functions
    (one compilation each instead of one per initializer), their arrays created directly in
    the shardings of :func:`experiments.sharding.param_specs` / ``opt_state_specs`` on
    ``mesh`` (cached per (config, seed, mesh, sharding) / (model, tx, mesh, sharding)).

    Returns:
      ``((model graphdef, optimizer graphdef), {'params', 'rest', 'opt'})``.

    Raises:
      ValueError: a sharding that does not fit the model (see :mod:`experiments.sharding`).
    """
    sharding = ShardingConfig() if sharding is None else sharding
    init_model, graphdef, specs = _model_init(model_cfg, seed, mesh, sharding)
    params, rest = init_model()
    init_opt, graphdefs = _opt_init(graphdef, tx, mesh, sharding, _freeze(specs))
    opt_state = init_opt(params, rest)  # traced on the first call: sets graphdefs["opt"]
    return (graphdef, graphdefs["opt"]), {"params": params, "rest": rest, "opt": opt_state}


@functools.lru_cache(maxsize=16)
def _opt_init(graphdef: Any, tx: Any, mesh: Mesh, sharding: ShardingConfig,
              param_specs: tuple):
    graphdefs = {}
    jitted = {}

    def init_opt(params, rest):
        optimizer = nnx.Optimizer(nnx.merge(graphdef, params, rest), tx, wrt=nnx.Param)
        opt_graphdef, opt_state = nnx.split(optimizer)
        graphdefs["opt"] = opt_graphdef
        return opt_state

    def init(params, rest):
        if "fn" not in jitted:  # the output shardings need the state's structure
            abstract = jax.eval_shape(init_opt, params, rest)
            specs = shard_lib.opt_state_specs(abstract, params, _thaw(param_specs, mesh), mesh)
            jitted["fn"] = jax.jit(init_opt,
                                   out_shardings=shard_lib.named_shardings(specs, mesh))
        return jitted["fn"](params, rest)

    return init, graphdefs


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy (float32) of one batch."""
    import optax

    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), targets))


def evaluate(eval_step: Callable, state: dict, val_batches: list) -> dict:
    """``{'val_loss', 'val_bpt', 'eval_ms'}``: mean cross-entropy over the fixed validation
    batches (``val_batches``: device arrays), in nats and bits per token; for MoE models also
    the router statistics on the validation set (:func:`experiments.metrics.val_router_record`:
    each per-batch statistic averaged over the batches, as the reference's
    ``train_gpt-oss_router_metrics.py`` does)."""
    t0 = time.perf_counter()
    outs = jax.device_get([eval_step(state["params"], state["rest"], x, y)
                           for x, y in val_batches])
    values = [float(ce) for ce, _ in outs]
    val = float(np.mean(np.asarray(values, np.float64)))
    record = {"val_loss": val, "val_bpt": val / math.log(2)}
    record.update(metrics_lib.val_router_record([r for _, r in outs]))
    record["eval_ms"] = (time.perf_counter() - t0) * 1e3
    return record


# ----------------------------------------------------------------------------- state I/O
def _pure(state: dict) -> dict:
    return {k: nnx.to_pure_dict(v) for k, v in state.items()}


def _restore_into(state: dict, pure: dict) -> dict:
    out = {}
    for key, value in state.items():
        nnx.replace_by_pure_dict(value, pure[key])
        out[key] = value
    return out


# ----------------------------------------------------------------------------- the loop
def train_and_evaluate(cfg: TrainConfig, workdir: str | os.PathLike, *,
                       on_step: Callable[[int, dict | None], None] | None = None) -> dict:
    """Trains ``cfg`` in ``workdir`` (resuming from its latest checkpoint) and evaluates.

    Runs under ``jax.default_matmul_precision(cfg.matmul_precision)`` when that is set.

    Args:
      cfg: the run configuration.
      workdir: run directory (created; see :mod:`experiments.checkpoint` for its contents).
      on_step: called as ``on_step(step, train_record_or_None)`` after every step's logging,
        evaluation and checkpointing (a hook for tests and schedulers; an exception stops the
        run as a crash would).

    Returns:
      ``{'final_val_loss', 'best_val_loss', 'steps', 'tokens', 'ms_per_step',
      'opt_ms_per_step', 'tokens_per_s', 'opt_state_bytes', 'param_count', 'history' (eval
      records), 'workdir', 'mesh', 'param_bytes_per_device', 'opt_state_bytes_per_device'}``;
      timings are medians over the run's train records; ``opt_state_bytes`` is the whole
      (global) optimizer state, the ``*_per_device`` sizes what one device holds.

    Raises:
      experiments.checkpoint.ConfigMismatch: ``workdir`` holds a run of another config.
      ValueError / TypeError / FileNotFoundError: invalid configuration (named field).
      experiments.optimizers.OptimizerNotAvailable: the optimizer cannot be imported.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train_and_evaluate: cfg must be a TrainConfig, got "
                        f"{type(cfg).__name__}")
    if cfg.matmul_precision is None:
        return _train_and_evaluate(cfg, workdir, on_step)
    with jax.default_matmul_precision(cfg.matmul_precision):
        return _train_and_evaluate(cfg, workdir, on_step)


def _train_and_evaluate(cfg: TrainConfig, workdir: str | os.PathLike,
                        on_step: Callable[[int, dict | None], None] | None) -> dict:
    workdir = Path(workdir).absolute()
    is_main = jax.process_index() == 0

    # -- everything that can reject the config runs before the first write
    model_cfg = cfg.model_config()
    opt_cfg = opt_lib.with_model_defaults(cfg.optimizer, model_cfg)
    manifest = ckpt_lib.prepare_workdir(workdir, cfg)
    mesh = make_mesh(cfg.sharding)
    n_devices = mesh.devices.size
    batch_shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    data = make_data(cfg, process_index=jax.process_index(),
                     process_count=jax.process_count(), n_devices=batch_shards)
    shard_lib.check_batch_layout(mesh, cfg.data.batch_size)
    params_abstract = nnx.state(models.build(model_cfg, seed=cfg.seed, abstract=True), nnx.Param)
    specs = shard_lib.param_specs(params_abstract, cfg.sharding, mesh)
    owner = None
    if cfg.sharding.owner_computes and opt_lib.supports_owner_computes(opt_cfg):
        owner = opt_lib.make_owner_computes(mesh)
    tx = build_tx(opt_cfg, params_abstract, cfg.steps, owner_computes=owner)
    if jax.process_count() > 1:  # no process writes before every one has checked the workdir
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("experiments.train: workdir checked")

    # -- model and optimizer
    unit_lr = opt_lib.unit_schedule(opt_cfg, cfg.steps)
    group_units = {g: group_unit_schedule(opt_cfg, g, cfg.steps)
                   for g, _, _ in opt_cfg.group_schedules}
    (graphdef, opt_graphdef), state = init_state(model_cfg, tx, cfg.seed, mesh, cfg.sharding)
    params = state["params"]
    state_shardings = jax.tree.map(lambda a: a.sharding, state)
    groups = {opt_lib.path_str(p): opt_lib.group_of(opt_lib.path_str(p), np.shape(x))
              for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    steps = make_train_step(graphdef, opt_graphdef, groups, mesh, grad_accum=cfg.grad_accum,
                            donate=jax.default_backend() != "cpu",
                            state_shardings=state_shardings)
    batch_sharding = NamedSharding(mesh, P(None, BATCH_AXES, None))
    val_sharding = NamedSharding(mesh, P(BATCH_AXES, None))
    val_batches = [(jax.make_array_from_process_local_data(val_sharding, x),
                    jax.make_array_from_process_local_data(val_sharding, y))
                   for x, y in data.val_batches]
    n_params = int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))
    opt_bytes = metrics_lib.tree_bytes(state["opt"])
    layout = {"mesh": dict(mesh.shape),
              "param_bytes_per_device": shard_lib.bytes_per_device(params),
              "opt_state_bytes_per_device": shard_lib.bytes_per_device(state["opt"])}
    flops_tok = models.flops_per_token(model_cfg, cfg.data.seq_len)
    peak = metrics_lib.peak_flops(jax.devices()[0].device_kind, cfg.compute_dtype)

    # -- resume
    checkpointer = ckpt_lib.Checkpointer(workdir / ckpt_lib.CHECKPOINTS, cfg.keep_checkpoints)
    start, pending, elapsed0 = 0, [], 0.0
    rng = jax.random.key_data(jax.random.key(cfg.seed))
    latest = checkpointer.latest_step()
    if latest is not None:
        # restored straight into this run's shardings (which may differ from the saving run's)
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), _pure(state))
        restored, meta = checkpointer.restore(latest, abstract)
        state = _restore_into(state, restored)
        # the saved position is global (offsets count every process's rows); only the
        # process fields are this process's (the meta file is process 0's)
        data.loader.set_state(data_lib.LoaderState(*meta["loader"])._replace(
            process_index=jax.process_index(), process_count=jax.process_count()))
        start, pending = int(meta["step"]), list(meta["pending_losses"])
        elapsed0 = float(meta.get("elapsed_s", 0.0))
        rng = jnp.asarray(meta["rng"], jnp.uint32)
    if is_main:
        metrics_path = workdir / ckpt_lib.METRICS
        records = metrics_lib.truncate_jsonl(metrics_path, start if latest is not None else None)
        if manifest is None:
            manifest = ckpt_lib.new_manifest(
                cfg, model=dataclasses.asdict(model_cfg), model_summary=models.describe(model_cfg),
                optimizer=dataclasses.asdict(opt_cfg), param_count=n_params,
                flops_per_token=flops_tok, tokens_per_step=cfg.tokens_per_step, corpus=data.info,
                routing_report=_routing_report(params_abstract, opt_cfg),
                optimizer_call=optimizer_call(opt_cfg),
                block_updates=block_updates(params_abstract, opt_cfg),
                matmul_precision=cfg.matmul_precision,
                optimizers_available=opt_lib.available(),
                sharding={**dataclasses.asdict(cfg.sharding), **layout,
                          "owner_computes_applied": owner is not None,
                          "param_specs": shard_lib.spec_table(params_abstract, specs)})
        else:
            manifest["resumes"].append({"from_step": start, "time": time.time(),
                                        "git": ckpt_lib.git_info(),
                                        "devices": ckpt_lib.device_info(),
                                        "sharding": {**dataclasses.asdict(cfg.sharding),
                                                     **layout}})
        ckpt_lib.write_json_atomic(workdir / ckpt_lib.MANIFEST, manifest)
        writer = metrics_lib.JsonlWriter(metrics_path)
        tb = metrics_lib.TensorBoardWriter(workdir / "tb", cfg.tensorboard,
                                           purge_step=start + 1 if start else None)
    else:
        records, writer, tb = [], None, metrics_lib.TensorBoardWriter("", False)

    def emit(record: dict) -> None:
        records.append({k: metrics_lib.to_python(v) for k, v in record.items()})
        if writer is not None:
            writer.write(record)
            tb.write(record)

    def elapsed() -> float:  # training wall time, accumulated over resumes
        return elapsed0 + time.perf_counter() - t_start

    def eval_record(step: int) -> dict:
        return {"kind": "eval", "step": step, "tokens": step * cfg.tokens_per_step,
                **evaluate(steps.eval, state, val_batches), "elapsed_s": elapsed()}

    # -- the loop
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=start, disable=(not cfg.progress or not is_main)
               or None, desc=cfg.name, dynamic_ncols=True)
    t_start = time.perf_counter()
    first = True
    interval_t0, interval_n = None, 0
    try:
        if start == 0 and cfg.steps > 0:
            emit(eval_record(0))
        for step in range(start + 1, cfg.steps + 1):
            x, y = next_global_batch(data.loader, cfg.grad_accum, batch_sharding)
            log_now = step % cfg.log_every == 0 or step == cfg.steps
            timed = log_now or first
            if timed:
                jax.block_until_ready(state)
            if interval_t0 is None:
                interval_t0 = time.perf_counter()
            t0 = time.perf_counter()
            grads, gm = steps.grads(state["params"], state["rest"], x, y)
            if timed:
                jax.block_until_ready(grads)
            t1 = time.perf_counter()
            state, um = steps.apply(state, grads)
            if timed:
                jax.block_until_ready(state)
            t2 = time.perf_counter()
            pending.append(gm["loss"])
            record = None
            compile_s = None
            if first:
                compile_s, first = t2 - t0, False
                interval_t0, interval_n = t2, 0
            else:
                interval_n += 1
            if log_now:
                losses = [float(v) for v in jax.device_get(pending)]
                pending = []
                m = jax.device_get({**gm, **um})
                ms = (t2 - interval_t0) / interval_n * 1e3 if interval_n else None
                tok_s = cfg.tokens_per_step / (ms / 1e3) if ms else None
                record = {"kind": "train", "step": step, "tokens": step * cfg.tokens_per_step,
                          "loss": m.pop("loss"), "ce": m.pop("ce"),
                          "loss_mean": float(np.mean(np.asarray(losses, np.float64))),
                          "lr": opt_cfg.learning_rate * float(unit_lr(step - 1)),
                          **{f"lr_factor/{g}": float(u(step - 1))
                             for g, u in group_units.items()},
                          **m, **metrics_lib.router_means(m),
                          "ms_per_step": ms,
                          "fwd_bwd_ms": None if compile_s is not None else (t1 - t0) * 1e3,
                          "opt_ms": None if compile_s is not None else (t2 - t1) * 1e3,
                          "tokens_per_s": tok_s,
                          "mfu": metrics_lib.mfu(flops_tok, tok_s, n_devices, peak),
                          "compile_s": compile_s,
                          "elapsed_s": elapsed()}
                emit(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
                interval_t0, interval_n = None, 0
            if step % cfg.eval_every == 0 or step == cfg.steps:
                emit(eval_record(step))
                interval_t0, interval_n = None, 0
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                meta = {"step": step, "loader": list(data.loader.get_state()),
                        "pending_losses": [float(v) for v in jax.device_get(pending)],
                        "rng": np.asarray(rng).tolist(), "elapsed_s": elapsed(),
                        "config_hash": manifest["config_hash"] if manifest else None}
                checkpointer.save(step, _pure(state), meta)
                interval_t0, interval_n = None, 0
            bar.update(1)
            if on_step is not None:
                on_step(step, record)
    finally:
        bar.close()
        checkpointer.close()
        if writer is not None:
            writer.close()
        tb.close()

    summary = metrics_lib.summarize(records, cfg.tokens_per_step, opt_state_bytes=opt_bytes,
                                    param_count=n_params, workdir=str(workdir))
    summary.update(layout)
    if is_main:
        ckpt_lib.write_json_atomic(workdir / "summary.json", summary)
        if cfg.plots:
            metrics_lib.plot_run(workdir)
    return summary


def _routing_report(params: Any, opt_cfg) -> str | None:
    """The routing table (path, shape, role, transform, lr multiplier) for the manifest."""
    try:
        return opt_lib.routing_report(params, opt_lib.group_transforms(opt_cfg))
    except (ValueError, opt_lib.OptimizerNotAvailable) as e:
        return f"unavailable: {e}"


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> dict:
    """``python -m experiments.train --preset NAME [--smoke] --workdir DIR [--distributed
    [--coordinator HOST:PORT --num-processes N --process-id I]] [overrides]``.

    ``--preset``/``--smoke`` pick the base config (:func:`experiments.configs.get_config`);
    ``--distributed`` calls :func:`initialize_distributed` before anything else (without the
    three optional flags jax detects Slurm / Open MPI / TPU environments); every other flag
    is a tyro override of a :class:`TrainConfig` field (``--steps 100``, ``--optimizer.name
    muon``, ``--optimizer.options rank 16``, ``--data.batch-size 32``, ``--sharding.fsdp 8``,
    ``--sharding.tp 2``, ``--sharding.rules 'lm_head' 'None,tp'``).
    """
    import argparse
    import json
    import sys

    import tyro

    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="tiny")
    pre.add_argument("--smoke", action="store_true")
    pre.add_argument("--workdir", default=None)
    pre.add_argument("--distributed", action="store_true")
    pre.add_argument("--coordinator", default=None)
    pre.add_argument("--num-processes", type=int, default=None)
    pre.add_argument("--process-id", type=int, default=None)
    known, rest = pre.parse_known_args(argv)
    given = [f for f in ("coordinator", "num_processes", "process_id")
             if getattr(known, f) is not None]
    if given and not known.distributed:
        raise SystemExit(f"experiments.train: --{given[0].replace('_', '-')} needs "
                         "--distributed")
    if known.distributed:
        initialize_distributed(known.coordinator, known.num_processes, known.process_id)
    base = get_config(known.preset, smoke=known.smoke)
    cfg = tyro.cli(TrainConfig, default=base, args=rest,
                   prog="python -m experiments.train --preset NAME [--smoke] --workdir DIR",
                   description="Train a preset; flags below override its fields.")
    if known.workdir is None:
        raise SystemExit("experiments.train: --workdir DIR is required")
    summary = train_and_evaluate(cfg, known.workdir)
    if jax.process_index() == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return summary


if __name__ == "__main__":
    main()
