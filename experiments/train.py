"""The training loop: ``train_and_evaluate(cfg, workdir) -> summary``.

Reads top to bottom like nanoGPT's ``train.py``; every piece is a named function::

    run = _setup(cfg, workdir)       everything that can reject the config, before any write:
                                     the mesh, data = make_data(cfg) (resumable TokenLoader +
                                     fixed validation batches), tx = build_optimizer(...)
                                     (experiments.optimizers), state = init_state(...) and the
                                     jitted steps (experiments.steps)
    _resume(run)                     the latest checkpoint of workdir, if any (exact resume)
    log = _open_log(run)             manifest.json, metrics.jsonl, TensorBoard
    loop: _train_step                batch -> grads -> apply (-> train record every log_every)
          _eval_record               validation loss every eval_every steps
          _save                      checkpoint every checkpoint_every steps
    _finish(run, log)                summary.json, plots

Usage: ``python -m experiments.train --preset tiny --workdir runs/tiny`` (flags:
:mod:`experiments.cli`), e.g.::

    python -m experiments.train --preset tiny --workdir runs/muon --optimizer.name muon \\
        --optimizer.learning-rate 0.02 --optimizer.adam-lr 0.003 --steps 300
    python -m experiments.train --preset tiny_moe --smoke --workdir /tmp/smoke

**Sharding.** All devices form a mesh ``('dp', 'fsdp', 'tp')`` sized by ``cfg.sharding``
(:mod:`experiments.sharding`): the batch is sharded over ``dp x fsdp``; parameters and the
optimizer state that mirrors them over ``fsdp`` (ZeRO-3) and ``tp`` (Megatron-style rules
per routing role), replicated over ``dp``. Initialization, gradients (reduce-scattered into
the parameter layout), the update and checkpoint restore all name their output shardings,
so the layout never drifts; XLA inserts the gathers. The default (``dp=-1``) is plain data
parallelism with replicated parameters.

**Multi-host.** ``--distributed`` initializes jax's distributed runtime first
(:func:`experiments.cli.initialize_distributed`). Each process reads its own rows of every
global batch (``TokenLoader`` process fields), all processes write and read the orbax
checkpoints, and process 0 alone writes the manifest and metrics.

**Exact resume.** A checkpoint stores the parameters, the optimizer state (including its step
counter, its injected learning rates and the non-finite guard's counters), the step, the
data-loader position, the run's RNG key (reserved: the current models are deterministic) and
the not-yet-logged training losses; ``metrics.jsonl`` is cut back to the checkpoint's step and
TensorBoard events after it are purged. The resumed run then emits the same records as an
uninterrupted one (bitwise on CPU; the wall-clock fields of ``experiments.metrics.TIMING_KEYS``
excepted). Calling ``train_and_evaluate`` again on a finished run returns its summary without
training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import checkpoint as ckpt_lib
from experiments import cli, models
from experiments import data as data_lib
from experiments import metrics as metrics_lib
from experiments import optimizers as opt_lib
from experiments import progress as progress_lib
from experiments import sharding as shard_lib
from experiments import steps as steps_lib
from experiments.configs import TrainConfig
from optzoo import OwnerComputes, routing

__all__ = ["Data", "make_data", "next_global_batch", "train_and_evaluate", "main"]

BATCH_AXES = shard_lib.BATCH_AXES


# ----------------------------------------------------------------------------- data
class Data(NamedTuple):
    """The training stream, the fixed validation set and what the corpus is."""

    loader: data_lib.TokenLoader
    val_batches: list[tuple[np.ndarray, np.ndarray]]
    info: dict


def _sources(cfg: TrainConfig) -> tuple[Any, np.ndarray, dict]:
    """``(training source, validation tokens, corpus info)`` of ``cfg.data``."""
    d = cfg.data
    if d.corpus == "stdlib":
        train, val, corpus = data_lib.default_splits(d.corpus_bytes, d.val_tokens)
        return train, val, dataclasses.asdict(corpus)
    if d.corpus == "shakespeare":
        tokens, corpus = data_lib.shakespeare_corpus()
        train, val = data_lib.split_train_val(tokens[: d.corpus_bytes], d.val_tokens)
        return train, val, dataclasses.asdict(corpus)
    shards, paths = data_lib.open_shards(d.shards)
    if d.val_shards is not None:
        val_arrays, val_paths = data_lib.open_shards(d.val_shards)
        val = val_arrays[0]
    else:
        if len(shards[-1]) <= d.val_tokens:
            raise ValueError(
                f"DataConfig.val_tokens={d.val_tokens} is not smaller than the "
                f"last training shard ({len(shards[-1])} tokens)"
            )
        val, val_paths = shards[-1][-d.val_tokens :], paths[-1:]
        shards = shards[:-1] + [shards[-1][: -d.val_tokens]]
    info = {
        "name": "shards",
        "train": [str(p) for p in paths],
        "val": [str(p) for p in val_paths],
        "train_tokens": int(sum(len(s) for s in shards)),
    }
    return shards, val, info


def make_data(
    cfg: TrainConfig, *, process_index: int = 0, process_count: int = 1, n_devices: int = 1
) -> Data:
    """Builds the loader of ``cfg.data`` (this process's slice) and the validation batches.

    ``n_devices`` is the number of batch shards (the ``dp x fsdp`` axes of the mesh).

    Raises:
      ValueError: ``data.batch_size`` not divisible by the batch shards / process count, a token id
        outside the model's vocabulary, or a corpus too short (messages name the field).
      FileNotFoundError: a shard path (``DataConfig.shards`` / ``val_shards``) matches nothing.
    """
    d = cfg.data
    d.check_paths()
    for count, what in ((n_devices, "devices"), (process_count, "processes")):
        if d.batch_size % count:
            raise ValueError(
                f"DataConfig.batch_size={d.batch_size} is not divisible by the "
                f"{count} {what} of the data-parallel mesh axes {BATCH_AXES}"
            )
    per_process = d.batch_size // process_count
    source, val, info = _sources(cfg)
    val = np.asarray(val[: cfg.eval_batches * d.batch_size * d.seq_len + 1])
    vocab = cfg.model_config().vocab_size
    if val.size and int(val.max()) >= vocab:
        raise ValueError(
            f"DataConfig: the validation tokens hold id {int(val.max())} >= the "
            f"model's vocab_size {vocab} (TrainConfig.model={cfg.model!r})"
        )
    loader = data_lib.TokenLoader(
        source,
        per_process,
        d.seq_len,
        process_index=process_index,
        process_count=process_count,
        shuffle=d.shuffle,
        seed=d.seed,
    )
    val_batches = data_lib.validation_batches(
        val,
        per_process,
        d.seq_len,
        process_index=process_index,
        process_count=process_count,
        max_batches=cfg.eval_batches,
    )
    return Data(loader, val_batches, info)


def next_global_batch(
    loader: data_lib.TokenLoader, grad_accum: int, sharding: NamedSharding
) -> tuple[jax.Array, jax.Array]:
    """``grad_accum`` micro-batches of this process stacked to ``[A, B_local, T]`` and
    assembled into global arrays ``[A, B, T]`` sharded along ``B``."""
    xs, ys = zip(*(loader.next() for _ in range(grad_accum)), strict=True)
    x, y = np.stack(xs), np.stack(ys)
    return (
        jax.make_array_from_process_local_data(sharding, x),
        jax.make_array_from_process_local_data(sharding, y),
    )


# ----------------------------------------------------------------------------- setup
@dataclasses.dataclass
class _Run:
    """Everything one run holds: the config and what was built from it (:func:`_setup`), the
    training state, and the resumable position (:func:`_resume`)."""

    cfg: TrainConfig
    workdir: Path
    opt_cfg: Any
    model_cfg: Any
    manifest: dict | None
    mesh: Any
    data: Data
    params_abstract: Any
    specs: Any
    owner: Any
    state: dict
    steps: steps_lib.Steps
    val_batches: list
    checkpointer: ckpt_lib.Checkpointer | None = None
    start: int = 0
    pending: list = dataclasses.field(default_factory=list)
    elapsed0: float = 0.0
    rng: Any = None

    @property
    def layout(self) -> dict:
        """Where the arrays live (for the manifest and the summary)."""
        return {
            "mesh": dict(self.mesh.shape),
            "param_bytes_per_device": shard_lib.bytes_per_device(self.state["params"]),
            "opt_state_bytes_per_device": shard_lib.bytes_per_device(self.state["opt"]),
        }


def _setup(cfg: TrainConfig, workdir: Path) -> _Run:
    """Checks the config against the workdir, builds mesh, data, optimizer, state and steps.
    Everything that can reject the config runs here, before the first write."""
    model_cfg = cfg.model_config()
    opt_cfg = opt_lib.with_model_defaults(cfg.optimizer, model_cfg)
    manifest = ckpt_lib.prepare_workdir(workdir, cfg)
    mesh = shard_lib.make_mesh(cfg.sharding)
    batch_shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    data = make_data(
        cfg,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        n_devices=batch_shards,
    )
    shard_lib.check_batch_layout(mesh, cfg.data.batch_size)
    params_abstract = nnx.state(models.build(model_cfg, seed=cfg.seed, abstract=True), nnx.Param)
    specs = shard_lib.param_specs(params_abstract, cfg.sharding, mesh)
    owner = None
    if cfg.sharding.owner_computes and opt_lib.supports_owner_computes(opt_cfg):
        owner = OwnerComputes(mesh, axes=None)
    tx = opt_lib.build_optimizer(opt_cfg, params_abstract, cfg.steps, owner_computes=owner)
    if jax.process_count() > 1:  # no process writes before every one has checked the workdir
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("experiments.train: workdir checked")
    (graphdef, opt_graphdef), state = steps_lib.init_state(
        model_cfg, tx, cfg.seed, mesh, cfg.sharding
    )
    groups = jax.tree.leaves(opt_lib.param_groups(state["params"]))
    steps = steps_lib.make_train_step(
        graphdef,
        opt_graphdef,
        groups,
        mesh,
        grad_accum=cfg.grad_accum,
        donate=jax.default_backend() != "cpu",
        state_shardings=jax.tree.map(lambda a: a.sharding, state),
    )
    val_sharding = NamedSharding(mesh, P(BATCH_AXES, None))
    val_batches = [
        (
            jax.make_array_from_process_local_data(val_sharding, x),
            jax.make_array_from_process_local_data(val_sharding, y),
        )
        for x, y in data.val_batches
    ]
    return _Run(
        cfg,
        workdir,
        opt_cfg,
        model_cfg,
        manifest,
        mesh,
        data,
        params_abstract,
        specs,
        owner,
        state,
        steps,
        val_batches,
        rng=jax.random.key_data(jax.random.key(cfg.seed)),
    )


# ----------------------------------------------------------------------------- resume
def _pure(state: dict) -> dict:
    return {k: nnx.to_pure_dict(v) for k, v in state.items()}


def _resume(run: _Run) -> None:
    """Opens the checkpoints and restores the latest one, if any, straight into this run's
    shardings (which may differ from the saving run's)."""
    run.checkpointer = ckpt_lib.Checkpointer(
        run.workdir / ckpt_lib.CHECKPOINTS, run.cfg.keep_checkpoints
    )
    latest = run.checkpointer.latest_step()
    if latest is None:
        return
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), _pure(run.state)
    )
    restored, meta = run.checkpointer.restore(latest, abstract)
    for key, value in run.state.items():
        nnx.replace_by_pure_dict(value, restored[key])
    # the saved position is global (offsets count every process's rows); only the process
    # fields are this process's (the meta file is process 0's)
    run.data.loader.set_state(
        data_lib.LoaderState(*meta["loader"])._replace(
            process_index=jax.process_index(), process_count=jax.process_count()
        )
    )
    run.start, run.pending = int(meta["step"]), list(meta["pending_losses"])
    run.elapsed0 = float(meta.get("elapsed_s", 0.0))
    run.rng = jnp.asarray(meta["rng"], jnp.uint32)


# ----------------------------------------------------------------------------- logging
class _Log:
    """The run's records: kept in memory for the summary, written by process 0 to
    ``metrics.jsonl`` (and TensorBoard)."""

    def __init__(self, records: list, writer: Any, tb: Any):
        self.records, self.writer, self.tb = records, writer, tb

    def emit(self, record: dict) -> None:
        self.records.append({k: metrics_lib.to_python(v) for k, v in record.items()})
        if self.writer is not None:
            self.writer.write(record)
            self.tb.write(record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.tb.close()


def _new_manifest(run: _Run) -> dict:
    cfg, opt_cfg = run.cfg, run.opt_cfg
    return ckpt_lib.new_manifest(
        cfg,
        model=dataclasses.asdict(run.model_cfg),
        model_summary=models.describe(run.model_cfg),
        optimizer=dataclasses.asdict(opt_cfg),
        param_count=_param_count(run),
        flops_per_token=models.flops_per_token(run.model_cfg, cfg.data.seq_len),
        tokens_per_step=cfg.tokens_per_step,
        corpus=run.data.info,
        routing_report=str(routing.report(run.params_abstract, None, opt_lib.plan(opt_cfg))),
        optimizer_call=opt_lib.optimizer_call(opt_cfg),
        block_updates=opt_lib.block_updates(run.params_abstract, opt_cfg),
        matmul_precision=cfg.matmul_precision,
        sharding={
            **dataclasses.asdict(cfg.sharding),
            **run.layout,
            "owner_computes_applied": run.owner is not None,
            "param_specs": shard_lib.spec_table(run.params_abstract, run.specs),
        },
    )


def _open_log(run: _Run) -> _Log:
    """Process 0 writes (or, on resume, extends) the manifest and reopens the metrics cut back
    to the restored step; the other processes only keep their records in memory."""
    if jax.process_index() != 0:
        return _Log([], None, metrics_lib.TensorBoardWriter("", False))
    resumed = run.checkpointer.latest_step() is not None
    metrics_path = run.workdir / ckpt_lib.METRICS
    records = metrics_lib.truncate_jsonl(metrics_path, run.start if resumed else None)
    manifest = run.manifest
    if manifest is None:
        manifest = run.manifest = _new_manifest(run)
    else:
        manifest["resumes"].append(
            {
                "from_step": run.start,
                "time": time.time(),
                "git": ckpt_lib.git_info(),
                "devices": ckpt_lib.device_info(),
                "sharding": {**dataclasses.asdict(run.cfg.sharding), **run.layout},
            }
        )
    ckpt_lib.write_json_atomic(run.workdir / ckpt_lib.MANIFEST, manifest)
    tb = metrics_lib.TensorBoardWriter(
        run.workdir / "tb", run.cfg.tensorboard, purge_step=run.start + 1 if run.start else None
    )
    return _Log(records, metrics_lib.JsonlWriter(metrics_path), tb)


# ----------------------------------------------------------------------------- the loop
class _Clock:
    """Wall-clock bookkeeping: training time accumulated over resumes, and the steps of the
    current timing interval (restarted by every log, evaluation and checkpoint; the first
    step, which compiles, is timed on its own)."""

    def __init__(self, elapsed0: float):
        self.t_start, self.elapsed0 = time.perf_counter(), elapsed0
        self.first, self.t0, self.n = True, None, 0

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t_start

    def begin(self) -> None:
        if self.t0 is None:
            self.t0 = time.perf_counter()

    def count(self, t0: float, t_end: float) -> float | None:
        """Counts a step that ran from ``t0`` to ``t_end``; returns its duration if it was the
        first one (the compilation), else ``None``."""
        if self.first:
            self.first, self.t0, self.n = False, t_end, 0
            return t_end - t0
        self.n += 1
        return None

    def ms_per_step(self, t_end: float) -> float | None:
        return (t_end - self.t0) / self.n * 1e3 if self.n else None

    def restart(self) -> None:
        self.t0, self.n = None, 0


def _train_step(run: _Run, step: int, clock: _Clock) -> dict | None:
    """One optimizer step; the train record when ``step`` is a logging step, else ``None``."""
    cfg = run.cfg
    x, y = next_global_batch(
        run.data.loader, cfg.grad_accum, NamedSharding(run.mesh, P(None, BATCH_AXES, None))
    )
    log_now = step % cfg.log_every == 0 or step == cfg.steps
    timed = log_now or clock.first
    if timed:
        jax.block_until_ready(run.state)
    clock.begin()
    t0 = time.perf_counter()
    grads, gm = run.steps.grads(run.state["params"], run.state["rest"], x, y)
    if timed:
        jax.block_until_ready(grads)
    t1 = time.perf_counter()
    run.state, um = run.steps.apply(run.state, grads)
    if timed:
        jax.block_until_ready(run.state)
    t2 = time.perf_counter()
    run.pending.append(gm["loss"])
    compile_s = clock.count(t0, t2)
    if not log_now:
        return None
    losses = [float(v) for v in jax.device_get(run.pending)]
    run.pending = []
    m = jax.device_get({**gm, **um})
    rates = {k: m.pop(k) for k in list(m) if k == "lr" or k.startswith("lr_factor/")}
    ms = clock.ms_per_step(t2)
    tok_s = cfg.tokens_per_step / (ms / 1e3) if ms else None
    peak = metrics_lib.peak_flops(jax.devices()[0].device_kind, cfg.compute_dtype)
    flops_tok = models.flops_per_token(run.model_cfg, cfg.data.seq_len)
    record = {
        "kind": "train",
        "step": step,
        "tokens": step * cfg.tokens_per_step,
        "loss": m.pop("loss"),
        "ce": m.pop("ce"),
        "loss_mean": float(np.mean(np.asarray(losses, np.float64))),
        **rates,
        **m,
        **metrics_lib.router_means(m),
        "ms_per_step": ms,
        "fwd_bwd_ms": None if compile_s is not None else (t1 - t0) * 1e3,
        "opt_ms": None if compile_s is not None else (t2 - t1) * 1e3,
        "tokens_per_s": tok_s,
        "mfu": metrics_lib.mfu(flops_tok, tok_s, run.mesh.devices.size, peak),
        "compile_s": compile_s,
        "elapsed_s": clock.elapsed(),
    }
    clock.restart()
    return record


def _eval_record(run: _Run, step: int, clock: _Clock) -> dict:
    return {
        "kind": "eval",
        "step": step,
        "tokens": step * run.cfg.tokens_per_step,
        **steps_lib.evaluate(run.steps.eval, run.state, run.val_batches),
        "elapsed_s": clock.elapsed(),
    }


def _save(run: _Run, step: int, clock: _Clock) -> None:
    meta = {
        "step": step,
        "loader": list(run.data.loader.get_state()),
        "pending_losses": [float(v) for v in jax.device_get(run.pending)],
        "rng": np.asarray(run.rng).tolist(),
        "elapsed_s": clock.elapsed(),
        "config_hash": run.manifest["config_hash"] if run.manifest else None,
    }
    run.checkpointer.save(step, _pure(run.state), meta)


def _param_count(run: _Run) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(run.state["params"])))


def _finish(run: _Run, log: _Log) -> dict:
    summary = metrics_lib.summarize(
        log.records,
        run.cfg.tokens_per_step,
        opt_state_bytes=metrics_lib.tree_bytes(run.state["opt"]),
        param_count=_param_count(run),
        workdir=str(run.workdir),
    )
    summary.update(run.layout)
    if jax.process_index() == 0:
        ckpt_lib.write_json_atomic(run.workdir / "summary.json", summary)
        if run.cfg.plots:
            metrics_lib.plot_run(run.workdir)
    return summary


def train_and_evaluate(
    cfg: TrainConfig,
    workdir: str | os.PathLike,
    *,
    on_step: Callable[[int, dict | None], None] | None = None,
) -> dict:
    """Trains ``cfg`` in ``workdir`` (resuming from its latest checkpoint) and evaluates.

    Runs under ``jax.default_matmul_precision(cfg.matmul_precision)`` when that is set.

    Args:
      cfg: the run configuration.
      workdir: run directory (created; see :mod:`experiments.checkpoint` for its contents).
      on_step: called as ``on_step(step, train_record_or_None)`` after every step's logging,
        evaluation and checkpointing (a hook for tests and schedulers; an exception stops the
        run as a crash would).

    Returns:
      ``{'final_val_loss', 'best_val_loss', 'steps', 'tokens', 'ms_per_step',
      'opt_ms_per_step', 'tokens_per_s', 'opt_state_bytes', 'param_count', 'history' (eval
      records), 'workdir', 'mesh', 'param_bytes_per_device', 'opt_state_bytes_per_device'}``;
      timings are medians over the run's train records; ``opt_state_bytes`` is the whole
      (global) optimizer state, the ``*_per_device`` sizes what one device holds.

    Raises:
      experiments.checkpoint.ConfigMismatch: ``workdir`` holds a run of another config.
      ValueError / TypeError / FileNotFoundError: invalid configuration (named field).
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train_and_evaluate: cfg must be a TrainConfig, got {type(cfg).__name__}")
    if cfg.matmul_precision is None:
        return _train_and_evaluate(cfg, workdir, on_step)
    with jax.default_matmul_precision(cfg.matmul_precision):
        return _train_and_evaluate(cfg, workdir, on_step)


def _train_and_evaluate(
    cfg: TrainConfig, workdir: str | os.PathLike, on_step: Callable[[int, dict | None], None] | None
) -> dict:
    run = _setup(cfg, Path(workdir).absolute())
    _resume(run)
    log = _open_log(run)
    bar = progress_lib.Progress(
        cfg.steps,
        run.start,
        cfg.name,
        cfg.log_every,
        enabled=cfg.progress and jax.process_index() == 0,
    )
    clock = _Clock(run.elapsed0)
    try:
        if run.start == 0 and cfg.steps > 0:
            log.emit(_eval_record(run, 0, clock))
        for step in range(run.start + 1, cfg.steps + 1):
            record = _train_step(run, step, clock)
            if record is not None:
                log.emit(record)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                log.emit(_eval_record(run, step, clock))
                clock.restart()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                _save(run, step, clock)
                clock.restart()
            bar.update(step, record)
            if on_step is not None:
                on_step(step, record)
    finally:
        bar.close()
        run.checkpointer.close()
        log.close()
    return _finish(run, log)


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> dict:
    """``python -m experiments.train ...`` (flags: :mod:`experiments.cli`): trains the config
    and prints its summary (without the history) on process 0."""
    known, cfg = cli.parse_args(argv)
    summary = train_and_evaluate(cfg, known.workdir)
    if jax.process_index() == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return summary


if __name__ == "__main__":
    main()
