"""Every public factory lists what ``optax.inject_hyperparams`` cannot trace, in one place.

``factory.static_args`` names the arguments that must stay Python values (integers that fix
shapes or unrolled iterations, choices, dtypes, layouts, masks, callables, nested
transformations); ``optax.inject_hyperparams(factory, static_args=factory.static_args)`` then
works with no other list. Checked for every factory of the registry (``tests/_zoo.py``; the
registry's wrapper entries build the public wrappers with their own lists), one jitted
``init`` + ``update`` on the registry's tree; and, as a negative control, dropping one
required static argument fails with an error that names it.
"""

from __future__ import annotations

import inspect

import _zoo
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo

pytestmark = pytest.mark.filterwarnings("ignore:.*rank .* exceeds min:UserWarning")

#: A matrix and a vector (the registry's kinds), the smallest tree with both routes.
SHAPES = {"matrix_0": (3, 5), "vector_1": (5,)}
ROUTED = _zoo.routed_shapes(d=4, vocab=5, ffn=3, experts=2)
WRAPPERS = {
    "discard_stale": optzoo.discard_stale,
    "delay_adaptive": optzoo.delay_adaptive,
    "skip_nonfinite": optzoo.skip_nonfinite,
}


def _params(entry: _zoo.Entry) -> dict:
    rng = np.random.default_rng(0)
    if entry.tree == "routed":
        shapes = ROUTED
    else:
        shapes = {k: s for k, s in SHAPES.items() if _zoo.kind_of(k) in entry.kinds}
    flat = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
    return _zoo.nest(flat) if entry.tree == "routed" else flat


def _injected(entry: _zoo.Entry, drop: str | None = None) -> optax.GradientTransformation:
    """``inject_hyperparams`` of the public factory with its own ``static_args`` (minus
    ``drop``); a registry wrapper entry injects the public wrapper around the inner
    optimizer the entry builds."""
    kwargs = dict(entry.kwargs)
    factory = entry.factory
    if entry.name in WRAPPERS:
        factory = WRAPPERS[entry.name]
        lr, layout = kwargs.pop("learning_rate"), kwargs.pop("layout")
        inner = (
            optzoo.muon(lr, layout=layout)
            if entry.name == "skip_nonfinite"
            else optzoo.ringmaster(lr, layout=layout)
        )
        first = next(iter(inspect.signature(factory).parameters))
        kwargs = {first: inner, **kwargs}
    static = tuple(n for n in factory.static_args if n != drop)
    return optax.inject_hyperparams(factory, static_args=static)(**kwargs)


def _step(entry: _zoo.Entry, tx: optax.GradientTransformation) -> None:
    params = _params(entry)
    grads = jax.tree.map(lambda x: 0.5 * x + 0.1, params)
    state = jax.jit(tx.init)(params)
    updates, _ = jax.jit(tx.update)(grads, state, params, **entry.extra(0, 1.0))
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
        assert u.shape == p.shape
        assert bool(jnp.isfinite(u).all())


@pytest.mark.parametrize("name", list(_zoo.REGISTRY))
def test_static_args_suffice_for_inject_hyperparams(name):
    entry = _zoo.REGISTRY[name]
    factory = WRAPPERS.get(name, entry.factory)
    static = factory.static_args
    assert isinstance(static, tuple) and len(set(static)) == len(static)
    assert set(static) <= set(inspect.signature(factory).parameters), static
    _step(entry, _injected(entry))


#: (registry entry, one of its required static arguments): an integer that fixes a shape or
#: an unrolled loop, or a callable/tree layout that optax would call as a schedule.
NEGATIVE = [
    ("galore", "rank"),
    ("natural_galore", "history"),
    ("fismo", "precondition_frequency"),
    ("symmetry_compatible", "head_dim"),
    ("egn", "max_jacobian_size"),
    ("online_subspace_descent", "rank"),
]


@pytest.mark.parametrize(("name", "arg"), NEGATIVE)
def test_omitting_a_static_arg_fails_naming_it(name, arg):
    entry = _zoo.REGISTRY[name]
    with pytest.raises(Exception, match=arg):
        _step(entry, _injected(entry, drop=arg))


def test_every_public_factory_has_static_args():
    """Every optimizer factory exported at top level carries the attribute."""
    factories = [
        n
        for n in optzoo.__all__
        if inspect.isfunction(getattr(optzoo, n))
        and "GradientTransformation" in str(inspect.signature(getattr(optzoo, n)).return_annotation)
    ]
    assert {"muon", "galore", "symmetry_compatible", "skip_nonfinite"} <= set(factories)
    missing = [n for n in factories if not hasattr(getattr(optzoo, n), "static_args")]
    assert missing == []
