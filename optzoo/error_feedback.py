r"""Error feedback for Muon-type updates (EF-Muon) and for sign descent (EF-sign).

Muon does not converge on convex Lipschitz problems for any step-size schedule
(Parshakova et al., 2026); error feedback (EF) restores convergence of Muon and of every
non-Euclidean subgradient method with momentum. With momentum ``M``, error ``E`` (both
zero-initialized), step size ``γ_t`` and a *contractive compressor* ``C``:

.. math::
  M_t = \beta M_{t-1} + (1-\beta) G_t ,\quad
  P_t = \gamma_t M_t + E_{t-1} ,\quad
  \Delta_t = C(P_t) ,\quad
  E_t = P_t - \Delta_t ,\quad
  W_{t+1} = W_t - \Delta_t .

The step size multiplies the momentum *before* compression and the error is kept in
parameter units, so ``Δ_t + E_t = P_t`` holds exactly (to float rounding) at every step and
no gradient information is lost, only delayed.

Compressors (per matrix of a leaf's :class:`~optzoo.layout.MatrixLayout` view; leading axes
are batch axes):

* ``'spectral'`` — the best Frobenius approximation of ``P`` by a multiple of its computed
  polar factor ``O ≈ polar(P)``: ``C(P) = (⟨P, O⟩/‖O‖_F²)·O``. With the exact polar factor
  this is ``(‖P‖_*/r)·polar(P)``, ``r = rank(P)`` (``= min(m, n)`` for full-rank ``P``), and
  ``‖P − C(P)‖_F² = ‖P‖_F² − ‖P‖_*²/r ≤ (1 − 1/min(m,n))‖P‖_F²``. With an approximate
  (Newton–Schulz / Polar Express) ``O`` the least-squares scale keeps the compressor
  contractive (``‖P − C(P)‖_F < ‖P‖_F`` whenever ``⟨P, O⟩ > 0``).
* ``'sign'`` — ``C(P) = (‖P‖₁/nnz(P))·sign(P)``, the same least-squares formula with
  ``O = sign(P)``: ``‖P − C(P)‖_F² = ‖P‖_F² − ‖P‖₁²/nnz(P) ≤ (1 − 1/d)‖P‖_F²`` for ``d``
  entries. This is exactly the "sign subgradient descent with error feedback and momentum" of
  the paper's toy code. Leaves without a layout are compressed as one vector.

**The default orthogonalizer is approximate.** ``ortho_method='auto'`` (Polar Express, 5
steps on square-ish blocks) is *not* the exact recursion above: it is a different (still
contractive) compressor, and the iterates drift from the exact-polar recursion. Measured
(float32, ``tests/test_error_feedback_checks.py``): per call, ``C_auto(P)`` differs
from ``C_svd(P)`` by 8 % on average (max 11 %) on Gaussian 6×4 ``P`` and 10 % (max 19 %) on
32×32; the contraction factor ``1 − ‖P − C(P)‖²/‖P‖²`` stays ≥ 0.57 (exact polar: ≥ 0.64;
worst-case bound ``1/r``). On ``f(W) = ‖W − W*‖_*`` (6×4, ``β = 0.9``, 400 steps from 0) the
final loss is 0.087 with ``'auto'`` against 0.051 with ``'svd'`` at ``η = 0.05`` (iterates
1.5 % apart; at ``η = 0.02``: 0.038 against 0.037, 0.5 % apart; on another draw of ``W*``
``'auto'`` ended *lower*, 0.029 against 0.042 — the drift has no fixed sign). On the paper's
counterexample (below) plain Muon with ``'auto'`` does not even stall exactly: Polar Express
maps the two diagonal entries to slightly different magnitudes, so ``W₁₁ + W₂₂`` drifts.
The EF analysis only needs contraction, which holds either way, but the update is then not
the spectral-norm LMO step the paper's method takes: pass ``ortho_method='svd'`` for the
paper's recursion (as the toy-script and counterexample tests do), at an SVD's cost. The
default stays ``'auto'`` (states and updates unchanged from earlier releases).

**The paper's counterexample** (reproduced in ``tests/test_error_feedback_counterexample.py``
and ``experiments/demos/ef_counterexample.py``): ``f(W) = c·|W₁₁ + W₂₂| + |W₁₁ − W₂₂|`` on
2×2 ``W``, ``W₀ = diag(2, 1)``. Muon's polar factor of the diagonal subgradient is its sign
pattern, so for ``c < 1`` Muon never changes ``W₁₁ + W₂₂`` and ``f ≥ 3c``: measured, 10⁴
steps, exact polar, ``c = 0.5``, ``β = 0``: ``f_T = 1.5`` under constant, ``1/(t+1)``,
``1/(t+1)^0.51`` and ``0.3/√(t+1)`` step sizes (``W₁₁ + W₂₂ = 3`` throughout), while
EF-Muon (``γ = 1/√T``) oscillates around the minimizer at the scale of ``γ`` (mean f over the
last 10 % of steps 0.015, max 0.03); ``c = 0.02`` with Muon's defaults (``β = 0.95``,
Nesterov): Muon stays at the floor 0.06 under the decaying schedules (a constant 0.05 keeps
oscillating, last-10 % mean 0.10), EF-Muon (``β = 0.95``) ends at 0.008 (last-10 % mean
0.0085). With the default approximate orthogonalizer Muon's ``W₁₁ + W₂₂`` drifts (3 → 1.99
at ``c = 0.5``), so "Muon stalls" is a statement about the exact polar factor. The scaled-sign
recursion equals the authors' toy script (``sign_subgradient_descent_ef_momentum``) to float32
rounding over 25 steps.

UNVERIFIED: the matrix compressor is our generalization of the verified sign case; whether
the paper's deep-learning runs keep Nesterov momentum or a shape scale is unknown. Choices
made here: no Nesterov by default (the toy code has none), no shape scale (it would break
``Δ + E = P``), so the step has the magnitude of ``γ·M`` (like PolarGrad's ``‖M‖_*``
scaling, divided by ``r``), not Muon's unit singular values: learning rates do not transfer
from Muon.

The module is the EF recursion and its two compressors; momentum, the batched matrix map, the
orthogonalizer, the argument checks and the fallback split are blocks of :mod:`optzoo._blocks`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo import _blocks, _checks
from optzoo import fallback as fallback_lib
from optzoo import layout as layout_lib
from optzoo.distributed import OwnerComputes, check_owner_computes

__all__ = [
    "COMPRESSORS",
    "ScaleByEFMuonState",
    "compress_spectral",
    "compress_sign",
    "scale_by_ef_muon",
    "ef_muon",
]

#: Names accepted by ``compressor``.
COMPRESSORS = ("spectral", "sign")


class ScaleByEFMuonState(NamedTuple):
    """State of :func:`scale_by_ef_muon`.

    Attributes:
      count: number of updates so far (int32, saturating); the step-size schedule is
        evaluated at it.
      mu: momentum ``M`` (shapes of the parameters; dtype ``mu_dtype`` or the parameters').
      error: error buffer ``E = P − C(P)`` (shapes of the parameters; dtype ``error_dtype``,
        by default float32 or the parameters' dtype if wider).
    """

    count: jax.Array
    mu: optax.Updates
    error: optax.Updates


# ------------------------------------------------------------------------- compressors
def _least_squares_multiple(p: jax.Array, o: jax.Array, axis: Any) -> jax.Array:
    """``(⟨p, o⟩/‖o‖²)·o`` over ``axis`` (0 where ``o`` vanishes), accumulated in f32+."""
    acc = jnp.promote_types(p.dtype, jnp.float32)
    pa, oa = p.astype(acc), o.astype(acc)
    inner = jnp.sum(pa * oa, axis=axis, keepdims=True)
    sq = jnp.sum(oa * oa, axis=axis, keepdims=True)
    scale = jnp.where(sq > 0, inner / jnp.where(sq > 0, sq, 1.0), 0.0)
    return (scale * oa).astype(p.dtype)


def _spectral(orth: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """The spectral compressor ``P -> (⟨P, O⟩/‖O‖_F²)·O`` with ``O = orth(P)`` per matrix."""
    return lambda p: _least_squares_multiple(p, orth(p), (-2, -1))


def compress_spectral(
    p: jax.typing.ArrayLike, *, method: str = "auto", steps: int | None = None
) -> jax.Array:
    r"""Spectral compressor ``(⟨P, O⟩/‖O‖_F²)·O``, ``O = polar(P)``, per matrix.

    With the exact polar factor (``method='svd'``) this equals ``(‖P‖_*/r)·U_r V_rᵀ``,
    ``r = rank(P)``, and satisfies
    ``‖P − C(P)‖_F² = ‖P‖_F² − ‖P‖_*²/r ≤ (1 − 1/min(m, n))‖P‖_F²``. Equivariant under
    ``P ↦ U P Vᵀ`` and positively homogeneous (``C(cP) = cC(P)``, ``c > 0``).

    Args:
      p: array ``(..., m, n)``; leading axes are batch axes.
      method: orthogonalizer for :func:`optzoo.linalg.orthogonalize`.
      steps: iterations of an iterative orthogonalizer.

    Returns:
      Array of the shape and dtype of ``p``.
    """
    return _spectral(_blocks.orthogonalizer(method, steps))(jnp.asarray(p))


def compress_sign(p: jax.typing.ArrayLike, *, axis: Any = None) -> jax.Array:
    r"""Scaled-sign compressor ``(‖P‖₁/nnz(P))·sign(P)`` over ``axis`` (default: all).

    Satisfies ``‖P − C(P)‖_F² = ‖P‖_F² − ‖P‖₁²/nnz(P) ≤ (1 − 1/d)‖P‖_F²`` for ``d``
    entries. Equivariant under signed permutations of the entries.

    Args:
      p: any floating array.
      axis: the axes of one compressed vector (``(-2, -1)`` for one scale per matrix).

    Returns:
      Array of the shape and dtype of ``p``.
    """
    p = jnp.asarray(p)
    if not jnp.issubdtype(p.dtype, jnp.floating):
        raise TypeError(f"compress_sign: expected a floating array, got dtype {p.dtype}")
    return _least_squares_multiple(p, jnp.sign(p), axis)


def _no_layout_error(what: str, path: str, shape: tuple[int, ...]) -> ValueError:
    return ValueError(
        f"{what}: parameter '{path}' of shape {tuple(shape)} has no matrix layout, so the "
        "spectral compressor is undefined for it; use compressor='sign', give it a "
        "MatrixLayout, or use the ef_muon alias, which sends such leaves to its fallback"
    )


# ------------------------------------------------------------------------------ block
def _check_args(
    what: str, *, beta, compressor, nesterov, ortho_method, ns_steps, mu_dtype, error_dtype
) -> None:
    """Construction-time checks shared by :func:`scale_by_ef_muon` and :func:`ef_muon`."""
    _checks.choice(compressor, "compressor", what, COMPRESSORS)
    _blocks.check_ortho(ortho_method, None, what)
    _checks.unit_interval(beta, "beta", what, hi_open=True)
    _blocks.check_steps(ns_steps, what)
    _checks.float_dtype(mu_dtype, "mu_dtype", what)
    _checks.float_dtype(error_dtype, "error_dtype", what)
    if not isinstance(nesterov, bool | np.bool_):
        raise TypeError(f"{what}: nesterov must be a bool, got {nesterov!r}")


def scale_by_ef_muon(
    beta: jax.typing.ArrayLike = 0.95,
    *,
    compressor: str = "spectral",
    nesterov: bool = False,
    step_size: optax.ScalarOrSchedule = 1.0,
    layout: layout_lib.LayoutSpec = None,
    ortho_method: str = "auto",
    ns_steps: int | None = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    error_dtype: jax.typing.DTypeLike | None = None,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""Error-feedback compressed momentum: ``Δ = C(γ·M + E)``, ``E ← γ·M + E − Δ``.

    .. math::
      M_t = \beta M_{t-1} + (1-\beta) G_t ,\quad
      X_t = \begin{cases}\beta M_t + (1-\beta) G_t & \text{nesterov}\\ M_t\end{cases},\quad
      P_t = \gamma_t X_t + E_{t-1},\quad
      \Delta_t = C(P_t),\quad E_t = P_t - \Delta_t .

    Returns ``Δ_t`` (to be subtracted). ``C`` is the spectral compressor
    (:func:`compress_spectral`, bi-orthogonally equivariant: the update is steepest descent in
    the spectral norm with error feedback, symmetry group ``W ↦ U W Vᵀ``) or the scaled-sign
    compressor (:func:`compress_sign`, ℓ∞ geometry, signed permutations of the entries).

    ``γ_t`` is ``step_size``: with the default ``1`` this is a pure direction block whose error
    lives in gradient units, and ``chain(scale_by_ef_muon(), scale_by_learning_rate(η))``
    equals the paper's recursion exactly for a *constant* ``η`` (both compressors are
    positively homogeneous). For a schedule the paper applies ``γ_t`` before compression;
    :func:`ef_muon` does so by passing its learning rate as ``step_size``.

    Args:
      beta: momentum decay ``β ∈ [0, 1)`` (EMA; ``0`` disables momentum).
      compressor: ``'spectral'`` (EF-Muon) or ``'sign'`` (EF-signSGD with momentum).
      nesterov: compress the Nesterov mix ``βM_t + (1−β)G_t`` instead of ``M_t``.
      step_size: ``γ``, a scalar or a schedule of the step count, applied before compression.
      layout: matrix view of each leaf (:func:`optzoo.layout.resolve`). With ``'spectral'``
        every leaf must have one (else ``ValueError`` naming it); with ``'sign'`` leaves
        without a layout are compressed as one vector.
      ortho_method: orthogonalizer of the spectral compressor; the default ``'auto'`` is
        approximate (module docstring: 8-10 % per call, trajectories 1-2 % apart);
        ``'svd'`` gives the paper's exact recursion.
      ns_steps: iterations of an iterative orthogonalizer.
      mu_dtype: dtype of ``M``; ``None`` uses the parameters' dtype.
      error_dtype: dtype of ``E``; ``None`` uses float32 or the parameters' dtype if wider
        (the residuals are small and accumulate: keep them out of bfloat16).
      owner_computes: distribute the spectral compressor's orthogonalizations over
        devices, each matrix computed by one owner (:class:`optzoo.OwnerComputes`,
        :mod:`optzoo.distributed`); ``'sign'`` is local and ignores it.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByEFMuonState`; updates keep
      the gradients' dtype.

    Raises:
      ValueError: unknown compressor or orthogonalizer, ``beta`` outside ``[0, 1)``, a leaf
        without layout under ``'spectral'``; naming the path.
      TypeError: non-floating leaves, naming the path.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from optzoo.error_feedback import scale_by_ef_muon
      >>> tx = scale_by_ef_muon(beta=0.0, step_size=0.5, compressor="sign")
      >>> g = jnp.array([[3.0, -1.0]])
      >>> delta, state = tx.update(g, tx.init(g))
      >>> print(delta, state.error)  # P = 0.5·G, Δ = mean|P|·sign(P), E = P − Δ
      [[ 1. -1.]] [[0.5 0.5]]

    References:
      Parshakova, Khaled, Crawshaw, Garrigos, Gower, *Muon Does Not Converge on Convex
      Lipschitz Functions*, arXiv:2605.08980 (2026): error feedback for Muon and
      non-Euclidean subgradient methods with momentum (the sign case follows the authors'
      toy code; the spectral compressor is our generalization, module docstring).
      Seide et al. (1-bit SGD, 2014) and Karimireddy et al., *Error Feedback Fixes SignSGD*,
      arXiv:1901.09847 (the EF template with a scaled-sign compressor).
    """
    what = "scale_by_ef_muon"
    _check_args(
        what,
        beta=beta,
        compressor=compressor,
        nesterov=nesterov,
        ortho_method=ortho_method,
        ns_steps=ns_steps,
        mu_dtype=mu_dtype,
        error_dtype=error_dtype,
    )
    _checks.learning_rate(step_size, "step_size", what)
    check_owner_computes(owner_computes, what)
    mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)
    error_dtype = None if error_dtype is None else jax.dtypes.canonicalize_dtype(error_dtype)

    if compressor == "spectral":
        spectral = _spectral(_blocks.orthogonalizer(ortho_method, ns_steps))

        def compress(p_tree, layouts):
            def otherwise(x, path):
                raise _no_layout_error(what, path, jnp.shape(x))

            return _blocks.map_matrices(
                spectral,
                p_tree,
                layouts,
                otherwise=otherwise,
                what=what,
                owner_computes=owner_computes,
            )
    else:

        def compress(p_tree, layouts):
            return _blocks.map_matrices(
                lambda mat: compress_sign(mat, axis=(-2, -1)),
                p_tree,
                layouts,
                otherwise=lambda x, path: compress_sign(x),
                what=what,
            )

    def err_dtype(x):
        return error_dtype or jnp.promote_types(jnp.result_type(x), jnp.float32)

    def check(tree, kind):
        paths, leaves, lays, layouts, treedef = _blocks.flat_layouts(tree, layout, what, kind)
        if compressor == "spectral":
            for path, x, lay in zip(paths, leaves, lays, strict=True):
                if lay is None:
                    raise _no_layout_error(what, path, jnp.shape(x))
        return leaves, layouts, treedef

    def init_fn(params):
        check(params, "parameter")
        mu = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), mu_dtype or jnp.result_type(p)), params)
        error = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), err_dtype(p)), params)
        return ScaleByEFMuonState(jnp.zeros([], jnp.int32), mu, error)

    def update_fn(updates, state, params=None):
        del params
        gs, layouts, treedef = check(updates, "update")
        count_inc = optax.safe_increment(state.count)
        mus, xs = _blocks.momentum_step(
            gs, treedef.flatten_up_to(state.mu), beta, count_inc, nesterov=nesterov
        )
        gamma = step_size(state.count) if callable(step_size) else step_size
        p = jax.tree.map(
            lambda xi, e: (gamma * xi.astype(e.dtype) + e).astype(e.dtype),
            treedef.unflatten(xs),
            state.error,
        )
        delta = compress(p, layouts)
        error = jax.tree.map(lambda pi, d: (pi - d).astype(pi.dtype), p, delta)
        return _blocks.cast_like(delta, updates), ScaleByEFMuonState(
            count_inc, treedef.unflatten(mus), error
        )

    return optax.GradientTransformation(init_fn, update_fn)


# ------------------------------------------------------------------------------ alias
class _ScheduledDecayState(NamedTuple):
    count: jax.Array


def _add_scheduled_decay(
    learning_rate: optax.ScalarOrSchedule, weight_decay: Any, mask: Any
) -> optax.GradientTransformation:
    """``u + η_t·λ·W``: decoupled weight decay for a chain whose lr was applied earlier."""

    def init_fn(params):
        del params
        return _ScheduledDecayState(jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "ef_muon: the weight decay needs the parameters: call "
                "update(updates, state, params)"
            )
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        out = jax.tree.map(
            lambda u, w: (u + lr * weight_decay * w).astype(u.dtype), updates, params
        )
        return out, _ScheduledDecayState(optax.safe_increment(state.count))

    tx = optax.GradientTransformation(init_fn, update_fn)
    return tx if mask is None else optax.masked(tx, mask)


def ef_muon(
    learning_rate: optax.ScalarOrSchedule,
    beta: jax.typing.ArrayLike = 0.95,
    *,
    compressor: str = "spectral",
    nesterov: bool = False,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
    layout: layout_lib.LayoutSpec = None,
    ortho_method: str = "auto",
    ns_steps: int | None = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    error_dtype: jax.typing.DTypeLike | None = None,
    fallback: fallback_lib.FallbackSpec = None,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""EF-Muon: Muon-type compressed momentum steps with error feedback.

    On every leaf with a matrix layout, with learning rate ``η_t`` and decoupled weight decay
    ``λ``:

    .. math::
      M_t = \beta M_{t-1} + (1-\beta) G_t ,\quad P_t = \eta_t M_t + E_{t-1} ,\quad
      \Delta_t = C(P_t) ,\quad E_t = P_t - \Delta_t ,\quad
      W_{t+1} = W_t - \Delta_t - \eta_t \lambda W_t .

    ``C`` is the spectral compressor ``(⟨P, O⟩/‖O‖_F²)·O``, ``O = polar(P)`` (``'spectral'``:
    steepest descent in the spectral norm with error feedback; bi-orthogonally equivariant,
    ``W ↦ U W Vᵀ``) or the scaled sign ``(‖P‖₁/nnz)·sign(P)`` (``'sign'``: ℓ∞ geometry,
    signed-permutation equivariant). The learning rate enters *before* compression, as in the
    paper, so a schedule is handled exactly (the chain is
    ``scale_by_ef_muon(step_size=η)`` → decay ``η_t λ W`` → negate); the step has the
    magnitude of ``η·M`` (module docstring), not Muon's.

    Leaves without a matrix layout (biases, norm scales, scalars: fewer than two dimensions
    by default) go to ``fallback`` through ``optax.partition``; by default
    :class:`optzoo.fallback.AdamW() <optzoo.fallback.AdamW>` (the shared default of the matrix
    aliases, :mod:`optzoo.fallback`): ``optax.adamw(lr_fb, b1=0.9, b2=0.95, weight_decay=0)``
    with ``lr_fb = 0.015 × learning_rate`` following its schedule and injected values (as
    :func:`optzoo.muon`), the Muon README's choice for such parameters. Configure it with
    ``fallback=optzoo.fallback.AdamW(learning_rate=..., b2=..., ...)``; its first moment keeps
    the parameters' dtype unless ``AdamW(mu_dtype=...)`` (``mu_dtype`` here is the EF
    momentum's only).
    float16 leaves: moments in float32 (the default AdamW upcasts them). Gradients beyond ~1.8e19 in
    float32/bfloat16 overflow its second moment to ``inf`` (a documented limit shared with
    ``optax.adamw``: the leaf then stops moving); the experiments harness clips gradients
    (``grad_clip=1.0``) long before.

    Args:
      learning_rate: ``η``, a scalar or an optax schedule (the step size ``γ`` of the paper).
      beta: momentum decay ``β ∈ [0, 1)``. 0.95 (Muon's) by default; the paper's value for deep
        networks is UNVERIFIED.
      compressor: ``'spectral'`` or ``'sign'``.
      nesterov: compress ``βM_t + (1−β)G_t`` instead of ``M_t`` (off in the paper's toy code).
      weight_decay: decoupled weight decay ``λ`` (multiplied by ``η_t``) on matrix leaves.
      weight_decay_mask: tree of booleans or callable selecting decayed leaves.
      layout: matrix view of each leaf (:func:`optzoo.layout.resolve`); leaves whose layout is
        ``None`` go to the fallback.
      ortho_method: orthogonalizer of the spectral compressor; the default ``'auto'`` is
        approximate (module docstring: 8-10 % per call, trajectories 1-2 % apart);
        ``'svd'`` gives the paper's exact recursion.
      ns_steps: iterations of an iterative orthogonalizer.
      mu_dtype: dtype of the momentum.
      error_dtype: dtype of the error buffer (default float32 or wider).
      fallback: the leaves without a matrix layout: an ``optax.GradientTransformation``
        (with its own learning rate), an :class:`optzoo.fallback.AdamW`, or ``None`` (the
        default AdamW above).
      owner_computes: distribute the spectral compressor's orthogonalizations over
        devices, each matrix computed by one owner (:class:`optzoo.OwnerComputes`,
        :mod:`optzoo.distributed`); ``'sign'`` is local and ignores it.

    Returns:
      An ``optax.GradientTransformation`` (an ``optax.partition`` of the EF chain and the
      fallback).

    Raises:
      ValueError, TypeError: as :func:`scale_by_ef_muon`.

    Example:
      >>> import jax.numpy as jnp, optax, optzoo
      >>> params = {"w": jnp.ones((4, 8)), "b": jnp.zeros((8,))}
      >>> opt = optzoo.ef_muon(0.02)
      >>> state = opt.init(params)
      >>> updates, state = opt.update(params, state, params)

    References:
      Parshakova, Khaled, Crawshaw, Garrigos, Gower, *Muon Does Not Converge on Convex
      Lipschitz Functions*, arXiv:2605.08980 (2026) (EF for non-Euclidean methods with
      momentum; exact equations of the deep-learning variant UNVERIFIED).
    """
    what = "ef_muon"
    # named here first: scale_by_ef_muon would report a bad rate as its ``step_size``
    _checks.learning_rate(learning_rate, "learning_rate", what)
    _check_args(
        what,
        beta=beta,
        compressor=compressor,
        nesterov=nesterov,
        ortho_method=ortho_method,
        ns_steps=ns_steps,
        mu_dtype=mu_dtype,
        error_dtype=error_dtype,
    )
    tx = scale_by_ef_muon(
        beta,
        compressor=compressor,
        nesterov=nesterov,
        step_size=learning_rate,
        layout=layout,
        ortho_method=ortho_method,
        ns_steps=ns_steps,
        mu_dtype=mu_dtype,
        error_dtype=error_dtype,
        owner_computes=owner_computes,
    )
    return _blocks.with_fallback(
        what,
        tx,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        layout=layout,
        fallback=fallback,
        matrix_label="matrix",
        matrix_chain=(
            _add_scheduled_decay(learning_rate, weight_decay, weight_decay_mask),
            optax.scale(-1.0),
        ),
    )


#: The arguments ``optax.inject_hyperparams`` cannot trace (the compressor, iteration counts,
#: dtypes, layouts, masks, the fallback): pass ``static_args=factory.static_args``.
scale_by_ef_muon.static_args = (
    "compressor",
    "layout",
    "ortho_method",
    "ns_steps",
    "mu_dtype",
    "error_dtype",
    "owner_computes",
)
ef_muon.static_args = scale_by_ef_muon.static_args + ("weight_decay_mask", "fallback")
