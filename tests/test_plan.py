"""``optzoo.plan``: the per-leaf plan of an alias agrees with what the optimizer runs.

On a small Flax-like tree (``Dense_k/kernel``, ``bias``, ``LayerNorm_0/scale``) the leaves the
plan sends to the fallback get exactly the updates of a standalone ``optax.adamw`` with the
fallback's settings (same rate, ``b2 = 0.95``), for every alias with a fallback, with the
default layout and with a layout argument that sends one kernel to the fallback; the leaves it
calls matrix leaves differ from that AdamW (negative control). The other families: the
transform and view columns, schedules noted at their step-0 value, the layerwise stack
through its routing plan, and a refusal for a factory without a plan.
"""

from __future__ import annotations

import _zoo
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optzoo.layout import MatrixLayout
from optzoo.plan import PlanRow

SHAPES = {
    "Dense_0/kernel": (4, 3),
    "Dense_0/bias": (3,),
    "LayerNorm_0/scale": (3,),
    "Dense_1/kernel": (3, 2),
}
LR = 0.02


def _tree(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return _zoo.nest(
        {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in SHAPES.items()}
    )


def _flat(tree: dict) -> dict[str, jax.Array]:
    return {
        jax.tree_util.keystr(p, simple=True, separator="/"): x
        for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }


def _run(tx: optax.GradientTransformation, params: dict, steps: int = 3) -> dict:
    state = tx.init(params)
    out = {}
    for t in range(steps):
        updates, state = tx.update(_tree(10 + t), state, params)
        out = _flat(updates)
    return out


def _dense1_to_fallback(params):
    """A layout tree: every 2-D leaf a matrix except ``Dense_1/kernel``."""
    return {
        k: {n: (MatrixLayout() if x.ndim == 2 and k != "Dense_1" else None) for n, x in v.items()}
        for k, v in params.items()
    }


#: alias -> (extra kwargs, the fallback's learning rate).
ALIASES = {
    "muon": ({}, 0.015 * LR),
    "polargrad": ({}, 3e-4),
    "ef_muon": ({}, 0.015 * LR),
    "fismo": ({"precondition_frequency": 2}, 0.015 * LR),
    "rownorm": ({"unit_axis": -1}, 3e-4),
    "one_sided_spectral": ({"unit_axis": -1}, 3e-4),
    "left_spectral": ({"unit_axis": -1}, 3e-4),
    "hybrid": ({"unit_axis": -1}, 3e-4),
}


@pytest.mark.parametrize("layout", [None, _dense1_to_fallback], ids=["default", "tree"])
@pytest.mark.parametrize("name", list(ALIASES))
def test_fallback_leaves_of_the_plan_are_exactly_adamw(name, layout):
    factory = getattr(optzoo, name)
    extra, fb_lr = ALIASES[name]
    kwargs = {**extra, "layout": layout}
    params = _tree(0)
    table = optzoo.plan(factory, params, LR, **kwargs)
    rows = {r.path: r for r in table.rows}
    assert set(rows) == set(SHAPES)
    fallback = {p for p, r in rows.items() if r.transform == "fallback AdamW"}
    matrix = set(rows) - fallback
    expected_fallback = {"Dense_0/bias", "LayerNorm_0/scale"} | (
        {"Dense_1/kernel"} if layout is not None else set()
    )
    assert fallback == expected_fallback, table
    for p in fallback:
        assert rows[p].learning_rate == pytest.approx(fb_lr) and rows[p].matrix is None
    for p in matrix:
        assert rows[p].transform == name and rows[p].learning_rate == pytest.approx(LR)

    ours = _run(factory(LR, **kwargs), params)
    adamw = _run(optax.adamw(fb_lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0), params)
    for p in fallback:
        np.testing.assert_array_equal(ours[p], adamw[p], err_msg=p)
    for p in matrix:  # negative control: the matrix leaves are not AdamW's
        assert not np.allclose(ours[p], adamw[p], rtol=1e-3, atol=1e-7), p


def test_table_text_and_schedule():
    params = {"w": jnp.zeros((4, 6)), "b": jnp.zeros((6,))}
    table = optzoo.plan(
        optzoo.muon, params, optax.cosine_decay_schedule(0.02, 10), layout=MatrixLayout(num_heads=2)
    )
    assert isinstance(table, str)
    assert table.splitlines()[0].split() == [
        "path",
        "shape",
        "transform",
        "learning",
        "rate",
        "matrix",
        "view",
    ]
    rows = {r.path: r for r in table.rows}
    assert rows["w"] == PlanRow("w", (4, 6), "muon", pytest.approx(0.02), True, (2, 4, 3), 2)
    assert "0.02 (schedule)" in table and "4×3, 2 heads, batch 2" in table
    assert rows["b"].transform == "fallback AdamW" and rows["b"].schedule
    custom = optzoo.plan(optzoo.muon, params, 0.02, fallback=optax.sgd(0.1))
    assert {r.path: r.transform for r in custom.rows}["b"] == "fallback (custom)"


def test_other_families():
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros((3,))}

    def names(factory, *args, **kwargs):
        return {r.path: r.transform for r in optzoo.plan(factory, params, *args, **kwargs).rows}

    assert names(optzoo.scion, 0.02) == {"w": "scion(spectral)", "b": "scion(bias_rms)"}
    assert names(optzoo.lion, 1e-3) == {"w": "lion", "b": "lion"}
    assert names(optzoo.lion_kappa, 1e-3, kappa="spectral", vector_kappa="sign") == {
        "w": "lion_kappa(spectral)",
        "b": "lion_kappa(sign)",
    }
    assert names(optzoo.lion_kappa, 1e-3, kappa="tanh") == {
        "w": "lion_kappa(tanh)",
        "b": "lion_kappa(tanh)",
    }
    for factory in (optzoo.galore, optzoo.natural_galore, optzoo.online_subspace_descent):
        got = names(factory, 1e-2, rank=2)
        assert got["w"] == f"{factory.__name__}(rank=2)", got
        assert got["b"].endswith("unprojected"), got
    with pytest.raises(TypeError, match="no plan"):
        optzoo.plan(optzoo.egn, params, 0.5, apply_fn=lambda p, x: x)


def test_layerwise_stack_follows_its_routing_plan():
    params = _zoo.nest(
        {k: jnp.zeros(s) for k, s in _zoo.routed_shapes(d=4, vocab=5, ffn=3, experts=2).items()}
    )
    table = optzoo.plan(optzoo.symmetry_compatible, params, 0.02, head_dim=2)
    transforms = optzoo.symmetric_stack.symmetry_compatible_plan(0.02, head_dim=2)
    report = optzoo.routing.report(params, None, transforms)
    assert [(r.path, r.transform) for r in table.rows] == [
        (r.path, r.transform) for r in report.rows
    ]
    rows = {r.path: r for r in table.rows}
    assert rows["layers/1/moe/experts/up_proj"].matrix == (2, 4, 3)
    assert rows["lm_head/kernel"].learning_rate == pytest.approx(
        0.02 * transforms["lm_head"].lr_multiplier
    )
