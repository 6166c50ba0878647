"""Tests of experiments.sharding (mesh, partition specs, optimizer-state specs, byte counts,
errors) and of multi-host training: two processes on localhost through jax.distributed
(gloo CPU collectives) train, checkpoint from both processes, and a relaunch resumes to the
uninterrupted run's records.

Spec tests use ``jax.sharding.AbstractMesh`` (no devices needed); the sharded training runs
themselves (8 forced host devices vs one device) are in ``tests/test_train.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from experiments import metrics, models, train
from experiments import optimizers as O
from experiments import sharding as S
from experiments.configs import ShardingConfig, get_config

REPO = Path(__file__).resolve().parents[1]


def _params(preset: str = "tiny"):
    return nnx.state(models.build(get_config(preset).model_config(), abstract=True), nnx.Param)


def _specs(cfg: ShardingConfig, mesh_sizes: tuple[int, int, int], preset: str = "tiny"):
    params = _params(preset)
    specs = S.param_specs(params, cfg, AbstractMesh(mesh_sizes, S.AXES))
    return {
        S.path_str(p): s
        for (p, _), s in zip(
            jax.tree_util.tree_flatten_with_path(params)[0],
            jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)),
            strict=True,
        )
    }


# ----------------------------------------------------------------------------- specs
def test_tensor_parallel_and_fsdp_follow_the_roles():
    specs = _specs(ShardingConfig(fsdp=4, tp=2), (1, 4, 2))
    # tiny: q (128, 128), k/v (128, 64), o (128, 128), gate/up (128, 384), down (384, 128),
    # embedding (256, 128), head (128, 256); Megatron: column-parallel q/k/v/gate/up, row-
    # parallel o/down, vocabulary on tp; FSDP takes the remaining axis
    for name in ("attn/q_proj", "attn/k_proj", "attn/v_proj", "mlp/gate_proj", "mlp/up_proj"):
        assert specs[f"layers/1/{name}/kernel"] == P("fsdp", "tp"), name
    for name in ("attn/o_proj", "mlp/down_proj"):
        assert specs[f"layers/0/{name}/kernel"] == P("tp", "fsdp"), name
    assert specs["embed/embedding"] == P("tp", "fsdp")
    assert specs["lm_head/kernel"] == P("fsdp", "tp")
    # norm scales (128 / 32 entries < FSDP_MIN_SIZE) stay replicated
    assert specs["final_norm/scale"] == P() and specs["layers/0/attn/q_norm/scale"] == P()


def test_fsdp_takes_the_largest_divisible_axis():
    specs = _specs(ShardingConfig(fsdp=8), (1, 8, 1))
    assert specs["layers/0/mlp/gate_proj/kernel"] == P(None, "fsdp")  # (128, 384): 384
    assert specs["layers/0/mlp/down_proj/kernel"] == P("fsdp", None)  # (384, 128): 384
    assert specs["layers/0/attn/q_proj/kernel"] == P("fsdp", None)  # tie: the first axis
    assert specs["embed/embedding"] == P("fsdp", None)  # (256, 128): 256
    moe = _specs(ShardingConfig(fsdp=8), (1, 8, 1), "tiny_moe")
    assert moe["layers/0/moe/experts/down_proj"] == P(None, None, "fsdp")  # (8, 64, 128)


def test_router_and_small_leaves():
    moe = _specs(ShardingConfig(fsdp=8, tp=2), (1, 8, 2), "tiny_moe")
    # the router (128, 8), 1,024 elements, is replicated on tp (role 'router') and FSDP-split
    # on its 128 axis
    assert moe["layers/0/moe/router/kernel"] == P("fsdp", None)
    # experts gate/up (8, 128, 64): column-parallel on the 64 fan-out axis, FSDP on the 128
    assert moe["layers/0/moe/experts/gate_proj"] == P(None, "fsdp", "tp")
    assert moe["layers/0/moe/experts/down_proj"] == P(None, "tp", "fsdp")


def test_dp_and_size_one_axes_leave_parameters_replicated():
    specs = _specs(ShardingConfig(), (8, 1, 1))
    assert set(specs.values()) == {P()}


def test_user_rules_come_first():
    rules = (
        ("lm_head/kernel$", "None,tp"),
        (r"^embed/embedding$", ""),
        (r"layers/0/attn/q_proj/kernel$", "fsdp+tp, -"),
    )
    specs = _specs(ShardingConfig(fsdp=4, tp=2, rules=rules), (1, 4, 2))
    assert specs["lm_head/kernel"] == P(None, "tp")
    assert specs["embed/embedding"] == P()
    assert specs["layers/0/attn/q_proj/kernel"] == P(("fsdp", "tp"), None)
    assert specs["layers/1/attn/q_proj/kernel"] == P("fsdp", "tp")  # not matched: defaults


def test_parse_spec():
    assert S.parse_spec("", "w") is None and S.parse_spec("  ", "w") is None
    assert S.parse_spec("None,tp", "w") == (None, "tp")
    assert S.parse_spec("dp+fsdp, -", "w") == (("dp", "fsdp"), None)


# ----------------------------------------------------------------------------- opt state
def test_opt_state_specs_agree_with_optax_tree_map_params():
    """Oracle: for a plain optax.adamw on a plain dict, optax.tree_map_params knows which
    state subtrees are parameter trees; the path matching must give the same specs."""
    params = {
        "w": jax.ShapeDtypeStruct((256, 64), np.float32),
        "b": jax.ShapeDtypeStruct((64,), np.float32),
        "e": {"embedding": jax.ShapeDtypeStruct((64, 32), np.float32)},
    }
    mesh = AbstractMesh((1, 8, 1), S.AXES)
    cfg = ShardingConfig(fsdp=8, rules=(("^b$", "fsdp"),))
    specs = S.param_specs(params, cfg, mesh)
    tx = optax.adamw(1e-3)
    state = jax.eval_shape(tx.init, params)
    want = optax.tree_map_params(
        tx,
        lambda _, s: s,
        state,
        specs,
        transform_non_params=lambda _: P(),
        is_leaf=lambda x: isinstance(x, P),
    )
    got = S.opt_state_specs(state, params, specs, mesh)
    assert jax.tree.leaves(got, is_leaf=lambda x: isinstance(x, P)) == jax.tree.leaves(
        want, is_leaf=lambda x: isinstance(x, P)
    )
    assert specs["w"] == P("fsdp", None) and specs["b"] == P("fsdp")
    # negative control: a state whose moments were replicated would differ from the oracle
    assert jax.tree.leaves(want, is_leaf=lambda x: isinstance(x, P)).count(P()) < len(
        jax.tree.leaves(want, is_leaf=lambda x: isinstance(x, P))
    )


def _opt_specs(preset: str, cfg: ShardingConfig, sizes: tuple):
    tcfg = get_config(preset, smoke=True)
    mcfg = tcfg.model_config()
    params = _params(preset)
    tx = O.build_optimizer(O.with_model_defaults(tcfg.optimizer, mcfg), params, 4)
    state = jax.eval_shape(lambda: nnx.state(nnx.Optimizer(models.build(mcfg), tx, wrt=nnx.Param)))
    mesh = AbstractMesh(sizes, S.AXES)
    specs = S.opt_state_specs(state, params, S.param_specs(params, cfg, mesh), mesh)
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    return [(S.path_str(p), tuple(x.shape), s) for (p, x), s in zip(flat, leaves, strict=True)]


def test_muon_state_mirrors_parameters_and_counters_are_replicated():
    rows = _opt_specs("tiny_muon", ShardingConfig(fsdp=4, tp=2), (1, 4, 2))
    by_path = {p: s for p, _, s in rows}
    mom = [s for p, _, s in rows if p.endswith("/layers/0/attn/o_proj/kernel")]
    assert mom and all(s == P("tp", "fsdp") for s in mom)
    emb = [s for p, _, s in rows if p.endswith("/embed/embedding")]
    assert len(emb) == 2 and all(s == P("tp", "fsdp") for s in emb)  # AdamW mu, nu
    assert by_path["step"] == P() and by_path["opt_state/skipped"] == P()
    assert all(s == P() for p, shape, s in rows if shape == ())


def test_reshaped_per_parameter_state_gets_fsdp_on_its_own_shape():
    rows = _opt_specs("tiny_symmetric", ShardingConfig(fsdp=4), (1, 4, 1))
    # head-wise Muon keeps q's momentum as (H=4, d=128, d_h=32): FSDP on its largest axis
    q = [
        (shape, s)
        for p, shape, s in rows
        if p.endswith("/layers/0/attn/q_proj/kernel") and len(shape) == 3
    ]
    assert q == [((4, 128, 32), P(None, "fsdp", None))]


# ----------------------------------------------------------------------------- bytes
def test_bytes_per_device_uses_shard_shapes():
    mesh = S.make_mesh()
    repl = jax.sharding.NamedSharding(mesh, P())
    tree = {
        "a": jax.ShapeDtypeStruct((4, 8), np.float32, sharding=repl),
        "b": np.zeros((3,), np.int8),
        "c": jax.numpy.zeros((2, 2), np.float16),
    }
    assert S.bytes_per_device(tree) == 4 * 8 * 4 + 3 + 2 * 2 * 2


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fsdp=3), r"ShardingConfig\.fsdp=3 x tp=1 = 3 does not divide the 8 devices"),
        (dict(dp=2, fsdp=2), r"ShardingConfig: dp=2 x fsdp=2 x tp=1 = 4 devices, but there are 8"),
    ],
)
def test_mesh_must_cover_the_devices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.mesh_shape(ShardingConfig(**kwargs), 8)
    assert S.mesh_shape(ShardingConfig(fsdp=4), 8) == {"dp": 2, "fsdp": 4, "tp": 1}


def test_make_mesh_rejects_a_size_the_devices_cannot_hold():
    with pytest.raises(
        ValueError,
        match=r"ShardingConfig\.fsdp=2 x tp=1 = 2 does not divide "
        r"the 1 devices",
    ):
        S.make_mesh(ShardingConfig(fsdp=2))


@pytest.mark.parametrize(
    "cfg, sizes, match",
    [
        (
            ShardingConfig(tp=3),
            (1, 1, 3),
            r"ShardingConfig\.tp=3 does not divide dimension 0 \(size 256\) of parameter "
            r"'embed/embedding' \(256, 128\), which tensor parallelism shards on mesh axis 'tp'",
        ),
        (
            ShardingConfig(fsdp=3, rules=(("q_proj/kernel$", "fsdp,None"),)),
            (1, 3, 1),
            r"ShardingConfig\.rules\[0\] = \('q_proj/kernel\$', 'fsdp,None'\): mesh axis 'fsdp' "
            r"\(size 3\) does not divide dimension 0 \(size 128\) of parameter "
            r"'layers/0/attn/q_proj/kernel'",
        ),
        (
            ShardingConfig(rules=(("q_proj/kernel$", ""), ("no_such_layer", "fsdp"))),
            (1, 1, 1),
            r"ShardingConfig\.rules\[1\] = \('no_such_layer', 'fsdp'\) matches no parameter path",
        ),
        (
            ShardingConfig(rules=(("lm_head", "tp"),)),
            (1, 1, 1),
            r"ShardingConfig\.rules\[0\] .* matches parameter 'lm_head/kernel' of shape "
            r"\(128, 256\): the spec has 1 entries, the parameter 2 axes",
        ),
    ],
)
def test_specs_that_do_not_fit_the_model_are_rejected(cfg, sizes, match):
    with pytest.raises(ValueError, match=match):
        S.param_specs(_params(), cfg, AbstractMesh(sizes, S.AXES))


@pytest.mark.parametrize(
    "rules, match",
    [
        (
            (("q_proj", "fsdp,bogus"),),
            r"ShardingConfig\.rules\[0\]: spec 'fsdp,bogus' has entry "
            r"'bogus'",
        ),
        ((("q_proj", "fsdp,,tp"),), r"ShardingConfig\.rules\[0\]: spec 'fsdp,,tp' has entry ''"),
        (
            (("a", ""), ("b", "fsdp,fsdp")),
            r"ShardingConfig\.rules\[1\]: spec 'fsdp,fsdp' uses mesh "
            r"axis \['fsdp'\] more than once",
        ),
        ((("q_proj(", "fsdp"),), r"ShardingConfig\.rules\[0\]: invalid regex 'q_proj\('"),
    ],
)
def test_malformed_rules_are_rejected_at_construction(rules, match):
    with pytest.raises(ValueError, match=match):
        ShardingConfig(rules=rules)


def test_bad_sizes_are_rejected_at_construction():
    with pytest.raises(ValueError, match=r"ShardingConfig\.fsdp=0; expected an int >= 1"):
        ShardingConfig(fsdp=0)
    with pytest.raises(ValueError, match=r"ShardingConfig\.dp=0; expected an int >= 1"):
        ShardingConfig(dp=0)
    with pytest.raises(TypeError, match=r"ShardingConfig\.tp='2' has type str"):
        ShardingConfig(tp="2")
    with pytest.raises(TypeError, match=r"ShardingConfig\.rules\[0\]"):
        ShardingConfig(rules=(("x",),))


@pytest.mark.parametrize(
    "sharding, match",
    [
        (ShardingConfig(fsdp=2), r"ShardingConfig\.fsdp=2"),
        (ShardingConfig(rules=(("nothing_here", ""),)), r"ShardingConfig\.rules\[0\]"),
    ],
)
def test_bad_sharding_fails_before_anything_is_written(sharding, match, tmp_path):
    cfg = dataclasses.replace(get_config("tiny", smoke=True), sharding=sharding)
    wd = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        train.train_and_evaluate(cfg, wd)
    assert not wd.exists()


def test_owner_computes_is_offered_to_orthogonalizers_only():
    assert O.supports_owner_computes(get_config("tiny_muon").optimizer)
    assert O.supports_owner_computes(get_config("tiny_symmetric").optimizer)
    assert not O.supports_owner_computes(get_config("tiny").optimizer)
    import optzoo

    oc = optzoo.OwnerComputes(S.make_mesh())
    assert oc.num_owners == 1
    with pytest.raises(ValueError, match=r"optimizer 'adamw' takes no owner_computes"):
        O.build_optimizer(get_config("tiny").optimizer, _params(), 4, owner_computes=oc)


# ----------------------------------------------------------------------------- multi-host
_CRASH_SCRIPT = textwrap.dedent("""
    import dataclasses, sys
    from experiments import cli, train
    cli.initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))
    from experiments.configs import ShardingConfig, get_config

    class Crash(Exception):
        pass

    def crash(step, record):
        if step == 3:
            raise Crash()

    cfg = dataclasses.replace(get_config("tiny", smoke=True), sharding=ShardingConfig(fsdp=4))
    try:
        train.train_and_evaluate(cfg, sys.argv[3], on_step=crash)
    except Crash:
        print("crashed after step 3")
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch_pair(args_of) -> list[str]:
    """Runs two processes (2 forced host devices each) to completion; their stdouts."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        JAX_PLATFORMS="cpu",
    )
    coordinator = f"localhost:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, *args_of(coordinator, i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return outs


def _cli(workdir: Path):
    def args(coordinator: str, i: int) -> list[str]:
        return [
            "-m",
            "experiments.train",
            "--preset",
            "tiny",
            "--smoke",
            "--workdir",
            str(workdir),
            "--distributed",
            "--coordinator",
            coordinator,
            "--num-processes",
            "2",
            "--process-id",
            str(i),
            "--sharding.fsdp",
            "4",
        ]

    return args


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume(tmp_path):
    """Two processes x 2 host devices, FSDP over all 4 (parameters split across the
    processes): the uninterrupted run; a run crashed after step 3 (checkpoint at 2 written by
    both processes) and relaunched through the CLI reproduces its records bitwise."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    outs = _launch_pair(_cli(full))
    summary = json.loads(outs[0][outs[0].index("{\n") : outs[0].rindex("}") + 1])
    # only process 0 prints the summary (gloo's own connection lines aside)
    assert "final_val_loss" not in outs[1] and "final_val_loss" in outs[0]
    assert summary["mesh"] == {"dp": 1, "fsdp": 4, "tp": 1}
    man = json.loads((full / "manifest.json").read_text())
    assert man["devices"]["process_count"] == 2 and man["devices"]["device_count"] == 4
    assert man["sharding"]["param_specs"]["layers/0/mlp/gate_proj/kernel"].endswith(
        "P(None, 'fsdp')"
    )
    outs = _launch_pair(lambda c, i: ["-c", _CRASH_SCRIPT, c, str(i), str(resumed)])
    assert all("crashed after step 3" in o for o in outs)
    assert sorted(int(p.name) for p in (resumed / "checkpoints").iterdir()) == [2]
    _launch_pair(_cli(resumed))
    a = metrics.read_jsonl(full / "metrics.jsonl")
    b = metrics.read_jsonl(resumed / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in a] == [(r["kind"], r["step"]) for r in b]
    assert metrics.deterministic(a) == metrics.deterministic(b)
    assert [
        r["from_step"] for r in json.loads((resumed / "manifest.json").read_text())["resumes"]
    ] == [2]
    # and the 4-device, 2-process run is the single-device run up to reduction order
    # (measured ~2e-7; rtol 1e-5 as for the 8-device runs)
    one = train.train_and_evaluate(get_config("tiny", smoke=True), tmp_path / "one")
    for h1, h2 in zip(one["history"], [r for r in b if r["kind"] == "eval"], strict=True):
        np.testing.assert_allclose(h2["val_loss"], h1["val_loss"], rtol=1e-5)
