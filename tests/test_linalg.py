"""optzoo.linalg against independent float64 references (numpy SVD / eigh / scalar maps).

Reference for the iterative orthogonalizers: a polynomial iteration acts on singular values
only, so with ``X = U Σ Vᵀ`` (float64 numpy SVD) it must return ``U φ(Σ/(s‖X‖_F)) Vᵀ`` where
``φ`` is the composition of the scalar polynomials evaluated in float64. This checks both the
matrix algebra (transposes, Gram, batching) and the coefficients, independently of how the
code evaluates them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optzoo import linalg

# Published 5-step Polar Express table (modded-nanogpt train_gpt.py and the
# symmetry-compatible reference code; docs/math/orthogonalization.md#polar-express,
# docs/benchmarks.md#polar-express).
PUBLISHED_PE5 = np.array(
    [
        (8.1566, -22.4833, 15.8788),
        (4.0429, -2.8089, 0.50002),
        (3.8917, -2.7725, 0.50606),
        (3.2858, -2.3681, 0.46449),
        (2.3465, -1.7098, 0.42324),
    ]
)

ITERATIVE = ["newton_schulz", "polar_express", "gram_newton_schulz", "auto"]
EXACT = ["svd", "qdwh"]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _svd64(x):
    return np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)


def _polar64(x, rtol=1e-10):
    u, s, vt = _svd64(x)
    keep = s > rtol * s[..., :1]
    return (u * keep[..., None, :]) @ vt


def _with_singular_values(shape, svals, seed=0):
    """Random U diag(svals) Vᵀ of the given (m, n) shape (float64)."""
    m, n = shape
    r = min(m, n)
    rng = _rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return (u * np.asarray(svals)[None, :]) @ v.T


def _method_table(method, shape):
    """(coefficient table, norm scale) that `method` applies to a matrix of `shape`."""
    if method == "newton_schulz":
        return np.tile(linalg.JORDAN_QUINTIC, (5, 1)), 1.0
    if method in ("polar_express", "gram_newton_schulz"):
        return linalg.polar_express_coefficients(5), 1.02
    if method == "auto" and max(shape) >= 2 * min(shape):
        return linalg.polar_express_coefficients(4, lower=5e-3), 1.02
    if method == "auto":
        return linalg.polar_express_coefficients(5), 1.02
    raise ValueError(method)


def _scalar_reference(x, method):
    """U φ(Σ/(s‖X‖_F)) Vᵀ in float64 (see module docstring)."""
    table, scale = _method_table(method, x.shape[-2:])
    u, s, vt = _svd64(x)
    t = s / (scale * np.sqrt(np.sum(s**2, axis=-1, keepdims=True)))
    for a, b, c in table:
        t = a * t + b * t**3 + c * t**5
    return (u * t[..., None, :]) @ vt


def _orth(x, method, **kw):
    return np.asarray(linalg.orthogonalize(jnp.asarray(x, jnp.float32), method, **kw), np.float64)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# ---------------------------------------------------------------------- Polar Express table
def test_polar_express_table_matches_published():
    # The published table is printed to 4 decimals (5 significant digits for c): |Δ| <= 1e-4.
    np.testing.assert_allclose(linalg.polar_express_coefficients(5), PUBLISHED_PE5, atol=1e-4)


def test_polar_express_step_is_minimax():
    # Without cushion/safety, step 1 must equioscillate: the max error |1 - p| on a fine grid
    # of [l, 1] equals |1 - p| at l, at both interior critical points and at 1.
    lo = 0.05
    ((a, b, c),) = linalg.polar_express_coefficients(1, lower=lo, cushion=0.0, safety=1.0)
    grid = np.linspace(lo, 1.0, 200001)
    err = np.abs(1 - (a * grid + b * grid**3 + c * grid**5))
    roots = np.roots([5 * c, 0, 3 * b, 0, a])  # p'(x) = a + 3bx² + 5cx⁴
    crit = np.unique(roots[np.isreal(roots)].real.round(12))
    crit = crit[(crit > lo) & (crit < 1)]
    nodes = np.array([lo, *crit, 1.0])
    assert len(nodes) == 4
    node_err = np.abs(1 - (a * nodes + b * nodes**3 + c * nodes**5))
    np.testing.assert_allclose(node_err, err.max(), rtol=1e-6)
    # and it beats a perturbed polynomial (optimality, not just equioscillation)
    worse = np.abs(1 - ((a * 1.01) * grid + b * grid**3 + c * grid**5)).max()
    assert worse > err.max()


def test_polar_express_interval_maps_into_final_bounds():
    # The composed scalar map sends [1e-3, 1/1.02] into [1 - E, 1 + E] with E < 0.15.
    t = np.geomspace(1e-3, 1 / 1.02, 5000)
    for a, b, c in linalg.polar_express_coefficients(5):
        t = a * t + b * t**3 + c * t**5
    assert t.min() > 0.85 and t.max() < 1.15


@pytest.mark.parametrize(
    "kwargs", [dict(steps=0), dict(lower=0.0), dict(lower=2.0), dict(cushion=1.0), dict(safety=0.9)]
)
def test_polar_express_coefficients_bad_args(kwargs):
    with pytest.raises(ValueError):
        linalg.polar_express_coefficients(**kwargs)


# ------------------------------------------------------------------- agreement with SVD
@pytest.mark.parametrize("method", ITERATIVE)
@pytest.mark.parametrize("shape", [(24, 24), (16, 48), (48, 16), (8, 64)])
def test_iterative_matches_scalar_reference(method, shape):
    x = _rng(1).standard_normal(shape)
    out = _orth(x, method)
    # float32 rounding amplified by the polynomial slopes (product of the a's ~ 1e3 on the
    # smallest directions) gives relative errors ~1e-5..1e-4; 1e-3 leaves margin.
    assert _rel(out, _scalar_reference(x, method)) < 1e-3


@pytest.mark.parametrize("method", ITERATIVE)
@pytest.mark.parametrize("cond", [1e3, 1e6])
def test_iterative_ill_conditioned(method, cond):
    shape = (32, 64)
    svals = np.geomspace(1.0, 1.0 / cond, 32)
    x = _with_singular_values(shape, svals, seed=2)
    out = _orth(x, method)
    assert np.all(np.isfinite(out))
    assert _rel(out, _scalar_reference(x, method)) < 1e-3
    # directions well inside the design interval are orthogonalized: compare the action on
    # the top singular vectors with the exact polar factor.
    u, s, vt = _svd64(x)
    top = s / np.sqrt(np.sum(s**2)) > 0.02
    d = np.diag(u.T @ out @ vt.T)[top]
    lo, hi = (0.65, 1.21) if method == "newton_schulz" else (0.85, 1.15)
    assert d.min() > lo and d.max() < hi


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("shape", [(24, 24), (16, 48), (48, 16)])
@pytest.mark.parametrize("cond", [1.0, 1e3, 1e6])
def test_exact_methods_match_svd_polar(method, shape, cond):
    r = min(shape)
    x = _with_singular_values(shape, np.geomspace(1.0, 1.0 / cond, r), seed=3)
    out = _orth(x, method)
    # float32 backward-stable polar: error ~ cond·eps32 for the smallest direction; the
    # relative Frobenius error over all directions is far smaller: 5e-3 bounds it at cond
    # 1e6, 1e-4 at cond <= 1e3. Both exact methods treat singular values below
    # max(m, n)·eps32·σ_max as zero (float32 cannot resolve them; the rank tolerance of
    # linalg.polar_svd / polar_qdwh), so the reference is the partial isometry with the same
    # threshold (at cond 1e6 it drops the 1-2 smallest directions of each case).
    tol = 5e-3 if cond > 1e3 else 1e-4
    rtol = max(shape) * float(np.finfo(np.float32).eps)
    assert _rel(out, _polar64(x, rtol=rtol)) < tol


def test_svd_rank_deficient_is_partial_isometry():
    x = _with_singular_values((20, 30), [3.0, 2.0, 1.0] + [0.0] * 17, seed=4)
    out = _orth(x, "svd")
    np.testing.assert_allclose(out, _polar64(x, rtol=1e-8), atol=1e-5)
    sv = np.linalg.svd(out, compute_uv=False)
    np.testing.assert_allclose(sv[:3], 1.0, atol=1e-5)
    np.testing.assert_allclose(sv[3:], 0.0, atol=1e-5)


@pytest.mark.parametrize("method", ITERATIVE)
def test_iterative_rank_deficient_maps_null_space_to_zero(method):
    x = _with_singular_values((20, 30), [3.0, 2.0, 1.0] + [0.0] * 17, seed=4)
    out = _orth(x, method)
    sv = np.linalg.svd(out, compute_uv=False)
    assert sv[3:].max() < 1e-4  # odd polynomials map 0 to 0
    assert _rel(out, _scalar_reference(x, method)) < 1e-3


@pytest.mark.parametrize("method", ITERATIVE + EXACT)
def test_zero_tiny_huge(method):
    x = _rng(5).standard_normal((12, 20))
    zero = _orth(np.zeros((12, 20)), method)
    assert np.all(zero == 0)
    base = _orth(x, method)
    for scale in (1e-30, 1e30):
        out = _orth(x * scale, method)
        assert np.all(np.isfinite(out))
        # scale invariance: the norm is taken after dividing by max|x|, so only the
        # float32 rounding of the scaled input differs (~1e-7 relative).
        assert _rel(out, base) < 1e-4, scale


@pytest.mark.parametrize("method", ITERATIVE + EXACT)
def test_batched_equals_per_slice_and_transpose(method):
    x = _rng(6).standard_normal((2, 3, 10, 18)).astype(np.float32)
    out = _orth(x, method)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(out[i, j], _orth(x[i, j], method), atol=2e-5)
    # tall input = transpose of the wide result
    np.testing.assert_allclose(
        _orth(np.swapaxes(x, -1, -2), method), np.swapaxes(out, -1, -2), atol=2e-5
    )


def test_gram_equals_newton_schulz_with_same_coefficients():
    x = jnp.asarray(_rng(7).standard_normal((4, 32, 160)), jnp.float32)
    for table in (linalg.polar_express_coefficients(5), linalg.JORDAN_QUINTIC):
        ns = np.asarray(linalg.newton_schulz(x, table, norm_scale=1.02))
        for restarts in ((), (2,), (1, 3)):
            gr = np.asarray(
                linalg.gram_newton_schulz(x, table, 5, norm_scale=1.02, restarts=restarts)
            )
            # exact in real arithmetic; float32 reassociation over 5 steps: ~1e-5
            assert _rel(gr, ns) < 1e-4, restarts


# --------------------------------------------------------------------------- equivariance
def _orthogonal(n, seed):
    q, r = np.linalg.qr(_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _biorth_error(f, x, seed):
    m, n = x.shape
    u, v = _orthogonal(m, seed), _orthogonal(n, seed + 1)
    lhs = f(u @ x @ v.T)
    rhs = u @ f(x) @ v.T
    return _rel(lhs, rhs)


@pytest.mark.parametrize("method", ITERATIVE + EXACT)
def test_bi_orthogonal_equivariance(method):
    x = _rng(8).standard_normal((16, 40))
    err = _biorth_error(lambda a: _orth(a, method), x, seed=10)
    assert err < 1e-4  # float32 rounding only


def test_bi_orthogonal_equivariance_negative_control():
    # The same check must fail for maps without the symmetry: elementwise sign (Lion's map)
    # and row normalization (only permutation/diagonal equivariant on the left).
    x = _rng(8).standard_normal((16, 40))
    assert _biorth_error(np.sign, x, seed=10) > 0.3
    assert (
        _biorth_error(lambda a: np.asarray(linalg.row_normalize(jnp.asarray(a))), x, seed=10) > 0.1
    )


# ------------------------------------------------------------------------------ bfloat16
@pytest.mark.parametrize("method", ITERATIVE)
def test_bfloat16_paths_finite_and_bounded(method):
    x = jnp.asarray(_rng(9).standard_normal((3, 48, 192)), jnp.float32)
    xb = x.astype(jnp.bfloat16)
    out = linalg.orthogonalize(xb, method)
    assert out.dtype == jnp.bfloat16
    out = np.asarray(out.astype(jnp.float32), np.float64)
    assert np.all(np.isfinite(out))
    ref = _scalar_reference(np.asarray(xb.astype(jnp.float32)), method)
    # bf16 has an 8-bit significand (eps 3.9e-3); operands rounded to bf16 before each product
    # (accumulated in float32) over 4-5 steps give ~2e-2 relative error. Bound: 5e-2.
    assert _rel(out, ref) < 5e-2
    sv = np.linalg.svd(out, compute_uv=False)
    assert sv.max() < 1.25


@pytest.mark.parametrize("method", ITERATIVE)
def test_bfloat16_iteration_stays_bfloat16(method):
    # every matmul of a bf16 iteration must take bf16 operands (tensor-core GEMMs; a float32
    # promotion ran the iteration at half speed on an H100) and accumulate in float32.
    x = jnp.zeros((2, 16, 64), jnp.bfloat16)
    jaxpr = jax.make_jaxpr(lambda a: linalg.orthogonalize(a, method))(x)
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert dots
    for e in dots:
        assert all(v.aval.dtype == jnp.bfloat16 for v in e.invars), e
        assert e.outvars[0].aval.dtype == jnp.float32, e


def test_compute_dtype_separate_from_input_dtype():
    x = jnp.asarray(_rng(10).standard_normal((16, 64)), jnp.float32)
    out = linalg.polar_express(x, dtype=jnp.bfloat16)
    assert out.dtype == jnp.float32
    # bf16 rounding (eps 3.9e-3) of the operands of each step, amplified on the smallest
    # singular values by the polynomial's slope; 5e-2 bounds it (3.7e-2 measured).
    assert 1e-4 < _rel(np.asarray(out), np.asarray(linalg.polar_express(x))) < 5e-2


# ---------------------------------------------------------------------------- bad input
def test_bad_dtype_and_rank():
    with pytest.raises(TypeError, match="floating"):
        linalg.orthogonalize(jnp.ones((4, 4), jnp.int32))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        linalg.orthogonalize(jnp.ones((4,)))
    with pytest.raises(ValueError, match="unknown method"):
        linalg.orthogonalize(jnp.ones((4, 4)), "cholesky")
    with pytest.raises(ValueError, match="shape"):
        linalg.newton_schulz(jnp.ones((4, 4)), coeffs=(1.0, 2.0))
    with pytest.raises(ValueError, match="disagrees"):
        linalg.newton_schulz(jnp.ones((4, 4)), coeffs=np.ones((3, 3)), steps=5)
    with pytest.raises(ValueError, match="restarts"):
        linalg.gram_newton_schulz(jnp.ones((4, 8)), steps=5, restarts=(5,))
    with pytest.raises(ValueError, match="nonfinite"):
        linalg.orthogonalize(jnp.ones((4, 4)), nonfinite="ignore")


@pytest.mark.parametrize("method", ITERATIVE + EXACT)
def test_nonfinite_input_never_returns_a_plausible_matrix(method):
    x = _rng(11).standard_normal((3, 8, 12)).astype(np.float32)
    x[1, 2, 3] = np.nan
    x[2, 0, 0] = np.inf
    out = np.asarray(jax.jit(lambda a: linalg.orthogonalize(a, method))(jnp.asarray(x)))
    assert np.all(np.isnan(out[1])) and np.all(np.isnan(out[2]))  # whole slice, not partial
    np.testing.assert_allclose(out[0], _orth(x[0], method), atol=1e-5)  # others untouched
    zeroed = np.asarray(linalg.orthogonalize(jnp.asarray(x), method, nonfinite="zero"))
    assert np.all(zeroed[1:] == 0) and np.all(np.isfinite(zeroed))
    with pytest.raises(ValueError, match="NaN or Inf"):
        linalg.orthogonalize(jnp.asarray(x), method, nonfinite="raise")
    with pytest.raises(ValueError, match="concrete"):
        jax.jit(lambda a: linalg.orthogonalize(a, method, nonfinite="raise"))(jnp.asarray(x))


# ------------------------------------------------------------------------------ jit / FLOPs
def test_jit_matches_eager():
    x = jnp.asarray(_rng(12).standard_normal((2, 16, 40)), jnp.float32)
    for method in ITERATIVE + EXACT:
        eager = linalg.orthogonalize(x, method)
        jitted = jax.jit(lambda a, m=method: linalg.orthogonalize(a, m))(x)
        np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5)


@pytest.mark.parametrize(
    "method,shape",
    [
        ("newton_schulz", (64, 64)),
        ("newton_schulz", (64, 256)),
        ("gram_newton_schulz", (64, 512)),
        ("auto", (64, 512)),
        ("auto", (32, 256)),
    ],
)
def test_flop_count_matches_compiled_cost(method, shape):
    # XLA's own cost analysis of the compiled program is an independent count; elementwise
    # work adds O(mn) per step, so the matmul-only formula must agree within 5%.
    x = jnp.zeros(shape, jnp.float32)
    fn = jax.jit(lambda a: linalg.orthogonalize(a, method))
    cost = fn.lower(x).compile().cost_analysis()
    if isinstance(cost, list):
        cost = cost[0]
    if not cost or "flops" not in cost:
        pytest.skip("this JAX backend reports no cost analysis")
    counted = linalg.orthogonalizer_flops(shape, method)
    assert abs(cost["flops"] - counted) / counted < 0.05


# ------------------------------------------------------------- PSD roots and normalizers
def _psd(n, cond, seed):
    q = _orthogonal(n, seed)
    return (q * np.geomspace(1.0, 1.0 / cond, n)) @ q.T


@pytest.mark.parametrize("method,cond,tol", [("eigh", 1e4, 1e-4), ("newton_schulz", 1e2, 1e-4)])
def test_inverse_sqrt_psd(method, cond, tol):
    a = _psd(24, cond, 13)
    w, v = np.linalg.eigh(a)
    eps = 1e-7
    shifted = w + eps * w.mean()
    ref = (v / np.sqrt(shifted)) @ v.T
    out = np.asarray(
        linalg.inverse_sqrt_psd(jnp.asarray(a, jnp.float32), method=method, eps=eps, steps=40),
        np.float64,
    )
    # float32 eigen/iteration error relative to the largest entry of A^{-1/2} (~√cond)
    assert _rel(out, ref) < tol
    # scale covariance f(cA) = f(A)/√c
    out4 = np.asarray(
        linalg.inverse_sqrt_psd(jnp.asarray(4 * a, jnp.float32), method=method, eps=eps, steps=40),
        np.float64,
    )
    assert _rel(out4, out / 2) < 1e-4


def test_inverse_sqrt_psd_singular_and_zero():
    a = np.zeros((6, 6))
    a[:2, :2] = [[2.0, 1.0], [1.0, 2.0]]
    out = np.asarray(linalg.inverse_sqrt_psd(jnp.asarray(a, jnp.float32)))
    assert np.all(np.isfinite(out))
    assert np.all(np.asarray(linalg.inverse_sqrt_psd(jnp.zeros((5, 5)))) == 0)
    with pytest.raises(ValueError, match="square"):
        linalg.inverse_sqrt_psd(jnp.ones((3, 4)))


def test_row_col_normalize_and_center():
    x = _rng(14).standard_normal((5, 7)).astype(np.float32)
    x[2] = 0.0
    r = np.asarray(linalg.row_normalize(jnp.asarray(x)))
    norms = np.linalg.norm(r, axis=1)
    np.testing.assert_allclose(np.delete(norms, 2), 1.0, atol=1e-6)
    assert np.all(r[2] == 0)  # zero rows stay zero
    c = np.asarray(linalg.col_normalize(jnp.asarray(x)))
    np.testing.assert_allclose(c, np.asarray(linalg.row_normalize(jnp.asarray(x.T))).T, atol=1e-7)
    cen = np.asarray(linalg.center(jnp.asarray(x)))
    np.testing.assert_allclose(cen.sum(axis=0), 0.0, atol=1e-5)  # 1ᵀ Π⊥X = 0
    np.testing.assert_allclose(cen, x - x.mean(axis=0), atol=1e-6)
    with pytest.raises(TypeError):
        linalg.row_normalize(jnp.ones((3, 3), jnp.int32))


# ------------------------------------------------------------------------------ benchmark
def test_orthogonalize_benchmark_smoke(tmp_path):
    from experiments.bench import orthogonalize as bench

    out = tmp_path / "bench.json"
    result = bench.main(["--quick", "--dtypes", "float32", "--skip", "qdwh", "--out", str(out)])
    assert out.exists()
    names = {r["method"] for r in result["rows"]}
    assert {"optax_ns5", "auto (default)", "gram_newton_schulz", "svd"} <= names
    for row in result["rows"]:
        assert row["err"] < 0.4 and row["ms"] > 0
