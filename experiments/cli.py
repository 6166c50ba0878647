"""The command line of ``python -m experiments.train``: launcher flags, then config overrides.

``python -m experiments.train --preset NAME [--smoke] --workdir DIR [--distributed
[--coordinator HOST:PORT --num-processes N --process-id I]] [overrides]``:

* :data:`LAUNCH_FLAGS` belong to the launch, not to the config: ``--preset`` / ``--smoke``
  pick the base config (:func:`experiments.configs.get_config`; an unknown preset exits
  with the list of presets), ``--workdir`` the run directory, ``--distributed`` calls
  :func:`initialize_distributed` (without the three optional flags jax detects Slurm /
  Open MPI / TPU environments);
* :data:`ALIASES` are shorthands of overrides (``--warmup-steps N`` is
  ``--optimizer.warmup-steps N``);
* every other flag is a tyro override of a :class:`~experiments.configs.TrainConfig` field
  (``--steps 100``, ``--optimizer.name muon``, ``--optimizer.options rank 16``,
  ``--data.batch-size 32``, ``--sharding.fsdp 8``, ``--sharding.tp 2``, ``--sharding.rules
  'lm_head' 'None,tp'``).

The cluster launchers (:mod:`experiments.launch`) render these same flags and check their
overrides with the same parser.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

__all__ = [
    "ALIASES",
    "LAUNCH_FLAGS",
    "PROG",
    "build_config",
    "expand_aliases",
    "initialize_distributed",
    "launch_parser",
    "parse_args",
]

#: Flags read before the config overrides (set by the launchers, never by an override).
LAUNCH_FLAGS = (
    "--preset",
    "--smoke",
    "--workdir",
    "--distributed",
    "--coordinator",
    "--num-processes",
    "--process-id",
)
#: Shorthands of config overrides (also accepted after ``--`` by the launchers).
ALIASES = {"--warmup-steps": "--optimizer.warmup-steps"}
PROG = "python -m experiments.train --preset NAME [--smoke] --workdir DIR"
DEFAULT_PRESET = "tiny"


def launch_parser(add_help: bool = False) -> argparse.ArgumentParser:
    """The parser of :data:`LAUNCH_FLAGS` (``parse_known_args`` leaves the overrides); with
    ``add_help``, also ``-h/--help`` (the entry flags, the presets and the shorthands)."""
    from experiments.configs import PRESETS

    pre = argparse.ArgumentParser(
        prog="python -m experiments.train",
        add_help=add_help,
        usage=f"{PROG} [--distributed [--coordinator HOST:PORT --num-processes N "
        "--process-id I]] [OVERRIDES]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a preset (experiments.configs) in a run directory; rerunning the\n"
        "same command resumes from its last checkpoint. The entry flags come\n"
        "first; every field of the config is then an override (next section).",
        epilog=textwrap.fill("presets: " + ", ".join(PRESETS), 79)
        + "\nshorthands: "
        + ", ".join(f"{alias} N = {flag} N" for alias, flag in ALIASES.items()),
    )
    pre.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        metavar="NAME",
        help=f"the base config (default: {DEFAULT_PRESET}); one of the presets listed below",
    )
    pre.add_argument(
        "--smoke",
        action="store_true",
        help="the preset's smoke variant: 4 steps of 8 x 32 tokens on the "
        "embedded corpus, seconds on a CPU",
    )
    pre.add_argument(
        "--workdir",
        default=None,
        metavar="DIR",
        help="run directory (required): manifest.json, metrics.jsonl, checkpoints/, summary.json",
    )
    pre.add_argument(
        "--distributed",
        action="store_true",
        help="initialize jax.distributed first (multi-host; Slurm, Open MPI and "
        "TPU pods are detected without the three flags below)",
    )
    pre.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="with --distributed: the coordinator's address",
    )
    pre.add_argument(
        "--num-processes",
        type=int,
        default=None,
        metavar="N",
        help="with --distributed: the number of processes",
    )
    pre.add_argument(
        "--process-id",
        type=int,
        default=None,
        metavar="I",
        help="with --distributed: this process's id",
    )
    return pre


def expand_aliases(argv: list[str]) -> list[str]:
    """``argv`` with the :data:`ALIASES` shorthands (``--warmup-steps 5``,
    ``--warmup-steps=5``) written as the override flags they stand for."""
    out = []
    for token in argv:
        flag, sep, value = token.partition("=")
        out.append(ALIASES[flag] + sep + value if flag in ALIASES else token)
    return out


def build_config(preset: str, smoke: bool, overrides: list[str]) -> Any:
    """The :class:`~experiments.configs.TrainConfig` of ``preset`` (its smoke variant) with
    the tyro ``overrides`` (shorthands expanded) applied.

    Raises:
      SystemExit: an unknown preset (the message lists the presets) or an override tyro
        rejects, including a config the overrides make invalid (tyro's message, which
        names the fields and flags).
    """
    import tyro

    from experiments.configs import PRESETS, TrainConfig, get_config

    if preset not in PRESETS:
        hint = " (--smoke is a flag: --preset tiny --smoke)" if preset == "smoke" else ""
        raise SystemExit(
            f"experiments.train: unknown preset {preset!r}{hint}; presets: " + ", ".join(PRESETS)
        )
    return tyro.cli(
        TrainConfig,
        default=get_config(preset, smoke=smoke),
        args=expand_aliases(overrides),
        prog=PROG,
        description="Overrides of the preset's fields (see also the entry "
        "flags: python -m experiments.train --help).",
    )


def initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """``jax.distributed.initialize`` (before any other jax call of the process).

    With no arguments jax detects the cluster (Slurm, Open MPI, TPU pods). CPU collectives
    across processes use gloo (``jax_cpu_collectives_implementation``, unless set to
    something else already).
    """
    import jax

    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Any]:
    """``(launch flags, TrainConfig)`` of a command line (default ``sys.argv[1:]``); with
    ``--distributed``, jax's distributed runtime is initialized first. ``-h/--help`` prints
    the entry flags and presets, then the overrides, and exits.

    Raises:
      SystemExit: ``--help``, an unknown preset, a coordinator flag without
        ``--distributed``, a missing ``--workdir``, or an override tyro rejects (with its
        message).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        launch_parser(add_help=True).print_help()
        print()
    known, rest = launch_parser().parse_known_args(argv)
    given = [
        f for f in ("coordinator", "num_processes", "process_id") if getattr(known, f) is not None
    ]
    if given and not known.distributed:
        raise SystemExit(f"experiments.train: --{given[0].replace('_', '-')} needs --distributed")
    if known.distributed:
        initialize_distributed(known.coordinator, known.num_processes, known.process_id)
    cfg = build_config(known.preset, known.smoke, rest)
    if known.workdir is None:
        raise SystemExit("experiments.train: --workdir DIR is required")
    return known, cfg
