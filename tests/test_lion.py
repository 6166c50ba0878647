"""Tests of optzoo.lion: Lion equals optax.lion, the Lion-𝒦 constraint bounds, equivariance
(with negative controls), a numpy reference oracle, the optax battery, and input errors."""

from __future__ import annotations

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optzoo.layout import MatrixLayout

# optzoo.lion (the attribute) is the optimizer factory; the module is reached by name.
L = importlib.import_module("optzoo.lion")

EPS32 = float(np.finfo(np.float32).eps)


def _normal(seed: int, shape, scale: float = 1.0) -> jax.Array:
    # Test data comes from numpy: jax.random would compile a kernel per shape, and these
    # tests must stay fast on a loaded 2-core machine.
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _tree(seed: int, scale: float = 1.0):
    shapes = {"w": (4, 5), "b": (5,), "stack": (2, 3, 4), "s": ()}
    return {k: _normal(1000 * seed + i, shp, scale) for i, (k, shp) in enumerate(shapes.items())}


def _run(tx, params, grads):
    # Eagerly: for a handful of steps this is faster than compiling a jitted loop per test.
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _mu(state):
    """The momentum buffer of the first stage of a chain."""
    return state[0].mu


# ------------------------------------------------------------------ optax.lion oracle
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=0.03),
        dict(
            learning_rate=0.03,
            weight_decay=0.1,
            mask={"w": True, "b": False, "stack": True, "s": False},
        ),
        dict(
            learning_rate=optax.linear_schedule(0.05, 0.01, 4),
            b1=0.8,
            b2=0.95,
            weight_decay=0.05,
            mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p),
        ),
        dict(learning_rate=0.01, mu_dtype=jnp.bfloat16, weight_decay=0.02),
    ],
    ids=["defaults", "wd-mask-tree", "schedule-mask-fn", "mu-bf16"],
)
def test_lion_matches_optax_step_for_step(kwargs):
    params = _tree(0)
    grads = [_tree(10 + t) for t in range(6)]
    ours, theirs = L.lion(**kwargs), optax.lion(**kwargs)
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    p_ours = p_theirs = params
    for g in grads:
        u1, s_ours = ours.update(g, s_ours, p_ours)
        u2, s_theirs = theirs.update(g, s_theirs, p_theirs)
        p_ours, p_theirs = optax.apply_updates(p_ours, u1), optax.apply_updates(p_theirs, u2)
        # Same float operations in the same order: equal to the last bit, so rtol=0. A tolerance
        # of 1e-7 relative would also pass; exact equality is the stronger claim and holds.
        chex.assert_trees_all_close(u1, u2, rtol=0, atol=0)
        chex.assert_trees_all_close(p_ours, p_theirs, rtol=0, atol=0)
        chex.assert_trees_all_close(_mu(s_ours), s_theirs[0].mu, rtol=0, atol=0)
        chex.assert_trees_all_equal_dtypes(_mu(s_ours), s_theirs[0].mu)
    assert int(s_ours[0].count) == len(grads)


@pytest.mark.parametrize("kappa,mode", [("tanh", "smooth"), ("clip", "refined")])
def test_smooth_kappas_match_optax_lion_modes(kappa, mode):
    params = _tree(1)
    grads = [_tree(20 + t, scale=8.0) for t in range(5)]  # scale 8: both regimes of clip/tanh
    ours = optax.chain(L.scale_by_lion_kappa(kappa=kappa, beta=0.7), optax.scale(-0.1))
    theirs = optax.chain(optax.scale_by_lion(mode=mode, smooth_beta=0.7), optax.scale(-0.1))
    p1, _ = _run(ours, params, grads)
    p2, _ = _run(theirs, params, grads)
    # where(|x|<1, x, sign x) vs clip, and tanh(βx) identically: agreement to 1 ulp of |x|~10.
    chex.assert_trees_all_close(p1, p2, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ constraint bounds
ETA, LAM, STEPS = 0.02, 0.5, 2000  # ηλ = 0.01, radius 1/λ = 2; (1-ηλ)^2000 ≈ 2e-9


def _bound_tol(scale: float) -> float:
    # Each step x' = x - η(u + λx) rounds ~4 times, an error of at most ~4 eps|x|; the map
    # x -> (1-ηλ)x contracts past errors, so the accumulated error is <= 4 eps scale / (ηλ).
    # With |x| <= 50 this is ~2.4e-3 — tiny next to the radius 2 and the initial gap ~30.
    return 4 * EPS32 * scale / (ETA * LAM)


def _trajectory(tx, x0, grads=None, steps=STEPS):
    """Runs ``steps`` updates under lax.scan and returns x_t for t = 1..steps.

    ``grads=None`` is the adversarial stream g_t = -x_t (gradient ascent on ‖x‖²/2): it pushes
    every coordinate outward, which makes the box/ball bounds hold with equality."""

    def body(carry, g):
        x, s = carry
        if g is None:
            g = jax.tree.map(jnp.negative, x)
        u, s = tx.update(g, s, x)
        x = optax.apply_updates(x, u)
        return (x, s), x

    carry = (x0, tx.init(x0))
    if grads is None:
        _, traj = jax.lax.scan(lambda c, _: body(c, None), carry, None, length=steps)
    else:
        _, traj = jax.lax.scan(body, carry, grads)
    return traj


def _check_bound(norm_t, norm_0, *, exact: bool, scale: float, slack: float = 0.0):
    """norm_t: (T, ...) norms of x_t, t = 1..T; norm_0: norms of x_0 (same trailing shape).
    ``slack`` is added to the rounding tolerance (a direction whose norm is 1 + O(eps))."""
    t = np.arange(1, norm_t.shape[0] + 1).reshape((-1,) + (1,) * (norm_t.ndim - 1))
    envelope = (1 - ETA * LAM) ** t * (np.asarray(norm_0, np.float64) - 1 / LAM)
    gap = np.asarray(norm_t, np.float64) - 1 / LAM
    tol = _bound_tol(scale) + slack
    assert np.max(gap - envelope) <= tol, np.max(gap - envelope)
    if exact:
        np.testing.assert_allclose(gap, envelope, atol=tol, rtol=0)
    assert np.max(gap[-1]) <= tol  # after 2000 steps every norm is inside the ball


def _box_tx(kappa):
    return L.lion_kappa(ETA, kappa=kappa, weight_decay=LAM, beta=2.0)


@pytest.mark.parametrize("kappa", ["sign", "tanh", "clip"])
@pytest.mark.parametrize("stream", ["random", "adversarial"])
def test_box_bound_coordinatewise(kappa, stream):
    x0 = 10.0 * _normal(0, (64,))  # most |x0_i| > 1/λ = 2
    grads = None
    if stream == "random":
        grads = 5.0 * _normal(1, (STEPS, 64))
    traj = _trajectory(_box_tx(kappa), x0, grads)
    # Equality (the bound is tight) for sign under the outward stream: |u_i| = 1 always.
    _check_bound(
        jnp.abs(traj),
        jnp.abs(x0),
        exact=(kappa == "sign" and grads is None),
        scale=float(jnp.max(jnp.abs(x0))),
    )


@pytest.mark.parametrize("stream", ["random", "adversarial"])
def test_l2_ball_bound_per_leaf(stream):
    x0 = {"a": _normal(2, (8, 4), 10.0), "b": _normal(3, (5,), 0.1)}  # 'b' starts inside
    grads = None
    if stream == "random":
        grads = jax.tree.map(lambda x: _normal(4, (STEPS,) + x.shape, 5.0), x0)
    traj = _trajectory(_box_tx("l2"), x0, grads)
    for k in x0:
        axes = tuple(range(1, traj[k].ndim))
        _check_bound(
            jnp.sqrt(jnp.sum(traj[k] ** 2, axis=axes)),
            jnp.linalg.norm(x0[k]),
            exact=grads is None,
            scale=float(jnp.linalg.norm(x0[k])) + 2.0,
        )


@pytest.mark.parametrize("method", ["svd", None])
@pytest.mark.parametrize("stream", ["random", "adversarial"])
def test_spectral_ball_bound_per_matrix(stream, method):
    """‖X_t‖₂ − 1/λ ≤ (1 − ηλ)^t (‖X_0‖₂ − 1/λ) per matrix, exact SVD and the DEFAULT method.

    With the default (iterative) spectral_method the direction's σ_max is 1 + O(eps32) after
    the float32 contraction step: 1e-5 of slack. Before that step (HEAD 985adad) the default
    exceeded the envelope by 0.224 under g = −X (the ball was ~1.11/λ).
    """
    # A stacked leaf (2 matrices 6x4, leading batch axis) and a square one.
    x0 = {"stack": _normal(5, (2, 6, 4), 6.0), "w": _normal(6, (4, 4), 6.0)}
    grads = None
    if stream == "random":
        grads = jax.tree.map(lambda x: _normal(7, (STEPS,) + x.shape, 5.0), x0)
    # explicit layout: the default refuses leaves with more than two axes (stacks)
    kw = {} if method is None else {"spectral_method": method}
    tx = L.lion_kappa(ETA, kappa="spectral", weight_decay=LAM, layout=MatrixLayout(), **kw)
    traj = _trajectory(tx, x0, grads)
    for k in x0:
        s_t = jnp.linalg.norm(traj[k], ord=2, axis=(-2, -1))
        s_0 = jnp.linalg.norm(x0[k], ord=2, axis=(-2, -1))
        # Under g = -X every singular value obeys σ' = (1-ηλ)σ + η: the bound is an equality
        # for the exact polar factor.
        _check_bound(
            s_t,
            s_0,
            exact=grads is None and method == "svd",
            scale=float(jnp.max(s_0)) + 2.0,
            slack=0.0 if method == "svd" else 1e-5,
        )


def test_spectral_ball_negative_control_unbounded_polar():
    """Negative control: the same check catches a direction whose σ_max is 1.14 (the old
    default's measured maximum), i.e. the test above has power against the old behaviour."""
    x0 = {"w": _normal(6, (4, 4), 6.0)}
    # the direction (not the decay) inflated by 1.14: lion_kappa's chain with a scale inserted
    tx = optax.chain(
        L.scale_by_lion_kappa(kappa="spectral", spectral_method="svd"),
        optax.scale(1.14),
        optax.add_decayed_weights(LAM),
        optax.scale_by_learning_rate(ETA),
    )
    traj = _trajectory(tx, x0)
    s_t = np.asarray(jnp.linalg.norm(traj["w"], ord=2, axis=(-2, -1)), np.float64)
    assert float(s_t[-1]) > 1 / LAM + 0.2  # settles at 1.14/λ = 2.28


def test_bound_check_catches_an_unbounded_map():
    """Negative control: ∇𝒦(z) = 5z (momentum SGD, unbounded) escapes the box."""
    x0 = 10.0 * _normal(0, (64,))
    traj = _trajectory(L.lion_kappa(ETA, kappa=lambda z: 5.0 * z, weight_decay=LAM), x0, steps=200)
    with pytest.raises(AssertionError):
        _check_bound(jnp.abs(traj), jnp.abs(x0), exact=False, scale=30.0)


# ------------------------------------------------------------------------ equivariance
# Group actions are applied in numpy (float32 in, float32 out): exact for signed
# permutations, one fp32-rounded matmul for rotations.
def _signed_perm(x, rng):
    perm = rng.permutation(x.size)
    signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=x.size)
    return lambda y: jnp.asarray((signs * np.asarray(y).reshape(-1)[perm]).reshape(y.shape))


def _rotation(x, rng):
    q, _ = np.linalg.qr(rng.normal(size=(x.size, x.size)))
    q = q.astype(np.float32)
    return lambda y: jnp.asarray((q @ np.asarray(y).reshape(-1)).reshape(y.shape))


def _act_tree(tree, seed, make):
    rng = np.random.default_rng(seed)
    acts = {k: make(tree[k], rng) for k in sorted(tree)}
    return lambda t: {k: acts[k](v) for k, v in t.items()}


def _equivariance_error(tx, act, steps=5):
    """max |g·x_T - x_T(g·x_0, g·G)| over a random run with weight decay on.

    Gradients have scale 20 so that z = b1 m + (1-b1) g leaves [-1, 1]: 'clip' and 'tanh'
    (β=4) then act nonlinearly (for |z| < 1 'clip' is the identity, which IS rotation
    equivariant, and the negative control would be vacuous)."""
    x0 = {"w": _normal(30, (6, 5)), "b": _normal(31, (7,))}
    grads = [jax.tree.map(lambda x, t=t: _normal(40 + t, x.shape, 20.0), x0) for t in range(steps)]
    xt, _ = _run(tx, x0, grads)
    xt_g, _ = _run(tx, act(x0), [act(g) for g in grads])
    return max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(act(xt)), jax.tree.leaves(xt_g), strict=True)
    )


def _eq_tx(kappa):
    return L.lion_kappa(0.1, kappa=kappa, weight_decay=0.3, beta=4.0)


@pytest.mark.parametrize("kappa", ["sign", "tanh", "clip", "l2"])
def test_signed_permutation_equivariance(kappa):
    x = {"w": jnp.zeros((6, 5)), "b": jnp.zeros((7,))}
    act = _act_tree(x, 3, _signed_perm)
    # Coordinatewise maps commute exactly with signed permutations; 'l2' sums in another
    # order (a few ulps of |x| ~ 1): 1e-6.
    assert _equivariance_error(_eq_tx(kappa), act) < 1e-6


@pytest.mark.parametrize("kappa", ["sign", "tanh", "clip"])
def test_coordinatewise_kappas_are_not_rotation_equivariant(kappa):
    """Negative control: a random rotation of each leaf breaks the identity by a wide margin."""
    x = {"w": jnp.zeros((6, 5)), "b": jnp.zeros((7,))}
    act = _act_tree(x, 4, _rotation)
    # Five steps of lr 0.1 move x by O(0.5); the rotated trajectory differs by 0.26-0.36
    # (measured), 10^5 times the equivariance tolerance above.
    assert _equivariance_error(_eq_tx(kappa), act) > 0.05


def test_l2_kappa_is_rotation_equivariant():
    """z/‖z‖₂ commutes with every orthogonal map of the flattened leaf (fp32 matmuls: 1e-5)."""
    x = {"w": jnp.zeros((6, 5)), "b": jnp.zeros((7,))}
    act = _act_tree(x, 4, _rotation)
    assert _equivariance_error(_eq_tx("l2"), act) < 1e-5


def _biorthogonal(x, rng):
    """X -> U X Vᵀ with independent orthogonal U, V for every matrix of a stack."""
    m, n = x.shape[-2:]
    batch = x.shape[:-2]
    u = np.linalg.qr(rng.normal(size=batch + (m, m)))[0].astype(np.float32)
    v = np.linalg.qr(rng.normal(size=batch + (n, n)))[0].astype(np.float32)
    return lambda y: jnp.asarray(u @ np.asarray(y) @ np.swapaxes(v, -1, -2))


def _spectral_equivariance_error(tx):
    x0 = {"w": _normal(50, (6, 4)), "stack": _normal(51, (3, 4, 5))}
    act = _act_tree(x0, 52, _biorthogonal)
    grads = [jax.tree.map(lambda x, t=t: _normal(60 + t, x.shape), x0) for t in range(5)]
    xt, _ = _run(tx, x0, grads)
    xt_g, _ = _run(tx, act(x0), [act(g) for g in grads])
    return max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(act(xt)), jax.tree.leaves(xt_g), strict=True)
    )


def test_spectral_biorthogonal_equivariance_with_negative_control():
    spectral = L.lion_kappa(
        0.1, kappa="spectral", weight_decay=0.3, spectral_method="svd", layout=MatrixLayout()
    )
    # fp32 SVD of a rotated matrix: polar factors agree to ~1e-6; five steps, |x| ~ 1: 1e-5.
    assert _spectral_equivariance_error(spectral) < 1e-5
    # Lion (sign) is not bi-orthogonally equivariant: errors are O(0.1).
    assert _spectral_equivariance_error(L.lion(0.1, weight_decay=0.3)) > 0.05


@pytest.mark.parametrize("kappa", ["sign", "l2", "spectral"])
def test_gradient_scale_invariance(kappa):
    """Positively rescaling the whole gradient stream leaves sign/l2/polar updates unchanged."""
    params = {"w": _normal(0, (5, 3))}
    grads = [{"w": _normal(t, (5, 3))} for t in range(4)]
    tx = L.lion_kappa(0.1, kappa=kappa, spectral_method="svd")
    p1, _ = _run(tx, params, grads)
    p2, _ = _run(tx, params, [jax.tree.map(lambda g: 37.0 * g, g) for g in grads])
    # sign is exact; normalizations by ‖z‖ / polar round differently for 37z: 1e-5.
    chex.assert_trees_all_close(p1, p2, atol=1e-5, rtol=0)


# --------------------------------------------------------------- numpy reference oracle
def _numpy_lion_kappa(kappa, x0, grads, lr, b1, b2, wd):
    """Independent float64 re-derivation of the recursion of docs/math/lion.md."""
    x, m = np.asarray(x0, np.float64), np.zeros(np.shape(x0))
    for g in grads:
        g = np.asarray(g, np.float64)
        z = b1 * m + (1 - b1) * g
        if kappa == "l2":
            u = z / np.linalg.norm(z)
        else:  # spectral: U Vᵀ of the thin SVD of each matrix of the stack
            a, _, bt = np.linalg.svd(z, full_matrices=False)
            u = a @ bt
        x = x - lr * (u + wd * x)
        m = b2 * m + (1 - b2) * g
    return x


@pytest.mark.parametrize("kappa", ["l2", "spectral"])
def test_matches_numpy_reference(kappa):
    x0 = _normal(70, (2, 5, 4))
    grads = [_normal(80 + t, (2, 5, 4)) for t in range(8)]
    tx = L.lion_kappa(
        0.05,
        kappa=kappa,
        b1=0.8,
        b2=0.95,
        weight_decay=0.2,
        spectral_method="svd",
        layout=MatrixLayout(),
    )
    ours, _ = _run(tx, x0, grads)
    ref = _numpy_lion_kappa(kappa, x0, grads, 0.05, 0.8, 0.95, 0.2)
    # fp32 vs fp64 over 8 steps of size 0.05 with |x| ~ 1: rounding ~1e-7 per step.
    np.testing.assert_allclose(np.asarray(ours), ref, atol=2e-6, rtol=0)


def test_spectral_uses_the_layout():
    """A conv-like kernel (kh, kw, in, out) is orthogonalized as one (kh*kw*in, out) matrix."""
    lay = MatrixLayout(reduction_axes=(0, 1, 2), output_axes=(3,))
    g = _normal(0, (2, 2, 3, 4))
    tx = L.scale_by_lion_kappa(kappa="spectral", layout=lay, spectral_method="svd")
    u, _ = tx.update(g, tx.init(g))
    a, _, bt = np.linalg.svd(np.asarray(g, np.float64).reshape(12, 4), full_matrices=False)
    np.testing.assert_allclose(np.asarray(u).reshape(12, 4), a @ bt, atol=1e-5)


def test_spectral_vector_fallback():
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones((3,))}
    g = {"w": _normal(0, (4, 3)), "b": jnp.array([2.0, -1.0, 0.0])}
    tx = L.scale_by_lion_kappa(kappa="spectral", vector_kappa="sign", spectral_method="svd")
    u, _ = tx.update(g, tx.init(params))
    np.testing.assert_array_equal(u["b"], jnp.array([1.0, -1.0, 0.0]))
    # polar factor of a 4x3 matrix of full column rank has orthonormal columns
    np.testing.assert_allclose(u["w"].T @ u["w"], np.eye(3), atol=1e-5)


# ----------------------------------------------------------------------- optax battery


def test_state_count_and_mu_dtype():
    params = {"w": jnp.ones((3, 2), jnp.bfloat16)}
    tx = L.scale_by_lion_kappa(mu_dtype=jnp.float32)
    state = tx.init(params)
    assert isinstance(state, L.ScaleByLionKappaState)
    u, state = tx.update(params, state)
    assert state.mu["w"].dtype == jnp.float32 and int(state.count) == 1
    assert u["w"].dtype == jnp.bfloat16  # updates keep the gradients' dtype


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    kappa=st.sampled_from(["sign", "tanh", "clip", "l2", "spectral"]),
    shape=st.sampled_from([(3,), (4, 2), (2, 3, 5), (1, 1)]),
    log_scale=st.floats(-20, 20),
)
def test_finite_in_finite_out(kappa, shape, log_scale):
    g = jnp.exp2(log_scale) * _normal(0, shape)
    tx = L.lion_kappa(
        1e-2, kappa=kappa, spectral_method="svd", vector_kappa="clip", layout=MatrixLayout()
    )
    params = jnp.ones(shape)
    state = tx.init(params)
    for _ in range(2):
        u, state = tx.update(g, state, params)
        assert bool(jnp.all(jnp.isfinite(u)))
    # Every bounded map's direction has dual norm <= 1, so |u| <= lr (1 + wd |x|).
    assert float(jnp.max(jnp.abs(u))) <= 1e-2 * (1 + 1e-3) * (1 + 1e-6)


# ------------------------------------------------------------------------------ errors
def test_unknown_kappa_lists_valid_names():
    with pytest.raises(ValueError, match="sign.*tanh.*clip.*l2.*spectral"):
        L.lion_kappa(1e-3, kappa="signum")
    with pytest.raises(ValueError, match="vector_kappa"):
        L.lion_kappa(1e-3, kappa="spectral", vector_kappa="spectral")


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="b1"):
        L.lion(1e-3, b1=1.5)
    with pytest.raises(ValueError, match="b2"):
        L.lion_kappa(1e-3, b2=-0.1)
    with pytest.raises(ValueError, match="beta"):
        L.lion_kappa(1e-3, kappa="tanh", beta=0.0)


def test_integer_leaf_raises_type_error_naming_path():
    params = {"layer": {"kernel": jnp.ones((2, 2)), "steps": jnp.zeros((2,), jnp.int32)}}
    with pytest.raises(TypeError, match="layer/steps"):
        L.lion(1e-3).init(params)
    tx = L.scale_by_lion_kappa()
    state = tx.init({"a": jnp.ones(2)})
    with pytest.raises(TypeError, match="'a'"):
        tx.update({"a": jnp.ones(2, jnp.int32)}, state)


def test_spectral_vector_leaf_without_fallback_names_path():
    params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones((3,))}}
    tx = L.lion_kappa(1e-3, kappa="spectral", spectral_method="svd")
    with pytest.raises(ValueError, match="dense/bias.*vector_kappa"):
        tx.init(params)


def test_spectral_bad_layout_names_path():
    params = {"conv": jnp.ones((3, 4))}
    tx = L.lion_kappa(
        1e-3,
        kappa="spectral",
        spectral_method="svd",
        layout=MatrixLayout(reduction_axes=(0, 1, 2), output_axes=(3,)),
    )
    with pytest.raises(ValueError, match="conv"):
        tx.init(params)
