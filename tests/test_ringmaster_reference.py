"""Ringmaster against the authors' released simulation code (vectozavr/ringmaster-lmo,
commit c2ebc8a, ``src/asynchronous/algorithm.py``: ``ParameterAgnosticRingmasterMuonASGD``,
``RennalaMuonSGD``, ``DelayAdaptiveMuonASGD``; the NanoChat runner ``ringmaster.py``).

The numpy ports below are written from reading that code (own words, float64, deterministic
worker times so both event loops see the same clock). The LMO is the exact polar factor by
SVD on both sides (the reference uses 5 Polar Express steps; the server *loop* is what is
tested here, the direction map is tested in tests/test_ringmaster.py).
"""

from __future__ import annotations

import heapq
import math

import jax.numpy as jnp
import numpy as np
import pytest

from optzoo import ringmaster_sim as sim
from optzoo.ringmaster import ringmaster, ringmaster_agnostic

# Incommensurate job times: no two events coincide within the horizons used here.
TAUS = (1.0, 1.2247, 1.7321, 2.2361)
DIM = (4, 4)  # square: the Muon shape factor is 1 on both sides


def _problem():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((DIM[0], DIM[0])))
    h = (q * np.linspace(0.3, 1.0, DIM[0])) @ q.T
    target = rng.standard_normal(DIM)

    def np_grad(x):
        return h @ (x - target)

    hj, tj = jnp.asarray(h, jnp.float32), jnp.asarray(target, jnp.float32)

    def grad_fn(p, key):
        del key
        d = p["x"] - tj
        return 0.5 * jnp.sum(d * (hj @ d)), {"x": hj @ d}

    return np_grad, grad_fn


def _polar(a):
    u, _, vt = np.linalg.svd(a, full_matrices=False)
    return u @ vt


def _reference_agnostic(np_grad, eta, steps, *, shift=0):
    """The parameter-agnostic Ringmaster Muon server of the reference, in float64.

    Every arrival is applied with ``η/(k+1)^{3/4}`` and ``β = 1 − α``; then all delays
    grow by one (the sender's resets to 0) and every worker whose delay reached the
    threshold is restarted at the new iterate; only *after* that are ``α = 1/√k`` and the
    threshold ``max(1, ⌊1/α⌋)`` refreshed with the new count. So the cancellation that
    follows update ``k → k+1`` uses ``R_k = max(1, ⌊√k⌋)``. ``shift=1`` is the off-by-one
    (``R_{k+1}``) — the negative control.
    """
    n = len(TAUS)
    x = np.zeros(DIM)
    mom = np.zeros(DIM)
    snap = [x.copy() for _ in range(n)]
    delays = np.zeros(n, int)
    heap = [(TAUS[i], i) for i in range(n)]
    heapq.heapify(heap)
    alpha, k = 1.0, 0
    log, cancelled = [], 0
    while k < steps:
        now, i = heapq.heappop(heap)
        g = np_grad(snap[i])
        beta = 1.0 - alpha
        mom = beta * mom + (1 - beta) * g
        x = x - eta / (k + 1) ** 0.75 * _polar(beta * mom + (1 - beta) * g)
        log.append((i, int(delays[i]), x.copy()))
        k += 1
        snap[i] = x.copy()
        heapq.heappush(heap, (now + TAUS[i], i))
        delays += 1
        delays[i] = 0
        threshold = max(1, math.isqrt(k - 1 + shift))
        stale = [j for j in range(n) if delays[j] >= threshold]
        if stale:
            heap = [e for e in heap if e[1] not in stale]
            for j in stale:
                delays[j] = 0
                snap[j] = x.copy()
                heap.append((now + TAUS[j], j))
                cancelled += 1
            heapq.heapify(heap)
        alpha = 1.0 / math.sqrt(k)
    return log, cancelled


def test_agnostic_cancellation_matches_the_reference_server_loop():
    """Parameter-agnostic Ringmaster: worker order, delays, cancellations and iterates equal
    the reference loop's over 30 arrivals.

    Before the fix the simulator cancelled with ``R_{k+1}`` (the count after the update):
    the (worker, delay) sequence departed from the reference at the 5th update (index 4;
    repro: this test on optzoo 985adad). The port with the off-by-one cancels 20 jobs in
    these 30 updates, the reference rule 23.
    """
    np_grad, grad_fn = _problem()
    steps = 30
    want, want_cancelled = _reference_agnostic(np_grad, 0.3, steps)
    off, off_cancelled = _reference_agnostic(np_grad, 0.3, steps, shift=1)
    # Negative control: the off-by-one rule really is a different schedule here.
    assert [w[:2] for w in off] != [w[:2] for w in want]
    assert off_cancelled != want_cancelled
    res = sim.simulate(
        ringmaster_agnostic(0.3, "spectral", nesterov=True, ortho_method="svd"),
        {"x": jnp.zeros(DIM, jnp.float32)},
        grad_fn,
        sim.fixed_times(4, TAUS),
        delay_threshold="agnostic",
        max_updates=steps,
        record_params=True,
    )
    assert [(t["worker"], t["delay"]) for t in res.trace] == [w[:2] for w in want]
    assert res.jobs_cancelled == want_cancelled and res.grads_discarded == 0
    for got, (_, _, x) in zip(res.params_trace, want, strict=True):
        # float32 simulator vs float64 port, 30 SVD-polar steps of size <= 0.3: ~1e-6 drift.
        np.testing.assert_allclose(np.asarray(got["x"], np.float64), x, atol=2e-5)


def _muon_step(mom, g, beta):
    mom = beta * mom + (1 - beta) * g
    return mom, _polar(beta * mom + (1 - beta) * g)


def _reference_rennala(np_grad, lr, beta, batch, steps):
    """Rennala Muon of the reference: each round every worker starts at the current x (the
    reference resets all nodes); finished workers restart at the *same* x until ``batch``
    gradients are in; then one Muon step on their mean."""
    x, mom, now, log = np.zeros(DIM), np.zeros(DIM), 0.0, []
    for _ in range(steps):
        heap = [(now + TAUS[i], i) for i in range(len(TAUS))]
        heapq.heapify(heap)
        got = []
        while len(got) < batch:
            now, i = heapq.heappop(heap)
            got.append((i, np_grad(x)))
            heapq.heappush(heap, (now + TAUS[i], i))
        mom, d = _muon_step(mom, np.mean([g for _, g in got], axis=0), beta)
        x = x - lr * d
        log.append(([i for i, _ in got], now, x.copy()))
    return log


def _reference_delay_adaptive(np_grad, lr, beta, steps, adaptive=True):
    """Delay-adaptive asynchronous Muon of the reference: every arrival applied with step
    ``γ·n/max(n, δ)``; all delays grow by one per update, the sender's resets to 0."""
    n = len(TAUS)
    x, mom = np.zeros(DIM), np.zeros(DIM)
    snap = [x.copy() for _ in range(n)]
    delays = np.zeros(n, int)
    heap = [(TAUS[i], i) for i in range(n)]
    heapq.heapify(heap)
    log = []
    for _ in range(steps):
        now, i = heapq.heappop(heap)
        mom, d = _muon_step(mom, np_grad(snap[i]), beta)
        scale = n / max(n, delays[i]) if adaptive else 1.0
        x = x - lr * scale * d
        log.append((i, int(delays[i]), x.copy()))
        snap[i] = x.copy()
        heapq.heappush(heap, (now + TAUS[i], i))
        delays += 1
        delays[i] = 0
    return log


def test_rennala_mode_matches_the_reference_rennala_muon():
    """simulate(batch_size=S) == the reference RennalaMuonSGD loop: which workers fill each
    batch (fast ones several times), when it completes, and the iterates, over 8 rounds."""
    np_grad, grad_fn = _problem()
    want = _reference_rennala(np_grad, 0.1, 0.9, batch=6, steps=8)
    tx = ringmaster(0.1, "spectral", beta=0.9, nesterov=True, ortho_method="svd")
    res = sim.simulate(
        tx,
        {"x": jnp.zeros(DIM, jnp.float32)},
        grad_fn,
        sim.fixed_times(4, TAUS),
        batch_size=6,
        max_updates=8,
        record_params=True,
    )
    assert [t["workers"] for t in res.trace] == [w[0] for w in want]
    assert want[0][0].count(0) == 2  # the fastest worker hands in two gradients per batch
    np.testing.assert_allclose([t["time"] for t in res.trace], [w[1] for w in want], rtol=1e-12)
    for got, (_, _, x) in zip(res.params_trace, want, strict=True):
        np.testing.assert_allclose(np.asarray(got["x"], np.float64), x, atol=2e-5)
    assert res.applied_per_worker == [sum(w[0].count(i) for w in want) for i in range(4)]
    assert res.grads_applied == 48 and res.jobs_cancelled > 0


def test_delay_adaptive_matches_the_reference_delay_adaptive_muon():
    """delay_adaptive(tx, n) under simulate(R = ∞) == the reference DelayAdaptiveMuonASGD
    over 30 arrivals (delays up to 6 > n = 4, so the n/δ factor acts). Negative control:
    plain asynchronous Muon (no factor) departs from it."""
    from optzoo.ringmaster import delay_adaptive  # noqa: PLC0415

    np_grad, grad_fn = _problem()
    want = _reference_delay_adaptive(np_grad, 0.1, 0.9, 30)
    plain = _reference_delay_adaptive(np_grad, 0.1, 0.9, 30, adaptive=False)
    assert max(w[1] for w in want) > len(TAUS)
    assert np.abs(plain[-1][2] - want[-1][2]).max() > 1e-2
    tx = delay_adaptive(ringmaster(0.1, "spectral", beta=0.9, nesterov=True, ortho_method="svd"), 4)
    res = sim.simulate(
        tx,
        {"x": jnp.zeros(DIM, jnp.float32)},
        grad_fn,
        sim.fixed_times(4, TAUS),
        delay_threshold=None,
        max_updates=30,
        record_params=True,
    )
    assert [(t["worker"], t["delay"]) for t in res.trace] == [w[:2] for w in want]
    for got, (_, _, x) in zip(res.params_trace, want, strict=True):
        np.testing.assert_allclose(np.asarray(got["x"], np.float64), x, atol=2e-5)
    with pytest.raises(TypeError, match="'delays'"):
        tx.update({"x": jnp.zeros(DIM)}, tx.init({"x": jnp.zeros(DIM)}), delays=3)
