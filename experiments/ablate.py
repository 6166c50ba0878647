"""The main job: an optimizer ablation with per-optimizer learning-rate sweeps and seeds.

``python -m experiments.ablate`` trains the tiny Qwen3-style model (and its OLMoE-style MoE
variant) on the embedded default corpus with every optimizer of the sweep, each at its own
grid of learning rates and several seeds, on one fixed schedule (warmup-stable-decay), then
writes under ``--out`` (default ``results/ablation``):

* ``runs/<model>/<optimizer>/lr<lr>/seed<seed>/`` — each run's own directory (metrics,
  checkpoints, ``summary.json``); a rerun skips runs whose ``summary.json`` exists, and an
  interrupted run resumes from its checkpoint (resumable sweeps);
* ``results.json`` / ``results.md`` — per model and optimizer: tuned lr (best mean final
  validation loss over seeds), seeds, mean ± sd final validation loss, steps to the target
  loss (first evaluation at which the seed-mean curve reaches it), ms/step, optimizer
  ms/step, tokens/s, optimizer-state bytes, and the difference to AdamW with its uncertainty
  (Welch test; "within noise" unless p < 0.05);
* ``plots/`` — loss vs steps, tokens and wall-clock (tuned lr, mean over seeds), lr
  sensitivity, router load coefficient of variation (MoE);
* ``report.md`` — the command, machine, date, table and plots.

The target loss of "steps to target" is AdamW's tuned mean final validation loss on the same
model: how many steps each optimizer needs to match what AdamW reaches at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from experiments import stats

__all__ = [
    "SweepEntry",
    "AblationConfig",
    "PRESETS",
    "plan",
    "run",
    "aggregate",
    "check_schedules",
    "main",
]

RunFn = Callable[[Any, str], dict]


@dataclasses.dataclass(frozen=True)
class SweepEntry:
    """One optimizer arm: a name of ``experiments.configs.OPTIMIZER_NAMES`` and its lr grid."""

    optimizer: str
    learning_rates: tuple[float, ...]
    label: str = ""
    options: tuple[tuple[str, Any], ...] = ()
    adam_lr: float | None = None  # Muon's AdamW fallback lr (embeddings, head, ...)
    moe: bool = True  # also run on the MoE model

    @property
    def key(self) -> str:
        return self.label or self.optimizer


@dataclasses.dataclass(frozen=True)
class AblationConfig:
    """A sweep: models (training presets) × entries × learning rates × seeds."""

    name: str
    models: tuple[str, ...]
    entries: tuple[SweepEntry, ...]
    seeds: tuple[int, ...] = (0, 1)
    steps: int | None = None  # override of the training preset's step count
    smoke: bool = False  # use the training presets' smoke variants
    baseline: str = "adamw"
    warmup_steps: int | None = None  # override of the training preset's warmup

    def __post_init__(self):
        if not self.entries:
            raise ValueError("ablation: the sweep has no optimizer entries")
        if not self.models:
            raise ValueError("ablation: the sweep has no models")
        if not self.seeds:
            raise ValueError("ablation: the sweep has no seeds")
        keys = [e.key for e in self.entries]
        if len(set(keys)) != len(keys):
            raise ValueError(f"ablation: duplicate entry labels {keys}")
        for e in self.entries:
            if not e.learning_rates:
                raise ValueError(f"ablation: entry '{e.key}' has an empty learning-rate grid")
            if any(not (lr > 0 and math.isfinite(lr)) for lr in e.learning_rates):
                raise ValueError(f"ablation: entry '{e.key}' has a non-positive learning rate")


# Matrix methods run AdamW on what they do not own (embeddings/head/vectors for Muon; vectors
# for the symmetric stack) at 3e-3, the AdamW learning rate of the tiny training preset.
_DEFAULT_ENTRIES = (
    SweepEntry("adamw", (3e-4, 1e-3, 3e-3)),
    SweepEntry("muon", (3e-3, 1e-2, 3e-2), adam_lr=3e-3),
    SweepEntry("symmetric", (1e-2, 3e-2, 1e-1), adam_lr=3e-3),
    SweepEntry("lion", (3e-4, 1e-3, 3e-3), moe=False),
    SweepEntry("galore", (1e-2, 3e-2, 1e-1), moe=False),
    SweepEntry("natural_galore", (1e-2, 3e-2, 1e-1), moe=False),
)

PRESETS: dict[str, AblationConfig] = {
    # the README's main command: ~20 minutes on a 2-core CPU (200 steps of 16 x 128 tokens
    # per run; grids centred on each optimizer's best value in a 1-seed pilot)
    "default": AblationConfig("default", ("tiny", "tiny_moe"), _DEFAULT_ENTRIES, (0, 1), steps=200),
    # what the tests run: AdamW against a matrix optimizer (Muon), one lr each, two seeds
    # (so that the Welch comparison runs), 4 smoke steps per run: about 30 s end to end on 2
    # CPU cores (each run compiles its own steps; 56 s wall, 30 s CPU, measured at load 10)
    "smoke": AblationConfig(
        "smoke",
        ("tiny",),
        (SweepEntry("adamw", (3e-3,)), SweepEntry("muon", (2e-2,), adam_lr=3e-3)),
        (0, 1),
        steps=4,
        smoke=True,
    ),
}


# ----------------------------------------------------------------------------- planning
@dataclasses.dataclass(frozen=True)
class RunSpec:
    model: str
    entry: SweepEntry
    learning_rate: float
    seed: int

    @property
    def relpath(self) -> str:
        return f"runs/{self.model}/{self.entry.key}/lr{self.learning_rate:g}/seed{self.seed}"


def plan(cfg: AblationConfig) -> list[RunSpec]:
    """Every run of the sweep, in execution order (seed-major so early results are usable)."""
    specs = []
    for seed in cfg.seeds:
        for model in cfg.models:
            is_moe = "moe" in model or "oss" in model
            for entry in cfg.entries:
                if is_moe and not entry.moe:
                    continue
                for lr in entry.learning_rates:
                    specs.append(RunSpec(model, entry, lr, seed))
    return specs


def train_config(cfg: AblationConfig, spec: RunSpec) -> Any:
    """The training config of one run: the model's preset with this optimizer, lr and seed."""
    from experiments import configs

    base = configs.get_config(spec.model, smoke=cfg.smoke)
    warmup = base.optimizer.warmup_steps if cfg.warmup_steps is None else cfg.warmup_steps
    opt = dataclasses.replace(
        base.optimizer,
        name=spec.entry.optimizer,
        learning_rate=spec.learning_rate,
        adam_lr=spec.entry.adam_lr,
        options=tuple(spec.entry.options),
        warmup_steps=warmup,
    )
    data = dataclasses.replace(base.data, seed=spec.seed)
    steps = base.steps if cfg.steps is None else cfg.steps
    return dataclasses.replace(base, optimizer=opt, data=data, seed=spec.seed, steps=steps)


def check_schedules(cfg: AblationConfig) -> None:
    """Builds the training config of each model's first run, so that a schedule that does not
    fit (``--steps 10`` with the preset's 30 warmup steps and its cooldown) is refused before
    the sweep starts.

    Raises:
      ValueError: naming the model, the flags and their values.
    """
    for model in cfg.models:
        spec = next((s for s in plan(cfg) if s.model == model), None)
        if spec is None:
            continue
        try:
            train_config(cfg, spec)
        except ValueError as e:
            raise ValueError(
                f"ablation: model {model!r} of preset '{cfg.name}' "
                f"(--steps {cfg.steps}, --warmup-steps {cfg.warmup_steps}; None: "
                f"the training preset's): {e}"
            ) from None


def _config_hash(cfg: AblationConfig) -> str:
    d = dataclasses.asdict(cfg)
    if d["warmup_steps"] is None:  # added later: sweeps without it keep their hash
        del d["warmup_steps"]
    blob = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_out_dir(cfg: AblationConfig, out: Path) -> None:
    """Refuses a results directory written by a different sweep configuration."""
    marker = out / "ablation.json"
    want = {"name": cfg.name, "hash": _config_hash(cfg), "config": dataclasses.asdict(cfg)}
    if marker.exists():
        have = json.loads(marker.read_text())
        if have.get("hash") != want["hash"]:
            raise ValueError(
                f"ablation: {out} holds results of a different sweep configuration "
                f"('{have.get('name')}', hash {have.get('hash')}; this one is '{cfg.name}', "
                f"hash {want['hash']}). Use another --out directory or remove it."
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(want, indent=1, default=str))


def _default_run_fn(train_cfg: Any, workdir: str) -> dict:
    from experiments.train import train_and_evaluate

    return train_and_evaluate(train_cfg, workdir)


def run(
    cfg: AblationConfig,
    out: str | os.PathLike,
    run_fn: RunFn | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Runs (or reuses) every run of the sweep; returns one record per run."""
    out = Path(out)
    _check_out_dir(cfg, out)
    run_fn = run_fn or _default_run_fn
    _check_optimizers(cfg, run_fn)
    records = []
    specs = plan(cfg)
    for i, spec in enumerate(specs):
        workdir = out / spec.relpath
        done = workdir / "summary.json"
        if done.exists():
            summary = json.loads(done.read_text())
            status = "reused"
        else:
            t0 = time.perf_counter()
            summary = run_fn(train_config(cfg, spec), str(workdir))
            summary = {k: v for k, v in summary.items() if _jsonable(v)}
            summary["wall_s"] = time.perf_counter() - t0
            workdir.mkdir(parents=True, exist_ok=True)
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps(summary, indent=1))
            os.replace(tmp, done)  # a run counts as finished only once this file exists
            status = f"{summary['wall_s']:.0f}s"
        log(
            f"[{i + 1}/{len(specs)}] {spec.relpath}: final val loss "
            f"{summary.get('final_val_loss', float('nan')):.4f} ({status})"
        )
        records.append(
            dict(
                model=spec.model,
                entry=spec.entry.key,
                lr=spec.learning_rate,
                seed=spec.seed,
                workdir=str(workdir),
                summary=summary,
            )
        )
    return records


def _check_optimizers(cfg: AblationConfig, run_fn: RunFn) -> None:
    if run_fn is not _default_run_fn:
        return
    from experiments.configs import OPTIMIZER_NAMES

    unknown = [e.optimizer for e in cfg.entries if e.optimizer not in OPTIMIZER_NAMES]
    if unknown:
        raise ValueError(
            f"ablation: unknown optimizer(s) {unknown}; known: {sorted(OPTIMIZER_NAMES)}"
        )


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


# ---------------------------------------------------------------------------- aggregating
def _final(rec: dict) -> float:
    return float(rec["summary"]["final_val_loss"])


def _steps_to(runs: Sequence[dict], target: float) -> float | None:
    """First evaluation step at which the seed-mean validation curve reaches ``target``."""
    hists = [
        [h for h in r["summary"].get("history", []) if h.get("val_loss") is not None] for r in runs
    ]
    if not hists or not all(hists):
        return None
    n = min(len(h) for h in hists)
    for i in range(n):
        # 1e-12 absorbs the rounding of the mean that defines the target itself
        if sum(h[i]["val_loss"] for h in hists) / len(hists) <= target + 1e-12:
            return float(hists[0][i]["step"])
    return None


def aggregate(cfg: AblationConfig, records: list[dict]) -> dict:
    """Per model and entry: the tuned lr and the statistics of its seeds (see module doc)."""
    table: dict[str, dict[str, dict]] = {}
    for model in cfg.models:
        rows: dict[str, dict] = {}
        for entry in cfg.entries:
            recs = [r for r in records if r["model"] == model and r["entry"] == entry.key]
            if not recs:
                continue
            by_lr: dict[float, list[dict]] = {}
            for r in recs:
                by_lr.setdefault(r["lr"], []).append(r)
            sweep = {lr: stats.summarize([_final(r) for r in rs]) for lr, rs in by_lr.items()}
            finite = {lr: s for lr, s in sweep.items() if math.isfinite(s.mean)}
            best_lr = min(finite, key=lambda lr: finite[lr].mean) if finite else None
            best = by_lr[best_lr] if best_lr is not None else []

            def mean_of(key, runs=best):
                vals = [r["summary"].get(key) for r in runs]
                vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
                return float(sum(vals) / len(vals)) if vals else None

            rows[entry.key] = dict(
                optimizer=entry.optimizer,
                tuned_lr=best_lr,
                seeds=len(best),
                finals=[_final(r) for r in best],
                final=dataclasses.asdict(sweep[best_lr]) if best_lr is not None else None,
                sweep={f"{lr:g}": dataclasses.asdict(s) for lr, s in sorted(sweep.items())},
                ms_per_step=mean_of("ms_per_step"),
                opt_ms_per_step=mean_of("opt_ms_per_step"),
                tokens_per_s=mean_of("tokens_per_s"),
                opt_state_bytes=mean_of("opt_state_bytes"),
                best_runs=[r["workdir"] for r in best],
            )
        base = rows.get(cfg.baseline)
        target = base["final"]["mean"] if base and base["final"] else None
        for key, row in rows.items():
            best = [r for r in records if r["workdir"] in row["best_runs"]]
            row["steps_to_target"] = None if target is None else _steps_to(best, target)
            if base and key != cfg.baseline and row["finals"]:
                row["vs_baseline"] = dataclasses.asdict(
                    stats.compare(base["finals"], row["finals"])
                )
            else:
                row["vs_baseline"] = None
        table[model] = dict(target_loss=target, rows=rows)
    return table


def markdown_table(cfg: AblationConfig, table: dict) -> str:
    lines = []
    for model, block in table.items():
        tgt = block["target_loss"]
        lines += [
            f"**{model}** (target loss for steps-to-target: {cfg.baseline}'s tuned "
            f"final, {tgt:.4f})"
            if tgt is not None
            else f"**{model}**",
            "",
            "| optimizer | tuned lr | seeds | final val loss (mean ± sd) | "
            f"Δ vs {cfg.baseline} (± se, Welch) | steps to target | ms/step | "
            "opt ms/step | tokens/s | opt state MiB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, r in block["rows"].items():
            fin = r["final"]
            final = f"{fin['mean']:.4f} ± {fin['sd']:.4f}" if fin else "diverged"
            cmp_ = r["vs_baseline"]
            vs = (
                "—"
                if cmp_ is None
                else f"{cmp_['delta']:+.4f} ± {cmp_['se']:.4f} ({cmp_['verdict']})"
            )

            def f(v, fmt):
                return "—" if v is None else format(v, fmt)

            mib = None if r["opt_state_bytes"] is None else r["opt_state_bytes"] / 2**20
            lines.append(
                f"| {key} | {f(r['tuned_lr'], 'g')} | {r['seeds']} | {final} | {vs} | "
                f"{f(r['steps_to_target'], '.0f')} | {f(r['ms_per_step'], '.1f')} | "
                f"{f(r['opt_ms_per_step'], '.1f')} | {f(r['tokens_per_s'], '.0f')} | "
                f"{f(mib, '.3f')} |"
            )
        lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- plots
def _history(rec: dict) -> list[dict]:
    return [h for h in rec["summary"].get("history", []) if h.get("val_loss") is not None]


def _label(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plots(cfg: AblationConfig, records: list[dict], table: dict, out: Path) -> list[Path]:
    """Loss vs steps/tokens/time, lr sensitivity and router load CV; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from experiments.metrics import save_figure

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for model, block in table.items():
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for key, row in block["rows"].items():
            best = [r for r in records if r["workdir"] in row["best_runs"]]
            hists = [_history(r) for r in best]
            if not hists or not all(hists):
                continue
            n = min(len(h) for h in hists)
            loss = np.mean([[h[i]["val_loss"] for i in range(n)] for h in hists], axis=0)
            steps = np.array([hists[0][i]["step"] for i in range(n)], float)
            tokens = np.array([hists[0][i].get("tokens", np.nan) for i in range(n)], float)
            secs = np.mean(
                [[h[i].get("elapsed_s", np.nan) for i in range(n)] for h in hists], axis=0
            )
            label = f"{key} (lr {row['tuned_lr']:g})"
            axes[0].plot(steps, loss, label=label)
            axes[1].plot(tokens / 1e6, loss, label=label)
            axes[2].plot(secs, loss, label=label)
        for ax, xl in zip(axes, ("step", "tokens (millions)", "wall-clock (s)"), strict=True):
            ax.set_xlabel(xl)
            ax.set_ylabel("validation loss (nats/byte)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(
            f"{model}: validation loss at each optimizer's tuned learning rate "
            f"(mean of {len(cfg.seeds)} seeds)"
        )
        files.append(save_figure(fig, out / f"loss_{model}.png"))

        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for key, row in block["rows"].items():
            lrs = sorted(float(k) for k in row["sweep"])
            means = [row["sweep"][f"{lr:g}"]["mean"] for lr in lrs]
            sds = [row["sweep"][f"{lr:g}"]["sd"] for lr in lrs]
            ax.errorbar(lrs, means, yerr=sds, marker="o", capsize=3, label=key)
        ax.set_xscale("log")
        _label(
            ax,
            "peak learning rate",
            "final validation loss (nats/byte)",
            f"{model}: learning-rate sensitivity (mean ± sd over seeds)",
        )
        files.append(save_figure(fig, out / f"lr_sensitivity_{model}.png"))

        cv = _router_cv_curves(records, block)
        if cv:
            fig, ax = plt.subplots(figsize=(6.5, 4.2))
            for key, (steps, vals) in cv.items():
                ax.plot(steps, vals, label=key)
            _label(
                ax,
                "step",
                "router load coefficient of variation (0 = balanced)",
                f"{model}: expert load balance at the tuned lr",
            )
            files.append(save_figure(fig, out / f"router_cv_{model}.png"))
    return files


def _router_cv_curves(records: list[dict], block: dict) -> dict:
    """Mean router load CV per logged step, from each best run's metrics.jsonl."""
    curves = {}
    for key, row in block["rows"].items():
        per_run = []
        for wd in row["best_runs"]:
            path = Path(wd) / "metrics.jsonl"
            if not path.exists():
                continue
            pts = {}
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                vals = [v for k, v in rec.items() if "load_cv" in k and isinstance(v, float)]
                if vals and "step" in rec:
                    pts[rec["step"]] = sum(vals) / len(vals)
            if pts:
                per_run.append(pts)
        if per_run:
            steps = sorted(set.intersection(*(set(p) for p in per_run)))
            curves[key] = (steps, [sum(p[s] for p in per_run) / len(per_run) for s in steps])
    return curves


# ------------------------------------------------------------------------------- report
def machine_description() -> str:
    import jax

    dev = jax.devices()[0]
    return (
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__} on {dev.platform} ({dev.device_kind})"
    )


def write_report(
    cfg: AblationConfig, table: dict, files: list[Path], out: Path, command: str, elapsed_s: float
) -> Path:
    body = [
        f"# Optimizer ablation '{cfg.name}'",
        "",
        f"- command: `{command}`",
        f"- machine: {machine_description()}",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"sweep wall-clock {elapsed_s / 60:.1f} min",
        f"- models: {', '.join(cfg.models)}; seeds: {list(cfg.seeds)}; each optimizer tuned "
        "over its own learning-rate grid (the tuned lr minimizes the mean final validation "
        "loss over seeds); fixed schedule of the training preset",
        f"- differences are to {cfg.baseline} with Welch's test across seeds; a difference is "
        "called better/worse only at p < 0.05, otherwise 'within noise'",
        "",
        markdown_table(cfg, table),
        "",
    ]
    for f in files:
        body.append(f"![{f.stem}]({f.relative_to(out).as_posix()})")
        body.append("")
    path = out / "report.md"
    path.write_text("\n".join(body))
    return path


# --------------------------------------------------------------------------------- CLI
@dataclasses.dataclass
class Args:
    """Run an optimizer ablation: every optimizer of the preset at each learning rate of its
    grid and each seed, then the results table, plots and report (module docstring).
    Presets: 'default' (tiny + tiny_moe models, 6 optimizers, 3 learning rates each, 2 seeds,
    200 steps per run: ~20 min on 2 CPU cores) and 'smoke' (tiny model, AdamW and Muon, one
    learning rate each, 2 seeds, 4 smoke steps: ~30 s)."""

    preset: Literal["default", "smoke"] = "default"
    """sweep preset (see above)"""
    out: str = "results/ablation"
    """results directory (reruns reuse its finished runs; another sweep's is refused)"""
    optimizers: tuple[str, ...] = ()
    """restrict to these entries (labels of the preset), e.g. --optimizers adamw muon"""
    seeds: int | None = None
    """number of seeds (0..n-1) instead of the preset's"""
    steps: int | None = None
    """training steps per run instead of the preset's"""
    warmup_steps: int | None = None
    """learning-rate warmup steps per run instead of the training preset's"""


def resolve(args: Args) -> AblationConfig:
    if args.preset not in PRESETS:
        raise ValueError(f"ablation: unknown preset '{args.preset}'; known: {sorted(PRESETS)}")
    cfg = PRESETS[args.preset]
    if args.optimizers:
        known = {e.key for e in cfg.entries}
        unknown = [o for o in args.optimizers if o not in known]
        if unknown:
            raise ValueError(
                f"ablation: unknown optimizer(s) {unknown} for preset "
                f"'{cfg.name}'; known: {sorted(known)}"
            )
        cfg = dataclasses.replace(
            cfg, entries=tuple(e for e in cfg.entries if e.key in args.optimizers)
        )
    if args.seeds is not None:
        cfg = dataclasses.replace(cfg, seeds=tuple(range(args.seeds)))
    if args.steps is not None:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    if args.warmup_steps is not None:
        cfg = dataclasses.replace(cfg, warmup_steps=args.warmup_steps)
    return cfg


def main(argv: Sequence[str] | None = None, run_fn: RunFn | None = None) -> dict:
    """``python -m experiments.ablate [flags]`` (``--help`` lists them): runs the sweep and
    writes ``results.json``, ``results.md``, ``plots/`` and ``report.md`` under ``--out``.

    Raises:
      SystemExit: an unknown preset or optimizer, or a schedule that does not fit in the
        steps (the message names the flags), before any run starts.
    """
    import tyro

    args = tyro.cli(Args, args=argv, prog="python -m experiments.ablate")
    try:
        cfg = resolve(args)
        if run_fn is None:
            check_schedules(cfg)
    except ValueError as e:
        raise SystemExit(f"experiments.ablate: {e}") from None
    out = Path(args.out)
    t0 = time.perf_counter()
    records = run(cfg, out, run_fn)
    table = aggregate(cfg, records)
    files = plots(cfg, records, table, out / "plots")
    (out / "results.json").write_text(json.dumps(table, indent=1))
    (out / "results.md").write_text(markdown_table(cfg, table))
    command = "python -m experiments.ablate " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    report = write_report(cfg, table, files, out, command.strip(), time.perf_counter() - t0)
    print(markdown_table(cfg, table))
    print(f"report: {report}")
    return table


if __name__ == "__main__":
    main()
