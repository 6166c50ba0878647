"""Tests of optzoo.scion: LMO atoms against numpy closed forms and dual pairings, the full
recursion against a numpy re-derivation (uSCG and SCG), the Frank–Wolfe ball, equivariance
with negative controls, stacked = per-slice, the optax battery, and input errors."""

from __future__ import annotations

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optzoo import testing
from optzoo.layout import MatrixLayout

# optzoo.scion (the attribute) is the optimizer factory; the module is reached by name.
S = importlib.import_module("optzoo.scion")


def _np(seed: int, shape, scale: float = 1.0) -> np.ndarray:
    # numpy data: jax.random would compile a kernel per shape (slow on a loaded 2-core box).
    return scale * np.random.default_rng(seed).normal(size=shape)


def _j(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def _compose(outer: testing.Action, inner: testing.Action) -> testing.Action:
    # Local helper (not in optzoo.testing): the group element "inner, then outer".
    return testing.Action(lambda x, t: outer(inner(x, t), t), f"{outer.name}∘{inner.name}")


# ------------------------------------------------------------- numpy closed-form oracles
def _polar64(x: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(x, full_matrices=False)
    return u @ vt


def _lmo_ref(name: str, d: np.ndarray, rho: float, eps: float = 1e-8) -> np.ndarray:
    """float64 LMO of each norm, written from the definitions (module docstring table)."""
    m, n = d.shape[-2:]
    if name == "spectral":
        return -rho * np.sqrt(n / m) * _polar64(d)
    if name == "sign":
        return -(rho / m) * np.sign(d)
    if name == "row":
        return -rho * np.sqrt(n) * d / (np.linalg.norm(d, axis=-1, keepdims=True) + eps)
    if name == "column":
        return -(rho / np.sqrt(m)) * d / (np.linalg.norm(d, axis=-2, keepdims=True) + eps)
    raise AssertionError(name)


def _dual_ref(name: str, g: np.ndarray) -> float:
    """Dual norm of each norm (independent formulas: nuclear, ℓ1, sums of row/column norms)."""
    if name == "bias_rms":
        return np.sqrt(g.size) * np.linalg.norm(g)
    m, n = g.shape
    if name == "spectral":
        return np.sqrt(n / m) * np.linalg.svd(g, compute_uv=False).sum()
    if name == "sign":
        return np.abs(g).sum() / m
    if name == "row":
        return np.sqrt(n) * np.linalg.norm(g, axis=1).sum()
    if name == "column":
        return np.linalg.norm(g, axis=0).sum() / np.sqrt(m)
    raise AssertionError(name)


def _primal_ref(name: str, w: np.ndarray) -> float:
    if name == "bias_rms":
        return np.linalg.norm(w) / np.sqrt(w.size)
    m, n = w.shape
    if name == "spectral":
        return np.sqrt(m / n) * np.linalg.svd(w, compute_uv=False).max()
    if name == "sign":
        return m * np.abs(w).max()
    if name == "row":
        return np.linalg.norm(w, axis=1).max() / np.sqrt(n)
    if name == "column":
        return np.sqrt(m) * np.linalg.norm(w, axis=0).max()
    raise AssertionError(name)


def _atom(name: str, x: jax.Array, rho: float) -> jax.Array:
    if name == "spectral":
        return S.lmo_spectral(x, rho, method="svd")
    if name == "bias_rms":
        return S.lmo_bias_rms(x, rho)
    return {"sign": S.lmo_sign, "row": S.lmo_row, "column": S.lmo_column}[name](x, rho)


# ------------------------------------------------------------------------ LMO atoms
@pytest.mark.parametrize("name", ["spectral", "sign", "row", "column"])
def test_lmo_atoms_match_closed_forms(name):
    x = _np(0, (3, 5, 7))
    got = np.asarray(_atom(name, _j(x), 2.5), np.float64)
    # float32 SVD / normalization against float64 formulas: a few float32 ulps relative to
    # entries of size ~0.1-1, so rtol 1e-5 with atol 1e-6 (the sign atom is exact).
    np.testing.assert_allclose(got, _lmo_ref(name, x, 2.5), rtol=1e-5, atol=1e-6)
    assert got.shape == x.shape


def test_lmo_bias_rms_closed_form_and_axis():
    v = _np(1, (9,))
    want = -3.0 * v / (np.sqrt(np.mean(v**2)) + 1e-8)
    np.testing.assert_allclose(np.asarray(S.lmo_bias_rms(_j(v), 3.0)), want, rtol=1e-5)
    stack = _np(2, (2, 3, 4))
    per = np.asarray(S.lmo_bias_rms(_j(stack), 1.0, axis=(-2, -1)))
    for i in range(2):  # one RMS per matrix slice
        want = -stack[i] / np.sqrt(np.mean(stack[i] ** 2))
        np.testing.assert_allclose(per[i], want, rtol=1e-5)


@pytest.mark.parametrize("name", ["spectral", "sign", "row", "column", "bias_rms"])
def test_lmo_dual_pairing_unit_norm_and_optimality(name):
    g = _np(3, (6, 4)) if name != "bias_rms" else _np(3, (10,))
    rho = 0.7
    lmo = np.asarray(_atom(name, _j(g), rho), np.float64)
    # ⟨G, lmo(G)⟩ = −ρ‖G‖_dual and ‖lmo(G)‖ = ρ, dual/primal norms from independent formulas.
    # float32 atoms: relative error ~1e-6; rtol 1e-5.
    np.testing.assert_allclose(np.sum(g * lmo), -rho * _dual_ref(name, g), rtol=1e-5)
    np.testing.assert_allclose(_primal_ref(name, lmo), rho, rtol=1e-5)
    # Optimality: no random point of the radius-ρ ball does better (50 draws, margin 1e-6).
    rng = np.random.default_rng(4)
    for _ in range(50):
        x = rng.normal(size=g.shape) * rng.uniform(0.1, 3.0, size=g.shape)
        x = rho * x / _primal_ref(name, x)
        assert np.sum(g * x) >= np.sum(g * lmo) - 1e-6


def test_atoms_reject_vectors_and_ints():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        S.lmo_spectral(jnp.ones(3))
    with pytest.raises(TypeError, match="floating"):
        S.lmo_sign(jnp.ones((2, 2), jnp.int32))


# ---------------------------------------------------------------- recursion vs numpy
def _scion_ref(params, grads, norms, rho, alpha, lr, constrained, wd):
    """float64 re-derivation: D ← (1−α)D + αG; uSCG W ← W + η lmo − ηλW; SCG W ← (1−η)W + η lmo."""
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    d = {k: np.zeros_like(v) for k, v in w.items()}
    traj = []
    for g in grads:
        for k in w:
            d[k] = (1 - alpha) * d[k] + alpha * np.asarray(g[k], np.float64)
            if norms[k] == "bias_rms":
                lmo = -rho[k] * d[k] / (np.sqrt(np.mean(d[k] ** 2)) + 1e-8)
            else:
                lmo = _lmo_ref(norms[k], d[k], rho[k])
            decay = 1.0 if constrained else wd
            w[k] = w[k] + lr * lmo - lr * decay * w[k]
        traj.append({k: v.copy() for k, v in w.items()})
    return traj


@pytest.mark.parametrize("constrained,wd", [(False, 0.1), (True, 0.0)])
def test_scion_matches_numpy_recursion(constrained, wd):
    norms = {"a": "spectral", "b": "sign", "c": "row", "d": "column", "e": "bias_rms"}
    shapes = {"a": (4, 6), "b": (5, 3), "c": (4, 5), "d": (6, 4), "e": (7,)}
    rho = {"a": 2.0, "b": 30.0, "c": 1.5, "d": 0.5, "e": 0.3}
    params = {k: _j(_np(10 + i, s)) for i, (k, s) in enumerate(shapes.items())}
    grads = [
        {k: _j(_np(100 * t + i, s)) for i, (k, s) in enumerate(shapes.items())} for t in range(4)
    ]
    tx = S.scion(
        0.05,
        norms=norms,
        radius=rho,
        momentum=0.3,
        constrained=constrained,
        weight_decay=wd,
        ortho_method="svd",
    )
    want = _scion_ref(params, grads, norms, rho, 0.3, 0.05, constrained, wd)
    state, p = tx.init(params), params
    for t, g in enumerate(grads):
        u, state = tx.update(g, state, p)
        p = optax.apply_updates(p, u)
        # float32 iterates of size ~1 against float64 after 4 steps: rtol/atol 2e-5.
        for k in p:
            np.testing.assert_allclose(
                np.asarray(p[k]), want[t][k], rtol=2e-5, atol=2e-5, err_msg=f"{k} step {t}"
            )
    assert int(state[0].count) == 4


def test_constrained_frank_wolfe_ball_and_contraction():
    # Exact LMO (svd): ‖W_t‖ − ρ ≤ (1 − η)^t (‖W_0‖ − ρ), and the ball is invariant.
    rho, lr = 1.5, 0.2
    w0 = _j(_np(5, (5, 8), scale=2.0))
    tx = S.scion(
        lr, norms="spectral", radius=rho, constrained=True, momentum=0.5, ortho_method="svd"
    )
    state, w = tx.init(w0), w0
    gap0 = _primal_ref("spectral", np.asarray(w0, np.float64)) - rho
    assert gap0 > 1.0
    for t in range(1, 16):
        u, state = tx.update(_j(_np(50 + t, (5, 8))), state, w)
        w = optax.apply_updates(w, u)
        gap = _primal_ref("spectral", np.asarray(w, np.float64)) - rho
        # triangle inequality bound; 1e-5 absorbs float32 rounding of entries ~1.
        assert gap <= (1 - lr) ** t * gap0 + 1e-5, (t, gap)
    inside = _j(0.5 * np.asarray(w) / _primal_ref("spectral", np.asarray(w, np.float64)))
    w = inside
    for t in range(5):
        u, state = tx.update(_j(_np(80 + t, (5, 8), scale=100.0)), state, w)
        w = optax.apply_updates(w, u)
        assert _primal_ref("spectral", np.asarray(w, np.float64)) <= rho * (1 + 1e-5)


def test_gradient_scale_invariance():
    # Every atom is invariant to a positive rescaling of the gradient stream (up to eps).
    params = {"w": _j(_np(1, (4, 6))), "b": _j(_np(2, (6,)))}
    grads = [{"w": _j(_np(20 + t, (4, 6))), "b": _j(_np(30 + t, (6,)))} for t in range(3)]
    for norm in ["spectral", "sign", "row", "column"]:
        tx = S.scale_by_scion(0.5, norms={"w": norm, "b": "bias_rms"})
        s1, s2 = tx.init(params), tx.init(params)
        for g in grads:
            u1, s1 = tx.update(g, s1)
            u2, s2 = tx.update(jax.tree.map(lambda x: 1e3 * x, g), s2)
        # scale-free maps: equal to float32 rounding (NS normalization, eps 1e-8 vs 1e3 norms).
        chex.assert_trees_all_close(u1, u2, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ equivariance
def _grads(shape, steps=4, seed=0):
    return [_j(_np(seed + t, shape)) for t in range(steps)]


def test_spectral_equivariant_under_bi_orthogonal_and_sign_is_not():
    shape = (6, 9)
    w0, gs = _j(_np(7, shape)), _grads(shape)
    act = testing.bi_orthogonal(shape, seed=3)
    # Polar Express in float32: equivariant up to rounding (measured 4.6e-7 / 5.8e-7);
    # rtol 1e-5. The negative control measures 0.59.
    for constrained in (False, True):
        tx = S.scion(0.1, norms="spectral", radius=2.0, constrained=constrained)
        testing.check_equivariance(tx, w0, gs, act, rtol=1e-5)
    # Negative control: the same steps with the ℓ∞-type atom (update size comparable to W).
    sign_tx = S.scion(0.5, norms="sign", radius=6.0)
    assert testing.equivariance_error(sign_tx, w0, gs, act) > 0.1


def test_sign_equivariant_under_signed_permutation_not_rotation():
    shape = (5, 4)
    w0, gs = _j(_np(8, shape)), _grads(shape, seed=40)
    tx = S.scion(0.1, norms="sign", radius=5.0, constrained=True)
    # sign and the permutation are exact in float32; 1e-6 covers the decay arithmetic.
    testing.check_equivariance(tx, w0, gs, testing.signed_permutation(shape, seed=1), rtol=1e-6)
    assert testing.equivariance_error(tx, w0, gs, testing.bi_orthogonal(shape, seed=2)) > 0.1


@pytest.mark.parametrize("name", ["row", "column"])
def test_row_column_equivariance_groups(name):
    shape = (6, 5)
    w0, gs = _j(_np(9, shape)), _grads(shape, seed=60)
    # radius: atoms of the size of W's rows (ρ√n) / columns (ρ/√m), so the steps are not
    # negligible against W and the negative control has power.
    tx = S.scion(0.3, norms=name, radius=1.0 if name == "row" else 6.0, weight_decay=0.05)
    if name == "row":  # Π W Qᵀ: permute rows, rotate within rows
        good = _compose(
            testing.permutation(shape, axis=-2, seed=1), testing.right_orthogonal(shape, seed=2)
        )
        bad = testing.left_orthogonal(shape, seed=3)
    else:  # U W Πᵀ: rotate within columns, permute columns
        good = _compose(
            testing.permutation(shape, axis=-1, seed=1), testing.left_orthogonal(shape, seed=2)
        )
        bad = testing.right_orthogonal(shape, seed=3)
    # row/column norms of rotated rows are rotation invariant up to float32 rounding: 1e-5.
    testing.check_equivariance(tx, w0, gs, good, rtol=1e-5)
    assert testing.equivariance_error(tx, w0, gs, bad) > 0.05


# ---------------------------------------------------------------- stacked leaves
@pytest.mark.parametrize("name", ["spectral", "sign", "row", "column", "bias_rms"])
def test_stacked_leaf_equals_per_slice(name):
    stack = _j(_np(11, (3, 4, 6)))
    grads = [_j(_np(12 + t, (3, 4, 6))) for t in range(2)]
    lay = MatrixLayout()
    kw = dict(norms=name, radius=1.3, layout=lay, ortho_method="auto")
    tx_stack = S.scale_by_scion(0.4, **kw)
    tx_slices = S.scale_by_scion(0.4, **kw)
    s1 = tx_stack.init(stack)
    s2 = tx_slices.init([stack[i] for i in range(3)])
    for g in grads:
        u1, s1 = tx_stack.update(g, s1)
        u2, s2 = tx_slices.update([g[i] for i in range(3)], s2)
        # Same float32 kernels on the same matrices (grouped or not): rtol 1e-6.
        np.testing.assert_allclose(
            np.asarray(u1), np.stack([np.asarray(x) for x in u2]), rtol=1e-6, atol=1e-7
        )


# ---------------------------------------------------------------- optax battery
_PARAMS = {
    "w": jnp.zeros((4, 6)),
    "stack": jnp.zeros((2, 3, 5)),
    "head": jnp.zeros((6, 8)),
    "emb": jnp.zeros((8, 4)),
    "b": jnp.zeros((6,)),
}
_NORMS = {"w": "spectral", "stack": "spectral", "head": "column", "emb": "row", "b": "bias_rms"}


def test_battery_sign_head_and_callable_norms():
    params = testing.random_like(_PARAMS, seed=2)

    def norms(path, leaf):
        return "sign" if path == "head" else "auto"

    kwargs = dict(learning_rate=0.05, norms=norms, radius=3.0, ns_steps=4, layout=MatrixLayout())
    testing.check_optax_compatibility(S.scion, kwargs, params, static_args=("norms", "ns_steps"))


# ------------------------------------------------------------------------- errors
def test_bad_inputs_name_the_parameter_path():
    params = {"w": jnp.ones((4, 6)), "bias": jnp.ones((6,))}
    with pytest.raises(ValueError, match="unknown norm 'nuclear'"):
        S.scion(0.1, norms="nuclear")
    with pytest.raises(ValueError, match="unknown norm 'frob' for parameter 'w'"):
        S.scion(0.1, norms={"w": "frob", "bias": "auto"}).init(params)
    with pytest.raises(ValueError, match="'bias' of shape \\(6,\\) has no matrix layout.*'sign'"):
        S.scion(0.1, norms="sign").init(params)
    with pytest.raises(ValueError, match="radius for 'bias' must be > 0"):
        S.scion(0.1, radius={"w": 1.0, "bias": 0.0}).init(params)
    with pytest.raises(ValueError, match="radius .* must be > 0"):
        S.scion(0.1, radius=-1.0)
    with pytest.raises(ValueError, match="radius for 'w' must be > 0"):
        S.scion(0.1, radius=lambda path, x: -1.0 if path == "w" else 1.0).init(params)
    with pytest.raises(TypeError, match="'w' has dtype int32"):
        S.scion(0.1).init({"w": jnp.ones((3, 3), jnp.int32)})
    with pytest.raises(TypeError, match="update 'w' has dtype int32"):
        tx = S.scion(0.1)
        tx.update(
            {"w": jnp.ones((3, 3), jnp.int32)},
            tx.init({"w": jnp.ones((3, 3))}),
            {"w": jnp.ones((3, 3))},
        )
    with pytest.raises(ValueError, match="weight_decay must be 0"):
        S.scion(0.1, constrained=True, weight_decay=0.1)
    with pytest.raises(ValueError, match="momentum"):
        S.scion(0.1, momentum=0.0)
    with pytest.raises(ValueError, match="norms"):
        S.scion(0.1, norms={"w": "spectral"}).init(params)
    with pytest.raises(ValueError, match="layout of 'w'"):
        S.scion(0.1, layout={"w": MatrixLayout(num_heads=4), "bias": None}).init(params)


@pytest.mark.parametrize("name", ["spectral", "sign", "row", "column", "bias_rms"])
def test_zero_gradients_give_zero_finite_updates(name):
    # Unused parameters (zero gradients) must not produce NaN: every atom maps 0 to 0.
    tx = S.scale_by_scion(0.5, norms=name, layout=MatrixLayout())
    u, _ = tx.update(jnp.zeros((2, 3, 4)), tx.init(jnp.zeros((2, 3, 4))))
    np.testing.assert_array_equal(np.asarray(u), 0.0)
