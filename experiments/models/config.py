"""Model configuration, named presets, and analytic parameter / FLOP counts.

:class:`ModelConfig` is a frozen (hashable) dataclass, so it can be a static argument of a
jitted function and variants are derived with ``dataclasses.replace``. One config type covers
the three dense families and the two MoE router styles used in the seed paper's experiments
(Lau & Su 2026, arXiv:2605.18106; docs/math/symmetry.md#setup):

* **GPT-2** (Radford et al. 2019): LayerNorm with bias, GELU MLP, learned absolute positions,
  biases on every projection, tied embedding / LM head.
* **Qwen3** (Qwen3 technical report, arXiv:2505.09388): RMSNorm, RoPE, grouped-query
  attention, per-head RMSNorm on queries and keys (QK-norm), SwiGLU MLP, untied LM head in the
  seed paper's runs (the released Qwen3-0.6B ties it; both presets exist).
* **Gemma 3** (Gemma 3 technical report, arXiv:2503.19786): GeGLU MLP, "sandwich" norms (an
  RMSNorm before *and* after each sub-layer, the post-norm applied to the sub-layer output
  before the residual add), QK-norm, embeddings multiplied by ``sqrt(d_model)``, very large
  vocabulary, tied or untied head, interleaved local (sliding-window) / global attention.
* **OLMoE** (Muennighoff et al., arXiv:2409.02060) MoE: softmax over all experts, then top-k;
  the selected probabilities are used unnormalized (``renormalize=False``), QK-norm over the
  full projection width.
* **gpt-oss** (OpenAI gpt-oss model card, 2025) MoE: top-k on the router logits (which have
  a bias), then a softmax over the k selected logits (weights sum to one).

gpt-oss's own pieces are options (off in the older presets, on in ``gptoss_paper``):
learned per-head attention sinks (``attn_sinks``), the clamped SwiGLU of its experts
(``MoEConfig.expert_act='clamped_swiglu'``) and expert biases (``MoEConfig.expert_bias``).

What is deliberately *not* modelled (no effect on the parameter blocks the optimizers see,
or only through 1-D leaves): Gemma's ``(1 + scale)`` RMSNorm parameterization (we use
``scale`` initialized to one, which is the same function), Gemma 2's logit soft-capping
(removed in Gemma 3), YaRN, and the zeroed ``padding_idx`` embedding row of the Hugging Face
models (that token never occurs in the data, so its row is never read or updated).

**Paper presets** (``*_paper``): the models of the released runs of Lau & Su 2026
(github.com/timlautk/equivariant_optimizers, ``train_qwen3.py``, ``train_gemma3_1b.py``,
``train_olmoe.py``, ``train_gpt-oss.py``: the Hugging Face config each script builds, at the
README's command-line sizes), initialized as those scripts do (``init_scheme='normal'``:
``N(0, 0.02)`` on every matrix, no depth scaling).

Parameter count (:func:`param_count`) is exact and is checked in the tests against the
abstract ``nnx.eval_shape`` state and against published totals (GPT-2 small 124,439,808;
Qwen3-0.6B 596,049,920; Gemma 3 1B 999,885,952; OLMoE-1B-7B 6,919,161,856).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

__all__ = [
    "MoEConfig",
    "ModelConfig",
    "PRESETS",
    "get_preset",
    "param_count",
    "matmul_param_count",
    "flops_per_token",
]

NormKind = Literal["rmsnorm", "layernorm"]
MLPKind = Literal["swiglu", "geglu", "gelu"]
PosKind = Literal["rope", "learned"]
QKNormKind = Literal["none", "head", "full"]
RoutingKind = Literal["softmax_topk", "topk_softmax"]
DispatchKind = Literal["dense", "ragged"]
ExpertActKind = Literal["swiglu", "clamped_swiglu"]
InitKind = Literal["gpt2", "normal"]


def _check_choice(owner: str, field: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{field}={value!r}; expected one of {tuple(choices)}")


def _check_positive(owner: str, field: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{owner}.{field}={value!r}; expected a positive int")


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """A token-choice mixture-of-experts feed-forward layer (every layer of the model).

    Each expert is a SwiGLU MLP ``down(silu(x W_gate) * (x W_up))``; the expert weights are
    stacked with the experts axis first, ``gate_proj``/``up_proj`` ``(E, d, f)`` and
    ``down_proj`` ``(E, f, d)``, so matrix optimizers treat it as a batch axis.

    Attributes:
      n_experts: ``E``.
      top_k: experts per token ``k``.
      d_expert: hidden width ``f`` of each expert.
      routing: ``"softmax_topk"`` (OLMoE: ``p = softmax(z)`` over all ``E``, keep the ``k``
        largest ``p``, weights = those ``p``) or ``"topk_softmax"`` (gpt-oss: keep the ``k``
        largest logits ``z``, weights = softmax over those ``k`` logits).
      router_bias: add a learned bias to the router logits (gpt-oss).
      renormalize: softmax_topk only: divide the kept probabilities by their sum (Qwen3-MoE's
        ``norm_topk_prob``). OLMoE keeps them unnormalized (their sum is < 1).
      lb_loss_coef: coefficient of the Switch load-balance loss (arXiv:2101.03961, eq. 4).
        The paper's runs use 0 (``router_aux_loss_coef=0.0`` in every released script); its
        gpt-oss auxiliary-loss diagnostics use ``1e-2`` (``train_gpt-oss_router_metrics.py
        --router_aux_loss_coef``).
      z_loss_coef: coefficient of the ST-MoE router z-loss (arXiv:2202.08906, eq. 5); the
        gpt-oss diagnostics use ``1e-3``.
      expert_act: ``"swiglu"`` ``silu(g) * u`` or ``"clamped_swiglu"`` (gpt-oss, Hugging Face
        ``GptOssExperts``): ``g' = min(g, limit)``, ``u' = clip(u, -limit, limit)``,
        ``h = (u' + 1) * g' * sigmoid(alpha g')``.
      swiglu_alpha, swiglu_limit: ``alpha`` (1.702) and ``limit`` (``swiglu_limit=7.0`` in
        the released gpt-oss config) of the clamped form.
      expert_bias: learned biases on each expert's gate, up and down projections (gpt-oss
        ``gate_up_proj_bias`` / ``down_proj_bias``), initialized to zero; leaves
        ``experts/{gate,up,down}_bias/bias`` of shapes ``(E, f)``, ``(E, f)``, ``(E, d)``.
      dispatch: ``"dense"`` evaluates every expert on every token and combines with sparse
        weights (``E/k`` times the useful FLOPs and ``[T, E, f]`` activations);
        ``"ragged"`` sorts the ``T*k`` assignments by expert and uses
        ``jax.lax.ragged_dot`` (useful FLOPs only). Both are exact (no capacity factor, no
        dropped tokens, so a token's output never depends on the rest of the batch).
        Measured (bf16, 8x1024 tokens, one H100, jax 0.11.2): dense is faster everywhere
        tried (32 experts top-8 expert layer: 6 vs 40 ms forward; a 4-layer OLMoE-seed train
        step 107 vs 599 ms) and ragged's backward pass materializes tens of GB (OLMoE-1B-7B,
        2 layers: out of memory; dense 96 ms). On CPU dense is also faster. Hence every
        preset uses dense; ragged is kept as the FLOP-exact reference for other backends.
    """

    n_experts: int = 8
    top_k: int = 2
    d_expert: int = 128
    routing: RoutingKind = "softmax_topk"
    router_bias: bool = False
    renormalize: bool = False
    lb_loss_coef: float = 0.0
    z_loss_coef: float = 0.0
    dispatch: DispatchKind = "dense"
    expert_act: ExpertActKind = "swiglu"
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    expert_bias: bool = False

    def __post_init__(self):
        for f in ("n_experts", "top_k", "d_expert"):
            _check_positive("MoEConfig", f, getattr(self, f))
        for f in ("lb_loss_coef", "z_loss_coef"):
            v = getattr(self, f)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not v >= 0
                or v == float("inf")
            ):
                raise ValueError(f"MoEConfig.{f}={v!r}; expected a finite number >= 0")
        _check_choice("MoEConfig", "expert_act", self.expert_act, ("swiglu", "clamped_swiglu"))
        for f in ("swiglu_alpha", "swiglu_limit"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
                raise ValueError(f"MoEConfig.{f}={v!r}; expected a finite number > 0")
        if self.top_k > self.n_experts:
            raise ValueError(f"MoEConfig.top_k={self.top_k} exceeds n_experts={self.n_experts}")
        _check_choice("MoEConfig", "routing", self.routing, ("softmax_topk", "topk_softmax"))
        _check_choice("MoEConfig", "dispatch", self.dispatch, ("dense", "ragged"))
        if self.renormalize and self.routing != "softmax_topk":
            raise ValueError(
                "MoEConfig.renormalize=True only applies to routing='softmax_topk' "
                "(topk_softmax weights already sum to one)"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer (see the module docstring for the families it covers).

    Attributes:
      vocab_size: ``V``.
      d_model: residual width ``d``.
      n_layers: ``L``.
      n_heads: query heads ``H``.
      n_kv_heads: key/value heads ``K`` (``H % K == 0``; ``K < H`` is grouped-query attention,
        each group of ``H / K`` query heads shares one key/value head).
      head_dim: ``hd``; the attention width ``H * hd`` need not equal ``d`` (Qwen3, Gemma 3).
      d_ff: MLP hidden width ``f`` (ignored when ``moe`` is set).
      max_seq_len: table length of learned positions; also the default sequence length used
        by :func:`flops_per_token`.
      norm: ``"rmsnorm"`` (``x / rms(x) * scale``) or ``"layernorm"`` (with bias).
      norm_eps: epsilon inside the norm.
      mlp: ``"swiglu"`` ``down(silu(x Wg) * x Wu)``, ``"geglu"`` ``down(gelu(x Wg) * x Wu)``
        (tanh GELU) or ``"gelu"`` ``down(gelu(x Wu))`` (GPT-2).
      attn_bias: biases on q/k/v/o projections. mlp_bias: biases on MLP projections.
      positions: ``"rope"`` (rotary, rotate-half convention) or ``"learned"`` (GPT-2).
      rope_theta: RoPE base for global layers; ``rope_local_theta`` for sliding-window layers
        (``None``: same as ``rope_theta``).
      qk_norm: ``"none"``; ``"head"`` RMSNorm of each query/key head over ``hd`` (Qwen3,
        Gemma 3; scales ``(hd,)``); ``"full"`` RMSNorm over the whole projection (OLMoE;
        scales ``(H*hd,)`` / ``(K*hd,)``). Applied before RoPE.
      sandwich_norm: also normalize each sub-layer's *output* before the residual add
        (Gemma 2/3: ``x + post_norm(f(pre_norm(x)))``).
      embed_scale: multiply token embeddings by ``sqrt(d_model)`` (Gemma).
      tie_embeddings: compute logits with the embedding table (no ``lm_head`` parameter).
      sliding_window: if set, local layers attend to the last ``sliding_window`` positions
        only; every ``global_every``-th layer (``(i + 1) % global_every == 0``) is global.
        ``global_every=0`` makes every layer local.
      moe: a :class:`MoEConfig` replaces every MLP by an MoE layer.
      dtype: compute dtype (``"float32"`` or ``"bfloat16"``); param_dtype: storage dtype.
        Attention softmax, norms, router and logits are computed in float32 either way.
      init_std: std of the normal initializer of every matrix.
      init_scheme: ``"gpt2"`` (default): the residual output projections (``o_proj``,
        ``down_proj``, expert ``down_proj``) use ``init_std / sqrt(2 L)`` (GPT-2 paper, §2.3),
        every other matrix ``init_std``, router bias zero. ``"normal"``: the released runs
        of Lau & Su (their ``reinit_for_lm`` plus the Hugging Face ``_init_weights`` of
        the modules it does not touch): ``N(0, init_std^2)`` for every matrix, expert tensor,
        attention sink and the gpt-oss router bias. Other biases zero, norm scales one.
      attn_sinks: a learned sink logit per query head (gpt-oss): the softmax runs over the
        keys plus one extra logit ``s_h`` whose probability is dropped, so a head can attend
        "nowhere" (``layers/<i>/attn/sinks`` ``(H,)``).
      name: preset name, informational only.
    """

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 32
    d_ff: int = 384
    max_seq_len: int = 1024
    norm: NormKind = "rmsnorm"
    norm_eps: float = 1e-6
    mlp: MLPKind = "swiglu"
    attn_bias: bool = False
    mlp_bias: bool = False
    positions: PosKind = "rope"
    rope_theta: float = 10_000.0
    rope_local_theta: float | None = None
    qk_norm: QKNormKind = "head"
    sandwich_norm: bool = False
    embed_scale: bool = False
    tie_embeddings: bool = False
    sliding_window: int | None = None
    global_every: int = 0
    moe: MoEConfig | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    init_std: float = 0.02
    init_scheme: InitKind = "gpt2"
    attn_sinks: bool = False
    name: str = "custom"

    def __post_init__(self):
        for f in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "d_ff",
            "max_seq_len",
        ):
            _check_positive("ModelConfig", f, getattr(self, f))
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelConfig.n_heads={self.n_heads} must be a multiple of "
                f"n_kv_heads={self.n_kv_heads} (grouped-query attention)"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even for RoPE")
        _check_choice("ModelConfig", "norm", self.norm, ("rmsnorm", "layernorm"))
        _check_choice("ModelConfig", "mlp", self.mlp, ("swiglu", "geglu", "gelu"))
        _check_choice("ModelConfig", "positions", self.positions, ("rope", "learned"))
        _check_choice("ModelConfig", "qk_norm", self.qk_norm, ("none", "head", "full"))
        _check_choice("ModelConfig", "dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _check_choice("ModelConfig", "param_dtype", self.param_dtype, ("float32", "bfloat16"))
        _check_choice("ModelConfig", "init_scheme", self.init_scheme, ("gpt2", "normal"))
        if not isinstance(self.attn_sinks, bool):
            raise ValueError(f"ModelConfig.attn_sinks={self.attn_sinks!r}; expected a bool")
        if self.sliding_window is not None:
            _check_positive("ModelConfig", "sliding_window", self.sliding_window)
        if self.global_every < 0:
            raise ValueError(f"ModelConfig.global_every={self.global_every}; expected >= 0")
        if self.moe is not None and not isinstance(self.moe, MoEConfig):
            raise TypeError(
                f"ModelConfig.moe has type {type(self.moe).__name__}; expected MoEConfig or None"
            )

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    def layer_is_global(self, i: int) -> bool:
        """Whether layer ``i`` attends over the full causal context (no sliding window)."""
        if self.sliding_window is None:
            return True
        return self.global_every > 0 and (i + 1) % self.global_every == 0


def residual_init_std(cfg: ModelConfig) -> float:
    """Std of the projections that write into the residual stream (``o_proj``, ``down_proj``,
    expert ``down_proj``): ``init_std / sqrt(2 L)`` under ``init_scheme='gpt2'``, ``init_std``
    under ``'normal'``."""
    if cfg.init_scheme == "normal":
        return cfg.init_std
    return cfg.init_std / math.sqrt(2 * cfg.n_layers)


# ----------------------------------------------------------------------------- counting


def _norm_params(cfg: ModelConfig, width: int) -> int:
    return width * (2 if cfg.norm == "layernorm" else 1)


def _attn_matmul(cfg: ModelConfig) -> int:
    d, h, k, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    return d * h * hd + 2 * d * k * hd + h * hd * d


def _ffn_matmul(cfg: ModelConfig, active: bool) -> int:
    d = cfg.d_model
    if cfg.moe is not None:
        m = cfg.moe
        experts = m.top_k if active else m.n_experts
        return d * m.n_experts + experts * 3 * d * m.d_expert
    return (2 if cfg.mlp == "gelu" else 3) * d * cfg.d_ff


def _expert_bias_params(cfg: ModelConfig, active: bool) -> int:
    m = cfg.moe
    if m is None or not m.expert_bias:
        return 0
    return (m.top_k if active else m.n_experts) * (2 * m.d_expert + cfg.d_model)


def _layer_vector_params(cfg: ModelConfig) -> int:
    d, h, k, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    n = (4 if cfg.sandwich_norm else 2) * _norm_params(cfg, d)
    if cfg.qk_norm == "head":
        n += 2 * hd
    elif cfg.qk_norm == "full":
        n += (h + k) * hd
    if cfg.attn_bias:
        n += h * hd + 2 * k * hd + d
    if cfg.attn_sinks:
        n += h
    if cfg.moe is not None:
        n += cfg.moe.n_experts if cfg.moe.router_bias else 0
    elif cfg.mlp_bias:
        n += (1 if cfg.mlp == "gelu" else 2) * cfg.d_ff + d
    return n


def param_count(cfg: ModelConfig, *, active: bool = False) -> int:
    """Exact number of parameters of ``Transformer(cfg)``.

    ``N = V d [embed] + d V [untied head] + S d [learned positions, S = max_seq_len]
    + L (attn + ffn + vectors) + final norm``, with ``attn = d H hd + 2 d K hd + H hd d``,
    dense ``ffn = 3 d f`` (gated) or ``2 d f`` (GELU), MoE ``ffn = d E + E 3 d f_e``, and
    vectors = norm scales (+ biases), QK-norm scales, projection biases, router bias.

    Args:
      cfg: the model configuration.
      active: count only the ``top_k`` experts a token uses (MoE "active parameters").
    """
    d, v = cfg.d_model, cfg.vocab_size
    n = v * d
    if not cfg.tie_embeddings:
        n += d * v
    if cfg.positions == "learned":
        n += cfg.max_seq_len * d
    per_layer = (
        _attn_matmul(cfg)
        + _ffn_matmul(cfg, active)
        + _layer_vector_params(cfg)
        + _expert_bias_params(cfg, active)
    )
    return n + cfg.n_layers * per_layer + _norm_params(cfg, d)


def matmul_param_count(cfg: ModelConfig) -> int:
    """Weights a token is multiplied by in one forward pass (the ``N`` of the 6N rule).

    Attention q/k/v/o, the dense MLP or the router plus the ``top_k`` active experts, and the
    LM head ``d V`` (counted whether tied or not: the product is computed either way).
    Excluded: the embedding lookup and learned positions (gathers, not matmuls), norms and
    biases (O(d) work per token).
    """
    layer = _attn_matmul(cfg) + _ffn_matmul(cfg, active=True)
    return cfg.n_layers * layer + cfg.d_model * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token (forward + backward): ``6 N + 12 L H hd T``.

    ``N`` = :func:`matmul_param_count` (2 FLOPs per weight per token forward, 4 backward).
    The attention term counts ``Q K^T`` and ``P V`` (``2 * 2 * H hd T`` forward FLOPs per
    token per layer, times 3 for forward + backward) over the full ``T x T`` score matrix, as
    in PaLM's MFU definition (Chowdhery et al. 2022, arXiv:2204.02311, App. B); causal
    masking and sliding windows are *not* discounted, so MFU is comparable across papers.

    Args:
      cfg: the model configuration.
      seq_len: context length ``T`` (default ``cfg.max_seq_len``).
    """
    t = cfg.max_seq_len if seq_len is None else seq_len
    return 6 * matmul_param_count(cfg) + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * t


# ----------------------------------------------------------------------------- presets

_QWEN3 = dict(
    norm="rmsnorm",
    mlp="swiglu",
    positions="rope",
    qk_norm="head",
    rope_theta=1_000_000.0,
    tie_embeddings=False,
)
_GPT2 = dict(
    norm="layernorm",
    norm_eps=1e-5,
    mlp="gelu",
    positions="learned",
    qk_norm="none",
    attn_bias=True,
    mlp_bias=True,
    tie_embeddings=True,
)
_GEMMA3 = dict(
    norm="rmsnorm",
    mlp="geglu",
    positions="rope",
    qk_norm="head",
    sandwich_norm=True,
    embed_scale=True,
    rope_theta=1_000_000.0,
    rope_local_theta=10_000.0,
    global_every=6,
)
_OLMOE = dict(
    norm="rmsnorm",
    norm_eps=1e-5,
    positions="rope",
    qk_norm="full",
    rope_theta=10_000.0,
    tie_embeddings=False,
)
_GPTOSS = dict(
    norm="rmsnorm",
    norm_eps=1e-5,
    positions="rope",
    qk_norm="none",
    attn_bias=True,
    rope_theta=150_000.0,
    sliding_window=128,
    global_every=2,
    tie_embeddings=False,
)

PRESETS: dict[str, ModelConfig] = {
    # ---- tiny: byte vocabulary (256), trained on CPU in the tests and smoke runs.
    "tiny": ModelConfig(
        name="tiny",
        vocab_size=256,
        d_model=128,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=32,
        d_ff=384,
        max_seq_len=256,
        **{**_QWEN3, "rope_theta": 10_000.0},
    ),
    "tiny_moe": ModelConfig(
        name="tiny_moe",
        vocab_size=256,
        d_model=128,
        n_layers=2,
        n_heads=4,
        n_kv_heads=4,
        head_dim=32,
        d_ff=128,
        max_seq_len=256,
        moe=MoEConfig(
            n_experts=8,
            top_k=2,
            d_expert=64,
            routing="softmax_topk",
            lb_loss_coef=0.01,
            z_loss_coef=0.001,
        ),
        **_OLMOE,
    ),
    "tiny_gpt2": ModelConfig(
        name="tiny_gpt2",
        vocab_size=256,
        d_model=128,
        n_layers=2,
        n_heads=4,
        n_kv_heads=4,
        head_dim=32,
        d_ff=512,
        max_seq_len=256,
        **_GPT2,
    ),
    "tiny_gemma3": ModelConfig(
        name="tiny_gemma3",
        vocab_size=256,
        d_model=128,
        n_layers=2,
        n_heads=4,
        n_kv_heads=1,
        head_dim=32,
        d_ff=384,
        max_seq_len=256,
        tie_embeddings=True,
        **{**_GEMMA3, "sliding_window": 32, "global_every": 2},
    ),
    "tiny_gptoss": ModelConfig(
        name="tiny_gptoss",
        vocab_size=256,
        d_model=128,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=32,
        d_ff=128,
        max_seq_len=256,
        moe=MoEConfig(n_experts=4, top_k=2, d_expert=128, routing="topk_softmax", router_bias=True),
        **{**_GPTOSS, "sliding_window": 32},
    ),
    # ---- published models (exact parameter totals are tested).
    "gpt2_small": ModelConfig(
        name="gpt2_small",
        vocab_size=50257,
        d_model=768,
        n_layers=12,
        n_heads=12,
        n_kv_heads=12,
        head_dim=64,
        d_ff=3072,
        max_seq_len=1024,
        **_GPT2,
    ),
    "qwen3_0p6b": ModelConfig(
        name="qwen3_0p6b",
        vocab_size=151936,
        d_model=1024,
        n_layers=28,
        n_heads=16,
        n_kv_heads=8,
        head_dim=128,
        d_ff=3072,
        max_seq_len=4096,
        **{**_QWEN3, "tie_embeddings": True},
    ),
    "gemma3_1b": ModelConfig(
        name="gemma3_1b",
        vocab_size=262144,
        d_model=1152,
        n_layers=26,
        n_heads=4,
        n_kv_heads=1,
        head_dim=256,
        d_ff=6912,
        max_seq_len=4096,
        tie_embeddings=True,
        sliding_window=512,
        **_GEMMA3,
    ),
    "olmoe_1b7b": ModelConfig(
        name="olmoe_1b7b",
        vocab_size=50304,
        d_model=2048,
        n_layers=16,
        n_heads=16,
        n_kv_heads=16,
        head_dim=128,
        d_ff=1024,
        max_seq_len=4096,
        moe=MoEConfig(
            n_experts=64,
            top_k=8,
            d_expert=1024,
            routing="softmax_topk",
            lb_loss_coef=0.01,
            z_loss_coef=0.001,
        ),
        **_OLMOE,
    ),
    # ---- the seed paper's runs (docs/math/symmetry.md#setup; untied heads, seq 1024).
    "qwen3_seed": ModelConfig(
        name="qwen3_seed",
        vocab_size=151936,
        d_model=1024,
        n_layers=20,
        n_heads=16,
        n_kv_heads=8,
        head_dim=128,
        d_ff=3072,
        max_seq_len=1024,
        **_QWEN3,
    ),
    "gemma3_seed": ModelConfig(
        name="gemma3_seed",
        vocab_size=262144,
        d_model=1152,
        n_layers=18,
        n_heads=4,
        n_kv_heads=1,
        head_dim=256,
        d_ff=6912,
        max_seq_len=1024,
        tie_embeddings=False,
        sliding_window=512,
        **_GEMMA3,
    ),
    "olmoe_seed": ModelConfig(
        name="olmoe_seed",
        vocab_size=50304,
        d_model=2048,
        n_layers=12,
        n_heads=16,
        n_kv_heads=16,
        head_dim=128,
        d_ff=1024,
        max_seq_len=1024,
        moe=MoEConfig(n_experts=32, top_k=8, d_expert=1024, routing="softmax_topk"),
        **_OLMOE,
    ),
    "gptoss_seed": ModelConfig(
        name="gptoss_seed",
        vocab_size=201088,
        d_model=2048,
        n_layers=12,
        n_heads=64,
        n_kv_heads=8,
        head_dim=64,
        d_ff=2048,
        max_seq_len=1024,
        moe=MoEConfig(
            n_experts=16, top_k=4, d_expert=2048, routing="topk_softmax", router_bias=True
        ),
        **_GPTOSS,
    ),
}

# ---- the released runs of Lau & Su 2026 (github.com/timlautk/equivariant_optimizers): the seed
# shapes with the scripts' initialization (every matrix N(0, 0.02): ``reinit_for_lm`` /
# ``maybe_reinit_for_lm`` plus Hugging Face ``_init_weights``) and, for gpt-oss, the pieces of
# ``GptOssConfig(..., swiglu_limit=7.0)``: attention sinks, clamped SwiGLU, expert biases.
# No auxiliary losses (``router_aux_loss_coef=0.0``, ``output_router_logits=False``).
for _family in ("qwen3", "gemma3", "olmoe", "gptoss"):
    _seed = PRESETS[f"{_family}_seed"]
    _extra: dict = {}
    if _family == "gptoss":
        _extra = dict(
            attn_sinks=True,
            moe=dataclasses.replace(
                _seed.moe,
                expert_act="clamped_swiglu",
                swiglu_alpha=1.702,
                swiglu_limit=7.0,
                expert_bias=True,
            ),
        )
    PRESETS[f"{_family}_paper"] = dataclasses.replace(
        _seed, name=f"{_family}_paper", init_scheme="normal", **_extra
    )
del _family, _seed, _extra

TINY_PRESETS = ("tiny", "tiny_moe", "tiny_gpt2", "tiny_gemma3", "tiny_gptoss")
PAPER_PRESETS = ("qwen3_paper", "gemma3_paper", "olmoe_paper", "gptoss_paper")


def get_preset(name: str, **overrides) -> ModelConfig:
    """Returns ``PRESETS[name]`` with ``overrides`` applied by ``dataclasses.replace``."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


def describe(cfg: ModelConfig) -> str:
    """One line: name, total / active parameters and training FLOPs per token."""
    n = param_count(cfg)
    s = f"{cfg.name}: {n / 1e6:.2f}M params"
    if cfg.moe is not None:
        s += f" ({param_count(cfg, active=True) / 1e6:.2f}M active)"
    return s + f", {flops_per_token(cfg) / 1e6:.1f} MFLOP/token at T={cfg.max_seq_len}"
