"""Scion's norms over the whole float32/bfloat16 range and its construction-time checks
(issue 17).

Repro (before): ``lmo_bias_rms(1e20 * g)`` returned exactly 0 (``g²`` overflowed float32 to
inf, ``g/inf = 0``); ``scale_by_scion(ns_steps=0)`` failed only at the first update, inside
the orthogonalizer, without naming the argument.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import optzoo
from optzoo.layout import MatrixLayout
from optzoo.scion import lmo_bias_rms, lmo_column, lmo_row


def _reference_direction(x: np.ndarray, axis) -> np.ndarray:
    """-x / RMS(x) in float64 (eps negligible at scale 1)."""
    x = np.asarray(x, np.float64)
    return -x / np.sqrt(np.mean(x * x, axis=axis, keepdims=True))


@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1.0, 1e20, 1e30])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_bias_rms_direction_is_scale_free(scale, dtype):
    """The direction of x*scale equals that of x (to the dtype's rounding: float32 2e-6,
    bfloat16 1e-2 — one rounding of the input and one of the output) from 1e-30 up to 1e30,
    except where eps = 1e-8 dominates the RMS (scale 1e-30: the LMO is then ~0 by design,
    eps is absolute as in the reference's BiasRMS)."""
    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    got = np.asarray(lmo_bias_rms(jnp.asarray(x * scale, dtype)), np.float64)
    assert np.all(np.isfinite(got))
    if scale < 1e-8:  # eps-dominated: |lmo| <= |x|/eps, a vanishing step, never NaN
        assert np.abs(got).max() <= 1.01 * np.abs(x).max() * scale / 1e-8
        return
    tol = 2e-6 if dtype == jnp.float32 else 1e-2
    want = _reference_direction(np.asarray(jnp.asarray(x, dtype), np.float64), None)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_row_and_column_lmos_are_scale_free_at_1e30():
    x = np.random.default_rng(1).standard_normal((6, 10)).astype(np.float32)
    for lmo in (lmo_row, lmo_column):
        base = np.asarray(lmo(jnp.asarray(x)), np.float64)
        big = np.asarray(lmo(jnp.asarray(x * 1e30)), np.float64)
        assert np.all(np.isfinite(big)) and np.abs(big).max() > 0
        np.testing.assert_allclose(big, base, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(ns_steps=0), ValueError, "ns_steps"),
        (dict(ns_steps=2.5), TypeError, "ns_steps"),
        (dict(eps=-1e-8), ValueError, "eps"),
        (dict(momentum=0.0), ValueError, "momentum"),
        (dict(momentum=np.float32(1.5)), ValueError, "momentum"),
        (dict(mu_dtype=jnp.int32), TypeError, "mu_dtype"),
        (dict(learning_rate=None), TypeError, "learning_rate"),
        (dict(weight_decay=-1.0), ValueError, "weight_decay"),
    ],
)
def test_bad_arguments_are_refused_at_construction(kwargs, error, match):
    kwargs = {"learning_rate": 0.02, "layout": MatrixLayout(), **kwargs}
    with pytest.raises(error, match=match):
        optzoo.scion(**kwargs)
