"""Tests of :mod:`experiments.launch`: Slurm (submitit parameters, sbatch script) and SkyPilot
(GPU cluster, TPU pod slice) dry runs, the rendered train command round-tripping through the
train CLI's own parser, submission wiring with stand-ins for submitit and ``sky``, and the
configuration errors, each naming its flag.

The rendered shell (sbatch script, SkyPilot ``setup``/``run`` blocks) is executed by ``bash``
with ``srun`` / ``python`` / ``pip`` replaced by shell functions that print their arguments,
so the test sees exactly the argv a node would run after quoting and variable expansion.
Nothing here needs submitit, SkyPilot or a cluster; the whole file takes a few seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import types

import pytest

from experiments import cli
from experiments.configs import TrainConfig, get_config
from experiments.launch import (
    GPU_XLA_FLAGS,
    REPO_ROOT,
    LaunchConfigError,
    TpuSlice,
    check_sharding,
    make_job,
    parse_tpu,
    slurm,
)
from experiments.launch.__main__ import launch, main

yaml = pytest.importorskip("yaml")

WORKDIR = "/shared/runs/gpt2"
OVERRIDES = [
    "--steps",
    "1000",
    "--optimizer.name",
    "muon",
    "--data.shards",
    "/shared/fine web/train_*.bin",
]  # a space and a glob: quoting must survive
SLURM_ARGS = [
    "slurm",
    "--preset",
    "gpt2_small",
    "--workdir",
    WORKDIR,
    "--nodes",
    "2",
    "--gpus-per-node",
    "8",
    "--partition",
    "gpu",
    "--account",
    "proj",
    "--qos",
    "high",
    "--time",
    "1-02:00:30",
    "--python",
    "python",
    "--setup",
    "true",
]


def parse_like_train(argv: list[str]) -> tuple[argparse.Namespace, TrainConfig]:
    """Parses a train argv (after ``python -m experiments.train``) with the train CLI's own
    parsers (``experiments.cli``: the launch flags, then tyro on :class:`TrainConfig` with the
    preset as default), without initializing jax's distributed runtime."""
    import tyro

    known, rest = cli.launch_parser().parse_known_args(argv)
    base = get_config(known.preset, smoke=known.smoke)
    return known, tyro.cli(TrainConfig, default=base, args=rest)


def run_bash(script: str, stubs: str, env: dict[str, str] | None = None) -> list[str]:
    """Runs ``script`` in bash after the function definitions ``stubs``; returns the
    NUL-separated tokens the stubs printed."""
    out = subprocess.run(
        ["bash", "-c", stubs + "\n" + script],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **(env or {})},
        check=True,
    )
    return out.stdout.split("\0")[:-1]


# ----------------------------------------------------------------------------- Slurm
def test_slurm_sbatch_script_directives_and_round_trip(tmp_path):
    text = launch([*SLURM_ARGS, "--dry-run", "--", *OVERRIDES])
    script = text.split("# ---- equivalent standalone sbatch script ----\n", 1)[1]
    directives = dict(
        line[len("#SBATCH --") :].split("=", 1)
        for line in script.splitlines()
        if line.startswith("#SBATCH ")
    )
    assert directives == {
        "job-name": "optzoo-gpt2_small",
        "nodes": "2",
        "ntasks-per-node": "1",
        "gpus-per-node": "8",
        "cpus-per-task": "64",
        "time": "1-02:00:30",
        "partition": "gpu",
        "account": "proj",
        "qos": "high",
        "output": f"{WORKDIR}/slurm/%j.out",
    }
    # the checkout is the submit directory of the job (not this machine's checkout), and its
    # .venv is activated when it has one
    (tmp_path / ".venv/bin").mkdir(parents=True)
    (tmp_path / ".venv/bin/activate").write_text("VIRTUAL_ENV=from-activate\n")
    tokens = run_bash(
        script,
        "srun() { printf '%s\\0' \"$XLA_FLAGS\" "
        '"$JAX_LOCAL_DEVICE_IDS" "$PWD" "$VIRTUAL_ENV" "$@"; }',
        {"SLURM_SUBMIT_DIR": str(tmp_path)},
    )
    xla, local_ids, cwd, venv, *srun = tokens
    assert (xla, local_ids, cwd, venv) == (
        GPU_XLA_FLAGS,
        "0,1,2,3,4,5,6,7",
        str(tmp_path),
        "from-activate",
    )
    assert srun[:5] == [
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        "python",
        "-m",
        "experiments.train",
    ]
    known, cfg = parse_like_train(srun[5:])
    assert (known.preset, known.workdir, known.distributed, known.coordinator) == (
        "gpt2_small",
        WORKDIR,
        True,
        None,
    )
    # the overrides took effect (the preset's own values differ), the glob path intact
    assert get_config("gpt2_small").steps != 1000
    assert (cfg.steps, cfg.optimizer.name, cfg.data.shards) == (
        1000,
        "muon",
        "/shared/fine web/train_*.bin",
    )


def test_train_parser_has_power():
    # negative control for the round trip: the same parser rejects a misspelt field
    with pytest.raises(SystemExit):
        parse_like_train(["--preset", "tiny", "--optimizer.nme", "muon"])


def test_slurm_executor_parameters_and_dry_run_without_submitit(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # any `import submitit` now fails
    assert main([*SLURM_ARGS, "--dry-run", "--", "--steps", "1000"]) == 0
    assert "#SBATCH --nodes=2" in capsys.readouterr().out
    job = make_job("gpt2_small", WORKDIR, nodes=2, gpus_per_node=8, setup=("true",))
    opts = slurm.SlurmOptions(
        partition="gpu",
        account="proj",
        qos="high",
        time="1-02:00:30",
        sbatch_args=(("constraint", "h100"),),
    )
    assert slurm.executor_parameters(job, opts) == {
        "name": "optzoo-gpt2_small",
        "nodes": 2,
        "tasks_per_node": 1,
        "gpus_per_node": 8,
        "cpus_per_task": 64,
        "timeout_min": 26 * 60 + 1,  # 00:30 s rounds up to a minute
        "slurm_partition": "gpu",
        "slurm_account": "proj",
        "slurm_qos": "high",
        "slurm_setup": [
            *slurm.CHECKOUT_LINES,
            "true",
            f"export XLA_FLAGS={GPU_XLA_FLAGS}",
            "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7",
        ],
        "slurm_additional_parameters": {"constraint": "h100"},
    }
    with pytest.raises(RuntimeError, match=r"pip install -e '\.\[launch\]'"):
        slurm.submit(job, opts)  # the control: without --dry-run submitit is required


def test_slurm_submit_goes_through_submitit(monkeypatch):
    calls = {}

    class FakeExecutor:
        def __init__(self, folder, cluster, slurm_python):
            calls["init"] = (folder, cluster, slurm_python)

        def update_parameters(self, **params):
            calls["params"] = params

        def submit(self, fn, *args):
            calls["submit"] = (fn, args)
            return types.SimpleNamespace(job_id="4242")

    monkeypatch.setitem(sys.modules, "submitit", types.SimpleNamespace(AutoExecutor=FakeExecutor))
    out = launch([*SLURM_ARGS, "--", "--steps", "1000"])
    assert out == "submitted Slurm job 4242\n"
    # submitit's worker runs the job's python (after the venv activation), in the job's cwd
    assert calls["init"] == (f"{WORKDIR}/slurm", "slurm", "python")
    assert calls["params"]["nodes"] == 2 and calls["params"]["tasks_per_node"] == 1
    fn, (argv,) = calls["submit"]
    assert fn is slurm.run_command
    assert argv[:3] == ["python", "-m", "experiments.train"]
    assert parse_like_train(argv[3:])[1].steps == 1000


def test_run_command_runs_and_fails_loudly(tmp_path, monkeypatch):
    slurm.run_command([sys.executable, "-c", "open('ran', 'w')"], str(tmp_path))
    assert (tmp_path / "ran").exists()
    # without a cwd: the job's checkout from the node's environment
    monkeypatch.delenv("OPTZOO_ROOT", raising=False)
    monkeypatch.setenv("SLURM_SUBMIT_DIR", str(tmp_path / "submit"))
    (tmp_path / "submit").mkdir()
    (tmp_path / "root").mkdir()
    slurm.run_command([sys.executable, "-c", "open('ran', 'w')"])
    assert (tmp_path / "submit/ran").exists()
    monkeypatch.setenv("OPTZOO_ROOT", str(tmp_path / "root"))
    slurm.run_command([sys.executable, "-c", "open('ran', 'w')"])
    assert (tmp_path / "root/ran").exists()
    with pytest.raises(subprocess.CalledProcessError):
        slurm.run_command([sys.executable, "-c", "raise SystemExit(3)"], str(tmp_path))


# ----------------------------------------------------------------------------- SkyPilot
def test_skypilot_gpu_cluster_yaml_round_trip():
    text = launch(
        [
            "skypilot",
            "--preset",
            "gpt2_small",
            "--workdir",
            "/ckpt/gpt2",
            "--nodes",
            "2",
            "--gpus-per-node",
            "8",
            "--cloud",
            "aws",
            "--port",
            "9000",
            "--mount",
            "/ckpt=s3://bucket/runs",
            "--dry-run",
            "--",
            *OVERRIDES,
            "--sharding.fsdp",
            "8",
            "--sharding.tp",
            "2",
        ]
    )
    task = yaml.safe_load(text)
    assert task["resources"] == {"accelerators": "H100:8", "cloud": "aws"}
    assert task["num_nodes"] == 2 and task["workdir"] == "."  # where sky runs
    assert task["file_mounts"] == {"/ckpt": {"source": "s3://bucket/runs", "mode": "MOUNT"}}
    assert task["envs"] == {"XLA_FLAGS": GPU_XLA_FLAGS, "JAX_LOCAL_DEVICE_IDS": "0,1,2,3,4,5,6,7"}
    assert run_bash(task["setup"], "pip() { printf '%s\\0' \"$@\"; }") == [
        "install",
        "-e",
        ".[experiments]",
        "jax[cuda12]",
    ]
    env = {
        "SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.8",
        "SKYPILOT_NUM_NODES": "2",
        "SKYPILOT_NODE_RANK": "1",
    }
    argv = run_bash(task["run"], "python() { printf '%s\\0' \"$@\"; }", env)
    assert argv[:2] == ["-m", "experiments.train"]
    known, cfg = parse_like_train(argv[2:])
    assert (known.coordinator, known.num_processes, known.process_id) == ("10.0.0.7:9000", 2, 1)
    assert known.distributed and known.workdir == "/ckpt/gpt2"
    assert (cfg.steps, cfg.data.shards, cfg.sharding.fsdp, cfg.sharding.tp, cfg.sharding.dp) == (
        1000,
        "/shared/fine web/train_*.bin",
        8,
        2,
        -1,
    )
    assert "WARNING" not in text  # the workdir is under the mount


def test_skypilot_tpu_pod_yaml(tmp_path):
    out = tmp_path / "task.yaml"
    msg = launch(
        [
            "skypilot",
            "--preset",
            "qwen3_seed",
            "--workdir",
            "/ckpt/q",
            "--tpu",
            "v5e-16",
            "--runtime-version",
            "v2-alpha-tpuv5-lite",
            "--out",
            str(out),
            "--dry-run",
            "--",
            "--sharding.fsdp",
            "16",
        ]
    )
    assert msg.startswith(f"wrote {out}; launch with: sky launch -c optzoo-qwen3-seed ")
    text = out.read_text()
    task = yaml.safe_load(text)
    assert task["resources"] == {
        "accelerators": "tpu-v5litepod-16",
        "accelerator_args": {"runtime_version": "v2-alpha-tpuv5-lite"},
    }
    assert "num_nodes" not in task and "envs" not in task  # one node; no GPU flags on TPU
    assert run_bash(task["setup"], "pip() { printf '%s\\0' \"$@\"; }")[-1] == "jax[tpu]"
    argv = run_bash(task["run"], "python() { printf '%s\\0' \"$@\"; }")
    known, cfg = parse_like_train(argv[2:])
    assert known.distributed and not known.smoke and known.coordinator is None
    assert known.num_processes is None and cfg.sharding.fsdp == 16
    assert "WARNING: --workdir /ckpt/q is not under a --mount" in text  # multi-host slice


def test_skypilot_launch_calls_sky_or_explains(tmp_path, monkeypatch):
    args = [
        "skypilot",
        "--preset",
        "tiny",
        "--smoke",
        "--workdir",
        "/runs/t",
        "--gpus-per-node",
        "1",
        "--out",
        str(tmp_path / "t.yaml"),
        "--cluster",
        "c1",
    ]
    monkeypatch.setenv("PATH", str(tmp_path))  # no sky here
    with pytest.raises(RuntimeError, match="sky CLI is not installed"):
        launch(args)
    task = yaml.safe_load((tmp_path / "t.yaml").read_text())
    assert task["resources"]["accelerators"] == "H100:1"
    assert "--preset tiny --smoke --workdir /runs/t --distributed" in task["run"]
    sky = tmp_path / "sky"
    sky.write_text(f'#!/bin/sh\necho "$PWD" "$@" > {tmp_path}/called\n')
    sky.chmod(0o755)
    assert launch(args).startswith("launched ")
    # sky runs in the checkout, which the task's relative workdir '.' then names
    assert (tmp_path / "called").read_text().split() == [
        str(REPO_ROOT),
        "launch",
        "-c",
        "c1",
        str(tmp_path / "t.yaml"),
    ]


def _baked_paths() -> set[str]:
    """This machine's checkout, interpreter, environment and working directory."""
    return {
        str(REPO_ROOT),
        sys.executable,
        sys.prefix,
        os.getcwd(),
        os.path.realpath(sys.executable),
    }


@pytest.mark.parametrize(
    "argv",
    [
        SLURM_ARGS[:-4],  # the default --python
        [
            "skypilot",
            "--preset",
            "gpt2_small",
            "--workdir",
            "/ckpt/g",
            "--nodes",
            "2",
            "--gpus-per-node",
            "8",
        ],
        ["skypilot", "--preset", "qwen3_seed", "--workdir", "/ckpt/q", "--tpu", "v5e-16"],
    ],
)
def test_rendered_jobs_bake_in_no_path_of_this_machine(argv):
    text = launch([*argv, "--dry-run", "--", "--steps", "1000"])
    for path in _baked_paths():
        assert path not in text, path
    if argv[0] == "slurm":  # the checkout and venv come from the job's environment
        assert 'cd "$OPTZOO_ROOT"' in text and "${OPTZOO_ROOT:-$SLURM_SUBMIT_DIR}" in text
        assert "${OPTZOO_VENV:-$OPTZOO_ROOT/.venv}" in text
    job = make_job("gpt2_small", WORKDIR, nodes=2, gpus_per_node=8)
    params = repr(slurm.executor_parameters(job, slurm.SlurmOptions()))
    assert not [p for p in _baked_paths() if p in params]


def test_launchers_take_the_train_shorthands_and_refuse_impossible_schedules():
    text = launch([*SLURM_ARGS, "--dry-run", "--", "--steps", "50", "--warmup-steps", "5"])
    assert "--warmup-steps 5" in text
    with pytest.raises(LaunchConfigError) as err:
        launch(["slurm", "--preset", "tiny", *GPU, "--dry-run", "--", "--steps", "10"])
    assert (
        "--warmup-steps 30 + --optimizer.cooldown-fraction 0.2 do not fit in --steps 10"
        in " ".join(str(err.value).split())
    )  # tyro wraps the message


# ----------------------------------------------------------------------------- pieces
@pytest.mark.parametrize(
    "name,accelerator,devices,multi_host",
    [
        ("v5e-16", "tpu-v5litepod-16", 16, True),
        ("tpu-v5litepod-8", "tpu-v5litepod-8", 8, False),
        ("v4-32", "tpu-v4-32", 16, True),  # v4 counts TensorCores, one JAX device per chip
        ("v5p-8", "tpu-v5p-8", 4, False),
        ("v3-8", "tpu-v3-8", 8, False),  # v3 exposes each of the 8 cores
        ("v6e-8", "tpu-v6e-8", 8, False),
    ],
)
def test_parse_tpu(name, accelerator, devices, multi_host):
    assert parse_tpu(name) == TpuSlice(accelerator, devices, multi_host)


@pytest.mark.parametrize(
    "overrides,devices",
    [
        ((), 7),  # nothing set: not checked
        (("--sharding.fsdp", "8", "--sharding.tp", "2"), 16),  # dp = -1 takes the rest (1)
        (("--sharding.fsdp=4",), 16),  # dp = -1 -> 4
        (("--sharding.dp", "2", "--sharding.fsdp", "4", "--sharding.tp", "2"), 16),
    ],
)
def test_check_sharding_accepts(overrides, devices):
    check_sharding(overrides, devices)


@pytest.mark.parametrize(
    "overrides,devices,match",
    [
        (("--sharding.dp", "2", "--sharding.fsdp", "8"), 8, r"--sharding.dp 2 .* = 16 devices"),
        (("--sharding.fsdp", "3"), 16, "does not divide the job's 16 devices"),
        (("--sharding.tp", "0"), 8, r"--sharding.tp 0: expected an int >= 1"),
        (("--sharding.fsdp", "x"), 8, r"--sharding.fsdp 'x': expected an integer"),
    ],
)
def test_check_sharding_rejects(overrides, devices, match):
    with pytest.raises(LaunchConfigError, match=match):
        check_sharding(overrides, devices)


GPU = ["--workdir", "/shared/r", "--gpus-per-node", "8"]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["slurm", "--preset", "nosuch", *GPU], r"--preset: unknown preset 'nosuch'"),
        (["slurm", "--preset", "tiny", *GPU, "--nodes", "0"], r"--nodes 0: expected an int >= 1"),
        (
            ["slurm", "--preset", "tiny", "--workdir", "/r", "--gpus-per-node", "0"],
            r"--gpus-per-node 0",
        ),
        (["skypilot", "--preset", "tiny", *GPU, "--tpu", "v5e-16"], "--gpus-per-node and --tpu"),
        (["skypilot", "--preset", "tiny", "--workdir", "/r"], "give --gpus-per-node G"),
        (
            ["slurm", "--preset", "tiny", "--workdir", "runs/x", "--gpus-per-node", "1"],
            r"--workdir 'runs/x' must be an absolute path",
        ),
        (
            ["skypilot", "--preset", "tiny", "--workdir", "gs://b/x", "--gpus-per-node", "1"],
            r"--workdir 'gs://b/x' is a URI",
        ),
        (
            [
                "slurm",
                "--preset",
                "tiny",
                "--workdir",
                "/tmp/x",
                "--gpus-per-node",
                "1",
                "--nodes",
                "2",
            ],
            r"--workdir '/tmp/x' is node-local",
        ),
        (
            ["slurm", "--preset", "tiny", "--workdir", "/a b", "--gpus-per-node", "1"],
            r"--workdir '/a b' contains characters",
        ),
        (
            [
                "slurm",
                "--preset",
                "tiny",
                *GPU,
                "--nodes",
                "2",
                "--",
                "--sharding.dp",
                "4",
                "--sharding.fsdp",
                "8",
            ],
            r"--sharding.dp 4 \* --sharding.fsdp 8 \* --sharding.tp 1 = 32",
        ),
        (
            ["slurm", "--preset", "tiny", *GPU, "--", "--optimizer.name", "nosuch"],
            r"train overrides '--optimizer.name nosuch' are not valid for --preset tiny",
        ),
        (
            ["slurm", "--preset", "tiny", *GPU, "--", "--workdir", "/x"],
            "train override --workdir is set by the launcher",
        ),
        (
            ["slurm", "--preset", "tiny", *GPU, "--nodes", "3"],
            r"--data.batch-size 16 is not divisible by the job's 24 batch shards",
        ),
        (["slurm", "--preset", "tiny", *GPU, "--time", "90"], r"--time '90': expected HH:MM:SS"),
        (["slurm", "--preset", "tiny", *GPU, "--partition", "a b"], r"--partition 'a b'"),
        (
            ["slurm", "--preset", "tiny", "--workdir", "/r", "--tpu", "v5e-16"],
            "--tpu: Slurm jobs run on GPU nodes",
        ),
        (["skypilot", "--preset", "tiny", "--workdir", "/r", "--tpu", "v9-8"], r"--tpu 'v9-8'"),
        (
            ["skypilot", "--preset", "tiny", "--workdir", "/r", "--tpu", "v4-8", "--nodes", "2"],
            r"--nodes 2 with --tpu",
        ),
        (
            ["skypilot", "--preset", "tiny", *GPU, "--mount", "/ckpt=bucket"],
            r"--mount /ckpt=bucket: expected MOUNT_PATH=BUCKET_URI",
        ),
    ],
)
def test_errors_name_the_flag(argv, match):
    split = argv.index("--") if "--" in argv else len(argv)
    with pytest.raises(LaunchConfigError, match=match):
        launch([*argv[:split], "--dry-run", *argv[split:]])


def test_main_reports_errors(capsys):
    assert (
        main(["slurm", "--preset", "tiny", "--workdir", "rel", "--gpus-per-node", "1", "--dry-run"])
        == 2
    )
    assert capsys.readouterr().err.startswith("error: --workdir 'rel' must be an absolute")
