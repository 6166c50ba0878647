"""FISMO against the paper's Algorithm 1 (issue 16) and FISMO robustness (issue 17).

* A float64 numpy port of Algorithm 1 of Xu, Yan, Zhang (arXiv:2601.21750), written from the
  paper's recursion as quoted by its public summaries (no official code is public): exact
  inverses and inverse square roots recomputed every step, no root damping, no shape factor,
  plus decoupled weight decay (optzoo's chain; not in the paper's algorithm).
* The exact transposition asymmetry that Gauss–Seidel order implies, with a negative control.
* Scale: the rescaled factor statistics are exact (float32 at 1e-30 / 1e30 vs the float64
  recursion at the same scale), scale-free where the math is (γ = μ = 0), never NaN.
* Donation of an eagerly built state; ``max_factor_dim``; construction-time checks.

Each test's docstring keeps the repro and the number measured on the code before the fix
(HEAD 985adad)."""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optzoo.layout import MatrixLayout

F = importlib.import_module("optzoo.fismo")


def _np(seed: int, shape, scale: float = 1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).normal(size=shape)


# ------------------------------------------------------------- the paper's Algorithm 1
def _sqrt_inv(a: np.ndarray) -> np.ndarray:
    """A^{-1/2} of a symmetric positive definite matrix (eigendecomposition, no damping)."""
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    return (v * (1.0 / np.sqrt(w))) @ v.T


def _paper_fismo(w0, grads, *, lr, beta, gamma, mu, wd, right_first=False):
    """Algorithm 1 of the FISMO paper in float64, step by step (our own port).

    Per step, with G the m×n gradient:
      left factor:  L = G Q⁻¹ Gᵀ / n + μ (tr P / m) I_m;  P ← m·P̃ / tr P̃,  P̃ = γP + (1−γ)L
      right factor: R = Gᵀ P⁻¹ G / m + μ (tr Q / n) I_n;  Q ← n·Q̃ / tr Q̃,  Q̃ = γQ + (1−γ)R
        (the paper: P first, from the previous Q; then Q from the NEW P — Gauss–Seidel.
         right_first=True does Q first from the previous P, then P from the new Q.)
      whitened gradient G̃ = P^{-1/2} G Q^{-1/2};  momentum M ← βM + (1−β)G̃
      step ΔW = P^{-1/2} U Vᵀ Q^{-1/2}  (U Vᵀ: the polar factor of M, from its SVD)
      W ← W − lr (ΔW + wd·W)   (decoupled decay: optzoo's chain, not in the algorithm)
    """
    w = np.asarray(w0, np.float64)
    m, n = w.shape
    p, q, mom = np.eye(m), np.eye(n), np.zeros((m, n))
    out = []

    def new_left(g, p, q):
        stat = g @ np.linalg.inv(q) @ g.T / n + mu * np.trace(p) / m * np.eye(m)
        mixed = gamma * p + (1 - gamma) * stat
        return m * mixed / np.trace(mixed)

    def new_right(g, p, q):
        stat = g.T @ np.linalg.inv(p) @ g / m + mu * np.trace(q) / n * np.eye(n)
        mixed = gamma * q + (1 - gamma) * stat
        return n * mixed / np.trace(mixed)

    for g in grads:
        g = np.asarray(g, np.float64)
        if right_first:
            q = new_right(g, p, q)
            p = new_left(g, p, q)
        else:
            p = new_left(g, p, q)
            q = new_right(g, p, q)
        p_is, q_is = _sqrt_inv(p), _sqrt_inv(q)
        mom = beta * mom + (1 - beta) * (p_is @ g @ q_is)
        u, _, vt = np.linalg.svd(mom, full_matrices=False)
        w = w - lr * (p_is @ (u @ vt) @ q_is + wd * w)
        out.append(w.copy())
    return out


PAPER_KW = dict(beta=0.8, gamma=0.7, damping=1e-2)


def _structured_grads(m, n, steps, seed=1):
    """Gradients with a strong row/column structure, so that both factors move far from I."""
    rng = np.random.default_rng(seed)
    a, b = np.diag(rng.uniform(0.2, 3.0, m)), np.diag(rng.uniform(0.2, 3.0, n))
    return [a @ _np(10 + t, (m, n)) @ b for t in range(steps)]


def _optzoo_run_f64(w0, grads):
    """optzoo.fismo in float64 with the paper's settings: exact roots (root_eps=0) refreshed
    every step, no shape factor, exact polar factor; weight decay 0.1."""
    tx = F.fismo(
        0.05,
        **PAPER_KW,
        precondition_frequency=1,
        root_eps=0.0,
        shape_scale=None,
        ortho_method="svd",
        weight_decay=0.1,
    )
    state, w = tx.init(w0), w0
    step = jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = step(g, state, w)
        w = optax.apply_updates(w, u)
        out.append(np.asarray(w))
    return out


def test_fismo_matches_the_paper_and_its_exact_transposition_asymmetry():
    """optzoo.fismo(G) follows Algorithm 1 (left factor first); optzoo.fismo(Gᵀ)ᵀ follows the
    same algorithm with the right factor first; the two orders differ (negative control).

    Before the fix the docstring claimed the method "symmetric in the two sides": on these
    inputs FISMO(Gᵀ)ᵀ and FISMO(G) differ by 7.5 % of the update after one step and by
    up to ~60 % later (measured below as ``order_gap``; issue 16 reports 7 % / 32-109 %).
    The code already followed the paper's order; the claim was corrected (on HEAD this test
    fails only because ``root_eps=0``, the paper's exact roots, was refused).

    Tolerance: float64 on both sides, the optzoo side with its cached roots (refreshed every
    step) and P⁻¹ = (P^{-1/2})² instead of an explicit inverse: rounding ~1e-15 amplified
    by the factors' condition numbers (~50) over 6 steps: 1e-9 absolute on |W| ~ 1.
    """
    m, n, steps = 5, 8, 6
    lr = 0.05
    with jax.enable_x64(True):
        w0 = jnp.asarray(_np(0, (m, n)), jnp.float64)
        grads = [jnp.asarray(g, jnp.float64) for g in _structured_grads(m, n, steps)]
        ours = _optzoo_run_f64(w0, grads)
        ours_t = _optzoo_run_f64(w0.T, [g.T for g in grads])
    kw = dict(lr=lr, beta=0.8, gamma=0.7, mu=1e-2, wd=0.1)
    paper = _paper_fismo(w0, grads, **kw)
    paper_rf = _paper_fismo(w0, grads, right_first=True, **kw)
    for t in range(steps):
        np.testing.assert_allclose(ours[t], paper[t], atol=1e-9, rtol=0, err_msg=f"step {t}")
        np.testing.assert_allclose(
            ours_t[t].T, paper_rf[t], atol=1e-9, rtol=0, err_msg=f"transposed, step {t}"
        )
    # Negative control: the two orders are different methods (relative difference of the
    # accumulated updates W_t - W_0; measured 0.075 at step 1, up to ~0.6 later).
    w0n = np.asarray(w0)
    order_gap = [
        np.linalg.norm(a - b) / np.linalg.norm(a - w0n)
        for a, b in zip(paper, paper_rf, strict=True)
    ]
    assert order_gap[0] > 0.03 and max(order_gap) > 0.2, order_gap
    # ... so optzoo on Gᵀ is NOT the transpose of optzoo on G
    assert np.max(np.abs(ours_t[-1].T - ours[-1])) > 1e-2


# --------------------------------------------------------------------------- scale
def _float64_reference(grads, *, gamma, mu, eps, beta):
    """optzoo's documented recursion (roots with relative damping ``eps``, refreshed every
    step) in float64, returning the directions u_t = P^{-1/2} polar(M) Q^{-1/2} (no shape
    factor). float64 holds |G|² up to 1e308, so scales 1e-30 .. 1e30 need no rescaling here."""

    def inv_sqrt(a):
        d = a.shape[0]
        w, v = np.linalg.eigh(a + eps * np.trace(a) / d * np.eye(d))
        return (v / np.sqrt(w)) @ v.T

    m, n = np.shape(grads[0])
    p, q, pr, qr, mom = np.eye(m), np.eye(n), np.eye(m), np.eye(n), np.zeros((m, n))
    out = []
    for g in grads:
        g = np.asarray(g, np.float64)
        mixed = gamma * p + (1 - gamma) * (g @ qr @ qr @ g.T / n + mu * np.trace(p) / m * np.eye(m))
        p = m * mixed / np.trace(mixed)
        pr = inv_sqrt(p)
        mixed = gamma * q + (1 - gamma) * (g.T @ pr @ pr @ g / m + mu * np.trace(q) / n * np.eye(n))
        q = n * mixed / np.trace(mixed)
        qr = inv_sqrt(q)
        mom = beta * mom + (1 - beta) * (pr @ g @ qr)
        u, _, vt = np.linalg.svd(mom)
        out.append(pr @ (u @ vt) @ qr)
    return out


@functools.cache
def _scale_step(gamma, damping):
    tx = F.scale_by_fismo(
        0.9,
        gamma=gamma,
        damping=damping,
        precondition_frequency=1,
        shape_scale=None,
        ortho_method="svd",
    )
    return tx, jax.jit(tx.update)


def _directions(grads, scale, gamma, damping):
    tx, step = _scale_step(gamma, damping)
    g0 = jnp.asarray(grads[0], jnp.float32)
    state, out = tx.init(g0), []
    for g in grads:
        u, state = step(jnp.asarray(g * scale, jnp.float32), state)
        assert all(
            bool(jnp.all(jnp.isfinite(x)))
            for x in jax.tree.leaves((u, state))
            if jnp.issubdtype(x.dtype, jnp.floating)
        ), scale
        out.append(np.asarray(u, np.float64))
    return out


SQUARE_GRADS = _structured_grads(6, 6, 4, seed=3)


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_directions_equal_the_exact_recursion_at_every_scale(scale):
    """Default γ, μ: the float32 direction at |G| ~ scale equals the float64 recursion at the
    same scale (so rescaling before squaring is exact, not an approximation).

    Before the fix (HEAD): inf/NaN from |G| ~ 1e19-1e20 (``scale_by_fismo().update(1e20*g, s)``
    gave an all-NaN update at the second step; here at 1e30: NaN from step 1).
    Tolerance: float32 inputs (|G|·scale rounded to float32, 6e-8 relative), eigh and SVD of
    factors with condition number up to ~1e2 (at 1e30 P follows the current G) over 4 steps:
    1e-4 relative to the largest entry of u (|u| up to 14 at 1e30; measured 6e-7 / 1.5e-6 /
    1.7e-5 at 1e-30 / 1 / 1e30)."""
    want = _float64_reference(
        [g * scale for g in SQUARE_GRADS], gamma=0.95, mu=1e-3, eps=1e-6, beta=0.9
    )
    got = _directions(SQUARE_GRADS, scale, 0.95, 1e-3)
    for t, (a, b) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(a, b, atol=1e-4 * np.max(np.abs(b)), rtol=0, err_msg=f"step {t}")


def test_scale_free_where_the_math_is_and_not_where_it_is_not():
    """γ = μ = 0: the recursion is scale-invariant, and the computed directions at 1e-30 and
    1e30 equal those at scale 1. Negative control: with the default damping μ = 1e-3 (absolute
    in gradient units) the direction at 1e-30 is a different one (P stays ≈ I: Muon-like).

    Before the fix (HEAD): NaN at 1e30 (and at 1e-30 with γ = μ = 0: the statistics
    underflowed to 0 and the trace normalization divided 0 by 0).
    Tolerance: the scaled inputs round differently in float32 (6e-8 relative), amplified by
    the whitening (with γ = μ = 0 the factors follow single gradients and are the worst
    conditioned here): 3e-4 relative to the largest entry of u (measured 6.2e-5 at 1e-30,
    4.6e-5 at 1e30). The negative control differs by 0.50 (entries ~1)."""
    ref = _directions(SQUARE_GRADS, 1.0, 0.0, 0.0)
    for scale in (1e-30, 1e30):
        got = _directions(SQUARE_GRADS, scale, 0.0, 0.0)
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_allclose(a, b, atol=3e-4 * np.max(np.abs(b)), rtol=0)
    damped_small = _directions(SQUARE_GRADS, 1e-30, 0.95, 1e-3)
    damped_one = _directions(SQUARE_GRADS, 1.0, 0.95, 1e-3)
    gap = max(np.max(np.abs(a - b)) for a, b in zip(damped_small, damped_one, strict=True))
    assert gap > 0.1, gap


def test_bfloat16_and_huge_finite_gradients_stay_finite():
    """bfloat16 leaves at 1e30 and a float32 leaf whose largest entry is 3e38 (the dtype's
    edge): finite factors, roots, momentum and update. Before: NaN (HEAD)."""
    tx = F.scale_by_fismo(precondition_frequency=1)
    step = jax.jit(tx.update)
    g = jnp.asarray(_np(5, (4, 6)), jnp.float32)
    for x in ((g * 1e30).astype(jnp.bfloat16), g / jnp.max(jnp.abs(g)) * 3e38):
        state = tx.init(x)
        for _ in range(2):
            u, state = step(x, state)
        for leaf in jax.tree.leaves((u, state)):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert bool(jnp.all(jnp.isfinite(leaf)))


# ------------------------------------------------------------------------ donation
def test_eager_state_can_be_donated_to_a_jitted_step():
    """No two state leaves share a buffer, so ``jax.jit(update, donate_argnums=1)`` accepts an
    eagerly built state.

    Before the fix (HEAD): ``left``/``right`` and ``left_root``/``right_root`` were the same
    arrays, and the donated step failed with XLA's "Attempt to donate the same buffer twice".
    Negative control: the same state with a buffer deliberately shared does fail."""
    params = {
        "w": jnp.asarray(_np(1, (4, 6)), jnp.float32),
        "b": jnp.asarray(_np(2, (6,)), jnp.float32),
    }
    opt = F.fismo(0.02, precondition_frequency=2)
    state = opt.init(params)
    leaves = [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]
    ptrs = [x.unsafe_buffer_pointer() for x in leaves]
    assert len(set(ptrs)) == len(ptrs)
    step = jax.jit(opt.update, donate_argnums=(1,))
    for t in range(2):
        g = jax.tree.map(lambda x, t=t: x * (1.0 + t), params)
        updates, state = step(g, state, params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(updates))
    # negative control: share one buffer between two fields and donation is refused
    inner = state.inner_states["matrix"].inner_state[0]
    shared = inner._replace(left_root=inner.left)
    bad = jax.jit(lambda s: jax.tree.map(lambda x: x + 0, s), donate_argnums=(0,))
    with pytest.raises(Exception, match="donate the same buffer twice"):
        jax.block_until_ready(bad(shared))


# ----------------------------------------------------------------- max_factor_dim
def test_vocabulary_sized_leaf_is_refused_before_allocating():
    """A 50257x768 embedding under the default layout is refused at init, naming the path, the
    19 GiB it would take and the fix; ``jax.eval_shape`` proves nothing is allocated first.

    Before the fix (HEAD): accepted silently — 2 x 50257² float32 (factor + root) = 18.8 GiB.
    """
    params = {
        "embed": {"embedding": jax.ShapeDtypeStruct((50257, 768), jnp.float32)},
        "h": jax.ShapeDtypeStruct((768, 768), jnp.float32),
    }
    # (the default layout may also refuse a leaf *named* like an embedding, by its role; the
    # size rule covers every leaf, whatever its name or layout: here the generic layout)
    with pytest.raises(
        ValueError,
        match=r"'embed/embedding' of shape \(50257, 768\).*"
        r"50257x50257.*max_factor_dim=16384.*18.8 GiB.*None",
    ):
        jax.eval_shape(F.fismo(0.02, layout=MatrixLayout()).init, params)
    with pytest.raises(ValueError, match=r"'table' of shape \(50257, 768\).*50257x50257"):
        jax.eval_shape(F.fismo(0.02).init, {"table": params["embed"]["embedding"]})
    # the fix the message names: layout None sends it to the fallback (AdamW) ...
    lay = {"embed": {"embedding": None}, "h": MatrixLayout()}
    state = jax.eval_shape(F.fismo(0.02, layout=lay).init, params)
    inner = state.inner_states["matrix"].inner_state[0]
    assert inner.left["h"].shape == (1, 768, 768)
    # ... or accept the cost explicitly
    jax.eval_shape(F.fismo(0.02, max_factor_dim=None, layout=MatrixLayout()).init, params)
    # (N, 1) leaves are covered by the same rule; a tighter limit refuses smaller leaves
    with pytest.raises(ValueError, match="'h'.*768x768.*max_factor_dim=512"):
        jax.eval_shape(F.scale_by_fismo(max_factor_dim=512).init, {"h": params["h"]})
    with pytest.raises(ValueError, match="'col'.*20000x20000 left"):
        jax.eval_shape(
            F.scale_by_fismo().init, {"col": jax.ShapeDtypeStruct((20000, 1), jnp.float32)}
        )


def test_max_factor_dim_under_inject_hyperparams():
    """The numeric default is injected by optax.inject_hyperparams (as an int32 array): it is
    still checked at init. (Jitted updates with it injected, i.e. traced, run in
    tests/test_fismo.py::test_inject_hyperparams_under_jit_matches_plain.)"""
    inj = optax.inject_hyperparams(F.fismo, static_args=("precondition_frequency",))(
        learning_rate=0.02, precondition_frequency=2, max_factor_dim=4
    )
    with pytest.raises(ValueError, match="max_factor_dim=4"):
        inj.init({"w": jnp.zeros((3, 5))})


# ------------------------------------------------------------ construction checks
@pytest.mark.parametrize(
    "kw,err,match",
    [
        (dict(ns_steps=0), ValueError, "ns_steps must lie in"),
        (dict(ns_steps=2.0), TypeError, "ns_steps must be an int"),
        (dict(beta=np.float32(1.0)), ValueError, "beta must lie in"),
        (dict(gamma=np.array(-0.1)), ValueError, "gamma must lie in"),
        (dict(beta=float("nan")), ValueError, "beta must be finite"),
        (dict(damping=-1e-3), ValueError, "damping must lie in"),
        (dict(root_eps=-1.0), ValueError, "root_eps must lie in"),
        (dict(rms_scale=0.0), ValueError, "rms_scale must lie in"),
        (dict(mu_dtype=jnp.int32), TypeError, "mu_dtype must be a floating dtype"),
        (dict(ortho_method="jordan"), ValueError, "unknown ortho_method"),
        (dict(root_method="cholesky"), ValueError, "unknown root_method"),
        (dict(max_factor_dim=0), ValueError, "max_factor_dim must lie in"),
        (dict(max_factor_dim=1e4), TypeError, "max_factor_dim must be an int"),
        (dict(weight_decay=np.float64(-0.1)), ValueError, "weight_decay must lie in"),
        (dict(shape_scale="none"), ValueError, "unknown shape_scale"),  # Muon's spelling: None
        (dict(fallback=optax.adam), TypeError, "fallback must be an optax.GradientTransformation"),
        (dict(beta=True), TypeError, "beta must be a real number"),
    ],
)
def test_every_hyperparameter_is_checked_at_construction(kw, err, match):
    """Bad options fail in the factory, naming the argument.

    Before the fix (HEAD): ``fismo(0.02, ns_steps=0)`` was accepted and failed only at the
    first update, without naming ``ns_steps``; 0-d arrays (``gamma=np.array(-0.1)``) and NaN
    bypassed the range checks; ``mu_dtype=jnp.int32`` (truncates the momentum to 0),
    ``rms_scale=0``, ``fallback=optax.adam`` (the factory, not a transform) and
    ``learning_rate=None`` were accepted (16 of the 18 cases of the original list failed on
    HEAD)."""
    with pytest.raises(err, match=f"fismo: {match}"):
        F.fismo(0.02, **kw)


def test_learning_rate_none_is_refused():
    with pytest.raises(TypeError, match="fismo: learning_rate"):
        F.fismo(None)
