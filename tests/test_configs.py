"""Tests of experiments.configs (typed presets, validation, hashing, CLI overrides) and
experiments.optimizers (the family table, schedules, parameter groups from routing, per-group
multipliers, Muon's routing of hidden vs other leaves, the learning rates in the state)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tyro
from flax import nnx

from experiments import configs, models
from experiments import optimizers as O
from experiments import sharding as S
from experiments.configs import DataConfig, OptimizerConfig, TrainConfig, get_config

REQUIRED_PRESETS = (
    "tiny",
    "tiny_moe",
    "tiny_gpt2",
    "tiny_gemma3",
    "tiny_gptoss",
    "qwen3_seed",
    "olmoe_seed",
    "gpt2_small",
    "qwen3_paper",
    "gemma3_paper",
    "olmoe_paper",
    "gptoss_paper",
    "gptoss_paper_aux",
)
LARGE_PRESETS = ("qwen3_seed", "olmoe_seed", "gpt2_small", "gptoss_paper")


# ----------------------------------------------------------------------------- presets
def test_required_presets_exist_and_validate():
    for name in REQUIRED_PRESETS:
        cfg = get_config(name)
        assert isinstance(cfg, TrainConfig)
        assert cfg.model_config().name == models.PRESETS[cfg.model].name
    assert set(REQUIRED_PRESETS) <= set(configs.PRESETS)


@pytest.mark.parametrize("name", sorted(configs.PRESETS))
def test_smoke_variant_is_derived_not_copied(name):
    base, smoke = get_config(name), get_config(name, smoke=True)
    assert smoke == configs.smoke(base)
    assert smoke.steps == configs.SMOKE_STEPS and smoke.data.corpus == "stdlib"
    assert smoke.eval_batches == 1 and smoke.data.batch_size == 8
    # only the documented fields change: model, optimizer choice and hyperparameters stay
    changed = {
        f.name
        for f in dataclasses.fields(TrainConfig)
        if getattr(base, f.name) != getattr(smoke, f.name)
    }
    allowed = {
        "name",
        "optimizer",
        "data",
        "steps",
        "eval_every",
        "eval_batches",
        "log_every",
        "checkpoint_every",
        "grad_accum",
        "progress",
        "plots",
    }
    assert changed <= allowed, changed - allowed
    assert smoke.model == base.model and smoke.model_overrides == base.model_overrides
    # warmups (the main one and any group's) are cut to at most one step, nothing else
    assert (
        dataclasses.replace(
            smoke.optimizer,
            warmup_steps=base.optimizer.warmup_steps,
            group_schedules=base.optimizer.group_schedules,
        )
        == base.optimizer
    )
    assert [(g, s, min(w, 1)) for g, s, w in base.optimizer.group_schedules] == list(
        smoke.optimizer.group_schedules
    )


@pytest.mark.parametrize("name", LARGE_PRESETS)
def test_large_presets_build_config_abstract_model_and_optimizer(name):
    cfg = get_config(name)
    mcfg = cfg.model_config()
    assert mcfg.dtype == cfg.compute_dtype
    model = models.build(mcfg, abstract=True)  # shapes only, no memory
    params = nnx.state(model, nnx.Param)
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    assert n == models.param_count(mcfg)
    groups = jax.tree.leaves(O.param_groups(params))
    assert set(groups) <= set(O.GROUPS) and "attention" in groups
    opt_cfg = O.with_model_defaults(cfg.optimizer, mcfg)
    tx = O.build_optimizer(opt_cfg, params, cfg.steps)
    state = jax.eval_shape(tx.init, params)  # traced only
    assert jax.tree.leaves(state)
    # the shard paths are placeholders: checked when a run starts, not at construction
    with pytest.raises(FileNotFoundError, match=r"DataConfig\.shards"):
        cfg.data.check_paths()


def test_get_config_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'nope'.*tiny"):
        get_config("nope")


# ----------------------------------------------------------------------------- validation
def test_unknown_names_are_rejected_naming_the_field():
    with pytest.raises(ValueError, match=r"OptimizerConfig\.name='sgdx'.*adamw"):
        OptimizerConfig(name="sgdx")
    with pytest.raises(ValueError, match=r"TrainConfig\.model='gpt5'"):
        TrainConfig(model="gpt5")
    with pytest.raises(ValueError, match=r"model_overrides: 'n_layer' is not a ModelConfig"):
        TrainConfig(model_overrides=(("n_layer", 4),))
    with pytest.raises(ValueError, match=r"lr_multipliers: unknown group 'embed'"):
        OptimizerConfig(lr_multipliers=(("embed", 2.0),))
    with pytest.raises(ValueError, match=r"DataConfig\.corpus='fineweb'"):
        DataConfig(corpus="fineweb")


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: TrainConfig(steps="10"), r"TrainConfig\.steps='10' has type str; expected int"),
        (lambda: TrainConfig(steps=True), r"TrainConfig\.steps=True has type bool"),
        (lambda: TrainConfig(steps=10.0), r"TrainConfig\.steps=10\.0 has type float"),
        (lambda: OptimizerConfig(learning_rate="3e-3"), r"OptimizerConfig\.learning_rate"),
        (lambda: OptimizerConfig(grad_clip="1"), r"OptimizerConfig\.grad_clip"),
        (lambda: DataConfig(batch_size=2.5), r"DataConfig\.batch_size"),
        (lambda: OptimizerConfig(options=(("rank", [1, 2]),)), r"OptimizerConfig\.options\[0\]"),
        (
            lambda: TrainConfig(optimizer="adamw"),
            r"TrainConfig\.optimizer='adamw'.*"
            r"OptimizerConfig",
        ),
    ],
)
def test_wrong_types_raise_type_error_naming_the_field(build, match):
    with pytest.raises(TypeError, match=match):
        build()


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: OptimizerConfig(learning_rate=-1.0), r"OptimizerConfig\.learning_rate=-1\.0"),
        (lambda: OptimizerConfig(b1=1.5), r"OptimizerConfig\.b1=1\.5"),
        (lambda: OptimizerConfig(grad_clip=0.0), r"OptimizerConfig\.grad_clip=0\.0"),
        (lambda: TrainConfig(steps=0), r"TrainConfig\.steps=0"),
        (
            lambda: TrainConfig(steps=10, optimizer=OptimizerConfig(warmup_steps=9)),
            r"warmup_steps=9 plus the WSD cooldown \(2 steps: .*\) exceed steps=10; on the command "
            r"line: --warmup-steps 9 \+ --optimizer.cooldown-fraction 0.2 do not fit in --steps 10",
        ),
        (
            lambda: TrainConfig(model="tiny_gpt2", data=DataConfig(seq_len=512)),
            r"data\.seq_len=512 exceeds .*max_seq_len=256",
        ),
        (lambda: DataConfig(corpus="shards"), r"DataConfig\.shards must name"),
        (lambda: OptimizerConfig(options=(("rank", 1), ("rank", 2))), r"duplicate keys \['rank'\]"),
        (lambda: TrainConfig(model_overrides=(("dtype", "bfloat16"),)), r"compute_dtype"),
    ],
)
def test_out_of_range_values_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_ints_widen_to_float_so_hashes_are_canonical():
    a = TrainConfig(optimizer=OptimizerConfig(learning_rate=1))
    b = TrainConfig(optimizer=OptimizerConfig(learning_rate=1.0))
    assert isinstance(a.optimizer.learning_rate, float)
    assert a == b and configs.config_hash(a) == configs.config_hash(b)
    # option values keep their own type (int stays int in int | float | ...)
    assert OptimizerConfig(options=(("rank", 4),)).option("rank") == 4
    assert type(OptimizerConfig(options=(("rank", 4),)).option("rank")) is int


def test_data_paths_checked_naming_the_field(tmp_path):
    missing = DataConfig(corpus="shards", shards=str(tmp_path / "nope_*.bin"))
    with pytest.raises(
        FileNotFoundError,
        match=r"DataConfig\.shards=.*nope_\*\.bin.* does "
        r"not exist",
    ):
        missing.check_paths()
    empty = DataConfig(corpus="shards", shards=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"directory without \*\.bin"):
        empty.check_paths()
    from experiments import data

    data.write_shard(tmp_path / "train_000.bin", np.arange(100) % 256)
    DataConfig(corpus="shards", shards=str(tmp_path / "train_*.bin")).check_paths()
    with pytest.raises(FileNotFoundError, match=r"DataConfig\.val_shards"):
        DataConfig(
            corpus="shards", shards=str(tmp_path), val_shards=str(tmp_path / "val.bin")
        ).check_paths()


# ----------------------------------------------------------------------------- hashing
def test_config_hash_covers_the_trajectory_not_the_presentation():
    cfg = get_config("tiny")
    h = configs.config_hash(cfg)
    assert h == configs.config_hash(get_config("tiny"))
    assert h == configs.config_hash(
        dataclasses.replace(cfg, progress=False, tensorboard=False, checkpoint_every=7)
    )
    other = dataclasses.replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, b2=0.99))
    assert configs.config_hash(other) != h
    diff = configs.config_diff(configs.hashed_dict(cfg), configs.hashed_dict(other))
    assert diff == ["optimizer.b2: 0.95 -> 0.99"]
    # the mesh is where arrays live, not what is computed: an elastic restart on another
    # mesh resumes the same run (documented in HASH_EXCLUDED)
    resharded = dataclasses.replace(
        cfg,
        sharding=configs.ShardingConfig(
            fsdp=8, tp=2, owner_computes=True, rules=(("lm_head", "None,tp"),)
        ),
    )
    assert configs.config_hash(resharded) == h and "sharding" in configs.HASH_EXCLUDED
    assert configs.to_dict(resharded)["sharding"]["fsdp"] == 8  # still in the manifest


# ----------------------------------------------------------------------------- CLI
def test_tyro_overrides_nested_fields_with_typed_pairs():
    cfg = tyro.cli(
        TrainConfig,
        default=get_config("tiny"),
        args=[
            "--steps",
            "50",
            "--optimizer.name",
            "galore",
            "--optimizer.options",
            "rank",
            "16",
            "--optimizer.lr-multipliers",
            "embedding",
            "0.5",
            "--optimizer.grad-clip",
            "None",
            "--model-overrides",
            "n_layers",
            "3",
            "--data.batch-size",
            "4",
        ],
    )
    assert cfg.steps == 50 and cfg.optimizer.name == "galore"
    assert cfg.optimizer.options == (("rank", 16),) and type(cfg.optimizer.option("rank")) is int
    assert cfg.optimizer.lr_multipliers == (("embedding", 0.5),)
    assert cfg.optimizer.grad_clip is None and cfg.data.batch_size == 4
    assert cfg.model_config().n_layers == 3
    # untouched fields keep the preset's values
    assert cfg.optimizer.learning_rate == get_config("tiny").optimizer.learning_rate


def test_tyro_overrides_the_sharding():
    cfg = tyro.cli(
        TrainConfig,
        default=get_config("tiny"),
        args=[
            "--sharding.fsdp",
            "8",
            "--sharding.tp",
            "2",
            "--sharding.owner-computes",
            "--sharding.rules",
            "lm_head/kernel$",
            "None,tp",
            "embed",
            "",
        ],
    )
    assert cfg.sharding == configs.ShardingConfig(
        dp=-1,
        fsdp=8,
        tp=2,
        owner_computes=True,
        rules=(("lm_head/kernel$", "None,tp"), ("embed", "")),
    )


def test_tyro_rejects_a_malformed_sharding_rule(capsys):
    with pytest.raises(SystemExit):
        tyro.cli(
            TrainConfig, default=get_config("tiny"), args=["--sharding.rules", "q_proj", "fsdp,tpx"]
        )
    err = capsys.readouterr().err  # tyro's box may wrap the message anywhere after the name
    assert "ShardingConfig.rules[0]" in err and "'tpx'" in err


def test_tyro_rejects_bad_values(capsys):
    with pytest.raises(SystemExit):
        tyro.cli(TrainConfig, default=get_config("tiny"), args=["--steps", "ten"])
    with pytest.raises(SystemExit):
        tyro.cli(TrainConfig, default=get_config("tiny"), args=["--optimizer.name", "bogus"])
    assert "bogus" in capsys.readouterr().err


# ----------------------------------------------------------------------------- schedules
def _reference_unit(kind: str, t: np.ndarray, total: int, warmup: int, cool: float):
    """float64 re-derivation of the four schedule shapes (peak 1)."""
    warm = np.where(warmup > 0, t / max(warmup, 1), 1.0)
    if kind == "wsd":
        c = int(round(cool * total))
        start = total - c
        body = np.where(t < start, 1.0, np.clip((total - t) / max(c, 1), 0.0, 1.0))
    elif kind == "d2z":
        body = np.clip((total - t) / (total - warmup), 0.0, 1.0)
    elif kind == "cosine":
        p = np.clip((t - warmup) / (total - warmup), 0.0, 1.0)
        body = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * p))
    else:
        body = np.ones_like(t)
    return np.where(t < warmup, warm, body)


@pytest.mark.parametrize("kind", configs.SCHEDULES)
@pytest.mark.parametrize("warmup", [0, 5])
def test_unit_schedules_match_numpy(kind, warmup):
    total = 40
    cfg = OptimizerConfig(schedule=kind, warmup_steps=warmup, cooldown_fraction=0.25)
    sched = O.unit_schedule(cfg, total)
    t = np.arange(total + 3)
    got = np.asarray(jax.vmap(sched)(jnp.asarray(t)), np.float64)
    # float32 schedules vs float64 formulas: a few ulps (one division, one cosine)
    np.testing.assert_allclose(
        got, _reference_unit(kind, t, total, warmup, 0.25), rtol=2e-6, atol=2e-7
    )


# ----------------------------------------------------------------------------- groups
def _tiny_params(name="tiny"):
    return nnx.state(models.build(models.PRESETS[name], abstract=True), nnx.Param)


@pytest.mark.parametrize("name", models.TINY_PRESETS)
def test_every_tiny_leaf_has_a_group_and_unknown_leaves_raise(name):
    groups = jax.tree.leaves(O.param_groups(_tiny_params(name)))
    assert groups and set(groups) <= set(O.GROUPS)
    with pytest.raises(ValueError, match=r"'mystery/kernel'"):
        O.param_groups({"mystery": {"kernel": jnp.zeros((4, 4))}})


def test_lr_multipliers_scale_only_their_group():
    tree = {
        "embed": {"embedding": jnp.ones((4, 3))},
        "layers": {"0": {"mlp": {"up_proj": {"kernel": jnp.ones((3, 5))}}}},
        "final_norm": {"scale": jnp.ones((3,))},
    }
    grads = jax.tree.map(lambda x: jnp.linspace(-1.0, 2.0, x.size).reshape(x.shape), tree)
    plain = OptimizerConfig(schedule="constant", grad_clip=None, guard_nonfinite=False)
    scaled = dataclasses.replace(plain, lr_multipliers=(("embedding", 0.5), ("vectors", 2.0)))

    def update(cfg):
        tx = O.build_optimizer(cfg, tree, 10)
        return tx.update(grads, tx.init(tree), tree)[0]

    u, v = update(plain), update(scaled)
    # The multipliers are powers of two (exact in float32), but with them the groups are
    # separate optax.partition branches, which XLA on CPU fuses differently from the one shared
    # branch of `plain`: AdamW's sqrt/divide may round 1 ulp apart. rtol 1e-6 (~8 ulp) allows
    # that and nothing else: a wrong multiplier is off by >= 2x.
    tol = dict(rtol=1e-6, atol=0)
    np.testing.assert_allclose(v["embed"]["embedding"], 0.5 * u["embed"]["embedding"], **tol)
    np.testing.assert_allclose(v["final_norm"]["scale"], 2.0 * u["final_norm"]["scale"], **tol)
    np.testing.assert_allclose(
        v["layers"]["0"]["mlp"]["up_proj"]["kernel"],
        u["layers"]["0"]["mlp"]["up_proj"]["kernel"],
        **tol,
    )
    assert np.any(np.asarray(u["final_norm"]["scale"]) != 0)  # the control is not vacuous
    report = O.plan(scaled)
    assert report["embedding"].lr_multiplier == 0.5 and report["mlp"].lr_multiplier is None


def test_path_str_drops_the_nnx_value_level():
    tree = {"embed": {"embedding": {"value": 1.0}}}
    ((path, _),) = jax.tree_util.tree_flatten_with_path(tree)[0]
    assert S.path_str(path) == "embed/embedding"


# ----------------------------------------------------------------------------- factories
def test_the_table_builds_every_configurable_name():
    assert tuple(O.OPTIMIZERS) == configs.OPTIMIZER_NAMES
    params = _tiny_params()
    for name in configs.OPTIMIZER_NAMES:
        cfg = O.with_model_defaults(OptimizerConfig(name=name), models.PRESETS["tiny"])
        assert jax.tree.leaves(jax.eval_shape(O.build_optimizer(cfg, params, 10).init, params))


def test_unknown_options_are_rejected_naming_them():
    params = _tiny_params()
    cfg = OptimizerConfig(name="adamw", options=(("rank", 4),))
    with pytest.raises(ValueError, match=r"options: 'rank' is not an option of 'adamw'"):
        O.build_optimizer(cfg, params, 10)
    # config fields cannot be overridden through options either
    with pytest.raises(ValueError, match=r"'b1' is not an option of 'adamw'"):
        O.build_optimizer(OptimizerConfig(options=(("b1", 0.8),)), params, 10)
    tx = O.build_optimizer(OptimizerConfig(name="galore", options=(("rank", 8),)), params, 10)
    assert jax.tree.leaves(jax.eval_shape(tx.init, params))


def test_learning_rates_are_read_from_the_optimizer_state():
    """After each update the state holds the rate that update used: ``peak x unit(count)``
    (float32), and with ``group_schedules`` the group's own unit schedule; the rate moves
    through the warmup (negative control against a constant)."""
    tree = {
        "layers": {"0": {"mlp": {"up_proj": {"kernel": jnp.ones((3, 5))}}}},
        "final_norm": {"scale": jnp.ones((3,))},
    }
    cfg = OptimizerConfig(
        learning_rate=1e-2,
        schedule="wsd",
        warmup_steps=3,
        cooldown_fraction=0.4,
        grad_clip=None,
        group_schedules=(("vectors", "cosine_zero", 2),),
    )
    n = 10
    tx = O.build_optimizer(cfg, tree, n)
    state = tx.init(tree)
    unit, vec = O.unit_schedule(cfg, n), O.group_unit_schedule(cfg, "vectors", n)
    seen = []
    for count in range(n):
        _, state = tx.update(tree, state, tree)
        rates = O.learning_rates(state)
        assert set(rates) == {"lr", "lr_factor/vectors"}
        np.testing.assert_allclose(rates["lr"], 1e-2 * float(unit(count)), rtol=1e-6)
        np.testing.assert_allclose(rates["lr_factor/vectors"], float(vec(count)), rtol=1e-6)
        seen.append(float(rates["lr"]))
    assert seen[0] == 0.0 and seen[3] == pytest.approx(1e-2) and seen[-1] < seen[3]
    plain = O.build_optimizer(dataclasses.replace(cfg, group_schedules=()), tree, n)
    s = plain.init(tree)
    _, s = plain.update(tree, s, tree)
    assert set(O.learning_rates(s)) == {"lr"}


def _svals(x) -> np.ndarray:
    return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


def test_muon_factory_orthogonalizes_hidden_matrices_and_adams_the_rest():
    # three leaves of the tiny model's naming contract: one per routing outcome
    params = {
        "embed": {"embedding": jnp.zeros((256, 128))},
        "layers": {"0": {"attn": {"q_proj": {"kernel": jnp.zeros((128, 128))}}}},
        "final_norm": {"scale": jnp.ones((128,))},
    }
    rng = np.random.default_rng(0)

    def ill_conditioned(shape):  # spectrum spread over 2 decades
        if len(shape) != 2:
            return jnp.asarray(rng.normal(size=shape), jnp.float32)
        m, n = shape
        k = min(m, n)
        u, _ = np.linalg.qr(rng.normal(size=(m, k)))
        v, _ = np.linalg.qr(rng.normal(size=(n, k)))
        return jnp.asarray(u @ np.diag(np.logspace(0, -2, k)) @ v.T, jnp.float32)

    grads = jax.tree.map(lambda p: ill_conditioned(p.shape), params)
    cfg = OptimizerConfig(
        name="muon",
        learning_rate=0.02,
        adam_lr=1e-3,
        schedule="constant",
        grad_clip=None,
        guard_nonfinite=False,
    )
    tx = O.build_optimizer(cfg, params, 10)
    upd, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    q = _svals(upd["layers"]["0"]["attn"]["q_proj"]["kernel"])
    e = np.asarray(upd["embed"]["embedding"])
    g_e = np.asarray(grads["embed"]["embedding"])
    # hidden matrix: orthogonalized, the 100x spread of the gradient's spectrum flattened
    # (Polar Express leaves singular values within a factor ~2 of each other after 5 steps)
    assert q.max() / q.min() < 3.0
    # embedding: bias-corrected AdamW's first step is exactly -lr * g / (|g| + eps); float32
    # rounding of a handful of operations -> rtol 1e-5
    np.testing.assert_allclose(e, -1e-3 * g_e / (np.abs(g_e) + 1e-8), rtol=1e-5, atol=1e-12)
    # adam_lr=None: Muon's default fallback, at optzoo.fallback.LR_RATIO x Muon's rate
    default = O.build_optimizer(dataclasses.replace(cfg, adam_lr=None), params, 10)
    upd_d, _ = jax.jit(default.update)(grads, default.init(params), params)
    np.testing.assert_allclose(
        upd_d["embed"]["embedding"],
        -0.015 * 0.02 * g_e / (np.abs(g_e) + 1e-8),
        rtol=1e-5,
        atol=1e-12,
    )
    # negative control: Adam on the same hidden gradient does not flatten its spectrum
    adam = O.build_optimizer(dataclasses.replace(cfg, name="adamw"), params, 10)
    upd_a, _ = jax.jit(adam.update)(grads, adam.init(params), params)
    qa = _svals(upd_a["layers"]["0"]["attn"]["q_proj"]["kernel"])
    assert qa.max() / qa.min() > 10.0


def test_symmetric_factory_fills_head_dim_from_the_model():
    mcfg = models.PRESETS["tiny"]
    cfg = O.with_model_defaults(OptimizerConfig(name="symmetric", learning_rate=0.02), mcfg)
    assert cfg.option("head_dim") == mcfg.head_dim
    assert O.with_model_defaults(OptimizerConfig(), mcfg) == OptimizerConfig()
    table = O.plan(cfg)
    assert set(table) == set(O.GROUPS)
    assert table["embedding"].name == "rownorm" and table["attention"].name.startswith("muon")


def test_guard_and_clip_wrap_the_optimizer():
    params = {"mlp": {"up_proj": {"kernel": jnp.ones((3, 3))}}}
    cfg = OptimizerConfig(grad_clip=1.0, schedule="constant", weight_decay=0.0)
    tx = O.build_optimizer(cfg, params, 10)
    state = tx.init(params)
    bad = {"mlp": {"up_proj": {"kernel": jnp.full((3, 3), jnp.nan)}}}
    upd, state = tx.update(bad, state, params)
    assert int(O.skipped_steps(state)) == 1
    assert np.all(np.asarray(upd["mlp"]["up_proj"]["kernel"]) == 0)
    # the clip runs before Adam: a gradient sequence whose norm changes across the threshold
    # gives optax's clip+adamw chain, and not plain adamw (negative control)
    seq = [
        {
            "mlp": {
                "up_proj": {
                    "kernel": jnp.asarray(
                        np.random.default_rng(i).normal(size=(3, 3)) * s, jnp.float32
                    )
                }
            }
        }
        for i, s in enumerate([1e3, 0.1, 5.0])
    ]
    ref = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(cfg.learning_rate, 0.9, 0.95, weight_decay=0.0)
    )
    plain = optax.adamw(cfg.learning_rate, 0.9, 0.95, weight_decay=0.0)
    s_ref, s_plain = ref.init(params), plain.init(params)
    for g in seq:
        upd, state = tx.update(g, state, params)
        u_ref, s_ref = ref.update(g, s_ref, params)
        u_plain, s_plain = plain.update(g, s_plain, params)
    # same arithmetic in the same order: float32 rounding only
    w = ("mlp", "up_proj", "kernel")
    get = lambda t: np.asarray(t[w[0]][w[1]][w[2]])  # noqa: E731
    np.testing.assert_allclose(get(upd), get(u_ref), rtol=1e-6)
    assert not np.allclose(get(upd), get(u_plain), rtol=1e-3)
    assert int(O.skipped_steps(state)) == 1
    no_guard = O.build_optimizer(OptimizerConfig(guard_nonfinite=False), params, 10)
    assert O.skipped_steps(no_guard.init(params)) is None
