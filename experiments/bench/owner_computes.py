"""Step time of ``optzoo.muon`` with FSDP-sharded parameters, with vs without owner-computes.

Builds the GPT-2-small tree of :func:`experiments.bench.trees.gpt2_small_like_tree` (optionally
only its first ``--layers`` layers), shards every leaf over all local devices along its first
axis that the device count divides (FSDP; leaves with no such axis are replicated), and times
one jitted ``muon.update`` + ``apply_updates`` (state and parameters donated) with
``owner_computes=None`` (XLA's SPMD partitioning of the orthogonalizer) and with
``owner_computes=OwnerComputes(mesh)`` (:mod:`optzoo.distributed`). Muon is applied to the
``kernel`` leaves under ``layers/`` (AdamW elsewhere). Prints one JSON object: per variant the
median and minimum step time, and the ratio.

On a CPU host, force several devices (they share the host's cores, so the ratio is only
indicative)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python -m experiments.bench.owner_computes --layers 2 --reps 3
    python -m experiments.bench.owner_computes            # on a multi-GPU host
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optzoo
from experiments.bench.trees import gpt2_small_like_tree, hidden_layout


def build_tree(layers: int | None) -> dict[str, Any]:
    """The GPT-2-small tree with random float32 leaves, truncated to ``layers`` layers.

    Args:
      layers: keep only layers ``0 .. layers-1`` (``None``: all 12).

    Returns:
      The parameter tree.
    """
    tree = gpt2_small_like_tree(abstract=True)
    if layers is not None:
        tree["layers"] = {k: v for k, v in tree["layers"].items() if int(k) < layers}
    keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(tree))))
    return jax.tree.map(lambda s: 0.02 * jax.random.normal(next(keys), s.shape, s.dtype), tree)


def fsdp_shardings(tree: Any, mesh: Mesh) -> Any:
    """Each leaf sharded over all mesh axes on its first axis the device count divides."""
    d = mesh.devices.size

    def one(x):
        for axis, size in enumerate(x.shape):
            if size % d == 0:
                spec = [None] * x.ndim
                spec[axis] = tuple(mesh.axis_names)
                return NamedSharding(mesh, P(*spec))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, tree)


def time_variant(
    tx: optax.GradientTransformation, params: Any, grads: Any, shardings: Any, reps: int
) -> list[float]:
    """Wall times of ``reps`` jitted steps (after one warm-up/compile step)."""
    params = jax.device_put(jax.tree.map(jnp.copy, params), shardings)
    grads = jax.device_put(grads, shardings)
    state = jax.jit(tx.init)(params)

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step, donate_argnums=(0, 1))
    params, state = jax.block_until_ready(step(params, state, grads))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        params, state = jax.block_until_ready(step(params, state, grads))
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark and prints (and returns) the JSON result.

    Args:
      argv: command-line arguments (``--layers``, ``--reps``).

    Returns:
      The result dictionary.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=None, help="first N layers only")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    mesh = Mesh(np.asarray(jax.devices()), ("fsdp",))
    params = build_tree(args.layers)
    grads = jax.tree.map(lambda x: jnp.ones_like(x) * 1e-3 + x, params)
    shardings = fsdp_shardings(params, mesh)
    layout = hidden_layout(params)
    result: dict[str, Any] = {
        "devices": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "layers": args.layers or 12,
        "reps": args.reps,
        "plan": [g._asdict() for g in optzoo.OwnerComputes(mesh).plan(params, layout)],
    }
    for name, oc in (("sharded_spmd", None), ("owner_computes", optzoo.OwnerComputes(mesh))):
        times = time_variant(
            optzoo.muon(0.02, layout=layout, owner_computes=oc), params, grads, shardings, args.reps
        )
        result[name] = {"median_s": statistics.median(times), "min_s": min(times)}
    result["ratio_owner_over_spmd"] = (
        result["owner_computes"]["median_s"] / result["sharded_spmd"]["median_s"]
    )
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
