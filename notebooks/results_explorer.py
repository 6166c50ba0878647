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
# # Results explorer: training runs and optimizer ablations
#
# Point this notebook at a results directory and it loads and plots it. Two kinds are
# recognised:
#
# * an **ablation output** of `python -m experiments.ablate --out DIR` (`results.json`,
#   `results.md`, `runs/<model>/<optimizer>/lr<lr>/seed<seed>/summary.json`): the results
#   table, validation loss curves at each optimizer's tuned learning rate (mean ± sd over
#   seeds, against steps and tokens), learning-rate sensitivity, final losses with their
#   spread, and then one of its runs in detail;
# * a single **run directory** of `experiments.train` (`metrics.jsonl`, `manifest.json`,
#   `summary.json`): training and validation loss, learning rate, and every logged metric
#   family (gradient norms and update/parameter ratios per parameter group, router load
#   statistics of MoE models).
#
# **Which directory:** `experiments/results/ablation` of the checkout by default — the
# committed output of the README's default ablation (`bash run.sh ablate`, 2-core CPU):
# its `results.json` (the table, every learning rate's mean ± sd and every seed's final
# loss) and, for the loss curves and the detailed run, the tuned runs re-run with the
# current code whose final losses reproduce `results.json` exactly (`runs/.../summary.json`,
# one run's `metrics.jsonl`; see `runs/README.md` there). Set `OPTZOO_RESULTS=DIR` to read
# another ablation output or a run directory instead (relative paths: to the working
# directory, then to the checkout). Nothing here is synthetic; `OPTZOO_SMOKE` changes
# nothing in this notebook.

# %%
import json
import math
import os
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

import experiments
from experiments.metrics import read_jsonl

REPO = Path(experiments.__file__).resolve().parents[1]  # the checkout (editable install)

pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 20)

# %%
DEFAULT = "experiments/results/ablation"  # the committed default ablation
env_path = os.environ.get("OPTZOO_RESULTS") or DEFAULT
candidates = [Path(env_path), REPO / env_path]
TARGET = next((p for p in candidates if p.exists()), None)
if TARGET is None:
    raise FileNotFoundError(
        f"{env_path!r}: no such directory (looked in {[str(c) for c in candidates]})"
    )
print(f"reading {TARGET}")

# %% [markdown]
# ## Loading
#
# `kind_of` recognises the directory; `load_ablation` reads `results.json` (if the sweep got
# that far) and every run's `summary.json` (so an interrupted sweep can still be explored);
# `load_run` reads one run's `metrics.jsonl` into a DataFrame (a torn last line from a crash
# is ignored) plus its manifest and summary.

# %%
RUN_RE = re.compile(
    r"runs/(?P<model>[^/]+)/(?P<entry>[^/]+)/lr(?P<lr>[^/]+)/"
    r"seed(?P<seed>\d+)/summary\.json$"
)


def kind_of(path: Path) -> str:
    if (path / "results.json").exists() or (path / "runs").is_dir():
        return "ablation"
    if (path / "metrics.jsonl").exists() or (path / "summary.json").exists():
        return "run"
    raise FileNotFoundError(
        f"{path}: neither an ablation output (results.json or runs/) nor "
        "a run directory (metrics.jsonl or summary.json)"
    )


def load_ablation(path: Path) -> dict:
    table = None
    if (path / "results.json").exists():
        table = json.loads((path / "results.json").read_text())
    runs, hist = [], []
    for f in sorted(path.glob("runs/*/*/lr*/seed*/summary.json")):
        m = RUN_RE.search(f.relative_to(path).as_posix())
        if m is None:
            continue
        s = json.loads(f.read_text())
        key = dict(model=m["model"], entry=m["entry"], lr=float(m["lr"]), seed=int(m["seed"]))
        runs.append(
            {
                **key,
                **{k: v for k, v in s.items() if not isinstance(v, (list, dict))},
                "workdir": str(f.parent),
            }
        )
        hist += [{**key, **h} for h in s.get("history", []) if h.get("val_loss") is not None]
    runs, hist = pd.DataFrame(runs), pd.DataFrame(hist)
    if runs.empty and table is None:
        raise FileNotFoundError(f"{path}: neither results.json nor runs/*/*/lr*/seed*/summary.json")
    for frame, cols in (
        (runs, ("model", "entry", "lr", "seed", "final_val_loss", "workdir")),
        (hist, ("model", "entry", "lr", "seed", "step", "val_loss", "tokens")),
    ):
        for c in cols:  # keys an older or partial summary may lack
            if c not in frame:
                frame[c] = np.nan
    runs["final_val_loss"] = pd.to_numeric(runs.final_val_loss, errors="coerce")
    # per (model, entry): the lr sweep (mean, sd over seeds), the tuned lr and its seeds'
    # final losses; from results.json, else recomputed from the finished runs' summaries
    sweeps, tuned, finals = {}, {}, {}
    for model, block in (table or {}).items():
        for entry, row in block["rows"].items():
            sweeps[model, entry] = pd.DataFrame(
                [(float(lr), st["mean"], st["sd"]) for lr, st in row["sweep"].items()],
                columns=["lr", "mean", "std"],
            ).set_index("lr")
            tuned[model, entry] = row["tuned_lr"] if row["tuned_lr"] is not None else math.nan
            finals[model, entry] = np.asarray(row["finals"], float)
    for (model, entry), g in runs.groupby(["model", "entry"]):
        if (model, entry) in sweeps:
            continue
        sweep = g.groupby("lr").final_val_loss.agg(["mean", "std"])
        sweeps[model, entry] = sweep
        means = sweep["mean"].dropna()
        tuned[model, entry] = float(means.idxmin()) if len(means) else math.nan
        finals[model, entry] = g[g.lr == tuned[model, entry]].final_val_loss.to_numpy()
    return dict(table=table, runs=runs, history=hist, sweeps=sweeps, tuned=tuned, finals=finals)


def load_run(path: Path) -> dict:
    records = pd.DataFrame(read_jsonl(path / "metrics.jsonl"))
    if "kind" not in records:  # older or foreign logs: infer the kind from the keys
        records["kind"] = np.where(
            records.get("val_loss", pd.Series(dtype=float)).notna(), "eval", "train"
        )

    def read(name):
        return json.loads((path / name).read_text()) if (path / name).exists() else {}

    return dict(
        records=records,
        train=records[records.kind == "train"],
        eval=records[records.kind == "eval"],
        manifest=read("manifest.json"),
        summary=read("summary.json"),
    )


KIND = kind_of(TARGET)
print(f"{TARGET}: {KIND}")

# %% [markdown]
# ## The ablation
#
# The results table as `experiments.ablate` aggregated it: each optimizer's tuned learning
# rate (lowest mean final validation loss over seeds), the final loss at that rate
# (mean ± sd over seeds), the difference to the baseline with its standard error and the
# Welch verdict ("within noise" unless p < 0.05), steps to reach the baseline's final loss,
# time per step and optimizer-state memory.

# %%
if KIND == "ablation":
    ab = load_ablation(TARGET)
    runs, history, tuned = ab["runs"], ab["history"], ab["tuned"]
    MODELS = list(dict.fromkeys(m for m, _ in ab["sweeps"]))
    ENTRIES = list(dict.fromkeys(e for _, e in ab["sweeps"]))
    COLOUR = {e: f"C{i}" for i, e in enumerate(ENTRIES)}
    print(
        f"models {MODELS}, optimizers {ENTRIES}; {len(runs)} run summaries under runs/ "
        f"(seeds {sorted(set(runs.seed))})"
    )
    if ab["table"] is not None:
        rows = []
        for model, block in ab["table"].items():
            for entry, r in block["rows"].items():
                fin, vs = r.get("final") or {}, r.get("vs_baseline") or {}
                rows.append(
                    {
                        "model": model,
                        "optimizer": entry,
                        "tuned lr": r.get("tuned_lr"),
                        "seeds": r.get("seeds"),
                        "final val loss": fin.get("mean"),
                        "sd": fin.get("sd"),
                        "Δ vs baseline": vs.get("delta"),
                        "± se": vs.get("se"),
                        "verdict": vs.get("verdict", "baseline"),
                        "steps to target": r.get("steps_to_target"),
                        "ms/step": r.get("ms_per_step"),
                        "opt ms/step": r.get("opt_ms_per_step"),
                        "opt state MiB": (
                            r["opt_state_bytes"] / 2**20
                            if r.get("opt_state_bytes") is not None
                            else None
                        ),
                    }
                )
        display(pd.DataFrame(rows).round(4))
    else:
        display(
            Markdown(
                "*No results.json (interrupted sweep?): tuned learning rates are "
                "recomputed from the finished runs.*"
            )
        )
    display(pd.concat({k: v for k, v in ab["sweeps"].items()}, names=["model", "entry"]).round(4))

# %% [markdown]
# ### Loss curves at the tuned learning rate
#
# Mean over the seeds whose run summaries are present (line) ± one standard deviation
# (band), against optimizer steps (full range) and against training tokens (zoomed on the
# last `ZOOM` nats above the lowest final loss, where the optimizers differ). The committed
# default ablation holds seed 0 of the tuned runs that reproduce `results.json` exactly.

# %%
ZOOM = 0.5
if KIND == "ablation" and history.empty:
    print("the runs' summaries hold no validation history: no loss curves")
elif KIND == "ablation":
    CURVE_MODELS = [m for m in MODELS if m in set(history.model)]  # those with run summaries
    fig, axes = plt.subplots(
        len(CURVE_MODELS), 2, figsize=(13, 4 * len(CURVE_MODELS)), squeeze=False
    )
    for row, model in zip(axes, CURVE_MODELS, strict=True):
        for entry in ENTRIES:
            lr = tuned.get((model, entry))
            h = history[(history.model == model) & (history.entry == entry) & (history.lr == lr)]
            if h.empty:
                continue
            curve = (
                h.groupby("step")
                .agg(val=("val_loss", "mean"), sd=("val_loss", "std"), tokens=("tokens", "mean"))
                .fillna({"sd": 0.0})
            )
            for ax, x in zip(
                row, (curve.index.to_numpy(), curve.tokens.to_numpy() / 1e6), strict=True
            ):
                ax.plot(x, curve.val, color=COLOUR[entry], label=f"{entry} (lr {lr:g})")
                ax.fill_between(
                    x, curve.val - curve.sd, curve.val + curve.sd, color=COLOUR[entry], alpha=0.2
                )
        for ax, xl in zip(row, ("optimizer step", "training tokens (millions)"), strict=True):
            ax.set_xlabel(xl)
            ax.set_ylabel("validation loss (nats/token)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        seeds = sorted(set(history[history.model == model].seed))
        row[0].set_title(f"{model}: validation loss at the tuned lr (seeds {seeds})")
        finals = runs[runs.model == model].final_val_loss
        if finals.notna().any():  # zoom on the end of training, where optimizers differ
            row[1].set_ylim(finals.min() - 0.02, finals.min() + ZOOM)
        row[1].set_title(f"{model}: vs tokens, zoomed to the last {ZOOM:g} nats")
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ### Learning-rate sensitivity and final losses
#
# Left: final validation loss against the learning rate (mean ± sd over seeds; the star marks
# the tuned rate) — a flat curve means a forgiving optimizer. Right: the final loss at the
# tuned rate with every seed shown.

# %%
if KIND == "ablation":
    fig, axes = plt.subplots(len(MODELS), 2, figsize=(13, 4 * len(MODELS)), squeeze=False)
    for (ax_lr, ax_fin), model in zip(axes, MODELS, strict=True):
        entries = [e for e in ENTRIES if (model, e) in ab["sweeps"]]
        for i, entry in enumerate(entries):
            g = ab["sweeps"][model, entry]
            ax_lr.errorbar(
                g.index,
                g["mean"],
                yerr=g["std"].fillna(0),
                marker="o",
                capsize=3,
                color=COLOUR[entry],
                label=entry,
            )
            lr = tuned.get((model, entry))
            if lr in g.index:
                ax_lr.plot([lr], [g.loc[lr, "mean"]], marker="*", ms=14, color=COLOUR[entry], ls="")
            best = ab["finals"][model, entry]
            ax_fin.bar(
                i,
                best.mean(),
                yerr=best.std(ddof=1) if len(best) > 1 else 0,
                capsize=4,
                color=COLOUR[entry],
                alpha=0.6,
                label=f"{entry} (lr {lr:g})",
            )
            ax_fin.plot(np.full(len(best), i), best, "k.", ms=6)
        ax_lr.set_xscale("log")
        ax_lr.set_xlabel("peak learning rate")
        ax_lr.set_ylabel("final validation loss (nats/token)")
        ax_lr.set_title(f"{model}: learning-rate sensitivity")
        ax_lr.grid(alpha=0.3, which="both")
        ax_lr.legend(fontsize=8)
        ax_fin.set_xticks(range(len(entries)), entries)
        all_finals = [ab["finals"][model, e] for e in entries]
        lo = min((f.min() for f in all_finals if f.size), default=np.nan)
        hi = min((f.max() for f in all_finals if f.size), default=np.nan)
        if np.isfinite(lo) and np.isfinite(hi):  # all diverged: keep matplotlib's limits
            ax_fin.set_ylim(lo - 0.05, hi + 0.1)
        ax_fin.set_xlabel("optimizer")
        ax_fin.set_ylabel("final validation loss at tuned lr (nats/token)")
        ax_fin.set_title(f"{model}: final loss, bars = mean ± sd, dots = seeds")
        ax_fin.grid(alpha=0.3, axis="y")
        ax_fin.legend(fontsize=8)
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## One run in detail
#
# For an ablation, the baseline's tuned run of the first model (else the first run with a
# `metrics.jsonl`); for a run directory, that run. Training loss (every
# logged step) and validation loss, the learning-rate schedule, and each metric family the
# trainer logs per parameter group (`grad_norm/<group>`, `update_ratio/<group>`,
# `router/<metric>` layer means for MoE models).

# %%
if KIND == "ablation":
    first_model = MODELS[0]
    entry = "adamw" if (first_model, "adamw") in tuned else ENTRIES[0]
    logged = runs[[(Path(w) / "metrics.jsonl").exists() for w in runs.workdir]]
    if logged.empty:
        raise FileNotFoundError(f"{TARGET}: no run with a metrics.jsonl under runs/")
    pick = logged[
        (logged.model == first_model)
        & (logged.entry == entry)
        & (logged.lr == tuned[first_model, entry])
    ]
    RUN_DIR = Path((pick if len(pick) else logged).sort_values("seed").workdir.iloc[0])
else:
    RUN_DIR = TARGET
run = load_run(RUN_DIR)
RUN_LABEL = "/".join(RUN_DIR.parts[-4:]) if KIND == "ablation" else RUN_DIR.name
print(f"run directory: {RUN_DIR}")
man, summ = run["manifest"], run["summary"]
info = {
    "name": man.get("name"),
    "model": man.get("model_summary"),
    "optimizer": (man.get("optimizer") or {}).get("name"),
    "learning rate": (man.get("optimizer") or {}).get("learning_rate"),
    **{
        k: summ.get(k)
        for k in (
            "final_val_loss",
            "best_val_loss",
            "steps",
            "tokens",
            "ms_per_step",
            "tokens_per_s",
            "opt_state_bytes",
        )
    },
}
display(pd.Series(info, name="value").to_frame())

# %%
train, evals = run["train"], run["eval"]
has_lr = "lr" in train and train["lr"].notna().any()
fig, axes = plt.subplots(1, 2 if has_lr else 1, figsize=(13 if has_lr else 7, 4), squeeze=False)
ax = axes[0][0]
if "loss" in train:
    ax.plot(train.step, train.loss, alpha=0.6, label="training loss (logged steps)")
if "val_loss" in evals:
    ax.plot(evals.step, evals.val_loss, marker="o", label="validation loss")
ax.set_xlabel("optimizer step")
ax.set_ylabel("loss (nats/token)")
ax.set_title(f"{RUN_LABEL}: loss")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
if has_lr:
    ax = axes[0][1]
    ax.plot(train.step, train.lr, color="C2")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate (peak-scaled schedule)")
    ax.set_title(f"{RUN_LABEL}: learning-rate schedule")
    ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

FAMILIES = {
    "grad_norm": "gradient norm (L2, before clipping)",
    "update_ratio": "‖update‖ / ‖parameters‖ (dimensionless)",
    "router": "router statistic (dimensionless, layer mean)",
}
families = {
    fam: sorted(
        c
        for c in train.columns
        if c.startswith(fam + "/") and c.count("/") == 1 and train[c].notna().any()
    )
    for fam in FAMILIES
}
families = {k: v for k, v in families.items() if v}
if families:
    fig, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 3.8), squeeze=False)
    for ax, (fam, cols) in zip(axes[0], families.items(), strict=True):
        for c in cols:
            ax.plot(train.step, train[c], label=c.split("/", 1)[1])
        if fam != "router":
            ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(FAMILIES[fam])
        ax.set_title(
            f"{RUN_LABEL}: {fam}/<{'metric' if fam == 'router' else 'group'}>", fontsize=10
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()
else:
    print("no per-group metric families in this run's metrics.jsonl")
