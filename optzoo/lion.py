"""Lion and the Lion-𝒦 family: momentum followed by the gradient of a convex function 𝒦.

Lion (Chen et al., 2023) updates with ``sign`` of an interpolation between the momentum and the
current gradient. Lion-𝒦 (Chen, Liu, Liang, Liu, 2024) replaces ``sign`` by ``∇𝒦`` for a convex
``𝒦``; with decoupled weight decay ``λ`` the iterates then solve a constrained problem whose
feasible set is the ``1/λ``-ball of the norm dual to ``𝒦`` (for norm-like ``𝒦``).

The Lion-𝒦 maps available here (``kappa=``), with the constraint each implies together with
decoupled weight decay ``λ`` (docs/math/lion.md):

* ``'sign'``: ``sign(z)``, 𝒦 = ‖z‖₁ (Lion) — box ``‖x‖_∞ ≤ 1/λ``, coordinatewise.
* ``'tanh'``: ``tanh(βz)``, 𝒦 = Σ log cosh(βzᵢ)/β — soft box ``‖x‖_∞ ≤ 1/λ``
  (an entropy-like penalty in the interior).
* ``'clip'``: ``clip(z, −1, 1)``, 𝒦 = Huber — box ``‖x‖_∞ ≤ 1/λ`` plus a ``½‖·‖²`` penalty
  inside.
* ``'l2'``: ``z / ‖z‖₂`` per leaf, 𝒦 = ‖z‖₂ — ℓ₂ ball ``‖x‖₂ ≤ 1/λ`` of each leaf.
* ``'spectral'``: ``polar(Z)`` per matrix, 𝒦 = ‖Z‖_* (nuclear) — spectral ball
  ``‖X‖₂ ≤ 1/λ`` of each matrix (Muon-like updates with Lion's momentum). With an iterative
  orthogonalizer (the default Polar Express, Newton–Schulz) the computed factor's singular
  values spread around 1 (up to 1.14 measured), so a final contraction step bounds them by 1
  (:func:`_bounded_polar`): the ``1/λ`` ball holds for every ``spectral_method``, not only
  for the exact ``'svd'``/``'qdwh'``.
* a callable ``z -> ∇𝒦(z)``: whatever the conjugate of its 𝒦 implies.

For every bounded map (``|∇𝒦(z)| ≤ 1`` in the dual norm) and ``0 < ηλ ≤ 1`` the iterates obey
``‖x_t‖ − 1/λ ≤ (1 − ηλ)^t (‖x_0‖ − 1/λ)`` in that norm, whatever the gradients: the ball is
invariant and is approached geometrically from outside (docs/math/lion.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optzoo import _blocks, _checks
from optzoo import layout as layout_lib
from optzoo._tree import check_floating, map_with_path
from optzoo.distributed import OwnerComputes, check_owner_computes

__all__ = ["ScaleByLionKappaState", "KAPPAS", "scale_by_lion_kappa", "lion", "lion_kappa"]

KappaLike = str | Callable[[jax.Array], jax.Array]

#: Names accepted by ``kappa``. 'sign', 'tanh' and 'clip' act coordinatewise, 'l2' on each leaf
#: as one vector, 'spectral' on each matrix of a leaf's matrix view.
KAPPAS = ("sign", "tanh", "clip", "l2", "spectral")
_VECTOR_KAPPAS = ("sign", "tanh", "clip", "l2")


class ScaleByLionKappaState(NamedTuple):
    """State of :func:`scale_by_lion_kappa`.

    Attributes:
      count: number of updates applied so far (int32, saturating).
      mu: the momentum ``m``, an EMA of the gradients with rate ``b2`` (structure of the
        parameters, dtype ``mu_dtype`` or the parameters' dtype).
    """

    count: jax.Array
    mu: optax.Updates


# --------------------------------------------------------------------------------- maps
def _sign(z: jax.Array, beta: Any) -> jax.Array:
    del beta
    return jnp.sign(z)


def _tanh(z: jax.Array, beta: Any) -> jax.Array:
    return jnp.tanh(beta * z)


def _clip(z: jax.Array, beta: Any) -> jax.Array:
    del beta
    return jnp.clip(z, -1.0, 1.0)


def _l2(z: jax.Array, beta: Any) -> jax.Array:
    del beta
    # z / ‖z‖₂ computed as y / ‖y‖₂ with y = z / max|z|: the entries of y lie in [-1, 1], so
    # the sum of squares neither overflows (|z| >~ 1e19 in float32 made ‖z‖ = inf and the
    # direction exactly 0) nor underflows (|z| <~ 1e-19 flushed it to 0). The scale is floored
    # at the dtype's smallest normal number, so subnormal inputs divide safely. Accumulated in
    # at least float32 (bfloat16 leaves neither overflow nor lose the sum); z = 0 maps to 0
    # (the subgradient of ‖·‖₂ at 0 closest to the origin).
    acc = jnp.promote_types(z.dtype, jnp.float32)
    zf = z.astype(acc)
    scale = jnp.maximum(jnp.max(jnp.abs(zf), initial=0.0), jnp.finfo(acc).tiny)
    y = zf / scale
    norm = jnp.sqrt(jnp.sum(y * y))
    safe = jnp.where(norm > 0, norm, jnp.ones_like(norm))
    return (y / safe).astype(z.dtype)


_ELEMENTWISE = {"sign": _sign, "tanh": _tanh, "clip": _clip, "l2": _l2}


def _check_kappa(kappa: Any, name: str, allowed: tuple[str, ...], what: str) -> None:
    """A name in ``allowed`` or a callable ``z -> ∇𝒦(z)`` that maps an array to an array of
    the same shape (checked abstractly with ``jax.eval_shape`` on a small float32 matrix: no
    computation runs, so a wrong signature or a shape-changing map fails here, naming the
    argument, not at the first update)."""
    if isinstance(kappa, str):
        _checks.choice(kappa, name, what, allowed)
        return
    if not callable(kappa):
        raise ValueError(
            f"{what}: {name} must be one of {list(allowed)} or a callable z -> ∇𝒦(z), got {kappa!r}"
        )
    probe = jax.ShapeDtypeStruct((2, 3), jnp.float32)
    try:
        out = jax.eval_shape(kappa, probe)
    except Exception as err:  # noqa: BLE001 - any failure of the user's map is reported
        raise TypeError(
            f"{what}: {name} must be a callable z -> ∇𝒦(z) taking one array; "
            f"calling it on a (2, 3) float32 array failed: "
            f"{type(err).__name__}: {err}"
        ) from None
    shape = getattr(out, "shape", None)
    dtype = getattr(out, "dtype", None)
    if shape != (2, 3) or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{what}: {name} must map an array to a floating array of the same "
            f"shape; on a (2, 3) float32 array it returned {out!r}"
        )


def _validate(
    what: str,
    *,
    b1: Any,
    b2: Any,
    kappa: Any = "sign",
    beta: Any = 1.0,
    mu_dtype: Any = None,
    spectral_method: str = "polar_express",
    spectral_steps: Any = None,
    vector_kappa: Any = None,
    **rates: Any,
) -> None:
    """Construction-time checks shared by the factories (optzoo._checks: Python numbers,
    numpy scalars and 0-d arrays are checked; traced values pass through)."""
    _check_kappa(kappa, "kappa", KAPPAS, what)
    if vector_kappa is not None:
        _check_kappa(vector_kappa, "vector_kappa", _VECTOR_KAPPAS, what)
    _checks.unit_interval(b1, "b1", what)
    _checks.unit_interval(b2, "b2", what)
    _checks.positive(beta, "beta", what)
    _checks.float_dtype(mu_dtype, "mu_dtype", what)
    _blocks.check_ortho(spectral_method, None, what, name="spectral_method")
    _blocks.check_steps(spectral_steps, what, "spectral_steps")
    if "learning_rate" in rates:
        _checks.learning_rate(rates["learning_rate"], "learning_rate", what)
    if "weight_decay" in rates:
        _checks.nonnegative(rates["weight_decay"], "weight_decay", what)


def _leaf_map(kappa: KappaLike, beta: Any) -> Callable[[jax.Array], jax.Array]:
    if callable(kappa):
        return kappa
    fn = _ELEMENTWISE[kappa]
    return lambda z: fn(z, beta)


#: Orthogonalizers whose output is the exact polar factor (singular values 0 or 1 up to
#: rounding); the others get the final contraction step of :func:`_bounded_polar`.
_EXACT_POLAR = ("svd", "qdwh")


def _bounded_polar(mat: jax.Array, method: str, steps: int | None) -> jax.Array:
    r"""``polar(Z)`` whose largest singular value is at most 1 (up to rounding).

    The iterative orthogonalizers (Polar Express, Newton–Schulz, their Gram variants) return
    ``O`` with singular values spread around 1: measured up to 1.14 for the default Polar
    Express and 1.20 for Jordan's quintic, which would widen Lion-𝒦's spectral ball to
    ``1.14/λ``. One Newton–Schulz cubic step ``O ← (3O − O Oᵀ O)/2`` — applied in float32 or
    wider — maps every singular value ``σ ∈ [0, 2]`` to ``p(σ) = (3σ − σ³)/2 ∈ [−1, 1]``, with
    ``p(σ) ≤ 1`` and equality only at ``σ = 1``; values near 1 move closer to 1
    (``p(1 + δ) = 1 − 3δ²/2 + O(δ³)``: 1.14 → 0.97, 0.87 → 0.98). It commutes with
    ``Z ↦ U Z Vᵀ`` and keeps the singular vectors, so the direction stays a polar-factor
    approximation and Lion-𝒦's ``1/λ`` ball bound holds for every orthogonalizer. Cost: two
    extra matrix products per matrix. The exact methods (``'svd'``, ``'qdwh'``) are returned
    as computed.
    """
    o = _blocks.orthogonalizer(method, steps)(mat)
    if method in _EXACT_POLAR:
        return o
    acc = jnp.promote_types(o.dtype, jnp.float32)
    of = o.astype(acc)
    # O Oᵀ O through the smaller Gram matrix (r×r with r = min(m, n)).
    if of.shape[-2] <= of.shape[-1]:
        cubic = (of @ jnp.swapaxes(of, -1, -2)) @ of
    else:
        cubic = of @ (jnp.swapaxes(of, -1, -2) @ of)
    return (1.5 * of - 0.5 * cubic).astype(o.dtype)


def _checked_layouts(
    tree: Any, layout: layout_lib.LayoutSpec, spectral: bool, has_vector: bool, kind: str
) -> Any:
    """Every leaf of ``tree`` checked floating; under ``'spectral'`` the layout tree, every
    leaf without a layout refused unless ``vector_kappa`` covers it (else ``None``)."""
    if not spectral:
        map_with_path(lambda p, x: check_floating(x, p, f"scale_by_lion_kappa: {kind}"), tree)
        return None
    paths, leaves, lays, layouts, _ = _blocks.flat_layouts(
        tree, layout, "lion_kappa(kappa='spectral')", kind
    )
    for path, x, lay in zip(paths, leaves, lays, strict=True):
        if lay is None and not has_vector:
            raise _no_layout_error(path, jnp.shape(x))
    return layouts


def _no_layout_error(path: str, shape: tuple[int, ...]) -> ValueError:
    return ValueError(
        f"lion_kappa(kappa='spectral'): parameter '{path}' of shape {tuple(shape)} has no "
        "matrix layout, so polar(Z) is undefined for it; pass vector_kappa (e.g. "
        "vector_kappa='sign') to use a vector map on such leaves, a layout covering it, or "
        "route it to another transform"
    )


# ---------------------------------------------------------------------------- blocks
def scale_by_lion_kappa(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    kappa: KappaLike = "sign",
    *,
    beta: jax.typing.ArrayLike = 1.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    layout: layout_lib.LayoutSpec = None,
    spectral_method: str = "polar_express",
    spectral_steps: int | None = None,
    vector_kappa: KappaLike | None = None,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""Rescales updates by the Lion-𝒦 direction ``∇𝒦(β₁ m + (1 − β₁) g)``.

    With gradient ``g`` and momentum ``m`` (initially 0):

    .. math::
      z = \beta_1 m + (1 - \beta_1) g, \qquad
      u = \nabla\mathcal{K}(z), \qquad
      m \leftarrow \beta_2 m + (1 - \beta_2) g .

    The direction uses the momentum *before* it is updated, exactly as ``optax.scale_by_lion``;
    ``kappa='sign'`` is Lion and reproduces ``optax.scale_by_lion`` (mode ``'hard'``),
    ``'tanh'`` its mode ``'smooth'`` (``smooth_beta=beta``) and ``'clip'`` its mode
    ``'refined'``. No learning rate or sign flip is applied (see :func:`lion_kappa`).

    The update is steepest descent under the norm whose dual unit ball contains the range of
    ``∇𝒦`` — ℓ∞ for ``'sign'``/``'tanh'``/``'clip'``, ℓ₂ (per leaf) for ``'l2'``, the spectral
    norm (per matrix) for ``'spectral'`` — and is equivariant under that norm's isometry group:
    signed coordinate permutations for the coordinatewise maps (not rotations), the orthogonal
    group of each flattened leaf for ``'l2'``, and ``X ↦ U X Vᵀ`` with orthogonal ``U, V`` on
    each matrix for ``'spectral'``. The implied constraints are listed in the module docstring.

    Args:
      b1: interpolation weight of the momentum in the direction input ``z``.
      b2: decay rate of the momentum EMA.
      kappa: the direction map: ``'sign'``, ``'tanh'``, ``'clip'``, ``'l2'``, ``'spectral'``,
        or a callable ``z -> ∇𝒦(z)`` applied to each leaf (under
        ``optax.inject_hyperparams`` list it in ``static_args``, since optax would otherwise
        take a callable for a schedule).
      beta: sharpness ``β`` of ``'tanh'`` (``∇𝒦(z) = tanh(βz)``); ignored by the other maps.
      mu_dtype: dtype of the momentum buffer; ``None`` uses the parameters' dtype.
      layout: ``'spectral'`` only: how each leaf is read as a batch of matrices (a
        :class:`optzoo.layout.MatrixLayout`, a tree of them, or a callable; ``None`` uses
        :func:`optzoo.layout.default_layout` of each leaf). See
        :func:`optzoo.layout.resolve`.
      spectral_method: ``'spectral'`` only: the orthogonalizer passed to
        :func:`optzoo.linalg.orthogonalize` (``'polar_express'``, ``'auto'``,
        ``'newton_schulz'``, ``'gram_newton_schulz'``, ``'svd'`` or ``'qdwh'``). The
        iterative ones are followed by one Newton–Schulz cubic step in float32 that keeps
        every singular value ``<= 1`` (two extra matrix products), so the direction's
        operator norm is at most 1 (up to float32 rounding) and the ``1/λ`` spectral ball
        bound holds with every method.
      spectral_steps: ``'spectral'`` only: iteration count for iterative orthogonalizers
        (``None``: the method's default).
      vector_kappa: ``'spectral'`` only: the map used on leaves without a matrix layout
        (biases, norm scales, scalars): one of ``'sign'``, ``'tanh'``, ``'clip'``, ``'l2'``
        or a callable. ``None`` (default) raises a ``ValueError`` naming such a leaf rather than
        silently choosing a rule for it.
      owner_computes: ``'spectral'`` only: distribute the orthogonalizations over devices,
        each matrix computed by one owner (:class:`optzoo.OwnerComputes`,
        :mod:`optzoo.distributed`); the elementwise maps are local and ignore it.

    Returns:
      A :class:`optax.GradientTransformation` with state :class:`ScaleByLionKappaState`.

    Raises:
      ValueError: at construction, naming the argument: an unknown ``kappa``/``vector_kappa``
        name or ``spectral_method``, ``b1``/``b2`` outside ``[0, 1]`` or non-finite (Python
        numbers, numpy scalars and 0-d arrays alike), a non-positive ``beta``,
        ``spectral_steps < 1``; at ``init``, (``'spectral'``) a leaf with no matrix layout and
        no ``vector_kappa``, or a layout that does not fit a leaf, naming the path.
      TypeError: at construction, a bool/None/non-number hyperparameter, a non-floating
        ``mu_dtype``, a non-int ``spectral_steps``, or a callable ``kappa``/``vector_kappa``
        that does not map a (2, 3) float32 array to a floating array of that shape (checked
        with ``jax.eval_shape``, no computation); at ``init``/``update``, a non-floating leaf,
        naming its path.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from optzoo.lion import scale_by_lion_kappa
      >>> tx = optax.chain(scale_by_lion_kappa(kappa='l2'), optax.scale(-0.1))
      >>> params = jnp.array([3.0, -4.0])
      >>> updates, state = tx.update(params, tx.init(params))
      >>> print(jnp.round(updates, 4))
      [-0.06  0.08]

    References:
      Chen et al., *Symbolic Discovery of Optimization Algorithms*, arXiv:2302.06675 (2023),
      Algorithm 2 (Lion).
      Chen, Liu, Liang, Liu, *Lion Secretly Solves Constrained Optimization: As Lyapunov
      Predicts*, arXiv:2310.05898 (ICLR 2024) (Lion-𝒦).
    """
    what = "scale_by_lion_kappa"
    _validate(
        what,
        b1=b1,
        b2=b2,
        kappa=kappa,
        beta=beta,
        mu_dtype=mu_dtype,
        spectral_method=spectral_method,
        spectral_steps=spectral_steps,
        vector_kappa=vector_kappa,
    )
    check_owner_computes(owner_computes, what)
    mu_dtype = None if mu_dtype is None else jax.dtypes.canonicalize_dtype(mu_dtype)
    spectral = isinstance(kappa, str) and kappa == "spectral"
    vector_map = _leaf_map(vector_kappa, beta) if vector_kappa is not None else None
    leaf_map = None if spectral else _leaf_map(kappa, beta)

    def on_vector(z, path):
        if vector_map is None:
            raise _no_layout_error(path, jnp.shape(z))
        return vector_map(z)

    def direction(z, layouts):
        if not spectral:
            return jax.tree.map(leaf_map, z)
        return _blocks.map_matrices(
            lambda mat: _bounded_polar(mat, spectral_method, spectral_steps),
            z,
            layouts,
            otherwise=on_vector,
            owner_computes=owner_computes,
        )

    def init_fn(params):
        _checked_layouts(params, layout, spectral, vector_map is not None, "parameter")
        mu = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), mu_dtype or jnp.result_type(p)), params)
        return ScaleByLionKappaState(count=jnp.zeros([], jnp.int32), mu=mu)

    def update_fn(updates, state, params=None):
        del params
        layouts = _checked_layouts(updates, layout, spectral, True, "update")
        # optax.scale_by_lion's recursion: the direction reads the OLD momentum.
        z = optax.tree.update_moment(updates, state.mu, b1, 1)
        # Updates keep the gradients' dtype (optax would promote them to mu_dtype).
        directions = _blocks.cast_like(direction(z, layouts), updates)
        mu = _blocks.cast_like(optax.tree.update_moment(updates, state.mu, b2, 1), state.mu)
        count = optax.safe_increment(state.count)
        return directions, ScaleByLionKappaState(count=count, mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------- aliases
def _decayed(
    what: str,
    tx: optax.GradientTransformation,
    weight_decay: Any,
    mask: Any,
    learning_rate: optax.ScalarOrSchedule,
) -> optax.GradientTransformation:
    """``chain(tx, add_decayed_weights(λ, mask), scale_by_learning_rate(η))``, the update
    shapes checked against the parameters."""
    return _blocks.check_update_shapes(
        optax.chain(
            tx,
            optax.add_decayed_weights(weight_decay, mask),
            optax.scale_by_learning_rate(learning_rate),
        ),
        what,
    )


def lion(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    mu_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: jax.typing.ArrayLike = 1e-3,
    mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
    r"""The Lion optimizer (EvoLved Sign Momentum), step for step equal to ``optax.lion``.

    With learning rate ``η`` and decoupled weight decay ``λ``:

    .. math::
      u = \mathrm{sign}(\beta_1 m + (1 - \beta_1) g), \qquad
      x \leftarrow x - \eta (u + \lambda x), \qquad
      m \leftarrow \beta_2 m + (1 - \beta_2) g .

    Steepest descent under the ℓ∞ norm with momentum; equivariant under signed permutations of
    the coordinates (not under rotations) and invariant to positive rescaling of the gradient
    stream. With ``0 < ηλ ≤ 1`` every coordinate is driven into the box ``|xᵢ| ≤ 1/λ`` at rate
    ``(1 − ηλ)^t`` and never leaves it (Lion-𝒦 with ``𝒦 = ‖·‖₁``). Typical settings use a
    learning rate 3–10× smaller and a weight decay 3–10× larger than AdamW's.

    One difference from ``optax.lion``: updates keep the gradients' dtype, whereas optax
    promotes them to a wider ``mu_dtype`` (e.g. float32 updates for bfloat16 parameters with
    ``mu_dtype=float32``). When gradients, parameters and momentum share a dtype, or the
    momentum is the narrower one, the two agree bit for bit.

    Args:
      learning_rate: a scalar or an optax schedule.
      b1: interpolation weight of the momentum in the update direction.
      b2: decay rate of the momentum EMA.
      mu_dtype: dtype of the momentum buffer; ``None`` uses the parameters' dtype.
      weight_decay: decoupled weight decay ``λ`` (multiplied by the learning rate).
      mask: a tree of booleans (or a callable ``params -> tree``) selecting the leaves that
        are decayed, as in ``optax.add_decayed_weights``.

    Returns:
      A :class:`optax.GradientTransformation`:
      ``chain(scale_by_lion_kappa('sign'), add_decayed_weights, scale_by_learning_rate)``.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optzoo
      >>> f = lambda x: jnp.sum(x ** 2)
      >>> opt = optzoo.lion(learning_rate=0.1)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = opt.init(params)
      >>> updates, state = opt.update(jax.grad(f)(params), state, params)
      >>> print(optax.apply_updates(params, updates))  # x - 0.1 * (sign(0.1 g) + 1e-3 x)
      [ 0.8999    -1.8998001]

    References:
      Chen et al., *Symbolic Discovery of Optimization Algorithms*, arXiv:2302.06675 (2023),
      Algorithm 2.
    """
    _validate(
        "lion",
        b1=b1,
        b2=b2,
        mu_dtype=mu_dtype,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
    )
    return _decayed(
        "lion",
        scale_by_lion_kappa(b1=b1, b2=b2, kappa="sign", mu_dtype=mu_dtype),
        weight_decay,
        mask,
        learning_rate,
    )


def lion_kappa(
    learning_rate: optax.ScalarOrSchedule,
    kappa: KappaLike = "sign",
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.99,
    *,
    beta: jax.typing.ArrayLike = 1.0,
    mu_dtype: jax.typing.DTypeLike | None = None,
    weight_decay: jax.typing.ArrayLike = 1e-3,
    mask: Any | Callable[[optax.Params], Any] | None = None,
    layout: layout_lib.LayoutSpec = None,
    spectral_method: str = "polar_express",
    spectral_steps: int | None = None,
    vector_kappa: KappaLike | None = None,
    owner_computes: OwnerComputes | None = None,
) -> optax.GradientTransformation:
    r"""Lion-𝒦: Lion with ``sign`` replaced by the gradient of a convex function ``𝒦``.

    With learning rate ``η`` and decoupled weight decay ``λ``:

    .. math::
      z = \beta_1 m + (1 - \beta_1) g, \qquad
      x \leftarrow x - \eta (\nabla\mathcal{K}(z) + \lambda x), \qquad
      m \leftarrow \beta_2 m + (1 - \beta_2) g .

    For norm-like ``𝒦`` this minimizes the loss subject to ``‖x‖_dual ≤ 1/λ``: box
    ``‖x‖_∞ ≤ 1/λ`` for ``'sign'`` (𝒦 = ℓ₁, Lion), ``'tanh'`` (soft box) and ``'clip'``
    (Huber: box plus a quadratic penalty inside); ℓ₂ ball ``‖x‖₂ ≤ 1/λ`` of each leaf for
    ``'l2'``; spectral ball ``‖X‖₂ ≤ 1/λ`` of each matrix for ``'spectral'`` (𝒦 = nuclear
    norm, ∇𝒦 = polar factor: Muon-style updates with Lion's momentum). For these maps and
    ``0 < ηλ ≤ 1``, ``‖x_t‖ − 1/λ ≤ (1 − ηλ)^t (‖x_0‖ − 1/λ)`` for any gradient stream
    (rounding aside). For ``'spectral'`` this holds with every ``spectral_method``: the
    iterative orthogonalizers (σ_max up to 1.14 on their own) end with a contraction step
    that bounds the direction's operator norm by 1.
    The update is steepest descent in the dual norm and equivariant under its isometries:
    signed coordinate permutations (``'sign'``, ``'tanh'``, ``'clip'``), orthogonal maps of a
    flattened leaf (``'l2'``), ``X ↦ U X Vᵀ`` per matrix (``'spectral'``).

    The ``'l2'`` norm is taken per leaf (each parameter array is one vector, the natural optax
    granularity), so the implied constraint is one ℓ₂ ball per leaf, not one global ball.
    In ``'spectral'`` mode, leaves without a matrix layout (see ``layout``) use
    ``vector_kappa`` or raise a ``ValueError`` naming the leaf.

    Discretization: as in ``optax.lion`` and google/automl's Lion, the direction uses the
    momentum before its update and the weight decay is explicit and decoupled
    (``x ← (1 − ηλ)x − η∇𝒦(z)``) — the form public summaries of arXiv:2310.05898 quote for
    its discrete Lion-𝒦 (the PDF was not checked). An implicit variant
    (``x ← (x − η∇𝒦(z))/(1 + ηλ)``) also keeps the ``1/λ`` ball invariant; it differs at
    second order in ``ηλ`` and is not what optzoo computes
    (``tests/test_lion_robustness.py`` tells the two apart).

    Under ``optax.inject_hyperparams``, every callable argument other than a schedule —
    a callable ``kappa``, ``vector_kappa``, ``layout`` or ``mask`` — must be listed in
    ``static_args``; optax would otherwise call it as a schedule of the step count.

    Args:
      learning_rate: a scalar or an optax schedule.
      kappa: ``'sign'``, ``'tanh'``, ``'clip'``, ``'l2'``, ``'spectral'`` or a callable
        ``z -> ∇𝒦(z)`` applied per leaf (list it in ``static_args`` of
        ``optax.inject_hyperparams``).
      b1: interpolation weight of the momentum in the direction input ``z``.
      b2: decay rate of the momentum EMA.
      beta: sharpness of ``'tanh'``; ignored otherwise.
      mu_dtype: dtype of the momentum buffer; ``None`` uses the parameters' dtype.
      weight_decay: decoupled weight decay ``λ`` (multiplied by the learning rate); it sets the
        radius ``1/λ`` of the implied constraint.
      mask: a tree of booleans (or a callable) selecting the decayed leaves.
      layout: ``'spectral'`` only: the matrix view of each leaf (see
        :func:`optzoo.layout.resolve`); default: :func:`optzoo.layout.default_layout`.
      spectral_method: ``'spectral'`` only: orthogonalizer for
        :func:`optzoo.linalg.orthogonalize` (iterative ones end with the contraction step
        that keeps the operator norm <= 1; see :func:`scale_by_lion_kappa`).
      spectral_steps: ``'spectral'`` only: iterations of an iterative orthogonalizer.
      vector_kappa: ``'spectral'`` only: map for leaves without a matrix layout.
      owner_computes: ``'spectral'`` only: distribute the orthogonalizations over devices,
        each matrix computed by one owner (:class:`optzoo.OwnerComputes`,
        :mod:`optzoo.distributed`); the elementwise maps are local and ignore it.

    Returns:
      A :class:`optax.GradientTransformation`:
      ``chain(scale_by_lion_kappa, add_decayed_weights, scale_by_learning_rate)``.

    Example:
      >>> import jax.numpy as jnp, optax, optzoo
      >>> opt = optzoo.lion_kappa(0.1, kappa='l2', weight_decay=0.0)
      >>> params = jnp.array([0.0, 0.0])
      >>> updates, _ = opt.update(jnp.array([3.0, 4.0]), opt.init(params), params)
      >>> print(jnp.round(updates, 4))  # -0.1 * z / ‖z‖₂
      [-0.06 -0.08]

    References:
      Chen, Liu, Liang, Liu, *Lion Secretly Solves Constrained Optimization: As Lyapunov
      Predicts*, arXiv:2310.05898 (ICLR 2024).
      Chen et al., *Symbolic Discovery of Optimization Algorithms*, arXiv:2302.06675 (2023).
    """
    direction = dict(
        b1=b1,
        b2=b2,
        kappa=kappa,
        beta=beta,
        mu_dtype=mu_dtype,
        spectral_method=spectral_method,
        spectral_steps=spectral_steps,
        vector_kappa=vector_kappa,
    )
    _validate("lion_kappa", learning_rate=learning_rate, weight_decay=weight_decay, **direction)
    tx = scale_by_lion_kappa(layout=layout, owner_computes=owner_computes, **direction)
    return _decayed("lion_kappa", tx, weight_decay, mask, learning_rate)


#: The arguments ``optax.inject_hyperparams`` cannot trace (the maps, iteration counts, dtypes,
#: layouts, masks): pass ``static_args=factory.static_args``.
lion.static_args = ("mu_dtype", "mask")
scale_by_lion_kappa.static_args = (
    "kappa",
    "mu_dtype",
    "layout",
    "spectral_method",
    "spectral_steps",
    "vector_kappa",
    "owner_computes",
)
lion_kappa.static_args = scale_by_lion_kappa.static_args + ("mask",)
