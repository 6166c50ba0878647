"""The default layout cannot misread an ordinary Flax tree (issue 17).

Repro (before): ``optzoo.muon(lr)`` read every >= 2-D leaf as a batch of matrices over its
last two axes: a linen ``MultiHeadAttention`` query kernel ``(d, heads, head_dim)`` got ``d``
separate ``(heads, head_dim)`` orthogonalizations, a conv kernel one per spatial tap, a 2-D
attention bias ``(heads, head_dim)`` got Muon, and embeddings / heads were orthogonalized
although the README said "only if a layout says so". Now: 2-D leaves are matrices, vectors
(by shape or by routing role) go to the fallback, anything else raises naming the path and
the one-line fix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optzoo import layout as layout_lib
from optzoo import routing
from optzoo.layout import MatrixLayout


def _linen_like():
    z = jnp.zeros
    return {
        "MultiHeadAttention_0": {
            "query": {"kernel": z((8, 2, 4)), "bias": z((2, 4))},
            "out": {"kernel": z((2, 4, 8)), "bias": z((8,))},
        },
        "Conv_0": {"kernel": z((3, 3, 4, 8)), "bias": z((8,))},
        "Dense_0": {"kernel": z((8, 16)), "bias": z((16,))},
        "LayerNorm_0": {"scale": z((16,)), "bias": z((16,))},
    }


def test_multi_axis_leaves_raise_naming_the_path_and_the_fix():
    params = _linen_like()
    for factory in (
        lambda: optzoo.muon(0.02),
        lambda: optzoo.scion(0.02),
        lambda: optzoo.galore(1e-2, rank=2),
    ):
        # leaves are checked in tree order: the conv kernel comes first
        with pytest.raises(
            ValueError,
            match=r"'Conv_0/kernel' of shape \(3, 3, 4, 8\) has 4 "
            r"axes.*routing.hidden_layouts",
        ):
            factory().init(params)
        attn_only = {"MultiHeadAttention_0": {"query": params["MultiHeadAttention_0"]["query"]}}
        with pytest.raises(
            ValueError,
            match=r"'MultiHeadAttention_0/query/kernel' of shape "
            r"\(8, 2, 4\) has 3 axes",
        ):
            factory().init(attn_only)


def test_embeddings_and_heads_need_an_explicit_decision():
    params = {
        "embed": {"embedding": jnp.zeros((16, 8))},
        "mlp": {"up_proj": {"kernel": jnp.zeros((8, 8))}},
    }
    with pytest.raises(ValueError, match=r"'embed/embedding'.*embedding by its name"):
        optzoo.muon(0.02).init(params)
    head = {"lm_head": {"kernel": jnp.zeros((8, 16))}}
    with pytest.raises(ValueError, match=r"'lm_head/kernel'.*lm head"):
        optzoo.muon(0.02).init(head)
    # the explicit decisions all work
    optzoo.muon(0.02, layout=routing.hidden_layouts).init(params)
    optzoo.muon(0.02, layout=MatrixLayout()).init(params)


def test_two_d_matrices_and_vectors_by_default():
    lays = layout_lib.resolve(
        None,
        {"w": jnp.zeros((4, 6)), "b": jnp.zeros(6), "attn": {"query": {"bias": jnp.zeros((2, 4))}}},
    )
    assert lays["w"] == MatrixLayout()
    assert lays["b"] is None
    assert lays["attn"]["query"]["bias"] is None  # a 2-D bias is a vector (its routing role)


def test_the_role_aware_fix_reads_linen_kernels_whole_and_sends_biases_to_the_fallback():
    """With layout=routing.hidden_layouts the conv kernel is one (kh*kw*in, out) matrix and
    the 2-D attention bias goes to AdamW: the update of a conv kernel equals Muon's polar
    factor of the flattened matrix (exact SVD, beta 0), not per-tap factors."""
    params = _linen_like()
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), params)
    tx = optzoo.muon(
        1.0, beta=0.0, ortho_method="svd", shape_scale=None, layout=routing.hidden_layouts
    )
    u, state = tx.update(grads, tx.init(params), params)
    g = np.asarray(grads["Conv_0"]["kernel"], np.float64).reshape(36, 8)
    uu, _, vt = np.linalg.svd(g, full_matrices=False)
    np.testing.assert_allclose(
        np.asarray(u["Conv_0"]["kernel"]).reshape(36, 8), -(uu @ vt), rtol=1e-4, atol=1e-5
    )
    per_tap = -np.stack(
        [
            np.linalg.svd(t, full_matrices=False)[0] @ np.linalg.svd(t, full_matrices=False)[2]
            for t in np.asarray(grads["Conv_0"]["kernel"]).reshape(9, 4, 8)
        ]
    )
    assert np.abs(np.asarray(u["Conv_0"]["kernel"]).reshape(9, 4, 8) - per_tap).max() > 0.1
    muon_state = state.inner_states["muon"].inner_state[0]
    assert isinstance(muon_state.mu["MultiHeadAttention_0"]["query"]["bias"], optax.MaskedNode)
