"""What the Slurm and SkyPilot launchers share: the job description, its validation, and
the ``experiments.train`` command line it runs on every node.

A :class:`JobSpec` is built (and validated) once by :func:`make_job`; the backends
(:mod:`experiments.launch.slurm`, :mod:`experiments.launch.skypilot`) only render it. Every
check raises :class:`LaunchConfigError` naming the command-line flag at fault, before anything
is written or submitted:

* ``--preset`` must be a preset of :func:`experiments.configs.get_config`, and the extra train
  overrides (after ``--``) must parse with the train CLI's own parser (tyro on
  :class:`~experiments.configs.TrainConfig`), so a typo fails on the login node rather than
  after the job waited in the queue;
* ``--nodes >= 1``; exactly one of ``--gpus-per-node G >= 1`` and ``--tpu TYPE``;
* ``--workdir`` is an absolute POSIX path of plain characters (letters, digits, ``._/@+=:,-``):
  every node opens the same path, so a relative path (resolved against each node's own
  current directory) or ``~`` is refused, and so are bucket URIs (``gs://...``): the train
  loop writes with local file APIs, so a bucket must be mounted (SkyPilot ``--mount``) and its
  mount path given. Multi-host jobs must not use ``/tmp`` (node-local on clusters: each host
  would checkpoint into its own disk);
* when the overrides set ``--sharding.dp/fsdp/tp``, ``dp * fsdp * tp`` must equal the job's
  device count (``dp = -1`` takes the rest: ``fsdp * tp`` must divide it).

Nothing here is ever ``eval``-ed or ``exec``-ed; shell text is built with :func:`shlex.quote`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import shlex
from pathlib import Path

from experiments.cli import LAUNCH_FLAGS, build_config

__all__ = [
    "DEFAULT_PORT",
    "env_lines",
    "GPU_XLA_FLAGS",
    "JobSpec",
    "LaunchConfigError",
    "RESERVED_TRAIN_FLAGS",
    "REPO_ROOT",
    "ShellExpr",
    "TpuSlice",
    "check_sharding",
    "check_workdir",
    "make_job",
    "parse_tpu",
    "parse_train_config",
    "render_argv",
    "train_argv",
]

#: The repository checkout this package lives in (what SkyPilot syncs; where Slurm jobs cd).
REPO_ROOT = Path(__file__).resolve().parents[2]

#: Coordinator port on SkyPilot GPU clusters (any free TCP port on the head node works).
DEFAULT_PORT = 8476

#: XLA flags for GPU jobs: the latency-hiding scheduler overlaps collectives with compute
#: (JAX "GPU performance tips"; NVIDIA JAX-Toolbox sets it by default in its images).
GPU_XLA_FLAGS = "--xla_gpu_enable_latency_hiding_scheduler=true"

#: Flags of ``experiments.train`` that the launcher sets itself (refused after ``--``).
RESERVED_TRAIN_FLAGS = LAUNCH_FLAGS

_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/@+=:,-]*")
_SHARDING_FLAG = re.compile(r"--sharding[.](dp|fsdp|tp)(?:=(.*))?")
_TPU_NAME = re.compile(r"(?:tpu-)?(v2|v3|v4|v5p|v5e|v5litepod|v6e)-([0-9]+)")


class LaunchConfigError(ValueError):
    """A launch flag (named in the message) has a value the job cannot run with."""


class ShellExpr(str):
    """A command-line token that is shell text (expanded on the node, e.g.
    ``"$SKYPILOT_NODE_RANK"``), written as is instead of being quoted."""


# ----------------------------------------------------------------------------- TPUs
@dataclasses.dataclass(frozen=True)
class TpuSlice:
    """A Cloud TPU slice.

    Attributes:
      accelerator: SkyPilot's accelerator name (``tpu-v5litepod-16``).
      devices: JAX devices in the slice (``jax.device_count()`` there).
      multi_host: whether the slice spans several TPU VM hosts (a pod slice).
    """

    accelerator: str
    devices: int
    multi_host: bool


def parse_tpu(name: str) -> TpuSlice:
    """The slice named ``name`` (``v5e-16``, ``tpu-v5litepod-16``, ``v4-32``, ``v6e-8``...).

    The number after the generation counts TensorCores for v2, v3, v4 and v5p (two per chip;
    v2/v3 expose each core as a JAX device, v4/v5p one device per chip, "megacore") and chips
    for v5e (GCP's ``v5litepod``) and v6e (one core per chip). Sizes above 8 are multi-host
    pod slices (Cloud TPU "TPU versions" pages).

    Raises:
      LaunchConfigError: naming ``--tpu`` for an unknown generation or a bad size.
    """
    m = _TPU_NAME.fullmatch(name.strip().lower())
    if not m:
        raise LaunchConfigError(
            f"--tpu {name!r}: expected a Cloud TPU type such as v5e-16, "
            "v4-32, v5p-8, v6e-8, v3-8 (optionally prefixed 'tpu-')"
        )
    gen, size = m.group(1), int(m.group(2))
    gen = "v5e" if gen == "v5litepod" else gen
    per_chip = 2 if gen in ("v4", "v5p") else 1
    if size < 1 or size % per_chip or (gen in ("v2", "v3") and size % 8):
        raise LaunchConfigError(f"--tpu {name!r}: {size} is not a valid {gen} slice size")
    stem = "v5litepod" if gen == "v5e" else gen
    return TpuSlice(accelerator=f"tpu-{stem}-{size}", devices=size // per_chip, multi_host=size > 8)


# ----------------------------------------------------------------------------- the job
@dataclasses.dataclass(frozen=True)
class JobSpec:
    """A validated multi-host training job (build it with :func:`make_job`).

    Attributes:
      preset: ``experiments.configs`` preset name.
      workdir: the run directory (absolute, seen by every node).
      smoke: run the preset's smoke variant.
      nodes: hosts (one JAX process each).
      gpus_per_node: GPUs per host (``None`` for TPU jobs).
      tpu: the TPU slice (``None`` for GPU jobs).
      overrides: extra ``experiments.train`` flags (tyro overrides), in order.
      env: ``(NAME, value)`` environment variables set before the train command.
      setup: shell lines run before training (module loads, venv activation...).
      name: job / cluster name.
      python: the Python executable on the nodes.
      port: coordinator port (SkyPilot GPU clusters).
    """

    preset: str
    workdir: str
    smoke: bool = False
    nodes: int = 1
    gpus_per_node: int | None = None
    tpu: TpuSlice | None = None
    overrides: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    setup: tuple[str, ...] = ()
    name: str = "optzoo"
    python: str = "python"
    port: int = DEFAULT_PORT

    @property
    def devices(self) -> int:
        """Accelerators in the whole job."""
        return self.tpu.devices if self.tpu else self.nodes * (self.gpus_per_node or 0)

    @property
    def multi_host(self) -> bool:
        return self.tpu.multi_host if self.tpu else self.nodes > 1


def check_workdir(workdir: str, multi_host: bool) -> str:
    """``workdir`` if every node can open it (see the module docstring), else raises
    :class:`LaunchConfigError` naming ``--workdir``."""
    if "://" in workdir:
        raise LaunchConfigError(
            f"--workdir {workdir!r} is a URI; the train loop writes with local file APIs: "
            "mount the bucket (skypilot --mount /ckpt=gs://bucket) and pass a path under the "
            "mount point, or use a shared filesystem path"
        )
    if not workdir.startswith("/"):
        raise LaunchConfigError(
            f"--workdir {workdir!r} must be an absolute path: every node opens it, and a "
            "relative path would resolve against each node's own current directory"
        )
    if not _SAFE_PATH.fullmatch(workdir):
        raise LaunchConfigError(
            f"--workdir {workdir!r} contains characters other than letters, digits and "
            "'._/@+=:,-' (it is written into #SBATCH lines and YAML)"
        )
    if multi_host and (workdir == "/tmp" or workdir.startswith("/tmp/")):
        raise LaunchConfigError(
            f"--workdir {workdir!r} is node-local on clusters; a multi-host job needs a path "
            "every host sees (shared filesystem or mounted bucket) for its checkpoints"
        )
    return workdir.rstrip("/") or "/"


def _sharding_overrides(overrides: tuple[str, ...]) -> dict[str, int]:
    """``{'dp': 2, ...}`` for the ``--sharding.dp/fsdp/tp`` flags among ``overrides``."""
    out = {}
    for i, token in enumerate(overrides):
        m = _SHARDING_FLAG.fullmatch(token)
        if not m:
            continue
        axis, value = m.group(1), m.group(2)
        if value is None:
            value = overrides[i + 1] if i + 1 < len(overrides) else ""
        try:
            out[axis] = int(value)
        except ValueError:
            raise LaunchConfigError(f"--sharding.{axis} {value!r}: expected an integer") from None
    return out


def check_sharding(
    overrides: tuple[str, ...], devices: int, defaults: dict[str, int] | None = None
) -> None:
    """Checks the user's ``--sharding.dp/fsdp/tp`` overrides against ``devices``.

    Nothing is checked when none is set. Unset axes take ``defaults`` (the preset's
    ``ShardingConfig``; ``dp=-1, fsdp=1, tp=1`` when ``None``).

    Raises:
      LaunchConfigError: naming the ``--sharding.*`` flags and the device count when the
        mesh does not cover the job's devices exactly.
    """
    given = _sharding_overrides(overrides)
    if not given:
        return
    axes = {"dp": -1, "fsdp": 1, "tp": 1, **(defaults or {}), **given}
    for axis, size in axes.items():
        if size < 1 and not (axis == "dp" and size == -1):
            raise LaunchConfigError(
                f"--sharding.{axis} {size}: expected an int >= 1"
                + (" or -1 (the remaining devices)" if axis == "dp" else "")
            )
    model = axes["fsdp"] * axes["tp"]
    shown = " * ".join(f"--sharding.{a} {axes[a]}" for a in ("dp", "fsdp", "tp"))
    if axes["dp"] == -1:
        if devices % model:
            raise LaunchConfigError(
                f"{shown}: fsdp * tp = {model} does not divide the job's {devices} devices"
            )
    elif axes["dp"] * model != devices:
        raise LaunchConfigError(
            f"{shown} = {axes['dp'] * model} devices, but the job has "
            f"{devices} (nodes x devices per node); use --sharding.dp -1 "
            "to take the remaining devices"
        )


def parse_train_config(preset: str, smoke: bool, overrides: tuple[str, ...]):
    """The :class:`~experiments.configs.TrainConfig` that ``experiments.train`` will build:
    ``get_config(preset, smoke)`` with ``overrides`` parsed by tyro
    (:func:`experiments.cli.build_config`, as its ``main`` does; shorthands such as
    ``--warmup-steps`` included).

    Raises:
      LaunchConfigError: naming ``--preset`` or the train overrides (with tyro's message).
    """
    from experiments.configs import get_config

    try:
        get_config(preset, smoke=smoke)
    except ValueError as e:
        raise LaunchConfigError(f"--preset: {e}") from None
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
            return build_config(preset, smoke, list(overrides))
    except SystemExit:
        raise LaunchConfigError(
            f"train overrides {' '.join(overrides)!r} are not valid for --preset {preset}:\n"
            + err.getvalue().strip()
        ) from None
    except (TypeError, ValueError) as e:
        raise LaunchConfigError(f"train overrides {' '.join(overrides)!r}: {e}") from None


def _check_overrides(overrides: tuple[str, ...]) -> None:
    for token in overrides:
        flag = token.split("=", 1)[0]
        if flag in RESERVED_TRAIN_FLAGS:
            raise LaunchConfigError(
                f"train override {flag} is set by the launcher; use the launcher's own "
                "--preset/--smoke/--workdir flags (before '--')"
            )


def _check_positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise LaunchConfigError(f"{flag} {value}: expected an int >= 1")


def make_job(
    preset: str,
    workdir: str,
    *,
    smoke: bool = False,
    nodes: int = 1,
    gpus_per_node: int | None = None,
    tpu: str | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    env: tuple[tuple[str, str], ...] = (),
    setup: tuple[str, ...] = (),
    name: str | None = None,
    python: str = "python",
    port: int = DEFAULT_PORT,
) -> JobSpec:
    """A validated :class:`JobSpec` (see the module docstring for the checks).

    GPU jobs get ``XLA_FLAGS`` (:data:`GPU_XLA_FLAGS`) and ``JAX_LOCAL_DEVICE_IDS`` listing
    all local GPUs in their environment unless ``env`` sets them: with one process per node,
    ``jax.distributed.initialize()``'s Slurm auto-detection would otherwise restrict each
    process to the GPU numbered ``SLURM_LOCALID`` (= 0), i.e. one GPU per node.

    Raises:
      LaunchConfigError: naming the flag at fault.
    """
    overrides = tuple(overrides)
    _check_positive("--nodes", nodes)
    _check_positive("--gpus-per-node", gpus_per_node)
    if gpus_per_node is not None and tpu is not None:
        raise LaunchConfigError(
            "--gpus-per-node and --tpu are exclusive: a job runs on GPU nodes or on one TPU slice"
        )
    if gpus_per_node is None and tpu is None:
        raise LaunchConfigError("give --gpus-per-node G (GPU nodes) or --tpu TYPE (TPU slice)")
    slice_ = parse_tpu(tpu) if tpu is not None else None
    if slice_ is not None and nodes != 1:
        raise LaunchConfigError(
            f"--nodes {nodes} with --tpu: a TPU slice is one node (its "
            "hosts are started together); multi-slice jobs are not "
            "supported"
        )
    if not 0 < port < 65536:
        raise LaunchConfigError(f"--port {port}: expected a TCP port in 1..65535")
    for key, _ in env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise LaunchConfigError(
                f"--env {key!r}: expected NAME=VALUE with a shell variable name"
            )
    _check_overrides(overrides)
    multi_host = slice_.multi_host if slice_ is not None else nodes > 1
    job = JobSpec(
        preset=preset,
        workdir=check_workdir(workdir, multi_host),
        smoke=smoke,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        tpu=slice_,
        overrides=overrides,
        env=_with_defaults(env, gpus_per_node),
        setup=tuple(setup),
        name=name or f"optzoo-{preset}",
        python=python,
        port=port,
    )
    cfg = parse_train_config(preset, smoke, overrides)
    sharding = getattr(cfg, "sharding", None)
    defaults = (
        {a: getattr(sharding, a) for a in ("dp", "fsdp", "tp") if hasattr(sharding, a)}
        if sharding is not None
        else None
    )
    check_sharding(overrides, job.devices, defaults)
    _check_batch(cfg.data.batch_size, job, getattr(sharding, "tp", 1))
    return job


def _check_batch(batch_size: int, job: JobSpec, tp: int) -> None:
    """The global batch is split over the ``dp x fsdp = devices / tp`` batch shards and over
    the processes (one per GPU node); refuse what ``experiments.train`` would refuse."""
    shards = job.devices // tp if tp > 0 and job.devices % tp == 0 else job.devices
    processes = job.nodes if job.tpu is None else 1
    for what, n in (("batch shards (devices / tp)", shards), ("processes (--nodes)", processes)):
        if batch_size % n:
            raise LaunchConfigError(
                f"--data.batch-size {batch_size} is not divisible by the job's {n} {what}"
            )


def _with_defaults(
    env: tuple[tuple[str, str], ...], gpus_per_node: int | None
) -> tuple[tuple[str, str], ...]:
    if gpus_per_node is None:
        return tuple(env)
    given = {k for k, _ in env}
    extra = [
        ("XLA_FLAGS", GPU_XLA_FLAGS),
        ("JAX_LOCAL_DEVICE_IDS", ",".join(str(i) for i in range(gpus_per_node))),
    ]
    return tuple(env) + tuple((k, v) for k, v in extra if k not in given)


# ----------------------------------------------------------------------------- commands
def train_argv(job: JobSpec, distributed: tuple[str, ...] = ()) -> list[str]:
    """``[python, -m, experiments.train, --preset, ..., --distributed, *distributed,
    *overrides]``: the command every node runs (``distributed`` holds the coordinator flags
    where the cluster is not auto-detected; tokens may be :class:`ShellExpr`)."""
    argv = [job.python, "-m", "experiments.train", "--preset", job.preset]
    if job.smoke:
        argv.append("--smoke")
    argv += ["--workdir", job.workdir, "--distributed", *distributed, *job.overrides]
    return argv


def render_argv(argv: list[str]) -> str:
    """``argv`` as one shell command line: tokens quoted with :func:`shlex.quote`, except
    :class:`ShellExpr` tokens, written as is."""
    return " ".join(t if isinstance(t, ShellExpr) else shlex.quote(t) for t in argv)


def env_lines(job: JobSpec) -> list[str]:
    """``export NAME=value`` lines for ``job.env`` (values quoted)."""
    return [f"export {k}={shlex.quote(v)}" for k, v in job.env]
