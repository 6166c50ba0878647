"""The optax compatibility battery (:func:`optzoo.testing.check_optax_compatibility`) over the
optimizer registry (``tests/_zoo.py``), plus the configurations the method test files checked.

Every registry entry runs the whole battery: ``update`` jits without retracing and ignores an
unknown extra keyword, ``optax.inject_hyperparams`` reproduces the plain updates (the entry's
``static_args`` as a user lists them), ``optax.MultiSteps`` emits zeros until the k-th step,
bfloat16 parameters get bfloat16 updates, the state keeps its structure, shapes and dtypes under
``lax.cond`` / ``lax.scan``, and a constant schedule equals its float learning rate. Entries
whose update reads extra arguments (EGN's batch, the asynchronous gates' ``delay``) get them from
the registry; the gates refuse unknown keywords on purpose (``Entry.takes_unknown_keywords``),
and :data:`CASES` checks that ``pass_through`` forwards the battery's probe instead.

All generic entries share one small tree (:data:`SHAPES`: a matrix and a stack of the same
``3 × 5`` matrices, a vector, a scalar), so the battery's eager steps reuse the kernels one
entry compiled for the next. :data:`CASES` holds the other hyper-parameter variants (solver,
variant, norm, compressor, unit axis, a callable argument as a static one), each on the tree
its options need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import _zoo
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optzoo
from optzoo import testing
from optzoo.layout import MatrixLayout

pytestmark = pytest.mark.filterwarnings("ignore:.*rank .* exceeds min:UserWarning")

#: The battery's generic tree (keys ``<kind>_<i>``, read by ``_zoo.layouts``).
SHAPES = {"matrix_0": (3, 5), "stacked3_1": (2, 3, 5), "vector_2": (5,), "scalar_3": ()}
#: The routed tree (``symmetry_compatible``): two heads of size 2, few distinct shapes.
ROUTED = _zoo.routed_shapes(d=4, vocab=4, ffn=4, experts=2)


def _arrays(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


def params_for(entry: _zoo.Entry) -> dict[str, Any]:
    """The battery's parameters for ``entry``: the routed tree, or the generic tree's leaves
    of the kinds it accepts."""
    if entry.tree == "routed":
        return _zoo.nest(_arrays(ROUTED))
    return _arrays({k: s for k, s in SHAPES.items() if _zoo.kind_of(k) in entry.kinds})


#: ``inject_hyperparams`` tolerance on the updates of a transform without a learning rate:
#: they have unit scale, where the aliases' (rate ~1e-2) have ~1e-2 and the battery's default
#: ``atol=1e-6``; an injected float32 ``beta`` rounds ``1 - β`` differently from the Python
#: float, which an orthogonalizer turns into ~3e-6 on an O(1) update.
UNIT_SCALE_ATOL = 1e-5


@pytest.mark.parametrize("name", list(_zoo.REGISTRY))
def test_registry_optimizer_passes_the_optax_battery(name):
    entry = _zoo.REGISTRY[name]
    atol = 1e-6 if "learning_rate" in entry.kwargs else UNIT_SCALE_ATOL
    testing.check_optax_compatibility(
        entry.factory,
        entry.kwargs,
        params_for(entry),
        static_args=entry.static_args,
        extra_args=entry.extra(0, 1.0),
        probe_extra_args=entry.takes_unknown_keywords,
        atol=atol,
    )


# --------------------------------------------------------------------- other configurations
def _stale_forwarding_the_probe(learning_rate: optax.ScalarOrSchedule, delay_threshold: int = 2):
    # discard_stale refuses unlisted update keywords (a misspelled delay= must not be dropped);
    # listed in pass_through, the battery's probe keyword is forwarded to the inner optimizer.
    return _zoo.stale_ringmaster(
        learning_rate,
        delay_threshold=delay_threshold,
        layout=_L,
        pass_through=("unused_extra_arg",),
    )


def _guarded_adam(learning_rate: optax.ScalarOrSchedule):
    return optzoo.skip_nonfinite(optax.adam(learning_rate))


def _scion_norms(path: str, leaf: Any) -> str:
    return "sign" if path == "head" else "auto"


_L = _zoo.layouts
_LAY = MatrixLayout()
#: Scion's per-leaf norms: every kind of LMO on one tree of 3 × 5 matrices.
_SCION_SHAPES = {"w": (3, 5), "stack": (2, 3, 5), "head": (3, 5), "emb": (3, 5), "b": (5,)}
_SCION_NORMS = {
    "w": "spectral",
    "stack": "spectral",
    "head": "column",
    "emb": "row",
    "b": "bias_rms",
}
_ROUTING_SHAPES = {
    "embed/embedding": (8, 4),
    "attn/o_proj/kernel": (4, 4),
    "moe/router/kernel": (4, 3),
    "norm/scale": (4,),
}

#: id -> (factory, kwargs, static_args, parameter shapes or None for :data:`SHAPES`).
CASES: dict[str, tuple[Callable[..., Any], dict[str, Any], tuple[str, ...], dict | None]] = {
    "muon-ns5-bias_correction-rms": (
        optzoo.muon,
        dict(
            learning_rate=0.02,
            ortho_method="newton_schulz",
            ns_steps=5,
            bias_correction=True,
            shape_scale="rms",
            mu_dtype=jnp.float32,
            layout=_L,
        ),
        ("ns_steps", "mu_dtype", "layout"),
        None,
    ),
    "polargrad-qdwh-weight_decay": (
        optzoo.polargrad,
        dict(learning_rate=1e-3, weight_decay=0.01, layout=_L),
        ("layout",),
        None,
    ),
    "polargrad-polar_first-polar_express": (
        optzoo.polargrad,
        dict(
            learning_rate=1e-3,
            variant="polar_first",
            ortho_method="polar_express",
            ns_steps=5,
            nesterov=True,
            layout=_L,
        ),
        ("ns_steps", "layout"),
        None,
    ),
    "scion-uSCG": (
        optzoo.scion,
        dict(
            learning_rate=0.05,
            norms=_SCION_NORMS,
            radius=2.0,
            momentum=0.2,
            constrained=False,
            weight_decay=0.01,
            layout=_LAY,
        ),
        (),
        _SCION_SHAPES,
    ),
    "scion-SCG": (
        optzoo.scion,
        dict(
            learning_rate=0.05,
            norms=_SCION_NORMS,
            radius=2.0,
            momentum=0.2,
            constrained=True,
            weight_decay=0.0,
            layout=_LAY,
        ),
        (),
        _SCION_SHAPES,
    ),
    "scion-callable_norms": (
        optzoo.scion,
        dict(learning_rate=0.05, norms=_scion_norms, radius=3.0, ns_steps=4, layout=_LAY),
        ("norms", "ns_steps"),
        _SCION_SHAPES,
    ),
    "ef_muon-spectral": (
        optzoo.ef_muon,
        dict(learning_rate=0.05, beta=0.9, compressor="spectral", weight_decay=0.01, layout=_L),
        ("layout",),
        None,
    ),
    "ef_muon-sign": (
        optzoo.ef_muon,
        dict(learning_rate=0.05, beta=0.9, compressor="sign", weight_decay=0.01, layout=_L),
        ("layout",),
        None,
    ),
    "fismo-rms-weight_decay": (
        optzoo.fismo,
        dict(
            learning_rate=0.05,
            precondition_frequency=2,
            weight_decay=0.01,
            shape_scale="rms",
            layout=_L,
        ),
        ("precondition_frequency", "layout"),
        None,
    ),
    "rownorm-centered": (
        optzoo.rownorm,
        dict(learning_rate=0.1, unit_axis=-1, center=True),
        ("unit_axis",),
        None,
    ),
    "one_sided_spectral-rows": (
        optzoo.one_sided_spectral,
        dict(learning_rate=0.01, unit_axis=-2, weight_decay=0.01),
        ("unit_axis", "gram_steps"),
        None,
    ),
    "hybrid-columns": (
        optzoo.hybrid,
        dict(learning_rate=0.01, unit_axis=-1, weight_decay=0.01),
        ("unit_axis", "gram_steps"),
        None,
    ),
    "left_spectral-columns": (
        optzoo.left_spectral,
        dict(learning_rate=0.01, unit_axis=-1),
        ("unit_axis", "gram_steps"),
        None,
    ),
    "symmetry_compatible-left_router": (
        optzoo.symmetry_compatible,
        dict(learning_rate=1e-2, head_dim=2, router="left"),
        ("head_dim",),
        _ROUTING_SHAPES,
    ),
    # 'sign' is the registry's lion; 'clip' shares every code path with 'tanh'.
    "lion_kappa-tanh": (
        optzoo.lion_kappa,
        dict(learning_rate=1e-2, weight_decay=1e-2, kappa="tanh", beta=2.0),
        (),
        None,
    ),
    "lion_kappa-l2": (
        optzoo.lion_kappa,
        dict(learning_rate=1e-2, weight_decay=1e-2, kappa="l2"),
        (),
        None,
    ),
    "lion_kappa-spectral_svd": (
        optzoo.lion_kappa,
        dict(
            learning_rate=1e-2,
            weight_decay=1e-2,
            kappa="spectral",
            spectral_method="svd",
            vector_kappa="sign",
            layout=_L,
        ),
        ("layout",),
        None,
    ),
    "lion_kappa-callable_kappa": (
        optzoo.lion_kappa,
        dict(learning_rate=1e-2, kappa=jnp.arcsinh),
        ("kappa",),
        None,
    ),
    "galore-weight_decay": (
        optzoo.galore,
        dict(
            learning_rate=1e-2, rank=2, update_proj_gap=2, side="std", weight_decay=0.01, layout=_L
        ),
        optzoo.galore.static_args,
        None,
    ),
    "natural_galore-history3-damping": (
        optzoo.natural_galore,
        dict(learning_rate=1e-2, rank=2, update_proj_gap=2, history=3, damping=1e-2, layout=_L),
        optzoo.natural_galore.static_args,
        None,
    ),
    "online_subspace_descent-orth_penalty": (
        optzoo.online_subspace_descent,
        dict(learning_rate=1e-2, rank=2, orth_penalty=0.1, layout=_L),
        optzoo.online_subspace_descent.static_args,
        None,
    ),
    "ringmaster-nesterov": (
        optzoo.ringmaster,
        dict(learning_rate=0.02, lmo="spectral", nesterov=True, layout=_L),
        ("layout",),
        None,
    ),
    "ringmaster_agnostic-sign": (
        optzoo.ringmaster_agnostic,
        dict(learning_rate=0.1, lmo="sign"),
        (),
        None,
    ),
    "discard_stale-pass_through": (
        _stale_forwarding_the_probe,
        dict(learning_rate=0.02),
        ("delay_threshold",),
        None,
    ),
    "skip_nonfinite-adam": (_guarded_adam, dict(learning_rate=1e-2), (), None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_other_configurations_pass_the_optax_battery(case):
    factory, kwargs, static, shapes = CASES[case]
    params = _zoo.nest(_arrays(shapes)) if shapes else _arrays(SHAPES)
    testing.check_optax_compatibility(factory, kwargs, params, static_args=static)
