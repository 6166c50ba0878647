"""Communication / compute model of one optimizer step under data parallelism and FSDP, checked
against the collectives XLA actually emits.

Per device and per optimizer step, for a GPT-2-shaped model of ``P`` parameters on ``N``
devices (``w`` bytes per element, float32: 4):

==========================  ==============================  =================================
strategy                    bytes moved per device          optimizer FLOPs per device
==========================  ==============================  =================================
AdamW, DP (replicated)      0                               ``c·P`` (every device, every leaf)
AdamW, FSDP                 0 (elementwise on local shards) ``c·P/N``
Muon, DP (replicated)       0                               ``Σ F(m, n)`` (all matrices)
Muon, FSDP + gather         ``Σ (N−1)/N · b·m·n·w``         ``Σ F(m, n)`` (every device
                            (all-gather every matrix)       orthogonalizes every matrix)
Muon, FSDP + owner-computes ``Σ_groups 2·(N−1)/N·⌈b/N⌉·m·n·w``  ``Σ_groups ⌈b/N⌉·F(m, n)``
                            (all-to-all in, all-to-all out)
symmetry stack, FSDP +      Muon's on the hidden matrices + ``2(N−1)/N·V·w`` (all-reduce of the
owner-computes              vocab-length row norms when the table is sharded along ``d``)
==========================  ==============================  =================================

``F(m, n)`` is :func:`optzoo.linalg.orthogonalizer_flops` (NS5: ``5(4r²c + 2r³)``, ``r, c`` =
min, max), groups are the same-shape stacks of Muon's batched matrix map (``b``
matrices of ``m×n``; owner-computes pads ``b`` to a multiple of ``N`` with zero matrices, whose
bytes and FLOPs the model counts), ``c ≈ 10`` FLOPs per parameter for AdamW's elementwise
update. FSDP places every leaf like :func:`fsdp_axis`: sharded along its largest axis
divisible by ``N``, replicated when none is (a replicated matrix is local to every device: no
bytes in; owner-computes still all-gathers its result). For context, every strategy also pays
the gradient synchronisation of the backward pass: ``2(N−1)/N·P·w`` (DP all-reduce) or
``(N−1)/N·P·w`` reduce-scatter plus ``2·(N−1)/N·P·w`` parameter all-gathers (FSDP, forward
and backward) — the ``grad_sync_bytes`` column.

Bytes moved per collective (ring algorithms, group size ``G``, ``S`` = result bytes on one
device): all-reduce ``2(G−1)/G·S``; all-gather ``(G−1)/G·S``; reduce-scatter ``(G−1)·S``;
all-to-all ``(G−1)/G·S``; collective-permute ``S``. :func:`hlo_collectives` applies the same
rules to the compiled HLO of a jitted, sharded optimizer step, which is how ``--check``
compares the model with what XLA emits on 8 (forced host) devices. XLA's automatic SPMD
partitioning of the orthogonalizer *without* owner-computes does not gather matrices: it
partitions every Newton–Schulz product and all-reduces / all-gathers ``r×r`` blocks at every
iteration; that strategy is measured (``muon_xla_auto``), not modelled. Not modelled either:
the symmetry stack's head-wise views of row-sharded ``o_proj`` kernels (``H·d_h`` rows split
into heads across the sharded axis), which XLA all-gathers before the all-to-all.

Usage::

    python -m experiments.bench.comm_model                      # model table (markdown + JSON)
    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python -m experiments.bench.comm_model --check          # model vs compiled HLO
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Iterable
from typing import Any

from experiments.bench import write_result

__all__ = [
    "GPT2_SIZES",
    "Matrix",
    "gpt2_leaves",
    "fsdp_axis",
    "model_step",
    "grad_sync_bytes",
    "hlo_collectives",
    "model_table",
    "check",
    "main",
]

#: GPT-2 family (d_model, n_layers); vocabulary 50257, context 1024, d_ff = 4 d, head dim 64.
GPT2_SIZES = {"small": (768, 12), "medium": (1024, 24), "large": (1280, 36), "xl": (1600, 48)}
ADAMW_FLOPS_PER_PARAM = 10
OPTIMIZERS = ("adamw", "muon", "symmetric")
STRATEGIES = ("dp", "fsdp_gather", "fsdp_owner")


@dataclasses.dataclass(frozen=True)
class Matrix:
    """One parameter leaf as the optimizer sees it.

    Attributes:
      path: parameter path.
      shape: leaf shape.
      kind: ``'spectral'`` (orthogonalized: needs whole ``m×n`` matrices), ``'rownorm'``
        (normalized along ``axis``: row norms) or ``'elementwise'`` (AdamW).
      view: ``(b, m, n)``: the stack of matrices the orthogonalizer sees (``spectral``).
      axis: the reduced axis of a ``rownorm`` leaf.
    """

    path: str
    shape: tuple[int, ...]
    kind: str
    view: tuple[int, int, int] | None = None
    axis: int | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def gpt2_leaves(
    d_model: int,
    n_layers: int,
    optimizer: str,
    *,
    vocab: int = 50257,
    context: int = 1024,
    head_dim: int = 64,
) -> list[Matrix]:
    """The leaves of a GPT-2-shaped model (separate q/k/v, tied embedding) as ``optimizer``
    treats them: AdamW everything elementwise; Muon the block matrices spectrally, the rest
    by its AdamW fallback; the symmetry stack (``'paper'`` preset) the embedding by row norms,
    attention head-wise (``H`` blocks ``d×d_head``, ``d_head×d`` for ``o``), the MLP as Muon.

    Raises:
      ValueError: an unknown optimizer, or ``d_model`` not a multiple of ``head_dim``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"gpt2_leaves: optimizer={optimizer!r}; expected one of {OPTIMIZERS}")
    if d_model % head_dim:
        raise ValueError(f"gpt2_leaves: d_model={d_model} is not a multiple of head_dim={head_dim}")
    d, f, h = d_model, 4 * d_model, d_model // head_dim
    out = [Matrix("pos_embed/embedding", (context, d), "elementwise")]
    if optimizer == "symmetric":
        out.append(Matrix("embed/embedding", (vocab, d), "rownorm", axis=1))
    else:
        out.append(Matrix("embed/embedding", (vocab, d), "elementwise"))
    for i in range(n_layers):
        for name, shape in (
            ("attn/q_proj", (d, d)),
            ("attn/k_proj", (d, d)),
            ("attn/v_proj", (d, d)),
            ("attn/o_proj", (d, d)),
            ("mlp/fc", (d, f)),
            ("mlp/proj", (f, d)),
        ):
            path = f"layers/{i}/{name}/kernel"
            if optimizer == "adamw":
                out.append(Matrix(path, shape, "elementwise"))
            elif optimizer == "symmetric" and name.startswith("attn/"):
                view = (h, head_dim, d) if name == "attn/o_proj" else (h, d, head_dim)
                out.append(Matrix(path, shape, "spectral", view=view))
            else:
                out.append(Matrix(path, shape, "spectral", view=(1, *shape)))
            out.append(Matrix(f"layers/{i}/{name}/bias", (shape[1],), "elementwise"))
        for ln in ("ln_1", "ln_2"):
            out += [Matrix(f"layers/{i}/{ln}/{p}", (d,), "elementwise") for p in ("scale", "bias")]
    out += [Matrix(f"ln_f/{p}", (d,), "elementwise") for p in ("scale", "bias")]
    return out


def fsdp_axis(shape: tuple[int, ...], n: int) -> int | None:
    """The axis FSDP shards over ``n`` devices: the harness's rule
    (:func:`experiments.sharding.fsdp_axis`: the largest axis divisible by ``n``, the first of
    equal ones; ``None`` (replicated) when no axis is or ``n == 1``) without its minimum leaf
    size, so that every leaf of the model is placed the same way."""
    from experiments.sharding import fsdp_axis as harness_rule

    return harness_rule(shape, n, min_size=0)


def _ortho_flops(view: tuple[int, int, int], method: str, steps: int) -> int:
    from optzoo import linalg

    return linalg.orthogonalizer_flops(view, method, steps)


def model_step(
    leaves: Iterable[Matrix],
    strategy: str,
    n: int,
    *,
    bytes_per: int = 4,
    method: str = "newton_schulz",
    steps: int = 5,
) -> dict[str, float]:
    """Bytes moved and FLOPs per device of one optimizer step (see the module docstring).

    Returns:
      ``{'bytes', 'flops', 'all_gather', 'all_to_all', 'all_reduce'}`` (bytes per device by
      collective kind; FLOPs: matmuls of the orthogonalizer plus ``c`` per elementwise entry).

    Raises:
      ValueError: an unknown strategy or ``n < 1``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"model_step: strategy={strategy!r}; expected one of {STRATEGIES}")
    if n < 1:
        raise ValueError(f"model_step: n={n} devices; expected >= 1")
    leaves = list(leaves)
    frac = (n - 1) / n
    out = {"all_gather": 0.0, "all_to_all": 0.0, "all_reduce": 0.0, "flops": 0.0}
    sharded = strategy != "dp"
    groups: dict[tuple[int, int], list[Matrix]] = {}
    for leaf in leaves:
        ax = fsdp_axis(leaf.shape, n) if sharded else None
        if leaf.kind == "elementwise":
            out["flops"] += ADAMW_FLOPS_PER_PARAM * leaf.size / (n if ax is not None else 1)
        elif leaf.kind == "rownorm":
            out["flops"] += 4 * leaf.size / (n if ax is not None else 1)
            if ax is not None and ax == leaf.axis:  # partial norms of every row: all-reduce
                units = leaf.size // leaf.shape[leaf.axis]
                out["all_reduce"] += 2 * frac * units * 4
        elif strategy == "fsdp_owner":
            groups.setdefault(leaf.view[1:], []).append(leaf)
        else:
            if ax is not None:  # gather: every device needs the whole matrix
                out["all_gather"] += frac * leaf.size * bytes_per
            out["flops"] += _ortho_flops(leaf.view, method, steps)
    for (m, k), members in groups.items():
        b = sum(leaf.view[0] for leaf in members)
        per_device = math.ceil(b / n)
        block = per_device * n * m * k * bytes_per  # the padded stack
        any_sharded = any(fsdp_axis(leaf.shape, n) is not None for leaf in members)
        if any_sharded:
            out["all_to_all"] += 2 * frac * block / n
        else:
            out["all_gather"] += frac * block
        out["flops"] += _ortho_flops((per_device, m, k), method, steps)
    out["bytes"] = out["all_gather"] + out["all_to_all"] + out["all_reduce"]
    return out


def grad_sync_bytes(n_params: int, strategy: str, n: int, bytes_per: int = 4) -> float:
    """Per-device bytes of the backward pass's gradient synchronisation (and FSDP's parameter
    all-gathers), for context: DP ``2(N−1)/N·P·w``, FSDP ``3(N−1)/N·P·w``."""
    frac = (n - 1) / n
    return (2 if strategy == "dp" else 3) * frac * n_params * bytes_per


# ----------------------------------------------------------------------------- HLO
_COLLECTIVE = re.compile(
    r"=\s*(?P<shape>\([^)]*\)|[a-z0-9]+\[[^\]]*\](?:\{[^}]*\})?)\s*"
    r"(?P<op>all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)"
    r"(?P<start>-start)?\("
)
_ARRAY = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")
_ITEMSIZE = {
    "f64": 8,
    "f32": 4,
    "bf16": 2,
    "f16": 2,
    "s32": 4,
    "u32": 4,
    "s64": 8,
    "u64": 8,
    "s8": 1,
    "u8": 1,
    "pred": 1,
    "s16": 2,
    "u16": 2,
}


def _shape_bytes(text: str) -> list[int]:
    return [
        math.prod(int(x) for x in dims.split(",") if x) * _ITEMSIZE[dt]
        for dt, dims in _ARRAY.findall(text)
        if dt in _ITEMSIZE
    ]


def _group_size(line: str, n_devices: int) -> int:
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
    if m:
        sizes = dict(
            (k.strip("'"), int(v)) for k, v in (kv.split("=") for kv in m.group(1).split(","))
        )
        return math.prod(sizes[a.strip().strip("'")] for a in m.group(2).split(","))
    m = re.search(r"replica_groups=\[([0-9,]+)\]<=", line)
    if m:
        return int(m.group(1).split(",")[-1])
    m = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
    if m:
        return len(m.group(1).split(","))
    if "source_target_pairs" in line:
        return 2
    return n_devices


def hlo_collectives(hlo_text: str, n_devices: int) -> list[dict[str, Any]]:
    """The collectives of a compiled (SPMD, per-device) HLO module with the bytes each moves
    per device (module docstring's rules).

    Returns:
      ``[{'op', 'group', 'result_bytes', 'bytes'}]`` in program order.
    """
    out = []
    for line in hlo_text.splitlines():
        m = _COLLECTIVE.search(line)
        if not m:
            continue
        op, sizes = m.group("op"), _shape_bytes(m.group("shape"))
        if m.group("start") and op in ("all-gather", "collective-permute") and len(sizes) > 1:
            sizes = sizes[len(sizes) // 2 :]  # (operands, results) tuple: the results
        s = sum(sizes)
        g = _group_size(line, n_devices)
        frac = (g - 1) / g
        moved = {
            "all-reduce": 2 * frac * s,
            "all-gather": frac * s,
            "reduce-scatter": (g - 1) * s,
            "all-to-all": frac * s,
            "collective-permute": s,
        }[op]
        out.append({"op": op, "group": g, "result_bytes": s, "bytes": moved})
    return out


def _summed(colls: list[dict[str, Any]]) -> dict[str, float]:
    out = {
        "all_gather": 0.0,
        "all_to_all": 0.0,
        "all_reduce": 0.0,
        "reduce_scatter": 0.0,
        "collective_permute": 0.0,
    }
    for c in colls:
        out[c["op"].replace("-", "_")] += c["bytes"]
    out["bytes"] = sum(out.values())
    return out


# ----------------------------------------------------------------------------- table
def model_table(
    sizes: Iterable[str] = tuple(GPT2_SIZES),
    devices: Iterable[int] = (8, 64, 256),
    *,
    method: str = "newton_schulz",
    steps: int = 5,
) -> list[dict[str, Any]]:
    """One row per (model size, device count): parameters, gradient-sync bytes, and bytes /
    FLOPs per device of AdamW (FSDP), Muon (DP, FSDP+gather, FSDP+owner) and the symmetry stack
    (FSDP+owner)."""
    rows = []
    for size in sizes:
        d, layers = GPT2_SIZES[size]
        trees = {o: gpt2_leaves(d, layers, o) for o in OPTIMIZERS}
        n_params = sum(leaf.size for leaf in trees["adamw"])
        for n in devices:
            row = {
                "model": f"gpt2-{size}",
                "params": n_params,
                "devices": n,
                "grad_sync_fsdp_bytes": grad_sync_bytes(n_params, "fsdp", n),
            }
            for opt, strat in (
                ("adamw", "fsdp_gather"),
                ("muon", "dp"),
                ("muon", "fsdp_gather"),
                ("muon", "fsdp_owner"),
                ("symmetric", "fsdp_owner"),
            ):
                r = model_step(trees[opt], strat, n, method=method, steps=steps)
                key = "adamw_fsdp" if opt == "adamw" else f"{opt}_{strat}"
                row[f"{key}_bytes"], row[f"{key}_flops"] = r["bytes"], r["flops"]
            rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: GiB/MiB moved and GFLOP per device per optimizer step."""
    head = (
        "| model | params | N | grad sync (FSDP) | AdamW FSDP | Muon DP | Muon FSDP+gather "
        "| Muon FSDP+owner | symmetric FSDP+owner |\n|---|---|---|---|---|---|---|---|---|"
    )

    def cell(r, key):
        return f"{r[key + '_bytes'] / 2**20:,.1f} MiB / {r[key + '_flops'] / 1e9:,.1f} GF"

    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:,.0f} M | {r['devices']} "
            f"| {r['grad_sync_fsdp_bytes'] / 2**20:,.0f} MiB | {cell(r, 'adamw_fsdp')} "
            f"| {cell(r, 'muon_dp')} | {cell(r, 'muon_fsdp_gather')} "
            f"| {cell(r, 'muon_fsdp_owner')} | {cell(r, 'symmetric_fsdp_owner')} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- check
def _abstract_tree(leaves: list[Matrix]) -> dict:
    import jax
    import jax.numpy as jnp

    tree: dict = {}
    for leaf in leaves:
        node = tree
        *parents, name = leaf.path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = jax.ShapeDtypeStruct(leaf.shape, jnp.float32)
    return tree


def _optimizer(name: str, mesh: Any, owner: bool, head_dim: int) -> Any:
    import optax

    import optzoo
    from experiments.bench.trees import hidden_layout

    oc = optzoo.OwnerComputes(mesh) if owner else None
    if name == "adamw":
        return optax.adamw(1e-3)
    if name == "muon":  # hidden matrices only, as gpt2_leaves models it
        return optzoo.muon(
            0.02, ortho_method="newton_schulz", owner_computes=oc, layout=hidden_layout
        )
    return optzoo.symmetry_compatible(
        0.02, head_dim=head_dim, ortho_method="newton_schulz", owner_computes=oc
    )


def measure(
    optimizer: str, leaves: list[Matrix], mesh: Any, *, owner: bool, head_dim: int = 64
) -> dict[str, Any]:
    """Compiles one FSDP-sharded optimizer step (``tx.update`` + ``apply_updates``; parameters,
    gradients and state sharded like :func:`fsdp_axis`) on ``mesh`` (1-D, axis ``'fsdp'``) and
    returns its collectives summed by kind and XLA's per-device FLOP estimate."""
    import jax
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    n = mesh.devices.size
    params = _abstract_tree(leaves)
    tx = _optimizer(optimizer, mesh, owner, head_dim)

    def spec(x):
        ax = fsdp_axis(x.shape, n)
        parts = [None] * len(x.shape)
        if ax is not None:
            parts[ax] = "fsdp"
        return NamedSharding(mesh, P(*parts))

    p_sh = jax.tree.map(spec, params)
    state = jax.eval_shape(tx.init, params)
    s_sh = jax.tree.map(lambda x: spec(x) if x.ndim else NamedSharding(mesh, P()), state)

    def step(grads, opt_state, p):
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    compiled = (
        jax.jit(step, in_shardings=(p_sh, s_sh, p_sh), out_shardings=(p_sh, s_sh))
        .lower(params, state, params)
        .compile()
    )
    colls = hlo_collectives(compiled.as_text(), n)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return {
        **_summed(colls),
        "flops": float(cost.get("flops", float("nan"))) if cost else None,
        "collectives": len(colls),
    }


def check(d_model: int = 256, n_layers: int = 2, vocab: int = 1000) -> list[dict[str, Any]]:
    """Model vs compiled HLO on every device of this process (a 1-D ``'fsdp'`` mesh) for a
    small GPT-2-shaped tree: AdamW, Muon with/without owner-computes, the symmetry stack with
    owner-computes."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    mesh = Mesh(np.asarray(jax.devices()), ("fsdp",))
    n = mesh.devices.size
    rows = []
    for opt, owner, strat in (
        ("adamw", False, "fsdp_gather"),
        ("muon", True, "fsdp_owner"),
        ("muon", False, None),
        ("symmetric", True, "fsdp_owner"),
    ):
        leaves = gpt2_leaves(d_model, n_layers, opt, vocab=vocab, context=128)
        got = measure(opt, leaves, mesh, owner=owner)
        want = model_step(leaves, strat, n) if strat else None
        name = f"{opt}_{'owner' if owner else ('xla_auto' if opt != 'adamw' else 'fsdp')}"
        rows.append({"case": name, "devices": n, "measured": got, "model": want})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--check",
        action="store_true",
        help="compile sharded steps on this process's devices and compare",
    )
    p.add_argument("--out", default=None, help="write the JSON result here")
    args = p.parse_args(argv)
    result: dict[str, Any] = {"table": model_table()}
    print(format_table(result["table"]))
    if args.check:
        result["check"] = check()
        for r in result["check"]:
            m, w = r["measured"], r["model"]
            mb = f"{m['bytes'] / 2**20:.3f} MiB ({m['collectives']} collectives)"
            wb = "not modelled" if w is None else f"{w['bytes'] / 2**20:.3f} MiB"
            print(
                f"{r['case']:>20} N={r['devices']}: measured {mb}, model {wb}; "
                f"XLA flops {m['flops']:.3g}"
                + ("" if w is None else f", model flops {w['flops']:.3g}")
            )
    if args.out:
        write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
