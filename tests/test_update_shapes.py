"""Gradients whose shapes differ from the parameters' are refused naming the path (issue 17).

Repro (before): ``optzoo.muon(0.02).update({'w': zeros((6, 4)), ...}, state, params)`` with a
``(4, 6)`` parameter raised ``TypeError: add got incompatible shapes for broadcasting`` from
inside the momentum update, naming no parameter (``optax.adamw`` does the same).
"""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import optzoo

FACTORIES = {
    "muon": lambda: optzoo.muon(0.02),
    "polargrad": lambda: optzoo.polargrad(1e-3),
    "scion": lambda: optzoo.scion(0.02),
    "ef_muon": lambda: optzoo.ef_muon(0.02),
    "fismo": lambda: optzoo.fismo(0.02),
    "rownorm": lambda: optzoo.rownorm(0.02, unit_axis=-1),
    "lion": lambda: optzoo.lion(1e-3),
    "lion_kappa": lambda: optzoo.lion_kappa(1e-3, "tanh"),
    "galore": lambda: optzoo.galore(1e-2, rank=2),
    "natural_galore": lambda: optzoo.natural_galore(1e-2, rank=2, history=2),
    "online_subspace_descent": lambda: optzoo.online_subspace_descent(1e-2, rank=2),
    "ringmaster": lambda: optzoo.ringmaster(0.02),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_mismatched_update_shape_names_the_path(name):
    params = {"w": jnp.ones((4, 6)), "b": jnp.ones(6)}
    tx = FACTORIES[name]()
    state = tx.init(params)
    with pytest.raises(
        ValueError,
        match=r"update of 'w' has shape \(6, 4\) but the parameter "
        r"has shape \(4, 6\)",
    ):
        tx.update({"w": jnp.ones((6, 4)), "b": jnp.ones(6)}, state, params)
    u, _ = tx.update({"w": jnp.ones((4, 6)), "b": jnp.ones(6)}, state, params)  # control
    assert u["w"].shape == (4, 6)


def test_mismatched_structure_is_refused():
    params = {"w": jnp.ones((4, 6)), "b": jnp.ones(6)}
    tx = optzoo.muon(0.02)
    with pytest.raises(ValueError, match="tree structure does not match"):
        tx.update({"w": jnp.ones((4, 6))}, tx.init(params), params)
