"""Progress of a training run: plain-text lines when standard output is not a terminal
(piped runs, Slurm ``.out`` files), a tqdm bar on a terminal."""

from __future__ import annotations

import dataclasses
import io
import json
import re

from experiments import progress, train
from experiments.configs import get_config

LINE = re.compile(
    r"^(?P<name>\S+) step (?P<step>\d+)/(?P<total>\d+) \(\d+%\) "
    r"loss (?P<loss>\d+\.\d{4}) tokens/s (?P<tok>\d+|-) "
    r"elapsed \d+:\d\d:\d\d eta (?:\d+:\d\d:\d\d|-)$"
)


def test_a_captured_training_prints_progress_lines(tmp_path, capsys):
    cfg = dataclasses.replace(
        get_config("tiny", smoke=True), steps=8, log_every=1, progress=True, tensorboard=False
    )
    train.train_and_evaluate(cfg, tmp_path / "run")
    out = capsys.readouterr().out  # pytest's capture is not a terminal
    lines = [m for m in map(LINE.match, out.splitlines()) if m]
    assert lines, out
    assert [int(m["step"]) for m in lines] == list(range(1, 9))  # 8 steps <= 20 lines
    assert {m["name"] for m in lines} == {cfg.name} and lines[-1]["total"] == "8"
    assert lines[0]["tok"] == "-"  # the first step compiles: no throughput yet
    assert all(m["tok"] != "-" for m in lines[1:])
    # the loss printed is the train record's loss of that very step
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").open()]
    losses = {r["step"]: r["loss"] for r in records if r["kind"] == "train"}
    assert [float(m["loss"]) for m in lines] == [round(losses[s], 4) for s in range(1, 9)]


def test_progress_off_prints_nothing(tmp_path, capsys):
    cfg = dataclasses.replace(get_config("tiny", smoke=True), progress=False, tensorboard=False)
    train.train_and_evaluate(cfg, tmp_path / "run")
    assert not [line for line in capsys.readouterr().out.splitlines() if LINE.match(line)]


def test_report_cadence_is_about_twenty_lines_on_logging_steps():
    assert progress.report_every(600, 10) == 30
    assert progress.report_every(19_073, 10) == 960
    assert progress.report_every(8, 1) == 1 and progress.report_every(4, 2) == 2
    stream = io.StringIO()
    bar = progress.Progress(600, 0, "tiny", 10, stream=stream)
    assert bar.bar is None  # a StringIO is not a terminal: lines, no tqdm
    for step in range(1, 601):
        bar.update(step, {"loss": 1.0, "tokens_per_s": 10.0} if step % 10 == 0 else None)
    steps = [int(LINE.match(line)["step"]) for line in stream.getvalue().splitlines()]
    assert steps == [10, *range(30, 601, 30)]  # the first logged step, then every 30
    assert progress.format_duration(3725.4) == "1:02:05"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_the_bar_not_lines():
    stream = _Terminal()
    bar = progress.Progress(4, 0, "tiny", 1, stream=stream)
    assert bar.bar is not None
    bar.update(1, {"loss": 1.0, "tokens_per_s": None})
    bar.close()
    assert stream.getvalue() == ""
