"""Issue 17 for Ringmaster: donatable states, refused unknown keywords, construction-time
argument checks naming the argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optzoo.ringmaster import (
    discard_stale,
    ringmaster,
    ringmaster_agnostic,
    scale_by_ringmaster_lmo,
)

PARAMS = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}


def _buffer_ids(tree):
    return [x.unsafe_buffer_pointer() for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize(
    "factory",
    [
        lambda: discard_stale(ringmaster(0.1, "sign"), 2),
        lambda: discard_stale(ringmaster_agnostic(0.1, "spectral"), "agnostic"),
    ],
)
def test_eager_state_has_no_shared_buffers_and_can_be_donated(factory):
    """Before: ``DiscardStaleState(count=zero, discarded=zero)`` held one array twice, and
    ``jax.jit(step, donate_argnums=1)(g, tx.init(p), p)`` failed with XLA's "Attempt to
    donate the same buffer twice" (repro on optzoo 985adad)."""
    tx = factory()
    state = tx.init(PARAMS)
    ids = _buffer_ids(state)
    assert len(ids) == len(set(ids))
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, delay=jnp.asarray(1)), donate_argnums=(1,))
    _, state = step(PARAMS, state, PARAMS)
    _, state = step(PARAMS, state, PARAMS)  # the jitted step's own output donates too
    assert int(state.count) + int(state.discarded) == 2


def test_discard_stale_refuses_unknown_keywords():
    """Before: ``update(..., delays=5)`` was silently dropped and the stale gradient applied
    (``update(g, s, p, delays=5)['w'][0, 0] == -0.1``, the accepted step; repro on optzoo
    985adad)."""
    tx = discard_stale(ringmaster(0.1, "sign"), 2)
    s = tx.init(PARAMS)
    with pytest.raises(TypeError, match=r"'delays'.*did you mean delay="):
        tx.update(PARAMS, s, PARAMS, delays=5)
    with pytest.raises(TypeError, match="'value'"):
        tx.update(PARAMS, s, PARAMS, delay=0, value=1.0)
    # Listed keywords are forwarded to the inner transform, delay= still gates.
    fwd = discard_stale(ringmaster(0.1, "sign"), 2, pass_through=("value",))
    u, s2 = fwd.update(PARAMS, fwd.init(PARAMS), PARAMS, delay=5, value=1.0)
    assert int(s2.discarded) == 1 and not any(np.any(v) for v in jax.tree.leaves(u))
    with pytest.raises(TypeError, match="pass_through"):
        discard_stale(ringmaster(0.1), 2, pass_through="value")


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        (dict(ns_steps=0), ValueError, "ns_steps"),
        (dict(ns_steps=2.5), TypeError, "ns_steps"),
        (dict(ortho_method="svd2"), ValueError, "ortho_method"),
        (dict(shape_scale="muon"), ValueError, "shape_scale"),
        (dict(vector_lmo="adam"), ValueError, "vector_lmo"),
        (dict(beta=float("nan")), ValueError, "beta"),
        (dict(beta=np.float32(1.5)), ValueError, "beta"),
        (dict(eps=0.0), ValueError, "eps"),
        (dict(mu_dtype=jnp.int32), TypeError, "mu_dtype"),
        (dict(nesterov="yes"), TypeError, "nesterov"),
        (dict(lmo="frobenius"), ValueError, "lmo"),
    ],
)
def test_bad_options_fail_at_construction_naming_the_argument(kwargs, error, name):
    """Before: ``ringmaster(0.1, ns_steps=0)`` constructed fine and failed only inside the
    first ``update`` with ``orthogonalize: steps must lie in [1, inf], got 0`` (naming
    neither ns_steps nor ringmaster); ``mu_dtype=int32`` truncated the momentum to 0 and the
    update to -0.0 silently (repro on optzoo 985adad)."""
    with pytest.raises(error, match=f"ringmaster: {name}|ringmaster: unknown {name}"):
        ringmaster(0.1, **kwargs)
    with pytest.raises(error, match=name):
        scale_by_ringmaster_lmo(**kwargs)


@pytest.mark.parametrize(
    ("factory", "kwargs", "error", "name"),
    [
        (ringmaster, dict(learning_rate=None), TypeError, "learning_rate"),
        (ringmaster, dict(learning_rate=-1.0), ValueError, "learning_rate"),
        (ringmaster, dict(learning_rate=0.1, weight_decay=-0.1), ValueError, "weight_decay"),
        (ringmaster_agnostic, dict(learning_rate=0.0), ValueError, "learning_rate"),
        (ringmaster_agnostic, dict(learning_rate=0.1, ns_steps=0), ValueError, "ns_steps"),
        (discard_stale, dict(tx=None, delay_threshold=0.5), ValueError, "delay_threshold"),
        (discard_stale, dict(tx=None, delay_threshold=True), ValueError, "delay_threshold"),
        (discard_stale, dict(tx=None, delay_threshold=float("nan")), ValueError, "delay_threshold"),
    ],
)
def test_alias_arguments_checked_at_construction(factory, kwargs, error, name):
    if factory is discard_stale:
        kwargs = {**kwargs, "tx": ringmaster(0.1)}
    with pytest.raises(error, match=name):
        factory(**kwargs)


def test_valid_edge_values_still_construct():
    ringmaster(0.0, beta=1.0, ns_steps=1, weight_decay=0.0)
    discard_stale(ringmaster(0.1), float("inf"))
    discard_stale(ringmaster(0.1), None)
    u, _ = ringmaster(0.1, "sign", beta=np.float32(0.5)).update(
        PARAMS, ringmaster(0.1, "sign").init(PARAMS), PARAMS
    )
    assert np.isfinite(np.asarray(u["w"])).all()
