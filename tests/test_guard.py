"""optzoo.guard: a non-finite batch mid-run must leave no trace."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optzoo import guard, testing


def _params():
    return {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}


def _grads(n, bad=(), value=np.nan):
    out = []
    for t in range(n):
        rng = np.random.default_rng(t)
        g = {
            "w": rng.standard_normal((4, 3)).astype(np.float32),
            "b": rng.standard_normal(3).astype(np.float32),
        }
        if t in bad:
            g["w"][1, 2] = value
        out.append(jax.tree.map(jnp.asarray, g))
    return out


def _run(tx, grads):
    params, state = _params(), tx.init(_params())
    step = jax.jit(tx.update)
    for g in grads:
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
    return params, state


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_skip_equals_run_without_the_bad_batch(value):
    inner = optax.adamw(1e-2, weight_decay=0.1)
    grads = _grads(8, bad=(3,), value=value)
    guarded, state = _run(guard.skip_nonfinite(inner), grads)
    clean = [g for t, g in enumerate(grads) if t != 3]
    reference, _ = _run(inner, clean)
    for a, b in zip(jax.tree.leaves(guarded), jax.tree.leaves(reference), strict=True):
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise: same ops
    assert int(state.skipped) == 1 and int(state.consecutive) == 0


def test_unguarded_run_is_poisoned():
    # negative control: without the guard one NaN batch ruins the momentum for good
    params, _ = _run(optax.adamw(1e-2), _grads(8, bad=(3,)))
    assert not np.all(np.isfinite(np.asarray(params["w"])))


def test_skip_matches_optax_apply_if_finite():
    inner = optax.sgd(0.1, momentum=0.9)
    grads = _grads(6, bad=(1, 2))
    a, _ = _run(guard.skip_nonfinite(inner), grads)
    b, _ = _run(optax.apply_if_finite(inner, max_consecutive_errors=100), grads)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_zero_mode_steps_with_zero_gradient():
    inner = optax.sgd(0.1, momentum=0.9)
    grads = _grads(5, bad=(2,))
    a, state = _run(guard.skip_nonfinite(inner, mode="zero"), grads)
    zeroed = [jax.tree.map(jnp.zeros_like, g) if t == 2 else g for t, g in enumerate(grads)]
    b, _ = _run(inner, zeroed)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(state.skipped) == 1


def test_max_consecutive_lets_persistent_failure_through():
    tx = guard.skip_nonfinite(optax.sgd(0.1), max_consecutive=2)
    params, state = _run(tx, _grads(4, bad=(1, 2, 3)))
    assert int(state.skipped) == 3 and int(state.consecutive) == 3
    assert not np.all(np.isfinite(np.asarray(params["w"])))  # third bad step applied


def _stepwise(tx, grads):
    """Per-step updates and (skipped, consecutive) counters of ``tx`` on ``grads``."""
    params, state = _params(), tx.init(_params())
    step = jax.jit(tx.update)
    rows = []
    for g in grads:
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
        rows.append((u, state))
    return params, rows


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_max_consecutive_has_optax_apply_if_finite_semantics(k):
    """``max_consecutive=k`` protects exactly ``k`` bad steps in a row, like optax.

    Old code: protect while ``consecutive < k`` (k - 1 protected; k = 1 never protected and
    k = 0 refused). Repro: ``skip_nonfinite(sgd(.1), max_consecutive=1)`` on one NaN batch
    applied it (params NaN) where ``optax.apply_if_finite(sgd(.1), 1)`` skipped it.
    """
    # Runs of 1, 2, 3 and 4 bad steps separated by good ones: every k meets runs shorter,
    # equal to and longer than itself.
    bad = (1, 3, 4, 6, 7, 8, 10, 11, 12, 13)
    grads = _grads(15, bad=bad)
    inner = optax.sgd(0.1, momentum=0.9)
    _, ours = _stepwise(guard.skip_nonfinite(inner, max_consecutive=k), grads)
    _, ref = _stepwise(optax.apply_if_finite(inner, max_consecutive_errors=k), grads)

    def moved(u):  # a let-through bad step moves the parameters (by NaN)
        return any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(u))

    applied_ours, applied_ref = [], []
    for t, ((u, s), (v, r)) in enumerate(zip(ours, ref, strict=True)):
        # identical updates (NaN in the same places once both give up)
        for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert int(s.skipped) == int(r.total_notfinite)
        assert int(s.consecutive) == int(r.notfinite_count)
        assert bool(s.last_finite) == bool(r.last_finite)
        if t in bad and moved(u):
            applied_ours.append(t)
        if t in bad and moved(v):
            applied_ref.append(t)
    assert applied_ours == applied_ref
    # when it gives up: the (k+1)-th bad step of a run and later ones get through
    runs = [(1,), (3, 4), (6, 7, 8), (10, 11, 12, 13)]
    expected = [t for run in runs for i, t in enumerate(run) if i >= k]
    assert applied_ours == expected, (k, applied_ours)


def test_max_consecutive_one_protects_a_single_bad_step():
    """Negative control for the fix: the old ``k = 1`` let the only bad step through."""
    tx = guard.skip_nonfinite(optax.sgd(0.1), max_consecutive=1)
    params, state = _run(tx, _grads(4, bad=(1,)))
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(params))
    assert int(state.skipped) == 1 and int(state.consecutive) == 0


def _leaf_pointers(tree):
    return [x.unsafe_buffer_pointer() for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]


@pytest.mark.parametrize("mode", ["skip", "zero"])
def test_eager_state_can_be_donated(mode):
    """No buffer appears twice in the state, so ``donate_argnums`` works on an eager init.

    Old code: ``init`` put one ``zeros([], int32)`` in ``skipped`` and ``consecutive``; repro
    ``jax.jit(tx.update, donate_argnums=1)(g, tx.init(p), p)`` raised XLA's "Attempt to
    donate the same buffer twice".
    """
    tx = guard.skip_nonfinite(optax.adamw(1e-2), mode=mode, max_consecutive=3)
    params = _params()
    state = tx.init(params)
    pointers = _leaf_pointers(state)
    assert len(pointers) == len(set(pointers))
    step = jax.jit(tx.update, donate_argnums=(1,))
    for g in _grads(3, bad=(1,)):
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
    assert int(state.skipped) == 1
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(params))


def test_counters_saturate_instead_of_wrapping():
    tx = guard.skip_nonfinite(optax.sgd(0.1))
    state = tx.init(_params())
    big = jnp.asarray(np.iinfo(np.int32).max, jnp.int32)
    state = state._replace(skipped=big, consecutive=jnp.array(big))
    _, state = jax.jit(tx.update)(_grads(1, bad=(0,))[0], state, _params())
    assert int(state.skipped) == int(big) and int(state.consecutive) == int(big)


def test_nonfinite_extra_args_are_guarded_and_other_leaves_ignored():
    """A NaN in a floating extra argument is a bad step; integer leaves/callables are fine."""

    def reads_batch():
        def update(updates, state, params=None, *, batch, **extra):
            del params, extra
            x, _ = batch
            return jax.tree.map(lambda u: u + jnp.sum(x), updates), state

        return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)

    grads = _grads(1)[0]
    labels = jnp.arange(3)
    bad_x = jnp.array([1.0, np.nan])
    for mode in ("skip", "zero"):
        tx = guard.skip_nonfinite(reads_batch(), mode=mode)
        u, s = tx.update(
            grads, tx.init(_params()), _params(), batch=(bad_x, labels), fn=lambda v: v
        )
        assert int(s.skipped) == 1
        assert all(bool(jnp.all(v == 0)) for v in jax.tree.leaves(u))
        u, s = tx.update(grads, tx.init(_params()), _params(), batch=(jnp.ones(2), labels))
        assert int(s.skipped) == 0
    # negative control: gradients-only checking lets the NaN batch through
    tx = guard.skip_nonfinite(reads_batch(), check_extra_args=False)
    u, s = tx.update(grads, tx.init(_params()), _params(), batch=(bad_x, labels))
    assert int(s.skipped) == 0 and not bool(jnp.all(jnp.isfinite(u["w"])))


def test_battery_and_bad_args():
    testing.check_optax_compatibility(
        lambda learning_rate: guard.skip_nonfinite(optax.adam(learning_rate)),
        dict(learning_rate=1e-2),
        _params(),
    )
    with pytest.raises(ValueError, match="mode"):
        guard.skip_nonfinite(optax.sgd(0.1), mode="drop")
    with pytest.raises(ValueError, match="max_consecutive"):
        guard.skip_nonfinite(optax.sgd(0.1), max_consecutive=-1)
    with pytest.raises(TypeError, match="max_consecutive"):
        guard.skip_nonfinite(optax.sgd(0.1), max_consecutive=2.5)
    with pytest.raises(ValueError, match="check_extra_args"):
        guard.skip_nonfinite(optax.sgd(0.1), check_extra_args="yes")
    with pytest.raises(TypeError, match="inner"):
        guard.skip_nonfinite(lambda g: g)
