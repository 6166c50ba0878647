"""Orthogonalizer benchmark: accuracy, singular-value range, time and FLOP efficiency.

For transformer-like shapes (square, 1:3, 1:4, 1:8 and a 32×d router block) and for float32
and bfloat16, every method of ``optzoo.linalg`` and optax's Newton–Schulz (the baseline, as
``optax.contrib.muon`` runs it: Jordan's quintic, 5 steps, input dtype) are timed in the same
run on the same Gaussian inputs. Reported per method:

* ``err``: ‖f(X) − polar(X)‖_F / ‖polar(X)‖_F against the float64 SVD polar factor;
* ``sv_min``/``sv_max``: singular-value range of the output;
* ``ms``: median wall time of the jitted call (``block_until_ready``);
* ``gflops``: theoretical FLOPs (``optzoo.linalg.orthogonalizer_flops``) / time;
* ``eff``: ``gflops`` ÷ the rate of one large square matmul of the same dtype measured in the
  same run (side ``--peak-d``: 8192 on GPU, ``max(d, 1024)`` on CPU);
* ``vs_optax``: time ratio against optax's NS5 on the same shape and dtype.

Usage::

    python -m experiments.bench.orthogonalize                 # d=768 shapes, fp32 + bf16
    python -m experiments.bench.orthogonalize --d 2048 --out results/bench/gpu.json
    python -m experiments.bench.orthogonalize --quick          # small shapes, for smoke tests
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import write_result
from optzoo import linalg

BASELINE = "optax_ns5"


def _optax_ns5() -> Callable[[jax.Array], jax.Array]:
    # optax does not export its orthogonalizer at top level; this is the function that
    # optax.contrib.scale_by_muon calls per leaf, with muon's defaults.
    from optax.contrib import _muon

    coeffs = jnp.asarray(linalg.JORDAN_QUINTIC)

    def f(x):
        return _muon.orthogonalize_via_newton_schulz(x, coeffs, 5)

    return f


def methods() -> dict[str, tuple[Callable[[jax.Array], jax.Array], str, int | None]]:
    """name -> (function, flop-count method, steps)."""
    return {
        BASELINE: (_optax_ns5(), "newton_schulz", 5),
        "newton_schulz": (lambda x: linalg.newton_schulz(x), "newton_schulz", 5),
        "polar_express": (lambda x: linalg.polar_express(x), "polar_express", 5),
        "gram_newton_schulz": (lambda x: linalg.gram_newton_schulz(x), "gram_newton_schulz", 5),
        "auto (default)": (lambda x: linalg.orthogonalize(x), "auto", None),
        "svd": (lambda x: linalg.orthogonalize(x, "svd"), "svd", None),
        "qdwh": (lambda x: linalg.orthogonalize(x, "qdwh"), "qdwh", None),
    }


def shapes(d: int) -> list[tuple[str, tuple[int, int]]]:
    return [
        ("square", (d, d)),
        ("1:3", (d, 3 * d)),
        ("1:4", (d, 4 * d)),
        ("1:8", (d, 8 * d)),
        ("router 32xd", (32, d)),
    ]


def _time(fn: Callable[[], Any], min_total: float, max_reps: int) -> float:
    jax.block_until_ready(fn())  # compile + warm
    first = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - first
    reps = int(min(max_reps, max(3, min_total / max(first, 1e-6))))
    times = [first]
    for _ in range(reps - 1):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _matmul_rate(d: int, dtype: Any, min_total: float, max_reps: int) -> float:
    key = jax.random.PRNGKey(1)
    a = jax.random.normal(key, (d, d), jnp.float32).astype(dtype)
    f = jax.jit(lambda a: a @ a)
    t = _time(lambda: f(a), min_total, max_reps)
    return 2 * d**3 / t / 1e9


def _polar64(x: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    return u @ vt


def run(
    d: int,
    dtypes: list[str],
    min_total: float,
    max_reps: int,
    skip: tuple[str, ...] = (),
    peak_d: int | None = None,
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    table = methods()
    rows = []
    peaks = {}
    for dname in dtypes:
        dtype = jnp.dtype(dname)
        if peak_d is None:  # large enough to reach the GEMM roofline (launch cost hidden)
            peak_d = 8192 if jax.default_backend() == "gpu" else max(d, 1024)
        peaks[dname] = _matmul_rate(peak_d, dtype, min_total, max_reps)
        print(f"\n== {dname}: square {peak_d}x{peak_d} matmul {peaks[dname]:.1f} GFLOP/s ==")
        print(
            f"{'shape':>12} {'method':>20} {'err':>7} {'sv_min':>7} {'sv_max':>7} "
            f"{'ms':>9} {'GFLOP/s':>8} {'eff':>5} {'vs_optax':>8}"
        )
        for label, shape in shapes(d):
            x = jnp.asarray(rng.standard_normal(shape), jnp.float32).astype(dtype)
            ref = _polar64(np.asarray(x.astype(jnp.float32)))
            base_ms = None
            for name, (fn, flop_method, steps) in table.items():
                if name in skip:
                    continue
                f = jax.jit(fn)
                out = np.asarray(f(x).astype(jnp.float32), np.float64)
                sv = np.linalg.svd(out, compute_uv=False)
                err = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
                secs = _time(lambda f=f, x=x: f(x), min_total, max_reps)
                flops = linalg.orthogonalizer_flops(shape, flop_method, steps)
                gflops = flops / secs / 1e9 if flops else float("nan")
                if name == BASELINE:
                    base_ms = secs * 1e3
                row = dict(
                    dtype=dname,
                    shape=list(shape),
                    label=label,
                    method=name,
                    err=err,
                    sv_min=float(sv.min()),
                    sv_max=float(sv.max()),
                    ms=secs * 1e3,
                    gflops=gflops,
                    eff=gflops / peaks[dname],
                    vs_optax=(secs * 1e3 / base_ms) if base_ms else float("nan"),
                )
                rows.append(row)
                print(
                    f"{label:>12} {name:>20} {err:7.3f} {row['sv_min']:7.3f} "
                    f"{row['sv_max']:7.3f} {row['ms']:9.2f} {gflops:8.1f} {row['eff']:5.2f} "
                    f"{row['vs_optax']:8.2f}"
                )
    return dict(
        device=str(jax.devices()[0]),
        device_kind=jax.devices()[0].device_kind,
        platform=jax.default_backend(),
        cpu_count=os.cpu_count(),
        machine=platform.machine(),
        jax=jax.__version__,
        d=d,
        peak_d=peak_d,
        matmul_gflops=peaks,
        rows=rows,
        date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    )


def markdown(result: dict[str, Any]) -> str:
    """A compact markdown table of a result: per shape and dtype, error and time ratio."""
    cols = [BASELINE, "auto (default)", "gram_newton_schulz", "polar_express", "svd"]
    by = {(r["dtype"], r["label"], r["method"]): r for r in result["rows"]}
    head = (
        "| dtype | shape | optax NS5 err / ms / eff | auto err / × | Gram-NS5 err / × | "
        "PE5 err / × | SVD × |"
    )
    lines = [
        f"{result['device_kind']} ({result['platform']}, jax {result['jax']}, "
        f"{result['date']}); eff = achieved FLOP rate / {result['peak_d']}² matmul rate "
        f"({', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in result['matmul_gflops'].items())})",
        "",
        head,
        "|" + "---|" * 7,
    ]
    labels = dict.fromkeys(r["label"] for r in result["rows"])
    for dname in result["matmul_gflops"]:
        for label in labels:
            rows = [by.get((dname, label, c)) for c in cols]
            if rows[0] is None:
                continue
            b, a, g, p, sv = rows
            shape = "×".join(map(str, b["shape"]))

            def cell(r):
                return "–" if r is None else f"{r['err']:.3f} / {r['vs_optax']:.2f}×"

            lines.append(
                f"| {dname} | {label} {shape} | {b['err']:.3f} / {b['ms']:.2f} / "
                f"{b['eff']:.2f} | {cell(a)} | {cell(g)} | {cell(p)} | "
                f"{'–' if sv is None else format(sv['vs_optax'], '.1f')}× |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d", type=int, default=768, help="model width; shapes are d×(k·d)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per entry")
    p.add_argument("--max-reps", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="d=64, short timings (smoke test)")
    p.add_argument("--skip", default="", help="comma-separated methods to leave out")
    p.add_argument("--peak-d", type=int, default=None, help="side of the reference matmul")
    p.add_argument(
        "--render",
        default=None,
        metavar="JSON",
        help="print the markdown table of a saved result and exit",
    )
    p.add_argument("--out", default=None, help="JSON path (default results/bench/...)")
    args = p.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            result = json.load(f)
        print(markdown(result))
        return result
    d, min_total, max_reps = args.d, args.min_time, args.max_reps
    if args.quick:
        d, min_total, max_reps = 64, 0.0, 3
    peak_d = 64 if args.quick else args.peak_d
    result = run(
        d,
        [s for s in args.dtypes.split(",") if s],
        min_total,
        max_reps,
        tuple(s for s in args.skip.split(",") if s),
        peak_d,
    )
    out = args.out or os.path.join(
        "results", "bench", f"orthogonalize-{result['platform']}-d{d}.json"
    )
    write_result(out, result)
    print(f"\nwrote {out}\n")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
