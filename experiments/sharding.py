"""Device mesh and partition specs: FSDP (ZeRO-3) and tensor parallelism for the harness.

The mesh has three named axes, ``('dp', 'fsdp', 'tp')`` (:data:`AXES`), sized by
:class:`~experiments.configs.ShardingConfig` (``dp=-1`` takes the devices left). Devices are
laid out in process-major order (``tp`` innermost), so the ``dp x fsdp`` batch blocks of one
process are contiguous rows of the global batch, which is what the per-process data loader
delivers (:func:`check_batch_layout`).

What lives where (:func:`param_specs`, :func:`opt_state_specs`):

* **Batch**: sharded over ``('dp', 'fsdp')`` (:data:`BATCH_AXES`), replicated over ``tp``.
* **Parameters**: replicated over ``dp``. First a user rule (``ShardingConfig.rules``,
  ``(regex, spec)``, the first regex found in the '/'-joined path wins) gives the whole spec.
  Otherwise the routing role (``optzoo.routing``) decides the ``tp`` axis, Megatron style:
  ``attn_q/k/v/qkv``, ``mlp_gate/up/gate_up``, ``expert_gate_up`` are column-parallel (their
  first fan-out axis on ``'tp'``), ``attn_o``, ``mlp_down``, ``expert_down`` row-parallel
  (first fan-in axis on ``'tp'``), ``embedding`` ``(V, d)`` and ``lm_head`` ``(d, V)`` are
  split along the vocabulary; routers, norms, biases and other matrices are replicated on
  ``'tp'``. Then FSDP: a leaf of at least :data:`FSDP_MIN_SIZE` elements is split along its
  largest axis that ``tp`` left free and ``fsdp`` divides (the first such axis on ties);
  smaller leaves (norm scales, biases) and leaves with no divisible free axis stay
  replicated on ``'fsdp'`` (listed by :func:`spec_table`). Axes of size 1 are left out of
  the default specs.
* **Optimizer state**: a leaf that mirrors a parameter (its key path ends with the
  parameter's path and it has the parameter's shape: Adam moments, Muon momentum) gets the
  parameter's spec; a per-parameter leaf in another shape (the symmetric stack's head-wise
  ``(H, d, d_h)`` momentum views) gets the FSDP rule applied to its own shape; everything
  else (step counters, guard counters, scalars) is replicated. This path matching is used
  instead of ``optax.tree_map_params`` because that calls ``init`` on a placeholder
  without shapes, which routing-based partitions (Muon, the symmetric stack) cannot take.

GSPMD keeps the computation exact whatever the specs (only communication changes), so a
sharded run equals a single-device one up to float reduction order.

Errors (``ValueError``, raised before a run writes anything) name the field: a mesh whose
sizes do not multiply to the device count (``ShardingConfig.dp/fsdp/tp``), a ``tp`` size or
user spec that does not divide a dimension it must shard (parameter path, mesh axis,
dimension index and size), a user rule that matches no parameter, a malformed spec string or
regex (``ShardingConfig.rules[i]``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.configs import ShardingConfig
from experiments.configs.checks import MESH_AXES, check_rules, parse_spec
from optzoo import routing

__all__ = [
    "AXES",
    "BATCH_AXES",
    "FSDP_MIN_SIZE",
    "fsdp_axis",
    "mesh_shape",
    "make_mesh",
    "parse_spec",
    "check_rules",
    "path_str",
    "param_specs",
    "opt_state_specs",
    "named_shardings",
    "bytes_per_device",
    "spec_table",
    "check_batch_layout",
]

#: Mesh axis names, outermost first.
AXES = MESH_AXES
#: Mesh axes the batch dimension is sharded over.
BATCH_AXES = ("dp", "fsdp")
#: Leaves with fewer elements stay replicated on ``'fsdp'`` (norm scales, biases, counters):
#: gathering them costs a collective each for no memory worth saving.
FSDP_MIN_SIZE = 1024

#: Routing roles whose first fan-out axis is sharded on 'tp' (column-parallel).
_COLUMN_ROLES = (
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_qkv",
    "mlp_gate",
    "mlp_up",
    "mlp_gate_up",
    "expert_gate_up",
)
#: Routing roles whose first fan-in axis is sharded on 'tp' (row-parallel).
_ROW_ROLES = ("attn_o", "mlp_down", "expert_down")
#: Vocabulary axis of the token table (V, d) and the LM head (d, V).
_VOCAB_AXIS = {"embedding": 0, "lm_head": -1}


# ----------------------------------------------------------------------------- mesh
def mesh_shape(cfg: ShardingConfig, n_devices: int) -> dict[str, int]:
    """``{'dp', 'fsdp', 'tp'}`` sizes for ``n_devices`` devices (``dp=-1`` resolved).

    Raises:
      ValueError: the sizes do not multiply to ``n_devices`` (names the fields).
    """
    inner = cfg.fsdp * cfg.tp
    dp = cfg.dp
    if dp == -1:
        if n_devices % inner:
            raise ValueError(
                f"ShardingConfig.fsdp={cfg.fsdp} x tp={cfg.tp} = {inner} does not "
                f"divide the {n_devices} devices (dp=-1 takes the devices left)"
            )
        dp = n_devices // inner
    if dp * inner != n_devices:
        raise ValueError(
            f"ShardingConfig: dp={dp} x fsdp={cfg.fsdp} x tp={cfg.tp} = "
            f"{dp * inner} devices, but there are {n_devices} (use dp=-1 to take "
            "the devices left)"
        )
    return {"dp": dp, "fsdp": cfg.fsdp, "tp": cfg.tp}


def make_mesh(cfg: ShardingConfig | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """The ``('dp', 'fsdp', 'tp')`` mesh of ``cfg`` (default: every device on ``dp``) over
    ``devices`` (default: every device of every process), in process-major order with ``tp``
    innermost.

    Raises:
      ValueError: the axis sizes do not multiply to the device count (named fields).
    """
    devs = list(jax.devices() if devices is None else devices)
    devs.sort(key=lambda d: (d.process_index, d.id))
    shape = mesh_shape(ShardingConfig() if cfg is None else cfg, len(devs))
    return Mesh(np.asarray(devs, dtype=object).reshape([shape[a] for a in AXES]), AXES)


def check_batch_layout(mesh: Mesh, global_batch: int) -> None:
    """Checks that this process's devices hold rows ``[p B/P, (p+1) B/P)`` of a batch
    sharded over :data:`BATCH_AXES` (what ``TokenLoader`` gives process ``p`` of ``P``).

    Raises:
      ValueError: a ``tp`` group spans processes (``ShardingConfig.tp`` larger than the local
        device count), so processes would have to feed the same rows.
    """
    sharding = NamedSharding(mesh, P(BATCH_AXES))
    index_map = sharding.addressable_devices_indices_map((global_batch,))
    rows = sorted({(s[0].start or 0, s[0].stop or global_batch) for s in index_map.values()})
    count, index = jax.process_count(), jax.process_index()
    per = global_batch // count
    covered = sorted(r for a, b in rows for r in range(a, b))
    if covered != list(range(index * per, (index + 1) * per)):
        raise ValueError(
            f"ShardingConfig: process {index} of {count} holds batch rows "
            f"{rows}, not the contiguous block [{index * per}, {(index + 1) * per})"
            f" its data loader reads; keep ShardingConfig.tp={mesh.shape['tp']} a "
            f"divisor of the local device count ({jax.local_device_count()})"
        )


# ----------------------------------------------------------------------------- specs
def path_str(path: tuple) -> str:
    """The '/'-joined key path of a leaf (DictKey/GetAttrKey/SequenceKey names) that partition
    rules are matched against, a trailing ``/value`` (the ``nnx.Variable`` level that
    ``nnx.Optimizer`` hands optax at ``init``) dropped."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    s = "/".join(parts)
    return s[: -len("/value")] if s.endswith("/value") else s


def _entry_size(entry: Any, sizes: dict[str, int]) -> int:
    if entry is None:
        return 1
    names = (entry,) if isinstance(entry, str) else entry
    return math.prod(sizes[n] for n in names)


def fsdp_axis(
    shape: Sequence[int], fsdp: int, *, taken: Collection[int] = (), min_size: int = FSDP_MIN_SIZE
) -> int | None:
    """The FSDP rule: the largest axis not in ``taken`` divisible by ``fsdp`` (first on ties);
    ``None`` (replicated) when there is none, ``fsdp == 1`` or the leaf has fewer than
    ``min_size`` elements."""
    if fsdp == 1 or math.prod(shape) < min_size:
        return None
    best = None
    for axis, dim in enumerate(shape):
        if axis not in taken and dim % fsdp == 0 and (best is None or dim > shape[best]):
            best = axis
    return best


def _tp_axis(path: str, shape: tuple[int, ...]) -> int | None:
    """The axis the role of ``path`` puts on 'tp' (non-negative), or None (replicated)."""
    rule = routing.rule_for(path, shape)
    if rule.role in _VOCAB_AXIS:
        return _VOCAB_AXIS[rule.role] % len(shape)
    if rule.role in _COLUMN_ROLES or rule.role in _ROW_ROLES:
        layout = rule.matrix_layout(path, shape)
        axes = layout.output_axes if rule.role in _COLUMN_ROLES else layout.reduction_axes
        return axes[0] % len(shape)
    return None


def _default_spec(path: str, shape: tuple[int, ...], sizes: dict[str, int]) -> P:
    entries: list[Any] = [None] * len(shape)
    if sizes["tp"] > 1:
        axis = _tp_axis(path, shape)
        if axis is not None:
            if shape[axis] % sizes["tp"]:
                raise ValueError(
                    f"ShardingConfig.tp={sizes['tp']} does not divide dimension "
                    f"{axis} (size {shape[axis]}) of parameter '{path}' {shape}, "
                    "which tensor parallelism shards on mesh axis 'tp'"
                )
            entries[axis] = "tp"
    taken = {i for i, e in enumerate(entries) if e is not None}
    axis = fsdp_axis(shape, sizes["fsdp"], taken=taken)
    if axis is not None:
        entries[axis] = "fsdp"
    return P(*entries) if any(e is not None for e in entries) else P()


def _rule_spec(
    i: int, rule: tuple[str, str], path: str, shape: tuple[int, ...], sizes: dict[str, int]
) -> P:
    where = f"ShardingConfig.rules[{i}]"
    entries = parse_spec(rule[1], where)
    if entries is None:
        return P()
    if len(entries) != len(shape):
        raise ValueError(
            f"{where} = {rule!r} matches parameter '{path}' of shape {shape}: the "
            f"spec has {len(entries)} entries, the parameter {len(shape)} axes"
        )
    for axis, entry in enumerate(entries):
        size = _entry_size(entry, sizes)
        if shape[axis] % size:
            raise ValueError(
                f"{where} = {rule!r}: mesh axis {entry!r} (size {size}) does not "
                f"divide dimension {axis} (size {shape[axis]}) of parameter "
                f"'{path}' {shape}"
            )
    return P(*entries)


def _sizes(mesh: Any) -> dict[str, int]:
    shape = dict(mesh.shape)
    missing = [a for a in AXES if a not in shape]
    if missing:
        raise ValueError(
            f"sharding: the mesh has axes {tuple(shape)}; expected {AXES} "
            "(build it with experiments.sharding.make_mesh)"
        )
    return {a: int(shape[a]) for a in AXES}


def param_specs(params: Any, cfg: ShardingConfig, mesh: Any) -> Any:
    """A tree (structure of ``params``) of ``PartitionSpec``: user rules, then the role
    defaults (module docstring). ``params`` holds arrays or ``jax.ShapeDtypeStruct`` s;
    ``mesh`` is a :class:`~jax.sharding.Mesh` or ``AbstractMesh`` with :data:`AXES`.

    Raises:
      ValueError: a size that does not divide a dimension it must shard, a rule whose spec
        rank differs from a parameter it matches, a rule that matches no parameter (each
        naming the field, the parameter path, the axis and the sizes).
    """
    sizes = _sizes(mesh)
    check_rules(cfg.rules)
    patterns = [re.compile(pattern) for pattern, _ in cfg.rules]
    used = [False] * len(cfg.rules)

    def one(key_path, leaf):
        path, shape = path_str(key_path), tuple(int(d) for d in np.shape(leaf))
        for i, pattern in enumerate(patterns):
            if pattern.search(path):
                used[i] = True
                return _rule_spec(i, cfg.rules[i], path, shape, sizes)
        return _default_spec(path, shape, sizes)

    specs = jax.tree_util.tree_map_with_path(one, params)
    for i, hit in enumerate(used):
        if not hit:
            raise ValueError(
                f"ShardingConfig.rules[{i}] = {cfg.rules[i]!r} matches no "
                "parameter path (paths look like 'layers/0/attn/q_proj/kernel')"
            )
    return specs


def _param_index(params: Any, specs: Any) -> dict[str, tuple[tuple[int, ...], P]]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    return {
        path_str(p): (tuple(np.shape(x)), s) for (p, x), s in zip(flat, spec_leaves, strict=True)
    }


def _mirrored(path: str, index: dict) -> tuple[tuple[int, ...], P] | None:
    """The (shape, spec) of the parameter whose path is a '/'-suffix of ``path``."""
    parts = path.split("/")
    for start in range(len(parts)):
        hit = index.get("/".join(parts[start:]))
        if hit is not None:
            return hit
    return None


def opt_state_specs(opt_state: Any, params: Any, specs: Any, mesh: Any) -> Any:
    """A tree (structure of ``opt_state``) of ``PartitionSpec`` (module docstring: mirrored
    leaves take the parameter's spec, reshaped per-parameter leaves the FSDP rule on their own
    shape, the rest is replicated). ``specs`` is :func:`param_specs` of ``params``."""
    sizes = _sizes(mesh)
    index = _param_index(params, specs)

    def one(key_path, leaf):
        shape = tuple(int(d) for d in np.shape(leaf))
        hit = _mirrored(path_str(key_path), index)
        if hit is None:
            return P()
        if hit[0] == shape:
            return hit[1]
        axis = fsdp_axis(shape, sizes["fsdp"])
        return (
            P() if axis is None else P(*["fsdp" if a == axis else None for a in range(len(shape))])
        )

    return jax.tree_util.tree_map_with_path(one, opt_state)


def named_shardings(specs: Any, mesh: Mesh) -> Any:
    """``NamedSharding(mesh, spec)`` for every ``PartitionSpec`` leaf of ``specs``."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


# ----------------------------------------------------------------------------- reports
def bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of ``tree`` (arrays or ``ShapeDtypeStruct`` s with a
    ``sharding``; leaves without one count whole): the sum of each leaf's shard size
    (``sharding.shard_shape``). With even sharding every device of the mesh holds the same."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = tuple(np.shape(leaf))
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None and shape:
            shape = tuple(sharding.shard_shape(shape))
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return int(total)


def spec_table(params: Any, specs: Any) -> dict[str, str]:
    """``{parameter path: 'shape -> spec'}`` for the run manifest."""
    return {
        path: f"{shape} -> {spec}" for path, (shape, spec) in _param_index(params, specs).items()
    }
