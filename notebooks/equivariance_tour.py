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
# # An equivariance tour: which optimizer respects which symmetry
#
# A parameter block `W` whose network function is unchanged under a group action
# `W ↦ g·W` should get an update map `f` that commutes with it: `f(g·G) = g·f(G)`
# (Lau & Su 2026, arXiv:2605.18106; docs/math/symmetry.md). This notebook measures that property
# with the public test kit `optzoo.testing`, for five optimizers and seven group actions on
# an `m×n` matrix (units = rows):
#
# | optimizer | direction map | expected symmetry group |
# |---|---|---|
# | `optax.adam` | coordinatewise `m̂/(√v̂ + ε)` | signed coordinate permutations, scaling |
# | `optzoo.lion` | coordinatewise `sign(·)` | the same |
# | Muon | `polar(M) = U Vᵀ` (Polar Express) | bi-orthogonal `G ↦ U G Vᵀ` |
# | row-norm | `rownorm(M)`: rows to unit ℓ₂ norm | row perm. × right rotations; `D·G` |
# | centered row-norm | `Π⊥ rownorm(Π⊥ M)` | row perm. × right rotations; `G ↦ G + 1cᵀ` |
#
# (`D·G`: invariance to a positive scaling of each row; Adam and Lion are invariant to a
# positive scaling of each coordinate.)
#
# For every pair, `optzoo.testing.equivariance_error` runs the optimizer for a few steps on
# `(W₀, G_t)` and on `(g·W₀, g·G_t)` and returns the worst relative error
# `‖W'_t − g·W_t‖ / ‖g·W_t‖` (for the two invariances it compares `W'_t` with `W_t`). The
# run starts at `W₀ = 0`, so the error measures the updates themselves. Then pictures: the
# update of a rotated gradient next to the rotated update, what a left rotation does to
# row norms, and the horizontality `1ᵀΔ = 0` of centered maps.
#
# Settings: `OPTZOO_SMOKE=1` (what the test suite runs) uses a 12×20 matrix and 3 steps; the
# full settings a 32×48 matrix and 6 steps (still seconds).

# %%
import functools
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import pandas as pd
from IPython.display import display

import optzoo
from optzoo import testing

SMOKE = os.environ.get("OPTZOO_SMOKE", "0").lower() not in ("", "0", "false", "no")

# Full float32 matrix products (GPUs would default to TF32, whose ~1e-3 rounding would blur
# the line between "exact" and "broken"; no effect on CPUs).
jax.config.update("jax_default_matmul_precision", "highest")

M, N, STEPS = (12, 20, 3) if SMOKE else (32, 48, 6)
SHAPE = (M, N)
rng = np.random.default_rng(0)
params = {"w": jnp.zeros(SHAPE, jnp.float32)}
grads_seq = [{"w": jnp.asarray(rng.standard_normal(SHAPE), jnp.float32)} for _ in range(STEPS)]
print(f"SMOKE={SMOKE}: matrix {M}×{N}, {STEPS} steps; jax {jax.__version__}")

# %% [markdown]
# ## The optimizers
#
# Muon and row-norm (plain and centered) from optzoo's public API, next to optax's Adam and
# optzoo's Lion. Every learning rate is 1: the kit measures *relative* errors, and in the
# pictures the updates are then in units of the learning rate.

# %%
OPTIMIZERS: dict[str, optax.GradientTransformation] = {
    "adam (optax)": optax.adam(1.0),
    "lion (optzoo)": optzoo.lion(1.0),
    "muon": optzoo.muon(1.0),
    "row-norm": optzoo.rownorm(1.0, unit_axis=0),
    "centered row-norm": optzoo.rownorm(1.0, unit_axis=0, center=True),
}
sources = {
    "adam (optax)": "optax.adam",
    "lion (optzoo)": "optzoo.lion",
    "muon": "optzoo.muon",
    "row-norm": "optzoo.rownorm(unit_axis=0)",
    "centered row-norm": "optzoo.rownorm(unit_axis=0, center=True)",
}
display(pd.DataFrame({"built from": sources}))

# %% [markdown]
# ## The group actions
#
# From `optzoo.testing`, all on the `m×n` matrix with units as rows. `"equivariance"`
# transforms parameters, gradients and the expected result alike; `"invariance"` transforms
# only the gradients and expects the *same* trajectory.

# %%
ACTIONS = {
    "U·G·Vᵀ (bi-orthogonal)": (testing.bi_orthogonal(SHAPE, seed=1), "equivariance"),
    "U·G (left rotation)": (testing.left_orthogonal(SHAPE, seed=2), "equivariance"),
    "G·Vᵀ (right rotation)": (testing.right_orthogonal(SHAPE, seed=3), "equivariance"),
    "P·G (row permutation)": (testing.permutation(SHAPE, axis=0, seed=4), "equivariance"),
    "signed permutation": (testing.signed_permutation(SHAPE, seed=5), "equivariance"),
    "D·G (row scaling)": (testing.positive_diagonal_scaling(SHAPE, axis=0, seed=6), "invariance"),
    "G + 1cᵀ (shift)": (testing.shift(SHAPE, unit_axis=0, seed=7), "invariance"),
}

# What the tour claims: True = the optimizer respects the action (error at float32 rounding).
RESPECTS = {
    "adam (optax)": {"P·G (row permutation)", "signed permutation", "D·G (row scaling)"},
    "lion (optzoo)": {"P·G (row permutation)", "signed permutation", "D·G (row scaling)"},
    "muon": {
        "U·G·Vᵀ (bi-orthogonal)",
        "U·G (left rotation)",
        "G·Vᵀ (right rotation)",
        "P·G (row permutation)",
    },
    "row-norm": {"G·Vᵀ (right rotation)", "P·G (row permutation)", "D·G (row scaling)"},
    "centered row-norm": {"G·Vᵀ (right rotation)", "P·G (row permutation)", "G + 1cᵀ (shift)"},
}


def error(tx, action, kind):
    if kind == "invariance":
        return testing.equivariance_error(
            tx, params, grads_seq, action, param_action=None, output_action=None
        )
    return testing.equivariance_error(tx, params, grads_seq, action)


errors = pd.DataFrame(
    {
        a: {o: error(tx, act, kind) for o, tx in OPTIMIZERS.items()}
        for a, (act, kind) in ACTIONS.items()
    }
)
display(errors.map(lambda e: f"{e:.1e}"))

# %% [markdown]
# **Check.** "Respects" means an error at float32 rounding: below 1e-4 (measured values are
# ≤ 3e-6: a few steps of float32 matrix products). "Breaks" means above 1e-2 (measured values
# are ≥ 0.09: the two trajectories differ at the order of the update itself). Nothing falls
# in between, and every cell agrees with the table at the top — the cell fails otherwise.

# %%
RESPECT_TOL, BREAK_TOL = 1e-4, 1e-2
verdict = pd.DataFrame(
    {
        a: {
            o: (
                "respects"
                if errors.loc[o, a] <= RESPECT_TOL
                else "BREAKS"
                if errors.loc[o, a] >= BREAK_TOL
                else "unclear"
            )
            for o in OPTIMIZERS
        }
        for a in ACTIONS
    }
)
display(verdict)
expected = pd.DataFrame(
    {a: {o: "respects" if a in RESPECTS[o] else "BREAKS" for o in OPTIMIZERS} for a in ACTIONS}
)
mismatch = verdict != expected
assert not mismatch.any().any(), f"unexpected verdicts:\n{verdict[mismatch]}"

# %% [markdown]
# ## Picture 1: equivariance error per optimizer and group
#
# Bars below the dashed line are exact symmetries (float32 rounding); bars far above it are
# broken ones. Exact zeros (coordinatewise maps under permutations: no rounding at all) are
# drawn at 1e-9.

# %%
FLOOR = 1e-9
fig, ax = plt.subplots(figsize=(13, 4.8))
width = 0.8 / len(OPTIMIZERS)
x = np.arange(len(ACTIONS))
for i, name in enumerate(OPTIMIZERS):
    ax.bar(x + i * width, np.maximum(errors.loc[name].to_numpy(), FLOOR), width, label=name)
ax.axhline(RESPECT_TOL, color="k", ls="--", lw=1, label=f"float32 threshold {RESPECT_TOL:g}")
ax.set_xticks(x + 0.4 - width / 2, list(ACTIONS), rotation=15, fontsize=8)
ax.set_yscale("log")
ax.set_ylim(FLOOR / 2, 10)
ax.set_xlabel("group action applied to the gradients (and parameters)")
ax.set_ylabel("equivariance error ‖W′ − g·W‖/‖g·W‖ (relative)")
ax.set_title(f"Which optimizer respects which symmetry ({M}×{N} matrix, {STEPS} steps)")
ax.grid(alpha=0.3, axis="y", which="both")
ax.legend(fontsize=8, ncol=3, loc="upper left")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Picture 2: a rotated gradient
#
# Why Adam breaks rotations: it acts coordinate by coordinate (its first step is nearly
# `sign(G)`), and a rotation mixes coordinates, so the update of the rotated gradient
# `U G Vᵀ` (left) is not the rotated update `U f(G) Vᵀ` (middle): their difference (right)
# is as large as the update. Muon's map `U φ(Σ) Vᵀ` only depends on the singular vectors
# and values, which rotate along: the difference is float32 noise. Shown: the total
# parameter change after the gradient sequence (learning rate 1, `W₀ = 0`).


# %%
def displacement(tx, grads):
    state, w = tx.init(params), params
    for g in grads:
        u, state = tx.update(g, state, w)
        w = optax.apply_updates(w, u)
    return np.asarray(w["w"])


rot = ACTIONS["U·G·Vᵀ (bi-orthogonal)"][0]
fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), layout="constrained")
for row, name in zip(axes, ["adam (optax)", "muon"], strict=True):
    tx = OPTIMIZERS[name]
    of_rotated = displacement(tx, [{"w": rot(g["w"])} for g in grads_seq])
    rotated = np.asarray(rot(displacement(tx, grads_seq)))
    vmax = np.abs(rotated).max()
    panels = [
        (of_rotated, "f(U·G·Vᵀ): update of the rotated G"),
        (rotated, "U·f(G)·Vᵀ: rotated update"),
        (of_rotated - rotated, "difference"),
    ]
    for ax, (img, title) in zip(row, panels, strict=True):
        im = ax.imshow(img, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_title(f"{name.split()[0]}: {title}", fontsize=10)
        ax.set_xlabel("column index j (input feature)")
        ax.set_ylabel("row index i (unit)")
    cb = fig.colorbar(im, ax=list(row))
    cb.set_label("parameter change (learning-rate units)")
    print(
        f"{name:14s} max |difference| / max |update| = "
        f"{np.abs(of_rotated - rotated).max() / vmax:.1e}"
    )
fig.suptitle("Rotating the gradient: coordinatewise Adam vs Muon's polar map")
plt.show()

# %% [markdown]
# ## Picture 3: row-norm and left rotations
#
# Row normalization gives **every unit a step of the same length** (each row of the update
# has norm η). A left rotation `U` mixes units: `f(U G)` still has unit rows, but the rotated
# update `U f(G)` does not — so the two cannot be equal, and row-norm is not equivariant under
# left rotations. A row *permutation* only reorders the unit-norm rows and a right rotation
# `G Vᵀ` preserves every row's norm, so both are respected. One step (no momentum history).

# %%
g0 = grads_seq[0]["w"]
left = ACTIONS["U·G (left rotation)"][0]
perm = ACTIONS["P·G (row permutation)"][0]
rownorm = OPTIMIZERS["row-norm"]


def step(g):
    """One row-norm update direction (the update is −lr·direction, lr = 1)."""
    return -np.asarray(rownorm.update({"w": g}, rownorm.init(params), params)[0]["w"])


cases = {
    "f(U·G): update of the left-rotated gradient": step(left(g0)),
    "U·f(G): left-rotated update": np.asarray(left(step(g0))),
    "f(P·G) = P·f(G): permuted rows": step(perm(g0)),
}
fig, ax = plt.subplots(figsize=(9, 4))
idx = np.arange(M)
for k, (label, upd) in enumerate(cases.items()):
    ax.plot(
        idx, np.linalg.norm(upd, axis=1), marker="os^"[k], ls="-" if k < 2 else ":", label=label
    )
ax.set_xlabel("row index i (unit)")
ax.set_ylabel("ℓ₂ norm of the update's row i (learning-rate units)")
ax.set_title("Row-norm: every unit moves by η — unless a left rotation mixes the units")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Picture 4: centered maps are shift-invariant and horizontal
#
# LM heads and routers feed a softmax, which ignores a common offset of all logits: the head
# `H ↦ H + 1cᵀ` is a symmetry (a shift of every unit by the same vector). The gradient has
# no component along it, and a compatible update must not move along it either: it should be
# **invariant** to `G ↦ G + 1cᵀ` and **horizontal**, `1ᵀΔ = 0` (the units' mean does not
# move). Plain row-norm is neither; centered row-norm `Π⊥ rownorm(Π⊥ M)` is both.

# %%
centered = OPTIMIZERS["centered row-norm"]
shift = ACTIONS["G + 1cᵀ (shift)"][0]
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
for name in ["row-norm", "centered row-norm"]:
    d = displacement(OPTIMIZERS[name], grads_seq)
    axes[0].semilogy(np.arange(N), np.maximum(np.abs(d.sum(axis=0)), FLOOR), marker="o", label=name)
    ds = displacement(OPTIMIZERS[name], [{"w": shift(g["w"], t)} for t, g in enumerate(grads_seq)])
    axes[1].semilogy(
        np.arange(N), np.maximum(np.abs(ds - d).max(axis=0), FLOOR), marker="o", label=name
    )
axes[0].set_title("Horizontality: column sums of the total update |1ᵀΔ|")
axes[0].set_ylabel("|Σ_i Δ_ij| (learning-rate units)")
axes[1].set_title("Shift invariance: change of the update when G → G + 1cᵀ")
axes[1].set_ylabel("max_i |Δ′_ij − Δ_ij| (learning-rate units)")
for ax in axes:
    ax.set_xlabel("column index j (input feature)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## A whole model: `optzoo.symmetry_compatible`
#
# A transformer's blocks share symmetries: a rotation `Q` of the residual stream acts on the
# embedding table `(V, d)` as `E Qᵀ` and on the LM-head kernel `(d, V)` as `Q H`; relabelling
# tokens permutes the embedding's rows and the head's columns; permuting the SwiGLU neurons
# acts on the columns of gate/up `(d, f)` and the rows of down `(f, d)` with the *same*
# permutation. `optzoo.symmetry_compatible` gives each block its compatible map (row-norm
# embedding, centered row-norm head, Muon MLP, AdamW vectors), so it commutes with all of
# this at once; AdamW does not.

# %%
V, d, f = (24, 8, 16) if SMOKE else (64, 16, 32)
shapes = {
    "embed": {"embedding": (V, d)},
    "lm_head": {"kernel": (d, V)},
    "layers": {
        "0": {
            "mlp": {
                "gate_proj": {"kernel": (d, f)},
                "up_proj": {"kernel": (d, f)},
                "down_proj": {"kernel": (f, d)},
            }
        }
    },
    "final_norm": {"scale": (d,)},
}


def is_shape(s):
    return isinstance(s, tuple)


model_params = jax.tree.map(lambda s: jnp.zeros(s, jnp.float32), shapes, is_leaf=is_shape)
model_grads = [
    jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s), jnp.float32), shapes, is_leaf=is_shape
    )
    for _ in range(STEPS)
]


def compose(*actions):
    """Apply ``actions`` left to right (each is an optzoo.testing.Action)."""
    return testing.Action(
        lambda x, t: functools.reduce(lambda y, a: a(y, t), actions, x),
        " then ".join(a.name for a in actions),
    )


Q, NEURONS, TOKENS = 11, 12, 13  # seeds: the same seed gives the same Q / permutation
gate_up = compose(testing.permutation((d, f), 1, NEURONS), testing.left_orthogonal((d, f), Q))
model_action = testing.per_leaf(
    {
        "embed": {
            "embedding": compose(
                testing.permutation((V, d), 0, TOKENS), testing.right_orthogonal((V, d), Q)
            )
        },
        "lm_head": {
            "kernel": compose(
                testing.permutation((d, V), 1, TOKENS), testing.left_orthogonal((d, V), Q)
            )
        },
        "layers": {
            "0": {
                "mlp": {
                    "gate_proj": {"kernel": gate_up},
                    "up_proj": {"kernel": gate_up},
                    "down_proj": {
                        "kernel": compose(
                            testing.permutation((f, d), 0, NEURONS),
                            testing.right_orthogonal((f, d), Q),
                        )
                    },
                }
            }
        },
        "final_norm": {"scale": None},
    }
)
model_errors = {
    "optzoo.symmetry_compatible": testing.equivariance_error(
        optzoo.symmetry_compatible(1e-2), model_params, model_grads, model_action
    ),
    "optax.adamw": testing.equivariance_error(
        optax.adamw(1e-2), model_params, model_grads, model_action
    ),
}
fig, ax = plt.subplots(figsize=(9, 3.6), layout="constrained")
ax.barh(
    list(model_errors),
    [max(v, FLOOR) for v in model_errors.values()],
    color=["C2", "C0"],
    label="error after the run",
)
ax.axvline(RESPECT_TOL, color="k", ls="--", lw=1, label="'respects' threshold 1e-4")
ax.legend(fontsize=8, loc="lower right")
ax.set_xscale("log")
ax.set_xlabel("equivariance error ‖W′ − g·W‖/‖g·W‖ (relative; dashed: 1e-4)")
ax.set_ylabel("optimizer")
ax.set_title("Whole model under a residual rotation + token and neuron permutations")
ax.grid(alpha=0.3, axis="x", which="both")
plt.show()
print({k: f"{v:.1e}" for k, v in model_errors.items()})
assert model_errors["optzoo.symmetry_compatible"] <= RESPECT_TOL, model_errors
assert model_errors["optax.adamw"] >= BREAK_TOL, model_errors

# %% [markdown]
# ## Summary
#
# * Coordinatewise optimizers (Adam, Lion) commute with signed permutations of coordinates
#   and per-coordinate scaling — and with nothing that mixes coordinates.
# * Muon's polar map commutes with every `U·G·Vᵀ`, hence with any permutation of rows or of
#   columns, but not with a permutation of *all* coordinates, not with rescaling rows, and
#   not with a shift.
# * Row-norm is built for blocks whose symmetry is smaller (embeddings, heads, routers, SwiGLU
#   neurons): unit permutations × rotations of the other side, plus invariance to each unit's
#   gradient scale; it is not left-rotation equivariant, and does not need to be.
# * Centering adds the shift symmetry of softmax-fed blocks: invariant to `G + 1cᵀ` and
#   horizontal.
