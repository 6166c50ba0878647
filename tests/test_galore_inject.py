"""GaLore family under optax.inject_hyperparams, static-argument lists, argument checks.

The inject check reproduces optax's own (optax/contrib/_common_test.py,
``test_optimizers_can_be_wrapped_in_inject_hyperparams``, optax 0.2.8): params
``[-ones((2, 3)), ones((2, 5, 2))]``, grads ``[ones((2, 3)), -ones((2, 5, 2))]``, both
transformations jitted, updates equal to ``rtol=1e-5`` (``atol=0``) and states to
``rtol=atol=1e-5``; here over 4 steps instead of 1. The 3-D leaf needs an explicit layout
under optzoo's default-layout rule (>2-D leaves raise); ``MatrixLayout()`` reads it as a
stack of two 5x2 matrices (optax.contrib.galore leaves it unprojected). optax derives
``static_args`` from a fixed name list (``rank``, ``update_proj_gap``, ...); we add the
factory's ``static_args`` (Natural GaLore's ``history`` is a shape and must be static too).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optzoo.galore import galore, scale_by_galore
from optzoo.layout import MatrixLayout
from optzoo.natural_galore import natural_galore, scale_by_natural_galore
from optzoo.subspace_descent import online_subspace_descent, scale_by_online_subspace_descent

_OPTAX_UNINJECTABLE = (
    "warmup_steps",
    "num_betas",
    "clip_value_fn",
    "ns_steps",
    "rank",
    "update_proj_gap",
)
FACTORIES = {
    "galore": galore,
    "natural_galore": natural_galore,
    "online_subspace_descent": online_subspace_descent,
}


def _optax_static(factory):
    names = inspect.signature(factory).parameters
    return tuple(n for n in _OPTAX_UNINJECTABLE if n in names)


def _max_rel(a, b):
    return max(
        float(
            np.max(
                np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
                / np.maximum(np.abs(np.asarray(y, np.float64)), 1e-300)
            )
        )
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _compare(factory, hparams, static, steps=4, params=None, grads=None):
    """optax's inject check, repeated over ``steps`` updates (same grads, as optax)."""
    opt = factory(**hparams)
    inj = optax.inject_hyperparams(factory, static_args=static)(**hparams)
    if params is None:
        params = [jnp.negative(jnp.ones((2, 3))), jnp.ones((2, 5, 2))]
        grads = [jnp.ones((2, 3)), jnp.negative(jnp.ones((2, 5, 2)))]
    s, si = jax.jit(opt.init)(params), jax.jit(inj.init)(params)
    up, upi = jax.jit(opt.update), jax.jit(inj.update)
    for _ in range(steps):
        u, s = up(grads, s, params)
        ui, si = upi(grads, si, params)
        for x, y in zip(jax.tree.leaves(ui), jax.tree.leaves(u), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=0.0)
        for x, y in zip(jax.tree.leaves(si.inner_state), jax.tree.leaves(s), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    return _max_rel(ui, u)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_inject_hyperparams_equals_plain_on_optax_inputs(name):
    """Repro (old code): ``_compare(galore, dict(learning_rate=1e-2, rank=8), ('rank',
    'update_proj_gap'))`` failed with max relative update difference 1.2e-5 (natural_galore
    1.1e-5, online_subspace_descent 1.2e-5; optax.contrib.galore: 0). Cause: an injected
    ``b2`` is a float32 array, so ``1 - b2`` is computed in float32 (0.99998713e-3), while a
    Python ``0.999`` gives ``1 - b2 = 1e-3`` in float64: 1.3e-5 in ``nu`` (``optax.adam``
    itself: 6.6e-6 under inject_hyperparams); these all-ones gradients are rank 1, so the
    projected gradient has rounding-level entries where Adam's ratio is most sensitive.
    Fix: ``b1``/``b2`` rounded to float32 at construction. Now 0 (galore, OSD) / ≤ 2e-7
    (natural_galore: its Cholesky solve is fused differently)."""
    factory = FACTORIES[name]
    static = tuple(dict.fromkeys(_optax_static(factory) + factory.static_args))
    hp = dict(learning_rate=1e-2, rank=8, layout=MatrixLayout())
    assert _compare(factory, hp, static) <= 1e-6


@pytest.mark.parametrize(
    "name",
    [
        "galore",
        pytest.param("natural_galore", marks=pytest.mark.slow),
        pytest.param("online_subspace_descent", marks=pytest.mark.slow),
    ],
)  # ~3 s CPU each
def test_inject_hyperparams_equals_plain_on_random_inputs(name):
    """Full-rank gradients, weight decay, a stacked leaf and a vector: every code path, at
    optax's tolerance (inside ``_compare``). Measured: galore and OSD 0; natural_galore
    3.6e-6 (repeating one gradient makes the history rank-deficient, cond(S) ~ 3e4, and the
    two programs fuse the float32 Cholesky differently). Repro (before the Fisher step
    multiplied by 1/λ instead of dividing by λ): natural_galore 5.2e-3."""
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.standard_normal((6, 4)), jnp.float32),
        "s": jnp.asarray(rng.standard_normal((2, 3, 5)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal((4,)), jnp.float32),
    }
    grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), params)
    factory = FACTORIES[name]
    hp = dict(learning_rate=1e-2, rank=2, weight_decay=0.1, b1=0.8, b2=0.99, layout=MatrixLayout())
    worst = _compare(factory, hp, factory.static_args, steps=3, params=params, grads=grads)
    assert worst <= (1e-5 if name == "natural_galore" else 1e-6)


def test_negative_control_unrounded_b2_reproduces_the_drift():
    """The same check detects the old drift: a user-built Adam inside the factory keeps the
    Python ``b2`` (no rounding), so the injected and the plain runs differ again by ~1e-5."""

    def factory(learning_rate, b2):
        return optax.chain(
            scale_by_galore(8, base_optimizer=optax.scale_by_adam(b2=b2), layout=MatrixLayout()),
            optax.scale_by_learning_rate(learning_rate),
        )

    with pytest.raises(AssertionError):
        _compare(factory, dict(learning_rate=1e-2, b2=0.999), ())


@pytest.mark.parametrize(
    "factory",
    [
        galore,
        natural_galore,
        online_subspace_descent,
        scale_by_galore,
        scale_by_natural_galore,
        scale_by_online_subspace_descent,
    ],
)
def test_static_args_listed_and_sufficient(factory):
    static = factory.static_args
    assert "rank" in static and "side" in static and "layout" in static
    assert set(static) <= set(inspect.signature(factory).parameters)
    kw = {"learning_rate": 1e-2} if "learning_rate" in inspect.signature(factory).parameters else {}
    params = {"w": jnp.ones((4, 3))}
    # without static_args: the first error names every static argument at once
    with pytest.raises(TypeError) as err:
        optax.inject_hyperparams(factory)(rank=2, **kw).init(params)
    for name in static:
        assert repr(name) in str(err.value), name
    # with them: works (the factory is called, with the injected values, in init and update;
    # the update path is exercised by the equality tests above)
    tx = optax.inject_hyperparams(factory, static_args=static)(rank=2, **kw)
    tx.init(params)


def test_static_args_of_each_factory():
    assert galore.static_args == (
        "rank",
        "update_proj_gap",
        "side",
        "mu_dtype",
        "base_optimizer",
        "layout",
        "weight_decay_mask",
    )
    assert "history" in natural_galore.static_args
    # OSD's update_proj_gap only sets the default projector rate 1/T: injectable
    assert "update_proj_gap" not in online_subspace_descent.static_args
    tx = optax.inject_hyperparams(
        online_subspace_descent, static_args=online_subspace_descent.static_args
    )(learning_rate=1e-2, rank=2, update_proj_gap=50)
    params = {"w": jnp.ones((4, 3))}
    tx.update(params, tx.init(params), params)


# ------------------------------------------------------------------ construction checks
ALIASES = [galore, natural_galore, online_subspace_descent]
BLOCKS = [scale_by_galore, scale_by_natural_galore, scale_by_online_subspace_descent]


@pytest.mark.parametrize("factory", ALIASES + BLOCKS)
@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (dict(b1=1.0), ValueError, "b1"),
        (dict(b1=-0.1), ValueError, "b1"),
        (dict(b2=1.0), ValueError, "b2"),
        (dict(b2=float("nan")), ValueError, "b2"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(eps=-1e-8), ValueError, "eps"),
        (dict(b1=None), TypeError, "b1"),
        (dict(mu_dtype=jnp.int32), TypeError, "mu_dtype"),
        (dict(mu_dtype="float17"), TypeError, "mu_dtype"),
        (dict(scale=-1.0), ValueError, "scale"),
        (dict(scale=0.0), ValueError, "scale"),
        (dict(side="top"), ValueError, "side"),
        (dict(base_optimizer="adam"), TypeError, "base_optimizer"),
    ],
)
def test_bad_arguments_named_at_construction(factory, bad, exc, match):
    """Repro (old code): ``galore(1e-2, 2, b2=1.0)`` built; its first update divided by
    ``1 - b2**t = 0`` (NaN); ``mu_dtype=jnp.int32`` truncated the momentum to 0; ``eps=-1e-8``
    was accepted. Now each is refused when the factory is called, naming the argument."""
    args = (1e-2, 2) if factory in ALIASES else (2,)
    with pytest.raises(exc, match=match):
        factory(*args, **bad)


@pytest.mark.parametrize("factory", ALIASES)
def test_bad_learning_rate_and_weight_decay(factory):
    """Repro (old code): ``galore(None, 2)`` was accepted (``scale_by_learning_rate(None)``
    fails only inside the first update); a negative weight decay was accepted."""
    with pytest.raises(TypeError, match="learning_rate"):
        factory(None, 2)
    with pytest.raises(ValueError, match="learning_rate"):
        factory(float("inf"), 2)
    with pytest.raises(ValueError, match="weight_decay"):
        factory(1e-2, 2, weight_decay=-0.1)
    factory(optax.constant_schedule(1e-2), 2)  # schedules are fine


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(damping=0.0), "natural_galore: damping"),
        (dict(damping=-1e-3), "natural_galore: damping"),
        (dict(history=0), "natural_galore: history"),
    ],
)
def test_bad_natural_hyperparameters_name_factory(bad, match):
    with pytest.raises(ValueError, match=match):
        natural_galore(1e-2, 2, **bad)
