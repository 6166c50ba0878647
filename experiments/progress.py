"""Training progress on the console: a tqdm bar on a terminal, plain-text lines otherwise.

A run whose standard output is a terminal gets a tqdm bar (on standard error, as tqdm
draws it). A run whose standard output is not a terminal (``python -m experiments.train ... |
tee log``, a Slurm ``.out`` file, a captured subprocess) gets one line per report instead::

    tiny step 60/600 (10%) loss 2.3141 tokens/s 24518 elapsed 0:00:07 eta 0:01:05

A report is printed at the first logged step (the run is alive and has compiled), then every
``every`` steps and at the last step, so that a run prints about :data:`LINES` of them;
``every`` is a multiple of ``TrainConfig.log_every``, so each line carries the loss of that
very step. ``tokens/s`` is the training throughput of the step's logging interval (the
trainer's ``tokens_per_s``); the ETA extrapolates the wall-clock rate of the steps run since
this process started (compilation included, so early estimates run high).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

__all__ = ["LINES", "Progress", "format_duration", "report_every"]

#: About how many plain-text reports a run prints.
LINES = 20


def report_every(steps: int, log_every: int, lines: int = LINES) -> int:
    """The report interval: the smallest multiple of ``log_every`` giving at most about
    ``lines`` reports over ``steps`` steps."""
    return log_every * max(1, math.ceil(steps / (lines * log_every)))


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` of a non-negative number of seconds."""
    total = int(round(max(seconds, 0.0)))
    return f"{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}"


class Progress:
    """The progress display of one run.

    Args:
      total: the run's last step.
      start: the step the run resumes from (0 for a fresh run).
      name: the run's name, the first word of each line.
      log_every: the trainer's logging interval (reports fall on logging steps).
      enabled: ``False`` shows nothing (``TrainConfig.progress``, processes other than 0).
      stream: where plain-text lines go (default ``sys.stdout``, read at construction); a
        stream that is a terminal gets the tqdm bar instead.
    """

    def __init__(
        self,
        total: int,
        start: int,
        name: str,
        log_every: int,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
    ):
        self.total, self.start, self.name = total, start, name
        self.stream = sys.stdout if stream is None else stream
        self.every = report_every(total - start, log_every)
        self.t0, self.reported = time.perf_counter(), False
        self.bar = None
        self.lines = enabled and not _isatty(self.stream)
        if enabled and not self.lines:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name, dynamic_ncols=True, disable=None)

    def update(self, step: int, record: dict | None) -> None:
        """Step ``step`` is done; ``record`` is its train record (``None`` off logging
        steps)."""
        if self.bar is not None:
            if record is not None:
                self.bar.set_postfix(loss=f"{record['loss']:.3f}", refresh=False)
            self.bar.update(1)
        if not self.lines or record is None:
            return
        if self.reported and step % self.every and step != self.total:
            return
        self.reported = True
        print(self.line(step, record), file=self.stream, flush=True)

    def line(self, step: int, record: dict) -> str:
        """The report of ``step``: step, percentage, loss, tokens/s, elapsed time, ETA."""
        elapsed = time.perf_counter() - self.t0
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done > 0 else math.nan
        tok_s = record.get("tokens_per_s")
        return (
            f"{self.name} step {step}/{self.total} ({100 * step / self.total:.0f}%) "
            f"loss {record['loss']:.4f} "
            f"tokens/s {'-' if tok_s is None else f'{tok_s:.0f}'} "
            f"elapsed {format_duration(elapsed)} "
            f"eta {'-' if math.isnan(eta) else format_duration(eta)}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
