"""optzoo.linalg at the edges: rank-deficient exact polar factors, extreme scales, bad arguments.

Every reference here is float64 numpy written in this file (SVD, norms, means); nothing calls
optzoo to build its own oracle. Each test's docstring keeps a one-line repro of what the code
did before the fix (issues 16 and 17) and the number it gave.

Conventions checked:
  * Rank tolerance of the exact polar paths (``'svd'``, ``'qdwh'``): a singular value counts
    when ``σᵢ > max(m, n)·ε(dtype)·σ_max`` with ``ε`` the machine epsilon of the compute dtype
    (float32 or wider), i.e. ``numpy/jax.numpy.linalg.matrix_rank``'s default.
  * float32 on this CPU backend flushes subnormals to zero (FTZ/DAZ), so a value below
    ``finfo(float32).tiny ≈ 1.18e-38`` reads as 0. The tests use that to reproduce the NaNs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optzoo import linalg

EPS32 = float(np.finfo(np.float32).eps)


def _rng(seed):
    return np.random.default_rng(seed)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _low_rank(shape, rank, seed, batch=()):
    """float64 ``U diag(s) Vᵀ`` of exact rank ``rank`` (s spaced in [0.1, 1]), then rounded to
    float32 (the rounding adds singular values ~1e-7·σ_max, far below the tolerance)."""
    m, n = shape
    rng = _rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((*batch, m, rank)))
    v, _ = np.linalg.qr(rng.standard_normal((*batch, n, rank)))
    s = np.geomspace(1.0, 0.1, rank)
    return ((u * s) @ np.swapaxes(v, -1, -2)).astype(np.float32)


def _polar_ref(x, rtol):
    """float64 ``U_r V_rᵀ`` keeping the singular values above ``rtol·σ_max``."""
    u, s, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    keep = s > rtol * s[..., :1]
    return (u * keep[..., None, :]) @ vt


def _tol(shape):
    return max(shape[-2:]) * EPS32


def _orth(x, method):
    return np.asarray(linalg.orthogonalize(jnp.asarray(x), method), np.float64)


# ------------------------------------------------------ item 1: rank-deficient exact polar
# Shapes reuse those of test_linalg.py where possible (QDWH compiles per stack shape).
RANK_CASES = [((48, 16), 4), ((16, 48), 4), ((24, 24), 10), ((48, 16), 1)]


@pytest.mark.parametrize("method", ["svd", "qdwh"])
def test_exact_polar_rank_deficient_is_partial_isometry(method):
    """Exact polar paths return ``U_r V_rᵀ`` (not an orthogonal completion) below full rank.

    Before (issue 16): ``orthogonalize(x, 'qdwh')`` had relative error 1.73 against the
    float64 SVD polar factor on 48x16 of rank 4 (16x48 rank 4: 1.73; 24x24 rank 10: 1.18;
    48x16 rank 1: 3.87; after: <= 7e-7), i.e. every null direction came out with singular
    value 1; 'svd' was already right (<= 5e-7).
    Tolerance: both are float32 backward-stable and these inputs have condition number 10 on
    their range, so the error is ~10·ε32 ≈ 1e-6 per direction; 1e-4 leaves margin.
    """
    for shape, rank in RANK_CASES:
        x = _low_rank(shape, rank, seed=shape[0] + rank)
        ref = _polar_ref(x, _tol(shape))
        out = _orth(x, method)
        assert _rel(out, ref) < 1e-4, (shape, rank, _rel(out, ref))
        sv = np.linalg.svd(out, compute_uv=False)
        np.testing.assert_allclose(sv[:rank], 1.0, atol=1e-4)
        np.testing.assert_allclose(sv[rank:], 0.0, atol=1e-4)


@pytest.mark.parametrize("method", ["svd", "qdwh"])
def test_exact_polar_rank_deficient_batched(method):
    """A (2, 3, 10, 18) batch mixing ranks 1..10 (10 = full): each slice is its own partial
    isometry, the full-rank slice of a batch with deficient ones is an isometry, and the
    transposed batch gives the transposed result. Before: qdwh 3.0, 1.53, 1.0, 0.65, 2.0 on
    the slices of rank 1, 3, 5, 7, 2 (2e-7 on the full-rank one); after: <= 7e-7."""
    ranks = (1, 3, 5, 7, 10, 2)
    x = np.stack([_low_rank((10, 18), r, seed=20 + r) for r in ranks]).reshape(2, 3, 10, 18)
    out = _orth(x, method)
    flat_x, flat_o = x.reshape(6, 10, 18), out.reshape(6, 10, 18)
    for i, r in enumerate(ranks):
        assert _rel(flat_o[i], _polar_ref(flat_x[i], _tol(x.shape))) < 1e-4, r
    np.testing.assert_allclose(flat_o[4] @ flat_o[4].T, np.eye(10), atol=1e-4)
    np.testing.assert_allclose(
        _orth(np.swapaxes(x, -1, -2), method), np.swapaxes(out, -1, -2), atol=2e-5
    )


@pytest.mark.parametrize("method", ["svd", "qdwh"])
def test_exact_polar_negative_controls(method):
    """The rank test is a threshold, not a bias toward low rank.

    (a) A full-rank tall input (condition number 1e3) still gives an isometry ``OᵀO = I``.
    (b) A rank-4 input plus a 5th direction of singular value 3e-5·σ_max (5x the tolerance
        48·ε32 = 5.7e-6) comes out with rank 5; the same direction at 1e-6·σ_max (below the
        tolerance, above float32 rounding ~1e-7) is dropped: rank 4.
    """
    rng = _rng(30)
    u, _ = np.linalg.qr(rng.standard_normal((48, 16)))
    v, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    full = ((u * np.geomspace(1.0, 1e-3, 16)) @ v.T).astype(np.float32)
    o = _orth(full, method)
    np.testing.assert_allclose(o.T @ o, np.eye(16), atol=1e-4)

    base = (u[:, :4] * np.geomspace(1.0, 0.1, 4)) @ v[:, :4].T
    extra = np.outer(u[:, 4], v[:, 4])
    for delta, rank in ((3e-5, 5), (1e-6, 4)):
        x = (base + delta * extra).astype(np.float32)
        sv = np.linalg.svd(_orth(x, method), compute_uv=False)
        assert np.sum(sv > 0.5) == rank, (delta, sv[:6])
        assert sv[rank:].max() < 1e-4 and sv[:rank].min() > 1 - 1e-4


def test_exact_polar_rtol_argument():
    """``rtol`` moves the threshold and is validated (finite, >= 0)."""
    x = _low_rank((16, 48), 4, seed=40)
    x = x + np.float32(1e-3) * _low_rank((16, 48), 16, seed=41)  # 12 directions at ~1e-3
    for fn in (linalg.polar_svd, linalg.polar_qdwh):
        loose = np.asarray(fn(jnp.asarray(x), rtol=1e-2), np.float64)
        assert _rel(loose, _polar_ref(x, 1e-2)) < 1e-4
        for bad in (-1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="rtol"):
                fn(jnp.asarray(x), rtol=bad)


# ------------------------------------------------ item 2: inverse_sqrt_psd at tiny traces
def _decayed_grams(dtype, skip=600, steps=350, seed=50):
    """Grams ``M_k M_kᵀ`` of a momentum ``M_k = 0.95·M_{k−1}`` kept in ``dtype`` (no new
    gradient: a dead expert / frozen branch), products accumulated in float32, for steps
    ``k = skip+1 .. skip+steps`` (the first ``skip`` Grams are ordinary normal numbers; the
    momentum at ``skip`` is 0.95^600 ≈ 4.3e-14 times the gradient)."""
    m = jnp.asarray(_rng(seed).standard_normal((8, 32)) * 0.95**skip, jnp.float32).astype(dtype)

    def step(m, _):
        m = (0.95 * m).astype(dtype)
        mf = m.astype(jnp.float32)
        return m, mf @ mf.T

    return jax.jit(lambda m: jax.lax.scan(step, m, None, length=steps)[1])(m)


@pytest.mark.parametrize(
    "dtype,method",
    [
        (jnp.float32, "eigh"),
        pytest.param(jnp.bfloat16, "eigh", marks=pytest.mark.slow),
        pytest.param(jnp.float32, "newton_schulz", marks=pytest.mark.slow),
    ],
)
def test_inverse_sqrt_psd_decaying_momentum_stays_finite(dtype, method):
    """A decaying finite momentum never gives NaN, and the result is scale-covariant.

    Before (issue 17): float32, first NaN at step 870 (max|M| ~1.4e-19, max Gram ~3.5e-38,
    trace ~5.4e-38: trace/n ~6.8e-39 is subnormal, flushed to 0 and divided by); bfloat16
    momentum: step 867; newton_schulz: step 856 (4, 3 and 10 non-finite steps). Once the
    Gram underflows entirely it is the zero matrix: output 0.
    Covariance: ``f(A) = f(A/c)/√c`` for ``c = max|A|``, compared where ``A/c`` is exact in
    float32 (every Gram here with max entry >= 1e-30); float32 eigh on these 8x8 Grams
    (condition ~1e2) is accurate to ~1e-6 relative, bound 1e-4. (Near the end the Gram's own
    products have underflowed, so it is not even PSD; there only finiteness is checked —
    accuracy against float64 on such an input is not float32's to give. The exact value at
    a subnormal ``tr/n`` is checked in test_inverse_sqrt_psd_extreme_scales.)
    """
    grams = _decayed_grams(dtype)
    out = np.asarray(linalg.inverse_sqrt_psd(grams, method=method, steps=30), np.float64)
    assert np.all(np.isfinite(out))
    g64 = np.asarray(grams, np.float64)
    peak = np.abs(g64).max(axis=(-2, -1))
    assert np.all(out[peak == 0] == 0)
    sel = peak >= 1e-30
    assert sel.sum() > 50 and (~sel).sum() > 100
    unit = np.asarray(
        linalg.inverse_sqrt_psd(
            jnp.asarray(g64[sel] / peak[sel, None, None], jnp.float32), method=method, steps=30
        ),
        np.float64,
    )
    want = unit / np.sqrt(peak[sel])[:, None, None]
    err = np.linalg.norm(out[sel] - want, axis=(-2, -1)) / np.linalg.norm(want, axis=(-2, -1))
    assert err.max() < 1e-4


def test_inverse_sqrt_psd_extreme_scales():
    """``f(cA) = f(A)/√c`` over the float32 range (c = 2^-100, 1e30, 2e38), and a 16x16
    matrix whose only nonzero entry is 1e-37 (a normal number; ``tr/n = 6.25e-39`` is not).
    Before: ``c = 2e38`` overflowed the trace (``5.8e38 → inf``) and returned all zeros; the
    spike gave NaN. Entries stay normal numbers (no input is lost to flushing); float32 eigh
    at condition 1e2: 1e-5."""
    rng = _rng(60)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    a = (q * np.geomspace(1.0, 1e-2, 8)) @ q.T
    base = np.asarray(linalg.inverse_sqrt_psd(jnp.asarray(a, jnp.float32)), np.float64)
    for scale in (2.0**-100, 1e30, 2e38):
        out = np.asarray(linalg.inverse_sqrt_psd(jnp.asarray(a * scale, jnp.float32)), np.float64)
        assert np.all(np.isfinite(out))
        assert _rel(out * np.sqrt(scale), base) < 1e-5, scale
    spike = np.zeros((16, 16), np.float32)
    spike[0, 0] = 1e-37
    out = np.asarray(linalg.inverse_sqrt_psd(jnp.asarray(spike)), np.float64)
    assert np.all(np.isfinite(out))
    d = np.diag(spike.astype(np.float64))
    want = 1.0 / np.sqrt(d + 1e-7 * d.sum() / 16)  # (A + eps·tr/n·I)^{-1/2}, diagonal A
    np.testing.assert_allclose(out, np.diag(want), rtol=1e-5, atol=0)


def test_inverse_sqrt_psd_eps_zero_is_pseudo_inverse_root():
    """``eps=0`` on a singular PSD matrix: eigenvalues at rounding level are dropped (the
    pseudo-inverse root), no inf/NaN. Before: ``1/√0 = inf`` → NaN everywhere."""
    rng = _rng(61)
    b = rng.standard_normal((6, 3))
    a = (b @ b.T).astype(np.float32)
    out = np.asarray(linalg.inverse_sqrt_psd(jnp.asarray(a), eps=0.0), np.float64)
    assert np.all(np.isfinite(out))
    w, v = np.linalg.eigh(a.astype(np.float64))
    keep = w > 6 * EPS32 * w.max()
    ref = (v[:, keep] / np.sqrt(w[keep])) @ v[:, keep].T
    assert _rel(out, ref) < 1e-4


# ------------------------------------------------------ item 3: normalizers at any scale
def _old_row_normalize(x, eps=1e-8):
    """The pre-fix formula (squares without rescaling), for the negative control."""
    xf = jnp.asarray(x, jnp.float32)
    return xf / (jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True)) + eps)


SCALES = [1e-30, 1.0, 1e30]


@pytest.mark.parametrize("scale", SCALES + [1e-36, 1e37])
def test_row_col_normalize_direction_scale_free(scale):
    """``x/(‖x‖₂ + eps)`` per row (column) against float64, direction and magnitude.

    Before (issue 17): at 1e30 (and 1e37) the float32 squares overflowed, ``‖x‖ = inf``, every
    row came out exactly 0; below ~1e-19 the squares flush to 0, harmless with eps = 1e-8
    (``x/eps`` is then the right answer) but 0/0 = NaN with ``eps=0``, checked at the end.
    Tolerance: float32 rounding, 1e-6 relative per entry.
    """
    x = _rng(70).standard_normal((6, 10)) * scale
    x[2] = 0.0
    x32 = x.astype(np.float32)
    x64 = x32.astype(np.float64)
    for fn, axis in ((linalg.row_normalize, 1), (linalg.col_normalize, 0)):
        out = np.asarray(fn(jnp.asarray(x32)), np.float64)
        assert np.all(np.isfinite(out))
        norms = np.linalg.norm(x64, axis=axis, keepdims=True)
        want = x64 / (norms + 1e-8)
        live = np.broadcast_to(norms > 0, x64.shape)
        # direction of each nonzero row/column
        d_out = out / np.maximum(np.linalg.norm(out, axis=axis, keepdims=True), 1e-300)
        d_ref = x64 / np.maximum(norms, 1e-300)
        np.testing.assert_allclose(d_out[live], d_ref[live], rtol=0, atol=1e-6)
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=0)
        if axis == 1:
            assert np.all(out[2] == 0)
        exact = np.asarray(fn(jnp.asarray(x32), eps=0.0), np.float64)
        assert np.all(np.isfinite(exact))
        np.testing.assert_allclose(exact, x64 / np.where(norms > 0, norms, 1.0), rtol=1e-6, atol=0)


def test_row_normalize_negative_control_old_formula_fails():
    """The same check on the old formula fails at 1e30 (all zeros), so the test above can fail."""
    x = (_rng(70).standard_normal((6, 10)) * 1e30).astype(np.float32)
    old = np.asarray(_old_row_normalize(x))
    assert np.all(old == 0)
    assert np.allclose(
        np.linalg.norm(np.asarray(linalg.row_normalize(jnp.asarray(x))), axis=1), 1.0, atol=1e-6
    )


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_row_normalize_bfloat16_direction(scale):
    """bfloat16 in, bfloat16 out, direction within bf16 rounding (8-bit significand: 1e-2).
    Before: 1e30 gave all zeros."""
    x = _rng(71).standard_normal((5, 16)) * scale
    xb = jnp.asarray(x, jnp.float32).astype(jnp.bfloat16)
    out = linalg.row_normalize(xb)
    assert out.dtype == jnp.bfloat16
    o = np.asarray(out.astype(jnp.float32), np.float64)
    x64 = np.asarray(xb.astype(jnp.float32), np.float64)
    d_out = o / np.linalg.norm(o, axis=1, keepdims=True)
    d_ref = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    np.testing.assert_allclose(d_out, d_ref, atol=1e-2)


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30, 1e38])
def test_center_scale_free(scale):
    """``x − mean(x)`` along the units against float64. Before: at 1e38 the column sums of 16
    rows overflowed (inf − inf = NaN); 1e-30 and 1e30 were already fine."""
    x = (_rng(72).standard_normal((16, 5)) * scale).astype(np.float32)
    x = np.clip(x, -3e38, 3e38)
    out = np.asarray(linalg.center(jnp.asarray(x)), np.float64)
    x64 = x.astype(np.float64)
    want = x64 - x64.mean(axis=0)
    assert np.all(np.isfinite(out))
    assert _rel(out, want) < 1e-6


@pytest.mark.parametrize(
    "method",
    [
        "auto",
        "svd",
        "qdwh",
        pytest.param("gram_newton_schulz", marks=pytest.mark.slow),
        pytest.param("newton_schulz", marks=pytest.mark.slow),
    ],
)
def test_orthogonalizer_entry_normalization_scale_free(method):
    """The Frobenius entry normalization (max-abs first) handled 1e±30 already (test_linalg's
    test_zero_tiny_huge); at the top of the float32 range it did not: ``x / max|x|`` is
    compiled as ``x·(1/max|x|)`` and ``1/max|x|`` is subnormal (flushed) once
    ``max|x| > 8.5e37``.

    Before: ``orthogonalize(x·5e37)`` was all zeros for every method (relative error 1.0).
    Now equal to the unit-scale slice up to float32 rounding of the scaled input (1e-4) at
    1e-36, 1e-30, 1e30, 5e37. Entries are kept >= 0.05 in magnitude so that at 1e-36 none is
    subnormal (a flushed entry would change the input itself). Iterative methods use a 64x128
    block (the Gram path of 'auto'), exact ones a (2, 3, 10, 18) stack.
    """
    shape = (64, 128) if method not in ("svd", "qdwh") else (10, 18)
    z = _rng(73).standard_normal(shape)
    x = np.sign(z) * (np.abs(z) + 0.05)
    scales = (1.0, 1e-36, 1e-30, 1e30, 5e37, 1.0)
    stack = np.stack([(x * s).astype(np.float32) for s in scales])
    if method in ("svd", "qdwh"):
        stack = stack.reshape(2, 3, *shape)
    out = _orth(stack, method).reshape(6, *shape)
    assert np.all(np.isfinite(out))
    for i in range(1, 6):
        assert _rel(out[i], out[0]) < 1e-4, scales[i]
    if method == "auto":
        assert _rel(out[4], _orth(x.astype(np.float32), method)) < 1e-4  # batch = single


def test_muon_update_direction_scale_free():
    """Muon (default 'auto' orthogonalizer, no momentum) is scale-invariant at 1e±30: the issue
    reported it fine, and it is (no change needed)."""
    from optzoo.muon import scale_by_muon

    g = {"w": jnp.asarray(_rng(74).standard_normal((32, 96)), jnp.float32)}
    tx = scale_by_muon(beta=0.0, nesterov=False)
    state = tx.init(g)
    step = jax.jit(tx.update)
    ref = np.asarray(step(g, state)[0]["w"], np.float64)
    for scale in (1e-30, 1e30):
        out = np.asarray(step(jax.tree.map(lambda a, s=scale: a * s, g), state)[0]["w"], np.float64)
        assert np.all(np.isfinite(out)) and _rel(out, ref) < 1e-4, scale


# ------------------------------------------------------------------ item 4: validation
def test_step_counts_below_one_refused():
    """Before: ``inverse_sqrt_psd(a, method='newton_schulz', steps=0)`` returned
    ``I/√‖A‖_F`` (not an inverse root; what ``gram_steps=0`` gave the Gram-polar optimizers);
    ``gram_newton_schulz(x, steps=0)`` raised from polar_express_coefficients, naming neither
    the function."""
    a = jnp.eye(4) * 2.0
    with pytest.raises(ValueError, match=r"inverse_sqrt_psd: steps"):
        linalg.inverse_sqrt_psd(a, method="newton_schulz", steps=0)
    with pytest.raises(TypeError, match=r"inverse_sqrt_psd: steps"):
        linalg.inverse_sqrt_psd(a, method="newton_schulz", steps=2.5)
    x = jnp.ones((4, 8))
    for fn in (linalg.gram_newton_schulz, linalg.newton_schulz):
        with pytest.raises(ValueError, match=rf"{fn.__name__}: steps"):
            fn(x, steps=0)
    with pytest.raises(ValueError, match=r"polar_express: steps"):
        linalg.polar_express(x, steps=0)
    with pytest.raises(ValueError, match=r"orthogonalize: steps"):
        linalg.orthogonalize(x, steps=0)
    with pytest.raises(ValueError, match=r"polar_qdwh: max_iterations"):
        linalg.polar_qdwh(x, max_iterations=0)


EPS_CALLS = [
    ("newton_schulz", lambda eps: linalg.newton_schulz(jnp.ones((4, 8)), eps=eps)),
    ("polar_express", lambda eps: linalg.polar_express(jnp.ones((4, 8)), eps=eps)),
    ("gram_newton_schulz", lambda eps: linalg.gram_newton_schulz(jnp.ones((4, 8)), eps=eps)),
    ("orthogonalize", lambda eps: linalg.orthogonalize(jnp.ones((4, 8)), eps=eps)),
    ("inverse_sqrt_psd", lambda eps: linalg.inverse_sqrt_psd(jnp.eye(4), eps=eps)),
    ("row_normalize", lambda eps: linalg.row_normalize(jnp.ones((4, 8)), eps=eps)),
    ("col_normalize", lambda eps: linalg.col_normalize(jnp.ones((4, 8)), eps=eps)),
]


@pytest.mark.parametrize("name,call", EPS_CALLS, ids=[n for n, _ in EPS_CALLS])
@pytest.mark.parametrize("eps", [-1e-8, float("nan"), float("inf")])
def test_bad_eps_refused(name, call, eps):
    """Before: negative eps flipped ``row_normalize`` of a row with norm < |eps| into the
    opposite direction and gave NaN at norm = |eps|; NaN eps gave NaN outputs silently."""
    with pytest.raises(ValueError, match=rf"{name}: eps must"):
        call(eps)


def test_eps_zero_and_traced_eps_accepted():
    """eps = 0 is allowed (zero input still maps to 0, no 0/0); a traced eps (optax
    inject_hyperparams) passes the checks."""
    z = jnp.zeros((4, 8))
    for method in ("newton_schulz", "gram_newton_schulz"):
        assert np.all(np.asarray(linalg.orthogonalize(z, method, eps=0.0)) == 0)
    assert np.all(np.asarray(linalg.row_normalize(z, eps=0.0)) == 0)
    assert np.all(np.asarray(linalg.col_normalize(z, eps=0.0)) == 0)
    x = jnp.asarray(_rng(80).standard_normal((4, 8)), jnp.float32)
    f = jax.jit(
        lambda e: (
            linalg.orthogonalize(x, eps=e)
            + linalg.row_normalize(x, eps=e)
            + linalg.inverse_sqrt_psd(x @ x.T, eps=e).sum()
        )
    )
    assert np.all(np.isfinite(np.asarray(f(jnp.float32(1e-7)))))
