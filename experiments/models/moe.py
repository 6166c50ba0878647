"""Token-choice mixture-of-experts layer: routing, auxiliary losses and router metrics.

For tokens ``x_t in R^d`` (t = 1..T, batch and time flattened) the router computes logits
``z_t = x_t W_r (+ b)`` with ``W_r`` of shape ``(d, E)`` (Flax layout: experts are the
*columns*) and, for both router styles, the full distribution ``p_t = softmax(z_t)``.

Routing styles (``MoEConfig.routing``):

* ``"softmax_topk"`` (OLMoE, arXiv:2409.02060 §2): ``S_t = top-k indices of p_t``, weights
  ``w_te = p_te`` for ``e in S_t``. The weights sum to ``sum_{e in S_t} p_te < 1`` (unless
  the distribution is concentrated on ``k`` experts); with ``renormalize=True`` they are
  divided by that sum (Qwen3-MoE / ``norm_topk_prob``).
* ``"topk_softmax"`` (gpt-oss): ``S_t = top-k indices of z_t`` (the same set as above when
  there is no bias, since softmax is monotone), weights ``w_t = softmax(z_t[S_t])`` over the
  k kept logits only, so they always sum to one and are larger than OLMoE's.

Both are invariant to adding a common offset ``c^T x`` to all logits (the router's shift
symmetry, docs/math/symmetry.md#groups). Output: ``y_t = sum_{e in S_t} w_te FFN_e(x_t)`` with
SwiGLU experts ``FFN_e(x) = (silu(x G_e) * (x U_e)) D_e``, ``G_e, U_e`` ``(d, f)``, ``D_e`` ``(f,
d)``, stored stacked as ``gate_proj``/``up_proj`` ``(E, d, f)`` and ``down_proj`` ``(E, f, d)``.
gpt-oss variant (``MoEConfig.expert_act='clamped_swiglu'``, ``expert_bias=True``; Hugging Face
``GptOssExperts``): with ``g = x G_e + b^g_e`` and ``u = x U_e + b^u_e``, ``g' = min(g, L)``,
``u' = clip(u, -L, L)``, ``FFN_e(x) = ((u' + 1) * g' * sigmoid(a g')) D_e + b^d_e`` (``a =
1.702``, ``L = 7``).

Auxiliary losses (added to the LM loss only when their coefficient is non-zero; averaged over
MoE layers by the model):

* Switch load-balance loss (Fedus et al., arXiv:2101.03961, eq. 4), for top-k:
  ``L_lb = E * sum_e f_e * P_e`` with ``f_e = (#assignments to e) / (T k)`` (fraction of
  the T*k routing slots) and ``P_e = mean_t p_te``. Minimum 1 at a uniform load; the
  variant that divides by ``T`` instead of ``T k`` (HF transformers) is ``k`` times ours.
* Router z-loss (Zoph et al., ST-MoE, arXiv:2202.08906, eq. 5):
  ``L_z = mean_t (logsumexp_e z_te)^2``.

Router metrics (no gradient; per layer), with ``f`` and ``P`` as above:

* ``load_cv = std(f) / mean(f)`` (population std; ``mean(f) = 1/E``): 0 when balanced,
  ``sqrt(E/k - 1)`` when every token picks the same k experts;
* ``load_entropy = H(f) / log E``: 1 when balanced, ``log k / log E`` when collapsed;
* ``top_expert_load = max_e f_e``: ``1/E`` when balanced, ``1/k`` when collapsed;
* ``prob_cv``, ``prob_entropy``: the same two statistics of ``P``;
* ``token_entropy = mean_t H(p_t) / log E`` (per-token routing confidence);
* ``dead_expert_fraction``: share of experts with ``f_e < 0.1 / E`` (a tenth of the uniform
  load; the threshold of the reference's ``train_gpt-oss_router_metrics.py``,
  ``--dead_expert_threshold_scale=0.1``);
* ``logit_mean``, ``logit_std`` (population) over all ``T x E`` router logits, their
  ``logit_rms`` and ``logit_max_abs`` (the reference's logit statistics);
* ``lb_loss``, ``z_loss``: the unweighted losses.

:class:`MoE` also returns the per-expert load ``f`` (``expert_load``, ``[E]``) for the
validation heatmap; :func:`experiments.models.loss_from_logits` keeps it out of the training
metrics.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.models.config import ModelConfig, MoEConfig, residual_init_std

__all__ = [
    "route",
    "expert_load",
    "expert_activation",
    "load_balance_loss",
    "router_z_loss",
    "router_metrics",
    "DEAD_EXPERT_SCALE",
    "Experts",
    "MoE",
]


def route(logits: jax.Array, cfg: MoEConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Selects ``top_k`` experts per token and their combine weights.

    Args:
      logits: router logits ``z``, shape ``[T, E]`` (float32).
      cfg: the MoE configuration (``routing``, ``top_k``, ``renormalize``).

    Returns:
      ``(weights [T, k], experts [T, k] int32, probs [T, E])`` where ``probs = softmax(z)``
      over all experts (used by the load-balance loss and the metrics in both styles).
    """
    probs = jax.nn.softmax(logits, axis=-1)
    if cfg.routing == "softmax_topk":
        weights, experts = jax.lax.top_k(probs, cfg.top_k)
        if cfg.renormalize:
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    elif cfg.routing == "topk_softmax":
        top_logits, experts = jax.lax.top_k(logits, cfg.top_k)
        weights = jax.nn.softmax(top_logits, axis=-1)
    else:  # pragma: no cover - MoEConfig validates
        raise ValueError(f"unknown routing {cfg.routing!r}")
    return weights, experts.astype(jnp.int32), probs


def expert_load(experts: jax.Array, n_experts: int) -> jax.Array:
    """``f_e``: fraction of the ``T * k`` routing slots assigned to each expert, ``[E]``."""
    counts = jnp.zeros((n_experts,), jnp.float32).at[experts.reshape(-1)].add(1.0)
    return counts / experts.size


def load_balance_loss(probs: jax.Array, experts: jax.Array) -> jax.Array:
    """Switch load-balance loss ``E * sum_e f_e P_e`` (arXiv:2101.03961 eq. 4; see module doc).

    Gradient flows through ``P_e = mean_t p_te`` only (``f_e`` is a count).
    """
    n_experts = probs.shape[-1]
    f = jax.lax.stop_gradient(expert_load(experts, n_experts))
    return n_experts * jnp.sum(f * jnp.mean(probs, axis=0))


def router_z_loss(logits: jax.Array) -> jax.Array:
    """ST-MoE router z-loss ``mean_t logsumexp(z_t)^2`` (arXiv:2202.08906 eq. 5)."""
    return jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))


def _cv(x: jax.Array) -> jax.Array:
    return jnp.std(x) / jnp.maximum(jnp.mean(x), 1e-30)


def _normalized_entropy(p: jax.Array, axis: int = -1) -> jax.Array:
    n = p.shape[axis]
    h = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=axis)
    return h / math.log(n) if n > 1 else jnp.zeros_like(h)


#: Dead-expert threshold as a fraction of the uniform load ``1/E`` (the reference's 0.1).
DEAD_EXPERT_SCALE = 0.1


def router_metrics(
    logits: jax.Array,
    probs: jax.Array,
    experts: jax.Array,
    *,
    dead_scale: float = DEAD_EXPERT_SCALE,
) -> dict:
    """Router health statistics of one layer (definitions in the module docstring).

    Args:
      logits: ``[T, E]`` router logits. probs: ``[T, E]`` = softmax(logits).
      experts: ``[T, k]`` selected expert indices.
      dead_scale: an expert is dead when its load ``f_e < dead_scale / E``.

    Returns:
      dict of float32 scalars: ``load_cv``, ``load_entropy``, ``top_expert_load``,
      ``prob_cv``, ``prob_entropy``, ``token_entropy``, ``dead_expert_fraction``,
      ``logit_mean``, ``logit_std``, ``logit_rms``, ``logit_max_abs``, ``lb_loss``,
      ``z_loss``.
    """
    logits, probs = jax.lax.stop_gradient(logits), jax.lax.stop_gradient(probs)
    n_experts = probs.shape[-1]
    f = expert_load(experts, n_experts)
    p_mean = jnp.mean(probs, axis=0)
    z = logits.astype(jnp.float32)
    z_mean = jnp.mean(z)
    return {
        "dead_expert_fraction": jnp.mean((f < dead_scale / n_experts).astype(jnp.float32)),
        "logit_mean": z_mean,
        "logit_std": jnp.sqrt(jnp.mean(jnp.square(z - z_mean))),
        "logit_rms": jnp.sqrt(jnp.mean(jnp.square(z))),
        "logit_max_abs": jnp.max(jnp.abs(z)),
        "load_cv": _cv(f),
        "load_entropy": _normalized_entropy(f),
        "top_expert_load": jnp.max(f),
        "prob_cv": _cv(p_mean),
        "prob_entropy": _normalized_entropy(p_mean),
        "token_entropy": jnp.mean(_normalized_entropy(probs)),
        "lb_loss": load_balance_loss(probs, experts),
        "z_loss": router_z_loss(logits),
    }


def expert_activation(g: jax.Array, u: jax.Array, cfg: MoEConfig) -> jax.Array:
    """The gated activation of the experts: ``silu(g) * u``, or gpt-oss's clamped form
    ``(clip(u, -L, L) + 1) * g' * sigmoid(a g')`` with ``g' = min(g, L)`` (module docstring)."""
    if cfg.expert_act == "swiglu":
        return jax.nn.silu(g) * u
    limit = jnp.asarray(cfg.swiglu_limit, g.dtype)
    g = jnp.minimum(g, limit)
    u = jnp.clip(u, -limit, limit)
    return (u + 1) * (g * jax.nn.sigmoid(jnp.asarray(cfg.swiglu_alpha, g.dtype) * g))


class _Bias(nnx.Module):
    """A zero-initialized bias leaf ``<name>/bias`` (so that the routing rule ``/bias$`` makes
    it a vector)."""

    def __init__(self, shape: tuple[int, ...], dtype):
        self.bias = nnx.Param(jnp.zeros(shape, dtype))


class Experts(nnx.Module):
    """``E`` stacked SwiGLU experts: ``gate_proj``/``up_proj`` ``(E, d, f)``, ``down_proj``
    ``(E, f, d)`` (leading experts axis = batch axis for matrix optimizers); with
    ``MoEConfig.expert_bias`` also ``gate_bias/bias``, ``up_bias/bias`` ``(E, f)`` and
    ``down_bias/bias`` ``(E, d)``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        m = cfg.moe
        e, d, f = m.n_experts, cfg.d_model, m.d_expert
        pdt = jnp.dtype(cfg.param_dtype)
        std_out = residual_init_std(cfg)
        normal = jax.nn.initializers.normal
        self.gate_proj = nnx.Param(normal(cfg.init_std)(rngs.params(), (e, d, f), pdt))
        self.up_proj = nnx.Param(normal(cfg.init_std)(rngs.params(), (e, d, f), pdt))
        self.down_proj = nnx.Param(normal(std_out)(rngs.params(), (e, f, d), pdt))
        if m.expert_bias:
            self.gate_bias, self.up_bias = _Bias((e, f), pdt), _Bias((e, f), pdt)
            self.down_bias = _Bias((e, d), pdt)
        else:
            self.gate_bias = self.up_bias = self.down_bias = None
        self.dtype = jnp.dtype(cfg.dtype)
        self.dispatch = m.dispatch
        self.moe_cfg = m

    def _biases(self):
        if self.gate_bias is None:
            return None
        return tuple(
            b.bias[...].astype(self.dtype) for b in (self.gate_bias, self.up_bias, self.down_bias)
        )

    def __call__(self, x: jax.Array, weights: jax.Array, experts: jax.Array) -> jax.Array:
        """``y_t = sum_j weights[t, j] FFN_{experts[t, j]}(x_t)`` for ``x`` ``[T, d]``."""
        dt = self.dtype
        gate, up, down = (p[...].astype(dt) for p in (self.gate_proj, self.up_proj, self.down_proj))
        biases = self._biases()
        x = x.astype(dt)
        t, k = experts.shape
        n_experts = gate.shape[0]
        if self.dispatch == "dense":
            combine = jnp.zeros((t, n_experts), jnp.float32)
            combine = combine.at[jnp.arange(t)[:, None], experts].add(weights)
            g = jnp.einsum("td,edf->tef", x, gate)
            u = jnp.einsum("td,edf->tef", x, up)
            if biases is not None:
                g, u = g + biases[0][None], u + biases[1][None]
            y = jnp.einsum("tef,efd->ted", expert_activation(g, u, self.moe_cfg), down)
            if biases is not None:
                y = y + biases[2][None]
            return jnp.einsum("ted,te->td", y, combine.astype(dt))
        # ragged: sort the T*k (token, expert) slots by expert, one grouped matmul per weight.
        flat = experts.reshape(-1)
        order = jnp.argsort(flat, stable=True)
        token = order // k
        sizes = jnp.zeros((n_experts,), jnp.int32).at[flat].add(1)
        xs = x[token]
        g, u = jax.lax.ragged_dot(xs, gate, sizes), jax.lax.ragged_dot(xs, up, sizes)
        if biases is not None:
            eid = flat[order]
            g, u = g + biases[0][eid], u + biases[1][eid]
        ys = jax.lax.ragged_dot(expert_activation(g, u, self.moe_cfg), down, sizes)
        if biases is not None:
            ys = ys + biases[2][flat[order]]
        ys = ys * weights.reshape(-1)[order][:, None].astype(dt)
        return jnp.zeros_like(x).at[token].add(ys)


class MoE(nnx.Module):
    """Router ``router/kernel`` ``(d, E)`` (+ ``router/bias`` ``(E,)``) and :class:`Experts`.

    ``__call__(x [B, S, d]) -> (y [B, S, d], aux)`` where ``aux`` holds the unweighted
    ``lb_loss`` / ``z_loss`` (with gradient) and the :func:`router_metrics` (without).
    The router runs in float32 whatever the compute dtype.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        m = cfg.moe
        self.cfg = m
        # the router bias: zero under init_scheme='gpt2'; N(0, std^2) under 'normal' (Hugging
        # Face GptOssPreTrainedModel._init_weights draws GptOssTopKRouter.bias like the weight)
        bias_init = (
            jax.nn.initializers.normal(cfg.init_std)
            if cfg.init_scheme == "normal"
            else jax.nn.initializers.zeros
        )
        self.router = nnx.Linear(
            cfg.d_model,
            m.n_experts,
            use_bias=m.router_bias,
            dtype=jnp.float32,
            param_dtype=jnp.dtype(cfg.param_dtype),
            kernel_init=jax.nn.initializers.normal(cfg.init_std),
            bias_init=bias_init,
            rngs=rngs,
        )
        self.experts = Experts(cfg, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict]:
        b, s, d = x.shape
        xf = x.reshape(b * s, d)
        logits = self.router(xf.astype(jnp.float32))
        weights, experts, probs = route(logits, self.cfg)
        y = self.experts(xf, weights, experts).reshape(b, s, d).astype(x.dtype)
        aux = router_metrics(logits, probs, experts)
        aux["expert_load"] = expert_load(experts, self.cfg.n_experts)
        aux["lb_loss"] = load_balance_loss(probs, experts)
        aux["z_loss"] = router_z_loss(logits)
        return y, aux
