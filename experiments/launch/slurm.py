"""Slurm launcher: a :class:`~experiments.launch.common.JobSpec` as submitit executor
parameters, as an equivalent standalone ``sbatch`` script, and its submission.

**One task per node.** The job asks for ``--ntasks-per-node=1``: JAX runs one process per
host that drives all of that host's accelerators (``jax.local_devices()``), and the global
mesh spans the processes after ``jax.distributed.initialize()``. Intra-node collectives then
stay inside one process's NCCL communicators (NVLink), the data loader reads one slice per
host, and there are N processes to coordinate instead of N x G. ``initialize()`` finds the
coordinator, process count and id in the ``SLURM_*`` variables of the ``srun`` step; because
its Slurm auto-detection would also pin each process to the single GPU numbered
``SLURM_LOCALID``, GPU jobs export ``JAX_LOCAL_DEVICE_IDS=0,...,G-1`` (see
:func:`~experiments.launch.common.make_job`).

**submitit** (``pip install -e '.[launch]'``) pickles :func:`run_command` and runs it once per
task under ``srun``; the parameters are those of ``submitit.AutoExecutor.update_parameters``
(:func:`executor_parameters`). Users without submitit submit the script from
:func:`render_sbatch` (``mkdir -p LOG_DIR && sbatch job.sh``), which runs the same command
under ``srun``. A job that hits its time limit is not requeued; submitting the same command
again resumes from the run directory's last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
from collections.abc import Sequence

from experiments.launch.common import JobSpec, LaunchConfigError, env_lines, render_argv, train_argv

__all__ = [
    "CHECKOUT_LINES",
    "CPUS_PER_GPU",
    "SlurmOptions",
    "check_options",
    "executor_parameters",
    "parse_time",
    "render_dry_run",
    "render_sbatch",
    "run_command",
    "sbatch_directives",
    "submit",
]

#: Default ``--cpus-per-task`` per GPU of the node (data loading, host-side compilation).
CPUS_PER_GPU = 8

_NAME = re.compile(r"[A-Za-z0-9_.,:+@-]+")
_TIME = re.compile(r"(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)")


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    """Scheduler settings of a Slurm job.

    Attributes:
      partition: ``--partition`` (``None``: the cluster's default).
      account: ``--account`` to charge.
      qos: ``--qos``.
      time: wall-clock limit, ``HH:MM:SS`` or ``D-HH:MM:SS``.
      cpus_per_task: CPUs of the one task per node (``None``: ``CPUS_PER_GPU`` per GPU).
      log_dir: submitit folder / sbatch output directory (``None``: ``<workdir>/slurm``).
      sbatch_args: extra ``(key, value)`` directives (``#SBATCH --key=value``), e.g.
        ``('constraint', 'h100')``; submitit's ``slurm_additional_parameters``.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "04:00:00"
    cpus_per_task: int | None = None
    log_dir: str | None = None
    sbatch_args: tuple[tuple[str, str], ...] = ()


def parse_time(text: str) -> int:
    """Minutes (rounded up) of a Slurm time limit ``HH:MM:SS`` or ``D-HH:MM:SS``.

    Raises:
      LaunchConfigError: naming ``--time``.
    """
    m = _TIME.fullmatch(text)
    if not m:
        raise LaunchConfigError(f"--time {text!r}: expected HH:MM:SS or D-HH:MM:SS")
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total == 0:
        raise LaunchConfigError(f"--time {text!r}: expected a positive duration")
    return math.ceil(total / 60)


def check_options(job: JobSpec, opts: SlurmOptions) -> None:
    """Validates ``opts`` for ``job``.

    Raises:
      LaunchConfigError: naming the flag (``--tpu``, ``--partition``, ``--account``,
        ``--qos``, ``--time``, ``--cpus-per-task``, ``--log-dir``, ``--sbatch-arg``).
    """
    if job.tpu is not None:
        raise LaunchConfigError(
            "--tpu: Slurm jobs run on GPU nodes; launch TPU slices with the skypilot backend"
        )
    for flag, value in (
        ("--partition", opts.partition),
        ("--account", opts.account),
        ("--qos", opts.qos),
    ):
        if value is not None and not _NAME.fullmatch(value):
            raise LaunchConfigError(
                f"{flag} {value!r}: expected a Slurm name (letters, digits, '_.,:+@-')"
            )
    parse_time(opts.time)
    if opts.cpus_per_task is not None and opts.cpus_per_task < 1:
        raise LaunchConfigError(f"--cpus-per-task {opts.cpus_per_task}: expected an int >= 1")
    if opts.log_dir is not None and not opts.log_dir.startswith("/"):
        raise LaunchConfigError(f"--log-dir {opts.log_dir!r}: expected an absolute path")
    for key, value in opts.sbatch_args:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", key) or not _NAME.fullmatch(value):
            raise LaunchConfigError(
                f"--sbatch-arg {key}={value}: expected KEY=VALUE with a "
                "lower-case sbatch option name and a value without spaces"
            )


def _log_dir(job: JobSpec, opts: SlurmOptions) -> str:
    return opts.log_dir or f"{job.workdir}/slurm"


def _cpus(job: JobSpec, opts: SlurmOptions) -> int:
    return opts.cpus_per_task or CPUS_PER_GPU * (job.gpus_per_node or 1)


#: The first lines of every job on its node: the checkout and the virtual environment come
#: from the job's environment (``OPTZOO_ROOT``, default the directory ``sbatch`` was run in;
#: ``OPTZOO_VENV``, default ``$OPTZOO_ROOT/.venv``, activated if it exists), not from the
#: machine that rendered the job.
CHECKOUT_LINES = (
    'export OPTZOO_ROOT="${OPTZOO_ROOT:-$SLURM_SUBMIT_DIR}"',
    'cd "$OPTZOO_ROOT"',
    'OPTZOO_VENV="${OPTZOO_VENV:-$OPTZOO_ROOT/.venv}"',
    'if [ -f "$OPTZOO_VENV/bin/activate" ]; then . "$OPTZOO_VENV/bin/activate"; fi',
)


def _setup_lines(job: JobSpec) -> list[str]:
    return [*CHECKOUT_LINES, *job.setup, *env_lines(job)]


def executor_parameters(job: JobSpec, opts: SlurmOptions) -> dict:
    """Keyword arguments of ``submitit.AutoExecutor.update_parameters`` for ``job``
    (unset options left out)."""
    check_options(job, opts)
    params = {
        "name": job.name,
        "nodes": job.nodes,
        "tasks_per_node": 1,
        "gpus_per_node": job.gpus_per_node,
        "cpus_per_task": _cpus(job, opts),
        "timeout_min": parse_time(opts.time),
        "slurm_partition": opts.partition,
        "slurm_account": opts.account,
        "slurm_qos": opts.qos,
        "slurm_setup": _setup_lines(job),
        "slurm_additional_parameters": dict(opts.sbatch_args) or None,
    }
    return {k: v for k, v in params.items() if v is not None}


def sbatch_directives(job: JobSpec, opts: SlurmOptions) -> list[tuple[str, str]]:
    """The ``(option, value)`` pairs of the script's ``#SBATCH --option=value`` lines."""
    check_options(job, opts)
    pairs = [
        ("job-name", job.name),
        ("nodes", str(job.nodes)),
        ("ntasks-per-node", "1"),
        ("gpus-per-node", str(job.gpus_per_node)),
        ("cpus-per-task", str(_cpus(job, opts))),
        ("time", opts.time),
    ]
    pairs += [
        (k, v)
        for k, v in (("partition", opts.partition), ("account", opts.account), ("qos", opts.qos))
        if v is not None
    ]
    pairs += [("output", f"{_log_dir(job, opts)}/%j.out"), *opts.sbatch_args]
    return pairs


def render_sbatch(job: JobSpec, opts: SlurmOptions) -> str:
    """A standalone sbatch script equivalent to the submitit submission."""
    directives = "\n".join(f"#SBATCH --{k}={v}" for k, v in sbatch_directives(job, opts))
    setup = "\n".join(_setup_lines(job))
    srun = "srun --ntasks-per-node=1 --kill-on-bad-exit=1 " + render_argv(train_argv(job))
    return (
        f"#!/bin/bash\n"
        f"# {job.name}: experiments.train --preset {job.preset} on {job.nodes} node(s) x "
        f"{job.gpus_per_node} GPU(s), one JAX process per node.\n"
        f"# Submit from the checkout (or set OPTZOO_ROOT, and OPTZOO_VENV unless it is\n"
        f"# $OPTZOO_ROOT/.venv): mkdir -p {_log_dir(job, opts)} && sbatch THIS_FILE\n"
        f"{directives}\n"
        f"set -eo pipefail\n"
        f"{setup}\n"
        f"{srun}\n"
    )


def render_dry_run(job: JobSpec, opts: SlurmOptions) -> str:
    """What ``--dry-run`` prints: the executor parameters, the per-node command and the
    equivalent sbatch script."""
    params = json.dumps(executor_parameters(job, opts), indent=2)
    return (
        f"# submitit.AutoExecutor(folder={_log_dir(job, opts)!r}, cluster='slurm')"
        f".update_parameters(**PARAMS)\n# PARAMS =\n{params}\n"
        f"# then executor.submit(experiments.launch.slurm.run_command, ARGV) from "
        f"$OPTZOO_ROOT; each task runs:\n"
        f"#   {render_argv(train_argv(job))}\n"
        f"# ---- equivalent standalone sbatch script ----\n"
        f"{render_sbatch(job, opts)}"
    )


def run_command(argv: Sequence[str], cwd: str | None = None) -> None:
    """Runs ``argv`` in ``cwd`` (what each submitit task executes; output streams to the
    task's log). ``cwd=None``: the job's checkout, ``$OPTZOO_ROOT`` or else
    ``$SLURM_SUBMIT_DIR`` of the node's environment (else the current directory).

    Raises:
      subprocess.CalledProcessError: when the command fails (the task then fails).
    """
    if cwd is None:
        cwd = os.environ.get("OPTZOO_ROOT") or os.environ.get("SLURM_SUBMIT_DIR") or None
    subprocess.run(list(argv), cwd=cwd, check=True)


def submit(job: JobSpec, opts: SlurmOptions) -> str:
    """Submits ``job`` with submitit and returns the Slurm job id. The job's own Python
    (``job.python``, found after :data:`CHECKOUT_LINES` activated the venv) runs submitit's
    worker too, so no path of the submitting machine is baked in.

    Raises:
      RuntimeError: if submitit is not installed.
    """
    params = executor_parameters(job, opts)
    try:
        import submitit
    except ImportError:
        raise RuntimeError(
            "submitit is not installed: pip install -e '.[launch]', or submit "
            "the script printed by --dry-run with sbatch"
        ) from None
    executor = submitit.AutoExecutor(
        folder=_log_dir(job, opts), cluster="slurm", slurm_python=job.python
    )
    executor.update_parameters(**params)
    submitted = executor.submit(run_command, train_argv(job))
    return str(submitted.job_id)
