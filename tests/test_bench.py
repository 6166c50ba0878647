"""The optimizer-step benchmark runs every optimizer of the zoo on the tiny model's tree."""

import json

import pytest

from experiments.bench import step_time


def test_zoo_table_covers_every_public_optimizer():
    import optzoo

    names = set(step_time.OPTIMIZERS) | set(step_time.ZOO)
    for public in (
        "muon",
        "lion",
        "galore",
        "natural_galore",
        "online_subspace_descent",
        "polargrad",
        "scion",
        "ef_muon",
        "fismo",
        "symmetry_compatible",
    ):
        assert hasattr(optzoo, public) and f"optzoo.{public}" in names, public
    for zoo, twin in step_time.TWINS.items():
        assert zoo in names and twin in names


@pytest.mark.slow
def test_step_time_on_tiny_tree_all(tmp_path):
    out = tmp_path / "st.json"
    step_time.main(["--tree", "tiny", "--all", "--reps", "1", "--out", str(out)])
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert len(rows) == len(step_time.OPTIMIZERS) + len(step_time.ZOO)
    assert rows["optzoo.lion"]["vs_twin"] > 0 and rows["optzoo.fismo"]["vs_adamw"] > 0


def test_step_time_twins_on_tiny_tree(tmp_path):
    out = tmp_path / "st.json"
    only = "adamw,optax.lion,optzoo.lion,optax.contrib.galore,optzoo.galore[optax-like]"
    step_time.main(["--tree", "tiny", "--all", "--reps", "2", "--only", only, "--out", str(out)])
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == set(only.split(","))
    assert rows["optzoo.lion"]["vs_twin"] > 0 and rows["optzoo.galore[optax-like]"]["vs_twin"] > 0
