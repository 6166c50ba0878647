"""The command lines of ``experiments.train`` and ``experiments.ablate``: the help documents
every entry flag and preset, an unknown preset or a schedule that does not fit in the steps
is refused with a message (not a traceback) before anything is written, ``--warmup-steps``
is accepted by both, and the smoke ablation includes a matrix optimizer."""

from __future__ import annotations

import dataclasses

import pytest

from experiments import ablate, cli, configs


def _help(capsys, fn, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        fn(argv)
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # tyro and argparse wrap lines


def test_train_help_documents_the_entry_flags_presets_and_overrides(capsys):
    text = _help(capsys, cli.parse_args, ["--help"])
    for flag in (*cli.LAUNCH_FLAGS, *cli.ALIASES):
        assert flag in text, flag
    for name in configs.PRESETS:
        assert name in text, name
    assert "default: tiny" in text  # what --preset falls back to
    assert "--optimizer.learning-rate" in text and "--steps" in text  # the overrides follow


def test_train_refuses_an_unknown_preset_with_the_list(tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(["--preset", "smoke", "--workdir", str(tmp_path / "w")])
    message = str(exit_.value.code)
    assert "unknown preset 'smoke'" in message and "--smoke is a flag" in message
    assert all(name in message for name in configs.PRESETS)
    assert not (tmp_path / "w").exists()


def test_train_refuses_a_schedule_longer_than_the_run(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_config("tiny", False, ["--steps", "10"])
    assert exit_.value.code != 0
    captured = capsys.readouterr()
    text = " ".join((captured.out + captured.err).split())
    assert (
        "--warmup-steps 30 + --optimizer.cooldown-fraction 0.2 do not fit in --steps 10" in text
    ), text
    # the control: a warmup that fits is accepted, in both spellings of the shorthand
    assert (
        cli.build_config(
            "tiny", False, ["--steps", "10", "--warmup-steps", "2"]
        ).optimizer.warmup_steps
        == 2
    )
    assert cli.build_config("tiny", True, ["--warmup-steps=1"]).optimizer.warmup_steps == 1
    assert cli.expand_aliases(["--warmup-steps", "3", "--steps", "9"]) == [
        "--optimizer.warmup-steps",
        "3",
        "--steps",
        "9",
    ]


def test_ablate_help_documents_every_flag_and_preset(capsys):
    text = _help(capsys, ablate.main, ["--help"])
    for field in dataclasses.fields(ablate.Args):
        assert "--" + field.name.replace("_", "-") in text, field.name
    for name in ablate.PRESETS:
        assert name in text, name


def test_ablate_refuses_a_schedule_longer_than_the_run_before_any_run(tmp_path, capsys):
    out = tmp_path / "abl"
    with pytest.raises(SystemExit) as exit_:
        ablate.main(["--steps", "10", "--out", str(out)])
    message = " ".join(str(exit_.value.code).split())
    assert message.startswith("experiments.ablate: ablation: model 'tiny'")
    assert "--warmup-steps 30" in message and "--steps 10" in message
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_:  # tyro's message lists the presets
        ablate.main(["--preset", "huge"])
    assert exit_.value.code == 2
    assert "invalid choice 'huge'" in capsys.readouterr().err


def test_ablate_warmup_steps_reach_every_run():
    cfg = ablate.resolve(ablate.Args(steps=10, warmup_steps=2))
    ablate.check_schedules(cfg)  # now it fits
    spec = ablate.plan(cfg)[0]
    train_cfg = ablate.train_config(cfg, spec)
    assert (train_cfg.steps, train_cfg.optimizer.warmup_steps) == (10, 2)
    # without the flag the sweep keeps the training preset's warmup and its results hash
    default = ablate.PRESETS["default"]
    assert default.warmup_steps is None
    assert ablate.train_config(default, ablate.plan(default)[0]).optimizer.warmup_steps == 30
    assert ablate._config_hash(default) == "0c88c30e49a4e9fe"


def test_smoke_ablation_includes_a_matrix_optimizer():
    smoke = ablate.PRESETS["smoke"]
    names = {e.optimizer for e in smoke.entries}
    assert "muon" in names and smoke.baseline in names
    assert smoke.smoke and smoke.steps == configs.SMOKE_STEPS
    # it is small: one learning rate per optimizer, one model
    assert len(ablate.plan(smoke)) == len(smoke.entries) * len(smoke.seeds) == 4
