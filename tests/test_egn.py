"""EGN (optzoo.egn): batch-space Levenberg–Marquardt directions as an optax transform.

Oracles: a float64 numpy re-derivation of the dense parameter-space solve
``(JᵀQJ/b + λI)⁻¹ g`` with the MLP Jacobian written out by hand (no autodiff), numpy's
least-squares solution, and closed-form gain ratios / Armijo steps on quadratics.
Float64 checks run inside ``jax.enable_x64(True)`` (a context manager: the rest of the
process stays in float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.demos import egn_demo
from optzoo.egn import EGNLineSearchState, ScaleByEGNState, egn, egn_loss, scale_by_egn


# ------------------------------------------------------------------------------ models
def mlp(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def linear(p, x):
    return x @ p["w"] + p["b"]


def _mlp_params(rng, din, h, c, dtype=np.float64):
    return {
        "w1": rng.standard_normal((din, h)).astype(dtype),
        "b1": (0.1 * rng.standard_normal(h)).astype(dtype),
        "w2": (0.5 * rng.standard_normal((h, c))).astype(dtype),
        "b2": (0.1 * rng.standard_normal(c)).astype(dtype),
    }


def _numpy_mlp_jacobian(p, x):
    """Per-leaf Jacobians ``[b, c, *leaf]`` of ``tanh(x W1 + b1) W2 + b2``, by hand."""
    h = np.tanh(x @ p["w1"] + p["b1"])  # [b, H]
    dh = 1.0 - h**2
    b, c = x.shape[0], p["w2"].shape[1]
    eye = np.eye(c)
    return {
        "b2": np.broadcast_to(eye, (b, c, c)),
        "w2": np.einsum("ij,kl->iljk", h, eye),  # ∂f_l/∂W2[j,k] = h_j δ_kl
        "b1": np.einsum("ij,jk->ikj", dh, p["w2"]),  # (1 − h_j²) W2[j,k]
        "w1": np.einsum("ia,ij,jk->ikaj", x, dh, p["w2"]),  # x_a (1 − h_j²) W2[j,k]
    }


def _numpy_dense_direction(p, x, y, loss, lam):
    """``(JᵀQJ/b + λI)⁻¹ Jᵀr/b`` in float64, split back into leaves."""
    keys = sorted(p)
    jac = _numpy_mlp_jacobian(p, x)
    b, c = x.shape[0], p["w2"].shape[1]
    jmat = np.concatenate([jac[k].reshape(b * c, -1) for k in keys], axis=1)
    f = np.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    if loss == "mse":
        r, q = f - y, np.eye(b * c)
    else:
        e = np.exp(f - f.max(axis=1, keepdims=True))
        prob = e / e.sum(axis=1, keepdims=True)
        r = prob - np.eye(c)[y]
        q = np.zeros((b * c, b * c))
        for i in range(b):
            q[i * c : (i + 1) * c, i * c : (i + 1) * c] = np.diag(prob[i]) - np.outer(
                prob[i], prob[i]
            )
    g = jmat.T @ r.reshape(-1) / b
    hess = jmat.T @ q @ jmat / b
    d = np.linalg.solve(hess + lam * np.eye(len(g)), g)
    out, start = {}, 0
    for k in keys:
        size = p[k].size
        out[k] = d[start : start + size].reshape(p[k].shape)
        start += size
    return out


def _tree_rel_err(a, b):
    num = sum(float(np.sum((np.asarray(a[k], np.float64) - b[k]) ** 2)) for k in b)
    den = sum(float(np.sum(np.asarray(b[k], np.float64) ** 2)) for k in b)
    return np.sqrt(num / den)


def _jit_update(opt, **static):
    """``opt.update`` jitted (one compilation instead of many eagerly dispatched ops)."""
    return jax.jit(lambda u, s, p, batch: opt.update(u, s, p, batch=batch, **static))


def _direction(p, x, y, **kw):
    tx = scale_by_egn(**{"adaptive_damping": False, **kw})
    # jitted: one compilation instead of hundreds of eagerly dispatched small ops.
    return jax.jit(lambda p, x, y: tx.update(p, tx.init(p), p, batch=(x, y)))(p, x, y)


# ------------------------------------------------------------------ oracle: dense solve
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("solver", ["cholesky", "lu", "cg"])
def test_direction_equals_dense_lm_solve_float64(loss, solver):
    rng = np.random.default_rng(0)
    b, din, h, c = 6, 3, 5, 4
    p = _mlp_params(rng, din, h, c)
    x = rng.standard_normal((b, din))
    y = rng.standard_normal((b, c)) if loss == "mse" else rng.integers(0, c, b)
    lam = 0.3
    dense = _numpy_dense_direction(p, x, y, loss, lam)
    with jax.enable_x64(True):
        u, _ = _direction(
            jax.tree.map(jnp.asarray, p),
            jnp.asarray(x),
            jnp.asarray(y),
            apply_fn=mlp,
            loss=loss,
            damping=lam,
            solver=solver,
            cg_tol=1e-15,
            cg_maxiter=500,
        )
        assert all(v.dtype == jnp.float64 for v in jax.tree.leaves(u))
    # Algebraically identical (push-through identity); cond(H + λI) ≈ 1e2 here, so float64
    # rounding leaves ~1e-14. CG at tol 1e-15 on a 24-dim SPD system converges as far.
    assert _tree_rel_err(u, dense) < 1e-10


def test_callable_loss_matches_named_loss():
    # loss=callable uses autodiff r and Q; with ℓ = ½‖f − y‖² it must equal loss='mse'.
    rng = np.random.default_rng(1)
    p = jax.tree.map(jnp.asarray, _mlp_params(rng, 3, 5, 2, np.float32))
    x, y = (
        jnp.asarray(rng.standard_normal((7, 3)), jnp.float32),
        jnp.asarray(rng.standard_normal((7, 2)), jnp.float32),
    )
    u_named, _ = _direction(p, x, y, apply_fn=mlp, loss="mse", damping=0.1)
    u_call, _ = _direction(
        p,
        x,
        y,
        apply_fn=mlp,
        loss=lambda f, t: 0.5 * jnp.sum((f - t) ** 2),
        damping=0.1,
        solver="cholesky",
    )
    # float32, identical algebra with Q = I found by jax.hessian: ~1e-6 relative.
    assert _tree_rel_err(u_call, jax.tree.map(np.asarray, u_named)) < 1e-5


# ------------------------------------------------------------ least squares, λ -> 0
def _ls_problem(rng, b=12, din=3, c=2):
    x = rng.standard_normal((b, din))
    y = rng.standard_normal((b, c))
    w0 = {"w": rng.standard_normal((din, c)), "b": rng.standard_normal(c)}
    xa = np.concatenate([x, np.ones((b, 1))], axis=1)
    sol, *_ = np.linalg.lstsq(xa, y, rcond=None)
    return x, y, w0, {"w": sol[:-1], "b": sol[-1]}


@pytest.mark.parametrize("solver", ["cholesky", "lu", "cg"])
def test_one_step_solves_linear_least_squares_as_damping_vanishes(solver):
    rng = np.random.default_rng(2)
    x, y, w0, sol = _ls_problem(rng)
    errors = {}
    with jax.enable_x64(True):
        for lam in (1e-3, 1e-8):
            opt = egn(
                1.0,
                linear,
                damping=lam,
                adaptive_damping=False,
                solver=solver,
                cg_tol=1e-14,
                cg_maxiter=200,
            )
            p = jax.tree.map(jnp.asarray, w0)
            u, _ = _jit_update(opt)(p, opt.init(p), p, (jnp.asarray(x), jnp.asarray(y)))
            errors[lam] = _tree_rel_err(optax.apply_updates(p, u), sol)
    # The damped step from any start lands at θ_LS + O(λ) (measured 5.7·λ relative). Below
    # λ ≈ 1e-8 float64 rounding takes over (b·c = 24 > d = 8, so K = JJᵀ is singular and
    # bλ sets the conditioning): 2e-7 is 3× the measured 6e-8.
    assert errors[1e-8] < 2e-7
    assert errors[1e-3] > 1e4 * errors[1e-8]  # the error shrinks linearly with λ


def test_cg_matches_direct_solvers_float32():
    rng = np.random.default_rng(3)
    p = jax.tree.map(jnp.asarray, _mlp_params(rng, 8, 16, 5, np.float32))
    x = jnp.asarray(rng.standard_normal((20, 8)), jnp.float32)
    for loss, y in (
        ("mse", jnp.asarray(rng.standard_normal((20, 5)), jnp.float32)),
        ("cross_entropy", jnp.asarray(rng.integers(0, 5, 20))),
    ):
        ref, _ = _direction(p, x, y, apply_fn=mlp, loss=loss, damping=0.05, solver="lu")
        chol, _ = _direction(p, x, y, apply_fn=mlp, loss=loss, damping=0.05, solver="cholesky")
        cg, _ = _direction(
            p,
            x,
            y,
            apply_fn=mlp,
            loss=loss,
            damping=0.05,
            solver="cg",
            cg_tol=1e-7,
            cg_maxiter=1000,
        )
        ref = jax.tree.map(np.asarray, ref)
        # float32: cond(SKS + bλI) ≈ 1e3 here, so solves agree to ~1e-4 relative; CG at
        # tol 1e-7 adds less. A wrong Q, scale or transpose would be O(1).
        assert _tree_rel_err(chol, ref) < 1e-3
        assert _tree_rel_err(cg, ref) < 1e-3


# -------------------------------------------------------- adaptive damping, line search
def test_gain_ratio_is_one_on_a_quadratic_and_damping_decreases():
    rng = np.random.default_rng(4)
    x, y, w0, _ = _ls_problem(rng)
    with jax.enable_x64(True):
        tx = scale_by_egn(linear, damping=0.8, adaptive_damping=True, damping_decrease=0.5)
        p = jax.tree.map(jnp.asarray, w0)
        state = tx.init(p)
        lams = []
        update = _jit_update(tx)
        for _ in range(3):
            u, state = update(p, state, p, (jnp.asarray(x), jnp.asarray(y)))
            p = jax.tree.map(lambda a, v: a - v, p, u)
            lams.append(float(state.damping))
            # MSE on a linear model: the quadratic model is the loss, so ρ = 1 (float64).
            assert abs(float(state.rho) - 1.0) < 1e-8
    np.testing.assert_allclose(lams, [0.4, 0.2, 0.1], rtol=1e-12)


def test_damping_increases_after_a_poor_step():
    # ℓ(f) = |f − y|^{3/2}: at f − y = 1, r = 3/2 and Q = 3/4, so the Gauss–Newton step on
    # f = θ (λ ≈ 0) jumps to f − y = −1: actual decrease 0, predicted 3/2·2 − 3/8·4 = 1.5,
    # ρ = 0 < 1/4 -> λ ← 1.5 λ.
    def loss(f, t):
        return jnp.sum(jnp.abs(f - t) ** 1.5)

    def ident(p, x):
        return x * p["t"]

    p = {"t": jnp.ones((1,), jnp.float32)}
    tx = scale_by_egn(ident, loss=loss, damping=1e-6, adaptive_damping=True, damping_increase=1.5)
    x, y = jnp.ones((1, 1)), jnp.zeros((1, 1))
    _, state = _jit_update(tx)(p, tx.init(p), p, (x, y))
    assert abs(float(state.rho)) < 1e-4
    np.testing.assert_allclose(float(state.damping), 1.5e-6, rtol=1e-6)


def test_damping_is_left_alone_at_a_stationary_point():
    rng = np.random.default_rng(8)
    p = jax.tree.map(jnp.asarray, _mlp_params(rng, 3, 4, 2, np.float32))
    x = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)
    tx = scale_by_egn(mlp, damping=0.3, adaptive_damping=True)
    u, state = _jit_update(tx)(p, tx.init(p), p, (x, mlp(p, x)))  # zero residual: u = 0
    assert all(bool(jnp.all(v == 0)) for v in jax.tree.leaves(u))
    assert float(state.damping) == pytest.approx(0.3) and float(state.rho) == 1.0


def test_linesearch_backtracks_an_overshooting_step_to_the_minimizer():
    # δ = 1/2 and c₁ = 1e-4 (not the somax defaults 0.8 / 0.1). Learning rate 8 on least
    # squares (λ ≈ 0): t = 1, 1/2, 1/4 fail Armijo (step 8, 4, 2 × the exact Newton step;
    # 2× returns to the same loss); t = 1/8 is the exact step.
    rng = np.random.default_rng(5)
    x, y, w0, sol = _ls_problem(rng)
    with jax.enable_x64(True):
        opt = egn(
            8.0,
            linear,
            damping=1e-8,
            adaptive_damping=False,
            linesearch=True,
            linesearch_decrease=0.5,
            linesearch_c1=1e-4,
        )
        p = jax.tree.map(jnp.asarray, w0)
        u, state = _jit_update(opt)(p, opt.init(p), p, (jnp.asarray(x), jnp.asarray(y)))
        assert isinstance(state, EGNLineSearchState)
        assert float(state.step_size) == 0.125 and int(state.trials) == 4
        # λ = 1e-8 leaves 6e-8 relative (see the least-squares test above).
        assert _tree_rel_err(optax.apply_updates(p, u), sol) < 2e-7
        # Without the line search the same step overshoots: loss grows.
        plain = egn(8.0, linear, damping=1e-8, adaptive_damping=False)
        u2, _ = _jit_update(plain)(p, plain.init(p), p, (jnp.asarray(x), jnp.asarray(y)))
        objective = egn_loss(linear)
        batch = (jnp.asarray(x), jnp.asarray(y))
        assert objective(optax.apply_updates(p, u2), batch) > objective(p, batch)


def test_momentum_is_a_bias_corrected_ema_of_directions():
    rng = np.random.default_rng(6)
    p0 = jax.tree.map(jnp.asarray, _mlp_params(rng, 3, 4, 2, np.float32))
    batches = [
        (
            jnp.asarray(rng.standard_normal((5, 3)), jnp.float32),
            jnp.asarray(rng.standard_normal((5, 2)), jnp.float32),
        )
        for _ in range(2)
    ]
    beta = 0.7
    tx = scale_by_egn(mlp, damping=0.2, adaptive_damping=False, momentum=beta)
    state = tx.init(p0)
    update = _jit_update(tx)
    o1, state = update(p0, state, p0, batches[0])
    p1 = jax.tree.map(lambda a, v: a - v, p0, o1)
    o2, state = update(p1, state, p1, batches[1])
    u1, _ = _direction(p0, *batches[0], apply_fn=mlp, damping=0.2)
    u2, _ = _direction(p1, *batches[1], apply_fn=mlp, damping=0.2)
    u1, u2 = jax.tree.map(np.asarray, u1), jax.tree.map(np.asarray, u2)
    expect2 = {k: (beta * (1 - beta) * u1[k] + (1 - beta) * u2[k]) / (1 - beta**2) for k in u1}
    # float32 arithmetic on O(1) numbers: 1e-5 relative.
    assert _tree_rel_err(o1, u1) < 1e-5  # debiased first step = the plain direction
    assert _tree_rel_err(o2, expect2) < 1e-5


# --------------------------------------------------------------- optax compatibility
def _setup(dtype=jnp.float32):
    rng = np.random.default_rng(7)
    p = jax.tree.map(lambda a: jnp.asarray(a, dtype), _mlp_params(rng, 4, 6, 3, np.float32))
    batches = [
        (jnp.asarray(rng.standard_normal((8, 4)), jnp.float32), jnp.asarray(rng.integers(0, 3, 8)))
        for _ in range(3)
    ]
    return p, batches


def _kw(**extra):
    return {
        "learning_rate": 0.5,
        "apply_fn": mlp,
        "loss": "cross_entropy",
        "damping": 0.1,
        "momentum": 0.5,
        **extra,
    }


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"linesearch": True, "adaptive_damping": True},
        {"solver": "cg", "adaptive_damping": True},
    ],
)
def test_jit_without_retrace_and_finite(extra):
    opt = egn(**_kw(**extra))
    p, batches = _setup()
    traces = []

    @jax.jit
    def step(p, s, batch):
        traces.append(1)
        u, s = opt.update(p, s, p, batch=batch, unrelated_extra=jnp.zeros(()))
        return optax.apply_updates(p, u), s

    s = opt.init(p)
    for batch in batches:
        p, s = step(p, s, batch)
    assert len(traces) == 1
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves((p, s)))


def test_inject_hyperparams_and_schedule_match_plain():
    p, batches = _setup()
    plain = egn(**_kw())
    # Non-float hyperparameters are static (the integer ones fix shapes and loop bounds).
    static = ("apply_fn", "max_jacobian_size", "linesearch_steps", "cg_maxiter")
    injected = optax.inject_hyperparams(egn, static_args=static)(**_kw())
    sched = egn(**_kw(learning_rate=optax.constant_schedule(0.5)))
    outs = []
    for opt in (plain, injected, sched):
        q, s = p, opt.init(p)
        update = _jit_update(opt)
        for batch in batches:
            u, s = update(q, s, q, batch)
            q = optax.apply_updates(q, u)
        outs.append(q)
    # Injected hyperparameters are float32 arrays instead of Python floats: a few ulps.
    for other in outs[1:]:
        assert _tree_rel_err(other, jax.tree.map(np.asarray, outs[0])) < 1e-5
    assert "damping" in injected.init(p).hyperparams
    forgot = optax.inject_hyperparams(egn, static_args=("apply_fn",))(**_kw())
    with pytest.raises(TypeError, match="static_args"):
        _jit_update(forgot)(p, forgot.init(p), p, batches[0])


def test_dtype_preserved_bfloat16():
    p, batches = _setup(jnp.bfloat16)
    opt = egn(**_kw())
    s = opt.init(p)
    update = _jit_update(opt)
    for batch in batches[:2]:
        u, s = update(p, s, p, batch)
        p = optax.apply_updates(p, u)
    for v, q in zip(jax.tree.leaves(u), jax.tree.leaves(p), strict=True):
        assert v.dtype == jnp.bfloat16 == q.dtype
        assert bool(jnp.all(jnp.isfinite(v)))
    assert s[0].damping.dtype == jnp.float32  # the solve runs in float32


def test_multisteps_cond_and_scan_state_stable():
    p, batches = _setup()
    opt = egn(**_kw(linesearch=True))
    ms = optax.MultiSteps(opt, every_k_schedule=3)
    s = ms.init(p)
    ms_update = jax.jit(lambda s, batch: ms.update(p, s, p, batch=batch))
    for t, batch in enumerate(batches):
        u, s = ms_update(s, batch)
        zero = all(bool(jnp.all(v == 0)) for v in jax.tree.leaves(u))
        assert zero == (t < 2)
    state0 = opt.init(p)
    out = jax.jit(
        lambda s0: jax.lax.cond(
            jnp.array(True), lambda st: opt.update(p, st, p, batch=batches[0])[1], lambda st: st, s0
        )
    )(state0)
    spec = jax.tree.map(lambda a: (jnp.shape(a), jnp.result_type(a)), state0)
    assert jax.tree.map(lambda a: (jnp.shape(a), jnp.result_type(a)), out) == spec
    xs = jnp.stack([b[0] for b in batches])
    ys = jnp.stack([b[1] for b in batches])

    def body(carry, batch):
        q, st = carry
        u, st = opt.update(q, st, q, batch=batch)
        return (optax.apply_updates(q, u), st), st.inner[0].loss

    (_, _), losses = jax.jit(lambda c, b: jax.lax.scan(body, c, b))((p, state0), (xs, ys))
    assert bool(jnp.all(jnp.isfinite(losses)))


def test_composes_in_chain_with_other_extra_args_transforms():
    def scale_by_factor():
        def update(updates, state, params=None, *, factor, **extra):
            del params, extra
            return jax.tree.map(lambda u: factor * u, updates), state

        return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)

    p, batches = _setup()
    chained = optax.chain(egn(**_kw()), scale_by_factor())
    alone = egn(**_kw())
    u1, _ = _jit_update(chained, factor=3.0)(p, chained.init(p), p, batches[0])
    u2, _ = _jit_update(alone)(p, alone.init(p), p, batches[0])
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2), strict=True):
        np.testing.assert_allclose(a, 3.0 * b, rtol=1e-6)
    assert isinstance(alone.init(p)[0], ScaleByEGNState)


# ----------------------------------------------------------------------- bad input
def test_missing_batch_is_a_clear_error():
    p, _ = _setup()
    opt = egn(**_kw())
    with pytest.raises(ValueError, match=r"batch=\(inputs, targets\)"):
        opt.update(p, opt.init(p), p)
    with pytest.raises(ValueError, match="pair"):
        opt.update(p, opt.init(p), p, batch=(1, 2, 3))
    with pytest.raises(ValueError, match="params"):
        opt.update(p, opt.init(p), None, batch=(1, 2))


def test_outputs_not_b_by_c_are_rejected():
    p, batches = _setup()
    for bad in (lambda q, x: mlp(q, x)[:, 0], lambda q, x: mlp(q, x)[:, :, None]):
        opt = egn(**_kw(apply_fn=bad))
        with pytest.raises(ValueError, match=r"shape \[b, c\]"):
            opt.update(p, opt.init(p), p, batch=batches[0])
    opt = egn(**_kw(loss="mse"))
    with pytest.raises(ValueError, match=r"targets of shape \[b, c\]"):
        opt.update(p, opt.init(p), p, batch=batches[0])  # integer labels for MSE
    opt = egn(**_kw())
    with pytest.raises(ValueError, match="integer labels"):
        opt.update(p, opt.init(p), p, batch=(batches[0][0], jnp.zeros((8, 5))))


def test_explicit_jacobian_too_large_points_to_cg():
    p, batches = _setup()
    # b·c·d = 8·3·51 = 1224 numbers; the cap is below it for the explicit solvers only.
    for solver in ("cholesky", "lu"):
        opt = egn(**_kw(solver=solver, max_jacobian_size=1000))
        with pytest.raises(ValueError, match="solver='cg'"):
            opt.update(p, opt.init(p), p, batch=batches[0])
    opt = egn(**_kw(solver="cg", max_jacobian_size=1000))
    u, _ = _jit_update(opt)(p, opt.init(p), p, batches[0])
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(u))


def test_bad_arguments_and_integer_params():
    with pytest.raises(ValueError, match="solver"):
        egn(1.0, mlp, solver="qr")
    with pytest.raises(ValueError, match="loss"):
        egn(1.0, mlp, loss="hinge")
    with pytest.raises(ValueError, match="momentum"):
        egn(1.0, mlp, momentum=1.0)
    opt = egn(1.0, linear)
    with pytest.raises(TypeError, match="'w'"):
        opt.init({"w": jnp.zeros((2, 2), jnp.int32), "b": jnp.zeros(2)})


# ------------------------------------------------------------ demo code path, convergence
def test_demo_code_path_on_synthetic_classification(tmp_path):
    task = egn_demo.blobs_task(0, n=240, dim=6, classes=3)
    summary = egn_demo.run_task(task, epochs=3, grids={"egn": [0.1], "sgd": [0.1]}, batch_size=40)
    first = summary["runs"]["egn"]["best"]["curve"][0]["test_loss"]
    egn_row, sgd_row = summary["table"]["egn"], summary["table"]["sgd"]
    # 3 classes of well-separated blobs: 12 EGN steps take the test loss from ~1.1 to well
    # under a quarter of it and beat momentum SGD at the same epochs (measured: ~0.05 vs ~0.3).
    assert egn_row["test_loss"] < 0.25 * first
    assert egn_row["test_loss"] < sgd_row["test_loss"]
    assert egn_row["test_acc"] >= 0.9
    egn_demo.plot_task(summary, str(tmp_path / "blobs.png"))
    assert (tmp_path / "blobs.png").stat().st_size > 0


# ------------------------------------------- parity: somax's EGN (paper-era release)
# Reference: cor3bit/somax at commit 7c107c5a94ce4447c08bc596e9c89ed5c95bb82b (2024-09-23, the
# last release before v1.0), file src/somax/gn/egn.py, class EGN. Ported below in numpy from
# reading it: the direction Jᵀ(bλI + QJJᵀ)⁻¹(y − f) (descent sign, targets minus
# predictions; Q = I for MSE), the bias-corrected EMA of directions, and its stochastic
# Armijo line search: t starts at min(increase·t_prev, lr_max) (reset_option='increase'),
# then while  f(θ) − f(θ + t d) + eps < −(1 − aggressiveness)·t·∇fᵀd  (at most maxls times)
# t ← decrease·t; θ ← θ + t d. Constants: aggressiveness 0.9, decrease 0.8, increase 1.5,
# maxls 15. The reference has no weight decay, so none is used here. Its MSE is
# ½·mean((y − f)²) for a single output (c = 1), equal to optzoo's egn_loss for c = 1.
def _ref_loss(theta, unravel, x, y, loss):
    f = _numpy_mlp(unravel(theta), x)
    if loss == "mse":
        return 0.5 * np.mean((y - f) ** 2)
    z = f - f.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -np.mean(np.sum(np.eye(f.shape[1])[y] * logp, axis=1))


def _numpy_mlp(p, x):
    return np.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _somax_reference_run(
    p0, batches, loss, lam, lr, beta, *, maxls=15, decrease=0.8, increase=1.5, aggressiveness=0.9
):
    keys = sorted(p0)
    shapes = {k: p0[k].shape for k in keys}
    theta = np.concatenate([p0[k].ravel() for k in keys])

    def unravel(v):
        out, i = {}, 0
        for k in keys:
            n = int(np.prod(shapes[k]))
            out[k] = v[i : i + n].reshape(shapes[k])
            i += n
        return out

    velocity = np.zeros_like(theta)
    stepsize = lr  # the state's initial step size is the learning rate
    coef = 1.0 - aggressiveness
    history = []
    for k, (x, y) in enumerate(batches):
        p = unravel(theta)
        jac = _numpy_mlp_jacobian(p, x)
        b, c = x.shape[0], p["w2"].shape[1]
        jmat = np.concatenate([jac[key].reshape(b * c, -1) for key in keys], axis=1)
        f = _numpy_mlp(p, x)
        if loss == "mse":
            res = (y - f).reshape(-1)
            system = b * lam * np.eye(b * c) + jmat @ jmat.T
        else:
            e = np.exp(f - f.max(axis=1, keepdims=True))
            prob = e / e.sum(axis=1, keepdims=True)
            res = (np.eye(c)[y] - prob).reshape(-1)
            q = np.zeros((b * c, b * c))
            for i in range(b):
                blk = slice(i * c, (i + 1) * c)
                q[blk, blk] = np.diag(prob[i]) - np.outer(prob[i], prob[i])
            system = b * lam * np.eye(b * c) + q @ jmat @ jmat.T
        direction = jmat.T @ np.linalg.solve(system, res)
        grad = -jmat.T @ res / b
        if beta > 0:
            velocity = beta * velocity + (1 - beta) * direction
            direction = velocity / (1 - beta ** (k + 1))
        t = min(stepsize * increase, lr)
        f_cur = _ref_loss(theta, unravel, x, y, loss)
        f_next = _ref_loss(theta + t * direction, unravel, x, y, loss)
        slope = grad @ direction
        for _ in range(maxls):
            if not (-t * coef * slope > f_cur - f_next + np.finfo(np.float64).eps):
                break
            t = decrease * t
            f_next = _ref_loss(theta + t * direction, unravel, x, y, loss)
        theta = theta + t * direction
        stepsize = t
        history.append(t)
    return unravel(theta), history


def _parity_problem(loss, steps=6):
    rng = np.random.default_rng(11)
    c = 1 if loss == "mse" else 3
    p0 = _mlp_params(rng, 3, 6, c)
    p0["w2"] *= 4.0  # large initial outputs: the full step overshoots, the search acts
    batches = []
    for _ in range(steps):
        x = rng.standard_normal((10, 3))
        y = np.sin(2 * x[:, :1]) if loss == "mse" else rng.integers(0, c, 10)
        batches.append((x, y))
    return p0, batches


def _optzoo_run(p0, batches, **kw):
    with jax.enable_x64(True):
        opt = egn(apply_fn=mlp, linesearch=True, adaptive_damping=False, **kw)
        p = jax.tree.map(jnp.asarray, p0)
        state = opt.init(p)
        update = _jit_update(opt)
        ts = []
        for x, y in batches:
            u, state = update(p, state, p, (jnp.asarray(x), jnp.asarray(y)))
            p = optax.apply_updates(p, u)
            ts.append(float(state.step_size))
        return jax.tree.map(np.asarray, p), ts


# cross-entropy (curvature Q ≠ I) by default; MSE with `bash run.sh slow`.
@pytest.mark.parametrize(
    "loss,lr", [pytest.param("mse", 1.0, marks=pytest.mark.slow), ("cross_entropy", 2.0)]
)
def test_linesearch_and_momentum_match_somax_reference(loss, lr):
    """optzoo's egn(linesearch=True) equals a numpy port of somax's EGN over 6 steps.

    Before the alignment optzoo restarted every search at t = 1 with δ = 1/2, c₁ = 1e-4
    (and at most 9 halvings); with those settings this run ends 0.36 (MSE) / 1.39 (CE)
    relative away from the reference (the negative control below), against 3e-9 / 1.6e-7
    now.
    """
    p0, batches = _parity_problem(loss)
    lam, beta = 0.05, 0.6
    ref, ref_t = _somax_reference_run(p0, batches, loss, lam, lr, beta)
    ours, our_t = _optzoo_run(p0, batches, learning_rate=lr, loss=loss, damping=lam, momentum=beta)
    # The search must act and carry over for the comparison to mean anything: some step
    # backtracks (t < 1) and a later one grows by the reset factor 1.5.
    assert min(ref_t) < 0.9 * lr
    assert any(b > a * 1.2 for a, b in zip(ref_t, ref_t[1:], strict=False))
    ref_t = [t / lr for t in ref_t]  # optzoo's factor multiplies the learning rate
    # Same accepted step sizes. optzoo stores the accepted factor in float32 (the state's
    # dtype), so the next search starts from a value rounded to ~6e-8 relative; a flipped
    # Armijo decision would differ by 20 %.
    np.testing.assert_allclose(our_t, ref_t, rtol=1e-6)
    # float64 solves otherwise; the float32 rounding of t above (measured 7e-8 on t) bounds
    # the parameter difference: 1e-6.
    assert _tree_rel_err(ours, ref) < 1e-6
    # negative control: optzoo's previous line search (restart at 1, δ 1/2, c₁ 1e-4)
    old, _ = _optzoo_run(
        p0,
        batches,
        learning_rate=lr,
        loss=loss,
        damping=lam,
        momentum=beta,
        linesearch_decrease=0.5,
        linesearch_c1=1e-4,
        linesearch_increase=1e6,
    )
    assert _tree_rel_err(old, ref) > 1e-3


@pytest.mark.slow  # ~4 s of x64 compiles; the chain is fixed by construction
def test_weight_decay_and_learning_rate_match_somax_v1_chain():
    """Without line search optzoo's egn is somax v1.0's EGN-MSE (``egn_mse``) chain.

    Reference: cor3bit/somax HEAD 4ea5c0e (v1.0), ``methods/egn.py`` + ``optax.py``
    (``build_optax_tx``) + ``solvers/row_common.py``: the row-space system
    ``(JJᵀ + bλI) u = rhs`` with mean reduction (μ = bλ), direction ``s = Jᵀu`` solving
    ``(JᵀJ/b + λI) s = g``, then ``add_decayed_weights(κ)`` and ``scale_by_learning_rate(η)``:
    ``θ ← θ − η (s + κθ)``. No momentum here: v1.0's ``direction_momentum`` is
    ``optax.trace`` (heavy ball), which optzoo does not offer (its momentum is the
    paper-era bias-corrected EMA, tested above).
    """
    p0, batches = _parity_problem("mse", steps=4)
    lr, lam, kappa = 0.5, 0.05, 0.1
    keys = sorted(p0)
    theta = {k: v.copy() for k, v in p0.items()}
    for x, y in batches:
        jac = _numpy_mlp_jacobian(theta, x)
        b = x.shape[0]
        jmat = np.concatenate([jac[k].reshape(b, -1) for k in keys], axis=1)
        rhs = (_numpy_mlp(theta, x) - y).reshape(-1)
        s = jmat.T @ np.linalg.solve(jmat @ jmat.T + b * lam * np.eye(b), rhs)
        start = 0
        for k in keys:
            n = theta[k].size
            step = s[start : start + n].reshape(theta[k].shape)
            theta[k] = theta[k] - lr * (step + kappa * theta[k])
            start += n
    with jax.enable_x64(True):
        opt = egn(lr, mlp, damping=lam, weight_decay=kappa)
        p = jax.tree.map(jnp.asarray, p0)
        state, update = opt.init(p), _jit_update(opt)
        for x, y in batches:
            u, state = update(p, state, p, (jnp.asarray(x), jnp.asarray(y)))
            p = optax.apply_updates(p, u)
    # float64, the same algebra (Cholesky vs numpy's LU on one SPD system): measured 1.5e-15.
    assert _tree_rel_err(p, theta) < 1e-10
    # negative control: without the decay the run ends measurably elsewhere
    with jax.enable_x64(True):
        plain = egn(lr, mlp, damping=lam)
        q = jax.tree.map(jnp.asarray, p0)
        pstate, pupdate = plain.init(q), _jit_update(plain)
        for x, y in batches:
            u, pstate = pupdate(q, pstate, q, (jnp.asarray(x), jnp.asarray(y)))
            q = optax.apply_updates(q, u)
    assert _tree_rel_err(q, theta) > 1e-3  # measured 0.24


def test_linesearch_steps_bounds_the_reductions_exactly():
    """``linesearch_steps=k`` allows exactly k reductions when no trial passes.

    Old code counted the first trial as a reduction: k = 3 gave t = 1/4 with 3 trials
    (two reductions) instead of t = 1/8 with 4.
    """
    rng = np.random.default_rng(5)
    x, y, w0, _ = _ls_problem(rng)
    with jax.enable_x64(True):
        opt = egn(
            1e4, linear, damping=1e-8, linesearch=True, linesearch_steps=3, linesearch_decrease=0.5
        )
        p = jax.tree.map(jnp.asarray, w0)
        _, state = _jit_update(opt)(p, opt.init(p), p, (jnp.asarray(x), jnp.asarray(y)))
        assert float(state.step_size) == 0.125 and int(state.trials) == 4
        opt0 = egn(1e4, linear, damping=1e-8, linesearch=True, linesearch_steps=0)
        _, state = _jit_update(opt0)(p, opt0.init(p), p, (jnp.asarray(x), jnp.asarray(y)))
        assert float(state.step_size) == 1.0 and int(state.trials) == 1


# ------------------------------------------------- construction-time checks, bad input
@pytest.mark.parametrize(
    "kw,exc",
    [
        ({"damping": 0.0}, ValueError),
        ({"damping": -0.1}, ValueError),
        ({"damping": float("nan")}, ValueError),
        ({"damping": None}, TypeError),
        ({"momentum": -0.1}, ValueError),
        ({"momentum": "0.9"}, TypeError),
        ({"damping_decrease": 0.0}, ValueError),
        ({"damping_decrease": 1.5}, ValueError),
        ({"damping_increase": 0.5}, ValueError),
        ({"damping_min": 0.0}, ValueError),
        ({"damping_max": -1.0}, ValueError),
        ({"cg_tol": 1.0}, ValueError),
        ({"cg_tol": -1.0}, ValueError),
        ({"cg_tol": 1.5}, ValueError),
        ({"cg_maxiter": 0}, ValueError),
        ({"cg_maxiter": 2.5}, TypeError),
        ({"max_jacobian_size": 0}, ValueError),
        ({"mu_dtype": jnp.int32}, TypeError),
        ({"adaptive_damping": "yes"}, ValueError),
        ({"linesearch": 1}, ValueError),
        ({"weight_decay": -1e-4}, ValueError),
        ({"linesearch_steps": -1}, ValueError),
        ({"linesearch_steps": 2.0}, TypeError),
        ({"linesearch_decrease": 1.0}, ValueError),
        ({"linesearch_increase": 0.9}, ValueError),
        ({"linesearch_c1": 0.0}, ValueError),
        ({"linesearch_c1": 1.0}, ValueError),
        ({"learning_rate": None}, TypeError),
        ({"learning_rate": -1.0}, ValueError),
        ({"apply_fn": None}, TypeError),
    ],
)
def test_every_hyperparameter_is_checked_at_construction(kw, exc):
    """Each bad value is refused by ``egn(...)`` with a message naming the argument."""
    name = next(iter(kw))
    args = {"learning_rate": 1.0, "apply_fn": mlp, **kw}
    with pytest.raises(exc, match=name):
        egn(**args)
    scale_only = {
        k: v
        for k, v in kw.items()
        if not k.startswith(("linesearch", "learning_rate", "weight_decay"))
    }
    if scale_only:
        with pytest.raises(exc, match=name):
            scale_by_egn(**{"apply_fn": mlp, **scale_only})


def test_damping_min_above_damping_max_is_refused():
    with pytest.raises(ValueError, match="damping_min"):
        egn(1.0, mlp, damping_min=1.0, damping_max=0.5)


def test_cg_settings_that_stop_before_iterating_are_refused():
    """``cg_tol`` with |tol| >= 1 or ``cg_maxiter=0`` made CG return u = 0 (no step).

    Repro on the old code: ``scale_by_egn(mlp, solver='cg', cg_tol=1.0)`` (also -1.0, 1.5 and
    ``cg_maxiter=0``) gave an all-zero direction where ``cg_tol=1e-6`` gives ‖u‖ ≈ 1.
    """
    rng = np.random.default_rng(3)
    p = jax.tree.map(jnp.asarray, _mlp_params(rng, 4, 5, 2, np.float32))
    x = jnp.asarray(rng.standard_normal((6, 4)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((6, 2)), jnp.float32)
    for bad in ({"cg_tol": 1.0}, {"cg_tol": -1.0}, {"cg_tol": 1.5}, {"cg_maxiter": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            scale_by_egn(mlp, solver="cg", **bad)
    # the accepted edge: cg_tol just below 1 still iterates (non-zero direction)
    u, _ = _direction(p, x, y, apply_fn=mlp, solver="cg", cg_tol=0.5, cg_maxiter=1)
    assert sum(float(jnp.sum(v * v)) for v in jax.tree.leaves(u)) > 0


def _labels_setup():
    rng = np.random.default_rng(7)
    p = jax.tree.map(jnp.asarray, _mlp_params(rng, 4, 6, 3, np.float32))
    x = jnp.asarray(rng.standard_normal((8, 4)), jnp.float32)
    return p, x


def test_out_of_range_labels_are_a_clear_error_eager_and_jitted():
    """Integer labels outside [0, c) raise instead of silently dropping the sample.

    Old code: one_hot(3, 3) = 0, so the sample had zero loss, zero residual and zero
    curvature; ``egn(...).update(..., batch=(x, [.., 3, ..]))`` returned a finite step
    fitted to the 7 other samples, and egn_loss divided their loss by 8.
    """
    p, x = _labels_setup()
    opt = egn(1.0, mlp, loss="cross_entropy")
    for bad_label in (3, -1):
        y = jnp.asarray([0, 1, 2, 0, 1, 2, 0, bad_label])
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            opt.update(p, opt.init(p), p, batch=(x, y))
        with pytest.raises(ValueError, match="labels"):
            egn_loss(mlp, "cross_entropy")(p, (x, y))
    # traced labels: the jitted call fails with the same message instead of returning
    step = _jit_update(opt)
    with pytest.raises(Exception, match=r"labels must lie in \[0, 3\)"):
        jax.block_until_ready(step(p, opt.init(p), p, (x, y)))
    # negative control: in-range labels go through the same jitted function
    ok = jnp.asarray([0, 1, 2, 0, 1, 2, 0, 1])
    u, _ = step(p, opt.init(p), p, (x, ok))
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(u))


# 'lu' (the old NaN) by default; the other two solvers with `bash run.sh slow`.
@pytest.mark.parametrize(
    "solver",
    [
        pytest.param("cholesky", marks=pytest.mark.slow),
        "lu",
        pytest.param("cg", marks=pytest.mark.slow),
    ],
)
def test_tiny_damping_on_duplicated_samples_stays_finite(solver):
    """Duplicated samples make K = JJᵀ singular; a tiny damping must not give NaN.

    Old code (float32, 16 samples = 8 duplicated pairs, 3 outputs): damping=0 was accepted
    and gave NaN with 'lu'; damping=1e-12 gave NaN with 'lu' and a 9e4-sized step with 'cg';
    damping=1e-30 NaN with 'cg'. Now damping <= 0 is refused and the shift bλ is floored at
    n·eps·‖a‖ (relative to the solve dtype and the Gram matrix scale).
    """
    rng = np.random.default_rng(0)
    p = {
        "w1": jnp.asarray(rng.standard_normal((5, 8)), jnp.float32),
        "b1": jnp.zeros(8, jnp.float32),
        "w2": jnp.asarray(rng.standard_normal((8, 3)), jnp.float32),
        "b2": jnp.zeros(3, jnp.float32),
    }
    x = jnp.asarray(rng.standard_normal((8, 5)), jnp.float32)
    x = jnp.concatenate([x, x])
    y = jnp.asarray(rng.standard_normal((16, 3)), jnp.float32)
    with pytest.raises(ValueError, match="damping"):
        scale_by_egn(mlp, damping=0.0, solver=solver)
    ref, _ = _direction(p, x, y, apply_fn=mlp, damping=1e-4, solver=solver, cg_maxiter=500)
    u, _ = _direction(p, x, y, apply_fn=mlp, damping=1e-30, solver=solver, cg_maxiter=500)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(u))
    # the floor acts like a damping of order n·eps·‖K‖/b here: the direction is the λ → 0
    # limit, within 10 % of the λ = 1e-4 one (a blown-up solve is 1e4× off)
    assert _tree_rel_err(u, jax.tree.map(np.asarray, ref)) < 0.1


# ------------------------------------------------- guard on the batch, donated state
def _guard_run(tx, p, batches, grads_from_batch):
    state = tx.init(p)
    step = jax.jit(lambda g, s, q, batch: tx.update(g, s, q, batch=batch))
    objective = egn_loss(mlp, "mse")
    for batch in batches:
        g = jax.grad(objective)(p, batch) if grads_from_batch else p
        u, state = step(g, state, p, batch)
        p = optax.apply_updates(p, u)
    return p, state


# The two cases the old guard got wrong (skip with NaN-free "gradients", zero with any).
@pytest.mark.parametrize(
    "mode,grads_from_batch", [pytest.param("skip", False, marks=pytest.mark.slow), ("zero", True)]
)
def test_guarded_egn_ignores_a_nan_batch(mode, grads_from_batch):
    """``skip_nonfinite(egn, mode)`` on a NaN batch leaves EGN's state finite and equal to a
    run without that batch (bitwise: the same ops on the same values).

    Old code: the guard looked at the gradients only and ``mode='zero'`` re-ran EGN on the
    same NaN batch: params and ``mu`` all NaN after step 2 (and with ``p`` passed as the
    "gradient", as in EGN's docstring example, even ``mode='skip'`` let it through).
    """
    from optzoo import guard

    rng = np.random.default_rng(9)
    p = jax.tree.map(jnp.asarray, _mlp_params(rng, 3, 4, 2, np.float32))
    batches = [
        (
            jnp.asarray(rng.standard_normal((6, 3)), jnp.float32),
            jnp.asarray(rng.standard_normal((6, 2)), jnp.float32),
        )
        for _ in range(4)
    ]
    bad = (batches[2][0].at[1, 1].set(jnp.nan), batches[2][1])
    opt = egn(0.5, mlp, damping=0.1, momentum=0.5)
    tx = guard.skip_nonfinite(opt, mode=mode)
    got, state = _guard_run(tx, p, batches[:2] + [bad] + batches[3:], grads_from_batch)
    ref, ref_state = _guard_run(
        guard.skip_nonfinite(opt), p, batches[:2] + batches[3:], grads_from_batch
    )
    assert int(state.skipped) == 1
    for a, b in zip(
        jax.tree.leaves((got, state.inner_state)),
        jax.tree.leaves((ref, ref_state.inner_state)),
        strict=True,
    ):
        assert bool(jnp.all(jnp.isfinite(a)))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # negative controls: the batch does poison EGN when it gets in — EGN on zero
    # "gradients" and the bad batch (what the old mode='zero' ran), and a gradients-only
    # guard when the passed updates are finite
    zeros = jax.tree.map(jnp.zeros_like, p)
    u, s = jax.jit(lambda s: opt.update(zeros, s, p, batch=bad))(opt.init(p))
    assert not all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves((u, s)))
    if not grads_from_batch:
        blind = guard.skip_nonfinite(opt, mode=mode, check_extra_args=False)
        poisoned, _ = _guard_run(blind, p, batches[:2] + [bad] + batches[3:], grads_from_batch)
        assert not all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(poisoned))


def test_eager_egn_state_has_no_shared_buffer_and_can_be_donated():
    """Old code: ``ScaleByEGNState.loss`` and ``.rho`` were one ``zeros([])`` buffer, and under
    ``optax.inject_hyperparams`` the inner ``damping`` was the hyperparameter's own array
    (repro: the buffer pointers of ``init``'s leaves had duplicates)."""
    p, batches = _setup()
    plain = egn(**_kw(linesearch=True, adaptive_damping=True))
    injected = optax.inject_hyperparams(
        egn, static_args=("apply_fn", "max_jacobian_size", "linesearch_steps", "cg_maxiter")
    )(**_kw(linesearch=True, adaptive_damping=True))
    for opt in (plain, injected):
        pointers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(opt.init(p))]
        assert len(pointers) == len(set(pointers))
    # one donated run (the injected state contains the plain one's fields)
    state = injected.init(p)
    step = jax.jit(lambda s, q, batch: injected.update(q, s, q, batch=batch), donate_argnums=(0,))
    q = p
    for batch in batches[:2]:
        u, state = step(state, q, batch)
        q = optax.apply_updates(q, u)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves((q, state)))
