"""Cost of the symmetry-compatible stack: optimizer-state bytes and jitted step time.

Compares, on one parameter tree:

* ``adamw`` — ``optax.adamw`` (b1 0.9, b2 0.95), the baseline of every ratio;
* ``symmetry_compatible[<preset>]`` — ``optzoo.symmetric_stack.symmetry_compatible`` (default
  preset ``paper``: row-norm embedding, centered row-norm LM head / router, head-wise Muon
  attention, Muon MLP, AdamW vectors);
* ``muon[all matrices]`` — ``optzoo.muon.muon`` with its default layout, i.e. Muon on *every*
  leaf with >= 2 axes, embeddings and LM head included, AdamW on the rest.

State bytes come from the state pytree of ``jax.eval_shape(tx.init, params)`` (nothing is
allocated). Step time is the median wall time of a jitted, buffer-donating
``update + apply_updates`` over ``--steps`` calls after one warm-up call (whose time, mostly
compilation, is reported separately), with random normal gradients.

Trees: the GPT-2-small-like tree of :mod:`experiments.bench.trees` (default; tied embedding,
fused qkv, 124M parameters; ``head_dim`` 64) or a preset of :mod:`experiments.models`
(``--model tiny_moe``; ``head_dim`` from the config).

Usage::

    python -m experiments.bench.symmetric_cost
    python -m experiments.bench.symmetric_cost --model tiny_moe --preset olmoe_left
    python -m experiments.bench.symmetric_cost --steps 20 --out results/bench/symmetric_cost.json
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from experiments.bench import write_result
from experiments.bench.trees import gpt2_small_like_tree
from optzoo.muon import muon
from optzoo.symmetric_stack import PRESETS, symmetry_compatible

__all__ = ["state_bytes", "step_time", "optimizers", "measure", "format_table", "main"]


def state_bytes(tx: optax.GradientTransformation, params: Any) -> int:
    """Bytes of ``tx.init(params)``'s leaves, from shapes only (``jax.eval_shape``)."""
    shapes = jax.eval_shape(tx.init, params)
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(shapes))


def step_time(
    tx: optax.GradientTransformation, params: Any, grads: Any, steps: int
) -> tuple[float, list[float]]:
    """``(first-call seconds, per-step seconds)`` of a jitted update + apply."""

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    fn = jax.jit(step, donate_argnums=(0, 1))
    params = jax.tree.map(jnp.copy, params)  # donated below
    state = tx.init(params)
    t0 = time.perf_counter()
    params, state = jax.block_until_ready(fn(params, state, grads))
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        params, state = jax.block_until_ready(fn(params, state, grads))
        times.append(time.perf_counter() - t0)
    return first, times


def optimizers(
    preset: str, head_dim: int | None, ortho_dtype: Any
) -> list[tuple[str, Callable[[], Any], str]]:
    """``(name, factory, note)`` rows."""
    return [
        ("adamw", lambda: optax.adamw(3e-4, b1=0.9, b2=0.95, weight_decay=0.1), ""),
        (
            f"symmetry_compatible[{preset}]",
            lambda: symmetry_compatible(
                PRESETS[preset]["learning_rate"],
                preset=preset,
                head_dim=head_dim,
                ortho_dtype=ortho_dtype,
            ),
            "",
        ),
        (
            "muon[all matrices]",
            lambda: muon(0.02, ortho_method="polar_express", ortho_dtype=ortho_dtype),
            "Muon on every >=2-D leaf incl. embeddings / head",
        ),
    ]


def _tree(model: str, dtype: Any) -> tuple[Any, int | None, str]:
    if model == "gpt2_small_tree":
        return gpt2_small_like_tree(dtype), 64, "GPT-2-small-like tree (tied, fused qkv)"
    from flax import nnx

    import experiments.models as models

    cfg = models.get_preset(model)
    state = nnx.state(models.build(cfg, abstract=True), nnx.Param)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), state)
    return abstract, cfg.head_dim, f"experiments.models preset {model!r}"


def measure(
    model: str = "gpt2_small_tree",
    preset: str = "paper",
    dtype: str = "float32",
    steps: int = 5,
    ortho_dtype: str | None = None,
    time_steps: bool = True,
) -> dict[str, Any]:
    """State bytes (and step times) of each optimizer on one tree."""
    dt = jnp.dtype(dtype)
    odt = None if ortho_dtype is None else jnp.dtype(ortho_dtype)
    abstract, head_dim, desc = _tree(model, dt)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract))
    concrete = grads = None
    if time_steps:
        keys = iter(jax.random.split(jax.random.PRNGKey(0), 2 * len(jax.tree.leaves(abstract))))
        concrete = jax.tree.map(
            lambda x: 0.02 * jax.random.normal(next(keys), x.shape, x.dtype), abstract
        )
        grads = jax.tree.map(lambda x: jax.random.normal(next(keys), x.shape, x.dtype), abstract)
    rows = []
    for name, make, note in optimizers(preset, head_dim, odt):
        tx = make()
        row: dict[str, Any] = {
            "optimizer": name,
            "note": note,
            "state_bytes": state_bytes(tx, abstract),
        }
        if time_steps:
            first, times = step_time(tx, concrete, grads, steps)
            row["first_call_s"] = first
            row["step_ms_median"] = 1e3 * statistics.median(times)
            row["step_ms_min"] = 1e3 * min(times)
        rows.append(row)
    base = rows[0]
    for r in rows:
        r["state_ratio_vs_adamw"] = r["state_bytes"] / base["state_bytes"]
        r["bytes_per_param"] = r["state_bytes"] / n_params
        if "step_ms_median" in r:
            r["step_ratio_vs_adamw"] = r["step_ms_median"] / base["step_ms_median"]
    return {
        "tree": desc,
        "model": model,
        "params": n_params,
        "dtype": dtype,
        "preset": preset,
        "head_dim": head_dim,
        "ortho_dtype": ortho_dtype,
        "steps": steps,
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "host": platform.node(),
        "rows": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    head = (
        f"{'optimizer':<34} {'state MiB':>10} {'B/param':>8} {'vs AdamW':>9} "
        f"{'step ms':>9} {'vs AdamW':>9} {'1st call s':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        step = (
            f"{r['step_ms_median']:>9.2f} {r['step_ratio_vs_adamw']:>9.2f} "
            f"{r['first_call_s']:>10.1f}"
            if "step_ms_median" in r
            else ""
        )
        lines.append(
            f"{r['optimizer']:<34} {r['state_bytes'] / 2**20:>10.1f} "
            f"{r['bytes_per_param']:>8.2f} {r['state_ratio_vs_adamw']:>9.3f} {step}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        default="gpt2_small_tree",
        help="'gpt2_small_tree' or an experiments.models preset name",
    )
    ap.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument(
        "--ortho-dtype",
        default=None,
        choices=[None, "bfloat16", "float32"],
        help="Muon orthogonalizer dtype (released runs: bfloat16)",
    )
    ap.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up")
    ap.add_argument("--no-time", action="store_true", help="state bytes only")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)
    result = measure(
        args.model,
        args.preset,
        args.dtype,
        args.steps,
        args.ortho_dtype,
        time_steps=not args.no_time,
    )
    print(
        f"{result['tree']}: {result['params']:,} parameters ({args.dtype}), preset "
        f"{args.preset!r}, head_dim {result['head_dim']}, on {result['device']} "
        f"({result['backend']})"
    )
    print(format_table(result))
    if args.out:
        write_result(args.out, result, indent=2)
    return result


if __name__ == "__main__":
    main()
