"""Tests of optzoo.fallback, the default AdamW of the matrix optimizers: every field checked
at construction naming it and the class, the learning rate it runs at (following a float or
a schedule of the method, or used as given), float16 leaves kept in float32 moments (finite
for a zero gradient, where plain Adam in float16 gives NaN), and ``resolve`` of every kind
of spec."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optzoo import fallback as fallback_lib

AdamW = fallback_lib.AdamW


# ------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(learning_rate=-1e-3), ValueError, "learning_rate must lie in"),
        (dict(learning_rate=float("inf")), ValueError, "learning_rate must be finite"),
        (dict(learning_rate="3e-4"), TypeError, "learning_rate must be a real number"),
        (dict(lr_ratio=0.0), ValueError, "lr_ratio must lie in"),
        (dict(lr_ratio=-0.015), ValueError, "lr_ratio must lie in"),
        (dict(b1=1.5), ValueError, "b1 must lie in"),
        (dict(b1=True), TypeError, "b1 must be a real number"),
        (dict(b2=-0.1), ValueError, "b2 must lie in"),
        (dict(b2=float("nan")), ValueError, "b2 must be finite"),
        (dict(eps=0.0), ValueError, "eps must lie in"),
        (dict(weight_decay=-0.1), ValueError, "weight_decay must lie in"),
        (dict(mu_dtype=jnp.int32), TypeError, "mu_dtype must be a floating dtype"),
    ],
)
def test_every_field_is_checked_naming_it_and_the_class(kwargs, error, match):
    with pytest.raises(error, match=f"optzoo.fallback.AdamW: {match}"):
        AdamW(**kwargs)


def test_valid_fields_are_accepted_and_the_spec_is_frozen():
    spec = AdamW(
        learning_rate=optax.constant_schedule(1e-3),
        lr_ratio=0.1,
        b1=0.0,
        b2=1.0,
        eps=1e-6,
        weight_decay=0.0,
        mu_dtype=jnp.bfloat16,
    )
    with pytest.raises(AttributeError):
        spec.b1 = 0.5  # a frozen dataclass: one spec can be shared by several optimizers
    assert AdamW() == AdamW(lr_ratio=fallback_lib.LR_RATIO, b1=0.9, b2=0.95, eps=1e-8)


# ---------------------------------------------------------------------- learning rate
def test_learning_rate_follows_a_float_method_rate():
    assert fallback_lib.learning_rate_of(AdamW(), 0.02) == fallback_lib.LR_RATIO * 0.02
    assert fallback_lib.LR_RATIO == 0.015
    assert fallback_lib.learning_rate_of(AdamW(lr_ratio=0.1), 0.02) == 0.1 * 0.02


def test_learning_rate_follows_a_schedule_pointwise():
    sched = optax.linear_schedule(0.0, 0.02, transition_steps=4)
    lr = fallback_lib.learning_rate_of(AdamW(lr_ratio=0.5), sched)
    assert callable(lr)
    for count in range(6):
        np.testing.assert_allclose(float(lr(count)), 0.5 * float(sched(count)), rtol=1e-7)
    assert float(lr(0)) == 0.0 and float(lr(4)) == pytest.approx(0.01)


@pytest.mark.parametrize("explicit", [1e-3, optax.cosine_decay_schedule(1e-3, 10)])
def test_an_explicit_learning_rate_is_used_as_given(explicit):
    assert fallback_lib.learning_rate_of(AdamW(learning_rate=explicit), 0.02) is explicit
    assert fallback_lib.learning_rate_of(AdamW(learning_rate=explicit), None) is explicit


def test_following_a_missing_method_rate_is_refused():
    with pytest.raises(TypeError, match="has none; set learning_rate"):
        fallback_lib.learning_rate_of(AdamW(), None)


# ---------------------------------------------------------------------------- float16
def test_float16_leaves_keep_float32_moments_and_stay_finite():
    params = {
        "h": jnp.ones(4, jnp.float16),
        "f": jnp.ones(4, jnp.float32),
        "b": jnp.ones(4, jnp.bfloat16),
    }
    tx = AdamW().build(0.02)
    state = tx.init(params)
    adam = state[0]
    assert adam.mu["h"].dtype == jnp.float32 and adam.nu["h"].dtype == jnp.float32
    assert adam.mu["f"].dtype == jnp.float32 and adam.mu["b"].dtype == jnp.bfloat16
    for grads in (
        jax.tree.map(jnp.zeros_like, params),  # 0/0 in plain f16
        {
            "h": jnp.full(4, 1000.0, jnp.float16),  # g² > 65504
            "f": jnp.ones(4),
            "b": jnp.ones(4, jnp.bfloat16),
        },
    ):
        u, _ = tx.update(grads, state, params)
        assert u["h"].dtype == jnp.float16
        assert np.all(np.isfinite(np.asarray(u["h"], np.float32)))
    # negative control: optax.adamw in float16 turns the zero gradient into NaN
    plain = optax.adamw(0.02 * 0.015, b1=0.9, b2=0.95, eps=1e-8)
    h = {"h": params["h"]}
    u, _ = plain.update({"h": jnp.zeros(4, jnp.float16)}, plain.init(h), h)
    assert np.all(np.isnan(np.asarray(u["h"], np.float32)))


def test_other_dtypes_are_bitwise_optax_adamw():
    rng = np.random.default_rng(0)
    params = {
        "f": jnp.asarray(rng.standard_normal(5), jnp.float32),
        "b": jnp.asarray(rng.standard_normal(5), jnp.bfloat16),
    }
    grads = [jax.tree.map(lambda x, s=s: x * (0.1 + s), params) for s in range(3)]
    ours = AdamW(weight_decay=0.1).build(0.02)
    theirs = optax.adamw(0.015 * 0.02, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
    s1, s2 = ours.init(params), theirs.init(params)
    for g in grads:
        u1, s1 = ours.update(g, s1, params)
        u2, s2 = theirs.update(g, s2, params)
        for k in params:
            np.testing.assert_array_equal(
                np.asarray(u1[k], np.float32), np.asarray(u2[k], np.float32)
            )


# ---------------------------------------------------------------------------- resolve
def _bias_updates(tx, steps=3):
    params = {"b": jnp.asarray(np.random.default_rng(1).standard_normal(6), jnp.float32)}
    state, out = tx.init(params), []
    for t in range(steps):
        g = {"b": jnp.asarray(np.random.default_rng(10 + t).standard_normal(6), jnp.float32)}
        u, state = tx.update(g, state, params)
        out.append(np.asarray(u["b"]))
    return out, state


_DEFAULT = AdamW()


def _resolve(spec, default=_DEFAULT, mu_dtype=None):
    return fallback_lib.resolve(
        spec, default=default, method_learning_rate=0.02, mu_dtype=mu_dtype, what="mymethod"
    )


def test_resolve_none_builds_the_default():
    got, _ = _bias_updates(_resolve(None, default=AdamW(learning_rate=3e-4)))
    want, _ = _bias_updates(optax.adamw(3e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    followed, _ = _bias_updates(_resolve(None))
    want, _ = _bias_updates(optax.adamw(0.015 * 0.02, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0))
    for a, b in zip(followed, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_resolve_an_adamw_spec_and_the_method_mu_dtype():
    got, state = _bias_updates(_resolve(AdamW(b2=0.999), mu_dtype=jnp.bfloat16))
    want, _ = _bias_updates(
        optax.adamw(
            0.015 * 0.02, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, mu_dtype=jnp.bfloat16
        )
    )
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert state[0].mu["b"].dtype == jnp.bfloat16  # the method's mu_dtype when none is set
    _, state = _bias_updates(_resolve(AdamW(mu_dtype=jnp.float32), mu_dtype=jnp.bfloat16), 1)
    assert state[0].mu["b"].dtype == jnp.float32  # the spec's own wins


def test_resolve_a_transformation_returns_it_unchanged():
    tx = optax.sgd(0.1)
    assert _resolve(tx) is tx


@pytest.mark.parametrize("garbage", ["adamw", optax.adamw, 3e-4, {"b1": 0.9}])
def test_resolve_refuses_anything_else_naming_the_method(garbage):
    with pytest.raises(
        TypeError,
        match="mymethod: fallback must be an "
        "optax.GradientTransformation, an "
        "optzoo.fallback.AdamW or None",
    ):
        _resolve(garbage)
