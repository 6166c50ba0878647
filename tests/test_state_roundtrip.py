"""Orbax save/restore of every optimizer's state (the registry in ``tests/_zoo.py``).

For each optimizer, wrapped in ``optax.partition`` (so the state holds ``optax.MaskedNode``
leaves and partition states) on a tiny mixed tree: run ``K`` steps, save params + optimizer
state with ``orbax.checkpoint.StandardCheckpointer`` (``StandardSave``), restore into the
abstract tree of a *fresh* ``init`` (``jax.ShapeDtypeStruct`` leaves), continue ``N`` steps
and require the trajectory to be **bitwise** equal to an uninterrupted run (same jitted step
function, same inputs: any difference is a restore error, so no tolerance). The restored
state must have the same tree structure and the same NamedTuple types as the saved one.

Negative controls: restoring into the abstract tree of another optimizer or of another
shape raises; a state perturbed by one ulp in one leaf diverges from the uninterrupted run
(so the bitwise comparison has power).
"""

from __future__ import annotations

import _zoo
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

K, N = 2, 2
pytestmark = pytest.mark.filterwarnings("ignore:.*rank .* exceeds min:UserWarning")


def _tree(entry: _zoo.Entry, seed: int) -> dict:
    """A tiny tree for ``entry`` plus a leaf ``frozen/w`` that ``optax.partition`` freezes."""
    rng = np.random.default_rng(seed)

    def arr(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    if entry.tree == "routed":
        body = _zoo.nest({p: arr(*s) for p, s in _zoo.routed_shapes(4, 5, 3, 2).items()})
    else:
        kinds = {"matrix_0": (3, 4), "stacked3_1": (2, 2, 3), "vector_2": (4,)}
        body = {k: arr(*s) for k, s in kinds.items() if _zoo.kind_of(k) in entry.kinds}
    return {"body": body, "frozen": {"w": arr(2, 3)}}


def _labels(params: dict) -> dict:
    return {
        "body": jax.tree.map(lambda _: "opt", params["body"]),
        "frozen": jax.tree.map(lambda _: "frozen", params["frozen"]),
    }


def _optimizer(entry: _zoo.Entry) -> optax.GradientTransformation:
    inner = entry.build()
    return optax.partition({"opt": inner, "frozen": optax.set_to_zero()}, _labels)


def _step_fn(entry: _zoo.Entry, tx: optax.GradientTransformation):
    @jax.jit
    def step(params, state, grads, extra):
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    def run(params, state, t):
        grads = jax.tree.map(lambda p: jnp.sin(p * (t + 1.0)) + 0.1 * (t + 1), params)
        return step(params, state, grads, entry.extra(t, 1.0))

    return run


def _namedtuple_types(tree) -> list[str]:
    """Qualified names of every NamedTuple node of ``tree``, in order."""
    out = []

    def visit(x):
        if isinstance(x, tuple) and hasattr(x, "_fields"):
            out.append(type(x).__qualname__)
            for y in x:
                visit(y)
        elif isinstance(x, (tuple, list)):
            for y in x:
                visit(y)
        elif isinstance(x, dict):
            for k in sorted(x):
                visit(x[k])

    visit(tree)
    return out


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def _bitwise_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype
        and np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        for x, y in zip(la, lb, strict=True)
    )


@pytest.fixture(scope="module")
def checkpointer():
    ckptr = ocp.StandardCheckpointer()
    yield ckptr
    ckptr.close()


#: run in the default suite (one per state family); the rest are slow-marked (~2 s each)
DEFAULT = (
    "muon",
    "fismo",
    "galore",
    "natural_galore",
    "egn",
    "symmetry_compatible",
    "discard_stale",
    "skip_nonfinite",
)


@pytest.mark.parametrize(
    "name", [n if n in DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in _zoo.REGISTRY]
)
def test_restored_state_continues_bitwise(name, tmp_path, checkpointer):
    entry = _zoo.REGISTRY[name]
    params0 = _tree(entry, seed=0)
    tx = _optimizer(entry)
    run = _step_fn(entry, tx)
    params, state = params0, tx.init(params0)
    for t in range(K):
        params, state = run(params, state, t)
    path = tmp_path / "ckpt"
    checkpointer.save(path, {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()

    fresh = {"params": params0, "opt_state": _optimizer(entry).init(params0)}
    restored = checkpointer.restore(path, _abstract(fresh))
    assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(state), name
    assert _namedtuple_types(restored["opt_state"]) == _namedtuple_types(state), name

    p_a, s_a = params, state
    p_b, s_b = restored["params"], restored["opt_state"]
    for t in range(K, K + N):
        p_a, s_a = run(p_a, s_a, t)
        p_b, s_b = run(p_b, s_b, t)
    assert _bitwise_equal(p_a, p_b), f"{name}: params differ after restore"
    assert _bitwise_equal(s_a, s_b), f"{name}: optimizer state differs after restore"


def test_restore_into_another_optimizer_or_shape_raises(tmp_path, checkpointer):
    muon = _zoo.REGISTRY["muon"]
    params = _tree(muon, seed=0)
    state = _optimizer(muon).init(params)
    checkpointer.save(tmp_path / "muon", {"params": params, "opt_state": state})
    checkpointer.wait_until_finished()
    lion = _zoo.REGISTRY["lion"]
    other = {"params": params, "opt_state": _optimizer(lion).init(_tree(lion, seed=0))}
    with pytest.raises((ValueError, KeyError)):
        checkpointer.restore(tmp_path / "muon", _abstract(other))
    wider = jax.tree.map(
        lambda x: jnp.zeros(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype) if x.ndim else x, params
    )
    with pytest.raises(ValueError):
        checkpointer.restore(tmp_path / "muon", _abstract({"params": wider, "opt_state": state}))


def test_perturbed_state_diverges():
    # control for the bitwise check: one ulp in one momentum entry changes the trajectory
    entry = _zoo.REGISTRY["muon"]
    params = _tree(entry, seed=0)
    tx = _optimizer(entry)
    run = _step_fn(entry, tx)
    params, state = run(params, tx.init(params), 0)
    # every floating state entry x1.5 (momenta, Adam moments): a state restored wrong this way
    perturbed = jax.tree.map(
        lambda x: x * 1.5 if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, state
    )
    p_a, _ = run(params, state, 1)
    p_b, _ = run(params, perturbed, 1)
    assert not _bitwise_equal(p_a, p_b)
