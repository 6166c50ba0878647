"""Ringmaster LMO (optzoo.ringmaster) and the heterogeneous-worker simulator (ringmaster_sim).

Oracles: float64 numpy re-derivations of the momentum-LMO recursion (polar factor by numpy
SVD via ``optzoo.testing.polar_reference``) and of plain asynchronous training (an
independent numpy event loop), sequential runs of the same transform, closed-form schedules.
"""

from __future__ import annotations

import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings

from experiments.demos import ringmaster_demo
from optzoo import ringmaster_sim as sim
from optzoo import testing
from optzoo.layout import MatrixLayout
from optzoo.ringmaster import (
    DiscardStaleState,
    agnostic_beta,
    agnostic_delay_threshold,
    agnostic_learning_rate,
    delay_threshold_at,
    discard_stale,
    ringmaster,
    ringmaster_agnostic,
    scale_by_ringmaster_lmo,
)


def _normal(seed, shape, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _params():
    return {
        "w": jnp.asarray(_normal(0, (4, 6))),
        "s": jnp.asarray(_normal(1, (2, 5, 3))),
        "b": jnp.asarray(_normal(2, (6,))),
    }


def _grads(params, steps, seed=10):
    return [
        {
            k: jnp.asarray(_normal(seed + 7 * t + i, v.shape))
            for i, (k, v) in enumerate(sorted(params.items()))
        }
        for t in range(steps)
    ]


# ------------------------------------------------------------- numpy re-derivations
def _np_lmo(x, lmo, leaf_is_matrix):
    if lmo == "sign":
        return {k: np.sign(v) for k, v in x.items()}
    if lmo == "normalized":
        norm = math.sqrt(sum(float(np.sum(v**2)) for v in x.values()))
        return {k: v / norm for k, v in x.items()}
    out = {}
    for k, v in x.items():
        if leaf_is_matrix[k]:
            m, n = v.shape[-2:]
            out[k] = testing.polar_reference(v) * math.sqrt(max(1.0, n / m))
        else:
            out[k] = v  # vector_lmo='momentum'
    return out


def _np_momentum_lmo(params, grads, lr, beta_fn, nesterov, lmo):
    """Sequential Ringmaster LMO in float64: m ← βm + (1−β)g; x ← x − η_k·(−lmo)(input)."""
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    is_matrix = {k: v.ndim >= 2 for k, v in w.items()}
    for k, g in enumerate(grads):
        b = beta_fn(k)
        g = {key: np.asarray(v, np.float64) for key, v in g.items()}
        m = {key: b * m[key] + (1 - b) * g[key] for key in w}
        inp = {key: b * m[key] + (1 - b) * g[key] for key in w} if nesterov else m
        d = _np_lmo(inp, lmo, is_matrix)
        eta = lr(k) if callable(lr) else lr
        w = {key: w[key] - eta * d[key] for key in w}
    return w


def _run(tx, params, grads):
    step = jax.jit(
        lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p))
    )
    s = tx.init(params)
    for g in grads:
        params, s = step(params, s, g)
    return params


def _close(a, b, rtol):
    for k in b:
        np.testing.assert_allclose(
            np.asarray(a[k], np.float64), b[k], rtol=rtol, atol=rtol * np.abs(b[k]).max(), err_msg=k
        )


@pytest.mark.parametrize("nesterov", [False, True])
def test_spectral_update_matches_numpy_polar_recursion(nesterov):
    params = _params()
    grads = _grads(params, 4)
    # 's' is a stack of two 5x3 matrices: an explicit layout (the default refuses >2-D).
    layout = {"w": MatrixLayout(), "s": MatrixLayout(), "b": None}
    tx = ringmaster(0.1, "spectral", beta=0.8, nesterov=nesterov, ortho_method="svd", layout=layout)
    got = _run(tx, params, grads)
    want = _np_momentum_lmo(params, grads, 0.1, lambda k: 0.8, nesterov, "spectral")
    # float32 SVD polar of well-conditioned Gaussian matrices: ~1e-6 relative per step.
    _close(got, want, 1e-4)


@pytest.mark.parametrize("lmo", ["sign", "normalized"])
def test_agnostic_schedules_match_numpy_recursion(lmo):
    params = _params()
    grads = _grads(params, 6, seed=40)
    got = _run(ringmaster_agnostic(0.5, lmo), params, grads)
    want = _np_momentum_lmo(
        params,
        grads,
        lambda k: 0.5 / (k + 1) ** 0.75,
        lambda k: 0.0 if k == 0 else 1 - 1 / math.sqrt(k),
        False,
        lmo,
    )
    # sign: exact up to float32 rounding of the iterate; normalized: ~1e-6 relative.
    _close(got, want, 1e-5)


def test_schedules_closed_forms():
    ks = np.arange(10)
    np.testing.assert_allclose(
        np.asarray(agnostic_beta(ks)), [0, 0] + [1 - 1 / math.sqrt(k) for k in ks[2:]], rtol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(agnostic_learning_rate(2.0)(ks)), 2.0 / (ks + 1) ** 0.75, rtol=1e-6
    )
    assert [agnostic_delay_threshold(k) for k in range(10)] == [1, 1, 1, 1, 2, 2, 2, 2, 2, 3]
    assert delay_threshold_at(None, 5) == math.inf
    assert delay_threshold_at("agnostic", 16) == 4
    assert delay_threshold_at(lambda k: k + 1, 3) == 4
    with pytest.raises(ValueError, match=">= 1"):
        delay_threshold_at(0, 0)
    with pytest.raises(ValueError, match="agnostic"):
        delay_threshold_at("sqrt", 0)


# -------------------------------------------------------------------- simulator
def _quadratic(noise=0.1, dim=(4, 3)):
    h = jnp.asarray(np.diag(np.linspace(0.2, 1.0, dim[0])), jnp.float32)
    target = jnp.asarray(_normal(5, dim))

    def grad_fn(p, key):
        d = p["x"] - target
        g = h @ d + noise * jax.random.normal(key, d.shape)
        return 0.5 * jnp.sum(d * (h @ d)), {"x": g}

    return {"x": jnp.zeros(dim, jnp.float32)}, grad_fn, h, target


@pytest.mark.parametrize("cancel_stale", [True, False])
def test_equal_times_and_threshold_one_is_sequential_momentum_lmo(cancel_stale):
    params, grad_fn, _, _ = _quadratic()
    n, steps = 4, 6
    tx = ringmaster(0.05, "spectral", beta=0.9, nesterov=True)
    res = sim.simulate(
        tx,
        params,
        grad_fn,
        sim.fixed_times(n),
        delay_threshold=1,
        cancel_stale=cancel_stale,
        max_updates=steps,
    )
    jobs = [t["job"] for t in res.trace]
    # All workers finish together; worker 0 wins every tie, the rest are stale (delay 1):
    # cancelled and restarted (stops) or discarded on arrival; each round starts n new jobs.
    assert jobs == [n * k for k in range(steps)]
    assert all(t["delay"] == 0 for t in res.trace)
    if cancel_stale:
        assert (res.grads_computed, res.jobs_cancelled) == (steps, (n - 1) * steps)
    else:
        assert (res.grads_computed, res.grads_discarded) == (
            n * steps - (n - 1),
            (n - 1) * (steps - 1),
        )
    # The same transform run sequentially on the same gradient draws: bit for bit.
    key0 = jax.random.PRNGKey(0)
    seq, s = params, tx.init(params)
    step = jax.jit(
        lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(
            *optax.with_extra_args_support(tx).update(g, s, p, delay=jnp.asarray(0, jnp.int32))
        )
    )
    grad_job = jax.jit(lambda p, j: grad_fn(p, jax.random.fold_in(key0, j)))
    for j in jobs:
        seq, s = step(seq, s, grad_job(seq, jnp.asarray(j, jnp.int32))[1])
    np.testing.assert_array_equal(np.asarray(res.params["x"]), np.asarray(seq["x"]))


def _np_async(x0, grad, taus, lr, beta, steps):
    """Plain asynchronous momentum-sign in float64: events in (finish time, worker) order."""
    x, m = np.asarray(x0, np.float64), np.zeros(np.shape(x0))
    snap = [x.copy() for _ in taus]
    start_k = [0] * len(taus)
    finish = list(taus)
    traj, delays = [], []
    for k in range(steps):
        i = min(range(len(taus)), key=lambda j: (finish[j], j))
        g = grad(snap[i])
        m = beta * m + (1 - beta) * g
        x = x - lr * np.sign(m)
        traj.append(x.copy())
        delays.append(k - start_k[i])
        snap[i], start_k[i], finish[i] = x.copy(), k + 1, finish[i] + taus[i]
    return traj, delays


def test_no_threshold_is_plain_asynchronous_training():
    params, grad_fn, h, target = _quadratic(noise=0.0)
    taus = [1.0, 1.37, 2.91]  # no exact ties within the horizon
    tx = ringmaster(0.05, "sign", beta=0.5)
    res = sim.simulate(
        tx,
        params,
        grad_fn,
        sim.fixed_times(3, taus),
        delay_threshold=None,
        max_updates=25,
        record_params=True,
    )
    hn, tn = np.asarray(h, np.float64), np.asarray(target, np.float64)
    traj, delays = _np_async(params["x"], lambda x: hn @ (x - tn), taus, 0.05, 0.5, 25)
    assert [t["delay"] for t in res.trace] == delays
    assert max(delays) >= 2  # stale gradients really are applied
    for got, want in zip(res.params_trace, traj, strict=True):
        # float32 iterate vs float64 reference, sign steps of 0.05: rounding only.
        np.testing.assert_allclose(np.asarray(got["x"], np.float64), want, atol=1e-5)
    assert res.grads_discarded == res.jobs_cancelled == 0


PROFILES = {
    "fixed": lambda n: sim.fixed_times(n, [1.0 + 0.5 * i for i in range(n)]),
    "reference": sim.reference_times,
    "heterogeneous": lambda n: sim.heterogeneous_times(n, 3.0),
    "random": lambda n: sim.random_times(n, spread=1.5),
    "straggler": lambda n: sim.straggler_times(n, n_slow=1, slowdown=8.0, stall_prob=0.2),
}


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    profile=st.sampled_from(sorted(PROFILES)),
    n=st.integers(2, 6),
    threshold=st.sampled_from([1, 2, 3, 5, "agnostic"]),
    cancel=st.booleans(),
    seed=st.integers(0, 3),
)
def test_applied_delays_are_always_below_the_threshold(profile, n, threshold, cancel, seed):
    params, grad_fn, _, _ = _quadratic()
    res = sim.simulate(
        ringmaster(0.05, "sign", beta=0.5),
        params,
        grad_fn,
        PROFILES[profile](n),
        delay_threshold=threshold,
        cancel_stale=cancel,
        max_grads=40,
        seed=seed,
    )
    for k, t in enumerate(res.trace):
        assert t["threshold"] == delay_threshold_at(threshold, k)
        assert t["delay"] < t["threshold"]
    assert res.grads_computed == res.grads_applied + res.grads_discarded
    if cancel:  # with stops nothing stale is ever completed
        assert res.grads_discarded == 0


def test_without_threshold_delays_exceed_those_thresholds():
    # Negative control for the test above: the same profiles do produce large delays.
    params, grad_fn, _, _ = _quadratic()
    res = sim.simulate(
        ringmaster(0.05, "sign", beta=0.5),
        params,
        grad_fn,
        sim.heterogeneous_times(6, 3.0),
        max_grads=60,
    )
    assert max(t["delay"] for t in res.trace) >= 6


def test_discard_stale_gate_is_the_same_server_rule():
    params, grad_fn, _, _ = _quadratic()
    inner = ringmaster(0.05, "spectral", beta=0.9)
    gate = discard_stale(inner, 2)
    g = _grads(params, 1)[0]
    s0 = gate.init(params)
    u, s1 = gate.update(g, s0, params, delay=2)  # stale: rejected
    assert all(bool(jnp.all(v == 0)) for v in jax.tree.leaves(u))
    assert int(s1.discarded) == 1 and int(s1.count) == 0
    for a, b in zip(jax.tree.leaves(s1.inner), jax.tree.leaves(s0.inner), strict=True):
        np.testing.assert_array_equal(a, b)
    u, s2 = gate.update(g, s1, params, delay=1)  # fresh enough: exactly the inner update
    want, _ = inner.update(g, inner.init(params), params)
    np.testing.assert_array_equal(u["x"], want["x"])
    assert int(s2.count) == 1
    # In the simulator, the gate without stops == the simulator's own rule without stops.
    times = sim.heterogeneous_times(5, 2.0)
    a = sim.simulate(gate, params, grad_fn, times, cancel_stale=False, max_time=25.0)
    b = sim.simulate(
        inner, params, grad_fn, times, delay_threshold=2, cancel_stale=False, max_time=25.0
    )
    assert isinstance(a.opt_state, DiscardStaleState)
    assert (a.updates, a.grads_discarded) == (b.updates, b.grads_discarded) != (a.updates, 0)
    assert [t["job"] for t in a.trace] == [t["job"] for t in b.trace]
    # Same updates in the same order; the gate's jnp.where compiles into a different XLA
    # program, so float32 results may differ in the last bits (measured 6e-7 absolute).
    np.testing.assert_allclose(np.asarray(a.params["x"]), np.asarray(b.params["x"]), atol=1e-5)
    agn = discard_stale(inner, "agnostic")
    s = agn.init(params)
    for _ in range(4):  # k = 0..3: R_k = 1, so delay 1 is rejected and delay 0 accepted
        _, s = agn.update(g, s, params, delay=1)
        _, s = agn.update(g, s, params, delay=0)
    assert (int(s.count), int(s.discarded)) == (4, 4)
    _, s = agn.update(g, s, params, delay=1)  # k = 4: R_4 = 2
    assert int(s.count) == 5


def test_synchronous_mode_averages_and_waits_for_the_slowest():
    params, grad_fn, _, _ = _quadratic()
    tx = ringmaster(0.05, "normalized", beta=0.0)
    res = sim.simulate(
        tx,
        params,
        grad_fn,
        sim.fixed_times(3, [1.0, 2.0, 3.0]),
        synchronous=True,
        max_time=10.0,
        max_updates=1,
    )
    assert (res.updates, res.grads_computed, res.trace[0]["time"]) == (1, 3, 3.0)
    key0 = jax.random.PRNGKey(0)
    g = [grad_fn(params, jax.random.fold_in(key0, j))[1]["x"] for j in range(3)]
    u, _ = tx.update({"x": (g[0] + g[1] + g[2]) / 3}, tx.init(params), params)
    np.testing.assert_allclose(res.params["x"], params["x"] + u["x"], rtol=1e-6, atol=1e-7)
    full = sim.simulate(
        tx,
        params,
        grad_fn,
        sim.fixed_times(3, [1.0, 2.0, 3.0]),
        synchronous=True,
        max_time=10.0,
        eval_fn=lambda p: grad_fn(p, key0)[0],
        eval_interval=2.5,
    )
    assert full.updates == 3 and full.time == 10.0
    assert [h["time"] for h in full.history] == [0.0, 2.5, 5.0, 7.5, 10.0]


# ------------------------------------------------------ optax contract, symmetries
def test_equivariance_with_negative_controls():
    shape = (5, 7)
    params = {"w": jnp.asarray(_normal(3, shape))}
    grads = [{"w": jnp.asarray(_normal(20 + t, shape))} for t in range(3)]
    bi = testing.per_leaf({"w": testing.bi_orthogonal(shape, seed=1)})
    signed = testing.per_leaf({"w": testing.signed_permutation(shape, seed=2)})
    spectral = ringmaster(0.1, "spectral", beta=0.9, ortho_method="svd")
    sign = ringmaster(0.1, "sign", beta=0.9)
    # Exact algebraic equivariance; float32 SVD / rounding: 1e-5 relative.
    testing.check_equivariance(spectral, params, grads, bi, rtol=1e-5)
    testing.check_equivariance(sign, params, grads, signed, rtol=1e-6)
    assert testing.equivariance_error(optax.adam(0.1), params, grads, bi) > 1e-2
    assert testing.equivariance_error(sign, params, grads, bi) > 1e-2


# ------------------------------------------------------------------------ errors
def test_bad_configuration_errors():
    params, grad_fn, _, _ = _quadratic()
    with pytest.raises(ValueError, match="max_updates"):
        sim.simulate(ringmaster(0.1), params, grad_fn, sim.fixed_times(2))
    with pytest.raises(ValueError, match=">= 1"):
        sim.simulate(
            ringmaster(0.1), params, grad_fn, sim.fixed_times(2), delay_threshold=0, max_updates=1
        )
    with pytest.raises(ValueError, match="positive"):
        sim.ComputeTimes((1.0, 0.0))
    with pytest.raises(ValueError, match="jitter"):
        sim.ComputeTimes((1.0,), jitter="gamma")
    with pytest.raises(ValueError, match="lmo"):
        ringmaster(0.1, "frobenius")
    with pytest.raises(ValueError, match="beta"):
        ringmaster(0.1, beta=1.5)
    with pytest.raises(ValueError, match="delay_threshold"):
        discard_stale(ringmaster(0.1), lambda k: 2)
    strict = scale_by_ringmaster_lmo(0.9, "spectral", vector_lmo=None)
    p = {"w": jnp.ones((3, 3)), "bias": jnp.ones(3)}
    with pytest.raises(ValueError, match="'bias'"):
        strict.update(p, strict.init(p))
    with pytest.raises(TypeError, match="'w'"):
        ringmaster(0.1).init({"w": jnp.ones((2, 2), jnp.int32)})


# ------------------------------------------------------------------- demo code path
def test_demo_sweep_code_path(tmp_path):
    problem = ringmaster_demo.quadratic_problem(dim=8)
    methods = ["ringmaster", "rennala", "delay_adaptive", "single_worker"]
    results = ringmaster_demo.sweep(
        problem,
        n_workers=3,
        profiles=["h=0", "h=4"],
        methods=methods,
        lrs={m: [0.05] for m in methods},
        knobs={"R": [2], "S": [2]},
        max_time=12.0,
        eval_interval=4.0,
        tune_seeds=[0],
        eval_seeds=[1, 2],
    )
    for prof in ("h=0", "h=4"):
        res = results[prof]
        assert res["advantage"]["vs"] in ("rennala", "delay_adaptive")
        assert np.isfinite(res["advantage"]["geo_mean_paired"])
        rm = res["methods"]["ringmaster"]
        assert all(r["max_delay"] < 2 for r in rm["runs"])
        assert rm["runs"][0]["history"][-1]["time"] == 12.0
        assert sum(rm["applied_per_worker_mean"]) > 0
        assert res["methods"]["single_worker"]["workers_contributing"] == 1
    # h = 0: everyone contributes; h = 4 (tau_1 = 5): Ringmaster's R = 2 cancels the others.
    assert results["h=0"]["methods"]["ringmaster"]["workers_contributing"] == 3
    assert results["h=4"]["methods"]["ringmaster"]["fraction_from_fastest"] == 1.0
    assert results["h=4"]["methods"]["delay_adaptive"]["workers_contributing"] == 3
    mean, half = ringmaster_demo.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and abs(half - 4.303 * 1.0 / np.sqrt(3)) < 1e-3  # t_{0.975, 2}
    ringmaster_demo.plot(results, "quadratic", str(tmp_path / "q.png"), "loss")
    assert (tmp_path / "q.png").stat().st_size > 0
