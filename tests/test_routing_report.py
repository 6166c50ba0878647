"""routing.report lists every leaf, marks the ones no rule covers, and suggests a rule that
matches exactly them (issue 19: a newcomer's tree must not stop at its first unknown leaf)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from optzoo import routing

Rule = routing.Rule


def _tree():
    return {
        "embed": {"embedding": jnp.zeros((10, 4))},
        "blocks_0": {
            "mlp": {
                "up_proj": {"kernel": jnp.zeros((4, 8))},
                "down_proj": {"kernel": jnp.zeros((8, 4))},
            }
        },
        "mystery": {"weights": jnp.zeros((4, 4)), "gain": jnp.zeros((4,))},
        "odd": {"kernel_table": jnp.zeros((3, 4))},
        "lm_head": {"kernel": jnp.zeros((4, 10))},
    }


def test_report_lists_every_leaf_and_marks_the_uncovered():
    rep = routing.report(_tree())
    assert len(rep.rows) == 7  # every leaf has a row: the report did not stop at 'mystery'
    uncovered = {r.path for r in rep.rows if r.role == routing.UNCOVERED}
    assert uncovered == {"mystery/weights", "odd/kernel_table"}  # 'mystery/gain': a vector
    assert set(rep.uncovered) == uncovered
    assert "2 leaves no rule covers" in rep
    covered = {r.path: r.role for r in rep.rows if r.role != routing.UNCOVERED}
    assert covered["embed/embedding"] == "embedding" and covered["lm_head/kernel"] == "lm_head"


def test_suggested_rule_matches_only_the_uncovered_leaves():
    tree = _tree()
    rep = routing.report(tree)
    source = re.search(r"rules = \((Rule\(.*\)),\) \+", rep).group(1)
    rule = eval(source, {"Rule": Rule})  # the printed rule is valid Python  # noqa: S307
    paths = [r.path for r in rep.rows]
    matched = {p for p in paths if re.search(rule.pattern, p)}
    assert matched == set(rep.uncovered)  # exactly them: no covered leaf is captured
    # with the suggestion prepended, the whole tree classifies and the rest keep their roles
    roles = routing.classify(tree, (rule,) + routing.DEFAULT_RULES)
    assert roles["mystery"]["weights"] == "other_matrix"
    assert roles["embed"]["embedding"] == "embedding"


def test_classify_still_refuses_an_uncovered_leaf_and_points_to_report():
    with pytest.raises(
        ValueError,
        match=r"no rule covers parameter 'mystery/weights'.*"
        r"routing\.report",
    ):
        routing.classify(_tree())


def test_error_message_rule_matches_only_that_leaf():
    # the old message suggested Rule(r'kernel$') + rules, which catches every kernel
    with pytest.raises(ValueError) as info:
        routing.classify(
            {"a": {"kernel": jnp.zeros((2, 2))}, "zz": {"kernel": jnp.zeros(3)}},
            rules=(Rule(r"^a/kernel$", "other_matrix"),),
        )
    source = re.search(r"\((Rule\(.*?\)),\) \+ rules", str(info.value)).group(1)
    rule = eval(source, {"Rule": Rule})  # noqa: S307
    assert re.search(rule.pattern, "zz/kernel")
    assert not re.search(rule.pattern, "a/kernel")
    assert rule.role == "vector"


def test_nnx_state_paths_are_normalized_in_report_and_suggestion():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.trunk = nnx.Linear(4, 4, rngs=rngs)
            self.mystery = nnx.Param(jnp.zeros((4, 4)))

    state = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
    rep = routing.report(state)
    assert "mystery" in rep.uncovered  # no '/value' suffix
    source = re.search(r"rules = \((Rule\(.*\)),\) \+", rep).group(1)
    rule = eval(source, {"Rule": Rule})  # noqa: S307
    roles = jax.tree.leaves(routing.classify(state, (rule,) + routing.DEFAULT_RULES))
    assert "other_matrix" in roles
