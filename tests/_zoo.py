"""The zoo: every public optzoo optimizer, built with small valid hyper-parameters.

Shared by the property suite (``tests/test_properties.py``) and the orbax round trip
(``tests/test_state_roundtrip.py``). One :class:`Entry` per public factory exported by
``optzoo.__all__`` (``tests/test_properties.py::test_registry_covers_every_public_optimizer``
fails when a new factory is exported without an entry here).

Leaves are named by their *kind* (``scalar``, ``vector``, ``matrix``, ``stacked3``,
``stacked4``, ``conv4``, ``empty``): :func:`layouts` gives every matrix-like kind its
:class:`~optzoo.layout.MatrixLayout` (stacked leaves: leading batch axes; a conv kernel
``(kh, kw, in, out)``: reduction axes ``(0, 1, 2)``), so the matrix methods read each kind the
way a user would declare it. Optimizers that need a particular tree get a ``tree`` tag:
``'routed'`` (Flax/LLaMA names that :mod:`optzoo.routing` classifies, for
``symmetry_compatible``).

EGN computes its direction from a batch passed as an optax extra argument (``batch=(x, y)``),
through :func:`egn_apply`, a fixed random-projection model that accepts any parameter tree;
``discard_stale`` receives ``delay=`` (step-dependent, so some arrivals are discarded).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optzoo
from optzoo.layout import MatrixLayout

#: Leaf kinds of the generic trees.
KINDS = ("scalar", "vector", "matrix", "stacked3", "stacked4", "conv4", "empty", "emptyvec")
MATRIX_KINDS = ("matrix", "stacked3", "stacked4", "conv4", "empty")

EGN_IN, EGN_OUT, EGN_BATCH = 3, 2, 4


def kind_of(path: str) -> str:
    """The leaf kind encoded in a generic tree's key (``'matrix_1'`` -> ``'matrix'``)."""
    return path.rsplit("/", 1)[-1].split("_", 1)[0]


def _layout_for(kind: str, unit: bool) -> MatrixLayout | None:
    if kind in ("matrix", "stacked3", "stacked4", "empty"):
        return MatrixLayout(unit_axis=-1) if unit else MatrixLayout()
    if kind == "conv4":
        return MatrixLayout(reduction_axes=(0, 1, 2), output_axes=(3,),
                            unit_axis=3 if unit else None)
    return None


def layouts(params: Any, *, unit: bool = False) -> Any:
    """Tree of layouts for a generic tree: a :class:`MatrixLayout` per matrix-like leaf.

    Args:
      params: a generic tree (keys ``<kind>_<i>``).
      unit: whether to set ``unit_axis`` (the output axis) for permutation-aware maps.

    Returns:
      A tree of ``MatrixLayout | None`` matching ``params``.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _layout_for(kind_of(jax.tree_util.keystr(path, simple=True,
                                                                  separator="/")), unit),
        params)


unit_layouts = functools.partial(layouts, unit=True)


@functools.cache
def _projection(size: int, index: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + 31 * index + size)
    return rng.standard_normal((size, EGN_IN * EGN_OUT)).astype(np.float32) / np.sqrt(size + 1)


def egn_apply(params: Any, x: jax.Array) -> jax.Array:
    """A model on any parameter tree: ``Σ_i tanh(x · reshape(P_i vec(leaf_i)))``, ``[b, c]``.

    ``P_i`` is a fixed random projection per leaf, so every parameter enters the outputs and
    the Jacobian has full row rank for generic parameters.
    """
    out = jnp.zeros((x.shape[0], EGN_OUT), jnp.float32)
    for i, leaf in enumerate(jax.tree.leaves(params)):
        v = jnp.reshape(leaf, (-1,)).astype(jnp.float32)
        w = (v @ _projection(v.shape[0], i)).reshape(EGN_IN, EGN_OUT)
        out = out + jnp.tanh(x.astype(jnp.float32) @ w)
    return out


def egn_batch(step: int, scale: float) -> tuple[jax.Array, jax.Array]:
    """The deterministic batch of ``step``; targets scaled by ``scale``."""
    rng = np.random.default_rng(77 + step)
    x = rng.standard_normal((EGN_BATCH, EGN_IN)).astype(np.float32)
    y = (scale * rng.standard_normal((EGN_BATCH, EGN_OUT))).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


def _no_extra(step: int, scale: float) -> dict:
    del step, scale
    return {}


def _egn_extra(step: int, scale: float) -> dict:
    return {"batch": egn_batch(step, scale)}


def _delay_extra(step: int, scale: float) -> dict:
    del scale
    return {"delay": jnp.asarray(step % 3, jnp.int32)}  # threshold 2: every third is stale


@dataclasses.dataclass(frozen=True)
class Entry:
    """One optimizer of the zoo.

    Attributes:
      name: registry key.
      covers: the ``optzoo.__all__`` factory it exercises.
      build: returns the ``optax.GradientTransformation``.
      kinds: leaf kinds it accepts in a generic tree; other kinds must raise naming the path.
      empty_ok: whether zero-size *matrix* leaves (kind ``empty``) are accepted; if not,
        ``init`` raises a ``ValueError`` naming the path. Zero-size vectors (``emptyvec``)
        must always work when their kind is accepted (matrix methods send them to the
        fallback).
      tree: ``'generic'`` or ``'routed'`` (Flax/LLaMA names for ``symmetry_compatible``).
      extra: ``(step, scale) -> dict`` of optax extra arguments for ``update``.
    """

    name: str
    covers: str
    build: Callable[[], optax.GradientTransformation]
    kinds: tuple[str, ...] = KINDS
    empty_ok: bool = True
    tree: str = "generic"
    extra: Callable[[int, float], dict] = _no_extra


def _e(name: str, build: Callable[[], Any], covers: str | None = None, **kw: Any) -> Entry:
    return Entry(name=name, covers=covers or name, build=build, **kw)


def _m(name: str, build: Callable[[], Any], **kw: Any) -> Entry:
    """A matrix method: a zero-size matrix leaf is rejected at ``init`` by
    ``MatrixLayout.validate`` (a ``ValueError`` naming the path and the shape)."""
    return _e(name, build, empty_ok=False, **kw)


_L = layouts
_U = unit_layouts
_MATRIX_ONLY = MATRIX_KINDS

ENTRIES: tuple[Entry, ...] = (
    # LMO / orthogonalized family
    _m("muon", lambda: optzoo.muon(0.02, layout=_L, weight_decay=0.01)),
    _m("scale_by_muon", lambda: optzoo.scale_by_muon(layout=_L)),
    _m("polargrad", lambda: optzoo.polargrad(0.02, layout=_L)),
    _m("scale_by_polargrad", lambda: optzoo.scale_by_polargrad(layout=_L)),
    _m("scion", lambda: optzoo.scion(0.02, layout=_L)),
    _m("scale_by_scion", lambda: optzoo.scale_by_scion(layout=_L)),
    _m("ef_muon", lambda: optzoo.ef_muon(0.02, layout=_L)),
    _m("scale_by_ef_muon", lambda: optzoo.scale_by_ef_muon(layout=_L), kinds=_MATRIX_ONLY),
    _m("fismo", lambda: optzoo.fismo(0.02, precondition_frequency=2, layout=_L)),
    _m("scale_by_fismo", lambda: optzoo.scale_by_fismo(precondition_frequency=2, layout=_L),
       kinds=_MATRIX_ONLY),
    # symmetry-compatible maps
    _m("rownorm", lambda: optzoo.rownorm(0.02, unit_axis=None, layout=_U)),
    _m("one_sided_spectral",
       lambda: optzoo.one_sided_spectral(0.02, unit_axis=None, layout=_U)),
    _m("left_spectral", lambda: optzoo.left_spectral(0.02, unit_axis=None, layout=_U)),
    _m("hybrid", lambda: optzoo.hybrid(0.02, unit_axis=None, layout=_U)),
    _m("scale_by_rownorm", lambda: optzoo.scale_by_rownorm(unit_axis=None, layout=_U),
       kinds=_MATRIX_ONLY),
    _m("scale_by_one_sided_spectral",
       lambda: optzoo.scale_by_one_sided_spectral(unit_axis=None, layout=_U),
       kinds=_MATRIX_ONLY),
    _m("scale_by_left_spectral",
       lambda: optzoo.scale_by_left_spectral(unit_axis=None, layout=_U), kinds=_MATRIX_ONLY),
    _m("scale_by_hybrid", lambda: optzoo.scale_by_hybrid(unit_axis=None, layout=_U),
       kinds=_MATRIX_ONLY),
    _m("symmetry_compatible", lambda: optzoo.symmetry_compatible(0.02, head_dim=2),
       tree="routed"),
    # Lion family
    _e("lion", lambda: optzoo.lion(1e-3)),
    _m("lion_kappa", lambda: optzoo.lion_kappa(1e-3, "spectral", layout=_L,
                                                    vector_kappa="sign")),
    _e("scale_by_lion_kappa", lambda: optzoo.scale_by_lion_kappa(kappa="tanh")),
    # low-rank family
    _m("galore", lambda: optzoo.galore(1e-2, rank=2, update_proj_gap=2, layout=_L)),
    _m("scale_by_galore", lambda: optzoo.scale_by_galore(rank=2, update_proj_gap=2, layout=_L)),
    _m("natural_galore",
       lambda: optzoo.natural_galore(1e-2, rank=2, update_proj_gap=2, history=2, layout=_L)),
    _m("scale_by_natural_galore",
       lambda: optzoo.scale_by_natural_galore(rank=2, update_proj_gap=2, history=2, layout=_L)),
    _m("online_subspace_descent",
       lambda: optzoo.online_subspace_descent(1e-2, rank=2, layout=_L)),
    _m("scale_by_online_subspace_descent",
       lambda: optzoo.scale_by_online_subspace_descent(rank=2, layout=_L)),
    # second-order and asynchronous
    _e("egn", lambda: optzoo.egn(0.5, egn_apply, damping=0.1, momentum=0.5), extra=_egn_extra),
    _e("scale_by_egn", lambda: optzoo.scale_by_egn(egn_apply, damping=0.1), extra=_egn_extra),
    _m("ringmaster", lambda: optzoo.ringmaster(0.02, layout=_L)),
    _m("ringmaster_agnostic", lambda: optzoo.ringmaster_agnostic(0.02, layout=_L)),
    _m("scale_by_ringmaster_lmo", lambda: optzoo.scale_by_ringmaster_lmo(layout=_L)),
    _m("discard_stale",
       lambda: optzoo.discard_stale(optzoo.ringmaster(0.02, layout=_L), delay_threshold=2),
       extra=_delay_extra),
    _m("delay_adaptive",
       lambda: optzoo.delay_adaptive(optzoo.ringmaster(0.02, layout=_L), n_workers=2),
       extra=_delay_extra),
    # guards
    _m("skip_nonfinite", lambda: optzoo.skip_nonfinite(optzoo.muon(0.02, layout=_L))),
)

REGISTRY: dict[str, Entry] = {e.name: e for e in ENTRIES}


# ------------------------------------------------------------------------------ trees
def routed_shapes(d: int, vocab: int, ffn: int, experts: int) -> dict[str, tuple[int, ...]]:
    """Leaf shapes of a 2-layer LLaMA/OLMoE-style tree in Flax naming (``head_dim = 2``).

    Args:
      d: model width (even: two heads of size 2 for q, one for k/v).
      vocab: vocabulary size.
      ffn: MLP / expert hidden width.
      experts: number of experts of the MoE layer.

    Returns:
      ``{'/'-joined path: shape}``; :func:`optzoo.routing.classify` covers every path.
    """
    return {
        "embed/embedding": (vocab, d),
        "layers/0/attn/q_proj/kernel": (d, 4),
        "layers/0/attn/k_proj/kernel": (d, 2),
        "layers/0/attn/v_proj/kernel": (d, 2),
        "layers/0/attn/o_proj/kernel": (4, d),
        "layers/0/attn_norm/scale": (d,),
        "layers/0/mlp/gate_proj/kernel": (d, ffn),
        "layers/0/mlp/up_proj/kernel": (d, ffn),
        "layers/0/mlp/down_proj/kernel": (ffn, d),
        "layers/1/moe/router/kernel": (d, experts),
        "layers/1/moe/experts/gate_proj": (experts, d, ffn),
        "layers/1/moe/experts/up_proj": (experts, d, ffn),
        "layers/1/moe/experts/down_proj": (experts, ffn, d),
        "final_norm/scale": (d,),
        "lm_head/kernel": (d, vocab),
    }


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{'a/b': x}`` -> ``{'a': {'b': x}}``."""
    out: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = out
        *parents, last = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = leaf
    return out
