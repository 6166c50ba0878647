"""Tests of optzoo.symmetric: float64 numpy re-derivations of every map, the equivariance
identities of docs/math/symmetry.md#identities through the public aliases (multi-step, momentum,
weight decay) with negative controls, the rare-token drift bound, bad input, and the optax battery.

Tolerances: the maps run in float32. Row normalization and centering are O(1)-conditioned, so
float32 agrees with float64 to ~1e-6 relative; we allow 1e-5. The spectral maps invert a Gram
(condition number squared) by float32 eigh: on the small Gaussian blocks used here (condition
number <= ~10, Gram <= ~100) the error is ~1e-6·100; we allow 2e-4. Equivariance errors are
relative Frobenius errors over all steps (testing.equivariance_error); negative controls start
from zero parameters (so the error measures the updates alone) and must exceed 0.05, i.e. be
>= 250x the tolerance of the positive check.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optzoo
from optzoo import symmetric, testing

BETA = 0.9
STEPS = 4
ROW_TOL = 1e-5  # float32 row maps vs float64 (see module docstring)
SPEC_TOL = 2e-4  # float32 Gram inverse square roots vs float64
EQ_TOL = 2e-5  # equivariance of float32 trajectories, row maps
EQ_SPEC_TOL = 2e-4
CONTROL = 0.05  # a broken symmetry must give at least this relative error


# --------------------------------------------------------------------------- helpers
def compose(*actions: testing.Action) -> testing.Action:
    """Local helper (not in optzoo.testing): ``compose(a, b)(x) = a(b(x))``."""

    def fn(x, t):
        for a in reversed(actions):
            x = a(x, t)
        return x

    return testing.Action(fn, " ∘ ".join(a.name for a in actions))


def grads(shape, steps=STEPS, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(scale * rng.standard_normal(shape), jnp.float32) for _ in range(steps)]


def params_like(shape, seed=100):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def run_directions(tx, gs):
    """Directions of a ``scale_by_*`` block for a gradient sequence (jitted update)."""
    state = tx.init(gs[0])
    update = jax.jit(tx.update)
    out = []
    for g in gs:
        u, state = update(g, state)
        out.append(np.asarray(u, np.float64))
    return out


# numpy float64 re-derivations (units as rows; written from docs/math/conventions.md#primitives,
# docs/math/symmetry.md#maps)
def np_ema(gs, beta=BETA):
    m = np.zeros_like(np.asarray(gs[0], np.float64))
    out = []
    for g in gs:
        m = beta * m + (1 - beta) * np.asarray(g, np.float64)
        out.append(m.copy())
    return out


def np_center(x):
    return x - x.mean(axis=-2, keepdims=True)


def np_rownorm(x, eps=1e-8):
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + eps)


def np_isqrt(c, rel_eps):
    """(C + rel_eps·tr(C)/n·I)^{-1/2} of a symmetric PSD matrix by float64 eigh."""
    n = c.shape[-1]
    damped = c + rel_eps * np.trace(c) / n * np.eye(n)
    w, v = np.linalg.eigh(damped)
    return (v / np.sqrt(w)) @ v.T


def np_polar_gram(y, side, rel_eps=1e-6):
    if side == "right":
        return y @ np_isqrt(y.T @ y, rel_eps)
    return np_isqrt(y @ y.T, rel_eps) @ y


def np_one_sided(m, center=False, alpha=1.0, rel_eps=1e-6):
    y = np_center(m) if center else m
    p = np_polar_gram(y, "right", rel_eps)
    d = max(np.sum(y * p), 1e-8) ** alpha * p
    return np_center(d) if center else d


def np_left(m, center=True, alpha=1.0, rel_eps=1e-6):
    y = np_center(m) if center else m
    p = np_polar_gram(y, "left", rel_eps)
    d = max(np.sum(y * p), 1e-8) ** alpha * p
    return np_center(d) if center else d


def np_hybrid(m, order, alpha=1.0, center=False, rel_eps=1e-6):
    y = np_center(m) if center else m
    side = "right" if y.shape[1] <= y.shape[0] else "left"
    if order == "row_then_polar":
        z = np_rownorm(y)
        if center:  # the reference re-centers after the row scaling (optim/hybrid.py)
            z = np_center(z)
        p = np_polar_gram(z, side, rel_eps)
        d = max(np.sum(z * p), 1e-8) ** alpha * p
    else:
        p = np_polar_gram(y, side, rel_eps)
        d = np_rownorm(max(np.sum(y * p), 1e-8) ** alpha * p)
    return np_center(d) if center else d


def rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(b), 1e-30))


# ------------------------------------------------------------------- numpy oracles
@pytest.mark.parametrize("center", [False, True])
def test_rownorm_alias_matches_numpy_trajectory(center):
    # Flax LM-head orientation (d, V) = (5, 9): units are columns (unit_axis=-1).
    shape, lr, wd = (5, 9), 0.05, (0.0 if center else 0.1)
    gs = grads(shape)
    w0 = params_like(shape)
    tx = symmetric.rownorm(lr, unit_axis=-1, beta=BETA, center=center, weight_decay=wd)
    state, w = tx.init(w0), w0
    update = jax.jit(tx.update)
    w_np = np.asarray(w0, np.float64).T  # units as rows
    for g, m in zip(gs, np_ema([np.asarray(g, np.float64).T for g in gs]), strict=True):
        u, state = update(g, state, w)
        w = optax.apply_updates(w, u)
        d = np_center(np_rownorm(np_center(m))) if center else np_rownorm(m)
        w_np = w_np - lr * (d + wd * w_np)
        np.testing.assert_allclose(np.asarray(w, np.float64).T, w_np, rtol=ROW_TOL, atol=ROW_TOL)


@pytest.mark.parametrize("center,alpha", [(False, 1.0), (False, 0.5), (True, 1.0)])
def test_one_sided_matches_numpy(center, alpha):
    shape = (12, 4)  # tall Embed-like (V, d), units on axis 0
    gs = grads(shape, seed=1)
    tx = symmetric.scale_by_one_sided_spectral(BETA, unit_axis=0, center=center, alpha=alpha)
    for d, m in zip(run_directions(tx, gs), np_ema(gs), strict=True):
        assert rel_err(d, np_one_sided(m, center, alpha)) < SPEC_TOL


def test_one_sided_newton_schulz_gram_matches_eigh():
    # The matmul-only coupled iteration (20 steps) on a well-conditioned Gram.
    gs = grads((16, 4), steps=2, seed=2)
    tx = symmetric.scale_by_one_sided_spectral(BETA, unit_axis=0, gram_method="newton_schulz")
    for d, m in zip(run_directions(tx, gs), np_ema(gs), strict=True):
        assert rel_err(d, np_one_sided(m)) < 1e-3  # 20 NS steps: ~1e-4 on cond(C) ~ 10


@pytest.mark.parametrize("center", [True, False])
def test_left_spectral_matches_numpy(center):
    shape = (10, 4)  # Flax router kernel (d, E): experts on axis -1
    gs = grads(shape, seed=3)
    tx = symmetric.scale_by_left_spectral(BETA, unit_axis=-1, center=center)
    for d, m in zip(run_directions(tx, gs), np_ema([g.T for g in gs]), strict=True):
        assert rel_err(d.T, np_left(m, center)) < SPEC_TOL


@pytest.mark.parametrize("order", ["row_then_polar", "polar_then_row"])
@pytest.mark.parametrize("shape,unit_axis", [((12, 5), 0), ((9, 3), -1)])
def test_hybrid_matches_numpy(order, shape, unit_axis):
    # (12, 5) units rows -> tall, right Gram; (9, 3) with units on -1 -> (3, 9) wide, left Gram.
    gs = grads(shape, seed=4)
    tx = symmetric.scale_by_hybrid(BETA, unit_axis=unit_axis, order=order, alpha=0.7)
    to_rows = (lambda x: x) if unit_axis == 0 else (lambda x: x.T)
    for d, m in zip(run_directions(tx, gs), np_ema([to_rows(g) for g in gs]), strict=True):
        assert rel_err(to_rows(d), np_hybrid(m, order, alpha=0.7)) < SPEC_TOL


def test_hybrid_centered_and_leaf_scope_match_numpy():
    # Stacked experts (E, U, F): nu summed over the whole leaf (the reference's choice).
    gs = grads((3, 6, 4), seed=5)
    tx = symmetric.scale_by_hybrid(BETA, unit_axis=-2, center=True, nu_scope="leaf")
    for d, m in zip(run_directions(tx, gs), np_ema(gs), strict=True):
        per = [np_hybrid(m[e], "row_then_polar", alpha=0.0, center=True) for e in range(3)]
        zs = [np_center(np_rownorm(np_center(m[e]))) for e in range(3)]
        nu = sum(np.sum(z * np_polar_gram(z, "right")) for z in zs)
        assert rel_err(d, nu * np.stack(per)) < SPEC_TOL


def test_hybrid_polar_method_svd_matches_exact_polar():
    gs = grads((8, 5), steps=2, seed=6)
    tx = symmetric.scale_by_hybrid(BETA, unit_axis=0, alpha=0.0, polar_method="svd")
    for d, m in zip(run_directions(tx, gs), np_ema(gs), strict=True):
        assert rel_err(d, testing.polar_reference(np_rownorm(m))) < 1e-5


@pytest.mark.parametrize("pair", ["concat", "interleaved"])
def test_gate_up_pair_normalizes_pairs_jointly(pair):
    d, f = 4, 3
    g = grads((d, 2 * f), steps=1, seed=7)[0]  # fused Flax kernel (d, 2f), units on -1
    tx = symmetric.scale_by_rownorm(0.0, unit_axis=-1, gate_up_pair=pair)
    (u,) = run_directions(tx, [g])
    gn = np.asarray(g, np.float64)
    for j in range(f):
        cols = (j, f + j) if pair == "concat" else (2 * j, 2 * j + 1)
        unit = np.concatenate([gn[:, cols[0]], gn[:, cols[1]]])
        want = unit / (np.linalg.norm(unit) + 1e-8)
        got = np.concatenate([u[:, cols[0]], u[:, cols[1]]])
        np.testing.assert_allclose(got, want, rtol=ROW_TOL, atol=ROW_TOL)


# ---------------------------------------------- docs/math/symmetry.md#identities (aliases, T steps)
def test_identity2_right_one_sided_is_scaled_polar_factor():
    # Tall full-rank G: f(G) = ν^α polar(G) with ν = ‖G‖_* (β = 0: one gradient).
    g = grads((20, 6), steps=1, seed=8)[0]
    (u,) = run_directions(symmetric.scale_by_one_sided_spectral(0.0, unit_axis=0, alpha=1.0), [g])
    gn = np.asarray(g, np.float64)
    nuc = np.linalg.svd(gn, compute_uv=False).sum()
    assert rel_err(u, nuc * testing.polar_reference(gn)) < SPEC_TOL


def test_identity1_2_one_sided_bi_orthogonal_and_adam_control():
    shape = (12, 4)
    gs, w0 = grads(shape, seed=9), params_like(shape)
    tx = symmetric.one_sided_spectral(1e-2, unit_axis=0, beta=BETA, weight_decay=0.1)
    # exact arithmetic: U·Vᵀ for any orthogonal U (float32: to rounding of the Gram root)
    testing.check_equivariance(tx, w0, gs, testing.bi_orthogonal(shape, 1), rtol=EQ_SPEC_TOL)
    act = compose(testing.permutation(shape, 0, 2), testing.right_orthogonal(shape, 3))
    testing.check_equivariance(tx, w0, gs, act, rtol=EQ_SPEC_TOL)
    assert (
        testing.equivariance_error(optax.adamw(1e-2), 0 * w0, gs, testing.bi_orthogonal(shape, 1))
        > CONTROL
    )


def test_identity3_rownorm_permutation_rotation_scaling_and_controls():
    shape = (7, 5)  # Embed (V, d)
    gs, w0 = grads(shape, seed=10), params_like(shape)
    tx = symmetric.rownorm(0.1, unit_axis=0, beta=BETA, weight_decay=0.1)
    act = compose(testing.permutation(shape, 0, 1), testing.right_orthogonal(shape, 2))
    testing.check_equivariance(tx, w0, gs, act, rtol=EQ_TOL)
    # f(D G) = f(G): invariance, parameters untouched by D
    diag = testing.positive_diagonal_scaling(shape, 0, 3)
    testing.check_equivariance(tx, w0, gs, diag, param_action=None, output_action=None, rtol=EQ_TOL)
    # negative controls: a left rotation mixes units; Adam under a right rotation
    assert testing.equivariance_error(tx, 0 * w0, gs, testing.left_orthogonal(shape, 4)) > CONTROL
    assert (
        testing.equivariance_error(optax.adam(0.1), 0 * w0, gs, testing.right_orthogonal(shape, 5))
        > CONTROL
    )


def test_identity3_unit_norm_rows_and_zero_rows_stay_zero():
    g = grads((6, 5), steps=3, seed=11)
    g = [x.at[2].set(0.0).at[5].set(0.0) for x in g]  # tokens never seen
    for d in run_directions(symmetric.scale_by_rownorm(BETA, unit_axis=0), g):
        norms = np.linalg.norm(d, axis=1)
        np.testing.assert_allclose(norms[[0, 1, 3, 4]], 1.0, rtol=1e-6)  # ρ/(ρ+1e-8), ρ ~ 1
        assert np.all(d[[2, 5]] == 0.0)


def test_identity4_hybrid_row_then_polar_and_polar_then_row_control():
    shape = (9, 4)
    gs, w0 = grads(shape, seed=12), params_like(shape)
    tx = symmetric.hybrid(1e-2, unit_axis=0, beta=BETA, weight_decay=0.1)
    perm, rot = testing.permutation(shape, 0, 1), testing.right_orthogonal(shape, 2)
    diag = testing.positive_diagonal_scaling(shape, 0, 3)
    # f(P D G Qᵀ) = P f(G) Qᵀ: gradients get P·D·Qᵀ, parameters and outputs P·Qᵀ
    testing.check_equivariance(
        tx, w0, gs, compose(perm, diag, rot), param_action=compose(perm, rot), rtol=EQ_SPEC_TOL
    )
    other = symmetric.hybrid(1e-2, unit_axis=0, beta=BETA, order="polar_then_row", weight_decay=0.1)
    testing.check_equivariance(other, w0, gs, compose(perm, rot), rtol=EQ_SPEC_TOL)
    assert testing.equivariance_error(other, 0 * w0, gs, diag, None, None) > CONTROL
    assert testing.equivariance_error(tx, 0 * w0, gs, testing.left_orthogonal(shape, 4)) > CONTROL


@pytest.mark.parametrize("alias", ["rownorm", "left", "hybrid", "one_sided"])
def test_identity5_centered_maps_shift_invariant_horizontal_equivariant(alias):
    shape = (10, 4)  # Flax router kernel (d, E): experts on axis -1
    gs, w0 = grads(shape, seed=13), params_like(shape)
    make = {
        "rownorm": lambda c: symmetric.rownorm(1e-2, unit_axis=-1, beta=BETA, center=c),
        "left": lambda c: symmetric.left_spectral(1e-2, unit_axis=-1, beta=BETA, center=c),
        "hybrid": lambda c: symmetric.hybrid(1e-2, unit_axis=-1, beta=BETA, center=c, side="left"),
        "one_sided": lambda c: symmetric.one_sided_spectral(1e-2, unit_axis=0, beta=BETA, center=c),
    }[alias]
    unit = 0 if alias == "one_sided" else -1
    tx = make(True)
    shift = testing.shift(shape, unit_axis=unit, seed=14)
    testing.check_equivariance(
        tx, w0, gs, shift, param_action=None, output_action=None, rtol=EQ_SPEC_TOL
    )
    # 1ᵀΔ = 0 at every step (the update never moves along the shift orbit)
    state, w = tx.init(w0), w0
    for g in gs:
        u, state = tx.update(g, state, w)
        w = optax.apply_updates(w, u)
        scale = float(jnp.max(jnp.abs(u)))
        assert float(jnp.max(jnp.abs(jnp.sum(u, axis=unit)))) < 1e-5 * scale * shape[unit]
    other = 1 - unit if unit >= 0 else 0
    act = compose(
        testing.permutation(shape, unit, 15),
        (testing.left_orthogonal if other == 0 else testing.right_orthogonal)(shape, 16),
    )
    testing.check_equivariance(tx, w0, gs, act, rtol=EQ_SPEC_TOL)
    # negative control: the uncentered map is not shift invariant
    assert testing.equivariance_error(make(False), 0 * w0, gs, shift, None, None) > CONTROL


@pytest.mark.parametrize("alias", ["rownorm", "hybrid"])
def test_identity6_swiglu_orientations(alias):
    d, f = 4, 9
    make = {"rownorm": symmetric.rownorm, "hybrid": symmetric.hybrid}[alias]
    down = (f, d)  # Flax down kernel: neurons on axis 0 (column-aware in PyTorch terms)
    gs, w0 = grads(down, seed=17), params_like(down)
    tx = make(1e-2, unit_axis=0, beta=BETA, weight_decay=0.1)
    act = compose(testing.permutation(down, 0, 18), testing.right_orthogonal(down, 19))
    testing.check_equivariance(tx, w0, gs, act, rtol=EQ_SPEC_TOL)
    wrong = make(1e-2, unit_axis=-1, beta=BETA, weight_decay=0.1)  # units on the wrong axis
    assert testing.equivariance_error(wrong, 0 * w0, gs, act) > CONTROL
    gate = (d, f)  # Flax gate/up kernel: neurons on axis -1 (row-aware in PyTorch terms)
    gs, w0 = grads(gate, seed=20), params_like(gate)
    tx = make(1e-2, unit_axis=-1, beta=BETA, weight_decay=0.1)
    act = compose(testing.permutation(gate, 1, 21), testing.left_orthogonal(gate, 22))
    testing.check_equivariance(tx, w0, gs, act, rtol=EQ_SPEC_TOL)


def test_identity6_fused_pair_needs_the_same_permutation_on_both_halves():
    d, f = 4, 5
    shape = (d, 2 * f)  # concat: gate | up
    gs, w0 = grads(shape, seed=23), params_like(shape)
    tx = symmetric.rownorm(1e-2, unit_axis=-1, beta=BETA, gate_up_pair="concat", weight_decay=0.1)
    perm = np.random.default_rng(24).permutation(f)
    joint = testing.Action(lambda x, t: jnp.concatenate([x[:, perm], x[:, f + perm]], 1), "P|P")
    gate_only = testing.Action(lambda x, t: jnp.concatenate([x[:, perm], x[:, f:]], 1), "P|I")
    testing.check_equivariance(
        tx, w0, gs, compose(joint, testing.left_orthogonal(shape, 25)), rtol=EQ_TOL
    )
    assert testing.equivariance_error(tx, 0 * w0, gs, gate_only) > CONTROL


# ---------------------------------------------------------------- rare-token drift
def test_rare_token_drift_is_exposed_and_bounded():
    beta, lr, eps, steps, tau = 0.9, 1e-2, 1e-8, 400, 1e-3
    shape = (4, 3)
    rng = np.random.default_rng(26)
    g_rare = np.array([0.0, 0.6, 0.8])  # ‖g‖ = 1, seen once at step 0
    active = [rng.standard_normal((3, 3)) for _ in range(steps)]
    seq = [
        jnp.asarray(np.vstack([g_rare if t == 0 else np.zeros(3), active[t]]), jnp.float32)
        for t in range(steps)
    ]

    def drift(threshold):
        tx = symmetric.rownorm(lr, unit_axis=0, beta=beta, eps=eps, threshold=threshold)
        w = jnp.zeros(shape)
        state, update = tx.init(w), jax.jit(tx.update)
        for g in seq:
            u, state = update(g, state, w)
            w = optax.apply_updates(w, u)
        return float(jnp.linalg.norm(w[0]))

    # the rare row's momentum is ρ_k = (1-β) β^k ‖g‖ in a fixed direction: exact drift
    rho = (1 - beta) * beta ** np.arange(steps)
    want = lr * np.sum(rho / (rho + eps))
    k_star = np.log(eps / (1 - beta)) / np.log(beta)  # ≈ 153 steps at which ρ_k = ε
    got = drift(0.0)
    assert abs(got - want) < 1e-4 * want
    assert got > 0.9 * lr * k_star  # exposed: keeps moving ~150 steps
    assert got < lr * (k_star + 1 / (1 - beta) + 1)  # bounded by the documented ε bound
    # relative threshold: stops once ρ_k <= τ·max row norm (active rows' momentum >= 0.1)
    k_tau = np.log(tau * 0.1 / (1 - beta)) / np.log(beta)
    assert drift(tau) < lr * (k_tau + 2) < 0.5 * got


# ------------------------------------------------------------------ property tests
_BLOCKS = {
    "rownorm": lambda: symmetric.scale_by_rownorm(0.0, unit_axis=0),
    "rownorm_centered": lambda: symmetric.scale_by_rownorm(0.0, unit_axis=-1, center=True),
    "one_sided": lambda: symmetric.scale_by_one_sided_spectral(0.0, unit_axis=0),
    "left": lambda: symmetric.scale_by_left_spectral(0.0, unit_axis=-1),
    "hybrid": lambda: symmetric.scale_by_hybrid(0.0, unit_axis=0, order="polar_then_row"),
}


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from(sorted(_BLOCKS)),
    m=st.integers(2, 6),
    n=st.integers(2, 6),
    log_scale=st.floats(-6, 6),
    bf16=st.booleans(),
)
def test_finite_in_finite_out_over_shapes_scales_dtypes(kind, m, n, log_scale, bf16):
    dtype = jnp.bfloat16 if bf16 else jnp.float32
    g = (10.0**log_scale * grads((m, n), steps=1, seed=m * 7 + n)[0]).astype(dtype)
    tx = _BLOCKS[kind]()
    u, _ = tx.update(g, tx.init(g))
    assert u.dtype == dtype and bool(jnp.all(jnp.isfinite(u)))
    zero, _ = tx.update(jnp.zeros_like(g), tx.init(g))
    assert bool(jnp.all(zero == 0))  # zero momentum: no step (and no NaN)
    if kind == "rownorm":  # every unit moves by at most 1 (exactly 1 unless ‖row‖ ≲ ε)
        assert float(jnp.max(jnp.linalg.norm(u.astype(jnp.float32), axis=1))) <= 1.0 + 1e-2


# ------------------------------------------------------------------------ bad input
def test_bad_unit_axis_and_leaves_raise_naming_the_path():
    params = {"embed": {"embedding": jnp.zeros((6, 4))}}
    with pytest.raises(ValueError, match=r"unit_axis 2 is out of range.*embed/embedding"):
        symmetric.rownorm(0.1, unit_axis=2).init(params)
    with pytest.raises(ValueError, match="embed/embedding.*needs a unit axis"):
        symmetric.scale_by_rownorm(unit_axis=None).init(params)
    with pytest.raises(TypeError, match="static_args"):
        symmetric.scale_by_rownorm(unit_axis=jnp.asarray(0))
    stacked = {"experts": jnp.zeros((3, 4, 5))}
    with pytest.raises(ValueError, match="experts.*batch axis"):
        symmetric.scale_by_rownorm(unit_axis=0).init(stacked)
    with pytest.raises(ValueError, match="'norm/scale'.*no matrix layout"):
        symmetric.scale_by_hybrid(unit_axis=0).init({"norm": {"scale": jnp.ones(4)}})
    with pytest.raises(TypeError, match="'ids'"):
        symmetric.scale_by_rownorm(unit_axis=0).init({"ids": jnp.zeros((3, 3), jnp.int32)})
    with pytest.raises(ValueError, match="gate_up_pair.*even.*'w'"):
        symmetric.scale_by_rownorm(unit_axis=-1, gate_up_pair="concat").init(
            {"w": jnp.zeros((3, 5))}
        )
    with pytest.raises(ValueError, match="weight_decay=0"):
        symmetric.rownorm(0.1, unit_axis=0, center=True, weight_decay=0.1)
    with pytest.raises(ValueError, match="order"):
        symmetric.hybrid(0.1, unit_axis=0, order="sideways")
    with pytest.raises(ValueError, match="beta"):
        symmetric.rownorm(0.1, unit_axis=0, beta=1.5)


def test_alias_sends_vectors_to_the_documented_fallback():
    params = {"w": params_like((6, 4)), "b": jnp.ones(4)}
    g = {"w": grads((6, 4), steps=1)[0], "b": jnp.full(4, 3.0)}
    tx = symmetric.rownorm(0.5, unit_axis=0)  # default fallback: AdamW(3e-4, 0.9, 0.95)
    u, _ = tx.update(g, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(u["b"]), -3e-4, rtol=1e-5)  # Adam's first step
    # matrix leaf: every row moves by exactly lr (ρ/(ρ + ε) with ρ = ‖(1-β) g_i‖ ~ 0.05)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(u["w"]), axis=1), 0.5, rtol=1e-5)


def test_alias_fallback_is_an_adamw_or_a_transformation_used_as_configured():
    params = {"w": params_like((6, 4)), "b": jnp.ones(4)}
    gs = [{"w": g, "b": jnp.full(4, 3.0 * (k + 1))} for k, g in enumerate(grads((6, 4), steps=2))]
    spec = optzoo.fallback.AdamW(learning_rate=1e-2, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1)
    adamw = optax.adamw(1e-2, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1)
    for fallback, alone in ((spec, adamw), (optax.sgd(0.1), optax.sgd(0.1))):
        tx = symmetric.rownorm(0.5, unit_axis=0, fallback=fallback)
        state, p, alone_state, b = tx.init(params), params, alone.init(params["b"]), params["b"]
        for g in gs:  # the vector leaf moves exactly as under the fallback run alone
            u, state = tx.update(g, state, p)
            want, alone_state = alone.update(g["b"], alone_state, b)
            np.testing.assert_array_equal(np.asarray(u["b"]), np.asarray(want))
            p, b = optax.apply_updates(p, u), optax.apply_updates(b, want)
    with pytest.raises(TypeError, match="rownorm: fallback must be"):
        symmetric.rownorm(0.5, unit_axis=0, fallback="adamw")
    with pytest.raises(TypeError, match="adam_learning_rate"):  # removed: fallback=AdamW(...)
        symmetric.rownorm(0.5, unit_axis=0, adam_learning_rate=1e-3)


@pytest.mark.parametrize("name", ["rownorm", "one_sided_spectral", "left_spectral", "hybrid"])
def test_alias_signature_is_learning_rate_its_block_and_the_alias_arguments(name):
    alias, block = getattr(symmetric, name), getattr(symmetric, f"scale_by_{name}")
    params = inspect.signature(alias).parameters
    block_params = inspect.signature(block).parameters
    assert alias.__name__ == name
    assert list(params) == [
        "learning_rate",
        *block_params,
        "weight_decay",
        "weight_decay_mask",
        "fallback",
    ]
    for arg, p in block_params.items():
        assert params[arg].default == p.default
        assert params[arg].kind is inspect.Parameter.KEYWORD_ONLY
    for fn in (alias, block):  # every argument is documented, once
        for arg in inspect.signature(fn).parameters:
            assert fn.__doc__.count(f"\n      {arg}: ") == 1, (fn.__name__, arg)
        assert "{args}" not in fn.__doc__
    with pytest.raises(TypeError):
        alias(0.1, 0.9, unit_axis=0)  # only learning_rate is positional
    state = alias(0.1, unit_axis=0).init({"w": jnp.ones((4, 3)), "b": jnp.ones(3)})
    assert set(state.inner_states) == {"matrix", "fallback"}  # the partition's labels


# ------------------------------------------------------------------- optax battery
_BATTERY_PARAMS = {"w": jnp.ones((2, 6, 5)), "b": jnp.zeros(5)}  # stacked matrix + fallback


def test_module_exports():
    for name in symmetric.__all__:
        assert hasattr(symmetric, name)
