"""The communication / compute model (experiments/bench/comm_model.py): closed forms worked by
hand on tiny trees, the HLO collective parser on handwritten HLO lines, and the model against
the collectives XLA emits for a sharded optimizer step on 8 forced host devices (subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.bench import comm_model as cm

REPO = Path(__file__).resolve().parents[1]


def test_fsdp_axis_picks_the_largest_divisible_axis():
    assert cm.fsdp_axis((768, 3072), 8) == 1
    assert cm.fsdp_axis((50257, 768), 8) == 1  # 50257 is odd
    assert cm.fsdp_axis((512, 512), 8) == 0  # ties: the first
    assert cm.fsdp_axis((7, 9), 8) is None
    assert cm.fsdp_axis((768,), 1) is None


def test_model_by_hand_on_a_two_matrix_tree():
    # two 8x16 matrices (b=1 each, one group of b=2) and a vector, N=4, float32
    leaves = [
        cm.Matrix("a", (8, 16), "spectral", view=(1, 8, 16)),
        cm.Matrix("b", (8, 16), "spectral", view=(1, 8, 16)),
        cm.Matrix("v", (16,), "elementwise"),
    ]
    ns5 = 5 * (4 * 8 * 8 * 16 + 2 * 8**3)  # NS5 on one 8x16 matrix: r=8, c=16
    gather = cm.model_step(leaves, "fsdp_gather", 4)
    assert gather["all_gather"] == 2 * 0.75 * 8 * 16 * 4  # (N-1)/N of each matrix, 4 bytes
    assert gather["flops"] == 2 * ns5 + 10 * 16 / 4
    owner = cm.model_step(leaves, "fsdp_owner", 4)
    # b=2 padded to 4 matrices, one per device; all-to-all in and out of the padded stack
    assert owner["all_to_all"] == 2 * 0.75 * (4 * 8 * 16 * 4) / 4
    assert owner["flops"] == ns5 + 10 * 16 / 4
    dp = cm.model_step(leaves, "dp", 4)
    assert dp["bytes"] == 0 and dp["flops"] == 2 * ns5 + 10 * 16


def test_rownorm_needs_an_all_reduce_only_when_sharded_along_its_reduced_axis():
    sharded_d = cm.Matrix("e", (1001, 64), "rownorm", axis=1)  # 1001 odd: sharded along d
    assert cm.model_step([sharded_d], "fsdp_owner", 8)["all_reduce"] == 2 * 7 / 8 * 1001 * 4
    sharded_rows = cm.Matrix("e", (1024, 64), "rownorm", axis=1)  # sharded along the rows
    assert cm.model_step([sharded_rows], "fsdp_owner", 8)["all_reduce"] == 0


def test_owner_computes_moves_less_than_gathering_at_scale():
    leaves = cm.gpt2_leaves(768, 12, "muon")
    for n in (8, 64):
        g = cm.model_step(leaves, "fsdp_gather", n)
        o = cm.model_step(leaves, "fsdp_owner", n)
        assert o["bytes"] < g["bytes"] / 3 and o["flops"] < g["flops"] / 6


def test_gpt2_small_parameter_count():
    # GPT-2 small with separate q/k/v and the tied embedding: 124,439,808 (published total)
    assert sum(x.size for x in cm.gpt2_leaves(768, 12, "adamw")) == 124_439_808


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="strategy"):
        cm.model_step([], "zero3", 8)
    with pytest.raises(ValueError, match="optimizer"):
        cm.gpt2_leaves(768, 1, "sgd")
    with pytest.raises(ValueError, match="head_dim"):
        cm.gpt2_leaves(100, 1, "muon")


def test_hlo_parser_on_handwritten_lines():
    text = "\n".join(
        [
            # all-reduce over an 8-device mesh axis (named-axes replica groups), a tuple result
            "%ar = (f32[768,768]{1,0}, f32[1]{0}) all-reduce(%a, %b), channel_id=8, "
            "replica_groups=mesh['axis_0'=1,'axis_1'=8] {'axis_1'}, to_apply=%add",
            # all-gather in iota form: 2 groups of 4
            "%ag = bf16[64,32]{1,0} all-gather(%c), replica_groups=[2,4]<=[8], dimensions={0}",
            # all-to-all with explicit groups of 8
            "%aa = f32[8,16,16]{2,1,0} all-to-all(%d), replica_groups={{0,1,2,3,4,5,6,7}}, "
            "dimensions={0}",
            # not a collective
            "%dot = f32[8,8]{1,0} dot(%x, %y), lhs_contracting_dims={1}",
        ]
    )
    got = cm.hlo_collectives(text, 8)
    assert [c["op"] for c in got] == ["all-reduce", "all-gather", "all-to-all"]
    assert [c["group"] for c in got] == [8, 4, 8]
    assert got[0]["result_bytes"] == 768 * 768 * 4 + 4
    assert got[0]["bytes"] == pytest.approx(2 * 7 / 8 * (768 * 768 * 4 + 4))
    assert got[1]["bytes"] == pytest.approx(3 / 4 * 64 * 32 * 2)
    assert got[2]["bytes"] == pytest.approx(7 / 8 * 8 * 16 * 16 * 4)


def test_model_matches_the_compiled_collectives_on_8_devices(tmp_path):
    out = tmp_path / "check.json"
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.bench.comm_model", "--check", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {r["case"]: r for r in json.loads(out.read_text())["check"]}
    # AdamW under FSDP is elementwise on local shards: no collective at all
    assert rows["adamw_fsdp"]["measured"]["bytes"] == 0
    # Muon + owner-computes: the only collectives are the modelled all-to-alls of the padded
    # stacks (measured 3.938 MiB = model on the 2-core box); 5 % leaves room for XLA choosing
    # another lowering of a reshard, far below the negative control's factor
    m, w = rows["muon_owner"]["measured"], rows["muon_owner"]["model"]
    assert m["bytes"] == pytest.approx(w["bytes"], rel=0.05), (m, w)
    # FLOPs: XLA's per-device estimate vs NS5 matmuls + elementwise (measured 3 % apart);
    # 15 % covers XLA's counting of the elementwise parts and the normalisation
    assert m["flops"] == pytest.approx(w["flops"], rel=0.15), (m, w)
    # symmetry stack: its all-to-alls are modelled (measured 5 % above: padding of the
    # head-wise stacks); XLA also all-gathers the head-wise views of the row-sharded o_proj
    # kernels (a reshape across the sharded axis), which the model does not count (README)
    m, w = rows["symmetric_owner"]["measured"], rows["symmetric_owner"]["model"]
    assert m["all_to_all"] == pytest.approx(w["all_to_all"], rel=0.10), (m, w)
    assert m["flops"] == pytest.approx(w["flops"], rel=0.15), (m, w)
    # negative control: without owner-computes XLA partitions every NS product and moves
    # several times the owner-computes bytes
    assert rows["muon_xla_auto"]["measured"]["bytes"] > 2 * rows["muon_owner"]["measured"]["bytes"]
