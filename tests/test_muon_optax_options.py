"""optzoo.muon as a superset of optax.contrib.muon (issue 16) and its fallback's schedule
(issue 17): the ``preconditioning`` options ('spectral', 'aol', 'schatten') and
``adaptive=True`` equal optax's on the same inputs; the symmetry each option keeps, with
negative controls; the default AdamW fallback follows Muon's learning-rate schedule and an
injected learning rate; ``fallback=optzoo.fallback.AdamW(...)`` configures it (an explicit
rate used as given, ``lr_ratio``); construction-time argument checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optzoo import _blocks, testing
from optzoo.muon import muon

SHAPES = {"a": (6, 10), "b": (12, 5), "c": (8, 8), "v": (7,)}


def _tree(seed: int, shapes=SHAPES) -> dict:
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()}


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _updates(tx, params, grads):
    state = tx.init(params)
    step = jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
        out.append(u)
    return out


def _pair(preconditioning: str, adaptive: bool):
    # optax sends the 1-D leaf to adamw(nesterov=True, eps=eps): give ours the same fallback.
    fallback = optax.adamw(3e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, nesterov=True)
    ours = muon(
        0.02,
        bias_correction=True,
        ortho_method="newton_schulz",
        ns_steps=5,
        eps=1e-8,
        weight_decay=0.1,
        fallback=fallback,
        preconditioning=preconditioning,
        adaptive=adaptive,
    )
    theirs = optax.contrib.muon(
        0.02,
        eps=1e-8,
        weight_decay=0.1,
        adam_learning_rate=3e-4,
        adam_b2=0.95,
        preconditioning=preconditioning,
        adaptive=adaptive,
    )
    return ours, theirs


@pytest.mark.parametrize(
    "preconditioning,adaptive",
    [("spectral", False), ("aol", False), ("schatten", False), ("frobenius", True), ("aol", True)],
)
def test_options_equal_optax_contrib_muon(preconditioning, adaptive):
    """Six steps with momentum and weight decay on wide, tall and square 2-D leaves.

    Tolerance 2e-5 relative per leaf: the same float32 recursion, differing in rounding only
    (optzoo divides by the peak entry before any norm or Gram matrix; AOL's first step is
    fused in optax and recomputed here), amplified by NS5's slope (up to 3.44 per step on
    small singular values). Measured at most 3e-6 on these inputs; the options differ from
    each other by 1e-2 or more (next test), so 2e-5 cannot hide a wrong option.
    """
    params = _tree(0)
    grads = [_tree(10 + t) for t in range(6)]
    ours, theirs = _pair(preconditioning, adaptive)
    u1, u2 = _updates(ours, params, grads), _updates(theirs, params, grads)
    for t in range(6):
        for k in ("a", "b", "c"):
            assert _rel(u1[t][k], u2[t][k]) < 2e-5, (t, k, _rel(u1[t][k], u2[t][k]))
        np.testing.assert_array_equal(np.asarray(u1[t]["v"]), np.asarray(u2[t]["v"]))


def test_options_change_the_update_negative_control():
    """Each option is a different map: a test comparing option X with optax's X is only
    informative if X differs from the default (and from the other options)."""
    params = _tree(1)
    grads = [_tree(20 + t) for t in range(2)]
    base = _updates(_pair("frobenius", False)[0], params, grads)[-1]
    for preconditioning, adaptive in [
        ("spectral", False),
        ("aol", False),
        ("schatten", False),
        ("frobenius", True),
    ]:
        other = _updates(_pair(preconditioning, adaptive)[0], params, grads)[-1]
        assert _rel(other["a"], base["a"]) > 1e-2, (preconditioning, adaptive)


def test_aol_prescaling_bounds_the_spectral_norm_by_one():
    """Gershgorin: rows scaled by (sum_j |XX^T|_ij)^(-1/2) give ||X||_2 <= 1 (and here, unlike
    Frobenius scaling, the largest singular value stays close to 1)."""
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 16, 48)), jnp.float32)
    for scale in (1e-30, 1.0, 1e30):
        y = _blocks._prescale(x * scale, "aol", 1e-8)
        s = np.linalg.svd(np.asarray(y, np.float64), compute_uv=False)
        assert np.all(np.isfinite(s)) and s.max() <= 1 + 1e-5, (scale, s.max())
        assert s.max() > 0.5
    fro = x / jnp.linalg.norm(x, axis=(-2, -1), keepdims=True)
    assert np.linalg.svd(np.asarray(fro), compute_uv=False).max() < 0.5  # control: AOL helps


@pytest.mark.parametrize("preconditioning", ["spectral", "schatten"])
def test_unitarily_invariant_prescalings_keep_bi_orthogonal_equivariance(preconditioning):
    params = {"w": jnp.asarray(np.random.default_rng(4).standard_normal((8, 12)), jnp.float32)}
    grads = [
        {"w": jnp.asarray(np.random.default_rng(40 + t).standard_normal((8, 12)), jnp.float32)}
        for t in range(3)
    ]
    act = testing.bi_orthogonal((8, 12), seed=1)
    tx = muon(0.02, ortho_method="newton_schulz", preconditioning=preconditioning)
    # 1e-4: float32 NS5 on rotated inputs, rotations by dense orthogonal matrices.
    assert testing.equivariance_error(tx, params, grads, act) < 1e-4


def test_aol_is_not_rotation_equivariant_but_is_permutation_equivariant():
    """AOL scales rows of the wide view by data-dependent factors: a rotation of the short
    side mixes the rows and changes the factors (the error is large), a permutation of rows
    and columns only permutes them (the error is at rounding level)."""
    params = {"w": jnp.asarray(np.random.default_rng(5).standard_normal((8, 12)), jnp.float32)}
    grads = [
        {"w": jnp.asarray(np.random.default_rng(50 + t).standard_normal((8, 12)), jnp.float32)}
        for t in range(3)
    ]
    rng = np.random.default_rng(2)
    rows, cols = rng.permutation(8), rng.permutation(12)
    rs, cs = rng.choice([-1.0, 1.0], 8), rng.choice([-1.0, 1.0], 12)
    # signed permutation matrices P X Q: orthogonal, and they only permute AOL's row factors
    perm_act = testing.Action(
        lambda x, t: x[rows][:, cols] * jnp.asarray(rs[:, None] * cs[None, :], x.dtype),
        "signed row/col permutation",
    )
    tx = muon(0.02, ortho_method="newton_schulz", preconditioning="aol")
    rot = testing.equivariance_error(tx, params, grads, testing.bi_orthogonal((8, 12), seed=2))
    perm = testing.equivariance_error(tx, params, grads, perm_act)
    frob = testing.equivariance_error(
        muon(0.02, ortho_method="newton_schulz"),
        params,
        grads,
        testing.bi_orthogonal((8, 12), seed=2),
    )
    # measured: rotation 3.7e-3 (AOL) vs 1e-6-level for Frobenius on the same action;
    # permutation at rounding level (exact in exact arithmetic).
    assert rot > 10 * frob and rot > 1e-3, (rot, frob)
    assert perm < 1e-5, perm


def test_bad_preconditioning_is_refused_at_construction():
    with pytest.raises(ValueError, match="preconditioning"):
        muon(0.02, preconditioning="schatten4")
    with pytest.raises(ValueError, match="preconditioning='aol' applies to ortho_method"):
        muon(0.02, preconditioning="aol")  # default ortho_method is 'auto' (Polar Express)


# ------------------------------------------------------- the fallback follows the schedule
def _bias_tree(seed):
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.standard_normal((4, 6)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal((6,)), jnp.float32),
    }


def test_default_fallback_follows_the_learning_rate_schedule():
    """Repro (before): muon(schedule) moved biases at a constant 3e-4 whatever the schedule,
    e.g. during a zero-rate warmup. Now the bias updates equal AdamW's at 0.015 × schedule
    (bitwise: the same optax code on the same leaf)."""
    sched = optax.linear_schedule(0.0, 0.02, transition_steps=4)
    params = _bias_tree(6)
    grads = [_bias_tree(60 + t) for t in range(5)]
    ups = _updates(muon(sched), params, grads)
    want = _updates(
        optax.adamw(lambda c: 0.015 * sched(c), b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0),
        {"b": params["b"]},
        [{"b": g["b"]} for g in grads],
    )
    for t in range(5):
        np.testing.assert_array_equal(np.asarray(ups[t]["b"]), np.asarray(want[t]["b"]))
    assert float(jnp.abs(ups[0]["b"]).max()) == 0.0  # step 0 of the warmup: rate 0
    assert float(jnp.abs(ups[2]["b"]).max()) > 0.0


def test_injected_zero_learning_rate_stops_every_leaf():
    """Repro (before): inject_hyperparams(muon)(learning_rate=0.0) still moved the biases
    (the fallback ran at its own constant 3e-4)."""
    params = _bias_tree(7)
    tx = optax.inject_hyperparams(muon)(learning_rate=0.0)
    state = tx.init(params)
    u, state = jax.jit(tx.update)(_bias_tree(70), state, params)
    assert float(jnp.abs(u["b"]).max()) == 0.0 and float(jnp.abs(u["w"]).max()) == 0.0
    state.hyperparams["learning_rate"] = jnp.asarray(0.02)
    u, _ = jax.jit(tx.update)(_bias_tree(71), state, params)
    assert float(jnp.abs(u["b"]).max()) > 0.0  # control: a positive rate moves them


def _bias_updates(tx, seed, steps=3):
    params = _bias_tree(seed)
    grads = [_bias_tree(10 * seed + t) for t in range(steps)]
    return params, grads, _updates(tx, params, grads)


def _adamw_bias_updates(params, grads, learning_rate, **kw):
    adam = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0) | kw
    return _updates(
        optax.adamw(learning_rate, **adam), {"b": params["b"]}, [{"b": g["b"]} for g in grads]
    )


def _assert_bias_equal(ups, want):
    for u, w in zip(ups, want, strict=True):
        np.testing.assert_array_equal(np.asarray(u["b"]), np.asarray(w["b"]))


def test_explicit_fallback_learning_rate_is_used_as_given():
    """``AdamW(learning_rate=1e-3)`` under a Muon warmup: the bias moves at 1e-3 from step 0
    (bitwise AdamW's), not at 0.015 × the schedule (which is 0 at step 0)."""
    fb = optzoo.fallback.AdamW(learning_rate=1e-3)
    params, grads, ups = _bias_updates(muon(optax.linear_schedule(0.0, 0.02, 4), fallback=fb), 8)
    _assert_bias_equal(ups, _adamw_bias_updates(params, grads, 1e-3))
    assert float(jnp.abs(ups[0]["b"]).max()) > 0.0


def test_fallback_schedule_and_adam_options_are_used_as_given():
    sched = optax.cosine_decay_schedule(1e-3, 3)
    fb = optzoo.fallback.AdamW(learning_rate=sched, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1)
    params, grads, ups = _bias_updates(muon(0.02, fallback=fb), 9)
    _assert_bias_equal(
        ups, _adamw_bias_updates(params, grads, sched, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1)
    )


def test_lr_ratio_scales_the_method_learning_rate():
    fb = optzoo.fallback.AdamW(lr_ratio=0.1)
    params, grads, ups = _bias_updates(muon(0.02, fallback=fb), 10)
    _assert_bias_equal(ups, _adamw_bias_updates(params, grads, 0.1 * 0.02))
    # negative control: the default ratio 0.015 gives different updates
    _, _, default = _bias_updates(muon(0.02), 10)
    assert not np.array_equal(np.asarray(default[1]["b"]), np.asarray(ups[1]["b"]))


def test_default_adamw_instance_follows_the_schedule_like_none():
    """``fallback=AdamW()`` is the default: ``0.015 ×`` Muon's schedule, bitwise as ``None``."""
    sched = optax.linear_schedule(0.0, 0.02, transition_steps=4)
    _, _, ups = _bias_updates(muon(sched, fallback=optzoo.fallback.AdamW()), 11)
    _, _, default = _bias_updates(muon(sched), 11)
    _assert_bias_equal(ups, default)


def test_the_repeated_adam_keywords_are_gone():
    with pytest.raises(TypeError, match="adam_learning_rate"):
        muon(0.02, adam_learning_rate=3e-4)


# ----------------------------------------------------------------- argument checks
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(learning_rate=None), TypeError, "learning_rate"),
        (dict(mu_dtype=jnp.int32), TypeError, "mu_dtype"),
        (dict(beta=np.float32(1.5)), ValueError, "beta"),
        (dict(beta=float("nan")), ValueError, "beta"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(weight_decay=-0.1), ValueError, "weight_decay"),
        (dict(fallback="adamw"), TypeError, "fallback"),
        (dict(fallback=optax.adamw), TypeError, "fallback"),
    ],
)
def test_bad_arguments_are_refused_naming_them(kwargs, error, match):
    kwargs = {"learning_rate": 0.02, **kwargs}
    with pytest.raises(error, match=match):
        muon(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match", [(dict(b1=1.5), "b1"), (dict(b2=-0.1), "b2"), (dict(eps=-1e-8), "eps")]
)
def test_bad_fallback_options_are_refused_naming_them(kwargs, match):
    """What ``adam_b1/adam_b2/adam_eps`` were checked for: now where the fallback is
    configured, naming the class (every field: tests/test_fallback.py)."""
    with pytest.raises(ValueError, match=f"optzoo.fallback.AdamW: {match}"):
        muon(0.02, fallback=optzoo.fallback.AdamW(**kwargs))
