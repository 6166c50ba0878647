"""Tests of optzoo.error_feedback: the EF identity Δ + E = P, compressor contractivity and
closed forms, the recursion against a numpy re-derivation (spectral and sign, with a
schedule), equivariance with a negative control, stacked = per-slice, the AdamW fallback,
the optax battery, and input errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optzoo import error_feedback as EF
from optzoo import testing
from optzoo.layout import MatrixLayout

EPS32 = float(np.finfo(np.float32).eps)


def _np(seed: int, shape, scale: float = 1.0) -> np.ndarray:
    # numpy data: jax.random would compile a kernel per shape (slow on a loaded 2-core box).
    return scale * np.random.default_rng(seed).normal(size=shape)


def _j(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


# ------------------------------------------------------------------ compressors
def test_spectral_compressor_closed_form_and_contraction():
    p = _np(0, (3, 5, 8))
    c = np.asarray(EF.compress_spectral(_j(p), method="svd"), np.float64)
    for i in range(3):
        u, s, vt = np.linalg.svd(p[i], full_matrices=False)
        r = len(s)
        want = (s.sum() / r) * (u @ vt)  # (‖P‖_*/r)·polar(P), full rank r = min(m, n)
        # float32 SVD of entries ~1: rtol 1e-5 on entries of size ~0.3.
        np.testing.assert_allclose(c[i], want, rtol=1e-5, atol=1e-5)
        resid = np.linalg.norm(p[i] - c[i]) ** 2
        fro = np.linalg.norm(p[i]) ** 2
        # identity ‖P − C(P)‖² = ‖P‖² − ‖P‖_*²/r and the contraction bound (1 − 1/r)‖P‖²
        np.testing.assert_allclose(resid, fro - s.sum() ** 2 / r, rtol=1e-4)
        assert resid <= (1 - 1 / r) * fro


def test_spectral_compressor_rank_deficient_uses_rank():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(6, 2)) @ rng.normal(size=(2, 7))  # rank 2
    c = np.asarray(EF.compress_spectral(_j(p), method="svd"), np.float64)
    u, s, vt = np.linalg.svd(p)
    want = (s[:2].sum() / 2) * (u[:, :2] @ vt[:2])  # (‖P‖_*/rank)·U_r V_rᵀ
    np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-4)


def test_approximate_polar_compressor_still_contracts():
    # With Polar Express / Newton–Schulz instead of the exact polar factor the least-squares
    # scale keeps C contractive. The exact-polar worst case is ‖P − C(P)‖² ≤ (1 − 1/r)‖P‖²;
    # on these Gaussian inputs the measured reduction is 3.3/r to 5.7/r for all methods
    # (‖P‖_*²/‖P‖_F² ≈ 3.5-6), so the worst-case bound holds with a wide margin.
    for method in ("auto", "newton_schulz"):
        for shape in [(8, 8), (4, 16), (16, 4)]:
            p = _np(2, (5,) + shape)
            c = np.asarray(EF.compress_spectral(_j(p), method=method), np.float64)
            r = min(shape)
            for i in range(5):
                ratio = np.linalg.norm(p[i] - c[i]) ** 2 / np.linalg.norm(p[i]) ** 2
                assert ratio <= 1 - 1 / r, (method, shape, ratio)


def test_sign_compressor_closed_form_with_zeros():
    p = _np(3, (4, 6))
    p[0, :3] = 0.0
    c = np.asarray(EF.compress_sign(_j(p)), np.float64)
    nnz = np.count_nonzero(p)
    want = np.abs(p).sum() / nnz * np.sign(p)
    np.testing.assert_allclose(c, want, rtol=1e-6)
    resid = np.linalg.norm(p - c) ** 2
    fro = np.linalg.norm(p) ** 2
    np.testing.assert_allclose(resid, fro - np.abs(p).sum() ** 2 / nnz, rtol=1e-5)
    assert resid <= (1 - 1 / p.size) * fro
    assert not np.any(EF.compress_spectral(jnp.zeros((3, 4))))  # 0 -> 0, no NaN
    assert not np.any(EF.compress_sign(jnp.zeros((3, 4))))


# ----------------------------------------------------------------- EF identity
@pytest.mark.parametrize("compressor", ["spectral", "sign"])
def test_ef_identity_delta_plus_error_equals_p_every_step(compressor):
    shapes = {"w": (5, 7), "stack": (2, 4, 3)}
    params = {k: _j(_np(i, s)) for i, (k, s) in enumerate(shapes.items())}
    sched = optax.linear_schedule(0.3, 0.05, 5)
    # stacked leaf: an explicit layout (the default layout refuses leaves with > 2 axes)
    tx = EF.scale_by_ef_muon(
        0.8, compressor=compressor, step_size=sched, nesterov=True, layout=MatrixLayout()
    )
    state = tx.init(params)
    for t in range(5):
        g = {k: _j(_np(10 * t + i, s)) for i, (k, s) in enumerate(shapes.items())}
        delta, new = tx.update(g, state)
        for k in shapes:
            m_t = np.asarray(new.mu[k], np.float64)
            x = 0.8 * m_t + 0.2 * np.asarray(g[k], np.float64)  # Nesterov input
            p = float(sched(t)) * x + np.asarray(state.error[k], np.float64)
            total = np.asarray(delta[k], np.float64) + np.asarray(new.error[k], np.float64)
            # P is formed and split in float32: Δ + E = P to a few ulps of max|P|.
            np.testing.assert_allclose(total, p, rtol=0, atol=8 * EPS32 * np.abs(p).max())
        state = new
    assert int(state.count) == 5


# --------------------------------------------------------- recursion vs numpy (float64)
def _ef_ref(w0, grads, lr, beta, wd, compressor):
    w, m, e = np.asarray(w0, np.float64), 0.0, 0.0
    traj = []
    for t, g in enumerate(grads):
        m = beta * m + (1 - beta) * np.asarray(g, np.float64)
        p = lr(t) * m + e
        if compressor == "spectral":
            u, s, vt = np.linalg.svd(p, full_matrices=False)
            delta = s.sum() / len(s) * (u @ vt)
        else:
            delta = np.abs(p).sum() / np.count_nonzero(p) * np.sign(p)
        e = p - delta
        w = w - delta - lr(t) * wd * w
        traj.append(w.copy())
    return traj


@pytest.mark.parametrize("compressor", ["spectral", "sign"])
def test_ef_muon_matches_numpy_recursion_with_schedule(compressor):
    lr = optax.cosine_decay_schedule(0.2, 6)
    w0 = _j(_np(5, (6, 4)))
    grads = [_j(_np(60 + t, (6, 4))) for t in range(6)]
    tx = EF.ef_muon(lr, 0.7, compressor=compressor, weight_decay=0.1, ortho_method="svd")
    want = _ef_ref(w0, grads, lambda t: float(lr(t)), 0.7, 0.1, compressor)
    state, w = tx.init(w0), w0
    for t, g in enumerate(grads):
        u, state = tx.update(g, state, w)
        w = optax.apply_updates(w, u)
        # float32 vs float64 over 6 steps, entries ~1: rtol/atol 2e-5.
        np.testing.assert_allclose(np.asarray(w), want[t], rtol=2e-5, atol=2e-5)


def test_sign_ef_with_beta_zero_on_a_diagonal_is_ef_signsgd():
    # β = 0, diagonal W, sign compressor: EF-signSGD on the diagonal.
    lr = 0.1
    diag_grads = [_np(70 + t, (4,)) for t in range(5)]
    tx = EF.scale_by_ef_muon(0.0, compressor="sign", step_size=lr, layout=None)
    w = jnp.zeros(4)
    state = tx.init(w)
    e, ref = np.zeros(4), np.zeros(4)
    for g in diag_grads:
        d, state = tx.update(_j(g), state)
        w = w - d
        p = lr * g + e
        delta = np.abs(p).mean() * np.sign(p)
        e, ref = p - delta, ref - delta
        np.testing.assert_allclose(np.asarray(w), ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- equivariance
def test_ef_muon_spectral_equivariant_under_bi_orthogonal_sign_is_not():
    shape = (6, 10)
    w0 = _j(_np(8, shape, scale=0.1))
    gs = [_j(_np(80 + t, shape)) for t in range(5)]
    act = testing.bi_orthogonal(shape, seed=4)
    # Exactly equivariant in exact arithmetic; in float32 the rounding of P's small singular
    # directions is amplified by the orthogonalizer's slope at 0 (Polar Express, the 'auto'
    # default: ≈ 10³ over 5 steps; measured 1.2e-4 here) and carried by the error buffer.
    # Jordan's Newton–Schulz measured 8e-7. Tolerances 5e-4 and 1e-5; the control is > 0.1.
    tx = EF.ef_muon(0.1, 0.9, weight_decay=0.05)
    testing.check_equivariance(tx, w0, gs, act, rtol=5e-4)
    tx_ns = EF.ef_muon(0.1, 0.9, weight_decay=0.05, ortho_method="newton_schulz")
    testing.check_equivariance(tx_ns, w0, gs, act, rtol=1e-5)
    assert testing.equivariance_error(EF.ef_muon(0.1, 0.9, compressor="sign"), w0, gs, act) > 0.1


def test_ef_sign_equivariant_under_signed_permutation():
    shape = (5, 6)
    w0, gs = _j(_np(9, shape)), [_j(_np(90 + t, shape)) for t in range(4)]
    tx = EF.ef_muon(0.2, 0.5, compressor="sign")
    # mean|P|, sign and the permutation are permutation-exact; sums reorder: 1e-6.
    testing.check_equivariance(tx, w0, gs, testing.signed_permutation(shape, seed=3), rtol=1e-6)


# ---------------------------------------------------------------- stacked leaves
@pytest.mark.parametrize("compressor", ["spectral", "sign"])
def test_stacked_leaf_equals_per_slice(compressor):
    stack = _j(_np(11, (3, 4, 6)))
    grads = [_j(_np(12 + t, (3, 4, 6))) for t in range(3)]
    tx = EF.scale_by_ef_muon(0.5, compressor=compressor, step_size=0.3, layout=MatrixLayout())
    s1, s2 = tx.init(stack), tx.init([stack[i] for i in range(3)])
    for g in grads:
        u1, s1 = tx.update(g, s1)
        u2, s2 = tx.update([g[i] for i in range(3)], s2)
        # one scale per slice, identical kernels: rtol 1e-6.
        np.testing.assert_allclose(
            np.asarray(u1), np.stack([np.asarray(x) for x in u2]), rtol=1e-6, atol=1e-7
        )


# ------------------------------------------------------------------ fallback
@pytest.mark.parametrize(
    "spec,ref",
    [
        # the default fallback follows the learning rate: 0.015 x 0.1 (optzoo.fallback)
        (None, optax.adamw(0.015 * 0.1, b1=0.9, b2=0.95, weight_decay=0.0)),
        # an explicit AdamW: its rate used as given, its moments and decay as set
        (
            optzoo.fallback.AdamW(learning_rate=1e-3, b2=0.999, weight_decay=0.1),
            optax.adamw(1e-3, b1=0.9, b2=0.999, weight_decay=0.1),
        ),
    ],
)
def test_non_matrix_leaves_go_to_the_adamw_fallback(spec, ref):
    params = {"w": _j(_np(1, (4, 6))), "b": _j(_np(2, (6,))), "s": _j(_np(3, ()))}
    grads = [
        {k: _j(_np(10 * t + i, np.shape(v))) for i, (k, v) in enumerate(params.items())}
        for t in range(3)
    ]
    tx = EF.ef_muon(
        0.1, layout=lambda p: {"w": MatrixLayout(), "b": None, "s": None}, fallback=spec
    )
    vec = {"b": params["b"], "s": params["s"]}
    s, sr = tx.init(params), ref.init(vec)
    for g in grads:
        u, s = tx.update(g, s, params)
        ur, sr = ref.update({"b": g["b"], "s": g["s"]}, sr, vec)
        # same optax code on the same leaves: bitwise equal.
        np.testing.assert_array_equal(np.asarray(u["b"]), np.asarray(ur["b"]))
        np.testing.assert_array_equal(np.asarray(u["s"]), np.asarray(ur["s"]))


def test_a_given_fallback_transformation_is_used_as_is():
    params = {"w": _j(_np(1, (4, 6))), "b": _j(_np(2, (6,)))}
    grads = {"w": _j(_np(4, (4, 6))), "b": _j(_np(5, (6,)))}
    custom = EF.ef_muon(0.1, fallback=optax.sgd(1.0))
    u, _ = custom.update(grads, custom.init(params), params)
    np.testing.assert_allclose(np.asarray(u["b"]), -np.asarray(grads["b"]))


# ---------------------------------------------------------------- optax battery


# ------------------------------------------------------------------------ errors
def test_bad_inputs_name_the_parameter_path():
    with pytest.raises(ValueError, match="unknown compressor 'topk'"):
        EF.ef_muon(0.1, compressor="topk")
    with pytest.raises(ValueError, match="'bias' of shape \\(3,\\) has no matrix layout"):
        EF.scale_by_ef_muon().init({"w": jnp.ones((2, 3)), "bias": jnp.ones(3)})
    with pytest.raises(TypeError, match="'w' has dtype int32"):
        EF.ef_muon(0.1).init({"w": jnp.ones((3, 3), jnp.int32)})
    with pytest.raises(TypeError, match="'k' has dtype int32"):
        EF.scale_by_ef_muon(compressor="sign").init({"k": jnp.ones(3, jnp.int32)})
    with pytest.raises(ValueError, match="beta must lie in"):
        EF.scale_by_ef_muon(1.0)
    with pytest.raises(ValueError, match="unknown ortho_method"):
        EF.scale_by_ef_muon(ortho_method="qr")
    with pytest.raises(ValueError, match="layout of 'w'"):
        EF.ef_muon(0.1, layout={"w": MatrixLayout(num_heads=4)}).init({"w": jnp.ones((2, 3))})


@pytest.mark.parametrize("compressor", ["spectral", "sign"])
def test_zero_gradients_give_zero_finite_updates(compressor):
    tx = EF.ef_muon(0.1, compressor=compressor)
    params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}
    u, _ = tx.update(params, tx.init(params), params)
    for x in jax.tree.leaves(u):
        np.testing.assert_array_equal(np.asarray(x), 0.0)
