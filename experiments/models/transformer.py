"""Flax NNX decoder-only transformer (GPT-2 / Qwen3 / Gemma 3 style, dense or MoE).

``Transformer(cfg, rngs=...)(tokens [B, S] int) -> (logits [B, S, V] float32, aux dict)``.
``aux`` is empty for dense models; for MoE models it holds ``moe/lb_loss``,
``moe/z_loss`` (means over layers, with gradient), ``moe/aux_loss`` (the coefficient-
weighted sum to add to the LM loss) and per-layer router metrics ``router/<i>/<metric>``
(``load_cv``, ``load_entropy``, ``top_expert_load``, ``prob_cv``, ``prob_entropy``,
``token_entropy``, ``dead_expert_fraction``, ``logit_mean``, ``logit_std``, ``logit_rms``,
``logit_max_abs``, ``lb_loss``, ``z_loss``; see :mod:`experiments.models.moe`) and the
per-expert loads ``router/<i>/expert_load`` ``[E]`` (dropped from the training metrics by
:func:`loss_from_logits`; the harness averages them over the validation set).
:func:`lm_loss` does the addition.

Block (pre-norm; ``sandwich_norm`` adds the bracketed post-norms, Gemma 2/3)::

    h = x + [post_attn_norm](attn(attn_norm(x)))
    y = h + [post_mlp_norm](mlp_or_moe(mlp_norm(h)))

Attention: ``q = x Wq`` split into ``H`` heads of ``hd``, ``k, v`` into ``K`` heads; optional
QK-norm, then RoPE (rotate-half form, ``theta_i = base^(-2i/hd)``, Su et al. 2021,
arXiv:2104.09864); query head ``h`` uses key/value head ``h // (H/K)`` (GQA, Ainslie et al.
2023, arXiv:2305.13245); ``softmax(q k^T / sqrt(hd) + M) v`` in float32 with an explicit
additive mask ``M`` (causal; local layers also mask keys more than ``sliding_window - 1``
positions back). With ``attn_sinks`` (gpt-oss) head ``h`` has a learned logit ``s_h``
appended to every query's row of scores: ``p = softmax([q k^T / sqrt(hd) + M, s_h])`` and the
sink's share is dropped, so the kept weights sum to ``1 - p_sink < 1`` (Hugging Face
``GptOssAttention``; Xiao et al. 2023, arXiv:2309.17453).

Parameter naming contract (the '/'-joined path of each leaf of ``nnx.state(model,
nnx.Param)``, as listed by :func:`param_paths`; shapes in Flax ``(fan_in, fan_out)`` layout)::

    embed/embedding                          (V, d)
    pos_embed/embedding                      (S_max, d)          positions="learned" only
    lm_head/kernel                           (d, V)              absent when tied
    final_norm/scale [, final_norm/bias]     (d,)                bias for LayerNorm only
    layers/<i>/attn_norm/scale [, /bias]     (d,)
    layers/<i>/mlp_norm/scale [, /bias]      (d,)                also in front of an MoE
    layers/<i>/post_attn_norm/scale          (d,)                sandwich_norm only
    layers/<i>/post_mlp_norm/scale           (d,)                sandwich_norm only
    layers/<i>/attn/q_proj/kernel            (d, H*hd)           [+ /bias (H*hd,)]
    layers/<i>/attn/k_proj/kernel            (d, K*hd)           [+ /bias (K*hd,)]
    layers/<i>/attn/v_proj/kernel            (d, K*hd)           [+ /bias (K*hd,)]
    layers/<i>/attn/o_proj/kernel            (H*hd, d)           [+ /bias (d,)]
    layers/<i>/attn/q_norm/scale             (hd,) or (H*hd,)    qk_norm="head" / "full"
    layers/<i>/attn/k_norm/scale             (hd,) or (K*hd,)
    layers/<i>/attn/sinks                    (H,)                attn_sinks only
    layers/<i>/mlp/gate_proj/kernel          (d, f)              swiglu / geglu only
    layers/<i>/mlp/up_proj/kernel            (d, f)              [+ /bias (f,)]
    layers/<i>/mlp/down_proj/kernel          (f, d)              [+ /bias (d,)]
    layers/<i>/moe/router/kernel             (d, E)              [+ router/bias (E,)]
    layers/<i>/moe/experts/gate_proj         (E, d, f)
    layers/<i>/moe/experts/up_proj           (E, d, f)
    layers/<i>/moe/experts/down_proj         (E, f, d)
    layers/<i>/moe/experts/gate_bias/bias    (E, f)              MoEConfig.expert_bias only
    layers/<i>/moe/experts/up_bias/bias      (E, f)
    layers/<i>/moe/experts/down_bias/bias    (E, d)

The GPT-2 MLP (``fc``/``proj`` in its checkpoints) uses the same ``up_proj``/``down_proj``
names, so one routing rule covers every family. Flax 0.12 note: flattening an
``nnx.State`` with ``jax.tree_util`` (what ``nnx.Optimizer`` hands an optax transform) yields
key paths with a trailing ``value`` entry (``layers/0/attn/q_proj/kernel/value``); the
contract paths are those without it (``nnx.to_flat_state``).

Initialization (``init_scheme``): every matrix (embeddings, projections, router, experts,
head) is ``N(0, init_std^2)``; with ``"gpt2"`` (the default) the projections that write into
the residual stream (``o_proj``, ``down_proj``, expert ``down_proj``) use
``init_std / sqrt(2 L)`` instead (GPT-2 paper §2.3; nanoGPT); ``"normal"`` (the released runs
of Lau & Su) keeps ``init_std`` for them too and also draws attention sinks and the router
bias from ``N(0, init_std^2)``, as Hugging Face ``GptOssPreTrainedModel._init_weights`` does.
Other biases are zero and norm scales one.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.models.config import ModelConfig, residual_init_std
from experiments.models.moe import MoE

__all__ = [
    "Transformer",
    "Norm",
    "Attention",
    "MLP",
    "Block",
    "rope",
    "attention_mask",
    "lm_loss",
    "loss_from_logits",
    "param_paths",
]


class Norm(nnx.Module):
    """RMSNorm ``x / sqrt(mean(x^2) + eps) * scale`` (Zhang & Sennrich 2019) or LayerNorm
    ``(x - mean) / sqrt(var + eps) * scale + bias`` (Ba et al. 2016), over the last axis,
    computed in float32 and returned in ``dtype``."""

    def __init__(self, width: int, kind: str, eps: float, dtype, param_dtype):
        self.scale = nnx.Param(jnp.ones((width,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((width,), param_dtype)) if kind == "layernorm" else None
        self.kind = kind
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        if self.kind == "layernorm":
            x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        y = y * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding, rotate-half convention (arXiv:2104.09864).

    For ``x [..., S, heads, hd]`` and integer ``positions [S]``: with ``x = (x1, x2)`` the two
    halves of the last axis and angles ``a_{s,i} = positions_s * theta^(-2i/hd)``,
    ``rope(x) = (x1 cos a - x2 sin a, x2 cos a + x1 sin a)``. The dot product of a rotated
    query at position m and key at n depends on m - n only.
    """
    hd = x.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, hd // 2, dtype=jnp.float32) * 2.0 / hd)
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [S, hd/2]
    cos = jnp.cos(angles)[:, None, :]
    sin = jnp.sin(angles)[:, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : hd // 2], x32[..., hd // 2 :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def attention_mask(seq_len: int, window: int | None = None) -> jax.Array:
    """Boolean ``[S, S]`` mask, True where query ``i`` may attend key ``j``: ``j <= i`` and,
    with a window, ``i - j < window``."""
    i = np.arange(seq_len)[:, None]
    j = np.arange(seq_len)[None, :]
    ok = j <= i
    if window is not None:
        ok = ok & (i - j < window)
    return jnp.asarray(ok)


def _linear(
    cfg: ModelConfig, fan_in: int, fan_out: int, bias: bool, std: float, rngs: nnx.Rngs
) -> nnx.Linear:
    return nnx.Linear(
        fan_in,
        fan_out,
        use_bias=bias,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=jax.nn.initializers.normal(std),
        bias_init=jax.nn.initializers.zeros,
        rngs=rngs,
    )


def _norm(cfg: ModelConfig, width: int, kind: str | None = None) -> Norm:
    return Norm(
        width, kind or cfg.norm, cfg.norm_eps, jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    )


class Attention(nnx.Module):
    """Multi-head / grouped-query causal self-attention (see the module docstring)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        d, h, k, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        std_out = residual_init_std(cfg)
        self.q_proj = _linear(cfg, d, h * hd, cfg.attn_bias, cfg.init_std, rngs)
        self.k_proj = _linear(cfg, d, k * hd, cfg.attn_bias, cfg.init_std, rngs)
        self.v_proj = _linear(cfg, d, k * hd, cfg.attn_bias, cfg.init_std, rngs)
        self.o_proj = _linear(cfg, h * hd, d, cfg.attn_bias, std_out, rngs)
        if cfg.qk_norm == "head":
            self.q_norm = _norm(cfg, hd, "rmsnorm")
            self.k_norm = _norm(cfg, hd, "rmsnorm")
        elif cfg.qk_norm == "full":
            self.q_norm = _norm(cfg, h * hd, "rmsnorm")
            self.k_norm = _norm(cfg, k * hd, "rmsnorm")
        else:
            self.q_norm = self.k_norm = None
        if cfg.attn_sinks:  # zero under "gpt2" (no published rule), N(0, std^2) under "normal"
            init = (
                jax.nn.initializers.normal(cfg.init_std)
                if cfg.init_scheme == "normal"
                else jax.nn.initializers.zeros
            )
            self.sinks = nnx.Param(init(rngs.params(), (h,), jnp.dtype(cfg.param_dtype)))
        else:
            self.sinks = None
        self.qk_norm = cfg.qk_norm
        self.n_heads, self.n_kv_heads, self.head_dim = h, k, hd
        self.use_rope = cfg.positions == "rope"
        is_global = cfg.layer_is_global(layer)
        self.window = None if is_global else cfg.sliding_window
        local_theta = cfg.rope_local_theta if cfg.rope_local_theta is not None else cfg.rope_theta
        self.theta = cfg.rope_theta if is_global else local_theta

    def __call__(self, x: jax.Array) -> jax.Array:
        b, s, _ = x.shape
        h, kv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.reshape(b, s, h, hd)
        k = k.reshape(b, s, kv, hd)
        v = v.reshape(b, s, kv, hd)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.use_rope:
            pos = jnp.arange(s)
            q, k = rope(q, pos, self.theta), rope(k, pos, self.theta)
        q = q.reshape(b, s, kv, h // kv, hd)
        scores = jnp.einsum("bqkgh,bskh->bkgqs", q, k, preferred_element_type=jnp.float32)
        scores = scores.astype(jnp.float32) / math.sqrt(hd)
        mask = attention_mask(s, self.window)
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        if self.sinks is None:
            probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        else:
            # query head h = kv_head * (H/K) + g, the order of q.reshape(b, s, kv, H/K, hd)
            sink = self.sinks[...].astype(jnp.float32).reshape(kv, h // kv)
            sink = jnp.broadcast_to(sink[None, :, :, None, None], (b, kv, h // kv, s, 1))
            probs = jax.nn.softmax(jnp.concatenate([scores, sink], axis=-1), axis=-1)
            probs = probs[..., :-1].astype(v.dtype)
        out = jnp.einsum("bkgqs,bskh->bqkgh", probs, v).reshape(b, s, h * hd)
        return self.o_proj(out)


class MLP(nnx.Module):
    """Gated ``down(act(x gate) * (x up))`` (SwiGLU: silu, GeGLU: tanh-GELU; Shazeer 2020,
    arXiv:2002.05202) or plain ``down(gelu(x up))`` (GPT-2)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        std_out = residual_init_std(cfg)
        self.kind = cfg.mlp
        self.gate_proj = (
            _linear(cfg, d, f, cfg.mlp_bias, cfg.init_std, rngs) if cfg.mlp != "gelu" else None
        )
        self.up_proj = _linear(cfg, d, f, cfg.mlp_bias, cfg.init_std, rngs)
        self.down_proj = _linear(cfg, f, d, cfg.mlp_bias, std_out, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "swiglu":
            h = jax.nn.silu(self.gate_proj(x)) * self.up_proj(x)
        elif self.kind == "geglu":
            h = jax.nn.gelu(self.gate_proj(x), approximate=True) * self.up_proj(x)
        else:
            h = jax.nn.gelu(self.up_proj(x), approximate=True)
        return self.down_proj(h)


class Block(nnx.Module):
    """One pre-norm (optionally sandwich-norm) transformer block; returns ``(x, aux)``."""

    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        self.attn_norm = _norm(cfg, cfg.d_model)
        self.attn = Attention(cfg, layer, rngs=rngs)
        self.mlp_norm = _norm(cfg, cfg.d_model)
        if cfg.moe is not None:
            self.moe = MoE(cfg, rngs=rngs)
            self.mlp = None
        else:
            self.mlp = MLP(cfg, rngs=rngs)
            self.moe = None
        if cfg.sandwich_norm:
            self.post_attn_norm = _norm(cfg, cfg.d_model)
            self.post_mlp_norm = _norm(cfg, cfg.d_model)
        else:
            self.post_attn_norm = self.post_mlp_norm = None

    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict]:
        a = self.attn(self.attn_norm(x))
        if self.post_attn_norm is not None:
            a = self.post_attn_norm(a)
        x = x + a
        aux = {}
        if self.moe is not None:
            m, aux = self.moe(self.mlp_norm(x))
        else:
            m = self.mlp(self.mlp_norm(x))
        if self.post_mlp_norm is not None:
            m = self.post_mlp_norm(m)
        return x + m, aux


class Transformer(nnx.Module):
    """Decoder-only language model built from a :class:`ModelConfig`.

    Example::

        cfg = PRESETS["tiny"]
        model = Transformer(cfg, rngs=nnx.Rngs(0))
        logits, aux = model(jnp.zeros((2, 16), jnp.int32))   # logits [2, 16, 256] float32
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        init = jax.nn.initializers.normal(cfg.init_std)
        self.embed = nnx.Embed(
            cfg.vocab_size, cfg.d_model, dtype=dt, param_dtype=pdt, embedding_init=init, rngs=rngs
        )
        if cfg.positions == "learned":
            self.pos_embed = nnx.Embed(
                cfg.max_seq_len,
                cfg.d_model,
                dtype=dt,
                param_dtype=pdt,
                embedding_init=init,
                rngs=rngs,
            )
        else:
            self.pos_embed = None
        self.layers = nnx.List([Block(cfg, i, rngs=rngs) for i in range(cfg.n_layers)])
        self.final_norm = _norm(cfg, cfg.d_model)
        self.lm_head = (
            None
            if cfg.tie_embeddings
            else _linear(cfg, cfg.d_model, cfg.vocab_size, False, cfg.init_std, rngs)
        )

    def __call__(self, tokens: jax.Array) -> tuple[jax.Array, dict]:
        cfg = self.cfg
        s = tokens.shape[-1]
        x = self.embed(tokens)
        if cfg.embed_scale:
            x = x * jnp.asarray(math.sqrt(cfg.d_model), x.dtype)
        if self.pos_embed is not None:
            if s > cfg.max_seq_len:
                raise ValueError(
                    f"sequence length {s} exceeds ModelConfig.max_seq_len="
                    f"{cfg.max_seq_len} of the learned position table"
                )
            x = x + self.pos_embed(jnp.arange(s))
        layer_aux = []
        for block in self.layers:
            x, aux = block(x)
            layer_aux.append(aux)
        x = self.final_norm(x)
        if self.lm_head is None:
            logits = self.embed.attend(x)
        else:
            logits = self.lm_head(x)
        return logits.astype(jnp.float32), _collect_aux(cfg, layer_aux)


#: Suffix of the per-expert (``[E]``) aux entries ``router/<i>/expert_load``: returned by the
#: model for validation statistics, left out of the training metrics by
#: :func:`loss_from_logits`.
VECTOR_AUX = "/expert_load"


def _collect_aux(cfg: ModelConfig, layer_aux: list[dict]) -> dict:
    if cfg.moe is None:
        return {}
    out = {}
    for i, aux in enumerate(layer_aux):
        for name, value in aux.items():
            out[f"router/{i}/{name}"] = jax.lax.stop_gradient(value)
    lb = jnp.mean(jnp.stack([a["lb_loss"] for a in layer_aux]))
    z = jnp.mean(jnp.stack([a["z_loss"] for a in layer_aux]))
    out["moe/lb_loss"] = lb
    out["moe/z_loss"] = z
    out["moe/aux_loss"] = cfg.moe.lb_loss_coef * lb + cfg.moe.z_loss_coef * z
    return out


def loss_from_logits(logits: jax.Array, aux: dict, targets: jax.Array) -> tuple[jax.Array, dict]:
    """The loss of :func:`lm_loss` from an existing forward pass ``(logits, aux)``."""
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))
    metrics = {"ce": ce, **{k: v for k, v in aux.items() if not k.endswith(VECTOR_AUX)}}
    loss = ce + aux["moe/aux_loss"] if "moe/aux_loss" in aux else ce
    return loss, metrics


def lm_loss(model: Transformer, inputs: jax.Array, targets: jax.Array) -> tuple[jax.Array, dict]:
    """Mean next-token cross-entropy plus the weighted MoE auxiliary losses.

    ``loss = mean_{b,s} -log softmax(logits[b, s])[targets[b, s]] + aux_loss`` with
    ``aux_loss = lb_coef * L_lb + z_coef * L_z`` (zero for dense models).

    Returns:
      ``(loss, metrics)``; metrics has ``ce`` and, for MoE models, every entry of the
      model's aux dict.
    """
    logits, aux = model(inputs)
    return loss_from_logits(logits, aux, targets)


def param_paths(model_or_state) -> dict[str, tuple[int, ...]]:
    """``{'/'-joined parameter path: shape}`` of a model (or an ``nnx.State``), in the
    order of ``nnx.to_flat_state``. Works on ``nnx.eval_shape`` models."""
    state = (
        model_or_state
        if isinstance(model_or_state, nnx.State)
        else nnx.state(model_or_state, nnx.Param)
    )
    return {"/".join(str(k) for k in path): tuple(v.shape) for path, v in nnx.to_flat_state(state)}
