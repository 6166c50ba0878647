"""Private: the batch-space solve of :mod:`optzoo.egn` and the checks of its inputs.

Notation as in :mod:`optzoo.egn`: a minibatch of ``b`` samples with ``c`` outputs each, the
stacked output Jacobian ``J ∈ R^{bc×d}``, output gradients ``r ∈ R^{bc}`` and the block
diagonal output Hessian ``Q``. :func:`direction` returns the damped Gauss–Newton direction

.. math::
  u = J^\\top z, \\qquad (Q J J^\\top + b\\lambda I)\\, z = r

(LU on this system, Cholesky or matrix-free CG on its symmetric form ``(SKS + bλI) v = s``,
``S = Q^{1/2}``, ``s = S⁺r``, ``K = JJᵀ``), together with the pieces the gain ratio of the
adaptive damping needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optzoo._tree import check_floating, map_with_path

LossLike = str | Callable[[jax.Array, jax.Array], jax.Array]


# ------------------------------------------------------------------------ inputs
def static_int(value: Any, name: str, what: str) -> int:
    """A Python int from ``value`` (concrete arrays too); a clear error if it is traced."""
    try:
        return int(value)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        raise TypeError(
            f"{what}: {name} must be a concrete integer, got {value!r}; under "
            f"optax.inject_hyperparams list '{name}' in static_args"
        ) from e


def compute_dtype(tree: Any) -> Any:
    leaves = jax.tree.leaves(tree)
    return jnp.result_type(*[jnp.result_type(x) for x in leaves], jnp.float32)


def split_batch(batch: Any, what: str) -> tuple[Any, jax.Array]:
    if batch is None:
        raise ValueError(
            f"{what}: update() needs the keyword argument batch=(inputs, targets), e.g. "
            "tx.update(grads, state, params, batch=(x, y)); EGN solves on the batch's "
            "Jacobian. Inside optax.chain pass it to the chain's update (it is forwarded)."
        )
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(
            f"{what}: batch must be a pair (inputs, targets), got "
            f"{type(batch).__name__}"
            f"{' of length ' + str(len(batch)) if hasattr(batch, '__len__') else ''}"
        )
    return batch[0], batch[1]


def output_shape(apply_fn: Callable, params: Any, x: Any, what: str) -> tuple[int, int]:
    shape = jax.eval_shape(apply_fn, params, x)
    if not hasattr(shape, "shape") or len(shape.shape) != 2:
        got = getattr(shape, "shape", type(shape).__name__)
        raise ValueError(
            f"{what}: apply_fn(params, inputs) must return one array of shape [b, c] "
            f"(batch, outputs), got {got}; reshape scalar outputs to [b, 1] and flatten "
            "sequence outputs to [b*s, c] with matching targets"
        )
    if not jnp.issubdtype(shape.dtype, jnp.floating):
        raise TypeError(f"{what}: apply_fn must return floating outputs, got {shape.dtype}")
    return int(shape.shape[0]), int(shape.shape[1])


def check_targets(loss: LossLike, y: Any, b: int, c: int, what: str) -> None:
    y_shape = tuple(jnp.shape(y))
    if not y_shape or y_shape[0] != b:
        raise ValueError(
            f"{what}: targets of shape {y_shape} do not match the {b} outputs "
            f"of apply_fn (shape [{b}, {c}])"
        )
    if isinstance(loss, str) and loss == "mse" and y_shape != (b, c):
        raise ValueError(
            f"{what}: loss='mse' needs targets of shape [b, c] = {(b, c)}, got {y_shape}"
        )
    if isinstance(loss, str) and loss == "cross_entropy":
        integer = jnp.issubdtype(jnp.result_type(y), jnp.integer)
        if not ((integer and y_shape == (b,)) or (not integer and y_shape == (b, c))):
            raise ValueError(
                f"{what}: loss='cross_entropy' needs integer labels of shape [b] = ({b},) or "
                f"floating class probabilities of shape [b, c] = {(b, c)}, got "
                f"{jnp.result_type(y)} {y_shape}"
            )


def _raise_bad_labels(bad: Any, lo: Any, hi: Any, c: int, what: str) -> None:
    if bool(bad):
        raise ValueError(
            f"{what}: loss='cross_entropy' integer labels must lie in [0, {c}) (the {c} "
            f"outputs of apply_fn); got labels in [{int(lo)}, {int(hi)}]. One-hot encoding "
            "would silently drop such samples from the loss and the direction."
        )


def check_labels(loss: LossLike, y: Any, c: int, what: str) -> None:
    """Integer cross-entropy labels inside ``[0, c)``.

    Concrete labels (eager calls): a ``ValueError`` at once. Traced labels (inside ``jit``,
    ``scan``, ``MultiSteps``): the same message is raised from a host callback that runs only
    when a label is out of range, so the jitted call fails (``JaxRuntimeError`` carrying the
    message) instead of returning a result; valid batches cost one reduction and a branch.
    (optax's ``softmax_cross_entropy_with_integer_labels`` returns a NaN loss for such a
    label and a finite gradient; EGN's step would silently drop the sample, so we refuse.)
    """
    if not (isinstance(loss, str) and loss == "cross_entropy"):
        return
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        return
    if isinstance(y, jax.core.Tracer):
        lo, hi = jnp.min(y), jnp.max(y)
        bad = (lo < 0) | (hi >= c)
        jax.lax.cond(
            bad, lambda: jax.debug.callback(_raise_bad_labels, bad, lo, hi, c, what), lambda: None
        )
        return
    yn = np.asarray(y)
    if yn.size and (yn.min() < 0 or yn.max() >= c):
        _raise_bad_labels(True, yn.min(), yn.max(), c, what)


# ------------------------------------------------------------------------ loss pieces
def per_sample(loss: LossLike, out: jax.Array, y: jax.Array):
    """``(values [b], r [b, c], q [b, c, c] or None for Q = I)`` of the output loss."""
    if isinstance(loss, str) and loss == "mse":
        diff = out - y.astype(out.dtype)
        return 0.5 * jnp.sum(diff * diff, axis=-1), diff, None
    if isinstance(loss, str) and loss == "cross_entropy":
        c = out.shape[-1]
        if jnp.issubdtype(y.dtype, jnp.integer):
            target = jax.nn.one_hot(y, c, dtype=out.dtype)
        else:
            target = y.astype(out.dtype)
        logp = jax.nn.log_softmax(out, axis=-1)
        mass = jnp.sum(target, axis=-1, keepdims=True)  # 1 for probability targets
        p = jnp.exp(logp)
        r = mass * p - target
        q = mass[..., None] * (jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :])
        return -jnp.sum(target * logp, axis=-1), r, q
    values = jax.vmap(loss)(out, y)
    r = jax.vmap(jax.grad(loss))(out, y)
    q = jax.vmap(jax.hessian(loss))(out, y)
    return values, r.astype(out.dtype), q.astype(out.dtype)


def cast(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda p: jnp.asarray(p).astype(dtype), tree)


# ------------------------------------------------------------------------ solves
def _sym_factor(q: jax.Array, r: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-sample ``S_i = Q_i^{1/2}`` and ``s_i = Q_i^{+1/2} r_i`` (pseudo-inverse root)."""
    w, v = jnp.linalg.eigh(q)
    w = jnp.maximum(w, 0.0)
    c = q.shape[-1]
    keep = w > (10.0 * c * jnp.finfo(q.dtype).eps) * w[..., -1:]
    root = jnp.where(keep, jnp.sqrt(jnp.where(keep, w, 1.0)), 0.0)
    inv_root = jnp.where(keep, 1.0 / root.clip(min=jnp.finfo(q.dtype).tiny), 0.0)
    s_mat = jnp.einsum("ikl,il,iml->ikm", v, root, v)
    s_vec = jnp.einsum("ikl,il->ik", v, inv_root * jnp.einsum("ilk,il->ik", v, r))
    return s_mat, s_vec


def block_mv(s_mat: jax.Array | None, v: jax.Array) -> jax.Array:
    return v if s_mat is None else jnp.einsum("ikl,il->ik", s_mat, v)


def _regularizer(a: jax.Array, b: int, lam: jax.Array) -> jax.Array:
    """The diagonal shift ``bλ``, floored at ``n·eps·max|a|`` (``n = bc``, eps of the solve
    dtype) and at the dtype's ``tiny``.

    A Gram matrix of duplicated (or linearly dependent) samples is exactly singular; rounding
    in forming it is ~``n·eps·‖a‖``, so a shift below that factors a numerically indefinite
    or singular matrix (damping 1e-12 on two identical float32 samples: LU returned NaN).
    The floor only acts when ``bλ`` is below it — never at the defaults on data of ordinary
    scale — and damping ``≤ 0`` is refused at construction; traced values (under
    ``optax.inject_hyperparams``) are floored, not checked.
    """
    n = a.shape[0]
    finfo = jnp.finfo(a.dtype)
    floor = jnp.maximum(n * finfo.eps * jnp.max(jnp.abs(a)), finfo.tiny)
    return jnp.maximum((b * lam).astype(a.dtype), floor)


def _explicit_z(jac: list[jax.Array], r, q, lam, solver: str):
    """``z`` of ``(QK + bλI) z = r`` (LU) or via the symmetric form (Cholesky), ``[b, c]``."""
    b, c = r.shape
    n = b * c
    mats = [j.reshape(n, -1) for j in jac]
    kmat = sum(m @ m.T for m in mats)
    eye = jnp.eye(n, dtype=r.dtype)
    if solver == "lu":
        a = (
            kmat
            if q is None
            else jnp.einsum("ikl,iln->ikn", q, kmat.reshape(b, c, n)).reshape(n, n)
        )
        return jnp.linalg.solve(a + _regularizer(a, b, lam) * eye, r.reshape(n)).reshape(b, c)
    s_mat, s_vec = (None, r) if q is None else _sym_factor(q, r)
    m = (
        kmat
        if s_mat is None
        else jnp.einsum("ikl,iljm,jmn->ikjn", s_mat, kmat.reshape(b, c, b, c), s_mat).reshape(n, n)
    )
    factor = jax.scipy.linalg.cho_factor(m + _regularizer(m, b, lam) * eye, lower=True)
    u = jax.scipy.linalg.cho_solve(factor, s_vec.reshape(n)).reshape(b, c)
    return block_mv(s_mat, u)


def _cg_z(jvp_fn, vjp_fn, r, q, lam, tol, maxiter):
    """``z`` by CG on ``(SKS + bλI) u = s``, ``K v = J(Jᵀv)`` matrix-free."""
    b = r.shape[0]
    s_mat, s_vec = (None, r) if q is None else _sym_factor(q, r)

    def gram(v):
        return block_mv(s_mat, jvp_fn(vjp_fn(block_mv(s_mat, v))))

    # Scale of SKS for the damping floor (see _regularizer): its Rayleigh quotient on the
    # right-hand side, one extra matvec. Without it damping 1e-30 on duplicated float32
    # samples returned NaN (1e-12: a 1e5 direction instead of ~1).
    norm2 = jnp.sum(s_vec * s_vec)
    unit = s_vec / jnp.sqrt(jnp.where(norm2 > 0, norm2, 1.0))
    rayleigh = jnp.abs(jnp.sum(unit * gram(unit)))
    finfo = jnp.finfo(s_vec.dtype)
    shift = jnp.maximum(
        (b * lam).astype(s_vec.dtype), jnp.maximum(s_vec.size * finfo.eps * rayleigh, finfo.tiny)
    )

    def matvec(v):
        return gram(v) + shift.astype(v.dtype) * v

    u, _ = jax.scipy.sparse.linalg.cg(matvec, s_vec, tol=tol, maxiter=maxiter)
    return block_mv(s_mat, u)


# ------------------------------------------------------------------------ direction
class Inputs(NamedTuple):
    """One update's checked inputs: parameters in the compute dtype and the batch."""

    params: Any
    x: Any
    y: jax.Array
    dtype: Any
    b: int
    c: int


def checked_inputs(
    apply_fn: Callable, loss: LossLike, params: Any, batch: Any, what: str
) -> Inputs:
    """``params`` (floating, cast to the compute dtype) and ``batch`` (a pair whose targets
    fit the ``[b, c]`` outputs of ``apply_fn`` and ``loss``), or an error naming what is
    wrong."""
    if params is None:
        raise ValueError(f"{what}: update() needs params (the model's Jacobian is taken at them)")
    x, y = split_batch(batch, what)
    y = jnp.asarray(y)
    map_with_path(lambda p, v: check_floating(v, p, f"{what}: parameter"), params)
    cd = compute_dtype(params)
    pc = cast(params, cd)
    b, c = output_shape(apply_fn, pc, x, what)
    check_targets(loss, y, b, c, what)
    check_labels(loss, y, c, what)
    return Inputs(pc, x, y, cd, b, c)


class Direction(NamedTuple):
    """The solve's result: ``u = Jᵀz`` (a tree like the parameters), the per-sample losses
    ``values [b]``, ``r [b, c]``, ``q [b, c, c]`` (``None`` for ``Q = I``) and
    ``j_times: v -> Jv [b, c]``."""

    u: Any
    values: jax.Array
    r: jax.Array
    q: jax.Array | None
    j_times: Callable[[Any], jax.Array]


def direction(
    apply_fn: Callable,
    loss: LossLike,
    solver: str,
    inputs: Inputs,
    lam: jax.Array,
    *,
    cg_tol: Any,
    cg_maxiter: Any,
    max_jacobian_size: Any,
    what: str,
) -> Direction:
    """The damped Gauss–Newton direction of ``inputs`` at damping ``lam``."""
    if solver == "cg":
        return _cg_direction(apply_fn, loss, inputs, lam, cg_tol, cg_maxiter)
    return _explicit_direction(apply_fn, loss, solver, inputs, lam, max_jacobian_size, what)


def _cg_direction(apply_fn, loss, inputs: Inputs, lam, cg_tol, cg_maxiter) -> Direction:
    """Matrix-free: ``J`` applied by one JVP, ``Jᵀ`` by its transpose; no Jacobian stored."""
    pc, x, cd = inputs.params, inputs.x, inputs.dtype
    raw_out, jvp_fn = jax.linearize(lambda p: apply_fn(p, x), pc)
    transpose = jax.linear_transpose(jvp_fn, pc)

    def vjp_fn(w):
        return cast(transpose(w.astype(raw_out.dtype))[0], cd)

    def j_times(tree):
        return jvp_fn(cast(tree, cd)).astype(cd)

    values, r, q = per_sample(loss, raw_out.astype(cd), inputs.y)
    z = _cg_z(j_times, vjp_fn, r, q, lam, cg_tol, cg_maxiter)
    return Direction(vjp_fn(z), values, r, q, j_times)


def _explicit_direction(
    apply_fn, loss, solver, inputs: Inputs, lam, max_jacobian_size, what
) -> Direction:
    """``J`` built by ``jax.jacrev`` (``bc·d`` numbers, refused past ``max_jacobian_size``),
    then a dense LU or Cholesky solve."""
    pc, x, cd, b, c = inputs.params, inputs.x, inputs.dtype, inputs.b, inputs.c
    leaves, treedef = jax.tree.flatten(pc)
    d = sum(math.prod(jnp.shape(v)) for v in leaves)
    if b * c * d > static_int(max_jacobian_size, "max_jacobian_size", what):
        raise ValueError(
            f"{what}: the explicit Jacobian would hold b·c·d = {b}·{c}·{d} = "
            f"{b * c * d:,} numbers (> max_jacobian_size={max_jacobian_size:,}); use "
            "solver='cg' (matrix-free JVP/VJP with conjugate gradients, no Jacobian "
            "stored), a smaller batch, or raise max_jacobian_size"
        )

    def flat_out(p):
        o = apply_fn(p, x)
        return o.reshape(-1), o

    jac_tree, out = jax.jacrev(flat_out, has_aux=True)(pc)
    out = out.astype(cd)
    jac = [j.astype(cd) for j in treedef.flatten_up_to(jac_tree)]
    values, r, q = per_sample(loss, out, inputs.y)
    z = _explicit_z(jac, r, q, lam, solver).reshape(-1)
    u = treedef.unflatten([jnp.tensordot(z, j, axes=1) for j in jac])

    def j_times(tree):
        flat = treedef.flatten_up_to(tree)
        return sum(
            j.reshape(b * c, -1) @ t.reshape(-1) for j, t in zip(jac, flat, strict=True)
        ).reshape(b, c)

    return Direction(u, values, r, q, j_times)
