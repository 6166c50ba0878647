"""Tests of the training harness (experiments.train, .metrics, .checkpoint).

Every preset's smoke variant trains on CPU; the loss falls for AdamW, Muon and the
symmetry-compatible stack; an interrupted-and-resumed run reproduces an uninterrupted one
record for record (bitwise); 8 forced host devices give the 1-device losses and parameters
with data parallelism, FSDP, FSDP x TP and DP x FSDP meshes (AdamW, Muon, the symmetric
stack; owner-computes Muon and MoE in the slow grid), and FSDP shards the optimizer state;
bad inputs fail with clear errors and leave the run directory untouched. Runs use the smoke
shapes (batch 8 x 32 tokens) so that the jitted gradient / eval functions, cached per model,
compile once; the 8-device subprocesses start with the module and run while the other tests
compile.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import checkpoint, configs, metrics, models, sharding, train
from experiments import optimizers as O
from experiments import steps as steps_lib
from experiments.configs import get_config

REPO = Path(__file__).resolve().parents[1]
TINY = models.TINY_PRESETS  # ('tiny', 'tiny_moe', 'tiny_gpt2', 'tiny_gemma3', 'tiny_gptoss')


def _snapshot(directory: Path) -> dict:
    """Every file under ``directory`` -> (size, mtime_ns, sha256): detects any write."""
    out = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(directory))] = (
                p.stat().st_size,
                p.stat().st_mtime_ns,
                hashlib.sha256(p.read_bytes()).hexdigest(),
            )
    return out


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """Lazily runs each tiny preset's smoke variant once: name -> (summary, workdir)."""
    root = tmp_path_factory.mktemp("smoke")
    cache = {}

    def run(name):
        if name not in cache:
            wd = root / name
            cache[name] = (train.train_and_evaluate(get_config(name, smoke=True), wd), wd)
        return cache[name]

    return run


# ----------------------------------------------------------------------------- smoke
@pytest.mark.parametrize("name", TINY)
def test_smoke_preset_trains_on_cpu(name, smoke_runs):
    summary, wd = smoke_runs(name)
    cfg = get_config(name, smoke=True)
    assert summary["steps"] == cfg.steps == 4
    assert summary["tokens"] == 4 * cfg.tokens_per_step
    assert summary["param_count"] == models.param_count(cfg.model_config())
    hist = summary["history"]
    assert [h["step"] for h in hist] == [0, 2, 4]
    assert all(math.isfinite(h["val_loss"]) for h in hist)
    # at initialization the byte model is near uniform (ln 256 = 5.55 nats); 4 AdamW steps at
    # 3e-3 already reach the unigram regime: > 0.5 nats lower in every family (measured
    # 1.1-1.4)
    assert abs(hist[0]["val_loss"] - math.log(256)) < 0.5  # measured 5.24-5.62
    assert hist[-1]["val_loss"] < hist[0]["val_loss"] - 0.5
    for f in ("manifest.json", "metrics.jsonl", "summary.json"):
        assert (wd / f).is_file()
    assert list((wd / "tb").glob("events.out.tfevents.*"))
    assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir()) == [2, 4]
    recs = metrics.read_jsonl(wd / "metrics.jsonl")
    train_recs = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train_recs] == [2, 4]
    last = train_recs[-1]
    for key in (
        "loss",
        "ce",
        "loss_mean",
        "lr",
        "grad_norm",
        "update_norm",
        "param_norm",
        "skipped_steps",
        "ms_per_step",
        "fwd_bwd_ms",
        "opt_ms",
        "tokens_per_s",
        "grad_norm/attention",
        "update_norm/mlp" if name not in ("tiny_moe", "tiny_gptoss") else "update_norm/experts",
        "update_ratio/embedding",
    ):
        assert key in last, key
    assert last["skipped_steps"] == 0 and last["mfu"] is None  # no CPU peak in the table
    assert last["ms_per_step"] > 0 and last["opt_ms"] > 0
    groups_sq = sum(v**2 for k, v in last.items() if k.startswith("grad_norm/"))
    assert math.isclose(math.sqrt(groups_sq), last["grad_norm"], rel_tol=1e-5)
    if cfg.model_config().is_moe:
        assert 0 <= last["router/load_cv"] and "router/0/load_cv" in last
        assert math.isclose(
            last["router/load_cv"],
            np.mean([last[f"router/{i}/load_cv"] for i in range(cfg.model_config().n_layers)]),
            rel_tol=1e-6,
        )
    else:
        assert not any(k.startswith("router/") for k in last)


def test_manifest_and_summary_files(smoke_runs):
    summary, wd = smoke_runs("tiny")
    cfg = get_config("tiny", smoke=True)
    man = json.loads((wd / "manifest.json").read_text())
    assert man["config_hash"] == configs.config_hash(cfg)
    assert man["config"] == configs.to_dict(cfg)
    assert set(man["git"]) == {"sha", "dirty"}
    assert man["versions"]["jax"] == jax.__version__
    assert man["devices"]["device_count"] == jax.device_count()
    assert man["corpus"]["name"] == "stdlib" and len(man["corpus"]["sha256"]) == 64
    assert man["param_count"] == summary["param_count"]
    assert "embed/embedding" in man["routing_report"] and "adamw" in man["routing_report"]
    on_disk = json.loads((wd / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in (
        "final_val_loss",
        "best_val_loss",
        "steps",
        "tokens",
        "ms_per_step",
        "opt_ms_per_step",
        "tokens_per_s",
        "opt_state_bytes",
        "param_count",
        "history",
        "workdir",
    ):
        assert key in summary
    # AdamW state: two float32 moments per parameter (+ scalar counters)
    assert (
        2 * 4 * summary["param_count"]
        <= summary["opt_state_bytes"]
        < 2 * 4 * summary["param_count"] + 1024
    )


def test_metrics_load_into_pandas_and_plot(smoke_runs, tmp_path):
    _, wd = smoke_runs("tiny")
    ev = metrics.load_metrics(wd, "eval")
    assert list(ev["step"]) == [0, 2, 4] and "loss" not in ev
    path = metrics.plot_run(wd, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_moe_runs_record_validation_router_statistics(smoke_runs, tmp_path):
    """Eval records of an MoE run carry the router statistics of the validation set (the
    training ones stay in the train records, without the per-expert vectors) and the router
    plot draws the per-expert load heatmap; dense runs have neither (negative control). The
    manifest lists every leaf's update and the optimizer call."""
    _, wd = smoke_runs("tiny_moe")
    recs = metrics.read_jsonl(wd / "metrics.jsonl")
    evals = [r for r in recs if r["kind"] == "eval"]
    n_layers, n_experts = 2, 8
    for ev in evals:
        load = np.asarray(ev["val_router/expert_load"])
        assert load.shape == (n_layers, n_experts)
        np.testing.assert_allclose(load.sum(axis=1), 1.0, rtol=1e-6)
        for key in (
            "load_cv",
            "load_entropy",
            "dead_expert_fraction",
            "logit_mean",
            "logit_std",
            "top_expert_load",
        ):
            assert math.isclose(
                ev[f"val_router/{key}"],
                np.mean([ev[f"val_router/{i}/{key}"] for i in range(n_layers)]),
                rel_tol=1e-9,
            )
        # the per-layer CV is the CV of that layer's load row
        f = load[0]
        assert ev["val_router/0/load_cv"] == pytest.approx(f.std() / f.mean(), rel=1e-5)
    last_train = [r for r in recs if r["kind"] == "train"][-1]
    assert "router/dead_expert_fraction" in last_train
    assert not any(k.endswith("/expert_load") for k in last_train)  # vectors stay out
    path = metrics.plot_router(wd, tmp_path / "router.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, dense = smoke_runs("tiny")
    assert not any(
        k.startswith("val_router") for r in metrics.read_jsonl(dense / "metrics.jsonl") for k in r
    )
    assert metrics.plot_router(dense) is None
    man = json.loads((wd / "manifest.json").read_text())
    blocks = {b["path"]: b for b in man["block_updates"]}
    assert set(blocks) == set(
        models.param_paths(models.build(get_config("tiny_moe").model_config(), abstract=True))
    )
    assert blocks["layers/0/moe/router/kernel"]["group"] == "router"
    assert blocks["layers/0/moe/router/kernel"]["transform"] == "adamw"
    call = man["optimizer_call"]
    assert call["function"] == "optax._src.alias.adamw"
    # the config's fields, no options (tiny_moe passes none)
    assert call["kwargs"] == {
        "b1": 0.9,
        "b2": 0.95,
        "eps": 1e-8,
        "weight_decay": 0.1,
        "mask": "_matrix_mask",
    }


def test_checkpoints_are_committed_atomically(smoke_runs):
    _, wd = smoke_runs("tiny")
    ckdir = wd / "checkpoints"
    # completed saves are plain step directories with orbax's commit marker, no temp dirs
    assert all(p.name.isdigit() for p in ckdir.iterdir())
    assert all((p / "commit_success.txt").exists() for p in ckdir.iterdir())
    # a save interrupted mid-write leaves a temporary directory: it is not a checkpoint
    tmp = ckdir / "6.orbax-checkpoint-tmp-1234"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "junk").write_bytes(b"\0" * 16)
    try:
        ck = checkpoint.Checkpointer(ckdir)
        assert ck.latest_step() == 4 and ck.all_steps() == [2, 4]
        ck.close()
    finally:
        import shutil

        shutil.rmtree(tmp)


# ----------------------------------------------------------------------------- learning
@pytest.mark.parametrize(
    "preset, optimizer", [("tiny", "adamw"), ("tiny_muon", "muon"), ("tiny_symmetric", "symmetric")]
)
def test_loss_decreases_on_the_default_corpus(preset, optimizer, tmp_path):
    base = get_config(preset, smoke=True)
    cfg = dataclasses.replace(
        base,
        steps=40,
        eval_every=20,
        log_every=10,
        checkpoint_every=40,
        eval_batches=8,
        optimizer=dataclasses.replace(base.optimizer, warmup_steps=4),
    )
    assert cfg.optimizer.name == optimizer
    s = train.train_and_evaluate(cfg, tmp_path / preset)
    v0, v1 = s["history"][0]["val_loss"], s["final_val_loss"]
    # 40 steps x 256 tokens: 5.55 -> 3.16 (AdamW), 2.73 (Muon), 2.72 (symmetric) measured on
    # the 2,048 fixed validation tokens; 2 nats of decrease leaves a >= 0.39-nat margin
    assert v1 < v0 - 2.0, (v0, v1)
    trains = [
        r for r in metrics.read_jsonl(tmp_path / preset / "metrics.jsonl") if r["kind"] == "train"
    ]
    assert trains[-1]["loss_mean"] < trains[0]["loss_mean"] - 1.0
    assert trains[-1]["skipped_steps"] == 0


# ----------------------------------------------------------------------------- resume
class _Crash(Exception):
    pass


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory):
    """An uninterrupted 8-step run, and one crashed after step 6 (checkpoint at 4) and
    resumed; log and eval records at every step / every other step."""
    root = tmp_path_factory.mktemp("resume")
    base = get_config("tiny", smoke=True)
    cfg = dataclasses.replace(base, steps=8, checkpoint_every=4, log_every=1, eval_every=2)
    full = train.train_and_evaluate(cfg, root / "full")

    def crash(step, record):
        if step == 6:
            raise _Crash()

    with pytest.raises(_Crash):
        train.train_and_evaluate(cfg, root / "resumed", on_step=crash)
    before = metrics.read_jsonl(root / "resumed" / "metrics.jsonl")
    resumed = train.train_and_evaluate(cfg, root / "resumed")
    return dict(cfg=cfg, root=root, full=full, resumed=resumed, before=before)


def test_resume_reproduces_the_uninterrupted_run_bitwise(resume_runs):
    r = resume_runs
    # the crashed run had logged steps 5-6 past its last checkpoint: they are replaced
    assert max(x["step"] for x in r["before"]) == 6
    full = metrics.read_jsonl(r["root"] / "full" / "metrics.jsonl")
    resumed = metrics.read_jsonl(r["root"] / "resumed" / "metrics.jsonl")
    assert [(x["kind"], x["step"]) for x in resumed] == [(x["kind"], x["step"]) for x in full]
    # every deterministic field equal, step for step (JSON floats round-trip exactly, so ==
    # is a bitwise comparison of the float32 values); wall-clock fields excluded
    assert metrics.deterministic(resumed) == metrics.deterministic(full)
    assert r["resumed"]["final_val_loss"] == r["full"]["final_val_loss"]
    man = json.loads((r["root"] / "resumed" / "manifest.json").read_text())
    assert [x["from_step"] for x in man["resumes"]] == [4]


def test_resume_of_a_finished_run_returns_its_summary(resume_runs):
    r = resume_runs
    wd = r["root"] / "full"
    again = train.train_and_evaluate(r["cfg"], wd)
    assert again["history"] == r["full"]["history"] and again["steps"] == 8
    # presentation fields are outside the config hash: changing them still resumes
    quiet = dataclasses.replace(r["cfg"], tensorboard=False, progress=True)
    assert train.train_and_evaluate(quiet, wd)["final_val_loss"] == r["full"]["final_val_loss"]


def test_refuses_a_checkpoint_of_a_different_config(resume_runs):
    r = resume_runs
    wd = r["root"] / "resumed"
    before = _snapshot(wd)
    other = dataclasses.replace(
        r["cfg"], optimizer=dataclasses.replace(r["cfg"].optimizer, learning_rate=1e-3)
    )
    with pytest.raises(
        checkpoint.ConfigMismatch,
        match=r"different config[\s\S]*nothing was written[\s\S]*"
        r"optimizer\.learning_rate: 0\.003 -> 0\.001",
    ):
        train.train_and_evaluate(other, wd)
    assert _snapshot(wd) == before
    # a directory with checkpoints but no manifest is refused too
    (wd / "manifest.json").rename(wd / "manifest.moved")
    try:
        with pytest.raises(checkpoint.ConfigMismatch, match=r"no manifest\.json"):
            train.train_and_evaluate(r["cfg"], wd)
    finally:
        (wd / "manifest.moved").rename(wd / "manifest.json")


# ----------------------------------------------------------------------------- pieces
def _pieces(name="tiny", grad_accum=1):
    """The harness pieces for a preset's smoke config (the cached jitted functions of the
    smoke runs are reused)."""
    cfg = dataclasses.replace(get_config(name, smoke=True), grad_accum=grad_accum)
    mcfg = cfg.model_config()
    mesh = sharding.make_mesh()
    params_abs = nnx.state(models.build(mcfg, abstract=True), nnx.Param)
    tx = O.build_optimizer(cfg.optimizer, params_abs, cfg.steps)
    (gd, ogd), state = steps_lib.init_state(mcfg, tx, cfg.seed, mesh)
    groups = jax.tree.leaves(O.param_groups(state["params"]))
    steps = steps_lib.make_train_step(gd, ogd, groups, mesh, grad_accum=grad_accum)
    return cfg, state, steps


def _sharded(x, spec):
    """``x`` placed like the training loop places it (jit caches key on input shardings)."""
    return jax.device_put(x, jax.sharding.NamedSharding(sharding.make_mesh(), spec))


def _batch(accum, rows, seq=32, seed=0):
    """``(x, y)`` int32 ``[accum, rows, seq]`` sharded like the loop's batches."""
    tokens = np.random.default_rng(seed).integers(0, 256, size=(accum, rows, seq + 1))
    spec = jax.sharding.PartitionSpec(None, sharding.BATCH_AXES, None)
    return (
        _sharded(tokens[..., :-1].astype(np.int32), spec),
        _sharded(tokens[..., 1:].astype(np.int32), spec),
    )


def test_nonfinite_gradients_are_skipped_and_counted():
    cfg, state, steps = _pieces()
    assert cfg.optimizer.guard_nonfinite
    before = jax.tree.map(np.asarray, state["params"])
    nan = _sharded(
        jax.tree.map(lambda p: np.full(p.shape, np.nan, p.dtype), state["params"]),
        jax.sharding.PartitionSpec(),
    )
    state, m = steps.apply(state, nan)
    assert int(m["skipped_steps"]) == 1 and float(m["update_norm"]) == 0
    after = jax.tree.map(np.asarray, state["params"])
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    )
    x, y = _batch(1, 8)
    # the skipped step did not advance the schedule: the next step is still the warmup's
    # first (lr 0), the one after moves the parameters
    norms = []
    for _ in range(2):
        grads, _ = steps.grads(state["params"], state["rest"], x, y)
        state, m = steps.apply(state, grads)
        norms.append(float(m["update_norm"]))
    assert int(m["skipped_steps"]) == 1 and norms[0] == 0 and norms[1] > 0


def test_gradient_accumulation_equals_the_large_batch():
    _, state, one = _pieces(grad_accum=1)
    _, _, two = _pieces(grad_accum=2)
    x, y = _batch(1, 8)
    x2, y2 = _batch(2, 4)  # the same tokens (same seed, row-major), as two micro-batches
    np.testing.assert_array_equal(np.asarray(x2).reshape(1, 8, -1), np.asarray(x))
    g1, m1 = one.grads(state["params"], state["rest"], x, y)
    g2, m2 = two.grads(state["params"], state["rest"], x2, y2)
    # mean over 256 tokens vs the mean of two 128-token means: float32 summation order only
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=2e-7)
    np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-6)
    # negative control: the tolerance separates gradients of different tokens
    g_other, _ = one.grads(state["params"], state["rest"], *_batch(1, 8, seed=1))
    emb = np.asarray(jax.tree.leaves(g1)[0])
    assert not np.allclose(np.asarray(jax.tree.leaves(g_other)[0]), emb, rtol=2e-4, atol=2e-7)


def test_group_norms_match_numpy():
    rng = np.random.default_rng(1)
    tree = {
        "a": {"x": rng.normal(size=(3, 4)).astype(np.float32)},
        "b": rng.normal(size=(5,)).astype(np.float32),
        "c": rng.normal(size=(2, 2)).astype(np.float32),
    }
    groups = ["mlp", "vectors", "mlp"]  # leaf order: a/x, b, c
    out = jax.jit(lambda t: metrics.group_norms(t, groups, "g"))(tree)
    mlp = math.sqrt(
        np.sum(tree["a"]["x"].astype(np.float64) ** 2) + np.sum(tree["c"].astype(np.float64) ** 2)
    )
    vec = float(np.linalg.norm(tree["b"].astype(np.float64)))
    # float32 sums of squares of 12-16 numbers: rtol 1e-6
    np.testing.assert_allclose(float(out["g/mlp"]), mlp, rtol=1e-6)
    np.testing.assert_allclose(float(out["g/vectors"]), vec, rtol=1e-6)
    np.testing.assert_allclose(float(out["g"]), math.hypot(mlp, vec), rtol=1e-6)


def test_peak_flops_and_mfu():
    assert metrics.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
    assert metrics.peak_flops("TPU v5 lite", "bfloat16") == 197e12
    assert metrics.peak_flops("cpu", "float32") is None
    assert metrics.mfu(6e9, 1e4, 2, 1e15) == pytest.approx(6e9 * 1e4 / 2e15)
    assert metrics.mfu(6e9, 1e4, 1, None) is None


def test_jsonl_truncation_is_atomic_and_tolerates_a_torn_line(tmp_path):
    p = tmp_path / "m.jsonl"
    w = metrics.JsonlWriter(p)
    for s in range(5):
        w.write({"kind": "train", "step": s, "loss": np.float32(1.5) / (s + 1)})
    w.close()
    with open(p, "a") as f:
        f.write('{"kind": "train", "st')  # a crash mid-line
    assert [r["step"] for r in metrics.read_jsonl(p)] == [0, 1, 2, 3, 4]
    kept = metrics.truncate_jsonl(p, 2)
    assert [r["step"] for r in kept] == [0, 1, 2] == [r["step"] for r in metrics.read_jsonl(p)]
    assert not (tmp_path / "m.jsonl.tmp").exists()
    assert metrics.truncate_jsonl(p, None) == [] and p.read_text() == ""


# ----------------------------------------------------------------------------- devices
_MULTI_SCRIPT = textwrap.dedent("""
    import dataclasses, json, sys
    import jax
    from experiments.configs import ShardingConfig, get_config
    from experiments.train import train_and_evaluate
    from experiments import metrics
    out = {"devices": jax.device_count(), "runs": {}}
    for name, preset, sharding in json.loads(sys.argv[2]):
        cfg = dataclasses.replace(get_config(preset, smoke=True),
                                  sharding=ShardingConfig(**sharding))
        wd = sys.argv[1] + "/" + name
        summary = train_and_evaluate(cfg, wd)
        out["runs"][name] = {"workdir": wd, "records": metrics.read_jsonl(wd + "/metrics.jsonl"),
                             "summary": {k: v for k, v in summary.items() if k != "history"}}
    print(json.dumps(out))
""")

#: (run name, preset, ShardingConfig fields) of the default suite's 8-device subprocess.
MESH_RUNS = (
    ("dp8", "tiny", {}),
    ("adamw_fsdp8", "tiny", {"fsdp": 8}),
    ("muon_fsdp4_tp2", "tiny_muon", {"fsdp": 4, "tp": 2}),
    ("symmetric_dp2_fsdp4", "tiny_symmetric", {"dp": 2, "fsdp": 4}),
)
#: The rest of the grid (slow): every optimizer on every mesh, MoE, owner-computes Muon.
SLOW_MESH_RUNS = (
    ("adamw_fsdp4_tp2", "tiny", {"fsdp": 4, "tp": 2}),
    ("adamw_dp2_fsdp4", "tiny", {"dp": 2, "fsdp": 4}),
    ("muon_fsdp8", "tiny_muon", {"fsdp": 8}),
    ("muon_dp2_fsdp4", "tiny_muon", {"dp": 2, "fsdp": 4}),
    ("muon_fsdp8_owner", "tiny_muon", {"fsdp": 8, "owner_computes": True}),
    ("symmetric_fsdp8", "tiny_symmetric", {"fsdp": 8}),
    ("symmetric_fsdp4_tp2", "tiny_symmetric", {"fsdp": 4, "tp": 2}),
    ("moe_fsdp4_tp2", "tiny_moe", {"fsdp": 4, "tp": 2}),
)
DP_TEST = "test_data_parallel_on_8_host_devices_matches_one_device"
MESH_TESTS = (
    DP_TEST,
    "test_sharded_training_matches_one_device",
    "test_sharded_comparison_has_power",
    "test_fsdp_shards_the_optimizer_state",
)
SLOW_MESH_TESTS = (
    "test_sharded_training_grid_matches_one_device",
    "test_owner_computes_muon_equals_replicated_orthogonalization",
)


def _start_8_devices(root: Path, runs: tuple) -> subprocess.Popen:
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        JAX_PLATFORMS="cpu",
    )
    return subprocess.Popen(
        [sys.executable, "-c", _MULTI_SCRIPT, str(root), json.dumps(runs)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class _Pending:
    """A subprocess started early; :meth:`result` waits once and parses its JSON line."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self._out = proc, None

    def result(self) -> dict:
        if self._out is None:
            stdout, stderr = self.proc.communicate(timeout=900)
            assert self.proc.returncode == 0, stderr[-3000:]
            self._out = json.loads(stdout.strip().splitlines()[-1])
        return self._out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture(scope="module", autouse=True)
def mesh_process(request, tmp_path_factory):
    """Starts the 8-device runs in subprocesses when the module starts (if their tests are
    selected), so that they overlap with the in-process compilations: ``{'default',
    'slow'}`` -> :class:`_Pending` or ``None``."""
    names = {item.originalname for item in request.session.items}
    pending = {"default": None, "slow": None}
    if names & set(MESH_TESTS):
        pending["default"] = _Pending(_start_8_devices(tmp_path_factory.mktemp("mesh8"), MESH_RUNS))
    if names & set(SLOW_MESH_TESTS):
        pending["slow"] = _Pending(
            _start_8_devices(tmp_path_factory.mktemp("mesh8slow"), SLOW_MESH_RUNS)
        )
    yield pending
    for p in pending.values():
        if p is not None:
            p.stop()


def _close_records(one: list, other: list, rtol: float) -> int:
    """Asserts equal (kind, step) sequences and ``rtol``-close losses and norms; returns how
    many values were compared."""
    assert [(r["kind"], r["step"]) for r in one] == [(r["kind"], r["step"]) for r in other]
    checked = 0
    for a, b in zip(one, other, strict=True):
        for key in ("loss", "loss_mean", "val_loss", "grad_norm", "update_norm", "param_norm"):
            if key in a:
                np.testing.assert_allclose(b[key], a[key], rtol=rtol, err_msg=key)
                checked += 1
    return checked


def _param_errors(wd_a: Path, wd_b: Path) -> tuple[float, float]:
    """(largest per-leaf, whole-tree) relative Frobenius distance of two runs' final
    parameters (their last checkpoints, read onto one device)."""
    pa = jax.tree.leaves(checkpoint.load_state(wd_a)[0]["params"])
    pb = jax.tree.leaves(checkpoint.load_state(wd_b)[0]["params"])
    diff = [np.linalg.norm(a.astype(np.float64) - b) for a, b in zip(pa, pb, strict=True)]
    norm = [np.linalg.norm(a.astype(np.float64)) for a in pa]
    return (
        max(d / n for d, n in zip(diff, norm, strict=True)),
        math.sqrt(sum(d * d for d in diff)) / math.sqrt(sum(n * n for n in norm)),
    )


# Sharded vs one device (measured, 4 smoke steps: losses/norms <= 6e-7 relative; parameters
# <= 2.1e-5 per leaf, <= 2.5e-6 whole tree). The meshes change only the float32 reduction
# order; Adam's m / sqrt(v) then moves an element whose gradient is a cancellation-dominated
# sum (rarely seen rows of the byte embedding) by a sizable fraction of lr, which is why the
# per-leaf bound is looser than the whole-tree one.
METRIC_RTOL, LEAF_RTOL, TREE_RTOL = 1e-5, 1e-4, 1e-5


def _assert_matches_one_device(run: dict, preset: str, smoke_runs) -> None:
    _, wd1 = smoke_runs(preset)
    one = metrics.read_jsonl(wd1 / "metrics.jsonl")
    assert _close_records(one, run["records"], METRIC_RTOL) >= 10
    leaf, tree = _param_errors(wd1, Path(run["workdir"]))
    assert leaf < LEAF_RTOL and tree < TREE_RTOL, (leaf, tree)


def test_data_parallel_on_8_host_devices_matches_one_device(mesh_process, smoke_runs):
    out = mesh_process["default"].result()
    assert out["devices"] == 8
    run = out["runs"]["dp8"]
    man = json.loads((Path(run["workdir"]) / "manifest.json").read_text())
    assert man["devices"]["device_count"] == 8
    assert man["sharding"]["mesh"] == {"dp": 8, "fsdp": 1, "tp": 1}
    # the same config on this process's single device (batch 8 = one row per device there)
    assert jax.device_count() == 1
    # the batch is split 8 ways and the gradient all-reduced: only the float32 reduction
    # order differs (measured relative differences ~2e-7 after 3 AdamW steps)
    _assert_matches_one_device(run, "tiny", smoke_runs)


@pytest.mark.parametrize("name, preset", [(n, p) for n, p, _ in MESH_RUNS[1:]])
def test_sharded_training_matches_one_device(name, preset, mesh_process, smoke_runs):
    run = mesh_process["default"].result()["runs"][name]
    _assert_matches_one_device(run, preset, smoke_runs)
    specs = json.loads((Path(run["workdir"]) / "manifest.json").read_text())["sharding"]
    q = specs["param_specs"]["layers/0/attn/q_proj/kernel"]
    o = specs["param_specs"]["layers/0/attn/o_proj/kernel"]
    # the documented rules: q column-parallel (fan-out on tp), o row-parallel (fan-in on tp),
    # FSDP on the first free axis divisible by its size
    if "tp2" in name:
        assert q.endswith("P('fsdp', 'tp')") and o.endswith("P('tp', 'fsdp')"), (q, o)
    else:
        assert q.endswith("P('fsdp', None)") and o.endswith("P('fsdp', None)"), (q, o)


def test_sharded_comparison_has_power(mesh_process, smoke_runs):
    """Negative control: the same tolerances reject a run of another optimizer from the same
    initialization and data (AdamW on 8 devices vs Muon on one)."""
    run = mesh_process["default"].result()["runs"]["adamw_fsdp8"]
    _, wd_muon = smoke_runs("tiny_muon")
    with pytest.raises(AssertionError):
        _close_records(metrics.read_jsonl(wd_muon / "metrics.jsonl"), run["records"], METRIC_RTOL)
    leaf, tree = _param_errors(wd_muon, Path(run["workdir"]))
    assert leaf > 100 * LEAF_RTOL and tree > 100 * TREE_RTOL, (leaf, tree)


def _expected_fsdp_bytes(preset: str, fsdp: int) -> int:
    """Parameter bytes per device by the documented FSDP rule, from the shapes alone: leaves
    of >= 1024 elements split ``fsdp`` ways (tiny's all have an axis divisible by 8), the rest
    whole."""
    params = nnx.state(models.build(get_config(preset).model_config(), abstract=True), nnx.Param)
    sizes = [math.prod(x.shape) * 4 for x in jax.tree.leaves(params)]  # float32
    return sum(b // fsdp if b >= 4 * 1024 else b for b in sizes)


def test_fsdp_shards_the_optimizer_state(mesh_process):
    runs = mesh_process["default"].result()["runs"]
    adamw, dp = runs["adamw_fsdp8"]["summary"], runs["dp8"]["summary"]
    # data parallelism replicates everything: one device holds the whole state
    assert dp["param_bytes_per_device"] == 4 * dp["param_count"]
    assert dp["opt_state_bytes_per_device"] == dp["opt_state_bytes"]
    assert adamw["param_bytes_per_device"] == _expected_fsdp_bytes("tiny", 8)
    # AdamW: mu and nu mirror the parameters (their sharding) + replicated scalar counters
    pbd, obd = adamw["param_bytes_per_device"], adamw["opt_state_bytes_per_device"]
    assert 2 * pbd <= obd < 2 * pbd + 1024
    assert obd < adamw["opt_state_bytes"] / 7.5  # total / fsdp plus the small replicated part
    # Muon (fsdp 4 x tp 2 = 8-way on matrices) and the symmetric stack (fsdp 4): the sharded
    # leaves take total/8 resp. total/4; at most 8 KiB stay replicated (AdamW moments of the
    # 768 norm-scale entries = 6 KiB, counters)
    for name, ways in (("muon_fsdp4_tp2", 8), ("symmetric_dp2_fsdp4", 4)):
        s = runs[name]["summary"]
        assert (
            s["opt_state_bytes"] / ways
            <= s["opt_state_bytes_per_device"]
            <= s["opt_state_bytes"] / ways + 8 * 1024
        ), (name, s)


@pytest.mark.slow
@pytest.mark.parametrize("name, preset", [(n, p) for n, p, _ in SLOW_MESH_RUNS])
def test_sharded_training_grid_matches_one_device(name, preset, mesh_process, smoke_runs):
    run = mesh_process["slow"].result()["runs"][name]
    _assert_matches_one_device(run, preset, smoke_runs)
    man = json.loads((Path(run["workdir"]) / "manifest.json").read_text())
    assert man["sharding"]["owner_computes_applied"] == name.endswith("_owner")


@pytest.mark.slow
def test_owner_computes_muon_equals_replicated_orthogonalization(mesh_process):
    """FSDP-8 Muon with each Newton-Schulz run by one owner device equals FSDP-8 Muon with
    every device orthogonalizing every matrix (measured: records 6e-7, parameters 2e-6
    relative; the owner's batched kernel sees another batch size)."""
    runs = mesh_process["slow"].result()["runs"]
    plain, owner = runs["muon_fsdp8"], runs["muon_fsdp8_owner"]
    assert _close_records(plain["records"], owner["records"], METRIC_RTOL) >= 10
    leaf, tree = _param_errors(Path(plain["workdir"]), Path(owner["workdir"]))
    assert leaf < LEAF_RTOL and tree < TREE_RTOL, (leaf, tree)


# ----------------------------------------------------------------------------- bad input
def test_missing_data_path_fails_before_anything_is_written(tmp_path):
    base = get_config("tiny", smoke=True)
    cfg = dataclasses.replace(
        base,
        data=dataclasses.replace(
            base.data, corpus="shards", shards=str(tmp_path / "nowhere" / "*.bin")
        ),
    )
    wd = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=r"DataConfig\.shards=.*nowhere"):
        train.train_and_evaluate(cfg, wd)
    assert not wd.exists()


def test_batch_not_divisible_by_devices_is_rejected(tmp_path):
    cfg = get_config("tiny", smoke=True)
    with pytest.raises(
        ValueError,
        match=r"DataConfig\.batch_size=8 is not divisible by the 3 "
        r"devices",
    ):
        train.make_data(cfg, n_devices=3)


def test_unknown_optimizer_option_fails_before_anything_is_written(tmp_path):
    base = get_config("tiny_muon", smoke=True)
    cfg = dataclasses.replace(
        base, optimizer=dataclasses.replace(base.optimizer, options=(("nonsense", 1),))
    )
    wd = tmp_path / "run"
    with pytest.raises(ValueError, match=r"'nonsense' is not an option of 'muon'"):
        train.train_and_evaluate(cfg, wd)
    assert not (wd / "manifest.json").exists() and not (wd / "metrics.jsonl").exists()


def test_cli_trains_with_overrides_and_rejects_bad_ones(tmp_path, capsys):
    wd = tmp_path / "cli"
    summary = train.main(
        [
            "--preset",
            "tiny",
            "--smoke",
            "--workdir",
            str(wd),
            "--log-every",
            "1",
            "--eval-every",
            "4",
            "--data.seed",
            "3",
        ]
    )
    assert summary["steps"] == 4 and [h["step"] for h in summary["history"]] == [0, 4]
    man = json.loads((wd / "manifest.json").read_text())
    assert man["config"]["log_every"] == 1 and man["config"]["data"]["seed"] == 3
    assert [
        r["step"] for r in metrics.read_jsonl(wd / "metrics.jsonl") if r["kind"] == "train"
    ] == [1, 2, 3, 4]
    assert '"final_val_loss"' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        train.main(
            [
                "--preset",
                "tiny",
                "--smoke",
                "--workdir",
                str(tmp_path / "x"),
                "--optimizer.name",
                "bogus",
            ]
        )
    with pytest.raises(SystemExit, match=r"unknown preset 'nope'"):
        train.main(["--preset", "nope", "--workdir", str(tmp_path / "y")])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
