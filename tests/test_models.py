"""Tests for experiments/models: presets, naming contract, masking, MoE routing, training."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import experiments.models
from experiments import data
from experiments.models import (
    PRESETS,
    TINY_PRESETS,
    ModelConfig,
    MoEConfig,
    attention_mask,
    build,
    flops_per_token,
    lm_loss,
    loss_from_logits,
    param_count,
    param_paths,
    rope,
    route,
)
from experiments.models.moe import Experts, load_balance_loss, router_z_loss

LARGE_PRESETS = [n for n in PRESETS if n not in TINY_PRESETS]

# Published totals (model cards / reference implementations) for presets that mirror a
# released model exactly.
PUBLISHED = {
    "gpt2_small": 124_439_808,
    "qwen3_0p6b": 596_049_920,
    "gemma3_1b": 999_885_952,
    "olmoe_1b7b": 6_919_161_856,
}


def _tokens(seed, b, s, v=256):
    return jax.random.randint(jax.random.PRNGKey(seed), (b, s), 0, v, dtype=jnp.int32)


CAUSAL_T = 20  # tokens from this position on differ between the two rows of the batch


def _loss_with_logits(model, x, y):
    logits, aux = model(x)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    loss, metrics = loss_from_logits(logits, aux, y)
    return loss, (metrics, logits, ce)


@nnx.jit
def _loss_grad_logits(model, x, y):
    return nnx.value_and_grad(_loss_with_logits, has_aux=True)(model, x, y)


@functools.cache
def _preset_run(name):
    """One compiled forward + backward per tiny preset, shared by several tests: row 1 of the
    batch is row 0 with every token from CAUSAL_T on changed."""
    model = build(PRESETS[name], seed=0)
    x = _tokens(1, 1, 49)
    x = jnp.concatenate([x, x.at[:, CAUSAL_T:].set((x[:, CAUSAL_T:] + 1) % 256)])
    (loss, (metrics, logits, ce)), grads = _loss_grad_logits(model, x[:, :-1], x[:, 1:])
    return model, x, loss, metrics, logits, ce, grads


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_tiny_preset_forward_and_grad(name):
    cfg = PRESETS[name]
    model, x, loss, metrics, logits, ce, grads = _preset_run(name)
    assert logits.shape == (2, 48, 256) and logits.dtype == jnp.float32
    assert np.isfinite(float(loss))
    assert float(metrics["ce"]) == pytest.approx(float(ce), rel=1e-6)
    assert abs(float(ce) - math.log(256)) < 1.0  # near uniform at init
    leaves = jax.tree.leaves(nnx.to_pure_dict(grads))
    assert len(leaves) == len(param_paths(model))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    # every parameter receives gradient (nothing is accidentally disconnected)
    flat = {k: v for k, v in zip(param_paths(model), leaves, strict=True)}
    dead = [k for k, g in flat.items() if not bool(jnp.any(g != 0))]
    assert not dead, dead
    if cfg.moe is not None:
        assert float(loss) == pytest.approx(
            float(metrics["ce"] + metrics["moe/aux_loss"]), rel=1e-6
        )
        assert {"router/0/load_cv", "router/1/top_expert_load", "moe/lb_loss", "moe/z_loss"} <= set(
            metrics
        )
    else:
        assert float(loss) == float(metrics["ce"])


@pytest.mark.parametrize("name", LARGE_PRESETS)
def test_large_presets_construct_abstractly_with_the_expected_count(name):
    cfg = PRESETS[name]
    model = build(cfg, abstract=True)
    shapes = param_paths(model)
    counted = sum(math.prod(s) for s in shapes.values())
    assert counted == param_count(cfg)
    if name in PUBLISHED:
        assert counted == PUBLISHED[name]
    state = nnx.state(model, nnx.Param)
    assert all(
        isinstance(v, jax.ShapeDtypeStruct) and v.dtype == jnp.float32
        for v in jax.tree.leaves(state)
    )


def test_moe_active_counts_and_flops():
    olmoe = PRESETS["olmoe_1b7b"]
    # OLMoE-1B-7B: 1.28B active of 6.92B (arXiv:2409.02060, Table 1)
    assert param_count(olmoe, active=True) == 1_282_017_280
    g = PRESETS["gpt2_small"]
    n = 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 768 * 50257
    assert flops_per_token(g) == 6 * n + 12 * 12 * 12 * 64 * 1024
    assert flops_per_token(g, seq_len=512) == 6 * n + 12 * 12 * 12 * 64 * 512


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="ModelConfig.norm"):
        ModelConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="top_k"):
        MoEConfig(n_experts=2, top_k=3)
    with pytest.raises(ValueError, match="renormalize"):
        MoEConfig(routing="topk_softmax", renormalize=True)
    with pytest.raises(ValueError, match="ModelConfig.init_scheme"):
        ModelConfig(init_scheme="xavier")
    with pytest.raises(ValueError, match="MoEConfig.expert_act"):
        MoEConfig(expert_act="gelu")
    with pytest.raises(ValueError, match="MoEConfig.swiglu_limit"):
        MoEConfig(swiglu_limit=0.0)
    with pytest.raises(ValueError, match="MoEConfig.lb_loss_coef"):
        MoEConfig(lb_loss_coef=-0.01)


# ----------------------------------------------------------------------------- naming


def _expected_paths(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    d, v, h, k, hd, f = (
        cfg.d_model,
        cfg.vocab_size,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.d_ff,
    )
    ln = cfg.norm == "layernorm"

    def norm(prefix, width):
        return {f"{prefix}/scale": (width,), **({f"{prefix}/bias": (width,)} if ln else {})}

    out = {"embed/embedding": (v, d)}
    if cfg.positions == "learned":
        out["pos_embed/embedding"] = (cfg.max_seq_len, d)
    for i in range(cfg.n_layers):
        p = f"layers/{i}"
        out.update(norm(f"{p}/attn_norm", d))
        out.update(norm(f"{p}/mlp_norm", d))
        if cfg.sandwich_norm:
            out.update(norm(f"{p}/post_attn_norm", d))
            out.update(norm(f"{p}/post_mlp_norm", d))
        for name, shape in [
            ("q_proj", (d, h * hd)),
            ("k_proj", (d, k * hd)),
            ("v_proj", (d, k * hd)),
            ("o_proj", (h * hd, d)),
        ]:
            out[f"{p}/attn/{name}/kernel"] = shape
            if cfg.attn_bias:
                out[f"{p}/attn/{name}/bias"] = shape[1:]
        if cfg.qk_norm == "head":
            out[f"{p}/attn/q_norm/scale"] = (hd,)
            out[f"{p}/attn/k_norm/scale"] = (hd,)
        elif cfg.qk_norm == "full":
            out[f"{p}/attn/q_norm/scale"] = (h * hd,)
            out[f"{p}/attn/k_norm/scale"] = (k * hd,)
        if cfg.attn_sinks:
            out[f"{p}/attn/sinks"] = (h,)
        if cfg.moe is not None:
            e, fe = cfg.moe.n_experts, cfg.moe.d_expert
            out[f"{p}/moe/router/kernel"] = (d, e)
            if cfg.moe.router_bias:
                out[f"{p}/moe/router/bias"] = (e,)
            out[f"{p}/moe/experts/gate_proj"] = (e, d, fe)
            out[f"{p}/moe/experts/up_proj"] = (e, d, fe)
            out[f"{p}/moe/experts/down_proj"] = (e, fe, d)
            if cfg.moe.expert_bias:
                out[f"{p}/moe/experts/gate_bias/bias"] = (e, fe)
                out[f"{p}/moe/experts/up_bias/bias"] = (e, fe)
                out[f"{p}/moe/experts/down_bias/bias"] = (e, d)
        else:
            names = [("up_proj", (d, f)), ("down_proj", (f, d))]
            if cfg.mlp != "gelu":
                names.append(("gate_proj", (d, f)))
            for name, shape in names:
                out[f"{p}/mlp/{name}/kernel"] = shape
                if cfg.mlp_bias:
                    out[f"{p}/mlp/{name}/bias"] = shape[1:]
    out.update(norm("final_norm", d))
    if not cfg.tie_embeddings:
        out["lm_head/kernel"] = (d, v)
    return out


def test_tiny_qwen3_parameter_names_literally():
    paths = param_paths(build(PRESETS["tiny"], abstract=True))
    layer0 = sorted(p for p in paths if p.startswith("layers/0/"))
    assert layer0 == [
        "layers/0/attn/k_norm/scale",
        "layers/0/attn/k_proj/kernel",
        "layers/0/attn/o_proj/kernel",
        "layers/0/attn/q_norm/scale",
        "layers/0/attn/q_proj/kernel",
        "layers/0/attn/v_proj/kernel",
        "layers/0/attn_norm/scale",
        "layers/0/mlp/down_proj/kernel",
        "layers/0/mlp/gate_proj/kernel",
        "layers/0/mlp/up_proj/kernel",
        "layers/0/mlp_norm/scale",
    ]
    assert sorted(p for p in paths if not p.startswith("layers/")) == [
        "embed/embedding",
        "final_norm/scale",
        "lm_head/kernel",
    ]
    assert paths["layers/1/attn/q_proj/kernel"] == (128, 4 * 32)
    assert paths["layers/1/attn/k_proj/kernel"] == (128, 2 * 32)


@pytest.mark.parametrize(
    "name", TINY_PRESETS + ("olmoe_1b7b", "gptoss_seed", "gemma3_1b", "gptoss_paper", "olmoe_paper")
)
def test_parameter_names_follow_the_contract(name):
    cfg = PRESETS[name]
    assert param_paths(build(cfg, abstract=True)) == _expected_paths(cfg)


def test_family_specific_leaves_exist():
    gpt2 = param_paths(build(PRESETS["tiny_gpt2"], abstract=True))
    assert "pos_embed/embedding" in gpt2 and "lm_head/kernel" not in gpt2
    assert "layers/0/mlp/up_proj/bias" in gpt2 and "final_norm/bias" in gpt2
    gemma = param_paths(build(PRESETS["tiny_gemma3"], abstract=True))
    assert "layers/1/post_mlp_norm/scale" in gemma and "lm_head/kernel" not in gemma
    oss = param_paths(build(PRESETS["tiny_gptoss"], abstract=True))
    assert oss["layers/0/moe/router/bias"] == (4,)
    assert oss["layers/0/moe/experts/down_proj"] == (4, 128, 128)
    olmoe = param_paths(build(PRESETS["tiny_moe"], abstract=True))
    assert "layers/0/moe/router/bias" not in olmoe
    assert olmoe["layers/0/moe/router/kernel"] == (128, 8)


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_causal_masking(name):
    _, x, _, _, logits, _, _ = _preset_run(name)
    t = CAUSAL_T
    assert bool(jnp.all(x[0, :t] == x[1, :t])) and bool(jnp.all(x[0, t:] != x[1, t:]))
    np.testing.assert_allclose(logits[0, :t], logits[1, :t], atol=1e-5, rtol=1e-5)
    assert float(jnp.max(jnp.abs(logits[0, t:] - logits[1, t:]))) > 1e-3  # negative control


def test_sliding_window_limits_the_receptive_field():
    mask = np.asarray(attention_mask(5, window=2))
    assert mask.tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1],
    ]
    assert np.asarray(attention_mask(4)).sum() == 10
    cfg = dataclasses.replace(PRESETS["tiny_gemma3"], n_layers=1, sliding_window=4, global_every=0)
    model = build(cfg)
    x = _tokens(5, 1, 12)
    x = jnp.concatenate([x, x.at[:, 0].set((x[:, 0] + 7) % 256)])
    y = nnx.jit(lambda m, a: m(a)[0])(model, x)
    y1, y2 = y[:1], y[1:]
    diff = np.asarray(jnp.max(jnp.abs(y1 - y2), axis=-1))[0]
    assert np.all(diff[:4] > 1e-4) and np.all(diff[4:] == 0)


def test_rope_is_relative_and_norm_preserving():
    key = jax.random.PRNGKey(0)
    q = jax.random.normal(key, (1, 1, 1, 16))
    k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 16))

    def score(m, n):
        qm = rope(q, jnp.array([m]), 10_000.0)
        kn = rope(k, jnp.array([n]), 10_000.0)
        return float(jnp.sum(qm * kn))

    assert score(7, 3) == pytest.approx(score(104, 100), rel=1e-4, abs=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-3)
    np.testing.assert_allclose(rope(q, jnp.array([0]), 1e4), q, atol=1e-6)
    r = rope(q, jnp.array([123]), 1e4)
    assert float(jnp.linalg.norm(r)) == pytest.approx(float(jnp.linalg.norm(q)), rel=1e-5)


def test_gqa_shapes_of_a_large_preset():
    cfg = PRESETS["qwen3_0p6b"]
    paths = param_paths(build(cfg, abstract=True))
    assert paths["layers/27/attn/q_proj/kernel"] == (1024, 16 * 128)
    assert paths["layers/27/attn/k_proj/kernel"] == (1024, 8 * 128)
    assert paths["layers/27/attn/o_proj/kernel"] == (16 * 128, 1024)
    assert paths["layers/0/attn/q_norm/scale"] == (128,)
    assert "lm_head/kernel" not in paths  # Qwen3-0.6B ties; the seed-paper preset does not
    assert "lm_head/kernel" in param_paths(build(PRESETS["qwen3_seed"], abstract=True))


# ----------------------------------------------------------------------------- MoE


def test_router_metrics_on_hand_built_routings():
    e = 4
    router_metrics = jax.jit(experiments.models.router_metrics)
    logits = jnp.zeros((8, e))
    probs = jax.nn.softmax(logits)
    uniform = router_metrics(logits, probs, jnp.arange(8).reshape(8, 1) % e)
    assert float(uniform["load_cv"]) == pytest.approx(0.0, abs=1e-6)
    assert float(uniform["load_entropy"]) == pytest.approx(1.0, abs=1e-6)
    assert float(uniform["top_expert_load"]) == pytest.approx(0.25)
    assert float(uniform["lb_loss"]) == pytest.approx(1.0)
    assert float(uniform["z_loss"]) == pytest.approx(math.log(e) ** 2, rel=1e-5)
    assert float(uniform["token_entropy"]) == pytest.approx(1.0, abs=1e-6)
    one = router_metrics(logits, probs, jnp.zeros((8, 1), jnp.int32))
    assert float(one["load_cv"]) == pytest.approx(math.sqrt(e - 1), rel=1e-5)
    assert float(one["load_entropy"]) == pytest.approx(0.0, abs=1e-6)
    assert float(one["top_expert_load"]) == pytest.approx(1.0)
    # top-2, every token on experts {1, 3}: f = (0, 1/2, 0, 1/2)
    pair = router_metrics(logits, probs, jnp.tile(jnp.array([[1, 3]]), (8, 1)))
    assert float(pair["load_cv"]) == pytest.approx(math.sqrt(e / 2 - 1), rel=1e-5)
    assert float(pair["load_entropy"]) == pytest.approx(math.log(2) / math.log(e), rel=1e-5)
    assert float(pair["top_expert_load"]) == pytest.approx(0.5)
    # a confident router concentrated on expert 0 that routes everything there
    sharp = jnp.tile(jnp.array([[10.0, 0.0, 0.0, 0.0]]), (8, 1))
    m = router_metrics(sharp, jax.nn.softmax(sharp), jnp.zeros((8, 1), jnp.int32))
    p0 = float(jax.nn.softmax(sharp[0])[0])
    assert float(m["lb_loss"]) == pytest.approx(e * p0, rel=1e-5)
    assert float(m["token_entropy"]) < 0.01 and float(m["prob_cv"]) > 1.5
    # dead experts (load < 0.1 / E, the reference's threshold) and the logit statistics
    assert float(uniform["dead_expert_fraction"]) == 0.0
    assert float(one["dead_expert_fraction"]) == pytest.approx(0.75)
    assert float(pair["dead_expert_fraction"]) == pytest.approx(0.5)
    z = np.asarray(sharp, np.float64)
    assert float(m["logit_mean"]) == pytest.approx(z.mean(), rel=1e-6)
    assert float(m["logit_std"]) == pytest.approx(z.std(), rel=1e-5)
    assert float(m["logit_rms"]) == pytest.approx(np.sqrt((z**2).mean()), rel=1e-5)
    assert float(m["logit_max_abs"]) == pytest.approx(10.0)
    assert float(uniform["logit_std"]) == 0.0
    # top-1 loads 0.49 / 0.49 / 0.01 / 0.01 of E = 4: the two experts below 0.1 / E = 0.025
    # are dead although they still receive tokens
    loads = jnp.array([0] * 49 + [1] * 49 + [2] * 1 + [3] * 1).reshape(100, 1)
    lm = router_metrics(jnp.zeros((100, e)), jax.nn.softmax(jnp.zeros((100, e))), loads)
    assert float(lm["dead_expert_fraction"]) == pytest.approx(0.5)


def test_router_losses_have_the_documented_gradients():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    experts = jnp.array([[0], [1]])
    g = jax.jit(jax.grad(lambda z: load_balance_loss(jax.nn.softmax(z), experts)))(logits)
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0
    np.testing.assert_allclose(g.sum(axis=-1), 0.0, atol=1e-6)  # shift invariant
    lse = jax.nn.logsumexp(logits, axis=-1)
    assert float(router_z_loss(logits)) == pytest.approx(float(jnp.mean(lse**2)))


def test_olmoe_and_gptoss_routing_differ_as_documented():
    z = jnp.array([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 2.5, 0.1]])
    olmoe = MoEConfig(n_experts=4, top_k=2, routing="softmax_topk")
    w1, e1, p1 = route(z, olmoe)
    w2, e2, _ = route(z, MoEConfig(n_experts=4, top_k=2, routing="topk_softmax"))
    w3, _, _ = route(z, dataclasses.replace(olmoe, renormalize=True))
    assert e1.tolist() == e2.tolist() == [[0, 1], [2, 1]]  # same experts without a bias
    np.testing.assert_allclose(w1, jnp.take_along_axis(p1, e1, axis=-1), rtol=1e-6)
    assert bool(jnp.all(w1.sum(-1) < 0.99))  # softmax-then-top-k: unnormalized
    np.testing.assert_allclose(w2.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w2, jax.nn.softmax(jnp.take_along_axis(z, e2, -1)), rtol=1e-6)
    np.testing.assert_allclose(w3, w2, rtol=1e-5)  # renormalized = softmax over the kept k
    assert not np.allclose(w1, w2)
    for cfg in (olmoe, MoEConfig(n_experts=4, top_k=2, routing="topk_softmax")):
        a, b = route(z, cfg), route(z + 5.0, cfg)  # shift symmetry of the router
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5)
        assert a[1].tolist() == b[1].tolist()


def test_ragged_dispatch_matches_dense():
    cfg = dataclasses.replace(PRESETS["tiny_moe"], n_layers=1)
    dense = Experts(cfg, rngs=nnx.Rngs(0))
    ragged = Experts(
        dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, dispatch="ragged")),
        rngs=nnx.Rngs(0),
    )
    x = jax.random.normal(jax.random.PRNGKey(2), (24, cfg.d_model))
    z = jax.random.normal(jax.random.PRNGKey(3), (24, cfg.moe.n_experts))
    w, e, _ = route(z, cfg.moe)

    @nnx.jit
    def out_and_grad(mod):
        return nnx.value_and_grad(lambda m: jnp.sum(m(x, w, e) ** 2))(mod), mod(x, w, e)

    (_, gd), yd = out_and_grad(dense)
    (_, gr), yr = out_and_grad(ragged)
    np.testing.assert_allclose(yr, yd, atol=1e-5, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(gd), jax.tree.leaves(gr), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    # negative control: a different routing gives a different output
    assert not np.allclose(dense(x, w, (e + 1) % cfg.moe.n_experts), yd)


# ----------------------------------------------------------------------------- dtype, training


def test_bfloat16_compute_keeps_float32_params():
    cfg = dataclasses.replace(PRESETS["tiny"], dtype="bfloat16")
    model = build(cfg, seed=0)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    _, x, _, _, logits32, _, _ = _preset_run("tiny")  # same seed, float32 compute
    logits = nnx.jit(lambda m, a: m(a)[0])(model, x[:, :-1])
    assert logits.dtype == jnp.float32
    err = float(jnp.max(jnp.abs(logits - logits32)))
    assert 0 < err < 0.05


def test_adamw_decreases_the_loss_on_the_default_corpus():
    train, val, _ = data.default_splits()
    model = build(PRESETS["tiny"], seed=0)
    opt = nnx.Optimizer(model, optax.adamw(3e-3, weight_decay=0.01), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        (loss, _), grads = nnx.value_and_grad(lm_loss, has_aux=True)(model, x, y)
        opt.update(model, grads)
        return loss

    @nnx.jit
    def evaluate(model, x, y):
        return lm_loss(model, x, y)[0]

    vx, vy = data.validation_batches(val, 8, 64, max_batches=1)[0]
    before = float(evaluate(model, vx, vy))
    loader = data.TokenLoader(train, 8, 64)
    losses = [float(step(model, opt, *loader.next())) for _ in range(40)]
    after = float(evaluate(model, vx, vy))
    assert all(np.isfinite(losses))
    assert before > 5.0 and after < before - 2.0, (before, after)
