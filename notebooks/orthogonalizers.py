# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Orthogonalizers: accuracy versus cost
#
# Muon-type optimizers replace a gradient matrix `X = U Σ Vᵀ` by (an approximation of) its
# polar factor `polar(X) = U Vᵀ`. `optzoo.linalg.orthogonalize` offers several ways to compute
# it; this notebook compares them on two axes:
#
# 1. **What they compute.** Every iterative method applies one odd scalar polynomial
#    `φ` to each singular value: `f(X) = U φ(Σ) Vᵀ`. We plot `φ(σ)` on a log σ axis for
#    Jordan's Newton–Schulz quintic (NS5), Polar Express (PE5) and the `'auto'` table for
#    rectangular blocks, against the ideal step function (`φ = 1` for every `σ > 0`), and check
#    that the matrix iterations really apply that scalar map.
# 2. **How close they get** to the exact polar factor (relative Frobenius error against a
#    float64 numpy SVD), as a function of the iteration count and of its FLOP cost
#    (`optzoo.linalg.orthogonalizer_flops`).
# 3. **How fast they run**, timed on this machine by the benchmark module
#    `experiments.bench.orthogonalize` (same inputs, same run, optax's NS5 as the baseline),
#    and, when the committed file is present, the H100 result of the same benchmark.
#
# Settings: `OPTZOO_SMOKE=1` (what the test suite runs) uses tiny matrices and one short
# timing pass; unset it for the full settings (d = 512; float32 on CPU, float32 and bfloat16
# on an accelerator; a few minutes on a CPU).

# %%
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

import experiments
from experiments.bench import orthogonalize as bench
from optzoo import linalg, testing

SMOKE = os.environ.get("OPTZOO_SMOKE", "0").lower() not in ("", "0", "false", "no")
REPO = Path(experiments.__file__).resolve().parents[1]  # the checkout (editable install)

# Sizes: the side n of the "square" and "1:4" test matrices, the iteration counts of the
# accuracy study, and the benchmark's model width d (its shapes are d×d, d×3d, d×4d, d×8d and
# 32×d).
N = 32 if SMOKE else 256
STEPS = (1, 2, 3, 4, 5, 6) if SMOKE else (1, 2, 3, 4, 5, 6, 7, 8)
BENCH_D = 32 if SMOKE else 512
# bfloat16 only on accelerators: CPUs emulate it, so its timings say nothing there
BENCH_DTYPES = ["float32"] if SMOKE or jax.default_backend() == "cpu" else ["float32", "bfloat16"]
BENCH_MIN_TIME, BENCH_MAX_REPS = (0.0, 3) if SMOKE else (0.5, 20)
BENCH_SKIP = ("qdwh", "newton_schulz") if SMOKE else ()  # smoke: fewer compilations
BENCH_PEAK_D = 64 if SMOKE else None  # side of the reference matmul (None: the bench default)
print(
    f"SMOKE={SMOKE}: n={N}, steps={STEPS}, bench d={BENCH_D} {BENCH_DTYPES}; "
    f"jax {jax.__version__} on {jax.devices()[0].device_kind}"
)

# %% [markdown]
# ## 1. The singular-value map φ(σ)
#
# The iterations first divide `X` by its Frobenius norm (times 1.02 for the Polar Express
# tables, the safety factor they were designed for), so every singular value enters as
# `x = σ / (s‖X‖_F) ∈ (0, 1]`, then apply `x ← a x + b x³ + c x⁵` once per coefficient row.
# Below, `σ` on the horizontal axis is the singular value divided by `‖X‖_F`.
#
# * **NS5**: Jordan's `(3.4445, −4.7750, 2.0315)` five times — tuned for a steep slope at 0,
#   it does not converge to 1 but oscillates (between about 0.47 and 1.20 on [1e-3, 1]);
# * **PE5**: `polar_express_coefficients(5)`, minimax-optimal on `[1e-3, 1]` (the default of
#   `'polar_express'` and of `'auto'` on square-ish blocks);
# * **auto (rectangular)**: `polar_express_coefficients(4, lower=5e-3)`, what `'auto'` runs
#   on blocks of aspect ratio ≥ 2, whose normalized spectrum stays away from 0.

# %%
TABLES = {
    "NS5 (Jordan quintic ×5)": (np.tile(np.asarray(linalg.JORDAN_QUINTIC), (5, 1)), 1.0),
    "PE5 (Polar Express, [1e-3, 1])": (linalg.polar_express_coefficients(5), 1.02),
    "auto rectangular (PE4, [5e-3, 1])": (linalg.polar_express_coefficients(4, lower=5e-3), 1.02),
}


def phi(sigma, table, scale):
    """The composed scalar polynomial in float64: what the iteration does to σ/‖X‖_F."""
    x = np.asarray(sigma, np.float64) / scale
    for a, b, c in np.asarray(table, np.float64):
        x = a * x + b * x**3 + c * x**5
    return x


sigma = np.logspace(-4, 0, 2000)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
for name, (table, scale) in TABLES.items():
    axes[0].plot(sigma, phi(sigma, table, scale), label=name)
    axes[1].plot(sigma, np.abs(1 - phi(sigma, table, scale)), label=name)
axes[0].plot(sigma, np.ones_like(sigma), "k--", lw=1, label="ideal: φ(σ) = 1 for σ > 0")
for ax in axes:
    ax.axvspan(1e-3, 1, color="C1", alpha=0.07, label="PE5 design interval [1e-3, 1]")
    ax.set_xscale("log")
    ax.set_xlabel("normalized singular value σ / ‖X‖_F (dimensionless)")
    ax.grid(alpha=0.3, which="both")
axes[0].set_ylabel("output singular value φ(σ) (dimensionless)")
axes[0].set_title("Singular-value map of each orthogonalizer")
axes[1].set_yscale("log")
axes[1].set_ylabel("distance to the ideal |1 − φ(σ)| (dimensionless)")
axes[1].set_title("Error of the scalar map")
axes[0].legend(fontsize=8)
axes[1].legend(fontsize=8, loc="lower left")
fig.tight_layout()
plt.show()

for name, (table, scale) in TABLES.items():
    ranges = []
    for lo in (1e-3, 5e-3, 1e-2):
        band = phi(np.logspace(np.log10(lo), 0, 2000), table, scale)
        ranges.append(f"[{lo:g}, 1] -> [{band.min():.3f}, {band.max():.3f}]")
    print(f"{name:36s} φ on " + ";  ".join(ranges))

# %% [markdown]
# **Check: the matrix iteration applies exactly this scalar map.** We build
# `X = U diag(s) Vᵀ` with known orthonormal `U, V` and singular values spread over four
# decades, run the float32 iteration, and read `Uᵀ f(X) V`: its diagonal must equal
# `φ(s/‖X‖_F)` and its off-diagonal must vanish. Tolerance 1e-4 (absolute): float32 rounding
# (~1e-7) amplified by the polynomial's slope (up to ~8 in PE's first step) and by the steps
# (measured: ≤ 1e-5). Matrix products run at full float32 precision here (on GPUs the default
# would be TF32, ~1e-3).

# %%
rng = np.random.default_rng(0)
scalar_check = []
for m, n in [(N, N), (N, 4 * N)]:
    r = min(m, n)
    u = testing.orthogonal_matrix(m, seed=1)[:, :r]
    v = testing.orthogonal_matrix(n, seed=2)[:, :r]
    s = np.logspace(-4, 0, r)
    x = (u * s) @ v.T
    rect = max(m, n) >= 2 * min(m, n)
    cases = {
        "NS5 (Jordan quintic ×5)": (linalg.newton_schulz, TABLES["NS5 (Jordan quintic ×5)"]),
        "PE5 (Polar Express, [1e-3, 1])": (
            linalg.polar_express,
            TABLES["PE5 (Polar Express, [1e-3, 1])"],
        ),
        "auto": (
            linalg.orthogonalize,
            TABLES["auto rectangular (PE4, [5e-3, 1])"]
            if rect
            else TABLES["PE5 (Polar Express, [1e-3, 1])"],
        ),
    }
    for name, (fn, (table, scale)) in cases.items():
        with jax.default_matmul_precision("highest"):
            out = fn(jnp.asarray(x, jnp.float32))
        core = u.T @ np.asarray(out, np.float64) @ v
        diag_err = np.abs(np.diag(core) - phi(s / np.linalg.norm(s), table, scale)).max()
        off_err = np.abs(core - np.diag(np.diag(core))).max()
        scalar_check.append(
            dict(shape=f"{m}×{n}", method=name, max_diag_error=diag_err, max_off_diagonal=off_err)
        )
scalar_check = pd.DataFrame(scalar_check)
display(scalar_check)
assert (scalar_check[["max_diag_error", "max_off_diagonal"]] < 1e-4).all().all(), scalar_check

# %% [markdown]
# ## 2. Accuracy versus FLOPs
#
# Gaussian matrices (a square one and a 1:4 one): relative Frobenius error
# `‖f(X) − polar(X)‖_F / ‖polar(X)‖_F` against the float64 SVD polar factor
# (`optzoo.testing.polar_reference`), for 1 to 8 iterations, plotted against the
# theoretical FLOPs of one call. Newton–Schulz and Polar Express cost the same per step;
# the Gram form evaluates Polar Express's polynomial on the small `r×r` Gram matrix (same
# result in exact arithmetic, fewer FLOPs when the block is rectangular). `'auto'` on the 1:4
# block runs the rectangular table (designed for `[5e-3, 1]`; here with `steps=T`, its
# default is 4), through the Gram matrix when the small side is at least 64. The float32 SVD
# is the exact reference (its FLOPs are not counted).


# %%
def rel_err(out, ref):
    out = np.asarray(out, np.float64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


acc_rows = []
for label, shape in [("square", (N, N)), ("1:4", (N, 4 * N))]:
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    ref = testing.polar_reference(x)
    for t in STEPS:
        runs = {
            "newton_schulz (Jordan)": (linalg.newton_schulz(x, steps=t), "newton_schulz"),
            "polar_express": (linalg.polar_express(x, steps=t), "polar_express"),
            "gram_newton_schulz (PE table)": (
                linalg.gram_newton_schulz(x, steps=t),
                "gram_newton_schulz",
            ),
        }
        if label == "1:4":
            runs["auto"] = (linalg.orthogonalize(x, steps=t), "auto")
        for method, (out, flop_method) in runs.items():
            acc_rows.append(
                dict(
                    shape=label,
                    dims=f"{shape[0]}×{shape[1]}",
                    method=method,
                    steps=t,
                    err=rel_err(out, ref),
                    mflops=linalg.orthogonalizer_flops(shape, flop_method, t) / 1e6,
                )
            )
    acc_rows.append(
        dict(
            shape=label,
            dims=f"{shape[0]}×{shape[1]}",
            method="svd (float32)",
            steps=None,
            err=rel_err(linalg.orthogonalize(x, "svd"), ref),
            mflops=float("nan"),
        )
    )
acc = pd.DataFrame(acc_rows)

fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
for ax, (label, block) in zip(axes, acc.groupby("shape", sort=False), strict=True):
    for i, (method, g) in enumerate(block[block.steps.notna()].groupby("method", sort=False)):
        ax.plot(g.mflops, g.err, marker="o", color=f"C{i}", label=method)
        for _, r in g.iterrows():
            ax.annotate(
                f"{int(r.steps)}",
                (r.mflops, r.err),
                fontsize=7,
                textcoords="offset points",
                xytext=(3, 3),
            )
    svd_err = block[block.method == "svd (float32)"].err.iloc[0]
    ax.axhline(svd_err, color="k", ls=":", label=f"svd (float32): {svd_err:.1e}")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="cost of one call (MFLOP, theoretical)",
        ylabel="relative Frobenius error vs float64 polar (dimensionless)",
        title=f"{label} Gaussian {block.dims.iloc[0]} (labels: iteration count)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

five = acc[acc.steps == 5].pivot(index="method", columns="shape", values="err")
display(Markdown("Relative error after 5 iterations:"))
display(five.round(3))

# %% [markdown]
# ## 3. Time on this machine
#
# `experiments.bench.orthogonalize.run` times every method in one run on the same Gaussian
# inputs (median of jitted calls) and reports, per shape: error against the float64 polar
# factor, the output's singular-value range, milliseconds per call, achieved GFLOP/s, the
# fraction `eff` of the FLOP rate of one large square matmul measured in the same run, and the
# time relative to optax's NS5 (`vs_optax`). On CPU with the smoke sizes every call is
# dominated by dispatch, so only the full settings (or the H100 file below) say anything
# about throughput.

# %%
t0 = time.perf_counter()
local = bench.run(BENCH_D, BENCH_DTYPES, BENCH_MIN_TIME, BENCH_MAX_REPS, BENCH_SKIP, BENCH_PEAK_D)
print(f"benchmark: {time.perf_counter() - t0:.1f} s")
local_df = pd.DataFrame(local["rows"])
display(
    local_df[
        ["dtype", "label", "method", "err", "sv_min", "sv_max", "ms", "gflops", "eff", "vs_optax"]
    ].round(4)
)

# %%
MARKERS = {"square": "o", "1:3": "s", "1:4": "^", "1:8": "D", "router 32xd": "v"}
# one colour per method in every figure below
COLOURS = {name: f"C{i}" for i, name in enumerate(bench.methods())}


def error_vs_time(df, title):
    """One panel per dtype: error (log) vs ms per call (log); colour = method, marker = shape."""
    dtypes = list(dict.fromkeys(df.dtype))
    methods = [m for m in COLOURS if m in set(df.method)]
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6.5 * len(dtypes), 4.6), squeeze=False)
    for ax, dname in zip(axes[0], dtypes, strict=True):
        sub = df[df.dtype == dname]
        for method in methods:
            for label, marker in MARKERS.items():
                r = sub[(sub.method == method) & (sub.label == label)]
                if len(r):
                    ax.scatter(r.ms, r.err, color=COLOURS[method], marker=marker, s=36)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("time per call (ms, median)")
        ax.set_ylabel("relative Frobenius error vs float64 polar (dimensionless)")
        ax.set_title(f"{title}: {dname}")
        ax.grid(alpha=0.3, which="both")
        colours = [
            plt.Line2D([], [], color=COLOURS[m], marker="o", ls="", label=m) for m in methods
        ]
        shapes = [
            plt.Line2D([], [], color="gray", marker=mk, ls="", label=lab)
            for lab, mk in MARKERS.items()
            if lab in set(sub.label)
        ]
        first = ax.legend(handles=colours, fontsize=7, loc="lower left", title="method")
        ax.add_artist(first)
        ax.legend(handles=shapes, fontsize=7, loc="upper right", title="shape")
    fig.tight_layout()
    return fig


def relative_time_bars(df, title):
    """Grouped bars: time relative to optax NS5 per shape and method (first dtype)."""
    dname = df.dtype.iloc[0]
    sub = df[(df.dtype == dname) & (df.method != bench.BASELINE)]
    table = sub.pivot(index="label", columns="method", values="vs_optax")
    table = table.reindex(
        index=[s for s in MARKERS if s in table.index],
        columns=[m for m in COLOURS if m in table.columns],
    )
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / len(table.columns)
    for i, method in enumerate(table.columns):
        ax.bar(
            np.arange(len(table)) + i * width,
            table[method],
            width,
            label=method,
            color=COLOURS[method],
        )
    ax.axhline(1.0, color="k", lw=1, ls="--", label=f"{bench.BASELINE} (= 1)")
    ax.set_xticks(np.arange(len(table)) + 0.4 - width / 2, table.index)
    ax.set_yscale("log")
    ax.set_xlabel("block shape (d×k·d)")
    ax.set_ylabel(f"time relative to {bench.BASELINE} (×, lower is faster)")
    ax.set_title(f"{title}: {dname}")
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


error_vs_time(local_df, f"This machine ({local['device_kind']}, d={BENCH_D})")
plt.show()
relative_time_bars(local_df, f"This machine ({local['device_kind']}, d={BENCH_D})")
plt.show()

# %% [markdown]
# ## 4. The committed H100 result
#
# `experiments/bench/results/orthogonalize-h100-d2048.json` is the same benchmark at d = 2048
# on one H100 (float32 and bfloat16), committed with the code it measured. Where the file is
# absent (e.g. an installed package without the repository) this section says so and moves
# on.

# %%
H100 = REPO / "experiments" / "bench" / "results" / "orthogonalize-h100-d2048.json"
if H100.exists():
    h100 = json.loads(H100.read_text())
    h100_df = pd.DataFrame(h100["rows"])
    display(Markdown(bench.markdown(h100)))
    error_vs_time(h100_df, f"{h100['device_kind']} (d={h100['d']})")
    plt.show()
    relative_time_bars(
        h100_df[h100_df.dtype == "bfloat16"], f"{h100['device_kind']} (d={h100['d']})"
    )
    plt.show()
else:
    print(f"{H100} not found: no H100 panel")

# %% [markdown]
# ## Reading the results
#
# * The scalar-map plot explains the error numbers: NS5 maps [1e-3, 1] into about
#   [0.47, 1.20] — a steep start, but never close to `U Vᵀ`; Polar Express spends the same
#   five steps to keep that whole interval within about [0.85, 1.14].
# * Gaussian square blocks have singular values down to ~1/n of the largest, below any
#   table's design interval, so every 5-step method keeps an error of 0.1–0.2 there; the
#   rectangular blocks' spectrum stays away from 0, which is why `'auto'` can use only four
#   steps on them and still be the most accurate iterative method.
# * The Gram form costs fewer FLOPs for rectangular blocks at the same accuracy; whether that
#   turns into time depends on the device. In the committed H100 result (d = 2048), `'auto'`
#   on the 1:3–1:8 blocks has a relative error of 0.062–0.068 against 0.096–0.098 for PE5 and
#   0.18–0.22 for optax's NS5, in 0.49–0.76× the time of optax's NS5; on square blocks it is
#   PE5 (0.14 against 0.22) at about the same time in float32.
