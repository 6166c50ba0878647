"""Parity of optzoo's symmetry-compatible maps and stack with the authors' released code.

Reference: github.com/timlautk/equivariant_optimizers at a773b3f (HEAD, 2026-05-29): its
``optim/rownorm.py``, ``rightpolargrad.py``, ``leftpolargrad.py``, ``hybrid.py``,
``invsqrt.py``, ``polar_express.py``, ``muon_heads.py``, ``muon_experts.py``, ``routing.py``,
the ``train_*.py`` defaults and the README's commands; and Dao-AILab/gram-newton-schulz 0.1.4
(``GramNewtonSchulz``, unchanged at its HEAD f08f25e) which the released runs call for the
hybrid and right maps. The numpy functions below are ports of those update recursions written
from reading that code (PyTorch ``(out, in)`` layout: units are rows), not re-derivations of
optzoo: they follow the reference's own choices (absolute damping ``eps``, Frobenius scaling,
``ν = tr(CL)`` or ``⟨M, U⟩``, row re-centering inside the hybrid, Muon's un-normalized
momentum ``b ← μb + g``, decay before the step, per-layout shape factors).

Tolerances (relative Frobenius errors over every step):
* float64: the iterations are identical algebra in both implementations, differing only in
  summation order: 1e-9 (measured <= 1e-12 except where stated).
* float32: O(10) matmuls per step, each ~1e-7 relative, amplified by the conditioning of the
  Gram (<= ~1e2 on these Gaussian blocks): 2e-4 for spectral maps (measured <= 3e-5), 1e-5 for
  row maps.
* float16 Gram Newton-Schulz (the released compute dtype): both round every product to
  float16 (unit roundoff 4.9e-4) but accumulate in different orders, so roundings flip: 2e-2
  (measured ~3e-3).
Orientation: optzoo is fed Flax ``(fan_in, fan_out)`` kernels, i.e. the transpose of the
PyTorch weight, wherever the reference's layout says so.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optzoo import routing, symmetric
from optzoo._symmetric_core import PE_UNSCALED
from optzoo.layout import MatrixLayout
from optzoo.symmetric_stack import PRESETS, symmetry_compatible, symmetry_compatible_numerics

BETA, LR, WD, STEPS = 0.9, 1e-2, 0.1, 4
TOL = {"float64": 1e-9, "float32": 2e-4}
ROW_TOL = {"float64": 1e-10, "float32": 1e-5}
F16_TOL = 2e-2

# ------------------------------------------------------------------ reference ports
# Polar Express quintics (Amsel et al.) of the reference's invsqrt.py / hybrid.py tables and
# gram_newton_schulz.coefficients, before the safety factor: the published numbers are data
# that optzoo keeps once (PE_UNSCALED, pinned by test_the_polar_express_table_is_the_published
# _one); the port applies the reference's factor itself: every row but the last divided by
# 1.05 in the sense p(x/1.05); rows past the table repeat its last row.
_PE_RAW = list(PE_UNSCALED)
_PE_TABLE = [(a / 1.05, b / 1.05**3, c / 1.05**5) for a, b, c in _PE_RAW[:-1]] + [_PE_RAW[-1]]
# Muon's Polar Express (polar_express.py: 5 steps, safety 2e-2, cushion 2)
_MUON_PE = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def pe_rows(steps):
    return [_PE_TABLE[min(k, len(_PE_TABLE) - 1)] for k in range(steps)]


def sym(a):
    return 0.5 * (a + np.swapaxes(a, -1, -2))


def ref_center(x):
    """Subtract the mean unit (row) of each matrix: the reference's _center_rows."""
    return x - x.mean(axis=-2, keepdims=True)


def ref_rowscale(x, eps=1e-8):
    """row_ops.apply_row_scaling, mode 'inverse_eps': x_i / (||x_i|| + eps)."""
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + eps)


def ref_invsqrt_pe(c, eps=1e-8, steps=5):
    """invsqrt.symmetric_matrix_invsqrt_polar_express in the dtype of ``c``: damp by eps*I,
    divide by 1.02*||A||_F + eps, run the coupled (Y, Z) quintic iteration, undo the scale."""
    dt = c.dtype
    n = c.shape[-1]
    eye = np.eye(n, dtype=dt)
    a_mat = sym(c) + dt.type(eps) * eye
    scale = dt.type(1.02) * np.linalg.norm(a_mat, axis=(-2, -1), keepdims=True) + dt.type(eps)
    y, z = a_mat / scale, np.broadcast_to(eye, a_mat.shape).copy()
    for a, b, cc in pe_rows(steps):
        r = sym(eye - z @ y)
        poly = dt.type(a + b + cc) * eye + dt.type(-b - 2 * cc) * r + dt.type(cc) * (r @ r)
        y, z = y @ poly, poly @ z
    return z / np.sqrt(scale)


def _half_mm(a, b, out):
    """A float16 GEMM: float16 operands, float32 accumulation, result rounded to ``out``."""
    return (a.astype(np.float32) @ b.astype(np.float32)).astype(out)


def ref_gram_ns(x, dtype=np.float16, steps=5, ns_eps=1e-7, restarts=(2,)):
    """GramNewtonSchulz.__call__: per matrix of a (b, m, n) stack. Tall matrices are worked on
    transposed; divide by ||X||_F + ns_eps; cast to the compute dtype; wide matrices run the
    Gram form (R = XX^T, Q accumulating aI + bR + cR^2, R updated as (aI+Z) R (aI+Z), rebuild
    X = QX and R at each restart step), square ones the plain quintic; cast back."""
    x = np.asarray(x)
    out_dt = x.dtype
    tall = x.shape[-2] > x.shape[-1]
    w = np.swapaxes(x, -1, -2) if tall else x
    w = w.astype(np.float32) if dtype == np.float16 else w.astype(dtype)
    w = (w / (np.linalg.norm(w, axis=(-2, -1), keepdims=True) + ns_eps)).astype(dtype)
    m, n = w.shape[-2:]
    coeffs = [_PE_TABLE[k] for k in range(steps)]

    def mm(a, b):
        return _half_mm(a, b, dtype) if dtype == np.float16 else a @ b

    def lin(*pairs):  # Σ k·t with one rounding
        acc = np.float32 if dtype == np.float16 else dtype
        return sum(acc(k) * t.astype(acc) for k, t in pairs).astype(dtype)

    if m < n:
        eye = np.eye(m, dtype=dtype)
        r = mm(w, np.swapaxes(w, -1, -2))
        q = None
        for i, (a, b, c) in enumerate(coeffs):
            if i in restarts and i != 0:
                w = mm(q, w)
                r = mm(w, np.swapaxes(w, -1, -2))
                q = None
            z = lin((b, r), (c, mm(r, r)))
            q = lin((1.0, z), (a, eye)) if q is None else lin((a, q), (1.0, mm(q, z)))
            if i < len(coeffs) - 1 and i + 1 not in restarts:
                rz = lin((a, r), (1.0, mm(r, z)))
                r = lin((a, rz), (1.0, mm(z, rz)))
        w = mm(q, w)
    else:
        for a, b, c in coeffs:
            g = mm(w, np.swapaxes(w, -1, -2))
            w = lin((a, w), (1.0, mm(lin((b, g), (c, mm(g, g))), w)))
    w = w.astype(out_dt)
    return np.swapaxes(w, -1, -2) if tall else w


def ref_polar_express_muon(g):
    """polar_express._polar_express_impl in the dtype of ``g`` (released: bfloat16)."""
    x = np.swapaxes(g, -1, -2) if g.shape[-2] > g.shape[-1] else g
    x = x / (np.linalg.norm(x, axis=(-2, -1), keepdims=True) * 1.02 + 1e-6)
    for a, b, c in _MUON_PE:
        s = x @ np.swapaxes(x, -1, -2)
        x = a * x + (b * s + c * s @ s) @ x
    return np.swapaxes(x, -1, -2) if g.shape[-2] > g.shape[-1] else x


class RefState:
    """Parameters and momentum of one reference optimizer (decay before the step)."""

    def __init__(self, w):
        self.w, self.m = np.array(w), np.zeros_like(w)

    def step(self, g, direction, lr=LR, wd=0.0, beta=BETA):
        self.m = beta * self.m + (1 - beta) * g
        self.w = self.w * (1 - lr * wd)
        self.w = self.w - lr * direction(self.m)
        return self.w


def ref_rownorm_dir(m, center=False, eps=1e-8):
    """RowNormM._oriented_row_update (orientation 'row')."""
    work = ref_center(m) if center else m
    u = ref_rowscale(work, eps)
    return ref_center(u) if center else u


def ref_right_dir(m, center=False, alpha=1.0, eps=1e-8, impl="standard", dtype=np.float16):
    """RightPolarGradM (impl 'standard': PE inverse root of C = M^T M, nu = tr(C R)) and
    RightPolarGradM_GramNS (impl 'gramns': U = GNS(M), nu = <M, U>)."""
    work = ref_center(m) if center else m
    if impl == "standard":
        c = np.swapaxes(work, -1, -2) @ work
        r = ref_invsqrt_pe(c, eps)
        u = work @ r
        nu = np.trace(c @ r, axis1=-2, axis2=-1)[..., None, None]
    else:
        u = ref_gram_ns(work[None], dtype)[0]
        nu = np.sum(work * u)
    u = max(float(np.squeeze(nu)), eps) ** alpha * u
    return ref_center(u) if center else u


def ref_left_dir(m, center=True, alpha=1.0, eps=1e-8):
    """LeftPolarGradM: C = Y Y^T, L = PE inverse root, nu = tr(C L), update nu^a L Y."""
    work = ref_center(m) if center else m
    c = work @ work.T
    left = ref_invsqrt_pe(c, eps)
    nu = np.trace(c @ left)
    u = max(nu, eps) ** alpha * (left @ work)
    return ref_center(u) if center else u


def ref_hybrid_dir(
    m, order, center=False, alpha=1.0, eps=1e-8, impl="gramns", left=False, dtype=np.float16
):
    """HybridPolarGradM (impl 'standard': PE inverse root, right Gram unless ``left``) and
    HybridPolarGradM_GramNS (impl 'gramns'); impl 'exact' uses the SVD polar factor. nu is the
    sum over all entries (of the whole, possibly stacked, tensor)."""
    work = ref_center(m) if center else m

    def polarize(x):
        if impl == "gramns":
            return ref_gram_ns(x if x.ndim == 3 else x[None], dtype).reshape(x.shape)
        if impl == "exact":
            u, _, vt = np.linalg.svd(x, full_matrices=False)
            return u @ vt
        if left:
            return ref_invsqrt_pe(x @ np.swapaxes(x, -1, -2), eps) @ x
        return x @ ref_invsqrt_pe(np.swapaxes(x, -1, -2) @ x, eps)

    if order == "polar_then_row":
        u = polarize(work)
        scale = max(float(np.sum(work * u)), eps) ** alpha if alpha else 1.0
        out = ref_rowscale(scale * u, eps)
    else:
        row = ref_rowscale(work, eps)
        if center:
            row = ref_center(row)  # "Project before the polar step"
        u = polarize(row)
        scale = max(float(np.sum(row * u)), eps) ** alpha if alpha else 1.0
        out = scale * u
    return ref_center(out) if center else out


class RefMuon:
    """MuonHeadsPolarExpress / BatchedExpertMuonPolarExpress on one (out, in) weight (or an
    expert stack): b <- mu b + g, Nesterov g + mu b, polar per block, shape factor
    max(1, rows/cols)^0.5 of the layout, decay before the step."""

    def __init__(self, w, polar_blocks, factor, mu=0.95):
        self.w, self.b = np.array(w), np.zeros_like(w)
        self.polar_blocks, self.factor, self.mu = polar_blocks, factor, mu

    def step(self, g, lr=LR, wd=0.0):
        self.b = self.mu * self.b + g
        x = g + self.mu * self.b
        self.w = self.w * (1 - lr * wd) - lr * self.factor * self.polar_blocks(x)
        return self.w


def heads_qkv(x, h, dh):  # 'qkv' layout: (H*dh, d) -> (H, dh, d)
    return ref_polar_express_muon(x.reshape(h, dh, -1)).reshape(x.shape)


def heads_o(x, h, dh):  # 'o' layout: (d, H*dh) -> (H, d, dh)
    d = x.shape[0]
    blocks = np.transpose(x.reshape(d, h, dh), (1, 0, 2))
    return np.transpose(ref_polar_express_muon(blocks), (1, 0, 2)).reshape(d, h * dh)


# ------------------------------------------------------------------------- helpers
def gaussian(shape, seed, dtype):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def rel(a, b):
    return float(
        np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64))
        / max(np.linalg.norm(np.asarray(b, np.float64)), 1e-30)
    )


def run_alias(tx, w0, gs):
    """Parameter trajectory of an optzoo alias (jitted update)."""
    w, state = jnp.asarray(w0), tx.init(jnp.asarray(w0))
    update = jax.jit(tx.update)
    out = []
    for g in gs:
        u, state = update(jnp.asarray(g), state, w)
        w = optax.apply_updates(w, u)
        out.append(np.asarray(w))
    return out


def compare(tx, ref_dir, shape, dtype, tol, seed=0, flax_t=False, wd=0.0, steps=STEPS):
    """optzoo alias vs the reference (units as rows) over ``steps`` with momentum and decay.
    ``flax_t``: optzoo gets the transpose (a Flax (fan_in, fan_out) kernel)."""
    gs = [gaussian(shape, seed + 1 + t, dtype) for t in range(steps)]
    w0 = gaussian(shape, seed, dtype)
    ref = RefState(w0.astype(dtype))
    to = (lambda x: x.T) if flax_t else (lambda x: x)
    got = run_alias(tx, to(w0), [to(g) for g in gs])
    worst = 0.0
    for g, w in zip(gs, got, strict=True):
        want = ref.step(g, ref_dir, wd=wd)
        worst = max(worst, rel(to(w), want))
    assert worst < tol, worst
    return worst


DTYPES = ["float64", "float32"]
SLOW64 = [pytest.param("float64", marks=pytest.mark.slow), "float32"]


@pytest.fixture(params=DTYPES)
def dtype(request):
    if request.param == "float64":
        with jax.enable_x64(True):
            yield np.float64
    else:
        yield np.float32


def _name(dt):
    return np.dtype(dt).name


# ------------------------------------------------------------------------ the maps
def test_the_polar_express_table_is_the_published_one():
    """The table optzoo and the ports share: 8 rows, the first as published in
    gram_newton_schulz/coefficients.py, the last Newton–Schulz's limit quintic
    ``p(x) = (15x − 10x³ + 3x⁵)/8`` (``p(1) = 1``, ``p'(1) = 0``)."""
    assert len(PE_UNSCALED) == 8
    assert PE_UNSCALED[0] == (8.28721201814563, -23.595886519098837, 17.300387312530933)
    assert PE_UNSCALED[-1] == (15 / 8, -10 / 8, 3 / 8)


@pytest.mark.parametrize("center", [False, True])
def test_rownorm_parity(dtype, center):
    wd = 0.0 if center else WD
    tx = symmetric.rownorm(LR, unit_axis=-1, beta=BETA, center=center, weight_decay=wd)
    compare(
        tx,
        lambda m: ref_rownorm_dir(m, center),
        (9, 5),
        dtype,
        ROW_TOL[_name(dtype)],
        flax_t=True,
        wd=wd,
    )


@pytest.mark.parametrize(
    "center,dtype",
    [
        (True, "float32"),
        (False, "float32"),
        (False, "float64"),
        pytest.param(True, "float64", marks=pytest.mark.slow),
    ],
    indirect=["dtype"],
)
def test_right_one_sided_parity_pe_invsqrt(dtype, center):
    # LM-head / embedding orientation (V, d) = (12, 4), units on axis 0.
    wd = 0.0 if center else WD
    tx = symmetric.one_sided_spectral(
        LR,
        unit_axis=0,
        beta=BETA,
        center=center,
        weight_decay=wd,
        numerics="pe_invsqrt",
        numerics_dtype=dtype,
    )
    compare(tx, lambda m: ref_right_dir(m, center), (12, 4), dtype, TOL[_name(dtype)], wd=wd)


@pytest.mark.parametrize("dtype", SLOW64, indirect=True)
def test_right_one_sided_parity_gram_ns(dtype):
    tx = symmetric.one_sided_spectral(
        LR, unit_axis=0, beta=BETA, weight_decay=WD, numerics="gram_ns", numerics_dtype=dtype
    )
    compare(
        tx,
        lambda m: ref_right_dir(m, impl="gramns", dtype=dtype),
        (12, 4),
        dtype,
        TOL[_name(dtype)],
        wd=WD,
    )


@pytest.mark.parametrize(
    "center,dtype",
    [
        (True, "float32"),
        (False, "float32"),
        (True, "float64"),
        pytest.param(False, "float64", marks=pytest.mark.slow),
    ],
    indirect=["dtype"],
)
def test_left_spectral_parity(dtype, center):
    # router: PyTorch (E, d) = Flax kernel (d, E) transposed; the released numerics
    wd = 0.0 if center else WD
    tx = symmetric.left_spectral(
        LR, unit_axis=-1, beta=BETA, center=center, weight_decay=wd, numerics="reference"
    )
    if dtype == np.float64:
        tx = symmetric.left_spectral(
            LR,
            unit_axis=-1,
            beta=BETA,
            center=center,
            weight_decay=wd,
            numerics="pe_invsqrt",
            numerics_dtype=np.float64,
        )
    compare(
        tx, lambda m: ref_left_dir(m, center), (4, 10), dtype, TOL[_name(dtype)], flax_t=True, wd=wd
    )


@pytest.mark.parametrize(
    "order,center,dtype",
    [
        ("row_then_polar", True, "float32"),
        ("polar_then_row", False, "float32"),
        ("row_then_polar", False, "float64"),
        pytest.param("row_then_polar", False, "float32", marks=pytest.mark.slow),
        pytest.param("polar_then_row", True, "float32", marks=pytest.mark.slow),
        pytest.param("row_then_polar", True, "float64", marks=pytest.mark.slow),
        pytest.param("polar_then_row", False, "float64", marks=pytest.mark.slow),
        pytest.param("polar_then_row", True, "float64", marks=pytest.mark.slow),
    ],
    indirect=["dtype"],
)
def test_hybrid_parity_gram_ns(dtype, order, center):
    # embedding-like (V, d) = (10, 4) and, centered, an LM head (Flax (d, V) kernel)
    wd = 0.0 if center else WD
    tx = symmetric.hybrid(
        LR,
        unit_axis=-1 if center else 0,
        beta=BETA,
        order=order,
        center=center,
        weight_decay=wd,
        numerics="gram_ns",
        numerics_dtype=dtype,
    )
    compare(
        tx,
        lambda m: ref_hybrid_dir(m, order, center, dtype=dtype),
        (10, 4),
        dtype,
        TOL[_name(dtype)],
        flax_t=center,
        wd=wd,
    )


@pytest.mark.parametrize(
    "order", ["row_then_polar", pytest.param("polar_then_row", marks=pytest.mark.slow)]
)
def test_hybrid_router_parity_pe_invsqrt(order):
    # HybridPolarGradM (standard class) with left=True on a centered router (E, d) = (4, 10)
    tx = symmetric.hybrid(
        LR, unit_axis=-1, beta=BETA, order=order, center=True, side="left", numerics="pe_invsqrt"
    )
    compare(
        tx,
        lambda m: ref_hybrid_dir(m, order, True, impl="standard", left=True),
        (4, 10),
        np.float32,
        TOL["float32"],
        flax_t=True,
    )


def test_centered_hybrid_recenters_rows_before_the_polar_factor():
    """The fix of issue 15 item 1, with exact numerics on both sides (SVD polar factor).

    Before (optzoo at 985adad: only the input and the output were centered) the per-step
    direction differed from the reference's by up to 7.0e-3 relative (1 - cos = 2.5e-5) on this
    small momentum (the issue measured 7-14 % on LM-head-like momenta); repro:
    ``scale_by_hybrid(0.9, unit_axis=0, center=True)`` vs ``ref_hybrid_dir(m,
    'row_then_polar', True, impl='exact')``. After: <= 2.7e-6 (float32 eigh vs float64 SVD).
    """
    gs = [
        gaussian((16, 6), t, np.float32) + 3.0 * gaussian((1, 6), 99, np.float32)
        for t in range(STEPS)
    ]  # a shared mean row, as LM-head gradients have
    w0 = np.zeros((16, 6), np.float32)
    tx = symmetric.scale_by_hybrid(BETA, unit_axis=0, center=True)
    state, worst, update = tx.init(jnp.asarray(w0)), 0.0, jax.jit(tx.update)
    ref = RefState(w0.astype(np.float64))
    for g in gs:
        u, state = update(jnp.asarray(g), state)
        ref.m = BETA * ref.m + (1 - BETA) * g.astype(np.float64)
        want = ref_hybrid_dir(ref.m, "row_then_polar", True, impl="exact")
        worst = max(worst, rel(u, want))
    assert worst < 2e-5, worst


def test_gram_ns_float16_released_numerics_parity():
    """The released compute dtype: both round every GEMM to float16 (see module docstring)."""
    tx = symmetric.hybrid(LR, unit_axis=0, beta=BETA, weight_decay=WD, numerics="reference")
    err = compare(
        tx,
        lambda m: ref_hybrid_dir(m, "row_then_polar", dtype=np.float16),
        (24, 8),
        np.float32,
        F16_TOL,
        wd=WD,
    )
    assert err < F16_TOL


@pytest.mark.slow
def test_stacked_experts_hybrid_sums_nu_over_the_leaf():
    # BatchedExpertHybridPolarGradM_GramNS on an expert stack [E, rows, cols]: nu summed over
    # all entries of the tensor (optzoo: nu_scope='leaf').
    e, r, d = 3, 6, 4
    gs = [gaussian((e, r, d), 10 + t, np.float32) for t in range(STEPS)]
    tx = symmetric.scale_by_hybrid(
        BETA,
        unit_axis=-2,
        nu_scope="leaf",
        numerics="gram_ns",
        numerics_dtype=np.float32,
        layout=MatrixLayout(),
    )
    state, worst, update = tx.init(jnp.asarray(gs[0])), 0.0, jax.jit(tx.update)
    m = np.zeros((e, r, d), np.float32)
    for g in gs:
        u, state = update(jnp.asarray(g), state)
        m = BETA * m + (1 - BETA) * g
        want = ref_hybrid_dir(m, "row_then_polar", dtype=np.float32)
        worst = max(worst, rel(u, want))
    assert worst < TOL["float32"], worst


# ----------------------------------------------------------------- Muon (head/expert)
def test_headwise_and_whole_matrix_muon_parity():
    """MuonHeadsPolarExpress: q ('qkv' layout) and o ('o' layout) head-wise, shape factors
    max(1, dh/d) = 1 for q and max(1, d/dh) for o's (d, dh) head blocks (so o's head blocks get
    sqrt(d/dh) = 2 here, the reference's own choice; a whole o matrix gets 1)."""
    d, h, dh = 8, 4, 2
    tree = {
        "attn": {
            "q_proj": {"kernel": jnp.zeros((d, h * dh))},
            "o_proj": {"kernel": jnp.zeros((h * dh, d))},
        }
    }
    tx = symmetry_compatible(LR, head_dim=dh, ortho_dtype=jnp.float32, weight_decay=WD)
    wq = RefMuon(np.zeros((h * dh, d)), lambda x: heads_qkv(x, h, dh), 1.0)
    wo = RefMuon(np.zeros((d, h * dh)), lambda x: heads_o(x, h, dh), np.sqrt(d / dh))
    state, params, worst, update = tx.init(tree), tree, 0.0, jax.jit(tx.update)
    for t in range(STEPS):
        gq, go = (
            gaussian((h * dh, d), 20 + t, np.float32),
            gaussian((d, h * dh), 30 + t, np.float32),
        )
        g = {
            "attn": {
                "q_proj": {"kernel": jnp.asarray(gq.T)},
                "o_proj": {"kernel": jnp.asarray(go.T)},
            }
        }
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
        worst = max(
            worst,
            rel(params["attn"]["q_proj"]["kernel"].T, wq.step(gq, wd=WD)),
            rel(params["attn"]["o_proj"]["kernel"].T, wo.step(go, wd=WD)),
        )
    assert worst < 2e-4, worst


@pytest.mark.parametrize("family", ["olmoe", pytest.param("gptoss", marks=pytest.mark.slow)])
def test_expert_muon_parity(family):
    """BatchedExpertMuonPolarExpress with the released routing's layouts.

    OLMoE: gate_up (E, 2f, d) orientation 'row' = one joint polar factor of [gate; up] per
    expert, factor max(1, 2f/d); down (E, d, f) orientation 'col' = factor max(1, f/d) = 1.
    gpt-oss: gate_up (E, d, 2f) interleaved, split into gate and up, factor max(1, d/f);
    down (E, f, d) orientation 'row', factor max(1, f/d). optzoo's tree has separate Flax
    gate_proj/up_proj (E, d, f) leaves (OLMoE) or a fused interleaved gate_up_proj (gpt-oss).
    Before (split + Jordan factors, optzoo at 985adad, preset olmoe_row, one step): OLMoE
    gate|up 41 % from the reference, down 1.414x its norm; after: 6e-6 and 1.000.
    """
    e, d, f = 2, 8, 4
    rng = np.random.default_rng(40)
    pe = ref_polar_express_muon
    if family == "olmoe":
        tree = {
            "experts": {
                "gate_proj": jnp.zeros((e, d, f)),
                "up_proj": jnp.zeros((e, d, f)),
                "down_proj": jnp.zeros((e, f, d)),
            }
        }
        ref_gu = RefMuon(np.zeros((e, 2 * f, d)), pe, np.sqrt(max(1, 2 * f / d)))
        ref_dn = RefMuon(
            np.zeros((e, d, f)),
            lambda x: np.swapaxes(pe(np.swapaxes(x, -1, -2)), -1, -2),
            np.sqrt(max(1, f / d)),
        )
        preset = "olmoe_row"
    else:
        tree = {
            "experts": {"gate_up_proj": jnp.zeros((e, d, 2 * f)), "down_proj": jnp.zeros((e, f, d))}
        }

        def split(x):
            out = np.empty_like(x)
            out[..., ::2], out[..., 1::2] = pe(x[..., ::2]), pe(x[..., 1::2])
            return out

        ref_gu = RefMuon(np.zeros((e, d, 2 * f)), split, np.sqrt(max(1, d / f)))
        ref_dn = RefMuon(np.zeros((e, f, d)), pe, np.sqrt(max(1, f / d)))
        preset = "gptoss_row"
    tx = symmetry_compatible(
        LR, preset=preset, ortho_dtype=jnp.float32, weight_decay=WD, lr_multipliers={"experts": 1.0}
    )
    state, params, worst, update = tx.init(tree), tree, 0.0, jax.jit(tx.update)
    for _ in range(STEPS):
        g = {
            "experts": {
                k: jnp.asarray(rng.standard_normal(v.shape), jnp.float32)
                for k, v in tree["experts"].items()
            }
        }
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
        ge = {k: np.asarray(v, np.float64) for k, v in g["experts"].items()}
        pe_ = {k: np.asarray(v, np.float64) for k, v in params["experts"].items()}
        if family == "olmoe":  # torch gate_up = [gate^T; up^T] (E, 2f, d); down^T (E, d, f)
            gu = np.concatenate(
                [np.swapaxes(ge["gate_proj"], 1, 2), np.swapaxes(ge["up_proj"], 1, 2)], axis=1
            )
            want = ref_gu.step(gu, wd=WD)
            got = np.concatenate(
                [np.swapaxes(pe_["gate_proj"], 1, 2), np.swapaxes(pe_["up_proj"], 1, 2)], axis=1
            )
            worst = max(worst, rel(got, want))
            worst = max(
                worst,
                rel(
                    np.swapaxes(pe_["down_proj"], 1, 2),
                    ref_dn.step(np.swapaxes(ge["down_proj"], 1, 2), wd=WD),
                ),
            )
        else:  # gpt-oss stores (in, out) like Flax
            worst = max(worst, rel(pe_["gate_up_proj"], ref_gu.step(ge["gate_up_proj"], wd=WD)))
            worst = max(worst, rel(pe_["down_proj"], ref_dn.step(ge["down_proj"], wd=WD)))
    assert worst < 2e-4, worst
    # negative control: the split variant with Jordan's factors is a different update
    other = symmetry_compatible(
        LR,
        preset=preset,
        ortho_dtype=jnp.float32,
        weight_decay=WD,
        experts_gate_up="split" if family == "olmoe" else "joint",
        expert_shape_factor="jordan",
    )
    g = {
        "experts": {
            k: jnp.asarray(rng.standard_normal(v.shape), jnp.float32)
            for k, v in tree["experts"].items()
        }
    }
    u1, _ = update(g, tx.init(tree), tree)
    u2, _ = jax.jit(other.update)(g, other.init(tree), tree)
    assert rel(jax.tree.leaves(u2)[0], jax.tree.leaves(u1)[0]) > 0.05


# ------------------------------------------------------------- the released presets
# (embedding, lm_head, mlp, router optimizers; --lr_muon, --lr, --lr_embed, --lr_lm_head,
# --lr_router) copied by hand from the README's 20 torchrun commands at a773b3f. 'matrix' =
# Muon; dense runs have no router (None); every run: experts Muon (train_*.py default).
README = {
    "qwen3_swiglu_row": ("row", "row", "hybrid", None, 2e-2, 5e-2, 5e-1, 5e-3, None),
    "qwen3_swiglu_hybrid": ("hybrid", "hybrid", "hybrid", None, 2e-2, 5e-2, 1e0, 1e-2, None),
    "qwen3_swiglu_adamw": ("adamw", "adamw", "hybrid", None, 2e-2, 5e-2, 1e-1, 1e-3, None),
    "qwen3_row": ("row", "row", "muon", None, 2e-2, 5e-2, 5e-1, 5e-3, None),
    "qwen3_hybrid": ("hybrid", "hybrid", "muon", None, 2e-2, 5e-2, 1e0, 1e-2, None),
    "qwen3_adamw": ("adamw", "adamw", "muon", None, 2e-2, 5e-2, 1e-1, 1e-3, None),
    "gemma3_swiglu_row": ("row", "row", "hybrid", None, 2e-2, 5e-2, 5e-3, 5e-3, None),
    "gemma3_swiglu_hybrid": ("hybrid", "hybrid", "hybrid", None, 2e-2, 5e-2, 1e-2, 1e-2, None),
    "gemma3_swiglu_adamw": ("adamw", "adamw", "hybrid", None, 2e-2, 5e-2, 5e-4, 5e-4, None),
    "gemma3_row": ("row", "row", "muon", None, 2e-2, 5e-2, 2.5e-3, 2.5e-3, None),
    "gemma3_hybrid": ("hybrid", "hybrid", "muon", None, 2e-2, 5e-2, 2.5e-3, 2.5e-3, None),
    "gemma3_adamw": ("adamw", "adamw", "muon", None, 2e-2, 5e-2, 5e-4, 5e-4, None),
    "olmoe_row": ("row", "row", "muon", "row", 5e-3, 1e-2, 5e-1, 5e-3, 7.5e-4),
    "olmoe_left": ("row", "row", "muon", "left", 5e-3, 1e-2, 5e-1, 5e-3, 7.5e-4),
    "olmoe_adamw_router": ("row", "row", "muon", "adamw", 5e-3, 1e-2, 5e-1, 5e-3, 7.5e-4),
    "olmoe_adamw": ("adamw", "adamw", "muon", "adamw", 5e-3, 1e-2, 5e-4, 5e-4, 7.5e-4),
    "gptoss_row": ("row", "row", "muon", "row", 1e-3, 5e-3, 1e-1, 1e-3, 7.5e-4),
    "gptoss_left": ("row", "row", "muon", "left", 1e-3, 5e-3, 1e-1, 1e-3, 7.5e-4),
    "gptoss_adamw_router": ("row", "row", "muon", "adamw", 1e-3, 5e-3, 1e-1, 1e-3, 7.5e-4),
    "gptoss_adamw": ("adamw", "adamw", "muon", "adamw", 1e-3, 5e-3, 5e-4, 5e-4, 7.5e-4),
}


def test_released_presets_match_the_readme():
    assert len(README) == 20 and set(PRESETS) == set(README) | {"paper"}
    for name, (emb, head, mlp, router, lr_muon, lr, lr_emb, lr_head, lr_router) in README.items():
        p = PRESETS[name]
        c, mult = p["choices"], p["multipliers"]
        assert (c["embedding"], c["lm_head"], c["mlp"]) == (emb, head, mlp), name
        assert c["experts"] == c["attention"] == "muon" and c["vectors"] == "adamw", name
        if router is not None:
            assert c["router"] == router, name
            assert mult["router"] == pytest.approx(lr_router / lr_muon), name
        assert p["learning_rate"] == pytest.approx(lr_muon), name
        assert mult["embedding"] == pytest.approx(lr_emb / lr_muon), name
        assert mult["lm_head"] == pytest.approx(lr_head / lr_muon), name
        assert mult["vectors"] == pytest.approx(lr / lr_muon), name
        assert p["numerics"] == "reference" and p["expert_shape_factor"] == "reference", name
    assert PRESETS["paper"]["numerics"] == "exact"


def test_manifest_descriptions_name_the_numerics():
    d = symmetry_compatible_numerics(preset="qwen3_swiglu_hybrid")
    assert d["mlp"] == "hybrid(row_then_polar) [numerics gram_ns(5 steps, float16)]"
    assert (
        "exact"
        in symmetry_compatible_numerics(preset="qwen3_hybrid", numerics="exact")["embedding"]
    )
    d = symmetry_compatible_numerics(preset="olmoe_left", numerics={"left": "exact"})
    assert d["router"].endswith("[numerics exact]")
    assert "gate|up joint, reference shape factors" in d["experts"]


# --------------------------------------------------- the whole stack on two model trees
def _qwen3_tree(v=12, d=8, h=2, dh=4, f=16):
    z = np.zeros
    return {
        "embed": {"embedding": z((v, d))},
        "layers": {
            "0": {
                "attn": {
                    "q_proj": {"kernel": z((d, h * dh))},
                    "k_proj": {"kernel": z((d, dh))},
                    "v_proj": {"kernel": z((d, dh))},
                    "o_proj": {"kernel": z((h * dh, d))},
                },
                "mlp": {
                    "gate_proj": {"kernel": z((d, f))},
                    "up_proj": {"kernel": z((d, f))},
                    "down_proj": {"kernel": z((f, d))},
                },
                "input_norm": {"scale": np.ones(d)},
            }
        },
        "final_norm": {"scale": np.ones(d)},
        "lm_head": {"kernel": z((d, v))},
    }


def _olmoe_tree(v=12, d=8, h=2, dh=4, e=3, f=4):
    z = np.zeros
    return {
        "embed": {"embedding": z((v, d))},
        "layers": {
            "0": {
                "attn": {
                    "q_proj": {"kernel": z((d, h * dh))},
                    "k_proj": {"kernel": z((d, h * dh))},
                    "v_proj": {"kernel": z((d, h * dh))},
                    "o_proj": {"kernel": z((h * dh, d))},
                },
                "moe": {
                    "router": {"kernel": z((d, e))},
                    "experts": {
                        "gate_proj": z((e, d, f)),
                        "up_proj": z((e, d, f)),
                        "down_proj": z((e, f, d)),
                    },
                },
                "input_norm": {"scale": np.ones(d)},
            }
        },
        "final_norm": {"scale": np.ones(d)},
        "lm_head": {"kernel": z((d, v))},
    }


class RefAdamW:
    """torch.optim.AdamW(betas=(0.9, 0.95), eps=1e-8) on one leaf."""

    def __init__(self, w):
        self.w, self.m, self.v, self.t = np.array(w), np.zeros_like(w), np.zeros_like(w), 0

    def step(self, g, lr, wd):
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * g
        self.v = 0.95 * self.v + 0.05 * g * g
        mh, vh = self.m / (1 - 0.9**self.t), self.v / (1 - 0.95**self.t)
        self.w = self.w * (1 - lr * wd) - lr * mh / (np.sqrt(vh) + 1e-8)
        return self.w


def _ref_stack(preset, tree, h, dh):
    """One reference optimizer per leaf, as build_transformer_mixed_optimizer wires them
    (units = rows of the PyTorch weight = Flax kernel transposed, except Embed tables)."""
    p = PRESETS[preset]
    lr = {g: p["learning_rate"] * p["multipliers"].get(g, 1.0) for g in routing.GROUPS}
    c = p["choices"]
    opt = {}
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, w in leaves:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        w = np.asarray(w, np.float64)
        if w.ndim == 1:
            opt[name] = ("adamw", RefAdamW(w), lr["vectors"], 1e-3, None)
        elif name.startswith("embed"):
            fn = {
                "row": lambda m: ref_rownorm_dir(m),
                "hybrid": lambda m: ref_hybrid_dir(m, "row_then_polar", dtype=np.float32),
            }
            opt[name] = ("map", RefState(w), lr["embedding"], 0.0, fn[c["embedding"]])
        elif name.startswith("lm_head"):
            fn = {
                "row": lambda m: ref_rownorm_dir(m, center=True),
                "hybrid": lambda m: ref_hybrid_dir(m, "row_then_polar", True, dtype=np.float32),
            }
            opt[name] = ("map_t", RefState(w.T), lr["lm_head"], 0.0, fn[c["lm_head"]])
        elif "router" in name:
            fn = {"left": lambda m: ref_left_dir(m), "row": lambda m: ref_rownorm_dir(m, True)}
            opt[name] = ("map_t", RefState(w.T), lr["router"], 0.0, fn[c["router"]])
        elif "/mlp/" in name and c["mlp"] == "hybrid":
            # gate/up: orientation 'row' of (f, d); down: 'col' of (d, f) = rows of (f, d)
            fn = lambda m: ref_hybrid_dir(m, "row_then_polar", dtype=np.float32)  # noqa: E731
            kind = "map" if "down" in name else "map_t"
            opt[name] = (kind, RefState(w if kind == "map" else w.T), lr["mlp"], 1e-3, fn)
        elif "q_proj" in name or "k_proj" in name or "v_proj" in name:
            nh = w.shape[1] // dh
            opt[name] = (
                "muon_t",
                RefMuon(w.T, lambda x, nh=nh: heads_qkv(x, nh, dh), 1.0),
                lr["attention"],
                1e-3,
                None,
            )
        elif "o_proj" in name:
            d = w.shape[1]
            opt[name] = (
                "muon_t",
                RefMuon(w.T, lambda x: heads_o(x, h, dh), np.sqrt(d / dh)),
                lr["attention"],
                1e-3,
                None,
            )
        elif "experts" in name:
            opt[name] = ("expert", None, lr["experts"], 1e-3, None)
        else:  # dense mlp Muon: whole (out, in) matrix, factor max(1, out/in)
            wt = w.T
            opt[name] = (
                "muon_t",
                RefMuon(wt, ref_polar_express_muon, np.sqrt(max(1, wt.shape[0] / wt.shape[1]))),
                lr["mlp"],
                1e-3,
                None,
            )
    return opt


@pytest.mark.parametrize(
    "preset", [pytest.param("qwen3_swiglu_hybrid", marks=pytest.mark.slow), "olmoe_left"]
)
def test_symmetry_compatible_matches_reference_port_over_5_steps(preset):
    """The whole stack with reference numerics (float32 compute for the Gram Newton-Schulz
    and Muon so that float32 tolerance applies) equals the numpy port of the reference's
    mixed optimizer, every leaf, over 5 steps with weight decay and AdamW vectors."""
    h, dh = 2, 4
    tree = _qwen3_tree() if preset.startswith("qwen3") else _olmoe_tree()
    tree = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
    tx = symmetry_compatible(
        PRESETS[preset]["learning_rate"],
        preset=preset,
        head_dim=dh,
        numerics_dtype=jnp.float32,
        ortho_dtype=jnp.float32,
    )
    ref = _ref_stack(preset, tree, h, dh)
    e_ref = None
    rng = np.random.default_rng(50)
    state, params, worst = tx.init(tree), tree, {}
    update = jax.jit(tx.update)
    for _ in range(5):
        g = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), tree)
        u, state = update(g, state, params)
        params = optax.apply_updates(params, u)
        flat_g = {
            "/".join(str(getattr(k, "key", k)) for k in p): np.asarray(x, np.float64)
            for p, x in jax.tree_util.tree_flatten_with_path(g)[0]
        }
        flat_p = {
            "/".join(str(getattr(k, "key", k)) for k in p): np.asarray(x, np.float64)
            for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
        }
        for name, (kind, o, lr, wd, fn) in ref.items():
            gx = flat_g[name]
            if kind == "adamw":
                want, got = o.step(gx, lr, wd), flat_p[name]
            elif kind == "map":
                want, got = o.step(gx, fn, lr=lr, wd=wd, beta=0.95), flat_p[name]
            elif kind == "map_t":
                want, got = o.step(gx.T, fn, lr=lr, wd=wd, beta=0.95), flat_p[name].T
            elif kind == "muon_t":
                want, got = o.step(gx.T, lr=lr, wd=wd), flat_p[name].T
            else:
                continue
            worst[name] = max(worst.get(name, 0.0), rel(got, want))
        if "layers/0/moe/experts/gate_proj" in flat_g:  # OLMoE experts: joint, factors
            pre = "layers/0/moe/experts/"
            if e_ref is None:
                lr_e = ref[pre + "gate_proj"][2]
                e_ref = (
                    RefMuon(np.zeros((3, 8, 8)), ref_polar_express_muon, 1.0),
                    lr_e,
                    RefMuon(
                        np.zeros((3, 8, 4)),
                        lambda x: np.swapaxes(ref_polar_express_muon(np.swapaxes(x, 1, 2)), 1, 2),
                        1.0,
                    ),
                )
            gu = np.concatenate(
                [
                    np.swapaxes(flat_g[pre + "gate_proj"], 1, 2),
                    np.swapaxes(flat_g[pre + "up_proj"], 1, 2),
                ],
                axis=1,
            )
            got = np.concatenate(
                [
                    np.swapaxes(flat_p[pre + "gate_proj"], 1, 2),
                    np.swapaxes(flat_p[pre + "up_proj"], 1, 2),
                ],
                axis=1,
            )
            worst["experts/gate_up"] = max(
                worst.get("experts/gate_up", 0.0), rel(got, e_ref[0].step(gu, e_ref[1], 1e-3))
            )
            worst["experts/down"] = max(
                worst.get("experts/down", 0.0),
                rel(
                    np.swapaxes(flat_p[pre + "down_proj"], 1, 2),
                    e_ref[2].step(np.swapaxes(flat_g[pre + "down_proj"], 1, 2), e_ref[1], 1e-3),
                ),
            )
    bad = {k: v for k, v in worst.items() if v > 2e-4}
    assert not bad, bad
    n_experts = sum(kind == "expert" for kind, *_ in ref.values())  # 3 leaves -> 2 checks
    assert len(worst) == len(ref) - n_experts + (2 if n_experts else 0)


# --------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "factory",
    [
        symmetric.scale_by_hybrid,
        symmetric.scale_by_one_sided_spectral,
        symmetric.scale_by_left_spectral,
    ],
)
def test_bad_numerics_refused_at_construction_naming_the_argument(factory):
    with pytest.raises(ValueError, match="numerics 'newton'"):
        factory(unit_axis=0, numerics="newton")
    with pytest.raises(ValueError, match=r"numerics_steps must lie in \[1"):
        factory(unit_axis=0, numerics="reference", numerics_steps=0)
    with pytest.raises(TypeError, match="numerics_steps must be an int"):
        factory(unit_axis=0, numerics="gram_ns", numerics_steps=2.5)
    with pytest.raises(ValueError, match="numerics_coeffs"):
        factory(unit_axis=0, numerics="gram_ns", numerics_steps=3, numerics_coeffs=[[1, 2, 3]])
    with pytest.raises(TypeError, match="numerics_dtype"):
        factory(unit_axis=0, numerics="gram_ns", numerics_dtype=jnp.int32)


def test_stack_bad_numerics_and_expert_options():
    with pytest.raises(ValueError, match="symmetry_compatible: unknown numerics 'fast'"):
        symmetry_compatible(1e-2, numerics="fast")
    with pytest.raises(ValueError, match=r"numerics\['router'\]"):
        symmetry_compatible(1e-2, numerics={"router": "eigh"})
    with pytest.raises(ValueError, match="numerics key 'head'"):
        symmetry_compatible(1e-2, numerics={"head": "exact"})
    with pytest.raises(ValueError, match="symmetry_compatible: numerics_steps"):
        symmetry_compatible(1e-2, numerics_steps=0)
    with pytest.raises(ValueError, match="experts_gate_up"):
        symmetry_compatible(1e-2, experts_gate_up="fused")
    with pytest.raises(ValueError, match="expert_shape_factor"):
        symmetry_compatible(1e-2, expert_shape_factor="rms")
    with pytest.raises(ValueError, match="polar_method"):
        symmetric.hybrid(1e-2, unit_axis=0, numerics="gram_ns", polar_method="svd")
