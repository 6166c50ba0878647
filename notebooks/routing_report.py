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
# # The routing report of a real model
#
# A layerwise optimizer such as `optzoo.symmetry_compatible` gives every parameter a
# **role** (embedding, LM head, MoE router, attention, SwiGLU gate/up/down, experts,
# vectors) and every role the update that matches its symmetry group (docs/math/symmetry.md#roles).
# The assignment is data, not code: `optzoo.routing` matches ordered regex rules on each
# leaf's `/`-joined path (plus its shape), refuses any leaf no rule covers, and prints the
# table the trainer logs at start-up.
#
# This notebook builds this project's Qwen3-style dense model and OLMoE-style MoE model from
# `experiments.models` — abstractly (`nnx.eval_shape`: shapes only, no memory) — and shows
# for each:
#
# * `optzoo.routing.report(...)`: path, shape, role, **unit axis** (which axis indexes the
#   permuted units: tokens, vocabulary entries, experts, neurons — Flax `Dense` kernels are
#   `(fan_in, fan_out)`, so for an LM head `(d, V)` the units are on axis 1), the transform
#   and its learning-rate multiplier under the paper's preset;
# * a picture of where the parameters go (parameter count per role, coloured by transform);
# * what happens to a leaf that no rule covers.
#
# Settings: `OPTZOO_SMOKE=1` (the test suite) reports the tiny presets (`tiny`, `tiny_moe`);
# the full settings add the seed paper's model sizes (`qwen3_seed`, `olmoe_seed`,
# `gptoss_seed`: 0.5–2 B parameters, still shapes only).

# %%
import os

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from flax import nnx
from IPython.display import Markdown, display

import experiments.models as models
from optzoo import routing
from optzoo.symmetric_stack import symmetry_compatible_plan

SMOKE = os.environ.get("OPTZOO_SMOKE", "0").lower() not in ("", "0", "false", "no")

# model preset -> symmetry_compatible preset (released configurations, docs/math/symmetry.md#setup)
MODELS = {"tiny": "paper", "tiny_moe": "olmoe_left"}
if not SMOKE:
    MODELS |= {"qwen3_seed": "qwen3_row", "olmoe_seed": "olmoe_left", "gptoss_seed": "gptoss_left"}
BASE_LR = {"paper": 2e-2, "qwen3_row": 2e-2, "olmoe_left": 5e-3, "gptoss_left": 1e-3}
print(f"SMOKE={SMOKE}: models {list(MODELS)}")

# %% [markdown]
# ## The reports
#
# `learning_rate` of `symmetry_compatible` is the hidden-matrix (Muon) rate of the released
# runs; every other group's rate is a fixed multiple of it (the `lr x` column).

# %%
reports = {}
for name, preset in MODELS.items():
    cfg = models.get_preset(name)
    model = models.build(cfg, abstract=True)
    state = nnx.state(model, nnx.Param)
    plan = symmetry_compatible_plan(BASE_LR[preset], preset=preset, head_dim=cfg.head_dim)
    rep = routing.report(state, None, plan)
    reports[name] = rep
    display(
        Markdown(
            f"### `{name}` — {models.describe(cfg)}\n\n"
            f"symmetry_compatible preset `{preset}`, base learning rate "
            f"{BASE_LR[preset]:g}"
        )
    )
    print(rep)
    # every parameter is covered exactly once
    assert len(rep.rows) == len(models.param_paths(state)), name

# %% [markdown]
# ## Where the parameters go
#
# Parameter count per role (log scale), coloured by the transform the role gets, and the
# share of each model's parameters per role. In the tiny byte-level models (vocabulary 256)
# the embedding and head are ~6–7 % each; at the seed paper's sizes (full settings) the
# Qwen3-style model's embedding and untied head hold ~25 % each (vocabulary 151,936) — the
# blocks the symmetry-compatible maps are designed for — while the MoE experts hold ~70–85 %
# of the MoE models. The routers are tiny in parameters but get their own map.

# %%
frames = []
for name, rep in reports.items():
    df = pd.DataFrame(rep.rows, columns=routing.ReportRow._fields)
    df["params"] = [int(np.prod(s)) for s in df["shape"]]
    df["model"] = name
    frames.append(df)
rows = pd.concat(frames, ignore_index=True)
per_role = (
    rows.groupby(["model", "role", "transform"], sort=False)
    .agg(
        leaves=("path", "size"), params=("params", "sum"), lr_multiplier=("lr_multiplier", "first")
    )
    .reset_index()
)
display(per_role)

transforms = list(dict.fromkeys(per_role["transform"]))
colour = {t: f"C{i}" for i, t in enumerate(transforms)}
fig, axes = plt.subplots(
    1, len(reports), figsize=(7.5 * len(reports), 4.6), squeeze=False, layout="constrained"
)
for ax, name in zip(axes[0], reports, strict=True):
    sub = per_role[per_role.model == name].iloc[::-1]
    ax.barh(sub.role, sub.params, color=[colour[t] for t in sub["transform"]])
    ax.set_xscale("log")
    ax.set_xlabel("parameters (count, log scale)")
    ax.set_ylabel("role")
    total = sub.params.sum()
    ax.set_title(f"{name}: {total / 1e6:.2f}M parameters by role")
    ax.grid(alpha=0.3, axis="x", which="both")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=colour[t])
        for t in transforms
        if t in set(sub["transform"])
    ]
    ax.legend(
        handles,
        [t for t in transforms if t in set(sub["transform"])],
        fontsize=7,
        title="transform",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
plt.show()

share = rows.pivot_table(index="role", columns="model", values="params", aggfunc="sum")
display(Markdown("Share of each model's parameters per role (%):"))
display((100 * share / share.sum()).round(2).fillna(0.0))

# %% [markdown]
# ## Coverage is enforced
#
# A matrix no rule recognises is an error that names its path — the router never guesses a
# matrix's role (a wrongly routed LM head would silently get the wrong symmetry). A rule
# prepended to the defaults fixes it; the first matching rule wins.

# %%
params = {
    "embed": {"embedding": jnp.zeros((64, 16))},
    "my_projection": {"kernel": jnp.zeros((16, 16))},
    "final_norm": {"scale": jnp.ones(16)},
}
try:
    routing.classify(params)
    raise AssertionError("an uncovered matrix must raise")
except ValueError as err:
    print(f"ValueError: {err}")

rules = (routing.Rule(r"^my_projection/kernel$", "other_matrix"),) + routing.DEFAULT_RULES
print()
print(routing.report(params, rules))
