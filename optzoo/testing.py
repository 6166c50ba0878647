"""Public test kit: checks any optax transform against the optax contract.

Users can run the same checks on their own transforms::

    from optzoo import testing
    testing.check_optax_compatibility(optzoo.lion, dict(learning_rate=1e-3), params)

Every check raises ``AssertionError`` with a message saying what broke; nothing here is
specific to optzoo's optimizers.

The equivariance kit: an :class:`Action` is a group element acting on arrays (on the last two
axes, or on all coordinates); :func:`check_equivariance` runs an optimizer for ``T`` steps on
``(W₀, G_t)`` and on ``(g·W₀, g·G_t)`` and checks ``W'_t = g·W_t`` at every step, and
:func:`equivariance_error` returns the worst relative error without asserting — use it for
the negative control that shows a test has power::

    act = testing.bi_orthogonal((16, 32), seed=0)
    testing.check_equivariance(optzoo.muon(0.02), params, grads_seq, act)
    assert testing.equivariance_error(optax.adam(1e-3), params, grads_seq, act) > 0.1

Reference oracles (float64 numpy): :func:`polar_reference`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "Action",
    "orthogonal_matrix",
    "bi_orthogonal",
    "left_orthogonal",
    "right_orthogonal",
    "permutation",
    "signed_permutation",
    "positive_diagonal_scaling",
    "shift",
    "identity",
    "per_leaf",
    "check_equivariance",
    "equivariance_error",
    "polar_reference",
    "check_optax_compatibility",
    "check_jit_no_recompile",
    "check_inject_hyperparams",
    "check_multisteps",
    "check_dtype_preserved",
    "check_cond_state_stable",
    "check_schedule_accepted",
    "random_like",
]


# ------------------------------------------------------------------------ group actions
class Action:
    """A group element acting on arrays: ``action(x, t)`` returns ``g·x``.

    ``t`` is the step index; only actions whose element changes per step (:func:`shift`)
    use it. ``name`` is for messages.
    """

    def __init__(self, fn: Callable[[jax.Array, int], jax.Array], name: str):
        self._fn = fn
        self.name = name

    def __call__(self, x: Any, t: int = 0) -> jax.Array:
        return self._fn(jnp.asarray(x), t)

    def __repr__(self) -> str:
        return f"Action({self.name})"


def identity() -> Action:
    return Action(lambda x, t: x, "identity")


def orthogonal_matrix(n: int, seed: int, batch: tuple[int, ...] = ()) -> np.ndarray:
    """Haar-random orthogonal ``(*batch, n, n)`` matrices (float64, QR with sign fix)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((*batch, n, n)))
    return q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]


def _matmul_in(x: jax.Array, a: np.ndarray, left: bool) -> jax.Array:
    a = jnp.asarray(a, x.dtype)
    return a @ x if left else x @ jnp.swapaxes(a, -1, -2)


def bi_orthogonal(shape: Sequence[int], seed: int = 0) -> Action:
    """``X ↦ U X Vᵀ`` on the last two axes, an independent (U, V) per batch slice."""
    *batch, m, n = shape
    u = orthogonal_matrix(m, seed, tuple(batch))
    v = orthogonal_matrix(n, seed + 1, tuple(batch))
    return Action(lambda x, t: _matmul_in(_matmul_in(x, u, True), v, False), "U·Vᵀ")


def left_orthogonal(shape: Sequence[int], seed: int = 0) -> Action:
    """``X ↦ U X`` (rotation of the rows' space: acts on the column index of units)."""
    *batch, m, _ = shape
    u = orthogonal_matrix(m, seed, tuple(batch))
    return Action(lambda x, t: _matmul_in(x, u, True), "U·")


def right_orthogonal(shape: Sequence[int], seed: int = 0) -> Action:
    """``X ↦ X Vᵀ``."""
    *batch, _, n = shape
    v = orthogonal_matrix(n, seed, tuple(batch))
    return Action(lambda x, t: _matmul_in(x, v, False), "·Vᵀ")


def permutation(shape: Sequence[int], axis: int, seed: int = 0) -> Action:
    """Permutes the entries along ``axis`` (units: rows, vocabulary entries, experts...)."""
    perm = np.random.default_rng(seed).permutation(shape[axis])
    return Action(lambda x, t: jnp.take(x, perm, axis=axis), f"perm(axis={axis})")


def signed_permutation(shape: Sequence[int], seed: int = 0) -> Action:
    """Permutes all coordinates of the array and flips random signs (the symmetry group of
    coordinatewise optimizers such as Adam and Lion)."""
    size = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(size)
    signs = rng.choice([-1.0, 1.0], size=size)

    def fn(x, t):
        flat = x.reshape(-1)[perm] * jnp.asarray(signs, x.dtype)
        return flat.reshape(x.shape)

    return Action(fn, "signed permutation")


def positive_diagonal_scaling(
    shape: Sequence[int], axis: int, seed: int = 0, low: float = 0.5, high: float = 2.0
) -> Action:
    """Multiplies each slice along ``axis`` by a positive factor (``D X`` for axis −2)."""
    d = np.random.default_rng(seed).uniform(low, high, shape[axis])
    bshape = [1] * len(shape)
    bshape[axis] = shape[axis]
    d = d.reshape(bshape)
    return Action(lambda x, t: x * jnp.asarray(d, x.dtype), f"diag(axis={axis})")


def shift(shape: Sequence[int], unit_axis: int, seed: int = 0, scale: float = 1.0) -> Action:
    """``G ↦ G + 1cᵀ``: adds the same vector ``c_t`` to every unit (slice along
    ``unit_axis``), a fresh ``c_t`` at each step ``t`` (shared logit shift symmetry)."""
    cshape = list(shape)
    cshape[unit_axis] = 1

    def fn(x, t):
        c = np.random.default_rng((seed, t)).standard_normal(cshape) * scale
        return x + jnp.asarray(c, x.dtype)

    return Action(fn, f"shift(unit_axis={unit_axis})")


def per_leaf(actions: Any) -> Callable[[Any, int], Any]:
    """Applies a tree of :class:`Action` (``None`` = identity) leafwise to a matching tree."""

    def apply(tree, t=0):
        return jax.tree.map(
            lambda a, x: x if a is None else a(x, t),
            actions,
            tree,
            is_leaf=lambda a: a is None or isinstance(a, Action),
        )

    return apply


def _as_tree_action(action: Any) -> Callable[[Any, int], Any]:
    if action is None:
        return lambda tree, t=0: tree
    if isinstance(action, Action):
        return lambda tree, t=0: jax.tree.map(lambda x: action(x, t), tree)
    return action


# ------------------------------------------------------------------------ equivariance
def equivariance_error(
    tx: optax.GradientTransformation,
    params: Any,
    grads_seq: Sequence[Any],
    grad_action: Any,
    param_action: Any = "same",
    output_action: Any = "same",
) -> float:
    """Worst relative error ``‖W'_t − h·W_t‖/‖h·W_t‖`` over steps and leaves.

    Run A updates ``params`` with ``grads_seq``; run B updates ``p·params`` with
    ``g_t·grads_seq[t]``; the output action ``h`` maps A's parameters onto B's. By default
    ``p = h = g`` (equivariance); for an *invariance* (e.g. centered maps under a shift of
    the gradients) pass ``param_action=None, output_action=None``.

    Actions are an :class:`Action` (applied to every leaf), ``None`` (identity), or a
    callable ``(tree, t) -> tree`` such as :func:`per_leaf`.
    """
    g_act = _as_tree_action(grad_action)
    p_act = g_act if param_action == "same" else _as_tree_action(param_action)
    h_act = p_act if output_action == "same" else _as_tree_action(output_action)
    update = jax.jit(tx.update)
    pa, pb = params, p_act(params, 0)
    sa, sb = tx.init(pa), tx.init(pb)
    worst = 0.0
    for t, g in enumerate(grads_seq):
        ua, sa = update(g, sa, pa)
        ub, sb = update(g_act(g, t), sb, pb)
        pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
        want = h_act(pa, 0)
        for x, y in zip(jax.tree.leaves(pb), jax.tree.leaves(want), strict=True):
            x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
            denom = max(float(np.linalg.norm(y64)), 1e-30)
            worst = max(worst, float(np.linalg.norm(x64 - y64)) / denom)
    return worst


def check_equivariance(
    tx: optax.GradientTransformation,
    params: Any,
    grads_seq: Sequence[Any],
    grad_action: Any,
    param_action: Any = "same",
    output_action: Any = "same",
    rtol: float = 1e-5,
) -> float:
    """Asserts :func:`equivariance_error` ``<= rtol`` and returns it."""
    err = equivariance_error(tx, params, grads_seq, grad_action, param_action, output_action)
    if not err <= rtol:
        name = getattr(grad_action, "name", "action")
        raise AssertionError(f"not equivariant under {name}: relative error {err:.3g} > {rtol}")
    return err


def polar_reference(x: Any, rtol: float = 1e-10) -> np.ndarray:
    """float64 polar factor ``U_r V_rᵀ`` of ``(..., m, n)`` by numpy SVD (the oracle)."""
    u, s, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    keep = s > rtol * s[..., :1]
    return (u * keep[..., None, :]) @ vt


# ------------------------------------------------------------------- optax battery
# Every check takes ``extra_args``: optax extra keyword arguments passed to every ``update``
# (e.g. the batch of a method that reads one), the same at every step. A trajectory runs all
# its steps in one jitted ``lax.scan``: compiled once, whatever the transformation does inside
# (an eager ``lax.cond`` or loop would compile again at every call).
ExtraArgs = Mapping[str, Any] | None

#: The unknown keyword passed to probe optax's convention that a transformation ignores extra
#: arguments it does not read.
_PROBE = "unused_extra_arg"


def random_like(tree: Any, seed: int = 0, scale: float = 1.0) -> Any:
    """A tree of standard-normal arrays (times ``scale``) with the shapes/dtypes of ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), max(len(leaves), 1))
    out = [
        (scale * jax.random.normal(k, jnp.shape(x), jnp.float32)).astype(jnp.result_type(x))
        for k, x in zip(keys, leaves, strict=False)
    ]
    return treedef.unflatten(out)


def _grads_seq(params: Any, steps: int) -> list[Any]:
    return [random_like(params, seed=100 + t) for t in range(steps)]


class _Trajectory(NamedTuple):
    params: Any
    state: Any
    updates: Any  # of the last step
    finite: jax.Array  # whether the updates of every step were finite


def _run(
    tx: optax.GradientTransformation,
    params: Any,
    grads_seq: Sequence[Any],
    extra_args: ExtraArgs = None,
    probe: bool = False,
) -> _Trajectory:
    """``init``, then ``update`` + ``apply_updates`` per gradient tree, under one jitted
    ``lax.scan`` (``probe``: every update also gets the unknown keyword :data:`_PROBE`). The
    scan carries the state, so it requires the state to keep ``init``'s structure, shapes and
    dtypes."""
    tx = optax.with_extra_args_support(tx)
    unknown = {_PROBE: jnp.zeros(())} if probe else {}

    @jax.jit
    def trajectory(params, state, grads, extra):
        def body(carry, g):
            p, s = carry
            u, s = tx.update(g, s, p, **unknown, **extra)
            finite = jnp.array(True)
            for x in jax.tree.leaves(u):
                finite &= jnp.all(jnp.isfinite(x))
            return (optax.apply_updates(p, u), s), (u, finite)

        (params, state), (updates, finite) = jax.lax.scan(body, (params, state), grads)
        return params, state, jax.tree.map(lambda x: x[-1], updates), jnp.all(finite)

    grads = jax.tree.map(lambda *xs: jnp.stack(xs), *grads_seq)
    return _Trajectory(*trajectory(params, tx.init(params), grads, dict(extra_args or {})))


def check_jit_no_recompile(
    tx: optax.GradientTransformation,
    params: Any,
    steps: int = 3,
    extra_args: ExtraArgs = None,
    probe_extra_args: bool = True,
) -> None:
    """``update`` jits, tolerates extra keyword args, and does not retrace on later calls.

    ``probe_extra_args=False`` leaves out the unused keyword ``unused_extra_arg`` that every
    call otherwise passes (optax's convention: a transformation ignores extra arguments it does
    not read), for a transformation that refuses unknown keywords on purpose.
    """
    tx_extra = optax.with_extra_args_support(tx)
    unknown = {_PROBE: jnp.zeros(())} if probe_extra_args else {}
    traces = []

    @jax.jit
    def step(g, state, p, extra):
        traces.append(1)
        return tx_extra.update(g, state, p, **unknown, **extra)

    state = tx.init(params)
    for g in _grads_seq(params, steps):
        updates, state = step(g, state, params, dict(extra_args or {}))
        params = optax.apply_updates(params, updates)
    if len(traces) != 1:
        raise AssertionError(
            f"update was traced {len(traces)} times in {steps} calls; the state "
            "changes structure, shape or dtype between steps"
        )
    _assert_finite(updates, "jit updates")


def _check_signature(factory: Callable[..., Any]) -> None:
    sig = inspect.signature(factory)
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        raise AssertionError(
            f"{factory.__name__} takes **kwargs; inject_hyperparams needs an explicit signature"
        )


def _compare_injected(
    plain: _Trajectory,
    factory: Callable[..., Any],
    kwargs: Mapping[str, Any],
    params: Any,
    grads: Sequence[Any],
    static_args: Sequence[str],
    rtol: float,
    atol: float,
    extra_args: ExtraArgs,
) -> None:
    injected = optax.inject_hyperparams(factory, static_args=tuple(static_args))(**kwargs)
    run = _run(injected, params, grads, extra_args)
    _assert_close(plain.updates, run.updates, rtol, atol, "inject_hyperparams updates")
    _assert_close(plain.params, run.params, rtol, atol, "inject_hyperparams params")
    if "learning_rate" in kwargs and "learning_rate" not in run.state.hyperparams:
        raise AssertionError("learning_rate is not injectable")


def check_inject_hyperparams(
    factory: Callable[..., optax.GradientTransformation],
    kwargs: Mapping[str, Any],
    params: Any,
    static_args: Sequence[str] = (),
    steps: int = 3,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    extra_args: ExtraArgs = None,
) -> None:
    """``optax.inject_hyperparams(factory)`` gives the same updates as ``factory``.

    Needs an explicit keyword signature (no ``**kwargs``), as optax inspects it. Tolerance:
    the injected hyperparameters are float32 arrays instead of Python floats, which changes
    rounding by a few ulps per step.
    """
    _check_signature(factory)
    grads = _grads_seq(params, steps)
    plain = _run(factory(**kwargs), params, grads, extra_args)
    _compare_injected(plain, factory, kwargs, params, grads, static_args, rtol, atol, extra_args)


def check_multisteps(
    tx: optax.GradientTransformation, params: Any, every_k: int = 3, extra_args: ExtraArgs = None
) -> None:
    """Under ``optax.MultiSteps(every_k)`` the first ``every_k - 1`` updates are exactly zero."""
    ms = optax.MultiSteps(tx, every_k_schedule=every_k)
    update = jax.jit(lambda g, s, p, extra: ms.update(g, s, p, **extra))
    state = ms.init(params)
    for t, g in enumerate(_grads_seq(params, every_k)):
        updates, state = update(g, state, params, dict(extra_args or {}))
        zero = all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
        if t < every_k - 1 and not zero:
            raise AssertionError(f"MultiSteps: update {t} is not zero")
        if t == every_k - 1:
            _assert_finite(updates, "MultiSteps accumulated update")


def check_dtype_preserved(
    tx: optax.GradientTransformation,
    params: Any,
    dtypes: Sequence[Any] = (jnp.bfloat16,),
    extra_args: ExtraArgs = None,
) -> None:
    """Updates keep the dtype of the parameters (and are finite) for each dtype given."""
    for dtype in dtypes:
        p = jax.tree.map(lambda x, d=dtype: x.astype(d), params)
        run = _run(tx, p, _grads_seq(p, 2), extra_args)
        for u, x in zip(jax.tree.leaves(run.updates), jax.tree.leaves(p), strict=True):
            if u.dtype != x.dtype:
                raise AssertionError(f"update dtype {u.dtype} != parameter dtype {x.dtype}")
        if not bool(run.finite):
            raise AssertionError(f"{jnp.dtype(dtype).name} updates: non-finite values")


def _avals(tree: Any) -> Any:
    return jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)


def _check_state_avals(
    tx: optax.GradientTransformation, params: Any, extra_args: ExtraArgs
) -> None:
    """The state after ``update`` has ``init``'s structure, shapes and dtypes (what
    ``lax.cond`` requires of its two branches, the update and the identity), read with
    ``jax.eval_shape`` (nothing is compiled)."""
    state0 = tx.init(params)
    g = random_like(params, seed=7)
    before = jax.eval_shape(lambda s: s, state0)
    after = jax.eval_shape(lambda s: tx.update(g, s, params, **dict(extra_args or {}))[1], state0)
    if jax.tree.structure(before) != jax.tree.structure(after) or (_avals(before) != _avals(after)):
        raise AssertionError(
            f"state changes under update:\n init: {_avals(before)}\n after: {_avals(after)}"
        )


def check_cond_state_stable(
    tx: optax.GradientTransformation, params: Any, extra_args: ExtraArgs = None
) -> None:
    """The state after ``update`` has the structure, shapes and dtypes of ``init``'s, so that
    ``lax.cond`` / ``lax.scan`` can carry it; three updates under ``lax.scan`` are finite."""
    _check_state_avals(tx, params, extra_args)
    if not bool(_run(tx, params, _grads_seq(params, 3), extra_args).finite):
        raise AssertionError("non-finite updates under lax.scan")


def _compare_scheduled(
    plain: _Trajectory,
    factory: Callable[..., Any],
    kwargs: Mapping[str, Any],
    params: Any,
    grads: Sequence[Any],
    rtol: float,
    atol: float,
    extra_args: ExtraArgs,
) -> None:
    sched = dict(kwargs, learning_rate=optax.constant_schedule(kwargs["learning_rate"]))
    run = _run(factory(**sched), params, grads, extra_args)
    _assert_close(plain.updates, run.updates, rtol, atol, "schedule vs constant learning rate")


def check_schedule_accepted(
    factory: Callable[..., optax.GradientTransformation],
    kwargs: Mapping[str, Any],
    params: Any,
    rtol: float = 1e-6,
    atol: float = 1e-7,
    extra_args: ExtraArgs = None,
) -> None:
    """A constant schedule as ``learning_rate`` gives the same updates as the float."""
    grads = _grads_seq(params, 3)
    plain = _run(factory(**kwargs), params, grads, extra_args)
    _compare_scheduled(plain, factory, kwargs, params, grads, rtol, atol, extra_args)


def check_optax_compatibility(
    factory: Callable[..., optax.GradientTransformation],
    kwargs: Mapping[str, Any],
    params: Any,
    static_args: Sequence[str] = (),
    dtypes: Sequence[Any] = (jnp.bfloat16,),
    extra_args: ExtraArgs = None,
    probe_extra_args: bool = True,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """Runs the whole battery on ``factory(**kwargs)``, compiling each trajectory once.

    The properties of :func:`check_jit_no_recompile`, :func:`check_cond_state_stable`,
    :func:`check_inject_hyperparams` (``static_args`` as optax's), :func:`check_multisteps`,
    :func:`check_dtype_preserved` for each of ``dtypes`` and, when ``kwargs`` has a
    ``learning_rate``, :func:`check_schedule_accepted`. The plain optimizer's three steps run
    once, jitted under ``lax.scan`` (which carries the state, so it compiles only when the
    state keeps its structure, shapes and dtypes, and is then never retraced), with the
    unknown keyword probe; they are the reference of both comparisons.

    Args:
      factory: the optimizer's factory (its signature is what ``inject_hyperparams`` binds).
      kwargs: keyword arguments of ``factory``.
      params: a parameter tree.
      static_args: the arguments ``optax.inject_hyperparams`` must not turn into arrays.
      dtypes: parameter dtypes whose updates must keep them.
      extra_args: optax extra keyword arguments for every ``update`` (e.g. a batch).
      probe_extra_args: whether to probe that ``update`` ignores an unknown keyword
        (``False`` for a transformation that refuses unknown keywords on purpose).
      rtol: relative tolerance of the ``inject_hyperparams`` comparison.
      atol: its absolute tolerance (scale it with the updates: a ``scale_by_*`` transform
        without a learning rate returns unit-scale updates).

    Raises:
      AssertionError: naming the check that failed.
    """
    _check_signature(factory)
    tx = factory(**kwargs)
    _check_state_avals(tx, params, extra_args)
    grads = _grads_seq(params, 3)
    plain = _run(tx, params, grads, extra_args, probe=probe_extra_args)
    if not bool(plain.finite):
        raise AssertionError("jit updates: non-finite values")
    _compare_injected(plain, factory, kwargs, params, grads, static_args, rtol, atol, extra_args)
    check_multisteps(tx, params, extra_args=extra_args)
    check_dtype_preserved(tx, params, dtypes, extra_args=extra_args)
    if "learning_rate" in kwargs:
        _compare_scheduled(plain, factory, kwargs, params, grads, 1e-6, 1e-7, extra_args)


def _assert_finite(tree: Any, what: str) -> None:
    for x in jax.tree.leaves(tree):
        if not bool(jnp.all(jnp.isfinite(x))):
            raise AssertionError(f"{what}: non-finite values")


def _assert_close(a: Any, b: Any, rtol: float, atol: float, what: str) -> None:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if len(la) != len(lb):
        raise AssertionError(f"{what}: trees differ in size")
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(
            np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=atol, err_msg=what
        )
