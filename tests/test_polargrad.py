"""Tests of optzoo.polargrad: the optax battery (both variants), a float64 numpy re-derivation
(SVD polar, nuclear norm) of both variants, bi-orthogonal equivariance with a negative
control, homogeneity of degree 1, per-slice ν on stacked leaves, convergence on a strongly
convex matrix problem, and input errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optzoo import testing
from optzoo.layout import MatrixLayout
from optzoo.polargrad import ScaleByPolarGradState
from optzoo.polargrad import polargrad as _polargrad
from optzoo.polargrad import scale_by_polargrad as _scale_by_polargrad

# The stacked leaves of these tests are read with an explicit layout (the default reads only
# 2-D leaves and refuses > 2-D ones: tests/test_default_layout.py).
STACKED = MatrixLayout()


def polargrad(*args, layout=STACKED, **kwargs):
    return _polargrad(*args, layout=layout, **kwargs)


def scale_by_polargrad(*args, layout=STACKED, **kwargs):
    return _scale_by_polargrad(*args, layout=layout, **kwargs)


def _normal(seed: int, shape, scale: float = 1.0) -> np.ndarray:
    # numpy, not jax.random: one compiled kernel per shape would dominate the runtime.
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _tree(shapes: dict, seed: int, scale: float = 1.0) -> dict:
    return {
        k: jnp.asarray(_normal(1000 * seed + i, s, scale))
        for i, (k, s) in enumerate(shapes.items())
    }


def _run(tx, params, grads, update=None):
    """Jitted updates (``update``: a jitted ``tx.update`` to reuse); returns (final params,
    list of updates, final state)."""
    state = tx.init(params)
    update = update or jax.jit(tx.update)
    ups = []
    for g in grads:
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
        ups.append(u)
    return params, ups, state


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _polar64(x: np.ndarray) -> np.ndarray:
    """U Vᵀ of the thin SVD, per matrix of a stack (inputs here have full rank)."""
    u, _, vt = np.linalg.svd(x, full_matrices=False)
    return u @ vt


def _nuclear64(x: np.ndarray) -> np.ndarray:
    """Σσᵢ per matrix slice, shaped to broadcast against the stack."""
    return np.linalg.svd(x, compute_uv=False).sum(-1)[..., None, None]


VARIANTS = ["momentum_first", "polar_first"]

# --------------------------------------------------------------------- optax battery
COMPAT_PARAMS = {
    "w": jnp.asarray(_normal(1, (4, 6))),
    "stack": jnp.asarray(_normal(2, (2, 3, 5))),
    "b": jnp.asarray(_normal(3, (6,))),
    "s": jnp.asarray(_normal(4, ())),
}


# ------------------------------------------------------------ float64 re-derivation
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "method,tol",
    [
        # float32 SVD / QDWH polar factors of well-conditioned 4..10-wide Gaussian matrices vs
        # float64 SVD: measured <= 7e-7 relative on the update over 4 steps; 1e-5 = 14x margin.
        ("svd", 1e-5),
        ("qdwh", 1e-5),
    ],
)
def test_matches_numpy_float64_rederivation(variant, method, tol):
    shapes = {"wide": (6, 10), "tall": (9, 4), "stack": (2, 4, 5)}
    params = _tree(shapes, 1, scale=0.1)
    grads = [_tree(shapes, 30 + t) for t in range(4)]
    lr, wd, beta = 0.01, 0.3, 0.9
    tx = polargrad(lr, beta, variant=variant, weight_decay=wd, ortho_method=method)
    _, ups, _ = _run(tx, params, grads)
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    mom = {k: np.zeros_like(v) for k, v in w.items()}
    for t, g in enumerate(grads):
        for k in shapes:
            gk = np.asarray(g[k], np.float64)
            if variant == "momentum_first":  # M ← βM + (1−β)G; Δ = ‖M‖_* polar(M)
                mom[k] = beta * mom[k] + (1 - beta) * gk
                step = _nuclear64(mom[k]) * _polar64(mom[k])
            else:  # M ← βM + (1−β) polar(G); Δ = ‖G‖_* M
                mom[k] = beta * mom[k] + (1 - beta) * _polar64(gk)
                step = _nuclear64(gk) * mom[k]
            delta = -lr * (step + wd * w[k])  # W ← (1 − ηλ)W − ηΔ
            w[k] = w[k] + delta
            assert _rel(ups[t][k], delta) < tol, (t, k)


def test_iterative_backend_approximates_nuclear_norm():
    # With Polar Express, ν = ⟨M, PE(M)⟩ = Σ σᵢ p(σᵢ) and PE's output singular values lie in
    # about [0.86, 1.14] for such inputs (the orthogonalizer benchmark): the step is within
    # ~15 % of exact.
    shapes = {"w": (16, 48)}
    params = _tree(shapes, 2)
    grads = [_tree(shapes, 50 + t) for t in range(2)]
    _, exact, _ = _run(scale_by_polargrad(ortho_method="svd"), params, grads)
    _, approx, _ = _run(scale_by_polargrad(ortho_method="polar_express"), params, grads)
    assert _rel(approx[-1]["w"], exact[-1]["w"]) < 0.15


# ------------------------------------------------------------------------ equivariance
EQ_SHAPES = {"w": (6, 10), "r": (3, 9), "stack": (2, 4, 6), "b": (6,)}


def _eq_problem():
    # Small parameters: the updates dominate the iterate, so the parameter error measures the
    # update's equivariance.
    params = _tree(EQ_SHAPES, 3, scale=0.05)
    grads = [_tree(EQ_SHAPES, 70 + t) for t in range(4)]
    action = testing.per_leaf(
        {
            "w": testing.bi_orthogonal(EQ_SHAPES["w"], 1),
            "r": testing.bi_orthogonal(EQ_SHAPES["r"], 2),
            "stack": testing.bi_orthogonal(EQ_SHAPES["stack"], 3),
            "b": None,
        }
    )
    return params, grads, action


@pytest.mark.parametrize("variant", VARIANTS)
def test_bi_orthogonal_equivariance_with_momentum_and_decay(variant):
    params, grads, action = _eq_problem()
    tx = polargrad(0.01, variant=variant, weight_decay=0.5, ortho_method="svd")
    # Exact SVD polar and an invariant ν: equal up to float32 rounding (measured 2e-7).
    testing.check_equivariance(tx, params, grads, action, rtol=1e-5)
    # Negative control: coordinatewise Adam on the same problem (measured 0.75).
    assert testing.equivariance_error(optax.adam(0.1), params, grads, action) > 0.1


@pytest.mark.parametrize("variant", VARIANTS)
def test_homogeneous_of_degree_one(variant):
    shapes = {"w": (5, 8), "stack": (2, 6, 4)}
    params = _tree(shapes, 4)
    grads = [_tree(shapes, 90 + t) for t in range(3)]
    tx = scale_by_polargrad(variant=variant)
    update = jax.jit(tx.update)
    _, u1, _ = _run(tx, params, grads, update)
    for c in (1e-2, 1e2):
        _, u2, _ = _run(tx, params, [jax.tree.map(lambda x, c=c: c * x, g) for g in grads], update)
        for a, b in zip(u1, u2, strict=True):
            for k in shapes:
                # f(cG) = c f(G): M is linear in G (or invariant, polar-first), polar(·)
                # invariant, ν(cX) = cν(X). float32 rounding of c·x through QDWH: measured
                # ~3e-7; bound 1e-5.
                assert _rel(b[k], c * np.asarray(a[k], np.float64)) < 1e-5, (c, k)


# ---------------------------------------------------------------- stacked leaves, ν
STACK_SHAPES = {"L": (3, 4, 6), "E": (2, 5, 3), "LE": (2, 3, 4, 6), "x": (4, 6)}


def _slices(tree: dict) -> dict:
    out = {}
    for k, v in tree.items():
        flat = jnp.reshape(v, (-1,) + v.shape[-2:])
        for i in range(flat.shape[0]):
            out[f"{k}{i}"] = flat[i]
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_stacked_leaves_equal_per_slice_and_grouping_changes_nothing(variant):
    params = _tree(STACK_SHAPES, 5)
    grads = [_tree(STACK_SHAPES, 110 + t) for t in range(3)]
    kw = dict(variant=variant, weight_decay=0.1, ortho_method="svd")
    grouped, _, _ = _run(polargrad(0.01, **kw), params, grads)
    ungrouped, _, _ = _run(polargrad(0.01, group=False, **kw), params, grads)
    sliced, _, _ = _run(polargrad(0.01, **kw), _slices(params), [_slices(g) for g in grads])
    # Same per-matrix computations: measured bitwise equal on CPU; 1-ulp tolerance for
    # backends whose batched kernels depend on the batch size.
    for k in STACK_SHAPES:
        np.testing.assert_allclose(grouped[k], ungrouped[k], rtol=1e-6, atol=1e-7)
    for k, v in _slices(grouped).items():
        np.testing.assert_allclose(v, sliced[k], rtol=1e-6, atol=1e-7)


def test_nu_is_per_slice_not_per_tensor():
    g = _normal(6, (3, 4, 6))
    g[1] *= 10.0  # one slice much larger: a per-tensor ν would inflate the others' steps
    tx = scale_by_polargrad(beta=0.0, ortho_method="svd")
    u, _ = tx.update(jnp.asarray(g), tx.init(jnp.asarray(g)))
    g64 = g.astype(np.float64)
    per_slice = _nuclear64(g64) * _polar64(g64)
    per_tensor = _nuclear64(g64).sum() * _polar64(g64)
    np.testing.assert_allclose(u, per_slice, rtol=1e-5, atol=1e-5)
    assert _rel(u, per_tensor) > 0.5


def test_headwise_layout():
    d, dh, h = 4, 6, 3
    g = _normal(7, (d, h * dh))
    tx = scale_by_polargrad(beta=0.0, ortho_method="svd", layout=MatrixLayout(num_heads=h))
    u, _ = tx.update(jnp.asarray(g), tx.init(jnp.asarray(g)))
    blocks = np.stack(np.split(g.astype(np.float64), h, axis=1))
    want = np.concatenate(list(_nuclear64(blocks) * _polar64(blocks)), axis=1)
    np.testing.assert_allclose(u, want, rtol=1e-5, atol=1e-5)  # float32 SVD: ~1e-6


# ------------------------------------------------------------------ fallback, state
def test_fallback_and_state():
    params = {"w": jnp.asarray(_normal(8, (4, 6))), "b": jnp.asarray(_normal(9, (6,)))}
    grads = [
        {"w": jnp.asarray(_normal(10 + t, (4, 6))), "b": jnp.asarray(_normal(20 + t, (6,)))}
        for t in range(2)
    ]
    _, ups, state = _run(polargrad(1e-3), params, grads)
    _, adam_ups, _ = _run(
        optax.adamw(3e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0),
        {"b": params["b"]},
        [{"b": g["b"]} for g in grads],
    )
    for t in range(2):
        np.testing.assert_array_equal(ups[t]["b"], adam_ups[t]["b"])
    inner = state.inner_states["polargrad"].inner_state[0]
    assert isinstance(inner, ScaleByPolarGradState)
    assert isinstance(inner.mu["b"], optax.MaskedNode)
    assert int(inner.count) == 2


# ------------------------------------------------------------------------ convergence
@pytest.mark.parametrize("variant", VARIANTS)
def test_converges_on_strongly_convex_matrix_regression(variant):
    # min_X ½‖AX − B‖²_F with deterministic gradients: the ν factor shrinks the step with the
    # gradient, so PolarGrad converges (a constant-step Muon would stall at the lr scale).
    rng = np.random.default_rng(11)
    a = jnp.asarray(rng.standard_normal((12, 6)) / np.sqrt(12), jnp.float32)
    x_star = jnp.asarray(rng.standard_normal((6, 4)), jnp.float32)
    b = a @ x_star

    def loss(x):
        return 0.5 * jnp.sum((a @ x - b) ** 2)

    tx = polargrad(0.05, beta=0.5, variant=variant, ortho_method="svd")

    def body(carry, _):
        x, s = carry
        u, s = tx.update(jax.grad(loss)(x), s, x)
        return (optax.apply_updates(x, u), s), None

    x0 = jnp.zeros((6, 4), jnp.float32)
    (x, _), _ = jax.lax.scan(body, (x0, tx.init(x0)), None, length=400)
    assert float(loss(x)) < 1e-3 * float(loss(x0))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("method", ["qdwh", "svd", "auto"])
def test_zero_gradient_gives_zero_update(variant, method):
    # Unused experts / frozen blocks: polar(0) must not produce NaN, and ν = 0 kills the step.
    g = {"w": jnp.zeros((4, 6)), "stack": jnp.zeros((2, 3, 5))}
    tx = scale_by_polargrad(variant=variant, ortho_method=method)
    u, _ = tx.update(g, tx.init(g))
    for x in jax.tree.leaves(u):
        np.testing.assert_array_equal(x, 0.0)


# --------------------------------------------------------------------------- errors
def test_errors_name_the_path():
    params = {"layers": {"0": {"mlp": jnp.zeros((4, 10))}}, "step": jnp.zeros((2, 2), jnp.int32)}
    with pytest.raises(TypeError, match="'step'.*floating"):
        polargrad(1e-3).init(params)
    lay = {"layers": {"0": {"mlp": MatrixLayout(num_heads=3)}}, "step": None}
    with pytest.raises(ValueError, match="layers/0/mlp"):
        scale_by_polargrad(layout=lay).init({"layers": params["layers"], "step": jnp.zeros((2, 2))})
    with pytest.raises(ValueError, match="'b'.*at least 2 dimensions"):
        polargrad(1e-3, layout={"b": MatrixLayout()}).init({"b": jnp.zeros(3)})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(variant="nesterov_first"), "variant"),
        (dict(ortho_method="lu"), "ortho_method"),
        (dict(beta=-0.1), "beta"),
    ],
)
def test_bad_hyperparameters_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        scale_by_polargrad(**kwargs)
    with pytest.raises(ValueError, match=match):
        polargrad(1e-3, **kwargs)
