"""Flax NNX models for the pretraining harness.

One configurable decoder-only :class:`Transformer` (GPT-2 / Qwen3 / Gemma 3 style, dense or
OLMoE / gpt-oss style MoE) built from a frozen :class:`ModelConfig`; named presets in
:data:`PRESETS`; analytic :func:`param_count` and :func:`flops_per_token` for MFU. The
parameter naming contract that routing rules match on is documented in
:mod:`experiments.models.transformer`.
"""

from experiments.models.config import (
    PAPER_PRESETS,
    PRESETS,
    TINY_PRESETS,
    ModelConfig,
    MoEConfig,
    describe,
    flops_per_token,
    get_preset,
    matmul_param_count,
    param_count,
)
from experiments.models.moe import MoE, load_balance_loss, route, router_metrics, router_z_loss
from experiments.models.transformer import (
    Transformer,
    attention_mask,
    lm_loss,
    loss_from_logits,
    param_paths,
    rope,
)

__all__ = [
    "PAPER_PRESETS",
    "PRESETS",
    "TINY_PRESETS",
    "ModelConfig",
    "MoEConfig",
    "MoE",
    "Transformer",
    "attention_mask",
    "build",
    "describe",
    "flops_per_token",
    "get_preset",
    "lm_loss",
    "load_balance_loss",
    "loss_from_logits",
    "matmul_param_count",
    "param_count",
    "param_paths",
    "rope",
    "route",
    "router_metrics",
    "router_z_loss",
]


def build(cfg: ModelConfig, *, seed: int = 0, abstract: bool = False) -> Transformer:
    """``Transformer(cfg, rngs=nnx.Rngs(seed))``; ``abstract=True`` builds it under
    ``nnx.eval_shape`` (shapes and dtypes only, no memory: for the large presets)."""
    from flax import nnx

    if abstract:
        return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(seed)))
    return Transformer(cfg, rngs=nnx.Rngs(seed))
