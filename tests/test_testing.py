"""The public test kit must itself have power: it passes on transforms with a property and
fails on transforms without it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optzoo import linalg, testing

SHAPE = (6, 9)


def _params():
    return {"w": jnp.asarray(np.random.default_rng(0).standard_normal(SHAPE), jnp.float32)}


def _grads(n=4):
    return [
        {"w": jnp.asarray(np.random.default_rng(10 + t).standard_normal(SHAPE), jnp.float32)}
        for t in range(n)
    ]


def _map(fn):
    """A stateless transform applying `fn` to every leaf."""

    def update(updates, state, params=None):
        return jax.tree.map(fn, updates), state

    return optax.GradientTransformation(lambda p: optax.EmptyState(), update)


def test_actions_are_group_elements():
    u = testing.orthogonal_matrix(7, seed=1, batch=(2,))
    np.testing.assert_allclose(
        np.swapaxes(u, -1, -2) @ u, np.broadcast_to(np.eye(7), u.shape), atol=1e-12
    )
    x = jnp.asarray(np.random.default_rng(2).standard_normal(SHAPE), jnp.float32)
    for act in (
        testing.bi_orthogonal(SHAPE),
        testing.left_orthogonal(SHAPE),
        testing.right_orthogonal(SHAPE),
        testing.signed_permutation(SHAPE),
        testing.permutation(SHAPE, 0),
    ):
        # isometries of the Frobenius norm
        np.testing.assert_allclose(
            float(jnp.linalg.norm(act(x))), float(jnp.linalg.norm(x)), rtol=1e-5
        )
    perm = testing.permutation(SHAPE, axis=1, seed=3)(x)
    np.testing.assert_array_equal(np.sort(np.asarray(perm), axis=1), np.sort(np.asarray(x), axis=1))
    shifted = testing.shift(SHAPE, unit_axis=0, seed=4)
    d0, d1 = shifted(x, 0) - x, shifted(x, 1) - x
    np.testing.assert_allclose(
        np.asarray(d0), np.broadcast_to(np.asarray(d0[:1]), SHAPE), atol=1e-6
    )  # x + c - x in float32
    assert not np.allclose(np.asarray(d0), np.asarray(d1))  # a fresh c_t per step


def test_check_equivariance_passes_and_fails():
    act = testing.bi_orthogonal(SHAPE, seed=5)
    sgd = optax.chain(optax.trace(0.9), optax.add_decayed_weights(0.1), optax.sgd(0.1))
    assert testing.check_equivariance(sgd, _params(), _grads(), act) < 1e-5
    polar = optax.chain(_map(lambda g: linalg.orthogonalize(g, "svd")), optax.sgd(0.1))
    testing.check_equivariance(polar, _params(), _grads(), act)
    # negative control: Adam's coordinatewise normalization breaks rotations
    with pytest.raises(AssertionError, match="not equivariant"):
        testing.check_equivariance(optax.adam(0.1), _params(), _grads(), act)
    assert testing.equivariance_error(optax.adam(0.1), _params(), _grads(), act) > 0.05
    # ... but not signed permutations
    testing.check_equivariance(
        optax.adam(0.1), _params(), _grads(), testing.signed_permutation(SHAPE)
    )


def test_shift_invariance_mode():
    act = testing.shift(SHAPE, unit_axis=0, seed=6)
    centered = optax.chain(_map(lambda g: linalg.center(g)), optax.sgd(0.1))
    testing.check_equivariance(
        centered, _params(), _grads(), act, param_action=None, output_action=None
    )
    with pytest.raises(AssertionError):
        testing.check_equivariance(
            optax.sgd(0.1), _params(), _grads(), act, param_action=None, output_action=None
        )


def test_per_leaf_actions():
    params = {"w": _params()["w"], "b": jnp.ones(3)}
    grads = [{"w": g["w"], "b": jnp.full(3, float(t))} for t, g in enumerate(_grads())]
    acts = testing.per_leaf({"w": testing.bi_orthogonal(SHAPE), "b": None})
    testing.check_equivariance(optax.sgd(0.1), params, grads, acts)


def test_polar_reference():
    x = np.random.default_rng(7).standard_normal((5, 8))
    p = testing.polar_reference(x)
    np.testing.assert_allclose(p @ p.T, np.eye(5), atol=1e-12)


def test_optax_battery_passes_on_adamw_and_catches_breakage():
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    testing.check_optax_compatibility(optax.adamw, dict(learning_rate=1e-2), params)

    def wrong_dtype(learning_rate: float = 0.1):
        return optax.chain(_map(lambda g: g.astype(jnp.float32)), optax.sgd(learning_rate))

    with pytest.raises(AssertionError, match="dtype"):
        testing.check_dtype_preserved(wrong_dtype(), params)

    def growing_state():
        def init(p):
            return jnp.zeros((1,))

        def update(u, s, p=None, **extra):
            return u, jnp.concatenate([s, s])

        return optax.GradientTransformation(init, update)

    with pytest.raises(AssertionError, match="traced"):
        testing.check_jit_no_recompile(growing_state(), params)

    def kwargs_factory(learning_rate, **kw):
        return optax.sgd(learning_rate)

    with pytest.raises(AssertionError, match="kwargs"):
        testing.check_inject_hyperparams(kwargs_factory, dict(learning_rate=0.1), params)
