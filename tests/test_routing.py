"""Tests of optzoo.routing (rules, classify, report, by_role) and of the layerwise
symmetry-compatible stack (optzoo.symmetric_stack) on this project's models and on hand-built
trees in common Flax naming.

Tolerances: the stack's row maps run in float32 (~1e-6 relative vs the float64 numpy
re-derivations; we allow 1e-5); head-wise Muon with the exact 'svd' orthogonalizer agrees
with a float64 SVD to ~1e-6 (allowed 1e-4: float32 SVD of a 2-step momentum); invariances of
whole trajectories are checked at 1e-4 relative (head-wise Muon's Polar Express divides by the
Frobenius norm + 1e-7, which breaks exact scale invariance at ~1e-6); controls must exceed 0.05.
"""

from __future__ import annotations

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import experiments.models as models
import optzoo
from experiments.bench.trees import gpt2_small_like_tree
from optzoo import routing, symmetric_stack, testing
from optzoo.layout import MatrixLayout
from optzoo.routing import DEFAULT_RULES, Assignment, Rule
from optzoo.symmetric_stack import symmetry_compatible, symmetry_compatible_plan

CONTROL = 0.05


def model_state(preset: str):
    """nnx.State of a tiny preset built abstractly (shapes only), as nnx.Optimizer sees it."""
    model = models.build(models.get_preset(preset), abstract=True)
    return nnx.state(model, nnx.Param)


def roles_by_path(params, rules=None):
    rep = routing.report(params, rules)
    return {r.path: (r.role, r.unit_axis) for r in rep.rows}


# What the paper prescribes for each leaf of this project's models (docs/math/symmetry.md#roles,
# Flax orientation, docs/math/conventions.md#orientation): (role, unit axis) by path pattern.
PAPER_ROLES = [
    (r"^embed/embedding$", ("embedding", 0)),
    (r"^lm_head/kernel$", ("lm_head", 1)),
    (r"/attn/q_proj/kernel$", ("attn_q", None)),
    (r"/attn/k_proj/kernel$", ("attn_k", None)),
    (r"/attn/v_proj/kernel$", ("attn_v", None)),
    (r"/attn/o_proj/kernel$", ("attn_o", None)),
    (r"/mlp/gate_proj/kernel$", ("mlp_gate", 1)),
    (r"/mlp/up_proj/kernel$", ("mlp_up", 1)),
    (r"/mlp/down_proj/kernel$", ("mlp_down", 0)),
    (r"/moe/router/kernel$", ("router", 1)),
    (r"/moe/experts/(gate|up)_proj$", ("expert_gate_up", 2)),
    (r"/moe/experts/down_proj$", ("expert_down", 1)),
    (r"/(scale|bias)$", ("vector", None)),
]


def expected_role(path):
    hits = [want for pat, want in PAPER_ROLES if re.search(pat, path)]
    assert len(hits) == 1, f"test table has no unique entry for {path}"
    return hits[0]


# ------------------------------------------------------------------------ the models
@pytest.mark.parametrize("preset", ["tiny", "tiny_moe", "tiny_gptoss"])
def test_report_on_project_models_matches_paper_roles(preset):
    # tiny = Qwen3-style dense (GQA, QK-norm, SwiGLU, untied); tiny_moe = OLMoE-style;
    # tiny_gptoss = gpt-oss-style MoE with a router bias and attention biases.
    state = model_state(preset)
    got = roles_by_path(state)
    assert len(got) == len(models.param_paths(state))
    for path, role_unit in got.items():
        assert role_unit == expected_role(path), path
    plan = symmetry_compatible_plan(5e-3, preset="olmoe_left", head_dim=32)
    rep = routing.report(state, None, plan)
    names = {r.role: r.transform for r in rep.rows}
    assert names["embedding"] == "rownorm"
    assert names["lm_head"] == "rownorm(centered)"
    assert names["attn_q"] == names["attn_o"] == "muon(head-wise, d_h=32)"
    assert names["vector"] == "adamw"
    if preset != "tiny":
        assert names["router"] == "left_spectral(centered)"
        assert names["expert_gate_up"] == names["expert_down"] == "muon"
    else:
        assert names["mlp_gate"] == names["mlp_down"] == "muon"
    mults = {r.role: r.lr_multiplier for r in rep.rows}
    assert mults["embedding"] == pytest.approx(0.5 / 5e-3)  # released OLMoE lr_embed / lr_muon
    assert mults["lm_head"] == pytest.approx(5e-3 / 5e-3)
    assert mults.get("router", 0.15) == pytest.approx(7.5e-4 / 5e-3)
    text = str(rep)
    assert "layers/0/moe/router/kernel" in text or preset == "tiny"
    assert "/value" not in text  # nnx.State's trailing 'value' level is dropped


def test_tied_and_gpt2_models():
    gemma = roles_by_path(model_state("tiny_gemma3"))  # tied: no lm_head leaf
    assert gemma["embed/embedding"] == ("embedding", 0)
    assert not any(role == "lm_head" for role, _ in gemma.values())
    gpt2 = roles_by_path(model_state("tiny_gpt2"))
    assert gpt2["pos_embed/embedding"] == ("other_matrix", None)
    assert gpt2["layers/0/mlp/up_proj/bias"] == ("vector", None)


def test_gpt2_bench_trees_fused_and_stacked():
    fused = roles_by_path(gpt2_small_like_tree())
    assert fused["layers/3/attn/qkv_proj/kernel"] == ("attn_qkv", None)
    assert fused["layers/3/mlp/fc/kernel"] == ("mlp_up", 1)
    assert fused["layers/3/mlp/proj/kernel"] == ("mlp_down", 0)
    assert fused["layers/3/ln_1/scale"] == ("vector", None)
    stacked = roles_by_path(
        gpt2_small_like_tree(stacked=True, fused_qkv=False, tie_embeddings=False)
    )
    assert stacked["layers/attn/q_proj/kernel"] == ("attn_q", None)  # (12, 768, 768)
    assert stacked["layers/mlp/fc/kernel"] == ("mlp_up", 2)  # (12, 768, 3072)
    assert stacked["layers/ln_1/scale"] == ("vector", None)  # (12, 768)
    assert stacked["lm_head/kernel"] == ("lm_head", 1)


def test_common_flax_naming():
    z = jnp.zeros
    tree = {
        "model": {
            "embed_tokens": {"embedding": z((32, 8))},
            "layers": {
                "0": {
                    "self_attn": {
                        n: {"kernel": z((8, 8))} for n in ("q_proj", "k_proj", "v_proj", "o_proj")
                    },
                    "mlp": {
                        "gate_proj": {"kernel": z((8, 24))},
                        "up_proj": {"kernel": z((8, 24))},
                        "down_proj": {"kernel": z((24, 8))},
                    },
                    "input_layernorm": {"weight": z((8,))},
                }
            },
            "norm": {"weight": z((8,))},
        },
        "lm_head": {"kernel": z((8, 32))},
        "mixtral": {
            "block_sparse_moe": {
                "gate": {"kernel": z((8, 4))},
                "experts": {
                    "0": {
                        "w1": {"kernel": z((8, 16))},
                        "w2": {"kernel": z((16, 8))},
                        "w3": {"kernel": z((8, 16))},
                    }
                },
            }
        },
        "olmoe": {
            "mlp": {
                "gate": {"kernel": z((8, 4))},
                "experts": {"gate_proj": z((4, 8, 6)), "down_proj": z((4, 6, 8))},
            }
        },
        # a dense gated MLP narrower than d: f=6 < d=8, but no experts beside it
        "dense": {"mlp": {"gate": {"kernel": z((8, 6))}, "wo": {"kernel": z((6, 8))}}},
        "gptoss": {"experts": {"gate_up_proj": z((4, 8, 12))}},
        "linen": {
            "MultiHeadDotProductAttention_0": {
                "query": {"kernel": z((8, 2, 4))},
                "out": {"kernel": z((2, 4, 8))},
            }
        },
        "transformer": {
            "wte": {"embedding": z((32, 8))},
            "wpe": {"embedding": z((16, 8))},
            "h": {
                "0": {
                    "attn": {"c_attn": {"kernel": z((8, 24))}, "c_proj": {"kernel": z((8, 8))}},
                    "mlp": {"c_fc": {"kernel": z((8, 32))}, "c_proj": {"kernel": z((32, 8))}},
                }
            },
        },
    }
    got = roles_by_path(tree)
    want = {
        "model/embed_tokens/embedding": ("embedding", 0),
        "model/layers/0/self_attn/q_proj/kernel": ("attn_q", None),
        "model/layers/0/self_attn/o_proj/kernel": ("attn_o", None),
        "model/layers/0/mlp/gate_proj/kernel": ("mlp_gate", 1),
        "model/layers/0/mlp/down_proj/kernel": ("mlp_down", 0),
        "model/layers/0/input_layernorm/weight": ("vector", None),
        "model/norm/weight": ("vector", None),
        "lm_head/kernel": ("lm_head", 1),
        "mixtral/block_sparse_moe/gate/kernel": ("router", 1),
        "mixtral/block_sparse_moe/experts/0/w1/kernel": ("expert_gate_up", 1),
        "mixtral/block_sparse_moe/experts/0/w2/kernel": ("expert_down", 0),
        "mixtral/block_sparse_moe/experts/0/w3/kernel": ("expert_gate_up", 1),
        "olmoe/mlp/gate/kernel": ("router", 1),  # sibling experts: a router
        "olmoe/mlp/experts/gate_proj": ("expert_gate_up", 2),
        # repro (before): a (d, f<d) dense gate was classified as a router by its shape alone
        "dense/mlp/gate/kernel": ("mlp_gate", 1),
        "dense/mlp/wo/kernel": ("mlp_down", 0),
        "gptoss/experts/gate_up_proj": ("expert_gate_up", 2),
        "linen/MultiHeadDotProductAttention_0/query/kernel": ("attn_q", None),
        "linen/MultiHeadDotProductAttention_0/out/kernel": ("attn_o", None),
        "transformer/wte/embedding": ("embedding", 0),
        "transformer/wpe/embedding": ("other_matrix", None),
        "transformer/h/0/attn/c_attn/kernel": ("attn_qkv", None),
        "transformer/h/0/attn/c_proj/kernel": ("attn_o", None),
        "transformer/h/0/mlp/c_fc/kernel": ("mlp_up", 1),
        "transformer/h/0/mlp/c_proj/kernel": ("mlp_down", 0),
    }
    for path, role in want.items():
        assert got[path] == role, path
    assert routing.rule_for("gptoss/experts/gate_up_proj", (4, 8, 12)).gate_up_pair == "interleaved"
    lays = routing.layouts(tree)
    assert lays["linen"]["MultiHeadDotProductAttention_0"]["query"]["kernel"].matrix_shape(
        (8, 2, 4)
    ) == (2, 8, 4)  # heads are batch slices of (d, d_h) blocks
    assert lays["model"]["norm"]["weight"] is None


# ------------------------------------------------------------------------- bad input
def test_unknown_leaf_raises_naming_its_path():
    state = {"embed": {"embedding": jnp.zeros((16, 8))}, "mystery": {"weights": jnp.zeros((3, 4))}}
    with pytest.raises(ValueError, match=r"no rule covers parameter 'mystery/weights'"):
        routing.classify(state)
    with pytest.raises(ValueError, match="mystery/weights"):
        symmetry_compatible(1e-2).init(state)


def test_rules_that_leave_a_leaf_uncovered_raise():
    tree = {"embed": {"embedding": jnp.zeros((16, 8))}, "final_norm": {"scale": jnp.ones(8)}}
    only = (Rule(r"embedding$", "embedding", unit_axis=0),)
    with pytest.raises(ValueError, match="'final_norm/scale'"):
        routing.classify(tree, only)
    assert (
        routing.classify(tree, only + (Rule(r"scale$", "vector"),))["final_norm"]["scale"]
        == "vector"
    )


def test_router_rule_matching_a_3d_tensor_needs_a_layout():
    tree = {"layers": {"moe": {"router": {"kernel": jnp.zeros((2, 8, 4))}}}}  # scanned layers
    with pytest.raises(
        ValueError,
        match=r"layers/moe/router/kernel.*3-D 'router' needs an "
        r"explicit layout",
    ):
        routing.classify(tree)
    declared = (Rule(r"router/kernel$", "router", ndim=3, unit_axis=-1),) + DEFAULT_RULES
    assert routing.classify(tree, declared)["layers"]["moe"]["router"]["kernel"] == "router"
    lay = MatrixLayout(reduction_axes=(1,), output_axes=(2,))
    explicit = (Rule(r"router/kernel$", "router", layout=lay, unit_axis=2),) + DEFAULT_RULES
    got = routing.layouts(tree, explicit)["layers"]["moe"]["router"]["kernel"]
    assert got.unit_axis == 2 and got.matrix_shape((2, 8, 4)) == (2, 8, 4)


def test_bad_rules_and_unit_axis_out_of_range():
    with pytest.raises(ValueError, match="unknown role 'embeddings'"):
        Rule(r"embed", "embeddings")
    with pytest.raises(ValueError, match="invalid regex"):
        Rule(r"embed(", "embedding")
    with pytest.raises(ValueError, match="'vector' takes no unit_axis"):
        Rule(r"bias", "vector", unit_axis=0)
    with pytest.raises(ValueError, match="head_axis is for attention"):
        Rule(r"w", "mlp_up", head_axis=-1)
    tree = {"lm_head": {"kernel": jnp.zeros((8, 32))}}
    bad = (Rule(r"lm_head/kernel$", "lm_head", unit_axis=2),)
    with pytest.raises(ValueError, match=r"'lm_head/kernel'.*unit_axis 2 is out of range"):
        routing.classify(tree, bad)
    with pytest.raises(TypeError, match="Rule instances"):
        routing.classify(tree, ("lm_head",))


# ---------------------------------------------------------------------------- by_role
def test_by_role_partitions_by_role_and_group():
    tree = {
        "embed": {"embedding": jnp.ones((6, 4))},
        "layers": {
            "0": {
                "attn": {
                    "q_proj": {"kernel": jnp.ones((4, 4))},
                    "o_proj": {"kernel": jnp.ones((4, 4))},
                }
            }
        },
        "final_norm": {"scale": jnp.ones(4)},
    }
    tx = routing.by_role(
        {
            "embedding": optax.sgd(1.0),
            "attention": optax.sgd(2.0),
            "attn_o": optax.sgd(3.0),
            "vectors": optax.sgd(4.0),
        }
    )
    g = jax.tree.map(jnp.ones_like, tree)
    u, _ = tx.update(g, tx.init(tree), tree)
    assert float(u["embed"]["embedding"][0, 0]) == -1.0
    assert float(u["layers"]["0"]["attn"]["q_proj"]["kernel"][0, 0]) == -2.0  # group
    assert float(u["layers"]["0"]["attn"]["o_proj"]["kernel"][0, 0]) == -3.0  # role wins
    assert float(u["final_norm"]["scale"][0]) == -4.0
    with pytest.raises(
        ValueError,
        match=r"no transform for parameter 'final_norm/scale' "
        r"\(role 'vector', group 'vectors'\)",
    ):
        routing.by_role({"embedding": optax.sgd(1.0), "attention": optax.sgd(1.0)}).init(tree)
    with pytest.raises(ValueError, match="unknown key 'embeddings'"):
        routing.by_role({"embeddings": optax.sgd(1.0)})
    rep = routing.report(
        tree,
        None,
        {
            "embedding": Assignment(optax.sgd(1.0), "sgd", 2.0),
            "attention": "muon",
            "vectors": optax.sgd(1.0),
        },
    )
    rows = {r.path: r for r in rep.rows}
    assert rows["embed/embedding"].transform == "sgd"
    assert rows["embed/embedding"].lr_multiplier == 2.0
    assert rows["layers/0/attn/q_proj/kernel"].transform == "muon"
    assert rows["final_norm/scale"].transform == "vectors"


# ------------------------------------------------------------------------- the stack
def _small_tree(seed=0, d=8, v=16, hd=4):
    rng = np.random.default_rng(seed)

    def w(*shape):
        return jnp.asarray(0.1 * rng.standard_normal(shape), jnp.float32)

    return {
        "embed": {"embedding": w(v, d)},
        "layers": {
            "0": {
                "attn": {
                    "q_proj": {"kernel": w(d, 2 * hd)},
                    "k_proj": {"kernel": w(d, hd)},
                    "o_proj": {"kernel": w(2 * hd, d)},
                },
                "mlp": {"down_proj": {"kernel": w(12, d)}},
                "moe": {"router": {"kernel": w(d, 4)}},
                "attn_norm": {"scale": jnp.ones(d)},
            }
        },
        "lm_head": {"kernel": w(d, v)},
    }


def _grad_seq(tree, steps=3, seed=1):
    rng = np.random.default_rng(seed)
    return [
        jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), tree)
        for _ in range(steps)
    ]


def test_stack_matches_numpy_on_embedding_head_router_and_heads():
    tree, beta, lr = _small_tree(), 0.9, 1e-2
    gs = _grad_seq(tree, steps=2)
    tx = symmetry_compatible(
        lr, head_dim=4, beta=beta, muon_beta=0.95, ortho_method="svd", weight_decay=0.0
    )
    state = tx.init(tree)
    m, b = {}, {}
    for g in gs:
        u, state = tx.update(g, state, tree)
        for key, path in [
            ("emb", ("embed", "embedding")),
            ("head", ("lm_head", "kernel")),
            ("router", ("layers", "0", "moe", "router", "kernel")),
            ("q", ("layers", "0", "attn", "q_proj", "kernel")),
            ("o", ("layers", "0", "attn", "o_proj", "kernel")),
        ]:
            x = g
            for p in path:
                x = x[p]
            x = np.asarray(x, np.float64)
            if key in ("q", "o"):  # Muon: EMA B and Nesterov input (1-μ)G + μB, μ = 0.95
                b[key] = 0.95 * b.get(key, 0) + 0.05 * x
            else:
                m[key] = beta * m.get(key, 0) + (1 - beta) * x
    mult = symmetric_stack.PRESETS["paper"]["multipliers"]

    def rn(x):
        return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-8)

    def ce(x):
        return x - x.mean(axis=0, keepdims=True)

    np.testing.assert_allclose(
        np.asarray(u["embed"]["embedding"]),
        -lr * mult["embedding"] * rn(m["emb"]),
        rtol=1e-5,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        np.asarray(u["lm_head"]["kernel"]).T,  # vocab on axis -1
        -lr * mult["lm_head"] * ce(rn(ce(m["head"].T))),
        rtol=1e-5,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        np.asarray(u["layers"]["0"]["moe"]["router"]["kernel"]).T,
        -lr * mult["router"] * ce(rn(ce(m["router"].T))),
        rtol=1e-5,
        atol=1e-7,
    )
    gq = np.asarray(gs[-1]["layers"]["0"]["attn"]["q_proj"]["kernel"], np.float64)
    go = np.asarray(gs[-1]["layers"]["0"]["attn"]["o_proj"]["kernel"], np.float64)
    xq, xo = 0.05 * gq + 0.95 * b["q"], 0.05 * go + 0.95 * b["o"]
    uq = np.asarray(u["layers"]["0"]["attn"]["q_proj"]["kernel"])
    uo = np.asarray(u["layers"]["0"]["attn"]["o_proj"]["kernel"])
    for h in range(2):  # q: column blocks (d, d_h), shape factor 1; o: row blocks (d_h, d)
        cols, rows = slice(4 * h, 4 * h + 4), slice(4 * h, 4 * h + 4)
        np.testing.assert_allclose(
            uq[:, cols], -lr * testing.polar_reference(xq[:, cols]), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            uo[rows], -lr * np.sqrt(8 / 4) * testing.polar_reference(xo[rows]), rtol=1e-4, atol=1e-6
        )


def test_stack_router_shift_and_headwise_scaling_invariance_with_controls():
    full = _small_tree(seed=2)["layers"]["0"]  # router, q (2 heads), k (1 head: GQA)
    tree = {
        "layers": {
            "0": {"moe": full["moe"], "attn": {k: full["attn"][k] for k in ("q_proj", "k_proj")}}
        }
    }
    gs = _grad_seq(tree, seed=3)
    router = ("layers", "0", "moe", "router", "kernel")

    def on(path, action):
        def apply(t, step):
            t = jax.tree.map(lambda x: x, t)
            node = t
            for p in path[:-1]:
                node = node[p]
            node[path[-1]] = action(node[path[-1]], step)
            return t

        return apply

    shift = on(router, testing.shift((8, 4), unit_axis=-1, seed=4))
    tx = symmetry_compatible(1e-2, head_dim=4)
    err = testing.equivariance_error(tx, tree, gs, shift, None, None)
    assert err < 1e-5
    adam_router = symmetry_compatible(1e-2, head_dim=4, router="adamw")
    assert (
        testing.equivariance_error(
            adam_router, jax.tree.map(jnp.zeros_like, tree), gs, shift, None, None
        )
        > CONTROL
    )
    # head-wise Muon: invariant to a positive rescaling of each head's block of q and k (GQA:
    # k has a single head here); whole-matrix Muon is not.
    scales = np.array([0.3, 3.0])

    def per_head(x, step):
        return x * jnp.asarray(np.repeat(scales[: x.shape[1] // 4], 4), x.dtype)

    q = ("layers", "0", "attn", "q_proj", "kernel")
    k = ("layers", "0", "attn", "k_proj", "kernel")

    def act(t, step):
        return on(k, per_head)(on(q, per_head)(t, step), step)

    assert testing.equivariance_error(tx, tree, gs, act, None, None) < 1e-4
    whole = symmetry_compatible(1e-2, head_dim=None)
    assert (
        testing.equivariance_error(whole, jax.tree.map(jnp.zeros_like, tree), gs, act, None, None)
        > CONTROL
    )


def test_stack_hybrid_mlp_neuron_permutation_equivariance():
    d, f = 6, 10
    tree = {
        "mlp": {
            "gate_proj": {"kernel": jnp.zeros((d, f))},
            "down_proj": {"kernel": jnp.zeros((f, d))},
        }
    }
    gs = _grad_seq(tree, seed=5)
    perm = np.random.default_rng(6).permutation(f)
    q = testing.orthogonal_matrix(f, 7)

    def neurons(transform):
        def act(t, step):
            return {
                "mlp": {
                    "gate_proj": {"kernel": transform(t["mlp"]["gate_proj"]["kernel"], 1)},
                    "down_proj": {"kernel": transform(t["mlp"]["down_proj"]["kernel"], 0)},
                }
            }

        return act

    permute = neurons(lambda x, ax: jnp.take(x, perm, axis=ax))
    rotate = neurons(
        lambda x, ax: (
            jnp.tensordot(x, jnp.asarray(q, x.dtype), ([ax], [1]))
            if ax == 1
            else jnp.asarray(q, x.dtype) @ x
        )
    )
    tx = symmetry_compatible(1e-2, mlp="hybrid", weight_decay=0.1)
    assert testing.equivariance_error(tx, tree, gs, permute) < 2e-4
    # control: a rotation of the neurons is no symmetry of the row-aware hybrid
    assert testing.equivariance_error(tx, tree, gs, rotate) > CONTROL


@pytest.mark.parametrize("experts", ["row", "muon"])
def test_stack_fused_interleaved_expert_gate_up(experts):
    # gpt-oss naming: experts/gate_up_proj (E, d, 2f) with gate_j, up_j at columns 2j, 2j+1.
    e, d, f = 2, 6, 3
    g = jnp.asarray(np.random.default_rng(8).standard_normal((e, d, 2 * f)), jnp.float32)
    tree = {"experts": {"gate_up_proj": jnp.zeros((e, d, 2 * f))}}
    tx = symmetry_compatible(
        1.0, experts=experts, weight_decay=0.0, ortho_method="svd", beta=0.0, muon_beta=0.0
    )
    u, _ = tx.update({"experts": {"gate_up_proj": g}}, tx.init(tree), tree)
    u, gn = -np.asarray(u["experts"]["gate_up_proj"]), np.asarray(g, np.float64)
    for x in range(e):
        if experts == "row":  # one unit = the pair (gate_j, up_j), normalized jointly
            for j in range(f):
                unit = gn[x][:, [2 * j, 2 * j + 1]]
                np.testing.assert_allclose(
                    u[x][:, [2 * j, 2 * j + 1]], unit / np.linalg.norm(unit), rtol=1e-5, atol=1e-7
                )
        else:  # Muon polarizes the gate half and the up half separately, per expert
            for half in (0, 1):
                want = np.sqrt(f / d if f > d else 1.0) * testing.polar_reference(gn[x][:, half::2])
                np.testing.assert_allclose(u[x][:, half::2], want, rtol=1e-4, atol=1e-6)


def test_stack_on_tiny_moe_model_runs_jitted_and_keeps_dtypes():
    model = models.build(models.get_preset("tiny_moe", n_layers=1))
    params = nnx.state(model, nnx.Param)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    tx = symmetry_compatible(5e-3, preset="olmoe_left", head_dim=32)
    state = tx.init(params)
    g = jax.tree.map(lambda x: jnp.full(x.shape, 0.01, x.dtype), params)
    u, state = jax.jit(tx.update)(g, state, params)
    for x, p in zip(jax.tree.leaves(u), jax.tree.leaves(params), strict=True):
        assert x.dtype == p.dtype and bool(jnp.all(jnp.isfinite(x)))


def test_stack_bad_configuration():
    tree = _small_tree()
    with pytest.raises(ValueError, match="preset"):
        symmetry_compatible(1e-2, preset="qwen4")
    with pytest.raises(ValueError, match="router"):
        symmetry_compatible(1e-2, router="right")
    with pytest.raises(ValueError, match="lr_multipliers key 'embed'"):
        symmetry_compatible(1e-2, lr_multipliers={"embed": 2.0})
    with pytest.raises(TypeError, match="head_dim"):
        symmetry_compatible(1e-2, head_dim=4.0)
    with pytest.raises(ValueError, match=r"'layers/0/attn/k_proj/kernel'.*head_dim=3"):
        symmetry_compatible(1e-2, head_dim=3).init(tree)


def _trajectory(tx, tree, gs):
    state, out = tx.init(tree), []
    for g in gs:
        u, state = tx.update(g, state, tree)
        out.append(u)
    return out


def test_stack_fallback_sets_the_moments_of_every_adamw_group():
    """``fallback=AdamW(b1, b2, eps)`` configures the AdamW of the vectors and of any group set
    to 'adamw'; each group keeps its rate η·c and its decay, so the vectors' updates equal
    the chain written out by hand, bitwise. ``fallback=None`` is ``AdamW()``."""
    tree, lr = _small_tree(), 1e-2
    gs = _grad_seq(tree, steps=2)
    mult = symmetric_stack.PRESETS["paper"]["multipliers"]["vectors"]
    spec = optzoo.fallback.AdamW(b1=0.8, b2=0.99, eps=1e-6)
    by_hand = optax.chain(
        optax.scale_by_adam(b1=0.8, b2=0.99, eps=1e-6),
        optax.add_decayed_weights(1e-3),
        optax.scale(mult),
        optax.scale_by_learning_rate(lr),
    )
    ours = _trajectory(symmetry_compatible(lr, head_dim=4, fallback=spec), tree, gs)
    hand = _trajectory(symmetry_compatible(lr, head_dim=4, vectors=by_hand), tree, gs)
    for a, b in zip(ours, hand, strict=True):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    default = _trajectory(symmetry_compatible(lr, head_dim=4), tree, gs)
    explicit = _trajectory(
        symmetry_compatible(lr, head_dim=4, fallback=optzoo.fallback.AdamW()), tree, gs
    )
    for a, b in zip(default, explicit, strict=True):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    # the router set to 'adamw' takes the same moments (its rate: η·c_router, no decay)
    plan = symmetry_compatible_plan(lr, router="adamw", fallback=spec)
    assert plan["router"].name == plan["vectors"].name == "adamw"


def test_stack_fallback_refuses_its_own_rate_or_decay_and_other_types():
    adamw = optzoo.fallback.AdamW
    for spec in (adamw(learning_rate=1e-3), adamw(lr_ratio=0.1), adamw(weight_decay=0.1)):
        with pytest.raises(ValueError, match="lr_multipliers"):
            symmetry_compatible(1e-2, fallback=spec)
    with pytest.raises(TypeError, match="symmetry_compatible: fallback must be"):
        symmetry_compatible(1e-2, fallback="adamw")
    with pytest.raises(ValueError, match="fallback= and vectors="):
        symmetry_compatible(1e-2, fallback=optax.sgd(1.0), vectors=optax.sgd(1.0))
    assert symmetry_compatible_plan(1e-2, fallback=optax.sgd(1.0))["vectors"].name == "custom"
    with pytest.raises(TypeError, match="adam_b1"):  # removed: fallback=AdamW(b1=...)
        symmetry_compatible(1e-2, adam_b1=0.9)
    with pytest.raises(TypeError, match="symmetry_compatible: .*adam_b2"):
        symmetry_compatible_plan(1e-2, adam_b2=0.9)


def test_stack_plan_takes_exactly_the_arguments_of_symmetry_compatible():
    plan = inspect.signature(symmetry_compatible_plan)
    assert plan.parameters == inspect.signature(symmetry_compatible).parameters
    assert (
        symmetry_compatible_plan(1e-2, preset="olmoe_left")["router"].name
        == "left_spectral(centered)"
    )


# ------------------------------------------------------- everyday Flax trees (issue 17)
def _hf_gpt2(d=8, vocab=32, positions=16):
    """HuggingFace Flax GPT-2 parameter names and shapes: FlaxConv1D stores (out, in)."""
    z = jnp.zeros
    block = {
        "ln_1": {"scale": z((d,)), "bias": z((d,))},
        "attn": {
            "c_attn": {"kernel": z((3 * d, d)), "bias": z((3 * d,))},
            "c_proj": {"kernel": z((d, d)), "bias": z((d,))},
        },
        "ln_2": {"scale": z((d,)), "bias": z((d,))},
        "mlp": {
            "c_fc": {"kernel": z((4 * d, d)), "bias": z((4 * d,))},
            "c_proj": {"kernel": z((d, 4 * d)), "bias": z((d,))},
        },
    }
    return {
        "transformer": {
            "wte": {"embedding": z((vocab, d))},
            "wpe": {"embedding": z((positions, d))},
            "h": {"0": block},
            "ln_f": {"scale": z((d,)), "bias": z((d,))},
        }
    }


def test_hf_flax_gpt2_conv1d_kernels_are_read_out_in():
    """Repro (before): HF's (out, in) Conv1D kernels were read as (in, out): c_attn (24, 8)
    split into heads along the input axis, c_fc's units on the input axis, and Muon's shape
    factor sqrt(max(1, out/in)) inverted (1 instead of 2 for c_fc)."""
    params = _hf_gpt2()
    got = roles_by_path(params)
    h = "transformer/h/0"
    assert got[f"{h}/attn/c_attn/kernel"] == ("attn_qkv", None)
    assert got[f"{h}/attn/c_proj/kernel"] == ("attn_o", None)
    assert got[f"{h}/mlp/c_fc/kernel"] == ("mlp_up", 0)  # neurons: axis 0 of (4d, d)
    assert got[f"{h}/mlp/c_proj/kernel"] == ("mlp_down", 1)  # neurons: axis 1 of (d, 4d)
    lays = routing.layouts(params)["transformer"]["h"]["0"]
    # fan_in x fan_out of the matrix view: c_attn d -> 3d, c_fc d -> 4d, c_proj 4d -> d
    assert lays["attn"]["c_attn"]["kernel"].matrix_shape((24, 8)) == (1, 8, 24)
    assert lays["mlp"]["c_fc"]["kernel"].matrix_shape((32, 8)) == (1, 8, 32)
    assert lays["mlp"]["c_proj"]["kernel"].matrix_shape((8, 32)) == (1, 32, 8)
    assert lays["attn"]["c_proj"]["kernel"].reduction_axes == (-1,)
    # Muon's shape factor follows: sqrt(max(1, fan_out/fan_in)) = 2 on c_fc (orthogonal rows)
    import optzoo

    g = jnp.asarray(np.random.default_rng(0).standard_normal((32, 8)), jnp.float32)
    tx = optzoo.scale_by_muon(beta=0.0, ortho_method="svd", layout=lays["mlp"]["c_fc"]["kernel"])
    u, _ = tx.update(g, tx.init(g))
    s = np.linalg.svd(np.asarray(u), compute_uv=False)
    np.testing.assert_allclose(s, 2.0, rtol=1e-5)
    # negative control: the Dense-orientation GPT-2 of the test above keeps (in, out)
    dense = {
        "h": {
            "0": {
                "attn": {
                    "c_attn": {"kernel": jnp.zeros((8, 24))},
                    "c_proj": {"kernel": jnp.zeros((8, 8))},
                }
            }
        }
    }
    dl = routing.layouts(dense)["h"]["0"]["attn"]
    assert dl["c_attn"]["kernel"].matrix_shape((8, 24)) == (1, 8, 24)
    assert dl["c_proj"]["kernel"].reduction_axes == (-2,)


def test_linen_and_nnx_module_names_are_covered():
    """linen auto-names (Dense_k, Conv_k, MultiHeadAttention_k), NNX attribute names with the
    /value suffix, a 3-D MultiHeadAttention under any attribute name, a classifier head."""
    z = jnp.zeros
    linen = {
        "Conv_0": {"kernel": z((3, 3, 4, 8)), "bias": z((8,))},
        "Dense_0": {"kernel": z((8, 16)), "bias": z((16,))},
        "MultiHeadAttention_0": {
            "query": {"kernel": z((16, 2, 4))},
            "out": {"kernel": z((2, 4, 16))},
        },
        "LayerNorm_0": {"scale": z((16,)), "bias": z((16,))},
        "head": {"kernel": z((16, 10)), "bias": z((10,))},
    }
    nnx_state = {
        "mha": {
            "query": {"kernel": {"value": z((16, 2, 4))}},
            "key": {"kernel": {"value": z((16, 2, 4))}},
        },
        "fc1": {"kernel": {"value": z((16, 32))}},
        "classifier": {"kernel": {"value": z((32, 10))}},
    }
    got = roles_by_path(linen)
    assert got["Conv_0/kernel"][0] == "other_matrix"
    assert got["Dense_0/kernel"][0] == "other_matrix"
    assert got["MultiHeadAttention_0/query/kernel"][0] == "attn_q"
    assert got["LayerNorm_0/scale"][0] == "vector"
    assert got["head/kernel"] == ("lm_head", 1)
    conv = routing.layouts(linen)["Conv_0"]["kernel"]
    assert conv.matrix_shape((3, 3, 4, 8)) == (1, 36, 8)  # spatial taps and in: fan-in
    roles = routing.classify(nnx_state)
    assert roles["mha"]["query"]["kernel"]["value"] == "attn_q"
    assert roles["fc1"]["kernel"]["value"] == "mlp_up"
    assert roles["classifier"]["kernel"]["value"] == "lm_head"


def test_uncovered_leaf_message_names_the_normalized_path():
    """Repro (before): the error printed 'head2/kernel/value' but rules match the path without
    '/value', so a rule copied from the message never matched."""
    state = {"head2": {"kernel": {"value": jnp.zeros((4, 3))}}}
    with pytest.raises(ValueError, match=r"parameter 'head2/kernel' ") as err:
        routing.classify(state)
    assert "head2/kernel/value" not in str(err.value)


def test_a_norm_named_matrix_is_not_silently_a_vector():
    """Repro (before): any leaf under a segment containing 'norm' with a scale/bias/weight
    name was a vector (so a 2-D 'normalizer/weight' matrix got AdamW silently)."""
    tree = {"normalizer": {"weight": jnp.zeros((8, 8))}}
    with pytest.raises(ValueError, match="no rule covers parameter 'normalizer/weight'"):
        routing.classify(tree)
    assert routing.classify({"q_norm": {"scale": jnp.zeros(4)}})["q_norm"]["scale"] == "vector"


def test_hidden_layouts_leave_embeddings_heads_routers_and_vectors_to_the_fallback():
    params = _hf_gpt2()
    lays = routing.hidden_layouts(params)
    assert lays["transformer"]["wte"]["embedding"] is None
    assert lays["transformer"]["ln_f"]["scale"] is None
    assert lays["transformer"]["wpe"]["embedding"] is not None  # other_matrix: hidden
    assert lays["transformer"]["h"]["0"]["mlp"]["c_fc"]["kernel"] is not None
