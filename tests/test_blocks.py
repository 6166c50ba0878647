"""Tests of the block layer (optzoo._blocks), each against the math it implements: the EMA /
Nesterov / bias-corrected momentum recursion in numpy, the shape factor's closed forms, the
shape block on vector, 2-D, head-wise and stacked leaves, the matrix map's grouping (same
results, one call per shape and dtype, dtypes kept), the fallback split (labels, the fallback
equal to optax.adamw run alone, the matrix chain, the refusal of a non-transformation) and the
argument checks of the orthogonalizing methods."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optzoo import _blocks
from optzoo import fallback as fallback_lib
from optzoo.layout import MatrixLayout

BETA = 0.9


def _f32(seed: int, shape) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# ---------------------------------------------------------------------------- momentum
def _numpy_momentum(xs, *, nesterov, bias_correction, beta=BETA):
    """``B_t = βB_{t-1} + (1−β)x_t`` (B_0 = 0) and the direction input of step t = 1, 2, ...:
    Nesterov ``(1−β)x + βB`` or ``B``; debiased ``βB/(1−β^{t+1}) + (1−β)x/(1−β^t)`` or
    ``B/(1−β^t)``."""
    b, out = 0.0, []
    for t, x in enumerate(xs, start=1):
        x = np.asarray(x, np.float64)
        b = beta * b + (1 - beta) * x
        if bias_correction:
            d = (
                beta * b / (1 - beta ** (t + 1)) + (1 - beta) * x / (1 - beta**t)
                if nesterov
                else b / (1 - beta**t)
            )
        else:
            d = (1 - beta) * x + beta * b if nesterov else b
        out.append((b, d))
    return out


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_momentum_step_is_the_ema_recursion(nesterov, bias_correction):
    xs = [_f32(t, (3, 4)) for t in range(3)]
    vec = [_f32(10 + t, (5,)) for t in range(3)]
    mus = [jnp.zeros((3, 4), jnp.float32), optax.MaskedNode()]
    want = _numpy_momentum(xs, nesterov=nesterov, bias_correction=bias_correction)
    count = jnp.zeros([], jnp.int32)
    for t in range(3):
        count = optax.safe_increment(count)
        mus, dirs = _blocks.momentum_step(
            [xs[t], vec[t]], mus, BETA, count, nesterov=nesterov, bias_correction=bias_correction
        )
        b, d = want[t]
        # float32 against float64 over 3 steps of entries ~1: 1e-6 relative.
        np.testing.assert_allclose(np.asarray(mus[0]), b, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(dirs[0]), d, rtol=1e-6, atol=1e-6)
        # a leaf without momentum keeps its MaskedNode and passes its input through
        assert isinstance(mus[1], optax.MaskedNode) and dirs[1] is vec[t]


def test_the_variants_differ_negative_control():
    """The four recursions are different maps (else the test above could not tell them
    apart): after 2 steps every pair of direction inputs differs."""
    xs = [_f32(t, (3, 4)) for t in range(2)]
    outs = []
    for nesterov in (False, True):
        for bias_correction in (False, True):
            mus, count = [jnp.zeros((3, 4))], jnp.zeros([], jnp.int32)
            for x in xs:
                count = optax.safe_increment(count)
                mus, dirs = _blocks.momentum_step(
                    [x], mus, BETA, count, nesterov=nesterov, bias_correction=bias_correction
                )
            outs.append(np.asarray(dirs[0]))
    for i in range(4):
        for j in range(i):
            assert np.abs(outs[i] - outs[j]).max() > 1e-3, (i, j)


def test_momentum_keeps_its_buffer_dtype():
    mus, dirs = _blocks.momentum_step(
        [_f32(0, (2, 3))],
        [jnp.zeros((2, 3), jnp.bfloat16)],
        BETA,
        jnp.ones([], jnp.int32),
        nesterov=True,
    )
    assert mus[0].dtype == jnp.bfloat16
    assert dirs[0].dtype == jnp.float32  # the direction is not rounded to the buffer


def test_init_momentum_masks_leaves_without_a_layout():
    params = {"w": jnp.ones((3, 4), jnp.bfloat16), "b": jnp.ones(4)}
    mu = _blocks.init_momentum(params, None, None, "test")
    assert isinstance(mu["b"], optax.MaskedNode)
    assert mu["w"].dtype == jnp.bfloat16 and not np.any(np.asarray(mu["w"], np.float32))
    assert _blocks.init_momentum(params, None, jnp.float32, "test")["w"].dtype == jnp.float32


# ------------------------------------------------------------------------ shape factor
@pytest.mark.parametrize(
    "scale,m,n,want",
    [
        ("jordan", 4, 16, 2.0),  # √max(1, 16/4)
        ("jordan", 4, 9, 1.5),  # √(9/4)
        ("jordan", 16, 4, None),  # √max(1, 1/4) = 1: no factor
        ("jordan", 5, 5, None),
        ("rms", 4, 9, 0.2 * 3.0),  # 0.2·√max(4, 9)
        ("rms", 16, 4, 0.2 * 4.0),  # 0.2·√max(16, 4)
        (None, 4, 16, None),
    ],
)
def test_shape_factor_closed_forms(scale, m, n, want):
    got = _blocks.shape_factor(scale, m, n)
    if want is None:
        assert got is None
    else:
        assert got == pytest.approx(want, rel=1e-15)


def test_shape_factor_rms_scale():
    assert _blocks.shape_factor("rms", 3, 12, rms_scale=0.5) == pytest.approx(0.5 * 12**0.5)


def test_scale_by_shape_on_vector_matrix_headwise_and_stacked_leaves():
    tree = {
        "vec": _f32(0, (5,)),
        "mat": _f32(1, (4, 9)),
        "heads": _f32(2, (2, 16)),
        "stack": _f32(3, (2, 3, 12)),
    }
    layouts = {
        "vec": None,
        "mat": MatrixLayout(),
        "heads": MatrixLayout(num_heads=2),
        "stack": MatrixLayout(),
    }
    tx = _blocks.scale_by_shape("jordan", layout=layouts)
    out, _ = tx.update(tree, tx.init(tree))
    # vector: no layout, unchanged; 4x9: √(9/4); each head a 2x8 block: √4 = 2 (the whole
    # 2x16 matrix would give √8); each 3x12 slice of the stack: √4 = 2.
    want = {"vec": 1.0, "mat": 1.5, "heads": 2.0, "stack": 2.0}
    for k, s in want.items():
        np.testing.assert_allclose(np.asarray(out[k]), s * np.asarray(tree[k]), rtol=1e-6)
        assert out[k].dtype == tree[k].dtype and out[k].shape == tree[k].shape
    rms = _blocks.scale_by_shape("rms", rms_scale=0.2, layout=layouts)
    out, _ = rms.update(tree, rms.init(tree))
    np.testing.assert_allclose(
        np.asarray(out["heads"]), 0.2 * 8**0.5 * np.asarray(tree["heads"]), rtol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(out["vec"]), np.asarray(tree["vec"]))


def test_scale_by_shape_refuses_an_unknown_scale():
    with pytest.raises(ValueError, match="unknown shape_scale 'none'"):
        _blocks.scale_by_shape("none")


# -------------------------------------------------------------------------- matrix map
def _normalize(x: jax.Array) -> jax.Array:
    """Each matrix divided by its Frobenius norm: matrices treated independently."""
    return x / jnp.linalg.norm(x.astype(jnp.float32), axis=(-2, -1), keepdims=True).astype(x.dtype)


def test_map_matrices_grouping_changes_nothing_but_the_number_of_calls():
    tree = {
        "a": _f32(0, (3, 4)),
        "b": _f32(1, (2, 3, 4)),
        "c": _f32(2, (4, 3)),
        "d": _f32(3, (3, 4)).astype(jnp.bfloat16),
        "v": _f32(4, (6,)),
    }
    layouts = {
        "a": MatrixLayout(),
        "b": MatrixLayout(),
        "c": MatrixLayout(),
        "d": MatrixLayout(),
        "v": None,
    }
    calls = []

    def fn(x):
        calls.append(x.shape)
        return _normalize(x)

    keep = lambda x, path: x  # noqa: E731
    grouped = _blocks.map_matrices(fn, tree, layouts, otherwise=keep, group=True)
    n_grouped, calls[:] = len(calls), []
    single = _blocks.map_matrices(fn, tree, layouts, otherwise=keep, group=False)
    # grouped: (3,4) float32 [a + 2 slices of b], (4,3) float32, (3,4) bfloat16 -> 3 calls;
    # one call per leaf otherwise.
    assert n_grouped == 3 and len(calls) == 4
    for k in tree:
        assert grouped[k].dtype == tree[k].dtype and grouped[k].shape == tree[k].shape
        np.testing.assert_array_equal(
            np.asarray(grouped[k], np.float32), np.asarray(single[k], np.float32)
        )
    # and it is the per-matrix map: every slice of b has unit Frobenius norm
    np.testing.assert_allclose(
        np.linalg.norm(np.asarray(grouped["b"]), axis=(-2, -1)), 1.0, rtol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(grouped["v"]), np.asarray(tree["v"]))


def test_map_matrices_without_otherwise_names_the_leaf_without_a_layout():
    with pytest.raises(ValueError, match="'v' of shape \\(6,\\) has no matrix layout"):
        _blocks.map_matrices(_normalize, {"v": jnp.ones(6)}, {"v": None}, what="test")


def test_map_stacks_returns_each_stack_in_order():
    stacks = [_f32(0, (2, 3, 4)), _f32(1, (1, 4, 3)), _f32(2, (3, 3, 4))]
    out = _blocks.map_stacks(_normalize, stacks)
    for s, o in zip(stacks, out, strict=True):
        np.testing.assert_allclose(np.asarray(o), np.asarray(_normalize(s)), rtol=1e-6)


def test_flat_layouts_checks_dtypes_naming_the_path():
    with pytest.raises(TypeError, match="'k' has dtype int32"):
        _blocks.flat_layouts({"k": jnp.ones((2, 2), jnp.int32)}, None, "test", "parameter")


# ----------------------------------------------------------------------- fallback split
def _tree(seed):
    return {"w": _f32(seed, (4, 6)), "b": _f32(seed + 1, (6,))}


def _run(tx, params, grads):
    state, out = tx.init(params), []
    for g in grads:
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
        out.append(u)
    return out, state


def test_with_fallback_routes_vectors_to_the_fallback():
    params, grads = _tree(0), [_tree(10 + t) for t in range(3)]
    lr = 0.02
    tx = _blocks.with_fallback(
        "mymethod", optax.scale(3.0), learning_rate=lr, layout=None, fallback=None
    )
    ups, state = _run(tx, params, grads)
    # labels: the matrix leaf under the method's name, the vector under 'fallback'
    assert set(state.inner_states) == {"mymethod", "fallback"}
    fb_mu = state.inner_states["fallback"].inner_state[0].mu
    assert isinstance(fb_mu["w"], optax.MaskedNode) and fb_mu["b"].shape == (6,)
    # the vector's updates are optax.adamw's at 0.015 × lr, run alone: bitwise
    alone, _ = _run(
        optax.adamw(0.015 * lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0),
        {"b": params["b"]},
        [{"b": g["b"]} for g in grads],
    )
    for u, a in zip(ups, alone, strict=True):
        np.testing.assert_array_equal(np.asarray(u["b"]), np.asarray(a["b"]))
    # the matrix leaf: chain(tx, no decay, scale_by_learning_rate) = −lr·3·G
    for u, g in zip(ups, grads, strict=True):
        np.testing.assert_allclose(np.asarray(u["w"]), -lr * 3.0 * np.asarray(g["w"]), rtol=1e-6)


def test_with_fallback_label_default_fallback_and_matrix_chain():
    params, grads = _tree(1), [_tree(20 + t) for t in range(2)]
    tx = _blocks.with_fallback(
        "mymethod",
        optax.identity(),
        learning_rate=0.02,
        layout=None,
        fallback=None,
        default_fallback=fallback_lib.AdamW(learning_rate=1e-3),
        matrix_label="matrix",
        matrix_chain=(optax.scale(-0.5),),
    )
    ups, state = _run(tx, params, grads)
    assert set(state.inner_states) == {"matrix", "fallback"}
    alone, _ = _run(
        optax.adamw(1e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0),
        {"b": params["b"]},
        [{"b": g["b"]} for g in grads],
    )
    for u, a, g in zip(ups, alone, grads, strict=True):
        np.testing.assert_array_equal(np.asarray(u["b"]), np.asarray(a["b"]))
        np.testing.assert_array_equal(np.asarray(u["w"]), -0.5 * np.asarray(g["w"]))


def test_with_fallback_refuses_a_non_transformation_naming_the_alias():
    with pytest.raises(
        TypeError, match="mymethod: fallback must be an optax.GradientTransformation"
    ):
        _blocks.with_fallback(
            "mymethod", optax.identity(), learning_rate=0.02, layout=None, fallback=optax.adamw
        )  # the factory, not a transformation
    with pytest.raises(ValueError, match="mymethod: weight_decay"):
        _blocks.with_fallback(
            "mymethod",
            optax.identity(),
            learning_rate=0.02,
            layout=None,
            fallback=None,
            weight_decay=-1.0,
        )


def test_with_fallback_checks_update_shapes_against_params():
    params = _tree(2)
    tx = _blocks.with_fallback(
        "mymethod", optax.identity(), learning_rate=0.02, layout=None, fallback=None
    )
    bad = {"w": jnp.ones((6, 4)), "b": jnp.ones(6)}
    with pytest.raises(ValueError, match="update of 'w' has shape \\(6, 4\\)"):
        tx.update(bad, tx.init(params), params)


# ------------------------------------------------------------------------------ checks
@pytest.mark.parametrize(
    "args,error,match",
    [
        (("qr", None), ValueError, "unknown ortho_method 'qr'"),
        (("svd", (3.4445, -4.775, 2.0315)), ValueError, "ns_coeffs applies to"),
        (("auto", None, "aol"), ValueError, "preconditioning='aol' applies to"),
        (("newton_schulz", None, "l2"), ValueError, "unknown preconditioning 'l2'"),
    ],
)
def test_check_ortho_refuses(args, error, match):
    with pytest.raises(error, match=f"test: {match}"):
        _blocks.check_ortho(*args[:2], "test", *args[2:])


def test_check_ortho_accepts_valid_combinations():
    _blocks.check_ortho("newton_schulz", (3.4445, -4.775, 2.0315), "test", "spectral")
    _blocks.check_ortho("gram_newton_schulz", None, "test")
    _blocks.check_ortho("svd", None, "test")


@pytest.mark.parametrize(
    "steps,error,match",
    [
        (0, ValueError, "ns_steps must lie in"),
        (2.0, TypeError, "ns_steps must be an int"),
        (True, TypeError, "ns_steps must be an int"),
    ],
)
def test_check_steps_refuses(steps, error, match):
    with pytest.raises(error, match=f"test: {match}"):
        _blocks.check_steps(steps, "test")


def test_check_steps_accepts_none_and_positive_ints():
    _blocks.check_steps(None, "test")
    _blocks.check_steps(np.int64(3), "test")


def test_svd_orthogonalizer_is_the_polar_factor():
    x = _f32(5, (2, 4, 3))
    o = np.asarray(_blocks.orthogonalizer("svd")(x), np.float64)
    for i in range(2):
        u, _, vt = np.linalg.svd(np.asarray(x[i], np.float64), full_matrices=False)
        np.testing.assert_allclose(o[i], u @ vt, atol=1e-5)
