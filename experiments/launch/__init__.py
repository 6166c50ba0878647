"""Cluster launchers for ``experiments.train``: Slurm (submitit, or a standalone sbatch
script) and SkyPilot (GPU clusters and Cloud TPU pod slices), rendered from one validated job
description, with a dry run that prints everything and submits nothing.

Command line (``python -m experiments.launch --help``)::

    python -m experiments.launch slurm --preset gpt2_small --workdir /shared/runs/gpt2 \\
        --nodes 2 --gpus-per-node 8 --partition gpu --account proj --time 12:00:00 \\
        --dry-run -- --data.shards '/shared/fineweb/train_*.bin'
    python -m experiments.launch skypilot --preset qwen3_seed --workdir /ckpt/qwen3 \\
        --tpu v5e-16 --mount /ckpt=gs://my-bucket/runs --dry-run -- --sharding.fsdp 16

From Python::

    from experiments.launch import make_job, slurm, skypilot
    job = make_job("gpt2_small", "/shared/runs/gpt2", nodes=2, gpus_per_node=8)
    print(slurm.render_sbatch(job, slurm.SlurmOptions(partition="gpu")))
    print(skypilot.render_task_yaml(job, skypilot.SkyPilotOptions(gpu="H100")))

Every node runs ``python -m experiments.train --preset P --workdir W --distributed
[--coordinator HOST:PORT --num-processes N --process-id I] [overrides]``: one JAX process per
host, owning all of the host's accelerators (see :mod:`experiments.launch.slurm`).
"""

from experiments.launch import common, skypilot, slurm
from experiments.launch.common import *  # noqa: F403  (the job description and its checks)

__all__ = ["common", "skypilot", "slurm", *common.__all__]
