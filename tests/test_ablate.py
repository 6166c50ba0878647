"""The ablation runner: planning, resumable sweeps, aggregation, statistics, plots, report."""

import dataclasses
import json
import math

import numpy as np
import pytest

from experiments import ablate
from experiments.ablate import AblationConfig, SweepEntry

CFG = AblationConfig(
    "unit",
    ("tiny", "tiny_moe"),
    (SweepEntry("adamw", (1e-3, 3e-3)), SweepEntry("lion", (1e-4, 3e-4), moe=False)),
    seeds=(0, 1, 2),
)


def fake_run_fn(calls):
    """A training stand-in: loss falls with steps; lion at lr 3e-4 is clearly better."""

    def run_fn(train_cfg, workdir):
        calls.append(workdir)
        lr, seed = train_cfg["lr"], train_cfg["seed"]
        final = 2.0 - 0.1 * (lr == 3e-4) + 0.01 * seed + (0.05 if lr == 1e-3 else 0.0)
        hist = [
            dict(
                step=s,
                val_loss=final + 1.0 / (s + 1) - 1.0 / 101,
                tokens=s * 1024,
                elapsed_s=0.1 * s,
            )
            for s in range(0, 101, 20)
        ]
        return dict(
            final_val_loss=final,
            history=hist,
            ms_per_step=10.0,
            opt_ms_per_step=2.0,
            tokens_per_s=1e5,
            opt_state_bytes=1024.0,
            not_json=object(),
        )

    return run_fn


@pytest.fixture(autouse=True)
def _plain_train_config(monkeypatch):
    # the unit tests exercise the runner, not the trainer: a dict stands in for TrainConfig
    monkeypatch.setattr(
        ablate, "train_config", lambda cfg, spec: dict(lr=spec.learning_rate, seed=spec.seed)
    )


def test_plan_counts_and_moe_subset():
    specs = ablate.plan(CFG)
    # tiny: 2 entries x 2 lrs; tiny_moe: adamw only (lion has moe=False); x 3 seeds
    assert len(specs) == (4 + 2) * 3
    assert not [s for s in specs if s.model == "tiny_moe" and s.entry.key == "lion"]


def test_sweep_aggregates_and_resumes(tmp_path):
    calls = []
    records = ablate.run(CFG, tmp_path, fake_run_fn(calls), log=lambda s: None)
    assert len(calls) == len(records) == 18
    table = ablate.aggregate(CFG, records)
    lion = table["tiny"]["rows"]["lion"]
    assert lion["tuned_lr"] == 3e-4 and lion["seeds"] == 3
    np.testing.assert_allclose(lion["final"]["mean"], 1.91)
    assert lion["vs_baseline"]["verdict"] == "better"  # -0.1 with identical seed spread
    adamw = table["tiny"]["rows"]["adamw"]
    assert adamw["tuned_lr"] == 3e-3 and adamw["vs_baseline"] is None
    # target = adamw's tuned final (2.01): lion's curve reaches it before the end
    assert lion["steps_to_target"] is not None and lion["steps_to_target"] < 100
    assert adamw["steps_to_target"] == 100
    files = ablate.plots(CFG, records, table, tmp_path / "plots")
    assert {f.name for f in files} >= {"loss_tiny.png", "lr_sensitivity_tiny.png"}
    md = ablate.markdown_table(CFG, table)
    assert "| lion | 0.0003 | 3 |" in md and "better" in md
    # rerun: nothing is retrained
    calls2 = []
    again = ablate.run(CFG, tmp_path, fake_run_fn(calls2), log=lambda s: None)
    assert calls2 == [] and len(again) == 18
    # an interrupted sweep (one summary missing) redoes exactly that run
    (tmp_path / records[3]["workdir"].split(str(tmp_path) + "/")[1] / "summary.json").unlink()
    calls3 = []
    ablate.run(CFG, tmp_path, fake_run_fn(calls3), log=lambda s: None)
    assert calls3 == [records[3]["workdir"]]


def test_results_dir_of_another_config_is_refused(tmp_path):
    ablate.run(CFG, tmp_path, fake_run_fn([]), log=lambda s: None)
    other = dataclasses.replace(CFG, seeds=(0,))
    with pytest.raises(ValueError, match="different sweep configuration"):
        ablate.run(other, tmp_path, fake_run_fn([]), log=lambda s: None)


def test_bad_sweeps():
    with pytest.raises(ValueError, match="no optimizer entries"):
        AblationConfig("x", ("tiny",), ())
    with pytest.raises(ValueError, match="empty learning-rate grid"):
        AblationConfig("x", ("tiny",), (SweepEntry("adamw", ()),))
    with pytest.raises(ValueError, match="unknown optimizer"):
        ablate.resolve(ablate.Args(preset="smoke", optimizers=("sgd_typo",)))
    with pytest.raises(ValueError, match="unknown preset"):
        ablate.resolve(ablate.Args(preset="huge"))


def test_single_seed_makes_no_claim(tmp_path):
    cfg = dataclasses.replace(CFG, seeds=(0,), models=("tiny",))
    table = ablate.aggregate(cfg, ablate.run(cfg, tmp_path, fake_run_fn([]), log=lambda s: None))
    assert table["tiny"]["rows"]["lion"]["vs_baseline"]["verdict"] == "n/a"
    assert math.isnan(table["tiny"]["rows"]["lion"]["vs_baseline"]["se"])


def test_report_written(tmp_path):
    records = ablate.run(CFG, tmp_path, fake_run_fn([]), log=lambda s: None)
    table = ablate.aggregate(CFG, records)
    files = ablate.plots(CFG, records, table, tmp_path / "plots")
    path = ablate.write_report(CFG, table, files, tmp_path, "python -m experiments.ablate", 1.0)
    text = path.read_text()
    assert "![loss_tiny](plots/loss_tiny.png)" in text and "machine:" in text
    json.dumps(table)  # results.json must serialize


def test_smoke_preset_end_to_end(tmp_path, monkeypatch):
    # the real trainer on the smoke preset: tiny model, 4 steps, AdamW and Muon, two seeds
    monkeypatch.undo()  # use the real train_config
    out = tmp_path / "abl"
    table = ablate.main(["--preset", "smoke", "--out", str(out)])
    rows = table["tiny"]["rows"]
    assert set(rows) == {"adamw", "muon"} and rows["adamw"]["seeds"] == 2
    for row in rows.values():
        assert math.isfinite(row["final"]["mean"]) and row["ms_per_step"] > 0
        assert row["opt_state_bytes"] > 0
    for name in (
        "report.md",
        "results.json",
        "results.md",
        "plots/loss_tiny.png",
        "plots/lr_sensitivity_tiny.png",
    ):
        assert (out / name).exists(), name
    # rerun reuses every finished run (no retraining) and gives the same table
    again = ablate.main(["--preset", "smoke", "--out", str(out)])
    assert again["tiny"]["rows"]["muon"]["final"] == rows["muon"]["final"]
