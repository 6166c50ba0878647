"""Property suite over every public optimizer (the registry in ``tests/_zoo.py``).

For each optimizer, hypothesis draws a pytree of leaves — scalars, vectors, matrices (tall,
wide, ``1×n``), stacked ``[L, m, n]`` / ``[L, E, m, n]`` leaves and conv kernels read through
a :class:`~optzoo.layout.MatrixLayout`, zero-size leaves — each with its own dtype (float32,
bfloat16, float16; float64 in a separate test inside ``jax.enable_x64(True)``) and gradient
scale (0, 1e-30, 1, 1e30), and runs several jitted steps, checking:

* finite in -> finite out: every update entry and every floating state entry is finite;
* updates have the gradients' shapes and dtypes;
* the state's tree structure and leaf shapes/dtypes never change across steps;
* the update runs under ``jax.jit`` (every step is jitted).

Scales: a leaf is ``min(scale, finfo(dtype).max / (2·max|z|)) · z`` with ``z`` standard
normal, i.e. 1e30 is clipped into the dtype's finite range (float16: about 8e3), so the
*input* is always finite; 1e-30 underflows to 0 in float16 (and to subnormal/0 in bfloat16's
neighbourhood only at 1e-38), which is the dtype's own representation of it. No tolerances:
these properties are exact.

Documented range limits (gradients beyond ~1e18-1e19 overflowing a squared quantity; each
affected optimizer's docstring says so) are listed in :data:`RANGE_LIMITS`: each has a
predicate on (optimizer, leaf kind, dtype, scale) and a minimal repro test that must keep
failing the property (``test_range_limit_still_reproduces``); the property tests skip the
finiteness check only for the leaves a predicate matches (every other check still runs on
them). When a limit is lifted its repro test fails: delete its entry and update the docs.

Zero-size leaves: every optimizer must accept zero-size vectors (matrix methods send them to
their fallback); a zero-size *matrix* leaf is accepted by the elementwise methods and rejected
at ``init`` with a ``ValueError`` naming the leaf's path and shape by every matrix method
(``Entry.empty_ok`` false; ``test_empty_leaf_is_accepted_or_rejected_by_path``). Both kinds
are also drawn in the property tests where accepted.

Profiles (``tests/conftest.py``): the default profile is derandomized with few examples per
optimizer (the whole file costs ~40 s CPU); the thorough profile draws more::

    OPTZOO_HYPOTHESIS_PROFILE=thorough .venv/bin/python -m pytest -q -p no:xdist \\
        tests/test_properties.py

and ``bash run.sh slow`` runs the slow-marked variants with more examples.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from collections.abc import Callable
from typing import Any

import _zoo
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optzoo

pytestmark = pytest.mark.filterwarnings("ignore:.*rank .* exceeds min:UserWarning")

THOROUGH = os.environ.get("OPTZOO_HYPOTHESIS_PROFILE") == "thorough"
EXAMPLES = 6 if THOROUGH else 1
SLOW_EXAMPLES = 4
STEPS = 3  # FISMO (frequency 2) and GaLore (gap 2) refresh their roots/projectors at step 2
LOW_DTYPES = ("float32", "bfloat16", "float16")
SCALES = (0.0, 1e-30, 1.0, 1e30)


# -------------------------------------------------------------------------- leaves
@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """One drawn leaf: its kind (see ``_zoo.KINDS``), shape, dtype and gradient scale."""

    kind: str
    shape: tuple[int, ...]
    dtype: str
    scale: float


def _dims(lo: int, hi: int, n: int) -> st.SearchStrategy[tuple[int, ...]]:
    return st.tuples(*[st.integers(lo, hi)] * n)


SHAPES: dict[str, st.SearchStrategy[tuple[int, ...]]] = {
    "scalar": st.just(()),
    "vector": _dims(1, 6, 1),
    "matrix": st.one_of(_dims(1, 6, 2), st.integers(2, 6).map(lambda n: (1, n))),
    "stacked3": _dims(1, 4, 3),
    "stacked4": _dims(1, 3, 4),
    "conv4": _dims(1, 3, 4),
    "empty": st.sampled_from([(0, 3), (4, 0)]),
    "emptyvec": st.just((0,)),
}


@st.composite
def leaf_specs(
    draw: Callable, kinds: tuple[str, ...], dtypes: tuple[str, ...], size: tuple[int, int] = (3, 6)
) -> list[LeafSpec]:
    """A list of leaves over ``kinds``; every dtype and scale of the list appears."""
    n = draw(st.integers(*size))
    out = []
    for i in range(n):
        kind = draw(st.sampled_from(kinds))
        out.append(
            LeafSpec(
                kind,
                draw(SHAPES[kind]),
                dtypes[i % len(dtypes)],
                SCALES[(i + draw(st.integers(0, 3))) % len(SCALES)],
            )
        )
    return out


def _finite_scale(scale: float, z: np.ndarray, dtype: Any) -> float:
    """``scale`` clipped so that ``scale·z`` is finite in ``dtype`` (see the module doc)."""
    peak = float(np.max(np.abs(z))) if z.size else 1.0
    return min(scale, float(jnp.finfo(dtype).max) / (2.0 * max(peak, 1.0)))


def _array(rng: np.random.Generator, spec: LeafSpec, scale: float) -> jax.Array:
    z = rng.standard_normal(spec.shape)
    return jnp.asarray(_finite_scale(scale, z, jnp.dtype(spec.dtype)) * z, spec.dtype)


def generic_tree(specs: list[LeafSpec], rng: np.random.Generator, *, grads: bool) -> dict:
    """``{'<kind>_<i>': leaf}``; params have scale 1, gradients their spec's scale."""
    return {f"{s.kind}_{i}": _array(rng, s, s.scale if grads else 1.0) for i, s in enumerate(specs)}


@st.composite
def routed_specs(draw: Callable, dtypes: tuple[str, ...]) -> dict[str, LeafSpec]:
    """Leaf specs of ``_zoo.routed_shapes`` with drawn widths, dtypes and scales."""
    shapes = _zoo.routed_shapes(
        d=2 * draw(st.integers(1, 3)),
        vocab=draw(st.integers(1, 6)),
        ffn=draw(st.integers(1, 5)),
        experts=draw(st.integers(1, 3)),
    )
    return {
        path: LeafSpec(
            "routed", shape, draw(st.sampled_from(dtypes)), draw(st.sampled_from(SCALES))
        )
        for path, shape in shapes.items()
    }


def routed_tree(specs: dict[str, LeafSpec], rng: np.random.Generator, *, grads: bool) -> dict:
    return _zoo.nest({p: _array(rng, s, s.scale if grads else 1.0) for p, s in specs.items()})


# ---------------------------------------------------------------------- range limits
@dataclasses.dataclass(frozen=True)
class RangeLimit:
    """A documented limit of a method's range: which leaves it makes non-finite, and a repro.

    Attributes:
      name: short id.
      what: the limit, in words (each affected optimizer's docstring says it too).
      entries: registry names it affects.
      hits: ``LeafSpec -> bool``: the leaves whose update/state may be non-finite.
      repro: ``(entry_name, LeafSpec)`` of a minimal single-leaf repro.
    """

    name: str
    what: str
    entries: tuple[str, ...]
    hits: Callable[[LeafSpec], bool]
    repro: tuple[str, LeafSpec]


_ADAM_FALLBACK = (
    "muon",
    "polargrad",
    "ef_muon",
    "fismo",
    "rownorm",
    "one_sided_spectral",
    "left_spectral",
    "hybrid",
    "skip_nonfinite",
    "symmetry_compatible",
    "natural_galore",
    "scale_by_natural_galore",
)
_ADAM_EVERY_LEAF = (
    "galore",
    "scale_by_galore",
    "online_subspace_descent",
    "scale_by_online_subspace_descent",
)


def _adam_leaf(s: LeafSpec) -> bool:
    return len(s.shape) < 2  # the leaves a matrix method sends to its AdamW fallback


def _huge(s: LeafSpec) -> bool:
    return s.scale >= 1e30


def _huge_beyond_float16(s: LeafSpec) -> bool:
    # float16 gradients are clipped to ~8e3 (module doc); Adam runs them in float32, where
    # g² ~ 6e7 is far from overflow
    return _huge(s) and s.dtype != "float16"


#: Documented limits (not bugs): gradients beyond ~1e18-1e19 overflow a squared quantity.
#: The experiments harness clips the global gradient norm (grad_clip=1.0) long before.
RANGE_LIMITS: tuple[RangeLimit, ...] = (
    RangeLimit(
        "adam_nu_overflow_fallback",
        "documented limit: the default AdamW fallback (like optax.adamw): nu = (1-b2)·g² "
        "overflows to inf once |g| > sqrt(finfo.max) (float32/bfloat16 ~1.8e19; float16 "
        "leaves run in float32); updates stay finite (m/inf = 0: the leaf silently stops "
        "moving)",
        _ADAM_FALLBACK,
        lambda s: _adam_leaf(s) and _huge_beyond_float16(s),
        ("muon", LeafSpec("vector", (4,), "float32", 1e30)),
    ),
    RangeLimit(
        "adam_nu_overflow_base",
        "documented limit: the GaLore family's base Adam: the same nu overflow, on every "
        "leaf (projected matrices too)",
        _ADAM_EVERY_LEAF,
        _huge_beyond_float16,
        ("galore", LeafSpec("matrix", (3, 4), "float32", 1e30)),
    ),
)


def _known(entry: str, spec: LeafSpec) -> bool:
    return any(entry in b.entries and b.hits(spec) for b in RANGE_LIMITS)


# ------------------------------------------------------------------------ the check
def _path(keypath: Any) -> str:
    return jax.tree_util.keystr(keypath, simple=True, separator="/")


def _signature(tree: Any) -> tuple[Any, list[tuple[tuple[int, ...], Any]]]:
    leaves = jax.tree.leaves(tree)
    return jax.tree.structure(tree), [(jnp.shape(x), jnp.result_type(x)) for x in leaves]


def _leaf_of(state_path: str, specs: dict[str, LeafSpec]) -> LeafSpec | None:
    """The parameter a state leaf belongs to (its path ends with the parameter's path)."""
    hits = [s for p, s in specs.items() if state_path.endswith(p)]
    return hits[0] if len(hits) == 1 else None


def _assert_finite(tree: Any, what: str, entry: str, specs: dict[str, LeafSpec], step: int) -> None:
    for keypath, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        path = _path(keypath)
        if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
            continue
        spec = _leaf_of(path, specs)
        if spec is not None and _known(entry, spec):
            continue
        assert bool(jnp.all(jnp.isfinite(x))), (
            f"{entry}: {what} '{path}' is not finite at step {step} (leaf {spec}); inputs "
            "were finite"
        )


def run_and_check(
    entry: _zoo.Entry,
    specs: dict[str, LeafSpec],
    make: Callable[[np.random.Generator, bool], Any],
    seed: int = 0,
) -> None:
    """Runs ``STEPS`` jitted steps of ``entry`` and asserts every property of the module."""
    rng = np.random.default_rng(seed)
    params = make(rng, False)
    tx = entry.build()
    state = tx.init(params)
    first = _signature(state)
    step_fn = jax.jit(lambda g, s, p, extra: tx.update(g, s, p, **extra))
    for t in range(STEPS):
        grads = make(rng, True)
        updates, state = step_fn(grads, state, params, entry.extra(t, 1.0))
        assert jax.tree.structure(updates) == jax.tree.structure(grads), entry.name
        for (keypath, u), g in zip(
            jax.tree_util.tree_flatten_with_path(updates)[0], jax.tree.leaves(grads), strict=True
        ):
            assert (u.shape, u.dtype) == (g.shape, g.dtype), (
                f"{entry.name}: update '{_path(keypath)}' is {u.dtype}{list(u.shape)}, "
                f"gradient {g.dtype}{list(g.shape)} (step {t})"
            )
        _assert_finite(updates, "update", entry.name, specs, t)
        _assert_finite(state, "state leaf", entry.name, specs, t)
        assert _signature(state) == first, f"{entry.name}: state changed at step {t}"
        params = optax.apply_updates(params, updates)


def _generic(entry: _zoo.Entry, leaves: list[LeafSpec]) -> None:
    specs = {f"{s.kind}_{i}": s for i, s in enumerate(leaves)}
    run_and_check(entry, specs, lambda rng, g: generic_tree(leaves, rng, grads=g))


def _routed(entry: _zoo.Entry, specs: dict[str, LeafSpec]) -> None:
    run_and_check(entry, specs, lambda rng, g: routed_tree(specs, rng, grads=g))


def _drawable(entry: _zoo.Entry) -> tuple[str, ...]:
    """The kinds drawn for ``entry``: zero-size matrices only where ``entry.empty_ok``."""
    return tuple(k for k in entry.kinds if k != "empty" or entry.empty_ok)


GENERIC = [n for n, e in _zoo.REGISTRY.items() if e.tree == "generic"]
ROUTED = [n for n, e in _zoo.REGISTRY.items() if e.tree == "routed"]


def _property(name: str, dtypes: tuple[str, ...], examples: int) -> Callable:
    """A hypothesis test body for one optimizer over ``dtypes``."""
    entry = _zoo.REGISTRY[name]

    if entry.tree == "routed":

        @settings(max_examples=examples)
        @given(specs=routed_specs(dtypes))
        def check(specs):
            _routed(entry, specs)
    else:

        @settings(max_examples=examples)
        @given(leaves=leaf_specs(_drawable(entry), dtypes))
        def check(leaves):
            _generic(entry, leaves)

    return check


# -------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("name", list(_zoo.REGISTRY))
def test_finite_shapes_dtypes_and_stable_state(name):
    _property(name, LOW_DTYPES, EXAMPLES)()


@pytest.mark.parametrize("name", list(_zoo.REGISTRY))
def test_float64_under_enable_x64(name):
    # float64 leaves next to float32 ones: x64 mode must not promote the float32 leaves
    with jax.enable_x64(True):
        _property(name, ("float64", "float32"), EXAMPLES)()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_zoo.REGISTRY))
def test_properties_more_examples(name):
    _property(name, LOW_DTYPES, SLOW_EXAMPLES * EXAMPLES + 3)()


@pytest.mark.parametrize("name", GENERIC)
def test_empty_leaf_is_accepted_or_rejected_by_path(name):
    # Zero-size vectors always work (matrix methods send them to their fallback); a zero-size
    # matrix leaf works for elementwise methods and is rejected at init, naming its path and
    # shape, by every matrix method (MatrixLayout.validate: its matrix view has no entries).
    entry = _zoo.REGISTRY[name]
    for kind, shape in [("empty", (0, 3)), ("empty", (3, 0)), ("emptyvec", (0,))]:
        if kind not in entry.kinds:
            continue
        leaves = [LeafSpec("matrix", (3, 2), "float32", 1.0), LeafSpec(kind, shape, "float32", 1.0)]
        if entry.empty_ok or kind == "emptyvec":
            _generic(entry, leaves)
        else:
            with pytest.raises(
                ValueError,
                match=rf"'{kind}_1'.*{re.escape(str(shape))}.*"
                "zero-size",
            ):
                _init_only(entry, leaves)


def _init_only(entry: _zoo.Entry, leaves: list[LeafSpec]) -> None:
    entry.build().init(generic_tree(leaves, np.random.default_rng(0), grads=False))


# -------------------------------------------------------------------- range limit repros
@pytest.mark.parametrize("limit", RANGE_LIMITS, ids=[b.name for b in RANGE_LIMITS])
def test_range_limit_still_reproduces(limit):
    name, spec = limit.repro
    assert limit.hits(spec) and name in limit.entries
    rng = np.random.default_rng(0)
    tx = _zoo.REGISTRY[name].build()
    params = generic_tree([spec], rng, grads=False)
    state = tx.init(params)
    finite = True
    for t in range(STEPS):
        updates, state = tx.update(
            generic_tree([spec], rng, grads=True),
            state,
            params,
            **_zoo.REGISTRY[name].extra(t, 1.0),
        )
        finite &= all(
            bool(jnp.all(jnp.isfinite(x)))
            for x in jax.tree.leaves((updates, state))
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
        )
    assert not finite, (
        f"{limit.name} no longer reproduces: remove it from RANGE_LIMITS and "
        "update the affected optimizers' docstrings"
    )


def test_float16_natural_galore_regression():
    # The slow-suite failure of issue 10: a float16 matrix with |g| ~ 8e3 is whitened by
    # (λI + GGᵀ)⁻¹ to ~1e-4, whose square underflowed in the float16 base Adam (v = 0, update
    # m/0 = -inf). The base Adam now keeps float16 moments in float32.
    leaves = [
        LeafSpec("scalar", (), "float32", 0.0),
        LeafSpec("scalar", (), "bfloat16", 1e-30),
        LeafSpec("matrix", (1, 2), "float16", 1e30),
    ]
    _generic(_zoo.REGISTRY["natural_galore"], leaves)


# ------------------------------------------------------------------------- coverage
def _public_factories() -> set[str]:
    """Names in ``optzoo.__all__`` whose function returns an optax transformation."""
    out = set()
    for name in optzoo.__all__:
        obj = getattr(optzoo, name)
        if inspect.isfunction(obj) and "GradientTransformation" in str(
            inspect.signature(obj).return_annotation
        ):
            out.add(name)
    return out


def test_registry_covers_every_public_optimizer():
    factories = _public_factories()
    assert {"muon", "scale_by_muon", "egn", "skip_nonfinite"} <= factories  # sanity of the scan
    assert "egn_loss" not in factories  # returns a loss function, not an optimizer
    covered = {e.covers for e in _zoo.ENTRIES}
    missing = factories - covered
    assert not missing, f"optimizers without a tests/_zoo.py entry: {sorted(missing)}"
    assert covered <= factories, f"entries for unknown names: {sorted(covered - factories)}"


def test_property_check_has_power():
    """Negative controls: the check fails on a transform that breaks each property."""
    leaves = [LeafSpec("matrix", (3, 4), "bfloat16", 1.0), LeafSpec("vector", (3,), "float32", 0.0)]
    specs = {f"{s.kind}_{i}": s for i, s in enumerate(leaves)}

    def check(tx: optax.GradientTransformation) -> None:
        entry = _zoo.Entry("control", "control", lambda: tx, {})
        run_and_check(entry, specs, lambda rng, g: generic_tree(leaves, rng, grads=g))

    check(optax.sgd(0.1))  # passes
    upcast = optax.stateless(lambda u, p: jax.tree.map(lambda x: x.astype(jnp.float32), u))
    with pytest.raises(AssertionError, match="update 'matrix_0' is float32"):
        check(upcast)
    nan_on_zero = optax.stateless(lambda u, p: jax.tree.map(lambda x: x / x, u))
    with pytest.raises(AssertionError, match="update 'vector_1' is not finite"):
        check(nan_on_zero)

    def growing_init(params):
        return {"count": jnp.zeros([], jnp.int32), "buf": jnp.zeros((1,))}

    def growing_update(u, s, p=None):
        return u, {"count": s["count"] + 1, "buf": jnp.zeros((s["buf"].shape[0] + 1,))}

    with pytest.raises(AssertionError, match="state changed"):
        check(optax.GradientTransformation(growing_init, growing_update))
