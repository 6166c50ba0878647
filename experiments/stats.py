"""Statistics for optimizer comparisons across seeds (docs/benchmarks.md#statistics).

A difference between two optimizers is reported with its uncertainty and is only called a
win when it is unlikely under run-to-run noise: Welch's t-test (unequal variances) at level
``alpha``. With two or three seeds per arm the test has little power, so most differences of
a CPU-sized ablation come out as "within noise" — that is the honest answer, not a bug.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Summary", "Comparison", "summarize", "welch", "compare"]


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    sd: float  # sample standard deviation (ddof=1); 0 for n = 1

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.sd:.4f}" if self.n > 1 else f"{self.mean:.4f}"


@dataclass(frozen=True)
class Comparison:
    """``b − a`` for a loss (negative = b is better)."""

    delta: float
    se: float
    t: float
    dof: float
    p: float
    verdict: str  # 'better', 'worse', 'within noise' or 'n/a' (for b relative to a)

    def __str__(self) -> str:
        if self.verdict == "n/a":
            return "n/a"
        return f"{self.delta:+.4f} ± {self.se:.4f} (p={self.p:.2g}, {self.verdict})"


def summarize(values: Sequence[float]) -> Summary:
    x = np.asarray(values, np.float64)
    if x.size == 0:
        raise ValueError("summarize: no values")
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return Summary(int(x.size), float(x.mean()), sd)


def _t_sf(t: float, dof: float) -> float:
    """Two-sided p-value of Student's t via the regularized incomplete beta function."""
    from scipy import special

    x = dof / (dof + t * t)
    return float(special.betainc(dof / 2.0, 0.5, x))


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float, float, float]:
    """Welch's unequal-variance t-test of mean(b) − mean(a).

    Returns ``(delta, se, t, dof, p)`` with the Welch–Satterthwaite degrees of freedom and the
    two-sided p-value. Needs at least two values per arm; if both arms have zero variance the
    test is undefined and ``p`` is 0 when the means differ and 1 otherwise.
    """
    xa, xb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if xa.size < 2 or xb.size < 2:
        raise ValueError("welch: needs at least two values per arm")
    va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
    delta = float(xb.mean() - xa.mean())
    se = math.sqrt(va + vb)
    if se == 0.0:
        return (
            delta,
            0.0,
            math.copysign(math.inf, delta) if delta else 0.0,
            math.inf,
            (0.0 if delta else 1.0),
        )
    t = delta / se
    dof = (va + vb) ** 2 / (va**2 / (xa.size - 1) + vb**2 / (xb.size - 1))
    return delta, se, t, dof, _t_sf(t, dof)


def compare(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> Comparison:
    """Compares losses ``b`` against baseline ``a``: 'better' only if significantly lower."""
    if len(a) < 2 or len(b) < 2:
        return Comparison(
            float(np.mean(b) - np.mean(a)), math.nan, math.nan, math.nan, math.nan, "n/a"
        )
    delta, se, t, dof, p = welch(a, b)
    if p < alpha:
        verdict = "better" if delta < 0 else "worse"
    else:
        verdict = "within noise"
    return Comparison(delta, se, t, dof, p, verdict)
