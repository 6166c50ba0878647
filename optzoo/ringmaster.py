"""Ringmaster LMO: asynchronous momentum-LMO updates with a delay threshold.

A server holds the iterate ``x`` and a momentum ``m``; ``n`` workers compute stochastic
gradients at (possibly stale) iterates. When worker ``i``'s gradient ``g_k = ∇f(x_{k−δ_k}; ξ)``
arrives with *delay* ``δ_k`` (server updates applied since the worker started it):

* **server rule** (Ringmaster): if ``δ_k < R_k`` the gradient is applied, otherwise it is
  discarded; either way the worker restarts at the current iterate. In the variant *with
  calculation stops* every worker whose delay reaches ``R_k`` is cancelled and restarted at
  once, so no stale computation runs to completion;
* **LMO momentum update** (Ringmaster LMO)::

    m_{k+1} = (1 − α_k) m_k + α_k g_k,      x_{k+1} = x_k + η_k lmo(m_{k+1}),

  ``lmo(y) = argmin_{‖u‖≤1} ⟨y, u⟩`` — ``−polar(Y)`` per matrix for the spectral norm (Muon),
  ``−sign(y)`` for ℓ∞, ``−y/‖y‖₂`` for ℓ₂.

This module holds the server-side optax transforms — :func:`scale_by_ringmaster_lmo` /
:func:`ringmaster` (the update, ``β_k = 1 − α_k`` in optax's momentum convention),
:func:`discard_stale` (the threshold rule as an optax wrapper taking the arrival's ``delay``
as an extra argument) — and the parameter-agnostic schedules. The worker side (timing,
staleness, cancel-and-restart) is the discrete-event simulator :mod:`optzoo.ringmaster_sim`.

Reference code: the authors' release github.com/vectozavr/ringmaster-lmo (read at commit
c2ebc8a, ``src/asynchronous/algorithm.py``): ``RingmasterMuonASGD``,
``ParameterAgnosticRingmasterMuonASGD`` and the baselines ``RennalaMuonSGD`` and
``DelayAdaptiveMuonASGD`` (:func:`delay_adaptive`; Rennala is ``batch_size=`` of
:func:`optzoo.ringmaster_sim.simulate`); ``tests/test_ringmaster_reference.py`` ports their
server loops to numpy and matches the simulator to them.

Parameter-agnostic schedules (Sadiev et al., arXiv:2605.18174, iteration-complexity theorem;
the released code ``ParameterAgnosticRingmasterMuonASGD`` uses the same), ``k`` = updates
applied so far: ``η_k = η/(k+1)^{3/4}`` (:func:`agnostic_learning_rate`),
``α_0 = 1, α_k = 1/√k`` i.e. ``β_k = 1 − 1/√k`` (:func:`agnostic_beta`), and
``R_k = max(1, ⌊1/α_k⌋) = max(1, ⌊√k⌋)`` (:func:`agnostic_delay_threshold`). In the
reference the cancellation that follows the update ``k → k+1`` still uses ``R_k`` (the
threshold is refreshed after it); the simulator does the same. (The reference computes
``⌊1/(1/√k)⌋`` in floating point, which is ``√k − 1`` at 15 perfect squares below 10⁵, the
first ``k = 8649``; optzoo uses the exact integer square root.)

Ringmaster ASGD (Maranjyan, Tyurin, Richtárik, arXiv:2501.16168) is the special case
``lmo = identity`` (no normalization) with ``β = 0`` — ``ringmaster(γ, lmo=lambda g: g,
beta=0.0)``; its theory picks ``R = max{1, ⌈σ²/ε⌉}`` and ``γ = min{1/(2RL), ε/(4Lσ²)}``
(UNVERIFIED: from memory, not re-read in the paper).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo import _blocks, _checks
from optzoo import layout as layout_lib
from optzoo._tree import check_floating, map_with_path
from optzoo.distributed import OwnerComputes, check_owner_computes

__all__ = [
    "LMOS",
    "VECTOR_LMOS",
    "ScaleByRingmasterLMOState",
    "DiscardStaleState",
    "scale_by_ringmaster_lmo",
    "ringmaster",
    "ringmaster_agnostic",
    "discard_stale",
    "delay_adaptive",
    "agnostic_learning_rate",
    "agnostic_beta",
    "agnostic_delay_threshold",
    "delay_threshold_at",
]

#: Direction maps accepted by ``lmo`` (besides a per-leaf callable): ``'spectral'`` (alias
#: ``'muon'``: polar factor per matrix), ``'sign'`` (ℓ∞) and ``'normalized'`` (ℓ₂ of the
#: whole parameter vector).
LMOS = ("spectral", "muon", "sign", "normalized")
#: Maps for leaves without a matrix layout under ``lmo='spectral'``: ``'momentum'`` (the
#: momentum itself, as the reference code), ``'sign'``, ``'normalized'`` (ℓ₂ per leaf).
VECTOR_LMOS = ("momentum", "sign", "normalized")

DelayThreshold = int | float | str | Callable[[int], Any] | None


class ScaleByRingmasterLMOState(NamedTuple):
    """State of :func:`scale_by_ringmaster_lmo`.

    Attributes:
      count: number of (accepted) updates applied so far, ``k`` (int32, saturating).
      mu: the momentum ``m`` (structure of the parameters, dtype ``mu_dtype`` or theirs).
    """

    count: jax.Array
    mu: optax.Updates


class DiscardStaleState(NamedTuple):
    """State of :func:`discard_stale`.

    Attributes:
      count: arrivals accepted (the server's update counter ``k``).
      discarded: arrivals discarded because ``delay >= R_k``.
      inner: the wrapped transform's state (unchanged by a discarded arrival).
    """

    count: jax.Array
    discarded: jax.Array
    inner: Any


# ------------------------------------------------------------------------ schedules
def agnostic_learning_rate(eta: optax.ScalarOrSchedule) -> optax.Schedule:
    """``k ↦ η / (k + 1)^{3/4}``: the parameter-agnostic step size of Ringmaster LMO (``η``
    a number or itself a schedule of ``k``)."""
    if isinstance(eta, numbers.Real) and not eta > 0:
        raise ValueError(f"agnostic_learning_rate: eta must be > 0, got {eta}")

    def schedule(count):
        base = eta(count) if callable(eta) else eta
        return base / (jnp.asarray(count, jnp.float32) + 1.0) ** 0.75

    return schedule


def agnostic_beta(count: jax.typing.ArrayLike) -> jax.Array:
    """``β_k = 1 − α_k`` with ``α_0 = 1``, ``α_k = 1/√k``: ``0, 0, 1 − 1/√2, 1 − 1/√3, …``."""
    k = jnp.asarray(count, jnp.float32)
    return jnp.where(k < 1, 0.0, 1.0 - jax.lax.rsqrt(jnp.maximum(k, 1.0)))


def agnostic_delay_threshold(count: int) -> int:
    """``R_k = max(1, ⌊√k⌋)`` (``= max(1, ⌊1/α_k⌋)``), ``k`` = updates applied so far."""
    return max(1, math.isqrt(int(count)))


def delay_threshold_at(delay_threshold: DelayThreshold, count: int) -> float:
    """``R_k`` of a threshold spec: ``None`` (∞, plain asynchronous SGD/LMO), a number,
    ``'agnostic'`` (:func:`agnostic_delay_threshold`) or a callable ``k -> R_k``."""
    if delay_threshold is None:
        return math.inf
    if isinstance(delay_threshold, str):
        if delay_threshold != "agnostic":
            raise ValueError(
                f"delay_threshold: unknown name {delay_threshold!r}; expected "
                "'agnostic', a number >= 1, None or a callable k -> R_k"
            )
        return float(agnostic_delay_threshold(count))
    value = delay_threshold(count) if callable(delay_threshold) else delay_threshold
    value = float(value)
    if not value >= 1:
        raise ValueError(
            f"delay_threshold: R_k must be >= 1 (R = 1 applies only fresh "
            f"gradients), got {value} at k = {count}"
        )
    return value


# ------------------------------------------------------------------------ directions
def _l2_normalize(tree: Any) -> Any:
    """``X/‖X‖₂`` with one norm over every leaf of ``tree`` (accumulated in float32 or wider;
    zero stays zero)."""
    sq = sum(
        jnp.sum(jnp.square(v.astype(jnp.promote_types(v.dtype, jnp.float32))))
        for v in jax.tree.leaves(tree)
    )
    norm = jnp.sqrt(sq)
    safe = jnp.where(norm > 0, norm, jnp.ones_like(norm))
    return jax.tree.map(lambda v: (v / safe.astype(v.dtype)).astype(v.dtype), tree)


def _vector_map(name: str | Callable, x: jax.Array) -> jax.Array:
    if callable(name):
        return name(x)
    if name == "momentum":
        return x
    if name == "sign":
        return jnp.sign(x)
    return _l2_normalize(x)


def _lmo_transform(
    what: str,
    beta,
    lmo,
    *,
    nesterov,
    vector_lmo,
    ortho_method,
    ns_steps,
    shape_scale,
    eps,
    mu_dtype,
    layout,
    owner_computes,
) -> optax.GradientTransformation:
    """:func:`scale_by_ringmaster_lmo`, its arguments checked in the name of ``what`` (the
    factory the caller exposes)."""
    if not callable(lmo):
        _checks.choice(lmo, "lmo", what, LMOS)
    if vector_lmo is not None and not callable(vector_lmo):
        _checks.choice(vector_lmo, "vector_lmo", what, VECTOR_LMOS)
    _checks.choice(shape_scale, "shape_scale", what, ("jordan", None))
    if not callable(beta):
        _checks.unit_interval(beta, "beta", what)
    _blocks.check_ortho(ortho_method, None, what)
    _blocks.check_steps(ns_steps, what)
    _checks.positive(eps, "eps", what)
    _checks.float_dtype(mu_dtype, "mu_dtype", what)
    if not isinstance(nesterov, bool | np.bool_):
        raise TypeError(f"{what}: nesterov must be a bool, got {nesterov!r}")
    check_owner_computes(owner_computes, what)
    mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)
    spectral = isinstance(lmo, str) and lmo in ("spectral", "muon")
    orth = _blocks.orthogonalizer(ortho_method, ns_steps, eps=eps)

    def matrix_fn(x):
        return _blocks.apply_shape_factor(shape_scale, orth(x))

    def no_layout(v, path):
        if vector_lmo is None:
            raise ValueError(
                f"{what}: parameter '{path}' of shape {tuple(jnp.shape(v))} has no matrix "
                "layout, so the spectral LMO is undefined for it; pass vector_lmo ('momentum',"
                " 'sign' or 'normalized'), a layout covering it, or route it elsewhere"
            )
        return _vector_map(vector_lmo, v)

    def checked_layouts(tree, kind):
        """Every leaf checked floating; the layout tree under ``'spectral'``, else ``None``."""
        if spectral:
            return _blocks.flat_layouts(tree, layout, what, kind)[3]
        map_with_path(lambda p, x: check_floating(x, p, f"{what}: {kind}"), tree)
        return None

    def directions(x, layouts):
        if callable(lmo):
            return jax.tree.map(lmo, x)
        if lmo == "sign":
            return jax.tree.map(jnp.sign, x)
        if lmo == "normalized":
            return _l2_normalize(x)
        return _blocks.map_matrices(
            matrix_fn, x, layouts, otherwise=no_layout, what=what, owner_computes=owner_computes
        )

    def init_fn(params):
        checked_layouts(params, "parameter")
        mu = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), mu_dtype or jnp.result_type(p)), params)
        return ScaleByRingmasterLMOState(count=jnp.zeros([], jnp.int32), mu=mu)

    def update_fn(updates, state, params=None):
        del params
        layouts = checked_layouts(updates, "update")
        b = beta(state.count) if callable(beta) else beta
        mu = _blocks.cast_like(optax.tree.update_moment(updates, state.mu, b, 1), state.mu)
        x = optax.tree.update_moment(updates, mu, b, 1) if nesterov else mu
        out = _blocks.cast_like(directions(x, layouts), updates)
        return out, ScaleByRingmasterLMOState(count=optax.safe_increment(state.count), mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_ringmaster_lmo(
    beta: jax.typing.ArrayLike | Callable[[jax.Array], jax.Array] = 0.95,
    lmo: str | Callable[[jax.Array], jax.Array] = "spectral",
    *,
    nesterov: bool = False,
    vector_lmo: str | Callable[[jax.Array], jax.Array] | None = "momentum",
    ortho_method: str = "auto",
    ns_steps: int | None = None,
    shape_scale: str | None = "jordan",
    eps: float = 1e-7,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""Rescales updates to the LMO direction of the (Nesterov) momentum: Ringmaster LMO.

    With ``k`` the number of updates applied so far and ``β_k = 1 − α_k``:

    .. math::
      m \leftarrow \beta_k m + (1-\beta_k) g, \qquad
      X = \beta_k m + (1-\beta_k) g \;(\text{nesterov}) \text{ or } m, \qquad
      u = -\mathrm{lmo}(X),

    where ``−lmo`` is ``s(m,n)·orth(X)`` per matrix (``'spectral'``/``'muon'``, orthogonalized
    by :func:`optzoo.linalg.orthogonalize`, same-shape matrices of all leaves in one call),
    ``sign(X)`` (``'sign'``) or ``X/‖X‖₂`` over the whole tree (``'normalized'``). The step is
    ``x ← x − η_k u`` (:func:`ringmaster`); no learning rate or sign flip here.

    Steepest descent (an LMO step) under the per-matrix spectral norm (``'spectral'``), ℓ∞
    (``'sign'``) or the global ℓ₂ norm (``'normalized'``), equivariant under that norm's
    isometries: ``X ↦ UXVᵀ`` per matrix, signed coordinate permutations, orthogonal maps of
    the flattened parameter vector, respectively; invariant to a positive rescaling of the
    gradient stream (up to ``eps``).

    ``β`` may be a schedule of ``k`` (e.g. :func:`agnostic_beta`); ``k`` is this transform's
    own count, i.e. the *accepted* updates when stale arrivals are filtered before it
    (:func:`discard_stale`, :mod:`optzoo.ringmaster_sim`). The paper's algorithm has no
    Nesterov mix (``nesterov=False``, the default); the reference NanoChat/Muon experiments
    use ``nesterov=True``, ``β = 0.95`` and ``'momentum'`` for non-matrix blocks.

    Args:
      beta: momentum ``β = 1 − α`` (float or a schedule ``count -> β``).
      lmo: ``'spectral'`` (alias ``'muon'``), ``'sign'``, ``'normalized'`` or a per-leaf
        callable returning ``−lmo`` (list it in ``static_args`` under inject_hyperparams).
      nesterov: feed ``β m + (1−β) g`` instead of ``m`` to the LMO.
      vector_lmo: ``'spectral'`` only: map for leaves without a matrix layout — ``'momentum'``
        (the momentum itself, the reference code's choice), ``'sign'``, ``'normalized'`` (ℓ₂
        per leaf), a callable, or ``None`` to raise naming such a leaf.
      ortho_method: orthogonalizer of :func:`optzoo.linalg.orthogonalize`.
      ns_steps: iterations of an iterative orthogonalizer (static under inject_hyperparams).
      shape_scale: ``'jordan'`` (``√max(1, fan_out/fan_in)``) or ``None``.
      eps: orthogonalizer normalization epsilon.
      mu_dtype: momentum dtype (``None``: the parameters').
      layout: matrix view of each leaf (:func:`optzoo.layout.resolve`; default: last two
        axes of leaves with ``ndim >= 2``).
      owner_computes: ``'spectral'`` only: distribute the orthogonalizations over devices,
        each matrix computed by one owner (:class:`optzoo.OwnerComputes`,
        :mod:`optzoo.distributed`); the other LMOs ignore it.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByRingmasterLMOState`.

    Raises:
      ValueError: unknown ``lmo``/``vector_lmo``/``shape_scale``, a constant ``beta`` outside
        ``[0, 1]``, or (``'spectral'``, ``vector_lmo=None``) a leaf without a matrix layout.
      TypeError: (at init/update) a non-floating leaf, naming its path.

    Example:
      >>> import jax.numpy as jnp
      >>> from optzoo.ringmaster import scale_by_ringmaster_lmo
      >>> tx = scale_by_ringmaster_lmo(beta=0.0, lmo='sign')
      >>> u, _ = tx.update(jnp.array([0.5, -2.0]), tx.init(jnp.zeros(2)))
      >>> print(u)
      [ 1. -1.]

    References:
      Sadiev, Maranjyan, Ilin, Richtárik, *Ringmaster LMO: Asynchronous Linear Minimization
      Oracle Momentum Method*, arXiv:2605.18174 (2026), Algorithm 1.
    """
    return _lmo_transform(
        "scale_by_ringmaster_lmo",
        beta,
        lmo,
        nesterov=nesterov,
        vector_lmo=vector_lmo,
        ortho_method=ortho_method,
        ns_steps=ns_steps,
        shape_scale=shape_scale,
        eps=eps,
        mu_dtype=mu_dtype,
        layout=layout,
        owner_computes=owner_computes,
    )


# ------------------------------------------------------------------------ aliases
def _server_update(
    what: str,
    learning_rate: optax.ScalarOrSchedule,
    lmo,
    *,
    weight_decay: Any = 0.0,
    weight_decay_mask: Any = None,
    **direction: Any,
) -> optax.GradientTransformation:
    """``chain(direction, add_decayed_weights(κ, mask), scale_by_learning_rate(η))``, the
    update shapes checked against the parameters; every argument checked naming ``what``."""
    _checks.learning_rate(learning_rate, "learning_rate", what)
    _checks.nonnegative(weight_decay, "weight_decay", what)
    return _blocks.check_update_shapes(
        optax.chain(
            _lmo_transform(what, direction.pop("beta"), lmo, **direction),
            optax.add_decayed_weights(weight_decay, weight_decay_mask),
            optax.scale_by_learning_rate(learning_rate),
        ),
        what,
    )


def ringmaster(
    learning_rate: optax.ScalarOrSchedule,
    lmo: str | Callable[[jax.Array], jax.Array] = "spectral",
    *,
    beta: jax.typing.ArrayLike | Callable[[jax.Array], jax.Array] = 0.95,
    nesterov: bool = False,
    vector_lmo: str | Callable[[jax.Array], jax.Array] | None = "momentum",
    ortho_method: str = "auto",
    ns_steps: int | None = None,
    shape_scale: str | None = "jordan",
    eps: float = 1e-7,
    weight_decay: jax.typing.ArrayLike = 0.0,
    weight_decay_mask: Any = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""Ringmaster LMO, server side: momentum, LMO direction, decoupled decay, step ``η_k``.

    .. math::
      m_{k+1} = \beta_k m_k + (1-\beta_k) g_k, \qquad
      x_{k+1} = (1 - \eta_k\kappa) x_k + \eta_k\,\mathrm{lmo}(m_{k+1})

    (``lmo(m) = −polar(M)``·shape factor per matrix for ``'spectral'``, ``−sign(m)``,
    ``−m/‖m‖₂``; see :func:`scale_by_ringmaster_lmo`), i.e.
    ``chain(scale_by_ringmaster_lmo, add_decayed_weights(κ, mask), scale_by_learning_rate)``.
    Steepest descent under the chosen norm (per-matrix spectral, ℓ∞, ℓ₂), equivariant under
    its isometries.

    This is the update a Ringmaster server applies to every *accepted* gradient. The delay
    threshold ``R`` lives where the delays are known: :func:`discard_stale` (the server rule
    as an optax wrapper taking ``delay=``) or :func:`optzoo.ringmaster_sim.simulate`
    (``delay_threshold=``, with cancel-and-restart of stale workers). Run by the simulator
    with all workers equally fast and ``R = 1`` it is exactly this transform applied
    sequentially; with ``R = ∞`` it is plain asynchronous momentum-LMO.

    Args:
      learning_rate: ``η`` (scalar or schedule of the accepted-update count; see
        :func:`agnostic_learning_rate`).
      lmo: ``'spectral'``/``'muon'``, ``'sign'``, ``'normalized'`` or a per-leaf callable.
      beta: momentum ``β = 1 − α`` (float or schedule, e.g. :func:`agnostic_beta`).
      nesterov: Nesterov mix (the reference Muon experiments use ``True``).
      vector_lmo: map for non-matrix leaves under ``'spectral'`` (default ``'momentum'``).
      ortho_method: orthogonalizer (:func:`optzoo.linalg.orthogonalize`).
      ns_steps: iterations of an iterative orthogonalizer.
      shape_scale: ``'jordan'`` or ``None``.
      eps: orthogonalizer epsilon.
      weight_decay: decoupled weight decay ``κ`` (multiplied by the learning rate).
      weight_decay_mask: tree of booleans or callable selecting decayed leaves.
      mu_dtype: momentum dtype.
      layout: matrix layout spec.
      owner_computes: ``'spectral'`` only: distribute the orthogonalizations over devices,
        each matrix computed by one owner (:class:`optzoo.OwnerComputes`,
        :mod:`optzoo.distributed`); the other LMOs ignore it.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optzoo
      >>> params = {'w': jnp.ones((4, 8)), 'b': jnp.zeros(8)}
      >>> opt = optzoo.ringmaster(0.02, 'spectral', nesterov=True)
      >>> state = opt.init(params)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, state = opt.update(grads, state, params)

    References:
      Sadiev, Maranjyan, Ilin, Richtárik, arXiv:2605.18174 (2026), Algorithm 1.
      Maranjyan, Tyurin, Richtárik, *Ringmaster ASGD: The First Asynchronous SGD with Optimal
      Time Complexity*, ICML 2025, arXiv:2501.16168.
    """
    return _server_update(
        "ringmaster",
        learning_rate,
        lmo,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        beta=beta,
        nesterov=nesterov,
        vector_lmo=vector_lmo,
        ortho_method=ortho_method,
        ns_steps=ns_steps,
        shape_scale=shape_scale,
        eps=eps,
        mu_dtype=mu_dtype,
        layout=layout,
        owner_computes=owner_computes,
    )


def ringmaster_agnostic(
    learning_rate: optax.ScalarOrSchedule,
    lmo: str | Callable[[jax.Array], jax.Array] = "spectral",
    *,
    nesterov: bool = False,
    vector_lmo: str | Callable[[jax.Array], jax.Array] | None = "momentum",
    ortho_method: str = "auto",
    ns_steps: int | None = None,
    layout: layout_lib.LayoutSpec = None,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""Parameter-agnostic Ringmaster LMO: ``η_k = η/(k+1)^{3/4}``, ``β_k = 1 − 1/√k``.

    .. math::
      m_{k+1} = \beta_k m_k + (1-\beta_k) g_k, \qquad
      x_{k+1} = x_k - \frac{\eta}{(k+1)^{3/4}}\, u(m_{k+1}),

    with ``u = −lmo`` of :func:`scale_by_ringmaster_lmo`; steepest descent under (and
    equivariant with) the chosen norm, as :func:`ringmaster`.

    :func:`ringmaster` with :func:`agnostic_learning_rate` and :func:`agnostic_beta`; pair it
    with ``delay_threshold='agnostic'`` (``R_k = max(1, ⌊√k⌋)``) in
    :func:`discard_stale` or :func:`optzoo.ringmaster_sim.simulate`. Only ``eta`` is tuned.

    Args:
      learning_rate: the base step size ``η`` (the reference NanoChat run tunes it over
        powers of 5); a schedule ``s(k)`` gives ``η_k = s(k)/(k+1)^{3/4}``.
      lmo: see :func:`ringmaster`.
      nesterov: see :func:`ringmaster`.
      vector_lmo: see :func:`ringmaster`.
      ortho_method: see :func:`ringmaster`.
      ns_steps: see :func:`ringmaster`.
      layout: see :func:`ringmaster`.
      owner_computes: see :func:`ringmaster` (:mod:`optzoo.distributed`).

    Returns:
      An ``optax.GradientTransformation``.

    References:
      Sadiev, Maranjyan, Ilin, Richtárik, arXiv:2605.18174 (2026): parameter-agnostic
      theorem (``α_k = 1/√k``, ``R_k = ⌊1/α_k⌋``, ``η_k = η/(k+1)^{3/4}``).
    """
    what = "ringmaster_agnostic"
    if not callable(learning_rate):
        _checks.positive(learning_rate, "learning_rate", what)
    return _server_update(
        what,
        agnostic_learning_rate(learning_rate),
        lmo,
        beta=agnostic_beta,
        nesterov=nesterov,
        vector_lmo=vector_lmo,
        ortho_method=ortho_method,
        ns_steps=ns_steps,
        shape_scale="jordan",
        eps=1e-7,
        mu_dtype=None,
        layout=layout,
        owner_computes=owner_computes,
    )


# ------------------------------------------------------------------------ server rule
def discard_stale(
    tx: optax.GradientTransformation,
    delay_threshold: DelayThreshold,
    *,
    pass_through: tuple[str, ...] = (),
) -> optax.GradientTransformationExtraArgs:
    """The Ringmaster server rule as an optax wrapper: apply ``tx`` only if ``delay < R_k``.

    ``update(grads, state, params, *, delay)``: ``delay`` is the number of server updates
    applied since the worker that sent ``grads`` read its parameters (a Python int or an
    int array). An arrival with ``delay >= R_k`` (``k`` = arrivals accepted so far) returns
    zero updates and leaves ``tx``'s state untouched (so its schedules and momentum only see
    accepted gradients); the caller restarts that worker at the current parameters. Without
    ``delay`` every arrival is accepted. ``R_k`` from ``delay_threshold``: a number, ``None``
    (∞) or ``'agnostic'`` (``max(1, ⌊√k⌋)``); callables of ``k`` are not accepted here (``k``
    is traced under jit) — use :func:`optzoo.ringmaster_sim.simulate` for those.

    Any other keyword to ``update`` raises ``TypeError`` naming it (a misspelled ``delays=``
    would otherwise be dropped silently and every stale gradient applied), unless it is
    listed in ``pass_through``: those are forwarded to ``tx`` (e.g. ``('value',)`` for an
    inner line search). The state holds no shared buffers (donating an eagerly built state
    to a jitted step works).

    Args:
      tx: the server update (e.g. :func:`ringmaster`).
      delay_threshold: ``R``.
      pass_through: names of extra ``update`` keywords forwarded to ``tx``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`DiscardStaleState`.

    Raises:
      ValueError: a callable, unknown name or number below 1 for ``delay_threshold``.
      TypeError: (at ``update``) a keyword other than ``delay`` and ``pass_through``.

    References:
      Maranjyan, Tyurin, Richtárik, arXiv:2501.16168, Algorithm 4 (Ringmaster ASGD without
      calculation stops); Sadiev et al., arXiv:2605.18174, Algorithm 1.
    """
    what = "discard_stale"
    if (
        callable(delay_threshold)
        or isinstance(delay_threshold, bool)
        or (isinstance(delay_threshold, str) and delay_threshold != "agnostic")
    ):
        raise ValueError(
            f"{what}: delay_threshold must be a number >= 1, None or "
            f"'agnostic', got {delay_threshold!r}"
        )
    if delay_threshold is not None and not isinstance(delay_threshold, str):
        if not (isinstance(delay_threshold, numbers.Real) and delay_threshold == math.inf):
            _checks.real(delay_threshold, "delay_threshold", what, lo=1.0)
    if isinstance(pass_through, str) or not all(isinstance(k, str) for k in pass_through):
        raise TypeError(
            f"{what}: pass_through must be a tuple of keyword names, got {pass_through!r}"
        )
    forwarded = frozenset(pass_through)
    inner = optax.with_extra_args_support(tx)

    def threshold(count):
        if delay_threshold is None:
            return jnp.asarray(jnp.inf, jnp.float32)
        if delay_threshold == "agnostic":
            return jnp.maximum(1.0, jnp.floor(jnp.sqrt(count.astype(jnp.float32))))
        return jnp.asarray(delay_threshold, jnp.float32)

    def init_fn(params):
        # Two separate buffers: one array in both fields cannot be donated to a jitted step.
        return DiscardStaleState(
            count=jnp.zeros([], jnp.int32),
            discarded=jnp.zeros([], jnp.int32),
            inner=inner.init(params),
        )

    def update_fn(updates, state, params=None, *, delay=None, **extra_args):
        unknown = sorted(set(extra_args) - forwarded)
        if unknown:
            hint = " (did you mean delay=?)" if any(k.startswith("delay") for k in unknown) else ""
            raise TypeError(
                f"{what}: update() got unexpected keyword argument(s) "
                f"{', '.join(repr(k) for k in unknown)}{hint}; it takes delay= and "
                f"the names in pass_through={tuple(sorted(forwarded))}"
            )
        new_updates, new_inner = inner.update(updates, state.inner, params, **extra_args)
        if delay is None:
            accept = jnp.asarray(True)
        else:
            accept = jnp.asarray(delay).astype(jnp.float32) < threshold(state.count)
        out = jax.tree.map(lambda u: jnp.where(accept, u, jnp.zeros_like(u)), new_updates)
        kept = jax.tree.map(lambda n, o: jnp.where(accept, n, o), new_inner, state.inner)
        return out, DiscardStaleState(
            count=jnp.where(accept, optax.safe_increment(state.count), state.count),
            discarded=jnp.where(accept, state.discarded, optax.safe_increment(state.discarded)),
            inner=kept,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ------------------------------------------------------------------------ baseline
def delay_adaptive(
    tx: optax.GradientTransformation, n_workers: int
) -> optax.GradientTransformationExtraArgs:
    """Delay-adaptive asynchronous steps: ``tx``'s update times ``n/max(n, delay)``.

    The baseline of the Ringmaster papers (Mishchenko, Bach, Even, Woodworth, NeurIPS 2022,
    arXiv:2206.07638; Koloskova, Stich, Jaggi, NeurIPS 2022): every arrival is applied,
    however stale, but with step size ``η_k = η·min(1, n/δ_k)`` for an arrival of delay
    ``δ_k`` among ``n`` workers — the authors' ``DelayAdaptiveMuonASGD`` (lr
    ``γ·n/max(n, δ)`` on the Muon step; the momentum itself is updated as usual). Run it
    under :func:`optzoo.ringmaster_sim.simulate` with ``delay_threshold=None``.

    ``update(grads, state, params, *, delay)``; without ``delay`` the factor is 1. Other
    keywords raise ``TypeError`` (as :func:`discard_stale`).

    Args:
      tx: the server update (e.g. :func:`ringmaster`).
      n_workers: ``n``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``tx``'s state.
    """
    what = "delay_adaptive"
    _checks.integer(n_workers, "n_workers", what, lo=1)
    inner = optax.with_extra_args_support(tx)
    n = float(n_workers)

    def update_fn(updates, state, params=None, *, delay=None, **extra_args):
        if extra_args:
            raise TypeError(
                f"{what}: update() got unexpected keyword argument(s) "
                f"{', '.join(repr(k) for k in sorted(extra_args))}; it takes "
                "delay="
            )
        out, state = inner.update(updates, state, params)
        if delay is None:
            return out, state
        factor = n / jnp.maximum(n, jnp.asarray(delay).astype(jnp.float32))
        return jax.tree.map(lambda u: (factor * u).astype(u.dtype), out), state

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


#: The arguments ``optax.inject_hyperparams`` cannot trace (the LMOs, iteration counts, dtypes,
#: layouts, masks, the wrapped transformation and the wrappers' integers): pass
#: ``static_args=factory.static_args``.
scale_by_ringmaster_lmo.static_args = (
    "lmo",
    "vector_lmo",
    "ortho_method",
    "ns_steps",
    "shape_scale",
    "mu_dtype",
    "layout",
    "owner_computes",
)
ringmaster.static_args = scale_by_ringmaster_lmo.static_args + ("weight_decay_mask",)
ringmaster_agnostic.static_args = (
    "lmo",
    "vector_lmo",
    "ortho_method",
    "ns_steps",
    "layout",
    "owner_computes",
)
discard_stale.static_args = ("tx", "pass_through")
delay_adaptive.static_args = ("tx", "n_workers")
