"""Tests of optzoo.muon: the optax battery, optax.contrib.muon parity (bias-corrected mode), a
float64 numpy re-derivation of Keller Jordan's recursion, bi-orthogonal equivariance with a
negative control, gradient-scale invariance, stacked/grouped/head-wise matrix views, the
fallback partition, shape factors, and input errors naming the parameter path."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optzoo import linalg, testing
from optzoo.layout import MatrixLayout
from optzoo.muon import ScaleByMuonState, muon, scale_by_muon

# Stacked leaves ([L, m, n], [E, m, n]) are read with an explicit layout: the default reads
# only 2-D leaves and refuses > 2-D ones (tests/test_default_layout.py).
STACKED = MatrixLayout()

# Jordan's quintic, written out here (not imported) so the reference is independent.
QA, QB, QC = 3.4445, -4.7750, 2.0315


def _normal(seed: int, shape, scale: float = 1.0) -> np.ndarray:
    # numpy, not jax.random: one compiled kernel per shape would dominate the runtime.
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _tree(shapes: dict, seed: int, scale: float = 1.0) -> dict:
    return {
        k: jnp.asarray(_normal(1000 * seed + i, s, scale))
        for i, (k, s) in enumerate(shapes.items())
    }


def _run(tx, params, grads):
    """Jitted updates (one compile beats eager dispatch of the many small ops of a
    partitioned tree); returns (final params, list of updates, final state)."""
    state = tx.init(params)
    update = jax.jit(tx.update)
    ups = []
    for g in grads:
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
        ups.append(u)
    return params, ups, state


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _ns5_reference(x: np.ndarray) -> np.ndarray:
    """Keller Jordan's zeropower_via_newtonschulz5, re-derived in float64 (torch layout)."""
    x = np.asarray(x, np.float64)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(5):
        a = x @ x.T
        x = QA * x + (QB * a + QC * a @ a) @ x
    return x.T if tall else x


# --------------------------------------------------------------------- optax battery
COMPAT_PARAMS = {
    "w": jnp.asarray(_normal(1, (4, 6))),
    "stack": jnp.asarray(_normal(2, (2, 3, 5))),
    "b": jnp.asarray(_normal(3, (6,))),
    "s": jnp.asarray(_normal(4, ())),
}


# ------------------------------------------------------------ optax.contrib.muon parity
def test_bias_corrected_mode_equals_optax_contrib_muon():
    shapes = {"a": (6, 10), "b": (12, 5), "c": (8, 8), "v": (7,)}
    params = _tree(shapes, 0)
    grads = [_tree(shapes, 10 + t) for t in range(6)]
    # optax sends the 1-D leaf to adamw(nesterov=nesterov, eps=eps); give ours the same.
    fallback = optax.adamw(3e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, nesterov=True)
    ours = muon(
        0.02,
        bias_correction=True,
        ortho_method="newton_schulz",
        ns_steps=5,
        eps=1e-8,
        weight_decay=0.1,
        fallback=fallback,
    )
    theirs = optax.contrib.muon(
        0.02, eps=1e-8, weight_decay=0.1, adam_learning_rate=3e-4, adam_b2=0.95
    )
    s1, s2 = ours.init(params), theirs.init(params)
    up1, up2 = jax.jit(ours.update), jax.jit(theirs.update)
    p1 = p2 = params
    for g in grads:
        u1, s1 = up1(g, s1, p1)
        u2, s2 = up2(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
        # Both float32 with the same recursion; they differ only in rounding: optzoo.linalg
        # scales by the peak entry before taking ‖X‖_F, optax divides by ‖X‖_F directly, and
        # NS5's slope (up to a = 3.44 per step on small singular values) amplifies that ulp-level
        # difference. Measured max 1.4e-6 relative over 6 steps; 1e-5 leaves a 7x margin and is
        # still ~1e4x below the bias-correction effect this test exists to pin (5-15 %).
        for k in ("a", "b", "c"):
            assert _rel(u1[k], u2[k]) < 1e-5, k
        # The fallback leaf runs identical optax code: bitwise equal.
        np.testing.assert_array_equal(np.asarray(u1["v"]), np.asarray(u2["v"]))
    # and without bias correction the early steps are far from optax's (the option matters).
    _, ups, _ = _run(
        muon(0.02, ortho_method="newton_schulz", ns_steps=5, eps=1e-8, fallback=fallback),
        params,
        grads[:2],
    )
    _, ups_optax, _ = _run(
        optax.contrib.muon(0.02, eps=1e-8, adam_learning_rate=3e-4, adam_b2=0.95), params, grads[:2]
    )
    assert _rel(ups[1]["a"], ups_optax[1]["a"]) > 1e-2


# --------------------------------------------------------- Keller Jordan's recursion
def test_reference_semantics_match_numpy_float64_recursion():
    shapes = {"wide": (6, 10), "tall": (12, 5), "square": (8, 8)}  # Flax (fan_in, fan_out)
    params = _tree(shapes, 1)
    grads = [_tree(shapes, 20 + t) for t in range(6)]
    lr, wd, beta = 0.05, 0.1, 0.95
    tx = muon(lr, beta, weight_decay=wd, ortho_method="newton_schulz", ns_steps=5)
    state, p = tx.init(params), params
    # Reference in PyTorch layout: W = kernelᵀ is (out, in) = (fan_out, fan_in).
    w = {k: np.asarray(v, np.float64).T for k, v in params.items()}
    buf = {k: np.zeros_like(v) for k, v in w.items()}
    for g in grads:
        u, state = tx.update(g, state, p)
        p = optax.apply_updates(p, u)
        for k in shapes:
            grad = np.asarray(g[k], np.float64).T
            buf[k] = buf[k] + (1 - beta) * (grad - buf[k])  # momentum.lerp_(grad, 1 - beta)
            x = grad + beta * (buf[k] - grad)  # grad.lerp_(momentum, beta)
            o = _ns5_reference(x) * np.sqrt(max(1.0, x.shape[0] / x.shape[1]))
            new = w[k] * (1 - lr * wd) - lr * o
            delta, w[k] = new - w[k], new
            # float32 code vs float64 reference: NS5 amplifies float32 rounding (eps 6e-8) by
            # its per-step slope; measured <= 1.6e-6 relative on the update. 1e-5 = 6x margin.
            assert _rel(u[k], delta.T) < 1e-5, k
            assert _rel(p[k], w[k].T) < 1e-6, k  # params: the update is ~5 % of them


# ------------------------------------------------------------------------ equivariance
EQ_SHAPES = {"w": (6, 10), "r": (3, 9), "stack": (2, 4, 6), "b": (6,)}


def _eq_problem():
    # Small parameters and lr 0.1: the updates dominate the iterate, so the relative error of
    # the parameters measures the update's equivariance (a large W would hide it).
    params = _tree(EQ_SHAPES, 2, scale=0.05)
    grads = [_tree(EQ_SHAPES, 40 + t) for t in range(4)]
    action = testing.per_leaf(
        {
            "w": testing.bi_orthogonal(EQ_SHAPES["w"], 1),
            "r": testing.bi_orthogonal(EQ_SHAPES["r"], 2),
            "stack": testing.bi_orthogonal(EQ_SHAPES["stack"], 3),  # independent (U, V) per slice
            "b": None,
        }
    )
    return params, grads, action


@pytest.mark.parametrize("method", ["auto", "newton_schulz", "gram_newton_schulz", "svd"])
def test_bi_orthogonal_equivariance_with_momentum_and_decay(method):
    params, grads, action = _eq_problem()
    tx = muon(0.1, weight_decay=0.5, ortho_method=method, layout=STACKED)
    # NS-type maps use only X, XXᵀ and ‖X‖_F: exactly equivariant up to float32 rounding of
    # U·X·Vᵀ (measured <= 2.7e-6 over 4 steps, 'auto' includes the Gram path on the 3×9 leaf).
    testing.check_equivariance(tx, params, grads, action, rtol=2e-5)


def test_equivariance_negative_control_adam():
    params, grads, action = _eq_problem()
    # Coordinatewise Adam is not rotation-equivariant: measured error 0.75.
    assert testing.equivariance_error(optax.adam(0.1), params, grads, action) > 0.1


@pytest.mark.parametrize("c", [1e-3, 1e3])
def test_direction_is_invariant_to_gradient_scale(c):
    shapes = {"w": (5, 8), "stack": (2, 6, 4)}
    params = _tree(shapes, 3)
    grads = [_tree(shapes, 60 + t) for t in range(3)]
    scaled = [jax.tree.map(lambda x: c * x, g) for g in grads]
    for tx in (
        scale_by_muon(layout=STACKED),
        muon(0.02, weight_decay=0.1, ortho_method="newton_schulz", layout=STACKED),
    ):
        _, u1, _ = _run(tx, params, grads)
        _, u2, _ = _run(tx, params, scaled)
        # Exact in real arithmetic (the eps of the normalization is relative to the peak
        # entry, so c cancels). float32 rounding of c·x (6e-8) amplified by the orthogonalizer's
        # slope: measured <= 4.5e-6 relative (Frobenius, per leaf); bound 2e-5.
        for a, b in zip(u1, u2, strict=True):
            for k in shapes:
                assert _rel(b[k], a[k]) < 2e-5, k


# ---------------------------------------------------------------- stacked and grouped
STACK_SHAPES = {"L": (3, 4, 6), "E": (2, 5, 3), "LE": (2, 3, 4, 6), "x": (4, 6)}


def _slices(tree: dict) -> dict:
    """Every matrix slice of every leaf as its own 2-D leaf."""
    out = {}
    for k, v in tree.items():
        flat = jnp.reshape(v, (-1,) + v.shape[-2:])
        for i in range(flat.shape[0]):
            out[f"{k}{i}"] = flat[i]
    return out


def test_stacked_leaves_equal_per_slice_and_grouping_changes_nothing():
    method = "auto"  # the default; the grouping logic does not depend on the orthogonalizer
    params = _tree(STACK_SHAPES, 4)
    grads = [_tree(STACK_SHAPES, 80 + t) for t in range(3)]
    grouped, _, _ = _run(
        muon(0.05, weight_decay=0.1, ortho_method=method, layout=STACKED), params, grads
    )
    ungrouped, _, _ = _run(
        muon(0.05, weight_decay=0.1, ortho_method=method, group=False, layout=STACKED),
        params,
        grads,
    )
    sliced, _, _ = _run(
        muon(0.05, weight_decay=0.1, ortho_method=method),
        _slices(params),
        [_slices(g) for g in grads],
    )
    # Each matrix is processed independently by the same batched kernels: measured bitwise
    # equal on CPU. A 1-ulp tolerance keeps the test meaningful on backends whose batched
    # GEMMs block differently by batch size.
    chex.assert_trees_all_close(grouped, ungrouped, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(_slices(grouped), sliced, rtol=1e-6, atol=1e-7)


def test_stacked_layout_with_batch_axis_in_the_middle():
    # Experts stored as (fan_in, E, fan_out): batch axis 1.
    lay = MatrixLayout(reduction_axes=(0,), output_axes=(2,))
    g = jnp.asarray(_normal(5, (4, 3, 6)))
    tx = scale_by_muon(beta=0.0, ortho_method="svd", shape_scale=None, layout=lay)
    u, _ = tx.update({"e": g}, tx.init({"e": g}))
    want = testing.polar_reference(np.moveaxis(np.asarray(g), 1, 0))  # (E, 4, 6)
    # float32 SVD vs float64 SVD of well-conditioned 4×6 blocks: ~1e-6.
    np.testing.assert_allclose(np.moveaxis(np.asarray(u["e"]), 1, 0), want, atol=1e-5)


# ---------------------------------------------------------------------- head-wise
def test_headwise_layout_equals_per_head_orthogonalization_by_hand():
    d, dh = 4, 6
    shapes = {"q": (d, 3 * dh), "k": (d, 2 * dh)}  # GQA: 3 query heads, 2 kv heads
    layout = {"q": MatrixLayout(num_heads=3), "k": MatrixLayout(num_heads=2)}
    params = _tree(shapes, 5)
    grads = [_tree(shapes, 90 + t) for t in range(3)]
    beta = 0.9
    tx = scale_by_muon(beta, ortho_method="svd", layout=layout)
    _, ups, _ = _run(tx, params, grads)
    heads = {"q": 3, "k": 2}
    buf = {k: np.zeros((heads[k], d, dh)) for k in shapes}
    for t, g in enumerate(grads):
        for k in shapes:
            gh = np.stack(np.split(np.asarray(g[k], np.float64), heads[k], axis=1))  # (H, d, dh)
            buf[k] = beta * buf[k] + (1 - beta) * gh
            x = (1 - beta) * gh + beta * buf[k]
            # per-head block (fan_in d, fan_out dh): Jordan scale √max(1, dh/d)
            o = testing.polar_reference(x) * np.sqrt(max(1.0, dh / d))
            want = np.concatenate(list(o), axis=1)
            # float32 SVD polar of 4×6 Gaussian blocks vs float64: measured ~1e-6.
            np.testing.assert_allclose(np.asarray(ups[t][k]), want, atol=2e-5, err_msg=k)
    # Negative control: orthogonalizing the whole fused matrix is a different update.
    whole, _ = scale_by_muon(0.0, ortho_method="svd").update(grads[0], tx.init(params))
    assert _rel(whole["q"], ups[0]["q"]) > 0.1


# -------------------------------------------------------------------- shape factors
@pytest.mark.parametrize(
    "scale,shape,want",
    [
        ("jordan", (4, 12), np.sqrt(3.0)),  # fan_out/fan_in = 3
        ("jordan", (12, 4), 1.0),  # fan_out < fan_in: no boost
        ("rms", (4, 12), 0.2 * np.sqrt(12.0)),
        (None, (4, 12), 1.0),
    ],
)
def test_shape_scale_sets_every_singular_value(scale, shape, want):
    g = jnp.asarray(_normal(6, shape))
    tx = scale_by_muon(beta=0.0, ortho_method="svd", shape_scale=scale)
    u, _ = tx.update(g, tx.init(g))
    sv = np.linalg.svd(np.asarray(u, np.float64), compute_uv=False)
    np.testing.assert_allclose(sv, want, rtol=1e-5)  # float32 SVD polar: ~1e-6


def test_spectral_norm_bound_with_exact_polar():
    # Muon + decoupled decay is Lion-𝒦 with 𝒦 = nuclear norm: with s = √max(1, n/m),
    # ‖W'‖₂ <= (1 − ηλ)‖W‖₂ + ηs at every step, whatever the gradients.
    lr, wd = 0.1, 0.5
    shape = (4, 8)
    s = np.sqrt(2.0)
    tx = muon(lr, weight_decay=wd, ortho_method="svd")
    w = jnp.asarray(_normal(7, shape, 3.0))
    state = tx.init(w)
    for t in range(20):
        u, state = tx.update(jnp.asarray(_normal(100 + t, shape)), state, w)
        new = optax.apply_updates(w, u)
        bound = (1 - lr * wd) * np.linalg.norm(np.asarray(w), 2) + lr * s
        assert np.linalg.norm(np.asarray(new), 2) <= bound + 1e-5  # float32 rounding of W
        w = new


# ------------------------------------------------------------------ fallback / routing
def test_non_matrix_leaves_go_to_documented_adamw_fallback():
    shapes = {"embed": (10, 4), "w": (4, 6), "b": (6,)}
    params = _tree(shapes, 8)
    grads = [_tree(shapes, 120 + t) for t in range(3)]

    def hidden_only(p):
        return {"embed": None, "w": MatrixLayout(), "b": None}

    ours = muon(0.02, layout=hidden_only, weight_decay=0.1)
    _, ups, state = _run(ours, params, grads)
    adam_part = {k: params[k] for k in ("embed", "b")}
    _, adam_ups, _ = _run(
        optax.adamw(3e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0),
        adam_part,
        [{k: g[k] for k in adam_part} for g in grads],
    )
    muon_part, muon_ups, _ = _run(
        optax.chain(
            scale_by_muon(), optax.add_decayed_weights(0.1), optax.scale_by_learning_rate(0.02)
        ),
        {"w": params["w"]},
        [{"w": g["w"]} for g in grads],
    )
    for t in range(3):
        for k in ("embed", "b"):  # same optax code on the same leaves: bitwise
            np.testing.assert_array_equal(np.asarray(ups[t][k]), np.asarray(adam_ups[t][k]))
        np.testing.assert_array_equal(np.asarray(ups[t]["w"]), np.asarray(muon_ups[t]["w"]))
    muon_state = state.inner_states["muon"].inner_state[0]
    assert isinstance(muon_state, ScaleByMuonState)
    assert isinstance(muon_state.mu["embed"], optax.MaskedNode)  # no Muon state for it


def test_float16_fallback_leaves_keep_adam_moments_in_float32():
    # Regression: optax.adamw in float16 gives 0/0 = NaN on a zero gradient (eps=1e-8 rounds
    # to 0), m/0 = inf on small ones ((1-b2)·g² underflows, e.g. |g| = 1e-4) and overflows nu once
    # |g| > 256 (g² > 65504). The default fallback runs float16 leaves in float32; float32 /
    # bfloat16 leaves must stay bitwise equal to optax.adamw.
    dtypes = {
        "w": jnp.float32,
        "zero16": jnp.float16,
        "tiny16": jnp.float16,
        "big16": jnp.float16,
        "b32": jnp.float32,
        "bb16": jnp.bfloat16,
    }
    shapes = {"w": (4, 6), "zero16": (5,), "tiny16": (2,), "big16": (3,), "b32": (6,), "bb16": (4,)}
    params = {
        k: jnp.asarray(_normal(20 + i, s), dtypes[k]) for i, (k, s) in enumerate(shapes.items())
    }

    def grad(t):
        g = {
            k: jnp.asarray(_normal(40 + 7 * t + i, s), dtypes[k])
            for i, (k, s) in enumerate(shapes.items())
        }
        g["zero16"] = jnp.zeros((5,), jnp.float16)
        g["tiny16"] = jnp.asarray([1e-4, -2e-4], jnp.float16)
        g["big16"] = jnp.asarray(1000.0 * _normal(90 + t, (3,)), jnp.float16)
        return g

    grads = [grad(t) for t in range(3)]
    vec = ("zero16", "tiny16", "big16", "b32", "bb16")
    adam = optax.adamw(3e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0)
    _, ups, state = _run(muon(0.02), params, grads)

    # reference: optax.adamw, on float32 copies for the float16 leaves, on the leaves as they
    # are otherwise; updates cast to the leaf dtype (what the docstring promises)
    def up32(t):
        return {k: t[k].astype(jnp.float32) if dtypes[k] == jnp.float16 else t[k] for k in vec}

    _, ref, _ = _run(adam, up32(params), [up32(g) for g in grads])
    for t in range(3):
        for k in vec:
            assert ups[t][k].dtype == dtypes[k]
            np.testing.assert_array_equal(
                np.asarray(ups[t][k]), np.asarray(ref[t][k].astype(dtypes[k])), err_msg=k
            )
        assert np.all(np.asarray(ups[t]["zero16"]) == 0)  # m = 0: a zero step, not NaN
        assert np.all(np.asarray(ups[t]["big16"]) != 0)  # still moving (nu is finite)
    # first Adam step is ±lr exactly up to eps/|g| (<= 1e-5); rtol 2e-3 covers the float16
    # rounding of the update (relative spacing 2^-11 ≈ 4.9e-4)
    for k in ("tiny16", "big16"):
        np.testing.assert_allclose(np.abs(np.asarray(ups[0][k], np.float32)), 3e-4, rtol=2e-3)
    nu = state.inner_states["fallback"].inner_state[0].nu
    assert nu["zero16"].dtype == nu["tiny16"].dtype == nu["big16"].dtype == jnp.float32
    assert nu["b32"].dtype == jnp.float32 and nu["bb16"].dtype == jnp.bfloat16
    # negative control: plain optax.adamw on the float16 leaves fails both ways
    f16 = {k: params[k] for k in ("zero16", "tiny16", "big16")}
    _, raw, _ = _run(adam, f16, [{k: g[k] for k in f16} for g in grads])
    assert np.all(np.isnan(np.asarray(raw[0]["zero16"])))
    assert np.all(np.isinf(np.asarray(raw[0]["tiny16"])))
    assert not np.allclose(
        np.asarray(raw[0]["big16"], np.float32), np.asarray(ups[0]["big16"], np.float32), rtol=0.1
    )


def test_custom_fallback_and_scale_by_muon_pass_through():
    params = {"w": jnp.asarray(_normal(9, (4, 6))), "b": jnp.asarray(_normal(10, (6,)))}
    g = {"w": jnp.asarray(_normal(11, (4, 6))), "b": jnp.asarray(_normal(12, (6,)))}
    tx = muon(0.02, fallback=optax.sgd(0.5))
    u, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(u["b"]), -0.5 * np.asarray(g["b"]), rtol=1e-6)
    raw = scale_by_muon()
    u, state = raw.update(g, raw.init(params))
    np.testing.assert_array_equal(np.asarray(u["b"]), np.asarray(g["b"]))  # unchanged
    assert isinstance(state.mu["b"], optax.MaskedNode)


def test_momentum_dtype_and_update_dtype():
    params = {"w": jnp.asarray(_normal(13, (4, 6)), jnp.bfloat16)}
    tx = muon(0.02, mu_dtype=jnp.float32)
    u, state = tx.update(params, tx.init(params), params)
    assert u["w"].dtype == jnp.bfloat16
    assert state.inner_states["muon"].inner_state[0].mu["w"].dtype == jnp.float32


def test_bias_correction_without_nesterov_is_a_pure_rescale():
    shapes = {"w": (5, 7)}
    params = _tree(shapes, 14)
    grads = [_tree(shapes, 140 + t) for t in range(3)]
    _, u1, _ = _run(scale_by_muon(nesterov=False), params, grads)
    _, u2, _ = _run(scale_by_muon(nesterov=False, bias_correction=True), params, grads)
    for a, b in zip(u1, u2, strict=True):  # B/(1-β^t) has the same polar factor as B
        chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- properties
@settings(max_examples=5, deadline=None, derandomize=True)
@given(m=st.integers(1, 7), n=st.integers(1, 7), log_scale=st.sampled_from([-20, -3, 0, 3, 20]))
def test_finite_in_finite_out_and_zero_maps_to_zero(m, n, log_scale):
    g = jnp.asarray(_normal(m * 10 + n, (m, n), 10.0**log_scale))
    tx = scale_by_muon(ortho_method="newton_schulz")
    u, state = tx.update(g, tx.init(g))
    assert bool(jnp.all(jnp.isfinite(u)))
    u0, _ = tx.update(jnp.zeros_like(g), tx.init(g))
    assert not bool(jnp.any(u0))


# --------------------------------------------------------------------------- errors
def test_layout_that_does_not_fit_names_the_path():
    params = {"layers": {"0": {"attn": {"kernel": jnp.zeros((4, 10))}}}}
    lay = {"layers": {"0": {"attn": {"kernel": MatrixLayout(num_heads=3)}}}}
    with pytest.raises(ValueError, match="layers/0/attn/kernel"):
        muon(0.02, layout=lay).init(params)
    with pytest.raises(ValueError, match="layers/0/attn/kernel"):
        scale_by_muon(layout=lay).init(params)


def test_one_dimensional_leaf_with_explicit_layout_names_the_path():
    params = {"w": jnp.zeros((4, 4)), "bias": jnp.zeros(4)}
    lay = {"w": MatrixLayout(), "bias": MatrixLayout()}
    with pytest.raises(ValueError, match="'bias'.*at least 2 dimensions"):
        muon(0.02, layout=lay).init(params)


def test_non_float_leaf_names_the_path():
    params = {"w": jnp.zeros((4, 4)), "step": jnp.zeros((3, 3), jnp.int32)}
    with pytest.raises(TypeError, match="'step'.*floating"):
        muon(0.02).init(params)
    with pytest.raises(TypeError, match="'step'.*floating"):
        scale_by_muon().init(params)
    tx = scale_by_muon()
    state = tx.init({"w": jnp.zeros((4, 4)), "step": jnp.zeros((3, 3))})
    with pytest.raises(TypeError, match="'step'"):
        tx.update(params, state)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(shape_scale="moonshot"), "shape_scale"),
        (dict(ortho_method="cholesky"), "ortho_method"),
        (dict(ortho_method="auto", ns_coeffs=linalg.JORDAN_QUINTIC), "ns_coeffs"),
        (dict(beta=1.5), "beta"),
        (dict(ns_steps=0), "ns_steps"),
    ],
)
def test_bad_hyperparameters_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        scale_by_muon(**kwargs)
    with pytest.raises(ValueError, match=match):
        muon(0.02, **kwargs)


# -------------------------------------------------------------------- step-time bench
def test_step_time_bench_gives_both_muons_the_same_partition():
    from experiments.bench import step_time
    from experiments.bench.trees import gpt2_small_like_tree

    for stacked in (False, True):
        tree = gpt2_small_like_tree(stacked=stacked)
        ours = jax.tree.leaves(step_time.hidden_layout(tree), is_leaf=lambda x: x is None)
        theirs = jax.tree.leaves(
            step_time._optax_dimension_numbers(tree),
            is_leaf=lambda x: x is None or isinstance(x, optax.contrib.MuonDimensionNumbers),
        )
        assert [x is None for x in ours] == [x is None for x in theirs]
        # 4 kernels per layer (qkv, o, fc, proj); embeddings, norms and biases excluded.
        assert sum(x is not None for x in ours) == (4 if stacked else 48)
