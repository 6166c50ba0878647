"""Private core of the symmetry-compatible maps (:mod:`optzoo.symmetric`, its stack).

Unit-row layouts (every leaf read as a ``(batch, U, F)`` stack whose rows are the permuted
units), the float32 matrix maps (row normalization, centering, Gram polar factors, the
PolarGrad factor ``ν^α``, fused gate|up pairing) and the EMA-momentum skeleton shared by the
``scale_by_*`` blocks. Formulas and choices are documented in :mod:`optzoo.symmetric`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo import _blocks, _checks, linalg
from optzoo import layout as layout_lib
from optzoo.distributed import OwnerComputes, maybe_apply

#: ``gate_up_pair``: a fused gate|up axis of size ``2f`` read as ``f`` units ``(gate_j, up_j)``;
#: ``'concat'`` = gate in the first half, up in the second; ``'interleaved'`` = ``2j, 2j+1``.
GATE_UP_PAIRS = (None, "concat", "interleaved")
SIDES = ("auto", "right", "left")
NU_SCOPES = ("matrix", "leaf")
GRAM_METHODS = ("eigh", "newton_schulz")
_HIGHEST = jax.lax.Precision.HIGHEST


class SymmetricState(NamedTuple):
    """State of the ``scale_by_*`` blocks of :mod:`optzoo.symmetric`.

    Attributes:
      count: number of updates applied so far (int32, saturating).
      mu: the EMA momentum ``M`` (structure and shapes of the parameters, dtype ``mu_dtype``
        or the parameter's).
    """

    count: jax.Array
    mu: optax.Updates


def is_zero(x: Any) -> bool:
    """``x`` is a concrete real ``0`` (not a bool, not a traced or injected value)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and x == 0


# ------------------------------------------------------------------------ layouts
def unit_layout(
    lay: layout_lib.MatrixLayout,
    shape: tuple[int, ...],
    unit_axis: Any,
    path: str,
    what: str,
    pair: str | None,
) -> layout_lib.MatrixLayout:
    """A layout of ``shape`` whose matrix view has the units as rows: ``(batch, U, F)``."""
    ndim = len(shape)
    u = lay.unit_axis if lay.unit_axis is not None else unit_axis
    if u is None:
        raise ValueError(
            f"{what}: parameter '{path}' of shape {shape} needs a unit axis (the "
            "axis indexed by tokens / vocabulary entries / experts / neurons): "
            "pass unit_axis= or a MatrixLayout(unit_axis=...)"
        )
    if not -ndim <= u < ndim:
        raise ValueError(
            f"{what}: unit_axis {u} is out of range for parameter '{path}' of "
            f"shape {shape} ({ndim} axes). Flax Embed tables (V, d) have their "
            "units on axis 0; Dense kernels of LM heads/routers/gate/up "
            "projections (d, units) on axis 1 (-1)"
        )
    if lay.num_heads is not None:
        raise ValueError(
            f"{what}: layout of '{path}' splits heads (num_heads="
            f"{lay.num_heads}); unit maps take a layout without num_heads"
        )
    lay.validate(shape, path)
    red = tuple(a % ndim for a in lay.reduction_axes)
    out = tuple(a % ndim for a in lay.output_axes)
    un = u % ndim
    if un in red:
        side, other = red, out
    elif un in out:
        side, other = out, red
    else:
        raise ValueError(
            f"{what}: unit_axis {u} of parameter '{path}' (shape {shape}) is a "
            f"batch axis of its layout (matrix axes {red} x {out}); the units "
            "must index the rows or columns of the matrix view"
        )
    if len(side) != 1:
        raise ValueError(
            f"{what}: the unit axis {u} of '{path}' must be the only axis on its "
            f"side of the matrix view, got axes {side}"
        )
    if pair is not None and shape[un] % 2:
        raise ValueError(
            f"{what}: gate_up_pair={pair!r} needs an even unit axis for "
            f"'{path}', got size {shape[un]} on axis {u}"
        )
    return layout_lib.MatrixLayout(reduction_axes=(un,), output_axes=other, unit_axis=un)


def unit_layouts(
    tree: Any,
    unit_axis: Any,
    layout: layout_lib.LayoutSpec,
    what: str,
    kind: str,
    pair: str | None = None,
    strict: bool = True,
) -> list[Any]:
    """Unit-row layouts of the leaves of ``tree``, a flat list aligned with its leaves
    (``None`` for leaves without a matrix layout, which raise unless ``strict=False``).

    ``layout`` is resolved once (:func:`optzoo.layout.resolve`; masked trees of
    ``optax.partition`` included) and every leaf's dtype is checked to be floating. ``None``
    means ``MatrixLayout()``: the last two axes are the matrix, leading axes batch axes, fewer
    than two axes no matrix. The unit maps take an explicit ``unit_axis`` and are meant for
    embeddings, heads, routers and expert stacks, so they do not use the hidden-matrix default
    of :func:`optzoo.layout.default_layout` (which refuses those leaves).
    """
    if layout is None:
        layout = layout_lib.MatrixLayout()
    paths, leaves, lays, _, _ = _blocks.flat_layouts(tree, layout, what, kind)
    out = []
    for path, x, lay in zip(paths, leaves, lays, strict=True):
        if lay is None:
            if strict:
                raise ValueError(
                    f"{what}: parameter '{path}' of shape {tuple(jnp.shape(x))} has no matrix "
                    "layout (fewer than 2 axes, or a None layout); the block has no rule for it. "
                    "Use the alias (which sends such leaves to its documented `fallback`) or "
                    "route it elsewhere with optzoo.routing"
                )
            out.append(None)
            continue
        out.append(unit_layout(lay, tuple(jnp.shape(x)), unit_axis, path, what, pair))
    return out


# ------------------------------------------------------------------ matrix maps
# All maps act on float32 stacks (b, U, F) whose rows are the units.
def _t(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, -1, -2)


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=_HIGHEST)


def _tiny(x: jax.Array) -> float:
    """Smallest normal number of ``x``'s dtype: the floor of every scale and trace."""
    return float(jnp.finfo(x.dtype).tiny)


def peak_scale(x: jax.Array, axis: Any = (-2, -1)) -> tuple[jax.Array, jax.Array]:
    """``(x / s, s)`` with ``s`` the peak ``|x|`` over ``axis`` (kept dims).

    Every map below is written on the peak-normalized matrix, so no square overflows (1e30
    inputs) or underflows (1e-30 inputs); a matrix whose peak is below the dtype's smallest
    normal number (a momentum decayed into the subnormal range, which flush-to-zero hardware
    reads as 0) counts as exactly zero (``s = 1``, ``x / s = 0``) instead of being divided by.
    """
    peak = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
    live = peak >= _tiny(x)
    s = jnp.where(live, peak, jnp.ones_like(peak))
    return jnp.where(live, x / s, jnp.zeros_like(x)), s


def _frobenius(x: jax.Array) -> jax.Array:
    """Per-matrix Frobenius norm ``(b, 1, 1)`` without overflow or underflow."""
    z, s = peak_scale(x)
    return s * jnp.sqrt(jnp.sum(jnp.square(z), axis=(-2, -1), keepdims=True))


def center_rows(x: jax.Array) -> jax.Array:
    """``Π⊥X``: subtract the mean row (the mean of ``x/s``, rescaled, so sums cannot overflow)."""
    z, s = peak_scale(x)
    return s * (z - jnp.mean(z, axis=-2, keepdims=True))


def row_norm(x: jax.Array, eps: Any, threshold: Any) -> jax.Array:
    """``diag(‖xᵢ‖ + eps)⁻¹ X`` (the reference's ``inverse_eps`` mode), scale-safe.

    Each row is divided by its own peak before squaring (``‖xᵢ‖ = sᵢ‖xᵢ/sᵢ‖``), so the norm of a
    1e30 row neither overflows nor that of a 1e-30 row underflows; rows whose peak is below the
    dtype's smallest normal number are zero rows.
    """
    z, s = peak_scale(x, axis=-1)
    rel = jnp.sqrt(jnp.sum(jnp.square(z), axis=-1, keepdims=True))  # in [1, √F] or 0
    eps = jnp.asarray(eps, x.dtype)
    denom = rel + eps / s  # x / (‖x‖ + eps) = z / (‖z‖ + eps/s); eps/s = inf gives 0
    y = jnp.where(denom > 0, z, jnp.zeros_like(z)) / jnp.where(denom > 0, denom, 1.0)
    if not is_zero(threshold):
        norms = s * rel
        keep = norms > threshold * jnp.max(norms, axis=-2, keepdims=True)
        y = jnp.where(keep, y, jnp.zeros_like(y))
    return y


# ------------------------------------------------------------- spectral numerics
#: ``numerics`` of the spectral maps. ``'exact'``: eigendecomposition of the small Gram (or
#: an :func:`optzoo.linalg.orthogonalize` method); ``'gram_ns'``: the reference's Gram
#: Newton-Schulz polar factor (Dao-AILab/gram-newton-schulz as called by
#: ``HybridPolarGradM_GramNS`` / ``RightPolarGradM_GramNS``); ``'pe_invsqrt'``: the reference's
#: Polar-Express inverse square root of the Gram (``optim/invsqrt.py``, used by
#: ``LeftPolarGradM``, ``RightPolarGradM`` and ``HybridPolarGradM``); ``'reference'``: what the
#: released runs used for that map (:data:`REFERENCE_NUMERICS`).
NUMERICS = ("exact", "reference", "gram_ns", "pe_invsqrt")

#: Per map, the numerics of the released runs (train_*.py defaults ``right_optimizer_impl`` =
#: ``hybrid_optimizer_impl`` = ``'gramns'``, ``backend='polar_express'``, ``inner_steps=5``).
REFERENCE_NUMERICS = {"hybrid": "gram_ns", "right": "gram_ns", "left": "pe_invsqrt"}

#: Polar Express minimax quintics (Amsel et al., arXiv:2505.16932, 8 steps) as tabulated by
#: the reference (``optim/invsqrt.py``, ``optim/hybrid.py``) and
#: ``gram_newton_schulz/coefficients.py``, before the safety factor: every row but the last is
#: evaluated at ``x/1.05`` (:data:`REFERENCE_COEFFS`); steps beyond 8 repeat the last row.
PE_UNSCALED = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
_SAFETY = 1.05
REFERENCE_COEFFS = tuple(
    (a / _SAFETY, b / _SAFETY**3, c / _SAFETY**5) for a, b, c in PE_UNSCALED[:-1]
) + (PE_UNSCALED[-1],)
_GNS_EPS = 1e-7  # GramNewtonSchulz(ns_epsilon=1e-7), the released --ns_epsilon
_GNS_RESTARTS = (2,)  # gram_newton_schulz_reset_iterations default [2]
_PE_NORM_SAFETY = 1.02  # symmetric_matrix_invsqrt_polar_express: alpha = 1.02·‖A‖_F + eps


def reference_coefficients(steps: int) -> tuple[tuple[float, float, float], ...]:
    """The reference's first ``steps`` rows of :data:`REFERENCE_COEFFS` (last row repeated)."""
    rows = list(REFERENCE_COEFFS[:steps])
    return tuple(rows + [REFERENCE_COEFFS[-1]] * (steps - len(rows)))


class Numerics(NamedTuple):
    """Resolved numerics of one spectral map (see :data:`NUMERICS`)."""

    method: str  # 'exact', 'gram_ns' or 'pe_invsqrt'
    steps: int = 5
    coeffs: tuple = ()
    dtype: Any = None

    def describe(self) -> str:
        if self.method == "exact":
            return "exact"
        return f"{self.method}({self.steps} steps, {jnp.dtype(self.dtype).name})"


def resolve_numerics(
    numerics: Any, kind: str, steps: Any, coeffs: Any, dtype: Any, what: str
) -> Numerics:
    """Validates ``numerics`` / ``numerics_steps`` / ``numerics_coeffs`` / ``numerics_dtype``
    at construction (naming the argument) and resolves ``'reference'`` for map ``kind``."""
    _checks.choice(numerics, "numerics", what, NUMERICS)
    if numerics == "reference":
        numerics = REFERENCE_NUMERICS[kind]
    _checks.integer(steps, "numerics_steps", what, lo=1)
    _checks.float_dtype(dtype, "numerics_dtype", what)
    if numerics == "exact":
        return Numerics("exact")
    steps = int(steps)
    if coeffs is None:
        table = reference_coefficients(steps)
    else:
        try:
            arr = np.asarray(coeffs, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"{what}: numerics_coeffs must be a (steps, 3) table or one "
                f"(a, b, c) triple of numbers, got {coeffs!r}"
            ) from None
        if arr.shape == (3,):
            arr = np.tile(arr, (steps, 1))
        if arr.shape != (steps, 3) or not np.all(np.isfinite(arr)):
            raise ValueError(
                f"{what}: numerics_coeffs must be finite with shape "
                f"({steps}, 3) (numerics_steps={steps}) or (3,), got shape "
                f"{arr.shape}"
            )
        table = tuple(tuple(float(v) for v in row) for row in arr)
    if dtype is None:
        dtype = jnp.float16 if numerics == "gram_ns" else jnp.float32
    return Numerics(numerics, steps, table, jnp.dtype(dtype))


def _isqrt_eigh(c: jax.Array, gram_eps: Any) -> jax.Array:
    """``(C + gram_eps·tr(C)/n·I)^{-1/2}`` by eigh; 0 where ``tr C`` is below ``n·tiny``."""
    n = c.shape[-1]
    c = 0.5 * (c + _t(c))
    tr = jnp.trace(c, axis1=-2, axis2=-1)[..., None, None]
    live = tr > n * _tiny(c)
    scale = jnp.where(live, tr / n, jnp.ones_like(tr))
    x = c / scale + jnp.asarray(gram_eps, c.dtype) * jnp.eye(n, dtype=c.dtype)
    w, v = jnp.linalg.eigh(x)
    w = jnp.maximum(w, jnp.asarray(gram_eps, c.dtype))
    root = _mm(v * (1.0 / jnp.sqrt(w))[..., None, :], _t(v))
    return jnp.where(live, root / jnp.sqrt(scale), jnp.zeros_like(root))


def _isqrt_pe(c: jax.Array, damping: jax.Array, num: Numerics) -> jax.Array:
    """The reference's Polar-Express inverse square root (``optim/invsqrt.py``), float32 or
    ``num.dtype``: ``A = sym(C) + δI``, ``Y₀ = A/α`` (``α = 1.02‖A‖_F + δ``), ``Z₀ = I``, per
    quintic ``(a, b, c)``: ``R = sym(I − ZY)``, ``P = (a+b+c)I − (b+2c)R + cR²``, ``Y ← YP``,
    ``Z ← PZ``; returns ``Z/√α``. ``damping`` ``δ`` is per matrix ``(b, 1, 1)`` (the reference's
    absolute ``eps``, expressed in the units of ``C``)."""
    dt = jnp.promote_types(num.dtype, jnp.float32)
    n = c.shape[-1]
    eye = jnp.eye(n, dtype=dt)
    a_mat = 0.5 * (c + _t(c)).astype(dt) + damping.astype(dt) * eye
    alpha = _PE_NORM_SAFETY * _frobenius(a_mat) + damping.astype(dt)
    alpha = jnp.where(alpha > 0, alpha, jnp.ones_like(alpha))  # padded zero matrices
    y = a_mat / alpha
    z = jnp.broadcast_to(eye, y.shape)
    for a, b, cc in num.coeffs:
        r = eye - _mm(z, y)
        r = 0.5 * (r + _t(r))
        p = (a + b + cc) * eye + (-b - 2 * cc) * r + cc * _mm(r, r)
        y, z = _mm(y, p), _mm(p, z)
    return (z / jnp.sqrt(alpha)).astype(c.dtype)


def _round_mm(a: jax.Array, b: jax.Array, dt: Any) -> jax.Array:
    """``a @ b`` from ``dt`` inputs, accumulated in float32 (or wider), rounded to ``dt`` (a
    half-precision GEMM with a half-precision result, as the reference's torch/quack GEMMs)."""
    acc = jnp.promote_types(dt, jnp.float32)
    return jnp.matmul(a, b, preferred_element_type=acc, precision=_HIGHEST).astype(dt)


def gram_ns_polar(y: jax.Array, num: Numerics, ns_eps: jax.Array) -> jax.Array:
    """Port of ``GramNewtonSchulz.__call__`` (gram-newton-schulz 0.1.4, unchanged at HEAD).

    Transposes tall blocks to wide (``m ≤ n``), divides by ``‖X‖_F + ns_eps`` (``ns_eps`` per
    matrix, in the units of ``y``), casts to the compute dtype (float16 in the released runs)
    and applies the quintics ``X ← (aI + bR + cR²)X``, ``R = XXᵀ``: through the ``m×m`` Gram
    for ``m < n`` (``Q`` accumulating the product, a restart ``X ← QX`` before step 2), the
    plain iteration for square blocks. Every product rounds to the compute dtype.
    """
    dt = num.dtype
    tall = y.shape[-2] > y.shape[-1]
    x = _t(y) if tall else y
    denom = _frobenius(x) + ns_eps
    denom = jnp.where(denom > 0, denom, jnp.ones_like(denom))  # padded zero matrices
    x = (x / denom).astype(dt)
    m, n = x.shape[-2:]
    acc = jnp.promote_types(dt, jnp.float32)

    def comb(*terms):  # Σ coef·term in float32, one rounding to dt
        return sum(k * t.astype(acc) for k, t in terms).astype(dt)

    if m < n:
        eye = jnp.eye(m, dtype=dt)
        r = _round_mm(x, _t(x), dt)
        q = None
        last = len(num.coeffs) - 1
        for i, (a, b, c) in enumerate(num.coeffs):
            restart = i in _GNS_RESTARTS
            if restart and i != 0:
                x = _round_mm(q, x, dt)
                r = _round_mm(x, _t(x), dt)
            z = comb((b, r), (c, _round_mm(r, r, acc)))
            if i == 0 or restart:
                q = comb((1.0, z), (a, eye))
            else:
                q = comb((a, q), (1.0, _round_mm(q, z, acc)))
            if i < last and (i + 1) not in _GNS_RESTARTS:
                rz = comb((a, r), (1.0, _round_mm(r, z, acc)))
                r = comb((a, rz), (1.0, _round_mm(z, rz, acc)))
        x = _round_mm(q, x, dt)
    else:
        for a, b, c in num.coeffs:
            g = _round_mm(x, _t(x), dt)
            bb = comb((b, g), (c, _round_mm(g, g, acc)))
            x = comb((a, x), (1.0, _round_mm(bb, x, acc)))
    x = x.astype(y.dtype)
    return _t(x) if tall else x


def gram_polar(
    y: jax.Array,
    side: str,
    gram_eps: Any,
    gram_method: str,
    gram_steps: int,
    owner_computes: OwnerComputes | None = None,
    num: Numerics | None = None,
    scale: jax.Array | None = None,
    eps: Any = 1e-8,
) -> jax.Array:
    """Polar factor of ``y`` (rows = units) under the chosen numerics.

    ``'exact'``: ``Y (YᵀY)^{-1/2}`` (right) or ``(YYᵀ)^{-1/2} Y`` (left), 'auto' inverting the
    smaller Gram, damped by ``gram_eps`` relative to the mean eigenvalue. ``'pe_invsqrt'``: the
    same with the reference's iterative inverse root and absolute damping ``eps`` (in the units
    of the unscaled momentum: ``y`` is ``M/scale``). ``'gram_ns'``: the reference's Gram
    Newton-Schulz (side-free). With ``owner_computes`` the polar factors of the ``(b, U, F)``
    stack are computed owner-computes style (:mod:`optzoo.distributed`); the cheap maps around
    them stay where the stack is.
    """
    num = num or Numerics("exact")
    if side == "auto":
        side = "right" if y.shape[-1] <= y.shape[-2] else "left"
    s = jnp.ones(y.shape[:-2] + (1, 1), y.dtype) if scale is None else scale
    big = jnp.asarray(1e30, y.dtype)
    if num.method in ("gram_ns", "pe_invsqrt"):
        # the per-matrix constant (ns_eps or the damping, in the units of y) travels as an
        # extra column of the stack, so owner-computes distribution sees one (b, U, F+1) stack
        if num.method == "gram_ns":
            const = jnp.minimum(_GNS_EPS / s, big)
        else:
            const = jnp.minimum(jnp.asarray(eps, y.dtype) / s / s, big)
        packed = jnp.concatenate([y, jnp.broadcast_to(const, y.shape[:-1] + (1,))], axis=-1)

        def polar_it(zc):
            z, k = zc[..., :-1], zc[..., :1, -1:]
            if num.method == "gram_ns":
                return gram_ns_polar(z, num, k)
            if side == "right":
                return _mm(z, _isqrt_pe(_mm(_t(z), z), k, num))
            return _mm(_isqrt_pe(_mm(z, _t(z)), k, num), z)

        return maybe_apply(owner_computes, polar_it, packed)

    def polar(z: jax.Array) -> jax.Array:
        if gram_method == "eigh":
            if side == "right":
                return _mm(z, _isqrt_eigh(_mm(_t(z), z), gram_eps))
            return _mm(_isqrt_eigh(_mm(z, _t(z)), gram_eps), z)
        if side == "right":
            r = linalg.inverse_sqrt_psd(
                _mm(_t(z), z), method=gram_method, eps=gram_eps, steps=gram_steps
            )
            return _mm(z, r)
        left = linalg.inverse_sqrt_psd(
            _mm(z, _t(z)), method=gram_method, eps=gram_eps, steps=gram_steps
        )
        return _mm(left, z)

    return maybe_apply(owner_computes, polar, y)


def nu_factor(
    y: jax.Array, p: jax.Array, alpha: Any, eps: Any, scope: str, scale: jax.Array | None = None
) -> Any:
    """``max(ν, eps)^α``, ``ν = s·⟨Y, P⟩`` per matrix (``(b, 1, 1)``) or per leaf, where ``Y`` is
    the momentum divided by ``scale`` ``s``; ``None`` if ``α = 0``. ``α`` and ``eps`` enter as
    arrays of ``y``'s dtype whether they are Python floats or injected hyperparameters, so
    ``optax.inject_hyperparams`` reproduces the plain optimizer to the last bit."""
    if is_zero(alpha):
        return None
    nu = jnp.sum(y * p, axis=(-2, -1), keepdims=True)
    if scale is not None:
        nu = nu * scale
    if scope == "leaf":
        nu = jnp.sum(nu, axis=0, keepdims=True)
    return jnp.power(jnp.maximum(nu, jnp.asarray(eps, nu.dtype)), jnp.asarray(alpha, nu.dtype))


def scaled(factor: Any, p: jax.Array) -> jax.Array:
    return p if factor is None else factor * p


def pair_rows(x: jax.Array, pair: str | None) -> jax.Array:
    """``(b, 2f, F)`` rows of a fused gate|up axis -> ``(b, f, 2F)`` rows ``[gate_j, up_j]``."""
    if pair is None:
        return x
    b, u, f = x.shape
    if pair == "concat":
        x = jnp.swapaxes(x.reshape(b, 2, u // 2, f), 1, 2)
    return x.reshape(b, u // 2, 2 * f)


def unpair_rows(y: jax.Array, pair: str | None) -> jax.Array:
    if pair is None:
        return y
    b, h, f2 = y.shape
    if pair == "concat":
        return jnp.swapaxes(y.reshape(b, h, 2, f2 // 2), 1, 2).reshape(b, 2 * h, f2 // 2)
    return y.reshape(b, 2 * h, f2 // 2)


# ----------------------------------------------------------------- the skeleton
def scale_by_unit_map(
    what: str,
    matrix_fn: Callable[[jax.Array], jax.Array],
    *,
    beta: Any,
    nesterov: bool,
    mu_dtype: Any,
    unit_axis: Any,
    layout: layout_lib.LayoutSpec,
    pair: str | None = None,
    group: bool = True,
) -> optax.GradientTransformation:
    """EMA momentum ``M ← βM + (1−β)G`` (``optax.tree.update_moment``, in float32 or wider;
    Nesterov input ``(1−β)G + βM``), then ``matrix_fn`` on the float32 unit-row view of every
    leaf; updates in the gradients' dtypes, the momentum in its buffer's."""
    _checks.float_dtype(mu_dtype, "mu_dtype", what)
    mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)

    def fn(x):
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        return unpair_rows(matrix_fn(pair_rows(x32, pair)), pair)

    def init_fn(params):
        unit_layouts(params, unit_axis, layout, what, "parameter", pair)
        mu = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), mu_dtype or jnp.result_type(p)), params)
        return SymmetricState(count=jnp.zeros([], jnp.int32), mu=mu)

    def update_fn(updates, state, params=None):
        del params
        lays = unit_layouts(updates, unit_axis, layout, what, "update", pair)
        gs, treedef = jax.tree.flatten(updates)
        new_mus, inputs = [], []
        for g, m in zip(gs, treedef.flatten_up_to(state.mu), strict=True):
            # beta as an array of the accumulation dtype, so that 1 - beta rounds the same
            # whether beta is a Python float or an injected hyperparameter
            acc = jnp.promote_types(jnp.result_type(m), jnp.float32)
            b = jnp.asarray(beta, acc)
            g = g.astype(acc)
            mu = optax.tree.update_moment(g, m.astype(acc), b, 1)
            inputs.append(optax.tree.update_moment(g, mu, b, 1) if nesterov else mu)
            new_mus.append(mu.astype(m.dtype))
        out = _blocks.map_matrices(
            fn, treedef.unflatten(inputs), treedef.unflatten(lays), group=group, what=what
        )
        return _blocks.cast_like(out, updates), SymmetricState(
            count=optax.safe_increment(state.count), mu=treedef.unflatten(new_mus)
        )

    return optax.GradientTransformation(init_fn, update_fn)
