r"""FISMO: Fisher-structured momentum orthogonalization (Kronecker-whitened Muon).

FISMO (Xu, Yan, Zhang, 2026) takes a trust-region step in a Kronecker-factored Fisher
metric ``F ≈ Q ⊗ P``: maximizing ``⟨G, ΔW⟩`` subject to ``‖P^{1/2} ΔW Q^{1/2}‖₂ ≤ 1`` gives
``ΔW = P^{-1/2} polar(P^{-1/2} G Q^{-1/2}) Q^{-1/2}`` (substitute ``Z = P^{1/2} ΔW Q^{1/2}``).
With momentum in the whitened coordinates, per matrix ``G ∈ R^{m×n}``:

.. math::
  L_t &= \tfrac{1}{n} G Q_{t-1}^{-1} G^\top + \mu\,\tfrac{\mathrm{tr}P_{t-1}}{m} I_m ,\quad
  \tilde P = \gamma P_{t-1} + (1-\gamma) L_t ,\quad
  P_t = \mathrm{sym}\big(\tfrac{m}{\mathrm{tr}\tilde P}\tilde P\big), \\
  R_t &= \tfrac{1}{m} G^\top P_t^{-1} G + \mu\,\tfrac{\mathrm{tr}Q_{t-1}}{n} I_n ,\quad
  \tilde Q = \gamma Q_{t-1} + (1-\gamma) R_t ,\quad
  Q_t = \mathrm{sym}\big(\tfrac{n}{\mathrm{tr}\tilde Q}\tilde Q\big), \\
  \tilde G_t &= P_t^{-1/2} G Q_t^{-1/2} ,\quad
  M_t = \beta M_{t-1} + (1-\beta)\tilde G_t ,\quad
  \Delta W_t = s\, P_t^{-1/2}\,\mathrm{polar}(M_t)\,Q_t^{-1/2} ,

with ``P_0 = I_m``, ``Q_0 = I_n``, ``M_0 = 0`` and a shape factor ``s`` (Muon's). This is
Algorithm 1 of the paper as quoted by two independent public summaries (the zij canon page
``math/fismo`` and a nanochat research note; the paper's own code is not public and the PDF
was not read here): ``P`` is updated first with the previous ``Q_{t-1}^{-1}``, then ``Q`` with
the NEW ``P_t^{-1}`` — a Gauss–Seidel sweep of the coupled fixed point of the paper's
Theorem 1, chosen there on purpose over a simultaneous (Jacobi) update. The factors
are "flip-flop" (Kronecker maximum-likelihood) estimates of the gradient covariance,
trace-normalized (``tr P = m``, ``tr Q = n``); the whitening uses the inverse *square* roots
``P^{-1/2}``, ``Q^{-1/2}`` (not Shampoo's fourth roots), as in the trust-region derivation.

Implementation choices (DEFAULT (ours) where the source is silent):

* Orientation: ``G`` is the ``(m, n) = (fan_in, fan_out)`` matrix view of the
  :class:`~optzoo.layout.MatrixLayout` (Flax), so ``P`` acts on the fan-in side and ``Q`` on the
  fan-out side. The method is NOT symmetric in the two sides, so the orientation matters:
  the paper's Gauss–Seidel order refreshes the left (fan-in) factor first, and FISMO on
  ``Gᵀ`` transposed back is FISMO with the right factor refreshed first — it differs from
  FISMO on ``G`` by ~7 % after one step and 30-110 % later (measured on 5x8 gradients with a
  row/column structure; ``tests/test_fismo_paper.py`` pins the exact relation), and the
  ``'jordan'`` shape factor ``√max(1, n/m)`` is not transpose-symmetric either. Leading axes
  are batch axes: every slice has its own ``P``, ``Q`` and momentum.
* Inverse roots are computed in float32 (or wider) by :func:`optzoo.linalg.inverse_sqrt_psd`
  every ``precondition_frequency`` steps (first at step 0) and cached; all inverse powers,
  including ``P^{-1} = (P^{-1/2})²`` and ``Q^{-1}`` in the statistics, come from the cache.
  On a refresh step ``P``'s root is recomputed right after ``P_t`` is formed and ``Q``'s
  right after ``Q_t``, so with ``precondition_frequency=1`` the recursion above is followed
  exactly. The roots carry the relative damping ``root_eps`` of ``inverse_sqrt_psd``:
  ``(P + root_eps·(tr P/m)·I)^{-1/2}`` (``root_eps=0``: the exact roots of the paper).
* Range: the statistics are quadratic in ``G``, so they are formed from ``G/s`` with
  ``s = max|G|`` per matrix (floored at the dtype's smallest normal number) and ``s`` enters
  the trace normalization only through ``log s`` (:func:`_factor_step`; exact in real
  arithmetic, rounding-level changes only); the whitening is ``s·(P^{-1/2}(G/s)Q^{-1/2})``.
  Every step is finite for every finite gradient up to ~1e36 in float32/bfloat16 (before: NaN
  from |G| ~ 1e19-1e20). The directions are not scale-free, because the method is not: the
  damping ``μI`` and the EMA weight of the trace-normalized ``P_{t-1}`` are fixed while the
  statistic scales as ``|G|²``, so small gradients leave ``P ≈ I`` (Muon-like) and large ones
  make ``P`` follow the current ``G``. With ``γ = μ = 0`` the recursion is scale-invariant and
  the computed direction is too, from 1e-30 to 1e30.
* The damping ``μ·tr(P)/m`` is absolute in gradient units once ``tr P = m``: the whitening
  depends on the gradient scale (for ``‖G‖² ≪ μ·mn`` it tends to the identity and FISMO to
  Muon). This follows the summary of the paper's equations; unverified against the paper.
* Shape factor ``s``: ``'jordan'`` ``√max(1, n/m)`` (Muon's ``√max(1, fan_out/fan_in)``),
  ``'rms'`` ``rms_scale·√max(m, n)`` (Moonshot), ``None`` 1 (the shape-factor block of
  :mod:`optzoo._blocks`, shared with :func:`optzoo.muon`).

Geometry and symmetry: the step is the LMO of the spectral-norm ball in the metric
``‖P^{1/2}·Q^{1/2}‖₂`` (steepest descent under a Kronecker-factored Fisher norm). Because the
factors are covariant (``G ↦ UGVᵀ`` gives ``P ↦ UPUᵀ``, ``Q ↦ VQVᵀ``; the identity
initialization is invariant) the whole trajectory is equivariant under ``W ↦ U W Vᵀ`` with
orthogonal ``U``, ``V`` (up to the rounding of ``eigh``).

Cost per ``m×n`` matrix: state ``mn + 2(m² + n²)`` floats (factors and their cached roots);
``≈ 4mn(m + n)`` FLOPs per step for the statistics and the whitening, ``O(m³ + n³)`` per
refresh, plus the orthogonalizer. With ``m`` a vocabulary size the left factor is
infeasible (50257x768: 19 GiB): a leaf whose factor side exceeds ``max_factor_dim``
(default :data:`MAX_FACTOR_DIM` = 16384) is refused at ``init`` with an error naming its path
and the fix — give it the layout ``None`` (the fallback), or raise / disable
``max_factor_dim``. A ``(1, N)`` or ``(N, 1)`` leaf with ``N <= max_factor_dim`` is accepted
and keeps an ``N×N`` factor (``2N²`` floats with its root, for ``N`` parameters): give such
vector-like leaves the layout ``None`` too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo import _blocks, _checks, linalg
from optzoo import fallback as fallback_lib
from optzoo import layout as layout_lib
from optzoo.distributed import OwnerComputes, check_owner_computes

__all__ = ["MAX_FACTOR_DIM", "SHAPE_SCALES", "ScaleByFismoState", "scale_by_fismo", "fismo"]

#: Values accepted by ``shape_scale`` (Muon's: ``'jordan'``, ``'rms'`` or ``None``).
SHAPE_SCALES = _blocks.SHAPE_SCALES

#: Default ``max_factor_dim``: no Kronecker factor larger than 16384 x 16384 (1 GiB in float32,
#: 2 GiB with its cached root) is allocated unless asked for. Every hidden and MLP width up to
#: 16384 passes; every common vocabulary (GPT-2 50257, LLaMA 32000 / 128256) is refused.
MAX_FACTOR_DIM = 16384


class ScaleByFismoState(NamedTuple):
    """State of :func:`scale_by_fismo` (all fields but ``count`` have the parameters' structure).

    Attributes:
      count: number of updates so far (int32, saturating).
      mu: momentum ``M`` of the whitened gradients, in the parameter shape (dtype
        ``mu_dtype`` or the parameters').
      left: ``P`` per matrix, shape ``(batch, m, m)``, float32 or wider.
      right: ``Q`` per matrix, shape ``(batch, n, n)``.
      left_root: cached ``P^{-1/2}`` (from the last refresh), ``(batch, m, m)``.
      right_root: cached ``Q^{-1/2}``, ``(batch, n, n)``.
    """

    count: jax.Array
    mu: optax.Updates
    left: Any
    right: Any
    left_root: Any
    right_root: Any


def _identity_stack(b: int, d: int, dtype: Any) -> jax.Array:
    """``b`` copies of ``I_d`` as one freshly allocated ``(b, d, d)`` array."""
    return jnp.tile(jnp.eye(d, dtype=dtype)[None], (b, 1, 1))


def _sym(a: jax.Array) -> jax.Array:
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def _trace(a: jax.Array) -> jax.Array:
    return jnp.trace(a, axis1=-2, axis2=-1)[..., None, None]


def _max_abs(g: jax.Array) -> jax.Array:
    """``max|G|`` per matrix (shape ``(..., 1, 1)``), floored at the dtype's smallest normal
    number so that ``G / s`` is safe (and exactly 0 for ``G = 0``)."""
    s = jnp.max(jnp.abs(g), axis=(-2, -1), keepdims=True)
    return jnp.maximum(s, jnp.finfo(g.dtype).tiny)


def _factor_step(
    factor: jax.Array, stat: jax.Array, scale: jax.Array, gamma: Any, damping: Any
) -> jax.Array:
    r"""``sym(d·F̃/tr F̃)`` with ``F̃ = γF + (1 − γ)(s²·S + μ(tr F/d)·I)``: the
    trace-normalized EMA, evaluated without forming ``s²``.

    ``stat`` is the statistic of the rescaled gradient ``G/s`` (``s = max|G|``, so its entries
    are ``O(1)``): the true statistic is ``s²·stat``, which overflows float32 for
    ``|G| >~ 1e19`` and underflows for ``|G| <~ 1e-19``. With ``A = γF + (1 − γ)μ(tr F/d)I``
    and ``B = (1 − γ)·stat`` (both ``O(1)``), ``F̃ = A + s²B`` and, exactly,

    .. math::
      rac{d\,	ilde F}{\mathrm{tr}	ilde F}
        = d\Big(w_A rac{A}{\mathrm{tr}A} + w_B rac{B}{\mathrm{tr}B}\Big),\quad
      w_B = \sigma(\log r) = 1 - w_A,\quad
      \log r = 2\log s + \log\mathrm{tr}B - \log\mathrm{tr}A ,

    with ``σ`` the logistic function: every quantity is finite for every finite ``G`` (a zero
    trace gives weight 0 to its term; if both traces vanish — ``G = 0`` with ``γ = μ = 0`` —
    the factor is kept).
    """
    d = factor.shape[-1]
    eye = jnp.eye(d, dtype=factor.dtype)
    a = gamma * factor + ((1.0 - gamma) * damping) * (_trace(factor) / d) * eye
    b = (1.0 - gamma) * stat
    ta, tb = _trace(a), _trace(b)
    log_r = 2.0 * jnp.log(scale) + jnp.log(tb) - jnp.log(ta)
    both_zero = (ta <= 0) & (tb <= 0)
    log_r = jnp.where(both_zero, 0.0, log_r)
    w_a, w_b = jax.nn.sigmoid(-log_r), jax.nn.sigmoid(log_r)
    part_a = jnp.where(ta > 0, a / jnp.where(ta > 0, ta, 1.0), 0.0)
    part_b = jnp.where(tb > 0, b / jnp.where(tb > 0, tb, 1.0), 0.0)
    new = d * (w_a * part_a + w_b * part_b)
    return _sym(jnp.where(both_zero, factor, new))


@functools.cache
def _root_refresher(method: str) -> Callable[..., jax.Array]:
    """``(refresh, A, old, eps) -> A^{-1/2} if refresh else old`` through ``lax.cond``.

    The branch functions are shared by every transform with the same settings, so
    ``lax.cond`` reuses their traces and compiled code: eager updates (and the repeated
    factory calls of ``optax.inject_hyperparams``) do not recompile the root at every step.
    """

    def fresh(a, old, eps):
        del old
        return linalg.inverse_sqrt_psd(a, method=method, eps=eps)

    def keep(a, old, eps):
        del a, eps
        return old

    def refresher(refresh, a, old, eps):
        # eps is an operand, not a constant: it may be an injected (traced) hyperparameter.
        return jax.lax.cond(refresh, fresh, keep, a, old, jnp.asarray(eps, a.dtype))

    return refresher


def _validate(what: str, **kw: Any) -> None:
    """Construction-time checks of every hyperparameter (optzoo._checks: Python numbers, numpy
    scalars and 0-d arrays are checked, traced values pass through), naming the argument."""
    _checks.unit_interval(kw["beta"], "beta", what, hi_open=True)
    _checks.unit_interval(kw["gamma"], "gamma", what, hi_open=True)
    _checks.nonnegative(kw["damping"], "damping", what)
    _checks.integer(kw["precondition_frequency"], "precondition_frequency", what, lo=1)
    _checks.nonnegative(kw["root_eps"], "root_eps", what)
    _checks.choice(kw["root_method"], "root_method", what, ("eigh", "newton_schulz"))
    _checks.choice(kw["shape_scale"], "shape_scale", what, SHAPE_SCALES)
    _checks.positive(kw["rms_scale"], "rms_scale", what)
    _blocks.check_ortho(kw["ortho_method"], None, what)
    _blocks.check_steps(kw["ns_steps"], what)
    _checks.float_dtype(kw["mu_dtype"], "mu_dtype", what)
    _static_dim(kw["max_factor_dim"], what)


def _static_dim(value: Any, what: str) -> int | None:
    """``max_factor_dim`` as a Python int (``None``: no limit, or not known yet).

    Under ``optax.inject_hyperparams`` the (numeric) default arrives as a 0-d integer array —
    concrete when the state is built, a tracer inside a jitted update — so integer arrays are
    accepted; a traced value cannot be compared with shapes and skips the check (which has run
    on the concrete value at ``init``)."""
    if value is None or isinstance(value, jax.core.Tracer):
        return None
    if (
        isinstance(value, jax.Array | np.ndarray)
        and np.ndim(value) == 0
        and jnp.issubdtype(value.dtype, jnp.integer)
    ):
        value = int(value)
    _checks.integer(value, "max_factor_dim", what, lo=1)
    return int(value)


def _check_factor_size(
    lay: layout_lib.MatrixLayout, shape: tuple[int, ...], path: str, max_factor_dim: Any, what: str
) -> None:
    """Refuses a leaf whose Kronecker factor would be larger than ``max_factor_dim²``."""
    max_factor_dim = _static_dim(max_factor_dim, what)
    if max_factor_dim is None:
        return
    b, m, n = lay.matrix_shape(shape)
    if max(m, n) <= max_factor_dim:
        return
    d = max(m, n)
    side = "left (fan-in)" if m >= n else "right (fan-out)"
    gib = 2 * b * (m * m + n * n) * 4 / 2**30  # factors + cached roots, float32
    raise ValueError(
        f"{what}: parameter '{path}' of shape {tuple(shape)} (matrix {m}x{n}) needs a "
        f"{d}x{d} {side} Kronecker factor, above max_factor_dim={max_factor_dim}: its "
        f"factors and cached roots would take {gib:.3g} GiB in float32. Embeddings, LM heads "
        "and other vocabulary-sized leaves belong to the fallback: give this leaf the layout "
        "None (layout={..., '" + path + "': None} or a callable returning None for it); or "
        "pass max_factor_dim=None (or a larger int) to accept the cost"
    )


def scale_by_fismo(
    beta: jax.typing.ArrayLike = 0.95,
    *,
    gamma: jax.typing.ArrayLike = 0.95,
    damping: jax.typing.ArrayLike = 1e-3,
    precondition_frequency: int = 10,
    root_eps: float = 1e-6,
    root_method: str = "eigh",
    shape_scale: str | None = "jordan",
    rms_scale: jax.typing.ArrayLike = 0.2,
    ortho_method: str = "auto",
    ns_steps: int | None = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
    owner_computes: OwnerComputes | None = None,
    max_factor_dim: int | None = MAX_FACTOR_DIM,
) -> optax.GradientTransformation:
    r"""FISMO direction: ``s·P^{-1/2} polar(M) Q^{-1/2}`` with Kronecker Fisher factors.

    Per matrix ``G`` (the module docstring has the full recursion): update the
    trace-normalized factors ``P ≈ E[G Q⁻¹ Gᵀ]/n`` and ``Q ≈ E[Gᵀ P⁻¹ G]/m`` (EMA ``γ``,
    damping ``μ``), whiten ``G̃ = P^{-1/2} G Q^{-1/2}``, accumulate ``M ← βM + (1−β)G̃`` and
    return

    .. math::
      u = s\, P^{-1/2}\, \mathrm{polar}(M)\, Q^{-1/2} ,

    the steepest-ascent direction of the spectral norm in the Fisher metric
    ``‖P^{1/2}·Q^{1/2}‖₂`` (learning rate and sign flip come later in the chain). Equivariant
    under ``W ↦ U W Vᵀ`` (orthogonal ``U, V``; the factors are covariant).

    Not symmetric in the two sides (the left factor is refreshed first, as in the paper's
    Algorithm 1): FISMO on ``Gᵀ`` is the right-first variant, not the transpose of this.

    Range: the factor statistics are formed from ``G/max|G|`` (rescaled before squaring), so
    factors, roots, momentum and update are finite for every finite gradient up to ~1e36 in
    float32/bfloat16 (float16 leaves: factors in float32, momentum in float16 — pass
    ``mu_dtype=jnp.float32`` when whitened gradients may exceed 65504). Before: NaN from
    ~1e19-1e20.

    Args:
      beta: momentum decay ``β ∈ [0, 1)`` (EMA of the whitened gradients).
      gamma: EMA decay ``γ ∈ [0, 1)`` of the Fisher factors.
      damping: ``μ >= 0``, added as ``μ·(tr P/m)·I`` to the left statistic (and likewise on
        the right).
      precondition_frequency: the cached inverse roots are recomputed every this many steps
        (an int >= 1; list it in ``static_args`` of ``optax.inject_hyperparams``).
      root_eps: relative damping ``>= 0`` of the inverse roots (``inverse_sqrt_psd``'s
        ``eps``; 0 gives the paper's exact roots).
      root_method: ``'eigh'`` (default) or ``'newton_schulz'`` (coupled iteration, 20 steps).
      shape_scale: ``'jordan'`` (``√max(1, fan_out/fan_in)``), ``'rms'``
        (``rms_scale·√max(fan_in, fan_out)``) or ``None``.
      rms_scale: the constant of ``shape_scale='rms'``.
      ortho_method: orthogonalizer of ``polar(M)`` (:func:`optzoo.linalg.orthogonalize`).
      ns_steps: iterations of an iterative orthogonalizer.
      mu_dtype: dtype of ``M``; ``None`` uses the parameters' dtype.
      layout: matrix view of each leaf (:func:`optzoo.layout.resolve`); every leaf must have
        one (use :func:`fismo` to route the others to a fallback).
      owner_computes: distribute the orthogonalizations of ``polar(M)`` over devices, each
        matrix computed by one owner (:class:`optzoo.OwnerComputes`,
        :mod:`optzoo.distributed`); ``None`` (default): wherever XLA places them.
      max_factor_dim: largest Kronecker factor side allowed (default
        :data:`MAX_FACTOR_DIM` = 16384; ``None``: no limit). A leaf whose matrix view has a
        side above it is refused at ``init``, naming its path, before anything is allocated
        (a 50257x768 embedding would keep 19 GiB of factors and roots).

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByFismoState` (every field
      its own buffers: an eagerly built state can be donated to a jitted step); updates keep
      the gradients' dtype.

    Raises:
      ValueError: at construction, naming the argument: ``beta``/``gamma`` outside ``[0, 1)``,
        negative ``damping``/``root_eps``, non-positive ``rms_scale``, non-finite values
        (Python numbers, numpy scalars and 0-d arrays alike), ``precondition_frequency < 1``,
        ``ns_steps < 1``, ``max_factor_dim < 1``, an unknown
        ``shape_scale``/``root_method``/``ortho_method``; at ``init``, a leaf without a matrix
        layout or with a factor side above ``max_factor_dim`` (naming its path).
      TypeError: at construction, a non-int ``precondition_frequency``/``ns_steps``/
        ``max_factor_dim``, a non-floating ``mu_dtype``, a bool/None hyperparameter; at
        ``init``/``update``, non-floating leaves (naming the path).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from optzoo.fismo import scale_by_fismo
      >>> tx = optax.chain(scale_by_fismo(precondition_frequency=5),
      ...                  optax.scale_by_learning_rate(0.02))
      >>> params = {"w": jnp.ones((8, 16))}
      >>> updates, state = tx.update(params, tx.init(params))

    References:
      Xu, Yan, Zhang, *FISMO: Fisher-Structured Momentum-Orthogonalized Optimizer*, ICML 2026,
      arXiv:2601.21750 (the trust-region step and its factor recursion — Algorithm 1 with the
      Gauss–Seidel factor order — read from two third-party summaries of the paper; no
      official code is public; defaults are ours, UNVERIFIED).
    """
    what = "scale_by_fismo"
    _validate(
        what,
        beta=beta,
        gamma=gamma,
        damping=damping,
        precondition_frequency=precondition_frequency,
        root_eps=root_eps,
        root_method=root_method,
        shape_scale=shape_scale,
        rms_scale=rms_scale,
        ortho_method=ortho_method,
        ns_steps=ns_steps,
        mu_dtype=mu_dtype,
        max_factor_dim=max_factor_dim,
    )
    every = int(precondition_frequency)
    mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)

    def plans(tree, kind):
        paths, leaves, lays, _, treedef = _blocks.flat_layouts(tree, layout, what, kind)
        for path, x, lay in zip(paths, leaves, lays, strict=True):
            if lay is None:
                raise ValueError(
                    f"{what}: parameter '{path}' of shape {tuple(jnp.shape(x))} has no matrix "
                    "layout; FISMO needs a matrix per leaf. Give it a MatrixLayout, or use "
                    "optzoo.fismo, which sends such leaves to its fallback"
                )
            _check_factor_size(lay, jnp.shape(x), path, max_factor_dim, what)
        return treedef, lays

    maybe_root = _root_refresher(root_method)
    check_owner_computes(owner_computes, what)
    orth = _blocks.orthogonalizer(ortho_method, ns_steps)

    def init_fn(params):
        treedef, lays = plans(params, "parameter")
        mu, left, right = [], [], []
        for x, lay in zip(treedef.flatten_up_to(params), lays, strict=True):
            b, m, n = lay.matrix_shape(jnp.shape(x))
            fdt = jnp.promote_types(jnp.result_type(x), jnp.float32)
            mu.append(jnp.zeros(jnp.shape(x), mu_dtype or jnp.result_type(x)))
            left.append(_identity_stack(b, m, fdt))
            right.append(_identity_stack(b, n, fdt))
        un = treedef.unflatten
        # Every field gets its own buffers (the roots start equal to the factors but are not
        # the same arrays): a state built eagerly can be donated to a jitted step
        # (``jax.jit(step, donate_argnums=...)``) without "donate the same buffer twice".
        return ScaleByFismoState(
            jnp.zeros([], jnp.int32),
            un(mu),
            un(left),
            un(right),
            un([jnp.array(x, copy=True) for x in left]),
            un([jnp.array(x, copy=True) for x in right]),
        )

    def update_fn(updates, state, params=None):
        del params
        treedef, lays = plans(updates, "update")
        grads = treedef.flatten_up_to(updates)
        flat = [
            treedef.flatten_up_to(s)
            for s in (state.mu, state.left, state.right, state.left_root, state.right_root)
        ]
        refresh = state.count % every == 0
        whitened = []
        for g_leaf, lay, mu, p, q, p_root, q_root in zip(grads, lays, *flat, strict=True):
            fdt = p.dtype
            g = lay.to_matrix(g_leaf).astype(fdt)
            m, n = g.shape[-2:]
            # Rescale before squaring: the factor statistics are quadratic in G, so they are
            # formed from G/s (entries in [-1, 1]) and s enters only through a log-ratio.
            s = _max_abs(g)
            gs = g / s
            gst = jnp.swapaxes(gs, -1, -2)
            stat_l = (gs @ (q_root @ q_root) @ gst) / n
            p_new = _factor_step(p, stat_l, s, gamma, damping)
            p_root = maybe_root(refresh, p_new, p_root, root_eps)
            stat_r = (gst @ (p_root @ p_root) @ gs) / m
            q_new = _factor_step(q, stat_r, s, gamma, damping)
            q_root = maybe_root(refresh, q_new, q_root, root_eps)
            white = (p_root @ gs @ q_root) * s
            mu_mat = optax.tree.update_moment(white, lay.to_matrix(mu).astype(fdt), beta, 1)
            whitened.append((mu_mat, p_new, q_new, p_root, q_root))
        # polar(M) of all leaves at once: same-shape matrices batched (and distributed)
        polars = _blocks.map_stacks(
            orth, [w[0] for w in whitened], owner_computes=owner_computes, what=what
        )
        results = []
        for g_leaf, lay, mu, (mu_mat, p_new, q_new, p_root, q_root), o in zip(
            grads, lays, flat[0], whitened, polars, strict=True
        ):
            u = _blocks.apply_shape_factor(shape_scale, p_root @ o @ q_root, rms_scale)
            shape = jnp.shape(g_leaf)
            results.append(
                (
                    lay.from_matrix(mu_mat, shape).astype(mu.dtype),
                    p_new,
                    q_new,
                    p_root,
                    q_root,
                    lay.from_matrix(u, shape).astype(jnp.result_type(g_leaf)),
                )
            )
        if results:
            cols = [treedef.unflatten(list(c)) for c in zip(*results, strict=True)]
        else:  # no matrix leaves (e.g. every leaf routed to the fallback)
            cols = [treedef.unflatten([])] * 6
        mu, left, right, left_root, right_root, out = cols
        return out, ScaleByFismoState(
            optax.safe_increment(state.count), mu, left, right, left_root, right_root
        )

    return optax.GradientTransformation(init_fn, update_fn)


def fismo(
    learning_rate: optax.ScalarOrSchedule,
    beta: jax.typing.ArrayLike = 0.95,
    *,
    gamma: jax.typing.ArrayLike = 0.95,
    damping: jax.typing.ArrayLike = 1e-3,
    precondition_frequency: int = 10,
    root_eps: float = 1e-6,
    root_method: str = "eigh",
    shape_scale: str | None = "jordan",
    rms_scale: jax.typing.ArrayLike = 0.2,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
    layout: layout_lib.LayoutSpec = None,
    ortho_method: str = "auto",
    ns_steps: int | None = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    fallback: fallback_lib.FallbackSpec = None,
    owner_computes: OwnerComputes | None = None,
    max_factor_dim: int | None = MAX_FACTOR_DIM,
) -> optax.GradientTransformation:
    r"""FISMO: Muon with Kronecker-factored Fisher whitening (trust region in a Fisher metric).

    On every leaf with a matrix layout, with learning rate ``η`` and decoupled weight decay
    ``λ``:

    .. math::
      W \leftarrow W - \eta\big(s\,P^{-1/2}\,\mathrm{polar}(M)\,Q^{-1/2} + \lambda W\big),

    where ``P``, ``Q`` are trace-normalized EMA Kronecker factors of the gradient covariance and
    ``M`` the momentum of the whitened gradients ``P^{-1/2} G Q^{-1/2}``
    (:func:`scale_by_fismo`, module docstring). Steepest descent in the spectral norm of the
    Fisher metric ``‖P^{1/2}·Q^{1/2}‖₂``; equivariant under ``W ↦ U W Vᵀ``; not symmetric
    under transposition (the left factor is refreshed first, as in the paper).

    Leaves without a matrix layout (biases, norm scales, scalars: fewer than two dimensions
    by default) go to ``fallback`` through ``optax.partition``; by default
    :class:`optzoo.fallback.AdamW() <optzoo.fallback.AdamW>` (the shared default of the matrix
    aliases, :mod:`optzoo.fallback`): ``optax.adamw(lr_fb, b1=0.9, b2=0.95, weight_decay=0)``
    with ``lr_fb = 0.015 × learning_rate`` following its schedule and injected values (as
    :func:`optzoo.muon`). Configure it with ``fallback=optzoo.fallback.AdamW(...)``; its first
    moment keeps the parameters' dtype unless ``AdamW(mu_dtype=...)``.
    float16 leaves: moments in float32 (the default AdamW upcasts them). Gradients beyond ~1.8e19 in
    float32/bfloat16 overflow its second moment to ``inf`` (a documented limit shared with
    ``optax.adamw``: the leaf then stops moving); the experiments harness clips gradients
    (``grad_clip=1.0``) long before.

    Range: finite for every finite gradient up to ~1e36 in float32/bfloat16 (the factor
    statistics are formed from ``G/max|G|``; :func:`scale_by_fismo`); the AdamW fallback's own
    limit is below.

    Defaults (ours; the paper's are UNVERIFIED): ``β = γ = 0.95``, ``μ = 1e-3``, roots by
    ``eigh`` in float32 every 10 steps, Muon's shape factor.

    Args:
      learning_rate: ``η``, a scalar or an optax schedule.
      beta: momentum decay.
      gamma: factor EMA decay.
      damping: ``μ``.
      precondition_frequency: root refresh period (int; static under inject_hyperparams).
      root_eps: relative damping of the inverse roots.
      root_method: ``'eigh'`` or ``'newton_schulz'``.
      shape_scale: ``'jordan'``, ``'rms'`` or ``None``.
      rms_scale: constant of ``'rms'``.
      weight_decay: decoupled weight decay ``λ`` (multiplied by ``η``) of matrix leaves.
      weight_decay_mask: tree of booleans or callable selecting decayed leaves.
      layout: matrix view of each leaf; leaves whose layout is ``None`` go to the fallback.
      ortho_method: orthogonalizer of ``polar(M)``.
      ns_steps: iterations of an iterative orthogonalizer.
      mu_dtype: dtype of the momentum ``M`` (not of the fallback's moments).
      fallback: the leaves without a matrix layout: an ``optax.GradientTransformation``
        (with its own learning rate), an :class:`optzoo.fallback.AdamW`, or ``None`` (the
        default AdamW above).
      owner_computes: distribute the orthogonalizations of ``polar(M)`` over devices, each
        matrix computed by one owner (:class:`optzoo.OwnerComputes`,
        :mod:`optzoo.distributed`); ``None`` (default): wherever XLA places them.
      max_factor_dim: largest Kronecker factor side (default 16384, ``None``: no limit); a
        matrix leaf above it is refused at ``init`` naming its path — give embeddings and
        LM heads the layout ``None`` so they go to the fallback.

    Returns:
      An ``optax.GradientTransformation``: ``optax.partition`` of
      ``chain(scale_by_fismo, add_decayed_weights, scale_by_learning_rate)`` and the fallback.

    Example:
      >>> import jax.numpy as jnp, optax, optzoo
      >>> params = {"w": jnp.ones((8, 16)), "b": jnp.zeros((16,))}
      >>> opt = optzoo.fismo(0.02)
      >>> state = opt.init(params)
      >>> updates, state = opt.update(params, state, params)

    References:
      Xu, Yan, Zhang, *FISMO: Fisher-Structured Momentum-Orthogonalized Optimizer*, ICML 2026,
      arXiv:2601.21750.
    """
    what = "fismo"
    _validate(
        what,
        beta=beta,
        gamma=gamma,
        damping=damping,
        precondition_frequency=precondition_frequency,
        root_eps=root_eps,
        root_method=root_method,
        shape_scale=shape_scale,
        rms_scale=rms_scale,
        ortho_method=ortho_method,
        ns_steps=ns_steps,
        mu_dtype=mu_dtype,
        max_factor_dim=max_factor_dim,
    )
    tx = scale_by_fismo(
        beta,
        gamma=gamma,
        damping=damping,
        precondition_frequency=precondition_frequency,
        root_eps=root_eps,
        root_method=root_method,
        shape_scale=shape_scale,
        rms_scale=rms_scale,
        ortho_method=ortho_method,
        ns_steps=ns_steps,
        mu_dtype=mu_dtype,
        layout=layout,
        owner_computes=owner_computes,
        max_factor_dim=max_factor_dim,
    )
    return _blocks.with_fallback(
        what,
        tx,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        layout=layout,
        fallback=fallback,
        matrix_label="matrix",
    )


#: The arguments ``optax.inject_hyperparams`` cannot trace (the preconditioner's period and size
#: cap, choices, dtypes, layouts, masks, the fallback): pass ``static_args=factory.static_args``.
scale_by_fismo.static_args = (
    "precondition_frequency",
    "root_method",
    "shape_scale",
    "ortho_method",
    "ns_steps",
    "mu_dtype",
    "layout",
    "owner_computes",
    "max_factor_dim",
)
fismo.static_args = scale_by_fismo.static_args + ("weight_decay_mask", "fallback")
