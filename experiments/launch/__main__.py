"""``python -m experiments.launch {slurm,skypilot} --preset NAME --workdir DIR [options]
[--dry-run] [-- extra train overrides]``.

Everything after ``--`` is passed to ``experiments.train`` unchanged (tyro overrides such as
``--steps 1000 --optimizer.name muon --sharding.fsdp 8``) and is parsed here first, so a bad
override fails before submission. ``--dry-run`` prints what would be submitted (Slurm: the
submitit executor parameters and an equivalent sbatch script; SkyPilot: the task YAML) and
submits nothing; without it, Slurm jobs go through submitit (``pip install -e '.[launch]'``)
and SkyPilot tasks through ``sky launch``.
"""

from __future__ import annotations

import argparse
import sys

from experiments.launch import skypilot, slurm
from experiments.launch.common import DEFAULT_PORT, LaunchConfigError, make_job

__all__ = ["build_parser", "launch", "main"]


def _pair(flag: str):
    def parse(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: expected KEY=VALUE")
        return key, value

    return parse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", required=True, help="experiments.configs preset name")
    p.add_argument(
        "--workdir", required=True, help="run directory: an absolute path every node sees"
    )
    p.add_argument("--smoke", action="store_true", help="the preset's smoke variant")
    p.add_argument("--nodes", type=int, default=1, help="hosts, one JAX process each")
    p.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per host")
    p.add_argument("--tpu", default=None, help="TPU slice type, e.g. v5e-16 (skypilot)")
    p.add_argument(
        "--env",
        type=_pair("--env"),
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment variable on every node",
    )
    p.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="LINE",
        help="shell line run before training (module load, venv activation)",
    )
    p.add_argument("--name", default=None, help="job name (default optzoo-PRESET)")
    p.add_argument(
        "--python",
        default="python",
        help="Python on the nodes (default: python of the job's PATH; Slurm jobs "
        "first activate $OPTZOO_VENV, default $OPTZOO_ROOT/.venv)",
    )
    p.add_argument("--dry-run", action="store_true", help="print, submit nothing")


def build_parser() -> argparse.ArgumentParser:
    """The launcher's argument parser (sub-commands ``slurm`` and ``skypilot``)."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.launch",
        description="Launch experiments.train on a Slurm cluster or with SkyPilot. Extra "
        "train overrides go after '--'.",
    )
    sub = parser.add_subparsers(dest="backend", required=True)
    s = sub.add_parser("slurm", help="Slurm via submitit (or a printed sbatch script)")
    _common(s)
    s.add_argument("--partition")
    s.add_argument("--account")
    s.add_argument("--qos")
    s.add_argument("--time", default="04:00:00", help="HH:MM:SS or D-HH:MM:SS")
    s.add_argument(
        "--cpus-per-task", type=int, default=None, help=f"default {slurm.CPUS_PER_GPU} per GPU"
    )
    s.add_argument("--log-dir", default=None, help="default WORKDIR/slurm")
    s.add_argument(
        "--sbatch-arg",
        type=_pair("--sbatch-arg"),
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra #SBATCH --KEY=VALUE",
    )
    s.add_argument("--sbatch-out", default=None, help="also write the sbatch script here")
    k = sub.add_parser("skypilot", help="SkyPilot task YAML (GPU clusters, TPU pod slices)")
    _common(k)
    k.add_argument("--gpu", default="H100", help="GPU type (sky show-gpus)")
    k.add_argument("--cloud", default=None)
    k.add_argument(
        "--mount",
        type=_pair("--mount"),
        action="append",
        default=[],
        metavar="PATH=BUCKET_URI",
        help="bucket mounted on every node",
    )
    k.add_argument("--jax-extra", default=None, help="jax[...] extra (cuda12 / tpu)")
    k.add_argument("--runtime-version", default=None, help="TPU VM runtime version")
    k.add_argument("--port", type=int, default=DEFAULT_PORT, help="coordinator port (GPU)")
    k.add_argument("--cluster", default=None, help="sky launch -c NAME")
    k.add_argument("--out", default=None, help="write the YAML here (default: stdout)")
    return parser


def _job(args: argparse.Namespace, overrides: list[str]):
    return make_job(
        args.preset,
        args.workdir,
        smoke=args.smoke,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        tpu=args.tpu,
        overrides=overrides,
        env=tuple(args.env),
        setup=tuple(args.setup),
        name=args.name,
        python=args.python,
        port=getattr(args, "port", DEFAULT_PORT),
    )


def _slurm(args: argparse.Namespace, overrides: list[str]) -> str:
    if args.tpu is not None:
        raise LaunchConfigError(
            "--tpu: Slurm jobs run on GPU nodes; launch TPU slices with the skypilot backend"
        )
    job = _job(args, overrides)
    opts = slurm.SlurmOptions(
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        time=args.time,
        cpus_per_task=args.cpus_per_task,
        log_dir=args.log_dir,
        sbatch_args=tuple(args.sbatch_arg),
    )
    if args.sbatch_out:
        with open(args.sbatch_out, "w") as f:
            f.write(slurm.render_sbatch(job, opts))
    if args.dry_run:
        return slurm.render_dry_run(job, opts)
    return f"submitted Slurm job {slurm.submit(job, opts)}\n"


def _skypilot(args: argparse.Namespace, overrides: list[str]) -> str:
    job = _job(args, overrides)
    opts = skypilot.SkyPilotOptions(
        gpu=args.gpu,
        cloud=args.cloud,
        mounts=tuple(args.mount),
        jax_extra=args.jax_extra,
        runtime_version=args.runtime_version,
        cluster=args.cluster,
    )
    if not args.dry_run:
        path = skypilot.launch(job, opts, args.out)
        return f"launched {path} on cluster {skypilot.cluster_name(job, opts)}\n"
    text = skypilot.render_task_yaml(job, opts)
    if args.out is None:
        return text
    with open(args.out, "w") as f:
        f.write(text)
    return (
        f"wrote {args.out}; launch with: sky launch -c {skypilot.cluster_name(job, opts)} "
        f"{args.out}\n"
    )


def launch(argv: list[str]) -> str:
    """Parses ``argv`` (launcher flags, then ``--`` and train overrides), validates, renders
    and (without ``--dry-run``) submits; returns the text to print.

    Raises:
      LaunchConfigError: naming the flag at fault.
      SystemExit: on argparse usage errors.
    """
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    own, overrides = argv[:split], argv[split + 1 :]
    args = build_parser().parse_args(own)
    return (_slurm if args.backend == "slurm" else _skypilot)(args, overrides)


def main(argv: list[str] | None = None) -> int:
    """CLI entry: prints :func:`launch`'s output; a configuration error prints
    ``error: ...`` to stderr and returns 2."""
    try:
        sys.stdout.write(launch(sys.argv[1:] if argv is None else argv))
    except (LaunchConfigError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
