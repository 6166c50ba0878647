r"""FISMO: Fisher-structured momentum orthogonalization (Kronecker-whitened Muon).

FISMO (Xu, Yan, Zhang, 2026) takes a trust-region step in a Kronecker-factored Fisher
metric ``F ≈ Q ⊗ P``: maximizing ``⟨G, ΔW⟩`` subject to ``‖P^{1/2} ΔW Q^{1/2}‖₂ ≤ 1`` gives
``ΔW = P^{-1/2} polar(P^{-1/2} G Q^{-1/2}) Q^{-1/2}`` (substitute ``Z = P^{1/2} ΔW Q^{1/2}``).
With momentum in the whitened coordinates, per matrix ``G ∈ R^{m×n}`` (ALGORITHMS.md §8):

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

with ``P_0 = I_m``, ``Q_0 = I_n``, ``M_0 = 0`` and a shape factor ``s`` (Muon's). The factors
are "flip-flop" (Kronecker maximum-likelihood) estimates of the gradient covariance,
trace-normalized (``tr P = m``, ``tr Q = n``); the whitening uses the inverse *square* roots
``P^{-1/2}``, ``Q^{-1/2}`` (not Shampoo's fourth roots), as in the trust-region derivation.

Implementation choices (DEFAULT (ours) where the source is silent):

* Orientation: ``G`` is the ``(m, n) = (fan_in, fan_out)`` matrix view of the
  :class:`~optzoo.layout.MatrixLayout` (Flax), so ``P`` acts on the fan-in side and ``Q`` on the
  fan-out side; the method is symmetric in the two sides, so this only fixes which factor is
  which. Leading axes are batch axes: every slice has its own ``P``, ``Q`` and momentum.
* Inverse roots are computed in float32 (or wider) by :func:`optzoo.linalg.inverse_sqrt_psd`
  every ``precondition_frequency`` steps (first at step 0) and cached; all inverse powers,
  including ``P^{-1} = (P^{-1/2})²`` and ``Q^{-1}`` in the statistics, come from the cache.
  On a refresh step ``P``'s root is recomputed right after ``P_t`` is formed and ``Q``'s
  right after ``Q_t``, so with ``precondition_frequency=1`` the recursion above is followed
  exactly. The roots carry the relative damping ``root_eps`` of ``inverse_sqrt_psd``:
  ``(P + root_eps·(tr P/m)·I)^{-1/2}``.
* The damping ``μ·tr(P)/m`` is absolute in gradient units once ``tr P = m``: the whitening
  depends on the gradient scale (for ``‖G‖² ≪ μ·mn`` it tends to the identity and FISMO to
  Muon). This follows the summary of the paper's equations; unverified against the paper.
* Shape factor ``s``: ``'jordan'`` ``√max(1, n/m)`` (Muon's ``√max(1, fan_out/fan_in)``),
  ``'rms'`` ``rms_scale·√max(m, n)`` (Moonshot), ``'none'`` 1.

Geometry and symmetry: the step is the LMO of the spectral-norm ball in the metric
``‖P^{1/2}·Q^{1/2}‖₂`` (steepest descent under a Kronecker-factored Fisher norm). Because the
factors are covariant (``G ↦ UGVᵀ`` gives ``P ↦ UPUᵀ``, ``Q ↦ VQVᵀ``; the identity
initialization is invariant) the whole trajectory is equivariant under ``W ↦ U W Vᵀ`` with
orthogonal ``U``, ``V`` (up to the rounding of ``eigh``).

Cost per ``m×n`` matrix: state ``mn + 2(m² + n²)`` floats (factors and their cached roots);
``≈ 4mn(m + n)`` FLOPs per step for the statistics and the whitening, ``O(m³ + n³)`` per
refresh, plus the orthogonalizer. With ``m`` a vocabulary size the left factor is
infeasible: route embeddings and heads elsewhere (their layout ``None`` sends them to the
fallback).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optzoo import _partition, linalg
from optzoo import layout as layout_lib
from optzoo._tree import check_floating, path_str
from optzoo.distributed import OwnerComputes, check_owner_computes

__all__ = ["SHAPE_SCALES", "ScaleByFismoState", "scale_by_fismo", "fismo"]

#: Names accepted by ``shape_scale``.
SHAPE_SCALES = ("jordan", "rms", "none")


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


def _shape_factor(kind: str, m: int, n: int, rms_scale: Any) -> Any:
    if kind == "jordan":
        return math.sqrt(max(1.0, n / m))
    if kind == "rms":
        return rms_scale * math.sqrt(max(m, n))
    return 1.0


def _sym(a: jax.Array) -> jax.Array:
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def _trace(a: jax.Array) -> jax.Array:
    return jnp.trace(a, axis1=-2, axis2=-1)[..., None, None]


def _factor_step(factor: jax.Array, stat: jax.Array, gamma: Any) -> jax.Array:
    """``sym(d·F̃/tr F̃)`` with ``F̃ = γF + (1 − γ)S``: the trace-normalized EMA."""
    d = factor.shape[-1]
    mixed = gamma * factor + (1.0 - gamma) * stat
    return _sym(d * mixed / _trace(mixed))


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


def _check_in(value: Any, name: str, lo: float, hi: float, what: str) -> None:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not lo <= value < hi:
            raise ValueError(f"{what}: {name} must lie in [{lo}, {hi}), got {value}")


def scale_by_fismo(
    beta: jax.typing.ArrayLike = 0.95,
    *,
    gamma: jax.typing.ArrayLike = 0.95,
    damping: jax.typing.ArrayLike = 1e-3,
    precondition_frequency: int = 10,
    root_eps: float = 1e-6,
    root_method: str = "eigh",
    shape_scale: str = "jordan",
    rms_scale: jax.typing.ArrayLike = 0.2,
    ortho_method: str = "auto",
    ns_steps: int | None = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
    owner_computes: OwnerComputes | None = None,
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

    Range (a documented limit): the Kronecker factors accumulate ``G Gᵀ`` and ``Gᵀ G``, which
    overflow for gradients beyond ~1e18 in float32/bfloat16 (~1e3 in float16, whose factors are
    computed in float16) and make the roots, the momentum and the update NaN; the experiments
    harness clips gradients (``grad_clip=1.0``) long before.

    Args:
      beta: momentum decay ``β ∈ [0, 1)`` (EMA of the whitened gradients).
      gamma: EMA decay ``γ ∈ [0, 1)`` of the Fisher factors.
      damping: ``μ >= 0``, added as ``μ·(tr P/m)·I`` to the left statistic (and likewise on
        the right).
      precondition_frequency: the cached inverse roots are recomputed every this many steps
        (an int >= 1; list it in ``static_args`` of ``optax.inject_hyperparams``).
      root_eps: relative damping of the inverse roots (``inverse_sqrt_psd``'s ``eps``).
      root_method: ``'eigh'`` (default) or ``'newton_schulz'`` (coupled iteration, 20 steps).
      shape_scale: ``'jordan'`` (``√max(1, fan_out/fan_in)``), ``'rms'``
        (``rms_scale·√max(fan_in, fan_out)``) or ``'none'``.
      rms_scale: the constant of ``shape_scale='rms'``.
      ortho_method: orthogonalizer of ``polar(M)`` (:func:`optzoo.linalg.orthogonalize`).
      ns_steps: iterations of an iterative orthogonalizer.
      mu_dtype: dtype of ``M``; ``None`` uses the parameters' dtype.
      layout: matrix view of each leaf (:func:`optzoo.layout.resolve`); every leaf must have
        one (use :func:`fismo` to route the others to a fallback).
      owner_computes: distribute the orthogonalizations of ``polar(M)`` over devices, each
        matrix computed by one owner (:class:`optzoo.OwnerComputes`,
        :mod:`optzoo.distributed`); ``None`` (default): wherever XLA places them.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByFismoState`; updates keep
      the gradients' dtype.

    Raises:
      ValueError: a leaf without a matrix layout (naming it), hyperparameters out of range,
        unknown ``shape_scale``/``root_method``/``ortho_method``.
      TypeError: non-floating leaves (naming the path); a non-int ``precondition_frequency``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from optzoo.fismo import scale_by_fismo
      >>> tx = optax.chain(scale_by_fismo(precondition_frequency=5),
      ...                  optax.scale_by_learning_rate(0.02))
      >>> params = {"w": jnp.ones((8, 16))}
      >>> updates, state = tx.update(params, tx.init(params))

    References:
      Xu, Yan, Zhang, *FISMO: Fisher-Structured Momentum-Orthogonalized Optimizer*, ICML 2026,
      arXiv:2601.21750 (the trust-region step and its factor recursion, read from a
      third-party summary of the paper's equations; defaults are ours, UNVERIFIED).
    """
    what = "scale_by_fismo"
    if (isinstance(precondition_frequency, bool)
            or not isinstance(precondition_frequency, numbers.Integral)):
        raise TypeError(f"{what}: precondition_frequency must be a Python int, got "
                        f"{precondition_frequency!r}; under optax.inject_hyperparams list it "
                        "in static_args")
    if precondition_frequency < 1:
        raise ValueError(f"{what}: precondition_frequency must be >= 1, got "
                         f"{precondition_frequency}")
    every = int(precondition_frequency)
    _check_in(beta, "beta", 0.0, 1.0, what)
    _check_in(gamma, "gamma", 0.0, 1.0, what)
    _check_in(damping, "damping", 0.0, math.inf, what)
    if isinstance(root_eps, numbers.Real) and not root_eps > 0:
        raise ValueError(f"{what}: root_eps must be > 0, got {root_eps}")
    if root_method not in ("eigh", "newton_schulz"):
        raise ValueError(f"{what}: root_method must be 'eigh' or 'newton_schulz', got "
                         f"{root_method!r}")
    if shape_scale not in SHAPE_SCALES:
        raise ValueError(f"{what}: shape_scale must be one of {SHAPE_SCALES}, got "
                         f"{shape_scale!r}")
    if ortho_method not in linalg.ORTHOGONALIZERS:
        raise ValueError(f"{what}: unknown ortho_method {ortho_method!r}; expected one of "
                         f"{linalg.ORTHOGONALIZERS}")
    mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)

    def plans(tree, kind):
        layouts = layout_lib.resolve(layout, tree, what=what)
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
        out = []
        for (kp, x), lay in zip(paths_leaves, treedef.flatten_up_to(layouts), strict=True):
            path = path_str(kp)
            check_floating(x, path, kind)
            if lay is None:
                raise ValueError(
                    f"{what}: parameter '{path}' of shape {tuple(jnp.shape(x))} has no matrix "
                    "layout; FISMO needs a matrix per leaf. Give it a MatrixLayout, or use "
                    "optzoo.fismo, which sends such leaves to its fallback")
            out.append(lay)
        return treedef, out

    maybe_root = _root_refresher(root_method)
    check_owner_computes(owner_computes, what)

    def orth(x):
        return linalg.orthogonalize(x, method=ortho_method, steps=ns_steps)

    def init_fn(params):
        treedef, lays = plans(params, "parameter")
        mu, left, right = [], [], []
        for x, lay in zip(treedef.flatten_up_to(params), lays, strict=True):
            b, m, n = lay.matrix_shape(jnp.shape(x))
            fdt = jnp.promote_types(jnp.result_type(x), jnp.float32)
            mu.append(jnp.zeros(jnp.shape(x), mu_dtype or jnp.result_type(x)))
            left.append(jnp.broadcast_to(jnp.eye(m, dtype=fdt), (b, m, m)))
            right.append(jnp.broadcast_to(jnp.eye(n, dtype=fdt), (b, n, n)))
        un = treedef.unflatten
        return ScaleByFismoState(jnp.zeros([], jnp.int32), un(mu), un(left), un(right),
                                 un(left), un(right))

    def update_fn(updates, state, params=None):
        del params
        treedef, lays = plans(updates, "update")
        grads = treedef.flatten_up_to(updates)
        flat = [treedef.flatten_up_to(s) for s in (state.mu, state.left, state.right,
                                                   state.left_root, state.right_root)]
        refresh = state.count % every == 0
        whitened = []
        for g_leaf, lay, mu, p, q, p_root, q_root in zip(grads, lays, *flat, strict=True):
            fdt = p.dtype
            g = lay.to_matrix(g_leaf).astype(fdt)
            m, n = g.shape[-2:]
            gt = jnp.swapaxes(g, -1, -2)
            eye_m, eye_n = jnp.eye(m, dtype=fdt), jnp.eye(n, dtype=fdt)
            stat_l = (g @ (q_root @ q_root) @ gt) / n + damping * (_trace(p) / m) * eye_m
            p_new = _factor_step(p, stat_l, gamma)
            p_root = maybe_root(refresh, p_new, p_root, root_eps)
            stat_r = (gt @ (p_root @ p_root) @ g) / m + damping * (_trace(q) / n) * eye_n
            q_new = _factor_step(q, stat_r, gamma)
            q_root = maybe_root(refresh, q_new, q_root, root_eps)
            white = p_root @ g @ q_root
            mu_mat = beta * lay.to_matrix(mu).astype(fdt) + (1.0 - beta) * white
            whitened.append((mu_mat, p_new, q_new, p_root, q_root))
        # polar(M) of all leaves at once: same-shape matrices batched (and distributed)
        polars = layout_lib.map_stacks(orth, [w[0] for w in whitened],
                                       owner_computes=owner_computes, what=what)
        results = []
        for g_leaf, lay, mu, (mu_mat, p_new, q_new, p_root, q_root), o in zip(
                grads, lays, flat[0], whitened, polars, strict=True):
            m, n = mu_mat.shape[-2:]
            u = _shape_factor(shape_scale, m, n, rms_scale) * (p_root @ o @ q_root)
            shape = jnp.shape(g_leaf)
            results.append((lay.from_matrix(mu_mat, shape).astype(mu.dtype), p_new, q_new,
                            p_root, q_root,
                            lay.from_matrix(u, shape).astype(jnp.result_type(g_leaf))))
        if results:
            cols = [treedef.unflatten(list(c)) for c in zip(*results, strict=True)]
        else:  # no matrix leaves (e.g. every leaf routed to the fallback)
            cols = [treedef.unflatten([])] * 6
        mu, left, right, left_root, right_root, out = cols
        return out, ScaleByFismoState(optax.safe_increment(state.count), mu, left, right,
                                      left_root, right_root)

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
    shape_scale: str = "jordan",
    rms_scale: jax.typing.ArrayLike = 0.2,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask: Any | Callable[[optax.Params], Any] | None = None,
    layout: layout_lib.LayoutSpec = None,
    ortho_method: str = "auto",
    ns_steps: int | None = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    fallback: optax.GradientTransformation | None = None,
    adam_learning_rate: optax.ScalarOrSchedule = 3e-4,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""FISMO: Muon with Kronecker-factored Fisher whitening (trust region in a Fisher metric).

    On every leaf with a matrix layout, with learning rate ``η`` and decoupled weight decay
    ``λ``:

    .. math::
      W \leftarrow W - \eta\big(s\,P^{-1/2}\,\mathrm{polar}(M)\,Q^{-1/2} + \lambda W\big),

    where ``P``, ``Q`` are trace-normalized EMA Kronecker factors of the gradient covariance and
    ``M`` the momentum of the whitened gradients ``P^{-1/2} G Q^{-1/2}``
    (:func:`scale_by_fismo`, module docstring). Steepest descent in the spectral norm of the
    Fisher metric ``‖P^{1/2}·Q^{1/2}‖₂``; equivariant under ``W ↦ U W Vᵀ``.

    Leaves without a matrix layout (biases, norm scales, scalars: fewer than two dimensions
    by default) go to ``fallback`` through ``optax.partition``; by default
    ``optax.adamw(adam_learning_rate, b1=0.9, b2=0.95, weight_decay=0)`` (the shared default
    of the matrix aliases).
    float16 leaves: moments in float32 (the default AdamW upcasts them). Gradients beyond ~1.8e19 in
    float32/bfloat16 overflow its second moment to ``inf`` (a documented limit shared with
    ``optax.adamw``: the leaf then stops moving); the experiments harness clips gradients
    (``grad_clip=1.0``) long before.

    Range (a documented limit): the Kronecker factors accumulate ``G Gᵀ`` and ``Gᵀ G``, which
    overflow for gradients beyond ~1e18 in float32/bfloat16 (~1e3 in float16, whose factors are
    computed in float16) and make the roots, the momentum and the update NaN; the experiments
    harness clips gradients (``grad_clip=1.0``) long before.

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
      shape_scale: ``'jordan'``, ``'rms'`` or ``'none'``.
      rms_scale: constant of ``'rms'``.
      weight_decay: decoupled weight decay ``λ`` (multiplied by ``η``) of matrix leaves.
      weight_decay_mask: tree of booleans or callable selecting decayed leaves.
      layout: matrix view of each leaf; leaves whose layout is ``None`` go to the fallback.
      ortho_method: orthogonalizer of ``polar(M)``.
      ns_steps: iterations of an iterative orthogonalizer.
      mu_dtype: dtype of the momentum.
      fallback: transform for leaves without a matrix layout (with its own learning rate).
      adam_learning_rate: learning rate of the default AdamW fallback.
      owner_computes: distribute the orthogonalizations of ``polar(M)`` over devices, each
        matrix computed by one owner (:class:`optzoo.OwnerComputes`,
        :mod:`optzoo.distributed`); ``None`` (default): wherever XLA places them.

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
    matrix_tx = optax.chain(
        scale_by_fismo(beta, gamma=gamma, damping=damping,
                       precondition_frequency=precondition_frequency, root_eps=root_eps,
                       root_method=root_method, shape_scale=shape_scale, rms_scale=rms_scale,
                       ortho_method=ortho_method, ns_steps=ns_steps, mu_dtype=mu_dtype,
                       layout=layout, owner_computes=owner_computes),
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    )
    return _partition.split_by_layout(matrix_tx, _partition.default_fallback(
        fallback, adam_learning_rate=adam_learning_rate), layout,
                          "fismo")
