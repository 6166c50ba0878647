"""Private: the block layer every matrix method is written on.

A method module is its math plus a short chain of these blocks; it imports modules, never a
sibling's private names. What lives here:

* **argument checks** shared by the orthogonalizing methods (:func:`check_ortho`,
  :func:`check_steps`; scalar checks are :mod:`optzoo._checks`);
* **layouts resolved once** per call: :func:`flat_layouts` gives paths, leaves, layouts and
  the tree definition of an update tree, with every leaf's dtype checked;
* **momentum** on optax's tree helpers: :func:`init_momentum` (``MaskedNode`` where a leaf
  has no matrix layout), :func:`momentum_step` (``optax.tree.update_moment``; Nesterov and
  optax-contrib-style bias correction);
* **the matrix map**: :func:`map_matrices` / :func:`map_stacks` (same-shape grouping across
  leaves, owner-computes distribution, results cast back to each leaf's dtype),
  :func:`orthogonalizer` (every polar-factor method and preconditioning behind one callable);
* **the shape factor** as its own block: :func:`shape_factor` per matrix view and the
  stateless transformation :func:`scale_by_shape`;
* **the fallback split**: :func:`with_fallback` turns a matrix transformation into the alias
  ``partition(matrix -> chain(tx, decay, lr), others -> fallback)``, with the fallback built
  from :mod:`optzoo.fallback` and the update shapes checked against the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optzoo import _checks, distributed, linalg
from optzoo import fallback as fallback_lib
from optzoo import layout as layout_lib
from optzoo._tree import check_floating, path_str
from optzoo.distributed import OwnerComputes

#: Values accepted by ``shape_scale``: Jordan's ``√max(1, fan_out/fan_in)``, Moonshot's
#: ``rms_scale·√max(fan_in, fan_out)``, or ``None`` (no factor).
SHAPE_SCALES = ("jordan", "rms", None)

#: Values accepted by ``preconditioning`` (the scaling applied before Newton–Schulz, as in
#: ``optax.contrib.muon``): ``'frobenius'`` (divide by ``‖X‖_F``, the default), ``'spectral'``
#: (by ``‖X‖₂``, exact), ``'aol'`` (rows of the wide view scaled by ``(Σ_j |XXᵀ|_ij)^{-1/2}``,
#: Prach & Lampert's almost-orthogonal layer rescaling: ``‖X‖₂ ≤ 1`` and often much closer to 1
#: than Frobenius), ``'schatten'`` (by the Schatten-4 norm ``‖XXᵀ‖_F^{1/2}``).
PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")


# ------------------------------------------------------------------------------ checks
def check_steps(steps: Any, what: str, name: str = "ns_steps") -> None:
    """``None`` or a static Python int ``>= 1`` (an unrolled iteration count)."""
    _checks.integer(steps, name, what, lo=1, allow_none=True)


def check_ortho(
    method: Any,
    coeffs: Any,
    what: str,
    preconditioning: str = "frobenius",
    name: str = "ortho_method",
) -> None:
    """An orthogonalizer of :data:`optzoo.linalg.ORTHOGONALIZERS`, ``ns_coeffs`` only for the
    Newton–Schulz iterations, a non-Frobenius ``preconditioning`` only with
    ``'newton_schulz'``."""
    _checks.choice(method, name, what, linalg.ORTHOGONALIZERS)
    if coeffs is not None and method not in ("newton_schulz", "gram_newton_schulz"):
        raise ValueError(
            f"{what}: ns_coeffs applies to {name} 'newton_schulz' or "
            f"'gram_newton_schulz', not {method!r}"
        )
    _checks.choice(preconditioning, "preconditioning", what, PRECONDITIONINGS)
    if preconditioning != "frobenius" and method != "newton_schulz":
        raise ValueError(
            f"{what}: preconditioning={preconditioning!r} applies to "
            f"{name}='newton_schulz' (optax.contrib.muon's iteration), not "
            f"{method!r}"
        )


def is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


# ----------------------------------------------------------------------------- layouts
def flat_layouts(tree: Any, layout: layout_lib.LayoutSpec, what: str, kind: str):
    """``(paths, leaves, layouts, layout_tree, treedef)`` of ``tree``, layouts resolved once
    (:func:`optzoo.layout.resolve`) and every leaf's dtype checked to be floating.

    ``kind`` names the tree in errors (``'parameter'``, ``'update'``).
    """
    layouts = layout_lib.resolve(layout, tree, what=what)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    lays = treedef.flatten_up_to(layouts)
    paths = [path_str(p) for p, _ in paths_leaves]
    leaves = [x for _, x in paths_leaves]
    for p, x in zip(paths, leaves, strict=True):
        check_floating(x, p, f"{what}: {kind}")
    return paths, leaves, lays, layouts, treedef


def cast_like(tree: Any, reference: Any) -> Any:
    """``tree`` with every leaf cast to the dtype of the matching leaf of ``reference``."""
    return jax.tree.map(lambda u, g: u.astype(jnp.result_type(g)), tree, reference)


# ---------------------------------------------------------------------------- momentum
def init_momentum(params: Any, layout: layout_lib.LayoutSpec, mu_dtype: Any, what: str) -> Any:
    """Zero momentum (dtype ``mu_dtype`` or the leaf's) for matrix leaves, ``MaskedNode`` for
    the others, which keep no state."""
    _, leaves, lays, _, treedef = flat_layouts(params, layout, what, "parameter")
    mu = [
        optax.MaskedNode()
        if lay is None
        else jnp.zeros(jnp.shape(x), mu_dtype or jnp.result_type(x))
        for x, lay in zip(leaves, lays, strict=True)
    ]
    return treedef.unflatten(mu)


def momentum_step(
    inputs: list[Any],
    mus: list[Any],
    beta: Any,
    count_inc: jax.Array,
    *,
    nesterov: bool,
    bias_correction: bool = False,
) -> tuple[list[Any], list[Any]]:
    """EMA momentum and the direction input, per leaf (``MaskedNode`` momenta pass ``x``).

    ``B ← βB + (1−β)x`` (``optax.tree.update_moment``); direction input ``(1−β)x + βB``
    (Nesterov) or ``B``. With ``bias_correction`` both terms are debiased as
    ``optax.contrib.scale_by_muon`` does: ``β B/(1−β^{t+1}) + (1−β) x/(1−β^t)`` (Nesterov) or
    ``B/(1−β^t)``, ``t = count_inc``. Returns ``(new_mus, direction_inputs)``; new momenta
    keep their buffer's dtype.
    """
    new_mus, dirs = [], []
    for x, m in zip(inputs, mus, strict=True):
        if is_masked(m):
            new_mus.append(m)
            dirs.append(x)
            continue
        b = optax.tree.update_moment(x, m, beta, 1)
        if bias_correction:
            bc_t = 1 - beta**count_inc
            if nesterov:
                bc_next = 1 - beta ** optax.safe_increment(count_inc)
                d = beta * (b / bc_next.astype(b.dtype)) + (1 - beta) * (
                    x / bc_t.astype(jnp.result_type(x))
                )
            else:
                d = b / bc_t.astype(b.dtype)
        else:
            d = optax.tree.update_moment(x, b, beta, 1) if nesterov else b
        new_mus.append(b.astype(m.dtype))
        dirs.append(d)
    return new_mus, dirs


# -------------------------------------------------------------------------- matrix map
def map_matrices(
    fn: Callable[[jax.Array], jax.Array],
    tree: Any,
    layouts: Any,
    *,
    otherwise: Callable[[jax.Array, str], jax.Array] | None = None,
    group: bool = True,
    what: str = "matrix method",
    owner_computes: OwnerComputes | None = None,
) -> Any:
    """Applies a batched matrix function to the matrix view of every leaf that has a layout.

    Args:
      fn: maps a ``(batch, m, n)`` stack to an array of the same shape, treating each matrix
        independently (an orthogonalizer, a normalizer...).
      tree: arrays to transform.
      layouts: tree of ``MatrixLayout | None`` as returned by :func:`resolve`.
      otherwise: ``(leaf, path) -> leaf`` for leaves without a layout; by default such a leaf
        raises ``ValueError`` naming its path.
      group: concatenate the stacks of all leaves whose matrices have the same ``(m, n)`` and
        call ``fn`` once per shape (fewer, larger kernels; identical results because ``fn``
        treats matrices independently).
      what: the caller's name, for error messages.
      owner_computes: distribute each call of ``fn`` over devices owner-computes style (one
        :meth:`optzoo.distributed.OwnerComputes.apply` per group; see
        :mod:`optzoo.distributed`); ``None`` computes it where XLA places it.

    Returns:
      A tree like ``tree``; every leaf keeps its shape and dtype.
    """
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    lays = treedef.flatten_up_to(layouts)
    out: list[Any] = [None] * len(paths_leaves)
    mats: list[jax.Array] = []
    owners: list[int] = []
    for i, ((path, x), lay) in enumerate(zip(paths_leaves, lays, strict=True)):
        if lay is None:
            if otherwise is None:
                raise ValueError(
                    f"{what}: parameter '{path_str(path)}' of shape "
                    f"{jnp.shape(x)} has no matrix layout"
                )
            out[i] = otherwise(x, path_str(path))
            continue
        mats.append(lay.to_matrix(x))
        owners.append(i)
    results = map_stacks(fn, mats, group=group, owner_computes=owner_computes, what=what)
    for i, res in zip(owners, results, strict=True):
        x = paths_leaves[i][1]
        out[i] = lays[i].from_matrix(res, jnp.shape(x)).astype(jnp.result_type(x))
    return treedef.unflatten(out)


def map_stacks(
    fn: Callable[[jax.Array], jax.Array],
    stacks: Sequence[jax.Array],
    *,
    group: bool = True,
    owner_computes: OwnerComputes | None = None,
    what: str = "matrix method",
) -> list[jax.Array]:
    """Applies ``fn`` to a list of ``(b_i, m_i, n_i)`` stacks, batching same-shape ones.

    Args:
      fn: batched matrix function ``(b, m, n) -> (b, m, n)``, matrices independent.
      stacks: the stacks (e.g. the matrix views of several leaves).
      group: concatenate stacks with the same ``(m, n, dtype)`` and call ``fn`` once per
        group (default), or once per stack.
      owner_computes: an :class:`optzoo.distributed.OwnerComputes` distributing every call
        (one per group), or ``None``.
      what: the caller's name, for error messages.

    Returns:
      ``[fn(s) for s in stacks]`` (same shapes).

    Raises:
      TypeError: ``owner_computes`` is neither ``None`` nor an ``OwnerComputes``.
    """
    distributed.check_owner_computes(owner_computes, what)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for j, mat in enumerate(stacks):
        key = (mat.shape[1], mat.shape[2], mat.dtype) if group else (j,)
        groups.setdefault(key, []).append(j)
    out: list[Any] = [None] * len(stacks)
    for members in groups.values():
        parts = [stacks[j] for j in members]
        stack = jnp.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        res = distributed.maybe_apply(owner_computes, fn, stack)
        start = 0
        for j in members:
            size = stacks[j].shape[0]
            out[j] = res[start : start + size]
            start += size
    return out


def _prescale(y: jax.Array, preconditioning: str, eps: Any) -> jax.Array:
    """``optax.contrib.muon``'s scaling of a wide ``(b, m, n)`` stack (``m ≤ n``) before NS.

    Every matrix is first divided by its peak entry, so squares stay in range and ``eps`` is
    relative to the peak (as everywhere in :mod:`optzoo.linalg`): the scaling is then exactly
    scale-free, where optax's absolute ``eps`` turns inputs below ~1e-4 into 0. For ordinary
    inputs the two differ by ``O(eps)`` relative. A zero matrix maps to zero.
    """
    acc = jnp.promote_types(y.dtype, jnp.float32)
    z = y.astype(acc)
    peak = jnp.max(jnp.abs(z), axis=(-2, -1), keepdims=True)
    z = z / jnp.where(peak > 0, peak, 1)
    if preconditioning == "spectral":
        out = z / (jnp.linalg.norm(z, ord=2, axis=(-2, -1), keepdims=True) + eps)
    elif preconditioning == "schatten":
        gram = z @ jnp.swapaxes(z, -1, -2)
        s4_sq = jnp.sqrt(jnp.sum(gram * gram, axis=(-2, -1), keepdims=True))
        out = z * jax.lax.rsqrt(jnp.maximum(s4_sq, eps))
    else:  # 'aol': D = row sums of |XXᵀ|; X <- D^{-1/2} X has spectral norm <= 1 (Gershgorin)
        gram = z @ jnp.swapaxes(z, -1, -2)
        d = jnp.sum(jnp.abs(gram), axis=-1, keepdims=True)
        out = z * jax.lax.rsqrt(jnp.maximum(d, eps))
    return out.astype(y.dtype)


def _prescaled_newton_schulz(
    x: jax.Array, preconditioning: str, steps: int | None, coeffs: Any, dtype: Any, eps: Any
) -> jax.Array:
    """Newton–Schulz on ``x`` scaled by ``preconditioning`` instead of ``‖x‖_F``.

    The iteration is :func:`optzoo.linalg.newton_schulz`'s on the already-scaled input
    (``norm_scale`` cannot express a non-Frobenius scaling): wide orientation, products
    accumulated in float32, one rounding to the compute dtype per step.
    """
    table = np.asarray(linalg.JORDAN_QUINTIC if coeffs is None else coeffs, np.float64)
    if table.ndim == 1:
        table = np.tile(table, (5 if steps is None else steps, 1))
    dt = jnp.dtype(dtype) if dtype is not None else x.dtype
    transposed = x.shape[-2] > x.shape[-1]
    y = jnp.swapaxes(x, -1, -2) if transposed else x
    y = _prescale(y, preconditioning, eps).astype(dt)
    acc = jnp.promote_types(dt, jnp.float32)
    for a, b, c in table.tolist():
        gram = jnp.matmul(y, jnp.swapaxes(y, -1, -2), preferred_element_type=acc)
        gc = gram.astype(dt)
        poly = (b * gram + c * jnp.matmul(gc, gc, preferred_element_type=acc)).astype(dt)
        y = (a * y.astype(acc) + jnp.matmul(poly, y, preferred_element_type=acc)).astype(dt)
    if transposed:
        y = jnp.swapaxes(y, -1, -2)
    return jnp.where(jnp.isfinite(x).all(axis=(-2, -1), keepdims=True), y, jnp.nan).astype(x.dtype)


def orthogonalizer(
    method: str,
    steps: int | None = None,
    coeffs: Any = None,
    dtype: Any = None,
    eps: Any = 1e-7,
    preconditioning: str = "frobenius",
) -> Callable[[jax.Array], jax.Array]:
    """Batched ``(b, m, n) -> (b, m, n)`` polar-factor map: :func:`optzoo.linalg.orthogonalize`
    with these options, or, with a non-Frobenius ``preconditioning``, Newton–Schulz on the
    input scaled as ``optax.contrib.muon`` scales it."""
    if coeffs is not None:
        coeffs = np.asarray(coeffs, np.float64)  # concrete: it fixes the unrolled iteration
    if preconditioning != "frobenius":
        return lambda x: _prescaled_newton_schulz(x, preconditioning, steps, coeffs, dtype, eps)

    def orth(x: jax.Array) -> jax.Array:
        return linalg.orthogonalize(x, method, steps=steps, coeffs=coeffs, dtype=dtype, eps=eps)

    return orth


# ------------------------------------------------------------------------ shape factor
def shape_factor(shape_scale: str | None, m: int, n: int, rms_scale: Any = 0.2) -> Any:
    """The scale of an orthogonalized ``m×n`` (fan_in × fan_out) update, ``None`` for 1.

    ``'jordan'``: ``√max(1, n/m)`` (Keller Jordan's ``√max(1, rows/cols)`` of the PyTorch
    ``(out, in)`` weight); ``'rms'``: ``rms_scale·√max(m, n)`` (Moonshot: update RMS ≈
    ``rms_scale``, AdamW's); ``None``: no factor. ``rms_scale`` may be an injected array.
    """
    if shape_scale == "jordan":
        s = math.sqrt(max(1.0, n / m))
        return None if s == 1.0 else s
    if shape_scale == "rms":
        return rms_scale * math.sqrt(max(m, n))
    return None


def apply_shape_factor(shape_scale: str | None, x: jax.Array, rms_scale: Any = 0.2) -> jax.Array:
    """``shape_factor · x`` for a ``(b, m, n)`` stack, in ``x``'s dtype."""
    s = shape_factor(shape_scale, x.shape[-2], x.shape[-1], rms_scale)
    return x if s is None else (s * x).astype(x.dtype)


def scale_by_shape(
    shape_scale: str | None = "jordan",
    *,
    rms_scale: Any = 0.2,
    layout: layout_lib.LayoutSpec = None,
    what: str = "scale_by_shape",
) -> optax.GradientTransformation:
    """Stateless block: every matrix leaf times its view's :func:`shape_factor`; other leaves
    unchanged. For methods whose direction is already unit-scaled (an LMO, a polar factor)."""
    _checks.choice(shape_scale, "shape_scale", what, SHAPE_SCALES)
    _checks.positive(rms_scale, "rms_scale", what)

    def update_fn(updates, state, params=None):
        del params
        layouts = layout_lib.resolve(layout, updates, what=what)
        out = map_matrices(
            lambda x: apply_shape_factor(shape_scale, x, rms_scale),
            updates,
            layouts,
            otherwise=lambda x, path: x,
            what=what,
        )
        return out, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


# ----------------------------------------------------------------------- fallback split
_DEFAULT_FALLBACK = fallback_lib.AdamW()


def keep_update_dtypes(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``tx`` with its updates cast back to the incoming updates' dtypes (optax's adam returns
    float32 updates for bfloat16 gradients when ``mu_dtype`` is float32)."""
    tx = optax.with_extra_args_support(tx)

    def update_fn(updates, state, params=None, **extra_args):
        new, state = tx.update(updates, state, params, **extra_args)
        return cast_like(new, updates), state

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def check_update_shapes(
    tx: optax.GradientTransformation, what: str
) -> optax.GradientTransformationExtraArgs:
    """``tx`` whose ``update`` first checks the updates against ``params`` (when given): the
    same tree structure and, leaf by leaf, the same shape — else a ``ValueError`` naming the
    path and both shapes, instead of a broadcasting error from deep inside the method.
    Shapes are static, so the check costs nothing under ``jit``; states are unchanged."""
    tx = optax.with_extra_args_support(tx)

    def update_fn(updates, state, params=None, **extra_args):
        if params is not None:
            u_paths, u_def = jax.tree_util.tree_flatten_with_path(updates)
            p_leaves, p_def = jax.tree.flatten(params)
            if u_def != p_def:
                raise ValueError(
                    f"{what}: the updates' tree structure does not match the "
                    f"parameters': {u_def} vs {p_def}"
                )
            for (path, u), p in zip(u_paths, p_leaves, strict=True):
                if jnp.shape(u) != jnp.shape(p):
                    raise ValueError(
                        f"{what}: the update of '{path_str(path)}' has shape "
                        f"{jnp.shape(u)} but the parameter has shape "
                        f"{jnp.shape(p)}"
                    )
        return tx.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def split_by_layout(
    matrix_tx: optax.GradientTransformation,
    fallback: optax.GradientTransformation,
    layout: layout_lib.LayoutSpec,
    what: str,
    *,
    matrix_label: str = "matrix",
    layouts_fn: Callable[[Any], list[Any]] | None = None,
) -> optax.GradientTransformation:
    """``optax.partition``: leaves with a matrix layout -> ``matrix_tx``, others -> fallback
    (its updates cast to the gradients' dtypes); update shapes checked against the params.

    Labels come from ``layout`` resolved on the parameters the partition sees (it may be a
    callable of them), or from ``layouts_fn(params)`` returning a flat list of layouts when
    the caller resolves layouts its own way.
    """

    def labels(params):
        treedef = jax.tree.structure(params)
        if layouts_fn is not None:
            lays = layouts_fn(params)
        else:
            lays = treedef.flatten_up_to(layout_lib.resolve(layout, params, what=what))
        return treedef.unflatten([matrix_label if lay is not None else "fallback" for lay in lays])

    return check_update_shapes(
        optax.partition(
            {matrix_label: matrix_tx, "fallback": keep_update_dtypes(fallback)}, labels
        ),
        what,
    )


def with_fallback(
    name: str,
    matrix_tx: optax.GradientTransformation,
    *,
    learning_rate: optax.ScalarOrSchedule,
    layout: layout_lib.LayoutSpec,
    fallback: fallback_lib.FallbackSpec,
    mu_dtype: Any = None,
    weight_decay: Any = 0.0,
    weight_decay_mask: Any = None,
    default_fallback: fallback_lib.AdamW = _DEFAULT_FALLBACK,
    matrix_chain: Sequence[optax.GradientTransformation] | None = None,
    layouts_fn: Callable[[Any], list[Any]] | None = None,
    matrix_label: str | None = None,
) -> optax.GradientTransformation:
    """The alias of a matrix method: ``partition(matrix leaves -> chain(matrix_tx,
    add_decayed_weights(weight_decay, weight_decay_mask), scale_by_learning_rate), others ->
    fallback)``, labelled ``matrix_label`` (default ``name``) / ``'fallback'``.

    ``fallback`` is an ``optax.GradientTransformation``, an :class:`optzoo.fallback.AdamW` or
    ``None`` (``default_fallback``), see :mod:`optzoo.fallback`. ``matrix_chain`` replaces the
    decay-and-rate tail when a method needs its own. Labels come from the layouts resolved on
    the parameters the partition sees (``layouts_fn(params)`` when given), and every leaf
    must have a floating dtype.
    """
    _checks.learning_rate(learning_rate, "learning_rate", name)
    _checks.nonnegative(weight_decay, "weight_decay", name)
    fb = fallback_lib.resolve(
        fallback,
        default=default_fallback,
        method_learning_rate=learning_rate,
        mu_dtype=mu_dtype,
        what=name,
    )
    if layouts_fn is None:

        def layouts_fn(tree):
            return flat_layouts(tree, layout, name, "parameter")[2]

    tail = (
        matrix_chain
        if matrix_chain is not None
        else (
            optax.add_decayed_weights(weight_decay, weight_decay_mask),
            optax.scale_by_learning_rate(learning_rate),
        )
    )
    return split_by_layout(
        optax.chain(matrix_tx, *tail),
        fb,
        layout,
        name,
        matrix_label=matrix_label or name,
        layouts_fn=layouts_fn,
    )
