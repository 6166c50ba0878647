"""EF-Muon on the seed paper's counterexample, and against the authors' toy script.

Paper: Parshakova, Khaled, Crawshaw, Garrigos, Gower, *Muon Does Not Converge on Convex
Lipschitz Functions*, arXiv:2605.08980. Its toy script (found in the code index by the
functions ``sign_subgradient_descent``, ``sign_subgradient_descent_momentum`` and
``sign_subgradient_descent_ef_momentum``; repository name not exposed) works on the diagonal
``W = diag(w₁, w₂)`` of

    f(W) = c·|W₁₁ + W₂₂| + |W₁₁ − W₂₂|,

where Muon's polar factor of a diagonal (sub)gradient is its sign pattern, so Muon *is*
signed momentum. For ``c < 1`` a sign step never changes ``W₁₁ + W₂₂`` (both diagonal
entries of ``sign(G)`` are opposite), so ``f ≥ c·|W₁₁ + W₂₂|₀`` for every step-size schedule;
error feedback with the scaled-sign / spectral compressor converges.

The numpy port :func:`_toy_ef` is written from reading that script (own words). Its
convention ``sign(0) = s`` (here ``s = +1``) matters only at exact zeros of ``P``; optzoo's
compressors give 0 there. The iterates below never hit an exact zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optzoo import error_feedback as EF

W0 = np.diag([2.0, 1.0])  # W₁₁ + W₂₂ = 3: Muon's floor is f ≥ 3c


def _f(w, c):
    return c * abs(w[0, 0] + w[1, 1]) + abs(w[0, 0] - w[1, 1])


def _sgn(x, xp=np):
    return xp.where(x == 0, 1.0, xp.sign(x))


def _subgrad(w, c, xp=np):
    """c·sign(W₁₁+W₂₂)·I + sign(W₁₁−W₂₂)·diag(1, −1) (sign(0) = +1, the script's s)."""
    s1, s2 = _sgn(w[0, 0] + w[1, 1], xp), _sgn(w[0, 0] - w[1, 1], xp)
    return xp.diag(xp.stack([c * s1 + s2, c * s1 - s2])).astype(w.dtype)


def _run(tx, c, steps, w0=W0, *, trajectory=False):
    """``steps`` optimizer steps on f under one jitted scan: (final W, f_t, W₁₁+W₂₂ per step)
    and, with ``trajectory``, every iterate."""

    def body(carry, _):
        w, s = carry
        u, s = tx.update(_subgrad(w, c, jnp), s, w)
        w = optax.apply_updates(w, u)
        out = (c * jnp.abs(w[0, 0] + w[1, 1]) + jnp.abs(w[0, 0] - w[1, 1]), w[0, 0] + w[1, 1])
        return (w, s), (out, w if trajectory else None)

    w = jnp.asarray(w0, jnp.float32)
    (w, _), ((fs, sums), ws) = jax.jit(
        lambda w: jax.lax.scan(body, (w, tx.init(w)), None, length=steps)
    )(w)
    res = (np.asarray(w, np.float64), np.asarray(fs, np.float64), np.asarray(sums, np.float64))
    return (*res, np.asarray(ws, np.float64)) if trajectory else res


def _toy_ef(w0, c, beta, gammas, weight_decay=0.0, error_feedback=True):
    """The script's sign subgradient descent with error feedback and momentum, float64, on
    the diagonal: M ← βM + (1−β)G; P = γ_t M + E; Δ = (Σ|P|/#{P ≠ 0})·sign(P); W ← W − Δ;
    E ← P − Δ. ``weight_decay`` adds optzoo's decoupled ``γ_t λ W`` (not in the script);
    ``error_feedback=False`` keeps E = 0 and steps γ_t·sign(M) (the negative control)."""
    w = np.diag(w0).astype(np.float64)
    m, e = np.zeros(2), np.zeros(2)
    traj = []
    for gamma in gammas:
        g = np.diag(_subgrad(np.diag(w), c))
        m = beta * m + (1 - beta) * g
        p = gamma * m + e
        if error_feedback:
            delta = np.abs(p).sum() / np.count_nonzero(p) * _sgn(p)
            e = p - delta
        else:
            delta = gamma * _sgn(m)
        w = w - delta - gamma * weight_decay * w
        traj.append(w.copy())
    return traj


# ------------------------------------------------------------------ the toy recursion
_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("compressor", "beta", "weight_decay", "schedule"),
    [
        ("sign", 0.9, 0.0, "fixed"),
        ("spectral", 0.5, 0.1, "sqrt"),
        pytest.param("sign", 0.5, 0.1, "sqrt", marks=_SLOW),
        pytest.param("spectral", 0.9, 0.0, "fixed", marks=_SLOW),
        pytest.param("sign", 0.0, 0.0, "sqrt", marks=_SLOW),
        pytest.param("spectral", 0.0, 0.0, "sqrt", marks=_SLOW),
    ],
)
def test_ef_muon_matches_the_toy_script_recursion(compressor, beta, weight_decay, schedule):
    """ef_muon on diag(W) == the script's EF-momentum recursion, 25 steps, c = 0.5.

    ``fixed``: γ = 1/√T (the script's default); ``sqrt``: γ_t = 1/√(t+1) (its
    ``fixed_gamma=False``). The spectral compressor with the exact polar factor reduces to
    the scaled sign on a diagonal matrix (polar(diag p) = diag sign p, ‖P‖_*/2 = Σ|p|/2).
    Negative control: the same recursion without error feedback (Δ = γ·sign(M)) differs.
    """
    c, steps = 0.5, 25
    gammas = (
        [1 / np.sqrt(steps)] * steps
        if schedule == "fixed"
        else [1 / np.sqrt(t + 1) for t in range(steps)]
    )
    lr = gammas[0] if schedule == "fixed" else (lambda t: 1 / jnp.sqrt(t + 1.0))
    tx = EF.ef_muon(lr, beta, compressor=compressor, weight_decay=weight_decay, ortho_method="svd")
    want = np.stack(_toy_ef(W0, c, beta, gammas, weight_decay))
    *_, ws = _run(tx, c, steps, trajectory=True)
    # float32 vs float64, entries O(1), 25 steps: rounding only (measured <= 1e-6); the
    # off-diagonal stays exactly 0.
    np.testing.assert_allclose(ws[:, [0, 1], [0, 1]], want, atol=1e-5)
    assert not np.any(ws[:, [0, 1], [1, 0]])
    no_ef = np.stack(_toy_ef(W0, c, beta, gammas, weight_decay, error_feedback=False))
    assert np.abs(no_ef - want).max() > 0.05


# --------------------------------------------------------------- the counterexample
SCHEDULES = {
    "constant 0.05": 0.05,
    "1/(t+1)": lambda t: 1.0 / (t + 1.0),
    "1/(t+1)^0.51": lambda t: (t + 1.0) ** -0.51,
    "0.3/sqrt(t+1)": lambda t: 0.3 / jnp.sqrt(t + 1.0),
}


@pytest.mark.parametrize(
    "schedule",
    [s if s == "1/(t+1)^0.51" else pytest.param(s, marks=_SLOW) for s in sorted(SCHEDULES)],
)
def test_muon_without_momentum_stalls_for_every_schedule(schedule):
    """Muon (β = 0, exact polar factor) on f with c = 0.5: W₁₁ + W₂₂ stays 3, so
    f_t ≥ 1.5 = f(W*) + 1.5 for all 600 steps, whatever the schedule (measured: exactly 1.5
    up to 2e-6 rounding). EF-Muon from the same start reaches f < 0.1 (next test)."""
    tx = optzoo.muon(SCHEDULES[schedule], beta=0.0, ortho_method="svd")
    _, fs, sums = _run(tx, 0.5, 600)
    np.testing.assert_allclose(sums, 3.0, atol=1e-5)  # float32 rounding of ±1 steps
    assert fs.min() >= 1.5 - 1e-5


@_SLOW
def test_muon_default_momentum_stalls_where_ef_muon_converges():
    """c = 0.02 (below (1−β)/(1+β) = 0.026 for β = 0.95), 3000 steps, W₀ = diag(2, 1),
    f(W₀) = 1.06, floor 3c = 0.06.

    Muon with its defaults (β = 0.95, Nesterov), exact polar: W₁₁ + W₂₂ stays 3 and
    f_t ≥ 0.0600 (the floor) with γ_t = 1/(t+1); with a constant 0.01 the sum drifts to
    2.92 (f_T = 0.058). EF-Muon (β = 0.95, γ = 1/√T, the script's choice) breaks the floor:
    f_T = 0.0185 (measured, float32; ~11 s on 2 busy cores, hence slow).
    """
    steps = 3000
    _, fs, sums = _run(optzoo.muon(lambda t: 1.0 / (t + 1.0), ortho_method="svd"), 0.02, steps)
    np.testing.assert_allclose(sums, 3.0, atol=1e-4)
    assert fs.min() >= 0.06 - 1e-5
    _, fs, _ = _run(optzoo.muon(0.01, ortho_method="svd"), 0.02, steps)
    assert fs.min() >= 0.9 * 0.06  # constant 0.01: the sum drifts to 2.92, f_T = 0.058
    _, fs, _ = _run(EF.ef_muon(1 / np.sqrt(steps), 0.95, ortho_method="svd"), 0.02, steps)
    assert fs[-1] < 0.5 * 0.06, fs[-1]


def test_ef_muon_converges_where_muon_without_momentum_stalls():
    """c = 0.5, β = 0, 1000 steps from f(W₀) = 2: Muon (exact polar, γ = 1/(t+1)^0.51, the
    script's schedule) ends at f = 1.5000 (its floor); EF-Muon with γ = 1/√T ends at 0.030
    (measured float32; the float64 port 0.065 — the sign switches are chaotic, rounding
    picks the path, both far below 1.5)."""
    _, fs_muon, _ = _run(
        optzoo.muon(SCHEDULES["1/(t+1)^0.51"], beta=0.0, ortho_method="svd"), 0.5, 1000
    )
    _, fs_ef, _ = _run(EF.ef_muon(1 / np.sqrt(1000), 0.0, ortho_method="svd"), 0.5, 1000)
    assert fs_muon[-1] >= 1.5 - 1e-5 and fs_ef[-1] < 0.1, (fs_muon[-1], fs_ef[-1])
