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
from collections.abc import Callable, Mapping
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
        return MatrixLayout(
            reduction_axes=(0, 1, 2), output_axes=(3,), unit_axis=3 if unit else None
        )
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
        lambda path, _: _layout_for(
            kind_of(jax.tree_util.keystr(path, simple=True, separator="/")), unit
        ),
        params,
    )


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
    """One optimizer of the zoo: ``factory(**kwargs)``.

    Attributes:
      name: registry key.
      covers: the ``optzoo.__all__`` factory it exercises.
      factory: the public factory (or, for a wrapper, a factory with an explicit signature
        that builds the wrapped optimizer); its signature is what ``optax.inject_hyperparams``
        binds in the compatibility battery (``tests/test_optax_compat.py``).
      kwargs: the small valid hyper-parameters it is built with.
      static: arguments ``optax.inject_hyperparams`` must leave alone besides the callable
        ones (an int that sizes a buffer or unrolls a loop); see :attr:`static_args`.
      kinds: leaf kinds it accepts in a generic tree; other kinds must raise naming the path.
      empty_ok: whether zero-size *matrix* leaves (kind ``empty``) are accepted; if not,
        ``init`` raises a ``ValueError`` naming the path. Zero-size vectors (``emptyvec``)
        must always work when their kind is accepted (matrix methods send them to the
        fallback).
      tree: ``'generic'`` or ``'routed'`` (Flax/LLaMA names for ``symmetry_compatible``).
      extra: ``(step, scale) -> dict`` of optax extra arguments for ``update``.
      takes_unknown_keywords: whether ``update`` accepts (and ignores) extra keywords it does
        not know, optax's convention; the asynchronous gates refuse them on purpose (a
        misspelled ``delay=`` must not be dropped silently).
    """

    name: str
    covers: str
    factory: Callable[..., optax.GradientTransformation]
    kwargs: Mapping[str, Any]
    static: tuple[str, ...] = ()
    kinds: tuple[str, ...] = KINDS
    empty_ok: bool = True
    tree: str = "generic"
    extra: Callable[[int, float], dict] = _no_extra
    takes_unknown_keywords: bool = True

    def build(self, **overrides: Any) -> optax.GradientTransformation:
        """``factory(**kwargs)``, with ``overrides`` replacing some of the keyword arguments."""
        return self.factory(**{**self.kwargs, **overrides})

    @property
    def static_args(self) -> tuple[str, ...]:
        """What a user lists in ``optax.inject_hyperparams(static_args=...)``: the factory's
        published ``static_args`` (the GaLore family's), ``static``, and every keyword whose
        value is a callable (a layout function, a model), which optax would otherwise call as
        a schedule."""
        names = [
            *getattr(self.factory, "static_args", ()),
            *self.static,
            *(k for k, v in self.kwargs.items() if callable(v)),
        ]
        return tuple(dict.fromkeys(names))


def _e(
    name: str,
    factory: Callable[..., Any],
    covers: str | None = None,
    static: tuple[str, ...] = (),
    **kw: Any,
) -> Entry:
    fields = {f.name for f in dataclasses.fields(Entry)}
    options = {k: v for k, v in kw.items() if k in fields}
    kwargs = {k: v for k, v in kw.items() if k not in fields}
    return Entry(
        name=name, covers=covers or name, factory=factory, kwargs=kwargs, static=static, **options
    )


def _m(name: str, factory: Callable[..., Any], **kw: Any) -> Entry:
    """A matrix method: a zero-size matrix leaf is rejected at ``init`` by
    ``MatrixLayout.validate`` (a ``ValueError`` naming the path and the shape)."""
    return _e(name, factory, empty_ok=False, **kw)


# Wrappers as factories with explicit signatures (what inject_hyperparams binds).
def stale_ringmaster(
    learning_rate: optax.ScalarOrSchedule,
    *,
    delay_threshold: int,
    layout: Any = None,
    pass_through: tuple[str, ...] = (),
) -> optax.GradientTransformation:
    """``discard_stale(ringmaster(learning_rate, layout=layout), delay_threshold)``."""
    return optzoo.discard_stale(
        optzoo.ringmaster(learning_rate, layout=layout),
        delay_threshold=delay_threshold,
        pass_through=pass_through,
    )


def adaptive_ringmaster(
    learning_rate: optax.ScalarOrSchedule, *, n_workers: int, layout: Any = None
) -> optax.GradientTransformation:
    """``delay_adaptive(ringmaster(learning_rate, layout=layout), n_workers)``."""
    return optzoo.delay_adaptive(
        optzoo.ringmaster(learning_rate, layout=layout), n_workers=n_workers
    )


def guarded_muon(
    learning_rate: optax.ScalarOrSchedule, *, layout: Any = None
) -> optax.GradientTransformation:
    """``skip_nonfinite(muon(learning_rate, layout=layout))``."""
    return optzoo.skip_nonfinite(optzoo.muon(learning_rate, layout=layout))


_L = layouts
_U = unit_layouts
_MATRIX_ONLY = MATRIX_KINDS
_EGN = ("max_jacobian_size", "linesearch_steps")

ENTRIES: tuple[Entry, ...] = (
    # LMO / orthogonalized family
    _m("muon", optzoo.muon, learning_rate=0.02, layout=_L, weight_decay=0.01),
    _m("scale_by_muon", optzoo.scale_by_muon, layout=_L),
    _m("polargrad", optzoo.polargrad, learning_rate=0.02, layout=_L),
    _m("scale_by_polargrad", optzoo.scale_by_polargrad, layout=_L),
    _m("scion", optzoo.scion, learning_rate=0.02, layout=_L),
    _m("scale_by_scion", optzoo.scale_by_scion, layout=_L),
    _m("ef_muon", optzoo.ef_muon, learning_rate=0.02, layout=_L),
    _m("scale_by_ef_muon", optzoo.scale_by_ef_muon, layout=_L, kinds=_MATRIX_ONLY),
    _m(
        "fismo",
        optzoo.fismo,
        learning_rate=0.02,
        precondition_frequency=2,
        layout=_L,
        static=("precondition_frequency",),
    ),
    _m(
        "scale_by_fismo",
        optzoo.scale_by_fismo,
        precondition_frequency=2,
        layout=_L,
        kinds=_MATRIX_ONLY,
        static=("precondition_frequency",),
    ),
    # symmetry-compatible maps
    _m("rownorm", optzoo.rownorm, learning_rate=0.02, unit_axis=None, layout=_U),
    _m(
        "one_sided_spectral",
        optzoo.one_sided_spectral,
        learning_rate=0.02,
        unit_axis=None,
        layout=_U,
    ),
    _m("left_spectral", optzoo.left_spectral, learning_rate=0.02, unit_axis=None, layout=_U),
    _m("hybrid", optzoo.hybrid, learning_rate=0.02, unit_axis=None, layout=_U),
    _m("scale_by_rownorm", optzoo.scale_by_rownorm, unit_axis=None, layout=_U, kinds=_MATRIX_ONLY),
    _m(
        "scale_by_one_sided_spectral",
        optzoo.scale_by_one_sided_spectral,
        unit_axis=None,
        layout=_U,
        kinds=_MATRIX_ONLY,
    ),
    _m(
        "scale_by_left_spectral",
        optzoo.scale_by_left_spectral,
        unit_axis=None,
        layout=_U,
        kinds=_MATRIX_ONLY,
    ),
    _m("scale_by_hybrid", optzoo.scale_by_hybrid, unit_axis=None, layout=_U, kinds=_MATRIX_ONLY),
    _m(
        "symmetry_compatible",
        optzoo.symmetry_compatible,
        learning_rate=0.02,
        head_dim=2,
        tree="routed",
        static=("head_dim",),
    ),
    # Lion family
    _e("lion", optzoo.lion, learning_rate=1e-3),
    _m(
        "lion_kappa",
        optzoo.lion_kappa,
        learning_rate=1e-3,
        kappa="spectral",
        layout=_L,
        vector_kappa="sign",
    ),
    _e("scale_by_lion_kappa", optzoo.scale_by_lion_kappa, kappa="tanh"),
    # low-rank family
    _m("galore", optzoo.galore, learning_rate=1e-2, rank=2, update_proj_gap=2, layout=_L),
    _m("scale_by_galore", optzoo.scale_by_galore, rank=2, update_proj_gap=2, layout=_L),
    _m(
        "natural_galore",
        optzoo.natural_galore,
        learning_rate=1e-2,
        rank=2,
        update_proj_gap=2,
        history=2,
        layout=_L,
    ),
    _m(
        "scale_by_natural_galore",
        optzoo.scale_by_natural_galore,
        rank=2,
        update_proj_gap=2,
        history=2,
        layout=_L,
    ),
    _m(
        "online_subspace_descent",
        optzoo.online_subspace_descent,
        learning_rate=1e-2,
        rank=2,
        layout=_L,
    ),
    _m(
        "scale_by_online_subspace_descent",
        optzoo.scale_by_online_subspace_descent,
        rank=2,
        layout=_L,
    ),
    # second-order and asynchronous
    _e(
        "egn",
        optzoo.egn,
        learning_rate=0.5,
        apply_fn=egn_apply,
        damping=0.1,
        momentum=0.5,
        extra=_egn_extra,
        static=_EGN,
    ),
    _e(
        "scale_by_egn",
        optzoo.scale_by_egn,
        apply_fn=egn_apply,
        damping=0.1,
        extra=_egn_extra,
        static=("max_jacobian_size",),
    ),
    _m("ringmaster", optzoo.ringmaster, learning_rate=0.02, layout=_L),
    _m("ringmaster_agnostic", optzoo.ringmaster_agnostic, learning_rate=0.02, layout=_L),
    _m("scale_by_ringmaster_lmo", optzoo.scale_by_ringmaster_lmo, layout=_L),
    _m(
        "discard_stale",
        stale_ringmaster,
        covers="discard_stale",
        learning_rate=0.02,
        delay_threshold=2,
        layout=_L,
        extra=_delay_extra,
        static=("delay_threshold",),
        takes_unknown_keywords=False,
    ),
    _m(
        "delay_adaptive",
        adaptive_ringmaster,
        covers="delay_adaptive",
        learning_rate=0.02,
        n_workers=2,
        layout=_L,
        extra=_delay_extra,
        static=("n_workers",),
        takes_unknown_keywords=False,
    ),
    # guards
    _m("skip_nonfinite", guarded_muon, covers="skip_nonfinite", learning_rate=0.02, layout=_L),
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
