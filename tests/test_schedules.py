"""Tests of optzoo.schedules: exact endpoints, warmup values, monotonicity, jit/vmap and
inject_hyperparams use, the EMA batch-scaling identity, the width scaling rules, and errors."""

from __future__ import annotations

import importlib
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optzoo import schedules as S

# optzoo.lion (the attribute) is the optimizer factory; the module is reached by name.
L = importlib.import_module("optzoo.lion")

# Schedules are evaluated in float32; comparisons with float64 formulas use rtol 1e-6
# (a few float32 ulps: one division and one multiply-add per value).
RTOL = 1e-6


def _values(sched, n):
    """sched over steps 0..n-1, evaluated in one vmapped call, as float64 numpy."""
    out = jax.vmap(sched)(jnp.arange(n, dtype=jnp.int32))
    assert out.dtype == jnp.float32
    return np.asarray(out, np.float64)


# ------------------------------------------------------------------------------- D2Z
@pytest.mark.parametrize("warmup", [0, 1, 7])
def test_d2z_endpoints_and_shape(warmup):
    total, peak, init = 50, 3e-3, 1e-4
    sched = S.linear_warmup_d2z(peak, total, warmup_steps=warmup, init_value=init)
    v = _values(sched, total + 10)
    # exact values (no tolerance): the schedule promises them
    assert v[warmup] == np.float32(peak)
    assert v[total] == 0.0 and np.all(v[total:] == 0.0)
    if warmup:
        assert v[0] == np.float32(init)
        t = np.arange(warmup)
        np.testing.assert_allclose(v[:warmup], init + (peak - init) * t / warmup, rtol=RTOL)
    # linear decay: peak (T - t) / (T - W) for W <= t <= T
    t = np.arange(warmup, total + 1)
    np.testing.assert_allclose(
        v[warmup : total + 1], peak * (total - t) / (total - warmup), rtol=RTOL, atol=1e-12
    )
    # monotone after warmup (exactly, no float wiggle) and strictly positive before T
    assert np.all(np.diff(v[warmup:]) <= 0)
    assert np.all(v[warmup:total] > 0)


def test_d2z_is_jittable_and_float32():
    sched = S.linear_warmup_d2z(1.0, 100, warmup_steps=10)
    jitted = jax.jit(sched)
    for t in (0, 5, 10, 99, 100, 1000):
        out = jitted(jnp.asarray(t, jnp.int32))
        assert out.dtype == jnp.float32 and out.shape == ()
        # XLA may fuse/reassociate under jit: equal to an ulp or two, hence RTOL.
        np.testing.assert_allclose(float(out), float(sched(t)), rtol=RTOL)
    assert sched(5).dtype == jnp.float32  # a Python int count works too
    # the decay really is to zero, not to a small floor
    assert float(jitted(jnp.int32(100))) == 0.0


# ------------------------------------------------------------------------------- WSD
@pytest.mark.parametrize("shape", S.COOLDOWN_SHAPES)
def test_wsd_phases(shape):
    total, warmup, frac, peak, end, power = 100, 10, 0.3, 2.0, 0.1, 3.0
    sched = S.warmup_stable_decay(
        peak,
        total,
        warmup_steps=warmup,
        cooldown_fraction=frac,
        cooldown_shape=shape,
        power=power,
        end_value=end,
    )
    v = _values(sched, total + 5)
    start = total - 30
    assert v[0] == 0.0
    np.testing.assert_allclose(v[:warmup], peak * np.arange(warmup) / warmup, rtol=RTOL)
    assert np.all(v[warmup : start + 1] == np.float32(peak))  # exact plateau incl. cooldown start
    assert np.all(v[total:] == np.float32(end))  # exact end value from total_steps on
    assert np.all(np.diff(v[warmup:]) <= 0)  # monotone after warmup
    p = (np.arange(start, total + 1) - start) / 30
    decayed = {
        "linear": p,
        "cosine": (1 - np.cos(np.pi * p)) / 2,
        "sqrt": np.sqrt(p),
        "power": 1 - (1 - p) ** power,
    }[shape]
    np.testing.assert_allclose(v[start : total + 1], peak + (end - peak) * decayed, rtol=RTOL)


def test_wsd_shapes_differ_and_zero_cooldown_is_constant():
    mids = {
        s: float(S.warmup_stable_decay(1.0, 100, cooldown_fraction=0.5, cooldown_shape=s)(75))
        for s in S.COOLDOWN_SHAPES
    }
    # half-way through the cooldown: linear .5, cosine .5, 1-sqrt(.5) ≈ .293, (1-.5)^2 = .25
    np.testing.assert_allclose(
        [mids[s] for s in S.COOLDOWN_SHAPES], [0.5, 0.5, 1 - math.sqrt(0.5), 0.25], rtol=RTOL
    )
    flat = S.warmup_stable_decay(1.5, 20, warmup_steps=4, cooldown_fraction=0.0)
    v = _values(flat, 40)
    assert np.all(v[4:] == np.float32(1.5))


# -------------------------------------------------------------------------- momentum
def test_momentum_warmup_matches_modded_nanogpt_rule():
    sched = S.momentum_warmup(0.85, 0.95, 300)
    v = _values(sched, 500)
    t = np.arange(500)
    frac = np.minimum(t / 300, 1.0)
    np.testing.assert_allclose(v, (1 - frac) * 0.85 + frac * 0.95, rtol=RTOL)
    assert v[0] == np.float32(0.85) and np.all(v[300:] == np.float32(0.95))
    assert np.all(np.diff(v) >= 0)
    assert np.all(_values(S.momentum_warmup(0.85, 0.95, 0), 3) == np.float32(0.95))


def test_momentum_warmup_cooldown():
    sched = S.momentum_warmup_cooldown(
        0.85, 0.95, 0.8, total_steps=100, warmup_steps=20, cooldown_steps=30
    )
    v = _values(sched, 120)
    assert v[0] == np.float32(0.85)
    assert np.all(v[20:71] == np.float32(0.95))
    assert np.all(v[100:] == np.float32(0.8))
    np.testing.assert_allclose(v[85], 0.95 + (0.8 - 0.95) * 0.5, rtol=RTOL)
    assert np.all(np.diff(v[:20]) >= 0) and np.all(np.diff(v[20:]) <= 0)


# ---------------------------------------------------------- use inside optax pipelines
def test_schedule_in_inject_hyperparams_sgd():
    sched = S.linear_warmup_d2z(0.5, 8, warmup_steps=2, init_value=0.1)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=sched)
    params = jnp.ones(3)
    g = jnp.array([1.0, -2.0, 0.5])
    state = tx.init(params)
    for t in range(10):
        updates, state = jax.jit(tx.update)(g, state, params)
        lr_t = float(sched(t))
        np.testing.assert_allclose(state.hyperparams["learning_rate"], lr_t, rtol=RTOL)
        np.testing.assert_allclose(updates, -lr_t * g, rtol=RTOL)
    assert float(sched(8)) == 0.0


def test_schedules_drive_lion_lr_and_b1():
    """Injected lr (D2Z) and b1 (momentum warmup) equal rebuilding lion with their floats."""
    lr = S.linear_warmup_d2z(0.1, 6, warmup_steps=2)
    b1 = S.momentum_warmup(0.5, 0.9, 3)
    injected = optax.inject_hyperparams(L.lion)(learning_rate=lr, b1=b1, weight_decay=0.1)
    params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)}
    grads = [{"w": jax.random.normal(jax.random.PRNGKey(t), (2, 3))} for t in range(8)]
    s_inj = injected.init(params)
    s_ref = L.lion(0.0).init(params)
    p_inj = p_ref = params
    for t, g in enumerate(grads):
        u_inj, s_inj = injected.update(g, s_inj, p_inj)
        ref = L.lion(float(lr(t)), b1=float(b1(t)), weight_decay=0.1)
        u_ref, s_ref = ref.update(g, s_ref, p_ref)
        # Same float32 values reach the same operations: equal up to rounding of the
        # hyperparameters' float32 conversion (identical here), rtol 1e-6 to be safe.
        chex.assert_trees_all_close(u_inj, u_ref, rtol=RTOL, atol=0)
        p_inj, p_ref = optax.apply_updates(p_inj, u_inj), optax.apply_updates(p_ref, u_ref)
        if t >= 6:  # D2Z reached zero: Lion stops moving, weight decay included
            assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(u_inj))


# ---------------------------------------------------------------------- EMA scaling
def _ema(xi, target, rho, steps):
    for _ in range(steps):
        xi = rho * xi + (1 - rho) * target
    return xi


@pytest.mark.parametrize("kappa", [2, 4, 8, 0.5])
def test_ema_scaling_identity(kappa):
    """T steps at (B, ρ) and T/κ steps at (κB, ρ^κ) give the same EMA of a constant target."""
    rng = np.random.default_rng(0)
    xi0, target = rng.normal(size=5), rng.normal(size=5)
    rho, steps = 0.97, 64
    small = _ema(xi0, target, rho, steps)
    big = _ema(xi0, target, S.ema_momentum_for_batch_scale(rho, kappa), int(steps / kappa))
    # float64 recursions of 16-128 steps: rounding ~1e-14; rtol 1e-12.
    np.testing.assert_allclose(big, small, rtol=1e-12, atol=1e-12)
    # negative control: keeping ρ at the larger batch forgets the start at a different rate
    if kappa > 1:
        unscaled = _ema(xi0, target, rho, int(steps / kappa))
        assert np.max(np.abs(unscaled - small)) > 0.05


def test_ema_scaling_through_optax_ema():
    """The same identity with optax.ema (debias off) in float32: rtol 1e-5 (~64 fp32 steps)."""
    target = jnp.array([1.0, -2.0, 3.0])

    def run(rho, steps):
        tx = optax.ema(rho, debias=False)
        state = tx.init(target)
        state = state._replace(ema=jnp.array([5.0, 5.0, 5.0]))
        for _ in range(steps):
            out, state = tx.update(target, state)
        return out

    rho8 = S.ema_momentum_for_batch_scale(0.95, 8)
    np.testing.assert_allclose(run(rho8, 8), run(0.95, 64), rtol=1e-5)
    assert S.ema_momentum_for_batch_scale(0.95, 1) == 0.95


# ------------------------------------------------------------------- width scaling
def test_weight_decay_width_rule():
    base = 0.05
    for width in (64, 256, 1024, 4096):
        wd = S.weight_decay_for_width(base, 256, width)
        assert math.isclose(wd / base, math.sqrt(width / 256), rel_tol=1e-12)
        lr = S.learning_rate_for_width(1e-2, 256, width)
        assert math.isclose(lr, 1e-2 * 256 / width, rel_tol=1e-12)
        # μP lr times √d-scaled decay: ηλ ∝ d^{-1/2}, i.e. ηλ√d is width-invariant
        assert math.isclose(lr * wd * math.sqrt(width), 1e-2 * base * math.sqrt(256), rel_tol=1e-12)
    assert S.weight_decay_for_width(0.1, 512, 512) == 0.1
    assert S.weight_decay_for_width(0.0, 128, 1024) == 0.0


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: S.linear_warmup_d2z(1.0, 10, warmup_steps=11), "warmup_steps"),
        (lambda: S.linear_warmup_d2z(1.0, 10, warmup_steps=10), "warmup_steps"),
        (lambda: S.linear_warmup_d2z(1.0, 10, warmup_steps=-1), "warmup_steps"),
        (lambda: S.linear_warmup_d2z(1.0, 0), "total_steps"),
        (lambda: S.linear_warmup_d2z(1.0, 10.5), "total_steps"),
        (lambda: S.linear_warmup_d2z(1.0, True), "total_steps"),
        (lambda: S.linear_warmup_d2z(float("nan"), 10), "peak_value"),
        (lambda: S.linear_warmup_d2z("1e-3", 10), "peak_value"),
        (lambda: S.warmup_stable_decay(1.0, 10, cooldown_fraction=1.5), "cooldown_fraction"),
        (lambda: S.warmup_stable_decay(1.0, 10, cooldown_fraction=-0.1), "cooldown_fraction"),
        (lambda: S.warmup_stable_decay(1.0, 10, cooldown_shape="exp"), "cooldown_shape"),
        (lambda: S.warmup_stable_decay(1.0, 10, cooldown_shape="power", power=0.0), "power"),
        (lambda: S.warmup_stable_decay(1.0, 10, warmup_steps=9, cooldown_fraction=0.2), "exceed"),
        (lambda: S.momentum_warmup(0.85, 1.2, 10), "end"),
        (lambda: S.momentum_warmup(-0.1, 0.9, 10), "start"),
        (lambda: S.momentum_warmup(0.85, 0.95, -3), "warmup_steps"),
        (lambda: S.momentum_warmup_cooldown(0.8, 0.9, 0.8, 10, 6, 5), "exceed"),
        (lambda: S.ema_momentum_for_batch_scale(1.2, 2), "rho"),
        (lambda: S.ema_momentum_for_batch_scale(0.9, 0), "kappa"),
        (lambda: S.weight_decay_for_width(0.1, 0, 128), "base_width"),
        (lambda: S.weight_decay_for_width(0.1, 128, -1), "width"),
        (lambda: S.weight_decay_for_width(-0.1, 128, 256), "base_weight_decay"),
        (lambda: S.learning_rate_for_width(1e-3, 128, 0), "width"),
    ],
)
def test_bad_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()
