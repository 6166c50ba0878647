"""Named run presets, each with a smoke variant.

``get_config(name, smoke=False)`` returns the :class:`TrainConfig` of a preset; ``smoke=True``
derives (with ``dataclasses.replace``) a few-step variant with a small batch, a short
validation set and the embedded corpus, used by the tests and as a quick check on any
machine. Presets:

=================  ===========  ==========  ==================================================
preset             model        optimizer   intended for
=================  ===========  ==========  ==================================================
``tiny``           tiny (Qwen3) adamw       CPU, minutes (2 cores); the test/default run
``tiny_muon``      tiny         muon        CPU
``tiny_symmetric`` tiny         symmetric   CPU (the seed paper's role-wise stack)
``tiny_moe``       tiny_moe     adamw       CPU (OLMoE-style MoE, router metrics)
``tiny_gpt2``      tiny_gpt2    adamw       CPU (GPT-2 style: LayerNorm, GELU, tied)
``tiny_gemma3``    tiny_gemma3  adamw       CPU (Gemma 3 style: sandwich norms, GeGLU, local)
``tiny_gptoss``    tiny_gptoss  adamw       CPU (gpt-oss-style MoE, router bias)
``gpt2_small``     gpt2_small   adamw       one GPU (nanoGPT's 124M recipe, shards)
``qwen3_seed``     qwen3_seed   symmetric   GPU; seed paper's Qwen3-0.6B-style run (shards)
``olmoe_seed``     olmoe_seed   symmetric   GPU; seed paper's OLMoE-style run (shards)
``qwen3_paper``    qwen3_paper  symmetric   GPU; the released Qwen3 run, settings as released
``gemma3_paper``   gemma3_paper symmetric   GPU; the released Gemma 3 1B-style run
``olmoe_paper``    olmoe_paper  symmetric   GPU; the released OLMoE-1B-7B-style run
``gptoss_paper``   gptoss_paper symmetric   GPU; the released downsized gpt-oss run
``gptoss_paper_aux`` gptoss_paper symmetric GPU; gpt-oss with load-balance 1e-2 + z-loss 1e-3
=================  ===========  ==========  ==================================================

The GPU presets read token shards from ``data/<name>/`` (override ``--data.shards``); their
smoke variants switch to the embedded corpus so that they start anywhere; :func:`tiny_shapes`
additionally shrinks a preset's model to CPU size, keeping everything else.

**Paper presets** (``*_paper``) reproduce the released runs of Lau & Su 2026
(github.com/timlautk/equivariant_optimizers at a773b3f: ``train_qwen3.py``,
``train_gemma3_1b.py``, ``train_olmoe.py``, ``train_gpt-oss.py``,
``train_gpt-oss_router_metrics.py`` and the README's commands), where the older ``*_seed``
presets did not:

* no gradient clipping (the scripts call ``optimizer.step()`` on the raw gradients);
* float32 parameters and activations with TF32 matmuls (``torch.set_float32_matmul_precision
  ("high")``, no autocast): ``compute_dtype='float32'``, ``matmul_precision='tensorfloat32'``;
* ``N(0, 0.02)`` initialization of every matrix (the ``*_paper`` model presets,
  ``init_scheme='normal'``);
* the README's ``--val_tokens`` (Qwen3 10,551,296; Gemma 3 10,469,376; OLMoE and gpt-oss
  10,485,760): ``eval_batches`` = val_tokens / (batch_size x seq_len), every 500 steps;
* a schedule per group: WSD without warmup and a linear cooldown over the last 40% for every
  matrix group (``get_lr_scale``, ``cooldown_frac = 0.4``) and, for the 1-D AdamW group
  (role ``other`` = the ``vectors`` group), 100 warmup steps then a half cosine to zero
  (``get_cosine_schedule_with_warmup(num_warmup_steps=100, num_cycles=0.5)``);
* the README's tokens per step (devices x ``--device_batch_size`` x 1024) as 16-sequence
  micro-batches, ``--train_steps``, ``--seed=42``, sequential (unshuffled) shards, AdamW
  betas (0.9, 0.95), weight decay 1e-3 (``--weight_decay``, ``--wd_muon``), and the
  symmetric stack's released preset (``qwen3_row``, ``gemma3_row``, ``olmoe_row``,
  ``gptoss_row``: row-norm embedding, centered row-norm head / router, Muon hidden, learning
  rates ``--lr_muon`` and the README's ratios); no auxiliary MoE losses except in
  ``gptoss_paper_aux`` (``--router_aux_loss_coef=1e-2 --router_z_loss_coef=1e-3``).

Other keywords of ``optzoo.symmetry_compatible`` (numerics choices included) are passed
through ``OptimizerConfig.options`` unchanged; the manifest records the call.
"""

from __future__ import annotations

import dataclasses

from experiments.configs.base import (
    CORPORA,
    HASH_EXCLUDED,
    OPTIMIZER_NAMES,
    SCHEDULES,
    DataConfig,
    OptimizerConfig,
    Scalar,
    ShardingConfig,
    TrainConfig,
    config_diff,
    config_hash,
    hashed_dict,
    to_dict,
)

__all__ = [
    "CORPORA",
    "HASH_EXCLUDED",
    "OPTIMIZER_NAMES",
    "PRESETS",
    "SCHEDULES",
    "DataConfig",
    "OptimizerConfig",
    "Scalar",
    "ShardingConfig",
    "TrainConfig",
    "config_diff",
    "config_hash",
    "get_config",
    "hashed_dict",
    "PAPER_PRESETS",
    "smoke",
    "tiny_shapes",
    "to_dict",
]

# ---------------------------------------------------------------------------- CPU presets
# tiny: 2 layers, d=128, byte vocabulary; 16 x 128 tokens per step. AdamW at 3e-3 with a
# short warmup and a 20% WSD cooldown reaches 1.38 nats/byte (2.0 bits/byte) of validation
# loss on the stdlib corpus in 600 steps (measured: 105 s of training on two busy CPU cores).
_TINY = TrainConfig(
    name="tiny",
    model="tiny",
    optimizer=OptimizerConfig(
        name="adamw",
        learning_rate=3e-3,
        weight_decay=0.1,
        b1=0.9,
        b2=0.95,
        schedule="wsd",
        warmup_steps=30,
        cooldown_fraction=0.2,
        grad_clip=1.0,
    ),
    data=DataConfig(corpus="stdlib", batch_size=16, seq_len=128, val_tokens=256 * 2**10),
    steps=600,
    eval_every=100,
    eval_batches=16,
    log_every=10,
    checkpoint_every=200,
)

# Muon on the hidden matrices (Jordan's lr 0.02, momentum 0.95), AdamW at 3e-3 elsewhere.
_MUON = dataclasses.replace(
    _TINY.optimizer, name="muon", learning_rate=2e-2, adam_lr=3e-3, weight_decay=0.0
)
# The seed paper's 'paper' preset (row-norm embedding, centered row-norm head, Muon hidden,
# AdamW vectors); the learning rate is the hidden-matrix one, other groups are multiples.
_SYMMETRIC = dataclasses.replace(
    _TINY.optimizer,
    name="symmetric",
    learning_rate=2e-2,
    weight_decay=1e-3,
    options=(("preset", "paper"),),
)

PRESETS: dict[str, TrainConfig] = {
    "tiny": _TINY,
    "tiny_muon": dataclasses.replace(_TINY, name="tiny_muon", optimizer=_MUON),
    "tiny_symmetric": dataclasses.replace(_TINY, name="tiny_symmetric", optimizer=_SYMMETRIC),
    "tiny_moe": dataclasses.replace(_TINY, name="tiny_moe", model="tiny_moe"),
    "tiny_gpt2": dataclasses.replace(_TINY, name="tiny_gpt2", model="tiny_gpt2"),
    "tiny_gemma3": dataclasses.replace(_TINY, name="tiny_gemma3", model="tiny_gemma3"),
    "tiny_gptoss": dataclasses.replace(_TINY, name="tiny_gptoss", model="tiny_gptoss"),
}


# ---------------------------------------------------------------------------- GPU presets
def _shards_run(
    name: str,
    optimizer: OptimizerConfig,
    *,
    batch_size: int,
    grad_accum: int,
    steps: int,
    eval_every: int,
    eval_batches: int,
    **fields,
) -> TrainConfig:
    """A run of the model preset ``name`` on the token shards ``data/<name>/train_*.bin`` /
    ``val_*.bin``, read in order as 1024-token sequences; logged every 10 steps, checkpointed
    every 1000."""
    data = DataConfig(
        corpus="shards",
        shards=f"data/{name}/train_*.bin",
        val_shards=f"data/{name}/val_*.bin",
        batch_size=batch_size,
        seq_len=1024,
        shuffle=False,
    )
    return TrainConfig(
        name=name,
        model=name,
        optimizer=optimizer,
        data=data,
        steps=steps,
        eval_every=eval_every,
        eval_batches=eval_batches,
        log_every=10,
        checkpoint_every=1000,
        grad_accum=grad_accum,
        **fields,
    )


# nanoGPT's GPT-2 small recipe: ~0.5M tokens per step (16 x 32 x 1024), AdamW 6e-4,
# wd 0.1, b2 0.95, 700 warmup steps, cosine to 10%, 19,073 steps (10B tokens).
PRESETS["gpt2_small"] = _shards_run(
    "gpt2_small",
    OptimizerConfig(
        name="adamw",
        learning_rate=6e-4,
        weight_decay=0.1,
        b1=0.9,
        b2=0.95,
        schedule="cosine",
        warmup_steps=700,
        grad_clip=1.0,
    ),
    batch_size=32,
    grad_accum=16,
    steps=19_073,
    eval_every=250,
    eval_batches=20,
    compute_dtype="bfloat16",
)

# Seed paper (Lau & Su 2026, docs/math/symmetry.md#setup): constant lr then a linear cooldown over
# the last 40% of the steps; Muon 2e-2 (hidden), 'paper' ratios for the other groups; 224 x 1024
# tokens per step (here 14 x 16 micro-batches), 30k steps.
_SEED = OptimizerConfig(
    name="symmetric",
    learning_rate=2e-2,
    weight_decay=1e-3,
    schedule="wsd",
    warmup_steps=0,
    cooldown_fraction=0.4,
    grad_clip=1.0,
    options=(("preset", "qwen3_row"),),
)
PRESETS["qwen3_seed"] = _shards_run(
    "qwen3_seed",
    _SEED,
    batch_size=16,
    grad_accum=14,
    steps=30_000,
    eval_every=500,
    eval_batches=64,
    compute_dtype="bfloat16",
)
# OLMoE-style: Muon 5e-3 on hidden matrices and per-expert, centered row-norm router;
# 160 x 1024 tokens per step (10 x 16).
PRESETS["olmoe_seed"] = _shards_run(
    "olmoe_seed",
    dataclasses.replace(_SEED, learning_rate=5e-3, options=(("preset", "olmoe_row"),)),
    batch_size=16,
    grad_accum=10,
    steps=30_000,
    eval_every=500,
    eval_batches=64,
    compute_dtype="bfloat16",
)

# ---------------------------------------------------------------------------- paper presets
# The released runs (module docstring; README commands of timlautk/equivariant_optimizers).
# family: (optzoo preset, --lr_muon, micro-batches per step of 16 x 1024 tokens,
#          --train_steps, --val_tokens); literal values of the README commands.
_PAPER_RUNS = {
    "qwen3": ("qwen3_row", 2e-2, 14, 30_000, 10_551_296),  # 8 GPUs x 28 sequences
    "gemma3": ("gemma3_row", 2e-2, 9, 50_000, 10_469_376),  # 8 x 18
    "olmoe": ("olmoe_row", 5e-3, 10, 30_000, 10_485_760),  # 8 x 20
    "gptoss": ("gptoss_row", 1e-3, 4, 60_000, 10_485_760),  # 8 x 8
}
PAPER_PRESETS = tuple(f"{f}_paper" for f in _PAPER_RUNS) + ("gptoss_paper_aux",)
_PAPER_TOKENS = 16 * 1024  # per micro-batch: 16 sequences of 1024 tokens

for _family, (_preset, _lr, _accum, _steps, _val_tokens) in _PAPER_RUNS.items():
    assert _val_tokens % _PAPER_TOKENS == 0, _family
    PRESETS[f"{_family}_paper"] = _shards_run(
        f"{_family}_paper",
        OptimizerConfig(
            name="symmetric",
            learning_rate=_lr,
            weight_decay=1e-3,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            schedule="wsd",
            warmup_steps=0,
            cooldown_fraction=0.4,
            grad_clip=None,
            options=(("preset", _preset),),
            group_schedules=(("vectors", "cosine_zero", 100),),
        ),
        batch_size=16,
        grad_accum=_accum,
        steps=_steps,
        eval_every=500,
        eval_batches=_val_tokens // _PAPER_TOKENS,
        seed=42,
        compute_dtype="float32",
        matmul_precision="tensorfloat32",
    )
# gpt-oss with the auxiliary losses of train_gpt-oss_router_metrics.py (README, "With auxiliary
# load-balancing losses and router z-losses").
PRESETS["gptoss_paper_aux"] = dataclasses.replace(
    PRESETS["gptoss_paper"],
    name="gptoss_paper_aux",
    moe_overrides=(("lb_loss_coef", 1e-2), ("z_loss_coef", 1e-3)),
)
del _family, _preset, _lr, _accum, _steps, _val_tokens


def tiny_shapes(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its model shrunk to CPU size (a byte vocabulary, 2 layers, d = 64, 4 heads
    of 16, 4 experts of width 64, top-2, windows of 8 tokens) through ``model_overrides`` /
    ``moe_overrides``; every other setting of the model (norms, QK-norm, sinks, clamped
    SwiGLU, biases, initialization, routing style, auxiliary losses) and of the run stays."""
    mcfg = cfg.model_config()
    shape = dict(
        vocab_size=256,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=1 if mcfg.n_kv_heads == 1 else 2,
        head_dim=16,
        d_ff=128,
        max_seq_len=256,
    )
    if mcfg.sliding_window is not None:
        shape.update(sliding_window=8, global_every=2 if mcfg.global_every else 0)
    overrides = {**dict(cfg.model_overrides), **shape}
    moe = dict(cfg.moe_overrides)
    if mcfg.moe is not None:
        moe.update(n_experts=4, top_k=2, d_expert=64)
    return dataclasses.replace(
        cfg,
        name=cfg.name + "_tiny",
        model_overrides=tuple(overrides.items()),
        moe_overrides=tuple(moe.items()),
    )


# Smoke settings: a few steps of a small batch on the embedded corpus, eval and checkpoint
# exercised twice.
SMOKE_STEPS = 4


def smoke(cfg: TrainConfig) -> TrainConfig:
    """The smoke variant of ``cfg``: ``SMOKE_STEPS`` steps, batch 8 x 32 tokens, one
    validation batch, eval/checkpoint every 2 steps, warmups (also those of
    ``group_schedules``) cut to at most 1 step, the stdlib corpus (256 KiB), no progress bar
    or plots; everything else (model, optimizer) unchanged."""
    opt = cfg.optimizer
    groups = tuple((g, sched, min(w, 1)) for g, sched, w in opt.group_schedules)
    return dataclasses.replace(
        cfg,
        name=cfg.name + "_smoke",
        optimizer=dataclasses.replace(
            opt, warmup_steps=min(opt.warmup_steps, 1), group_schedules=groups
        ),
        data=dataclasses.replace(
            cfg.data,
            corpus="stdlib",
            shards=None,
            val_shards=None,
            corpus_bytes=256 * 2**10,
            batch_size=8,
            seq_len=32,
            val_tokens=8 * 2**10,
        ),
        steps=SMOKE_STEPS,
        eval_every=2,
        eval_batches=1,
        log_every=2,
        checkpoint_every=2,
        grad_accum=1,
        progress=False,
        plots=False,
    )


def get_config(name: str, smoke: bool = False) -> TrainConfig:
    """The preset ``name`` (its smoke variant with ``smoke=True``).

    Raises:
      ValueError: naming the preset if it is unknown.
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    cfg = PRESETS[name]
    return _smoke(cfg) if smoke else cfg


_smoke = smoke
