"""The jitted pieces of a training step, and the sharded initialization they run on.

:func:`init_state` builds the model and ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` in jitted
functions whose outputs are created directly in the shardings of
:func:`experiments.sharding.param_specs` / ``opt_state_specs``; :func:`make_train_step` gives
the gradient, update and evaluation functions (:class:`Steps`); :func:`evaluate` runs the fixed
validation set. Everything is cached per (model graph, mesh, shardings, ...), so the runs of
one model in a process compile each piece once.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import metrics as metrics_lib
from experiments import models
from experiments import optimizers as opt_lib
from experiments import sharding as shard_lib
from experiments.configs import ShardingConfig

__all__ = ["Steps", "make_train_step", "init_state", "cross_entropy", "evaluate"]


class Steps(NamedTuple):
    """The jitted pieces of a training step.

    ``grads(params, rest, x, y) -> (grads, metrics)``: mean gradient over the ``A``
    micro-batches of ``x, y [A, B, T]`` (accumulated in float32) with ``loss``, ``ce``, MoE
    aux metrics and ``grad_norm[/group]``. ``apply(state, grads) -> (state, metrics)``: the
    optimizer update (``nnx.Optimizer.update``) with ``update_norm``, ``param_norm``,
    ``update_ratio`` per group, the learning rates of the update (``lr``, ``lr_factor/<group>``,
    read from the optimizer state by :func:`experiments.optimizers.learning_rates`) and
    ``skipped_steps``. ``eval(params, rest, x, y) -> (ce, router)``: validation cross-entropy of
    one batch and, for MoE models, that batch's router statistics (``{'router/<i>/<metric>':
    scalar, 'router/<i>/expert_load': [E]}``; ``{}`` for dense models). ``state`` is
    ``{'params', 'rest', 'opt'}`` (``nnx.State`` s). Gradients come out in the parameters'
    shardings, the new state in the state's, metrics replicated. ``grads`` and ``eval`` do
    not depend on the optimizer and are cached per (model graph, mesh, shardings,
    accumulation), so runs of one model in a process compile them once.
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
def _grad_step(
    graphdef: Any,
    groups: tuple[str, ...],
    mesh: Mesh,
    grad_accum: int,
    param_shardings: tuple | None,
) -> Callable:
    value_and_grad = jax.value_and_grad(
        lambda p, r, x, y: _loss_fn(graphdef, p, r, x, y), has_aux=True
    )

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
            (gsum, lsum, msum), _ = jax.lax.scan(body, (zeros_g, jnp.float32(0), zeros_m), (x, y))
            grads = jax.tree.map(lambda s, p: (s / grad_accum).astype(p.dtype), gsum, params)
            loss = lsum / grad_accum
            metrics = jax.tree.map(lambda v: v / grad_accum, msum)
        metrics = {"loss": loss, **metrics}
        metrics.update(metrics_lib.group_norms(grads, groups, "grad_norm"))
        return grads, metrics

    return jax.jit(grads_fn, out_shardings=(_thaw(param_shardings, mesh), NamedSharding(mesh, P())))


@functools.lru_cache(maxsize=16)
def _eval_step(graphdef: Any, mesh: Mesh) -> Callable:
    def eval_fn(params, rest, x, y):
        model = nnx.merge(graphdef, params, rest)
        logits, aux = model(x)
        router = {k: v for k, v in aux.items() if k.startswith("router/")}
        return cross_entropy(logits, y), router

    return jax.jit(eval_fn, out_shardings=NamedSharding(mesh, P()))


def make_train_step(
    graphdef: Any,
    opt_graphdef: Any,
    groups: Sequence[str],
    mesh: Mesh,
    *,
    grad_accum: int = 1,
    donate: bool = False,
    state_shardings: dict | None = None,
) -> Steps:
    """The jitted grads / apply / eval functions (see :class:`Steps`).

    Args:
      graphdef: model graphdef of ``nnx.split(model, nnx.Param, ...)``.
      opt_graphdef: graphdef of ``nnx.split(optimizer)``.
      groups: the group of every parameter leaf, in leaf order
        (``jax.tree.leaves(experiments.optimizers.param_groups(params))``), for the per-group
        norms.
      mesh: the device mesh (metrics are replicated over it).
      grad_accum: micro-batches per step.
      donate: donate the state and gradient buffers to ``apply`` (off on CPU, where orbax's
        asynchronous save may still read the host buffers).
      state_shardings: ``{'params', 'rest', 'opt'}`` trees of ``NamedSharding`` (those of
        :func:`init_state`'s state: ``jax.tree.map(lambda a: a.sharding, state)``); the
        gradients and the new state keep them. ``None``: everything replicated.
    """
    groups_t = tuple(groups)
    param_sh = None if state_shardings is None else _freeze(state_shardings["params"])
    return Steps(
        grads=_grad_step(graphdef, groups_t, mesh, grad_accum, param_sh),
        apply=_apply_step(graphdef, opt_graphdef, groups_t, mesh, donate, _freeze(state_shardings)),
        eval=_eval_step(graphdef, mesh),
    )


@functools.lru_cache(maxsize=16)
def _apply_step(
    graphdef: Any,
    opt_graphdef: Any,
    groups: tuple[str, ...],
    mesh: Mesh,
    donate: bool,
    state_shardings: tuple | None,
) -> Callable:
    def apply_fn(state, grads):
        model = nnx.merge(graphdef, state["params"], state["rest"])
        optimizer = nnx.merge(opt_graphdef, state["opt"])
        updates = optimizer.update(model, grads)
        _, params, rest = nnx.split(model, nnx.Param, ...)
        new_state = {"params": params, "rest": rest, "opt": nnx.state(optimizer)}
        metrics = metrics_lib.group_norms(updates, groups, "update_norm")
        metrics.update(metrics_lib.group_norms(params, groups, "param_norm"))
        metrics.update(_update_ratios(metrics))
        metrics.update(opt_lib.learning_rates(optimizer.opt_state))
        skipped = opt_lib.skipped_steps(optimizer.opt_state)
        if skipped is not None:
            metrics["skipped_steps"] = skipped
        return new_state, metrics

    return jax.jit(
        apply_fn,
        out_shardings=(_thaw(state_shardings, mesh), NamedSharding(mesh, P())),
        donate_argnums=(0, 1) if donate else (),
    )


@functools.lru_cache(maxsize=16)
def _model_init(model_cfg: models.ModelConfig, seed: int, mesh: Mesh, sharding: ShardingConfig):
    graphdefs = {}

    def build():
        graphdef, params, rest = nnx.split(models.build(model_cfg, seed=seed), nnx.Param, ...)
        graphdefs["model"] = graphdef
        return params, rest

    params_abstract, _ = jax.eval_shape(build)
    specs = shard_lib.param_specs(params_abstract, sharding, mesh)
    out = (shard_lib.named_shardings(specs, mesh), NamedSharding(mesh, P()))
    return jax.jit(build, out_shardings=out), graphdefs["model"], specs


def init_state(
    model_cfg: models.ModelConfig,
    tx: Any,
    seed: int,
    mesh: Mesh,
    sharding: ShardingConfig | None = None,
) -> tuple[tuple[Any, Any], dict]:
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
def _opt_init(graphdef: Any, tx: Any, mesh: Mesh, sharding: ShardingConfig, param_specs: tuple):
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
            jitted["fn"] = jax.jit(init_opt, out_shardings=shard_lib.named_shardings(specs, mesh))
        return jitted["fn"](params, rest)

    return init, graphdefs


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy (float32) of one batch."""
    import optax

    return jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    )


def evaluate(eval_step: Callable, state: dict, val_batches: list) -> dict:
    """``{'val_loss', 'val_bpt', 'eval_ms'}``: mean cross-entropy over the fixed validation
    batches (``val_batches``: device arrays), in nats and bits per token; for MoE models also
    the router statistics on the validation set (:func:`experiments.metrics.val_router_record`:
    each per-batch statistic averaged over the batches, as the reference's
    ``train_gpt-oss_router_metrics.py`` does)."""
    t0 = time.perf_counter()
    outs = jax.device_get([eval_step(state["params"], state["rest"], x, y) for x, y in val_batches])
    values = [float(ce) for ce, _ in outs]
    val = float(np.mean(np.asarray(values, np.float64)))
    record = {"val_loss": val, "val_bpt": val / math.log(2)}
    record.update(metrics_lib.val_router_record([r for _, r in outs]))
    record["eval_ms"] = (time.perf_counter() - t0) * 1e3
    return record
