"""optzoo.layout: matrix views of n-D parameters, checked against plain numpy reshapes."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

from optzoo import linalg
from optzoo._blocks import map_matrices
from optzoo.layout import MatrixLayout, resolve


def _arange(shape):
    return jnp.arange(int(np.prod(shape)), dtype=jnp.float32).reshape(shape)


@pytest.mark.parametrize(
    "shape,lay,batch,m,n",
    [
        ((6, 4), MatrixLayout(), 1, 6, 4),
        ((3, 6, 4), MatrixLayout(), 3, 6, 4),  # scanned layers
        ((2, 3, 6, 4), MatrixLayout(), 6, 6, 4),  # [L, E, m, n]
        ((3, 3, 5, 7), MatrixLayout(reduction_axes=(0, 1, 2), output_axes=(3,)), 1, 45, 7),
        ((5, 2, 4, 3), MatrixLayout(reduction_axes=(0,), output_axes=(2, 3)), 2, 5, 12),
        ((6, 8), MatrixLayout(num_heads=4), 4, 6, 2),  # fused heads
    ],
)
def test_round_trip_and_geometry(shape, lay, batch, m, n):
    x = _arange(shape)
    mat = lay.to_matrix(x)
    assert mat.shape == (batch, m, n) == lay.matrix_shape(shape)
    assert lay.fan_in(shape) == m and lay.fan_out(shape) == n
    np.testing.assert_array_equal(lay.from_matrix(mat, shape), x)


def test_matrix_view_matches_numpy_reshape():
    # conv kernel (kh, kw, in, out): the matrix is the (kh·kw·in, out) reshape
    x = np.random.default_rng(0).standard_normal((3, 3, 5, 7)).astype(np.float32)
    lay = MatrixLayout(reduction_axes=(0, 1, 2), output_axes=(3,))
    np.testing.assert_array_equal(lay.to_matrix(jnp.asarray(x))[0], x.reshape(45, 7))
    # a batch axis in the middle: (m, B, n) with reduction 0, output 2
    y = np.random.default_rng(1).standard_normal((4, 3, 5)).astype(np.float32)
    lay = MatrixLayout(reduction_axes=(0,), output_axes=(2,))
    np.testing.assert_array_equal(lay.to_matrix(jnp.asarray(y)), np.transpose(y, (1, 0, 2)))
    # heads: head h is the column block h·hd:(h+1)·hd of a fused (d, H·hd) kernel
    z = np.random.default_rng(2).standard_normal((6, 8)).astype(np.float32)
    heads = MatrixLayout(num_heads=4).to_matrix(jnp.asarray(z))
    for h in range(4):
        np.testing.assert_array_equal(heads[h], z[:, 2 * h : 2 * h + 2])


def test_unit_side():
    assert MatrixLayout(unit_axis=0).unit_side(2) == -2  # Embed (V, d): rows
    assert MatrixLayout(unit_axis=1).unit_side(2) == -1  # Dense head (d, V): cols
    assert MatrixLayout(unit_axis=-1).unit_side(3) == -1


def test_resolve_forms():
    params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4), "s": jnp.zeros((2, 3, 4))}
    # the default reads 2-D leaves only; a 3-D leaf needs an explicit layout
    with pytest.raises(ValueError, match=r"'s' of shape \(2, 3, 4\) has 3 axes"):
        resolve(None, params)
    default = resolve(None, {"w": params["w"], "b": params["b"]})
    assert default["b"] is None and default["w"] == MatrixLayout()
    single = resolve(MatrixLayout(unit_axis=-2), params)
    assert single["w"].unit_axis == -2 and single["b"] is None
    with pytest.raises(ValueError, match="'s'.*unit_axis 0"):  # axis 0 of 's' is a batch axis
        resolve(MatrixLayout(unit_axis=0), params)
    tree = resolve({"w": MatrixLayout(), "b": None, "s": None}, params)
    assert tree["s"] is None
    fn = resolve(lambda p: {k: (MatrixLayout() if k == "s" else None) for k in p}, params)
    assert fn["w"] is None and fn["s"] == MatrixLayout()


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"layers": {"w": MatrixLayout(reduction_axes=(2,))}}, "layers/w"),
        (
            {"layers": {"w": MatrixLayout(unit_axis=2, reduction_axes=(0,), output_axes=(1,))}},
            "layers/w",
        ),
        ({"layers": {"w": MatrixLayout(num_heads=3)}}, "divisible"),
        ({"layers": {"w": "dense"}}, "layers/w"),
        ({"layers": {}}, "does not match"),
    ],
)
def test_resolve_errors_name_the_path(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve(spec, {"layers": {"w": jnp.zeros((4, 6, 8))}})


def test_explicit_layout_on_vector_names_path():
    with pytest.raises(ValueError, match="norm/scale.*at least 2 dimensions"):
        resolve({"norm": {"scale": MatrixLayout()}}, {"norm": {"scale": jnp.zeros(8)}})


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0, 4, 5), (2, 3, 0, 5)])
def test_zero_size_matrix_leaf_names_path_and_shape(shape):
    # empty rows, columns or batch (stacked leaf with no layers): the matrix view is empty
    params = {"blocks": {"w": jnp.zeros(shape)}, "b": jnp.zeros((0,))}
    with pytest.raises(ValueError, match=rf"'blocks/w'.*{re.escape(str(shape))}.*zero-size"):
        resolve(MatrixLayout(), params)  # stacked shapes need the explicit layout
    # control: the same tree with a non-empty matrix resolves; a zero-size vector has no
    # layout and is left to the caller's fallback
    ok = resolve(None, {"blocks": {"w": jnp.zeros((2, 3))}, "b": jnp.zeros((0,))})
    assert ok["blocks"]["w"] == MatrixLayout() and ok["b"] is None


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(reduction_axes=(0,), output_axes=(0,)),
        dict(reduction_axes=()),
        dict(output_axes=(1, 1)),
        dict(num_heads=0),
        dict(output_axes=(1, 2), num_heads=2),
    ],
)
def test_bad_layouts(kwargs):
    with pytest.raises(ValueError):
        MatrixLayout(**kwargs)


def test_map_matrices_grouping_is_exact_and_keeps_shapes():
    rng = np.random.default_rng(3)
    tree = {
        "a": jnp.asarray(rng.standard_normal((3, 6, 10)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal((6, 10)), jnp.float32),
        "c": jnp.asarray(rng.standard_normal((10, 6)), jnp.float32),
        "v": jnp.ones(5, jnp.bfloat16),
    }
    lays = resolve(MatrixLayout(), tree)
    calls = []

    def fn(stack):
        calls.append(stack.shape)
        return linalg.orthogonalize(stack, "svd")

    grouped = map_matrices(fn, tree, lays, otherwise=lambda x, p: 2 * x)
    assert sorted(calls) == [(1, 10, 6), (4, 6, 10)]  # a and b share one call
    single = map_matrices(
        lambda s: linalg.orthogonalize(s, "svd"),
        tree,
        lays,
        otherwise=lambda x, p: 2 * x,
        group=False,
    )
    for k in tree:
        assert grouped[k].shape == tree[k].shape and grouped[k].dtype == tree[k].dtype
        np.testing.assert_allclose(
            np.asarray(grouped[k], np.float32), np.asarray(single[k], np.float32), atol=1e-6
        )
    np.testing.assert_array_equal(np.asarray(grouped["v"], np.float32), 2.0)
    with pytest.raises(ValueError, match="'v'.*no matrix layout"):
        map_matrices(fn, tree, lays)
